//! `Server::transmit_with` against `poll_transmit_for` on a twin server fed
//! the same input: random schedules mix partial takes (nothing, a few bytes,
//! more than offered) with `poll_transmit`, `poll_transmit_for`,
//! `handle_bytes` (reports, which the server acks) and `enqueue_task`
//! between them, on two connections, and end a connection by a bad message
//! while its output is half taken. At every step both servers give the same
//! bytes and the same events; each connection's stream decodes to whole
//! frames, none lost or doubled; a closing connection emits exactly one
//! `Close`, when its last byte is taken.

mod common;

use mdm_sync::server::{ConnId, MemoryStore, Server, ServerEvent};
use mdm_sync::time::Instant;
use mdm_sync::wire::{self, frame, DeviceId, Down, ReportBody, TaskId, TaskKind, TaskStatus, Up};

const T0: Instant = Instant::from_millis(1_000);

struct Twin {
    s: Server<MemoryStore>,
    conns: [ConnId; 2],
    /// What each connection's transport has taken so far.
    taken: [Vec<u8>; 2],
}

fn twin() -> (Twin, [u32; 2], [DeviceId; 2]) {
    let mut s = common::server();
    let ids = [DeviceId(7), DeviceId(8)];
    let mut conns = [ConnId(0); 2];
    let mut keys = [0; 2];
    for (i, d) in ids.iter().enumerate() {
        let secret = s.enroll(*d, T0).unwrap();
        s.enqueue_task(*d, TaskKind::Lock, Default::default(), T0)
            .unwrap();
        let (conn, key, answer) = common::raw_handshake(&mut s, *d, &secret, T0);
        answer.unwrap();
        conns[i] = conn;
        keys[i] = key;
    }
    let t = Twin {
        s,
        conns,
        taken: [Vec::new(), Vec::new()],
    };
    (t, keys, ids)
}

fn events(s: &mut Server<MemoryStore>) -> Vec<ServerEvent> {
    core::iter::from_fn(|| s.poll_event()).collect()
}

/// Runs one schedule; returns how many connections closed and how many
/// calls took nothing of bytes offered.
fn run(seed: u64) -> (usize, usize) {
    let (mut a, keys, ids) = twin();
    let (mut b, _, _) = twin();
    assert_eq!(a.conns, b.conns);
    let mut rng = common::Rng(seed);
    let mut report_seq = [0u32; 2];
    let mut closed = [false; 2];
    let mut close_events = [0usize; 2];
    let mut zero_calls = 0;
    for step in 0..400 {
        let c = rng.below(2) as usize;
        let conn = a.conns[c];
        match rng.below(10) {
            // A transport taking `want` bytes, on A in place, on B copied
            // into a buffer of exactly what A's transport took.
            0..=3 => {
                let want = match rng.below(4) {
                    0 => 0,
                    1 => 1 + rng.below(4) as usize,
                    2 => usize::MAX,
                    _ => rng.below(40) as usize,
                };
                let mut offered = None;
                let mut took = 0;
                let ra = a.s.transmit_with(conn, |bytes| {
                    assert!(offered.is_none(), "called once");
                    assert!(!bytes.is_empty(), "called with bytes only");
                    offered = Some(bytes.len());
                    took = want.min(bytes.len());
                    a.taken[c].extend_from_slice(&bytes[..took]);
                    want
                });
                let mut buf = vec![0u8; took];
                let rb = b.s.poll_transmit_for(conn, &mut buf);
                if let Some(n) = rb {
                    b.taken[c].extend_from_slice(&buf[..n]);
                }
                assert_eq!(ra, rb, "seed {seed} step {step}");
                assert_eq!(ra, (took > 0).then_some(took));
                if want == 0 && offered.is_some() {
                    zero_calls += 1;
                    assert_eq!(ra, None, "took nothing");
                }
            }
            4 => {
                let len = rng.below(30) as usize;
                let (mut ba, mut bb) = (vec![0u8; len], vec![0u8; len]);
                let ra = a.s.poll_transmit(&mut ba);
                let rb = b.s.poll_transmit(&mut bb);
                assert_eq!(ra, rb, "seed {seed} step {step}");
                if let Some((conn, n)) = ra {
                    let i = a.conns.iter().position(|c| *c == conn).unwrap();
                    a.taken[i].extend_from_slice(&ba[..n]);
                    b.taken[i].extend_from_slice(&bb[..n]);
                }
            }
            5 => {
                let len = rng.below(30) as usize;
                let (mut ba, mut bb) = (vec![0u8; len], vec![0u8; len]);
                let ra = a.s.poll_transmit_for(conn, &mut ba);
                let rb = b.s.poll_transmit_for(conn, &mut bb);
                assert_eq!(ra, rb, "seed {seed} step {step}");
                if let Some(n) = ra {
                    a.taken[c].extend_from_slice(&ba[..n]);
                    b.taken[c].extend_from_slice(&bb[..n]);
                }
            }
            6 | 7 => {
                let kind =
                    [TaskKind::Lock, TaskKind::Scan, TaskKind::Locate][rng.below(3) as usize];
                let ra = a.s.enqueue_task(ids[c], kind, Default::default(), T0);
                let rb = b.s.enqueue_task(ids[c], kind, Default::default(), T0);
                assert_eq!(ra.is_ok(), rb.is_ok());
            }
            8 => {
                // A report (acked by the server), cut in two pieces.
                report_seq[c] += 1;
                let up = Up::Report {
                    seq: report_seq[c],
                    body: ReportBody::Task {
                        task: TaskId(u64::from(report_seq[c])),
                        status: TaskStatus::Received,
                    },
                };
                let mut f = [0u8; wire::MAX_FRAME];
                let n = frame::encode_keyed(&up, &mut f, keys[c]).unwrap();
                let cut = rng.below(n as u64) as usize;
                for part in [&f[..cut], &f[cut..n]] {
                    let ra = a.s.handle_bytes(conn, part, T0);
                    let rb = b.s.handle_bytes(conn, part, T0);
                    assert_eq!(ra.is_ok(), rb.is_ok());
                }
            }
            _ => {
                if rng.below(8) == 0 {
                    // A second proof in session: a bad message, the
                    // connection closes once its output is taken.
                    let up = Up::Proof { mac: [0; 32] };
                    let mut f = [0u8; wire::MAX_FRAME];
                    let n = frame::encode_keyed(&up, &mut f, keys[c]).unwrap();
                    let ra = a.s.handle_bytes(conn, &f[..n], T0);
                    let rb = b.s.handle_bytes(conn, &f[..n], T0);
                    assert_eq!(ra.is_ok(), rb.is_ok());
                }
            }
        }
        let (ea, eb) = (events(&mut a.s), events(&mut b.s));
        assert_eq!(ea, eb, "seed {seed} step {step}");
        for e in &ea {
            if let ServerEvent::Close { conn } = e {
                let i = a.conns.iter().position(|c| c == conn).unwrap();
                close_events[i] += 1;
                assert!(!closed[i], "a second Close, seed {seed} step {step}");
                closed[i] = true;
                // Its last byte was taken: the stream ends on a whole frame,
                // the error frame.
                let msgs = common::downs(&a.taken[i], keys[i]);
                assert!(
                    matches!(msgs.last(), Some(Down::Error(_))),
                    "seed {seed}: {msgs:?}"
                );
            }
        }
        assert_eq!(a.taken, b.taken, "seed {seed} step {step}");
    }
    // Drain what is left the same way on both; then the streams decode whole.
    for c in 0..2 {
        let conn = a.conns[c];
        while let Some(n) = a.s.transmit_with(conn, |bytes| {
            a.taken[c].extend_from_slice(bytes);
            bytes.len() + 1
        }) {
            assert!(n > 0);
        }
        let mut buf = [0u8; wire::MAX_FRAME];
        while let Some(n) = b.s.poll_transmit_for(conn, &mut buf) {
            b.taken[c].extend_from_slice(&buf[..n]);
        }
        assert_eq!(a.s.transmit_with(conn, |_| panic!("nothing left")), None);
    }
    let (ea, eb) = (events(&mut a.s), events(&mut b.s));
    assert_eq!(ea, eb);
    for e in &ea {
        if let ServerEvent::Close { conn } = e {
            let i = a.conns.iter().position(|c| c == conn).unwrap();
            close_events[i] += 1;
        }
    }
    assert_eq!(a.taken, b.taken, "seed {seed}");
    for c in 0..2 {
        assert!(close_events[c] <= 1, "seed {seed}: {close_events:?}");
        let msgs = common::downs(&a.taken[c], keys[c]);
        // The Welcome first, then every offer once, in order of sequence.
        assert!(
            matches!(msgs.first(), Some(Down::Welcome { .. })),
            "{msgs:?}"
        );
        let seqs: Vec<u32> = msgs
            .iter()
            .filter_map(|m| match m {
                Down::Task(t) => Some(t.seq),
                _ => None,
            })
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "seed {seed}: {seqs:?}"
        );
    }
    (close_events.iter().sum(), zero_calls)
}

#[test]
fn transmit_with_and_poll_transmit_for_twins_agree_on_random_schedules() {
    let (mut closes, mut zeros) = (0, 0);
    for seed in 1..300 {
        let (c, z) = run(seed);
        closes += c;
        zeros += z;
    }
    // The schedules reached what they are for.
    assert!(
        closes > 50 && zeros > 50,
        "{closes} closes, {zeros} empty takes"
    );
}

/// A transport that never takes anything: every call returns `None`, so a
/// drain loop ends, and the bytes stay, whole, for the next transport.
#[test]
fn a_transport_that_takes_nothing_ends_the_drain_and_loses_nothing() {
    let (mut a, keys, _) = twin();
    let conn = a.conns[0];
    let mut calls = 0;
    while a
        .s
        .transmit_with(conn, |_| {
            calls += 1;
            0
        })
        .is_some()
    {
        assert!(calls < 100);
    }
    assert_eq!(calls, 1, "one call, and the loop ended");
    let mut out = Vec::new();
    while a
        .s
        .transmit_with(conn, |b| {
            out.extend_from_slice(b);
            b.len()
        })
        .is_some()
    {}
    let msgs = common::downs(&out, keys[0]);
    assert!(
        matches!(
            msgs[..],
            [Down::Welcome { .. }, Down::Task(_), Down::SyncEnd]
        ),
        "{msgs:?}"
    );
}
