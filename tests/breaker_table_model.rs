//! The in-place table behind `MemoryStore` and the server's push states,
//! checked against plain maps over long random sequences: through the
//! `FleetStore` API, and through the server (enrolments, re-enrolments,
//! token changes, check-ins, overdue devices) with ids across the whole
//! `u64` range, 0 and `u64::MAX` included.

mod common;

use common::Rng;

use mdm_sync::server::PushToken;
use std::collections::{HashMap, HashSet};

use mdm_sync::server::{
    DeviceRecord, FleetStore, MemoryStore, PolicyState, ReportCommit, ReportSeqs, Server,
    ServerConfig, ServerEvent,
};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::{DeviceId, Platform, SettingFailure, SyncTrigger};

fn ids(rng: &mut Rng, n: usize) -> Vec<u64> {
    let mut set = HashSet::new();
    let mut v = vec![0, u64::MAX, 1, u64::MAX - 1];
    set.extend(v.iter().copied());
    while v.len() < n {
        let id = match rng.below(3) {
            0 => rng.below(10 * n as u64),
            1 => rng.next(),
            _ => rng.next() << 32,
        };
        if set.insert(id) {
            v.push(id);
        }
    }
    v
}

fn random_record(rng: &mut Rng, id: u64) -> DeviceRecord {
    let mut failed = heapless::Vec::new();
    failed.push(SettingFailure { key: 4, reason: 2 }).unwrap();
    let version = rng.below(5) as u32;
    let policy_state = match rng.below(5) {
        0 => PolicyState::Pending,
        1 => PolicyState::Applied { version },
        2 => PolicyState::Applied {
            version: version + 1,
        },
        3 => PolicyState::PartiallyApplied { version, failed },
        _ => PolicyState::Rejected { version, reason: 7 },
    };
    let last_sync = match rng.below(4) {
        0 => None,
        1 => Some((Instant::from_millis(rng.below(1 << 48)), SyncTrigger::Push)),
        2 => Some((
            Instant::from_millis(rng.next() | 1 << 63),
            SyncTrigger::Boot,
        )),
        _ => Some((Instant::MAX, SyncTrigger::Manual)),
    };
    DeviceRecord {
        id: DeviceId(id),
        generation: rng.next() as u32,
        last_report_seq: rng.next() as u32,
        last_task_seq: rng.next() as u32,
        policy_version: version,
        last_sync,
        policy_state,
    }
}

fn check_store(
    store: &MemoryStore,
    devices: &HashMap<u64, DeviceRecord>,
    push: &HashMap<u64, (Platform, PushToken)>,
    pool: &[u64],
) {
    assert_eq!(store.device_count(), devices.len());
    for id in pool {
        let d = DeviceId(*id);
        assert_eq!(store.device(d).unwrap().as_ref(), devices.get(id), "{id}");
        assert_eq!(store.push_target(d).unwrap(), push.get(id).cloned(), "{id}");
    }
    let mut seen = HashMap::new();
    store
        .for_each_device(&mut |r| assert!(seen.insert(r.id.0, r.clone()).is_none(), "twice"))
        .unwrap();
    assert_eq!(&seen, devices);
}

/// 200,000 random `FleetStore` calls over 6,000 ids, against maps.
#[test]
fn memory_store_matches_maps_over_long_sequences() {
    for (seed, sized) in [(1u64, 0usize), (2, 1), (3, 5000), (4, 3)] {
        let mut rng = Rng(0x2545_F491_4F6C_DD1D ^ seed);
        let pool = ids(&mut rng, 6000);
        let mut store = if sized == 0 {
            MemoryStore::new()
        } else {
            MemoryStore::with_capacity(sized)
        };
        let mut devices: HashMap<u64, DeviceRecord> = HashMap::new();
        let mut push: HashMap<u64, (Platform, PushToken)> = HashMap::new();
        let tokens = ["", "a", "b", "longer-token-0123456789"];
        for step in 0..50_000 {
            // Ids spread over the pool, with a hot set reused often.
            let id = if rng.below(3) == 0 {
                pool[rng.below(16) as usize]
            } else {
                pool[rng.below(pool.len() as u64) as usize]
            };
            let d = DeviceId(id);
            match rng.below(4) {
                0 => {
                    let rec = random_record(&mut rng, id);
                    store.put_device(&rec).unwrap();
                    devices.insert(id, rec);
                }
                1 => {
                    let seqs = ReportSeqs {
                        last_report_seq: rng.next() as u32,
                        last_task_seq: rng.next() as u32,
                    };
                    let state = PolicyState::Rejected {
                        version: 3,
                        reason: 1,
                    };
                    let applied = PolicyState::Applied { version: 3 };
                    let policy_state = match rng.below(3) {
                        0 => None,
                        1 => Some(&state),
                        _ => Some(&applied),
                    };
                    let policy_version = (rng.below(2) == 0).then_some(3);
                    let commit = ReportCommit {
                        device: d,
                        seqs,
                        policy_version,
                        policy_state,
                        task: None,
                        compliance: None,
                    };
                    store.commit_report(commit).unwrap();
                    if let Some(rec) = devices.get_mut(&id) {
                        commit.apply_to(rec);
                    }
                }
                2 => {
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
                _ => {}
            }
            assert_eq!(
                store.device(d).unwrap().as_ref(),
                devices.get(&id),
                "{step}"
            );
            assert_eq!(
                store.device_generation(d).unwrap(),
                devices.get(&id).map(|r| r.generation)
            );
            assert_eq!(
                store.report_seqs(d).unwrap(),
                devices.get(&id).map(ReportSeqs::of)
            );
            assert_eq!(store.push_target(d).unwrap(), push.get(&id).cloned());
            if step % 5000 == 4999 {
                check_store(&store, &devices, &push, &pool);
            }
        }
        check_store(&store, &devices, &push, &pool);
    }
}

fn drain(server: &mut Server<MemoryStore>, events: &mut Vec<ServerEvent>) {
    let mut buf = [0u8; 4096];
    while server.poll_transmit(&mut buf).is_some() {}
    while let Some(ev) = server.poll_event() {
        events.push(ev);
    }
}

/// Thousands of devices with ids over the whole `u64` range enrol, check
/// in (push state and push target inserted), re-enrol and check in again;
/// the server's console and overdue tracking agree with a model throughout
/// the tables' growths.
#[test]
fn server_enrolments_check_ins_and_overdue_match_a_model() {
    let mut rng = Rng(0xDEAD_BEEF_CAFE_F00D);
    let cfg = ServerConfig::default();
    let mut server = Server::new(cfg, MemoryStore::new(), [9; 32], [8; 32]);
    let mut now = Instant::from_millis(5_000_000);
    let pool = ids(&mut rng, 3000);
    let mut generation: HashMap<u64, u32> = HashMap::new();
    let mut secret: HashMap<u64, [u8; 32]> = HashMap::new();
    // Devices that ever checked in (tracked for overdue: a re-enrolment
    // keeps the deadline of the last handshake, PROTOCOL.md 11.2), and
    // which of them are announced overdue.
    let mut tracked: HashSet<u64> = HashSet::new();
    let mut synced: HashSet<u64> = HashSet::new();
    let mut od: HashSet<u64> = HashSet::new();
    let (mut want_overdue_events, mut want_back) = (0usize, 0usize);
    let mut events = Vec::new();
    for round in 0..6 {
        // Enrol the next part of the pool; re-enrol some enrolled ones.
        let upto = pool.len() * (round + 1) / 6;
        for id in &pool[..upto] {
            let fresh = !generation.contains_key(id);
            if fresh || rng.below(5) == 0 {
                let s = server.enroll(DeviceId(*id), now).unwrap();
                generation.entry(*id).and_modify(|g| *g += 1).or_insert(0);
                assert_eq!(server.device_secret(DeviceId(*id)).unwrap(), s);
                secret.insert(*id, s);
            }
        }
        // Most enrolled devices check in; the rest stay silent.
        for id in &pool[..upto] {
            if rng.below(4) == 0 {
                continue;
            }
            let (conn, _, answer) = common::raw_handshake_gen(
                &mut server,
                DeviceId(*id),
                generation[id],
                &secret[id],
                now,
            );
            assert!(answer.is_ok(), "{id}: {answer:?}");
            server.connection_closed(conn, now);
            synced.insert(*id);
            tracked.insert(*id);
            if od.remove(id) {
                want_back += 1;
            }
        }
        drain(&mut server, &mut events);
        for id in &pool[..upto] {
            let view = server.device_view(DeviceId(*id)).unwrap();
            assert_eq!(view.generation, generation[id], "{id}");
            assert_eq!(view.overdue, od.contains(id) && tracked.contains(id));
            let target = server.store().push_target(DeviceId(*id)).unwrap();
            assert_eq!(target.is_some(), synced.contains(id), "{id}");
        }
        let fleet = server.fleet_view().unwrap();
        assert_eq!(fleet.devices, upto);
        // Past every deadline: each tracked device is overdue, announced
        // once per silence.
        now = now + cfg.periodic_interval + cfg.overdue_slack + Duration::from_secs(1);
        server.handle_timeout(now).unwrap();
        drain(&mut server, &mut events);
        for id in &tracked {
            if od.insert(*id) {
                want_overdue_events += 1;
            }
        }
        let overdue = server.overdue_devices();
        let set: HashSet<u64> = overdue.iter().map(|d| d.0).collect();
        assert_eq!(set.len(), overdue.len(), "a device listed twice");
        assert_eq!(set, tracked, "round {round}");
        assert_eq!(server.fleet_view().unwrap().overdue, tracked.len());
        for id in &pool[..upto] {
            assert_eq!(server.is_overdue(DeviceId(*id)), tracked.contains(id));
        }
    }
    let count = |f: fn(&ServerEvent) -> bool| events.iter().filter(|e| f(e)).count();
    assert_eq!(
        count(|e| matches!(e, ServerEvent::Overdue { .. })),
        want_overdue_events
    );
    assert_eq!(count(|e| matches!(e, ServerEvent::Back { .. })), want_back);
}

/// A fleet of 400 full device engines (far more than the simulator's 8,
/// so the tables grow many times while pushes, check-ins and token changes
/// go on): random tasks, re-enrolments with new tokens and platforms,
/// devices going offline and back. Every task of a device's current
/// generation runs exactly once, none of an old generation runs after its
/// re-enrolment, and the console agrees with the model.
#[test]
fn a_large_fleet_with_re_enrolments_delivers_every_task_once() {
    use common::{Pair, SimDevice};
    use mdm_sync::device::DeviceConfig;
    use mdm_sync::server::TaskState;
    use mdm_sync::wire::{TaskId, TaskKind};

    let n = 400;
    let mut rng = Rng(0x0123_4567_89AB_CDEF);
    let mut p = Pair::new(n);
    let mut generation = vec![0u32; n];
    // Tasks per device index: (task, generation it was queued in).
    let mut tasks: Vec<Vec<(TaskId, u32)>> = vec![Vec::new(); n];
    for round in 0..40 {
        for _ in 0..150 {
            let i = rng.below(n as u64) as usize;
            match rng.below(10) {
                0..=5 => {
                    if p.server.device_view(p.id(i)).unwrap().open_tasks.len() < 60 {
                        let kind = [TaskKind::Lock, TaskKind::Scan, TaskKind::Locate]
                            [rng.below(3) as usize];
                        let t = p.queue(i, kind);
                        tasks[i].push((t, generation[i]));
                    }
                }
                6 => {
                    let id = p.id(i);
                    let secret = p.server.enroll(id, p.now).unwrap();
                    generation[i] += 1;
                    let platform = if rng.below(2) == 0 {
                        Platform::Ios
                    } else {
                        Platform::Android
                    };
                    let mut cfg = DeviceConfig::new(id, generation[i], secret, platform);
                    cfg.push_token =
                        heapless::String::try_from(format!("tok-{i}-{}", generation[i]).as_str())
                            .unwrap();
                    if let Some(conn) = p.devices[i].conn.take() {
                        p.server.connection_closed(conn, p.now);
                    }
                    let online = p.devices[i].online;
                    // Tasks of the old generation: dropped or already final.
                    for (t, g) in &tasks[i] {
                        if *g < generation[i] {
                            let s = p.state(i, *t);
                            assert!(s.is_final(), "{t:?} of an old generation: {s:?}");
                        }
                    }
                    p.devices[i] = SimDevice::new(cfg, p.now);
                    p.devices[i].online = online;
                }
                7 => p.go_offline(i),
                8 => p.go_online(i),
                _ => {
                    let now = p.now;
                    p.devices[i].dev.manual_sync(now);
                }
            }
        }
        p.run_for(Duration::from_mins(7));
        let fleet = p.server.fleet_view().unwrap();
        assert_eq!(fleet.devices, n, "round {round}");
    }
    for i in 0..n {
        p.go_online(i);
    }
    p.run_for(Duration::from_hours(8));
    let mut runs = 0;
    for i in 0..n {
        let view = p.server.device_view(p.id(i)).unwrap();
        assert_eq!(view.generation, generation[i]);
        assert!(
            view.open_tasks.is_empty(),
            "device {i}: {:?}",
            view.open_tasks
        );
        for (t, g) in &tasks[i] {
            let times = p.times_executed(i, *t);
            let state = p.state(i, *t);
            if *g == generation[i] {
                assert_eq!(times, 1, "device {i} task {t:?} ({state:?})");
                assert!(matches!(state, TaskState::Succeeded { .. }), "{state:?}");
                runs += 1;
            } else {
                assert_eq!(times, 0, "old generation's {t:?} ran after re-enrolment");
            }
        }
        let target = p.server.store().push_target(p.id(i)).unwrap();
        if generation[i] > 0 {
            let want = format!("tok-{i}-{}", generation[i]);
            assert_eq!(target.map(|t| t.1.to_string()), Some(want), "device {i}");
        }
    }
    assert!(runs > 1500, "{runs}");
}
