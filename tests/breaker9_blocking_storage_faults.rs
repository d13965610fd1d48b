//! The blocking device adapter over a snapshot storage that fails in every
//! way a flash or file store can, chosen by a seeded generator, against the
//! sans-IO server in the same process:
//!
//! - a write refused (nothing changed), a write that landed but reported an
//!   error (the sync after it failed), a write torn in half followed by a
//!   power loss (the device boots again from what the slots hold);
//! - a storage that succeeds only every other time;
//! - a read at boot that fails (boot is retried);
//! - a power loss between any two `run_once` calls.
//! - (third test) a newest snapshot that is corrupted at boot, so the device
//!   restores the one before it, older than what already left the device.
//!
//! What must hold (PROTOCOL.md 7.5, 9.4, 14; the `Event::Persist` rule):
//! - every task is handed to the handler at most once over all boots, but
//!   for the documented limit of a lost newest snapshot (third test): a
//!   task the server held no report of when the snapshot was lost (still
//!   `Offered`) may be handed out once more per such loss. Its ledger entry
//!   was in the lost snapshot only, and the older one restored looks like a
//!   torn write, after which offering the task again is right. (The third
//!   test's first 12 seeds happened to hit no such task; seeds up to 80
//!   hit one in about one run in eight.)
//! - every compliance event is stored by the server at most once (each one
//!   raised here is distinct), and every one raised once the storage is
//!   healthy again is stored exactly once;
//! - nothing leaves the device before the snapshot it depends on is on the
//!   storage: a `Hello` never claims a task sequence the newest valid
//!   snapshot does not hold, and a `Report` is never sent with a sequence
//!   that snapshot has not assigned;
//! - no panic; each failure is a typed `Error::Storage`.
//!
//! Found on main by the third test: after such a boot the server's
//! `Welcome.ack` is ahead of every report the restored engine assigned, and
//! the engine renumbered its whole outbox from `ack + 1`, including reports
//! the server had already stored and acknowledged (they were in the older
//! snapshot's outbox): the server stored the same compliance event up to
//! three times. Fixed in `adopt_server_numbering`: reports that were on the
//! wire and are covered by the ack are dropped before renumbering.
//!
//! The checks are independent of the engine: the snapshot header is read at
//! the offsets PROTOCOL.md 14 gives, and the server's own events are counted.
#![cfg(feature = "tokio")]

mod common;

use core::cell::RefCell;
use core::time::Duration as Wall;
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::rc::Rc;

use common::Rng;
use mdm_sync::adapters::blocking::{
    BlockingDevice, Error, Execution, Handler, MemoryStorage, Storage, Transport,
};
use mdm_sync::adapters::clock::{Clock, ScaledClock};
use mdm_sync::device::{
    pick_latest, snapshot_counter, DeviceConfig, DEFAULT_INFLIGHT, DEFAULT_OUTBOX,
};
use mdm_sync::server::{ConnId, MemoryStore, Server, ServerConfig, ServerEvent, TaskState};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::{
    self, frame, ComplianceEvent, DeviceId, Down, FrameDecoder, Platform, Policy, PolicyOutcome,
    Task, TaskId, TaskKind, TaskStatus, Up, MAX_FRAME,
};

const DEV: DeviceId = DeviceId(3);

// ---- storage with faults on a script ----------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    Refused,
    LandedThenError,
    TornPowerLoss,
    ReadFailed,
}

struct Faulty {
    mem: Rc<RefCell<MemoryStorage>>,
    rng: Rng,
    /// Faults happen only while this is set.
    hostile: bool,
    /// Every other write fails (refused), instead of random faults.
    alternate: bool,
    attempts: u64,
}

impl Storage for Faulty {
    type Error = Fault;

    fn load(&mut self, slot: usize, buf: &mut Vec<u8>) -> Result<(), Fault> {
        if self.hostile && self.rng.below(4) == 0 {
            return Err(Fault::ReadFailed);
        }
        let Ok(()) = self.mem.borrow_mut().load(slot, buf);
        Ok(())
    }

    fn store(&mut self, slot: usize, bytes: &[u8]) -> Result<(), Fault> {
        self.attempts += 1;
        if self.hostile {
            if self.alternate {
                if self.attempts.is_multiple_of(2) {
                    return Err(Fault::Refused);
                }
            } else {
                match self.rng.below(10) {
                    0 | 1 => return Err(Fault::Refused),
                    2 => {
                        let Ok(()) = self.mem.borrow_mut().store(slot, bytes);
                        return Err(Fault::LandedThenError);
                    }
                    3 => {
                        let half = bytes.get(..bytes.len() / 2).unwrap_or(&[]);
                        let Ok(()) = self.mem.borrow_mut().store(slot, half);
                        return Err(Fault::TornPowerLoss);
                    }
                    _ => {}
                }
            }
        }
        let Ok(()) = self.mem.borrow_mut().store(slot, bytes);
        Ok(())
    }
}

/// `last_task_seq` and `next_report_seq` of the newest valid snapshot on the
/// storage (PROTOCOL.md 14: header offsets 21 and 25, little-endian).
fn stored_seqs(mem: &MemoryStorage) -> Option<(u32, u32)> {
    let bytes = pick_latest(mem.slot(0), mem.slot(1))?;
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    Some((word(21)?, word(25)?))
}

// ---- the server, reached through an in-process transport --------------------

struct Hub {
    server: Server<MemoryStore>,
    clock: ScaledClock,
    mem: Rc<RefCell<MemoryStorage>>,
    compliance: Vec<ComplianceEvent>,
    /// Frames the device sent that were checked against the storage.
    checked_hellos: usize,
    checked_reports: usize,
    violations: Vec<String>,
}

type SharedHub = Rc<RefCell<Hub>>;

impl Hub {
    fn drain(&mut self) {
        while let Some(ev) = self.server.poll_event() {
            if let ServerEvent::Compliance { event, .. } = ev {
                self.compliance.push(event);
            }
        }
    }

    /// Checks one frame the device is sending against the storage.
    fn check(&mut self, up: &Up) {
        let Some((last_task_seq, next_report_seq)) = stored_seqs(&self.mem.borrow()) else {
            self.violations
                .push(format!("{up:?} sent with no valid snapshot stored"));
            return;
        };
        match up {
            Up::Hello(h) => {
                self.checked_hellos += 1;
                if h.last_task_seq > last_task_seq {
                    self.violations.push(format!(
                        "Hello claims task seq {} but storage holds {}",
                        h.last_task_seq, last_task_seq
                    ));
                }
            }
            Up::Report { seq, .. } => {
                self.checked_reports += 1;
                if *seq >= next_report_seq {
                    self.violations.push(format!(
                        "Report {seq} sent but storage's next report seq is {next_report_seq}"
                    ));
                }
            }
            _ => {}
        }
    }
}

struct Link {
    hub: SharedHub,
    conn: ConnId,
    decoder: FrameDecoder<MAX_FRAME>,
}

impl Read for Link {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut h = self.hub.borrow_mut();
        h.drain();
        if let Some(n) = h.server.poll_transmit_for(self.conn, buf) {
            // The server's Challenge keys the device's later frames: follow it
            // to decode them. The server writes whole frames per call.
            let mut down = FrameDecoder::<MAX_FRAME>::new();
            down.push(buf.get(..n).unwrap_or(&[]));
            while let Some(frame) = down.decode() {
                if let Ok(Ok(Down::Challenge { nonce, .. })) = frame.map(wire::decode::<Down>) {
                    self.decoder.set_key(frame::session_key(&nonce));
                }
            }
            return Ok(n);
        }
        Err(io::ErrorKind::WouldBlock.into())
    }
}

impl Write for Link {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut h = self.hub.borrow_mut();
        let mut rest = buf;
        while !rest.is_empty() {
            let n = self.decoder.push(rest);
            rest = rest.get(n..).unwrap_or(&[]);
            while let Some(frame) = self.decoder.decode() {
                if let Ok(up) = frame
                    .map_err(drop)
                    .and_then(|p| wire::decode::<Up>(p).map_err(drop))
                {
                    h.check(&up);
                }
            }
        }
        let now = h.clock.now();
        let _ = h.server.handle_bytes(self.conn, buf, now);
        h.drain();
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for Link {
    fn set_read_timeout(&mut self, _timeout: Option<Wall>) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let mut h = self.hub.borrow_mut();
        let now = h.clock.now();
        h.server.connection_closed(self.conn, now);
    }
}

// ---- the device application ---------------------------------------------------

#[derive(Default)]
struct Agent {
    runs: HashMap<TaskId, u32>,
}

impl Handler for Agent {
    fn execute(&mut self, task: Task, _now: Instant) -> Execution {
        *self.runs.entry(task.id).or_default() += 1;
        Execution::Done(TaskStatus::Succeeded { result: None })
    }
    fn apply_policy(&mut self, _policy: &Policy, _now: Instant) -> PolicyOutcome {
        PolicyOutcome::Applied
    }
}

type Connect = Box<dyn FnMut() -> io::Result<Link>>;
type Dev = BlockingDevice<Connect, Faulty, Agent>;

/// Boots from what the storage holds (its reads work while booting; read
/// failures at boot are exercised separately through `load_device`).
fn boot(hub: &SharedHub, cfg: &DeviceConfig, storage: Faulty, agent: Agent) -> Dev {
    let clock = hub.borrow().clock;
    let h = hub.clone();
    let connect: Connect = Box::new(move || {
        let mut hb = h.borrow_mut();
        let now = hb.clock.now();
        let conn = hb
            .server
            .connection_opened(now)
            .map_err(|e| io::Error::other(format!("{e:?}")))?;
        Ok(Link {
            hub: h.clone(),
            conn,
            decoder: FrameDecoder::new(),
        })
    });
    match BlockingDevice::boot(cfg.clone(), connect, storage, agent, clock) {
        Ok(dev) => dev,
        Err(e) => panic!("boot failed: {e}"),
    }
}

fn run(seed: u64, alternate: bool, rollback: bool) {
    let clock = ScaledClock::scaled(1000.0);
    let mem = Rc::new(RefCell::new(MemoryStorage::new()));
    let mut server = Server::new(
        ServerConfig::default(),
        MemoryStore::new(),
        [5; 32],
        [6; 32],
    );
    let secret = server.enroll(DEV, clock.now()).unwrap();
    let hub = Rc::new(RefCell::new(Hub {
        server,
        clock,
        mem: mem.clone(),
        compliance: Vec::new(),
        checked_hellos: 0,
        checked_reports: 0,
        violations: Vec::new(),
    }));
    let mut cfg = DeviceConfig::new(DEV, 0, secret, Platform::Android);
    cfg.timers.backoff_min = Duration::from_millis(500);
    cfg.timers.backoff_max = Duration::from_secs(2);
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut storage = Faulty {
        mem: mem.clone(),
        rng: Rng(seed | 1),
        hostile: false,
        alternate,
        attempts: 0,
    };
    let mut agent = Agent::default();
    let mut tasks: Vec<TaskId> = Vec::new();
    let mut raised: Vec<ComplianceEvent> = Vec::new();
    let mut power_losses = 0;
    // Tasks still `Offered` at each loss of the newest snapshot: runs
    // allowed beyond the first.
    let mut at_risk: HashMap<TaskId, u32> = HashMap::new();
    let mut storage_errors = 0;

    // Hostile phase: faults everywhere, reboots at random.
    'outer: for _ in 0..12 {
        if rollback && rng.below(3) == 0 {
            let h = hub.borrow();
            for t in &tasks {
                if h.server.task_state(DEV, *t) == Some(TaskState::Offered) {
                    *at_risk.entry(*t).or_insert(0) += 1;
                }
            }
            drop(h);
            roll_back(&mut mem.borrow_mut());
        }
        let mut booted = None;
        for _ in 0..50 {
            storage.hostile = rng.below(2) == 0;
            let c = hub.borrow().clock;
            match mdm_sync::adapters::blocking::load_device::<_, DEFAULT_OUTBOX, DEFAULT_INFLIGHT>(
                cfg.clone(),
                &mut storage,
                c.now(),
            ) {
                Err(Error::Storage(Fault::ReadFailed)) => continue,
                Err(e) => panic!("seed {seed}: boot: {e}"),
                Ok(_) => {
                    booted = Some(());
                    break;
                }
            }
        }
        assert!(booted.is_some(), "seed {seed}: boot never read its slots");
        storage.hostile = false;
        let mut dev = boot(&hub, &cfg, storage, agent);
        dev.storage_mut().hostile = true;
        for _ in 0..(20 + rng.below(40)) {
            match rng.below(12) {
                0 => {
                    let mut h = hub.borrow_mut();
                    let now = h.clock.now();
                    if let Ok(t) =
                        h.server
                            .enqueue_task(DEV, TaskKind::Lock, Default::default(), now)
                    {
                        tasks.push(t);
                    }
                    drop(h);
                    dev.push_received();
                }
                1 => {
                    let ev = ComplianceEvent::PasswordOverdue {
                        days: raised.len() as u16,
                    };
                    if dev.raise_compliance(ev).is_ok() {
                        raised.push(ev);
                    }
                }
                _ => {}
            }
            match dev.run_once() {
                Ok(wait) => std::thread::sleep(wait.min(Wall::from_millis(1))),
                Err(Error::Storage(Fault::TornPowerLoss)) => {
                    power_losses += 1;
                    let (_, s, a) = dev.into_parts();
                    storage = s;
                    agent = a;
                    continue 'outer;
                }
                Err(Error::Storage(_)) => storage_errors += 1,
                Err(e) => panic!("seed {seed}: {e}"),
            }
            if rng.below(25) == 0 {
                break;
            }
        }
        // Power loss between two calls.
        power_losses += 1;
        let (_, s, a) = dev.into_parts();
        storage = s;
        agent = a;
    }

    // Healthy phase: the storage works; everything settles.
    storage.hostile = false;
    let mut dev = boot(&hub, &cfg, storage, agent);
    let healthy_from = raised.len();
    for i in 0..3u16 {
        let ev = ComplianceEvent::PasswordOverdue { days: 1000 + i };
        dev.raise_compliance(ev).unwrap();
        raised.push(ev);
    }
    dev.manual_sync();
    let mut settled = false;
    for _ in 0..5000 {
        let wait = dev.run_once().unwrap();
        let h = hub.borrow();
        let all_final = tasks
            .iter()
            .all(|t| h.server.task_state(DEV, *t).is_some_and(|s| s.is_final()));
        if all_final && dev.device().outbox_len() == 0 && !dev.is_connected() {
            settled = true;
            break;
        }
        drop(h);
        std::thread::sleep(wait.min(Wall::from_millis(1)));
    }
    let h = hub.borrow();
    assert!(settled, "seed {seed}: the device never settled");
    assert!(h.violations.is_empty(), "seed {seed}: {:?}", h.violations);
    assert!(
        h.checked_hellos > 0 && h.checked_reports > 0,
        "seed {seed}: nothing was checked"
    );
    let mut reruns = 0;
    for (task, runs) in &dev.handler().runs {
        let allowed = 1 + at_risk.get(task).copied().unwrap_or(0);
        assert!(
            *runs <= allowed,
            "seed {seed}: task {task:?} ran {runs} times ({allowed} allowed)"
        );
        reruns += runs - 1;
    }
    for ev in &raised {
        let n = h.compliance.iter().filter(|e| *e == ev).count();
        assert!(n <= 1, "seed {seed}: {ev:?} stored {n} times");
    }
    for ev in &raised[healthy_from..] {
        let n = h.compliance.iter().filter(|e| *e == ev).count();
        assert_eq!(
            n, 1,
            "seed {seed}: {ev:?} raised on healthy storage, stored {n} times"
        );
    }
    eprintln!(
        "seed {seed}: {} tasks, {} events, {power_losses} power losses, {storage_errors} storage errors, {} hellos and {} reports checked, {reruns} runs again after a lost snapshot",
        tasks.len(),
        raised.len(),
        h.checked_hellos,
        h.checked_reports
    );
}

/// Corrupts the newest valid snapshot (a read that comes back damaged, or
/// flash that lost it): the next boot restores the one before it, which
/// may be older than what already left the device (PROTOCOL.md 9.4 says how
/// both sides recover).
fn roll_back(mem: &mut MemoryStorage) {
    let counter = |slot: usize, mem: &MemoryStorage| snapshot_counter(mem.slot(slot)).ok();
    let newest = match (counter(0, mem), counter(1, mem)) {
        (Some(a), Some(b)) => usize::from(b > a),
        (Some(_), None) => 0,
        (None, Some(_)) => 1,
        (None, None) => return,
    };
    if let Some(byte) = mem.slot_mut(newest).and_then(|s| s.get_mut(30)) {
        *byte ^= 0x55;
    }
}

#[test]
fn random_storage_faults_keep_tasks_once_and_reports_persisted_first() {
    for seed in 1..=12 {
        run(seed, false, false);
    }
}

#[test]
fn storage_that_works_every_other_time() {
    for seed in 1..=4 {
        run(seed, true, false);
    }
}

#[test]
fn storage_that_rolls_back_to_the_older_slot_at_boot() {
    // `B9_SEEDS=N` runs seeds 1 to N.
    let seeds = std::env::var("B9_SEEDS").map_or(12, |v| v.parse().unwrap());
    for seed in 1..=seeds {
        run(seed, false, true);
    }
}
