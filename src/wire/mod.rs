//! The wire format: message types (serde + postcard) and the frame codec.
//!
//! Every message travels as one frame (see [`frame`]). The payload is the
//! postcard encoding of an [`Up`] (device to server) or [`Down`] (server to
//! device) message. The bounds below are part of the protocol: both sides must
//! agree on them, and `PROTOCOL.md` lists them with the message catalogue.

mod codec;
#[cfg(feature = "hand-encode")]
mod encode;
pub mod frame;
mod msg;
mod ser;

pub(crate) use codec::is_report_body;
#[cfg(feature = "alloc")]
pub(crate) use codec::{hello_into, session_up, SessionUp};
pub(crate) use codec::{session_down, SessionDown};
pub use frame::{crc32, FrameDecoder, FrameError, MAX_FRAME};
pub use msg::*;
pub(crate) use ser::{Out, Piece, Writer};

use serde::ser::{SerializeStructVariant, SerializeTuple, Serializer};
use serde::{de::DeserializeOwned, Serialize};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 6;
/// Largest payload of one frame, in bytes.
pub const MAX_PAYLOAD: usize = 512;
/// Longest push token (FCM tokens are about 160 bytes, APNs tokens 64).
pub const PUSH_TOKEN_MAX: usize = 200;
/// Most settings in one policy.
pub const MAX_SETTINGS: usize = 16;
/// Most failed settings in one policy report.
pub const MAX_POLICY_FAILURES: usize = 4;
/// Largest payload of a server-to-device message ([`Down`]): a policy with
/// [`MAX_SETTINGS`] settings and every varint at its longest (tag 1, version 5,
/// count 1, per setting key 3 + value 10). A device's decoder needs no more.
pub const MAX_DOWN_PAYLOAD: usize = 1 + 5 + 1 + MAX_SETTINGS * (3 + 10);
/// Largest frame of a server-to-device message: the device's decoder buffer.
pub const MAX_DOWN_FRAME: usize = MAX_DOWN_PAYLOAD + frame::OVERHEAD;
/// Largest encoded [`ReportBody`]: a policy report with [`MAX_POLICY_FAILURES`]
/// failures and every varint at its longest (tag 1, version 5, outcome tag 1,
/// count 1, per failure key 3 + reason 3). The device keeps its outbox reports
/// encoded, in this many bytes each.
pub const MAX_REPORT_BODY: usize = 1 + 5 + 1 + 1 + MAX_POLICY_FAILURES * (3 + 3);

/// Whether sequence number `a` comes after `b`, on a circle of 2^32 (so that
/// wrapping after four billion reports or tasks does not stall anything).
pub fn seq_newer(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < 1 << 31
}

/// Why a message could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum EncodeError {
    /// The output buffer is too small; `needed` bytes would do.
    BufferTooSmall {
        /// Bytes the whole frame needs.
        needed: usize,
    },
    /// The message is larger than [`MAX_PAYLOAD`] and cannot be framed at all.
    TooLarge {
        /// Its encoded length.
        len: usize,
    },
}

impl core::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            EncodeError::BufferTooSmall { needed } => {
                write!(
                    f,
                    "the output buffer is too small: the frame needs {needed} bytes"
                )
            }
            EncodeError::TooLarge { len } => {
                write!(
                    f,
                    "a {len}-byte message is larger than a frame's {MAX_PAYLOAD}"
                )
            }
        }
    }
}

impl core::error::Error for EncodeError {}

/// Why a frame's payload is not a valid message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum DecodeError {
    /// The payload does not decode as a message of this direction.
    Malformed,
    /// The payload decoded but bytes were left over.
    TrailingBytes,
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            DecodeError::Malformed => "the payload is not a message of this direction",
            DecodeError::TrailingBytes => "the payload has bytes after its message",
        })
    }
}

impl core::error::Error for DecodeError {}

/// A type [`decode`] reads: the postcard encoding of its serde form.
pub trait Decode: DeserializeOwned {
    /// Decodes one value from a frame payload, rejecting trailing bytes.
    fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        decode_postcard(payload)
    }
}

/// By hand for the messages of an open session (see `codec`).
impl Decode for Down {
    fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        codec::decode_down(payload)
    }
}

/// By hand for the messages of an open session (see `codec`).
impl Decode for Up {
    fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        codec::decode_up(payload)
    }
}

impl Decode for ReportBody {}

/// Decodes one message from a frame payload, rejecting trailing bytes.
pub fn decode<T: Decode>(payload: &[u8]) -> Result<T, DecodeError> {
    T::decode(payload)
}

/// [`decode`] through postcard and the derived `Deserialize`.
fn decode_postcard<T: DeserializeOwned>(payload: &[u8]) -> Result<T, DecodeError> {
    match postcard::take_from_bytes::<T>(payload) {
        Ok((msg, [])) => Ok(msg),
        Ok(_) => Err(DecodeError::TrailingBytes),
        Err(_) => Err(DecodeError::Malformed),
    }
}

/// A type [`encode_payload`] and [`frame::encode`] write: the postcard
/// encoding of its serde form (PROTOCOL.md, section 3).
///
/// With the `hand-encode` feature (on with `std`), `Up`, `Down` and
/// [`ReportBody`] write the messages of an open session by hand and the rest
/// through serde; without it, and for any other type that keeps the provided
/// method, everything goes through serde. The bytes are the same either way.
pub trait Encode: Serialize {
    /// Writes the postcard encoding of `self` into `out` as far as it fits and
    /// returns its whole length, also when that is more than `out.len()` (then
    /// `out` holds only a part of it); `usize::MAX` if it cannot be encoded at
    /// all (a sequence of unknown length). One pass tells both the bytes and,
    /// when they do not fit, how many are needed.
    fn encode(&self, out: &mut [u8]) -> usize {
        encode_serde(self, out)
    }
}

/// `Encode` for the message types that the `encode` module writes by hand
/// with the `hand-encode` feature; through serde without it.
macro_rules! hand_encoded {
    ($($msg:ty => $hand:path),*) => {$(
        impl Encode for $msg {
            #[cfg(feature = "hand-encode")]
            #[inline]
            fn encode(&self, out: &mut [u8]) -> usize {
                $hand(self, out)
            }
        }
    )*};
}

hand_encoded!(
    Down => encode::down,
    Up => encode::up,
    ReportBody => encode::report_body
);

/// Encodes one message as a bare postcard payload (no frame) into `out`;
/// returns its length. When `out` is too small, the error says how many bytes
/// the payload needs.
pub fn encode_payload<T: Encode + ?Sized>(msg: &T, out: &mut [u8]) -> Result<usize, EncodeError> {
    match msg.encode(out) {
        n if n <= out.len() => Ok(n),
        needed => Err(EncodeError::BufferTooSmall { needed }),
    }
}

/// A task's status as it ends an encoded `ReportBody::Task` (its tag and the
/// task id come first), into `out`: its length, also when longer than `out`
/// (see [`Encode::encode`]). By hand: `hand-encode` only.
#[cfg(feature = "hand-encode")]
pub(crate) fn encode_task_status(status: &TaskStatus, out: &mut [u8]) -> usize {
    encode::task_status(status, out)
}

/// [`Encode::encode`] through the serde serializer (`ser`), for any
/// serializable value.
pub(crate) fn encode_serde<T: Serialize + ?Sized>(msg: &T, out: &mut [u8]) -> usize {
    let mut w = ser::Writer::new(out);
    match msg.serialize(&mut w) {
        Ok(()) => w.len,
        Err(_) => usize::MAX,
    }
}

/// [`Up::Report`] with its body already encoded (the postcard bytes of a
/// [`ReportBody`]): serializes to exactly the bytes of that `Up::Report`, so the
/// device keeps its reports encoded and neither decodes nor re-encodes them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct EncodedReport<'a> {
    pub(crate) seq: u32,
    /// The body is the first `len` of these bytes (all of them if fewer).
    pub(crate) body: &'a [u8; MAX_REPORT_BODY],
    pub(crate) len: usize,
}

impl EncodedReport<'_> {
    fn body(&self) -> &[u8] {
        self.body.get(..self.len).unwrap_or(self.body)
    }
}

/// `Up::Report`'s variant index (the order of `Up`'s variants is frozen).
const UP_REPORT: u32 = 3;
/// The first byte of an encoded [`ReportBody::Task`]: its variant index.
pub(crate) const REPORT_TASK: u8 = 0;
/// The first byte of an encoded [`ReportBody::Compliance`]: its variant index.
pub(crate) const REPORT_COMPLIANCE: u8 = 1;

/// By hand, with or without `hand-encode`: `Up::Report`'s tag, the sequence
/// number, the body as it is (no larger in flash than the serde path).
/// With `hand-encode`, written as one piece (see `Writer::piece`): the whole
/// body array is copied at once when `out` has room for it, so bytes of `out`
/// after the report may be overwritten too (scratch).
impl Encode for EncodedReport<'_> {
    #[inline]
    fn encode(&self, out: &mut [u8]) -> usize {
        let mut w = ser::Writer::new(out);
        #[cfg(feature = "hand-encode")]
        w.piece::<{ 6 + MAX_REPORT_BODY }, _>(self);
        #[cfg(not(feature = "hand-encode"))]
        {
            w.push(UP_REPORT as u8);
            w.varint(self.seq.into());
            w.bytes(self.body());
        }
        w.len()
    }
}

#[cfg(feature = "hand-encode")]
impl ser::Piece for EncodedReport<'_> {
    #[inline(always)]
    fn write<O: ser::Out>(&self, w: &mut O) {
        w.push(UP_REPORT as u8);
        w.varint32(self.seq);
        w.array(self.body, self.len);
    }
}

impl Serialize for EncodedReport<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut v = s.serialize_struct_variant("Up", UP_REPORT, "Report", 2)?;
        v.serialize_field("seq", &self.seq)?;
        v.serialize_field("body", &Raw(self.body()))?;
        v.end()
    }
}

/// Bytes written as they are: postcard writes a tuple's elements, and a `u8`
/// as one byte, with no length.
struct Raw<'a>(&'a [u8]);

impl Serialize for Raw<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(self.0.len())?;
        for b in self.0 {
            t.serialize_element(b)?;
        }
        t.end()
    }
}

/// The protocol version a `Hello` or `Challenge` payload claims (both are
/// variant 0 with the version first, frozen across versions), even when the
/// rest of the message (from a newer or older version) does not decode.
pub fn peek_version(payload: &[u8]) -> Option<u16> {
    codec::peek_version(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `Down` variant at its longest fits [`MAX_DOWN_PAYLOAD`]; the match
    /// has no wildcard so that a new variant must be added here.
    #[test]
    fn largest_down_message_fits_the_device_decoder() {
        let setting = Setting {
            key: u16::MAX,
            value: i64::MIN,
        };
        let policy = Policy {
            version: u32::MAX,
            settings: heapless::Vec::from_slice(&[setting; MAX_SETTINGS]).unwrap(),
        };
        let task = Task {
            seq: u32::MAX,
            id: TaskId(u64::MAX),
            kind: TaskKind::Wipe,
        };
        let all = [
            Down::Challenge {
                version: u16::MAX,
                attempt: u64::MAX,
                nonce: [0xFF; 16],
            },
            Down::Welcome {
                ack: u32::MAX,
                periodic_s: u32::MAX,
                want_token: true,
            },
            Down::Ack { seq: u32::MAX },
            Down::Task(task),
            Down::Cancel {
                task: TaskId(u64::MAX),
            },
            Down::Policy(policy),
            Down::SyncEnd,
            Down::Error(ErrorCode::VersionMismatch {
                supported: u16::MAX,
            }),
        ];
        let mut buf = [0u8; MAX_PAYLOAD];
        for msg in &all {
            match msg {
                Down::Challenge { .. } | Down::Welcome { .. } | Down::Ack { .. } => {}
                Down::Task(_) | Down::Cancel { .. } | Down::Policy(_) => {}
                Down::SyncEnd | Down::Error(_) => {}
            }
            let n = encode_payload(msg, &mut buf).unwrap();
            assert!(n <= MAX_DOWN_PAYLOAD, "{msg:?}: {n} bytes");
        }
        let n = encode_payload(&all[5], &mut buf).unwrap();
        assert_eq!(n, MAX_DOWN_PAYLOAD, "the bound is tight");
    }

    /// The `Challenge` nonce is read by a loop of the crate's own
    /// (`msg::byte_array`), not serde's `[u8; 16]` impl: both must accept the
    /// same bytes with the same value. Checked against serde's impl read
    /// through postcard, for a whole nonce with trailing bytes and every
    /// shorter prefix (which both must reject).
    #[test]
    fn challenge_nonce_reads_as_serde_reads_a_byte_array() {
        let nonce: [u8; 16] = core::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0x80);
        // Tag 0, version 6, attempt 300 (a two-byte varint), then the nonce.
        let mut payload = std::vec![0u8, 6, 0xAC, 0x02];
        payload.extend_from_slice(&nonce);
        payload.push(0x55); // one trailing byte, so both readers stop short of the end
        for end in 4..=payload.len() {
            let ours = postcard::take_from_bytes::<Down>(&payload[..end]);
            let serdes = postcard::take_from_bytes::<[u8; 16]>(&payload[4..end]);
            match (ours, serdes) {
                (
                    Ok((
                        Down::Challenge {
                            nonce: a, attempt, ..
                        },
                        rest_a,
                    )),
                    Ok((b, rest_b)),
                ) => {
                    assert_eq!((a, attempt, rest_a), (b, 300, rest_b), "prefix of {end}");
                    assert_eq!(a, nonce);
                }
                (Err(_), Err(_)) => assert!(end < 20, "prefix of {end} rejected"),
                (ours, serdes) => panic!("prefix of {end}: {ours:?} vs {serdes:?}"),
            }
        }
    }

    /// The largest `ReportBody` fits [`MAX_REPORT_BODY`] exactly, and an
    /// [`EncodedReport`] frames to the same bytes as the `Up::Report` it stands for.
    #[test]
    fn encoded_reports_frame_like_up_report() {
        let failure = SettingFailure {
            key: u16::MAX,
            reason: u16::MAX,
        };
        let failed = heapless::Vec::from_slice(&[failure; MAX_POLICY_FAILURES]).unwrap();
        let location = TaskResult::Location {
            lat_e7: i32::MIN,
            lon_e7: i32::MIN,
            accuracy_m: u32::MAX,
        };
        let bodies = [
            ReportBody::Policy(PolicyReport {
                version: u32::MAX,
                outcome: PolicyOutcome::Partial { failed },
            }),
            ReportBody::Task {
                task: TaskId(u64::MAX),
                status: TaskStatus::Succeeded {
                    result: Some(location),
                },
            },
            ReportBody::Task {
                task: TaskId(5),
                status: TaskStatus::Received,
            },
            ReportBody::Compliance(ComplianceEvent::UsbDebugging { enabled: true }),
        ];
        let (mut body, mut want, mut got) = ([0u8; 64], [0u8; MAX_FRAME], [0u8; MAX_FRAME]);
        for (k, report) in bodies.iter().enumerate() {
            let n = encode_payload(report, &mut body).unwrap();
            assert!(n <= MAX_REPORT_BODY, "{report:?}: {n} bytes");
            assert_eq!(n == MAX_REPORT_BODY, k == 0, "the bound is tight");
            let compliance = matches!(report, ReportBody::Compliance(_));
            assert_eq!(body[0] == REPORT_COMPLIANCE, compliance);
            for seq in [0, 1, 127, 128, 300, u32::MAX] {
                let up = Up::Report {
                    seq,
                    body: report.clone(),
                };
                let w = frame::encode(&up, &mut want).unwrap();
                let whole = body.first_chunk().unwrap();
                let encoded = EncodedReport {
                    seq,
                    body: whole,
                    len: n,
                };
                let g = frame::encode(&encoded, &mut got).unwrap();
                assert_eq!(got[..g], want[..w], "{up:?}");
                let short = frame::encode(&encoded, &mut got[..g - 1]);
                assert_eq!(short, Err(EncodeError::BufferTooSmall { needed: g }));
            }
        }
    }

    #[test]
    fn hello_version_is_readable_from_a_foreign_hello() {
        // Variant 0, version 9 (varint), then bytes this version cannot parse.
        assert_eq!(peek_version(&[0, 9, 0xFF, 0xFF, 0xFF]), Some(9));
        assert_eq!(peek_version(&[1, 9]), None);
        assert_eq!(
            decode::<Up>(&[0, 9, 0xFF, 0xFF, 0xFF]),
            Err(DecodeError::Malformed)
        );
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut buf = [0u8; 64];
        let n = encode_payload(&Down::SyncEnd, &mut buf).unwrap();
        assert_eq!(decode::<Down>(&buf[..n]), Ok(Down::SyncEnd));
        assert_eq!(
            decode::<Down>(&buf[..n + 1]),
            Err(DecodeError::TrailingBytes)
        );
    }
}
