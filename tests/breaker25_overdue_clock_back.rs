//! Overdue reporting after the server's clock went back.
//!
//! A device that checks in promises its next check-in within
//! `periodic_interval + overdue_slack` (3.5 h) on the server's clock
//! (PROTOCOL.md 11.2). The engine keeps one check per device: a check-in
//! with a check already queued moves the deadline and lets that check
//! re-arm itself when it runs (`expect_check_in`). That check was queued
//! for the previous deadline; if the clock went back in between, the
//! previous deadline lies after the new one, and the check only runs then:
//! a device that goes silent is reported overdue as much later as the
//! clock went back (two days here), and `poll_timeout` does not even ask
//! to be woken at its deadline. A check-in's own check goes to the heap
//! when the clock went back (`in_order`), and a held push gets a check of
//! its own then (`hold_push`); the re-armed check-in does not.

mod common;

use mdm_sync::server::ServerEvent;
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::DeviceId;

fn sync(
    server: &mut mdm_sync::server::Server<mdm_sync::server::MemoryStore>,
    id: DeviceId,
    secret: &[u8; 32],
    now: Instant,
) {
    let (conn, _, answer) = common::raw_handshake(server, id, secret, now);
    assert!(answer.is_ok(), "{answer:?}");
    server.connection_closed(conn, now);
}

/// Device 7 checks in at `t0`, then at `t0 - shift_back + shift_on`,
/// then goes silent. Whether it is reported overdue
/// one minute after the deadline of its last check-in.
fn overdue_a_minute_late(shift_back: Duration, shift_on: Duration) -> bool {
    let mut server = common::server();
    let cfg = *server.config();
    let id = DeviceId(7);
    let t0 = Instant::from_millis(30 * 24 * 3_600_000);
    let secret = server.enroll(id, t0).unwrap();
    sync(&mut server, id, &secret, t0);
    let last = t0 - shift_back + shift_on;
    sync(&mut server, id, &secret, last);
    while server.poll_event().is_some() {}
    let deadline = last + cfg.periodic_interval + cfg.overdue_slack;
    server
        .handle_timeout(deadline + Duration::from_mins(1))
        .unwrap();
    let mut overdue = false;
    while let Some(e) = server.poll_event() {
        overdue |= matches!(e, ServerEvent::Overdue { device } if device == id);
    }
    overdue && server.is_overdue(id)
}

/// The clock goes back two days between the check-ins. Today the report
/// comes only when the check of the first check-in runs, at `t0 + 3.5 h`:
/// two days late.
#[test]
#[ignore = "fault: after the server clock goes back, a silent device's Overdue waits for the check of its earlier check-in (2 days late here)"]
fn a_device_silent_after_the_clock_went_back_is_overdue_at_its_deadline() {
    assert!(
        overdue_a_minute_late(Duration::from_hours(48), Duration::from_millis(0)),
        "silent 3.5 h and a minute past its last check-in, not reported overdue"
    );
}

/// The control: the second check-in five minutes after the first, on a
/// steady clock, is reported a minute after its deadline.
#[test]
fn a_device_silent_on_a_steady_clock_is_overdue_at_its_deadline() {
    assert!(overdue_a_minute_late(
        Duration::from_millis(0),
        Duration::from_mins(5)
    ));
}
