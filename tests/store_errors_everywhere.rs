//! A store that fails once, at its n-th call, for every n of a whole run:
//! tasks, compliance events and a policy report, through handshakes, reports
//! and operator calls. Whatever call fails, once the device syncs again the
//! server holds every report exactly once, every task's real outcome and the
//! device's push token.

use core::cell::Cell;

use mdm_sync::device::{Device, DeviceConfig, Event};
use mdm_sync::server::{
    ConnId, DeviceRecord, FleetStore, MemoryStore, PolicyState, ReportCommit, ReportSeqs, Server,
    ServerConfig, ServerEvent, TaskRecord, TaskState,
};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::{
    ComplianceEvent, DeviceId, Platform, Policy, PolicyOutcome, Setting, TaskId, TaskKind,
    TaskStatus,
};

/// A `MemoryStore` whose `fail_at`-th call (counting from 0) fails.
struct Once {
    inner: MemoryStore,
    calls: Cell<u64>,
    fail_at: u64,
    /// Also fails every `every`-th call (0: never).
    every: u64,
}

#[derive(Debug, PartialEq)]
struct Down;

impl Once {
    fn tick(&self) -> Result<(), Down> {
        let n = self.calls.get();
        self.calls.set(n + 1);
        if n == self.fail_at || (self.every > 0 && n % self.every == self.every - 1) {
            return Err(Down);
        }
        Ok(())
    }
}

/// `MemoryStore` fails only with its compliance log full, which these tests
/// never fill: such a failure would show as the injected one.
fn ok<T>(r: Result<T, mdm_sync::server::MemoryStoreError>) -> Result<T, Down> {
    r.map_err(|_| Down)
}

impl FleetStore for Once {
    type Error = Down;

    fn device(&self, id: DeviceId) -> Result<Option<DeviceRecord>, Down> {
        self.tick()?;
        ok(self.inner.device(id))
    }
    fn device_generation(&self, id: DeviceId) -> Result<Option<u32>, Down> {
        self.tick()?;
        ok(self.inner.device_generation(id))
    }
    fn put_device(&mut self, rec: &DeviceRecord) -> Result<(), Down> {
        self.tick()?;
        ok(self.inner.put_device(rec))
    }
    fn report_seqs(&self, id: DeviceId) -> Result<Option<ReportSeqs>, Down> {
        self.tick()?;
        ok(self.inner.report_seqs(id))
    }
    fn push_target(
        &self,
        id: DeviceId,
    ) -> Result<Option<(Platform, mdm_sync::server::PushToken)>, Down> {
        self.tick()?;
        ok(self.inner.push_target(id))
    }
    fn remove_push_target(&mut self, id: DeviceId) -> Result<bool, Down> {
        self.tick()?;
        ok(self.inner.remove_push_target(id))
    }
    fn retire_device(&mut self, id: DeviceId) -> Result<bool, Down> {
        self.tick()?;
        ok(self.inner.retire_device(id))
    }
    fn retired_generation(&self, id: DeviceId) -> Result<Option<u32>, Down> {
        self.tick()?;
        ok(self.inner.retired_generation(id))
    }
    fn set_push_target(&mut self, id: DeviceId, p: Platform, token: &str) -> Result<bool, Down> {
        self.tick()?;
        ok(self.inner.set_push_target(id, p, token))
    }
    fn task(&self, id: TaskId) -> Result<Option<TaskRecord>, Down> {
        self.tick()?;
        ok(self.inner.task(id))
    }
    fn put_task(&mut self, rec: &TaskRecord) -> Result<(), Down> {
        self.tick()?;
        ok(self.inner.put_task(rec))
    }
    fn open_tasks(&self, device: DeviceId, out: &mut Vec<TaskId>) -> Result<(), Down> {
        self.tick()?;
        ok(self.inner.open_tasks(device, out))
    }
    fn open_task_count(&self, device: DeviceId) -> Result<usize, Down> {
        self.tick()?;
        ok(self.inner.open_task_count(device))
    }
    fn next_task_id(&mut self) -> Result<TaskId, Down> {
        self.tick()?;
        ok(self.inner.next_task_id())
    }
    fn policy(&self, device: DeviceId) -> Result<Option<Policy>, Down> {
        self.tick()?;
        ok(self.inner.policy(device))
    }
    fn put_policy(&mut self, device: DeviceId, policy: &Policy) -> Result<(), Down> {
        self.tick()?;
        ok(self.inner.put_policy(device, policy))
    }
    fn commit_report(&mut self, commit: ReportCommit<'_>) -> Result<(), Down> {
        self.tick()?;
        ok(self.inner.commit_report(commit))
    }
    fn for_each_device(&self, f: &mut dyn FnMut(&DeviceRecord)) -> Result<(), Down> {
        self.tick()?;
        ok(self.inner.for_each_device(f))
    }
    fn for_each_task(&self, f: &mut dyn FnMut(&TaskRecord)) -> Result<(), Down> {
        self.tick()?;
        ok(self.inner.for_each_task(f))
    }
}

const ID: DeviceId = DeviceId(3);
const TOKEN: &str = "fcm:token";

/// The device's app: runs every task to success, applies every policy.
fn on_event(d: &mut Device, ev: Event, now: Instant) {
    match ev {
        Event::Execute(t) => {
            let status = TaskStatus::Succeeded { result: None };
            d.task_status(t.id, status, now).unwrap();
        }
        Event::ApplyPolicy { version } => {
            d.policy_applied(version, PolicyOutcome::Applied, now)
                .unwrap();
        }
        Event::Cancel(_) => panic!("nothing is cancelled"),
        _ => {}
    }
}

/// One sync attempt of `d` against `s` at `now`, over memory.
fn sync_once(d: &mut Device, s: &mut Server<Once>, now: Instant) {
    d.handle_timeout(now);
    let mut conn: Option<ConnId> = None;
    let mut buf = [0u8; 1024];
    for _ in 0..100 {
        while let Some(ev) = d.poll_event() {
            match ev {
                Event::Connect => {
                    conn = s.connection_opened(now).ok();
                    match conn {
                        Some(_) => d.connected(now),
                        None => d.connect_failed(now),
                    }
                }
                Event::Disconnect => {
                    if let Some(c) = conn.take() {
                        s.connection_closed(c, now);
                    }
                }
                ev => on_event(d, ev, now),
            }
        }
        let Some(c) = conn else { break };
        let mut moved = false;
        while let Some(n) = d.poll_transmit(&mut buf).unwrap() {
            moved = true;
            let _ = s.handle_bytes(c, &buf[..n], now);
        }
        while let Some(n) = s.poll_transmit_for(c, &mut buf) {
            moved = true;
            let _ = d.handle_bytes(&buf[..n], now);
        }
        while let Some(ev) = s.poll_event() {
            if ev == (ServerEvent::Close { conn: c }) {
                s.connection_closed(c, now);
                d.disconnected(now);
                conn = None;
            }
        }
        if !moved && d.poll_timeout().is_none_or(|at| at > now) {
            break;
        }
    }
    if let Some(c) = conn {
        s.connection_closed(c, now);
        d.disconnected(now);
    }
    while d.poll_event().is_some() {}
}

/// An operator call retried until the store takes it (a failed one changed
/// nothing); past 20 tries without the periodic failures.
fn retry<T>(s: &mut Server<Once>, mut call: impl FnMut(&mut Server<Once>) -> Option<T>) -> T {
    for _ in 0..20 {
        if let Some(v) = call(s) {
            return v;
        }
    }
    let every = core::mem::take(&mut s.store_mut().every);
    let v = call(s).or_else(|| call(s)).expect("the store took it");
    s.store_mut().every = every;
    v
}

/// A server over a `Once` store that fails nowhere yet.
fn server() -> Server<Once> {
    let store = Once {
        inner: MemoryStore::new(),
        calls: Cell::new(0),
        fail_at: u64::MAX,
        every: 0,
    };
    Server::new(ServerConfig::default(), store, [1; 32], [2; 32])
}

/// `rounds` hours, each ending with a sync attempt of every device; the
/// store's periodic failures stop from round `clean_from` on. Returns the
/// time reached.
fn rounds(
    s: &mut Server<Once>,
    devices: &mut [&mut Device],
    mut now: Instant,
    rounds: u32,
    clean_from: u32,
) -> Instant {
    for round in 0..rounds {
        if round == clean_from {
            s.store_mut().every = 0;
        }
        now = now + Duration::from_secs(3_600);
        let _ = s.handle_timeout(now);
        for d in devices.iter_mut() {
            sync_once(d, s, now);
        }
        while s.poll_event().is_some() {}
    }
    now
}

/// Runs the whole scenario with the store failing at call `fail_at` (and
/// every `every`-th call until the last rounds); returns how many store
/// calls it made.
fn run(fail_at: u64, every: u64) -> u64 {
    let t0 = Instant::from_millis(1_000);
    let mut s = server();
    let secret = s.enroll(ID, t0).unwrap();
    s.store_mut().fail_at = fail_at;
    s.store_mut().every = every;
    let mut cfg = DeviceConfig::new(ID, 0, secret, Platform::Android);
    cfg.push_token = TOKEN.try_into().unwrap();
    let mut d: Device = Device::new(cfg, t0);
    let now = t0;
    // Operator calls retried until the store takes them (a failed one
    // queued nothing).
    let mut tasks = Vec::new();
    for kind in [TaskKind::Lock, TaskKind::Scan] {
        tasks.push(retry(&mut s, |s| {
            s.enqueue_task(ID, kind, Default::default(), now).ok()
        }));
    }
    let setting = Setting { key: 7, value: -3 };
    let version = retry(&mut s, |s| s.assign_policy(ID, &[setting], now).ok());
    d.raise_compliance(ComplianceEvent::ProfileChanged, now)
        .unwrap();
    sync_once(&mut d, &mut s, now);
    // A task and a compliance event while the device is in session.
    d.raise_compliance(ComplianceEvent::DeviceAdminChanged { active: true }, now)
        .unwrap();
    tasks.push(retry(&mut s, |s| {
        s.enqueue_task(ID, TaskKind::Unlock, Default::default(), now)
            .ok()
    }));
    rounds(&mut s, &mut [&mut d], now, 50, 40);
    let calls = s.store().calls.get();
    s.store_mut().fail_at = u64::MAX;
    for t in &tasks {
        assert_eq!(
            s.task_state(ID, *t),
            Some(TaskState::Succeeded { result: None }),
            "store failing at call {fail_at}: task {t:?}"
        );
    }
    assert_eq!(d.outbox_len(), 0, "store failing at call {fail_at}");
    let view = s.device_view(ID).unwrap();
    assert_eq!(
        view.policy_state,
        PolicyState::Applied { version },
        "store failing at call {fail_at}"
    );
    // The token went in the boot sync's Hello, or in a later one if no
    // Welcome confirmed it (protocol version 5 sends it only until then).
    let target = s.store().inner.push_target(ID).unwrap();
    assert_eq!(
        target.as_ref().map(|(_, t)| t.as_str()),
        Some(TOKEN),
        "store failing at call {fail_at}"
    );
    let compliance = s.store_mut().inner.take_compliance();
    let events: Vec<ComplianceEvent> = compliance.into_iter().map(|(_, e)| e).collect();
    assert_eq!(
        events,
        [
            ComplianceEvent::ProfileChanged,
            ComplianceEvent::DeviceAdminChanged { active: true }
        ],
        "store failing at call {fail_at}"
    );
    calls
}

#[test]
fn a_store_failing_at_any_one_call_loses_and_repeats_nothing() {
    let total = run(u64::MAX, 0);
    assert!(total > 20, "{total} store calls");
    for n in 0..total + 5 {
        run(n, 0);
    }
}

#[test]
fn a_store_failing_every_few_calls_loses_and_repeats_nothing() {
    for every in [7, 9, 11, 13, 17, 23, 31] {
        for n in 0..every {
            run(n, every);
        }
    }
}

/// Retiring the device and enrolling it again with the store failing at
/// call `fail_at` (and every `every`-th call for a while), each operator
/// call retried until the store takes it: the retirement drops every open
/// task for good, the new enrollment is one generation on (a failed try
/// used none up) with a new secret, and the new device gets its task.
fn retire_run(fail_at: u64, every: u64) -> u64 {
    let t0 = Instant::from_millis(1_000);
    let mut s = server();
    let old_secret = s.enroll(ID, t0).unwrap();
    let device = |secret, generation| {
        let mut cfg = DeviceConfig::new(ID, generation, secret, Platform::Android);
        cfg.push_token = TOKEN.try_into().unwrap();
        Device::new(cfg, t0)
    };
    let mut old = device(old_secret, 0);
    let now = t0;
    sync_once(&mut old, &mut s, now);
    let mut old_tasks = Vec::new();
    for kind in [TaskKind::Lock, TaskKind::Scan] {
        old_tasks.push(s.enqueue_task(ID, kind, Default::default(), now).unwrap());
    }
    s.assign_policy(ID, &[Setting { key: 7, value: 1 }], now)
        .unwrap();
    s.store_mut().calls.set(0);
    s.store_mut().fail_at = fail_at;
    s.store_mut().every = every;
    retry(&mut s, |s| s.retire(ID, now).ok());
    let secret = retry(&mut s, |s| s.enroll(ID, now).ok());
    assert_ne!(secret, old_secret, "store failing at call {fail_at}");
    let mut new = device(secret, 1);
    // (A try that failed after storing the task leaves it queued: the
    // device gets more tasks than this one, and runs them over the rounds.)
    let task = retry(&mut s, |s| {
        s.enqueue_task(ID, TaskKind::Unlock, Default::default(), now)
            .ok()
    });
    rounds(&mut s, &mut [&mut old, &mut new], now, 35, 5);
    let calls = s.store().calls.get();
    s.store_mut().fail_at = u64::MAX;
    for t in &old_tasks {
        assert_eq!(
            s.task_state(ID, *t),
            Some(TaskState::Dropped),
            "store failing at call {fail_at}: {t:?}"
        );
    }
    assert_eq!(
        s.task_state(ID, task),
        Some(TaskState::Succeeded { result: None }),
        "store failing at call {fail_at}"
    );
    let view = s.device_view(ID).unwrap();
    assert_eq!(view.generation, 1, "store failing at call {fail_at}");
    assert_eq!(view.policy_assigned, 0, "store failing at call {fail_at}");
    // The new device synced (the record enrolled again had no sync).
    assert!(view.last_sync.is_some(), "store failing at call {fail_at}");
    calls
}

#[test]
fn retiring_and_enrolling_again_with_a_store_failing_at_any_one_call() {
    let total = retire_run(u64::MAX, 0);
    assert!(total > 10, "{total} store calls");
    for n in 0..total + 5 {
        retire_run(n, 0);
    }
    for every in [5, 7, 9, 11, 13] {
        for n in 0..every {
            retire_run(n, every);
        }
    }
}
