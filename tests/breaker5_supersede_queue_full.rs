//! A task queued with a supersede key on a device whose queue is full must
//! change nothing. `enqueue_task` superseded the undelivered tasks with the
//! key first and checked the queue's bound after: with more open tasks than
//! `max_open_tasks` (a store kept from a server configured with a higher
//! bound, say), the call failed with `QueueFull` and the old task was left
//! `Superseded { by }` a task that never existed. The operator's work was
//! gone: neither task would ever run.

use mdm_sync::server::{
    DeviceRecord, FleetStore, MemoryStore, Server, ServerConfig, ServerError, SupersedeKey,
    TaskOptions, TaskRecord, TaskState,
};
use mdm_sync::time::Instant;
use mdm_sync::wire::{DeviceId, TaskId, TaskKind};

const DEV: DeviceId = DeviceId(4);
const KEY: SupersedeKey = SupersedeKey::from_name("lock-screen");

fn queued(store: &mut MemoryStore, supersede: Option<SupersedeKey>) -> TaskId {
    let id = store.next_task_id().unwrap();
    store
        .put_task(&TaskRecord {
            id,
            device: DEV,
            generation: 0,
            kind: TaskKind::Lock,
            state: TaskState::Queued,
            seq: 0,
            cancel_requested: false,
            deferred_in: 0,
            supersede,
            expires_at: None,
            created_at: Instant::from_millis(1),
            finished_at: None,
        })
        .unwrap();
    id
}

#[test]
fn a_full_queue_refuses_a_superseding_task_without_superseding_anything() {
    // Three open tasks, one with the key; the server allows two.
    let mut store = MemoryStore::new();
    store.put_device(&DeviceRecord::new(DEV, 0)).unwrap();
    let old = queued(&mut store, Some(KEY));
    queued(&mut store, None);
    queued(&mut store, None);
    let cfg = ServerConfig {
        max_open_tasks: 2,
        ..ServerConfig::default()
    };
    let mut server = Server::new(cfg, store, [1; 32], [2; 32]);
    let opts = TaskOptions {
        supersede: Some(KEY),
        ..TaskOptions::default()
    };
    let now = Instant::from_millis(10_000);
    let r = server.enqueue_task(DEV, TaskKind::Lock, opts, now);
    assert!(matches!(r, Err(ServerError::QueueFull)), "{r:?}");
    let state = server.store().task(old).unwrap().unwrap().state;
    assert_eq!(
        state,
        TaskState::Queued,
        "the refused task superseded the one it would have replaced"
    );
    assert_eq!(server.store().open_task_count(DEV).unwrap(), 3);
}
