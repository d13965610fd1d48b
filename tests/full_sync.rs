//! Whole syncs between the two engines in memory: every task kind, a policy
//! update and every compliance event kind, over a virtual clock.

mod common;

use common::{result_for, Pair};
use mdm_sync::server::{PolicyState, ServerEvent, TaskState};
use mdm_sync::time::Duration;
use mdm_sync::wire::{ComplianceEvent, Setting, SyncTrigger, TaskKind};

const ALL_COMPLIANCE: [ComplianceEvent; 7] = [
    ComplianceEvent::ProfileChanged,
    ComplianceEvent::DeviceAdminChanged { active: false },
    ComplianceEvent::BlockedPageVisited { category: 3 },
    ComplianceEvent::PasswordOverdue { days: 2 },
    ComplianceEvent::MalwarePersisting { threats: 1 },
    ComplianceEvent::UsbDebugging { enabled: true },
    ComplianceEvent::ManualScanResult { threats: 0 },
];

#[test]
fn every_task_kind_runs_once_and_reports_its_result() {
    let mut p = Pair::new(1);
    p.run_for(Duration::from_secs(5)); // boot sync: device known, token stored
    let tasks: Vec<_> = TaskKind::ALL.iter().map(|k| (*k, p.queue(0, *k))).collect();
    p.run_for(Duration::from_secs(5));
    for (kind, id) in tasks {
        assert_eq!(p.times_executed(0, id), 1, "{kind:?}");
        assert_eq!(
            p.state(0, id),
            TaskState::Succeeded {
                result: result_for(kind)
            }
        );
    }
    // The new tasks arrived by push, not by the periodic timer.
    let push_syncs = p.count_events(|e| {
        matches!(
            e,
            ServerEvent::Authenticated {
                trigger: SyncTrigger::Push,
                ..
            }
        )
    });
    assert_eq!(push_syncs, 1);
}

#[test]
fn policy_update_reaches_the_device_and_its_report_the_console() {
    let mut p = Pair::new(1);
    p.run_for(Duration::from_secs(5));
    let id = p.id(0);
    let settings = [Setting { key: 1, value: 6 }, Setting { key: 2, value: -1 }];
    let v1 = p.server.assign_policy(id, &settings, p.now).unwrap();
    p.run_for(Duration::from_secs(5));
    assert_eq!(p.devices[0].applied_policies, vec![v1]);
    assert_eq!(p.devices[0].dev.policy_version(), v1);
    let view = p.server.device_view(id).unwrap();
    assert_eq!(view.policy_state, PolicyState::Applied { version: v1 });
    assert_eq!(p.server.fleet_view().unwrap().on_latest_policy, 1);
}

#[test]
fn every_compliance_event_kind_arrives_once_in_order() {
    let mut p = Pair::new(1);
    p.run_for(Duration::from_secs(5));
    for e in ALL_COMPLIANCE {
        p.raise(0, e);
    }
    p.run_for(Duration::from_secs(5));
    let got: Vec<_> = p
        .events
        .iter()
        .filter_map(|e| match e {
            ServerEvent::Compliance { event, .. } => Some(*event),
            _ => None,
        })
        .collect();
    assert_eq!(got, ALL_COMPLIANCE.to_vec());
    assert_eq!(p.server.store().device_count(), 1);
    assert_eq!(p.devices[0].dev.outbox_len(), 0);
}

#[test]
fn compliance_events_raised_offline_are_retried_every_minute() {
    let mut p = Pair::new(1);
    p.run_for(Duration::from_secs(5));
    // The device loses its network: every connect is refused.
    p.devices[0].online = true;
    let before = p.devices[0].dev.stats().failures;
    p.raise(0, ComplianceEvent::UsbDebugging { enabled: true });
    // Simulate refused connections by making the device fail each attempt.
    let now = p.now;
    p.devices[0].dev.handle_timeout(now);
    let mut attempts = Vec::new();
    for _ in 0..10 {
        let events: Vec<_> = core::iter::from_fn(|| p.devices[0].dev.poll_event()).collect();
        assert!(
            events.contains(&mdm_sync::device::Event::Connect),
            "{events:?}"
        );
        attempts.push(p.now);
        let now = p.now;
        p.devices[0].dev.connect_failed(now);
        while p.devices[0].dev.poll_event().is_some() {}
        let next = p.devices[0].dev.poll_timeout().unwrap();
        p.now = next;
        let now = p.now;
        p.devices[0].dev.handle_timeout(now);
    }
    assert!(p.devices[0].dev.stats().failures >= before + 10);
    for w in attempts.windows(2) {
        let gap = w[1].saturating_since(w[0]);
        assert!(gap <= Duration::from_mins(1), "retry after {gap:?}");
        assert!(gap >= Duration::from_secs(2), "retry after {gap:?}");
    }
    // Once the backoff has grown, the retry interval is the compliance minute.
    let last = attempts[9].saturating_since(attempts[8]);
    assert_eq!(last, Duration::from_mins(1));
    // Back online: the event arrives exactly once.
    p.run_for(Duration::from_mins(2));
    let n = p.count_events(|e| matches!(e, ServerEvent::Compliance { .. }));
    assert_eq!(n, 1);
}

#[test]
fn lost_pushes_never_strand_work_the_periodic_sync_delivers_it() {
    let mut p = Pair::new(1);
    p.run_for(Duration::from_secs(5));
    p.pushes_lost = true;
    let task = p.queue(0, TaskKind::Lock);
    p.run_for(Duration::from_hours(2));
    assert_eq!(
        p.times_executed(0, task),
        0,
        "no push, no periodic sync yet"
    );
    p.run_for(Duration::from_hours(1) + Duration::from_mins(1));
    assert_eq!(p.times_executed(0, task), 1);
    assert_eq!(p.state(0, task), TaskState::Succeeded { result: None });
    let periodic = p.count_events(|e| {
        matches!(
            e,
            ServerEvent::Authenticated {
                trigger: SyncTrigger::Periodic,
                ..
            }
        )
    });
    assert!(periodic >= 1);
}

#[test]
fn reboot_restores_the_snapshot_and_never_runs_a_task_twice() {
    let mut p = Pair::new(1);
    p.run_for(Duration::from_secs(5));
    p.devices[0].behaviour = common::Behaviour::Hold;
    let task = p.queue(0, TaskKind::Scan);
    p.run_for(Duration::from_secs(5));
    assert_eq!(p.times_executed(0, task), 1);
    p.reboot(0);
    p.devices[0].behaviour = common::Behaviour::Succeed;
    p.run_for(Duration::from_mins(5));
    assert_eq!(p.times_executed(0, task), 1, "not run again after reboot");
    let reason = mdm_sync::wire::reason::INTERRUPTED_BY_REBOOT;
    assert_eq!(p.state(0, task), TaskState::Failed { reason });
}

#[test]
fn manual_sync_is_counted_under_its_trigger() {
    let mut p = Pair::new(1);
    p.run_for(Duration::from_secs(5));
    let now = p.now;
    p.devices[0].dev.manual_sync(now);
    p.run_for(Duration::from_secs(5));
    let s = p.devices[0].dev.stats();
    assert_eq!(s.syncs[SyncTrigger::Boot.index()], 1);
    assert_eq!(s.syncs[SyncTrigger::Manual.index()], 1);
}
