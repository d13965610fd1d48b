//! The engines end to end, in memory, no sockets:
//!
//! - `sync/round_trip_in_session`: the server queues a task for a device in an
//!   open session -> frames out -> the device decodes, executes, persists and
//!   reports -> the server records the final status and acknowledges.
//! - `sync/whole_sync_with_handshake`: the same, but the device is offline: a
//!   push, connect, Hello, Challenge, Proof (HMAC-SHA256), Welcome, task,
//!   reports, acks, disconnect.
//! - `fleet/<devices>`: the server engine alone with 100,000 and 1,000,000
//!   registered devices. Per sync: queue a task (a push goes out), accept a
//!   connection, run the handshake, offer the task, record its `Received` and
//!   `Succeeded` reports, close. The device side is prepared outside the timed
//!   loop (its proofs are computed ahead), so only server work is timed.

mod common;

use core::hint::black_box;
use core::time::Duration as StdDuration;
use std::time::Instant as StdInstant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use common::{Rig, FCM_TOKEN, MASTER, NONCE_SEED, T0};
use mdm_sync::auth;
use mdm_sync::server::{MemoryStore, Server, ServerConfig, TaskState};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::{
    frame, DeviceId, Down, FrameDecoder, Hello, Platform, ReportBody, SyncTrigger, TaskId,
    TaskKind, TaskStatus, Up, MAX_FRAME, PROTOCOL_VERSION,
};

/// Iterations timed in one go; final tasks are pruned between chunks, outside
/// the timing, as an application would from time to time.
const CHUNK: u64 = 4096;

fn timed_in_chunks(iters: u64, rig: &mut Rig, mut f: impl FnMut(&mut Rig)) -> StdDuration {
    let mut total = StdDuration::ZERO;
    let mut left = iters;
    while left > 0 {
        let k = left.min(CHUNK);
        let start = StdInstant::now();
        for _ in 0..k {
            f(rig);
        }
        total += start.elapsed();
        left -= k;
        let now = rig.now + Duration::from_millis(1);
        rig.server.store_mut().prune_finished(now);
    }
    total
}

fn round_trip(c: &mut Criterion) {
    let mut g = c.benchmark_group("sync");
    g.throughput(Throughput::Elements(1));

    let mut rig = Rig::in_session();
    let task = rig.queue(TaskKind::Lock);
    rig.pump();
    assert_eq!(
        rig.server.task_state(rig.id, task),
        Some(TaskState::Succeeded { result: None })
    );
    assert!(rig.conn.is_some(), "the session must stay open");
    g.bench_function("round_trip_in_session", |b| {
        b.iter_custom(|iters| {
            timed_in_chunks(iters, &mut rig, |rig| {
                rig.queue(TaskKind::Lock);
                rig.pump();
            })
        })
    });

    let mut rig = Rig::new();
    rig.device.handle_timeout(rig.now);
    rig.pump();
    let before = rig.syncs_done;
    rig.advance(Duration::from_secs(61));
    let task = rig.queue(TaskKind::Lock);
    rig.pump();
    assert_eq!(rig.syncs_done, before + 1, "a push must start a whole sync");
    assert!(rig.conn.is_none());
    assert_eq!(
        rig.server.task_state(rig.id, task),
        Some(TaskState::Succeeded { result: None })
    );
    g.bench_function("whole_sync_with_handshake", |b| {
        b.iter_custom(|iters| {
            timed_in_chunks(iters, &mut rig, |rig| {
                // Past the push rate limit, so every task gets its own push.
                rig.advance(Duration::from_secs(61));
                rig.queue(TaskKind::Lock);
                rig.pump();
            })
        })
    });
    g.finish();
}

/// What the simulated device sends in one sync, prepared ahead.
struct SyncInput {
    device: DeviceId,
    task: TaskId,
    nonce_counter: u64,
    now: Instant,
    hello: Vec<u8>,
    proof: Vec<u8>,
    reports: Vec<u8>,
}

/// A server with a large fleet, and what the bench knows of each device.
struct Fleet {
    server: Server<MemoryStore>,
    devices: u64,
    /// Per device: last task sequence accepted, last report sequence sent.
    task_seq: Vec<u32>,
    report_seq: Vec<u32>,
    nonces: u64,
    next_task: u64,
    now: Instant,
    rng: u64,
    out: Box<[u8; 8192]>,
    inputs: Vec<SyncInput>,
}

impl Fleet {
    fn new(devices: u64) -> Self {
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
            nonces: 0,
            next_task: 0,
            now: T0,
            rng: 0x9E37_79B9_7F4A_7C15,
            out: Box::new([0; 8192]),
            inputs: Vec::new(),
        };
        // Every device syncs once, so each has a push token like a real fleet.
        for start in (0..devices).step_by(4096) {
            fleet.prepare((start..devices.min(start + 4096)).map(DeviceId));
            fleet.run_prepared(true);
            fleet.prune();
        }
        fleet
    }

    fn next_device(&mut self) -> DeviceId {
        // xorshift64: devices in random order, so the store is hit all over.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        DeviceId(x % self.devices)
    }

    /// Prepares one sync for each device, in order, outside any timing.
    fn prepare(&mut self, devices: impl Iterator<Item = DeviceId>) {
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
            device,
            generation: 0,
            platform: Platform::Android,
            push_token: heapless::String::try_from(FCM_TOKEN).unwrap(),
            trigger: SyncTrigger::Push,
            last_task_seq: self.task_seq[i],
            policy_version: 0,
        });
        let secret = auth::derive_secret(&MASTER, device, 0);
        let nonce = auth::nonce(&NONCE_SEED, self.nonces);
        let mac = auth::proof(&secret, &nonce, device, 0);
        let r = self.report_seq[i];
        let report = |seq, status| Up::Report {
            seq,
            body: ReportBody::Task { task, status },
        };
        let mut reports = encode(&report(r + 1, TaskStatus::Received));
        reports.extend(encode(&report(
            r + 2,
            TaskStatus::Succeeded { result: None },
        )));
        self.task_seq[i] += 1;
        self.report_seq[i] += 2;
        SyncInput {
            device,
            task,
            nonce_counter: self.nonces,
            now: self.now,
            hello: encode(&hello),
            proof: encode(&Up::Proof { mac }),
            reports,
        }
    }

    /// Runs the prepared syncs; with `check`, verifies every message the
    /// server sends and the task's final state.
    fn run_prepared(&mut self, check: bool) {
        let inputs = core::mem::take(&mut self.inputs);
        for input in &inputs {
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
        let challenge = drain(s, conn, &mut self.out, check);
        s.handle_bytes(conn, &input.proof, now).unwrap();
        let offers = drain(s, conn, &mut self.out, check);
        s.handle_bytes(conn, &input.reports, now).unwrap();
        let acks = drain(s, conn, &mut self.out, check);
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
                matches!(offers[..], [Down::Welcome { .. }, Down::Task(t), Down::SyncEnd] if t.id == task),
                "{offers:?}"
            );
            assert!(matches!(acks[..], [Down::Ack { .. }, Down::Ack { .. }]));
            let state = s.task_state(input.device, task);
            assert_eq!(state, Some(TaskState::Succeeded { result: None }));
        }
    }

    fn prune(&mut self) {
        let now = self.now + Duration::from_millis(1);
        self.server.store_mut().prune_finished(now);
    }

    /// Times `iters` syncs of random devices.
    fn timed(&mut self, iters: u64) -> StdDuration {
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

fn encode(msg: &Up) -> Vec<u8> {
    let mut buf = [0u8; MAX_FRAME];
    let n = frame::encode(msg, &mut buf).unwrap();
    buf[..n].to_vec()
}

/// Takes everything the server has for `conn`; decodes it only when checking.
fn drain(
    s: &mut Server<MemoryStore>,
    conn: mdm_sync::server::ConnId,
    out: &mut [u8; 8192],
    check: bool,
) -> Vec<Down> {
    let mut msgs = Vec::new();
    let mut dec = FrameDecoder::<MAX_FRAME>::new();
    while let Some(n) = s.poll_transmit_for(conn, &mut out[..]) {
        black_box(&out[..n]);
        if check {
            dec.push(&out[..n]);
            while let Some(p) = dec.decode() {
                msgs.push(mdm_sync::wire::decode::<Down>(p.unwrap()).unwrap());
            }
        }
    }
    msgs
}

fn fleet(c: &mut Criterion) {
    let mut g = c.benchmark_group("fleet");
    g.throughput(Throughput::Elements(1));
    for devices in [100_000u64, 1_000_000] {
        // Built inside the closure, so that a filtered run skips the setup.
        let mut fleet = None;
        g.bench_function(BenchmarkId::new("queue_sync_status", devices), |b| {
            let fleet = fleet.get_or_insert_with(|| {
                let mut fleet = Fleet::new(devices);
                // One checked round of random devices before timing.
                let sample: Vec<DeviceId> = (0..1000).map(|_| fleet.next_device()).collect();
                fleet.prepare(sample.into_iter());
                fleet.run_prepared(true);
                fleet
            });
            b.iter_custom(|iters| fleet.timed(iters))
        });
    }
    g.finish();
}

criterion_group!(benches, round_trip, fleet);
criterion_main!(benches);
