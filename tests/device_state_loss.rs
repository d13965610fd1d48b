//! A device that loses both snapshot slots but keeps its identity: its new
//! reports are not mistaken for resends, and tasks it may have had end failed
//! rather than run twice.

mod common;

use common::{Behaviour, Pair};
use mdm_sync::server::{ServerEvent, TaskState};
use mdm_sync::time::Duration;
use mdm_sync::wire::{reason, ComplianceEvent, TaskKind};

/// How many `UsbDebugging` compliance events the server stored.
fn usb_events_stored(p: &Pair) -> usize {
    p.count_events(|e| {
        matches!(
            e,
            ServerEvent::Compliance {
                event: ComplianceEvent::UsbDebugging { .. },
                ..
            }
        )
    })
}

#[test]
fn a_device_that_lost_its_state_neither_loses_reports_nor_reruns_tasks() {
    let mut p = Pair::new(1);
    p.run_for(Duration::from_secs(5));
    for _ in 0..3 {
        p.raise(0, ComplianceEvent::ProfileChanged);
    }
    p.devices[0].behaviour = Behaviour::Hold;
    let scan = p.queue(0, TaskKind::Scan);
    p.run_for(Duration::from_secs(5));
    assert_eq!(p.state(0, scan), TaskState::Delivered);

    // Flash wiped: both slots gone, the device boots as new.
    p.devices[0].slots = [Vec::new(), Vec::new()];
    p.reboot(0);
    p.devices[0].behaviour = Behaviour::Succeed;
    p.raise(0, ComplianceEvent::UsbDebugging { enabled: true });
    p.run_for(Duration::from_mins(5));

    let usb = usb_events_stored(&p);
    assert_eq!(usb, 1, "the new report is stored, not taken for a resend");
    assert_eq!(
        p.state(0, scan),
        TaskState::Failed {
            reason: reason::DEVICE_STATE_LOST
        }
    );
    assert_eq!(p.times_executed(0, scan), 1, "never offered again");
    // And new work still flows.
    let lock = p.queue(0, TaskKind::Lock);
    p.run_for(Duration::from_mins(2));
    assert_eq!(p.state(0, lock), TaskState::Succeeded { result: None });
}

/// The other way round: the server's store goes back (a restored backup
/// holds fewer reports than the server once acknowledged). The device takes
/// the server's numbering from its `Welcome`, so its new reports are stored
/// instead of ending every session in `SequenceGap`.
#[test]
fn a_server_store_that_went_back_still_takes_new_reports() {
    use mdm_sync::server::FleetStore;

    let mut p = Pair::new(1);
    p.run_for(Duration::from_secs(5));
    for _ in 0..4 {
        p.raise(0, ComplianceEvent::ProfileChanged);
    }
    p.run_for(Duration::from_mins(2));
    let id = p.id(0);
    let mut rec = p.server.store().device(id).unwrap().unwrap();
    assert_eq!(rec.last_report_seq, 4, "all four stored and acknowledged");
    rec.last_report_seq = 1; // the backup is older
    p.server.store_mut().put_device(&rec).unwrap();

    p.raise(0, ComplianceEvent::UsbDebugging { enabled: true });
    p.run_for(Duration::from_mins(5));
    let usb = usb_events_stored(&p);
    assert_eq!(usb, 1, "the new report is stored once");
    let rec = p.server.store().device(id).unwrap().unwrap();
    assert_eq!(rec.last_report_seq, 2, "numbered after the server's ack");
    let lock = p.queue(0, TaskKind::Lock);
    p.run_for(Duration::from_mins(2));
    assert_eq!(p.state(0, lock), TaskState::Succeeded { result: None });
}
