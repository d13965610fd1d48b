//! `snapshot_restore`: `Device::restore`, `snapshot_counter` and
//! `pick_latest` on arbitrary bytes.
//!
//! Input: mode (u8), then the bytes. Mode bit 0: append a valid CRC to the
//! bytes (so that the fuzzer gets past the checksum to the decoder and the
//! consistency checks). Mode bit 1: split the bytes in two at the next byte
//! and try both as storage slots.
//!
//! Invariants: no panic; a restored engine is within its capacities, has no
//! running task (they are reported as interrupted), snapshots again to bytes
//! that restore to the same state and snapshot to the same bytes;
//! `pick_latest` returns one of its inputs, and a valid one whenever either
//! is valid.

use mdm_sync::device::{pick_latest, snapshot_counter, Device};
use mdm_sync::time::Instant;
use mdm_sync::wire::crc32;

use crate::device::config;
use crate::Input;

/// Runs one input.
pub fn run(data: &[u8]) {
    run_counting(data);
}

/// Runs one input; returns how many of the two capacities restored it (the
/// corpus test checks that recorded snapshots still restore, so seeds of an
/// older snapshot format are noticed).
pub fn run_counting(data: &[u8]) -> usize {
    let mut input = Input::new(data);
    let mode = input.u8();
    let split = usize::from(input.u8());
    let mut bytes = input.bytes(usize::MAX).to_vec();
    if mode & 1 == 1 {
        let crc = crc32(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
    }
    let restored = usize::from(restore::<16, 4>(&bytes)) + usize::from(restore::<4, 2>(&bytes));
    if mode & 2 == 2 {
        let (a, b) = bytes.split_at(split.min(bytes.len()));
        slots(a, b);
    }
    restored
}

/// Whether `bytes` restored.
fn restore<const O: usize, const I: usize>(bytes: &[u8]) -> bool {
    let now = Instant::from_millis(5_000);
    let Ok(d) = Device::<O, I>::restore(config([9; 32]), bytes, now) else {
        return false;
    };
    assert!(
        snapshot_counter(bytes).is_ok(),
        "restored what the counter rejects"
    );
    assert!(d.outbox_len() <= O);
    assert_eq!(
        d.running_tasks().count(),
        0,
        "running tasks survived a reboot"
    );
    let mut buf = vec![0u8; Device::<O, I>::SNAPSHOT_MAX];
    let n = d
        .snapshot(&mut buf)
        .expect("a restored engine fits SNAPSHOT_MAX");
    let again = Device::<O, I>::restore(config([9; 32]), &buf[..n], now)
        .expect("a snapshot of a restored engine restores");
    assert_eq!(again.last_task_seq(), d.last_task_seq());
    assert_eq!(again.policy_version(), d.policy_version());
    assert_eq!(again.outbox_len(), d.outbox_len());
    assert_eq!(again.periodic_interval(), d.periodic_interval());
    // A restored engine runs no task, so its snapshot round-trips exactly.
    let mut twice = vec![0u8; Device::<O, I>::SNAPSHOT_MAX];
    let m = again
        .snapshot(&mut twice)
        .expect("a restored engine fits SNAPSHOT_MAX");
    assert_eq!(
        twice[..m],
        buf[..n],
        "snapshot -> restore -> snapshot changed"
    );
    true
}

fn slots(a: &[u8], b: &[u8]) {
    let (va, vb) = (snapshot_counter(a).is_ok(), snapshot_counter(b).is_ok());
    match pick_latest(a, b) {
        None => assert!(!va && !vb),
        Some(p) => {
            let is_a = std::ptr::eq(p.as_ptr(), a.as_ptr()) && p.len() == a.len();
            let is_b = std::ptr::eq(p.as_ptr(), b.as_ptr()) && p.len() == b.len();
            assert!(is_a || is_b, "pick_latest made up a slot");
            assert!(
                snapshot_counter(p).is_ok(),
                "pick_latest chose an invalid slot"
            );
        }
    }
}
