//! # mdm-sync
//!
//! The sync protocol between managed mobile devices and a device-management
//! server, as two sans-IO state machines: [`device::Device`] and
//! `server::Server` (with the `alloc` feature). Neither touches a socket, a
//! clock or a thread: bytes, events and time go in, bytes, events and deadlines
//! come out. Adapters in `adapters` drive them over real transports.
//!
//! The device side is `#![no_std]` and allocates nothing; build it with
//! `--no-default-features` for firmware.
//!
//! ## Example: one device, one server, no sockets
//!
//! ```
//! # #[cfg(feature = "alloc")] {
//! use mdm_sync::device::{Device, DeviceConfig, Event};
//! use mdm_sync::server::{MemoryStore, Server, ServerConfig, ServerEvent, TaskState};
//! use mdm_sync::time::Instant;
//! use mdm_sync::wire::{DeviceId, Platform, TaskKind, TaskStatus};
//!
//! let now = Instant::ZERO;
//! let (master_key, nonce_seed) = ([1u8; 32], [2u8; 32]); // from a key store / OS RNG
//! let mut server = Server::new(ServerConfig::default(), MemoryStore::new(), master_key, nonce_seed);
//! let secret = server.enroll(DeviceId(1), now).unwrap();
//! let task = server.enqueue_task(DeviceId(1), TaskKind::Lock, Default::default(), now).unwrap();
//!
//! let cfg = DeviceConfig::new(DeviceId(1), 0, secret, Platform::Android);
//! let mut device: Device = Device::new(cfg, now);
//! device.handle_timeout(now); // boot sync wanted
//! let conn = server.connection_opened(now).unwrap();
//! let mut buf = [0u8; 600];
//! for _ in 0..20 {
//!     while let Some(ev) = device.poll_event() {
//!         match ev {
//!             // A real device writes `device.snapshot()` to the storage slot
//!             // `device.snapshot_slot()` here, before anything else; the first
//!             // one (the boot snapshot) numbers this boot's connections.
//!             Event::Persist => {}
//!             Event::Connect => device.connected(now),
//!             Event::Execute(t) => {
//!                 device.task_status(t.id, TaskStatus::Succeeded { result: None }, now).unwrap()
//!             }
//!             _ => {}
//!         }
//!     }
//!     while let Some(n) = device.poll_transmit(&mut buf).unwrap() {
//!         server.handle_bytes(conn, &buf[..n], now).unwrap();
//!     }
//!     while let Some(n) = server.poll_transmit_for(conn, &mut buf) {
//!         device.handle_bytes(&buf[..n], now).unwrap();
//!     }
//!     while server.poll_event().is_some() {}
//! }
//! let state = server.task_state(DeviceId(1), task);
//! assert_eq!(state, Some(TaskState::Succeeded { result: None }));
//! # }
//! ```
//!
//! ## Panics
//!
//! None. A panic is a bug: no byte from the network, no order of calls and no
//! value of `now` (standing still, jumping, going backwards) may cause one.
//! Malformed input gets a typed error and the engine stays usable.
//!
//! ## Bad input
//!
//! Every public entry point that decodes or restores bytes answers malformed
//! input with a typed error, never a panic:
//!
//! - `wire::decode`: `DecodeError`; `wire::peek_version`: `None`.
//! - `FrameDecoder::decode`: `FrameError`, after which it has already
//!   resynchronised. A header announcing a length of 0 or over the decoder's
//!   bound is refused as soon as its four bytes are in, before anything behind
//!   it is buffered, so the next good frame is still found.
//! - `Device::handle_bytes`: `DeviceError::Session` (the session is closed, a
//!   retry scheduled) or `NotConnected`. `Server::handle_bytes`:
//!   `ServerError::Peer` (an `Error` frame goes out, that connection closes,
//!   the others are untouched) or `UnknownConnection`.
//! - `Device::restore`, `snapshot_counter`: `SnapshotError`; `pick_latest`:
//!   the valid slot, or `None`.
//!
//! Afterwards the engine works as if the bad input never came. The contract
//! is checked by `tests/bad_input.rs` and, on arbitrary input, by `fuzz/`.
//!
//! ## Features
//!
//! | feature | what it adds |
//! |---|---|
//! | `alloc` | server engine and in-memory fleet store |
//! | `std` (default) | blocking adapters, UDP push channel, `log` output |
//! | `tokio` (default) | async server adapter over tokio streams and a TCP listener |
//! | `embedded` | async device runner on embedded-io-async + embassy-time |
//! | `defmt` | `defmt::Format` on public types, logging through defmt |
//! | `crc-table` | table-driven CRC-32 (crc32fast, 16 KiB of tables, and 8 KiB inline for short frames), on with `std` |
//! | `hand-decode` | session messages read by hand, not through postcard; the device reads whole frames in place; on with `std` |
//! | `hand-encode` | session messages written by hand (same bytes as serde's), on with `std` |
//!
//! ## MSRV
//!
//! Rust 1.88.
#![no_std]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(any(feature = "std", test))]
extern crate std;

mod log;

pub mod auth;
pub mod device;
pub mod time;
pub mod wire;

#[cfg(feature = "alloc")]
pub mod server;

#[cfg(any(feature = "std", feature = "embedded"))]
pub mod adapters;

/// The next value of a xorshift generator: repeatable random runs for the
/// unit tests.
#[cfg(test)]
pub(crate) fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}
