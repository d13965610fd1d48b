//! An authenticated device cannot hold its session open for good by
//! trickling bytes: each byte resets the idle timeout, so without a cap a
//! frame sent one byte a minute kept the connection (one of
//! `max_sessions`) for hours. The server ends a session `max_session` after
//! the connection opened (10 min by default), whatever arrives, with a
//! `Timeout` error, and closes it. A device engine never needs that long: it
//! ends waiting `linger + 3 × response_timeout` (135 s) after connecting.

mod common;

use common::{raw_frame, raw_handshake, server};
use mdm_sync::server::{ServerConfig, ServerEvent};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::{self, DeviceId, Down, ErrorCode, FrameDecoder, Up};

#[test]
fn a_trickling_device_is_cut_off_max_session_after_it_connected() {
    let mut s = server();
    let id = DeviceId(5);
    let t0 = Instant::from_millis(1_000);
    let secret = s.enroll(id, t0).unwrap();
    let (conn, key, answer) = raw_handshake(&mut s, id, &secret, t0);
    answer.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Some(n) = s.poll_transmit_for(conn, &mut buf) {
        out.extend_from_slice(&buf[..n]);
    }
    // A progress frame for a task that does not exist, one byte a minute:
    // well inside the idle timeout (2 min) each time.
    let mut payload = [0u8; 64];
    let progress = Up::Progress {
        task: wire::TaskId(77),
        percent: Some(1),
    };
    let n = wire::encode_payload(&progress, &mut payload).unwrap();
    let frame = raw_frame(&payload[..n], key);
    let cap = ServerConfig::default().max_session;
    assert_eq!(cap, Duration::from_mins(10));
    let mut closed_at = None;
    for minute in 1..=120u64 {
        let now = t0 + Duration::from_mins(minute);
        s.handle_timeout(now).unwrap();
        while let Some(ev) = s.poll_event() {
            if ev == (ServerEvent::Close { conn }) {
                closed_at.get_or_insert(minute);
            }
        }
        while let Some(n) = s.poll_transmit_for(conn, &mut buf) {
            out.extend_from_slice(&buf[..n]);
        }
        if closed_at.is_some() {
            break;
        }
        let byte = (minute as usize - 1) % frame.len();
        let _ = s.handle_bytes(conn, &frame[byte..=byte], now);
    }
    let closed = closed_at.expect("the session is never closed");
    // Timed out at the cap (10 min), closed once the error had its time to
    // go out (one more idle timeout at most).
    assert!((10..=13).contains(&closed), "closed after {closed} min");
    let mut dec = FrameDecoder::<600>::new();
    dec.set_key(key);
    let (mut rest, mut last) = (&out[..], None);
    while !rest.is_empty() {
        rest = &rest[dec.push(rest)..];
        while let Some(f) = dec.decode() {
            let f = f.unwrap();
            last = Some(wire::decode::<Down>(f).unwrap());
        }
    }
    assert_eq!(last, Some(Down::Error(ErrorCode::Timeout)));
}
