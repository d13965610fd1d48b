//! A store that fails: the server answers `Busy`, stays usable, and keeps its
//! in-memory view consistent with the store (found by a breaker run: a store
//! error in the handshake left the device "online" for good, so it was never
//! reported overdue and a held-back push was never sent).

use mdm_sync::device::{Device, DeviceConfig, Event};
use mdm_sync::server::{
    ConnId, DeviceRecord, FleetStore, MemoryStore, ReportCommit, ReportSeqs, Server, ServerConfig,
    ServerError, ServerEvent, TaskRecord, TaskState,
};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::{DeviceId, Platform, Policy, SyncTrigger, TaskId, TaskKind};

/// A `MemoryStore` whose next `set_push_target` fails when `fail` is set,
/// whose next `put_task` fails when `fail_task` is set, whose next
/// `push_target` fails when `fail_push` is set, and whose walks over tasks
/// fail while `down` is set.
#[derive(Default)]
struct Flaky {
    inner: MemoryStore,
    fail: bool,
    fail_task: bool,
    fail_push: core::cell::Cell<bool>,
    fail_commit: bool,
    down: core::cell::Cell<bool>,
}

#[derive(Debug, PartialEq)]
struct Down;

impl FleetStore for Flaky {
    type Error = Down;

    fn device(&self, id: DeviceId) -> Result<Option<DeviceRecord>, Down> {
        ok(self.inner.device(id))
    }
    fn device_generation(&self, id: DeviceId) -> Result<Option<u32>, Down> {
        ok(self.inner.device_generation(id))
    }
    fn put_device(&mut self, rec: &DeviceRecord) -> Result<(), Down> {
        ok(self.inner.put_device(rec))
    }
    fn report_seqs(&self, id: DeviceId) -> Result<Option<ReportSeqs>, Down> {
        ok(self.inner.report_seqs(id))
    }
    fn push_target(
        &self,
        id: DeviceId,
    ) -> Result<Option<(Platform, mdm_sync::server::PushToken)>, Down> {
        if self.fail_push.take() {
            return Err(Down);
        }
        ok(self.inner.push_target(id))
    }
    fn remove_push_target(&mut self, id: DeviceId) -> Result<bool, Down> {
        ok(self.inner.remove_push_target(id))
    }
    fn retire_device(&mut self, id: DeviceId) -> Result<bool, Down> {
        ok(self.inner.retire_device(id))
    }
    fn retired_generation(&self, id: DeviceId) -> Result<Option<u32>, Down> {
        ok(self.inner.retired_generation(id))
    }
    fn set_push_target(&mut self, id: DeviceId, p: Platform, token: &str) -> Result<bool, Down> {
        if core::mem::take(&mut self.fail) {
            return Err(Down);
        }
        ok(self.inner.set_push_target(id, p, token))
    }
    fn task(&self, id: TaskId) -> Result<Option<TaskRecord>, Down> {
        ok(self.inner.task(id))
    }
    fn put_task(&mut self, rec: &TaskRecord) -> Result<(), Down> {
        if core::mem::take(&mut self.fail_task) {
            return Err(Down);
        }
        ok(self.inner.put_task(rec))
    }
    fn open_tasks(&self, device: DeviceId, out: &mut Vec<TaskId>) -> Result<(), Down> {
        ok(self.inner.open_tasks(device, out))
    }
    fn open_task_count(&self, device: DeviceId) -> Result<usize, Down> {
        ok(self.inner.open_task_count(device))
    }
    fn next_task_id(&mut self) -> Result<TaskId, Down> {
        ok(self.inner.next_task_id())
    }
    fn policy(&self, device: DeviceId) -> Result<Option<Policy>, Down> {
        ok(self.inner.policy(device))
    }
    fn put_policy(&mut self, device: DeviceId, policy: &Policy) -> Result<(), Down> {
        ok(self.inner.put_policy(device, policy))
    }
    fn commit_report(&mut self, commit: ReportCommit<'_>) -> Result<(), Down> {
        if self.fail_commit {
            return Err(Down);
        }
        ok(self.inner.commit_report(commit))
    }
    fn for_each_device(&self, f: &mut dyn FnMut(&DeviceRecord)) -> Result<(), Down> {
        ok(self.inner.for_each_device(f))
    }
    fn for_each_task(&self, f: &mut dyn FnMut(&TaskRecord)) -> Result<(), Down> {
        if self.down.get() {
            return Err(Down);
        }
        ok(self.inner.for_each_task(f))
    }
}

/// `MemoryStore` fails only with its compliance log full, which these tests
/// never fill: such a failure would show as the injected one.
fn ok<T>(r: Result<T, mdm_sync::server::MemoryStoreError>) -> Result<T, Down> {
    r.map_err(|_| Down)
}

const ID: DeviceId = DeviceId(3);

/// Runs one sync attempt of `d` against `s` at `now`, over memory; returns
/// the server's error if the handshake failed on its side.
fn sync_once(d: &mut Device, s: &mut Server<Flaky>, now: Instant) -> Option<ServerError<Down>> {
    sync_once_seeing(d, s, now, &mut Vec::new())
}

/// As `sync_once`, and keeps the server's events in `seen`.
fn sync_once_seeing(
    d: &mut Device,
    s: &mut Server<Flaky>,
    now: Instant,
    seen: &mut Vec<ServerEvent>,
) -> Option<ServerError<Down>> {
    d.handle_timeout(now);
    let mut conn: Option<ConnId> = None;
    let mut error = None;
    let mut buf = [0u8; 1024];
    for _ in 0..50 {
        while let Some(ev) = d.poll_event() {
            match ev {
                Event::Connect => {
                    conn = Some(s.connection_opened(now).unwrap());
                    d.connected(now);
                }
                Event::Disconnect => {
                    if let Some(c) = conn.take() {
                        s.connection_closed(c, now);
                    }
                }
                _ => {}
            }
        }
        let Some(c) = conn else { break };
        while let Some(n) = d.poll_transmit(&mut buf).unwrap() {
            if let Err(e) = s.handle_bytes(c, &buf[..n], now) {
                error = Some(e);
            }
        }
        let mut moved = false;
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
            seen.push(ev);
        }
        if !moved && conn.is_some() && error.is_some() {
            break;
        }
    }
    if let Some(c) = conn {
        s.connection_closed(c, now);
        d.disconnected(now);
    }
    error
}

#[test]
fn a_store_error_in_the_handshake_leaves_the_device_offline() {
    let t0 = Instant::from_millis(1_000);
    let mut s = Server::new(ServerConfig::default(), Flaky::default(), [1; 32], [2; 32]);
    let secret = s.enroll(ID, t0).unwrap();
    let mut d: Device = Device::new(DeviceConfig::new(ID, 0, secret, Platform::Android), t0);

    s.store_mut().fail = true;
    let err = sync_once(&mut d, &mut s, t0);
    assert_eq!(err, Some(ServerError::Store(Down)));
    assert_eq!(s.session_count(), 0);
    assert!(!s.device_view(ID).unwrap().online, "still online");
    assert_eq!(s.fleet_view().unwrap().online, 0);

    // The engine stays usable: the next attempt syncs.
    let later = t0 + Duration::from_secs(120);
    assert_eq!(sync_once(&mut d, &mut s, later), None);
    let view = s.device_view(ID).unwrap();
    assert!(
        view.last_sync.is_some_and(|(at, _)| at == later),
        "{view:?}"
    );
    assert!(!view.online);
}

/// A task the store failed to take is no task: the operator gets the error
/// and the console hears of nothing.
#[test]
fn a_task_the_store_refused_is_not_announced() {
    let t0 = Instant::from_millis(1_000);
    let mut s = Server::new(ServerConfig::default(), Flaky::default(), [1; 32], [2; 32]);
    s.enroll(ID, t0).unwrap();
    while s.poll_event().is_some() {}
    s.store_mut().fail_task = true;
    let kind = mdm_sync::wire::TaskKind::Lock;
    let r = s.enqueue_task(ID, kind, Default::default(), t0);
    assert_eq!(r, Err(ServerError::Store(Down)));
    let events: Vec<ServerEvent> = core::iter::from_fn(|| s.poll_event()).collect();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, ServerEvent::TaskChanged { .. })),
        "{events:?}"
    );
}

/// A task report the store failed to commit is not announced (the engine
/// queues the event while the store updates the task, and withdraws it when
/// the store then fails); once the store works again, the device's resend
/// is announced.
#[test]
fn a_report_the_store_failed_to_commit_is_not_announced() {
    let t0 = Instant::from_millis(1_000);
    let mut s = Server::new(ServerConfig::default(), Flaky::default(), [1; 32], [2; 32]);
    let secret = s.enroll(ID, t0).unwrap();
    let mut d: Device = Device::new(DeviceConfig::new(ID, 0, secret, Platform::Android), t0);
    let task = s
        .enqueue_task(ID, TaskKind::Lock, Default::default(), t0)
        .unwrap();
    while s.poll_event().is_some() {}
    let delivered = |seen: &[ServerEvent]| {
        let is_it = |e: &&ServerEvent| {
            matches!(e, ServerEvent::TaskChanged { task: t, state: TaskState::Delivered, .. }
                if *t == task)
        };
        seen.iter().filter(is_it).count()
    };

    s.store_mut().fail_commit = true;
    let mut seen = Vec::new();
    let err = sync_once_seeing(&mut d, &mut s, t0, &mut seen);
    assert_eq!(err, Some(ServerError::Store(Down)));
    seen.extend(core::iter::from_fn(|| s.poll_event()));
    assert_eq!(delivered(&seen), 0, "{seen:?}");
    assert_eq!(s.task_state(ID, task), Some(TaskState::Offered));

    s.store_mut().fail_commit = false;
    let later = t0 + Duration::from_secs(120);
    let mut seen = Vec::new();
    assert_eq!(sync_once_seeing(&mut d, &mut s, later, &mut seen), None);
    assert!(delivered(&seen) >= 1, "{seen:?}");
    assert_ne!(s.task_state(ID, task), Some(TaskState::Offered));
}

/// A server over a `Flaky` store with device `ID` enrolled and its push
/// target stored, and the time.
fn pushable() -> (Server<Flaky>, Instant) {
    let t0 = Instant::from_millis(1_000);
    let mut s = Server::new(ServerConfig::default(), Flaky::default(), [1; 32], [2; 32]);
    s.enroll(ID, t0).unwrap();
    s.store_mut()
        .set_push_target(ID, Platform::Android, "fcm:tok")
        .unwrap();
    (s, t0)
}

/// A push held back by the rate limit, whose check fails on one store error
/// (the push target could not be read), is still sent once the store works
/// again: the task queued meanwhile is not left waiting for the periodic
/// sync (3 h). Found by a breaker run: the check was spent and the held push
/// dropped; no push, the task stayed `Queued`.
#[test]
fn a_store_error_in_a_push_check_does_not_drop_the_held_push() {
    use mdm_sync::server::TaskState;
    let (mut s, t0) = pushable();
    let kind = mdm_sync::wire::TaskKind::Lock;
    let pushes = |s: &mut Server<Flaky>| {
        core::iter::from_fn(|| s.poll_event())
            .filter(|e| matches!(e, ServerEvent::SendPush { .. }))
            .count()
    };
    s.enqueue_task(ID, kind, Default::default(), t0).unwrap();
    assert_eq!(pushes(&mut s), 1, "the first task is pushed at once");
    let held = t0 + Duration::from_secs(10);
    let task = s.enqueue_task(ID, kind, Default::default(), held).unwrap();
    assert_eq!(pushes(&mut s), 0, "the second is held by the rate limit");

    // The check of the first push falls due; the store fails it once.
    s.store_mut().fail_push.set(true);
    let due = t0 + ServerConfig::default().push_min_interval;
    assert_eq!(s.handle_timeout(due), Err(ServerError::Store(Down)));

    // The store works again; time runs on for an hour.
    let mut sent = 0;
    let mut t = due;
    while t < t0 + Duration::from_hours(1) {
        t = t + Duration::from_secs(1);
        s.handle_timeout(t).unwrap();
        sent += pushes(&mut s);
    }
    assert_eq!(sent, 1, "task {task:?} is {:?}", s.task_state(ID, task));
    assert_eq!(s.task_state(ID, task), Some(TaskState::PushSent));
}

/// A store error after the task was stored (reading the push target for its
/// push) is returned, but the task is queued: its event says so, and its
/// expiry still fires. Found by a breaker run: the expiry was armed only
/// after the push, so such a task stayed `Queued` past its expiry.
#[test]
fn a_store_error_after_the_task_was_stored_keeps_its_expiry() {
    use mdm_sync::server::{TaskOptions, TaskState};
    let (mut s, t0) = pushable();
    while s.poll_event().is_some() {}
    s.store_mut().fail_push.set(true);
    let opts = TaskOptions {
        expires_at: Some(t0 + Duration::from_mins(5)),
        ..TaskOptions::default()
    };
    let kind = mdm_sync::wire::TaskKind::Lock;
    let r = s.enqueue_task(ID, kind, opts, t0);
    assert_eq!(r, Err(ServerError::Store(Down)));
    let queued: Vec<_> = core::iter::from_fn(|| s.poll_event())
        .filter_map(|e| match e {
            ServerEvent::TaskChanged { task, state, .. } => Some((task, state)),
            _ => None,
        })
        .collect();
    let [(task, TaskState::Queued)] = queued[..] else {
        panic!("{queued:?}");
    };
    s.handle_timeout(t0 + Duration::from_mins(6)).unwrap();
    assert_eq!(s.task_state(ID, task), Some(TaskState::Expired));
}

/// `Server::recover` when the store fails (a database not yet reachable at
/// start-up): it returns the error, and a second call after the store is
/// back must do the work, not "nothing, it ran once" (it did, before).
#[test]
fn recover_after_a_store_error_rebuilds_when_called_again() {
    // What an old process left: a device that synced, with a push token and
    // a task queued whose push never left.
    let now = Instant::from_millis(1_700_000_000_000);
    let mut old = Server::new(
        ServerConfig::default(),
        MemoryStore::new(),
        [1; 32],
        [2; 32],
    );
    old.enroll(ID, now).unwrap();
    let store = old.store_mut();
    store.set_push_target(ID, Platform::Ios, "tok").unwrap();
    let mut rec = store.device(ID).unwrap().unwrap();
    rec.last_sync = Some((now, SyncTrigger::Boot));
    store.put_device(&rec).unwrap();
    old.enqueue_task(ID, TaskKind::Lock, Default::default(), now)
        .unwrap();
    let inner = old.into_store();

    let later = now + Duration::from_mins(5);
    let flaky = Flaky {
        inner,
        ..Flaky::default()
    };
    flaky.down.set(true);
    let mut server = Server::new(ServerConfig::default(), flaky, [1; 32], [3; 32]);
    assert_eq!(server.recover(later), Err(ServerError::Store(Down)));
    server.store().down.set(false);
    let again = server.recover(later).unwrap();
    assert_eq!(
        again.pushed, 1,
        "the push is sent once the store is back: {again:?}"
    );
    let mut pushes = 0;
    while let Some(ev) = server.poll_event() {
        pushes += usize::from(matches!(ev, ServerEvent::SendPush { device, .. } if device == ID));
    }
    assert_eq!(pushes, 1);
    // And the check-in the first call armed is not armed twice: the device
    // is reported overdue once.
    let end = later + Duration::from_hours(4);
    server.handle_timeout(end).unwrap();
    let mut overdue = 0;
    while let Some(ev) = server.poll_event() {
        overdue += usize::from(ev == ServerEvent::Overdue { device: ID });
    }
    assert_eq!(overdue, 1);
}
