//! Fuzz target `server`: see `mdm_sync_fuzz::server`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mdm_sync_fuzz::server::run(data));
