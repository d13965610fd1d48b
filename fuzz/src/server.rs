//! `server`: one `Server` fed arbitrary bytes and messages from many
//! connections, with operator calls, broken connections, refused push
//! tokens, restarts over its store and time in between.
//!
//! Input: operations (see [`crate::script::server`]). Devices 1, 2 and 3 are
//! enrolled before the first operation, with the fixed keys below, so that a
//! recorded session's proofs verify (the corpus generator uses the same ones).
//!
//! The harness frames what it builds (messages, proofs, reports) as version 2
//! wants: with key 0 until the server's `Challenge` on that connection, with
//! that nonce's session key after it. A proof covers the payload of the last
//! `Hello` the harness framed on the connection before the challenge.
//!
//! Invariants: no panic; every byte the server sends is a sequence of valid
//! frames holding valid `Down` messages, with key 0 up to and including the
//! `Challenge` and the connection's session key after it; a connection is
//! only ever offered tasks, cancels and the policy of the device it proved to
//! be; a retired device (not enrolled since) never authenticates; the
//! session count matches the connections open and stays within the bound; a
//! closed connection is an `UnknownConnection` error, not a crash.

use std::collections::{HashMap, HashSet};

use mdm_sync::auth;
use mdm_sync::server::{
    ConnId, MemoryStore, Server, ServerConfig, ServerError, ServerEvent, SupersedeKey, TaskOptions,
};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::{self, frame, DeviceId, Down, TaskId, Up, MAX_FRAME};

use crate::frames::{frame_len, unframe};
use crate::mirror::{kind, policy, FBody, FUp};
use crate::script::server as op;
use crate::{chunked, Input};

/// The server's master key in the harness and the corpus generator.
pub const MASTER: [u8; 32] = [0x4d; 32];
/// The server's nonce seed in the harness and the corpus generator.
pub const NONCE_SEED: [u8; 32] = [0x6e; 32];
/// Devices enrolled before the first operation.
pub const ENROLLED: [DeviceId; 3] = [DeviceId(1), DeviceId(2), DeviceId(3)];
/// At most this many connections at once (small, so the bound is reached).
pub const MAX_SESSIONS: usize = 6;

/// The harness's server: fixed keys, small bounds, devices enrolled.
pub fn new_server(now: Instant) -> Server<MemoryStore> {
    let mut s = Server::new(server_config(), MemoryStore::new(), MASTER, NONCE_SEED);
    for id in ENROLLED {
        s.enroll(id, now).expect("enroll");
    }
    s
}

/// The harness's bounds: small, so that they are reached.
fn server_config() -> ServerConfig {
    ServerConfig {
        max_sessions: MAX_SESSIONS,
        max_open_tasks: 12,
        max_pending_out: 4 * 1024,
        ..ServerConfig::default()
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    run_counting(data);
}

/// Runs one input; returns how many sessions proved their device (the corpus
/// test checks that recorded sessions still get that far).
pub fn run_counting(data: &[u8]) -> usize {
    let mut input = Input::new(data);
    let mut h = Harness::new();
    let mut ops = 0;
    while let Some(tag) = input.tag() {
        ops += 1;
        if ops > 4_000 {
            break;
        }
        h.op(tag % op::COUNT, &mut input);
        h.pump();
        h.check();
    }
    h.authenticated
}

#[derive(Default)]
struct Conn {
    id: Option<ConnId>,
    open: bool,
    /// Device, generation and payload hash of the last `Hello` framed here
    /// before the challenge.
    hello: Option<(DeviceId, u32, auth::HelloBinding)>,
    /// The nonce of the server's `Challenge` here, once sent.
    nonce: Option<[u8; 16]>,
    device: Option<DeviceId>,
    pending: Vec<u8>,
}

impl Conn {
    /// The session key: from the challenge's nonce, 0 before it.
    fn key(&self) -> u32 {
        self.nonce.as_ref().map_or(0, frame::session_key)
    }
}

struct Harness {
    server: Server<MemoryStore>,
    now: u64,
    conns: Vec<Conn>,
    by_id: HashMap<ConnId, usize>,
    tasks: Vec<(TaskId, DeviceId)>,
    owner: HashMap<TaskId, DeviceId>,
    authenticated: usize,
    /// Devices retired and not enrolled since: never authenticated.
    retired: HashSet<DeviceId>,
}

impl Harness {
    fn new() -> Self {
        Self {
            server: new_server(Instant::from_millis(1_000)),
            now: 1_000,
            conns: Vec::new(),
            by_id: HashMap::new(),
            tasks: Vec::new(),
            owner: HashMap::new(),
            authenticated: 0,
            retired: HashSet::new(),
        }
    }

    fn at(&self) -> Instant {
        Instant::from_millis(self.now)
    }

    fn conn(&self, k: u8) -> Option<usize> {
        (!self.conns.is_empty()).then(|| usize::from(k) % self.conns.len())
    }

    fn op(&mut self, tag: u8, input: &mut Input<'_>) {
        let now = self.at();
        match tag {
            op::OPEN => match self.server.connection_opened(now) {
                Ok(id) => {
                    self.by_id.insert(id, self.conns.len());
                    self.conns.push(Conn {
                        id: Some(id),
                        open: true,
                        ..Conn::default()
                    });
                }
                Err(ServerError::Busy) => {
                    let open = self.conns.iter().filter(|c| c.open).count();
                    assert_eq!(open, MAX_SESSIONS, "Busy below the session bound");
                }
                Err(e) => panic!("connection_opened: {e:?}"),
            },
            op::CLOSE => {
                if let Some(c) = self.conn(input.u8()) {
                    if let Some(id) = self.conns[c].id {
                        self.server.connection_closed(id, now);
                        self.conns[c].open = false;
                    }
                }
            }
            op::FEED => {
                let (k, chunk) = (input.u8(), input.u8());
                let len = usize::from(input.u16());
                let bytes = input.bytes(len);
                if let Some(c) = self.conn(k) {
                    self.feed(c, bytes, chunk);
                }
            }
            op::FEED_MSG => {
                let k = input.u8();
                if let (Some(c), Some(m)) = (self.conn(k), input.arb::<FUp>()) {
                    self.send(c, &m.into());
                }
            }
            op::PROVE => {
                if let Some(c) = self.conn(input.u8()) {
                    self.prove(c);
                }
            }
            op::REPORT_NEXT => {
                let k = input.u8();
                let body = input.arb::<FBody>();
                if let (Some(c), Some(body)) = (self.conn(k), body) {
                    self.report_next(c, body);
                }
            }
            op::ADVANCE => {
                self.now = input.moved(self.now);
                self.server.handle_timeout(self.at()).unwrap();
            }
            op::ENQUEUE => {
                let device = DeviceId(u64::from(input.u8() % 4));
                let kind = kind(input.u8());
                let expires = input.u16();
                let key = input.u8();
                let opts = TaskOptions {
                    expires_at: (expires > 0)
                        .then(|| now + Duration::from_secs(u64::from(expires))),
                    supersede: (key > 0).then_some(SupersedeKey(u64::from(key % 3))),
                };
                if let Ok(id) = self.server.enqueue_task(device, kind, opts, now) {
                    self.tasks.push((id, device));
                    self.owner.insert(id, device);
                }
            }
            op::CANCEL => {
                let k = usize::from(input.u8());
                if let Some(&(id, _)) = self.tasks.get(k % self.tasks.len().max(1)) {
                    let _ = self.server.cancel_task(id, now);
                }
            }
            op::POLICY => {
                let device = DeviceId(u64::from(input.u8() % 4));
                let n = input.u8() % 20;
                let p = policy(0, n, 1, i64::from(n));
                let _ = self.server.assign_policy(device, &p.settings, now);
            }
            op::ENROLL => {
                let device = DeviceId(u64::from(input.u8() % 4));
                self.server.enroll(device, now).unwrap();
                self.retired.remove(&device);
            }
            op::RETIRE => {
                let device = DeviceId(u64::from(input.u8() % 4));
                match self.server.retire(device, now) {
                    Ok(()) => {
                        self.retired.insert(device);
                    }
                    Err(ServerError::UnknownDevice) => {}
                    Err(e) => panic!("retire: {e:?}"),
                }
            }
            op::DROP => {
                if let Some(c) = self.conn(input.u8()) {
                    if let Some(id) = self.conns[c].id {
                        self.server.connection_dropped(id, now).unwrap();
                        self.conns[c].open = false;
                    }
                }
            }
            op::TOKEN_REJECTED => {
                use mdm_sync::server::FleetStore;
                let device = DeviceId(u64::from(input.u8() % 4));
                let held = self.server.store().push_target(device).unwrap();
                if let Some((_, token)) = held {
                    let dropped = self.server.push_token_rejected(device, &token);
                    assert_eq!(dropped, Ok(true), "the token held was not dropped");
                }
            }
            op::RESTART => {
                let blank = Server::new(server_config(), MemoryStore::new(), MASTER, NONCE_SEED);
                let old = core::mem::replace(&mut self.server, blank);
                let store = old.into_store();
                let mut server = Server::new(server_config(), store, MASTER, NONCE_SEED);
                server.recover(now).unwrap();
                self.server = server;
                // Connection ids start again in the new process: the old
                // connections are gone, and their ids may come back.
                for conn in &mut self.conns {
                    conn.open = false;
                    conn.id = None;
                }
                self.by_id.clear();
            }
            _ => unreachable!("tags are taken modulo the count"),
        }
    }

    fn feed(&mut self, c: usize, bytes: &[u8], chunk: u8) {
        let Some(id) = self.conns[c].id else {
            return;
        };
        let open = self.conns[c].open;
        let now = self.at();
        let server = &mut self.server;
        chunked(bytes, chunk, |part| {
            match server.handle_bytes(id, part, now) {
                Ok(()) | Err(ServerError::Peer(_)) => {}
                Err(ServerError::UnknownConnection) => {
                    assert!(!open, "an open connection is unknown to the server")
                }
                Err(e) => panic!("handle_bytes: {e:?}"),
            }
        });
    }

    /// Frames `msg` with the connection's key and feeds it; a `Hello` framed
    /// before the challenge is kept for [`Self::prove`].
    fn send(&mut self, c: usize, msg: &Up) {
        let mut buf = [0u8; MAX_FRAME];
        let conn = &mut self.conns[c];
        let Ok(n) = frame::encode_keyed(msg, &mut buf, conn.key()) else {
            return;
        };
        if let (Up::Hello(h), None) = (msg, conn.nonce) {
            let hash = auth::bind_hello(frame::payload(&buf[..n]));
            conn.hello = Some((h.device, h.generation, hash));
        }
        self.feed(c, &buf[..n], 0);
    }

    fn prove(&mut self, c: usize) {
        let (Some((device, generation, hello)), Some(nonce)) =
            (self.conns[c].hello, self.conns[c].nonce)
        else {
            return;
        };
        let secret = auth::derive_secret(&MASTER, device, generation);
        let mac = auth::proof(&secret, &nonce, &hello);
        self.send(c, &Up::Proof { mac });
    }

    fn report_next(&mut self, c: usize, body: FBody) {
        let Some(last) = self.conns[c].device.and_then(|d| self.record(d)) else {
            return;
        };
        let seq = last.wrapping_add(1);
        self.send(
            c,
            &Up::Report {
                seq,
                body: body.into(),
            },
        );
    }

    fn record(&self, device: DeviceId) -> Option<u32> {
        use mdm_sync::server::FleetStore;
        let rec = self.server.store().device(device).ok().flatten()?;
        Some(rec.last_report_seq)
    }

    /// Drains events and output, checking what each connection is sent.
    fn pump(&mut self) {
        self.events();
        let mut buf = [0u8; 300];
        while let Some((conn, n)) = self.server.poll_transmit(&mut buf) {
            let c = *self
                .by_id
                .get(&conn)
                .expect("output for a connection never opened");
            self.conns[c].pending.extend_from_slice(&buf[..n]);
            self.check_output(c);
            self.events(); // a drained closing session ends here
        }
    }

    fn events(&mut self) {
        while let Some(ev) = self.server.poll_event() {
            match ev {
                ServerEvent::Authenticated { conn, device, .. } => {
                    assert!(!self.retired.contains(&device), "{device:?} retired");
                    let c = self.by_id[&conn];
                    assert!(self.conns[c].open, "a closed connection authenticated");
                    self.conns[c].device = Some(device);
                    self.authenticated += 1;
                }
                ServerEvent::Close { conn } | ServerEvent::SessionEnded { conn, .. } => {
                    if let Some(&c) = self.by_id.get(&conn) {
                        self.conns[c].open = false;
                    }
                }
                _ => {}
            }
        }
    }

    /// Checks the whole frames sent on connection `c` so far, each with the
    /// key in force: 0 up to the `Challenge`, the session key after it.
    fn check_output(&mut self, c: usize) {
        loop {
            let conn = &mut self.conns[c];
            let Some(total) = frame_len(&conn.pending).filter(|n| *n <= conn.pending.len()) else {
                return;
            };
            let f: Vec<u8> = conn.pending.drain(..total).collect();
            let payload = unframe(&f, conn.key());
            let msg = wire::decode::<Down>(payload).expect("server sent an invalid Down");
            self.check_message(c, &msg);
        }
    }

    fn check_message(&mut self, c: usize, msg: &Down) {
        let device = self.conns[c].device;
        match msg {
            Down::Challenge { nonce, .. } => self.conns[c].nonce = Some(*nonce),
            Down::Task(t) => self.assert_own(c, device, t.id),
            Down::Cancel { task } => self.assert_own(c, device, *task),
            Down::Policy(_) | Down::Welcome { .. } | Down::Ack { .. } | Down::SyncEnd => {
                assert!(device.is_some(), "session data before the proof on {c}");
            }
            Down::Error(_) => {}
        }
    }

    fn assert_own(&self, c: usize, device: Option<DeviceId>, task: TaskId) {
        let device = device.expect("a task offered before the proof");
        let owner = self.owner.get(&task).copied();
        assert_eq!(
            owner,
            Some(device),
            "conn {c} was offered task {task:?} of {owner:?}"
        );
    }

    fn check(&self) {
        let open = self.conns.iter().filter(|c| c.open).count();
        assert_eq!(
            self.server.session_count(),
            open,
            "sessions vs open connections"
        );
        assert!(open <= MAX_SESSIONS);
    }
}
