//! Hand-written decoders for the messages of an open session.
//!
//! They read exactly the postcard encoding that the derived `Deserialize`
//! impls read (same accepted inputs, same values, same errors), but build the
//! message in place: no serde visitor layers, and no moves of a whole `Down`
//! (the size of its largest variant, a policy) through `Result`s. Only the
//! messages that every sync carries are decoded here: `Welcome`, `Ack`,
//! `Task`, `Cancel`, `SyncEnd`; `Proof`, `Progress` and task status reports.
//! Anything else (handshake openers, policies, errors, other reports and all
//! malformed input) goes to postcard, which has the last word.

use super::{
    DecodeError, DeviceId, Down, Hello, Platform, ReportBody, SyncTrigger, Task, TaskId, TaskKind,
    TaskResult, TaskStatus, Up,
};

/// The hand-written decoder could not read the payload; postcard decides.
struct Fallback;

type R<T> = Result<T, Fallback>;

/// A cursor over a payload.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn byte(&mut self) -> R<u8> {
        let (&b, rest) = self.bytes.split_first().ok_or(Fallback)?;
        self.bytes = rest;
        Ok(b)
    }

    /// A postcard varint of at most `MAX` bytes (`MAX > 1`) whose last byte is
    /// at most `LAST` (the bits left for a type of `7 * (MAX - 1) + bits(LAST)`
    /// bits).
    #[inline]
    fn varint<const MAX: usize, const LAST: u8>(&mut self) -> R<u64> {
        // Most are one byte (tags, small numbers); that is valid for any MAX > 1.
        match self.bytes.split_first() {
            Some((&b, rest)) if b < 0x80 => {
                self.bytes = rest;
                Ok(u64::from(b))
            }
            _ => self.long_varint::<MAX, LAST>(),
        }
    }

    /// The rest of a varint whose first byte has its continuation bit set.
    /// Loops over the constant `0..MAX` (which the compiler unrolls), each
    /// byte read checked once.
    #[inline]
    fn long_varint<const MAX: usize, const LAST: u8>(&mut self) -> R<u64> {
        let bytes = self.bytes;
        let mut out = 0u64;
        for i in 0..MAX {
            let Some(&b) = bytes.get(i) else {
                break;
            };
            out |= u64::from(b & 0x7F) << (7 * i);
            if b < 0x80 {
                if i == MAX - 1 && b > LAST {
                    return Err(Fallback);
                }
                self.bytes = bytes.get(i + 1..).unwrap_or_default();
                return Ok(out);
            }
        }
        Err(Fallback)
    }

    fn u16(&mut self) -> R<u16> {
        Ok(self.varint::<3, 0x03>()? as u16)
    }

    // Always inlined: a varint's one-byte case is a few instructions, less
    // than a call, and where the compiler left it out of line (a report's
    // status tag, beside the hand-inlined status) each read paid the call.
    #[inline(always)]
    fn u32(&mut self) -> R<u32> {
        Ok(self.varint::<5, 0x0F>()? as u32)
    }

    fn u64(&mut self) -> R<u64> {
        self.varint::<10, 0x01>()
    }

    /// A `usize` as postcard reads it on this target.
    #[cfg_attr(not(feature = "alloc"), allow(dead_code))]
    fn usize(&mut self) -> R<usize> {
        #[cfg(target_pointer_width = "64")]
        let n = self.u64()?;
        #[cfg(not(target_pointer_width = "64"))]
        let n = u64::from(self.u32()?);
        usize::try_from(n).map_err(|_| Fallback)
    }

    fn i32(&mut self) -> R<i32> {
        let n = self.u32()?;
        Ok((n >> 1) as i32 ^ -((n & 1) as i32))
    }

    /// A `bool`: 0 or 1.
    fn bool(&mut self) -> R<bool> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Fallback),
        }
    }

    /// An `Option` tag: 0 for `None`, 1 for `Some` (encoded as a `bool`).
    fn some(&mut self) -> R<bool> {
        self.bool()
    }

    fn opt_u32(&mut self) -> R<Option<u32>> {
        Ok(if self.some()? {
            Some(self.u32()?)
        } else {
            None
        })
    }

    fn task_id(&mut self) -> R<TaskId> {
        Ok(TaskId(self.u64()?))
    }

    fn task_kind(&mut self) -> R<TaskKind> {
        let tag = self.u32()?;
        TaskKind::ALL.get(tag as usize).copied().ok_or(Fallback)
    }

    fn task_result(&mut self) -> R<TaskResult> {
        Ok(match self.u32()? {
            0 => TaskResult::Location {
                lat_e7: self.i32()?,
                lon_e7: self.i32()?,
                accuracy_m: self.u32()?,
            },
            1 => TaskResult::Scan {
                threats: self.u16()?,
            },
            _ => return Err(Fallback),
        })
    }

    // Inlined into `up`, its one caller: out of line, the status came back
    // through a `Result` on the stack and was copied byte by byte into the
    // report (the enum's padding kept it from moving as one piece).
    #[inline(always)]
    fn task_status(&mut self) -> R<TaskStatus> {
        Ok(match self.u32()? {
            0 => TaskStatus::Received,
            1 => TaskStatus::Succeeded {
                result: if self.some()? {
                    Some(self.task_result()?)
                } else {
                    None
                },
            },
            2 => TaskStatus::Failed {
                reason: self.u16()?,
            },
            3 => TaskStatus::Deferred {
                retry_after_s: self.opt_u32()?,
            },
            4 => TaskStatus::Cancelled,
            _ => return Err(Fallback),
        })
    }

    /// `Some(msg)` when nothing is left after it (else trailing bytes).
    fn end<T>(self, msg: T) -> R<Option<T>> {
        Ok(self.bytes.is_empty().then_some(msg))
    }
}

/// The `Down` messages of an open session decoded by hand, in a small enum:
/// a whole `Down` is the size of a policy, and is built only once, by the
/// caller. Not the `Welcome`, which opens the session: it is read by hand
/// only as a whole `Down` (see [`DownMsg`]).
///
/// The variants' fields line up: with a `u32` ack sequence, the compiler
/// carried the decoded message through a stack slot in pieces that cut a
/// task's id at byte 4, reading back with one 8-byte load what a 4-byte and
/// an 8-byte store had just written (a failed store-to-load forward: about
/// a third of the device's `handle_bytes` samples on x86-64). Widened, the
/// stall is gone (`round_trip_profile`: medians of 21 alternated runs 322
/// -> 298 ns, with the server's output read in place, `transmit_with`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SessionDown {
    /// `seq` is a `u32` on the wire, widened so that it lies where a task's
    /// id does (see above).
    Ack {
        seq: u64,
    },
    Task(Task),
    Cancel {
        task: TaskId,
    },
    SyncEnd,
}

impl From<SessionDown> for Down {
    fn from(m: SessionDown) -> Down {
        match m {
            SessionDown::Ack { seq } => Down::Ack { seq: seq as u32 },
            SessionDown::Task(t) => Down::Task(t),
            SessionDown::Cancel { task } => Down::Cancel { task },
            SessionDown::SyncEnd => Down::SyncEnd,
        }
    }
}

/// The `Up` messages decoded by hand (see [`SessionDown`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SessionUp {
    Proof { mac: [u8; 32] },
    Progress { task: TaskId, percent: Option<u8> },
    Report { seq: u32, body: ReportBody },
}

impl From<SessionUp> for Up {
    fn from(m: SessionUp) -> Up {
        match m {
            SessionUp::Proof { mac } => Up::Proof { mac },
            SessionUp::Progress { task, percent } => Up::Progress { task, percent },
            SessionUp::Report { seq, body } => Up::Report { seq, body },
        }
    }
}

/// What [`down`] builds: a whole `Down`, or a [`SessionDown`].
trait DownMsg: From<SessionDown> {
    /// A `Welcome`, when this type holds one.
    fn welcome(ack: u32, periodic_s: u32, want_token: bool) -> Option<Self>;
}

impl DownMsg for Down {
    fn welcome(ack: u32, periodic_s: u32, want_token: bool) -> Option<Self> {
        Some(Down::Welcome {
            ack,
            periodic_s,
            want_token,
        })
    }
}

impl DownMsg for SessionDown {
    /// None: the caller reads the `Welcome` as a whole `Down` (its bool
    /// here would cost every message of a session a few instructions).
    fn welcome(_: u32, _: u32, _: bool) -> Option<Self> {
        None
    }
}

/// Builds `M` (a `SessionDown` or a whole `Down`) in the arm that read it,
/// so that no other copy of the message is made on the way.
#[inline(always)]
fn down<M: DownMsg>(bytes: &[u8]) -> R<Option<M>> {
    let mut r = Reader { bytes };
    let msg = match r.u32()? {
        1 => {
            let (ack, periodic_s, want_token) = (r.u32()?, r.u32()?, r.bool()?);
            M::welcome(ack, periodic_s, want_token).ok_or(Fallback)?
        }
        2 => SessionDown::Ack {
            seq: r.u32()?.into(),
        }
        .into(),
        3 => SessionDown::Task(Task {
            seq: r.u32()?,
            id: r.task_id()?,
            kind: r.task_kind()?,
        })
        .into(),
        4 => SessionDown::Cancel { task: r.task_id()? }.into(),
        6 => SessionDown::SyncEnd.into(),
        _ => return Err(Fallback),
    };
    r.end(msg)
}

#[inline(always)]
fn up(bytes: &[u8]) -> R<Option<SessionUp>> {
    let mut r = Reader { bytes };
    let msg = match r.u32()? {
        1 => {
            let mut mac = [0u8; 32];
            for b in &mut mac {
                *b = r.byte()?;
            }
            SessionUp::Proof { mac }
        }
        2 => SessionUp::Progress {
            task: r.task_id()?,
            percent: if r.some()? { Some(r.byte()?) } else { None },
        },
        3 => {
            let seq = r.u32()?;
            if r.u32()? != 0 {
                return Err(Fallback); // a compliance or policy report
            }
            let body = ReportBody::Task {
                task: r.task_id()?,
                status: r.task_status()?,
            };
            SessionUp::Report { seq, body }
        }
        _ => return Err(Fallback),
    };
    r.end(msg)
}

/// A payload read by hand: `Ok(Some)` a message, `Ok(None)` one followed by
/// trailing bytes, `Err` not one of the messages read by hand.
type Hand<T> = Result<Option<T>, Fallback>;

/// Decodes like `wire::decode`: by hand where it can, else through postcard.
#[inline]
fn decode_with<T: Into<M>, M: serde::de::DeserializeOwned>(
    hand: Hand<T>,
    payload: &[u8],
) -> Result<M, DecodeError> {
    match hand {
        Ok(Some(msg)) => Ok(msg.into()),
        Ok(None) => Err(DecodeError::TrailingBytes),
        Err(Fallback) => fallback(payload),
    }
}

/// Postcard's answer, out of line and cold: the hand-decoded path keeps a
/// small stack frame and never copies a whole message out of a temporary.
#[cold]
#[inline(never)]
fn fallback<M: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<M, DecodeError> {
    super::decode_postcard(payload)
}

/// Decodes a `Down` payload like `wire::decode`.
#[cfg(feature = "hand-decode")]
pub(super) fn decode_down(payload: &[u8]) -> Result<Down, DecodeError> {
    decode_with(down::<Down>(payload), payload)
}

/// Decodes a `Down` payload like `wire::decode` (see [`HAND_DOWN`]).
#[cfg(not(feature = "hand-decode"))]
pub(super) fn decode_down(payload: &[u8]) -> Result<Down, DecodeError> {
    super::decode_postcard(payload)
}

/// Whether `Down` payloads are read by hand: with the `hand-decode` feature
/// (on with `std`: servers, phones). A microcontroller build leaves it off:
/// there the hand decoder would add about 1 KB of flash beside postcard's,
/// which challenges, policies and errors need anyway.
const HAND_DOWN: bool = cfg!(feature = "hand-decode");

/// Decodes an `Up` payload like `wire::decode`.
pub(super) fn decode_up(payload: &[u8]) -> Result<Up, DecodeError> {
    decode_with(up(payload), payload)
}

/// A session message of a `Down` payload, when it is one and decodes with
/// nothing left over; `None` for anything else (decode that with
/// `wire::decode`, which gives the same message or the error).
///
/// Inlined into the device's `handle_bytes`, its one caller: out of line,
/// the message came back through a stack slot (`round_trip_profile`:
/// 308 against 333 ns, medians of 15 alternated runs).
#[inline]
pub(crate) fn session_down(payload: &[u8]) -> Option<SessionDown> {
    if HAND_DOWN {
        down::<SessionDown>(payload).ok().flatten()
    } else {
        None
    }
}

/// A session message of an `Up` payload (see [`session_down`]); for the
/// server, so unused in a device-only build.
///
/// Inlined into the server's `read_frames`, its one caller, which is
/// generic and so compiled in the application's crate: out of line, each
/// message paid a call across crates and this function's register saves.
#[cfg_attr(not(feature = "alloc"), allow(dead_code))]
#[inline]
pub(crate) fn session_up(payload: &[u8]) -> Option<SessionUp> {
    up(payload).ok().flatten()
}

/// The version of a payload that starts as variant 0 with a `u16` version
/// (`Hello`, `Challenge`), by hand: see [`super::peek_version`]. The tag is
/// read as the decoders read it, a varint (`80 00` is tag 0 too), so that no
/// payload they take for variant 0 escapes the version check.
pub(crate) fn peek_version(payload: &[u8]) -> Option<u16> {
    let mut r = Reader { bytes: payload };
    match r.u32() {
        Ok(0) => r.u16().ok(),
        _ => None,
    }
}

/// Reads a `Hello` payload (an `Up::Hello`) by hand into `out`, reusing its
/// push token's storage: no serde layers and no moves of a whole `Up` (which
/// is the size of a `Hello`, token storage included). `true` when the payload
/// is exactly one `Hello`; on `false`, `out` holds a partial message and the
/// payload goes to `wire::decode`, which gives the error (or, for input this
/// reader does not know, the message). For the server, so unused in a
/// device-only build.
#[cfg_attr(not(feature = "alloc"), allow(dead_code))]
pub(crate) fn hello_into(payload: &[u8], out: &mut Hello) -> bool {
    let mut r = Reader { bytes: payload };
    read_hello(&mut r, out).is_ok() && r.bytes.is_empty()
}

fn read_hello(r: &mut Reader<'_>, out: &mut Hello) -> R<()> {
    if r.u32()? != 0 {
        return Err(Fallback); // not `Up::Hello`
    }
    out.version = r.u16()?;
    out.attempt = r.u64()?;
    out.device = DeviceId(r.u64()?);
    out.generation = r.u32()?;
    out.platform = match r.u32()? {
        0 => Platform::Android,
        1 => Platform::Ios,
        _ => return Err(Fallback),
    };
    // A string: its length then UTF-8 bytes.
    let len = r.usize()?;
    let (token, rest) = r.bytes.split_at_checked(len).ok_or(Fallback)?;
    let token = core::str::from_utf8(token).map_err(|_| Fallback)?;
    out.push_token.clear();
    out.push_token.push_str(token).map_err(|_| Fallback)?;
    r.bytes = rest;
    let trigger = r.u32()?;
    out.trigger = *SyncTrigger::ALL.get(trigger as usize).ok_or(Fallback)?;
    out.last_task_seq = r.u32()?;
    out.policy_version = r.u32()?;
    Ok(())
}

/// Whether `bytes` is exactly the encoding of one [`ReportBody`], as postcard
/// would decode it: the check a snapshot restore makes on each report
/// (PROTOCOL.md 14). Its structure is walked here, building nothing, with a
/// varint loop of its own rather than `Reader`'s unrolled ones: on a device
/// this costs a fraction of the flash of postcard's decoder of the type (or
/// of `Reader`), which nothing else there needs.
pub(crate) fn is_report_body(bytes: &[u8]) -> bool {
    let mut w = Walk(bytes);
    w.report_body().is_some() && w.0.is_empty()
}

/// A cursor for [`is_report_body`]: each step `None` at the first byte that
/// postcard would refuse.
struct Walk<'a>(&'a [u8]);

/// Varint widths as `(bytes at most, last byte at most)`: see `Reader::varint`.
const U16: (usize, u8) = (3, 0x03);
const U32: (usize, u8) = (5, 0x0F);
const U64: (usize, u8) = (10, 0x01);

impl Walk<'_> {
    /// A varint's value, saturated at `u32::MAX` (callers compare tags and a
    /// length, all small). Not inlined: one copy serves every field.
    #[inline(never)]
    fn varint(&mut self, (max, last): (usize, u8)) -> Option<u32> {
        let mut out = 0u32;
        for i in 0..max {
            let (&b, rest) = self.0.split_first()?;
            self.0 = rest;
            let bits = u32::from(b & 0x7F);
            out |= bits.checked_shl(7 * i as u32).unwrap_or(0);
            if i >= 4 && bits != 0 {
                out = u32::MAX;
            }
            if b < 0x80 {
                return (i + 1 < max || b <= last).then_some(out);
            }
        }
        None
    }

    /// A tag, or any `u32`.
    fn tag(&mut self) -> Option<u32> {
        self.varint(U32)
    }

    /// A `bool` (or an `Option`'s tag).
    #[inline(never)]
    fn flag(&mut self) -> Option<bool> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        (b < 2).then_some(b == 1)
    }

    fn report_body(&mut self) -> Option<()> {
        match self.tag()? {
            // `Task`: the task's id, then its `TaskStatus`.
            0 => {
                self.varint(U64)?;
                match self.tag()? {
                    0 | 4 => {}
                    1 => {
                        if self.flag()? {
                            match self.tag()? {
                                // A location: two `i32`s, a `u32`.
                                0 => (0..3).try_for_each(|_| self.tag().map(drop))?,
                                1 => self.varint(U16).map(drop)?,
                                _ => return None,
                            }
                        }
                    }
                    2 => {
                        self.varint(U16)?;
                    }
                    3 => {
                        if self.flag()? {
                            self.tag()?;
                        }
                    }
                    _ => return None,
                }
            }
            // `ComplianceEvent`: no field, a `bool` or a `u16`.
            1 => match self.tag()? {
                0 => {}
                1 | 5 => {
                    self.flag()?;
                }
                2..=4 | 6 => {
                    self.varint(U16)?;
                }
                _ => return None,
            },
            // `PolicyReport`: its version, then the `PolicyOutcome`.
            2 => {
                self.tag()?;
                match self.tag()? {
                    0 => {}
                    1 => {
                        // A `usize` length, as postcard reads it here.
                        #[cfg(target_pointer_width = "64")]
                        let failures = self.varint(U64)?;
                        #[cfg(not(target_pointer_width = "64"))]
                        let failures = self.tag()?;
                        if failures > super::MAX_POLICY_FAILURES as u32 {
                            return None;
                        }
                        for _ in 0..failures {
                            // A failure's key and reason.
                            self.varint(U16)?;
                            self.varint(U16)?;
                        }
                    }
                    2 => {
                        self.varint(U16)?;
                    }
                    _ => return None,
                }
            }
            _ => return None,
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ser::tests::{status, varied};
    use crate::wire::{decode_postcard, encode_payload, MAX_PAYLOAD};
    use proptest::prelude::*;

    /// Payloads that start like the hand-decoded messages, then anything.
    fn payloads() -> impl Strategy<Value = std::vec::Vec<u8>> {
        let head = prop_oneof![
            Just(std::vec![]),
            (0u8..9).prop_map(|t| std::vec![t]),
            (0u8..9, 0u32..3).prop_map(|(t, b)| std::vec![3, t, b as u8]),
        ];
        let tail = proptest::collection::vec(
            prop_oneof![any::<u8>(), 0u8..5, Just(0x80u8), Just(0xFFu8)],
            0..40,
        );
        (head, tail).prop_map(|(mut h, t)| {
            h.extend(t);
            h
        })
    }

    fn hello() -> impl Strategy<Value = Hello> {
        (
            (
                varied::<u16>(),
                varied::<u64>(),
                varied::<u32>(),
                any::<bool>(),
                varied::<u64>(),
            ),
            "\\PC{0,50}",
            (0usize..6, varied::<u32>(), varied::<u32>()),
        )
            .prop_map(
                |((version, device, generation, ios, attempt), token, (t, last, policy))| Hello {
                    version,
                    attempt,
                    device: DeviceId(device),
                    generation,
                    platform: if ios {
                        Platform::Ios
                    } else {
                        Platform::Android
                    },
                    push_token: heapless::String::try_from(token.as_str()).unwrap(),
                    trigger: SyncTrigger::ALL[t],
                    last_task_seq: last,
                    policy_version: policy,
                },
            )
    }

    /// Every kind of report body, fields near varint length boundaries.
    fn report_body() -> impl Strategy<Value = ReportBody> {
        use crate::wire::{
            ComplianceEvent as C, PolicyOutcome, PolicyReport, SettingFailure, MAX_POLICY_FAILURES,
        };
        let n16 = varied::<u16>;
        let compliance = prop_oneof![
            Just(C::ProfileChanged),
            any::<bool>().prop_map(|active| C::DeviceAdminChanged { active }),
            n16().prop_map(|category| C::BlockedPageVisited { category }),
            n16().prop_map(|days| C::PasswordOverdue { days }),
            n16().prop_map(|threats| C::MalwarePersisting { threats }),
            any::<bool>().prop_map(|enabled| C::UsbDebugging { enabled }),
            n16().prop_map(|threats| C::ManualScanResult { threats }),
        ];
        let failure = (n16(), n16()).prop_map(|(key, reason)| SettingFailure { key, reason });
        let outcome = prop_oneof![
            Just(PolicyOutcome::Applied),
            proptest::collection::vec(failure, 0..=MAX_POLICY_FAILURES).prop_map(|f| {
                PolicyOutcome::Partial {
                    failed: f.into_iter().collect(),
                }
            }),
            n16().prop_map(|reason| PolicyOutcome::Rejected { reason }),
        ];
        prop_oneof![
            (varied::<u64>(), status()).prop_map(|(t, status)| ReportBody::Task {
                task: TaskId(t),
                status
            }),
            compliance.prop_map(ReportBody::Compliance),
            (varied::<u32>(), outcome).prop_map(|(version, outcome)| {
                ReportBody::Policy(PolicyReport { version, outcome })
            }),
        ]
    }

    fn blank_hello() -> Hello {
        Hello {
            version: 0,
            attempt: 0,
            device: DeviceId(0),
            generation: 0,
            platform: Platform::Android,
            push_token: heapless::String::new(),
            trigger: SyncTrigger::Push,
            last_task_seq: 0,
            policy_version: 0,
        }
    }

    /// Varints at every length boundary, non-canonical ones, too long and
    /// too large ones, with and without bytes after them: as postcard.
    #[test]
    fn varint_edges_as_postcard() {
        let mut cases: std::vec::Vec<std::vec::Vec<u8>> = std::vec::Vec::new();
        for len in 1..=11usize {
            for last in [0x00u8, 0x01, 0x02, 0x03, 0x04, 0x0F, 0x10, 0x7F] {
                let mut v = std::vec![0xFFu8; len - 1];
                v.push(last);
                cases.push(v.clone());
                let mut zeros = std::vec![0x80u8; len - 1];
                zeros.push(last);
                cases.push(zeros);
            }
            // Cut short: continuation bytes up to the end of the payload.
            cases.push(std::vec![0xFFu8; len]);
            cases.push(std::vec![0x80u8; len]);
        }
        for varint in cases {
            for pad in [0usize, 1, 7, 12] {
                // Ack { seq: u32 }, Task { seq, id: u64, kind }, Scan threats: u16.
                let mut ack = std::vec![2u8];
                ack.extend(&varint);
                let mut task = std::vec![3u8, 5];
                task.extend(&varint);
                task.push(1);
                let mut scan = std::vec![3u8, 9, 0, 7, 1, 1, 1];
                scan.extend(&varint);
                for mut p in [ack, task, scan] {
                    p.extend(core::iter::repeat_n(0u8, pad));
                    assert_eq!(decode_down(&p), decode_postcard::<Down>(&p), "{p:02x?}");
                    assert_eq!(decode_up(&p), decode_postcard::<Up>(&p), "{p:02x?}");
                    // The hand decoders alone, without postcard behind them.
                    if let Some(m) = session_down(&p) {
                        assert_eq!(Ok(Down::from(m)), decode_postcard::<Down>(&p), "{p:02x?}");
                    }
                    if let Some(m) = session_up(&p) {
                        assert_eq!(Ok(Up::from(m)), decode_postcard::<Up>(&p), "{p:02x?}");
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// The version read by hand is postcard's `(u32, u16)` prefix (the
        /// varint tag, then the version), tag 0.
        #[test]
        fn peek_version_as_postcard(bytes in payloads()) {
            let postcard = match postcard::take_from_bytes::<(u32, u16)>(&bytes) {
                Ok(((0, version), _)) => Some(version),
                _ => None,
            };
            prop_assert_eq!(peek_version(&bytes), postcard);
        }

        /// Any bytes: the same message or the same error as postcard.
        #[test]
        fn same_as_postcard_on_any_bytes(bytes in payloads()) {
            prop_assert_eq!(decode_down(&bytes), decode_postcard::<Down>(&bytes));
            prop_assert_eq!(decode_up(&bytes), decode_postcard::<Up>(&bytes));
            if let Some(m) = session_down(&bytes) {
                prop_assert_eq!(Ok(Down::from(m)), decode_postcard::<Down>(&bytes));
            }
            if let Some(m) = session_up(&bytes) {
                prop_assert_eq!(Ok(Up::from(m)), decode_postcard::<Up>(&bytes));
            }
            let mut hello = blank_hello();
            if hello_into(&bytes, &mut hello) {
                prop_assert_eq!(Ok(Up::Hello(hello)), decode_postcard::<Up>(&bytes));
            }
        }

        /// The report body check answers as postcard's decoder, on any bytes
        /// and on every report body encoded, then cut short, grown or with a
        /// byte changed.
        #[test]
        fn report_body_check_as_postcard(
            bytes in payloads(), body in report_body(), cut in any::<prop::sample::Index>(),
            at in any::<prop::sample::Index>(), byte in any::<u8>(), how in 0u8..4,
        ) {
            let postcard = |b: &[u8]| decode_postcard::<ReportBody>(b).is_ok();
            prop_assert_eq!(is_report_body(&bytes), postcard(&bytes));
            let mut buf = [0u8; MAX_PAYLOAD];
            let n = encode_payload(&body, &mut buf).unwrap();
            prop_assert!(n <= crate::wire::MAX_REPORT_BODY);
            let mut b = buf[..n].to_vec();
            match how {
                0 => {}
                1 => b.truncate(cut.index(n)),
                2 => b.push(byte),
                _ => b[at.index(n)] = byte,
            }
            prop_assert_eq!(is_report_body(&b), postcard(&b), "{:?}", b);
            prop_assert!(how != 0 || is_report_body(&b));
        }

        /// A `Hello` read by hand is postcard's `Up::Hello`, on any bytes that
        /// start like one: encoded, then cut short, grown or with a byte changed.
        #[test]
        fn hello_as_postcard(
            hello in hello(), cut in any::<prop::sample::Index>(),
            at in any::<prop::sample::Index>(), byte in any::<u8>(), how in 0u8..4,
        ) {
            let mut buf = [0u8; MAX_PAYLOAD];
            let n = encode_payload(&Up::Hello(hello.clone()), &mut buf).unwrap();
            let mut p = buf[..n].to_vec();
            let mut out = blank_hello();
            prop_assert!(hello_into(&p, &mut out));
            prop_assert_eq!(&out, &hello);
            match how {
                0 => p.truncate(cut.index(n)),
                1 => p.push(byte),
                2 => p[at.index(n)] = byte,
                _ => p.insert(at.index(n), byte),
            }
            let mut out = blank_hello();
            let hand = hello_into(&p, &mut out).then_some(Up::Hello(out));
            match decode_postcard::<Up>(&p) {
                Ok(Up::Hello(h)) => prop_assert_eq!(hand, Some(Up::Hello(h))),
                _ => prop_assert_eq!(hand, None),
            }
        }

        /// Every hand-decoded message comes back from its own encoding.
        #[test]
        fn hot_messages_round_trip(
            seq in varied::<u32>(), id in varied::<u64>(), kind in 0usize..5,
            status in status(), percent in proptest::option::of(any::<u8>()),
            mac in any::<[u8; 32]>(),
        ) {
            let task = TaskId(id);
            let mut buf = [0u8; MAX_PAYLOAD];
            // Read by hand as a whole `Down` only: it opens the session.
            let welcome = Down::Welcome { ack: seq, periodic_s: seq / 3, want_token: seq % 2 == 0 };
            let n = encode_payload(&welcome, &mut buf).unwrap();
            prop_assert_eq!(session_down(&buf[..n]), None);
            prop_assert_eq!(decode_down(&buf[..n]), Ok(welcome));
            let downs = [
                Down::Ack { seq },
                Down::Task(Task { seq, id: task, kind: TaskKind::ALL[kind] }),
                Down::Cancel { task },
                Down::SyncEnd,
            ];
            for msg in downs {
                let n = encode_payload(&msg, &mut buf).unwrap();
                let hand = session_down(&buf[..n]).map(Down::from);
                prop_assert_eq!(hand, HAND_DOWN.then(|| msg.clone()));
                prop_assert_eq!(decode_down(&buf[..n]), Ok(msg));
            }
            let ups = [
                Up::Proof { mac },
                Up::Progress { task, percent },
                Up::Report { seq, body: ReportBody::Task { task, status } },
            ];
            for msg in ups {
                let n = encode_payload(&msg, &mut buf).unwrap();
                prop_assert_eq!(session_up(&buf[..n]).map(Up::from), Some(msg.clone()));
                prop_assert_eq!(decode_up(&buf[..n]), Ok(msg));
            }
        }
    }
}
