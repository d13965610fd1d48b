//! A server that never ends the first burst of a session (no `SyncEnd`) but
//! sends a stray frame (an `Ack` of nothing new) a little more often than the
//! device's `response_timeout` holds the device in that one session for as
//! long as it likes: the device counts every whole frame as the server's
//! answer (PROTOCOL.md 7.3) and has no bound on a session's length. Meanwhile
//! nothing else syncs: compliance events raised during the session are sent
//! on it and never acknowledged, and no later trigger gets a session of its
//! own. A buggy server, or anyone on the path (the session key is public,
//! PROTOCOL.md 16), can do this.
//!
//! What the test expects: a device session ends, as failed, within a bound
//! derived from the device's own timers: the `linger` a finished exchange may
//! stay open plus a few `response_timeout`s.

use mdm_sync::device::{Device, DeviceConfig, Event};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::{self, frame, DeviceId, Down, Platform, Up, PROTOCOL_VERSION};

/// Drains the device's events; returns whether the session ended (a
/// `SyncDone`, `SyncFailed` or `Disconnect`).
fn drain(d: &mut Device, now: Instant) -> bool {
    let mut ended = false;
    while let Some(ev) = d.poll_event() {
        match ev {
            Event::Connect => d.connected(now),
            Event::SyncDone { .. } | Event::SyncFailed { .. } | Event::Disconnect => ended = true,
            _ => {}
        }
    }
    ended
}

/// Frames the device sends, decoded.
fn sent(d: &mut Device) -> Vec<Up> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    let mut dec = wire::FrameDecoder::<1024>::new();
    while let Some(n) = d.poll_transmit(&mut buf).unwrap() {
        dec.push(&buf[..n]);
        // The Hello is unkeyed; later frames are keyed, which this decoder
        // (key 0) rejects: only the Hello is read here.
        if let Some(Ok(p)) = dec.decode() {
            if let Ok(m) = wire::decode::<Up>(p) {
                out.push(m);
            }
        }
        dec.reset();
    }
    out
}

#[test]
fn stray_acks_without_sync_end_do_not_hold_a_session_forever() {
    let cfg = DeviceConfig::new(DeviceId(1), 0, [3; 32], Platform::Android);
    let timers = cfg.timers;
    let mut now = Instant::from_millis(1_000);
    let mut d: Device = Device::new(cfg, now);
    d.handle_timeout(now);
    assert!(!drain(&mut d, now));
    // The hostile server: answers the Hello's attempt with a challenge.
    let hello = sent(&mut d)
        .into_iter()
        .find_map(|m| match m {
            Up::Hello(h) => Some(h),
            _ => None,
        })
        .expect("a Hello");
    let nonce = [9u8; 16];
    let key = frame::session_key(&nonce);
    let mut buf = [0u8; 600];
    let challenge = Down::Challenge {
        version: PROTOCOL_VERSION,
        attempt: hello.attempt,
        nonce,
    };
    let n = frame::encode(&challenge, &mut buf).unwrap();
    d.handle_bytes(&buf[..n], now).unwrap();
    drain(&mut d, now);
    let _ = sent(&mut d); // the proof, unchecked by this server
    let welcome = Down::Welcome {
        ack: 0,
        periodic_s: 0,
        want_token: false,
    };
    let n = frame::encode_keyed(&welcome, &mut buf, key).unwrap();
    d.handle_bytes(&buf[..n], now).unwrap();
    assert!(!drain(&mut d, now));
    assert!(d.is_connected(), "the session is open");

    // Then an Ack of nothing new every half response timeout, no SyncEnd.
    let step = Duration::from_millis(timers.response_timeout.as_millis() / 2);
    let bound = timers.linger + timers.response_timeout.saturating_mul(4);
    let start = now;
    let mut ended_at = None;
    // Ten bounds' worth of stray frames at most (bounded loop).
    let steps = 10 * bound.as_millis() / step.as_millis();
    for _ in 0..steps {
        now = now + step;
        d.handle_timeout(now);
        if drain(&mut d, now) || !d.is_connected() {
            ended_at = Some(now);
            break;
        }
        let _ = sent(&mut d);
        let n = frame::encode_keyed(&Down::Ack { seq: 0 }, &mut buf, key).unwrap();
        let _ = d.handle_bytes(&buf[..n], now);
        if drain(&mut d, now) || !d.is_connected() {
            ended_at = Some(now);
            break;
        }
    }
    let held = ended_at.map(|t| t.saturating_since(start));
    assert!(
        held.is_some_and(|h| h <= bound),
        "the session was held open {held:?} (None: still open after {} ms); bound {} ms",
        steps * step.as_millis(),
        bound.as_millis()
    );
}
