//! Pushes: one per device per interval, only while the device is offline,
//! carrying nothing but "sync now".

mod common;

use common::Pair;
use mdm_sync::server::{FleetStore, MemoryStore, Server, ServerConfig, ServerEvent};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::{DeviceId, Platform, TaskKind};

/// A server with device 7 enrolled at `t0` and its push target stored;
/// returns them and the device's secret.
fn pushable_device() -> (Server<MemoryStore>, DeviceId, Instant, [u8; 32]) {
    let mut s = Server::new(
        ServerConfig::default(),
        MemoryStore::new(),
        [1; 32],
        [2; 32],
    );
    let d = DeviceId(7);
    let t0 = Instant::from_millis(1_000_000);
    let secret = s.enroll(d, t0).unwrap();
    s.store_mut()
        .set_push_target(d, Platform::Android, "token")
        .unwrap();
    (s, d, t0, secret)
}

fn pushes(p: &Pair) -> usize {
    p.count_events(|e| matches!(e, ServerEvent::SendPush { .. }))
}

#[test]
fn bursts_of_work_get_one_push_per_interval() {
    let mut p = Pair::new(1);
    p.run_for(Duration::from_secs(5));
    p.pushes_lost = true;
    for _ in 0..5 {
        p.queue(0, TaskKind::Lock);
        p.advance(Duration::from_secs(5));
    }
    assert_eq!(pushes(&p), 1, "one push for the burst");
    p.run_for(Duration::from_secs(60));
    assert_eq!(
        pushes(&p),
        2,
        "one more at the end of the interval covers the rest"
    );
    p.run_for(Duration::from_mins(10));
    assert_eq!(pushes(&p), 2, "no new work, no new push");
}

#[test]
fn no_push_while_the_device_is_connected_or_before_it_sent_a_token() {
    let mut p = Pair::new(1);
    p.queue(0, TaskKind::Lock); // never connected: no token yet
    p.tick();
    assert_eq!(pushes(&p), 0);
    p.run_for(Duration::from_secs(5)); // boot sync delivers it anyway
    assert_eq!(p.devices[0].executed.len(), 1);
    assert_eq!(pushes(&p), 0);
}

/// The check that follows a push may fall due late (the application calls
/// `handle_timeout` when it gets round to it); by then a newer push may have
/// gone out, and work held back behind that one waits for its interval.
#[test]
fn a_late_push_check_keeps_the_interval_of_a_newer_push() {
    let (mut s, d, t0, _) = pushable_device();
    let mut pushed = 0;
    let mut queue_at = |s: &mut Server<MemoryStore>, at: Instant| {
        s.enqueue_task(d, TaskKind::Lock, Default::default(), at)
            .unwrap();
        while let Some(e) = s.poll_event() {
            pushed += usize::from(matches!(e, ServerEvent::SendPush { .. }));
        }
        pushed
    };
    assert_eq!(queue_at(&mut s, t0), 1);
    // Past the interval, with the first check not yet run: a push at once.
    let t1 = t0 + Duration::from_secs(70);
    assert_eq!(queue_at(&mut s, t1), 2);
    // Within the second push's interval: held back, even when the first
    // push's check runs now.
    let t2 = t1 + Duration::from_secs(10);
    assert_eq!(queue_at(&mut s, t2), 2);
    s.handle_timeout(t2).unwrap();
    assert_eq!(queue_at(&mut s, t2), 2);
    // The second push's check sends it.
    let t3 = t1 + Duration::from_secs(60);
    s.handle_timeout(t3).unwrap();
    assert_eq!(queue_at(&mut s, t3), 3);
}

/// Work that arrives while the device's session is failing (its error frame
/// sent, the transport not yet closed) and is held back by the push interval
/// still gets its push when the interval ends: the failing session does not
/// count as the device being online.
#[test]
fn work_held_back_while_a_session_fails_still_gets_its_push() {
    use mdm_sync::wire::{self, frame, ReportBody, Up};

    let (mut s, d, t0, secret) = pushable_device();
    let mut pushed = 0;
    let mut count = |s: &mut Server<MemoryStore>| {
        while let Some(e) = s.poll_event() {
            pushed += usize::from(matches!(e, ServerEvent::SendPush { .. }));
        }
        pushed
    };
    s.enqueue_task(d, TaskKind::Lock, Default::default(), t0)
        .unwrap();
    assert_eq!(count(&mut s), 1);

    // The device answers the push; then its session fails on a report
    // sequence gap. The server has sent its error frame; the transport is
    // still open.
    let t1 = t0 + Duration::from_secs(2);
    let (conn, key, answer) = common::raw_handshake(&mut s, d, &secret, t1);
    answer.unwrap();
    let gap = Up::Report {
        seq: 5,
        body: ReportBody::Policy(wire::PolicyReport {
            version: 1,
            outcome: wire::PolicyOutcome::Applied,
        }),
    };
    let mut buf = [0u8; 64];
    let n = frame::encode_keyed(&gap, &mut buf, key).unwrap();
    assert!(s.handle_bytes(conn, &buf[..n], t1).is_err());

    // New work within the push interval: held back.
    let t2 = t1 + Duration::from_secs(1);
    s.enqueue_task(d, TaskKind::Scan, Default::default(), t2)
        .unwrap();
    assert_eq!(count(&mut s), 1);
    // The interval ends while the failing session is still not closed.
    let t3 = t0 + Duration::from_secs(61);
    s.handle_timeout(t3).unwrap();
    assert_eq!(count(&mut s), 2, "the held-back push goes out");
}
