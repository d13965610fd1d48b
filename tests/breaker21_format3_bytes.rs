//! Snapshots written by the format-3 code itself (the fuzz corpus seeds and
//! PROTOCOL.md's `snapshot` vector as they were at 2e2c2fd, before format
//! 4), restored by the format-4 code: each restores to the very state its
//! format-4 regeneration restores to (same snapshot bytes afterwards), with
//! no busy flag; and between a format-3 slot and a format-4 one the newer
//! counter wins either way round (a firmware update between two writes).

use mdm_sync::device::{pick_latest, snapshot_counter, Device, DeviceConfig, Event, SnapshotError};
use mdm_sync::time::Instant;
use mdm_sync::wire::{DeviceId, Platform};

/// (format 3 at 2e2c2fd, format 4 at 68c9130) of the corpus' snapshot seeds,
/// without their two bytes of fuzzer mode.
const SEEDS: [(&str, &str); 5] = [
    (
        "03010000000000000001000000000000000000000000000000010000000000000080cba48000000000b59c78d3",
        "04010000000000000001000000000000000000000000000000010000000000000080cba48000000000001a4294b8",
    ),
    (
        "03030000000000000001000000000000000000000003000000050000000000000080cba4000300040001000000010000000000000000020000000200000000000000020300000003000000000000000303010501030001000300020003000300d2353404",
        "04030000000000000001000000000000000000000003000000050000000000000080cba40003000400000100000001000000000000000002000000020000000000000002030000000300000000000000030301050103000100030002000300030062c2df6a",
    ),
    (
        "03050000000000000001000000000000000000000003000000070000000100000080cba40000000600030105010400010100030002000f0003010100d090e9c303d0f0ba511406000201010101070201010102ac0234099db7",
        "04050000000000000001000000000000000000000003000000070000000100000080cba4000000060000030105010400010100030002000f0003010100d090e9c303d0f0ba511406000201010101070201010102ac02624b11d4",
    ),
    (
        "03070000000000000001000000000000000000000005000000090000000100000080cba400000002000600040301d80405000602ac02e1c12346",
        "04070000000000000001000000000000000000000005000000090000000100000080cba40000000200000600040301d80405000602ac0298814e8f",
    ),
    (
        "030900000000000000010000000000000000000000070000000d0000000100000080cba4000000040003000400030007000400070201040004020158d427fc",
        "040900000000000000010000000000000000000000070000000d0000000100000080cba40000000400000300040003000700040007020104000402010c372af2",
    ),
];

/// PROTOCOL.md's `snapshot` vector at 2e2c2fd (format 3) and now (format 4):
/// device 1001, generation 2.
const VECTOR: (&str, &str) = (
    "030200000000000000e903000000000000020000000100000002000000000000\
     0080cba4000100010001000000f401000000000000000400f40300ddbefe14",
    "040200000000000000e903000000000000020000000100000002000000000000\
     0080cba400010001000001000000f401000000000000000400f4030006dd5005",
);

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn config(id: u64, generation: u32) -> DeviceConfig {
    DeviceConfig::new(DeviceId(id), generation, [9; 32], Platform::Android)
}

/// The boot snapshot of the engine restored from `bytes` (written at its
/// first event, a `Persist`), or why it did not restore.
fn restored<const O: usize, const I: usize>(
    cfg: &DeviceConfig,
    bytes: &[u8],
) -> Result<Vec<u8>, SnapshotError> {
    let now = Instant::from_millis(5_000);
    let mut d = Device::<O, I>::restore(cfg.clone(), bytes, now)?;
    assert_eq!(d.poll_event(), Some(Event::Persist));
    let mut buf = vec![0u8; Device::<O, I>::SNAPSHOT_MAX];
    let n = d.snapshot(&mut buf).unwrap();
    buf.truncate(n);
    Ok(buf)
}

fn same_state(cfg: &DeviceConfig, old: &[u8], new: &[u8]) {
    assert_eq!(old[0], 3);
    assert_eq!(new[0], 4);
    let a = restored::<16, 4>(cfg, old).unwrap();
    assert_eq!(Ok(&a), restored::<16, 4>(cfg, new).as_ref());
    // Format 4 written back, no flag: the byte ending the header is 0.
    assert_eq!((a[0], a[41]), (4, 0));
    assert_eq!(restored::<4, 2>(cfg, old), restored::<4, 2>(cfg, new));
    assert_eq!(snapshot_counter(old), snapshot_counter(new));
}

#[test]
fn format_3_bytes_restore_as_their_format_4_regeneration() {
    for (old, new) in SEEDS {
        same_state(&config(1, 0), &hex(old), &hex(new));
    }
    let (old, new) = VECTOR;
    same_state(&config(1001, 2), &hex(old), &hex(new));
}

/// A firmware update between two snapshot writes leaves one slot in each
/// format: the newer counter is picked either way round.
#[test]
fn a_format_3_slot_and_a_format_4_slot() {
    let cfg = config(1, 0);
    for (old, _) in SEEDS {
        let old = hex(old);
        // The boot snapshot: format 4, the counter one past the old one.
        let newer = &restored::<16, 4>(&cfg, &old).unwrap()[..];
        assert_eq!(
            snapshot_counter(newer).unwrap(),
            snapshot_counter(&old).unwrap() + 1
        );
        assert_eq!(pick_latest(&old, newer), Some(newer));
        assert_eq!(pick_latest(newer, &old), Some(newer));
    }
}
