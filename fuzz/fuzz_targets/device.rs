//! Fuzz target `device`: see `mdm_sync_fuzz::device`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mdm_sync_fuzz::device::run(data));
