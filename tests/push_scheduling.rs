//! Pushes: one per device per interval, only while the device is offline,
//! carrying nothing but "sync now".

mod common;

use common::Pair;
use mdm_sync::server::ServerEvent;
use mdm_sync::time::Duration;
use mdm_sync::wire::TaskKind;

fn pushes(p: &Pair) -> usize {
    p.count_events(|e| matches!(e, ServerEvent::SendPush { .. }))
}

#[test]
fn bursts_of_work_get_one_push_per_interval() {
    let mut p = Pair::new(1);
    p.run_for(Duration::from_secs(5));
    p.pushes_lost = true;
    for _ in 0..5 {
        p.queue(0, TaskKind::Lock);
        p.advance(Duration::from_secs(5));
    }
    assert_eq!(pushes(&p), 1, "one push for the burst");
    p.run_for(Duration::from_secs(60));
    assert_eq!(
        pushes(&p),
        2,
        "one more at the end of the interval covers the rest"
    );
    p.run_for(Duration::from_mins(10));
    assert_eq!(pushes(&p), 2, "no new work, no new push");
}

#[test]
fn no_push_while_the_device_is_connected_or_before_it_sent_a_token() {
    let mut p = Pair::new(1);
    p.queue(0, TaskKind::Lock); // never connected: no token yet
    p.tick();
    assert_eq!(pushes(&p), 0);
    p.run_for(Duration::from_secs(5)); // boot sync delivers it anyway
    assert_eq!(p.devices[0].executed.len(), 1);
    assert_eq!(pushes(&p), 0);
}
