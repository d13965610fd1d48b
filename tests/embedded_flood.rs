//! The embedded runner against a transport that always has bytes ready (a
//! hostile or broken server streaming garbage): the engine's response
//! timeout must still end the session. No server: the transport is a mock.
#![cfg(all(feature = "embedded", feature = "tokio"))]

use core::cell::Cell;
use core::convert::Infallible;
use std::rc::Rc;

use mdm_sync::adapters::embedded::{Connector, Handler, Runner, SnapshotStore, Wake, WakeSource};
use mdm_sync::device::{Device, DeviceConfig, SessionError};
use mdm_sync::time::Duration;
use mdm_sync::wire::{DeviceId, Platform, Policy, PolicyOutcome, Task, TaskId, TaskStatus};

const TIMEOUT_MS: u64 = 100;
/// Far past the response timeout: a session still reading by then was
/// never given up.
const GIVE_UP_MS: u64 = 20 * TIMEOUT_MS;

/// Always one garbage byte ready; writes are swallowed.
struct Flood {
    since: embassy_time::Instant,
    late: Rc<Cell<bool>>,
}

impl embedded_io_async::ErrorType for Flood {
    type Error = Infallible;
}

impl embedded_io_async::Read for Flood {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
        if self.since.elapsed() > embassy_time::Duration::from_millis(GIVE_UP_MS) {
            self.late.set(true);
            return Ok(0); // end it, or the test would never finish
        }
        buf[0] = 0;
        Ok(1)
    }
}

impl embedded_io_async::Write for Flood {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
        Ok(buf.len())
    }

    async fn flush(&mut self) -> Result<(), Infallible> {
        Ok(())
    }
}

struct Dial(Rc<Cell<bool>>);

impl Connector for Dial {
    type Connection<'a> = Flood;
    type Error = Infallible;

    async fn connect(&mut self) -> Result<Flood, Infallible> {
        let since = embassy_time::Instant::now();
        Ok(Flood {
            since,
            late: self.0.clone(),
        })
    }
}

/// Shuts the runner down once a sync has failed.
struct Stop(Rc<Cell<Option<SessionError>>>);

impl WakeSource for Stop {
    async fn wait(&mut self) -> Wake {
        if self.0.get().is_some() {
            return Wake::Shutdown;
        }
        core::future::pending().await
    }
}

#[derive(Default)]
struct Slots([Vec<u8>; 2]);

impl SnapshotStore for Slots {
    type Error = Infallible;

    async fn read(&mut self, slot: usize, buf: &mut [u8]) -> Result<usize, Infallible> {
        buf[..self.0[slot].len()].copy_from_slice(&self.0[slot]);
        Ok(self.0[slot].len())
    }

    async fn write(&mut self, slot: usize, bytes: &[u8]) -> Result<(), Infallible> {
        self.0[slot] = bytes.to_vec();
        Ok(())
    }
}

struct Agent(Rc<Cell<Option<SessionError>>>);

impl Handler for Agent {
    async fn execute(&mut self, _task: Task) -> Option<TaskStatus> {
        Some(TaskStatus::Succeeded { result: None })
    }

    async fn cancel(&mut self, _task: TaskId) -> Option<TaskStatus> {
        Some(TaskStatus::Cancelled)
    }

    async fn apply_policy(&mut self, _policy: &Policy) -> Option<PolicyOutcome> {
        Some(PolicyOutcome::Applied)
    }

    fn sync_failed(&mut self, error: SessionError) {
        self.0.set(Some(error));
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_flooding_transport_cannot_starve_the_response_timeout() {
    let late = Rc::new(Cell::new(false));
    let failed = Rc::new(Cell::new(None));
    let mut cfg = DeviceConfig::new(DeviceId(1), 0, [1; 32], Platform::Android);
    cfg.timers.response_timeout = Duration::from_millis(TIMEOUT_MS);
    let mut runner = Runner::new(
        Dial(late.clone()),
        Stop(failed.clone()),
        Slots::default(),
        Agent(failed.clone()),
    );
    let mut buf = [0u8; <Device>::SNAPSHOT_MAX];
    let mut device: Device = runner.restore(cfg, &mut buf).await.unwrap();
    runner.run(&mut device, &mut buf).await.unwrap();
    assert!(
        !late.get(),
        "the session was still reading {GIVE_UP_MS} ms after it opened (response timeout {TIMEOUT_MS} ms); it ended with {:?}",
        failed.get()
    );
    assert_eq!(failed.get(), Some(SessionError::Timeout));
}
