//! One logging shim for the whole crate: `defmt` with the `defmt` feature,
//! `log` with `std`, nothing otherwise. Log lines name the trigger, the state
//! change and the task id; they never carry secrets, proofs or push tokens.

#[cfg(feature = "defmt")]
macro_rules! trace {
    ($($arg:tt)*) => { defmt::trace!($($arg)*) };
}
#[cfg(feature = "defmt")]
macro_rules! debug {
    ($($arg:tt)*) => { defmt::debug!($($arg)*) };
}
#[cfg(feature = "defmt")]
macro_rules! warning {
    ($($arg:tt)*) => { defmt::warn!($($arg)*) };
}

#[cfg(all(not(feature = "defmt"), feature = "std"))]
macro_rules! trace {
    ($($arg:tt)*) => { log::trace!($($arg)*) };
}
#[cfg(all(not(feature = "defmt"), feature = "std"))]
macro_rules! debug {
    ($($arg:tt)*) => { log::debug!($($arg)*) };
}
#[cfg(all(not(feature = "defmt"), feature = "std"))]
macro_rules! warning {
    ($($arg:tt)*) => { log::warn!($($arg)*) };
}

// Without a logger the arguments are still type-checked (inside a closure that
// is never called) so that a feature change cannot break the build, but no
// formatting code reaches the binary.
#[cfg(all(not(feature = "defmt"), not(feature = "std")))]
macro_rules! trace {
    ($fmt:literal $(, $arg:expr)* $(,)?) => { { let _ = || { $(let _ = &$arg;)* }; } };
}
#[cfg(all(not(feature = "defmt"), not(feature = "std")))]
macro_rules! debug {
    ($fmt:literal $(, $arg:expr)* $(,)?) => { { let _ = || { $(let _ = &$arg;)* }; } };
}
#[cfg(all(not(feature = "defmt"), not(feature = "std")))]
macro_rules! warning {
    ($fmt:literal $(, $arg:expr)* $(,)?) => { { let _ = || { $(let _ = &$arg;)* }; } };
}

#[allow(unused_imports)] // reason: not every feature combination logs at every level
pub(crate) use {debug, trace, warning};
