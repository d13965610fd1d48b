//! Clocks for the adapters: the engines read none, the adapters own one.
//!
//! An adapter turns its clock's reading into the engines' [`Instant`] and
//! turns the engines' deadlines back into wall-clock waits. [`ScaledClock`]
//! does both for a monotonic clock that may run faster than real time, which
//! is how a simulation makes a 3-hour timer fire within seconds.

use core::time::Duration as WallDuration;

use crate::time::Instant;

/// The longest single wait an adapter asks for; a deadline further away (or
/// "never") is re-checked after this long.
pub const MAX_WAIT: WallDuration = WallDuration::from_secs(3600);

/// A monotonic clock an adapter reads and waits on.
pub trait Clock {
    /// The current instant on the engines' millisecond scale.
    fn now(&self) -> Instant;

    /// Wall-clock time to wait, from now, until `deadline` has passed on this
    /// clock. Zero if it has passed; at most [`MAX_WAIT`]. Never early by more
    /// than rounding, so waking and calling `handle_timeout` makes progress.
    /// A deadline of [`Instant::MAX`] is never (see [`crate::time`]): wait
    /// [`MAX_WAIT`], even when the clock reads `Instant::MAX` itself.
    fn wall_until(&self, deadline: Instant) -> WallDuration;
}

/// A monotonic clock counting from its creation, optionally sped up.
///
/// With `scale` 1.0 one engine millisecond is one real millisecond; with 1000.0
/// one real second is 1000 engine seconds. Copies share the epoch, so a server
/// and its devices in one process can read the same time.
#[derive(Clone, Copy, Debug)]
pub struct ScaledClock {
    epoch: std::time::Instant,
    scale: f64,
}

impl ScaledClock {
    /// A real-time clock starting now.
    pub fn new() -> Self {
        Self::scaled(1.0)
    }

    /// A clock starting now that runs `scale` times faster than real time.
    /// A scale that is not finite and positive counts as 1.0.
    pub fn scaled(scale: f64) -> Self {
        let scale = if scale.is_finite() && scale > 0.0 {
            scale
        } else {
            1.0
        };
        Self {
            epoch: std::time::Instant::now(),
            scale,
        }
    }

    /// The speed-up factor.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Converts an engine duration into real (wall) time at this clock's speed.
    pub fn to_wall(&self, d: crate::time::Duration) -> WallDuration {
        let secs = d.as_millis() as f64 / 1000.0 / self.scale;
        WallDuration::try_from_secs_f64(secs).map_or(MAX_WAIT, |w| w.min(MAX_WAIT))
    }

    /// Converts a span of real time into engine time at this clock's speed.
    pub fn from_wall(&self, d: WallDuration) -> crate::time::Duration {
        let ms = d.as_secs_f64() * 1000.0 * self.scale;
        crate::time::Duration::from_millis(ms as u64)
    }
}

impl Default for ScaledClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ScaledClock {
    fn now(&self) -> Instant {
        // Rounded down, so a wait computed from it is never early.
        let ms = self.epoch.elapsed().as_secs_f64() * 1000.0 * self.scale;
        Instant::from_millis(ms as u64)
    }

    fn wall_until(&self, deadline: Instant) -> WallDuration {
        if deadline == Instant::MAX {
            return MAX_WAIT;
        }
        self.to_wall(deadline.saturating_since(self.now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Duration;

    #[test]
    fn scaled_waits_are_short_and_never_panic() {
        let c = ScaledClock::scaled(1000.0);
        assert_eq!(
            c.to_wall(Duration::from_secs(60)),
            WallDuration::from_millis(60)
        );
        assert_eq!(c.wall_until(Instant::MAX), MAX_WAIT);
        assert_eq!(c.wall_until(Instant::ZERO), WallDuration::ZERO);
        assert_eq!(
            c.from_wall(WallDuration::from_secs(1)),
            Duration::from_secs(1000)
        );
        assert_eq!(ScaledClock::scaled(f64::NAN).scale(), 1.0);
        assert_eq!(ScaledClock::scaled(-3.0).scale(), 1.0);
    }
}
