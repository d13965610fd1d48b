//! The server side: a sans-IO engine for many concurrent device sessions, the
//! task queue per device, policy assignment and push scheduling.
//!
//! # Run loop
//!
//! 1. Create it with [`Server::new`] over a [`FleetStore`] (over a store that
//!    outlived an earlier process, call [`Server::recover`] next); enroll
//!    devices with [`Server::enroll`] (which returns the secret to provision
//!    on the device).
//! 2. Operator calls: [`enqueue_task`](Server::enqueue_task),
//!    [`cancel_task`](Server::cancel_task), [`assign_policy`](Server::assign_policy),
//!    [`retire`](Server::retire) for a device decommissioned for good.
//! 3. Transport calls: [`connection_opened`](Server::connection_opened) for each
//!    accepted connection, [`handle_bytes`](Server::handle_bytes) with what it
//!    reads, [`connection_closed`](Server::connection_closed) when it ends.
//! 4. Drain [`poll_transmit`](Server::poll_transmit) (or
//!    [`poll_transmit_for`](Server::poll_transmit_for) per connection) into the
//!    transports, and [`poll_event`](Server::poll_event): send pushes, close
//!    connections, show status changes.
//! 5. Call [`handle_timeout`](Server::handle_timeout) when
//!    [`poll_timeout`](Server::poll_timeout) has passed.
//!
//! # Durability
//!
//! Each accepted report is written with [`FleetStore::commit_report`] before
//! its `Ack` is queued, so an acknowledged report is never lost. Task offers
//! are stored before they are sent. What the engine keeps in memory only
//! (sessions, timers, push rate limits) is rebuilt from the store by
//! [`Server::recover`] after a restart; PROTOCOL.md section 16 lists what is
//! not.

mod console;
mod session;
mod sessions;
mod store;
mod table;

pub use console::{DeviceView, FleetView, TaskCounts};
pub use store::{
    DeviceRecord, FleetStore, MemoryStore, MemoryStoreError, PolicyState, PushToken, ReportCommit,
    ReportSeqs, SupersedeKey, TaskRecord, TaskState, ToldIntervals,
};

use alloc::collections::{BinaryHeap, VecDeque};
use alloc::vec::Vec;
use core::cmp::Reverse;

use hashbrown::{HashMap, HashSet};

use crate::auth::{self, Secret};
use crate::time::{Duration, Instant};
use crate::wire::{
    seq_newer, DeviceId, Platform, Policy, Setting, SyncTrigger, TaskId, TaskKind, MAX_SETTINGS,
};
use sessions::Sessions;
use table::{Entry, Table};

/// Identifies one connection. Ids grow with each connection opened and are
/// not reused for the first `2^(64 - b)` connections, `b` the bits of
/// `max_sessions - 1` (2^48 connections with the default): the low `b` bits
/// place the session in the engine's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// Server settings. `Default` gives the documented values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Periodic interval suggested to devices (3 h); also the basis of the
    /// overdue check. [`Server::new`] clamps it to 1 min ..= 7 days for
    /// both, as devices clamp the interval a `Welcome` suggests
    /// (PROTOCOL.md 11); [`Server::config`] shows the clamped value.
    pub periodic_interval: Duration,
    /// How late past its periodic interval a device may be before it is
    /// reported overdue (30 min).
    pub overdue_slack: Duration,
    /// At most one push per device per this interval (60 s); more work in
    /// between is covered by one push at the end of it.
    pub push_min_interval: Duration,
    /// Time from connection to a verified proof (30 s). [`Server::new`]
    /// raises a value under 1 s to 1 s: at 0 every handshake would time out.
    pub handshake_timeout: Duration,
    /// Silence after which an authenticated session is closed (120 s).
    /// [`Server::new`] raises a value under 1 s to 1 s, as
    /// `handshake_timeout`.
    pub idle_timeout: Duration,
    /// Longest a session may last from its connection, whatever arrives
    /// (10 min): a device that keeps its session alive by trickling bytes
    /// is cut off then, with a `Timeout` error. The device engine ends its
    /// own sessions sooner (at `linger + 3 × response_timeout`, 135 s with
    /// its defaults). The cap is first checked when the handshake's
    /// deadline comes, so a value below `handshake_timeout` acts as
    /// `handshake_timeout`.
    pub max_session: Duration,
    /// Most concurrent connections (65 536).
    pub max_sessions: usize,
    /// Most tasks not yet final per device (64).
    pub max_open_tasks: usize,
    /// Most bytes queued for one connection before it is closed as too slow
    /// (64 KiB). The check comes before each frame is queued, except the
    /// frames of a session's first burst (`Welcome`, the cancels and tasks
    /// offered, a policy, `SyncEnd`): those are queued at once, in answer to
    /// the proof, before any reader could have taken them, and are bounded
    /// by [`max_open_tasks`](Self::max_open_tasks) (about 0.6 KB plus 44
    /// bytes per open task at most), and stay exempt until taken: the
    /// bound counts only the bytes queued after the burst. So even a bound
    /// of 0 lets every session's work out, to a reader however slow; it
    /// then closes a connection that has left any byte queued after the
    /// burst untaken when the next frame (an `Ack`, a task queued later)
    /// is queued. (Before, a bound under the burst closed each session
    /// before its work was out, and the device, asked back by a push, was
    /// closed again the same way; and a reader still taking the burst was
    /// closed at the first frame after it.) [`max_first_burst`](Self::max_first_burst)
    /// bounds the burst for transports that buffer output themselves (the
    /// tokio adapter's buffer per connection is never smaller).
    pub max_pending_out: usize,
    /// Most bad frames (bad lengths, bad CRCs) one connection may send
    /// before it is closed with `BadMessage` (64). TCP and TLS cause none;
    /// the bound stops a peer that sends bad headers on purpose, each of
    /// which costs a CRC over up to a whole frame. Garbage between frames
    /// costs only a scan of its bytes and is skipped without counting, so
    /// the count does not depend on how the bytes were split into reads.
    pub max_frame_errors: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            periodic_interval: Duration::from_hours(3),
            overdue_slack: Duration::from_mins(30),
            push_min_interval: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            max_session: Duration::from_mins(10),
            max_sessions: 65_536,
            max_open_tasks: 64,
            max_pending_out: 64 * 1024,
            max_frame_errors: 64,
        }
    }
}

impl ServerConfig {
    /// The most bytes a session's first burst (`Welcome`, the cancels and
    /// tasks offered, a policy, `SyncEnd`) takes on the wire: a `Task` and a
    /// `Cancel` at most per open task, and three frames more, none longer
    /// than [`MAX_DOWN_FRAME`](crate::wire::MAX_DOWN_FRAME). The engine
    /// queues the burst at once and exempts it from
    /// [`max_pending_out`](Self::max_pending_out); a transport that bounds
    /// a connection's buffered output must allow this much (the tokio
    /// adapter does). A loose bound (frames are mostly far shorter: about
    /// 0.6 KB plus 44 bytes per open task in fact), saturating, and only as
    /// good as `max_open_tasks`: a store holding more open tasks for a
    /// device (the bound lowered across a restart) makes a longer burst.
    pub fn max_first_burst(&self) -> usize {
        self.max_open_tasks
            .saturating_mul(2)
            .saturating_add(3)
            .saturating_mul(crate::wire::MAX_DOWN_FRAME)
    }
}

/// Options of a queued task.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskOptions {
    /// Not delivered by then, it expires.
    pub expires_at: Option<Instant>,
    /// Replaces undelivered tasks of the device with the same key (none
    /// when the task is refused, e.g. with `QueueFull`).
    pub supersede: Option<SupersedeKey>,
}

/// What happened, for the application (push sender, console, transport).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// Ask the platform's push service to deliver a content-free "sync now".
    SendPush {
        /// To which device.
        device: DeviceId,
        /// Its platform (FCM or APNs).
        platform: Platform,
        /// Its push token, a copy of the store's (see
        /// [`FleetStore::push_target`]). If the push service refuses it
        /// for good (the app was uninstalled, the token expired), call
        /// [`Server::push_token_rejected`] with this token.
        token: PushToken,
    },
    /// Close this connection (after sending what `poll_transmit` gave).
    Close {
        /// Which one.
        conn: ConnId,
    },
    /// A device proved its identity on a connection.
    Authenticated {
        /// The connection.
        conn: ConnId,
        /// The device.
        device: DeviceId,
        /// Why it connected.
        trigger: SyncTrigger,
    },
    /// A connection failed to prove an identity and is being closed.
    AuthFailed {
        /// The connection.
        conn: ConnId,
    },
    /// A task changed state, or was queued. A task queued for a device in
    /// session is offered at once: its first event says `Offered`, not
    /// `Queued` (see [`Server::enqueue_task`]).
    TaskChanged {
        /// Its device.
        device: DeviceId,
        /// The task.
        task: TaskId,
        /// The new state.
        state: TaskState,
    },
    /// A device reported a compliance event (stored before this event).
    Compliance {
        /// The device.
        device: DeviceId,
        /// What happened.
        event: crate::wire::ComplianceEvent,
    },
    /// A device reported how a policy version went.
    PolicyReported {
        /// The device.
        device: DeviceId,
        /// Its new policy state.
        state: PolicyState,
    },
    /// A device missed its promised check-in.
    ///
    /// Known shortcoming: the engine keeps one check queued per device; a
    /// check-in moves the deadline and the check re-arms itself when it
    /// runs early, which assumes it was queued for an earlier deadline
    /// than the new one. Where it was queued for a later one, a device
    /// that checks in and then goes silent is reported only when that
    /// check runs: after the clock handed to the engine went back (late
    /// by as much as it went back, at most), and after a restart that
    /// shortened `periodic_interval` (`Server::recover` queues each check
    /// by the longer interval a device may have been told; late by up to
    /// the difference, once). Queueing a second check would need either
    /// room in each device's 64-byte state to tell the stale check from
    /// the live one, or a search of the queue at each check-in
    /// (`tests/breaker25_overdue_clock_back.rs` and
    /// `tests/breaker26_told_interval_late.rs`, ignored, show it).
    Overdue {
        /// The device.
        device: DeviceId,
    },
    /// An overdue device checked in again.
    Back {
        /// The device.
        device: DeviceId,
    },
    /// A connection ended; `device` is set if it had authenticated.
    SessionEnded {
        /// The connection.
        conn: ConnId,
        /// Its device, if proven.
        device: Option<DeviceId>,
    },
}

/// A misbehaving peer; its session has been closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerError {
    /// A frame's payload did not decode.
    Malformed,
    /// A message that does not fit the session's state.
    Unexpected,
    /// The device speaks another protocol version.
    VersionMismatch {
        /// Its version.
        device: u16,
    },
    /// The proof was wrong, the device unknown, or its enrollment old.
    AuthFailed,
    /// A report sequence number skipped ahead.
    SequenceGap,
    /// A proof for a handshake older than the device's latest authenticated
    /// session: it came late on a connection the device had given up.
    Superseded,
}

impl core::fmt::Display for PeerError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PeerError::Malformed => f.write_str("a frame's payload did not decode"),
            PeerError::Unexpected => f.write_str("a message that does not fit the session's state"),
            PeerError::VersionMismatch { device } => {
                write!(f, "the device speaks protocol version {device}")
            }
            PeerError::AuthFailed => f.write_str("authentication failed"),
            PeerError::SequenceGap => f.write_str("a report sequence number skipped ahead"),
            PeerError::Superseded => {
                f.write_str("a proof for a handshake older than the device's latest session")
            }
        }
    }
}

impl core::error::Error for PeerError {}

/// Errors of the server engine, generic over the store's error.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerError<E> {
    /// The store failed; nothing was acknowledged.
    Store(E),
    /// No open connection has this id.
    UnknownConnection,
    /// No enrolled device has this id.
    UnknownDevice,
    /// No task has this id.
    UnknownTask,
    /// The task is already final; the cancel changed nothing.
    AlreadyFinal(TaskState),
    /// The device has [`ServerConfig::max_open_tasks`] open tasks.
    QueueFull,
    /// [`ServerConfig::max_sessions`] connections are open.
    Busy,
    /// A policy may carry at most [`MAX_SETTINGS`] settings.
    PolicyTooLarge,
    /// The peer misbehaved; its session is being closed.
    Peer(PeerError),
}

/// The store's error is shown with `Debug`, as a store's error type need
/// not implement `Display`. The crate's wrapping errors end their message
/// with their cause's and leave `source()` empty, so that the cause shows
/// once however the error is printed.
impl<E: core::fmt::Debug> core::fmt::Display for ServerError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ServerError::Store(e) => write!(f, "the store failed, nothing was acknowledged: {e:?}"),
            ServerError::UnknownConnection => f.write_str("no open connection has this id"),
            ServerError::UnknownDevice => f.write_str("no enrolled device has this id"),
            ServerError::UnknownTask => f.write_str("no task has this id"),
            ServerError::AlreadyFinal(state) => write!(f, "the task is already final: {state:?}"),
            ServerError::QueueFull => f.write_str("the device has max_open_tasks open tasks"),
            ServerError::Busy => f.write_str("max_sessions connections are open"),
            ServerError::PolicyTooLarge => {
                write!(f, "a policy may carry at most {MAX_SETTINGS} settings")
            }
            ServerError::Peer(e) => write!(f, "the peer misbehaved: {e}"),
        }
    }
}

impl<E: core::fmt::Debug> core::error::Error for ServerError<E> {}

impl<E> From<E> for ServerError<E> {
    fn from(e: E) -> Self {
        ServerError::Store(e)
    }
}

type Result<T, S> = core::result::Result<T, ServerError<<S as FleetStore>::Error>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Session(ConnId),
    Push(DeviceId),
    Expire(TaskId),
    Overdue(DeviceId),
}

/// What [`Server::recover`] rebuilt from the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Devices whose check-in deadline is watched again.
    pub checkins: usize,
    /// Open tasks whose expiry is armed again.
    pub expiries: usize,
    /// Devices with undelivered work that were pushed again (or whose push
    /// waits for the rate limit). One without a push target (it never sent
    /// a token, or the push service refused it) is not pushed: its work
    /// waits for its own next sync.
    pub pushed: usize,
}

/// Where a due timer is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TimerSource {
    Heap,
    Overdue,
    Handshake,
    Push,
}

/// What the engine keeps per device between sessions: the push rate limit,
/// the check-in deadline and the device's secret. One map for all, so that a
/// sync looks a device up once (at a million devices, one cache miss instead
/// of several). Flat, 56 bytes (`Option`s of `Instant` would make it 80),
/// 64 with its device's id in a `PushStates` slot, one cache line, one per
/// device that ever synced.
#[derive(Clone, Copy, Debug)]
struct PushState {
    /// When the last push was sent, if `PUSHED`.
    last: Instant,
    /// The next check-in promised, if `DUE` (the device has checked in).
    due_at: Instant,
    /// The device's secret in enrollment `secret_gen`, if `SECRET`: kept
    /// from its last authenticated handshake, so that the next one costs
    /// one SHA-256 compression fewer (`Server::secret_of`).
    secret: Secret,
    secret_gen: u32,
    flags: Flags,
}

/// The yes-or-no parts of a `PushState`, one bit each (as `bool`s they
/// would take the slot past a cache line).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Flags(u8);

impl Flags {
    /// A push was sent (`last`).
    const PUSHED: u8 = 1;
    /// The device has checked in (`due_at`).
    const DUE: u8 = 1 << 1;
    /// It missed its check-in and was reported overdue.
    const OVERDUE: u8 = 1 << 2;
    /// One overdue check queued per device at most: a check-in moves
    /// `due_at` and the check re-arms itself when it fires early.
    const ARMED: u8 = 1 << 3;
    /// Set in every state `PushStates` holds; unset in its free slots.
    const USED: u8 = 1 << 4;
    /// `secret` holds the secret of enrollment `secret_gen`.
    const SECRET: u8 = 1 << 5;

    fn has(self, flag: u8) -> bool {
        self.0 & flag != 0
    }

    fn set(&mut self, flag: u8, on: bool) {
        if on {
            self.0 |= flag;
        } else {
            self.0 &= !flag;
        }
    }

    /// Whether `flag` was set; unsets it.
    fn take(&mut self, flag: u8) -> bool {
        let was = self.has(flag);
        self.set(flag, false);
        was
    }
}

impl Default for PushState {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A device's `PushState` in `PushStates`: 64 bytes, a cache line.
#[derive(Clone, Copy, Debug)]
struct PushSlot {
    id: u64,
    state: PushState,
}

impl Entry for PushSlot {
    const FREE: PushSlot = PushSlot {
        id: 0,
        state: PushState {
            flags: Flags(0),
            ..PushState::DEFAULT
        },
    };
    fn key(&self) -> Option<u64> {
        self.state.flags.has(Flags::USED).then_some(self.id)
    }
    fn touch(&self) {
        table::prefetch(&self.id);
    }
}

// One cache line (checked when compiling).
const _: () = assert!(core::mem::size_of::<PushSlot>() == 64);

/// `PushState`s by device, kept in place (see `table`): at a million
/// devices, reaching one is one cache miss, not a control byte then a slot.
#[derive(Debug, Default)]
struct PushStates(Table<PushSlot>);

impl PushStates {
    fn get(&self, device: &DeviceId) -> Option<&PushState> {
        self.0.get(device.0).map(|s| &s.state)
    }

    fn get_mut(&mut self, device: &DeviceId) -> Option<&mut PushState> {
        self.0.get_mut(device.0).map(|s| &mut s.state)
    }

    /// The device's state, added as the default if it has none. `None` only
    /// if it could not be added (the table is full at `usize::MAX` slots).
    fn entry_or_default(&mut self, device: DeviceId) -> Option<&mut PushState> {
        if self.0.find(device.0).is_none() {
            self.0.insert_new(PushSlot {
                id: device.0,
                state: PushState::default(),
            });
        }
        self.get_mut(&device)
    }

    /// Forgets a retired device's state. A check-in check it has queued
    /// stays queued (the queue is not searched): its state stays, reset,
    /// marked `armed`, until the check runs and drops it (see
    /// `Server::overdue_timer`), or `Server::shrink_to_fit` drops both. A
    /// device enrolled again before that has its check-in watched by that
    /// check, not by a second one.
    fn forget(&mut self, device: DeviceId) {
        match self.0.get_mut(device.0) {
            Some(slot) if slot.state.flags.has(Flags::ARMED) => {
                slot.state = PushState::DEFAULT;
                slot.state.flags.set(Flags::ARMED, true);
            }
            Some(_) => {
                self.0.remove(device.0);
            }
            None => {}
        }
    }

    fn iter(&self) -> impl Iterator<Item = (DeviceId, &PushState)> {
        self.0.iter().map(|s| (DeviceId(s.id), &s.state))
    }
}

impl PushState {
    /// A device's state before anything happened: in use, so that a state
    /// reset to its default never frees its slot in `PushStates` (which
    /// would cut the probe chain of the devices after it).
    const DEFAULT: PushState = PushState {
        last: Instant::ZERO,
        due_at: Instant::ZERO,
        secret: [0; 32],
        secret_gen: 0,
        flags: Flags(Flags::USED),
    };

    fn is_overdue(&self) -> bool {
        self.flags.has(Flags::DUE) && self.flags.has(Flags::OVERDUE)
    }

    /// Whether this is the state that `PushStates::forget` leaves a retired
    /// device with a check-in check queued, nothing having happened since.
    fn is_left_by_retire(&self) -> bool {
        self.flags == Flags(Flags::USED | Flags::ARMED)
    }
}

/// The server-side engine.
pub struct Server<S: FleetStore> {
    cfg: ServerConfig,
    store: S,
    // The master key's block hashed once: a secret is then one compression.
    master: auth::PreparedMaster,
    nonces: auth::Nonces,
    sessions: Sessions,
    online: HashMap<DeviceId, ConnId>,
    /// Per device: pushes and check-in deadline (see `PushState`).
    pushes: PushStates,
    /// Devices with a push held back by the rate limit, sent when the check
    /// of their last push falls due. A small set apart from `pushes`, so that
    /// the check of every push sent learns here that nothing is held (the
    /// usual case) without touching the device's slot in `pushes`: at a
    /// million devices, one cache miss less per push. At most the devices
    /// pushed within `push_min_interval`.
    held_pushes: HashSet<DeviceId>,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    /// Overdue checks, at most one per device that ever checked in. Each is
    /// armed `periodic_interval + overdue_slack` ahead, so a FIFO keeps them
    /// in time order (one armed after the clock went back goes to the heap,
    /// see `in_order`). Kept out of
    /// `timers` so that session timers do not pay for a heap of a million
    /// entries in a fleet of a million devices.
    overdue_checks: VecDeque<(Instant, DeviceId)>,
    /// Handshake deadlines, one per opened connection. Each is armed
    /// `handshake_timeout` after its connection opened, so a FIFO keeps them
    /// in time order (as for `overdue_checks`), and a short session costs a
    /// push and a pop at its ends instead of two walks through `timers`.
    /// Deadlines of closed sessions stay until they fall due or a sweep
    /// (see `connection_opened`) drops them.
    handshake_checks: VecDeque<(Instant, ConnId)>,
    /// One check per push sent, `push_min_interval` after it: when it falls
    /// due, a push requested meanwhile (`held_pushes`) goes out. Sends
    /// happen in time order, so a FIFO keeps the checks in order (see
    /// `in_order` for a clock that went back), and a
    /// push held back by the rate limit costs no timer at all. At most one
    /// check per device pushed within the interval.
    push_checks: VecDeque<(Instant, DeviceId)>,
    /// Length of `timers` after its last sweep (see `arm_timer`).
    timers_swept: usize,
    /// The latest `now` given to `handle_timeout`: every FIFO check armed at
    /// or before it has run.
    timers_ran_to: Instant,
    /// Buffers of closed sessions, reused by new ones.
    spare: session::Spare,
    /// Refuses proofs of handshakes older than a device's latest session.
    handshakes: session::HandshakeOrder,
    /// Connections dropped for falling `max_pending_out` behind, ever: tells
    /// a burst of work whether `send` dropped its session.
    readers_dropped: u64,
    ready: VecDeque<ConnId>,
    events: VecDeque<ServerEvent>,
    scratch: Vec<TaskId>,
    /// The devices of the last `HINTS` calls of `prefetch_device`, the
    /// latest at `hinted_at - 1` (modulo `HINTS`).
    hinted: [Option<DeviceId>; HINTS],
    hinted_at: usize,
    /// `recover` ran to its end (it runs once).
    recovered: bool,
    /// `None` until this engine recorded the interval it tells devices in
    /// the store (`record_told_interval`, before its first `Welcome`); then
    /// how long after its last sync `recover` expects a device that synced
    /// before this engine: the longest interval it may have been told (the
    /// store's `ToldIntervals`) or this engine's, whichever is longer, plus
    /// `overdue_slack`.
    earlier_wait: Option<Duration>,
    /// Secrets derived (`derive_secret`), for unit tests.
    #[cfg(test)]
    derivations: core::cell::Cell<u64>,
}

/// How many hinted devices the engine remembers (see `Server::prefetch_device`):
/// a task queued for one of them finds its push target asked for already.
const HINTS: usize = 8;
/// How many hints later the engine gives a device's second hint to the store
/// (`FleetStore::prefetch_device_again`). The store then reads what the first
/// brought: a whole sync or more after it, time enough for a cache miss.
const HINT_AGAIN_AFTER: usize = 2;

impl<S: FleetStore> Server<S> {
    /// A server over `store`. `master` derives every device's secret (keep it
    /// like a root key); `nonce_seed` must be fresh random bytes per process.
    pub fn new(mut cfg: ServerConfig, store: S, master: Secret, nonce_seed: Secret) -> Self {
        // Devices are expected at the interval they keep (see the field).
        let periodic = cfg.periodic_interval.as_millis();
        cfg.periodic_interval = crate::device::periodic_within_bounds(periodic);
        // Settings at which no session could work (see the fields).
        let second = Duration::from_secs(1);
        cfg.handshake_timeout = cfg.handshake_timeout.max(second);
        cfg.idle_timeout = cfg.idle_timeout.max(second);
        Self {
            cfg,
            store,
            master: auth::PreparedMaster::new(&master),
            nonces: auth::Nonces::new(&nonce_seed),
            sessions: Sessions::new(cfg.max_sessions),
            online: HashMap::new(),
            pushes: PushStates::default(),
            held_pushes: HashSet::new(),
            timers: BinaryHeap::new(),
            overdue_checks: VecDeque::new(),
            handshake_checks: VecDeque::new(),
            push_checks: VecDeque::new(),
            timers_swept: 0,
            timers_ran_to: Instant::ZERO,
            spare: session::Spare::default(),
            handshakes: session::HandshakeOrder::default(),
            readers_dropped: 0,
            ready: VecDeque::new(),
            events: VecDeque::new(),
            scratch: Vec::new(),
            hinted: [None; HINTS],
            hinted_at: 0,
            recovered: false,
            earlier_wait: None,
            #[cfg(test)]
            derivations: core::cell::Cell::new(0),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }

    /// The store (for console queries the engine does not offer).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The store, mutably, for housekeeping the engine leaves to the
    /// application, such as [`MemoryStore::prune_finished`] and
    /// [`MemoryStore::take_compliance`]. Rewriting records the engine relies
    /// on (sequence numbers, open tasks) is at the caller's risk.
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Open connections.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Timers the engine holds: session deadlines, push checks, check-in
    /// (overdue) checks and task expiries. Bounded by about twice the live
    /// ones (sessions open, devices pushed within `push_min_interval`,
    /// devices that ever checked in, open tasks with an expiry) plus a
    /// constant: timers of closed sessions and expiries of tasks that ended
    /// are swept out.
    pub fn timer_count(&self) -> usize {
        self.timers.len()
            + self.overdue_checks.len()
            + self.handshake_checks.len()
            + self.push_checks.len()
    }

    // ---- enrollment and operator calls -----------------------------------

    /// Enrolls a device, or re-enrolls it in a new generation. Returns the
    /// secret to provision on the device. Re-enrollment drops every task of
    /// the old generation (the console sees them [`TaskState::Dropped`]) and
    /// ends the device's open session. The check-in promised at the last
    /// handshake still holds (the stored last sync stays, so it holds across
    /// a restart with [`Server::recover`] too): a device that never checks
    /// in with its new secret is reported [`ServerEvent::Overdue`] then, and
    /// one that was overdue stays so until it checks in
    /// ([`ServerEvent::Back`]). A retired device enrolled again starts
    /// afresh, in the generation after its last one.
    pub fn enroll(&mut self, id: DeviceId, now: Instant) -> Result<Secret, S> {
        let (generation, last_sync) = match self.store.device(id)? {
            // A retired device comes back in a generation it never had (and
            // with no check-in promised: its retirement ended that).
            None => {
                let retired = self.store.retired_generation(id)?;
                (retired.map_or(0, |g| g.wrapping_add(1)), None)
            }
            Some(old) => {
                self.drop_open_tasks(id, now)?;
                self.close_device_session(id);
                (old.generation.wrapping_add(1), old.last_sync)
            }
        };
        // The last sync stays: the check-in it promised still holds, and
        // `recover` finds it there after a restart.
        let rec = DeviceRecord {
            last_sync,
            ..DeviceRecord::new(id, generation)
        };
        self.store.put_device(&rec)?;
        Ok(self.derive_secret(id, generation))
    }

    /// Retires a device for good (decommissioned, lost, replaced): its open
    /// tasks end [`TaskState::Dropped`], its session ends, and the store
    /// drops its record, push target and policy
    /// ([`FleetStore::retire_device`]); the engine drops its push state. From
    /// then on it is an unknown device: its handshakes fail with
    /// `AuthFailed` (its secret is dead), operator calls for it fail with
    /// [`ServerError::UnknownDevice`], it is never reported overdue, and the
    /// console does not list it. Its finished tasks stay until pruned. A
    /// [`ServerEvent::SendPush`] for it still waiting in the event queue is
    /// withdrawn; one the application took already is its to drop.
    ///
    /// Only its generation is kept (by the store), so that enrolling the
    /// id again gives a new secret, never one the retired device holds.
    /// In [`MemoryStore`] that is 20 to 40 bytes per retired device. The
    /// room its record, push target and push state took (about 400 bytes
    /// with a typical token) stays allocated, taken by the devices enrolled
    /// next (`fleet_memory 1000000 retired`: a million new devices with
    /// tokens after a million retired grew resident memory by 0 bytes),
    /// until [`Server::shrink_to_fit`] gives it back: call that after
    /// retiring many devices for good.
    pub fn retire(&mut self, id: DeviceId, now: Instant) -> Result<(), S> {
        if self.store.device_generation(id)?.is_none() {
            return Err(ServerError::UnknownDevice);
        }
        self.drop_open_tasks(id, now)?;
        self.close_device_session(id);
        self.store.retire_device(id)?;
        self.release_held_push(id);
        self.pushes.forget(id);
        // A push asked for earlier and not yet taken by the application
        // would go to the token of a device that no longer exists.
        self.events
            .retain(|e| !matches!(e, ServerEvent::SendPush { device, .. } if *device == id));
        Ok(())
    }

    /// Gives back to the allocator the room that devices no longer there
    /// left in the engine's tables and in the store's
    /// ([`FleetStore::shrink_to_fit`]; [`MemoryStore::shrink_to_fit`] for
    /// the in-memory store). Retiring a device frees its entries, not
    /// their room: without this call a fleet that shrank for good keeps
    /// the memory of its largest size (taken again by the devices enrolled
    /// next). Call it once after retiring many devices (a tenth of the
    /// fleet or more, say); it is never needed for correctness, and never
    /// called by the engine itself.
    ///
    /// The engine's part: the push states (one per device that ever
    /// synced), the sessions' per-device maps, the timer heap and queues,
    /// and the event and ready queues, each moved into the room its entries
    /// need (the push-state table keeps a little more, so that the next
    /// device that syncs does not grow it at once: 70 % full). A retired
    /// device whose check-in check was still queued kept its push state
    /// until that check ran (up to `periodic_interval + overdue_slack`
    /// later); this call runs those checks' work at once (dropping the
    /// state and the check, as the check would have), so that their room
    /// is given back now too, and drops the heap's timers of closed
    /// sessions and of ended tasks. The connection slots past the last
    /// open session are given back (16 bytes each, and 4 in the free
    /// list; as many slots as the most sessions ever open at once were
    /// kept), and so are the closed sessions kept for reuse (up to 256,
    /// each about 0.7 KiB plus its output buffer): the next sessions
    /// allocate theirs again. Nothing that the engine does for the devices
    /// still enrolled changes.
    ///
    /// What stays: the store's generations of retired devices (kept for
    /// good), finished tasks until pruned ([`MemoryStore::prune_finished`]:
    /// call it first), and the connection slots below the last open
    /// session (a session's slot is part of its id, so it cannot move):
    /// closed ones among them stay as holes for the next sessions.
    ///
    /// Cost: every entry of every table read or moved once, O(devices +
    /// tasks + timers) of the fleet's largest size, while the engine serves
    /// nothing else: 0.7 to 0.9 s for 1,000,000 synced devices of which
    /// 900,000 were retired (`fleet_memory 1000000 shrunk`, on a host
    /// running other work). Each table's new room is allocated before its
    /// old one is freed, so memory peaks by the new size of the largest
    /// table, for a moment, before it falls. There, resident memory went
    /// from 445.0 MiB to 62.5 MiB (655 bytes per device kept, of which
    /// about 180 are the 900,000 retired generations; a fleet of 100,000
    /// synced from the start takes 490) with glibc told to give freed
    /// tables back (`MALLOC_MMAP_THRESHOLD_=131072`); with its defaults
    /// 476.7 MiB to 82.1 MiB, glibc keeping some of what was freed. The
    /// memory is given back to the allocator; whether the allocator gives
    /// it to the system is its own affair.
    pub fn shrink_to_fit(&mut self) {
        self.drop_retired_states();
        self.sweep_timers();
        self.pushes.0.shrink_to_fit();
        self.online.shrink_to_fit();
        self.held_pushes.shrink_to_fit();
        self.timers.shrink_to_fit();
        self.overdue_checks.shrink_to_fit();
        self.handshake_checks.shrink_to_fit();
        self.push_checks.shrink_to_fit();
        self.handshakes.shrink_to_fit();
        self.sessions.shrink_to_fit();
        self.spare.shrink_to_fit();
        self.ready.shrink_to_fit();
        self.events.shrink_to_fit();
        self.store.shrink_to_fit();
    }

    /// Drops the push states that retired devices left with a check-in
    /// check queued (see `PushStates::forget`), and those checks: what the
    /// checks would do when they ran (`overdue_timer` drops a state with no
    /// check-in promised and no push sent). A state that had a push sent or
    /// a check-in since (the id was enrolled again) is not such a state.
    fn drop_retired_states(&mut self) {
        let pushes = &self.pushes;
        let left = |d: &DeviceId| pushes.get(d).is_some_and(PushState::is_left_by_retire);
        self.overdue_checks.retain(|(_, d)| !left(d));
        self.timers
            .retain(|Reverse((_, t))| !matches!(t, Timer::Overdue(d) if left(d)));
        let gone: Vec<DeviceId> = (self.pushes.iter())
            .filter(|(_, p)| p.is_left_by_retire())
            .map(|(d, _)| d)
            .collect();
        for d in gone {
            self.pushes.0.remove(d.0);
        }
    }

    /// The secret of an enrolled device's current generation.
    pub fn device_secret(&self, id: DeviceId) -> Result<Secret, S> {
        let rec = self.store.device(id)?.ok_or(ServerError::UnknownDevice)?;
        Ok(self.derive_secret(id, rec.generation))
    }

    // ---- restart -------------------------------------------------------------

    /// Ends the engine and gives its store back, as a server process does
    /// when it stops. What the engine kept only in memory (sessions, push
    /// rate limits, check-in deadlines, timers, undelivered events) goes
    /// with it; a new engine over the same store gets most of it back with
    /// [`Server::recover`].
    pub fn into_store(self) -> S {
        self.store
    }

    /// Rebuilds, from the store, what an engine keeps only in memory, so that
    /// a server restarted over a store that outlived the previous process
    /// (a database, not [`MemoryStore`]) keeps its guarantees. Call it once,
    /// right after [`Server::new`] and before any other call; a second call
    /// does nothing, unless the first returned a store error: then it does
    /// what that one left undone.
    ///
    /// - **Check-ins:** every device that ever synced is expected again by
    ///   its last sync plus its periodic interval and `overdue_slack`, as if
    ///   that sync had happened in this process: a device that went silent
    ///   before the restart is still reported [`ServerEvent::Overdue`]. One
    ///   that was reported overdue before the restart is reported again.
    /// - **Intervals told:** a device keeps the interval its last `Welcome`
    ///   told it until its next sync, which may be longer than this
    ///   engine's `periodic_interval` (a restart that shortened it). The
    ///   interval the check-ins above use is the longer of this engine's
    ///   and the longest that the store's [`ToldIntervals`] says earlier
    ///   engines told, while a device may still keep that one (until the
    ///   last sync at which it was told, plus it, plus `overdue_slack`). So
    ///   after a restart from 3 h to 1 h a device that syncs as it was told
    ///   is not reported, a silent one is reported late by at most the old
    ///   3 h, and a further restart within those 3 h expects it by 3 h as
    ///   well. The record is one for the fleet, not one per device: every
    ///   device that synced before the restart gets the longest interval,
    ///   even one that was told a shorter one (reported later, by at most
    ///   the difference). Before it arms the check-ins, `recover` records
    ///   this engine's interval over the earlier ones
    ///   ([`FleetStore::set_told_intervals`]); an engine that does not call
    ///   `recover` records it at its first handshake, before the `Welcome`
    ///   that tells it.
    ///
    ///   Known shortcomings: a store that does not keep the record (the
    ///   trait's default methods) or holds none yet (its engine was of a
    ///   build before the record) gets the new engine's interval alone, and
    ///   after a restart that shortened it every device that syncs as it
    ///   was told is reported overdue once. Nodes of a cluster that share a
    ///   store and tell different intervals at the same time each record
    ///   theirs over the others': a longer interval of a node that keeps
    ///   running is kept in the record only until the time it would have
    ///   run out had that node stopped when the other started, and a
    ///   restart after that may report devices still on it overdue once.
    ///   The check `recover` queues for a device is for the longer
    ///   deadline, and a later check-in lets it serve (see
    ///   [`ServerEvent::Overdue`]): a device that syncs with this engine,
    ///   is told the shorter interval and then goes silent is reported
    ///   when that check runs, late by up to the difference of the two
    ///   intervals, once. The engine reads a record a store mangled
    ///   within bounds: its intervals as 1 min to 7 days, its instant as at
    ///   most the longest of them and `overdue_slack` past the latest sync
    ///   or `now`. So a mangled record runs out within about a week,
    ///   however often engines restart; a clock that went back by more
    ///   than that ends a sane record's earlier interval early.
    /// - **Task expiries** of open tasks are armed again: an undelivered task
    ///   whose `expires_at` passed while no server ran expires at the next
    ///   [`Server::handle_timeout`].
    /// - **Pushes:** each device with undelivered work (a task queued,
    ///   pushed or deferred and not expired, a task offered in a session the
    ///   restart may have cut before the offer arrived, a cancel asked for a
    ///   task it may hold, or a policy it has not reported) is pushed again, subject
    ///   to `push_min_interval` as ever: a push requested just before the
    ///   restart may never have left the old process.
    /// - **Deferrals:** a task deferred in a session of the old process is
    ///   no longer held back for that session (stored again without it):
    ///   this process numbers its connections from the start again, and
    ///   would take another session for that one.
    ///
    /// The store's instants must be on the new process's clock: run the
    /// adapters on a clock that goes on from the old one, such as
    /// [`ScaledClock::unix`](crate::adapters::clock::ScaledClock::unix).
    ///
    /// Not rebuilt, and documented in PROTOCOL.md section 16: the order of
    /// handshakes awaiting their proof (a late proof of a connection of the
    /// old process is not known to be stale).
    ///
    /// Cost: one pass over the store's devices and one over its tasks, with
    /// a lookup of the assigned policy of each device whose last report is
    /// older than it and a rewrite of each deferred task, and a read and a
    /// write of the record of intervals told; memory for one deadline per
    /// device that ever synced.
    pub fn recover(&mut self, now: Instant) -> Result<Recovered, S> {
        let mut done = Recovered::default();
        if self.recovered {
            return Ok(done);
        }
        let mut checks = Vec::new();
        let mut policy_pending = Vec::new();
        let mut latest_sync = Instant::ZERO;
        self.store.for_each_device(&mut |rec| {
            if let Some((at, _)) = rec.last_sync {
                checks.push((at, rec.id));
                latest_sync = latest_sync.max(at);
            }
            if rec.policy_state == PolicyState::Pending {
                policy_pending.push((rec.id, rec.policy_version));
            }
        })?;
        let wait = match self.earlier_wait {
            Some(wait) => wait, // recorded by a call that failed after it
            None => self.record_told_interval(now, latest_sync)?,
        };
        // In deadline order, so that they all fit the FIFO (see `in_order`):
        // the order of the last syncs, `wait` being the same for all.
        checks.sort_unstable();
        for (last_sync, device) in checks {
            let at = last_sync + wait;
            if self
                .pushes
                .get(&device)
                .is_some_and(|p| p.flags.has(Flags::DUE))
            {
                continue; // checked in with this engine already
            }
            if self.expect_check_in(device, at).is_some() {
                done.checkins += 1;
            }
        }
        let mut wake = Vec::new();
        let mut expiries = Vec::new();
        let mut deferred = Vec::new();
        self.store.for_each_task(&mut |t| {
            if t.state.is_final() {
                return;
            }
            if let Some(at) = t.expires_at {
                expiries.push((at, t.id));
            }
            let undelivered = matches!(
                t.state,
                TaskState::Queued | TaskState::PushSent | TaskState::Deferred { .. }
            );
            // A cancel asked for a task the device may hold is work too: in
            // one process `cancel_task` pushed for it.
            let cancel = t.cancel_requested && t.state.maybe_on_device();
            // Offered in a session the restart cut: the offer may never have
            // arrived, and the device, its session failed with nothing of
            // its own to send, waits for its periodic sync. In one process
            // `connection_dropped` pushes it back.
            let offered = t.state == TaskState::Offered;
            if cancel || offered || (undelivered && t.expires_at.is_none_or(|e| now < e)) {
                wake.push(t.device);
            }
            // Deferred in a session of the old process: this process counts
            // its connection ids from the start again, and would take that
            // session's id for another one and not offer the task there.
            if matches!(t.state, TaskState::Deferred { .. }) && t.deferred_in != 0 {
                deferred.push(t.id);
            }
        })?;
        done.expiries = expiries.len();
        for (at, task) in expiries {
            self.arm_timer(at, Timer::Expire(task));
        }
        for id in deferred {
            if let Some(mut t) = self.store.task(id)? {
                t.deferred_in = 0; // no connection's id (they count from 1)
                self.store.put_task(&t)?;
            }
        }
        for (device, reported) in policy_pending {
            if self
                .store
                .policy_version(device)?
                .is_some_and(|v| v != reported)
            {
                wake.push(device);
            }
        }
        wake.sort_unstable();
        wake.dedup();
        for device in wake {
            if self.push_or_hold(device, now)? {
                done.pushed += 1;
            }
        }
        // Only now: after a store error the caller calls again. What the
        // failed call did is not done twice, or harmlessly so (a check-in
        // is armed once per device, an expiry twice fires once, a second
        // push waits for the rate limit).
        self.recovered = true;
        Ok(done)
    }

    /// Records in the store the interval this engine tells devices
    /// ([`ToldIntervals`]), over the record of the engines before it, read
    /// first; sets and returns `earlier_wait`. Called once, before the
    /// first `Welcome`: by `recover`, with `latest_sync` the latest last
    /// sync in the store, or by the first handshake of an engine that did
    /// not recover, with `now`. On a store error nothing is recorded, and
    /// the next call tries again.
    fn record_told_interval(&mut self, now: Instant, latest_sync: Instant) -> Result<Duration, S> {
        let (interval, slack) = (self.cfg.periodic_interval, self.cfg.overdue_slack);
        let old = self.store.told_intervals()?;
        let (earlier, record) =
            ToldIntervals::after(old.as_ref(), interval, now, latest_sync, slack);
        self.store.set_told_intervals(&record)?;
        let wait = earlier.map_or(interval, |e| e.max(interval)) + slack;
        self.earlier_wait = Some(wait);
        Ok(wait)
    }

    fn drop_open_tasks(&mut self, id: DeviceId, now: Instant) -> Result<(), S> {
        let ids = self.open_task_ids(id)?;
        for tid in &ids {
            if let Some(mut t) = self.store.task(*tid)? {
                self.set_state(&mut t, TaskState::Dropped, now)?;
            }
        }
        self.scratch = ids; // keeps its capacity: no allocation next time
        Ok(())
    }

    fn open_task_ids(&mut self, id: DeviceId) -> Result<Vec<TaskId>, S> {
        let mut ids = core::mem::take(&mut self.scratch);
        ids.clear();
        self.store.open_tasks(id, &mut ids)?;
        Ok(ids)
    }

    /// Stores a task's new state and tells the console.
    fn set_state(&mut self, t: &mut TaskRecord, state: TaskState, now: Instant) -> Result<(), S> {
        self.store_state(t, state, now, None)
    }

    /// As [`set_state`](Self::set_state); with `limit`, `t` is a task not
    /// stored yet, stored only if its device has fewer open tasks than that
    /// ([`FleetStore::put_new_task`]), else `Err(QueueFull)` and nothing is
    /// stored or announced.
    fn store_state(
        &mut self,
        t: &mut TaskRecord,
        state: TaskState,
        now: Instant,
        limit: Option<usize>,
    ) -> Result<(), S> {
        t.state = state;
        if state.is_final() {
            t.finished_at = Some(now);
        }
        match limit {
            None => self.store.put_task(t)?,
            Some(max) if self.store.put_new_task(t, max)? => {}
            Some(_) => return Err(ServerError::QueueFull),
        }
        self.task_changed(t);
        Ok(())
    }

    /// Announces `t`'s state. Out of line, and small, so that the queue's
    /// push is inlined here and the event's fields are written straight
    /// into its slot: where the compiler left the push out of line (when a
    /// task is offered), the event was built on the stack and copied whole
    /// (224 bytes, with room for a push token) into the queue.
    #[inline(never)]
    fn task_changed(&mut self, t: &TaskRecord) {
        let (device, task, state) = (t.device, t.id, t.state);
        self.events.push_back(ServerEvent::TaskChanged {
            device,
            task,
            state,
        });
    }

    /// The push service refused `token`, `device`'s push token, for good
    /// (the token is no longer registered, or malformed): if the store
    /// still holds that token, it drops it
    /// ([`FleetStore::remove_push_target`]), so that no push goes to it
    /// again. The device's next sync, whatever starts it (at the latest its
    /// periodic one), carries no token, and its `Welcome` asks for one
    /// (`want_token`, PROTOCOL.md 7.2): the device syncs again at once and
    /// sends the token it has, and pushes resume with it. Work queued
    /// meanwhile waits for that sync. Returns whether the store held that
    /// token.
    ///
    /// A push service answers after the push, so the device may have sent
    /// a new token meanwhile: a refusal of another token than the one held
    /// (the `token` of the [`ServerEvent::SendPush`] it answers) changes
    /// nothing, and pushes go on to the new one.
    pub fn push_token_rejected(&mut self, device: DeviceId, token: &str) -> Result<bool, S> {
        let held = self.store.push_target(device)?;
        if held.is_none_or(|(_, t)| t.as_str() != token) {
            return Ok(false);
        }
        self.store
            .remove_push_target(device)
            .map_err(ServerError::Store)
    }

    /// A hint that work for `device` comes soon: a task to queue for it, or
    /// its sync. The engine asks for the cache lines of the device's state
    /// (its push state here; its record and push target through
    /// [`FleetStore::prefetch_device`] and
    /// [`FleetStore::prefetch_push_target`]) without waiting for them. It
    /// changes nothing else.
    ///
    /// At a million devices that state is mostly not in any cache, and each
    /// miss costs a few hundred nanoseconds. A caller that knows its next
    /// work items (a campaign queueing a task for many devices, an event loop
    /// holding a batch of ready connections) can call this a few items ahead,
    /// so that those misses overlap the work at hand: see the `fleet` bench's
    /// `lookahead` rows. Hinting a batch at once (the devices of the next
    /// batch of work, one batch ahead: the `batch_hints` rows) did as well
    /// or better there: a prefetch waits for its page walk, and walks asked
    /// for together overlap one another. On x86-64 this issues prefetch
    /// instructions; on other targets the lines are read, and the call
    /// waits for the first of them.
    ///
    /// The engine remembers the last few devices hinted. A lookup that takes
    /// two steps (`MemoryStore`'s push target: which of two entries holds
    /// the device shows in the first line) gets its second step two hints
    /// later ([`FleetStore::prefetch_device_again`]), when the first line
    /// has come: hint at least three items ahead for that to pay.
    pub fn prefetch_device(&mut self, device: DeviceId) {
        self.pushes.0.touch_home(device.0);
        self.store.prefetch_device(device);
        let again = self.hinted_at.wrapping_sub(HINT_AGAIN_AFTER) % HINTS;
        if let Some(earlier) = self.hinted.get(again).copied().flatten() {
            self.store.prefetch_device_again(earlier);
        }
        if let Some(slot) = self.hinted.get_mut(self.hinted_at % HINTS) {
            *slot = Some(device);
        }
        self.hinted_at = self.hinted_at.wrapping_add(1);
    }

    /// Whether `device` is among the last devices hinted (`prefetch_device`)
    /// and had its second hint: its push state and push target were asked
    /// for. One of the last `HINT_AGAIN_AFTER` hinted had only its first
    /// (a batch hinted all at once and then worked through ends so).
    fn hinted(&self, device: DeviceId) -> bool {
        (HINT_AGAIN_AFTER..HINTS).any(|back| {
            let slot = self.hinted_at.wrapping_sub(1 + back) % HINTS;
            self.hinted.get(slot) == Some(&Some(device))
        })
    }

    /// Asks for the lines of `device`'s push state and push target, which a
    /// push reads.
    fn prefetch_push(&self, device: DeviceId) {
        self.pushes.0.touch_home(device.0);
        self.store.prefetch_push_target(device);
    }

    /// Queues a task for a device and arranges for it to be delivered: at once
    /// if the device is connected, else by push (rate-limited), else by the
    /// device's next periodic or boot sync.
    ///
    /// A store error is returned whether it came before the task was stored
    /// (then there is no task, and no event about it) or after (offering it,
    /// or reading the push target for its push). In the second case the task
    /// is queued, its expiry armed, and its `TaskChanged` event says so:
    /// queueing it again would make two.
    ///
    /// The task's first [`ServerEvent::TaskChanged`] has the state it was
    /// stored in: `Expired` if its expiry has passed already (then no push
    /// is sent for it); else `Queued`, or, for a device in session, `Offered`
    /// (it is offered at once, and announced once).
    pub fn enqueue_task(
        &mut self,
        device: DeviceId,
        kind: TaskKind,
        opts: TaskOptions,
        now: Instant,
    ) -> Result<TaskId, S> {
        // A device in session was read at its handshake, and re-enrollment
        // ends the session: its generation is the session's, no read needed.
        let session = self.session_of(device);
        let generation = match session {
            Some((_, generation)) => generation,
            None => {
                // The device's push state and push target are asked for
                // here, next to its record, though only `request_push` needs
                // them: at a million devices all three miss the cache, and
                // issued together their misses overlap. A device hinted
                // lately has them asked for already (and of its push target,
                // only the lines it uses: asking for the rest here would
                // undo that).
                if !self.hinted(device) {
                    self.prefetch_push(device);
                }
                let generation = self.store.device_generation(device)?;
                generation.ok_or(ServerError::UnknownDevice)?
            }
        };
        // Without a supersede key every open task stays: counted, not read.
        // A device in session mostly has some (those it runs): the store
        // counts them as it stores this one (`limit`: `put_new_task`), in the
        // one lookup of its open list. One out of session mostly has none:
        // counted apart (no list, next to nothing to look up).
        let (id, live, limit) = match (opts.supersede, session) {
            (None, Some(_)) => (self.store.next_task_id()?, 0, Some(self.cfg.max_open_tasks)),
            (None, None) => {
                let live = self.store.open_task_count(device)?;
                (self.store.next_task_id()?, live, None)
            }
            (Some(key), _) => {
                let (id, live) = self.supersede(device, key, now)?;
                (id, live, None)
            }
        };
        if live >= self.cfg.max_open_tasks {
            return Err(ServerError::QueueFull);
        }
        let mut t = TaskRecord {
            id,
            device,
            generation,
            kind,
            state: TaskState::Queued,
            seq: 0,
            cancel_requested: false,
            deferred_in: 0,
            supersede: opts.supersede,
            expires_at: opts.expires_at,
            created_at: now,
            finished_at: None,
        };
        // The task is announced once stored, with the state it is stored in:
        // `Queued`, or, offered at once, `Offered` (no `Queued` before it).
        let announced = self.events.len();
        // Expired on arrival, it can never be delivered: stored expired, as
        // `offer_one` does in a session, and no push wakes the device for it.
        let expired = opts.expires_at.is_some_and(|e| now >= e);
        let stored = match session {
            // Everything else pending went out when the session opened, or
            // when it arrived: only this task is new (stored once, as offered).
            Some((conn, _)) => self.offer_new(conn, &mut t, now, limit),
            None if expired => self.store_state(&mut t, TaskState::Expired, now, limit),
            None => self.store_state(&mut t, TaskState::Queued, now, limit),
        };
        // A task the store refused was never queued, nor announced; one
        // stored before a later error was both.
        let kept = stored.is_ok() || self.events.len() > announced;
        if kept && !t.state.is_final() {
            if let Some(at) = opts.expires_at {
                self.arm_timer(at, Timer::Expire(id));
            }
        }
        stored?;
        if session.is_none() && !expired {
            self.request_push(device, now)?;
        }
        Ok(id)
    }

    /// A new task id for `device`, and how many of its open tasks stay once
    /// the undelivered ones with supersede key `key` are superseded by it.
    /// When that many reach `max_open_tasks`, `QueueFull` and nothing is
    /// superseded: the tasks are counted first, so a refused task replaces
    /// none (it would leave them superseded by a task that never exists).
    fn supersede(
        &mut self,
        device: DeviceId,
        key: SupersedeKey,
        now: Instant,
    ) -> Result<(TaskId, usize), S> {
        let open = self.open_task_ids(device)?;
        let result = self.supersede_open(&open, key, now);
        self.scratch = open;
        result
    }

    /// `supersede` over the device's open tasks `open`.
    fn supersede_open(
        &mut self,
        open: &[TaskId],
        key: SupersedeKey,
        now: Instant,
    ) -> Result<(TaskId, usize), S> {
        let replaced = |t: &TaskRecord| {
            let replaceable = matches!(
                t.state,
                TaskState::Queued | TaskState::PushSent | TaskState::Deferred { .. }
            );
            t.supersede == Some(key) && replaceable
        };
        let mut live = 0;
        for tid in open {
            if self.store.task(*tid)?.is_some_and(|t| !replaced(&t)) {
                live += 1;
            }
        }
        if live >= self.cfg.max_open_tasks {
            return Err(ServerError::QueueFull);
        }
        let id = self.store.next_task_id()?;
        for tid in open {
            if let Some(mut t) = self.store.task(*tid)?.filter(replaced) {
                self.set_state(&mut t, TaskState::Superseded { by: id }, now)?;
            }
        }
        Ok((id, live))
    }

    /// Cancels a task. Not yet on the device: it is cancelled at once
    /// (`Ok(Cancelled)`). Possibly on the device: a cancel is sent and the
    /// current state is returned; the device's answer ends it as `Cancelled`,
    /// or with its real final status (then [`TaskRecord::cancel_too_late`]).
    /// Already final: `Err(AlreadyFinal)`, nothing changed. Calling it again
    /// while the cancel is pending is harmless.
    pub fn cancel_task(&mut self, task: TaskId, now: Instant) -> Result<TaskState, S> {
        let mut t = self.store.task(task)?.ok_or(ServerError::UnknownTask)?;
        if t.state.is_final() {
            return Err(ServerError::AlreadyFinal(t.state));
        }
        if !t.state.maybe_on_device() {
            self.set_state(&mut t, TaskState::Cancelled, now)?;
            return Ok(TaskState::Cancelled);
        }
        if !t.cancel_requested {
            t.cancel_requested = true;
            self.store.put_task(&t)?;
            self.work_arrived(t.device, now)?;
        }
        Ok(t.state)
    }

    /// Assigns a new policy version with these settings; returns the version.
    pub fn assign_policy(
        &mut self,
        device: DeviceId,
        settings: &[Setting],
        now: Instant,
    ) -> Result<u32, S> {
        let mut rec = self
            .store
            .device(device)?
            .ok_or(ServerError::UnknownDevice)?;
        let settings = heapless::Vec::<Setting, MAX_SETTINGS>::from_slice(settings)
            .map_err(|_| ServerError::PolicyTooLarge)?;
        let prev = self.store.policy_version(device)?.unwrap_or(0);
        // The newer of the two in the window devices compare versions in.
        let newest = if seq_newer(rec.policy_version, prev) {
            rec.policy_version
        } else {
            prev
        };
        let version = newest.wrapping_add(1);
        self.store
            .put_policy(device, &Policy { version, settings })?;
        rec.policy_state = PolicyState::Pending;
        self.store.put_device(&rec)?;
        self.work_arrived(device, now)?;
        Ok(version)
    }

    /// New work for a device: offer it in its open session, or push.
    fn work_arrived(&mut self, device: DeviceId, now: Instant) -> Result<(), S> {
        match self.session_of(device) {
            Some((conn, _)) => self.offer_work(conn, now),
            None => self.request_push(device, now),
        }
    }

    fn request_push(&mut self, device: DeviceId, now: Instant) -> Result<(), S> {
        self.push_or_hold(device, now).map(|_| ())
    }

    /// As [`request_push`](Self::request_push); returns whether a push went
    /// out or waits for the rate limit (not when the device has no push
    /// target).
    fn push_or_hold(&mut self, device: DeviceId, now: Instant) -> Result<bool, S> {
        match self.next_push(device, now) {
            Some(next) => {
                self.hold_push(device, next);
                Ok(true)
            }
            None => self.send_push(device, now),
        }
    }

    /// When the rate limit lets `device` be pushed again, if not at `now`.
    /// A device never pushed (its state may be missing) can be at once.
    fn next_push(&self, device: DeviceId, now: Instant) -> Option<Instant> {
        let p = self
            .pushes
            .get(&device)
            .filter(|p| p.flags.has(Flags::PUSHED))?;
        Some(p.last + self.cfg.push_min_interval).filter(|&next| now < next)
    }

    /// Holds a push for `device` until `next`, the end of its rate limit:
    /// the check queued with its last push sends it, unless that check
    /// already ran and the clock then went back; then a check of its own
    /// (in the heap: rare, and out of the FIFO's order).
    fn hold_push(&mut self, device: DeviceId, next: Instant) {
        if self.held_pushes.insert(device) && next <= self.timers_ran_to {
            self.arm_timer(next, Timer::Push(device));
        }
    }

    /// Pushes `device` now; returns whether it has a push target.
    fn send_push(&mut self, device: DeviceId, now: Instant) -> Result<bool, S> {
        // A held push stays held until the store has answered (see `push_timer`).
        let target = self.queue_push(device)?;
        self.release_held_push(device);
        if !target {
            return Ok(false); // never connected: its boot or periodic sync will come
        }
        if let Some(p) = self.pushes.entry_or_default(device) {
            p.last = now;
            p.flags.set(Flags::PUSHED, true);
        }
        let check = now + self.cfg.push_min_interval;
        if !in_order(&mut self.push_checks, check, device) {
            self.arm_timer(check, Timer::Push(device));
        }
        let ids = self.open_task_ids(device)?;
        for tid in &ids {
            if let Some(mut t) = self.store.task(*tid)? {
                if t.state == TaskState::Queued {
                    self.set_state(&mut t, TaskState::PushSent, now)?;
                }
            }
        }
        self.scratch = ids;
        Ok(true)
    }

    /// Queues a [`ServerEvent::SendPush`] for `device` with the store's
    /// push target written into the queue's slot
    /// ([`FleetStore::push_target_into`]): the event (224 bytes, with room for
    /// a token) is not built aside and copied in, and the token is copied
    /// once. Returns whether the device has a target; without one, or on a
    /// store error, no event is left queued. Out of line for the reason
    /// `task_changed` is.
    #[inline(never)]
    fn queue_push(&mut self, device: DeviceId) -> Result<bool, S> {
        let queued = self.events.len();
        self.events.push_back(ServerEvent::SendPush {
            device,
            platform: Platform::Android,
            token: PushToken::new(),
        });
        let target = match self.events.back_mut() {
            Some(ServerEvent::SendPush {
                platform, token, ..
            }) => self.store.push_target_into(device, token).map(|p| {
                *platform = p.unwrap_or(*platform);
                p.is_some()
            }),
            _ => Ok(false),
        };
        self.keep_events_if(queued, matches!(target, Ok(true)));
        Ok(target?)
    }

    /// Withdraws the events queued since the queue held `queued` events,
    /// unless `kept`: events queued ahead of a store call (so that they are
    /// written in place, see `queue_push`) announce nothing the store did not
    /// take.
    fn keep_events_if(&mut self, queued: usize, kept: bool) {
        if !kept {
            self.events.truncate(queued);
        }
    }

    fn close_device_session(&mut self, device: DeviceId) {
        if let Some(conn) = self.online.remove(&device) {
            if let Some(s) = self.sessions.remove(&conn) {
                self.recycle(s);
            }
            self.events.push_back(ServerEvent::Close { conn });
            self.events.push_back(ServerEvent::SessionEnded {
                conn,
                device: Some(device),
            });
        }
    }

    // ---- connections -------------------------------------------------------

    /// A transport connection was accepted.
    pub fn connection_opened(&mut self, now: Instant) -> Result<ConnId, S> {
        if self.sessions.len() >= self.cfg.max_sessions {
            return Err(ServerError::Busy);
        }
        let session = self.spare.session(now);
        let conn = self.sessions.insert(session);
        let at = now + self.cfg.handshake_timeout;
        if !in_order(&mut self.handshake_checks, at, conn) {
            self.arm_timer(at, Timer::Session(conn));
        }
        let checks = &mut self.handshake_checks;
        // Deadlines of closed sessions are dropped once they outnumber the
        // open sessions: O(1) per connection amortized, and the queue stays
        // bounded by the sessions when the clock stands still.
        if checks.len() > 2 * self.sessions.len() + 1024 {
            let sessions = &self.sessions;
            checks.retain(|(_, c)| sessions.contains_key(c));
        }
        Ok(conn)
    }

    /// Arms a timer of the heap. A closed session leaves its deadline in the
    /// heap, and a task that ended before its expiry leaves its expiry; once
    /// the heap has doubled since its last sweep, both are swept out (in
    /// place, O(1) per timer amortized, one store read per expiry), so the
    /// heap stays near the live timers however many sessions come and go and
    /// however long the expiries of finished tasks are.
    fn arm_timer(&mut self, at: Instant, timer: Timer) {
        self.timers.push(Reverse((at, timer)));
        if self.timers.len() > 2 * self.timers_swept + 1024 {
            self.sweep_timers();
        }
    }

    /// Drops the heap's timers of closed sessions and of tasks that ended.
    fn sweep_timers(&mut self) {
        let (sessions, store) = (&self.sessions, &self.store);
        self.timers.retain(|Reverse((_, t))| match t {
            Timer::Session(c) => sessions.contains_key(c),
            // Kept when the store cannot tell: expiring is harmless.
            Timer::Expire(task) => match store.task(*task) {
                Ok(Some(t)) => !t.state.is_final(),
                Ok(None) => false,
                Err(_) => true,
            },
            Timer::Push(_) | Timer::Overdue(_) => true,
        });
        self.timers_swept = self.timers.len();
    }

    /// The transport of `conn` closed. Harmless for an unknown id.
    pub fn connection_closed(&mut self, conn: ConnId, now: Instant) {
        if let Some(s) = self.sessions.remove(&conn) {
            let device = s.device();
            if let Some(d) = device {
                if self.online.get(&d) == Some(&conn) {
                    self.online.remove(&d);
                }
                // The device closed, and a task offered after `SyncEnd`
                // that it did not report on may have crossed its close: a
                // push brings it back (held and sent by the push check,
                // which reads the store; within `push_min_interval` as
                // always). A report on it (or on a later offer: frames come
                // in order) moved the device's confirmed sequence past it;
                // if the store cannot tell, the push goes. One that left it
                // for want of room gets it again in the next session's first
                // burst, which asks for no push. A close the engine made
                // itself (`closing`: an error or a timeout) has asked for
                // its push already where one was due.
                // A cancel or a policy sent after `SyncEnd` can cross the
                // close the same way (found by breaker15).
                if !s.closing && self.late_work_open(d, s.late_offer(), s.late_work()) {
                    // As `request_push` does, the push itself (which can
                    // fail) left to a check: one now if the rate limit
                    // allows.
                    match self.next_push(d, now) {
                        Some(next) => self.hold_push(d, next),
                        None if self.held_pushes.insert(d) => {
                            self.arm_timer(now, Timer::Push(d));
                        }
                        None => {}
                    }
                }
            }
            self.events
                .push_back(ServerEvent::SessionEnded { conn, device });
            self.recycle(s);
        }
    }

    /// Whether work a closed session of `d` sent after its `SyncEnd` may
    /// not have reached the device: the task offered last then (`late`),
    /// unless the device reported on it or a later one; with `cancel`, a
    /// task whose cancel is still open; with `policy`, a policy the device
    /// has not reported on. When the store cannot tell, it may not have.
    fn late_work_open(
        &mut self,
        d: DeviceId,
        late: Option<u32>,
        (cancel, policy): (bool, bool),
    ) -> bool {
        if let Some(late) = late {
            let seqs = self.store.report_seqs(d);
            if !matches!(seqs, Ok(Some(r)) if !seq_newer(late, r.last_task_seq)) {
                return true;
            }
        }
        if policy {
            match self.store.device(d) {
                Ok(Some(r)) if r.policy_state == PolicyState::Pending => return true,
                Ok(_) => {}
                Err(_) => return true,
            }
        }
        if !cancel {
            return false;
        }
        let Ok(ids) = self.open_task_ids(d) else {
            return true;
        };
        let open = ids.iter().any(|id| match self.store.task(*id) {
            Ok(Some(t)) => t.cancel_requested && t.state.maybe_on_device(),
            Ok(None) => false,
            Err(_) => true,
        });
        self.scratch = ids;
        open
    }

    /// The transport of `conn` is gone and output taken from the engine may
    /// not have arrived: its peer read too slowly for a bound of the
    /// application's own (as [`ServerConfig::max_pending_out`] is the
    /// engine's), or a write or read failed. As
    /// [`connection_closed`](Self::connection_closed), and a device that was
    /// syncing with tasks still open gets a push (within `push_min_interval`,
    /// as always). Harmless for an unknown id.
    ///
    /// # Errors
    ///
    /// A store error while finding the device's open tasks or its push
    /// target; the connection is closed all the same, and the device still
    /// syncs on its own retry or periodic sync.
    pub fn connection_dropped(&mut self, conn: ConnId, now: Instant) -> Result<(), S> {
        let device = self.sessions.get(&conn).and_then(|s| s.device());
        self.connection_closed(conn, now);
        match device {
            Some(d) if self.store.open_task_count(d)? > 0 => self.request_push(d, now),
            _ => Ok(()),
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// Copies pending output of some connection into `buf`. `None` for an
    /// empty `buf` (nothing can be copied; the output stays queued).
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<(ConnId, usize)> {
        if buf.is_empty() {
            // Else the first ready connection would be taken off the queue
            // with its output untaken, and stranded there until new output.
            return None;
        }
        while let Some(conn) = self.ready.pop_front() {
            let Some(s) = self.sessions.get_mut(&conn) else {
                continue; // closed since
            };
            s.queued = false;
            if let Some(n) = self.poll_transmit_for(conn, buf) {
                if let Some(s) = self.sessions.get_mut(&conn).filter(|s| s.has_output()) {
                    s.queued = true;
                    self.ready.push_front(conn);
                }
                return Some((conn, n));
            }
        }
        None
    }

    /// Copies pending output of `conn` into `buf`; `None` when there is none.
    // Inline: a transport's drain loop calls it for each frame and once more
    // to find nothing left, and a call cost about as much as either.
    #[inline]
    pub fn poll_transmit_for(&mut self, conn: ConnId, buf: &mut [u8]) -> Option<usize> {
        self.transmit_with(conn, |pending| {
            let n = pending.len().min(buf.len());
            session::copy_short(&mut buf[..n], &pending[..n]);
            n
        })
    }

    /// Hands the pending output of `conn` to `send` where it lies, without
    /// copying it out first; `send` returns how many of the bytes it took
    /// (at most their number), and the next call starts past them. `None`
    /// when there is no output; as with
    /// [`poll_transmit_for`](Self::poll_transmit_for), a drain loop runs
    /// until then, and a closing connection ends (its
    /// [`ServerEvent::Close`]) once its last byte is taken.
    ///
    /// For a transport that can take bytes from a borrowed slice at once (a
    /// blocking socket's `write`, an in-memory pipe): the copy that
    /// `poll_transmit_for` makes reads the frame right after the engine
    /// wrote it, a byte at a time, and on x86-64 those wide loads wait for
    /// the narrow stores to reach the cache (a failed store-to-load
    /// forward: about 5 % of a round trip in `round_trip_profile`). An async
    /// transport that must keep the bytes across an `.await` copies them
    /// with `poll_transmit_for` instead.
    #[inline]
    pub fn transmit_with(
        &mut self,
        conn: ConnId,
        send: impl FnOnce(&[u8]) -> usize,
    ) -> Option<usize> {
        let s = self.sessions.get_mut(&conn)?;
        let n = if s.has_output() {
            s.take_output(send)
        } else {
            0
        };
        if s.closing && !s.has_output() {
            self.finish_close(conn);
        }
        (n > 0).then_some(n)
    }

    fn finish_close(&mut self, conn: ConnId) {
        self.events.push_back(ServerEvent::Close { conn });
        self.connection_closed(conn, Instant::ZERO);
    }

    // ---- timers ------------------------------------------------------------

    /// The next instant at which [`handle_timeout`](Self::handle_timeout) has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_timer().and_then(|(at, _, _)| at.as_deadline())
    }

    /// The earliest timer of the heap and of the FIFOs, and where it is (on
    /// a tie, the first of heap, overdue, handshake and push checks). Asked
    /// after every turn of a transport's loop: compared in place, without
    /// building a list of candidates.
    fn next_timer(&self) -> Option<(Instant, Timer, TimerSource)> {
        let mut best = self
            .timers
            .peek()
            .map(|Reverse((at, t))| (*at, *t, TimerSource::Heap));
        let mut consider = |at: Instant, timer: Timer, source: TimerSource| {
            if best.is_none_or(|(b, _, _)| at < b) {
                best = Some((at, timer, source));
            }
        };
        if let Some(&(at, d)) = self.overdue_checks.front() {
            consider(at, Timer::Overdue(d), TimerSource::Overdue);
        }
        if let Some(&(at, c)) = self.handshake_checks.front() {
            consider(at, Timer::Session(c), TimerSource::Handshake);
        }
        if let Some(&(at, d)) = self.push_checks.front() {
            consider(at, Timer::Push(d), TimerSource::Push);
        }
        best
    }

    /// Runs every timer due at `now`. Harmless early, late or twice.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), S> {
        self.timers_ran_to = self.timers_ran_to.max(now);
        while let Some((at, timer, source)) = self.next_timer() {
            if !at.is_due(now) {
                break;
            }
            match source {
                TimerSource::Heap => {
                    self.timers.pop();
                }
                TimerSource::Overdue => {
                    self.overdue_checks.pop_front();
                }
                TimerSource::Handshake => {
                    self.handshake_checks.pop_front();
                }
                TimerSource::Push => {
                    self.push_checks.pop_front();
                }
            }
            match timer {
                Timer::Session(conn) => self.session_timer(conn, now)?,
                Timer::Push(device) => self.push_timer(device, now)?,
                Timer::Expire(task) => self.expire_timer(task, now)?,
                Timer::Overdue(device) => self.overdue_timer(device, now),
            }
        }
        Ok(())
    }

    fn push_timer(&mut self, device: DeviceId, now: Instant) -> Result<(), S> {
        let min = self.cfg.push_min_interval;
        if !self.held_pushes.contains(&device) {
            return Ok(()); // nothing held: the device's state is not read
        }
        if self.next_push(device, now).is_some() {
            // The check of an older push, which fell due after a newer one
            // was sent: the newer one's check comes later.
            return Ok(());
        }
        // An open session got the work offered; one that is failing (its
        // error frame sent, the transport not yet closed) did not.
        if self.session_of(device).is_some() {
            self.release_held_push(device);
            return Ok(());
        }
        let sent = self.send_push(device, now).map(|_| ());
        if sent.is_err() && self.held_pushes.contains(&device) {
            // The store failed before the push went out: it stays held, and
            // is tried again an interval later (this check is spent).
            self.arm_timer(now + min, Timer::Push(device));
        }
        sent
    }

    /// A push held back for `device` is no longer wanted (sent, or the
    /// device connected).
    fn release_held_push(&mut self, device: DeviceId) {
        if !self.held_pushes.is_empty() {
            self.held_pushes.remove(&device);
        }
    }

    fn expire_timer(&mut self, task: TaskId, now: Instant) -> Result<(), S> {
        let Some(mut t) = self.store.task(task)? else {
            return Ok(());
        };
        if !t.state.is_final() && !t.state.maybe_on_device() {
            self.set_state(&mut t, TaskState::Expired, now)?;
        }
        Ok(())
    }

    fn overdue_timer(&mut self, device: DeviceId, now: Instant) {
        let online = self.online.contains_key(&device);
        let Some(p) = self.pushes.get_mut(&device) else {
            return;
        };
        // This check ran: none of the device's is queued now.
        p.flags.set(Flags::ARMED, false);
        if !p.flags.has(Flags::DUE) {
            if !p.flags.has(Flags::PUSHED) {
                // Nothing left that a missing state would not say as well
                // (a device retired while its check was queued).
                self.pushes.0.remove(device.0);
            }
            return;
        }
        if online && now >= p.due_at {
            // Connected at its deadline: that counts as a check-in. Else no
            // check would be left armed, and a device that went silent after
            // this session would never be reported overdue.
            p.due_at = now + self.cfg.periodic_interval + self.cfg.overdue_slack;
        }
        if now < p.due_at {
            p.flags.set(Flags::ARMED, true);
            let at = p.due_at;
            if !in_order(&mut self.overdue_checks, at, device) {
                self.arm_timer(at, Timer::Overdue(device));
            }
        } else if !p.flags.has(Flags::OVERDUE) && !online {
            p.flags.set(Flags::OVERDUE, true);
            self.events.push_back(ServerEvent::Overdue { device });
        }
    }

    /// The secret of `device` in enrollment `generation`, and whether it was
    /// kept: the one kept from its last authenticated handshake in that
    /// enrollment, else derived from the master key (one SHA-256
    /// compression, about 60 ns with SHA-NI: a third of the engine's
    /// hashing per sync).
    ///
    /// Kept or derived, the value is the same, so the answer to a proof
    /// does not change; its time would. A proof that fails after a kept
    /// secret was used pays the derivation anyway (`on_proof`), so every
    /// failed handshake costs one compression whatever id and generation
    /// its `Hello` names, and only a device that proves itself saves it: a
    /// peer timing failed handshakes cannot tell which ids have
    /// authenticated with this engine, nor their current generation. (The
    /// store's lookup of the id, a hit or a miss, still differs by a few
    /// nanoseconds, as before secrets were kept.) Keeping the secrets puts
    /// them in memory beside the master key they come from, which is there
    /// anyway.
    pub(crate) fn secret_of(&self, device: DeviceId, generation: u32) -> (Secret, bool) {
        match self.pushes.get(&device) {
            Some(p) if p.flags.has(Flags::SECRET) && p.secret_gen == generation => (p.secret, true),
            _ => (self.derive_secret(device, generation), false),
        }
    }

    /// Derives `device`'s secret in enrollment `generation` from the master
    /// key: the one place the engine does (counted in unit tests).
    pub(crate) fn derive_secret(&self, device: DeviceId, generation: u32) -> Secret {
        #[cfg(test)]
        self.derivations.set(self.derivations.get() + 1);
        auth::derive_secret_prepared(&self.master, device, generation)
    }

    /// Keeps `secret`, which has just authenticated `device` in enrollment
    /// `generation`, for its next handshake (see `secret_of`). Only after
    /// a proof passed: an unknown id never gets a state this way. A second
    /// lookup of the state `checked_in` has just found (its line is in
    /// cache): folded into `checked_in` as a parameter, the server's sync
    /// took about 100 instructions more (callgrind, 11,285 -> 11,401).
    pub(crate) fn keep_secret(&mut self, device: DeviceId, generation: u32, secret: &Secret) {
        if let Some(p) = self.pushes.get_mut(&device) {
            p.secret = *secret;
            p.secret_gen = generation;
            p.flags.set(Flags::SECRET, true);
        }
    }

    /// Records a check-in: the device promises the next one within its
    /// periodic interval plus slack.
    fn checked_in(&mut self, device: DeviceId, now: Instant) {
        let at = now + self.cfg.periodic_interval + self.cfg.overdue_slack;
        if self.expect_check_in(device, at) == Some(true) {
            self.events.push_back(ServerEvent::Back { device });
        }
    }

    /// Expects `device` to check in by `at`, and queues the check of that
    /// unless one is queued. Returns whether the device was overdue (it is
    /// no longer); `None` if its state could not be had.
    fn expect_check_in(&mut self, device: DeviceId, at: Instant) -> Option<bool> {
        let p = self.pushes.entry_or_default(device)?;
        // A queued check (`armed`) serves: it re-arms itself for the new
        // deadline; one more would make two. Not when the clock went back
        // and the queued one is for a later deadline than `at`: the report
        // then waits for it (known shortcoming, see `ServerEvent::Overdue`).
        p.flags.set(Flags::DUE, true);
        p.due_at = at;
        let was_overdue = p.flags.take(Flags::OVERDUE);
        if !p.flags.has(Flags::ARMED) {
            p.flags.set(Flags::ARMED, true);
            if !in_order(&mut self.overdue_checks, at, device) {
                self.arm_timer(at, Timer::Overdue(device));
            }
        }
        Some(was_overdue)
    }
}

/// Queues a check at the back of a time-ordered FIFO if that keeps it in
/// order; `false` when the clock went back since the last one was queued (the
/// caller then arms it in the heap, so that it is not held behind later ones).
fn in_order<T>(fifo: &mut VecDeque<(Instant, T)>, at: Instant, item: T) -> bool {
    if fifo.back().is_some_and(|&(last, _)| at < last) {
        return false;
    }
    fifo.push_back((at, item));
    true
}
