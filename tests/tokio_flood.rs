//! The tokio server adapter while the engine's input channel is full (a
//! flood from hostile peers, a burst of operator calls): every message
//! waiting is handled, and a well-behaved device on 127.0.0.1 syncs, gets
//! what the engine sends it while its own input waits its turn, runs its
//! task and is not closed as too slow.
#![cfg(feature = "tokio")]

use core::future::Future;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use core::task::Poll;
use core::time::Duration as Wall;
use std::sync::Arc;

use mdm_sync::adapters::blocking::{
    BlockingDevice, Execution, Handler, MemoryStorage, TaskUpdate, TcpConnector,
};
use mdm_sync::adapters::clock::ScaledClock;
use mdm_sync::adapters::tokio::{serve, Builder, ServerHandle};
use mdm_sync::device::{DeviceConfig, SessionError};
use mdm_sync::server::{MemoryStore, Server, ServerConfig, TaskState};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::{
    self, DeviceId, Platform, Policy, PolicyOutcome, Setting, Task, TaskId, TaskKind, TaskResult,
    TaskStatus, Up, MAX_FRAME,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const DEV: DeviceId = DeviceId(1);
/// The engine's input channel in the flood test: small, so that the flood
/// keeps it full and each operator call is handled in a batch of its own.
const CHANNEL: usize = 2;
/// Hostile peers writing at once; each opens at most `FLOOD_CONNS` connections.
const FLOODERS: usize = 8;
const FLOOD_CONNS: usize = 2_000;
/// Policies assigned to the device in one burst while its session is open.
/// Each is handled in a batch of its own (see `CHANNEL`), so each is
/// one flush of output for the connection: 300 flushes of a few bytes.
const BURST: i64 = 300;

/// What the test tells the device's application, and what it saw.
#[derive(Default)]
struct Control {
    /// Report progress of the running task once.
    progress: AtomicBool,
    /// Finish the running task.
    finish: AtomicBool,
    /// Stop the device's run loop.
    stop: AtomicBool,
    executed: AtomicUsize,
    newest_policy: AtomicU32,
    /// Syncs that failed (a dropped connection among them).
    failed: AtomicUsize,
    first_failure: std::sync::Mutex<Option<SessionError>>,
}

/// Runs one task until told to finish it, and keeps its session open
/// meanwhile (the engine lingers while a task runs).
struct Agent {
    ctl: Arc<Control>,
    running: Option<TaskId>,
    now: Instant,
}

impl Handler for Agent {
    fn execute(&mut self, task: Task, _now: Instant) -> Execution {
        self.ctl.executed.fetch_add(1, Ordering::SeqCst);
        self.running = Some(task.id);
        Execution::Running
    }

    fn apply_policy(&mut self, policy: &Policy, _now: Instant) -> PolicyOutcome {
        self.ctl
            .newest_policy
            .fetch_max(policy.version, Ordering::SeqCst);
        PolicyOutcome::Applied
    }

    fn poll_update(&mut self, now: Instant) -> Option<TaskUpdate> {
        self.now = now;
        let task = self.running?;
        if self.ctl.finish.load(Ordering::SeqCst) {
            self.running = None;
            let status = TaskStatus::Succeeded {
                result: Some(TaskResult::Scan { threats: 0 }),
            };
            return Some(TaskUpdate::Finished { task, status });
        }
        if self.ctl.progress.swap(false, Ordering::SeqCst) {
            return Some(TaskUpdate::Progress {
                task,
                percent: Some(50),
            });
        }
        None
    }

    fn next_update(&self) -> Option<Instant> {
        // Look at the test's flags often while the task runs.
        self.running.map(|_| self.now + Duration::from_millis(10))
    }

    fn sync_failed(&mut self, error: SessionError, _now: Instant) {
        self.ctl.failed.fetch_add(1, Ordering::SeqCst);
        let mut first = self.ctl.first_failure.lock().unwrap();
        first.get_or_insert(error);
    }
}

/// One hostile peer: connects and writes `bytes` over and over, as fast as
/// the server reads, reconnecting whenever the server closes it.
async fn flood(addr: core::net::SocketAddr, bytes: Arc<Vec<u8>>, stop: Arc<AtomicBool>) {
    for _ in 0..FLOOD_CONNS {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(mut s) = TcpStream::connect(addr).await else {
            tokio::time::sleep(Wall::from_millis(1)).await;
            continue;
        };
        while !stop.load(Ordering::SeqCst) && s.write_all(&bytes).await.is_ok() {}
    }
}

/// 4 KiB of well-formed frames that no session in the handshake accepts.
fn frames() -> Vec<u8> {
    let mut frame = [0u8; MAX_FRAME];
    let progress = Up::Progress {
        task: TaskId(9),
        percent: Some(1),
    };
    let n = wire::frame::encode(&progress, &mut frame).unwrap();
    frame[..n].iter().copied().cycle().take(4096).collect()
}

/// A runtime with three workers (`block_in_place` needs more than one).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(3)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `scenario` on `rt` for at most 30 s.
fn within_30s<F: Future>(
    rt: &tokio::runtime::Runtime,
    scenario: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    rt.block_on(async { tokio::time::timeout(Wall::from_secs(30), scenario).await })
}

/// A server with no device yet.
fn server() -> Server<MemoryStore> {
    Server::new(
        ServerConfig::default(),
        MemoryStore::new(),
        [7; 32],
        [8; 32],
    )
}

/// Polls `f` every 20 ms until it holds; false if it never did in 10 s.
async fn eventually<F, Fut>(mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..500 {
        if f().await {
            return true;
        }
        tokio::time::sleep(Wall::from_millis(20)).await;
    }
    false
}

/// Holds the engine on a blocking operator call (as a long batch of work
/// would) until the returned sender is used or dropped; returns once the
/// engine is held.
async fn hold_engine(
    handle: &ServerHandle<MemoryStore>,
) -> (std::sync::mpsc::Sender<()>, tokio::task::JoinHandle<()>) {
    let (held, is_held) = tokio::sync::oneshot::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let handle = handle.clone();
    let hold = tokio::spawn(async move {
        let call = move |_: &mut Server<MemoryStore>, _: Instant| {
            let _ = held.send(());
            let _ = tokio::task::block_in_place(|| released.recv());
        };
        handle.call(call).await.unwrap();
    });
    is_held.await.unwrap();
    (release, hold)
}

/// Polls `call` (an operator call) once, so that it takes its place in the
/// engine's queue now, in program order, and lets it finish on its own task.
/// (Out of tokio's task budget, or a poll could return before queueing.)
async fn queue<T, F>(call: F) -> tokio::task::JoinHandle<T>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let mut call = Box::pin(tokio::task::unconstrained(call));
    let mut done = None;
    core::future::poll_fn(|cx| {
        if let Poll::Ready(out) = call.as_mut().poll(cx) {
            done = Some(out);
        }
        Poll::Ready(())
    })
    .await;
    match done {
        Some(out) => tokio::spawn(async move { out }),
        None => tokio::spawn(call),
    }
}

async fn task_state(handle: &ServerHandle<MemoryStore>, task: TaskId) -> Option<TaskState> {
    handle.task(task).await.unwrap().map(|r| r.state)
}

/// The device's connection takes a burst of output while its own next
/// message waits behind the burst in a flooded channel. It fails if the
/// connection's writer waits for its reader (the device gets nothing of the
/// burst while the waiting call holds the engine), or if the connection's
/// room is counted in flushes rather than bytes (it had room for 32): the
/// engine closes the connection as too slow, and the device's sync fails.
#[test]
fn a_flood_from_other_peers_does_not_drop_a_device_in_session() {
    let rt = runtime();
    let clock = ScaledClock::new();
    let ctl = Arc::new(Control::default());
    let stop_flood = Arc::new(AtomicBool::new(false));

    let (handle, addr, secret, t0, flooders) = rt.block_on(async {
        let (handle, _engine) = Builder::new(server(), |_, _, _: &str| Ok(()))
            .clock(clock)
            .channel_capacity(CHANNEL)
            .spawn();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, handle.clone()));
        let garbage = Arc::new(vec![0u8; 4096]);
        let frames = Arc::new(frames());
        let flooders: Vec<_> = (0..FLOODERS)
            .map(|i| {
                let bytes = if i % 2 == 0 { &garbage } else { &frames };
                tokio::spawn(flood(addr, bytes.clone(), stop_flood.clone()))
            })
            .collect();
        let secret = handle.enroll(DEV).await.unwrap();
        let t0 = handle
            .enqueue_task(DEV, TaskKind::Scan, Default::default())
            .await
            .unwrap();
        (handle, addr, secret, t0, flooders)
    });

    // The device boots and syncs through the flood; the task keeps running.
    let mut cfg = DeviceConfig::new(DEV, 0, secret, Platform::Android);
    cfg.timers.linger = Duration::from_mins(10);
    let device = std::thread::spawn({
        let ctl = ctl.clone();
        move || {
            let connector = TcpConnector::new(addr).with_timeout(Wall::from_secs(2));
            let agent = Agent {
                ctl: ctl.clone(),
                running: None,
                now: Instant::ZERO,
            };
            let mut dev: BlockingDevice<_, _, _> =
                BlockingDevice::boot(cfg, connector, MemoryStorage::new(), agent, clock).unwrap();
            while !ctl.stop.load(Ordering::SeqCst) {
                let wait = dev.run_once().unwrap();
                std::thread::sleep(wait.min(Wall::from_millis(10)));
            }
        }
    });

    let scenario = async {
        let running = eventually(|| async {
            let state = task_state(&handle, t0).await;
            matches!(
                state,
                Some(TaskState::Delivered | TaskState::InProgress { .. })
            )
        })
        .await;
        assert!(running, "{:?}", task_state(&handle, t0).await);

        // The engine is held for a moment (as by a long batch of work) so
        // that its queue is in a known order: the flood, a burst of policies
        // for the device, a call that waits (5 s at most) until the device
        // has the burst's first policy, a channel's worth of calls, and the
        // device's own next message (a progress report). The connection must be sent the
        // burst while that message waits: the first policy is flushed more
        // than a batch (256) before the waiting call.
        let (release, hold) = hold_engine(&handle).await;
        let mut burst = Vec::new();
        for v in 1..=BURST {
            let handle = handle.clone();
            let settings = vec![Setting { key: 1, value: v }];
            burst.push(queue(async move { handle.assign_policy(DEV, settings).await }).await);
        }
        let got_first = queue({
            let (handle, ctl) = (handle.clone(), ctl.clone());
            let wait = move |_: &mut Server<MemoryStore>, _: Instant| {
                tokio::task::block_in_place(|| {
                    let give_up = std::time::Instant::now() + Wall::from_secs(5);
                    while ctl.newest_policy.load(Ordering::SeqCst) == 0 {
                        if std::time::Instant::now() > give_up {
                            return false;
                        }
                        std::thread::sleep(Wall::from_millis(1));
                    }
                    true
                })
            };
            async move { handle.call(wait).await }
        })
        .await;
        // The channel, once the waiting call is taken off it, holds these,
        // not the device's message.
        let mut behind = Vec::new();
        for _ in 0..CHANNEL {
            let handle = handle.clone();
            behind.push(queue(async move { handle.call(|_, _| ()).await }).await);
        }
        ctl.progress.store(true, Ordering::SeqCst);
        // Time for the device's report to be read and queued (ordering only:
        // nothing is timed).
        tokio::time::sleep(Wall::from_millis(200)).await;
        release.send(()).unwrap();
        hold.await.unwrap();
        let got_first = got_first.await.unwrap().unwrap();
        for call in behind {
            call.await.unwrap().unwrap();
        }
        let mut newest = 0;
        for version in burst {
            newest = newest.max(version.await.unwrap().unwrap());
        }
        assert!(got_first, "the device's output waited for its input");

        // The device finishes its task; the server records it.
        ctl.finish.store(true, Ordering::SeqCst);
        let done =
            eventually(|| async { task_state(&handle, t0).await.is_some_and(|s| s.is_final()) })
                .await;
        assert!(done, "{:?}", task_state(&handle, t0).await);
        let latest =
            eventually(|| async { handle.fleet_view().await.unwrap().on_latest_policy == 1 }).await;
        assert!(latest, "the device never reported policy {newest}");
        newest
    };
    let run = within_30s(&rt, scenario);
    stop_flood.store(true, Ordering::SeqCst);
    ctl.stop.store(true, Ordering::SeqCst);
    for f in flooders {
        f.abort();
    }
    device.join().unwrap();
    let newest = run.expect("the scenario took longer than 30 s");

    let failed = ctl.failed.load(Ordering::SeqCst);
    assert_eq!(
        failed,
        0,
        "the device's session was dropped ({:?} first)",
        ctl.first_failure.lock().unwrap()
    );
    assert_eq!(ctl.executed.load(Ordering::SeqCst), 1);
    assert_eq!(ctl.newest_policy.load(Ordering::SeqCst), newest);
    let state = rt.block_on(task_state(&handle, t0));
    assert_eq!(
        state,
        Some(TaskState::Succeeded {
            result: Some(TaskResult::Scan { threats: 0 })
        })
    );
    rt.block_on(handle.shutdown());
}

/// Every message waiting in the engine's channel is handled, however many
/// wait: the engine takes them in batches, and no message may be taken off
/// the channel at the end of a batch and then dropped (a dropped call fails
/// with `Stopped`; a dropped `Open` would end `serve`).
#[test]
fn a_full_channel_loses_no_message() {
    let scenario = async {
        let (handle, engine) = Builder::new(server(), |_, _, _: &str| Ok(())).spawn();
        let (release, hold) = hold_engine(&handle).await;
        // More than a batch (256) of calls waits in the channel (1024).
        let mut calls = Vec::new();
        for i in 0..600u32 {
            let handle = handle.clone();
            calls.push(queue(async move { handle.call(move |_, _| i).await }).await);
        }
        release.send(()).unwrap();
        hold.await.unwrap();
        let mut lost = 0;
        for call in calls {
            lost += usize::from(call.await.unwrap().is_err());
        }
        assert_eq!(lost, 0, "calls lost between batches");
        handle.shutdown().await;
        let _ = engine.await.unwrap();
    };
    within_30s(&runtime(), scenario).expect("took longer than 30 s");
}
