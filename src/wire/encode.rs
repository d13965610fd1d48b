//! Hand-written encoders for the messages of an open session.
//!
//! They write exactly the bytes that the derived `Serialize` impls write
//! through `ser` (the property test in `ser` compares both with postcard for
//! every message kind), without the serde layers between a message and its
//! varints. Only the messages that every sync carries are written here:
//! `Challenge`, `Welcome`, `Ack`, `Task`, `Cancel`, `SyncEnd`; `Proof`,
//! `Progress` and task status reports. The rest (`Hello`, policies, errors,
//! compliance and policy reports) goes through serde.
//!
//! Only with the `hand-encode` feature: a microcontroller build leaves it off,
//! where these would add about 0.4 KB of flash (opt-level z) beside the
//! serializer that `Hello` and policy reports need anyway.

use super::ser::{Out, Piece, Writer};
use super::{encode_serde, Down, ReportBody, Task, TaskResult, TaskStatus, Up};

impl Writer<'_> {
    fn u32(&mut self, v: u32) {
        self.varint(v.into());
    }

    /// A report body by hand when it is a task report; `false` for the rest.
    #[inline]
    fn report_body(&mut self, body: &ReportBody) -> bool {
        let ReportBody::Task { task, status } = body else {
            return false;
        };
        self.push(0);
        self.varint(task.0);
        status.write(self);
        true
    }
}

/// `Down::Ack`, as one piece (see `Writer::piece`): the tag, the sequence.
struct AckPiece(u32);

const ACK_ROOM: usize = 1 + 5;

impl Piece for AckPiece {
    #[inline(always)]
    fn write<O: Out>(&self, w: &mut O) {
        w.push(2);
        w.varint32(self.0);
    }
}

/// `Down::Task`, as one piece: the tag, then the task's sequence, id and
/// kind (its variant index).
struct Offer<'a>(&'a Task);

const OFFER_ROOM: usize = 1 + 5 + 10 + 1;

impl Piece for Offer<'_> {
    #[inline(always)]
    fn write<O: Out>(&self, w: &mut O) {
        let t = self.0;
        w.push(3);
        w.varint32(t.seq);
        w.varint(t.id.0);
        w.push(t.kind as u8);
    }
}

/// The serde path, out of line: the hand-written path stays small.
#[inline(never)]
fn by_serde<T: serde::Serialize>(msg: &T, out: &mut [u8]) -> usize {
    encode_serde(msg, out)
}

/// `Down::encode`.
#[inline]
pub(super) fn down(msg: &Down, out: &mut [u8]) -> usize {
    let mut w = Writer::new(out);
    match msg {
        // A `[u8; 16]` is a tuple to serde: its bytes as they are.
        Down::Challenge {
            version,
            attempt,
            nonce,
        } => {
            w.push(0);
            w.varint((*version).into());
            w.varint(*attempt);
            w.bytes(nonce);
        }
        Down::Welcome {
            ack,
            periodic_s,
            want_token,
        } => {
            w.push(1);
            w.u32(*ack);
            w.u32(*periodic_s);
            w.push((*want_token).into());
        }
        Down::Ack { seq } => w.piece::<ACK_ROOM, _>(&AckPiece(*seq)),
        Down::Task(task) => w.piece::<OFFER_ROOM, _>(&Offer(task)),
        Down::Cancel { task } => {
            w.push(4);
            w.varint(task.0);
        }
        Down::SyncEnd => w.push(6),
        Down::Policy(_) | Down::Error(_) => return by_serde(msg, out),
    }
    w.len()
}

/// `Up::encode`.
#[inline]
pub(super) fn up(msg: &Up, out: &mut [u8]) -> usize {
    let mut w = Writer::new(out);
    match msg {
        Up::Proof { mac } => {
            w.push(1);
            w.bytes(mac);
        }
        Up::Progress { task, percent } => {
            w.push(2);
            w.varint(task.0);
            match percent {
                None => w.push(0),
                Some(p) => w.bytes(&[1, *p]),
            }
        }
        Up::Report { seq, body } => {
            w.push(3);
            w.u32(*seq);
            if !w.report_body(body) {
                return by_serde(msg, out);
            }
        }
        Up::Hello(_) => return by_serde(msg, out),
    }
    w.len()
}

/// `TaskStatus` alone (see `wire::encode_task_status`): through a `Chunk`
/// where `out` has the room (see `Writer::piece`).
#[inline]
pub(super) fn task_status(status: &TaskStatus, out: &mut [u8]) -> usize {
    let mut w = Writer::new(out);
    w.piece::<TASK_STATUS_ROOM, _>(status);
    w.len()
}

/// The room a `TaskStatus` is written in: a location, three tags then three
/// varints of up to five bytes.
const TASK_STATUS_ROOM: usize = 3 + 3 * 5;

/// A task's status, as its derived `Serialize` writes it.
impl Piece for TaskStatus {
    #[inline]
    fn write<O: Out>(&self, w: &mut O) {
        let zigzag = |v: i32| ((v << 1) ^ (v >> 31)) as u32;
        match *self {
            TaskStatus::Received => w.push(0),
            TaskStatus::Succeeded { result } => {
                w.push(1);
                match result {
                    None => w.push(0),
                    Some(TaskResult::Location {
                        lat_e7,
                        lon_e7,
                        accuracy_m,
                    }) => {
                        w.push(1);
                        w.push(0);
                        w.varint32(zigzag(lat_e7));
                        w.varint32(zigzag(lon_e7));
                        w.varint32(accuracy_m);
                    }
                    Some(TaskResult::Scan { threats }) => {
                        w.push(1);
                        w.push(1);
                        w.varint32(threats.into());
                    }
                }
            }
            TaskStatus::Failed { reason } => {
                w.push(2);
                w.varint32(reason.into());
            }
            TaskStatus::Deferred { retry_after_s } => {
                w.push(3);
                match retry_after_s {
                    None => w.push(0),
                    Some(s) => {
                        w.push(1);
                        w.varint32(s);
                    }
                }
            }
            TaskStatus::Cancelled => w.push(4),
        }
    }
}

/// `ReportBody::encode`.
#[inline]
pub(super) fn report_body(body: &ReportBody, out: &mut [u8]) -> usize {
    let mut w = Writer::new(out);
    if w.report_body(body) {
        w.len()
    } else {
        by_serde(body, out)
    }
}
