//! The test vectors of `PROTOCOL.md`, checked against the code in both directions.
//!
//! The test reads `PROTOCOL.md` itself. Vectors there are lines of three shapes,
//! read only inside fenced blocks (so prose never counts):
//!
//! ```text
//! message NAME: the value, as the test renders it (Rust `Debug` for messages)
//! vector NAME: the bytes in hex (spaces are ignored)
//! bound NAME: a size in bytes, in decimal
//! ```
//!
//! Every vector the test knows must be in the document exactly once with the
//! same description and bytes, and the document may hold no vector the test
//! does not know. For messages, the documented bytes must decode to the
//! documented message, and encoding the message must give exactly those bytes.
//!
//! To print every line afresh after a deliberate change of the wire format:
//! `cargo test --test protocol_vectors -- --ignored --nocapture print_vectors`.
//!
//! The last section holds conformance tests for rules `PROTOCOL.md` states
//! that found bugs when the specification was written.

mod common;

use core::fmt::Write as _;
use std::collections::BTreeMap;

use mdm_sync::auth;
use mdm_sync::device::{Device, DeviceConfig, Event};
use mdm_sync::server::{MemoryStore, Server, ServerConfig, ServerEvent, TaskOptions, TaskState};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::{
    self, frame, ComplianceEvent, DeviceId, Down, ErrorCode, FrameDecoder, Hello, Platform, Policy,
    PolicyOutcome, PolicyReport, ReportBody, Setting, SettingFailure, SyncTrigger, Task, TaskId,
    TaskKind, TaskResult, TaskStatus, Up, MAX_PAYLOAD, PROTOCOL_VERSION, PUSH_TOKEN_MAX,
};

// ---- the values behind the vectors ------------------------------------------

const MASTER: [u8; 32] = counting(0x00);
const NONCE_SEED: [u8; 32] = counting(0x20);
const NONCE_COUNTER: u64 = 1;
const DEVICE: DeviceId = DeviceId(1001);
const GENERATION: u32 = 2;

const fn counting(start: u8) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = start + i as u8;
        i += 1;
    }
    out
}

fn secret() -> auth::Secret {
    auth::derive_secret(&MASTER, DEVICE, GENERATION)
}

fn nonce() -> [u8; 16] {
    auth::nonce(&NONCE_SEED, NONCE_COUNTER)
}

/// The key of every frame after the challenge.
fn key() -> u32 {
    frame::session_key(&nonce())
}

/// The payload of the `hello` vector (26 bytes: the proof's block holds it).
fn hello_payload() -> Vec<u8> {
    frame::payload(&encode_frame(&Up::Hello(hello()), 0)).to_vec()
}

/// The payload of the `hello-long` vector (longer than 31 bytes: the proof's
/// block holds its SHA-256).
fn hello_long_payload() -> Vec<u8> {
    frame::payload(&encode_frame(&Up::Hello(hello_long()), 0)).to_vec()
}

fn hello_long_hash() -> [u8; 32] {
    auth::hello_hash(&hello_long_payload())
}

fn proof() -> [u8; 32] {
    auth::proof(&secret(), &nonce(), &auth::bind_hello(&hello_payload()))
}

fn proof_long() -> [u8; 32] {
    auth::proof(
        &secret(),
        &nonce(),
        &auth::bind_hello(&hello_long_payload()),
    )
}

/// `Hello.attempt` of a new device's first connection: boot snapshot 1,
/// connection 1.
const ATTEMPT: u64 = (1 << 32) + 1;

fn hello() -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        attempt: ATTEMPT,
        device: DEVICE,
        generation: GENERATION,
        platform: Platform::Android,
        push_token: heapless::String::try_from("fcm:eX4mPle").unwrap(),
        trigger: SyncTrigger::Push,
        last_task_seq: 7,
        policy_version: 3,
    }
}

/// The `hello` vector's `Hello` with a 29-byte push token.
fn hello_long() -> Hello {
    Hello {
        push_token: heapless::String::try_from("fcm:eX4mPle-a-longer-t0ken-29").unwrap(),
        ..hello()
    }
}

fn task_report(seq: u32, task: u64, status: TaskStatus) -> Up {
    let body = ReportBody::Task {
        task: TaskId(task),
        status,
    };
    Up::Report { seq, body }
}

fn policy_report(seq: u32, outcome: PolicyOutcome) -> Up {
    let body = ReportBody::Policy(PolicyReport {
        version: 4,
        outcome,
    });
    Up::Report { seq, body }
}

fn two_failures() -> PolicyOutcome {
    let failed = [
        SettingFailure { key: 2, reason: 7 },
        SettingFailure {
            key: 9,
            reason: 300,
        },
    ];
    PolicyOutcome::Partial {
        failed: heapless::Vec::from_slice(&failed).unwrap(),
    }
}

fn two_settings() -> Policy {
    let settings = [
        Setting { key: 1, value: 1 },
        Setting {
            key: 2,
            value: -300,
        },
    ];
    Policy {
        version: 4,
        settings: heapless::Vec::from_slice(&settings).unwrap(),
    }
}

fn rio() -> TaskResult {
    TaskResult::Location {
        lat_e7: -229_068_467,
        lon_e7: -431_728_965,
        accuracy_m: 25,
    }
}

// ---- vectors ----------------------------------------------------------------

/// What the bytes of a vector must be, beyond being equal to the document's.
enum Check {
    /// A frame holding this device-to-server message.
    Up(Up),
    /// A frame holding this server-to-device message.
    Down(Down),
    /// A frame whose payload is a Hello of this foreign version.
    ForeignHello(u16),
    /// Plain bytes (keys, MACs, CRCs, snapshots).
    Bytes,
}

struct Vector {
    name: String,
    message: String,
    bytes: Vec<u8>,
    check: Check,
    // The session key of a frame (0: sent before or as the challenge).
    key: u32,
}

/// The key a frame carries in the documented session: none for the `Hello`,
/// the `Challenge` and a version mismatch (answers to a `Hello`), the
/// session's key for everything after the challenge.
fn up_key(msg: &Up) -> u32 {
    if matches!(msg, Up::Hello(_)) {
        0
    } else {
        key()
    }
}

fn down_key(msg: &Down) -> u32 {
    match msg {
        Down::Challenge { .. } | Down::Error(ErrorCode::VersionMismatch { .. }) => 0,
        _ => key(),
    }
}

fn up(name: &str, msg: Up) -> Vector {
    let key = up_key(&msg);
    Vector {
        name: name.into(),
        message: format!("Up::{msg:?}"),
        bytes: encode_frame(&msg, key),
        check: Check::Up(msg),
        key,
    }
}

fn down(name: &str, msg: Down) -> Vector {
    let key = down_key(&msg);
    Vector {
        name: name.into(),
        message: format!("Down::{msg:?}"),
        bytes: encode_frame(&msg, key),
        check: Check::Down(msg),
        key,
    }
}

fn raw(name: &str, message: String, bytes: Vec<u8>) -> Vector {
    Vector {
        name: name.into(),
        message,
        bytes,
        check: Check::Bytes,
        key: 0,
    }
}

fn encode_frame<T: wire::Encode>(msg: &T, key: u32) -> Vec<u8> {
    let mut buf = [0u8; frame::MAX_FRAME];
    let n = frame::encode_keyed(msg, &mut buf, key).expect("every vector fits a frame");
    buf[..n].to_vec()
}

fn down_frame(msg: &Down) -> Vec<u8> {
    encode_frame(msg, down_key(msg))
}

/// Frames a raw payload the way the codec does (for payloads no type encodes).
fn frame_payload(payload: &[u8]) -> Vec<u8> {
    common::raw_frame(payload, 0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Every vector, in the order of the document.
fn vectors() -> Vec<Vector> {
    let mut v = auth_vectors();
    v.extend(up_vectors());
    v.extend(down_vectors());
    let next = PROTOCOL_VERSION + 1;
    v.push(Vector {
        name: foreign_hello(),
        message: format!(
            "a Hello from a version-{next} device: tag 0, version {next}, then bytes \
             version {PROTOCOL_VERSION} cannot read"
        ),
        // The version as a one-byte varint.
        bytes: frame_payload(&[0x00, next as u8, 0xff, 0xff, 0xff]),
        check: Check::ForeignHello(next),
        key: 0,
    });
    v.push(snapshot_vector());
    v
}

/// The name of the vector of a `Hello` from the next protocol version.
fn foreign_hello() -> String {
    const {
        assert!(
            PROTOCOL_VERSION < 0x7F,
            "the vector writes the version as one byte"
        )
    };
    format!("hello-v{}", PROTOCOL_VERSION + 1)
}

fn auth_vectors() -> Vec<Vector> {
    let crc = wire::crc32(b"123456789");
    vec![
        raw(
            "crc-check",
            format!("CRC-32/ISO-HDLC of ASCII \"123456789\" = 0x{crc:08X}, little-endian"),
            crc.to_le_bytes().to_vec(),
        ),
        raw(
            "master-block",
            format!(
                "master {} || \"mdm-sync/4 secret key\" zero-padded to 32 bytes",
                hex(&MASTER)
            ),
            master_block().to_vec(),
        ),
        raw(
            "master-state",
            "M = C(SHA-256 initial state, master-block)".into(),
            compress(&SHA256_IV, &master_block()).to_vec(),
        ),
        raw(
            "secret-block",
            format!(
                "\"mdm-sync/4 secret\" || device {} (u64 LE) || generation {GENERATION} (u32 LE) \
                 || 35 zero bytes",
                DEVICE.0
            ),
            secret_block().to_vec(),
        ),
        raw(
            "secret",
            "C(master-state, secret-block)".into(),
            secret().to_vec(),
        ),
        raw(
            "nonce-input",
            format!(
                "\"mdm-sync/2 nonce pairs\" zero-padded to 32 bytes || block {} (u64 LE)",
                (NONCE_COUNTER - 1) / 2
            ),
            nonce_input(),
        ),
        raw(
            "nonce",
            format!(
                "nonce {NONCE_COUNTER}: first 16 bytes of SHA-256(seed {} || nonce-input)",
                hex(&NONCE_SEED)
            ),
            nonce().to_vec(),
        ),
        raw(
            "session-key",
            format!(
                "the first 4 bytes of the nonce: key 0x{:08X}, little-endian",
                key()
            ),
            key().to_le_bytes().to_vec(),
        ),
        raw(
            "proof-block",
            format!(
                "\"mdm-sync/6 short\" || nonce {} || the hello vector's payload ({} bytes) \
                 zero-padded to 31 bytes || its length",
                hex(&nonce()),
                hello_payload().len()
            ),
            proof_block(),
        ),
        raw(
            "proof",
            format!("C(secret {}, proof-block)", hex(&secret())),
            proof().to_vec(),
        ),
        raw(
            "hello-long-hash",
            format!(
                "SHA-256 of the payload of the hello-long vector below ({} bytes)",
                hello_long_payload().len()
            ),
            hello_long_hash().to_vec(),
        ),
        raw(
            "proof-block-long",
            format!(
                "\"mdm-sync/4 proof\" || nonce {} || hello-long-hash {}",
                hex(&nonce()),
                hex(&hello_long_hash())
            ),
            proof_block_long(),
        ),
        raw(
            "proof-long",
            format!("C(secret {}, proof-block-long)", hex(&secret())),
            proof_long().to_vec(),
        ),
    ]
}

/// SHA-256's initial state, as 32 bytes.
const SHA256_IV: [u8; 32] = [
    0x6a, 0x09, 0xe6, 0x67, 0xbb, 0x67, 0xae, 0x85, 0x3c, 0x6e, 0xf3, 0x72, 0xa5, 0x4f, 0xf5, 0x3a,
    0x51, 0x0e, 0x52, 0x7f, 0x9b, 0x05, 0x68, 0x8c, 0x1f, 0x83, 0xd9, 0xab, 0x5b, 0xe0, 0xcd, 0x19,
];

/// `C(state, block)` of PROTOCOL.md section 6: SHA-256's compression
/// function on one block, the state as 32 big-endian bytes both ways.
fn compress(state: &[u8], block: &[u8]) -> [u8; 32] {
    let mut words: [u32; 8] =
        core::array::from_fn(|i| u32::from_be_bytes(state[4 * i..4 * i + 4].try_into().unwrap()));
    let block: [u8; 64] = block.try_into().expect("one 64-byte block");
    sha2::block_api::compress256(&mut words, &[block]);
    let out: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
    out.try_into().unwrap()
}

fn master_block() -> Vec<u8> {
    let mut m = MASTER.to_vec();
    m.extend_from_slice(b"mdm-sync/4 secret key");
    m.resize(64, 0);
    m
}

fn secret_block() -> Vec<u8> {
    let mut m = b"mdm-sync/4 secret".to_vec();
    m.extend_from_slice(&DEVICE.0.to_le_bytes());
    m.extend_from_slice(&GENERATION.to_le_bytes());
    m.resize(64, 0);
    m
}

fn nonce_input() -> Vec<u8> {
    let mut m = b"mdm-sync/2 nonce pairs".to_vec();
    m.resize(32, 0);
    m.extend_from_slice(&((NONCE_COUNTER - 1) / 2).to_le_bytes());
    m
}

fn proof_block() -> Vec<u8> {
    let mut m = b"mdm-sync/6 short".to_vec();
    m.extend_from_slice(&nonce());
    let hello = hello_payload();
    m.extend_from_slice(&hello);
    m.resize(63, 0);
    m.push(hello.len() as u8);
    m
}

fn proof_block_long() -> Vec<u8> {
    let mut m = b"mdm-sync/4 proof".to_vec();
    m.extend_from_slice(&nonce());
    m.extend_from_slice(&hello_long_hash());
    m
}

fn up_vectors() -> Vec<Vector> {
    use ComplianceEvent as C;
    use TaskStatus as S;
    let compliance = [
        ("compliance-profile-changed", C::ProfileChanged),
        (
            "compliance-device-admin",
            C::DeviceAdminChanged { active: false },
        ),
        (
            "compliance-blocked-page",
            C::BlockedPageVisited { category: 12 },
        ),
        (
            "compliance-password-overdue",
            C::PasswordOverdue { days: 3 },
        ),
        (
            "compliance-malware-persisting",
            C::MalwarePersisting { threats: 1 },
        ),
        (
            "compliance-usb-debugging",
            C::UsbDebugging { enabled: true },
        ),
        ("compliance-manual-scan", C::ManualScanResult { threats: 0 }),
    ];
    let mut v = vec![
        up("hello", Up::Hello(hello())),
        up("proof-frame", Up::Proof { mac: proof() }),
        up("hello-long", Up::Hello(hello_long())),
        up(
            "progress",
            Up::Progress {
                task: TaskId(502),
                percent: Some(40),
            },
        ),
        up(
            "progress-unknown",
            Up::Progress {
                task: TaskId(503),
                percent: None,
            },
        ),
        up("report-received", task_report(6, 500, S::Received)),
        up(
            "report-succeeded-location",
            task_report(
                7,
                503,
                S::Succeeded {
                    result: Some(rio()),
                },
            ),
        ),
        up(
            "report-succeeded-scan",
            task_report(
                8,
                502,
                S::Succeeded {
                    result: Some(TaskResult::Scan { threats: 2 }),
                },
            ),
        ),
        up(
            "report-succeeded",
            task_report(9, 500, S::Succeeded { result: None }),
        ),
        up(
            "report-failed",
            task_report(10, 501, S::Failed { reason: 300 }),
        ),
        up(
            "report-deferred",
            task_report(
                11,
                504,
                S::Deferred {
                    retry_after_s: Some(600),
                },
            ),
        ),
        up(
            "report-deferred-no-hint",
            task_report(
                12,
                504,
                S::Deferred {
                    retry_after_s: None,
                },
            ),
        ),
        up("report-cancelled", task_report(13, 502, S::Cancelled)),
    ];
    for (k, (name, event)) in compliance.into_iter().enumerate() {
        let body = ReportBody::Compliance(event);
        v.push(up(
            name,
            Up::Report {
                seq: 14 + k as u32,
                body,
            },
        ));
    }
    v.push(up(
        "policy-applied",
        policy_report(21, PolicyOutcome::Applied),
    ));
    v.push(up("policy-partial", policy_report(22, two_failures())));
    v.push(up(
        "policy-rejected",
        policy_report(23, PolicyOutcome::Rejected { reason: 1 }),
    ));
    v
}

fn down_vectors() -> Vec<Vector> {
    let mut v = vec![
        down(
            "challenge",
            Down::Challenge {
                version: PROTOCOL_VERSION,
                attempt: ATTEMPT,
                nonce: nonce(),
            },
        ),
        down(
            "welcome",
            Down::Welcome {
                ack: 5,
                periodic_s: 10_800,
                want_token: false,
            },
        ),
        down(
            "welcome-want-token",
            Down::Welcome {
                ack: 5,
                periodic_s: 10_800,
                want_token: true,
            },
        ),
    ];
    for (k, kind) in TaskKind::ALL.into_iter().enumerate() {
        let name = format!("task-{kind:?}").to_lowercase();
        let task = Task {
            seq: 8 + k as u32,
            id: TaskId(500 + k as u64),
            kind,
        };
        v.push(down(&name, Down::Task(task)));
    }
    v.extend([
        down("ack", Down::Ack { seq: 300 }),
        down("cancel", Down::Cancel { task: TaskId(504) }),
        down("policy", Down::Policy(two_settings())),
        down("sync-end", Down::SyncEnd),
    ]);
    let errors = [
        (
            "error-version-mismatch",
            ErrorCode::VersionMismatch {
                supported: PROTOCOL_VERSION,
            },
        ),
        ("error-auth-failed", ErrorCode::AuthFailed),
        ("error-bad-message", ErrorCode::BadMessage),
        ("error-sequence-gap", ErrorCode::SequenceGap),
        ("error-timeout", ErrorCode::Timeout),
        ("error-busy", ErrorCode::Busy),
    ];
    for (name, code) in errors {
        v.push(down(name, Down::Error(code)));
    }
    v
}

/// A device that accepted one task (its Received report not yet sent).
fn snapshot_vector() -> Vector {
    let mut d = fresh_device();
    handshake(&mut d, Instant::ZERO);
    let task = Task {
        seq: 1,
        id: TaskId(500),
        kind: TaskKind::Lock,
    };
    d.handle_bytes(&down_frame(&Down::Task(task)), Instant::ZERO)
        .unwrap();
    assert_eq!(d.poll_event(), Some(Event::Persist));
    let mut buf = [0u8; Device::<16, 4>::SNAPSHOT_MAX];
    let n = d.snapshot(&mut buf).unwrap();
    let message = format!(
        "device {} generation {GENERATION}, slot {}, after accepting {task:?} with the \
         default 3 h periodic interval",
        DEVICE.0,
        d.snapshot_slot()
    );
    raw("snapshot", message, buf[..n].to_vec())
}

fn device_config() -> DeviceConfig {
    DeviceConfig::new(DEVICE, GENERATION, secret(), Platform::Android)
}

fn fresh_device() -> Device {
    Device::new(device_config(), Instant::ZERO)
}

/// Runs a device through the handshake against hand-made server frames.
fn handshake<const O: usize, const I: usize>(d: &mut Device<O, I>, now: Instant) {
    d.handle_timeout(now);
    while let Some(ev) = d.poll_event() {
        if ev == Event::Connect {
            d.connected(now);
        }
    }
    let mut buf = [0u8; frame::MAX_FRAME];
    let n = d.poll_transmit(&mut buf).unwrap().expect("hello");
    let Ok(Up::Hello(hello)) = wire::decode::<Up>(frame::payload(&buf[..n])) else {
        panic!("not a hello");
    };
    let challenge = Down::Challenge {
        version: PROTOCOL_VERSION,
        attempt: hello.attempt,
        nonce: nonce(),
    };
    d.handle_bytes(&down_frame(&challenge), now).unwrap();
    assert!(d.poll_transmit(&mut buf).unwrap().is_some(), "proof");
    let welcome = Down::Welcome {
        ack: 0,
        periodic_s: 0,
        want_token: false,
    };
    d.handle_bytes(&down_frame(&welcome), now).unwrap();
}

// ---- bounds -------------------------------------------------------------------

fn payload_len<T: wire::Encode>(msg: &T) -> usize {
    let mut buf = [0u8; MAX_PAYLOAD];
    wire::encode_payload(msg, &mut buf).expect("every message fits MAX_PAYLOAD")
}

/// The largest payload of each message, from an instance with every field at
/// its longest encoding.
fn bounds() -> Vec<(&'static str, usize)> {
    let max_hello = Up::Hello(Hello {
        version: u16::MAX,
        attempt: u64::MAX,
        device: DeviceId(u64::MAX),
        generation: u32::MAX,
        platform: Platform::Ios,
        push_token: core::iter::repeat_n('x', PUSH_TOKEN_MAX).collect(),
        trigger: SyncTrigger::Report,
        last_task_seq: u32::MAX,
        policy_version: u32::MAX,
    });
    let max_location = task_report(
        u32::MAX,
        u64::MAX,
        TaskStatus::Succeeded {
            result: Some(TaskResult::Location {
                lat_e7: i32::MIN,
                lon_e7: i32::MIN,
                accuracy_m: u32::MAX,
            }),
        },
    );
    let failure = SettingFailure {
        key: u16::MAX,
        reason: u16::MAX,
    };
    let max_partial = Up::Report {
        seq: u32::MAX,
        body: ReportBody::Policy(PolicyReport {
            version: u32::MAX,
            outcome: PolicyOutcome::Partial {
                failed: heapless::Vec::from_slice(&[failure; 4]).unwrap(),
            },
        }),
    };
    let setting = Setting {
        key: u16::MAX,
        value: i64::MIN,
    };
    let max_policy = Down::Policy(Policy {
        version: u32::MAX,
        settings: heapless::Vec::from_slice(&[setting; 16]).unwrap(),
    });
    let max_task = Down::Task(Task {
        seq: u32::MAX,
        id: TaskId(u64::MAX),
        kind: TaskKind::Wipe,
    });
    let up = [
        ("hello", payload_len(&max_hello)),
        ("proof", payload_len(&Up::Proof { mac: [0xff; 32] })),
        (
            "progress",
            payload_len(&Up::Progress {
                task: TaskId(u64::MAX),
                percent: Some(100),
            }),
        ),
        (
            "report",
            payload_len(&max_location).max(payload_len(&max_partial)),
        ),
    ];
    let error = Down::Error(ErrorCode::VersionMismatch {
        supported: u16::MAX,
    });
    let down = [
        (
            "challenge",
            payload_len(&Down::Challenge {
                version: u16::MAX,
                attempt: u64::MAX,
                nonce: [0xff; 16],
            }),
        ),
        (
            "welcome",
            payload_len(&Down::Welcome {
                ack: u32::MAX,
                periodic_s: u32::MAX,
                want_token: true,
            }),
        ),
        ("ack", payload_len(&Down::Ack { seq: u32::MAX })),
        ("task", payload_len(&max_task)),
        (
            "cancel",
            payload_len(&Down::Cancel {
                task: TaskId(u64::MAX),
            }),
        ),
        ("policy", payload_len(&max_policy)),
        ("sync-end", payload_len(&Down::SyncEnd)),
        ("error", payload_len(&error)),
    ];
    let max_up = up.iter().map(|b| b.1).max().unwrap();
    let max_down = down.iter().map(|b| b.1).max().unwrap();
    let mut all: Vec<_> = up.into_iter().chain(down).collect();
    all.push(("up-frame", max_up + frame::OVERHEAD));
    all.push(("down-frame", max_down + frame::OVERHEAD));
    all
}

// ---- reading the document -------------------------------------------------------

#[derive(Default)]
struct Doc {
    messages: BTreeMap<String, String>,
    vectors: BTreeMap<String, Vec<u8>>,
    bounds: BTreeMap<String, usize>,
}

fn read_doc() -> Doc {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/PROTOCOL.md");
    let text = std::fs::read_to_string(path).expect("PROTOCOL.md at the crate root");
    let mut doc = Doc::default();
    let mut fenced = false;
    for (no, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            continue; // vectors live in fenced blocks; prose is never parsed
        }
        let Some((shape, rest)) = line.split_once(' ') else {
            continue;
        };
        let Some((name, value)) = rest.split_once(": ") else {
            continue;
        };
        let (name, value) = (name.trim().to_string(), value.trim());
        let dup = match shape {
            "message" => doc.messages.insert(name.clone(), value.into()).is_some(),
            "vector" => doc
                .vectors
                .insert(name.clone(), parse_hex(value, no))
                .is_some(),
            "bound" => {
                let n = value
                    .parse()
                    .unwrap_or_else(|_| panic!("line {}: bad bound", no + 1));
                doc.bounds.insert(name.clone(), n).is_some()
            }
            _ => false,
        };
        assert!(
            !dup,
            "PROTOCOL.md line {}: {shape} {name} appears twice",
            no + 1
        );
    }
    doc
}

fn parse_hex(s: &str, line: usize) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(
        digits.len().is_multiple_of(2),
        "PROTOCOL.md line {}: odd hex",
        line + 1
    );
    digits
        .chunks(2)
        .map(|p| {
            let p = core::str::from_utf8(p).unwrap();
            u8::from_str_radix(p, 16)
                .unwrap_or_else(|_| panic!("PROTOCOL.md line {}: bad hex {p}", line + 1))
        })
        .collect()
}

/// Hex as the document writes it: frames split into magic, length, payload
/// and CRC; other bytes in groups of 16.
fn doc_hex(v: &Vector) -> String {
    let b = &v.bytes;
    if matches!(v.check, Check::Bytes) {
        let groups: Vec<String> = b.chunks(16).map(hex).collect();
        return groups.join(" ");
    }
    let crc_at = b.len() - 4;
    format!(
        "{} {} {} {}",
        hex(&b[..2]),
        hex(&b[2..4]),
        hex(&b[4..crc_at]),
        hex(&b[crc_at..])
    )
}

// ---- the tests ----------------------------------------------------------------

#[test]
#[ignore = "prints the vector lines for PROTOCOL.md"]
fn print_vectors() {
    for v in vectors() {
        println!("message {}: {}", v.name, v.message);
        println!("vector {}: {}", v.name, doc_hex(&v));
        println!();
    }
    for (name, n) in bounds() {
        println!("bound {name}: {n}");
    }
}

#[test]
fn every_vector_in_the_document_matches_the_code() {
    let doc = read_doc();
    let vectors = vectors();
    let mut failures = Vec::new();
    for v in &vectors {
        match doc.messages.get(&v.name) {
            None => failures.push(format!("message {} is missing", v.name)),
            Some(m) if *m != v.message => failures.push(format!(
                "message {}: document says\n  {m}\ncode says\n  {}",
                v.name, v.message
            )),
            Some(_) => {}
        }
        match doc.vectors.get(&v.name) {
            None => failures.push(format!("vector {} is missing", v.name)),
            Some(bytes) => {
                if *bytes != v.bytes {
                    failures.push(format!(
                        "vector {}: document has\n  {}\ncode encodes\n  {}",
                        v.name,
                        hex(bytes),
                        doc_hex(v)
                    ));
                }
                if let Err(e) = check_decodes(bytes, &v.check, v.key) {
                    failures.push(format!("vector {}: {e}", v.name));
                }
            }
        }
    }
    for name in doc.vectors.keys().chain(doc.messages.keys()) {
        if !vectors.iter().any(|v| v.name == *name) {
            failures.push(format!("{name} is in the document but not in this test"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Decodes documented bytes as the check says, independently of the encoder;
/// frames must check with `key` and only with it.
fn check_decodes(bytes: &[u8], check: &Check, key: u32) -> Result<(), String> {
    if matches!(check, Check::Bytes) {
        return Ok(());
    }
    let mut other = FrameDecoder::<{ frame::MAX_FRAME }>::new();
    other.set_key(key ^ 1);
    other.push(bytes);
    if matches!(other.decode(), Some(Ok(_))) {
        return Err("also checks with another session's key".into());
    }
    let mut dec = FrameDecoder::<{ frame::MAX_FRAME }>::new();
    dec.set_key(key);
    if dec.push(bytes) != bytes.len() {
        return Err("longer than a frame".into());
    }
    let payload = match dec.decode() {
        Some(Ok(p)) => p.to_vec(),
        other => return Err(format!("not one frame: {other:?}")),
    };
    if dec.decode().is_some() || dec.buffered() != 0 {
        return Err("bytes after the frame".into());
    }
    match check {
        Check::Up(m) => match wire::decode::<Up>(&payload) {
            Ok(got) if got == *m => Ok(()),
            got => Err(format!("decodes to {got:?}")),
        },
        Check::Down(m) => match wire::decode::<Down>(&payload) {
            Ok(got) if got == *m => Ok(()),
            got => Err(format!("decodes to {got:?}")),
        },
        Check::ForeignHello(v) => {
            if wire::peek_version(&payload) != Some(*v) {
                return Err("version not readable".into());
            }
            match wire::decode::<Up>(&payload) {
                Err(_) => Ok(()),
                Ok(m) => Err(format!("decodes as this version's {m:?}")),
            }
        }
        Check::Bytes => Ok(()),
    }
}

#[test]
fn every_bound_in_the_document_matches_the_code() {
    let doc = read_doc();
    let bounds = bounds();
    for (name, n) in &bounds {
        assert!(*n <= MAX_PAYLOAD + frame::OVERHEAD, "{name}: {n}");
        assert_eq!(doc.bounds.get(*name), Some(n), "bound {name}");
    }
    for name in doc.bounds.keys() {
        assert!(
            bounds.iter().any(|(b, _)| b == name),
            "bound {name} is in the document but not in this test"
        );
    }
}

/// The documented blocks give the library's outputs with SHA-256's
/// compression function applied as section 6 says (as a C implementation
/// would compute them), and the master state is SHA-256's own state after
/// the master block.
#[test]
fn auth_vectors_follow_from_their_documented_inputs() {
    let doc = read_doc();
    let get = |name: &str| doc.vectors.get(name).cloned().expect(name);
    assert_eq!(get("master-block"), master_block());
    assert_eq!(get("master-block")[..32], MASTER, "the master key first");
    let master_state = compress(&SHA256_IV, &get("master-block"));
    assert_eq!(master_state.to_vec(), get("master-state"));
    // One padding block (0x80, zeros, bit length 512) more is SHA-256 of
    // the master block: the master state is SHA-256's after its first block.
    let mut padding = [0u8; 64];
    padding[0] = 0x80;
    padding[56..].copy_from_slice(&512u64.to_be_bytes());
    let sha = <sha2::Sha256 as sha2::Digest>::digest(get("master-block"));
    assert_eq!(compress(&master_state, &padding)[..], sha[..]);
    let mut empty = [0u8; 64];
    empty[0] = 0x80;
    let sha = <sha2::Sha256 as sha2::Digest>::digest(b"");
    assert_eq!(
        compress(&SHA256_IV, &empty)[..],
        sha[..],
        "the initial state"
    );
    assert_eq!(get("secret-block"), secret_block());
    assert_eq!(
        compress(&get("master-state"), &get("secret-block")).to_vec(),
        get("secret")
    );
    let mut nonce_block = NONCE_SEED.to_vec();
    nonce_block.extend_from_slice(&get("nonce-input"));
    let nonce_block = <sha2::Sha256 as sha2::Digest>::digest(&nonce_block);
    assert_eq!(
        nonce_block[..16],
        get("nonce"),
        "nonce 1: the block's first half"
    );
    // The hello vector's payload (26 bytes) in the block as it is.
    let hello = get("hello");
    let payload = &hello[4..hello.len() - 4];
    assert!(payload.len() <= 31);
    let mut block = b"mdm-sync/6 short".to_vec();
    block.extend_from_slice(&get("nonce"));
    block.extend_from_slice(payload);
    block.resize(63, 0);
    block.push(payload.len() as u8);
    assert_eq!(block, get("proof-block"));
    assert_eq!(
        compress(&get("secret"), &get("proof-block")).to_vec(),
        get("proof")
    );
    // The hello-long vector's payload by its SHA-256.
    let long = get("hello-long");
    let long_payload = &long[4..long.len() - 4];
    assert!(long_payload.len() > 31);
    let sha = <sha2::Sha256 as sha2::Digest>::digest(long_payload);
    assert_eq!(sha.to_vec(), get("hello-long-hash"));
    let mut block = b"mdm-sync/4 proof".to_vec();
    block.extend_from_slice(&get("nonce"));
    block.extend_from_slice(&get("hello-long-hash"));
    assert_eq!(block, get("proof-block-long"));
    assert_eq!(
        compress(&get("secret"), &get("proof-block-long")).to_vec(),
        get("proof-long")
    );
    assert_eq!(get("session-key"), get("nonce")[..4]);
    let mac: [u8; 32] = get("proof").try_into().unwrap();
    let nonce: [u8; 16] = get("nonce").try_into().unwrap();
    let secret: [u8; 32] = get("secret").try_into().unwrap();
    assert!(auth::verify(
        &secret,
        &nonce,
        &auth::bind_hello(payload),
        &mac
    ));
    let mac_long: [u8; 32] = get("proof-long").try_into().unwrap();
    let bound = auth::bind_hello(long_payload);
    assert!(auth::verify(&secret, &nonce, &bound, &mac_long));
    assert_eq!(
        get("proof-frame")[4..5],
        [1],
        "Proof is tag 1, then the raw MAC"
    );
    assert_eq!(get("proof-frame")[5..37], mac);
}

/// The documented snapshot restores, and its running task is reported failed.
#[test]
fn snapshot_vector_restores() {
    let doc = read_doc();
    let bytes = doc.vectors.get("snapshot").expect("snapshot vector");
    let mut d: Device = Device::restore(device_config(), bytes, Instant::ZERO).unwrap();
    assert_eq!(d.last_task_seq(), 1);
    assert_eq!(
        d.running_tasks().count(),
        0,
        "interrupted task is not re-run"
    );
    assert_eq!(
        d.outbox_len(),
        2,
        "Received, then Failed(interrupted by reboot)"
    );
    assert_eq!(d.periodic_interval(), Duration::from_hours(3));
    assert_eq!(d.poll_event(), Some(Event::Persist));
    // The restored reports leave as the very bytes of the reports they stand for.
    handshake(&mut d, Instant::ZERO);
    let interrupted = TaskStatus::Failed {
        reason: wire::reason::INTERRUPTED_BY_REBOOT,
    };
    for (seq, status) in [(1, TaskStatus::Received), (2, interrupted)] {
        let mut buf = [0u8; frame::MAX_FRAME];
        let n = d.poll_transmit(&mut buf).unwrap().expect("a report");
        assert_eq!(
            buf[..n],
            encode_frame(&task_report(seq, 500, status), key())
        );
    }
}

/// A server answers the documented foreign Hello with the documented error.
#[test]
fn server_answers_a_foreign_hello_with_the_version_mismatch_vector() {
    let doc = read_doc();
    let mut s = Server::new(
        ServerConfig::default(),
        MemoryStore::new(),
        MASTER,
        NONCE_SEED,
    );
    let conn = s.connection_opened(Instant::ZERO).unwrap();
    let hello = &doc.vectors[&foreign_hello()];
    assert!(s.handle_bytes(conn, hello, Instant::ZERO).is_err());
    let mut buf = [0u8; 64];
    let n = s.poll_transmit_for(conn, &mut buf).unwrap();
    assert_eq!(buf[..n], doc.vectors["error-version-mismatch"]);
}

/// The server's first nonce is the documented one, and the documented
/// Hello/Proof pair gets the device in.
#[test]
fn server_handshake_reproduces_the_vectors() {
    let doc = read_doc();
    let now = Instant::ZERO;
    let mut s = Server::new(
        ServerConfig::default(),
        MemoryStore::new(),
        MASTER,
        NONCE_SEED,
    );
    for _ in 0..=GENERATION {
        s.enroll(DEVICE, now).unwrap();
    }
    let conn = s.connection_opened(now).unwrap();
    s.handle_bytes(conn, &doc.vectors["hello"], now).unwrap();
    let mut buf = [0u8; 1024];
    let n = s.poll_transmit_for(conn, &mut buf).unwrap();
    assert_eq!(buf[..n], doc.vectors["challenge"]);
    s.handle_bytes(conn, &doc.vectors["proof-frame"], now)
        .unwrap();
    let authenticated = core::iter::from_fn(|| s.poll_event())
        .any(|e| matches!(e, ServerEvent::Authenticated { device, .. } if device == DEVICE));
    assert!(authenticated);
}

// ---- conformance: rules of PROTOCOL.md that the code once broke -----------------

/// PROTOCOL.md, "Task delivery": a device without room leaves an offer
/// unaccepted, and every later offer of the same session too; that is not a
/// sequence gap. It syncs again so that the server offers them anew.
#[test]
fn offers_left_for_lack_of_room_do_not_fail_the_session() {
    let mut now = Instant::ZERO;
    let mut s = Server::new(
        ServerConfig::default(),
        MemoryStore::new(),
        MASTER,
        NONCE_SEED,
    );
    let secret = s.enroll(DEVICE, now).unwrap();
    let cfg = DeviceConfig::new(DEVICE, 0, secret, Platform::Android);
    let mut d: Device<4, 4> = Device::new(cfg, now);
    // Compliance events may fill all but the slot kept for a policy report;
    // the first offer is then deferred into that slot and the rest are left.
    for _ in 0..3 {
        d.raise_compliance(ComplianceEvent::ProfileChanged, now)
            .unwrap();
    }
    let tasks: Vec<TaskId> = (0..3)
        .map(|_| {
            s.enqueue_task(DEVICE, TaskKind::Lock, TaskOptions::default(), now)
                .unwrap()
        })
        .collect();

    let mut conn = None;
    let mut failures = 0;
    let mut buf = [0u8; 4096];
    for _ in 0..200 {
        d.handle_timeout(now);
        s.handle_timeout(now).unwrap();
        while let Some(ev) = d.poll_event() {
            match ev {
                Event::Connect => {
                    conn = Some(s.connection_opened(now).unwrap());
                    d.connected(now);
                }
                Event::Disconnect => s.connection_closed(conn.take().unwrap(), now),
                Event::Execute(t) => d
                    .task_status(t.id, TaskStatus::Succeeded { result: None }, now)
                    .unwrap(),
                Event::SyncFailed { .. } => failures += 1,
                _ => {}
            }
        }
        if let Some(c) = conn {
            while let Some(n) = d.poll_transmit(&mut buf).unwrap() {
                let _ = s.handle_bytes(c, &buf[..n], now);
            }
            // All pending server frames at once, as one TCP read would bring them.
            let mut n = 0;
            while let Some(k) = s.poll_transmit_for(c, &mut buf[n..]) {
                n += k;
            }
            if n > 0 {
                let _ = d.handle_bytes(&buf[..n], now);
            }
        }
        while s.poll_event().is_some() {}
        now = now + Duration::from_secs(1);
    }
    assert_eq!(failures, 0, "no session may fail");
    for t in tasks {
        let state = s.task_state(DEVICE, t);
        assert_eq!(state, Some(TaskState::Succeeded { result: None }), "{t:?}");
    }
}

/// PROTOCOL.md, "Server timers": the handshake must complete within
/// `handshake_timeout` of the connection opening, however many bytes trickle in.
#[test]
fn trickled_bytes_do_not_extend_the_handshake() {
    let doc = read_doc();
    let cfg = ServerConfig::default();
    let mut s = Server::new(cfg, MemoryStore::new(), MASTER, NONCE_SEED);
    let conn = s.connection_opened(Instant::ZERO).unwrap();
    let mut now = Instant::ZERO;
    while now <= Instant::ZERO + cfg.handshake_timeout {
        s.handle_bytes(conn, &[0x00], now).unwrap();
        s.handle_timeout(now).unwrap();
        now = now + Duration::from_secs(10);
    }
    let mut buf = [0u8; 64];
    let n = s
        .poll_transmit_for(conn, &mut buf)
        .expect("a Timeout error frame");
    // Before any challenge, so with key 0 (the vector is keyed for a session).
    let want = frame::payload(&doc.vectors["error-timeout"]);
    assert_eq!(frame::payload(&buf[..n]), want);
    let mut dec = FrameDecoder::<64>::new();
    dec.push(&buf[..n]);
    assert_eq!(dec.decode(), Some(Ok(want)));
}

/// Where PROTOCOL.md says which version a device's `Hello` carries, it names
/// the version the code speaks (both places said 3 after version 4 came).
#[test]
fn the_spec_names_the_current_version_for_the_hello() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/PROTOCOL.md");
    let text = std::fs::read_to_string(path).expect("PROTOCOL.md at the crate root");
    let v = PROTOCOL_VERSION;
    for want in [
        format!("# mdm-sync protocol, version {v}\n"),
        format!("| protocol version the device speaks ({v}) |"),
        format!("`Hello` carries: `version` {v};"),
    ] {
        assert!(text.contains(&want), "PROTOCOL.md lacks: {want}");
    }
}
