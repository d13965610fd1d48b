//! Frames of an earlier session replayed into a later one (a transport that
//! keeps bytes across sessions, such as a UART bridge, or an active attacker).
//!
//! Protocol version 1 binds neither of these frames to its session, and both
//! replays break a delivery guarantee: the two ignored tests fail today (run
//! them with `cargo test --test stale_frames_across_sessions -- --ignored`).
//! They pass once the protocol binds the frames (a proposal: the proof's MAC
//! also covers the `Hello` payload; a `Task` carries a tag derived from the
//! session's nonce); then drop the `ignore` and let the simulator replay such
//! frames by default (today only with `SIM_CROSS_SESSION=1`).

mod sim;

use mdm_sync::wire::TaskKind;
use sim::{Op, Schedule};

fn enqueue(kind: TaskKind) -> Op {
    Op::Enqueue {
        dev: 0,
        kind,
        expires_in_s: None,
        supersede: None,
    }
}

/// Runs `s`, with or without replays across sessions; the guarantees must hold.
fn holds(s: &Schedule, cross_session: bool) {
    if let Err(f) = sim::run_with::<16, 4>(s, true, false, cross_session) {
        panic!("{f}");
    }
}

/// The device's `Hello` is corrupted (the CRC drops it) and the `Hello` of its
/// first session arrives instead. The proof does not cover the `Hello`, so the
/// server believes the old task ledger, offers a new task under a delivery
/// sequence the device already used, and the device ignores it as a
/// duplicate: the task is marked delivered and never runs.
fn replayed_hello() -> Schedule {
    Schedule {
        devices: 1,
        seed: 0,
        ops: vec![
            Op::Advance { ms: 1_000 },
            enqueue(TaskKind::Lock),
            Op::Advance { ms: 1_000 },
            // Up history now: Hello, Proof (session 1), Hello, Proof, 2 reports.
            Op::FlipBit {
                dev: 0,
                up: true,
                skip: 0,
                bit: 0,
            },
            Op::StaleFrame {
                dev: 0,
                up: true,
                skip: 0,
                back: 5,
            },
            enqueue(TaskKind::Wipe),
            Op::ManualSync { dev: 0 },
            Op::Advance { ms: 1_000 },
        ],
    }
}

/// An offer cut off in one session is cancelled; the next session offers
/// another task under the same delivery sequence, and the old offer's frame
/// arrives just before it. The device runs the cancelled task and ignores the
/// new one as a duplicate.
fn replayed_offer() -> Schedule {
    Schedule {
        devices: 1,
        seed: 1,
        ops: vec![
            Op::Advance { ms: 1_000 },
            enqueue(TaskKind::Lock),
            Op::Step { chunks: 3 },
            Op::CutAfter { dev: 0, bytes: 0 },
            Op::Step { chunks: 1 },
            Op::Cancel { dev: 0, nth: 0 },
            enqueue(TaskKind::Wipe),
            // Down history at the new offer: .., Task 1, SyncEnd, Challenge, Welcome.
            Op::StaleFrame {
                dev: 0,
                up: false,
                skip: 2,
                back: 3,
            },
            Op::Advance { ms: 10_000 },
        ],
    }
}

/// Today: "no convergence ...: task 2 of dev0 is Delivered".
#[test]
#[ignore = "protocol v1 gap: the proof does not cover the Hello"]
fn a_replayed_hello_makes_a_new_task_look_like_a_duplicate() {
    holds(&replayed_hello(), true);
}

/// Today: "dev0 executed task 1 after the server reported it Cancelled".
#[test]
#[ignore = "protocol v1 gap: a Task offer is not bound to its session"]
fn a_replayed_offer_runs_a_cancelled_task() {
    holds(&replayed_offer(), true);
}

/// Without the replays across sessions (what the simulator does by default),
/// both schedules keep every guarantee.
#[test]
fn the_same_schedules_pass_without_cross_session_replays() {
    holds(&replayed_hello(), false);
    holds(&replayed_offer(), false);
}
