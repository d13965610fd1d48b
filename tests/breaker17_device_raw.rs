//! A device engine driven by hand-made server frames (no server: the file
//! builds and runs under `--no-default-features`, where postcard reads every
//! message and reports are queued through `enqueue`, as well as with `std`,
//! where acks and offers are read by hand and the `Received` written in
//! place). Both builds must agree with the same rules:
//!
//! - A session `Ack` at the edges of its `u32` (0, 1, `u32::MAX`, across the
//!   wrap), in canonical and overlong varints, with and without bytes after
//!   it (`SessionDown::Ack` holds a `u64` since 54f9f59): an ack of `a`
//!   drops the oldest reports up to `a`, an ack of a number not yet given
//!   ends the session, a payload `wire::decode` refuses ends it too.
//! - Offers in a burst to small devices with reports unacknowledged
//!   (`on_task` lists the task before queueing its `Received` since
//!   291ca67): each in-order offer is accepted (running, with exactly one
//!   `Received`), deferred (one `Deferred`) or left (nothing changes), never
//!   a session error, and a snapshot taken right after holds the task and
//!   its report together.

use mdm_sync::device::{Device, DeviceConfig, DeviceError, Event};
use mdm_sync::time::Instant;
use mdm_sync::wire::{
    self, frame, ComplianceEvent, DeviceId, Down, FrameDecoder, Platform, ReportBody, Task, TaskId,
    TaskKind, TaskStatus, Up, PROTOCOL_VERSION,
};

const NOW: Instant = Instant::from_millis(5_000);
const NONCE: [u8; 16] = [7; 16];
const _: () = assert!(KEY == u32::from_le_bytes([7, 7, 7, 7]));
/// Reports queued before the session.
const K: u32 = 5;

fn raw_frame(payload: &[u8], key: u32) -> Vec<u8> {
    let mut f = frame::MAGIC.to_vec();
    f.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    f.extend_from_slice(payload);
    let crc = wire::crc32(&f[2..]) ^ key;
    f.extend_from_slice(&crc.to_le_bytes());
    f
}

fn framed(msg: &Down, key: u32) -> Vec<u8> {
    let mut buf = [0u8; wire::MAX_FRAME];
    let n = frame::encode_keyed(msg, &mut buf, key).unwrap();
    buf[..n].to_vec()
}

/// A device `Device<O, I>` with up to `reports` compliance reports queued
/// (as many as it takes) and numbered from `base + 1` (its snapshot's next
/// report number edited), in session with a server whose store holds its
/// reports up to `base`; and the numbers of the reports it sent.
fn in_session<const O: usize, const I: usize>(base: u32, reports: u32) -> (Device<O, I>, Vec<u32>) {
    let cfg = DeviceConfig::new(DeviceId(3), 1, [9; 32], Platform::Android);
    let mut fresh = Device::<O, I>::new(cfg.clone(), NOW);
    let mut queued = 0;
    for _ in 0..reports {
        if fresh
            .raise_compliance(ComplianceEvent::ProfileChanged, NOW)
            .is_ok()
        {
            queued += 1;
        }
    }
    let mut snap = vec![0u8; Device::<O, I>::SNAPSHOT_MAX];
    let n = fresh.snapshot(&mut snap).unwrap();
    snap.truncate(n - 4);
    // Header: format, counter, device, generation, last task sequence, then
    // the next report sequence (PROTOCOL.md 14).
    snap[25..29].copy_from_slice(&base.wrapping_add(queued + 1).to_le_bytes());
    let crc = wire::crc32(&snap);
    snap.extend_from_slice(&crc.to_le_bytes());
    let mut d = Device::<O, I>::restore(cfg, &snap, NOW).unwrap();
    d.manual_sync(NOW);
    d.handle_timeout(NOW);
    let mut connect = false;
    while let Some(ev) = d.poll_event() {
        connect |= matches!(ev, Event::Connect);
    }
    assert!(connect, "asks for a connection");
    d.connected(NOW);
    let mut buf = [0u8; wire::MAX_FRAME];
    let n = d.poll_transmit(&mut buf).unwrap().expect("a Hello");
    let mut dec = FrameDecoder::<{ wire::MAX_FRAME }>::new();
    dec.push(&buf[..n]);
    let Ok(Up::Hello(hello)) = wire::decode::<Up>(dec.decode().unwrap().unwrap()) else {
        panic!("not a Hello");
    };
    let challenge = Down::Challenge {
        version: PROTOCOL_VERSION,
        attempt: hello.attempt,
        nonce: NONCE,
    };
    d.handle_bytes(&framed(&challenge, 0), NOW).unwrap();
    let welcome = Down::Welcome {
        ack: base,
        periodic_s: 0,
        want_token: false,
    };
    d.handle_bytes(&framed(&welcome, KEY), NOW).unwrap();
    let seqs = sent_reports(&mut d)
        .iter()
        .map(|(seq, _)| *seq)
        .collect::<Vec<_>>();
    let want: Vec<u32> = (1..=queued).map(|j| base.wrapping_add(j)).collect();
    assert_eq!(seqs, want, "base {base}: the reports sent");
    assert_eq!(d.outbox_len(), queued as usize, "base {base}");
    (d, seqs)
}

const KEY: u32 = 0x0707_0707;

/// The reports `d` sends now (after taking its events: a `Persist` waiting
/// holds output back).
fn sent_reports<const O: usize, const I: usize>(d: &mut Device<O, I>) -> Vec<(u32, ReportBody)> {
    while d.poll_event().is_some() {}
    let mut dec = FrameDecoder::<{ wire::MAX_FRAME }>::new();
    dec.set_key(KEY);
    let mut buf = [0u8; wire::MAX_FRAME];
    let mut out = Vec::new();
    while let Some(n) = d.poll_transmit(&mut buf).unwrap() {
        dec.push(&buf[..n]);
        while let Some(p) = dec.decode() {
            if let Ok(Up::Report { seq, body }) = wire::decode::<Up>(p.unwrap()) {
                out.push((seq, body));
            }
        }
    }
    out
}

/// A postcard varint of `v` in exactly `len` bytes (overlong when longer
/// than needed).
fn varint(v: u32, len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = u64::from(v);
    for i in 0..len {
        let more = i + 1 < len;
        out.push((rest & 0x7F) as u8 | if more { 0x80 } else { 0 });
        rest >>= 7;
    }
    out
}

/// What the device does with `payload` as the session's next frame:
/// `Ok(outbox length)` or the session ended.
fn outcome(base: u32, payload: &[u8]) -> Result<usize, ()> {
    let (mut d, _) = in_session::<16, 4>(base, K);
    let f = raw_frame(payload, KEY);
    match d.handle_bytes(&f, NOW) {
        Ok(()) => {
            assert!(d.is_connected());
            Ok(d.outbox_len())
        }
        Err(DeviceError::Session(_)) => Err(()),
        Err(e) => panic!("{e:?}"),
    }
}

const BASES: [u32; 6] = [0, 1, u32::MAX - 3, u32::MAX - 1, u32::MAX, (1 << 31) - 3];

#[test]
fn acks_at_the_edges_of_u32_drop_exactly_the_reports_up_to_them() {
    for base in BASES {
        let (_, seqs) = in_session::<16, 4>(base, K);
        let last = *seqs.last().unwrap();
        let mut acks: Vec<u32> = (0..=K).map(|j| base.wrapping_add(j)).collect();
        for back in [1u32, 2, 1000, (1 << 31) - K - 1, 1 << 31] {
            acks.push(base.wrapping_sub(back));
        }
        for ahead in [1u32, 2, 1 << 20, (1 << 31) - 1, 1 << 31] {
            acks.push(last.wrapping_add(ahead));
        }
        acks.extend([0, 1, u32::MAX, u32::MAX - 1]);
        for a in acks {
            // The oldest reports, up to the first numbered past `a` (in
            // the wrapping window), are dropped; a number the device has not
            // given ends the session.
            let want = if wire::seq_newer(a, last) {
                Err(())
            } else {
                let acked = seqs.iter().take_while(|s| !wire::seq_newer(**s, a)).count();
                Ok(seqs.len() - acked)
            };
            // Canonical and every overlong length up to five bytes.
            for len in canonical_len(a)..=5 {
                let mut p = vec![2];
                p.extend_from_slice(&varint(a, len));
                assert_eq!(wire::decode::<Down>(&p), Ok(Down::Ack { seq: a }), "{p:?}");
                assert_eq!(
                    outcome(base, &p),
                    want,
                    "base {base}, ack {a} in {len} bytes"
                );
            }
        }
    }
}

fn canonical_len(v: u32) -> usize {
    let bits = 32 - v.leading_zeros() as usize;
    bits.div_ceil(7).max(1)
}

#[test]
fn malformed_acks_end_the_session_as_wire_decode_refuses_them() {
    let base = u32::MAX - 1;
    let a = base.wrapping_add(2); // 0: acks two reports
    let payloads: Vec<Vec<u8>> = vec![
        // A sixth varint byte.
        [vec![2], varint(a, 6)].concat(),
        // A fifth byte over 0x0F (a number past u32::MAX).
        vec![2, 0x80, 0x80, 0x80, 0x80, 0x10],
        vec![2, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F],
        // Cut short.
        vec![2, 0x80],
        vec![2],
        // Bytes after the ack.
        [vec![2], varint(a, 1), vec![0]].concat(),
        [vec![2], varint(a, 5), vec![0x7F]].concat(),
        [vec![2], varint(base, 5), vec![1, 2, 3]].concat(),
    ];
    for p in &payloads {
        assert!(wire::decode::<Down>(p).is_err(), "{p:?} decodes");
        assert_eq!(outcome(base, p), Err(()), "{p:?} taken");
    }
    // The largest five-byte varint is u32::MAX itself, the first report
    // (base + 1): taken.
    let p = vec![2, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F];
    assert_eq!(wire::decode::<Down>(&p), Ok(Down::Ack { seq: u32::MAX }));
    assert_eq!(outcome(base, &p), Ok((K - 1) as usize));
}

/// What the device holds, to compare before and after an offer.
#[derive(Debug, PartialEq)]
struct Held {
    last_task_seq: u32,
    running: Vec<Task>,
    outbox: usize,
}

fn held<const O: usize, const I: usize>(d: &Device<O, I>) -> Held {
    Held {
        last_task_seq: d.last_task_seq(),
        running: d.running_tasks().collect(),
        outbox: d.outbox_len(),
    }
}

/// Offers `n` tasks in order to a `Device<O, I>` with `reports` reports
/// unacknowledged, one frame per call or all in one call.
fn burst<const O: usize, const I: usize>(reports: u32, n: u32, at_once: bool) {
    let case = format!("Device<{O}, {I}>, {reports} reports, {n} offers, at once {at_once}");
    let (mut d, _) = in_session::<O, I>(7, reports);
    let offers: Vec<Task> = (1..=n)
        .map(|seq| Task {
            seq,
            id: TaskId(1000 + u64::from(seq)),
            kind: TaskKind::ALL[seq as usize % TaskKind::ALL.len()],
        })
        .collect();
    let mut accepted = Vec::new();
    let mut deferred = Vec::new();
    if at_once {
        let bytes: Vec<u8> = offers
            .iter()
            .flat_map(|t| framed(&Down::Task(*t), KEY))
            .collect();
        d.handle_bytes(&bytes, NOW)
            .unwrap_or_else(|e| panic!("{case}: {e:?}"));
        let running: Vec<Task> = d.running_tasks().collect();
        accepted.extend(running.iter().copied());
        assert!(running.iter().all(|t| offers.contains(t)), "{case}");
        // The others taken in turn were deferred.
        let last = d.last_task_seq();
        deferred.extend(
            offers
                .iter()
                .filter(|t| t.seq <= last && !running.contains(t))
                .map(|t| t.id),
        );
    } else {
        for t in &offers {
            let before = held(&d);
            d.handle_bytes(&framed(&Down::Task(*t), KEY), NOW)
                .unwrap_or_else(|e| panic!("{case}, offer {}: {e:?}", t.seq));
            let after = held(&d);
            let mut running = before.running.clone();
            running.push(*t);
            if after.running == running {
                assert_eq!(after.last_task_seq, t.seq, "{case}");
                assert_eq!(after.outbox, before.outbox + 1, "{case}: its Received");
                accepted.push(*t);
            } else if after.last_task_seq == t.seq {
                assert_eq!(after.running, before.running, "{case}");
                assert_eq!(after.outbox, before.outbox + 1, "{case}: its Deferred");
                deferred.push(t.id);
            } else {
                assert_eq!(
                    after, before,
                    "{case}: offer {} left, nothing changed",
                    t.seq
                );
            }
            // A snapshot now holds the tasks and their reports together: a
            // reboot fails each running task (interrupted), a report more
            // each beside the reports held.
            let mut snap = vec![0u8; Device::<O, I>::SNAPSHOT_MAX];
            let len = d.snapshot(&mut snap).unwrap();
            let cfg = DeviceConfig::new(DeviceId(3), 1, [9; 32], Platform::Android);
            let back = Device::<O, I>::restore(cfg, &snap[..len], NOW).unwrap();
            let rebooted = Held {
                last_task_seq: after.last_task_seq,
                running: Vec::new(),
                outbox: after.outbox + after.running.len(),
            };
            assert_eq!(
                held(&back),
                rebooted,
                "{case}: restored after offer {}",
                t.seq
            );
        }
    }
    if reports == 0 {
        assert!(!accepted.is_empty(), "{case}: a slot was free");
    }
    // Each accepted task: one Received on the wire; each deferred: one
    // Deferred; nothing else about the offers.
    let sent = sent_reports(&mut d);
    for t in &accepted {
        let n = sent
            .iter()
            .filter(|(_, b)| {
                *b == ReportBody::Task {
                    task: t.id,
                    status: TaskStatus::Received,
                }
            })
            .count();
        assert_eq!(n, 1, "{case}: Received of {:?}", t.id);
    }
    for id in &deferred {
        let n = sent
            .iter()
            .filter(|(_, b)| matches!(b, ReportBody::Task { task, status: TaskStatus::Deferred { .. } } if task == id))
            .count();
        assert_eq!(n, 1, "{case}: Deferred of {id:?}");
    }
    let task_reports = sent
        .iter()
        .filter(|(_, b)| matches!(b, ReportBody::Task { .. }))
        .count();
    assert_eq!(
        task_reports,
        accepted.len() + deferred.len(),
        "{case}: {sent:?}"
    );
    // Each accepted task is handed to the application once, when it polls.
    let mut executed = Vec::new();
    while let Some(ev) = d.poll_event() {
        if let Event::Execute(t) = ev {
            executed.push(t);
        }
    }
    assert!(executed.iter().all(|t| accepted.contains(t)), "{case}");
}

#[test]
fn offers_in_a_burst_to_small_devices_with_reports_unacked() {
    for at_once in [false, true] {
        for reports in 0..=4 {
            for n in [1, 2, 3, 5, 9] {
                burst::<3, 1>(reports, n, at_once);
                burst::<4, 1>(reports, n, at_once);
                burst::<4, 2>(reports, n, at_once);
                burst::<5, 2>(reports, n, at_once);
                burst::<6, 3>(reports, n, at_once);
                burst::<16, 4>(reports, n, at_once);
            }
        }
    }
}
