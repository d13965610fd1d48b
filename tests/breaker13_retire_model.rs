//! Random histories of retirements, re-enrollments, tasks, policies,
//! cancels, prunes, server restarts and devices going on and off line,
//! checked against simple expectations kept beside the engine:
//!
//! - a retired id is unknown (operator calls, console), never reported
//!   overdue, never authenticated while retired, and has no open task;
//! - enrolling an id again gives one generation more than it last had, so
//!   a secret once handed out is never handed out again;
//! - every open task is of its device's current generation;
//! - a task is executed at most once over every incarnation of its device,
//!   and only by an incarnation of its own generation;
//! - a final task state never changes (until pruned);
//! - the fleet view counts the enrolled devices only.

mod common;

use std::collections::{HashMap, HashSet};

use common::{Behaviour, Pair, Rng, SimDevice};
use mdm_sync::device::DeviceConfig;
use mdm_sync::server::{ServerError, ServerEvent, SupersedeKey, TaskOptions, TaskState};
use mdm_sync::time::Duration;
use mdm_sync::wire::{DeviceId, Platform, Setting, TaskId, TaskKind};

const N: usize = 4;

struct Model {
    /// Per device index: enrolled now, and its last generation.
    enrolled: [bool; N],
    generation: [u32; N],
    /// Secrets handed out, per device id: never twice the same.
    secrets: HashSet<[u8; 32]>,
    /// Tasks executed by earlier incarnations (id, generation of the
    /// incarnation that ran it).
    executed_before: Vec<Vec<(TaskId, u32)>>,
    finals: HashMap<TaskId, TaskState>,
    tasks: Vec<TaskId>,
}

fn reprovision(pair: &mut Pair, m: &mut Model, i: usize) {
    let id = pair.id(i);
    let secret = pair.server.enroll(id, pair.now).unwrap();
    assert!(
        m.secrets.insert(secret),
        "secret of {id:?} handed out twice"
    );
    let generation = pair.server.device_view(id).unwrap().generation;
    assert_eq!(generation, m.generation[i].wrapping_add(1), "{id:?}");
    m.generation[i] = generation;
    m.enrolled[i] = true;
    let old = &pair.devices[i];
    let gen_old = old.cfg.generation;
    m.executed_before[i].extend(old.executed.iter().map(|t| (t.id, gen_old)));
    let mut cfg = DeviceConfig::new(id, generation, secret, Platform::Android);
    cfg.push_token = heapless::String::try_from("token").unwrap();
    pair.devices[i] = SimDevice::new(cfg, pair.now);
}

/// Runs device `i` and the server for at most `budget` moves (one device
/// event, or one frame one way), leaving the rest for the next `tick`.
fn partial(pair: &mut Pair, i: usize, budget: usize) {
    let now = pair.now;
    let mut buf = [0u8; 1024];
    for _ in 0..budget {
        let d = &mut pair.devices[i];
        if !d.online {
            return;
        }
        if let Some(ev) = d.dev.poll_event() {
            d.on_event(ev, &mut pair.server, now);
            continue;
        }
        let Some(conn) = d.conn else { return };
        if let Some(n) = d.dev.poll_transmit(&mut buf).unwrap() {
            let _ = pair.server.handle_bytes(conn, &buf[..n], now);
            continue;
        }
        match pair.server.poll_transmit_for(conn, &mut buf) {
            Some(n) => {
                let _ = d.dev.handle_bytes(&buf[..n], now);
            }
            None => return,
        }
    }
}

fn check(pair: &Pair, m: &mut Model, seed: u64, step: usize) {
    let ctx = format!("seed {seed} step {step}");
    // Fleet view: enrolled devices only.
    let enrolled = m.enrolled.iter().filter(|e| **e).count();
    let fleet = pair.server.fleet_view().unwrap();
    assert_eq!(fleet.devices, enrolled, "{ctx}");
    assert_eq!(pair.server.store().device_count(), enrolled, "{ctx}");
    assert!(fleet.online <= enrolled, "{ctx}: {fleet:?}");
    let overdue = pair.server.overdue_devices();
    for i in 0..N {
        let id = pair.id(i);
        if !m.enrolled[i] {
            assert!(
                matches!(pair.server.device_view(id), Err(ServerError::UnknownDevice)),
                "{ctx}: retired {id:?} still viewable"
            );
            assert!(!overdue.contains(&id), "{ctx}: retired {id:?} overdue");
        } else {
            let v = pair.server.device_view(id).unwrap();
            assert_eq!(v.generation, m.generation[i], "{ctx}");
        }
    }
    // Tasks: open ones of the current generation of an enrolled device;
    // finals never change.
    let mut open_seen = 0;
    for &tid in &m.tasks {
        let Some(t) = pair.server.task(tid).unwrap() else {
            assert!(m.finals.contains_key(&tid), "{ctx}: open task {tid:?} gone");
            continue;
        };
        let i = (t.device.0 - 1) as usize;
        if t.state.is_final() {
            if let Some(prev) = m.finals.insert(tid, t.state) {
                assert_eq!(prev, t.state, "{ctx}: final state of {tid:?} changed");
            }
        } else {
            open_seen += 1;
            assert!(m.enrolled[i], "{ctx}: open task {t:?} of a retired device");
            assert_eq!(t.generation, m.generation[i], "{ctx}: {t:?}");
            assert!(
                !m.finals.contains_key(&tid),
                "{ctx}: {tid:?} was final, now {t:?}"
            );
        }
    }
    let views: usize = (0..N)
        .filter(|i| m.enrolled[*i])
        .map(|i| {
            pair.server
                .device_view(pair.id(i))
                .unwrap()
                .open_tasks
                .len()
        })
        .sum();
    assert_eq!(views, open_seen, "{ctx}: open lists and tasks disagree");
    // At most once, and by the right generation.
    for i in 0..N {
        let gen_now = pair.devices[i].cfg.generation;
        let all: Vec<(TaskId, u32)> = m.executed_before[i]
            .iter()
            .copied()
            .chain(pair.devices[i].executed.iter().map(|t| (t.id, gen_now)))
            .collect();
        let mut seen = HashSet::new();
        for (tid, g) in all {
            assert!(seen.insert(tid), "{ctx}: {tid:?} executed twice");
            if let Some(t) = pair.server.task(tid).unwrap() {
                assert_eq!(t.generation, g, "{ctx}: {tid:?} run by another generation");
            }
        }
    }
}

fn run(seed: u64, steps: usize) {
    let mut pair = Pair::new(N);
    let mut rng = Rng(seed | 1);
    let mut m = Model {
        enrolled: [true; N],
        generation: [0; N],
        secrets: HashSet::new(),
        executed_before: vec![Vec::new(); N],
        finals: HashMap::new(),
        tasks: Vec::new(),
    };
    for i in 0..N {
        assert!(m
            .secrets
            .insert(pair.server.device_secret(pair.id(i)).unwrap()));
    }
    pair.run_for(Duration::from_mins(1));
    for step in 0..steps {
        let i = rng.below(N as u64) as usize;
        let id = pair.id(i);
        let now = pair.now;
        let mark = pair.events.len();
        match rng.below(16) {
            0..=2 => {
                let kinds = [TaskKind::Lock, TaskKind::Scan, TaskKind::Locate];
                let kind = kinds[rng.below(3) as usize];
                let mut opts = TaskOptions::default();
                if rng.below(3) == 0 {
                    opts.supersede = Some(SupersedeKey(rng.below(2)));
                }
                if rng.below(3) == 0 {
                    opts.expires_at = Some(now + Duration::from_secs(rng.below(7200)));
                }
                match pair.server.enqueue_task(id, kind, opts, now) {
                    Ok(t) => {
                        assert!(m.enrolled[i], "seed {seed} step {step}: queued for retired");
                        m.tasks.push(t);
                    }
                    Err(ServerError::UnknownDevice) => assert!(!m.enrolled[i]),
                    Err(ServerError::QueueFull) => assert!(m.enrolled[i]),
                    Err(e) => panic!("seed {seed} step {step}: {e:?}"),
                }
            }
            3 | 4 => match pair.server.retire(id, now) {
                Ok(()) => {
                    assert!(m.enrolled[i], "seed {seed} step {step}");
                    m.enrolled[i] = false;
                }
                Err(ServerError::UnknownDevice) => assert!(!m.enrolled[i]),
                Err(e) => panic!("seed {seed} step {step}: {e:?}"),
            },
            5 | 6 => reprovision(&mut pair, &mut m, i),
            7 => {
                if pair.devices[i].online {
                    pair.go_offline(i);
                } else {
                    pair.go_online(i);
                }
            }
            8 => {
                let secs = [1, 30, 600, 3600, 5 * 3600, 26 * 3600][rng.below(6) as usize];
                pair.run_for(Duration::from_secs(secs));
            }
            9 => {
                pair.restart_server(true);
            }
            10 => {
                let s = [Setting {
                    key: 1,
                    value: rng.below(9) as i64,
                }];
                match pair.server.assign_policy(id, &s, now) {
                    Ok(_) => assert!(m.enrolled[i]),
                    Err(ServerError::UnknownDevice) => assert!(!m.enrolled[i]),
                    Err(e) => panic!("seed {seed} step {step}: {e:?}"),
                }
            }
            11 => {
                if !m.tasks.is_empty() {
                    let t = m.tasks[rng.below(m.tasks.len() as u64) as usize];
                    let _ = pair.server.cancel_task(t, now);
                }
            }
            12 => {
                pair.server.store_mut().prune_finished(now);
                // Pruned tasks are no longer looked at.
                let server = &pair.server;
                m.tasks.retain(|t| server.task(*t).unwrap().is_some());
            }
            13 => {
                pair.server
                    .prefetch_device(DeviceId(rng.below(N as u64 + 2) + 1));
                let _ = pair.server.push_token_rejected(id, "token");
            }
            14 => {
                let d = &mut pair.devices[i];
                d.behaviour = match rng.below(4) {
                    0 => Behaviour::Hold,
                    1 => Behaviour::Hold, // (a deferred task is handed out again: not counted here)
                    2 => Behaviour::Fail(7),
                    _ => Behaviour::Succeed,
                };
            }
            _ => {
                let held: Vec<_> = pair.devices[i].held.iter().map(|t| t.id).collect();
                for t in held {
                    pair.finish(i, t, mdm_sync::wire::TaskStatus::Succeeded { result: None });
                }
                pair.devices[i].dev.manual_sync(now);
                // Part of the sync only (the device's events and a few
                // frames each way), then the operator acts mid-session:
                // between Hello and Proof, with a task offered or a report
                // in flight.
                partial(&mut pair, i, rng.below(12) as usize);
                let j = rng.below(N as u64) as usize;
                match rng.below(3) {
                    0 => {
                        if pair.server.retire(pair.id(j), now).is_ok() {
                            m.enrolled[j] = false;
                        }
                    }
                    1 => reprovision(&mut pair, &mut m, j),
                    _ => {
                        if let Ok(t) = pair.server.enqueue_task(
                            pair.id(j),
                            TaskKind::Lock,
                            TaskOptions::default(),
                            now,
                        ) {
                            m.tasks.push(t);
                        }
                    }
                }
            }
        }
        pair.tick();
        // No retired device authenticates or is reported overdue.
        for ev in &pair.events[mark..] {
            match ev {
                ServerEvent::Authenticated { device, .. } | ServerEvent::Overdue { device } => {
                    let j = (device.0 - 1) as usize;
                    assert!(
                        m.enrolled[j],
                        "seed {seed} step {step}: {ev:?} for a retired device"
                    );
                }
                _ => {}
            }
        }
        check(&pair, &mut m, seed, step);
    }
    // Settled: every device on line and finishing its tasks, every task of
    // an enrolled device ends, and each enrolled device that authenticated
    // meanwhile is reported overdue once silent; no retired one is.
    for i in 0..N {
        pair.go_online(i);
        pair.devices[i].behaviour = Behaviour::Succeed;
        let held: Vec<_> = pair.devices[i].held.iter().map(|t| t.id).collect();
        for t in held {
            pair.finish(i, t, mdm_sync::wire::TaskStatus::Succeeded { result: None });
        }
        pair.devices[i].dev.manual_sync(pair.now);
    }
    let mark = pair.events.len();
    pair.run_for(Duration::from_hours(3));
    check(&pair, &mut m, seed, steps);
    for &tid in &m.tasks {
        if let Some(t) = pair.server.task(tid).unwrap() {
            assert!(t.state.is_final(), "seed {seed}: {t:?} never ends");
        }
    }
    let authenticated: HashSet<DeviceId> = pair.events[mark..]
        .iter()
        .filter_map(|e| match e {
            ServerEvent::Authenticated { device, .. } => Some(*device),
            _ => None,
        })
        .collect();
    for i in 0..N {
        assert_eq!(
            authenticated.contains(&pair.id(i)),
            m.enrolled[i],
            "seed {seed}: device {i} syncs exactly when enrolled"
        );
        pair.go_offline(i);
    }
    pair.run_for(Duration::from_hours(8));
    let overdue = pair.server.overdue_devices();
    for i in 0..N {
        assert_eq!(
            overdue.contains(&pair.id(i)),
            m.enrolled[i],
            "seed {seed}: device {i} overdue exactly when enrolled"
        );
    }
}

/// Many short random histories (see the module docs for what is checked).
#[test]
fn random_retire_histories_keep_the_promises() {
    let seeds: u64 = std::env::var("B13_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    for seed in 1..=seeds {
        run(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15), 150);
    }
}
