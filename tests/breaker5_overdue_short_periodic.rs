//! A server configured with a periodic interval that devices cannot follow
//! (below one minute, or below one second) reported devices overdue that
//! sync exactly as told. The device clamps `Welcome.periodic_s` to
//! 1 min ..= 7 days and keeps its own interval when `periodic_s` is 0
//! (PROTOCOL.md 11.1), but the server promised itself a check-in within
//! its unclamped `periodic_interval + overdue_slack`: with 10 s (+ 5 s) the
//! device, syncing every 60 s, was `Overdue` then `Back` every minute; with
//! 500 ms the `Welcome` said 0 s, the device kept its 3 hours, and was
//! overdue 5.5 s after each sync.

mod common;

use common::Pair;
use mdm_sync::server::{ServerConfig, ServerEvent};
use mdm_sync::time::Duration;

fn overdue_events(periodic: Duration) -> (usize, u32) {
    let cfg = ServerConfig {
        periodic_interval: periodic,
        overdue_slack: Duration::from_secs(5),
        ..ServerConfig::default()
    };
    let mut p = Pair::with_config(1, cfg);
    p.run_for(Duration::from_hours(7));
    let overdue = p.count_events(|e| matches!(e, ServerEvent::Overdue { .. }));
    (overdue, p.devices[0].syncs_done)
}

#[test]
fn a_device_syncing_at_the_clamped_interval_is_never_overdue() {
    for periodic in [
        Duration::from_secs(10),
        Duration::from_millis(500),
        Duration::from_secs(59),
    ] {
        let (overdue, syncs) = overdue_events(periodic);
        assert!(syncs >= 3, "{periodic:?}: the device synced {syncs} times");
        assert_eq!(
            overdue, 0,
            "{periodic:?}: a device syncing as its engine must ({syncs} syncs) was reported overdue"
        );
    }
}
