//! A snapshot whose CRC checks but one of whose report bodies is no
//! `ReportBody`. `restore` used to take it (it checked a body's length,
//! never its content); the device then sent those bytes as a report, the
//! server could not decode the frame and ended the session, and the device
//! retried for good: the report was never acknowledged, so every report
//! queued after it waited behind it and no sync succeeded again. Now
//! `restore` refuses it as `Inconsistent` (PROTOCOL.md 14), and a device
//! started afresh in its place goes on syncing.

mod common;

use common::Pair;
use mdm_sync::device::{Device, SnapshotError};
use mdm_sync::server::ServerEvent;
use mdm_sync::time::Duration;
use mdm_sync::wire::{crc32, ComplianceEvent};

/// `snapshot` with one more report at the back of its outbox, of body
/// `body`, numbered `next_report_seq` (which then moves on by one).
fn with_report(snapshot: &[u8], body: &[u8]) -> Vec<u8> {
    let mut b = snapshot[..snapshot.len() - 4].to_vec();
    let next = u32::from_le_bytes(b[25..29].try_into().unwrap()) + 1;
    b[25..29].copy_from_slice(&next.to_le_bytes());
    let reports = u16::from_le_bytes([b[39], b[40]]) + 1;
    b[39..41].copy_from_slice(&reports.to_le_bytes());
    b.push(body.len() as u8);
    b.extend_from_slice(body);
    let crc = crc32(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

#[test]
fn a_restored_body_that_does_not_decode_is_refused_and_the_device_syncs_on() {
    let mut p = Pair::new(1);
    p.run_for(Duration::from_mins(5)); // the boot sync
    let d = &p.devices[0];
    let slot = d.dev.snapshot_slot();
    let bad = with_report(&d.slots[slot], &[0xFF]);
    let refused = Device::<16, 4>::restore(d.cfg.clone(), &bad, p.now).err();
    assert_eq!(refused, Some(SnapshotError::Inconsistent));
    // What an application does with a snapshot it cannot restore: start
    // afresh (the server then fails the tasks the device may have held).
    p.devices[0].slots = [Vec::new(), Vec::new()];
    p.reboot(0);
    p.run_for(Duration::from_mins(5));
    p.raise(0, ComplianceEvent::ProfileChanged);
    p.run_for(Duration::from_hours(24));
    let got = p.count_events(|e| matches!(e, ServerEvent::Compliance { .. }));
    assert_eq!(got, 1, "the compliance event raised after the restore");
    assert_eq!(
        p.devices[0].dev.outbox_len(),
        0,
        "reports left in the outbox"
    );
}
