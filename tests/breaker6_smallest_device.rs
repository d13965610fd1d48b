//! The smallest device that compiles, `Device<3, 1>` (`Device::USABLE`),
//! end to end against the server on a virtual clock: it runs tasks (several
//! queued at once, one held while reports pile up), reports compliance events
//! and policy outcomes, and reboots from its snapshots, and the server ends up
//! with everything. With one task running and three waiting, it synced 81
//! times in an hour (and on, 13 to 14 syncs every 10 min) before the device
//! stopped asking for a new sync after leaving an offer while its task slot
//! is taken (`tests/breaker6_busy_refusal_storm.rs`).

use std::collections::VecDeque;

use mdm_sync::device::{pick_latest, Device, DeviceConfig, DeviceError, Event};
use mdm_sync::server::{
    ConnId, FleetStore, MemoryStore, PolicyState, Server, ServerConfig, ServerEvent, TaskState,
};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::{
    ComplianceEvent, DeviceId, Platform, PolicyOutcome, SettingFailure, Task, TaskKind, TaskStatus,
};

struct Rig<const O: usize = 3, const I: usize = 1> {
    server: Server<MemoryStore>,
    dev: Device<O, I>,
    cfg: DeviceConfig,
    conn: Option<ConnId>,
    online: bool,
    now: Instant,
    /// Tasks the application holds; the others succeed at once.
    hold: bool,
    held: Vec<Task>,
    /// Compliance events the application still has to hand over (it retries
    /// after `OutboxFull`).
    to_raise: VecDeque<ComplianceEvent>,
    outbox_full: usize,
    policy_outcome: PolicyOutcome,
    slots: [Vec<u8>; 2],
    executed: usize,
    /// Sessions authenticated (a sync storm would show here).
    syncs: usize,
}

impl<const O: usize, const I: usize> Rig<O, I> {
    fn new() -> Self {
        let now = Instant::from_millis(1_000_000);
        let mut server = Server::new(
            ServerConfig::default(),
            MemoryStore::new(),
            [1; 32],
            [2; 32],
        );
        let id = DeviceId(1);
        let secret = server.enroll(id, now).unwrap();
        let mut cfg = DeviceConfig::new(id, 0, secret, Platform::Android);
        cfg.push_token = heapless::String::try_from("tok").unwrap();
        Self {
            server,
            dev: Device::new(cfg.clone(), now),
            cfg,
            conn: None,
            online: true,
            now,
            hold: false,
            held: Vec::new(),
            to_raise: VecDeque::new(),
            outbox_full: 0,
            policy_outcome: PolicyOutcome::Applied,
            slots: [Vec::new(), Vec::new()],
            executed: 0,
            syncs: 0,
        }
    }

    fn step(&mut self) -> bool {
        let now = self.now;
        let mut moved = false;
        if self.server.poll_timeout().is_some_and(|t| t <= now) {
            self.server.handle_timeout(now).unwrap();
        }
        if self.online {
            if self.dev.poll_timeout().is_some_and(|t| t <= now) {
                self.dev.handle_timeout(now);
            }
            // The application hands over what it has, as long as there is room.
            while let Some(e) = self.to_raise.front().copied() {
                match self.dev.raise_compliance(e, now) {
                    Ok(()) => {
                        self.to_raise.pop_front();
                        moved = true;
                    }
                    Err(DeviceError::OutboxFull) => {
                        self.outbox_full += 1;
                        break;
                    }
                    Err(e) => panic!("{e:?}"),
                }
            }
            while let Some(ev) = self.dev.poll_event() {
                moved = true;
                self.on_event(ev);
            }
            let mut buf = [0u8; 1024];
            if let Some(conn) = self.conn {
                while let Some(n) = self.dev.poll_transmit(&mut buf).unwrap() {
                    moved = true;
                    let _ = self.server.handle_bytes(conn, &buf[..n], now);
                }
                while let Some(n) = self.server.poll_transmit_for(conn, &mut buf) {
                    moved = true;
                    let _ = self.dev.handle_bytes(&buf[..n], now);
                }
            }
        }
        while let Some(ev) = self.server.poll_event() {
            moved = true;
            match ev {
                ServerEvent::Authenticated { .. } => self.syncs += 1,
                ServerEvent::SendPush { .. } if self.online => self.dev.push_received(now),
                ServerEvent::Close { conn } if self.conn == Some(conn) => {
                    self.conn = None;
                    self.dev.disconnected(now);
                }
                _ => {}
            }
        }
        moved
    }

    fn on_event(&mut self, ev: Event) {
        let now = self.now;
        match ev {
            Event::Persist => {
                let mut buf = [0u8; 512];
                let n = self.dev.snapshot(&mut buf).unwrap();
                self.slots[self.dev.snapshot_slot()] = buf[..n].to_vec();
            }
            Event::Connect => {
                let conn = self.server.connection_opened(now).unwrap();
                self.conn = Some(conn);
                self.dev.connected(now);
            }
            Event::Disconnect => {
                if let Some(conn) = self.conn.take() {
                    self.server.connection_closed(conn, now);
                }
            }
            Event::Execute(task) => {
                self.executed += 1;
                if self.hold {
                    self.held.push(task);
                } else {
                    let status = TaskStatus::Succeeded { result: None };
                    self.dev.task_status(task.id, status, now).unwrap();
                }
            }
            Event::ApplyPolicy { version } => {
                // No room: it stays pending and is announced again once an
                // ack frees the outbox (see `Device::policy_applied`).
                let outcome = self.policy_outcome.clone();
                match self.dev.policy_applied(version, outcome, now) {
                    Ok(()) => {}
                    Err(DeviceError::OutboxFull) => self.outbox_full += 1,
                    Err(e) => panic!("{e:?}"),
                }
            }
            _ => {}
        }
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            for _ in 0..10_000 {
                if !self.step() {
                    break;
                }
            }
            let dev = self.dev.poll_timeout().filter(|_| self.online);
            match dev.into_iter().chain(self.server.poll_timeout()).min() {
                Some(t) if t <= end => self.now = t.max(self.now),
                _ => {
                    self.now = end;
                    while self.step() {}
                    return;
                }
            }
        }
    }

    fn go_offline(&mut self) {
        self.online = false;
        if let Some(conn) = self.conn.take() {
            self.server.connection_closed(conn, self.now);
            self.dev.disconnected(self.now);
        }
    }

    fn reboot(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.server.connection_closed(conn, self.now);
        }
        self.held.clear();
        let bytes = pick_latest(&self.slots[0], &self.slots[1])
            .unwrap()
            .to_vec();
        self.dev = Device::restore(self.cfg.clone(), &bytes, self.now).unwrap();
    }

    fn queue(&mut self, kind: TaskKind) -> mdm_sync::wire::TaskId {
        let now = self.now;
        self.server
            .enqueue_task(DeviceId(1), kind, Default::default(), now)
            .unwrap()
    }

    fn state(&self, t: mdm_sync::wire::TaskId) -> TaskState {
        self.server.task_state(DeviceId(1), t).unwrap()
    }

    fn compliance(&mut self) -> usize {
        self.server.store_mut().take_compliance().len()
    }
}

const ALL_EVENTS: [ComplianceEvent; 7] = [
    ComplianceEvent::ProfileChanged,
    ComplianceEvent::DeviceAdminChanged { active: true },
    ComplianceEvent::BlockedPageVisited { category: 9 },
    ComplianceEvent::PasswordOverdue { days: 3 },
    ComplianceEvent::MalwarePersisting { threats: 2 },
    ComplianceEvent::UsbDebugging { enabled: true },
    ComplianceEvent::ManualScanResult { threats: 1 },
];

#[test]
fn five_tasks_queued_at_once_all_run() {
    let mut r: Rig = Rig::new();
    r.run_for(Duration::from_mins(5));
    let tasks: Vec<_> = (0..5).map(|i| r.queue(TaskKind::ALL[i])).collect();
    r.run_for(Duration::from_mins(30));
    for t in tasks {
        assert_eq!(r.state(t), TaskState::Succeeded { result: None });
    }
    assert_eq!(r.executed, 5);
}

#[test]
fn compliance_events_and_a_policy_raised_offline_all_arrive() {
    let mut r: Rig = Rig::new();
    r.run_for(Duration::from_mins(5));
    r.go_offline();
    r.to_raise.extend(ALL_EVENTS);
    r.online = true; // the app runs; the network does not
    r.dev.handle_timeout(r.now);
    r.online = false;
    let now = r.now;
    let failed = [SettingFailure { key: 1, reason: 2 }; 4];
    r.policy_outcome = PolicyOutcome::Partial {
        failed: heapless::Vec::from_slice(&failed).unwrap(),
    };
    let version = r.server.assign_policy(DeviceId(1), &[], now).unwrap();
    r.online = true;
    r.run_for(Duration::from_hours(2));
    assert_eq!(r.compliance(), ALL_EVENTS.len());
    assert!(r.to_raise.is_empty());
    let rec = r.server.store().device(DeviceId(1)).unwrap().unwrap();
    assert_eq!(
        rec.policy_state,
        PolicyState::from_report(version, &r.policy_outcome)
    );
}

#[test]
fn a_running_task_does_not_keep_compliance_or_policy_out() {
    let mut r: Rig = Rig::new();
    r.run_for(Duration::from_mins(5));
    r.hold = true;
    let long = r.queue(TaskKind::Scan);
    r.run_for(Duration::from_mins(5));
    assert_eq!(r.held.len(), 1);
    // More work while it runs: tasks deferred, events and a policy.
    let waiting: Vec<_> = (0..3).map(|_| r.queue(TaskKind::Lock)).collect();
    r.to_raise.extend(ALL_EVENTS);
    let now = r.now;
    let version = r.server.assign_policy(DeviceId(1), &[], now).unwrap();
    let syncs = r.syncs;
    r.run_for(Duration::from_hours(1));
    assert_eq!(
        r.compliance(),
        ALL_EVENTS.len(),
        "all events while a task runs"
    );
    // Each event, the policy and each waiting task need a sync at most.
    let in_the_hour = r.syncs - syncs;
    eprintln!(
        "{in_the_hour} syncs in the hour, {} OutboxFull",
        r.outbox_full
    );
    assert!(in_the_hour <= 12, "{in_the_hour} syncs in an hour");
    let rec = r.server.store().device(DeviceId(1)).unwrap().unwrap();
    assert_eq!(rec.policy_state, PolicyState::Applied { version });
    // The task ends; the waiting ones run then.
    r.hold = false;
    let task = r.held.pop().unwrap();
    let now = r.now;
    r.dev
        .task_status(task.id, TaskStatus::Succeeded { result: None }, now)
        .unwrap();
    r.run_for(Duration::from_hours(4));
    assert_eq!(r.state(long), TaskState::Succeeded { result: None });
    for t in waiting {
        assert_eq!(r.state(t), TaskState::Succeeded { result: None }, "{t:?}");
    }
}

#[test]
fn a_reboot_with_a_full_outbox_and_a_running_task_loses_nothing() {
    let mut r: Rig = Rig::new();
    r.run_for(Duration::from_mins(5));
    r.hold = true;
    let task = r.queue(TaskKind::Locate);
    r.run_for(Duration::from_mins(5));
    r.go_offline();
    r.online = true;
    r.to_raise.extend(ALL_EVENTS);
    r.step();
    r.online = false;
    let raised_before = ALL_EVENTS.len() - r.to_raise.len();
    assert!(
        raised_before >= 1,
        "room for one event beside a running task"
    );
    r.reboot();
    r.hold = false;
    r.online = true;
    r.run_for(Duration::from_hours(2));
    assert_eq!(
        r.state(task),
        TaskState::Failed {
            reason: mdm_sync::wire::reason::INTERRUPTED_BY_REBOOT
        }
    );
    assert_eq!(r.compliance(), ALL_EVENTS.len());
}

/// `Device<3, 3>` can run two tasks at most (each needs two outbox slots
/// beside the others' one): with two running, a free task slot is no room,
/// and an offer left then must not bring a new sync at once either.
#[test]
fn a_device_with_more_task_slots_than_room_does_not_resync_in_a_loop() {
    let mut r: Rig<3, 3> = Rig::new();
    r.run_for(Duration::from_mins(5));
    r.hold = true;
    for _ in 0..2 {
        r.queue(TaskKind::Scan);
        r.run_for(Duration::from_mins(5));
    }
    assert_eq!(r.held.len(), 2, "two run");
    let _waiting: Vec<_> = (0..3).map(|_| r.queue(TaskKind::Lock)).collect();
    let syncs = r.syncs;
    r.run_for(Duration::from_hours(2));
    let n = r.syncs - syncs;
    assert!(n <= 3, "{n} syncs in 2 h with both tasks running");
}
