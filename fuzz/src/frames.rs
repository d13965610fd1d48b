//! `frame_decoder`: the streaming frame decoder on arbitrary bytes, in a
//! chunking the fuzzer chooses.
//!
//! Input: mode (u8), chunk plan (count u8 % 16, then that many sizes, cycled;
//! 0 or no plan means everything at once), then the stream. Mode even: the
//! rest is raw bytes. Mode odd: the rest is segments (kind u8, length u16,
//! bytes): even kinds are payloads the harness frames with a valid CRC, odd
//! kinds garbage without any 0xA5 byte (so it cannot start a frame).
//!
//! Invariants: no panic; the buffer never holds more than its bound; a
//! buffered header never announces a length out of bounds (rejected before
//! buffering); every payload is within bounds; the payloads do not depend on
//! the chunking; each payload framed again decodes to itself; in segment mode
//! exactly the framed payloads come out, in order.

use mdm_sync::wire::frame::{MAGIC, OVERHEAD};
use mdm_sync::wire::{crc32, FrameDecoder, MAX_DOWN_FRAME, MAX_FRAME, MAX_PAYLOAD};

use crate::Input;

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.u8();
    let count = input.u8() % 16;
    let plan: Vec<usize> = (0..count).map(|_| usize::from(input.u8())).collect();
    let rest = input.bytes(usize::MAX);
    if mode.is_multiple_of(2) {
        raw(rest, &plan);
    } else {
        segments(rest, &plan);
    }
}

fn raw(stream: &[u8], plan: &[usize]) {
    let chunked = decode_all::<MAX_FRAME>(stream, plan);
    let whole = decode_all::<MAX_FRAME>(stream, &[]);
    assert_eq!(chunked, whole, "payloads depend on the chunking");
    for p in &chunked {
        round_trip(p);
    }
    let small = decode_all::<MAX_DOWN_FRAME>(stream, plan);
    assert_eq!(small, decode_all::<MAX_DOWN_FRAME>(stream, &[]));
}

fn segments(data: &[u8], plan: &[usize]) {
    let mut input = Input::new(data);
    let (mut stream, mut want) = (Vec::new(), Vec::new());
    while let Some(kind) = input.tag() {
        let len = usize::from(input.u16()) % (MAX_PAYLOAD + 64);
        let bytes = input.bytes(len);
        if kind % 2 == 1 {
            stream.extend(bytes.iter().filter(|b| **b != MAGIC[0]));
        } else if (1..=MAX_PAYLOAD).contains(&bytes.len()) {
            stream.extend_from_slice(&frame(bytes));
            want.push(bytes.to_vec());
        }
    }
    assert_eq!(
        decode_all::<MAX_FRAME>(&stream, plan),
        want,
        "framed payloads lost"
    );
}

/// A frame around `payload`, with a valid CRC.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32(&out[2..]);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn round_trip(payload: &[u8]) {
    let again = decode_all::<MAX_FRAME>(&frame(payload), &[1]);
    assert_eq!(
        again,
        [payload.to_vec()],
        "a payload does not survive framing"
    );
}

/// Decodes `stream` pushed in the chunks of `plan`, checking the bounds.
fn decode_all<const N: usize>(stream: &[u8], plan: &[usize]) -> Vec<Vec<u8>> {
    let mut dec = FrameDecoder::<N>::new();
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
            drain(&mut dec, &pushed, &mut out);
        }
    }
    out
}

fn drain<const N: usize>(dec: &mut FrameDecoder<N>, pushed: &[u8], out: &mut Vec<Vec<u8>>) {
    loop {
        match dec.decode() {
            Some(Ok(p)) => {
                assert!(!p.is_empty() && p.len() <= FrameDecoder::<N>::MAX_PAYLOAD);
                out.push(p.to_vec());
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
