//! The operation tags of each harness, and a writer for seed inputs.
//!
//! A tag is taken modulo the harness's operation count, so every byte is some
//! operation. The writer below emits exactly what the harnesses read.

/// Tags of the `device` harness (after its first byte, the capacity choice).
pub mod device {
    /// Raw bytes from the server: chunk size (u8, 0 = whole), length (u16), bytes.
    pub const FEED: u8 = 0;
    /// One `Down` message built by `arbitrary`, framed with a valid CRC.
    pub const FEED_MSG: u8 = 1;
    /// The next task offer (seq `last + 1 + delta`): delta (u8), id (u16), kind (u8).
    pub const NEXT_TASK: u8 = 2;
    /// The transport fails: refuses the next connect, or closes the open one.
    pub const TRANSPORT_FAILS: u8 = 3;
    /// Time moves: milliseconds (u32); backwards if the next byte is odd.
    pub const ADVANCE: u8 = 4;
    /// Time jumps to the engine's next deadline.
    pub const TO_DEADLINE: u8 = 5;
    /// A trigger: push, manual sync or a new push token (u8 selects).
    pub const TRIGGER: u8 = 6;
    /// A compliance event built by `arbitrary`.
    pub const COMPLIANCE: u8 = 7;
    /// The application finishes a running task: index (u8), status by `arbitrary`.
    pub const FINISH: u8 = 8;
    /// The application reports how the pending policy went (`arbitrary` outcome).
    pub const POLICY: u8 = 9;
    /// Power cycle: restore from the newer valid slot.
    pub const REBOOT: u8 = 10;
    /// Power fails during the next snapshot write after `keep` (u16) bytes.
    pub const CRASH_ON_WRITE: u8 = 11;
    /// Number of operations.
    pub const COUNT: u8 = 12;
}

/// Tags of the `server` harness.
pub mod server {
    /// A connection opens.
    pub const OPEN: u8 = 0;
    /// Connection (u8 index) closes.
    pub const CLOSE: u8 = 1;
    /// Raw bytes on connection (u8): chunk (u8), length (u16), bytes.
    pub const FEED: u8 = 2;
    /// One `Up` message built by `arbitrary` on connection (u8), valid CRC.
    pub const FEED_MSG: u8 = 3;
    /// A correct proof for the connection's (u8) last `Hello` and challenge.
    pub const PROVE: u8 = 4;
    /// The next report in sequence on connection (u8), body by `arbitrary`.
    pub const REPORT_NEXT: u8 = 5;
    /// Time moves: milliseconds (u32); backwards if the next byte is odd.
    pub const ADVANCE: u8 = 6;
    /// The operator queues a task: device (u8), kind (u8), expiry (u16, 0 =
    /// none), supersede key (u8, 0 = none).
    pub const ENQUEUE: u8 = 7;
    /// The operator cancels queued task number (u8).
    pub const CANCEL: u8 = 8;
    /// The operator assigns a policy: device (u8), settings (u8).
    pub const POLICY: u8 = 9;
    /// The operator re-enrolls device (u8).
    pub const ENROLL: u8 = 10;
    /// The operator retires device (u8).
    pub const RETIRE: u8 = 11;
    /// Connection (u8) breaks: `connection_dropped`.
    pub const DROP: u8 = 12;
    /// The push service refuses device (u8)'s token for good.
    pub const TOKEN_REJECTED: u8 = 13;
    /// The server process restarts over its store (`into_store`, a new
    /// `Server`, `recover`): every connection is gone.
    pub const RESTART: u8 = 14;
    /// Number of operations. Tags the corpus generator writes are below
    /// `ENROLL + 1`, so adding operations after them keeps its seeds.
    pub const COUNT: u8 = 15;
}

/// Writes seed inputs in the harnesses' format.
#[derive(Clone, Debug, Default)]
pub struct Script(pub Vec<u8>);

impl Script {
    /// A script that starts with `first` (the device harness's capacity byte).
    pub fn starting_with(first: &[u8]) -> Self {
        Script(first.to_vec())
    }

    /// An operation tag.
    pub fn tag(&mut self, tag: u8) -> &mut Self {
        self.0.push(tag);
        self
    }

    /// A byte field.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    /// A 16-bit field.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A 32-bit field.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A length-prefixed byte field (split into several when over 65535 bytes
    /// is the caller's business).
    pub fn blob(&mut self, bytes: &[u8]) -> &mut Self {
        let n = bytes.len().min(usize::from(u16::MAX));
        self.u16(n as u16);
        self.0.extend_from_slice(&bytes[..n]);
        self
    }
}
