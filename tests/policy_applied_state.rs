//! Per policy version the device reports applied / partially applied /
//! rejected; a rejected version followed by a corrected one delivers the
//! corrected one, and a policy changed while offline converges to the latest.

mod common;

use common::Pair;
use mdm_sync::server::{PolicyState, ServerEvent};
use mdm_sync::time::Duration;
use mdm_sync::wire::{PolicyOutcome, Setting, SettingFailure};

fn settings(v: i64) -> [Setting; 2] {
    [Setting { key: 1, value: v }, Setting { key: 7, value: -v }]
}

#[test]
fn rejected_then_corrected_policy_is_delivered_and_applied() {
    let mut p = Pair::new(1);
    p.run_for(Duration::from_secs(5));
    let id = p.id(0);
    p.devices[0].policy_outcome = PolicyOutcome::Rejected { reason: 4 };
    let bad = p.server.assign_policy(id, &settings(1), p.now).unwrap();
    p.run_for(Duration::from_secs(5));
    let view = p.server.device_view(id).unwrap();
    assert_eq!(
        view.policy_state,
        PolicyState::Rejected {
            version: bad,
            reason: 4
        }
    );
    p.devices[0].policy_outcome = PolicyOutcome::Applied;
    let good = p.server.assign_policy(id, &settings(2), p.now).unwrap();
    // The second push waits out the one-push-per-minute limit.
    p.run_for(Duration::from_secs(30));
    assert_eq!(p.devices[0].applied_policies, vec![bad]);
    p.run_for(Duration::from_secs(40));
    assert_eq!(p.devices[0].applied_policies, vec![bad, good]);
    let view = p.server.device_view(id).unwrap();
    assert_eq!(view.policy_state, PolicyState::Applied { version: good });
    assert_eq!(view.policy_assigned, good);
}

#[test]
fn partially_applied_policy_names_the_failed_settings() {
    let mut p = Pair::new(1);
    p.run_for(Duration::from_secs(5));
    let failed = heapless::Vec::from_slice(&[SettingFailure { key: 7, reason: 12 }]).unwrap();
    p.devices[0].policy_outcome = PolicyOutcome::Partial {
        failed: failed.clone(),
    };
    let v = p
        .server
        .assign_policy(p.id(0), &settings(3), p.now)
        .unwrap();
    p.run_for(Duration::from_secs(5));
    let want = PolicyState::PartiallyApplied { version: v, failed };
    assert_eq!(p.server.device_view(p.id(0)).unwrap().policy_state, want);
    let reported = p.count_events(|e| matches!(e, ServerEvent::PolicyReported { .. }));
    assert_eq!(reported, 1);
    let fleet = p.server.fleet_view().unwrap();
    assert_eq!((fleet.policy_partial, fleet.policy_applied), (1, 0));
}

#[test]
fn a_policy_changed_several_times_offline_converges_to_the_latest() {
    let mut p = Pair::new(1);
    p.run_for(Duration::from_secs(5));
    p.go_offline(0);
    let id = p.id(0);
    let versions: Vec<_> = (1..=5)
        .map(|v| p.server.assign_policy(id, &settings(v), p.now).unwrap())
        .collect();
    p.go_online(0);
    p.run_for(Duration::from_hours(4));
    assert_eq!(
        p.devices[0].applied_policies,
        vec![versions[4]],
        "only the latest is applied"
    );
    assert_eq!(p.devices[0].dev.policy_version(), versions[4]);
    assert_eq!(p.server.fleet_view().unwrap().on_latest_policy, 1);
}

#[test]
fn a_report_on_an_older_version_leaves_the_newer_assignment_pending() {
    let mut p = Pair::new(1);
    p.run_for(Duration::from_secs(5));
    let id = p.id(0);
    p.devices[0].hold_policy = true;
    let v1 = p.server.assign_policy(id, &settings(1), p.now).unwrap();
    p.run_for(Duration::from_secs(5));
    assert_eq!(
        p.devices[0].dev.pending_policy().map(|p| p.version),
        Some(v1)
    );
    // Applied offline; meanwhile the operator assigns v2.
    p.go_offline(0);
    let now = p.now;
    p.devices[0]
        .dev
        .policy_applied(v1, PolicyOutcome::Applied, now)
        .unwrap();
    let v2 = p.server.assign_policy(id, &settings(2), now).unwrap();
    p.devices[0].hold_policy = false;
    p.go_online(0);
    p.run_for(Duration::from_mins(5));
    let states: Vec<_> = p
        .events
        .iter()
        .filter_map(|e| match e {
            ServerEvent::PolicyReported { state, .. } => Some(state.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        states,
        vec![PolicyState::Pending, PolicyState::Applied { version: v2 }]
    );
}
