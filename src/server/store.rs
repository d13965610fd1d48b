//! The server's durable state: the [`FleetStore`] trait and the in-memory store.
//!
//! The trait is the only server state that outlives a process. It is shaped
//! for three kinds of store: this in-memory one, an embedded database (SQLite
//! or redb: one row per device, task and policy), and a PostgreSQL shared by
//! several server nodes (the same rows; [`FleetStore::commit_report`] is one
//! transaction). Every call is synchronous and returns the store's own error,
//! which the engine passes on as [`ServerError::Store`](super::ServerError).
//!
//! The engine never acknowledges anything to a device before the store call
//! that makes it durable has returned `Ok`.

use alloc::vec::Vec;

use hashbrown::HashMap;

use super::table::{prefetch, Entry, Slot, Table};

use crate::time::{Duration, Instant};
use crate::wire::{
    ComplianceEvent, DeviceId, Platform, Policy, PolicyOutcome, SyncTrigger, TaskId, TaskKind,
    TaskResult, PUSH_TOKEN_MAX,
};

/// A device's push token, in a fixed buffer of the longest a `Hello` may
/// carry: stores hand it out and push events carry it without allocating.
pub type PushToken = heapless::String<PUSH_TOKEN_MAX>;

/// A key that makes a newer task replace an undelivered older one with the
/// same key (five clicks on "lock" for an offline device give one lock).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SupersedeKey(pub u64);

impl SupersedeKey {
    /// A key from a name such as `"lock"` (FNV-1a; stable across builds).
    pub const fn from_name(name: &str) -> Self {
        let bytes = name.as_bytes();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut i = 0;
        while i < bytes.len() {
            h ^= bytes[i] as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
            i += 1;
        }
        SupersedeKey(h)
    }
}

/// Where a task stands, as the console shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskState {
    /// Waiting for the device; no push could be sent yet.
    Queued,
    /// Waiting for the device; a push was requested.
    PushSent,
    /// Sent in a session; not yet confirmed by the device.
    Offered,
    /// The device accepted it.
    Delivered,
    /// The device reports progress.
    InProgress {
        /// Last reported percentage.
        percent: Option<u8>,
    },
    /// The device said "not now"; it is offered again on the next sync.
    Deferred {
        /// The device's hint, in seconds.
        retry_after_s: Option<u32>,
    },
    /// Final: done.
    Succeeded {
        /// The device's result.
        result: Option<TaskResult>,
    },
    /// Final: the device could not do it.
    Failed {
        /// Reason code.
        reason: u16,
    },
    /// Final: cancelled before it ran to the end.
    Cancelled,
    /// Final: expired before the device took it.
    Expired,
    /// Final: replaced by a newer task with the same supersede key.
    Superseded {
        /// The replacement.
        by: TaskId,
    },
    /// Final: the device was re-enrolled, and this task belonged to the old
    /// enrollment; or it was retired ([`Server::retire`](super::Server::retire)).
    Dropped,
}

impl TaskState {
    /// Whether the task is over.
    pub const fn is_final(&self) -> bool {
        matches!(
            self,
            TaskState::Succeeded { .. }
                | TaskState::Failed { .. }
                | TaskState::Cancelled
                | TaskState::Expired
                | TaskState::Superseded { .. }
                | TaskState::Dropped
        )
    }

    /// Whether the device may have the task (it was sent or accepted).
    pub const fn maybe_on_device(&self) -> bool {
        matches!(
            self,
            TaskState::Offered | TaskState::Delivered | TaskState::InProgress { .. }
        )
    }
}

/// One task, as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskRecord {
    /// Its id.
    pub id: TaskId,
    /// Its device.
    pub device: DeviceId,
    /// The enrollment generation it was queued for.
    pub generation: u32,
    /// What it does.
    pub kind: TaskKind,
    /// Where it stands.
    pub state: TaskState,
    /// Delivery sequence of its last offer (0: never offered).
    pub seq: u32,
    /// The operator asked to cancel it while the device may have it.
    pub cancel_requested: bool,
    /// Session in which the device deferred it (not offered again there).
    pub deferred_in: u64,
    /// Replaces undelivered tasks with the same key.
    pub supersede: Option<SupersedeKey>,
    /// Not delivered after this instant, it expires.
    pub expires_at: Option<Instant>,
    /// When it was queued.
    pub created_at: Instant,
    /// When it reached a final state.
    pub finished_at: Option<Instant>,
}

impl TaskRecord {
    /// Final, after a cancel that came too late: the device had finished.
    pub fn cancel_too_late(&self) -> bool {
        self.cancel_requested
            && matches!(
                self.state,
                TaskState::Succeeded { .. } | TaskState::Failed { .. }
            )
    }
}

/// How the device took its assigned policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyState {
    /// No report yet for the assigned version.
    Pending,
    /// The last reported version applied fully.
    Applied {
        /// That version.
        version: u32,
    },
    /// Applied except some settings.
    PartiallyApplied {
        /// That version.
        version: u32,
        /// Settings that failed, with reasons.
        failed: heapless::Vec<crate::wire::SettingFailure, { crate::wire::MAX_POLICY_FAILURES }>,
    },
    /// Rejected as a whole.
    Rejected {
        /// That version.
        version: u32,
        /// Reason code.
        reason: u16,
    },
}

impl PolicyState {
    /// The state a device's report puts it in.
    pub fn from_report(version: u32, outcome: &PolicyOutcome) -> Self {
        match outcome {
            PolicyOutcome::Applied => PolicyState::Applied { version },
            PolicyOutcome::Partial { failed } => PolicyState::PartiallyApplied {
                version,
                failed: failed.clone(),
            },
            PolicyOutcome::Rejected { reason } => PolicyState::Rejected {
                version,
                reason: *reason,
            },
        }
    }
}

/// One enrolled device, as stored. Kept small: a fleet has millions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRecord {
    /// Its id.
    pub id: DeviceId,
    /// Current enrollment generation; its secret is derived from it.
    pub generation: u32,
    /// Highest report sequence stored (and acknowledged).
    pub last_report_seq: u32,
    /// Highest task delivery sequence the device has confirmed.
    pub last_task_seq: u32,
    /// Policy version the device last reported it applied or rejected.
    pub policy_version: u32,
    /// Last completed handshake and its trigger.
    pub last_sync: Option<(Instant, SyncTrigger)>,
    /// How its assigned policy went.
    pub policy_state: PolicyState,
}

impl DeviceRecord {
    /// A freshly enrolled device.
    pub fn new(id: DeviceId, generation: u32) -> Self {
        Self {
            id,
            generation,
            last_report_seq: 0,
            last_task_seq: 0,
            policy_version: 0,
            last_sync: None,
            policy_state: PolicyState::Pending,
        }
    }
}

/// The part of a device's record that a report is checked against and
/// advances (see [`FleetStore::report_seqs`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportSeqs {
    /// Highest report sequence stored (and acknowledged).
    pub last_report_seq: u32,
    /// Highest task delivery sequence the device has confirmed.
    pub last_task_seq: u32,
}

impl ReportSeqs {
    /// The sequences of `rec`.
    pub fn of(rec: &DeviceRecord) -> Self {
        Self {
            last_report_seq: rec.last_report_seq,
            last_task_seq: rec.last_task_seq,
        }
    }
}

/// What one accepted report changes, written atomically by
/// [`FleetStore::commit_report`]. Only these fields of the device's record
/// change; the rest stay as stored.
#[derive(Clone, Copy, Debug)]
pub struct ReportCommit<'a> {
    /// The device.
    pub device: DeviceId,
    /// Its new sequences: `last_report_seq` advanced to the report's, and
    /// `last_task_seq` to the offer it confirmed, if newer.
    pub seqs: ReportSeqs,
    /// Its new `policy_version`, if the report was about a policy.
    pub policy_version: Option<u32>,
    /// Its new `policy_state`, if the report changed it (a report on an older
    /// version leaves a newer assignment pending).
    pub policy_state: Option<&'a PolicyState>,
    /// The task whose status changed, if the report was about a task.
    pub task: Option<&'a TaskRecord>,
    /// The compliance event, if the report was one.
    pub compliance: Option<ComplianceEvent>,
}

impl ReportCommit<'_> {
    /// A commit of `device`'s new sequences `seqs` that changes nothing
    /// else (the report's own change is set on it after).
    pub(super) fn new(device: DeviceId, seqs: ReportSeqs) -> Self {
        Self {
            device,
            seqs,
            policy_version: None,
            policy_state: None,
            task: None,
            compliance: None,
        }
    }

    /// Applies the commit's changes to the device's record `rec`: for a store
    /// that writes whole records.
    pub fn apply_to(&self, rec: &mut DeviceRecord) {
        rec.last_report_seq = self.seqs.last_report_seq;
        rec.last_task_seq = self.seqs.last_task_seq;
        if let Some(v) = self.policy_version {
            rec.policy_version = v;
        }
        if let Some(state) = self.policy_state {
            rec.policy_state = state.clone();
        }
    }
}

/// The periodic intervals devices were told (`Welcome.periodic_s`), as the
/// engine records them in the store for the engine of the next process
/// ([`FleetStore::told_intervals`]). A device syncs at the interval its last
/// `Welcome` told it until its next sync, so after a restart that shortened
/// `ServerConfig::periodic_interval` the devices that synced before it keep
/// the longer one for a while: [`Server::recover`](super::Server::recover)
/// expects them by it. One record for the whole fleet, not one per device;
/// the engine writes it once per process, before it tells any device its
/// interval.
///
/// A store keeps the three fields as they are given and gives them back
/// unchanged; the engine reads intervals outside `1 min ..= 7 days` (a
/// record a store mangled) as the nearest bound, as devices read
/// `periodic_s`, and an `earlier_until` further ahead than that bound
/// allows (the longer interval and `overdue_slack` past the latest sync
/// or now) as that far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ToldIntervals {
    /// The interval the engine that wrote the record tells every device it
    /// syncs with, from then on until its process ends: its
    /// `ServerConfig::periodic_interval`.
    pub interval: Duration,
    /// The longest interval earlier engines told devices, which may still
    /// be keeping it; [`Duration::ZERO`] if none.
    pub earlier: Duration,
    /// Until when a device may still keep [`earlier`](Self::earlier): the
    /// last sync at which it may have been told, plus it, plus
    /// `ServerConfig::overdue_slack` (by then each such device has synced
    /// again, or is overdue whatever it was told).
    pub earlier_until: Instant,
}

impl ToldIntervals {
    /// What an engine that tells `interval` from `now` on writes in place of
    /// `old`, the store's record, and the longest interval a device that
    /// synced before `now` may have been told (`None` when there was no
    /// record: not known). `latest_sync` is the latest last sync the engine
    /// saw in the store (at most `now` unless the clock went back across
    /// the restart): the engine of `old` told `old.interval` until then.
    /// Saturating: no instant or record overflows it.
    pub(super) fn after(
        old: Option<&Self>,
        interval: Duration,
        now: Instant,
        latest_sync: Instant,
        slack: Duration,
    ) -> (Option<Duration>, Self) {
        let within_bounds = |d: Duration| crate::device::periodic_within_bounds(d.as_millis());
        let Some(old) = old else {
            let record = Self {
                interval,
                earlier: Duration::ZERO,
                earlier_until: Instant::ZERO,
            };
            return (None, record);
        };
        // The old engine told its interval up to its last handshake.
        let since = now.max(latest_sync);
        let (told, earlier) = (within_bounds(old.interval), within_bounds(old.earlier));
        let own_until = since + told + slack;
        // No record written by now can count longer than its longest
        // interval and slack from now: one that says so was mangled (or the
        // clock went back by more than that), and is cut there. Carried on
        // as cut, it runs out then, however often engines restart.
        let earlier_until = old.earlier_until.min(since + told.max(earlier) + slack);
        let (longest, until) = if now < earlier_until {
            (told.max(earlier), own_until.max(earlier_until))
        } else {
            (told, own_until)
        };
        let record = Self {
            interval,
            earlier: longest,
            earlier_until: until,
        };
        (Some(longest), record)
    }
}

/// Durable fleet state. See the module docs for the shapes it is made for.
pub trait FleetStore {
    /// The store's error (I/O, database, ...).
    type Error: core::fmt::Debug;

    /// One device.
    fn device(&self, id: DeviceId) -> Result<Option<DeviceRecord>, Self::Error>;
    /// Inserts or replaces a device.
    fn put_device(&mut self, rec: &DeviceRecord) -> Result<(), Self::Error>;
    /// A device's enrollment generation, read when a task is queued for a
    /// device not in session. The default reads the whole record; a store
    /// may read just this.
    fn device_generation(&self, id: DeviceId) -> Result<Option<u32>, Self::Error> {
        Ok(self.device(id)?.map(|r| r.generation))
    }
    /// A device's report and task sequences, read for each report. The
    /// default reads the whole record; a store may read just these.
    fn report_seqs(&self, id: DeviceId) -> Result<Option<ReportSeqs>, Self::Error> {
        Ok(self.device(id)?.as_ref().map(ReportSeqs::of))
    }
    /// A hint that `id`'s record, and its push target if a task is queued
    /// for it, are likely read soon (see
    /// [`Server::prefetch_device`](super::Server::prefetch_device)): a store
    /// may start loading them. The default does nothing.
    fn prefetch_device(&self, id: DeviceId) {
        let _ = id;
    }
    /// A second hint about a device given to
    /// [`prefetch_device`](Self::prefetch_device) a little earlier, whose
    /// work is now nearer (the engine gives it two hints later). A store
    /// whose lookups take two steps, the second depending on what the first
    /// read, can take the first now (the first hint brought it in) and ask
    /// for the second. A task queued for a device hinted so gets no
    /// [`prefetch_push_target`](Self::prefetch_push_target) of its own: the
    /// default gives it here.
    fn prefetch_device_again(&self, id: DeviceId) {
        self.prefetch_push_target(id);
    }
    /// Platform and push token of a device, once it has sent them. The
    /// token is returned by value in a fixed buffer: no allocation.
    fn push_target(&self, id: DeviceId) -> Result<Option<(Platform, PushToken)>, Self::Error>;
    /// As [`push_target`](Self::push_target), with the token written into
    /// `token` (whatever it held before) and the platform returned. When there
    /// is no target, or on an error, `token` may hold anything. The engine
    /// sends pushes through this, with `token` the one of the
    /// [`ServerEvent::SendPush`](super::ServerEvent::SendPush) it queues, so
    /// that a store which can copy its token straight there (as
    /// [`MemoryStore`] does) saves a copy of the token per push. The default
    /// calls `push_target` and moves its token in.
    fn push_target_into(
        &self,
        id: DeviceId,
        token: &mut PushToken,
    ) -> Result<Option<Platform>, Self::Error> {
        Ok(self.push_target(id)?.map(|(platform, held)| {
            *token = held;
            platform
        }))
    }
    /// A hint that [`push_target`](Self::push_target) of `id` is likely asked
    /// soon (a task was queued for a device not in session, so a push may
    /// follow): a store may start loading it. The default does nothing.
    fn prefetch_push_target(&self, id: DeviceId) {
        let _ = id;
    }
    /// Records platform and push token, called on every handshake with the
    /// `Hello`'s. An empty token means "unchanged" (a device sends its token
    /// only until the server confirmed it, PROTOCOL.md 7.2): the stored
    /// target, if any, stays as it is. A store may skip the write when
    /// nothing changed.
    ///
    /// Returns whether the store holds a push target for `id` after the
    /// call; the engine asks the device for its token (`Welcome.want_token`)
    /// when it does not. Called on every handshake, mostly with an empty
    /// token: a store should answer that case without reading the token
    /// itself (`MemoryStore` reads a flag of the device's row, which the
    /// handshake has just read). The engine passes no token longer than
    /// [`PUSH_TOKEN_MAX`] bytes.
    fn set_push_target(
        &mut self,
        id: DeviceId,
        platform: Platform,
        token: &str,
    ) -> Result<bool, Self::Error>;
    /// Drops `id`'s push target (the push service refused its token, see
    /// [`Server::push_token_rejected`](super::Server::push_token_rejected)):
    /// [`push_target`](Self::push_target) answers `None` and
    /// [`set_push_target`](Self::set_push_target) with an empty token
    /// answers `false` until a token is set again. Returns whether a target
    /// was held.
    fn remove_push_target(&mut self, id: DeviceId) -> Result<bool, Self::Error>;
    /// Retires a device ([`Server::retire`](super::Server::retire)): its
    /// record, push target, policy and open-task index go, so that it reads
    /// as never enrolled ([`device`](Self::device) answers `None`), but its
    /// generation is kept for [`retired_generation`](Self::retired_generation)
    /// until it is enrolled again. Its tasks stay (the engine has ended the
    /// open ones). Returns whether it was enrolled.
    fn retire_device(&mut self, id: DeviceId) -> Result<bool, Self::Error>;
    /// The generation of a device retired and not enrolled since: enrolling
    /// it again goes on from there, so its old secret stays dead.
    fn retired_generation(&self, id: DeviceId) -> Result<Option<u32>, Self::Error>;
    /// One task.
    fn task(&self, id: TaskId) -> Result<Option<TaskRecord>, Self::Error>;
    /// Inserts or replaces a task.
    fn put_task(&mut self, rec: &TaskRecord) -> Result<(), Self::Error>;
    /// Appends the ids of a device's tasks that are not final, oldest first.
    fn open_tasks(&self, device: DeviceId, out: &mut Vec<TaskId>) -> Result<(), Self::Error>;
    /// How many of a device's tasks are not final (as many as
    /// [`open_tasks`](Self::open_tasks) appends), checked against
    /// `ServerConfig::max_open_tasks` for a task queued for a device out of
    /// session (see [`put_new_task`](Self::put_new_task) for one in session).
    fn open_task_count(&self, device: DeviceId) -> Result<usize, Self::Error>;
    /// Stores a task never stored before, as [`put_task`](Self::put_task),
    /// if its device has fewer than `max_open` tasks that are not final
    /// ([`open_task_count`](Self::open_task_count)); returns whether it did
    /// (nothing is stored when not). Called for a task queued without a
    /// supersede key for a device in session, `max_open` being
    /// `ServerConfig::max_open_tasks`. The default counts, then stores; a
    /// store may find the device's open tasks once for both.
    fn put_new_task(&mut self, rec: &TaskRecord, max_open: usize) -> Result<bool, Self::Error> {
        if self.open_task_count(rec.device)? >= max_open {
            return Ok(false);
        }
        self.put_task(rec)?;
        Ok(true)
    }
    /// A fresh task id, never handed out before.
    fn next_task_id(&mut self) -> Result<TaskId, Self::Error>;
    /// The policy assigned to a device.
    fn policy(&self, device: DeviceId) -> Result<Option<Policy>, Self::Error>;
    /// The version of the policy assigned to a device: what every sync
    /// compares with the version the device has, before it reads the policy
    /// itself only if that is newer. The default reads the whole policy
    /// ([`policy`](Self::policy)); a store that can read the version alone
    /// saves each sync a policy's copy (264 bytes for `MemoryStore`).
    fn policy_version(&self, device: DeviceId) -> Result<Option<u32>, Self::Error> {
        Ok(self.policy(device)?.map(|p| p.version))
    }
    /// Assigns a policy to a device.
    fn put_policy(&mut self, device: DeviceId, policy: &Policy) -> Result<(), Self::Error>;
    /// Stores one accepted report atomically: the device's fields it changes
    /// (see [`ReportCommit::apply_to`]), the task, the compliance log. The
    /// device was read just before ([`report_seqs`](Self::report_seqs)); if
    /// it is gone, its fields are not written.
    fn commit_report(&mut self, commit: ReportCommit<'_>) -> Result<(), Self::Error>;
    /// Stores one accepted report about task `id`: `update` is given the
    /// stored task (if there is one) and the report's new device sequences,
    /// and says whether the report changes them (it changes nothing when it
    /// returns `false`); then all is stored as by
    /// [`commit_report`](Self::commit_report), with `commit.task` set to the
    /// changed task. Returns whether there was a task and `update` changed
    /// it (the caller's `update` keeps what it needs of the change, so the
    /// record is not handed back). `update` changes the task only when it
    /// returns `true`, and never its id or device. The default reads the task
    /// ([`task`](Self::task)) and calls `commit_report`; a store may find the
    /// task once for both.
    fn commit_task_report(
        &mut self,
        commit: ReportCommit<'_>,
        id: TaskId,
        update: &mut dyn FnMut(&mut TaskRecord, &mut ReportSeqs) -> bool,
    ) -> Result<bool, Self::Error> {
        let mut seqs = commit.seqs;
        let task = self
            .task(id)?
            .and_then(|mut t| update(&mut t, &mut seqs).then_some(t));
        self.commit_report(ReportCommit {
            seqs,
            task: task.as_ref(),
            ..commit
        })?;
        Ok(task.is_some())
    }
    /// The record of the periodic intervals devices were told (see
    /// [`ToldIntervals`]), as [`set_told_intervals`](Self::set_told_intervals)
    /// last stored it; `None` if never.
    ///
    /// The default answers `None` (and the default
    /// [`set_told_intervals`](Self::set_told_intervals) stores nothing): a
    /// store that does not keep the record gets the engine's behaviour
    /// from before it existed, in which [`Server::recover`](super::Server::recover)
    /// expects every device by the new process's interval, so that after a
    /// restart that shortened `ServerConfig::periodic_interval` each device
    /// that syncs as it was told is reported overdue once. A store that
    /// outlives its process should keep it (one fleet-wide record: three
    /// numbers).
    fn told_intervals(&self) -> Result<Option<ToldIntervals>, Self::Error> {
        Ok(None)
    }
    /// Stores `record` in place of the one held, for
    /// [`told_intervals`](Self::told_intervals). Called once per engine:
    /// by [`Server::recover`](super::Server::recover), or, in a process that
    /// does not call it, at the first handshake. The default stores
    /// nothing (see [`told_intervals`](Self::told_intervals)).
    fn set_told_intervals(&mut self, record: &ToldIntervals) -> Result<(), Self::Error> {
        let _ = record;
        Ok(())
    }
    /// Visits every device (console queries).
    fn for_each_device(&self, f: &mut dyn FnMut(&DeviceRecord)) -> Result<(), Self::Error>;
    /// Visits every task, final ones included (console queries).
    fn for_each_task(&self, f: &mut dyn FnMut(&TaskRecord)) -> Result<(), Self::Error>;
    /// Gives back the memory the store holds in room for devices and tasks
    /// no longer there, called by
    /// [`Server::shrink_to_fit`](super::Server::shrink_to_fit) (after many
    /// devices were retired). What it holds stays. The default does
    /// nothing: a store over a database leaves that to the database.
    /// [`MemoryStore`] shrinks its tables ([`MemoryStore::shrink_to_fit`]).
    fn shrink_to_fit(&mut self) {}
}

/// Why [`MemoryStore`] refused a call. Nothing of the refused call is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemoryStoreError {
    /// The device's compliance report finds [`MemoryStore::compliance_limit`]
    /// of its events in the log, not yet drained
    /// ([`MemoryStore::take_compliance`]). The report is not acknowledged:
    /// the device keeps it and sends it again in a later sync (it retries a
    /// compliance event every minute), so a device that floods the log
    /// waits for the application instead of growing the server's memory.
    ComplianceLogFull {
        /// The device.
        device: DeviceId,
    },
}

impl core::fmt::Display for MemoryStoreError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::ComplianceLogFull { device } => write!(
                f,
                "compliance log full for device {}: drain it with take_compliance",
                device.0
            ),
        }
    }
}

impl core::error::Error for MemoryStoreError {}

/// `MemoryStore::compliance_limit`, whose default is not zero.
#[derive(Clone, Copy, Debug)]
struct ComplianceLimit(u32);

impl Default for ComplianceLimit {
    fn default() -> Self {
        Self(MemoryStore::DEFAULT_COMPLIANCE_LIMIT)
    }
}

/// The default store: everything in hashbrown maps, lost with the process.
///
/// Final tasks and the compliance log are kept until the application drains
/// them ([`MemoryStore::prune_finished`], [`MemoryStore::take_compliance`]).
/// The log keeps at most [`compliance_limit`](MemoryStore::compliance_limit)
/// events per device: past that, the device's compliance reports are refused
/// ([`MemoryStoreError::ComplianceLogFull`], not acknowledged, sent again by
/// the device later) until the log is drained. Every other call succeeds.
///
/// Devices are kept packed (see `Row`) in a table of their own (see
/// `Table`): 40 to 50 bytes of resident memory per idle device, against 170 for a map of
/// [`DeviceRecord`]s. Records go in and come out unchanged.
#[derive(Debug, Default)]
pub struct MemoryStore {
    devices: Table<Row>,
    /// Policy states that a `Row` cannot hold: partial, rejected, or about
    /// another version than the device's `policy_version`.
    policy_states: HashMap<DeviceId, PolicyState>,
    /// Last syncs at or after 2^48 ms that a `Row` cannot hold.
    far_syncs: HashMap<DeviceId, Instant>,
    push: Table<PushTarget>,
    tasks: HashMap<TaskId, TaskRecord>,
    open: HashMap<DeviceId, Vec<TaskId>>,
    /// Emptied open-task lists, kept for reuse so that a device's next task
    /// allocates nothing.
    spare_lists: Vec<Vec<TaskId>>,
    policies: HashMap<DeviceId, Policy>,
    compliance: Vec<(DeviceId, ComplianceEvent)>,
    /// Entries of `compliance` per device, for those with any: a device at
    /// `compliance_limit` has its next compliance report refused.
    compliance_counts: HashMap<DeviceId, u32>,
    compliance_limit: ComplianceLimit,
    next_task: u64,
    /// Generations of retired devices (see `FleetStore::retire_device`):
    /// 17 bytes a bucket, 20 to 40 bytes per retired device (`fleet_memory
    /// 1000000 retired`: 71 bytes of resident memory per device while the
    /// map grows to a million), where an enrolled idle device takes 40 to 50
    /// and its push target about 300 more, whose room the devices enrolled
    /// next reuse (or `shrink_to_fit` gives back). Kept for good: an id
    /// enrolled again must never get a generation it had.
    retired: HashMap<DeviceId, u32>,
    /// `FleetStore::told_intervals`.
    told: Option<ToldIntervals>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store with room for `devices` devices.
    pub fn with_capacity(devices: usize) -> Self {
        Self {
            devices: Table::with_capacity(devices),
            ..Self::default()
        }
    }

    /// Makes room for `additional` more devices at once. The device table
    /// otherwise grows by a quarter when it is 80 % full, and each growth
    /// copies the whole table while the engine serves nothing else. Nothing
    /// happens if that much memory cannot be had.
    pub fn reserve_devices(&mut self, additional: usize) {
        self.devices.reserve(additional);
    }

    /// Makes room for `additional` more push targets at once. The push
    /// table grows as devices send their first token, and each growth
    /// copies the whole table, tokens inside (about 250 ms past 800,000
    /// devices with tokens here), while the engine serves nothing else. A
    /// fleet of known size can take that cost up front: the room is about
    /// 310 bytes per target, written (so resident) at once. Nothing happens
    /// if that much memory cannot be had.
    pub fn reserve_push_targets(&mut self, additional: usize) {
        self.push.reserve(additional);
    }

    /// Gives back to the allocator the room that retired devices and
    /// drained logs left: the device and push tables, the maps of tasks,
    /// open-task lists, policies, policy states, far syncs, compliance
    /// counts and retired generations, and the compliance log, each moved
    /// into the room its entries need (the two tables keep a little more,
    /// so that the next device enrolled or token sent does not grow them at
    /// once: 70 % full). Without it the room stays taken, for the devices
    /// enrolled next.
    ///
    /// Call it after the fleet shrank for good (many devices retired),
    /// through [`Server::shrink_to_fit`](super::Server::shrink_to_fit),
    /// which shrinks the engine's own tables too. Finished tasks stay
    /// until [`prune_finished`](Self::prune_finished): call that first to
    /// give back theirs (a retired device's open tasks end `Dropped`, and
    /// stay so). The generations of retired devices stay, for good (see
    /// [`FleetStore::retire_device`]): 17 MiB for 900,000 of them.
    ///
    /// Cost: every entry moved once, O(devices + tasks), and for a moment
    /// the old and the new room of each table together (each is allocated
    /// before the old one is freed). A table whose new room cannot be had
    /// keeps its old one; the hash maps' (hashbrown's) end the process if
    /// their smaller room cannot be had, as any allocation of theirs does.
    pub fn shrink_to_fit(&mut self) {
        self.devices.shrink_to_fit();
        self.push.shrink_to_fit();
        self.policy_states.shrink_to_fit();
        self.far_syncs.shrink_to_fit();
        self.tasks.shrink_to_fit();
        self.open.shrink_to_fit();
        self.spare_lists.shrink_to_fit();
        self.policies.shrink_to_fit();
        self.compliance.shrink_to_fit();
        self.compliance_counts.shrink_to_fit();
        self.retired.shrink_to_fit();
    }

    /// Number of enrolled devices (retired ones not included).
    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    /// Number of push targets kept (devices that sent a token, whether it
    /// was refused since or not).
    pub fn push_target_count(&self) -> usize {
        self.push.len()
    }

    /// Removes and returns the compliance log, oldest first. Drain it from
    /// time to time: a device with [`compliance_limit`](Self::compliance_limit)
    /// entries in it has its further compliance reports refused until then.
    pub fn take_compliance(&mut self) -> Vec<(DeviceId, ComplianceEvent)> {
        self.compliance_counts.clear();
        core::mem::take(&mut self.compliance)
    }

    /// The compliance log, oldest first, as [`take_compliance`](Self::take_compliance)
    /// would return it.
    pub fn compliance(&self) -> &[(DeviceId, ComplianceEvent)] {
        &self.compliance
    }

    /// How many compliance events of one device the log keeps undrained
    /// ([`DEFAULT_COMPLIANCE_LIMIT`](Self::DEFAULT_COMPLIANCE_LIMIT) unless set).
    pub fn compliance_limit(&self) -> u32 {
        self.compliance_limit.0
    }

    /// Sets [`compliance_limit`](Self::compliance_limit). Entries already
    /// in the log stay; a device at or above the new limit is refused until
    /// the log is drained.
    pub fn set_compliance_limit(&mut self, per_device: u32) {
        self.compliance_limit = ComplianceLimit(per_device);
    }

    /// Compliance events kept per device by default.
    pub const DEFAULT_COMPLIANCE_LIMIT: u32 = 1024;

    /// `Err` if `c` carries a compliance event that its device has no room
    /// for in the log; checked before anything of `c` is stored. Inline, the
    /// count looked up out of line: task reports, the usual kind, carry no
    /// event (a call here cost the round trip 34 instructions).
    #[inline(always)]
    fn compliance_room(&self, c: &ReportCommit<'_>) -> Result<(), MemoryStoreError> {
        match c.compliance {
            None => Ok(()),
            Some(_) => self.compliance_room_of(c.device),
        }
    }

    #[inline(never)]
    fn compliance_room_of(&self, device: DeviceId) -> Result<(), MemoryStoreError> {
        let held = self.compliance_counts.get(&device).copied().unwrap_or(0);
        if held >= self.compliance_limit.0 {
            return Err(MemoryStoreError::ComplianceLogFull { device });
        }
        Ok(())
    }

    /// Forgets final tasks that finished before `before`.
    pub fn prune_finished(&mut self, before: Instant) {
        self.tasks
            .retain(|_, t| !t.state.is_final() || t.finished_at.is_none_or(|f| f >= before));
    }

    /// Keeps `rec` in its device's open list exactly while it is not final.
    fn index_task(&mut self, rec: &TaskRecord) {
        if rec.state.is_final() {
            self.unindex_task(rec.device, rec.id);
            return;
        }
        match self.open.get_mut(&rec.device) {
            Some(open) => {
                if !open.contains(&rec.id) {
                    open.push(rec.id);
                }
            }
            None => {
                let mut list = self.spare_lists.pop().unwrap_or_default();
                list.push(rec.id);
                self.open.insert(rec.device, list);
            }
        }
    }

    /// Takes task `id` out of `device`'s open list (it is final). Inlined
    /// with `commit_task_report` into the engine, where a task's end is the
    /// usual report: a call of its own there nearly doubled its cost.
    #[inline]
    fn unindex_task(&mut self, device: DeviceId, id: TaskId) {
        let Some(open) = self.open.get_mut(&device) else {
            return;
        };
        match open.iter().position(|t| *t == id) {
            // The newest (often the only) one: nothing to shift.
            Some(p) if p + 1 == open.len() => {
                open.pop();
            }
            Some(p) => {
                open.remove(p);
            }
            None => {}
        }
        if open.is_empty() {
            self.drop_open_list(device);
        }
    }

    /// Drops `device`'s open-task list, kept for reuse if there is room.
    fn drop_open_list(&mut self, device: DeviceId) {
        if let Some(mut list) = self.open.remove(&device) {
            if self.spare_lists.len() < MAX_SPARE_LISTS && list.capacity() <= 64 {
                list.clear();
                self.spare_lists.push(list);
            }
        }
    }

    /// The rest of a report's commit once its task is stored: the compliance
    /// log and the device's fields. Inlined with `commit_task_report` into
    /// the engine: a call of its own there cost about as much as its work
    /// (two sequences written, for a task report).
    #[inline]
    fn commit_device(&mut self, c: &ReportCommit<'_>) {
        if let Some(e) = c.compliance {
            self.compliance.push((c.device, e));
            let held = self.compliance_counts.entry(c.device).or_default();
            *held = held.saturating_add(1);
        }
        let Some(i) = self.devices.find(c.device.0) else {
            return;
        };
        if c.policy_version.is_some() || c.policy_state.is_some() {
            self.commit_policy(i, c);
        } else if let Some(row) = self.devices.at_mut(i) {
            row.last_report_seq = c.seqs.last_report_seq;
            row.last_task_seq = c.seqs.last_task_seq;
        }
    }

    /// `commit_device` for a policy report: the policy lives in the row's
    /// flags and side maps, so the row at `i` is rewritten whole, as
    /// `put_device` does. Out of line: its record on the stack and the
    /// registers it needs would be set up for every report otherwise
    /// (task reports, the usual kind, only write two sequences).
    #[inline(never)]
    fn commit_policy(&mut self, i: Slot, c: &ReportCommit<'_>) {
        if let Some(row) = self.devices.at(i) {
            let mut rec = self.unpack(row);
            c.apply_to(&mut rec);
            self.replace_row(i, &rec);
        }
    }

    /// A device's record in its packed form; side entries it no longer needs
    /// are dropped (`old` is the row it replaces).
    fn pack(&mut self, rec: &DeviceRecord, old: Option<&Row>) -> Row {
        let id = rec.id;
        let mut row = Row {
            id: id.0,
            generation: rec.generation,
            last_report_seq: rec.last_report_seq,
            last_task_seq: rec.last_task_seq,
            policy_version: rec.policy_version,
            sync_lo: 0,
            sync_hi: 0,
            flags: OCCUPIED,
            // Not part of the record: kept from the row it replaces.
            has_push: old.is_some_and(|o| o.has_push),
        };
        if let Some((at, trigger)) = rec.last_sync {
            row.flags |= HAS_SYNC | (trigger.index() as u8) << TRIGGER_SHIFT;
            let ms = at.as_millis();
            if ms >> 48 == 0 {
                row.sync_lo = ms as u32;
                row.sync_hi = (ms >> 32) as u16;
            } else {
                row.flags |= FAR_SYNC;
                self.far_syncs.insert(id, at);
            }
        }
        let policy = match &rec.policy_state {
            PolicyState::Pending => POLICY_PENDING,
            PolicyState::Applied { version } if *version == rec.policy_version => POLICY_APPLIED,
            other => {
                self.policy_states.insert(id, other.clone());
                POLICY_ASIDE
            }
        };
        row.flags |= policy << POLICY_SHIFT;
        if let Some(old) = old {
            if old.policy_tag() == POLICY_ASIDE && policy != POLICY_ASIDE {
                self.policy_states.remove(&id);
            }
            if old.flags & FAR_SYNC != 0 && row.flags & FAR_SYNC == 0 {
                self.far_syncs.remove(&id);
            }
        }
        row
    }

    /// Replaces the row at `i` with `rec`, packed.
    fn replace_row(&mut self, i: Slot, rec: &DeviceRecord) {
        let old = self.devices.at(i).copied();
        let row = self.pack(rec, old.as_ref());
        if let Some(slot) = self.devices.at_mut(i) {
            *slot = row;
        }
    }

    fn unpack(&self, row: &Row) -> DeviceRecord {
        let id = DeviceId(row.id);
        let last_sync = (row.flags & HAS_SYNC != 0).then(|| {
            let i = usize::from(row.flags >> TRIGGER_SHIFT & 7);
            let trigger = SyncTrigger::ALL
                .get(i)
                .copied()
                .unwrap_or(SyncTrigger::Report);
            let at = if row.flags & FAR_SYNC != 0 {
                self.far_syncs.get(&id).copied().unwrap_or(Instant::MAX)
            } else {
                Instant::from_millis(u64::from(row.sync_hi) << 32 | u64::from(row.sync_lo))
            };
            (at, trigger)
        });
        let policy_state = match row.policy_tag() {
            POLICY_PENDING => PolicyState::Pending,
            POLICY_APPLIED => PolicyState::Applied {
                version: row.policy_version,
            },
            _ => self
                .policy_states
                .get(&id)
                .cloned()
                .unwrap_or(PolicyState::Pending),
        };
        DeviceRecord {
            id,
            generation: row.generation,
            last_report_seq: row.last_report_seq,
            last_task_seq: row.last_task_seq,
            policy_version: row.policy_version,
            last_sync,
            policy_state,
        }
    }
}

/// Most emptied open-task lists kept for reuse.
const MAX_SPARE_LISTS: usize = 1024;

const HAS_SYNC: u8 = 1;
const TRIGGER_SHIFT: u8 = 1; // three bits: `SyncTrigger::index`
const POLICY_SHIFT: u8 = 4; // two bits:
const POLICY_PENDING: u8 = 0;
const POLICY_APPLIED: u8 = 1; // applied, at `policy_version`
const POLICY_ASIDE: u8 = 2; // in `MemoryStore::policy_states`
const FAR_SYNC: u8 = 1 << 6; // last sync in `MemoryStore::far_syncs`
const OCCUPIED: u8 = 1 << 7; // a device's row, not a free slot of its `Table`

/// One device as `MemoryStore` keeps it: 32 bytes. The last sync instant is
/// kept to the millisecond in 48 bits (8,900 years from the caller's epoch);
/// policy details that rarely exist live in side maps.
#[derive(Clone, Copy, Debug)]
struct Row {
    id: u64,
    generation: u32,
    last_report_seq: u32,
    last_task_seq: u32,
    policy_version: u32,
    sync_lo: u32,
    sync_hi: u16,
    flags: u8,
    /// `MemoryStore::push` holds a target for this device: read on each
    /// handshake in place of the push table (a cache miss at a million
    /// devices). Kept apart from `flags`, whose bits are all taken, in what
    /// was the row's padding byte.
    has_push: bool,
}

impl Row {
    /// A free slot.
    const FREE: Row = Row {
        id: 0,
        generation: 0,
        last_report_seq: 0,
        last_task_seq: 0,
        policy_version: 0,
        sync_lo: 0,
        sync_hi: 0,
        flags: 0,
        has_push: false,
    };

    fn policy_tag(&self) -> u8 {
        self.flags >> POLICY_SHIFT & 3
    }
}

impl Entry for Row {
    const FREE: Row = Row::FREE;
    fn key(&self) -> Option<u64> {
        (self.flags & OCCUPIED != 0).then_some(self.id)
    }
    fn touch(&self) {
        prefetch(&self.id);
    }
}

/// A device's platform and push token, as `MemoryStore` keeps it: in a
/// [`Table`] entry of 216 bytes, the token's bytes in the entry itself
/// (free without a token). A push reads the entry and its token in one go:
/// with the token in a heap block of its own, the block's address would come
/// from the entry, and at a million devices its cache miss would follow the
/// entry's instead of overlapping it. The token is a plain byte array, not a
/// [`PushToken`], so that [`Table::touch_home`] can read each of its cache
/// lines without first reading its length (a `String`'s bytes past its
/// length cannot be read); it is checked as UTF-8 again when read out.
///
/// That costs memory: the entry's room for the longest token is kept
/// whatever the token's length (`fleet_memory` at 1,000,000 devices: 349
/// bytes per device for its 152-byte token; 433 bytes per synced device,
/// against 328 with the token on the heap). It also makes growing the table
/// slower: a growth copies every entry at once (the table does not grow
/// incrementally), and past 800,000 devices with tokens that copy took
/// about 250 ms, against about 40 ms with 32-byte entries, during which the
/// engine serves nothing else. Known shortcoming; in exchange a sync at
/// 1,000,000 devices took about 13 % less time. A fleet of known size can
/// take the growths out of service time with
/// [`MemoryStore::reserve_push_targets`] (its memory then resident at
/// once).
///
/// The fields are in this order (`repr(C)`) so that the first cache line of
/// a pair holds the first entry's key and length: a lookahead hint asks for
/// that line first, and later, once it has come, for the lines of the one
/// entry that holds the device (`MemoryStore::prefetch_device_again`), 3 to
/// 4 lines instead of the pair's 7.
#[derive(Clone, Debug)]
#[repr(C)]
struct PushTarget {
    id: u64,
    /// Bytes of `token` in use; 0 in a free slot.
    len: u8,
    platform: Platform,
    /// The token was dropped (`remove_push_target`). The entry keeps its
    /// slot: the table frees none (see `Table`), and the device's next
    /// token goes back in it.
    removed: bool,
    token: [u8; PUSH_TOKEN_MAX],
}

// Seven cache lines to a pair of entries, two `Row`s to a line (checked when compiling).
const _: () = assert!(core::mem::size_of::<PushTarget>() == 216);
const _: () = assert!(core::mem::size_of::<Row>() == 32);
// The first entry's key and length in a pair's first line (what the second
// step of a lookahead hint reads, see `Table::touch_home_entry`).
const _: () = assert!(core::mem::offset_of!(PushTarget, len) < 64);
// A token's length fits `PushTarget::len`.
const _: () = assert!(PUSH_TOKEN_MAX <= u8::MAX as usize);

impl PushTarget {
    /// Whether the entry holds a target: a token that was not removed.
    fn held(&self) -> bool {
        !self.removed
    }

    /// The token's bytes.
    fn bytes(&self) -> &[u8] {
        self.token.get(..usize::from(self.len)).unwrap_or_default()
    }

    /// An entry holding `token` (at most `PUSH_TOKEN_MAX` bytes: a
    /// `PushToken`).
    fn new(id: DeviceId, platform: Platform, token: &PushToken) -> Self {
        let mut t = Self {
            id: id.0,
            platform,
            ..Self::FREE
        };
        if let Some(room) = t.token.get_mut(..token.len()) {
            room.copy_from_slice(token.as_bytes());
            t.len = token.len() as u8;
        }
        t
    }
}

impl Entry for PushTarget {
    const FREE: PushTarget = PushTarget {
        id: 0,
        token: [0; PUSH_TOKEN_MAX],
        len: 0,
        platform: Platform::Android,
        removed: false,
    };
    fn key(&self) -> Option<u64> {
        (self.len != 0).then_some(self.id)
    }
    fn touch(&self) {
        // One byte of every line the entry reaches.
        touch_with_key(&self.id, &self.token);
    }
    fn touch_first(&self) {
        prefetch(&self.id);
    }
    fn touch_used(&self) {
        // The lines of the key and of the token's bytes in use: a 144-byte
        // token needs three, where `touch` asks for four.
        let used = self.token.get(..usize::from(self.len)).unwrap_or_default();
        touch_with_key(&self.id, used);
    }
}

/// Asks for the line of `key` and one byte of every line `bytes` reach.
fn touch_with_key(key: &u64, bytes: &[u8]) {
    prefetch(key);
    bytes
        .iter()
        .step_by(64)
        .chain(bytes.last())
        .for_each(prefetch);
}

impl FleetStore for MemoryStore {
    type Error = MemoryStoreError;

    fn device(&self, id: DeviceId) -> Result<Option<DeviceRecord>, MemoryStoreError> {
        let row = self.devices.get(id.0);
        Ok(row.map(|r| self.unpack(r)))
    }

    fn device_generation(&self, id: DeviceId) -> Result<Option<u32>, MemoryStoreError> {
        let row = self.devices.get(id.0);
        Ok(row.map(|r| r.generation))
    }

    fn put_device(&mut self, rec: &DeviceRecord) -> Result<(), MemoryStoreError> {
        match self.devices.find(rec.id.0) {
            Some(i) => self.replace_row(i, rec),
            None => {
                let mut row = self.pack(rec, None);
                // A target set before the device was enrolled.
                row.has_push = self.push.get(rec.id.0).is_some_and(PushTarget::held);
                self.devices.insert_new(row);
                if !self.retired.is_empty() {
                    self.retired.remove(&rec.id);
                }
            }
        }
        Ok(())
    }

    fn prefetch_device(&self, id: DeviceId) {
        self.devices.touch_home(id.0);
        // Only the first line of the push target's pair: which of its two
        // entries is the device's shows there once it has come (see
        // `prefetch_device_again`).
        self.push.touch_home_first(id.0);
    }

    fn prefetch_device_again(&self, id: DeviceId) {
        self.push.touch_home_entry(id.0);
    }

    fn push_target(&self, id: DeviceId) -> Result<Option<(Platform, PushToken)>, MemoryStoreError> {
        let mut token = PushToken::new();
        let platform = self.push_target_into(id, &mut token)?;
        Ok(platform.map(|p| (p, token)))
    }

    fn push_target_into(
        &self,
        id: DeviceId,
        token: &mut PushToken,
    ) -> Result<Option<Platform>, MemoryStoreError> {
        let Some(t) = self.push.get(id.0).filter(|t| t.held()) else {
            return Ok(None);
        };
        // Stored from a `PushToken`, so its bytes are UTF-8 and fit.
        let Ok(text) = core::str::from_utf8(t.bytes()) else {
            return Ok(None);
        };
        token.clear();
        Ok(token.push_str(text).is_ok().then_some(t.platform))
    }

    fn prefetch_push_target(&self, id: DeviceId) {
        // Every cache line of the entry's home pair: at a million devices
        // they miss the cache, and issued here, beside the device's record,
        // the misses overlap (a lookup would read the token's lines only
        // once the key's line had come).
        self.push.touch_home(id.0);
    }

    fn set_push_target(
        &mut self,
        id: DeviceId,
        platform: Platform,
        token: &str,
    ) -> Result<bool, MemoryStoreError> {
        // The wire bounds a token to `PUSH_TOKEN_MAX` bytes; a longer one
        // from a direct caller is not stored: like an empty one, it leaves
        // the stored target as it is.
        let token = PushToken::try_from(token).unwrap_or_default();
        if token.is_empty() {
            // The row, not the push table: the handshake has just read it.
            return Ok(match self.devices.get(id.0) {
                Some(row) => row.has_push,
                None => self.push.get(id.0).is_some_and(PushTarget::held),
            });
        }
        match self.push.get_mut(id.0) {
            Some(t) if t.held() && t.platform == platform && t.bytes() == token.as_bytes() => {}
            Some(t) => *t = PushTarget::new(id, platform, &token),
            None => self.push.insert_new(PushTarget::new(id, platform, &token)),
        }
        if let Some(row) = self.devices.get_mut(id.0) {
            row.has_push = true;
        }
        Ok(true)
    }

    fn remove_push_target(&mut self, id: DeviceId) -> Result<bool, MemoryStoreError> {
        let held = match self.push.get_mut(id.0) {
            Some(t) => !core::mem::replace(&mut t.removed, true),
            None => false,
        };
        if let Some(row) = self.devices.get_mut(id.0) {
            row.has_push = false;
        }
        Ok(held)
    }

    fn retire_device(&mut self, id: DeviceId) -> Result<bool, MemoryStoreError> {
        let Some(row) = self.devices.remove(id.0) else {
            return Ok(false);
        };
        self.retired.insert(id, row.generation);
        self.push.remove(id.0);
        self.policies.remove(&id);
        self.policy_states.remove(&id);
        self.far_syncs.remove(&id);
        self.drop_open_list(id);
        Ok(true)
    }

    fn retired_generation(&self, id: DeviceId) -> Result<Option<u32>, MemoryStoreError> {
        Ok(self.retired.get(&id).copied())
    }

    fn task(&self, id: TaskId) -> Result<Option<TaskRecord>, MemoryStoreError> {
        Ok(self.tasks.get(&id).copied())
    }

    fn put_task(&mut self, rec: &TaskRecord) -> Result<(), MemoryStoreError> {
        self.index_task(rec);
        self.tasks.insert(rec.id, *rec);
        Ok(())
    }

    fn put_new_task(
        &mut self,
        rec: &TaskRecord,
        max_open: usize,
    ) -> Result<bool, MemoryStoreError> {
        // A device's open list, if it has one, is found once, to count and to
        // add to (the task is new: it is not in it). A task final at once
        // (expired) is counted, not listed.
        match self.open.get_mut(&rec.device) {
            Some(open) if open.len() >= max_open => return Ok(false),
            Some(open) => {
                if !rec.state.is_final() {
                    open.push(rec.id);
                }
            }
            None if max_open == 0 => return Ok(false),
            // A new list: as `put_task` (a second lookup, cheap in a map
            // that holds only the devices with open tasks).
            None => return self.put_task(rec).map(|()| true),
        }
        // `entry`, not a second call site of `insert`: with one, hashbrown's
        // `insert` stays inlined in `put_task` (callgrind: a second one made
        // it a call, and each `put_task` dearer).
        self.tasks.entry(rec.id).insert(*rec);
        Ok(true)
    }

    fn open_tasks(&self, device: DeviceId, out: &mut Vec<TaskId>) -> Result<(), MemoryStoreError> {
        if let Some(open) = self.open.get(&device) {
            out.extend_from_slice(open);
        }
        Ok(())
    }

    fn open_task_count(&self, device: DeviceId) -> Result<usize, MemoryStoreError> {
        Ok(self.open.get(&device).map_or(0, Vec::len))
    }

    fn next_task_id(&mut self) -> Result<TaskId, MemoryStoreError> {
        self.next_task += 1;
        Ok(TaskId(self.next_task))
    }

    fn policy(&self, device: DeviceId) -> Result<Option<Policy>, MemoryStoreError> {
        Ok(self.policies.get(&device).cloned())
    }

    fn policy_version(&self, device: DeviceId) -> Result<Option<u32>, MemoryStoreError> {
        Ok(self.policies.get(&device).map(|p| p.version))
    }

    fn put_policy(&mut self, device: DeviceId, policy: &Policy) -> Result<(), MemoryStoreError> {
        self.policies.insert(device, policy.clone());
        Ok(())
    }

    // Inlined into the engine (generic, so compiled in the application's
    // crate), which reads it for every report: a call across crates cost
    // about as much as the lookup.
    #[inline]
    fn report_seqs(&self, id: DeviceId) -> Result<Option<ReportSeqs>, MemoryStoreError> {
        let row = self.devices.get(id.0);
        Ok(row.map(|r| ReportSeqs {
            last_report_seq: r.last_report_seq,
            last_task_seq: r.last_task_seq,
        }))
    }

    fn commit_report(&mut self, c: ReportCommit<'_>) -> Result<(), MemoryStoreError> {
        self.compliance_room(&c)?;
        if let Some(t) = c.task {
            self.put_task(t)?;
        }
        self.commit_device(&c);
        Ok(())
    }

    // Inlined into the engine's report path (compiled in the application's
    // crate): besides the call across crates, the engine's `update` is then
    // called directly, not through its `dyn` pointer, and inlined.
    #[inline]
    fn commit_task_report(
        &mut self,
        mut c: ReportCommit<'_>,
        id: TaskId,
        update: &mut dyn FnMut(&mut TaskRecord, &mut ReportSeqs) -> bool,
    ) -> Result<bool, MemoryStoreError> {
        // The task is found once and changed where it is; its device's open
        // list is touched only if the change moves it in or out of it (the
        // device stays: see the trait). Not copied out: a copy would read the
        // record with wide loads right after `update`'s narrower stores, and
        // wait for them to reach the cache.
        self.compliance_room(&c)?;
        let Some(stored) = self.tasks.get_mut(&id) else {
            self.commit_device(&c);
            return Ok(false);
        };
        let was_final = stored.state.is_final();
        if !update(stored, &mut c.seqs) {
            self.commit_device(&c);
            return Ok(false);
        }
        match (was_final, stored.state.is_final()) {
            (false, true) => {
                let device = stored.device;
                self.unindex_task(device, id);
            }
            (true, false) => {
                let task = *stored;
                self.index_task(&task);
            }
            _ => {}
        }
        self.commit_device(&c);
        Ok(true)
    }

    fn for_each_device(&self, f: &mut dyn FnMut(&DeviceRecord)) -> Result<(), MemoryStoreError> {
        for row in self.devices.iter() {
            f(&self.unpack(row));
        }
        Ok(())
    }

    fn for_each_task(&self, f: &mut dyn FnMut(&TaskRecord)) -> Result<(), MemoryStoreError> {
        self.tasks.values().for_each(f);
        Ok(())
    }

    fn told_intervals(&self) -> Result<Option<ToldIntervals>, MemoryStoreError> {
        Ok(self.told)
    }

    fn set_told_intervals(&mut self, record: &ToldIntervals) -> Result<(), MemoryStoreError> {
        self.told = Some(*record);
        Ok(())
    }

    fn shrink_to_fit(&mut self) {
        MemoryStore::shrink_to_fit(self);
    }
}

#[cfg(test)]
mod tests {
    use super::TaskState;

    /// A compliance report past the device's limit is refused whole: its
    /// sequences are not advanced and nothing is logged; other devices and
    /// reports of other kinds go on; a drain makes room again.
    #[test]
    fn a_compliance_report_past_the_limit_changes_nothing() {
        use super::{
            DeviceId, DeviceRecord, FleetStore, MemoryStore, MemoryStoreError, ReportCommit,
            ReportSeqs,
        };
        use crate::wire::ComplianceEvent;
        let (a, b) = (DeviceId(1), DeviceId(2));
        let mut s = MemoryStore::new();
        s.set_compliance_limit(2);
        for d in [a, b] {
            s.put_device(&DeviceRecord::new(d, 0)).unwrap();
        }
        let commit = |device, seq: u32, e: Option<ComplianceEvent>| {
            let seqs = ReportSeqs {
                last_report_seq: seq,
                last_task_seq: 0,
            };
            ReportCommit {
                compliance: e,
                ..ReportCommit::new(device, seqs)
            }
        };
        let e = |days| Some(ComplianceEvent::PasswordOverdue { days });
        s.commit_report(commit(a, 1, e(1))).unwrap();
        s.commit_report(commit(a, 2, e(2))).unwrap();
        assert_eq!(
            s.commit_report(commit(a, 3, e(3))),
            Err(MemoryStoreError::ComplianceLogFull { device: a })
        );
        assert_eq!(s.report_seqs(a).unwrap().unwrap().last_report_seq, 2);
        assert_eq!(s.compliance().len(), 2);
        // Another device, and a report of another kind, still go in.
        s.commit_report(commit(b, 1, e(9))).unwrap();
        s.commit_report(commit(a, 3, None)).unwrap();
        assert_eq!(s.report_seqs(a).unwrap().unwrap().last_report_seq, 3);
        let drained = s.take_compliance();
        assert_eq!(drained.len(), 3);
        s.commit_report(commit(a, 4, e(4))).unwrap();
        assert_eq!(
            s.compliance(),
            &[(a, ComplianceEvent::PasswordOverdue { days: 4 })]
        );
    }

    /// `MemoryStore::policy_version` gives what the default (the whole
    /// policy's version) gives: none, assigned, replaced, for another device.
    #[test]
    fn policy_version_agrees_with_the_policy() {
        use super::{DeviceId, FleetStore, MemoryStore, Policy};
        let mut s = MemoryStore::new();
        let (a, b) = (DeviceId(1), DeviceId(2));
        let agree = |s: &MemoryStore| {
            for d in [a, b, DeviceId(3)] {
                let whole = s.policy(d).unwrap().map(|p| p.version);
                assert_eq!(s.policy_version(d).unwrap(), whole, "{d:?}");
            }
        };
        agree(&s);
        for (d, version) in [(a, 1), (b, 7), (a, u32::MAX), (a, 0)] {
            let policy = Policy {
                version,
                settings: heapless::Vec::new(),
            };
            s.put_policy(d, &policy).unwrap();
            assert_eq!(s.policy_version(d).unwrap(), Some(version));
            agree(&s);
        }
    }

    /// Keeps `tests/readme_lifecycle.rs` honest: adding a state breaks this
    /// exhaustive match until the README test's list is updated too.
    #[test]
    fn task_state_has_twelve_variants() {
        let count = |s: TaskState| match s {
            TaskState::Queued
            | TaskState::PushSent
            | TaskState::Offered
            | TaskState::Delivered
            | TaskState::InProgress { .. }
            | TaskState::Deferred { .. }
            | TaskState::Succeeded { .. }
            | TaskState::Failed { .. }
            | TaskState::Cancelled
            | TaskState::Expired
            | TaskState::Superseded { .. }
            | TaskState::Dropped => 12,
        };
        assert_eq!(count(TaskState::Queued), 12);
    }
}

#[cfg(test)]
mod packing_tests {
    use super::*;
    use crate::wire::SettingFailure;

    fn record(id: u64) -> DeviceRecord {
        DeviceRecord {
            id: DeviceId(id),
            generation: 3,
            last_report_seq: u32::MAX,
            last_task_seq: 17,
            policy_version: 9,
            last_sync: Some((Instant::from_millis(1_234_567_890_123), SyncTrigger::Report)),
            policy_state: PolicyState::Applied { version: 9 },
        }
    }

    #[test]
    fn packed_device_records_come_back_unchanged() {
        let mut failed = heapless::Vec::new();
        failed.push(SettingFailure { key: 4, reason: 2 }).unwrap();
        let states = [
            PolicyState::Pending,
            PolicyState::Applied { version: 9 },
            PolicyState::Applied { version: 8 },
            PolicyState::PartiallyApplied { version: 9, failed },
            PolicyState::Rejected {
                version: 9,
                reason: 7,
            },
        ];
        let syncs = [
            None,
            Some((Instant::ZERO, SyncTrigger::Push)),
            Some((Instant::from_millis((1 << 48) - 1), SyncTrigger::Boot)),
            Some((Instant::MAX, SyncTrigger::Manual)),
        ];
        let mut store = MemoryStore::new();
        for (i, state) in states.iter().enumerate() {
            for (j, sync) in syncs.iter().enumerate() {
                let mut rec = record((i * 10 + j) as u64);
                rec.generation = u32::MAX >> (i + j);
                rec.policy_state = state.clone();
                rec.last_sync = *sync;
                store.put_device(&rec).unwrap();
                assert_eq!(store.device(rec.id).unwrap(), Some(rec.clone()));
                // The generation read alone is the record's (see the default).
                let generation = store.device_generation(rec.id).unwrap();
                assert_eq!(generation, Some(rec.generation));
                // Overwriting with a plain record drops the side entries.
                let plain = record(rec.id.0);
                store.put_device(&plain).unwrap();
                assert_eq!(store.device_generation(rec.id).unwrap(), Some(3));
                assert_eq!(store.device(rec.id).unwrap(), Some(plain));
            }
        }
        assert!(store.policy_states.is_empty() && store.far_syncs.is_empty());
        assert_eq!(store.device_count(), states.len() * syncs.len());
        assert_eq!(store.device(DeviceId(999)).unwrap(), None);
        assert_eq!(store.device_generation(DeviceId(999)).unwrap(), None);
        let mut seen = 0;
        store.for_each_device(&mut |_| seen += 1).unwrap();
        assert_eq!(seen, store.device_count());
    }

    /// A report's commit changes the device's fields it names and no other,
    /// whatever the record holds (side entries included).
    #[test]
    fn a_report_commit_changes_only_its_fields() {
        let mut failed = heapless::Vec::new();
        failed.push(SettingFailure { key: 4, reason: 2 }).unwrap();
        let partial = PolicyState::PartiallyApplied { version: 9, failed };
        let states = [PolicyState::Pending, partial.clone()];
        let syncs = [None, Some((Instant::MAX, SyncTrigger::Manual))];
        let applied = PolicyState::Applied { version: 10 };
        for state in &states {
            for sync in &syncs {
                for policy in [None, Some((10, None)), Some((10, Some(&applied)))] {
                    let mut store = MemoryStore::new();
                    let mut rec = record(5);
                    rec.policy_state = state.clone();
                    rec.last_sync = *sync;
                    store.put_device(&rec).unwrap();
                    store.put_device(&record(6)).unwrap();
                    let seqs = ReportSeqs {
                        last_report_seq: 0,
                        last_task_seq: 18,
                    };
                    let commit = ReportCommit {
                        device: rec.id,
                        seqs,
                        policy_version: policy.map(|p| p.0),
                        policy_state: policy.and_then(|p| p.1),
                        task: None,
                        compliance: None,
                    };
                    assert_eq!(
                        store.report_seqs(rec.id).unwrap(),
                        Some(ReportSeqs::of(&rec))
                    );
                    store.commit_report(commit).unwrap();
                    let mut want = rec.clone();
                    (want.last_report_seq, want.last_task_seq) = (0, 18);
                    if let Some((version, state)) = policy {
                        want.policy_version = version;
                        if let Some(s) = state {
                            want.policy_state = s.clone();
                        }
                    }
                    assert_eq!(store.device(rec.id).unwrap(), Some(want.clone()));
                    assert_eq!(store.report_seqs(rec.id).unwrap(), Some(seqs));
                    assert_eq!(store.device(DeviceId(6)).unwrap(), Some(record(6)));
                    // A side entry the new state no longer needs is dropped.
                    let aside = !matches!(
                        want.policy_state,
                        PolicyState::Pending | PolicyState::Applied { version: 10 }
                    );
                    assert_eq!(store.policy_states.len(), usize::from(aside), "{want:?}");
                }
            }
        }
        // A device that is gone is not written.
        let mut store = MemoryStore::new();
        let commit = ReportCommit {
            device: DeviceId(1),
            seqs: ReportSeqs::of(&record(1)),
            policy_version: Some(1),
            policy_state: None,
            task: None,
            compliance: None,
        };
        store.commit_report(commit).unwrap();
        assert_eq!(store.device_count(), 0);
        assert_eq!(store.report_seqs(DeviceId(1)).unwrap(), None);
    }
}

#[cfg(test)]
mod task_report_tests {
    use super::*;

    /// A `MemoryStore` that keeps the trait's default `commit_task_report`
    /// and hints (but records the push-target hints it gets).
    struct Plain(MemoryStore, core::cell::RefCell<Vec<DeviceId>>);

    impl Plain {
        fn new() -> Self {
            Plain(MemoryStore::new(), Default::default())
        }
    }

    impl FleetStore for Plain {
        type Error = MemoryStoreError;
        fn device(&self, id: DeviceId) -> Result<Option<DeviceRecord>, MemoryStoreError> {
            self.0.device(id)
        }
        fn put_device(&mut self, rec: &DeviceRecord) -> Result<(), MemoryStoreError> {
            self.0.put_device(rec)
        }
        fn push_target(
            &self,
            id: DeviceId,
        ) -> Result<Option<(Platform, PushToken)>, MemoryStoreError> {
            self.0.push_target(id)
        }
        fn set_push_target(
            &mut self,
            id: DeviceId,
            p: Platform,
            t: &str,
        ) -> Result<bool, MemoryStoreError> {
            self.0.set_push_target(id, p, t)
        }
        fn remove_push_target(&mut self, id: DeviceId) -> Result<bool, MemoryStoreError> {
            self.0.remove_push_target(id)
        }
        fn retire_device(&mut self, id: DeviceId) -> Result<bool, MemoryStoreError> {
            self.0.retire_device(id)
        }
        fn retired_generation(&self, id: DeviceId) -> Result<Option<u32>, MemoryStoreError> {
            self.0.retired_generation(id)
        }
        fn task(&self, id: TaskId) -> Result<Option<TaskRecord>, MemoryStoreError> {
            self.0.task(id)
        }
        fn put_task(&mut self, rec: &TaskRecord) -> Result<(), MemoryStoreError> {
            self.0.put_task(rec)
        }
        fn open_tasks(
            &self,
            device: DeviceId,
            out: &mut Vec<TaskId>,
        ) -> Result<(), MemoryStoreError> {
            self.0.open_tasks(device, out)
        }
        fn open_task_count(&self, device: DeviceId) -> Result<usize, MemoryStoreError> {
            self.0.open_task_count(device)
        }
        fn next_task_id(&mut self) -> Result<TaskId, MemoryStoreError> {
            self.0.next_task_id()
        }
        fn policy(&self, device: DeviceId) -> Result<Option<Policy>, MemoryStoreError> {
            self.0.policy(device)
        }
        fn put_policy(
            &mut self,
            device: DeviceId,
            policy: &Policy,
        ) -> Result<(), MemoryStoreError> {
            self.0.put_policy(device, policy)
        }
        fn commit_report(&mut self, commit: ReportCommit<'_>) -> Result<(), MemoryStoreError> {
            self.0.commit_report(commit)
        }
        fn for_each_device(
            &self,
            f: &mut dyn FnMut(&DeviceRecord),
        ) -> Result<(), MemoryStoreError> {
            self.0.for_each_device(f)
        }
        fn for_each_task(&self, f: &mut dyn FnMut(&TaskRecord)) -> Result<(), MemoryStoreError> {
            self.0.for_each_task(f)
        }
        fn prefetch_push_target(&self, id: DeviceId) {
            self.1.borrow_mut().push(id);
        }
    }

    /// A store that keeps the default hints still gets its push-target hint
    /// for a task queued for an offline device: at once when the device was
    /// not hinted, through the default `prefetch_device_again` when it was
    /// (the engine then skips its own).
    #[test]
    fn a_store_with_the_default_hints_gets_its_push_target_hint() {
        use crate::server::{Server, ServerConfig};
        let mut s = Server::new(ServerConfig::default(), Plain::new(), [1; 32], [2; 32]);
        let t0 = Instant::from_millis(1);
        for d in 1..=4 {
            s.enroll(DeviceId(d), t0).unwrap();
        }
        let hinted = |s: &Server<Plain>| s.store().1.borrow().clone();
        s.enqueue_task(DeviceId(1), TaskKind::Lock, Default::default(), t0)
            .unwrap();
        assert_eq!(hinted(&s), [DeviceId(1)], "not hinted: asked for once");
        s.store().1.borrow_mut().clear();
        for d in [2, 3, 4] {
            s.prefetch_device(DeviceId(d));
        }
        assert_eq!(hinted(&s), [DeviceId(2)], "the second hint, two hints on");
        s.enqueue_task(DeviceId(2), TaskKind::Lock, Default::default(), t0)
            .unwrap();
        assert_eq!(
            hinted(&s),
            [DeviceId(2)],
            "asked for by the hint, not again"
        );
        s.enqueue_task(DeviceId(4), TaskKind::Lock, Default::default(), t0)
            .unwrap();
        let want = [DeviceId(2), DeviceId(4)];
        assert_eq!(hinted(&s), want, "a first hint only: asked for at the task");
    }

    /// `push_target_into` answers as `push_target` does, over a token that
    /// held something else: `MemoryStore`'s own and the trait's default
    /// (`Plain`), for the longest token, a short one written over a longer
    /// one, a removed one and none.
    #[test]
    fn push_target_into_is_push_target() {
        fn check<S: FleetStore<Error = MemoryStoreError>>(mut store: S) {
            let longest: alloc::string::String = (0..PUSH_TOKEN_MAX)
                .map(|i| (b'a' + i as u8 % 26) as char)
                .collect();
            store
                .set_push_target(DeviceId(1), Platform::Ios, &longest)
                .unwrap();
            store
                .set_push_target(DeviceId(2), Platform::Ios, &longest)
                .unwrap();
            store
                .set_push_target(DeviceId(2), Platform::Android, "tok")
                .unwrap();
            store
                .set_push_target(DeviceId(3), Platform::Android, "gone")
                .unwrap();
            store.remove_push_target(DeviceId(3)).unwrap();
            let mut held = 0;
            for d in 1..=4 {
                let want = store.push_target(DeviceId(d)).unwrap();
                let mut token = PushToken::try_from("something else held before").unwrap();
                let platform = store.push_target_into(DeviceId(d), &mut token).unwrap();
                let got = platform.map(|p| (p, token));
                assert_eq!(got, want, "device {d}");
                held += usize::from(want.is_some());
            }
            assert_eq!(held, 2);
            let two = store.push_target(DeviceId(2)).unwrap();
            assert_eq!(
                two.as_ref().map(|(p, t)| (*p, t.as_str())),
                Some((Platform::Android, "tok"))
            );
        }
        check(MemoryStore::new());
        check(Plain::new());
    }

    fn task(id: u64, device: u64, state: TaskState) -> TaskRecord {
        TaskRecord {
            id: TaskId(id),
            device: DeviceId(device),
            generation: 0,
            kind: TaskKind::Lock,
            state,
            seq: id as u32,
            cancel_requested: false,
            deferred_in: 0,
            supersede: None,
            expires_at: None,
            created_at: Instant::ZERO,
            finished_at: None,
        }
    }

    /// `MemoryStore`'s own `commit_task_report` leaves the store as the
    /// trait's default does (a read, then `commit_report`), and returns the
    /// same: for every pair of stored and new state, a change refused by
    /// `update`, and a task that is not there.
    #[test]
    fn the_memory_store_commits_a_task_report_as_the_default_does() {
        let states = [
            TaskState::Queued,
            TaskState::Offered,
            TaskState::Delivered,
            TaskState::Succeeded { result: None },
            TaskState::Cancelled,
        ];
        for old in states {
            for new in states {
                for accept in [true, false] {
                    for id in [1, 2, 9] {
                        let (mut own, mut plain) = (MemoryStore::new(), Plain::new());
                        for store in [&mut own, &mut plain.0] {
                            store
                                .put_device(&DeviceRecord::new(DeviceId(5), 0))
                                .unwrap();
                            store.put_task(&task(1, 5, old)).unwrap();
                            store.put_task(&task(2, 5, TaskState::Queued)).unwrap();
                        }
                        let commit = ReportCommit {
                            device: DeviceId(5),
                            seqs: ReportSeqs {
                                last_report_seq: 1,
                                last_task_seq: 0,
                            },
                            policy_version: None,
                            policy_state: None,
                            task: None,
                            compliance: None,
                        };
                        let mut update = |t: &mut TaskRecord, seqs: &mut ReportSeqs| {
                            if accept && t.id == TaskId(1) {
                                t.state = new;
                                seqs.last_task_seq = t.seq;
                            }
                            accept && t.id == TaskId(1)
                        };
                        let a = own.commit_task_report(commit, TaskId(id), &mut update);
                        let b = plain.commit_task_report(commit, TaskId(id), &mut update);
                        assert_eq!(a, b);
                        let mut ids = (Vec::new(), Vec::new());
                        own.open_tasks(DeviceId(5), &mut ids.0).unwrap();
                        plain.open_tasks(DeviceId(5), &mut ids.1).unwrap();
                        assert_eq!(ids.0, ids.1, "{old:?} -> {new:?}");
                        for t in [1, 2, 9].map(TaskId) {
                            assert_eq!(own.task(t), plain.task(t));
                        }
                        assert_eq!(own.device(DeviceId(5)), plain.device(DeviceId(5)));
                    }
                }
            }
        }
    }

    /// `MemoryStore`'s own `put_new_task` (one lookup of the open list)
    /// stores or refuses as the trait's default does (a count, then
    /// `put_task`): below, at and above the limit, for a device with no open
    /// list, and for a task final at once (expired), which is counted but not
    /// listed.
    #[test]
    fn the_memory_store_puts_a_new_task_as_the_default_does() {
        let expired = TaskState::Expired;
        for open in 0..4 {
            for max in 0..5 {
                for state in [TaskState::Queued, TaskState::Offered, expired] {
                    let (mut own, mut plain) = (MemoryStore::new(), Plain::new());
                    for store in [&mut own, &mut plain.0] {
                        for id in 1..=open {
                            store.put_task(&task(id, 5, TaskState::Queued)).unwrap();
                        }
                        // A final task of the device and an open one of another.
                        store.put_task(&task(7, 5, expired)).unwrap();
                        store.put_task(&task(8, 6, TaskState::Queued)).unwrap();
                    }
                    let new = task(9, 5, state);
                    let stored = own.put_new_task(&new, max).unwrap();
                    assert_eq!(stored, plain.put_new_task(&new, max).unwrap());
                    assert_eq!(stored, open < max as u64, "{open} open, limit {max}");
                    for device in [5, 6].map(DeviceId) {
                        let mut ids = (Vec::new(), Vec::new());
                        own.open_tasks(device, &mut ids.0).unwrap();
                        plain.open_tasks(device, &mut ids.1).unwrap();
                        assert_eq!(ids.0, ids.1, "{open} open, limit {max}, {state:?}");
                    }
                    for t in [1, 2, 3, 7, 8, 9].map(TaskId) {
                        assert_eq!(own.task(t), plain.task(t));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod table_tests {
    use super::super::table::MAX_LOAD;
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap as StdMap;

    fn record(id: u64, n: u32) -> DeviceRecord {
        DeviceRecord {
            id: DeviceId(id),
            generation: n,
            last_report_seq: n.wrapping_mul(3),
            last_task_seq: n ^ 5,
            policy_version: n % 4,
            last_sync: (!n.is_multiple_of(3))
                .then(|| (Instant::from_millis(u64::from(n)), SyncTrigger::Boot)),
            policy_state: PolicyState::Pending,
        }
    }

    /// The store holds exactly what `model` holds, found one by one and
    /// visited all together.
    fn same(store: &MemoryStore, model: &StdMap<u64, DeviceRecord>, absent: &[u64]) {
        assert_eq!(store.device_count(), model.len());
        for (id, rec) in model {
            assert_eq!(store.device(DeviceId(*id)).unwrap().as_ref(), Some(rec));
            assert_eq!(
                store.device_generation(DeviceId(*id)).unwrap(),
                Some(rec.generation)
            );
        }
        for id in absent.iter().filter(|id| !model.contains_key(id)) {
            assert_eq!(store.device(DeviceId(*id)).unwrap(), None);
        }
        let mut seen = StdMap::new();
        store
            .for_each_device(&mut |r| assert!(seen.insert(r.id.0, r.clone()).is_none()))
            .unwrap();
        assert_eq!(&seen, model);
        // Never fuller than `MAX_LOAD`, and some slot is always free.
        let slots = store.devices.slots();
        assert!(model.len() * MAX_LOAD.1 <= slots * MAX_LOAD.0 || model.is_empty());
    }

    proptest! {
        /// Random inserts, updates, retirements and lookups against a map,
        /// from an empty store that grows and from one sized ahead.
        #[test]
        fn devices_match_a_map(
            sized in 0usize..40,
            ops in proptest::collection::vec((0u64..64, any::<u32>(), any::<bool>()), 0..300),
        ) {
            let mut store = if sized == 0 { MemoryStore::new() } else { MemoryStore::with_capacity(sized) };
            let mut model = StdMap::new();
            let absent: Vec<u64> = (0..64).chain([u64::MAX, 1 << 40]).collect();
            same(&store, &model, &absent);
            for (id, n, wide) in ops {
                // Some ids far apart, most in a small range (many updates).
                let id = if wide { id.wrapping_mul(0x9E37_79B9_7F4A_7C15) } else { id };
                if n % 7 == 0 {
                    // Retired: gone, but its generation kept until enrolled again.
                    let gone = model.remove(&id);
                    prop_assert_eq!(store.retire_device(DeviceId(id)).unwrap(), gone.is_some());
                    prop_assert_eq!(store.device(DeviceId(id)).unwrap(), None);
                    if let Some(rec) = gone {
                        prop_assert_eq!(store.retired_generation(DeviceId(id)).unwrap(), Some(rec.generation));
                    }
                    continue;
                }
                let rec = record(id, n);
                store.put_device(&rec).unwrap();
                prop_assert_eq!(store.retired_generation(DeviceId(id)).unwrap(), None);
                model.insert(id, rec);
                prop_assert_eq!(store.device(DeviceId(id)).unwrap(), model.get(&id).cloned());
            }
            same(&store, &model, &absent);
        }
    }

    /// A token of the longest length the wire allows is kept whole; a
    /// longer one from a direct caller is refused and the old one stays.
    #[test]
    fn push_tokens_up_to_the_wire_limit_are_kept() {
        let (mut store, d) = (MemoryStore::new(), DeviceId(3));
        let longest = "x".repeat(PUSH_TOKEN_MAX);
        store.set_push_target(d, Platform::Ios, &longest).unwrap();
        let held = store.push_target(d).unwrap().map(|(p, t)| (p, t.len()));
        assert_eq!(held, Some((Platform::Ios, PUSH_TOKEN_MAX)));
        let too_long = "y".repeat(PUSH_TOKEN_MAX + 1);
        store
            .set_push_target(d, Platform::Android, &too_long)
            .unwrap();
        let held = store
            .push_target(d)
            .unwrap()
            .map(|(p, t)| (p, t == longest.as_str()));
        assert_eq!(held, Some((Platform::Ios, true)));
        store
            .set_push_target(DeviceId(4), Platform::Android, &too_long)
            .unwrap();
        assert_eq!(store.push_target(DeviceId(4)).unwrap(), None);
    }

    proptest! {
        /// Random push targets set, removed and read against a map: a new
        /// token or platform replaces the old one, an empty token changes
        /// nothing, a removed one is gone until set again, and the answer
        /// says whether a target is held, for devices enrolled (or written
        /// again) before, after or never.
        #[test]
        fn push_targets_match_a_map(
            ops in proptest::collection::vec(
                (0u64..48, 0usize..4, any::<bool>(), 0u8..4), 0..300,
            ),
        ) {
            let tokens = ["", "a", "b", &"t".repeat(144)];
            let mut store = MemoryStore::new();
            let mut model = StdMap::new();
            for (id, token, ios, put) in ops {
                let platform = if ios { Platform::Ios } else { Platform::Android };
                let (id, token) = (id.wrapping_mul(0x9E37_79B9_7F4A_7C15), tokens[token]);
                if put == 0 {
                    store.put_device(&record(id, token.len() as u32)).unwrap();
                }
                if put == 3 && ios {
                    // The push service refused it: dropped until set again.
                    let held = store.remove_push_target(DeviceId(id)).unwrap();
                    prop_assert_eq!(held, model.remove(&id).is_some());
                    prop_assert_eq!(store.push_target(DeviceId(id)).unwrap(), None);
                    continue;
                }
                let has = store.set_push_target(DeviceId(id), platform, token).unwrap();
                if !token.is_empty() {
                    model.insert(id, (platform, PushToken::try_from(token).unwrap()));
                }
                prop_assert_eq!(has, model.contains_key(&id));
                store.prefetch_push_target(DeviceId(id));
                prop_assert_eq!(store.push_target(DeviceId(id)).unwrap(), model.get(&id).cloned());
            }
            for id in (0..48u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)) {
                prop_assert_eq!(store.push_target(DeviceId(id)).unwrap(), model.get(&id).cloned());
            }
            prop_assert_eq!(store.push.iter().filter(|t| t.held()).count(), model.len());
        }
    }

    /// Room reserved for devices and push targets takes them without a
    /// growth of either table (each growth copies its whole table while
    /// the engine waits), and every record and target reads back.
    #[test]
    fn reserved_room_takes_a_fleet_without_growing() {
        let mut store = MemoryStore::new();
        store.put_device(&record(7, 0)).unwrap();
        store
            .set_push_target(DeviceId(7), Platform::Ios, "first")
            .unwrap();
        store.reserve_devices(5_000);
        store.reserve_push_targets(5_000);
        let slots = (store.devices.slots(), store.push.slots());
        let token = "t".repeat(144);
        for id in 1_000..6_000u64 {
            store.put_device(&record(id, 0)).unwrap();
            store
                .set_push_target(DeviceId(id), Platform::Android, &token)
                .unwrap();
        }
        assert_eq!((store.devices.slots(), store.push.slots()), slots);
        let want = |t: &str| Some((Platform::Android, PushToken::try_from(t).unwrap()));
        assert!(
            (1_000..6_000u64).all(|id| store.push_target(DeviceId(id)).unwrap() == want(&token))
        );
        let first = Some((Platform::Ios, PushToken::try_from("first").unwrap()));
        assert_eq!(store.push_target(DeviceId(7)).unwrap(), first);
        assert_eq!(store.device_count(), 5_001);
    }

    /// Ids that all start their search in the same pair: they fill it, spill
    /// into the next ones (wrapping around the table's end) and survive the
    /// growths they cause, from the smallest table up.
    #[test]
    fn ids_colliding_in_the_table_are_all_kept() {
        for sized in [1, 2, 5, 16] {
            let mut store = MemoryStore::with_capacity(sized);
            let last = store.devices.slots() / 2 - 1;
            // The last pair: its overflow wraps to the first.
            let ids: Vec<u64> = (0..)
                .filter(|&id| store.devices.home(id) == last)
                .take(sized.max(2) * 3)
                .collect();
            let mut model = StdMap::new();
            for (n, id) in ids.iter().enumerate() {
                let rec = record(*id, n as u32);
                store.put_device(&rec).unwrap();
                model.insert(*id, rec);
                same(&store, &model, &ids);
            }
            for (n, id) in ids.iter().enumerate() {
                let rec = record(*id, n as u32 + 100);
                store.put_device(&rec).unwrap();
                model.insert(*id, rec);
            }
            same(&store, &model, &ids);
        }
    }
}

#[cfg(test)]
mod told_tests {
    use super::ToldIntervals;
    use crate::time::{Duration, Instant};

    const H: Duration = Duration::from_hours(1);
    const SLACK: Duration = Duration::from_mins(30);

    fn at(h: u64) -> Instant {
        Instant::from_millis(1_000_000_000) + Duration::from_hours(h)
    }

    /// No record: nothing known of earlier intervals; the new one is this
    /// engine's alone.
    #[test]
    fn without_a_record_nothing_earlier_is_known() {
        let (longest, rec) = ToldIntervals::after(None, H, at(0), at(0), SLACK);
        assert_eq!(longest, None);
        assert_eq!(rec.interval, H);
        assert_eq!(rec.earlier, Duration::ZERO);
        assert!(rec.earlier_until <= at(0));
    }

    /// 3 h, then 1 h at hour 0, then 1 h at hour 2 (the 3 h still counts:
    /// until hour 3.5), then 1 h at hour 4 (it no longer does).
    #[test]
    fn an_earlier_interval_counts_until_it_would_have_run_out() {
        let first = ToldIntervals::after(None, H.saturating_mul(3), at(0), at(0), SLACK).1;
        let (longest, second) = ToldIntervals::after(Some(&first), H, at(0), at(0), SLACK);
        assert_eq!(longest, Some(H.saturating_mul(3)));
        assert_eq!(second.earlier, H.saturating_mul(3));
        assert_eq!(second.earlier_until, at(3) + SLACK);
        let (longest, third) = ToldIntervals::after(Some(&second), H, at(2), at(2), SLACK);
        assert_eq!(longest, Some(H.saturating_mul(3)));
        assert_eq!(third.earlier_until, at(3) + SLACK);
        let (longest, fourth) = ToldIntervals::after(Some(&third), H, at(4), at(4), SLACK);
        assert_eq!(longest, Some(H));
        assert_eq!(fourth.earlier, H);
        assert_eq!(fourth.earlier_until, at(5) + SLACK);
    }

    /// A clock gone back across the restart (now before the record's
    /// instants, last syncs after now) keeps the earlier interval, and the
    /// old engine's counts from its latest sync. The earlier one counts at
    /// most its length and the slack past the latest sync or now, whichever
    /// is later (here from at(5): at(8), not the record's at(10)).
    #[test]
    fn a_clock_gone_back_keeps_the_earlier_interval() {
        let old = ToldIntervals {
            interval: H,
            earlier: H.saturating_mul(3),
            earlier_until: at(10),
        };
        let (longest, rec) = ToldIntervals::after(Some(&old), H, at(1), at(5), SLACK);
        assert_eq!(longest, Some(H.saturating_mul(3)));
        assert_eq!(rec.earlier_until, at(8) + SLACK);
        let (_, rec) = ToldIntervals::after(Some(&old), H, at(1), at(7), SLACK);
        assert_eq!(rec.earlier_until, at(10), "under the bound: kept as it is");
        let old = ToldIntervals {
            earlier_until: at(0),
            ..old
        };
        let (longest, rec) = ToldIntervals::after(Some(&old), H, at(1), at(5), SLACK);
        assert_eq!(longest, Some(H));
        assert_eq!(rec.earlier_until, at(6) + SLACK);
    }

    /// A record a store mangled (intervals of 0 or of the largest value,
    /// instants at the end of time) and extreme arguments: no overflow, and
    /// intervals read as the nearest of 1 min and 7 days, as devices read
    /// `periodic_s`.
    #[test]
    fn extreme_records_saturate_and_are_read_within_bounds() {
        let week = Duration::from_hours(7 * 24);
        let huge = ToldIntervals {
            interval: Duration::from_millis(u64::MAX),
            earlier: Duration::from_millis(u64::MAX),
            earlier_until: Instant::MAX,
        };
        let slack = Duration::from_millis(u64::MAX);
        let (longest, rec) =
            ToldIntervals::after(Some(&huge), H, Instant::ZERO, Instant::MAX, slack);
        assert_eq!(longest, Some(week));
        assert_eq!(rec.earlier_until, Instant::MAX);
        let (longest, _) = ToldIntervals::after(Some(&huge), H, Instant::MAX, Instant::MAX, slack);
        assert_eq!(longest, Some(week), "past the end: the old engine's own");
        let zero = ToldIntervals {
            interval: Duration::ZERO,
            earlier: Duration::ZERO,
            earlier_until: Instant::MAX,
        };
        let (longest, _) =
            ToldIntervals::after(Some(&zero), H, Instant::ZERO, Instant::ZERO, SLACK);
        assert_eq!(longest, Some(Duration::from_mins(1)));
    }
}
