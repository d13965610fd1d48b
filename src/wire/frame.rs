//! Framing for byte streams: `A5 5A | len (u16 LE) | payload | CRC-32 (LE)`.
//!
//! The CRC (CRC-32/ISO-HDLC) covers the two length bytes and the payload, so a
//! corrupted length is caught as surely as a corrupted payload. Lengths of 0 or
//! above the decoder's bound are rejected as soon as the header arrives, before
//! any payload is buffered. The decoder accepts bytes in any chunking and, after
//! garbage or a bad frame, drops one byte at a time and looks for the next
//! magic, so a stream cut or corrupted anywhere resynchronises on the next good
//! frame. The buffered bytes are rescanned, never discarded wholesale, so a good
//! frame that follows a bad header is not lost.
//!
//! After the `Challenge`, both sides XOR every frame's CRC with the session
//! key ([`session_key`], from the session's nonce; since protocol version 2).
//! A frame left over from an earlier session (a transport that keeps bytes
//! across connections, a proxy that replays them) then fails the check and
//! is dropped like a corrupted one. The `Challenge` itself echoes the
//! `Hello.attempt` it answers instead (version 3). The key is public, so this is no MAC: it
//! keeps sessions apart, and only TLS keeps an active attacker out.

use super::{Encode, EncodeError, MAX_PAYLOAD};

/// The two bytes that start every frame.
pub const MAGIC: [u8; 2] = [0xA5, 0x5A];
/// Bytes a frame adds around its payload: magic, length, CRC.
pub const OVERHEAD: usize = 8;
/// Largest frame on the wire.
pub const MAX_FRAME: usize = MAX_PAYLOAD + OVERHEAD;
const HEADER: usize = 4;

// A bitwise CRC needs no table (microcontroller flash); servers use tables:
// crc32fast's SIMD folding on long inputs (about five times the table crate's
// speed on snapshots), slicing-by-8 inline on short ones (below).
#[cfg(not(feature = "crc-table"))]
static CRC: crc::Crc<u32, crc::NoTable> = crc::Crc::<u32, crc::NoTable>::new(&crc::CRC_32_ISO_HDLC);

/// CRC-32/ISO-HDLC of `bytes`, as used by frames and snapshots.
#[cfg(not(feature = "crc-table"))]
pub fn crc32(bytes: &[u8]) -> u32 {
    CRC.checksum(bytes)
}

/// CRC-32/ISO-HDLC of `bytes`, as used by frames and snapshots.
///
/// Frames of an open session cover 6 to 40 bytes, written a byte at a time
/// by the encoder just before (or copied in just before, on the reading
/// side). Those go through slicing-by-8 tables here, inline, reading a byte
/// at a time: a wider load of bytes still in the store buffer from narrower
/// stores cannot take them from there and waits until they reach the cache
/// (a failed store-to-load forward). crc32fast read the 10 bytes of a task
/// offer as one 4-byte load and bytes, and its SIMD folding reads 16 at once:
/// that wait was about a third of the server's `send` in
/// `round_trip_profile` (perf, Xeon model 207), and reading bytes here took
/// the round trip from 314-327 ns to 305-311. From `SHORT_CRC_MAX` bytes on
/// (snapshots, 55 to 70 bytes in a round trip; `Hello`s with a push token)
/// crc32fast's folding wins even so: at 64, the snapshot written after a
/// task's status (about 55 bytes) went through the tables, 260
/// instructions where folding takes about 110, and the round trip took
/// 267 ns against 245 at 48 (21 alternated runs, LTO build).
#[cfg(feature = "crc-table")]
#[inline]
pub fn crc32(bytes: &[u8]) -> u32 {
    if bytes.len() >= SHORT_CRC_MAX {
        return crc32_long(bytes);
    }
    let [t0, t1, t2, t3, t4, t5, t6, t7] = &SHORT_CRC_TABLES;
    let mut crc = !0u32;
    let mut rest = bytes;
    // Byte loads only, for the reason in the docs above.
    let at = |t: &[u32; 256], b: u8, c: u32, shift: u32| t[usize::from(b ^ (c >> shift) as u8)];
    while let Some((b, tail)) = rest.split_first_chunk::<8>() {
        crc = at(t7, b[0], crc, 0)
            ^ at(t6, b[1], crc, 8)
            ^ at(t5, b[2], crc, 16)
            ^ at(t4, b[3], crc, 24)
            ^ t3[usize::from(b[4])]
            ^ t2[usize::from(b[5])]
            ^ t1[usize::from(b[6])]
            ^ t0[usize::from(b[7])];
        rest = tail;
    }
    if let Some((b, tail)) = rest.split_first_chunk::<4>() {
        crc = at(t3, b[0], crc, 0)
            ^ at(t2, b[1], crc, 8)
            ^ at(t1, b[2], crc, 16)
            ^ at(t0, b[3], crc, 24);
        rest = tail;
    }
    // The last 0 to 3 bytes at once: byte `j` of `k` is advanced by the
    // `k - 1 - j` zero bytes after it; the CRC's unread high bytes shift down.
    crc = match *rest {
        [] => crc,
        [a] => at(t0, a, crc, 0) ^ (crc >> 8),
        [a, b] => at(t1, a, crc, 0) ^ at(t0, b, crc, 8) ^ (crc >> 16),
        [a, b, c, ..] => at(t2, a, crc, 0) ^ at(t1, b, crc, 8) ^ at(t0, c, crc, 16) ^ (crc >> 24),
    };
    !crc
}

/// Inputs from this length on go to crc32fast (see [`crc32`]).
#[cfg(feature = "crc-table")]
const SHORT_CRC_MAX: usize = 48;

/// [`crc32`] of `SHORT_CRC_MAX` bytes or more, out of line.
#[cfg(feature = "crc-table")]
#[inline(never)]
fn crc32_long(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// Slicing-by-8 tables of the reflected polynomial: `[0]` is the byte-at-a-time
/// table, `[k]` advances a byte's contribution by `k` more zero bytes. 8 KiB,
/// servers only (crc32fast keeps its own copy: its tables are private).
#[cfg(feature = "crc-table")]
static SHORT_CRC_TABLES: [[u32; 256]; 8] = {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 1 == 1 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
            bit += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[k - 1][i];
            t[k][i] = (prev >> 8) ^ t[0][(prev & 0xFF) as usize];
            i += 1;
        }
        k += 1;
    }
    t
};

/// Why the decoder dropped bytes. After each error it has already resynchronised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum FrameError {
    /// Bytes before the next magic were skipped.
    Garbage {
        /// How many bytes were dropped.
        skipped: usize,
    },
    /// A header announced a length of 0 or above the bound.
    BadLength {
        /// The announced payload length.
        len: usize,
    },
    /// A whole frame arrived but its CRC did not match.
    BadCrc,
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FrameError::Garbage { skipped } => write!(f, "{skipped} bytes before a frame skipped"),
            FrameError::BadLength { len } => write!(f, "a frame announced a bad length ({len})"),
            FrameError::BadCrc => f.write_str("a frame's CRC did not match"),
        }
    }
}

impl core::error::Error for FrameError {}

/// The key that separates the frames of the session whose nonce is `nonce`:
/// its first four bytes, little-endian. Key 0 means no session (the frames
/// before and including the `Challenge`).
pub fn session_key(nonce: &[u8; 16]) -> u32 {
    u32::from_le_bytes([nonce[0], nonce[1], nonce[2], nonce[3]])
}

/// The payload of a whole frame as [`encode`] wrote it (empty if `frame` is
/// shorter than a frame's overhead).
pub fn payload(frame: &[u8]) -> &[u8] {
    frame
        .get(HEADER..frame.len().saturating_sub(4))
        .unwrap_or_default()
}

/// Writes `msg` as one frame into `out`; returns the frame's length. When `out`
/// is too small, the error says exactly how long the frame is (counted in the
/// same pass, so the message is serialized only once). Outside a session
/// (key 0); see [`encode_keyed`].
pub fn encode<T: Encode + ?Sized>(msg: &T, out: &mut [u8]) -> Result<usize, EncodeError> {
    encode_keyed(msg, out, 0)
}

/// [`encode`] for the session with key `key` (see [`session_key`]).
pub fn encode_keyed<T: Encode + ?Sized>(
    msg: &T,
    out: &mut [u8],
    key: u32,
) -> Result<usize, EncodeError> {
    encode_keyed_inline(msg, out, key)
}

/// [`encode_keyed`] inlined into its caller: the server's send path, which
/// frames every message it sends (a call's set-up costs about as much as
/// the framing around the payload). Firmware keeps the call.
#[inline(always)]
pub(crate) fn encode_keyed_inline<T: Encode + ?Sized>(
    msg: &T,
    out: &mut [u8],
    key: u32,
) -> Result<usize, EncodeError> {
    let room = out.len().saturating_sub(OVERHEAD).min(MAX_PAYLOAD);
    let body = out.get_mut(HEADER..HEADER + room).unwrap_or_default();
    let len = msg.encode(body);
    if len > MAX_PAYLOAD {
        return Err(EncodeError::TooLarge { len });
    }
    if len + OVERHEAD > out.len() {
        return Err(EncodeError::BufferTooSmall {
            needed: len + OVERHEAD,
        });
    }
    seal(out, len, key);
    Ok(len + OVERHEAD)
}

/// Writes header and CRC around a payload already placed at `out[4..4 + len]`.
/// Inlined where flash is not counted (`hand-encode`: servers, phones): a
/// frame of an open session is a few bytes, and the call cost as much as
/// the header it writes. Firmware keeps the call (28 bytes less at opt-level z).
#[cfg_attr(feature = "hand-encode", inline(always))]
fn seal(out: &mut [u8], len: usize, key: u32) {
    let [lo, hi] = (len as u16).to_le_bytes();
    out[..HEADER].copy_from_slice(&[MAGIC[0], MAGIC[1], lo, hi]);
    let crc = crc32(&out[2..HEADER + len]) ^ key;
    out[HEADER + len..HEADER + len + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Streaming frame decoder with an `N`-byte buffer (default: one largest frame).
///
/// Feed bytes with [`push`](Self::push), then call [`decode`](Self::decode)
/// until it returns `None`; repeat until the input is used up.
#[derive(Clone, Debug)]
pub struct FrameDecoder<const N: usize = MAX_FRAME> {
    buf: [u8; N],
    // The bytes not yet decoded are `buf[start..end]`. Decoding or dropping
    // bytes only moves `start`; `push` moves what is left to the front when it
    // needs the room.
    start: usize,
    end: usize,
    // XORed into every CRC checked (the session key; 0 outside a session).
    key: u32,
}

impl<const N: usize> Default for FrameDecoder<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> FrameDecoder<N> {
    /// Largest payload this decoder accepts.
    pub const MAX_PAYLOAD: usize = if N < OVERHEAD + MAX_PAYLOAD {
        N.saturating_sub(OVERHEAD)
    } else {
        MAX_PAYLOAD
    };

    // A buffer that cannot hold a header plus one payload byte could fill up
    // without ever deciding on a frame; such a decoder does not compile.
    const ROOM_FOR_A_FRAME: () = assert!(N > OVERHEAD, "FrameDecoder needs N > 8");

    /// An empty decoder.
    pub const fn new() -> Self {
        let () = Self::ROOM_FOR_A_FRAME;
        Self {
            buf: [0; N],
            start: 0,
            end: 0,
            key: 0,
        }
    }

    /// Forgets everything buffered and the session key (for a new connection).
    pub fn reset(&mut self) {
        self.start = 0;
        self.end = 0;
        self.key = 0;
    }

    /// Checks the frames decoded from now on against session key `key` (see
    /// [`session_key`]); frames already decoded are not affected.
    pub fn set_key(&mut self, key: u32) {
        self.key = key;
    }

    /// Bytes buffered and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Copies as much of `input` as fits; returns how many bytes were taken.
    /// Call [`decode`](Self::decode) until `None` before pushing the rest.
    pub fn push(&mut self, input: &[u8]) -> usize {
        if self.start == self.end {
            // Nothing left to keep: start over at the front, for free.
            self.start = 0;
            self.end = 0;
        } else if input.len() > N - self.end {
            self.compact();
        }
        let n = input.len().min(N - self.end);
        self.buf[self.end..self.end + n].copy_from_slice(&input[..n]);
        self.end += n;
        n
    }

    /// The next complete frame's payload, an error for bytes it had to drop,
    /// or `None` when more input is needed.
    pub fn decode(&mut self) -> Option<Result<&[u8], FrameError>> {
        if let Err(e) = self.sync_to_magic() {
            return Some(Err(e));
        }
        let data = &self.buf[self.start..self.end];
        match self.check(data)? {
            Ok(plen) => {
                let payload = self.start + HEADER..self.start + HEADER + plen;
                self.start += plen + OVERHEAD;
                Some(Ok(&self.buf[payload]))
            }
            Err(e) => {
                self.start += 1;
                Some(Err(e))
            }
        }
    }

    /// When nothing is buffered and `input` starts with a whole, intact frame:
    /// its payload, read where it is (no copy into the buffer), and `input`
    /// advanced past it. `None` for anything else (a partial frame, garbage, a
    /// bad frame, bytes already buffered), with `input` untouched: then
    /// [`push`](Self::push) it and [`decode`](Self::decode), which give the
    /// same frames and errors, in the same order, as without this call.
    pub fn decode_in_place<'a>(&self, input: &mut &'a [u8]) -> Option<&'a [u8]> {
        let data: &'a [u8] = input;
        if self.start != self.end || !data.starts_with(&MAGIC) {
            return None;
        }
        let plen = self.check(data)?.ok()?;
        let (frame, rest) = data.split_at_checked(plen + OVERHEAD)?;
        *input = rest;
        frame.get(HEADER..HEADER + plen)
    }

    /// Of `data`, which starts with the magic: the payload length of the whole,
    /// intact frame it starts with, the error that frame has, or `None` when
    /// its bytes have not all arrived.
    fn check(&self, data: &[u8]) -> Option<Result<usize, FrameError>> {
        let [_, _, lo, hi, ..] = *data else {
            return None;
        };
        let plen = usize::from(u16::from_le_bytes([lo, hi]));
        if plen == 0 || plen > Self::MAX_PAYLOAD {
            return Some(Err(FrameError::BadLength { len: plen }));
        }
        let (covered, crc) = data.get(..plen + OVERHEAD)?.split_last_chunk::<4>()?;
        if !crc_ok(crc32(&covered[2..]) ^ self.key, u32::from_le_bytes(*crc)) {
            return Some(Err(FrameError::BadCrc));
        }
        Some(Ok(plen))
    }

    /// Moves the bytes not yet decoded to the front of the buffer. A byte loop,
    /// not `copy_within`: that would link `memmove` (1.5 KB of Cortex-M flash)
    /// for a copy that happens once per buffer fill, not once per frame.
    fn compact(&mut self) {
        let len = self.end - self.start;
        for i in 0..len {
            self.buf[i] = self.buf[self.start + i];
        }
        self.start = 0;
        self.end = len;
    }

    /// Drops bytes before the first possible magic; a lone trailing `A5` stays.
    /// The first position is tried first: a frame is usually where one is
    /// expected.
    fn sync_to_magic(&mut self) -> Result<(), FrameError> {
        const M0: u8 = MAGIC[0];
        const M1: u8 = MAGIC[1];
        let data = &self.buf[self.start..self.end];
        let skip = (0..data.len())
            .find(|&i| matches!(data[i..], [M0, M1, ..] | [M0]))
            .unwrap_or(data.len());
        if skip == 0 {
            return Ok(());
        }
        self.start += skip;
        Err(FrameError::Garbage { skipped: skip })
    }
}

// By hand, not derived: the buffer's bytes are not worth a log line.
#[cfg(feature = "defmt")]
impl<const N: usize> defmt::Format for FrameDecoder<N> {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(
            f,
            "FrameDecoder {{ capacity: {}, buffered: {} }}",
            N,
            self.buffered()
        );
    }
}

// Fuzz builds accept a zero CRC field so the fuzzer can reach the message
// decoders behind the check; real builds never do.
#[cfg(fuzzing)]
fn crc_ok(got: u32, want: u32) -> bool {
    got == want || want == 0
}
#[cfg(not(fuzzing))]
fn crc_ok(got: u32, want: u32) -> bool {
    got == want
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server's CRC and the device's bitwise one agree on every length
    /// (short, table-only inputs and long, SIMD-folded ones) and alignment.
    #[test]
    fn fast_and_bitwise_crc_agree() {
        let bitwise = crc::Crc::<u32, crc::NoTable>::new(&crc::CRC_32_ISO_HDLC);
        let mut x = 0x9E37_79B9u32;
        let bytes: [u8; 1200] = core::array::from_fn(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        });
        for start in 0..4 {
            for len in 0..bytes.len() - start {
                let b = &bytes[start..start + len];
                assert_eq!(crc32(b), bitwise.checksum(b), "start {start}, len {len}");
            }
        }
    }

    proptest::proptest! {
        /// Random bytes (every table entry reachable) of every length around
        /// the short path's bound, at eight alignments.
        #[test]
        fn crc_equals_the_reference_on_random_bytes(
            buf in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
            start in 0usize..8,
        ) {
            let bitwise = crc::Crc::<u32, crc::NoTable>::new(&crc::CRC_32_ISO_HDLC);
            let start = start.min(buf.len());
            for end in start..=buf.len() {
                let b = &buf[start..end];
                proptest::prop_assert_eq!(crc32(b), bitwise.checksum(b), "{:?}", b);
            }
        }
    }

    fn frame(payload: &[u8]) -> heapless::Vec<u8, MAX_FRAME> {
        let mut out = heapless::Vec::new();
        out.extend_from_slice(&MAGIC).unwrap();
        out.extend_from_slice(&(payload.len() as u16).to_le_bytes())
            .unwrap();
        out.extend_from_slice(payload).unwrap();
        let crc = crc32(&out[2..]);
        out.extend_from_slice(&crc.to_le_bytes()).unwrap();
        out
    }

    /// Feeds `stream` in chunks of `chunk` bytes; returns payloads and error count.
    fn run(stream: &[u8], chunk: usize) -> (std::vec::Vec<std::vec::Vec<u8>>, usize) {
        let mut dec = FrameDecoder::<MAX_FRAME>::new();
        let (mut frames, mut errors) = (std::vec::Vec::new(), 0);
        for mut part in stream.chunks(chunk) {
            while !part.is_empty() {
                let n = dec.push(part);
                part = &part[n..];
                while let Some(r) = dec.decode() {
                    match r {
                        Ok(p) => frames.push(p.to_vec()),
                        Err(_) => errors += 1,
                    }
                }
            }
        }
        (frames, errors)
    }

    #[test]
    fn every_chunking_yields_the_same_frames() {
        let payloads: [&[u8]; 4] = [b"a", &[0xA5; 40], &[0x5A, 0xA5, 0x5A], &[7; MAX_PAYLOAD]];
        let mut stream = std::vec::Vec::new();
        for p in payloads {
            stream.extend_from_slice(&frame(p));
        }
        for chunk in 1..=stream.len() {
            let (frames, errors) = run(&stream, chunk);
            assert_eq!(errors, 0, "chunk {chunk}");
            assert_eq!(frames.len(), 4, "chunk {chunk}");
            for (f, p) in frames.iter().zip(payloads) {
                assert_eq!(f.as_slice(), p);
            }
        }
    }

    /// A decoder barely larger than its frames moves what it holds to the
    /// front again and again (overlapping moves included) and loses nothing.
    #[test]
    fn a_small_decoder_keeps_every_frame_in_every_chunking() {
        let mut stream = std::vec::Vec::new();
        let mut want = std::vec::Vec::new();
        for k in 1..=40u8 {
            let payload: std::vec::Vec<u8> = (0..k % 16 + 1).map(|i| i ^ k).collect();
            stream.extend_from_slice(&frame(&payload));
            stream.push(k); // one byte of garbage after each frame
            want.push(payload);
        }
        for chunk in 1..=30 {
            let mut dec = FrameDecoder::<24>::new();
            let mut got = std::vec::Vec::new();
            for mut part in stream.chunks(chunk) {
                while !part.is_empty() {
                    let n = dec.push(part);
                    assert!(n > 0 || dec.buffered() < 24, "chunk {chunk}: stuck");
                    part = &part[n..];
                    while let Some(r) = dec.decode() {
                        if let Ok(p) = r {
                            got.push(p.to_vec());
                        }
                    }
                }
            }
            assert_eq!(got, want, "chunk {chunk}");
        }
    }

    type Events = std::vec::Vec<Result<std::vec::Vec<u8>, FrameError>>;

    /// Feeds `stream` in chunks as the device does, whole frames read in
    /// place when `in_place`; returns what came out and how many frames were
    /// read in place.
    fn events(stream: &[u8], chunk: usize, in_place: bool) -> (Events, usize) {
        let mut dec = FrameDecoder::<64>::new();
        let (mut out, mut direct) = (Events::new(), 0);
        for mut part in stream.chunks(chunk) {
            loop {
                if let Some(p) = in_place.then(|| dec.decode_in_place(&mut part)).flatten() {
                    out.push(Ok(p.to_vec()));
                    direct += 1;
                } else if let Some(r) = dec.decode() {
                    out.push(r.map(<[u8]>::to_vec));
                } else if part.is_empty() {
                    break;
                } else {
                    let n = dec.push(part);
                    part = &part[n..];
                }
            }
        }
        (out, direct)
    }

    #[test]
    fn reading_in_place_gives_the_same_frames_and_errors() {
        let mut stream = std::vec::Vec::new();
        stream.extend_from_slice(&frame(b"one"));
        stream.extend_from_slice(b"\x00\xA5garbage");
        stream.extend_from_slice(&frame(b"two"));
        let mut bad = frame(b"three");
        bad[5] ^= 0x01;
        stream.extend_from_slice(&bad);
        stream.extend_from_slice(&[0xA5, 0x5A, 0, 0]); // length 0
        stream.extend_from_slice(&frame(&[0xA5; 40]));
        stream.extend_from_slice(&frame(&[9; 57])); // too long for the decoder
        stream.extend_from_slice(&frame(b"four"));
        for chunk in 1..=stream.len() {
            let (want, _) = events(&stream, chunk, false);
            let (got, _) = events(&stream, chunk, true);
            assert_eq!(got, want, "chunk {chunk}");
        }
        let (got, direct) = events(&stream, stream.len(), true);
        assert_eq!(direct, 1, "in one chunk, the first frame is read in place");
        assert_eq!(got.iter().filter(|e| e.is_ok()).count(), 4);
        let whole = [frame(b"a"), frame(b"b")].concat();
        assert_eq!(events(&whole, whole.len(), true).1, 2);
    }

    #[test]
    fn garbage_between_frames_is_skipped() {
        let mut stream = std::vec::Vec::new();
        stream.extend_from_slice(b"\x00\xA5\xA5garbage\x5A");
        stream.extend_from_slice(&frame(b"one"));
        stream.extend_from_slice(&[0xA5, 0x5A, 0xFF, 0xFF]); // bad length
        stream.extend_from_slice(&frame(b"two"));
        let mut bad = frame(b"three");
        bad[5] ^= 0x01; // flipped bit: CRC must catch it
        stream.extend_from_slice(&bad);
        stream.extend_from_slice(&frame(b"four"));
        for chunk in [1, 2, 3, 7, 64, stream.len()] {
            let (frames, errors) = run(&stream, chunk);
            let want: [&[u8]; 3] = [b"one", b"two", b"four"];
            assert_eq!(frames, want.map(|w| w.to_vec()), "chunk {chunk}");
            assert!(errors >= 3, "chunk {chunk}: {errors}");
        }
    }

    #[test]
    fn oversized_length_is_rejected_before_buffering() {
        let mut dec = FrameDecoder::<MAX_FRAME>::new();
        dec.push(&[0xA5, 0x5A, 0x01, 0x40]);
        assert_eq!(
            dec.decode(),
            Some(Err(FrameError::BadLength { len: 0x4001 }))
        );
        assert_eq!(dec.decode(), Some(Err(FrameError::Garbage { skipped: 3 })));
        assert_eq!(dec.decode(), None);
        assert_eq!(dec.buffered(), 0);
    }

    /// Any serializable value, encoded through serde.
    #[derive(serde::Serialize)]
    struct Any<T>(T);

    impl<T: serde::Serialize> Encode for Any<T> {}

    #[test]
    fn encode_reports_the_size_it_needs() {
        let mut small = [0u8; 6];
        assert_eq!(
            encode(&Any(7u32), &mut small),
            Err(EncodeError::BufferTooSmall { needed: 9 })
        );
        let mut buf = [0u8; 16];
        let n = encode(&Any(7u32), &mut buf).unwrap();
        assert_eq!(&buf[..n], frame(&[7]).as_slice());
        // Exact for every buffer that is too small, even by one byte.
        let msg = Any([0xABu8; 30]);
        for len in 0..38 {
            let mut out = [0u8; 38];
            let r = encode(&msg, &mut out[..len]);
            assert_eq!(r, Err(EncodeError::BufferTooSmall { needed: 38 }), "{len}");
        }
        let big: heapless::Vec<u8, 600> = core::iter::repeat_n(1, 600).collect();
        let mut out = [0u8; 1024];
        // Length varint (2 bytes) + 600 bytes.
        assert_eq!(
            encode(&Any(big), &mut out),
            Err(EncodeError::TooLarge { len: 602 })
        );
        // A buffer shorter than a frame's overhead is an error, not a panic.
        assert!(encode(&Any(()), &mut out[..7]).is_err());
    }

    /// A payload written as it is (`Encode` without serde's framing).
    struct Raw<'a>(&'a [u8]);

    impl serde::Serialize for Raw<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    impl Encode for Raw<'_> {
        fn encode(&self, out: &mut [u8]) -> usize {
            let n = self.0.len().min(out.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0.len()
        }
    }

    /// `encode_keyed` and the copy inlined in the server's send path write
    /// the header, payload and keyed CRC of every payload length up to the
    /// largest frame, into a buffer of exactly the frame or more, and refuse
    /// one byte less or one payload byte more.
    #[test]
    fn keyed_frames_of_every_length_inline_or_not() {
        let bytes: std::vec::Vec<u8> = (0..=MAX_PAYLOAD as u32).map(|i| (i * 7) as u8).collect();
        for key in [0, 1, 0xDEAD_BEEF] {
            for len in 1..=MAX_PAYLOAD {
                let mut want = frame(&bytes[..len]);
                let n = want.len();
                let crc = u32::from_le_bytes(want[n - 4..].try_into().unwrap()) ^ key;
                want[n - 4..].copy_from_slice(&crc.to_le_bytes());
                let msg = Raw(&bytes[..len]);
                for size in [n, MAX_FRAME, MAX_FRAME + 9] {
                    let mut a = std::vec![0xEEu8; size];
                    let mut b = std::vec![0x11u8; size];
                    assert_eq!(encode_keyed(&msg, &mut a, key), Ok(n), "{len} in {size}");
                    assert_eq!(encode_keyed_inline(&msg, &mut b, key), Ok(n));
                    assert_eq!((&a[..n], &b[..n]), (&want[..], &want[..]), "{len}");
                }
                let mut short = std::vec![0u8; n - 1];
                let too_small = Err(EncodeError::BufferTooSmall { needed: n });
                assert_eq!(encode_keyed(&msg, &mut short, key), too_small);
                assert_eq!(encode_keyed_inline(&msg, &mut short, key), too_small);
            }
            let over = Raw(&bytes[..MAX_PAYLOAD + 1]);
            let mut out = std::vec![0u8; 2 * MAX_FRAME];
            let too_large = Err(EncodeError::TooLarge {
                len: MAX_PAYLOAD + 1,
            });
            assert_eq!(encode_keyed(&over, &mut out, key), too_large);
            assert_eq!(encode_keyed_inline(&over, &mut out, key), too_large);
        }
    }
}
