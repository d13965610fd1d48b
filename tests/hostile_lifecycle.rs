//! Lifecycle faults found by a hostile tester (break-7): each test is the
//! smallest schedule that shows one.

mod common;

use mdm_sync::server::{MemoryStore, Server, ServerConfig, ServerEvent};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::DeviceId;

fn server(cfg: ServerConfig) -> Server<MemoryStore> {
    Server::new(cfg, MemoryStore::new(), [7; 32], [9; 32])
}

fn drain_events(s: &mut Server<MemoryStore>) -> Vec<ServerEvent> {
    let mut buf = [0u8; 4096];
    while s.poll_transmit(&mut buf).is_some() {}
    core::iter::from_fn(|| s.poll_event()).collect()
}

/// A device whose check-in deadline passes while it is still connected,
/// and which then disconnects and never comes back, must still be reported
/// overdue.
#[test]
fn a_device_online_at_its_deadline_then_silent_is_reported_overdue() {
    let cfg = ServerConfig {
        periodic_interval: Duration::from_secs(60),
        overdue_slack: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(120),
        ..ServerConfig::default()
    };
    let mut s = server(cfg);
    let id = DeviceId(1);
    let t0 = Instant::from_millis(1_000);
    let secret = s.enroll(id, t0).unwrap();
    let (conn, _, answer) = common::raw_handshake(&mut s, id, &secret, t0);
    assert!(answer.is_ok());
    // The check-in deadline (t0 + 65 s) passes while the session is open.
    let t1 = t0 + Duration::from_secs(66);
    s.handle_timeout(t1).unwrap();
    s.connection_closed(conn, t1);
    drain_events(&mut s);
    // Then the device stays away for a day.
    let mut now = t1;
    let end = t1 + Duration::from_hours(24);
    while let Some(at) = s.poll_timeout().filter(|&at| at <= end) {
        now = at.max(now);
        s.handle_timeout(now).unwrap();
    }
    s.handle_timeout(end).unwrap();
    let evs = drain_events(&mut s);
    assert!(
        evs.iter()
            .any(|e| matches!(e, ServerEvent::Overdue { device } if *device == id)),
        "no Overdue event for a device silent for a day: {evs:?}"
    );
}

/// A server (or anything on the path) that sends one byte of a real frame
/// every 25 s never lets the device's response timeout (30 s, "how long to
/// wait for the server's next message") fire: the device sits in one
/// session for as long as the trickle lasts, and syncs nothing else.
#[test]
fn a_trickling_server_cannot_hold_the_device_past_its_response_timeout() {
    use mdm_sync::device::{Device, DeviceConfig, Event};
    use mdm_sync::wire::Platform;

    let t0 = Instant::from_millis(1_000);
    let mut s = server(ServerConfig::default());
    let id = DeviceId(1);
    let secret = s.enroll(id, t0).unwrap();
    let mut cfg = DeviceConfig::new(id, 0, secret, Platform::Android);
    cfg.push_token = heapless::String::try_from("tok").unwrap();
    let mut dev: Device = Device::new(cfg, t0);
    dev.handle_timeout(t0);
    let mut connected = false;
    while let Some(ev) = dev.poll_event() {
        if matches!(ev, Event::Connect) {
            dev.connected(t0);
            connected = true;
        }
    }
    assert!(connected);
    // The device's Hello goes to a real server, whose challenge comes back
    // one byte every 25 s.
    let conn = s.connection_opened(t0).unwrap();
    let mut buf = [0u8; 2048];
    while let Ok(Some(n)) = dev.poll_transmit(&mut buf) {
        s.handle_bytes(conn, &buf[..n], t0).unwrap();
    }
    let n = s.poll_transmit_for(conn, &mut buf).unwrap();
    let challenge = buf[..n].to_vec();
    let mut now = t0;
    for (i, b) in challenge.iter().enumerate().take(challenge.len() - 1) {
        now = t0 + Duration::from_secs(25 * (i as u64 + 1));
        dev.handle_timeout(now);
        while dev.poll_event().is_some() {}
        if !dev.is_connected() {
            return; // the session was given up: the guarantee holds
        }
        let _ = dev.handle_bytes(core::slice::from_ref(b), now);
    }
    panic!(
        "device still in its first session {} s after it connected, with no whole message received",
        now.saturating_since(t0).as_millis() / 1000
    );
}

/// A device's handshake by hand, in `generation`; the proof must be taken.
fn handshake_gen(
    s: &mut Server<MemoryStore>,
    device: DeviceId,
    generation: u32,
    secret: &[u8; 32],
    now: Instant,
) -> mdm_sync::server::ConnId {
    let (conn, _, answer) = common::raw_handshake_gen(s, device, generation, secret, now);
    answer.unwrap();
    conn
}

/// An overdue device that is re-enrolled and then checks in: the console
/// stops counting it overdue, so an event consumer must hear `Back` too, or
/// it keeps the device flagged for good.
#[test]
fn a_reenrolled_overdue_device_that_checks_in_is_announced_back() {
    let cfg = ServerConfig {
        periodic_interval: Duration::from_secs(60),
        overdue_slack: Duration::from_secs(5),
        ..ServerConfig::default()
    };
    let mut s = server(cfg);
    let id = DeviceId(1);
    let t0 = Instant::from_millis(1_000);
    let secret = s.enroll(id, t0).unwrap();
    let conn = handshake_gen(&mut s, id, 0, &secret, t0);
    s.connection_closed(conn, t0);
    let t1 = t0 + Duration::from_secs(70);
    s.handle_timeout(t1).unwrap();
    let evs = drain_events(&mut s);
    assert!(evs.iter().any(|e| matches!(e, ServerEvent::Overdue { .. })));
    assert!(s.is_overdue(id));
    // Re-enrolled (generation 1), then it checks in.
    let secret = s.enroll(id, t1).unwrap();
    let t2 = t1 + Duration::from_secs(1);
    let conn = handshake_gen(&mut s, id, 1, &secret, t2);
    assert!(
        s.device_view(id).unwrap().online,
        "generation 1 handshake failed"
    );
    s.connection_closed(conn, t2);
    let evs = drain_events(&mut s);
    assert!(!s.is_overdue(id));
    assert!(
        evs.iter()
            .any(|e| matches!(e, ServerEvent::Back { device } if *device == id)),
        "overdue device back after re-enrollment, but no Back event: {evs:?}"
    );
}
