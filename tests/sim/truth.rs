//! Ground truth, kept outside the engines: what the operator queued, what each
//! device's application executed and raised, and what the server reported.

use std::collections::{BTreeMap, HashSet};

use mdm_sync::server::{PolicyState, TaskState};
use mdm_sync::wire::{
    reason, ComplianceEvent, PolicyOutcome, TaskId, TaskKind, TaskResult, TaskStatus,
};

use super::Res;

/// A report raised on a device, in the order the device raised it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Raised {
    /// The application's final status of a task.
    Task(TaskId, TaskStatus),
    /// A compliance event.
    Compliance(ComplianceEvent),
    /// The application's outcome for a policy version.
    Policy(u32, PolicyOutcome),
    /// The engine reports a task that ran across a reboot as failed.
    Interrupted(TaskId),
}

/// A report as the server's events showed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Received {
    Task(TaskId, TaskState),
    Compliance(ComplianceEvent),
    Policy(PolicyState),
}

#[derive(Clone, Debug)]
pub(crate) struct TaskTruth {
    pub(crate) dev: usize,
    pub(crate) kind: Option<TaskKind>,
    /// The last state the server's events announced.
    pub(crate) state: TaskState,
    /// Times the application ran it (deferrals do not count).
    pub(crate) executions: u32,
    /// Times the engine handed it out (deferrals count).
    pub(crate) handed_out: u32,
    pub(crate) cancel_requested: bool,
    /// Queued with an expiry.
    pub(crate) expires: bool,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct DevTruth {
    pub(crate) raised: Vec<Raised>,
    pub(crate) received: Vec<Received>,
    pub(crate) assigned: u32,
    /// Tasks the engine answered "not now" by itself (seen on the wire), whose
    /// report the server has not yet turned into an event.
    pub(crate) busy_pending: HashSet<TaskId>,
    /// Report sequence numbers seen leaving the device.
    pub(crate) seen_reports: HashSet<u32>,
    /// Tasks whose final status from the application was seen leaving the
    /// device. A device may send it with no `Received` before it, so the
    /// server can go from Offered straight to Cancelled on a report (a
    /// `Cancelled`, or a "not now" to a cancel), not only by its own verdict.
    pub(crate) final_sent: HashSet<TaskId>,
}

#[derive(Debug)]
pub(crate) struct Truth {
    pub(crate) tasks: BTreeMap<TaskId, TaskTruth>,
    pub(crate) devs: Vec<DevTruth>,
    violation: Option<String>,
}

impl Truth {
    pub(crate) fn new(devices: usize) -> Self {
        Self {
            tasks: BTreeMap::new(),
            devs: vec![DevTruth::default(); devices],
            violation: None,
        }
    }

    fn violate(&mut self, message: String) {
        self.violation.get_or_insert(message);
    }

    pub(crate) fn first_violation(&self) -> Res {
        match &self.violation {
            Some(v) => Err(v.clone()),
            None => Ok(()),
        }
    }

    pub(crate) fn tasks_of(&self, d: usize) -> Vec<TaskId> {
        self.tasks
            .iter()
            .filter(|(_, t)| t.dev == d)
            .map(|(id, _)| *id)
            .collect()
    }

    pub(crate) fn result_for(&self, task: TaskId) -> Option<TaskResult> {
        let kind = self.tasks.get(&task).and_then(|t| t.kind)?;
        super::result_of(kind, task)
    }

    fn entry(&mut self, d: usize, task: TaskId) -> &mut TaskTruth {
        self.tasks.entry(task).or_insert(TaskTruth {
            dev: d,
            kind: None,
            state: TaskState::Queued,
            executions: 0,
            handed_out: 0,
            cancel_requested: false,
            expires: false,
        })
    }

    pub(crate) fn queued(&mut self, d: usize, task: TaskId, kind: TaskKind, expires: bool) {
        let t = self.entry(d, task);
        t.kind = Some(kind);
        t.expires = expires;
    }

    pub(crate) fn cancel_requested(&mut self, task: TaskId) {
        if let Some(t) = self.tasks.get_mut(&task) {
            t.cancel_requested = true;
        }
    }

    /// The engine of device `d` handed `task` to its application.
    pub(crate) fn executed(&mut self, d: usize, task: TaskId, runs: bool) {
        let Some(t) = self.tasks.get_mut(&task) else {
            return self.violate(format!("dev{d} executed task {}, never queued", task.0));
        };
        if t.dev != d {
            let owner = t.dev;
            return self.violate(format!("dev{d} executed task {} of dev{owner}", task.0));
        }
        t.handed_out += 1;
        if t.state.is_final() {
            let state = t.state;
            return self.violate(format!(
                "dev{d} executed task {} after the server reported it {state:?}",
                task.0
            ));
        }
        if runs {
            t.executions += 1;
            if t.executions > 1 {
                let n = t.executions;
                self.violate(format!("dev{d} executed task {} {n} times", task.0));
            }
        }
    }

    pub(crate) fn raised(&mut self, d: usize, r: Raised) {
        self.devs[d].raised.push(r);
    }

    /// A report frame left device `d` (seen before any fault touches it).
    pub(crate) fn report_sent(&mut self, d: usize, seq: u32, task: TaskId, status: TaskStatus) {
        let dev = &mut self.devs[d];
        if !dev.seen_reports.insert(seq) {
            return;
        }
        if status
            == (TaskStatus::Deferred {
                retry_after_s: None,
            })
        {
            // The application always gives a hint, so this is the engine's own.
            dev.busy_pending.insert(task);
        } else if status != TaskStatus::Received {
            dev.final_sent.insert(task);
        }
    }

    /// Device `d` came back from a snapshot holding its first `kept` raised
    /// reports, with `running` tasks that the engine now reports as failed.
    pub(crate) fn rebooted(&mut self, d: usize, kept: usize, running: &[TaskId]) {
        let dev = &mut self.devs[d];
        if dev.received.len() > kept.min(dev.raised.len()) {
            let lost = dev.raised.get(kept..).unwrap_or(&[]).to_vec();
            self.violate(format!(
                "dev{d} lost reports in a reboot that the server already had: {lost:?}"
            ));
            return;
        }
        dev.raised.truncate(kept);
        dev.raised
            .extend(running.iter().map(|t| Raised::Interrupted(*t)));
    }

    pub(crate) fn task_changed(&mut self, d: usize, task: TaskId, state: TaskState, _op: usize) {
        let t = self.entry(d, task);
        let prev = t.state;
        if t.dev != d {
            let owner = t.dev;
            return self.violate(format!("task {} of dev{owner} changed for dev{d}", task.0));
        }
        if prev.is_final() && prev != state {
            return self.violate(format!(
                "task {}: {prev:?} -> {state:?} after final",
                task.0
            ));
        }
        t.state = state;
        let on_device =
            |s: TaskState| matches!(s, TaskState::Delivered | TaskState::InProgress { .. });
        let dev = &mut self.devs[d];
        // A state a device's final status leads to takes that report off the
        // set, so that a later verdict of the server is not taken for it.
        let final_report = matches!(
            state,
            TaskState::Succeeded { .. }
                | TaskState::Failed { .. }
                | TaskState::Deferred { .. }
                | TaskState::Cancelled
                | TaskState::Superseded { .. }
                | TaskState::Expired
        ) && dev.final_sent.remove(&task);
        let reported = match state {
            TaskState::Deferred {
                retry_after_s: None,
            }
            | TaskState::Cancelled
                if dev.busy_pending.remove(&task) =>
            {
                false
            }
            // The server's own verdict on a device that lost its state.
            TaskState::Failed { reason } if reason == reason::DEVICE_STATE_LOST => false,
            TaskState::Succeeded { .. } | TaskState::Failed { .. } | TaskState::Deferred { .. } => {
                true
            }
            TaskState::Cancelled => on_device(prev) || (prev == TaskState::Offered && final_report),
            // A "not now" for a task a newer one with its supersede key
            // replaces (PROTOCOL.md 10.1).
            TaskState::Superseded { .. } => final_report,
            // A "not now" for a task whose expiry passed on the device.
            TaskState::Expired => final_report,
            _ => false,
        };
        if reported {
            dev.received.push(Received::Task(task, state));
        }
    }

    pub(crate) fn received(&mut self, d: usize, r: Received) {
        self.devs[d].received.push(r);
    }

    pub(crate) fn policy_received(&mut self, d: usize, state: PolicyState) {
        self.devs[d].received.push(Received::Policy(state));
    }

    /// After settling: every task is final and ran as often as its end says.
    pub(crate) fn check_executions(&self) -> Res {
        for (id, t) in &self.tasks {
            let ok = match t.state {
                TaskState::Succeeded { .. } => t.executions == 1,
                TaskState::Failed { reason }
                    if reason == reason::INTERRUPTED_BY_REBOOT
                        || reason == reason::DEVICE_STATE_LOST =>
                {
                    t.executions <= 1
                }
                TaskState::Failed { .. } => t.executions == 1,
                TaskState::Cancelled => t.executions <= 1,
                TaskState::Expired | TaskState::Superseded { .. } | TaskState::Dropped => {
                    t.executions == 0
                }
                _ => false,
            };
            if !ok {
                return Err(format!(
                    "task {} of dev{} ended {:?} after {} executions",
                    id.0, t.dev, t.state, t.executions
                ));
            }
        }
        Ok(())
    }

    /// After settling: the server received every raised report exactly once
    /// and in order (the tasks failed by one reboot in any order among
    /// themselves).
    pub(crate) fn check_reports(&self) -> Res {
        for (d, dev) in self.devs.iter().enumerate() {
            let fail = |i: usize, why: &str| {
                Err(format!(
                    "dev{d}: report #{i} {why}\n  raised:   {:?}\n  received: {:?}",
                    dev.raised, dev.received
                ))
            };
            let (mut i, mut j) = (0, 0);
            while i < dev.raised.len() {
                if let Raised::Interrupted(_) = dev.raised[i] {
                    let end = dev.raised[i..]
                        .iter()
                        .position(|r| !matches!(r, Raised::Interrupted(_)))
                        .map_or(dev.raised.len(), |k| i + k);
                    let mut want: Vec<TaskId> = dev.raised[i..end]
                        .iter()
                        .filter_map(|r| match r {
                            Raised::Interrupted(t) => Some(*t),
                            _ => None,
                        })
                        .collect();
                    let Some(got) = dev.received.get(j..j + want.len()) else {
                        return fail(i, "(interrupted tasks) never arrived");
                    };
                    let mut got: Vec<TaskId> = got
                        .iter()
                        .filter_map(|r| match r {
                            Received::Task(t, s) if *s == interrupted_state() => Some(*t),
                            _ => None,
                        })
                        .collect();
                    want.sort();
                    got.sort();
                    if want != got {
                        return fail(i, "(interrupted tasks) does not match");
                    }
                    j += want.len();
                    i = end;
                    continue;
                }
                let Some(got) = dev.received.get(j) else {
                    return fail(i, "never arrived");
                };
                if !self.matches(&dev.raised[i], got, dev.assigned) {
                    return fail(
                        i,
                        "arrived as something else (lost, duplicated or reordered)",
                    );
                }
                i += 1;
                j += 1;
            }
            if j != dev.received.len() {
                return fail(j, "was received but never raised");
            }
        }
        Ok(())
    }

    fn matches(&self, raised: &Raised, got: &Received, assigned: u32) -> bool {
        match (raised, got) {
            (Raised::Compliance(a), Received::Compliance(b)) => a == b,
            // A report on a version older than the one assigned by then
            // leaves the device pending on the console.
            (Raised::Policy(v, outcome), Received::Policy(state)) => {
                *state == PolicyState::from_report(*v, outcome)
                    || (*state == PolicyState::Pending && *v < assigned)
            }
            (Raised::Task(a, status), Received::Task(b, state)) if a == b => {
                let cancel = self.tasks.get(a).is_some_and(|t| t.cancel_requested);
                match (*status, *state) {
                    (TaskStatus::Succeeded { result: r }, TaskState::Succeeded { result: s }) => {
                        r == s
                    }
                    (TaskStatus::Failed { reason: r }, TaskState::Failed { reason: s }) => r == s,
                    (TaskStatus::Cancelled, TaskState::Cancelled) => true,
                    (TaskStatus::Deferred { .. }, TaskState::Cancelled) => cancel,
                    (TaskStatus::Deferred { .. }, TaskState::Expired) => {
                        self.tasks.get(a).is_some_and(|t| t.expires)
                    }
                    // Replaced by a newer task of the same device.
                    (TaskStatus::Deferred { .. }, TaskState::Superseded { by }) => {
                        let dev = self.tasks.get(a).map(|t| t.dev);
                        by.0 > a.0 && self.tasks.get(&by).map(|t| t.dev) == dev
                    }
                    (
                        TaskStatus::Deferred { retry_after_s: r },
                        TaskState::Deferred { retry_after_s: s },
                    ) => r == s,
                    _ => false,
                }
            }
            _ => false,
        }
    }
}

fn interrupted_state() -> TaskState {
    TaskState::Failed {
        reason: reason::INTERRUPTED_BY_REBOOT,
    }
}

/// The policy version a console policy state is about.
pub(crate) fn policy_version(state: &PolicyState) -> Option<u32> {
    match state {
        PolicyState::Applied { version }
        | PolicyState::PartiallyApplied { version, .. }
        | PolicyState::Rejected { version, .. } => Some(*version),
        PolicyState::Pending => None,
    }
}
