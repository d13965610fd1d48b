//! A push token that changes while a sync is under way reaches the server:
//! the server must not keep pushing to a token the device has replaced.
//! Found by a breaker run: a token set after the session's `Hello` left was
//! dropped with the session's Report want when that want had started it.

use mdm_sync::device::{Device, DeviceConfig, Event};
use mdm_sync::server::{ConnId, FleetStore, MemoryStore, Server, ServerConfig};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::{DeviceId, Platform};

const ID: DeviceId = DeviceId(4);

fn token(s: &str) -> heapless::String<{ mdm_sync::wire::PUSH_TOKEN_MAX }> {
    heapless::String::try_from(s).unwrap()
}

/// Runs the device's timers at `now` and moves bytes both ways until
/// nothing moves; `after_hello` runs once, right after the device's first
/// frame of a connection (its `Hello`) left it.
fn pump(
    d: &mut Device,
    s: &mut Server<MemoryStore>,
    now: Instant,
    mut after_hello: impl FnMut(&mut Device),
) {
    d.handle_timeout(now);
    s.handle_timeout(now).unwrap();
    let mut conn: Option<ConnId> = None;
    let mut hello_sent = false;
    let mut buf = [0u8; 1024];
    for _ in 0..100 {
        let mut moved = false;
        while let Some(ev) = d.poll_event() {
            moved = true;
            match ev {
                Event::Connect => {
                    conn = Some(s.connection_opened(now).unwrap());
                    d.connected(now);
                    hello_sent = false;
                }
                Event::Disconnect => {
                    if let Some(c) = conn.take() {
                        s.connection_closed(c, now);
                    }
                }
                _ => {}
            }
        }
        let Some(c) = conn else {
            if !moved {
                break;
            }
            continue;
        };
        while let Some(n) = d.poll_transmit(&mut buf).unwrap() {
            moved = true;
            let _ = s.handle_bytes(c, &buf[..n], now);
            if !hello_sent {
                hello_sent = true;
                after_hello(d);
            }
        }
        while let Some(n) = s.poll_transmit_for(c, &mut buf) {
            moved = true;
            let _ = d.handle_bytes(&buf[..n], now);
        }
        while s.poll_event().is_some() {}
        if !moved {
            break;
        }
    }
}

#[test]
fn a_token_changed_during_a_sync_reaches_the_server() {
    let t0 = Instant::from_millis(1_000);
    let mut s = Server::new(
        ServerConfig::default(),
        MemoryStore::new(),
        [1; 32],
        [2; 32],
    );
    let secret = s.enroll(ID, t0).unwrap();
    let mut d: Device = Device::new(DeviceConfig::new(ID, 0, secret, Platform::Android), t0);

    // First sync: the boot sync, with the first token.
    d.set_push_token(token("fcm:one"), t0);
    pump(&mut d, &mut s, t0, |_| {});
    let held = |s: &Server<MemoryStore>| s.store().push_target(ID).unwrap().map(|(_, t)| t);
    assert_eq!(held(&s).as_deref(), Some("fcm:one"));

    // The push service rotates the token twice in quick succession: the
    // first change starts a sync, the second comes while its Hello (with
    // the first new token) is on the way.
    let t1 = t0 + Duration::from_mins(5);
    d.set_push_token(token("fcm:two"), t1);
    pump(&mut d, &mut s, t1, |d| {
        d.set_push_token(token("fcm:three"), t1)
    });

    // Time runs on (ten minutes, well short of the periodic sync).
    let mut t = t1;
    while t < t1 + Duration::from_mins(10) {
        t = t + Duration::from_secs(1);
        pump(&mut d, &mut s, t, |_| {});
    }
    assert_eq!(
        held(&s).as_deref(),
        Some("fcm:three"),
        "the server pushes to a token the device replaced"
    );
}
