//! Replays the committed corpora through every harness (a quick regression
//! check without libFuzzer: `cargo test --manifest-path fuzz/Cargo.toml`),
//! and checks that the recorded sessions still reach deep states, so a
//! protocol change that makes them stale is noticed (then regenerate them
//! with `cargo run --manifest-path fuzz/Cargo.toml --example gen_corpus`).

use std::path::Path;

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no corpus for {target}");
    out
}

#[test]
fn frame_decoder_corpus() {
    for (_, data) in inputs("frame_decoder") {
        mdm_sync_fuzz::frames::run(&data);
    }
}

#[test]
fn snapshot_restore_corpus_restores() {
    for (name, data) in inputs("snapshot_restore") {
        let n = mdm_sync_fuzz::snapshot::run_counting(&data);
        if name.contains("snapshot-") {
            assert!(n >= 1, "{name}: the recorded snapshot does not restore");
        }
    }
}

#[test]
fn device_corpus_runs_tasks() {
    let mut tasks = 0;
    for (_, data) in inputs("device") {
        tasks += mdm_sync_fuzz::device::run_counting(&data);
    }
    assert!(tasks >= 5, "recorded sessions hand out {tasks} tasks");
}

#[test]
fn server_corpus_authenticates() {
    for (name, data) in inputs("server") {
        let n = mdm_sync_fuzz::server::run_counting(&data);
        assert!(n >= 1, "{name}: no session got past the proof");
    }
}
