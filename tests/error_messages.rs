//! The crate's errors implement `Display` and `core::error::Error`, so an
//! application can pass them on with `?` into `Box<dyn Error>` beside
//! `std::io::Error` (as README's restart snippet does: `os_seed()?` and
//! `server.recover(..)?` in one function), read a sentence rather than a
//! `Debug` dump that ends with its cause's message.

use core::error::Error;

use mdm_sync::adapters::os_seed;
use mdm_sync::device::{DeviceError, ProtocolError, SessionError, SnapshotError};
use mdm_sync::server::{MemoryStore, PeerError, Server, ServerConfig, ServerError};
use mdm_sync::time::Instant;
use mdm_sync::wire::{frame::FrameError, DecodeError, DeviceId, EncodeError, ErrorCode, TaskKind};

/// README's restart snippet, as a function an application would write.
fn restart(master_key: [u8; 32]) -> Result<Server<MemoryStore>, Box<dyn Error>> {
    let mut server = Server::new(
        ServerConfig::default(),
        MemoryStore::new(),
        master_key,
        os_seed()?,
    );
    server.recover(Instant::from_millis(1_000))?;
    Ok(server)
}

fn queue_for_unknown(server: &mut Server<MemoryStore>) -> Result<(), Box<dyn Error>> {
    server.enqueue_task(
        DeviceId(404),
        TaskKind::Lock,
        Default::default(),
        Instant::from_millis(2_000),
    )?;
    Ok(())
}

#[test]
fn server_errors_pass_through_question_mark_with_a_sentence() {
    let mut server = restart([3; 32]).unwrap();
    let e = queue_for_unknown(&mut server).unwrap_err();
    assert_eq!(e.to_string(), "no enrolled device has this id");
    assert!(e
        .downcast_ref::<ServerError<mdm_sync::server::MemoryStoreError>>()
        .is_some());
}

/// A wrapping error's message ends with its cause's, and `source()` is
/// empty: the cause is shown once, whether printed alone or by a printer
/// that walks the chain (one or the other, never both).
#[test]
fn messages_end_with_their_cause() {
    let decode = DecodeError::TrailingBytes;
    let protocol = ProtocolError::Decode(decode);
    let session = SessionError::Protocol(protocol);
    let device = DeviceError::Session(session);
    let chain = [
        device.to_string(),
        session.to_string(),
        protocol.to_string(),
        decode.to_string(),
    ];
    for pair in chain.windows(2) {
        assert!(
            pair[0].ends_with(&pair[1]) && pair[0] != pair[1],
            "{chain:?}"
        );
    }
    assert_eq!(chain[3], "the payload has bytes after its message");
    assert!(device.source().is_none());

    let peer = ServerError::<()>::Peer(PeerError::AuthFailed);
    assert_eq!(
        peer.to_string(),
        "the peer misbehaved: authentication failed"
    );
    assert!(peer.source().is_none());
}

/// Every variant reads as a sentence of its own: no two of one type alike,
/// none empty, none a `Debug` dump of the variant's name.
#[test]
fn every_variant_has_its_own_message() {
    fn distinct(messages: Vec<String>, debug_names: &[&str]) {
        for m in &messages {
            assert!(!m.is_empty());
            assert!(
                !debug_names.contains(&m.as_str()),
                "{m} is the variant's name"
            );
        }
        let mut sorted = messages.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), messages.len(), "{messages:?}");
    }
    let server: Vec<ServerError<&str>> = vec![
        ServerError::Store("disk full"),
        ServerError::UnknownConnection,
        ServerError::UnknownDevice,
        ServerError::UnknownTask,
        ServerError::AlreadyFinal(mdm_sync::server::TaskState::Queued),
        ServerError::QueueFull,
        ServerError::Busy,
        ServerError::PolicyTooLarge,
        ServerError::Peer(PeerError::Malformed),
    ];
    distinct(
        server.iter().map(ToString::to_string).collect(),
        &[
            "UnknownConnection",
            "UnknownDevice",
            "UnknownTask",
            "QueueFull",
            "Busy",
        ],
    );
    assert!(server[0].to_string().contains("disk full"));
    distinct(
        [
            PeerError::Malformed,
            PeerError::Unexpected,
            PeerError::VersionMismatch { device: 9 },
            PeerError::AuthFailed,
            PeerError::SequenceGap,
            PeerError::Superseded,
        ]
        .iter()
        .map(ToString::to_string)
        .collect(),
        &[
            "Malformed",
            "Unexpected",
            "AuthFailed",
            "SequenceGap",
            "Superseded",
        ],
    );
    distinct(
        [
            DeviceError::UnknownTask,
            DeviceError::InvalidStatus,
            DeviceError::OutboxFull,
            DeviceError::NoPendingPolicy,
            DeviceError::NotConnected,
            DeviceError::Session(SessionError::Timeout),
            DeviceError::Encode(EncodeError::BufferTooSmall { needed: 40 }),
        ]
        .iter()
        .map(ToString::to_string)
        .collect(),
        &["UnknownTask", "InvalidStatus", "OutboxFull", "NotConnected"],
    );
    distinct(
        [
            SessionError::ConnectFailed,
            SessionError::Closed,
            SessionError::Timeout,
            SessionError::Rejected(ErrorCode::Busy),
            SessionError::Protocol(ProtocolError::SequenceGap),
        ]
        .iter()
        .map(ToString::to_string)
        .collect(),
        &["ConnectFailed", "Closed", "Timeout"],
    );
    distinct(
        [
            SnapshotError::TooShort,
            SnapshotError::BadCrc,
            SnapshotError::Malformed,
            SnapshotError::UnknownFormat(5),
            SnapshotError::Foreign,
            SnapshotError::Inconsistent,
        ]
        .iter()
        .map(ToString::to_string)
        .collect(),
        &["TooShort", "BadCrc", "Malformed", "Foreign", "Inconsistent"],
    );
    distinct(
        [
            FrameError::Garbage { skipped: 3 },
            FrameError::BadLength { len: 0 },
            FrameError::BadCrc,
        ]
        .iter()
        .map(ToString::to_string)
        .collect(),
        &["BadCrc"],
    );
    assert!(EncodeError::BufferTooSmall { needed: 40 }
        .to_string()
        .contains("40"));
    assert!(SnapshotError::UnknownFormat(5).to_string().contains('5'));
}
