//! Settings at which no session could work are raised by `Server::new`
//! (found by breaker15: a `handshake_timeout` or `idle_timeout` of 0 made
//! every session time out, with no error anywhere).

mod common;

use common::Pair;
use mdm_sync::server::{ServerConfig, TaskState};
use mdm_sync::time::Duration;
use mdm_sync::wire::TaskKind;

/// With both timeouts asked at 0, the engine keeps 1 s and a device still
/// syncs and runs its task; at 0 the handshake's deadline is the instant of
/// its connection and the session failed before the `Hello` was read.
#[test]
fn zero_timeouts_are_raised_to_a_second_and_sessions_work() {
    let cfg = ServerConfig {
        handshake_timeout: Duration::ZERO,
        idle_timeout: Duration::ZERO,
        ..ServerConfig::default()
    };
    let mut pair = Pair::with_config(1, cfg);
    let c = pair.server.config();
    assert_eq!(c.handshake_timeout, Duration::from_secs(1));
    assert_eq!(c.idle_timeout, Duration::from_secs(1));
    pair.run_for(Duration::from_mins(1));
    let task = pair.queue(0, TaskKind::Lock);
    pair.run_for(Duration::from_mins(1));
    assert_eq!(pair.state(0, task), TaskState::Succeeded { result: None });
    assert_eq!(pair.times_executed(0, task), 1);
}

/// Values above the floor are kept as given.
#[test]
fn timeouts_above_a_second_are_kept() {
    let cfg = ServerConfig {
        handshake_timeout: Duration::from_millis(1_500),
        idle_timeout: Duration::from_secs(7),
        ..ServerConfig::default()
    };
    let pair = Pair::with_config(1, cfg);
    assert_eq!(
        pair.server.config().handshake_timeout,
        Duration::from_millis(1_500)
    );
    assert_eq!(pair.server.config().idle_timeout, Duration::from_secs(7));
}
