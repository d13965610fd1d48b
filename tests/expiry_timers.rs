//! A task that ends long before its expiry does not leave its expiry timer
//! in the server for the rest of the window: the timers of tasks that ended
//! are swept out, so the engine's memory follows the open tasks, not the
//! task rate times the expiry window.

mod common;

use common::Pair;
use mdm_sync::server::{TaskOptions, TaskState};
use mdm_sync::time::Duration;
use mdm_sync::wire::TaskKind;

#[test]
fn expiries_of_finished_tasks_do_not_pile_up() {
    let devices = 50;
    let mut p = Pair::new(devices);
    p.tick(); // boot syncs
    let far = TaskOptions {
        expires_at: Some(p.now + Duration::from_hours(30 * 24)),
        supersede: None,
    };
    let mut tasks = Vec::new();
    for _round in 0..20 {
        for i in 0..devices {
            for _ in 0..5 {
                let id = p.id(i);
                let t = p.server.enqueue_task(id, TaskKind::Lock, far, p.now);
                tasks.push((i, t.unwrap()));
            }
        }
        p.run_for(Duration::from_mins(1));
    }
    assert_eq!(tasks.len(), 5_000);
    for &(i, t) in &tasks {
        assert!(
            matches!(p.state(i, t), TaskState::Succeeded { .. }),
            "{t:?}"
        );
    }
    // 5,000 expiries armed 30 days out, all of their tasks done: without the
    // sweep they would all still be there.
    let timers = p.server.timer_count();
    assert!(timers < 2_000, "{timers} timers held for 50 devices");

    // An expiry of a task still open survives the sweeps and still fires.
    p.go_offline(0);
    let soon = TaskOptions {
        expires_at: Some(p.now + Duration::from_mins(5)),
        supersede: None,
    };
    let id = p.id(0);
    let t = p
        .server
        .enqueue_task(id, TaskKind::Wipe, soon, p.now)
        .unwrap();
    for i in 1..devices {
        for _ in 0..30 {
            let id = p.id(i);
            p.server
                .enqueue_task(id, TaskKind::Lock, far, p.now)
                .unwrap();
        }
        p.run_for(Duration::from_secs(1));
    }
    p.run_for(Duration::from_mins(10));
    assert_eq!(p.state(0, t), TaskState::Expired);
}
