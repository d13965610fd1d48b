//! The simulator's delivery guarantees (`tests/sim/mod.rs`: every task
//! executed at most once and, once the network heals, exactly once or with a
//! final state the console explains; every report stored once; no stranded
//! work; the console agrees with the events) over random fault schedules
//! with server restarts among the operations: a new engine over the old
//! store after `Server::recover`, at whatever point of a sync the schedule
//! has reached (mid-handshake, a task offered, a report stored and its ack
//! in flight, a policy held by the application, a cancel pending, a task
//! deferred).
//!
//! Cases: `PROPTEST_CASES` (default 64 per property); the schedules of
//! `tests/properties.rs` stay as they were.

mod sim;

use proptest::prelude::*;

proptest! {
    #![proptest_config(sim::schedule::config(64))]

    /// Default capacities (outbox 16, 4 tasks at once).
    #[test]
    fn guarantees_hold_across_server_restarts(s in sim::schedule::schedule_with_restarts(64)) {
        if let Err(e) = sim::check::<16, 4>(&s) {
            return Err(TestCaseError::fail(e));
        }
    }

    /// Tight capacities (outbox 4, 2 tasks at once).
    #[test]
    fn guarantees_hold_across_server_restarts_tight(s in sim::schedule::schedule_with_restarts(64)) {
        if let Err(e) = sim::check::<4, 2>(&s) {
            return Err(TestCaseError::fail(e));
        }
    }
}

/// A restart at each point of one sync of a held task (the schedule's steps
/// move a chunk at a time): the task runs once, its report is stored once,
/// and the console ends where the events say (`sim::check`). The summary
/// shows the restart happened.
#[test]
fn a_restart_at_each_point_of_a_sync_keeps_the_guarantees() {
    use sim::{Op, Schedule, Style};
    for steps in 0..24u8 {
        let mut ops = vec![
            Op::App {
                dev: 0,
                style: Style::Hold,
            },
            Op::lock(0),
            Op::Step { chunks: steps },
            Op::RestartServer,
            Op::Advance { ms: 30_000 },
            Op::FinishHeld {
                dev: 0,
                fail: false,
            },
            Op::Step { chunks: steps },
            Op::RestartServer,
        ];
        ops.push(Op::Advance { ms: 120_000 });
        let s = Schedule {
            devices: 1,
            seed: u64::from(steps),
            ops,
        };
        let summary = sim::check::<16, 4>(&s).unwrap_or_else(|e| panic!("{steps} steps: {e}"));
        assert_eq!(summary.restarts, 2);
        assert_eq!(summary.executed, 1, "{steps} steps: {summary:?}");
    }
}
