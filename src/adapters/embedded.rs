//! Async device runner for firmware: drives a [`Device`] over any
//! `embedded_io_async::Read + Write` transport, with timers from embassy-time.
//! `no_std`, no allocator.
//!
//! The application lends the runner four small things:
//!
//! - a [`Connector`] that opens a transport to the server when the engine asks
//!   (a TCP socket of embassy-net, a UART, a BLE link);
//! - a [`WakeSource`] that yields what happens on the device: a push arrived,
//!   the user pressed "synchronize", a compliance event, the status of a long
//!   task (typically the receiving end of an `embassy_sync::channel::Channel`);
//! - a [`SnapshotStore`] with two slots for the engine's persistent state;
//! - a [`Handler`] that runs tasks, cancels them and applies policies.
//!
//! # Example
//!
//! ```ignore
//! let mut runner = Runner::new(TcpConnector::new(stack), inbox, FlashSlots::new(flash), Agent);
//! let mut snap = [0u8; Device::<16, 4>::SNAPSHOT_MAX];
//! let mut device: Device = runner.restore(config, &mut snap).await?;
//! runner.run(&mut device, &mut snap).await?;
//! ```
//!
//! # Run loop
//!
//! 1. Drain the engine's events: persist each snapshot (awaited before anything
//!    else happens), run tasks and policies through the [`Handler`], note a
//!    wanted connect or disconnect.
//! 2. On `Connect`, open a transport through the [`Connector`] (bounded by the
//!    engine's connect timeout) and enter the session loop; on `Disconnect`,
//!    drop the transport and leave it.
//! 3. In a session, write every frame the engine has, then wait for whichever
//!    comes first: bytes from the transport, a [`Wake`], or the engine's next
//!    deadline.
//! 4. When idle, wait for a [`Wake`] or the next deadline.
//!
//! # Requirements on the transport
//!
//! `read` must be cancel-safe (dropping an unfinished `read` loses no bytes),
//! as for embassy-net's `TcpSocket` or a ring-buffered UART: the runner stops
//! waiting for bytes when a wake or a deadline comes first. [`WakeSource::wait`]
//! must be cancel-safe for the same reason (`Channel::receive` is). A write that
//! is still blocked when the engine's next deadline passes is abandoned and the
//! transport dropped: half a frame on the wire cannot be taken back. A
//! `write` that returns `Ok(0)`, or a `read` or `write` that claims more
//! bytes than it was given, counts as a broken transport (the session
//! fails and the engine retries with backoff), as an error does.
//!
//! # Why no `embassy-futures`
//!
//! The runner needs one two-way `select` (bytes or a wake) under a deadline;
//! embassy-time's `with_deadline` gives the deadline, and the select is the ten
//! lines of `select` below, so the crate does not pull in another dependency.

use core::future::{poll_fn, Future};
use core::pin::pin;
use core::task::Poll;

use embassy_time::with_deadline;
use embedded_io_async::{Read, Write};

use crate::device::{
    counter_newer, snapshot_counter, Device, DeviceConfig, DeviceError, Event, SessionError,
};
use crate::device::{SnapshotError, DEFAULT_INFLIGHT, DEFAULT_OUTBOX};
use crate::log::{debug, warning};
use crate::time::Instant;
use crate::wire::{ComplianceEvent, Policy, PolicyOutcome, SyncTrigger, Task, TaskId};
use crate::wire::{TaskStatus, MAX_FRAME};

/// Bytes read from the transport at once. Any size works: the engine's
/// decoder reassembles frames from chunks of any length.
pub const RX_CHUNK: usize = 128;

/// Times [`Runner::restore`] reads the slots before it gives up on a slot
/// that reads back differently each time.
const RESTORE_ROUNDS: usize = 3;

/// A snapshot buffer large enough for the default capacities.
pub const DEFAULT_SNAPSHOT_BUF: usize = Device::<DEFAULT_OUTBOX, DEFAULT_INFLIGHT>::SNAPSHOT_MAX;

/// Opens a transport to the server.
// reason: firmware executors run tasks on one thread; a `Send` bound on these
// futures would shut out transports that borrow a `!Send` network stack.
#[allow(async_fn_in_trait)]
pub trait Connector {
    /// The open transport. It may borrow from the connector (socket buffers).
    type Connection<'a>: Read + Write
    where
        Self: 'a;
    /// Why a transport could not be opened.
    type Error;

    /// Opens a transport. The runner stops waiting when the engine's connect
    /// timeout passes, so this need not time out by itself.
    async fn connect(&mut self) -> Result<Self::Connection<'_>, Self::Error>;
}

/// Something the application tells the engine, delivered through a
/// [`WakeSource`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Wake {
    /// A "sync now" push arrived.
    Push,
    /// The user pressed "synchronize".
    ManualSync,
    /// A compliance event happened; it is queued and retried until acked.
    Compliance(ComplianceEvent),
    /// Progress of a running task (best effort).
    Progress {
        /// Which task.
        task: TaskId,
        /// 0..=100 when known.
        percent: Option<u8>,
    },
    /// The final status of a task that [`Handler::execute`] left running.
    TaskStatus {
        /// Which task.
        task: TaskId,
        /// Its final status.
        status: TaskStatus,
    },
    /// The outcome of a policy that [`Handler::apply_policy`] left pending.
    PolicyApplied {
        /// The policy's version.
        version: u32,
        /// How it went.
        outcome: PolicyOutcome,
    },
    /// Stop the runner: [`Runner::run`] returns `Ok(())`. An open session is
    /// closed (the engine counts it as failed and retries on the next run).
    Shutdown,
}

/// Where [`Wake`]s come from: a push receiver, buttons, the task executors.
// reason: as for `Connector`.
#[allow(async_fn_in_trait)]
pub trait WakeSource {
    /// Waits for the next wake. Must be cancel-safe: the runner drops this
    /// future when bytes or a deadline come first, and no wake may be lost.
    async fn wait(&mut self) -> Wake;
}

/// Two storage slots for the engine's snapshots (see
/// [`Device::snapshot_slot`]). Writes alternate between them, so a write torn
/// by power loss leaves the previous snapshot intact.
// reason: as for `Connector`.
#[allow(async_fn_in_trait)]
pub trait SnapshotStore {
    /// Why a slot could not be read or written.
    type Error;

    /// Reads slot `slot` (0 or 1) into `buf`; returns the bytes read (0 for a
    /// slot never written). Whatever is read is checked by its CRC.
    async fn read(&mut self, slot: usize, buf: &mut [u8]) -> Result<usize, Self::Error>;

    /// Replaces slot `slot` (0 or 1) with `bytes`. Returns once they are
    /// durable: the engine sends nothing until then.
    async fn write(&mut self, slot: usize, bytes: &[u8]) -> Result<(), Self::Error>;
}

/// The application's side of the engine's events.
// reason: as for `Connector`.
#[allow(async_fn_in_trait)]
pub trait Handler {
    /// Runs `task` (it is handed out once, ever). Return its final status when
    /// it is done at once; return `None` for a long task and send
    /// [`Wake::TaskStatus`] when it ends. The runner reads and writes nothing
    /// while this runs, so start long work elsewhere and return.
    async fn execute(&mut self, task: Task) -> Option<TaskStatus>;

    /// The server asks to stop `task`. Return `Cancelled` (or its final status
    /// if it already ended), or `None` to report later with [`Wake::TaskStatus`].
    async fn cancel(&mut self, task: TaskId) -> Option<TaskStatus>;

    /// Applies a newer policy. Return how it went, or `None` to report later
    /// with [`Wake::PolicyApplied`].
    async fn apply_policy(&mut self, policy: &Policy) -> Option<PolicyOutcome>;

    /// A sync completed. Does nothing unless overridden.
    fn sync_done(&mut self, trigger: SyncTrigger) {
        let _ = trigger;
    }

    /// A sync failed; the engine retries by itself. Does nothing unless
    /// overridden.
    fn sync_failed(&mut self, error: SessionError) {
        let _ = error;
    }

    /// The engine refused an input (a full outbox, a task that is not
    /// running). Send it again later through the [`WakeSource`] if it still
    /// matters. Does nothing unless overridden.
    fn rejected(&mut self, input: Wake, error: DeviceError) {
        let _ = (input, error);
    }
}

/// Why [`Runner::run`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum RunError<E> {
    /// A snapshot could not be written. The engine must not go on before it
    /// is: the next [`Runner::run`] writes it first.
    Storage(E),
    /// The snapshot buffer is shorter than [`Device::SNAPSHOT_MAX`].
    BufferTooSmall {
        /// Bytes the buffer needs.
        needed: usize,
    },
}

impl<E: core::fmt::Debug> core::fmt::Display for RunError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RunError::Storage(e) => write!(f, "a snapshot could not be written: {e:?}"),
            RunError::BufferTooSmall { needed } => {
                write!(
                    f,
                    "the snapshot buffer is too small: it needs {needed} bytes"
                )
            }
        }
    }
}

impl<E: core::fmt::Debug> core::error::Error for RunError<E> {}

/// Why [`Runner::restore`] could not produce an engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum RestoreError<E> {
    /// A slot could not be read.
    Storage(E),
    /// The newest valid snapshot does not fit this configuration (another
    /// device, another enrollment generation, smaller capacities).
    Snapshot(SnapshotError),
    /// The snapshot buffer is shorter than [`Device::SNAPSHOT_MAX`].
    BufferTooSmall {
        /// Bytes the buffer needs.
        needed: usize,
    },
}

impl<E: core::fmt::Debug> core::fmt::Display for RestoreError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RestoreError::Storage(e) => write!(f, "a snapshot slot could not be read: {e:?}"),
            RestoreError::Snapshot(e) => write!(f, "the snapshot could not be restored: {e}"),
            RestoreError::BufferTooSmall { needed } => {
                write!(
                    f,
                    "the snapshot buffer is too small: it needs {needed} bytes"
                )
            }
        }
    }
}

impl<E: core::fmt::Debug> core::error::Error for RestoreError<E> {}

/// The runner: owns the application's four parts and drives a [`Device`].
///
/// Its futures hold one transmit buffer of [`MAX_FRAME`] bytes and one receive
/// buffer of [`RX_CHUNK`] bytes; the snapshot buffer is the caller's.
#[derive(Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Runner<C, W, S, H> {
    /// Opens transports.
    pub connector: C,
    /// Yields application inputs.
    pub wake: W,
    /// Holds snapshots.
    pub store: S,
    /// Runs tasks and policies.
    pub handler: H,
    unsaved: bool,
}

impl<C, W, S, H> Runner<C, W, S, H>
where
    C: Connector,
    W: WakeSource,
    S: SnapshotStore,
    H: Handler,
{
    /// A runner over these parts.
    pub fn new(connector: C, wake: W, store: S, handler: H) -> Self {
        Self {
            connector,
            wake,
            store,
            handler,
            unsaved: false,
        }
    }

    /// The engine from the newer valid snapshot of the two slots, or a new one
    /// when neither holds one (first boot, or both destroyed). `buf` must hold
    /// [`Device::SNAPSHOT_MAX`] bytes.
    ///
    /// A slot that fails its check (CRC, length, format) is read once more,
    /// so that a read that came back corrupted once, without an error, is
    /// not taken for a torn write; the chosen slot is read again before it
    /// is restored.
    ///
    /// Known shortcoming: a slot that fails its check twice is taken for a
    /// torn write, so storage that returns the same corrupted bytes of the
    /// newer slot on both reads without an error (bits gone bad in the
    /// medium, a fault that repeats) falls back to the older snapshot, and a
    /// task run after it can run a second time if the server had not
    /// recorded its status. The two cases look the same from the bytes. A
    /// storage error is returned, never taken for a torn write.
    pub async fn restore<const O: usize, const I: usize>(
        &mut self,
        cfg: DeviceConfig,
        buf: &mut [u8],
    ) -> Result<Device<O, I>, RestoreError<S::Error>> {
        let needed = Device::<O, I>::SNAPSHOT_MAX;
        let buf = buf
            .get_mut(..needed)
            .ok_or(RestoreError::BufferTooSmall { needed })?;
        // The buffer holds one slot at a time, so the chosen slot is read
        // again unless it was the last one read. A read that comes back
        // different (a transient fault) starts the choice over, a bounded
        // number of times, rather than passing for a snapshot that does not
        // fit this configuration.
        let mut n = 0;
        for _ in 0..RESTORE_ROUNDS {
            let mut best: Option<(u64, usize)> = None;
            for slot in 0..2 {
                // A slot that fails its check is read once more: a read
                // corrupted once is not taken for a torn write.
                let mut valid = Err(SnapshotError::TooShort);
                for _ in 0..2 {
                    let read = self.store.read(slot, buf).await;
                    n = read.map_err(RestoreError::Storage)?.min(needed);
                    valid = snapshot_counter(&buf[..n]);
                    if valid.is_ok() {
                        break;
                    }
                }
                if let Ok(counter) = valid {
                    // Across the counter's wrap, as `pick_latest` compares.
                    if best.is_none_or(|(c, _)| counter_newer(counter, c)) {
                        best = Some((counter, slot));
                    }
                }
            }
            let Some((counter, slot)) = best else {
                debug!("no valid snapshot: first boot");
                return Ok(Device::new(cfg, now()));
            };
            if slot != 1 {
                let read = self.store.read(slot, buf).await;
                n = read.map_err(RestoreError::Storage)?.min(needed);
            }
            if snapshot_counter(&buf[..n]) == Ok(counter) {
                break;
            }
            warning!("slot {} read differently twice: reading both again", slot);
        }
        Device::restore(cfg, &buf[..n], now()).map_err(RestoreError::Snapshot)
    }

    /// Drives `device` until a [`Wake::Shutdown`] or a storage error. `buf`
    /// holds snapshots on their way to storage: at least
    /// [`Device::SNAPSHOT_MAX`] bytes.
    pub async fn run<const O: usize, const I: usize>(
        &mut self,
        device: &mut Device<O, I>,
        buf: &mut [u8],
    ) -> Result<(), RunError<S::Error>> {
        let needed = Device::<O, I>::SNAPSHOT_MAX;
        if buf.len() < needed {
            return Err(RunError::BufferTooSmall { needed });
        }
        let Runner {
            connector,
            wake,
            store,
            handler,
            unsaved,
        } = self;
        let mut cx = Parts {
            wake,
            store,
            handler,
            unsaved,
            buf,
        };
        if *cx.unsaved {
            cx.persist(device).await?;
        }
        device.handle_timeout(now());
        let mut connect = false;
        loop {
            connect |= cx.drain(device).await?.connect;
            if core::mem::take(&mut connect) {
                if let Some(mut conn) = open(connector, device).await {
                    let step = match cx.session(device, &mut conn).await {
                        Ok(step) => step,
                        Err(e) => {
                            // The transport is dropped on return: the engine
                            // must not wait out its timers on a session that
                            // can no longer answer. Its events wait for the
                            // next `run`, which writes the snapshot first.
                            device.disconnected(now());
                            return Err(e);
                        }
                    };
                    match step {
                        Step::Stop => return Ok(()),
                        Step::Connect => connect = true,
                        Step::Idle => {}
                    }
                }
                continue;
            }
            match with_deadline(deadline(device), cx.wake.wait()).await {
                Ok(w) => {
                    if cx.apply(device, w) {
                        return Ok(());
                    }
                }
                Err(_) => device.handle_timeout(now()),
            }
        }
    }
}

/// What the events drained in one go asked for.
#[derive(Default)]
struct Flow {
    connect: bool,
    disconnect: bool,
}

/// How a session ended.
#[derive(PartialEq, Eq)]
enum Step {
    Idle,
    Connect,
    Stop,
}

/// The runner's parts other than the connector, borrowed apart from it so that
/// an open connection (which may borrow the connector) can live beside them.
struct Parts<'a, W, S, H> {
    wake: &'a mut W,
    store: &'a mut S,
    handler: &'a mut H,
    unsaved: &'a mut bool,
    buf: &'a mut [u8],
}

impl<W: WakeSource, S: SnapshotStore, H: Handler> Parts<'_, W, S, H> {
    async fn persist<const O: usize, const I: usize>(
        &mut self,
        device: &Device<O, I>,
    ) -> Result<(), RunError<S::Error>> {
        *self.unsaved = true;
        let needed = Device::<O, I>::SNAPSHOT_MAX;
        let n = device
            .snapshot(self.buf)
            .map_err(|_| RunError::BufferTooSmall { needed })?;
        let slot = device.snapshot_slot();
        self.store
            .write(slot, &self.buf[..n])
            .await
            .map_err(RunError::Storage)?;
        *self.unsaved = false;
        Ok(())
    }

    /// Acts on every pending event; persists before polling the next one.
    async fn drain<const O: usize, const I: usize>(
        &mut self,
        device: &mut Device<O, I>,
    ) -> Result<Flow, RunError<S::Error>> {
        let mut flow = Flow::default();
        while let Some(ev) = device.poll_event() {
            match ev {
                Event::Persist => self.persist(device).await?,
                Event::Connect => flow.connect = true,
                Event::Disconnect => flow.disconnect = true,
                Event::Execute(task) => {
                    if let Some(status) = self.handler.execute(task).await {
                        let task = task.id;
                        self.apply(device, Wake::TaskStatus { task, status });
                    }
                }
                Event::Cancel(task) => {
                    if let Some(status) = self.handler.cancel(task).await {
                        self.apply(device, Wake::TaskStatus { task, status });
                    }
                }
                Event::ApplyPolicy { version } => {
                    let Some(policy) = device.pending_policy() else {
                        continue;
                    };
                    if let Some(outcome) = self.handler.apply_policy(policy).await {
                        self.apply(device, Wake::PolicyApplied { version, outcome });
                    }
                }
                Event::SyncDone { trigger } => self.handler.sync_done(trigger),
                Event::SyncFailed { error } => self.handler.sync_failed(error),
            }
        }
        Ok(flow)
    }

    /// Feeds one input to the engine; `true` for [`Wake::Shutdown`].
    fn apply<const O: usize, const I: usize>(
        &mut self,
        device: &mut Device<O, I>,
        input: Wake,
    ) -> bool {
        let now = now();
        let result = match &input {
            Wake::Push => {
                device.push_received(now);
                Ok(())
            }
            Wake::ManualSync => {
                device.manual_sync(now);
                Ok(())
            }
            Wake::Compliance(event) => device.raise_compliance(*event, now),
            Wake::Progress { task, percent } => device.task_progress(*task, *percent),
            Wake::TaskStatus { task, status } => device.task_status(*task, *status, now),
            Wake::PolicyApplied { version, outcome } => {
                device.policy_applied(*version, outcome.clone(), now)
            }
            Wake::Shutdown => return true,
        };
        if let Err(error) = result {
            warning!("input refused: {:?}", error);
            self.handler.rejected(input, error);
        }
        // A new want starts its sync now rather than at the next deadline.
        device.handle_timeout(now);
        false
    }

    /// Exchanges frames over `conn` until the engine asks to disconnect.
    async fn session<T: Read + Write, const O: usize, const I: usize>(
        &mut self,
        device: &mut Device<O, I>,
        conn: &mut T,
    ) -> Result<Step, RunError<S::Error>> {
        let mut tx = [0u8; MAX_FRAME];
        let mut rx = [0u8; RX_CHUNK];
        loop {
            let flow = self.drain(device).await?;
            if flow.disconnect {
                return Ok(if flow.connect {
                    Step::Connect
                } else {
                    Step::Idle
                });
            }
            if send(device, conn, &mut tx).await.is_err() {
                device.disconnected(now());
                continue;
            }
            let got = with_deadline(
                deadline(device),
                select(conn.read(&mut rx), self.wake.wait()),
            );
            match got.await {
                Ok(Either::Left(Ok(n))) if n > 0 => {
                    let Some(bytes) = rx.get(..n) else {
                        // More than the buffer holds: a broken transport.
                        warning!("transport read claims {} bytes", n);
                        device.disconnected(now());
                        continue;
                    };
                    // A session error is already in the engine's events.
                    let _ = device.handle_bytes(bytes, now());
                    // A transport that always has bytes ready wins every
                    // select: the deadline is checked here too.
                    if embassy_time::Instant::now() >= deadline(device) {
                        device.handle_timeout(now());
                    }
                }
                Ok(Either::Left(_)) => {
                    debug!("transport closed");
                    device.disconnected(now());
                }
                Ok(Either::Right(w)) => {
                    if self.apply(device, w) {
                        device.disconnected(now());
                        self.drain(device).await?;
                        return Ok(Step::Stop);
                    }
                }
                Err(_) => device.handle_timeout(now()),
            }
        }
    }
}

/// Opens a transport within the engine's connect timeout and tells the engine.
async fn open<'c, C: Connector, const O: usize, const I: usize>(
    connector: &'c mut C,
    device: &mut Device<O, I>,
) -> Option<C::Connection<'c>> {
    match with_deadline(deadline(device), connector.connect()).await {
        Ok(Ok(conn)) => {
            device.connected(now());
            Some(conn)
        }
        Ok(Err(_)) => {
            debug!("connect failed");
            device.connect_failed(now());
            None
        }
        Err(_) => {
            debug!("connect timed out");
            device.handle_timeout(now());
            device.connect_failed(now());
            None
        }
    }
}

/// Writes every frame the engine has; `Err` when the transport failed or a
/// write outlived the engine's next deadline.
async fn send<T: Write, const O: usize, const I: usize>(
    device: &mut Device<O, I>,
    conn: &mut T,
    tx: &mut [u8],
) -> Result<(), ()> {
    let at = deadline(device);
    let mut wrote = false;
    loop {
        match device.poll_transmit(tx) {
            Ok(Some(n)) => {
                let frame = tx.get(..n).ok_or(())?;
                with_deadline(at, write_all(conn, frame))
                    .await
                    .map_err(drop)??;
                wrote = true;
            }
            Ok(None) => break,
            Err(e) => {
                // Cannot happen with a MAX_FRAME buffer; drop the session
                // rather than spin on a frame that never goes out.
                warning!("frame not encodable: {:?}", e);
                return Err(());
            }
        }
    }
    if wrote {
        with_deadline(at, conn.flush())
            .await
            .map_err(drop)?
            .map_err(drop)?;
    }
    Ok(())
}

/// Writes all of `bytes`. A `write` that takes none of them (which
/// embedded-io's docs discourage but allow, and on which its own
/// `write_all` panics) or claims more than it was given fails the
/// transport, as an error does.
async fn write_all<T: Write>(conn: &mut T, mut bytes: &[u8]) -> Result<(), ()> {
    while !bytes.is_empty() {
        match conn.write(bytes).await {
            Ok(n) if n > 0 => bytes = bytes.get(n..).ok_or(())?,
            _ => return Err(()),
        }
    }
    Ok(())
}

/// The engine's clock: embassy-time's, in milliseconds since boot.
fn now() -> Instant {
    Instant::from_millis(embassy_time::Instant::now().as_millis())
}

/// The engine's next deadline on embassy-time's clock (never: `MAX`).
fn deadline<const O: usize, const I: usize>(device: &Device<O, I>) -> embassy_time::Instant {
    let ms = device.poll_timeout().map(Instant::as_millis);
    ms.and_then(embassy_time::Instant::try_from_millis)
        .unwrap_or(embassy_time::Instant::MAX)
}

enum Either<A, B> {
    Left(A),
    Right(B),
}

/// Waits for the first of two futures (polled in order) and drops the other.
async fn select<A: Future, B: Future>(a: A, b: B) -> Either<A::Output, B::Output> {
    let mut a = pin!(a);
    let mut b = pin!(b);
    poll_fn(move |cx| {
        if let Poll::Ready(x) = a.as_mut().poll(cx) {
            return Poll::Ready(Either::Left(x));
        }
        if let Poll::Ready(x) = b.as_mut().poll(cx) {
            return Poll::Ready(Either::Right(x));
        }
        Poll::Pending
    })
    .await
}
