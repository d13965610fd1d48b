//! The device's persistent state: a small postcard record with a CRC.
//!
//! Layout: `postcard(header, running tasks, outbox) || CRC-32 (LE)` over the
//! postcard bytes. Write snapshots alternately into two storage slots
//! ([`Device::snapshot_slot`]) and restore with [`pick_latest`]: a write torn
//! by power loss fails its CRC, and the other slot still holds the previous
//! snapshot, taken before anything newer could leave the device.

use heapless::Vec;
use serde::Deserialize;
#[cfg(test)]
use serde::Serialize;

use super::{Body, Device, DeviceConfig, Entry, Flag, Inflight, Wire};
use crate::log::debug;
use crate::time::Instant;
use crate::wire::{crc32, DeviceId, EncodeError, Out, Piece, Task, Writer, MAX_REPORT_BODY};

// 2: outbox reports as the bytes of their encoded body (1: decoded values).
const FORMAT: u8 = 2;

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

#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct Header {
    format: u8,
    counter: u64,
    device: DeviceId,
    generation: u32,
    last_task_seq: u32,
    next_report_seq: u32,
    policy_version: u32,
    periodic_ms: u64,
}

// The room each piece of a snapshot is written in when the buffer has it
// (see `Writer::piece`): each write needs the room of its longest case.
// The header: format, two `u64`s, four `u32`s, the interval and the running
// tasks' count (the last starts at most 51 bytes in and needs 10). With the
// id and generation, and the policy version and interval, copied whole (16
// bytes each, 15 used) it is no longer: the second copy starts at most 36 in.
const HEADER_ROOM: usize = 64;
// A running task: sequence, id (room 10, from at most 5 in) and kind.
const TASK_ROOM: usize = 20;
// An outbox report: sequence, then its body's length (room 10, from at most
// 5 in) and the body copied whole (from at most 6 in).
const ENTRY_ROOM: usize = 6 + MAX_REPORT_BODY;

/// Up to 16 bytes of snapshot encoded ahead of time, for values that are in
/// every snapshot and change seldom or never (servers and phones only).
#[cfg(feature = "hand-encode")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Encoded {
    pub(super) bytes: [u8; 16],
    pub(super) len: u8,
}

#[cfg(feature = "hand-encode")]
impl Encoded {
    pub(super) const EMPTY: Self = Self {
        bytes: [0; 16],
        len: 0,
    };

    /// `piece`, which is at most 16 bytes and needs a room of at most 16
    /// (see `Writer::piece`): a `u32` and a `u64` varint need 5 + 10, the
    /// second from at most 5 in.
    pub(super) fn of<P: Piece>(piece: &P) -> Self {
        let mut bytes = [0; 16];
        let mut w = Writer::new(&mut bytes);
        w.piece::<16, _>(piece);
        let len = w.len().min(16) as u8;
        Self { bytes, len }
    }
}

/// The device id and generation (never change).
#[cfg(feature = "hand-encode")]
pub(super) struct IdGen<'a>(pub(super) &'a DeviceConfig);

#[cfg(feature = "hand-encode")]
impl Piece for IdGen<'_> {
    #[inline(always)]
    fn write<W: Out>(&self, w: &mut W) {
        w.varint(self.0.id.0);
        w.varint32(self.0.generation);
    }
}

/// The policy version and the periodic interval in ms (seldom change).
#[cfg(feature = "hand-encode")]
pub(super) struct Settings(pub(super) u32, pub(super) u64);

#[cfg(feature = "hand-encode")]
impl Piece for Settings {
    #[inline(always)]
    fn write<W: Out>(&self, w: &mut W) {
        w.varint32(self.0);
        w.varint(self.1);
    }
}

/// The header and the running tasks' count, as one piece.
struct HeaderPiece<'a, const O: usize, const I: usize>(&'a Device<O, I>);

impl<const O: usize, const I: usize> Piece for HeaderPiece<'_, O, I> {
    #[inline(always)]
    fn write<W: Out>(&self, w: &mut W) {
        let d = self.0;
        w.push(FORMAT);
        // The device id and generation never change: with `hand-encode` they
        // were encoded once, by `new`. Firmware encodes them each time, in
        // loops over arrays, not one call per field: that keeps opt-level s
        // at its size (a `Chunk` unrolls the loops all the same).
        #[cfg(feature = "hand-encode")]
        {
            w.varint(d.counter);
            w.array(&d.id_gen.bytes, d.id_gen.len.into());
            w.varint32(d.last_task_seq);
            w.varint32(d.next_report_seq);
            let (version, ms, ref settings) = d.settings;
            if (version, ms) == (d.policy_version, d.periodic.as_millis()) {
                w.array(&settings.bytes, settings.len.into());
            } else {
                Settings(d.policy_version, d.periodic.as_millis()).write(w);
            }
        }
        #[cfg(not(feature = "hand-encode"))]
        {
            for v in [d.counter, d.cfg.id.0] {
                w.varint(v);
            }
            let seqs = [
                d.cfg.generation,
                d.last_task_seq,
                d.next_report_seq,
                d.policy_version,
            ];
            for v in seqs {
                w.varint32(v);
            }
            w.varint(d.periodic.as_millis());
        }
        w.varint(d.inflight.len() as u64);
    }
}

impl Piece for Task {
    #[inline(always)]
    fn write<W: Out>(&self, w: &mut W) {
        w.varint32(self.seq);
        w.varint(self.id.0);
        w.varint32(self.kind as u32); // its variant index
    }
}

impl Piece for Entry {
    #[inline(always)]
    fn write<W: Out>(&self, w: &mut W) {
        w.varint32(self.seq);
        w.len_prefixed_of(&self.body.bytes, self.body.len());
    }
}

// Report bodies are borrowed from the snapshot and copied, never decoded.
type Decoded<'a, const O: usize, const I: usize> = (Header, Vec<Task, I>, Vec<(u32, &'a [u8]), O>);

impl<const O: usize, const I: usize> Device<O, I> {
    /// Upper bound of [`snapshot`](Self::snapshot)'s length for these capacities.
    pub const SNAPSHOT_MAX: usize = 64 + I * 20 + O * 48 + 4;

    /// Which of two storage slots the current snapshot belongs in (0 or 1).
    pub fn snapshot_slot(&self) -> usize {
        (self.counter % 2) as usize
    }

    /// Writes the persistent state into `buf`; returns its length. Bytes of
    /// `buf` after that length may be overwritten too (scratch).
    ///
    /// Written by hand in the postcard encoding of `(Header, [Task],
    /// [(u32, bytes)])`, which is what `restore` reads (a test checks the
    /// bytes against serde's): a snapshot is taken for every report queued,
    /// so it is on the path of every task.
    pub fn snapshot(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let room = buf.len().saturating_sub(4);
        let mut w = Writer::new(&mut buf[..room]);
        w.piece::<HEADER_ROOM, _>(&HeaderPiece(self));
        for Inflight { task, .. } in &self.inflight {
            w.piece::<TASK_ROOM, _>(task);
        }
        // Servers and phones write the outbox's two halves (it wraps around)
        // one after the other: a chained iterator checks which half it is in
        // at every step. Firmware keeps the one loop (0.2 KB less flash).
        #[cfg(feature = "hand-encode")]
        let halves = {
            let (front, back) = self.outbox.as_slices();
            [front, back]
        };
        #[cfg(not(feature = "hand-encode"))]
        let halves = [&self.outbox];
        w.varint(halves.iter().map(|h| h.len()).sum::<usize>() as u64);
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
    pub fn continuing(cfg: DeviceConfig, counter: u64, now: Instant) -> Self {
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
    /// they are never run twice. A boot sync is wanted at once. The first
    /// event is a [`Event::Persist`](super::Event::Persist): the boot snapshot,
    /// whose counter numbers this boot's connections (`Hello.attempt`).
    pub fn restore(cfg: DeviceConfig, bytes: &[u8], now: Instant) -> Result<Self, SnapshotError> {
        snapshot_counter(bytes)?; // CRC, then the format byte, before the rest
        let payload = checked(bytes)?;
        let (h, tasks, outbox): Decoded<O, I> = match postcard::take_from_bytes(payload) {
            Ok((d, [])) => d,
            _ => return Err(SnapshotError::Malformed),
        };
        if h.device != cfg.id || h.generation != cfg.generation {
            return Err(SnapshotError::Foreign);
        }
        if !consistent::<O>(&h, tasks.len(), &outbox) {
            return Err(SnapshotError::Inconsistent);
        }
        let mut d = Self::continuing(cfg, h.counter, now);
        d.last_task_seq = h.last_task_seq;
        d.next_report_seq = h.next_report_seq;
        d.policy_version = h.policy_version;
        d.periodic = super::periodic_within_bounds(h.periodic_ms);
        d.periodic_at = now + d.periodic;
        d.settings_changed();
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
        for (seq, body) in outbox {
            let entry = Entry {
                seq,
                body: Body::from_slice(body).ok_or(SnapshotError::Inconsistent)?,
                // It may have left before the reboot: never replaced.
                wire: Wire::Again,
            };
            d.outbox
                .push_back(entry)
                .map_err(|_| SnapshotError::Inconsistent)?;
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

/// Outbox sequence numbers must run without gaps up to `next_report_seq - 1`,
/// every report body must be 1 to [`MAX_REPORT_BODY`] bytes, and the outbox
/// must have room for one final report per running task.
fn consistent<const O: usize>(h: &Header, tasks: usize, outbox: &[(u32, &[u8])]) -> bool {
    let valid = outbox.iter().enumerate().all(|(k, (seq, body))| {
        let back = (outbox.len() - k) as u32;
        h.next_report_seq.wrapping_sub(back) == *seq && (1..=MAX_REPORT_BODY).contains(&body.len())
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
    let payload = checked(bytes)?;
    match postcard::take_from_bytes::<Header>(payload) {
        Ok((h, _)) if h.format == FORMAT => Ok(h.counter),
        Ok((h, _)) => Err(SnapshotError::UnknownFormat(h.format)),
        Err(_) => Err(SnapshotError::Malformed),
    }
}

/// Of two storage slots, the valid snapshot with the higher counter; `None`
/// when neither is valid (first boot, or both slots destroyed).
pub fn pick_latest<'a>(a: &'a [u8], b: &'a [u8]) -> Option<&'a [u8]> {
    match (snapshot_counter(a), snapshot_counter(b)) {
        (Ok(x), Ok(y)) => Some(if y > x { b } else { a }),
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
    use crate::wire::{encode_serde, Platform, TaskId, TaskKind};
    use serde::ser::Serializer;

    /// A byte string: a varint length, then the bytes.
    struct Bytes<'a>(&'a [u8]);

    impl Serialize for Bytes<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    /// Serializes whatever the closure iterates as a sequence.
    struct Seq<F>(F);

    impl<F: Fn() -> It, It: Iterator<Item = T>, T: Serialize> Serialize for Seq<F> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq((self.0)())
        }
    }

    /// The snapshot as serde writes the tuple that `restore` reads.
    pub(in crate::device) fn by_serde<const O: usize, const I: usize>(
        d: &Device<O, I>,
        buf: &mut [u8],
    ) -> usize {
        let header = Header {
            format: FORMAT,
            counter: d.counter,
            device: d.cfg.id,
            generation: d.cfg.generation,
            last_task_seq: d.last_task_seq,
            next_report_seq: d.next_report_seq,
            policy_version: d.policy_version,
            periodic_ms: d.periodic.as_millis(),
        };
        let tasks = Seq(|| d.inflight.iter().map(|i| i.task));
        let outbox = Seq(|| d.outbox.iter().map(|e| (e.seq, Bytes(&e.body))));
        encode_serde(&(header, tasks, outbox), buf)
    }

    #[test]
    fn hand_written_snapshot_is_what_serde_writes() {
        let t0 = Instant::from_millis(1_000);
        let cfg = DeviceConfig::new(DeviceId(u64::MAX - 3), 7, [9; 32], Platform::Ios);
        let mut d: Device = Device::new(cfg, t0);
        let (mut want, mut got) = ([0u8; 1024], [0u8; 1024]);
        for k in 0..4u32 {
            d.counter = u64::from(k) << (20 * k);
            d.last_task_seq = u32::MAX >> k;
            d.next_report_seq = 1 << (9 * k);
            d.policy_version = 300 * k;
            d.periodic = Duration::from_millis(60_000 << k);
            if k.is_multiple_of(2) {
                d.settings_changed();
            }
            let task = Task {
                seq: 1 << (10 * k),
                id: TaskId(u64::MAX >> (13 * k)),
                kind: TaskKind::ALL[k as usize],
            };
            d.inflight
                .push(Inflight {
                    task,
                    announced: true,
                    cancel: Flag::No,
                    progress: None,
                })
                .unwrap();
            let body = Body::from_slice(&[k as u8; MAX_REPORT_BODY][..1 + 9 * k as usize]).unwrap();
            let entry = Entry {
                seq: 40_000 * k,
                body,
                wire: Wire::New,
            };
            d.outbox.push_back(entry).unwrap();
            let w = by_serde(&d, &mut want);
            let n = d.snapshot(&mut got).unwrap();
            assert_eq!(got[..n - 4], want[..w]);
            assert_eq!(n, w + 4);
            let short = d.snapshot(&mut got[..n - 1]);
            assert_eq!(short, Err(EncodeError::BufferTooSmall { needed: n }));
            // Exactly long enough: the last pieces go through the writer
            // (their chunks would run past the end), the bytes are the same.
            let mut exact = [0u8; 1024];
            assert_eq!(d.snapshot(&mut exact[..n]), Ok(n));
            assert_eq!(exact[..n], got[..n]);
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

    fn random_device<const O: usize, const I: usize>(rng: &mut u64) -> Device<O, I> {
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
        // Both ways of writing them: encoded ahead, or (set behind the
        // engine's back, as here) encoded by the snapshot itself.
        if edgy(rng, 8).is_multiple_of(2) {
            d.settings_changed();
        }
        for _ in 0..edgy(rng, 8) as usize % (I + 1) {
            let task = Task {
                seq: edgy(rng, 32) as u32,
                id: TaskId(edgy(rng, 64)),
                kind: TaskKind::ALL[edgy(rng, 8) as usize % 5],
            };
            let slot = Inflight {
                task,
                announced: true,
                cancel: Flag::No,
                progress: None,
            };
            d.inflight.push(slot).unwrap();
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
        for _ in 0..edgy(rng, 8) as usize % (O + 1) {
            let mut body = Body::EMPTY;
            for b in body.bytes.iter_mut() {
                *b = edgy(rng, 8) as u8; // bytes past the length too (scratch)
            }
            let len = [
                1,
                MAX_REPORT_BODY,
                1 + edgy(rng, 8) as usize % MAX_REPORT_BODY,
            ];
            body.len = len[edgy(rng, 8) as usize % 3] as u8;
            let wire = [Wire::New, Wire::Sent, Wire::Again][edgy(rng, 8) as usize % 3];
            let seq = edgy(rng, 32) as u32;
            d.outbox.push_back(Entry { seq, body, wire }).unwrap();
        }
        d
    }

    fn same_as_serde<const O: usize, const I: usize>(d: &Device<O, I>) {
        let mut want = [0u8; 4096];
        let w = by_serde(d, &mut want);
        let n = w + 4;
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
                assert_eq!(got[..w], want[..w], "size {size}");
                assert_eq!(got[w..n], crc32(&want[..w]).to_le_bytes());
            }
        }
    }

    #[test]
    fn random_snapshots_are_what_serde_writes_at_every_buffer_size() {
        let mut rng = 0x1234_5678_9abc_def1u64;
        for _ in 0..20_000 {
            same_as_serde(&random_device::<16, 4>(&mut rng));
            same_as_serde(&random_device::<4, 2>(&mut rng));
            same_as_serde(&random_device::<1, 1>(&mut rng));
            same_as_serde(&random_device::<40, 12>(&mut rng));
        }
    }
}
