//! Frames a task costs in an open session. A task that is done before its
//! `Received` leaves the device costs one report: the final status takes the
//! `Received`'s place and sequence number. A `Received` that was, or may have
//! been, on the wire is never replaced; an acknowledgement asks for no
//! persist, and a reboot after one records nothing twice. Reports read
//! together get one cumulative `Ack`.
//!
//! A device and a server driven by hand on a virtual clock that stands still,
//! so that each test decides which frames arrive.

mod common;

use common::{Behaviour, SimDevice};
use mdm_sync::device::{DeviceConfig, Event};
use mdm_sync::server::{FleetStore, MemoryStore, Server, ServerConfig, ServerEvent};
use mdm_sync::server::{ServerError, TaskState};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::{
    self, frame, reason, DeviceId, Down, Platform, ReportBody, TaskId, TaskKind, TaskStatus, Up,
};

const START: Instant = Instant::from_millis(1_000_000);
const DONE: TaskStatus = TaskStatus::Succeeded { result: None };

struct Link {
    server: Server<MemoryStore>,
    // Finishes its tasks at once when handed out (`Behaviour::Succeed`, before
    // the next transmit), or holds them.
    d: SimDevice,
    id: DeviceId,
    // The session key, read from the challenge.
    key: u32,
    now: Instant,
    // Every task state the server announced, in order.
    changes: Vec<(TaskId, TaskState)>,
}

impl Link {
    /// A device that has done its boot sync and holds a scan, so that its
    /// session stays open while time stands still.
    fn in_session() -> Self {
        let mut server = Server::new(
            ServerConfig::default(),
            MemoryStore::new(),
            [1; 32],
            [2; 32],
        );
        let id = DeviceId(7);
        let secret = server.enroll(id, START).unwrap();
        let mut d = SimDevice::new(DeviceConfig::new(id, 0, secret, Platform::Android), START);
        d.behaviour = Behaviour::Hold;
        let mut l = Self {
            server,
            d,
            id,
            key: 0,
            now: START,
            changes: Vec::new(),
        };
        l.queue(TaskKind::Scan);
        l.settle();
        assert!(
            l.d.conn.is_some() && l.d.held.len() == 1,
            "session not open"
        );
        l
    }

    fn quick(&mut self) {
        self.d.behaviour = Behaviour::Succeed;
    }

    fn queue(&mut self, kind: TaskKind) -> TaskId {
        let opts = Default::default();
        self.server
            .enqueue_task(self.id, kind, opts, self.now)
            .unwrap()
    }

    fn state(&self, task: TaskId) -> TaskState {
        self.server.task_state(self.id, task).unwrap()
    }

    fn states_of(&self, task: TaskId) -> Vec<TaskState> {
        let of = self.changes.iter().filter(|(t, _)| *t == task);
        of.map(|(_, s)| *s).collect()
    }

    fn last_report_seq(&self) -> u32 {
        let rec = self.server.store().device(self.id).unwrap().unwrap();
        rec.last_report_seq
    }

    /// Acts on the device's events like an application; returns them.
    fn events(&mut self) -> Vec<Event> {
        let mut seen = Vec::new();
        while let Some(ev) = self.d.dev.poll_event() {
            seen.push(ev);
            self.d.on_event(ev, &mut self.server, self.now);
        }
        seen
    }

    /// Everything the device sends now, handed to the server.
    fn up(&mut self) -> Vec<Up> {
        let mut sent = Vec::new();
        let mut buf = [0u8; 1024];
        while let Some(n) = self.d.dev.poll_transmit(&mut buf).unwrap() {
            sent.push(wire::decode::<Up>(frame::payload(&buf[..n])).unwrap());
            if let Some(conn) = self.d.conn {
                let _ = self.server.handle_bytes(conn, &buf[..n], self.now);
            }
        }
        sent
    }

    /// Everything the device sends now, handed to the server in one read.
    fn up_together(&mut self) -> Vec<Up> {
        let (mut sent, mut bytes) = (Vec::new(), Vec::new());
        let mut buf = [0u8; 1024];
        while let Some(n) = self.d.dev.poll_transmit(&mut buf).unwrap() {
            sent.push(wire::decode::<Up>(frame::payload(&buf[..n])).unwrap());
            bytes.extend_from_slice(&buf[..n]);
        }
        let conn = self.d.conn.unwrap();
        self.server.handle_bytes(conn, &bytes, self.now).unwrap();
        sent
    }

    /// Everything the server has for the device; handed to it when `deliver`.
    fn down(&mut self, deliver: bool) -> Vec<Down> {
        let Some(conn) = self.d.conn else {
            return Vec::new();
        };
        let mut bytes = Vec::new();
        let mut buf = [0u8; 4096];
        while let Some(n) = self.server.poll_transmit_for(conn, &mut buf) {
            bytes.extend_from_slice(&buf[..n]);
        }
        let mut msgs = Vec::new();
        let mut rest = &bytes[..];
        while rest.len() >= 8 {
            let len = usize::from(u16::from_le_bytes([rest[2], rest[3]]));
            let msg = wire::decode::<Down>(&rest[4..4 + len]).unwrap();
            if let Down::Challenge { nonce, .. } = msg {
                self.key = frame::session_key(&nonce);
            }
            msgs.push(msg);
            rest = &rest[8 + len..];
        }
        if deliver {
            let _ = self.d.dev.handle_bytes(&bytes, self.now);
        }
        msgs
    }

    fn server_events(&mut self) -> bool {
        let mut moved = false;
        while let Some(ev) = self.server.poll_event() {
            moved = true;
            match ev {
                ServerEvent::TaskChanged { task, state, .. } => self.changes.push((task, state)),
                ServerEvent::SendPush { .. } => self.d.dev.push_received(self.now),
                ServerEvent::Close { conn } if Some(conn) == self.d.conn => {
                    self.d.conn = None;
                    self.d.dev.disconnected(self.now);
                }
                _ => {}
            }
        }
        moved
    }

    /// Runs both sides until nothing moves; returns what went up and down.
    fn settle(&mut self) -> (Vec<Up>, Vec<Down>) {
        let (mut ups, mut downs) = (Vec::new(), Vec::new());
        loop {
            self.d.dev.handle_timeout(self.now);
            let mut moved = !self.events().is_empty();
            let up = self.up();
            let down = self.down(true);
            moved |= !up.is_empty() || !down.is_empty();
            moved |= self.server_events();
            ups.extend(up);
            downs.extend(down);
            if !moved {
                return (ups, downs);
            }
        }
    }

    /// The transport breaks: both sides see it close.
    fn close(&mut self) {
        if let Some(conn) = self.d.conn.take() {
            self.server.connection_closed(conn, self.now);
            self.d.dev.disconnected(self.now);
        }
    }

    /// Past any backoff, so that a sync the device wants starts.
    fn later(&mut self) {
        self.now = self.now + Duration::from_mins(30);
        self.server.handle_timeout(self.now).unwrap();
    }
}

fn report(seq: u32, task: TaskId, status: TaskStatus) -> Up {
    let body = ReportBody::Task { task, status };
    Up::Report { seq, body }
}

fn reports(sent: &[Up]) -> Vec<Up> {
    let only = sent.iter().filter(|m| matches!(m, Up::Report { .. }));
    only.cloned().collect()
}

#[test]
fn a_quick_task_costs_one_report_and_the_server_records_its_final_status() {
    let mut l = Link::in_session();
    l.quick();
    let seq = l.last_report_seq() + 1;
    let lock = l.queue(TaskKind::Lock);
    let (up, down) = l.settle();

    assert_eq!(up, vec![report(seq, lock, DONE)]);
    assert!(
        matches!(down[..], [Down::Task(t), Down::Ack { seq: a }] if t.id == lock && a == seq),
        "{down:?}"
    );
    assert_eq!(l.state(lock), TaskState::Succeeded { result: None });
    // Queued in session, it is announced once, as offered; then straight to
    // its final state: the console never saw it Delivered.
    let done = TaskState::Succeeded { result: None };
    let states = vec![TaskState::Offered, done];
    assert_eq!(l.states_of(lock), states);
    assert_eq!(l.last_report_seq(), seq);
    assert_eq!(l.d.dev.outbox_len(), 0);
}

#[test]
fn a_slow_task_still_sends_received_first() {
    let mut l = Link::in_session();
    let seq = l.last_report_seq() + 1;
    let locate = l.queue(TaskKind::Locate);
    let (up, _) = l.settle();
    assert_eq!(up, vec![report(seq, locate, TaskStatus::Received)]);
    assert_eq!(l.state(locate), TaskState::Delivered);

    l.d.dev.task_status(locate, DONE, l.now).unwrap();
    let (up, down) = l.settle();
    assert_eq!(up, vec![report(seq + 1, locate, DONE)]);
    assert_eq!(down, vec![Down::Ack { seq: seq + 1 }]);
    assert_eq!(l.state(locate), TaskState::Succeeded { result: None });
}

/// The server stored the `Received`, its ack was lost with the link, and the
/// task finished offline. Had the final status replaced the `Received`, the
/// next `Welcome` would acknowledge it unseen and the task would stay
/// Delivered for ever.
#[test]
fn a_received_that_went_out_is_not_replaced() {
    let mut l = Link::in_session();
    let seq = l.last_report_seq() + 1;
    let locate = l.queue(TaskKind::Locate);
    l.down(true); // the task
    l.events(); // persisted, handed out, held
    assert_eq!(l.up(), vec![report(seq, locate, TaskStatus::Received)]);
    assert_eq!(l.down(false), vec![Down::Ack { seq }], "the ack is lost");
    l.close();
    l.d.dev.task_status(locate, DONE, l.now).unwrap();
    assert_eq!(l.d.dev.outbox_len(), 2, "Received and the final status");

    l.later();
    let (up, down) = l.settle();
    assert!(matches!(down[1], Down::Welcome { ack, .. } if ack == seq));
    assert_eq!(reports(&up), vec![report(seq + 1, locate, DONE)]);
    assert_eq!(l.state(locate), TaskState::Succeeded { result: None });
}

/// A `Received` restored from a snapshot may have left before the reboot:
/// it is sent as it is, and the task's end (interrupted by the reboot) comes
/// as a report of its own.
#[test]
fn a_received_restored_from_a_snapshot_is_not_replaced() {
    let mut l = Link::in_session();
    let seq = l.last_report_seq() + 1;
    let locate = l.queue(TaskKind::Locate);
    l.down(true);
    let events = l.events();
    assert!(events.contains(&Event::Persist), "{events:?}");
    l.d.reboot(&mut l.server, l.now); // before anything was sent

    l.later();
    let (up, _) = l.settle();
    let interrupted = TaskStatus::Failed {
        reason: reason::INTERRUPTED_BY_REBOOT,
    };
    let sent = reports(&up);
    assert!(
        sent.contains(&report(seq, locate, TaskStatus::Received)),
        "{sent:?}"
    );
    assert!(
        sent.contains(&report(seq + 1, locate, interrupted)),
        "{sent:?}"
    );
    let failed = TaskState::Failed {
        reason: reason::INTERRUPTED_BY_REBOOT,
    };
    assert_eq!(l.states_of(locate).last(), Some(&failed));
}

/// An ack trims the outbox without a persist, so the latest snapshot still
/// holds the acknowledged report. After a reboot the `Welcome` acknowledges it
/// again before it is sent; sent anyway, the server takes it for a resend and
/// answers with its ack. Nothing is recorded twice, nothing is lost.
#[test]
fn a_reboot_after_an_unpersisted_ack_records_nothing_twice() {
    let mut l = Link::in_session();
    l.quick();
    let seq = l.last_report_seq() + 1;
    let lock = l.queue(TaskKind::Lock);
    l.down(true);
    l.events();
    let sent = l.up();
    assert_eq!(sent, vec![report(seq, lock, DONE)]);
    assert_eq!(l.down(true), vec![Down::Ack { seq }]);
    assert_eq!(l.d.dev.outbox_len(), 0);
    assert_eq!(l.events(), vec![], "no persist for an ack");

    l.d.reboot(&mut l.server, l.now);
    // A task held in the next session keeps it open for the resend below.
    l.d.behaviour = Behaviour::Hold;
    let locate = l.queue(TaskKind::Locate);
    l.later();
    let (up, _) = l.settle();
    let scan = l.changes[0].0;
    let interrupted = TaskStatus::Failed {
        reason: reason::INTERRUPTED_BY_REBOOT,
    };
    let want = vec![
        report(seq + 1, scan, interrupted),
        report(seq + 2, locate, TaskStatus::Received),
    ];
    assert_eq!(
        reports(&up),
        want,
        "the acknowledged report is not sent again"
    );
    assert_eq!(l.d.dev.outbox_len(), 0);

    // The acknowledged report once more, in the new session.
    let mut buf = [0u8; 64];
    let n = frame::encode_keyed(&report(seq, lock, DONE), &mut buf, l.key).unwrap();
    let conn = l.d.conn.expect("the held task keeps the session open");
    let r: Result<(), ServerError<_>> = l.server.handle_bytes(conn, &buf[..n], l.now);
    r.unwrap();
    assert_eq!(l.down(true), vec![Down::Ack { seq: seq + 2 }]);
    l.server_events();
    let done = TaskState::Succeeded { result: None };
    let recorded = l.states_of(lock).iter().filter(|s| **s == done).count();
    assert_eq!(recorded, 1);
    assert_eq!(l.last_report_seq(), seq + 2);
}

#[test]
fn reports_read_together_get_one_ack() {
    let mut l = Link::in_session();
    let seq = l.last_report_seq() + 1;
    let tasks = [l.queue(TaskKind::Locate), l.queue(TaskKind::Scan)];
    l.down(true);
    l.events(); // persisted, both handed out and held
    let want: Vec<Up> = (0..2)
        .map(|k| report(seq + k, tasks[k as usize], TaskStatus::Received))
        .collect();
    assert_eq!(l.up_together(), want);
    assert_eq!(l.down(true), vec![Down::Ack { seq: seq + 1 }]);
    assert_eq!(l.d.dev.outbox_len(), 0);
    assert_eq!(l.last_report_seq(), seq + 1);
    for t in tasks {
        assert_eq!(l.state(t), TaskState::Delivered);
    }
}

#[test]
fn a_report_read_with_a_bad_frame_is_acknowledged_before_the_error() {
    let mut l = Link::in_session();
    l.quick();
    let seq = l.last_report_seq() + 1;
    let lock = l.queue(TaskKind::Lock);
    l.down(true);
    l.events();
    let mut bytes = vec![0u8; 128];
    let n = frame::encode_keyed(&report(seq, lock, DONE), &mut bytes, l.key).unwrap();
    let proof = Up::Proof { mac: [0; 32] }; // not allowed once syncing
    let m = frame::encode_keyed(&proof, &mut bytes[n..], l.key).unwrap();
    let conn = l.d.conn.unwrap();
    let r = l.server.handle_bytes(conn, &bytes[..n + m], l.now);
    assert!(r.is_err());
    let down = l.down(false);
    assert_eq!(
        down,
        vec![Down::Ack { seq }, Down::Error(wire::ErrorCode::BadMessage)]
    );
    assert_eq!(l.state(lock), TaskState::Succeeded { result: None });
}
