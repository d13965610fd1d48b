//! The in-memory store keeps at most `compliance_limit` undrained compliance
//! events per device, so a device that raises them without end cannot grow
//! the server's memory. Past the limit its compliance reports are refused,
//! not acknowledged: the device keeps them and sends them again after the
//! application drained the log. Nothing acknowledged is lost, nothing is
//! stored twice, the order holds, and other devices go on meanwhile.

mod common;

use common::Pair;
use mdm_sync::server::{MemoryStore, ServerEvent};
use mdm_sync::time::Duration;
use mdm_sync::wire::{ComplianceEvent, DeviceId};

const LIMIT: u32 = 3;

fn of(log: &[(DeviceId, ComplianceEvent)], device: DeviceId) -> Vec<ComplianceEvent> {
    log.iter()
        .filter(|(d, _)| *d == device)
        .map(|(_, e)| *e)
        .collect()
}

#[test]
fn a_flooding_device_waits_for_the_drain_and_loses_nothing() {
    let mut p = Pair::new(2);
    p.server.store_mut().set_compliance_limit(LIMIT);
    let (flood, quiet) = (p.id(0), p.id(1));
    let raised: Vec<ComplianceEvent> = (0..8)
        .map(|days| ComplianceEvent::PasswordOverdue { days })
        .collect();
    for e in &raised {
        p.raise(0, *e);
    }
    let mut drained = Vec::new();
    for round in 0..6 {
        // The other device raises one of its own while the flood's log is full.
        p.raise(1, ComplianceEvent::MalwarePersisting { threats: round });
        // Ten minutes: ten compliance retries of the flooding device.
        for _ in 0..10 {
            p.run_for(Duration::from_secs(60));
            let held = of(p.server.store().compliance(), flood).len();
            assert!(held <= LIMIT as usize, "{held} events of one device held");
        }
        let log = p.server.store_mut().take_compliance();
        assert_eq!(
            of(&log, quiet).len(),
            1,
            "round {round}: the other device's event waited"
        );
        drained.extend(of(&log, flood));
    }
    assert_eq!(drained, raised, "each event once, in order");
    // The console heard of each stored event once, and of no refused one.
    let told =
        p.count_events(|e| matches!(e, ServerEvent::Compliance { device, .. } if *device == flood));
    assert_eq!(told, raised.len());
    // The device's outbox is empty: everything was acknowledged.
    p.run_for(Duration::from_secs(60));
    assert!(p.server.store().compliance().is_empty());
}

#[test]
fn the_default_limit_is_not_zero() {
    let s = MemoryStore::new();
    assert_eq!(s.compliance_limit(), MemoryStore::DEFAULT_COMPLIANCE_LIMIT);
}
