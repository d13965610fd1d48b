//! `max_pending_out` bounds the bytes queued and not yet taken, not all a
//! session ever queued. A transport that takes part of what
//! `Server::transmit_with` offers (as a socket's `write` may) and so never
//! drains a connection to the end, while the device keeps reporting, kept
//! the connection's buffer from being emptied: the check read the end of
//! the buffer, which grew with every frame, and dropped the connection as
//! too slow (at 64 KiB, after 5,969 one-byte-behind reports) though a byte
//! was pending. Now the bytes left move down before the buffer grows and the
//! check counts what is pending.

mod common;

use mdm_sync::server::{ConnId, MemoryStore, Server, ServerConfig, ServerEvent};
use mdm_sync::time::Instant;
use mdm_sync::wire::{self, frame, ComplianceEvent, DeviceId, Down, ReportBody, Up};

const T0: Instant = Instant::from_millis(1_000);

fn in_session(max_pending_out: usize) -> (Server<MemoryStore>, ConnId, u32) {
    let cfg = ServerConfig {
        max_pending_out,
        ..ServerConfig::default()
    };
    // The reports are compliance events, thousands of them undrained: the
    // store's per-device limit is not what these tests are about.
    let mut store = MemoryStore::new();
    store.set_compliance_limit(u32::MAX);
    let mut s = Server::new(cfg, store, [1; 32], [2; 32]);
    let d = DeviceId(5);
    let secret = s.enroll(d, T0).unwrap();
    let (conn, key, answer) = common::raw_handshake(&mut s, d, &secret, T0);
    answer.unwrap();
    (s, conn, key)
}

fn report(seq: u32, key: u32) -> Vec<u8> {
    let up = Up::Report {
        seq,
        body: ReportBody::Compliance(ComplianceEvent::ProfileChanged),
    };
    let mut f = [0u8; wire::MAX_FRAME];
    let n = frame::encode_keyed(&up, &mut f, key).unwrap();
    f[..n].to_vec()
}

fn closed(s: &mut Server<MemoryStore>) -> bool {
    core::iter::from_fn(|| s.poll_event()).any(|e| matches!(e, ServerEvent::Close { .. }))
}

/// The device sends `reports` reports; after each, the transport drains the
/// connection taking all but `behind` bytes of what it is offered. Returns
/// the report at which the connection closed, if it did, and the bytes
/// taken.
fn run(max_pending_out: usize, reports: u32, behind: usize) -> (Option<u32>, Vec<u8>, u32) {
    let (mut s, conn, key) = in_session(max_pending_out);
    let mut taken = Vec::new();
    for seq in 1..=reports {
        let _ = s.handle_bytes(conn, &report(seq, key), T0);
        while s
            .transmit_with(conn, |b| {
                let n = b.len().saturating_sub(behind);
                taken.extend_from_slice(&b[..n]);
                n
            })
            .is_some()
        {}
        if closed(&mut s) {
            return (Some(seq), taken, key);
        }
    }
    // The rest, at the end.
    while s
        .transmit_with(conn, |b| {
            taken.extend_from_slice(b);
            b.len()
        })
        .is_some()
    {}
    (None, taken, key)
}

fn acks(bytes: &[u8], key: u32) -> Vec<u32> {
    common::downs(bytes, key)
        .into_iter()
        .filter_map(|m| match m {
            Down::Ack { seq } => Some(seq),
            _ => None,
        })
        .collect()
}

#[test]
fn a_transport_a_few_bytes_behind_is_not_dropped_as_too_slow() {
    // A bound of 200 bytes: about 18 acks of 11 bytes.
    for behind in [1, 3, 10] {
        let (closed_at, taken, key) = run(200, 2_000, behind);
        assert_eq!(closed_at, None, "{behind} bytes behind");
        assert_eq!(
            acks(&taken, key),
            (1..=2_000).collect::<Vec<_>>(),
            "{behind} behind"
        );
    }
}

#[test]
fn the_default_bound_holds_for_a_long_session_one_byte_behind() {
    let (closed_at, taken, key) = run(ServerConfig::default().max_pending_out, 8_000, 1);
    assert_eq!(closed_at, None);
    assert_eq!(acks(&taken, key).len(), 8_000);
}

#[test]
fn a_transport_that_stops_taking_is_still_dropped_at_the_bound() {
    // Takes nothing: dropped at the first frame that finds over 200 bytes
    // queued after the first burst (the Welcome and SyncEnd, exempt while
    // untaken), acks of 10 to 13 bytes.
    let (closed_at, taken, _) = run(200, 2_000, usize::MAX);
    assert!(taken.is_empty());
    let at = closed_at.expect("dropped");
    assert!(
        (200 / 13 + 1..=200 / 10 + 2).contains(&at),
        "dropped at report {at}"
    );
}
