//! Five clicks on "lock" for an offline device give one lock.

mod common;

use common::Pair;
use mdm_sync::server::{ServerEvent, SupersedeKey, TaskOptions, TaskState};
use mdm_sync::time::Duration;
use mdm_sync::wire::TaskKind;

#[test]
fn five_clicks_on_lock_for_an_offline_device_give_one_lock() {
    let mut p = Pair::new(1);
    p.run_for(Duration::from_secs(5));
    p.go_offline(0);
    let opts = TaskOptions {
        supersede: Some(SupersedeKey::from_name("lock")),
        ..Default::default()
    };
    let id = p.id(0);
    let clicks: Vec<_> = (0..5)
        .map(|_| {
            p.server
                .enqueue_task(id, TaskKind::Lock, opts, p.now)
                .unwrap()
        })
        .collect();
    let unrelated = p.queue(0, TaskKind::Locate);
    for (i, t) in clicks.iter().enumerate().take(4) {
        assert_eq!(p.state(0, *t), TaskState::Superseded { by: clicks[i + 1] });
    }
    p.go_online(0);
    p.run_for(Duration::from_hours(4)); // periodic sync delivers
    let locks = p.devices[0]
        .executed
        .iter()
        .filter(|t| t.kind == TaskKind::Lock)
        .count();
    assert_eq!(locks, 1);
    assert_eq!(p.state(0, clicks[4]), TaskState::Succeeded { result: None });
    assert_eq!(
        p.times_executed(0, unrelated),
        1,
        "other tasks are not superseded"
    );
    let superseded = p.count_events(|e| {
        matches!(
            e,
            ServerEvent::TaskChanged {
                state: TaskState::Superseded { .. },
                ..
            }
        )
    });
    assert_eq!(superseded, 4);
    assert_eq!(p.server.fleet_view().unwrap().tasks.superseded, 4);
}

#[test]
fn a_delivered_task_is_not_superseded() {
    let mut p = Pair::new(1);
    p.run_for(Duration::from_secs(5));
    p.devices[0].behaviour = common::Behaviour::Hold;
    let key = Some(SupersedeKey::from_name("scan"));
    let opts = TaskOptions {
        supersede: key,
        ..Default::default()
    };
    let id = p.id(0);
    let first = p
        .server
        .enqueue_task(id, TaskKind::Scan, opts, p.now)
        .unwrap();
    p.run_for(Duration::from_secs(5));
    assert_eq!(p.state(0, first), TaskState::Delivered);
    let second = p
        .server
        .enqueue_task(id, TaskKind::Scan, opts, p.now)
        .unwrap();
    assert_eq!(
        p.state(0, first),
        TaskState::Delivered,
        "already on the device"
    );
    assert_ne!(p.state(0, second), TaskState::Superseded { by: first });
}
