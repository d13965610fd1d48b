//! A snapshot restore accepts a report body exactly when the server can read
//! the `Up::Report` that carries it (its hand decoder and postcard, through
//! `wire::decode::<Up>`), and every body a device writes restores: a body
//! refused at restore loses the device's whole state at reboot, one accepted
//! that the server cannot read ends every later session at it.

mod common;

use common::{Behaviour, Pair};
use mdm_sync::device::{Device, DeviceConfig};
use mdm_sync::server::FleetStore;
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::{
    self, ComplianceEvent, DeviceId, Platform, PolicyOutcome, ReportBody, SettingFailure, TaskId,
    TaskResult, TaskStatus, Up, MAX_REPORT_BODY,
};

const ID: u64 = 77;

/// A snapshot (format 4, PROTOCOL.md 14) of device `ID` with one report,
/// `body`, in its outbox.
fn snapshot_with(body: &[u8]) -> Vec<u8> {
    let mut s = vec![4u8];
    s.extend_from_slice(&9u64.to_le_bytes()); // counter
    s.extend_from_slice(&ID.to_le_bytes());
    s.extend_from_slice(&0u32.to_le_bytes()); // generation
    s.extend_from_slice(&0u32.to_le_bytes()); // last task seq
    s.extend_from_slice(&6u32.to_le_bytes()); // next report seq
    s.extend_from_slice(&0u32.to_le_bytes()); // policy version
    s.extend_from_slice(&3_600_000u32.to_le_bytes());
    s.extend_from_slice(&0u16.to_le_bytes()); // running tasks
    s.extend_from_slice(&1u16.to_le_bytes()); // reports
    s.push(0); // flags
    s.push(body.len() as u8);
    s.extend_from_slice(body);
    let crc = wire::crc32(&s);
    s.extend_from_slice(&crc.to_le_bytes());
    s
}

fn restores(body: &[u8]) -> bool {
    let cfg = DeviceConfig::new(DeviceId(ID), 0, [7; 32], Platform::Android);
    Device::<16, 4>::restore(cfg, &snapshot_with(body), Instant::ZERO).is_ok()
}

/// What the server makes of the `Up::Report` (seq 5) carrying `body`.
fn server_reads(body: &[u8]) -> bool {
    let mut payload = vec![3u8, 5];
    payload.extend_from_slice(body);
    matches!(wire::decode::<Up>(&payload), Ok(Up::Report { seq: 5, .. }))
}

fn check(body: &[u8]) {
    if body.is_empty() || body.len() > MAX_REPORT_BODY {
        return;
    }
    assert_eq!(restores(body), server_reads(body), "{body:02x?}");
}

fn encoded(r: &ReportBody) -> Vec<u8> {
    let mut buf = [0u8; 64];
    let n = wire::encode_payload(r, &mut buf).unwrap();
    buf[..n].to_vec()
}

/// Every report body, fields at their extremes and near varint boundaries.
fn bodies() -> Vec<ReportBody> {
    let u16s = [0, 1, 127, 128, 16_383, 16_384, u16::MAX];
    let u32s = [0, 1, 127, 128, 1 << 21, (1 << 28) - 1, 1 << 28, u32::MAX];
    let i32s = [
        0,
        1,
        -1,
        63,
        -64,
        64,
        -65,
        i32::MAX,
        i32::MIN,
        900_000_000,
        -1_800_000_000,
    ];
    let u64s = [0, 1, 127, 128, 1 << 35, 1 << 63, u64::MAX];
    let mut statuses = vec![
        TaskStatus::Received,
        TaskStatus::Cancelled,
        TaskStatus::Succeeded { result: None },
        TaskStatus::Deferred {
            retry_after_s: None,
        },
    ];
    for &r in &u16s {
        statuses.push(TaskStatus::Failed { reason: r });
        statuses.push(TaskStatus::Succeeded {
            result: Some(TaskResult::Scan { threats: r }),
        });
    }
    for &s in &u32s {
        statuses.push(TaskStatus::Deferred {
            retry_after_s: Some(s),
        });
    }
    for &lat in &i32s {
        for &lon in &i32s {
            for accuracy_m in [0, u32::MAX] {
                statuses.push(TaskStatus::Succeeded {
                    result: Some(TaskResult::Location {
                        lat_e7: lat,
                        lon_e7: lon,
                        accuracy_m,
                    }),
                });
            }
        }
    }
    let mut out = Vec::new();
    for &t in &u64s {
        for &status in &statuses {
            out.push(ReportBody::Task {
                task: TaskId(t),
                status,
            });
        }
    }
    for &v in &u16s {
        for e in [
            ComplianceEvent::ProfileChanged,
            ComplianceEvent::DeviceAdminChanged { active: v % 2 == 0 },
            ComplianceEvent::BlockedPageVisited { category: v },
            ComplianceEvent::PasswordOverdue { days: v },
            ComplianceEvent::MalwarePersisting { threats: v },
            ComplianceEvent::UsbDebugging {
                enabled: v % 2 == 1,
            },
            ComplianceEvent::ManualScanResult { threats: v },
        ] {
            out.push(ReportBody::Compliance(e));
        }
    }
    for &version in &u32s {
        for &r in &u16s {
            out.push(ReportBody::Policy(wire::PolicyReport {
                version,
                outcome: PolicyOutcome::Rejected { reason: r },
            }));
            for n in 0..=wire::MAX_POLICY_FAILURES {
                let failed = (0..n).map(|i| SettingFailure {
                    key: u16s[i % u16s.len()],
                    reason: r,
                });
                out.push(ReportBody::Policy(wire::PolicyReport {
                    version,
                    outcome: PolicyOutcome::Partial {
                        failed: failed.collect(),
                    },
                }));
            }
        }
        out.push(ReportBody::Policy(wire::PolicyReport {
            version,
            outcome: PolicyOutcome::Applied,
        }));
    }
    out
}

/// Every body of one or two bytes.
#[test]
fn every_short_body_restores_exactly_when_the_server_reads_it() {
    for a in 0..=255u8 {
        check(&[a]);
        for b in 0..=255u8 {
            check(&[a, b]);
        }
    }
}

/// Every encoded body restores; and the same, cut short, grown by a byte,
/// or with one byte changed, restores exactly when the server reads it.
#[test]
fn encoded_bodies_and_their_neighbours_restore_as_the_server_reads_them() {
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let all = bodies();
    assert!(all.len() > 1_000);
    for r in &all {
        let b = encoded(r);
        assert!(restores(&b), "{r:?}: {b:02x?}");
        assert!(server_reads(&b), "{r:?}: {b:02x?}");
        for cut in 1..b.len() {
            check(&b[..cut]);
        }
        for extra in [0u8, 1, 0x7F, 0x80, 0xFF] {
            let mut g = b.clone();
            g.push(extra);
            check(&g);
        }
        for _ in 0..8 {
            let mut m = b.clone();
            let at = next() as usize % m.len();
            m[at] = [0, 1, 2, 3, 4, 5, 6, 7, 0x7F, 0x80, 0x81, 0xFF, next() as u8]
                [next() as usize % 13];
            check(&m);
        }
    }
}

/// A device that finishes tasks with extreme results, raises every compliance
/// event and reports a partial policy while offline, then reboots: its
/// snapshot restores (the harness unwraps the restore) and, once online
/// again, the server stores every report.
#[test]
fn a_device_rebooted_with_every_kind_of_report_unacked_restores_and_delivers_them() {
    use mdm_sync::server::{PolicyState, TaskState};
    use mdm_sync::wire::TaskKind;
    let mut p = Pair::new(1);
    let d = p.id(0);
    p.run_for(Duration::from_mins(5));
    p.devices[0].behaviour = Behaviour::Hold;
    p.devices[0].hold_policy = true;
    let tasks: Vec<TaskId> = [
        TaskKind::Locate,
        TaskKind::Scan,
        TaskKind::Lock,
        TaskKind::Wipe,
    ]
    .into_iter()
    .map(|k| p.queue(0, k))
    .collect();
    let now = p.now;
    let version = p.server.assign_policy(d, &[], now).unwrap();
    p.run_for(Duration::from_mins(5));
    assert_eq!(p.devices[0].held.len(), 4, "all four running");
    p.go_offline(0);
    let statuses = [
        TaskStatus::Succeeded {
            result: Some(TaskResult::Location {
                lat_e7: i32::MIN,
                lon_e7: -1_800_000_000,
                accuracy_m: u32::MAX,
            }),
        },
        TaskStatus::Succeeded {
            result: Some(TaskResult::Scan { threats: u16::MAX }),
        },
        TaskStatus::Deferred {
            retry_after_s: Some(u32::MAX),
        },
        TaskStatus::Failed { reason: u16::MAX },
    ];
    for (t, s) in tasks.iter().zip(statuses) {
        p.finish(0, *t, s);
    }
    let failed = [SettingFailure {
        key: u16::MAX,
        reason: u16::MAX,
    }; wire::MAX_POLICY_FAILURES];
    let outcome = PolicyOutcome::Partial {
        failed: heapless::Vec::from_slice(&failed).unwrap(),
    };
    let now = p.now;
    p.devices[0]
        .dev
        .policy_applied(version, outcome.clone(), now)
        .unwrap();
    let events = [
        ComplianceEvent::ProfileChanged,
        ComplianceEvent::DeviceAdminChanged { active: true },
        ComplianceEvent::BlockedPageVisited { category: u16::MAX },
        ComplianceEvent::PasswordOverdue { days: 16_384 },
        ComplianceEvent::MalwarePersisting { threats: 128 },
        ComplianceEvent::UsbDebugging { enabled: false },
        ComplianceEvent::ManualScanResult { threats: u16::MAX },
    ];
    for e in events {
        p.raise(0, e);
    }
    // Every Persist was written: the snapshot holds them all.
    let now = p.now;
    while let Some(ev) = p.devices[0].dev.poll_event() {
        let server = &mut p.server;
        p.devices[0].on_event(ev, server, now);
    }
    p.reboot(0);
    p.go_online(0);
    p.run_for(Duration::from_mins(30));
    let stored = p.server.store_mut().take_compliance();
    assert_eq!(stored.len(), events.len(), "{stored:?}");
    let want = [
        TaskState::Succeeded {
            result: match statuses[0] {
                TaskStatus::Succeeded { result } => result,
                _ => unreachable!(),
            },
        },
        TaskState::Succeeded {
            result: Some(TaskResult::Scan { threats: u16::MAX }),
        },
        // Deferred until the device's own next sync (its hint is far off).
        TaskState::Deferred {
            retry_after_s: Some(u32::MAX),
        },
        TaskState::Failed { reason: u16::MAX },
    ];
    for (t, w) in tasks.iter().zip(want) {
        assert_eq!(p.state(0, *t), w, "task {t:?}");
    }
    let view = p.server.store().device(d).unwrap().unwrap();
    assert_eq!(
        view.policy_state,
        PolicyState::from_report(version, &outcome)
    );
}
