//! Fuzz target `snapshot_restore`: see `mdm_sync_fuzz::snapshot`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mdm_sync_fuzz::snapshot::run(data));
