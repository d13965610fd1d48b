//! Version 4 handshakes (authentication unchanged in version 5) against the
//! server, hostile cases: a version-3 device, proofs with the wrong secret, generation, nonce or `Hello`, and
//! replays across sessions.

mod common;

use mdm_sync::auth;
use mdm_sync::server::{MemoryStore, PeerError, Server, ServerConfig, ServerError};
use mdm_sync::time::Instant;
use mdm_sync::wire::{
    self, frame, DeviceId, Down, ErrorCode, Hello, Platform, SyncTrigger, Up, PROTOCOL_VERSION,
};

const NOW: Instant = Instant::from_millis(77);

fn server() -> Server<MemoryStore> {
    Server::new(
        ServerConfig::default(),
        MemoryStore::new(),
        [3; 32],
        [4; 32],
    )
}

fn hello(id: u64, version: u16, generation: u32, token: &str) -> Up {
    Up::Hello(Hello {
        version,
        attempt: 7,
        device: DeviceId(id),
        generation,
        platform: Platform::Ios,
        push_token: heapless::String::try_from(token).unwrap(),
        trigger: SyncTrigger::Manual,
        last_task_seq: 0,
        policy_version: 0,
    })
}

fn out(s: &mut Server<MemoryStore>, conn: mdm_sync::server::ConnId, key: u32) -> Vec<Down> {
    let mut buf = [0u8; 4096];
    let mut bytes = Vec::new();
    while let Some(n) = s.poll_transmit_for(conn, &mut buf) {
        bytes.extend_from_slice(&buf[..n]);
    }
    let mut dec = wire::FrameDecoder::<600>::new();
    dec.set_key(key);
    let mut v = Vec::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let k = dec.push(rest);
        rest = &rest[k..];
        while let Some(f) = dec.decode() {
            if let Ok(p) = f {
                v.push(wire::decode::<Down>(p).unwrap());
            }
        }
    }
    v
}

/// Sends `hello`; returns the connection, the binding of the hello's payload and the
/// challenge's nonce.
fn challenged(
    s: &mut Server<MemoryStore>,
    hello: &Up,
) -> (mdm_sync::server::ConnId, auth::HelloBinding, [u8; 16]) {
    let conn = s.connection_opened(NOW).unwrap();
    let mut buf = [0u8; 600];
    let n = frame::encode(hello, &mut buf).unwrap();
    let hash = auth::bind_hello(frame::payload(&buf[..n]));
    s.handle_bytes(conn, &buf[..n], NOW).unwrap();
    let Down::Challenge { nonce, version, .. } = out(s, conn, 0)[0] else {
        panic!("no challenge")
    };
    assert_eq!(version, PROTOCOL_VERSION);
    (conn, hash, nonce)
}

fn prove(
    s: &mut Server<MemoryStore>,
    conn: mdm_sync::server::ConnId,
    nonce: &[u8; 16],
    mac: [u8; 32],
) -> Result<(), ServerError<mdm_sync::server::MemoryStoreError>> {
    let mut buf = [0u8; 600];
    let key = frame::session_key(nonce);
    let n = frame::encode_keyed(&Up::Proof { mac }, &mut buf, key).unwrap();
    s.handle_bytes(conn, &buf[..n], NOW)
}

const AUTH_FAILED: Result<(), ServerError<mdm_sync::server::MemoryStoreError>> =
    Err(ServerError::Peer(PeerError::AuthFailed));

/// A version-3 device (its `Hello` is version 4's layout with version 3) of
/// an enrolled device gets `VersionMismatch { supported: PROTOCOL_VERSION }`,
/// no challenge.
#[test]
fn a_version_3_device_gets_a_version_error() {
    let mut s = server();
    s.enroll(DeviceId(5), NOW).unwrap();
    let conn = s.connection_opened(NOW).unwrap();
    let mut buf = [0u8; 600];
    let n = frame::encode(&hello(5, 3, 0, "t"), &mut buf).unwrap();
    let r = s.handle_bytes(conn, &buf[..n], NOW);
    assert_eq!(
        r,
        Err(ServerError::Peer(PeerError::VersionMismatch { device: 3 }))
    );
    assert_eq!(
        out(&mut s, conn, 0),
        vec![Down::Error(ErrorCode::VersionMismatch {
            supported: PROTOCOL_VERSION
        })]
    );
}

/// Wrong secret, generation, nonce or `Hello`: each fails; the right one
/// passes; a proof replayed in a later session with the same `Hello` fails.
#[test]
fn wrong_inputs_and_replays_fail() {
    let mut s = server();
    let id = DeviceId(0xFFFF_FFFF_FFFF_FFFF);
    let g0 = s.enroll(id, NOW).unwrap();
    let g1 = s.enroll(id, NOW).unwrap(); // now generation 1
    assert_eq!(g1, auth::derive_secret(&[3; 32], id, 1));
    let h1 = hello(id.0, PROTOCOL_VERSION, 1, "tok");
    let h0 = hello(id.0, PROTOCOL_VERSION, 0, "tok");

    // The old generation's secret, in either generation's Hello.
    for (h, secret) in [(&h0, g0), (&h1, g0), (&h0, g1)] {
        let (conn, hash, nonce) = challenged(&mut s, h);
        assert_eq!(
            prove(&mut s, conn, &nonce, auth::proof(&secret, &nonce, &hash)),
            AUTH_FAILED
        );
    }
    // Another nonce, another Hello's hash.
    let (conn, hash, nonce) = challenged(&mut s, &h1);
    let mut other = nonce;
    other[15] ^= 1;
    assert_eq!(
        prove(&mut s, conn, &nonce, auth::proof(&g1, &other, &hash)),
        AUTH_FAILED
    );
    let (conn, _, nonce) = challenged(&mut s, &h1);
    let mut buf = [0u8; 600];
    let n = frame::encode(&hello(id.0, PROTOCOL_VERSION, 1, "tol"), &mut buf).unwrap();
    let wrong = auth::bind_hello(frame::payload(&buf[..n]));
    assert_eq!(
        prove(&mut s, conn, &nonce, auth::proof(&g1, &nonce, &wrong)),
        AUTH_FAILED
    );

    // The right proof passes; replayed in the next session, it fails.
    let (conn, hash, nonce) = challenged(&mut s, &h1);
    let good = auth::proof(&g1, &nonce, &hash);
    assert_eq!(prove(&mut s, conn, &nonce, good), Ok(()));
    s.connection_closed(conn, NOW);
    let (conn, _, nonce2) = challenged(&mut s, &h1);
    assert_ne!(nonce, nonce2);
    // (Sent with the new session's key, so that only the proof is stale.)
    assert_eq!(prove(&mut s, conn, &nonce2, good), AUTH_FAILED);
}

/// A v4 device answers nothing to a version-3 challenge (version 4's layout
/// with version 3) and reports the server's version.
#[test]
fn a_device_rejects_a_version_3_challenge() {
    use mdm_sync::device::{Device, DeviceConfig, DeviceError, ProtocolError, SessionError};
    let cfg = DeviceConfig::new(DeviceId(1), 0, [1; 32], Platform::Ios);
    let mut d: Device = Device::new(cfg, NOW);
    d.handle_timeout(NOW);
    while d.poll_event().is_some() {}
    d.connected(NOW);
    let mut buf = [0u8; 600];
    assert!(d.poll_transmit(&mut buf).unwrap().is_some());
    // Whatever attempt the device sent, its version is checked first.
    for attempt in [1u64 << 32 | 1, 1, 2 << 32 | 1] {
        let mut p = [0u8; 64];
        let n = wire::encode_payload(
            &Down::Challenge {
                version: 3,
                attempt,
                nonce: [0; 16],
            },
            &mut p,
        )
        .unwrap();
        let r = d.handle_bytes(&common::raw_frame(&p[..n], 0), NOW);
        if let Err(e) = r {
            let want = SessionError::Protocol(ProtocolError::VersionMismatch { server: 3 });
            assert_eq!(e, DeviceError::Session(want));
            assert!(
                d.poll_transmit(&mut buf).unwrap().is_none(),
                "no proof sent"
            );
            return;
        }
    }
    panic!("a version-3 challenge was not refused");
}
