//! The server's CRC (slicing-by-8 below 64 bytes, crc32fast from there, with
//! feature `crc-table`) against the device's bitwise one (crate `crc`, no
//! table, as a `--no-default-features` build computes it): every length
//! 0..200 at eight alignments, and frames crossing both ways, so a frame
//! written by one build is taken by the other. Under `--no-default-features`
//! the same test checks the bitwise build against itself and the frames.

use mdm_sync::wire::{self, frame, DeviceId, FrameDecoder, Hello, Platform, SyncTrigger, Up};

static BITWISE: crc::Crc<u32, crc::NoTable> =
    crc::Crc::<u32, crc::NoTable>::new(&crc::CRC_32_ISO_HDLC);

/// Bytes that are not a pattern a wrong table index could still get right
/// (a xorshift stream).
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn every_length_and_alignment_agrees_with_the_bitwise_crc() {
    let buf = noise(200 + 8, 0x5eed);
    for start in 0..8 {
        for len in 0..200 {
            let bytes = &buf[start..start + len];
            assert_eq!(
                wire::crc32(bytes),
                BITWISE.checksum(bytes),
                "length {len} at offset {start}"
            );
        }
    }
    // All-zero and all-ones inputs (an unreflected or uncomplemented CRC
    // differs there first).
    for len in 0..200 {
        for fill in [0x00u8, 0xFF] {
            let bytes = vec![fill; len];
            assert_eq!(
                wire::crc32(&bytes),
                BITWISE.checksum(&bytes),
                "{len} x {fill:#x}"
            );
        }
    }
}

/// A frame around `payload` whose CRC the bitwise implementation computed,
/// for session `key`, as a device's `--no-default-features` build would send.
fn bitwise_frame(payload: &[u8], key: u32) -> Vec<u8> {
    let mut f = frame::MAGIC.to_vec();
    f.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    f.extend_from_slice(payload);
    let crc = BITWISE.checksum(&f[2..]) ^ key;
    f.extend_from_slice(&crc.to_le_bytes());
    f
}

#[test]
fn frames_with_a_bitwise_crc_are_taken_and_any_flipped_bit_is_refused() {
    let key = 0x9E37_79B9;
    for len in 1..=80 {
        let payload = noise(len, len as u64 * 31 + 7);
        let good = bitwise_frame(&payload, key);
        for offset in 0..8 {
            // In place and through the buffer, at an odd alignment in the
            // caller's slice.
            let mut padded = vec![0u8; offset];
            padded.extend_from_slice(&good);
            let mut input = &padded[offset..];
            let mut dec = FrameDecoder::<{ wire::MAX_FRAME }>::new();
            dec.set_key(key);
            assert_eq!(
                dec.decode_in_place(&mut input),
                Some(&payload[..]),
                "len {len}"
            );
            assert!(input.is_empty());
            dec.push(&padded[offset..]);
            assert_eq!(dec.decode(), Some(Ok(&payload[..])), "len {len}");
        }
        // One flipped bit of length, payload or CRC: refused.
        for bit in (16..good.len() * 8).step_by(3) {
            let mut bad = good.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let mut dec = FrameDecoder::<{ wire::MAX_FRAME }>::new();
            dec.set_key(key);
            dec.push(&bad);
            while let Some(r) = dec.decode() {
                assert!(r.is_err(), "len {len}, bit {bit} flipped, taken");
            }
        }
    }
}

/// The other way: frames this build encodes (payloads of 31 to 235 bytes,
/// so the covered bytes cross the short path's bound one by one) carry the
/// CRC the bitwise implementation computes.
#[test]
fn frames_this_build_writes_carry_the_bitwise_crc() {
    let key = 0x0102_0304;
    let mut seen = std::collections::BTreeSet::new();
    for token_len in 0..=wire::PUSH_TOKEN_MAX {
        let token: String = noise(token_len, token_len as u64)
            .iter()
            .map(|b| char::from(b'a' + b % 26))
            .collect();
        let hello = Up::Hello(Hello {
            version: wire::PROTOCOL_VERSION,
            attempt: 3,
            device: DeviceId(0x1234_5678),
            generation: 2,
            platform: Platform::Ios,
            push_token: heapless::String::try_from(token.as_str()).unwrap(),
            trigger: SyncTrigger::Periodic,
            last_task_seq: u32::MAX,
            policy_version: 9,
        });
        let mut buf = [0u8; wire::MAX_FRAME];
        for k in [0, key] {
            let n = frame::encode_keyed(&hello, &mut buf, k).unwrap();
            let covered = &buf[2..n - 4];
            seen.insert(covered.len());
            let crc = u32::from_le_bytes(buf[n - 4..n].try_into().unwrap());
            assert_eq!(
                crc,
                BITWISE.checksum(covered) ^ k,
                "{} bytes covered",
                covered.len()
            );
        }
    }
    // Every covered length across the short path's bound was tried.
    assert!((40..=90).all(|l| seen.contains(&l)), "{seen:?}");
}
