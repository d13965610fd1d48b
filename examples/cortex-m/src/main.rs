//! mdm-sync firmware example for Cortex-M (QEMU mps2-an386).

#![no_std]
#![no_main]

use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hprintln};
use mdm_sync as _;
use panic_semihosting as _;

#[entry]
fn main() -> ! {
    hprintln!("firmware: hello");
    debug::exit(debug::EXIT_SUCCESS);
    loop {}
}
