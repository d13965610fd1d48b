//! `Server::prefetch_device` is a hint: a fleet whose server is hinted
//! before every step, about enrolled, unknown and extreme device ids, goes
//! through exactly the same events, task states and deliveries as one that
//! is not.

mod common;

use common::Pair;
use mdm_sync::time::Duration;
use mdm_sync::wire::{ComplianceEvent, DeviceId, TaskKind};

/// A scripted run of three devices: syncs, tasks queued online and offline
/// (pushes), a reboot and a compliance event; `hint` is called before each step.
fn run(mut hint: impl FnMut(&mut Pair)) -> (Vec<String>, Vec<usize>) {
    let mut p = Pair::new(3);
    let mut tasks = Vec::new();
    for round in 0..6u64 {
        hint(&mut p);
        p.run_for(Duration::from_mins(2));
        hint(&mut p);
        let i = (round % 3) as usize;
        if round == 2 {
            p.go_offline(i);
        }
        tasks.push((i, p.queue(i, TaskKind::ALL[round as usize % 5])));
        hint(&mut p);
        if round == 3 {
            p.reboot(1);
            p.raise(0, ComplianceEvent::ProfileChanged);
            p.go_online(2);
        }
        p.advance(Duration::from_secs(61));
    }
    hint(&mut p);
    p.run_for(Duration::from_hours(4));
    let states = tasks.iter().map(|&(i, t)| format!("{:?}", p.state(i, t)));
    let mut log: Vec<String> = p.events.iter().map(|e| format!("{e:?}")).collect();
    log.extend(states);
    let executed = p.devices.iter().map(|d| d.executed.len()).collect();
    (log, executed)
}

#[test]
fn hints_change_nothing() {
    let plain = run(|_| {});
    let hinted = run(|p: &mut Pair| {
        for id in [0, 1, 2, 3, 4, 1 << 40, u64::MAX] {
            p.server.prefetch_device(DeviceId(id));
        }
        for i in 0..p.devices.len() {
            p.server.prefetch_device(p.id(i));
        }
    });
    assert!(plain.0.len() > 20, "the run does something: {:?}", plain.0);
    assert_eq!(plain, hinted);
}
