//! A session whose `Hello` and proof arrive late (here: one byte at a time on
//! a connection the device already gave up) authenticates after a newer one
//! of the same device. Found by the simulator (`--tight`, seed 60935),
//! shrunk to this schedule.
//!
//! The server used to number that session's offers from its stale `Hello`
//! and reuse a sequence the device had spent in the newer session. It now
//! refuses a proof for a handshake older than the device's latest
//! authenticated one (PROTOCOL.md 6.4; `tests/handshake_auth.rs` has the
//! same case step by step).

mod sim;

use mdm_sync::wire::ComplianceEvent;
use sim::{Op, Schedule, Who};

fn profile(dev: u8) -> Op {
    Op::Compliance {
        dev,
        event: ComplianceEvent::ProfileChanged,
    }
}

fn schedule() -> Schedule {
    use Op::*;
    Schedule {
        devices: 2,
        seed: 13102145337880630907,
        ops: vec![
            PushDup { dev: 2 },
            Advance { ms: 0 },
            Reboot { dev: 0 },
            PushDup { dev: 0 },
            Policy { dev: 2 },
            Advance { ms: 1 },
            Op::lock(0),
            Advance { ms: 120000 },
            profile(0),
            Step { chunks: 6 },
            profile(2),
            Reboot { dev: 0 },
            Reboot { dev: 1 },
            Op::lock(2),
            Step { chunks: 6 },
            Chunk { max: 1 },
            ClockJump {
                who: Who::Device(2),
                ms: 30000,
            },
            Op::lock(0),
            Reboot { dev: 2 },
            Step { chunks: 14 },
            profile(2),
            profile(0),
            Step { chunks: 4 },
            Step { chunks: 9 },
        ],
    }
}

/// Before the fix, the late session re-offered a task the device had deferred
/// in the newer session under the delivery sequence it had already used
/// there; the device's next `Hello` then made the server mark it delivered,
/// and it never ran ("no convergence ...: task 2 of dev0 is Delivered").
#[test]
fn a_late_session_does_not_reoffer_under_a_used_sequence() {
    if let Err(f) = sim::run::<4, 2>(&schedule(), true, false) {
        panic!("{f}");
    }
}
