//! Server memory per registered device, measured as resident memory.
//!
//! Reads the process's resident set size (`VmRSS` in `/proc/self/status`,
//! Linux only) before and after enrolling N devices (default 1,000,000) in a
//! `Server` over the in-memory store, then again after every device has sent
//! a push token as long as a typical FCM one (152 bytes), as it does in its
//! first sync. With `synced`, instead: a server whose N devices have each
//! done one real sync (handshake, a task, its statuses), which is what an
//! idle device that has synced costs, with its push token, push state and
//! check-in timer. With `retired`: N devices with tokens enrolled, all
//! retired (`Server::retire`), then N other devices enrolled with tokens:
//! what a retired device still takes, and how much of its room the next
//! devices reuse. With `shrunk`: N devices synced once (as `synced`), nine
//! in ten of them retired (all but every tenth id), finished tasks pruned,
//! then `Server::shrink_to_fit`: resident memory per device kept, before
//! and after the shrink, beside what a fleet of that many synced devices
//! takes, and how long the shrink took. One measurement per process, so
//! that memory freed by one does not hide the growth of the next.
//!
//! `shrunk` at 1,000,000 here: 445.0 MiB before the shrink (4,666 bytes
//! per device kept: retiring gives back nothing by itself), 62.5 MiB after
//! (655 bytes per device kept, of which about 180 are the generations of
//! the 900,000 retired devices, 17 MiB kept for good; `synced` at 100,000
//! takes 490 bytes per device), with `MALLOC_MMAP_THRESHOLD_=131072`.
//! With glibc's defaults 476.7 MiB to 82.1 MiB (861 bytes per device
//! kept; 601 for `synced` at 100,000). The shrink took 0.7 to 0.9 s, on a
//! host busy with other work.
//!
//! Resident memory also counts what glibc's allocator keeps of freed
//! memory: the tables copy themselves as they grow, and after the first
//! large block is freed glibc raises its mmap threshold (up to 32 MiB), so
//! later old tables may stay resident after they are freed. Run after run
//! that moves the `synced` figure by some 50 bytes per device (451 to 503
//! on one host). `MALLOC_MMAP_THRESHOLD_=131072` in the environment fixes
//! the threshold, so that freed tables go back to the system and the figure
//! is what the live tables take (449 B, the same in every run there).
//!
//! ```sh
//! cargo run --release --example fleet_memory -- 1000000
//! cargo run --release --example fleet_memory -- 1000000 synced
//! cargo run --release --example fleet_memory -- 1000000 retired
//! cargo run --release --example fleet_memory -- 1000000 shrunk
//! MALLOC_MMAP_THRESHOLD_=131072 cargo run --release --example fleet_memory -- 1000000 synced
//! ```

#[path = "../benches/common/mod.rs"]
mod common;

#[path = "cli/mod.rs"]
mod cli;

use mdm_sync::server::{FleetStore, MemoryStore, Server, ServerConfig};
use mdm_sync::time::Instant;
use mdm_sync::wire::{DeviceId, Platform};

/// Resident memory of this process in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("Linux /proc");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS line");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmRSS value");
    kb * 1024
}

const USAGE: &str = "fleet_memory [DEVICES (1000000)] [synced | retired | shrunk]";

fn main() {
    let n = cli::arg(1, "DEVICES", 1_000_000, 1, u64::from(u32::MAX), USAGE);
    match std::env::args().nth(2).as_deref() {
        Some("synced") => return synced(n),
        Some("retired") => return retired(n),
        Some("shrunk") => return shrunk(n),
        None => {}
        Some(other) => cli::fail(&format!("unknown measurement {other:?}"), USAGE),
    }
    let mut server = server();
    let before = rss();
    enroll(&mut server, 0..n);
    let enrolled = rss();
    let per_device = (enrolled.saturating_sub(before)) as f64 / n as f64;
    println!("devices enrolled:             {n}");
    println!("resident memory before:       {:>8.1} MiB", mib(before));
    println!("resident memory after:        {:>8.1} MiB", mib(enrolled));
    println!("per idle registered device:   {per_device:>8.1} bytes");

    give_tokens(&mut server, 0..n);
    let with_tokens = rss();
    let per_token = (with_tokens.saturating_sub(enrolled)) as f64 / n as f64;
    println!("plus a 152-byte push token:   {per_token:>8.1} bytes per device");
}

const NOW: Instant = Instant::from_millis(1_000_000);

/// A server over an empty in-memory store.
fn server() -> Server<MemoryStore> {
    Server::new(
        ServerConfig::default(),
        MemoryStore::new(),
        [1; 32],
        [2; 32],
    )
}

/// Enrolls the devices of `ids`.
fn enroll(server: &mut Server<MemoryStore>, ids: core::ops::Range<u64>) {
    for i in ids {
        server.enroll(DeviceId(i), NOW).expect("enroll");
    }
}

/// Gives each device of `ids` a push token as long as a typical FCM one.
fn give_tokens(server: &mut Server<MemoryStore>, ids: core::ops::Range<u64>) {
    let token = "t".repeat(152);
    for i in ids {
        let store = server.store_mut();
        store
            .set_push_target(DeviceId(i), Platform::Android, &token)
            .expect("push target");
    }
}

fn retired(n: u64) {
    let mut server = server();
    let before = rss();
    enroll(&mut server, 0..n);
    give_tokens(&mut server, 0..n);
    let enrolled = rss();
    for i in 0..n {
        server.retire(DeviceId(i), NOW).expect("retire");
    }
    let retired = rss();
    enroll(&mut server, n..2 * n);
    give_tokens(&mut server, n..2 * n);
    let again = rss();
    let per = |a: u64, b: u64| b.saturating_sub(a) as f64 / n as f64;
    println!("devices enrolled with tokens: {n}");
    println!(
        "per device:                   {:>8.1} bytes",
        per(before, enrolled)
    );
    println!(
        "retiring them all added:      {:>8.1} bytes per device",
        per(enrolled, retired)
    );
    println!(
        "{n} other devices with tokens then added: {:>8.1} bytes per device",
        per(retired, again)
    );
}

fn synced(n: u64) {
    let before = rss();
    let fleet = common::Fleet::new(n);
    let after = rss();
    // The bench harness's own bookkeeping: 9 bytes per device, and its
    // prepared syncs (about 3.6 MiB).
    let rig = fleet.harness_bytes() as u64;
    let per_synced = (after.saturating_sub(before).saturating_sub(rig)) as f64 / n as f64;
    println!("devices synced once:          {n}");
    println!("per idle device after a sync: {per_synced:>8.1} bytes (with a 144-byte push token)");
    drop(fleet);
}

/// Devices kept by `shrunk`: one in ten.
const KEEP_EVERY: u64 = 10;

fn shrunk(n: u64) {
    let before = rss();
    let mut fleet = common::Fleet::new(n);
    // The harness's bookkeeping stays allocated throughout.
    let rig = fleet.harness_bytes() as u64;
    let synced = rss();
    // After every sync of the harness (its clock runs a millisecond a sync).
    let now = Instant::from_millis(1 << 40);
    let server = fleet.server_mut();
    for i in (0..n).filter(|i| i % KEEP_EVERY != 0) {
        server.retire(DeviceId(i), now).expect("retire");
    }
    // Retirement ends no task here (each sync finished its own), but
    // prunes none either: the shrink's docs say to prune first.
    server.store_mut().prune_finished(now);
    let retired = rss();
    let start = std::time::Instant::now();
    server.shrink_to_fit();
    let took = start.elapsed();
    let shrunk = rss();
    let kept = n.div_ceil(KEEP_EVERY);
    assert_eq!(server.store().device_count() as u64, kept);
    let per = |at: u64, devices: u64| at.saturating_sub(before + rig) as f64 / devices as f64;
    println!("devices synced once:          {n}");
    println!(
        "per device synced:            {:>8.1} bytes",
        per(synced, n)
    );
    println!("retired, all but every tenth: {}", n - kept);
    println!(
        "then per device kept:         {:>8.1} bytes ({:.1} MiB in all)",
        per(retired, kept),
        mib(retired.saturating_sub(before + rig))
    );
    println!(
        "after shrink_to_fit:          {:>8.1} bytes ({:.1} MiB in all, {:.0} ms)",
        per(shrunk, kept),
        mib(shrunk.saturating_sub(before + rig)),
        took.as_secs_f64() * 1000.0
    );
    drop(fleet);
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
