//! `Arbitrary` stand-ins for the wire types (the library does not depend on
//! `arbitrary`), converted into the real ones. They hold no `Vec` or `String`:
//! `arbitrary` reads lengths from the end of the input, which would eat the
//! tail of a script; lists are a count plus a pattern instead.

use arbitrary::Arbitrary;
use mdm_sync::wire::{
    ComplianceEvent, DeviceId, Down, ErrorCode, Hello, Platform, Policy, PolicyOutcome,
    PolicyReport, ReportBody, Setting, SettingFailure, SyncTrigger, Task, TaskId, TaskKind,
    TaskResult, TaskStatus, Up, MAX_POLICY_FAILURES, MAX_SETTINGS, PROTOCOL_VERSION,
};

/// A task kind by index.
pub fn kind(k: u8) -> TaskKind {
    TaskKind::ALL[usize::from(k) % TaskKind::ALL.len()]
}

/// A sync trigger by index.
pub fn trigger(k: u8) -> SyncTrigger {
    SyncTrigger::ALL[usize::from(k) % SyncTrigger::ALL.len()]
}

/// A policy of `n` settings (more than the bound are cut) in a pattern.
pub fn policy(version: u32, n: u8, key: u16, value: i64) -> Policy {
    let mut settings = heapless::Vec::new();
    for i in 0..usize::from(n).min(MAX_SETTINGS) {
        let s = Setting {
            key: key.wrapping_add(i as u16),
            value: value ^ i as i64,
        };
        let _ = settings.push(s);
    }
    Policy { version, settings }
}

/// A compliance event.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum FCompliance {
    /// See [`ComplianceEvent`].
    ProfileChanged,
    /// See [`ComplianceEvent`].
    DeviceAdmin(bool),
    /// See [`ComplianceEvent`].
    Blocked(u16),
    /// See [`ComplianceEvent`].
    Password(u16),
    /// See [`ComplianceEvent`].
    Malware(u16),
    /// See [`ComplianceEvent`].
    Usb(bool),
    /// See [`ComplianceEvent`].
    Scan(u16),
}

impl From<FCompliance> for ComplianceEvent {
    fn from(f: FCompliance) -> Self {
        match f {
            FCompliance::ProfileChanged => ComplianceEvent::ProfileChanged,
            FCompliance::DeviceAdmin(active) => ComplianceEvent::DeviceAdminChanged { active },
            FCompliance::Blocked(category) => ComplianceEvent::BlockedPageVisited { category },
            FCompliance::Password(days) => ComplianceEvent::PasswordOverdue { days },
            FCompliance::Malware(threats) => ComplianceEvent::MalwarePersisting { threats },
            FCompliance::Usb(enabled) => ComplianceEvent::UsbDebugging { enabled },
            FCompliance::Scan(threats) => ComplianceEvent::ManualScanResult { threats },
        }
    }
}

/// A task status.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum FStatus {
    /// See [`TaskStatus`].
    Received,
    /// Succeeded with no result.
    Succeeded,
    /// Succeeded with a location.
    Located(i32, i32, u32),
    /// Succeeded with a scan result.
    Scanned(u16),
    /// See [`TaskStatus`].
    Failed(u16),
    /// See [`TaskStatus`].
    Deferred(Option<u32>),
    /// See [`TaskStatus`].
    Cancelled,
}

impl From<FStatus> for TaskStatus {
    fn from(f: FStatus) -> Self {
        match f {
            FStatus::Received => TaskStatus::Received,
            FStatus::Succeeded => TaskStatus::Succeeded { result: None },
            FStatus::Located(lat_e7, lon_e7, accuracy_m) => TaskStatus::Succeeded {
                result: Some(TaskResult::Location {
                    lat_e7,
                    lon_e7,
                    accuracy_m,
                }),
            },
            FStatus::Scanned(threats) => TaskStatus::Succeeded {
                result: Some(TaskResult::Scan { threats }),
            },
            FStatus::Failed(reason) => TaskStatus::Failed { reason },
            FStatus::Deferred(retry_after_s) => TaskStatus::Deferred { retry_after_s },
            FStatus::Cancelled => TaskStatus::Cancelled,
        }
    }
}

/// A policy outcome.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum FOutcome {
    /// See [`PolicyOutcome`].
    Applied,
    /// Partial, with `n` failures in a pattern.
    Partial(u8, u16),
    /// See [`PolicyOutcome`].
    Rejected(u16),
}

impl From<FOutcome> for PolicyOutcome {
    fn from(f: FOutcome) -> Self {
        match f {
            FOutcome::Applied => PolicyOutcome::Applied,
            FOutcome::Partial(n, key) => {
                let mut failed = heapless::Vec::new();
                for i in 0..usize::from(n).min(MAX_POLICY_FAILURES) {
                    let key = key.wrapping_add(i as u16);
                    let _ = failed.push(SettingFailure { key, reason: 300 });
                }
                PolicyOutcome::Partial { failed }
            }
            FOutcome::Rejected(reason) => PolicyOutcome::Rejected { reason },
        }
    }
}

/// A report body.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum FBody {
    /// A task status; the task id is small so that it can hit real tasks.
    Task(u8, FStatus),
    /// A compliance event.
    Compliance(FCompliance),
    /// A policy report.
    Policy(u32, FOutcome),
}

impl From<FBody> for ReportBody {
    fn from(f: FBody) -> Self {
        match f {
            FBody::Task(id, status) => ReportBody::Task {
                task: TaskId(u64::from(id)),
                status: status.into(),
            },
            FBody::Compliance(e) => ReportBody::Compliance(e.into()),
            FBody::Policy(version, outcome) => ReportBody::Policy(PolicyReport {
                version,
                outcome: outcome.into(),
            }),
        }
    }
}

/// A server-to-device message.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum FDown {
    /// A challenge (version: the right one unless `Some`; attempt: the one
    /// of the session's `Hello` unless `Some(k)`, then `k + 1` before it, a
    /// stale one).
    Challenge(Option<u16>, [u8; 16], Option<u8>),
    /// See [`Down::Welcome`].
    Welcome(u32, u32, bool),
    /// See [`Down::Ack`].
    Ack(u32),
    /// A task with an arbitrary sequence.
    Task(u32, u16, u8),
    /// See [`Down::Cancel`].
    Cancel(u16),
    /// A policy: version, setting count, key and value patterns.
    Policy(u32, u8, u16, i64),
    /// See [`Down::SyncEnd`].
    SyncEnd,
    /// An error code by index.
    Error(u8, u16),
}

impl FDown {
    /// The message, for a session whose `Hello` carried `attempt`.
    pub fn to_down(self, attempt: u64) -> Down {
        match self {
            FDown::Challenge(version, nonce, stale) => Down::Challenge {
                version: version.unwrap_or(PROTOCOL_VERSION),
                attempt: stale.map_or(attempt, |k| attempt.wrapping_sub(u64::from(k) + 1)),
                nonce,
            },
            FDown::Welcome(ack, periodic_s, want_token) => Down::Welcome {
                ack,
                periodic_s,
                want_token,
            },
            FDown::Ack(seq) => Down::Ack { seq },
            FDown::Task(seq, id, k) => Down::Task(Task {
                seq,
                id: TaskId(u64::from(id)),
                kind: kind(k),
            }),
            FDown::Cancel(id) => Down::Cancel {
                task: TaskId(u64::from(id)),
            },
            FDown::Policy(version, n, key, value) => Down::Policy(policy(version, n, key, value)),
            FDown::SyncEnd => Down::SyncEnd,
            FDown::Error(code, supported) => Down::Error(match code % 6 {
                0 => ErrorCode::VersionMismatch { supported },
                1 => ErrorCode::AuthFailed,
                2 => ErrorCode::BadMessage,
                3 => ErrorCode::SequenceGap,
                4 => ErrorCode::Timeout,
                _ => ErrorCode::Busy,
            }),
        }
    }
}

/// A `Hello`: version (the right one unless `Some`), device, generation,
/// iOS?, token length and fill, trigger, last task seq, policy version,
/// attempt.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub struct FHello(
    pub Option<u16>,
    pub u8,
    pub u8,
    pub bool,
    pub u8,
    pub u8,
    pub u8,
    pub u32,
    pub u32,
    pub u64,
);

impl FHello {
    /// The device it claims to be (ids 0..=4, of which 1..=3 are enrolled).
    pub fn device(&self) -> DeviceId {
        DeviceId(u64::from(self.1 % 5))
    }

    /// The generation it claims.
    pub fn generation(&self) -> u32 {
        u32::from(self.2 % 3)
    }
}

impl From<FHello> for Hello {
    fn from(f: FHello) -> Self {
        let mut push_token = heapless::String::new();
        let fill = char::from(b'a' + f.5 % 26);
        for _ in 0..f.4 {
            if push_token.push(fill).is_err() {
                break;
            }
        }
        Hello {
            version: f.0.unwrap_or(PROTOCOL_VERSION),
            attempt: f.9,
            device: f.device(),
            generation: f.generation(),
            platform: if f.3 {
                Platform::Ios
            } else {
                Platform::Android
            },
            push_token,
            trigger: trigger(f.6),
            last_task_seq: f.7,
            policy_version: f.8,
        }
    }
}

/// A device-to-server message.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum FUp {
    /// See [`Up::Hello`].
    Hello(FHello),
    /// A proof that is almost surely wrong.
    Proof([u8; 32]),
    /// Progress of a (small) task id.
    Progress(u8, Option<u8>),
    /// A report with an arbitrary sequence.
    Report(u32, FBody),
}

impl From<FUp> for Up {
    fn from(f: FUp) -> Self {
        match f {
            FUp::Hello(h) => Up::Hello(h.into()),
            FUp::Proof(mac) => Up::Proof { mac },
            FUp::Progress(task, percent) => Up::Progress {
                task: TaskId(u64::from(task)),
                percent,
            },
            FUp::Report(seq, body) => Up::Report {
                seq,
                body: body.into(),
            },
        }
    }
}
