//! "Not now": a deferred task is kept, offered at most once per session, never
//! blocks the tasks behind it, and comes back on the next sync.

mod common;

use common::{Behaviour, Pair};
use mdm_sync::server::TaskState;
use mdm_sync::time::Duration;
use mdm_sync::wire::TaskKind;

#[test]
fn deferred_task_lets_others_pass_and_is_offered_again_next_sync() {
    let mut p = Pair::new(1);
    p.run_for(Duration::from_secs(5));
    p.devices[0].script.push_back(Behaviour::Defer(None));
    let wipe = p.queue(0, TaskKind::Wipe);
    let lock = p.queue(0, TaskKind::Lock);
    p.run_for(Duration::from_secs(5));
    assert_eq!(
        p.state(0, wipe),
        TaskState::Deferred {
            retry_after_s: None
        }
    );
    assert_eq!(
        p.state(0, lock),
        TaskState::Succeeded { result: None },
        "no head-of-line blocking"
    );
    let sessions =
        p.count_events(|e| matches!(e, mdm_sync::server::ServerEvent::Authenticated { .. }));
    // Next sync (manual here) offers it again; this time the user says yes.
    let now = p.now;
    p.devices[0].dev.manual_sync(now);
    p.run_for(Duration::from_secs(5));
    assert_eq!(p.state(0, wipe), TaskState::Succeeded { result: None });
    assert_eq!(p.times_executed(0, wipe), 2, "handed out once per offer");
    let after =
        p.count_events(|e| matches!(e, mdm_sync::server::ServerEvent::Authenticated { .. }));
    assert_eq!(after, sessions + 1);
}

#[test]
fn retry_after_hint_makes_the_device_sync_again_by_itself() {
    let mut p = Pair::new(1);
    p.run_for(Duration::from_secs(5));
    p.devices[0].script.push_back(Behaviour::Defer(Some(600)));
    let scan = p.queue(0, TaskKind::Scan);
    p.run_for(Duration::from_secs(5));
    assert_eq!(
        p.state(0, scan),
        TaskState::Deferred {
            retry_after_s: Some(600)
        }
    );
    p.run_for(Duration::from_secs(590));
    assert_eq!(p.times_executed(0, scan), 1, "not before the hint");
    p.run_for(Duration::from_secs(20));
    assert_eq!(p.times_executed(0, scan), 2);
    assert_eq!(
        p.state(0, scan),
        TaskState::Succeeded {
            result: common::result_for(TaskKind::Scan)
        }
    );
}

#[test]
fn endless_not_now_never_spins() {
    let mut p = Pair::new(1);
    p.run_for(Duration::from_secs(5));
    p.devices[0].behaviour = Behaviour::Defer(None);
    let lock = p.queue(0, TaskKind::Lock);
    // A whole day of "not now": the task is offered once per sync only, and
    // syncs happen at their natural pace (push once, then periodic).
    p.run_for(Duration::from_hours(24));
    let offers = p.times_executed(0, lock);
    let syncs =
        p.count_events(|e| matches!(e, mdm_sync::server::ServerEvent::Authenticated { .. }));
    assert!(offers <= 10, "offered {offers} times in a day");
    assert!(syncs <= 12, "{syncs} syncs in a day");
    assert_eq!(
        p.state(0, lock),
        TaskState::Deferred {
            retry_after_s: None
        }
    );
}

#[test]
fn a_full_device_defers_by_itself_and_catches_up() {
    let mut p = Pair::new(1);
    p.run_for(Duration::from_secs(5));
    p.devices[0].behaviour = Behaviour::Hold;
    let held: Vec<_> = (0..4).map(|_| p.queue(0, TaskKind::Scan)).collect();
    let extra = p.queue(0, TaskKind::Locate);
    p.run_for(Duration::from_secs(5));
    assert_eq!(
        p.state(0, extra),
        TaskState::Deferred {
            retry_after_s: None
        }
    );
    p.devices[0].behaviour = Behaviour::Succeed;
    for t in held {
        p.finish(0, t, mdm_sync::wire::TaskStatus::Succeeded { result: None });
    }
    p.run_for(Duration::from_secs(5));
    let want = TaskState::Succeeded {
        result: common::result_for(TaskKind::Locate),
    };
    assert_eq!(p.state(0, extra), want);
    assert_eq!(p.times_executed(0, extra), 1);
}

#[test]
fn a_zero_retry_hint_does_not_make_the_device_spin() {
    let mut p = Pair::new(1);
    p.run_for(Duration::from_secs(5));
    p.devices[0].behaviour = Behaviour::Defer(Some(0));
    p.queue(0, TaskKind::Scan);
    p.run_for(Duration::from_mins(1));
    let syncs =
        p.count_events(|e| matches!(e, mdm_sync::server::ServerEvent::Authenticated { .. }));
    // Boot, push, then at most one retry per `backoff_min` (5 s).
    assert!(syncs <= 2 + 12, "{syncs} syncs in a minute");
}
