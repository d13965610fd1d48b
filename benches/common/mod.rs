//! Shared by the benches and by `tests/wire_size.rs`: sample messages of every
//! kind, and a device and a server wired together in memory (no sockets) that
//! can record the bytes of a whole sync; and a large fleet for the server
//! alone, with the device side prepared outside the timing.
#![allow(dead_code, unreachable_pub)] // reason: each bench uses a part of it

use core::hint::black_box;
use core::time::Duration as StdDuration;
use std::time::Instant as StdInstant;

use mdm_sync::auth;
use mdm_sync::device::{Device, DeviceConfig, Event};
use mdm_sync::server::TaskState;
use mdm_sync::server::{ConnId, MemoryStore, Server, ServerConfig, ServerEvent};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::{
    frame, ComplianceEvent, DeviceId, Down, ErrorCode, FrameDecoder, Hello, Platform, Policy,
    PolicyOutcome, PolicyReport, ReportBody, Setting, SyncTrigger, Task, TaskId, TaskKind,
    TaskResult, TaskStatus, Up, MAX_FRAME, PROTOCOL_VERSION,
};

/// A 144-character token, about the length of an FCM registration token.
pub const FCM_TOKEN: &str =
    "cXk3bT9hR2VfQkxqZ1V0dVpXaUtJbzpBUEE5MWJHcFJzVEtfc2x2cFVvaEZyQ0pDcmJ2M1pBa3FXUDN4\
bVhrZ0VmTm5CVHBzR1lMZG9Rbm5oVWtyTndMY2JzRkVxUXpwWmJIY3ZmQ0h4T3k5";

/// Eight settings with realistic keys and values.
pub fn sample_policy(version: u32) -> Policy {
    let pairs: [(u16, i64); 8] = [
        (1, 1),         // camera disabled
        (2, 6),         // minimum password length
        (3, 90),        // password expiry, days
        (4, 0),         // USB debugging off
        (5, 300),       // screen lock after, seconds
        (6, 10),        // wipe after failed unlocks
        (7, 1_700_000), // allowed app list id
        (8, -1),        // no VPN profile
    ];
    let mut settings = heapless::Vec::new();
    for (key, value) in pairs {
        settings.push(Setting { key, value }).unwrap();
    }
    Policy { version, settings }
}

/// A device's third connection after its seventh boot snapshot: the size
/// of a real `Hello.attempt`.
const SAMPLE_ATTEMPT: u64 = (7 << 32) + 3;

pub fn sample_hello() -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        attempt: SAMPLE_ATTEMPT,
        device: DeviceId(1_234_567),
        generation: 0,
        platform: Platform::Android,
        push_token: heapless::String::try_from(FCM_TOKEN).unwrap(),
        trigger: SyncTrigger::Push,
        last_task_seq: 41,
        policy_version: 6,
    }
}

/// The task message of the goals: a delivery of one task.
pub fn sample_task() -> Down {
    Down::Task(Task {
        seq: 42,
        id: TaskId(9_876_543_210),
        kind: TaskKind::Locate,
    })
}

/// One message of every kind from device to server, with a name.
pub fn up_messages() -> Vec<(&'static str, Up)> {
    let task = TaskId(9_876_543_210);
    vec![
        ("up_hello", Up::Hello(sample_hello())),
        ("up_proof", Up::Proof { mac: [0xA7; 32] }),
        (
            "up_progress",
            Up::Progress {
                task,
                percent: Some(42),
            },
        ),
        (
            "up_report_task",
            Up::Report {
                seq: 1_017,
                body: ReportBody::Task {
                    task,
                    status: TaskStatus::Succeeded {
                        result: Some(TaskResult::Location {
                            lat_e7: 525_200_000,
                            lon_e7: 134_050_000,
                            accuracy_m: 12,
                        }),
                    },
                },
            },
        ),
        (
            "up_report_compliance",
            Up::Report {
                seq: 1_018,
                body: ReportBody::Compliance(ComplianceEvent::BlockedPageVisited { category: 12 }),
            },
        ),
        (
            "up_report_policy",
            Up::Report {
                seq: 1_019,
                body: ReportBody::Policy(PolicyReport {
                    version: 7,
                    outcome: PolicyOutcome::Applied,
                }),
            },
        ),
    ]
}

/// One message of every kind from server to device, with a name.
pub fn down_messages() -> Vec<(&'static str, Down)> {
    vec![
        (
            "down_challenge",
            Down::Challenge {
                version: PROTOCOL_VERSION,
                attempt: SAMPLE_ATTEMPT,
                nonce: [0x3C; 16],
            },
        ),
        (
            "down_welcome",
            Down::Welcome {
                ack: 1_016,
                periodic_s: 10_800,
                want_token: false,
            },
        ),
        ("down_ack", Down::Ack { seq: 1_017 }),
        ("down_task", sample_task()),
        (
            "down_cancel",
            Down::Cancel {
                task: TaskId(9_876_543_210),
            },
        ),
        ("down_policy", Down::Policy(sample_policy(7))),
        ("down_sync_end", Down::SyncEnd),
        ("down_error", Down::Error(ErrorCode::AuthFailed)),
    ]
}

pub const T0: Instant = Instant::from_millis(1_000_000);
pub const MASTER: [u8; 32] = [1; 32];
pub const NONCE_SEED: [u8; 32] = [2; 32];

/// What the simulated device application does with the tasks it is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum App {
    /// Finish every task at once.
    Succeed,
    /// Keep the next task running (so the session stays open), finish the rest.
    HoldNext,
}

/// One device and a server, wired together in memory.
pub struct Rig {
    pub server: Server<MemoryStore>,
    pub device: Device,
    pub id: DeviceId,
    pub conn: Option<ConnId>,
    pub now: Instant,
    pub app: App,
    pub held: Option<TaskId>,
    /// Bytes sent by the device and by the server, when recording.
    pub record: Option<(Vec<u8>, Vec<u8>)>,
    pub syncs_done: u32,
    buf: Box<[u8; 4096]>,
    snap: Box<[u8; 1024]>,
}

impl Rig {
    /// A server with one enrolled device that has a push token and a policy
    /// history of none; nothing has synced yet.
    pub fn new() -> Self {
        let mut server = Server::new(
            ServerConfig::default(),
            MemoryStore::new(),
            MASTER,
            NONCE_SEED,
        );
        let id = DeviceId(1_234_567);
        let secret = server.enroll(id, T0).unwrap();
        let mut cfg = DeviceConfig::new(id, 0, secret, Platform::Android);
        cfg.push_token = heapless::String::try_from(FCM_TOKEN).unwrap();
        Self {
            server,
            device: Device::new(cfg, T0),
            id,
            conn: None,
            now: T0,
            app: App::Succeed,
            held: None,
            record: None,
            syncs_done: 0,
            buf: Box::new([0; 4096]),
            snap: Box::new([0; 1024]),
        }
    }

    /// A rig whose device has done its boot sync and is in an open session
    /// that stays open: it holds one long task, and time stands still.
    pub fn in_session() -> Self {
        let mut rig = Rig::new();
        rig.app = App::HoldNext;
        rig.server
            .enqueue_task(rig.id, TaskKind::Scan, Default::default(), rig.now)
            .unwrap();
        rig.device.handle_timeout(rig.now);
        rig.pump();
        assert!(rig.held.is_some() && rig.conn.is_some(), "session not open");
        rig
    }

    /// Queues a task for the device; returns its id.
    pub fn queue(&mut self, kind: TaskKind) -> TaskId {
        self.server
            .enqueue_task(self.id, kind, Default::default(), self.now)
            .unwrap()
    }

    /// Runs device and server until neither has anything left to do.
    pub fn pump(&mut self) {
        loop {
            let mut moved = self.device_events();
            moved |= self.device_to_server();
            moved |= self.server_to_device();
            moved |= self.server_events();
            if !moved {
                return;
            }
        }
    }

    /// Lets virtual time pass and runs every timer due.
    pub fn advance(&mut self, d: Duration) {
        self.now = self.now + d;
        if self.server.poll_timeout().is_some_and(|t| t <= self.now) {
            self.server.handle_timeout(self.now).unwrap();
        }
        self.device.handle_timeout(self.now);
    }

    fn device_events(&mut self) -> bool {
        let mut moved = false;
        while let Some(ev) = self.device.poll_event() {
            moved = true;
            self.on_device_event(ev);
        }
        moved
    }

    fn on_device_event(&mut self, ev: Event) {
        let now = self.now;
        match ev {
            Event::Persist => {
                let n = self.device.snapshot(&mut self.snap[..]).unwrap();
                core::hint::black_box(&self.snap[..n]);
            }
            Event::Connect => {
                let conn = self.server.connection_opened(now).unwrap();
                self.conn = Some(conn);
                self.device.connected(now);
            }
            Event::Disconnect => {
                if let Some(conn) = self.conn.take() {
                    self.server.connection_closed(conn, now);
                }
            }
            Event::Execute(task) => {
                if self.app == App::HoldNext && self.held.is_none() {
                    self.held = Some(task.id);
                } else {
                    let status = TaskStatus::Succeeded { result: None };
                    self.device.task_status(task.id, status, now).unwrap();
                }
            }
            Event::ApplyPolicy { version } => {
                self.device
                    .policy_applied(version, PolicyOutcome::Applied, now)
                    .unwrap();
            }
            Event::SyncDone { .. } => self.syncs_done += 1,
            _ => {}
        }
    }

    fn device_to_server(&mut self) -> bool {
        let Some(conn) = self.conn else {
            return false;
        };
        let mut moved = false;
        while let Some(n) = self.device.poll_transmit(&mut self.buf[..]).unwrap() {
            moved = true;
            if let Some((up, _)) = &mut self.record {
                up.extend_from_slice(&self.buf[..n]);
            }
            self.server
                .handle_bytes(conn, &self.buf[..n], self.now)
                .unwrap();
        }
        moved
    }

    fn server_to_device(&mut self) -> bool {
        let Some(conn) = self.conn else {
            return false;
        };
        let mut moved = false;
        // The bytes where the server wrote them, no copy between the two
        // (`Server::transmit_with`), as a transport that can take a borrowed
        // slice at once does.
        let (device, record, now) = (&mut self.device, &mut self.record, self.now);
        while self
            .server
            .transmit_with(conn, |bytes| {
                if let Some((_, down)) = record {
                    down.extend_from_slice(bytes);
                }
                device.handle_bytes(bytes, now).unwrap();
                bytes.len()
            })
            .is_some()
        {
            moved = true;
        }
        moved
    }

    fn server_events(&mut self) -> bool {
        let mut moved = false;
        while let Some(ev) = self.server.poll_event() {
            moved = true;
            match ev {
                ServerEvent::SendPush { .. } => self.device.push_received(self.now),
                ServerEvent::Close { conn } if Some(conn) == self.conn => {
                    self.conn = None;
                    self.device.disconnected(self.now);
                }
                _ => {}
            }
        }
        if moved {
            self.device.handle_timeout(self.now);
        }
        moved
    }
}

/// The bytes of one whole sync, both directions, and the session's frame key.
pub struct Recorded {
    /// Device to server.
    pub up: Vec<u8>,
    /// Server to device.
    pub down: Vec<u8>,
    /// The key of every frame but the first of each direction.
    pub key: u32,
}

/// One whole sync: boot sync with the handshake, one task, its status and
/// one policy. Its `Hello` carries the device's push token, as the first
/// sync after each boot does (PROTOCOL.md 7.2).
pub fn recorded_sync() -> Recorded {
    let mut rig = Rig::new();
    rig.queue(TaskKind::Lock);
    rig.server
        .assign_policy(rig.id, &sample_policy(1).settings, rig.now)
        .unwrap();
    rig.record = Some((Vec::new(), Vec::new()));
    rig.device.handle_timeout(rig.now);
    rig.pump();
    assert_eq!(rig.syncs_done, 1, "the sync did not complete");
    recording(rig)
}

/// The same sync as [`recorded_sync`] after the boot sync, started by the
/// server's push: its `Hello` carries no push token, which the server
/// confirmed in the boot sync.
pub fn recorded_steady_sync() -> Recorded {
    let mut rig = Rig::new();
    rig.device.handle_timeout(rig.now);
    rig.pump();
    rig.advance(Duration::from_mins(10));
    rig.queue(TaskKind::Lock);
    rig.server
        .assign_policy(rig.id, &sample_policy(1).settings, rig.now)
        .unwrap();
    rig.record = Some((Vec::new(), Vec::new()));
    rig.pump();
    assert_eq!(rig.syncs_done, 2, "the sync did not complete");
    recording(rig)
}

/// What `rig` recorded, with its session's key.
fn recording(mut rig: Rig) -> Recorded {
    let (up, down) = rig.record.take().unwrap();
    // The first frame down is the challenge, unkeyed; its nonce gives the key.
    let mut dec = FrameDecoder::<{ MAX_FRAME }>::new();
    dec.push(&down);
    let first = dec.decode().expect("a frame").expect("intact");
    let Ok(Down::Challenge { nonce, .. }) = mdm_sync::wire::decode::<Down>(first) else {
        panic!("the first frame down is not a challenge");
    };
    let key = frame::session_key(&nonce);
    Recorded { up, down, key }
}

/// Feeds a recorded byte stream to a decoder in `chunk`-byte pieces and calls
/// `f` on each frame's payload. The first frame (the `Hello`, the `Challenge`)
/// carries no key, every later one `key`.
pub fn for_each_payload(stream: &[u8], chunk: usize, key: u32, mut f: impl FnMut(&[u8])) {
    let mut dec = FrameDecoder::<{ MAX_FRAME }>::new();
    let mut first = true;
    for mut part in stream.chunks(chunk.max(1)) {
        while !part.is_empty() {
            let n = dec.push(part);
            part = &part[n..];
            while let Some(r) = dec.decode() {
                f(r.expect("recorded frames are intact"));
                if core::mem::take(&mut first) {
                    dec.set_key(key);
                }
            }
        }
    }
}

/// Splits a recorded byte stream into its frames' payloads.
pub fn payloads(stream: &[u8], key: u32) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for_each_payload(stream, usize::MAX, key, |p| out.push(p.to_vec()));
    out
}

/// What the simulated device sends in one sync, prepared ahead.
pub struct SyncInput {
    device: DeviceId,
    task: TaskId,
    nonce_counter: u64,
    // The session's frame key (from its nonce).
    key: u32,
    now: Instant,
    // Fixed buffers: preparing inputs must not churn the allocator the
    // timed server uses.
    hello: heapless::Vec<u8, MAX_FRAME>,
    proof: heapless::Vec<u8, 64>,
    reports: heapless::Vec<u8, 64>,
}

/// A server with a large fleet, and what the bench knows of each device.
pub struct Fleet {
    server: Server<MemoryStore>,
    devices: u64,
    /// Per device: last task sequence accepted, last report sequence sent,
    /// and whether the server has confirmed its push token (the device
    /// engine sends its token until then, none after: PROTOCOL.md 7.2).
    task_seq: Vec<u32>,
    report_seq: Vec<u32>,
    token_confirmed: Vec<bool>,
    nonces: u64,
    next_task: u64,
    now: Instant,
    rng: u64,
    out: Box<[u8; 8192]>,
    inputs: Vec<SyncInput>,
    /// How many syncs ahead `run_prepared` hints the next device to the
    /// server (`Server::prefetch_device`); 0: no hints.
    pub lookahead: usize,
    /// When not 0, `run_prepared` hints devices a batch at a time instead:
    /// at the start of each `hint_batch` syncs, the devices of the next
    /// `hint_batch` (of the first batch too, at the start of a run), as an
    /// event loop that takes ready connections in batches can.
    pub hint_batch: usize,
}

impl Fleet {
    pub fn new(devices: u64) -> Self {
        let mut server = Server::new(
            ServerConfig::default(),
            MemoryStore::with_capacity(devices as usize),
            MASTER,
            NONCE_SEED,
        );
        for i in 0..devices {
            server.enroll(DeviceId(i), T0).unwrap();
        }
        let mut fleet = Self {
            server,
            devices,
            task_seq: vec![0; devices as usize],
            report_seq: vec![0; devices as usize],
            token_confirmed: vec![false; devices as usize],
            nonces: 0,
            next_task: 0,
            now: T0,
            rng: 0x9E37_79B9_7F4A_7C15,
            out: Box::new([0; 8192]),
            inputs: Vec::new(),
            lookahead: 0,
            hint_batch: 0,
        };
        // Every device syncs once, with its push token, so each has one like
        // a real fleet; later syncs carry none, as the device engine's.
        for start in (0..devices).step_by(4096) {
            fleet.prepare((start..devices.min(start + 4096)).map(DeviceId));
            fleet.run_prepared(true);
            fleet.prune();
        }
        fleet
    }

    pub fn next_device(&mut self) -> DeviceId {
        // xorshift64: devices in random order, so the store is hit all over.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        DeviceId(x % self.devices)
    }

    /// Prepares one sync for each device, in order, outside any timing.
    pub fn prepare(&mut self, devices: impl Iterator<Item = DeviceId>) {
        self.inputs.clear();
        for device in devices {
            let input = self.prepare_one(device);
            self.inputs.push(input);
        }
    }

    fn prepare_one(&mut self, device: DeviceId) -> SyncInput {
        let i = device.0 as usize;
        self.nonces += 1;
        self.next_task += 1;
        self.now = self.now + Duration::from_millis(1);
        let task = TaskId(self.next_task);
        let hello = Up::Hello(Hello {
            version: PROTOCOL_VERSION,
            // A new value per connection, of a real one's size.
            attempt: (1 << 32) + self.nonces,
            device,
            generation: 0,
            platform: Platform::Android,
            push_token: if self.token_confirmed[i] {
                heapless::String::new()
            } else {
                heapless::String::try_from(FCM_TOKEN).unwrap()
            },
            trigger: SyncTrigger::Push,
            last_task_seq: self.task_seq[i],
            policy_version: 0,
        });
        let secret = auth::derive_secret(&MASTER, device, 0);
        let nonce = auth::nonce(&NONCE_SEED, self.nonces);
        let key = frame::session_key(&nonce);
        let hello: heapless::Vec<u8, MAX_FRAME> = encode(&hello, 0);
        let mac = auth::proof(&secret, &nonce, &auth::bind_hello(frame::payload(&hello)));
        let r = self.report_seq[i];
        let report = |seq, status| Up::Report {
            seq,
            body: ReportBody::Task { task, status },
        };
        // A quick task: its final status takes the place of its `Received`,
        // as the device engine sends it (PROTOCOL.md section 9.3).
        let reports = encode(&report(r + 1, TaskStatus::Succeeded { result: None }), key);
        self.task_seq[i] += 1;
        self.report_seq[i] += 1;
        self.token_confirmed[i] = true;
        SyncInput {
            device,
            task,
            nonce_counter: self.nonces,
            key,
            now: self.now,
            hello: heapless::Vec::from_slice(&hello).unwrap(),
            proof: encode(&Up::Proof { mac }, key),
            reports,
        }
    }

    /// Runs the prepared syncs; with `check`, verifies every message the
    /// server sends and the task's final state.
    pub fn run_prepared(&mut self, check: bool) {
        let inputs = core::mem::take(&mut self.inputs);
        let batch = self.hint_batch;
        for (i, input) in inputs.iter().enumerate() {
            if batch > 0 {
                if i % batch == 0 {
                    let from = if i == 0 { 0 } else { i + batch };
                    let upto = inputs.len().min(i + 2 * batch);
                    for next in inputs.get(from..upto).unwrap_or_default() {
                        self.server.prefetch_device(next.device);
                    }
                }
            } else if self.lookahead > 0 {
                if let Some(next) = inputs.get(i + self.lookahead) {
                    self.server.prefetch_device(next.device);
                }
            }
            self.run_one(input, check);
        }
        self.inputs = inputs;
    }

    fn run_one(&mut self, input: &SyncInput, check: bool) {
        let (s, now) = (&mut self.server, input.now);
        let task = s
            .enqueue_task(input.device, TaskKind::Lock, Default::default(), now)
            .unwrap();
        let conn = s.connection_opened(now).unwrap();
        s.handle_bytes(conn, &input.hello, now).unwrap();
        let challenge = drain(s, conn, &mut self.out, check, 0);
        s.handle_bytes(conn, &input.proof, now).unwrap();
        let offers = drain(s, conn, &mut self.out, check, input.key);
        s.handle_bytes(conn, &input.reports, now).unwrap();
        let acks = drain(s, conn, &mut self.out, check, input.key);
        s.connection_closed(conn, now);
        while s.poll_event().is_some() {}
        if s.poll_timeout().is_some_and(|t| t <= now) {
            s.handle_timeout(now).unwrap();
        }
        if check {
            assert_eq!(task, input.task);
            let nonce = auth::nonce(&NONCE_SEED, input.nonce_counter);
            assert!(matches!(challenge[..], [Down::Challenge { nonce: n, .. }] if n == nonce));
            assert!(
                matches!(
                    offers[..],
                    [Down::Welcome { want_token: false, .. }, Down::Task(t), Down::SyncEnd]
                    if t.id == task
                ),
                "{offers:?}"
            );
            assert!(matches!(acks[..], [Down::Ack { .. }]), "{acks:?}");
            let state = s.task_state(input.device, task);
            assert_eq!(state, Some(TaskState::Succeeded { result: None }));
        }
    }

    /// The server, for changes to the fleet outside syncs (retirements:
    /// `fleet_memory shrunk`). A device it changes must not sync again.
    pub fn server_mut(&mut self) -> &mut Server<MemoryStore> {
        &mut self.server
    }

    pub fn prune(&mut self) {
        let now = self.now + Duration::from_millis(1);
        self.server.store_mut().prune_finished(now);
    }

    /// Bytes of the harness's own bookkeeping, beside the server: what it
    /// knows of each device (two `u32` and a `bool`), its prepared syncs and
    /// its output buffer (`fleet_memory synced` takes them off the process's
    /// growth).
    pub fn harness_bytes(&self) -> usize {
        self.task_seq.capacity() * core::mem::size_of::<u32>()
            + self.report_seq.capacity() * core::mem::size_of::<u32>()
            + self.token_confirmed.capacity()
            + self.inputs.capacity() * core::mem::size_of::<SyncInput>()
            + self.out.len()
    }

    /// Times `iters` syncs of random devices.
    pub fn timed(&mut self, iters: u64) -> StdDuration {
        let mut total = StdDuration::ZERO;
        let mut left = iters;
        while left > 0 {
            let k = left.min(1024);
            let devices: Vec<DeviceId> = (0..k).map(|_| self.next_device()).collect();
            self.prepare(devices.into_iter());
            let start = StdInstant::now();
            self.run_prepared(false);
            total += start.elapsed();
            self.prune();
            left -= k;
        }
        total
    }
}

/// `msg` as a frame of the session with key `key` (0: before the challenge).
fn encode<const N: usize>(msg: &Up, key: u32) -> heapless::Vec<u8, N> {
    let mut buf = [0u8; MAX_FRAME];
    let n = frame::encode_keyed(msg, &mut buf, key).unwrap();
    heapless::Vec::from_slice(&buf[..n]).unwrap()
}

/// Takes everything the server has for `conn`; decodes it (frames keyed with
/// `key`) only when checking.
fn drain(
    s: &mut Server<MemoryStore>,
    conn: mdm_sync::server::ConnId,
    out: &mut [u8; 8192],
    check: bool,
    key: u32,
) -> Vec<Down> {
    let mut msgs = Vec::new();
    let mut dec = check.then(|| {
        let mut d = FrameDecoder::<MAX_FRAME>::new();
        d.set_key(key);
        d
    });
    while let Some(n) = s.poll_transmit_for(conn, &mut out[..]) {
        black_box(&out[..n]);
        if let Some(dec) = &mut dec {
            dec.push(&out[..n]);
            while let Some(p) = dec.decode() {
                msgs.push(mdm_sync::wire::decode::<Down>(p.unwrap()).unwrap());
            }
        }
    }
    msgs
}
