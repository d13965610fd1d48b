//! The server's deadline and push-check queues with a clock that goes
//! backwards: such a clock may delay a timer by the jump, never strand it,
//! and never delay timers armed after the jump.

mod common;

use common::server;
use mdm_sync::server::{FleetStore, MemoryStore, Server, ServerEvent};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::{DeviceId, Platform, TaskKind};

fn enrolled(s: &mut Server<MemoryStore>, id: u64, now: Instant) -> DeviceId {
    let d = DeviceId(id);
    s.enroll(d, now).unwrap();
    s.store_mut()
        .set_push_target(d, Platform::Android, "token")
        .unwrap();
    d
}

fn pushes_to(s: &mut Server<MemoryStore>, d: DeviceId) -> usize {
    let mut n = 0;
    while let Some(e) = s.poll_event() {
        n += usize::from(matches!(e, ServerEvent::SendPush { device, .. } if device == d));
    }
    n
}

/// Runs the server's timers at every second from `from` to `to`, as an
/// application following `poll_timeout` would.
fn run(s: &mut Server<MemoryStore>, from: Instant, to: Instant) {
    let mut t = from;
    while t <= to {
        s.handle_timeout(t).unwrap();
        t = t + Duration::from_secs(1);
    }
}

/// A push held back by the rate limit after the clock went back, when the
/// check of the last push already ran: it must still go out once the
/// interval is over on the clock.
#[test]
fn a_push_held_back_after_the_clock_went_back_is_not_stranded() {
    let mut s = server();
    let t0 = Instant::from_millis(10_000_000);
    let d = enrolled(&mut s, 7, t0);
    s.enqueue_task(d, TaskKind::Lock, Default::default(), t0)
        .unwrap();
    assert_eq!(pushes_to(&mut s, d), 1);
    // The push's check runs (nothing pending).
    let t1 = t0 + Duration::from_secs(70);
    s.handle_timeout(t1).unwrap();
    // The clock goes back to before the end of the interval; more work.
    let back = t0 + Duration::from_secs(10);
    s.enqueue_task(d, TaskKind::Lock, Default::default(), back)
        .unwrap();
    assert_eq!(pushes_to(&mut s, d), 0, "within the interval on the clock");
    run(&mut s, back, back + Duration::from_mins(10));
    assert_eq!(pushes_to(&mut s, d), 1, "the held push went out");
}

/// A clock that jumped far ahead and came back: a connection opened at the
/// far time has its handshake deadline far away; connections opened after
/// the clock came back must still be timed out on time.
#[test]
fn a_handshake_deadline_is_not_held_behind_one_armed_before_the_clock_went_back() {
    let mut s = server();
    let far = Instant::from_millis(1_000_000_000_000);
    let _ghost = s.connection_opened(far).unwrap();
    let t0 = Instant::from_millis(10_000_000);
    let c = s.connection_opened(t0).unwrap();
    let limit = s.config().handshake_timeout;
    assert!(
        s.poll_timeout().is_some_and(|at| at <= t0 + limit),
        "next deadline {:?}, handshake due {:?}",
        s.poll_timeout(),
        t0 + limit
    );
    run(&mut s, t0, t0 + limit + limit + Duration::from_secs(5));
    let mut buf = [0u8; 512];
    let mut closed = false;
    while let Some((conn, _)) = s.poll_transmit(&mut buf) {
        closed |= conn == c;
    }
    while let Some(e) = s.poll_event() {
        closed |= matches!(e, ServerEvent::Close { conn } if conn == c);
    }
    assert!(closed, "the silent connection was timed out");
}

/// The same for push checks: a push rate-limited after the clock came back
/// goes out after its own interval, not after one armed at the far time.
#[test]
fn a_push_check_is_not_held_behind_one_armed_before_the_clock_went_back() {
    let mut s = server();
    let far = Instant::from_millis(1_000_000_000_000);
    let a = enrolled(&mut s, 1, far);
    s.enqueue_task(a, TaskKind::Lock, Default::default(), far)
        .unwrap();
    let t0 = Instant::from_millis(10_000_000);
    let b = enrolled(&mut s, 2, t0);
    s.enqueue_task(b, TaskKind::Lock, Default::default(), t0)
        .unwrap();
    assert_eq!(pushes_to(&mut s, b), 1);
    let t1 = t0 + Duration::from_secs(5);
    s.enqueue_task(b, TaskKind::Lock, Default::default(), t1)
        .unwrap();
    assert_eq!(pushes_to(&mut s, b), 0);
    run(&mut s, t1, t0 + Duration::from_mins(5));
    assert_eq!(pushes_to(&mut s, b), 1, "held push sent after its interval");
}
