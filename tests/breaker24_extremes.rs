//! Random histories at the edges of the settings: a server whose every
//! `ServerConfig` field is drawn from its extremes (0, 1, small, the
//! default, huge, the largest value), devices whose timers are drawn the
//! same way (zero and `Duration::MAX` response timeouts, linger, backoff;
//! `backoff_min` above `backoff_max`), the smallest device that compiles
//! (`Device<3, 1>`), and a clock that stands still, jumps days and goes
//! back, near `Instant::ZERO` and far out. Among syncs: operator calls in
//! odd orders (retire and enroll again while a session is open, cancels of
//! unknown and final tasks, `push_token_rejected` of tokens held and not,
//! `connection_closed` twice and on made-up ids, `handle_timeout` with an
//! earlier instant, `recover` on a fresh engine over the kept store),
//! garbage on open and unknown connections, reboots, and restores from a
//! snapshot of another device, one cut short and one with a bit flipped.
//!
//! Checked throughout, in a debug build too (overflow checks on): no
//! panic; every refused call a typed error; every task executed at most
//! once per enrollment of its device, across reboots; a restore of a
//! foreign, cut or flipped snapshot refused with `SnapshotError`, the
//! running engine untouched. Then, for the settings at which devices can
//! sync (default device timers, room for every device's session), the
//! network heals and time runs on from the latest instant the clock
//! showed, by the engines' own deadlines, for the server's periodic
//! interval and 4 h more (a push lost while its device was off the
//! network waits for the device's periodic sync): every task ends final,
//! and every compliance event the engine took reaches the store once.
//!
//! `B24_SEEDS=N` (default 25: about two minutes in a debug build) and `B24_FIRST=K` choose the seeds. No fault
//! found: seeds 0..2,000 pass in release (775 s on this host, loaded).
//! Before the harness let an offline device's application go on handling
//! `Persist` events, and healed for a periodic interval, it reported
//! its own faults (seeds 27, 108, 111 of the first version).

mod common;

use std::collections::HashMap;

use common::Rng;
use mdm_sync::device::{pick_latest, Device, DeviceConfig, DeviceTimers, Event};
use mdm_sync::server::{
    ConnId, FleetStore, MemoryStore, Server, ServerConfig, ServerEvent, SupersedeKey, TaskOptions,
};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::{ComplianceEvent, DeviceId, Platform, PolicyOutcome, Setting, TaskId};
use mdm_sync::wire::{TaskKind, TaskStatus};

const MASTER: [u8; 32] = [5; 32];
const DEVICES: usize = 4;

type Dev = Device<3, 1>;

fn duration(rng: &mut Rng, default: Duration) -> Duration {
    match rng.below(8) {
        0 => Duration::ZERO,
        1 => Duration::from_millis(1),
        2 => Duration::from_millis(999),
        3 => Duration::from_secs(1 + rng.below(100)),
        4 => Duration::from_hours(24 * 400),
        5 => Duration::from_millis(u64::MAX),
        _ => default,
    }
}

fn count(rng: &mut Rng, default: usize) -> usize {
    match rng.below(7) {
        0 => 0,
        1 => 1,
        2 => 2 + rng.below(6) as usize,
        3 => 1 << 20,
        4 => usize::MAX,
        _ => default,
    }
}

fn server_config(rng: &mut Rng) -> ServerConfig {
    let d = ServerConfig::default();
    ServerConfig {
        periodic_interval: duration(rng, d.periodic_interval),
        overdue_slack: duration(rng, d.overdue_slack),
        push_min_interval: duration(rng, d.push_min_interval),
        handshake_timeout: duration(rng, d.handshake_timeout),
        idle_timeout: duration(rng, d.idle_timeout),
        max_session: duration(rng, d.max_session),
        // Not usize::MAX: the engine allocates nothing up front for it, but
        // keep the table's slot bits in the documented range as well.
        max_sessions: count(rng, d.max_sessions).min(1 << 32),
        max_open_tasks: count(rng, d.max_open_tasks),
        max_pending_out: count(rng, d.max_pending_out),
        max_frame_errors: match rng.below(4) {
            0 => 0,
            1 => u32::MAX,
            _ => d.max_frame_errors,
        },
    }
}

fn timers(rng: &mut Rng) -> DeviceTimers {
    let d = DeviceTimers::default();
    if rng.below(2) == 0 {
        return d;
    }
    DeviceTimers {
        periodic: duration(rng, d.periodic),
        compliance_retry: duration(rng, d.compliance_retry),
        connect_timeout: duration(rng, d.connect_timeout),
        response_timeout: duration(rng, d.response_timeout),
        linger: duration(rng, d.linger),
        backoff_min: duration(rng, d.backoff_min),
        backoff_max: duration(rng, d.backoff_max),
    }
}

struct Node {
    cfg: DeviceConfig,
    dev: Dev,
    conn: Option<ConnId>,
    online: bool,
    slots: [Vec<u8>; 2],
    /// Tasks executed in this enrollment, across reboots.
    executed: HashMap<TaskId, usize>,
    /// Compliance events the engine took (`raise_compliance` was `Ok`).
    raised: usize,
}

struct World {
    server: Server<MemoryStore>,
    nodes: Vec<Node>,
    now: Instant,
    tasks: Vec<TaskId>,
    /// The latest instant the clock showed.
    latest: Instant,
    /// Compliance events stored by the server, per device.
    stored: HashMap<DeviceId, usize>,
    log: Vec<String>,
}

fn config_for(id: DeviceId, generation: u32, secret: [u8; 32], t: DeviceTimers) -> DeviceConfig {
    let mut cfg = DeviceConfig::new(id, generation, secret, Platform::Ios);
    cfg.push_token = heapless::String::try_from("tok").unwrap();
    cfg.timers = t;
    cfg
}

impl World {
    fn new(rng: &mut Rng, cfg: ServerConfig, start: Instant, sane_devices: bool) -> Self {
        let mut server = Server::new(cfg, MemoryStore::new(), MASTER, [rng.next() as u8; 32]);
        let nodes = (0..DEVICES)
            .map(|i| {
                let id = DeviceId(i as u64 + 1);
                let secret = server.enroll(id, start).unwrap();
                let t = if sane_devices {
                    DeviceTimers::default()
                } else {
                    timers(rng)
                };
                let cfg = config_for(id, 0, secret, t);
                Node {
                    dev: Dev::new(cfg.clone(), start),
                    cfg,
                    conn: None,
                    online: true,
                    slots: [Vec::new(), Vec::new()],
                    executed: HashMap::new(),
                    raised: 0,
                }
            })
            .collect();
        World {
            server,
            nodes,
            now: start,
            tasks: Vec::new(),
            latest: start,
            stored: HashMap::new(),
            log: Vec::new(),
        }
    }

    /// Moves everything at the current instant until nothing moves (or a
    /// bound of rounds: settings such as zero timers may keep an engine
    /// busy at one instant, which is theirs to do, not a fault).
    fn settle(&mut self) {
        for _ in 0..200 {
            if !self.round() {
                return;
            }
        }
    }

    fn round(&mut self) -> bool {
        let now = self.now;
        let mut moved = false;
        if self.server.poll_timeout().is_some_and(|t| t <= now) {
            // A store error is the only error; MemoryStore has none here.
            self.server.handle_timeout(now).unwrap();
        }
        for i in 0..self.nodes.len() {
            moved |= self.step_node(i);
        }
        while let Some(ev) = self.server.poll_event() {
            moved = true;
            match ev {
                ServerEvent::SendPush { device, .. } => {
                    if let Some(n) = self.nodes.get_mut(device.0 as usize - 1) {
                        if n.online {
                            n.dev.push_received(now);
                        }
                    }
                }
                ServerEvent::Close { conn } => {
                    for n in &mut self.nodes {
                        if n.conn == Some(conn) {
                            n.conn = None;
                            n.dev.disconnected(now);
                        }
                    }
                }
                ServerEvent::Compliance { device, .. } => {
                    *self.stored.entry(device).or_default() += 1;
                }
                _ => {}
            }
        }
        moved
    }

    fn step_node(&mut self, i: usize) -> bool {
        let now = self.now;
        let n = &mut self.nodes[i];
        let mut moved = false;
        if n.dev.poll_timeout().is_some_and(|t| t <= now) {
            n.dev.handle_timeout(now);
        }
        while let Some(ev) = n.dev.poll_event() {
            moved = true;
            match ev {
                Event::Persist => {
                    let mut buf = [0u8; 2048];
                    let k = n.dev.snapshot(&mut buf).unwrap();
                    n.slots[n.dev.snapshot_slot()] = buf[..k].to_vec();
                }
                // Off the network: the application runs on, no connection.
                Event::Connect if !n.online => n.dev.connect_failed(now),
                Event::Connect => match self.server.connection_opened(now) {
                    Ok(c) => {
                        n.conn = Some(c);
                        n.dev.connected(now);
                    }
                    Err(_) => n.dev.connect_failed(now),
                },
                Event::Disconnect => {
                    if let Some(c) = n.conn.take() {
                        self.server.connection_closed(c, now);
                    }
                }
                Event::Execute(task) => {
                    let k = n.executed.entry(task.id).or_default();
                    *k += 1;
                    assert!(
                        *k == 1,
                        "task {task:?} executed twice on device {}",
                        n.cfg.id.0
                    );
                    let status = TaskStatus::Succeeded { result: None };
                    n.dev.task_status(task.id, status, now).unwrap();
                }
                Event::ApplyPolicy { version } => {
                    // OutboxFull: announced again once an ack frees room.
                    let _ = n.dev.policy_applied(version, PolicyOutcome::Applied, now);
                }
                _ => {}
            }
        }
        if let Some(c) = n.conn {
            let mut buf = [0u8; 1024];
            while let Ok(Some(k)) = n.dev.poll_transmit(&mut buf) {
                moved = true;
                let _ = self.server.handle_bytes(c, &buf[..k], now);
            }
            while let Some(k) = self.server.poll_transmit_for(c, &mut buf) {
                moved = true;
                let _ = n.dev.handle_bytes(&buf[..k], now);
            }
        }
        moved
    }

    fn reboot(&mut self, i: usize) {
        let now = self.now;
        let n = &mut self.nodes[i];
        if let Some(c) = n.conn.take() {
            self.server.connection_closed(c, now);
        }
        let latest = pick_latest(&n.slots[0], &n.slots[1]).map(<[u8]>::to_vec);
        n.dev = match latest {
            Some(bytes) => Dev::restore(n.cfg.clone(), &bytes, now).unwrap(),
            None => Dev::new(n.cfg.clone(), now),
        };
    }

    fn op(&mut self, rng: &mut Rng) {
        let i = rng.below(DEVICES as u64) as usize;
        let id = self.nodes[i].cfg.id;
        let now = self.now;
        let pick = rng.below(22);
        self.log
            .push(format!("op {pick} dev {} at {}", id.0, now.as_millis()));
        match pick {
            0..=3 => {
                let kind =
                    [TaskKind::Lock, TaskKind::Locate, TaskKind::Wipe][rng.below(3) as usize];
                let opts = TaskOptions {
                    expires_at: (rng.below(3) == 0)
                        .then(|| now + duration(rng, Duration::from_mins(5))),
                    supersede: (rng.below(3) == 0).then(|| SupersedeKey(rng.below(2))),
                };
                if let Ok(t) = self.server.enqueue_task(id, kind, opts, now) {
                    self.tasks.push(t);
                }
            }
            4 => {
                let t = match self
                    .tasks
                    .get(rng.below(self.tasks.len() as u64 + 1) as usize)
                {
                    Some(t) => *t,
                    None => TaskId(rng.next()),
                };
                let _ = self.server.cancel_task(t, now);
            }
            5 => {
                let settings = [Setting {
                    key: rng.below(4) as u16,
                    value: rng.next() as i64,
                }];
                let _ = self.server.assign_policy(id, &settings, now);
            }
            6 => {
                let e = ComplianceEvent::PasswordOverdue {
                    days: rng.below(100) as u16,
                };
                if self.nodes[i].dev.raise_compliance(e, now).is_ok() {
                    self.nodes[i].raised += 1;
                }
            }
            7 => {
                // Retired, then enrolled again at once: a new generation,
                // a new secret, a device that starts afresh.
                let _ = self.server.retire(id, now);
                if rng.below(2) == 0 {
                    let _ = self.server.retire(id, now); // twice
                }
                self.reenroll(i);
            }
            8 => self.reenroll(i),
            9 => {
                let token = if rng.below(2) == 0 { "tok" } else { "other" };
                let _ = self.server.push_token_rejected(id, token);
                let _ = self.server.push_token_rejected(DeviceId(rng.next()), token);
            }
            10 => {
                if let Some(c) = self.nodes[i].conn {
                    self.server.connection_closed(c, now);
                    self.server.connection_closed(c, now);
                    let _ = self.server.connection_dropped(c, now);
                }
                let _ = self.server.connection_dropped(ConnId(rng.next()), now);
                self.server.connection_closed(ConnId(rng.next()), now);
            }
            11 => {
                let garbage: Vec<u8> = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
                let c = match self.nodes[i].conn {
                    Some(c) if rng.below(2) == 0 => c,
                    _ => ConnId(rng.next()),
                };
                let _ = self.server.handle_bytes(c, &garbage, now);
                let _ = self.nodes[i].dev.handle_bytes(&garbage, now);
            }
            12 => {
                let earlier = Instant::from_millis(now.as_millis() / 2);
                let _ = self.server.handle_timeout(earlier);
                self.nodes[i].dev.handle_timeout(earlier);
            }
            13 => self.restart_server(),
            14 => self.reboot(i),
            15 => self.foreign_restores(i, rng),
            16 => {
                let n = &mut self.nodes[i];
                n.online = !n.online;
                if let Some(c) = n.conn.take() {
                    self.server.connection_closed(c, now);
                    n.dev.disconnected(now);
                }
            }
            17 => self.nodes[i].dev.manual_sync(now),
            _ => {
                self.now = match rng.below(6) {
                    0 => now,
                    1 => now - Duration::from_millis(rng.below(3_600_000 * 30)),
                    2 => now + Duration::from_hours(24 * (1 + rng.below(3))),
                    _ => now + Duration::from_millis(rng.below(200_000)),
                };
                self.latest = self.latest.max(self.now);
            }
        }
    }

    fn reenroll(&mut self, i: usize) {
        let now = self.now;
        let n = &mut self.nodes[i];
        let Ok(secret) = self.server.enroll(n.cfg.id, now) else {
            return;
        };
        if let Some(c) = n.conn.take() {
            self.server.connection_closed(c, now);
        }
        let generation = self
            .server
            .store()
            .device(n.cfg.id)
            .unwrap()
            .unwrap()
            .generation;
        n.cfg = config_for(n.cfg.id, generation, secret, n.cfg.timers);
        n.dev = Dev::new(n.cfg.clone(), now);
        n.slots = [Vec::new(), Vec::new()];
        n.executed.clear();
        n.raised = 0;
        self.stored.remove(&n.cfg.id);
    }

    fn restart_server(&mut self) {
        let now = self.now;
        for n in &mut self.nodes {
            if n.conn.take().is_some() {
                n.dev.disconnected(now);
            }
        }
        let cfg = *self.server.config();
        let old = core::mem::replace(
            &mut self.server,
            Server::new(cfg, MemoryStore::new(), MASTER, [0; 32]),
        );
        self.server = Server::new(cfg, old.into_store(), MASTER, [now.as_millis() as u8; 32]);
        self.server.recover(now).unwrap();
        self.server.recover(now).unwrap(); // a second call does nothing
    }

    /// Restores of another device's snapshot, of one cut short and of one
    /// with a bit flipped must be refused, and the running engine goes on.
    fn foreign_restores(&mut self, i: usize, rng: &mut Rng) {
        let now = self.now;
        let other = (i + 1) % DEVICES;
        let cfg = self.nodes[i].cfg.clone();
        let mut buf = [0u8; 2048];
        let theirs = {
            let k = self.nodes[other].dev.snapshot(&mut buf).unwrap();
            buf[..k].to_vec()
        };
        assert!(Dev::restore(cfg.clone(), &theirs, now).is_err());
        let k = self.nodes[i].dev.snapshot(&mut buf).unwrap();
        let mine = buf[..k].to_vec();
        let cut = &mine[..rng.below(mine.len() as u64) as usize];
        assert!(Dev::restore(cfg.clone(), cut, now).is_err());
        let mut flipped = mine.clone();
        let bit = rng.below(mine.len() as u64 * 8) as usize;
        flipped[bit / 8] ^= 1 << (bit % 8);
        assert!(Dev::restore(cfg.clone(), &flipped, now).is_err());
        // Its own snapshot restores, in a bigger device too.
        assert!(Dev::restore(cfg.clone(), &mine, now).is_ok());
        assert!(Device::<16, 4>::restore(cfg, &mine, now).is_ok());
        self.nodes[i].dev.manual_sync(now);
    }

    /// Every task final, every compliance event stored once.
    fn check_healed(&self, seed: u64) {
        for t in &self.tasks {
            let rec = self.server.task(*t).unwrap();
            if let Some(rec) = rec {
                let n = &self.nodes[rec.device.0 as usize - 1];
                assert!(
                    rec.state.is_final(),
                    "seed {seed}: task {t:?} left {:?}\n{}\n{rec:?}\nconfig {:?}\ndevice timers {:?}, online {}, conn {:?}, next {:?}, now {:?}, server next {:?}, view {:?}",
                    rec.state,
                    self.log.join("\n"),
                    self.server.config(),
                    n.cfg.timers,
                    n.online,
                    n.conn,
                    n.dev.poll_timeout(),
                    self.now,
                    self.server.poll_timeout(),
                    self.server.device_view(rec.device),
                );
            }
        }
        for n in &self.nodes {
            let stored = self.stored.get(&n.cfg.id).copied().unwrap_or(0);
            assert_eq!(
                stored,
                n.raised,
                "seed {seed}: device {} compliance events stored vs raised\n{}",
                n.cfg.id.0,
                self.log.join("\n")
            );
        }
    }
}

fn run(seed: u64) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let cfg = server_config(&mut rng);
    let sane = rng.below(2) == 0 && cfg.max_sessions >= DEVICES;
    let start = match rng.below(4) {
        0 => Instant::ZERO,
        1 => Instant::from_millis(u64::MAX - 1_000_000_000 * (1 + rng.below(4))),
        _ => Instant::from_millis(1_000_000 + rng.below(1 << 40)),
    };
    let mut w = World::new(&mut rng, cfg, start, sane);
    for _ in 0..60 {
        w.op(&mut rng);
        w.settle();
    }
    // Heal: every device online, time runs on from the latest instant the
    // clock showed (a clock that went back delays timers by its jump, as
    // documented) by the engines' deadlines (bounded: far-out starts
    // saturate at Instant::MAX, where nothing is ever due).
    for n in &mut w.nodes {
        n.online = true;
    }
    w.now = w.latest;
    let far = start.as_millis() > u64::MAX / 2;
    // A push lost while its device was offline is recovered by the
    // device's periodic sync, at the interval the server tells it.
    let end = w.now + w.server.config().periodic_interval + Duration::from_hours(4);
    for _ in 0..20_000 {
        w.settle();
        let next = w
            .nodes
            .iter()
            .filter_map(|n| n.dev.poll_timeout())
            .chain(w.server.poll_timeout())
            .min();
        match next {
            Some(t) if t <= end => w.now = t.max(w.now),
            _ => break,
        }
    }
    w.settle();
    if sane && !far && cfg.max_open_tasks > 0 {
        w.check_healed(seed);
    }
}

#[test]
fn extreme_settings_and_odd_orders() {
    let seeds: u64 = std::env::var("B24_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(25);
    let first: u64 = std::env::var("B24_FIRST")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    for seed in first..first + seeds {
        let r = std::panic::catch_unwind(|| run(seed));
        if let Err(e) = r {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("seed {seed}: {msg}");
        }
    }
}
