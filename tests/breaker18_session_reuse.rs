//! Closed sessions' boxes are reset and reused (`Spare`, `Session::reset`):
//! a connection closed in every state a hostile or slow peer can leave it in
//! (mid-handshake holding its `Hello`, a partial frame buffered, keyed,
//! closing after an error, output pending, frame errors counted, dropped
//! for `max_pending_out`, replaced by a newer session of its device, timed
//! out) must leave nothing to the next connection, which reuses its box
//! (the spare list is last-in first-out). Each next connection gets a fixed
//! probe, and must answer it exactly as the first connection of a fresh
//! server does.

mod common;

use mdm_sync::server::{MemoryStore, Server, ServerConfig, ServerEvent, TaskOptions};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::{self, frame, DeviceId, Down, Hello, Platform, SyncTrigger, TaskKind, Up};

const T0: Instant = Instant::from_millis(1_000);
const DEV: DeviceId = DeviceId(77);
const OTHER: DeviceId = DeviceId(78);
const MASTER: [u8; 32] = [4; 32];

fn cfg() -> ServerConfig {
    ServerConfig {
        max_frame_errors: 3,
        max_pending_out: 300,
        ..ServerConfig::default()
    }
}

fn server() -> Server<MemoryStore> {
    let mut s = Server::new(cfg(), MemoryStore::new(), MASTER, [5; 32]);
    s.enroll(DEV, T0).unwrap();
    s.enroll(OTHER, T0).unwrap();
    s
}

fn hello_payload(device: DeviceId, attempt: u64) -> Vec<u8> {
    let mut buf = [0u8; 600];
    let h = Up::Hello(Hello {
        version: wire::PROTOCOL_VERSION,
        attempt,
        device,
        generation: 0,
        platform: Platform::Android,
        push_token: heapless::String::try_from("tok").unwrap(),
        trigger: SyncTrigger::Push,
        last_task_seq: 0,
        policy_version: 0,
    });
    let n = frame::encode(&h, &mut buf).unwrap();
    frame::payload(&buf[..n]).to_vec()
}

/// A bad frame: right header, wrong CRC.
fn bad_frame() -> Vec<u8> {
    let mut f = common::raw_frame(&[9, 9, 9], 0);
    let last = f.len() - 1;
    f[last] ^= 0xFF;
    f
}

/// What a connection answered to the probe, without the nonce (which
/// differs from server to server): per step, whether the engine returned an
/// error, and the kinds of the frames it sent, read with the key they
/// should carry.
#[derive(Debug, PartialEq)]
struct Answer(Vec<(bool, Vec<String>)>);

fn kinds(msgs: &[Down]) -> Vec<String> {
    msgs.iter()
        .map(|m| {
            let d = format!("{m:?}");
            d.split([' ', '(', '{']).next().unwrap().to_string()
        })
        .collect()
}

/// The probe, on a new connection of `s`: first nothing (is anything
/// pending?), then `errors` bad frames and a Hello of `DEV` in one read,
/// then the right proof in two pieces, then one more bad frame (counted
/// with the earlier ones: a count that did not start at 0 shows).
fn probe(s: &mut Server<MemoryStore>, errors: usize, now: Instant) -> Answer {
    let secret = mdm_sync::auth::derive_secret(&MASTER, DEV, 0);
    let conn = s.connection_opened(now).unwrap();
    let mut steps = Vec::new();
    // Anything already pending on a new connection?
    steps.push((false, kinds(&common::downs(&common::output(s, conn), 0))));
    let mut bytes = Vec::new();
    for _ in 0..errors {
        bytes.extend(bad_frame());
    }
    let payload = hello_payload(DEV, 1);
    bytes.extend(common::raw_frame(&payload, 0));
    let r = s.handle_bytes(conn, &bytes, now);
    let out = common::output(s, conn);
    let msgs = common::downs(&out, 0);
    steps.push((r.is_err(), kinds(&msgs)));
    let Some(Down::Challenge { nonce, .. }) = msgs.first().cloned() else {
        return Answer(steps);
    };
    let key = frame::session_key(&nonce);
    let mac = mdm_sync::auth::proof(&secret, &nonce, &mdm_sync::auth::bind_hello(&payload));
    let mut buf = [0u8; 64];
    let n = frame::encode_keyed(&Up::Proof { mac }, &mut buf, key).unwrap();
    let r1 = s.handle_bytes(conn, &buf[..5], now);
    steps.push((
        r1.is_err(),
        kinds(&common::downs(&common::output(s, conn), key)),
    ));
    let r2 = s.handle_bytes(conn, &buf[5..n], now);
    steps.push((
        r2.is_err(),
        kinds(&common::downs(&common::output(s, conn), key)),
    ));
    let r3 = s.handle_bytes(conn, &bad_frame(), now);
    steps.push((
        r3.is_err(),
        kinds(&common::downs(&common::output(s, conn), key)),
    ));
    s.connection_closed(conn, now);
    while s.poll_event().is_some() {}
    Answer(steps)
}

/// Leaves a connection of `s` in state `k` and closes it (or lets the
/// engine close it).
fn leave(s: &mut Server<MemoryStore>, k: usize, now: &mut Instant) -> &'static str {
    let other_secret = mdm_sync::auth::derive_secret(&MASTER, OTHER, 0);
    let conn = s.connection_opened(*now).unwrap();
    let hello = common::raw_frame(&hello_payload(OTHER, 9), 0);
    let name = match k {
        0 => {
            // Challenged, challenge not taken, closed awaiting the proof.
            s.handle_bytes(conn, &hello, *now).unwrap();
            "await proof, output pending"
        }
        1 => {
            // Challenged and taken, half a proof buffered.
            s.handle_bytes(conn, &hello, *now).unwrap();
            common::output(s, conn);
            s.handle_bytes(conn, &[0xA5, 0x5A, 0x21, 0x00, 0x01, 0x02], *now)
                .unwrap();
            "partial proof buffered"
        }
        2 => {
            // Half a Hello buffered.
            s.handle_bytes(conn, &hello[..hello.len() / 2], *now)
                .unwrap();
            "partial hello buffered"
        }
        3 => {
            // Frame errors under the limit, then a Hello: counted, keyed.
            let mut b = Vec::new();
            for _ in 0..cfg().max_frame_errors {
                b.extend(bad_frame());
            }
            let _ = s.handle_bytes(conn, &b, *now);
            "frame errors counted"
        }
        4 => {
            // Closing after a wrong proof, output not taken.
            s.handle_bytes(conn, &hello, *now).unwrap();
            let out = common::output(s, conn);
            let Some(Down::Challenge { nonce, .. }) = common::downs(&out, 0).first().cloned()
            else {
                panic!("no challenge")
            };
            let mut buf = [0u8; 64];
            let key = frame::session_key(&nonce);
            let n = frame::encode_keyed(&Up::Proof { mac: [0; 32] }, &mut buf, key).unwrap();
            assert!(s.handle_bytes(conn, &buf[..n], *now).is_err());
            "closing after AuthFailed"
        }
        5 | 6 => {
            // Syncing with tasks offered (5: output left pending; 6: more
            // queued than `max_pending_out`, so the engine drops it).
            s.connection_closed(conn, *now);
            let (c, _key, r) = common::raw_handshake(s, OTHER, &other_secret, *now);
            // The Welcome's burst carries the open tasks of earlier rounds
            // (up to `max_open_tasks`, past `max_pending_out`): it is exempt
            // from the bound, so the handshake always completes.
            r.unwrap();
            let tasks = if k == 5 { 2 } else { 40 };
            for _ in 0..tasks {
                let _ = s.enqueue_task(OTHER, TaskKind::Scan, TaskOptions::default(), *now);
            }
            if k == 6 {
                // With the device's queue full, few or no tasks went out
                // after the burst (whose untaken bytes the bound does not
                // count): late cancels do, until they pass the bound.
                let open = s.device_view(OTHER).unwrap().open_tasks;
                for t in open {
                    if s.session_count() == 0 {
                        break;
                    }
                    let _ = s.cancel_task(t.id, *now);
                }
                assert_eq!(s.session_count(), 0, "dropped as too slow");
            }
            s.connection_closed(c, *now);
            return if k == 5 {
                "syncing, output pending"
            } else {
                "dropped for max_pending_out"
            };
        }
        7 => {
            // Replaced by a newer session of the same device.
            s.connection_closed(conn, *now);
            let (a, _, r) = common::raw_handshake(s, OTHER, &other_secret, *now);
            r.unwrap();
            let (b, _, r) = common::raw_handshake(s, OTHER, &other_secret, *now);
            r.unwrap();
            assert!(s.poll_transmit_for(a, &mut [0u8; 8]).is_none(), "replaced");
            s.connection_closed(b, *now);
            return "replaced by a newer session";
        }
        _ => {
            // Timed out mid-handshake.
            s.handle_bytes(conn, &hello, *now).unwrap();
            *now = *now + Duration::from_secs(31);
            s.handle_timeout(*now).unwrap();
            let out = common::output(s, conn);
            assert!(!out.is_empty(), "no Timeout error sent");
            assert_eq!(s.session_count(), 0, "timed out");
            return "handshake timed out";
        }
    };
    s.connection_closed(conn, *now);
    name
}

#[test]
fn a_reused_session_answers_as_a_fresh_one() {
    // The oracle: a fresh server's first connection, for each number of
    // bad frames before the Hello around the limit.
    let fresh: Vec<Answer> = (0..=4).map(|e| probe(&mut server(), e, T0)).collect();
    // The limit is reached within the probe (so a leaked count shows).
    assert!(fresh.iter().any(|a| a.0[1].0) && fresh.iter().any(|a| !a.0[1].0));
    for k in 0..=8 {
        for (errors, want) in fresh.iter().enumerate() {
            let mut s = server();
            let mut now = T0;
            // A few rounds, so boxes go round the spare list.
            for round in 0..3 {
                let name = leave(&mut s, k, &mut now);
                while s.poll_event().is_some() {}
                let got = probe(&mut s, errors, now);
                assert_eq!(
                    &got, want,
                    "after {name} (round {round}), {errors} bad frames"
                );
            }
        }
    }
}

/// Events of a reused connection are its own: a session that replaced
/// another and a new one in the replaced one's box each end under their
/// own ids.
#[test]
fn ids_of_reused_boxes_do_not_cross() {
    let mut s = server();
    let secret = mdm_sync::auth::derive_secret(&MASTER, OTHER, 0);
    let (a, _, r) = common::raw_handshake(&mut s, OTHER, &secret, T0);
    r.unwrap();
    let (b, _, r) = common::raw_handshake(&mut s, OTHER, &secret, T0);
    r.unwrap();
    let c = s.connection_opened(T0).unwrap();
    assert!(a != c && b != c);
    let mut ended = Vec::new();
    while let Some(ev) = s.poll_event() {
        if let ServerEvent::SessionEnded { conn, .. } = ev {
            ended.push(conn);
        }
    }
    assert_eq!(ended, vec![a]);
    // The old id reaches nothing, the new one its own fresh session.
    assert!(s.handle_bytes(a, &[0xA5], T0).is_err());
    assert!(s.poll_transmit_for(c, &mut [0u8; 64]).is_none());
    s.connection_closed(a, T0);
    assert_eq!(s.session_count(), 2);
}

/// Random opens, Hellos, closes and reads of output (through
/// `poll_transmit` with buffers of 1 to 80 bytes, and `poll_transmit_for`),
/// over few slots so that boxes and slots are reused all the time: no byte
/// ever comes out under a closed connection's id, no connection gets a byte
/// of another (each gets exactly the Challenge echoing its own Hello's
/// attempt), and nothing is stranded (at the end every open connection's
/// Challenge has come out whole through `poll_transmit` alone).
#[test]
fn output_follows_its_connection_through_reuse() {
    let mut rng = common::Rng(0x5DEE_CE66_D1CE_4E5B);
    for round in 0..200 {
        let mut s = server();
        // conn -> (attempt of its Hello if sent, bytes received)
        let mut open: Vec<(mdm_sync::server::ConnId, Option<u64>, Vec<u8>)> = Vec::new();
        let mut closed = std::collections::HashSet::new();
        let mut next_attempt = 1u64;
        for _ in 0..300 {
            match rng.below(6) {
                0 | 1 if open.len() < 6 => {
                    let c = s.connection_opened(T0).unwrap();
                    assert!(!closed.contains(&c));
                    open.push((c, None, Vec::new()));
                }
                2 if !open.is_empty() => {
                    let i = rng.below(open.len() as u64) as usize;
                    if open[i].1.is_none() {
                        let a = next_attempt;
                        next_attempt += 1;
                        let f = common::raw_frame(&hello_payload(DEV, a), 0);
                        // Sometimes in two pieces.
                        let cut = rng.below(f.len() as u64) as usize;
                        s.handle_bytes(open[i].0, &f[..cut], T0).unwrap();
                        s.handle_bytes(open[i].0, &f[cut..], T0).unwrap();
                        open[i].1 = Some(a);
                    }
                }
                3 if !open.is_empty() => {
                    let i = rng.below(open.len() as u64) as usize;
                    let (c, _, _) = open.swap_remove(i);
                    s.connection_closed(c, T0);
                    closed.insert(c);
                }
                4 => {
                    let mut buf = vec![0u8; 1 + rng.below(80) as usize];
                    if let Some((c, n)) = s.poll_transmit(&mut buf) {
                        assert!(!closed.contains(&c), "bytes for a closed connection");
                        let e = open.iter_mut().find(|e| e.0 == c).expect("an open one");
                        e.2.extend_from_slice(&buf[..n]);
                    }
                }
                _ if !open.is_empty() => {
                    let i = rng.below(open.len() as u64) as usize;
                    let mut buf = vec![0u8; 1 + rng.below(80) as usize];
                    if let Some(n) = s.poll_transmit_for(open[i].0, &mut buf) {
                        open[i].2.extend_from_slice(&buf[..n]);
                    }
                }
                _ => {}
            }
        }
        // Drain through `poll_transmit` alone.
        let mut buf = [0u8; 7];
        while let Some((c, n)) = s.poll_transmit(&mut buf) {
            assert!(!closed.contains(&c), "bytes for a closed connection");
            let e = open.iter_mut().find(|e| e.0 == c).expect("an open one");
            e.2.extend_from_slice(&buf[..n]);
        }
        for (_, attempt, bytes) in &open {
            match (attempt, common::downs(bytes, 0).as_slice()) {
                (None, []) => {}
                (Some(a), [Down::Challenge { attempt, .. }]) => assert_eq!(attempt, a),
                other => panic!("round {round}: {other:?}"),
            }
        }
    }
}
