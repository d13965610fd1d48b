//! The embedded runner (embedded-io-async over tokio sockets, embassy-time's
//! std driver) against the tokio server through the loopback proxy of
//! `tests/splitter`: each direction forwarded in pieces of 1 to 7 bytes,
//! some connections cut mid-frame in either direction, some stalled with
//! their sockets open. The device's timers are shortened (a 1 s
//! response timeout, backoff from 50 ms to 500 ms), so a broken connection
//! is left and the next one opened quickly, many times over.
//!
//! Twelve tasks are queued one after another. Expected: every one ends
//! `Succeeded` and ran once, no connection that only splits fails a sync,
//! and a cut is seen as the end of the stream. The 60 s budget only turns a
//! hang into a failure (no speed is asserted).
#![cfg(all(feature = "tokio", feature = "embedded"))]

mod common;
mod splitter;

use core::cell::RefCell;
use core::net::SocketAddr;
use core::sync::atomic::Ordering;
use core::time::Duration as Wall;
use std::rc::Rc;

use embedded_io_adapters::tokio_1::FromTokio;
use mdm_sync::adapters::embedded::{Connector, Handler, Runner, Wake};
use mdm_sync::device::{Device, DeviceConfig, SessionError};
use mdm_sync::server::{ServerEvent, TaskState};
use mdm_sync::time::Duration;
use mdm_sync::wire::{DeviceId, Platform, Policy, PolicyOutcome, Task, TaskId, TaskKind};
use mdm_sync::wire::{TaskResult, TaskStatus};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use common::{expect_event, Inbox, MemorySlots};

const DEVICE: DeviceId = DeviceId(21);
const TASKS: usize = 12;

struct Tcp(SocketAddr);

impl Connector for Tcp {
    type Connection<'a> = FromTokio<TcpStream>;
    type Error = std::io::Error;

    async fn connect(&mut self) -> Result<Self::Connection<'_>, Self::Error> {
        let stream = TcpStream::connect(self.0).await?;
        stream.set_nodelay(true)?;
        Ok(FromTokio::new(stream))
    }
}

struct Agent {
    executed: Vec<TaskId>,
    failed: Rc<RefCell<Vec<SessionError>>>,
}

impl Handler for Agent {
    async fn execute(&mut self, task: Task) -> Option<TaskStatus> {
        self.executed.push(task.id);
        let result = (task.kind == TaskKind::Scan).then_some(TaskResult::Scan { threats: 0 });
        Some(TaskStatus::Succeeded { result })
    }

    async fn cancel(&mut self, _task: TaskId) -> Option<TaskStatus> {
        Some(TaskStatus::Cancelled)
    }

    async fn apply_policy(&mut self, _policy: &Policy) -> Option<PolicyOutcome> {
        Some(PolicyOutcome::Applied)
    }

    fn sync_failed(&mut self, error: SessionError) {
        self.failed.borrow_mut().push(error);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_runner_through_split_cut_and_stalled_connections_runs_each_task_once() {
    tokio::time::timeout(Wall::from_secs(60), scenario())
        .await
        .expect("the scenario finishes within 60 s");
}

async fn scenario() {
    let (wake_tx, wake_rx) = mpsc::unbounded_channel();
    let push_tx = wake_tx.clone();
    let push = move |_: DeviceId, _: Platform, _: &str| {
        let _ = push_tx.send(Wake::Push);
        Ok(())
    };
    let (handle, engine, mut events, server_addr) = common::watched_loopback_server(push).await;
    let (addr, connections) = splitter::proxy(server_addr);
    let secret = handle.enroll(DEVICE).await.unwrap();

    let mut cfg = DeviceConfig::new(DEVICE, 0, secret, Platform::Android);
    cfg.push_token = "token".try_into().unwrap();
    cfg.timers.response_timeout = Duration::from_millis(1000);
    cfg.timers.linger = Duration::from_millis(400);
    cfg.timers.connect_timeout = Duration::from_millis(400);
    cfg.timers.backoff_min = Duration::from_millis(50);
    cfg.timers.backoff_max = Duration::from_millis(500);
    let failed = Rc::new(RefCell::new(Vec::new()));
    let agent = Agent {
        executed: Vec::new(),
        failed: failed.clone(),
    };
    let mut runner = Runner::new(Tcp(addr), Inbox(wake_rx), MemorySlots::default(), agent);
    let mut buf = [0u8; <Device>::SNAPSHOT_MAX];
    let mut device: Device = runner.restore(cfg, &mut buf).await.unwrap();

    let script = async {
        let mut tasks = Vec::new();
        for i in 0..TASKS {
            let kind = [TaskKind::Lock, TaskKind::Scan, TaskKind::Unlock][i % 3];
            let task = handle
                .enqueue_task(DEVICE, kind, Default::default())
                .await
                .unwrap();
            tasks.push(task);
            // Pushes are rate-limited (one a minute); the user syncs.
            wake_tx.send(Wake::ManualSync).unwrap();
            let state = expect_event(&mut events, |ev| match ev {
                ServerEvent::TaskChanged { task: t, state, .. }
                    if *t == task && state.is_final() =>
                {
                    Some(*state)
                }
                _ => None,
            })
            .await;
            assert!(
                matches!(state, TaskState::Succeeded { .. }),
                "task {i} ({kind:?}) ended {state:?}"
            );
        }
        // The shutdown closes the session still open, which counts as a
        // failed sync: count those before it.
        let before_shutdown = failed.borrow().clone();
        wake_tx.send(Wake::Shutdown).unwrap();
        (tasks, before_shutdown)
    };
    let (ran, (tasks, failed)) = tokio::join!(runner.run(&mut device, &mut buf), script);
    ran.unwrap();

    splitter::check(
        &tasks,
        &runner.handler.executed,
        connections.load(Ordering::Relaxed),
        &failed,
    );
    handle.shutdown().await;
    engine.await.unwrap();
}
