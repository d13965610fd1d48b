//! "Not now" answers must not make a full device sync in a loop.
//!
//! Found by the simulator (`tests/properties.rs`): an application that answers
//! every task with "not now, retry in 30 s" while more tasks wait than the
//! device has room for made the device sync again at once, forever, with no
//! time passing. The server offers deferred tasks again in the next session,
//! they come first and fill the room again, and the device asked for yet
//! another sync: after a task it had answered "not now" for lack of room
//! (default capacities), or after an offer it had left for lack of room
//! (small outbox). Now only a task that ran frees room worth a sync at once;
//! after a "not now" the retry hint decides.

mod sim;

use sim::{Op, Schedule, Style};

fn deferring_app_with(tasks: usize, chunk: Option<u16>) -> Schedule {
    let mut ops = vec![Op::App {
        dev: 0,
        style: Style::Defer { retry_s: 30 },
    }];
    ops.extend((0..tasks).map(|_| Op::lock(0)));
    ops.extend(chunk.map(|max| Op::Chunk { max }));
    ops.push(Op::Advance { ms: 0 });
    ops.push(Op::Advance { ms: 600_000 });
    Schedule {
        devices: 1,
        seed: 0,
        ops,
    }
}

#[test]
fn not_now_with_more_tasks_than_room_causes_no_sync_storm() {
    let s = deferring_app_with(9, None);
    if let Err(e) = sim::check::<16, 4>(&s) {
        panic!("{e}");
    }
}

#[test]
fn not_now_with_offers_left_for_lack_of_room_causes_no_sync_storm() {
    for chunk in [None, Some(1)] {
        let s = deferring_app_with(3, chunk);
        if let Err(e) = sim::check::<4, 2>(&s) {
            panic!("chunk {chunk:?}: {e}");
        }
    }
}

#[test]
fn a_deferring_app_syncs_at_its_hint_not_continuously() {
    let s = deferring_app_with(9, None);
    let summary = sim::check::<16, 4>(&s).unwrap_or_else(|e| panic!("{e}"));
    // Ten minutes of "retry in 30 s": about one sync per hint, not thousands.
    assert!(summary.connections < 200, "{summary:?}");
}
