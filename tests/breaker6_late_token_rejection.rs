//! A push service answers a push asynchronously: its "this token is no longer
//! registered" can come after the device has already sent its new token. That
//! late answer is about the old token, and must not drop the new one: with
//! the new token dropped, no push reaches the device until its next periodic
//! sync (3 h by default), and every task queued meanwhile waits for it.

mod common;

use common::Pair;
use mdm_sync::server::{FleetStore, ServerEvent, TaskState};
use mdm_sync::time::Duration;
use mdm_sync::wire::TaskKind;

fn pushes_to(p: &Pair, token: &str) -> usize {
    p.count_events(|e| matches!(e, ServerEvent::SendPush { token: t, .. } if t.as_str() == token))
}

#[test]
fn a_late_rejection_of_the_old_token_keeps_the_new_one() {
    let mut p = Pair::new(1);
    let d = p.id(0);
    p.run_for(Duration::from_mins(5)); // the boot sync stores "token"
    p.queue(0, TaskKind::Lock);
    p.run_for(Duration::from_mins(5));
    assert_eq!(pushes_to(&p, "token"), 1, "a push to the old token");

    // The app rotates its token (FCM issued a new one) and the device sends
    // it at once; the server stores it.
    let new = heapless::String::try_from("token-2").unwrap();
    let now = p.now;
    p.devices[0].dev.set_push_token(new, now);
    p.run_for(Duration::from_mins(5));
    let held = p.server.store().push_target(d).unwrap();
    assert_eq!(held.map(|(_, t)| t), Some("token-2".try_into().unwrap()));

    // Only now does the push service answer the push of ten minutes ago:
    // "token" is no longer registered.
    p.server.push_token_rejected(d, "token").unwrap();
    let held = p.server.store().push_target(d).unwrap();
    assert_eq!(
        held.map(|(_, t)| t),
        Some("token-2".try_into().unwrap()),
        "the new token was dropped for the old one's rejection"
    );

    // Pushes go on to the new token: a task is delivered in minutes.
    p.advance(Duration::from_mins(2));
    let task = p.queue(0, TaskKind::Unlock);
    p.run_for(Duration::from_mins(10));
    assert_eq!(pushes_to(&p, "token-2"), 1, "a push to the new token");
    assert!(
        matches!(p.state(0, task), TaskState::Succeeded { .. }),
        "{:?}",
        p.state(0, task)
    );
}

/// The rejection of the token the store holds still drops it.
#[test]
fn a_rejection_of_the_held_token_drops_it() {
    let mut p = Pair::new(1);
    let d = p.id(0);
    p.run_for(Duration::from_mins(5));
    assert_eq!(p.server.push_token_rejected(d, "other"), Ok(false));
    assert!(p.server.store().push_target(d).unwrap().is_some());
    assert_eq!(p.server.push_token_rejected(d, "token"), Ok(true));
    assert_eq!(p.server.store().push_target(d).unwrap(), None);
    assert_eq!(p.server.push_token_rejected(d, "token"), Ok(false));
}
