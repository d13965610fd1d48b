use super::*;
use crate::wire::{
    DeviceId, Platform, PolicyOutcome, SettingFailure, TaskKind, TaskResult, MAX_POLICY_FAILURES,
};

const T0: Instant = Instant::from_millis(1_000);

fn cfg() -> DeviceConfig {
    DeviceConfig::new(DeviceId(7), 3, [5; 32], Platform::Android)
}

fn drain<const O: usize, const I: usize>(d: &mut Device<O, I>) -> std::vec::Vec<Event> {
    core::iter::from_fn(|| d.poll_event()).collect()
}

/// A device in a session that has received a welcome.
fn syncing<const O: usize, const I: usize>() -> Device<O, I> {
    let mut d = Device::<O, I>::new(cfg(), T0);
    d.handle_timeout(T0);
    drain(&mut d);
    d.connected(T0);
    let mut buf = [0u8; 600];
    d.poll_transmit(&mut buf).unwrap();
    let attempt = d.attempt;
    feed(
        &mut d,
        &Down::Challenge {
            version: PROTOCOL_VERSION,
            attempt,
            nonce: [1; 16],
        },
    );
    d.poll_transmit(&mut buf).unwrap();
    feed(
        &mut d,
        &Down::Welcome {
            ack: 0,
            periodic_s: 0,
            want_token: false,
        },
    );
    d
}

/// `msg` framed as the server would, with the session's key.
fn feed<const O: usize, const I: usize>(d: &mut Device<O, I>, msg: &Down) {
    let mut buf = [0u8; 600];
    let n = frame::encode_keyed(msg, &mut buf, d.key).unwrap();
    d.handle_bytes(&buf[..n], T0).unwrap();
}

fn task(seq: u32) -> Down {
    Down::Task(Task {
        seq,
        id: TaskId(100 + seq as u64),
        kind: TaskKind::Locate,
    })
}

#[test]
fn worst_case_snapshot_fits_snapshot_max() {
    let mut d = syncing::<16, 4>();
    for seq in 1u32..=4 {
        feed(&mut d, &task(seq));
    }
    drain(&mut d);
    let failed = heapless::Vec::from_slice(
        &[SettingFailure {
            key: u16::MAX,
            reason: u16::MAX,
        }; MAX_POLICY_FAILURES],
    )
    .unwrap();
    d.policy = Some(Policy {
        version: u32::MAX,
        settings: heapless::Vec::new(),
    });
    d.policy_applied(u32::MAX, PolicyOutcome::Partial { failed }, T0)
        .unwrap();
    while d
        .raise_compliance(ComplianceEvent::PasswordOverdue { days: u16::MAX }, T0)
        .is_ok()
    {}
    d.next_report_seq = u32::MAX - 20;
    d.counter = u64::MAX;
    d.last_task_seq = u32::MAX;
    let mut buf = [0u8; 4096];
    let n = d.snapshot(&mut buf).unwrap();
    assert!(
        n <= Device::<16, 4>::SNAPSHOT_MAX,
        "{n} > {}",
        Device::<16, 4>::SNAPSHOT_MAX
    );
    // Final statuses with the largest result still fit their reserved slots.
    let loc = TaskResult::Location {
        lat_e7: i32::MIN,
        lon_e7: i32::MIN,
        accuracy_m: u32::MAX,
    };
    for seq in 1u32..=4 {
        let status = TaskStatus::Succeeded { result: Some(loc) };
        d.task_status(TaskId(100 + seq as u64), status, T0).unwrap();
    }
    let n = d.snapshot(&mut buf).unwrap();
    assert!(
        n <= Device::<16, 4>::SNAPSHOT_MAX,
        "{n} > {}",
        Device::<16, 4>::SNAPSHOT_MAX
    );
}

#[test]
fn snapshot_round_trips_and_restores_running_tasks_as_interrupted() {
    let mut d = syncing::<16, 4>();
    feed(&mut d, &task(1));
    drain(&mut d);
    d.raise_compliance(ComplianceEvent::ProfileChanged, T0)
        .unwrap();
    let mut buf = [0u8; Device::<16, 4>::SNAPSHOT_MAX];
    let n = d.snapshot(&mut buf).unwrap();
    let r = Device::<16, 4>::restore(cfg(), &buf[..n], T0).unwrap();
    assert_eq!(r.last_task_seq(), 1);
    assert_eq!(r.running_tasks().count(), 0);
    // Received, compliance, then the interrupted task's failure.
    assert_eq!(r.outbox_len(), 3);
    let last = r.outbox.back().unwrap();
    let status = TaskStatus::Failed {
        reason: reason::INTERRUPTED_BY_REBOOT,
    };
    assert_eq!(
        wire::decode::<ReportBody>(&last.body),
        Ok(ReportBody::Task {
            task: TaskId(101),
            status
        })
    );
    // What was restored may have left before the reboot: never replaced.
    let wire: std::vec::Vec<Wire> = r.outbox.iter().map(|e| e.wire).collect();
    assert_eq!(wire, [Wire::Again, Wire::Again, Wire::New]);
}

#[test]
fn torn_foreign_and_garbage_snapshots_are_typed_errors() {
    let d = syncing::<16, 4>();
    let mut buf = [0u8; 512];
    let n = d.snapshot(&mut buf).unwrap();
    for cut in 0..n {
        let r = Device::<16, 4>::restore(cfg(), &buf[..cut], T0);
        assert!(r.is_err(), "torn at {cut}");
    }
    let mut other = cfg();
    other.generation = 4;
    assert_eq!(
        Device::<16, 4>::restore(other, &buf[..n], T0).err(),
        Some(SnapshotError::Foreign)
    );
    // A snapshot from a bigger device does not fit a smaller one.
    let mut big = syncing::<16, 4>();
    for seq in 1u32..=4 {
        feed(&mut big, &task(seq));
    }
    let n = big.snapshot(&mut buf).unwrap();
    let small = Device::<16, 2>::restore(cfg(), &buf[..n], T0).err();
    assert!(matches!(
        small,
        Some(SnapshotError::Malformed | SnapshotError::Inconsistent)
    ));
}

#[test]
fn pick_latest_prefers_the_newer_valid_slot() {
    let mut d = syncing::<16, 4>();
    let (mut a, mut b) = ([0u8; 512], [0u8; 512]);
    let na = d.snapshot(&mut a).unwrap();
    d.raise_compliance(ComplianceEvent::ProfileChanged, T0)
        .unwrap();
    assert_eq!(d.poll_event(), Some(Event::Persist));
    let nb = d.snapshot(&mut b).unwrap();
    assert_eq!(pick_latest(&a[..na], &b[..nb]), Some(&b[..nb]));
    b[3] ^= 0xFF; // torn write of the newer one
    assert_eq!(pick_latest(&a[..na], &b[..nb]), Some(&a[..na]));
    assert_eq!(pick_latest(&[], &b[..nb]), None);
}

#[test]
fn nothing_is_sent_while_a_persist_is_pending() {
    let mut d = syncing::<16, 4>();
    feed(&mut d, &task(1));
    let mut buf = [0u8; 600];
    assert_eq!(d.poll_transmit(&mut buf), Ok(None));
    assert_eq!(d.poll_event(), Some(Event::Persist));
    assert!(d.poll_transmit(&mut buf).unwrap().is_some());
}

#[test]
fn duplicate_and_gapped_task_offers() {
    let mut d = syncing::<16, 4>();
    feed(&mut d, &task(1));
    feed(&mut d, &task(1));
    assert_eq!(d.stats().duplicates, 1);
    let mut buf = [0u8; 600];
    let n = frame::encode_keyed(&task(5), &mut buf, d.key).unwrap();
    let err = d.handle_bytes(&buf[..n], T0).unwrap_err();
    let want = SessionError::Protocol(ProtocolError::SequenceGap);
    assert_eq!(err, DeviceError::Session(want));
    let executes = drain(&mut d)
        .iter()
        .filter(|e| matches!(e, Event::Execute(_)))
        .count();
    assert_eq!(executes, 1);
}

#[test]
fn time_standing_still_or_going_back_never_panics_or_refires() {
    let mut d = Device::<16, 4>::new(cfg(), Instant::from_millis(u64::MAX - 5));
    for t in [u64::MAX, 0, 5, u64::MAX - 1, 0] {
        d.handle_timeout(Instant::from_millis(t));
        let _ = d.poll_timeout();
        drain(&mut d);
    }
    let mut d = Device::<16, 4>::new(cfg(), T0);
    d.handle_timeout(T0);
    assert_eq!(drain(&mut d), [Event::Persist, Event::Connect]);
    d.handle_timeout(T0);
    d.handle_timeout(Instant::ZERO);
    assert_eq!(
        drain(&mut d),
        [],
        "a second call at the same time does nothing"
    );
}

#[test]
fn buffer_too_small_says_how_much_is_needed() {
    let mut d = Device::<16, 4>::new(cfg(), T0);
    d.handle_timeout(T0);
    drain(&mut d);
    d.connected(T0);
    let mut tiny = [0u8; 8];
    match d.poll_transmit(&mut tiny) {
        Err(DeviceError::Encode(EncodeError::BufferTooSmall { needed })) => {
            let mut buf = std::vec![0u8; needed];
            assert_eq!(d.poll_transmit(&mut buf), Ok(Some(needed)));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn app_errors_are_typed_and_harmless() {
    let mut d = syncing::<16, 4>();
    let s = TaskStatus::Succeeded { result: None };
    assert_eq!(
        d.task_status(TaskId(1), s, T0),
        Err(DeviceError::UnknownTask)
    );
    assert_eq!(
        d.task_status(TaskId(1), TaskStatus::Received, T0),
        Err(DeviceError::InvalidStatus)
    );
    assert_eq!(
        d.policy_applied(3, PolicyOutcome::Applied, T0),
        Err(DeviceError::NoPendingPolicy)
    );
    assert_eq!(
        d.task_progress(TaskId(1), Some(3)),
        Err(DeviceError::UnknownTask)
    );
    let mut idle = Device::<16, 4>::new(cfg(), T0);
    assert_eq!(
        idle.handle_bytes(&[1, 2, 3], T0),
        Err(DeviceError::NotConnected)
    );
}

#[test]
fn backoff_jitter_stays_between_half_and_the_whole_delay() {
    let (mut lo, mut hi) = (u64::MAX, 0);
    for seed in 0..300u64 {
        let mut c = cfg();
        c.jitter_seed = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut d = Device::<16, 4>::new(c, T0);
        d.handle_timeout(T0);
        drain(&mut d);
        d.connect_failed(T0);
        // First failure: backoff_min (5 s), jittered down to half at most.
        let delay = d.poll_timeout().unwrap().as_millis() - T0.as_millis();
        assert!((2_500..=5_000).contains(&delay), "seed {seed}: {delay} ms");
        lo = lo.min(delay);
        hi = hi.max(delay);
    }
    assert!(
        lo < 2_600 && hi > 4_900,
        "jitter spread only {lo}..={hi} ms"
    );
    // A delay beyond 32 bits of milliseconds is jittered too, without overflow.
    let mut c = cfg();
    c.timers.backoff_min = Duration::from_millis(u64::MAX);
    c.timers.backoff_max = Duration::from_millis(u64::MAX);
    let mut d = Device::<16, 4>::new(c, T0);
    d.handle_timeout(T0);
    drain(&mut d);
    d.connect_failed(T0);
    assert!(d.poll_timeout().is_some());
}

#[test]
fn a_policy_answer_refused_for_lack_of_room_is_asked_again_after_an_ack() {
    let mut d = syncing::<16, 4>();
    for seq in 1u32..=12 {
        feed(&mut d, &task(seq)); // 4 accepted, 8 deferred for lack of room
    }
    assert_eq!(d.outbox_len() + d.running_tasks().count(), 16);
    let policy = Policy {
        version: 1,
        settings: heapless::Vec::new(),
    };
    feed(&mut d, &Down::Policy(policy));
    let events = drain(&mut d);
    assert!(events.contains(&Event::ApplyPolicy { version: 1 }));
    let r = d.policy_applied(1, PolicyOutcome::Applied, T0);
    assert_eq!(r, Err(DeviceError::OutboxFull));
    assert_eq!(drain(&mut d), [], "not announced again at once");
    feed(&mut d, &Down::Ack { seq: 12 });
    assert_eq!(drain(&mut d), [Event::ApplyPolicy { version: 1 }]);
    assert_eq!(d.policy_applied(1, PolicyOutcome::Applied, T0), Ok(()));
    assert_eq!(d.policy_version(), 1);
}

/// A report body as the outbox keeps it.
fn encode_body(body: &ReportBody) -> Result<Body, DeviceError> {
    let mut out = Body::EMPTY;
    out.put(body)?;
    Ok(out)
}

#[test]
fn only_a_received_body_is_taken_for_one() {
    let statuses = [
        TaskStatus::Received,
        TaskStatus::Succeeded { result: None },
        TaskStatus::Failed { reason: 0 },
        TaskStatus::Deferred {
            retry_after_s: None,
        },
        TaskStatus::Cancelled,
    ];
    for id in [0, 1, 127, 128, 300, 1 << 40, u64::MAX] {
        for status in statuses {
            let body = encode_body(&ReportBody::Task {
                task: TaskId(id),
                status,
            })
            .unwrap();
            let want = (status == TaskStatus::Received).then_some(TaskId(id));
            assert_eq!(received_task(&body), want, "{id} {status:?}");
        }
    }
    let results = [
        TaskResult::Location {
            lat_e7: i32::MIN,
            lon_e7: i32::MAX,
            accuracy_m: u32::MAX,
        },
        TaskResult::Scan { threats: 300 },
    ];
    let retry = TaskStatus::Deferred {
        retry_after_s: Some(u32::MAX),
    };
    let more = results.map(|r| TaskStatus::Succeeded { result: Some(r) });
    for id in [0, 127, 128, u64::MAX] {
        for status in statuses.into_iter().chain(more).chain([retry]) {
            let report = ReportBody::Task {
                task: TaskId(id),
                status,
            };
            let mut want = [0u8; wire::MAX_REPORT_BODY];
            let n = wire::encode_payload(&report, &mut want).unwrap();
            let got = encode_body(&report).unwrap();
            assert_eq!(
                got[..],
                want[..n],
                "{report:?}: written by hand as serde does"
            );
            // A final status in place of the task's `Received`.
            #[cfg(feature = "hand-encode")]
            {
                let received = ReportBody::Task {
                    task: TaskId(id),
                    status: TaskStatus::Received,
                };
                // The engine's `Received`, written by hand, is serde's.
                let mut replaced = Body::EMPTY;
                replaced.put_received(TaskId(id)).unwrap();
                let serde_received = encode_body(&received).unwrap();
                assert_eq!(replaced[..], serde_received[..], "{id}: Received by hand");
                replaced.put_status(&status).unwrap();
                assert_eq!(replaced[..], want[..n], "{report:?}: status replaced");
            }
        }
    }
    let compliance = encode_body(&ReportBody::Compliance(ComplianceEvent::ProfileChanged));
    assert_eq!(received_task(&compliance.unwrap()), None);
    assert_eq!(received_task(&[]), None);
    assert_eq!(received_task(&[0, 0]), None);
    assert_eq!(received_task(&[0; 13]), None);
    assert_eq!(received_task(&[0, 0xFF, 0xFF, 0]), None);
}

/// One piece of a hostile byte stream from a server.
#[derive(Clone, Debug)]
enum Piece {
    /// A message framed with the session key (`stale`: with key 0, as a
    /// frame of an earlier session would be), one bit flipped if `flip`.
    Frame {
        msg: u8,
        arg: u8,
        stale: bool,
        flip: Option<u16>,
    },
    /// Bytes of garbage, magic bytes likely.
    Garbage(std::vec::Vec<u8>),
    /// A header announcing `len` bytes, nothing after it.
    Header(u16),
}

fn piece() -> impl proptest::strategy::Strategy<Value = Piece> {
    use proptest::prelude::*;
    prop_oneof![
        6 => (0u8..7, any::<u8>(), proptest::bool::weighted(0.1), proptest::option::weighted(0.15, any::<u16>()))
            .prop_map(|(msg, arg, stale, flip)| Piece::Frame { msg, arg, stale, flip }),
        1 => proptest::collection::vec(prop_oneof![Just(0xA5u8), Just(0x5A), any::<u8>()], 1..12)
            .prop_map(Piece::Garbage),
        1 => prop_oneof![Just(0u16), 1u16..300, any::<u16>()].prop_map(Piece::Header),
    ]
}

fn down(msg: u8, arg: u8) -> Down {
    let small = u32::from(arg % 8);
    match msg {
        0 => Down::Ack { seq: small },
        1 | 2 => task(small),
        3 => Down::Cancel {
            task: TaskId(100 + u64::from(arg % 8)),
        },
        4 => Down::Policy(Policy {
            version: small,
            settings: heapless::Vec::new(),
        }),
        5 => Down::Welcome {
            ack: small,
            periodic_s: 0,
            want_token: arg & 1 != 0,
        },
        _ => Down::Error(ErrorCode::Busy),
    }
}

/// `Hello.attempt` of a new device's first connection: boot snapshot 1.
const FIRST_ATTEMPT: u64 = (1 << 32) + 1;

/// The server's side of a session: its `Challenge`, a `Welcome`, then the
/// pieces, with the session key from the challenge on.
fn hostile_stream(pieces: &[Piece]) -> std::vec::Vec<u8> {
    let nonce = [3u8; 16];
    let key = frame::session_key(&nonce);
    let mut out = std::vec::Vec::new();
    let mut buf = [0u8; 600];
    let mut put = |msg: &Down, key: u32, flip: Option<u16>, out: &mut std::vec::Vec<u8>| {
        let n = frame::encode_keyed(msg, &mut buf, key).unwrap();
        let f = &mut buf[..n];
        if let Some(bit) = flip {
            let bit = usize::from(bit) % (n * 8);
            f[bit / 8] ^= 1 << (bit % 8);
        }
        out.extend_from_slice(f);
    };
    let challenge = Down::Challenge {
        version: PROTOCOL_VERSION,
        attempt: FIRST_ATTEMPT,
        nonce,
    };
    put(&challenge, 0, None, &mut out);
    put(&down(5, 0), key, None, &mut out);
    for p in pieces {
        match p {
            Piece::Frame {
                msg,
                arg,
                stale,
                flip,
            } => put(
                &down(*msg, *arg),
                if *stale { 0 } else { key },
                *flip,
                &mut out,
            ),
            Piece::Garbage(g) => out.extend_from_slice(g),
            Piece::Header(len) => {
                out.extend_from_slice(&frame::MAGIC);
                out.extend_from_slice(&len.to_le_bytes());
            }
        }
    }
    put(&Down::SyncEnd, key, None, &mut out);
    out
}

/// What a device shows after reading `stream` in chunks ending at `cuts`:
/// the first error, events, frames sent, counters and state.
fn read_in_chunks(stream: &[u8], cuts: &[usize]) -> std::string::String {
    let mut d = Device::<8, 2>::new(cfg(), T0);
    d.handle_timeout(T0);
    drain(&mut d);
    d.connected(T0);
    let mut buf = [0u8; 600];
    d.poll_transmit(&mut buf).unwrap();
    let mut at = 0;
    let mut first_error = None;
    for &cut in cuts.iter().chain([&stream.len()]) {
        let cut = cut.clamp(at, stream.len());
        if cut == at {
            continue;
        }
        if let Err(e) = d.handle_bytes(&stream[at..cut], T0) {
            first_error = Some(e);
            break;
        }
        at = cut;
    }
    let events = drain(&mut d);
    let mut sent = std::vec::Vec::new();
    while let Ok(Some(n)) = d.poll_transmit(&mut buf) {
        sent.push(buf[..n].to_vec());
    }
    let running: std::vec::Vec<Task> = d.running_tasks().collect();
    // How many errors a garbage run makes depends on how its bytes arrive:
    // the counter is left out.
    let stats = DeviceStats {
        frame_errors: 0,
        ..d.stats()
    };
    std::format!(
        "error {first_error:?}\nevents {events:?}\nsent {sent:?}\nstats {:?}\nlast_task_seq {} outbox {} connected {} policy {:?}\nrunning {running:?}",
        stats,
        d.last_task_seq(),
        d.outbox_len(),
        d.is_connected(),
        d.pending_policy(),
    )
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256)
    ))]

    /// A hostile stream (stale, corrupted and unexpected frames, garbage,
    /// bad headers) gives the same result in any chunking as read whole,
    /// and byte by byte. Runs in both builds: with `hand-decode` whole frames
    /// are read in place, without it (firmware) through the buffer.
    #[test]
    fn a_hostile_stream_reads_the_same_in_every_chunking(
        pieces in proptest::collection::vec(piece(), 0..24),
        mut cuts in proptest::collection::vec(0usize..2000, 0..40),
    ) {
        let stream = hostile_stream(&pieces);
        cuts.sort_unstable();
        let whole = read_in_chunks(&stream, &[]);
        let bytewise: std::vec::Vec<usize> = (1..stream.len()).collect();
        proptest::prop_assert_eq!(&read_in_chunks(&stream, &cuts), &whole, "cuts {:?}", cuts);
        proptest::prop_assert_eq!(&read_in_chunks(&stream, &bytewise), &whole, "byte by byte");
    }
}

/// A task's `Received`, written as one piece, is what the encoder writes,
/// at every varint length of the task id, and `received_task` reads it back.
#[test]
fn received_bodies_are_what_the_encoder_writes() {
    let mut ids = std::vec![0, 1, u64::MAX];
    for k in 1..10 {
        let edge = 1u64 << (7 * k);
        ids.extend([edge - 1, edge, edge + 1]);
    }
    for id in ids {
        let report = ReportBody::Task {
            task: TaskId(id),
            status: TaskStatus::Received,
        };
        let mut want = [0u8; wire::MAX_REPORT_BODY];
        let n = wire::encode_serde(&report, &mut want);
        let mut body = Body::EMPTY;
        body.bytes = [0xEE; wire::MAX_REPORT_BODY];
        body.put(&report).unwrap();
        assert_eq!(*body, want[..n], "id {id}");
        assert_eq!(received_task(&body), Some(TaskId(id)));
    }
}

/// `msg` framed with the session's key, read at `now`; errors are the run's.
fn feed_at<const O: usize, const I: usize>(d: &mut Device<O, I>, msg: &Down, now: Instant) {
    let mut buf = [0u8; 600];
    let n = frame::encode_keyed(msg, &mut buf, d.key).unwrap();
    let _ = d.handle_bytes(&buf[..n], now);
}

/// The outbox's bodies are serde's, byte for byte, the snapshot is the
/// layout of PROTOCOL.md, and it restores to the same settings, whose
/// snapshot is the layout again.
fn snapshot_checked<const O: usize, const I: usize>(
    d: &Device<O, I>,
    now: Instant,
) -> std::vec::Vec<u8> {
    // Every report body, written in pieces or whole, is serde's.
    for e in &d.outbox {
        let report: ReportBody = postcard::from_bytes(&e.body).unwrap();
        let mut want = [0u8; wire::MAX_REPORT_BODY];
        let n = wire::encode_serde(&report, &mut want);
        assert_eq!(e.body[..], want[..n], "{report:?}");
    }
    let want = super::snapshot::tests::by_layout(d);
    let mut got = std::vec![0u8; Device::<O, I>::SNAPSHOT_MAX];
    let n = d.snapshot(&mut got).unwrap();
    assert_eq!(got[..n], want[..]);
    got.truncate(n);
    let r = Device::<O, I>::restore(cfg(), &got, now).unwrap();
    assert_eq!(
        (r.policy_version, r.periodic),
        (d.policy_version, d.periodic)
    );
    let mut again = std::vec![0u8; Device::<O, I>::SNAPSHOT_MAX];
    let m = r.snapshot(&mut again).unwrap();
    let want = super::snapshot::tests::by_layout(&r);
    assert_eq!(again[..m], want[..], "restored");
    got
}

/// Snapshots along random runs of the engine (sessions whose `Welcome` sets
/// any periodic interval or none, tasks, policies applied or refused, acks,
/// reboots) are the layout, and restore to the settings they were taken with.
#[test]
fn snapshots_along_random_runs_are_the_layout() {
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let periods = [0, 1, 59, 60, 61, 3_600, 604_800, 604_801, u32::MAX];
    for _ in 0..600 {
        let mut now = T0;
        let mut d = Device::<6, 2>::new(cfg(), now);
        let mut saved = snapshot_checked(&d, now);
        let mut buf = [0u8; 600];
        for _ in 0..60 {
            let r = crate::xorshift(&mut rng);
            let arg = (r >> 8) as u32;
            match r % 8 {
                0 | 1 => {
                    d.disconnected(now);
                    now = now + Duration::from_secs(1 + u64::from(arg % 100_000));
                    d.manual_sync(now);
                    d.handle_timeout(now);
                    drain(&mut d);
                    if d.link == Link::Connecting {
                        d.connected(now);
                        let _ = d.poll_transmit(&mut buf);
                        let attempt = d.attempt;
                        let nonce = [(r >> 16) as u8 | 1; 16];
                        feed_at(
                            &mut d,
                            &Down::Challenge {
                                version: PROTOCOL_VERSION,
                                attempt,
                                nonce,
                            },
                            now,
                        );
                        let _ = d.poll_transmit(&mut buf);
                        let periodic_s = match periods.get(arg as usize % 12) {
                            Some(&p) => p,
                            None => arg,
                        };
                        let ack = d.next_report_seq.wrapping_sub(1 + (arg >> 4) % 3);
                        let want_token = arg & 0x100 != 0;
                        let welcome = Down::Welcome {
                            ack,
                            periodic_s,
                            want_token,
                        };
                        feed_at(&mut d, &welcome, now);
                    }
                }
                2 => {
                    let offer = task(d.last_task_seq.wrapping_add(1));
                    feed_at(&mut d, &offer, now);
                }
                3 => {
                    let running = d.running_tasks().next();
                    if let Some(t) = running {
                        let status = match arg % 3 {
                            0 => TaskStatus::Failed { reason: arg as u16 },
                            1 => TaskStatus::Succeeded { result: None },
                            _ => TaskStatus::Cancelled,
                        };
                        let _ = d.task_status(t.id, status, now);
                    }
                }
                4 => {
                    let version = match arg % 4 {
                        0 => d.policy_version.wrapping_add(1),
                        1 => u32::MAX,
                        _ => arg,
                    };
                    let policy = Policy {
                        version,
                        settings: heapless::Vec::new(),
                    };
                    feed_at(&mut d, &Down::Policy(policy), now);
                    drain(&mut d);
                    if let Some(v) = d.pending_policy().map(|p| p.version) {
                        let outcome = if arg.is_multiple_of(2) {
                            PolicyOutcome::Applied
                        } else {
                            PolicyOutcome::Rejected { reason: 1 }
                        };
                        let _ = d.policy_applied(v, outcome, now);
                    }
                }
                5 => {
                    let ack = d.next_report_seq.wrapping_sub(1 + arg % 3);
                    feed_at(&mut d, &Down::Ack { seq: ack }, now);
                }
                6 => {
                    d = Device::restore(cfg(), &saved, now).unwrap();
                }
                _ => {
                    now = now + Duration::from_secs(u64::from(arg % 1_000_000));
                    d.handle_timeout(now);
                }
            }
            // Sometimes nothing goes out: a task's `Received` then waits in
            // the outbox for its final status to take its place.
            drain(&mut d);
            if !(r >> 40).is_multiple_of(3) {
                while d.poll_transmit(&mut buf).ok().flatten().is_some() {}
            }
            saved = snapshot_checked(&d, now);
        }
    }
}

/// A configured periodic interval outside `1 min ..= 7 days` is clamped as a
/// server's suggestion is, so a reboot (which restores the clamped value
/// from the snapshot) never changes it.
#[test]
fn a_configured_periodic_interval_is_clamped_and_survives_a_reboot() {
    for (set, want) in [
        (Duration::from_secs(1), Duration::from_mins(1)),
        (Duration::from_hours(3), Duration::from_hours(3)),
        (Duration::from_hours(24 * 30), Duration::from_hours(24 * 7)),
    ] {
        let mut c = cfg();
        c.timers.periodic = set;
        let mut d = Device::<16, 4>::new(c.clone(), T0);
        assert_eq!(d.periodic_interval(), want);
        drain(&mut d);
        let mut buf = [0u8; Device::<16, 4>::SNAPSHOT_MAX];
        let n = d.snapshot(&mut buf).unwrap();
        let r = Device::<16, 4>::restore(c, &buf[..n], T0).unwrap();
        assert_eq!(r.periodic_interval(), want, "after a reboot, set {set:?}");
    }
}

// ---- the push token (protocol version 5) ------------------------------------

fn token(s: &str) -> heapless::String<{ wire::PUSH_TOKEN_MAX }> {
    heapless::String::try_from(s).unwrap()
}

fn with_token(t: &str) -> DeviceConfig {
    let mut c = cfg();
    c.push_token = token(t);
    c
}

/// Connects if a sync is wanted at `now` and sends the `Hello`: `None` when
/// no sync was wanted.
fn open(d: &mut Device, now: Instant) -> Option<Hello> {
    d.handle_timeout(now);
    drain(d);
    if d.link != Link::Connecting {
        return None;
    }
    d.connected(now);
    let mut buf = [0u8; 600];
    let n = d.poll_transmit(&mut buf).unwrap().expect("a hello");
    match wire::decode::<Up>(frame::payload(&buf[..n])) {
        Ok(Up::Hello(h)) => Some(h),
        other => panic!("not a hello: {other:?}"),
    }
}

/// Answers the open session's `Hello` up to its `Welcome`, which asks for
/// the token when `want_token`.
fn welcome(d: &mut Device, want_token: bool, now: Instant) {
    let attempt = d.attempt;
    let challenge = Down::Challenge {
        version: PROTOCOL_VERSION,
        attempt,
        nonce: [1; 16],
    };
    feed_at(d, &challenge, now);
    let mut buf = [0u8; 600];
    assert!(d.poll_transmit(&mut buf).unwrap().is_some(), "a proof");
    let welcome = Down::Welcome {
        ack: d.next_report_seq.wrapping_sub(1),
        periodic_s: 0,
        want_token,
    };
    feed_at(d, &welcome, now);
    assert_eq!(d.link, Link::Syncing);
}

/// A whole sync at `now`, its `Welcome` asking for the token when
/// `want_token`; returns its `Hello`, `None` when no sync was wanted.
fn sync(d: &mut Device, want_token: bool, now: Instant) -> Option<Hello> {
    let hello = open(d, now)?;
    welcome(d, want_token, now);
    feed_at(d, &Down::SyncEnd, now);
    let done = drain(d).iter().any(|e| matches!(e, Event::SyncDone { .. }));
    assert!(done, "the sync did not complete");
    Some(hello)
}

const MIN: Duration = Duration::from_secs(60);

/// A manual sync at `now`: its `Hello` carries no token.
fn steady(d: &mut Device, now: Instant) {
    d.manual_sync(now);
    let hello = sync(d, false, now).expect("a manual sync");
    assert!(hello.push_token.is_empty(), "{hello:?}");
}

#[test]
fn a_confirmed_token_is_not_sent_again() {
    let mut d: Device = Device::new(with_token("fcm:one"), T0);
    let first = sync(&mut d, false, T0).unwrap();
    assert_eq!(
        first.push_token,
        token("fcm:one"),
        "the boot sync carries it"
    );
    steady(&mut d, T0 + MIN);
    d.push_received(T0 + MIN + MIN);
    let third = sync(&mut d, false, T0 + MIN + MIN).unwrap();
    assert!(third.push_token.is_empty(), "{third:?}");
}

/// A confirmed token goes again with the first sync a periodic interval
/// after the session that confirmed it (and only then): a server that holds
/// another token (a store restored from a backup) never asks for it. Here
/// those are the periodic syncs, each a periodic interval after the last.
#[test]
fn every_periodic_sync_carries_the_token() {
    let mut d: Device = Device::new(with_token("fcm:one"), T0);
    sync(&mut d, false, T0).unwrap();
    let mut last = T0;
    for _ in 0..3 {
        let now = last + d.periodic_interval();
        let hello = sync(&mut d, false, now).expect("a periodic sync");
        assert_eq!(hello.trigger, SyncTrigger::Periodic, "{hello:?}");
        assert_eq!(hello.push_token, token("fcm:one"), "{hello:?}");
        last = now + MIN;
        steady(&mut d, last);
    }
}

/// The same for a device that syncs more often than its periodic interval
/// (so that no sync is periodic): one sync per interval carries the token,
/// whatever started it.
#[test]
fn a_device_syncing_often_sends_its_token_once_per_periodic_interval() {
    let mut d: Device = Device::new(with_token("fcm:one"), T0);
    sync(&mut d, false, T0).unwrap();
    let step = Duration::from_millis(d.periodic_interval().as_millis() / 3);
    let mut carried = std::vec::Vec::new();
    for i in 1..=9u64 {
        let now = T0 + Duration::from_millis(step.as_millis() * i);
        d.manual_sync(now);
        let hello = sync(&mut d, false, now).expect("a manual sync");
        assert_eq!(hello.trigger, SyncTrigger::Manual, "{hello:?}");
        carried.push(!hello.push_token.is_empty());
    }
    let once = [false, false, true];
    assert_eq!(carried, [once, once, once].concat());
}

#[test]
fn a_session_that_ends_before_its_welcome_confirms_nothing() {
    let mut d: Device = Device::new(with_token("fcm:one"), T0);
    // Closed after the challenge, before the welcome.
    let hello = open(&mut d, T0).unwrap();
    assert_eq!(hello.push_token, token("fcm:one"));
    let attempt = d.attempt;
    let challenge = Down::Challenge {
        version: PROTOCOL_VERSION,
        attempt,
        nonce: [1; 16],
    };
    feed_at(&mut d, &challenge, T0);
    d.disconnected(T0);
    // The retry after the backoff carries the token again.
    let retry = T0 + d.cfg.timers.backoff_max;
    let again = sync(&mut d, false, retry).unwrap();
    assert_eq!(again.push_token, token("fcm:one"));
    steady(&mut d, retry + MIN);
}

#[test]
fn a_reboot_sends_the_token_once_more() {
    let mut d: Device = Device::new(with_token("fcm:one"), T0);
    sync(&mut d, false, T0).unwrap();
    let mut snap = [0u8; 1024];
    let n = d.snapshot(&mut snap).unwrap();
    let mut r: Device = Device::restore(with_token("fcm:one"), &snap[..n], T0 + MIN).unwrap();
    r.manual_sync(T0 + MIN);
    let hello = sync(&mut r, false, T0 + MIN).unwrap();
    assert_eq!(
        hello.push_token,
        token("fcm:one"),
        "not sent after the reboot"
    );
    steady(&mut r, T0 + MIN + MIN);
}

#[test]
fn a_new_token_is_sent_until_a_welcome_confirms_it() {
    let mut d: Device = Device::new(with_token("fcm:one"), T0);
    sync(&mut d, false, T0).unwrap();
    let t1 = T0 + MIN;
    d.set_push_token(token("fcm:two"), t1);
    let hello = sync(&mut d, false, t1).expect("a new token starts a sync");
    assert_eq!(hello.push_token, token("fcm:two"));
    steady(&mut d, t1 + MIN);
}

#[test]
fn a_token_changed_after_the_hello_is_not_confirmed_by_its_welcome() {
    let mut d: Device = Device::new(with_token("fcm:one"), T0);
    let hello = open(&mut d, T0).unwrap();
    assert_eq!(hello.push_token, token("fcm:one"));
    d.set_push_token(token("fcm:two"), T0);
    welcome(&mut d, false, T0);
    feed_at(&mut d, &Down::SyncEnd, T0);
    drain(&mut d);
    // The change wants a sync of its own, which carries the new token.
    let next = sync(&mut d, false, T0).expect("the change starts a sync");
    assert_eq!(next.push_token, token("fcm:two"));
}

#[test]
fn a_welcome_asking_for_the_token_brings_it_in_a_sync_at_once() {
    let mut d: Device = Device::new(with_token("fcm:one"), T0);
    sync(&mut d, false, T0).unwrap();
    let t1 = T0 + MIN;
    d.push_received(t1);
    // The server lost the token: this Hello had none, the Welcome asks.
    let hello = sync(&mut d, true, t1).unwrap();
    assert!(hello.push_token.is_empty());
    let resend = sync(&mut d, false, t1).expect("no sync follows the request");
    assert_eq!(resend.trigger, SyncTrigger::Report);
    assert_eq!(resend.push_token, token("fcm:one"));
    assert!(sync(&mut d, false, t1).is_none(), "a second extra sync");
    steady(&mut d, t1 + MIN);
}

#[test]
fn a_request_answering_a_hello_with_the_token_waits_for_the_next_sync() {
    // A server that cannot keep the token asks every time: no sync loop,
    // and the token rides on every later Hello.
    let mut d: Device = Device::new(with_token("fcm:one"), T0);
    let mut now = T0;
    for _ in 0..3 {
        let hello = sync(&mut d, true, now).unwrap();
        assert_eq!(hello.push_token, token("fcm:one"));
        assert!(sync(&mut d, true, now).is_none(), "a sync loop");
        now = now + MIN;
        d.manual_sync(now);
    }
}

#[test]
fn a_device_without_a_token_never_loops_on_the_request() {
    let mut d: Device = Device::new(cfg(), T0);
    assert!(d.cfg.push_token.is_empty());
    let mut now = T0;
    for _ in 0..3 {
        let hello = sync(&mut d, true, now).unwrap();
        assert!(hello.push_token.is_empty());
        assert!(sync(&mut d, true, now).is_none(), "a sync loop");
        now = now + MIN;
        d.manual_sync(now);
    }
    // Asked even after a Welcome confirmed its (empty) token: still none.
    sync(&mut d, false, now).unwrap();
    d.manual_sync(now + MIN);
    sync(&mut d, true, now + MIN).unwrap();
    assert!(sync(&mut d, true, now + MIN).is_none(), "a sync loop");
}

/// A final status takes the place of its task's unsent `Received` at the
/// back of the outbox or behind other tasks' unsent `Received`s only: never
/// past a final status, a report the application raised, or one that went
/// out.
#[test]
fn a_final_status_takes_the_place_of_an_unsent_received_behind_others_only() {
    let done = TaskStatus::Succeeded { result: None };
    let received = TaskStatus::Received;
    let bodies = |d: &Device| {
        let body = |e: &Entry| wire::decode::<ReportBody>(&e.body).unwrap();
        d.outbox
            .iter()
            .map(|e| (e.seq, body(e)))
            .collect::<std::vec::Vec<_>>()
    };
    let report = |id: u64, status| ReportBody::Task {
        task: TaskId(id),
        status,
    };
    let mut d = syncing::<16, 4>();
    for seq in 1..=3 {
        feed(&mut d, &task(seq));
    }
    drain(&mut d);
    // Behind two other tasks' `Received`s, then the back one.
    d.task_status(TaskId(101), done, T0).unwrap();
    d.task_status(TaskId(103), done, T0).unwrap();
    let want = [
        (1, report(101, done)),
        (2, report(102, received)),
        (3, report(103, done)),
    ];
    assert_eq!(bodies(&d), want);
    // Not past a final status: a report of its own.
    d.task_status(TaskId(102), done, T0).unwrap();
    assert_eq!(
        bodies(&d)[1..],
        [
            (2, report(102, received)),
            (3, report(103, done)),
            (4, report(102, done))
        ]
    );
    // Not past a compliance event.
    feed(&mut d, &task(4));
    drain(&mut d);
    d.raise_compliance(ComplianceEvent::ProfileChanged, T0)
        .unwrap();
    d.task_status(TaskId(104), done, T0).unwrap();
    let all = bodies(&d);
    assert_eq!(all.len(), 7);
    assert_eq!(all[4], (5, report(104, received)));
    assert_eq!(all[6], (7, report(104, done)));
    // Not in place of a `Received` that went out.
    let mut d = syncing::<16, 4>();
    feed(&mut d, &task(1));
    drain(&mut d);
    let mut buf = [0u8; 600];
    while d.poll_transmit(&mut buf).unwrap().is_some() {}
    d.task_status(TaskId(101), done, T0).unwrap();
    let want = [(1, report(101, received)), (2, report(101, done))];
    assert_eq!(bodies(&d), want);
}

/// `handle_timeout` on servers and phones skips its work (`run_timers`)
/// while `poll_timeout` is not due. Sound only if that work changes nothing
/// before the deadline `poll_timeout` gives: checked on engines along random
/// runs (idle with or without a sync wanted, connecting, in the handshake,
/// in a session waiting for the server or lingering with a task running,
/// after failures and their backoff, with a task's retry hint), at times
/// short of that deadline, or at any time when it gives none.
#[test]
fn nothing_is_due_before_poll_timeout() {
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut buf = [0u8; 600];
    let (mut checked, mut lingering, mut hinted) = (0u32, 0u32, 0u32);
    for _ in 0..300 {
        let mut now = T0;
        let mut d = Device::<6, 2>::new(cfg(), now);
        for _ in 0..40 {
            let r = crate::xorshift(&mut rng);
            let arg = (r >> 8) as u32;
            // The handshake goes on by itself, mostly; the session's
            // messages come only in the session.
            let msg = match (d.link, r % 8) {
                (Link::Connecting, 0) => {
                    d.connect_failed(now);
                    None
                }
                (Link::Connecting, _) => {
                    d.connected(now);
                    None
                }
                (Link::AwaitChallenge, _) => Some(Down::Challenge {
                    version: PROTOCOL_VERSION,
                    attempt: d.attempt,
                    nonce: [3; 16],
                }),
                (Link::AwaitWelcome, _) => Some(Down::Welcome {
                    ack: d.next_report_seq.wrapping_sub(1),
                    periodic_s: arg % 5_000,
                    want_token: false,
                }),
                (Link::Syncing, 0 | 1) => Some(task(d.last_task_seq.wrapping_add(1))),
                (Link::Syncing, 2) => Some(Down::SyncEnd),
                (Link::Syncing, 3) => Some(Down::Ack {
                    seq: d.next_report_seq.wrapping_sub(1),
                }),
                (_, 4) => {
                    let running = d.running_tasks().next();
                    if let Some(t) = running {
                        let status = match arg % 2 {
                            0 => TaskStatus::Deferred {
                                retry_after_s: Some(arg % 600),
                            },
                            _ => TaskStatus::Succeeded { result: None },
                        };
                        let _ = d.task_status(t.id, status, now);
                    }
                    None
                }
                (_, 5) => {
                    d.manual_sync(now);
                    None
                }
                _ => {
                    let step = if arg.is_multiple_of(2) {
                        20_000
                    } else {
                        4_000_000
                    };
                    now = now + Duration::from_millis(u64::from(arg % step));
                    d.handle_timeout(now);
                    None
                }
            };
            drain(&mut d);
            while d.poll_transmit(&mut buf).ok().flatten().is_some() {}
            if let Some(msg) = msg {
                feed_at(&mut d, &msg, now);
                drain(&mut d);
            }
            lingering += u32::from(d.link == Link::Syncing && !d.waiting_for_server());
            hinted += u32::from(d.hint_at.is_some());
            let before = std::format!("{d:?}");
            let next = d.poll_timeout();
            let early = match next {
                Some(t) => t.as_millis().checked_sub(1 + u64::from(arg % 90_000)),
                None => Some(now.as_millis().saturating_add(u64::from(arg))),
            };
            let last = next.and_then(|t| t.as_millis().checked_sub(1));
            for at in [early, last].into_iter().flatten() {
                let mut c = d.clone();
                c.run_timers(Instant::from_millis(at));
                assert_eq!(std::format!("{c:?}"), before, "work done at {at} ms");
                checked += 1;
            }
        }
    }
    assert!(checked > 10_000, "only {checked} checks");
    assert!(lingering > 200 && hinted > 200, "{lingering} {hinted}");
}

/// The last running task handed out with nothing else waiting lets the
/// next polls skip the running tasks (servers and phones); a cancel request
/// that came for it before it was handed out, or one for a task before it,
/// is still announced right after it.
#[test]
fn a_cancel_waiting_behind_the_last_task_handed_out_is_announced() {
    // The cancel came before the task was handed out.
    let mut d = syncing::<16, 4>();
    drain(&mut d);
    feed(&mut d, &task(1));
    feed(&mut d, &Down::Cancel { task: TaskId(101) });
    let want = [
        Event::Persist,
        Event::Execute(Task {
            seq: 1,
            id: TaskId(101),
            kind: TaskKind::Locate,
        }),
        Event::Cancel(TaskId(101)),
    ];
    assert_eq!(drain(&mut d), want);
    // A cancel for the first of two running tasks, the second handed out
    // after it came.
    let mut d = syncing::<16, 4>();
    drain(&mut d);
    feed(&mut d, &task(1));
    assert_eq!(drain(&mut d).len(), 2, "persist, execute");
    feed(&mut d, &task(2));
    feed(&mut d, &Down::Cancel { task: TaskId(101) });
    let events = drain(&mut d);
    assert_eq!(
        events.last(),
        Some(&Event::Cancel(TaskId(101))),
        "{events:?}"
    );
    // And one that comes after the last was handed out sets the flag again.
    feed(&mut d, &Down::Cancel { task: TaskId(102) });
    assert_eq!(drain(&mut d), [Event::Cancel(TaskId(102))]);
}
