//! The server's public calls in any order, with devices syncing in memory:
//! connections closed twice and dropped by the application in the middle of
//! a session, stale connection ids given to every call that takes one,
//! garbage under an open id, devices retired and enrolled again (a retired
//! one back, an enrolled one in a new generation) while their session is
//! open, cancels of tasks the device holds, `prune_finished` (up to
//! `Instant::MAX`) while sessions are open, restarts over the kept store
//! with `recover`, the clock jumping hours ahead or a few minutes back,
//! devices rebooting, and held tasks finished late.
//!
//! After the network heals and time runs on, for each seed: no call
//! panicked; every task ran at most once over every device and generation;
//! every task of an enrolled device ended final, and one its device ran to
//! success (and did not lose to a reboot) ended `Succeeded` (a report
//! acknowledged is never lost); every compliance event of a device that
//! kept its enrollment was stored exactly once.

mod common;

use std::collections::{HashMap, HashSet};

use common::{Behaviour, Pair, Rng, SimDevice};
use mdm_sync::device::DeviceConfig;
use mdm_sync::server::{ConnId, TaskState};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::{ComplianceEvent, DeviceId, Platform, TaskId, TaskKind};

const DEVICES: usize = 4;

struct World {
    pair: Pair,
    rng: Rng,
    /// Every task queued, with its device.
    tasks: Vec<(TaskId, DeviceId)>,
    /// Executions of earlier incarnations (before a re-enrollment).
    executed_before: Vec<TaskId>,
    /// Tasks a reboot took from the application while they ran.
    lost: HashSet<TaskId>,
    /// Devices enrolled now.
    enrolled: Vec<bool>,
    /// Devices whose enrollment changed (retired or enrolled again).
    churned: Vec<bool>,
    /// Compliance categories raised per device.
    raised: Vec<Vec<u16>>,
    /// Connection ids seen, open or closed.
    conns: Vec<ConnId>,
}

impl World {
    fn new(seed: u64) -> Self {
        Self {
            pair: Pair::new(DEVICES),
            rng: Rng(seed | 1),
            tasks: Vec::new(),
            executed_before: Vec::new(),
            lost: HashSet::new(),
            enrolled: vec![true; DEVICES],
            churned: vec![false; DEVICES],
            raised: vec![Vec::new(); DEVICES],
            conns: Vec::new(),
        }
    }

    fn note_conns(&mut self) {
        for d in &self.pair.devices {
            if let Some(c) = d.conn {
                if !self.conns.contains(&c) {
                    self.conns.push(c);
                }
            }
        }
    }

    fn any_conn(&mut self) -> ConnId {
        let n = self.conns.len() as u64;
        match n {
            0 => ConnId(self.rng.next()),
            _ => self.conns[self.rng.below(n) as usize],
        }
    }

    fn step(&mut self) {
        let i = self.rng.below(DEVICES as u64) as usize;
        let id = self.pair.id(i);
        let now = self.pair.now;
        let op = self.rng.below(20);
        if std::env::var_os("B20_TRACE").is_some() {
            let d = &self.pair.devices[i];
            eprintln!(
                "{:>10} op {op:>2} dev {i} conn {:?} beh {:?}",
                now.as_millis(),
                d.conn,
                d.behaviour
            );
        }
        match op {
            0..=2 => {
                let kind = [TaskKind::Lock, TaskKind::Scan, TaskKind::Locate][i % 3];
                let server = &mut self.pair.server;
                if let Ok(t) = server.enqueue_task(id, kind, Default::default(), now) {
                    self.tasks.push((t, id));
                }
            }
            3 => {
                if !self.tasks.is_empty() {
                    let k = self.rng.below(self.tasks.len() as u64) as usize;
                    let _ = self.pair.server.cancel_task(self.tasks[k].0, now);
                }
            }
            4 => {
                // The server side of a device's connection ends (the
                // application closed or dropped it), then the same id is
                // given to every call again.
                if let Some(conn) = self.pair.devices[i].conn.take() {
                    if self.rng.below(2) == 0 {
                        self.pair.server.connection_closed(conn, now);
                    } else {
                        let _ = self.pair.server.connection_dropped(conn, now);
                    }
                    self.pair.devices[i].dev.disconnected(now);
                    self.pair.server.connection_closed(conn, now);
                    let _ = self.pair.server.connection_dropped(conn, now);
                    let _ = self.pair.server.handle_bytes(conn, b"\x00late", now);
                    let mut buf = [0u8; 64];
                    let _ = self.pair.server.poll_transmit_for(conn, &mut buf);
                }
            }
            5 => {
                // Stale or live ids, at random, with garbage or nothing.
                let conn = self.any_conn();
                match self.rng.below(3) {
                    0 => self.pair.server.connection_closed(conn, now),
                    1 => {
                        let _ = self.pair.server.connection_dropped(conn, now);
                    }
                    _ => {
                        let _ = self.pair.server.handle_bytes(conn, &[0xA5; 7], now);
                    }
                }
                // A live id closed so: its device learns it at its next
                // write or its timeout, as over a real transport.
                for d in &mut self.pair.devices {
                    if d.conn == Some(conn) && self.rng.below(2) == 0 {
                        d.conn = None;
                        d.dev.disconnected(now);
                    }
                }
            }
            6 => {
                let before = match self.rng.below(3) {
                    0 => Instant::MAX,
                    _ => now,
                };
                self.pair.server.store_mut().prune_finished(before);
            }
            7 => {
                if self.enrolled[i] && self.pair.server.retire(id, now).is_ok() {
                    self.enrolled[i] = false;
                    self.churned[i] = true;
                }
            }
            8 => {
                // Enrolled again: a new generation (or back from retirement),
                // provisioned on a factory-fresh device.
                if let Ok(secret) = self.pair.server.enroll(id, now) {
                    let d = &mut self.pair.devices[i];
                    self.executed_before.extend(d.executed.iter().map(|t| t.id));
                    if let Some(conn) = d.conn.take() {
                        self.pair.server.connection_closed(conn, now);
                    }
                    let generation = self.pair.server.device_view(id).unwrap().generation;
                    let mut cfg = DeviceConfig::new(id, generation, secret, Platform::Android);
                    cfg.push_token = d.cfg.push_token.clone();
                    let behaviour = d.behaviour;
                    *d = SimDevice::new(cfg, now);
                    d.behaviour = behaviour;
                    self.enrolled[i] = true;
                    self.churned[i] = true;
                }
            }
            9 => {
                self.pair.restart_server(true);
            }
            10 => {
                let d = &self.pair.devices[i];
                self.lost.extend(d.held.iter().map(|t| t.id));
                self.pair.reboot(i);
            }
            11 => {
                let held: Vec<TaskId> = self.pair.devices[i].held.iter().map(|t| t.id).collect();
                for t in held {
                    let status = mdm_sync::wire::TaskStatus::Succeeded { result: None };
                    self.pair.finish(i, t, status);
                }
            }
            12 => {
                let b = [Behaviour::Succeed, Behaviour::Hold][self.rng.below(2) as usize];
                self.pair.devices[i].behaviour = b;
            }
            13 => {
                let r = &mut self.raised[i];
                let category = r.len() as u16;
                r.push(category);
                let e = ComplianceEvent::BlockedPageVisited { category };
                self.pair.devices[i].to_raise.push_back(e);
            }
            14 => self.pair.devices[i].dev.manual_sync(now),
            15 => {
                let back = Duration::from_secs(self.rng.below(300));
                self.pair.now =
                    Instant::from_millis(now.as_millis().saturating_sub(back.as_millis()));
            }
            16 => self.pair.now = now + Duration::from_secs(3600 * (1 + self.rng.below(4))),
            17 => {
                // Against its docs (once, right after `new`): mid-way.
                let _ = self.pair.server.recover(now);
            }
            _ => {
                // Part of a sync, so that the calls above land mid-session.
                for _ in 0..self.rng.below(4) {
                    self.pair.step_round();
                    self.note_conns();
                }
                self.pair.now = now + Duration::from_millis(self.rng.below(20_000));
            }
        }
        self.note_conns();
    }

    /// Heals: every device online and running its tasks to the end.
    fn heal(&mut self) {
        for i in 0..DEVICES {
            self.pair.devices[i].behaviour = Behaviour::Succeed;
            self.pair.go_online(i);
        }
        for _ in 0..6 {
            for i in 0..DEVICES {
                let held: Vec<TaskId> = self.pair.devices[i].held.iter().map(|t| t.id).collect();
                for t in held {
                    let status = mdm_sync::wire::TaskStatus::Succeeded { result: None };
                    self.pair.finish(i, t, status);
                }
            }
            self.pair.run_for(Duration::from_secs(4 * 3600));
        }
    }

    fn check(&mut self, seed: u64) {
        let mut runs: HashMap<TaskId, usize> = HashMap::new();
        let executed_now = self.pair.devices.iter().flat_map(|d| &d.executed);
        for t in self
            .executed_before
            .iter()
            .chain(executed_now.map(|t| &t.id))
        {
            *runs.entry(*t).or_default() += 1;
        }
        for (t, n) in &runs {
            assert!(*n <= 1, "seed {seed}: task {t:?} ran {n} times");
        }
        for (i, d) in self.pair.devices.iter().enumerate() {
            if !self.enrolled[i] {
                continue;
            }
            let ran: HashSet<TaskId> = d.executed.iter().map(|t| t.id).collect();
            for &(t, dev) in &self.tasks {
                if dev != d.cfg.id {
                    continue;
                }
                let state = self.pair.server.task(t).unwrap().map(|r| r.state);
                if let Some(s) = state {
                    if !s.is_final() {
                        eprintln!(
                            "{:?} timeout {:?} now {:?} failed {:?} syncs {}",
                            self.pair.server.device_view(dev),
                            d.dev.poll_timeout(),
                            self.pair.now,
                            d.failed,
                            d.syncs_done
                        );
                    }
                    assert!(s.is_final(), "seed {seed}: {t:?} of {dev:?} left {s:?}");
                }
                if ran.contains(&t) && !self.lost.contains(&t) {
                    assert!(
                        matches!(state, None | Some(TaskState::Succeeded { .. })),
                        "seed {seed}: {t:?} ran to success on {dev:?} but is {state:?}"
                    );
                }
            }
        }
        let stored = self.pair.server.store_mut().take_compliance();
        for (i, raised) in self.raised.iter().enumerate() {
            let id = DeviceId(i as u64 + 1);
            let mut got: Vec<u16> = stored
                .iter()
                .filter(|(d, _)| *d == id)
                .filter_map(|(_, e)| match e {
                    ComplianceEvent::BlockedPageVisited { category } => Some(*category),
                    _ => None,
                })
                .collect();
            got.sort_unstable();
            let mut once = got.clone();
            once.dedup();
            assert_eq!(once, got, "seed {seed}: {id:?} compliance stored twice");
            if !self.churned[i] {
                assert_eq!(&got, raised, "seed {seed}: {id:?} compliance lost");
            }
        }
    }
}

fn run(seed: u64, steps: usize) {
    let mut w = World::new(seed);
    for _ in 0..steps {
        w.step();
        w.pair.tick();
        w.note_conns();
    }
    w.heal();
    w.check(seed);
}

#[test]
fn server_calls_in_any_order_lose_nothing_acknowledged() {
    for seed in 0..std::env::var("B20_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300u64)
    {
        run(
            seed,
            std::env::var("B20_STEPS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(120),
        );
    }
}
