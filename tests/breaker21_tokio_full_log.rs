//! The tokio server (loopback only) with `MemoryStore`'s compliance log full
//! for one device (limit 1): the blocking device keeps its refused events,
//! its syncs are refused `Busy` and retried at about the compliance retry
//! interval (no storm), another device meanwhile gets its task, and once
//! the application drains the log each event arrives once, in order. The
//! clock runs 600 times faster than the wall (a minute in 0.1 s); nothing
//! here asserts a wall time.
#![cfg(feature = "tokio")]

mod common;

use core::sync::atomic::{AtomicBool, Ordering};
use core::time::Duration as Wall;
use std::sync::Arc;

use mdm_sync::adapters::blocking::{
    BlockingDevice, Execution, Handler, MemoryStorage, TcpConnector,
};
use mdm_sync::adapters::clock::{Clock, ScaledClock};
use mdm_sync::device::{DeviceConfig, SessionError};
use mdm_sync::server::TaskState;
use mdm_sync::time::Instant;
use mdm_sync::wire::{
    ComplianceEvent, DeviceId, ErrorCode, Platform, Policy, PolicyOutcome, Task, TaskKind,
    TaskStatus,
};

#[derive(Default)]
struct Agent {
    executed: Vec<Task>,
    failed: Vec<(Instant, SessionError)>,
}

impl Handler for Agent {
    fn execute(&mut self, task: Task, _now: Instant) -> Execution {
        self.executed.push(task);
        Execution::Done(TaskStatus::Succeeded { result: None })
    }

    fn apply_policy(&mut self, _policy: &Policy, _now: Instant) -> PolicyOutcome {
        PolicyOutcome::Applied
    }

    fn sync_failed(&mut self, error: SessionError, now: Instant) {
        self.failed.push((now, error));
    }
}

fn event(n: u16) -> ComplianceEvent {
    ComplianceEvent::PasswordOverdue { days: n }
}

#[test]
fn a_full_log_over_tcp_waits_for_the_drain_and_holds_up_no_one_else() {
    let rt = common::runtime();
    let clock = ScaledClock::scaled(600.0);
    let (handle, addr) = rt.block_on(common::loopback_server(clock));
    rt.block_on(handle.call(|s, _| s.store_mut().set_compliance_limit(1)))
        .unwrap();
    let (a, b) = (DeviceId(1), DeviceId(2));
    let secret_a = rt.block_on(handle.enroll(a)).unwrap();
    let secret_b = rt.block_on(handle.enroll(b)).unwrap();
    let task_b = rt
        .block_on(handle.enqueue_task(b, TaskKind::Lock, Default::default()))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let spawn = |id: DeviceId, secret, events: Vec<ComplianceEvent>| {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let cfg = DeviceConfig::new(id, 0, secret, Platform::Android);
            let connector = TcpConnector::new(addr).with_timeout(Wall::from_secs(2));
            let (storage, agent) = (MemoryStorage::new(), Agent::default());
            let mut dev: BlockingDevice<_, _, _> =
                BlockingDevice::boot(cfg, connector, storage, agent, clock).unwrap();
            for e in events {
                dev.raise_compliance(e).unwrap();
            }
            let start = clock.now();
            while !stop.load(Ordering::Relaxed) {
                let wait = dev.run_once().unwrap();
                std::thread::sleep(wait.min(Wall::from_millis(5)));
            }
            let elapsed = clock.now().saturating_since(start);
            let outbox = dev.device().outbox_len();
            let (_, _, agent) = dev.into_parts();
            (agent, elapsed, outbox)
        })
    };
    let raised = vec![event(1), event(2), event(3)];
    let dev_a = spawn(a, secret_a, raised.clone());
    let dev_b = spawn(b, secret_b, Vec::new());

    let log_of_a = |log: Vec<(DeviceId, ComplianceEvent)>| -> Vec<ComplianceEvent> {
        log.into_iter()
            .filter(|(d, _)| *d == a)
            .map(|(_, e)| e)
            .collect()
    };
    // Device b's task goes through while a's log is full.
    let mut b_done = false;
    for _ in 0..1000 {
        let held = rt
            .block_on(handle.call(|s, _| s.store().compliance().to_vec()))
            .unwrap();
        assert!(log_of_a(held).len() <= 1, "more than the limit held");
        let rec = rt.block_on(handle.task(task_b)).unwrap();
        if rec.is_some_and(|r| matches!(r.state, TaskState::Succeeded { .. })) {
            b_done = true;
            break;
        }
        std::thread::sleep(Wall::from_millis(10));
    }
    assert!(b_done, "device b's task never finished");
    // Let a few compliance retries pass (about ten virtual minutes).
    std::thread::sleep(Wall::from_secs(1));
    // Drain until every event arrived (or give up).
    let mut drained = Vec::new();
    for _ in 0..200 {
        let log = rt
            .block_on(handle.call(|s, _| s.store_mut().take_compliance()))
            .unwrap();
        let got = log_of_a(log);
        assert!(got.len() <= 1, "more than the limit held");
        drained.extend(got);
        if drained.len() >= raised.len() {
            break;
        }
        std::thread::sleep(Wall::from_millis(50));
    }
    // A little more time: a resend would show up as a second copy.
    std::thread::sleep(Wall::from_millis(300));
    let rest = rt
        .block_on(handle.call(|s, _| s.store_mut().take_compliance()))
        .unwrap();
    drained.extend(log_of_a(rest));
    stop.store(true, Ordering::Relaxed);
    let (agent_a, elapsed, outbox_a) = dev_a.join().unwrap();
    let (agent_b, _, _) = dev_b.join().unwrap();
    assert_eq!(drained, raised, "each event once, in order");
    assert_eq!(outbox_a, 0, "device a still holds reports");
    assert_eq!(agent_b.executed.len(), 1);
    // Device a's refused syncs: `Busy`, at most about one a minute (the
    // first retries come sooner: the backoff starts below the cap).
    assert!(!agent_a.failed.is_empty(), "no sync of a was refused");
    for (_, e) in &agent_a.failed {
        assert_eq!(*e, SessionError::Rejected(ErrorCode::Busy), "{e:?}");
    }
    let minutes = elapsed.as_millis() / 60_000;
    eprintln!(
        "device a: {} refused syncs in {minutes} virtual minutes",
        agent_a.failed.len()
    );
    assert!(
        (agent_a.failed.len() as u64) <= minutes + 8,
        "{} refused syncs in {minutes} minutes",
        agent_a.failed.len()
    );
    rt.block_on(handle.shutdown());
}
