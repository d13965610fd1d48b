//! The periodic interval devices were told, across server restarts that
//! change `ServerConfig::periodic_interval` (`ToldIntervals`,
//! `FleetStore::told_intervals`). A device keeps the interval its last
//! `Welcome` told it until its next sync; `Server::recover` must expect the
//! devices that synced before the restart by the longest interval they may
//! have been told, while that still matters, and still report a device that
//! is really silent. See also
//! `a_shorter_periodic_interval_after_a_restart_reports_no_syncing_device_overdue`
//! in tests/breaker12_restart.rs.

mod common;

use common::Pair;
use mdm_sync::server::{
    DeviceRecord, FleetStore, MemoryStore, MemoryStoreError, ReportCommit, Server, ServerConfig,
    ServerError, ServerEvent, TaskRecord, ToldIntervals,
};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::{DeviceId, Platform, Policy, SyncTrigger, TaskId};

fn overdue_of(pair: &Pair, device: DeviceId) -> usize {
    pair.count_events(|e| matches!(e, ServerEvent::Overdue { device: d } if *d == device))
}

fn hours(h: u64) -> Duration {
    Duration::from_hours(h)
}

fn mins(m: u64) -> Duration {
    Duration::from_mins(m)
}

fn config(periodic: Duration) -> ServerConfig {
    ServerConfig {
        periodic_interval: periodic,
        ..ServerConfig::default()
    }
}

/// Restarts `pair`'s server over its store with `periodic` as its interval,
/// and recovers (as `Pair::restart_server(true)` does with the same
/// configuration).
fn restart_with(pair: &mut Pair, periodic: Duration) {
    let now = pair.now;
    for d in &mut pair.devices {
        if d.conn.take().is_some() {
            d.dev.disconnected(now);
        }
    }
    let old = core::mem::replace(&mut pair.server, common::server());
    pair.server = Server::new(config(periodic), old.into_store(), [1; 32], [3; 32]);
    pair.server.recover(now).unwrap();
}

fn last_sync(pair: &Pair, i: usize) -> Instant {
    let rec = pair.server.store().device(pair.id(i)).unwrap().unwrap();
    rec.last_sync.unwrap().0
}

/// Runs `pair` until `at` (not before its current instant).
fn run_until(pair: &mut Pair, at: Instant) {
    let left = at.saturating_since(pair.now);
    pair.run_for(left);
}

/// 3 h, then 1 h, then 1 h twice more, all within the 3 h: each restart
/// must still expect the device told 3 h by 3 h (the record of the first
/// restart must not be lost by the later ones, which each write their own
/// over it). A device told 1 h in between and silent since is still
/// reported, once.
#[test]
fn chained_shortening_restarts_within_the_old_interval_report_no_device_told_it() {
    let mut pair = Pair::with_config(2, config(hours(3)));
    pair.run_for(mins(1)); // both synced, told 3 h
    restart_with(&mut pair, hours(1));
    // Device 1 syncs in the second process (told 1 h), then goes silent.
    let told_three_hours = last_sync(&pair, 1);
    pair.advance(mins(1));
    pair.queue(1, mdm_sync::wire::TaskKind::Lock);
    pair.run_for(mins(5));
    assert!(
        last_sync(&pair, 1) > told_three_hours,
        "device 1 did not sync"
    );
    pair.go_offline(1);
    pair.run_for(mins(20));
    restart_with(&mut pair, hours(1));
    pair.run_for(mins(40));
    restart_with(&mut pair, hours(1));
    pair.run_for(hours(8));
    assert_eq!(overdue_of(&pair, pair.id(0)), 0, "{:?}", pair.events);
    assert_eq!(overdue_of(&pair, pair.id(1)), 1, "{:?}", pair.events);
}

/// Two devices synced under an engine of interval `before`; device 1 goes
/// silent, and the server restarts with `after`. Returns the pair and when
/// device 1 is due: its last sync plus the longer interval and slack.
fn one_silent_across(before: Duration, after: Duration) -> (Pair, Instant) {
    let mut pair = Pair::with_config(2, config(before));
    pair.run_for(mins(1));
    pair.go_offline(1);
    let silent_since = last_sync(&pair, 1);
    restart_with(&mut pair, after);
    let slack = pair.server.config().overdue_slack;
    (pair, silent_since + before.max(after) + slack)
}

/// Runs `pair` of `one_silent_across` past `due`, and on for hours: device
/// 1 is reported overdue once (by a minute past `due`), device 0 never.
fn silent_one_reported_once_by(mut pair: Pair, due: Instant) {
    run_until(&mut pair, due + mins(1));
    assert_eq!(overdue_of(&pair, pair.id(1)), 1, "{:?}", pair.events);
    pair.run_for(hours(10));
    assert_eq!(overdue_of(&pair, pair.id(1)), 1, "{:?}", pair.events);
    assert_eq!(overdue_of(&pair, pair.id(0)), 0, "{:?}", pair.events);
}

/// A restart that lengthens the interval (1 h -> 3 h) expects devices by
/// the new interval, as before `ToldIntervals` existed: a syncing device is
/// never reported, a silent one once, at its last sync plus 3 h and slack.
#[test]
fn a_longer_interval_after_a_restart_expects_devices_by_it_as_before() {
    let (mut pair, due) = one_silent_across(hours(1), hours(3));
    run_until(&mut pair, due - mins(1));
    assert_eq!(overdue_of(&pair, pair.id(1)), 0, "{:?}", pair.events);
    silent_one_reported_once_by(pair, due);
}

/// A device silent since before a restart that shortened the interval
/// (3 h -> 1 h) is still reported overdue, once: by its last sync plus the
/// old 3 h and slack (late by at most the old interval), not never.
#[test]
fn a_device_silent_across_a_shortening_restart_is_still_reported_once() {
    let (pair, due) = one_silent_across(hours(3), hours(1));
    silent_one_reported_once_by(pair, due);
}

/// Restarts at random gaps (5 min to 5 h), each with a random interval of
/// 1, 2, 3 or 6 h, over three devices that stay online and sync as they
/// were told, and one silent from the start: over 40 seeds, no syncing
/// device is ever reported overdue, and the silent one is reported, by its
/// last sync plus the longest interval (6 h) and slack.
#[test]
fn random_restarts_and_intervals_report_only_the_silent_device() {
    let choices = [hours(1), hours(2), hours(3), hours(6)];
    for seed in 1..=40u64 {
        let mut rng = common::Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let first = choices[rng.below(4) as usize];
        let mut pair = Pair::with_config(4, config(first));
        pair.run_for(mins(1));
        pair.go_offline(3);
        let silent_since = last_sync(&pair, 3);
        let mut intervals = vec![first];
        while pair.now < common::START + hours(30) {
            pair.run_for(mins(5 + rng.below(295)));
            let next = choices[rng.below(4) as usize];
            intervals.push(next);
            restart_with(&mut pair, next);
        }
        let case = format!("seed {seed}, intervals {intervals:?}");
        for i in 0..3 {
            assert_eq!(
                overdue_of(&pair, pair.id(i)),
                0,
                "{case}: {:?}",
                pair.events
            );
        }
        let slack = pair.server.config().overdue_slack;
        run_until(&mut pair, silent_since + hours(6) + slack + mins(1));
        assert!(
            overdue_of(&pair, pair.id(3)) >= 1,
            "{case}: {:?}",
            pair.events
        );
    }
}

/// Once every device told the old 3 h has synced again or is overdue anyway
/// (3 h and slack after the restart that shortened it), the old interval no
/// longer counts: after a further restart a device silent since a sync
/// told 1 h is reported by that sync plus 1 h and slack, not 3 h.
#[test]
fn once_the_old_interval_no_longer_matters_a_restart_expects_the_new_one() {
    let mut pair = Pair::with_config(1, config(hours(3)));
    pair.run_for(mins(1));
    restart_with(&mut pair, hours(1));
    pair.run_for(hours(4)); // syncs at 3 h (told 1 h), then every hour
    let since = last_sync(&pair, 0);
    assert!(since > common::START + hours(3), "no sync told 1 h");
    pair.go_offline(0);
    restart_with(&mut pair, hours(1));
    let slack = pair.server.config().overdue_slack;
    run_until(&mut pair, since + hours(1) + slack + mins(1));
    assert_eq!(overdue_of(&pair, pair.id(0)), 1, "{:?}", pair.events);
}

const T0: Instant = Instant::from_millis(1_700_000_000_000);
const ID: DeviceId = DeviceId(7);

/// `store` after an engine of interval `before` recovered over it at `T0`
/// (on an empty store, that records its interval there) and device `ID`
/// enrolled and synced at `synced` (set in the store: no device engine).
fn synced_under<S: FleetStore>(store: S, before: Duration, synced: Instant) -> S {
    let mut old = Server::new(config(before), store, [1; 32], [2; 32]);
    old.recover(T0).unwrap();
    old.enroll(ID, T0).unwrap();
    let store = old.store_mut();
    let mut rec = store.device(ID).unwrap().unwrap();
    rec.last_sync = Some((synced, SyncTrigger::Periodic));
    store.put_device(&rec).unwrap();
    old.into_store()
}

/// An engine-level restart: device `ID` synced at `T0` under an engine of
/// interval `before` over `store` (`synced_under`), then an engine of 1 h
/// recovered a minute later; whether it reports the device overdue by
/// `T0 + at`.
fn overdue_by<S: FleetStore>(store: S, before: Duration, at: Duration) -> bool {
    let store = synced_under(store, before, T0);
    let mut new = Server::new(config(hours(1)), store, [1; 32], [3; 32]);
    assert_eq!(new.recover(T0 + mins(1)).unwrap().checkins, 1);
    new.handle_timeout(T0 + at).unwrap();
    core::iter::from_fn(|| new.poll_event()).any(|e| e == ServerEvent::Overdue { device: ID })
}

/// A store that keeps no `ToldIntervals` (the trait's default methods):
/// `recover` expects every device by the new interval, as before the record
/// existed, so a shortening restart reports a device told 3 h at 1 h and
/// slack (the documented behaviour of the default). `MemoryStore` keeps the
/// record, and the same device is expected by 3 h and slack.
#[test]
fn a_store_without_the_record_expects_devices_by_the_new_interval() {
    let mut plain = Plain::default();
    assert_eq!(plain.told_intervals(), Ok(None));
    let record = ToldIntervals {
        interval: hours(3),
        earlier: Duration::ZERO,
        earlier_until: Instant::ZERO,
    };
    assert_eq!(plain.set_told_intervals(&record), Ok(()));
    assert_eq!(
        plain.told_intervals(),
        Ok(None),
        "the default keeps nothing"
    );

    let by_new = hours(1) + mins(31);
    let by_old = hours(3) + mins(31);
    assert!(overdue_by(Plain::default(), hours(3), by_new), "default");
    assert!(!overdue_by(MemoryStore::new(), hours(3), by_new), "memory");
    assert!(overdue_by(MemoryStore::new(), hours(3), by_old), "memory");
}

/// What `MemoryStore` holds after each engine recorded its interval: the
/// first its own alone, the second its own over the first's, which counts
/// until the first engine's last sync plus 3 h and slack.
#[test]
fn memory_store_keeps_the_record_each_engine_writes() {
    assert_eq!(MemoryStore::new().told_intervals(), Ok(None));
    let synced = T0 + mins(10);
    let store = synced_under(MemoryStore::new(), hours(3), synced);
    let first_record = ToldIntervals {
        interval: hours(3),
        earlier: Duration::ZERO,
        earlier_until: Instant::ZERO,
    };
    assert_eq!(store.told_intervals(), Ok(Some(first_record)));

    let restart = T0 + mins(5); // before the stored sync: a clock gone back
    let mut second = Server::new(config(hours(1)), store, [1; 32], [3; 32]);
    second.recover(restart).unwrap();
    let slack = second.config().overdue_slack;
    let second_record = ToldIntervals {
        interval: hours(1),
        earlier: hours(3),
        earlier_until: synced + hours(3) + slack,
    };
    assert_eq!(second.store().told_intervals(), Ok(Some(second_record)));
}

/// `recover` when the store fails to read or to write the record: it
/// returns the error with nothing armed and the record as it was, and the
/// next call, the store back, expects the device by the old 3 h.
#[test]
fn recover_returns_a_store_error_at_the_record_and_does_it_when_called_again() {
    for fail_read in [false, true] {
        let (t0, id) = (T0, ID);
        let mut store = synced_under(Failing::default(), hours(3), t0);
        let before = store.told_intervals().unwrap();
        assert!(before.is_some());
        store.fail_read.set(fail_read);
        store.fail_write = !fail_read;
        let mut new = Server::new(config(hours(1)), store, [1; 32], [3; 32]);
        let later = t0 + mins(1);
        assert_eq!(new.recover(later), Err(ServerError::Store(Down)));
        assert_eq!(new.timer_count(), 0, "armed before the record was written");
        assert_eq!(new.store().told_intervals(), Ok(before));
        let again = new.recover(later).unwrap();
        assert_eq!(again.checkins, 1, "fail_read {fail_read}");
        let after = new.store().told_intervals().unwrap().unwrap();
        assert_eq!((after.interval, after.earlier), (hours(1), hours(3)));
        new.handle_timeout(t0 + hours(1) + mins(31)).unwrap();
        let overdue = |s: &mut Server<Failing>| {
            core::iter::from_fn(|| s.poll_event())
                .filter(|e| *e == ServerEvent::Overdue { device: id })
                .count()
        };
        assert_eq!(overdue(&mut new), 0, "fail_read {fail_read}");
        new.handle_timeout(t0 + hours(3) + mins(31)).unwrap();
        assert_eq!(overdue(&mut new), 1, "fail_read {fail_read}");
    }
}

/// An engine that did not call `recover` records its interval at its first
/// handshake, before the `Welcome` tells it; a store error there fails that
/// handshake (the device is not online, no `Welcome` goes out) and the next
/// handshake records it.
#[test]
fn a_store_error_at_the_record_fails_the_first_handshake_and_the_next_records_it() {
    let (t0, id) = (T0, ID);
    let mut s = Server::new(config(hours(3)), Failing::default(), [1; 32], [2; 32]);
    let secret = s.enroll(id, t0).unwrap();
    s.store_mut().fail_write = true;
    let (conn, _, answer) = common::raw_handshake(&mut s, id, &secret, t0);
    assert_eq!(answer, Err(ServerError::Store(Down)));
    assert!(!s.device_view(id).unwrap().online);
    assert_eq!(s.device_view(id).unwrap().last_sync, None);
    assert_eq!(s.store().told_intervals(), Ok(None));
    s.connection_closed(conn, t0);
    while s.poll_event().is_some() {}

    let later = t0 + mins(2);
    let (_, _, answer) = common::raw_handshake(&mut s, id, &secret, later);
    assert_eq!(answer, Ok(()));
    assert!(s.device_view(id).unwrap().online);
    let record = s.store().told_intervals().unwrap();
    assert_eq!(record.map(|r| r.interval), Some(hours(3)));
}

// ---- stores ------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Down;

fn ok<T>(r: Result<T, MemoryStoreError>) -> Result<T, Down> {
    r.map_err(|_| Down)
}

/// The methods a store must have, passed to `self.inner`.
macro_rules! required_methods {
    () => {
        type Error = Down;
        fn device(&self, id: DeviceId) -> Result<Option<DeviceRecord>, Down> {
            ok(self.inner.device(id))
        }
        fn put_device(&mut self, rec: &DeviceRecord) -> Result<(), Down> {
            ok(self.inner.put_device(rec))
        }
        fn push_target(
            &self,
            id: DeviceId,
        ) -> Result<Option<(Platform, mdm_sync::server::PushToken)>, Down> {
            ok(self.inner.push_target(id))
        }
        fn set_push_target(&mut self, id: DeviceId, p: Platform, t: &str) -> Result<bool, Down> {
            ok(self.inner.set_push_target(id, p, t))
        }
        fn remove_push_target(&mut self, id: DeviceId) -> Result<bool, Down> {
            ok(self.inner.remove_push_target(id))
        }
        fn retire_device(&mut self, id: DeviceId) -> Result<bool, Down> {
            ok(self.inner.retire_device(id))
        }
        fn retired_generation(&self, id: DeviceId) -> Result<Option<u32>, Down> {
            ok(self.inner.retired_generation(id))
        }
        fn task(&self, id: TaskId) -> Result<Option<TaskRecord>, Down> {
            ok(self.inner.task(id))
        }
        fn put_task(&mut self, rec: &TaskRecord) -> Result<(), Down> {
            ok(self.inner.put_task(rec))
        }
        fn open_tasks(&self, device: DeviceId, out: &mut Vec<TaskId>) -> Result<(), Down> {
            ok(self.inner.open_tasks(device, out))
        }
        fn open_task_count(&self, device: DeviceId) -> Result<usize, Down> {
            ok(self.inner.open_task_count(device))
        }
        fn next_task_id(&mut self) -> Result<TaskId, Down> {
            ok(self.inner.next_task_id())
        }
        fn policy(&self, device: DeviceId) -> Result<Option<Policy>, Down> {
            ok(self.inner.policy(device))
        }
        fn put_policy(&mut self, device: DeviceId, policy: &Policy) -> Result<(), Down> {
            ok(self.inner.put_policy(device, policy))
        }
        fn commit_report(&mut self, commit: ReportCommit<'_>) -> Result<(), Down> {
            ok(self.inner.commit_report(commit))
        }
        fn for_each_device(&self, f: &mut dyn FnMut(&DeviceRecord)) -> Result<(), Down> {
            ok(self.inner.for_each_device(f))
        }
        fn for_each_task(&self, f: &mut dyn FnMut(&TaskRecord)) -> Result<(), Down> {
            ok(self.inner.for_each_task(f))
        }
    };
}

/// A store with only the methods a store must have: the told intervals
/// are the trait's defaults.
#[derive(Default)]
struct Plain {
    inner: MemoryStore,
}

impl FleetStore for Plain {
    required_methods!();
}

/// A `MemoryStore` whose record of told intervals fails: its next read
/// when `fail_read` is set, its next write when `fail_write` is.
#[derive(Default)]
struct Failing {
    inner: MemoryStore,
    fail_read: core::cell::Cell<bool>,
    fail_write: bool,
}

impl FleetStore for Failing {
    required_methods!();
    fn told_intervals(&self) -> Result<Option<ToldIntervals>, Down> {
        if self.fail_read.take() {
            return Err(Down);
        }
        ok(self.inner.told_intervals())
    }
    fn set_told_intervals(&mut self, record: &ToldIntervals) -> Result<(), Down> {
        if core::mem::take(&mut self.fail_write) {
            return Err(Down);
        }
        ok(self.inner.set_told_intervals(record))
    }
}
