//! The tokio server adapter when a device's connection breaks in the middle
//! of its session (a reset): the task the session had offered may never have
//! reached the device, which, its link gone and nothing of its own pending,
//! would wait for its periodic sync (3 h). The adapter tells the engine the
//! link broke, and the engine asks the device back with a push. A clean close
//! (the device's end of input) asks for one only if a task went out after
//! the session's `SyncEnd` and the device did not report on it (its close
//! may have crossed the offer); after a report, none. And a device retired
//! in the middle of its session is cut off there. Loopback only.
#![cfg(feature = "tokio")]

use core::time::Duration as Wall;
use std::sync::{Arc, Mutex};

use mdm_sync::adapters::tokio::{serve, Builder, ServerHandle};
use mdm_sync::server::{MemoryStore, Server, ServerConfig, TaskState};
use mdm_sync::wire::{
    self, frame, DeviceId, Down, FrameDecoder, Hello, Platform, SyncTrigger, TaskKind, Up,
    MAX_FRAME,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DEV: DeviceId = DeviceId(5);

/// Reads from `stream` until one whole frame decodes; its message.
async fn next_down(stream: &mut TcpStream, dec: &mut FrameDecoder<MAX_FRAME>) -> Down {
    let mut buf = [0u8; 1024];
    loop {
        if let Some(frame) = dec.decode() {
            return wire::decode::<Down>(frame.unwrap()).unwrap();
        }
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "the server closed the connection");
        let mut part = &buf[..n];
        while !part.is_empty() {
            let used = dec.push(part);
            part = &part[used..];
            if used == 0 {
                break;
            }
        }
    }
}

/// Connects to `addr` as `DEV` and runs the handshake by hand; returns the
/// socket, its decoder (keyed for the session), the server's answer to the
/// proof and the session key.
async fn handshake(
    addr: core::net::SocketAddr,
    secret: &[u8; 32],
    attempt: u64,
) -> (TcpStream, FrameDecoder<MAX_FRAME>, Down, u32) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut dec = FrameDecoder::<MAX_FRAME>::new();
    let hello = Up::Hello(Hello {
        version: wire::PROTOCOL_VERSION,
        attempt,
        device: DEV,
        generation: 0,
        platform: Platform::Android,
        push_token: heapless::String::try_from("token-5").unwrap(),
        trigger: SyncTrigger::Boot,
        last_task_seq: 0,
        policy_version: 0,
    });
    let mut buf = [0u8; MAX_FRAME];
    let n = frame::encode(&hello, &mut buf).unwrap();
    let hash = mdm_sync::auth::bind_hello(frame::payload(&buf[..n]));
    stream.write_all(&buf[..n]).await.unwrap();
    let Down::Challenge { nonce, .. } = next_down(&mut stream, &mut dec).await else {
        panic!("no challenge");
    };
    let key = frame::session_key(&nonce);
    dec.set_key(key);
    let proof = Up::Proof {
        mac: mdm_sync::auth::proof(secret, &nonce, &hash),
    };
    let n = frame::encode_keyed(&proof, &mut buf, key).unwrap();
    stream.write_all(&buf[..n]).await.unwrap();
    let answer = next_down(&mut stream, &mut dec).await;
    (stream, dec, answer, key)
}

/// Sends `msg` framed with the session key `key`.
async fn send_up(stream: &mut TcpStream, key: u32, msg: &Up) {
    let mut buf = [0u8; MAX_FRAME];
    let n = frame::encode_keyed(msg, &mut buf, key).unwrap();
    stream.write_all(&buf[..n]).await.unwrap();
}

/// As `handshake`, for a device that is let in: after the `Welcome`.
async fn in_session(
    addr: core::net::SocketAddr,
    secret: &[u8; 32],
) -> (TcpStream, FrameDecoder<MAX_FRAME>, u32) {
    let (stream, dec, welcome, key) = handshake(addr, secret, 1).await;
    assert!(matches!(welcome, Down::Welcome { .. }), "{welcome:?}");
    (stream, dec, key)
}

async fn session_count(handle: &ServerHandle<MemoryStore>) -> usize {
    handle.call(|s, _| s.session_count()).await.unwrap()
}

/// A server on a loopback port with `DEV` enrolled and in session over
/// TCP, a task just offered to it in the session.
struct Offered {
    handle: ServerHandle<MemoryStore>,
    addr: core::net::SocketAddr,
    secret: [u8; 32],
    /// Pushes sent to `DEV`.
    pushes: Arc<Mutex<usize>>,
    stream: TcpStream,
    dec: FrameDecoder<MAX_FRAME>,
    key: u32,
    task: wire::TaskId,
}

async fn offered() -> Offered {
    let pushes = Arc::new(Mutex::new(0usize));
    let server = Server::new(
        ServerConfig::default(),
        MemoryStore::new(),
        [3; 32],
        [4; 32],
    );
    let counted = pushes.clone();
    let (handle, _engine) = Builder::new(server, move |d: DeviceId, _, _: &str| {
        if d == DEV {
            *counted.lock().unwrap() += 1;
        }
        Ok(())
    })
    .spawn();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, handle.clone()));
    let secret = handle.enroll(DEV).await.unwrap();

    let (mut stream, mut dec, key) = in_session(addr, &secret).await;
    let task = handle
        .enqueue_task(DEV, TaskKind::Lock, Default::default())
        .await
        .unwrap();
    // The task goes out in the session (after the boot sync's end): no push.
    loop {
        match next_down(&mut stream, &mut dec).await {
            Down::Task(_) => break,
            Down::SyncEnd | Down::Policy(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(*pushes.lock().unwrap(), 0);
    Offered {
        handle,
        addr,
        secret,
        pushes,
        stream,
        dec,
        key,
        task,
    }
}

/// Runs one session that is offered a task (after its `SyncEnd`), reports
/// on it first if `report`, and then ends as `reset` says; returns the
/// pushes the device got.
async fn offered_then_closed(report: bool, reset: bool) -> usize {
    let Offered {
        handle,
        pushes,
        mut stream,
        mut dec,
        key,
        task,
        ..
    } = offered().await;

    if report {
        let received = Up::Report {
            seq: 1,
            body: wire::ReportBody::Task {
                task,
                status: wire::TaskStatus::Received,
            },
        };
        send_up(&mut stream, key, &received).await;
        assert!(matches!(
            next_down(&mut stream, &mut dec).await,
            Down::Ack { seq: 1 }
        ));
    }
    if reset {
        // A reset: the read on the server's side fails.
        stream.set_zero_linger().unwrap();
    }
    drop(stream);
    let mut closed = false;
    for _ in 0..500 {
        if session_count(&handle).await == 0 {
            closed = true;
            break;
        }
        tokio::time::sleep(Wall::from_millis(10)).await;
    }
    assert!(closed, "the server never saw the connection close");
    let state = handle.task(task).await.unwrap().map(|t| t.state);
    assert!(
        matches!(state, Some(TaskState::Offered | TaskState::Delivered)),
        "{state:?}"
    );
    // The push, if any, went out in the same turn as the close.
    let n = *pushes.lock().unwrap();
    handle.shutdown().await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_link_or_a_clean_close_over_an_unreported_late_offer_gets_a_push() {
    let both = async {
        assert_eq!(offered_then_closed(false, true).await, 1, "reset");
        assert_eq!(
            offered_then_closed(true, true).await,
            1,
            "reset after a report"
        );
        // The close may have crossed the offer: the device is asked back.
        assert_eq!(offered_then_closed(false, false).await, 1, "clean close");
        // It reported on the task: it had it, no push.
        assert_eq!(
            offered_then_closed(true, false).await,
            0,
            "clean close after a report"
        );
    };
    tokio::time::timeout(Wall::from_secs(30), both)
        .await
        .expect("within 30 s");
}

/// A device retired through the handle while in session over TCP, a task
/// offered to it: the adapter closes its connection (the socket reads its
/// end), the task ends Dropped, no push goes to the retired device, and a
/// new connection with its old secret is refused with `AuthFailed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_retired_in_session_is_cut_off_and_refused() {
    let run = async {
        let Offered {
            handle,
            addr,
            secret,
            pushes,
            mut stream,
            task,
            ..
        } = offered().await;
        handle.retire(DEV).await.unwrap();
        // The server's end closes: the socket reads its end (or a reset).
        let mut buf = [0u8; 256];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let state = handle.task(task).await.unwrap().map(|t| t.state);
        assert_eq!(state, Some(TaskState::Dropped));
        assert_eq!(session_count(&handle).await, 0);
        assert_eq!(*pushes.lock().unwrap(), 0, "no push for a retired device");

        // Its old secret no longer authenticates.
        let (_stream, _dec, answer, _) = handshake(addr, &secret, 2).await;
        assert_eq!(answer, Down::Error(wire::ErrorCode::AuthFailed));
        handle.shutdown().await;
    };
    tokio::time::timeout(Wall::from_secs(30), run)
        .await
        .expect("within 30 s");
}
