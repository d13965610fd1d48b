//! PROTOCOL.md's prose against the code and against its own vectors: the
//! version it states where it names `PROTOCOL_VERSION` (the constants table
//! of section 4, the first sentence of section 13) or speaks of the current
//! version's messages (`supported: N`, `Hello vN`, `version other than N`,
//! `Challenge { version: N, attempt`, ...), and every vector its
//! text points at by name (`vector `x``, `vectors `x`, `y` and `z``) exists
//! in section 15. Version 6 renamed `hello-v6` to `hello-v7` and left
//! sections 4 and 13 saying 3 and 5, and section 8.1 answering a version
//! other than 5 with `supported: 5`.

use mdm_sync::wire::PROTOCOL_VERSION;

fn text() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/PROTOCOL.md");
    std::fs::read_to_string(path).expect("PROTOCOL.md at the crate root")
}

#[test]
fn the_stated_version_is_the_codes() {
    let text = text();
    let v = PROTOCOL_VERSION.to_string();
    let first = text.lines().next().unwrap();
    assert_eq!(first, format!("# mdm-sync protocol, version {v}"));
    let row = text
        .lines()
        .find(|l| l.starts_with("| `PROTOCOL_VERSION` |"))
        .expect("section 4's row");
    let value = row.split('|').nth(2).unwrap().trim();
    assert_eq!(value, v, "section 4: {row}");
    let said: Vec<&str> = text
        .match_indices("`PROTOCOL_VERSION` is ")
        .map(|(i, m)| {
            let rest = &text[i + m.len()..];
            rest.split(|c: char| !c.is_ascii_digit()).next().unwrap()
        })
        .collect();
    assert!(!said.is_empty(), "section 13 names the version");
    assert!(said.iter().all(|s| *s == v), "stated: {said:?}, code: {v}");
    // Phrases that always mean the current version (section 13's history
    // uses none of them).
    let mut wrong = Vec::new();
    let mut seen = 0;
    for phrase in [
        "supported: ",
        "version other than ",
        "Hello v",
        "`Hello` of version ",
        "Challenge(version ",
        "version: ",
    ] {
        for (i, _) in text.match_indices(phrase) {
            let rest = &text[i + phrase.len()..];
            let n = rest.split(|c: char| !c.is_ascii_digit()).next().unwrap();
            let after = &rest[n.len()..];
            // `version: N` only where an attempt follows (Hello, Challenge):
            // policies have versions too.
            if n.is_empty() || (phrase == "version: " && !after.starts_with(", attempt")) {
                continue;
            }
            seen += 1;
            if n != v {
                let line = text[..i].lines().count();
                wrong.push(format!("line {line}: {phrase}{n}"));
            }
        }
    }
    assert!(seen >= 8, "only {seen} mentions found");
    assert!(wrong.is_empty(), "not version {v}: {wrong:?}");
}

#[test]
fn every_vector_named_in_the_text_exists() {
    let text = text();
    let defined: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("vector "))
        .filter_map(|l| l.split(':').next())
        .collect();
    assert!(defined.len() > 30, "{defined:?}");
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut missing = Vec::new();
    let mut named = 0;
    for key in ["vector `", "vectors `"] {
        for (i, _) in flat.match_indices(key) {
            // Backticked names joined by ", ", " and ", " to ", " or ".
            let mut rest = &flat[i + key.len() - 1..];
            while let Some(body) = rest.strip_prefix('`') {
                let Some(end) = body.find('`') else { break };
                let name = &body[..end];
                named += 1;
                if !defined.contains(name) {
                    missing.push(name.to_string());
                }
                rest = &body[end + 1..];
                let Some(next) = [", ", " and ", " to ", " or ", ", and "]
                    .iter()
                    .find_map(|sep| rest.strip_prefix(sep))
                else {
                    break;
                };
                rest = next;
            }
        }
    }
    assert!(named >= 9, "only {named} names found");
    assert!(missing.is_empty(), "named but not defined: {missing:?}");
}

/// Section 2 as written: the reference server counts bad frames, not
/// garbage, so how garbage is split into reads changes nothing: 70 garbage
/// bytes in one read or one per read, then a `Hello`, get a `Challenge`
/// either way (they were one error in one read and 70, past the bound of
/// 64, one per read, before garbage stopped counting). Bad headers still
/// count (`bad_input.rs` floods them).
#[test]
fn garbage_counts_the_same_however_it_is_read() {
    use mdm_sync::server::{MemoryStore, Server, ServerConfig};
    use mdm_sync::time::Instant;
    use mdm_sync::wire::{self, frame, DeviceId, Down, ErrorCode, Hello, Platform, Up};
    let now = Instant::from_millis(1);
    let mut buf = [0u8; 128];
    let hello = Up::Hello(Hello {
        version: PROTOCOL_VERSION,
        attempt: 1,
        device: DeviceId(1),
        generation: 0,
        platform: Platform::Android,
        push_token: heapless::String::new(),
        trigger: wire::SyncTrigger::Manual,
        last_task_seq: 0,
        policy_version: 0,
    });
    let n = frame::encode(&hello, &mut buf).unwrap();
    let garbage = [0x11u8; 70];
    let cfg = ServerConfig::default();
    assert!(garbage.len() as u32 > cfg.max_frame_errors);
    for per_byte in [false, true] {
        let mut s = Server::new(cfg, MemoryStore::new(), [1; 32], [2; 32]);
        let conn = s.connection_opened(now).unwrap();
        let mut failed = false;
        if per_byte {
            for b in garbage {
                failed |= s.handle_bytes(conn, &[b], now).is_err();
            }
        } else {
            failed |= s.handle_bytes(conn, &garbage, now).is_err();
        }
        failed |= s.handle_bytes(conn, &buf[..n], now).is_err();
        let mut out = [0u8; 256];
        let m = s.poll_transmit_for(conn, &mut out).unwrap();
        let mut dec = wire::FrameDecoder::<256>::new();
        dec.push(&out[..m]);
        let first = wire::decode::<Down>(dec.decode().unwrap().unwrap()).unwrap();
        assert!(!failed, "per byte: {per_byte}");
        assert!(
            matches!(first, Down::Challenge { .. }),
            "per byte: {per_byte}: {first:?}"
        );
        assert_ne!(first, Down::Error(ErrorCode::BadMessage));
    }
}
