//! Every message of both directions.
//!
//! Sizes are bounded by the protocol constants in [`crate::wire`]: strings and
//! lists are `heapless` types, so a decoder never allocates and a peer cannot
//! make the other side buffer more than [`MAX_PAYLOAD`](super::MAX_PAYLOAD)
//! bytes for one message. Field order is part of the wire format (postcard
//! encodes structs as their fields in order, enums as a varint tag first).

use heapless::{String, Vec};
use serde::{Deserialize, Serialize};

use super::{MAX_POLICY_FAILURES, MAX_SETTINGS, PUSH_TOKEN_MAX};

/// A device's identity, assigned at enrollment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DeviceId(pub u64);

/// A task's identity, unique per server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TaskId(pub u64);

/// The mobile platform, which decides the push service (FCM or APNs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Platform {
    /// Android: pushes go through FCM.
    Android,
    /// iOS: pushes go through APNs.
    Ios,
}

/// Why a device started a sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SyncTrigger {
    /// A "sync now" push arrived.
    Push,
    /// The periodic timer fired.
    Periodic,
    /// A compliance event is waiting to be acknowledged.
    Compliance,
    /// The user pressed "synchronize".
    Manual,
    /// First sync after boot.
    Boot,
    /// A task status waits to be reported, or a task's "retry after" came due.
    Report,
}

impl SyncTrigger {
    /// All triggers, in the order of their wire tags.
    pub const ALL: [SyncTrigger; 6] = [
        SyncTrigger::Push,
        SyncTrigger::Periodic,
        SyncTrigger::Compliance,
        SyncTrigger::Manual,
        SyncTrigger::Boot,
        SyncTrigger::Report,
    ];

    /// Position in [`SyncTrigger::ALL`], for counting per trigger.
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// What a task asks the device to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TaskKind {
    /// Lock the screen.
    Lock,
    /// Unlock the screen.
    Unlock,
    /// Scan for malware; long-running, reports progress.
    Scan,
    /// Report the device's location; long-running.
    Locate,
    /// Erase the device.
    Wipe,
}

impl TaskKind {
    /// All kinds, in the order of their wire tags.
    pub const ALL: [TaskKind; 5] = [
        TaskKind::Lock,
        TaskKind::Unlock,
        TaskKind::Scan,
        TaskKind::Locate,
        TaskKind::Wipe,
    ];
}

/// A task offered to a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Task {
    /// Delivery sequence number: the device accepts exactly `last + 1`.
    pub seq: u32,
    /// The task's identity, used in status reports.
    pub id: TaskId,
    /// What to do.
    pub kind: TaskKind,
}

/// A small result carried by a successful task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TaskResult {
    /// Where the device is, in degrees times 10^7, and how sure it is.
    Location {
        /// Latitude in 1e-7 degrees.
        lat_e7: i32,
        /// Longitude in 1e-7 degrees.
        lon_e7: i32,
        /// Accuracy radius in metres.
        accuracy_m: u32,
    },
    /// Outcome of a malware scan.
    Scan {
        /// Threats found.
        threats: u16,
    },
}

/// A task's status as reported by the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TaskStatus {
    /// The device accepted the task (sent by the engine itself).
    Received,
    /// Done.
    Succeeded {
        /// An optional small result, such as a location.
        result: Option<TaskResult>,
    },
    /// Could not be done; `reason` is an application code (see [`reason`]).
    Failed {
        /// Why; codes below 256 are reserved by this crate.
        reason: u16,
    },
    /// "Not now": the device did not run the task and wants it offered again.
    Deferred {
        /// Seconds after which the device will sync again by itself.
        retry_after_s: Option<u32>,
    },
    /// Stopped at the server's request before it finished.
    Cancelled,
}

impl TaskStatus {
    /// Whether this status ends the task on the device (all but `Received`).
    pub const fn is_final(&self) -> bool {
        !matches!(self, TaskStatus::Received)
    }
}

/// Failure reason codes reserved by the crate (application codes start at 256).
pub mod reason {
    /// The device rebooted while the task ran; it is not run again.
    pub const INTERRUPTED_BY_REBOOT: u16 = 1;
    /// The device does not support this task kind.
    pub const UNSUPPORTED: u16 = 2;
    /// Set by the server: the device came back without its state (its task
    /// ledger went backwards), so whether it ran the task is unknown. The task
    /// is not offered again, to keep "at most once".
    pub const DEVICE_STATE_LOST: u16 = 3;
}

/// A compliance event raised on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ComplianceEvent {
    /// The user changed a managed profile by hand.
    ProfileChanged,
    /// Device-administrator rights were granted or revoked.
    DeviceAdminChanged {
        /// Whether the agent is now a device administrator.
        active: bool,
    },
    /// The user visited a web page blocked by policy.
    BlockedPageVisited {
        /// Category of the blocked page (application-defined).
        category: u16,
    },
    /// The lock-screen password was not changed by its due date.
    PasswordOverdue {
        /// Days past the due date.
        days: u16,
    },
    /// Malware is still present one hour after detection.
    MalwarePersisting {
        /// Number of threats still present.
        threats: u16,
    },
    /// USB debugging was switched on or off.
    UsbDebugging {
        /// The new state.
        enabled: bool,
    },
    /// Results of a scan the user started by hand.
    ManualScanResult {
        /// Threats found.
        threats: u16,
    },
}

/// One setting of a policy: a key and an integer value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Setting {
    /// Application-defined setting key.
    pub key: u16,
    /// The value.
    pub value: i64,
}

/// A versioned policy: the whole set of settings, not a diff.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Policy {
    /// Version; a device converges to the highest it has been assigned.
    pub version: u32,
    /// Up to [`MAX_SETTINGS`] settings.
    pub settings: Vec<Setting, MAX_SETTINGS>,
}

/// A setting the device could not apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SettingFailure {
    /// The setting's key.
    pub key: u16,
    /// Application-defined reason code.
    pub reason: u16,
}

/// How a policy version went on the device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PolicyOutcome {
    /// Every setting applied.
    Applied,
    /// Applied except for the listed settings.
    Partial {
        /// Up to [`MAX_POLICY_FAILURES`] settings that failed.
        failed: Vec<SettingFailure, MAX_POLICY_FAILURES>,
    },
    /// Not applied at all.
    Rejected {
        /// Application-defined reason code.
        reason: u16,
    },
}

/// The device's report on one policy version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PolicyReport {
    /// The version this is about.
    pub version: u32,
    /// What happened.
    pub outcome: PolicyOutcome,
}

/// The body of a report in the device's outbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ReportBody {
    /// A task's status changed.
    Task {
        /// Which task.
        task: TaskId,
        /// Its new status.
        status: TaskStatus,
    },
    /// A compliance event.
    Compliance(ComplianceEvent),
    /// The outcome of a policy version.
    Policy(PolicyReport),
}

/// The first message of every session, from the device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Hello {
    /// Protocol version the device speaks. Must stay the first field.
    pub version: u16,
    /// This connection's number: a value the device never sent before, so
    /// that a `Challenge` answering an earlier connection is recognised
    /// (PROTOCOL.md 6.1). The reference device counts up from its boot
    /// snapshot's counter times 2^32.
    pub attempt: u64,
    /// Who the device claims to be (proven by the following [`Up::Proof`]).
    pub device: DeviceId,
    /// Enrollment generation the device belongs to.
    pub generation: u32,
    /// Android or iOS.
    pub platform: Platform,
    /// Token for the platform's push service, or empty: the device has none,
    /// or the server has it already. The reference device sends its token
    /// only until a `Welcome` confirms it (PROTOCOL.md 7.2): in the first
    /// session after boot, after the token changed, and after a `Welcome`
    /// asked for it ([`Down::Welcome`]'s `want_token`). An empty token leaves
    /// the stored one as it is.
    pub push_token: String<PUSH_TOKEN_MAX>,
    /// Why the device connected.
    pub trigger: SyncTrigger,
    /// Highest task delivery sequence the device has accepted.
    pub last_task_seq: u32,
    /// Highest policy version the device has applied or rejected.
    pub policy_version: u32,
}

/// Messages from device to server.
// reason: a `Hello` (its push token inline) is the largest message, over the
// lint's bound on 32-bit targets; boxing it would need an allocator, and the
// engines build it once per sync.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Up {
    /// Opens a session. Must stay variant 0.
    Hello(Hello),
    /// Proof over the server's nonce and the `Hello`: one SHA-256 compression
    /// keyed by the device's secret (see [`crate::auth`]).
    Proof {
        /// The MAC.
        mac: [u8; 32],
    },
    /// Progress of a running task. Best effort: not sequenced, not
    /// acknowledged, coalesced to the latest value on the device.
    Progress {
        /// Which task.
        task: TaskId,
        /// 0..=100 when known.
        percent: Option<u8>,
    },
    /// One report from the outbox; `seq` increases by one per report.
    Report {
        /// Report sequence number, per device, from 1.
        seq: u32,
        /// What is reported.
        body: ReportBody,
    },
}

/// Error codes the server sends before it closes a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ErrorCode {
    /// The server does not speak the device's protocol version. Frozen across
    /// versions: tag 0 of `ErrorCode`, inside tag 7 of `Down`.
    VersionMismatch {
        /// The version the server speaks.
        supported: u16,
    },
    /// Identity not proven. Says nothing about why (unknown device, wrong
    /// proof, old enrollment generation all look the same).
    AuthFailed,
    /// A message that does not fit the session's state, or does not decode.
    BadMessage,
    /// A report sequence number skipped ahead. (A device that sees a task
    /// sequence gap closes the session itself; it sends no frame.)
    SequenceGap,
    /// The session was idle too long.
    Timeout,
    /// The server is at a configured bound; try again later.
    Busy,
}

/// Messages from server to device.
// reason: a policy is the largest message; boxing it would need an allocator,
// and a decoded message lives on the stack only while it is handled.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Down {
    /// Answer to [`Up::Hello`]: the server's version and a fresh nonce.
    /// Must stay variant 0, with the version first (frozen across versions).
    Challenge {
        /// Protocol version the server speaks.
        version: u16,
        /// [`Hello::attempt`] of the `Hello` this answers, echoed.
        attempt: u64,
        /// Single-use nonce for the proof.
        #[serde(deserialize_with = "byte_array")]
        nonce: [u8; 16],
    },
    /// The proof was good; the sync starts.
    Welcome {
        /// Highest report sequence the server has stored.
        ack: u32,
        /// Periodic sync interval the server suggests, in seconds (0: keep).
        periodic_s: u32,
        /// The server holds no push token for the device (the `Hello` had
        /// none, or it could not be stored): send it in the next `Hello`.
        want_token: bool,
    },
    /// Reports up to and including `seq` are stored durably.
    Ack {
        /// Highest stored report sequence.
        seq: u32,
    },
    /// A task to run.
    Task(Task),
    /// Stop a delivered task if it is still running.
    Cancel {
        /// Which task.
        task: TaskId,
    },
    /// A newer policy.
    Policy(Policy),
    /// Nothing more is pending for the device right now.
    SyncEnd,
    /// The session failed; the server closes it after this. Must stay
    /// variant 7 (frozen across versions, so any peer can read it).
    Error(ErrorCode),
}

/// Reads a `[u8; N]` as serde's own impl does (a tuple of `N` bytes, the
/// same accepted inputs and errors), in a loop: serde's impl reads each
/// element in code of its own, about 0.4 KB of Cortex-M flash for the
/// `Challenge` nonce alone.
fn byte_array<'de, D, const N: usize>(d: D) -> Result<[u8; N], D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Bytes<const N: usize>;

    impl<'de, const N: usize> serde::de::Visitor<'de> for Bytes<N> {
        type Value = [u8; N];

        fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            write!(f, "an array of length {N}")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; N], A::Error> {
            let mut out = [0u8; N];
            for (i, b) in out.iter_mut().enumerate() {
                *b = seq
                    .next_element()?
                    .ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
            }
            Ok(out)
        }
    }

    d.deserialize_tuple(N, Bytes::<N>)
}
