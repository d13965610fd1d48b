//! An async server adapter over tokio.
//!
//! One engine task owns the [`Server`]. Every connection gets a task that
//! forwards the bytes it reads to the engine and writes what the engine sends
//! back; both directions go through bounded channels. The engine task runs
//! the server's timers on a [`ScaledClock`] it owns, hands push requests to a
//! [`PushSender`], and serves operator calls made through a clonable
//! [`ServerHandle`] while it runs.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use mdm_sync::adapters::push::UdpPushSender;
//! use mdm_sync::adapters::tokio::{serve, Builder};
//! use mdm_sync::server::{MemoryStore, Server, ServerConfig};
//! use mdm_sync::wire::{DeviceId, TaskKind};
//!
//! let seed = mdm_sync::adapters::os_seed()?;
//! let server = Server::new(ServerConfig::default(), MemoryStore::new(), [7; 32], seed);
//! let (handle, engine) = Builder::new(server, UdpPushSender::bind_loopback()?).spawn();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! tokio::spawn(serve(listener, handle.clone()));
//!
//! let secret = handle.enroll(DeviceId(1)).await.ok();
//! let task = handle.enqueue_task(DeviceId(1), TaskKind::Locate, Default::default()).await;
//! // ... later
//! handle.shutdown().await;
//! let server = engine.await;
//! # Ok(()) }
//! ```
//!
//! # Bounds
//!
//! - The engine's input channel (bytes read, connections opened and closed,
//!   operator calls) holds [`Builder::channel_capacity`] messages; readers
//!   wait when it is full, so a flood of input slows the readers down (each
//!   connection's reader holds at most one message it read). A connection's
//!   reader and writer run side by side: while its reader waits for room,
//!   what the engine sends the connection is still written.
//! - Each connection's output waits for its writer in one buffer of at most
//!   [`Builder::connection_capacity`] × 16 KiB, which the writer takes whole;
//!   so a burst of small frames counts by its bytes, however many flushes of
//!   the engine it took. The bound is never below the engine's largest
//!   first burst ([`ServerConfig::max_first_burst`](crate::server::ServerConfig::max_first_burst)),
//!   which the engine queues at once in answer to a proof and exempts from
//!   its own [`ServerConfig::max_pending_out`](crate::server::ServerConfig):
//!   a device's whole work goes out whatever the capacity
//!   (`tests/breaker24_tokio_first_burst.rs`: 1,500 tasks at capacity 1).
//!   The engine never waits on the buffer: a connection with more than that
//!   waiting is too slow to read and is closed, on top of `max_pending_out`.
//!   With the buffer being written, a connection holds at most twice that;
//!   an idle one holds no buffer.
//! - A write that stalls longer than [`Builder::write_timeout`] closes its
//!   connection.
//! - A connection closed as too slow, or whose transport broke (a write or a
//!   read failed), is reported with
//!   [`Server::connection_dropped`](crate::server::Server::connection_dropped):
//!   output the engine handed over may be lost, so a device with tasks open
//!   gets a push. An end of input is a plain close.
//! - The engine task waits only for its input channel and its timers, never
//!   on one connection's reader or writer.

use core::time::Duration as WallDuration;
use std::boxed::Box;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::vec::Vec;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;

use super::clock::{Clock, ScaledClock};
use super::push::PushSender;
use crate::auth::Secret;
// Host-side adapters log through `log` even with `defmt` on (see blocking.rs).
use crate::server::{
    ConnId, DeviceView, FleetStore, FleetView, PushToken, Server, ServerError, ServerEvent,
    TaskOptions, TaskRecord, TaskState,
};
use crate::time::Instant;
use crate::wire::{DeviceId, Setting, TaskId, TaskKind};
use ::log::{debug, warn as warning};

/// Bytes taken from the engine per `poll_transmit` call.
const OUT_CHUNK: usize = 16 * 1024;
/// Messages handled per wake-up before output is flushed.
const BATCH: usize = 256;

/// A callback that sees every server event on the engine task.
pub type EventHook = Box<dyn FnMut(&ServerEvent, Instant) + Send>;

type Call<S> = Box<dyn FnOnce(&mut Server<S>, Instant) + Send>;
type OpenReply<S> = oneshot::Sender<Result<ConnId, ServerError<<S as FleetStore>::Error>>>;

enum Msg<S: FleetStore> {
    Open {
        out: Arc<Output>,
        reply: OpenReply<S>,
    },
    Bytes {
        conn: ConnId,
        data: Vec<u8>,
    },
    Closed {
        conn: ConnId,
        /// The transport broke (a write failed or stalled, or a read
        /// failed): output taken from the engine may not have arrived.
        broke: bool,
    },
    Call(Call<S>),
    Shutdown,
}

/// Why an operator call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallError<E> {
    /// The engine task has stopped.
    Stopped,
    /// The engine refused the call.
    Server(ServerError<E>),
}

impl<E: core::fmt::Debug> core::fmt::Display for CallError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CallError::Stopped => f.write_str("server engine stopped"),
            CallError::Server(e) => write!(f, "server refused: {e}"),
        }
    }
}

impl<E: core::fmt::Debug> core::error::Error for CallError<E> {}

/// Configures and starts the engine task.
pub struct Builder<S: FleetStore, P> {
    server: Server<S>,
    push: P,
    clock: ScaledClock,
    hook: Option<EventHook>,
    capacity: usize,
    conn_capacity: usize,
    write_timeout: WallDuration,
    read_buf: usize,
}

impl<S, P> Builder<S, P>
where
    S: FleetStore + Send + 'static,
    S::Error: Send + 'static,
    P: PushSender + Send + 'static,
{
    /// An engine for `server`, sending pushes through `push`, on a real-time
    /// clock that starts now.
    pub fn new(server: Server<S>, push: P) -> Self {
        Self {
            server,
            push,
            clock: ScaledClock::new(),
            hook: None,
            capacity: 1024,
            conn_capacity: 32,
            write_timeout: WallDuration::from_secs(30),
            read_buf: 4096,
        }
    }

    /// The clock the engine reads (e.g. a sped-up one for a simulation). The
    /// server's stored instants are on this clock.
    pub fn clock(mut self, clock: ScaledClock) -> Self {
        self.clock = clock;
        self
    }

    /// A callback for every server event, run on the engine task (keep it short).
    pub fn on_event(mut self, hook: impl FnMut(&ServerEvent, Instant) + Send + 'static) -> Self {
        self.hook = Some(Box::new(hook));
        self
    }

    /// Capacity of the engine's input channel (default 1024, at least 1).
    pub fn channel_capacity(mut self, n: usize) -> Self {
        self.capacity = n.max(1);
        self
    }

    /// Output waiting for one connection's writer before the connection
    /// counts as too slow, in units of 16 KiB (default 32: 512 KiB; at least 1).
    /// Never less than the server's largest first burst
    /// ([`ServerConfig::max_first_burst`](crate::server::ServerConfig::max_first_burst)).
    pub fn connection_capacity(mut self, n: usize) -> Self {
        self.conn_capacity = n.max(1);
        self
    }

    /// How long one write to a connection may stall (wall time, default 30 s).
    pub fn write_timeout(mut self, t: WallDuration) -> Self {
        self.write_timeout = t;
        self
    }

    /// Starts the engine task on the current tokio runtime. The task ends
    /// after [`ServerHandle::shutdown`] (or when every handle and connection
    /// is gone) and gives the server back.
    pub fn spawn(self) -> (ServerHandle<S>, JoinHandle<Server<S>>) {
        let (tx, rx) = mpsc::channel(self.capacity);
        // Never under a first burst, which the engine queues at once.
        let out_limit = (self.conn_capacity.saturating_mul(OUT_CHUNK))
            .max(self.server.config().max_first_burst());
        let handle = ServerHandle {
            tx,
            clock: self.clock,
            write_timeout: self.write_timeout,
            read_buf: self.read_buf,
        };
        let engine = Engine {
            server: self.server,
            push: self.push,
            clock: self.clock,
            hook: self.hook,
            rx,
            conns: HashMap::new(),
            out_limit,
            buf: std::vec![0; OUT_CHUNK],
        };
        (handle, tokio::spawn(engine.run()))
    }
}

/// Operator and transport access to a running engine. Cheap to clone.
pub struct ServerHandle<S: FleetStore> {
    tx: mpsc::Sender<Msg<S>>,
    clock: ScaledClock,
    write_timeout: WallDuration,
    read_buf: usize,
}

impl<S: FleetStore> Clone for ServerHandle<S> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            clock: self.clock,
            write_timeout: self.write_timeout,
            read_buf: self.read_buf,
        }
    }
}

impl<S> ServerHandle<S>
where
    S: FleetStore + Send + 'static,
    S::Error: Send + 'static,
{
    /// The engine's current time.
    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    /// The engine's clock.
    pub fn clock(&self) -> ScaledClock {
        self.clock
    }

    /// Runs `f` on the engine task with the server and the current time, and
    /// returns its result. Everything the call queues (frames, pushes, events)
    /// goes out right after it.
    pub async fn call<R, F>(&self, f: F) -> Result<R, CallError<S::Error>>
    where
        R: Send + 'static,
        F: FnOnce(&mut Server<S>, Instant) -> R + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let call: Call<S> = Box::new(move |server, now| {
            let _ = reply.send(f(server, now));
        });
        self.tx
            .send(Msg::Call(call))
            .await
            .map_err(|_| CallError::Stopped)?;
        answer.await.map_err(|_| CallError::Stopped)
    }

    /// Like [`call`](Self::call), for engine calls that return a `Result`.
    async fn try_call<R, F>(&self, f: F) -> Result<R, CallError<S::Error>>
    where
        R: Send + 'static,
        F: FnOnce(&mut Server<S>, Instant) -> Result<R, ServerError<S::Error>> + Send + 'static,
    {
        self.call(f).await?.map_err(CallError::Server)
    }

    /// Enrolls a device; returns the secret to provision on it.
    pub async fn enroll(&self, device: DeviceId) -> Result<Secret, CallError<S::Error>> {
        self.try_call(move |s, now| s.enroll(device, now)).await
    }

    /// Retires a device for good (see [`Server::retire`]): its open tasks
    /// end dropped, its connection closes, its secret stops working.
    pub async fn retire(&self, device: DeviceId) -> Result<(), CallError<S::Error>> {
        self.try_call(move |s, now| s.retire(device, now)).await
    }

    /// Queues a task (see [`Server::enqueue_task`]).
    pub async fn enqueue_task(
        &self,
        device: DeviceId,
        kind: TaskKind,
        opts: TaskOptions,
    ) -> Result<TaskId, CallError<S::Error>> {
        self.try_call(move |s, now| s.enqueue_task(device, kind, opts, now))
            .await
    }

    /// The push service refused `device`'s token `token` for good, an answer
    /// that came after the push was handed over (see
    /// [`Server::push_token_rejected`]): the store drops it if it still
    /// holds that token. Returns whether it did.
    pub async fn push_token_rejected(
        &self,
        device: DeviceId,
        token: &str,
    ) -> Result<bool, CallError<S::Error>> {
        let token = PushToken::try_from(token).unwrap_or_default();
        self.try_call(move |s, _| s.push_token_rejected(device, &token))
            .await
    }

    /// Cancels a task (see [`Server::cancel_task`]).
    pub async fn cancel_task(&self, task: TaskId) -> Result<TaskState, CallError<S::Error>> {
        self.try_call(move |s, now| s.cancel_task(task, now)).await
    }

    /// Assigns a new policy version; returns it (see [`Server::assign_policy`]).
    pub async fn assign_policy(
        &self,
        device: DeviceId,
        settings: Vec<Setting>,
    ) -> Result<u32, CallError<S::Error>> {
        self.try_call(move |s, now| s.assign_policy(device, &settings, now))
            .await
    }

    /// The whole fleet in numbers.
    pub async fn fleet_view(&self) -> Result<FleetView, CallError<S::Error>> {
        self.try_call(|s, _| s.fleet_view()).await
    }

    /// One device as the console shows it.
    pub async fn device_view(&self, device: DeviceId) -> Result<DeviceView, CallError<S::Error>> {
        self.try_call(move |s, _| s.device_view(device)).await
    }

    /// One task's record.
    pub async fn task(&self, task: TaskId) -> Result<Option<TaskRecord>, CallError<S::Error>> {
        self.try_call(move |s, _| s.task(task)).await
    }

    /// Stops the engine task: every connection is closed and the task's
    /// `JoinHandle` yields the server. Harmless if it already stopped.
    pub async fn shutdown(&self) {
        let _ = self.tx.send(Msg::Shutdown).await;
    }

    /// Serves one accepted byte stream (TCP, TLS, Unix socket, serial...)
    /// until either side closes it. Fails with `Server(Busy)` at the
    /// session limit, in which case the stream is dropped.
    pub async fn attach<T>(&self, stream: T) -> Result<ConnId, CallError<S::Error>>
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let out = Arc::new(Output::default());
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Msg::Open {
                out: out.clone(),
                reply,
            })
            .await
            .map_err(|_| CallError::Stopped)?;
        let conn = answer
            .await
            .map_err(|_| CallError::Stopped)?
            .map_err(CallError::Server)?;
        let link = Link {
            conn,
            out,
            engine: self.tx.clone(),
            write_timeout: self.write_timeout,
            read_buf: self.read_buf,
        };
        tokio::spawn(link.run(stream));
        Ok(conn)
    }
}

/// Accepts TCP connections and attaches each to the engine, with Nagle's
/// algorithm off. Returns when the engine stops. A failed `accept` (out of
/// file descriptors, a connection reset before it was accepted) is logged
/// and retried after 10 ms, so a burst of errors cannot spin the loop.
pub async fn serve<S>(listener: TcpListener, handle: ServerHandle<S>)
where
    S: FleetStore + Send + 'static,
    S::Error: Send + 'static,
{
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warning!("accept failed: {}", e);
                ::tokio::time::sleep(WallDuration::from_millis(10)).await;
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            debug!("set_nodelay failed: {}", e);
        }
        match handle.attach(stream).await {
            Ok(_) => {}
            Err(CallError::Stopped) => return,
            Err(CallError::Server(e)) => debug!("connection refused: {:?}", e),
        }
    }
}

/// Output for one connection: what the engine queued and the connection's
/// writer has not taken yet. The engine never waits on it.
#[derive(Default)]
struct Output {
    state: Mutex<Waiting>,
    /// Wakes the writer when there is more, or when the engine let go.
    wake: Notify,
}

#[derive(Default)]
struct Waiting {
    bytes: Vec<u8>,
    /// The engine let go of the connection.
    let_go: bool,
}

impl Output {
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        // Nothing panics while it is held; a poisoned lock still holds sound data.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `bytes` for the writer; false, and nothing queued, when more
    /// than `limit` bytes would then wait.
    fn push(&self, bytes: &[u8], limit: usize) -> bool {
        {
            let mut w = self.lock();
            if w.bytes.len().saturating_add(bytes.len()) > limit {
                return false;
            }
            w.bytes.extend_from_slice(bytes);
        }
        self.wake.notify_one();
        true
    }

    /// Everything waiting (its buffer goes with it: an idle connection
    /// holds none), and whether the engine has let go.
    fn take(&self) -> (Vec<u8>, bool) {
        let mut w = self.lock();
        (core::mem::take(&mut w.bytes), w.let_go)
    }
}

/// The engine's hold on a connection's output: dropping it (closing the
/// connection) lets the writer finish what waits and shut the stream.
struct Outlet(Arc<Output>);

impl Drop for Outlet {
    fn drop(&mut self) {
        self.0.lock().let_go = true;
        self.0.wake.notify_one();
    }
}

/// One connection's task: reads go to the engine, the engine's bytes are written.
struct Link<S: FleetStore> {
    conn: ConnId,
    out: Arc<Output>,
    engine: mpsc::Sender<Msg<S>>,
    write_timeout: WallDuration,
    read_buf: usize,
}

/// How a connection's reading half ended.
enum ReadEnd {
    /// The peer's end of input, reported to the engine.
    Eof,
    /// A read failed; not reported yet.
    Failed,
    /// The engine has stopped.
    Stopped,
}

impl<S: FleetStore> Link<S> {
    /// Reads and writes side by side, as two futures of one task: the reader
    /// may wait for room in the engine's input channel (full during a flood
    /// from any peer) while the writer goes on writing what the engine sends.
    /// (Were the writer to wait too, what the engine sends would pile up until
    /// the connection counted as too slow.) The reader holds at most one
    /// message it has read.
    ///
    /// Known shortcoming: once the engine lets go of a connection, its reader
    /// still reads (and the engine drops what it reads) until the writer has
    /// written what was left, each write bounded by `write_timeout`.
    async fn run<T: AsyncRead + AsyncWrite>(self, stream: T) {
        let Link {
            conn,
            out,
            engine,
            write_timeout,
            read_buf,
        } = self;
        let (mut rd, mut wr) = tokio::io::split(stream);
        // True once the engine let go and everything queued was written;
        // false when a write failed or stalled past `write_timeout`.
        let writer = async {
            loop {
                let (bytes, let_go) = out.take();
                if !bytes.is_empty() {
                    let write = tokio::time::timeout(write_timeout, wr.write_all(&bytes));
                    if !matches!(write.await, Ok(Ok(()))) {
                        return false;
                    }
                } else if let_go {
                    let _ = tokio::time::timeout(write_timeout, wr.shutdown()).await;
                    return true;
                } else {
                    out.wake.notified().await;
                }
            }
        };
        let engine = &engine;
        let reader = async move {
            let mut buf = std::vec![0u8; read_buf];
            loop {
                let (msg, end) = match rd.read(&mut buf).await {
                    Ok(0) => (Msg::Closed { conn, broke: false }, true),
                    Ok(n) => {
                        let data = buf[..n].to_vec();
                        (Msg::Bytes { conn, data }, false)
                    }
                    Err(_) => return ReadEnd::Failed,
                };
                if engine.send(msg).await.is_err() {
                    return ReadEnd::Stopped;
                }
                if end {
                    return ReadEnd::Eof;
                }
            }
        };
        tokio::pin!(writer, reader);
        let report = tokio::select! {
            // The engine let go (nothing to report), or a write failed.
            written = &mut writer => !written,
            end = &mut reader => match end {
                // At the peer's end of input (a half-close) the engine was
                // told at once (the device is offline: new work goes by
                // push), and it hands over what it still had for the peer
                // before it lets go of the connection; that is written for
                // at most `write_timeout`. So an answer such as a
                // version-mismatch error is not lost because the peer
                // stopped sending first.
                ReadEnd::Eof => {
                    let _ = tokio::time::timeout(write_timeout, &mut writer).await;
                    false
                }
                ReadEnd::Failed => true,
                ReadEnd::Stopped => false,
            },
        };
        if report {
            let _ = engine.send(Msg::Closed { conn, broke: true }).await;
        }
    }
}

/// The engine task's state.
struct Engine<S: FleetStore, P> {
    server: Server<S>,
    push: P,
    clock: ScaledClock,
    hook: Option<EventHook>,
    rx: mpsc::Receiver<Msg<S>>,
    conns: HashMap<ConnId, Outlet>,
    /// Most bytes waiting for one connection's writer.
    out_limit: usize,
    buf: Vec<u8>,
}

impl<S: FleetStore, P: PushSender> Engine<S, P> {
    async fn run(mut self) -> Server<S> {
        // What the server queued before it was handed over (the pushes of
        // `Server::recover`, say) goes out now, not at the first message or
        // timer (a push's rate-limit check, a minute later).
        self.flush();
        loop {
            let msg = match self.server.poll_timeout() {
                Some(at) => {
                    let wait = self.clock.wall_until(at);
                    tokio::select! {
                        msg = self.rx.recv() => msg,
                        () = tokio::time::sleep(wait) => {
                            self.timers();
                            self.flush();
                            continue;
                        }
                    }
                }
                None => self.rx.recv().await,
            };
            if !self.handle_batch(msg) {
                break;
            }
            self.timers();
            self.flush();
        }
        self.conns.clear(); // closes every connection
        self.flush();
        self.server
    }

    /// Handles `first` and whatever else is waiting (up to a batch); false
    /// when the engine must stop. A message is taken off the channel only to
    /// be handled: the rest waits for the next batch.
    fn handle_batch(&mut self, first: Option<Msg<S>>) -> bool {
        let mut next = first;
        for handled in 1..=BATCH {
            match next {
                None | Some(Msg::Shutdown) => return false,
                Some(msg) => self.on_msg(msg),
            }
            if handled == BATCH {
                break;
            }
            match self.rx.try_recv() {
                Ok(msg) => next = Some(msg),
                Err(_) => break,
            }
        }
        true
    }

    fn on_msg(&mut self, msg: Msg<S>) {
        let now = self.clock.now();
        match msg {
            Msg::Open { out, reply } => {
                let opened = self.server.connection_opened(now);
                if let Ok(conn) = opened {
                    self.conns.insert(conn, Outlet(out));
                }
                let _ = reply.send(opened);
            }
            Msg::Bytes { conn, data } => match self.server.handle_bytes(conn, &data, now) {
                Ok(()) => {}
                Err(ServerError::UnknownConnection) => {
                    self.conns.remove(&conn);
                }
                // The store's own failure (a full compliance log, a database
                // down) is the operator's to see; a peer's is routine.
                Err(ServerError::Store(e)) => {
                    warning!("connection {}: store refused: {:?}", conn.0, e)
                }
                Err(e) => debug!("connection {} failed: {:?}", conn.0, e),
            },
            Msg::Closed { conn, broke } => {
                // What the engine had for the peer goes out first (a
                // half-closed peer still reads).
                self.flush();
                self.close(conn, broke, now);
            }
            Msg::Call(call) => call(&mut self.server, now),
            Msg::Shutdown => {}
        }
    }

    /// Tells the engine `conn` closed. When the transport broke, or the peer
    /// read too slowly, output the engine handed over may be lost: the
    /// engine then asks the device back for its open tasks.
    fn close(&mut self, conn: ConnId, broke: bool, now: Instant) {
        self.conns.remove(&conn);
        if !broke {
            self.server.connection_closed(conn, now);
        } else if let Err(e) = self.server.connection_dropped(conn, now) {
            debug!("no push after closing {}: {:?}", conn.0, e);
        }
    }

    /// Runs the server's timers if one is due.
    fn timers(&mut self) {
        let now = self.clock.now();
        if self.server.poll_timeout().is_some_and(|at| at <= now) {
            if let Err(e) = self.server.handle_timeout(now) {
                warning!("server timers failed: {:?}", e);
            }
        }
    }

    /// Moves the engine's output to the connections, then handles its events.
    /// Never waits: a connection with too much waiting is closed instead.
    fn flush(&mut self) {
        let now = self.clock.now();
        while let Some((conn, n)) = self.server.poll_transmit(&mut self.buf) {
            let Some(out) = self.conns.get(&conn) else {
                continue; // the transport is already gone
            };
            if !out.0.push(&self.buf[..n], self.out_limit) {
                debug!("connection {} too slow; closing", conn.0);
                self.close(conn, true, now);
            }
        }
        while let Some(ev) = self.server.poll_event() {
            self.on_event(&ev);
            if let Some(hook) = self.hook.as_mut() {
                hook(&ev, now);
            }
        }
    }

    fn on_event(&mut self, ev: &ServerEvent) {
        match ev {
            ServerEvent::SendPush {
                device,
                platform,
                token,
            } => {
                match self.push.send_push(*device, *platform, token) {
                    Ok(()) => {}
                    // Refused for good: dropped, so that no push goes to it
                    // again and the device's next sync is asked for its token.
                    Err(e) if e.is_permanent() => {
                        debug!("push token of device {} refused ({}); dropped", device.0, e);
                        if let Err(e) = self.server.push_token_rejected(*device, token) {
                            debug!("dropping device {}'s token failed: {:?}", device.0, e);
                        }
                    }
                    Err(e) => debug!("push to device {} failed: {}", device.0, e),
                }
            }
            ServerEvent::Close { conn } => {
                self.conns.remove(conn);
            }
            _ => {}
        }
    }
}
