//! No allocation on the hot path, counted by a global allocator.
//!
//! Its own test binary without the libtest harness (`harness = false` in
//! Cargo.toml): the counting allocator is global, so nothing else may run
//! beside it. Every engine call is wrapped in a counted region that charges
//! its allocations to the device or to the server.
//!
//! What it proves:
//! - the device engine never allocates: whole syncs with handshake, tasks,
//!   statuses and policies, and its snapshots;
//! - the server allocates nothing per message in an open session (task out,
//!   reports in, acks out), once its maps have grown to the working set;
//! - a whole sync woken by a push (connect, handshake, tasks, statuses,
//!   policy, close) costs the server no allocation, whether it carries one
//!   task or four: the push token handed to the application in
//!   `ServerEvent::SendPush` is a copy in a fixed buffer (`PushToken`), and
//!   new sessions reuse the buffers of closed ones.

use std::alloc::System;
use std::process::ExitCode;

use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

use mdm_sync::device::{Device, DeviceConfig, Event};
use mdm_sync::server::{ConnId, MemoryStore, Server, ServerConfig, ServerEvent, TaskState};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::{DeviceId, Platform, PolicyOutcome, Setting, TaskId, TaskKind, TaskStatus};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Allocations (and reallocations) made by `f`.
fn counted<R>(slot: &mut u64, f: impl FnOnce() -> R) -> R {
    let region = Region::new(GLOBAL);
    let r = f();
    let c = region.change();
    *slot += (c.allocations + c.reallocations) as u64;
    r
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Count {
    device: u64,
    server: u64,
}

/// One device and a server in memory, every call counted.
struct Pair {
    server: Server<MemoryStore>,
    device: Device,
    id: DeviceId,
    conn: Option<ConnId>,
    now: Instant,
    hold_next: bool,
    held: Option<TaskId>,
    syncs: u32,
    count: Count,
    buf: Box<[u8; 4096]>,
    snap: Box<[u8; 1024]>,
}

impl Pair {
    fn new() -> Self {
        let mut server = Server::new(
            ServerConfig::default(),
            MemoryStore::new(),
            [1; 32],
            [2; 32],
        );
        let now = Instant::from_millis(1_000_000);
        let id = DeviceId(77);
        let secret = server.enroll(id, now).unwrap();
        let mut cfg = DeviceConfig::new(id, 0, secret, Platform::Android);
        cfg.push_token = heapless::String::try_from("fcm-token-of-device-77").unwrap();
        Self {
            server,
            device: Device::new(cfg, now),
            id,
            conn: None,
            now,
            hold_next: false,
            held: None,
            syncs: 0,
            count: Count::default(),
            buf: Box::new([0; 4096]),
            snap: Box::new([0; 1024]),
        }
    }

    fn queue(&mut self, kind: TaskKind) -> TaskId {
        let (id, now) = (self.id, self.now);
        let s = &mut self.server;
        counted(&mut self.count.server, || {
            s.enqueue_task(id, kind, Default::default(), now).unwrap()
        })
    }

    fn assign_policy(&mut self) {
        let (id, now) = (self.id, self.now);
        let settings = [Setting { key: 1, value: 1 }, Setting { key: 2, value: 6 }];
        let s = &mut self.server;
        counted(&mut self.count.server, || {
            s.assign_policy(id, &settings, now).unwrap()
        });
    }

    fn advance(&mut self, d: Duration) {
        self.now = self.now + d;
        let now = self.now;
        let s = &mut self.server;
        counted(&mut self.count.server, || {
            if s.poll_timeout().is_some_and(|t| t <= now) {
                s.handle_timeout(now).unwrap();
            }
        });
        let d = &mut self.device;
        counted(&mut self.count.device, || d.handle_timeout(now));
    }

    fn pump(&mut self) {
        for _ in 0..1000 {
            let mut moved = self.device_events();
            moved |= self.device_to_server();
            moved |= self.server_to_device();
            moved |= self.server_events();
            if !moved {
                return;
            }
        }
        panic!("no quiescence");
    }

    fn device_events(&mut self) -> bool {
        let mut moved = false;
        loop {
            let d = &mut self.device;
            let Some(ev) = counted(&mut self.count.device, || d.poll_event()) else {
                return moved;
            };
            moved = true;
            self.on_device_event(ev);
        }
    }

    fn on_device_event(&mut self, ev: Event) {
        let now = self.now;
        let (d, s) = (&mut self.device, &mut self.server);
        let (cd, cs) = (&mut self.count.device, &mut self.count.server);
        match ev {
            Event::Persist => {
                let snap = &mut self.snap[..];
                counted(cd, || d.snapshot(snap).unwrap());
            }
            Event::Connect => {
                self.conn = Some(counted(cs, || s.connection_opened(now).unwrap()));
                counted(cd, || d.connected(now));
            }
            Event::Disconnect => {
                if let Some(conn) = self.conn.take() {
                    counted(cs, || s.connection_closed(conn, now));
                }
            }
            Event::Execute(task) => {
                if self.hold_next && self.held.is_none() {
                    self.held = Some(task.id);
                } else {
                    let status = TaskStatus::Succeeded { result: None };
                    counted(cd, || d.task_status(task.id, status, now).unwrap());
                }
            }
            Event::ApplyPolicy { version } => {
                let outcome = PolicyOutcome::Applied;
                counted(cd, || d.policy_applied(version, outcome, now).unwrap());
            }
            Event::SyncDone { .. } => self.syncs += 1,
            _ => {}
        }
    }

    fn device_to_server(&mut self) -> bool {
        let Some(conn) = self.conn else {
            return false;
        };
        let now = self.now;
        let mut moved = false;
        loop {
            let (d, buf) = (&mut self.device, &mut self.buf[..]);
            let Some(n) = counted(&mut self.count.device, || d.poll_transmit(buf).unwrap()) else {
                return moved;
            };
            moved = true;
            let (s, bytes) = (&mut self.server, &self.buf[..n]);
            counted(&mut self.count.server, || {
                s.handle_bytes(conn, bytes, now).unwrap()
            });
        }
    }

    fn server_to_device(&mut self) -> bool {
        let Some(conn) = self.conn else {
            return false;
        };
        let now = self.now;
        let mut moved = false;
        loop {
            let (s, buf) = (&mut self.server, &mut self.buf[..]);
            let Some(n) = counted(&mut self.count.server, || s.poll_transmit_for(conn, buf)) else {
                return moved;
            };
            moved = true;
            let (d, bytes) = (&mut self.device, &self.buf[..n]);
            counted(&mut self.count.device, || {
                d.handle_bytes(bytes, now).unwrap()
            });
        }
    }

    fn server_events(&mut self) -> bool {
        let now = self.now;
        let mut moved = false;
        loop {
            let s = &mut self.server;
            // The event itself is dropped inside the region: were a push's
            // token a copy, it would be counted against the server.
            let ev = counted(&mut self.count.server, || {
                s.poll_event().map(|ev| match ev {
                    ServerEvent::SendPush { .. } => Some(None),
                    ServerEvent::Close { conn } => Some(Some(conn)),
                    _ => None,
                })
            });
            let Some(ev) = ev else {
                break;
            };
            moved = true;
            let d = &mut self.device;
            match ev {
                Some(None) => counted(&mut self.count.device, || d.push_received(now)),
                Some(Some(conn)) if Some(conn) == self.conn => {
                    self.conn = None;
                    counted(&mut self.count.device, || d.disconnected(now));
                }
                _ => {}
            }
        }
        if moved {
            let d = &mut self.device;
            counted(&mut self.count.device, || d.handle_timeout(now));
        }
        moved
    }

    /// Forgets final tasks, as an application does from time to time
    /// (uncounted: it is housekeeping, not message handling).
    fn prune(&mut self) {
        let before = self.now + Duration::from_millis(1);
        self.server.store_mut().prune_finished(before);
    }

    /// One whole sync woken by a push: `tasks` tasks and, with `policy`, a
    /// new policy version.
    fn whole_sync(&mut self, tasks: usize, policy: bool) {
        self.advance(Duration::from_secs(61)); // past the push rate limit
        let before = self.syncs;
        for _ in 0..tasks {
            self.queue(TaskKind::Lock);
        }
        if policy {
            self.assign_policy();
        }
        self.pump();
        assert_eq!(self.syncs, before + 1, "the sync did not complete");
        assert!(self.conn.is_none());
    }
}

fn device_never_allocates() -> Result<String, String> {
    let mut p = Pair::new();
    p.advance(Duration::ZERO);
    p.pump(); // boot sync
    for i in 0..300 {
        p.whole_sync(1 + i % 3, i % 2 == 0);
        p.prune();
    }
    match p.count.device {
        0 => Ok(format!(
            "300 whole syncs: {} device allocations",
            p.count.device
        )),
        n => Err(format!("the device allocated {n} times")),
    }
}

fn server_session_allocates_nothing_per_message() -> Result<String, String> {
    let mut p = Pair::new();
    p.hold_next = true;
    p.queue(TaskKind::Scan);
    p.advance(Duration::ZERO);
    p.pump();
    assert!(p.held.is_some() && p.conn.is_some(), "session not open");
    let round = |p: &mut Pair| {
        let task = p.queue(TaskKind::Lock);
        p.pump();
        let state = p.server.task_state(p.id, task);
        assert_eq!(state, Some(TaskState::Succeeded { result: None }));
    };
    for _ in 0..2_000 {
        round(&mut p); // the maps grow to their working set
    }
    p.prune();
    p.count = Count::default();
    let rounds = 20_000;
    for i in 0..rounds {
        round(&mut p);
        if i % 1_000 == 999 {
            p.prune();
        }
    }
    assert!(p.conn.is_some(), "the session must have stayed open");
    // Per round: task and sync-end out, two reports in, two acks out.
    let messages = rounds * 6;
    let c = p.count;
    let text = format!(
        "{rounds} in-session round trips ({messages} messages): {} server, {} device allocations",
        c.server, c.device
    );
    if c == Count::default() {
        Ok(text)
    } else {
        Err(text)
    }
}

fn server_whole_sync_allocates_nothing() -> Result<String, String> {
    let mut p = Pair::new();
    p.advance(Duration::ZERO);
    p.pump();
    for _ in 0..200 {
        p.whole_sync(4, true); // warm-up: maps and queues reach their size
        p.prune();
    }
    let mut per_sync = Vec::new();
    for (tasks, policy) in [(1, false), (4, true), (1, true), (4, false)] {
        let rounds = 500u64;
        p.count = Count::default();
        for _ in 0..rounds {
            p.whole_sync(tasks, policy);
            p.prune();
        }
        if p.count.device != 0 {
            return Err(format!("the device allocated {} times", p.count.device));
        }
        per_sync.push((tasks, policy, p.count.server as f64 / rounds as f64));
    }
    let text = per_sync
        .iter()
        .map(|(t, p, a)| format!("{t} task(s){}: {a:.3}", if *p { " + policy" } else { "" }))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!("server allocations per whole sync: {text}");
    // Nothing, to within one allocation in a thousand syncs (a queue or map
    // that grows once more is not per sync).
    let max = per_sync.iter().fold(0f64, |hi, s| hi.max(s.2));
    if max <= 0.001 {
        Ok(text)
    } else {
        Err(format!("a whole sync allocates: {text}"))
    }
}

/// A test returns what it measured, as a note for the log.
type Test = fn() -> Result<String, String>;

fn main() -> ExitCode {
    let tests: [(&str, Test); 3] = [
        ("device_never_allocates", device_never_allocates),
        (
            "server_session_allocates_nothing_per_message",
            server_session_allocates_nothing_per_message,
        ),
        (
            "server_whole_sync_allocates_nothing",
            server_whole_sync_allocates_nothing,
        ),
    ];
    println!("\nrunning {} tests", tests.len());
    let mut failed = 0;
    for (name, test) in tests {
        match test() {
            Ok(note) => println!("test {name} ... ok\n    {note}"),
            Err(note) => {
                failed += 1;
                println!("test {name} ... FAILED\n    {note}");
            }
        }
    }
    let status = if failed == 0 { "ok" } else { "FAILED" };
    let passed = tests.len() - failed;
    println!("\ntest result: {status}. {passed} passed; {failed} failed; 0 ignored; 0 measured; 0 filtered out\n");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
