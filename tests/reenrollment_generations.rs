//! Re-enrolling a device starts a new generation: old tasks are dropped,
//! never delivered to the new enrollment, and the old secret stops working.

mod common;

use common::{Pair, SimDevice};
use mdm_sync::device::DeviceConfig;
use mdm_sync::server::{ServerEvent, TaskState};
use mdm_sync::time::Duration;
use mdm_sync::wire::{Platform, TaskKind};

#[test]
fn tasks_of_the_old_generation_are_dropped_not_delivered() {
    let mut p = Pair::new(1);
    p.run_for(Duration::from_secs(5));
    p.go_offline(0);
    let wipe = p.queue(0, TaskKind::Wipe);
    let id = p.id(0);
    let secret = p.server.enroll(id, p.now).unwrap();
    assert_eq!(p.state(0, wipe), TaskState::Dropped);
    p.tick();
    let dropped = p.count_events(|e| {
        matches!(
            e,
            ServerEvent::TaskChanged {
                state: TaskState::Dropped,
                ..
            }
        )
    });
    assert_eq!(dropped, 1);
    // The wiped phone comes back enrolled afresh (generation 1, new secret).
    let mut cfg = DeviceConfig::new(id, 1, secret, Platform::Ios);
    cfg.push_token = heapless::String::try_from("new-token").unwrap();
    let executed_before = p.devices[0].executed.len();
    p.devices[0] = SimDevice::new(cfg, p.now);
    let lock = p.queue(0, TaskKind::Lock);
    p.run_for(Duration::from_secs(10));
    assert!(p.devices[0].executed.iter().all(|t| t.id != wipe));
    assert_eq!(p.times_executed(0, lock), 1);
    assert_eq!(executed_before, 0);
    assert_eq!(p.server.device_view(id).unwrap().generation, 1);
}

#[test]
fn the_old_enrollment_can_no_longer_authenticate() {
    let mut p = Pair::new(1);
    p.run_for(Duration::from_secs(5));
    let id = p.id(0);
    p.server.enroll(id, p.now).unwrap(); // device 0 still holds generation 0
    let now = p.now;
    p.devices[0].dev.manual_sync(now);
    p.run_for(Duration::from_secs(5));
    assert!(p.count_events(|e| matches!(e, ServerEvent::AuthFailed { .. })) >= 1);
    let failed = p.devices[0].dev.stats().failures;
    assert!(failed >= 1);
    // And it backs off instead of hammering the server.
    let before = p.count_events(|e| matches!(e, ServerEvent::AuthFailed { .. }));
    p.run_for(Duration::from_mins(10));
    let after = p.count_events(|e| matches!(e, ServerEvent::AuthFailed { .. }));
    assert!(
        after - before <= 8,
        "{} attempts in 10 minutes",
        after - before
    );
    assert!(p.devices[0].executed.is_empty());
}
