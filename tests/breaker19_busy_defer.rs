//! A device that receives more offers in one session than it has task
//! slots answers the extra ones "not now" (busy). When that session is cut
//! (a server restart, a dropped connection) at any point, the deferred task
//! must still reach the device within minutes, not at the next periodic
//! sync three hours later.
//!
//! The fault this guards (found by breaker19): cut after the offers reached
//! the device and before its answers reached the server, the fifth task
//! stays `Deferred` until the periodic sync. The device answered it "not
//! now" (its four slots held the other offers, not yet run) and set
//! `busy_deferred`; the four then finish while it is offline, which
//! consumes `busy_deferred` into one `Report` sync. That sync carries the
//! old "not now", which the server stamps with the new session's id
//! (`deferred_in`), so it does not offer the task again in that session,
//! and nothing asked for another one. The device now remembers an
//! unacknowledged busy "not now" (`busy_seq`) and, when room came before its
//! ack, syncs once more after the session that acknowledges it.

mod common;

use common::Pair;
use mdm_sync::server::TaskState;
use mdm_sync::time::Duration;
use mdm_sync::wire::TaskKind;

fn cut_after(rounds: usize, restart: bool) -> Result<(), String> {
    let mut pair = Pair::new(1); // 4 task slots
    pair.run_for(Duration::from_mins(1));
    pair.go_offline(0);
    let tasks: Vec<_> = (0..5).map(|_| pair.queue(0, TaskKind::Scan)).collect();
    pair.tick();
    pair.go_online(0);
    pair.devices[0].dev.manual_sync(pair.now);
    for _ in 0..rounds {
        pair.step_round();
    }
    if restart {
        pair.restart_server(true);
    } else {
        pair.go_offline(0);
        pair.go_online(0);
    }
    pair.run_for(Duration::from_mins(10));
    for &t in &tasks {
        let state = pair.state(0, t);
        if !matches!(state, TaskState::Succeeded { .. }) || pair.times_executed(0, t) != 1 {
            return Err(format!(
                "cut after {rounds} rounds (restart {restart}): {t:?} {state:?}, run {} times",
                pair.times_executed(0, t)
            ));
        }
    }
    Ok(())
}

#[test]
fn a_task_deferred_for_lack_of_slots_comes_back_within_minutes_after_a_cut() {
    let failures: Vec<String> = (0..12)
        .flat_map(|r| [cut_after(r, true), cut_after(r, false)])
        .filter_map(Result::err)
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
}
