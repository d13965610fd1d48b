//! Check-in deadlines and overdue reports under enrollment churn, after the
//! per-device push state's five `bool`s became one flags byte (and the
//! state took the device's kept secret). Random schedules of a small fleet:
//! handshakes (each a check-in, the connection closed right after), time
//! running by steps around the check-in deadline, retirements (also while
//! the device's check is queued), enrollments again (of retired and of
//! enrolled ids) and engine restarts over the kept store with `recover`.
//!
//! A model holds each device's deadline: set by a check-in to its time plus
//! `periodic_interval` and `overdue_slack`; kept by re-enrollment (the
//! stored last sync stays); dropped by retirement (a retired id enrolled
//! again has no deadline until it checks in). After every
//! `handle_timeout`, the engine's overdue devices must be exactly the
//! model's devices past their deadline; each device is reported `Overdue`
//! once per missed deadline (once more after a restart) and `Back` when it
//! checks in after that.

mod common;

use std::collections::BTreeSet;

use common::{raw_handshake_gen, Rng};
use mdm_sync::server::{FleetStore, MemoryStore, Server, ServerConfig, ServerEvent};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::DeviceId;

const DEVICES: u64 = 4;

#[derive(Clone, Copy, Debug, Default)]
struct Model {
    enrolled: bool,
    /// The check-in promised, if any.
    deadline: Option<Instant>,
    /// Reported overdue (by this engine) and not back since.
    reported: bool,
}

fn new_server(store: MemoryStore) -> Server<MemoryStore> {
    Server::new(ServerConfig::default(), store, [4; 32], [5; 32])
}

/// The events since the last call: (overdue, back) per device.
fn drain(s: &mut Server<MemoryStore>) -> Vec<(u64, bool)> {
    let mut out = Vec::new();
    while let Some(e) = s.poll_event() {
        match e {
            ServerEvent::Overdue { device } => out.push((device.0, true)),
            ServerEvent::Back { device } => out.push((device.0, false)),
            _ => {}
        }
    }
    out
}

fn run(seed: u64, tally: &mut [u32; 2]) {
    let mut rng = Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1);
    let mut s = new_server(MemoryStore::new());
    let wait = s.config().periodic_interval + s.config().overdue_slack;
    let mut now = Instant::from_millis(10_000);
    let mut model = [Model::default(); DEVICES as usize];
    let mut trace: Vec<String> = Vec::new();
    for (i, m) in model.iter_mut().enumerate() {
        s.enroll(DeviceId(i as u64), now).unwrap();
        m.enrolled = true;
    }
    for _ in 0..80 {
        let d = rng.below(DEVICES) as usize;
        let id = DeviceId(d as u64);
        let mut events = Vec::new();
        match rng.below(10) {
            0..=2 if model[d].enrolled => {
                let generation = s.store().device_generation(id).unwrap().unwrap();
                let secret = s.device_secret(id).unwrap();
                let (conn, _, answer) = raw_handshake_gen(&mut s, id, generation, &secret, now);
                assert!(answer.is_ok(), "seed {seed}: {answer:?}");
                s.connection_closed(conn, now);
                events = drain(&mut s);
                let back = model[d].reported;
                model[d].deadline = Some(now + wait);
                model[d].reported = false;
                trace.push(format!("{now:?}: sync {d}"));
                let want: Vec<_> = back.then_some((d as u64, false)).into_iter().collect();
                tally[1] += u32::from(back);
                assert_eq!(events, want, "seed {seed}\n{}", trace.join("\n"));
                continue;
            }
            3 if model[d].enrolled => {
                s.retire(id, now).unwrap();
                model[d] = Model::default();
                trace.push(format!("{now:?}: retire {d}"));
            }
            4 => {
                s.enroll(id, now).unwrap();
                // Re-enrollment keeps the promise; a retired id has none.
                model[d].enrolled = true;
                trace.push(format!("{now:?}: enroll {d}"));
            }
            5 => {
                let store = core::mem::replace(&mut s, new_server(MemoryStore::new()));
                s = new_server(store.into_store());
                s.recover(now).unwrap();
                for m in &mut model {
                    m.reported = false;
                }
                trace.push(format!("{now:?}: restart"));
            }
            _ => {
                // Steps that land before, on and after deadlines.
                let step = match rng.below(4) {
                    0 => Duration::from_millis(rng.below(2_000)),
                    1 => Duration::from_millis(wait.as_millis() / 2),
                    2 => Duration::from_millis(wait.as_millis() - rng.below(3)),
                    _ => wait + wait,
                };
                now = now + step;
                trace.push(format!("{now:?}: time"));
            }
        }
        s.handle_timeout(now).unwrap();
        events.extend(drain(&mut s));
        let mut want = Vec::new();
        for (i, m) in model.iter_mut().enumerate() {
            if m.enrolled && !m.reported && m.deadline.is_some_and(|at| now >= at) {
                m.reported = true;
                want.push((i as u64, true));
                tally[0] += 1;
            }
        }
        events.sort_unstable();
        assert_eq!(events, want, "seed {seed}\n{}", trace.join("\n"));
        let overdue: BTreeSet<u64> = s.overdue_devices().iter().map(|d| d.0).collect();
        let expected: BTreeSet<u64> = (0..DEVICES)
            .filter(|&i| model[i as usize].reported)
            .collect();
        assert_eq!(overdue, expected, "seed {seed}\n{}", trace.join("\n"));
        assert_eq!(
            s.fleet_view().unwrap().overdue,
            expected.len(),
            "seed {seed}"
        );
        for i in 0..DEVICES {
            assert_eq!(
                s.is_overdue(DeviceId(i)),
                model[i as usize].reported,
                "seed {seed}"
            );
            if let Ok(view) = s.device_view(DeviceId(i)) {
                assert_eq!(view.overdue, model[i as usize].reported, "seed {seed}");
            }
        }
    }
}

#[test]
fn overdue_reports_follow_the_model_under_enrollment_churn() {
    // Overdue reports, returns.
    let mut tally = [0; 2];
    for seed in 0..2_000 {
        run(seed, &mut tally);
    }
    assert!(tally.iter().all(|&n| n > 1_000), "{tally:?}");
}

/// A device retired while its check-in check is queued keeps that check
/// (`PushStates::forget` leaves the state marked armed) and, enrolled again
/// and synced, is watched by it, not by one more: a thousand such rounds
/// within one period leave the engine's queued timers where one round
/// left them.
#[test]
fn retire_enroll_sync_rounds_queue_one_check() {
    let mut s = new_server(MemoryStore::new());
    let mut now = Instant::from_millis(10_000);
    let id = DeviceId(3);
    let round = |s: &mut Server<MemoryStore>, now: &mut Instant| {
        let secret = s.enroll(id, *now).unwrap();
        let generation = s.store().device_generation(id).unwrap().unwrap();
        let (conn, _, answer) = raw_handshake_gen(s, id, generation, &secret, *now);
        assert!(answer.is_ok(), "{answer:?}");
        s.connection_closed(conn, *now);
        s.retire(id, *now).unwrap();
        // Past the handshake's deadline (its timer swept), far before the
        // check-in's.
        *now = *now + s.config().handshake_timeout + Duration::from_secs(1);
        s.handle_timeout(*now).unwrap();
        while s.poll_event().is_some() {}
    };
    round(&mut s, &mut now);
    let after_one = s.timer_count();
    for _ in 0..1_000 {
        round(&mut s, &mut now);
    }
    assert!(
        s.timer_count() <= after_one + 2,
        "{} timers queued after a thousand rounds, {after_one} after one",
        s.timer_count()
    );
}
