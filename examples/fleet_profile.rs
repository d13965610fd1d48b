//! A fixed number of server syncs in a large fleet, for instruction counts
//! and profiles of `fleet/queue_sync_status` (the same harness as the bench).
//!
//! ```sh
//! cargo build --release --example fleet_profile
//! valgrind --tool=callgrind --toggle-collect='*run_prepared*' \
//!     target/release/examples/fleet_profile 100000 20000
//! # the same with `Server::prefetch_device` 4 syncs ahead:
//! target/release/examples/fleet_profile 100000 20000 4
//! # several lookaheads alternated in one process, nine rounds, medians:
//! target/release/examples/fleet_profile 1000000 100000 0 4 8
//! ```

#[path = "../benches/common/mod.rs"]
mod common;

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|s| s.replace('_', "").parse().expect("a number"))
        .collect();
    let devices = args.first().copied().unwrap_or(100_000);
    let syncs = args.get(1).copied().unwrap_or(100_000);
    let lookaheads = args.get(2..).filter(|l| !l.is_empty()).unwrap_or(&[0]);
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
