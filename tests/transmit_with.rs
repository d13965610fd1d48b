//! `Server::transmit_with` hands out the same bytes as `poll_transmit_for`, in
//! the same order, whatever the transport takes at a time (nothing, a few
//! bytes, more than it was given), and ends a closing connection once its
//! last byte is taken, as `poll_transmit_for` does.

mod common;

use mdm_sync::server::{ConnId, MemoryStore, Server, ServerEvent};
use mdm_sync::time::Instant;
use mdm_sync::wire::{self, frame, DeviceId, Down, TaskKind};

const T0: Instant = Instant::from_millis(1_000);

/// A server with a device in session and three tasks offered to it: the
/// `Welcome`, the offers and the `SyncEnd` wait in the connection's output.
fn server_with_output() -> (Server<MemoryStore>, ConnId, u32) {
    let mut s = common::server();
    let d = DeviceId(7);
    let secret = s.enroll(d, T0).unwrap();
    for kind in [TaskKind::Lock, TaskKind::Scan, TaskKind::Locate] {
        s.enqueue_task(d, kind, Default::default(), T0).unwrap();
    }
    let (conn, key, answer) = common::raw_handshake(&mut s, d, &secret, T0);
    answer.unwrap();
    (s, conn, key)
}

/// Everything `poll_transmit_for` gives, in `chunk`-byte reads.
fn drained_by_copy(s: &mut Server<MemoryStore>, conn: ConnId, chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; chunk];
    while let Some(n) = s.poll_transmit_for(conn, &mut buf) {
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// Everything `transmit_with` gives to a transport that takes `take(i, len)`
/// bytes on its `i`-th call, offered `len`.
fn drained_in_place(
    s: &mut Server<MemoryStore>,
    conn: ConnId,
    mut take: impl FnMut(usize, usize) -> usize,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut calls = 0;
    loop {
        let mut offered = 0;
        let r = s.transmit_with(conn, |bytes| {
            offered = bytes.len();
            let n = take(calls, bytes.len());
            out.extend_from_slice(&bytes[..n.min(bytes.len())]);
            n
        });
        calls += 1;
        match r {
            Some(n) => assert_eq!(n, n.min(offered), "reports at most what it offered"),
            None if offered == 0 => return out,
            // The transport took nothing this time: the bytes stay.
            None => {}
        }
        assert!(calls < 10_000, "the drain loop does not end");
    }
}

#[test]
fn the_same_bytes_as_poll_transmit_for_whatever_is_taken() {
    let (mut a, conn_a, key) = server_with_output();
    let want = drained_by_copy(&mut a, conn_a, wire::MAX_FRAME);
    let msgs = common::downs(&want, key);
    assert!(
        matches!(
            msgs[..],
            [
                Down::Welcome { .. },
                Down::Task(_),
                Down::Task(_),
                Down::Task(_),
                Down::SyncEnd
            ]
        ),
        "{msgs:?}"
    );
    // All at once; a few bytes at a time; nothing every other call; more
    // than offered (counts as all of it).
    let takes: [&dyn Fn(usize, usize) -> usize; 4] = [
        &|_, len| len,
        &|_, len| len.min(3),
        &|i, len| if i % 2 == 0 { 0 } else { len.min(5) },
        &|_, len| len + 100,
    ];
    for (t, take) in takes.iter().enumerate() {
        let (mut b, conn_b, _) = server_with_output();
        let got = drained_in_place(&mut b, conn_b, take);
        assert_eq!(got, want, "transport {t}");
        // Drained: nothing more, from either call.
        assert_eq!(b.transmit_with(conn_b, |_| panic!("no bytes left")), None);
        assert_eq!(b.poll_transmit_for(conn_b, &mut [0u8; 16]), None);
    }
    // Small copies give the same stream too (the reference is itself).
    let (mut c, conn_c, _) = server_with_output();
    assert_eq!(drained_by_copy(&mut c, conn_c, 7), want);
}

#[test]
fn an_unknown_connection_has_nothing() {
    let (mut s, conn, _) = server_with_output();
    s.connection_closed(conn, T0);
    assert_eq!(s.transmit_with(conn, |_| panic!("closed")), None);
    assert_eq!(
        s.transmit_with(ConnId(999), |_| panic!("never opened")),
        None
    );
}

/// A connection the server closes (a peer's garbage past the error budget)
/// ends, with its `Close` event, when `transmit_with` takes the error frame's
/// last byte, not before.
#[test]
fn a_closing_connection_ends_with_its_last_byte() {
    let mut s = common::server();
    let conn = s.connection_opened(T0).unwrap();
    let flood: Vec<u8> = [0xA5, 0x5A, 0x00, 0x02].repeat(1 << 16);
    assert!(s.handle_bytes(conn, &flood, T0).is_err());
    let closed = |s: &mut Server<MemoryStore>| {
        core::iter::from_fn(|| s.poll_event()).any(|e| e == ServerEvent::Close { conn })
    };
    let mut out = Vec::new();
    let first = s.transmit_with(conn, |b| {
        out.extend_from_slice(&b[..2]);
        2
    });
    assert_eq!(first, Some(2));
    assert!(!closed(&mut s), "bytes of the error frame are left");
    let rest = s.transmit_with(conn, |b| {
        out.extend_from_slice(b);
        b.len()
    });
    assert!(rest.is_some());
    assert!(closed(&mut s), "closed once the last byte was taken");
    let msg = wire::decode::<Down>(frame::payload(&out)).unwrap();
    assert_eq!(msg, Down::Error(wire::ErrorCode::BadMessage));
    assert_eq!(s.transmit_with(conn, |_| panic!("closed")), None);
}

/// `poll_transmit` with an empty buffer takes nothing and leaves the
/// connection queued: the next call with room gets its output.
#[test]
fn poll_transmit_with_no_room_strands_nothing() {
    let (mut s, conn, key) = server_with_output();
    assert_eq!(s.poll_transmit(&mut []), None);
    let mut out = Vec::new();
    let mut buf = [0u8; 64];
    while let Some((c, n)) = s.poll_transmit(&mut buf) {
        assert_eq!(c, conn);
        out.extend_from_slice(&buf[..n]);
    }
    let msgs = common::downs(&out, key);
    assert!(
        matches!(msgs[..], [Down::Welcome { .. }, .., Down::SyncEnd]),
        "{msgs:?}"
    );
}
