//! `Server::prefetch_device` is a hint: whatever devices it is given, in
//! whatever pattern (none, one, the same one many times, unknown and extreme
//! ids, the device the next operation is about, hints between operations),
//! the server must go through the same events, task states, deliveries and
//! store contents as one never hinted. `tests/prefetch_hint.rs` checks one
//! scripted run; this one runs random operation sequences (queue, cancel,
//! policies, push token refusals, re-enrollment, devices going off and on
//! the network, reboots, time) on two fleets side by side, one hinted, and
//! compares them after every operation.
//!
//! The second test is about stores: a `FleetStore` that implements
//! `prefetch_push_target` (documented as the hint that a task was queued for
//! a device not in session) but not the newer provided
//! `prefetch_device_again` must still be told, for every such task, before
//! its push target is read, whether or not the device was hinted.

mod common;

use core::cell::RefCell;

use common::{Behaviour, Pair, Rng};
use mdm_sync::server::{
    DeviceRecord, FleetStore, MemoryStore, MemoryStoreError, ReportCommit, ReportSeqs, Server,
    ServerConfig, ServerEvent, TaskOptions, TaskRecord, TaskState,
};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::{ComplianceEvent, DeviceId, Platform, Policy, Setting, TaskId, TaskKind};

const DEVICES: usize = 4;

/// Everything observable of a fleet, as text.
fn observe(p: &Pair, tasks: &[(usize, TaskId)]) -> Vec<String> {
    let mut out: Vec<String> = p.events.iter().map(|e| format!("{e:?}")).collect();
    for &(i, t) in tasks {
        out.push(format!("{:?}", p.server.task_state(p.id(i), t)));
    }
    for (i, d) in p.devices.iter().enumerate() {
        out.push(format!(
            "{:?} {:?} {:?}",
            p.server.device_view(p.id(i)),
            d.executed,
            d.failed
        ));
        out.push(format!("{:?}", p.server.store().push_target(p.id(i))));
    }
    out.push(format!("{:?}", p.server.fleet_view()));
    out.push(format!("{:?}", p.server.poll_timeout()));
    out
}

/// Hints for the next operation, in a pattern picked by `style`.
fn hint(p: &mut Pair, r: &mut Rng, style: u64, about: Option<DeviceId>) {
    let n = match style {
        0 => 1,
        1 => 3,
        2 => r.below(12) as usize,
        _ => 20,
    };
    for _ in 0..n {
        let id = match r.below(8) {
            0 => DeviceId(0),
            1 => DeviceId(u64::MAX),
            2 => DeviceId(r.next()),
            3 | 4 => about.unwrap_or(DeviceId(1)),
            _ => DeviceId(r.below(DEVICES as u64 + 2)),
        };
        p.server.prefetch_device(id);
    }
}

/// One random operation on `p`, drawn from `r`; hints (if `hinted`) before
/// it with a pattern drawn from `h`, which only the hinted fleet uses, so
/// both fleets draw the same operations.
fn step(
    p: &mut Pair,
    r: &mut Rng,
    h: Option<(&mut Rng, u64)>,
    tasks: &mut Vec<(usize, TaskId)>,
    results: &mut Vec<String>,
) {
    let op = r.below(14);
    let i = r.below(DEVICES as u64) as usize;
    let about = match op {
        // An unknown device for some queue operations.
        0 if r.below(4) == 0 => DeviceId(1000 + r.below(3)),
        _ => p.id(i),
    };
    if let Some((h, style)) = h {
        hint(p, h, style, Some(about));
    }
    let now = p.now;
    match op {
        0..=3 => {
            let kind = TaskKind::ALL[r.below(TaskKind::ALL.len() as u64) as usize];
            let opts = TaskOptions {
                expires_at: (r.below(3) == 0).then(|| now + Duration::from_secs(r.below(600))),
                supersede: None,
            };
            let res = p.server.enqueue_task(about, kind, opts, now);
            if let Ok(t) = res {
                tasks.push((i, t));
            }
            results.push(format!("{res:?}"));
        }
        4 => {
            if !tasks.is_empty() {
                let (_, t) = tasks[r.below(tasks.len() as u64) as usize];
                results.push(format!("{:?}", p.server.cancel_task(t, now)));
            }
        }
        5 => {
            let settings = [Setting {
                key: r.below(4) as u16,
                value: r.below(100) as i64,
            }];
            results.push(format!(
                "{:?}",
                p.server.assign_policy(about, &settings, now)
            ));
        }
        6 => {
            // The push service refuses the held token, or another one.
            let token = if r.below(2) == 0 { "token" } else { "other" };
            results.push(format!("{:?}", p.server.push_token_rejected(about, token)));
        }
        7 => {
            // Re-enrolled on the server; the device is provisioned again
            // at once, or (half the time) left with its old secret.
            let res = p.server.enroll(about, now);
            if let (Ok(secret), true) = (&res, r.below(2) == 0) {
                let d = &mut p.devices[i];
                d.cfg.secret = *secret;
                d.cfg.generation = d.cfg.generation.wrapping_add(1);
                d.dev = mdm_sync::device::Device::new(d.cfg.clone(), now);
                // Its snapshots are of the old enrollment.
                d.slots = [Vec::new(), Vec::new()];
            }
            results.push(format!("{:?}", res.map(|_| ())));
        }
        8 => {
            if p.devices[i].online {
                p.go_offline(i)
            } else {
                p.go_online(i)
            }
        }
        9 => p.reboot(i),
        10 => p.raise(i, ComplianceEvent::ProfileChanged),
        11 => {
            p.devices[i].behaviour = [
                Behaviour::Succeed,
                Behaviour::Hold,
                Behaviour::Defer(Some(30)),
                Behaviour::Fail(7),
            ][r.below(4) as usize];
        }
        12 => {
            if let Some(t) = p.devices[i].held.first().copied() {
                let status = mdm_sync::wire::TaskStatus::Succeeded {
                    result: common::result_for(t.kind),
                };
                p.finish(i, t.id, status);
            }
        }
        _ => {
            let d = Duration::from_secs(r.below(400));
            if r.below(2) == 0 {
                p.advance(d)
            } else {
                p.run_for(d)
            }
        }
    }
    p.tick();
}

#[test]
fn random_operations_go_the_same_way_hinted_or_not() {
    let (mut pushes, mut done) = (0, 0);
    for seed in 1..=40u64 {
        let mut plain = Pair::new(DEVICES);
        let mut hinted = Pair::new(DEVICES);
        let (mut ra, mut rb) = (Rng(seed * 0x9E37_79B9), Rng(seed * 0x9E37_79B9));
        let mut rh = Rng(seed ^ 0xDEAD_BEEF_1234);
        let style = seed % 4;
        let (mut ta, mut tb) = (Vec::new(), Vec::new());
        let (mut xa, mut xb) = (Vec::new(), Vec::new());
        for n in 0..80 {
            step(&mut plain, &mut ra, None, &mut ta, &mut xa);
            step(
                &mut hinted,
                &mut rb,
                Some((&mut rh, style)),
                &mut tb,
                &mut xb,
            );
            // Hints between operations too, with no operation after them
            // until the next step.
            if n % 3 == 0 {
                hint(&mut hinted, &mut rh, style, None);
            }
            assert_eq!(xa, xb, "seed {seed}, step {n}: results");
            assert_eq!(
                observe(&plain, &ta),
                observe(&hinted, &tb),
                "seed {seed}, step {n}"
            );
        }
        plain.run_for(Duration::from_hours(4));
        hinted.run_for(Duration::from_hours(4));
        assert_eq!(observe(&plain, &ta), observe(&hinted, &tb), "seed {seed}");
        assert!(
            plain.events.len() > 10,
            "seed {seed}: the run does something"
        );
        pushes += plain.count_events(|e| matches!(e, ServerEvent::SendPush { .. }));
        done += plain.count_events(|e| {
            matches!(
                e,
                ServerEvent::TaskChanged {
                    state: TaskState::Succeeded { .. },
                    ..
                }
            )
        });
    }
    // The runs pushed to devices off session and finished tasks: the paths
    // the hints are about.
    assert!(
        pushes > 40 && done > 100,
        "{pushes} pushes, {done} tasks done"
    );
}

/// A store over `MemoryStore` that records its push-target hints and reads,
/// and implements no hint but `prefetch_push_target` (as a store written
/// before `prefetch_device_again` existed).
struct Recording {
    inner: MemoryStore,
    log: RefCell<Vec<(&'static str, u64)>>,
}

impl FleetStore for Recording {
    type Error = MemoryStoreError;
    fn device(&self, id: DeviceId) -> Result<Option<DeviceRecord>, MemoryStoreError> {
        self.inner.device(id)
    }
    fn device_generation(&self, id: DeviceId) -> Result<Option<u32>, MemoryStoreError> {
        self.inner.device_generation(id)
    }
    fn put_device(&mut self, rec: &DeviceRecord) -> Result<(), MemoryStoreError> {
        self.inner.put_device(rec)
    }
    fn report_seqs(&self, id: DeviceId) -> Result<Option<ReportSeqs>, MemoryStoreError> {
        self.inner.report_seqs(id)
    }
    fn prefetch_push_target(&self, id: DeviceId) {
        self.log.borrow_mut().push(("hint", id.0));
    }
    fn push_target(
        &self,
        id: DeviceId,
    ) -> Result<Option<(Platform, mdm_sync::server::PushToken)>, MemoryStoreError> {
        self.log.borrow_mut().push(("read", id.0));
        self.inner.push_target(id)
    }
    fn remove_push_target(&mut self, id: DeviceId) -> Result<bool, MemoryStoreError> {
        self.inner.remove_push_target(id)
    }
    fn retire_device(&mut self, id: DeviceId) -> Result<bool, MemoryStoreError> {
        self.inner.retire_device(id)
    }
    fn retired_generation(&self, id: DeviceId) -> Result<Option<u32>, MemoryStoreError> {
        self.inner.retired_generation(id)
    }
    fn set_push_target(
        &mut self,
        id: DeviceId,
        p: Platform,
        t: &str,
    ) -> Result<bool, MemoryStoreError> {
        self.inner.set_push_target(id, p, t)
    }
    fn task(&self, id: TaskId) -> Result<Option<TaskRecord>, MemoryStoreError> {
        self.inner.task(id)
    }
    fn put_task(&mut self, rec: &TaskRecord) -> Result<(), MemoryStoreError> {
        self.inner.put_task(rec)
    }
    fn open_tasks(&self, device: DeviceId, out: &mut Vec<TaskId>) -> Result<(), MemoryStoreError> {
        self.inner.open_tasks(device, out)
    }
    fn open_task_count(&self, device: DeviceId) -> Result<usize, MemoryStoreError> {
        self.inner.open_task_count(device)
    }
    fn next_task_id(&mut self) -> Result<TaskId, MemoryStoreError> {
        self.inner.next_task_id()
    }
    fn policy(&self, device: DeviceId) -> Result<Option<Policy>, MemoryStoreError> {
        self.inner.policy(device)
    }
    fn put_policy(&mut self, device: DeviceId, policy: &Policy) -> Result<(), MemoryStoreError> {
        self.inner.put_policy(device, policy)
    }
    fn commit_report(&mut self, commit: ReportCommit<'_>) -> Result<(), MemoryStoreError> {
        self.inner.commit_report(commit)
    }
    fn for_each_device(&self, f: &mut dyn FnMut(&DeviceRecord)) -> Result<(), MemoryStoreError> {
        self.inner.for_each_device(f)
    }
    fn for_each_task(&self, f: &mut dyn FnMut(&TaskRecord)) -> Result<(), MemoryStoreError> {
        self.inner.for_each_task(f)
    }
}

/// Ten devices that hold push tokens, none in session, on a server over
/// `Recording`.
fn fleet() -> Server<Recording> {
    let store = Recording {
        inner: MemoryStore::new(),
        log: RefCell::new(Vec::new()),
    };
    let mut s = Server::new(ServerConfig::default(), store, [1; 32], [2; 32]);
    let now = Instant::from_millis(1_000_000);
    for id in 1..=10u64 {
        s.enroll(DeviceId(id), now).unwrap();
        let token = format!("token-{id}");
        s.store_mut()
            .set_push_target(DeviceId(id), Platform::Android, &token)
            .unwrap();
    }
    s
}

#[test]
fn a_store_without_the_second_hint_still_hears_of_each_push_target_read() {
    // Operator calls each hinted 4 calls ahead (as the `fleet` example
    // does), and, for comparison, not hinted at all.
    for lookahead in [0usize, 1, 3, 4, 7] {
        let mut s = fleet();
        let now = Instant::from_millis(1_000_000);
        let batch: Vec<DeviceId> = (1..=10).map(DeviceId).collect();
        for (k, &d) in batch.iter().enumerate() {
            if lookahead > 0 {
                if k == 0 {
                    for &ahead in batch.iter().take(lookahead) {
                        s.prefetch_device(ahead);
                    }
                }
                if let Some(&ahead) = batch.get(k + lookahead) {
                    s.prefetch_device(ahead);
                }
            }
            s.enqueue_task(d, TaskKind::Lock, TaskOptions::default(), now)
                .unwrap();
        }
        // Every push target the engine read was hinted to the store (with
        // `prefetch_push_target`, the only hint it implements) before the
        // read.
        let log = s.store().log.borrow().clone();
        for (at, &(what, id)) in log.iter().enumerate() {
            if what == "read" {
                assert!(
                    log[..at].contains(&("hint", id)),
                    "lookahead {lookahead}: device {id}'s push target read unhinted: {log:?}"
                );
            }
        }
        assert!(
            log.iter().filter(|(w, _)| *w == "read").count() >= 10,
            "each queued task pushes: {log:?}"
        );
    }
}
