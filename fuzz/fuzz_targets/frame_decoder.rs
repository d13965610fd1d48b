//! Fuzz target `frame_decoder`: see `mdm_sync_fuzz::frames`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mdm_sync_fuzz::frames::run(data));
