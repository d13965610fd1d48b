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
//! # the same with the devices of each next batch of 8 hinted at once:
//! target/release/examples/fleet_profile 100000 20000 b8
//! # several hint modes alternated in one process, nine rounds, medians:
//! target/release/examples/fleet_profile 1000000 100000 0 4 b8
//! ```

#[path = "../benches/common/mod.rs"]
mod common;

#[path = "cli/mod.rs"]
mod cli;

const USAGE: &str = "fleet_profile [DEVICES (100000)] [SYNCS (100000)] [HINTS (0)]...\n\
    HINTS: N hints the device N syncs ahead (0: none); bN hints each next batch of N at once";

/// How a run hints the server of the devices to come.
#[derive(Clone, Copy)]
enum Hints {
    /// The device this many syncs ahead, before each sync (0: none).
    Ahead(u64),
    /// The devices of the next batch of this many, at once.
    Batch(u64),
}

impl Hints {
    fn from_arg(index: usize) -> Self {
        let arg = std::env::args().nth(index);
        match arg.as_deref().and_then(|a| a.strip_prefix('b')) {
            Some(n) => Hints::Batch(
                cli::parse(Some(n), "batch", 1, 1, 4096).unwrap_or_else(|e| cli::fail(&e, USAGE)),
            ),
            None => Hints::Ahead(cli::arg(index, "HINTS", 0, 0, 4096, USAGE)),
        }
    }

    fn apply(self, fleet: &mut common::Fleet) {
        (fleet.lookahead, fleet.hint_batch) = match self {
            Hints::Ahead(n) => (n as usize, 0),
            Hints::Batch(n) => (0, n as usize),
        };
    }

    fn name(self) -> String {
        match self {
            Hints::Ahead(n) => format!("lookahead {n}"),
            Hints::Batch(n) => format!("batches of {n}"),
        }
    }
}

fn main() {
    let devices = cli::arg(1, "DEVICES", 100_000, 1, u64::from(u32::MAX), USAGE);
    let syncs = cli::arg(2, "SYNCS", 100_000, 1, u64::from(u32::MAX), USAGE);
    let mut modes: Vec<Hints> = (3..std::env::args().len()).map(Hints::from_arg).collect();
    if modes.is_empty() {
        modes.push(Hints::Ahead(0));
    }
    let modes = &modes[..];
    let mut fleet = common::Fleet::new(devices);
    if let [mode] = modes {
        mode.apply(&mut fleet);
        let t = fleet.timed(syncs);
        let ns = t.as_nanos() as f64 / syncs as f64;
        println!("{devices} devices, {syncs} syncs: {ns:.0} ns per sync");
        return;
    }
    // Alternated round by round, so that each sees the same machine.
    let mut runs = vec![Vec::new(); modes.len()];
    for _ in 0..9 {
        for (mode, runs) in modes.iter().zip(&mut runs) {
            mode.apply(&mut fleet);
            runs.push(fleet.timed(syncs).as_nanos() as u64 / syncs);
        }
    }
    for (mode, mut runs) in modes.iter().zip(runs) {
        runs.sort_unstable();
        let median = runs[runs.len() / 2];
        println!(
            "{devices} devices, {}: median {median} ns per sync, runs {runs:?}",
            mode.name()
        );
    }
}
