//! A device with its four task slots running answers a fifth offer "not
//! now" (busy). The report carrying that answer is lost on the way to the
//! server, and the device reboots (snapshot, then restore) before it learns
//! so: its running tasks are reported as interrupted, so it has room again,
//! and its boot sync carries the old "not now". The server does not offer a
//! task again in the session that brought its "not now", so the device must
//! sync once more after that session: the fifth task must succeed, once,
//! within minutes, not at the periodic sync three hours later.
//!
//! Before the fix the state that asks for that sync (`busy_seq`) lived in
//! RAM only: after the reboot the fifth task stayed `Deferred` for hours.
//! The snapshot (format 4, PROTOCOL.md 14) now says whether an
//! unacknowledged busy "not now" is in its outbox.
//!
//! An application's own "not now" is not a busy one: after a reboot it
//! still brings no sync of its own (its retry hint, a task that finishes or
//! the periodic sync decide, as before the reboot).

mod common;

use common::{Behaviour, Pair};
use mdm_sync::server::TaskState;
use mdm_sync::time::Duration;
use mdm_sync::wire::{TaskId, TaskKind, TaskStatus};

/// Device 0 of `pair` answers an offer of `kind` with the behaviour set,
/// and the `Report` frame that carries the answer is lost; the device
/// reboots before any other frame moves. Returns the task.
fn answer_lost_then_reboot(pair: &mut Pair, finish_offline: bool) -> TaskId {
    let task = pair.queue(0, TaskKind::Scan);
    pair.sync_losing_a_report(0);
    // The answer was persisted (a report is sent only once it is) and the
    // server has not heard it: the offer is still out.
    assert_eq!(pair.state(0, task), TaskState::Offered);
    let answered = pair.devices[0].dev.last_task_seq();
    pair.go_offline(0);
    if finish_offline {
        // Room comes before the reboot: the running tasks finish offline.
        let held: Vec<_> = pair.devices[0].held.iter().map(|t| t.id).collect();
        for id in held {
            let result = common::result_for(TaskKind::Scan);
            pair.finish(0, id, TaskStatus::Succeeded { result });
        }
        pair.tick();
    }
    pair.reboot(0);
    pair.go_online(0);
    assert_eq!(pair.devices[0].dev.last_task_seq(), answered);
    task
}

/// Four tasks running (held by the application), then a fifth offered.
fn busy_case(finish_offline: bool) -> Result<(), String> {
    let mut pair = Pair::new(1); // 4 task slots
    pair.run_for(Duration::from_mins(1));
    pair.devices[0].behaviour = Behaviour::Hold;
    let running: Vec<_> = (0..4).map(|_| pair.queue(0, TaskKind::Scan)).collect();
    pair.run_for(Duration::from_mins(2));
    assert_eq!(pair.devices[0].held.len(), 4);
    assert_eq!(pair.devices[0].dev.running_tasks().count(), 4);
    let fifth = answer_lost_then_reboot(&mut pair, finish_offline);
    pair.devices[0].behaviour = Behaviour::Succeed;
    pair.run_for(Duration::from_mins(10));
    let state = pair.state(0, fifth);
    let runs = pair.times_executed(0, fifth);
    if !matches!(state, TaskState::Succeeded { .. }) || runs != 1 {
        return Err(format!(
            "finished offline {finish_offline}: fifth task {state:?}, run {runs} times"
        ));
    }
    for t in running {
        // Each ran once, then finished or was interrupted by the reboot.
        assert_eq!(pair.times_executed(0, t), 1);
        assert!(pair.state(0, t).is_final(), "{:?}", pair.state(0, t));
    }
    Ok(())
}

#[test]
fn a_task_deferred_for_lack_of_slots_comes_back_within_minutes_after_a_reboot() {
    let failures: Vec<String> = [busy_case(false), busy_case(true)]
        .into_iter()
        .filter_map(Result::err)
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The sum of a device's completed syncs, of every trigger.
fn syncs(pair: &Pair) -> u32 {
    pair.devices[0].dev.stats().syncs.iter().sum()
}

/// The busy "not now" reached the server and was acknowledged, and no
/// snapshot was taken since: the one restored still says it waits for its
/// ack. The boot sync's `Welcome` acknowledges it: the server heard it in
/// an earlier session and offers the task in this one, so the task comes
/// back in the boot sync and no second sync follows. Fails if an ack in a
/// `Welcome` asked for that sync as one in the session does.
#[test]
fn an_acknowledged_busy_not_now_brings_no_second_sync_after_a_reboot() {
    let mut pair = Pair::new(1);
    pair.run_for(Duration::from_mins(1));
    pair.devices[0].behaviour = Behaviour::Hold;
    for _ in 0..4 {
        pair.queue(0, TaskKind::Scan);
    }
    pair.run_for(Duration::from_mins(2));
    assert_eq!(pair.devices[0].held.len(), 4);
    let fifth = pair.queue(0, TaskKind::Scan);
    pair.run_for(Duration::from_mins(2));
    let deferred = TaskState::Deferred {
        retry_after_s: None,
    };
    assert_eq!(pair.state(0, fifth), deferred);
    assert_eq!(pair.devices[0].dev.outbox_len(), 0, "acknowledged");
    pair.reboot(0);
    // The snapshot restored holds the "not now" (taken before its ack) and
    // the four running tasks, now reported as interrupted.
    assert_eq!(pair.devices[0].dev.outbox_len(), 5);
    pair.devices[0].behaviour = Behaviour::Succeed;
    let before = syncs(&pair);
    pair.run_for(Duration::from_mins(10));
    let state = pair.state(0, fifth);
    assert!(matches!(state, TaskState::Succeeded { .. }), "{state:?}");
    assert_eq!(pair.times_executed(0, fifth), 1);
    assert_eq!(syncs(&pair) - before, 1, "the boot sync only");
}

/// The application answers "not now" with no hint, the answer is lost and
/// the device reboots: the boot sync carries the answer and nothing asks
/// for another sync, so the task waits (for the periodic sync), as it
/// would have without the reboot. Fails if a restore took every "not now"
/// in the outbox for a busy one.
#[test]
fn an_application_not_now_brings_no_sync_after_a_reboot() {
    let mut pair = Pair::new(1);
    pair.run_for(Duration::from_mins(1));
    pair.devices[0].behaviour = Behaviour::Defer(None);
    let task = answer_lost_then_reboot(&mut pair, false);
    pair.devices[0].behaviour = Behaviour::Succeed;
    let before = syncs(&pair);
    pair.run_for(Duration::from_mins(10));
    assert_eq!(
        pair.state(0, task),
        TaskState::Deferred {
            retry_after_s: None
        }
    );
    assert_eq!(pair.times_executed(0, task), 1);
    assert_eq!(syncs(&pair) - before, 1, "the boot sync only");
}
