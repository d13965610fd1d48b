//! The embedded runner over a snapshot store that fails, against the tokio
//! server on 127.0.0.1.
//!
//! 1. A write fails in the middle of a session. `Runner::run` returns
//!    `RunError::Storage` and drops the open transport; the documented way
//!    on is to call `run` again, which writes the snapshot first. What must
//!    hold then: the task the server sent in that session runs exactly once,
//!    and its outcome reaches the server on the device's own retry timers
//!    (a 200 ms backoff here), not after its response timeout and linger,
//!    both set to one hour: the transport is gone, so nothing can answer in
//!    the session the engine believed open.
//!
//!    Found on main: the runner dropped the transport without telling the
//!    engine (`Device::disconnected`), so after the second `run` the engine
//!    waited out its timers (with the defaults, 45 s of linger; with an hour
//!    of each here, an hour) before it connected again.
//!
//! 2. Writes fail at random (refused; landed but reported failed; torn in
//!    half, then a power loss and a boot from the slots) while tasks and
//!    compliance events come in. Every task runs at most once over all
//!    boots, every compliance event is stored at most once (each is
//!    distinct), and once the store is healthy again everything settles.
//!
//! The budgets are no speed assertion: on loopback each scenario takes a
//! second or so; the budgets only turn a hang into a failure.
#![cfg(all(feature = "embedded", feature = "tokio"))]

mod common;

use core::cell::Cell;
use core::net::SocketAddr;
use core::time::Duration as WallDuration;
use std::rc::Rc;

use embedded_io_adapters::tokio_1::FromTokio;
use mdm_sync::adapters::embedded::{
    Connector, Handler, RunError, Runner, SnapshotStore, Wake, WakeSource,
};
use mdm_sync::adapters::tokio::ServerHandle;
use mdm_sync::device::{Device, DeviceConfig};
use mdm_sync::server::{MemoryStore, ServerEvent, TaskState};
use mdm_sync::time::Duration;
use mdm_sync::wire::{
    ComplianceEvent, DeviceId, Platform, Policy, PolicyOutcome, Task, TaskId, TaskKind, TaskStatus,
};
use tokio::net::TcpStream;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};

use common::{expect_event, Rng};

const DEVICE: DeviceId = DeviceId(9);

/// Connects over loopback and notes that a transport is open.
struct Tcp {
    server: SocketAddr,
    opened: Rc<Cell<u32>>,
}

impl Connector for Tcp {
    type Connection<'a> = FromTokio<TcpStream>;
    type Error = std::io::Error;

    async fn connect(&mut self) -> Result<Self::Connection<'_>, Self::Error> {
        let stream = TcpStream::connect(self.server).await?;
        stream.set_nodelay(true)?;
        self.opened.set(self.opened.get() + 1);
        Ok(FromTokio::new(stream))
    }
}

struct Inbox(UnboundedReceiver<Wake>);

impl WakeSource for Inbox {
    async fn wait(&mut self) -> Wake {
        self.0.recv().await.unwrap_or(Wake::Shutdown)
    }
}

/// Two slots in memory. Once armed, the first write made while the
/// connector has opened more than `armed_at` transports fails (the write
/// lands nowhere), then writes work again.
///
/// While `hostile` is set, writes fail at random instead (see `Fault`).
struct Slots {
    slots: [Vec<u8>; 2],
    opened: Rc<Cell<u32>>,
    armed_at: Rc<Cell<Option<u32>>>,
    failed: u32,
    hostile: Rc<Cell<bool>>,
    rng: Rng,
}

impl Slots {
    fn new(opened: Rc<Cell<u32>>, armed_at: Rc<Cell<Option<u32>>>, seed: u64) -> Self {
        Slots {
            slots: [Vec::new(), Vec::new()],
            opened,
            armed_at,
            failed: 0,
            hostile: Rc::new(Cell::new(false)),
            rng: Rng(seed | 1),
        }
    }
}

#[derive(Debug, PartialEq)]
enum WriteFailed {
    /// Nothing was written.
    Refused,
    /// The bytes landed, but the store said it failed.
    Landed,
    /// Half the bytes landed, then the power went.
    Torn,
}

impl SnapshotStore for Slots {
    type Error = WriteFailed;

    async fn read(&mut self, slot: usize, buf: &mut [u8]) -> Result<usize, WriteFailed> {
        let data = self.slots.get(slot).ok_or(WriteFailed::Refused)?;
        let dst = buf.get_mut(..data.len()).ok_or(WriteFailed::Refused)?;
        dst.copy_from_slice(data);
        Ok(data.len())
    }

    async fn write(&mut self, slot: usize, bytes: &[u8]) -> Result<(), WriteFailed> {
        if let Some(at) = self.armed_at.get() {
            if self.opened.get() > at {
                self.armed_at.set(None);
                self.failed += 1;
                return Err(WriteFailed::Refused);
            }
        }
        if self.hostile.get() {
            let fault = match self.rng.below(10) {
                0 | 1 => Some(WriteFailed::Refused),
                2 => Some(WriteFailed::Landed),
                3 => Some(WriteFailed::Torn),
                _ => None,
            };
            if let Some(fault) = fault {
                let target = self.slots.get_mut(slot).ok_or(WriteFailed::Refused)?;
                match fault {
                    WriteFailed::Refused => {}
                    WriteFailed::Landed => *target = bytes.to_vec(),
                    WriteFailed::Torn => {
                        *target = bytes.get(..bytes.len() / 2).unwrap_or(&[]).to_vec()
                    }
                }
                self.failed += 1;
                return Err(fault);
            }
        }
        *self.slots.get_mut(slot).ok_or(WriteFailed::Refused)? = bytes.to_vec();
        Ok(())
    }
}

#[derive(Default)]
struct Agent {
    executed: Vec<Task>,
}

impl Agent {
    fn runs(&self, task: TaskId) -> usize {
        self.executed.iter().filter(|t| t.id == task).count()
    }
}

impl Handler for Agent {
    async fn execute(&mut self, task: Task) -> Option<TaskStatus> {
        self.executed.push(task);
        Some(TaskStatus::Succeeded { result: None })
    }

    async fn cancel(&mut self, _task: TaskId) -> Option<TaskStatus> {
        Some(TaskStatus::Cancelled)
    }

    async fn apply_policy(&mut self, _policy: &Policy) -> Option<PolicyOutcome> {
        Some(PolicyOutcome::Applied)
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_store_error_mid_session_does_not_leave_the_engine_waiting_on_a_dropped_transport() {
    tokio::time::timeout(WallDuration::from_secs(60), scenario())
        .await
        .expect("the task's outcome reached the server on the retry timers, not the hour-long response timeout");
}

/// The tokio server on 127.0.0.1 with its pushes wired to the device's
/// inbox and its events to a channel; the device's configuration.
struct World {
    handle: ServerHandle<MemoryStore>,
    events: UnboundedReceiver<ServerEvent>,
    wake_tx: UnboundedSender<Wake>,
    inbox: Inbox,
    addr: SocketAddr,
    cfg: DeviceConfig,
}

async fn world() -> World {
    let (wake_tx, wake_rx) = mpsc::unbounded_channel();
    let push_tx = wake_tx.clone();
    let push = move |_: DeviceId, _: Platform, _: &str| {
        let _ = push_tx.send(Wake::Push);
        Ok(())
    };
    let (handle, engine, events, server_addr) = common::watched_loopback_server(push).await;
    // The engine's task runs on its own; dropping its handle detaches it.
    drop(engine);
    let secret = handle.enroll(DEVICE).await.unwrap();

    let mut cfg = DeviceConfig::new(DEVICE, 0, secret, Platform::Android);
    cfg.push_token = "t9".try_into().unwrap();
    cfg.timers.backoff_min = Duration::from_millis(200);
    cfg.timers.backoff_max = Duration::from_secs(1);
    World {
        handle,
        events,
        wake_tx,
        inbox: Inbox(wake_rx),
        addr: server_addr,
        cfg,
    }
}

async fn scenario() {
    let World {
        handle,
        mut events,
        wake_tx,
        inbox,
        addr: server_addr,
        mut cfg,
    } = world().await;
    cfg.timers.response_timeout = Duration::from_secs(3600);
    cfg.timers.linger = Duration::from_secs(3600);
    let opened = Rc::new(Cell::new(0));
    let armed_at = Rc::new(Cell::new(None));
    let slots = Slots::new(opened.clone(), armed_at.clone(), 1);
    let connector = Tcp {
        server: server_addr,
        opened: opened.clone(),
    };
    let mut runner = Runner::new(connector, inbox, slots, Agent::default());
    let mut buf = [0u8; <Device>::SNAPSHOT_MAX];
    let mut device: Device = runner.restore(cfg, &mut buf).await.unwrap();

    let script = async {
        // The boot sync ends.
        expect_event(&mut events, |ev| {
            matches!(ev, ServerEvent::SessionEnded { .. }).then_some(())
        })
        .await;
        // The next session's first snapshot write fails (the task's
        // acceptance, or what comes before it in that session).
        armed_at.set(Some(opened.get()));
        let task = handle
            .enqueue_task(DEVICE, TaskKind::Lock, Default::default())
            .await
            .unwrap();
        let state = expect_event(&mut events, |ev| match ev {
            ServerEvent::TaskChanged { task: t, state, .. } if *t == task && state.is_final() => {
                Some(*state)
            }
            _ => None,
        })
        .await;
        assert_eq!(state, TaskState::Succeeded { result: None });
        wake_tx.send(Wake::Shutdown).unwrap();
    };
    let device_side = async {
        let first = runner.run(&mut device, &mut buf).await;
        assert_eq!(first, Err(RunError::Storage(WriteFailed::Refused)));
        // As documented: run again; it writes the snapshot first.
        runner.run(&mut device, &mut buf).await
    };
    let (ran, ()) = tokio::join!(device_side, script);
    ran.unwrap();
    assert_eq!(runner.store.failed, 1, "the scripted failure happened once");
    let kinds: Vec<_> = runner.handler.executed.iter().map(|t| t.kind).collect();
    assert_eq!(kinds, [TaskKind::Lock], "the task ran exactly once");
}

#[tokio::test(flavor = "current_thread")]
async fn random_store_faults_keep_tasks_once_and_compliance_events_once() {
    for seed in 1..=4 {
        tokio::time::timeout(WallDuration::from_secs(60), random_faults(seed))
            .await
            .expect("the device settled once the store was healthy");
    }
}

async fn random_faults(seed: u64) {
    let World {
        handle,
        mut events,
        wake_tx,
        inbox,
        addr,
        mut cfg,
    } = world().await;
    cfg.timers.compliance_retry = Duration::from_millis(300);
    let opened = Rc::new(Cell::new(0));
    let slots = Slots::new(opened.clone(), Rc::new(Cell::new(None)), seed);
    let hostile = slots.hostile.clone();
    let connector = Tcp {
        server: addr,
        opened,
    };
    let mut runner = Runner::new(connector, inbox, slots, Agent::default());
    let mut buf = [0u8; <Device>::SNAPSHOT_MAX];
    let mut device: Device = runner.restore(cfg.clone(), &mut buf).await.unwrap();
    let script = async {
        expect_event(&mut events, |ev| {
            matches!(ev, ServerEvent::SessionEnded { .. }).then_some(())
        })
        .await;
        hostile.set(true);
        let mut tasks = Vec::new();
        let mut stored = Vec::new();
        for i in 0..8u16 {
            let task = handle
                .enqueue_task(DEVICE, TaskKind::Lock, Default::default())
                .await
                .unwrap();
            tasks.push(task);
            let ev = ComplianceEvent::PasswordOverdue { days: i };
            wake_tx.send(Wake::Compliance(ev)).unwrap();
            tokio::time::sleep(WallDuration::from_millis(100)).await;
        }
        hostile.set(false);
        let last = ComplianceEvent::PasswordOverdue { days: 1000 };
        wake_tx.send(Wake::Compliance(last)).unwrap();
        // Every task final and the healthy-store event stored.
        let mut open = tasks.clone();
        while !open.is_empty() || !stored.contains(&last) {
            match events.recv().await.expect("server engine running") {
                ServerEvent::TaskChanged { task, state, .. } if state.is_final() => {
                    open.retain(|t| *t != task);
                }
                ServerEvent::Compliance { event, .. } => stored.push(event),
                _ => {}
            }
        }
        wake_tx.send(Wake::Shutdown).unwrap();
        (tasks, stored)
    };
    let device_side = async move {
        let (mut reboots, mut errors) = (0, 0);
        loop {
            match runner.run(&mut device, &mut buf).await {
                Ok(()) => return (runner, reboots, errors),
                Err(RunError::Storage(WriteFailed::Torn)) => {
                    // Power loss: a new runner (its memory is gone) and an
                    // engine from what the slots hold.
                    reboots += 1;
                    let Runner {
                        connector,
                        wake,
                        store,
                        handler,
                        ..
                    } = runner;
                    runner = Runner::new(connector, wake, store, handler);
                    device = runner.restore(cfg.clone(), &mut buf).await.unwrap();
                }
                Err(RunError::Storage(_)) => errors += 1,
                Err(e) => panic!("seed {seed}: {e:?}"),
            }
        }
    };
    let ((runner, reboots, errors), (tasks, stored)) = tokio::join!(device_side, script);
    for task in &tasks {
        let runs = runner.handler.runs(*task);
        assert!(runs <= 1, "seed {seed}: task {task:?} ran {runs} times");
    }
    for i in 0..8u16 {
        let ev = ComplianceEvent::PasswordOverdue { days: i };
        let n = stored.iter().filter(|e| **e == ev).count();
        assert!(n <= 1, "seed {seed}: {ev:?} stored {n} times");
    }
    assert!(runner.store.failed > 0, "seed {seed}: no fault happened");
    eprintln!(
        "seed {seed}: {} faults, {reboots} power losses, {errors} other errors",
        runner.store.failed
    );
}
