//! The blocking device adapter against hostile servers on 127.0.0.1 (written
//! here, one behaviour per connection): a server that closes at once, one
//! that floods garbage, one that sends half a frame header and stalls, one
//! that trickles a valid `Challenge` a byte at a time and never goes on, and
//! one that completes the handshake, never sends `SyncEnd`, and keeps the
//! session alive with a stray `Ack` well inside every response timeout.
//!
//! Each server keeps its behaviour up for a long budget (seconds of wall
//! time, hundreds of the device's scaled seconds) and records whether the
//! device left first. Expected: the device leaves every one of them on its
//! own timers (the last one found the device held in the session until the
//! server gave up: the device had no bound on a session's length), and after
//! them all the device is still usable: each `run_once` returned and the
//! engine counts a failed sync per hostile connection.
//!
//! No assertion on speed: the budgets only turn a hang into a failure.

use core::time::Duration as Wall;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Instant as WallInstant;

use mdm_sync::adapters::blocking::{
    BlockingDevice, Execution, Handler, MemoryStorage, TcpConnector,
};
use mdm_sync::adapters::clock::ScaledClock;
use mdm_sync::device::DeviceConfig;
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::{
    self, frame, DeviceId, Down, Platform, Policy, PolicyOutcome, Task, TaskStatus, Up,
    PROTOCOL_VERSION,
};

struct Agent;
impl Handler for Agent {
    fn execute(&mut self, _task: Task, _now: Instant) -> Execution {
        Execution::Done(TaskStatus::Succeeded { result: None })
    }
    fn apply_policy(&mut self, _policy: &Policy, _now: Instant) -> PolicyOutcome {
        PolicyOutcome::Applied
    }
}

#[derive(Clone, Copy, Debug)]
enum Hostile {
    CloseAtOnce,
    Garbage,
    HalfHeader,
    TrickledChallenge,
    StrayAcks,
}

/// How long each hostile server keeps going (wall time).
const BUDGET: Wall = Wall::from_secs(8);

/// Reads what is there within `wait`; `None` once the peer closed or failed.
fn read_some(s: &mut TcpStream, wait: Wall, buf: &mut [u8]) -> Option<usize> {
    s.set_read_timeout(Some(wait)).ok()?;
    match s.read(buf) {
        Ok(0) => None,
        Ok(n) => Some(n),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Some(0)
        }
        Err(_) => None,
    }
}

/// The device's `Hello`, read from the connection.
fn read_hello(s: &mut TcpStream) -> Option<wire::Hello> {
    let mut dec = wire::FrameDecoder::<1024>::new();
    let mut buf = [0u8; 1024];
    let start = WallInstant::now();
    while start.elapsed() < BUDGET {
        let n = read_some(s, Wall::from_millis(20), &mut buf)?;
        dec.push(&buf[..n]);
        if let Some(Ok(p)) = dec.decode() {
            if let Ok(Up::Hello(h)) = wire::decode::<Up>(p) {
                return Some(h);
            }
        }
    }
    None
}

/// Plays `how` on one connection; true when the device closed it first.
fn play(mut s: TcpStream, how: Hostile) -> bool {
    let start = WallInstant::now();
    let mut buf = [0u8; 1024];
    // Whether the device is still there: a read that finds its close.
    let mut gone = |s: &mut TcpStream, wait: Wall| read_some(s, wait, &mut buf).is_none();
    match how {
        Hostile::CloseAtOnce => return true,
        Hostile::Garbage => {
            let junk = [0x5Au8; 512];
            while start.elapsed() < BUDGET {
                if s.write_all(&junk).is_err() || gone(&mut s, Wall::from_millis(1)) {
                    return true;
                }
            }
        }
        Hostile::HalfHeader => {
            let _ = s.write_all(&frame::MAGIC);
            while start.elapsed() < BUDGET {
                if gone(&mut s, Wall::from_millis(20)) {
                    return true;
                }
            }
        }
        Hostile::TrickledChallenge | Hostile::StrayAcks => {
            let Some(hello) = read_hello(&mut s) else {
                return true;
            };
            let nonce = [7u8; 16];
            let key = frame::session_key(&nonce);
            let mut out = [0u8; 600];
            let challenge = Down::Challenge {
                version: PROTOCOL_VERSION,
                attempt: hello.attempt,
                nonce,
            };
            let n = frame::encode(&challenge, &mut out).unwrap();
            if let Hostile::TrickledChallenge = how {
                // One byte every 5 device seconds (5 ms at 1000x), all but
                // the last byte, then silence.
                for b in &out[..n - 1] {
                    if s.write_all(core::slice::from_ref(b)).is_err()
                        || gone(&mut s, Wall::from_millis(5))
                    {
                        return true;
                    }
                }
                while start.elapsed() < BUDGET {
                    if gone(&mut s, Wall::from_millis(20)) {
                        return true;
                    }
                }
                return false;
            }
            let _ = s.write_all(&out[..n]);
            // The proof comes; the server takes any.
            if gone(&mut s, Wall::from_millis(200)) {
                return true;
            }
            let welcome = Down::Welcome {
                ack: 0,
                periodic_s: 0,
                want_token: false,
            };
            let n = frame::encode_keyed(&welcome, &mut out, key).unwrap();
            let _ = s.write_all(&out[..n]);
            // A stray Ack every 10 device seconds (10 ms), never SyncEnd.
            let n = frame::encode_keyed(&Down::Ack { seq: 0 }, &mut out, key).unwrap();
            while start.elapsed() < BUDGET {
                if s.write_all(&out[..n]).is_err() || gone(&mut s, Wall::from_millis(10)) {
                    return true;
                }
            }
        }
    }
    false
}

#[test]
fn the_blocking_device_leaves_every_hostile_server_on_its_own_timers() {
    let plan = [
        Hostile::CloseAtOnce,
        Hostile::Garbage,
        Hostile::HalfHeader,
        Hostile::TrickledChallenge,
        Hostile::StrayAcks,
    ];
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    let server = std::thread::spawn(move || {
        for how in plan {
            let Ok((s, _)) = listener.accept() else {
                return;
            };
            // Small frames go out as written (no Nagle delay behind the
            // device's delayed acknowledgements).
            let _ = s.set_nodelay(true);
            let left = play(s, how);
            let _ = tx.send((how, left));
        }
    });

    // 1000x: the device's 30 s response timeout is 30 ms of wall time.
    let mut cfg = DeviceConfig::new(DeviceId(5), 0, [1; 32], Platform::Android);
    // No sync of its own during the test: each session is a manual one.
    cfg.timers.backoff_min = Duration::from_hours(24);
    cfg.timers.backoff_max = Duration::from_hours(24);
    cfg.timers.periodic = Duration::from_hours(24 * 7);
    let connector = TcpConnector::new(addr).with_timeout(Wall::from_secs(2));
    let mut dev: BlockingDevice<_, _, _> = BlockingDevice::boot(
        cfg,
        connector,
        MemoryStorage::new(),
        Agent,
        ScaledClock::scaled(1000.0),
    )
    .unwrap();
    let mut results = Vec::new();
    for _ in plan {
        // One session per hostile server: a manual sync skips the backoff.
        dev.manual_sync();
        dev.run_once().unwrap();
        assert!(!dev.is_connected());
        // Bounded: the server reports within its budget, hang or not.
        let got = rx
            .recv_timeout(BUDGET * 3)
            .expect("the hostile server reports");
        results.push(got);
    }
    server.join().unwrap();
    for (how, left) in &results {
        assert!(left, "{how:?}: the device stayed until the server gave up");
    }
    assert!(
        dev.device().stats().failures >= plan.len() as u32,
        "{:?}",
        dev.device().stats()
    );
}
