//! A token the push service refused is dropped (`Server::push_token_rejected`):
//! no push goes to it any more, the device's next sync is asked for its
//! token, and pushes resume once it has sent it.

mod common;

use common::{result_for, Pair};
use mdm_sync::server::{FleetStore, ServerEvent, TaskState};
use mdm_sync::time::Duration;
use mdm_sync::wire::TaskKind;

fn pushes(p: &Pair) -> usize {
    p.count_events(|e| matches!(e, ServerEvent::SendPush { .. }))
}

#[test]
fn a_rejected_token_gets_no_push_until_the_device_sends_it_again() {
    let mut p = Pair::new(1);
    let d = p.id(0);
    p.run_for(Duration::from_mins(5)); // the boot sync: the token is stored
    assert!(p.server.store().push_target(d).unwrap().is_some());
    let before = pushes(&p);
    p.queue(0, TaskKind::Lock);
    p.run_for(Duration::from_mins(5));
    assert_eq!(pushes(&p), before + 1, "a push with the stored token");

    // The push service answers that the token is no longer registered.
    assert_eq!(p.server.push_token_rejected(d, "token"), Ok(true));
    assert_eq!(
        p.server.push_token_rejected(d, "token"),
        Ok(false),
        "already dropped"
    );
    assert_eq!(p.server.store().push_target(d).unwrap(), None);
    p.advance(Duration::from_mins(2));
    let task = p.queue(0, TaskKind::Locate);
    p.run_for(Duration::from_mins(30));
    assert_eq!(pushes(&p), before + 1, "no push to a dropped token");
    assert_eq!(p.state(0, task), TaskState::Queued, "waits for a sync");

    // The periodic sync carries no token (the device thinks it confirmed);
    // its Welcome asks for one, the device syncs again and sends it.
    p.run_for(Duration::from_hours(4));
    let done = TaskState::Succeeded {
        result: result_for(TaskKind::Locate),
    };
    assert_eq!(p.state(0, task), done);
    assert!(
        p.server.store().push_target(d).unwrap().is_some(),
        "sent again"
    );
    let before = pushes(&p);
    p.queue(0, TaskKind::Unlock);
    p.run_for(Duration::from_mins(5));
    assert_eq!(pushes(&p), before + 1, "pushes resume");
}
