//! The embedded device runner (`adapters::embedded`) against the real tokio
//! server adapter, over TCP on 127.0.0.1: embedded-io-async over tokio sockets
//! (embedded-io-adapters) and embassy-time's std driver (wall-clock time).
//!
//! Boot sync; the operator queues a lock and a locate task and the server's
//! push reaches the device; both tasks run once and report (the locate task
//! later, through the wake source, with a location); a compliance event is
//! raised while the server is unreachable (a real refused connect), retried
//! after the shortened compliance retry, and stored once. Everything is bounded
//! by a 30 s timeout; on loopback it takes well under a second plus the retry.
#![cfg(all(feature = "embedded", feature = "tokio"))]

mod common;

use core::cell::Cell;
use core::net::SocketAddr;
use core::time::Duration as WallDuration;
use std::rc::Rc;

use embedded_io_adapters::tokio_1::FromTokio;
use mdm_sync::adapters::embedded::{Connector, Handler, Runner, SnapshotStore, Wake, WakeSource};
use mdm_sync::device::{pick_latest, Device, DeviceConfig, SessionError};
use mdm_sync::server::{ServerEvent, TaskState};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::{
    ComplianceEvent, DeviceId, Platform, Policy, PolicyOutcome, SyncTrigger, Task, TaskId,
    TaskKind, TaskResult, TaskStatus,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};

use common::expect_event;

const DEVICE: DeviceId = DeviceId(1);
const FIX: TaskResult = TaskResult::Location {
    lat_e7: 525_200_000,
    lon_e7: 134_050_000,
    accuracy_m: 12,
};

/// Connects to the server, or to a closed port while `offline` is set (the
/// kernel refuses it: a real connect failure, not a simulated one).
struct Tcp {
    server: SocketAddr,
    dead: SocketAddr,
    offline: Rc<Cell<bool>>,
}

impl Connector for Tcp {
    type Connection<'a> = FromTokio<TcpStream>;
    type Error = std::io::Error;

    async fn connect(&mut self) -> Result<Self::Connection<'_>, Self::Error> {
        let addr = if self.offline.get() {
            self.dead
        } else {
            self.server
        };
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(FromTokio::new(stream))
    }
}

/// Wakes come from an unbounded channel (`recv` is cancel-safe).
struct Inbox(UnboundedReceiver<Wake>);

impl WakeSource for Inbox {
    async fn wait(&mut self) -> Wake {
        self.0.recv().await.unwrap_or(Wake::Shutdown)
    }
}

/// Two snapshot slots in memory.
#[derive(Default)]
struct Slots {
    slots: [Vec<u8>; 2],
    writes: u32,
}

impl SnapshotStore for Slots {
    type Error = core::convert::Infallible;

    async fn read(&mut self, slot: usize, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let data = &self.slots[slot];
        buf[..data.len()].copy_from_slice(data);
        Ok(data.len())
    }

    async fn write(&mut self, slot: usize, bytes: &[u8]) -> Result<(), Self::Error> {
        self.slots[slot] = bytes.to_vec();
        self.writes += 1;
        Ok(())
    }
}

/// Locks at once; locates in the background and reports through the inbox.
struct Agent {
    wake: UnboundedSender<Wake>,
    executed: Vec<Task>,
    done: Vec<SyncTrigger>,
    failed: Rc<Cell<u32>>,
}

impl Handler for Agent {
    async fn execute(&mut self, task: Task) -> Option<TaskStatus> {
        self.executed.push(task);
        match task.kind {
            TaskKind::Lock => Some(TaskStatus::Succeeded { result: None }),
            TaskKind::Locate => {
                let wake = self.wake.clone();
                tokio::spawn(async move {
                    let progress = Wake::Progress {
                        task: task.id,
                        percent: Some(50),
                    };
                    let _ = wake.send(progress);
                    tokio::time::sleep(WallDuration::from_millis(100)).await;
                    let status = TaskStatus::Succeeded { result: Some(FIX) };
                    let _ = wake.send(Wake::TaskStatus {
                        task: task.id,
                        status,
                    });
                });
                None
            }
            _ => Some(TaskStatus::Failed {
                reason: mdm_sync::wire::reason::UNSUPPORTED,
            }),
        }
    }

    async fn cancel(&mut self, _task: TaskId) -> Option<TaskStatus> {
        Some(TaskStatus::Cancelled)
    }

    async fn apply_policy(&mut self, _policy: &Policy) -> Option<PolicyOutcome> {
        Some(PolicyOutcome::Applied)
    }

    fn sync_done(&mut self, trigger: SyncTrigger) {
        self.done.push(trigger);
    }

    fn sync_failed(&mut self, error: SessionError) {
        assert_eq!(
            error,
            SessionError::ConnectFailed,
            "only the refused connect fails"
        );
        self.failed.set(self.failed.get() + 1);
    }
}

/// A loopback port with nothing listening on it.
async fn dead_port() -> SocketAddr {
    let probe = TcpListener::bind("127.0.0.1:0").await.unwrap();
    probe.local_addr().unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn runner_syncs_tasks_and_compliance_with_the_tokio_server_over_loopback() {
    tokio::time::timeout(WallDuration::from_secs(30), scenario())
        .await
        .expect("the scenario finishes within 30 s");
}

async fn scenario() {
    // The server: the real tokio adapter; its pushes reach the device's inbox.
    let (wake_tx, wake_rx) = mpsc::unbounded_channel();
    let push_tx = wake_tx.clone();
    let push = move |device: DeviceId, _: Platform, token: &str| {
        assert_eq!((device, token), (DEVICE, "test-token"));
        let _ = push_tx.send(Wake::Push);
        Ok(())
    };
    let (handle, engine, mut events, server_addr) = common::watched_loopback_server(push).await;
    let secret = handle.enroll(DEVICE).await.unwrap();

    // The device: the embedded runner with short retry timers.
    let mut cfg = DeviceConfig::new(DEVICE, 0, secret, Platform::Android);
    cfg.push_token = "test-token".try_into().unwrap();
    cfg.timers.backoff_min = Duration::from_millis(200);
    cfg.timers.compliance_retry = Duration::from_millis(300);
    let offline = Rc::new(Cell::new(false));
    let failed = Rc::new(Cell::new(0));
    let connector = Tcp {
        server: server_addr,
        dead: dead_port().await,
        offline: offline.clone(),
    };
    let agent = Agent {
        wake: wake_tx.clone(),
        executed: Vec::new(),
        done: Vec::new(),
        failed: failed.clone(),
    };
    let mut runner = Runner::new(connector, Inbox(wake_rx), Slots::default(), agent);
    let mut buf = [0u8; <Device>::SNAPSHOT_MAX];
    let mut device: Device = runner.restore(cfg.clone(), &mut buf).await.unwrap();

    let script = async {
        // Boot sync: the server learns the push token.
        let trigger = expect_event(&mut events, |ev| match ev {
            ServerEvent::Authenticated { trigger, .. } => Some(*trigger),
            _ => None,
        })
        .await;
        assert_eq!(trigger, SyncTrigger::Boot);
        expect_event(&mut events, |ev| {
            matches!(ev, ServerEvent::SessionEnded { .. }).then_some(())
        })
        .await;

        // Two tasks; the server pushes; the device syncs and runs them.
        let lock = handle
            .enqueue_task(DEVICE, TaskKind::Lock, Default::default())
            .await
            .unwrap();
        let locate = handle
            .enqueue_task(DEVICE, TaskKind::Locate, Default::default())
            .await
            .unwrap();
        let mut open = vec![lock, locate];
        while !open.is_empty() {
            let (task, state) = expect_event(&mut events, |ev| match ev {
                ServerEvent::TaskChanged { task, state, .. } if state.is_final() => {
                    Some((*task, *state))
                }
                _ => None,
            })
            .await;
            let result = if task == locate { Some(FIX) } else { None };
            assert_eq!(state, TaskState::Succeeded { result }, "task {task:?}");
            open.retain(|t| *t != task);
        }
        // The session that reported them ends first: the server records a
        // final status before the device has read the rest of its session,
        // and an event raised in that window goes out in the open session
        // (rightly), with no refused connect to retry after.
        expect_event(&mut events, |ev| {
            matches!(ev, ServerEvent::SessionEnded { .. }).then_some(())
        })
        .await;

        // A compliance event while the server is unreachable.
        offline.set(true);
        let event = ComplianceEvent::UsbDebugging { enabled: true };
        wake_tx.send(Wake::Compliance(event)).unwrap();
        while failed.get() == 0 {
            tokio::time::sleep(WallDuration::from_millis(5)).await;
        }
        offline.set(false);
        let stored = expect_event(&mut events, |ev| match ev {
            ServerEvent::Compliance { device, event } => Some((*device, *event)),
            _ => None,
        })
        .await;
        assert_eq!(stored, (DEVICE, event));
        expect_event(&mut events, |ev| {
            matches!(ev, ServerEvent::SessionEnded { .. }).then_some(())
        })
        .await;
        wake_tx.send(Wake::Shutdown).unwrap();
    };
    let (ran, ()) = tokio::join!(runner.run(&mut device, &mut buf), script);
    ran.unwrap();

    // Each task ran exactly once; the compliance event took a retry.
    let kinds: Vec<_> = runner.handler.executed.iter().map(|t| t.kind).collect();
    assert_eq!(kinds, [TaskKind::Lock, TaskKind::Locate]);
    assert!(failed.get() >= 1);
    assert!(runner.handler.done.contains(&SyncTrigger::Compliance));
    assert_eq!(device.outbox_len(), 0);

    // The newest snapshot restores: both tasks accepted, none running.
    let store = &runner.store;
    assert!(store.writes >= 2, "{} snapshot writes", store.writes);
    let latest = pick_latest(&store.slots[0], &store.slots[1]).expect("a valid snapshot");
    let restored: Device = Device::restore(cfg, latest, Instant::ZERO).unwrap();
    assert_eq!(restored.last_task_seq(), 2);
    assert_eq!(restored.running_tasks().count(), 0);

    handle.shutdown().await;
    engine.await.unwrap();
}
