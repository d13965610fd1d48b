//! The embedded runner's `restore` reads both slots to find the newer valid
//! snapshot, then reads that slot again (it has one buffer). A read that comes
//! back damaged once (a transient flash or bus fault) on that second read made
//! `restore` fail with `RestoreError::Snapshot(BadCrc)`, which its docs give
//! for a snapshot that does not fit the configuration: an application that
//! then starts afresh forgets its outbox (here an unacknowledged compliance
//! event) and its task ledger, though both slots were intact.
//!
//! Expected: the slot is read again until the bytes are the ones the scan
//! chose (bounded), and the engine is restored from them. Found on main;
//! fixed in `Runner::restore`.
#![cfg(all(feature = "embedded", feature = "tokio"))]

mod common;

use common::Unused;
use mdm_sync::adapters::embedded::{RestoreError, Runner, SnapshotStore};
use mdm_sync::device::{Device, DeviceConfig};
use mdm_sync::time::Instant;
use mdm_sync::wire::{ComplianceEvent, DeviceId, Platform};

/// Two slots; the `flaky_read`-th read (counting from 1) comes back with
/// one byte flipped.
struct Slots {
    slots: [Vec<u8>; 2],
    reads: usize,
    flaky_read: usize,
}

impl SnapshotStore for Slots {
    type Error = ();

    async fn read(&mut self, slot: usize, buf: &mut [u8]) -> Result<usize, ()> {
        self.reads += 1;
        let data = self.slots.get(slot).ok_or(())?;
        let dst = buf.get_mut(..data.len()).ok_or(())?;
        dst.copy_from_slice(data);
        if self.reads == self.flaky_read {
            if let Some(b) = dst.get_mut(20) {
                *b ^= 0x01;
            }
        }
        Ok(data.len())
    }

    async fn write(&mut self, _slot: usize, _bytes: &[u8]) -> Result<(), ()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_damaged_second_read_does_not_pass_for_a_foreign_snapshot() {
    let cfg = DeviceConfig::new(DeviceId(4), 0, [1; 32], Platform::Android);
    let mut d: Device = Device::new(cfg.clone(), Instant::ZERO);
    let older = common::next_persist(&mut d);
    let older_slot = d.snapshot_slot();
    d.raise_compliance(
        ComplianceEvent::UsbDebugging { enabled: true },
        Instant::ZERO,
    )
    .unwrap();
    let newer = common::next_persist(&mut d);
    let newer_slot = d.snapshot_slot();
    assert_ne!(older_slot, newer_slot, "A/B slots alternate");
    let mut slots = [Vec::new(), Vec::new()];
    slots[older_slot] = older;
    slots[newer_slot] = newer;

    // Reads 1 and 2 scan both slots (a slot that fails its check is read
    // once more); a read after them reads the chosen slot again. Damage each
    // read in turn: whichever it is, the newer snapshot (with its queued
    // compliance event) must be restored, even when the scan's read of it
    // was the damaged one.
    for flaky_read in 1..=5 {
        let store = Slots {
            slots: slots.clone(),
            reads: 0,
            flaky_read,
        };
        let mut runner = Runner::new(Unused, Unused, store, Unused);
        let mut buf = [0u8; <Device>::SNAPSHOT_MAX];
        let restored: Result<Device, RestoreError<()>> =
            runner.restore(cfg.clone(), &mut buf).await;
        let restored = restored.unwrap_or_else(|e| {
            panic!(
                "damaged read {flaky_read}: restore failed with {e:?} though both slots are intact"
            )
        });
        assert_eq!(
            restored.outbox_len(),
            1,
            "damaged read {flaky_read}: the newer snapshot, with its event"
        );
    }
}
