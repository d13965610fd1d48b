//! Work that crosses the device's close of a finished session (the case of
//! `tests/breaker12_late_offer.rs`, for the other kinds of work a session
//! can carry after its `SyncEnd`, and what becomes of a late task).
//!
//! The device ends its sync after `SyncEnd` and closes; the close is on its
//! way when the operator cancels a task the device is running, or assigns
//! a new policy. The server still holds the session, so it sends the
//! `Cancel` or the `Policy` there (later work in the session, PROTOCOL.md
//! 7.3) and asks for no push; the bytes go to a transport the device no
//! longer reads. Then the clean close arrives. For a late *task* the close
//! holds a push (3c4b8ce); for a cancel or a policy it did not, so the idle
//! device got neither until its periodic sync, 3 h later (a long task it was
//! asked to stop ran on; a policy was not applied).
//!
//! Each test drives a real `Device` against the `Server` in memory. The
//! first two check that a push goes out within the five minutes after the
//! close; the third that a late cancel the device did answer asks for none;
//! then that a late task which never arrived, or a task the device gave
//! back, is superseded by a newer one with its supersede key (it ran beside
//! it before), and that a task given back past its expiry expires at once.

mod common;

use mdm_sync::device::{Device, DeviceConfig, Event};
use mdm_sync::server::{ConnId, MemoryStore, Server, ServerEvent};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::{DeviceId, Platform, Setting, TaskId, TaskKind};

const ID: DeviceId = DeviceId(15);

struct World {
    server: Server<MemoryStore>,
    dev: Device,
    now: Instant,
    /// Tasks handed to the application and left running.
    running: Vec<TaskId>,
    /// What the operator (or the application) does once the session went
    /// quiet (the device lingering for its running task, after `SyncEnd`).
    /// A cancel is answered by the application at once.
    when_quiet: Option<Quiet>,
}

type Quiet = Box<dyn FnOnce(&mut Server<MemoryStore>, &mut Device, Instant)>;

fn world() -> World {
    let now = Instant::from_millis(5_000_000);
    let mut server = common::server();
    let secret = server.enroll(ID, now).unwrap();
    let mut cfg = DeviceConfig::new(ID, 0, secret, Platform::Android);
    cfg.push_token = heapless::String::try_from("tok").unwrap();
    let dev = Device::new(cfg, now);
    World {
        server,
        dev,
        now,
        running: Vec::new(),
        when_quiet: None,
    }
}

impl World {
    /// Runs one sync until the device decides to disconnect; the server is
    /// not told (the close is on its way). Tasks are left running, so the
    /// device lingers in the session (`DeviceTimers::linger`): when nothing
    /// moves, time goes on to the device's next deadline.
    fn sync_until_the_device_closes(&mut self) -> ConnId {
        let (mut conn, mut buf) = (None, [0u8; 1024]);
        for _ in 0..200 {
            let now = self.now;
            self.dev.handle_timeout(now);
            let mut moved = false;
            let mut closing = false;
            while let Some(ev) = self.dev.poll_event() {
                match ev {
                    Event::Connect => {
                        conn = Some(self.server.connection_opened(now).unwrap());
                        self.dev.connected(now);
                    }
                    Event::Execute(task) => self.running.push(task.id),
                    Event::Cancel(task) => {
                        let cancelled = mdm_sync::wire::TaskStatus::Cancelled;
                        self.dev.task_status(task, cancelled, now).unwrap();
                        self.running.retain(|t| *t != task);
                    }
                    Event::ApplyPolicy { version } => {
                        let ok = mdm_sync::wire::PolicyOutcome::Applied;
                        self.dev.policy_applied(version, ok, now).unwrap();
                    }
                    Event::Disconnect => closing = true,
                    _ => {}
                }
            }
            if closing {
                return conn.expect("a connection before the close");
            }
            let Some(c) = conn else { continue };
            while let Some(n) = self.dev.poll_transmit(&mut buf).unwrap() {
                self.server.handle_bytes(c, &buf[..n], now).unwrap();
                moved = true;
            }
            while let Some(n) = self.server.poll_transmit_for(c, &mut buf) {
                self.dev.handle_bytes(&buf[..n], now).unwrap();
                moved = true;
            }
            if !moved {
                match self.when_quiet.take() {
                    Some(act) => act(&mut self.server, &mut self.dev, now),
                    None => self.now = self.dev.poll_timeout().unwrap().max(now),
                }
            }
        }
        panic!("the sync never ended");
    }

    /// Whether the server pushes the device within five minutes of now.
    fn pushed_soon(&mut self) -> bool {
        let mut pushed = false;
        while let Some(ev) = self.server.poll_event() {
            pushed |= matches!(ev, ServerEvent::SendPush { device, .. } if device == ID);
        }
        let later = self.now + Duration::from_mins(5);
        self.server.handle_timeout(later).unwrap();
        while let Some(ev) = self.server.poll_event() {
            pushed |= matches!(ev, ServerEvent::SendPush { device, .. } if device == ID);
        }
        pushed
    }

    /// The device is idle until this many minutes from now.
    fn idle_minutes(&self) -> u64 {
        let until = self.dev.poll_timeout().unwrap_or(Instant::MAX);
        until.saturating_since(self.now).as_millis() / 60_000
    }

    /// Queues a scan, a task the device keeps running (the test's
    /// application never finishes it).
    fn scan(&mut self) -> TaskId {
        let opts = Default::default();
        self.server
            .enqueue_task(ID, TaskKind::Scan, opts, self.now)
            .unwrap()
    }

    /// The server's output on `c` goes to a transport the device has left,
    /// then the close arrives; whether a push follows within five minutes.
    fn close_unread(&mut self, c: ConnId) -> bool {
        let mut buf = [0u8; 512];
        while self.server.poll_transmit_for(c, &mut buf).is_some() {}
        self.server.connection_closed(c, self.now);
        self.pushed_soon()
    }

    /// Moves on past the push rate limit, so that a control's push is not
    /// held back by the test's earlier one.
    fn later(&mut self) {
        self.now = self.now + Duration::from_mins(30);
        self.server.handle_timeout(self.now).unwrap();
        while self.server.poll_event().is_some() {}
    }
}

/// A cancel for a task the device runs, sent into the closing session.
#[test]
fn a_cancel_that_crosses_the_devices_close_gets_a_push() {
    let mut w = world();
    let task = w.scan();
    let c = w.sync_until_the_device_closes();
    assert_eq!(w.running, [task], "the device runs the task");
    w.server.connection_closed(c, w.now);
    w.later();
    // Its next sync (the device asked for none: the task is still running).
    w.dev.push_received(w.now);
    let c = w.sync_until_the_device_closes();
    while w.server.poll_event().is_some() {}

    w.server.cancel_task(task, w.now).unwrap(); // its `Cancel` goes unread
    let idle = w.idle_minutes();
    assert!(
        w.close_unread(c),
        "no push for the cancel: the device, idle for {idle} min, runs the task on"
    );
}

/// A policy assigned while the device closes.
#[test]
fn a_policy_that_crosses_the_devices_close_gets_a_push() {
    let mut w = world();
    let c = w.sync_until_the_device_closes();
    while w.server.poll_event().is_some() {}

    let setting = Setting { key: 1, value: 1 };
    w.server.assign_policy(ID, &[setting], w.now).unwrap(); // unread
    let idle = w.idle_minutes();
    assert!(
        w.close_unread(c),
        "no push for the policy: the device is idle for {idle} min without it"
    );

    // Control: the same call after the close pushes.
    w.later();
    w.server.assign_policy(ID, &[setting], w.now).unwrap();
    assert!(
        w.pushed_soon(),
        "a policy assigned to an idle device is pushed"
    );
}

/// The other side of the fix: a cancel sent after `SyncEnd` that the device
/// read and answered before it closed asks for no push (a push for every
/// late cancel would bring the device back for nothing).
#[test]
fn a_late_cancel_the_device_answered_asks_for_no_push() {
    let mut w = world();
    let task = w.scan();
    w.when_quiet = Some(Box::new(move |s, _, now| {
        _ = s.cancel_task(task, now).unwrap()
    }));
    let c = w.sync_until_the_device_closes();
    assert!(w.when_quiet.is_none(), "the cancel went out");
    assert!(w.running.is_empty(), "the device answered the cancel");
    let state = w.server.task_state(ID, task);
    assert_eq!(state, Some(mdm_sync::server::TaskState::Cancelled));
    assert!(!w.close_unread(c), "a push though the cancel was answered");
}

/// Five "lock" clicks give one lock (`tests/supersede_keys.rs`), also when
/// the first was offered late into a session whose close crossed it. The
/// first click's task is then `Offered`, which a second click with the
/// same supersede key does not replace (it may be on the device). At the
/// next handshake the device's ledger shows it never arrived and it goes
/// back to the queue (PROTOCOL.md 10.1) beside the second click's task:
/// the device locked twice. Once it is known not to be on the device, a
/// newer task with its key replaces it, as if it had been queued then.
#[test]
fn a_late_offer_back_in_the_queue_is_superseded_by_a_newer_click() {
    use mdm_sync::server::{SupersedeKey, TaskOptions, TaskState};
    let mut w = world();
    let c = w.sync_until_the_device_closes();
    let opts = TaskOptions {
        supersede: Some(SupersedeKey::from_name("lock")),
        ..Default::default()
    };
    let first = w.server.enqueue_task(ID, TaskKind::Lock, opts, w.now);
    let first = first.unwrap(); // offered into the closing session, unread
    assert!(w.close_unread(c), "the late offer is pushed");
    let second = w.server.enqueue_task(ID, TaskKind::Lock, opts, w.now);
    let second = second.unwrap();
    w.dev.push_received(w.now);
    let c = w.sync_until_the_device_closes();
    w.server.connection_closed(c, w.now);
    let locks: Vec<TaskId> = w.running.clone();
    assert_eq!(locks, [second], "the device locked for {locks:?}");
    assert_eq!(
        w.server.task_state(ID, first),
        Some(TaskState::Superseded { by: second })
    );
}

/// The same for a task the device gave back: the first click's task is on
/// the device when the second comes (so not replaced), then the device
/// answers "not now" for it. Deferred, it would be offered again beside
/// the second click's task, which the device ran: two locks. A newer task
/// with its key replaces it instead, as it replaces a task deferred before
/// the click.
#[test]
fn a_task_deferred_after_a_newer_click_is_superseded_by_it() {
    use mdm_sync::server::{SupersedeKey, TaskOptions, TaskState};
    let opts = TaskOptions {
        supersede: Some(SupersedeKey::from_name("lock")),
        ..Default::default()
    };
    let mut w = world();
    let first = w.server.enqueue_task(ID, TaskKind::Lock, opts, w.now);
    let first = first.unwrap();
    let second = std::rc::Rc::new(core::cell::Cell::new(None));
    let click = second.clone();
    w.when_quiet = Some(Box::new(move |s, dev, now| {
        // The second click, offered in the session (the first is running).
        click.set(Some(s.enqueue_task(ID, TaskKind::Lock, opts, now).unwrap()));
        let not_now = mdm_sync::wire::TaskStatus::Deferred {
            retry_after_s: Some(60),
        };
        dev.task_status(first, not_now, now).unwrap();
    }));
    let c = w.sync_until_the_device_closes();
    w.server.connection_closed(c, w.now);
    let second = second.get().expect("the second click");
    // The device syncs again after its retry hint.
    w.now = w.now + Duration::from_mins(2);
    let c = w.sync_until_the_device_closes();
    w.server.connection_closed(c, w.now);
    let runs = w.running.iter().filter(|t| **t == first).count();
    // Handed out once, and answered "not now"; not a second time.
    assert_eq!(
        runs, 1,
        "the first click's task was handed out {runs} times"
    );
    assert!(w.running.contains(&second));
    assert_eq!(
        w.server.task_state(ID, first),
        Some(TaskState::Superseded { by: second })
    );
}

/// A task whose expiry passed while the device held it, then given back
/// ("not now"): it cannot be delivered any more, so it ends `Expired` at
/// the report, as it would have had the device never held it. Before, it
/// stayed `Deferred` (its expiry timer spent while the device held it)
/// until the device's next sync, up to its periodic interval later (3 h),
/// found expired only when it was about to be offered again.
#[test]
fn a_task_given_back_after_its_expiry_ends_expired_at_once() {
    use mdm_sync::server::{TaskOptions, TaskState};
    let mut w = world();
    let opts = TaskOptions {
        expires_at: Some(w.now + Duration::from_mins(10)),
        ..Default::default()
    };
    let task = w.server.enqueue_task(ID, TaskKind::Scan, opts, w.now);
    let task = task.unwrap();
    let c = w.sync_until_the_device_closes();
    w.server.connection_closed(c, w.now);
    assert_eq!(w.running, [task], "the device runs the task");
    // Its expiry passes on the device (the timer finds it on the device).
    w.later();
    assert_eq!(w.server.task_state(ID, task), Some(TaskState::Delivered));
    let not_now = mdm_sync::wire::TaskStatus::Deferred {
        retry_after_s: None,
    };
    w.dev.task_status(task, not_now, w.now).unwrap();
    let c = w.sync_until_the_device_closes();
    w.server.connection_closed(c, w.now);
    assert_eq!(w.server.task_state(ID, task), Some(TaskState::Expired));
}
