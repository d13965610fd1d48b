//! A device holds at most `max_open_tasks` tasks that are not final: one more
//! is refused with `QueueFull` and leaves nothing behind. Final tasks, and
//! tasks a new one supersedes, make room.

mod common;

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

/// A device in session: the limit is checked as the task is stored (one
/// lookup of its open list). A refused task is not offered, announced or
/// numbered: the next one the device gets follows its last without a gap,
/// and it runs it.
#[test]
fn a_device_in_session_is_refused_a_task_past_the_limit_and_gets_the_next() {
    let cfg = ServerConfig {
        max_open_tasks: 2,
        ..ServerConfig::default()
    };
    let mut p = common::Pair::with_config(1, cfg);
    p.devices[0].behaviour = common::Behaviour::Hold;
    let first = p.queue(0, TaskKind::Scan);
    p.tick(); // pushed, synced, held: the session stays open (no time passes)
    assert_eq!(p.state(0, first), TaskState::Delivered);
    let id = p.id(0);
    assert!(p.server.device_view(id).unwrap().online);

    let second = p.queue(0, TaskKind::Locate);
    assert_eq!(p.state(0, second), TaskState::Offered, "offered at once");
    p.tick();
    p.events.clear();
    let r = p
        .server
        .enqueue_task(id, TaskKind::Wipe, TaskOptions::default(), p.now);
    assert_eq!(r, Err(ServerError::QueueFull));
    p.tick();
    assert!(p.events.is_empty(), "{:?}", p.events);
    assert_eq!(p.devices[0].executed.len(), 2, "nothing more was offered");

    // A final task makes room; the next task runs on the device.
    p.finish(
        0,
        first,
        mdm_sync::wire::TaskStatus::Succeeded { result: None },
    );
    p.tick();
    let third = p.queue(0, TaskKind::Lock);
    p.tick();
    assert_eq!(p.times_executed(0, third), 1);
    assert_eq!(p.state(0, third), TaskState::Delivered);
    let seqs: Vec<u32> = p.devices[0].executed.iter().map(|t| t.seq).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
}
