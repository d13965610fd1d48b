//! The smallest device that compiles, `Device<3, 1>` (`Device::USABLE`),
//! end to end against the server on a virtual clock: it runs tasks (several
//! queued at once, one held while reports pile up), reports compliance events
//! and policy outcomes, and reboots from its snapshots, and the server ends up
//! with everything. With one task running and three waiting, it synced 81
//! times in an hour (and on, 13 to 14 syncs every 10 min) before the device
//! stopped asking for a new sync after leaving an offer while its task slot
//! is taken (`tests/breaker6_busy_refusal_storm.rs`).

mod common;

use common::{Behaviour, Pair};
use mdm_sync::server::{FleetStore, PolicyState, ServerConfig, ServerEvent, TaskState};
use mdm_sync::time::Duration;
use mdm_sync::wire::{
    ComplianceEvent, PolicyOutcome, SettingFailure, TaskId, TaskKind, TaskStatus,
};

/// One device `Device<O, I>` (by default the smallest, `Device<3, 1>`) and
/// the server, from the shared harness.
fn rig<const O: usize, const I: usize>() -> Pair<O, I> {
    Pair::sized(1, ServerConfig::default())
}

/// Sessions authenticated so far (a sync storm would show here).
fn syncs<const O: usize, const I: usize>(r: &Pair<O, I>) -> usize {
    r.count_events(|e| matches!(e, ServerEvent::Authenticated { .. }))
}

/// Compliance events stored since the last call.
fn compliance<const O: usize, const I: usize>(r: &mut Pair<O, I>) -> usize {
    r.server.store_mut().take_compliance().len()
}

fn succeeded(state: TaskState) -> bool {
    matches!(state, TaskState::Succeeded { .. })
}

const ALL_EVENTS: [ComplianceEvent; 7] = [
    ComplianceEvent::ProfileChanged,
    ComplianceEvent::DeviceAdminChanged { active: true },
    ComplianceEvent::BlockedPageVisited { category: 9 },
    ComplianceEvent::PasswordOverdue { days: 3 },
    ComplianceEvent::MalwarePersisting { threats: 2 },
    ComplianceEvent::UsbDebugging { enabled: true },
    ComplianceEvent::ManualScanResult { threats: 1 },
];

#[test]
fn five_tasks_queued_at_once_all_run() {
    let mut r = rig::<3, 1>();
    r.run_for(Duration::from_mins(5));
    let tasks: Vec<_> = (0..5).map(|i| r.queue(0, TaskKind::ALL[i])).collect();
    r.run_for(Duration::from_mins(30));
    for t in tasks {
        assert!(succeeded(r.state(0, t)), "{:?}", r.state(0, t));
    }
    assert_eq!(r.devices[0].executed.len(), 5);
}

#[test]
fn compliance_events_and_a_policy_raised_offline_all_arrive() {
    let mut r = rig::<3, 1>();
    r.run_for(Duration::from_mins(5));
    r.go_offline(0);
    r.devices[0].to_raise.extend(ALL_EVENTS);
    let failed = [SettingFailure { key: 1, reason: 2 }; 4];
    r.devices[0].policy_outcome = PolicyOutcome::Partial {
        failed: heapless::Vec::from_slice(&failed).unwrap(),
    };
    let (id, now) = (r.id(0), r.now);
    let version = r.server.assign_policy(id, &[], now).unwrap();
    r.go_online(0);
    r.run_for(Duration::from_hours(2));
    assert_eq!(compliance(&mut r), ALL_EVENTS.len());
    assert!(r.devices[0].to_raise.is_empty());
    let rec = r.server.store().device(id).unwrap().unwrap();
    assert_eq!(
        rec.policy_state,
        PolicyState::from_report(version, &r.devices[0].policy_outcome)
    );
}

#[test]
fn a_running_task_does_not_keep_compliance_or_policy_out() {
    let mut r = rig::<3, 1>();
    r.run_for(Duration::from_mins(5));
    r.devices[0].behaviour = Behaviour::Hold;
    let long = r.queue(0, TaskKind::Scan);
    r.run_for(Duration::from_mins(5));
    assert_eq!(r.devices[0].held.len(), 1);
    // More work while it runs: tasks deferred, events and a policy.
    let waiting: Vec<TaskId> = (0..3).map(|_| r.queue(0, TaskKind::Lock)).collect();
    r.devices[0].to_raise.extend(ALL_EVENTS);
    let (id, now) = (r.id(0), r.now);
    let version = r.server.assign_policy(id, &[], now).unwrap();
    let before = syncs(&r);
    r.run_for(Duration::from_hours(1));
    assert_eq!(
        compliance(&mut r),
        ALL_EVENTS.len(),
        "all events while a task runs"
    );
    // Each event, the policy and each waiting task need a sync at most.
    let in_the_hour = syncs(&r) - before;
    eprintln!(
        "{in_the_hour} syncs in the hour, {} OutboxFull",
        r.devices[0].outbox_full
    );
    assert!(in_the_hour <= 12, "{in_the_hour} syncs in an hour");
    let rec = r.server.store().device(id).unwrap().unwrap();
    assert_eq!(rec.policy_state, PolicyState::Applied { version });
    // The task ends; the waiting ones run then.
    r.devices[0].behaviour = Behaviour::Succeed;
    let task = r.devices[0].held[0];
    r.finish(0, task.id, TaskStatus::Succeeded { result: None });
    r.run_for(Duration::from_hours(4));
    assert!(succeeded(r.state(0, long)));
    for t in waiting {
        assert!(succeeded(r.state(0, t)), "{t:?}");
    }
}

#[test]
fn a_reboot_with_a_full_outbox_and_a_running_task_loses_nothing() {
    let mut r = rig::<3, 1>();
    r.run_for(Duration::from_mins(5));
    r.devices[0].behaviour = Behaviour::Hold;
    let task = r.queue(0, TaskKind::Locate);
    r.run_for(Duration::from_mins(5));
    // Off the network, the application hands over what the outbox takes.
    r.go_offline(0);
    let (now, d) = (r.now, &mut r.devices[0]);
    d.to_raise.extend(ALL_EVENTS);
    while let Some(e) = d.to_raise.front().copied() {
        if d.dev.raise_compliance(e, now).is_err() {
            break;
        }
        d.to_raise.pop_front();
    }
    while let Some(ev) = d.dev.poll_event() {
        d.on_event(ev, &mut r.server, now);
    }
    let raised_before = ALL_EVENTS.len() - r.devices[0].to_raise.len();
    assert!(
        raised_before >= 1,
        "room for one event beside a running task"
    );
    r.reboot(0);
    r.devices[0].behaviour = Behaviour::Succeed;
    r.go_online(0);
    r.run_for(Duration::from_hours(2));
    assert_eq!(
        r.state(0, task),
        TaskState::Failed {
            reason: mdm_sync::wire::reason::INTERRUPTED_BY_REBOOT
        }
    );
    assert_eq!(compliance(&mut r), ALL_EVENTS.len());
}

/// `Device<3, 3>` can run two tasks at most (each needs two outbox slots
/// beside the others' one): with two running, a free task slot is no room,
/// and an offer left then must not bring a new sync at once either.
#[test]
fn a_device_with_more_task_slots_than_room_does_not_resync_in_a_loop() {
    let mut r = rig::<3, 3>();
    r.run_for(Duration::from_mins(5));
    r.devices[0].behaviour = Behaviour::Hold;
    for _ in 0..2 {
        r.queue(0, TaskKind::Scan);
        r.run_for(Duration::from_mins(5));
    }
    assert_eq!(r.devices[0].held.len(), 2, "two run");
    let _waiting: Vec<_> = (0..3).map(|_| r.queue(0, TaskKind::Lock)).collect();
    let before = syncs(&r);
    r.run_for(Duration::from_hours(2));
    let n = syncs(&r) - before;
    assert!(n <= 3, "{n} syncs in 2 h with both tasks running");
}
