//! `ServerConfig::max_session` against legitimate long sessions and odd
//! settings: devices whose timers keep sessions open far longer than the cap
//! (a long `linger` for tasks the app holds, long response timeouts), tasks
//! deferred, compliance events, the clock standing still and going back, and
//! `max_session` of 0, of less than `handshake_timeout`, the default and
//! the largest value. Whatever the setting: no panic, every task run once
//! and final with the app's result, every compliance event delivered, and
//! no session left open once the fleet is idle.

mod common;

use common::{Behaviour, Pair};
use mdm_sync::server::{ServerConfig, ServerEvent, TaskState};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::{ComplianceEvent, TaskKind, TaskStatus};

fn run(max_session: Duration, clock_back: bool) {
    let cfg = ServerConfig {
        max_session,
        ..ServerConfig::default()
    };
    let mut p = Pair::with_config(3, cfg);
    // Device 0 keeps its sessions open an hour for running tasks and waits
    // an hour for each answer; device 1 defers once; device 2 is plain.
    {
        let d = &mut p.devices[0];
        d.cfg.timers.linger = Duration::from_hours(1);
        d.cfg.timers.response_timeout = Duration::from_hours(1);
        let (cfg, now) = (d.cfg.clone(), p.now);
        d.dev = mdm_sync::device::Device::new(cfg, now);
        d.behaviour = Behaviour::Hold;
    }
    p.devices[1].script.push_back(Behaviour::Defer(Some(90)));
    p.run_for(Duration::from_mins(2));
    let mut tasks = Vec::new();
    let mut raised = 0;
    for round in 0..4u64 {
        for i in 0..3 {
            tasks.push((i, p.queue(i, TaskKind::ALL[(round as usize + i) % 5])));
        }
        p.raise(0, ComplianceEvent::ProfileChanged);
        raised += 1;
        p.run_for(Duration::from_mins(7));
        if clock_back && round == 1 {
            // The clock goes back 20 minutes, stands still a while, then on.
            p.now = Instant::from_millis(p.now.as_millis() - 20 * 60_000);
            for _ in 0..3 {
                p.tick();
            }
        }
        // The app of device 0 finishes what it holds, 7 minutes into its
        // session (the first time) and later.
        let held: Vec<_> = p.devices[0].held.clone();
        for t in held {
            let result = common::result_for(t.kind);
            p.finish(0, t.id, TaskStatus::Succeeded { result });
        }
        p.run_for(Duration::from_mins(9));
    }
    p.devices[0].behaviour = Behaviour::Succeed;
    p.run_for(Duration::from_hours(6));
    for (k, &(i, t)) in tasks.iter().enumerate() {
        // Device 1's first task was deferred once: handed to its app again.
        let runs = if k == 1 { 2 } else { 1 };
        assert_eq!(
            p.times_executed(i, t),
            runs,
            "{max_session:?}: task {t:?} of {i}"
        );
        assert!(
            matches!(p.state(i, t), TaskState::Succeeded { .. }),
            "{max_session:?}: task {t:?} of {i}: {:?}",
            p.state(i, t)
        );
    }
    let delivered = p.count_events(|e| matches!(e, ServerEvent::Compliance { .. }));
    assert_eq!(delivered, raised, "{max_session:?}: compliance events");
    assert_eq!(p.devices[0].dev.outbox_len(), 0);
    // Device 0's long sessions (its timers hold them an hour) were cut by
    // the server (by the cap, or by the idle timeout, which applies too: a
    // device whose app holds a task sends nothing meanwhile).
    let cut = p.devices[0].failed.iter().any(|e| {
        *e == mdm_sync::device::SessionError::Rejected(mdm_sync::wire::ErrorCode::Timeout)
    });
    assert!(cut, "{max_session:?}");
    assert_eq!(
        p.server.session_count(),
        0,
        "{max_session:?}: sessions left"
    );
    assert!(p.devices.iter().all(|d| !d.dev.is_connected()));
}

#[test]
fn every_max_session_loses_nothing_and_runs_nothing_twice() {
    for max in [
        Duration::from_millis(0),
        Duration::from_millis(1),
        Duration::from_secs(29),
        Duration::from_mins(10),
        Duration::from_millis(u64::MAX),
    ] {
        run(max, false);
        run(max, true);
    }
}

/// With `handle_timeout` never called the server cuts nothing (it has no
/// clock of its own); called once, very late, it ends every session that
/// passed the cap at once, without panicking.
#[test]
fn a_late_timer_call_ends_every_session_past_the_cap() {
    let mut s = common::server();
    let t0 = Instant::from_millis(5_000);
    let conns: Vec<_> = (1..=3u64)
        .map(|id| {
            let id = mdm_sync::wire::DeviceId(id);
            let secret = s.enroll(id, t0).unwrap();
            let (conn, _, answer) = common::raw_handshake(&mut s, id, &secret, t0);
            answer.unwrap();
            conn
        })
        .collect();
    let mut buf = [0u8; 4096];
    for &c in &conns {
        while s.poll_transmit_for(c, &mut buf).is_some() {}
    }
    let late = Instant::from_millis(u64::MAX - 1);
    s.handle_timeout(late).unwrap();
    for &c in &conns {
        while s.poll_transmit_for(c, &mut buf).is_some() {}
    }
    s.handle_timeout(late).unwrap();
    assert_eq!(s.session_count(), 0);
}

/// When an authenticated session that keeps sending (a frame a second, well
/// inside `idle_timeout`) gets its `Timeout`: the cap is first looked at
/// when the handshake's deadline comes, so a `max_session` below
/// `handshake_timeout` acts as `handshake_timeout` (30 s); above it, the
/// cap holds to the millisecond timers are run at. Returns seconds from the
/// connection to the `Close`.
fn cut_after(max_session: Duration) -> u64 {
    let cfg = ServerConfig {
        max_session,
        ..ServerConfig::default()
    };
    let mut s =
        mdm_sync::server::Server::new(cfg, mdm_sync::server::MemoryStore::new(), [1; 32], [2; 32]);
    let t0 = Instant::from_millis(5_000);
    let id = mdm_sync::wire::DeviceId(9);
    let secret = s.enroll(id, t0).unwrap();
    let (conn, key, answer) = common::raw_handshake(&mut s, id, &secret, t0);
    answer.unwrap();
    let mut payload = [0u8; 64];
    let progress = mdm_sync::wire::Up::Progress {
        task: mdm_sync::wire::TaskId(77),
        percent: Some(1),
    };
    let n = mdm_sync::wire::encode_payload(&progress, &mut payload).unwrap();
    let frame = common::raw_frame(&payload[..n], key);
    let mut buf = [0u8; 4096];
    for sec in 0..3600u64 {
        let now = t0 + Duration::from_secs(sec);
        s.handle_timeout(now).unwrap();
        while s.poll_transmit_for(conn, &mut buf).is_some() {}
        while let Some(ev) = s.poll_event() {
            if ev == (ServerEvent::Close { conn }) {
                return sec;
            }
        }
        let _ = s.handle_bytes(conn, &frame, now);
    }
    panic!("{max_session:?}: never closed");
}

#[test]
fn a_cap_below_the_handshake_timeout_acts_as_the_handshake_timeout() {
    let handshake = ServerConfig::default().handshake_timeout.as_millis() / 1000;
    assert_eq!(handshake, 30);
    for (max_s, want) in [(0, 30), (1, 30), (29, 30), (31, 31), (200, 200)] {
        assert_eq!(
            cut_after(Duration::from_secs(max_s)),
            want,
            "max_session {max_s} s"
        );
    }
}
