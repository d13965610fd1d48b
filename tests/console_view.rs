//! The console's questions: tasks by state, last sync and its trigger, policy
//! applied-state and overdue devices, for one device or the whole fleet.

mod common;

use common::{Behaviour, Pair};
use mdm_sync::server::TaskState;
use mdm_sync::time::Duration;
use mdm_sync::wire::{Setting, SyncTrigger, TaskKind};

#[test]
fn console_answers_for_one_device_and_the_fleet() {
    let mut p = Pair::new(3);
    p.run_for(Duration::from_secs(5));
    p.devices[1].behaviour = Behaviour::Hold;
    p.devices[2].behaviour = Behaviour::Fail(300);
    let a = p.queue(0, TaskKind::Lock);
    let b = p.queue(1, TaskKind::Scan);
    let c = p.queue(2, TaskKind::Wipe);
    let id0 = p.id(0);
    p.server
        .assign_policy(id0, &[Setting { key: 1, value: 1 }], p.now)
        .unwrap();
    p.run_for(Duration::from_secs(5));
    assert_eq!(p.state(0, a), TaskState::Succeeded { result: None });
    assert_eq!(p.state(1, b), TaskState::Delivered);
    assert_eq!(p.state(2, c), TaskState::Failed { reason: 300 });

    let v1 = p.server.device_view(p.id(1)).unwrap();
    assert_eq!(v1.open_tasks.len(), 1);
    assert_eq!(v1.open_tasks[0].id, b);
    let (_, trigger) = v1.last_sync.unwrap();
    assert_eq!(trigger, SyncTrigger::Push);

    let f = p.server.fleet_view().unwrap();
    assert_eq!(f.devices, 3);
    assert_eq!(
        (f.tasks.succeeded, f.tasks.on_device, f.tasks.failed),
        (1, 1, 1)
    );
    assert_eq!(f.on_latest_policy, 3);
    assert_eq!(f.policy_applied, 1);
    assert_eq!(f.overdue, 0);
    assert_eq!(f.last_trigger[SyncTrigger::Push.index()], 3);
}
