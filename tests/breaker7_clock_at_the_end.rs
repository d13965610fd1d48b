//! A clock that reads `Instant::MAX`. The time module promises that no value
//! of `now` is harmful ("time may stand still, jump forward or even go
//! backwards"), and `ScaledClock::scaled` accepts any finite positive scale:
//! with a huge one its `now()` saturates to `Instant::MAX` at once and stays
//! there. At that instant every deadline the engines compute (`now + d`)
//! saturates to `now` itself, so each is due as soon as it is set: the device
//! asks to connect, its connect or response deadline has passed, the sync
//! fails, the backoff is due again at once, and so on without end; the
//! server times every new connection out at once. Found: the pair never goes
//! quiet at that instant (a livelock, and a connection storm at the server).
//! Expected: as with a clock standing still, the engines go quiet.
//!
//! Fixed: a deadline that saturated at `Instant::MAX` is never due (the time
//! module's `Instant::is_due`), `poll_timeout` reports none, and the adapters'
//! clock waits `MAX_WAIT` for it, even when it reads `Instant::MAX` itself.

mod common;

use common::*;
use mdm_sync::adapters::clock::{Clock, ScaledClock};
use mdm_sync::time::{Duration, Instant};

#[test]
fn a_huge_clock_scale_reads_the_end_of_time() {
    // Reachable through the adapters' own clock (not asserted further).
    let c = ScaledClock::scaled(1e300);
    std::thread::sleep(core::time::Duration::from_millis(1));
    assert_eq!(c.now(), Instant::MAX);
    // A deadline of `Instant::MAX` is never: an adapter waits its longest,
    // it does not spin on a wait of zero.
    assert_eq!(
        c.wall_until(Instant::MAX),
        mdm_sync::adapters::clock::MAX_WAIT
    );
}

#[test]
fn a_device_and_server_at_the_end_of_time_go_quiet() {
    let mut p = Pair::new(1);
    p.run_for(Duration::from_mins(1));
    p.now = Instant::MAX;
    // `tick` panics when nothing settles after 10,000 steps at one instant.
    let settled = std::panic::catch_unwind(core::panic::AssertUnwindSafe(|| p.tick())).is_ok();
    assert!(settled, "no quiescence at Instant::MAX");
}
