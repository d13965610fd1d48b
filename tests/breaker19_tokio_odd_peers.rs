//! Odd peers against the tokio server adapter on 127.0.0.1: a `Hello` that
//! arrives a byte at a time, a proof that stalls in the middle of its frame,
//! and a peer that goes on sending after the server's `Error`. The engine must answer what it can,
//! time out what stalls (closing the socket, not only the session), and hold
//! no session afterwards. Every wait is bounded by a generous guard that
//! only turns a hang into a failure; nothing measures speed.
#![cfg(feature = "tokio")]

use core::time::Duration as Wall;

use mdm_sync::adapters::clock::ScaledClock;
use mdm_sync::adapters::tokio::{serve, Builder, ServerHandle};
use mdm_sync::server::{MemoryStore, Server, ServerConfig};
use mdm_sync::wire::{
    self, frame, DeviceId, Down, ErrorCode, FrameDecoder, Hello, Platform, SyncTrigger, Up,
    MAX_FRAME,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const DEV: DeviceId = DeviceId(9);
const GUARD: Wall = Wall::from_secs(10);

async fn start(
    scale: f64,
) -> (
    ServerHandle<MemoryStore>,
    core::net::SocketAddr,
    mdm_sync::auth::Secret,
) {
    let mut server = Server::new(
        ServerConfig::default(),
        MemoryStore::new(),
        [7; 32],
        [8; 32],
    );
    let secret = server.enroll(DEV, mdm_sync::time::Instant::ZERO).unwrap();
    let (handle, _engine) = Builder::new(server, |_, _, _: &str| Ok(()))
        .clock(ScaledClock::scaled(scale))
        .spawn();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, handle.clone()));
    (handle, addr, secret)
}

fn hello(version: u16) -> (Vec<u8>, mdm_sync::auth::HelloBinding) {
    let msg = Up::Hello(Hello {
        version,
        attempt: 1,
        device: DEV,
        generation: 0,
        platform: Platform::Android,
        push_token: heapless::String::try_from("t").unwrap(),
        trigger: SyncTrigger::Manual,
        last_task_seq: 0,
        policy_version: 0,
    });
    let mut buf = [0u8; MAX_FRAME];
    let n = frame::encode(&msg, &mut buf).unwrap();
    let hash = mdm_sync::auth::bind_hello(frame::payload(&buf[..n]));
    (buf[..n].to_vec(), hash)
}

/// Everything the server sends until it closes the connection (or resets
/// it), decoded with `key` once a `Challenge` gives one.
async fn read_to_end(stream: &mut TcpStream, dec: &mut FrameDecoder<MAX_FRAME>) -> Vec<Down> {
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        while let Some(f) = dec.decode() {
            out.push(wire::decode::<Down>(f.unwrap()).unwrap());
        }
        let n = match tokio::time::timeout(GUARD, stream.read(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) => 0, // reset: closed too
            Err(_) => panic!("the server never closed the connection; read {out:?}"),
        };
        if n == 0 {
            return out;
        }
        let mut part = &buf[..n];
        while !part.is_empty() {
            let used = dec.push(part);
            part = &part[used..];
            while let Some(f) = dec.decode() {
                out.push(wire::decode::<Down>(f.unwrap()).unwrap());
            }
        }
    }
}

async fn first_down(stream: &mut TcpStream, dec: &mut FrameDecoder<MAX_FRAME>) -> Down {
    let mut buf = [0u8; 512];
    loop {
        if let Some(f) = dec.decode() {
            return wire::decode::<Down>(f.unwrap()).unwrap();
        }
        let n = tokio::time::timeout(GUARD, stream.read(&mut buf))
            .await
            .expect("no answer")
            .unwrap();
        assert!(n > 0, "closed without an answer");
        let mut part = &buf[..n];
        while !part.is_empty() {
            let used = dec.push(part);
            part = &part[used..];
        }
    }
}

async fn no_sessions_left(handle: &ServerHandle<MemoryStore>) {
    for _ in 0..500 {
        if handle.call(|s, _| s.session_count()).await.unwrap() == 0 {
            return;
        }
        tokio::time::sleep(Wall::from_millis(10)).await;
    }
    panic!("a session is still open");
}

/// A `Hello` a byte per write is answered; the proof that follows stalls
/// after half its frame, and the handshake timeout (30 ms of wall time at
/// 1000x) ends the session and closes the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_hello_is_answered_and_a_stalled_proof_is_cut_off() {
    let (handle, addr, secret) = start(1000.0).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (bytes, hash) = hello(wire::PROTOCOL_VERSION);
    for b in &bytes {
        s.write_all(core::slice::from_ref(b)).await.unwrap();
        tokio::task::yield_now().await;
    }
    let mut dec = FrameDecoder::<MAX_FRAME>::new();
    let Down::Challenge { nonce, .. } = first_down(&mut s, &mut dec).await else {
        panic!("no challenge");
    };
    let key = frame::session_key(&nonce);
    dec.set_key(key);
    let proof = Up::Proof {
        mac: mdm_sync::auth::proof(&secret, &nonce, &hash),
    };
    let mut buf = [0u8; MAX_FRAME];
    let n = frame::encode_keyed(&proof, &mut buf, key).unwrap();
    s.write_all(&buf[..n / 2]).await.unwrap();
    // Silent from here on: the engine's timer, driven by the adapter, must
    // end the session and the adapter must close the socket.
    let rest = read_to_end(&mut s, &mut dec).await;
    assert!(rest.iter().all(|d| matches!(d, Down::Error(_))), "{rest:?}");
    no_sessions_left(&handle).await;
    handle.shutdown().await;
}

/// A peer told `VersionMismatch` that goes on sending (garbage and whole
/// `Hello`s): the server closes anyway, answers no second `Hello`, and
/// holds no session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_an_error_get_no_answer_and_the_connection_ends() {
    let (handle, addr, _) = start(1.0).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let (bad, _) = hello(wire::PROTOCOL_VERSION.wrapping_add(7));
    let (good, _) = hello(wire::PROTOCOL_VERSION);
    s.write_all(&bad).await.unwrap();
    let mut dec = FrameDecoder::<MAX_FRAME>::new();
    let first = first_down(&mut s, &mut dec).await;
    assert!(
        matches!(first, Down::Error(ErrorCode::VersionMismatch { .. })),
        "{first:?}"
    );
    // Keep writing; the writes fail once the server's close arrives.
    for _ in 0..50 {
        if s.write_all(&[0xAA; 64]).await.is_err() || s.write_all(&good).await.is_err() {
            break;
        }
        tokio::task::yield_now().await;
    }
    let rest = read_to_end(&mut s, &mut dec).await;
    assert!(
        !rest.iter().any(|d| matches!(d, Down::Challenge { .. })),
        "a Hello after the Error was answered: {rest:?}"
    );
    no_sessions_left(&handle).await;
    handle.shutdown().await;
}
