//! A compliance event is retried at most `compliance_retry` (1 min) apart
//! while the server is out of reach; since c1a4975 a refusal of the device
//! itself (`AuthFailed`, a version mismatch) drops that cap and the device
//! waits the plain backoff, up to `backoff_max` (30 min).
//!
//! The server sends `AuthFailed` only in answer to a proof, framed under the
//! session key (PROTOCOL.md: errors before the `Challenge` use key 0). An
//! `Error(AuthFailed)` that reaches the device while it still awaits its
//! `Challenge` (key 0: anyone who can put bytes on the link can make one,
//! nothing secret is needed, not even the nonce) or after the `Welcome`
//! refused nothing: it must not buy a 30-minute delay of a compliance event.
//! Worst case on main: a device whose retries failed a few times (an
//! outage: each retry a minute apart) gets one such frame when the network
//! comes back and waits 15 to 30 minutes instead of at most one.
//!
//! The last test keeps the documented behaviour: an `AuthFailed` in answer
//! to the proof still drops the cap.

mod common;

use common::{raw_frame, Pair};
use mdm_sync::device::{Event, SessionError};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::{encode_payload, ComplianceEvent, Down, ErrorCode};

/// The frame of `Error(code)` under `key`.
fn error_frame(code: ErrorCode, key: u32) -> Vec<u8> {
    let mut buf = [0u8; 64];
    let n = encode_payload(&Down::Error(code), &mut buf).unwrap();
    raw_frame(&buf[..n], key)
}

/// One device, synced once; then off the network for 30 minutes with a
/// compliance event waiting (every connection attempt fails, so its
/// failure count grows while the cap keeps retries a minute apart).
/// Returns the pair at the device's next attempt, which it has asked to
/// connect for (its `Event::Connect` is answered by the caller).
fn after_an_outage() -> Pair {
    let mut p = Pair::new(1);
    p.run_for(Duration::from_mins(5));
    assert!(p.devices[0].failed.is_empty(), "the first sync works");
    p.raise(0, ComplianceEvent::ProfileChanged);
    let end = p.now + Duration::from_mins(30);
    let mut failures = 0;
    loop {
        let now = p.now;
        let d = &mut p.devices[0].dev;
        d.handle_timeout(now);
        let mut connect = false;
        while let Some(ev) = d.poll_event() {
            connect |= matches!(ev, Event::Connect);
        }
        if connect {
            if now >= end {
                return p;
            }
            d.connect_failed(now);
            failures += 1;
            while d.poll_event().is_some() {}
        }
        let next = d.poll_timeout().expect("a retry is due");
        assert!(
            next <= now + Duration::from_mins(1),
            "capped while out of reach"
        );
        p.now = next.max(now);
        assert!(failures < 100);
    }
}

/// Connects the device (by hand, the server not involved) and hands it the
/// Hello's answer `answer`; returns how long the device then waits before
/// its next attempt.
fn refused_by(p: &mut Pair, answer: &[u8]) -> Duration {
    let now = p.now;
    let d = &mut p.devices[0].dev;
    d.connected(now);
    let mut buf = [0u8; 512];
    assert!(d.poll_transmit(&mut buf).unwrap().is_some(), "Hello sent");
    let r = d.handle_bytes(answer, now);
    assert!(r.is_err(), "the error ends the session: {r:?}");
    wait_after_failure(d, now)
}

fn wait_after_failure(d: &mut mdm_sync::device::Device, now: Instant) -> Duration {
    while d.poll_event().is_some() {}
    let next = d.poll_timeout().expect("a retry is due");
    next.saturating_since(now)
}

/// The device's wait `after` an error is within `compliance_retry` (1 min).
fn assert_capped(wait: Duration, after: &str) {
    assert!(
        wait <= Duration::from_mins(1),
        "{after} delays the compliance event {} s",
        wait.as_millis() / 1000
    );
}

#[test]
fn an_unkeyed_auth_failed_before_the_challenge_keeps_the_compliance_cap() {
    let mut p = after_an_outage();
    let wait = refused_by(&mut p, &error_frame(ErrorCode::AuthFailed, 0));
    assert_capped(wait, "a forged AuthFailed before any proof");
}

#[test]
fn an_auth_failed_after_the_welcome_keeps_the_compliance_cap() {
    // A handshake with the real server (Hello, Challenge, Proof, Welcome),
    // then, before the device's report reaches the server, an `AuthFailed`
    // under the session key, where the server sends none.
    let mut p = after_an_outage();
    let now = p.now;
    let conn = p.server.connection_opened(now).unwrap();
    let d = &mut p.devices[0].dev;
    d.connected(now);
    let mut buf = [0u8; 1024];
    let mut key = 0;
    for _ in 0..2 {
        while let Some(n) = d.poll_transmit(&mut buf).unwrap() {
            p.server.handle_bytes(conn, &buf[..n], now).unwrap();
        }
        while let Some(n) = p.server.poll_transmit_for(conn, &mut buf) {
            if key == 0 {
                // The Challenge: its nonce gives the session key.
                let payload = mdm_sync::wire::frame::payload(&buf[..n]);
                if let Ok(Down::Challenge { nonce, .. }) = mdm_sync::wire::decode::<Down>(payload) {
                    key = mdm_sync::wire::frame::session_key(&nonce);
                }
            }
            d.handle_bytes(&buf[..n], now).unwrap();
        }
    }
    assert_ne!(key, 0, "a challenge came");
    assert!(
        d.is_connected() && d.outbox_len() > 0,
        "welcomed, report unacknowledged"
    );
    let r = d.handle_bytes(&error_frame(ErrorCode::AuthFailed, key), now);
    assert!(r.is_err(), "{r:?}");
    let wait = wait_after_failure(d, now);
    assert_capped(wait, "an AuthFailed after the welcome");
}

#[test]
fn an_auth_failed_answering_the_proof_drops_the_cap() {
    // The documented case: the server itself refuses the proof (a secret of
    // an older enrollment). The wait is then the plain backoff, which after
    // the outage's failures is more than the cap.
    let mut p = after_an_outage();
    let (id, now) = (p.id(0), p.now);
    p.server.enroll(id, now).unwrap();
    let conn = p.server.connection_opened(now).unwrap();
    let d = &mut p.devices[0].dev;
    d.connected(now);
    let mut buf = [0u8; 1024];
    let mut failed = None;
    for _ in 0..4 {
        while let Some(n) = d.poll_transmit(&mut buf).unwrap() {
            let _ = p.server.handle_bytes(conn, &buf[..n], now);
        }
        while let Some(n) = p.server.poll_transmit_for(conn, &mut buf) {
            if let Err(e) = d.handle_bytes(&buf[..n], now) {
                failed = Some(e);
            }
        }
    }
    assert_eq!(
        failed,
        Some(mdm_sync::device::DeviceError::Session(
            SessionError::Rejected(ErrorCode::AuthFailed)
        ))
    );
    let wait = wait_after_failure(d, now);
    assert!(wait > Duration::from_mins(1), "{} ms", wait.as_millis());
}

/// Open: an `Error(VersionMismatch)` is unkeyed (it answers a `Hello`, before
/// any key), so the device cannot tell a forged one from the server's, and
/// one such frame after an outage still buys a wait of up to `backoff_max`
/// (15 to 30 min) instead of `compliance_retry`. Dropping the cap only after
/// a few refusals in a row would cost a forger a few frames more, not stop
/// it; left as a known limit (PROTOCOL.md 11.1).
#[test]
#[ignore = "open: a forged version mismatch cannot be told from the server's (PROTOCOL.md 11.1)"]
fn a_forged_version_mismatch_keeps_the_compliance_cap() {
    let mut p = after_an_outage();
    let mismatch = ErrorCode::VersionMismatch { supported: 99 };
    let wait = refused_by(&mut p, &error_frame(mismatch, 0));
    assert_capped(wait, "a forged VersionMismatch");
}
