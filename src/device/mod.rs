//! The device side: a sans-IO engine that decides when to sync and runs the
//! session protocol.
//!
//! # Run loop
//!
//! 1. Create the engine with [`Device::new`] (first boot) or
//!    [`Device::restore`] (from the last persisted snapshot).
//! 2. Feed it what happens: [`push_received`](Device::push_received),
//!    [`manual_sync`](Device::manual_sync),
//!    [`raise_compliance`](Device::raise_compliance), transport
//!    [`connected`](Device::connected) / [`disconnected`](Device::disconnected),
//!    bytes with [`handle_bytes`](Device::handle_bytes), and
//!    [`handle_timeout`](Device::handle_timeout) when the deadline from
//!    [`poll_timeout`](Device::poll_timeout) has passed.
//! 3. Drain [`poll_event`](Device::poll_event) and act on each [`Event`]:
//!    persist a snapshot, open or close the transport, run a task, apply a policy.
//! 4. Drain [`poll_transmit`](Device::poll_transmit) into the transport.
//! 5. Sleep until the next deadline or input, then go to 2.
//!
//! # Guarantees and the application's part
//!
//! - A task is handed out (as [`Event::Execute`]) at most once, ever: the engine
//!   records it in its state and asks for a [`Event::Persist`] first. Persist
//!   the snapshot *before* polling the next event; the engine sends nothing
//!   while a persist is pending, so nothing leaves the device that a reboot
//!   could forget.
//! - Every final task status, compliance event and policy report goes into a
//!   bounded outbox and is resent until the server acknowledges it. A final
//!   status always fits: the outbox reserves one slot per running task.
//! - An accepted task gets a `Received` report, queued by the engine. When the
//!   application reports the final status before that `Received` was ever
//!   transmitted (the normal case for a quick task, reported while draining
//!   events, before [`poll_transmit`](Device::poll_transmit)), the final status
//!   takes its place and its sequence number: one report instead of two. A
//!   report that was transmitted, or restored from a snapshot, is never changed.
//! - An acknowledgement trims the outbox without asking for a
//!   [`Event::Persist`]: after a reboot the acknowledged reports come back
//!   from the older snapshot and are sent again; the server recognises their
//!   sequence numbers, acknowledges them again and records nothing twice.
//! - Progress is best effort: coalesced to the latest value per task and sent
//!   while connected.

mod config;
mod snapshot;

pub use config::{DeviceConfig, DeviceTimers};
#[cfg(feature = "embedded")]
pub(crate) use snapshot::counter_newer;
pub use snapshot::{pick_latest, snapshot_counter, SnapshotError};

use heapless::{Deque, Vec};

use crate::log::{debug, trace, warning};
use crate::time::{Duration, Instant};
use crate::wire::{
    self, frame, reason, ComplianceEvent, DecodeError, Down, EncodeError, ErrorCode, FrameDecoder,
    Hello, Policy, PolicyOutcome, PolicyReport, ReportBody, SessionDown, SyncTrigger, Task, TaskId,
    TaskStatus, Up, PROTOCOL_VERSION,
};

/// Default outbox length (reports waiting for the server's ack).
pub const DEFAULT_OUTBOX: usize = 16;
/// Default number of tasks that may run at once.
pub const DEFAULT_INFLIGHT: usize = 4;

/// What the application must do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Event {
    /// The persistent state changed: write [`Device::snapshot`] to storage now.
    /// Also the first event of every engine, new or restored: the boot
    /// snapshot, whose counter numbers this boot's connections
    /// (`Hello.attempt`); an application that does not store it lets an
    /// earlier boot's numbers, and its stale `Challenge`s, come back.
    Persist,
    /// Open a transport to the server, then call [`Device::connected`] or
    /// [`Device::connect_failed`].
    Connect,
    /// Close the transport; the session is over (the engine is already idle).
    Disconnect,
    /// Run this task once, then report with [`Device::task_status`].
    Execute(Task),
    /// The server asks to stop this task: report `Cancelled`, or the final
    /// status if it is already done.
    Cancel(TaskId),
    /// A newer policy arrived: read [`Device::pending_policy`], apply it, and
    /// answer with [`Device::policy_applied`].
    ApplyPolicy {
        /// Its version.
        version: u32,
    },
    /// A sync completed: everything was exchanged and acknowledged.
    SyncDone {
        /// Why it started.
        trigger: SyncTrigger,
    },
    /// A sync failed; the engine retries with backoff.
    SyncFailed {
        /// Why.
        error: SessionError,
    },
}

/// Why a session ended early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum SessionError {
    /// The transport could not be opened.
    ConnectFailed,
    /// The transport closed before the sync completed.
    Closed,
    /// The server did not answer in time.
    Timeout,
    /// The server ended the session with this error.
    Rejected(ErrorCode),
    /// The server broke the protocol.
    Protocol(ProtocolError),
}

impl core::fmt::Display for SessionError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SessionError::ConnectFailed => f.write_str("the transport could not be opened"),
            SessionError::Closed => f.write_str("the transport closed before the sync completed"),
            SessionError::Timeout => f.write_str("the server did not answer in time"),
            SessionError::Rejected(code) => write!(f, "the server ended the session: {code:?}"),
            SessionError::Protocol(e) => write!(f, "the server broke the protocol: {e}"),
        }
    }
}

impl core::error::Error for SessionError {}

/// A protocol violation by the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ProtocolError {
    /// A frame's payload is not a valid message.
    Decode(DecodeError),
    /// A valid message that does not fit the session's state (or an `Ack`
    /// of a report sequence never assigned, PROTOCOL.md 9.3).
    Unexpected,
    /// The server speaks another protocol version.
    VersionMismatch {
        /// The server's version.
        server: u16,
    },
    /// A task's delivery sequence skipped ahead (a frame was lost).
    SequenceGap,
}

impl core::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ProtocolError::Decode(e) => write!(f, "a frame's payload is not a valid message: {e}"),
            ProtocolError::Unexpected => {
                f.write_str("a message that does not fit the session's state")
            }
            ProtocolError::VersionMismatch { server } => {
                write!(f, "the server speaks protocol version {server}")
            }
            ProtocolError::SequenceGap => f.write_str("a task's delivery sequence skipped ahead"),
        }
    }
}

impl core::error::Error for ProtocolError {}

/// Errors of the calls the application makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum DeviceError {
    /// No running task has this id.
    UnknownTask,
    /// `Received` is the engine's own status; report a final one.
    InvalidStatus,
    /// The outbox is full of unacknowledged reports; try again after a sync.
    OutboxFull,
    /// No policy with this version waits to be applied.
    NoPendingPolicy,
    /// Bytes arrived while no session was open; they were dropped.
    NotConnected,
    /// The session failed on the peer's input; it has been closed.
    Session(SessionError),
    /// The output buffer is too small.
    Encode(EncodeError),
}

impl core::fmt::Display for DeviceError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DeviceError::UnknownTask => f.write_str("no running task has this id"),
            DeviceError::InvalidStatus => {
                f.write_str("`Received` is the engine's own status; report a final one")
            }
            DeviceError::OutboxFull => {
                f.write_str("the outbox is full of unacknowledged reports; try after a sync")
            }
            DeviceError::NoPendingPolicy => f.write_str("no policy with this version waits"),
            DeviceError::NotConnected => f.write_str("bytes arrived while no session was open"),
            DeviceError::Session(e) => write!(f, "the session failed: {e}"),
            DeviceError::Encode(e) => write!(f, "{e}"),
        }
    }
}

impl core::error::Error for DeviceError {}

/// Counters for dashboards and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DeviceStats {
    /// Completed syncs, indexed by [`SyncTrigger::index`].
    pub syncs: [u32; 6],
    /// Failed sync attempts.
    pub failures: u32,
    /// Frames or bytes the decoder dropped (corruption, garbage).
    pub frame_errors: u32,
    /// Tasks handed to the application.
    pub executed: u32,
    /// Task offers ignored because they were already accepted.
    pub duplicates: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
enum Link {
    Idle,
    Connecting,
    AwaitChallenge,
    AwaitWelcome,
    Syncing,
}

/// Wants that start a sync by themselves (reports in the outbox do too).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Wants(u8);

impl Wants {
    fn set(&mut self, t: SyncTrigger) {
        self.0 |= 1 << t.index();
    }
    fn has(self, t: SyncTrigger) -> bool {
        self.0 & (1 << t.index()) != 0
    }
}

/// A report in the outbox, kept as its encoded [`ReportBody`]: encoded once
/// when queued, then sent and persisted as these bytes, never decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    seq: u32,
    body: Body,
    wire: Wire,
}

/// An encoded report body, written in place: encoding into the outbox slot
/// itself spares a copy through the stack on the path of every task.
#[derive(Clone, Debug)]
struct Body {
    len: u8,
    bytes: [u8; wire::MAX_REPORT_BODY],
}

const _: () = assert!(wire::MAX_REPORT_BODY <= u8::MAX as usize);

impl Body {
    const EMPTY: Self = Self {
        len: 0,
        bytes: [0; wire::MAX_REPORT_BODY],
    };

    /// `bytes` as a body; `None` when longer than any report body.
    fn from_slice(bytes: &[u8]) -> Option<Self> {
        let mut b = Self::EMPTY;
        b.bytes.get_mut(..bytes.len())?.copy_from_slice(bytes);
        b.len = bytes.len() as u8;
        Some(b)
    }

    /// Replaces the body with `report` (a task's report written by hand with
    /// the `hand-encode` feature, see `wire::Encode`). Cannot fail in
    /// practice: every `ReportBody` fits (a wire test checks that the bound
    /// is tight); if it did, the bytes would be left half-written.
    fn put(&mut self, report: &ReportBody) -> Result<(), DeviceError> {
        let n = wire::encode_payload(report, &mut self.bytes).map_err(DeviceError::Encode)?;
        self.len = n as u8;
        Ok(())
    }

    /// Replaces the body with task `task`'s `Received` report, as one piece
    /// (no check per byte). Inline, as `put_status`.
    #[cfg(feature = "hand-encode")]
    #[inline]
    fn put_received(&mut self, task: TaskId) -> Result<(), DeviceError> {
        let mut w = wire::Writer::new(&mut self.bytes);
        w.piece::<RECEIVED_ROOM, _>(&Received(task));
        self.len = w.len() as u8;
        Ok(())
    }

    /// Replaces the status that ends this body, a task's `Received` (as
    /// `received_task` reads it), by `status`: the tag and the task id before
    /// it stay as they are, written once. Cannot fail in practice, as `put`.
    /// Inline: the engine's methods are generic, so they are compiled in the
    /// application's crate, and a call from there into this one saved four
    /// registers and returned its `Result` through memory around a dozen
    /// instructions of work (on the path of every task).
    #[cfg(feature = "hand-encode")]
    #[inline]
    fn put_status(&mut self, status: &TaskStatus) -> Result<(), DeviceError> {
        let at = usize::from(self.len).saturating_sub(1);
        let out = self.bytes.get_mut(at..).unwrap_or_default();
        let n = wire::encode_task_status(status, out);
        if n > out.len() {
            let needed = at.saturating_add(n);
            return Err(DeviceError::Encode(EncodeError::BufferTooSmall { needed }));
        }
        self.len = (at + n) as u8;
        Ok(())
    }
}

/// A task's `Received` report body: `ReportBody::Task` (tag 0), the task id
/// (a varint, room 10) and `TaskStatus::Received` (tag 0), as `received_task`
/// reads it.
#[cfg(feature = "hand-encode")]
struct Received(TaskId);

#[cfg(feature = "hand-encode")]
const RECEIVED_ROOM: usize = 12;

#[cfg(feature = "hand-encode")]
const _: () = assert!(RECEIVED_ROOM <= wire::MAX_REPORT_BODY);

#[cfg(feature = "hand-encode")]
impl wire::Piece for Received {
    #[inline(always)]
    fn write<O: wire::Out>(&self, w: &mut O) {
        w.push(wire::REPORT_TASK);
        w.varint(self.0 .0);
        w.push(0);
    }
}

impl core::ops::Deref for Body {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or_default()
    }
}

impl PartialEq for Body {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Body {}

impl Entry {
    /// The task of this report when it is a task's `Received` never put on
    /// the wire (so a final status may still take its place).
    fn unsent_received(&self) -> Option<TaskId> {
        received_task(&self.body).filter(|_| self.wire == Wire::New)
    }

    fn is_compliance(&self) -> bool {
        self.body.first() == Some(&wire::REPORT_COMPLIANCE)
    }

    fn sent(&self) -> bool {
        self.wire == Wire::Sent
    }
}

/// Where an outbox report stands with the server.
///
/// The `Sent` reports are always the front of the outbox, with none after
/// the first that is not: reports go out front to back, acks take them from
/// the front, new ones join at the back, and a `Welcome` turns every `Sent`
/// into `Again` before anything goes out in the new session. So the front
/// says whether any report waits for its ack, and the back whether any is
/// left to send (`sent_prefix` checks it in debug builds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wire {
    /// Never put on the wire, by this engine or any before it: no server has
    /// seen its sequence number, so its body may still be replaced (a task's
    /// `Received` by the task's final status).
    New,
    /// Sent in this session; waits for its ack.
    Sent,
    /// Perhaps seen by the server (sent in an earlier session, or restored
    /// from a snapshot): sent again as it is, never changed, since the server
    /// takes a known sequence number for a resend and drops its body.
    Again,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Inflight {
    task: Task,
    announced: bool,
    cancel: Flag,
    progress: Option<Option<u8>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flag {
    No,
    Pending,
    Announced,
}

/// The device-side engine. `OUTBOX` bounds unacknowledged reports (default
/// [`DEFAULT_OUTBOX`] = 16), `INFLIGHT` the tasks running at once (default
/// [`DEFAULT_INFLIGHT`] = 4); the other bounds are protocol constants in
/// [`wire`]: policy size [`MAX_SETTINGS`](wire::MAX_SETTINGS),
/// receive buffer [`MAX_DOWN_FRAME`](wire::MAX_DOWN_FRAME), push token
/// [`PUSH_TOKEN_MAX`](wire::PUSH_TOKEN_MAX). It allocates nothing; its size is
/// fixed by the two parameters, about 1.8 KiB at the defaults on a 32-bit MCU
/// (see the footprint table in the README).
#[derive(Clone, Debug)]
pub struct Device<const OUTBOX: usize = DEFAULT_OUTBOX, const INFLIGHT: usize = DEFAULT_INFLIGHT> {
    cfg: DeviceConfig,
    // Persisted state.
    counter: u64,
    // `Hello.attempt` of the current (or last) connection. Each boot counts
    // up from its boot snapshot's counter times 2^32, so no value repeats
    // across reboots (the boot snapshot is taken before anything is sent).
    attempt: u64,
    last_task_seq: u32,
    next_report_seq: u32,
    policy_version: u32,
    periodic: Duration,
    inflight: Vec<Inflight, INFLIGHT>,
    outbox: Deque<Entry, OUTBOX>,
    // Session and timers.
    link: Link,
    wants: Wants,
    session_wants: Wants,
    trigger: SyncTrigger,
    got_end: bool,
    send_hello: bool,
    // What the proof covers of the Hello payload sent in this session.
    hello_binding: crate::auth::HelloBinding,
    proof: Option<[u8; 32]>,
    // The session's frame key (0 until the Challenge).
    key: u32,
    last_rx: Instant,
    session_start: Instant,
    periodic_at: Instant,
    attempt_at: Instant,
    hint_at: Option<Instant>,
    failures: u32,
    rng: u64,
    // Sized for the largest `Down` message (223 bytes), not `MAX_FRAME` (520):
    // a device never receives anything larger.
    decoder: FrameDecoder<{ wire::MAX_DOWN_FRAME }>,
    // Events waiting to be polled.
    persist: bool,
    // A task was accepted after the last `Persist` was polled: it is in no
    // snapshot yet, so nothing about it may be handed out before the next.
    fresh_task: bool,
    // A running task may wait to be handed out or to have its cancel request
    // announced: set wherever one comes, cleared by a `poll_event` pass over
    // the running tasks that found neither, or (servers and phones) that
    // handed out the last task with no cancel waiting (most polls then skip
    // the pass). Never clear while a task waits to be handed out.
    inflight_news: bool,
    // A running task may have progress to send: set wherever some comes,
    // cleared by a `poll_transmit` pass that found none.
    progress_news: bool,
    connect: bool,
    disconnect: bool,
    outcome: Option<Event>,
    policy: Option<Policy>,
    policy_announced: bool,
    // A task was answered "not now" for lack of room: sync again once a
    // running task finishes (event-driven, so a long task cannot cause a loop).
    busy_deferred: bool,
    // The report number of the last such "not now" while unacknowledged, and
    // whether a task finished (room came) before it was. The server does not
    // offer a task again in the session that brought its "not now": when
    // that session is the one the freed room started (the "not now" was
    // cut off with an earlier connection), another sync must follow it, or
    // the task waits for the periodic one (found by breaker19). A `Welcome`
    // that acknowledges it says the server heard it in an earlier session,
    // and offers the task again in this one: no sync follows then. The
    // snapshot says whether one is unacknowledged (PROTOCOL.md 14); a
    // restore, which has room (it ends every running task), takes the last
    // report restored for it (the same one or later: at most one sync more).
    busy_seq: Option<u32>,
    busy_room_freed: bool,
    // The answer to the pending policy found the outbox full; ask again
    // after the next ack.
    policy_refused: bool,
    // An offer of this session was left unaccepted for lack of room: later
    // offers of the session are left too (not a gap), and a new sync follows
    // if the engine could take a task once its outbox is acknowledged (not
    // with its task slots all running: see `on_task`).
    refused: bool,
    // That new sync starts when the session ends, unless the application said
    // "not now" in the session (`app_deferred`): the same offers would come
    // first again and fill the room again, a sync storm with no time passing.
    // Its hint, or a task that runs, decides then.
    refused_resync: bool,
    app_deferred: bool,
    // The server holds `cfg.push_token`: a `Welcome` that did not ask for
    // the token answered a `Hello` that carried it. Hellos then carry none
    // but once per periodic interval (see `hello_carries_token`).
    // RAM only, not in the snapshot: the first session of each boot sends
    // the token again, one resend per boot (PROTOCOL.md 7.2).
    token_confirmed: bool,
    // A `Welcome` came since this engine's state began (`new`; kept across
    // restores). Until one has, none of its reports has been put on the
    // wire: reports are sent only after a `Welcome`.
    welcomed: bool,
    // This session's `Hello` carried the current push token (cleared when the
    // token changes during the session): its `Welcome` may confirm it.
    hello_token: bool,
    // Start of the last session whose `Welcome` confirmed the token.
    token_confirmed_at: Instant,
    // The server answered a report with `SequenceGap` in the last session:
    // it holds fewer reports than it once acknowledged, and the next
    // `Welcome`'s lower ack is believed (see `adopt_server_numbering`).
    server_behind: bool,
    stats: DeviceStats,
}

/// Why a frame that passed its CRC did not decode: a `Challenge` of another
/// version need not decode as ours, but says which version it is.
fn undecodable(link: Link, payload: &[u8], e: wire::DecodeError) -> SessionError {
    match wire::peek_version(payload) {
        Some(server) if link == Link::AwaitChallenge && server != PROTOCOL_VERSION => {
            SessionError::Protocol(ProtocolError::VersionMismatch { server })
        }
        _ => SessionError::Protocol(ProtocolError::Decode(e)),
    }
}

/// The periodic interval `ms` clamped to `1 min ..= 7 days`, wherever it
/// comes from (the configuration, a `Welcome`, a snapshot), so that a reboot
/// never changes it. The server clamps its own the same way, so that it
/// expects devices at the interval they keep.
pub(crate) fn periodic_within_bounds(ms: u64) -> Duration {
    Duration::from_millis(ms.clamp(60_000, PERIODIC_MAX_MS))
}

/// The longest periodic interval, 7 days, in milliseconds.
const PERIODIC_MAX_MS: u64 = 7 * 24 * 3_600_000;

impl<const OUTBOX: usize, const INFLIGHT: usize> Device<OUTBOX, INFLIGHT> {
    /// Capacities with which the engine can do its work, checked when the
    /// program is compiled: an outbox of at least 3 (a running task's two
    /// reports and one more, for a compliance event or a policy report) and
    /// room for one running task. Smaller ones would make an engine that
    /// defers every task for good, or can never raise a compliance event.
    const USABLE: () = assert!(
        OUTBOX >= 3 && INFLIGHT >= 1,
        "Device needs OUTBOX >= 3 and INFLIGHT >= 1"
    );

    /// A device on its first boot: no history, a boot sync wanted at once.
    /// Its first event is a [`Event::Persist`], as after
    /// [`restore`](Self::restore): the boot snapshot's counter numbers this
    /// boot's connections, so it must be stored before anything is sent.
    /// Capacities below `OUTBOX` = 3 or `INFLIGHT` = 1 do not compile:
    ///
    /// ```
    /// # use mdm_sync::{device::{Device, DeviceConfig}, time::Instant, wire::{DeviceId, Platform}};
    /// let cfg = DeviceConfig::new(DeviceId(1), 0, [7; 32], Platform::Android);
    /// let smallest = Device::<3, 1>::new(cfg, Instant::ZERO);
    /// ```
    ///
    /// ```compile_fail
    /// # use mdm_sync::{device::{Device, DeviceConfig}, time::Instant, wire::{DeviceId, Platform}};
    /// let cfg = DeviceConfig::new(DeviceId(1), 0, [7; 32], Platform::Android);
    /// let too_small = Device::<2, 1>::new(cfg, Instant::ZERO);
    /// ```
    pub fn new(cfg: DeviceConfig, now: Instant) -> Self {
        let () = Self::USABLE;
        let periodic = periodic_within_bounds(cfg.timers.periodic.as_millis());
        let rng = cfg.jitter_seed | 1;
        let mut d = Self {
            cfg,
            counter: 0,
            attempt: 1 << 32,
            last_task_seq: 0,
            next_report_seq: 1,
            policy_version: 0,
            periodic,
            inflight: Vec::new(),
            outbox: Deque::new(),
            link: Link::Idle,
            wants: Wants::default(),
            session_wants: Wants::default(),
            trigger: SyncTrigger::Boot,
            got_end: false,
            send_hello: false,
            hello_binding: crate::auth::HelloBinding::default(),
            proof: None,
            key: 0,
            last_rx: now,
            session_start: now,
            periodic_at: now + periodic,
            attempt_at: now,
            hint_at: None,
            failures: 0,
            rng,
            decoder: FrameDecoder::new(),
            // The boot snapshot: its counter numbers this boot's connections.
            persist: true,
            fresh_task: false,
            inflight_news: false,
            progress_news: false,
            connect: false,
            disconnect: false,
            outcome: None,
            policy: None,
            policy_announced: false,
            busy_deferred: false,
            busy_seq: None,
            busy_room_freed: false,
            policy_refused: false,
            refused: false,
            refused_resync: false,
            server_behind: false,
            app_deferred: false,
            token_confirmed: false,
            welcomed: false,
            hello_token: false,
            token_confirmed_at: now,
            stats: DeviceStats::default(),
        };
        d.wants.set(SyncTrigger::Boot);
        d
    }

    /// This device's id.
    pub fn id(&self) -> wire::DeviceId {
        self.cfg.id
    }

    /// Counters since this engine was created.
    pub fn stats(&self) -> DeviceStats {
        self.stats
    }

    /// Highest policy version applied or rejected.
    pub fn policy_version(&self) -> u32 {
        self.policy_version
    }

    /// Highest task delivery sequence accepted.
    pub fn last_task_seq(&self) -> u32 {
        self.last_task_seq
    }

    /// Reports waiting for the server's acknowledgement.
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// Tasks handed out and not yet finished.
    pub fn running_tasks(&self) -> impl Iterator<Item = Task> + '_ {
        self.inflight.iter().map(|i| i.task)
    }

    /// Whether a session is open or being opened.
    pub fn is_connected(&self) -> bool {
        self.link != Link::Idle
    }

    /// The periodic interval in force (configured or suggested by the server).
    pub fn periodic_interval(&self) -> Duration {
        self.periodic
    }

    /// Replaces the push token; it goes to the server in a sync this call
    /// asks for at once (and in every later one until a `Welcome` confirms
    /// it), even when the token is the same as before. Known
    /// limit: an empty token does not withdraw the old one, which the server
    /// keeps (an empty `Hello.push_token` means "unchanged", PROTOCOL.md 16).
    pub fn set_push_token(
        &mut self,
        token: heapless::String<{ wire::PUSH_TOKEN_MAX }>,
        now: Instant,
    ) {
        self.cfg.push_token = token;
        // A Hello under way carried the old token, if any: its Welcome
        // confirms nothing.
        self.token_confirmed = false;
        self.hello_token = false;
        // A session under way may have sent its Hello with the old token:
        // this want outlives it (its Welcome clears only what it served).
        self.session_wants.0 &= !(1 << SyncTrigger::Report.index());
        self.want(SyncTrigger::Report, now);
    }

    // ---- triggers -------------------------------------------------------

    /// A "sync now" push arrived.
    pub fn push_received(&mut self, now: Instant) {
        debug!("push received");
        self.want(SyncTrigger::Push, now);
    }

    /// The user asked to synchronize.
    pub fn manual_sync(&mut self, now: Instant) {
        debug!("manual sync requested");
        self.want(SyncTrigger::Manual, now);
    }

    /// A compliance event happened: it is queued, and a sync starts at once
    /// and is retried (backoff capped at [`DeviceTimers::compliance_retry`],
    /// one minute by default, unless the server refused the device itself:
    /// PROTOCOL.md 11.1) until the server acknowledges it. The event
    /// survives a reboot once the [`Event::Persist`] this call raises has been
    /// written; it is sent only after that.
    pub fn raise_compliance(
        &mut self,
        event: ComplianceEvent,
        now: Instant,
    ) -> Result<(), DeviceError> {
        // One slot beyond the running tasks' stays free for a policy report,
        // so compliance events piling up offline cannot block a policy.
        let spare = self.inflight.len() + 1;
        self.enqueue(ReportBody::Compliance(event), spare)?;
        let seq = self.next_report_seq.wrapping_sub(1);
        debug!("compliance event {:?} queued as report {}", event, seq);
        self.kick(now);
        Ok(())
    }

    fn want(&mut self, t: SyncTrigger, now: Instant) {
        self.wants.set(t);
        self.kick(now);
    }

    /// Something waits to be sent: sync at once, even during a backoff. (A
    /// non-empty outbox is itself a reason to sync; see `wants_sync`.)
    // Out of line in firmware: inlined at each of its callers, it cost
    // 140 B of flash at opt-level z (244 B at s).
    #[cfg_attr(not(feature = "std"), inline(never))]
    fn kick(&mut self, now: Instant) {
        if self.link == Link::Idle {
            self.attempt_at = self.attempt_at.min(now);
        }
    }

    // ---- the application's answers ---------------------------------------

    /// Best-effort progress of a running task (coalesced to the latest).
    pub fn task_progress(&mut self, task: TaskId, percent: Option<u8>) -> Result<(), DeviceError> {
        let slot = self.inflight.iter_mut().find(|i| i.task.id == task);
        let slot = slot.ok_or(DeviceError::UnknownTask)?;
        slot.progress = Some(percent.map(|p| p.min(100)));
        self.progress_news = true;
        Ok(())
    }

    /// The final status of a task handed out by [`Event::Execute`].
    pub fn task_status(
        &mut self,
        task: TaskId,
        status: TaskStatus,
        now: Instant,
    ) -> Result<(), DeviceError> {
        if !status.is_final() {
            return Err(DeviceError::InvalidStatus);
        }
        let pos = self.inflight.iter().position(|i| i.task.id == task);
        let pos = pos.ok_or(DeviceError::UnknownTask)?;
        // `swap_remove` by hand: heapless's moves the last entry with
        // `ptr::copy`, which links `memmove` (1.5 KB of Cortex-M flash).
        let (head, tail) = self.inflight.split_at_mut(pos + 1);
        if let (Some(slot), Some(last)) = (head.last_mut(), tail.last_mut()) {
            core::mem::swap(slot, last);
        }
        self.inflight.pop();
        self.queue_final(task, status)?;
        if let TaskStatus::Deferred {
            retry_after_s: Some(s),
        } = status
        {
            // A hint of 0 would have the device sync again at once, over and
            // over; no hint is shorter than the first retry delay.
            let after = Duration::from_secs(u64::from(s)).max(self.cfg.timers.backoff_min);
            let at = now + after;
            self.hint_at = Some(self.hint_at.map_or(at, |h| h.min(at)));
        }
        debug!("task {} final status {:?}", task.0, status);
        // Only a task that ran makes room worth a sync at once: after a "not
        // now" the same tasks would come back and be turned away again, a sync
        // storm with no time passing. Its retry hint (or the periodic timer) decides.
        let ran = !matches!(status, TaskStatus::Deferred { .. });
        self.app_deferred |= !ran;
        if ran && core::mem::take(&mut self.busy_deferred) {
            self.wants.set(SyncTrigger::Report);
            self.busy_room_freed |= self.busy_seq.is_some();
        }
        self.kick(now);
        Ok(())
    }

    /// Queues a task's final status. When the task's `Received` was never put
    /// on the wire and only other tasks' unsent `Received`s follow it, the
    /// final status takes its place (its sequence number, so no gap): one
    /// report instead of two, the normal case for a task that finishes before
    /// the next transmit. It then passes no report the application raised, so
    /// those still reach the server in the order they were raised. Otherwise
    /// it goes into the slot reserved for it when the task was accepted.
    fn queue_final(&mut self, task: TaskId, status: TaskStatus) -> Result<(), DeviceError> {
        let body = ReportBody::Task { task, status };
        // Usually the back one, the last queued: servers and phones look
        // there first, without setting up a walk through the ring (firmware
        // walks from it: 0.1 KB less flash).
        #[cfg(feature = "hand-encode")]
        let slot = {
            let back = self.outbox.back().and_then(Entry::unsent_received);
            if back == Some(task) {
                self.outbox.back_mut()
            } else if back.is_some() {
                unsent_received_of(self.outbox.iter_mut().rev().skip(1), task)
            } else {
                None
            }
        };
        #[cfg(not(feature = "hand-encode"))]
        let slot = unsent_received_of(self.outbox.iter_mut().rev(), task);
        if let Some(e) = slot {
            // Firmware writes the whole body again: `put_status` would
            // cost flash there (a serde path for a bare status).
            #[cfg(feature = "hand-encode")]
            e.body.put_status(&status)?;
            #[cfg(not(feature = "hand-encode"))]
            e.body.put(&body)?;
            self.persist = true;
            return Ok(());
        }
        self.enqueue(body, 0)
    }

    /// The policy waiting to be applied, if any.
    pub fn pending_policy(&self) -> Option<&Policy> {
        self.policy.as_ref()
    }

    /// How the pending policy `version` went; queues the report for the server.
    pub fn policy_applied(
        &mut self,
        version: u32,
        outcome: PolicyOutcome,
        now: Instant,
    ) -> Result<(), DeviceError> {
        if self.policy.as_ref().map(|p| p.version) != Some(version) {
            return Err(DeviceError::NoPendingPolicy);
        }
        let spare = self.inflight.len();
        let report = ReportBody::Policy(PolicyReport { version, outcome });
        if let Err(e) = self.enqueue(report, spare) {
            // No room now: the policy stays pending and is announced again
            // once an ack frees the outbox (not at once: that would spin).
            self.policy_refused = true;
            return Err(e);
        }
        debug!("policy {} applied, report queued", version);
        self.policy = None;
        self.policy_version = version;
        self.kick(now);
        Ok(())
    }

    /// Adds a report to the outbox. Non-final reports leave one slot free per
    /// running task so that every final status always fits.
    fn enqueue(&mut self, body: ReportBody, spare: usize) -> Result<(), DeviceError> {
        // `spare` slots must stay free: one per running task for its final
        // status (which itself passes 0), plus one for a policy report.
        if self.outbox.len() + spare >= OUTBOX {
            return Err(DeviceError::OutboxFull);
        }
        self.push_report(|b| b.put(&body))
    }

    /// Adds a report to the outbox, whose room the caller has checked;
    /// `write` writes its body in place.
    fn push_report(
        &mut self,
        write: impl FnOnce(&mut Body) -> Result<(), DeviceError>,
    ) -> Result<(), DeviceError> {
        let seq = self.next_report_seq;
        let entry = Entry {
            seq,
            body: Body::EMPTY,
            wire: Wire::New,
        };
        self.outbox
            .push_back(entry)
            .map_err(|_| DeviceError::OutboxFull)?;
        let written = match self.outbox.back_mut() {
            Some(e) => write(&mut e.body),
            None => Err(DeviceError::OutboxFull),
        };
        if let Err(e) = written {
            self.outbox.pop_back();
            return Err(e);
        }
        self.next_report_seq = seq.wrapping_add(1);
        self.persist = true;
        Ok(())
    }

    // ---- transport ---------------------------------------------------------

    /// The transport asked for by [`Event::Connect`] is open.
    pub fn connected(&mut self, now: Instant) {
        if self.link != Link::Connecting {
            return;
        }
        self.link = Link::AwaitChallenge;
        self.attempt = self.attempt.wrapping_add(1);
        self.decoder.reset();
        self.key = 0;
        self.session_wants = self.wants;
        self.trigger = self.pick_trigger();
        self.send_hello = true;
        self.got_end = false;
        self.refused = false;
        self.app_deferred = false;
        self.last_rx = now;
        self.session_start = now;
        debug!("connected, sync trigger {:?}", self.trigger);
    }

    /// The transport could not be opened.
    pub fn connect_failed(&mut self, now: Instant) {
        if self.link == Link::Connecting {
            self.fail(SessionError::ConnectFailed, now);
        }
    }

    /// The transport closed (by the peer or locally). Harmless when idle.
    pub fn disconnected(&mut self, now: Instant) {
        if self.link != Link::Idle {
            self.fail(SessionError::Closed, now);
        }
    }

    fn pick_trigger(&self) -> SyncTrigger {
        use SyncTrigger::*;
        let w = self.wants;
        if self.outbox.iter().any(Entry::is_compliance) {
            return Compliance;
        }
        [Push, Manual, Boot, Periodic]
            .into_iter()
            .find(|t| w.has(*t))
            .unwrap_or(Report)
    }

    // ---- input -------------------------------------------------------------

    /// Bytes from the transport, in any chunking.
    pub fn handle_bytes(&mut self, mut bytes: &[u8], now: Instant) -> Result<(), DeviceError> {
        if self.link == Link::Idle || self.link == Link::Connecting {
            return Err(DeviceError::NotConnected);
        }
        loop {
            // Whole frames are read from `bytes` where they are while nothing
            // is buffered (the usual case: one or more whole frames per read);
            // the rest goes through the decoder's buffer.
            // In firmware (no `hand-decode`) every frame goes through the
            // buffer: the in-place path costs about 0.5 KB of flash.
            #[cfg(feature = "hand-decode")]
            let in_place = self.decoder.decode_in_place(&mut bytes);
            #[cfg(not(feature = "hand-decode"))]
            let in_place = None;
            let read_in_place = in_place.is_some();
            let r = if let Some(payload) = in_place {
                Ok(payload)
            } else if bytes.is_empty() && self.decoder.buffered() == 0 {
                break; // all read in place: no call to find nothing
            } else if let Some(r) = self.decoder.decode() {
                r
            } else if bytes.is_empty() {
                break;
            } else {
                let n = self.decoder.push(bytes);
                bytes = &bytes[n..];
                continue;
            };
            let syncing = self.link == Link::Syncing;
            if r.is_ok() {
                // Only a whole frame counts as the server's answer: bytes
                // trickled in one at a time must not hold the session open.
                self.last_rx = now;
            }
            let result = match r {
                // Acks and tasks without building a whole `Down`.
                Ok(payload) => match syncing.then(|| wire::session_down(payload)).flatten() {
                    Some(m) => self.on_session_message(m, now),
                    None => match wire::decode::<Down>(payload) {
                        Ok(msg) => self.on_message(msg, now),
                        Err(e) => Err(undecodable(self.link, payload, e)),
                    },
                },
                Err(_) => {
                    self.stats.frame_errors = self.stats.frame_errors.wrapping_add(1);
                    continue;
                }
            };
            if let Err(e) = result {
                self.fail(e, now);
                return Err(DeviceError::Session(e));
            }
            // The usual read, one whole frame, is over: nothing is left
            // (nothing was buffered, or it would not have been read in
            // place, and no message puts bytes into the decoder), so no
            // second look at the decoder and the input.
            if read_in_place && bytes.is_empty() {
                debug_assert_eq!(self.decoder.buffered(), 0);
                break;
            }
        }
        self.check_done(now);
        Ok(())
    }

    fn on_message(&mut self, msg: Down, now: Instant) -> Result<(), SessionError> {
        trace!("received {:?} in {:?}", msg, self.link);
        match (self.link, msg) {
            (link, Down::Error(code)) => {
                if link == Link::Syncing && code == ErrorCode::SequenceGap {
                    self.server_behind = true;
                }
                Err(SessionError::Rejected(code))
            }
            (
                Link::AwaitChallenge,
                Down::Challenge {
                    version,
                    attempt,
                    nonce,
                },
            ) => {
                if version != PROTOCOL_VERSION {
                    let server = version;
                    return Err(SessionError::Protocol(ProtocolError::VersionMismatch {
                        server,
                    }));
                }
                if self.send_hello || attempt != self.attempt {
                    // It answers an earlier connection's Hello (bytes a
                    // serial link kept): dropped like a frame of another
                    // session, the real one may still come. Nor is it an
                    // answer: awaiting its challenge, the device has taken
                    // no frame since the transport opened.
                    self.stats.frame_errors = self.stats.frame_errors.wrapping_add(1);
                    self.last_rx = self.session_start;
                    return Ok(());
                }
                let secret = &self.cfg.secret;
                self.proof = Some(crate::auth::proof(secret, &nonce, &self.hello_binding));
                self.key = frame::session_key(&nonce);
                self.decoder.set_key(self.key);
                self.link = Link::AwaitWelcome;
                trace!("challenge answered, awaiting welcome");
                Ok(())
            }
            (
                Link::AwaitWelcome,
                Down::Welcome {
                    ack,
                    periodic_s,
                    want_token,
                },
            ) => {
                self.on_welcome(ack, periodic_s, now);
                self.on_token_answer(want_token);
                Ok(())
            }
            (Link::Syncing, Down::Ack { seq }) => self.on_session_ack(seq),
            (Link::Syncing, Down::Task(t)) => self.on_task(t.seq, t.id, t.kind),
            (Link::Syncing, Down::Cancel { task }) => {
                if let Some(i) = self.inflight.iter_mut().find(|i| i.task.id == task) {
                    if i.cancel == Flag::No {
                        debug!("task {} cancel requested by server", task.0);
                        i.cancel = Flag::Pending;
                        self.inflight_news = true;
                    }
                }
                Ok(())
            }
            (Link::Syncing, Down::Policy(p)) => {
                let newer = wire::seq_newer(p.version, self.policy_version);
                if newer
                    && self
                        .policy
                        .as_ref()
                        .is_none_or(|q| wire::seq_newer(p.version, q.version))
                {
                    debug!("policy version {} arrived", p.version);
                    self.policy = Some(p);
                    self.policy_announced = false;
                }
                Ok(())
            }
            (Link::Syncing, Down::SyncEnd) => {
                self.got_end = true;
                Ok(())
            }
            _ => Err(SessionError::Protocol(ProtocolError::Unexpected)),
        }
    }

    /// A message in `Syncing`, read by hand: what `on_message` does with it.
    fn on_session_message(&mut self, msg: SessionDown, now: Instant) -> Result<(), SessionError> {
        match msg {
            SessionDown::Ack { seq } => {
                trace!("received ack {}", seq);
                self.on_session_ack(seq as u32)
            }
            SessionDown::Task(task) => {
                trace!("received task seq {}", task.seq);
                self.on_task(task.seq, task.id, task.kind)
            }
            SessionDown::SyncEnd => {
                trace!("received sync end");
                self.got_end = true;
                Ok(())
            }
            // Rare: as any other message.
            other => self.on_message(other.into(), now),
        }
    }

    fn on_welcome(&mut self, ack: u32, periodic_s: u32, now: Instant) {
        debug!("authenticated, syncing; server holds reports up to {}", ack);
        self.link = Link::Syncing;
        let first = !core::mem::replace(&mut self.welcomed, true);
        self.adopt_server_numbering(ack);
        // A busy "not now" the server held before this session: it offers
        // that task again in this one, so no sync need follow.
        if self.busy_acked(ack) {
            self.busy_room_freed = false;
        }
        self.on_ack(ack);
        if first && !self.outbox.is_empty() {
            // The first `Welcome` of this engine state, and reports are
            // about to leave: a snapshot that says so comes first, so that
            // a restore tells reports that may have left from reports that
            // cannot have (PROTOCOL.md 9.4, 14). Reports queued later are
            // snapshotted as they are queued.
            self.persist = true;
        }
        for e in self.outbox.iter_mut().filter(|e| e.sent()) {
            e.wire = Wire::Again;
        }
        if periodic_s != 0 {
            self.periodic = periodic_within_bounds(u64::from(periodic_s).saturating_mul(1000));
        }
        // The session serves every trigger that was pending when it opened.
        self.wants.0 &= !self.session_wants.0;
        self.periodic_at = now + self.periodic;
        for i in self.inflight.iter_mut() {
            i.progress = i.progress.or(Some(None));
        }
        self.progress_news |= !self.inflight.is_empty();
    }

    /// What the `Welcome` says of the push token. Unasked, it confirms the
    /// token this session's `Hello` carried: later Hellos carry none. Asked
    /// for it, the device sends it in its next `Hello`; when this session's
    /// carried none, that next session follows at once (one more sync per
    /// request, and only when the server lost a token it once confirmed: a
    /// request answering a `Hello` with the token, or a device without one,
    /// waits for the next sync, so a server that cannot store the token
    /// causes no loop).
    fn on_token_answer(&mut self, want_token: bool) {
        if !want_token {
            if self.hello_token {
                self.token_confirmed = true;
                self.token_confirmed_at = self.session_start;
            }
            return;
        }
        debug!("the server asks for the push token");
        self.token_confirmed = false;
        if !self.hello_token && !self.cfg.push_token.is_empty() {
            self.wants.set(SyncTrigger::Report);
        }
    }

    /// The server's report numbering wins when it holds reports numbered
    /// beyond any this device assigned: the device lost its state (both
    /// snapshot slots) but kept its identity, and its reports must not be
    /// taken for resends and dropped.
    ///
    /// A lower ack than the device once had acknowledged wins only after the
    /// server answered `SequenceGap` in the last session: then its store went
    /// back (a restored backup), and reports numbered after what it acked
    /// would end every session in that error. Without that evidence a lower
    /// ack is ignored: it can come from a stale `Welcome` of an earlier
    /// session, accepted after a stale `Challenge` gave its key, and
    /// renumbering down would make the server take new reports for resends.
    ///
    /// Either way the outbox is renumbered from `ack + 1`.
    fn adopt_server_numbering(&mut self, ack: u32) {
        let server_behind = core::mem::take(&mut self.server_behind);
        let last_assigned = self.next_report_seq.wrapping_sub(1);
        // Everything before the oldest report still held was acknowledged.
        let acked = self
            .outbox
            .front()
            .map_or(last_assigned, |e| e.seq.wrapping_sub(1));
        // An ack exactly 2^31 away, which the window orders neither way,
        // counts as ahead: the one reading that loses no report.
        let ahead = ack != last_assigned && !wire::seq_newer(last_assigned, ack);
        // An ack that covers a report no server has seen (never put on the
        // wire) speaks of other reports: the device lost its state and queued
        // these before this Welcome. Taken for acknowledged, they would be lost.
        let unseen = self.outbox.iter().find(|e| e.wire == Wire::New);
        let ahead = ahead || unseen.is_some_and(|e| !wire::seq_newer(e.seq, ack));
        let behind = server_behind && wire::seq_newer(acked, ack);
        if !ahead && !behind {
            return;
        }
        if ahead {
            // Reports that were on the wire (sent by this engine, or restored
            // from a snapshot taken after a `Welcome`) carry the server's
            // numbering, so those the ack covers are held by the server. They
            // come back only when the boot restored a snapshot older than the
            // newest one written (a lost or corrupted newest slot); renumbered,
            // the server would store them twice. An ack exactly 2^31 away
            // covers none of them (9.1 orders neither way).
            while let Some(front) = self.outbox.front() {
                let covered = front.seq == ack || wire::seq_newer(ack, front.seq);
                if front.wire == Wire::New || !covered {
                    break;
                }
                self.outbox.pop_front();
            }
        }
        warning!(
            "server holds reports up to {}, device assigned up to {}: renumbering",
            ack,
            last_assigned
        );
        // A busy "not now" waiting for its ack is renumbered with its
        // report: under its old number, acks of the new numbering would not
        // reach it when the numbering went down (the server went back), and
        // the sync its room asks for would not come (found by breaker21).
        let mut seq = ack;
        for e in self.outbox.iter_mut() {
            seq = seq.wrapping_add(1);
            if self.busy_seq == Some(e.seq) {
                self.busy_seq = Some(seq);
            }
            e.seq = seq;
        }
        self.next_report_seq = seq.wrapping_add(1);
        self.persist = true;
    }

    /// An `Ack` in an open session. After the `Welcome` the server stores
    /// only the report it expects next, one of this device's, so an ack
    /// names a number this device assigned or one before them. One newer
    /// than the last number assigned means the two numberings are about
    /// 2^31 apart: at the `Welcome` the server's looked older (no renumbering,
    /// `adopt_server_numbering`), and as the device numbered on it came out
    /// ahead, so the server took a report for a resend and stored nothing.
    /// That happens when the first report of the session was lost and a
    /// later one arrived first (PROTOCOL.md 9.3). Taken as an ack, it would
    /// drop reports the server never stored; the session ends instead, and
    /// the next `Welcome`, whose ack is then ahead, renumbers (9.4).
    fn on_session_ack(&mut self, seq: u32) -> Result<(), SessionError> {
        if wire::seq_newer(seq, self.next_report_seq.wrapping_sub(1)) {
            return Err(ack_never_numbered(seq));
        }
        self.on_ack(seq);
        Ok(())
    }

    fn on_ack(&mut self, seq: u32) {
        // Sequence numbers are compared as a window so that wrapping after
        // 2^32 reports does not stall the outbox.
        while let Some(front) = self.outbox.front() {
            if !wire::seq_newer(front.seq, seq) {
                self.outbox.pop_front();
            } else {
                break;
            }
        }
        if self.policy.is_some() && core::mem::take(&mut self.policy_refused) {
            self.policy_announced = false;
        }
        if self.busy_acked(seq) {
            self.busy_seq = None;
            // Room came before the server heard the "not now", so this
            // session may be the one that room started: sync once more when
            // it ends (as after an offer left unaccepted, `refused_resync`).
            if core::mem::take(&mut self.busy_room_freed) {
                self.refused_resync = true;
            }
        }
    }

    /// Whether `seq` acknowledges the busy "not now" waiting for its ack.
    fn busy_acked(&self, seq: u32) -> bool {
        self.busy_seq.is_some_and(|b| !wire::seq_newer(b, seq))
    }

    // The offer's fields one by one, in registers, and no `Task` built here
    // but the one stored. A `Task` argument (by reference or by value: the
    // ABI passes it by reference either way) was read with a 16-byte load of
    // the caller's stack slot just filled field by field; a local `Task`,
    // whose fields the log lines borrow, lived on the stack too, and its
    // copy into the slot read 8 bytes over a 4- and a 1-byte store. Both
    // are failed store-to-load forwards on x86-64, which had this function
    // at 6 % of `round_trip_profile`'s samples, two thirds of them there;
    // 3.8 % now, and the round trip 308 -> 296 ns (medians, 21 alternated
    // runs).
    fn on_task(&mut self, seq: u32, id: TaskId, kind: wire::TaskKind) -> Result<(), SessionError> {
        let expected = self.last_task_seq.wrapping_add(1);
        if seq != expected {
            if self.refused && wire::seq_newer(seq, expected) {
                return Ok(()); // left unaccepted, like the offer before it
            }
            if wire::seq_newer(seq, expected) {
                return Err(SessionError::Protocol(ProtocolError::SequenceGap));
            }
            trace!("task seq {} already accepted, ignored", seq);
            self.stats.duplicates = self.stats.duplicates.wrapping_add(1);
            return Ok(());
        }
        // Accept only with room for both this task's reports, else answer
        // "not now" (one slot), else leave it unaccepted for the next session.
        let busy = self.inflight.is_full() || self.outbox.len() + self.inflight.len() + 2 > OUTBOX;
        if busy {
            if self.outbox.len() + self.inflight.len() >= OUTBOX {
                debug!("task seq {} left for a later sync: outbox full", seq);
                self.refused = true;
                // A new sync helps only if, its outbox acknowledged, the
                // engine could take a task: with too many running, the same
                // offers would be deferred again and fill the room again, a
                // sync about every 45 s for as long as they run. A running
                // task that finishes asks for that sync (`busy_deferred`).
                let empty_fits = self.inflight.len() + 2 <= OUTBOX;
                self.refused_resync = !self.inflight.is_full() && empty_fits;
                self.busy_deferred = true;
                return Ok(());
            }
            debug!("task {} deferred: no room to run it now", id.0);
            self.last_task_seq = seq;
            self.busy_deferred = true;
            let status = TaskStatus::Deferred {
                retry_after_s: None,
            };
            let body = ReportBody::Task { task: id, status };
            let report = self.next_report_seq;
            self.enqueue(body, 0).map_err(|_| busy_err())?;
            self.busy_seq = Some(report);
            return Ok(());
        }
        self.last_task_seq = seq;
        // Listed before its `Received` is queued, while the offer's fields
        // are still in registers: after that call they came back from the
        // stack as one 8-byte load of a 4- and a 1-byte spill.
        let slot = Inflight {
            task: Task { seq, id, kind },
            announced: false,
            cancel: Flag::No,
            progress: None,
        };
        self.inflight.push(slot).map_err(|_| busy_err())?;
        // Room for both its reports was checked above (`busy`): servers and
        // phones write the `Received` in place, with no check repeated and
        // no `ReportBody` built to be matched again. Firmware queues it
        // through `enqueue`, one copy of that code (about 0.1 KB of flash).
        // `enqueue` keeps a slot free per running task other than this one
        // (listed just above), as before it was listed.
        #[cfg(feature = "hand-encode")]
        let queued = self.push_report(|b| b.put_received(id));
        #[cfg(not(feature = "hand-encode"))]
        let queued = self.enqueue(
            ReportBody::Task {
                task: id,
                status: TaskStatus::Received,
            },
            self.inflight.len().saturating_sub(1),
        );
        if queued.is_err() {
            // Not reached (room was checked): unlisted, as if never offered.
            self.inflight.pop();
            return Err(busy_err());
        }
        self.fresh_task = true;
        self.inflight_news = true;
        debug!("task {} (seq {}) accepted", id.0, seq);
        Ok(())
    }

    /// Advances timers: fires the periodic sync, ends overdue sessions, and
    /// asks to connect when a sync is wanted. Harmless early, late or twice.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Most calls find nothing due. `poll_timeout` is the earliest of the
        // very deadlines `run_timers` checks, so on servers and phones it
        // tells that first, without setting up the stack frame the work
        // needs (logging, failing a session). Firmware goes straight on
        // (the second look cost 28 B of flash at opt-level z).
        #[cfg(feature = "std")]
        if self.poll_timeout().is_none_or(|t| t > now) {
            return;
        }
        self.run_timers(now);
    }

    /// `handle_timeout`'s work, out of line where it follows a first look.
    #[cfg_attr(feature = "std", inline(never))]
    fn run_timers(&mut self, now: Instant) {
        if self.periodic_at.is_due(now) {
            debug!("periodic timer fired");
            self.periodic_at = now + self.periodic;
            self.want(SyncTrigger::Periodic, now);
        }
        if self.hint_at.is_some_and(|h| h.is_due(now)) {
            debug!("a task's retry-after came due");
            self.hint_at = None;
            self.want(SyncTrigger::Report, now);
        }
        if let Some(deadline) = self.session_deadline() {
            if deadline.is_due(now) {
                if self.waiting_for_server() {
                    self.fail(SessionError::Timeout, now);
                } else {
                    self.finish(now);
                }
            }
        }
        if self.link == Link::Idle && self.wants_sync() && self.attempt_at.is_due(now) {
            debug!("sync wanted: asking to connect");
            self.link = Link::Connecting;
            self.session_start = now;
            self.connect = true;
        }
    }

    fn wants_sync(&self) -> bool {
        self.wants.0 != 0 || !self.outbox.is_empty()
    }

    // Out of line in firmware: inlined at its three callers it takes more
    // flash at opt-level s.
    #[cfg_attr(not(feature = "std"), inline(never))]
    fn waiting_for_server(&self) -> bool {
        debug_assert!(self.sent_prefix());
        // Any report sent and not acked: the front one is (see `Wire`).
        self.link != Link::Syncing || !self.got_end || self.outbox.front().is_some_and(Entry::sent)
    }

    /// The order `Wire` describes: no `Sent` report after one that is not.
    fn sent_prefix(&self) -> bool {
        let mut rest = self.outbox.iter().skip_while(|e| e.sent());
        rest.all(|e| !e.sent())
    }

    // Out of line in firmware, as `waiting_for_server`. Together with the
    // cap written as additions (not `saturating_mul`) it measured 8 B
    // smaller at z and 28 B at s than inlined with the multiplication; the
    // two were not measured apart.
    #[cfg_attr(not(feature = "std"), inline(never))]
    fn session_deadline(&self) -> Option<Instant> {
        let t = &self.cfg.timers;
        let lingered = self.session_start + t.linger;
        match self.link {
            Link::Idle => None,
            Link::Connecting => Some(self.session_start + t.connect_timeout),
            _ if self.waiting_for_server() => {
                // Any whole frame counts as an answer, so a server that never
                // ends its first burst (no `SyncEnd`) and sends stray frames
                // could hold the device in this one session for good: waiting
                // ends `linger` plus three response timeouts after the
                // transport opened, at the latest (PROTOCOL.md 7.3).
                let r = t.response_timeout;
                Some((self.last_rx + r).min(lingered + r + r + r))
            }
            _ => Some(lingered),
        }
    }

    /// The next instant at which [`handle_timeout`](Self::handle_timeout) has
    /// work to do; `None` when every deadline saturated at [`Instant::MAX`],
    /// which is never (see [`crate::time`]).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next = self.periodic_at;
        if let Some(h) = self.hint_at {
            next = next.min(h);
        }
        if let Some(d) = self.session_deadline() {
            next = next.min(d);
        }
        if self.link == Link::Idle && self.wants_sync() {
            next = next.min(self.attempt_at);
        }
        next.as_deadline()
    }

    /// Ends the session successfully once everything is exchanged and no task
    /// is left running (or the linger time is over).
    fn check_done(&mut self, now: Instant) {
        if self.link == Link::Syncing && !self.waiting_for_server() && self.outbox.is_empty() {
            let lingering =
                !self.inflight.is_empty() && now < self.session_start + self.cfg.timers.linger;
            if !lingering && !self.persist {
                self.finish(now);
            }
        }
    }

    fn finish(&mut self, now: Instant) {
        debug!("sync done, trigger {:?}", self.trigger);
        self.stats.syncs[self.trigger.index()] =
            self.stats.syncs[self.trigger.index()].wrapping_add(1);
        self.failures = 0;
        // The periodic timer restarted at the welcome; a tick during the
        // session is covered by it.
        self.wants.0 &= !(1 << SyncTrigger::Periodic.index());
        self.end_session(Event::SyncDone {
            trigger: self.trigger,
        });
        self.attempt_at = now;
    }

    fn fail(&mut self, error: SessionError, now: Instant) {
        self.stats.failures = self.stats.failures.wrapping_add(1);
        self.failures = self.failures.saturating_add(1);
        // The compliance retry is for a server out of reach. One that
        // refused the device itself (its enrollment renewed, or a protocol
        // it does not speak) refuses the next attempt as well, so a minute
        // would only load it with handshakes that cannot succeed. The
        // server refuses a proof only in answer to it: an `AuthFailed`
        // before the proof went out (unkeyed before the challenge, so anyone
        // on the link can make one) or after the `Welcome` refused nothing,
        // and keeps the cap. Known limit: a version mismatch is unkeyed and
        // the session key public, so one on the link can still forge a
        // refusal, each one a delay of up to `backoff_max` (PROTOCOL.md 11.1).
        let proof_sent = self.link == Link::AwaitWelcome && self.proof.is_none();
        let refused = match error {
            SessionError::Rejected(ErrorCode::AuthFailed) => proof_sent,
            SessionError::Rejected(ErrorCode::VersionMismatch { .. })
            | SessionError::Protocol(ProtocolError::VersionMismatch { .. }) => true,
            _ => false,
        };
        self.end_session(Event::SyncFailed { error });
        let delay = self.backoff(!refused);
        self.attempt_at = now + delay;
        warning!(
            "sync failed: {:?}; retry in {} ms",
            error,
            delay.as_millis()
        );
    }

    fn end_session(&mut self, outcome: Event) {
        let was_open = self.link != Link::Connecting;
        self.link = Link::Idle;
        self.send_hello = false;
        self.proof = None;
        self.key = 0;
        self.decoder.reset();
        self.connect = false;
        // Kept if set: a session that ended before the application polled
        // still needs its transport closed when an attempt (no transport
        // yet) ends after it.
        self.disconnect |= was_open;
        self.outcome = Some(outcome);
        if core::mem::take(&mut self.refused_resync) && !self.app_deferred {
            self.wants.set(SyncTrigger::Report);
        }
    }

    /// The delay before the next attempt after a failure; capped at
    /// `compliance_retry` while a compliance event waits, if `compliance_cap`.
    fn backoff(&mut self, compliance_cap: bool) -> Duration {
        let t = self.cfg.timers;
        let doublings = self.failures.saturating_sub(1).min(20);
        let full = t
            .backoff_min
            .saturating_mul(1 << doublings)
            .min(t.backoff_max);
        // A uniform jitter in 0..=half by multiply-shift, not `%`: no 64-bit
        // division on a 32-bit MCU. (The span stops at 2^32 - 1 ms, 49 days.)
        let half = full.as_millis() / 2;
        let span = u32::try_from(half + 1).unwrap_or(u32::MAX);
        let jitter = (u64::from(self.next_random()) * u64::from(span)) >> 32;
        let delay = Duration::from_millis(full.as_millis() - jitter);
        if compliance_cap && self.outbox.iter().any(Entry::is_compliance) {
            delay.min(t.compliance_retry)
        } else {
            delay
        }
    }

    fn next_random(&mut self) -> u32 {
        // xorshift64*, high half: jitter only, never secrets.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
    }

    // ---- output ------------------------------------------------------------

    /// The next thing the application must do, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        // A task already in a snapshot is handed out before a newer snapshot is
        // asked for: a power loss while that one is written must not fail, as
        // "interrupted", a task that was accepted but never handed out.
        // (A task to hand out sets `inflight_news`: without it, none waits.)
        debug_assert!(
            self.inflight_news
                || self
                    .inflight
                    .iter()
                    .all(|i| i.announced && i.cancel != Flag::Pending),
            "a running task's news without the flag"
        );
        if self.persist {
            if !self.fresh_task && self.inflight_news {
                if let Some(i) = self.inflight.iter_mut().find(|i| !i.announced) {
                    i.announced = true;
                    self.stats.executed = self.stats.executed.wrapping_add(1);
                    return Some(Event::Execute(i.task));
                }
            }
            self.persist = false;
            self.fresh_task = false;
            self.counter = self.counter.wrapping_add(1);
            return Some(Event::Persist);
        }
        // A session's end: `Disconnect` first, then its outcome. The first is
        // only ever pending with the second (`end_session` sets both), so
        // most polls, with neither, look at one of them only.
        if self.outcome.is_some() {
            if core::mem::take(&mut self.disconnect) {
                return Some(Event::Disconnect);
            }
            return self.outcome.take();
        }
        debug_assert!(!self.disconnect, "a Disconnect without its outcome");
        if core::mem::take(&mut self.connect) {
            return Some(Event::Connect);
        }
        // One pass: a task to hand out comes before any cancel request.
        // Skipped once nothing is left: a pass found nothing, or (servers
        // and phones) handed out the last task with no cancel request
        // waiting, the usual case, one task at a time: the next polls, the
        // persist above included, need not look.
        if self.inflight_news {
            let mut cancel = None;
            let last = self.inflight.len().saturating_sub(1);
            for (k, i) in self.inflight.iter_mut().enumerate() {
                if !i.announced {
                    i.announced = true;
                    self.stats.executed = self.stats.executed.wrapping_add(1);
                    // Firmware keeps the flag until a pass finds nothing
                    // (clearing it here cost about 50 B of flash at z).
                    let std = cfg!(feature = "std");
                    if std && k == last && cancel.is_none() && i.cancel != Flag::Pending {
                        self.inflight_news = false;
                    }
                    return Some(Event::Execute(i.task));
                }
                if cancel.is_none() && i.cancel == Flag::Pending {
                    cancel = Some(i);
                }
            }
            if let Some(i) = cancel {
                i.cancel = Flag::Announced;
                return Some(Event::Cancel(i.task.id));
            }
            self.inflight_news = false;
        }
        if let Some(p) = self.policy.as_ref().filter(|_| !self.policy_announced) {
            self.policy_announced = true;
            return Some(Event::ApplyPolicy { version: p.version });
        }
        None
    }

    /// Writes the next frame to send into `buf`; `Ok(None)` when there is none.
    /// Bytes of `buf` after the frame may be overwritten too (scratch).
    /// Nothing is sent while a [`Event::Persist`] waits to be polled.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Result<Option<usize>, DeviceError> {
        if self.persist {
            return Ok(None);
        }
        let key = self.key;
        if let Some(e) = self.unsent_report() {
            return transmit_report(e, buf, key);
        }
        if self.link != Link::Syncing || self.send_hello {
            return self.transmit_handshake(buf, key);
        }
        // Skipped once a pass found none, until progress comes.
        let next = if self.progress_news {
            self.inflight.iter_mut().find(|i| i.progress.is_some())
        } else {
            None
        };
        let Some(i) = next else {
            self.progress_news = false;
            return Ok(None);
        };
        transmit_progress(i, buf, key)
    }

    /// The hello and the proof: out of line, so that the calls of an open
    /// session (most of them with nothing to send) do not set up the stack
    /// frame of an `Up::Hello` and its push token.
    #[inline(never)]
    fn transmit_handshake(
        &mut self,
        buf: &mut [u8],
        key: u32,
    ) -> Result<Option<usize>, DeviceError> {
        let msg = if self.send_hello {
            Up::Hello(self.hello())
        } else if let Some(mac) = self.proof.filter(|_| self.link == Link::AwaitWelcome) {
            Up::Proof { mac }
        } else {
            return Ok(None);
        };
        let n = frame::encode_keyed(&msg, buf, key).map_err(DeviceError::Encode)?;
        if let Up::Hello(_) = msg {
            self.hello_binding = crate::auth::bind_hello(frame::payload(&buf[..n]));
            self.send_hello = false;
            self.hello_token = self.hello_carries_token();
        } else {
            self.proof = None;
        }
        Ok(Some(n))
    }

    /// The first report not sent in this session, once the session is syncing
    /// and the hello is out. Reports go before progress.
    fn unsent_report(&mut self) -> Option<&mut Entry> {
        if self.link != Link::Syncing || self.send_hello {
            return None;
        }
        // Any left to send: then the back one is (see `Wire`). Checked first
        // on servers and phones only: in firmware it costs 0.2 KB of flash
        // (opt-level z), for a scan of a few reports at most.
        debug_assert!(self.sent_prefix());
        #[cfg(feature = "hand-encode")]
        {
            if self.outbox.back().is_none_or(Entry::sent) {
                return None;
            }
            // None sent and waiting for its ack (the usual case): the front
            // one, found without setting up a walk through the ring.
            if self.outbox.front().is_some_and(|e| !e.sent()) {
                return self.outbox.front_mut();
            }
        }
        self.outbox.iter_mut().find(|e| !e.sent())
    }

    /// Whether this session's `Hello` carries the push token: until the
    /// server has confirmed it (see `token_confirmed`), and again once a
    /// periodic interval has passed since the session that confirmed it
    /// started, whatever starts this sync (or the clock went back past that
    /// start). The resend repairs a server that holds another token than the
    /// current one (a store restored from a backup, say) and so never asks
    /// for it: within one periodic interval and one sync.
    fn hello_carries_token(&self) -> bool {
        let (at, since) = (self.session_start, self.token_confirmed_at);
        !self.token_confirmed || at < since || at >= since + self.periodic
    }

    /// The session's `Hello`: with the push token when it carries one (see
    /// `hello_carries_token`), else with an empty one.
    fn hello(&self) -> Hello {
        let push_token = if self.hello_carries_token() {
            self.cfg.push_token.clone()
        } else {
            heapless::String::new()
        };
        Hello {
            version: PROTOCOL_VERSION,
            attempt: self.attempt,
            device: self.cfg.id,
            generation: self.cfg.generation,
            platform: self.cfg.platform,
            push_token,
            trigger: self.trigger,
            last_task_seq: self.last_task_seq,
            policy_version: self.policy_version,
        }
    }

    /// Marks tasks that were running when the snapshot was taken as failed:
    /// after a reboot nobody knows how far they got, and they must not run twice.
    fn fail_interrupted(&mut self) {
        while let Some(i) = self.inflight.pop() {
            let status = TaskStatus::Failed {
                reason: reason::INTERRUPTED_BY_REBOOT,
            };
            // Reserved slot: cannot fail for a restored, consistent snapshot.
            if self
                .enqueue(
                    ReportBody::Task {
                        task: i.task.id,
                        status,
                    },
                    0,
                )
                .is_err()
            {
                warning!("outbox full restoring task {}", i.task.id.0);
            }
        }
    }
}

/// Of `entries`, newest first, while each is a task's unsent `Received`:
/// the one of `task`.
fn unsent_received_of<'a>(
    entries: impl Iterator<Item = &'a mut Entry>,
    task: TaskId,
) -> Option<&'a mut Entry> {
    let mut unsent = entries.map_while(|e| Some((e.unsent_received()?, e)));
    unsent.find(|(id, _)| *id == task).map(|(_, e)| e)
}

/// Frames report `e` into `buf` and marks it sent. Out of line on servers
/// and phones, as is [`transmit_progress`]: most calls of an open session
/// find nothing to send, and inlined, these set up the framing's stack
/// frame for them all. Firmware inlines both, as before (out of line they
/// cost 0.2 KB of flash at opt-level s).
#[cfg_attr(feature = "hand-encode", inline(never))]
#[cfg_attr(not(feature = "hand-encode"), inline(always))]
fn transmit_report(e: &mut Entry, buf: &mut [u8], key: u32) -> Result<Option<usize>, DeviceError> {
    let report = wire::EncodedReport {
        seq: e.seq,
        body: &e.body.bytes,
        len: e.body.len.into(),
    };
    let n = frame::encode_keyed(&report, buf, key).map_err(DeviceError::Encode)?;
    e.wire = Wire::Sent;
    Ok(Some(n))
}

/// Frames the progress of running task `i` into `buf` and clears it.
#[cfg_attr(feature = "hand-encode", inline(never))]
#[cfg_attr(not(feature = "hand-encode"), inline(always))]
fn transmit_progress(
    i: &mut Inflight,
    buf: &mut [u8],
    key: u32,
) -> Result<Option<usize>, DeviceError> {
    let msg = Up::Progress {
        task: i.task.id,
        percent: i.progress.flatten(),
    };
    let n = frame::encode_keyed(&msg, buf, key).map_err(DeviceError::Encode)?;
    i.progress = None;
    Ok(Some(n))
}

/// The task of an encoded report body that is a task's `Received`:
/// `ReportBody::Task` (tag 0), the task id (a varint), `TaskStatus::Received`
/// (tag 0). Read here rather than decoded, on the path of every task.
fn received_task(body: &[u8]) -> Option<TaskId> {
    let [wire::REPORT_TASK, id @ .., 0] = body else {
        return None;
    };
    // Continuation bytes up to the id's last: so the final 0 is the status,
    // not a field of a longer one (`Succeeded { result: None }` ends `01 00`).
    if id.is_empty() || id.len() > 10 {
        return None;
    }
    let mut value = 0u64;
    for (k, b) in id.iter().enumerate() {
        if (b & 0x80 == 0) != (k + 1 == id.len()) {
            return None;
        }
        value |= u64::from(b & 0x7F).checked_shl(7 * k as u32)?;
    }
    Some(TaskId(value))
}

/// An `Ack` of a report never numbered: logged, out of the way of the acks
/// of every session.
#[cold]
fn ack_never_numbered(seq: u32) -> SessionError {
    warning!("ack {} names a report never numbered", seq);
    SessionError::Protocol(ProtocolError::Unexpected)
}

fn busy_err() -> SessionError {
    SessionError::Protocol(ProtocolError::Unexpected)
}

// By hand, not derived: a summary without the secret, the proof or buffers.
#[cfg(feature = "defmt")]
impl<const OUTBOX: usize, const INFLIGHT: usize> defmt::Format for Device<OUTBOX, INFLIGHT> {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(
            f,
            "Device {{ id: {}, link: {}, running: {}, outbox: {}, last_task_seq: {}, policy: {} }}",
            self.cfg.id,
            self.link,
            self.inflight.len(),
            self.outbox.len(),
            self.last_task_seq,
            self.policy_version
        );
    }
}

#[cfg(test)]
mod tests;
