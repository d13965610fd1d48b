//! One connection's session: handshake, reports in, work out.

use alloc::boxed::Box;
use alloc::vec::Vec;

use hashbrown::HashMap;

use super::{
    ConnId, FleetStore, PeerError, PolicyState, ReportCommit, ReportSeqs, Result, Server,
    ServerError, ServerEvent, SupersedeKey, TaskRecord, TaskState, Timer,
};
use crate::auth;
use crate::time::Instant;
use crate::wire::{
    self, frame, seq_newer, Down, ErrorCode, FrameDecoder, Hello, ReportBody, SessionUp, Task,
    TaskId, TaskStatus, Up, PROTOCOL_VERSION,
};

enum Phase {
    AwaitHello,
    AwaitProof {
        hello: Box<Hello>,
        nonce: [u8; 16],
        // What the proof must cover of the Hello payload as read.
        hello_binding: auth::HelloBinding,
        // The challenge's number (`Server::nonces` when it was sent): orders
        // the handshakes of one device (see `HandshakeOrder`).
        challenge: u64,
    },
    Syncing(Sync),
}

/// What an authenticated session knows about its device.
struct Sync {
    device: wire::DeviceId,
    generation: u32,
    next_seq: u32,
    policy_sent: u32,
    cancels_sent: Vec<TaskId>,
    // `SyncEnd` went out after the first burst; later bursts need none.
    end_sent: bool,
    // The sequence of the last task offered after `SyncEnd` (see `late_offer`).
    late_offer: Option<u32>,
    // A `Cancel` or a `Policy` went out after `SyncEnd` (see `late_work`).
    late_cancel: bool,
    late_policy: bool,
}

pub(super) struct Session {
    phase: Phase,
    // In the session's own box (see `Spare`): one pointer less to follow.
    decoder: FrameDecoder,
    // Pending output is `out[out_pos..out_end]`. The bytes past `out_end` are
    // room already zeroed, kept for the next frames: `out` only grows, so a
    // frame is encoded in place without zeroing a frame's worth first.
    out: Vec<u8>,
    out_pos: usize,
    out_end: usize,
    // Where the first burst ends in `out` (its `SyncEnd`'s end) while any
    // of it is untaken; 0 otherwise. `max_pending_out` counts only the
    // bytes after it (see `send`).
    burst_end: usize,
    last_rx: Instant,
    // The handshake deadline counts from here, not from the last byte.
    opened: Instant,
    pub(super) closing: bool,
    // `Server::ready` holds an entry for this connection (perhaps one whose
    // output was since taken through `poll_transmit_for`): `send` adds none.
    pub(super) queued: bool,
    // The session's frame key, from the Challenge on (0 before).
    key: u32,
    // Frame errors (garbage, bad lengths, bad CRCs) seen on this connection.
    frame_errors: u32,
}

/// Closed sessions kept, with their buffers, for new ones: a server in
/// steady state opens sessions without allocating. A session lives in a box
/// of its own, from open to close and in this list after, so that opening
/// and closing one moves a pointer, not the session's fields.
#[derive(Default)]
pub(super) struct Spare {
    // Boxed: a session goes from here to a slot of `Sessions` and back
    // without its fields moving.
    #[allow(clippy::vec_box)]
    sessions: Vec<Box<Session>>,
    hello: Option<Box<Hello>>,
}

/// Most sessions kept (each about 0.7 KiB plus its output buffer).
const MAX_SPARE: usize = 256;

impl Spare {
    /// A new session, a spare one reset in place when there is one.
    pub(super) fn session(&mut self, now: Instant) -> Box<Session> {
        match self.sessions.pop() {
            Some(mut s) => {
                s.reset(now);
                s
            }
            None => Box::new(Session::new(now)),
        }
    }

    /// Keeps a closed session (one with a large output buffer is dropped).
    pub(super) fn keep(&mut self, s: Box<Session>) {
        if self.sessions.len() < MAX_SPARE && s.out.capacity() <= 4096 {
            self.sessions.push(s);
        }
    }

    /// Drops the closed sessions kept (`Server::shrink_to_fit`).
    pub(super) fn shrink_to_fit(&mut self) {
        self.sessions = Vec::new();
    }

    /// A `Hello` to decode into: the spare one, or a new one.
    fn blank_hello(&mut self) -> Box<Hello> {
        self.hello.take().unwrap_or_else(|| {
            Box::new(Hello {
                version: 0,
                attempt: 0,
                device: wire::DeviceId(0),
                generation: 0,
                platform: wire::Platform::Android,
                push_token: heapless::String::new(),
                trigger: wire::SyncTrigger::Push,
                last_task_seq: 0,
                policy_version: 0,
            })
        })
    }

    fn boxed(&mut self, hello: Hello) -> Box<Hello> {
        match self.hello.take() {
            Some(mut b) => {
                *b = hello;
                b
            }
            None => Box::new(hello),
        }
    }
}

impl Sync {
    /// Gives `t` the session's next delivery sequence. Returns the session's
    /// late offer before it (see `late_offer`), to put back if the task is
    /// not offered after all.
    fn number(&mut self, t: &mut TaskRecord) -> Option<u32> {
        t.seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        let late = self.late_offer;
        if self.end_sent {
            self.late_offer = Some(t.seq);
        }
        late
    }
}

impl Session {
    fn new(now: Instant) -> Self {
        Self {
            phase: Phase::AwaitHello,
            decoder: FrameDecoder::new(),
            out: Vec::new(),
            out_pos: 0,
            out_end: 0,
            burst_end: 0,
            last_rx: now,
            opened: now,
            closing: false,
            queued: false,
            key: 0,
            frame_errors: 0,
        }
    }

    /// Makes a closed session a new one opened at `now`, on its buffers:
    /// field by field, so that nothing is built aside and copied in.
    fn reset(&mut self, now: Instant) {
        self.phase = Phase::AwaitHello;
        self.decoder.reset();
        self.clear_output();
        self.last_rx = now;
        self.opened = now;
        self.closing = false;
        self.queued = false;
        self.key = 0;
        self.frame_errors = 0;
    }

    pub(super) fn device(&self) -> Option<wire::DeviceId> {
        match &self.phase {
            Phase::Syncing(s) => Some(s.device),
            _ => None,
        }
    }

    /// The sequence of the last task offered after the session's `SyncEnd`:
    /// unless the device reported on it (or a later one), its close may
    /// have crossed the offer, and nothing else would bring it back before
    /// its periodic sync.
    pub(super) fn late_offer(&self) -> Option<u32> {
        match &self.phase {
            Phase::Syncing(s) => s.late_offer,
            _ => None,
        }
    }

    /// Whether a `Cancel`, and whether a `Policy`, went out after the
    /// session's `SyncEnd`: as for [`late_offer`](Self::late_offer), the
    /// device's close may have crossed them.
    pub(super) fn late_work(&self) -> (bool, bool) {
        match &self.phase {
            Phase::Syncing(s) => (s.late_cancel, s.late_policy),
            _ => (false, false),
        }
    }

    /// When its connection opened (tells sessions apart in tests).
    #[cfg(test)]
    pub(super) fn opened(&self) -> Instant {
        self.opened
    }

    /// Whether the session is queueing its first burst, from `Welcome` to
    /// the `SyncEnd` that ends it: all queued at once, in answer to the
    /// proof, and bounded by `max_open_tasks` (a `Task` and a `Cancel` at
    /// most per open task, one `Policy`), so exempt from `max_pending_out`
    /// (see `ServerConfig::max_pending_out`).
    fn in_first_burst(&self) -> bool {
        matches!(&self.phase, Phase::Syncing(sync) if !sync.end_sent)
    }

    pub(super) fn has_output(&self) -> bool {
        self.out_pos < self.out_end
    }

    /// Bytes queued and not yet taken by the transport.
    fn pending_out(&self) -> usize {
        self.out_end - self.out_pos
    }

    /// Bytes queued after the first burst and not yet taken: what
    /// `max_pending_out` bounds once the burst is out.
    fn pending_after_burst(&self) -> usize {
        self.out_end
            .saturating_sub(self.burst_end.max(self.out_pos))
    }

    /// Empties the output buffer once everything in it was taken.
    fn clear_output(&mut self) {
        self.out_pos = 0;
        self.out_end = 0;
        self.burst_end = 0;
    }

    /// Hands the pending output to `send`, which says how many of its bytes
    /// it took (more than it was given counts as all of them). Inlined with
    /// `transmit_with` into the caller's drain loop (the engine is compiled
    /// in the application's crate; a call across crates per frame taken cost
    /// as much as the copy).
    #[inline]
    pub(super) fn take_output(&mut self, send: impl FnOnce(&[u8]) -> usize) -> usize {
        let pending = &self.out[self.out_pos..self.out_end];
        let n = send(pending).min(pending.len());
        self.out_pos += n;
        if self.out_pos == self.out_end {
            self.clear_output();
        }
        n
    }

    // Inlined into `send`, its one caller: `send` is generic, so compiled
    // in the application's crate, and each frame paid a call across crates
    // and this function's own register saves (seven) on top of `send`'s.
    #[inline]
    fn push_frame(&mut self, msg: &Down) -> bool {
        if self.out.len() < self.out_end + frame::MAX_FRAME {
            if self.out_pos > 0 {
                // Bytes taken from the front of a queue never drained to
                // the end (a transport that always leaves a few): the rest
                // moves down before the buffer grows, so it holds what is
                // pending, not all a long session ever sent.
                self.out.copy_within(self.out_pos..self.out_end, 0);
                self.out_end -= self.out_pos;
                self.burst_end = self.burst_end.saturating_sub(self.out_pos);
                self.out_pos = 0;
            }
            self.out
                .resize(self.out.len().max(self.out_end + frame::MAX_FRAME), 0);
        }
        let start = self.out_end;
        // Exactly a frame's room, not all the buffer past `start`: the
        // encoder's room computations and checks then fold to constants.
        let Some(room) = self.out.get_mut(start..start + frame::MAX_FRAME) else {
            return false; // cannot happen: resized above
        };
        match frame::encode_keyed_inline(msg, room, self.key) {
            Ok(n) => {
                self.out_end = start + n;
                true
            }
            Err(_) => false,
        }
    }
}

/// `dst.copy_from_slice(src)` (equal lengths), without a call to `memcpy`
/// for 8 to 32 bytes (a frame of an open session is about 10 to 20): two
/// copies of fixed size that overlap in the middle.
#[inline]
pub(super) fn copy_short(dst: &mut [u8], src: &[u8]) {
    fn ends<const K: usize>(dst: &mut [u8], src: &[u8]) -> bool {
        let (Some(d), Some(s)) = (dst.first_chunk_mut::<K>(), src.first_chunk::<K>()) else {
            return false;
        };
        *d = *s;
        if let (Some(d), Some(s)) = (dst.last_chunk_mut::<K>(), src.last_chunk::<K>()) {
            *d = *s;
        }
        true
    }
    let done = match dst.len() {
        8..=16 => ends::<8>(dst, src),
        17..=32 => ends::<16>(dst, src),
        _ => false,
    };
    if !done {
        dst.copy_from_slice(src);
    }
}

/// A decoded frame: a session message or a `Hello` read by hand, or any
/// message.
enum Incoming {
    Session(SessionUp),
    Hello(Box<Hello>),
    Any(Up),
}

/// Decodes a frame's payload for a session in `phase`; a foreign Hello version
/// is recognised even when the rest of the message does not decode.
fn parse(payload: &[u8], awaiting_hello: bool) -> core::result::Result<Up, PeerError> {
    if awaiting_hello {
        match wire::peek_version(payload) {
            Some(v) if v != PROTOCOL_VERSION => {
                return Err(PeerError::VersionMismatch { device: v })
            }
            _ => {}
        }
    }
    wire::decode::<Up>(payload).map_err(|_| PeerError::Malformed)
}

fn error_code(e: PeerError) -> ErrorCode {
    match e {
        PeerError::VersionMismatch { .. } => ErrorCode::VersionMismatch {
            supported: PROTOCOL_VERSION,
        },
        PeerError::AuthFailed => ErrorCode::AuthFailed,
        PeerError::SequenceGap => ErrorCode::SequenceGap,
        PeerError::Malformed | PeerError::Unexpected | PeerError::Superseded => {
            ErrorCode::BadMessage
        }
    }
}

/// Orders the handshakes of each device by their challenges, so that a proof
/// answering a challenge older than the one of the device's latest
/// authenticated session is refused.
///
/// A device runs one connection at a time. A valid proof answers a challenge
/// the device read on that connection, sent before the device gave it up and
/// so before its next `Hello`: its later sessions' challenges are numbered
/// higher. A proof for a lower number comes from a
/// connection the device abandoned, delivered late. Its `Hello` is stale, and
/// taken as current it would renumber tasks the device already holds.
///
/// Bounded by the sessions: an entry exists only for a device with a
/// handshake awaiting its proof, and goes with the last such handshake.
#[derive(Default)]
pub(super) struct HandshakeOrder {
    /// Per device with handshakes awaiting their proof: how many, and the
    /// challenge number of the latest session of the device that
    /// authenticated meanwhile (0: none).
    waiting: HashMap<wire::DeviceId, (u32, u64)>,
}

impl HandshakeOrder {
    /// A handshake of `device` got its challenge and awaits the proof.
    fn challenged(&mut self, device: wire::DeviceId) {
        self.waiting.entry(device).or_default().0 += 1;
    }

    /// A handshake of `device` that got challenge `number` no longer awaits
    /// its proof (it came, or the connection closed). Returns whether a
    /// newer handshake of the device authenticated meanwhile.
    fn answered(&mut self, device: wire::DeviceId, number: u64) -> bool {
        let Some(w) = self.waiting.get_mut(&device) else {
            return false;
        };
        let superseded = w.1 > number;
        w.0 = w.0.saturating_sub(1);
        if w.0 == 0 {
            self.waiting.remove(&device);
        }
        superseded
    }

    /// Gives back the room of handshakes no longer waiting.
    pub(super) fn shrink_to_fit(&mut self) {
        self.waiting.shrink_to_fit();
    }

    /// `device` authenticated on challenge `number`: its handshakes still
    /// awaiting a proof are older (see the type's docs).
    fn authenticated(&mut self, device: wire::DeviceId, number: u64) {
        if self.waiting.is_empty() {
            return;
        }
        if let Some(w) = self.waiting.get_mut(&device) {
            w.1 = w.1.max(number);
        }
    }
}

impl<S: FleetStore> Server<S> {
    /// Bytes read from `conn`, in any chunking. A peer error closes the
    /// session (after an `Error` frame) and is returned; the engine stays usable.
    ///
    /// The reports in `bytes` are acknowledged together, by one `Ack` of the
    /// last of them, once all of `bytes` is read (each is stored before).
    pub fn handle_bytes(&mut self, conn: ConnId, bytes: &[u8], now: Instant) -> Result<(), S> {
        let mut ack = None;
        let r = self.read_frames(conn, bytes, now, &mut ack);
        self.send_ack(conn, ack);
        r
    }

    fn send_ack(&mut self, conn: ConnId, ack: Option<u32>) {
        if let Some(seq) = ack {
            self.send(conn, &Down::Ack { seq });
        }
    }

    /// Handles the frames in `bytes`; `ack` is set to the report sequence to
    /// acknowledge once they are all read.
    fn read_frames(
        &mut self,
        conn: ConnId,
        mut bytes: &[u8],
        now: Instant,
        ack: &mut Option<u32>,
    ) -> Result<(), S> {
        loop {
            let s = self
                .sessions
                .get_mut(&conn)
                .ok_or(ServerError::UnknownConnection)?;
            if s.closing {
                return Ok(()); // input after our error frame is ignored
            }
            s.last_rx = now;
            let awaiting_hello = matches!(s.phase, Phase::AwaitHello);
            let syncing = s.device();
            let mut hello_binding = auth::HelloBinding::default();
            // Whole frames are read from `bytes` where they lie while nothing
            // is buffered (the usual case: whole frames per read); the rest
            // goes through the decoder's buffer, with the same frames and
            // errors in the same order.
            let in_place = s.decoder.decode_in_place(&mut bytes);
            let read_in_place = in_place.is_some();
            let frame = if let Some(payload) = in_place {
                Some(Ok(payload))
            } else if s.decoder.buffered() == 0 {
                None // nothing buffered to decode: push first
            } else {
                s.decoder.decode()
            };
            let msg = match frame {
                None if bytes.is_empty() => return Ok(()),
                None => {
                    let n = s.decoder.push(bytes);
                    bytes = &bytes[n..];
                    continue;
                }
                // Garbage is skipped (the CRC guards content). It costs a scan
                // of its bytes, like any input, and is not counted: the count
                // would depend on how the bytes were split into reads (a run
                // is reported once per read). Bad headers are, within a
                // budget: each costs a CRC over up to a whole frame, so a
                // peer that sends nothing but bad headers is cut off.
                Some(Err(wire::FrameError::Garbage { .. })) => continue,
                Some(Err(_)) => {
                    s.frame_errors = s.frame_errors.saturating_add(1);
                    if s.frame_errors <= self.cfg.max_frame_errors {
                        continue;
                    }
                    Err(PeerError::Malformed)
                }
                // The proof, reports and progress without building a whole
                // `Up` (the size of a `Hello`).
                Some(Ok(payload)) => match (!awaiting_hello)
                    .then(|| wire::session_up(payload))
                    .flatten()
                {
                    Some(m) => Ok(Incoming::Session(m)),
                    None if awaiting_hello => {
                        hello_binding = auth::bind_hello(payload);
                        // Read by hand into a reused box; anything else
                        // (another version, malformed) goes to `parse`.
                        let mut hello = self.spare.blank_hello();
                        if wire::hello_into(payload, &mut hello)
                            && hello.version == PROTOCOL_VERSION
                        {
                            Ok(Incoming::Hello(hello))
                        } else {
                            self.spare.hello = Some(hello);
                            parse(payload, awaiting_hello).map(Incoming::Any)
                        }
                    }
                    None => parse(payload, awaiting_hello).map(Incoming::Any),
                },
            };
            let dropped = self.readers_dropped;
            let result = match msg {
                Ok(Incoming::Session(m)) => self.on_session_message(conn, m, syncing, now),
                Ok(Incoming::Hello(hello)) => {
                    self.on_hello(conn, hello, &hello_binding).map(|()| None)
                }
                Ok(Incoming::Any(msg)) => self.on_message(conn, msg, &hello_binding, now),
                Err(e) => Err(ServerError::Peer(e)),
            };
            match result {
                Ok(Some(seq)) => *ack = Some(seq),
                Ok(None) => {}
                Err(e) => {
                    // What was stored before the error is acknowledged first.
                    self.send_ack(conn, ack.take());
                    self.fail_session(conn, &e);
                    return Err(e);
                }
            }
            // A frame read in place leaves the decoder's buffer empty, as it
            // found it: with `bytes` used up, nothing is left to read, and the
            // session need not be looked up again to find that out. (Unless a
            // send above dropped the session: the next turn reports it gone.)
            if read_in_place && bytes.is_empty() && self.readers_dropped == dropped {
                return Ok(());
            }
        }
    }

    fn fail_session(&mut self, conn: ConnId, e: &ServerError<S::Error>) {
        let code = match e {
            ServerError::Peer(p) => error_code(*p),
            _ => ErrorCode::Busy,
        };
        if matches!(e, ServerError::Peer(PeerError::AuthFailed)) {
            self.events.push_back(ServerEvent::AuthFailed { conn });
        }
        self.send(conn, &Down::Error(code));
        if let Some(s) = self.sessions.get_mut(&conn) {
            s.closing = true;
        }
    }

    /// One decoded message; `hello_binding` is what the proof must cover of
    /// the payload when it may be a `Hello`. Returns the report sequence to
    /// acknowledge, if any.
    fn on_message(
        &mut self,
        conn: ConnId,
        msg: Up,
        hello_binding: &auth::HelloBinding,
        now: Instant,
    ) -> Result<Option<u32>, S> {
        let phase = &self
            .sessions
            .get(&conn)
            .ok_or(ServerError::UnknownConnection)?
            .phase;
        match (phase, msg) {
            (Phase::AwaitHello, Up::Hello(hello)) => {
                let hello = self.spare.boxed(hello);
                self.on_hello(conn, hello, hello_binding).map(|()| None)
            }
            (Phase::AwaitProof { .. }, Up::Proof { mac }) => {
                self.on_proof(conn, mac, now).map(|()| None)
            }
            (Phase::Syncing(sync), Up::Report { seq, body }) => {
                let device = sync.device;
                self.on_report(conn, device, seq, &body, now).map(Some)
            }
            (Phase::Syncing(sync), Up::Progress { task, percent }) => {
                let device = sync.device;
                self.on_progress(device, task, percent).map(|()| None)
            }
            _ => Err(ServerError::Peer(PeerError::Unexpected)),
        }
    }

    /// A `Hello` on a connection awaiting one: answer with a challenge.
    fn on_hello(
        &mut self,
        conn: ConnId,
        hello: Box<Hello>,
        hello_binding: &auth::HelloBinding,
    ) -> Result<(), S> {
        let Some(s) = self.sessions.get_mut(&conn) else {
            return Err(ServerError::UnknownConnection);
        };
        if !matches!(s.phase, Phase::AwaitHello) {
            self.spare.hello = Some(hello);
            return Err(ServerError::Peer(PeerError::Unexpected));
        }
        let nonce = self.nonces.next_nonce();
        let (device, attempt) = (hello.device, hello.attempt);
        s.phase = Phase::AwaitProof {
            hello,
            nonce,
            hello_binding: *hello_binding,
            challenge: self.nonces.count(),
        };
        self.handshakes.challenged(device);
        self.send(
            conn,
            &Down::Challenge {
                version: PROTOCOL_VERSION,
                attempt,
                nonce,
            },
        );
        // Every later frame of the session, both ways, carries the key.
        if let Some(s) = self.sessions.get_mut(&conn) {
            s.key = frame::session_key(&nonce);
            s.decoder.set_key(s.key);
        }
        Ok(())
    }

    /// A message read by hand after the `Hello`: what `on_message` does with
    /// it in `AwaitProof` (`device` none) or `Syncing` (`device`, the
    /// session's).
    fn on_session_message(
        &mut self,
        conn: ConnId,
        msg: SessionUp,
        device: Option<wire::DeviceId>,
        now: Instant,
    ) -> Result<Option<u32>, S> {
        let syncing = device.is_some();
        // Matched in place: the report's body is read where it was decoded.
        match &msg {
            SessionUp::Proof { mac } if !syncing => self.on_proof(conn, *mac, now).map(|()| None),
            SessionUp::Report { seq, body } => match device {
                Some(device) => self.on_report(conn, device, *seq, body, now).map(Some),
                None => Err(ServerError::Peer(PeerError::Unexpected)),
            },
            SessionUp::Progress { task, percent } => match device {
                Some(device) => self.on_progress(device, *task, *percent).map(|()| None),
                None => Err(ServerError::Peer(PeerError::Unexpected)),
            },
            _ => Err(ServerError::Peer(PeerError::Unexpected)),
        }
    }

    fn set_phase(&mut self, conn: ConnId, phase: Phase) {
        if let Some(s) = self.sessions.get_mut(&conn) {
            s.phase = phase;
        }
    }

    /// The device's open session (not closing) and the enrollment
    /// generation it authenticated with.
    pub(super) fn session_of(&self, device: wire::DeviceId) -> Option<(ConnId, u32)> {
        let conn = *self.online.get(&device)?;
        match self.sessions.get(&conn)? {
            Session {
                closing: false,
                phase: Phase::Syncing(sync),
                ..
            } => Some((conn, sync.generation)),
            _ => None,
        }
    }

    fn sync_of(&mut self, conn: ConnId) -> Option<&mut Sync> {
        match &mut self.sessions.get_mut(&conn)?.phase {
            Phase::Syncing(s) => Some(s),
            _ => None,
        }
    }

    /// Queues a frame for `conn`; a connection that fell too far behind is closed.
    pub(super) fn send(&mut self, conn: ConnId, msg: &Down) {
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        if s.closing {
            return; // nothing follows our error frame
        }
        // Compared with all that is pending first: mostly below the bound,
        // so the burst's part is looked at only past it.
        if s.pending_out() > self.cfg.max_pending_out
            && !s.in_first_burst()
            && s.pending_after_burst() > self.cfg.max_pending_out
        {
            // A reader this far behind is dropped. It syncs again on its own
            // when it has reports unacknowledged; for new work, `end_burst`
            // asks for a push.
            self.readers_dropped = self.readers_dropped.wrapping_add(1);
            self.finish_close(conn);
            return;
        }
        s.push_frame(msg);
        if !s.queued {
            s.queued = true;
            self.ready.push_back(conn);
            self.compact_ready();
        }
    }

    /// Drops stale entries from `ready`: a closed connection leaves its entry
    /// behind. (One drained through `poll_transmit_for` keeps its entry, and
    /// its next `send` adds none: one entry per connection.) Runs once the
    /// queue holds more than twice the open sessions, so it costs O(1) per
    /// send amortized and the queue stays bounded by the sessions.
    fn compact_ready(&mut self) {
        if self.ready.len() <= 2 * self.sessions.len() + 64 {
            return;
        }
        for s in self.sessions.values_mut() {
            s.queued = false;
        }
        let sessions = &mut self.sessions;
        self.ready.retain(|c| match sessions.get_mut(c) {
            Some(s) if s.has_output() && !s.queued => {
                s.queued = true;
                true
            }
            _ => false,
        });
    }

    fn on_proof(&mut self, conn: ConnId, mac: [u8; 32], now: Instant) -> Result<(), S> {
        let Some(s) = self.sessions.get_mut(&conn) else {
            return Ok(());
        };
        let Phase::AwaitProof {
            hello,
            nonce,
            hello_binding,
            challenge,
        } = core::mem::replace(&mut s.phase, Phase::AwaitHello)
        else {
            return Err(ServerError::Peer(PeerError::Unexpected));
        };
        let (id, generation) = (hello.device, hello.generation);
        let superseded = self.handshakes.answered(id, challenge);
        // The MAC is always computed, so an unknown device and a wrong proof
        // take the same path and get the same answer.
        let (secret, kept) = self.secret_of(id, generation);
        let proof_ok = auth::verify(&secret, &nonce, &hello_binding, &mac);
        if kept && !proof_ok {
            // A failed proof costs the derivation a kept secret saved, so
            // that its time does not tell which ids have one (`secret_of`).
            core::hint::black_box(self.derive_secret(id, generation));
        }
        let rec = self.store.device(id)?;
        let Some(mut rec) = rec.filter(|r| proof_ok && r.generation == generation) else {
            return Err(ServerError::Peer(PeerError::AuthFailed));
        };
        // A handshake older than the device's latest authenticated one: its
        // `Hello` is stale (the device gave that connection up), and its
        // `last_task_seq` must neither renumber offers nor look like lost
        // device state. Refused before anything changes.
        if superseded {
            return Err(ServerError::Peer(PeerError::Superseded));
        }
        // The store learns this engine's interval before a `Welcome` tells
        // it (done by `recover` in a process that calls it).
        if self.earlier_wait.is_none() {
            self.record_told_interval(now, now)?;
        }
        // An empty token leaves the stored one; without one stored, the
        // Welcome asks the device for it (PROTOCOL.md 6.5).
        let has_target = self
            .store
            .set_push_target(id, hello.platform, &hello.push_token)?;
        if seq_newer(rec.last_task_seq, hello.last_task_seq) {
            self.device_state_lost(id, now)?;
        }
        self.resolve_offers(id, hello.last_task_seq, now)?;
        rec.last_task_seq = hello.last_task_seq;
        rec.last_sync = Some((now, hello.trigger));
        self.store.put_device(&rec)?;
        // Only once the store took it all is the device online here: a store
        // error above fails this session and leaves an older one, and the
        // online map, as they were.
        if let Some(old) = self.online.insert(id, conn).filter(|old| *old != conn) {
            if let Some(s) = self.sessions.remove(&old) {
                self.recycle(s);
            }
            self.events.push_back(ServerEvent::Close { conn: old });
            self.events.push_back(ServerEvent::SessionEnded {
                conn: old,
                device: Some(id),
            });
        }

        self.handshakes.authenticated(id, challenge);
        let sync = Sync {
            device: id,
            generation,
            next_seq: hello.last_task_seq.wrapping_add(1),
            policy_sent: hello.policy_version,
            cancels_sent: Vec::new(),
            end_sent: false,
            late_offer: None,
            late_cancel: false,
            late_policy: false,
        };
        self.set_phase(conn, Phase::Syncing(sync));
        // 60 ..= 604,800 s (clamped by `Server::new`): never 0 ("keep yours").
        let periodic_s = self
            .cfg
            .periodic_interval
            .as_secs()
            .min(u64::from(u32::MAX)) as u32;
        self.send(
            conn,
            &Down::Welcome {
                ack: rec.last_report_seq,
                periodic_s,
                want_token: !has_target,
            },
        );
        let trigger = hello.trigger;
        self.spare.hello = Some(hello);
        self.events.push_back(ServerEvent::Authenticated {
            conn,
            device: id,
            trigger,
        });
        self.checked_in(id, now);
        self.keep_secret(id, generation, &secret);
        self.release_held_push(id);
        self.offer_work(conn, now)
    }

    /// A session that was removed from `sessions`: its handshake no longer
    /// awaits a proof, and its buffers serve the next one.
    pub(super) fn recycle(&mut self, s: Box<Session>) {
        if let Phase::AwaitProof {
            hello, challenge, ..
        } = &s.phase
        {
            self.handshakes.answered(hello.device, *challenge);
        }
        self.spare.keep(s);
    }

    /// The device's task ledger went backwards: it lost its state. Whether it
    /// ran the tasks it may have had is unknown, so they end failed rather
    /// than risk running twice.
    fn device_state_lost(&mut self, device: wire::DeviceId, now: Instant) -> Result<(), S> {
        let ids = self.open_task_ids(device)?;
        for tid in &ids {
            let Some(mut t) = self.store.task(*tid)? else {
                continue;
            };
            if t.state.maybe_on_device() {
                let reason = wire::reason::DEVICE_STATE_LOST;
                self.set_state(&mut t, TaskState::Failed { reason }, now)?;
            }
        }
        self.scratch = ids;
        Ok(())
    }

    /// Tasks offered in earlier sessions: those the device confirmed (seq up
    /// to its `last_task_seq`) are delivered; the others go back to the
    /// queue, or are superseded by a newer open task with their supersede
    /// key (queued while they were offered, which could not replace them
    /// then: found by breaker15, two locks for two clicks).
    fn resolve_offers(&mut self, device: wire::DeviceId, last: u32, now: Instant) -> Result<(), S> {
        let ids = self.open_task_ids(device)?;
        for (i, tid) in ids.iter().enumerate() {
            let Some(mut t) = self.store.task(*tid)? else {
                continue;
            };
            if t.state != TaskState::Offered {
                continue;
            }
            let state = if !seq_newer(t.seq, last) {
                TaskState::Delivered
            } else if t.cancel_requested {
                TaskState::Cancelled
            } else if t.expires_at.is_some_and(|e| now >= e) {
                TaskState::Expired
            } else {
                // Open tasks come oldest first: the newer ones follow.
                let newer = ids.get(i + 1..).unwrap_or_default();
                match self.newest_with_key(newer, t.supersede)? {
                    Some(by) => TaskState::Superseded { by },
                    None => TaskState::Queued,
                }
            };
            self.set_state(&mut t, state, now)?;
        }
        self.scratch = ids;
        Ok(())
    }

    /// The newest open task of `device` newer than its task `id` with `id`'s
    /// supersede key, if it has one: `id`, back from the device, is
    /// superseded by it (as it would have been, had it not been on the
    /// device when that one was queued).
    fn superseded_on_return(
        &mut self,
        device: wire::DeviceId,
        id: TaskId,
    ) -> Result<Option<TaskId>, S> {
        let Some(key) = self.store.task(id)?.and_then(|t| t.supersede) else {
            return Ok(None);
        };
        let ids = self.open_task_ids(device)?;
        // Open tasks come oldest first: the newer ones follow.
        let newer = ids
            .iter()
            .position(|t| *t == id)
            .and_then(|i| ids.get(i + 1..));
        let by = self.newest_with_key(newer.unwrap_or_default(), Some(key));
        self.scratch = ids;
        by
    }

    /// The newest of `tasks` with supersede key `key`, if it has one.
    fn newest_with_key(
        &self,
        tasks: &[TaskId],
        key: Option<SupersedeKey>,
    ) -> Result<Option<TaskId>, S> {
        if key.is_none() {
            return Ok(None);
        }
        for tid in tasks.iter().rev() {
            if self.store.task(*tid)?.is_some_and(|t| t.supersede == key) {
                return Ok(Some(*tid));
            }
        }
        Ok(None)
    }

    /// Sends everything pending for the session's device: cancels, tasks not
    /// yet offered, a newer policy, then `SyncEnd`.
    pub(super) fn offer_work(&mut self, conn: ConnId, now: Instant) -> Result<(), S> {
        let Some(sync) = self.sync_of(conn) else {
            return Ok(());
        };
        let device = sync.device;
        let ids = self.open_task_ids(device)?;
        for tid in &ids {
            let Some(mut t) = self.store.task(*tid)? else {
                continue;
            };
            self.offer_one(conn, &mut t, now)?;
        }
        self.scratch = ids;
        // The version first: most syncs find no newer policy, and the policy
        // itself (264 bytes) is read, and copied, only to be sent.
        let sent = self.sync_of(conn).map(|s| s.policy_sent);
        let newer = |v: u32| sent.is_some_and(|sent| seq_newer(v, sent));
        if self.store.policy_version(device)?.is_some_and(newer) {
            if let Some(p) = self.store.policy(device)?.filter(|p| newer(p.version)) {
                if let Some(sync) = self.sync_of(conn) {
                    sync.policy_sent = p.version;
                    sync.late_policy |= sync.end_sent;
                    self.send(conn, &Down::Policy(p));
                }
            }
        }
        self.end_burst(conn, device, now)
    }

    /// Offers a task just queued, not yet stored, in the device's open session
    /// (stored as offered before it is sent, its first event `Offered`), then
    /// the session's `SyncEnd` if it still owes one. `limit`: as for
    /// `store_state`.
    ///
    /// The caller found the session open, and took the task's generation
    /// from it: what `offer_one` checks of a stored task (its session, its
    /// enrollment, its state, a cancel) holds for this one, and only its
    /// expiry is left to look at.
    pub(super) fn offer_new(
        &mut self,
        conn: ConnId,
        t: &mut TaskRecord,
        now: Instant,
        limit: Option<usize>,
    ) -> Result<(), S> {
        let dropped = self.readers_dropped;
        let Some(sync) = self.sync_of(conn) else {
            // Not stored: the task is not queued.
            return Err(ServerError::UnknownConnection);
        };
        let owed_end = !sync.end_sent;
        if t.expires_at.is_some_and(|e| now >= e) {
            self.store_state(t, TaskState::Expired, now, limit)?;
        } else {
            let late = sync.number(t);
            self.offer_numbered(conn, t, now, limit, late)?;
        }
        if owed_end || self.readers_dropped != dropped {
            self.end_burst(conn, t.device, now)?;
        }
        Ok(())
    }

    /// Ends a burst of work for `device` on `conn`: `SyncEnd`, once per
    /// session (the device needs no other). If `send` dropped the session in
    /// the burst (see `offer_one`), the device is asked to come back: it saw
    /// its connection close, and may have nothing of its own to sync.
    fn end_burst(&mut self, conn: ConnId, device: wire::DeviceId, now: Instant) -> Result<(), S> {
        let Some(sync) = self.sync_of(conn) else {
            return self.request_push(device, now);
        };
        if sync.end_sent {
            return Ok(());
        }
        // Marked sent after `send`: the `SyncEnd` is the first burst's last
        // frame, exempt from `max_pending_out` as the rest of it. Whatever
        // of the burst stays untaken stays exempt (`burst_end`).
        self.send(conn, &Down::SyncEnd);
        let Some(s) = self.sessions.get_mut(&conn) else {
            return self.request_push(device, now);
        };
        s.burst_end = s.out_end;
        match &mut s.phase {
            Phase::Syncing(sync) => sync.end_sent = true,
            _ => return self.request_push(device, now),
        }
        Ok(())
    }

    /// Offers a stored task in the session, if it is of the session's
    /// enrollment and offerable there.
    fn offer_one(&mut self, conn: ConnId, t: &mut TaskRecord, now: Instant) -> Result<(), S> {
        let Some(sync) = self.sync_of(conn) else {
            // `send` dropped the session earlier in this burst (a reader too
            // far behind). The work stays stored for the device's next
            // session; the operator's call that brought it succeeded.
            return Ok(());
        };
        if t.generation != sync.generation {
            return Ok(());
        }
        if t.cancel_requested && t.state.maybe_on_device() {
            if !sync.cancels_sent.contains(&t.id) {
                sync.cancels_sent.push(t.id);
                sync.late_cancel |= sync.end_sent;
                self.send(conn, &Down::Cancel { task: t.id });
            }
            return Ok(());
        }
        let offerable = match t.state {
            TaskState::Queued | TaskState::PushSent => true,
            TaskState::Deferred { .. } => t.deferred_in != conn.0,
            _ => false,
        };
        if !offerable {
            return Ok(());
        }
        if t.expires_at.is_some_and(|e| now >= e) {
            return self.set_state(t, TaskState::Expired, now);
        }
        let late = sync.number(t);
        self.offer_numbered(conn, t, now, None, late)
    }

    /// Stores `t`, numbered in the session (`late`: the session's late offer
    /// before it), as offered, then sends it. With `limit`, the task is new
    /// (see `store_state`); refused, it gives its number back. Inlined
    /// into its two callers: a call of its own set up its own frame (room
    /// for a `Down` to send) and register saves for every task offered.
    #[inline]
    fn offer_numbered(
        &mut self,
        conn: ConnId,
        t: &mut TaskRecord,
        now: Instant,
        limit: Option<usize>,
        late: Option<u32>,
    ) -> Result<(), S> {
        // Stored before it is sent.
        let stored = self.store_state(t, TaskState::Offered, now, limit);
        if matches!(stored, Err(ServerError::QueueFull)) {
            if let Some(sync) = self.sync_of(conn) {
                // Refused: its sequence is not used up, and it is not offered.
                sync.next_seq = t.seq;
                sync.late_offer = late;
            }
        }
        stored?;
        let task = Task {
            seq: t.seq,
            id: t.id,
            kind: t.kind,
        };
        self.send(conn, &Down::Task(task));
        Ok(())
    }

    /// Records a report; returns the sequence to acknowledge (after the
    /// bytes at hand are read: `handle_bytes` sends one `Ack` for them all).
    /// `device` is the session's.
    fn on_report(
        &mut self,
        conn: ConnId,
        device: wire::DeviceId,
        seq: u32,
        body: &ReportBody,
        now: Instant,
    ) -> Result<u32, S> {
        // Only the sequences are read (and the policy state for a policy
        // report): what a report changes is written back field by field.
        let seqs = self
            .store
            .report_seqs(device)?
            .ok_or(ServerError::UnknownDevice)?;
        let expected = seqs.last_report_seq.wrapping_add(1);
        if seq != expected {
            if seq_newer(seq, expected) {
                return Err(ServerError::Peer(PeerError::SequenceGap));
            }
            return Ok(seqs.last_report_seq); // a resend
        }
        let seqs = ReportSeqs {
            last_report_seq: seq,
            last_task_seq: seqs.last_task_seq,
        };
        let ReportBody::Task { task: id, status } = *body else {
            return self.commit_other_report(device, seqs, body).map(|()| seq);
        };
        // Rare: a task given back ("not now") that a newer click could not
        // replace while the device held it.
        let by = match status {
            TaskStatus::Deferred { .. } => self.superseded_on_return(device, id)?,
            _ => None,
        };
        let commit = ReportCommit::new(device, seqs);
        // The console's event is queued by `update` itself, from the new
        // state while `apply_status` still holds it in registers (read back
        // from memory, a state just written in pieces waits for those stores
        // to reach the cache), and withdrawn below if the store then fails
        // or does not store the change.
        let events = &mut self.events;
        let queued = events.len();
        let mut update = |t: &mut TaskRecord, seqs: &mut ReportSeqs| {
            let Some(state) = apply_status(t, conn, device, status, by, now) else {
                return false;
            };
            // Any status for an offer means the device accepted its seq.
            if seq_newer(t.seq, seqs.last_task_seq) {
                seqs.last_task_seq = t.seq;
            }
            // A store that calls `update` more than once queues one event.
            events.truncate(queued);
            events.push_back(ServerEvent::TaskChanged {
                device,
                task: id,
                state,
            });
            true
        };
        let changed = self.store.commit_task_report(commit, id, &mut update);
        // Announced only if durable.
        self.keep_events_if(queued, matches!(changed, Ok(true)));
        changed?;
        Ok(seq)
    }

    /// Stores a report of `device` that is not about a task (`body`: a
    /// compliance event or a policy outcome) with the device's new
    /// sequences `seqs`, and tells the console. Out of line: the policy
    /// state and the event it builds on the stack, and their registers,
    /// were set up in `on_report` for every report, though task reports,
    /// the usual kind, need none of it.
    #[inline(never)]
    fn commit_other_report(
        &mut self,
        device: wire::DeviceId,
        seqs: ReportSeqs,
        body: &ReportBody,
    ) -> Result<(), S> {
        let policy_state;
        let mut commit = ReportCommit::new(device, seqs);
        let event = match *body {
            // `on_report`'s own: stored with the sequences only, no event.
            ReportBody::Task { .. } => return Ok(self.store.commit_report(commit)?),
            ReportBody::Compliance(e) => {
                commit.compliance = Some(e);
                ServerEvent::Compliance { device, event: e }
            }
            ReportBody::Policy(ref r) => {
                let assigned = self.store.policy_version(device)?.unwrap_or(0);
                // A version not at or before the assigned one was never
                // assigned, so not applied (a broken or hostile device):
                // taken as the device's version, it would number later
                // assignments beyond what devices take as newer, even after
                // a re-enrollment (PROTOCOL.md 10.3). Acknowledged; it
                // changes nothing. Known cost: after the server's store went
                // back to an older assignment, a report in flight of the
                // newer one no longer lifts the numbering above it.
                if r.version == assigned || seq_newer(assigned, r.version) {
                    commit.policy_version = Some(r.version);
                }
                // A report on an older version leaves a newer assignment pending.
                let state = if r.version != assigned {
                    let rec = self.store.device(device)?;
                    rec.ok_or(ServerError::UnknownDevice)?.policy_state
                } else {
                    policy_state = PolicyState::from_report(r.version, &r.outcome);
                    commit.policy_state = Some(&policy_state);
                    policy_state.clone()
                };
                ServerEvent::PolicyReported { device, state }
            }
        };
        self.store.commit_report(commit)?;
        // Durable now: to be acknowledged; tell the console.
        self.events.push_back(event);
        Ok(())
    }

    /// Progress of task `id` from the session of `device`.
    fn on_progress(
        &mut self,
        device: wire::DeviceId,
        id: TaskId,
        percent: Option<u8>,
    ) -> Result<(), S> {
        let Some(mut t) = self.store.task(id)?.filter(|t| t.device == device) else {
            return Ok(());
        };
        if matches!(t.state, TaskState::Delivered | TaskState::InProgress { .. }) {
            t.state = TaskState::InProgress {
                percent: percent.map(|p| p.min(100)),
            };
            self.store.put_task(&t)?;
            self.task_changed(&t);
        }
        Ok(())
    }

    /// A session's deadline timer: a silent session gets a `Timeout` error
    /// frame; one that is still there a full period later is dropped.
    pub(super) fn session_timer(&mut self, conn: ConnId, now: Instant) -> Result<(), S> {
        let Some(s) = self.sessions.get_mut(&conn) else {
            return Ok(());
        };
        let (deadline, limit, device) = match &s.phase {
            // Idle too long, or open too long: trickled bytes keep the
            // first away, not the second.
            Phase::Syncing(sync) => {
                let idle = s.last_rx + self.cfg.idle_timeout;
                let deadline = idle.min(s.opened + self.cfg.max_session);
                (deadline, self.cfg.idle_timeout, Some(sync.device))
            }
            // Trickled bytes must not keep an unproven connection open.
            _ => {
                let limit = self.cfg.handshake_timeout;
                (s.opened + limit, limit, None)
            }
        };
        if now < deadline {
            self.arm_timer(deadline, Timer::Session(conn));
            return Ok(());
        }
        if s.closing {
            self.finish_close(conn);
            return Ok(());
        }
        // What is queued stays ahead of the error: a challenge not yet read
        // (the error after it carries the session key), a frame partly
        // handed out. A peer that reads nothing is dropped by `send` once
        // the queue passes `max_pending_out`.
        s.last_rx = now;
        self.send(conn, &Down::Error(ErrorCode::Timeout));
        if let Some(s) = self.sessions.get_mut(&conn) {
            s.closing = true;
        }
        self.arm_timer(now + limit, Timer::Session(conn));
        match device {
            // A silent session may be half-open: the device never saw what
            // was offered in it and, believing its sync done, would wait for
            // its periodic sync. A push (rate-limited) brings it back.
            Some(device) => self.request_push(device, now),
            None => Ok(()),
        }
    }
}

/// Applies a status report to `t`, the stored task; returns its new state,
/// or `None` when it changes nothing (another device's task, or one already
/// final). A "not now" for
/// it ends it cancelled if a cancel was asked for, expired if its expiry
/// passed, else superseded by `superseded_by` when given.
fn apply_status(
    t: &mut TaskRecord,
    conn: ConnId,
    device: wire::DeviceId,
    status: TaskStatus,
    superseded_by: Option<TaskId>,
    now: Instant,
) -> Option<TaskState> {
    if t.device != device || t.state.is_final() {
        return None;
    }
    let state = match status {
        TaskStatus::Received => TaskState::Delivered,
        TaskStatus::Succeeded { result } => TaskState::Succeeded { result },
        TaskStatus::Failed { reason } => TaskState::Failed { reason },
        TaskStatus::Cancelled => TaskState::Cancelled,
        TaskStatus::Deferred { .. } if t.cancel_requested => TaskState::Cancelled,
        // Back from the device, the task can expire again: its expiry timer
        // passed while the device held it (found by breaker15).
        TaskStatus::Deferred { .. } if t.expires_at.is_some_and(|e| now >= e) => TaskState::Expired,
        TaskStatus::Deferred { retry_after_s } => match superseded_by {
            Some(by) => TaskState::Superseded { by },
            None => {
                t.deferred_in = conn.0;
                TaskState::Deferred { retry_after_s }
            }
        },
    };
    t.state = state;
    if state.is_final() {
        t.finished_at = Some(now);
    }
    Some(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{MemoryStore, ServerConfig};

    /// `copy_short` copies exactly the bytes `copy_from_slice` does, at every
    /// length around its two fixed-size cases, and nothing past them.
    #[test]
    fn copy_short_is_copy_from_slice() {
        let src: [u8; 48] = core::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0x5A);
        for n in 0..=40 {
            for at in [0, 1, 7] {
                let mut got = [0xEEu8; 48];
                copy_short(&mut got[..n], &src[at..at + n]);
                let mut want = [0xEEu8; 48];
                want[..n].copy_from_slice(&src[at..at + n]);
                assert_eq!(got, want, "length {n} from {at}");
            }
        }
    }

    /// A device retired while its check-in check is queued leaves no push
    /// state behind once that check has run; one retired with none queued
    /// leaves none at once.
    #[test]
    fn a_retired_device_leaves_no_push_state() {
        let cfg = ServerConfig::default();
        let mut s = Server::new(cfg, MemoryStore::new(), [1; 32], [2; 32]);
        let t0 = Instant::from_millis(0);
        let (a, b) = (wire::DeviceId(1), wire::DeviceId(2));
        for d in [a, b] {
            s.enroll(d, t0).unwrap();
            s.checked_in(d, t0);
        }
        assert_eq!(s.pushes.0.len(), 2);
        s.retire(a, t0).unwrap();
        assert_eq!(s.pushes.0.len(), 2, "kept until its check has run");
        let later = t0 + cfg.periodic_interval + cfg.overdue_slack;
        s.handle_timeout(later).unwrap();
        assert!(s.pushes.get(&a).is_none());
        assert!(s
            .pushes
            .get(&b)
            .is_some_and(|p| p.flags.has(crate::server::Flags::OVERDUE)));
        s.retire(b, later).unwrap();
        assert_eq!(s.pushes.0.len(), 0, "none queued: dropped at once");
    }

    /// After most devices are retired, a shrink drops the push states
    /// they left with a check queued, and those checks (in the FIFO and,
    /// for one armed after the clock went back, in the heap), and moves the
    /// rest into a table for them: the devices kept keep their states and
    /// checks, and are reported overdue once each when silent; no retired
    /// device is, nor has a state left. A retired device enrolled again
    /// and silent since loses its leftover state as its check would have
    /// taken it; checked in after the shrink, it has one check queued.
    #[test]
    fn a_shrink_gives_back_the_push_states_of_retired_devices() {
        let cfg = ServerConfig::default();
        let mut s = Server::new(cfg, MemoryStore::new(), [1; 32], [2; 32]);
        let t0 = Instant::from_millis(10_000_000);
        let id = |i: u64| wire::DeviceId(i);
        for i in 0..2000 {
            s.enroll(id(i), t0).unwrap();
            s.checked_in(id(i), t0);
        }
        // Armed after the clock went back: its check goes to the heap.
        let back = id(5000);
        s.enroll(back, t0).unwrap();
        s.checked_in(back, t0 - crate::time::Duration::from_secs(1));
        let in_heap = |s: &Server<MemoryStore>, d| {
            (s.timers.iter()).any(|t| matches!(t.0.1, crate::server::Timer::Overdue(c) if c == d))
        };
        assert!(in_heap(&s, back));
        let grown = s.pushes.0.slots();
        let kept = |i: u64| i.is_multiple_of(10);
        for i in (0..2000).filter(|i| !kept(*i)).chain([5000]) {
            s.retire(id(i), t0).unwrap();
        }
        let again = id(7);
        s.enroll(again, t0).unwrap();
        assert_eq!((s.pushes.0.len(), s.pushes.0.slots()), (2001, grown));
        assert_eq!(s.overdue_checks.len(), 2000);

        s.shrink_to_fit();
        assert_eq!(s.pushes.0.len(), 200);
        assert!(
            s.pushes.0.slots() * 5 < grown,
            "{} of {grown}",
            s.pushes.0.slots()
        );
        assert_eq!(s.overdue_checks.len(), 200);
        assert!(s.overdue_checks.iter().all(|(_, d)| kept(d.0)));
        assert!(!in_heap(&s, back) && s.pushes.get(&back).is_none());
        assert!(s.pushes.get(&again).is_none(), "as its check would have");
        for i in (0..2000).filter(|i| kept(*i)) {
            let p = s.pushes.get(&id(i)).unwrap();
            assert!(
                p.flags.has(crate::server::Flags::DUE) && p.flags.has(crate::server::Flags::ARMED),
                "{i}"
            );
        }
        s.checked_in(again, t0);
        assert_eq!(
            s.overdue_checks.iter().filter(|(_, d)| *d == again).count(),
            1
        );

        let later = t0 + cfg.periodic_interval + cfg.overdue_slack;
        s.handle_timeout(later).unwrap();
        let mut overdue = Vec::new();
        while let Some(e) = s.poll_event() {
            if let ServerEvent::Overdue { device } = e {
                overdue.push(device.0);
            }
        }
        overdue.sort_unstable();
        let expected: Vec<u64> = (0..2000).filter(|i| kept(*i) || *i == 7).collect();
        assert_eq!(overdue, expected);
        assert_eq!(s.pushes.0.len(), 201);
    }

    /// A closed session taken from the spare list is a new one: every field
    /// as `Session::new` sets it (only the output buffer keeps its room).
    #[test]
    fn a_spare_session_is_reset_whole() {
        /// Every field (a field added to `Session` fails to compile here
        /// until it is listed), the decoder by what it holds and by whether
        /// it reads an unkeyed frame.
        fn fields(s: &mut Session) -> impl PartialEq + core::fmt::Debug {
            let Session {
                phase,
                decoder,
                out,
                out_pos,
                out_end,
                burst_end,
                last_rx,
                opened,
                closing,
                queued,
                key,
                frame_errors,
            } = s;
            let mut frame = [0u8; 64];
            let n = frame::encode(&Up::Proof { mac: [1; 32] }, &mut frame).unwrap();
            let (buffered, taken) = (decoder.buffered(), decoder.push(&frame[..n]));
            let unkeyed = matches!(decoder.decode(), Some(Ok(_)));
            decoder.reset();
            let phase = matches!(phase, Phase::AwaitHello);
            let _ = out; // its bytes are room, whatever they hold
            (
                (
                    phase, buffered, taken, unkeyed, *out_pos, *out_end, *burst_end,
                ),
                (*last_rx, *opened, *closing, *queued, *key, *frame_errors),
            )
        }

        let (t0, t1) = (Instant::from_millis(5), Instant::from_millis(9));
        let mut spare = Spare::default();
        let mut s = spare.session(t0);
        s.phase = Phase::AwaitProof {
            hello: spare.blank_hello(),
            nonce: [3; 16],
            hello_binding: auth::bind_hello(&[4; 40]),
            challenge: 7,
        };
        s.decoder.set_key(0x5EED);
        s.decoder.push(&[0xA5; 9]);
        s.out.resize(64, 0);
        (s.out_pos, s.out_end, s.burst_end) = (3, 40, 30);
        s.last_rx = t1 + crate::time::Duration::from_secs(1);
        (s.closing, s.queued, s.key, s.frame_errors) = (true, true, 0x5EED, 4);
        spare.keep(s);
        let mut reused = spare.session(t1);
        assert_eq!(fields(&mut reused), fields(&mut Session::new(t1)));
        assert_eq!(reused.out.capacity(), 64, "the buffer is reused");
    }

    /// A connection drained through `poll_transmit_for` keeps its one entry
    /// in the ready queue; `poll_transmit` still finds every connection with
    /// output once, and leaves no entry behind.
    #[test]
    fn a_connection_drained_by_id_keeps_one_ready_entry() {
        let cfg = ServerConfig::default();
        let mut s = Server::new(cfg, MemoryStore::new(), [1; 32], [2; 32]);
        let t0 = Instant::from_millis(0);
        let a = s.connection_opened(t0).unwrap();
        let b = s.connection_opened(t0).unwrap();
        let mut buf = [0u8; 64];
        for _ in 0..1000 {
            s.send(a, &Down::SyncEnd);
            assert!(s.poll_transmit_for(a, &mut buf).is_some());
            assert_eq!(s.poll_transmit_for(a, &mut buf), None);
        }
        assert_eq!(s.ready.len(), 1, "one entry, reused by every send");
        s.send(b, &Down::SyncEnd);
        s.send(a, &Down::SyncEnd);
        let mut got = alloc::vec::Vec::new();
        while let Some((conn, _)) = s.poll_transmit(&mut buf) {
            got.push(conn);
        }
        got.sort();
        assert_eq!(got, [a, b]);
        assert!(s.ready.is_empty());
        s.send(b, &Down::SyncEnd);
        assert_eq!(s.ready.len(), 1);
    }

    /// A new connection of `s` that sent a `Hello` of device `id` and got
    /// its challenge.
    fn challenged(s: &mut Server<MemoryStore>, id: u64, now: Instant) -> ConnId {
        let hello = Up::Hello(Hello {
            version: PROTOCOL_VERSION,
            attempt: 1,
            device: wire::DeviceId(id),
            generation: 0,
            platform: wire::Platform::Android,
            push_token: heapless::String::new(),
            trigger: wire::SyncTrigger::Manual,
            last_task_seq: 0,
            policy_version: 0,
        });
        let mut buf = [0u8; 600];
        let conn = s.connection_opened(now).unwrap();
        let n = frame::encode(&hello, &mut buf).unwrap();
        s.handle_bytes(conn, &buf[..n], now).unwrap();
        conn
    }

    /// Answers the challenge of `conn` with the right proof for `secret`.
    fn prove(s: &mut Server<MemoryStore>, conn: ConnId, secret: &auth::Secret, now: Instant) {
        let Some(Session {
            phase:
                Phase::AwaitProof {
                    nonce,
                    hello_binding,
                    ..
                },
            ..
        }) = s.sessions.get(&conn)
        else {
            panic!("not challenged");
        };
        let mac = auth::proof(secret, nonce, hello_binding);
        s.on_proof(conn, mac, now).unwrap();
    }

    /// A failed proof costs one derivation of the secret whether or not the
    /// engine keeps the device's (an unknown id the same), so that timing
    /// failed handshakes tells nothing of which ids have one; a passing
    /// proof with a kept secret costs none.
    #[test]
    fn failed_proofs_cost_a_derivation_whatever_is_kept() {
        let mut s = Server::new(
            ServerConfig::default(),
            MemoryStore::new(),
            [1; 32],
            [2; 32],
        );
        let now = Instant::from_millis(1_000);
        let secret = s.enroll(wire::DeviceId(1), now).unwrap();
        let sync = |s: &mut Server<MemoryStore>| {
            let c = challenged(s, 1, now);
            prove(s, c, &secret, now);
            s.connection_closed(c, now);
        };
        sync(&mut s); // derived, then kept
        let before = s.derivations.get();
        sync(&mut s);
        assert_eq!(
            s.derivations.get(),
            before,
            "a kept secret is not derived again"
        );
        for id in [1, 99] {
            let before = s.derivations.get();
            let c = challenged(&mut s, id, now);
            assert!(s.on_proof(c, [0; 32], now).is_err());
            assert_eq!(s.derivations.get(), before + 1, "a failed proof of id {id}");
            s.connection_closed(c, now);
        }
    }

    /// The challenge order holds an entry only for a device with a handshake
    /// awaiting its proof: failed and closed handshakes leave none, and one
    /// handshake held open keeps one entry however many syncs follow it.
    #[test]
    fn the_challenge_order_is_bounded_by_the_waiting_handshakes() {
        let cfg = ServerConfig::default();
        let mut s = Server::new(cfg, MemoryStore::new(), [1; 32], [2; 32]);
        let t0 = Instant::from_millis(0);
        for _ in 0..100 {
            let conn = challenged(&mut s, 7, t0); // not enrolled: every proof fails
            s.on_proof(conn, [0; 32], t0).unwrap_err();
            s.connection_closed(conn, t0);
            let conn = challenged(&mut s, 8, t0); // closed unanswered
            s.connection_closed(conn, t0);
        }
        assert!(s.handshakes.waiting.is_empty());

        let secret = s.enroll(wire::DeviceId(1), t0).unwrap();
        let other = s.enroll(wire::DeviceId(2), t0).unwrap();
        let held = challenged(&mut s, 1, t0);
        for _ in 0..1000 {
            for (id, secret) in [(1, &secret), (2, &other)] {
                let conn = challenged(&mut s, id, t0);
                prove(&mut s, conn, secret, t0);
                s.connection_closed(conn, t0);
            }
        }
        assert_eq!(s.handshakes.waiting.len(), 1, "device 1, for `held`");
        s.connection_closed(held, t0);
        assert!(s.handshakes.waiting.is_empty());
    }

    /// Takes the server's events: a push sent for a device clears its entry
    /// of `wanted`.
    fn drain_pushes(s: &mut Server<MemoryStore>, wanted: &mut [bool]) {
        while let Some(e) = s.poll_event() {
            if let ServerEvent::SendPush { device, .. } = e {
                if let Some(w) = wanted.get_mut(device.0 as usize) {
                    *w = false;
                }
            }
        }
    }

    /// Runs the timers on past `latest`, 5 s at a time as a transport's loop
    /// would, for 1,000 s; returns the time reached.
    fn run_on(s: &mut Server<MemoryStore>, latest: Instant, wanted: &mut [bool]) -> Instant {
        let mut now = latest;
        for _ in 0..200 {
            now = now + crate::time::Duration::from_secs(5);
            s.handle_timeout(now).unwrap();
            drain_pushes(s, wanted);
        }
        now
    }

    /// One step of an operator and a clock against offline devices: queue a
    /// task for device `dev`, or move the clock by `ms` (back when negative)
    /// and run the timers.
    #[derive(Clone, Debug)]
    enum PushOp {
        Enqueue { dev: u8 },
        Clock { ms: i64 },
    }

    fn push_op() -> impl proptest::strategy::Strategy<Value = PushOp> {
        use proptest::prelude::*;
        prop_oneof![
            3 => (0u8..4).prop_map(|dev| PushOp::Enqueue { dev }),
            2 => prop_oneof![0i64..2_000, 0i64..120_000, -120_000i64..0]
                .prop_map(|ms| PushOp::Clock { ms }),
        ]
    }

    proptest::proptest! {
        /// Every push requested for an offline device goes out (at once, or
        /// when the rate limit allows), whatever the clock does; once every
        /// check has run, no push is held and no check is left.
        #[test]
        fn every_requested_push_goes_out_and_nothing_is_held(
            ops in proptest::collection::vec(push_op(), 0..80),
        ) {
            use crate::time::Duration;
            let cfg = ServerConfig::default();
            let mut s = Server::new(cfg, MemoryStore::new(), [1; 32], [2; 32]);
            let mut now = Instant::from_millis(10_000_000);
            for d in 0..4u64 {
                s.enroll(wire::DeviceId(d), now).unwrap();
                s.store_mut()
                    .set_push_target(wire::DeviceId(d), wire::Platform::Android, "tok")
                    .unwrap();
            }
            let mut wanted = [false; 4];
            let mut latest = now;
            for op in &ops {
                match *op {
                    PushOp::Enqueue { dev } => {
                        let opts = Default::default();
                        s.enqueue_task(wire::DeviceId(dev.into()), wire::TaskKind::Lock, opts, now)
                            .unwrap();
                        wanted[usize::from(dev)] = true;
                        drain_pushes(&mut s, &mut wanted);
                    }
                    PushOp::Clock { ms } => {
                        now = if ms < 0 {
                            now - Duration::from_millis(ms.unsigned_abs())
                        } else {
                            now + Duration::from_millis(ms as u64)
                        };
                        s.handle_timeout(now).unwrap();
                        drain_pushes(&mut s, &mut wanted);
                    }
                }
                latest = latest.max(now);
            }
            // Time runs on past the latest time seen (one step at a time, as
            // a transport's loop would).
            run_on(&mut s, now.max(latest), &mut wanted);
            proptest::prop_assert_eq!(wanted, [false; 4], "a requested push never went out");
            proptest::prop_assert!(s.held_pushes.is_empty(), "held: {:?}", s.held_pushes);
            proptest::prop_assert!(s.push_checks.is_empty());
        }
    }

    /// One step of an operator retiring and enrolling offline devices,
    /// checking them in (as a handshake does), queueing their tasks, and a
    /// clock that also goes back.
    #[derive(Clone, Debug)]
    enum RetireOp {
        Enqueue { dev: u8 },
        Clock { ms: i64 },
        Retire { dev: u8 },
        Enroll { dev: u8 },
        CheckIn { dev: u8 },
        Shrink,
    }

    fn retire_op() -> impl proptest::strategy::Strategy<Value = RetireOp> {
        use proptest::prelude::*;
        prop_oneof![
            3 => (0u8..3).prop_map(|dev| RetireOp::Enqueue { dev }),
            3 => prop_oneof![0i64..2_000, 0i64..120_000, 0i64..100_000_000, -120_000i64..0]
                .prop_map(|ms| RetireOp::Clock { ms }),
            1 => (0u8..3).prop_map(|dev| RetireOp::Retire { dev }),
            1 => (0u8..3).prop_map(|dev| RetireOp::Enroll { dev }),
            2 => (0u8..3).prop_map(|dev| RetireOp::CheckIn { dev }),
            1 => proptest::strategy::Just(RetireOp::Shrink),
        ]
    }

    proptest::proptest! {
        /// Retirements among pushes and check-ins, whatever the clock does,
        /// with `Server::shrink_to_fit` at any point: a device's state is
        /// marked `armed` exactly while one check of it is queued, a shrink
        /// leaves no state of a retired device behind, every push
        /// requested for an enrolled device goes out; once every
        /// check has run, no push is held, no check is left, a retired
        /// device has no push state, and a device is overdue exactly when
        /// it checked in since it was last retired and stayed silent.
        #[test]
        fn retired_devices_leave_no_push_state_and_keep_no_promise(
            ops in proptest::collection::vec(retire_op(), 0..80),
        ) {
            use crate::time::Duration;
            let cfg = ServerConfig::default();
            let mut s = Server::new(cfg, MemoryStore::new(), [1; 32], [2; 32]);
            let mut now = Instant::from_millis(10_000_000);
            let enroll = |s: &mut Server<MemoryStore>, d: u8, now: Instant| {
                let id = wire::DeviceId(d.into());
                s.enroll(id, now).unwrap();
                s.store_mut().set_push_target(id, wire::Platform::Android, "tok").unwrap();
            };
            for d in 0..3u8 {
                enroll(&mut s, d, now);
            }
            let mut enrolled = [true; 3];
            let mut promised = [false; 3];
            let mut wanted = [false; 3];
            let mut latest = now;
            for op in &ops {
                match *op {
                    RetireOp::Enqueue { dev } => {
                        let d = usize::from(dev);
                        let r = s.enqueue_task(
                            wire::DeviceId(dev.into()), wire::TaskKind::Lock, Default::default(), now,
                        );
                        match r {
                            Ok(_) => wanted[d] = true,
                            Err(ServerError::QueueFull) => {}
                            Err(e) => proptest::prop_assert!(!enrolled[d], "{:?}", e),
                        }
                    }
                    RetireOp::Clock { ms } => {
                        now = if ms < 0 {
                            now - Duration::from_millis(ms.unsigned_abs())
                        } else {
                            now + Duration::from_millis(ms as u64)
                        };
                        s.handle_timeout(now).unwrap();
                    }
                    RetireOp::Retire { dev } => {
                        let d = usize::from(dev);
                        let r = s.retire(wire::DeviceId(dev.into()), now);
                        proptest::prop_assert_eq!(r.is_ok(), enrolled[d]);
                        enrolled[d] = false;
                        promised[d] = false;
                        wanted[d] = false;
                    }
                    RetireOp::Enroll { dev } => {
                        enroll(&mut s, dev, now);
                        enrolled[usize::from(dev)] = true;
                    }
                    RetireOp::CheckIn { dev } if enrolled[usize::from(dev)] => {
                        s.checked_in(wire::DeviceId(dev.into()), now);
                        promised[usize::from(dev)] = true;
                    }
                    RetireOp::CheckIn { .. } => {}
                    RetireOp::Shrink => {
                        s.shrink_to_fit();
                        let left = s.pushes.iter().find(|(_, p)| p.is_left_by_retire());
                        proptest::prop_assert!(left.is_none(), "{:?}", left);
                    }
                }
                // A device's state is marked `armed` exactly when one check
                // of its check-in is queued, in the FIFO or the heap.
                for d in 0..3u8 {
                    let id = wire::DeviceId(d.into());
                    let queued = s.overdue_checks.iter().filter(|(_, c)| *c == id).count()
                        + s.timers.iter()
                            .filter(|t| matches!(t.0.1, crate::server::Timer::Overdue(c) if c == id))
                            .count();
                    let armed = s.pushes.get(&id).is_some_and(|p| p.flags.has(crate::server::Flags::ARMED));
                    proptest::prop_assert_eq!(queued, usize::from(armed), "device {} after {:?}", d, op);
                }
                drain_pushes(&mut s, &mut wanted);
                latest = latest.max(now);
            }
            // Time runs on past the latest time seen, then past every
            // check-in deadline.
            now = run_on(&mut s, now.max(latest), &mut wanted);
            for _ in 0..4 {
                now = now + cfg.periodic_interval + cfg.overdue_slack;
                s.handle_timeout(now).unwrap();
                drain_pushes(&mut s, &mut wanted);
            }
            proptest::prop_assert_eq!(wanted, [false; 3], "a requested push never went out");
            proptest::prop_assert!(s.held_pushes.is_empty(), "held: {:?}", s.held_pushes);
            proptest::prop_assert!(s.push_checks.is_empty());
            proptest::prop_assert!(s.overdue_checks.is_empty());
            proptest::prop_assert_eq!(s.timers.len(), 0);
            for d in 0..3u8 {
                let id = wire::DeviceId(d.into());
                let state = s.pushes.get(&id);
                if !enrolled[usize::from(d)] {
                    proptest::prop_assert!(state.is_none(), "retired {}: {:?}", d, state);
                }
                proptest::prop_assert_eq!(s.is_overdue(id), promised[usize::from(d)], "device {}", d);
            }
        }
    }

    use proptest::strategy::Strategy as _;

    #[derive(Clone, Debug)]
    enum HandshakeOp {
        /// A new connection of device `dev` gets its challenge.
        Open { dev: u8 },
        /// The `nth` handshake awaiting its proof gets it.
        Prove { nth: u8 },
        /// The `nth` open connection closes.
        Close { nth: u8 },
    }

    proptest::proptest! {
        /// Any interleaving of handshakes of two devices: a right proof is
        /// refused exactly when a session of its device authenticated on a
        /// later challenge, and the challenge order holds entries only for
        /// devices with a handshake awaiting its proof.
        #[test]
        fn proofs_are_refused_exactly_when_a_later_challenge_authenticated(
            ops in proptest::collection::vec(proptest::prop_oneof![
                (1u8..3).prop_map(|dev| HandshakeOp::Open { dev }),
                proptest::prelude::any::<u8>().prop_map(|nth| HandshakeOp::Prove { nth }),
                proptest::prelude::any::<u8>().prop_map(|nth| HandshakeOp::Close { nth }),
            ], 0..60),
        ) {
            let cfg = ServerConfig::default();
            let mut s = Server::new(cfg, MemoryStore::new(), [1; 32], [2; 32]);
            let t0 = Instant::from_millis(0);
            let secrets = [
                s.enroll(wire::DeviceId(1), t0).unwrap(),
                s.enroll(wire::DeviceId(2), t0).unwrap(),
            ];
            // Waiting handshakes: connection, device, challenge number.
            let mut waiting: std::vec::Vec<(ConnId, u64, u64)> = std::vec::Vec::new();
            let mut open: std::vec::Vec<ConnId> = std::vec::Vec::new();
            let mut latest_auth = [0u64; 3];
            for op in &ops {
                match *op {
                    HandshakeOp::Open { dev } => {
                        let conn = challenged(&mut s, dev.into(), t0);
                        waiting.push((conn, dev.into(), s.nonces.count()));
                        open.push(conn);
                    }
                    HandshakeOp::Prove { nth } if !waiting.is_empty() => {
                        let (conn, dev, number) = waiting.remove(usize::from(nth) % waiting.len());
                        let Some(Session {
                            phase: Phase::AwaitProof { nonce, hello_binding, .. },
                            ..
                        }) = s.sessions.get(&conn)
                        else {
                            panic!("not challenged");
                        };
                        let mac = auth::proof(&secrets[dev as usize - 1], nonce, hello_binding);
                        let r = s.on_proof(conn, mac, t0);
                        let refuse = latest_auth[dev as usize] > number;
                        proptest::prop_assert_eq!(
                            r.is_err(), refuse,
                            "challenge {} of device {}, latest authenticated {}: {:?}",
                            number, dev, latest_auth[dev as usize], r.err()
                        );
                        if r.is_ok() {
                            latest_auth[dev as usize] = number;
                        } else {
                            s.connection_closed(conn, t0);
                        }
                    }
                    HandshakeOp::Close { nth } if !open.is_empty() => {
                        let conn = open.remove(usize::from(nth) % open.len());
                        s.connection_closed(conn, t0);
                        waiting.retain(|w| w.0 != conn);
                    }
                    _ => {}
                }
                open.retain(|c| s.sessions.contains_key(c));
                let mut devices: std::vec::Vec<u64> = waiting.iter().map(|w| w.1).collect();
                devices.sort_unstable();
                devices.dedup();
                proptest::prop_assert_eq!(s.handshakes.waiting.len(), devices.len());
                for d in devices {
                    let want = waiting.iter().filter(|w| w.1 == d).count() as u32;
                    let got = s.handshakes.waiting.get(&wire::DeviceId(d)).map(|w| w.0);
                    proptest::prop_assert_eq!(got, Some(want));
                }
            }
        }
    }
}
