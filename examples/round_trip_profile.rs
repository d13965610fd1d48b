//! A fixed number of in-session round trips (the `sync/round_trip_in_session`
//! bench without criterion), for instruction counts and profiles.
//!
//! ```sh
//! # the bench profile (fat LTO, one codegen unit), as the benches build
//! cargo build --profile bench --example round_trip_profile
//! valgrind --tool=callgrind --toggle-collect='*timed_round_trips*' \
//!     target/release/examples/round_trip_profile 20000
//! ```

#[path = "../benches/common/mod.rs"]
mod common;

#[path = "cli/mod.rs"]
mod cli;

use mdm_sync::time::Duration;
use mdm_sync::wire::TaskKind;

#[inline(never)]
fn timed_round_trips(rig: &mut common::Rig, n: u64) -> core::time::Duration {
    let start = std::time::Instant::now();
    for _ in 0..n {
        rig.queue(TaskKind::Lock);
        rig.pump();
    }
    start.elapsed()
}

const USAGE: &str = "round_trip_profile [ROUND_TRIPS (1000000)]";

fn main() {
    let n = cli::arg(1, "ROUND_TRIPS", 1_000_000, 1, u64::MAX, USAGE);
    let mut rig = common::Rig::in_session();
    let mut total = core::time::Duration::ZERO;
    let mut left = n;
    while left > 0 {
        // The same chunking as the bench: finished tasks are pruned between
        // chunks, outside the timing.
        let k = left.min(4096);
        total += timed_round_trips(&mut rig, k);
        left -= k;
        let now = rig.now + Duration::from_millis(1);
        rig.server.store_mut().prune_finished(now);
    }
    let ns = total.as_nanos() as f64 / n as f64;
    println!("{n} round trips in session: {ns:.0} ns each");
}
