//! `load_device` reads a slot that fails its check once more: a read that
//! came back corrupted once, without an error, is not taken for a torn
//! write (which would restore the older snapshot and could run a task of
//! the newer one's ledger again). A slot corrupted on every read still is,
//! as its docs say.

use mdm_sync::adapters::blocking::{load_device, Storage};
use mdm_sync::device::{Device, DeviceConfig, Event, DEFAULT_INFLIGHT, DEFAULT_OUTBOX};
use mdm_sync::time::Instant;
use mdm_sync::wire::{ComplianceEvent, DeviceId, Platform};

const NOW: Instant = Instant::from_millis(5_000);

type Dev = Device<DEFAULT_OUTBOX, DEFAULT_INFLIGHT>;

fn cfg() -> DeviceConfig {
    DeviceConfig::new(DeviceId(3), 0, [4; 32], Platform::Android)
}

/// Two slots; reads of slot 1 come back with a byte flipped while
/// `corrupt_reads` lasts (without an error).
struct Flaky {
    slots: [Vec<u8>; 2],
    corrupt_reads: usize,
    reads: [usize; 2],
}

impl Storage for Flaky {
    type Error = ();

    fn load(&mut self, slot: usize, buf: &mut Vec<u8>) -> Result<(), ()> {
        self.reads[slot] += 1;
        buf.clone_from(&self.slots[slot]);
        if slot == 1 && self.corrupt_reads > 0 {
            self.corrupt_reads -= 1;
            buf[5] ^= 0x10;
        }
        Ok(())
    }

    fn store(&mut self, slot: usize, bytes: &[u8]) -> Result<(), ()> {
        self.slots[slot] = bytes.to_vec();
        Ok(())
    }
}

fn snapshot(d: &Dev) -> Vec<u8> {
    let mut buf = vec![0u8; Dev::SNAPSHOT_MAX];
    let n = d.snapshot(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

/// Slot 0: a fresh device's snapshot; slot 1, newer: the same device with
/// a compliance event in its outbox.
fn slots() -> [Vec<u8>; 2] {
    let mut d = Dev::new(cfg(), NOW);
    let older = snapshot(&d);
    d.raise_compliance(ComplianceEvent::ProfileChanged, NOW)
        .unwrap();
    assert!(core::iter::from_fn(|| d.poll_event()).any(|e| e == Event::Persist));
    [older, snapshot(&d)]
}

fn restored_from(bytes: &[u8]) -> Vec<u8> {
    snapshot(&Dev::restore(cfg(), bytes, NOW).unwrap())
}

#[test]
fn a_slot_corrupted_on_one_read_is_read_again_and_restored() {
    let slots = slots();
    let newer = restored_from(&slots[1]);
    assert_ne!(newer, restored_from(&slots[0]), "the two slots differ");
    let mut storage = Flaky {
        slots: slots.clone(),
        corrupt_reads: 1,
        reads: [0; 2],
    };
    let d: Dev = load_device(cfg(), &mut storage, NOW).unwrap();
    assert_eq!(snapshot(&d), newer, "restored from the newer slot");
    assert_eq!(storage.reads, [1, 2], "only the failing slot read again");
}

#[test]
fn a_slot_corrupted_on_every_read_is_taken_for_a_torn_write() {
    let slots = slots();
    let mut storage = Flaky {
        slots: slots.clone(),
        corrupt_reads: usize::MAX,
        reads: [0; 2],
    };
    let d: Dev = load_device(cfg(), &mut storage, NOW).unwrap();
    assert_eq!(snapshot(&d), restored_from(&slots[0]), "the older slot");
    assert_eq!(storage.reads, [1, 2]);
}

#[test]
fn healthy_slots_are_read_once_and_empty_ones_start_fresh() {
    let slots = slots();
    let mut storage = Flaky {
        slots: slots.clone(),
        corrupt_reads: 0,
        reads: [0; 2],
    };
    let d: Dev = load_device(cfg(), &mut storage, NOW).unwrap();
    assert_eq!(snapshot(&d), restored_from(&slots[1]));
    assert_eq!(storage.reads, [1, 1]);

    let mut empty = Flaky {
        slots: [Vec::new(), Vec::new()],
        corrupt_reads: 0,
        reads: [0; 2],
    };
    let d: Dev = load_device(cfg(), &mut empty, NOW).unwrap();
    assert_eq!(snapshot(&d), snapshot(&Dev::new(cfg(), NOW)), "first boot");
}
