//! The blocking device adapter: driven through whole syncs over a scripted
//! in-process transport (faults on cue), and over loopback TCP against the
//! tokio server adapter.
#![cfg(feature = "tokio")]

mod common;

use core::cell::RefCell;
use core::time::Duration as Wall;
use std::io::{self, Read, Write};
use std::rc::Rc;

use mdm_sync::adapters::blocking::{
    BlockingDevice, Error, Execution, Handler, MemoryStorage, Storage, TaskUpdate, TcpConnector,
    Transport,
};
use mdm_sync::adapters::clock::{Clock, ScaledClock};
use mdm_sync::adapters::push::{UdpPushReceiver, UdpPushSender};
use mdm_sync::device::{DeviceConfig, SessionError};
use mdm_sync::server::{ConnId, MemoryStore, Server, ServerConfig, ServerEvent, TaskState};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::{
    self, reason, ComplianceEvent, DeviceId, Down, ErrorCode, FrameDecoder, Platform, Policy,
    PolicyOutcome, Setting, SyncTrigger, Task, TaskId, TaskKind, TaskResult, TaskStatus, Up,
    MAX_FRAME,
};

// ---- a scripted transport backed by an in-memory server --------------------

/// The server and the shared clock, behind every scripted link.
struct Hub {
    server: Server<MemoryStore>,
    clock: ScaledClock,
    /// Connections opened so far.
    opened: usize,
    /// What to do to the next connections, in order (then: behave).
    faults: Vec<Fault>,
    /// Bytes the device wrote, over all connections.
    written: usize,
    /// Compliance events the server stored, in order.
    compliance: Vec<ComplianceEvent>,
}

impl Hub {
    fn drain_events(&mut self) {
        while let Some(ev) = self.server.poll_event() {
            if let ServerEvent::Compliance { event, .. } = ev {
                self.compliance.push(event);
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// The connection cannot be opened.
    Refuse,
    /// The connection ends (EOF) after this many reads with data.
    CutAfterReads(usize),
    /// No fault.
    None,
}

type SharedHub = Rc<RefCell<Hub>>;

fn hub(clock: ScaledClock) -> SharedHub {
    let cfg = ServerConfig::default();
    let server = Server::new(cfg, MemoryStore::new(), [3; 32], [4; 32]);
    Rc::new(RefCell::new(Hub {
        server,
        clock,
        opened: 0,
        faults: Vec::new(),
        written: 0,
        compliance: Vec::new(),
    }))
}

/// One connection to the hub's server; reads what the server sends, waits
/// (briefly, as a real read timeout would) when it has nothing.
struct Link {
    hub: SharedHub,
    conn: ConnId,
    fault: Fault,
    reads: usize,
    timeout: Option<Wall>,
}

impl Link {
    fn open(hub: &SharedHub) -> io::Result<Link> {
        let mut h = hub.borrow_mut();
        h.opened += 1;
        let fault = if h.faults.is_empty() {
            Fault::None
        } else {
            h.faults.remove(0)
        };
        if fault == Fault::Refuse {
            return Err(io::Error::new(io::ErrorKind::ConnectionRefused, "scripted"));
        }
        let now = h.clock.now();
        let conn = h.server.connection_opened(now);
        let conn = conn.map_err(|e| io::Error::other(format!("{e:?}")))?;
        Ok(Link {
            hub: hub.clone(),
            conn,
            fault,
            reads: 0,
            timeout: None,
        })
    }
}

impl Read for Link {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.fault == Fault::CutAfterReads(self.reads) {
            return Ok(0);
        }
        let mut h = self.hub.borrow_mut();
        h.drain_events();
        if let Some(n) = h.server.poll_transmit_for(self.conn, buf) {
            self.reads += 1;
            return Ok(n);
        }
        drop(h);
        std::thread::sleep(self.timeout.unwrap_or(Wall::MAX).min(Wall::from_millis(1)));
        Err(io::ErrorKind::WouldBlock.into())
    }
}

impl Write for Link {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut h = self.hub.borrow_mut();
        let now = h.clock.now();
        h.written += buf.len();
        let _ = h.server.handle_bytes(self.conn, buf, now); // peer errors close the session
        h.drain_events();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for Link {
    fn set_read_timeout(&mut self, timeout: Option<Wall>) -> io::Result<()> {
        self.timeout = timeout;
        Ok(())
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let mut h = self.hub.borrow_mut();
        let now = h.clock.now();
        h.server.connection_closed(self.conn, now);
    }
}

// ---- a device application that records everything -----------------------------

#[derive(Default)]
struct Agent {
    executed: Vec<Task>,
    running: Vec<(TaskId, Instant)>,
    policies: Vec<u32>,
    done: Vec<SyncTrigger>,
    failed: Vec<SessionError>,
}

impl Handler for Agent {
    fn execute(&mut self, task: Task, now: Instant) -> Execution {
        self.executed.push(task);
        match task.kind {
            TaskKind::Scan => {
                self.running.push((task.id, now + Duration::from_secs(60)));
                Execution::Running
            }
            TaskKind::Locate => Execution::Done(TaskStatus::Succeeded {
                result: Some(TaskResult::Location {
                    lat_e7: 1,
                    lon_e7: 2,
                    accuracy_m: 3,
                }),
            }),
            _ => Execution::Done(TaskStatus::Succeeded { result: None }),
        }
    }

    fn apply_policy(&mut self, policy: &Policy, _now: Instant) -> PolicyOutcome {
        self.policies.push(policy.version);
        PolicyOutcome::Applied
    }

    fn poll_update(&mut self, now: Instant) -> Option<TaskUpdate> {
        let pos = self.running.iter().position(|(_, at)| *at <= now)?;
        let (task, _) = self.running.swap_remove(pos);
        let status = TaskStatus::Succeeded {
            result: Some(TaskResult::Scan { threats: 0 }),
        };
        Some(TaskUpdate::Finished { task, status })
    }

    fn next_update(&self) -> Option<Instant> {
        self.running.iter().map(|(_, at)| *at).min()
    }

    fn sync_done(&mut self, trigger: SyncTrigger, _now: Instant) {
        self.done.push(trigger);
    }

    fn sync_failed(&mut self, error: SessionError, _now: Instant) {
        self.failed.push(error);
    }
}

/// Storage that can refuse writes, or tear one (power loss).
#[derive(Default)]
struct FlakyStorage {
    mem: MemoryStorage,
    refuse: bool,
    /// Tear the write with this index (0-based, counting every attempt).
    tear: Option<usize>,
    attempts: usize,
}

#[derive(Debug, PartialEq)]
enum StorageFault {
    Refused,
    PowerLoss,
}

impl Storage for FlakyStorage {
    type Error = StorageFault;

    fn load(&mut self, slot: usize, buf: &mut Vec<u8>) -> Result<(), StorageFault> {
        let Ok(()) = self.mem.load(slot, buf);
        Ok(())
    }

    fn store(&mut self, slot: usize, bytes: &[u8]) -> Result<(), StorageFault> {
        let attempt = self.attempts;
        self.attempts += 1;
        if self.refuse {
            return Err(StorageFault::Refused);
        }
        if self.tear == Some(attempt) {
            if let Some(s) = self.mem.slot_mut(slot) {
                *s = bytes[..bytes.len() / 2].to_vec();
            }
            return Err(StorageFault::PowerLoss);
        }
        let Ok(()) = self.mem.store(slot, bytes);
        Ok(())
    }
}

type Connect = Box<dyn FnMut() -> io::Result<Link>>;
type Dev = BlockingDevice<Connect, FlakyStorage, Agent>;

const DEV: DeviceId = DeviceId(1);

fn setup(clock: ScaledClock) -> (SharedHub, DeviceConfig) {
    let hub = hub(clock);
    let secret = hub.borrow_mut().server.enroll(DEV, clock.now()).unwrap();
    let cfg = DeviceConfig::new(DEV, 0, secret, Platform::Android);
    (hub, cfg)
}

fn boot(hub: &SharedHub, cfg: &DeviceConfig, storage: FlakyStorage, agent: Agent) -> Dev {
    let clock = hub.borrow().clock;
    let h = hub.clone();
    let connect: Connect = Box::new(move || Link::open(&h));
    BlockingDevice::boot(cfg.clone(), connect, storage, agent, clock).unwrap()
}

fn enqueue(hub: &SharedHub, kind: TaskKind) -> TaskId {
    let mut h = hub.borrow_mut();
    let now = h.clock.now();
    h.server
        .enqueue_task(DEV, kind, Default::default(), now)
        .unwrap()
}

fn state(hub: &SharedHub, task: TaskId) -> Option<TaskState> {
    hub.borrow().server.task_state(DEV, task)
}

/// Runs the device until `done` holds (at most 300 rounds).
fn run_until(dev: &mut Dev, mut done: impl FnMut(&Dev) -> bool) {
    for _ in 0..300 {
        if done(dev) {
            return;
        }
        let wait = dev.run_once().unwrap();
        std::thread::sleep(wait.min(Wall::from_millis(2)));
    }
    panic!("the device did not get there in 300 rounds");
}

/// A device that has completed its boot sync with an empty server.
fn after_boot_sync() -> (SharedHub, DeviceConfig, Dev) {
    let (hub, cfg) = setup(ScaledClock::scaled(1000.0));
    let mut dev = boot(&hub, &cfg, FlakyStorage::default(), Agent::default());
    run_until(&mut dev, |d| d.handler().done.contains(&SyncTrigger::Boot));
    (hub, cfg, dev)
}

fn all_final(hub: &SharedHub, tasks: &[TaskId]) -> bool {
    tasks
        .iter()
        .all(|t| state(hub, *t).is_some_and(|s| s.is_final()))
}

#[test]
fn every_task_kind_runs_once_through_a_sync_and_a_reboot() {
    let clock = ScaledClock::scaled(1000.0);
    let (hub, cfg) = setup(clock);
    let tasks: Vec<TaskId> = TaskKind::ALL.iter().map(|k| enqueue(&hub, *k)).collect();
    let settings = [Setting { key: 1, value: 8 }];
    let now = clock.now();
    let version = hub
        .borrow_mut()
        .server
        .assign_policy(DEV, &settings, now)
        .unwrap();

    let mut dev = boot(&hub, &cfg, FlakyStorage::default(), Agent::default());
    run_until(&mut dev, |d| {
        all_final(&hub, &tasks) && d.device().outbox_len() == 0 && !d.is_connected()
    });
    for t in &tasks {
        let s = state(&hub, *t).unwrap();
        assert!(matches!(s, TaskState::Succeeded { .. }), "{s:?}");
    }
    assert_eq!(dev.handler().executed.len(), 5);
    assert_eq!(dev.handler().policies, vec![version]);
    assert!(dev.handler().done.contains(&SyncTrigger::Boot));
    assert!(dev.storage().mem.writes() > 0);

    // Reboot: a new engine from the storage, the same application log.
    let (_, storage, agent) = dev.into_parts();
    let mut dev = boot(&hub, &cfg, storage, agent);
    assert_eq!(dev.device().policy_version(), version);
    let syncs = dev.handler().done.len();
    run_until(&mut dev, |d| d.handler().done.len() > syncs);
    assert_eq!(dev.handler().executed.len(), 5, "nothing runs twice");
    assert_eq!(dev.handler().done.last(), Some(&SyncTrigger::Boot));
}

#[test]
fn refused_connections_back_off_and_then_sync() {
    let clock = ScaledClock::scaled(1000.0);
    let (hub, cfg) = setup(clock);
    hub.borrow_mut().faults = vec![Fault::Refuse, Fault::Refuse];
    let task = enqueue(&hub, TaskKind::Lock);
    let mut dev = boot(&hub, &cfg, FlakyStorage::default(), Agent::default());
    let wait = dev.run_once().unwrap();
    assert!(
        !wait.is_zero(),
        "a refused connection is retried after a backoff"
    );
    assert_eq!(dev.handler().failed, vec![SessionError::ConnectFailed]);
    run_until(&mut dev, |_| all_final(&hub, &[task]));
    assert_eq!(hub.borrow().opened, 3);
    assert_eq!(dev.handler().executed.len(), 1);
}

#[test]
fn a_connection_cut_mid_sync_loses_and_repeats_nothing() {
    let clock = ScaledClock::scaled(1000.0);
    let (hub, cfg) = setup(clock);
    hub.borrow_mut().faults = vec![Fault::CutAfterReads(3), Fault::CutAfterReads(2)];
    let tasks: Vec<TaskId> = TaskKind::ALL.iter().map(|k| enqueue(&hub, *k)).collect();
    let mut dev = boot(&hub, &cfg, FlakyStorage::default(), Agent::default());
    dev.raise_compliance(ComplianceEvent::UsbDebugging { enabled: true })
        .unwrap();
    run_until(&mut dev, |d| {
        all_final(&hub, &tasks) && d.device().outbox_len() == 0 && !d.is_connected()
    });
    assert!(dev.handler().failed.contains(&SessionError::Closed));
    let mut ids: Vec<TaskId> = dev.handler().executed.iter().map(|t| t.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), dev.handler().executed.len(), "no task ran twice");
    assert_eq!(ids.len(), 5);
    let stored = hub.borrow().compliance.clone();
    assert_eq!(
        stored,
        vec![ComplianceEvent::UsbDebugging { enabled: true }]
    );
}

#[test]
fn a_failed_snapshot_write_holds_every_byte_until_it_is_retried() {
    let (hub, _, mut dev) = after_boot_sync();

    let task = enqueue(&hub, TaskKind::Lock);
    dev.storage_mut().refuse = true;
    dev.push_received();
    let mut failures = 0;
    let mut written_at_first_failure = 0;
    for _ in 0..50 {
        match dev.run_once() {
            Err(Error::Storage(StorageFault::Refused)) => {
                failures += 1;
                if failures == 1 {
                    written_at_first_failure = hub.borrow().written;
                }
            }
            Ok(wait) => std::thread::sleep(wait.min(Wall::from_millis(2))),
            Err(e) => panic!("{e}"),
        }
        if failures == 3 {
            break;
        }
    }
    assert_eq!(
        failures, 3,
        "each run retries the write first and fails again"
    );
    // The task was accepted (its "received" report needs a snapshot first):
    // nothing about it may have left the device, and it has not run.
    assert!(dev.handler().executed.is_empty());
    assert_eq!(
        hub.borrow().written,
        written_at_first_failure,
        "nothing sent"
    );
    assert_ne!(state(&hub, task), Some(TaskState::Delivered));

    dev.storage_mut().refuse = false;
    run_until(&mut dev, |_| all_final(&hub, &[task]));
    assert_eq!(dev.handler().executed.len(), 1);
}

/// Power fails while the snapshot after the first task's final status is
/// written. Every task the device accepted in that sync must either have run
/// (then it may be reported interrupted) or be run after the reboot: none may
/// be failed as "interrupted" without ever having been handed out.
#[test]
fn power_loss_mid_write_never_fails_a_task_that_never_ran() {
    let (hub, cfg, mut dev) = after_boot_sync();
    let writes = dev.storage().attempts;

    let tasks: Vec<TaskId> = [TaskKind::Lock, TaskKind::Unlock, TaskKind::Wipe]
        .iter()
        .map(|k| enqueue(&hub, *k))
        .collect();
    // Write `writes` accepts the three tasks; the next one (the first final
    // status) is torn.
    dev.storage_mut().tear = Some(writes + 1);
    dev.push_received();
    let mut crashed = false;
    for _ in 0..100 {
        match dev.run_once() {
            Err(Error::Storage(StorageFault::PowerLoss)) => {
                crashed = true;
                break;
            }
            Ok(wait) => std::thread::sleep(wait.min(Wall::from_millis(2))),
            Err(e) => panic!("{e}"),
        }
    }
    assert!(crashed, "the scripted power loss happened");
    let ran_before: Vec<TaskId> = dev.handler().executed.iter().map(|t| t.id).collect();

    let (_, mut storage, agent) = dev.into_parts();
    storage.tear = None;
    let mut dev = boot(&hub, &cfg, storage, agent);
    run_until(&mut dev, |d| {
        all_final(&hub, &tasks) && d.device().outbox_len() == 0 && !d.is_connected()
    });
    let ran: Vec<TaskId> = dev.handler().executed.iter().map(|t| t.id).collect();
    for t in &tasks {
        let runs = ran.iter().filter(|r| *r == t).count();
        assert_eq!(
            runs, 1,
            "task {t:?} ran {runs} times (before the crash: {ran_before:?})"
        );
        let s = state(&hub, *t).unwrap();
        let interrupted = TaskState::Failed {
            reason: reason::INTERRUPTED_BY_REBOOT,
        };
        if !ran_before.contains(t) {
            assert_ne!(s, interrupted, "task {t:?} never ran before the crash");
        }
    }
}

// ---- loopback TCP against the tokio server adapter -------------------------------

#[test]
fn tcp_loopback_sync_and_push_against_the_tokio_server() {
    let rt = common::runtime();
    let clock = ScaledClock::new();
    let server = Server::new(
        ServerConfig::default(),
        MemoryStore::new(),
        [5; 32],
        [6; 32],
    );
    let push = UdpPushSender::bind_loopback().unwrap();
    let (handle, engine) = rt.block_on(async {
        let (handle, engine) = mdm_sync::adapters::tokio::Builder::new(server, push)
            .clock(clock)
            .spawn();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(mdm_sync::adapters::tokio::serve(listener, handle.clone()));
        ((handle, addr), engine)
    });
    let (handle, addr) = handle;
    let secret = rt.block_on(handle.enroll(DEV)).unwrap();
    let first = rt
        .block_on(handle.enqueue_task(DEV, TaskKind::Locate, Default::default()))
        .unwrap();

    let pushes = UdpPushReceiver::bind_loopback().unwrap();
    let mut cfg = DeviceConfig::new(DEV, 0, secret, Platform::Ios);
    cfg.push_token = pushes.token().as_str().try_into().unwrap();
    let device = std::thread::spawn(move || {
        let connector = TcpConnector::new(addr).with_timeout(Wall::from_secs(2));
        let mut dev: BlockingDevice<_, _, _> = BlockingDevice::boot(
            cfg,
            connector,
            MemoryStorage::new(),
            Agent::default(),
            clock,
        )
        .unwrap();
        let give_up = std::time::Instant::now() + Wall::from_secs(10);
        while dev.handler().executed.len() < 2 && std::time::Instant::now() < give_up {
            common::blocking_round(&mut dev, &pushes, DEV);
        }
        // One more round so the last final status goes out.
        let _ = dev.run_once();
        dev.handler()
            .executed
            .iter()
            .map(|t| t.kind)
            .collect::<Vec<_>>()
    });

    let wait_final = |task: TaskId| {
        for _ in 0..500 {
            let rec = rt.block_on(handle.task(task)).unwrap();
            if rec.is_some_and(|r| r.state.is_final()) {
                return rec.map(|r| r.state);
            }
            std::thread::sleep(Wall::from_millis(10));
        }
        None
    };
    let s = wait_final(first);
    assert!(
        matches!(s, Some(TaskState::Succeeded { result: Some(_) })),
        "{s:?}"
    );
    // Once the device has closed its session, new work reaches it by push.
    // (The server records the final status before the device has read the
    // end of its session: work queued in that window is offered in the open
    // session, with no push, which is right but not what this test checks.)
    let idle = (0..500).any(|_| {
        let sessions = rt.block_on(handle.call(|s, _| s.session_count())).unwrap();
        sessions == 0 || {
            std::thread::sleep(Wall::from_millis(10));
            false
        }
    });
    assert!(idle, "the device's first session never ended");
    let second = rt
        .block_on(handle.enqueue_task(DEV, TaskKind::Lock, Default::default()))
        .unwrap();
    let s = wait_final(second);
    assert_eq!(s, Some(TaskState::Succeeded { result: None }));
    let kinds = device.join().unwrap();
    assert_eq!(kinds, vec![TaskKind::Locate, TaskKind::Lock]);

    let view = rt.block_on(handle.fleet_view()).unwrap();
    assert_eq!(view.tasks.succeeded, 2);
    assert_eq!(view.last_trigger[SyncTrigger::Push.index()], 1);
    rt.block_on(handle.shutdown());
    let server = rt.block_on(engine).unwrap();
    assert_eq!(server.fleet_view().unwrap().tasks.succeeded, 2);
}

/// Every `Down` message in a byte stream.
fn down_messages(mut bytes: &[u8]) -> Vec<Down> {
    let mut decoder = FrameDecoder::<MAX_FRAME>::new();
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let n = decoder.push(bytes);
        bytes = &bytes[n..];
        while let Some(frame) = decoder.decode() {
            if let Ok(payload) = frame {
                out.extend(wire::decode::<Down>(payload).ok());
            }
        }
    }
    out
}

#[test]
fn the_tokio_server_closes_silent_and_misbehaving_peers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // 1000x: the 30-second handshake timeout takes 30 ms.
        let (handle, addr) = common::loopback_server(ScaledClock::scaled(1000.0)).await;
        let limit = Wall::from_secs(5);

        // Silent: a timeout error frame, then the connection is closed.
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut got = Vec::new();
        let read = tokio::time::timeout(limit, silent.read_to_end(&mut got)).await;
        assert!(matches!(read, Ok(Ok(_))), "closed in time: {read:?}");
        assert_eq!(down_messages(&got), vec![Down::Error(ErrorCode::Timeout)]);

        // A proof before any hello: an error frame, then closed.
        let mut rude = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut frame = [0u8; MAX_FRAME];
        let n = wire::frame::encode(&Up::Proof { mac: [0; 32] }, &mut frame).unwrap();
        rude.write_all(b"garbage first").await.unwrap();
        rude.write_all(&frame[..n]).await.unwrap();
        let mut got = Vec::new();
        let read = tokio::time::timeout(limit, rude.read_to_end(&mut got)).await;
        assert!(matches!(read, Ok(Ok(_))), "closed in time: {read:?}");
        assert_eq!(
            down_messages(&got),
            vec![Down::Error(ErrorCode::BadMessage)]
        );

        // The engine still serves operator calls.
        assert!(handle.enroll(DEV).await.is_ok());
        let view = handle.fleet_view().await.unwrap();
        assert_eq!((view.devices, view.online), (1, 0));
        handle.shutdown().await;
    });
}

/// A client that sends a foreign `Hello` and half-closes at once still gets
/// the version-mismatch answer: the link tells the engine of the end of input
/// and writes what the engine still had before it lets go.
#[test]
fn the_tokio_server_answers_a_peer_that_half_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (handle, addr) = common::loopback_server(ScaledClock::new()).await;
        let mut foreign = vec![0xA5, 0x5A, 5, 0, 0x00, 0x09, 0xFF, 0xFF, 0xFF];
        let crc = wire::crc32(&foreign[2..]);
        foreign.extend_from_slice(&crc.to_le_bytes());
        let supported = wire::PROTOCOL_VERSION;
        let mut answered = 0;
        for _ in 0..50 {
            let mut early = tokio::net::TcpStream::connect(addr).await.unwrap();
            early.write_all(&foreign).await.unwrap();
            early.shutdown().await.unwrap();
            let mut got = Vec::new();
            let limit = Wall::from_secs(5);
            let read = tokio::time::timeout(limit, early.read_to_end(&mut got)).await;
            assert!(matches!(read, Ok(Ok(_))), "closed in time: {read:?}");
            let want = vec![Down::Error(ErrorCode::VersionMismatch { supported })];
            answered += usize::from(down_messages(&got) == want);
        }
        assert_eq!(answered, 50, "half-closed peers left without an answer");
        handle.shutdown().await;
    });
}
