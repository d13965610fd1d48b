//! Identity: wrong, replayed or foreign proofs fail and reveal nothing; a
//! version mismatch gets a clear error frame, not a hang.

use mdm_sync::device::{Device, DeviceConfig, DeviceError, Event, ProtocolError, SessionError};
use mdm_sync::server::{MemoryStore, PeerError, Server, ServerConfig, ServerError, ServerEvent};
use mdm_sync::time::Instant;
use mdm_sync::wire::{self, frame, DeviceId, Down, ErrorCode, Hello, Platform, SyncTrigger, Up};

const NOW: Instant = Instant::from_millis(5);

fn server() -> Server<MemoryStore> {
    Server::new(
        ServerConfig::default(),
        MemoryStore::new(),
        [9; 32],
        [8; 32],
    )
}

fn hello(id: u64, version: u16) -> Up {
    Up::Hello(Hello {
        version,
        device: DeviceId(id),
        generation: 0,
        platform: Platform::Android,
        push_token: heapless::String::new(),
        trigger: SyncTrigger::Manual,
        last_task_seq: 0,
        policy_version: 0,
    })
}

fn send(
    s: &mut Server<MemoryStore>,
    conn: mdm_sync::server::ConnId,
    msg: &Up,
) -> Result<(), ServerError<core::convert::Infallible>> {
    let mut buf = [0u8; 600];
    let n = frame::encode(msg, &mut buf).unwrap();
    s.handle_bytes(conn, &buf[..n], NOW)
}

fn replies(s: &mut Server<MemoryStore>, conn: mdm_sync::server::ConnId) -> Vec<Down> {
    let mut buf = [0u8; 4096];
    let mut out = Vec::new();
    let mut dec = wire::FrameDecoder::<600>::new();
    while let Some(n) = s.poll_transmit_for(conn, &mut buf) {
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let k = dec.push(rest);
            rest = &rest[k..];
            while let Some(Ok(p)) = dec.decode() {
                out.push(wire::decode::<Down>(p).unwrap());
            }
        }
    }
    out
}

fn nonce_of(d: &[Down]) -> [u8; 16] {
    match d {
        [Down::Challenge { nonce, .. }] => *nonce,
        other => panic!("expected a challenge, got {other:?}"),
    }
}

#[test]
fn a_wrong_proof_and_an_unknown_device_get_the_same_answer() {
    let mut s = server();
    s.enroll(DeviceId(1), NOW).unwrap();
    let mut answers = Vec::new();
    for id in [1, 2] {
        let conn = s.connection_opened(NOW).unwrap();
        send(&mut s, conn, &hello(id, wire::PROTOCOL_VERSION)).unwrap();
        let _ = replies(&mut s, conn);
        let r = send(&mut s, conn, &Up::Proof { mac: [0; 32] });
        assert_eq!(r, Err(ServerError::Peer(PeerError::AuthFailed)));
        answers.push(replies(&mut s, conn));
    }
    assert_eq!(answers[0], vec![Down::Error(ErrorCode::AuthFailed)]);
    assert_eq!(answers[0], answers[1]);
    let mut failed = 0;
    while let Some(e) = s.poll_event() {
        failed += usize::from(matches!(e, ServerEvent::AuthFailed { .. }));
    }
    assert_eq!(failed, 2);
}

#[test]
fn a_replayed_proof_fails_on_a_new_nonce() {
    let mut s = server();
    let secret = s.enroll(DeviceId(1), NOW).unwrap();
    let conn = s.connection_opened(NOW).unwrap();
    send(&mut s, conn, &hello(1, wire::PROTOCOL_VERSION)).unwrap();
    let nonce = nonce_of(&replies(&mut s, conn));
    let mac = mdm_sync::auth::proof(&secret, &nonce, DeviceId(1), 0);
    send(&mut s, conn, &Up::Proof { mac }).unwrap();
    assert!(matches!(
        replies(&mut s, conn).first(),
        Some(Down::Welcome { .. })
    ));
    // An eavesdropper replays the same proof in a new session.
    let conn2 = s.connection_opened(NOW).unwrap();
    send(&mut s, conn2, &hello(1, wire::PROTOCOL_VERSION)).unwrap();
    let nonce2 = nonce_of(&replies(&mut s, conn2));
    assert_ne!(nonce, nonce2);
    let r = send(&mut s, conn2, &Up::Proof { mac });
    assert_eq!(r, Err(ServerError::Peer(PeerError::AuthFailed)));
    // A second proof in the first session is a protocol error, not a re-auth.
    let r = send(&mut s, conn, &Up::Proof { mac });
    assert_eq!(r, Err(ServerError::Peer(PeerError::Unexpected)));
}

#[test]
fn a_device_of_another_version_gets_a_clear_error() {
    let mut s = server();
    let conn = s.connection_opened(NOW).unwrap();
    // A future Hello: version 2 and fields this version cannot parse.
    let mut payload = vec![0u8, 2];
    payload.extend_from_slice(&[0xFF; 20]);
    let mut buf = [0u8; 64];
    buf[..2].copy_from_slice(&frame::MAGIC);
    buf[2..4].copy_from_slice(&(payload.len() as u16).to_le_bytes());
    buf[4..4 + payload.len()].copy_from_slice(&payload);
    let crc = wire::crc32(&buf[2..4 + payload.len()]);
    buf[4 + payload.len()..8 + payload.len()].copy_from_slice(&crc.to_le_bytes());
    let r = s.handle_bytes(conn, &buf[..8 + payload.len()], NOW);
    assert_eq!(
        r,
        Err(ServerError::Peer(PeerError::VersionMismatch { device: 2 }))
    );
    let supported = wire::PROTOCOL_VERSION;
    assert_eq!(
        replies(&mut s, conn),
        vec![Down::Error(ErrorCode::VersionMismatch { supported })]
    );
    let closed = core::iter::from_fn(|| s.poll_event()).any(|e| e == ServerEvent::Close { conn });
    assert!(
        closed,
        "the server closes the connection after the error frame"
    );
}

#[test]
fn a_device_rejects_a_server_of_another_version() {
    let cfg = DeviceConfig::new(DeviceId(1), 0, [1; 32], Platform::Ios);
    let mut d: Device = Device::new(cfg, NOW);
    d.handle_timeout(NOW);
    assert_eq!(d.poll_event(), Some(Event::Connect));
    d.connected(NOW);
    let mut buf = [0u8; 600];
    assert!(d.poll_transmit(&mut buf).unwrap().is_some());
    let n = frame::encode(
        &Down::Challenge {
            version: 7,
            nonce: [0; 16],
        },
        &mut buf,
    )
    .unwrap();
    let err = d.handle_bytes(&buf[..n], NOW).unwrap_err();
    let want = SessionError::Protocol(ProtocolError::VersionMismatch { server: 7 });
    assert_eq!(err, DeviceError::Session(want));
    assert!(!d.is_connected());
    let events: Vec<_> = core::iter::from_fn(|| d.poll_event()).collect();
    assert!(events.contains(&Event::Disconnect));
    assert!(events.contains(&Event::SyncFailed { error: want }));
}
