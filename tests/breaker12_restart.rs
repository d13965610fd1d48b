//! Breaking `Server::recover` (a server restarted over a store that outlived
//! its process): work or promises the old process held that `recover` did
//! not rebuild. Each test compares with what the same sequence does without
//! a restart, or with what `Server::recover`'s docs promise.

mod common;

use common::{Behaviour, Pair};
use mdm_sync::server::{ServerEvent, TaskState};
use mdm_sync::time::Duration;
use mdm_sync::wire::{DeviceId, TaskKind};

fn overdue_of(pair: &Pair, device: DeviceId) -> usize {
    pair.count_events(|e| matches!(e, ServerEvent::Overdue { device: d } if *d == device))
}

/// A cancel asked for a task the device holds is work for the device as much
/// as a queued task: in one process `cancel_task` pushes the device. If that
/// push died with the old process, `recover` must push again, or the cancel
/// waits for the device's periodic sync (3 h) while the task runs on.
#[test]
fn a_cancel_whose_push_died_with_the_old_process_is_pushed_again() {
    let mut pair = Pair::new(1);
    pair.devices[0].behaviour = Behaviour::Hold;
    pair.run_for(Duration::from_mins(1));
    let task = pair.queue(0, TaskKind::Wipe);
    // Delivered, and the session that delivered it over.
    pair.run_for(Duration::from_mins(5));
    assert!(
        pair.state(0, task).maybe_on_device(),
        "{:?}",
        pair.state(0, task)
    );
    assert_eq!(pair.server.session_count(), 0);
    pair.pushes_lost = true;
    pair.server.cancel_task(task, pair.now).unwrap();
    pair.tick();
    pair.pushes_lost = false;

    pair.restart_server(true);
    // Within a minute, not at the next periodic sync.
    pair.run_for(Duration::from_mins(1));
    assert_eq!(
        pair.devices[0].cancels,
        [task],
        "the cancel never reached the device"
    );
}

/// Re-enrollment keeps the check-in promised at the last handshake (see
/// `Server::enroll`): a device that never checks in with its new secret is
/// reported overdue. Across a restart with `recover` the promise must hold
/// as well; the same sequence without the restart is the reference.
#[test]
fn a_device_re_enrolled_before_a_restart_is_still_expected() {
    let run = |restart: bool| {
        let mut pair = Pair::new(2);
        pair.run_for(Duration::from_mins(1));
        let id = pair.id(0);
        pair.server.enroll(id, pair.now).unwrap();
        pair.go_offline(0); // never comes back with its new secret
        if restart {
            pair.restart_server(true);
        }
        pair.run_for(Duration::from_hours(4));
        (overdue_of(&pair, id), overdue_of(&pair, pair.id(1)))
    };
    let reference = run(false);
    assert_eq!(reference, (1, 0), "in one process");
    assert_eq!(run(true), reference, "across a restart");
}

/// A deferred task is kept from the session it was deferred in by that
/// session's `ConnId` (`TaskRecord::deferred_in`). Connection ids count from
/// the start of each process, so the first session of the new process has the
/// id of the first session of the old one: a task deferred there must still be
/// offered in the sync `recover`'s push brings, its "next sync".
#[test]
fn a_task_deferred_in_the_old_process_is_offered_at_the_next_sync() {
    let mut pair = Pair::new(1);
    // Queued before the device's first sync: offered and deferred (no hint)
    // in the first session of the old process.
    let task = pair.queue(0, TaskKind::Scan);
    pair.devices[0].script.push_back(Behaviour::Defer(None));
    pair.run_for(Duration::from_mins(5));
    assert!(matches!(pair.state(0, task), TaskState::Deferred { .. }));
    assert_eq!(pair.times_executed(0, task), 1);

    let recovered = pair.restart_server(true);
    assert_eq!(recovered.pushed, 1, "{recovered:?}");
    pair.run_for(Duration::from_mins(1));
    assert_eq!(
        pair.times_executed(0, task),
        2,
        "not offered in the pushed sync"
    );
    assert!(matches!(pair.state(0, task), TaskState::Succeeded { .. }));
}

/// A task offered in a session that the restart cut before the offer left
/// the old process (stored `Offered`, never sent): the device must still get
/// it soon, not at its periodic sync 3 h later. The cut fails the device's
/// session, and with nothing of its own to send it does not retry: in one
/// process `connection_dropped` pushes it back (tests/tokio_broken_link.rs);
/// after a restart `recover` must.
#[test]
fn a_task_offered_but_not_sent_when_the_process_died_reaches_the_device() {
    let mut pair = Pair::new(1);
    pair.run_for(Duration::from_mins(1));
    // A task the application holds keeps the device's session open (it
    // lingers for the task's status).
    pair.devices[0].script.push_back(Behaviour::Hold);
    let held = pair.queue(0, TaskKind::Scan);
    pair.tick();
    assert_eq!(pair.devices[0].held.len(), 1);
    assert_eq!(pair.server.session_count(), 1, "lingering");
    let task = pair
        .server
        .enqueue_task(pair.id(0), TaskKind::Lock, Default::default(), pair.now)
        .unwrap();
    assert_eq!(pair.state(0, task), TaskState::Offered);
    pair.restart_server(true); // the offer's bytes never left
    pair.run_for(Duration::from_mins(10));
    assert_eq!(pair.times_executed(0, task), 1);
    assert!(matches!(pair.state(0, task), TaskState::Succeeded { .. }));
    // The held task ran once; finished, its status reaches the server.
    pair.finish(
        0,
        held,
        mdm_sync::wire::TaskStatus::Succeeded { result: None },
    );
    pair.run_for(Duration::from_mins(1));
    assert_eq!(pair.times_executed(0, held), 1);
    assert!(matches!(pair.state(0, held), TaskState::Succeeded { .. }));
}

/// A restart after each round of one sync that carries a task, a policy, a
/// cancel of a held task and (or not) a compliance report, with pushes
/// working: ten minutes later everything is done, each task ran once, the
/// cancel reached the device, the policy was applied once, the report was
/// stored once. (It held before the fixes above as well: a session cut
/// before its end leaves the device wanting its sync, and it retries; the
/// stranding cut is one in the linger after the sync, see
/// `a_task_offered_but_not_sent_when_the_process_died_reaches_the_device`.)
#[test]
fn a_restart_at_every_round_of_a_sync_strands_nothing() {
    let mut rounds_seen = 0;
    for k in 0..40 {
        for report in [false, true] {
            rounds_seen = rounds_seen.max(restart_after_rounds(k, report));
        }
    }
    assert!(
        rounds_seen < 40,
        "the last restarts came after the sync: {rounds_seen}"
    );
}

/// The case of `a_restart_at_every_round_of_a_sync_strands_nothing` with a
/// restart after `k` rounds; the rounds the sync had until then.
fn restart_after_rounds(k: usize, report: bool) -> usize {
    use mdm_sync::server::PolicyState;
    use mdm_sync::wire::{ComplianceEvent, Setting};
    {
        let mut pair = Pair::new(1);
        pair.devices[0].script.push_back(Behaviour::Hold);
        pair.run_for(Duration::from_mins(1));
        let held = pair.queue(0, TaskKind::Wipe);
        pair.run_for(Duration::from_mins(5)); // delivered and held; session over
        let id = pair.id(0);
        let task = pair.queue(0, TaskKind::Lock);
        let version = pair
            .server
            .assign_policy(id, &[Setting { key: 3, value: 9 }], pair.now)
            .unwrap();
        pair.server.cancel_task(held, pair.now).unwrap();
        if report {
            pair.raise(0, ComplianceEvent::ProfileChanged);
        }
        let mut rounds = 0;
        while rounds < k && pair.step_round() {
            rounds += 1;
        }
        pair.restart_server(true);
        pair.run_for(Duration::from_mins(10));

        let case = format!("k={k} report={report}");
        assert_eq!(pair.times_executed(0, task), 1, "{case}");
        assert!(
            matches!(pair.state(0, task), TaskState::Succeeded { .. }),
            "{case}"
        );
        assert_eq!(pair.devices[0].cancels, [held], "{case}");
        assert_eq!(pair.devices[0].applied_policies, [version], "{case}");
        let view = pair.server.device_view(id).unwrap();
        assert_eq!(
            view.policy_state,
            PolicyState::Applied { version },
            "{case}"
        );
        let stored = pair.server.store_mut().take_compliance();
        let expected = if report {
            vec![(id, ComplianceEvent::ProfileChanged)]
        } else {
            vec![]
        };
        assert_eq!(stored, expected, "{case}");
        rounds
    }
}

/// The new process's clock is two hours behind the stored instants (the
/// system clock was set back across the restart). Work whose push died with
/// the old process still arrives at once; a device that syncs is not
/// reported overdue; a silent one is, once (late by at most the two hours,
/// as in one process when its clock goes back).
#[test]
fn a_clock_behind_the_store_across_a_restart() {
    let mut pair = Pair::new(2);
    pair.run_for(Duration::from_hours(3)); // instants past the two hours
    let (syncing, silent) = (pair.id(0), pair.id(1));
    pair.go_offline(1);
    pair.pushes_lost = true;
    let task = pair.queue(0, TaskKind::Lock);
    pair.tick();
    pair.pushes_lost = false;
    pair.now = mdm_sync::time::Instant::from_millis(pair.now.as_millis() - 2 * 3_600_000);
    pair.restart_server(true);
    pair.run_for(Duration::from_mins(1));
    assert_eq!(pair.times_executed(0, task), 1);
    pair.run_for(Duration::from_hours(8));
    assert_eq!(overdue_of(&pair, syncing), 0, "{:?}", pair.events);
    assert_eq!(overdue_of(&pair, silent), 1, "{:?}", pair.events);
}

/// The new process comes with a shorter `periodic_interval` (a
/// configuration change, which only a restart makes). Each device keeps the
/// interval its last `Welcome` told it (3 h) until its next sync; `recover`
/// expected it by its last sync plus the new interval (1 h) and slack, so
/// every device that synced as it was told was reported overdue once (then
/// `Back`). Fixed by the store's record of the intervals told
/// (`ToldIntervals`), which the first process wrote at its first handshake
/// (it never called `recover`); more cases in tests/restart_told_interval.rs.
#[test]
fn a_shorter_periodic_interval_after_a_restart_reports_no_syncing_device_overdue() {
    use mdm_sync::server::{Server, ServerConfig};
    let mut pair = Pair::new(1);
    pair.run_for(Duration::from_mins(1));
    let now = pair.now;
    for d in &mut pair.devices {
        if d.conn.take().is_some() {
            d.dev.disconnected(now);
        }
    }
    let cfg = ServerConfig {
        periodic_interval: Duration::from_hours(1),
        ..ServerConfig::default()
    };
    let old = core::mem::replace(&mut pair.server, common::server());
    pair.server = Server::new(cfg, old.into_store(), [1; 32], [3; 32]);
    pair.server.recover(now).unwrap();
    pair.run_for(Duration::from_hours(4));
    assert_eq!(overdue_of(&pair, pair.id(0)), 0, "{:?}", pair.events);
}
