//! Bytes on the wire for one whole sync — handshake, one task, its statuses
//! and one policy — in our format (postcard in frames) against the same
//! messages as JSON (serde_json, without any HTTP around it).
//!
//! `cargo test --test wire_size -- --nocapture` prints the table.

#[path = "../benches/common/mod.rs"]
mod common;

use mdm_sync::wire::{self, Down, Up};

/// One row per message: direction, kind, our frame, the same message as JSON.
fn rows() -> Vec<(&'static str, String, usize, usize)> {
    let common::Recorded { up, down, key } = common::recorded_sync();
    let mut rows = Vec::new();
    for payload in common::payloads(&up, key) {
        let msg: Up = wire::decode(&payload).unwrap();
        let json = serde_json::to_vec(&msg).unwrap().len();
        rows.push(("up", up_kind(&msg), payload.len() + 8, json));
    }
    for payload in common::payloads(&down, key) {
        let msg: Down = wire::decode(&payload).unwrap();
        let json = serde_json::to_vec(&msg).unwrap().len();
        rows.push(("down", down_kind(&msg), payload.len() + 8, json));
    }
    rows
}

fn up_kind(msg: &Up) -> String {
    match msg {
        Up::Hello(h) => format!("Hello ({}-byte push token)", h.push_token.len()),
        Up::Proof { .. } => "Proof".into(),
        Up::Progress { .. } => "Progress".into(),
        Up::Report { body, .. } => match body {
            wire::ReportBody::Task { status, .. } => match status {
                wire::TaskStatus::Received => "Report: task received".into(),
                _ => "Report: task succeeded".into(),
            },
            wire::ReportBody::Compliance(_) => "Report: compliance".into(),
            wire::ReportBody::Policy(_) => "Report: policy applied".into(),
        },
    }
}

fn down_kind(msg: &Down) -> String {
    match msg {
        Down::Challenge { .. } => "Challenge (attempt, nonce)".into(),
        Down::Welcome { .. } => "Welcome".into(),
        Down::Ack { .. } => "Ack".into(),
        Down::Task(_) => "Task".into(),
        Down::Cancel { .. } => "Cancel".into(),
        Down::Policy(p) => format!("Policy ({} settings)", p.settings.len()),
        Down::SyncEnd => "SyncEnd".into(),
        Down::Error(_) => "Error".into(),
    }
}

#[test]
fn one_whole_sync_is_far_smaller_than_json() {
    let rows = rows();
    println!("| direction | message | mdm-sync (framed) | JSON |");
    println!("|---|---|---:|---:|");
    let (mut ours, mut json) = (0, 0);
    for (dir, kind, o, j) in &rows {
        println!("| {dir} | {kind} | {o} | {j} |");
        ours += o;
        json += j;
    }
    let ratio = json as f64 / ours as f64;
    println!(
        "| | **whole sync, {} messages** | **{ours}** | **{json}** ({ratio:.1}x) |",
        rows.len()
    );
    // Handshake, task, policy, end; the task's final status (it took the
    // place of its `Received`, which had not been sent yet), the policy's
    // report, and an ack for each.
    assert_eq!(rows.len(), 11, "{rows:?}");
    assert!(ours * 2 < json, "ours {ours} bytes, JSON {json} bytes");
}

/// The README's "Bytes on the wire" table is this test's (its two acks on one
/// row): a protocol change that moves a size must move the README too.
#[test]
fn the_readme_table_matches() {
    let readme = include_str!("../README.md");
    let rows = rows();
    let mut want = Vec::new();
    let acks: Vec<_> = rows.iter().filter(|r| r.1 == "Ack").collect();
    for (dir, kind, o, j) in rows.iter().filter(|r| r.1 != "Ack") {
        want.push(format!("| {dir} | {kind} | {o} | {j} |"));
    }
    let (ack_o, ack_j) = acks.iter().fold((0, 0), |(o, j), r| (o + r.2, j + r.3));
    want.push(format!(
        "| down | Ack ×{} | {ack_o} | {ack_j} |",
        acks.len()
    ));
    let ours: usize = rows.iter().map(|r| r.2).sum();
    let json: usize = rows.iter().map(|r| r.3).sum();
    let thousands = |n: usize| match n {
        0..1000 => n.to_string(),
        _ => format!("{},{:03}", n / 1000, n % 1000),
    };
    want.push(format!(
        "| | **whole sync, {} messages** | **{}** | **{} ",
        rows.len(),
        thousands(ours),
        thousands(json)
    ));
    for line in want {
        assert!(readme.contains(&line), "README lacks the row: {line}");
    }
}
