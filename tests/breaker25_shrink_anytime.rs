//! `Server::shrink_to_fit` at any moment: between whole syncs, in the
//! middle of sessions (between single rounds of bytes), with tasks held
//! on devices, right after retirements and re-enrolments, after the clock
//! went back, repeatedly, and across restarts with `Server::recover`.
//!
//! Its docs say "nothing that the engine does for the devices still
//! enrolled changes". So the same seeded history is run twice, once
//! without shrinks and once with them, and what the engine said
//! (every `ServerEvent`, connection ids taken as the count of the
//! connection, since a shrink may hand out another slot) and what every
//! device ran must be the same. Then the network heals and every task of
//! a device's current enrollment must have run exactly once.

mod common;

use common::{Behaviour, Pair, Rng, SimDevice};
use mdm_sync::device::DeviceConfig;
use mdm_sync::server::{ServerConfig, ServerEvent, TaskState};
use mdm_sync::time::Duration;
use mdm_sync::wire::{Platform, Setting, TaskId, TaskKind};

/// Low bits of a `ConnId` that name its slot at the default
/// `max_sessions` (65,536): the rest counts connections.
const SLOT_BITS: u32 = 16;

/// An event as text, its connection id replaced by the connection's count
/// (the slot part of an id may differ after a shrink; the count may not).
fn norm(e: &ServerEvent) -> String {
    let c = |c: &mdm_sync::server::ConnId| c.0 >> SLOT_BITS;
    match e {
        ServerEvent::Close { conn } => format!("Close #{}", c(conn)),
        ServerEvent::Authenticated {
            conn,
            device,
            trigger,
        } => format!("Authenticated #{} {device:?} {trigger:?}", c(conn)),
        ServerEvent::AuthFailed { conn } => format!("AuthFailed #{}", c(conn)),
        ServerEvent::SessionEnded { conn, device } => {
            format!("SessionEnded #{} {device:?}", c(conn))
        }
        other => format!("{other:?}"),
    }
}

/// The events with `Overdue` and `Back` taken out, and those, sorted. A shrink may move an `Overdue` report: a device retired and
/// enrolled again that checks in before its old check ran gets a check of
/// its own after a shrink (the old one dropped), and without one it is
/// served by the old check, later by as much as the clock went back (the
/// order among devices of checks due together is not promised either).
fn split_overdue(events: Vec<String>) -> (Vec<String>, Vec<String>) {
    let (mut overdue, rest): (Vec<String>, Vec<String>) = events
        .into_iter()
        .partition(|e| e.starts_with("Overdue") || e.starts_with("Back"));
    overdue.sort();
    (rest, overdue)
}

struct Outcome {
    events: Vec<String>,
    executed: Vec<Vec<TaskId>>,
    /// (device index, task, generation it was queued in)
    tasks: Vec<(usize, TaskId, u32)>,
    generation: Vec<u32>,
    states: Vec<TaskState>,
    shrinks: usize,
}

fn provision(p: &mut Pair, i: usize, generation: u32, secret: [u8; 32]) {
    let id = p.id(i);
    let mut cfg = DeviceConfig::new(id, generation, secret, Platform::Android);
    cfg.push_token = heapless::String::try_from(format!("tok-{i}-{generation}").as_str()).unwrap();
    let online = p.devices[i].online;
    if let Some(conn) = p.devices[i].conn.take() {
        p.server.connection_closed(conn, p.now);
    }
    // What the earlier enrollments ran stays in the log.
    let ran = core::mem::take(&mut p.devices[i].executed);
    p.devices[i] = SimDevice::new(cfg, p.now);
    p.devices[i].online = online;
    p.devices[i].executed = ran;
}

fn enroll_again(p: &mut Pair, i: usize, generation: &mut [u32], retired: &mut [bool]) {
    let secret = p.server.enroll(p.id(i), p.now).unwrap();
    generation[i] = p.server.device_view(p.id(i)).unwrap().generation;
    retired[i] = false;
    provision(p, i, generation[i], secret);
}

fn run(seed: u64, n: usize, steps: usize, cfg: ServerConfig, shrink: bool) -> Outcome {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
    let mut p = Pair::with_config(n, cfg);
    let mut generation = vec![0u32; n];
    let mut retired = vec![false; n];
    let mut tasks: Vec<(usize, TaskId, u32)> = Vec::new();
    let mut shrinks = 0;
    let mut policy = 0u8;
    for _ in 0..steps {
        let i = rng.below(n as u64) as usize;
        let op = rng.below(40);
        let want_shrink = rng.below(4) == 0;
        match op {
            0..=9 => {
                let id = p.id(i);
                if !retired[i] && p.server.device_view(id).unwrap().open_tasks.len() < 40 {
                    let kind = [
                        TaskKind::Lock,
                        TaskKind::Scan,
                        TaskKind::Locate,
                        TaskKind::Wipe,
                    ][rng.below(4) as usize];
                    // Refused (`QueueFull`) under a tight `max_open_tasks`.
                    if let Ok(t) = p.server.enqueue_task(id, kind, Default::default(), p.now) {
                        tasks.push((i, t, generation[i]));
                    }
                }
            }
            10 | 11 => {
                if !tasks.is_empty() {
                    let (_, t, _) = tasks[rng.below(tasks.len() as u64) as usize];
                    let _ = p.server.cancel_task(t, p.now);
                }
            }
            12 => {
                if !retired[i] {
                    policy = policy.wrapping_add(1);
                    let s = [Setting {
                        key: 1,
                        value: i64::from(policy),
                    }];
                    p.server.assign_policy(p.id(i), &s, p.now).unwrap();
                }
            }
            13 | 14 => {
                let now = p.now;
                p.devices[i].dev.manual_sync(now);
            }
            15 => p.go_offline(i),
            16 | 17 => p.go_online(i),
            18 => p.reboot(i),
            19 => {
                if !retired[i] {
                    p.server.retire(p.id(i), p.now).unwrap();
                    retired[i] = true;
                }
            }
            20 => {
                // Enrolled again: after a retirement, or over an enrollment.
                if retired[i] || rng.below(3) == 0 {
                    enroll_again(&mut p, i, &mut generation, &mut retired);
                }
            }
            21 => {
                // No "not now": the harness logs each offer it answers so
                // as an execution.
                p.devices[i].behaviour = match rng.below(4) {
                    0 | 1 => Behaviour::Hold,
                    2 => Behaviour::Fail(9),
                    _ => Behaviour::Succeed,
                };
                if let Some(t) = p.devices[i].held.first().copied() {
                    p.finish(
                        i,
                        t.id,
                        mdm_sync::wire::TaskStatus::Succeeded {
                            result: common::result_for(t.kind),
                        },
                    );
                }
            }
            22..=24 => {
                // Single rounds: sessions stop half way, a shrink among them.
                for _ in 0..rng.below(6) {
                    p.step_round();
                    let mid = rng.below(2) == 0;
                    if shrink && mid {
                        p.server.shrink_to_fit();
                        shrinks += 1;
                    }
                }
            }
            25 => {
                // The clock goes back (never before the start).
                let back = rng.below(20 * 60_000);
                let floor = common::START.as_millis();
                p.now = mdm_sync::time::Instant::from_millis(
                    p.now.as_millis().saturating_sub(back).max(floor),
                );
            }
            26 => {
                let before = p.now - Duration::from_hours(1);
                p.server.store_mut().prune_finished(before);
            }
            27 => {
                // A restart; with shrinks, one before `recover` too (a
                // call before it, which its docs ask to be the first).
                p.restart_server(false);
                if shrink && want_shrink {
                    p.server.shrink_to_fit();
                    shrinks += 1;
                }
                p.server.recover(p.now).unwrap();
            }
            28 => {
                // A wave: about half of the fleet retired at once.
                for (k, gone) in retired.iter_mut().enumerate() {
                    if !*gone && rng.below(2) == 0 {
                        p.server.retire(p.id(k), p.now).unwrap();
                        *gone = true;
                    }
                }
            }
            29 => {
                for k in 0..n {
                    if retired[k] {
                        enroll_again(&mut p, k, &mut generation, &mut retired);
                    }
                }
            }
            _ => {
                let ms = rng.below(15 * 60_000);
                p.run_for(Duration::from_millis(ms));
            }
        }
        if shrink && want_shrink {
            p.server.shrink_to_fit();
            shrinks += 1;
        }
    }
    // Heal: every device online, held tasks answered from now on.
    for i in 0..n {
        p.go_online(i);
        p.devices[i].behaviour = Behaviour::Succeed;
        let held: Vec<_> = p.devices[i].held.clone();
        for t in held {
            p.finish(
                i,
                t.id,
                mdm_sync::wire::TaskStatus::Succeeded {
                    result: common::result_for(t.kind),
                },
            );
        }
    }
    p.run_for(Duration::from_hours(8));
    let states = tasks
        .iter()
        .map(|(i, t, _)| {
            p.server
                .task_state(p.id(*i), *t)
                .unwrap_or(TaskState::Dropped)
        })
        .collect();
    Outcome {
        events: p.events.iter().map(norm).collect(),
        executed: p
            .devices
            .iter()
            .map(|d| d.executed.iter().map(|t| t.id).collect())
            .collect(),
        tasks,
        generation,
        states,
        shrinks,
    }
}

fn check_once(seed: u64, o: &Outcome) {
    for ((i, t, g), state) in o.tasks.iter().zip(&o.states) {
        let times = o.executed[*i].iter().filter(|x| *x == t).count();
        assert!(
            times <= 1,
            "seed {seed}: device {i} ran {t:?} {times} times"
        );
        if *g == o.generation[*i] && !state.is_final() {
            panic!("seed {seed}: device {i} task {t:?} still {state:?} after healing");
        }
        // A final status came from the device: it ran the task once.
        if matches!(
            state,
            TaskState::Succeeded { .. } | TaskState::Failed { .. }
        ) {
            assert_eq!(times, 1, "seed {seed}: device {i} {t:?} {state:?}");
        }
    }
}

fn compare(seed: u64, n: usize, steps: usize) {
    compare_with(seed, n, steps, ServerConfig::default());
}

fn compare_with(seed: u64, n: usize, steps: usize, cfg: ServerConfig) {
    let plain = run(seed, n, steps, cfg, false);
    let shrunk = run(seed, n, steps, cfg, true);
    check_once(seed, &plain);
    check_once(seed, &shrunk);
    assert!(shrunk.shrinks > 0);
    let ran: usize = shrunk.executed.iter().map(Vec::len).sum();
    eprintln!(
        "seed {seed}: {} events, {} tasks, {ran} executions, {} shrinks",
        shrunk.events.len(),
        shrunk.tasks.len(),
        shrunk.shrinks
    );
    let (plain_events, plain_overdue) = split_overdue(plain.events.clone());
    let (shrunk_events, shrunk_overdue) = split_overdue(shrunk.events.clone());
    let count = |v: &[String]| {
        let mut m = std::collections::BTreeMap::new();
        v.iter().for_each(|e| *m.entry(e.clone()).or_insert(0) += 1);
        m
    };
    // With no slack a device syncing on time flaps overdue and back at
    // each period, and when a report falls moves its count.
    if cfg.overdue_slack.as_millis() > 0 {
        assert_eq!(
            count(&plain_overdue),
            count(&shrunk_overdue),
            "seed {seed}: overdue reports per device"
        );
    }
    let plain = Outcome {
        events: plain_events,
        ..plain
    };
    let shrunk = Outcome {
        events: shrunk_events,
        ..shrunk
    };
    if let Some(k) = (0..plain.events.len().min(shrunk.events.len()))
        .find(|&k| plain.events[k] != shrunk.events[k])
    {
        let from = k.saturating_sub(5);
        panic!(
            "seed {seed}: event {k} differs with shrinks\nwithout: {:#?}\nwith:    {:#?}",
            &plain.events[from..(k + 5).min(plain.events.len())],
            &shrunk.events[from..(k + 5).min(shrunk.events.len())]
        );
    }
    assert_eq!(
        plain.events.len(),
        shrunk.events.len(),
        "seed {seed}: event counts"
    );
    assert_eq!(plain.executed, shrunk.executed, "seed {seed}: executions");
    assert_eq!(plain.states, shrunk.states, "seed {seed}: task states");
}

/// The number in environment variable `name`, else `default`.
fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// 24 devices, 2,000 operations each; `B25_SEEDS` seeds (12) from
/// `B25_FROM` (0).
#[test]
fn shrinks_at_any_moment_change_nothing_for_enrolled_devices() {
    let from = env_or("B25_FROM", 0);
    for seed in from..from + env_or("B25_SEEDS", 12) {
        compare(seed, 24, 2000);
    }
}

/// Same with three devices, so that operations crowd on each (seeds
/// 100,000 on, as many as `B25_SEEDS`).
#[test]
fn shrinks_with_few_devices_change_nothing() {
    for seed in 100_000..100_000 + env_or("B25_SEEDS", 12) {
        compare(seed, 3, 1000);
    }
}

/// `MemoryStore` through the `FleetStore` API, with `retire_device`,
/// `remove_push_target` and `shrink_to_fit` among puts, reports and token
/// changes (ids over the whole `u64` range, a hot set reused often),
/// against maps: every record, push target and retired generation is
/// found after every shrink, and the tables grow again after it.
#[test]
fn memory_store_shrinks_match_maps() {
    use mdm_sync::server::{
        DeviceRecord, FleetStore, MemoryStore, PolicyState, PushToken, ReportCommit, ReportSeqs,
    };
    use mdm_sync::time::Instant;
    use mdm_sync::wire::{DeviceId, SyncTrigger};
    use std::collections::{HashMap, HashSet};

    for seed in 1..=6u64 {
        let mut rng = Rng(0xA076_1D64_78BD_642F ^ seed);
        let mut pool: Vec<u64> = vec![0, u64::MAX, 1, u64::MAX - 1];
        let mut seen: HashSet<u64> = pool.iter().copied().collect();
        while pool.len() < 3000 {
            let id = match rng.below(3) {
                0 => rng.below(30_000),
                1 => rng.next(),
                _ => rng.next() << 32,
            };
            if seen.insert(id) {
                pool.push(id);
            }
        }
        let mut store = MemoryStore::new();
        let mut devices: HashMap<u64, DeviceRecord> = HashMap::new();
        let mut push: HashMap<u64, (Platform, PushToken)> = HashMap::new();
        let mut retired: HashMap<u64, u32> = HashMap::new();
        let tokens = ["a", "b", "longer-token-0123456789", ""];
        let mut shrinks = 0;
        // Phases: fill, retire most, shrink, fill again.
        for step in 0..60_000usize {
            let phase = step / 15_000;
            let id = if rng.below(3) == 0 {
                pool[rng.below(16) as usize]
            } else {
                pool[rng.below(pool.len() as u64) as usize]
            };
            let d = DeviceId(id);
            let r = rng.below(100);
            let retire_share = if phase == 1 { 60 } else { 8 };
            match r {
                _ if r < retire_share => {
                    let was = store.retire_device(d).unwrap();
                    assert_eq!(was, devices.contains_key(&id), "seed {seed} step {step}");
                    if let Some(rec) = devices.remove(&id) {
                        retired.insert(id, rec.generation);
                        push.remove(&id);
                    }
                }
                _ if r < retire_share + 2 => {
                    store.shrink_to_fit();
                    shrinks += 1;
                }
                _ if r < retire_share + 5 => {
                    let held = store.remove_push_target(d).unwrap();
                    assert_eq!(held, push.remove(&id).is_some(), "seed {seed} step {step}");
                }
                _ if r < retire_share + 20 => {
                    let token = tokens[rng.below(4) as usize];
                    let platform = if rng.below(2) == 0 {
                        Platform::Ios
                    } else {
                        Platform::Android
                    };
                    store.set_push_target(d, platform, token).unwrap();
                    if !token.is_empty() {
                        push.insert(id, (platform, PushToken::try_from(token).unwrap()));
                    }
                }
                _ if r < retire_share + 30 => {
                    let seqs = ReportSeqs {
                        last_report_seq: rng.next() as u32,
                        last_task_seq: rng.next() as u32,
                    };
                    let state = PolicyState::Applied { version: 2 };
                    let commit = ReportCommit {
                        device: d,
                        seqs,
                        policy_version: Some(2),
                        policy_state: Some(&state),
                        task: None,
                        compliance: None,
                    };
                    store.commit_report(commit).unwrap();
                    if let Some(rec) = devices.get_mut(&id) {
                        commit.apply_to(rec);
                    }
                }
                _ => {
                    if phase == 1 {
                        continue;
                    }
                    let generation = match devices.get(&id) {
                        Some(r) => r.generation.wrapping_add(1),
                        None => retired.get(&id).map_or(0, |g| g.wrapping_add(1)),
                    };
                    let rec = DeviceRecord {
                        last_sync: Some((
                            Instant::from_millis(rng.below(1 << 40)),
                            SyncTrigger::Periodic,
                        )),
                        ..DeviceRecord::new(d, generation)
                    };
                    store.put_device(&rec).unwrap();
                    devices.insert(id, rec);
                    retired.remove(&id);
                }
            }
            if step % 15_000 == 14_999 {
                store.shrink_to_fit();
                shrinks += 1;
            }
            assert_eq!(
                store.device(d).unwrap().as_ref(),
                devices.get(&id),
                "seed {seed} step {step}"
            );
            assert_eq!(store.push_target(d).unwrap(), push.get(&id).cloned());
            assert_eq!(
                store.retired_generation(d).unwrap(),
                retired.get(&id).copied()
            );
            if step % 3_000 == 2_999 {
                assert_eq!(store.device_count(), devices.len());
                for id in &pool {
                    let d = DeviceId(*id);
                    assert_eq!(store.device(d).unwrap().as_ref(), devices.get(id));
                    assert_eq!(store.push_target(d).unwrap(), push.get(id).cloned());
                    assert_eq!(
                        store.retired_generation(d).unwrap(),
                        retired.get(id).copied()
                    );
                }
                let mut all = HashMap::new();
                store
                    .for_each_device(&mut |r| assert!(all.insert(r.id.0, r.clone()).is_none()))
                    .unwrap();
                assert_eq!(all, devices, "seed {seed} step {step}");
            }
        }
        assert!(shrinks > 100, "{shrinks}");
    }
}

/// Same at tight settings: output bound 0, pushes unlimited, a
/// one-minute period with no slack, three open tasks per device, short
/// handshake and idle timeouts (seeds 200,000 on, `B25_SEEDS`).
#[test]
fn shrinks_at_tight_settings_change_nothing() {
    let cfg = ServerConfig {
        periodic_interval: Duration::from_mins(1),
        overdue_slack: Duration::from_millis(0),
        push_min_interval: Duration::from_millis(0),
        handshake_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        max_session: Duration::from_secs(5),
        max_open_tasks: 3,
        max_pending_out: 0,
        ..ServerConfig::default()
    };
    for seed in 200_000..200_000 + env_or("B25_SEEDS", 12) {
        compare_with(seed, 8, 1000, cfg);
    }
}
