//! `Server::shrink_to_fit` after most of a fleet is retired: the devices
//! kept sync end to end as before, with their tasks and push targets, their
//! check-ins still watched; the retired ones stay unknown, and one enrolled
//! again gets a new generation and syncs.

mod common;

use common::{Behaviour, Pair, SimDevice};
use mdm_sync::device::{DeviceConfig, SessionError};
use mdm_sync::server::{FleetStore, ServerError, ServerEvent, TaskState};
use mdm_sync::time::Duration;
use mdm_sync::wire::{ErrorCode, Platform, TaskId, TaskKind, TaskStatus};

/// Devices in the fleet; those whose index is a multiple of `KEEP_EVERY`
/// stay, the others are retired.
const DEVICES: usize = 300;
const KEEP_EVERY: usize = 10;

fn kept(i: usize) -> bool {
    i.is_multiple_of(KEEP_EVERY)
}

fn token(i: usize) -> String {
    format!("token-of-device-{i}")
}

/// Gives device `i` a fresh engine with the id's current secret and a
/// token of its own, as a device provisioned for this enrollment.
fn provision(pair: &mut Pair, i: usize) {
    let id = pair.id(i);
    let secret = pair.server.device_secret(id).unwrap();
    let generation = pair.server.device_view(id).unwrap().generation;
    let mut cfg = DeviceConfig::new(id, generation, secret, Platform::Android);
    cfg.push_token = heapless::String::try_from(token(i).as_str()).unwrap();
    pair.devices[i] = SimDevice::new(cfg, pair.now);
}

fn overdue_count(pair: &Pair, from: usize, i: usize) -> usize {
    let id = pair.id(i);
    let events = &pair.events[from..];
    (events.iter())
        .filter(|e| matches!(e, ServerEvent::Overdue { device } if *device == id))
        .count()
}

/// Every push sent to device `i` since event `from`, by its token.
fn pushes(pair: &Pair, from: usize, i: usize) -> Vec<String> {
    let id = pair.id(i);
    (pair.events[from..].iter())
        .filter_map(|e| match e {
            ServerEvent::SendPush { device, token, .. } if *device == id => {
                Some(token.as_str().to_owned())
            }
            _ => None,
        })
        .collect()
}

#[test]
fn after_a_shrink_the_devices_kept_sync_with_their_tasks_and_tokens() {
    let mut pair = Pair::new(DEVICES);
    (0..DEVICES).for_each(|i| provision(&mut pair, i));
    pair.run_for(Duration::from_mins(1));
    let store = pair.server.store();
    assert_eq!(store.push_target_count(), DEVICES, "every token sent");

    // Work in every state: a task held running on a device (every other
    // kept one, and some retired ones), a task queued while its device is
    // offline (the other kept ones), finished tasks on all.
    let done: Vec<TaskId> = (0..DEVICES)
        .map(|i| pair.queue(i, TaskKind::Lock))
        .collect();
    pair.run_for(Duration::from_mins(1));
    let mut held: Vec<(usize, TaskId)> = Vec::new();
    let mut queued: Vec<(usize, TaskId)> = Vec::new();
    for i in 0..DEVICES {
        if i % (2 * KEEP_EVERY) == 0 || i % 7 == 1 {
            pair.devices[i].behaviour = Behaviour::Hold;
            held.push((i, pair.queue(i, TaskKind::Scan)));
        }
    }
    pair.run_for(Duration::from_mins(1));
    for i in (0..DEVICES).filter(|i| kept(*i) && !held.iter().any(|(h, _)| h == i)) {
        pair.go_offline(i);
        queued.push((i, pair.queue(i, TaskKind::Locate)));
    }
    pair.tick();
    for (i, task) in &held {
        assert_eq!(pair.state(*i, *task), TaskState::Delivered, "device {i}");
    }
    let states: Vec<(usize, TaskId, TaskState)> = (held.iter().chain(&queued))
        .filter(|(i, _)| kept(*i))
        .map(|&(i, t)| (i, t, pair.state(i, t)))
        .collect();

    // Most of the fleet retired; one retired id enrolled again before the
    // shrink (before it ever syncs again), one after.
    let timers = pair.server.timer_count();
    let retired: Vec<usize> = (0..DEVICES).filter(|i| !kept(*i)).collect();
    for &i in &retired {
        pair.server.retire(pair.id(i), pair.now).unwrap();
    }
    assert_eq!(
        pair.server.timer_count(),
        timers,
        "retired devices' check-in checks stay queued until they run"
    );
    let retired_at = pair.events.len();
    let (early, late) = (retired[0], retired[1]);
    pair.server.enroll(pair.id(early), pair.now).unwrap();

    pair.server.shrink_to_fit();

    // The retired devices' checks are gone with their push states.
    assert!(
        pair.server.timer_count() + retired.len() <= timers,
        "{} timers of {timers}",
        pair.server.timer_count()
    );
    let store = pair.server.store();
    let kept_count = DEVICES / KEEP_EVERY;
    assert_eq!(store.device_count(), kept_count + 1);
    assert_eq!(store.push_target_count(), kept_count);
    for i in 0..DEVICES {
        let target = store.push_target(pair.id(i)).unwrap();
        if kept(i) {
            let (platform, held_token) = target.unwrap();
            assert_eq!(
                (platform, held_token.as_str()),
                (Platform::Android, token(i).as_str())
            );
        } else {
            assert_eq!(target, None, "device {i}");
        }
    }
    for &(i, task, state) in &states {
        assert_eq!(pair.state(i, task), state, "device {i}'s task");
    }
    for i in (0..DEVICES).filter(|i| kept(*i)) {
        let state = pair.state(i, done[i]);
        assert_eq!(state, TaskState::Succeeded { result: None }, "device {i}");
    }
    for &i in retired.iter().filter(|i| **i != early) {
        let id = pair.id(i);
        assert!(matches!(
            pair.server.device_view(id),
            Err(ServerError::UnknownDevice)
        ));
        assert!(matches!(
            pair.server
                .enqueue_task(id, TaskKind::Lock, Default::default(), pair.now),
            Err(ServerError::UnknownDevice)
        ));
    }
    assert_eq!(pair.server.fleet_view().unwrap().devices, kept_count + 1);

    // The devices kept finish their work: held tasks end, queued ones are
    // pushed to their device's own token, and a new task each goes through.
    let from = pair.events.len();
    for &(i, task) in held.iter().filter(|(i, _)| kept(*i)) {
        pair.devices[i].behaviour = Behaviour::Succeed;
        pair.finish(i, task, TaskStatus::Succeeded { result: None });
    }
    for &(i, _) in &queued {
        pair.go_online(i);
    }
    let fresh: Vec<(usize, TaskId)> = (0..DEVICES)
        .filter(|i| kept(*i))
        .map(|i| (i, pair.queue(i, TaskKind::Lock)))
        .collect();
    pair.run_for(Duration::from_mins(2));
    for &(i, task) in held
        .iter()
        .filter(|(i, _)| kept(*i))
        .chain(&queued)
        .chain(&fresh)
    {
        let state = pair.state(i, task);
        assert!(
            matches!(state, TaskState::Succeeded { .. }),
            "device {i}: {state:?}"
        );
        assert_eq!(pair.times_executed(i, task), 1, "device {i}");
    }
    for i in (0..DEVICES).filter(|i| kept(*i)) {
        let sent = pushes(&pair, from, i);
        assert!(sent.iter().all(|t| *t == token(i)), "device {i}: {sent:?}");
    }
    for &(i, _) in &queued {
        assert!(!pushes(&pair, from, i).is_empty(), "device {i} was pushed");
    }
    // No push went to a retired device.
    for &i in retired.iter().filter(|i| **i != early) {
        assert_eq!(pushes(&pair, retired_at, i), Vec::<String>::new(), "{i}");
    }

    // A retired device still holding its old secret cannot authenticate.
    let stale = retired[2];
    pair.go_online(stale);
    pair.devices[stale].failed.clear();
    pair.devices[stale].dev.manual_sync(pair.now);
    pair.run_for(Duration::from_mins(1));
    assert!(
        (pair.devices[stale].failed).contains(&SessionError::Rejected(ErrorCode::AuthFailed)),
        "{:?}",
        pair.devices[stale].failed
    );
    pair.go_offline(stale);

    // Retired ids enrolled again, before and after the shrink, come back
    // in generation 1 and sync.
    pair.server.enroll(pair.id(late), pair.now).unwrap();
    for i in [early, late] {
        provision(&mut pair, i);
        assert_eq!(pair.devices[i].cfg.generation, 1);
        let task = pair.queue(i, TaskKind::Lock);
        pair.run_for(Duration::from_mins(1));
        assert_eq!(pair.state(i, task), TaskState::Succeeded { result: None });
        let target = pair.server.store().push_target(pair.id(i)).unwrap();
        assert_eq!(target.map(|(_, t)| t.as_str().to_owned()), Some(token(i)));
    }

    // Everyone goes silent: the devices kept and the two enrolled again
    // are reported overdue once each, no retired one is.
    let from = pair.events.len();
    for i in 0..DEVICES {
        pair.go_offline(i);
    }
    pair.run_for(Duration::from_hours(8));
    for i in 0..DEVICES {
        let expected = usize::from(kept(i) || i == early || i == late);
        assert_eq!(overdue_count(&pair, from, i), expected, "device {i}");
    }
}

/// A shrink with nothing retired changes nothing a device sees, and a
/// second shrink neither; a shrink of a server with no devices, nor any
/// table, works too.
#[test]
fn a_shrink_with_nothing_to_give_back_changes_nothing() {
    let mut empty = common::server();
    empty.shrink_to_fit();
    assert_eq!(empty.fleet_view().unwrap().devices, 0);

    let mut pair = Pair::new(20);
    pair.run_for(Duration::from_mins(1));
    pair.server.shrink_to_fit();
    pair.server.shrink_to_fit();
    let tasks: Vec<TaskId> = (0..20).map(|i| pair.queue(i, TaskKind::Lock)).collect();
    pair.run_for(Duration::from_mins(1));
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(pair.state(i, task), TaskState::Succeeded { result: None });
    }
}

/// A shrink while a handshake is half done, with the connection slots of a
/// hundred closed connections above the open one: the open session goes on
/// to its `Welcome` and work, the closed ids stay unknown, and connections
/// opened after it get ids of their own and sync.
#[test]
fn a_shrink_keeps_an_open_session_and_forgets_closed_connections() {
    use mdm_sync::wire::{DeviceId, Down};
    let now = mdm_sync::time::Instant::from_millis(1_000);
    let mut server = common::server();
    let device = DeviceId(7);
    server.enroll(device, now).unwrap();
    let secret = server.device_secret(device).unwrap();
    let task = (server.enqueue_task(device, TaskKind::Lock, Default::default(), now)).unwrap();

    let (open, nonce, binding) = common::raw_hello(&mut server, device, 0, 0, now);
    let closed: Vec<_> = (0..100)
        .map(|_| server.connection_opened(now).unwrap())
        .collect();
    for &conn in &closed {
        server.connection_closed(conn, now);
    }
    server.shrink_to_fit();
    assert_eq!(server.session_count(), 1);

    for &conn in &closed {
        assert!(matches!(
            server.handle_bytes(conn, b"late bytes", now),
            Err(ServerError::UnknownConnection)
        ));
    }
    common::raw_proof(&mut server, open, &nonce, &binding, &secret, now).unwrap();
    let key = mdm_sync::wire::frame::session_key(&nonce);
    let downs = common::downs(&common::output(&mut server, open), key);
    assert!(
        matches!(downs.first(), Some(Down::Welcome { .. })),
        "{downs:?}"
    );
    assert!(
        (downs.iter()).any(|d| matches!(d, Down::Task(t) if t.id == task)),
        "{downs:?}"
    );
    server.connection_closed(open, now);

    // New connections after the shrink: ids never seen before, sessions
    // that work.
    let (again, _, answer) = common::raw_handshake(&mut server, device, &secret, now);
    answer.unwrap();
    assert!(again != open && !closed.contains(&again));
    assert_eq!(server.session_count(), 1);
}
