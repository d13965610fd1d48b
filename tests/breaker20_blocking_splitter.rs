//! The blocking device adapter against the tokio server through a loopback
//! proxy that cuts every byte stream into pieces: connection k forwards
//! each direction in pieces of 1 to 7 bytes (a different size per
//! connection and direction, so frames are split at every position), and
//! some connections go wrong on the way: the server's stream is cut (both
//! sockets shut) after a few bytes, mid-frame; the device's stream is cut
//! after a few bytes; or the server's stream stalls with both sockets open.
//!
//! Twelve tasks are queued one after another. Expected: every one ends
//! `Succeeded` on the server and ran once on the device, the device
//! leaves every broken connection on its own timers (each `run_once`
//! returns), and it keeps syncing through the proxy. The wall-clock budgets
//! only turn a hang into a failure (no speed is asserted); the clock runs 50
//! times real time, so a response timeout is 0.6 s of wall time, far above
//! what a split session needs on loopback.
#![cfg(feature = "tokio")]

mod common;
mod splitter;

use core::sync::atomic::{AtomicBool, Ordering};
use core::time::Duration as Wall;
use std::sync::Arc;

use mdm_sync::adapters::blocking::{BlockingDevice, Execution, Handler, MemoryStorage};
use mdm_sync::adapters::clock::ScaledClock;
use mdm_sync::adapters::push::{UdpPushReceiver, UdpPushSender};
use mdm_sync::device::{DeviceConfig, SessionError};
use mdm_sync::server::{MemoryStore, Server, ServerConfig, TaskState};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::{DeviceId, Platform, Policy, PolicyOutcome, Task, TaskId, TaskKind};
use mdm_sync::wire::{TaskResult, TaskStatus};

const DEV: DeviceId = DeviceId(20);
const TASKS: usize = 12;

#[derive(Default)]
struct Agent {
    executed: Vec<Task>,
    failed: Vec<SessionError>,
}

impl Handler for Agent {
    fn execute(&mut self, task: Task, _now: Instant) -> Execution {
        self.executed.push(task);
        let result = match task.kind {
            TaskKind::Locate => Some(TaskResult::Location {
                lat_e7: 1,
                lon_e7: 2,
                accuracy_m: 3,
            }),
            _ => None,
        };
        Execution::Done(TaskStatus::Succeeded { result })
    }

    fn apply_policy(&mut self, _policy: &Policy, _now: Instant) -> PolicyOutcome {
        PolicyOutcome::Applied
    }

    fn sync_failed(&mut self, error: SessionError, _now: Instant) {
        self.failed.push(error);
    }
}

#[test]
fn frames_split_everywhere_cut_and_stalled_still_run_each_task_once() {
    let rt = common::runtime();
    let clock = ScaledClock::scaled(50.0);
    let server = Server::new(
        ServerConfig::default(),
        MemoryStore::new(),
        [5; 32],
        [6; 32],
    );
    let push = UdpPushSender::bind_loopback().unwrap();
    let (handle, engine, server_addr) = rt.block_on(async {
        let (handle, engine) = mdm_sync::adapters::tokio::Builder::new(server, push)
            .clock(clock)
            .spawn();
        let addr = common::serve_loopback(&handle).await;
        (handle, engine, addr)
    });
    let (addr, connections) = splitter::proxy(server_addr);
    let secret = rt.block_on(handle.enroll(DEV)).unwrap();

    let pushes = UdpPushReceiver::bind_loopback().unwrap();
    let mut cfg = DeviceConfig::new(DEV, 0, secret, Platform::Android);
    cfg.push_token = pushes.token().as_str().try_into().unwrap();
    cfg.timers.backoff_max = Duration::from_secs(60);
    let done = Arc::new(AtomicBool::new(false));
    let device_done = done.clone();
    let device = std::thread::spawn(move || {
        let connector = mdm_sync::adapters::blocking::TcpConnector::new(addr);
        let mut dev: BlockingDevice<_, _, _> = BlockingDevice::boot(
            cfg,
            connector,
            MemoryStorage::new(),
            Agent::default(),
            clock,
        )
        .unwrap();
        let give_up = std::time::Instant::now() + Wall::from_secs(60);
        while !device_done.load(Ordering::Relaxed) && std::time::Instant::now() < give_up {
            common::blocking_round(&mut dev, &pushes, DEV);
        }
        let agent = dev.handler();
        let ids: Vec<TaskId> = agent.executed.iter().map(|t| t.id).collect();
        (ids, agent.failed.clone())
    });

    let mut tasks = Vec::new();
    for i in 0..TASKS {
        let kind = [TaskKind::Lock, TaskKind::Locate, TaskKind::Scan][i % 3];
        let task = rt
            .block_on(handle.enqueue_task(DEV, kind, Default::default()))
            .unwrap();
        tasks.push(task);
        let final_state = (0..2000).find_map(|_| {
            let rec = rt.block_on(handle.task(task)).unwrap();
            match rec.map(|r| r.state) {
                Some(s) if s.is_final() => Some(s),
                _ => {
                    std::thread::sleep(Wall::from_millis(10));
                    None
                }
            }
        });
        assert!(
            matches!(final_state, Some(TaskState::Succeeded { .. })),
            "task {i} ({kind:?}) ended {final_state:?} after {} connections",
            connections.load(Ordering::Relaxed)
        );
    }
    done.store(true, Ordering::Relaxed);
    let (executed, failed) = device.join().unwrap();
    splitter::check(
        &tasks,
        &executed,
        connections.load(Ordering::Relaxed),
        &failed,
    );
    rt.block_on(handle.shutdown());
    let server = rt.block_on(engine).unwrap();
    assert_eq!(server.fleet_view().unwrap().tasks.succeeded, TASKS);
}
