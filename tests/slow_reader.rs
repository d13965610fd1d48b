//! A connection that falls more than `max_pending_out` behind is dropped in
//! the middle of a burst of work. The operator call that caused the burst
//! still succeeds (its work is stored), and the device gets everything in its
//! next session. A session that falls silent is closed, and the device asked
//! back.

mod common;

use mdm_sync::server::{ConnId, MemoryStore, Server, ServerConfig, ServerEvent, TaskState};
use mdm_sync::time::Instant;
use mdm_sync::wire::{DeviceId, Setting, TaskKind};

/// A server that drops a reader 200 bytes behind, and device 3 in session
/// on a connection made by hand: the server, the device, the time, the
/// device's secret and the connection.
fn slow_reader() -> (Server<MemoryStore>, DeviceId, Instant, [u8; 32], ConnId) {
    in_session(ServerConfig {
        max_pending_out: 200,
        ..ServerConfig::default()
    })
}

/// A server with `cfg` and device 3 in session on a connection made by hand.
fn in_session(cfg: ServerConfig) -> (Server<MemoryStore>, DeviceId, Instant, [u8; 32], ConnId) {
    let mut s = Server::new(cfg, MemoryStore::new(), [1; 32], [2; 32]);
    let d = DeviceId(3);
    let t0 = Instant::from_millis(1_000);
    let secret = s.enroll(d, t0).unwrap();
    let (conn, _, answer) = common::raw_handshake(&mut s, d, &secret, t0);
    answer.unwrap();
    (s, d, t0, secret, conn)
}

#[test]
fn an_operator_call_that_overflows_a_slow_reader_succeeds() {
    let (mut s, d, t0, secret, conn) = slow_reader();

    // The device reads nothing more: each policy goes out in its session
    // until the output passes the bound and the connection is dropped.
    let mut dropped = false;
    for v in 1..=20i64 {
        let settings = [Setting { key: 1, value: v }; 8];
        let r = s.assign_policy(d, &settings, t0);
        assert!(r.is_ok(), "policy {v}: {r:?}");
        while let Some(e) = s.poll_event() {
            dropped |= matches!(e, ServerEvent::Close { conn: c } if c == conn);
        }
    }
    assert!(dropped, "the slow reader was dropped");
    let task = s.enqueue_task(d, TaskKind::Lock, Default::default(), t0);
    assert_eq!(s.task_state(d, task.unwrap()), Some(TaskState::Queued));

    // Its next session gets the newest policy and the task.
    let (conn, key, answer) = common::raw_handshake(&mut s, d, &secret, t0);
    answer.unwrap();
    let mut buf = [0u8; 1024];
    let n = s.poll_transmit_for(conn, &mut buf).unwrap();
    let mut dec = mdm_sync::wire::FrameDecoder::<600>::new();
    dec.set_key(key);
    dec.push(&buf[..n]);
    let mut got = Vec::new();
    while let Some(Ok(p)) = dec.decode() {
        got.push(mdm_sync::wire::decode::<mdm_sync::wire::Down>(p).unwrap());
    }
    use mdm_sync::wire::Down;
    assert!(got
        .iter()
        .any(|m| matches!(m, Down::Policy(p) if p.version == 20)));
    assert!(got.iter().any(|m| matches!(m, Down::Task(_))));
}

/// The work whose burst dropped the slow reader stays stored, and the device
/// is asked to come back for it: it saw its connection close, and with nothing
/// of its own pending it would not retry before its periodic sync (3 h).
/// Found by a breaker run.
#[test]
fn work_that_dropped_a_slow_reader_gets_a_push() {
    use mdm_sync::time::Duration;

    let (mut s, d, t0, _, conn) = slow_reader();
    while s.poll_event().is_some() {}

    // Tasks queued while the device reads nothing, until one of them
    // overflows its output and the connection is dropped.
    let mut last = None;
    let mut pushes = 0;
    let mut count = |e: &ServerEvent| {
        pushes += usize::from(matches!(e, ServerEvent::SendPush { device, .. } if *device == d));
    };
    for _ in 0..40 {
        last = Some(
            s.enqueue_task(d, TaskKind::Lock, Default::default(), t0)
                .unwrap(),
        );
        let mut dropped = false;
        while let Some(e) = s.poll_event() {
            dropped |= matches!(e, ServerEvent::Close { conn: c } if c == conn);
            count(&e);
        }
        if dropped {
            break;
        }
    }
    let last = last.unwrap();
    assert_eq!(s.session_count(), 0, "the slow reader was dropped");

    // At once or when the push interval allows, the device is asked to sync.
    let mut t = t0;
    while t < t0 + Duration::from_mins(10) {
        s.handle_timeout(t).unwrap();
        while let Some(e) = s.poll_event() {
            count(&e);
        }
        t = t + Duration::from_secs(1);
    }
    assert!(
        pushes > 0,
        "no push for task {last:?} ({:?}) left by the dropped session",
        s.task_state(d, last)
    );
}

/// A session that falls silent may be half-open: the device never saw the
/// task offered in it and, its sync done, waits for its periodic sync. When
/// the session times out, the device is asked to come back. Found by a
/// breaker run (no test then).
#[test]
fn a_silent_session_with_work_offered_gets_a_push_when_it_times_out() {
    use mdm_sync::time::Duration;

    let cfg = ServerConfig::default();
    let (mut s, d, t0, _, conn) = in_session(cfg);
    let task = s.enqueue_task(d, TaskKind::Lock, Default::default(), t0);
    assert_eq!(s.task_state(d, task.unwrap()), Some(TaskState::Offered));
    let mut pushes = 0;
    let mut closed = false;
    let mut t = t0;
    while t < t0 + cfg.idle_timeout + cfg.idle_timeout + cfg.idle_timeout {
        t = t + Duration::from_secs(1);
        s.handle_timeout(t).unwrap();
        while let Some(e) = s.poll_event() {
            pushes += usize::from(matches!(e, ServerEvent::SendPush { device, .. } if device == d));
            closed |= matches!(e, ServerEvent::Close { conn: c } if c == conn);
        }
    }
    assert!(closed, "the silent session was closed");
    assert_eq!(pushes, 1, "one push brings the device back");
}

/// The burst a proof brings is exempt from `max_pending_out` (see
/// `tests/first_burst_bound.rs`): under a bound far below it, the proof is
/// answered, every task goes out offered, and no push asks the device back.
/// (Until this changed, the burst dropped the reader before its work was
/// out, and the push brought it back to be dropped again.)
#[test]
fn a_proof_whose_burst_passes_the_bound_keeps_the_reader() {
    let cfg = ServerConfig {
        max_pending_out: 200,
        ..ServerConfig::default()
    };
    let mut s = Server::new(cfg, MemoryStore::new(), [1; 32], [2; 32]);
    let d = DeviceId(3);
    let t0 = Instant::from_millis(1_000);
    let secret = s.enroll(d, t0).unwrap();
    let tasks: Vec<_> = (0..40)
        .map(|_| s.enqueue_task(d, TaskKind::Lock, Default::default(), t0))
        .collect::<Result<_, _>>()
        .unwrap();
    while s.poll_event().is_some() {}
    let (conn, _, answer) = common::raw_handshake(&mut s, d, &secret, t0);
    assert_eq!(answer, Ok(()));
    assert_eq!(s.session_count(), 1);
    assert!(tasks
        .iter()
        .all(|t| s.task_state(d, *t) == Some(TaskState::Offered)));
    let mut out = vec![0u8; 4096];
    let n = s.poll_transmit_for(conn, &mut out).unwrap();
    assert!(n > 200, "the burst, {n} bytes, passes the bound");
    let pushed = core::iter::from_fn(|| s.poll_event())
        .any(|e| matches!(e, ServerEvent::SendPush { .. } | ServerEvent::Close { .. }));
    assert!(!pushed, "no push and no close");
}

/// A reader the application drops for its own output bound (the tokio
/// adapter's) gets a push for the task its session had taken out, as one the
/// engine drops does; a plain close of a session with nothing open gets none.
#[test]
fn a_reader_dropped_by_the_application_gets_a_push_for_its_open_task() {
    let pushes = |s: &mut Server<MemoryStore>, d: DeviceId| {
        let mut n = 0;
        while let Some(e) = s.poll_event() {
            n += usize::from(matches!(e, ServerEvent::SendPush { device, .. } if device == d));
        }
        n
    };
    for dropped in [true, false] {
        let (mut s, d, t0, _, conn) = in_session(ServerConfig::default());
        let task = s.enqueue_task(d, TaskKind::Lock, Default::default(), t0);
        assert_eq!(s.task_state(d, task.unwrap()), Some(TaskState::Offered));
        // The frame is taken out, as an adapter does before it finds its
        // own buffer full.
        let mut buf = [0u8; 1024];
        assert!(s.poll_transmit_for(conn, &mut buf).is_some());
        assert_eq!(pushes(&mut s, d), 0, "no push while in session");
        if dropped {
            s.connection_dropped(conn, t0).unwrap();
        } else {
            s.connection_closed(conn, t0);
        }
        assert_eq!(s.session_count(), 0);
        assert_eq!(
            pushes(&mut s, d),
            usize::from(dropped),
            "dropped: {dropped}"
        );
    }
    // Nothing open: no push; an unknown id is harmless.
    let (mut s, d, t0, _, conn) = in_session(ServerConfig::default());
    while s.poll_event().is_some() {}
    s.connection_dropped(conn, t0).unwrap();
    s.connection_dropped(conn, t0).unwrap();
    assert_eq!(pushes(&mut s, d), 0);
}
