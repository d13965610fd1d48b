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
    /// The reading at `epoch`, in engine milliseconds.
    start: u64,
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
            start: 0,
        }
    }

    /// A real-time clock that reads the milliseconds since the Unix epoch
    /// (1970-01-01 UTC) as the system clock gives them now, and from then on
    /// counts monotonically. A server whose store outlives its process runs on
    /// such a clock, so that the instants one process stored (last syncs,
    /// task expiries) mean the same to the next one (see
    /// `Server::recover`). A system clock set before 1970 reads 0 here.
    ///
    /// Only the start comes from the system clock: a change of the system
    /// clock while the process runs is not followed, and one between two
    /// processes moves the second's instants with it (the engines take a
    /// clock that went back, see [`crate::time`]).
    pub fn unix() -> Self {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let ms = u64::try_from(since.as_millis()).unwrap_or(u64::MAX);
        Self::new().starting_at(Instant::from_millis(ms))
    }

    /// This clock, reading `start` where it read zero: it goes on from
    /// `start` at its own speed.
    pub fn starting_at(self, start: Instant) -> Self {
        Self {
            start: start.as_millis(),
            ..self
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
        Instant::from_millis(self.start.saturating_add(ms as u64))
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

    #[test]
    fn a_clock_goes_on_from_where_it_starts() {
        let start = Instant::from_millis(1_700_000_000_000);
        let c = ScaledClock::new().starting_at(start);
        let read = c.now();
        // Read an instant after its creation: at `start`, or a little past.
        assert!(read >= start && read < start + Duration::from_secs(60));
        // A deadline at `start` has passed; one an hour later is still ahead.
        assert_eq!(c.wall_until(start), WallDuration::ZERO);
        assert!(c.wall_until(start + Duration::from_secs(3600)) > WallDuration::ZERO);
        // At the end of time it stays there, and waits as for "never".
        let end = ScaledClock::scaled(1e9).starting_at(Instant::MAX);
        assert_eq!(end.now(), Instant::MAX);
        assert_eq!(end.wall_until(Instant::MAX), MAX_WAIT);

        // The Unix clock reads the system clock's milliseconds since 1970.
        let unix = ScaledClock::unix().now().as_millis();
        let system = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(unix.abs_diff(system) < 60_000, "{unix} vs {system}");
    }
}
