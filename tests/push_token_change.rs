//! The device's push token and the server's copy of it.
//!
//! Protocol version 5: a device sends its token until a `Welcome` confirms
//! it, then Hellos carry none; a server that holds no token for the device
//! asks for it in the `Welcome`, and gets it at once. And a token that
//! changes while a sync is under way reaches the server: the server must not
//! keep pushing to a token the device has replaced (found by a breaker run:
//! a token set after the session's `Hello` left was dropped with the
//! session's Report want when that want had started it).

use mdm_sync::device::{Device, DeviceConfig, Event};
use mdm_sync::server::{FleetStore, MemoryStore, Server, ServerConfig};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::{self, frame, DeviceId, Down, FrameDecoder, Hello, Platform, Up, MAX_FRAME};

const ID: DeviceId = DeviceId(9);
const MASTER: [u8; 32] = [1; 32];
const TOKEN: &str = "fcm:the-token";

fn token(s: &str) -> heapless::String<{ mdm_sync::wire::PUSH_TOKEN_MAX }> {
    heapless::String::try_from(s).unwrap()
}

fn server(store: MemoryStore) -> Server<MemoryStore> {
    Server::new(ServerConfig::default(), store, MASTER, [2; 32])
}

fn device(s: &mut Server<MemoryStore>, token: &str, now: Instant) -> Device {
    let secret = s.enroll(ID, now).unwrap();
    let mut cfg = DeviceConfig::new(ID, 0, secret, Platform::Android);
    cfg.push_token = token.try_into().unwrap();
    Device::new(cfg, now)
}

/// A server and a device with `token` after the device's boot sync.
fn booted(token: &str, now: Instant) -> (Server<MemoryStore>, Device) {
    let mut s = server(MemoryStore::new());
    let mut d = device(&mut s, token, now);
    let boot = pump(&mut d, &mut s, now);
    assert_eq!(boot.len(), 1, "{boot:?}");
    (s, d)
}

/// One session as the wire saw it: the device's `Hello` and the server's
/// `Welcome`.
#[derive(Debug)]
struct Seen {
    hello: Hello,
    want_token: bool,
}

/// Runs the device's timers at `now` and moves bytes both ways until
/// nothing moves; returns the sessions that got as far as their `Welcome`.
fn pump(d: &mut Device, s: &mut Server<MemoryStore>, now: Instant) -> Vec<Seen> {
    pump_with(d, s, now, |_| {})
}

/// [`pump`], and `after_hello` runs once per connection, right after the
/// device's first frame (its `Hello`) left it.
fn pump_with(
    d: &mut Device,
    s: &mut Server<MemoryStore>,
    now: Instant,
    mut after_hello: impl FnMut(&mut Device),
) -> Vec<Seen> {
    d.handle_timeout(now);
    s.handle_timeout(now).unwrap();
    let mut seen = Vec::new();
    let mut conn = None;
    let mut hello = None;
    let mut down = FrameDecoder::<MAX_FRAME>::new();
    let mut buf = [0u8; 1024];
    for _ in 0..1000 {
        let mut moved = false;
        while let Some(ev) = d.poll_event() {
            moved = true;
            match ev {
                Event::Connect => {
                    conn = Some(s.connection_opened(now).unwrap());
                    d.connected(now);
                    down = FrameDecoder::new();
                    hello = None;
                }
                Event::Disconnect => {
                    if let Some(c) = conn.take() {
                        s.connection_closed(c, now);
                    }
                }
                _ => {}
            }
        }
        if let Some(c) = conn {
            while let Some(n) = d.poll_transmit(&mut buf).unwrap() {
                moved = true;
                let first = hello.is_none();
                if first {
                    match wire::decode::<Up>(frame::payload(&buf[..n])) {
                        Ok(Up::Hello(h)) => hello = Some(h),
                        other => panic!("the first frame is not a hello: {other:?}"),
                    }
                }
                let _ = s.handle_bytes(c, &buf[..n], now);
                if first {
                    after_hello(d);
                }
            }
            while let Some(n) = s.poll_transmit_for(c, &mut buf) {
                moved = true;
                down.push(&buf[..n]);
                while let Some(Ok(p)) = down.decode() {
                    match wire::decode::<Down>(p) {
                        Ok(Down::Challenge { nonce, .. }) => {
                            down.set_key(frame::session_key(&nonce))
                        }
                        Ok(Down::Welcome { want_token, .. }) => seen.push(Seen {
                            hello: hello.clone().expect("a welcome before the hello"),
                            want_token,
                        }),
                        _ => {}
                    }
                }
                let _ = d.handle_bytes(&buf[..n], now);
            }
        }
        while s.poll_event().is_some() {}
        d.handle_timeout(now);
        if !moved {
            break;
        }
    }
    seen
}

fn held(s: &Server<MemoryStore>) -> Option<String> {
    let target = s.store().push_target(ID).unwrap();
    target.map(|(_, t)| t.to_string())
}

#[test]
fn a_token_changed_during_a_sync_reaches_the_server() {
    let t0 = Instant::from_millis(1_000);
    let mut s = server(MemoryStore::new());
    let mut d = device(&mut s, "", t0);

    // First sync: the boot sync, with the first token.
    d.set_push_token(token("fcm:one"), t0);
    pump(&mut d, &mut s, t0);
    assert_eq!(held(&s).as_deref(), Some("fcm:one"));

    // The push service rotates the token twice in quick succession: the
    // first change starts a sync, the second comes while its Hello (with
    // the first new token) is on the way.
    let t1 = t0 + Duration::from_mins(5);
    d.set_push_token(token("fcm:two"), t1);
    pump_with(&mut d, &mut s, t1, |d| {
        d.set_push_token(token("fcm:three"), t1)
    });

    // Time runs on (ten minutes, well short of the periodic sync).
    let mut t = t1;
    while t < t1 + Duration::from_mins(10) {
        t = t + Duration::from_secs(1);
        pump(&mut d, &mut s, t);
    }
    assert_eq!(
        held(&s).as_deref(),
        Some("fcm:three"),
        "the server pushes to a token the device replaced"
    );
}

#[test]
fn only_the_first_sync_carries_the_token() {
    let t0 = Instant::from_millis(1_000);
    let mut s = server(MemoryStore::new());
    let mut d = device(&mut s, TOKEN, t0);
    let boot = pump(&mut d, &mut s, t0);
    assert_eq!(boot.len(), 1, "{boot:?}");
    assert_eq!(boot[0].hello.push_token.as_str(), TOKEN);
    assert!(!boot[0].want_token);
    assert_eq!(held(&s).as_deref(), Some(TOKEN));
    for k in 1..4 {
        let now = t0 + Duration::from_mins(k);
        d.push_received(now);
        let later = pump(&mut d, &mut s, now);
        assert_eq!(later.len(), 1, "{later:?}");
        assert!(later[0].hello.push_token.is_empty(), "{later:?}");
        assert!(!later[0].want_token, "the server asks for a token it has");
        assert_eq!(held(&s).as_deref(), Some(TOKEN), "an empty token kept it");
    }
}

/// The server's store lost its push targets but not its devices (a store
/// that keeps them apart, restored from a backup): the device's next sync
/// brings its token back at once.
#[test]
fn a_server_without_the_token_asks_and_gets_it_at_once() {
    let t0 = Instant::from_millis(1_000);
    let (s, mut d) = booted(TOKEN, t0);
    let mut store = MemoryStore::new();
    let rec = s.store().device(ID).unwrap().unwrap();
    store.put_device(&rec).unwrap();
    let mut s = server(store);
    assert_eq!(held(&s), None);

    let t1 = t0 + Duration::from_mins(5);
    d.push_received(t1);
    let seen = pump(&mut d, &mut s, t1);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[0].hello.push_token.is_empty() && seen[0].want_token);
    assert_eq!(seen[1].hello.push_token.as_str(), TOKEN);
    assert!(!seen[1].want_token);
    assert_eq!(held(&s).as_deref(), Some(TOKEN));

    let t2 = t1 + Duration::from_mins(5);
    d.push_received(t2);
    let seen = pump(&mut d, &mut s, t2);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].hello.push_token.is_empty() && !seen[0].want_token);
}

/// A device without push is asked at every sync and never syncs for it.
#[test]
fn a_device_without_a_token_is_asked_and_does_not_loop() {
    let t0 = Instant::from_millis(1_000);
    let mut s = server(MemoryStore::new());
    let mut d = device(&mut s, "", t0);
    let mut syncs = 0;
    let mut now = t0;
    for k in 0..30 {
        if k % 10 == 5 {
            d.push_received(now);
        }
        let seen = pump(&mut d, &mut s, now);
        assert!(seen
            .iter()
            .all(|x| x.want_token && x.hello.push_token.is_empty()));
        syncs += seen.len();
        now = now + Duration::from_secs(60);
    }
    assert_eq!(syncs, 4, "the boot sync and three pushes, nothing more");
    assert_eq!(held(&s), None);
}

/// Re-enrollment starts a new generation with a new engine, whose first
/// sync carries the token; the reference store keeps the old target until
/// then, and the device's row keeps saying it has one.
#[test]
fn a_re_enrolled_device_sends_its_token_again() {
    let t0 = Instant::from_millis(1_000);
    let (mut s, _) = booted(TOKEN, t0);
    let t1 = t0 + Duration::from_mins(5);
    let secret = s.enroll(ID, t1).unwrap();
    assert_eq!(s.store().device(ID).unwrap().map(|r| r.generation), Some(1));
    let mut cfg = DeviceConfig::new(ID, 1, secret, Platform::Android);
    cfg.push_token = "fcm:new".try_into().unwrap();
    let mut d = Device::new(cfg, t1);
    let seen = pump(&mut d, &mut s, t1);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].hello.push_token.as_str(), "fcm:new");
    assert_eq!(held(&s).as_deref(), Some("fcm:new"));
    let t2 = t1 + Duration::from_mins(5);
    d.push_received(t2);
    let seen = pump(&mut d, &mut s, t2);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].hello.push_token.is_empty() && !seen[0].want_token);
}
