//! The first burst of a session (`Welcome`, the tasks offered, a policy,
//! `SyncEnd`) through the tokio adapter, on 127.0.0.1.
//!
//! Since 4246d9c the engine exempts that burst from
//! `ServerConfig::max_pending_out`: `max_pending_out`'s docs say "even a
//! bound of 0 lets every session's work out", and PROTOCOL.md 11.2 that
//! "a low value never keeps a device's work from going out". The tokio
//! adapter has a bound of its own on each connection's output,
//! `Builder::connection_capacity` × 16 KiB, and the engine's output is
//! moved into it all at once, before the connection's writer can take any:
//! a burst larger than that closes the connection as too slow in every
//! session that has one, before its `SyncEnd` (the device gets the first
//! 16 KiB of it and its sync fails; the close, a dropped connection with
//! tasks open, pushes it back). Here 1,500 queued tasks (about 18 KB of
//! frames) against the smallest capacity the builder allows (1: 16 KiB),
//! with `max_open_tasks` raised to hold them: before a fix the device read
//! 16,411 bytes, 1,187 tasks and no `SyncEnd`.
//!
//! Expected, as the engine's docs promise: the whole burst reaches the
//! device, up to its `SyncEnd`. The same run at the default capacity
//! (512 KiB) shows the client itself reads a whole burst.

use core::time::Duration as Wall;
use std::io::{Read, Write};
use std::net::TcpStream;

use mdm_sync::adapters::clock::ScaledClock;
use mdm_sync::adapters::tokio::{serve, Builder};
use mdm_sync::server::{MemoryStore, Server, ServerConfig};
use mdm_sync::wire::{self, frame, DeviceId, Down, Hello, Platform, SyncTrigger, TaskKind, Up};

const DEV: DeviceId = DeviceId(5);
const TASKS: usize = 1_500;

/// What the device read in its session: tasks offered, and whether the
/// burst's `SyncEnd` came.
#[derive(Debug, Default)]
struct Got {
    tasks: usize,
    sync_end: bool,
    bytes: usize,
}

/// A handshake by hand over `sock`, then everything the server sends until
/// it closes or falls silent for a while.
fn session(mut sock: TcpStream, secret: &[u8; 32]) -> Got {
    sock.set_read_timeout(Some(Wall::from_secs(3))).unwrap();
    let mut buf = [0u8; 600];
    let hello = Up::Hello(Hello {
        version: wire::PROTOCOL_VERSION,
        attempt: 1,
        device: DEV,
        generation: 0,
        platform: Platform::Android,
        push_token: heapless::String::new(),
        trigger: SyncTrigger::Manual,
        last_task_seq: 0,
        policy_version: 0,
    });
    let n = frame::encode(&hello, &mut buf).unwrap();
    let binding = mdm_sync::auth::bind_hello(frame::payload(&buf[..n]));
    sock.write_all(&buf[..n]).unwrap();
    let mut dec = wire::FrameDecoder::<{ wire::MAX_FRAME }>::new();
    let mut got = Got::default();
    let mut rx = vec![0u8; 4096];
    let mut key = None;
    loop {
        let n = match sock.read(&mut rx) {
            Ok(0) | Err(_) => return got,
            Ok(n) => n,
        };
        got.bytes += n;
        let mut rest = &rx[..n];
        while !rest.is_empty() {
            let k = dec.push(rest);
            rest = &rest[k..];
            while let Some(p) = dec.decode() {
                let Ok(payload) = p else { continue };
                match wire::decode::<Down>(payload).unwrap() {
                    Down::Challenge { nonce, .. } if key.is_none() => {
                        let proof = Up::Proof {
                            mac: mdm_sync::auth::proof(secret, &nonce, &binding),
                        };
                        let session = frame::session_key(&nonce);
                        let m = frame::encode_keyed(&proof, &mut buf, session).unwrap();
                        sock.write_all(&buf[..m]).unwrap();
                        dec.set_key(session);
                        key = Some(session);
                    }
                    Down::Task(_) => got.tasks += 1,
                    Down::SyncEnd => {
                        got.sync_end = true;
                        return got;
                    }
                    _ => {}
                }
            }
        }
    }
}

/// One device with `TASKS` tasks queued syncs once with a tokio server
/// whose connections hold `capacity` × 16 KiB of output.
fn first_sync(capacity: Option<usize>) -> Got {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cfg = ServerConfig {
            max_open_tasks: 2 * TASKS,
            ..ServerConfig::default()
        };
        let server = Server::new(cfg, MemoryStore::new(), [6; 32], [7; 32]);
        let push = |_: DeviceId, _: Platform, _: &str| Ok(());
        let mut builder = Builder::new(server, push).clock(ScaledClock::new());
        if let Some(c) = capacity {
            builder = builder.connection_capacity(c);
        }
        let (handle, _engine) = builder.spawn();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, handle.clone()));
        let secret = handle.enroll(DEV).await.unwrap();
        for _ in 0..TASKS {
            handle
                .enqueue_task(DEV, TaskKind::Lock, Default::default())
                .await
                .unwrap();
        }
        tokio::task::spawn_blocking(move || session(TcpStream::connect(addr).unwrap(), &secret))
            .await
            .unwrap()
    })
}

#[test]
fn a_first_burst_larger_than_the_connection_capacity_still_goes_out() {
    let control = first_sync(None);
    assert!(
        control.sync_end && control.tasks == TASKS,
        "default capacity: {control:?}"
    );
    let small = first_sync(Some(1));
    assert!(
        small.sync_end && small.tasks == TASKS,
        "connection_capacity(1): the burst was cut off after {} bytes, {} of {TASKS} tasks, no SyncEnd ({small:?})",
        small.bytes,
        small.tasks
    );
}
