//! The tokio server adapter while the engine's input channel is full: every
//! message waiting is handled, and a connection whose input waits its turn
//! still gets what the engine sends it (on 127.0.0.1).
#![cfg(feature = "tokio")]

use core::time::Duration as Wall;

use mdm_sync::adapters::tokio::{serve, Builder, ServerHandle};
use mdm_sync::server::{MemoryStore, Server, ServerConfig};
use mdm_sync::time::Instant;
use mdm_sync::wire;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A runtime with three workers (`block_in_place` needs more than one).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(3)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `scenario` on `rt` for at most 30 s.
fn within_30s<F: core::future::Future>(
    rt: &tokio::runtime::Runtime,
    scenario: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    rt.block_on(async { tokio::time::timeout(Wall::from_secs(30), scenario).await })
}

/// A server with no device yet.
fn server() -> Server<MemoryStore> {
    Server::new(
        ServerConfig::default(),
        MemoryStore::new(),
        [7; 32],
        [8; 32],
    )
}

/// Polls `f` every 20 ms until it holds; false if it never did in 10 s.
async fn eventually<F, Fut>(mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: core::future::Future<Output = bool>,
{
    for _ in 0..500 {
        if f().await {
            return true;
        }
        tokio::time::sleep(Wall::from_millis(20)).await;
    }
    false
}

/// Holds the engine on a blocking operator call (as a long batch of work
/// would) until the returned sender is used or dropped; returns once the
/// engine is held.
async fn hold_engine(
    handle: &ServerHandle<MemoryStore>,
) -> (std::sync::mpsc::Sender<()>, tokio::task::JoinHandle<()>) {
    let (held, is_held) = tokio::sync::oneshot::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let handle = handle.clone();
    let hold = tokio::spawn(async move {
        let call = move |_: &mut Server<MemoryStore>, _: Instant| {
            let _ = held.send(());
            let _ = tokio::task::block_in_place(|| released.recv());
        };
        handle.call(call).await.unwrap();
    });
    is_held.await.unwrap();
    (release, hold)
}

/// A `Hello` of a protocol version no server speaks: the server answers with
/// `VersionMismatch` (frozen across versions) and closes the connection.
fn foreign_hello() -> Vec<u8> {
    let mut hello = vec![0xA5, 0x5A, 5, 0, 0x00, 0x09, 0xFF, 0xFF, 0xFF];
    let crc = wire::crc32(&hello[2..]);
    hello.extend_from_slice(&crc.to_le_bytes());
    hello
}

/// A connection's answer goes out while the connection's next input waits
/// for room in the engine's input channel. The engine is held while its
/// queue is lined up: a peer's first message, other traffic (more than a
/// batch, so the answer is flushed before what follows), an operator call
/// that waits until the peer has its answer, one more call, and last the
/// peer's next message. Were the connection's writer to wait for its
/// reader, the answer would stay queued until after the call, which would
/// give up after 5 s.
#[test]
fn a_peer_is_answered_while_its_next_input_waits_for_room() {
    use tokio::io::AsyncReadExt;

    let scenario = async {
        let (handle, engine) = Builder::new(server(), |_, _, _: &str| Ok(()))
            .channel_capacity(1)
            .spawn();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, handle.clone()));
        let (mut peer_rd, mut peer_wr) = TcpStream::connect(addr).await.unwrap().into_split();
        let attached =
            eventually(|| async { handle.call(|s, _| s.session_count()).await.unwrap() == 1 })
                .await;
        assert!(attached);
        let (answered_tx, answered) = std::sync::mpsc::channel();
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            if peer_rd.read(&mut buf).await.is_ok_and(|n| n > 0) {
                let _ = answered_tx.send(());
            }
        });

        // Each step is given time to queue up (ordering only: nothing is timed).
        let settle = || tokio::time::sleep(Wall::from_millis(50));
        let (release, hold) = hold_engine(&handle).await;
        peer_wr.write_all(&foreign_hello()).await.unwrap();
        settle().await;
        let mut others = tokio::task::JoinSet::new();
        for _ in 0..300 {
            let handle = handle.clone();
            others.spawn(async move { handle.call(|_, _| ()).await });
        }
        settle().await;
        let waiter = tokio::spawn({
            let handle = handle.clone();
            async move {
                let wait = move |_: &mut Server<MemoryStore>, _: Instant| {
                    let limit = Wall::from_secs(5);
                    tokio::task::block_in_place(|| answered.recv_timeout(limit).is_ok())
                };
                handle.call(wait).await.unwrap()
            }
        });
        // Taking the call off the queue makes room for one more message:
        // this one, not the peer's.
        others.spawn({
            let handle = handle.clone();
            async move { handle.call(|_, _| ()).await }
        });
        settle().await;
        peer_wr.write_all(&foreign_hello()).await.unwrap();
        settle().await;
        release.send(()).unwrap();
        hold.await.unwrap();
        let answered_in_time = waiter.await.unwrap();
        while let Some(call) = others.join_next().await {
            call.unwrap().unwrap();
        }
        assert!(
            answered_in_time,
            "the peer's answer waited for its own next input"
        );
        handle.shutdown().await;
        let _ = engine.await.unwrap();
    };
    within_30s(&runtime(), scenario).expect("took longer than 30 s");
}

/// Every message waiting in the engine's channel is handled, however many
/// wait: the engine takes them in batches, and no message may be taken off
/// the channel at the end of a batch and then dropped (a dropped call fails
/// with `Stopped`; a dropped `Open` would end `serve`).
#[test]
fn a_full_channel_loses_no_message() {
    let scenario = async {
        let (handle, engine) = Builder::new(server(), |_, _, _: &str| Ok(())).spawn();
        let (release, hold) = hold_engine(&handle).await;
        // More than a batch (256) of calls waits in the channel (1024).
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..600u32 {
            let handle = handle.clone();
            calls.spawn(async move { handle.call(move |_, _| i).await });
        }
        tokio::time::sleep(Wall::from_millis(100)).await; // ordering only
        release.send(()).unwrap();
        hold.await.unwrap();
        let mut lost = 0;
        while let Some(call) = calls.join_next().await {
            lost += usize::from(call.unwrap().is_err());
        }
        assert_eq!(lost, 0, "calls lost between batches");
        handle.shutdown().await;
        let _ = engine.await.unwrap();
    };
    within_30s(&runtime(), scenario).expect("took longer than 30 s");
}
