//! The device's persistent state: a small record of fixed-width fields with
//! a CRC.
//!
//! Layout (PROTOCOL.md, section 14): a header of fixed-width little-endian
//! fields, the running tasks, the outbox's report bodies, then the CRC-32
//! (LE) of all that. Every number is at a fixed offset and width, so a
//! snapshot, taken for every report queued (on the path of every task), is a
//! run of plain stores rather than varints to work out. Write snapshots
//! alternately into two storage slots ([`Device::snapshot_slot`]) and
//! restore with [`pick_latest`]: a write torn by power loss fails its CRC,
//! and the other slot still holds the previous snapshot, taken before
//! anything newer could leave the device.

use heapless::Vec;

use super::{Body, Device, Entry, Flag, Inflight, Wire, PERIODIC_MAX_MS};
use crate::log::debug;
use crate::time::Instant;
use crate::wire::{
    crc32, EncodeError, Out, Piece, Task, TaskId, TaskKind, Writer, MAX_REPORT_BODY,
};

// 4: a flags byte ends the header. 3: fixed-width fields, outbox sequences
// implied (2: a postcard record).
const FORMAT: u8 = 4;
// Read as format 4 with no flag set: what its state meant (see `Header`).
const FORMAT_3: u8 = 3;

/// Why a snapshot could not be restored. The engine is never half-restored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum SnapshotError {
    /// Fewer bytes than a CRC.
    TooShort,
    /// The CRC does not match: a torn or corrupted write.
    BadCrc,
    /// The CRC matched but the bytes do not decode.
    Malformed,
    /// Written by an unknown snapshot format.
    UnknownFormat(u8),
    /// Written for another device or enrollment generation.
    Foreign,
    /// Decoded, but breaks the engine's invariants (or its capacities).
    Inconsistent,
}

impl core::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SnapshotError::TooShort => f.write_str("the snapshot is shorter than its CRC"),
            SnapshotError::BadCrc => {
                f.write_str("the snapshot's CRC does not match (a torn write?)")
            }
            SnapshotError::Malformed => f.write_str("the snapshot does not decode"),
            SnapshotError::UnknownFormat(v) => write!(f, "unknown snapshot format {v}"),
            SnapshotError::Foreign => {
                f.write_str("the snapshot is of another device or enrollment generation")
            }
            SnapshotError::Inconsistent => {
                f.write_str("the snapshot breaks the engine's invariants or capacities")
            }
        }
    }
}

impl core::error::Error for SnapshotError {}

// The bytes of each piece: every field has a fixed width, so each is written
// through a `Chunk` of exactly its size (see `Writer::piece`) in constant
// offsets. The header: format, counter, device id, generation, last task
// sequence, next report sequence, policy version, periodic interval (ms),
// the counts of running tasks and reports, and the flags (format 4 on).
const HEADER_3: usize = 1 + 8 + 8 + 4 + 4 + 4 + 4 + 4 + 2 + 2;
const HEADER: usize = HEADER_3 + 1;
// The flags' one bit: an unacknowledged busy "not now" is in the outbox.
const BUSY: u8 = 1;
// A running task: sequence, id, kind.
const TASK: usize = 4 + 8 + 1;
// An outbox report, at most: its body's length (one byte), then the body,
// copied whole (the bytes past its length are overwritten next, or scratch).
const ENTRY_ROOM: usize = 1 + MAX_REPORT_BODY;

const _: () = assert!(MAX_REPORT_BODY < 0x80, "a body's length is one byte");

// The longest periodic interval fits the low 31 bits of a snapshot's
// `periodic_ms` (the top bit: no `Welcome` yet, see `HeaderPiece`).
const _: () = assert!(PERIODIC_MAX_MS < 1 << 31);

/// The header, as one piece, with the outbox's length.
struct HeaderPiece<'a, const O: usize, const I: usize>(&'a Device<O, I>, usize);

impl<const O: usize, const I: usize> Piece for HeaderPiece<'_, O, I> {
    #[inline(always)]
    fn write<W: Out>(&self, w: &mut W) {
        let d = self.0;
        w.push(FORMAT);
        w.fixed(d.counter.to_le_bytes());
        w.fixed(d.cfg.id.0.to_le_bytes());
        w.fixed(d.cfg.generation.to_le_bytes());
        w.fixed(d.last_task_seq.to_le_bytes());
        w.fixed(d.next_report_seq.to_le_bytes());
        w.fixed(d.policy_version.to_le_bytes());
        // At most 7 days (604,800,000 ms) wherever it comes from, below
        // 2^31 (a longer one set behind the engine's back is written as 7
        // days, as a restore would clamp it): the top bit says that no
        // `Welcome` came since the engine's state began.
        let ms = d.periodic.as_millis().min(PERIODIC_MAX_MS) as u32;
        w.fixed((ms | u32::from(!d.welcomed) << 31).to_le_bytes());
        // Both within `u16` (see `Device::FITS_SNAPSHOT`).
        w.fixed((d.inflight.len() as u16).to_le_bytes());
        w.fixed((self.1 as u16).to_le_bytes());
        w.push(u8::from(d.busy_seq.is_some())); // `BUSY` (1), or none
    }
}

impl Piece for Task {
    #[inline(always)]
    fn write<W: Out>(&self, w: &mut W) {
        w.fixed(self.seq.to_le_bytes());
        w.fixed(self.id.0.to_le_bytes());
        w.push(self.kind as u8); // its variant index
    }
}

impl Piece for Entry {
    #[inline(always)]
    fn write<W: Out>(&self, w: &mut W) {
        // The length is below 0x80: its varint is the one byte it is.
        w.len_prefixed_of(&self.body.bytes, self.body.len());
    }
}

/// A snapshot's header, as read back.
struct Header {
    counter: u64,
    device: u64,
    generation: u32,
    last_task_seq: u32,
    next_report_seq: u32,
    policy_version: u32,
    periodic_ms: u32,
    /// A `Welcome` came since the engine's state began (the top bit of the
    /// stored `periodic_ms` clear).
    welcomed: bool,
    /// An unacknowledged busy "not now" is in the outbox (the flag `BUSY`).
    /// Format 3 has no flags: its engines kept this in RAM only, and after
    /// a restore synced as if there was none, as a restore of it still does.
    busy: bool,
    tasks: usize,
    reports: usize,
}

/// A cursor over a snapshot's bytes; running out of them is `Malformed`.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(SnapshotError::Malformed)?;
        self.0 = rest;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, SnapshotError> {
        let [b] = self.take()?;
        Ok(b)
    }

    fn u16(&mut self) -> Result<u16, SnapshotError> {
        self.take().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, SnapshotError> {
        self.take().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, SnapshotError> {
        self.take().map(u64::from_le_bytes)
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        let (head, rest) = self.0.split_at_checked(n).ok_or(SnapshotError::Malformed)?;
        self.0 = rest;
        Ok(head)
    }

    /// The format byte (`UnknownFormat` unless ours or 3) and the counter.
    fn start(&mut self) -> Result<(u8, u64), SnapshotError> {
        match self.u8()? {
            format @ (FORMAT | FORMAT_3) => Ok((format, self.u64()?)),
            other => Err(SnapshotError::UnknownFormat(other)),
        }
    }

    /// The header after the format byte and the counter.
    fn header(&mut self, format: u8, counter: u64) -> Result<Header, SnapshotError> {
        // Its length checked once: the fields are then read from an array,
        // where the compiler sees that each is there.
        let fields: [u8; HEADER_3 - 9] = self.take()?;
        let mut f = Reader(&fields);
        let (device, generation) = (f.u64()?, f.u32()?);
        let (last_task_seq, next_report_seq) = (f.u32()?, f.u32()?);
        let (policy_version, periodic) = (f.u32()?, f.u32()?);
        let flags = if format == FORMAT { self.u8()? } else { 0 };
        if flags & !BUSY != 0 {
            return Err(SnapshotError::Malformed);
        }
        Ok(Header {
            counter,
            device,
            generation,
            last_task_seq,
            next_report_seq,
            policy_version,
            periodic_ms: periodic & !(1 << 31),
            welcomed: periodic >> 31 == 0,
            busy: flags == BUSY,
            tasks: f.u16()?.into(),
            reports: f.u16()?.into(),
        })
    }

    fn task(&mut self) -> Result<Task, SnapshotError> {
        let seq = self.u32()?;
        let id = TaskId(self.u64()?);
        let kind = TaskKind::ALL.get(usize::from(self.u8()?));
        let kind = *kind.ok_or(SnapshotError::Malformed)?;
        Ok(Task { seq, id, kind })
    }

    /// A report body: its length, then that many bytes (checked for length
    /// by `consistent`, never decoded).
    fn body(&mut self) -> Result<&'a [u8], SnapshotError> {
        let len = self.u8()?;
        self.bytes(len.into())
    }
}

/// What a snapshot holds, read but not yet checked against the engine's
/// invariants: the report bodies are borrowed from it and copied, never
/// decoded.
type Decoded<'a, const O: usize, const I: usize> = (Header, Vec<Task, I>, Vec<&'a [u8], O>);

/// Reads a snapshot's payload (after its CRC was checked): `Malformed` when
/// it is cut short, has bytes left over, a task of no known kind, or more
/// tasks or reports than the engine's capacities.
fn decode<const O: usize, const I: usize>(
    payload: &[u8],
) -> Result<Decoded<'_, O, I>, SnapshotError> {
    let mut r = Reader(payload);
    let (format, counter) = r.start()?;
    let h = r.header(format, counter)?;
    let mut tasks = Vec::new();
    for _ in 0..h.tasks {
        tasks
            .push(r.task()?)
            .map_err(|_| SnapshotError::Malformed)?;
    }
    let mut bodies = Vec::new();
    for _ in 0..h.reports {
        bodies
            .push(r.body()?)
            .map_err(|_| SnapshotError::Malformed)?;
    }
    if !r.0.is_empty() {
        return Err(SnapshotError::Malformed);
    }
    Ok((h, tasks, bodies))
}

impl<const O: usize, const I: usize> Device<O, I> {
    /// Upper bound of [`snapshot`](Self::snapshot)'s length for these capacities.
    pub const SNAPSHOT_MAX: usize = HEADER + I * TASK + O * ENTRY_ROOM + 4;

    /// The snapshot counts running tasks and reports in two bytes each: an
    /// engine with more room than that does not compile.
    const FITS_SNAPSHOT: () = assert!(
        O <= u16::MAX as usize && I <= u16::MAX as usize,
        "a snapshot counts tasks and reports in 16 bits"
    );

    /// Which of two storage slots the current snapshot belongs in (0 or 1).
    pub fn snapshot_slot(&self) -> usize {
        (self.counter % 2) as usize
    }

    /// Writes the persistent state into `buf`; returns its length. Bytes of
    /// `buf` after that length may be overwritten too (scratch).
    ///
    /// The layout is that of PROTOCOL.md, section 14, which `restore` reads
    /// (a test checks the bytes against a plain writer of that layout).
    pub fn snapshot(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let () = Self::FITS_SNAPSHOT;
        let room = buf.len().saturating_sub(4);
        let mut w = Writer::new(&mut buf[..room]);
        // Servers and phones write the outbox's two halves (it wraps around)
        // one after the other: a chained iterator checks which half it is in
        // at every step. Firmware keeps the one loop (0.2 KB less flash).
        #[cfg(feature = "hand-encode")]
        let (halves, reports) = {
            let (front, back) = self.outbox.as_slices();
            ([front, back], front.len() + back.len())
        };
        #[cfg(not(feature = "hand-encode"))]
        let (halves, reports) = ([&self.outbox], self.outbox.len());
        w.piece::<HEADER, _>(&HeaderPiece(self, reports));
        for Inflight { task, .. } in &self.inflight {
            w.piece::<TASK, _>(task);
        }
        for half in halves {
            for e in half {
                w.piece::<ENTRY_ROOM, _>(e);
            }
        }
        let n = w.len();
        if n > room {
            return Err(EncodeError::BufferTooSmall { needed: n + 4 });
        }
        let crc = crc32(&buf[..n]).to_le_bytes();
        buf[n..n + 4].copy_from_slice(&crc);
        Ok(n + 4)
    }

    /// A device with no history, as [`new`](Self::new), whose snapshots go on
    /// from `counter`: that of a snapshot it cannot restore but whose counter
    /// reads ([`snapshot_counter`]), as after a re-enrollment
    /// ([`SnapshotError::Foreign`]). Its connections then stay new
    /// (`Hello.attempt` is numbered from the boot snapshot's counter), so no
    /// stale `Challenge` of the earlier enrollment is taken (PROTOCOL.md 16).
    /// Its first event is the boot snapshot's [`Event::Persist`](super::Event::Persist).
    pub fn continuing(cfg: super::DeviceConfig, counter: u64, now: Instant) -> Self {
        let mut d = Self::new(cfg, now);
        d.counter = counter;
        // This boot's connections are numbered from its boot snapshot's counter.
        // Known limit: a counter past 2^32 (4.3 billion snapshots) loses its
        // high half here, and attempts of the first boots come again.
        d.attempt = counter.wrapping_add(1) << 32;
        d
    }

    /// Restores an engine from a snapshot taken by [`snapshot`](Self::snapshot).
    ///
    /// Tasks that were running when it was taken are reported as failed with
    /// [`reason::INTERRUPTED_BY_REBOOT`](crate::wire::reason::INTERRUPTED_BY_REBOOT):
    /// they are never run twice. A boot sync is wanted at once. When the
    /// snapshot holds a busy "not now" the server has not acknowledged
    /// (its flag), one more sync follows the session whose `Ack` covers the
    /// outbox restored (PROTOCOL.md 14): the server does not offer that task
    /// in the session that brings its "not now". The first
    /// event is a [`Event::Persist`](super::Event::Persist): the boot snapshot,
    /// whose counter numbers this boot's connections (`Hello.attempt`).
    pub fn restore(
        cfg: super::DeviceConfig,
        bytes: &[u8],
        now: Instant,
    ) -> Result<Self, SnapshotError> {
        let payload = checked(bytes)?;
        let (h, tasks, outbox): Decoded<O, I> = decode(payload)?;
        if h.device != cfg.id.0 || h.generation != cfg.generation {
            return Err(SnapshotError::Foreign);
        }
        if !consistent::<O>(tasks.len(), &outbox) {
            return Err(SnapshotError::Inconsistent);
        }
        let mut d = Self::continuing(cfg, h.counter, now);
        d.last_task_seq = h.last_task_seq;
        d.next_report_seq = h.next_report_seq;
        d.policy_version = h.policy_version;
        d.periodic = super::periodic_within_bounds(h.periodic_ms.into());
        d.periodic_at = now + d.periodic;
        d.welcomed = h.welcomed;
        // Its report is the last one stored, or before it: that one stands
        // for it (a later one only asks for a sync that may not have been
        // needed). The reboot ends every running task: room.
        d.busy_seq = h.busy.then_some(h.next_report_seq.wrapping_sub(1));
        d.busy_room_freed = h.busy;
        for task in tasks {
            let slot = Inflight {
                task,
                announced: true,
                cancel: Flag::No,
                progress: None,
            };
            d.inflight
                .push(slot)
                .map_err(|_| SnapshotError::Inconsistent)?;
        }
        // The outbox runs without gaps up to `next_report_seq - 1`.
        let mut seq = h.next_report_seq.wrapping_sub(outbox.len() as u32);
        for body in outbox {
            let entry = Entry {
                seq,
                body: Body::from_slice(body).ok_or(SnapshotError::Inconsistent)?,
                // It may have left before the reboot, if a `Welcome` came:
                // then it is never replaced. Else it cannot have.
                wire: if h.welcomed { Wire::Again } else { Wire::New },
            };
            d.outbox
                .push_back(entry)
                .map_err(|_| SnapshotError::Inconsistent)?;
            seq = seq.wrapping_add(1);
        }
        debug!(
            "restored snapshot {}: {} task(s) interrupted by reboot, {} report(s) unacked",
            h.counter,
            d.inflight.len(),
            d.outbox.len()
        );
        d.fail_interrupted();
        Ok(d)
    }
}

/// Every report body must be 1 to [`MAX_REPORT_BODY`] bytes and decode as a
/// [`ReportBody`](crate::wire::ReportBody) (a body the server cannot read
/// would end every session at it, and never be acknowledged), and the outbox
/// must have room for one final report per running task.
fn consistent<const O: usize>(tasks: usize, outbox: &[&[u8]]) -> bool {
    let valid = outbox.iter().all(|body| {
        (1..=MAX_REPORT_BODY).contains(&body.len()) && crate::wire::is_report_body(body)
    });
    valid && outbox.len() + tasks <= O
}

fn checked(bytes: &[u8]) -> Result<&[u8], SnapshotError> {
    let split = bytes.len().checked_sub(4).ok_or(SnapshotError::TooShort)?;
    let (payload, crc) = bytes.split_at(split);
    let want = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32(payload) != want {
        return Err(SnapshotError::BadCrc);
    }
    Ok(payload)
}

/// The counter of a snapshot whose CRC checks, for choosing between slots.
pub fn snapshot_counter(bytes: &[u8]) -> Result<u64, SnapshotError> {
    Ok(Reader(checked(bytes)?).start()?.1)
}

/// Whether snapshot counter `a` is newer than `b`, across the counter's wrap
/// from `u64::MAX` to 0 (PROTOCOL.md 14): every chooser of a slot asks this
/// (`pick_latest`, and the embedded runner, which reads one slot at a time).
pub(crate) fn counter_newer(a: u64, b: u64) -> bool {
    a != b && a.wrapping_sub(b) < 1 << 63
}

/// Of two storage slots, the valid snapshot with the newer counter; `None`
/// when neither is valid (first boot, or both slots destroyed). Counters are
/// compared across their wrap from `u64::MAX` to 0 (as report sequences are,
/// PROTOCOL.md 9.1): the two slots hold consecutive ones, and a restored
/// counter may be any.
pub fn pick_latest<'a>(a: &'a [u8], b: &'a [u8]) -> Option<&'a [u8]> {
    match (snapshot_counter(a), snapshot_counter(b)) {
        (Ok(x), Ok(y)) => Some(if counter_newer(y, x) { b } else { a }),
        (Ok(_), Err(_)) => Some(a),
        (Err(_), Ok(_)) => Some(b),
        (Err(_), Err(_)) => None,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::device::{Device, DeviceConfig};
    use crate::time::Duration;
    use crate::wire::{
        reason, ComplianceEvent, DeviceId, Platform, PolicyOutcome, PolicyReport, ReportBody,
        SettingFailure, TaskId, TaskKind, TaskStatus, MAX_POLICY_FAILURES,
    };

    /// A task running since before the snapshot.
    fn running(task: Task) -> Inflight {
        Inflight {
            task,
            announced: true,
            cancel: Flag::No,
            progress: None,
        }
    }

    /// The snapshot as PROTOCOL.md, section 14, lays it out, written plainly
    /// field by field (without the pieces and chunks of `snapshot`), CRC
    /// included.
    pub(in crate::device) fn by_layout<const O: usize, const I: usize>(
        d: &Device<O, I>,
    ) -> std::vec::Vec<u8> {
        let mut v = std::vec![FORMAT];
        v.extend_from_slice(&d.counter.to_le_bytes());
        v.extend_from_slice(&d.cfg.id.0.to_le_bytes());
        v.extend_from_slice(&d.cfg.generation.to_le_bytes());
        v.extend_from_slice(&d.last_task_seq.to_le_bytes());
        v.extend_from_slice(&d.next_report_seq.to_le_bytes());
        v.extend_from_slice(&d.policy_version.to_le_bytes());
        // The interval (at most 7 days), its top bit set before any Welcome.
        let ms = d.periodic.as_millis().min(PERIODIC_MAX_MS) as u32;
        let unwelcomed = if d.welcomed { 0 } else { 1 << 31 };
        v.extend_from_slice(&(ms | unwelcomed).to_le_bytes());
        v.extend_from_slice(&(d.inflight.len() as u16).to_le_bytes());
        v.extend_from_slice(&(d.outbox.len() as u16).to_le_bytes());
        // The flags: 1 while a busy "not now" waits for its ack.
        v.push(u8::from(d.busy_seq.is_some()));
        for i in &d.inflight {
            v.extend_from_slice(&i.task.seq.to_le_bytes());
            v.extend_from_slice(&i.task.id.0.to_le_bytes());
            v.push(
                TaskKind::ALL
                    .iter()
                    .position(|k| *k == i.task.kind)
                    .unwrap() as u8,
            );
        }
        for e in &d.outbox {
            v.push(e.body.len() as u8);
            v.extend_from_slice(&e.body);
        }
        let crc = crc32(&v);
        v.extend_from_slice(&crc.to_le_bytes());
        v
    }

    #[test]
    fn hand_written_snapshot_is_the_layout() {
        let t0 = Instant::from_millis(1_000);
        let cfg = DeviceConfig::new(DeviceId(u64::MAX - 3), 7, [9; 32], Platform::Ios);
        let mut d: Device = Device::new(cfg, t0);
        let mut got = [0u8; 1024];
        for k in 0..4u32 {
            d.counter = u64::from(k) << (20 * k);
            d.last_task_seq = u32::MAX >> k;
            d.next_report_seq = 1 << (9 * k);
            d.policy_version = 300 * k;
            d.periodic = Duration::from_millis(60_000 << k);
            let task = Task {
                seq: 1 << (10 * k),
                id: TaskId(u64::MAX >> (13 * k)),
                kind: TaskKind::ALL[k as usize],
            };
            d.inflight.push(running(task)).unwrap();
            // Bodies of 3 to 32 bytes (a partial policy with k failures).
            let mut body = Body::EMPTY;
            body.put(&policy_report(k, 1 << 28, 1 << 14)).unwrap();
            let entry = Entry {
                seq: 40_000 * k,
                body,
                wire: Wire::New,
            };
            d.outbox.push_back(entry).unwrap();
            let want = by_layout(&d);
            let n = d.snapshot(&mut got).unwrap();
            assert_eq!(got[..n], want[..]);
            let short = d.snapshot(&mut got[..n - 1]);
            assert_eq!(short, Err(EncodeError::BufferTooSmall { needed: n }));
            // Exactly long enough: the last pieces go through the writer
            // (their chunks would run past the end), the bytes are the same.
            let mut exact = [0u8; 1024];
            assert_eq!(d.snapshot(&mut exact[..n]), Ok(n));
            assert_eq!(exact[..n], got[..n]);
        }
    }

    /// A partial policy's report with `failures` failures, each field at
    /// `version` and `field` (at 2^28 and 2^14: the longest body there is).
    fn policy_report(failures: u32, version: u32, field: u16) -> ReportBody {
        let failed = (0..failures.min(MAX_POLICY_FAILURES as u32)).map(|_| SettingFailure {
            key: field,
            reason: field,
        });
        let outcome = PolicyOutcome::Partial {
            failed: failed.collect(),
        };
        ReportBody::Policy(PolicyReport { version, outcome })
    }

    /// A random report body of 2 to `MAX_REPORT_BODY` bytes, near varint
    /// length boundaries.
    fn random_report(rng: &mut u64) -> ReportBody {
        match edgy(rng, 8) % 3 {
            0 => ReportBody::Task {
                task: TaskId(edgy(rng, 64)),
                status: TaskStatus::Failed {
                    reason: edgy(rng, 16) as u16,
                },
            },
            1 => ReportBody::Compliance(ComplianceEvent::ManualScanResult {
                threats: edgy(rng, 16) as u16,
            }),
            _ => {
                let failures = edgy(rng, 8) as u32 % (MAX_POLICY_FAILURES as u32 + 1);
                policy_report(failures, edgy(rng, 32) as u32, edgy(rng, 16) as u16)
            }
        }
    }

    /// A value near one of the varint length boundaries of a `u64` (or any).
    fn edgy(rng: &mut u64, bits: u32) -> u64 {
        let r = crate::xorshift(rng);
        let max = if bits == 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        match r % 4 {
            0 => r & max,
            1 => {
                let k = (r >> 8) % (u64::from(bits) / 7 + 1);
                let b = 1u64.checked_shl(7 * k as u32).unwrap_or(0);
                b.wrapping_add((r >> 16) % 3).wrapping_sub(1) & max
            }
            2 => max - (r >> 8) % 3,
            _ => (r >> 8) % 3,
        }
    }

    /// A device in a random state within its capacities; with `consistent`,
    /// one that `restore` takes back (its outbox numbered up to
    /// `next_report_seq - 1`, with room for each running task's report).
    fn random_device<const O: usize, const I: usize>(
        rng: &mut u64,
        consistent: bool,
    ) -> Device<O, I> {
        let t0 = Instant::from_millis(1_000);
        let id = DeviceId(edgy(rng, 64));
        let generation = edgy(rng, 32) as u32;
        let cfg = DeviceConfig::new(id, generation, [9; 32], Platform::Ios);
        let mut d: Device<O, I> = Device::new(cfg, t0);
        d.counter = edgy(rng, 64);
        d.last_task_seq = edgy(rng, 32) as u32;
        d.next_report_seq = edgy(rng, 32) as u32;
        d.policy_version = edgy(rng, 32) as u32;
        d.periodic = Duration::from_millis(edgy(rng, 64));
        d.welcomed = edgy(rng, 8).is_multiple_of(2);
        d.busy_seq = edgy(rng, 8).is_multiple_of(3).then(|| edgy(rng, 32) as u32);
        for _ in 0..edgy(rng, 8) as usize % (I + 1) {
            let task = Task {
                seq: edgy(rng, 32) as u32,
                id: TaskId(edgy(rng, 64)),
                kind: TaskKind::ALL[edgy(rng, 8) as usize % 5],
            };
            d.inflight.push(running(task)).unwrap();
        }
        // Start the ring anywhere, so that the outbox often wraps around.
        for _ in 0..edgy(rng, 8) as usize % (O + 1) {
            let entry = Entry {
                seq: 0,
                body: Body::EMPTY,
                wire: Wire::New,
            };
            d.outbox.push_back(entry).unwrap();
            d.outbox.pop_front();
        }
        let room = if consistent {
            O.saturating_sub(d.inflight.len())
        } else {
            O
        };
        let reports = edgy(rng, 8) as usize % (room + 1);
        for k in 0..reports {
            let mut body = Body::EMPTY;
            for b in body.bytes.iter_mut() {
                *b = edgy(rng, 8) as u8; // bytes past the length too (scratch)
            }
            body.put(&random_report(rng)).unwrap();
            let wire = [Wire::New, Wire::Sent, Wire::Again][edgy(rng, 8) as usize % 3];
            let seq = if consistent {
                d.next_report_seq.wrapping_sub((reports - k) as u32)
            } else {
                edgy(rng, 32) as u32
            };
            d.outbox.push_back(Entry { seq, body, wire }).unwrap();
        }
        d
    }

    fn same_as_layout<const O: usize, const I: usize>(d: &Device<O, I>) {
        let want = by_layout(d);
        let n = want.len();
        assert!(n <= Device::<O, I>::SNAPSHOT_MAX, "{n} > SNAPSHOT_MAX");
        for size in [
            n - 1,
            n,
            n + 1,
            n + 3,
            n + 9,
            n + 47,
            n + 64,
            4096,
            n.saturating_sub(5),
            3,
            0,
        ] {
            let mut got = [0xEEu8; 4096];
            let r = d.snapshot(&mut got[..size]);
            if size < n {
                assert_eq!(
                    r,
                    Err(EncodeError::BufferTooSmall { needed: n }),
                    "size {size}"
                );
            } else {
                assert_eq!(r, Ok(n), "size {size}");
                assert_eq!(got[..n], want[..], "size {size}");
            }
        }
    }

    /// A restored engine holds what was snapshotted: the header's values
    /// (the interval clamped, whether a Welcome came), the outbox with its
    /// sequences and bodies, and each running task's failure after it.
    fn restores_what_was_written<const O: usize, const I: usize>(d: &Device<O, I>) {
        let bytes = by_layout(d);
        let now = Instant::from_millis(5_000);
        let r = Device::<O, I>::restore(d.cfg.clone(), &bytes, now).unwrap();
        assert_eq!(snapshot_counter(&bytes), Ok(d.counter));
        assert_eq!(r.counter, d.counter);
        assert_eq!(r.attempt, d.counter.wrapping_add(1) << 32);
        assert_eq!(r.last_task_seq, d.last_task_seq);
        assert_eq!(r.policy_version, d.policy_version);
        assert_eq!(
            r.periodic,
            super::super::periodic_within_bounds(d.periodic.as_millis())
        );
        assert_eq!(r.welcomed, d.welcomed);
        // A busy "not now" waiting for its ack stands as the last report
        // stored, with room (no task runs after a restore).
        let busy = d.busy_seq.map(|_| d.next_report_seq.wrapping_sub(1));
        assert_eq!((r.busy_seq, r.busy_room_freed), (busy, busy.is_some()));
        assert_eq!(r.running_tasks().count(), 0);
        assert_eq!(r.outbox.len(), d.outbox.len() + d.inflight.len());
        // Reports that may have left (after a Welcome) are never replaced;
        // before any Welcome none can have.
        let wire = if d.welcomed { Wire::Again } else { Wire::New };
        for (got, want) in r.outbox.iter().zip(&d.outbox) {
            assert_eq!((got.seq, &got.body, got.wire), (want.seq, &want.body, wire));
        }
        // Interrupted tasks are failed from the last one running back.
        let failed = r.outbox.iter().skip(d.outbox.len());
        for (e, i) in failed.zip(d.inflight.iter().rev()) {
            let status = TaskStatus::Failed {
                reason: reason::INTERRUPTED_BY_REBOOT,
            };
            let want = ReportBody::Task {
                task: i.task.id,
                status,
            };
            assert_eq!(crate::wire::decode::<ReportBody>(&e.body), Ok(want));
        }
        let next = d.next_report_seq.wrapping_add(d.inflight.len() as u32);
        assert_eq!(r.next_report_seq, next);
    }

    /// A random device's snapshot is the layout at every buffer size; one
    /// in four is consistent, and restores to what was written.
    fn random_snapshot<const O: usize, const I: usize>(rng: &mut u64, consistent: bool) {
        let d = random_device::<O, I>(rng, consistent);
        same_as_layout(&d);
        if consistent {
            restores_what_was_written(&d);
        }
    }

    #[test]
    fn random_snapshots_are_the_layout_and_restore_to_what_was_written() {
        let mut rng = 0x1234_5678_9abc_def1u64;
        for k in 0..20_000 {
            let consistent = k % 4 == 0;
            random_snapshot::<16, 4>(&mut rng, consistent);
            random_snapshot::<4, 2>(&mut rng, consistent);
            random_snapshot::<3, 1>(&mut rng, consistent);
            random_snapshot::<40, 12>(&mut rng, consistent);
        }
    }

    /// `bytes` with a CRC that checks.
    fn sealed(bytes: &[u8]) -> std::vec::Vec<u8> {
        let mut v = bytes.to_vec();
        v.extend_from_slice(&crc32(bytes).to_le_bytes());
        v
    }

    /// A snapshot cut anywhere (even before its format byte), or with a byte
    /// more, is `Malformed`; another format is `UnknownFormat`, whatever
    /// follows it.
    #[test]
    fn cut_long_or_foreign_format_snapshots_are_refused() {
        let mut rng = 0x5151_7777_0000_0001u64;
        let cfg_of = |d: &Device<16, 4>| d.cfg.clone();
        for _ in 0..200 {
            let d = random_device::<16, 4>(&mut rng, true);
            let bytes = by_layout(&d);
            let body = &bytes[..bytes.len() - 4];
            let now = Instant::from_millis(5_000);
            for cut in 0..body.len() {
                let r = Device::<16, 4>::restore(cfg_of(&d), &sealed(&body[..cut]), now);
                assert_eq!(r.err(), Some(SnapshotError::Malformed), "cut at {cut}");
            }
            let mut long = body.to_vec();
            long.push(0);
            let r = Device::<16, 4>::restore(cfg_of(&d), &sealed(&long), now);
            assert_eq!(r.err(), Some(SnapshotError::Malformed));
            for format in [0, 1, 2, 5, 0xFF] {
                let mut other = body.to_vec();
                other[0] = format;
                let other = sealed(&other);
                assert_eq!(
                    snapshot_counter(&other),
                    Err(SnapshotError::UnknownFormat(format))
                );
                let r = Device::<16, 4>::restore(cfg_of(&d), &other, now);
                assert_eq!(r.err(), Some(SnapshotError::UnknownFormat(format)));
            }
        }
    }

    /// A snapshot of format 3 (the header without its flags byte) restores
    /// as one of format 4 with no flag set; a format-4 one whose flags have
    /// any other bit set is `Malformed`.
    #[test]
    fn format_3_restores_with_no_flag_and_unknown_flags_are_refused() {
        let mut rng = 0x0303_0404_5555_0001u64;
        let now = Instant::from_millis(5_000);
        for _ in 0..500 {
            let mut d = random_device::<16, 4>(&mut rng, true);
            let bytes = by_layout(&d);
            let body = &bytes[..bytes.len() - 4];
            let mut old = body.to_vec();
            old[0] = FORMAT_3;
            old.remove(HEADER_3);
            let old = sealed(&old);
            assert_eq!(snapshot_counter(&old), Ok(d.counter));
            let got = Device::<16, 4>::restore(d.cfg.clone(), &old, now).unwrap();
            let busy = d.busy_seq.take();
            let want = Device::<16, 4>::restore(d.cfg.clone(), &by_layout(&d), now).unwrap();
            assert_eq!(std::format!("{got:?}"), std::format!("{want:?}"));
            assert_eq!(got.busy_seq, None);
            for flags in 2..=u8::MAX {
                let mut b = body.to_vec();
                b[HEADER_3] = flags | u8::from(busy.is_some());
                let r = Device::<16, 4>::restore(d.cfg.clone(), &sealed(&b), now);
                assert_eq!(r.err(), Some(SnapshotError::Malformed), "flags {flags}");
            }
        }
    }

    /// What the header promises is checked against the bytes and the
    /// engine: a task of no known kind and more tasks or reports than the
    /// engine holds are `Malformed`; a body of 0 bytes, or more than any
    /// report body, and more reports than leave room for each running
    /// task's are `Inconsistent`; another device's is `Foreign`.
    #[test]
    fn header_counts_kinds_and_bodies_are_checked() {
        let t0 = Instant::from_millis(1_000);
        let cfg = DeviceConfig::new(DeviceId(77), 3, [9; 32], Platform::Ios);
        let mut d = Device::<4, 2>::new(cfg.clone(), t0);
        d.next_report_seq = 10;
        let task = Task {
            seq: 1,
            id: TaskId(5),
            kind: TaskKind::Wipe,
        };
        d.inflight.push(running(task)).unwrap();
        let body = Body::from_slice(&[0, 5, 0]).unwrap();
        let entry = Entry {
            seq: 9,
            body,
            wire: Wire::Sent,
        };
        d.outbox.push_back(entry).unwrap();
        let bytes = by_layout(&d);
        let body = &bytes[..bytes.len() - 4];
        let restore = |b: &[u8]| Device::<4, 2>::restore(cfg.clone(), &sealed(b), t0).err();
        assert_eq!(restore(body), None);
        let kind_at = HEADER + 12;
        let counts_at = HEADER_3 - 4;
        let len_at = HEADER + TASK;
        let with = |at: usize, v: &[u8]| {
            let mut b = body.to_vec();
            b[at..at + v.len()].copy_from_slice(v);
            b
        };
        assert_eq!(
            restore(&with(kind_at, &[5])),
            Some(SnapshotError::Malformed)
        );
        assert_eq!(restore(&with(kind_at, &[4])), None);
        // Three tasks (the capacity is two): more bytes than there are, and
        // too many even when they are there.
        let mut three = with(counts_at, &[3, 0]);
        assert_eq!(restore(&three), Some(SnapshotError::Malformed));
        let task_bytes = &body[HEADER..HEADER + TASK];
        three.splice(HEADER..HEADER, task_bytes.iter().chain(task_bytes).copied());
        assert_eq!(restore(&three), Some(SnapshotError::Malformed));
        // Five reports (the capacity is four).
        let mut five = with(counts_at + 2, &[5, 0]);
        for _ in 0..4 {
            five.extend_from_slice(&[1, 0]);
        }
        assert_eq!(restore(&five), Some(SnapshotError::Malformed));
        // Four reports and a running task: no room for its failure.
        let mut four = with(counts_at + 2, &[4, 0]);
        for _ in 0..3 {
            four.extend_from_slice(&[1, 0]);
        }
        assert_eq!(restore(&four), Some(SnapshotError::Inconsistent));
        assert_eq!(
            restore(&with(len_at, &[0])[..len_at + 1]),
            Some(SnapshotError::Inconsistent)
        );
        let mut long = with(len_at, &[MAX_REPORT_BODY as u8 + 1]);
        long.truncate(len_at + 1);
        long.extend_from_slice(&[0; MAX_REPORT_BODY + 1]);
        assert_eq!(restore(&long), Some(SnapshotError::Inconsistent));
        // The longest body there is takes `MAX_REPORT_BODY` bytes.
        let mut longest = with(len_at, &[MAX_REPORT_BODY as u8]);
        longest.truncate(len_at + 1);
        let mut buf = [0; MAX_REPORT_BODY];
        let report = policy_report(4, 1 << 28, 1 << 14);
        let n = crate::wire::encode_payload(&report, &mut buf).unwrap();
        assert_eq!(n, MAX_REPORT_BODY);
        longest.extend_from_slice(&buf);
        assert_eq!(restore(&longest), None);
        // A body of the right length that is no `ReportBody` (an unknown
        // tag, a truncated one, one with a byte left over): the server could
        // not read it and would never acknowledge it.
        for bad in [&[0xFF][..], &[0, 5], &[1, 0, 0], &[0, 5, 0, 0]] {
            let mut b = with(len_at, &[bad.len() as u8]);
            b.truncate(len_at + 1);
            b.extend_from_slice(bad);
            assert_eq!(restore(&b), Some(SnapshotError::Inconsistent), "{bad:?}");
        }
        let other = DeviceConfig::new(DeviceId(78), 3, [9; 32], Platform::Ios);
        let r = Device::<4, 2>::restore(other, &bytes, t0);
        assert_eq!(r.err(), Some(SnapshotError::Foreign));
        let later = DeviceConfig::new(DeviceId(77), 4, [9; 32], Platform::Ios);
        let r = Device::<4, 2>::restore(later, &bytes, t0);
        assert_eq!(r.err(), Some(SnapshotError::Foreign));
    }
}
