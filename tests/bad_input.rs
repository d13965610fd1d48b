//! The bad-input contract (crate docs, "Bad input"): every public entry point
//! that decodes or restores bytes returns a typed error on malformed input,
//! never panics, rejects an oversized length field before buffering anything
//! behind it, and leaves the engine usable for the next good input.

mod common;

use mdm_sync::adapters::push::decode_push;
use mdm_sync::device::{
    pick_latest, snapshot_counter, Device, DeviceConfig, DeviceError, Event, SnapshotError,
};
use mdm_sync::server::{ConnId, MemoryStore, Server, ServerConfig, ServerError, ServerEvent};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::frame::{self, MAGIC};
use mdm_sync::wire::{
    self, crc32, peek_version, DecodeError, DeviceId, Down, FrameDecoder, FrameError, Platform,
    TaskKind, TaskStatus, Up, MAX_DOWN_FRAME, MAX_DOWN_PAYLOAD, MAX_FRAME, MAX_PAYLOAD,
    PROTOCOL_VERSION,
};
use proptest::prelude::*;

const ID: DeviceId = DeviceId(7);
const T0: Instant = Instant::from_millis(10_000);

/// A server and one device wired by hand, so a test can stop anywhere.
struct Link {
    server: Server<MemoryStore>,
    device: Device,
    cfg: DeviceConfig,
    conn: Option<ConnId>,
    now: Instant,
    executed: Vec<wire::Task>,
    done: u32,
}

impl Link {
    fn new() -> Self {
        let mut server = Server::new(
            ServerConfig::default(),
            MemoryStore::new(),
            [3; 32],
            [4; 32],
        );
        let secret = server.enroll(ID, T0).unwrap();
        let mut cfg = DeviceConfig::new(ID, 0, secret, Platform::Ios);
        cfg.push_token = heapless::String::try_from("tok").unwrap();
        let device = Device::new(cfg.clone(), T0);
        Self {
            server,
            device,
            cfg,
            conn: None,
            now: T0,
            executed: Vec::new(),
            done: 0,
        }
    }

    /// Lets the device connect; returns once its `Hello` is out, undelivered.
    fn connect(&mut self) -> Vec<u8> {
        self.device.handle_timeout(self.now);
        self.events();
        assert!(self.conn.is_some(), "the device wanted no sync");
        self.device_out()
    }

    fn events(&mut self) {
        while let Some(ev) = self.device.poll_event() {
            match ev {
                Event::Connect => {
                    self.conn = Some(self.server.connection_opened(self.now).unwrap());
                    self.device.connected(self.now);
                }
                Event::Disconnect => {
                    if let Some(c) = self.conn.take() {
                        self.server.connection_closed(c, self.now);
                    }
                }
                Event::Execute(t) => {
                    self.executed.push(t);
                    let ok = TaskStatus::Succeeded { result: None };
                    self.device.task_status(t.id, ok, self.now).unwrap();
                }
                Event::SyncDone { .. } => self.done += 1,
                _ => {}
            }
        }
    }

    fn device_out(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; MAX_FRAME];
        while let Some(n) = self.device.poll_transmit(&mut buf).unwrap() {
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    fn server_out(&mut self) -> Vec<u8> {
        let (mut out, mut buf) = (Vec::new(), [0u8; MAX_FRAME]);
        let Some(c) = self.conn else { return out };
        while let Some(n) = self.server.poll_transmit_for(c, &mut buf) {
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    /// Moves bytes both ways until nothing moves.
    fn run(&mut self) {
        for _ in 0..100 {
            self.device.handle_timeout(self.now);
            self.events();
            let up = self.device_out();
            if let Some(c) = self.conn {
                let _ = self.server.handle_bytes(c, &up, self.now);
            }
            let down = self.server_out();
            if !down.is_empty() {
                let _ = self.device.handle_bytes(&down, self.now);
            }
            while let Some(ev) = self.server.poll_event() {
                if matches!(ev, ServerEvent::Close { .. }) {
                    self.conn = None;
                    self.device.disconnected(self.now);
                }
            }
            self.events();
            if up.is_empty() && down.is_empty() && self.device.poll_event().is_none() {
                return;
            }
        }
        panic!("no quiet after 100 rounds");
    }

    /// After a failure: time passes until the device syncs again, fully.
    /// Pushes are not delivered here, so the device comes back on its own
    /// timers: time moves in steps of 10 minutes, or on to the device's next
    /// deadline when that is later. (A `Welcome` among the bad input may
    /// have set any periodic interval up to a week, and the failed session
    /// after it counts as the sync its triggers asked for.)
    fn recovers(&mut self) {
        let task = self
            .server
            .enqueue_task(ID, TaskKind::Lock, Default::default(), self.now)
            .unwrap();
        let before = self.done;
        for _ in 0..20 {
            let step = self.now + Duration::from_mins(10);
            self.now = self.device.poll_timeout().map_or(step, |t| t.max(step));
            self.run();
            if self.executed.iter().any(|t| t.id == task) && self.done > before {
                return;
            }
        }
        panic!(
            "the engines did not recover: {:?}, device's next deadline {:?}",
            self.server.task_state(ID, task),
            self.device.poll_timeout()
        );
    }
}

fn frame_of<T: wire::Encode>(msg: &T) -> Vec<u8> {
    let mut buf = [0u8; MAX_FRAME];
    let n = frame::encode(msg, &mut buf).unwrap();
    buf[..n].to_vec()
}

fn payload_of<T: wire::Encode>(msg: &T) -> Vec<u8> {
    let mut buf = [0u8; 2 * MAX_FRAME];
    let n = wire::encode_payload(msg, &mut buf).unwrap();
    buf[..n].to_vec()
}

/// The session key set by the challenge frame `challenge`.
fn key_of(challenge: &[u8]) -> u32 {
    match wire::decode::<Down>(frame::payload(challenge)) {
        Ok(Down::Challenge { nonce, .. }) => frame::session_key(&nonce),
        other => panic!("not a challenge: {other:?}"),
    }
}

fn header(len: u16) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend_from_slice(&len.to_le_bytes());
    h
}

// ---- frames -------------------------------------------------------------------

#[test]
fn oversized_lengths_are_rejected_before_buffering() {
    for len in [0, MAX_PAYLOAD as u16 + 1, 4_000, u16::MAX] {
        let mut dec = FrameDecoder::<MAX_FRAME>::new();
        dec.push(&header(len));
        assert_eq!(
            dec.decode(),
            Some(Err(FrameError::BadLength { len: len.into() }))
        );
        assert!(
            dec.buffered() < 4,
            "len {len}: {} bytes kept",
            dec.buffered()
        );
    }
    // The device's decoder is sized for the largest Down message: a header
    // announcing more than that is refused at once, not waited for.
    let mut dec = FrameDecoder::<MAX_DOWN_FRAME>::new();
    let len = MAX_DOWN_PAYLOAD as u16 + 1;
    dec.push(&header(len));
    assert_eq!(
        dec.decode(),
        Some(Err(FrameError::BadLength { len: len.into() }))
    );
}

#[test]
fn an_oversized_header_does_not_swallow_the_frame_behind_it() {
    // Device: a bogus header, then the real challenge, which is answered.
    let mut l = Link::new();
    let hello = l.connect();
    l.server
        .handle_bytes(l.conn.unwrap(), &hello, l.now)
        .unwrap();
    let mut down = header(u16::MAX);
    down.extend(l.server_out());
    l.device.handle_bytes(&down, l.now).unwrap();
    let proof = l.device_out();
    assert!(
        !proof.is_empty(),
        "the challenge behind the bad header was lost"
    );

    // Server: a bogus header, then a real Hello, which is challenged.
    let mut l = Link::new();
    let mut up = header(MAX_PAYLOAD as u16 + 1);
    up.extend(l.connect());
    l.server.handle_bytes(l.conn.unwrap(), &up, l.now).unwrap();
    assert!(
        !l.server_out().is_empty(),
        "the hello behind the bad header was lost"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any bytes, in any chunking: typed results only, bounded buffer.
    #[test]
    fn frame_decoder_takes_any_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..2_000),
        chunk in 1usize..600,
    ) {
        let mut dec = FrameDecoder::<MAX_FRAME>::new();
        for mut part in bytes.chunks(chunk) {
            while !part.is_empty() {
                let n = dec.push(part);
                part = &part[n..];
                while let Some(r) = dec.decode() {
                    if let Ok(p) = r {
                        prop_assert!(!p.is_empty() && p.len() <= MAX_PAYLOAD);
                    }
                }
                prop_assert!(dec.buffered() <= MAX_FRAME);
            }
        }
    }

    /// Message decoding: a typed error or a message that encodes back to a
    /// payload that decodes to it again.
    #[test]
    fn payload_decoding_is_typed(payload in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = peek_version(&payload);
        let _ = decode_push(&payload);
        match wire::decode::<Up>(&payload) {
            Ok(m) => prop_assert_eq!(wire::decode::<Up>(&payload_of(&m)), Ok(m)),
            Err(e) => prop_assert!(matches!(e, DecodeError::Malformed | DecodeError::TrailingBytes)),
        }
        if let Ok(m) = wire::decode::<Down>(&payload) {
            prop_assert_eq!(wire::decode::<Down>(&payload_of(&m)), Ok(m));
        }
    }

    /// A device in any session state takes any frame payload: a typed error
    /// at worst, and the next sync works.
    #[test]
    fn device_takes_any_frame_then_recovers(
        payload in prop::collection::vec(any::<u8>(), 1..300),
        state in 0u8..3,
        raw in any::<bool>(),
    ) {
        let mut l = Link::new();
        let hello = l.connect();
        let mut key = 0;
        if state >= 1 {
            l.server.handle_bytes(l.conn.unwrap(), &hello, l.now).unwrap();
            let challenge = l.server_out();
            key = key_of(&challenge);
            l.device.handle_bytes(&challenge, l.now).unwrap();
        }
        if state == 2 {
            let proof = l.device_out();
            l.server.handle_bytes(l.conn.unwrap(), &proof, l.now).unwrap();
            let welcome = l.server_out();
            l.device.handle_bytes(&welcome, l.now).unwrap();
        }
        let bytes = if raw { payload } else { common::raw_frame(&payload, key) };
        match l.device.handle_bytes(&bytes, l.now) {
            Ok(()) | Err(DeviceError::Session(_)) | Err(DeviceError::NotConnected) => {}
            Err(e) => prop_assert!(false, "unexpected error {e:?}"),
        }
        l.run();
        l.recovers();
    }

    /// A server takes any frame payload on a connection in any phase: a
    /// typed error at worst, the session is closed cleanly, and the device
    /// syncs on a new connection.
    #[test]
    fn server_takes_any_frame_then_recovers(
        payload in prop::collection::vec(any::<u8>(), 1..600),
        state in 0u8..3,
        raw in any::<bool>(),
    ) {
        let mut l = Link::new();
        let hello = l.connect();
        let conn = l.conn.unwrap();
        let mut key = 0;
        if state >= 1 {
            l.server.handle_bytes(conn, &hello, l.now).unwrap();
            let challenge = l.server_out();
            key = key_of(&challenge);
            l.device.handle_bytes(&challenge, l.now).unwrap();
        }
        if state == 2 {
            let proof = l.device_out();
            l.server.handle_bytes(conn, &proof, l.now).unwrap();
        }
        let bytes = if raw { payload } else { common::raw_frame(&payload, key) };
        match l.server.handle_bytes(conn, &bytes, l.now) {
            Ok(()) | Err(ServerError::Peer(_)) => {}
            Err(e) => prop_assert!(false, "unexpected error {e:?}"),
        }
        prop_assert!(l.server.session_count() <= 1);
        l.run();
        l.recovers();
        prop_assert_eq!(l.server.session_count(), 0);
    }

    /// Snapshot restore from any bytes, with or without a valid CRC: a typed
    /// error or an engine within its bounds.
    #[test]
    fn restore_takes_any_bytes(
        mut bytes in prop::collection::vec(any::<u8>(), 0..700),
        fix_crc in any::<bool>(),
    ) {
        if fix_crc {
            let crc = crc32(&bytes);
            bytes.extend_from_slice(&crc.to_le_bytes());
        }
        let cfg = Link::new().cfg;
        if let Ok(d) = Device::<16, 4>::restore(cfg.clone(), &bytes, T0) {
            prop_assert!(d.outbox_len() <= 16);
            prop_assert!(snapshot_counter(&bytes).is_ok());
        }
        let _ = Device::<4, 2>::restore(cfg, &bytes, T0);
        let _ = pick_latest(&bytes, &bytes[bytes.len() / 2..]);
    }
}

// ---- snapshots ------------------------------------------------------------------

fn snapshot_of(l: &Link) -> Vec<u8> {
    let mut buf = vec![0u8; Device::<16, 4>::SNAPSHOT_MAX];
    let n = l.device.snapshot(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn malformed_snapshots_get_typed_errors() {
    let mut l = Link::new();
    l.server
        .enqueue_task(ID, TaskKind::Scan, Default::default(), l.now)
        .unwrap();
    l.run();
    let good = snapshot_of(&l);
    let restore = |b: &[u8]| Device::<16, 4>::restore(l.cfg.clone(), b, l.now).err();
    assert_eq!(restore(&good), None);
    assert_eq!(restore(&[]), Some(SnapshotError::TooShort));
    assert_eq!(restore(&good[..3]), Some(SnapshotError::TooShort));
    for cut in 4..good.len() {
        assert!(restore(&good[..cut]).is_some(), "torn at {cut} restored");
    }
    for bit in 0..good.len() * 8 {
        let mut flipped = good.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        assert!(restore(&flipped).is_some(), "bit {bit} flipped restored");
    }
    // A valid checksum around garbage (after this format's byte, 4), or
    // around another format.
    let garbage = [
        &[4u8, 0xFF, 0xFF][..],
        &crc32(&[4, 0xFF, 0xFF]).to_le_bytes(),
    ]
    .concat();
    assert!(matches!(restore(&garbage), Some(SnapshotError::Malformed)));
    let mut other_format = good[..good.len() - 4].to_vec();
    other_format[0] = 9;
    let crc = crc32(&other_format);
    other_format.extend_from_slice(&crc.to_le_bytes());
    assert_eq!(
        restore(&other_format),
        Some(SnapshotError::UnknownFormat(9))
    );
    // Another device's snapshot.
    let mut foreign = l.cfg.clone();
    foreign.id = DeviceId(8);
    let err = Device::<16, 4>::restore(foreign, &good, l.now).err();
    assert_eq!(err, Some(SnapshotError::Foreign));
}

#[test]
fn a_torn_newer_slot_falls_back_to_the_older_one() {
    let mut l = Link::new();
    l.run();
    let older = snapshot_of(&l);
    l.device
        .raise_compliance(wire::ComplianceEvent::ProfileChanged, l.now)
        .unwrap();
    assert_eq!(l.device.poll_event(), Some(Event::Persist));
    let newer = snapshot_of(&l);
    assert_eq!(pick_latest(&older, &newer), Some(&newer[..]));
    for keep in 0..newer.len() {
        let mut torn = newer[..keep].to_vec();
        torn.extend(older.iter().skip(keep));
        if torn != newer {
            assert_eq!(pick_latest(&older, &torn), Some(&older[..]), "keep {keep}");
        }
    }
    assert_eq!(pick_latest(&[0xFF; 40], &[]), None);
}

// ---- protocol-level bad input ----------------------------------------------------

#[test]
fn a_foreign_protocol_version_gets_a_clear_error_not_a_hang() {
    let mut l = Link::new();
    l.connect();
    let conn = l.conn.unwrap();
    // A Hello of version 9 whose body this version cannot even parse.
    let err = l
        .server
        .handle_bytes(conn, &common::raw_frame(&[0, 9, 0xFF, 0xFF], 0), l.now);
    assert!(matches!(err, Err(ServerError::Peer(_))), "{err:?}");
    // Input after the error is ignored while the error frame waits to go out.
    assert_eq!(l.server.handle_bytes(conn, b"more", l.now), Ok(()));
    let out = l.server_out();
    let msg = wire::decode::<Down>(&out[4..out.len() - 4]).unwrap();
    let want = wire::ErrorCode::VersionMismatch {
        supported: PROTOCOL_VERSION,
    };
    assert_eq!(msg, Down::Error(want));
    // Once the error frame is out, the session is gone.
    assert_eq!(l.server.session_count(), 0);
    assert_eq!(
        l.server.handle_bytes(conn, b"more", l.now),
        Err(ServerError::UnknownConnection)
    );
}

#[test]
fn bytes_for_an_idle_device_are_a_typed_error() {
    let mut l = Link::new();
    let err = l.device.handle_bytes(&frame_of(&Down::SyncEnd), l.now);
    assert_eq!(err, Err(DeviceError::NotConnected));
    l.recovers();
}

/// A peer that sends nothing but headers announcing whole frames makes the
/// decoder check a CRC over up to a whole frame per bad header. The server
/// closes such a connection after `max_frame_errors` frame errors (with
/// `BadMessage`).
#[test]
fn a_flood_of_bad_frames_closes_the_connection() {
    let mut l = Link::new();
    let conn = l.server.connection_opened(l.now).unwrap();
    let flood: Vec<u8> = [0xA5, 0x5A, 0x00, 0x02].repeat(1 << 18); // 1 MiB
    let err = l.server.handle_bytes(conn, &flood, l.now);
    assert_eq!(
        err,
        Err(ServerError::Peer(mdm_sync::server::PeerError::Malformed))
    );
    let mut buf = [0u8; 64];
    let n = l.server.poll_transmit_for(conn, &mut buf).unwrap();
    let msg = wire::decode::<Down>(frame::payload(&buf[..n])).unwrap();
    assert_eq!(msg, Down::Error(wire::ErrorCode::BadMessage));
    let closed =
        core::iter::from_fn(|| l.server.poll_event()).any(|e| e == ServerEvent::Close { conn });
    assert!(closed, "the connection is closed after the error frame");
    // A few frame errors (a noisy serial link) stay within the budget.
    let conn = l.server.connection_opened(l.now).unwrap();
    let noise: Vec<u8> = [0xA5, 0x5A, 0x00, 0x02].repeat(10);
    assert_eq!(l.server.handle_bytes(conn, &noise, l.now), Ok(()));
}
