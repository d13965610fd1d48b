//! A device fleet and a server wired together in memory on a virtual clock.
//! No sockets, no threads: every step is deterministic.
#![allow(dead_code, unreachable_pub)] // reason: a harness shared by test crates, each using a part

use std::collections::VecDeque;

use mdm_sync::device::{pick_latest, Device, DeviceConfig, Event};
use mdm_sync::server::{ConnId, MemoryStore, Server, ServerConfig, ServerEvent, TaskState};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::{
    ComplianceEvent, DeviceId, Platform, PolicyOutcome, Task, TaskId, TaskKind, TaskResult,
    TaskStatus,
};

/// What a simulated device application does with a task it is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Finish at once with the natural result of the kind.
    Succeed,
    /// Keep it running until the test finishes it.
    Hold,
    /// Answer "not now", with this retry hint.
    Defer(Option<u32>),
    /// Fail with this reason.
    Fail(u16),
}

/// The natural success result of a task kind.
pub fn result_for(kind: TaskKind) -> Option<TaskResult> {
    match kind {
        TaskKind::Locate => Some(TaskResult::Location {
            lat_e7: 525_200_000,
            lon_e7: 134_050_000,
            accuracy_m: 12,
        }),
        TaskKind::Scan => Some(TaskResult::Scan { threats: 0 }),
        _ => None,
    }
}

/// One simulated device and its application; `O` and `I` are the engine's
/// outbox and in-flight task capacities (`Device<O, I>`).
pub struct SimDevice<const O: usize = 16, const I: usize = 4> {
    pub dev: Device<O, I>,
    pub cfg: DeviceConfig,
    pub conn: Option<ConnId>,
    pub online: bool,
    pub behaviour: Behaviour,
    /// Behaviours to use for the next tasks, before falling back to `behaviour`.
    pub script: VecDeque<Behaviour>,
    /// Every task handed to the application, across reboots.
    pub executed: Vec<Task>,
    /// Tasks the app holds (Behaviour::Hold).
    pub held: Vec<Task>,
    pub cancels: Vec<TaskId>,
    pub slots: [Vec<u8>; 2],
    pub policy_outcome: PolicyOutcome,
    /// Leave `ApplyPolicy` unanswered (the test answers by hand).
    pub hold_policy: bool,
    pub applied_policies: Vec<u32>,
    pub syncs_done: u32,
    /// Why each failed sync failed, across reboots.
    pub failed: Vec<mdm_sync::device::SessionError>,
    /// Compliance events the application still has to hand over: it hands
    /// them one by one and keeps the rest after `OutboxFull`.
    pub to_raise: VecDeque<ComplianceEvent>,
    /// `OutboxFull` answers to the application (compliance events and
    /// policy outcomes it must hand over again later).
    pub outbox_full: usize,
}

/// A server and devices of capacities `O` and `I` (see [`SimDevice`]).
pub struct Pair<const O: usize = 16, const I: usize = 4> {
    pub server: Server<MemoryStore>,
    pub devices: Vec<SimDevice<O, I>>,
    pub now: Instant,
    pub events: Vec<ServerEvent>,
    pub pushes_lost: bool,
    /// The next this many `Report` frames from any device are lost on the
    /// way to the server (a frame dropped by a lossy link).
    pub reports_lost: usize,
}

pub const START: Instant = Instant::from_millis(1_000_000);

/// A server with the default configuration over an empty in-memory store.
pub fn server() -> Server<MemoryStore> {
    Server::new(
        ServerConfig::default(),
        MemoryStore::new(),
        [1; 32],
        [2; 32],
    )
}

impl Pair {
    pub fn new(n: usize) -> Self {
        Self::with_config(n, ServerConfig::default())
    }

    pub fn with_config(n: usize, cfg: ServerConfig) -> Self {
        Self::sized(n, cfg)
    }
}

impl<const O: usize, const I: usize> Pair<O, I> {
    /// `n` devices of capacities `O` and `I` (`Pair::<3, 1>::sized`).
    pub fn sized(n: usize, cfg: ServerConfig) -> Self {
        let mut server = Server::new(cfg, MemoryStore::new(), [1; 32], [2; 32]);
        let now = START;
        let devices = (0..n)
            .map(|i| {
                let id = DeviceId(i as u64 + 1);
                let secret = server.enroll(id, now).unwrap();
                let mut cfg = DeviceConfig::new(id, 0, secret, Platform::Android);
                cfg.push_token = heapless::String::try_from("token").unwrap();
                SimDevice::sized(cfg, now)
            })
            .collect();
        Self {
            server,
            devices,
            now,
            events: Vec::new(),
            pushes_lost: false,
            reports_lost: 0,
        }
    }

    pub fn id(&self, i: usize) -> DeviceId {
        self.devices[i].cfg.id
    }

    /// Makes the store hold device `i`'s reports up to `seq`: its report
    /// numbering goes on from `seq + 1`.
    pub fn set_stored_report_seq(&mut self, i: usize, seq: u32) {
        use mdm_sync::server::FleetStore;
        let id = self.id(i);
        let store = self.server.store_mut();
        let mut rec = store.device(id).unwrap().unwrap();
        rec.last_report_seq = seq;
        store.put_device(&rec).unwrap();
    }

    pub fn queue(&mut self, i: usize, kind: TaskKind) -> TaskId {
        let id = self.id(i);
        self.server
            .enqueue_task(id, kind, Default::default(), self.now)
            .unwrap()
    }

    pub fn state(&self, i: usize, task: TaskId) -> TaskState {
        self.server.task_state(self.id(i), task).unwrap()
    }

    pub fn advance(&mut self, d: Duration) {
        self.now = self.now + d;
        self.tick();
    }

    /// Runs every component at the current instant until nothing moves.
    pub fn tick(&mut self) {
        for _ in 0..10_000 {
            if !self.step() {
                return;
            }
        }
        panic!("no quiescence after 10000 steps");
    }

    /// Runs until everything is idle and no timer is due before `limit` from now.
    pub fn run_for(&mut self, limit: Duration) {
        let end = self.now + limit;
        loop {
            self.tick();
            let next = self.next_deadline();
            match next {
                Some(t) if t <= end => self.now = t.max(self.now),
                _ => {
                    self.now = end;
                    self.tick();
                    return;
                }
            }
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        let dev = self
            .devices
            .iter()
            .filter(|d| d.online)
            .filter_map(|d| d.dev.poll_timeout());
        dev.chain(self.server.poll_timeout()).min()
    }

    /// One round of `tick`: due timers, each device's events and the bytes
    /// that can move both ways; whether anything moved. For stopping a
    /// sync at a chosen point (say, to restart the server there).
    pub fn step_round(&mut self) -> bool {
        self.step()
    }

    fn step(&mut self) -> bool {
        let mut moved = false;
        let now = self.now;
        if self.server.poll_timeout().is_some_and(|t| t <= now) {
            self.server.handle_timeout(now).unwrap();
        }
        for i in 0..self.devices.len() {
            moved |= self.step_device(i);
        }
        while let Some(ev) = self.server.poll_event() {
            moved = true;
            match &ev {
                ServerEvent::SendPush { device, .. } if !self.pushes_lost => {
                    let d = &mut self.devices[(device.0 - 1) as usize];
                    if d.online {
                        d.dev.push_received(now);
                    }
                }
                ServerEvent::Close { conn } => {
                    if let Some(d) = self.devices.iter_mut().find(|d| d.conn == Some(*conn)) {
                        d.conn = None;
                        d.dev.disconnected(now);
                    }
                }
                _ => {}
            }
            self.events.push(ev);
        }
        moved
    }

    fn step_device(&mut self, i: usize) -> bool {
        let now = self.now;
        let d = &mut self.devices[i];
        if !d.online {
            return false;
        }
        let mut moved = false;
        if d.dev.poll_timeout().is_some_and(|t| t <= now) {
            d.dev.handle_timeout(now);
        }
        while let Some(e) = d.to_raise.front().copied() {
            match d.dev.raise_compliance(e, now) {
                Ok(()) => {
                    d.to_raise.pop_front();
                    moved = true;
                }
                Err(mdm_sync::device::DeviceError::OutboxFull) => {
                    d.outbox_full += 1;
                    break;
                }
                Err(e) => panic!("{e:?}"),
            }
        }
        while let Some(ev) = d.dev.poll_event() {
            moved = true;
            d.on_event(ev, &mut self.server, now);
        }
        let mut buf = [0u8; 1024];
        if let Some(conn) = d.conn {
            while let Some(n) = d.dev.poll_transmit(&mut buf).unwrap() {
                moved = true;
                // Byte 4 is the payload's first: the `Up` tag, 3 for `Report`.
                if buf[4] == 3 && self.reports_lost > 0 {
                    self.reports_lost -= 1;
                    continue;
                }
                let _ = self.server.handle_bytes(conn, &buf[..n], now);
            }
            while let Some(n) = self.server.poll_transmit_for(conn, &mut buf) {
                moved = true;
                let _ = d.dev.handle_bytes(&buf[..n], now);
            }
        }
        moved
    }

    /// Stops the server process and starts a new one over the same store,
    /// as a server whose store outlives it (a database) restarts: every
    /// connection drops, and what the old engine kept only in memory is
    /// gone. With `recover`, the new engine rebuilds it from the store
    /// (`Server::recover`). Events the old engine had not handed out yet
    /// are lost with it.
    pub fn restart_server(&mut self, recover: bool) -> mdm_sync::server::Recovered {
        let now = self.now;
        for d in &mut self.devices {
            if d.conn.take().is_some() {
                d.dev.disconnected(now);
            }
        }
        let cfg = *self.server.config();
        let old = core::mem::replace(&mut self.server, server());
        // The same master key (devices keep their secrets); a fresh nonce
        // seed, as every process must have.
        self.server = Server::new(cfg, old.into_store(), [1; 32], [3; 32]);
        if recover {
            self.server.recover(now).unwrap()
        } else {
            Default::default()
        }
    }

    /// Powers a device off (its connection drops) and back on from its slots.
    pub fn reboot(&mut self, i: usize) {
        self.devices[i].reboot(&mut self.server, self.now);
    }

    /// Takes a device off the network (its connection drops).
    pub fn go_offline(&mut self, i: usize) {
        let now = self.now;
        let d = &mut self.devices[i];
        d.online = false;
        if let Some(conn) = d.conn.take() {
            self.server.connection_closed(conn, now);
            d.dev.disconnected(now);
        }
    }

    pub fn go_online(&mut self, i: usize) {
        self.devices[i].online = true;
    }

    /// Finishes a held task with `status`.
    pub fn finish(&mut self, i: usize, task: TaskId, status: TaskStatus) {
        let now = self.now;
        let d = &mut self.devices[i];
        d.held.retain(|t| t.id != task);
        d.dev.task_status(task, status, now).unwrap();
    }

    /// Device `i`'s timer if due, then its events, handled as its
    /// application does; whether there were any.
    pub fn device_events(&mut self, i: usize) -> bool {
        let now = self.now;
        let d = &mut self.devices[i];
        if d.dev.poll_timeout().is_some_and(|t| t <= now) {
            d.dev.handle_timeout(now);
        }
        let mut moved = false;
        while let Some(ev) = d.dev.poll_event() {
            moved = true;
            d.on_event(ev, &mut self.server, now);
        }
        moved
    }

    /// Device `i` syncs by hand and the first `Report` frame sent (by any
    /// device) is lost on the way; runs until it was sent.
    pub fn sync_losing_a_report(&mut self, i: usize) {
        self.reports_lost = 1;
        self.devices[i].dev.manual_sync(self.now);
        let mut rounds = 0;
        while self.reports_lost > 0 {
            assert!(self.step_round(), "the report never left the device");
            rounds += 1;
            assert!(rounds < 100, "the report never left the device");
        }
    }

    pub fn raise(&mut self, i: usize, e: ComplianceEvent) {
        let now = self.now;
        self.devices[i].dev.raise_compliance(e, now).unwrap();
    }

    pub fn times_executed(&self, i: usize, task: TaskId) -> usize {
        self.devices[i]
            .executed
            .iter()
            .filter(|t| t.id == task)
            .count()
    }

    pub fn count_events(&self, f: impl Fn(&ServerEvent) -> bool) -> usize {
        self.events.iter().filter(|e| f(e)).count()
    }
}

impl SimDevice {
    pub fn new(cfg: DeviceConfig, now: Instant) -> Self {
        Self::sized(cfg, now)
    }
}

impl<const O: usize, const I: usize> SimDevice<O, I> {
    /// A device of capacities `O` and `I` (`SimDevice::<3, 1>::sized`).
    pub fn sized(cfg: DeviceConfig, now: Instant) -> Self {
        Self {
            dev: Device::new(cfg.clone(), now),
            cfg,
            conn: None,
            online: true,
            behaviour: Behaviour::Succeed,
            script: VecDeque::new(),
            executed: Vec::new(),
            held: Vec::new(),
            cancels: Vec::new(),
            slots: [Vec::new(), Vec::new()],
            policy_outcome: PolicyOutcome::Applied,
            hold_policy: false,
            applied_policies: Vec::new(),
            syncs_done: 0,
            failed: Vec::new(),
            to_raise: VecDeque::new(),
            outbox_full: 0,
        }
    }

    /// Powers off (the connection drops) and back on from the latest slot.
    pub fn reboot(&mut self, server: &mut Server<MemoryStore>, now: Instant) {
        if let Some(conn) = self.conn.take() {
            server.connection_closed(conn, now);
        }
        self.held.clear();
        let latest = pick_latest(&self.slots[0], &self.slots[1]).map(|s| s.to_vec());
        self.dev = match latest {
            Some(bytes) => Device::restore(self.cfg.clone(), &bytes, now).unwrap(),
            None => Device::new(self.cfg.clone(), now),
        };
    }

    /// Does what the application does for `ev`.
    pub fn on_event(&mut self, ev: Event, server: &mut Server<MemoryStore>, now: Instant) {
        match ev {
            Event::Persist => {
                let mut buf = [0u8; 2048];
                let n = self.dev.snapshot(&mut buf).unwrap();
                self.slots[self.dev.snapshot_slot()] = buf[..n].to_vec();
            }
            Event::Connect => {
                let conn = server.connection_opened(now).unwrap();
                self.conn = Some(conn);
                self.dev.connected(now);
            }
            Event::Disconnect => {
                if let Some(conn) = self.conn.take() {
                    server.connection_closed(conn, now);
                }
            }
            Event::Execute(task) => {
                self.executed.push(task);
                let b = self.script.pop_front().unwrap_or(self.behaviour);
                let status = match b {
                    Behaviour::Succeed => TaskStatus::Succeeded {
                        result: result_for(task.kind),
                    },
                    Behaviour::Fail(reason) => TaskStatus::Failed { reason },
                    Behaviour::Defer(retry_after_s) => TaskStatus::Deferred { retry_after_s },
                    Behaviour::Hold => {
                        self.held.push(task);
                        return;
                    }
                };
                self.dev.task_status(task.id, status, now).unwrap();
            }
            Event::Cancel(id) => self.cancels.push(id),
            Event::ApplyPolicy { .. } if self.hold_policy => {}
            Event::ApplyPolicy { version } => {
                let outcome = self.policy_outcome.clone();
                match self.dev.policy_applied(version, outcome, now) {
                    Ok(()) => self.applied_policies.push(version),
                    // No room: it stays pending, and is announced again
                    // once an ack frees the outbox (`Device::policy_applied`).
                    Err(mdm_sync::device::DeviceError::OutboxFull) => self.outbox_full += 1,
                    Err(e) => panic!("{e:?}"),
                }
            }
            Event::SyncDone { .. } => self.syncs_done += 1,
            Event::SyncFailed { error } => self.failed.push(error),
            _ => {}
        }
    }
}

/// The `Down` messages in `bytes`, a server's output in the session of key
/// `key`, of any length (fed to the decoder a buffer at a time). Panics on
/// a bad frame, a message that does not decode, or a partial frame at the end.
pub fn downs(bytes: &[u8], key: u32) -> Vec<mdm_sync::wire::Down> {
    use mdm_sync::wire::{self, Down};
    let mut dec = wire::FrameDecoder::<{ wire::MAX_FRAME }>::new();
    dec.set_key(key);
    let mut msgs = Vec::new();
    let mut rest = bytes;
    loop {
        let n = dec.push(rest);
        rest = &rest[n..];
        while let Some(p) = dec.decode() {
            msgs.push(wire::decode::<Down>(p.expect("whole frames only")).unwrap());
        }
        if rest.is_empty() {
            break;
        }
    }
    assert_eq!(dec.buffered(), 0, "no partial frame left");
    msgs
}

/// Everything `server` has to send on `conn`, taken whole.
pub fn output<S: mdm_sync::server::FleetStore>(server: &mut Server<S>, conn: ConnId) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Some(n) = server.poll_transmit_for(conn, &mut buf) {
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// What [`raw_handshake`] returns: the connection, its session key, and the
/// server's answer to the proof.
pub type RawHandshake<E> = (ConnId, u32, Result<(), mdm_sync::server::ServerError<E>>);

/// A frame around any payload (even one no type encodes), with a valid CRC
/// for session key `key` (0 outside a session).
pub fn raw_frame(payload: &[u8], key: u32) -> Vec<u8> {
    let mut f = mdm_sync::wire::frame::MAGIC.to_vec();
    f.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    f.extend_from_slice(payload);
    let crc = mdm_sync::wire::crc32(&f[2..]) ^ key;
    f.extend_from_slice(&crc.to_le_bytes());
    f
}

/// A device's handshake done by hand on a new connection of `server` (no
/// device engine), in enrollment generation 0: see [`raw_handshake_gen`].
pub fn raw_handshake<S: mdm_sync::server::FleetStore>(
    server: &mut Server<S>,
    device: DeviceId,
    secret: &[u8; 32],
    now: Instant,
) -> RawHandshake<S::Error> {
    raw_handshake_gen(server, device, 0, secret, now)
}

/// A device's handshake done by hand on a new connection of `server` (no
/// device engine): `Hello` of `generation` with an empty ledger, then the
/// right proof for `secret`. Returns the connection, its session key, and the
/// server's answer to the proof. The challenge has been read; the rest of the
/// server's output is left for the caller.
pub fn raw_handshake_gen<S: mdm_sync::server::FleetStore>(
    server: &mut Server<S>,
    device: DeviceId,
    generation: u32,
    secret: &[u8; 32],
    now: Instant,
) -> RawHandshake<S::Error> {
    let (conn, nonce, binding) = raw_hello(server, device, generation, 0, now);
    let answer = raw_proof(server, conn, &nonce, &binding, secret, now);
    (conn, mdm_sync::wire::frame::session_key(&nonce), answer)
}

/// The first half of [`raw_handshake_gen`]: on a new connection, a `Hello`
/// of `generation` with ledger `last_task_seq`; the challenge is read.
/// Returns the connection, the challenge's nonce and the `Hello`'s binding
/// (for [`raw_proof`]).
pub fn raw_hello<S: mdm_sync::server::FleetStore>(
    server: &mut Server<S>,
    device: DeviceId,
    generation: u32,
    last_task_seq: u32,
    now: Instant,
) -> (ConnId, [u8; 16], mdm_sync::auth::HelloBinding) {
    use mdm_sync::wire::{self, frame, Down, Hello, SyncTrigger, Up};

    let Ok(conn) = server.connection_opened(now) else {
        panic!("no connection");
    };
    let mut buf = [0u8; 600];
    let hello = Up::Hello(Hello {
        version: wire::PROTOCOL_VERSION,
        attempt: 1,
        device,
        generation,
        platform: Platform::Android,
        push_token: heapless::String::try_from("token").unwrap(),
        trigger: SyncTrigger::Push,
        last_task_seq,
        policy_version: 0,
    });
    let n = frame::encode(&hello, &mut buf).unwrap();
    let binding = mdm_sync::auth::bind_hello(frame::payload(&buf[..n]));
    assert!(server.handle_bytes(conn, &buf[..n], now).is_ok());
    let n = server.poll_transmit_for(conn, &mut buf).unwrap();
    let mut dec = wire::FrameDecoder::<600>::new();
    dec.push(&buf[..n]);
    let Ok(Down::Challenge { nonce, .. }) = wire::decode::<Down>(dec.decode().unwrap().unwrap())
    else {
        panic!("no challenge");
    };
    (conn, nonce, binding)
}

/// The second half of [`raw_handshake_gen`]: the proof for `secret` of the
/// handshake [`raw_hello`] began on `conn`; the server's answer.
pub fn raw_proof<S: mdm_sync::server::FleetStore>(
    server: &mut Server<S>,
    conn: ConnId,
    nonce: &[u8; 16],
    binding: &mdm_sync::auth::HelloBinding,
    secret: &[u8; 32],
    now: Instant,
) -> Result<(), mdm_sync::server::ServerError<S::Error>> {
    use mdm_sync::wire::{frame, Up};

    let mut buf = [0u8; 64];
    let proof = Up::Proof {
        mac: mdm_sync::auth::proof(secret, nonce, binding),
    };
    let n = frame::encode_keyed(&proof, &mut buf, frame::session_key(nonce)).unwrap();
    server.handle_bytes(conn, &buf[..n], now)
}

/// A tokio server engine on `clock`, with no push service, accepting on an
/// ephemeral port of 127.0.0.1 (call inside a runtime).
pub async fn loopback_server(
    clock: mdm_sync::adapters::clock::ScaledClock,
) -> (
    mdm_sync::adapters::tokio::ServerHandle<MemoryStore>,
    core::net::SocketAddr,
) {
    let server = Server::new(
        ServerConfig::default(),
        MemoryStore::new(),
        [8; 32],
        [9; 32],
    );
    let push = |_: DeviceId, _: Platform, _: &str| Ok(());
    let (handle, _engine) = mdm_sync::adapters::tokio::Builder::new(server, push)
        .clock(clock)
        .spawn();
    let addr = serve_loopback(&handle).await;
    (handle, addr)
}

/// Accepts connections for `handle` on an ephemeral port of 127.0.0.1.
pub async fn serve_loopback(
    handle: &mdm_sync::adapters::tokio::ServerHandle<MemoryStore>,
) -> core::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(mdm_sync::adapters::tokio::serve(listener, handle.clone()));
    addr
}

/// A tokio runtime with one worker thread, for tests that drive the tokio
/// adapter from a blocking test thread.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// One round of a blocking device's run loop: `run_once`, then a wait of
/// at most 20 ms (less when the engine has work sooner) for a push to `id`.
pub fn blocking_round<C, S, H, K, const O: usize, const I: usize>(
    dev: &mut mdm_sync::adapters::blocking::BlockingDevice<C, S, H, K, O, I>,
    pushes: &mdm_sync::adapters::push::UdpPushReceiver,
    id: DeviceId,
) where
    C: mdm_sync::adapters::blocking::Connector,
    S: mdm_sync::adapters::blocking::Storage,
    H: mdm_sync::adapters::blocking::Handler,
    K: mdm_sync::adapters::clock::Clock,
{
    let wait = dev.run_once().unwrap();
    let wait = wait.min(core::time::Duration::from_millis(20));
    if pushes.recv_timeout(wait).unwrap() == Some(id) {
        dev.push_received();
    }
}

/// A small xorshift generator for random test sequences (not for secrets).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The tokio server adapter on a fresh 127.0.0.1 port: an in-memory store,
/// pushes handed to `push`, and every server event copied to the returned
/// channel. Also the engine's task (it ends after `ServerHandle::shutdown`).
pub async fn watched_loopback_server<P>(
    push: P,
) -> (
    mdm_sync::adapters::tokio::ServerHandle<MemoryStore>,
    tokio::task::JoinHandle<Server<MemoryStore>>,
    tokio::sync::mpsc::UnboundedReceiver<ServerEvent>,
    core::net::SocketAddr,
)
where
    P: mdm_sync::adapters::push::PushSender + Send + 'static,
{
    use mdm_sync::adapters::tokio::Builder;
    let (event_tx, events) = tokio::sync::mpsc::unbounded_channel();
    let server = Server::new(
        ServerConfig::default(),
        MemoryStore::new(),
        [7; 32],
        [8; 32],
    );
    let (handle, engine) = Builder::new(server, push)
        .on_event(move |ev, _| {
            let _ = event_tx.send(ev.clone());
        })
        .spawn();
    let addr = serve_loopback(&handle).await;
    (handle, engine, events, addr)
}

/// Waits for the first server event that `pick` accepts.
pub async fn expect_event<T>(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<ServerEvent>,
    mut pick: impl FnMut(&ServerEvent) -> Option<T>,
) -> T {
    loop {
        let ev = events.recv().await.expect("server engine running");
        if let Some(found) = pick(&ev) {
            return found;
        }
    }
}

/// Two snapshot slots in memory, for the embedded runner.
#[cfg(feature = "embedded")]
#[derive(Clone, Default)]
pub struct MemorySlots(pub [Vec<u8>; 2]);

#[cfg(feature = "embedded")]
impl mdm_sync::adapters::embedded::SnapshotStore for MemorySlots {
    type Error = core::convert::Infallible;

    async fn read(&mut self, slot: usize, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let data = &self.0[slot];
        buf[..data.len()].copy_from_slice(data);
        Ok(data.len())
    }

    async fn write(&mut self, slot: usize, bytes: &[u8]) -> Result<(), Self::Error> {
        self.0[slot] = bytes.to_vec();
        Ok(())
    }
}

/// Wakes from an unbounded channel (`recv` is cancel-safe); a closed
/// channel shuts the runner down.
#[cfg(feature = "embedded")]
pub struct Inbox(pub tokio::sync::mpsc::UnboundedReceiver<mdm_sync::adapters::embedded::Wake>);

#[cfg(feature = "embedded")]
impl mdm_sync::adapters::embedded::WakeSource for Inbox {
    async fn wait(&mut self) -> mdm_sync::adapters::embedded::Wake {
        let wake = self.0.recv().await;
        wake.unwrap_or(mdm_sync::adapters::embedded::Wake::Shutdown)
    }
}

/// Stands in for a runner's connector, wake source and handler where only
/// `Runner::restore` is used: it never connects, waits, runs or applies
/// anything.
#[cfg(feature = "embedded")]
pub struct Unused;

#[cfg(feature = "embedded")]
impl mdm_sync::adapters::embedded::Connector for Unused {
    type Connection<'a> = embedded_io_adapters::tokio_1::FromTokio<tokio::net::TcpStream>;
    type Error = std::io::Error;

    async fn connect(&mut self) -> Result<Self::Connection<'_>, Self::Error> {
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

#[cfg(feature = "embedded")]
impl mdm_sync::adapters::embedded::WakeSource for Unused {
    async fn wait(&mut self) -> mdm_sync::adapters::embedded::Wake {
        mdm_sync::adapters::embedded::Wake::Shutdown
    }
}

#[cfg(feature = "embedded")]
impl mdm_sync::adapters::embedded::Handler for Unused {
    async fn execute(&mut self, _task: Task) -> Option<TaskStatus> {
        None
    }
    async fn cancel(&mut self, _task: TaskId) -> Option<TaskStatus> {
        None
    }
    async fn apply_policy(&mut self, _policy: &mdm_sync::wire::Policy) -> Option<PolicyOutcome> {
        None
    }
}

/// The snapshot `d` asks to persist at its next `Persist` event (panics if
/// none is pending).
pub fn next_persist<const O: usize, const I: usize>(d: &mut Device<O, I>) -> Vec<u8> {
    while let Some(ev) = d.poll_event() {
        if ev == Event::Persist {
            let mut buf = vec![0u8; Device::<O, I>::SNAPSHOT_MAX];
            let n = d.snapshot(&mut buf).unwrap();
            buf.truncate(n);
            return buf;
        }
    }
    panic!("no Persist event");
}

/// The number of seeds a random test runs: the environment variable `var`
/// if set to a number, else `default`.
pub fn seeds(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Fills `device`'s queue (`max_open_tasks` locates) and assigns it a
/// policy of 16 settings: the largest first burst. Returns the tasks.
pub fn queue_full_work(
    server: &mut Server<MemoryStore>,
    device: DeviceId,
    now: Instant,
) -> Vec<TaskId> {
    let open = server.config().max_open_tasks;
    let tasks = (0..open)
        .map(|_| {
            server
                .enqueue_task(
                    device,
                    TaskKind::Locate,
                    mdm_sync::server::TaskOptions::default(),
                    now,
                )
                .unwrap()
        })
        .collect();
    let settings: Vec<mdm_sync::wire::Setting> = (0..16)
        .map(|k| mdm_sync::wire::Setting { key: k, value: -1 })
        .collect();
    server.assign_policy(device, &settings, now).unwrap();
    tasks
}
