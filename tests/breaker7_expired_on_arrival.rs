//! A task queued with an expiry that has already passed can never be
//! delivered. For a device in session `enqueue_task` stores it `Expired` at
//! once (its docs: the first `TaskChanged` "has the state it was stored in
//! ... `Expired` if its expiry has passed already"). For a device out of
//! session it was stored `Queued`, a push went out for it (the device woke
//! up and synced for nothing), the console saw it `PushSent`, and it expired
//! only when the server's timers next ran. Expected here, for both cases:
//! stored and announced `Expired` once, and no push for it.

mod common;

use common::*;
use mdm_sync::server::{ServerEvent, TaskOptions, TaskState};
use mdm_sync::time::Duration;
use mdm_sync::wire::TaskKind;

fn expired_opts(p: &Pair, ago: Duration) -> TaskOptions {
    TaskOptions {
        expires_at: Some(p.now - ago),
        supersede: None,
    }
}

#[test]
fn a_task_expired_on_arrival_for_an_offline_device_is_expired_at_once_and_not_pushed() {
    for ago in [
        Duration::ZERO,
        Duration::from_secs(1),
        Duration::from_hours(5),
    ] {
        let mut p = Pair::new(1);
        p.run_for(Duration::from_mins(10)); // boot sync: the server holds a push token
        p.go_offline(0);
        p.advance(Duration::from_mins(5)); // past the push rate limit
        p.events.clear();
        let id = p.id(0);
        let opts = expired_opts(&p, ago);
        let task = p
            .server
            .enqueue_task(id, TaskKind::Lock, opts, p.now)
            .unwrap();
        // Before any timer runs: what the call itself stored and announced.
        let mut events = Vec::new();
        while let Some(ev) = p.server.poll_event() {
            events.push(ev);
        }
        assert_eq!(
            p.server.task_state(id, task),
            Some(TaskState::Expired),
            "expired {ago:?} ago"
        );
        let pushes = events
            .iter()
            .filter(|e| matches!(e, ServerEvent::SendPush { .. }))
            .count();
        assert_eq!(
            pushes, 0,
            "a push for a task that cannot be delivered: {events:?}"
        );
        let changes: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                ServerEvent::TaskChanged { task: t, state, .. } if *t == task => Some(*state),
                _ => None,
            })
            .collect();
        assert_eq!(changes, vec![TaskState::Expired], "events {events:?}");
        // The device comes back: it never runs the task.
        p.go_online(0);
        p.devices[0].dev.manual_sync(p.now);
        p.run_for(Duration::from_mins(5));
        assert_eq!(p.times_executed(0, task), 0);
        assert_eq!(p.server.task_state(id, task), Some(TaskState::Expired));
    }
}

#[test]
fn a_task_expired_on_arrival_for_a_device_in_session_is_expired_at_once() {
    // The documented case, for comparison: the device holds its session open
    // with a running task.
    let mut p = Pair::new(1);
    p.run_for(Duration::from_mins(10));
    p.devices[0].behaviour = Behaviour::Hold;
    let held = p.queue(0, TaskKind::Scan);
    p.advance(Duration::from_secs(1));
    assert!(p.devices[0].conn.is_some(), "in session");
    let id = p.id(0);
    let opts = expired_opts(&p, Duration::from_secs(1));
    let task = p
        .server
        .enqueue_task(id, TaskKind::Lock, opts, p.now)
        .unwrap();
    assert_eq!(p.server.task_state(id, task), Some(TaskState::Expired));
    p.finish(
        0,
        held,
        mdm_sync::wire::TaskStatus::Succeeded { result: None },
    );
    p.run_for(Duration::from_mins(5));
    assert_eq!(p.times_executed(0, task), 0);
}
