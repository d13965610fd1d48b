//! Adapters that drive the sans-IO engines over real transports. They only
//! translate between I/O and the engines' `handle_*` / `poll_*` calls; nothing
//! in the engines depends on them.

#[cfg(feature = "embedded")]
pub mod embedded;

#[cfg(feature = "std")]
pub mod blocking;
#[cfg(feature = "std")]
pub mod clock;
#[cfg(feature = "std")]
pub mod push;
#[cfg(feature = "tokio")]
pub mod tokio;

/// 32 fresh bytes from the operating system's random source, e.g. for the
/// server's nonce seed ([`Server::new`](crate::server::Server::new)).
#[cfg(feature = "std")]
pub fn os_seed() -> std::io::Result<[u8; 32]> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(std::io::Error::from)?;
    Ok(seed)
}
