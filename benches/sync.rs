//! The engines end to end, in memory, no sockets:
//!
//! - `sync/round_trip_in_session`: the server queues a task for a device in an
//!   open session -> frames out -> the device decodes, executes, persists and
//!   reports -> the server records the final status and acknowledges. The
//!   device reads the server's frames where the server wrote them
//!   (`Server::transmit_with`), as a transport that takes a borrowed slice
//!   does; before 2026-12-05 the rig copied them out with
//!   `poll_transmit_for` first.
//! - `sync/whole_sync_with_handshake`: the same, but the device is offline: a
//!   push, connect, Hello, Challenge, Proof, Welcome, task,
//!   reports, acks, disconnect.
//! - `fleet/<devices>`: the server engine alone with 100,000 and 1,000,000
//!   registered devices. Per sync: queue a task (a push goes out), accept a
//!   connection, run the handshake, offer the task, record its `Succeeded`
//!   report (a quick task's only report: the device engine lets the final
//!   status take the place of an unsent `Received`), close. The device side is prepared outside the timed
//!   loop (its proofs are computed ahead), so only server work is timed.
//!   `queue_sync_status` runs each sync alone, as a server that learns of
//!   its work one item at a time; `queue_sync_status_lookahead` calls
//!   `Server::prefetch_device` for the device `LOOKAHEAD` syncs ahead before
//!   each one, as a server working through a known list (a campaign queueing
//!   a task for many devices) can, so that the next devices' cache misses
//!   overlap the work at hand. `queue_sync_status_batch_hints` hints
//!   `HINT_BATCH` devices at once, those of the next batch of syncs, at the
//!   start of each batch, as an event loop that takes its ready connections
//!   in batches can: the page walks of a whole batch then overlap one
//!   another (at 1,000,000 devices this paid better than one device a few
//!   syncs ahead, see README "Performance" and PERFORMANCE.md).
//! - `auth/server_per_sync`: the SHA-256 work alone of a server handshake
//!   that derives the device's secret, as its first after each start does (a
//!   nonce, the secret, the `Hello` hash with a 144-byte push token, the
//!   proof check: 5.5 SHA-256 compressions); `_no_token` the same with a
//!   `Hello` short enough to sit in the proof's block (2.5). To tell how much
//!   of a sync's time the authentication design takes. A later handshake of
//!   the device uses the secret kept from its last one, one compression
//!   fewer: the `fleet` rows' syncs, with no token, do 1.5.
//! - `auth/device_proof`: the device's share of it, the `Hello` hash and the
//!   proof (4 compressions; `_no_token` 1).

mod common;

use core::hint::black_box;
use core::time::Duration as StdDuration;
use std::time::Instant as StdInstant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use common::{Fleet, Rig};
use mdm_sync::server::TaskState;
use mdm_sync::time::Duration;
use mdm_sync::wire::{DeviceId, TaskKind};

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

fn fleet(c: &mut Criterion) {
    let mut g = c.benchmark_group("fleet");
    g.throughput(Throughput::Elements(1));
    for devices in [100_000u64, 1_000_000] {
        // Built inside the closures, so that a filtered run skips the setup.
        let mut fleet = None;
        let mut setup = || {
            let mut fleet = Fleet::new(devices);
            // One checked round of random devices before timing.
            let sample: Vec<DeviceId> = (0..1000).map(|_| fleet.next_device()).collect();
            fleet.prepare(sample.into_iter());
            fleet.run_prepared(true);
            fleet
        };
        for (name, lookahead, hint_batch) in [
            ("queue_sync_status", 0, 0),
            ("queue_sync_status_lookahead", LOOKAHEAD, 0),
            ("queue_sync_status_batch_hints", 0, HINT_BATCH),
        ] {
            g.bench_function(BenchmarkId::new(name, devices), |b| {
                let fleet = fleet.get_or_insert_with(&mut setup);
                fleet.lookahead = lookahead;
                fleet.hint_batch = hint_batch;
                b.iter_custom(|iters| fleet.timed(iters))
            });
        }
    }
    g.finish();
}

/// How many syncs ahead the `lookahead` rows of `fleet` hint the next device
/// to the server (`Server::prefetch_device`).
const LOOKAHEAD: usize = 4;

/// How many devices the `batch_hints` rows of `fleet` hint at once, one
/// batch ahead.
const HINT_BATCH: usize = 8;

fn auth(c: &mut Criterion) {
    use mdm_sync::auth;
    let mut g = c.benchmark_group("auth");
    g.throughput(Throughput::Elements(1));
    let master = auth::PreparedMaster::new(&common::MASTER);
    let mut nonces = auth::Nonces::new(&common::NONCE_SEED);
    let id = DeviceId(1_234_567);
    // With the push token in the `Hello` (hashed: the first sync after a
    // boot), and without (held in the proof's block: the usual sync).
    let with_token = common::sample_hello();
    let without = mdm_sync::wire::Hello {
        push_token: heapless::String::new(),
        ..with_token.clone()
    };
    for (name, hello) in [("", with_token), ("_no_token", without)] {
        let hello = mdm_sync::wire::Up::Hello(hello);
        let mut buf = [0u8; 512];
        let n = mdm_sync::wire::encode_payload(&hello, &mut buf).unwrap();
        let payload = &buf[..n];
        // A right proof, so that the check runs to the end as in a real sync.
        let nonce = nonces.next_nonce();
        let secret = auth::derive_secret_prepared(&master, id, 0);
        let mac = auth::proof(&secret, &nonce, &auth::bind_hello(payload));
        g.bench_function(format!("server_per_sync{name}"), |b| {
            b.iter(|| {
                black_box(nonces.next_nonce());
                let secret = auth::derive_secret_prepared(&master, black_box(id), 0);
                let bound = auth::bind_hello(black_box(payload));
                assert!(auth::verify(&secret, &nonce, &bound, black_box(&mac)));
            })
        });
        // The device's share: bind its `Hello`, compute the proof.
        let secret = auth::derive_secret(&common::MASTER, id, 0);
        g.bench_function(format!("device_proof{name}"), |b| {
            b.iter(|| {
                let bound = auth::bind_hello(black_box(payload));
                black_box(auth::proof(black_box(&secret), &nonce, &bound))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, round_trip, fleet, auth);
criterion_main!(benches);
