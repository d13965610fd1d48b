//! `ServerConfig::max_pending_out` against a model, for readers that take
//! output in odd chunks (1 byte, a few, part of a frame, all), with reports
//! sent at random between the takes, on sessions reused from the spare
//! list, with the spare list dropped (`Server::shrink_to_fit`) now and then.
//!
//! The model: the first burst (`Welcome` .. `SyncEnd`) is exempt until
//! taken; when a report's `Ack` is queued, the connection is closed if and
//! only if more than `max_pending_out` bytes queued after the burst are
//! still untaken. The reader decodes what it takes, so it knows where the
//! burst ends once it has taken the `SyncEnd`; before that every `Ack`
//! queued is untaken. An open connection, drained at the end, must have
//! delivered the whole burst and one `Ack` per report, in order.

mod common;

use mdm_sync::server::{FleetStore, MemoryStore, Server, ServerConfig};
use mdm_sync::time::Instant;
use mdm_sync::wire::{self, frame, DeviceId, Down, ReportBody, TaskStatus, Up};

const T0: Instant = Instant::from_millis(1_000);
const DEV: DeviceId = DeviceId(9);
const MASTER: [u8; 32] = [7; 32];

fn ack_len(seq: u32, key: u32) -> usize {
    let mut buf = [0u8; 64];
    frame::encode_keyed(&Down::Ack { seq }, &mut buf, key).unwrap()
}

/// What the reader took, decoded a byte at a time.
struct Reader {
    dec: wire::FrameDecoder<{ wire::MAX_FRAME }>,
    msgs: Vec<Down>,
    taken: usize,
    /// Where the burst ends, once its `SyncEnd` was taken.
    burst: Option<usize>,
}

impl Reader {
    fn new(key: u32) -> Self {
        let mut dec = wire::FrameDecoder::new();
        dec.set_key(key);
        Self {
            dec,
            msgs: Vec::new(),
            taken: 0,
            burst: None,
        }
    }

    fn take(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.taken += 1;
            assert_eq!(self.dec.push(&[byte]), 1);
            while let Some(f) = self.dec.decode() {
                let m: Down = wire::decode(f.unwrap()).unwrap();
                if m == Down::SyncEnd && self.burst.is_none() {
                    self.burst = Some(self.taken);
                }
                self.msgs.push(m);
            }
        }
    }
}

/// One connection: handshake, then `steps` random takes and reports.
/// Returns whether the server closed it (and checks it closed exactly when
/// the model says).
fn connection(
    s: &mut Server<MemoryStore>,
    rng: &mut common::Rng,
    bound: usize,
    tasks: &[wire::TaskId],
    case: &str,
) -> bool {
    let secret = mdm_sync::auth::derive_secret(&MASTER, DEV, 0);
    let now = T0;
    let first_seq = s
        .store()
        .device(DEV)
        .unwrap()
        .unwrap()
        .last_report_seq
        .wrapping_add(1);
    let (conn, key, answer) = common::raw_handshake(s, DEV, &secret, now);
    answer.unwrap();
    assert_eq!(s.session_count(), 1, "{case}: closed in the burst");
    let mut reader = Reader::new(key);
    let mut acks_queued = 0usize; // bytes of `Ack`s queued
    let mut seq = first_seq;
    let mut buf = [0u8; 64];
    let steps = 1 + rng.below(60);
    for step in 0..steps {
        if rng.below(3) == 0 {
            // A report: the model's verdict before its `Ack` is queued.
            let untaken_after = match reader.burst {
                Some(b) => (b + acks_queued).saturating_sub(reader.taken.max(b)),
                None => acks_queued,
            };
            let expect_close = untaken_after > bound;
            let task = tasks[rng.below(tasks.len() as u64) as usize];
            let up = Up::Report {
                seq,
                body: ReportBody::Task {
                    task,
                    status: TaskStatus::Received,
                },
            };
            let n = frame::encode_keyed(&up, &mut buf, key).unwrap();
            let _ = s.handle_bytes(conn, &buf[..n], now);
            let closed = s.session_count() == 0;
            assert_eq!(
                closed, expect_close,
                "{case}: step {step}, report {seq}: taken {}, burst {:?}, acks {acks_queued}, untaken after the burst {untaken_after}",
                reader.taken, reader.burst
            );
            if closed {
                return true;
            }
            acks_queued += ack_len(seq, key);
            seq = seq.wrapping_add(1);
        } else {
            let chunk = match rng.below(5) {
                0 => 1,
                1 => 2 + rng.below(5) as usize,
                2 => 1 + rng.below(40) as usize,
                3 => 0,
                _ => usize::MAX,
            };
            let mut got = Vec::new();
            let _ = s.transmit_with(conn, |b| {
                let n = b.len().min(chunk);
                got.extend_from_slice(&b[..n]);
                n
            });
            reader.take(&got);
        }
    }
    // Kept open: drain and check the stream.
    let rest = common::output(s, conn);
    reader.take(&rest);
    let Reader {
        msgs, taken, burst, ..
    } = reader;
    assert!(
        matches!(msgs.first(), Some(Down::Welcome { .. })),
        "{case}: {msgs:?}"
    );
    let end = msgs
        .iter()
        .position(|m| *m == Down::SyncEnd)
        .expect("SyncEnd");
    let acks: Vec<u32> = msgs[end + 1..]
        .iter()
        .map(|m| match m {
            Down::Ack { seq } => *seq,
            other => panic!("{case}: {other:?} after SyncEnd"),
        })
        .collect();
    let want: Vec<u32> = (first_seq..seq).collect();
    assert_eq!(acks, want, "{case}");
    assert_eq!(taken, burst.unwrap() + acks_queued, "{case}: bytes");
    s.connection_closed(conn, now);
    false
}

#[test]
fn random_takes_and_reports_close_exactly_when_the_model_does() {
    let bounds = [0usize, 1, 2, 7, 13, 30, 64, 100, 300, 1_000, usize::MAX];
    let seeds = common::seeds("B26_SEEDS", 60);
    let mut closes = 0;
    let mut kept = 0;
    for seed in 1..=seeds {
        let mut rng = common::Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let bound = bounds[rng.below(bounds.len() as u64) as usize];
        let cfg = ServerConfig {
            max_pending_out: bound,
            ..ServerConfig::default()
        };
        let mut s = Server::new(cfg, MemoryStore::new(), MASTER, [8; 32]);
        s.enroll(DEV, T0).unwrap();
        let tasks = common::queue_full_work(&mut s, DEV, T0);
        for c in 0..6 {
            if rng.below(4) == 0 {
                s.shrink_to_fit();
            }
            let case = format!("seed {seed}, bound {bound}, connection {c}");
            if connection(&mut s, &mut rng, bound, &tasks, &case) {
                closes += 1;
            } else {
                kept += 1;
            }
            while s.poll_event().is_some() {}
        }
    }
    eprintln!("{seeds} seeds: {closes} connections closed by the bound, {kept} kept");
    assert!(closes > 0 && kept > 0);
}
