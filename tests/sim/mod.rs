//! Deterministic simulator: one [`Server`] over a [`MemoryStore`], several
//! [`Device`]s, a virtual clock per engine and a faulty network, all driven by
//! a [`Schedule`] of operations and a seed. Nothing here reads a real clock or
//! a real socket, so the same schedule always gives the same run.
//!
//! Ground truth is kept outside the engines ([`truth`]): every task each
//! device handed to its application (across reboots), every report raised on
//! a device and every report event the server emitted. After the schedule,
//! the network heals, the applications finish their work, time runs on, and
//! [`run`] checks the delivery guarantees of `DESIGN.md`.
//!
//! Shared by `tests/properties.rs` (proptest over random schedules),
//! `tests/sim_replay.rs` (replays a seed from the command line) and the
//! scenario tests.
// reason: each test binary that includes this module uses a different part of it
#![allow(dead_code, unused_imports)]

macro_rules! trace {
    ($sim:expr, $($arg:tt)*) => {
        if $sim.tracing {
            let line = format!($($arg)*);
            $sim.log(line);
        }
    };
}

mod net;
pub(crate) mod rate;
pub(crate) mod schedule;
mod truth;

use core::fmt::Write as _;
use core::panic::AssertUnwindSafe;
use std::collections::{HashSet, VecDeque};
use std::panic::catch_unwind;

use mdm_sync::device::{pick_latest, Device, DeviceConfig, DeviceError, Event};
use mdm_sync::server::{
    FleetStore, MemoryStore, Server, ServerConfig, ServerError, ServerEvent, SupersedeKey,
    TaskOptions,
};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::{
    self, ComplianceEvent, DeviceId, Down, Platform, PolicyOutcome, Setting, SettingFailure,
    TaskId, TaskKind, TaskResult, TaskStatus, Up, MAX_FRAME,
};

use net::{Conn, Dir, FrameFault};
use rate::{SyncRate, Why};
pub(crate) use schedule::{schedule, schedule_from_seed, Crash, Op, Schedule, Style, Who};
use truth::{Raised, Received, Truth};

const HOUR: u64 = 3_600_000;
const DAY: u64 = 24 * HOUR;
/// How long the healed network runs at most before the run counts as stuck.
const SETTLE_MAX: u64 = 14 * DAY;
/// How long the healed network keeps running after everything converged, to
/// catch late duplicates (a bit more than two periodic intervals).
const SETTLE_AFTER: u64 = 7 * HOUR;
/// Rounds of work at one instant before the run counts as a livelock.
const ROUNDS_MAX: usize = 20_000;
/// Trace lines kept from the start and from the end of a run.
const TRACE_HEAD: usize = 300;
const TRACE_TAIL: usize = 150;

/// Why a run failed: the broken property and the end of the trace.
#[derive(Debug)]
pub(crate) struct Failure {
    /// The first property that broke.
    pub(crate) message: String,
    /// The first and the last lines of the trace (empty unless tracing was on).
    pub(crate) trace: Vec<String>,
}

impl core::fmt::Display for Failure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        writeln!(f, "{}", self.message)?;
        if !self.trace.is_empty() {
            writeln!(f, "--- trace (start and end) ---")?;
            for line in &self.trace {
                writeln!(f, "{line}")?;
            }
        }
        Ok(())
    }
}

/// What a successful run did, for reports and sanity checks of the generator.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Summary {
    /// Tasks queued by the operator.
    pub(crate) tasks: usize,
    /// Tasks the devices executed (deferrals not counted).
    pub(crate) executed: usize,
    /// Reports the server received from devices.
    pub(crate) reports: usize,
    /// Device reboots.
    pub(crate) reboots: usize,
    /// Connections opened.
    pub(crate) connections: usize,
    /// Frames hit by an injected fault.
    pub(crate) frame_faults: usize,
    /// Virtual time of the whole run, in ms.
    pub(crate) virtual_ms: u64,
    /// Pushes the server asked for.
    pub(crate) pushes: usize,
    /// Connections opened in the last `SETTLE_AFTER` of the run, after
    /// everything had converged (steady state: periodic syncs only).
    pub(crate) steady_connections: usize,
    /// Pushes asked for in that window.
    pub(crate) steady_pushes: usize,
    /// Length of that window, in ms.
    pub(crate) steady_ms: u64,
    /// Server restarts ([`Op::RestartServer`]).
    pub(crate) restarts: usize,
}

impl Summary {
    /// Adds `other`'s counts to these (the totals of a sweep). Every field
    /// is named, so a field added later must be added here too: the totals
    /// once printed 0 pushes and 0 restarts for sweeps that had thousands.
    pub(crate) fn add(&mut self, other: &Summary) {
        let Summary {
            tasks,
            executed,
            reports,
            reboots,
            connections,
            frame_faults,
            virtual_ms,
            pushes,
            steady_connections,
            steady_pushes,
            steady_ms,
            restarts,
        } = *other;
        self.tasks += tasks;
        self.executed += executed;
        self.reports += reports;
        self.reboots += reboots;
        self.connections += connections;
        self.frame_faults += frame_faults;
        self.virtual_ms = self.virtual_ms.saturating_add(virtual_ms);
        self.pushes += pushes;
        self.steady_connections += steady_connections;
        self.steady_pushes += steady_pushes;
        self.steady_ms = self.steady_ms.saturating_add(steady_ms);
        self.restarts += restarts;
    }
}

/// Runs `schedule` on devices with outbox `O` and `I` task slots and checks
/// every guarantee. With `trace`, a failure carries the end of the trace and
/// `verbose` prints every trace line as it happens.
pub(crate) fn run<const O: usize, const I: usize>(
    s: &Schedule,
    trace: bool,
    verbose: bool,
) -> Result<Summary, Failure> {
    let mut sim = Sim::<O, I>::new(s.devices.clamp(1, 8) as usize, s.seed, trace, verbose);
    let outcome = catch_unwind(AssertUnwindSafe(|| sim.play(&s.ops)));
    let message = match outcome {
        Ok(Ok(summary)) => return Ok(summary),
        Ok(Err(message)) => message,
        Err(panic) => {
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            format!("panic: {text}")
        }
    };
    let mut trace = sim.trace_head;
    if sim.trace_skipped > 0 {
        trace.push(format!("... {} lines ...", sim.trace_skipped));
    }
    trace.extend(sim.trace);
    Err(Failure { message, trace })
}

/// Runs `schedule` quietly; on failure runs it again with tracing so that the
/// message shows what led to it (the simulator is deterministic).
pub(crate) fn check<const O: usize, const I: usize>(s: &Schedule) -> Result<Summary, String> {
    match run::<O, I>(s, false, false) {
        Ok(summary) => Ok(summary),
        Err(quiet) => match run::<O, I>(s, true, false) {
            Err(traced) => Err(traced.to_string()),
            Ok(_) => Err(format!(
                "{quiet} (and the traced rerun passed: nondeterminism!)"
            )),
        },
    }
}

/// A clock as one engine sees it: true time plus an offset, or standing still.
#[derive(Clone, Copy, Debug, Default)]
struct Clock {
    offset: i64,
    /// Standing still until true time `.0`, showing `.1`.
    frozen: Option<(u64, u64)>,
}

impl Clock {
    fn now(&self, t: u64) -> u64 {
        match self.frozen {
            Some((until, value)) if t < until => value,
            Some((until, value)) => value.saturating_add(t - until),
            None => (i128::from(t) + i128::from(self.offset)).clamp(0, i128::from(u64::MAX)) as u64,
        }
    }

    fn instant(&self, t: u64) -> Instant {
        Instant::from_millis(self.now(t))
    }

    /// The earliest true time at or after `t` at which this clock shows `at`.
    fn true_time_for(&self, at: Instant, t: u64) -> u64 {
        let at = at.as_millis();
        let now = self.now(t);
        if now >= at {
            return t;
        }
        match self.frozen {
            Some((until, value)) if t < until => until.saturating_add(at - value),
            _ => t.saturating_add(at - now),
        }
    }

    /// Ends a finished freeze: the clock goes on from where it stood.
    fn settle(&mut self, t: u64) {
        if let Some((until, value)) = self.frozen {
            if t >= until {
                self.offset = (i128::from(value) - i128::from(until)) as i64;
                self.frozen = None;
            }
        }
    }

    fn jump(&mut self, t: u64, ms: i64) {
        let now = self.now(t);
        let to = (i128::from(now) + i128::from(ms)).clamp(0, i128::from(u64::MAX)) as u64;
        match &mut self.frozen {
            Some((until, value)) if t < *until => *value = to,
            _ => self.offset = (i128::from(to) - i128::from(t)) as i64,
        }
    }

    fn freeze(&mut self, t: u64, ms: u64) {
        self.settle(t);
        let value = self.now(t);
        self.frozen = Some((t.saturating_add(ms), value));
    }
}

/// A small deterministic generator for the simulator's own choices.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// One storage slot of a device: the bytes, and what the simulator knew when
/// they were written completely (`None` for a torn write).
#[derive(Clone, Debug, Default)]
struct Slot {
    bytes: Vec<u8>,
    meta: Option<SlotMeta>,
}

#[derive(Clone, Debug, Default)]
struct SlotMeta {
    /// How many raised reports the snapshot holds.
    raised: usize,
    /// Tasks running on the device when it was taken.
    running: Vec<TaskId>,
}

/// Faults armed for one device; each fires once unless said otherwise.
#[derive(Clone, Debug, Default)]
struct Faults {
    offline: bool,
    refuse: u32,
    cut_after: Option<usize>,
    half_open: bool,
    stall: bool,
    push_lost: u32,
    push_delay: Option<u64>,
    push_dup: bool,
    /// Frame faults: direction, frames to let pass first, fault.
    frames: Vec<(Dir, u8, FrameFault)>,
    crash: Option<Crash>,
}

/// The application on a device: how it answers the engine.
#[derive(Clone, Debug)]
struct App {
    style: Style,
    held: Vec<TaskId>,
    policy_waiting: bool,
}

struct Dev<const O: usize, const I: usize> {
    id: DeviceId,
    cfg: DeviceConfig,
    engine: Device<O, I>,
    clock: Clock,
    slots: [Slot; 2],
    app: App,
    faults: Faults,
    /// The connection the device has open (index key into `Sim::conns`).
    conn: Option<u64>,
    /// Frames sent to and from this device, for duplicates and stale frames.
    history: [VecDeque<(u64, Vec<u8>)>; 2],
    /// Every `Hello.attempt` the device sent, across reboots: none may repeat.
    attempts: HashSet<u64>,
    // Report sequences sent since the device's last `Hello`: none twice.
    session_reports: HashSet<u32>,
    reboots: usize,
    writes: usize,
    /// Syncs started against the triggers that justify them (`rate`).
    rate: SyncRate,
    /// Server clock (ms) and true time of every push the server sent it.
    pushes_sent: Vec<(u64, u64)>,
    /// Device clock (ms) of the latest retry hint's deadline (`check_quiet`).
    hint_due: u64,
    /// Entries of `pushes_sent` from server processes before the latest
    /// restart.
    pushes_before_restart: usize,
}

/// The simulator. See the module docs.
pub(crate) struct Sim<const O: usize, const I: usize> {
    t: u64,
    rng: Rng,
    server: Server<MemoryStore>,
    server_clock: Clock,
    devs: Vec<Dev<O, I>>,
    conns: Vec<Conn>,
    next_conn: u64,
    pushes: Vec<(u64, usize)>,
    chunk_max: usize,
    truth: Truth,
    summary: Summary,
    trace_head: Vec<String>,
    trace_skipped: usize,
    trace: VecDeque<String>,
    tracing: bool,
    verbose: bool,
    op_index: usize,
    healed: bool,
    /// Time some clock lost (jumps back, standing still): timers run late by
    /// as much, so settling waits that much longer.
    lost_ms: u64,
}

type Res<T = ()> = Result<T, String>;

impl<const O: usize, const I: usize> Sim<O, I> {
    fn new(devices: usize, seed: u64, tracing: bool, verbose: bool) -> Self {
        let mut rng = Rng(seed);
        let mut nonce_seed = [0u8; 32];
        nonce_seed[..8].copy_from_slice(&rng.next().to_le_bytes());
        let cfg = ServerConfig::default();
        let mut server = Server::new(cfg, MemoryStore::new(), [7; 32], nonce_seed);
        let devs = (0..devices)
            .map(|i| {
                let id = DeviceId(i as u64 + 1);
                let secret = server.enroll(id, Instant::ZERO).expect("enroll");
                // SIM_REPORT_BASE=N: the server's store starts each device's
                // report numbering at N (say near u32::MAX, so that it wraps).
                if let Some(base) = std::env::var("SIM_REPORT_BASE")
                    .ok()
                    .and_then(|v| v.parse::<u32>().ok())
                {
                    let store = server.store_mut();
                    let mut rec = store.device(id).expect("store").expect("enrolled");
                    rec.last_report_seq = base;
                    store.put_device(&rec).expect("store");
                }
                let platform = if i % 2 == 0 {
                    Platform::Android
                } else {
                    Platform::Ios
                };
                let mut cfg = DeviceConfig::new(id, 0, secret, platform);
                cfg.push_token = heapless::String::try_from(format!("tok-{}", i + 1).as_str())
                    .expect("short token");
                cfg.jitter_seed = rng.next();
                let engine = Device::new(cfg.clone(), Instant::ZERO);
                let periodic = engine.periodic_interval().as_millis();
                let backoff_min = cfg.timers.backoff_min.as_millis();
                Dev {
                    id,
                    engine,
                    cfg,
                    clock: Clock::default(),
                    slots: Default::default(),
                    app: App {
                        style: Style::Succeed,
                        held: Vec::new(),
                        policy_waiting: false,
                    },
                    faults: Faults::default(),
                    conn: None,
                    history: Default::default(),
                    attempts: HashSet::new(),
                    session_reports: HashSet::new(),
                    reboots: 0,
                    writes: 0,
                    rate: SyncRate::new(0, 0, periodic, backoff_min),
                    pushes_sent: Vec::new(),
                    hint_due: 0,
                    pushes_before_restart: 0,
                }
            })
            .collect();
        Self {
            t: 0,
            rng,
            server,
            server_clock: Clock::default(),
            devs,
            conns: Vec::new(),
            next_conn: 0,
            pushes: Vec::new(),
            chunk_max: MAX_FRAME,
            truth: Truth::new(devices),
            summary: Summary::default(),
            trace_head: Vec::new(),
            trace_skipped: 0,
            trace: VecDeque::new(),
            tracing,
            verbose,
            op_index: 0,
            healed: false,
            lost_ms: 0,
        }
    }

    fn log(&mut self, line: String) {
        let line = format!("[{:>12} ms] {line}", self.t);
        if self.verbose {
            println!("{line}");
        }
        if self.trace_head.len() < TRACE_HEAD {
            return self.trace_head.push(line);
        }
        if self.trace.len() == TRACE_TAIL {
            self.trace.pop_front();
            self.trace_skipped += 1;
        }
        self.trace.push_back(line);
    }

    fn play(&mut self, ops: &[Op]) -> Res<Summary> {
        self.run_now()?;
        for (k, op) in ops.iter().enumerate() {
            self.op_index = k;
            trace!(self, "op #{k}: {op:?}");
            self.apply(op)?;
            self.check_bounds()?;
            self.truth.first_violation()?;
        }
        self.heal()?;
        self.settle()?;
        self.check_final()?;
        self.summary.virtual_ms = self.t;
        self.summary.tasks = self.truth.tasks.len();
        self.summary.executed =
            self.truth.tasks.values().map(|t| t.executions).sum::<u32>() as usize;
        self.summary.reports = self.truth.devs.iter().map(|d| d.received.len()).sum();
        self.summary.reboots = self.devs.iter().map(|d| d.reboots).sum();
        Ok(self.summary)
    }

    fn dev_index(&self, dev: u8) -> usize {
        dev as usize % self.devs.len()
    }

    fn srv_now(&self) -> Instant {
        self.server_clock.instant(self.t)
    }

    fn dev_now(&self, d: usize) -> Instant {
        self.devs[d].clock.instant(self.t)
    }

    // ---- operations ------------------------------------------------------

    fn apply(&mut self, op: &Op) -> Res {
        match *op {
            Op::Enqueue {
                dev,
                kind,
                expires_in_s,
                supersede,
            } => self.enqueue(self.dev_index(dev), kind, expires_in_s, supersede)?,
            Op::Cancel { dev, nth } => self.cancel(self.dev_index(dev), nth)?,
            Op::Policy { dev } => self.assign_policy(self.dev_index(dev))?,
            Op::Compliance { dev, event } => self.compliance(self.dev_index(dev), event)?,
            Op::ManualSync { dev } => {
                let d = self.dev_index(dev);
                let now = self.dev_now(d);
                self.devs[d].engine.manual_sync(now);
                self.credit(d, Why::Manual, 1);
            }
            Op::App { dev, style } => {
                let d = self.dev_index(dev);
                self.devs[d].app.style = style;
            }
            Op::FinishHeld { dev, fail } => self.finish_held(self.dev_index(dev), fail)?,
            Op::Progress { dev, percent } => {
                let d = self.dev_index(dev);
                if let Some(&task) = self.devs[d].app.held.first() {
                    if let Err(e) = self.devs[d].engine.task_progress(task, Some(percent)) {
                        return Err(format!("dev{d}: progress of held task {task:?}: {e:?}"));
                    }
                }
            }
            Op::ApplyPolicy { dev } => self.apply_waiting_policy(self.dev_index(dev))?,
            Op::PushLost { dev } => self.faults(dev).push_lost += 1,
            Op::PushDelay { dev, secs } => {
                self.faults(dev).push_delay = Some(u64::from(secs) * 1000)
            }
            Op::PushDup { dev } => self.faults(dev).push_dup = true,
            Op::Offline { dev, offline } => {
                let d = self.dev_index(dev);
                self.devs[d].faults.offline = offline;
                if offline {
                    self.cut_device(d, true, true)?;
                }
            }
            Op::Refuse { dev, times } => self.faults(dev).refuse += u32::from(times),
            Op::CutAfter { dev, bytes } => {
                let d = self.dev_index(dev);
                self.devs[d].faults.cut_after = Some(usize::from(bytes));
                if let Some(c) = self.dev_conn(d) {
                    self.conns[c].cut_after = Some(usize::from(bytes));
                    self.devs[d].faults.cut_after = None;
                }
            }
            Op::HalfOpen { dev } => self.faults(dev).half_open = true,
            Op::Stall { dev } => {
                let d = self.dev_index(dev);
                match self.dev_conn(d) {
                    Some(c) => {
                        self.conns[c].stalled = true;
                        self.conns[c].tell_server = false;
                    }
                    None => self.devs[d].faults.stall = true,
                }
            }
            Op::Chunk { max } => self.chunk_max = usize::from(max).max(1),
            Op::DupFrame { dev, up, skip } => self.arm_frame(dev, up, skip, FrameFault::Duplicate),
            Op::StaleFrame {
                dev,
                up,
                skip,
                back,
            } => self.arm_frame(dev, up, skip, FrameFault::Stale(back)),
            Op::FlipBit { dev, up, skip, bit } => {
                self.arm_frame(dev, up, skip, FrameFault::FlipBit(bit))
            }
            Op::Reboot { dev } => self.reboot(self.dev_index(dev))?,
            Op::CrashOnWrite { dev, crash } => self.faults(dev).crash = Some(crash),
            Op::Step { chunks } => {
                for _ in 0..chunks {
                    self.run_now()?;
                    self.deliver_one()?;
                }
            }
            Op::Advance { ms } => self.advance(u64::from(ms))?,
            Op::ClockJump { who, ms } => {
                let t = self.t;
                self.clock(who).jump(t, ms);
                self.lost_ms += ms.min(0).unsigned_abs();
                if let (Who::Device(dev), true) = (who, ms < 0) {
                    let d = self.dev_index(dev);
                    let (now, periodic) =
                        (self.dev_now(d), self.devs[d].engine.periodic_interval());
                    self.devs[d]
                        .rate
                        .clock_back(now.as_millis(), periodic.as_millis());
                }
            }
            Op::Freeze { who, secs } => {
                let t = self.t;
                self.clock(who).freeze(t, u64::from(secs) * 1000);
                self.lost_ms += u64::from(secs) * 1000;
            }
            Op::RestartServer => self.restart_server()?,
        }
        self.run_now()
    }

    /// The server process stops and a new one starts over the same store,
    /// on a clock that goes on (the server's clock here), and calls
    /// `Server::recover`. Every transport drops with the old process and
    /// both ends see it (the old engine is not told; the new one never knew
    /// them). Its push rate limits go with it: `push_sent` checks pushes
    /// of one process against each other only.
    fn restart_server(&mut self) -> Res {
        self.drain_server_events()?;
        for c in 0..self.conns.len() {
            self.conns[c].srv_open = false;
            self.conns[c].stalled = false;
            self.cut_conn(c, true)?;
        }
        self.conns.retain(|c| c.dev_open || c.srv_open);
        let mut nonce_seed = [0u8; 32];
        nonce_seed[..8].copy_from_slice(&self.rng.next().to_le_bytes());
        let cfg = *self.server.config();
        let fresh = Server::new(cfg, MemoryStore::new(), [7; 32], nonce_seed);
        let old = core::mem::replace(&mut self.server, fresh);
        self.server = Server::new(cfg, old.into_store(), [7; 32], nonce_seed);
        let now = self.srv_now();
        let recovered = self
            .server
            .recover(now)
            .map_err(|e| format!("recover: {e:?}"))?;
        trace!(self, "server restarted at {now:?}: {recovered:?}");
        self.summary.restarts += 1;
        for dev in &mut self.devs {
            dev.pushes_before_restart = dev.pushes_sent.len();
        }
        self.drain_server_events()?;
        Ok(())
    }

    fn faults(&mut self, dev: u8) -> &mut Faults {
        let d = self.dev_index(dev);
        &mut self.devs[d].faults
    }

    fn clock(&mut self, who: Who) -> &mut Clock {
        match who {
            Who::Server => &mut self.server_clock,
            Who::Device(dev) => {
                let d = self.dev_index(dev);
                &mut self.devs[d].clock
            }
        }
    }

    fn arm_frame(&mut self, dev: u8, up: bool, skip: u8, fault: FrameFault) {
        let dir = if up { Dir::Up } else { Dir::Down };
        self.faults(dev).frames.push((dir, skip, fault));
    }

    fn enqueue(&mut self, d: usize, kind: TaskKind, expires: Option<u32>, key: Option<u8>) -> Res {
        let now = self.srv_now();
        let opts = TaskOptions {
            expires_at: expires.map(|s| now + Duration::from_secs(u64::from(s))),
            supersede: key.map(|k| SupersedeKey(u64::from(k))),
        };
        let id = self.devs[d].id;
        let result = self.server.enqueue_task(id, kind, opts, now);
        self.drain_server_events()?;
        match result {
            Ok(task) => {
                trace!(
                    self,
                    "operator: task {} ({kind:?}) queued for dev{d}",
                    task.0
                );
                self.truth.queued(d, task, kind, expires.is_some());
                Ok(())
            }
            Err(ServerError::QueueFull) => Ok(()),
            Err(e) => Err(format!("enqueue_task for dev{d}: {e:?}")),
        }
    }

    fn cancel(&mut self, d: usize, nth: u8) -> Res {
        let tasks = self.truth.tasks_of(d);
        if tasks.is_empty() {
            return Ok(());
        }
        let task = tasks[usize::from(nth) % tasks.len()];
        let now = self.srv_now();
        let result = self.server.cancel_task(task, now);
        self.drain_server_events()?;
        trace!(self, "operator: cancel task {} -> {result:?}", task.0);
        match result {
            Ok(state) => {
                if state.maybe_on_device() {
                    self.truth.cancel_requested(task);
                }
                Ok(())
            }
            Err(ServerError::AlreadyFinal(_)) => Ok(()),
            Err(e) => Err(format!("cancel_task {}: {e:?}", task.0)),
        }
    }

    fn assign_policy(&mut self, d: usize) -> Res {
        let now = self.srv_now();
        let value = self.op_index as i64;
        let settings = [
            Setting { key: 1, value },
            Setting {
                key: 2,
                value: -value,
            },
        ];
        let result = self.server.assign_policy(self.devs[d].id, &settings, now);
        self.drain_server_events()?;
        let version = result.map_err(|e| format!("assign_policy dev{d}: {e:?}"))?;
        trace!(self, "operator: policy v{version} for dev{d}");
        self.truth.devs[d].assigned = version;
        Ok(())
    }

    fn compliance(&mut self, d: usize, event: ComplianceEvent) -> Res {
        let now = self.dev_now(d);
        match self.devs[d].engine.raise_compliance(event, now) {
            Ok(()) => {
                trace!(self, "dev{d} app: raised {event:?}");
                self.truth.raised(d, Raised::Compliance(event));
                self.credit(d, Why::Compliance, 1);
                Ok(())
            }
            Err(DeviceError::OutboxFull) => {
                trace!(self, "dev{d} app: outbox full, {event:?} not raised");
                Ok(())
            }
            Err(e) => Err(format!("dev{d}: raise_compliance: {e:?}")),
        }
    }

    fn finish_held(&mut self, d: usize, fail: bool) -> Res {
        if self.devs[d].app.held.is_empty() {
            return Ok(());
        }
        let task = self.devs[d].app.held.remove(0);
        let status = if fail {
            TaskStatus::Failed { reason: 300 }
        } else {
            TaskStatus::Succeeded {
                result: self.truth.result_for(task),
            }
        };
        self.report_status(d, task, status)
    }

    fn report_status(&mut self, d: usize, task: TaskId, status: TaskStatus) -> Res {
        let now = self.dev_now(d);
        self.devs[d]
            .engine
            .task_status(task, status, now)
            .map_err(|e| format!("dev{d}: task_status({}, {status:?}): {e:?}", task.0))?;
        trace!(self, "dev{d} app: task {} -> {status:?}", task.0);
        self.truth.raised(d, Raised::Task(task, status));
        self.credit(d, Why::Status, 2);
        if let TaskStatus::Deferred {
            retry_after_s: Some(s),
        } = status
        {
            self.credit(d, Why::Hint, 1);
            // The engine waits at least `backoff_min` (11.1, `task_status`).
            let wait = (u64::from(s) * 1000).max(self.devs[d].cfg.timers.backoff_min.as_millis());
            let due = &mut self.devs[d].hint_due;
            *due = (*due).max(now.as_millis() + wait);
        }
        Ok(())
    }

    fn apply_waiting_policy(&mut self, d: usize) -> Res {
        let Some(version) = self.devs[d].engine.pending_policy().map(|p| p.version) else {
            self.devs[d].app.policy_waiting = false;
            return Ok(());
        };
        let outcome = match self.devs[d].app.style {
            Style::Fail if !self.healed => PolicyOutcome::Rejected { reason: 400 },
            Style::Defer { .. } if !self.healed => {
                let mut failed = heapless::Vec::new();
                let _ = failed.push(SettingFailure {
                    key: 2,
                    reason: 401,
                });
                PolicyOutcome::Partial { failed }
            }
            _ => PolicyOutcome::Applied,
        };
        let now = self.dev_now(d);
        match self.devs[d]
            .engine
            .policy_applied(version, outcome.clone(), now)
        {
            Ok(()) => {
                trace!(self, "dev{d} app: policy v{version} {outcome:?}");
                self.devs[d].app.policy_waiting = false;
                self.credit(d, Why::Policy, 1);
                self.truth.raised(d, Raised::Policy(version, outcome));
                Ok(())
            }
            Err(DeviceError::OutboxFull) => {
                self.devs[d].app.policy_waiting = true;
                Ok(())
            }
            Err(e) => Err(format!("dev{d}: policy_applied(v{version}): {e:?}")),
        }
    }

    // ---- the device's run loop --------------------------------------------

    /// One round of the device run loop at the current time; `true` if
    /// anything happened.
    fn pump_device(&mut self, d: usize) -> Res<bool> {
        let mut progress = false;
        let now = self.dev_now(d);
        let mut rounds = 0;
        while self.devs[d]
            .engine
            .poll_timeout()
            .is_some_and(|at| at <= now)
        {
            self.devs[d].engine.handle_timeout(now);
            progress = true;
            rounds += 1;
            if rounds > 3 {
                let at = self.devs[d].engine.poll_timeout();
                return Err(format!(
                    "dev{d}: poll_timeout stays at {at:?} <= now {now:?} after handle_timeout"
                ));
            }
        }
        while let Some(ev) = self.devs[d].engine.poll_event() {
            progress = true;
            if self.on_device_event(d, ev)? {
                return Ok(true); // rebooted: a new engine
            }
        }
        let mut buf = [0u8; MAX_FRAME];
        loop {
            let n = match self.devs[d].engine.poll_transmit(&mut buf) {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(e) => return Err(format!("dev{d}: poll_transmit: {e:?}")),
            };
            progress = true;
            let frame = buf[..n].to_vec();
            // A `Hello` travels with key 0, so its payload reads as is.
            let payload = mdm_sync::wire::frame::payload(&frame);
            let hello = payload.first() == Some(&0);
            if let Some(Ok(Up::Hello(h))) = hello.then(|| mdm_sync::wire::decode::<Up>(payload)) {
                if !self.devs[d].attempts.insert(h.attempt) {
                    return Err(format!("dev{d}: Hello.attempt {:#x} sent twice", h.attempt));
                }
            }
            if hello {
                self.devs[d].session_reports.clear();
            } else if let Ok(Up::Report { seq, .. }) = mdm_sync::wire::decode::<Up>(payload) {
                if !self.devs[d].session_reports.insert(seq) {
                    return Err(format!("dev{d}: report {seq} sent twice in one session"));
                }
            }
            match self.devs[d].conn.and_then(|key| self.conn_index(key)) {
                Some(c) if self.conns[c].dev_open => self.send_frame(c, Dir::Up, frame)?,
                _ => return Err(format!("dev{d}: transmits with no transport open")),
            }
        }
        Ok(progress)
    }

    /// Acts on one device event; `true` if the device rebooted.
    fn on_device_event(&mut self, d: usize, ev: Event) -> Res<bool> {
        let now = self.dev_now(d);
        match ev {
            Event::Persist => return self.persist(d),
            Event::Connect => {
                let (t, periodic) = (self.t, self.devs[d].engine.periodic_interval());
                let rate = &mut self.devs[d].rate;
                rate.sync_started(t, now.as_millis(), periodic.as_millis())
                    .map_err(|e| format!("dev{d}: {e}"))?;
                self.connect(d)?
            }
            Event::Disconnect => {
                trace!(self, "dev{d}: disconnect");
                if let Some(c) = self.dev_conn(d) {
                    self.conns[c].dev_open = false;
                }
                self.devs[d].conn = None;
            }
            Event::Execute(task) => {
                let style = self.devs[d].app.style;
                trace!(
                    self,
                    "dev{d}: EXECUTE task {} seq {} ({style:?})",
                    task.id.0,
                    task.seq
                );
                let deferred = matches!(style, Style::Defer { .. }) && !self.healed;
                self.credit(d, Why::Accepted, 1);
                self.truth.executed(d, task.id, !deferred);
                match style {
                    _ if self.healed => self.report_status(d, task.id, self.success(task.id))?,
                    Style::Succeed => self.report_status(d, task.id, self.success(task.id))?,
                    Style::Fail => {
                        self.report_status(d, task.id, TaskStatus::Failed { reason: 300 })?
                    }
                    Style::Defer { retry_s } => {
                        let status = TaskStatus::Deferred {
                            retry_after_s: Some(u32::from(retry_s)),
                        };
                        self.report_status(d, task.id, status)?
                    }
                    Style::Hold => self.devs[d].app.held.push(task.id),
                }
            }
            Event::Cancel(task) => {
                trace!(self, "dev{d}: cancel task {}", task.0);
                if let Some(pos) = self.devs[d].app.held.iter().position(|t| *t == task) {
                    self.devs[d].app.held.remove(pos);
                    self.report_status(d, task, TaskStatus::Cancelled)?;
                }
            }
            Event::ApplyPolicy { version } => {
                trace!(self, "dev{d}: apply policy v{version}");
                if self.devs[d].app.style == Style::Hold && !self.healed {
                    self.devs[d].app.policy_waiting = true;
                } else {
                    self.apply_waiting_policy(d)?;
                }
            }
            Event::SyncDone { trigger } => trace!(self, "dev{d}: sync done ({trigger:?})"),
            Event::SyncFailed { error } => {
                trace!(self, "dev{d}: sync failed: {error:?}");
                let t = self.t;
                self.devs[d].rate.failed(t, now.as_millis());
            }
            other => trace!(self, "dev{d}: event {other:?} at {now:?}"),
        }
        Ok(false)
    }

    fn success(&self, task: TaskId) -> TaskStatus {
        TaskStatus::Succeeded {
            result: self.truth.result_for(task),
        }
    }

    /// Writes the snapshot to its slot, or crashes while or after doing so.
    fn persist(&mut self, d: usize) -> Res<bool> {
        let mut buf = vec![0u8; Device::<O, I>::SNAPSHOT_MAX];
        let dev = &mut self.devs[d];
        let n = dev
            .engine
            .snapshot(&mut buf)
            .map_err(|e| format!("dev{d}: snapshot: {e:?} (SNAPSHOT_MAX too small?)"))?;
        buf.truncate(n);
        round_trip::<O, I>(&dev.cfg, &buf, dev.clock.instant(self.t))
            .map_err(|e| format!("dev{d}: snapshot round trip: {e}"))?;
        let slot = dev.engine.snapshot_slot();
        let crash = dev.faults.crash.take();
        let running = dev.engine.running_tasks().map(|t| t.id).collect();
        let raised = self.truth.devs[d].raised.len();
        let meta = Some(SlotMeta { raised, running });
        if let Some(Crash::DuringWrite { keep }) = crash {
            let old = core::mem::take(&mut dev.slots[slot]);
            let keep = usize::from(keep) % n.max(1);
            let mut torn = buf[..keep].to_vec();
            torn.extend(old.bytes.iter().skip(keep));
            // A tear that leaves exactly the new (or the old) bytes is no tear.
            let meta = if torn == buf {
                meta
            } else if torn == old.bytes {
                old.meta
            } else {
                None
            };
            dev.slots[slot] = Slot { bytes: torn, meta };
            trace!(
                self,
                "dev{d}: power lost writing slot {slot} ({keep} of {n} bytes)"
            );
            self.reboot(d)?;
            return Ok(true);
        }
        dev.slots[slot] = Slot { bytes: buf, meta };
        dev.writes += 1;
        if let Some(Crash::AfterWrite) = crash {
            trace!(self, "dev{d}: power lost right after writing slot {slot}");
            self.reboot(d)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Power cycle: the transport dies, the application forgets everything,
    /// and the engine comes back from the newer valid storage slot.
    fn reboot(&mut self, d: usize) -> Res {
        self.summary.reboots += 1;
        let tell_server = self.rng.next().is_multiple_of(2);
        self.cut_device(d, tell_server, false)?;
        let now = self.dev_now(d);
        let dev = &mut self.devs[d];
        dev.reboots += 1;
        dev.app.held.clear();
        dev.app.policy_waiting = false;
        dev.faults.crash = None;
        let [a, b] = &dev.slots;
        let picked = pick_latest(&a.bytes, &b.bytes);
        let which = picked.map(|p| usize::from(!core::ptr::eq(p.as_ptr(), a.bytes.as_ptr())));
        let Some(k) = which else {
            if dev.writes > 0 {
                return Err(format!("dev{d}: no valid slot after {} writes", dev.writes));
            }
            dev.engine = Device::new(dev.cfg.clone(), now);
            trace!(self, "dev{d}: rebooted with no snapshot (first boot)");
            self.truth.rebooted(d, 0, &[]);
            self.credit(d, Why::Boot, 2);
            return Ok(());
        };
        let Some(meta) = dev.slots[k].meta.clone() else {
            return Err(format!(
                "dev{d}: a torn snapshot in slot {k} passed its CRC"
            ));
        };
        dev.engine = Device::restore(dev.cfg.clone(), &dev.slots[k].bytes, now)
            .map_err(|e| format!("dev{d}: restore of a complete snapshot failed: {e:?}"))?;
        trace!(
            self,
            "dev{d}: rebooted from slot {k}, running then: {:?}",
            meta.running
        );
        self.truth.rebooted(d, meta.raised, &meta.running);
        self.credit(d, Why::Boot, 2);
        Ok(())
    }

    // ---- the server's run loop ----------------------------------------------

    fn pump_server(&mut self) -> Res<bool> {
        let mut progress = false;
        let now = self.srv_now();
        if self.server.poll_timeout().is_some_and(|at| at <= now) {
            self.server
                .handle_timeout(now)
                .map_err(|e| format!("server handle_timeout: {e:?}"))?;
            progress = true;
            if self.server.poll_timeout().is_some_and(|at| at <= now) {
                return Err("server: poll_timeout stays in the past".into());
            }
        }
        progress |= self.drain_server_events()?;
        let mut buf = [0u8; 700];
        while let Some((conn, n)) = self.server.poll_transmit(&mut buf) {
            progress = true;
            let Some(c) = self
                .conns
                .iter()
                .position(|c| c.server == conn && c.srv_open)
            else {
                return Err(format!("server transmits on {conn:?}, which it closed"));
            };
            self.conns[c].assembler.extend_from_slice(&buf[..n]);
            for frame in net::split_frames(&mut self.conns[c].assembler)? {
                self.check_welcome(c, &frame)?;
                self.forget_unstored_reports(c, &frame);
                self.send_frame(c, Dir::Down, frame)?;
            }
            self.drain_server_events()?;
        }
        Ok(progress)
    }

    /// A `Welcome` asks for the push token exactly when the store holds
    /// none for the device (PROTOCOL.md 6.5; `MemoryStore` answers from a
    /// flag in the device's row, which every row write must keep).
    fn check_welcome(&mut self, c: usize, frame: &[u8]) -> Res {
        let payload = frame.get(4..frame.len().saturating_sub(4)).unwrap_or(&[]);
        if let Ok(Down::Welcome { want_token, .. }) = wire::decode::<Down>(payload) {
            let d = self.conns[c].dev;
            let held = self.server.store().push_target(self.devs[d].id);
            let held = held.map_err(|e| format!("push_target: {e:?}"))?;
            if want_token == held.is_some() {
                return Err(format!(
                    "dev{d}: Welcome want_token {want_token}, the store holds {held:?}"
                ));
            }
            if want_token {
                // The device may sync once more to send its token (7.2).
                self.credit(d, Why::WantToken, 1);
            }
        }
        Ok(())
    }

    /// A `Welcome` says the server stored no report numbered after its
    /// `ack`: one sent with such a number before is sent again as new, and
    /// after the device adopts the server's numbering (PROTOCOL.md 9.3, 9.4) a
    /// number may carry another report. So the numbers seen leaving the
    /// device after `ack` are forgotten (the truth counts each stored report
    /// once).
    fn forget_unstored_reports(&mut self, c: usize, frame: &[u8]) {
        let payload = frame.get(4..frame.len().saturating_sub(4)).unwrap_or(&[]);
        if let Ok(Down::Welcome { ack, .. }) = wire::decode::<Down>(payload) {
            let d = self.conns[c].dev;
            let seen = &mut self.truth.devs[d].seen_reports;
            seen.retain(|s| !wire::seq_newer(*s, ack));
        }
    }

    fn drain_server_events(&mut self) -> Res<bool> {
        let mut any = false;
        while let Some(ev) = self.server.poll_event() {
            any = true;
            self.on_server_event(ev)?;
        }
        Ok(any)
    }

    fn on_server_event(&mut self, ev: ServerEvent) -> Res {
        match ev {
            ServerEvent::SendPush { device, .. } => {
                self.summary.pushes += 1;
                self.push_sent(device)?;
                self.push_requested(device)?
            }
            ServerEvent::Close { conn } => {
                trace!(self, "server: close {conn:?}");
                if let Some(c) = self.conns.iter().position(|c| c.server == conn) {
                    self.conns[c].srv_open = false;
                }
            }
            ServerEvent::TaskChanged {
                device,
                task,
                state,
            } => {
                trace!(self, "server: task {} of {device:?} -> {state:?}", task.0);
                let d = self.dev_of(device)?;
                self.truth.task_changed(d, task, state, self.op_index);
            }
            ServerEvent::Compliance { device, event } => {
                trace!(self, "server: compliance {event:?} from {device:?}");
                let d = self.dev_of(device)?;
                self.truth.received(d, Received::Compliance(event));
            }
            ServerEvent::PolicyReported { device, state } => {
                trace!(self, "server: policy {state:?} from {device:?}");
                let d = self.dev_of(device)?;
                self.truth.policy_received(d, state);
            }
            other => trace!(self, "server: {other:?}"),
        }
        Ok(())
    }

    fn dev_of(&self, id: DeviceId) -> Res<usize> {
        let d = (id.0 as usize).wrapping_sub(1);
        if d < self.devs.len() {
            Ok(d)
        } else {
            Err(format!("server event for unknown device {id:?}"))
        }
    }

    /// A device's sync is justified by `n` credits for `why` (`rate`).
    fn credit(&mut self, d: usize, why: Why, n: i64) {
        let t = self.t;
        self.devs[d].rate.credit(t, why, n);
    }

    /// The server sent a push for `device`: at most one per
    /// `push_min_interval` of the server's clock (PROTOCOL.md 10.2; see
    /// `rate`).
    fn push_sent(&mut self, device: DeviceId) -> Res {
        let d = self.dev_of(device)?;
        let now = self.srv_now().as_millis();
        let min = self.server.config().push_min_interval.as_millis();
        let dev = &self.devs[d];
        let this_process = dev.pushes_sent.len() > dev.pushes_before_restart;
        if let Some(&(last, _)) = dev.pushes_sent.last().filter(|_| this_process) {
            if now < last.saturating_add(min) {
                return Err(format!(
                    "dev{d}: the server pushed at {now} ms (its clock), {} ms after the \
                     push at {last} ms: less than push_min_interval {min} ms",
                    now as i128 - last as i128
                ));
            }
        }
        let t = self.t;
        self.devs[d].pushes_sent.push((now, t));
        Ok(())
    }

    fn push_requested(&mut self, device: DeviceId) -> Res {
        let d = self.dev_of(device)?;
        let f = &mut self.devs[d].faults;
        if f.offline || f.push_lost > 0 {
            f.push_lost = f.push_lost.saturating_sub(1);
            trace!(self, "push to dev{d} lost");
            return Ok(());
        }
        let at = self.t + f.push_delay.take().unwrap_or(0);
        self.pushes.push((at, d));
        if core::mem::take(&mut f.push_dup) {
            self.pushes.push((at + 1, d));
        }
        trace!(self, "push to dev{d} arrives at {at}");
        Ok(())
    }

    fn deliver_pushes(&mut self) -> bool {
        let t = self.t;
        let due: Vec<usize> = self
            .pushes
            .iter()
            .filter(|(at, _)| *at <= t)
            .map(|(_, d)| *d)
            .collect();
        self.pushes.retain(|(at, _)| *at > t);
        for &d in &due {
            if !self.devs[d].faults.offline {
                let now = self.dev_now(d);
                self.devs[d].engine.push_received(now);
                self.credit(d, Why::Push, 1);
            }
        }
        !due.is_empty()
    }

    // ---- time ----------------------------------------------------------------

    /// Everything that happens at the current instant without moving bytes.
    fn run_now(&mut self) -> Res {
        for _ in 0..ROUNDS_MAX {
            let mut progress = self.deliver_pushes();
            progress |= self.pump_server()?;
            for d in 0..self.devs.len() {
                progress |= self.pump_device(d)?;
            }
            progress |= self.close_finished()?;
            self.truth.first_violation()?;
            if !progress {
                return Ok(());
            }
        }
        Err("livelock: the engines keep working without time passing".into())
    }

    /// Moves every byte that can move now, in random chunks.
    fn flush(&mut self) -> Res {
        for _ in 0..ROUNDS_MAX * 10 {
            self.run_now()?;
            if !self.deliver_one()? {
                return Ok(());
            }
        }
        Err("livelock: bytes keep flowing without time passing".into())
    }

    fn advance(&mut self, ms: u64) -> Res {
        let target = self.t.saturating_add(ms);
        for _ in 0..ROUNDS_MAX * 10 {
            self.flush()?;
            let next = self.next_deadline();
            if next > target {
                self.t = target;
                self.settle_clocks();
                return self.flush();
            }
            if next <= self.t {
                return Err(format!(
                    "an engine deadline at true time {next} is never handled"
                ));
            }
            self.t = next;
            self.settle_clocks();
        }
        Err("livelock: too many deadlines in one advance".into())
    }

    fn settle_clocks(&mut self) {
        let t = self.t;
        self.server_clock.settle(t);
        for dev in &mut self.devs {
            dev.clock.settle(t);
        }
    }

    /// The earliest true time at which some engine or push has work.
    fn next_deadline(&self) -> u64 {
        let t = self.t;
        let mut next = u64::MAX;
        if let Some(at) = self.server.poll_timeout() {
            next = next.min(self.server_clock.true_time_for(at, t));
        }
        for dev in &self.devs {
            if let Some(at) = dev.engine.poll_timeout() {
                next = next.min(dev.clock.true_time_for(at, t));
            }
        }
        for (at, _) in &self.pushes {
            next = next.min(*at);
        }
        next
    }

    // ---- healing and the final checks ----------------------------------------

    /// The network and the applications recover: no more faults, held work
    /// finishes, clocks run (from wherever they stand).
    fn heal(&mut self) -> Res {
        trace!(self, "=== heal ===");
        self.healed = true;
        self.chunk_max = MAX_FRAME;
        let t = self.t;
        for c in 0..self.conns.len() {
            self.conns[c].cut_after = None;
        }
        // A stalled transport is reset at both ends.
        while let Some(c) = self.conns.iter().position(|c| c.stalled) {
            self.conns[c].stalled = false;
            self.conns[c].tell_server = true;
            self.cut_conn(c, true)?;
            self.conns.retain(|c| c.dev_open || c.srv_open);
        }
        for d in 0..self.devs.len() {
            self.devs[d].faults = Faults::default();
            self.devs[d].app.style = Style::Succeed;
            if let Some((until, _)) = self.devs[d].clock.frozen {
                self.devs[d].clock.freeze(t, until.saturating_sub(t).min(1));
            }
        }
        self.server_clock.settle(t);
        self.run_now()?;
        self.app_catch_up()
    }

    /// The healed applications finish held tasks and apply waiting policies.
    fn app_catch_up(&mut self) -> Res {
        for d in 0..self.devs.len() {
            while !self.devs[d].app.held.is_empty() {
                self.finish_held(d, false)?;
            }
            if self.devs[d].engine.pending_policy().is_some() {
                self.apply_waiting_policy(d)?;
            }
        }
        self.run_now()
    }

    fn settle(&mut self) -> Res {
        let start = self.t;
        let mut converged_at = None;
        let mut counts_at = (0, 0);
        while self.t - start < SETTLE_MAX + self.lost_ms {
            self.advance(HOUR / 4)?;
            self.app_catch_up()?;
            match (self.converged(), converged_at) {
                (true, None) => {
                    converged_at = Some(self.t);
                    counts_at = (self.summary.connections, self.summary.pushes);
                }
                (true, Some(at)) if self.t - at >= SETTLE_AFTER => {
                    self.summary.steady_connections = self.summary.connections - counts_at.0;
                    self.summary.steady_pushes = self.summary.pushes - counts_at.1;
                    self.summary.steady_ms = self.t - at;
                    return self.check_quiet(at);
                }
                (false, _) => converged_at = None,
                _ => {}
            }
        }
        Err(format!(
            "no convergence {} days after healing: {}",
            (SETTLE_MAX + self.lost_ms) / DAY,
            self.what_is_missing()
        ))
    }

    /// After `from` (true time; what happened at `from` led to convergence),
    /// everything had converged and the network was healed: no work is
    /// left, so the server pushes at most once, the push it held back before
    /// (work that came within `push_min_interval` of its last push goes out
    /// at the end of that interval even if a session got the work meanwhile,
    /// PROTOCOL.md 10.2; a server clock that stood still delays it into the
    /// tail), and a device syncs only for its periodic timer, that push and
    /// a retry hint still pending (see `rate`). A hint is a deadline on the
    /// device's clock: one set before the clock went back fires as much
    /// later, into the tail (`--tight --ops 256` seed 10363 on a
    /// `Device<3, 1>`: a 661 s hint, the clock back 23 h, one sync 26,500 s
    /// later, long after its task was done). It is a single timer, so one
    /// sync at most.
    fn check_quiet(&self, from: u64) -> Res {
        let window = self.t - from;
        let min = self.server.config().push_min_interval.as_millis();
        for (d, dev) in self.devs.iter().enumerate() {
            let tail = dev.pushes_sent.iter().position(|(_, t)| *t > from);
            let pushes = tail.map_or(0, |k| dev.pushes_sent.len() - k);
            let held = match tail {
                Some(k) if k > 0 => dev.pushes_sent[k].0 == dev.pushes_sent[k - 1].0 + min,
                _ => false,
            };
            if pushes > 1 || (pushes == 1 && !held) {
                return Err(format!(
                    "dev{d}: {pushes} pushes in the {window} ms after everything converged \
                     (server clock, true time: {:?})",
                    &dev.pushes_sent[tail.unwrap_or(0)..]
                ));
            }
            let periodic = dev.engine.periodic_interval().as_millis().max(1);
            let hint = u64::from(dev.hint_due > dev.clock.now(from));
            let allowed = window / periodic + 1 + pushes as u64 + hint;
            let syncs = dev.rate.syncs_after(from) as u64;
            if std::env::var("SIM_RATE_STATS").is_ok() {
                let (low, fast) = (dev.rate.low, dev.rate.fast_max);
                println!("rate dev{d}: quiet {syncs} syncs {pushes} pushes in {window} ms, low {low}, fast {fast}");
            }
            if syncs > allowed {
                return Err(format!(
                    "dev{d}: {syncs} syncs in the {window} ms after everything converged; \
                     its periodic timer ({periodic} ms), {pushes} push(es) and {hint} retry \
                     hint(s) allow {allowed}"
                ));
            }
        }
        Ok(())
    }

    fn converged(&self) -> bool {
        self.what_is_missing().is_empty()
    }

    fn what_is_missing(&self) -> String {
        let mut out = String::new();
        if self.server.session_count() != 0 || !self.conns.is_empty() {
            let n = self.server.session_count();
            let _ = write!(
                out,
                "{n} server sessions, {} transports open; ",
                self.conns.len()
            );
        }
        for (id, t) in &self.truth.tasks {
            if !t.state.is_final() {
                let _ = write!(out, "task {} of dev{} is {:?}; ", id.0, t.dev, t.state);
            }
        }
        for (d, dev) in self.devs.iter().enumerate() {
            let truth = &self.truth.devs[d];
            if dev.engine.policy_version() != truth.assigned {
                let v = dev.engine.policy_version();
                let _ = write!(out, "dev{d} on policy v{v}, assigned v{}; ", truth.assigned);
            }
            if truth.received.len() != truth.raised.len() {
                let (r, s) = (truth.received.len(), truth.raised.len());
                let _ = write!(out, "dev{d}: server received {r} of {s} raised reports; ");
            }
            if dev.engine.outbox_len() != 0 || dev.engine.running_tasks().count() != 0 {
                let _ = write!(out, "dev{d} has an outbox or running tasks; ");
            }
            // The server learns the token in the first sync after boot, which
            // a clock that went back may delay by the jump (hours): settling
            // waits for it (`check_final` then checks the token itself).
            let target = self.server.store().push_target(dev.id);
            if !matches!(target, Ok(Some((_, ref t))) if *t == dev.cfg.push_token) {
                let _ = write!(out, "dev{d}: the server holds push token {target:?}; ");
            }
        }
        out
    }

    fn check_bounds(&self) -> Res {
        for (d, dev) in self.devs.iter().enumerate() {
            let (outbox, running) = (dev.engine.outbox_len(), dev.engine.running_tasks().count());
            if outbox > O || running > I || outbox + running > O {
                return Err(format!(
                    "dev{d}: outbox {outbox} / running {running} over bounds"
                ));
            }
        }
        let open = self.conns.iter().filter(|c| c.srv_open).count();
        if self.server.session_count() != open {
            let n = self.server.session_count();
            return Err(format!(
                "server holds {n} sessions for {open} open transports"
            ));
        }
        Ok(())
    }

    fn check_final(&mut self) -> Res {
        self.check_bounds()?;
        if self.server.session_count() != 0 || !self.conns.is_empty() {
            return Err(format!(
                "after settling: {} server sessions, {} transports left",
                self.server.session_count(),
                self.conns.len()
            ));
        }
        for (id, t) in &self.truth.tasks {
            let dev = self.devs[t.dev].id;
            let stored = self.server.task_state(dev, *id);
            if stored != Some(t.state) {
                return Err(format!(
                    "task {}: console shows {stored:?}, events said {:?}",
                    id.0, t.state
                ));
            }
        }
        self.truth.check_executions()?;
        self.truth.check_reports()?;
        for (d, dev) in self.devs.iter().enumerate() {
            // Every device synced since its last boot, so the server holds
            // its token, though later Hellos carried none (PROTOCOL.md 7.2).
            let target = self.server.store().push_target(dev.id);
            let token = target.map_err(|e| format!("push_target: {e:?}"))?;
            if token.as_ref().map(|(_, t)| &**t) != Some(dev.cfg.push_token.as_str()) {
                return Err(format!("dev{d}: the server holds push token {token:?}"));
            }
            let view = self
                .server
                .device_view(dev.id)
                .map_err(|e| format!("device_view: {e:?}"))?;
            let assigned = self.truth.devs[d].assigned;
            if view.policy_assigned != assigned {
                return Err(format!("dev{d}: console policy v{}", view.policy_assigned));
            }
            if assigned != 0 && truth::policy_version(&view.policy_state) != Some(assigned) {
                return Err(format!(
                    "dev{d}: console policy state {:?}, assigned v{assigned}",
                    view.policy_state
                ));
            }
        }
        let fleet = self
            .server
            .fleet_view()
            .map_err(|e| format!("fleet_view: {e:?}"))?;
        if fleet.on_latest_policy != self.devs.len()
            || fleet.tasks.waiting + fleet.tasks.on_device != 0
        {
            return Err(format!("fleet view not converged: {fleet:?}"));
        }
        Ok(())
    }
}

/// The result a succeeding task of `kind` carries.
pub(crate) fn result_of(kind: TaskKind, task: TaskId) -> Option<TaskResult> {
    match kind {
        TaskKind::Locate => Some(TaskResult::Location {
            lat_e7: 473_000_000 + task.0 as i32,
            lon_e7: 85_000_000,
            accuracy_m: 12,
        }),
        TaskKind::Scan => Some(TaskResult::Scan {
            threats: (task.0 % 3) as u16,
        }),
        _ => None,
    }
}

/// Every snapshot an engine takes restores, and the restored engine, before
/// anything happens to it, snapshots to the same bytes but for the tasks
/// that were running: none is (PROTOCOL.md 14), each comes back as its
/// `Failed { reason: 1 }` report after the outbox, last task first, and
/// `next_report_seq` counts them. So the implied report sequences, the
/// header's fields (the flags byte, last, included) and every report body
/// survive a reboot exactly.
fn round_trip<const O: usize, const I: usize>(
    cfg: &DeviceConfig,
    bytes: &[u8],
    now: Instant,
) -> Res {
    const HEADER: usize = 42;
    const COUNTS: usize = HEADER - 5; // the two counts, then the flags
    const TASK: usize = 13;
    let r = Device::<O, I>::restore(cfg.clone(), bytes, now).map_err(|e| format!("{e:?}"))?;
    let mut again = vec![0u8; Device::<O, I>::SNAPSHOT_MAX];
    let n = r.snapshot(&mut again).map_err(|e| format!("{e:?}"))?;
    again.truncate(n);
    let u16_at = |b: &[u8], at: usize| usize::from(u16::from_le_bytes([b[at], b[at + 1]]));
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    let tasks = u16_at(bytes, COUNTS);
    let reports = u16_at(bytes, COUNTS + 2);
    let mut want = bytes[..HEADER].to_vec();
    let next = u32_at(bytes, 25).wrapping_add(tasks as u32);
    want[25..29].copy_from_slice(&next.to_le_bytes());
    want[COUNTS..COUNTS + 2].copy_from_slice(&0u16.to_le_bytes());
    want[COUNTS + 2..COUNTS + 4].copy_from_slice(&((reports + tasks) as u16).to_le_bytes());
    let task_end = HEADER + tasks * TASK;
    want.extend_from_slice(&bytes[task_end..bytes.len() - 4]);
    for k in (0..tasks).rev() {
        let at = HEADER + k * TASK + 4;
        let id = TaskId(u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()));
        let body = wire::ReportBody::Task {
            task: id,
            status: TaskStatus::Failed {
                reason: wire::reason::INTERRUPTED_BY_REBOOT,
            },
        };
        let mut b = [0u8; 64];
        let len = wire::encode_payload(&body, &mut b).map_err(|e| format!("{e:?}"))?;
        want.push(len as u8);
        want.extend_from_slice(&b[..len]);
    }
    let crc = wire::crc32(&want);
    want.extend_from_slice(&crc.to_le_bytes());
    if again != want {
        return Err(format!(
            "restored engine snapshots to {again:02x?}, not {want:02x?} (from {bytes:02x?})"
        ));
    }
    Ok(())
}
