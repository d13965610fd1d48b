//! A device holds at most `max_open_tasks` tasks that are not final: one more
//! is refused with `QueueFull` and leaves nothing behind. Final tasks, and
//! tasks a new one supersedes, make room.

use mdm_sync::server::{
    FleetStore, MemoryStore, Server, ServerConfig, ServerError, ServerEvent, SupersedeKey,
    TaskOptions, TaskState,
};
use mdm_sync::time::Instant;
use mdm_sync::wire::{DeviceId, TaskKind};

#[test]
fn the_open_task_limit_counts_only_open_tasks() {
    let cfg = ServerConfig {
        max_open_tasks: 3,
        ..ServerConfig::default()
    };
    let mut s = Server::new(cfg, MemoryStore::new(), [1; 32], [2; 32]);
    let (d, other) = (DeviceId(1), DeviceId(2));
    let t0 = Instant::from_millis(1_000);
    s.enroll(d, t0).unwrap();
    s.enroll(other, t0).unwrap();
    let plain = TaskOptions::default();
    let first = s.enqueue_task(d, TaskKind::Lock, plain, t0).unwrap();
    s.enqueue_task(d, TaskKind::Unlock, plain, t0).unwrap();
    s.enqueue_task(other, TaskKind::Lock, plain, t0).unwrap();
    let lock = TaskOptions {
        supersede: Some(SupersedeKey::from_name("lock")),
        ..TaskOptions::default()
    };
    let keyed = s.enqueue_task(d, TaskKind::Lock, lock, t0).unwrap();
    while s.poll_event().is_some() {}

    // Full: refused, with or without a key that matches nothing open.
    let wipe = TaskOptions {
        supersede: Some(SupersedeKey::from_name("wipe")),
        ..TaskOptions::default()
    };
    for opts in [plain, wipe] {
        let r = s.enqueue_task(d, TaskKind::Wipe, opts, t0);
        assert_eq!(r, Err(ServerError::QueueFull));
    }
    assert!(s.poll_event().is_none(), "a refused task was announced");
    assert_eq!(s.store().open_task_count(d), Ok(3));

    // A task with the same key replaces the undelivered keyed one.
    let newer = s.enqueue_task(d, TaskKind::Lock, lock, t0).unwrap();
    assert_eq!(
        s.task_state(d, keyed),
        Some(TaskState::Superseded { by: newer })
    );
    assert_eq!(s.store().open_task_count(d), Ok(3));

    // A final task makes room.
    assert_eq!(s.cancel_task(first, t0), Ok(TaskState::Cancelled));
    assert_eq!(s.store().open_task_count(d), Ok(2));
    let last = s.enqueue_task(d, TaskKind::Wipe, plain, t0).unwrap();
    let r = s.enqueue_task(d, TaskKind::Wipe, plain, t0);
    assert_eq!(r, Err(ServerError::QueueFull));
    let mut open = Vec::new();
    s.store().open_tasks(d, &mut open).unwrap();
    assert_eq!(open.len(), 3);
    assert_eq!(open.last(), Some(&last));
    assert_eq!(s.store().open_task_count(other), Ok(1));
    assert_eq!(s.store().open_task_count(DeviceId(9)), Ok(0));
    let queued = core::iter::from_fn(|| s.poll_event())
        .filter(|e| matches!(e, ServerEvent::TaskChanged { task, .. } if *task == last))
        .count();
    assert_eq!(queued, 1);
}
