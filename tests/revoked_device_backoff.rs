//! A device the server refuses as such (its enrollment was renewed on the
//! server, so its secret is stale: `AuthFailed` to every handshake) backs off
//! as after any failure, up to `backoff_max` (30 min), even with a
//! compliance event waiting. The one-minute compliance retry is for a device
//! that cannot reach its server (PROTOCOL.md 7.5); retrying a refusal every
//! minute only loads the server with handshakes that cannot succeed, for as
//! long as the device goes unprovisioned. (`tests/full_sync.rs` checks the
//! one-minute retry of a device offline.)

mod common;

use common::Pair;
use mdm_sync::device::SessionError;
use mdm_sync::server::ServerEvent;
use mdm_sync::time::Duration;
use mdm_sync::wire::{ComplianceEvent, ErrorCode};

#[test]
fn a_refused_device_with_a_compliance_event_retries_at_the_normal_backoff() {
    let mut p = Pair::new(1);
    p.run_for(Duration::from_mins(5));
    assert!(p.devices[0].failed.is_empty(), "the first sync works");

    // Re-enrolled on the server, never re-provisioned: the device's secret
    // is now of the old generation.
    let (id, now) = (p.id(0), p.now);
    p.server.enroll(id, now).unwrap();
    p.raise(0, ComplianceEvent::ProfileChanged);
    p.run_for(Duration::from_hours(4));
    let failed = &p.devices[0].failed;
    let refused = SessionError::Rejected(ErrorCode::AuthFailed);
    assert!(failed.iter().all(|e| *e == refused), "{failed:?}");
    // Backoff 5 s doubling to 30 min, each delay jittered down by up to
    // half: about 10 attempts in the first 20 minutes, then one every 15 to
    // 30 minutes, so at most about 26 in 4 hours. At the one-minute
    // compliance cap it was 240 and more.
    let n = failed.len();
    assert!((8..=30).contains(&n), "{n} refused attempts in 4 h");

    // Provisioned again: the next attempt gets through and the event is
    // delivered.
    let secret = p.server.device_secret(id).unwrap();
    let d = &mut p.devices[0];
    d.cfg.secret = secret;
    d.cfg.generation += 1;
    let (cfg, now) = (d.cfg.clone(), p.now);
    d.dev = mdm_sync::device::Device::new(cfg, now);
    p.raise(0, ComplianceEvent::ProfileChanged);
    p.run_for(Duration::from_mins(5));
    let delivered = p.count_events(|e| matches!(e, ServerEvent::Compliance { .. }));
    assert_eq!(delivered, 1);
}
