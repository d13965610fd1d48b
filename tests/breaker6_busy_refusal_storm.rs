//! A device whose running tasks fill its `INFLIGHT` slots answers further
//! offers "not now" (a `Deferred` report each) until those reports fill its
//! outbox, and leaves the next offer unaccepted. Leaving one used to ask for a
//! new sync as soon as the session ended; but the new session offers the same
//! tasks first, which fill the outbox again: a sync every 45 s or so for as
//! long as the running tasks run (hours for a scan): 161 syncs in 2 h before
//! the fix. A resync helps only once a task has finished (which already asks
//! for one), so none is asked for while every slot runs.

mod common;

use common::{Behaviour, Pair};
use mdm_sync::server::{ServerEvent, TaskState};
use mdm_sync::time::Duration;
use mdm_sync::wire::{TaskKind, TaskStatus};

fn syncs(p: &Pair) -> usize {
    p.count_events(|e| matches!(e, ServerEvent::Authenticated { .. }))
}

/// The default device (`OUTBOX` 16, `INFLIGHT` 4): four long tasks run, then
/// thirteen more are queued (twelve fit as deferrals, the thirteenth is left).
#[test]
fn a_full_device_with_more_offers_than_room_does_not_resync_in_a_loop() {
    let mut p = Pair::new(1);
    p.run_for(Duration::from_mins(5));
    p.devices[0].behaviour = Behaviour::Hold;
    let long: Vec<_> = (0..4).map(|_| p.queue(0, TaskKind::Scan)).collect();
    p.run_for(Duration::from_mins(5));
    assert_eq!(p.devices[0].held.len(), 4);
    p.devices[0].behaviour = Behaviour::Succeed;
    let waiting: Vec<_> = (0..13).map(|_| p.queue(0, TaskKind::Lock)).collect();
    let before = syncs(&p);
    p.run_for(Duration::from_hours(2));
    let during = syncs(&p) - before;
    // The push's sync, and the periodic one (3 h) at most: not one a minute.
    assert!(
        during <= 3,
        "{during} syncs in 2 h while the device was full"
    );

    // A running task ends: the device comes back for the waiting ones.
    let held = core::mem::take(&mut p.devices[0].held);
    for t in &held {
        p.finish(0, t.id, TaskStatus::Succeeded { result: None });
    }
    p.run_for(Duration::from_hours(1));
    for t in long.iter().chain(&waiting) {
        assert!(
            matches!(p.state(0, *t), TaskState::Succeeded { .. }),
            "{t:?}: {:?}",
            p.state(0, *t)
        );
    }
}
