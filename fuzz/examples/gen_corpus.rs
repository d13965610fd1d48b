//! Writes seed corpora for every fuzz target from real encoded sessions.
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example gen_corpus [-- OUT_DIR]
//! ```
//!
//! A device and a server (the server harness's keys) sync over memory through
//! a scripted day: tasks of every kind, a policy, a compliance event, progress,
//! a "not now", a cancel, supersede keys, a reboot with a task running. Every
//! connection's bytes in both directions and every snapshot are recorded and
//! written as inputs in each harness's format (`OUT_DIR`, default
//! `fuzz/corpus`, one folder per target). Each target's folder is emptied
//! first, so that no seed of an earlier wire format or of a longer recording
//! stays behind. The output is deterministic.

use std::path::{Path, PathBuf};

use mdm_sync::device::{pick_latest, Device, Event};
use mdm_sync::server::{ConnId, MemoryStore, Server, ServerEvent, SupersedeKey, TaskOptions};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::{
    self, frame, ComplianceEvent, Down, PolicyOutcome, Setting, SettingFailure, TaskKind,
    TaskResult, TaskStatus, MAX_FRAME,
};
use mdm_sync_fuzz::device::{config, DEVICE};
use mdm_sync_fuzz::frames::{frame_len, unframe};
use mdm_sync_fuzz::script::{device as dop, server as sop, Script};
use mdm_sync_fuzz::server::new_server;

/// One connection's bytes, each direction in order.
#[derive(Default)]
struct Recorded {
    up: Vec<u8>,
    down: Vec<u8>,
}

impl Recorded {
    /// The session key, from the nonce of the server's first frame (the
    /// `Challenge`); 0 if there was none.
    fn key(&self) -> u32 {
        let first = frame_len(&self.down).map(|n| unframe(&self.down[..n], 0));
        match first.map(wire::decode::<Down>) {
            Some(Ok(Down::Challenge { nonce, .. })) => frame::session_key(&nonce),
            _ => 0,
        }
    }

    /// The server's bytes with its `Challenge` echoing `attempt` instead: the
    /// attempt the harness's device sends on that connection, which differs
    /// from the recording device's after a reboot. The frames after it keep
    /// their key (it comes from the nonce, which stays).
    fn down_for(&self, attempt: u64) -> Vec<u8> {
        let Some(n) = frame_len(&self.down) else {
            return self.down.clone();
        };
        let Ok(Down::Challenge { version, nonce, .. }) =
            wire::decode::<Down>(unframe(&self.down[..n], 0))
        else {
            return self.down.clone();
        };
        let challenge = Down::Challenge {
            version,
            attempt,
            nonce,
        };
        let mut buf = [0u8; MAX_FRAME];
        let len = frame::encode(&challenge, &mut buf).expect("a challenge fits");
        [&buf[..len], &self.down[n..]].concat()
    }

    /// The payloads the server sent, the first frame checked with key 0, the
    /// others with `key`.
    fn down_payloads(&self, key: u32) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut rest = &self.down[..];
        while let Some(n) = frame_len(rest) {
            let k = if out.is_empty() { 0 } else { key };
            out.push(unframe(&rest[..n], k).to_vec());
            rest = &rest[n..];
        }
        out
    }
}

/// A `frame_decoder` input: mode, key, chunk plan, then `stream`.
fn decoder_input(mode: u8, key: u32, plan: &[u8], stream: &[u8]) -> Vec<u8> {
    let mut s = Script::starting_with(&[mode]);
    s.u32(key).u8(plan.len() as u8);
    s.0.extend_from_slice(plan);
    s.0.extend_from_slice(stream);
    s.0
}

struct World {
    now: Instant,
    server: Server<MemoryStore>,
    device: Device,
    slots: [Vec<u8>; 2],
    snapshots: Vec<Vec<u8>>,
    conns: Vec<Recorded>,
    /// Server operator calls, to replay before the sessions in server inputs.
    operator: Script,
    hold: bool,
    held: Vec<mdm_sync::wire::TaskId>,
}

impl World {
    fn new() -> Self {
        let now = Instant::from_millis(1_000);
        let server = new_server(now);
        let secret = server.device_secret(DEVICE).expect("enrolled");
        let mut device = Device::new(config(secret), now);
        device.handle_timeout(now);
        Self {
            now,
            server,
            device,
            slots: [Vec::new(), Vec::new()],
            snapshots: Vec::new(),
            conns: Vec::new(),
            operator: Script::default(),
            hold: false,
            held: Vec::new(),
        }
    }

    fn enqueue(&mut self, kind: TaskKind, expires_s: u16, key: u8) {
        let opts = TaskOptions {
            expires_at: (expires_s > 0)
                .then(|| self.now + Duration::from_secs(u64::from(expires_s))),
            supersede: (key > 0).then_some(SupersedeKey(u64::from(key % 3))),
        };
        self.server
            .enqueue_task(DEVICE, kind, opts, self.now)
            .expect("enqueue");
        let k = TaskKind::ALL.iter().position(|x| *x == kind).unwrap() as u8;
        self.operator
            .tag(sop::ENQUEUE)
            .u8(DEVICE.0 as u8)
            .u8(k)
            .u16(expires_s)
            .u8(key);
    }

    fn advance(&mut self, d: Duration) {
        self.now = self.now + d;
        self.device.handle_timeout(self.now);
        self.server.handle_timeout(self.now).unwrap();
    }

    /// Runs the device's wish to sync, if any, to the end.
    fn sync(&mut self) {
        let mut conn: Option<ConnId> = None;
        let mut buf = [0u8; MAX_FRAME];
        for _ in 0..500 {
            self.device.handle_timeout(self.now);
            let mut quiet = true;
            while let Some(ev) = self.device.poll_event() {
                quiet = false;
                match ev {
                    Event::Persist => {
                        let mut snap = vec![0u8; Device::<16, 4>::SNAPSHOT_MAX];
                        let n = self.device.snapshot(&mut snap).unwrap();
                        snap.truncate(n);
                        self.slots[self.device.snapshot_slot()] = snap.clone();
                        self.snapshots.push(snap);
                    }
                    Event::Connect => {
                        conn = Some(self.server.connection_opened(self.now).unwrap());
                        self.conns.push(Recorded::default());
                        self.device.connected(self.now);
                    }
                    Event::Disconnect => {
                        if let Some(c) = conn.take() {
                            self.server.connection_closed(c, self.now);
                        }
                    }
                    Event::Execute(t) => self.execute(t),
                    Event::ApplyPolicy { version } => {
                        let mut failed = heapless::Vec::new();
                        let _ = failed.push(SettingFailure {
                            key: 2,
                            reason: 300,
                        });
                        let outcome = PolicyOutcome::Partial { failed };
                        self.device
                            .policy_applied(version, outcome, self.now)
                            .unwrap();
                    }
                    _ => {}
                }
            }
            let Some(c) = conn else {
                if quiet {
                    return;
                }
                continue;
            };
            let rec = self.conns.last_mut().unwrap();
            while let Some(n) = self.device.poll_transmit(&mut buf).unwrap() {
                quiet = false;
                rec.up.extend_from_slice(&buf[..n]);
                let _ = self.server.handle_bytes(c, &buf[..n], self.now);
            }
            while let Some(n) = self.server.poll_transmit_for(c, &mut buf) {
                quiet = false;
                rec.down.extend_from_slice(&buf[..n]);
                let _ = self.device.handle_bytes(&buf[..n], self.now);
            }
            while let Some(ev) = self.server.poll_event() {
                if let ServerEvent::Close { .. } = ev {
                    self.device.disconnected(self.now);
                }
            }
            if quiet {
                self.now = self.now + Duration::from_secs(1);
            }
        }
    }

    fn execute(&mut self, t: mdm_sync::wire::Task) {
        let status = match t.kind {
            _ if self.hold => {
                self.held.push(t.id);
                return;
            }
            TaskKind::Scan => {
                self.device.task_progress(t.id, Some(40)).unwrap();
                TaskStatus::Succeeded {
                    result: Some(TaskResult::Scan { threats: 1 }),
                }
            }
            TaskKind::Locate => TaskStatus::Succeeded {
                result: Some(TaskResult::Location {
                    lat_e7: 473_769_000,
                    lon_e7: 85_417_000,
                    accuracy_m: 20,
                }),
            },
            TaskKind::Wipe => TaskStatus::Deferred {
                retry_after_s: Some(600),
            },
            TaskKind::Unlock => TaskStatus::Failed { reason: 300 },
            TaskKind::Lock => TaskStatus::Succeeded { result: None },
        };
        self.device.task_status(t.id, status, self.now).unwrap();
    }

    fn reboot(&mut self) {
        let secret = self.server.device_secret(DEVICE).unwrap();
        let bytes = pick_latest(&self.slots[0], &self.slots[1]).expect("a snapshot");
        self.device = Device::restore(config(secret), bytes, self.now).unwrap();
        self.held.clear();
    }
}

fn scripted_day() -> World {
    let mut w = World::new();
    w.sync(); // boot sync, nothing pending
    w.enqueue(TaskKind::Lock, 0, 0);
    w.enqueue(TaskKind::Scan, 0, 0);
    w.enqueue(TaskKind::Locate, 3_600, 0);
    let settings = [Setting { key: 1, value: 5 }, Setting { key: 2, value: -7 }];
    w.server.assign_policy(DEVICE, &settings, w.now).unwrap();
    w.operator.tag(sop::POLICY).u8(DEVICE.0 as u8).u8(2);
    w.device
        .raise_compliance(ComplianceEvent::UsbDebugging { enabled: true }, w.now)
        .unwrap();
    w.sync();
    w.advance(Duration::from_hours(3));
    w.sync(); // periodic, nothing pending
    w.enqueue(TaskKind::Wipe, 0, 0); // "not now"
    w.enqueue(TaskKind::Unlock, 0, 1);
    w.enqueue(TaskKind::Unlock, 0, 1); // supersedes the one before
    w.device.push_received(w.now);
    w.sync();
    w.hold = true;
    w.enqueue(TaskKind::Locate, 0, 0);
    w.device.manual_sync(w.now);
    w.sync();
    w.reboot(); // the held Locate is reported as interrupted
    w.hold = false;
    w.sync();
    w.advance(Duration::from_mins(11));
    w.sync(); // the "not now" hint: the Wipe again, deferred again
    w
}

/// `out/target`, created, and emptied of the files an earlier run wrote.
fn fresh(out: &Path, target: &str) -> PathBuf {
    let dir = out.join(target);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::remove_file(&path).unwrap();
        }
    }
    dir
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    let out = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    let w = scripted_day();
    let busy: Vec<&Recorded> = w.conns.iter().filter(|c| !c.down.is_empty()).collect();

    // frame_decoder: whole streams in raw mode, in a few chunkings, keyed
    // as in the session (key 0 for the first frame, the session key after
    // it: mode bit 1); and the server's payloads as segments, each after a
    // copy framed with the other key, which must be dropped.
    let dir = fresh(&out, "frame_decoder");
    for (k, c) in busy.iter().enumerate() {
        let key = c.key();
        write(
            &dir,
            &format!("down-{k}"),
            &decoder_input(2, key, &[], &c.down),
        );
        write(
            &dir,
            &format!("up-{k}-bytewise"),
            &decoder_input(2, key, &[1], &c.up),
        );
        let mut noisy = b"\x00\xA5garbage\x5A".to_vec();
        noisy.extend_from_slice(&c.up);
        noisy.extend_from_slice(&[0xA5, 0x5A, 0xFF, 0x7F]); // oversized length
        noisy.extend_from_slice(&c.down);
        write(
            &dir,
            &format!("mixed-{k}"),
            &decoder_input(2, key, &[7, 64, 3], &noisy),
        );
        let mut segments = Script::default();
        for p in c.down_payloads(key) {
            segments.tag(3).blob(&p).tag(0).blob(&p);
        }
        segments.tag(1).blob(b"garbage");
        write(
            &dir,
            &format!("segments-{k}"),
            &decoder_input(3, key, &[5], &segments.0),
        );
    }

    // device: the server's side of every session, fed in various chunkings,
    // each challenge echoing the attempt of the harness's new device: its
    // boot snapshot is number 1, and it connects once per session fed.
    let dir = fresh(&out, "device");
    let attempt = |k: usize| (1u64 << 32) + k as u64 + 1;
    let mut all = Script::starting_with(&[0]);
    for (k, c) in busy.iter().enumerate() {
        let mut one = Script::starting_with(&[(k % 2) as u8]);
        one.tag(dop::FEED)
            .u8([0, 1, 5, 13][k % 4])
            .blob(&c.down_for(attempt(0)));
        write(&dir, &format!("session-{k}"), &one.0);
        if k > 0 {
            all.tag(dop::TRIGGER).u8(1);
        }
        all.tag(dop::FEED).u8(0).blob(&c.down_for(attempt(k)));
        all.tag(dop::ADVANCE).u32(60_000).u8(0);
    }
    all.tag(dop::CRASH_ON_WRITE).u16(7).tag(dop::TRIGGER).u8(0);
    all.tag(dop::REBOOT).tag(dop::TO_DEADLINE);
    write(&dir, "day", &all.0);

    // server: the operator's calls, then every session's device bytes, in
    // three chunkings (the proofs hold for these nonces, so in this order).
    let dir = fresh(&out, "server");
    for (name, chunk) in [("day", 0u8), ("day-chunked", 7), ("day-bytewise", 1)] {
        let mut day = w.operator.clone();
        for (k, c) in w.conns.iter().enumerate() {
            day.tag(sop::OPEN);
            day.tag(sop::FEED).u8(k as u8).u8(chunk).blob(&c.up);
            day.tag(sop::CLOSE).u8(k as u8);
            if k == 1 {
                day.tag(sop::ADVANCE).u32(3 * 3_600_000).u8(0);
            }
        }
        write(&dir, name, &day.0);
    }

    // snapshot_restore: every distinct snapshot, and pairs as two slots.
    let dir = fresh(&out, "snapshot_restore");
    let mut snaps = w.snapshots.clone();
    snaps.dedup();
    for (k, s) in snaps.iter().enumerate().step_by(2) {
        write(&dir, &format!("snapshot-{k}"), &[&[0u8, 0][..], s].concat());
    }
    for (k, pair) in snaps.windows(2).enumerate().step_by(3) {
        let split = pair[0].len().min(255) as u8;
        let input = [&[2u8, split][..], &pair[0], &pair[1]].concat();
        write(&dir, &format!("slots-{k}"), &input);
    }
    println!(
        "{} connections, {} snapshots written to {}",
        w.conns.len(),
        snaps.len(),
        out.display()
    );
}
