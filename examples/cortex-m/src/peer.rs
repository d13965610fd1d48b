//! A scripted server peer: plays the server's side of the wire protocol for one
//! device with nothing but the crate's no_std wire codec and `auth` module, so
//! the firmware needs no allocator (the real server engine needs `alloc`).
//!
//! It does what the protocol asks of a server, and checks it: answers `Hello`
//! with a fresh nonce, verifies the proof over that `Hello`, keys every
//! later frame with the session key, offers the tasks the device has not
//! accepted yet, stores each report exactly once in sequence and acks it.

use cortex_m_semihosting::hprintln;
use mdm_sync::auth::{self, Secret};
use mdm_sync::wire::{self, frame, FrameDecoder, TaskResult, TaskStatus};
use mdm_sync::wire::{DeviceId, Down, ReportBody, Task, TaskId, TaskKind, Up, PROTOCOL_VERSION};

use crate::pipe::Pipe;

/// The last status the peer stored for a task (for the script's checks).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Queued,
    Status(TaskStatus),
}

enum State {
    Closed,
    AwaitHello,
    AwaitProof {
        nonce: [u8; 16],
        hello: auth::HelloBinding,
    },
    Open,
}

pub struct Peer {
    device: DeviceId,
    secret: Secret,
    nonce_seed: Secret,
    sessions: u64,
    state: State,
    /// The device's highest accepted task sequence, from its `Hello`.
    offer_from: u32,
    decoder: FrameDecoder,
    /// The session's frame key (0 until the challenge).
    key: u32,
    /// Highest report sequence stored.
    pub stored: u32,
    tasks: heapless::Vec<(Task, Seen), 4>,
    /// Compliance events stored, for the script's checks.
    pub compliance: u32,
}

impl Peer {
    pub fn new(master: &Secret, device: DeviceId, generation: u32, nonce_seed: Secret) -> Self {
        Self {
            device,
            secret: auth::derive_secret(master, device, generation),
            nonce_seed,
            sessions: 0,
            state: State::Closed,
            offer_from: 0,
            decoder: FrameDecoder::new(),
            key: 0,
            stored: 0,
            tasks: heapless::Vec::new(),
            compliance: 0,
        }
    }

    /// The operator queues a task; the next sync delivers it.
    pub fn queue(&mut self, id: u64, kind: TaskKind) {
        let seq = self.tasks.len() as u32 + 1;
        let task = Task {
            seq,
            id: TaskId(id),
            kind,
        };
        assert!(
            self.tasks.push((task, Seen::Queued)).is_ok(),
            "task queue full"
        );
        hprintln!("server: queued task {} {}", id, kind_name(kind));
    }

    /// What the peer last stored for task `id`.
    pub fn seen(&self, id: u64) -> Option<Seen> {
        let found = self.tasks.iter().find(|(t, _)| t.id.0 == id);
        found.map(|(_, s)| *s)
    }

    pub fn accept(&mut self) {
        self.state = State::AwaitHello;
        self.decoder.reset();
        self.key = 0;
    }

    pub fn close(&mut self) {
        self.state = State::Closed;
    }

    /// Bytes from the device; answers go into `out`.
    pub fn on_bytes(&mut self, mut bytes: &[u8], out: &mut Pipe) {
        while !bytes.is_empty() {
            let n = self.decoder.push(bytes);
            bytes = &bytes[n..];
            let mut replies: heapless::Vec<Down, 8> = heapless::Vec::new();
            while let Some(frame) = self.decoder.decode() {
                let payload = frame.expect("server: a bad frame from the device");
                let hello = auth::bind_hello(payload);
                let msg = wire::decode::<Up>(payload).expect("server: a bad message");
                self.on_message(msg, &hello, &mut replies);
            }
            for reply in replies {
                // The challenge goes out before the session has a key.
                let key = match reply {
                    Down::Challenge { .. } => 0,
                    _ => self.key,
                };
                send(&reply, key, out);
            }
        }
    }

    /// One message; `hello` is what a proof covers of its payload (used if it is a `Hello`).
    fn on_message(
        &mut self,
        msg: Up,
        hello: &auth::HelloBinding,
        replies: &mut heapless::Vec<Down, 8>,
    ) {
        match (&self.state, msg) {
            (State::AwaitHello, Up::Hello(h)) => {
                assert!(h.device == self.device && h.version == PROTOCOL_VERSION);
                self.sessions += 1;
                let nonce = auth::nonce(&self.nonce_seed, self.sessions);
                self.state = State::AwaitProof {
                    nonce,
                    hello: *hello,
                };
                self.key = frame::session_key(&nonce);
                self.decoder.set_key(self.key);
                self.offer_from = h.last_task_seq;
                push(
                    replies,
                    Down::Challenge {
                        version: PROTOCOL_VERSION,
                        attempt: h.attempt,
                        nonce,
                    },
                );
            }
            (State::AwaitProof { nonce, hello }, Up::Proof { mac }) => {
                let ok = auth::verify(&self.secret, nonce, hello, &mac);
                assert!(ok, "server: proof rejected");
                hprintln!("server: device {} authenticated (proof ok)", self.device.0);
                self.state = State::Open;
                let ack = self.stored;
                // This peer keeps no push targets: it never asks for one.
                let welcome = Down::Welcome {
                    ack,
                    periodic_s: 0,
                    want_token: false,
                };
                push(replies, welcome);
                self.offer(replies);
            }
            (State::Open, Up::Report { seq, body }) => {
                if seq == self.stored.wrapping_add(1) {
                    self.stored = seq;
                    self.store(seq, &body);
                } else {
                    assert!(!wire::seq_newer(seq, self.stored), "server: report gap");
                    hprintln!("server: report {}: already stored, acked again", seq);
                }
                push(replies, Down::Ack { seq: self.stored });
            }
            (State::Open, Up::Progress { task, percent }) => {
                let kind = self.kind_of(task);
                match percent {
                    Some(p) => hprintln!("server: task {} {}: progress {}%", task.0, kind, p),
                    None => hprintln!("server: task {} {}: running", task.0, kind),
                }
            }
            _ => panic!("server: message out of order"),
        }
    }

    /// Offers every queued task the device has not accepted, then `SyncEnd`.
    fn offer(&mut self, replies: &mut heapless::Vec<Down, 8>) {
        let from = self.offer_from;
        for (task, seen) in self.tasks.iter() {
            if task.seq > from && *seen == Seen::Queued {
                push(replies, Down::Task(*task));
            }
        }
        push(replies, Down::SyncEnd);
    }

    fn store(&mut self, seq: u32, body: &ReportBody) {
        match body {
            ReportBody::Task { task, status } => {
                let kind = self.kind_of(*task);
                if let Some(slot) = self.tasks.iter_mut().find(|(t, _)| t.id == *task) {
                    slot.1 = Seen::Status(*status);
                }
                print_status(seq, task.0, kind, status);
            }
            ReportBody::Compliance(event) => {
                self.compliance += 1;
                hprintln!(
                    "server: report {}: compliance event {:?} stored, acked",
                    seq,
                    event
                );
            }
            ReportBody::Policy(report) => {
                hprintln!(
                    "server: report {}: policy {} {:?}",
                    seq,
                    report.version,
                    report.outcome
                );
            }
        }
    }

    fn kind_of(&self, id: TaskId) -> &'static str {
        let found = self.tasks.iter().find(|(t, _)| t.id == id);
        found.map_or("?", |(t, _)| kind_name(t.kind))
    }
}

fn print_status(seq: u32, id: u64, kind: &str, status: &TaskStatus) {
    match status {
        TaskStatus::Received => hprintln!("server: report {}: task {} {}: received", seq, id, kind),
        TaskStatus::Succeeded {
            result:
                Some(TaskResult::Location {
                    lat_e7,
                    lon_e7,
                    accuracy_m,
                }),
        } => hprintln!(
            "server: report {}: task {} {}: succeeded, location {},{} +-{} m",
            seq,
            id,
            kind,
            Degrees(*lat_e7),
            Degrees(*lon_e7),
            accuracy_m
        ),
        TaskStatus::Succeeded { .. } => {
            hprintln!("server: report {}: task {} {}: succeeded", seq, id, kind)
        }
        other => hprintln!("server: report {}: task {} {}: {:?}", seq, id, kind, other),
    }
}

pub fn kind_name(kind: TaskKind) -> &'static str {
    match kind {
        TaskKind::Lock => "lock",
        TaskKind::Unlock => "unlock",
        TaskKind::Scan => "scan",
        TaskKind::Locate => "locate",
        TaskKind::Wipe => "wipe",
    }
}

/// Degrees times 10^7, printed as decimal degrees.
struct Degrees(i32);

impl core::fmt::Display for Degrees {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(f, "{}{}.{:07}", sign, abs / 10_000_000, abs % 10_000_000)
    }
}

fn push(replies: &mut heapless::Vec<Down, 8>, msg: Down) {
    assert!(replies.push(msg).is_ok(), "server: too many replies");
}

fn send(msg: &Down, key: u32, out: &mut Pipe) {
    let mut buf = [0u8; frame::MAX_FRAME];
    let n = frame::encode_keyed(msg, &mut buf, key).expect("server: frame encodes");
    out.write(&buf[..n]);
}
