//! Stores that do odd but allowed things, against this round's changes.
//!
//! `FleetStore::commit_task_report` returns whether it changed the task, and
//! the engine queues the report's `TaskChanged` inside the store's `update`
//! closure, withdrawing it when the store fails or says `false`. Stores that
//! call `update` twice, on a copy first (a retry), that reject the change
//! after `update` said yes, or fail after it: each announces exactly what it
//! stored, once, and events queued before in the same read survive.
//!
//! `FleetStore::push_target_into` writes the token straight into the queued
//! `SendPush`: a store that scribbles on it and then fails or finds no
//! target leaves no event; a shorter token after a longer one, through the
//! default (`push_target`) and `MemoryStore`'s own, arrives whole and alone;
//! a held push whose store read failed goes out once the store is back.

mod common;

use core::cell::Cell;

use mdm_sync::server::{
    ConnId, DeviceRecord, FleetStore, MemoryStore, PushToken, ReportCommit, ReportSeqs, Server,
    ServerConfig, ServerEvent, TaskOptions, TaskRecord, TaskState,
};
use mdm_sync::time::Instant;
use mdm_sync::wire::{
    frame, ComplianceEvent, DeviceId, Down, Platform, Policy, ReportBody, TaskId, TaskKind,
    TaskStatus, Up,
};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// `MemoryStore`'s own.
    Plain,
    /// `update` on a copy first, then on the stored task (a store retrying
    /// a transaction); the second answer counts.
    Twice,
    /// `update` on a copy of the task made final first (a retry that
    /// found the task changed), answering `false`, then on the stored task.
    FalseThenTrue,
    /// `update` on a copy, then only the sequences stored: `Ok(false)`.
    Refuse,
    /// `update` on a copy, then a failure.
    Fail,
}

#[derive(Debug, PartialEq)]
struct Broken;

/// What `push_target_into` does.
#[derive(Clone, Copy, Debug, PartialEq)]
enum PushMode {
    /// `MemoryStore`'s own.
    Plain,
    /// The trait's default, through `push_target`.
    Default,
    /// Writes into the token, then says there is no target.
    ScribbleNone,
    /// Writes into the token, then fails.
    ScribbleFail,
}

struct Odd {
    inner: MemoryStore,
    mode: Cell<Mode>,
    push: Cell<PushMode>,
    /// Calls of `update`.
    calls: Cell<u32>,
}

/// `MemoryStore` fails only with its compliance log full, never filled here.
fn ok<T>(r: Result<T, mdm_sync::server::MemoryStoreError>) -> Result<T, Broken> {
    r.map_err(|_| Broken)
}

impl FleetStore for Odd {
    type Error = Broken;

    fn device(&self, id: DeviceId) -> Result<Option<DeviceRecord>, Broken> {
        ok(self.inner.device(id))
    }
    fn device_generation(&self, id: DeviceId) -> Result<Option<u32>, Broken> {
        ok(self.inner.device_generation(id))
    }
    fn put_device(&mut self, rec: &DeviceRecord) -> Result<(), Broken> {
        ok(self.inner.put_device(rec))
    }
    fn report_seqs(&self, id: DeviceId) -> Result<Option<ReportSeqs>, Broken> {
        ok(self.inner.report_seqs(id))
    }
    fn push_target(&self, id: DeviceId) -> Result<Option<(Platform, PushToken)>, Broken> {
        ok(self.inner.push_target(id))
    }
    fn push_target_into(
        &self,
        id: DeviceId,
        token: &mut PushToken,
    ) -> Result<Option<Platform>, Broken> {
        let scribble = |token: &mut PushToken| {
            token.clear();
            token.push_str(&"#".repeat(180)).unwrap();
        };
        match self.push.get() {
            PushMode::Plain => ok(self.inner.push_target_into(id, token)),
            PushMode::Default => Ok(self.push_target(id)?.map(|(platform, held)| {
                *token = held;
                platform
            })),
            PushMode::ScribbleNone => {
                scribble(token);
                Ok(None)
            }
            PushMode::ScribbleFail => {
                scribble(token);
                Err(Broken)
            }
        }
    }
    fn remove_push_target(&mut self, id: DeviceId) -> Result<bool, Broken> {
        ok(self.inner.remove_push_target(id))
    }
    fn retire_device(&mut self, id: DeviceId) -> Result<bool, Broken> {
        ok(self.inner.retire_device(id))
    }
    fn retired_generation(&self, id: DeviceId) -> Result<Option<u32>, Broken> {
        ok(self.inner.retired_generation(id))
    }
    fn set_push_target(&mut self, id: DeviceId, p: Platform, t: &str) -> Result<bool, Broken> {
        ok(self.inner.set_push_target(id, p, t))
    }
    fn task(&self, id: TaskId) -> Result<Option<TaskRecord>, Broken> {
        ok(self.inner.task(id))
    }
    fn put_task(&mut self, rec: &TaskRecord) -> Result<(), Broken> {
        ok(self.inner.put_task(rec))
    }
    fn open_tasks(&self, device: DeviceId, out: &mut Vec<TaskId>) -> Result<(), Broken> {
        ok(self.inner.open_tasks(device, out))
    }
    fn open_task_count(&self, device: DeviceId) -> Result<usize, Broken> {
        ok(self.inner.open_task_count(device))
    }
    fn next_task_id(&mut self) -> Result<TaskId, Broken> {
        ok(self.inner.next_task_id())
    }
    fn policy(&self, device: DeviceId) -> Result<Option<Policy>, Broken> {
        ok(self.inner.policy(device))
    }
    fn put_policy(&mut self, device: DeviceId, policy: &Policy) -> Result<(), Broken> {
        ok(self.inner.put_policy(device, policy))
    }
    fn commit_report(&mut self, commit: ReportCommit<'_>) -> Result<(), Broken> {
        ok(self.inner.commit_report(commit))
    }
    fn commit_task_report(
        &mut self,
        commit: ReportCommit<'_>,
        id: TaskId,
        update: &mut dyn FnMut(&mut TaskRecord, &mut ReportSeqs) -> bool,
    ) -> Result<bool, Broken> {
        let calls = &self.calls;
        let mut counted = |t: &mut TaskRecord, s: &mut ReportSeqs| {
            calls.set(calls.get() + 1);
            update(t, s)
        };
        let stored = self.inner.task(id).unwrap();
        // A first call on a copy, as a retrying store makes.
        let mut first = |final_first: bool| {
            if let Some(mut t) = stored {
                if final_first {
                    t.state = TaskState::Cancelled;
                }
                let mut s = commit.seqs;
                counted(&mut t, &mut s)
            } else {
                false
            }
        };
        match self.mode.get() {
            Mode::Plain => ok(self.inner.commit_task_report(commit, id, &mut counted)),
            Mode::Twice => {
                first(false);
                ok(self.inner.commit_task_report(commit, id, &mut counted))
            }
            Mode::FalseThenTrue => {
                assert!(!first(true));
                ok(self.inner.commit_task_report(commit, id, &mut counted))
            }
            Mode::Refuse => {
                first(false);
                self.inner.commit_report(commit).unwrap();
                Ok(false)
            }
            Mode::Fail => {
                first(false);
                Err(Broken)
            }
        }
    }
    fn for_each_device(&self, f: &mut dyn FnMut(&DeviceRecord)) -> Result<(), Broken> {
        ok(self.inner.for_each_device(f))
    }
    fn for_each_task(&self, f: &mut dyn FnMut(&TaskRecord)) -> Result<(), Broken> {
        ok(self.inner.for_each_task(f))
    }
}

const NOW: Instant = Instant::from_millis(50);
const DEV: DeviceId = DeviceId(12);

fn report(seq: u32, body: ReportBody, key: u32) -> Vec<u8> {
    let mut buf = [0u8; 128];
    let n = frame::encode_keyed(&Up::Report { seq, body }, &mut buf, key).unwrap();
    buf[..n].to_vec()
}

fn task_report(seq: u32, task: TaskId, status: TaskStatus, key: u32) -> Vec<u8> {
    report(seq, ReportBody::Task { task, status }, key)
}

/// A server with `DEV` in session and two tasks offered to it.
fn setup(mode: Mode) -> (Server<Odd>, ConnId, u32, [TaskId; 2]) {
    let store = Odd {
        inner: MemoryStore::new(),
        mode: Cell::new(Mode::Plain),
        push: Cell::new(PushMode::Plain),
        calls: Cell::new(0),
    };
    let mut s = Server::new(ServerConfig::default(), store, [3; 32], [4; 32]);
    let secret = s.enroll(DEV, NOW).unwrap();
    let (conn, key, r) = common::raw_handshake(&mut s, DEV, &secret, NOW);
    assert!(r.is_ok());
    let a = s
        .enqueue_task(DEV, TaskKind::Lock, TaskOptions::default(), NOW)
        .unwrap();
    let b = s
        .enqueue_task(DEV, TaskKind::Scan, TaskOptions::default(), NOW)
        .unwrap();
    let offered = common::downs(&common::output(&mut s, conn), key)
        .iter()
        .filter(|d| matches!(d, Down::Task(_)))
        .count();
    assert_eq!(offered, 2);
    while s.poll_event().is_some() {}
    s.store().mode.set(mode);
    (s, conn, key, [a, b])
}

/// The `TaskChanged` events of `events` as (task, state).
fn changes(events: &[ServerEvent]) -> Vec<(TaskId, TaskState)> {
    events
        .iter()
        .filter_map(|e| match e {
            ServerEvent::TaskChanged { task, state, .. } => Some((*task, *state)),
            _ => None,
        })
        .collect()
}

fn events(s: &mut Server<Odd>) -> Vec<ServerEvent> {
    core::iter::from_fn(|| s.poll_event()).collect()
}

/// In one read: a compliance report, a `Received` for task `a` (through the
/// odd store), and, in modes that store it, nothing else; every event is
/// what the store holds, once.
#[test]
fn each_store_announces_what_it_stored_once() {
    for mode in [
        Mode::Plain,
        Mode::Twice,
        Mode::FalseThenTrue,
        Mode::Refuse,
        Mode::Fail,
    ] {
        let (mut s, conn, key, [a, _]) = setup(mode);
        let mut bytes = report(
            1,
            ReportBody::Compliance(ComplianceEvent::ProfileChanged),
            key,
        );
        bytes.extend(task_report(2, a, TaskStatus::Received, key));
        let r = s.handle_bytes(conn, &bytes, NOW);
        assert_eq!(r.is_err(), mode == Mode::Fail, "{mode:?}: {r:?}");
        let ev = events(&mut s);
        let compliance = ev
            .iter()
            .filter(|e| matches!(e, ServerEvent::Compliance { .. }))
            .count();
        assert_eq!(compliance, 1, "{mode:?}: the compliance report's event");
        let stored = s.store().inner.task(a).unwrap().unwrap().state;
        let want: Vec<_> = match mode {
            Mode::Plain | Mode::Twice | Mode::FalseThenTrue => {
                assert_eq!(stored, TaskState::Delivered, "{mode:?}");
                vec![(a, TaskState::Delivered)]
            }
            Mode::Refuse | Mode::Fail => {
                assert_eq!(stored, TaskState::Offered, "{mode:?}");
                vec![]
            }
        };
        assert_eq!(changes(&ev), want, "{mode:?}");
        let calls = s.store().calls.get();
        let want_calls = match mode {
            Mode::Plain | Mode::Refuse | Mode::Fail => 1,
            Mode::Twice | Mode::FalseThenTrue => 2,
        };
        assert_eq!(calls, want_calls, "{mode:?}");
    }
}

/// Two task reports in one read, the second one through the odd store: the
/// first one's event stays whatever the second's store does, and the
/// second's comes once or not at all.
#[test]
fn an_earlier_reports_event_survives_a_later_withdrawal() {
    for mode in [Mode::Twice, Mode::FalseThenTrue, Mode::Refuse, Mode::Fail] {
        let (mut s, conn, key, [a, b]) = setup(Mode::Plain);
        let mut bytes = task_report(1, a, TaskStatus::Received, key);
        bytes.extend(task_report(
            2,
            a,
            TaskStatus::Succeeded { result: None },
            key,
        ));
        // Switch the store's mode between the reports: feed them apart.
        assert!(s.handle_bytes(conn, &bytes, NOW).is_ok());
        s.store().mode.set(mode);
        let more = task_report(3, b, TaskStatus::Failed { reason: 7 }, key);
        let r = s.handle_bytes(conn, &more, NOW);
        assert_eq!(r.is_err(), mode == Mode::Fail, "{mode:?}");
        let ev = events(&mut s);
        let mut want = vec![
            (a, TaskState::Delivered),
            (a, TaskState::Succeeded { result: None }),
        ];
        if matches!(mode, Mode::Twice | Mode::FalseThenTrue) {
            want.push((b, TaskState::Failed { reason: 7 }));
        }
        assert_eq!(changes(&ev), want, "{mode:?}");
    }
}

/// A report the store failed is sent again by the device in a later
/// session (the engine acknowledged nothing past the last stored one): then
/// stored, it is announced, once in all.
#[test]
fn a_failed_report_is_announced_once_when_stored_later() {
    let (mut s, conn, key, [a, _]) = setup(Mode::Fail);
    let r = s.handle_bytes(conn, &task_report(1, a, TaskStatus::Received, key), NOW);
    assert!(r.is_err());
    let mut seen = events(&mut s);
    s.connection_closed(conn, NOW);
    s.store().mode.set(Mode::Twice);
    let secret = s.device_secret(DEV).unwrap();
    let (conn, key, r) = common::raw_handshake(&mut s, DEV, &secret, NOW);
    assert!(r.is_ok());
    common::output(&mut s, conn);
    s.handle_bytes(conn, &task_report(1, a, TaskStatus::Received, key), NOW)
        .unwrap();
    // And its resend (already stored): no second event.
    s.handle_bytes(conn, &task_report(1, a, TaskStatus::Received, key), NOW)
        .unwrap();
    seen.extend(events(&mut s));
    let about_a: Vec<_> = changes(&seen)
        .into_iter()
        .filter(|(t, _)| *t == a)
        .collect();
    // The handshake with `last_task_seq` 0 may resolve the offer first
    // (9.2): only `Delivered` events are counted.
    let delivered = about_a
        .iter()
        .filter(|(_, st)| *st == TaskState::Delivered)
        .count();
    assert!(delivered <= 1, "{about_a:?}");
    let stored = s.store().inner.task(a).unwrap().unwrap().state;
    assert_eq!(
        delivered,
        usize::from(stored == TaskState::Delivered),
        "{about_a:?}, stored {stored:?}"
    );
}

/// The `SendPush` events of `events` as (device, platform, token).
fn pushes(events: &[ServerEvent]) -> Vec<(DeviceId, Platform, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            ServerEvent::SendPush {
                device,
                platform,
                token,
            } => Some((*device, *platform, token.as_str().to_string())),
            _ => None,
        })
        .collect()
}

/// Tokens of 200, 150, 1 and 0 bytes... (none stored: no push) in turn, each
/// push a minute after the last: every `SendPush` holds the token stored
/// then, whole, whichever way the store copies it; a store that scribbled on
/// the event's token and then found no target or failed leaves no event.
#[test]
fn push_tokens_arrive_whole_and_scribbles_never() {
    let minute = mdm_sync::time::Duration::from_secs(61);
    for way in [PushMode::Plain, PushMode::Default] {
        let store = Odd {
            inner: MemoryStore::new(),
            mode: Cell::new(Mode::Plain),
            push: Cell::new(way),
            calls: Cell::new(0),
        };
        let mut s = Server::new(ServerConfig::default(), store, [3; 32], [4; 32]);
        s.enroll(DEV, NOW).unwrap();
        let mut now = NOW;
        // No target yet: no push.
        s.enqueue_task(DEV, TaskKind::Lock, TaskOptions::default(), now)
            .unwrap();
        assert_eq!(pushes(&events(&mut s)), vec![], "{way:?}");
        let long = "L".repeat(200);
        let mid = "m".repeat(150);
        for (token, platform) in [
            (long.as_str(), Platform::Ios),
            (mid.as_str(), Platform::Android),
            ("s", Platform::Ios),
        ] {
            now = now + minute;
            s.store_mut()
                .inner
                .set_push_target(DEV, platform, token)
                .unwrap();
            // A store that scribbles, then finds none or fails: no event.
            for odd in [PushMode::ScribbleNone, PushMode::ScribbleFail] {
                s.store().push.set(odd);
                let r = s.enqueue_task(DEV, TaskKind::Scan, TaskOptions::default(), now);
                assert_eq!(r.is_err(), odd == PushMode::ScribbleFail, "{way:?} {odd:?}");
                let ev = events(&mut s);
                assert_eq!(pushes(&ev), vec![], "{way:?} {odd:?}");
            }
            s.store().push.set(way);
            s.enqueue_task(DEV, TaskKind::Locate, TaskOptions::default(), now)
                .unwrap();
            let ev = events(&mut s);
            assert_eq!(
                pushes(&ev),
                vec![(DEV, platform, token.to_string())],
                "{way:?}"
            );
        }
    }
}

/// A push held back by the rate limit, whose store read fails when its
/// check comes: it stays held and goes out, with the token stored then,
/// once the store answers.
#[test]
fn a_held_push_survives_a_failed_read() {
    let (mut s, conn, _key, _) = setup(Mode::Plain);
    s.connection_closed(conn, NOW);
    s.store_mut()
        .inner
        .set_push_target(DEV, Platform::Android, &"x".repeat(120))
        .unwrap();
    let mut now = NOW;
    s.enqueue_task(DEV, TaskKind::Lock, TaskOptions::default(), now)
        .unwrap();
    let first = pushes(&events(&mut s));
    assert_eq!(first.len(), 1);
    // Within the rate limit: held.
    now = now + mdm_sync::time::Duration::from_secs(1);
    s.enqueue_task(DEV, TaskKind::Scan, TaskOptions::default(), now)
        .unwrap();
    assert_eq!(pushes(&events(&mut s)), vec![]);
    s.store_mut()
        .inner
        .set_push_target(DEV, Platform::Ios, "short")
        .unwrap();
    s.store().push.set(PushMode::ScribbleFail);
    let mut sent = Vec::new();
    for _ in 0..5 {
        let Some(at) = s.poll_timeout() else { break };
        now = now.max(at);
        let _ = s.handle_timeout(now);
        sent.extend(pushes(&events(&mut s)));
    }
    assert_eq!(sent, vec![], "nothing while the store fails");
    s.store().push.set(PushMode::Plain);
    for _ in 0..5 {
        let Some(at) = s.poll_timeout() else { break };
        now = now.max(at);
        s.handle_timeout(now).unwrap();
        sent.extend(pushes(&events(&mut s)));
        if !sent.is_empty() {
            break;
        }
    }
    assert_eq!(sent, vec![(DEV, Platform::Ios, "short".to_string())]);
}
