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

mod sim;

use mdm_sync::wire::ComplianceEvent;
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
