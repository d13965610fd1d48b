//! Bytes on the wire for one whole sync — handshake, one task, its statuses
//! and one policy — in our format (postcard in frames) against the same
//! messages as JSON (serde_json, without any HTTP around it).
//!
//! `cargo test --test wire_size -- --nocapture` prints the tables: a sync after
//! the boot sync, whose `Hello` carries no push token (protocol version 5),
//! and the first sync after boot, whose `Hello` carries it.

#[path = "../benches/common/mod.rs"]
mod common;

use mdm_sync::wire::{self, Down, Up};

type Row = (&'static str, String, usize, usize);

/// One row per message of a sync after the boot sync (its `Hello` carries no
/// push token): direction, kind, our frame, the same message as JSON.
fn rows() -> Vec<Row> {
    rows_of(common::recorded_steady_sync())
}

/// The same for the first sync after boot, whose `Hello` carries the token.
fn boot_rows() -> Vec<Row> {
    rows_of(common::recorded_sync())
}

fn rows_of(recorded: common::Recorded) -> Vec<Row> {
    let common::Recorded { up, down, key } = recorded;
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
        Up::Hello(h) if h.push_token.is_empty() => "Hello (no push token)".into(),
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
    for (what, rows) in [
        ("whole sync", rows()),
        ("first sync after boot", boot_rows()),
    ] {
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
            "| | **{what}, {} messages** | **{ours}** | **{json}** ({ratio:.1}x) |\n",
            rows.len()
        );
        // Handshake, task, policy, end; the task's final status (it took the
        // place of its `Received`, which had not been sent yet), the policy's
        // report, and an ack for each.
        assert_eq!(rows.len(), 11, "{rows:?}");
        assert!(ours * 2 < json, "ours {ours} bytes, JSON {json} bytes");
    }
}

/// The two syncs' frames differ in their `Hello` alone: the steady one
/// carries no token, the first after boot the whole token. (Their JSON
/// differs elsewhere too: the digits of a nonce and a proof as numbers.)
#[test]
fn only_the_first_sync_after_boot_carries_the_push_token() {
    let (steady, boot) = (rows(), boot_rows());
    let framed = |r: &Row| (r.0, r.2);
    let pairs = steady.iter().zip(&boot);
    let differ: Vec<_> = pairs.filter(|(s, b)| framed(s) != framed(b)).collect();
    assert_eq!(differ.len(), 1, "{differ:?}");
    let (s, b) = differ[0];
    assert_eq!(s.1, "Hello (no push token)");
    assert_eq!(
        b.1,
        format!("Hello ({}-byte push token)", common::FCM_TOKEN.len())
    );
    assert_eq!(
        b.2 - s.2,
        common::FCM_TOKEN.len() + 1,
        "token and its length byte"
    );
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
    let thousands = |n: usize| match n {
        0..1000 => n.to_string(),
        _ => format!("{},{:03}", n / 1000, n % 1000),
    };
    let total = |what: &str, rows: &[Row]| {
        let ours: usize = rows.iter().map(|r| r.2).sum();
        let json: usize = rows.iter().map(|r| r.3).sum();
        format!(
            "| | **{what}, {} messages** | **{}** | **{} ",
            rows.len(),
            thousands(ours),
            thousands(json)
        )
    };
    want.push(total("whole sync", &rows));
    // The first sync after boot: its `Hello`, and its total.
    let boot = boot_rows();
    let hello = boot.iter().find(|r| r.1.starts_with("Hello")).unwrap();
    let (dir, kind, o, j) = hello;
    want.push(format!("| {dir} | {kind} | {o} | {j} |"));
    want.push(total("first sync after boot", &boot));
    for line in want {
        assert!(readme.contains(&line), "README lacks the row: {line}");
    }
}
