//! A stale `Challenge` (unkeyed) followed by the stale `Welcome` of the same
//! earlier session, both delivered on a new connection, authenticate the
//! device to nobody: the stale challenge hands the device the old session's
//! key, under which the old `Welcome` passes its CRC. The device used to take
//! the old `Welcome.ack` as the server's report numbering
//! (`adopt_server_numbering`), renumber its outbox below what the server
//! already stored, and the server took the next reports for resends:
//! acknowledged, never recorded. Found by the simulator (plain seed 869100,
//! `--tight` seed 1038451), shrunk to the schedules below. The device now
//! believes a lower ack only after the server answered `SequenceGap`
//! (PROTOCOL.md 9.4).
//!
//! A whole earlier session replayed in order could still run a task twice
//! (the last test) in protocol version 2, whose `Challenge` the device could
//! not tell from a stale one. Version 3 closes it: the `Challenge` echoes the
//! `Hello.attempt` of its connection, a value the device never repeats, so
//! the stale one is dropped and its session's keyed frames with it.

mod common;
mod sim;

use common::Pair;
use mdm_sync::time::Duration;
use mdm_sync::wire::{ComplianceEvent, TaskKind};
use sim::{Op, Schedule};

fn profile(dev: u8) -> Op {
    Op::Compliance {
        dev,
        event: ComplianceEvent::ProfileChanged,
    }
}

/// Plain capacities (outbox 16, 4 tasks), one device: the stale pair
/// arrives ahead of the new connection's real `Challenge`, before the device
/// sent any proof.
#[test]
fn a_stale_challenge_and_welcome_lose_no_report() {
    use Op::*;
    let schedule = Schedule {
        devices: 1,
        seed: 370188065396279,
        ops: vec![
            Step { chunks: 4 },
            Op::lock(0),
            Op::lock(0),
            Step { chunks: 7 },
            StaleFrame {
                dev: 0,
                up: false,
                skip: 0,
                back: 7,
            },
            StaleFrame {
                dev: 0,
                up: false,
                skip: 0,
                back: 8,
            },
            ManualSync { dev: 0 },
            ManualSync { dev: 0 },
            Step { chunks: 2 },
            profile(0),
            profile(0),
        ],
    };
    if let Err(f) = sim::run::<16, 4>(&schedule, true, false) {
        panic!("{f}");
    }
}

/// Tight capacities (outbox 4, 2 tasks): the stale `Challenge` arrives
/// alone, the device answers it, and the old `Welcome` comes later; so a
/// device-side check "no `Welcome` before our proof went out" would not
/// catch it.
#[test]
fn a_stale_challenge_answered_then_a_stale_welcome_lose_no_report() {
    use Op::*;
    let schedule = Schedule {
        devices: 2,
        seed: 0,
        ops: vec![
            Op::lock(2),
            Advance { ms: 0 },
            StaleFrame {
                dev: 2,
                up: false,
                skip: 0,
                back: 4,
            },
            profile(2),
            Step { chunks: 1 },
            Freeze {
                who: sim::Who::Device(0),
                secs: 1,
            },
            StaleFrame {
                dev: 0,
                up: false,
                skip: 0,
                back: 4,
            },
            Advance { ms: 30000 },
        ],
    };
    if let Err(f) = sim::run::<4, 2>(&schedule, true, false) {
        panic!("{f}");
    }
}

/// Runs the device's timers and answers its events as its application.
fn device_events(p: &mut Pair) {
    let now = p.now;
    p.devices[0].dev.handle_timeout(now);
    while let Some(ev) = p.devices[0].dev.poll_event() {
        p.devices[0].on_event(ev, &mut p.server, now);
    }
}

/// Hands what the device has to send to the server.
fn up(p: &mut Pair) {
    let conn = p.devices[0].conn.expect("connected");
    let mut buf = [0u8; 1024];
    while let Some(n) = p.devices[0].dev.poll_transmit(&mut buf).unwrap() {
        let _ = p.server.handle_bytes(conn, &buf[..n], p.now);
    }
}

/// What the server has for the device, not delivered.
fn down(p: &mut Pair) -> Vec<u8> {
    let conn = p.devices[0].conn.expect("connected");
    let mut buf = [0u8; 1024];
    let mut out = Vec::new();
    while let Some(n) = p.server.poll_transmit_for(conn, &mut buf) {
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// The same hole reached at-most-once in version 2. A whole earlier session
/// (its `Challenge`, `Welcome` and `Task`s, of which only the `Challenge`
/// reached the device) replayed on a later connection: the device took it
/// for its session and ran a task again that it had already run under
/// another sequence number. Session 1 offers t1 (seq 1) and t2 (seq 2) but is
/// cut after its `Challenge`; t1 is cancelled; session 2 offers t2 as seq 1
/// and the device runs it; session 3 receives session 1's frames first, in
/// which t2 is seq 2, the next the device expects. Then session 3's own
/// challenge arrives, and the session must go on as if nothing happened.
#[test]
fn a_replayed_session_does_not_run_a_task_twice() {
    let mut p = Pair::new(1);
    p.tick(); // boot sync
    p.pushes_lost = true;
    let t1 = p.queue(0, TaskKind::Lock);
    let t2 = p.queue(0, TaskKind::Scan);

    // Session 1, by hand: only the challenge reaches the device; the rest of
    // the server's answer is recorded, then the connection is cut.
    let now = p.now;
    p.devices[0].dev.manual_sync(now);
    device_events(&mut p);
    up(&mut p); // Hello
    let mut recorded = down(&mut p); // Challenge
    p.devices[0].dev.handle_bytes(&recorded, now).unwrap();
    device_events(&mut p);
    up(&mut p); // Proof
    recorded.extend(down(&mut p)); // Welcome, Task t1 seq 1, Task t2 seq 2, SyncEnd
    let conn = p.devices[0].conn.take().unwrap();
    p.server.connection_closed(conn, now);
    p.devices[0].dev.disconnected(now);
    assert_eq!(p.times_executed(0, t2), 0);

    // t1 is cancelled; session 2 (a retry) offers t2 as seq 1: it runs.
    p.server.cancel_task(t1, now).unwrap();
    p.run_for(Duration::from_mins(2));
    assert_eq!(p.times_executed(0, t2), 1);
    assert_eq!(p.devices[0].dev.last_task_seq(), 1);

    // Session 3: the device gets session 1's frames instead of its answer.
    p.advance(Duration::from_secs(1));
    let now = p.now;
    p.devices[0].dev.manual_sync(now);
    device_events(&mut p);
    up(&mut p); // Hello; the server's real challenge is held back
    let real = down(&mut p);
    let dropped = p.devices[0].dev.stats().frame_errors;
    p.devices[0].dev.handle_bytes(&recorded, now).unwrap();
    device_events(&mut p);
    assert_eq!(p.times_executed(0, t2), 1, "task {t2:?} ran twice");
    assert!(
        p.devices[0].dev.stats().frame_errors > dropped,
        "the stale frames are counted as dropped"
    );
    assert!(
        p.devices[0].dev.is_connected(),
        "still awaiting its challenge"
    );
    p.devices[0].dev.handle_bytes(&real, now).unwrap();
    device_events(&mut p);
    up(&mut p); // Proof
    let welcome = down(&mut p); // Welcome, SyncEnd: nothing is pending
    p.devices[0].dev.handle_bytes(&welcome, now).unwrap();
    let events: Vec<_> = core::iter::from_fn(|| p.devices[0].dev.poll_event()).collect();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, mdm_sync::device::Event::SyncDone { .. })),
        "session 3 completes on its own challenge: {events:?}"
    );
    assert_eq!(p.devices[0].dev.last_task_seq(), 1);
    assert_eq!(p.times_executed(0, t2), 1);
}
