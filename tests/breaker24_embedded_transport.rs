//! The embedded runner over transports that break their contract the way
//! real drivers do, against the sans-IO server in the same thread (no
//! sockets): the transport's writes go into `Server::handle_bytes`, its
//! reads take `Server::poll_transmit_for`.
//!
//! - A `write` that returns `Ok(0)`: embedded-io-async's own `write_all`
//!   panics on it ("write() returned Ok(0)"), and its docs only say a
//!   writer *should* not return it (a driver whose link went away may).
//!   The blocking adapter's `std::io::Write::write_all` turns the same into
//!   an error. Expected: the session fails like any broken transport, the
//!   runner goes on, and the next connection delivers the task once.
//! - A `read` that claims more bytes than the buffer it was given: the
//!   runner sliced its receive buffer with the count and panicked.
//!   `Runner::restore` already caps what a storage read claims at the
//!   buffer; a transport's count deserves the same. Expected: that
//!   session fails, the next one delivers the task once.
#![cfg(all(feature = "embedded", feature = "tokio"))]

use core::cell::RefCell;
use core::convert::Infallible;
use std::rc::Rc;

use mdm_sync::adapters::embedded::{Connector, Handler, Runner, Wake, WakeSource};
use mdm_sync::device::{Device, DeviceConfig, SessionError};
use mdm_sync::server::{ConnId, MemoryStore, Server, ServerConfig, TaskState};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::{
    DeviceId, Platform, Policy, PolicyOutcome, Task, TaskId, TaskKind, TaskStatus,
};

mod common;

const DEV: DeviceId = DeviceId(24);
const NOW: Instant = Instant::from_millis(5_000);

/// How the transport of the first connection misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// Takes this many bytes, then every `write` returns `Ok(0)`.
    WriteZeroAfter(usize),
    /// Its first `read` that has bytes claims one more than the buffer.
    ReadOverlong,
}

struct Net {
    server: Server<MemoryStore>,
    fault: Fault,
    connections: usize,
    executed: Vec<TaskId>,
    failures: Vec<SessionError>,
    task: TaskId,
}

impl Net {
    fn done(&self) -> bool {
        let state = self.server.task_state(DEV, self.task);
        matches!(state, Some(TaskState::Succeeded { .. })) || self.connections > 20
    }
}

type Shared = Rc<RefCell<Net>>;

struct Link {
    net: Shared,
    conn: ConnId,
    faulty: bool,
    written: usize,
}

impl embedded_io_async::ErrorType for Link {
    type Error = Infallible;
}

impl embedded_io_async::Write for Link {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
        let mut net = self.net.borrow_mut();
        let mut n = buf.len();
        if let (true, Fault::WriteZeroAfter(k)) = (self.faulty, net.fault) {
            n = n.min(k.saturating_sub(self.written));
        }
        self.written += n;
        let _ = net.server.handle_bytes(self.conn, &buf[..n], NOW);
        Ok(n)
    }

    async fn flush(&mut self) -> Result<(), Infallible> {
        Ok(())
    }
}

impl embedded_io_async::Read for Link {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
        loop {
            {
                let mut net = self.net.borrow_mut();
                if let Some(n) = net.server.poll_transmit_for(self.conn, buf) {
                    if self.faulty && net.fault == Fault::ReadOverlong {
                        return Ok(buf.len() + 1);
                    }
                    return Ok(n);
                }
                if net.server.session_count() == 0 {
                    return Ok(0);
                }
            }
            // Nothing to read yet: the runner's deadline ends the wait.
            embassy_time::Timer::after_millis(5).await;
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Ok(mut net) = self.net.try_borrow_mut() {
            net.server.connection_closed(self.conn, NOW);
        }
    }
}

struct Dial(Shared);

impl Connector for Dial {
    type Connection<'a> = Link;
    type Error = Infallible;

    async fn connect(&mut self) -> Result<Link, Infallible> {
        let mut net = self.0.borrow_mut();
        net.connections += 1;
        let conn = net.server.connection_opened(NOW).unwrap();
        Ok(Link {
            net: self.0.clone(),
            conn,
            faulty: net.connections == 1,
            written: 0,
        })
    }
}

/// Shuts the runner down once the task is final on the server (or the
/// device gave up on too many connections).
struct Until(Shared);

impl WakeSource for Until {
    async fn wait(&mut self) -> Wake {
        while !self.0.borrow().done() {
            embassy_time::Timer::after_millis(5).await;
        }
        Wake::Shutdown
    }
}

struct Agent(Shared);

impl Handler for Agent {
    async fn execute(&mut self, task: Task) -> Option<TaskStatus> {
        self.0.borrow_mut().executed.push(task.id);
        Some(TaskStatus::Succeeded { result: None })
    }

    async fn cancel(&mut self, _task: TaskId) -> Option<TaskStatus> {
        Some(TaskStatus::Cancelled)
    }

    async fn apply_policy(&mut self, _policy: &Policy) -> Option<PolicyOutcome> {
        Some(PolicyOutcome::Applied)
    }

    fn sync_failed(&mut self, error: SessionError) {
        self.0.borrow_mut().failures.push(error);
    }
}

/// Runs one device until its task is final on the server; returns what
/// happened.
async fn run(fault: Fault) -> Net {
    let mut server = Server::new(
        ServerConfig::default(),
        MemoryStore::new(),
        [3; 32],
        [4; 32],
    );
    let secret = server.enroll(DEV, NOW).unwrap();
    let task = server
        .enqueue_task(DEV, TaskKind::Lock, Default::default(), NOW)
        .unwrap();
    let net = Rc::new(RefCell::new(Net {
        server,
        fault,
        connections: 0,
        executed: Vec::new(),
        failures: Vec::new(),
        task,
    }));
    let mut cfg = DeviceConfig::new(DEV, 0, secret, Platform::Android);
    cfg.timers.response_timeout = Duration::from_millis(300);
    cfg.timers.linger = Duration::from_millis(300);
    cfg.timers.backoff_min = Duration::from_millis(20);
    cfg.timers.backoff_max = Duration::from_millis(100);
    let mut runner = Runner::new(
        Dial(net.clone()),
        Until(net.clone()),
        common::MemorySlots::default(),
        Agent(net.clone()),
    );
    let mut buf = [0u8; <Device>::SNAPSHOT_MAX];
    let mut device: Device = runner.restore(cfg, &mut buf).await.unwrap();
    runner.run(&mut device, &mut buf).await.unwrap();
    drop(runner);
    Rc::try_unwrap(net)
        .ok()
        .expect("the runner's parts are gone")
        .into_inner()
}

fn check(fault: Fault, net: &Net) {
    assert!(
        matches!(
            net.server.task_state(DEV, net.task),
            Some(TaskState::Succeeded { .. })
        ),
        "{fault:?}: the task never succeeded after {} connections; failures {:?}",
        net.connections,
        net.failures
    );
    assert_eq!(net.executed, [net.task], "{fault:?}: run exactly once");
    assert!(
        net.connections >= 2 && !net.failures.is_empty(),
        "{fault:?}: the faulty connection must fail its sync: {} connections, failures {:?}",
        net.connections,
        net.failures
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_write_of_zero_bytes_fails_the_session_not_the_firmware() {
    // At once, in the middle of the Hello's header, and in the middle of
    // the proof (the Hello of a device without a push token is 24 bytes).
    for k in [0, 3, 30] {
        let fault = Fault::WriteZeroAfter(k);
        let net = run(fault).await;
        check(fault, &net);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_read_that_claims_too_many_bytes_fails_the_session_not_the_firmware() {
    let net = run(Fault::ReadOverlong).await;
    check(Fault::ReadOverlong, &net);
}
