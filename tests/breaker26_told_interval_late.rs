//! A device that syncs again after a restart that shortened
//! `periodic_interval`, then goes silent.
//!
//! `Server::recover` expects each device that synced before the restart by
//! the longest interval it may have been told (`ToldIntervals`): 3 h here.
//! Its check is queued for that deadline. When the device then syncs with
//! the new engine it is told 1 h, and `expect_check_in` moves its deadline
//! to the sync plus 1 h and slack, but lets the check already queued (for
//! the old sync plus 3 h and slack) serve. If the device goes silent, the
//! report waits for that old check: up to the difference of the intervals
//! late, on a clock that never went back. The docs of `ServerEvent::Overdue`
//! name only a clock gone back as a cause of a late report.

mod common;

use mdm_sync::server::{MemoryStore, Server, ServerConfig, ServerEvent};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::DeviceId;

const T0: Instant = Instant::from_millis(1_700_000_000_000);
const ID: DeviceId = DeviceId(7);

fn config(periodic: Duration) -> ServerConfig {
    ServerConfig {
        periodic_interval: periodic,
        ..ServerConfig::default()
    }
}

fn sync(server: &mut Server<MemoryStore>, secret: &[u8; 32], now: Instant) {
    let (conn, _, answer) = common::raw_handshake(server, ID, secret, now);
    assert!(answer.is_ok(), "{answer:?}");
    server.connection_closed(conn, now);
}

fn overdue_events(server: &mut Server<MemoryStore>) -> usize {
    core::iter::from_fn(|| server.poll_event())
        .filter(|e| *e == ServerEvent::Overdue { device: ID })
        .count()
}

/// Device 7 syncs at `T0` under an engine of `before`; the server restarts
/// a minute later with `after` and recovers; the device syncs at
/// `T0 + second` with the new engine (told `after`) and goes silent.
/// Returns how many `Overdue` reports came by a minute past that sync's
/// deadline (`after` and slack), and whether `is_overdue` says so then.
fn silent_after_a_sync_with_the_new_engine(
    before: Duration,
    after: Duration,
    second: Duration,
) -> (usize, bool) {
    let mut old = Server::new(config(before), MemoryStore::new(), [1; 32], [2; 32]);
    old.recover(T0).unwrap();
    let secret = old.enroll(ID, T0).unwrap();
    sync(&mut old, &secret, T0);
    let mut new = Server::new(config(after), old.into_store(), [1; 32], [2; 32]);
    new.recover(T0 + Duration::from_mins(1)).unwrap();
    let last = T0 + second;
    new.handle_timeout(last).unwrap();
    sync(&mut new, &secret, last);
    assert_eq!(overdue_events(&mut new), 0);
    let slack = new.config().overdue_slack;
    let deadline = last + after + slack;
    let mut at = last;
    // Every minute up to a minute past the deadline, as a transport would
    // call it at least (`poll_timeout` may ask for less).
    while at < deadline + Duration::from_mins(1) {
        at = at + Duration::from_mins(1);
        new.handle_timeout(at).unwrap();
    }
    (overdue_events(&mut new), new.is_overdue(ID))
}

/// 3 h -> 1 h: the device syncs 10 minutes after the restart, told 1 h, and
/// goes silent. Its deadline is 1 h 40 min after `T0`; today no report
/// comes until the check of its sync before the restart runs, at 3 h 30 min
/// (1 h 50 min late).
#[test]
#[ignore = "fault: after a shortening restart, a device that syncs with the new engine and goes silent is reported only at its pre-restart sync plus the old interval (1 h 50 min late here, clock steady)"]
fn a_device_silent_after_syncing_with_the_new_engine_is_overdue_at_its_deadline() {
    let got = silent_after_a_sync_with_the_new_engine(
        Duration::from_hours(3),
        Duration::from_hours(1),
        Duration::from_mins(10),
    );
    assert_eq!(
        got,
        (1, true),
        "reports by a minute past its deadline, is_overdue"
    );
}

/// The extreme: 7 days -> 1 minute, no slack. The device syncs with the
/// new engine (told 1 min) and goes silent: due 1 min later, reported only
/// about 7 days later.
#[test]
#[ignore = "fault: 7 days -> 1 min: a device silent after syncing with the new engine is reported about 7 days after its deadline"]
fn at_the_clamp_bounds_the_report_is_a_week_late() {
    let mut before = config(Duration::from_hours(7 * 24));
    before.overdue_slack = Duration::ZERO;
    let mut old = Server::new(before, MemoryStore::new(), [1; 32], [2; 32]);
    old.recover(T0).unwrap();
    let secret = old.enroll(ID, T0).unwrap();
    sync(&mut old, &secret, T0);
    let mut after = config(Duration::from_mins(1));
    after.overdue_slack = Duration::ZERO;
    let mut new = Server::new(after, old.into_store(), [1; 32], [2; 32]);
    let restart = T0 + Duration::from_mins(1);
    new.recover(restart).unwrap();
    sync(&mut new, &secret, restart);
    let _ = overdue_events(&mut new);
    let check = restart + Duration::from_mins(2);
    new.handle_timeout(check).unwrap();
    assert_eq!(overdue_events(&mut new), 1, "1 min past its 1-min deadline");
    assert!(new.is_overdue(ID));
}

/// The control: the same without a change of interval (3 h both) is
/// reported a minute past the deadline of the second sync.
#[test]
fn without_a_change_of_interval_the_report_is_on_time() {
    let got = silent_after_a_sync_with_the_new_engine(
        Duration::from_hours(3),
        Duration::from_hours(3),
        Duration::from_mins(10),
    );
    assert_eq!(got, (1, true));
    let got = silent_after_a_sync_with_the_new_engine(
        Duration::from_hours(1),
        Duration::from_hours(1),
        Duration::from_mins(10),
    );
    assert_eq!(got, (1, true));
}
