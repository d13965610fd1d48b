//! The tokio server adapter against a device whose connections end at every
//! possible point of a whole sync (handshake, a task, its report, a policy
//! and its report, a compliance event), on 127.0.0.1: the device's engine
//! runs over a plain socket here, and each connection is closed after the
//! device sent `k` bytes (or read `k` bytes), for every `k` until a sync fits.
//! A close with bytes unread turns into a reset, so both ends of a TCP close
//! are exercised.
//!
//! Expected, after every cut: the device's engine stays usable (each cut is
//! a failed sync and the next one is tried at once); the task runs once; the
//! compliance event is stored once; the server holds no session once the
//! connections are gone, and its timers stay bounded; the final sync
//! completes. Every wait is bounded, so a hang fails the test rather than
//! stalling it.

mod common;

use core::time::Duration as Wall;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;

use mdm_sync::adapters::clock::{Clock, ScaledClock};
use mdm_sync::adapters::tokio::ServerHandle;
use mdm_sync::device::{Device, DeviceConfig, Event};
use mdm_sync::server::{MemoryStore, TaskState};
use mdm_sync::wire::{
    ComplianceEvent, DeviceId, Platform, PolicyOutcome, Setting, TaskKind, TaskStatus,
};

/// Which direction a connection is cut in.
#[derive(Clone, Copy, Debug)]
enum Cut {
    /// After the device wrote this many bytes.
    Sent(usize),
    /// After the device read this many bytes (the rest stays unread).
    Read(usize),
}

struct Run {
    executed: usize,
    policies: usize,
    done: bool,
}

/// One session of `dev` over a new connection, cut as `cut` says. Returns
/// whether the sync completed.
fn session(
    dev: &mut Device,
    clock: &ScaledClock,
    addr: core::net::SocketAddr,
    cut: Cut,
    run: &mut Run,
) -> bool {
    dev.manual_sync(clock.now());
    let mut sock: Option<TcpStream> = None;
    let (mut sent, mut read) = (0usize, 0usize);
    let mut buf = [0u8; 1024];
    // A bounded number of turns (each waits at most 20 ms for bytes).
    for _ in 0..2_000 {
        let now = clock.now();
        dev.handle_timeout(now);
        let mut ended = None;
        while let Some(ev) = dev.poll_event() {
            match ev {
                Event::Connect => match TcpStream::connect(addr) {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        sock = Some(s);
                        dev.connected(now);
                    }
                    Err(_) => dev.connect_failed(now),
                },
                Event::Execute(task) => {
                    run.executed += 1;
                    dev.task_status(task.id, TaskStatus::Succeeded { result: None }, now)
                        .unwrap();
                }
                Event::ApplyPolicy { version } => {
                    run.policies += 1;
                    let _ = dev.policy_applied(version, PolicyOutcome::Applied, now);
                }
                Event::Disconnect => sock = None,
                Event::SyncDone { .. } => ended = Some(true),
                Event::SyncFailed { .. } => ended = Some(false),
                _ => {}
            }
        }
        if let Some(done) = ended {
            return done;
        }
        let Some(s) = sock.as_mut() else { continue };
        let mut cut_now = false;
        while let Some(n) = dev.poll_transmit(&mut buf).unwrap() {
            let mut n = n;
            if let Cut::Sent(k) = cut {
                if sent + n >= k {
                    n = k - sent;
                    cut_now = true;
                }
            }
            let _ = s.write_all(&buf[..n]);
            sent += n;
            if cut_now {
                break;
            }
        }
        if !cut_now {
            let _ = s.set_read_timeout(Some(Wall::from_millis(20)));
            let want = match cut {
                Cut::Read(k) => (k - read).min(buf.len()),
                Cut::Sent(_) => buf.len(),
            };
            if want == 0 {
                cut_now = true;
            } else {
                match s.read(&mut buf[..want]) {
                    Ok(0) => {
                        sock = None;
                        dev.disconnected(clock.now());
                        continue;
                    }
                    Ok(n) => {
                        read += n;
                        let _ = dev.handle_bytes(&buf[..n], clock.now());
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => {
                        sock = None;
                        dev.disconnected(clock.now());
                        continue;
                    }
                }
            }
        }
        if cut_now {
            sock = None; // closed with whatever is unread
            dev.disconnected(clock.now());
        }
    }
    panic!("no end of the session within its turns ({cut:?})");
}

async fn sessions(handle: &ServerHandle<MemoryStore>) -> (usize, usize) {
    handle
        .call(|s, _| (s.session_count(), s.timer_count()))
        .await
        .unwrap()
}

#[test]
fn connections_cut_at_every_byte_lose_nothing_and_leave_no_session() {
    let rt = common::runtime();
    let clock = ScaledClock::new();
    let (handle, addr) = rt.block_on(common::loopback_server(clock));
    let id = DeviceId(3);
    let secret = rt.block_on(handle.enroll(id)).unwrap();
    let mut cfg = DeviceConfig::new(id, 0, secret, Platform::Android);
    cfg.push_token = heapless::String::try_from("tok").unwrap();
    let mut dev: Device = Device::new(cfg, clock.now());
    let mut run = Run {
        executed: 0,
        policies: 0,
        done: false,
    };

    for dir in 0..2 {
        // Fresh work for each direction's sweep.
        let task = rt
            .block_on(handle.enqueue_task(id, TaskKind::Lock, Default::default()))
            .unwrap();
        let settings = vec![Setting { key: 1, value: 2 }];
        rt.block_on(handle.assign_policy(id, settings)).unwrap();
        dev.raise_compliance(ComplianceEvent::ProfileChanged, clock.now())
            .unwrap();
        let executed_before = run.executed;
        let mut k = 0;
        loop {
            let cut = if dir == 0 { Cut::Sent(k) } else { Cut::Read(k) };
            if session(&mut dev, &clock, addr, cut, &mut run) {
                break;
            }
            k += 1;
            assert!(k < 4_000, "no sync fits in 4000 bytes");
        }
        assert!(k > 0);
        // A last whole sync delivers whatever the cuts left.
        for _ in 0..3 {
            if session(&mut dev, &clock, addr, Cut::Sent(usize::MAX), &mut run)
                && dev.outbox_len() == 0
            {
                break;
            }
        }
        assert_eq!(run.executed - executed_before, 1, "the task ran once");
        let state = rt.block_on(handle.task(task)).unwrap().map(|t| t.state);
        assert!(
            matches!(state, Some(TaskState::Succeeded { .. })),
            "{state:?}"
        );
        assert_eq!(dev.outbox_len(), 0);
    }
    run.done = true;
    // The compliance events: each stored once.
    let stored = rt
        .block_on(handle.call(|s, _| s.store_mut().take_compliance()))
        .unwrap();
    assert_eq!(stored.len(), 2, "{stored:?}");
    // Sessions of closed connections go (bounded wait: a few seconds).
    let mut left = rt.block_on(sessions(&handle));
    for _ in 0..300 {
        if left.0 == 0 {
            break;
        }
        std::thread::sleep(Wall::from_millis(10));
        left = rt.block_on(sessions(&handle));
    }
    assert_eq!(left.0, 0, "sessions left open: {left:?}");
    assert!(left.1 < 1_100, "timers held: {left:?}");
    assert!(run.policies >= 2 && run.done);
    rt.block_on(handle.shutdown());
}
