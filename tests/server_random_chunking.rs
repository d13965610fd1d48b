//! A whole device session (hello, proof, reports, progress) recorded once,
//! then replayed into a fresh server in random chunkings with garbage
//! between frames: frames read in place and frames read through the
//! decoder's buffer, keys changing inside a chunk, give the same tasks, the
//! same events and the same last acknowledgement as the recording.

use mdm_sync::device::{Device, DeviceConfig, Event};
use mdm_sync::server::{MemoryStore, Server, ServerConfig, ServerEvent};
use mdm_sync::time::Instant;
use mdm_sync::wire::{
    self, ComplianceEvent, DeviceId, Down, Platform, TaskId, TaskKind, TaskStatus, MAX_FRAME,
};

const ID: DeviceId = DeviceId(5);

fn server(t0: Instant) -> (Server<MemoryStore>, [u8; 32], Vec<TaskId>) {
    let mut s = Server::new(
        ServerConfig::default(),
        MemoryStore::new(),
        [1; 32],
        [2; 32],
    );
    let secret = s.enroll(ID, t0).unwrap();
    let kinds = [TaskKind::Lock, TaskKind::Scan, TaskKind::Wipe];
    let tasks = kinds
        .iter()
        .map(|k| s.enqueue_task(ID, *k, Default::default(), t0).unwrap())
        .collect();
    while s.poll_event().is_some() {}
    (s, secret, tasks)
}

/// What a replay leaves behind: the events and the last `Ack`.
fn outcome(s: &mut Server<MemoryStore>, conn_out: &[u8], key: u32) -> (Vec<ServerEvent>, u32) {
    let events = core::iter::from_fn(|| s.poll_event())
        .filter(|e| !matches!(e, ServerEvent::SessionEnded { .. }))
        .collect();
    let mut dec = wire::FrameDecoder::<MAX_FRAME>::new();
    let mut last = 0;
    // The Challenge goes out with key 0, everything after with the session key.
    let mut keyed = false;
    let mut bytes = conn_out;
    while !bytes.is_empty() {
        let n = dec.push(bytes);
        bytes = &bytes[n..];
        while let Some(p) = dec.decode() {
            match wire::decode::<Down>(p.unwrap()).unwrap() {
                Down::Ack { seq } => last = seq,
                Down::Challenge { .. } if !keyed => {
                    keyed = true;
                    dec.set_key(key);
                }
                _ => {}
            }
        }
    }
    (events, last)
}

#[test]
fn random_chunkings_with_garbage_read_the_same_session() {
    let t0 = Instant::from_millis(1_000);
    // The recording: frame by frame.
    let (mut s, secret, tasks) = server(t0);
    let mut d: Device = Device::new(DeviceConfig::new(ID, 0, secret, Platform::Ios), t0);
    d.raise_compliance(ComplianceEvent::ProfileChanged, t0)
        .unwrap();
    let mut frames: Vec<Vec<u8>> = Vec::new();
    let mut down = Vec::new();
    let mut conn = None;
    let mut buf = [0u8; 1024];
    for _ in 0..200 {
        d.handle_timeout(t0);
        while let Some(ev) = d.poll_event() {
            match ev {
                Event::Connect => {
                    conn = Some(s.connection_opened(t0).unwrap());
                    d.connected(t0);
                }
                Event::Execute(t) => {
                    d.task_progress(t.id, Some(50)).unwrap();
                    let status = if t.kind == TaskKind::Wipe {
                        TaskStatus::Failed { reason: 4 }
                    } else {
                        TaskStatus::Succeeded { result: None }
                    };
                    // Scan reports later, after its progress went out.
                    if t.kind != TaskKind::Scan {
                        d.task_status(t.id, status, t0).unwrap();
                    }
                }
                _ => {}
            }
        }
        let Some(c) = conn else { break };
        while let Some(n) = d.poll_transmit(&mut buf).unwrap() {
            frames.push(buf[..n].to_vec());
            s.handle_bytes(c, &buf[..n], t0).unwrap();
        }
        while let Some(n) = s.poll_transmit_for(c, &mut buf) {
            down.extend_from_slice(&buf[..n]);
            d.handle_bytes(&buf[..n], t0).unwrap();
        }
        if let Some(scan) = tasks.get(1) {
            if d.running_tasks().any(|t| t.id == *scan) && d.outbox_len() == 0 {
                d.task_status(*scan, TaskStatus::Cancelled, t0).unwrap();
            }
        }
        if !d.is_connected() {
            break;
        }
    }
    assert!(frames.len() >= 8, "{} frames", frames.len());
    let key = {
        let mut dec = wire::FrameDecoder::<MAX_FRAME>::new();
        dec.push(&down);
        let p = dec.decode().unwrap().unwrap();
        match wire::decode::<Down>(p).unwrap() {
            Down::Challenge { nonce, .. } => wire::frame::session_key(&nonce),
            other => panic!("{other:?}"),
        }
    };
    let want = outcome(&mut s, &down, key);
    assert!(want.1 >= 5, "last ack {}", want.1);

    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    for round in 0..3_000 {
        let (mut s, _, _) = server(t0);
        let c = s.connection_opened(t0).unwrap();
        let mut stream = Vec::new();
        for f in &frames {
            // Garbage without the magic's first byte: skipped, a frame
            // error each (well within the budget).
            if next(3) == 0 {
                for _ in 0..1 + next(6) {
                    stream.push(next(0xA5) as u8);
                }
            }
            stream.extend_from_slice(f);
        }
        let mut out = Vec::new();
        let mut rest = &stream[..];
        while !rest.is_empty() {
            let most = if next(2) == 0 { 8 } else { 300 };
            let n = (1 + next(most) as usize).min(rest.len());
            s.handle_bytes(c, &rest[..n], t0)
                .unwrap_or_else(|e| panic!("round {round}: {e:?}"));
            rest = &rest[n..];
            while let Some(n) = s.poll_transmit_for(c, &mut buf) {
                out.extend_from_slice(&buf[..n]);
            }
        }
        s.connection_closed(c, t0);
        let got = outcome(&mut s, &out, key);
        assert_eq!(got, want, "round {round}");
    }
}
