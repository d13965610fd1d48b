//! Retiring a device (`Server::retire`): it becomes unknown, its secret
//! dead, its open tasks dropped, its memory mostly given back; enrolling the
//! id again gives a new generation and a new secret.

mod common;

use common::{Pair, SimDevice};
use mdm_sync::device::{DeviceConfig, SessionError};
use mdm_sync::server::{FleetStore, ServerError, ServerEvent, TaskState};
use mdm_sync::time::Duration;
use mdm_sync::wire::{ErrorCode, Platform, TaskKind};

fn overdue_count(pair: &Pair, i: usize) -> usize {
    let id = pair.id(i);
    pair.count_events(|e| matches!(e, ServerEvent::Overdue { device } if *device == id))
}

/// Enrolls device `i`'s id again and gives it a fresh engine with the new
/// secret, as a device re-provisioned after its retirement.
fn reprovision(pair: &mut Pair, i: usize) -> u32 {
    let id = pair.id(i);
    let secret = pair.server.enroll(id, pair.now).unwrap();
    let generation = pair.server.device_view(id).unwrap().generation;
    let mut cfg = DeviceConfig::new(id, generation, secret, Platform::Android);
    cfg.push_token = heapless::String::try_from("token").unwrap();
    pair.devices[i] = SimDevice::new(cfg, pair.now);
    generation
}

#[test]
fn a_retired_device_is_unknown_its_tasks_dropped_and_its_secret_dead() {
    let mut pair = Pair::new(2);
    pair.run_for(Duration::from_mins(1));
    let id = pair.id(0);
    // One task held running on the device, one queued while it is offline.
    pair.devices[0].behaviour = common::Behaviour::Hold;
    let running = pair.queue(0, TaskKind::Scan);
    pair.tick();
    assert_eq!(pair.state(0, running), TaskState::Delivered);
    pair.go_offline(0);
    let queued = pair.queue(0, TaskKind::Lock);
    let before = pair.server.store().push_target_count();

    pair.server.retire(id, pair.now).unwrap();
    pair.tick();
    for task in [running, queued] {
        let rec = pair.server.task(task).unwrap().unwrap();
        assert_eq!(rec.state, TaskState::Dropped, "{rec:?}");
    }
    assert!(matches!(
        pair.server
            .enqueue_task(id, TaskKind::Lock, Default::default(), pair.now),
        Err(ServerError::UnknownDevice)
    ));
    assert!(matches!(
        pair.server.device_view(id),
        Err(ServerError::UnknownDevice)
    ));
    assert!(matches!(
        pair.server.retire(id, pair.now),
        Err(ServerError::UnknownDevice)
    ));
    assert_eq!(pair.server.fleet_view().unwrap().devices, 1);
    assert_eq!(pair.server.store().device_count(), 1);
    assert_eq!(pair.server.store().push_target_count(), before - 1);

    // The device, still holding its secret, can no longer authenticate.
    pair.go_online(0);
    pair.devices[0].failed.clear();
    pair.devices[0].dev.manual_sync(pair.now);
    pair.run_for(Duration::from_mins(1));
    assert!(
        pair.devices[0]
            .failed
            .contains(&SessionError::Rejected(ErrorCode::AuthFailed)),
        "{:?}",
        pair.devices[0].failed
    );
    assert_eq!(pair.times_executed(0, queued), 0);
}

/// A push asked for before the retirement and not yet taken from the event
/// queue is withdrawn: the device is unknown by the time the application
/// would send it, and a push to a retired device's token (perhaps passed on
/// with the phone) is a message to a stranger.
#[test]
fn a_push_still_queued_at_the_retirement_is_not_sent() {
    let mut pair = Pair::new(2);
    pair.run_for(Duration::from_mins(1));
    let (id, other) = (pair.id(0), pair.id(1));
    let pushes_to = |pair: &Pair, to| {
        pair.count_events(|e| matches!(e, ServerEvent::SendPush { device, .. } if *device == to))
    };
    let (before, before_other) = (pushes_to(&pair, id), pushes_to(&pair, other));
    pair.queue(1, TaskKind::Lock);
    pair.queue(0, TaskKind::Lock);
    pair.server.retire(id, pair.now).unwrap();
    pair.tick();
    assert_eq!(pushes_to(&pair, id), before);
    // The other device's push, queued before it, still goes.
    assert_eq!(pushes_to(&pair, other), before_other + 1);
}

#[test]
fn a_retired_device_is_never_reported_overdue() {
    let mut pair = Pair::new(2);
    pair.run_for(Duration::from_mins(1));
    pair.go_offline(0);
    pair.go_offline(1);
    pair.server.retire(pair.id(0), pair.now).unwrap();
    pair.run_for(Duration::from_hours(4));
    assert_eq!(overdue_count(&pair, 0), 0);
    assert_eq!(overdue_count(&pair, 1), 1, "the other one is");
}

#[test]
fn enrolling_a_retired_id_again_gives_a_new_generation_and_secret() {
    let mut pair = Pair::new(1);
    pair.run_for(Duration::from_mins(1));
    let id = pair.id(0);
    let old_secret = pair.server.device_secret(id).unwrap();
    pair.server.retire(id, pair.now).unwrap();
    assert_eq!(pair.server.store().retired_generation(id), Ok(Some(0)));

    let generation = reprovision(&mut pair, 0);
    assert_eq!(generation, 1);
    assert_ne!(pair.server.device_secret(id).unwrap(), old_secret);
    assert_eq!(pair.server.store().retired_generation(id), Ok(None));
    pair.run_for(Duration::from_mins(1));
    let task = pair.queue(0, TaskKind::Lock);
    pair.run_for(Duration::from_mins(1));
    assert_eq!(pair.state(0, task), TaskState::Succeeded { result: None });
    assert_eq!(pair.times_executed(0, task), 1);

    // Retired again, it comes back in generation 2.
    pair.server.retire(id, pair.now).unwrap();
    assert_eq!(reprovision(&mut pair, 0), 2);
}

/// A device retired while its check-in check is queued, then enrolled again
/// and checking in before that check runs, has one check, not two: over
/// many such cycles the engine's timers stay as many as at the start, and a
/// silent device is reported overdue once.
#[test]
fn retiring_and_enrolling_again_keeps_one_check_in_check() {
    let mut pair = Pair::new(3);
    pair.run_for(Duration::from_mins(1));
    let baseline = pair.server.timer_count();
    for _ in 0..20 {
        pair.server.retire(pair.id(0), pair.now).unwrap();
        reprovision(&mut pair, 0);
        pair.run_for(Duration::from_mins(5));
        assert!(
            pair.server.timer_count() <= baseline,
            "{} timers, {baseline} at the start",
            pair.server.timer_count()
        );
    }
    pair.events.clear();
    pair.go_offline(0);
    pair.run_for(Duration::from_hours(4));
    assert_eq!(overdue_count(&pair, 0), 1);
    assert!(pair.server.timer_count() <= baseline);
}
