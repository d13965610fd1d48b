//! The server keeps a device's secret from its last authenticated handshake
//! (`Server::secret_of` / `keep_secret`). Here handshakes are split at every
//! step (Hello sent and challenge read, proof still to come) and
//! interleaved, in random order, with enrollments, re-enrollments,
//! retirements, closed connections, time running past handshake deadlines
//! and engine restarts over the kept store (`recover`). Proofs are made with
//! the current secret, with secrets of every earlier enrollment, with a
//! wrong secret, and under the current, an older or a later generation.
//!
//! A model says which proofs must pass: the device is enrolled, the `Hello`
//! names its current generation, and the proof is made with that
//! generation's secret (as derived from the master key). A proof that
//! passed is answered `Ok` or `Superseded` (checked after the proof);
//! every other one `AuthFailed`. Checked after every proof, over thousands
//! of schedules, with generations starting near `u32::MAX` so that they
//! wrap to 0 on the way.

mod common;

use common::{raw_hello, raw_proof, Rng};
use mdm_sync::auth;
use mdm_sync::server::{
    ConnId, DeviceRecord, FleetStore, MemoryStore, PeerError, Server, ServerConfig, ServerError,
    ServerEvent,
};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::DeviceId;

const MASTER: [u8; 32] = [0x5a; 32];
const DEVICES: u64 = 3;
/// The devices: the ends of the id space among them.
const IDS: [u64; DEVICES as usize] = [0, u64::MAX, 0x8000_0000_0000_0001];

/// A handshake whose challenge has been read and whose proof is still to
/// come.
struct Pending {
    conn: ConnId,
    device: usize,
    generation: u32,
    nonce: [u8; 16],
    binding: auth::HelloBinding,
}

#[derive(Clone, Copy, Debug)]
struct Model {
    /// The current generation, if enrolled.
    generation: Option<u32>,
    /// The generation the next enrollment gets.
    next: u32,
}

fn new_server(store: MemoryStore) -> Server<MemoryStore> {
    Server::new(ServerConfig::default(), store, MASTER, [3; 32])
}

/// Sends the proof of `p` made with `secret`. `None` if the connection is
/// gone (closed, timed out, restarted), else whether the proof passed.
fn prove(
    s: &mut Server<MemoryStore>,
    p: &Pending,
    secret: &[u8; 32],
    now: Instant,
) -> Option<bool> {
    while s.poll_event().is_some() {}
    match raw_proof(s, p.conn, &p.nonce, &p.binding, secret, now) {
        // Input on a session closing (timed out) is ignored: `Ok` too.
        Ok(()) => {
            let mut authenticated = false;
            while let Some(e) = s.poll_event() {
                authenticated |=
                    matches!(e, ServerEvent::Authenticated { conn, .. } if conn == p.conn);
            }
            authenticated.then_some(true)
        }
        Err(ServerError::Peer(PeerError::Superseded)) => Some(true),
        Err(ServerError::Peer(PeerError::AuthFailed)) => Some(false),
        Err(ServerError::UnknownConnection) => None,
        Err(e) => panic!("unexpected answer to a proof: {e:?}"),
    }
}

fn run(seed: u64, tally: &mut [u32; 2]) {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut store = MemoryStore::new();
    let mut model = Vec::new();
    // Some devices start near the end of the generations, so that they
    // wrap to 0 (and come back to generations an earlier device had).
    for i in 0..DEVICES {
        let start = match rng.below(3) {
            0 => 0,
            1 => u32::MAX - rng.below(3) as u32,
            _ => rng.next() as u32,
        };
        store
            .put_device(&DeviceRecord::new(DeviceId(IDS[i as usize]), start))
            .unwrap();
        model.push(Model {
            generation: Some(start),
            next: start.wrapping_add(1),
        });
    }
    let mut s = new_server(store);
    let mut now = Instant::from_millis(5_000);
    let mut pending: Vec<Pending> = Vec::new();
    let mut seqs = [0u32; DEVICES as usize];
    let mut trace = Vec::new();
    for _ in 0..120 {
        let d = rng.below(DEVICES) as usize;
        let id = DeviceId(IDS[d]);
        match rng.below(12) {
            0 => {
                let secret = s.enroll(id, now).unwrap();
                let g = model[d].next;
                assert_eq!(secret, auth::derive_secret(&MASTER, id, g), "seed {seed}");
                model[d] = Model {
                    generation: Some(g),
                    next: g.wrapping_add(1),
                };
                trace.push(format!("enroll {d} -> {g}"));
            }
            1 => {
                let r = s.retire(id, now);
                assert_eq!(r.is_ok(), model[d].generation.is_some(), "seed {seed}");
                model[d].generation = None;
                trace.push(format!("retire {d}"));
            }
            2..=5 => {
                // A Hello in the current generation, an earlier or a later one.
                let base = model[d].generation.unwrap_or(model[d].next);
                let generation = match rng.below(4) {
                    0 => base.wrapping_sub(1),
                    1 => base.wrapping_add(1),
                    _ => base,
                };
                seqs[d] = seqs[d].wrapping_add(rng.below(2) as u32);
                let (conn, nonce, binding) = raw_hello(&mut s, id, generation, seqs[d], now);
                trace.push(format!("hello {d} gen {generation} on {conn:?}"));
                pending.push(Pending {
                    conn,
                    device: d,
                    generation,
                    nonce,
                    binding,
                });
            }
            6..=9 if !pending.is_empty() => {
                let p = pending.swap_remove(rng.below(pending.len() as u64) as usize);
                let pid = DeviceId(IDS[p.device]);
                // The secret of the Hello's generation, of the one before
                // (an earlier enrollment's, maybe kept), of the device's
                // current one, or a wrong one.
                let (secret, what) = match rng.below(5) {
                    0 | 1 => (auth::derive_secret(&MASTER, pid, p.generation), "hello's"),
                    3 => {
                        let g = p.generation.wrapping_sub(1);
                        (auth::derive_secret(&MASTER, pid, g), "previous")
                    }
                    2 => {
                        let g = model[p.device].generation.unwrap_or(model[p.device].next);
                        (auth::derive_secret(&MASTER, pid, g), "current")
                    }
                    _ => ([rng.next() as u8; 32], "wrong"),
                };
                let expect = model[p.device].generation == Some(p.generation)
                    && secret == auth::derive_secret(&MASTER, pid, p.generation);
                let got = prove(&mut s, &p, &secret, now);
                trace.push(format!(
                    "proof {} gen {} with the {what} secret on {:?}: {got:?}",
                    p.device, p.generation, p.conn
                ));
                if let Some(passed) = got {
                    tally[usize::from(passed)] += 1;
                    assert_eq!(
                        passed,
                        expect,
                        "seed {seed}: model {:?}\n{}",
                        model[p.device],
                        trace.join("\n")
                    );
                }
                s.connection_closed(p.conn, now);
            }
            10 => {
                now = now + Duration::from_secs(rng.below(90));
                trace.push(format!("time {now:?}"));
                s.handle_timeout(now).unwrap();
            }
            _ => {
                if rng.below(4) == 0 {
                    // A restart: pending handshakes die with the engine.
                    let store = core::mem::replace(&mut s, new_server(MemoryStore::new()));
                    s = new_server(store.into_store());
                    s.recover(now).unwrap();
                    pending.clear();
                    trace.push("restart".into());
                } else if !pending.is_empty() {
                    let p = pending.swap_remove(rng.below(pending.len() as u64) as usize);
                    s.connection_closed(p.conn, now);
                }
            }
        }
        while s.poll_event().is_some() {}
    }
}

#[test]
fn proofs_pass_only_with_the_current_enrollments_secret() {
    // Proofs that failed, that passed.
    let mut tally = [0; 2];
    for seed in 0..3_000 {
        run(seed, &mut tally);
    }
    assert!(tally.iter().all(|&n| n > 5_000), "{tally:?}");
}
