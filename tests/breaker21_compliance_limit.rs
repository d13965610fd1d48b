//! `MemoryStore`'s per-device compliance log limit at its edges: limits of 0
//! and 1, a limit lowered below what is held, a device retired and enrolled
//! again with events held, a server restart (with `recover`) while a log is
//! full, and compliance, task and policy reports interleaved. In every case
//! the log never holds more of one device's events than the limit (or than
//! it held when the limit was lowered), every event raised reaches the log
//! exactly once and in order once room is made, the console hears of each
//! stored event once, no task runs twice, and the other device is not held
//! up by the full log.

mod common;

use common::{Behaviour, Pair};
use mdm_sync::server::{ServerEvent, TaskState};
use mdm_sync::time::Duration;
use mdm_sync::wire::{ComplianceEvent, DeviceId, Setting, TaskKind};

fn of(log: &[(DeviceId, ComplianceEvent)], device: DeviceId) -> Vec<ComplianceEvent> {
    log.iter()
        .filter(|(d, _)| *d == device)
        .map(|(_, e)| *e)
        .collect()
}

fn event(n: u16) -> ComplianceEvent {
    ComplianceEvent::PasswordOverdue { days: n }
}

/// `devices` devices after a first minute, the log's limit set to `limit`;
/// device 0's id.
fn setup(devices: usize, limit: u32) -> (Pair, DeviceId) {
    let mut p = Pair::new(devices);
    p.run_for(Duration::from_mins(1));
    p.server.store_mut().set_compliance_limit(limit);
    let dev = p.id(0);
    (p, dev)
}

/// The server holds `version` as applied by `dev`.
fn assert_policy_applied(p: &Pair, dev: DeviceId, version: u32) {
    let view = p.server.device_view(dev).unwrap();
    let applied = mdm_sync::server::PolicyState::Applied { version };
    assert_eq!(view.policy_state, applied);
}

/// Runs `minutes`, one minute at a time, checking after each that the log
/// holds at most `bound` events of device 0.
fn run_bounded(p: &mut Pair, minutes: u32, bound: usize) {
    for _ in 0..minutes {
        p.run_for(Duration::from_secs(60));
        let held = of(p.server.store().compliance(), p.id(0)).len();
        assert!(
            held <= bound,
            "{held} events of device 0 held, bound {bound}"
        );
    }
}

/// Console events of `device`'s compliance.
fn told(p: &Pair, device: DeviceId) -> usize {
    p.count_events(|e| matches!(e, ServerEvent::Compliance { device: d, .. } if *d == device))
}

/// The other device syncs and runs a task while device 0's log is full.
fn other_device_goes_on(p: &mut Pair) {
    let t = p.queue(1, TaskKind::Locate);
    p.run_for(Duration::from_mins(3));
    assert!(
        matches!(p.state(1, t), TaskState::Succeeded { .. }),
        "{:?}",
        p.state(1, t)
    );
    assert_eq!(p.times_executed(1, t), 1);
}

/// Limit 0: nothing is stored and the device keeps its events (and the task
/// reports queued behind them); raised to 2, they all go in, once, in order.
#[test]
fn limit_zero_stores_nothing_until_raised() {
    let (mut p, dev) = setup(2, 0);
    p.raise(0, event(1));
    let task = p.queue(0, TaskKind::Scan);
    p.raise(0, event(2));
    run_bounded(&mut p, 15, 0);
    other_device_goes_on(&mut p);
    assert!(p.times_executed(0, task) <= 1);
    assert_eq!(told(&p, dev), 0);
    p.server.store_mut().set_compliance_limit(2);
    run_bounded(&mut p, 10, 2);
    assert_eq!(of(p.server.store().compliance(), dev), [event(1), event(2)]);
    assert!(matches!(p.state(0, task), TaskState::Succeeded { .. }));
    assert_eq!(p.times_executed(0, task), 1);
    assert_eq!(told(&p, dev), 2);
    assert_eq!(p.devices[0].dev.outbox_len(), 0);
}

/// Limit 1 with compliance events, a task and a policy interleaved: each
/// drain lets exactly one more event in; the task runs once; the policy is
/// applied and reported; at the end everything was stored once, in order.
#[test]
fn limit_one_interleaved_with_tasks_and_a_policy() {
    let (mut p, dev) = setup(2, 1);
    p.raise(0, event(1));
    p.raise(0, event(2));
    let task = p.queue(0, TaskKind::Scan);
    p.raise(0, event(3));
    let version = p
        .server
        .assign_policy(dev, &[Setting { key: 7, value: 1 }], p.now)
        .unwrap();
    p.raise(0, event(4));
    let mut drained = Vec::new();
    for _ in 0..6 {
        run_bounded(&mut p, 5, 1);
        other_device_goes_on(&mut p);
        drained.extend(of(&p.server.store_mut().take_compliance(), dev));
    }
    assert_eq!(drained, [event(1), event(2), event(3), event(4)]);
    assert_eq!(told(&p, dev), 4);
    assert!(matches!(p.state(0, task), TaskState::Succeeded { .. }));
    assert_eq!(p.times_executed(0, task), 1);
    assert_eq!(p.devices[0].applied_policies, [version]);
    assert_policy_applied(&p, dev, version);
}

/// The limit lowered below what is held: the log does not grow; after a
/// drain the refused event goes in once.
#[test]
fn a_limit_lowered_below_what_is_held() {
    let (mut p, dev) = setup(2, 4);
    for n in 1..=3 {
        p.raise(0, event(n));
    }
    run_bounded(&mut p, 3, 3);
    assert_eq!(of(p.server.store().compliance(), dev).len(), 3);
    p.server.store_mut().set_compliance_limit(1);
    p.raise(0, event(4));
    run_bounded(&mut p, 10, 3);
    other_device_goes_on(&mut p);
    let first = of(&p.server.store_mut().take_compliance(), dev);
    assert_eq!(first, [event(1), event(2), event(3)]);
    run_bounded(&mut p, 3, 1);
    assert_eq!(of(p.server.store().compliance(), dev), [event(4)]);
    assert_eq!(told(&p, dev), 4);
}

/// A device retired while its log is full and enrolled again (a new
/// generation, a fresh engine): the old generation's events stay in the log
/// (once), and the new one's go in once, in order, once there is room.
#[test]
fn retire_and_re_enroll_with_events_held() {
    let (mut p, dev) = setup(2, 2);
    for n in 1..=3 {
        p.raise(0, event(n));
    }
    run_bounded(&mut p, 5, 2);
    p.server.retire(dev, p.now).unwrap();
    let secret = p.server.enroll(dev, p.now).unwrap();
    let generation = p.server.device_view(dev).unwrap().generation;
    let mut cfg = mdm_sync::device::DeviceConfig::new(
        dev,
        generation,
        secret,
        mdm_sync::wire::Platform::Android,
    );
    cfg.push_token = heapless::String::try_from("token").unwrap();
    let now = p.now;
    p.devices[0] = common::SimDevice::new(cfg, now);
    p.raise(0, event(10));
    p.raise(0, event(11));
    run_bounded(&mut p, 10, 2);
    other_device_goes_on(&mut p);
    let mut drained = of(&p.server.store_mut().take_compliance(), dev);
    run_bounded(&mut p, 5, 2);
    drained.extend(of(&p.server.store_mut().take_compliance(), dev));
    assert_eq!(drained, [event(1), event(2), event(10), event(11)]);
}

/// The server restarts (its store kept, `recover`) while a device's log is
/// full and the device holds a refused event and a task's status behind it:
/// after the drain each goes in once; the task ran once.
#[test]
fn a_server_restart_with_a_full_log() {
    let (mut p, dev) = setup(2, 1);
    p.devices[0].behaviour = Behaviour::Succeed;
    p.raise(0, event(1));
    p.raise(0, event(2));
    let task = p.queue(0, TaskKind::Scan);
    run_bounded(&mut p, 5, 1);
    p.restart_server(true);
    run_bounded(&mut p, 5, 1);
    other_device_goes_on(&mut p);
    p.restart_server(true);
    let mut drained = of(&p.server.store_mut().take_compliance(), dev);
    run_bounded(&mut p, 5, 1);
    drained.extend(of(&p.server.store_mut().take_compliance(), dev));
    assert_eq!(drained, [event(1), event(2)]);
    assert!(matches!(p.state(0, task), TaskState::Succeeded { .. }));
    assert_eq!(p.times_executed(0, task), 1);
}

/// Runs device 0 of `p` until nothing moves, handing the server everything
/// the device has to send at once, as one read (the `Pair` hands it frame
/// by frame). Returns how many reads carried more than one frame.
fn coalesced(p: &mut Pair) -> usize {
    drive(p, false)
}

/// `minutes` times: a minute passes, then `coalesced`.
fn coalesced_minutes(p: &mut Pair, minutes: u32) {
    for _ in 0..minutes {
        p.advance(Duration::from_secs(60));
        coalesced(p);
    }
}

/// As `coalesced`; with `cut_after_report`, the first read that carries a
/// report is the connection's last: what the server answers to it (its
/// `Ack`) is lost with the connection.
fn drive(p: &mut Pair, mut cut_after_report: bool) -> usize {
    let now = p.now;
    let mut multi = 0;
    for _ in 0..1000 {
        let mut moved = p.device_events(0);
        let d = &mut p.devices[0];
        if let Some(conn) = d.conn {
            let (mut all, mut frames, mut report) = (Vec::new(), 0, false);
            let mut buf = [0u8; 1024];
            while let Some(n) = d.dev.poll_transmit(&mut buf).unwrap() {
                all.extend_from_slice(&buf[..n]);
                frames += 1;
                // Byte 4 is the payload's first: the `Up` tag, 3 for `Report`.
                report |= buf[4] == 3;
            }
            if !all.is_empty() {
                moved = true;
                multi += usize::from(frames > 1);
                let _ = p.server.handle_bytes(conn, &all, now);
            }
            if report && core::mem::take(&mut cut_after_report) {
                while p.server.poll_transmit_for(conn, &mut buf).is_some() {}
                p.server.connection_closed(conn, now);
                d.conn = None;
                d.dev.disconnected(now);
                continue;
            }
            while let Some(n) = p.server.poll_transmit_for(conn, &mut buf) {
                moved = true;
                let _ = d.dev.handle_bytes(&buf[..n], now);
            }
        }
        while let Some(ev) = p.server.poll_event() {
            moved = true;
            if let ServerEvent::Close { conn } = ev {
                if d.conn == Some(conn) {
                    d.conn = None;
                    d.dev.disconnected(now);
                }
            }
            p.events.push(ev);
        }
        if !moved {
            return multi;
        }
    }
    panic!("no quiescence");
}

/// A task's final status, a compliance event the full log refuses, and a
/// policy report, sent in one read: the status before the refused event is
/// stored and acknowledged (the device does not send it again), the rest
/// waits, and after the drain each is stored once.
#[test]
fn reports_around_a_refused_one_in_one_read() {
    let (mut p, dev) = setup(2, 1);
    p.raise(0, event(1));
    p.run_for(Duration::from_mins(1));
    assert_eq!(of(p.server.store().compliance(), dev), [event(1)]);
    p.devices[0].behaviour = Behaviour::Hold;
    p.devices[0].hold_policy = true;
    let task = p.queue(0, TaskKind::Scan);
    let version = p
        .server
        .assign_policy(dev, &[Setting { key: 7, value: 1 }], p.now)
        .unwrap();
    p.run_for(Duration::from_mins(2));
    assert_eq!(p.devices[0].held.len(), 1);
    p.go_offline(0);
    let now = p.now;
    p.finish(
        0,
        task,
        mdm_sync::wire::TaskStatus::Succeeded { result: None },
    );
    p.raise(0, event(2));
    let outcome = mdm_sync::wire::PolicyOutcome::Applied;
    p.devices[0]
        .dev
        .policy_applied(version, outcome, now)
        .unwrap();
    assert_eq!(p.devices[0].dev.outbox_len(), 3);
    p.go_online(0);
    p.devices[0].dev.manual_sync(now);
    assert!(coalesced(&mut p) > 0, "no read carried several reports");
    assert!(matches!(p.state(0, task), TaskState::Succeeded { .. }));
    assert_eq!(p.devices[0].dev.outbox_len(), 2, "the stored status left");
    assert_eq!(of(p.server.store().compliance(), dev), [event(1)]);
    let mut drained = of(&p.server.store_mut().take_compliance(), dev);
    coalesced_minutes(&mut p, 5);
    drained.extend(of(&p.server.store_mut().take_compliance(), dev));
    assert_eq!(drained, [event(1), event(2)]);
    assert_eq!(told(&p, dev), 2);
    assert_eq!(p.times_executed(0, task), 1);
    assert_eq!(p.devices[0].dev.outbox_len(), 0);
    assert_policy_applied(&p, dev, version);
}

/// The event that fills the log is stored but its `Ack` is lost with the
/// connection, so the device still holds it when it syncs again with the
/// log full: the server holds it, so it must count as delivered (the next
/// `Welcome` acknowledges it; a resend would be acknowledged, not refused),
/// never be stored twice nor keep the device waiting, and the next event
/// waits for the drain.
#[test]
fn the_resend_of_the_event_that_filled_the_log() {
    let (mut p, dev) = setup(1, 1);
    p.raise(0, event(1));
    let now = p.now;
    p.devices[0].dev.manual_sync(now);
    drive(&mut p, true);
    assert_eq!(of(p.server.store().compliance(), dev), [event(1)]);
    assert_eq!(p.devices[0].dev.outbox_len(), 1, "the ack was lost");
    p.raise(0, event(2));
    coalesced_minutes(&mut p, 5);
    // Only the second event is held: the first counts as delivered.
    assert_eq!(p.devices[0].dev.outbox_len(), 1);
    assert_eq!(of(p.server.store().compliance(), dev), [event(1)]);
    let mut drained = of(&p.server.store_mut().take_compliance(), dev);
    coalesced_minutes(&mut p, 3);
    drained.extend(of(&p.server.store_mut().take_compliance(), dev));
    assert_eq!(drained, [event(1), event(2)]);
    assert_eq!(told(&p, dev), 2);
    assert_eq!(p.devices[0].dev.outbox_len(), 0);
}
