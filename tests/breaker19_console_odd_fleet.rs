//! Console queries over an odd fleet: devices that never synced, retired
//! ones (with open tasks, and one retired after going overdue), one
//! re-enrolled, tasks in every state (waiting, on the device, deferred,
//! succeeded, failed, cancelled, cancelled too late, expired, superseded,
//! dropped), then a restart with `recover`. `fleet_view`, `device_view`,
//! `task` and `overdue_devices` must tell the same story, before and after
//! the restart.

mod common;

use common::{Behaviour, Pair};
use mdm_sync::server::{FleetView, PolicyState, ServerError, SupersedeKey, TaskOptions, TaskState};
use mdm_sync::time::Duration;
use mdm_sync::wire::{DeviceId, Setting, TaskId, TaskKind};

fn check(pair: &Pair, tasks: &[TaskId], enrolled: &[DeviceId], retired: &[DeviceId]) -> FleetView {
    let view = pair.server.fleet_view().unwrap();
    assert_eq!(view.devices, enrolled.len(), "{view:?}");
    // Task counts agree with the records one by one.
    let mut by_state = [0usize; 10];
    let mut too_late = 0;
    for &id in tasks {
        let t = pair.server.task(id).unwrap().expect("a task vanished");
        let k = match t.state {
            TaskState::Queued | TaskState::PushSent => 0,
            TaskState::Offered | TaskState::Delivered | TaskState::InProgress { .. } => 1,
            TaskState::Deferred { .. } => 2,
            TaskState::Succeeded { .. } => 3,
            TaskState::Failed { .. } => 4,
            TaskState::Cancelled => 5,
            TaskState::Expired => 6,
            TaskState::Superseded { .. } => 7,
            TaskState::Dropped => 8,
            _ => 9,
        };
        by_state[k] += 1;
        too_late += usize::from(t.cancel_too_late());
        if retired.contains(&t.device) {
            assert!(t.state.is_final(), "open task of a retired device: {t:?}");
        }
    }
    let c = view.tasks;
    assert_eq!(
        [
            c.waiting,
            c.on_device,
            c.deferred,
            c.succeeded,
            c.failed,
            c.cancelled,
            c.expired,
            c.superseded,
            c.dropped,
            0
        ],
        by_state,
        "{view:?}"
    );
    assert_eq!(c.too_late_to_cancel, too_late);
    // Per device: open tasks are the device's non-final ones.
    let mut open_total = 0;
    let mut synced = 0;
    let mut on_latest = 0;
    let mut pending = 0;
    for &d in enrolled {
        let dv = pair.server.device_view(d).unwrap();
        for t in &dv.open_tasks {
            assert_eq!(t.device, d);
            assert!(!t.state.is_final(), "{t:?}");
        }
        open_total += dv.open_tasks.len();
        synced += usize::from(dv.last_sync.is_some());
        assert_eq!(dv.overdue, pair.server.is_overdue(d));
        if dv.last_sync.is_none() {
            assert!(!dv.overdue, "never synced yet overdue: {dv:?}");
        }
        let reported = match dv.policy_state {
            PolicyState::Applied { version }
            | PolicyState::PartiallyApplied { version, .. }
            | PolicyState::Rejected { version, .. } => Some(version),
            PolicyState::Pending => None,
        };
        on_latest += usize::from(reported.unwrap_or(0) == dv.policy_assigned);
        pending += usize::from(dv.policy_state == PolicyState::Pending);
    }
    assert_eq!(open_total, c.waiting + c.on_device + c.deferred);
    assert_eq!(view.last_trigger.iter().sum::<usize>(), synced);
    assert_eq!(view.on_latest_policy, on_latest, "{view:?}");
    assert_eq!(view.policy_pending, pending);
    // Overdue: the list and the count agree, and name enrolled devices only.
    let overdue = pair.server.overdue_devices();
    assert_eq!(overdue.len(), view.overdue, "{overdue:?} {view:?}");
    for d in &overdue {
        assert!(enrolled.contains(d), "overdue {d:?} is not enrolled");
    }
    for &d in retired {
        assert!(matches!(
            pair.server.device_view(d),
            Err(ServerError::UnknownDevice)
        ));
        assert!(!pair.server.is_overdue(d));
    }
    view
}

#[test]
fn console_views_agree_on_an_odd_fleet_across_a_restart() {
    let n = 8;
    let mut pair = Pair::new(n);
    pair.run_for(Duration::from_mins(1));
    let mut tasks = Vec::new();
    // Never synced: enrolled on the server only.
    let never: Vec<DeviceId> = (100..104).map(DeviceId).collect();
    for &d in &never {
        pair.server.enroll(d, pair.now).unwrap();
        tasks.push(
            pair.server
                .enqueue_task(d, TaskKind::Lock, TaskOptions::default(), pair.now)
                .unwrap(),
        );
    }
    pair.server
        .assign_policy(never[0], &[Setting { key: 1, value: 1 }], pair.now)
        .unwrap();
    // Behaviours: hold, defer, fail, succeed.
    pair.devices[0].behaviour = Behaviour::Hold;
    pair.devices[1].behaviour = Behaviour::Defer(Some(3600));
    pair.devices[2].behaviour = Behaviour::Fail(3);
    for i in 0..n {
        tasks.push(pair.queue(i, TaskKind::Scan));
        tasks.push(pair.queue(i, TaskKind::Locate));
    }
    // Superseded and expired while device 6 is offline; a cancel too late
    // on device 0 (held, then finished).
    pair.go_offline(6);
    let key = Some(SupersedeKey(4));
    for kind in [TaskKind::Lock, TaskKind::Unlock] {
        let opts = TaskOptions {
            supersede: key,
            expires_at: None,
        };
        tasks.push(
            pair.server
                .enqueue_task(pair.id(6), kind, opts, pair.now)
                .unwrap(),
        );
    }
    let opts = TaskOptions {
        expires_at: Some(pair.now + Duration::from_secs(30)),
        supersede: None,
    };
    tasks.push(
        pair.server
            .enqueue_task(pair.id(6), TaskKind::Scan, opts, pair.now)
            .unwrap(),
    );
    let cancelled = pair.queue(6, TaskKind::Locate);
    tasks.push(cancelled);
    pair.server.cancel_task(cancelled, pair.now).unwrap();
    pair.run_for(Duration::from_mins(2));
    let held = pair.devices[0].held[0].id;
    pair.server.cancel_task(held, pair.now).unwrap();
    pair.finish(
        0,
        held,
        mdm_sync::wire::TaskStatus::Succeeded { result: None },
    );
    pair.devices[0].behaviour = Behaviour::Succeed;
    pair.run_for(Duration::from_mins(2));
    // Device 7 goes silent and overdue, then is retired; device 5 is
    // retired with an open task; device 4 re-enrolled.
    pair.go_offline(7);
    pair.go_offline(5);
    tasks.push(pair.queue(5, TaskKind::Wipe));
    pair.run_for(Duration::from_hours(4));
    assert!(pair.server.is_overdue(pair.id(7)));
    pair.server.retire(pair.id(7), pair.now).unwrap();
    pair.server.retire(pair.id(5), pair.now).unwrap();
    pair.server.enroll(pair.id(4), pair.now).unwrap();
    tasks.push(pair.queue(4, TaskKind::Lock));
    pair.tick();

    let retired = [pair.id(5), pair.id(7)];
    let mut enrolled: Vec<DeviceId> = (0..n)
        .map(|i| pair.id(i))
        .filter(|d| !retired.contains(d))
        .collect();
    enrolled.extend(&never);
    let before = check(&pair, &tasks, &enrolled, &retired);
    let t = before.tasks;
    for (what, count) in [
        ("waiting", t.waiting),
        ("on device", t.on_device),
        ("deferred", t.deferred),
        ("succeeded", t.succeeded),
        ("failed", t.failed),
        ("cancelled", t.cancelled),
        ("too late", t.too_late_to_cancel),
        ("expired", t.expired),
        ("superseded", t.superseded),
        ("dropped", t.dropped),
    ] {
        assert!(count > 0, "no task {what}: {before:?}");
    }

    pair.restart_server(true);
    pair.tick();
    let after = check(&pair, &tasks, &enrolled, &retired);
    assert_eq!(after.devices, before.devices);
    assert_eq!(after.online, 0);
}
