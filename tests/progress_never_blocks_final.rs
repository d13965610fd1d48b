//! Progress of long tasks is coalesced to the latest value and bounded; the
//! final status is always accepted, whatever bounds were hit.

mod common;

use common::{Behaviour, Pair};
use mdm_sync::server::{ServerEvent, TaskState};
use mdm_sync::time::Duration;
use mdm_sync::wire::{ComplianceEvent, TaskKind, TaskStatus};

#[test]
fn progress_is_coalesced_to_the_latest_value() {
    let mut p = Pair::new(1);
    p.run_for(Duration::from_secs(5));
    p.devices[0].behaviour = Behaviour::Hold;
    let scan = p.queue(0, TaskKind::Scan);
    p.run_for(Duration::from_secs(1));
    for pct in 1..=90 {
        p.devices[0].dev.task_progress(scan, Some(pct)).unwrap();
    }
    p.run_for(Duration::from_secs(1));
    assert_eq!(
        p.state(0, scan),
        TaskState::InProgress { percent: Some(90) }
    );
    let progress_events = p.count_events(|e| {
        matches!(
            e,
            ServerEvent::TaskChanged {
                state: TaskState::InProgress { .. },
                ..
            }
        )
    });
    assert!(
        progress_events <= 3,
        "{progress_events} progress events for 90 updates"
    );
    p.finish(0, scan, TaskStatus::Succeeded { result: None });
    p.run_for(Duration::from_secs(5));
    assert_eq!(p.state(0, scan), TaskState::Succeeded { result: None });
}

#[test]
fn a_full_outbox_refuses_new_events_but_never_a_final_status() {
    let mut p = Pair::new(1);
    p.run_for(Duration::from_secs(5));
    p.devices[0].behaviour = Behaviour::Hold;
    let tasks: Vec<_> = (0..4).map(|_| p.queue(0, TaskKind::Locate)).collect();
    p.run_for(Duration::from_secs(5));
    p.go_offline(0);
    // Offline, the user keeps triggering compliance events until the outbox
    // (16 slots, 4 kept for the running tasks, 1 for a policy report) refuses more.
    let now = p.now;
    let mut accepted = 0;
    while p.devices[0]
        .dev
        .raise_compliance(ComplianceEvent::ProfileChanged, now)
        .is_ok()
    {
        accepted += 1;
        assert!(accepted <= 16);
    }
    assert_eq!(
        accepted, 11,
        "16 slots: 4 kept for the running tasks, 1 for a policy report"
    );
    for t in &tasks {
        p.devices[0].dev.task_progress(*t, Some(50)).unwrap();
        let result = common::result_for(TaskKind::Locate);
        p.finish(0, *t, TaskStatus::Succeeded { result });
    }
    p.go_online(0);
    p.run_for(Duration::from_mins(5));
    for t in tasks {
        assert!(matches!(p.state(0, t), TaskState::Succeeded { .. }));
    }
    assert_eq!(
        p.count_events(|e| matches!(e, ServerEvent::Compliance { .. })),
        11
    );
}
