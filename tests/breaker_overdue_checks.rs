//! Overdue checks stay at one per device when a device is re-enrolled and
//! checks in again while its earlier check is still queued.

mod common;

use mdm_sync::server::{MemoryStore, Server, ServerConfig};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::DeviceId;

#[test]
fn re_enrolments_do_not_multiply_overdue_checks() {
    let cfg = ServerConfig::default();
    let mut s = Server::new(cfg, MemoryStore::new(), [1; 32], [2; 32]);
    let id = DeviceId(42);
    let mut now = Instant::from_millis(1_000);
    let mut buf = [0u8; 4096];
    let mut counts = Vec::new();
    for generation in 0..40u32 {
        let secret = s.enroll(id, now).unwrap();
        let (conn, _, r) = common::raw_handshake_gen(&mut s, id, generation, &secret, now);
        assert!(r.is_ok());
        s.connection_closed(conn, now);
        while s.poll_transmit(&mut buf).is_some() {}
        while s.poll_event().is_some() {}
        now = now + Duration::from_secs(60);
        s.handle_timeout(now).unwrap();
        counts.push(s.timer_count());
    }
    // Let every handshake deadline and check run, with the device checking
    // in each period (it stays due, never overdue).
    let secret = s.device_secret(id).unwrap();
    for _ in 0..5 {
        now = now + Duration::from_hours(3);
        let (conn, _, r) = common::raw_handshake_gen(&mut s, id, 39, &secret, now);
        assert!(r.is_ok());
        s.connection_closed(conn, now);
        s.handle_timeout(now).unwrap();
        while s.poll_transmit(&mut buf).is_some() {}
        while s.poll_event().is_some() {}
    }
    now = now + Duration::from_mins(1);
    s.handle_timeout(now).unwrap();
    assert!(
        s.timer_count() <= 3,
        "timers after 40 re-enrolments: {} (along the way {counts:?})",
        s.timer_count()
    );
}
