//! Random interleavings of token changes on the device, rejections by the
//! push service (of the token held, or late, of an older one), tasks queued
//! and devices going off and on line: after a few hours online the store
//! holds the device's current token, pushes reach it again, every task is
//! done, and no sync storm happens on the way.

mod common;

use common::Pair;
use mdm_sync::server::{FleetStore, ServerEvent, TaskState};
use mdm_sync::time::Duration;
use mdm_sync::wire::TaskKind;

fn syncs(p: &Pair) -> usize {
    p.count_events(|e| matches!(e, ServerEvent::Authenticated { .. }))
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

#[test]
fn token_churn_always_settles_on_the_current_token() {
    for seed in 1..=300u64 {
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut p = Pair::new(1);
        let d = p.id(0);
        let mut tokens = vec![String::from("token")];
        let mut tasks = Vec::new();
        p.run_for(Duration::from_mins(1));
        let start = syncs(&p);
        let steps = 5 + xorshift(&mut rng) % 20;
        for _ in 0..steps {
            match xorshift(&mut rng) % 7 {
                0 => {
                    let t = format!("token-{}", tokens.len());
                    let now = p.now;
                    let new = heapless::String::try_from(t.as_str()).unwrap();
                    p.devices[0].dev.set_push_token(new, now);
                    tokens.push(t);
                }
                1 | 2 => {
                    // The push service refuses some token the device had.
                    let i = xorshift(&mut rng) as usize % tokens.len();
                    p.server.push_token_rejected(d, &tokens[i]).unwrap();
                }
                3 => tasks.push(p.queue(0, TaskKind::Lock)),
                4 => p.go_offline(0),
                5 => p.go_online(0),
                _ => {}
            }
            let mins = xorshift(&mut rng) % 90;
            p.run_for(Duration::from_mins(mins));
        }
        p.go_online(0);
        p.run_for(Duration::from_hours(4));
        let current = tokens.last().unwrap().as_str();
        let held = p.server.store().push_target(d).unwrap();
        assert_eq!(
            held.as_ref().map(|(_, t)| t.as_str()),
            Some(current),
            "seed {seed}"
        );
        for t in &tasks {
            assert!(
                matches!(p.state(0, *t), TaskState::Succeeded { .. }),
                "seed {seed}: {t:?} {:?}",
                p.state(0, *t)
            );
        }
        // Pushes reach the device: a task now is done within minutes.
        let task = p.queue(0, TaskKind::Unlock);
        p.run_for(Duration::from_mins(5));
        assert!(
            matches!(p.state(0, task), TaskState::Succeeded { .. }),
            "seed {seed}: push after settling"
        );
        // Each step causes a few syncs at most; a storm makes hundreds.
        let n = syncs(&p) - start;
        assert!(
            n <= 8 * steps as usize + 8,
            "seed {seed}: {n} syncs in {steps} steps"
        );
    }
}
