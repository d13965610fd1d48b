//! `device`: one `Device` fed arbitrary frames and events, playing the
//! application and its storage (two snapshot slots) faithfully.
//!
//! Input: capacity choice (u8: even = outbox 16 / 4 tasks, odd = 4 / 2), then
//! operations (see [`crate::script::device`]).
//!
//! The harness plays the server's side of the handshake as the protocol wants
//! it: it reads the bytes it feeds for the first frame of each session (with
//! a decoder like the device's), and once that is a `Challenge` the device
//! takes, it frames the `Down` messages it builds itself with that nonce's
//! session key and expects the device's frames with it too.
//!
//! Invariants: no panic; outbox and running tasks within the capacities; every
//! transmitted frame is one valid frame holding a valid `Up` message, with the
//! session key from the challenge on (key 0 before it, when only the `Hello`
//! may go out, once a session); a challenge naming another attempt than the
//! session's `Hello` is stale and not taken; the `Proof` verifies for the
//! device's secret, the challenge's nonce and the `Hello` sent in that
//! session; no `Hello.attempt` and no task delivery sequence handed out
//! (`Execute`) repeats over the whole run, reboots and torn snapshot writes
//! included; a snapshot the engine
//! wrote completely always restores; `poll_timeout` always has a deadline and
//! `handle_timeout` there does not leave it in the past.

use mdm_sync::auth::{self, Secret};
use mdm_sync::device::{pick_latest, Device, DeviceConfig, DeviceError, Event};
use mdm_sync::time::Instant;
use mdm_sync::wire::{
    self, frame, DeviceId, Down, FrameDecoder, Platform, TaskId, Up, MAX_DOWN_FRAME, MAX_FRAME,
    PROTOCOL_VERSION,
};

use std::collections::HashSet;

use crate::frames::unframe;
use crate::mirror::{kind, FCompliance, FDown, FOutcome, FStatus};
use crate::script::device as op;
use crate::{chunked, Input};

/// The identity the harness's device runs under (the corpus generator uses it too).
pub const DEVICE: DeviceId = DeviceId(1);

/// The configuration of the harness's device, given its secret.
pub fn config(secret: Secret) -> DeviceConfig {
    let mut cfg = DeviceConfig::new(DEVICE, 0, secret, Platform::Android);
    cfg.push_token = heapless::String::try_from("fuzz-token").unwrap();
    cfg
}

/// Runs one input.
pub fn run(data: &[u8]) {
    run_counting(data);
}

/// Runs one input; returns how many tasks the device handed out (the corpus
/// test checks that recorded sessions still get that far).
pub fn run_counting(data: &[u8]) -> usize {
    let mut input = Input::new(data);
    if input.u8().is_multiple_of(2) {
        Harness::<16, 4>::new().play(&mut input)
    } else {
        Harness::<4, 2>::new().play(&mut input)
    }
}

struct Harness<const O: usize, const I: usize> {
    cfg: DeviceConfig,
    dev: Device<O, I>,
    now: u64,
    slots: [Vec<u8>; 2],
    wrote: bool,
    crash: Option<u16>,
    refuse_next: bool,
    in_session: bool,
    link: Link,
    running: Vec<TaskId>,
    /// Highest delivery sequence handed out, over the whole run.
    executed: Option<u32>,
    /// Every `Hello.attempt` sent, over the whole run: none may repeat, across
    /// reboots and torn writes too.
    attempts: HashSet<u64>,
    handed_out: usize,
}

impl<const O: usize, const I: usize> Harness<O, I> {
    fn new() -> Self {
        let cfg = config([9; 32]);
        let now = 1_000;
        let mut dev = Device::new(cfg.clone(), Instant::from_millis(now));
        dev.handle_timeout(Instant::from_millis(now));
        let mut h = Self {
            cfg,
            dev,
            now,
            slots: [Vec::new(), Vec::new()],
            wrote: false,
            crash: None,
            refuse_next: false,
            in_session: false,
            link: Link::default(),
            running: Vec::new(),
            executed: None,
            attempts: HashSet::new(),
            handed_out: 0,
        };
        h.pump();
        h
    }

    fn at(&self) -> Instant {
        Instant::from_millis(self.now)
    }

    fn play(&mut self, input: &mut Input<'_>) -> usize {
        let mut ops = 0;
        while let Some(tag) = input.tag() {
            ops += 1;
            if ops > 4_000 {
                break;
            }
            self.op(tag % op::COUNT, input);
            self.pump();
            self.check();
        }
        self.handed_out
    }

    fn op(&mut self, tag: u8, input: &mut Input<'_>) {
        let now = self.at();
        match tag {
            op::FEED => {
                let chunk = input.u8();
                let len = usize::from(input.u16());
                let bytes = input.bytes(len);
                self.feed(bytes, chunk);
            }
            op::FEED_MSG => {
                if let Some(m) = input.arb::<FDown>() {
                    let attempt = self.link.attempt.unwrap_or(0);
                    self.feed_msg(&m.to_down(attempt));
                }
            }
            op::NEXT_TASK => {
                let delta = input.u8();
                let id = TaskId(u64::from(input.u16()));
                let kind = kind(input.u8());
                let seq = self.dev.last_task_seq().wrapping_add(1);
                let seq = seq.wrapping_add(u32::from(delta / 200)); // mostly the next one
                self.feed_msg(&Down::Task(wire::Task { seq, id, kind }));
            }
            op::TRANSPORT_FAILS => {
                if self.in_session {
                    self.in_session = false;
                    self.dev.disconnected(now);
                } else {
                    self.refuse_next = true;
                }
            }
            op::ADVANCE => {
                self.now = input.moved(self.now);
                self.dev.handle_timeout(self.at());
            }
            op::TO_DEADLINE => {
                let at = self
                    .dev
                    .poll_timeout()
                    .expect("a device always has a deadline");
                self.now = self.now.max(at.as_millis());
                self.dev.handle_timeout(self.at());
            }
            op::TRIGGER => match input.u8() % 3 {
                0 => self.dev.push_received(now),
                1 => self.dev.manual_sync(now),
                _ => self
                    .dev
                    .set_push_token(heapless::String::try_from("fuzz-token-2").unwrap(), now),
            },
            op::COMPLIANCE => {
                if let Some(e) = input.arb::<FCompliance>() {
                    let _ = self.dev.raise_compliance(e.into(), now);
                }
            }
            op::FINISH => {
                let k = usize::from(input.u8());
                let status = input.arb::<FStatus>().unwrap_or(FStatus::Succeeded);
                let task = match self.running.get(k % self.running.len().max(1)) {
                    Some(t) if k < 200 => *t,
                    _ => TaskId(k as u64),
                };
                if k % 3 == 0 {
                    let _ = self.dev.task_progress(task, Some(k as u8));
                } else if self.dev.task_status(task, status.into(), now).is_ok() {
                    self.running.retain(|t| *t != task);
                }
            }
            op::POLICY => {
                let outcome = input.arb::<FOutcome>().unwrap_or(FOutcome::Applied);
                let version = match self.dev.pending_policy() {
                    Some(p) if input.u8() < 200 => p.version,
                    _ => input.u32(),
                };
                let _ = self.dev.policy_applied(version, outcome.into(), now);
            }
            op::REBOOT => self.reboot(),
            op::CRASH_ON_WRITE => self.crash = Some(input.u16()),
            _ => unreachable!("tags are taken modulo the count"),
        }
    }

    fn feed(&mut self, bytes: &[u8], chunk: u8) {
        let now = self.at();
        let (dev, link) = (&mut self.dev, &mut self.link);
        let mut session = self.in_session;
        chunked(bytes, chunk, |part| match dev.handle_bytes(part, now) {
            Err(DeviceError::NotConnected) => {}
            result => {
                link.observe(part);
                if result.is_err() {
                    // Typed errors only; a failed session is over.
                    session &= dev.is_connected();
                }
            }
        });
        self.in_session = session && self.dev.is_connected();
        self.pump();
    }

    fn feed_msg(&mut self, msg: &Down) {
        let mut buf = [0u8; MAX_FRAME];
        let n = frame::encode_keyed(msg, &mut buf, self.link.key())
            .expect("every Down message fits a frame");
        self.feed(&buf[..n], 0);
    }

    /// The run loop: due timers, events (persisting at once), transmissions.
    fn pump(&mut self) {
        if self.dev.poll_timeout().is_some_and(|at| at <= self.at()) {
            self.dev.handle_timeout(self.at());
        }
        for _ in 0..1_000 {
            let Some(ev) = self.dev.poll_event() else {
                break;
            };
            match ev {
                Event::Persist if self.persist() => return, // rebooted
                Event::Persist => {}
                Event::Connect => {
                    if std::mem::take(&mut self.refuse_next) {
                        self.dev.connect_failed(self.at());
                    } else {
                        self.in_session = true;
                        self.link = Link::default();
                        self.dev.connected(self.at());
                    }
                }
                Event::Disconnect => self.in_session = false,
                Event::Execute(task) => {
                    if let Some(last) = self.executed {
                        assert!(
                            wire::seq_newer(task.seq, last),
                            "delivery seq {} handed out again (last {last})",
                            task.seq
                        );
                    }
                    self.executed = Some(task.seq);
                    self.handed_out += 1;
                    self.running.push(task.id);
                }
                Event::Cancel(task) if self.running.contains(&task) => {
                    let status = wire::TaskStatus::Cancelled;
                    self.dev.task_status(task, status, self.at()).unwrap();
                    self.running.retain(|t| *t != task);
                }
                _ => {}
            }
        }
        let mut buf = [0u8; MAX_FRAME];
        for _ in 0..1_000 {
            match self.dev.poll_transmit(&mut buf) {
                Ok(Some(n)) => self
                    .link
                    .sent(&buf[..n], &self.cfg.secret, &mut self.attempts),
                Ok(None) => break,
                Err(e) => panic!("poll_transmit with a full-size buffer: {e:?}"),
            }
        }
    }

    /// Writes the snapshot, or loses power during the write; `true` if rebooted.
    fn persist(&mut self) -> bool {
        let mut buf = vec![0u8; Device::<O, I>::SNAPSHOT_MAX];
        let n = self.dev.snapshot(&mut buf).expect("SNAPSHOT_MAX is enough");
        buf.truncate(n);
        let slot = self.dev.snapshot_slot();
        if let Some(keep) = self.crash.take() {
            let keep = usize::from(keep) % n.max(1);
            let old = std::mem::take(&mut self.slots[slot]);
            let mut torn = buf[..keep].to_vec();
            torn.extend(old.iter().skip(keep));
            self.slots[slot] = torn;
            self.reboot();
            return true;
        }
        self.slots[slot] = buf;
        self.wrote = true;
        false
    }

    fn reboot(&mut self) {
        let now = self.at();
        self.in_session = false;
        self.running.clear();
        self.dev = match pick_latest(&self.slots[0], &self.slots[1]) {
            Some(bytes) => Device::restore(self.cfg.clone(), bytes, now)
                .expect("a snapshot the engine wrote completely restores"),
            None => {
                assert!(!self.wrote, "both slots invalid after a complete write");
                Device::new(self.cfg.clone(), now)
            }
        };
        self.dev.handle_timeout(now);
        self.pump();
    }

    fn check(&mut self) {
        let outbox = self.dev.outbox_len();
        let running = self.dev.running_tasks().count();
        assert!(outbox <= O && running <= I && outbox + running <= O);
        assert!(self.dev.poll_timeout().is_some());
    }
}

/// The harness's view of the device's current session, from what it sent and
/// was fed since the last `Connect`.
#[derive(Default)]
struct Link {
    /// SHA-256 of the payload of the session's `Hello`, once sent.
    hello: Option<auth::HelloBinding>,
    /// That `Hello`'s attempt, which the right `Challenge` echoes.
    attempt: Option<u64>,
    /// The nonce of the `Challenge` the device took.
    nonce: Option<[u8; 16]>,
    /// Reads the bytes fed until the session's first frame, as the device does.
    first: FrameDecoder<MAX_DOWN_FRAME>,
    /// The first frame has come.
    answered: bool,
}

impl Link {
    /// The session key: from the challenge's nonce, 0 before it.
    fn key(&self) -> u32 {
        self.nonce.as_ref().map_or(0, frame::session_key)
    }

    /// Bytes the device took. Its first frame must be a `Challenge` of our
    /// version echoing the attempt of the `Hello` already sent; one of our
    /// version naming another attempt (or before the `Hello`) is stale and
    /// dropped; anything else ends the session.
    fn observe(&mut self, mut bytes: &[u8]) {
        while !self.answered && !bytes.is_empty() {
            let n = self.first.push(bytes);
            bytes = &bytes[n..];
            while let Some(frame) = self.first.decode() {
                let Ok(payload) = frame else { continue };
                if let Ok(Down::Challenge {
                    version: PROTOCOL_VERSION,
                    attempt,
                    nonce,
                }) = wire::decode::<Down>(payload)
                {
                    if self.attempt != Some(attempt) {
                        continue; // stale: the device drops it
                    }
                    self.nonce = Some(nonce);
                }
                self.answered = true;
                break;
            }
        }
    }

    /// A transmission: exactly one valid frame with a valid `Up` message and
    /// the session's key, the `Hello` first and once, the `Proof` right.
    fn sent(&mut self, bytes: &[u8], secret: &Secret, attempts: &mut HashSet<u64>) {
        let payload = unframe(bytes, self.key());
        let msg = wire::decode::<Up>(payload).expect("the device sent an invalid Up message");
        match msg {
            Up::Hello(h) => {
                assert!(self.hello.is_none(), "a second Hello in one session");
                assert!(
                    attempts.insert(h.attempt),
                    "attempt {:#x} sent twice",
                    h.attempt
                );
                self.hello = Some(auth::bind_hello(payload));
                self.attempt = Some(h.attempt);
            }
            Up::Proof { mac } => {
                let nonce = self.nonce.expect("a proof before the challenge");
                let hello = self.hello.expect("a proof without a Hello");
                assert!(
                    auth::verify(secret, &nonce, &hello, &mac),
                    "the proof does not cover the Hello sent"
                );
            }
            Up::Report { .. } | Up::Progress { .. } => {
                assert!(self.nonce.is_some(), "session data before the challenge");
            }
        }
    }
}
