//! Overdue tracking across re-enrolments, against PROTOCOL.md 11.2: "a device
//! not checked in within `periodic_interval + overdue_slack` of its last
//! handshake is reported overdue (and "back" when it returns)". Re-enrolling
//! a device gives it a new secret; until it has that secret it cannot check
//! in, and a device that never gets it is exactly one to report.

mod common;

use common::server;
use mdm_sync::server::{MemoryStore, Server, ServerEvent};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::DeviceId;

const ID: DeviceId = DeviceId(7);

fn drain(s: &mut Server<MemoryStore>) -> Vec<ServerEvent> {
    let mut buf = [0u8; 4096];
    while s.poll_transmit(&mut buf).is_some() {}
    core::iter::from_fn(|| s.poll_event()).collect()
}

fn overdues(evs: &[ServerEvent]) -> usize {
    evs.iter()
        .filter(|e| matches!(e, ServerEvent::Overdue { device } if *device == ID))
        .count()
}

fn backs(evs: &[ServerEvent]) -> usize {
    evs.iter()
        .filter(|e| matches!(e, ServerEvent::Back { device } if *device == ID))
        .count()
}

/// Enrolls `ID` and checks it in (generation 0) at `t0`; the connection
/// stays open.
fn checked_in(s: &mut Server<MemoryStore>, t0: Instant) -> mdm_sync::server::ConnId {
    let secret = s.enroll(ID, t0).unwrap();
    let (conn, _, answer) = common::raw_handshake_gen(s, ID, 0, &secret, t0);
    answer.unwrap();
    conn
}

/// Runs the server's timers every minute for `hours` hours from `from`;
/// returns the events and the most timers held at any minute.
fn run(s: &mut Server<MemoryStore>, from: Instant, hours: u64) -> (Vec<ServerEvent>, usize) {
    let mut evs = Vec::new();
    let mut most = 0;
    for m in 1..=hours * 60 {
        s.handle_timeout(from + Duration::from_mins(m)).unwrap();
        evs.extend(drain(s));
        most = most.max(s.timer_count());
    }
    (evs, most)
}

#[test]
fn a_device_silent_after_re_enrolment_is_reported_overdue() {
    let mut s = server();
    let t0 = Instant::from_millis(1_000);
    let conn = checked_in(&mut s, t0);
    s.connection_closed(conn, t0);
    drain(&mut s);
    // Re-enrolled ten minutes later; the new secret never reaches it.
    s.enroll(ID, t0 + Duration::from_mins(10)).unwrap();
    let (evs, _) = run(&mut s, t0, 4);
    assert_eq!(
        overdues(&evs),
        1,
        "last handshake at t0, silent for 4 h (deadline 3 h 30 min): {evs:?}"
    );
    assert!(s.is_overdue(ID));
}

#[test]
fn a_device_re_enrolled_while_online_and_then_silent_is_reported_overdue() {
    let mut s = server();
    let t0 = Instant::from_millis(1_000);
    checked_in(&mut s, t0); // connection left open
    drain(&mut s);
    s.enroll(ID, t0 + Duration::from_mins(10)).unwrap(); // closes it
    let evs = drain(&mut s);
    assert!(evs.iter().any(|e| matches!(e, ServerEvent::Close { .. })));
    assert!(!s.device_view(ID).unwrap().online);
    let (evs, _) = run(&mut s, t0, 4);
    assert_eq!(overdues(&evs), 1, "{evs:?}");
}

#[test]
fn a_device_re_enrolled_while_overdue_stays_overdue_until_it_checks_in() {
    let mut s = server();
    let t0 = Instant::from_millis(1_000);
    let conn = checked_in(&mut s, t0);
    s.connection_closed(conn, t0);
    let (evs, _) = run(&mut s, t0, 4);
    assert_eq!(overdues(&evs), 1);
    assert!(s.is_overdue(ID));
    let t1 = t0 + Duration::from_hours(4);
    let secret = s.enroll(ID, t1).unwrap();
    // The event stream said Overdue and no Back: the console must agree.
    assert!(
        s.is_overdue(ID),
        "re-enrolled while overdue: no Back was sent, yet the console no longer lists it"
    );
    assert_eq!(s.overdue_devices(), vec![ID]);
    assert_eq!(s.fleet_view().unwrap().overdue, 1);
    let (evs, _) = run(&mut s, t1, 8);
    assert_eq!(overdues(&evs), 0, "reported once, not again");
    assert_eq!(backs(&evs), 0);
    // It checks in with its new secret: Back, once.
    let t2 = t1 + Duration::from_hours(8);
    let (conn, _, answer) = common::raw_handshake_gen(&mut s, ID, 1, &secret, t2);
    answer.unwrap();
    s.connection_closed(conn, t2);
    let evs = drain(&mut s);
    assert_eq!(backs(&evs), 1);
    assert!(!s.is_overdue(ID));
}

#[test]
fn repeated_re_enrolments_without_a_check_in_report_once_and_hold_one_timer() {
    let mut s = server();
    let t0 = Instant::from_millis(1_000);
    let conn = checked_in(&mut s, t0);
    s.connection_closed(conn, t0);
    drain(&mut s);
    let mut now = t0;
    for _ in 0..50 {
        now = now + Duration::from_mins(1);
        s.enroll(ID, now).unwrap();
        s.handle_timeout(now).unwrap();
        drain(&mut s);
    }
    let (evs, most) = run(&mut s, now, 24);
    assert_eq!(overdues(&evs), 1, "{evs:?}");
    assert!(most <= 2, "timers held: {most}");
}

#[test]
fn failed_handshakes_with_the_old_secret_are_no_check_in() {
    let mut s = server();
    let t0 = Instant::from_millis(1_000);
    let old = s.enroll(ID, t0).unwrap();
    let (conn, _, answer) = common::raw_handshake_gen(&mut s, ID, 0, &old, t0);
    answer.unwrap();
    s.connection_closed(conn, t0);
    drain(&mut s);
    s.enroll(ID, t0 + Duration::from_mins(1)).unwrap();
    // The device keeps trying with what it has, every 10 minutes.
    let mut evs = Vec::new();
    for k in 1..=24u64 {
        let now = t0 + Duration::from_mins(10 * k);
        let (conn, _, answer) = common::raw_handshake_gen(&mut s, ID, 0, &old, now);
        assert!(answer.is_err());
        s.connection_closed(conn, now);
        s.handle_timeout(now).unwrap();
        evs.extend(drain(&mut s));
    }
    assert_eq!(overdues(&evs), 1, "{evs:?}");
}
