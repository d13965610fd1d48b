//! Prints `size_of::<Device>()` at the default capacities and what it is made
//! of, for `size.sh`. Per-entry costs are measured as differences between
//! capacities, since the engine's internal types are private.

#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use core::mem::size_of;

use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hprintln};
use mdm_sync::device::{Device, DeviceConfig, DEFAULT_INFLIGHT, DEFAULT_OUTBOX};
use mdm_sync::wire::{FrameDecoder, Policy, MAX_DOWN_FRAME};
use panic_semihosting as _;

#[entry]
fn main() -> ! {
    let total = size_of::<Device>();
    let entry = (size_of::<Device<32, 4>>() - size_of::<Device<16, 4>>()) / 16;
    let task = (size_of::<Device<16, 8>>() - size_of::<Device<16, 4>>()) / 4;
    let outbox = entry * DEFAULT_OUTBOX;
    let running = task * DEFAULT_INFLIGHT;
    let decoder = size_of::<FrameDecoder<MAX_DOWN_FRAME>>();
    let config = size_of::<DeviceConfig>();
    let policy = size_of::<Option<Policy>>();
    let rest = total - outbox - running - decoder - config - policy;
    hprintln!(
        "size_of::<Device>() = {} bytes (OUTBOX {}, INFLIGHT {})",
        total,
        DEFAULT_OUTBOX,
        DEFAULT_INFLIGHT
    );
    hprintln!(
        "  outbox          {:5}  ({} x {} bytes)",
        outbox,
        DEFAULT_OUTBOX,
        entry
    );
    hprintln!(
        "  frame decoder   {:5}  (largest server frame, {} bytes)",
        decoder,
        MAX_DOWN_FRAME
    );
    hprintln!(
        "  config          {:5}  (push token 200, secret 32, timers)",
        config
    );
    hprintln!("  pending policy  {:5}  (16 settings)", policy);
    hprintln!(
        "  running tasks   {:5}  ({} x {} bytes)",
        running,
        DEFAULT_INFLIGHT,
        task
    );
    hprintln!(
        "  the rest        {:5}  (timers, counters, session state, stats)",
        rest
    );
    debug::exit(debug::EXIT_SUCCESS);
    loop {
        cortex_m::asm::wfi();
    }
}
