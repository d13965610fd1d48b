//! The push of 3c4b8ce (a task offered after `SyncEnd` that the device
//! closed without confirming) under a server clock that went back.
//!
//! `connection_closed` holds the push and arms a check at once; the check
//! (`push_timer`) finds the device pushed less than `push_min_interval` ago
//! by the clock at hand and leaves the push to the check queued with that
//! earlier push. But if the clock went back, that check already ran (when
//! the clock was ahead): nothing is left to send the held push, the late
//! task stays `Offered`, and the idle device waits for its periodic sync,
//! 3 h. `request_push` handles the same case (a check of its own at the end
//! of the interval); the held push of a close did not.
//!
//! The test drives a real `Device` against the `Server` in memory; the
//! device's clock runs forward on its own, only the server's goes back (as
//! in `tests/clock_backwards.rs`). It fails if no push goes out within the
//! half hour after the close, which is what happened before the fix.

use mdm_sync::device::{Device, DeviceConfig, Event};
use mdm_sync::server::{MemoryStore, Server, ServerConfig, ServerEvent, TaskState};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::{DeviceId, Platform, TaskKind, TaskStatus};

const ID: DeviceId = DeviceId(14);

/// Runs one sync of `dev` against `server` until the device decides to
/// disconnect (the server is not told: the caller closes the connection).
/// Every task the device is handed succeeds at once. Returns the connection.
fn sync_until_device_closes(
    server: &mut Server<MemoryStore>,
    dev: &mut Device,
    dnow: Instant,
    snow: Instant,
) -> mdm_sync::server::ConnId {
    let mut conn = None;
    let mut buf = [0u8; 1024];
    for _ in 0..200 {
        dev.handle_timeout(dnow);
        let mut closing = false;
        while let Some(ev) = dev.poll_event() {
            match ev {
                Event::Connect => {
                    conn = Some(server.connection_opened(snow).unwrap());
                    dev.connected(dnow);
                }
                Event::Execute(task) => {
                    let ok = TaskStatus::Succeeded { result: None };
                    dev.task_status(task.id, ok, dnow).unwrap();
                }
                Event::Disconnect => closing = true,
                _ => {}
            }
        }
        if closing {
            return conn.expect("a connection before the close");
        }
        let Some(c) = conn else { continue };
        while let Some(n) = dev.poll_transmit(&mut buf).unwrap() {
            server.handle_bytes(c, &buf[..n], snow).unwrap();
        }
        while let Some(n) = server.poll_transmit_for(c, &mut buf) {
            dev.handle_bytes(&buf[..n], dnow).unwrap();
        }
    }
    panic!("the sync never ended");
}

fn pushes_to(server: &mut Server<MemoryStore>) -> usize {
    let mut n = 0;
    while let Some(ev) = server.poll_event() {
        n += usize::from(matches!(ev, ServerEvent::SendPush { device, .. } if device == ID));
    }
    n
}

#[test]
fn a_late_offer_after_the_server_clock_went_back_still_gets_its_push() {
    let cfg = ServerConfig::default();
    let min = cfg.push_min_interval;
    let t0 = Instant::from_millis(5_000_000);
    let mut server = Server::new(cfg, MemoryStore::new(), [1; 32], [2; 32]);
    let secret = server.enroll(ID, t0).unwrap();
    let mut dcfg = DeviceConfig::new(ID, 0, secret, Platform::Android);
    dcfg.push_token = heapless::String::try_from("tok").unwrap();
    let mut dev: Device = Device::new(dcfg, t0);

    // Boot sync: the server learns the push token.
    let c = sync_until_device_closes(&mut server, &mut dev, t0, t0);
    server.connection_closed(c, t0);

    // A task while the device is away: pushed at `p`.
    let p = t0 + Duration::from_mins(1);
    server
        .enqueue_task(ID, TaskKind::Lock, Default::default(), p)
        .unwrap();
    assert_eq!(pushes_to(&mut server), 1, "the task's push");
    // The server's clock runs past that push's rate-limit check.
    let ahead = p + min + Duration::from_secs(5);
    server.handle_timeout(ahead).unwrap();
    assert_eq!(pushes_to(&mut server), 0, "nothing held: no second push");

    // Then the server's clock goes back, to within the interval of the push.
    let back = p + Duration::from_secs(10);
    // The device (its own clock goes on) syncs for the push and runs the task;
    // as it closes, the operator queues another one: offered late, in the
    // session the device is leaving.
    let dnow = ahead + Duration::from_secs(1);
    dev.push_received(dnow);
    let c = sync_until_device_closes(&mut server, &mut dev, dnow, back);
    let late = server
        .enqueue_task(ID, TaskKind::Locate, Default::default(), back)
        .unwrap();
    assert_eq!(server.task_state(ID, late), Some(TaskState::Offered));
    let mut buf = [0u8; 1024];
    while server.poll_transmit_for(c, &mut buf).is_some() {} // never read
    server.connection_closed(c, back);

    // Within half an hour of server time, a push brings the device back.
    let mut pushed = 0;
    let mut t = back;
    while t <= back + Duration::from_mins(30) {
        server.handle_timeout(t).unwrap();
        pushed += pushes_to(&mut server);
        t = t + Duration::from_secs(5);
    }
    assert_eq!(
        pushed,
        1,
        "one push for the late offer (task {:?}); the device is idle until {:?}",
        server.task_state(ID, late),
        dev.poll_timeout()
    );
}
