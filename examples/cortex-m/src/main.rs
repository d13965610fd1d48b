//! mdm-sync firmware example for Cortex-M (QEMU mps2-an386).
//!
//! Runs the unchanged device engine (`mdm_sync::device::Device`, no_std, no
//! allocator) against a scripted server peer over an in-memory transport, on a
//! simulated clock that jumps to the engine's next deadline whenever nothing
//! else is going on. It prints what happens over semihosting and exits with
//! success only if every step of the script was observed:
//!
//! 1. boot sync;
//! 2. the operator queues a lock and a locate task, a push arrives, the device
//!    syncs, runs both tasks once and reports their status (the locate task
//!    with progress and a location);
//! 3. a compliance event is raised while the network is down: the first
//!    attempt is refused, retries back off up to the one-minute compliance
//!    retry, and the first retry after the network is back delivers it;
//! 4. a reboot: the engine is restored from the newer of two snapshot slots.

#![no_std]
#![no_main]
#![forbid(unsafe_code)]

mod peer;
mod pipe;

use core::fmt;
use core::mem::size_of;

use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hprintln};
use mdm_sync::device::{pick_latest, snapshot_counter, Device, DeviceConfig, Event};
use mdm_sync::device::{DEFAULT_INFLIGHT, DEFAULT_OUTBOX};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::{ComplianceEvent, DeviceId, Platform, SyncTrigger, Task, TaskId, TaskKind};
use mdm_sync::wire::{TaskResult, TaskStatus, MAX_FRAME};
use panic_semihosting as _;

use peer::{kind_name, Peer, Seen};
use pipe::Pipe;

const MASTER: [u8; 32] = *b"example master key, not a secret";
const NONCE_SEED: [u8; 32] = [0x5E; 32];
const DEVICE: DeviceId = DeviceId(7);
const GENERATION: u32 = 1;
const SNAP: usize = <Device>::SNAPSHOT_MAX;
const FIX: TaskResult = TaskResult::Location {
    lat_e7: 525_200_000,
    lon_e7: 134_050_000,
    accuracy_m: 12,
};

#[entry]
fn main() -> ! {
    hprintln!("firmware: mdm-sync device engine on Cortex-M4 (QEMU mps2-an386), no allocator");
    hprintln!(
        "firmware: size_of::<Device>() = {} bytes (OUTBOX {}, INFLIGHT {})",
        size_of::<Device>(),
        DEFAULT_OUTBOX,
        DEFAULT_INFLIGHT
    );
    let mut w = World::new();

    w.device.handle_timeout(w.now);
    w.run_until(|w| w.done == Some(SyncTrigger::Boot));
    hprintln!("step 1 ok: boot sync");

    push_and_tasks(&mut w);
    hprintln!("step 2 ok: push -> sync -> lock and locate executed once, status reported");

    compliance_offline(&mut w);
    hprintln!("step 3 ok: compliance event retried (at most a minute apart) and acked once");

    reboot(&mut w);
    hprintln!("step 4 ok: state restored from the A/B snapshot slots");

    hprintln!("firmware: all steps passed");
    debug::exit(debug::EXIT_SUCCESS);
    loop {
        cortex_m::asm::wfi();
    }
}

fn push_and_tasks(w: &mut World) {
    w.now = w.now + Duration::from_mins(10);
    w.device.handle_timeout(w.now);
    w.peer.queue(101, TaskKind::Lock);
    w.peer.queue(102, TaskKind::Locate);
    hprintln!("server: push sent (content-free \"sync now\")");
    hprintln!("device: t={} push received", T(w.now));
    w.device.push_received(w.now);
    w.run_until(|w| w.done == Some(SyncTrigger::Push) && !w.device.is_connected());

    let lock = Seen::Status(TaskStatus::Succeeded { result: None });
    assert!(w.peer.seen(101) == Some(lock), "lock not reported");
    let located = TaskStatus::Succeeded { result: Some(FIX) };
    assert!(
        w.peer.seen(102) == Some(Seen::Status(located)),
        "locate not reported"
    );
    assert!(w.device.stats().executed == 2 && w.device.outbox_len() == 0);
}

fn compliance_offline(w: &mut World) {
    w.now = w.now + Duration::from_hours(1);
    w.device.handle_timeout(w.now);
    w.network_up = false;
    w.network_back = w.now + Duration::from_secs(150);
    w.attempts = 0;
    w.last_attempt = None;
    w.max_gap = Duration::ZERO;
    hprintln!(
        "device: t={} compliance event: USB debugging switched on (network down until t={})",
        T(w.now),
        T(w.network_back)
    );
    let event = ComplianceEvent::UsbDebugging { enabled: true };
    w.device
        .raise_compliance(event, w.now)
        .expect("outbox has room");
    w.run_until(|w| w.peer.compliance == 1 && !w.device.is_connected());

    assert!(w.attempts >= 2, "the first attempt must fail");
    assert!(
        w.max_gap <= Duration::from_mins(1),
        "retries more than a minute apart"
    );
    assert!(w.device.outbox_len() == 0);
    hprintln!(
        "device: compliance event delivered on attempt {}; longest gap between attempts {} s",
        w.attempts,
        w.max_gap.as_secs()
    );
}

fn reboot(w: &mut World) {
    let a = &w.slots[0][..w.lens[0]];
    let b = &w.slots[1][..w.lens[1]];
    let latest = pick_latest(a, b).expect("a valid snapshot");
    let counter = snapshot_counter(latest).expect("valid");
    let restored: Device = Device::restore(config(), latest, w.now).expect("restores");
    hprintln!(
        "device: reboot: restored snapshot #{} ({} bytes): last task seq {}, {} report(s) unacked",
        counter,
        latest.len(),
        restored.last_task_seq(),
        restored.outbox_len()
    );
    assert!(restored.last_task_seq() == 2);
    w.device = restored;
    w.link_open = false;
    w.device.handle_timeout(w.now);
    // The restored outbox holds the compliance report (acks are not persisted);
    // the server's welcome acks it again and it is not stored twice.
    w.run_until(|w| w.done.is_some() && !w.device.is_connected());
    assert!(
        w.device.outbox_len() == 0 && w.peer.compliance == 1,
        "stored twice"
    );
    assert!(w.device.stats().executed == 0, "a task ran twice");
    hprintln!(
        "firmware: {} snapshots written, largest {} bytes (bound {})",
        w.persists,
        w.max_snapshot,
        SNAP
    );
}

fn config() -> DeviceConfig {
    let secret = mdm_sync::auth::derive_secret(&MASTER, DEVICE, GENERATION);
    DeviceConfig::new(DEVICE, GENERATION, secret, Platform::Android)
}

/// The device, its application, the scripted server and the wire between.
struct World {
    now: Instant,
    device: Device,
    peer: Peer,
    up: Pipe,
    down: Pipe,
    link_open: bool,
    network_up: bool,
    network_back: Instant,
    /// A locate task waiting for its GPS fix, and when the fix comes.
    fix_due: Option<(TaskId, Instant)>,
    slots: [[u8; SNAP]; 2],
    lens: [usize; 2],
    persists: u32,
    max_snapshot: usize,
    attempts: u32,
    last_attempt: Option<Instant>,
    max_gap: Duration,
    done: Option<SyncTrigger>,
}

impl World {
    fn new() -> Self {
        let now = Instant::ZERO;
        Self {
            now,
            device: Device::new(config(), now),
            peer: Peer::new(&MASTER, DEVICE, GENERATION, NONCE_SEED),
            up: Pipe::new(),
            down: Pipe::new(),
            link_open: false,
            network_up: true,
            network_back: now,
            fix_due: None,
            slots: [[0; SNAP]; 2],
            lens: [0; 2],
            persists: 0,
            max_snapshot: 0,
            attempts: 0,
            last_attempt: None,
            max_gap: Duration::ZERO,
            done: None,
        }
    }

    /// Runs the engine loop until `cond` holds while nothing is in flight.
    fn run_until(&mut self, cond: impl Fn(&World) -> bool) {
        self.done = None;
        for _ in 0..10_000 {
            if self.step() {
                continue;
            }
            if cond(self) {
                return;
            }
            self.advance();
        }
        panic!("script stalled at t={}", T(self.now));
    }

    /// One pass of the run loop; `false` when nothing happened.
    fn step(&mut self) -> bool {
        let mut busy = false;
        while let Some(ev) = self.device.poll_event() {
            busy = true;
            self.on_event(ev);
        }
        let mut tx = [0u8; MAX_FRAME];
        while let Some(n) = self.device.poll_transmit(&mut tx).expect("frame fits") {
            busy = true;
            self.up.write(&tx[..n]);
        }
        if !self.link_open {
            return busy;
        }
        let mut chunk = [0u8; 64];
        while !self.up.is_empty() {
            let n = self.up.read(&mut chunk);
            self.peer.on_bytes(&chunk[..n], &mut self.down);
            busy = true;
        }
        // Odd chunks: the engine's decoder reassembles frames cut anywhere.
        let mut chunk = [0u8; 7];
        while !self.down.is_empty() {
            let n = self.down.read(&mut chunk);
            busy = true;
            if self.device.handle_bytes(&chunk[..n], self.now).is_err() {
                break;
            }
        }
        busy
    }

    /// Jumps the clock to the next thing that will happen.
    fn advance(&mut self) {
        let mut next = self.device.poll_timeout().unwrap_or(Instant::MAX);
        if let Some((_, due)) = self.fix_due {
            next = next.min(due);
        }
        if !self.network_up {
            next = next.min(self.network_back);
        }
        self.now = self.now.max(next);
        if !self.network_up && self.now >= self.network_back {
            self.network_up = true;
            hprintln!("network: t={} back up", T(self.now));
        }
        if let Some((task, _)) = self.fix_due.filter(|(_, due)| self.now >= *due) {
            self.fix_due = None;
            hprintln!(
                "device: t={} task {} locate: GPS fix, reporting location",
                T(self.now),
                task.0
            );
            let status = TaskStatus::Succeeded { result: Some(FIX) };
            self.device
                .task_status(task, status, self.now)
                .expect("running");
        }
        self.device.handle_timeout(self.now);
    }

    fn on_event(&mut self, ev: Event) {
        let now = self.now;
        match ev {
            Event::Persist => self.persist(),
            Event::Connect => self.connect(),
            Event::Disconnect => {
                self.link_open = false;
                self.peer.close();
            }
            Event::Execute(task) => self.execute(task),
            Event::Cancel(task) => {
                let _ = self.device.task_status(task, TaskStatus::Cancelled, now);
            }
            Event::ApplyPolicy { version } => {
                let outcome = mdm_sync::wire::PolicyOutcome::Applied;
                let _ = self.device.policy_applied(version, outcome, now);
            }
            Event::SyncDone { trigger } => {
                hprintln!("device: t={} sync done (trigger {:?})", T(now), trigger);
                self.done = Some(trigger);
            }
            Event::SyncFailed { error } => {
                let next = self.device.poll_timeout().unwrap_or(Instant::MAX);
                let wait = next.saturating_since(now);
                hprintln!(
                    "device: t={} sync failed: {:?}; retry in {} s",
                    T(now),
                    error,
                    S(wait)
                );
            }
            _ => {}
        }
    }

    fn persist(&mut self) {
        let slot = self.device.snapshot_slot();
        let n = self
            .device
            .snapshot(&mut self.slots[slot])
            .expect("fits SNAPSHOT_MAX");
        self.lens[slot] = n;
        self.persists += 1;
        self.max_snapshot = self.max_snapshot.max(n);
    }

    fn connect(&mut self) {
        self.attempts += 1;
        let gap = self
            .last_attempt
            .map(|last| self.now.saturating_since(last));
        self.max_gap = self.max_gap.max(gap.unwrap_or(Duration::ZERO));
        self.last_attempt = Some(self.now);
        if !self.network_up {
            hprintln!(
                "device: t={} connect refused (attempt {})",
                T(self.now),
                self.attempts
            );
            self.device.connect_failed(self.now);
            return;
        }
        match gap {
            Some(gap) => hprintln!(
                "device: t={} connected (attempt {}, {} s after the previous)",
                T(self.now),
                self.attempts,
                S(gap)
            ),
            None => hprintln!(
                "device: t={} connected (attempt {})",
                T(self.now),
                self.attempts
            ),
        }
        self.up.clear();
        self.down.clear();
        self.link_open = true;
        self.peer.accept();
        self.device.connected(self.now);
    }

    fn execute(&mut self, task: Task) {
        let (id, now) = (task.id, self.now);
        let kind = kind_name(task.kind);
        match task.kind {
            TaskKind::Lock => {
                hprintln!("device: t={} task {} {}: screen locked", T(now), id.0, kind);
                let status = TaskStatus::Succeeded { result: None };
                self.device.task_status(id, status, now).expect("running");
            }
            TaskKind::Locate => {
                hprintln!(
                    "device: t={} task {} {}: started, waiting for a fix",
                    T(now),
                    id.0,
                    kind
                );
                self.device.task_progress(id, Some(50)).expect("running");
                self.fix_due = Some((id, now + Duration::from_secs(4)));
            }
            _ => {
                let status = TaskStatus::Failed {
                    reason: mdm_sync::wire::reason::UNSUPPORTED,
                };
                self.device.task_status(id, status, now).expect("running");
            }
        }
    }
}

/// An instant printed as seconds with milliseconds.
struct T(Instant);

impl fmt::Display for T {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}s", S(self.0.saturating_since(Instant::ZERO)))
    }
}

/// A duration printed as seconds with milliseconds.
struct S(Duration);

impl fmt::Display for S {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        write!(f, "{}.{:03}", ms / 1000, ms % 1000)
    }
}
