//! A busy "not now" (four task slots full, a fifth offer deferred) whose
//! report is lost, then reboots and server restarts in odd orders: two
//! reboots in a row, a reboot at each step of the boot sync (before the
//! `Welcome`, after it, after the `Deferred` reached the server), and the
//! server restarting (its store kept, `recover`) at each of those steps
//! too. Snapshot format 4 keeps the busy flag across the reboot, so in every
//! order the fifth task must come back within minutes and succeed, no task
//! may run twice, and the device must not sync over and over.

mod common;

use common::{Behaviour, Pair};
use mdm_sync::server::TaskState;
use mdm_sync::time::Duration;
use mdm_sync::wire::{TaskId, TaskKind};

/// Four tasks held, a fifth answered "not now" for lack of room, its report
/// lost, the device offline. Returns the five tasks, the fifth last.
fn busy_answer_lost() -> (Pair, Vec<TaskId>) {
    busy_answer_lost_after(0)
}

/// `busy_answer_lost` after `earlier` compliance events were stored.
fn busy_answer_lost_after(earlier: u16) -> (Pair, Vec<TaskId>) {
    let mut pair = Pair::new(1);
    for days in 0..earlier {
        pair.raise(0, mdm_sync::wire::ComplianceEvent::PasswordOverdue { days });
    }
    pair.run_for(Duration::from_mins(1));
    assert_eq!(pair.devices[0].dev.outbox_len(), 0);
    pair.devices[0].behaviour = Behaviour::Hold;
    let mut tasks: Vec<_> = (0..4).map(|_| pair.queue(0, TaskKind::Scan)).collect();
    pair.run_for(Duration::from_mins(2));
    assert_eq!(pair.devices[0].held.len(), 4);
    tasks.push(pair.queue(0, TaskKind::Scan));
    pair.sync_losing_a_report(0);
    assert_eq!(pair.state(0, tasks[4]), TaskState::Offered);
    pair.go_offline(0);
    // From now on the application finishes what it is given at once.
    pair.devices[0].behaviour = Behaviour::Succeed;
    (pair, tasks)
}

/// Sessions the device opened that ended, done or failed, across reboots.
fn sessions(pair: &Pair) -> usize {
    pair.devices[0].syncs_done as usize + pair.devices[0].failed.len()
}

/// Every task ran at most once and ended final; the fifth succeeded, and
/// the device held a handful of sessions, not a storm.
fn check(pair: &mut Pair, tasks: &[TaskId], what: &str, before: usize) -> Result<(), String> {
    pair.run_for(Duration::from_mins(10));
    let fifth = tasks[4];
    let mut wrong = Vec::new();
    for &t in tasks {
        let runs = pair.times_executed(0, t);
        let state = pair.state(0, t);
        if runs > 1 || !state.is_final() {
            wrong.push(format!("task {t:?}: {state:?}, run {runs} times"));
        }
    }
    if !matches!(pair.state(0, fifth), TaskState::Succeeded { .. }) {
        wrong.push(format!("fifth task {:?}", pair.state(0, fifth)));
    }
    let n = sessions(pair) - before;
    if n > 6 {
        wrong.push(format!("{n} sessions in 10 minutes"));
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!("{what}: {wrong:?}"))
    }
}

fn collect(results: impl IntoIterator<Item = Result<(), String>>) {
    let failures: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn two_reboots_in_a_row() {
    let (mut pair, tasks) = busy_answer_lost();
    let before = sessions(&pair);
    pair.reboot(0);
    pair.reboot(0);
    pair.go_online(0);
    collect([check(&mut pair, &tasks, "two reboots", before)]);
}

/// The device reboots (back online), then `k` rounds later reboots again
/// (or the server restarts, with `recover`): every point of the boot sync.
#[test]
fn a_second_reboot_or_a_server_restart_at_each_step_of_the_boot_sync() {
    let mut results = Vec::new();
    for server_restart in [false, true] {
        for k in 0..24 {
            let (mut pair, tasks) = busy_answer_lost();
            let before = sessions(&pair);
            pair.reboot(0);
            pair.go_online(0);
            for _ in 0..k {
                if !pair.step_round() {
                    break;
                }
            }
            if server_restart {
                pair.restart_server(true);
            } else {
                pair.reboot(0);
            }
            let what = format!("server restart {server_restart}, after {k} rounds");
            results.push(check(&mut pair, &tasks, &what, before));
        }
    }
    collect(results);
}

/// The server restarts while the device is off, between the lost answer
/// and the reboot, then the device reboots into it.
#[test]
fn server_restart_then_reboot() {
    let (mut pair, tasks) = busy_answer_lost();
    let before = sessions(&pair);
    pair.restart_server(true);
    pair.reboot(0);
    pair.go_online(0);
    collect([check(
        &mut pair,
        &tasks,
        "server restart then reboot",
        before,
    )]);
}

/// A snapshot whose busy flag is set though its outbox is empty (crafted, or
/// left by a renumbering that moved the outbox below the "not now" it
/// waited for): it restores, and the device syncs at boot and then keeps
/// quiet, not over and over; a task queued later runs once.
#[test]
fn a_busy_flag_with_an_empty_outbox() {
    let mut pair = Pair::new(1);
    pair.run_for(Duration::from_mins(5));
    assert_eq!(pair.devices[0].dev.outbox_len(), 0);
    // The newest slot, its flags byte (the header's last, byte 41) set.
    let d = &mut pair.devices[0];
    let slot = d.dev.snapshot_slot();
    let mut bytes = d.slots[slot].clone();
    assert_eq!((bytes[0], bytes[41]), (4, 0));
    bytes[41] = 1;
    let n = bytes.len() - 4;
    let crc = mdm_sync::wire::crc32(&bytes[..n]).to_le_bytes();
    bytes[n..].copy_from_slice(&crc);
    d.slots[slot] = bytes;
    let before = sessions(&pair);
    pair.reboot(0);
    pair.run_for(Duration::from_mins(30));
    let n = sessions(&pair) - before;
    assert!((1..=2).contains(&n), "{n} sessions in 30 minutes");
    let t = pair.queue(0, TaskKind::Lock);
    pair.run_for(Duration::from_mins(5));
    assert!(matches!(pair.state(0, t), TaskState::Succeeded { .. }));
    assert_eq!(pair.times_executed(0, t), 1);
}

/// The server's store went back (restored from a backup: it lost the four
/// `Received` reports) while the busy "not now" was on its way, and room
/// came (a running task finished) before the server heard it. The device
/// learns the server is behind (`SequenceGap`) and renumbers its outbox
/// down to the server's numbering: the "not now" and the final status
/// after it are stored and acknowledged under their new numbers. The room
/// that came before the "not now" was heard asks for one more sync, as
/// without the renumbering: the fifth task must come back within minutes,
/// with or without a reboot before the device reconnects.
#[test]
fn a_busy_not_now_renumbered_down_by_a_server_that_went_back() {
    let mut results = Vec::new();
    for reboot in [false, true] {
        // Three compliance events, then the four `Received`: reports 1 to 7;
        // the "not now" is report 8.
        let (mut pair, tasks) = busy_answer_lost_after(3);
        // The server holds reports up to 0: it lost all seven (more than
        // the reports that follow the "not now", even after a reboot).
        pair.set_stored_report_seq(0, 0);
        if !reboot {
            // Room: one running task finishes, offline.
            let id = pair.devices[0].held[0].id;
            let status = mdm_sync::wire::TaskStatus::Succeeded {
                result: common::result_for(TaskKind::Scan),
            };
            pair.finish(0, id, status);
            pair.tick();
        } else {
            pair.reboot(0);
        }
        pair.go_online(0);
        let now = pair.now;
        pair.devices[0].dev.manual_sync(now);
        pair.run_for(Duration::from_mins(10));
        let fifth = tasks[4];
        let state = pair.state(0, fifth);
        let runs = pair.times_executed(0, fifth);
        if !matches!(state, TaskState::Succeeded { .. }) || runs != 1 {
            results.push(Err(format!(
                "reboot {reboot}: fifth task {state:?}, run {runs} times"
            )));
        }
        for &t in &tasks {
            assert!(pair.times_executed(0, t) <= 1);
        }
    }
    collect(results);
}
