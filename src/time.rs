//! Time as the engines see it: milliseconds on a caller-supplied clock.
//!
//! The engines read no clock. Every input carries `now`, an [`Instant`] on a
//! monotonic millisecond clock the caller chooses (time since boot is fine).
//! Time may stand still, jump forward or even go backwards; all arithmetic here
//! saturates, so no value of `now` can make an engine panic. A clock that goes
//! backwards only delays timers, it never fires them twice. A deadline that
//! saturated at [`Instant::MAX`] is never due, even at `Instant::MAX`: there,
//! every `now + d` is `now`, and deadlines that fell due as soon as they were
//! set would have the engines loop without time passing.

use core::ops::{Add, Sub};

use serde::{Deserialize, Serialize};

/// A point in time, in milliseconds since an epoch the caller chooses.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Instant(u64);

/// A span of time in milliseconds.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Duration(u64);

impl Instant {
    /// The epoch of the caller's clock.
    pub const ZERO: Instant = Instant(0);
    /// The latest representable instant; used for "never".
    pub const MAX: Instant = Instant(u64::MAX);

    /// An instant `ms` milliseconds after the epoch.
    pub const fn from_millis(ms: u64) -> Self {
        Instant(ms)
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Time from `earlier` to `self`, or zero if `earlier` is later.
    pub const fn saturating_since(self, earlier: Instant) -> Duration {
        Duration(self.0.saturating_sub(earlier.0))
    }

    /// Whether a deadline at `self` has come at `now`: never for
    /// [`Instant::MAX`] (see the module docs).
    pub(crate) fn is_due(self, now: Instant) -> bool {
        self <= now && self != Instant::MAX
    }

    /// `self` as the next deadline an engine reports, `None` for "never"
    /// ([`Instant::MAX`]).
    pub(crate) fn as_deadline(self) -> Option<Instant> {
        (self != Instant::MAX).then_some(self)
    }
}

impl Duration {
    /// No time at all.
    pub const ZERO: Duration = Duration(0);

    /// A duration of `ms` milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Duration(ms)
    }

    /// A duration of `s` seconds.
    pub const fn from_secs(s: u64) -> Self {
        Duration(s.saturating_mul(1000))
    }

    /// A duration of `m` minutes.
    pub const fn from_mins(m: u64) -> Self {
        Duration(m.saturating_mul(60_000))
    }

    /// A duration of `h` hours.
    pub const fn from_hours(h: u64) -> Self {
        Duration(h.saturating_mul(3_600_000))
    }

    /// Length in milliseconds.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Length in whole seconds, rounded down.
    pub const fn as_secs(self) -> u64 {
        self.0 / 1000
    }

    /// `self * k`, saturating.
    pub const fn saturating_mul(self, k: u64) -> Duration {
        Duration(self.0.saturating_mul(k))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    // Out of line in firmware: inlined, each of its nine uses in the device
    // engine carries the saturating 64-bit add (96 B in all at opt-level z).
    #[cfg_attr(not(feature = "std"), inline(never))]
    fn add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(d.0))
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;
    fn sub(self, d: Duration) -> Instant {
        Instant(self.0.saturating_sub(d.0))
    }
}

impl Add for Duration {
    type Output = Duration;
    fn add(self, d: Duration) -> Duration {
        Duration(self.0.saturating_add(d.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_at_both_ends() {
        assert_eq!(Instant::MAX + Duration::from_hours(1), Instant::MAX);
        assert_eq!(Instant::ZERO - Duration::from_secs(1), Instant::ZERO);
        let t = Instant::from_millis(5);
        assert_eq!(t.saturating_since(Instant::from_millis(9)), Duration::ZERO);
        assert_eq!(Duration::from_mins(u64::MAX).as_millis(), u64::MAX);
        assert_eq!(Duration::from_hours(3).as_secs(), 10_800);
    }
}
