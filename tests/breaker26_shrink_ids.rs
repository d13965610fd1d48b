//! `Server::shrink_to_fit` cuts the connection slots past the last open
//! session and drops the spare sessions (`Sessions::shrink_to_fit`). Here
//! sessions open, close and shrink at random, with open ones left at high
//! and at low slots; after every step each open connection still finds its
//! own session (a report on it is answered with an `Ack` under its own
//! session key), each closed id finds none, and no id is ever given twice.

mod common;

use std::collections::{HashMap, HashSet};

use mdm_sync::server::{ConnId, FleetStore, MemoryStore, Server, ServerConfig};
use mdm_sync::time::Instant;
use mdm_sync::wire::{frame, DeviceId, Down, ReportBody, TaskId, TaskStatus, Up};

const T0: Instant = Instant::from_millis(1_000);
const MASTER: [u8; 32] = [7; 32];

/// A report on `conn` for `device`; whether the answer is the `Ack` of it
/// under `key` (and nothing else).
fn acked(s: &mut Server<MemoryStore>, conn: ConnId, device: DeviceId, key: u32) -> bool {
    let seq = s.store().device(device).unwrap().unwrap().last_report_seq + 1;
    let up = Up::Report {
        seq,
        body: ReportBody::Task {
            task: TaskId(device.0 << 20 | u64::from(seq)),
            status: TaskStatus::Received,
        },
    };
    let mut buf = [0u8; 64];
    let n = frame::encode_keyed(&up, &mut buf, key).unwrap();
    if s.handle_bytes(conn, &buf[..n], T0).is_err() {
        return false;
    }
    let out = common::output(s, conn);
    common::downs(&out, key) == vec![Down::Ack { seq }]
}

#[test]
fn random_opens_closes_and_shrinks_keep_every_id_to_its_session() {
    let seeds = common::seeds("B26_SEEDS", 30);
    let mut shrinks = 0;
    for seed in 1..=seeds {
        let mut rng = common::Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let max_sessions = [4usize, 5, 16, 33, 256][rng.below(5) as usize];
        let cfg = ServerConfig {
            max_sessions,
            ..ServerConfig::default()
        };
        let mut s = Server::new(cfg, MemoryStore::new(), MASTER, [8; 32]);
        let devices: Vec<DeviceId> = (1..=40).map(DeviceId).collect();
        let mut secrets = HashMap::new();
        for &d in &devices {
            secrets.insert(d, s.enroll(d, T0).unwrap());
        }
        // Open: conn -> (device, key); closed ids; every id given.
        let mut open: Vec<(ConnId, DeviceId, u32)> = Vec::new();
        let mut closed: Vec<ConnId> = Vec::new();
        let mut given: HashSet<ConnId> = HashSet::new();
        for step in 0..400 {
            let case = format!("seed {seed}, max {max_sessions}, step {step}");
            match rng.below(10) {
                0..=4 if open.len() < max_sessions.min(devices.len()) => {
                    let busy: HashSet<_> = open.iter().map(|o| o.1).collect();
                    let free: Vec<_> = devices.iter().filter(|d| !busy.contains(d)).collect();
                    let d = *free[rng.below(free.len() as u64) as usize];
                    let (conn, key, answer) = common::raw_handshake(&mut s, d, &secrets[&d], T0);
                    answer.unwrap();
                    assert!(given.insert(conn), "{case}: id {conn:?} given twice");
                    let _ = common::output(&mut s, conn); // the burst
                    open.push((conn, d, key));
                }
                5..=7 if !open.is_empty() => {
                    // Mostly the newest (high slots go first), or any.
                    let i = if rng.below(2) == 0 {
                        open.len() - 1
                    } else {
                        rng.below(open.len() as u64) as usize
                    };
                    let (conn, _, _) = open.remove(i);
                    s.connection_closed(conn, T0);
                    closed.push(conn);
                }
                8 => {
                    s.shrink_to_fit();
                    shrinks += 1;
                }
                _ => {}
            }
            while s.poll_event().is_some() {}
            assert_eq!(s.session_count(), open.len(), "{case}");
            if let Some(&(conn, d, key)) = open.get(rng.below(open.len().max(1) as u64) as usize) {
                assert!(
                    acked(&mut s, conn, d, key),
                    "{case}: {conn:?} lost its session"
                );
            }
            if let Some(&conn) = closed.get(rng.below(closed.len().max(1) as u64) as usize) {
                let mut buf = [0u8; 64];
                assert_eq!(s.poll_transmit_for(conn, &mut buf), None, "{case}");
                let n = frame::encode_keyed(
                    &Up::Report {
                        seq: 1,
                        body: ReportBody::Task {
                            task: TaskId(1),
                            status: TaskStatus::Received,
                        },
                    },
                    &mut buf,
                    0,
                )
                .unwrap();
                let _ = s.handle_bytes(conn, &buf[..n], T0);
                while s.poll_event().is_some() {}
                assert_eq!(s.session_count(), open.len(), "{case}: closed id {conn:?}");
            }
        }
        // Every open one, at the end.
        for &(conn, d, key) in &open {
            assert!(
                acked(&mut s, conn, d, key),
                "seed {seed}: {conn:?} at the end"
            );
        }
    }
    eprintln!("{seeds} seeds, {shrinks} shrinks");
}
