//! The device hands out a task, announces a cancel and sends progress on
//! every path that creates one, also after its "nothing new" shortcuts have
//! been taken: `poll_event` skips its pass over the running tasks until a
//! task or a cancel comes, `poll_transmit` its search for progress until
//! some is set. Each test first lets such a pass find nothing (a task held
//! by the application, its session polled to the end), then creates the
//! news on one path and checks that it comes out.

mod common;

use common::{Behaviour, Pair};
use mdm_sync::device::Event;
use mdm_sync::server::TaskState;
use mdm_sync::time::Duration;
use mdm_sync::wire::{reason, TaskKind, TaskStatus};

/// One device, booted and synced, holding every task it is given.
fn holding_pair() -> Pair {
    let mut p = Pair::new(1);
    p.run_for(Duration::from_secs(5));
    p.devices[0].behaviour = Behaviour::Hold;
    p
}

/// The user presses "synchronize"; the session runs.
fn sync_now(p: &mut Pair) {
    let now = p.now;
    p.devices[0].dev.manual_sync(now);
    p.run_for(Duration::from_secs(5));
}

#[test]
fn a_task_that_arrives_while_another_is_held_is_handed_out_at_once() {
    let mut p = holding_pair();
    let scan = p.queue(0, TaskKind::Scan);
    p.run_for(Duration::from_secs(1));
    assert_eq!(p.times_executed(0, scan), 1);
    // Same session (it lingers while the scan runs): a second task.
    let lock = p.queue(0, TaskKind::Lock);
    p.run_for(Duration::from_secs(1));
    assert_eq!(
        p.times_executed(0, lock),
        1,
        "a task accepted while another is held must be handed out"
    );
    assert_eq!(p.state(0, lock), TaskState::Delivered);
    // And in a later session too, with the scan still held.
    p.run_for(Duration::from_mins(2));
    let locate = p.queue(0, TaskKind::Locate);
    p.run_for(Duration::from_secs(5));
    assert_eq!(p.times_executed(0, locate), 1);
    let held: Vec<_> = p.devices[0].held.iter().map(|t| t.id).collect();
    assert_eq!(held, vec![scan, lock, locate]);
}

#[test]
fn a_task_turned_away_at_capacity_runs_once_room_is_made() {
    let mut p = holding_pair();
    // Default capacity: 4 running tasks.
    let first: Vec<_> = (0..4).map(|_| p.queue(0, TaskKind::Scan)).collect();
    p.run_for(Duration::from_secs(5));
    for t in &first {
        assert_eq!(p.times_executed(0, *t), 1);
    }
    let fifth = p.queue(0, TaskKind::Lock);
    p.run_for(Duration::from_secs(5));
    assert_eq!(p.times_executed(0, fifth), 0, "no room: not now");
    // Room for one: the fifth comes back and runs while three stay held.
    p.finish(0, first[0], TaskStatus::Succeeded { result: None });
    p.run_for(Duration::from_mins(2));
    assert_eq!(p.times_executed(0, fifth), 1);
    assert_eq!(p.devices[0].held.len(), 4);
}

#[test]
fn a_cancel_for_a_held_task_in_the_same_session_is_announced() {
    let mut p = holding_pair();
    let scan = p.queue(0, TaskKind::Scan);
    p.run_for(Duration::from_secs(1));
    assert_eq!(p.times_executed(0, scan), 1);
    p.server.cancel_task(scan, p.now).unwrap();
    p.run_for(Duration::from_secs(1));
    assert_eq!(p.devices[0].cancels, vec![scan]);
}

#[test]
fn a_cancel_for_a_held_task_in_a_later_session_is_announced() {
    let mut p = holding_pair();
    let scan = p.queue(0, TaskKind::Scan);
    let lock = p.queue(0, TaskKind::Lock);
    p.run_for(Duration::from_mins(2)); // the session ended (linger)
    assert!(!p.devices[0].dev.is_connected());
    // The second running task's cancel: a pass must not stop at the first.
    p.server.cancel_task(lock, p.now).unwrap();
    p.run_for(Duration::from_secs(5));
    assert_eq!(p.devices[0].cancels, vec![lock]);
    // Cancelled again: one announcement only. Then the other one.
    p.server.cancel_task(scan, p.now).unwrap();
    p.run_for(Duration::from_mins(2));
    assert_eq!(p.devices[0].cancels, vec![lock, scan]);
    p.finish(0, lock, TaskStatus::Cancelled);
    p.finish(0, scan, TaskStatus::Cancelled);
    p.run_for(Duration::from_secs(5));
    assert_eq!(p.state(0, scan), TaskState::Cancelled);
    assert_eq!(p.state(0, lock), TaskState::Cancelled);
}

#[test]
fn cancels_of_finished_or_unknown_tasks_announce_nothing_and_hide_nothing() {
    let mut p = holding_pair();
    let scan = p.queue(0, TaskKind::Scan);
    let lock = p.queue(0, TaskKind::Lock);
    p.run_for(Duration::from_secs(1));
    // The lock finishes offline; its cancel comes when the device is back.
    p.go_offline(0);
    p.finish(0, lock, TaskStatus::Succeeded { result: None });
    p.server.cancel_task(lock, p.now).unwrap();
    p.go_online(0);
    p.run_for(Duration::from_mins(2));
    assert!(p.devices[0].cancels.is_empty());
    assert!(p.server.task(lock).unwrap().unwrap().cancel_too_late());
    // Then a real one, for the task still held.
    p.server.cancel_task(scan, p.now).unwrap();
    p.run_for(Duration::from_secs(5));
    assert_eq!(p.devices[0].cancels, vec![scan]);
}

#[test]
fn progress_set_after_the_welcome_goes_out_in_the_same_session() {
    let mut p = holding_pair();
    let scan = p.queue(0, TaskKind::Scan);
    p.run_for(Duration::from_secs(1));
    assert!(
        p.devices[0].dev.is_connected(),
        "lingers while the scan runs"
    );
    assert_eq!(p.state(0, scan), TaskState::Delivered);
    p.devices[0].dev.task_progress(scan, Some(40)).unwrap();
    p.run_for(Duration::from_secs(1));
    assert_eq!(
        p.state(0, scan),
        TaskState::InProgress { percent: Some(40) }
    );
    // A second update, after a pass that found none, goes out too.
    p.devices[0].dev.task_progress(scan, Some(41)).unwrap();
    p.run_for(Duration::from_secs(1));
    assert_eq!(
        p.state(0, scan),
        TaskState::InProgress { percent: Some(41) }
    );
}

#[test]
fn a_task_still_running_at_the_next_welcome_is_reported_running() {
    let mut p = holding_pair();
    let scan = p.queue(0, TaskKind::Scan);
    p.run_for(Duration::from_mins(2)); // the session ended (linger)
    assert!(!p.devices[0].dev.is_connected());
    assert_eq!(p.state(0, scan), TaskState::Delivered);
    sync_now(&mut p);
    assert_eq!(
        p.state(0, scan),
        TaskState::InProgress { percent: None },
        "PROTOCOL.md 7.2: right after Welcome every running task gets one Progress"
    );
}

#[test]
fn progress_set_offline_goes_out_at_the_next_session() {
    let mut p = holding_pair();
    let scan = p.queue(0, TaskKind::Scan);
    p.run_for(Duration::from_mins(2));
    p.go_offline(0);
    p.devices[0].dev.task_progress(scan, Some(70)).unwrap();
    p.go_online(0);
    sync_now(&mut p);
    assert_eq!(
        p.state(0, scan),
        TaskState::InProgress { percent: Some(70) }
    );
}

#[test]
fn after_a_restore_new_tasks_and_cancels_are_announced() {
    let mut p = holding_pair();
    let scan = p.queue(0, TaskKind::Scan);
    p.run_for(Duration::from_mins(2));
    p.reboot(0);
    p.run_for(Duration::from_secs(5));
    let failed = TaskState::Failed {
        reason: reason::INTERRUPTED_BY_REBOOT,
    };
    assert_eq!(p.state(0, scan), failed);
    assert_eq!(p.devices[0].dev.running_tasks().count(), 0);
    let lock = p.queue(0, TaskKind::Lock);
    p.run_for(Duration::from_secs(5));
    assert_eq!(p.times_executed(0, lock), 1);
    p.server.cancel_task(lock, p.now).unwrap();
    p.run_for(Duration::from_secs(5));
    assert_eq!(p.devices[0].cancels, vec![lock]);
    p.devices[0].dev.task_progress(lock, Some(5)).unwrap();
    p.run_for(Duration::from_secs(1));
    assert_eq!(p.state(0, lock), TaskState::InProgress { percent: Some(5) });
}

/// The engine alone: every event a batch of news produces comes out of
/// consecutive `poll_event` calls, with the task before its cancel, and
/// nothing is left for a later poll after a `None`.
#[test]
fn one_poll_loop_drains_everything_a_batch_brings() {
    let mut p = holding_pair();
    let scan = p.queue(0, TaskKind::Scan);
    p.run_for(Duration::from_secs(1));
    let lock = p.queue(0, TaskKind::Lock);
    p.server.cancel_task(scan, p.now).unwrap();
    p.run_for(Duration::from_secs(1));
    assert_eq!(p.times_executed(0, lock), 1);
    assert_eq!(p.devices[0].cancels, vec![scan]);
    // Nothing left over: a fresh poll finds nothing.
    let left: Vec<Event> = core::iter::from_fn(|| p.devices[0].dev.poll_event()).collect();
    assert!(left.is_empty(), "left over: {left:?}");
}
