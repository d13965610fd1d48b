//! A device that lost its state (both snapshot slots) queues a report, then
//! reboots before its first sync: the restored report cannot have left
//! (no `Welcome` came since the state began), so when the server's report
//! numbering is ahead and its ack covers the report's number, the device
//! renumbers it instead of dropping it as acknowledged (PROTOCOL.md 9.4, 14).
//! The simulator's `SIM_REPORT_BASE=1` found it (seed 21 shrunk to this).

mod common;

use common::Pair;
use mdm_sync::device::Event;
use mdm_sync::server::ServerEvent;
use mdm_sync::time::Duration;
use mdm_sync::wire::ComplianceEvent;

fn compliance(p: &Pair) -> usize {
    p.count_events(|e| matches!(e, ServerEvent::Compliance { .. }))
}

#[test]
fn a_report_restored_before_the_first_welcome_is_not_taken_for_acknowledged() {
    let mut p = Pair::new(1);
    p.run_for(Duration::from_mins(5)); // the boot sync
    p.raise(0, ComplianceEvent::ProfileChanged);
    p.run_for(Duration::from_mins(5));
    assert_eq!(compliance(&p), 1, "the server holds report 1");

    // Both slots lost: the device starts afresh, numbering reports from 1.
    p.devices[0].slots = [Vec::new(), Vec::new()];
    p.reboot(0);
    let now = p.now;
    let d = &mut p.devices[0];
    d.dev
        .raise_compliance(ComplianceEvent::UsbDebugging { enabled: true }, now)
        .unwrap();
    // The application stores the snapshots (the boot one, then the one with
    // the report) and loses power before it connects.
    while let Some(ev) = d.dev.poll_event() {
        if ev == Event::Persist {
            let mut buf = [0u8; 2048];
            let n = d.dev.snapshot(&mut buf).unwrap();
            d.slots[d.dev.snapshot_slot()] = buf[..n].to_vec();
        }
    }
    p.reboot(0);
    p.run_for(Duration::from_hours(4));
    assert_eq!(compliance(&p), 2, "the second event reached the server");
    assert_eq!(p.devices[0].dev.outbox_len(), 0);
}
