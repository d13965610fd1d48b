//! The server reads whole frames where they lie in its input when nothing is
//! buffered, and the rest through its decoder's buffer: in every chunking of
//! the same stream it accepts the same reports, skips the same garbage and
//! bad frames, and refuses a frame of another session.

mod common;

use mdm_sync::server::{MemoryStore, Server, ServerConfig, ServerEvent, TaskState};
use mdm_sync::time::Instant;
use mdm_sync::wire::{
    self, frame, DeviceId, Down, ReportBody, TaskId, TaskKind, TaskStatus, Up, MAX_FRAME,
};

/// One keyed frame of `msg`.
fn framed(msg: &Up, key: u32) -> Vec<u8> {
    let mut buf = [0u8; MAX_FRAME];
    let n = frame::encode_keyed(msg, &mut buf, key).unwrap();
    buf[..n].to_vec()
}

fn report(seq: u32, task: TaskId, status: TaskStatus) -> Up {
    Up::Report {
        seq,
        body: ReportBody::Task { task, status },
    }
}

#[test]
fn every_chunking_reads_the_same_reports() {
    let d = DeviceId(3);
    let t0 = Instant::from_millis(1_000);
    for chunk in 1..=160 {
        let mut s = Server::new(
            ServerConfig::default(),
            MemoryStore::new(),
            [1; 32],
            [2; 32],
        );
        let secret = s.enroll(d, t0).unwrap();
        let opts = Default::default();
        let a = s.enqueue_task(d, TaskKind::Lock, opts, t0).unwrap();
        let b = s.enqueue_task(d, TaskKind::Unlock, opts, t0).unwrap();
        let c = s.enqueue_task(d, TaskKind::Wipe, opts, t0).unwrap();
        let (conn, key, answer) = common::raw_handshake(&mut s, d, &secret, t0);
        answer.unwrap();
        let mut out = [0u8; 4096];
        while s.poll_transmit_for(conn, &mut out).is_some() {}
        while s.poll_event().is_some() {}

        // Two whole frames back to back, garbage, a frame with a bad CRC, a
        // frame of another session (its key), then the last good report.
        let mut stream = framed(&report(1, a, TaskStatus::Received), key);
        stream.extend(framed(
            &report(2, a, TaskStatus::Succeeded { result: None }),
            key,
        ));
        stream.extend_from_slice(&[0x00, 0xA5, 0x17, 0x5A]);
        let mut bad = framed(&report(3, b, TaskStatus::Cancelled), key);
        bad[6] ^= 0x10;
        stream.extend(bad);
        stream.extend(framed(&report(3, c, TaskStatus::Cancelled), key ^ 1));
        let failed = TaskStatus::Failed { reason: 9 };
        stream.extend(framed(&report(3, b, failed), key));

        let mut acks = Vec::new();
        let mut dec = wire::FrameDecoder::<MAX_FRAME>::new();
        dec.set_key(key);
        for part in stream.chunks(chunk) {
            s.handle_bytes(conn, part, t0).unwrap();
            while let Some(n) = s.poll_transmit_for(conn, &mut out) {
                dec.push(&out[..n]);
                while let Some(p) = dec.decode() {
                    match wire::decode::<Down>(p.unwrap()).unwrap() {
                        Down::Ack { seq } => acks.push(seq),
                        other => panic!("chunk {chunk}: {other:?}"),
                    }
                }
            }
        }
        assert_eq!(acks.last(), Some(&3), "chunk {chunk}: {acks:?}");
        assert!(
            acks.windows(2).all(|w| w[0] < w[1]),
            "chunk {chunk}: {acks:?}"
        );
        let done = TaskState::Succeeded { result: None };
        assert_eq!(s.task_state(d, a), Some(done), "chunk {chunk}");
        let failed = TaskState::Failed { reason: 9 };
        assert_eq!(s.task_state(d, b), Some(failed), "chunk {chunk}");
        assert_eq!(
            s.task_state(d, c),
            Some(TaskState::Offered),
            "chunk {chunk}"
        );
        let changed: Vec<(TaskId, TaskState)> = core::iter::from_fn(|| s.poll_event())
            .filter_map(|e| match e {
                ServerEvent::TaskChanged { task, state, .. } => Some((task, state)),
                _ => None,
            })
            .collect();
        let want = [(a, TaskState::Delivered), (a, done), (b, failed)];
        assert_eq!(changed, want, "chunk {chunk}");
    }
}
