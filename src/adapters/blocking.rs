//! A blocking device adapter over any `std::io::Read + Write` transport.
//!
//! [`BlockingDevice`] owns a [`Device`] engine and the four things it needs
//! from the outside world:
//!
//! - a [`Connector`] that opens a [`Transport`] when the engine wants to sync
//!   (TCP with [`TcpConnector`], or anything with a read timeout);
//! - a [`Storage`] with two slots for A/B snapshots, so a write torn by power
//!   loss leaves the previous snapshot intact ([`MemoryStorage`] for tests and
//!   simulations; flash or two files in real life);
//! - a [`Handler`] that runs tasks, cancels them and applies policies;
//! - a [`Clock`] (usually [`ScaledClock`]) that gives the engine its time and
//!   turns deadlines into read timeouts.
//!
//! # Run loop
//!
//! [`run_once`](BlockingDevice::run_once) does everything that is due: timers,
//! events, and a whole session when the engine wants one (connect, sync,
//! disconnect), blocking on the transport with read timeouts taken from the
//! engine's [`poll_timeout`](Device::poll_timeout). It returns how long the
//! caller may sleep. Wake it earlier for a push ([`push_received`]), a button
//! press ([`manual_sync`]) or a compliance event ([`raise_compliance`]):
//!
//! ```no_run
//! use mdm_sync::adapters::blocking::{BlockingDevice, Execution, Handler, MemoryStorage, TcpConnector};
//! use mdm_sync::adapters::clock::ScaledClock;
//! use mdm_sync::adapters::push::UdpPushReceiver;
//! use mdm_sync::device::DeviceConfig;
//! use mdm_sync::time::Instant;
//! use mdm_sync::wire::{DeviceId, Platform, Policy, PolicyOutcome, Task, TaskStatus};
//!
//! struct Agent;
//! impl Handler for Agent {
//!     fn execute(&mut self, task: Task, _now: Instant) -> Execution {
//!         println!("running {:?}", task.kind);
//!         Execution::Done(TaskStatus::Succeeded { result: None })
//!     }
//!     fn apply_policy(&mut self, _policy: &Policy, _now: Instant) -> PolicyOutcome {
//!         PolicyOutcome::Applied
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pushes = UdpPushReceiver::bind_loopback()?;
//! let mut cfg = DeviceConfig::new(DeviceId(7), 0, [0u8; 32], Platform::Android);
//! cfg.push_token = pushes.token().as_str().try_into().map_err(|_| "token too long")?;
//! let server = "127.0.0.1:7000".parse()?;
//! let mut dev: BlockingDevice<_, _, _> = BlockingDevice::boot(
//!     cfg, TcpConnector::new(server), MemoryStorage::new(), Agent, ScaledClock::new())?;
//! loop {
//!     let wait = dev.run_once()?;
//!     if pushes.recv_timeout(wait)? == Some(DeviceId(7)) {
//!         dev.push_received();
//!     }
//! }
//! # }
//! ```
//!
//! # Guarantees kept here
//!
//! - Every [`Event::Persist`] is written to the slot the engine names before
//!   the next event is looked at. If the write fails, `run_once` returns
//!   [`Error::Storage`], nothing more is sent, and the next call writes the
//!   snapshot again before anything else.
//! - A task reaches the [`Handler`] exactly when the engine hands it out, so
//!   it runs at most once across reboots as long as the storage keeps what
//!   it was given.
//!
//! [`push_received`]: BlockingDevice::push_received
//! [`manual_sync`]: BlockingDevice::manual_sync
//! [`raise_compliance`]: BlockingDevice::raise_compliance

use core::net::SocketAddr;
use core::time::Duration as WallDuration;
use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::vec::Vec;

use super::clock::{Clock, ScaledClock};
use crate::device::{
    pick_latest, snapshot_counter, Device, DeviceConfig, DeviceError, DeviceTimers, Event,
    SessionError, SnapshotError, DEFAULT_INFLIGHT, DEFAULT_OUTBOX,
};
// Host-side adapters log through `log` even with `defmt` on: their errors
// (`io::Error` and friends) have no defmt form.
use crate::time::Instant;
use crate::wire::{
    ComplianceEvent, Policy, PolicyOutcome, SyncTrigger, Task, TaskId, TaskStatus, MAX_FRAME,
};
use ::log::{debug, warn as warning};

/// Shortest read timeout asked of a transport (zero means "none" to std).
const MIN_WAIT: WallDuration = WallDuration::from_millis(1);
/// Rounds of timers and events without a session before `run_once` returns
/// anyway (guards against a handler whose `next_update` never passes).
const MAX_IDLE_ROUNDS: usize = 16;

/// A byte stream the adapter can wait on with a deadline.
pub trait Transport: Read + Write {
    /// Sets how long one `read` may block; `None` blocks without limit. A
    /// read that times out must fail with `WouldBlock` or `TimedOut`.
    fn set_read_timeout(&mut self, timeout: Option<WallDuration>) -> io::Result<()>;

    /// Sets how long one `write` may block. The default ignores it (for
    /// transports whose writes never block for long).
    fn set_write_timeout(&mut self, timeout: Option<WallDuration>) -> io::Result<()> {
        let _ = timeout;
        Ok(())
    }
}

impl Transport for TcpStream {
    fn set_read_timeout(&mut self, timeout: Option<WallDuration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }

    fn set_write_timeout(&mut self, timeout: Option<WallDuration>) -> io::Result<()> {
        TcpStream::set_write_timeout(self, timeout)
    }
}

#[cfg(unix)]
impl Transport for std::os::unix::net::UnixStream {
    fn set_read_timeout(&mut self, timeout: Option<WallDuration>) -> io::Result<()> {
        std::os::unix::net::UnixStream::set_read_timeout(self, timeout)
    }

    fn set_write_timeout(&mut self, timeout: Option<WallDuration>) -> io::Result<()> {
        std::os::unix::net::UnixStream::set_write_timeout(self, timeout)
    }
}

/// Opens a transport to the server when the engine asks for one.
///
/// Any `FnMut() -> io::Result<T>` closure is a connector.
pub trait Connector {
    /// What it opens.
    type Transport: Transport;

    /// Opens a fresh connection to the server.
    fn connect(&mut self) -> io::Result<Self::Transport>;
}

impl<T: Transport, F: FnMut() -> io::Result<T>> Connector for F {
    type Transport = T;

    fn connect(&mut self) -> io::Result<T> {
        self()
    }
}

/// Connects over TCP with a timeout and Nagle's algorithm off (the protocol
/// sends small frames and waits for answers).
#[derive(Clone, Copy, Debug)]
pub struct TcpConnector {
    addr: SocketAddr,
    timeout: WallDuration,
}

impl TcpConnector {
    /// A connector to `addr` with a 10-second connect timeout.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            timeout: WallDuration::from_secs(10),
        }
    }

    /// The same with another connect timeout (wall time).
    pub fn with_timeout(mut self, timeout: WallDuration) -> Self {
        self.timeout = timeout.max(MIN_WAIT);
        self
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Connector for TcpConnector {
    type Transport = TcpStream;

    fn connect(&mut self) -> io::Result<TcpStream> {
        let stream = TcpStream::connect_timeout(&self.addr, self.timeout)?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// Two storage slots for snapshots (A/B), e.g. two flash sectors or files.
pub trait Storage {
    /// The storage's error.
    type Error: core::fmt::Debug;

    /// Replaces `buf`'s contents with slot `slot` (0 or 1); an empty or
    /// never-written slot leaves `buf` empty.
    fn load(&mut self, slot: usize, buf: &mut Vec<u8>) -> Result<(), Self::Error>;

    /// Writes `bytes` into slot `slot` (0 or 1), replacing what was there. It
    /// must be on stable storage when this returns `Ok`.
    fn store(&mut self, slot: usize, bytes: &[u8]) -> Result<(), Self::Error>;
}

/// Both slots in memory: survives a simulated reboot (drop the engine, keep
/// the storage), not a real one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryStorage {
    slots: [Vec<u8>; 2],
    writes: u64,
}

impl MemoryStorage {
    /// Two empty slots.
    pub fn new() -> Self {
        Self::default()
    }

    /// The bytes in slot `slot` (empty for a slot other than 0 or 1).
    pub fn slot(&self, slot: usize) -> &[u8] {
        self.slots.get(slot).map_or(&[], |s| s.as_slice())
    }

    /// Mutable access to a slot, to simulate torn writes and corruption.
    pub fn slot_mut(&mut self, slot: usize) -> Option<&mut Vec<u8>> {
        self.slots.get_mut(slot)
    }

    /// Snapshots written so far.
    pub fn writes(&self) -> u64 {
        self.writes
    }
}

impl Storage for MemoryStorage {
    type Error = core::convert::Infallible;

    fn load(&mut self, slot: usize, buf: &mut Vec<u8>) -> Result<(), Self::Error> {
        buf.clear();
        buf.extend_from_slice(self.slot(slot));
        Ok(())
    }

    fn store(&mut self, slot: usize, bytes: &[u8]) -> Result<(), Self::Error> {
        if let Some(s) = self.slots.get_mut(slot) {
            s.clear();
            s.extend_from_slice(bytes);
            self.writes += 1;
        }
        Ok(())
    }
}

/// How a task went when the handler was asked to run it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Execution {
    /// Finished with this final status (not `Received`).
    Done(TaskStatus),
    /// Still running; the handler reports it later through
    /// [`Handler::poll_update`] or [`BlockingDevice::task_status`].
    Running,
}

/// News about a task that is still running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskUpdate {
    /// How far it got (best effort; coalesced by the engine).
    Progress {
        /// Which task.
        task: TaskId,
        /// 0..=100, if known.
        percent: Option<u8>,
    },
    /// It ended with this final status.
    Finished {
        /// Which task.
        task: TaskId,
        /// Its final status (not `Received`).
        status: TaskStatus,
    },
}

/// What the device application does with the engine's requests. All calls
/// are made from inside [`BlockingDevice::run_once`]; they should not block
/// for long, since a session may be open.
pub trait Handler {
    /// Runs a task (it is handed out once, ever). Return its final status,
    /// or [`Execution::Running`] for a long task reported later.
    fn execute(&mut self, task: Task, now: Instant) -> Execution;

    /// The server asks to stop a running task: return `Cancelled` (or its
    /// real final status if it just ended), or `None` to report later.
    fn cancel(&mut self, task: TaskId, now: Instant) -> Option<TaskStatus> {
        let _ = (task, now);
        None
    }

    /// Applies a newer policy and says how it went.
    fn apply_policy(&mut self, policy: &Policy, now: Instant) -> PolicyOutcome;

    /// News about running tasks; called until it returns `None` on every
    /// round of the run loop.
    fn poll_update(&mut self, now: Instant) -> Option<TaskUpdate> {
        let _ = now;
        None
    }

    /// When `poll_update` will next have news (a long task finishing), so the
    /// adapter wakes up for it; `None` if nothing is expected.
    fn next_update(&self) -> Option<Instant> {
        None
    }

    /// A sync completed.
    fn sync_done(&mut self, trigger: SyncTrigger, now: Instant) {
        let _ = (trigger, now);
    }

    /// A sync failed; the engine retries with backoff.
    fn sync_failed(&mut self, error: SessionError, now: Instant) {
        let _ = (error, now);
    }
}

/// Errors of the blocking adapter. Transport failures are not errors: the
/// engine sees them as a failed sync and retries with backoff.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error<E> {
    /// Reading or writing a snapshot slot failed. A failed write is retried
    /// at the start of the next [`BlockingDevice::run_once`]; nothing is sent
    /// until it succeeds.
    Storage(E),
    /// The newest snapshot with a good CRC could not be restored (written for
    /// another device or enrollment, or inconsistent). Nothing was changed.
    /// Starting fresh forgets the executed-task ledger; start with
    /// [`Device::continuing`] and the old snapshot's counter
    /// ([`snapshot_counter`]), not
    /// [`Device::new`], so that connections (`Hello.attempt`) stay new
    /// (PROTOCOL.md 16).
    Snapshot(SnapshotError),
    /// The handler answered with something the engine refused: a status
    /// that is not final, or a task that is not running.
    Handler(DeviceError),
}

impl<E: core::fmt::Debug> core::fmt::Display for Error<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Storage(e) => write!(f, "snapshot storage failed: {e:?}"),
            Error::Snapshot(e) => write!(f, "snapshot could not be restored: {e}"),
            Error::Handler(e) => write!(f, "handler answer refused by the engine: {e}"),
        }
    }
}

impl<E: core::fmt::Debug> core::error::Error for Error<E> {}

/// Reads both slots and restores the engine from the newer valid snapshot,
/// or starts a fresh one (first boot) when neither slot holds one. A slot
/// that fails its check (CRC, length, format) is read once more, so that a
/// read that came back corrupted once, without an error, is not taken for
/// a torn write.
///
/// Known shortcoming: a slot that fails its check twice is taken for a
/// torn write, so storage that returns the same corrupted bytes of the
/// newer slot on both reads without an error (bits gone bad in the medium,
/// a fault that repeats) makes this fall back to the older snapshot, and a
/// task run after it (ledger in the newer one) can run a second time if
/// the server had not recorded its status. The two cases look the same
/// from the bytes. A storage error is returned, never taken for a torn
/// write.
pub fn load_device<S: Storage, const O: usize, const I: usize>(
    cfg: DeviceConfig,
    storage: &mut S,
    now: Instant,
) -> Result<Device<O, I>, Error<S::Error>> {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for (slot, buf) in [&mut a, &mut b].into_iter().enumerate() {
        storage.load(slot, buf).map_err(Error::Storage)?;
        if snapshot_counter(buf).is_err() {
            storage.load(slot, buf).map_err(Error::Storage)?;
        }
    }
    match pick_latest(&a, &b) {
        Some(bytes) => Device::restore(cfg, bytes, now).map_err(Error::Snapshot),
        None => Ok(Device::new(cfg, now)),
    }
}

/// A [`Device`] driven over blocking I/O. See the [module docs](self).
pub struct BlockingDevice<
    C: Connector,
    S: Storage,
    H: Handler,
    K: Clock = ScaledClock,
    const O: usize = DEFAULT_OUTBOX,
    const I: usize = DEFAULT_INFLIGHT,
> {
    device: Device<O, I>,
    connector: C,
    storage: S,
    handler: H,
    clock: K,
    timers: DeviceTimers,
    link: Option<C::Transport>,
    persist_failed: bool,
    rx: Vec<u8>,
    tx: Vec<u8>,
    frame: Vec<u8>,
    snap: Vec<u8>,
}

impl<C, S, H, K, const O: usize, const I: usize> BlockingDevice<C, S, H, K, O, I>
where
    C: Connector,
    S: Storage,
    H: Handler,
    K: Clock,
{
    /// Boots: restores the engine from `storage` (see [`load_device`]) and
    /// wraps it. A boot sync is wanted at once.
    pub fn boot(
        cfg: DeviceConfig,
        connector: C,
        mut storage: S,
        handler: H,
        clock: K,
    ) -> Result<Self, Error<S::Error>> {
        let timers = cfg.timers;
        let device = load_device(cfg, &mut storage, clock.now())?;
        Ok(Self::new(
            device, timers, connector, storage, handler, clock,
        ))
    }

    /// Wraps an engine created or restored by the caller. `timers` should be
    /// the engine's configured timers (the write timeout is derived from them).
    pub fn new(
        device: Device<O, I>,
        timers: DeviceTimers,
        connector: C,
        storage: S,
        handler: H,
        clock: K,
    ) -> Self {
        Self {
            device,
            connector,
            storage,
            handler,
            clock,
            timers,
            link: None,
            persist_failed: false,
            rx: std::vec![0; 4096],
            tx: Vec::new(),
            frame: std::vec![0; MAX_FRAME],
            snap: std::vec![0; Device::<O, I>::SNAPSHOT_MAX],
        }
    }

    /// The engine (for its state and statistics).
    pub fn device(&self) -> &Device<O, I> {
        &self.device
    }

    /// The handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// The handler, mutably.
    pub fn handler_mut(&mut self) -> &mut H {
        &mut self.handler
    }

    /// The snapshot storage.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// The snapshot storage, mutably (to inspect it, or to inject faults in
    /// a simulation). Writing a slot behind the engine's back is the
    /// caller's responsibility.
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    /// The connector, mutably (to change the server address, say).
    pub fn connector_mut(&mut self) -> &mut C {
        &mut self.connector
    }

    /// The clock.
    pub fn clock(&self) -> &K {
        &self.clock
    }

    /// Whether a transport is open (only between calls that failed midway).
    pub fn is_connected(&self) -> bool {
        self.link.is_some()
    }

    /// Takes the adapter apart, e.g. to simulate a reboot: drop the engine,
    /// keep the storage, and [`boot`](Self::boot) again. An open transport
    /// is closed. State not yet written (say, a compliance event raised since
    /// the last [`run_once`](Self::run_once)) is lost, as in a power loss; use
    /// [`shutdown`](Self::shutdown) for an orderly stop.
    pub fn into_parts(self) -> (C, S, H) {
        (self.connector, self.storage, self.handler)
    }

    /// An orderly stop: handles what the engine has pending (above all, writes
    /// the snapshot it asked for), then takes the adapter apart like
    /// [`into_parts`](Self::into_parts). On a storage error the adapter is
    /// handed back with the error.
    // reason: the error hands the whole adapter back so the caller can retry
    #[allow(clippy::result_large_err, clippy::type_complexity)]
    pub fn shutdown(mut self) -> Result<(C, S, H), (Self, Error<S::Error>)> {
        let now = self.clock.now();
        match self.drive(now) {
            Ok(()) => Ok(self.into_parts()),
            Err(e) => Err((self, e)),
        }
    }

    /// A "sync now" push arrived; call [`run_once`](Self::run_once) next.
    pub fn push_received(&mut self) {
        self.device.push_received(self.clock.now());
    }

    /// The user pressed "synchronize"; call [`run_once`](Self::run_once) next.
    pub fn manual_sync(&mut self) {
        self.device.manual_sync(self.clock.now());
    }

    /// A compliance event happened; it is written to storage by the next
    /// [`run_once`](Self::run_once) (or [`shutdown`](Self::shutdown)), synced,
    /// and retried until acknowledged.
    pub fn raise_compliance(&mut self, event: ComplianceEvent) -> Result<(), DeviceError> {
        self.device.raise_compliance(event, self.clock.now())
    }

    /// The final status of a task the handler left [`Execution::Running`].
    pub fn task_status(&mut self, task: TaskId, status: TaskStatus) -> Result<(), DeviceError> {
        self.device.task_status(task, status, self.clock.now())
    }

    /// Progress of a running task.
    pub fn task_progress(&mut self, task: TaskId, percent: Option<u8>) -> Result<(), DeviceError> {
        self.device.task_progress(task, percent)
    }

    /// Does everything that is due: timers, events, handler updates, and a
    /// whole session if the engine wants one (it blocks until the session
    /// ends). Returns how long the caller may wait before calling again.
    pub fn run_once(&mut self) -> Result<WallDuration, Error<S::Error>> {
        let mut idle_rounds = 0;
        loop {
            let now = self.clock.now();
            self.device.handle_timeout(now);
            self.drive(now)?;
            if self.link.is_some() {
                let wait = self.clock.wall_until(self.next_deadline());
                self.receive(wait);
                continue;
            }
            idle_rounds += 1;
            let wait = self.clock.wall_until(self.next_deadline());
            if !wait.is_zero() || idle_rounds >= MAX_IDLE_ROUNDS {
                return Ok(wait);
            }
        }
    }

    /// The earliest of the engine's and the handler's deadlines: when
    /// [`run_once`](Self::run_once) next has work without outside input.
    pub fn next_deadline(&self) -> Instant {
        let engine = self.device.poll_timeout().unwrap_or(Instant::MAX);
        self.handler.next_update().map_or(engine, |h| h.min(engine))
    }

    /// Events, handler updates and outgoing frames, until nothing is left.
    fn drive(&mut self, now: Instant) -> Result<(), Error<S::Error>> {
        if self.persist_failed {
            self.persist()?;
        }
        loop {
            while let Some(ev) = self.device.poll_event() {
                self.on_event(ev, now)?;
            }
            match self.handler.poll_update(now) {
                Some(update) => self.on_update(update, now)?,
                None => break,
            }
        }
        self.flush(now);
        Ok(())
    }

    fn on_event(&mut self, ev: Event, now: Instant) -> Result<(), Error<S::Error>> {
        match ev {
            Event::Persist => self.persist()?,
            Event::Connect => self.connect(),
            Event::Disconnect => self.link = None,
            Event::Execute(task) => {
                if let Execution::Done(status) = self.handler.execute(task, now) {
                    self.finished(task.id, status, now)?;
                }
            }
            Event::Cancel(task) => {
                if let Some(status) = self.handler.cancel(task, now) {
                    self.finished(task, status, now)?;
                }
            }
            Event::ApplyPolicy { version } => {
                if let Some(policy) = self.device.pending_policy().cloned() {
                    let outcome = self.handler.apply_policy(&policy, now);
                    match self.device.policy_applied(version, outcome, now) {
                        // The engine announces the policy again once its
                        // outbox has room; applying is idempotent.
                        Err(DeviceError::OutboxFull) => {
                            debug!("policy {} answer waits for outbox room", version)
                        }
                        other => other.map_err(Error::Handler)?,
                    }
                }
            }
            Event::SyncDone { trigger } => self.handler.sync_done(trigger, now),
            Event::SyncFailed { error } => self.handler.sync_failed(error, now),
        }
        Ok(())
    }

    fn on_update(&mut self, update: TaskUpdate, now: Instant) -> Result<(), Error<S::Error>> {
        match update {
            // Progress is best effort: a task that just ended has none.
            TaskUpdate::Progress { task, percent } => {
                let _ = self.device.task_progress(task, percent);
                Ok(())
            }
            TaskUpdate::Finished { task, status } => self.finished(task, status, now),
        }
    }

    fn finished(
        &mut self,
        task: TaskId,
        status: TaskStatus,
        now: Instant,
    ) -> Result<(), Error<S::Error>> {
        self.device
            .task_status(task, status, now)
            .map_err(Error::Handler)
    }

    /// Writes the current snapshot into the slot the engine names.
    fn persist(&mut self) -> Result<(), Error<S::Error>> {
        self.persist_failed = true;
        // The buffer holds SNAPSHOT_MAX bytes, the engine's own bound.
        let n = match self.device.snapshot(&mut self.snap) {
            Ok(n) => n,
            Err(e) => {
                warning!("snapshot does not fit its bound: {:?}", e);
                return Err(Error::Handler(DeviceError::Encode(e)));
            }
        };
        let slot = self.device.snapshot_slot();
        self.storage
            .store(slot, &self.snap[..n])
            .map_err(Error::Storage)?;
        self.persist_failed = false;
        Ok(())
    }

    fn connect(&mut self) {
        let opened = self.connector.connect().and_then(|mut t| {
            let write_timeout = self.wall(self.timers.response_timeout);
            t.set_write_timeout(Some(write_timeout))?;
            Ok(t)
        });
        let now = self.clock.now();
        match opened {
            Ok(t) => {
                self.link = Some(t);
                self.device.connected(now);
            }
            Err(e) => {
                debug!("connect failed: {}", e);
                self.device.connect_failed(now);
            }
        }
    }

    fn wall(&self, d: crate::time::Duration) -> WallDuration {
        let now = self.clock.now();
        self.clock.wall_until(now + d).max(MIN_WAIT)
    }

    /// Sends every frame the engine has, in one write.
    fn flush(&mut self, now: Instant) {
        if self.persist_failed || self.link.is_none() {
            return;
        }
        self.tx.clear();
        // The frame buffer holds MAX_FRAME bytes, so encoding cannot run short.
        while let Ok(Some(n)) = self.device.poll_transmit(&mut self.frame) {
            self.tx.extend_from_slice(&self.frame[..n]);
        }
        if self.tx.is_empty() {
            return;
        }
        let Some(link) = self.link.as_mut() else {
            return;
        };
        if let Err(e) = link.write_all(&self.tx).and_then(|()| link.flush()) {
            debug!("write failed: {}", e);
            self.link = None;
            self.device.disconnected(now);
        }
    }

    /// Waits up to `wait` for bytes and hands them to the engine.
    fn receive(&mut self, wait: WallDuration) {
        let Some(link) = self.link.as_mut() else {
            return;
        };
        let read = link
            .set_read_timeout(Some(wait.max(MIN_WAIT)))
            .and_then(|()| link.read(&mut self.rx));
        let now = self.clock.now();
        match read {
            Ok(0) => {
                debug!("server closed the connection");
                self.link = None;
                self.device.disconnected(now);
            }
            Ok(n) => {
                // A session error ends the session; its events close the link.
                if let Err(e) = self.device.handle_bytes(&self.rx[..n], now) {
                    debug!("session ended on input: {:?}", e);
                }
            }
            Err(e) if is_timeout(&e) || e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                debug!("read failed: {}", e);
                self.link = None;
                self.device.disconnected(now);
            }
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}
