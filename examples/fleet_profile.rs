//! A fixed number of server syncs in a large fleet, for instruction counts
//! and profiles of `fleet/queue_sync_status` (the same harness as the bench).
//!
//! ```sh
//! # the bench profile (fat LTO, one codegen unit), as the benches build
//! cargo build --profile bench --example fleet_profile
//! valgrind --tool=callgrind --toggle-collect='*run_prepared*' \
//!     target/release/examples/fleet_profile 100000 20000
//! # the same with `Server::prefetch_device` 4 syncs ahead:
//! target/release/examples/fleet_profile 100000 20000 4
//! # several lookaheads alternated in one process, nine rounds, medians:
//! target/release/examples/fleet_profile 1000000 100000 0 4 8
//! ```

#[path = "../benches/common/mod.rs"]
mod common;

#[path = "cli/mod.rs"]
mod cli;

const USAGE: &str = "fleet_profile [DEVICES (100000)] [SYNCS (100000)] [LOOKAHEAD (0)]...";

fn main() {
    let devices = cli::arg(1, "DEVICES", 100_000, 1, u64::from(u32::MAX), USAGE);
    let syncs = cli::arg(2, "SYNCS", 100_000, 1, u64::from(u32::MAX), USAGE);
    let mut lookaheads: Vec<u64> = (3..std::env::args().len())
        .map(|i| cli::arg(i, "LOOKAHEAD", 0, 0, 4096, USAGE))
        .collect();
    if lookaheads.is_empty() {
        lookaheads.push(0);
    }
    let lookaheads = &lookaheads[..];
    let mut fleet = common::Fleet::new(devices);
    if let [lookahead] = lookaheads {
        fleet.lookahead = *lookahead as usize;
        let t = fleet.timed(syncs);
        let ns = t.as_nanos() as f64 / syncs as f64;
        println!("{devices} devices, {syncs} syncs: {ns:.0} ns per sync");
        return;
    }
    // Alternated round by round, so that each sees the same machine.
    let mut runs = vec![Vec::new(); lookaheads.len()];
    for _ in 0..9 {
        for (lookahead, runs) in lookaheads.iter().zip(&mut runs) {
            fleet.lookahead = *lookahead as usize;
            runs.push(fleet.timed(syncs).as_nanos() as u64 / syncs);
        }
    }
    for (lookahead, mut runs) in lookaheads.iter().zip(runs) {
        runs.sort_unstable();
        let median = runs[runs.len() / 2];
        println!(
            "{devices} devices, lookahead {lookahead}: median {median} ns per sync, runs {runs:?}"
        );
    }
}
