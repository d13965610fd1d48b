//! Frames of an earlier session replayed into a later one (a transport that
//! keeps bytes across sessions, such as a UART bridge, or a proxy that replays
//! them).
//!
//! Protocol version 1 bound neither of these frames to its session, and each
//! replay broke a delivery guarantee; the simulator found both. Version 2
//! closes them (PROTOCOL.md sections 2 and 6.4): the proof covers the exact
//! `Hello` payload, and every frame after the `Challenge` carries the
//! session's key in its CRC, so a stale offer is dropped as a corrupted frame.
//! The simulator now replays frames of earlier connections in every run; these
//! two schedules stay as regression tests.

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

/// Runs `s`; the guarantees must hold. Returns how many frames were faulted.
fn holds(s: &Schedule) -> usize {
    match sim::run::<16, 4>(s, true, false) {
        Ok(summary) => summary.frame_faults,
        Err(f) => panic!("{f}"),
    }
}

/// The device's `Hello` is corrupted (the CRC drops it) and the `Hello` of its
/// first session arrives instead. In version 1 the proof did not cover the
/// `Hello`, so the server believed the old task ledger, offered a new task
/// under a delivery sequence the device had already used, and the device
/// ignored it as a duplicate: the task was marked delivered and never ran.
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
/// arrives just before it. In version 1 the device ran the cancelled task and
/// ignored the new one as a duplicate.
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

/// Version 1 failed with "no convergence ...: task 2 of dev0 is Delivered".
#[test]
fn a_replayed_hello_fails_the_proof_and_the_new_task_runs() {
    assert!(
        holds(&replayed_hello()) >= 2,
        "both faults must be injected"
    );
}

/// Version 1 failed with "dev0 executed task 1 after the server reported it
/// Cancelled".
#[test]
fn a_replayed_offer_is_dropped_and_the_cancelled_task_never_runs() {
    assert!(holds(&replayed_offer()) >= 1, "the replay must be injected");
}
