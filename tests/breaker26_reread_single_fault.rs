//! Both snapshot loaders (blocking `load_device`, embedded
//! `Runner::restore`) read a slot that fails its check once more. Here
//! every single read, one at a time, comes back damaged without an error,
//! in each of several ways (a byte flipped at the start, in the length, in
//! the middle, in the CRC; cut short by one byte; empty), with the newer
//! snapshot in either slot: whichever read it is, the newer snapshot must
//! be restored. One damaged read is what the change promises to survive.
#![cfg(all(feature = "embedded", feature = "tokio"))]

mod common;

use common::Unused;
use mdm_sync::adapters::blocking::{load_device, Storage};
use mdm_sync::adapters::embedded::{Runner, SnapshotStore};
use mdm_sync::device::{Device, DeviceConfig};
use mdm_sync::time::Instant;
use mdm_sync::wire::{ComplianceEvent, DeviceId, Platform};

#[derive(Clone, Copy, Debug)]
enum Damage {
    Flip(usize),
    FlipLast,
    Short,
    Empty,
}

const DAMAGES: [Damage; 7] = [
    Damage::Flip(0),
    Damage::Flip(2),
    Damage::Flip(4),
    Damage::Flip(20),
    Damage::FlipLast,
    Damage::Short,
    Damage::Empty,
];

/// Two slots; the `bad`-th read (from 1) comes back damaged.
#[derive(Clone)]
struct Slots {
    slots: [Vec<u8>; 2],
    reads: usize,
    bad: usize,
    damage: Damage,
}

impl Slots {
    fn bytes(&mut self, slot: usize) -> Vec<u8> {
        self.reads += 1;
        let mut v = self.slots[slot].clone();
        if self.reads == self.bad && !v.is_empty() {
            match self.damage {
                Damage::Flip(i) => {
                    let at = i.min(v.len() - 1);
                    v[at] ^= 0x04;
                }
                Damage::FlipLast => *v.last_mut().unwrap() ^= 0x80,
                Damage::Short => {
                    v.pop();
                }
                Damage::Empty => v.clear(),
            }
        }
        v
    }
}

impl Storage for Slots {
    type Error = ();
    fn load(&mut self, slot: usize, buf: &mut Vec<u8>) -> Result<(), ()> {
        *buf = self.bytes(slot);
        Ok(())
    }
    fn store(&mut self, _: usize, _: &[u8]) -> Result<(), ()> {
        Ok(())
    }
}

impl SnapshotStore for Slots {
    type Error = ();
    async fn read(&mut self, slot: usize, buf: &mut [u8]) -> Result<usize, ()> {
        let v = self.bytes(slot);
        buf.get_mut(..v.len()).ok_or(())?.copy_from_slice(&v);
        Ok(v.len())
    }
    async fn write(&mut self, _: usize, _: &[u8]) -> Result<(), ()> {
        Ok(())
    }
}

/// Slots with an older snapshot (empty outbox) and a newer one (one
/// event); the newer in slot `newer_in` (swapped if need be: the loaders
/// go by the counters, not the slot).
fn slots(cfg: &DeviceConfig, newer_in: usize) -> [Vec<u8>; 2] {
    let mut d: Device = Device::new(cfg.clone(), Instant::ZERO);
    let older = common::next_persist(&mut d);
    d.raise_compliance(ComplianceEvent::ProfileChanged, Instant::ZERO)
        .unwrap();
    let newer = common::next_persist(&mut d);
    let mut s = [Vec::new(), Vec::new()];
    s[newer_in] = newer;
    s[1 - newer_in] = older;
    s
}

#[tokio::test(flavor = "current_thread")]
async fn one_damaged_read_anywhere_still_restores_the_newer_snapshot() {
    let cfg = DeviceConfig::new(DeviceId(4), 0, [1; 32], Platform::Android);
    let mut cases = 0;
    for newer_in in 0..2 {
        let slots = slots(&cfg, newer_in);
        for damage in DAMAGES {
            for bad in 1..=8 {
                let case = format!("newer in {newer_in}, read {bad} {damage:?}");
                let store = Slots {
                    slots: slots.clone(),
                    reads: 0,
                    bad,
                    damage,
                };
                let mut blocking = store.clone();
                let d: Device = load_device(cfg.clone(), &mut blocking, Instant::ZERO)
                    .unwrap_or_else(|e| panic!("{case}: blocking {e:?}"));
                assert_eq!(d.outbox_len(), 1, "{case}: blocking took the older");
                let mut runner = Runner::new(Unused, Unused, store, Unused);
                let mut buf = [0u8; <Device>::SNAPSHOT_MAX];
                let d: Device = runner
                    .restore(cfg.clone(), &mut buf)
                    .await
                    .unwrap_or_else(|e| panic!("{case}: embedded {e:?}"));
                assert_eq!(d.outbox_len(), 1, "{case}: embedded took the older");
                cases += 1;
            }
        }
    }
    eprintln!("{cases} cases");
}
