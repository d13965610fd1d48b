//! Identity: wrong, replayed or foreign proofs fail and reveal nothing; the
//! proof covers the exact `Hello`; frames of one session are not taken in
//! another; a version mismatch gets a clear error frame, not a hang.

mod common;

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
        attempt: 1,
        device: DeviceId(id),
        generation: 0,
        platform: Platform::Android,
        push_token: heapless::String::new(),
        trigger: SyncTrigger::Manual,
        last_task_seq: 0,
        policy_version: 0,
    })
}

type ConnId = mdm_sync::server::ConnId;
type Answer = Result<(), ServerError<mdm_sync::server::MemoryStoreError>>;

/// `msg` as a frame with session key `key` (0 before the challenge).
fn framed(msg: &Up, key: u32) -> Vec<u8> {
    let mut buf = [0u8; 600];
    let n = frame::encode_keyed(msg, &mut buf, key).unwrap();
    buf[..n].to_vec()
}

fn send(s: &mut Server<MemoryStore>, conn: ConnId, msg: &Up) -> Answer {
    send_keyed(s, conn, msg, 0)
}

fn send_keyed(s: &mut Server<MemoryStore>, conn: ConnId, msg: &Up, key: u32) -> Answer {
    s.handle_bytes(conn, &framed(msg, key), NOW)
}

fn replies(s: &mut Server<MemoryStore>, conn: ConnId) -> Vec<Down> {
    replies_keyed(s, conn, 0)
}

/// Everything the server sent on `conn`, read with session key `key`.
fn replies_keyed(s: &mut Server<MemoryStore>, conn: ConnId, key: u32) -> Vec<Down> {
    decoded(&drained(s, conn), key)
}

/// The bytes the server has for `conn`.
fn drained(s: &mut Server<MemoryStore>, conn: ConnId) -> Vec<u8> {
    let mut buf = [0u8; 4096];
    let mut bytes = Vec::new();
    while let Some(n) = s.poll_transmit_for(conn, &mut buf) {
        bytes.extend_from_slice(&buf[..n]);
    }
    bytes
}

/// The messages in `bytes` whose frames check with session key `key`.
fn decoded(mut bytes: &[u8], key: u32) -> Vec<Down> {
    let mut out = Vec::new();
    let mut dec = wire::FrameDecoder::<600>::new();
    dec.set_key(key);
    while !bytes.is_empty() {
        let k = dec.push(bytes);
        bytes = &bytes[k..];
        while let Some(r) = dec.decode() {
            if let Ok(p) = r {
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
        let key = frame::session_key(&nonce_of(&replies(&mut s, conn)));
        let r = send_keyed(&mut s, conn, &Up::Proof { mac: [0; 32] }, key);
        assert_eq!(r, Err(ServerError::Peer(PeerError::AuthFailed)));
        answers.push(replies_keyed(&mut s, conn, key));
    }
    assert_eq!(answers[0], vec![Down::Error(ErrorCode::AuthFailed)]);
    assert_eq!(answers[0], answers[1]);
    let mut failed = 0;
    while let Some(e) = s.poll_event() {
        failed += usize::from(matches!(e, ServerEvent::AuthFailed { .. }));
    }
    assert_eq!(failed, 2);
}

/// The proof a device holding `secret` sends after `hello`, for `nonce`.
fn proof_for(secret: &[u8; 32], nonce: &[u8; 16], hello: &Up) -> Up {
    let hash = mdm_sync::auth::bind_hello(frame::payload(&framed(hello, 0)));
    Up::Proof {
        mac: mdm_sync::auth::proof(secret, nonce, &hash),
    }
}

/// Opens a session with `hello`; returns the connection and its nonce.
fn challenged(s: &mut Server<MemoryStore>, hello: &Up) -> Challenged {
    let conn = s.connection_opened(NOW).unwrap();
    send(s, conn, hello).unwrap();
    (conn, nonce_of(&replies(s, conn)))
}

#[test]
fn a_replayed_proof_fails_on_a_new_nonce() {
    let mut s = server();
    let secret = s.enroll(DeviceId(1), NOW).unwrap();
    let h = hello(1, wire::PROTOCOL_VERSION);
    let (conn, nonce) = challenged(&mut s, &h);
    let key = frame::session_key(&nonce);
    let proof = proof_for(&secret, &nonce, &h);
    send_keyed(&mut s, conn, &proof, key).unwrap();
    assert!(matches!(
        replies_keyed(&mut s, conn, key).first(),
        Some(Down::Welcome { .. })
    ));
    // An eavesdropper replays the same proof in a new session.
    let (conn2, nonce2) = challenged(&mut s, &h);
    assert_ne!(nonce, nonce2);
    let key2 = frame::session_key(&nonce2);
    let r = send_keyed(&mut s, conn2, &proof, key2);
    assert_eq!(r, Err(ServerError::Peer(PeerError::AuthFailed)));
    // A second proof in the first session is a protocol error, not a re-auth.
    let r = send_keyed(&mut s, conn, &proof, key);
    assert_eq!(r, Err(ServerError::Peer(PeerError::Unexpected)));
}

/// The proof covers the exact `Hello` bytes: a `Hello` with another task
/// ledger (replayed from an earlier session) or another push token (altered
/// on the way) fails, even with a proof made by the real secret.
#[test]
fn a_proof_covers_the_hello_it_follows() {
    let mut s = server();
    let secret = s.enroll(DeviceId(1), NOW).unwrap();
    let sent = hello(1, wire::PROTOCOL_VERSION);
    let mut old_ledger = sent.clone();
    let mut other_token = sent.clone();
    if let Up::Hello(h) = &mut old_ledger {
        h.last_task_seq = 7;
    }
    if let Up::Hello(h) = &mut other_token {
        h.push_token = heapless::String::try_from("attacker").unwrap();
    }
    for read in [old_ledger, other_token] {
        let (conn, nonce) = challenged(&mut s, &read);
        let proof = proof_for(&secret, &nonce, &sent);
        let r = send_keyed(&mut s, conn, &proof, frame::session_key(&nonce));
        assert_eq!(r, Err(ServerError::Peer(PeerError::AuthFailed)));
    }
    let (conn, nonce) = challenged(&mut s, &sent);
    let proof = proof_for(&secret, &nonce, &sent);
    send_keyed(&mut s, conn, &proof, frame::session_key(&nonce)).unwrap();
}

/// From the challenge on, frames carry the session's key: a frame of another
/// session (or of none) is dropped like a corrupted one, and the session
/// goes on with the right frame.
#[test]
fn a_frame_of_another_session_is_dropped() {
    let mut s = server();
    let secret = s.enroll(DeviceId(1), NOW).unwrap();
    let h = hello(1, wire::PROTOCOL_VERSION);
    let (old, old_nonce) = challenged(&mut s, &h);
    s.connection_closed(old, NOW);
    let (conn, nonce) = challenged(&mut s, &h);
    let key = frame::session_key(&nonce);
    let proof = proof_for(&secret, &nonce, &h);
    // Right proof, wrong keys: the old session's, and none.
    for wrong in [frame::session_key(&old_nonce), 0] {
        send_keyed(&mut s, conn, &proof, wrong).unwrap();
        assert_eq!(replies_keyed(&mut s, conn, key), vec![]);
    }
    send_keyed(&mut s, conn, &proof, key).unwrap();
    let answer = replies_keyed(&mut s, conn, key);
    assert!(
        matches!(answer.first(), Some(Down::Welcome { .. })),
        "{answer:?}"
    );
    // The server's frames carry the key too: read without it, they are dropped.
    s.enqueue_task(DeviceId(1), wire::TaskKind::Lock, Default::default(), NOW)
        .unwrap();
    let bytes = drained(&mut s, conn);
    assert_eq!(decoded(&bytes, 0), vec![]);
    // (The session's one `SyncEnd` went out after the Welcome.)
    assert!(matches!(decoded(&bytes, key)[..], [Down::Task(_)]));
}

#[test]
fn a_device_of_another_version_gets_a_clear_error() {
    let mut s = server();
    let conn = s.connection_opened(NOW).unwrap();
    // A future Hello: version 9 and fields this version cannot parse.
    let mut payload = vec![0u8, 9];
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
        Err(ServerError::Peer(PeerError::VersionMismatch { device: 9 }))
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

/// A `Challenge` of another version is recognised by its first bytes, whether
/// it decodes as ours (version 7 in our layout) or not (version 2's layout,
/// which has no `attempt` and is one byte short for ours).
#[test]
fn a_device_rejects_a_server_of_another_version() {
    let mut v7 = [0u8; 64];
    let n = mdm_sync::wire::encode_payload(
        &Down::Challenge {
            version: 7,
            attempt: (1 << 32) + 1,
            nonce: [0; 16],
        },
        &mut v7,
    )
    .unwrap();
    let mut v2 = vec![0u8, 2];
    v2.extend_from_slice(&[0x11; 16]);
    assert!(mdm_sync::wire::decode::<Down>(&v2).is_err());
    for (payload, server) in [(&v7[..n], 7), (&v2[..], 2)] {
        let cfg = DeviceConfig::new(DeviceId(1), 0, [1; 32], Platform::Ios);
        let mut d: Device = Device::new(cfg, NOW);
        d.handle_timeout(NOW);
        assert_eq!(d.poll_event(), Some(Event::Persist), "the boot snapshot");
        assert_eq!(d.poll_event(), Some(Event::Connect));
        d.connected(NOW);
        let mut buf = [0u8; 600];
        assert!(d.poll_transmit(&mut buf).unwrap().is_some());
        let err = d
            .handle_bytes(&common::raw_frame(payload, 0), NOW)
            .unwrap_err();
        let want = SessionError::Protocol(ProtocolError::VersionMismatch { server });
        assert_eq!(err, DeviceError::Session(want));
        assert!(!d.is_connected());
        let events: Vec<_> = core::iter::from_fn(|| d.poll_event()).collect();
        assert!(events.contains(&Event::Disconnect));
        assert!(events.contains(&Event::SyncFailed { error: want }));
    }
}

/// A handshake that times out before the device read its challenge: the
/// challenge still goes out first (key 0), then the `Timeout` error with the
/// session key, so a device that reads both learns why the session ended.
#[test]
fn a_handshake_timeout_keeps_the_unread_challenge_ahead_of_the_error() {
    let mut s = server();
    let conn = s.connection_opened(NOW).unwrap();
    send(&mut s, conn, &hello(1, wire::PROTOCOL_VERSION)).unwrap();
    let late = NOW + s.config().handshake_timeout + mdm_sync::time::Duration::from_secs(1);
    s.handle_timeout(late).unwrap();
    let bytes = drained(&mut s, conn);
    let challenge = decoded(&bytes, 0);
    let nonce = match challenge[..] {
        [Down::Challenge { nonce, .. }] => nonce,
        ref other => panic!("expected the challenge first, got {other:?}"),
    };
    let key = frame::session_key(&nonce);
    assert_eq!(decoded(&bytes, key), vec![Down::Error(ErrorCode::Timeout)]);
}

/// A connection and the nonce it was challenged with.
type Challenged = (ConnId, [u8; 16]);

/// A server with device 1 enrolled and two handshakes of it open, both
/// challenged: the older `a`, then `b`. Returns the device's secret and
/// `Hello`, and each connection with its nonce.
fn two_handshakes() -> (Server<MemoryStore>, [u8; 32], Up, [Challenged; 2]) {
    let mut s = server();
    let secret = s.enroll(DeviceId(1), NOW).unwrap();
    let h = hello(1, wire::PROTOCOL_VERSION);
    let a = challenged(&mut s, &h);
    let b = challenged(&mut s, &h);
    (s, secret, h, [a, b])
}

/// Sends the right proof for `hello` on a challenged connection.
fn prove(
    s: &mut Server<MemoryStore>,
    secret: &[u8; 32],
    hello: &Up,
    at: (ConnId, [u8; 16]),
) -> Answer {
    let (conn, nonce) = at;
    let key = frame::session_key(&nonce);
    send_keyed(s, conn, &proof_for(secret, &nonce, hello), key)
}

/// A device gave connection A up after reading its challenge and synced on
/// B. A's proof, delivered late, must not be taken: its `Hello` holds an old
/// task ledger, which would fail B's open task as "device state lost" and
/// renumber offers under a sequence the device already spent.
#[test]
fn a_proof_for_a_handshake_the_device_gave_up_is_refused() {
    use mdm_sync::server::TaskState;
    use mdm_sync::wire::{ReportBody, TaskKind, TaskStatus};

    let (mut s, secret, h, [a, b]) = two_handshakes();
    let b_key = frame::session_key(&b.1);

    // Session B: one task done (the server's ledger moves to 1), one offered.
    let done = s.enqueue_task(DeviceId(1), TaskKind::Lock, Default::default(), NOW);
    prove(&mut s, &secret, &h, b).unwrap();
    let report = Up::Report {
        seq: 1,
        body: ReportBody::Task {
            task: done.unwrap(),
            status: TaskStatus::Succeeded { result: None },
        },
    };
    send_keyed(&mut s, b.0, &report, b_key).unwrap();
    let open = s
        .enqueue_task(DeviceId(1), TaskKind::Scan, Default::default(), NOW)
        .unwrap();
    let down = replies_keyed(&mut s, b.0, b_key);
    assert!(down
        .iter()
        .any(|m| matches!(m, Down::Task(t) if t.id == open && t.seq == 2)));
    s.connection_closed(b.0, NOW);

    let late = prove(&mut s, &secret, &h, a);
    assert_eq!(late, Err(ServerError::Peer(PeerError::Superseded)));
    assert_eq!(
        replies_keyed(&mut s, a.0, frame::session_key(&a.1)),
        vec![Down::Error(ErrorCode::BadMessage)]
    );
    assert_eq!(s.task_state(DeviceId(1), open), Some(TaskState::Offered));

    // The device's next session (it never read the second task) gets the
    // task again, under the same sequence.
    let Up::Hello(mut now_hello) = h else {
        unreachable!()
    };
    now_hello.last_task_seq = 1;
    let h = Up::Hello(now_hello);
    let c = challenged(&mut s, &h);
    prove(&mut s, &secret, &h, c).unwrap();
    let down = replies_keyed(&mut s, c.0, frame::session_key(&c.1));
    assert!(down
        .iter()
        .any(|m| matches!(m, Down::Task(t) if t.id == open && t.seq == 2)));
}

/// The other order: the older handshake authenticates first, then the newer
/// one replaces it, as any new session of the device does.
#[test]
fn a_newer_handshake_after_an_older_one_authenticates() {
    let (mut s, secret, h, [a, b]) = two_handshakes();
    prove(&mut s, &secret, &h, a).unwrap();
    prove(&mut s, &secret, &h, b).unwrap();
    assert!(matches!(
        replies_keyed(&mut s, b.0, frame::session_key(&b.1)).first(),
        Some(Down::Welcome { .. })
    ));
}

/// Runs `d` to its next `Hello` at `now` (keeping the latest snapshot in
/// `snap`), then cuts the connection; returns the `Hello`'s attempt.
fn next_attempt(d: &mut Device, snap: &mut Vec<u8>, now: Instant) -> u64 {
    let attempt = hello_sent(d, snap, now).attempt;
    d.disconnected(now);
    attempt
}

/// Runs `d` at `now` (keeping the latest snapshot in `snap`) until it has
/// connected and sent its `Hello`; returns the `Hello`.
fn hello_sent(d: &mut Device, snap: &mut Vec<u8>, now: Instant) -> Hello {
    d.handle_timeout(now);
    while let Some(ev) = d.poll_event() {
        match ev {
            Event::Persist => {
                let mut buf = vec![0u8; Device::<16, 4>::SNAPSHOT_MAX];
                let n = d.snapshot(&mut buf).unwrap();
                *snap = buf[..n].to_vec();
            }
            Event::Connect => d.connected(now),
            _ => {}
        }
    }
    let mut buf = [0u8; 600];
    let n = d.poll_transmit(&mut buf).unwrap().expect("a Hello");
    let Ok(Up::Hello(h)) = wire::decode::<Up>(frame::payload(&buf[..n])) else {
        panic!("not a Hello");
    };
    h
}

/// A `Challenge` frame of this version (key 0) naming `attempt`.
fn challenge_frame(attempt: u64, nonce: [u8; 16]) -> Vec<u8> {
    let msg = Down::Challenge {
        version: wire::PROTOCOL_VERSION,
        attempt,
        nonce,
    };
    let mut out = [0u8; 64];
    let n = frame::encode(&msg, &mut out).unwrap();
    out[..n].to_vec()
}

/// A device numbers its connections so that no `Hello.attempt` repeats: one
/// after another in a boot, and after a reboot above every earlier one (the
/// boot snapshot's counter is higher each boot).
#[test]
fn attempts_never_repeat_across_connections_and_reboots() {
    let cfg = DeviceConfig::new(DeviceId(1), 0, [1; 32], Platform::Ios);
    let mut d: Device = Device::new(cfg.clone(), NOW);
    let mut snap = Vec::new();
    let mut seen: Vec<u64> = Vec::new();
    let mut now = NOW;
    for boot in 0..3 {
        for _ in 0..3 {
            let a = next_attempt(&mut d, &mut snap, now);
            assert!(
                seen.iter().all(|s| *s < a),
                "boot {boot}: attempt {a:#x} not above {seen:x?}"
            );
            seen.push(a);
            now = now + mdm_sync::time::Duration::from_hours(1);
        }
        d = Device::restore(cfg.clone(), &snap, now).unwrap();
    }
}

/// A `Challenge` naming another attempt than this connection's `Hello` (an
/// earlier connection's, delivered late) is dropped like a corrupted frame:
/// no proof, no key, the session goes on; the right one is then answered.
#[test]
fn a_device_drops_a_challenge_of_another_attempt() {
    let cfg = DeviceConfig::new(DeviceId(1), 0, [1; 32], Platform::Ios);
    let mut d: Device = Device::new(cfg, NOW);
    let mut snap = Vec::new();
    let earlier = next_attempt(&mut d, &mut snap, NOW);
    let later = NOW + mdm_sync::time::Duration::from_hours(1);
    d.handle_timeout(later);
    while let Some(ev) = d.poll_event() {
        if ev == Event::Connect {
            d.connected(later);
        }
    }
    let mut buf = [0u8; 600];
    let n = d.poll_transmit(&mut buf).unwrap().expect("a Hello");
    let Ok(Up::Hello(hello)) = wire::decode::<Up>(frame::payload(&buf[..n])) else {
        panic!("not a Hello");
    };
    assert!(hello.attempt > earlier);
    let errors = d.stats().frame_errors;
    for stale in [earlier, hello.attempt + 1, 0] {
        d.handle_bytes(&challenge_frame(stale, [0x22; 16]), later)
            .unwrap();
        assert_eq!(
            d.poll_transmit(&mut buf).unwrap(),
            None,
            "a proof to {stale:#x}"
        );
        assert!(d.is_connected());
    }
    assert_eq!(d.stats().frame_errors, errors + 3);
    d.handle_bytes(&challenge_frame(hello.attempt, [0x33; 16]), later)
        .unwrap();
    let n = d.poll_transmit(&mut buf).unwrap().expect("a proof");
    let key = frame::session_key(&[0x33; 16]);
    let mut dec = wire::FrameDecoder::<600>::new();
    dec.set_key(key);
    dec.push(&buf[..n]);
    let payload = dec.decode().unwrap().unwrap();
    assert!(matches!(wire::decode::<Up>(payload), Ok(Up::Proof { .. })));
}

/// The payload of device 1's `Hello` (see [`hello`]) with this attempt.
fn hello_payload(attempt: u64) -> Vec<u8> {
    let Up::Hello(mut h) = hello(1, wire::PROTOCOL_VERSION) else {
        unreachable!()
    };
    h.attempt = attempt;
    let mut buf = [0u8; 600];
    let n = wire::encode_payload(&Up::Hello(h), &mut buf).unwrap();
    buf[..n].to_vec()
}

/// `v` as a postcard varint of `len` bytes: non-minimal when longer than
/// needed, which the reference decoders accept (PROTOCOL.md 3).
fn varint_of_len(mut v: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 1..=len {
        out.push((v & 0x7F) as u8 | if i < len { 0x80 } else { 0 });
        v >>= 7;
    }
    assert_eq!(v, 0, "does not fit in {len} bytes");
    out
}

/// Bytes of `v` as a minimal varint.
fn varint_len(v: u64) -> usize {
    (64 - v.leading_zeros() as usize).max(1).div_ceil(7)
}

/// The server echoes whatever attempt a `Hello` carries, exactly: the
/// extremes, one value twice (on two connections), and values written as
/// non-minimal varints, which the server's hand decoder and postcard read
/// alike.
#[test]
fn the_server_echoes_any_attempt_exactly() {
    let mut s = server();
    s.enroll(DeviceId(1), NOW).unwrap();
    let mut cases: Vec<(u64, Vec<u8>)> = [0, 1, (1 << 32) + 1, u64::MAX, 7, 7]
        .into_iter()
        .map(|a| (a, hello_payload(a)))
        .collect();
    for (a, len) in [(0u64, 10), ((1 << 32) + 1, 7)] {
        let mut p = hello_payload(a);
        // Tag and version take a byte each, then the attempt.
        p.splice(2..2 + varint_len(a), varint_of_len(a, len));
        assert!(matches!(wire::decode::<Up>(&p), Ok(Up::Hello(h)) if h.attempt == a));
        cases.push((a, p));
    }
    for (attempt, payload) in cases {
        let conn = s.connection_opened(NOW).unwrap();
        s.handle_bytes(conn, &common::raw_frame(&payload, 0), NOW)
            .unwrap();
        match &replies(&mut s, conn)[..] {
            [Down::Challenge {
                version,
                attempt: echoed,
                ..
            }] => {
                assert_eq!(*version, wire::PROTOCOL_VERSION);
                assert_eq!(*echoed, attempt, "payload {payload:02x?}");
            }
            other => panic!("attempt {attempt:#x}: {other:?}"),
        }
        s.connection_closed(conn, NOW);
    }
}

/// A `Hello` of another version that decodes in our layout, its tag written
/// as the non-minimal varint `80 00` (postcard reads tag 0, and so must the
/// version peek): it must not be challenged, since the server answers only a
/// `Hello` of its version with a `Challenge` (PROTOCOL.md 6.1).
#[test]
fn a_hello_of_another_version_is_never_challenged() {
    let mut s = server();
    s.enroll(DeviceId(1), NOW).unwrap();
    const {
        assert!(
            wire::PROTOCOL_VERSION < 0x7F,
            "one varint byte, like this version"
        )
    };
    let next = wire::PROTOCOL_VERSION + 1;
    let mut payload = hello_payload((1 << 32) + 1);
    payload[1] = next as u8;
    payload.splice(0..1, [0x80, 0x00]);
    assert!(matches!(wire::decode::<Up>(&payload), Ok(Up::Hello(h)) if h.version == next));
    let conn = s.connection_opened(NOW).unwrap();
    let r = s.handle_bytes(conn, &common::raw_frame(&payload, 0), NOW);
    let supported = wire::PROTOCOL_VERSION;
    assert_eq!(
        replies(&mut s, conn),
        vec![Down::Error(ErrorCode::VersionMismatch { supported })]
    );
    assert_eq!(
        r,
        Err(ServerError::Peer(PeerError::VersionMismatch {
            device: next
        }))
    );
}

/// How long after its `Hello` a device awaiting its challenge gives the
/// session up, fed `frame` every 10 s, over ten response timeouts; `None`
/// if it never does.
fn gives_up_after(frame: &[u8]) -> Option<mdm_sync::time::Duration> {
    let cfg = DeviceConfig::new(DeviceId(1), 0, [1; 32], Platform::Ios);
    let span = cfg.timers.response_timeout.as_millis() * 10;
    let mut d: Device = Device::new(cfg, NOW);
    hello_sent(&mut d, &mut Vec::new(), NOW);
    let mut t = NOW;
    while t.saturating_since(NOW).as_millis() < span {
        t = t + mdm_sync::time::Duration::from_secs(10);
        d.handle_timeout(t);
        let timeout = Event::SyncFailed {
            error: SessionError::Timeout,
        };
        if core::iter::from_fn(|| d.poll_event()).any(|e| e == timeout) {
            return Some(t.saturating_since(NOW));
        }
        d.handle_bytes(frame, t).unwrap();
    }
    None
}

/// A `Challenge` naming another attempt is dropped "like a corrupted frame"
/// (PROTOCOL.md 2, 6.1), so like one it is no answer from the server: a
/// link that keeps delivering an earlier connection's challenges must not
/// hold the session open past `response_timeout`.
#[test]
fn stale_challenges_do_not_hold_a_session_open() {
    let mut corrupt = challenge_frame(7, [0x22; 16]);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 1;
    let by_corrupt = gives_up_after(&corrupt);
    let timeout = DeviceConfig::new(DeviceId(1), 0, [1; 32], Platform::Ios)
        .timers
        .response_timeout;
    assert_eq!(by_corrupt, Some(timeout), "corrupted frames");
    let by_stale = gives_up_after(&challenge_frame(7, [0x22; 16]));
    assert_eq!(
        by_stale, by_corrupt,
        "stale challenges held the session open"
    );
}

/// `snap` (a snapshot of this crate's format 2) with its counter replaced by
/// `counter` and its CRC made good again.
fn with_counter(snap: &[u8], counter: u64) -> Vec<u8> {
    let old = mdm_sync::device::snapshot_counter(snap).unwrap();
    // Format byte, then the counter as the first varint.
    let mut out = vec![snap[0]];
    out.extend(varint_of_len(counter, varint_len(counter)));
    out.extend_from_slice(&snap[1 + varint_len(old)..snap.len() - 4]);
    let crc = wire::crc32(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    assert_eq!(mdm_sync::device::snapshot_counter(&out), Ok(counter));
    out
}

/// A boot numbers its connections from its boot snapshot's counter times
/// 2^32, so a counter past 2^32 (one per Persist event: some 4.3 billion
/// snapshots, far beyond a device's life) loses its high half: boot snapshot
/// 2^32 + 1 repeats the attempts of boot snapshot 1, the first boot's.
#[test]
#[ignore = "fault: Hello.attempt repeats once the snapshot counter passes 2^32 (unreachable in practice)"]
fn attempts_stay_new_past_a_snapshot_counter_of_2_32() {
    let cfg = DeviceConfig::new(DeviceId(1), 0, [1; 32], Platform::Ios);
    let mut first: Device = Device::new(cfg.clone(), NOW);
    let mut snap = Vec::new();
    let first_attempt = next_attempt(&mut first, &mut snap, NOW);
    let late = with_counter(&snap, 1 << 32);
    let mut later: Device = Device::restore(cfg, &late, NOW).unwrap();
    let later_attempt = next_attempt(&mut later, &mut snap, NOW);
    assert_ne!(later_attempt, first_attempt, "{first_attempt:#x} again");
}

/// Once the device answered its challenge, frames with key 0 are another
/// session's: the same `Challenge` again (a duplicated frame) and an
/// `Error` sent before some earlier challenge are dropped, and the session
/// goes on to its `Welcome`.
#[test]
fn after_the_proof_the_challenge_again_and_an_unkeyed_error_are_dropped() {
    let cfg = DeviceConfig::new(DeviceId(1), 0, [1; 32], Platform::Ios);
    let mut d: Device = Device::new(cfg, NOW);
    let hello = hello_sent(&mut d, &mut Vec::new(), NOW);
    let nonce = [0x44; 16];
    let right = challenge_frame(hello.attempt, nonce);
    d.handle_bytes(&right, NOW).unwrap();
    let mut buf = [0u8; 600];
    assert!(d.poll_transmit(&mut buf).unwrap().is_some(), "a proof");
    let errors = d.stats().frame_errors;
    let mut stale_error = [0u8; 64];
    let n = frame::encode(&Down::Error(ErrorCode::Timeout), &mut stale_error).unwrap();
    for f in [&right[..], &stale_error[..n], &right[..]] {
        d.handle_bytes(f, NOW).unwrap();
        assert!(d.is_connected());
    }
    // A frame failing its CRC counts as a bad CRC, then its bytes as garbage.
    assert!(d.stats().frame_errors >= errors + 3);
    let welcome = Down::Welcome {
        ack: 0,
        periodic_s: 0,
        want_token: false,
    };
    let n = frame::encode_keyed(&welcome, &mut buf, frame::session_key(&nonce)).unwrap();
    d.handle_bytes(&buf[..n], NOW).unwrap();
    let mut end = [0u8; 64];
    let m = frame::encode_keyed(&Down::SyncEnd, &mut end, frame::session_key(&nonce)).unwrap();
    d.handle_bytes(&end[..m], NOW).unwrap();
    let done = core::iter::from_fn(|| d.poll_event()).any(|e| matches!(e, Event::SyncDone { .. }));
    assert!(done, "the session completes");
}

/// A device re-enrolled (new generation: its snapshot is foreign) goes on from
/// the old snapshot's counter with `Device::continuing`, so its attempts stay
/// above every attempt of the earlier enrollment.
#[test]
fn a_re_enrolled_device_goes_on_numbering_its_connections() {
    let old_cfg = DeviceConfig::new(DeviceId(1), 0, [1; 32], Platform::Ios);
    let mut d: Device = Device::new(old_cfg, NOW);
    let mut snap = Vec::new();
    let mut now = NOW;
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(next_attempt(&mut d, &mut snap, now));
        now = now + mdm_sync::time::Duration::from_hours(1);
    }
    let new_cfg = DeviceConfig::new(DeviceId(1), 1, [2; 32], Platform::Ios);
    let err = Device::<16, 4>::restore(new_cfg.clone(), &snap, now).unwrap_err();
    assert_eq!(err, mdm_sync::device::SnapshotError::Foreign);
    let counter = mdm_sync::device::snapshot_counter(&snap).unwrap();
    let mut d: Device = Device::continuing(new_cfg, counter, now);
    let a = next_attempt(&mut d, &mut snap, now);
    assert!(seen.iter().all(|s| *s < a), "{a:#x} not above {seen:x?}");
}
