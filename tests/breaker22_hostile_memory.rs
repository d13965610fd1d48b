//! Hostile peers must not grow the server's memory: since the engine keeps
//! a device's secret in its per-device push state, only a proof that passed
//! may create that state. Here a flood of handshakes that fail (`Hello`s
//! from fresh unknown ids proved with random secrets, enrolled ids proved
//! with a wrong secret or a wrong generation, `Hello`s never proved and cut,
//! proofs of retired devices) runs against an engine whose fleet synced
//! once (every device with its secret kept), with time running past
//! handshake deadlines and check-ins. The live heap bytes, counted by a
//! global allocator, must not grow over the second half of the flood by
//! anything near what a per-device state for each fresh id would take
//! (64 bytes a slot, 1.25 MB for the 20,000 fresh ids).
//!
//! Its own binary without the libtest harness (`harness = false`): the
//! counting allocator is global, so nothing else may run beside it.

mod common;

use std::alloc::System;
use std::process::ExitCode;

use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

use common::{raw_hello, raw_proof, Rng};
use mdm_sync::auth;
use mdm_sync::server::{MemoryStore, Server, ServerConfig, ServerError};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::DeviceId;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const FLEET: u64 = 256;
const MASTER: [u8; 32] = [0x11; 32];

/// A handshake on a new connection: `Hello` of `device` in `generation`,
/// then (if `secret`) the proof with it. The connection is closed after.
/// Whether the proof passed.
fn handshake(
    s: &mut Server<MemoryStore>,
    device: DeviceId,
    generation: u32,
    secret: Option<&[u8; 32]>,
    now: Instant,
) -> bool {
    let (conn, nonce, binding) = raw_hello(s, device, generation, 0, now);
    let passed =
        secret.is_some_and(
            |secret| match raw_proof(s, conn, &nonce, &binding, secret, now) {
                Ok(()) => true,
                Err(ServerError::Peer(_)) => false,
                Err(e) => panic!("{e:?}"),
            },
        );
    let mut buf = [0u8; 600];
    while s.poll_transmit_for(conn, &mut buf).is_some() {}
    s.connection_closed(conn, now);
    while s.poll_event().is_some() {}
    passed
}

/// One hostile attempt, drawn from `rng`; `fresh` is an id never used.
fn attack(s: &mut Server<MemoryStore>, rng: &mut Rng, fresh: u64, now: Instant) {
    let enrolled = DeviceId(rng.below(FLEET));
    let passed = match rng.below(5) {
        // An unknown id proved with a random secret.
        0 | 1 => {
            let secret = [rng.next() as u8; 32];
            handshake(s, DeviceId(fresh), 0, Some(&secret), now)
        }
        // An unknown id proved with what would be its secret if enrolled.
        2 => {
            let id = DeviceId(fresh);
            let secret = auth::derive_secret(&[0x22; 32], id, 0);
            handshake(s, id, 0, Some(&secret), now)
        }
        // An enrolled id with a wrong secret, or its secret in a wrong
        // generation.
        3 => {
            let right = auth::derive_secret(&MASTER, enrolled, 1);
            match rng.below(2) {
                0 => handshake(s, enrolled, 0, Some(&[rng.next() as u8; 32]), now),
                _ => handshake(s, enrolled, 0, Some(&right), now),
            }
        }
        // A Hello (fresh id or enrolled) never proved.
        _ => {
            let id = if rng.below(2) == 0 {
                DeviceId(fresh)
            } else {
                enrolled
            };
            handshake(s, id, 0, None, now)
        }
    };
    assert!(!passed, "a hostile proof passed");
}

fn live(c: &stats_alloc::Stats) -> isize {
    c.bytes_allocated as isize - c.bytes_deallocated as isize + c.bytes_reallocated
}

fn main() -> ExitCode {
    let mut s = Server::new(ServerConfig::default(), MemoryStore::new(), MASTER, [7; 32]);
    let mut now = Instant::from_millis(1_000);
    // The fleet, in generation 1 (enrolled twice), synced once: every
    // device has its push state with its secret kept.
    for i in 0..FLEET {
        s.enroll(DeviceId(i), now).unwrap();
        let secret = s.enroll(DeviceId(i), now).unwrap();
        assert!(handshake(&mut s, DeviceId(i), 1, Some(&secret), now));
    }
    let mut rng = Rng(0x5eed);
    let mut fresh = 1_000_000u64;
    let mut round = |s: &mut Server<MemoryStore>, now: &mut Instant, n: u32| {
        for k in 0..n {
            fresh += 1 + rng.below(1 << 20);
            attack(s, &mut rng, fresh, *now);
            if k % 256 == 255 {
                *now = *now + Duration::from_secs(45);
                s.handle_timeout(*now).unwrap();
                while s.poll_event().is_some() {}
            }
        }
    };
    // Warm-up: the engine's queues and spare buffers grow to their
    // working size.
    round(&mut s, &mut now, 20_000);
    let region = Region::new(GLOBAL);
    round(&mut s, &mut now, 20_000);
    let grown = live(&region.change());
    println!("live heap growth over 20,000 hostile handshakes: {grown} bytes");
    // The fleet still authenticates, each device with its kept secret.
    for i in 0..FLEET {
        let secret = auth::derive_secret(&MASTER, DeviceId(i), 1);
        assert!(handshake(&mut s, DeviceId(i), 1, Some(&secret), now));
    }
    // A slot of 64 bytes for even a quarter of the fresh ids would be
    // 320 KB; the table would grow past a million bytes.
    if grown > 64 * 1024 {
        eprintln!("FAIL: hostile handshakes grew the heap by {grown} bytes");
        return ExitCode::FAILURE;
    }
    println!("ok");
    ExitCode::SUCCESS
}
