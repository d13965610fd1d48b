//! Protocol version 6's two forms of the proof's block (PROTOCOL.md 6.4),
//! tried at and around the 31-byte boundary from outside the crate: proofs
//! built here from the text of 6.4 (with `sha2`'s compression function, not
//! `mdm_sync::auth`) against the server; the other form, a payload with a
//! trailing zero, a replay in another session; Hellos the server reads by
//! its slow path; and device engines whose own Hellos are 31 and 32 bytes.

mod common;

use mdm_sync::device::{Device, DeviceConfig, Event};
use mdm_sync::server::{ConnId, MemoryStore, PeerError, Server, ServerError, ServerEvent};
use mdm_sync::time::Instant;
use mdm_sync::wire::{self, frame, DeviceId, Down, ErrorCode, Hello, Platform, SyncTrigger, Up};
use sha2::Digest;

const NOW: Instant = Instant::from_millis(7);

/// The two forms of 6.4.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Form {
    Short,
    Long,
}

/// `C(secret, block)` as section 6 defines it: the secret read as eight
/// big-endian words, one block, no padding.
fn c(secret: &[u8; 32], block: &[u8; 64]) -> [u8; 32] {
    let mut state = [0u32; 8];
    for (w, b) in state.iter_mut().zip(secret.chunks(4)) {
        *w = u32::from_be_bytes(b.try_into().unwrap());
    }
    sha2::block_api::compress256(&mut state, &[*block]);
    let mut out = [0u8; 32];
    for (o, w) in out.chunks_mut(4).zip(state) {
        o.copy_from_slice(&w.to_be_bytes());
    }
    out
}

/// The proof of 6.4 in `form`, written from the text; `len` is the length
/// byte the short form carries (the payload's own unless a test lies).
fn spec_proof(
    secret: &[u8; 32],
    nonce: &[u8; 16],
    payload: &[u8],
    form: Form,
    len: u8,
) -> [u8; 32] {
    let mut block = [0u8; 64];
    block[16..32].copy_from_slice(nonce);
    match form {
        Form::Short => {
            block[..16].copy_from_slice(b"mdm-sync/6 short");
            block[32..32 + payload.len()].copy_from_slice(payload);
            block[63] = len;
        }
        Form::Long => {
            block[..16].copy_from_slice(b"mdm-sync/4 proof");
            block[32..].copy_from_slice(&sha2::Sha256::digest(payload));
        }
    }
    c(secret, &block)
}

fn form_of(payload: &[u8]) -> Form {
    if payload.len() <= 31 {
        Form::Short
    } else {
        Form::Long
    }
}

fn hello(device: DeviceId, attempt: u64, token: &str, seq: u32, policy: u32) -> Hello {
    Hello {
        version: wire::PROTOCOL_VERSION,
        attempt,
        device,
        generation: 0,
        platform: Platform::Ios,
        push_token: heapless::String::try_from(token).unwrap(),
        trigger: SyncTrigger::Manual,
        last_task_seq: seq,
        policy_version: policy,
    }
}

fn payload_of(h: &Hello) -> Vec<u8> {
    let mut buf = [0u8; 600];
    let n = frame::encode(&Up::Hello(h.clone()), &mut buf).unwrap();
    frame::payload(&buf[..n]).to_vec()
}

/// Opens a connection, sends `payload` as its first frame and returns the
/// connection and the challenge's nonce.
fn challenged(s: &mut Server<MemoryStore>, payload: &[u8]) -> (ConnId, [u8; 16]) {
    let conn = s.connection_opened(NOW).unwrap();
    s.handle_bytes(conn, &common::raw_frame(payload, 0), NOW)
        .unwrap();
    let out = common::output(s, conn);
    match common::downs(&out, 0).as_slice() {
        [Down::Challenge { nonce, .. }] => (conn, *nonce),
        other => panic!("no challenge: {other:?}"),
    }
}

/// Sends `mac` as the proof on `conn`: whether the server welcomed it.
fn prove(s: &mut Server<MemoryStore>, conn: ConnId, nonce: &[u8; 16], mac: [u8; 32]) -> bool {
    let key = frame::session_key(nonce);
    let mut buf = [0u8; 64];
    let n = frame::encode_keyed(&Up::Proof { mac }, &mut buf, key).unwrap();
    let r = s.handle_bytes(conn, &buf[..n], NOW);
    let out = common::output(s, conn);
    let welcomed = common::downs(&out, key)
        .iter()
        .any(|d| matches!(d, Down::Welcome { .. }));
    match r {
        Ok(()) => assert!(welcomed, "accepted without a Welcome"),
        Err(ServerError::Peer(PeerError::AuthFailed)) => {
            assert!(!welcomed);
            assert_eq!(
                common::downs(&out, key).last(),
                Some(&Down::Error(ErrorCode::AuthFailed))
            );
        }
        Err(e) => panic!("{e:?}"),
    }
    welcomed
}

/// Hellos from 10 to 60 payload bytes (tokenless ones up to 42, by their
/// varints; longer ones by a token): each authenticates with the proof of
/// its own form as 6.4 writes it, and with nothing else: not the other
/// form, not the short form of the payload with a zero after it (length
/// byte one more), not the proof of the same bytes in another session.
#[test]
fn each_length_takes_its_own_form_only() {
    let mut s = common::server();
    let mut secrets = std::collections::HashMap::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut cases = Vec::new();
    // Tokenless: every varint from shortest to longest.
    for (attempt, device, seq, policy) in [
        (1, 1, 0, 0),
        (1 << 32, 1, 0, 0),
        (1 << 32, 1 << 20, 7, 3),
        (u64::MAX, 1, 0, 0),
        (u64::MAX, u64::MAX, 0, 0),
        (u64::MAX, u64::MAX, 1 << 14, 0),
        (u64::MAX, u64::MAX, 1 << 21, 0),
        (u64::MAX, u64::MAX, 1 << 28, 0),
        (u64::MAX, u64::MAX, 1 << 28, 1 << 7),
        (u64::MAX, u64::MAX, 1 << 28, 1 << 14),
        (u64::MAX, u64::MAX, 1 << 28, 1 << 21),
        (u64::MAX, u64::MAX, u32::MAX, u32::MAX),
        (1 << 35, 1 << 56, 1 << 28, 1 << 14),
        (1 << 28, 1 << 56, 1 << 28, 1 << 14),
    ] {
        cases.push(hello(DeviceId(device), attempt, "", seq, policy));
    }
    for n in 0..=40 {
        let token: String = "t".repeat(n);
        cases.push(hello(DeviceId(5), 1 << 32, &token, 0, 0));
    }
    for h in cases {
        let secret = *secrets
            .entry(h.device)
            .or_insert_with(|| s.enroll(h.device, NOW).unwrap());
        let payload = payload_of(&h);
        seen.insert(payload.len());
        let len = payload.len() as u8;
        let own = form_of(&payload);
        let other = match own {
            Form::Short => Form::Long,
            Form::Long => Form::Short,
        };
        // The other form (for a long payload, its first 31 bytes inline).
        let (conn, nonce) = challenged(&mut s, &payload);
        let cut = &payload[..payload.len().min(31)];
        let mac = spec_proof(&secret, &nonce, cut, other, len.min(31));
        assert!(!prove(&mut s, conn, &nonce, mac), "{} bytes", payload.len());
        // A trailing zero inside the short form's room.
        if payload.len() < 31 {
            let (conn, nonce) = challenged(&mut s, &payload);
            let mac = spec_proof(&secret, &nonce, &payload, Form::Short, len + 1);
            assert!(!prove(&mut s, conn, &nonce, mac), "{} bytes", payload.len());
        }
        // The right one, then replayed in a session with the same Hello.
        let (conn, nonce) = challenged(&mut s, &payload);
        let mac = spec_proof(&secret, &nonce, &payload, own, len);
        assert!(prove(&mut s, conn, &nonce, mac), "{} bytes", payload.len());
        let (conn, nonce2) = challenged(&mut s, &payload);
        assert!(
            !prove(&mut s, conn, &nonce2, mac),
            "replayed, {} bytes",
            payload.len()
        );
    }
    for len in [10, 30, 31, 32, 33, 42, 54] {
        assert!(seen.contains(&len), "no {len}-byte Hello among {seen:?}");
    }
}

/// Two payloads differing only in a trailing zero byte, both Hellos the
/// server reads (the second one with a longer token: "..\0" is UTF-8), bind
/// differently: the proof of one fails for the other.
#[test]
fn a_trailing_zero_changes_the_binding() {
    let mut s = common::server();
    let dev = DeviceId(9);
    let secret = s.enroll(dev, NOW).unwrap();
    // The token is the last string before three one-byte varints, so make
    // both Hellos end the same way by their fields instead: the payload of
    // `a` followed by 0 is not a Hello, so compare a token "x" with "x\0".
    let a = payload_of(&hello(dev, 1, "x", 0, 0));
    let b = payload_of(&hello(dev, 1, "x\0", 0, 0));
    assert!(a.len() < 31 && b.len() < 31);
    let (conn, nonce) = challenged(&mut s, &b);
    let mac = spec_proof(&secret, &nonce, &a, Form::Short, a.len() as u8);
    assert!(!prove(&mut s, conn, &nonce, mac));
    let (conn, nonce) = challenged(&mut s, &b);
    let mac = spec_proof(&secret, &nonce, &b, Form::Short, b.len() as u8);
    assert!(prove(&mut s, conn, &nonce, mac));
}

/// A Hello whose varints are written longer than needed (a decoder that
/// accepts them reads the same Hello from more bytes): whatever the server
/// makes of it, it binds the bytes it read, so only the proof over those
/// exact bytes, in their length's form, is accepted. The padded forms cross
/// from 31 bytes or fewer to more.
#[test]
fn padded_varints_bind_the_bytes_read() {
    let mut s = common::server();
    let dev = DeviceId(u64::MAX);
    let secret = s.enroll(dev, NOW).unwrap();
    let canonical = payload_of(&hello(dev, 1, "", 1 << 28, 0));
    assert_eq!(canonical.len(), 23);
    let mut lens = std::collections::BTreeSet::new();
    let mut accepted = 0;
    // Tag 0, version 6, attempt 1 (canonical: 00 06 01 ...).
    assert_eq!(&canonical[..3], &[0, 6, 1]);
    for pad in 0..=9usize {
        // attempt 1 written in 1 + pad bytes: 0x81 0x80.. 0x00 (u64: at most 10).
        let mut p = vec![0, 6];
        if pad == 0 {
            p.push(1);
        } else {
            p.push(0x81);
            p.extend(core::iter::repeat_n(0x80, pad - 1));
            p.push(0x00);
        }
        p.extend_from_slice(&canonical[3..]);
        // Pad the last varint (policy_version, u32: at most 5 bytes) too.
        let last = p.len() - 1;
        let mut q = p[..last].to_vec();
        q.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x00]);
        for payload in [p, q] {
            let conn = s.connection_opened(NOW).unwrap();
            let r = s.handle_bytes(conn, &common::raw_frame(&payload, 0), NOW);
            let out = common::output(&mut s, conn);
            let Some(Down::Challenge { nonce, .. }) = common::downs(&out, 0).first().cloned()
            else {
                assert!(r.is_err(), "{payload:02x?}: neither challenge nor error");
                continue;
            };
            let len = payload.len() as u8;
            lens.insert(payload.len());
            accepted += 1;
            // The canonical bytes' proof does not answer a padded Hello.
            if payload != canonical {
                let cform = form_of(&canonical);
                let mac = spec_proof(&secret, &nonce, &canonical, cform, canonical.len() as u8);
                assert!(!prove(&mut s, conn, &nonce, mac), "{payload:02x?}");
                let (conn2, nonce2) = challenged(&mut s, &payload);
                let mac = spec_proof(&secret, &nonce2, &payload, form_of(&payload), len);
                assert!(prove(&mut s, conn2, &nonce2, mac), "{payload:02x?}");
            } else {
                let mac = spec_proof(&secret, &nonce, &payload, form_of(&payload), len);
                assert!(prove(&mut s, conn, &nonce, mac), "{payload:02x?}");
            }
        }
    }
    // The reader takes padded varints, so both sides of 31 bytes were tried.
    assert_eq!(accepted, 20);
    assert!(lens.contains(&31) && lens.contains(&32), "{lens:?}");
}

/// Runs one sync of `dev` against `s` from `now` (advancing it through the
/// device's timers until the device has closed the connection); returns the
/// payload of the `Hello` the device sent and whether the server
/// authenticated it.
fn device_sync(
    s: &mut Server<MemoryStore>,
    dev: &mut Device,
    now: &mut Instant,
) -> (Vec<u8>, bool) {
    dev.manual_sync(*now);
    let mut conn = None;
    let mut hello = None;
    let mut authed = false;
    let mut buf = [0u8; 1024];
    for _ in 0..1000 {
        let mut moved = false;
        while let Some(ev) = dev.poll_event() {
            moved = true;
            match ev {
                Event::Persist => {
                    let mut snap = [0u8; 2048];
                    dev.snapshot(&mut snap).unwrap();
                }
                Event::Connect => {
                    conn = Some(s.connection_opened(*now).unwrap());
                    dev.connected(*now);
                }
                Event::Disconnect => {
                    if let Some(c) = conn.take() {
                        s.connection_closed(c, *now);
                    }
                }
                Event::SyncFailed { error } => panic!("{error:?}"),
                _ => {}
            }
        }
        if let Some(c) = conn {
            while let Some(n) = dev.poll_transmit(&mut buf).unwrap() {
                moved = true;
                if hello.is_none() {
                    hello = Some(frame::payload(&buf[..n]).to_vec());
                }
                let _ = s.handle_bytes(c, &buf[..n], *now);
            }
            while let Some(n) = s.poll_transmit_for(c, &mut buf) {
                moved = true;
                dev.handle_bytes(&buf[..n], *now).unwrap();
            }
        }
        while let Some(ev) = s.poll_event() {
            authed |= matches!(ev, ServerEvent::Authenticated { .. });
        }
        if moved {
            continue;
        }
        if hello.is_some() && conn.is_none() {
            break;
        }
        // Nothing to do now: on to the device's next deadline.
        let Some(t) = dev.poll_timeout() else { break };
        *now = (*now).max(t);
        dev.handle_timeout(*now);
    }
    (hello.expect("no Hello sent"), authed)
}

/// Device engines whose first Hello (with its token) is every length from
/// 14 to 60 bytes, 31 and 32 among them, and whose next Hello (tokenless,
/// for ids of every varint length) is short: each authenticates.
#[test]
fn device_hellos_at_the_boundary_authenticate() {
    let mut lens = std::collections::BTreeSet::new();
    let mut now = NOW;
    for (id, n) in
        (0..=40usize)
            .map(|n| (1u64, n))
            .chain([(u64::MAX, 0), (u64::MAX, 17), (1 << 35, 9)])
    {
        let mut s = common::server();
        let id = DeviceId(id);
        let secret = s.enroll(id, now).unwrap();
        let mut cfg = DeviceConfig::new(id, 0, secret, Platform::Android);
        cfg.push_token = heapless::String::try_from("p".repeat(n).as_str()).unwrap();
        let mut dev = Device::new(cfg, now);
        for round in 0..2 {
            let (hello, authed) = device_sync(&mut s, &mut dev, &mut now);
            lens.insert(hello.len());
            let h = wire::decode::<Up>(&hello).unwrap();
            assert!(authed, "id {id:?}, token {n}, round {round}: {h:?}");
        }
    }
    assert!(lens.contains(&31) && lens.contains(&32), "{lens:?}");
}

/// What postcard, the reference decoder of section 3, makes of a first
/// frame's payload: a Hello of this version, one of another version, or
/// nothing the server may take.
#[derive(Debug, PartialEq)]
enum Reading {
    Ours(Box<Hello>),
    OtherVersion,
    Bad,
}

fn reference(payload: &[u8]) -> Reading {
    match postcard::take_from_bytes::<Up>(payload) {
        Ok((Up::Hello(h), [])) if h.version == wire::PROTOCOL_VERSION => Reading::Ours(Box::new(h)),
        _ => match wire::peek_version(payload) {
            Some(v) if v != wire::PROTOCOL_VERSION => Reading::OtherVersion,
            _ => Reading::Bad,
        },
    }
}

/// Random mutations of Hellos (bytes changed, inserted, removed, cut),
/// sent as a connection's first frame: the server challenges exactly the
/// payloads postcard reads as a Hello of its version, however its own
/// reader got there (by hand, or through `parse`), and the challenge
/// answers that Hello's attempt; a proof over those bytes then opens the
/// session for the device postcard read. Other versions get
/// `VersionMismatch`, the rest `BadMessage`.
#[test]
fn the_servers_reading_of_a_first_frame_is_postcards() {
    let mut rng = common::Rng(0x9E37_79B9_7F4A_7C15);
    let mut s = common::server();
    let mut secrets = std::collections::HashMap::new();
    let mut tally = [0usize; 3];
    for i in 0..20_000u64 {
        let token = "k".repeat((rng.below(4) * 20) as usize);
        let device = DeviceId(rng.next() >> rng.below(64));
        let mut p = payload_of(&hello(device, rng.next() >> rng.below(64), &token, 5, 9));
        for _ in 0..=rng.below(3) {
            let at = rng.below(p.len() as u64 + 1) as usize;
            let byte = match rng.below(4) {
                0 => 0x80,
                1 => 0x00,
                2 => 0xFF,
                _ => rng.next() as u8,
            };
            match rng.below(4) {
                0 if at < p.len() => p[at] = byte,
                1 => p.insert(at, byte),
                2 if at < p.len() => {
                    p.remove(at);
                }
                _ => p.truncate(at.max(1)),
            }
        }
        if p.is_empty() {
            continue; // no frame has an empty payload
        }
        let want = reference(&p);
        let conn = s.connection_opened(NOW).unwrap();
        let r = s.handle_bytes(conn, &common::raw_frame(&p, 0), NOW);
        let got = common::downs(&common::output(&mut s, conn), 0);
        match &want {
            Reading::Ours(h) => {
                tally[0] += 1;
                assert!(r.is_ok(), "{p:02x?}: {r:?}");
                let [Down::Challenge { attempt, nonce, .. }] = got.as_slice() else {
                    panic!("{p:02x?}: {got:?}");
                };
                assert_eq!(*attempt, h.attempt, "{p:02x?}");
                // Now and then, prove it as the device postcard read.
                if i % 16 == 0 && h.generation == 0 {
                    let secret = *secrets
                        .entry(h.device)
                        .or_insert_with(|| s.enroll(h.device, NOW).unwrap());
                    let mac = spec_proof(&secret, nonce, &p, form_of(&p), p.len() as u8);
                    assert!(prove(&mut s, conn, nonce, mac), "{p:02x?}");
                }
            }
            Reading::OtherVersion => {
                tally[1] += 1;
                assert!(r.is_err(), "{p:02x?}");
                assert!(
                    matches!(
                        got.as_slice(),
                        [Down::Error(ErrorCode::VersionMismatch { .. })]
                    ),
                    "{p:02x?}: {got:?}"
                );
            }
            Reading::Bad => {
                tally[2] += 1;
                assert!(r.is_err(), "{p:02x?}");
                assert_eq!(got, vec![Down::Error(ErrorCode::BadMessage)], "{p:02x?}");
            }
        }
        s.connection_closed(conn, NOW);
        while s.poll_event().is_some() {}
    }
    assert!(tally.iter().all(|&n| n > 500), "{tally:?}");
}
