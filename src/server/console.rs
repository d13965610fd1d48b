//! Console queries: one device, or the whole fleet.

use alloc::vec::Vec;

use super::{
    FleetStore, PolicyState, PushState, Result, Server, ServerError, TaskRecord, TaskState,
};
use crate::time::Instant;
use crate::wire::{DeviceId, SyncTrigger, TaskId};

/// Task counts by state, as the console shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskCounts {
    /// Queued or push sent: waiting for the device.
    pub waiting: usize,
    /// Offered, delivered or in progress.
    pub on_device: usize,
    /// Deferred by the device ("not now").
    pub deferred: usize,
    /// Succeeded.
    pub succeeded: usize,
    /// Failed (with a reason).
    pub failed: usize,
    /// Cancelled before they finished.
    pub cancelled: usize,
    /// Finished although a cancel was requested (cancel came too late).
    pub too_late_to_cancel: usize,
    /// Expired before delivery.
    pub expired: usize,
    /// Replaced by a newer task with the same key.
    pub superseded: usize,
    /// Dropped by re-enrollment or retirement.
    pub dropped: usize,
}

impl TaskCounts {
    fn add(&mut self, t: &TaskRecord) {
        match t.state {
            TaskState::Queued | TaskState::PushSent => self.waiting += 1,
            TaskState::Offered | TaskState::Delivered | TaskState::InProgress { .. } => {
                self.on_device += 1
            }
            TaskState::Deferred { .. } => self.deferred += 1,
            TaskState::Succeeded { .. } => self.succeeded += 1,
            TaskState::Failed { .. } => self.failed += 1,
            TaskState::Cancelled => self.cancelled += 1,
            TaskState::Expired => self.expired += 1,
            TaskState::Superseded { .. } => self.superseded += 1,
            TaskState::Dropped => self.dropped += 1,
        }
        if t.cancel_too_late() {
            self.too_late_to_cancel += 1;
        }
    }
}

/// One device as the console shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceView {
    /// The device.
    pub id: DeviceId,
    /// Enrollment generation.
    pub generation: u32,
    /// Connected right now.
    pub online: bool,
    /// Missed its promised check-in.
    pub overdue: bool,
    /// Last handshake and its trigger.
    pub last_sync: Option<(Instant, SyncTrigger)>,
    /// Assigned policy version (0: none).
    pub policy_assigned: u32,
    /// How the device took its policy.
    pub policy_state: PolicyState,
    /// Its tasks that are not final, oldest first.
    pub open_tasks: Vec<TaskRecord>,
}

/// The whole fleet in numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FleetView {
    /// Enrolled devices.
    pub devices: usize,
    /// Connected right now.
    pub online: usize,
    /// Overdue devices.
    pub overdue: usize,
    /// Devices whose last report is for their assigned policy version,
    /// or that have none assigned.
    pub on_latest_policy: usize,
    /// Devices by policy state: applied, partially applied, rejected, pending.
    pub policy_applied: usize,
    /// See `policy_applied`.
    pub policy_partial: usize,
    /// See `policy_applied`.
    pub policy_rejected: usize,
    /// See `policy_applied`.
    pub policy_pending: usize,
    /// Devices by the trigger of their last sync ([`SyncTrigger::index`]).
    pub last_trigger: [usize; 6],
    /// All tasks, final ones included, by state.
    pub tasks: TaskCounts,
}

impl<S: FleetStore> Server<S> {
    /// One task's record.
    pub fn task(&self, id: TaskId) -> Result<Option<TaskRecord>, S> {
        Ok(self.store.task(id)?)
    }

    /// A task's state, if it exists and belongs to `device`.
    pub fn task_state(&self, device: DeviceId, id: TaskId) -> Option<TaskState> {
        let t = self.store.task(id).ok().flatten()?;
        (t.device == device).then_some(t.state)
    }

    /// Whether a device is overdue.
    pub fn is_overdue(&self, device: DeviceId) -> bool {
        self.pushes.get(&device).is_some_and(PushState::is_overdue)
    }

    /// Devices overdue right now.
    pub fn overdue_devices(&self) -> Vec<DeviceId> {
        let devices = self.pushes.iter().filter(|(_, p)| p.is_overdue());
        devices.map(|(id, _)| id).collect()
    }

    /// One device as the console shows it.
    pub fn device_view(&self, id: DeviceId) -> Result<DeviceView, S> {
        let rec = self.store.device(id)?.ok_or(ServerError::UnknownDevice)?;
        let mut ids = Vec::new();
        self.store.open_tasks(id, &mut ids)?;
        let mut open_tasks = Vec::with_capacity(ids.len());
        for tid in ids {
            open_tasks.extend(self.store.task(tid)?);
        }
        Ok(DeviceView {
            id,
            generation: rec.generation,
            online: self.online.contains_key(&id),
            overdue: self.is_overdue(id),
            last_sync: rec.last_sync,
            policy_assigned: self.store.policy_version(id)?.unwrap_or(0),
            policy_state: rec.policy_state,
            open_tasks,
        })
    }

    /// The whole fleet in numbers (one pass over the store).
    pub fn fleet_view(&self) -> Result<FleetView, S> {
        let mut v = FleetView {
            online: self.online.len(),
            ..FleetView::default()
        };
        let mut err = None;
        self.store.for_each_device(&mut |d| {
            v.devices += 1;
            v.overdue += usize::from(self.is_overdue(d.id));
            if let Some((_, t)) = d.last_sync {
                v.last_trigger[t.index()] += 1;
            }
            match &d.policy_state {
                PolicyState::Applied { .. } => v.policy_applied += 1,
                PolicyState::PartiallyApplied { .. } => v.policy_partial += 1,
                PolicyState::Rejected { .. } => v.policy_rejected += 1,
                PolicyState::Pending => v.policy_pending += 1,
            }
            match self.store.policy(d.id) {
                Ok(p) => {
                    let assigned = p.map_or(0, |p| p.version);
                    v.on_latest_policy += usize::from(d.policy_version == assigned);
                }
                Err(e) => err = Some(e),
            }
        })?;
        if let Some(e) = err {
            return Err(ServerError::Store(e));
        }
        self.store.for_each_task(&mut |t| v.tasks.add(t))?;
        Ok(v)
    }
}
