//! A server restarted over a store that outlived its process (`Server::into_store`,
//! `Server::recover`): what the old engine kept only in memory (check-in
//! deadlines, task expiries, pushes it had asked for) is rebuilt from the
//! store, so the guarantees hold across the restart.
//!
//! Each test fails without `recover` (checked by running them with the
//! `restart_server(true)` calls made `false`): the silent device is never
//! reported overdue, the task whose push died with the old process waits
//! for the next periodic sync (3 h), the expiry never fires, the policy
//! waits.

mod common;

use common::Pair;
use mdm_sync::server::{PolicyState, ServerEvent, TaskOptions, TaskState};
use mdm_sync::time::Duration;
use mdm_sync::wire::{DeviceId, Setting, TaskKind};

fn overdue_of(pair: &Pair, device: DeviceId) -> usize {
    pair.count_events(|e| matches!(e, ServerEvent::Overdue { device: d } if *d == device))
}

#[test]
fn a_device_that_went_silent_before_a_restart_is_still_reported_overdue() {
    let mut pair = Pair::new(3);
    pair.run_for(Duration::from_mins(1));
    let (silent, late, alive) = (pair.id(0), pair.id(1), pair.id(2));
    // Device 0 goes silent now; device 1 went silent 5 h before the restart
    // (its deadline, 3 h 30 min after its last sync, passed while no server
    // ran); device 2 keeps syncing.
    pair.go_offline(1);
    pair.go_offline(0);
    pair.now = pair.now + Duration::from_hours(5);
    // Device 0's last sync is made recent again by a sync just before the
    // restart (so its deadline is still ahead).
    pair.go_online(0);
    pair.devices[0].dev.manual_sync(pair.now);
    pair.tick();
    pair.go_offline(0);
    pair.events.clear();

    let recovered = pair.restart_server(true);
    assert_eq!(recovered.checkins, 3, "{recovered:?}");
    pair.tick();
    assert_eq!(overdue_of(&pair, late), 1, "passed while no server ran");
    assert_eq!(overdue_of(&pair, silent), 0, "not due yet");

    pair.run_for(Duration::from_hours(3) + Duration::from_mins(35));
    assert_eq!(overdue_of(&pair, silent), 1, "{:?}", pair.events);
    assert_eq!(overdue_of(&pair, late), 1, "reported once in this process");
    assert_eq!(overdue_of(&pair, alive), 0, "it synced every 3 h");
}

#[test]
fn work_whose_push_died_with_the_old_process_is_pushed_again() {
    let mut pair = Pair::new(1);
    pair.run_for(Duration::from_mins(1));
    // The push request is an event the old process never got to send.
    pair.pushes_lost = true;
    let task = pair.queue(0, TaskKind::Lock);
    let version = pair
        .server
        .assign_policy(pair.id(0), &[Setting { key: 7, value: 1 }], pair.now)
        .unwrap();
    pair.tick();
    assert_eq!(pair.state(0, task), TaskState::PushSent);
    pair.pushes_lost = false;

    let recovered = pair.restart_server(true);
    assert_eq!(recovered.pushed, 1, "one device, one push: {recovered:?}");
    // Within a minute, not at the next periodic sync (3 h).
    pair.run_for(Duration::from_mins(1));
    assert_eq!(pair.state(0, task), TaskState::Succeeded { result: None });
    assert_eq!(pair.times_executed(0, task), 1);
    assert_eq!(pair.devices[0].applied_policies, [version]);
    let view = pair.server.device_view(pair.id(0)).unwrap();
    assert_eq!(view.policy_state, PolicyState::Applied { version });
}

/// `Recovered::pushed` counts the pushes that went (or wait for the rate
/// limit), not the devices with work: one never connected has no push
/// target, and its work waits for its boot sync.
#[test]
fn a_device_without_a_push_target_is_not_counted_as_pushed() {
    let mut pair = Pair::new(1);
    pair.run_for(Duration::from_mins(1));
    let never_connected = DeviceId(9_999);
    pair.server.enroll(never_connected, pair.now).unwrap();
    pair.server
        .enqueue_task(
            never_connected,
            TaskKind::Lock,
            TaskOptions::default(),
            pair.now,
        )
        .unwrap();
    pair.pushes_lost = true;
    pair.queue(0, TaskKind::Lock);
    pair.tick();
    pair.pushes_lost = false;
    pair.events.clear();

    let recovered = pair.restart_server(true);
    pair.tick();
    let pushes = pair.count_events(|e| matches!(e, ServerEvent::SendPush { .. }));
    assert_eq!(pushes, 1, "{:?}", pair.events);
    assert_eq!(recovered.pushed, pushes, "{recovered:?}");
}

#[test]
fn a_task_that_expired_while_no_server_ran_expires_and_is_not_pushed() {
    let mut pair = Pair::new(2);
    pair.run_for(Duration::from_mins(1));
    pair.go_offline(0);
    let opts = |mins| TaskOptions {
        expires_at: Some(pair.now + Duration::from_mins(mins)),
        ..TaskOptions::default()
    };
    let (soon, later) = (opts(10), opts(60));
    let expired = pair
        .server
        .enqueue_task(pair.id(0), TaskKind::Scan, soon, pair.now)
        .unwrap();
    let waiting = pair
        .server
        .enqueue_task(pair.id(1), TaskKind::Scan, later, pair.now)
        .unwrap();
    // Device 1 misses its push; the server is down for 20 minutes.
    pair.go_offline(1);
    pair.tick();
    pair.now = pair.now + Duration::from_mins(20);

    let recovered = pair.restart_server(true);
    assert_eq!(recovered.expiries, 2, "{recovered:?}");
    assert_eq!(recovered.pushed, 1, "only the task still deliverable");
    pair.tick();
    assert_eq!(pair.state(0, expired), TaskState::Expired);
    assert_eq!(pair.state(1, waiting), TaskState::PushSent);

    // Back online, device 0 syncs and gets nothing; device 1's task expires
    // at its hour if the device stays away.
    pair.go_online(0);
    pair.devices[0].dev.manual_sync(pair.now);
    pair.run_for(Duration::from_hours(1));
    assert_eq!(pair.times_executed(0, expired), 0);
    assert_eq!(pair.state(1, waiting), TaskState::Expired);
}

#[test]
fn recovering_twice_rebuilds_nothing_twice() {
    let mut pair = Pair::new(4);
    pair.run_for(Duration::from_mins(1));
    pair.go_offline(0);
    pair.queue(0, TaskKind::Lock);
    pair.tick();
    let first = pair.restart_server(true);
    assert_eq!((first.checkins, first.pushed), (4, 1), "{first:?}");
    let timers = pair.server.timer_count();
    let again = pair.server.recover(pair.now).unwrap();
    assert_eq!(again, Default::default());
    assert_eq!(pair.server.timer_count(), timers);
    // One overdue report for the silent device, not two.
    pair.run_for(Duration::from_hours(4));
    assert_eq!(overdue_of(&pair, pair.id(0)), 1);
}
