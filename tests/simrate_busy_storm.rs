//! The simulator's rate invariants (`tests/sim/rate.rs`) against the sync
//! storm of `tests/breaker6_busy_refusal_storm.rs`: a device whose task slots
//! all run, with more offers waiting than its outbox has room for, used to
//! sync again at the end of every session (about every 45 s, its `linger`)
//! for as long as the tasks ran. The simulator checked only delivery then,
//! and every one of those syncs delivered correctly, so it passed.
//!
//! The scenarios below run the simulator on that situation and must pass
//! (with e4cfa9d's fix the device waits for a task to finish); with the fix
//! cut out of `Device::on_task` (`refused_resync = true` on every offer
//! left) both fail with "sync storm". The checker's own tests feed it event
//! sequences whose verdict follows from the documented timers alone.

mod sim;

use sim::rate::{SyncRate, Why, CREDIT_CAP, DEBT_MAX, FAST_RETRIES};
use sim::{Op, Schedule, Style};

const MIN: u64 = 60_000;
const HOUR: u64 = 60 * MIN;
const PERIODIC: u64 = 3 * HOUR;
const BACKOFF_MIN: u64 = 5_000;

/// One device: `held` tasks that run until healing, `waiting` more queued
/// while they run, then two hours pass.
fn busy_device(held: usize, waiting: usize) -> Schedule {
    let mut ops = vec![Op::App {
        dev: 0,
        style: Style::Hold,
    }];
    ops.extend((0..held).map(|_| Op::lock(0)));
    ops.push(Op::Advance { ms: 60_000 });
    ops.push(Op::App {
        dev: 0,
        style: Style::Succeed,
    });
    ops.extend((0..waiting).map(|_| Op::lock(0)));
    ops.push(Op::Advance {
        ms: 2 * HOUR as u32,
    });
    Schedule {
        devices: 1,
        seed: 0,
        ops,
    }
}

#[test]
fn a_full_default_device_passes_the_rate_invariants() {
    // 4 running fill INFLIGHT; 12 deferrals fill the outbox; one is left.
    if let Err(e) = sim::check::<16, 4>(&busy_device(4, 13)) {
        panic!("{e}");
    }
}

#[test]
fn a_full_tight_device_passes_the_rate_invariants() {
    // Outbox 4, 2 slots: 2 running, 2 deferrals, one left.
    if let Err(e) = sim::check::<4, 2>(&busy_device(2, 3)) {
        panic!("{e}");
    }
}

fn started(r: &mut SyncRate, t: u64) -> Result<(), String> {
    r.sync_started(t, t, PERIODIC)
}

/// The storm as breaker6 measured it: a push, then a sync every 45 s with no
/// trigger. The checker gives up after the credits it may carry and the
/// slack, long before 2 h.
#[test]
fn a_sync_every_45_s_with_no_trigger_is_a_storm() {
    let mut r = SyncRate::new(0, 0, PERIODIC, BACKOFF_MIN);
    started(&mut r, 0).unwrap();
    r.credit(MIN, Why::Push, 1);
    let allowed = (CREDIT_CAP + DEBT_MAX + 1) as u64;
    let first_bad = (1..=161u64)
        .position(|k| started(&mut r, MIN + k * 45_000).is_err())
        .map(|k| k as u64 + 1);
    // The boot and the push pay for one sync each: with nothing left after
    // the boot's, the push's sync, then `DEBT_MAX` unpaid, the next fails.
    assert_eq!(first_bad, Some(2 + DEBT_MAX as u64));
    assert!(first_bad.unwrap() <= allowed);
}

/// A device that syncs on its periodic timer only, for two weeks, and on
/// each push it gets, passes; a periodic timer restarted by the clock going
/// back does too.
#[test]
fn periodic_and_pushed_syncs_pass() {
    let mut r = SyncRate::new(0, 0, PERIODIC, BACKOFF_MIN);
    started(&mut r, 0).unwrap();
    let mut t = 0;
    for k in 0..(14 * 24 / 3) {
        t += PERIODIC;
        started(&mut r, t).unwrap_or_else(|e| panic!("periodic sync {k}: {e}"));
        if k % 5 == 0 {
            r.credit(t + MIN, Why::Push, 1);
            started(&mut r, t + MIN).unwrap();
        }
    }
    // The clock goes back 10 h: the engine fires an interval later on the
    // clock as it now reads, and again an interval after that.
    let now = t - 10 * HOUR;
    r.clock_back(now, PERIODIC);
    for k in 1..=4 {
        r.sync_started(t + k * PERIODIC, now + k * PERIODIC, PERIODIC)
            .unwrap_or_else(|e| panic!("periodic sync {k} after the clock went back: {e}"));
    }
}

/// Retries after failures: at the backoff pass; quicker than half of
/// `backoff_min`, over and over with no trigger, fail.
#[test]
fn retries_quicker_than_the_backoff_fail() {
    let mut r = SyncRate::new(0, 0, PERIODIC, BACKOFF_MIN);
    let mut t = 0;
    for _ in 0..50 {
        started(&mut r, t).unwrap();
        r.failed(t, t);
        t += BACKOFF_MIN / 2;
    }
    let mut r = SyncRate::new(0, 0, PERIODIC, BACKOFF_MIN);
    let mut t = 0;
    let mut outcome = Ok(());
    let mut n = 0;
    while outcome.is_ok() && n < 50 {
        outcome = started(&mut r, t);
        r.failed(t, t);
        t += 1_000;
        n += 1;
    }
    // The first sync follows no failure; then FAST_RETRIES pass.
    assert!(outcome.is_err());
    assert_eq!(n, 2 + FAST_RETRIES as usize);
    // A trigger between quick retries (a push brings the attempt forward)
    // makes each of them legitimate.
    let mut r = SyncRate::new(0, 0, PERIODIC, BACKOFF_MIN);
    for k in 0..50u64 {
        let t = k * 1_000;
        r.credit(t, Why::Push, 1);
        started(&mut r, t).unwrap();
        r.failed(t, t);
    }
}
