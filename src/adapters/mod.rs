//! Adapters that drive the sans-IO engines over real transports. They only
//! translate between I/O and the engines' `handle_*` / `poll_*` calls; nothing
//! in the engines depends on them.

#[cfg(feature = "embedded")]
pub mod embedded;
