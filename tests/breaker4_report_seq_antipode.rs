//! Report numbering at the far side of the wrapping window (PROTOCOL.md 9.1,
//! 9.3, 9.4). A device that lost its state numbers its reports from 1 again
//! while the server's store holds its old numbering, anywhere on the ring.
//! `seq_newer` cannot order two numbers exactly 2^31 apart; the device took
//! such a `Welcome.ack` for neither ahead of it (no renumbering) nor older,
//! and then either dropped its unsent report at that `Welcome` (its number
//! "not newer" than the ack) or sent reports the server took for resends
//! (acknowledged, never stored): reports lost for good. Likewise a device
//! that lost its state and queued reports before its first sync took a
//! `Welcome.ack` equal to or below its last number for an acknowledgement
//! of those reports, which the server never saw.

mod common;

use common::Pair;
use mdm_sync::server::{FleetStore, ServerEvent};
use mdm_sync::time::Duration;
use mdm_sync::wire::ComplianceEvent;

/// The store's numbering for the device starts at `base` (its reports up to
/// `base` stored before the device lost its state); the device raises
/// `early` compliance events before its first sync and `late` after it. The
/// server stores each exactly once and the device's outbox empties.
fn reaches_the_server(base: u32, early: u32, late: u32) {
    let mut p = Pair::new(1);
    let id = p.id(0);
    p.set_stored_report_seq(0, base);
    for _ in 0..early {
        p.raise(0, ComplianceEvent::ProfileChanged);
    }
    p.run_for(Duration::from_mins(10));
    for _ in 0..late {
        p.raise(0, ComplianceEvent::ProfileChanged);
    }
    p.run_for(Duration::from_hours(1));
    let case = format!("base {base}, {early} early, {late} late");
    let got = p.count_events(|e| matches!(e, ServerEvent::Compliance { .. }));
    assert_eq!(
        got,
        (early + late) as usize,
        "{case}: compliance events stored"
    );
    assert_eq!(p.devices[0].dev.outbox_len(), 0, "{case}");
    let rec = p.server.store().device(id).unwrap().unwrap();
    assert_eq!(
        rec.last_report_seq,
        base.wrapping_add(early + late),
        "{case}: the server's numbering"
    );
}

/// Exactly 2^31 apart: a fresh device's numbering (last assigned 0, or 1
/// with a report queued) and the store's.
#[test]
fn a_report_reaches_the_server_across_the_antipode() {
    let half = 1u32 << 31;
    for base in [half - 2, half - 1, half, half + 1, half + 2] {
        reaches_the_server(base, 0, 1);
        reaches_the_server(base, 1, 0);
    }
}

/// The device lost its state and raised reports before its first sync
/// while the store holds as many or fewer: the `Welcome.ack` covers reports
/// the device never sent, and it took them for acknowledged (PROTOCOL.md 9.4
/// renumbers only for an ack newer than the last number assigned).
#[test]
fn reports_raised_after_a_state_loss_reach_a_server_holding_as_many() {
    for (base, early) in [
        (1, 1),
        (1, 3),
        (2, 3),
        (3, 3),
        (0, 3),
        (4, 3),
        (u32::MAX, 2),
    ] {
        reaches_the_server(base, early, 0);
        reaches_the_server(base, early, 1);
    }
}
