//! A fixed number of server syncs in a large fleet, for instruction counts
//! and profiles of `fleet/queue_sync_status` (the same harness as the bench).
//!
//! ```sh
//! cargo build --release --example fleet_profile
//! valgrind --tool=callgrind --toggle-collect='*run_prepared*' \
//!     target/release/examples/fleet_profile 100000 20000
//! ```

#[path = "../benches/common/mod.rs"]
mod common;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut arg = |default: u64| {
        args.next()
            .map(|s| s.replace('_', "").parse().expect("a number"))
            .unwrap_or(default)
    };
    let (devices, syncs, lookahead) = (arg(100_000), arg(100_000), arg(0));
    let mut fleet = common::Fleet::new(devices);
    fleet.lookahead = lookahead as usize;
    let t = fleet.timed(syncs);
    let ns = t.as_nanos() as f64 / syncs as f64;
    println!("{devices} devices, {syncs} syncs: {ns:.0} ns per sync");
}
