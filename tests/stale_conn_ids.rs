//! The engine finds a session by the slot its id carries and reuses the slot
//! of a closed one at once: a closed connection's id must still reach
//! nothing of the session now in its slot, through any public call taking
//! an id or through its own leftover deadline, at any table size.

mod common;

use mdm_sync::server::{ConnId, MemoryStore, Server, ServerConfig, ServerError, ServerEvent};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::{DeviceId, TaskKind};

const T0: Instant = Instant::from_millis(1_000);

fn server(max_sessions: usize) -> Server<MemoryStore> {
    let cfg = ServerConfig {
        max_sessions,
        ..ServerConfig::default()
    };
    Server::new(cfg, MemoryStore::new(), [1; 32], [2; 32])
}

/// The connections `poll_event` says to close (and no push asked for).
fn closed(s: &mut Server<MemoryStore>) -> Vec<ConnId> {
    core::iter::from_fn(|| s.poll_event())
        .filter_map(|e| match e {
            ServerEvent::Close { conn } => Some(conn),
            ServerEvent::SendPush { device, .. } => panic!("push to {device:?}"),
            _ => None,
        })
        .collect()
}

#[test]
fn a_closed_connections_id_reaches_nothing_of_the_next_session_in_its_slot() {
    for max in [1, 2, 3, 4, 64, 65_536, usize::MAX] {
        let mut s = server(max);
        let d = DeviceId(3);
        let secret = s.enroll(d, T0).unwrap();
        // The last slot freed is the next one taken.
        let stale = s.connection_opened(T0).unwrap();
        s.connection_closed(stale, T0);
        let (conn, _, answer) = common::raw_handshake(&mut s, d, &secret, T0);
        answer.unwrap();
        assert_ne!(conn, stale, "max {max}");
        closed(&mut s);

        // Work for the device lands in its session's output.
        s.enqueue_task(d, TaskKind::Lock, Default::default(), T0)
            .unwrap();
        let mut buf = [0u8; 4096];
        assert_eq!(s.poll_transmit_for(stale, &mut buf), None, "max {max}");
        // Garbage on the stale id would fail the live session.
        let garbage = [0xA5u8; 64];
        let r = s.handle_bytes(stale, &garbage, T0);
        assert!(
            matches!(r, Err(ServerError::UnknownConnection)),
            "max {max}: {r:?}"
        );
        s.connection_closed(stale, T0);
        s.connection_dropped(stale, T0).unwrap();
        assert_eq!(closed(&mut s), Vec::<ConnId>::new(), "max {max}");
        assert_eq!(s.session_count(), 1, "max {max}");
        let n = s.poll_transmit_for(conn, &mut buf);
        assert!(
            n.is_some_and(|n| n > 0),
            "max {max}: the live session's output"
        );
        // Nor can `poll_transmit` hand its output out under the stale id.
        s.enqueue_task(d, TaskKind::Locate, Default::default(), T0)
            .unwrap();
        let (c, _) = s.poll_transmit(&mut buf).unwrap();
        assert_eq!(c, conn, "max {max}");
    }
}

#[test]
fn a_closed_connections_deadline_does_not_close_the_next_session_in_its_slot() {
    for max in [1, 2, 3, 65_536, usize::MAX] {
        let mut s = server(max);
        let timeout = s.config().handshake_timeout;
        let stale = s.connection_opened(T0).unwrap();
        s.connection_closed(stale, T0);
        let later = T0 + Duration::from_secs(5);
        let conn = s.connection_opened(later).unwrap();
        // The stale connection's deadline passes: the new one is not timed
        // out (no error frame, no close).
        let mut buf = [0u8; 64];
        s.handle_timeout(T0 + timeout).unwrap();
        assert_eq!(s.poll_transmit_for(conn, &mut buf), None, "max {max}");
        assert_eq!(closed(&mut s), Vec::<ConnId>::new(), "max {max}");
        assert_eq!(s.session_count(), 1, "max {max}");
        // Until its own deadline.
        s.handle_timeout(later + timeout).unwrap();
        assert!(s.poll_transmit_for(conn, &mut buf).is_some(), "max {max}");
        assert_eq!(closed(&mut s), vec![conn], "max {max}");
        assert_eq!(s.session_count(), 0, "max {max}");
    }
}
