//! The server knows when each device promised to check in next and reports
//! devices that miss it, and their return.

mod common;

use common::Pair;
use mdm_sync::server::ServerEvent;
use mdm_sync::time::Duration;

#[test]
fn a_device_that_misses_its_check_in_is_overdue_until_it_returns() {
    let mut p = Pair::new(2);
    p.run_for(Duration::from_secs(5));
    p.go_offline(1);
    // 3 h periodic + 30 min slack: device 0 keeps checking in, device 1 does not.
    p.run_for(Duration::from_hours(3) + Duration::from_mins(29));
    assert!(p.server.overdue_devices().is_empty());
    p.run_for(Duration::from_mins(2));
    assert_eq!(p.server.overdue_devices(), vec![p.id(1)]);
    let overdue = p.count_events(|e| matches!(e, ServerEvent::Overdue { .. }));
    assert_eq!(overdue, 1);
    assert!(p.server.device_view(p.id(1)).unwrap().overdue);
    assert_eq!(p.server.fleet_view().unwrap().overdue, 1);
    p.go_online(1);
    let now = p.now;
    p.devices[1].dev.manual_sync(now);
    p.run_for(Duration::from_secs(5));
    assert!(p.server.overdue_devices().is_empty());
    let id1 = p.id(1);
    let back = p.count_events(|e| matches!(e, ServerEvent::Back { device } if *device == id1));
    assert_eq!(back, 1);
}

#[test]
fn a_device_that_keeps_its_schedule_is_never_overdue() {
    let mut p = Pair::new(1);
    p.run_for(Duration::from_hours(24));
    assert_eq!(
        p.count_events(|e| matches!(e, ServerEvent::Overdue { .. })),
        0
    );
}
