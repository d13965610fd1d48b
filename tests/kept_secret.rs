//! The server keeps a device's secret from its last authenticated handshake
//! (one SHA-256 compression fewer on the next). A kept secret must serve
//! only the enrollment it was derived for: after re-enrollment the old
//! secret fails, even with the new generation in the `Hello`; a wrong proof
//! changes nothing kept; a retired device's secret is dead.

mod common;

use common::{raw_handshake_gen, server};
use mdm_sync::server::{MemoryStore, PeerError, Server, ServerError};
use mdm_sync::time::Instant;
use mdm_sync::wire::DeviceId;

/// Whether a handshake of `device` in `generation` proved with `secret`
/// passes; the connection is closed after.
fn passes(
    s: &mut Server<MemoryStore>,
    device: DeviceId,
    generation: u32,
    secret: &[u8; 32],
) -> bool {
    let now = Instant::from_millis(1_000);
    let (conn, _, answer) = raw_handshake_gen(s, device, generation, secret, now);
    s.connection_closed(conn, now);
    while s.poll_event().is_some() {}
    match answer {
        Ok(()) => true,
        Err(ServerError::Peer(PeerError::AuthFailed)) => false,
        Err(e) => panic!("unexpected answer: {e:?}"),
    }
}

#[test]
fn a_kept_secret_serves_its_enrollment_only() {
    let mut s = server();
    let t0 = Instant::from_millis(0);
    let d = DeviceId(7);
    let old = s.enroll(d, t0).unwrap();
    assert!(passes(&mut s, d, 0, &old));
    assert!(
        passes(&mut s, d, 0, &old),
        "the second handshake, with the secret kept"
    );
    let new = s.enroll(d, t0).unwrap();
    assert_ne!(new, old);
    assert!(
        !passes(&mut s, d, 1, &old),
        "the old secret passed as the new generation's"
    );
    assert!(!passes(&mut s, d, 0, &old), "the old enrollment passed");
    assert!(passes(&mut s, d, 1, &new));
    assert!(passes(&mut s, d, 1, &new), "the new secret, kept");
    // A wrong proof keeps nothing in place of the right secret.
    assert!(!passes(&mut s, d, 1, &[9; 32]));
    assert!(passes(&mut s, d, 1, &new));
    assert_eq!(s.device_secret(d).unwrap(), new);
}

#[test]
fn a_retired_device_secret_is_dead_and_its_next_enrollment_gets_a_new_one() {
    let mut s = server();
    let t0 = Instant::from_millis(0);
    let d = DeviceId(8);
    let first = s.enroll(d, t0).unwrap();
    assert!(passes(&mut s, d, 0, &first));
    s.retire(d, t0).unwrap();
    assert!(
        !passes(&mut s, d, 0, &first),
        "a retired device authenticated"
    );
    let next = s.enroll(d, t0).unwrap();
    assert_ne!(next, first);
    assert!(!passes(&mut s, d, 0, &first));
    assert!(!passes(&mut s, d, 1, &first), "the retired secret passed");
    let generation = (0..4).find(|&g| passes(&mut s, d, g, &next));
    assert!(
        generation.is_some(),
        "the new secret passed in no generation"
    );
    assert!(!passes(&mut s, d, generation.unwrap(), &first));
}
