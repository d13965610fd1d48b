//! Hostile peers against the tokio server adapter on 127.0.0.1: a connect
//! flood past the session limit, silent connections, garbage and oversized
//! frame headers, resets in the middle of a frame. Afterwards the engine must
//! still answer, hold no session, and accept new connections.
#![cfg(feature = "tokio")]

use core::time::Duration as WallDuration;

use mdm_sync::adapters::clock::ScaledClock;
use mdm_sync::adapters::tokio::{serve, Builder};
use mdm_sync::server::{MemoryStore, Server, ServerConfig};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_leave_the_engine_responsive_and_empty() {
    let cfg = ServerConfig {
        max_sessions: 64,
        ..ServerConfig::default()
    };
    let server = Server::new(cfg, MemoryStore::new(), [7; 32], [8; 32]);
    // 1000x: the 30 s handshake timeout is 30 ms of wall time.
    let (handle, engine) = Builder::new(server, |_, _, _: &str| Ok(()))
        .clock(ScaledClock::scaled(1000.0))
        .spawn();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, handle.clone()));

    let mut held = Vec::new();
    for i in 0..2000u32 {
        let Ok(mut s) = TcpStream::connect(addr).await else {
            continue;
        };
        match i % 4 {
            0 => {}
            1 => {
                let _ = s.write_all(&[0xFF; 700]).await;
            }
            2 => {
                // A frame start, then a reset in the middle of it.
                let _ = s.write_all(&[0x00, 0xFF, 0xFF, 0x7F, 1, 2, 3]).await;
                let _ = s.set_zero_linger();
                drop(s);
                continue;
            }
            _ => {
                let _ = s.shutdown().await;
            }
        }
        held.push(s);
    }
    let sessions = handle.call(|s, _| s.session_count()).await.unwrap();
    assert!(sessions <= 64, "{sessions} sessions over a limit of 64");
    // Silent peers are timed out by the engine; they keep their sockets.
    let mut left = usize::MAX;
    for _ in 0..200 {
        tokio::time::sleep(WallDuration::from_millis(50)).await;
        left = handle.call(|s, _| s.session_count()).await.unwrap();
        if left == 0 {
            break;
        }
    }
    assert_eq!(left, 0, "sessions of timed-out peers still open");
    // New connections are accepted again.
    let _fresh = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(WallDuration::from_millis(20)).await;
    let after = handle.call(|s, _| s.session_count()).await.unwrap();
    assert!(after <= 1);
    drop(held);
    handle.shutdown().await;
    let _ = engine.await.unwrap();
}
