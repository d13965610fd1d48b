//! A device reports a policy version the server never assigned. `on_report`
//! stored it as the device's `policy_version` all the same, and
//! `assign_policy` numbers the next version from the larger of the last
//! assigned one and that reported one, by plain `max`, while devices compare
//! versions in the wrapping window (`wire::seq_newer`). A device that reports
//! version 2^31 (a compromised or broken one; the report is authenticated)
//! makes the next assignment 2^31 + 1, which is *older* than 0 in the window.
//! The assigned version outlives a re-enrollment (the remedy for a
//! compromised device): the fresh device, at version 0, never takes that
//! policy nor any later one for the next 2^31 assignments, and the console
//! shows it `Pending` for good.
//!
//! Expected: a report of a version newer than any assigned changes neither
//! the device's policy version nor its policy state (it is acknowledged:
//! the report was well-formed), so later assignments stay deliverable. And
//! `assign_policy` numbers from the newer of the two versions in the window,
//! not by plain `max` (second test).

mod common;

use common::*;
use mdm_sync::server::{FleetStore, PolicyState};
use mdm_sync::time::Duration;
use mdm_sync::wire::{frame, PolicyOutcome, PolicyReport, ReportBody, Setting, Up};

#[test]
fn a_reported_policy_version_never_assigned_does_not_poison_later_assignments() {
    // Just inside the window's newer half, and exactly half the circle away
    // (ordered neither way by `seq_newer`).
    for reported in [(1u32 << 31) - 1, 1 << 31] {
        poisoned_then_reenrolled(reported);
    }
}

fn poisoned_then_reenrolled(reported: u32) {
    let mut p = Pair::new(1);
    p.go_offline(0);
    let id = p.id(0);
    let now = p.now;
    let secret = p.server.device_secret(id).unwrap();
    // The hostile report, on a session of its own.
    let (conn, key, answer) = raw_handshake(&mut p.server, id, &secret, now);
    answer.unwrap();
    let report = Up::Report {
        seq: 1,
        body: ReportBody::Policy(PolicyReport {
            version: reported,
            outcome: PolicyOutcome::Applied,
        }),
    };
    let mut buf = [0u8; 600];
    let n = frame::encode_keyed(&report, &mut buf, key).unwrap();
    // Well-formed and in sequence: taken and acknowledged either way.
    p.server.handle_bytes(conn, &buf[..n], now).unwrap();
    p.server.connection_closed(conn, now);
    // A fleet-wide policy goes out meanwhile.
    let settings = [Setting { key: 1, value: 1 }];
    p.server.assign_policy(id, &settings, now).unwrap();

    // The operator re-enrolls the device and provisions it afresh.
    let secret = p.server.enroll(id, now).unwrap();
    let mut cfg = p.devices[0].cfg.clone();
    cfg.generation = 1;
    cfg.secret = secret;
    p.devices[0] = SimDevice::new(cfg, now);
    let settings = [Setting { key: 1, value: 2 }];
    let version = p.server.assign_policy(id, &settings, now).unwrap();
    p.run_for(Duration::from_mins(10));

    let view = p.server.device_view(id).unwrap();
    assert_eq!(
        p.devices[0].applied_policies,
        vec![version],
        "reported v{reported}: policy v{version} not applied; console {view:?}"
    );
    assert_eq!(view.policy_state, PolicyState::Applied { version });
}

#[test]
fn a_device_version_behind_the_assigned_one_in_the_window_does_not_renumber_policies() {
    // The device's recorded version is behind the assigned one in the
    // window devices compare versions in (from before the numbering wrapped,
    // or half the circle away: ordered neither way), yet numerically larger.
    // `assign_policy` took the plain `max` of the two and numbered the next
    // version after the device's: a version the device takes as older, so
    // it never applied it.
    for behind in [1u32 << 31, u32::MAX - 4] {
        let mut p = Pair::new(1);
        p.run_for(Duration::from_mins(1));
        let id = p.id(0);
        let first = p.server.assign_policy(id, &[], p.now).unwrap();
        p.run_for(Duration::from_mins(5));
        let mut rec = p.server.store().device(id).unwrap().unwrap();
        rec.policy_version = first.wrapping_add(behind);
        p.server.store_mut().put_device(&rec).unwrap();
        let settings = [Setting { key: 2, value: 3 }];
        let version = p.server.assign_policy(id, &settings, p.now).unwrap();
        p.devices[0].dev.manual_sync(p.now);
        p.run_for(Duration::from_mins(5));
        assert_eq!(
            p.devices[0].dev.policy_version(),
            version,
            "record at v{}: v{version} not taken",
            rec.policy_version
        );
    }
}
