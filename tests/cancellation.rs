//! Cancels with honest results: removed while queued, stopped on the device,
//! or "too late" with the task's real final status.

mod common;

use common::{Behaviour, Pair};
use mdm_sync::server::{ServerError, TaskState};
use mdm_sync::time::Duration;
use mdm_sync::wire::{TaskKind, TaskStatus};

#[test]
fn cancelling_a_queued_task_removes_it() {
    let mut p = Pair::new(1);
    p.run_for(Duration::from_secs(5));
    p.go_offline(0);
    let wipe = p.queue(0, TaskKind::Wipe);
    assert_eq!(p.server.cancel_task(wipe, p.now), Ok(TaskState::Cancelled));
    p.go_online(0);
    p.run_for(Duration::from_hours(4));
    assert_eq!(p.times_executed(0, wipe), 0);
    assert_eq!(p.state(0, wipe), TaskState::Cancelled);
}

#[test]
fn cancelling_a_running_task_stops_it_on_the_device() {
    let mut p = Pair::new(1);
    p.run_for(Duration::from_secs(5));
    p.devices[0].behaviour = Behaviour::Hold;
    let scan = p.queue(0, TaskKind::Scan);
    p.run_for(Duration::from_secs(5));
    assert_eq!(p.state(0, scan), TaskState::Delivered);
    assert_eq!(p.server.cancel_task(scan, p.now), Ok(TaskState::Delivered));
    p.run_for(Duration::from_secs(5));
    assert_eq!(p.devices[0].cancels, vec![scan], "the device was asked");
    p.finish(0, scan, TaskStatus::Cancelled);
    p.run_for(Duration::from_secs(5));
    assert_eq!(p.state(0, scan), TaskState::Cancelled);
    let rec = p.server.task(scan).unwrap().unwrap();
    assert!(!rec.cancel_too_late());
}

#[test]
fn a_cancel_that_races_completion_reports_too_late_with_the_real_result() {
    let mut p = Pair::new(1);
    p.run_for(Duration::from_secs(5));
    p.devices[0].behaviour = Behaviour::Hold;
    let locate = p.queue(0, TaskKind::Locate);
    p.run_for(Duration::from_secs(5));
    // The device finishes while offline; the operator cancels meanwhile.
    p.go_offline(0);
    let result = common::result_for(TaskKind::Locate);
    p.finish(0, locate, TaskStatus::Succeeded { result });
    assert_eq!(
        p.server.cancel_task(locate, p.now),
        Ok(TaskState::Delivered)
    );
    p.go_online(0);
    p.run_for(Duration::from_mins(10));
    assert_eq!(p.state(0, locate), TaskState::Succeeded { result });
    let rec = p.server.task(locate).unwrap().unwrap();
    assert!(rec.cancel_too_late());
    assert_eq!(p.server.fleet_view().unwrap().tasks.too_late_to_cancel, 1);
    // A cancel of a final task is rejected and changes nothing.
    let again = p.server.cancel_task(locate, p.now);
    assert_eq!(
        again,
        Err(ServerError::AlreadyFinal(TaskState::Succeeded { result }))
    );
}

#[test]
fn a_cancel_that_races_a_reboot_ends_in_the_truth() {
    let mut p = Pair::new(1);
    p.run_for(Duration::from_secs(5));
    p.devices[0].behaviour = Behaviour::Hold;
    let scan = p.queue(0, TaskKind::Scan);
    p.run_for(Duration::from_secs(5));
    p.go_offline(0);
    p.server.cancel_task(scan, p.now).unwrap();
    p.reboot(0); // the scan dies with the reboot
    p.go_online(0);
    p.run_for(Duration::from_mins(10));
    let reason = mdm_sync::wire::reason::INTERRUPTED_BY_REBOOT;
    assert_eq!(p.state(0, scan), TaskState::Failed { reason });
    assert_eq!(p.times_executed(0, scan), 1);
}

/// Runs a handshake with a copy of device 0 and drops everything the server
/// sends after it: the offers are stored as `Offered` but never read.
fn lose_an_offer(p: &mut Pair) {
    let now = p.now;
    let mut d = p.devices[0].dev.clone();
    d.manual_sync(now);
    d.handle_timeout(now);
    while d.poll_event().is_some() {}
    let conn = p.server.connection_opened(now).unwrap();
    d.connected(now);
    let mut buf = [0u8; 1024];
    for _ in 0..2 {
        while let Some(n) = d.poll_transmit(&mut buf).unwrap() {
            p.server.handle_bytes(conn, &buf[..n], now).unwrap();
        }
        let n = p.server.poll_transmit_for(conn, &mut buf).unwrap();
        let _ = d.handle_bytes(&buf[..n], now); // challenge, then the lost offers
    }
    p.server.connection_closed(conn, now);
}

#[test]
fn a_cancel_for_an_offer_the_device_never_took_ends_cancelled() {
    let mut p = Pair::new(1);
    p.run_for(Duration::from_secs(5));
    p.go_offline(0);
    let lock = p.queue(0, TaskKind::Lock);
    lose_an_offer(&mut p);
    assert_eq!(p.state(0, lock), TaskState::Offered);
    assert_eq!(p.server.cancel_task(lock, p.now), Ok(TaskState::Offered));
    p.go_online(0);
    p.run_for(Duration::from_hours(4));
    assert_eq!(p.times_executed(0, lock), 0);
    assert_eq!(p.state(0, lock), TaskState::Cancelled);
}

#[test]
fn a_lost_offer_is_offered_again_and_runs_once() {
    let mut p = Pair::new(1);
    p.run_for(Duration::from_secs(5));
    p.go_offline(0);
    let lock = p.queue(0, TaskKind::Lock);
    lose_an_offer(&mut p);
    p.go_online(0);
    p.run_for(Duration::from_hours(4));
    assert_eq!(p.times_executed(0, lock), 1);
    assert_eq!(p.state(0, lock), TaskState::Succeeded { result: None });
}

#[test]
fn cancel_of_an_unknown_task_is_a_typed_error() {
    let mut p = Pair::new(1);
    let r = p.server.cancel_task(mdm_sync::wire::TaskId(999), p.now);
    assert_eq!(r, Err(ServerError::UnknownTask));
    p.run_for(Duration::from_secs(1));
}
