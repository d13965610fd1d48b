//! A loopback proxy that cuts every byte stream into pieces and breaks some
//! connections, for the breaker20 adapter tests: connection k forwards each
//! direction in pieces of 1 to 7 bytes (a size per connection and
//! direction), and on some connections cuts the server's or the device's
//! stream mid-frame (both sockets shut) or stalls the server's (sockets
//! left open).
#![allow(dead_code, unreachable_pub)] // reason: shared by test crates

use core::net::SocketAddr;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use core::time::Duration as Wall;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;

/// What connection `k` does to one direction (`up`: device to server).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    Split(usize),
    /// Forward this many bytes, then shut both sockets.
    Cut(usize),
    /// Forward this many bytes, then nothing more (sockets left open).
    Stall(usize),
}

pub fn mode(k: usize, up: bool) -> Mode {
    let piece = 1 + (k * 3 + usize::from(up)) % 7;
    let at = 3 + (k * 11) % 37;
    match (k % 6, up) {
        (3, false) => Mode::Stall(at),
        (4, true) => Mode::Cut(at),
        (5, false) => Mode::Cut(at),
        _ => Mode::Split(piece),
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, m: Mode, stop: Arc<AtomicBool>) {
    let piece = match m {
        Mode::Split(p) => p,
        _ => 1,
    };
    let limit = match m {
        Mode::Cut(n) | Mode::Stall(n) => n,
        Mode::Split(_) => usize::MAX,
    };
    let _ = from.set_read_timeout(Some(Wall::from_millis(50)));
    let mut sent = 0;
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => break,
        };
        for chunk in buf[..n].chunks(piece) {
            if sent >= limit {
                break;
            }
            let chunk = &chunk[..chunk.len().min(limit - sent)];
            if to.write_all(chunk).and_then(|()| to.flush()).is_err() {
                stop.store(true, Ordering::Relaxed);
                return;
            }
            sent += chunk.len();
            // A separate segment for each piece, as far as loopback goes.
            std::thread::sleep(Wall::from_micros(200));
        }
        if sent >= limit {
            if let Mode::Cut(_) = m {
                let _ = to.shutdown(Shutdown::Both);
                let _ = from.shutdown(Shutdown::Both);
                break;
            }
            // Stall: keep reading (and dropping) until the peer leaves.
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    stop.store(true, Ordering::Relaxed);
}

/// A proxy in front of `server`; returns its address and the connections
/// it took.
pub fn proxy(server: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let taken = count.clone();
    std::thread::spawn(move || {
        for (k, device) in listener.incoming().enumerate() {
            let Ok(device) = device else { continue };
            taken.store(k + 1, Ordering::Relaxed);
            let Ok(upstream) = TcpStream::connect(server) else {
                continue;
            };
            let _ = device.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            let stop = Arc::new(AtomicBool::new(false));
            let (d2, u2, s2) = (
                device.try_clone().unwrap(),
                upstream.try_clone().unwrap(),
                stop.clone(),
            );
            std::thread::spawn(move || pump(d2, u2, mode(k, true), s2));
            std::thread::spawn(move || pump(upstream, device, mode(k, false), stop));
        }
    });
    (addr, count)
}

/// How many of the first `opened` connections the proxy broke (cut or
/// stalled in either direction).
pub fn broken(opened: usize) -> usize {
    (0..opened)
        .filter(|&k| {
            [mode(k, true), mode(k, false)]
                .iter()
                .any(|m| !matches!(m, Mode::Split(_)))
        })
        .count()
}

/// What both adapters' runs through the proxy must show: each of `tasks`
/// ran once and nothing else ran (`executed`); through the `opened`
/// connections, a connection that only splits never failed a sync (at
/// most one failure per connection the proxy broke); and the proxy's cuts
/// were met and seen as the end of the stream (`Closed`), not waited out.
pub fn check(
    tasks: &[mdm_sync::wire::TaskId],
    executed: &[mdm_sync::wire::TaskId],
    opened: usize,
    failed: &[mdm_sync::device::SessionError],
) {
    for t in tasks {
        let runs = executed.iter().filter(|e| *e == t).count();
        assert_eq!(runs, 1, "{t:?} ran {runs} times");
    }
    assert_eq!(executed.len(), tasks.len());
    assert!(opened > 6, "only {opened} connections");
    let broken = broken(opened);
    assert!(
        failed.len() <= broken,
        "{} syncs failed through {opened} connections, {broken} broken: {failed:?}",
        failed.len()
    );
    assert!(
        failed.contains(&mdm_sync::device::SessionError::Closed),
        "through {opened} connections, failures {failed:?}"
    );
}
