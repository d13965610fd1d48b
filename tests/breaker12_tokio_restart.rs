//! The tokio server adapter over a store that outlived the previous server
//! process (`Server::recover`, then `Builder::spawn`, as README shows).
#![cfg(feature = "tokio")]

use std::sync::{Arc, Mutex};

use mdm_sync::adapters::clock::{Clock, ScaledClock};
use mdm_sync::adapters::push::PushError;
use mdm_sync::adapters::tokio::Builder;
use mdm_sync::server::{FleetStore, MemoryStore, Server, ServerConfig};
use mdm_sync::time::Instant;
use mdm_sync::wire::{DeviceId, Platform, TaskKind};

const DEV: DeviceId = DeviceId(3);

/// A store as an old process left it: `DEV` enrolled with a push token and
/// a task queued whose push never left that process.
fn store_left_by_an_old_process() -> MemoryStore {
    let mut old = Server::new(
        ServerConfig::default(),
        MemoryStore::new(),
        [1; 32],
        [2; 32],
    );
    old.enroll(DEV, Instant::ZERO).unwrap();
    old.store_mut()
        .set_push_target(DEV, Platform::Android, "tok-3")
        .unwrap();
    old.enqueue_task(DEV, TaskKind::Lock, Default::default(), Instant::ZERO)
        .unwrap();
    // Its events (the push among them) die with it.
    old.into_store()
}

/// `recover` queues the pushes the old process may not have sent as events
/// of the engine; the engine task must hand them to the push sender when it
/// starts, not at its first timer or message. Checked without timing: the
/// first call the engine runs looks at what the sender got before it. The
/// clock runs a thousand times slower than real time, so no timer of the
/// engine (the push's rate-limit check is 60 s of engine time ahead) falls
/// due while the test runs and could flush them instead.
#[tokio::test]
async fn the_pushes_recover_queued_go_out_when_the_engine_starts() {
    let clock = ScaledClock::scaled(0.001).starting_at(Instant::from_millis(60_000));
    let mut server = Server::new(
        ServerConfig::default(),
        store_left_by_an_old_process(),
        [1; 32],
        [3; 32],
    );
    let recovered = server.recover(clock.now()).unwrap();
    assert_eq!(recovered.pushed, 1, "{recovered:?}");
    let sent = Arc::new(Mutex::new(Vec::new()));
    let log = sent.clone();
    let sender = move |d: DeviceId, _: Platform, token: &str| -> Result<(), PushError> {
        log.lock().unwrap().push((d, token.to_string()));
        Ok(())
    };
    let (handle, engine) = Builder::new(server, sender).clock(clock).spawn();
    let seen = sent.clone();
    let before_first_call = handle
        .call(move |_, _| seen.lock().unwrap().clone())
        .await
        .unwrap();
    assert_eq!(before_first_call, [(DEV, "tok-3".to_string())]);
    handle.shutdown().await;
    engine.await.unwrap();
}

mod end_to_end {
    //! A real device (the blocking adapter on a thread, pushes by UDP) and
    //! the tokio server over 127.0.0.1: the server process stops with work
    //! whose push it never sent, and a new one starts over its store on the
    //! same address, on a clock that goes on from the old one
    //! (`ScaledClock::starting_at`). The device carries on: the new work
    //! reaches it by the push `recover` sends, every task runs once.
    use core::sync::atomic::{AtomicBool, Ordering};
    use core::time::Duration as Wall;
    use std::sync::{Arc, Mutex};

    use mdm_sync::adapters::blocking::{
        BlockingDevice, Execution, Handler, MemoryStorage, TcpConnector,
    };
    use mdm_sync::adapters::clock::{Clock, ScaledClock};
    use mdm_sync::adapters::push::{PushError, PushSender, UdpPushReceiver, UdpPushSender};
    use mdm_sync::adapters::tokio::{serve, Builder, ServerHandle};
    use mdm_sync::device::{DeviceConfig, SessionError};
    use mdm_sync::server::{MemoryStore, Server, ServerConfig, TaskState};
    use mdm_sync::time::Instant;
    use mdm_sync::wire::{
        DeviceId, Platform, Policy, PolicyOutcome, SyncTrigger, Task, TaskId, TaskKind, TaskStatus,
    };
    use tokio::net::TcpListener;

    const DEV: DeviceId = DeviceId(11);

    /// Runs every task at once; remembers which, and how its syncs went
    /// (shown when the test fails).
    struct Agent(Arc<Mutex<Vec<TaskId>>>, Log);

    type Log = Arc<Mutex<Vec<String>>>;

    impl Handler for Agent {
        fn execute(&mut self, task: Task, _now: Instant) -> Execution {
            self.0.lock().unwrap().push(task.id);
            Execution::Done(TaskStatus::Succeeded { result: None })
        }
        fn apply_policy(&mut self, _policy: &Policy, _now: Instant) -> PolicyOutcome {
            PolicyOutcome::Applied
        }
        fn sync_done(&mut self, trigger: SyncTrigger, now: Instant) {
            self.1
                .lock()
                .unwrap()
                .push(format!("{now:?}: {trigger:?} sync done"));
        }
        fn sync_failed(&mut self, error: SessionError, now: Instant) {
            self.1
                .lock()
                .unwrap()
                .push(format!("{now:?}: sync failed: {error:?}"));
        }
    }

    /// Pushes over UDP to the device, or drops them (a process that dies
    /// before its pushes leave it) while `lose` is set.
    fn push_sender(lose: Arc<AtomicBool>) -> impl PushSender + Send + 'static {
        let mut udp = UdpPushSender::bind_loopback().unwrap();
        move |d: DeviceId, p: Platform, t: &str| -> Result<(), PushError> {
            if lose.load(Ordering::SeqCst) {
                return Ok(());
            }
            udp.send_push(d, p, t)
        }
    }

    /// Polls the engine until `task` is final (a liveness bound, generous:
    /// the push makes it a matter of milliseconds; the device's periodic
    /// sync would take 3 hours).
    async fn until_final(h: &ServerHandle<MemoryStore>, task: TaskId, log: &Log) -> TaskState {
        for _ in 0..2400 {
            let state = h.task(task).await.unwrap().map(|t| t.state);
            if let Some(s) = state.filter(|s| s.is_final()) {
                return s;
            }
            tokio::time::sleep(Wall::from_millis(50)).await;
        }
        let state = h.task(task).await.unwrap().map(|t| t.state);
        panic!("task {task:?} {state:?} after 2400 polls; the device: {log:?}");
    }

    /// Polls the engine until no session is open (bounded as `until_final`).
    async fn until_no_session(h: &ServerHandle<MemoryStore>) {
        for _ in 0..2400 {
            if h.call(|s, _| s.session_count()).await.unwrap() == 0 {
                return;
            }
            tokio::time::sleep(Wall::from_millis(50)).await;
        }
        panic!("a session still open after 2400 polls");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_device_carries_on_across_a_tokio_server_restart() {
        let cfg = ServerConfig::default();
        let mut server = Server::new(cfg, MemoryStore::new(), [5; 32], [6; 32]);
        let secret = server.enroll(DEV, Instant::ZERO).unwrap();
        let lose = Arc::new(AtomicBool::new(false));
        // Instants as a Unix clock gives them, going on from there.
        let clock_a = ScaledClock::new().starting_at(Instant::from_millis(1_700_000_000_000));
        let (a, engine_a) = Builder::new(server, push_sender(lose.clone()))
            .clock(clock_a)
            .spawn();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serving_a = tokio::spawn(serve(listener, a.clone()));

        // The device, on its own thread and clock.
        let executed = Arc::new(Mutex::new(Vec::new()));
        let log = Log::default();
        let stop = Arc::new(AtomicBool::new(false));
        let device = {
            let (executed, stop, log) = (executed.clone(), stop.clone(), log.clone());
            std::thread::spawn(move || {
                let pushes = UdpPushReceiver::bind_loopback().unwrap();
                let mut dcfg = DeviceConfig::new(DEV, 0, secret, Platform::Android);
                dcfg.push_token = pushes.token().as_str().try_into().unwrap();
                let mut dev: BlockingDevice<_, _, _> = BlockingDevice::boot(
                    dcfg,
                    TcpConnector::new(addr),
                    MemoryStorage::new(),
                    Agent(executed, log),
                    ScaledClock::new(),
                )
                .unwrap();
                while !stop.load(Ordering::SeqCst) {
                    let wait = dev.run_once().unwrap();
                    if pushes
                        .recv_timeout(wait.min(Wall::from_millis(20)))
                        .unwrap()
                        == Some(DEV)
                    {
                        dev.push_received();
                    }
                }
            })
        };

        // A task before the restart, delivered by push once the boot sync
        // is over (queued while the device closes its session, it would be
        // offered into the closing session: see
        // tests/breaker12_late_offer.rs).
        for _ in 0..2400 {
            if a.device_view(DEV).await.unwrap().last_sync.is_some() {
                break;
            }
            tokio::time::sleep(Wall::from_millis(50)).await;
        }
        until_no_session(&a).await;
        let first = a
            .enqueue_task(DEV, TaskKind::Lock, Default::default())
            .await
            .unwrap();
        assert!(matches!(
            until_final(&a, first, &log).await,
            TaskState::Succeeded { .. }
        ));
        let synced_a = a.device_view(DEV).await.unwrap().last_sync.unwrap().0;

        // Once the device's session is over (else the task would be offered
        // in it), a task whose push dies with the old process; the process
        // stops.
        until_no_session(&a).await;
        lose.store(true, Ordering::SeqCst);
        let second = a
            .enqueue_task(DEV, TaskKind::Scan, Default::default())
            .await
            .unwrap();
        let old_now = a.now();
        a.shutdown().await;
        let store = engine_a.await.unwrap().into_store();
        serving_a.abort();
        let _ = serving_a.await;

        // The new process, on the same address, its clock going on.
        let clock_b = ScaledClock::new().starting_at(old_now);
        let mut server = Server::new(cfg, store, [5; 32], [7; 32]);
        let recovered = server.recover(clock_b.now()).unwrap();
        assert_eq!(recovered.pushed, 1, "{recovered:?}");
        let (b, engine_b) = Builder::new(server, push_sender(Arc::new(AtomicBool::new(false))))
            .clock(clock_b)
            .spawn();
        let listener = TcpListener::bind(addr).await.unwrap();
        let serving_b = tokio::spawn(serve(listener, b.clone()));

        assert!(matches!(
            until_final(&b, second, &log).await,
            TaskState::Succeeded { .. }
        ));
        let synced_b = b.device_view(DEV).await.unwrap().last_sync.unwrap().0;
        // On from the old process's instants (not from 0), in the same
        // millisecond at the most.
        assert!(
            synced_b >= synced_a,
            "instants go on: {synced_a:?} then {synced_b:?}"
        );
        assert_eq!(*executed.lock().unwrap(), [first, second], "each task once");

        stop.store(true, Ordering::SeqCst);
        device.join().unwrap();
        b.shutdown().await;
        engine_b.await.unwrap();
        serving_b.abort();
    }
}
