//! Property tests of the delivery guarantees over random fault schedules.
//!
//! Each case draws a [`sim::Schedule`] (pushes lost, delayed and duplicated;
//! connections refused, cut and stalled; frames duplicated, replayed from old
//! connections and bit-flipped; reboots with torn snapshot writes; clocks
//! jumping, going back and standing still; expiring, cancelled, superseded
//! and deferred tasks; policies changed while offline), heals the network,
//! lets time run, and checks every guarantee of `DESIGN.md` (see
//! `tests/sim/mod.rs`). A failure shrinks to a short schedule, printed one
//! operation per line together with the trace of its run.
//!
//! Cases: `PROPTEST_CASES` (default 256 per property). CI runs this file with
//! `--release`.

mod sim;

use proptest::prelude::*;

proptest! {
    #![proptest_config(sim::schedule::config(256))]

    /// Default capacities (outbox 16, 4 tasks at once).
    #[test]
    fn guarantees_hold_under_faults(s in sim::schedule()) {
        if let Err(e) = sim::check::<16, 4>(&s) {
            return Err(TestCaseError::fail(e));
        }
    }

    /// Tight capacities (outbox 4, 2 tasks at once): "not now" by the
    /// engine itself, full outboxes, compliance events refused.
    #[test]
    fn guarantees_hold_with_tight_capacities(s in sim::schedule()) {
        if let Err(e) = sim::check::<4, 2>(&s) {
            return Err(TestCaseError::fail(e));
        }
    }
}
