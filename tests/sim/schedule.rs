//! Schedules: what the operator, the applications, the network and the clocks
//! do, one operation at a time; and the proptest strategy that draws them.

use std::fmt;

use mdm_sync::wire::{ComplianceEvent, TaskKind};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, FileFailurePersistence, RngAlgorithm, TestRng, TestRunner};

/// Which engine's clock an operation touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Who {
    /// The server's clock.
    Server,
    /// A device's clock (index modulo the number of devices).
    Device(u8),
}

/// How a device's application answers [`Event::Execute`](mdm_sync::device::Event).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Style {
    /// Runs it at once and reports success (the default).
    Succeed,
    /// Runs it at once and reports failure (reason 300); rejects policies.
    Fail,
    /// Answers "not now", asking to be offered again after `retry_s` seconds;
    /// applies policies partially.
    Defer {
        /// The retry hint in seconds.
        retry_s: u16,
    },
    /// Starts it and keeps it running until `FinishHeld`; holds policies too.
    Hold,
}

/// How a device loses power around its next snapshot write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Crash {
    /// Power fails after `keep` bytes (modulo its length) of the write.
    DuringWrite {
        /// Bytes of the new snapshot that reach the slot.
        keep: u16,
    },
    /// Power fails right after the write completed, before anything else.
    AfterWrite,
}

/// One step of a schedule. `dev` is a device index modulo the device count.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Op {
    /// The operator queues a task (optionally expiring, optionally replacing
    /// undelivered tasks with the same supersede key).
    Enqueue {
        /// Device.
        dev: u8,
        /// Task kind.
        kind: TaskKind,
        /// Expiry, seconds from now on the server's clock.
        expires_in_s: Option<u32>,
        /// Supersede key.
        supersede: Option<u8>,
    },
    /// The operator cancels the `nth` task ever queued for the device.
    Cancel {
        /// Device.
        dev: u8,
        /// Which task (modulo the device's task count).
        nth: u8,
    },
    /// The operator assigns a new policy version.
    Policy {
        /// Device.
        dev: u8,
    },
    /// The device raises a compliance event.
    Compliance {
        /// Device.
        dev: u8,
        /// The event.
        event: ComplianceEvent,
    },
    /// The user presses "synchronize".
    ManualSync {
        /// Device.
        dev: u8,
    },
    /// The application answers tasks this way from now on.
    App {
        /// Device.
        dev: u8,
        /// How.
        style: Style,
    },
    /// The application finishes its oldest held task.
    FinishHeld {
        /// Device.
        dev: u8,
        /// Fails it instead of succeeding.
        fail: bool,
    },
    /// The application reports progress of its oldest held task.
    Progress {
        /// Device.
        dev: u8,
        /// Percent.
        percent: u8,
    },
    /// The application applies a policy it held back.
    ApplyPolicy {
        /// Device.
        dev: u8,
    },
    /// The next push to the device is lost.
    PushLost {
        /// Device.
        dev: u8,
    },
    /// The next push to the device arrives late.
    PushDelay {
        /// Device.
        dev: u8,
        /// Delay in seconds.
        secs: u32,
    },
    /// The next push to the device arrives twice.
    PushDup {
        /// Device.
        dev: u8,
    },
    /// The device loses (or regains) its network: connections refused, pushes lost.
    Offline {
        /// Device.
        dev: u8,
        /// Off or back on.
        offline: bool,
    },
    /// The next `times` connection attempts of the device are refused.
    Refuse {
        /// Device.
        dev: u8,
        /// How many.
        times: u8,
    },
    /// The device's current (or next) transport dies after `bytes` more bytes.
    CutAfter {
        /// Device.
        dev: u8,
        /// Bytes still delivered.
        bytes: u16,
    },
    /// The device's next transport is half-open: the server never sees it close.
    HalfOpen {
        /// Device.
        dev: u8,
    },
    /// The device's current (or next) transport stops delivering anything.
    Stall {
        /// Device.
        dev: u8,
    },
    /// Bytes arrive in chunks of 1..=max bytes from now on.
    Chunk {
        /// Largest chunk.
        max: u16,
    },
    /// A frame of the device in one direction arrives twice.
    DupFrame {
        /// Device.
        dev: u8,
        /// Device to server (else server to device).
        up: bool,
        /// Frames in that direction that pass untouched first.
        skip: u8,
    },
    /// Before a frame of the device in one direction, an old one arrives
    /// again (possibly from an earlier connection).
    StaleFrame {
        /// Device.
        dev: u8,
        /// Device to server (else server to device).
        up: bool,
        /// Frames in that direction that pass untouched first.
        skip: u8,
        /// How many frames back.
        back: u8,
    },
    /// One bit of a frame of the device in one direction flips.
    FlipBit {
        /// Device.
        dev: u8,
        /// Device to server (else server to device).
        up: bool,
        /// Frames in that direction that pass untouched first.
        skip: u8,
        /// Bit index (modulo the frame's bits).
        bit: u16,
    },
    /// The device loses power now and boots from its snapshot slots.
    Reboot {
        /// Device.
        dev: u8,
    },
    /// The device loses power around its next snapshot write.
    CrashOnWrite {
        /// Device.
        dev: u8,
        /// When exactly.
        crash: Crash,
    },
    /// Deliver this many chunks on randomly chosen connections (no time passes).
    Step {
        /// Chunks.
        chunks: u8,
    },
    /// Let time pass, delivering everything as it goes.
    Advance {
        /// Milliseconds.
        ms: u32,
    },
    /// A clock jumps (forward or backward).
    ClockJump {
        /// Whose.
        who: Who,
        /// By how many milliseconds.
        ms: i64,
    },
    /// A clock stands still for a while, then goes on from where it stood.
    Freeze {
        /// Whose.
        who: Who,
        /// For how many seconds of real time.
        secs: u32,
    },
    /// The server process stops and a new one starts over the same store
    /// (`Server::into_store`, `Server::recover`): every transport drops.
    /// Not drawn by [`op`] (that would change every seed's schedule); see
    /// [`schedule_with_restarts`].
    RestartServer,
}

impl Op {
    /// The operator queues a lock for `dev`, no expiry, no supersede key.
    pub(crate) fn lock(dev: u8) -> Self {
        Op::Enqueue {
            dev,
            kind: TaskKind::Lock,
            expires_in_s: None,
            supersede: None,
        }
    }
}

/// A whole simulated run: devices, the simulator's own seed (chunk sizes,
/// which connection moves next, ...), and the operations.
#[derive(Clone, PartialEq)]
pub(crate) struct Schedule {
    /// Number of devices (1..=8).
    pub(crate) devices: u8,
    /// Seed of the simulator's own random choices.
    pub(crate) seed: u64,
    /// What happens, in order.
    pub(crate) ops: Vec<Op>,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Schedule {{ devices: {}, seed: {}, ops: vec![",
            self.devices, self.seed
        )?;
        if self
            .ops
            .iter()
            .any(|op| format!("{op:?}").contains("dev: "))
        {
            writeln!(f, "    // `dev` is taken modulo `devices`")?;
        }
        for op in &self.ops {
            writeln!(f, "    {op:?},")?;
        }
        write!(f, "] }}")
    }
}

const DAY_MS: i64 = 24 * 3_600_000;

fn dev() -> impl Strategy<Value = u8> {
    0u8..3
}

fn kind() -> impl Strategy<Value = TaskKind> {
    prop::sample::select(TaskKind::ALL.to_vec())
}

fn event() -> impl Strategy<Value = ComplianceEvent> {
    prop_oneof![
        Just(ComplianceEvent::ProfileChanged),
        any::<bool>().prop_map(|active| ComplianceEvent::DeviceAdminChanged { active }),
        (0u16..50).prop_map(|category| ComplianceEvent::BlockedPageVisited { category }),
        (1u16..30).prop_map(|days| ComplianceEvent::PasswordOverdue { days }),
        (1u16..5).prop_map(|threats| ComplianceEvent::MalwarePersisting { threats }),
        any::<bool>().prop_map(|enabled| ComplianceEvent::UsbDebugging { enabled }),
        (0u16..5).prop_map(|threats| ComplianceEvent::ManualScanResult { threats }),
    ]
}

fn style() -> impl Strategy<Value = Style> {
    prop_oneof![
        Just(Style::Succeed),
        Just(Style::Fail),
        (30u16..900).prop_map(|retry_s| Style::Defer { retry_s }),
        Just(Style::Hold),
    ]
}

fn who() -> impl Strategy<Value = Who> {
    prop_oneof![Just(Who::Server), dev().prop_map(Who::Device)]
}

fn expiry() -> impl Strategy<Value = Option<u32>> {
    prop_oneof![
        3 => Just(None),
        1 => (1u32..600).prop_map(Some),
        1 => (600u32..20_000).prop_map(Some),
    ]
}

fn advance() -> impl Strategy<Value = u32> {
    prop_oneof![
        3 => 0u32..2_000,
        2 => 2_000u32..120_000,
        1 => 120_000u32..14_400_000,
    ]
}

fn jump() -> impl Strategy<Value = i64> {
    prop_oneof![(1i64..3 * DAY_MS), (-DAY_MS..0), (-120_000i64..120_000),]
}

/// One operation, weighted towards work and time.
pub(crate) fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (dev(), kind(), expiry(), prop::option::weighted(0.3, 0u8..2)).prop_map(
            |(dev, kind, expires_in_s, supersede)| Op::Enqueue { dev, kind, expires_in_s, supersede }
        ),
        2 => (dev(), any::<u8>()).prop_map(|(dev, nth)| Op::Cancel { dev, nth }),
        2 => dev().prop_map(|dev| Op::Policy { dev }),
        3 => (dev(), event()).prop_map(|(dev, event)| Op::Compliance { dev, event }),
        1 => dev().prop_map(|dev| Op::ManualSync { dev }),
        3 => (dev(), style()).prop_map(|(dev, style)| Op::App { dev, style }),
        2 => (dev(), any::<bool>()).prop_map(|(dev, fail)| Op::FinishHeld { dev, fail }),
        1 => (dev(), 0u8..=100).prop_map(|(dev, percent)| Op::Progress { dev, percent }),
        1 => dev().prop_map(|dev| Op::ApplyPolicy { dev }),
        1 => dev().prop_map(|dev| Op::PushLost { dev }),
        1 => (dev(), 1u32..600).prop_map(|(dev, secs)| Op::PushDelay { dev, secs }),
        1 => dev().prop_map(|dev| Op::PushDup { dev }),
        2 => (dev(), any::<bool>()).prop_map(|(dev, offline)| Op::Offline { dev, offline }),
        1 => (dev(), 1u8..5).prop_map(|(dev, times)| Op::Refuse { dev, times }),
        2 => (dev(), 0u16..400).prop_map(|(dev, bytes)| Op::CutAfter { dev, bytes }),
        1 => dev().prop_map(|dev| Op::HalfOpen { dev }),
        1 => dev().prop_map(|dev| Op::Stall { dev }),
        1 => prop_oneof![Just(1u16), 1u16..16, 16u16..600].prop_map(|max| Op::Chunk { max }),
        1 => (dev(), any::<bool>(), 0u8..6)
            .prop_map(|(dev, up, skip)| Op::DupFrame { dev, up, skip }),
        1 => (dev(), any::<bool>(), 0u8..6, 0u8..12)
            .prop_map(|(dev, up, skip, back)| Op::StaleFrame { dev, up, skip, back }),
        1 => (dev(), any::<bool>(), 0u8..6, any::<u16>())
            .prop_map(|(dev, up, skip, bit)| Op::FlipBit { dev, up, skip, bit }),
        2 => dev().prop_map(|dev| Op::Reboot { dev }),
        1 => (dev(), prop_oneof![
                any::<u16>().prop_map(|keep| Crash::DuringWrite { keep }),
                Just(Crash::AfterWrite),
            ]).prop_map(|(dev, crash)| Op::CrashOnWrite { dev, crash }),
        6 => (1u8..24).prop_map(|chunks| Op::Step { chunks }),
        6 => advance().prop_map(|ms| Op::Advance { ms }),
        1 => (who(), jump()).prop_map(|(who, ms)| Op::ClockJump { who, ms }),
        1 => (who(), 1u32..3_600).prop_map(|(who, secs)| Op::Freeze { who, secs }),
    ]
}

/// Schedules of up to `max_ops` operations on 1 to 3 devices.
pub(crate) fn schedule_with(max_ops: usize) -> impl Strategy<Value = Schedule> {
    (
        1u8..=3,
        any::<u64>(),
        prop::collection::vec(op(), 0..=max_ops),
    )
        .prop_map(|(devices, seed, ops)| Schedule { devices, seed, ops })
}

/// As [`schedule_with`], with server restarts ([`Op::RestartServer`])
/// among the operations (about one in twelve).
pub(crate) fn schedule_with_restarts(max_ops: usize) -> impl Strategy<Value = Schedule> {
    let op = prop_oneof![11 => op(), 1 => Just(Op::RestartServer)];
    (
        1u8..=3,
        any::<u64>(),
        prop::collection::vec(op, 0..=max_ops),
    )
        .prop_map(|(devices, seed, ops)| Schedule { devices, seed, ops })
}

/// Schedules of up to 64 operations on 1 to 3 devices.
pub(crate) fn schedule() -> impl Strategy<Value = Schedule> {
    schedule_with(64)
}

/// The schedule number `seed` draws from [`schedule_with`], or with
/// `restarts` from [`schedule_with_restarts`]: the same on every machine and
/// every run, for replaying from the command line.
pub(crate) fn schedule_from_seed(seed: u64, max_ops: usize, restarts: bool) -> Schedule {
    tree_for_seed(seed, max_ops, restarts).current()
}

fn tree_for_seed(
    seed: u64,
    max_ops: usize,
    restarts: bool,
) -> Box<dyn ValueTree<Value = Schedule>> {
    let mut bytes = [0u8; 32];
    for (k, chunk) in bytes.chunks_mut(8).enumerate() {
        let word = seed
            .wrapping_add(k as u64)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(29);
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &bytes);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    let strategy = if restarts {
        schedule_with_restarts(max_ops).boxed()
    } else {
        schedule_with(max_ops).boxed()
    };
    strategy
        .new_tree(&mut runner)
        .expect("the schedule strategy never rejects")
}

/// Shrinks the failing schedule drawn from `seed` to a small one that still
/// fails `fails`, the way proptest does.
pub(crate) fn shrink_seed(
    seed: u64,
    max_ops: usize,
    restarts: bool,
    fails: impl Fn(&Schedule) -> bool,
) -> Schedule {
    let mut tree = tree_for_seed(seed, max_ops, restarts);
    let mut best = tree.current();
    if !tree.simplify() {
        return best;
    }
    for _ in 0..100_000 {
        let current = tree.current();
        if fails(&current) {
            best = current;
            if !tree.simplify() {
                break;
            }
        } else if !tree.complicate() {
            break;
        }
    }
    best
}

/// Proptest settings: `PROPTEST_CASES` from the environment, else `default`.
pub(crate) fn config(default: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    Config {
        cases,
        max_shrink_iters: 4096,
        // Failing seeds go to `tests/<file>.proptest-regressions` and are
        // replayed first on the next run; commit that file with the fix.
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..Config::default()
    }
}
