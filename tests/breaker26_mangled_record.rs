//! A `ToldIntervals` record that a store mangled. `ToldIntervals`' docs say
//! the engine reads intervals outside `1 min ..= 7 days` as the nearest
//! bound; its `earlier_until` is taken as it is. A record whose
//! `earlier_until` is the end of time (with `earlier` read as 7 days) is
//! then carried into every later record (`ToldIntervals::after` keeps the
//! later of the old and the new `earlier_until`), so every restart from
//! then on, for good, expects each device by its last sync plus 7 days:
//! a silent device of a 1 h fleet is reported a week late, after any number
//! of restarts over any time. No device can still keep an interval told
//! more than 7 days (and the slack) before the latest sync the engine saw,
//! so the record could be bounded by that and heal after a week. Found on
//! main; fixed in `ToldIntervals::after`, which now cuts the instant there.

mod common;

use mdm_sync::server::{FleetStore, MemoryStore, Server, ServerConfig, ServerEvent, ToldIntervals};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::DeviceId;

const T0: Instant = Instant::from_millis(1_700_000_000_000);
const ID: DeviceId = DeviceId(7);

fn hour() -> ServerConfig {
    ServerConfig {
        periodic_interval: Duration::from_hours(1),
        ..ServerConfig::default()
    }
}

/// Over `record`, 30 daily restarts of a 1 h engine (the device syncing
/// after each), then the device goes silent and one more restart: whether
/// it is reported by its last sync plus 1 h, slack and a minute.
fn reported_on_time_after_a_month(record: ToldIntervals) -> bool {
    let mut store = MemoryStore::new();
    store.set_told_intervals(&record).unwrap();
    let mut s = Server::new(hour(), store, [1; 32], [2; 32]);
    s.recover(T0).unwrap();
    let secret = s.enroll(ID, T0).unwrap();
    // A restart a day, for 30 days; the device syncs each day.
    let mut now = T0;
    for _ in 0..30 {
        now = now + Duration::from_hours(24);
        let mut next = Server::new(hour(), s.into_store(), [1; 32], [2; 32]);
        next.recover(now).unwrap();
        let (conn, _, answer) = common::raw_handshake(&mut next, ID, &secret, now);
        answer.unwrap();
        next.connection_closed(conn, now);
        s = next;
    }
    // The device goes silent after its last sync; one more restart.
    let last = now;
    let mut s = Server::new(hour(), s.into_store(), [1; 32], [2; 32]);
    s.recover(last + Duration::from_mins(5)).unwrap();
    let record = s.store().told_intervals().unwrap().unwrap();
    let slack = s.config().overdue_slack;
    s.handle_timeout(last + Duration::from_hours(1) + slack + Duration::from_mins(1))
        .unwrap();
    let overdue = core::iter::from_fn(|| s.poll_event())
        .filter(|e| *e == ServerEvent::Overdue { device: ID })
        .count();
    eprintln!("record after 30 days: {record:?}");
    overdue == 1
}

#[test]
fn a_mangled_record_heals_once_no_device_can_keep_it() {
    assert!(reported_on_time_after_a_month(ToldIntervals {
        interval: Duration::from_hours(1),
        earlier: Duration::from_millis(u64::MAX),
        earlier_until: Instant::MAX,
    }));
}

/// The control: a sane record (3 h told until an hour after `T0`).
#[test]
fn a_sane_record_is_outlived() {
    assert!(reported_on_time_after_a_month(ToldIntervals {
        interval: Duration::from_hours(1),
        earlier: Duration::from_hours(3),
        earlier_until: T0 + Duration::from_hours(1),
    }));
}
