//! Attacks on this round's speed changes (breaker16): the device's
//! `handle_bytes` stopping after a whole frame read in place, the device's
//! `poll_event` flags, and the server's `offer_new` for a device in
//! session. Engine level, in memory, virtual clock.

mod common;

use common::{Behaviour, Pair, Rng};
use mdm_sync::server::TaskState;
use mdm_sync::time::Duration;
use mdm_sync::wire::{Setting, TaskKind, TaskStatus};

/// How the server's bytes reach the device in one round.
#[derive(Clone, Copy, Debug)]
enum Chunking {
    /// As `poll_transmit_for` hands them out (up to 1 KiB each, so several
    /// frames to a piece when the server queued several).
    PerFrame,
    /// Everything the server has for the device in one call (several whole
    /// frames in one input: the in-place path reads them one after another).
    Coalesced,
    /// The round's bytes cut at random points: a frame then part of the
    /// next in one call, the rest in the next call.
    Random(u64),
    /// As `Random`, with zero bytes (no magic) after some calls' bytes:
    /// garbage after a whole frame read in place goes into the buffer.
    RandomGarbage(u64),
}

/// What a run ends with, for comparing chunkings.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    executed: Vec<u64>,
    cancels: Vec<u64>,
    states: Vec<TaskState>,
    policies: Vec<u32>,
    syncs_done: u32,
    failed: usize,
}

/// One round like the harness's `step`, for device 0 only, but the server's
/// bytes for the device are gathered over the round and handed over in
/// the way `how` says.
fn round(p: &mut Pair, how: Chunking, rng: &mut Rng) -> bool {
    let now = p.now;
    let mut moved = false;
    if p.server.poll_timeout().is_some_and(|t| t <= now) {
        p.server.handle_timeout(now).unwrap();
    }
    moved |= p.device_events(0);
    let d = &mut p.devices[0];
    let mut buf = [0u8; 1024];
    if let Some(conn) = d.conn {
        while let Some(n) = d.dev.poll_transmit(&mut buf).unwrap() {
            moved = true;
            let _ = p.server.handle_bytes(conn, &buf[..n], now);
        }
        let mut frames: Vec<Vec<u8>> = Vec::new();
        while let Some(n) = p.server.poll_transmit_for(conn, &mut buf) {
            moved = true;
            frames.push(buf[..n].to_vec());
        }
        let all: Vec<u8> = frames.concat();
        let pieces: Vec<Vec<u8>> = match how {
            Chunking::PerFrame => frames,
            Chunking::Coalesced => vec![all],
            Chunking::Random(_) | Chunking::RandomGarbage(_) => {
                let mut out = Vec::new();
                let mut rest = &all[..];
                while !rest.is_empty() {
                    let k = 1 + rng.below(rest.len() as u64) as usize;
                    let mut piece = rest[..k].to_vec();
                    rest = &rest[k..];
                    // Garbage only between whole frames' bytes would need
                    // frame bounds; after a cut inside a frame it would
                    // break that frame. So only after the round's last byte.
                    if rest.is_empty()
                        && matches!(how, Chunking::RandomGarbage(_))
                        && rng.below(2) == 0
                    {
                        piece.extend_from_slice(&[0; 3]);
                    }
                    out.push(piece);
                }
                out
            }
        };
        let random = matches!(how, Chunking::Random(_) | Chunking::RandomGarbage(_));
        for piece in pieces {
            let _ = d.dev.handle_bytes(&piece, now);
            // Between pieces, the application takes a few events (0 to 2):
            // `poll_event`'s flags (ed5f817, e400b4f) meet news arriving
            // while earlier news is half taken.
            for _ in 0..if random { rng.below(3) } else { 0 } {
                if let Some(ev) = d.dev.poll_event() {
                    d.on_event(ev, &mut p.server, now);
                }
            }
        }
    }
    while let Some(ev) = p.server.poll_event() {
        moved = true;
        p.events.push(ev);
    }
    moved
}

fn settle(p: &mut Pair, how: Chunking, rng: &mut Rng) {
    for _ in 0..10_000 {
        if !round(p, how, rng) {
            return;
        }
    }
    panic!("no quiescence");
}

/// A scripted life: work queued before the session, work queued and a
/// cancel and a policy sent into it, a held task finished later, a second
/// sync by push.
fn run(how: Chunking) -> Outcome {
    let seed = match how {
        Chunking::Random(s) | Chunking::RandomGarbage(s) => s,
        _ => 0,
    };
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut p = Pair::new(1);
    let id = p.id(0);
    p.devices[0]
        .script
        .extend([Behaviour::Hold, Behaviour::Hold]);
    let mut tasks = vec![
        p.queue(0, TaskKind::Lock),
        p.queue(0, TaskKind::Scan),
        p.queue(0, TaskKind::Lock),
    ];
    // The boot sync opens; stop once the device runs a task (it holds it,
    // so the session lingers).
    for _ in 0..50 {
        round(&mut p, how, &mut rng);
        if !p.devices[0].executed.is_empty() {
            break;
        }
    }
    assert_eq!(p.server.session_count(), 1);
    // Into the open session: new tasks (offer_new), a cancel of a held
    // task, a policy.
    tasks.push(p.queue(0, TaskKind::Scan));
    tasks.push(p.queue(0, TaskKind::Lock));
    let _ = p.server.cancel_task(tasks[1], p.now);
    p.server
        .assign_policy(id, &[Setting { key: 1, value: 2 }], p.now)
        .unwrap();
    settle(&mut p, how, &mut rng);
    // The held task still running is finished later, by a new sync.
    p.now = p.now + Duration::from_secs(5);
    let held: Vec<_> = p.devices[0].held.iter().map(|t| t.id).collect();
    for t in held {
        let status = TaskStatus::Failed { reason: 7 };
        p.finish(0, t, status);
    }
    for _ in 0..20 {
        settle(&mut p, how, &mut rng);
        match p.next_deadline() {
            Some(t) if t <= p.now + Duration::from_secs(600) => p.now = t.max(p.now),
            _ => break,
        }
    }
    let d = &p.devices[0];
    Outcome {
        executed: d.executed.iter().map(|t| t.id.0).collect(),
        cancels: d.cancels.iter().map(|t| t.0).collect(),
        states: tasks.iter().map(|t| p.state(0, *t)).collect(),
        policies: d.applied_policies.clone(),
        syncs_done: d.syncs_done,
        failed: d.failed.len(),
    }
}

/// However the server's frames are cut or joined on their way, the device
/// must do the same: every task run once, the cancel announced, the policy
/// applied, every task final, no failed session. Checks the in-place read's
/// early stop (fcbbfd4) against frames joined, split and followed by
/// garbage; the per-frame run is the reference, and is itself checked
/// against what the script must give.
#[test]
fn any_cutting_of_the_servers_bytes_gives_the_same_run() {
    let reference = run(Chunking::PerFrame);
    // Independent of the engine: five tasks, each run once; the cancelled
    // one was held, so its cancel is announced; the policy applied once.
    let mut ran = reference.executed.clone();
    ran.sort_unstable();
    ran.dedup();
    assert_eq!(ran.len(), 5, "{reference:?}");
    assert_eq!(reference.executed.len(), 5, "{reference:?}");
    assert_eq!(reference.cancels.len(), 1, "{reference:?}");
    assert_eq!(reference.policies.len(), 1, "{reference:?}");
    assert_eq!(reference.failed, 0, "{reference:?}");
    assert!(
        reference.states.iter().all(|s| s.is_final()),
        "{reference:?}"
    );
    assert_eq!(run(Chunking::Coalesced), reference);
    for seed in 0..300 {
        assert_eq!(run(Chunking::Random(seed)), reference, "seed {seed}");
    }
    for seed in 0..300 {
        let got = run(Chunking::RandomGarbage(seed));
        // Garbage may cost frame errors, never the work.
        assert_eq!(got.executed, reference.executed, "seed {seed}");
        assert_eq!(got.states, reference.states, "seed {seed}");
        assert_eq!(got.failed, 0, "seed {seed}");
    }
}

use mdm_sync::server::{ServerError, SupersedeKey, TaskOptions};

/// The operator's "lock" click: a Lock task with supersede key "lock".
fn click_lock(p: &mut Pair, id: mdm_sync::wire::DeviceId) -> mdm_sync::wire::TaskId {
    let opts = TaskOptions {
        supersede: Some(SupersedeKey::from_name("lock")),
        ..TaskOptions::default()
    };
    p.server
        .enqueue_task(id, TaskKind::Lock, opts, p.now)
        .unwrap()
}

/// A pair whose device is in session, holding one task (so the session
/// lingers) and having given back a second one with key "lock" ("not
/// now"). Returns the held and the deferred task.
fn in_session_with_a_deferred_lock(
    p: &mut Pair,
) -> (mdm_sync::wire::TaskId, mdm_sync::wire::TaskId) {
    let id = p.id(0);
    p.devices[0]
        .script
        .extend([Behaviour::Hold, Behaviour::Defer(Some(3600))]);
    let held = p.queue(0, TaskKind::Scan);
    let deferred = click_lock(p, id);
    p.tick();
    assert_eq!(p.server.session_count(), 1, "the held task keeps it open");
    assert!(
        matches!(p.state(0, deferred), TaskState::Deferred { .. }),
        "{:?}",
        p.state(0, deferred)
    );
    (held, deferred)
}

/// Supersede path of a task queued for a device in session (`offer_new`
/// without `offer_one`'s checks, ae119f3): the deferred "lock" is replaced,
/// the new one offered in the open session at once and run once.
#[test]
fn a_click_in_session_supersedes_the_deferred_one_and_runs_once() {
    let mut p = Pair::new(1);
    let id = p.id(0);
    let (_held, deferred) = in_session_with_a_deferred_lock(&mut p);
    let new = click_lock(&mut p, id);
    // Offered at once in the open session (no push, no new session).
    assert_eq!(p.state(0, new), TaskState::Offered);
    p.tick();
    assert_eq!(p.state(0, deferred), TaskState::Superseded { by: new });
    assert_eq!(p.times_executed(0, new), 1);
    assert_eq!(p.times_executed(0, deferred), 1);
    assert_eq!(p.state(0, new), TaskState::Succeeded { result: None });
}

/// Retired while in session: the session ends, and a task queued right
/// after is refused (the device is unknown), never offered to the old
/// session.
#[test]
fn retired_in_session_then_enqueue_is_refused() {
    let mut p = Pair::new(1);
    let id = p.id(0);
    in_session_with_a_deferred_lock(&mut p);
    p.server.retire(id, p.now).unwrap();
    let r = p
        .server
        .enqueue_task(id, TaskKind::Lock, TaskOptions::default(), p.now);
    assert!(matches!(r, Err(ServerError::UnknownDevice)), "{r:?}");
    let before = p.devices[0].executed.len();
    p.tick();
    assert_eq!(p.devices[0].executed.len(), before);
}

/// Enrolled again while in session: the old session ends, and a task
/// queued right after is of the new enrollment: stored queued (or pushed),
/// not offered into the old session, and never run by the device that
/// still holds the old secret.
#[test]
fn re_enrolled_in_session_then_enqueue_is_not_offered_to_the_old_session() {
    let mut p = Pair::new(1);
    let id = p.id(0);
    in_session_with_a_deferred_lock(&mut p);
    let _secret = p.server.enroll(id, p.now).unwrap();
    assert_eq!(p.server.session_count(), 0);
    let t = p
        .server
        .enqueue_task(id, TaskKind::Wipe, TaskOptions::default(), p.now)
        .unwrap();
    assert!(
        matches!(p.state(0, t), TaskState::Queued | TaskState::PushSent),
        "{:?}",
        p.state(0, t)
    );
    p.run_for(Duration::from_mins(5));
    assert_eq!(p.times_executed(0, t), 0);
}

use mdm_sync::device::{Device, DeviceConfig, Event};
use mdm_sync::time::Instant;
use mdm_sync::wire::{ComplianceEvent, DeviceId, Platform};

/// A device whose server is out of reach, driven only at the instants its
/// `poll_timeout` names (as an event loop does): with a compliance event
/// waiting it must retry at least every `connect_timeout` (or
/// `response_timeout`, when the link opens and the server stays silent)
/// plus `compliance_retry`. If `handle_timeout`'s first look (b596c0f)
/// missed a deadline `run_timers` keeps, the device would sleep to the next
/// one it does name (the backoff, up to 30 min; the periodic, 3 h) and make
/// far fewer attempts. Each wake-up must also do something (an event or a
/// later deadline): a deadline named but skipped would spin.
fn offline_attempts(link_opens: bool) -> (u32, u64) {
    let cfg = DeviceConfig::new(DeviceId(7), 0, [3; 32], Platform::Android);
    let t = cfg.timers;
    let mut now = Instant::from_millis(5_000_000);
    let start = now;
    let mut dev: Device<8, 2> = Device::new(cfg, now);
    dev.raise_compliance(ComplianceEvent::ProfileChanged, now)
        .unwrap();
    let span = Duration::from_hours(2);
    let mut connects = 0;
    let mut buf = [0u8; 512];
    let mut spins = 0;
    while now < start + span {
        let mut acted = false;
        while let Some(ev) = dev.poll_event() {
            acted = true;
            match ev {
                Event::Connect => {
                    connects += 1;
                    if link_opens {
                        dev.connected(now);
                    }
                }
                Event::Persist => {
                    let _ = dev.snapshot(&mut buf);
                }
                _ => {}
            }
        }
        while let Ok(Some(_)) = dev.poll_transmit(&mut buf) {
            acted = true; // the hello, into the void
        }
        let next = dev.poll_timeout().expect("a deadline while work waits");
        if next > now {
            now = next;
            spins = 0;
        } else if !acted {
            spins += 1;
            assert!(
                spins < 3,
                "deadline {next:?} named at {now:?} but nothing done"
            );
        }
        dev.handle_timeout(now);
    }
    let cycle = if link_opens {
        t.response_timeout
    } else {
        t.connect_timeout
    } + t.compliance_retry;
    (connects, span.as_millis() / cycle.as_millis())
}

#[test]
fn compliance_retry_while_the_server_is_out_of_reach_is_kept() {
    for link_opens in [false, true] {
        let (connects, cycles) = offline_attempts(link_opens);
        assert!(
            u64::from(connects) >= cycles,
            "link_opens {link_opens}: {connects} attempts in 2 h, expected at least {cycles}"
        );
    }
}

/// A session's `Disconnect` must survive a second session end before the
/// application polls. Sequence: the link opens and the server stays
/// silent, so the session fails at its response deadline (`Disconnect`
/// and `SyncFailed` pending); the application has not polled yet when
/// it calls `handle_timeout` again, at the retry (a new attempt,
/// `Connecting`) and at that attempt's connect deadline (it fails too).
/// The second end must not wipe the first session's `Disconnect`: without
/// it the application never closes that session's transport. (Before
/// the fix `end_session` overwrote the flag with "the attempt had no
/// transport".)
#[test]
fn a_disconnect_survives_a_second_session_end_before_the_poll() {
    let cfg = DeviceConfig::new(DeviceId(9), 0, [3; 32], Platform::Android);
    let mut now = Instant::from_millis(5_000_000);
    let mut dev: Device<8, 2> = Device::new(cfg, now);
    dev.handle_timeout(now);
    let mut buf = [0u8; 512];
    let mut saw_connect = false;
    while let Some(ev) = dev.poll_event() {
        if ev == Event::Connect {
            saw_connect = true;
            dev.connected(now);
        }
    }
    assert!(saw_connect, "a new device syncs at boot");
    while let Ok(Some(_)) = dev.poll_transmit(&mut buf) {}
    // Nothing comes back: the session fails at its deadline, then (no poll
    // in between) the retry starts and its connection attempt times out.
    let mut ends = 0;
    for _ in 0..3 {
        now = dev.poll_timeout().unwrap();
        dev.handle_timeout(now);
        ends += 1;
    }
    assert_eq!(ends, 3);
    assert_eq!(dev.stats().failures, 2, "the session, then the attempt");
    let mut events = Vec::new();
    while let Some(ev) = dev.poll_event() {
        events.push(ev);
    }
    assert!(
        events.contains(&Event::Disconnect),
        "the first session's transport is never closed: {events:?}"
    );
}
