//! `ServerConfig::max_pending_out` does not apply to a session's first
//! burst (`Welcome`, the tasks offered, a policy, `SyncEnd`), which the
//! engine queues all at once in answer to the proof. Before, a bound under
//! that burst closed every session of a device with that much work before
//! the work was out: the device, asked back by a push, was closed the same
//! way each time and never got its tasks. The bound still closes a reader
//! that leaves output untaken once the burst is out.

mod common;

use mdm_sync::server::{MemoryStore, Server, ServerConfig, ServerEvent};
use mdm_sync::time::Instant;
use mdm_sync::wire::{frame, DeviceId, Down, ReportBody, TaskStatus, Up};

const T0: Instant = Instant::from_millis(1_000);
const DEV: DeviceId = DeviceId(9);
const MASTER: [u8; 32] = [7; 32];

fn server(max_pending_out: usize) -> Server<MemoryStore> {
    let cfg = ServerConfig {
        max_pending_out,
        ..ServerConfig::default()
    };
    let mut s = Server::new(cfg, MemoryStore::new(), MASTER, [8; 32]);
    s.enroll(DEV, T0).unwrap();
    s
}

/// A device with a full queue and a policy, whose handshake the test does
/// by hand; returns the server, the connection, its key and the tasks.
fn full_burst(
    max_pending_out: usize,
) -> (
    Server<MemoryStore>,
    mdm_sync::server::ConnId,
    u32,
    Vec<mdm_sync::wire::TaskId>,
) {
    let mut s = server(max_pending_out);
    let tasks = common::queue_full_work(&mut s, DEV, T0);
    while s.poll_event().is_some() {}
    let secret = mdm_sync::auth::derive_secret(&MASTER, DEV, 0);
    let (conn, key, answer) = common::raw_handshake(&mut s, DEV, &secret, T0);
    answer.unwrap();
    (s, conn, key, tasks)
}

#[test]
fn the_whole_first_burst_goes_out_under_any_bound() {
    for bound in [0, 1, 100, 500] {
        let (mut s, conn, key, tasks) = full_burst(bound);
        assert_eq!(s.session_count(), 1, "bound {bound}: session closed");
        let out = common::output(&mut s, conn);
        let msgs = common::downs(&out, key);
        let offered: Vec<_> = msgs
            .iter()
            .filter_map(|m| match m {
                Down::Task(t) => Some(t.id),
                _ => None,
            })
            .collect();
        assert_eq!(offered, tasks, "bound {bound}");
        assert!(
            matches!(msgs.first(), Some(Down::Welcome { .. })),
            "bound {bound}"
        );
        assert!(
            msgs.iter()
                .any(|m| matches!(m, Down::Policy(p) if p.settings.len() == 16)),
            "bound {bound}"
        );
        assert_eq!(msgs.last(), Some(&Down::SyncEnd), "bound {bound}");
        // The burst is larger than the bounds tried: it did need the exemption.
        assert!(out.len() > 500, "{} bytes", out.len());
        // What transports that buffer output must allow covers it.
        let most = s.config().max_first_burst();
        assert!(out.len() <= most, "{} bytes over {most}", out.len());
    }
}

#[test]
fn after_the_burst_the_bound_closes_a_reader_that_leaves_output() {
    let (mut s, conn, key, tasks) = full_burst(0);
    // Output taken: a report's `Ack` is queued with nothing pending.
    common::output(&mut s, conn);
    let report = |seq, task| Up::Report {
        seq,
        body: ReportBody::Task {
            task,
            status: TaskStatus::Received,
        },
    };
    let mut buf = [0u8; 64];
    let n = frame::encode_keyed(&report(1, tasks[0]), &mut buf, key).unwrap();
    s.handle_bytes(conn, &buf[..n], T0).unwrap();
    assert_eq!(s.session_count(), 1);
    // The `Ack` left untaken: the next frame finds the bound (0) passed.
    let n = frame::encode_keyed(&report(2, tasks[1]), &mut buf, key).unwrap();
    s.handle_bytes(conn, &buf[..n], T0).unwrap();
    assert_eq!(s.session_count(), 0, "a reader leaving output is closed");
    let closed = core::iter::from_fn(|| s.poll_event())
        .any(|e| matches!(e, ServerEvent::Close { conn: c } if c == conn));
    assert!(closed);
}

/// After the burst, the bound counts only what was queued after it: a
/// reader still taking the burst (a slow link, a large burst) when the
/// device's first reports come is closed at the same report as one that
/// took the whole burst at once, not at the first `Ack` (before, with any
/// of the burst untaken, the first frame after it found the bound passed).
/// Kept open, it gets the whole burst and every `Ack`, in order.
#[test]
fn a_reader_still_taking_the_burst_is_bounded_as_one_that_took_it() {
    const REPORTS: u32 = 25;
    // Takes `first` bytes of the burst (all if `None`), then sends reports,
    // taking nothing more; returns the report at which the connection
    // closed, if it did, and everything taken.
    let run = |bound: usize, first: Option<usize>| {
        let (mut s, conn, key, tasks) = full_burst(bound);
        let mut taken = Vec::new();
        let mut left = first.unwrap_or(usize::MAX);
        while left > 0
            && s.transmit_with(conn, |b| {
                let n = b.len().min(left);
                taken.extend_from_slice(&b[..n]);
                left -= n;
                n
            })
            .is_some_and(|n| n > 0)
        {}
        let mut buf = [0u8; 64];
        for seq in 1..=REPORTS {
            let up = Up::Report {
                seq,
                body: ReportBody::Task {
                    task: tasks[seq as usize],
                    status: TaskStatus::Received,
                },
            };
            let n = frame::encode_keyed(&up, &mut buf, key).unwrap();
            let _ = s.handle_bytes(conn, &buf[..n], T0);
            if s.session_count() == 0 {
                return (Some(seq), taken, key);
            }
        }
        taken.extend(common::output(&mut s, conn));
        (None, taken, key)
    };
    for bound in [0, 1, 100, 300] {
        let (at_drained, _, _) = run(bound, None);
        for first in [0, 1, 200, 600] {
            let (at, taken, key) = run(bound, Some(first));
            assert_eq!(at, at_drained, "bound {bound}, {first} bytes taken first");
            if at.is_none() {
                let msgs = common::downs(&taken, key);
                assert_eq!(msgs.last(), Some(&Down::Ack { seq: REPORTS }));
                let acks = msgs.iter().filter(|m| matches!(m, Down::Ack { .. }));
                assert_eq!(acks.count(), REPORTS as usize);
                assert!(msgs.contains(&Down::SyncEnd));
            }
        }
    }
    // The bound still bites: a small one closes a reader that takes
    // nothing, a large one keeps it.
    assert!(run(0, Some(0)).0.is_some());
    assert_eq!(run(300, Some(0)).0, None);
}
