//! `frame_decoder`: the streaming frame decoder on arbitrary bytes, in a
//! chunking the fuzzer chooses, under a session key.
//!
//! Input: mode (u8), key (u32), chunk plan (count u8 % 16, then that many
//! sizes, cycled; 0 or no plan means everything at once), then the stream.
//! Mode bit 1 clear: the decoder checks every CRC against `key`; set: against
//! 0 until the first payload comes out, then against `key` (a session: the
//! `Hello` or `Challenge` carries key 0, the frames after it the session key).
//! Mode bit 0 clear: the rest is raw bytes. Set: the rest is segments (kind
//! u8, length u16, bytes): kinds 0 and 2 are payloads the harness frames with
//! the key the decoder checks at that point, kind 1 garbage without any 0xA5
//! byte (so it cannot start a frame), kind 3 a payload framed with the other
//! key of the session (0 or `key`, a frame of another session; its 0xA5 bytes
//! are dropped, and it is left out if its header or CRC holds one).
//!
//! Invariants: no panic; the buffer never holds more than its bound; a
//! buffered header never announces a length out of bounds (rejected before
//! buffering); every payload is within bounds; the payloads do not depend on
//! the chunking; each payload framed again decodes to itself; in segment mode
//! exactly the payloads framed with the right key come out, in order (a frame
//! with another key is dropped whole, like garbage).

use mdm_sync::wire::frame::{MAGIC, OVERHEAD};
use mdm_sync::wire::{crc32, FrameDecoder, MAX_DOWN_FRAME, MAX_FRAME, MAX_PAYLOAD};

use crate::Input;

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.u8();
    let key = input.u32();
    let keys = Keys {
        first: if mode & 2 == 2 { 0 } else { key },
        then: key,
    };
    let count = input.u8() % 16;
    let plan: Vec<usize> = (0..count).map(|_| usize::from(input.u8())).collect();
    let rest = input.bytes(usize::MAX);
    if mode & 1 == 0 {
        raw(rest, &plan, keys);
    } else {
        segments(rest, &plan, keys);
    }
}

/// The key the decoder checks: `first` until a payload has come out, `then`
/// from there on.
#[derive(Clone, Copy)]
struct Keys {
    first: u32,
    then: u32,
}

impl Keys {
    /// The same key throughout.
    fn only(key: u32) -> Self {
        Self {
            first: key,
            then: key,
        }
    }

    /// The key checked after `decoded` payloads.
    fn after(self, decoded: usize) -> u32 {
        if decoded == 0 {
            self.first
        } else {
            self.then
        }
    }
}

fn raw(stream: &[u8], plan: &[usize], keys: Keys) {
    let chunked = decode_all::<MAX_FRAME>(stream, plan, keys);
    let whole = decode_all::<MAX_FRAME>(stream, &[], keys);
    assert_eq!(chunked, whole, "payloads depend on the chunking");
    for p in &chunked {
        round_trip(p, keys.then);
    }
    let small = decode_all::<MAX_DOWN_FRAME>(stream, plan, keys);
    assert_eq!(small, decode_all::<MAX_DOWN_FRAME>(stream, &[], keys));
}

fn segments(data: &[u8], plan: &[usize], keys: Keys) {
    let mut input = Input::new(data);
    let (mut stream, mut want) = (Vec::new(), Vec::new());
    while let Some(kind) = input.tag() {
        let len = usize::from(input.u16()) % (MAX_PAYLOAD + 64);
        let bytes = input.bytes(len);
        let key = keys.after(want.len());
        match kind % 4 {
            1 => stream.extend(bytes.iter().filter(|b| **b != MAGIC[0])),
            3 if key != key ^ keys.then => stream.extend(stale(bytes, key ^ keys.then)),
            _ if (1..=MAX_PAYLOAD).contains(&bytes.len()) => {
                stream.extend_from_slice(&frame(bytes, key));
                want.push(bytes.to_vec());
            }
            _ => {}
        }
    }
    assert_eq!(
        decode_all::<MAX_FRAME>(&stream, plan, keys),
        want,
        "framed payloads lost, or a frame with another key taken"
    );
}

/// A frame around `payload` without its 0xA5 bytes, with key `key`, if no
/// 0xA5 byte is left after its magic and its CRC field is not 0 (which fuzz
/// builds accept): a frame the decoder must drop whole under another key.
fn stale(payload: &[u8], key: u32) -> Vec<u8> {
    let payload: Vec<u8> = payload.iter().copied().filter(|b| *b != MAGIC[0]).collect();
    if !(1..=MAX_PAYLOAD).contains(&payload.len()) {
        return Vec::new();
    }
    let f = frame(&payload, key);
    let crc = &f[f.len() - 4..];
    if f[1..].contains(&MAGIC[0]) || crc == [0; 4] {
        return Vec::new();
    }
    f
}

/// A frame around `payload`, with a valid CRC for session key `key` (0: none).
pub fn frame(payload: &[u8], key: u32) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32(&out[2..]) ^ key;
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The length of the whole frame that `bytes` starts with, once its header
/// is there; panics if they do not start with a frame.
pub fn frame_len(bytes: &[u8]) -> Option<usize> {
    let header = bytes.get(..4)?;
    assert_eq!(header[..2], MAGIC, "not framed");
    Some(usize::from(u16::from_le_bytes([header[2], header[3]])) + OVERHEAD)
}

/// The payload of `bytes`, exactly one frame with a CRC for session key
/// `key`; panics if it is anything else.
pub fn unframe(bytes: &[u8], key: u32) -> &[u8] {
    assert_eq!(frame_len(bytes), Some(bytes.len()), "not one whole frame");
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    assert_eq!(
        crc,
        crc32(&body[2..]) ^ key,
        "a frame without the CRC of key {key:#x}"
    );
    &body[4..]
}

fn round_trip(payload: &[u8], key: u32) {
    let again = decode_all::<MAX_FRAME>(&frame(payload, key), &[1], Keys::only(key));
    assert_eq!(
        again,
        [payload.to_vec()],
        "a payload does not survive framing"
    );
}

/// Decodes `stream` pushed in the chunks of `plan`, checking the bounds.
fn decode_all<const N: usize>(stream: &[u8], plan: &[usize], keys: Keys) -> Vec<Vec<u8>> {
    let mut dec = FrameDecoder::<N>::new();
    dec.set_key(keys.first);
    let mut pushed: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    let mut rest = stream;
    let mut k = 0;
    while !rest.is_empty() {
        let size = match plan.get(k % plan.len().max(1)) {
            Some(&s) if s > 0 => s,
            _ => rest.len(),
        };
        k += 1;
        let mut part = &rest[..size.min(rest.len())];
        rest = &rest[part.len()..];
        while !part.is_empty() {
            let n = dec.push(part);
            pushed.extend_from_slice(&part[..n]);
            part = &part[n..];
            assert!(dec.buffered() <= N, "decoder holds more than its buffer");
            drain(&mut dec, &pushed, &mut out, keys);
        }
    }
    out
}

fn drain<const N: usize>(
    dec: &mut FrameDecoder<N>,
    pushed: &[u8],
    out: &mut Vec<Vec<u8>>,
    keys: Keys,
) {
    loop {
        match dec.decode() {
            Some(Ok(p)) => {
                assert!(!p.is_empty() && p.len() <= FrameDecoder::<N>::MAX_PAYLOAD);
                out.push(p.to_vec());
                dec.set_key(keys.after(out.len()));
            }
            Some(Err(_)) => {}
            None => break,
        }
        assert!(dec.buffered() <= N);
    }
    // What waits for more input is a prefix of a possible frame.
    let held = &pushed[pushed.len() - dec.buffered()..];
    match held {
        [] => {}
        [first] => assert_eq!(*first, MAGIC[0], "a stray byte stays buffered"),
        [a, b, rest @ ..] => {
            assert_eq!([*a, *b], MAGIC, "buffered bytes do not start with a frame");
            if let [lo, hi, ..] = rest {
                let len = usize::from(u16::from_le_bytes([*lo, *hi]));
                assert!(
                    (1..=FrameDecoder::<N>::MAX_PAYLOAD).contains(&len),
                    "a header announcing {len} bytes was buffered"
                );
                assert!(
                    held.len() < len + OVERHEAD,
                    "a whole frame is left undecoded"
                );
            }
        }
    }
}
