//! Device configuration: identity, secret and timer settings.

use heapless::String;

use crate::auth::Secret;
use crate::time::Duration;
use crate::wire::{DeviceId, Platform, PUSH_TOKEN_MAX};

/// Timer settings of the device engine. `Default` gives the documented values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DeviceTimers {
    /// Periodic sync interval, so lost pushes never strand work (3 h). The
    /// server may suggest another. Either is clamped to `1 min ..= 7 days`.
    pub periodic: Duration,
    /// Retry interval while a compliance event waits for its ack (1 min);
    /// not applied after the server refused the device itself (`AuthFailed`
    /// in answer to its proof, a version mismatch), which the plain backoff
    /// retries.
    pub compliance_retry: Duration,
    /// How long a connection attempt may take (20 s).
    pub connect_timeout: Duration,
    /// How long to wait for the server's next message when one is due (30 s).
    /// Waiting ends `linger + 3 × response_timeout` after the transport
    /// opened at the latest, however often frames come.
    pub response_timeout: Duration,
    /// How long a session stays open for tasks still running locally, so that
    /// their progress and final status go out at once (45 s).
    pub linger: Duration,
    /// First retry delay after a failed sync; doubles per failure (5 s).
    pub backoff_min: Duration,
    /// Cap of the retry delay (30 min). Each delay is jittered down to half
    /// (by at most 2^32 - 1 ms, 49 days, for longer delays).
    pub backoff_max: Duration,
}

impl Default for DeviceTimers {
    fn default() -> Self {
        Self {
            periodic: Duration::from_hours(3),
            compliance_retry: Duration::from_mins(1),
            connect_timeout: Duration::from_secs(20),
            response_timeout: Duration::from_secs(30),
            linger: Duration::from_secs(45),
            backoff_min: Duration::from_secs(5),
            backoff_max: Duration::from_mins(30),
        }
    }
}

/// Everything a device needs to know before its first sync.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    /// The identity assigned at enrollment.
    pub id: DeviceId,
    /// Enrollment generation (a re-enrolled device gets a new one).
    pub generation: u32,
    /// The per-device secret shared with the server. Never logged.
    pub secret: Secret,
    /// Android or iOS.
    pub platform: Platform,
    /// The current push token, sent to the server until it confirms it
    /// (once per boot), then again once per periodic interval (PROTOCOL.md
    /// 7.2); see [`Device::set_push_token`](super::Device::set_push_token)
    /// for a change while running.
    pub push_token: String<PUSH_TOKEN_MAX>,
    /// Timer settings.
    pub timers: DeviceTimers,
    /// Seed for retry jitter (use something per device, such as its id mixed
    /// with a boot counter). Jitter needs no cryptographic quality.
    pub jitter_seed: u64,
}

impl DeviceConfig {
    /// A configuration with default timers and no push token.
    pub fn new(id: DeviceId, generation: u32, secret: Secret, platform: Platform) -> Self {
        Self {
            id,
            generation,
            secret,
            platform,
            push_token: String::new(),
            timers: DeviceTimers::default(),
            jitter_seed: id.0 ^ 0x9E37_79B9_7F4A_7C15,
        }
    }
}

// By hand, not derived: the secret and the push token never reach a log.
#[cfg(feature = "defmt")]
impl defmt::Format for DeviceConfig {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(
            f,
            "DeviceConfig {{ id: {}, generation: {}, platform: {}, timers: {}, secret: <redacted> }}",
            self.id,
            self.generation,
            self.platform,
            self.timers
        );
    }
}

// By hand, not derived: `{:?}` of a config (or of a `Device`) must not print
// the secret or the push token.
impl core::fmt::Debug for DeviceConfig {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DeviceConfig")
            .field("id", &self.id)
            .field("generation", &self.generation)
            .field("secret", &"<redacted>")
            .field("platform", &self.platform)
            .field("push_token", &"<redacted>")
            .field("timers", &self.timers)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_secret_and_token() {
        let mut c = DeviceConfig::new(DeviceId(1), 0, [0xAB; 32], Platform::Ios);
        c.push_token = String::try_from("tok-123").unwrap();
        let s = std::format!("{c:?}");
        assert!(
            !s.contains("171") && !s.contains("AB") && !s.contains("tok-123"),
            "{s}"
        );
    }
}
