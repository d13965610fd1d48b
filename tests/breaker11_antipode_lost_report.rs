//! A report lost on the way up while the device's report numbering sits just
//! past the far side of the wrapping window from the server's (PROTOCOL.md
//! 9.1, 9.3, 9.4).
//!
//! The store's numbering for the device starts at `base`; a fresh device has
//! assigned nothing (last number 0). For `base` = 2^31 + 1 the device takes
//! its `Welcome.ack` for older than its own numbering (0 - base is 2^31 - 1),
//! so it keeps numbering from 1 and relies on the server's `SequenceGap` to
//! learn otherwise. That works when report 1 arrives (1 is newer than the
//! server's expected base + 1). But when report 1 is lost on the link and
//! report 2 arrives first, 2 is exactly 2^31 from the expected number, which
//! the server takes for a resend: nothing stored, `Ack { seq: base }`. The
//! device took that ack for one covering reports 1 and 2 (both not newer
//! than base) and dropped them: two task statuses lost for good, the tasks
//! Delivered forever. The simulator found it with `SIM_REPORT_BASE=2147483649`
//! (seeds 201, 977, 1079, 1353, 1990, 2161, 2267, 2408, 2670 of 0..3000;
//! 1079 shrunk to two tasks and one bit flipped in the first report).
//!
//! With `lost` reports lost before the first that arrives, the server takes it
//! for a resend exactly when `base` is in 2^31 + 1 ..= 2^31 + `lost`; bases
//! around that range and elsewhere on the ring are checked too, so the test
//! covers both sides of the boundary.

mod common;

use common::Pair;
use mdm_sync::server::{FleetStore, ServerEvent, TaskState};
use mdm_sync::time::Duration;
use mdm_sync::wire::TaskKind;

/// `lost + 1` tasks reach a fresh device whose store numbering starts at
/// `base`; the first `lost` reports it sends are lost. Every task ends
/// Succeeded on the server, the device's outbox empties, and the store holds
/// exactly `lost + 1` more reports (none dropped, none stored twice).
fn statuses_reach_the_server(base: u32, lost: usize) {
    let case = format!("base {base}, {lost} lost");
    let mut p = Pair::new(1);
    let id = p.id(0);
    p.set_stored_report_seq(0, base);
    // The boot sync: the outbox is empty at its `Welcome`.
    p.run_for(Duration::from_mins(10));
    p.reports_lost = lost;
    let tasks: Vec<_> = (0..=lost).map(|_| p.queue(0, TaskKind::Lock)).collect();
    p.run_for(Duration::from_hours(4));
    assert_eq!(p.reports_lost, 0, "{case}: the faults were used");
    for &t in &tasks {
        assert_eq!(p.times_executed(0, t), 1, "{case}: task {t:?} executions");
        assert_eq!(
            p.state(0, t),
            TaskState::Succeeded { result: None },
            "{case}: task {t:?} on the server"
        );
    }
    assert_eq!(p.devices[0].dev.outbox_len(), 0, "{case}: outbox");
    // Each task's status reached the server once: one Succeeded event each.
    for &t in &tasks {
        let done = p.count_events(|e| {
            matches!(e, ServerEvent::TaskChanged { task, state: TaskState::Succeeded { .. }, .. }
                if *task == t)
        });
        assert_eq!(done, 1, "{case}: task {t:?} Succeeded events");
    }
    // Each task makes one or two reports (its final status, after its
    // `Received` unless the status took that one's place, PROTOCOL.md 9.3):
    // the store numbered that many past `base`, on the same side of it.
    let rec = p.server.store().device(id).unwrap().unwrap();
    let stored = rec.last_report_seq.wrapping_sub(base) as usize;
    assert!(
        (lost + 1..=2 * (lost + 1)).contains(&stored),
        "{case}: {stored} reports stored"
    );
}

#[test]
fn a_lost_report_does_not_make_the_next_one_a_resend_across_the_antipode() {
    let half = 1u32 << 31;
    for lost in 1..=3 {
        for base in (half - 2..=half + 5).chain([0, 1, u32::MAX]) {
            statuses_reach_the_server(base, lost);
        }
    }
}
