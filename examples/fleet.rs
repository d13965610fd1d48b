//! The fleet simulation: one server, N devices, real loopback sockets.
//!
//! ```text
//! cargo run --release --example fleet -- --devices 1000 --push-loss 0.3
//! ```
//!
//! The server runs on the tokio adapter on 127.0.0.1 (ephemeral port). Each
//! device is a blocking adapter with in-memory A/B snapshot storage; a bounded
//! pool of OS threads runs whichever devices have something to do, and every
//! sync opens its own TCP connection. Pushes travel as loopback UDP datagrams
//! through one shared receiving socket; the simulated push service loses a
//! share of them. A console script queues tasks of every kind, cancels a few,
//! and assigns three policy versions; devices raise compliance events, press
//! "synchronize", go offline and reboot, and a few crash in the middle of a
//! snapshot write. The clock runs `--time-scale` times faster than real time,
//! so the 3-hour periodic sync and the 1-minute compliance retry fire.
//!
//! After the script the fleet is left to converge, then every guarantee is
//! checked against what the devices themselves recorded: tasks executed at
//! most once and at least once, every status and compliance event stored
//! exactly once and in order, every device on its latest policy. The exit code
//! is 0 only if all of them held.
//!
//! With `--server-restarts N` the server process is stopped N times during
//! the script and started again over the same store, as a server with a
//! database restarts: its connections drop, what it held in memory only is
//! gone, and the new engine rebuilds it with `Server::recover`. The same
//! guarantees are checked.

use core::cmp::Reverse;
use core::net::SocketAddr;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use core::time::Duration as Wall;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::process::ExitCode;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant as WallInstant;

use mdm_sync::adapters::blocking::{
    self, BlockingDevice, Connector, Execution, Handler, MemoryStorage, Storage, TaskUpdate,
    TcpConnector,
};
use mdm_sync::adapters::clock::{Clock, ScaledClock};
use mdm_sync::adapters::push::{PushError, PushSender, UdpPushReceiver, UdpPushSender};
use mdm_sync::adapters::tokio::{serve, Builder, ServerHandle};
use mdm_sync::device::{DeviceConfig, DeviceTimers};
use mdm_sync::server::{
    FleetView, MemoryStore, Recovered, Server, ServerConfig, ServerEvent, SupersedeKey,
    TaskOptions, TaskState,
};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::{
    reason, ComplianceEvent, DeviceId, Platform, Policy, PolicyOutcome, Setting, SettingFailure,
    SyncTrigger, Task, TaskId, TaskKind, TaskResult, TaskStatus,
};

const HELP: &str = "\
fleet: one mdm-sync server and a fleet of simulated devices on loopback sockets

USAGE:
    cargo run --release --example fleet -- [OPTIONS]

OPTIONS:
    --devices N            devices in the fleet                     [default: 1000]
    --tasks-per-device N   tasks queued per device                  [default: 3]
    --push-loss P          share of pushes the push service drops   [default: 0.3]
    --offline-share P      share of devices that go offline, then
                           reboot from their snapshot               [default: 0.1]
    --crash-share P        share of devices that lose power in the
                           middle of a snapshot write               [default: 0.02]
    --seed N               seed of the script                       [default: 1]
    --time-scale X         simulated seconds per real second        [default: 3000]
    --threads N            OS threads running the devices           [default: 32]
    --max-wall SECS        wall-clock limit, script included        [default: 50]
    --server-restarts N    stop the server N times during the script
                           and start it again over the same store,
                           with Server::recover; at most 20         [default: 0]
    -h, --help             this text

The script covers 4.5 simulated hours; the fleet then converges (lost pushes
are covered by the 3-hour periodic sync). Options under which that cannot
happen before --max-wall are refused; a run whose device threads fall
behind the clock (more devices than this machine keeps up with at this
time scale) says so when it fails. Exit code 0: every guarantee held;
1: a guarantee failed; 2: bad arguments.";

// ---- command line ---------------------------------------------------------

#[derive(Clone, Debug)]
struct Opts {
    devices: usize,
    tasks_per_device: usize,
    push_loss: f64,
    offline_share: f64,
    crash_share: f64,
    seed: u64,
    time_scale: f64,
    threads: usize,
    max_wall: f64,
    server_restarts: usize,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            devices: 1000,
            tasks_per_device: 3,
            push_loss: 0.3,
            offline_share: 0.1,
            crash_share: 0.02,
            seed: 1,
            time_scale: 3000.0,
            threads: 32,
            max_wall: 50.0,
            server_restarts: 0,
        }
    }
}

/// `Ok(None)` means `--help` was asked for.
fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Option<Opts>, String> {
    let mut o = Opts::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(None);
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--devices" => o.devices = int(&flag, &value()?, 1, 100_000)?,
            "--tasks-per-device" => o.tasks_per_device = int(&flag, &value()?, 0, 60)?,
            "--push-loss" => o.push_loss = share(&flag, &value()?)?,
            "--offline-share" => o.offline_share = share(&flag, &value()?)?,
            "--crash-share" => o.crash_share = share(&flag, &value()?)?,
            "--seed" => o.seed = int(&flag, &value()?, 0, usize::MAX)? as u64,
            "--time-scale" => o.time_scale = float(&flag, &value()?, 1.0, 100_000.0)?,
            "--threads" => o.threads = int(&flag, &value()?, 1, 1024)?,
            "--max-wall" => o.max_wall = float(&flag, &value()?, 1.0, 3600.0)?,
            "--server-restarts" => o.server_restarts = int(&flag, &value()?, 0, 20)?,
            _ => return Err(format!("unknown option {arg}")),
        }
    }
    check_can_converge(&o)?;
    Ok(Some(o))
}

/// Simulated minutes the script runs (see `make_script`).
const SCRIPT_MINUTES: u64 = 270;

/// Refuses options under which the fleet cannot converge before `--max-wall`:
/// the script must run to its end, and when pushes are lost, a device whose
/// last push was lost recovers only at its 3-hour periodic sync after the
/// script. (Without push loss, offline devices come back by minute 300.)
fn check_can_converge(o: &Opts) -> Result<(), String> {
    let minutes = if o.push_loss > 0.0 {
        SCRIPT_MINUTES + 180
    } else {
        300
    };
    let wall = (minutes * 60) as f64 / o.time_scale;
    if wall > o.max_wall {
        return Err(format!(
            "--time-scale {} needs {wall:.0} s of wall time for {minutes} simulated \
             minutes (the script{}), past --max-wall {}: raise one of them",
            o.time_scale,
            if o.push_loss > 0.0 {
                ", then the 3-hour periodic sync that recovers lost pushes"
            } else {
                " and offline devices coming back"
            },
            o.max_wall
        ));
    }
    Ok(())
}

fn int(flag: &str, v: &str, min: usize, max: usize) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        // Digits only, too many for a `usize`: out of range as well.
        Ok(_) | Err(_) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
            Err(format!("{flag} must be between {min} and {max}, got {v}"))
        }
        _ => Err(format!("{flag} needs a whole number, got {v:?}")),
    }
}

fn float(flag: &str, v: &str, min: f64, max: f64) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(x) if (min..=max).contains(&x) => Ok(x),
        Ok(_) => Err(format!("{flag} must be between {min} and {max}, got {v}")),
        Err(_) => Err(format!("{flag} needs a number, got {v:?}")),
    }
}

fn share(flag: &str, v: &str) -> Result<f64, String> {
    float(flag, v, 0.0, 1.0)
}

// ---- small helpers ----------------------------------------------------------

/// splitmix64: the script's only source of randomness.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// A uniform instant in `[from, to)` minutes of simulated time.
    fn minute_in(&mut self, from: u64, to: u64) -> Instant {
        let ms = from * 60_000 + self.below((to - from) * 60_000);
        Instant::from_millis(ms)
    }
}

fn mins(m: u64) -> Duration {
    Duration::from_mins(m)
}

fn at_min(m: u64) -> Instant {
    Instant::ZERO + mins(m)
}

/// `1h02m`, `3m20s`, `4.5s`.
fn fmt_sim(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, (s / 60) % 60, s % 60) {
        (0, 0, _) => format!("{:.1}s", d.as_millis() as f64 / 1000.0),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

// ---- counters shared by everyone -------------------------------------------

#[derive(Default)]
struct Counters {
    booted: AtomicU64,
    reboots: AtomicU64,
    crashes: AtomicU64,
    executed: AtomicU64,
    syncs: AtomicU64,
    sync_failures: AtomicU64,
    pushes_sent: AtomicU64,
    pushes_lost: AtomicU64,
    pushes_offline: AtomicU64,
    compliance_stored: AtomicU64,
    handshakes: [AtomicU64; 6],
    overdue: AtomicU64,
    auth_failed: AtomicU64,
    not_now: AtomicU64,
    deferred_events: AtomicU64,
    superseded_events: AtomicU64,
}

// ---- the server side: push service with loss ---------------------------------

/// The simulated push service: loses a share of pushes, sends the rest as
/// loopback UDP datagrams.
struct LossyPush {
    udp: UdpPushSender,
    rng: Rng,
    loss: f64,
    counters: Arc<Counters>,
}

impl PushSender for LossyPush {
    fn send_push(&mut self, device: DeviceId, p: Platform, token: &str) -> Result<(), PushError> {
        self.counters.pushes_sent.fetch_add(1, Relaxed);
        if self.rng.chance(self.loss) {
            self.counters.pushes_lost.fetch_add(1, Relaxed);
            return Ok(());
        }
        self.udp.send_push(device, p, token)
    }
}

/// What the server told the console, in order, per device.
#[derive(Default)]
struct ServerLog {
    compliance: HashMap<DeviceId, Vec<ComplianceEvent>>,
}

// ---- the device side ------------------------------------------------------------

/// Opens a TCP connection unless the device is offline.
struct SimConnector {
    tcp: TcpConnector,
    offline: Arc<AtomicBool>,
}

impl Connector for SimConnector {
    type Transport = std::net::TcpStream;

    fn connect(&mut self) -> io::Result<std::net::TcpStream> {
        if self.offline.load(Relaxed) {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "offline"));
        }
        self.tcp.connect()
    }
}

/// A simulated power loss in the middle of a snapshot write.
#[derive(Debug)]
struct PowerLoss;

/// In-memory A/B storage that can be told to tear a write (power loss).
struct SimStorage {
    mem: MemoryStorage,
    /// Successful writes so far, shared with the handler to tell which of its
    /// records were durable when power was lost.
    writes: Arc<AtomicU64>,
    /// Tear the write after this many more successful ones.
    tear_after: Option<u32>,
}

impl Storage for SimStorage {
    type Error = PowerLoss;

    fn load(&mut self, slot: usize, buf: &mut Vec<u8>) -> Result<(), PowerLoss> {
        let Ok(()) = self.mem.load(slot, buf);
        Ok(())
    }

    fn store(&mut self, slot: usize, bytes: &[u8]) -> Result<(), PowerLoss> {
        match self.tear_after {
            Some(0) => {
                self.tear_after = None;
                if let Some(s) = self.mem.slot_mut(slot) {
                    s.clear();
                    s.extend_from_slice(&bytes[..bytes.len() / 2]);
                }
                Err(PowerLoss)
            }
            n => {
                self.tear_after = n.map(|k| k - 1);
                let Ok(()) = self.mem.store(slot, bytes);
                self.writes.fetch_add(1, Relaxed);
                Ok(())
            }
        }
    }
}

/// One execution of a task, as the device saw it.
#[derive(Clone, Copy, Debug)]
struct Exec {
    task: TaskId,
    sim: Instant,
    wall: WallInstant,
}

/// What a device did, kept by the harness across reboots.
#[derive(Default)]
struct DevLog {
    executed: Vec<Exec>,
    /// Final status per task, with the number of snapshot writes that had
    /// succeeded when it was decided (it is durable once one more succeeds).
    finals: HashMap<TaskId, (TaskStatus, u64)>,
    syncs: [u64; 6],
}

struct Running {
    task: Task,
    progress_at: Option<Instant>,
    done_at: Instant,
}

/// The device application: runs tasks, applies policies, keeps the log.
struct SimHandler {
    rng: Rng,
    running: Vec<Running>,
    log: DevLog,
    writes: Arc<AtomicU64>,
    counters: Arc<Counters>,
}

impl SimHandler {
    fn record(&mut self, task: TaskId, status: TaskStatus) {
        let w = self.writes.load(Relaxed);
        self.log.finals.insert(task, (status, w));
    }

    /// The device restarts: running tasks are lost; after a power loss, so
    /// is every status decided after the last complete snapshot write. The
    /// engine reports all of those as interrupted by the reboot.
    fn reboot(&mut self, power_loss: bool) {
        let interrupted = TaskStatus::Failed {
            reason: reason::INTERRUPTED_BY_REBOOT,
        };
        let w = self.writes.load(Relaxed);
        for r in self.running.drain(..) {
            self.log.finals.insert(r.task.id, (interrupted, w));
        }
        if power_loss {
            for (status, stamp) in self.log.finals.values_mut() {
                if *stamp >= w {
                    *status = interrupted;
                }
            }
        }
    }

    fn result(&mut self, kind: TaskKind) -> Option<TaskResult> {
        match kind {
            TaskKind::Scan => Some(TaskResult::Scan {
                threats: (self.rng.below(10) / 8) as u16,
            }),
            TaskKind::Locate => Some(TaskResult::Location {
                lat_e7: 525_200_000 + self.rng.below(100_000) as i32,
                lon_e7: 134_050_000 + self.rng.below(100_000) as i32,
                accuracy_m: 5 + self.rng.below(50) as u32,
            }),
            _ => None,
        }
    }
}

impl Handler for SimHandler {
    fn execute(&mut self, task: Task, now: Instant) -> Execution {
        // Sometimes the user is in a call: "not now", ask again in ten minutes.
        // The task did not run, so it is not logged as executed.
        if task.kind != TaskKind::Lock && self.rng.chance(0.05) {
            self.counters.not_now.fetch_add(1, Relaxed);
            let status = TaskStatus::Deferred {
                retry_after_s: Some(600),
            };
            // Recorded like a final answer: if power fails before the snapshot
            // that holds it is written, the engine reports the task
            // interrupted (it cannot know the task did not run), and the
            // check below must expect exactly that.
            self.record(task.id, status);
            return Execution::Done(status);
        }
        self.log.executed.push(Exec {
            task: task.id,
            sim: now,
            wall: WallInstant::now(),
        });
        self.counters.executed.fetch_add(1, Relaxed);
        let (run_s, progress) = match task.kind {
            TaskKind::Scan => (120 + self.rng.below(480), true),
            TaskKind::Locate => (20 + self.rng.below(100), false),
            _ => (0, false),
        };
        if run_s > 0 {
            let done_at = now + Duration::from_secs(run_s);
            let progress_at = progress.then(|| now + Duration::from_secs(run_s / 2));
            self.running.push(Running {
                task,
                progress_at,
                done_at,
            });
            return Execution::Running;
        }
        let status = if task.kind == TaskKind::Lock && self.rng.chance(0.03) {
            TaskStatus::Failed { reason: 256 } // no screen lock configured
        } else {
            TaskStatus::Succeeded { result: None }
        };
        self.record(task.id, status);
        Execution::Done(status)
    }

    fn cancel(&mut self, task: TaskId, _now: Instant) -> Option<TaskStatus> {
        let pos = self.running.iter().position(|r| r.task.id == task)?;
        self.running.swap_remove(pos);
        self.record(task, TaskStatus::Cancelled);
        Some(TaskStatus::Cancelled)
    }

    fn apply_policy(&mut self, policy: &Policy, _now: Instant) -> PolicyOutcome {
        match policy.settings.first() {
            Some(s) if self.rng.chance(0.05) => {
                let mut failed = heapless::Vec::new();
                let _ = failed.push(SettingFailure {
                    key: s.key,
                    reason: 300,
                });
                PolicyOutcome::Partial { failed }
            }
            _ => PolicyOutcome::Applied,
        }
    }

    fn poll_update(&mut self, now: Instant) -> Option<TaskUpdate> {
        if let Some(r) = self
            .running
            .iter_mut()
            .find(|r| r.progress_at.is_some_and(|p| p <= now))
        {
            r.progress_at = None;
            return Some(TaskUpdate::Progress {
                task: r.task.id,
                percent: Some(50),
            });
        }
        let pos = self.running.iter().position(|r| r.done_at <= now)?;
        let r = self.running.swap_remove(pos);
        let result = self.result(r.task.kind);
        let status = TaskStatus::Succeeded { result };
        self.record(r.task.id, status);
        Some(TaskUpdate::Finished {
            task: r.task.id,
            status,
        })
    }

    fn next_update(&self) -> Option<Instant> {
        let at = |r: &Running| r.progress_at.map_or(r.done_at, |p| p.min(r.done_at));
        self.running.iter().map(at).min()
    }

    fn sync_done(&mut self, trigger: SyncTrigger, _now: Instant) {
        self.log.syncs[trigger.index()] += 1;
        self.counters.syncs.fetch_add(1, Relaxed);
    }

    fn sync_failed(&mut self, _error: mdm_sync::device::SessionError, _now: Instant) {
        self.counters.sync_failures.fetch_add(1, Relaxed);
    }
}

type Runner = BlockingDevice<SimConnector, SimStorage, SimHandler>;

/// Something that happens to a device, from the script or the push channel.
#[derive(Clone, Copy, Debug)]
enum Action {
    Push,
    Manual,
    Compliance(ComplianceEvent),
    GoOffline,
    /// Back online: the device reboots and restores its snapshot.
    ComeBack,
    /// Lose power during one of the next few snapshot writes.
    ArmPowerLoss(u32),
}

/// One simulated device, owned by whichever worker runs it.
struct Slot {
    cfg: DeviceConfig,
    runner: Option<Runner>,
    parts: Option<(SimConnector, SimStorage, SimHandler)>,
    /// Compliance events raised, with the snapshot writes done at the time.
    raised: Vec<(ComplianceEvent, u64)>,
    lost_in_power_loss: u64,
    refused: u64,
    error: Option<String>,
}

impl Slot {
    fn handler(&self) -> Option<&SimHandler> {
        match (&self.runner, &self.parts) {
            (Some(r), _) => Some(r.handler()),
            (None, Some((_, _, h))) => Some(h),
            _ => None,
        }
    }

    fn boot(&mut self, clock: ScaledClock) {
        let Some((conn, storage, handler)) = self.parts.take() else {
            return;
        };
        match BlockingDevice::boot(self.cfg.clone(), conn, storage, handler, clock) {
            Ok(r) => self.runner = Some(r),
            Err(e) => self.error = Some(format!("boot failed: {e}")),
        }
    }

    fn reboot(&mut self, clock: ScaledClock, power_loss: bool) {
        let Some(runner) = self.runner.take() else {
            return;
        };
        // A graceful reboot writes what is pending first; a power loss does not.
        let (runner, power_loss) = if power_loss {
            (runner, true)
        } else {
            match runner.shutdown() {
                Ok(parts) => return self.restart(parts, clock, false),
                Err((runner, _)) => (runner, true), // the write tore: a power loss
            }
        };
        let parts = runner.into_parts();
        self.restart(parts, clock, power_loss);
    }

    fn restart(
        &mut self,
        parts: (SimConnector, SimStorage, SimHandler),
        clock: ScaledClock,
        power_loss: bool,
    ) {
        let (conn, storage, mut handler) = parts;
        handler.reboot(power_loss);
        if power_loss {
            let w = storage.writes.load(Relaxed);
            let before = self.raised.len();
            self.raised.retain(|(_, stamp)| *stamp < w);
            self.lost_in_power_loss += (before - self.raised.len()) as u64;
        }
        self.parts = Some((conn, storage, handler));
        self.boot(clock);
    }

    fn apply(&mut self, action: Action, clock: ScaledClock) {
        let Some(r) = self.runner.as_mut() else {
            return;
        };
        match action {
            Action::Push => r.push_received(),
            Action::Manual => r.manual_sync(),
            Action::Compliance(e) => match r.raise_compliance(e) {
                Ok(()) => {
                    let w = r.storage().writes.load(Relaxed);
                    self.raised.push((e, w));
                }
                Err(_) => self.refused += 1, // outbox full: the app would retry
            },
            Action::GoOffline => r.connector_mut().offline.store(true, Relaxed),
            Action::ComeBack => {
                r.connector_mut().offline.store(false, Relaxed);
                self.reboot(clock, false);
            }
            Action::ArmPowerLoss(n) => r.storage_mut().tear_after = Some(n),
        }
    }
}

enum Sched {
    Wake(usize),
    Done { idx: usize, next: Instant },
}

/// The device fleet: slots, inboxes, the scheduler's channel.
struct Fleet {
    clock: ScaledClock,
    slots: Vec<Mutex<Slot>>,
    inbox: Vec<Mutex<Vec<Action>>>,
    offline: Vec<Arc<AtomicBool>>,
    sched: Mutex<mpsc::Sender<Sched>>,
    stop: AtomicBool,
    counters: Arc<Counters>,
}

impl Fleet {
    fn send(&self, idx: usize, action: Action) {
        if let Ok(mut inbox) = self.inbox[idx].lock() {
            inbox.push(action);
        }
        self.wake(idx);
    }

    fn wake(&self, idx: usize) {
        if let Ok(tx) = self.sched.lock() {
            let _ = tx.send(Sched::Wake(idx));
        }
    }

    /// Runs one device until it has nothing to do; returns its next deadline.
    fn run_device(&self, idx: usize) -> Instant {
        let Ok(mut slot) = self.slots[idx].lock() else {
            return Instant::MAX;
        };
        if slot.runner.is_none() && slot.error.is_none() {
            slot.boot(self.clock);
            self.counters.booted.fetch_add(1, Relaxed);
        }
        for _ in 0..64 {
            let actions = self.inbox[idx]
                .lock()
                .map(|mut v| core::mem::take(&mut *v))
                .unwrap_or_default();
            for a in actions {
                if matches!(a, Action::ComeBack) {
                    self.counters.reboots.fetch_add(1, Relaxed);
                }
                slot.apply(a, self.clock);
            }
            let Some(r) = slot.runner.as_mut() else {
                return Instant::MAX;
            };
            match r.run_once() {
                Ok(_) => {}
                Err(blocking::Error::Storage(PowerLoss)) => {
                    self.counters.crashes.fetch_add(1, Relaxed);
                    slot.reboot(self.clock, true);
                    continue;
                }
                Err(e) => {
                    slot.error = Some(format!("device {idx}: {e}"));
                    return Instant::MAX;
                }
            }
            if self.inbox[idx].lock().map_or(true, |v| v.is_empty()) {
                break;
            }
        }
        slot.runner
            .as_ref()
            .map_or(Instant::MAX, |r| r.next_deadline())
    }
}

/// Dispatches devices to workers when they are due or woken.
fn scheduler(
    fleet: Arc<Fleet>,
    rx: mpsc::Receiver<Sched>,
    jobs: mpsc::SyncSender<usize>,
    boot_at: Vec<Instant>,
) {
    let n = boot_at.len();
    let mut busy = vec![false; n];
    let mut generation = vec![0u64; n];
    let mut heap: BinaryHeap<Reverse<(Instant, usize, u64)>> = boot_at
        .iter()
        .enumerate()
        .map(|(i, at)| Reverse((*at, i, 0)))
        .collect();
    let dispatch = |i: usize, busy: &mut Vec<bool>, generation: &mut Vec<u64>| {
        if !busy[i] {
            busy[i] = true;
            generation[i] += 1;
            let _ = jobs.send(i);
        }
    };
    while !fleet.stop.load(Relaxed) {
        let wait = heap
            .peek()
            .map_or(Wall::from_millis(50), |Reverse((at, _, _))| {
                fleet.clock.wall_until(*at).min(Wall::from_millis(50))
            });
        match rx.recv_timeout(wait) {
            Ok(Sched::Wake(i)) => {
                // A device that has not booted yet keeps its boot time.
                if generation[i] > 0 {
                    dispatch(i, &mut busy, &mut generation);
                }
            }
            Ok(Sched::Done { idx, next }) => {
                busy[idx] = false;
                let pending = fleet.inbox[idx].lock().is_ok_and(|v| !v.is_empty());
                if pending {
                    dispatch(idx, &mut busy, &mut generation);
                } else if next != Instant::MAX {
                    heap.push(Reverse((next, idx, generation[idx])));
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        let now = fleet.clock.now();
        while let Some(Reverse((at, i, g))) = heap.peek().copied() {
            if at > now {
                break;
            }
            heap.pop();
            if g == generation[i] {
                dispatch(i, &mut busy, &mut generation);
            }
        }
    }
}

fn worker(fleet: Arc<Fleet>, jobs: Arc<Mutex<mpsc::Receiver<usize>>>) {
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        // Stopped: the jobs still queued are left (an overloaded run queues
        // up to one per device, and running them all held the stop, and
        // the program, far past `--max-wall`).
        let Some(idx) = job.ok().filter(|_| !fleet.stop.load(Relaxed)) else {
            return;
        };
        let next = fleet.run_device(idx);
        if let Ok(tx) = fleet.sched.lock() {
            let _ = tx.send(Sched::Done { idx, next });
        }
    }
}

/// Routes pushes from the shared socket to the devices' inboxes.
fn push_router(fleet: Arc<Fleet>, rx: UdpPushReceiver) {
    while !fleet.stop.load(Relaxed) {
        let Ok(Some(id)) = rx.recv_timeout(Wall::from_millis(50)) else {
            continue;
        };
        let Some(idx) = (id.0 as usize)
            .checked_sub(1)
            .filter(|i| *i < fleet.slots.len())
        else {
            continue;
        };
        if fleet.offline[idx].load(Relaxed) {
            fleet.counters.pushes_offline.fetch_add(1, Relaxed);
        } else {
            fleet.send(idx, Action::Push);
        }
    }
}

// ---- the console script -------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Step {
    Enqueue { task: usize },
    Cancel { task: usize },
    Policy { device: usize },
    Device { device: usize, action: Action },
}

/// One planned task and what became of it on the server.
#[derive(Clone, Debug)]
struct Planned {
    device: usize,
    kind: TaskKind,
    id: Option<TaskId>,
    queued_sim: Instant,
    queued_wall: Option<WallInstant>,
    cancel_requested: bool,
}

struct Script {
    steps: Vec<(Instant, Step)>,
    tasks: Vec<Planned>,
    boot_at: Vec<Instant>,
    offline_devices: usize,
    power_losses: usize,
    end: Instant,
}

const COMPLIANCE_KINDS: [ComplianceEvent; 7] = [
    ComplianceEvent::ProfileChanged,
    ComplianceEvent::DeviceAdminChanged { active: false },
    ComplianceEvent::BlockedPageVisited { category: 7 },
    ComplianceEvent::PasswordOverdue { days: 3 },
    ComplianceEvent::MalwarePersisting { threats: 1 },
    ComplianceEvent::UsbDebugging { enabled: true },
    ComplianceEvent::ManualScanResult { threats: 0 },
];

fn make_script(o: &Opts) -> Script {
    let mut rng = Rng::new(o.seed);
    let n = o.devices;
    let mut steps = Vec::new();
    let boot_at = (0..n).map(|_| rng.minute_in(0, 20)).collect();
    for (minute, share) in [(2, 1.0), (90, 1.0), (210, 0.3)] {
        for device in 0..n {
            if rng.chance(share) {
                steps.push((at_min(minute), Step::Policy { device }));
            }
        }
    }
    let mut tasks = Vec::new();
    for k in 0..n * o.tasks_per_device {
        let device = rng.below(n as u64) as usize;
        let at = rng.minute_in(10, 240);
        let task = tasks.len();
        tasks.push(Planned {
            device,
            kind: TaskKind::ALL[k % TaskKind::ALL.len()],
            id: None,
            queued_sim: at,
            queued_wall: None,
            cancel_requested: false,
        });
        steps.push((at, Step::Enqueue { task }));
        if rng.chance(0.03) {
            let later = at + Duration::from_secs(rng.below(20 * 60));
            steps.push((later, Step::Cancel { task }));
        }
    }
    let mut compliance_planned = 0;
    let (mut offline_devices, mut power_losses) = (0, 0);
    for device in 0..n {
        let count = 1 + usize::from(rng.chance(0.3));
        for _ in 0..count {
            let e = COMPLIANCE_KINDS[compliance_planned % COMPLIANCE_KINDS.len()];
            compliance_planned += 1;
            let action = Action::Compliance(e);
            steps.push((rng.minute_in(25, 270), Step::Device { device, action }));
        }
        if rng.chance(0.1) {
            let action = Action::Manual;
            steps.push((rng.minute_in(30, 270), Step::Device { device, action }));
        }
        if rng.chance(o.offline_share) {
            offline_devices += 1;
            let from = rng.minute_in(30, 180);
            let back = from + mins(20 + rng.below(100));
            steps.push((
                from,
                Step::Device {
                    device,
                    action: Action::GoOffline,
                },
            ));
            steps.push((
                back,
                Step::Device {
                    device,
                    action: Action::ComeBack,
                },
            ));
        }
        if rng.chance(o.crash_share) {
            power_losses += 1;
            let action = Action::ArmPowerLoss(rng.below(3) as u32);
            steps.push((rng.minute_in(30, 240), Step::Device { device, action }));
        }
    }
    steps.sort_by_key(|(at, _)| *at);
    Script {
        steps,
        tasks,
        boot_at,
        offline_devices,
        power_losses,
        end: at_min(SCRIPT_MINUTES),
    }
}

/// One operator call of the script.
enum Op {
    Enqueue {
        task: usize,
        device: DeviceId,
        kind: TaskKind,
    },
    Cancel {
        task: usize,
        id: TaskId,
    },
    Policy {
        device: usize,
        round: usize,
    },
}

/// What an operator call changed, for the script's bookkeeping.
enum Outcome {
    Queued {
        task: usize,
        id: Option<TaskId>,
        now: Instant,
        wall: WallInstant,
    },
    Cancelled {
        task: usize,
    },
    Policy {
        device: usize,
        version: Option<u32>,
    },
}

type Handle = ServerHandle<MemoryStore>;

/// The settings of a device's `round`-th policy.
fn settings(round: usize) -> [Setting; 3] {
    [
        Setting {
            key: 1,
            value: 6 + round as i64,
        }, // minimum password length
        Setting { key: 2, value: 1 },   // camera disabled
        Setting { key: 3, value: 300 }, // lock after seconds
    ]
}

/// Runs a batch of operator calls in one trip to the engine.
fn console(s: &mut Server<MemoryStore>, now: Instant, ops: Vec<Op>) -> Vec<Outcome> {
    let id = |d: usize| DeviceId(d as u64 + 1);
    // The batch's devices are known ahead: each is hinted a few calls before
    // its own, so that at a large fleet its state's cache misses overlap the
    // calls before it instead of coming one call at a time.
    const AHEAD: usize = 4;
    let hints: Vec<DeviceId> = (ops.iter())
        .filter_map(|op| match *op {
            Op::Enqueue { device, .. } => Some(device),
            Op::Policy { device, .. } => Some(id(device)),
            Op::Cancel { .. } => None,
        })
        .collect();
    let mut hints = hints.into_iter();
    hints
        .by_ref()
        .take(AHEAD)
        .for_each(|d| s.prefetch_device(d));
    let run = |s: &mut Server<MemoryStore>, op| match op {
        Op::Enqueue { task, device, kind } => {
            // Locks carry a supersede key: clicking "lock" again for a device
            // that has not taken the first one yet replaces it.
            let supersede = (kind == TaskKind::Lock).then(|| SupersedeKey::from_name("lock"));
            let opts = TaskOptions {
                supersede,
                ..TaskOptions::default()
            };
            let id = s.enqueue_task(device, kind, opts, now).ok();
            let wall = WallInstant::now();
            Outcome::Queued {
                task,
                id,
                now,
                wall,
            }
        }
        Op::Cancel { task, id } => {
            let _ = s.cancel_task(id, now); // already final: nothing to cancel
            Outcome::Cancelled { task }
        }
        Op::Policy { device, round } => {
            let version = s.assign_policy(id(device), &settings(round), now).ok();
            Outcome::Policy { device, version }
        }
    };
    let mut done = Vec::with_capacity(ops.len());
    for op in ops {
        let hint = match op {
            Op::Cancel { .. } => None,
            _ => hints.next(),
        };
        if let Some(d) = hint {
            s.prefetch_device(d);
        }
        done.push(run(s, op));
    }
    done
}

/// The device actions and operator calls due at `now`, from `next` on.
fn due_ops(
    fleet: &Fleet,
    script: &Script,
    next: &mut usize,
    now: Instant,
    rounds: &mut [usize],
) -> Vec<Op> {
    let mut ops = Vec::new();
    while let Some((_, step)) = script.steps.get(*next).filter(|(at, _)| *at <= now) {
        *next += 1;
        match *step {
            Step::Device { device, action } => fleet.send(device, action),
            Step::Enqueue { task } => {
                let p = &script.tasks[task];
                let device = DeviceId(p.device as u64 + 1);
                ops.push(Op::Enqueue {
                    task,
                    device,
                    kind: p.kind,
                });
            }
            Step::Cancel { task } => {
                if let Some(id) = script.tasks[task].id {
                    ops.push(Op::Cancel { task, id });
                }
            }
            Step::Policy { device } => {
                rounds[device] += 1;
                ops.push(Op::Policy {
                    device,
                    round: rounds[device],
                });
            }
        }
    }
    ops
}

/// Runs the script against the server and the fleet in simulated time;
/// fills in task ids and the latest policy version of every device. At each
/// instant of `restarts` the server process is restarted (see
/// `ServerProc::restart`).
async fn run_script(
    server: &mut ServerProc,
    fleet: &Fleet,
    script: &mut Script,
    assigned: &mut [u32],
    mut restarts: &[Instant],
) -> Result<(), Box<dyn core::error::Error>> {
    let clock = server.ctx.clock;
    let mut rounds = vec![0usize; assigned.len()];
    let mut next = 0;
    while let Some((at, _)) = script.steps.get(next) {
        let now = clock.now();
        if let Some((&restart, later)) = restarts.split_first().filter(|(r, _)| **r <= now) {
            restarts = later;
            let recovered = server.restart().await?;
            println!(
                "fleet: server restarted at {} over its store: {} check-ins, {} expiries, \
                 {} devices pushed again",
                fmt_sim(restart.saturating_since(Instant::ZERO)),
                recovered.checkins,
                recovered.expiries,
                recovered.pushed
            );
            continue;
        }
        let wake = restarts.first().map_or(*at, |r| (*r).min(*at));
        if wake > now {
            tokio::time::sleep(clock.wall_until(wake)).await;
            continue;
        }
        let ops = due_ops(fleet, script, &mut next, now, &mut rounds);
        if ops.is_empty() {
            continue;
        }
        let outcomes = server.handle.call(move |s, now| console(s, now, ops)).await;
        for o in outcomes.unwrap_or_default() {
            match o {
                Outcome::Queued {
                    task,
                    id,
                    now,
                    wall,
                } => {
                    let p = &mut script.tasks[task];
                    (p.id, p.queued_sim, p.queued_wall) = (id, now, Some(wall));
                }
                Outcome::Cancelled { task } => script.tasks[task].cancel_requested = true,
                Outcome::Policy { device, version } => {
                    if let Some(v) = version {
                        assigned[device] = v;
                    }
                }
            }
        }
    }
    Ok(())
}

/// What the server process is started from, the first time and after each
/// restart: what a real one reads from its configuration.
struct ServerCtx {
    cfg: ServerConfig,
    master: [u8; 32],
    clock: ScaledClock,
    addr: SocketAddr,
    push_loss: f64,
    seed: u64,
    counters: Arc<Counters>,
    log: Arc<Mutex<ServerLog>>,
}

/// The running server "process": the engine task, its acceptor and how to
/// reach it.
struct ServerProc {
    ctx: ServerCtx,
    handle: Handle,
    engine: tokio::task::JoinHandle<Server<MemoryStore>>,
    acceptor: tokio::task::JoinHandle<()>,
    starts: u64,
}

impl ServerProc {
    /// Starts the engine over `server` and accepts connections on
    /// `listener`, with a push service of its own.
    fn start(
        ctx: ServerCtx,
        server: Server<MemoryStore>,
        listener: tokio::net::TcpListener,
        starts: u64,
    ) -> io::Result<Self> {
        let push = LossyPush {
            udp: UdpPushSender::bind_loopback()?,
            rng: Rng::new(ctx.seed ^ 0x9E37 ^ starts << 32),
            loss: ctx.push_loss,
            counters: ctx.counters.clone(),
        };
        let (log, counters) = (ctx.log.clone(), ctx.counters.clone());
        let (handle, engine) = Builder::new(server, push)
            .clock(ctx.clock)
            .on_event(move |ev, _now| on_server_event(ev, &log, &counters))
            .spawn();
        let acceptor = tokio::spawn(serve(listener, handle.clone()));
        Ok(Self {
            ctx,
            handle,
            engine,
            acceptor,
            starts,
        })
    }

    /// Stops the engine and its acceptor (every connection drops) and gives
    /// the server back.
    async fn stop(&mut self) -> Result<Server<MemoryStore>, Box<dyn core::error::Error>> {
        self.handle.shutdown().await;
        self.acceptor.abort();
        let _ = (&mut self.acceptor).await;
        Ok((&mut self.engine).await?)
    }

    /// Stops the server and starts a new one over its store on the same
    /// address, with a fresh nonce seed, as a restarted process: the new
    /// engine knows only what `Server::recover` rebuilds from the store.
    async fn restart(&mut self) -> Result<Recovered, Box<dyn core::error::Error>> {
        let store = self.stop().await?.into_store();
        let mut server = Server::new(
            self.ctx.cfg,
            store,
            self.ctx.master,
            mdm_sync::adapters::os_seed()?,
        );
        let recovered = server
            .recover(self.ctx.clock.now())
            .map_err(|e| format!("recover failed: {e:?}"))?;
        let listener = tokio::net::TcpListener::bind(self.ctx.addr).await?;
        let ctx = ServerCtx {
            log: self.ctx.log.clone(),
            counters: self.ctx.counters.clone(),
            ..self.ctx
        };
        *self = Self::start(ctx, server, listener, self.starts + 1)?;
        Ok(recovered)
    }
}

// ---- progress, convergence, verification ----------------------------------------

fn progress_line(start: WallInstant, clock: &ScaledClock, c: &Counters, tasks: usize) -> String {
    let sim = clock.now().saturating_since(Instant::ZERO);
    format!(
        "[{:5.1}s] sim {:>6} | booted {:>5} | syncs {:>6} (failed {:>5}) | executed {:>5}/{} \
         | pushes {:>5} (lost {:>4}) | compliance stored {:>5} | reboots {} crashes {}",
        start.elapsed().as_secs_f64(),
        fmt_sim(sim),
        c.booted.load(Relaxed),
        c.syncs.load(Relaxed),
        c.sync_failures.load(Relaxed),
        c.executed.load(Relaxed),
        tasks,
        c.pushes_sent.load(Relaxed),
        c.pushes_lost.load(Relaxed),
        c.compliance_stored.load(Relaxed),
        c.reboots.load(Relaxed),
        c.crashes.load(Relaxed),
    )
}

/// Whether every device is idle with nothing left to report, on the
/// policy it was assigned; `None` while one is busy.
fn devices_settled(fleet: &Fleet, assigned: &[u32]) -> Option<bool> {
    for (i, slot) in fleet.slots.iter().enumerate() {
        let slot = slot.try_lock().ok()?;
        let Some(r) = slot.runner.as_ref() else {
            return Some(false);
        };
        let d = r.device();
        let idle = d.outbox_len() == 0 && d.running_tasks().next().is_none();
        if !idle || d.policy_version() != assigned[i] || fleet.offline[i].load(Relaxed) {
            return Some(false);
        }
    }
    Some(true)
}

fn server_settled(v: &FleetView, devices: usize) -> bool {
    let t = &v.tasks;
    t.waiting + t.on_device + t.deferred == 0 && v.on_latest_policy == devices
}

/// Everything checked at the end; `failures` lists each broken guarantee.
#[derive(Default)]
struct Report {
    failures: Vec<String>,
    queued: usize,
    refused: usize,
    executed: usize,
    twice: usize,
    never: usize,
    cancelled_before: usize,
    superseded: usize,
    interrupted_unrun: usize,
    statuses: usize,
    by_status: [usize; 4],
    lat_sim: Vec<u64>,
    lat_wall: Vec<u64>,
    raised: usize,
    stored: usize,
    acked: usize,
    lost_with_power: u64,
    refused_raises: u64,
    device_policy_ok: usize,
    syncs: [u64; 6],
}

fn expected_state(s: TaskStatus) -> Option<TaskState> {
    match s {
        TaskStatus::Succeeded { result } => Some(TaskState::Succeeded { result }),
        TaskStatus::Failed { reason } => Some(TaskState::Failed { reason }),
        TaskStatus::Cancelled => Some(TaskState::Cancelled),
        _ => None,
    }
}

/// Why a run that did not converge failed. When some devices never even
/// booted, the device threads fell behind the clock (too many devices for
/// this machine at this time scale): the failures listed after it are of a
/// run that could not finish, and the line says so and what to change.
fn not_converged(max_wall: f64, booted: usize, devices: usize) -> Vec<String> {
    let mut lines = vec![format!(
        "the fleet did not converge within {max_wall} s of wall time"
    )];
    if booted < devices {
        lines.push(format!(
            "only {booted} of {devices} devices booted: the device threads fell behind the \
             clock, so what follows is unfinished work, not a broken guarantee; run fewer \
             --devices, a lower --time-scale, more --threads or a longer --max-wall"
        ));
    }
    lines
}

fn fail(r: &mut Report, msg: String) {
    if r.failures.len() < 20 {
        r.failures.push(msg);
    } else if r.failures.len() == 20 {
        r.failures.push("... (more failures not shown)".into());
    }
}

fn verify_tasks(
    r: &mut Report,
    tasks: &[Planned],
    logs: &[Option<&DevLog>],
    server: &Server<MemoryStore>,
) {
    let mut runs: HashMap<TaskId, Vec<Exec>> = HashMap::new();
    for log in logs.iter().flatten() {
        for e in &log.executed {
            runs.entry(e.task).or_default().push(*e);
        }
    }
    for p in tasks {
        let Some(id) = p.id else {
            r.refused += 1;
            continue;
        };
        r.queued += 1;
        let state = server.task(id).ok().flatten().map(|t| t.state);
        let execs = runs.get(&id).map_or(&[][..], |v| v.as_slice());
        if execs.len() > 1 {
            r.twice += 1;
            fail(
                r,
                format!(
                    "task {} ({:?}) executed {} times",
                    id.0,
                    p.kind,
                    execs.len()
                ),
            );
        }
        let interrupted_status = TaskStatus::Failed {
            reason: reason::INTERRUPTED_BY_REBOOT,
        };
        let interrupted = TaskState::Failed {
            reason: reason::INTERRUPTED_BY_REBOOT,
        };
        let reported = logs[p.device]
            .and_then(|l| l.finals.get(&id))
            .map(|(s, _)| *s);
        let Some(first) = execs.first() else {
            if state == Some(TaskState::Cancelled) && p.cancel_requested {
                r.cancelled_before += 1;
            } else if matches!(state, Some(TaskState::Superseded { .. })) {
                r.superseded += 1;
            } else if state == Some(interrupted) && reported == Some(interrupted_status) {
                // Answered "not now", then power failed before that answer
                // was on storage: reported interrupted, never run. At most once.
                r.interrupted_unrun += 1;
            } else {
                r.never += 1;
                fail(
                    r,
                    format!(
                        "task {} ({:?}) never executed; server: {state:?}",
                        id.0, p.kind
                    ),
                );
            }
            continue;
        };
        r.executed += 1;
        r.lat_sim
            .push(first.sim.saturating_since(p.queued_sim).as_millis());
        if let Some(w) = p.queued_wall {
            r.lat_wall
                .push(first.wall.saturating_duration_since(w).as_micros() as u64);
        }
        let log = logs[p.device];
        let reported = log.and_then(|l| l.finals.get(&id)).map(|(s, _)| *s);
        let want = reported.and_then(expected_state);
        if want.is_some() && want == state {
            r.statuses += 1;
            let k = match reported {
                Some(TaskStatus::Succeeded { .. }) => 0,
                Some(TaskStatus::Failed {
                    reason: reason::INTERRUPTED_BY_REBOOT,
                }) => 3,
                Some(TaskStatus::Failed { .. }) => 1,
                _ => 2,
            };
            r.by_status[k] += 1;
        } else {
            fail(
                r,
                format!(
                    "task {}: device reported {reported:?}, server has {state:?}",
                    id.0
                ),
            );
        }
    }
}

fn verify_devices(
    r: &mut Report,
    slots: &[Slot],
    stored: &HashMap<DeviceId, Vec<ComplianceEvent>>,
    assigned: &[u32],
) {
    for (i, slot) in slots.iter().enumerate() {
        let id = DeviceId(i as u64 + 1);
        if let Some(e) = &slot.error {
            fail(r, format!("device {}: {e}", id.0));
        }
        let raised: Vec<ComplianceEvent> = slot.raised.iter().map(|(e, _)| *e).collect();
        let got = stored.get(&id).map_or(&[][..], |v| v.as_slice());
        r.raised += raised.len();
        r.stored += got.len();
        r.lost_with_power += slot.lost_in_power_loss;
        r.refused_raises += slot.refused;
        if raised != got {
            fail(
                r,
                format!("device {}: raised {raised:?}, server stored {got:?}", id.0),
            );
        }
        let Some(runner) = slot.runner.as_ref() else {
            fail(r, format!("device {} is not running", id.0));
            continue;
        };
        let d = runner.device();
        let pending = d.outbox_len();
        r.acked += raised.len().saturating_sub(pending);
        if pending != 0 {
            fail(
                r,
                format!("device {}: {pending} reports never acknowledged", id.0),
            );
        }
        if d.policy_version() == assigned[i] {
            r.device_policy_ok += 1;
        } else {
            let (have, want) = (d.policy_version(), assigned[i]);
            fail(
                r,
                format!("device {}: policy {have}, latest assigned {want}", id.0),
            );
        }
        if let Some(h) = slot.handler() {
            for (k, n) in h.log.syncs.iter().enumerate() {
                r.syncs[k] += n;
            }
        }
    }
}

fn print_summary(
    o: &Opts,
    r: &Report,
    view: &FleetView,
    script: &Script,
    c: &Counters,
    sim: Duration,
    wall: Wall,
) {
    let mut lat_sim = r.lat_sim.clone();
    let mut lat_wall = r.lat_wall.clone();
    lat_sim.sort_unstable();
    lat_wall.sort_unstable();
    let ms = |x: u64| fmt_sim(Duration::from_millis(x));
    let t = &view.tasks;
    let trig = |a: &[u64; 6]| {
        let names = ["push", "periodic", "compliance", "manual", "boot", "report"];
        let parts: Vec<String> = names
            .iter()
            .zip(a)
            .map(|(n, k)| format!("{n} {k}"))
            .collect();
        parts.join(", ")
    };
    let hs: [u64; 6] = core::array::from_fn(|k| c.handshakes[k].load(Relaxed));
    println!();
    println!(
        "summary: {} devices, {} simulated in {:.1} s wall",
        o.devices,
        fmt_sim(sim),
        wall.as_secs_f64()
    );
    println!(
        "  tasks queued             {} (every kind: {})",
        r.queued,
        kinds_line(&script.tasks)
    );
    if r.refused > 0 {
        println!("  tasks refused by server  {}", r.refused);
    }
    println!("  tasks executed           {}", r.executed);
    println!("  executed twice           {}", r.twice);
    println!(
        "  never executed           {} (cancelled before delivery: {}, superseded: {}, \
         \"not now\" lost with power and reported interrupted: {})",
        r.never, r.cancelled_before, r.superseded, r.interrupted_unrun
    );
    println!(
        "  statuses received        {} (succeeded {}, failed {}, cancelled {}, interrupted by reboot {})",
        r.statuses, r.by_status[0], r.by_status[1], r.by_status[2], r.by_status[3]
    );
    println!(
        "  compliance events        raised {}, stored by server {}, acknowledged {}",
        r.raised, r.stored, r.acked
    );
    if r.lost_with_power + r.refused_raises > 0 {
        println!(
            "  compliance not raised    {} lost with power before their snapshot write, \
             {} refused by a full outbox",
            r.lost_with_power, r.refused_raises
        );
    }
    println!(
        "  latest policy            {}/{} devices (server console), {}/{} (device side)",
        view.on_latest_policy, view.devices, r.device_policy_ok, o.devices
    );
    println!("  syncs by trigger         {}", trig(&r.syncs));
    println!("  handshakes (server)      {}", trig(&hs));
    println!(
        "  pushes                   sent {}, lost by push service {}, to offline devices {}",
        c.pushes_sent.load(Relaxed),
        c.pushes_lost.load(Relaxed),
        c.pushes_offline.load(Relaxed)
    );
    println!(
        "  offline / reboots        {} devices went offline, {} came back (a reboot each); {} power losses mid-write of {} armed (one happens only if its device writes a snapshot again before the end), a reboot each",
        script.offline_devices,
        c.reboots.load(Relaxed),
        c.crashes.load(Relaxed),
        script.power_losses
    );
    println!(
        "  task latency             simulated p50 {} p99 {} | wall p50 {:.1} ms p99 {:.1} ms",
        ms(percentile(&lat_sim, 0.5)),
        ms(percentile(&lat_sim, 0.99)),
        percentile(&lat_wall, 0.5) as f64 / 1000.0,
        percentile(&lat_wall, 0.99) as f64 / 1000.0
    );
    println!(
        "  server console           devices {}, online {}, overdue {}; tasks succeeded {}, failed {}, \
         cancelled {} (too late to cancel {}), waiting {}, on device {}, deferred {}",
        view.devices, view.online, view.overdue, t.succeeded, t.failed, t.cancelled,
        t.too_late_to_cancel, t.waiting, t.on_device, t.deferred
    );
    println!(
        "  policy states (server)   applied {}, partially applied {}, rejected {}, pending {}",
        view.policy_applied, view.policy_partial, view.policy_rejected, view.policy_pending
    );
    println!(
        "  lifecycle                deferred (\"not now\") {} (server saw {}), superseded {}, \
         cancelled in time {}, too late to cancel {}, overdue events {}",
        c.not_now.load(Relaxed),
        c.deferred_events.load(Relaxed),
        c.superseded_events.load(Relaxed),
        t.cancelled,
        t.too_late_to_cancel,
        c.overdue.load(Relaxed)
    );
    println!(
        "  sync failures (device)   {} (offline, power loss, ...); overdue events {}; \
         failed authentications {}",
        c.sync_failures.load(Relaxed),
        c.overdue.load(Relaxed),
        c.auth_failed.load(Relaxed)
    );
}

fn kinds_line(tasks: &[Planned]) -> String {
    let names = ["lock", "unlock", "scan", "locate", "wipe"];
    let parts: Vec<String> = TaskKind::ALL
        .iter()
        .zip(names)
        .map(|(k, n)| format!("{n} {}", tasks.iter().filter(|t| t.kind == *k).count()))
        .collect();
    parts.join(", ")
}

// ---- main -------------------------------------------------------------------------

fn main() -> ExitCode {
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("fleet: {e}\nfleet: see --help");
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleet: cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(simulate(opts)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("fleet: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Timeouts that guard against a dead peer are set in real time: the clock
/// is compressed, loopback latency and CPU time are not.
fn wall_bound(clock: &ScaledClock, default: Duration, wall: Wall) -> Duration {
    default.max(clock.from_wall(wall))
}

async fn simulate(o: Opts) -> Result<bool, Box<dyn core::error::Error>> {
    let start = WallInstant::now();
    let clock = ScaledClock::scaled(o.time_scale);
    let counters = Arc::new(Counters::default());
    let mut script = make_script(&o);
    println!(
        "fleet: {} devices, {} tasks, push loss {:.0}%, {} devices go offline, {} armed to lose power mid-write, \
         time scale {}x, seed {}",
        o.devices,
        script.tasks.len(),
        o.push_loss * 100.0,
        script.offline_devices,
        script.power_losses,
        o.time_scale,
        o.seed
    );

    // The server: tokio adapter, in-memory store, lossy UDP push service.
    let mut scfg = ServerConfig::default();
    scfg.handshake_timeout = wall_bound(&clock, scfg.handshake_timeout, Wall::from_secs(5));
    scfg.idle_timeout = wall_bound(&clock, scfg.idle_timeout, Wall::from_secs(5));
    // Above the devices' own bound (`linger` + 3 response timeouts, these at
    // least 3 s of real time each), as with the defaults (PROTOCOL.md 11.2).
    scfg.max_session = wall_bound(&clock, scfg.max_session, Wall::from_secs(20));
    let mut key_rng = Rng::new(o.seed ^ 0xA5A5);
    let master: [u8; 32] = core::array::from_fn(|_| key_rng.next() as u8);
    let nonce_seed = mdm_sync::adapters::os_seed()?;
    let server = Server::new(
        scfg,
        {
            // The fleet's size is known: room for every device and push
            // target up front, so no table grows while devices sync.
            let mut store = MemoryStore::with_capacity(o.devices);
            store.reserve_push_targets(o.devices);
            store
        },
        master,
        nonce_seed,
    );
    let server_log = Arc::new(Mutex::new(ServerLog::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    let ctx = ServerCtx {
        cfg: scfg,
        master,
        clock,
        addr,
        push_loss: o.push_loss,
        seed: o.seed,
        counters: counters.clone(),
        log: server_log.clone(),
    };
    let mut proc = ServerProc::start(ctx, server, listener, 0)?;
    let handle = proc.handle.clone();
    println!("fleet: server listening on {addr}");

    // Enroll every device; give each its secret, timers and push token.
    let n = o.devices;
    let secrets = handle
        .call(move |s: &mut Server<MemoryStore>, now| {
            (0..n)
                .map(|i| s.enroll(DeviceId(i as u64 + 1), now).ok())
                .collect::<Vec<_>>()
        })
        .await?;
    let pushes = UdpPushReceiver::bind_loopback()?;
    let token = pushes.token().clone();
    let timers = DeviceTimers {
        connect_timeout: wall_bound(&clock, Duration::from_secs(20), Wall::from_secs(3)),
        response_timeout: wall_bound(&clock, Duration::from_secs(30), Wall::from_secs(3)),
        ..DeviceTimers::default()
    };
    let (sched_tx, sched_rx) = mpsc::channel();
    let mut slots = Vec::with_capacity(n);
    let mut offline = Vec::with_capacity(n);
    for (i, secret) in secrets.into_iter().enumerate() {
        let secret = secret.ok_or("enrollment failed")?;
        let id = DeviceId(i as u64 + 1);
        let platform = if i % 2 == 0 {
            Platform::Android
        } else {
            Platform::Ios
        };
        let mut cfg = DeviceConfig::new(id, 0, secret, platform);
        cfg.push_token = token
            .as_str()
            .try_into()
            .map_err(|_| "push token too long")?;
        cfg.timers = timers;
        cfg.jitter_seed = o.seed.wrapping_mul(0x9E37_79B9).wrapping_add(id.0);
        let flag = Arc::new(AtomicBool::new(false));
        offline.push(flag.clone());
        let writes = Arc::new(AtomicU64::new(0));
        let conn = SimConnector {
            tcp: TcpConnector::new(addr).with_timeout(Wall::from_secs(3)),
            offline: flag,
        };
        let storage = SimStorage {
            mem: MemoryStorage::new(),
            writes: writes.clone(),
            tear_after: None,
        };
        let handler = SimHandler {
            rng: Rng::new(o.seed ^ (id.0 << 20)),
            running: Vec::new(),
            log: DevLog::default(),
            writes,
            counters: counters.clone(),
        };
        slots.push(Mutex::new(Slot {
            cfg,
            runner: None,
            parts: Some((conn, storage, handler)),
            raised: Vec::new(),
            lost_in_power_loss: 0,
            refused: 0,
            error: None,
        }));
    }
    let fleet = Arc::new(Fleet {
        clock,
        slots,
        inbox: (0..n).map(|_| Mutex::new(Vec::new())).collect(),
        offline,
        sched: Mutex::new(sched_tx),
        stop: AtomicBool::new(false),
        counters: counters.clone(),
    });

    // Device threads: a scheduler, a push router and a bounded worker pool.
    let (job_tx, job_rx) = mpsc::sync_channel(n);
    let job_rx = Arc::new(Mutex::new(job_rx));
    let mut threads = Vec::new();
    let boot_at = script.boot_at.clone();
    let f = fleet.clone();
    threads.push(std::thread::spawn(move || {
        scheduler(f, sched_rx, job_tx, boot_at)
    }));
    let f = fleet.clone();
    threads.push(std::thread::spawn(move || push_router(f, pushes)));
    for _ in 0..o.threads {
        let (f, jobs) = (fleet.clone(), job_rx.clone());
        threads.push(std::thread::spawn(move || worker(f, jobs)));
    }

    // Progress lines while it runs.
    let (pc, ptasks) = (counters.clone(), script.tasks.len());
    let reporter = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Wall::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            println!("{}", progress_line(start, &clock, &pc, ptasks));
        }
    });

    // The console script, then convergence.
    let mut assigned = vec![0u32; n];
    // Restarts spread evenly over the script.
    let restarts: Vec<Instant> = (1..=o.server_restarts as u64)
        .map(|k| {
            let span = script.end.saturating_since(Instant::ZERO).as_millis();
            Instant::from_millis(span * k / (o.server_restarts as u64 + 1))
        })
        .collect();
    drop(handle);
    run_script(&mut proc, &fleet, &mut script, &mut assigned, &restarts).await?;
    let handle = proc.handle.clone();
    tokio::time::sleep(clock.wall_until(script.end)).await;
    println!(
        "{}\nfleet: script done; waiting for the fleet to converge",
        progress_line(start, &clock, &counters, script.tasks.len())
    );
    let deadline = start + Wall::from_secs_f64(o.max_wall);
    let mut converged = false;
    // Checked at least once: a script that ran past the deadline (a slow
    // time scale, a short `--max-wall`) may still have converged.
    loop {
        let view = handle.fleet_view().await?;
        let stored = counters.compliance_stored.load(Relaxed) as usize;
        let raised: usize = fleet
            .slots
            .iter()
            .filter_map(|s| s.try_lock().ok().map(|s| s.raised.len()))
            .sum();
        if server_settled(&view, n)
            && stored >= raised
            && devices_settled(&fleet, &assigned) == Some(true)
        {
            converged = true;
            break;
        }
        if WallInstant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Wall::from_millis(200)).await;
    }
    let sim = clock.now().saturating_since(Instant::ZERO);
    let wall = start.elapsed();
    reporter.abort();

    // Stop the devices, then the server, and check everything.
    fleet.stop.store(true, Relaxed);
    if let Ok(mut tx) = fleet.sched.lock() {
        *tx = mpsc::channel().0; // the scheduler sees its channel close
    }
    for t in threads {
        let _ = t.join();
    }
    let fleet = Arc::try_unwrap(fleet).map_err(|_| "device threads still running")?;
    let slots: Vec<Slot> = fleet
        .slots
        .into_iter()
        .map(|m| m.into_inner().map_err(|_| "a device thread panicked"))
        .collect::<Result<_, _>>()?;
    drop(handle);
    let server = proc.stop().await?;
    let view = server
        .fleet_view()
        .map_err(|e| format!("console query failed: {e:?}"))?;

    let mut report = Report::default();
    if !converged {
        let booted = counters.booted.load(Relaxed) as usize;
        for line in not_converged(o.max_wall, booted, n) {
            fail(&mut report, line);
        }
    }
    let logs: Vec<Option<&DevLog>> = slots.iter().map(|s| s.handler().map(|h| &h.log)).collect();
    verify_tasks(&mut report, &script.tasks, &logs, &server);
    let stored = server_log
        .lock()
        .map(|l| l.compliance.clone())
        .unwrap_or_default();
    verify_devices(&mut report, &slots, &stored, &assigned);
    let auth_failed = counters.auth_failed.load(Relaxed);
    if auth_failed > 0 {
        fail(
            &mut report,
            format!("{auth_failed} sessions failed authentication"),
        );
    }
    if view.on_latest_policy != n {
        fail(
            &mut report,
            format!(
                "server console: {}/{n} devices on the latest policy",
                view.on_latest_policy
            ),
        );
    }
    print_summary(&o, &report, &view, &script, &counters, sim, wall);
    if report.failures.is_empty() {
        println!("result: OK, every guarantee held");
        Ok(true)
    } else {
        println!("result: FAILED");
        for f in &report.failures {
            println!("  - {f}");
        }
        Ok(false)
    }
}

fn on_server_event(ev: &ServerEvent, log: &Mutex<ServerLog>, c: &Counters) {
    match ev {
        ServerEvent::Compliance { device, event } => {
            c.compliance_stored.fetch_add(1, Relaxed);
            if let Ok(mut l) = log.lock() {
                l.compliance.entry(*device).or_default().push(*event);
            }
        }
        ServerEvent::Authenticated { trigger, .. } => {
            c.handshakes[trigger.index()].fetch_add(1, Relaxed);
        }
        ServerEvent::Overdue { .. } => {
            c.overdue.fetch_add(1, Relaxed);
        }
        ServerEvent::TaskChanged { state, .. } => match state {
            TaskState::Deferred { .. } => {
                c.deferred_events.fetch_add(1, Relaxed);
            }
            TaskState::Superseded { .. } => {
                c.superseded_events.fetch_add(1, Relaxed);
            }
            _ => {}
        },
        ServerEvent::AuthFailed { .. } => {
            c.auth_failed.fetch_add(1, Relaxed);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker20_a_run_whose_devices_never_all_booted_says_it_fell_behind() {
        // 100000 devices at the default time scale on a 2-core machine:
        // 87177 had booted when --max-wall ran out.
        let lines = not_converged(50.0, 87_177, 100_000);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].contains("did not converge within 50 s"));
        assert!(lines[1].contains("only 87177 of 100000 devices booted"));
        assert!(lines[1].contains("fewer --devices"));
        // Every device booted: no such excuse.
        assert_eq!(not_converged(50.0, 1000, 1000).len(), 1);
    }

    fn parse(args: &[&str]) -> Result<Option<Opts>, String> {
        parse_args(args.iter().map(|a| a.to_string()))
    }

    #[test]
    fn the_defaults_and_the_ci_options_are_accepted() {
        assert!(parse(&[]).unwrap().is_some());
        assert!(parse(&["--devices", "200"]).unwrap().is_some());
        let o = parse(&["--devices", "200", "--server-restarts", "3"]).unwrap();
        assert_eq!(o.map(|o| o.server_restarts), Some(3));
        let e = parse(&["--server-restarts", "21"]).unwrap_err();
        assert!(e.contains("--server-restarts"), "{e}");
        let e = parse(&["--server-restarts", "99999999999999999999"]).unwrap_err();
        assert!(e.contains("between 0 and 20"), "{e}");
        let e = parse(&["--devices", "ten"]).unwrap_err();
        assert!(e.contains("needs a whole number"), "{e}");
        assert!(parse(&["--help"]).unwrap().is_none());
    }

    #[test]
    fn options_that_cannot_converge_before_max_wall_are_refused() {
        // 450 simulated minutes at 100x take 270 s, past the 50 s default.
        let e = parse(&["--time-scale", "100"]).unwrap_err();
        assert!(e.contains("270 s") && e.contains("--max-wall 50"), "{e}");
        assert!(parse(&["--time-scale", "100", "--max-wall", "300"])
            .unwrap()
            .is_some());
        // Without push loss nothing waits for the periodic sync: 300 minutes.
        let e = parse(&["--time-scale=100", "--push-loss=0", "--max-wall=150"]).unwrap_err();
        assert!(e.contains("180 s"), "{e}");
        assert!(
            parse(&["--time-scale=100", "--push-loss=0", "--max-wall=180"])
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn bad_values_get_clear_errors() {
        let e = parse(&["--push-loss", "1.5"]).unwrap_err();
        assert!(e.contains("between 0 and 1"), "{e}");
        let e = parse(&["--devices"]).unwrap_err();
        assert!(e.contains("needs a value"), "{e}");
        let e = parse(&["--frobnicate", "1"]).unwrap_err();
        assert!(e.contains("unknown option"), "{e}");
    }
}
