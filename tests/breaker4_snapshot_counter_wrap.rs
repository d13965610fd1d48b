//! A snapshot's counter past which it wraps (PROTOCOL.md 14, A/B slots).
//! `restore` takes any counter, and each Persist after it adds one,
//! wrapping from `u64::MAX` to 0. `pick_latest` chose the higher counter,
//! so from the wrap on it chose the older slot: a reboot then restored the
//! state from before the newest snapshot, whose reports and tasks may have
//! left already (their sequence numbers are then used again for other
//! reports, which the server takes for resends). The counter reaches
//! `u64::MAX` only through a snapshot written with it (no device persists
//! 2^64 times), but `restore` must not turn any byte string into an engine
//! that breaks its guarantees later. The embedded runner, which chooses
//! between its slots itself, is checked the same way at the end.

use mdm_sync::device::{pick_latest, snapshot_counter, Device, DeviceConfig, Event};
use mdm_sync::time::Instant;
use mdm_sync::wire::{crc32, DeviceId, Platform};

fn cfg() -> DeviceConfig {
    DeviceConfig::new(DeviceId(9), 1, [3; 32], Platform::Android)
}

/// The snapshot a device takes at its next Persist event.
fn next_snapshot(d: &mut Device) -> Vec<u8> {
    while let Some(ev) = d.poll_event() {
        if let Event::Persist = ev {
            let mut buf = vec![0u8; Device::<16, 4>::SNAPSHOT_MAX];
            let n = d.snapshot(&mut buf).unwrap();
            buf.truncate(n);
            return buf;
        }
    }
    panic!("no Persist event");
}

/// `bytes` with the counter `counter` and the CRC sealed again.
fn with_counter(bytes: &[u8], counter: u64) -> Vec<u8> {
    let mut body = bytes[..bytes.len() - 4].to_vec();
    body[1..9].copy_from_slice(&counter.to_le_bytes());
    let crc = crc32(&body);
    body.extend_from_slice(&crc.to_le_bytes());
    body
}

/// From counters just below the wrap (and at it), a device persists its
/// boot snapshot and then one snapshot per compliance event; `check` sees
/// both slots after each write, with the device and the counter written.
fn across_the_wrap(mut check: impl FnMut(&[Vec<u8>; 2], &Device, u64, u64)) {
    let now = Instant::from_millis(1_000);
    let mut first: Device = Device::new(cfg(), now);
    let boot = next_snapshot(&mut first);
    for start in [u64::MAX - 3, u64::MAX - 1, u64::MAX] {
        let mut slots = [Vec::new(), Vec::new()];
        let old = with_counter(&boot, start);
        let mut d: Device = Device::restore(cfg(), &old, now).unwrap();
        slots[(start % 2) as usize] = old;
        for k in 1..=4u64 {
            let snap = next_snapshot(&mut d);
            let counter = start.wrapping_add(k);
            assert_eq!(snapshot_counter(&snap), Ok(counter));
            slots[d.snapshot_slot()] = snap;
            check(&slots, &d, start, counter);
            d.raise_compliance(mdm_sync::wire::ComplianceEvent::ProfileChanged, now)
                .unwrap();
        }
    }
}

#[test]
fn the_newest_slot_is_picked_across_the_counter_wrap() {
    across_the_wrap(|slots, _, start, counter| {
        let picked = pick_latest(&slots[0], &slots[1]).unwrap();
        assert_eq!(
            snapshot_counter(picked),
            Ok(counter),
            "from {start}: the slot of counter {counter} is the newest"
        );
    });
}

/// The embedded runner's restore picks the newest slot too (breaker5). It
/// reads one slot at a time into the caller's buffer and compared counters
/// with a plain `>`, so once the counter wrapped it restored the older slot
/// (here a compliance event queued after it was lost; in general reports
/// and accepted tasks that may have left already).
#[cfg(all(feature = "embedded", feature = "tokio"))]
mod common;

#[cfg(all(feature = "embedded", feature = "tokio"))]
mod breaker5_embedded_runner {
    use super::{across_the_wrap, cfg};
    use crate::common::{MemorySlots, Unused};
    use mdm_sync::adapters::embedded::Runner;
    use mdm_sync::device::Device;

    #[test]
    fn the_runner_restores_the_newest_slot_across_the_counter_wrap() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        // The newest slot holds the most reports (one per compliance event).
        across_the_wrap(|slots, d, start, counter| {
            let mut runner = Runner::new(Unused, Unused, MemorySlots(slots.clone()), Unused);
            let mut buf = [0u8; <Device>::SNAPSHOT_MAX];
            let restored: Device = rt
                .block_on(runner.restore(cfg(), &mut buf))
                .expect("a valid slot restores");
            assert_eq!(
                restored.outbox_len(),
                d.outbox_len(),
                "from {start}: the runner restored an older slot than the one of counter {counter}"
            );
        });
    }
}
