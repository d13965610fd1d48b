//! Rate invariants: how often a device may start a sync and the server may
//! push to it. The delivery checks of the simulator see nothing wrong in a
//! device that syncs every 45 s for hours (each sync is correct); these do.
//!
//! **Syncs.** A device starts a sync only for a reason (PROTOCOL.md 1, 7.2,
//! 9.2, 11.1): a push, a manual sync, a compliance event, a report the
//! application raised (a task's final status, a policy outcome), a boot, its
//! periodic timer, a task's retry hint, a `Welcome` that asked for the push
//! token, an offer it left for lack of room (the resync of 9.2, at most one
//! per task it then accepts), or a failed sync (the retry; backoff bounds
//! those). The simulator sees each of these from outside the engine and
//! grants the device a *credit* for it; each sync started spends one.
//!
//! Triggers coalesce (ten pushes while offline bring one sync), so credits
//! are capped at [`CREDIT_CAP`]: unspent credits do not pile up to pay for
//! a storm later. So the cap makes this a sliding window: over any stretch
//! of the run, syncs started <= credits granted in it + `CREDIT_CAP` (carried
//! in) + [`DEBT_MAX`] (the slack below). A storm of syncs nothing asked for
//! spends the carried credits and the slack, then fails the run, however many
//! real triggers came before it.
//!
//! The periodic timer is credited by the clock, not by watching the engine:
//! one credit per periodic interval of the device's clock. The engine fires
//! at least an interval apart on its clock (each firing and each `Welcome`
//! restart it), so in any stretch it fires at most once more than the
//! credits given, and a reboot (a fresh engine, its own phase) at most once
//! more again: a reboot is credited twice, the slack covers the first. A
//! clock that goes back moves the next credit back with it (`clock_back`);
//! one that jumps ahead earns the credits of the time skipped (generous: the
//! engine fires once).
//!
//! **Backoff.** A failure is credited (the retry), so a device that fails
//! and retries at once, over and over, would pass the count above. So after
//! a failure the next sync starts at least `backoff_min / 2` later on the
//! device's clock (11.1: each delay is at least half its full value, and
//! the compliance cap of one minute is above that), unless a trigger came
//! meanwhile (it brings the attempt forward) or the clock went back.
//! Triggers the engine raises by its own timers (the periodic timer, a retry
//! hint) are not seen when they fire, so up to [`FAST_RETRIES`] quick
//! retries in a row pass.
//!
//! **The quiet tail** (an absolute cap, from the timers alone). After the
//! network healed and everything converged, nothing but the periodic timer
//! may start a sync: no work (so no push but one the server held back
//! before, 10.2), no failures (no faults), no reports. So in the last
//! `window` of a run a device starts at most `window / periodic + 1` syncs
//! (the `+ 1`: the phase of its timer in the window), one more for that
//! push, one more for a retry hint a clock going back delayed; the server sends at most that one push, exactly an interval after
//! the one before it (`Sim::check_quiet`).
//!
//! **Pushes.** At most one per device per `push_min_interval` of the
//! server's clock (PROTOCOL.md 10.2, 11.2); work arriving in between waits
//! for the end of the interval. The server holds a push back while its clock
//! reads less than the last push plus the interval, so this holds exactly,
//! across clock jumps too.

use std::collections::VecDeque;

/// Unspent credits a device keeps at most. Enough that the credits of one
/// burst of triggers (a task's status, then its hint, then a push) are not
/// lost before the syncs they pay for start; a storm spends them in a few
/// minutes.
pub(crate) const CREDIT_CAP: i64 = 6;

/// Syncs a device may start beyond its credits: legitimate syncs whose
/// credit comes only later (the resync after an offer left for lack of room
/// is credited when the next session accepts a task, after it started) or
/// never (that next session finds the offers gone: expired or cancelled
/// meanwhile; a periodic firing out of phase with its credits, see the
/// module docs). Sweeps of seeds 0..200,000 at both capacities never
/// went below 0 credits (with the storm fix of e4cfa9d cut out, storms
/// reach -5 after about 8 minutes of syncs every 45 s): 4 leaves room for
/// rare schedules rather than a flake.
pub(crate) const DEBT_MAX: i64 = 4;

/// Syncs started within `backoff_min / 2` of a failure, in a row, with no
/// trigger seen between: the engine's own periodic timer and a retry hint
/// may each fire just after a failure (each at most once per trigger seen,
/// the periodic timer once per interval).
pub(crate) const FAST_RETRIES: u32 = 2;

/// Events kept per device for a failure message.
const RECENT: usize = 24;

/// Why a device got a credit (or spent one), for the failure message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Why {
    Boot,
    Push,
    Manual,
    Compliance,
    /// The application reported a task's final status: the report goes out,
    /// and a task that ran frees room for tasks it had deferred (a second).
    Status,
    /// A task's retry hint comes due later.
    Hint,
    Policy,
    /// A task was accepted: pays for the resync after an offer left.
    Accepted,
    WantToken,
    Failed,
    Periodic,
    /// A sync started (spends one).
    Sync,
}

impl Why {
    /// Whether the engine's trigger for it ends a backoff (PROTOCOL.md 11.1:
    /// push, manual sync, compliance event, a final status, a policy
    /// outcome; a boot starts afresh).
    fn brings_attempt_forward(self) -> bool {
        matches!(
            self,
            Why::Boot | Why::Push | Why::Manual | Why::Compliance | Why::Status | Why::Policy
        )
    }
}

/// One device's sync accounting.
#[derive(Clone, Debug)]
pub(crate) struct SyncRate {
    credits: i64,
    /// The fewest credits it ever had (for tuning: `SIM_RATE_STATS`).
    pub(crate) low: i64,
    /// Device clock (ms) at which the next periodic credit falls due.
    periodic_mark: u64,
    /// Syncs started and credits granted, over the whole run.
    syncs: u64,
    granted: u64,
    /// Half the device's `backoff_min` (ms): the shortest retry delay.
    backoff_floor: u64,
    /// Device clock (ms) at the last failure, until a trigger or a sync.
    failed_at: Option<u64>,
    /// Quick retries since the last trigger (see `FAST_RETRIES`).
    fast: u32,
    /// The most there were (for tuning: `SIM_RATE_STATS`).
    pub(crate) fast_max: u32,
    /// True times (ms) of the syncs started, for the quiet-tail check.
    starts: Vec<u64>,
    /// The last events, true time (ms) first.
    recent: VecDeque<(u64, Why, i64)>,
}

impl SyncRate {
    /// A device booting for the first time at device clock `now`.
    /// `backoff_min` is the device's (ms).
    pub(crate) fn new(t: u64, now: u64, periodic: u64, backoff_min: u64) -> Self {
        let mut r = Self {
            backoff_floor: backoff_min / 2,
            failed_at: None,
            fast: 0,
            fast_max: 0,
            credits: 0,
            low: 0,
            periodic_mark: now.saturating_add(periodic),
            syncs: 0,
            granted: 0,
            starts: Vec::new(),
            recent: VecDeque::new(),
        };
        r.credit(t, Why::Boot, 1);
        r
    }

    fn note(&mut self, t: u64, why: Why) {
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((t, why, self.credits));
    }

    /// `n` credits for `why` at true time `t`.
    pub(crate) fn credit(&mut self, t: u64, why: Why, n: i64) {
        if why.brings_attempt_forward() {
            self.failed_at = None;
            self.fast = 0;
        }
        self.credits = (self.credits + n).min(CREDIT_CAP);
        self.granted += n.unsigned_abs();
        self.note(t, why);
    }

    /// Periodic credits up to device clock `now`: one per `periodic` ms.
    fn periodic(&mut self, t: u64, now: u64, periodic: u64) {
        let periodic = periodic.max(1);
        if now >= self.periodic_mark {
            let n = (now - self.periodic_mark) / periodic + 1;
            self.periodic_mark = self
                .periodic_mark
                .saturating_add(n.saturating_mul(periodic));
            self.credit(t, Why::Periodic, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// The device's clock went back to `now` (ms). The engine restarts its
    /// periodic timer from the clock as it reads (at each firing, `Welcome`
    /// and boot), so it may fire an interval after `now`, long before the
    /// mark of the clock as it read before.
    /// A pending backoff then lasts longer, not shorter: it is forgotten.
    pub(crate) fn clock_back(&mut self, now: u64, periodic: u64) {
        self.failed_at = None;
        self.periodic_mark = self.periodic_mark.min(now.saturating_add(periodic));
    }

    /// The device asked to connect at true time `t`, device clock `now`,
    /// with periodic interval `periodic` (ms). An error when it started more
    /// syncs than its triggers justify.
    pub(crate) fn sync_started(&mut self, t: u64, now: u64, periodic: u64) -> Result<(), String> {
        if let Some(at) = self.failed_at.take() {
            if now < at.saturating_add(self.backoff_floor) {
                self.fast += 1;
                self.fast_max = self.fast_max.max(self.fast);
                if self.fast > FAST_RETRIES {
                    return Err(format!(
                        "sync started {} ms (device clock) after a failure, less than the \
                         shortest backoff {} ms, with no trigger since: {} such retries in a row; \
                         last events: {}",
                        now - at,
                        self.backoff_floor,
                        self.fast,
                        self.recent()
                    ));
                }
            }
        }
        self.periodic(t, now, periodic);
        self.credits -= 1;
        self.syncs += 1;
        self.starts.push(t);
        self.note(t, Why::Sync);
        self.low = self.low.min(self.credits);
        if self.credits >= -DEBT_MAX {
            return Ok(());
        }
        Err(format!(
            "sync storm: {} syncs started, {} justified by triggers (at most {CREDIT_CAP} \
             carried, {DEBT_MAX} more allowed); last events (true ms, why, credits after): {}",
            self.syncs,
            self.granted,
            self.recent()
        ))
    }

    /// The last events: true ms, why, credits after.
    fn recent(&self) -> String {
        let recent: Vec<String> = self
            .recent
            .iter()
            .map(|(t, why, c)| format!("{t} {why:?} ({c})"))
            .collect();
        recent.join(", ")
    }

    /// A sync failed at device clock `now` (ms): one credit, and the retry
    /// waits for the backoff.
    pub(crate) fn failed(&mut self, t: u64, now: u64) {
        self.credit(t, Why::Failed, 1);
        self.failed_at = Some(now);
    }

    /// Syncs started after true time `from`.
    pub(crate) fn syncs_after(&self, from: u64) -> usize {
        self.starts.iter().rev().take_while(|&&t| t > from).count()
    }
}
