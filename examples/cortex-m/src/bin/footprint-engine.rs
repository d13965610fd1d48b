//! Footprint probe: the device engine as a firmware uses it, and nothing else.
//! Every public call of the engine (sync triggers, session input and output,
//! task and policy answers, snapshots and restore) is made with inputs the
//! optimizer cannot see through (`black_box`), so no code path is dropped.
//! No printing: core::fmt stays out, as in a product that logs over defmt or
//! not at all. The engine value itself lives on the stack here (its size is
//! `size_of::<Device>()`, printed by `device-size`); the engine has no statics
//! of its own. `size.sh` reports this build minus `footprint-base`.

#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use core::hint::black_box;
use core::panic::PanicInfo;

use cortex_m_rt::entry;
use cortex_m_semihosting::debug;
use mdm_sync::device::{pick_latest, Device, DeviceConfig, Event};
use mdm_sync::time::Instant;
use mdm_sync::wire::{ComplianceEvent, DeviceId, Platform, PolicyOutcome, TaskStatus, MAX_FRAME};

#[entry]
fn main() -> ! {
    let mut device = boot();
    for round in 0..black_box(4u32) {
        let now = Instant::from_millis(black_box(u64::from(round) * 1000));
        drive(&mut device, round, now);
    }
    debug::exit(debug::EXIT_SUCCESS);
    loop {
        cortex_m::asm::wfi();
    }
}

fn boot() -> Device {
    let cfg = DeviceConfig::new(
        DeviceId(black_box(7)),
        black_box(1),
        black_box([3; 32]),
        Platform::Android,
    );
    let now = Instant::from_millis(black_box(0));
    let (a, b) = (black_box(&[0u8; 16][..]), black_box(&[0u8; 16][..]));
    match pick_latest(a, b).map(|s| Device::restore(cfg.clone(), s, now)) {
        Some(Ok(device)) => device,
        _ => Device::new(cfg, now),
    }
}

fn drive(device: &mut Device, round: u32, now: Instant) {
    match black_box(round % 3) {
        0 => device.push_received(now),
        1 => device.manual_sync(now),
        _ => {
            let event = black_box(ComplianceEvent::UsbDebugging { enabled: true });
            black_box(device.raise_compliance(event, now)).ok();
        }
    }
    device.handle_timeout(now);
    events(device, now);

    let mut tx = [0u8; MAX_FRAME];
    while let Ok(Some(n)) = device.poll_transmit(&mut tx) {
        black_box(&tx[..n]);
    }
    let rx = black_box([0u8; 64]);
    black_box(device.handle_bytes(&rx, now)).ok();
    events(device, now);
    black_box(device.poll_timeout());
    black_box(device.stats());
    if black_box(false) {
        device.disconnected(now);
    }
}

fn events(device: &mut Device, now: Instant) {
    let mut snapshot = [0u8; <Device>::SNAPSHOT_MAX];
    while let Some(event) = device.poll_event() {
        match event {
            Event::Persist => {
                black_box(device.snapshot_slot());
                black_box(device.snapshot(&mut snapshot)).ok();
            }
            Event::Connect if black_box(true) => device.connected(now),
            Event::Connect => device.connect_failed(now),
            Event::Execute(task) => {
                black_box(device.task_progress(task.id, black_box(Some(50)))).ok();
                let status = black_box(TaskStatus::Succeeded { result: None });
                black_box(device.task_status(task.id, status, now)).ok();
            }
            Event::Cancel(task) => {
                black_box(device.task_status(task, TaskStatus::Cancelled, now)).ok();
            }
            Event::ApplyPolicy { version } => {
                black_box(device.pending_policy());
                let outcome = black_box(PolicyOutcome::Applied);
                black_box(device.policy_applied(version, outcome, now)).ok();
            }
            other => {
                black_box(other);
            }
        }
    }
}

#[panic_handler]
fn panic(_: &PanicInfo) -> ! {
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}
