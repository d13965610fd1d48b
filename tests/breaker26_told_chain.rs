//! Chains of restarts whose `periodic_interval` goes up and down, over
//! the clamp bounds (1 min, 7 days) and past them, with `overdue_slack`
//! from 1 min to 30 min, and engines that do not call `Server::recover`
//! (they record their interval at their first handshake). Three devices
//! stay online and sync as their last `Welcome` told them; one is silent
//! from the start. No syncing device may ever be reported overdue; the
//! silent one must be, by its last sync plus the longest interval any
//! engine told (as devices read it, 1 min ..= 7 days) and the longest
//! slack, once an engine that recovers runs.

mod common;

use common::Pair;
use mdm_sync::server::{FleetStore, Server, ServerConfig, ServerEvent};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::DeviceId;

fn overdue_of(pair: &Pair, device: DeviceId) -> usize {
    pair.count_events(|e| matches!(e, ServerEvent::Overdue { device: d } if *d == device))
}

fn mins(m: u64) -> Duration {
    Duration::from_mins(m)
}

fn config(periodic: Duration, slack: Duration) -> ServerConfig {
    ServerConfig {
        periodic_interval: periodic,
        overdue_slack: slack,
        ..ServerConfig::default()
    }
}

fn restart_with(pair: &mut Pair, cfg: ServerConfig, recover: bool) {
    let now = pair.now;
    for d in &mut pair.devices {
        if d.conn.take().is_some() {
            d.dev.disconnected(now);
        }
    }
    let old = core::mem::replace(&mut pair.server, common::server());
    pair.server = Server::new(cfg, old.into_store(), [1; 32], [3; 32]);
    if recover {
        pair.server.recover(now).unwrap();
    }
}

#[test]
fn random_chains_over_the_bounds_report_only_the_silent_device() {
    let week = Duration::from_hours(7 * 24);
    let choices = [
        mins(1),
        Duration::from_secs(30), // under the bound: 1 min
        mins(20),
        Duration::from_hours(1),
        Duration::from_hours(3),
        week,
        Duration::from_hours(30 * 24), // over the bound: 7 days
    ];
    let slacks = [mins(1), mins(10), mins(30)];
    let seeds = common::seeds("B26_SEEDS", 12);
    let mut syncs = 0;
    for seed in 1..=seeds {
        let mut rng = common::Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let pick = |rng: &mut common::Rng| {
            let i = choices[rng.below(choices.len() as u64) as usize];
            let s = slacks[rng.below(slacks.len() as u64) as usize];
            (i, s)
        };
        let (first, slack) = pick(&mut rng);
        let mut pair = Pair::with_config(4, config(first, slack));
        pair.run_for(mins(1));
        pair.go_offline(3);
        let rec = pair.server.store().device(pair.id(3)).unwrap().unwrap();
        let silent_since = rec.last_sync.unwrap().0;
        let mut chain = vec![(first, slack, true)];
        while pair.now < common::START + Duration::from_hours(40) {
            pair.run_for(mins(1 + rng.below(600)));
            let (i, s) = pick(&mut rng);
            let recover = rng.below(4) != 0;
            chain.push((i, s, recover));
            restart_with(&mut pair, config(i, s), recover);
        }
        let (i, s) = pick(&mut rng);
        chain.push((i, s, true));
        restart_with(&mut pair, config(i, s), true);
        let case = format!("seed {seed}, chain {chain:?}");
        for d in 0..3 {
            assert_eq!(overdue_of(&pair, pair.id(d)), 0, "{case}: device {d}");
        }
        let longest = chain
            .iter()
            .map(|c| c.0.max(mins(1)).min(week))
            .max()
            .unwrap();
        let most_slack = chain.iter().map(|c| c.1).max().unwrap();
        let by: Instant = silent_since + longest + most_slack + mins(1);
        let left = by.saturating_since(pair.now);
        pair.run_for(left.max(mins(1)));
        for d in 0..3 {
            assert_eq!(overdue_of(&pair, pair.id(d)), 0, "{case}: device {d}");
        }
        assert!(overdue_of(&pair, pair.id(3)) >= 1, "{case}: silent one");
        syncs += pair.count_events(|e| matches!(e, ServerEvent::Authenticated { .. }));
    }
    eprintln!("{seeds} seeds, {syncs} syncs");
}
