//! The harnesses reach deep states from their own operations, without
//! recorded bytes: the server harness's proofs verify and its frames carry
//! each connection's session key; the device harness keys the messages it
//! builds after the challenge it fed. (If these fail, the fuzzer is left to
//! guess proofs and CRCs.)

use mdm_sync_fuzz::script::{device as dop, server as sop, Script};

/// `arbitrary`'s enum choice: variant `k` of `count`.
fn variant(k: u32, count: u32) -> u32 {
    ((u64::from(k) << 32).div_ceil(u64::from(count))) as u32
}

/// A `FEED_MSG` of an `FUp::Hello` of the right version from `device`,
/// generation 0, on connection `conn`.
fn hello(s: &mut Script, conn: u8, device: u8) {
    s.tag(sop::FEED_MSG).u8(conn).u32(variant(0, 4));
    s.u8(0)
        .u8(device)
        .u8(0)
        .u8(0)
        .u8(3)
        .u8(1)
        .u8(0)
        .u32(0)
        .u32(0)
        .u32(1)
        .u32(1); // attempt 2^32 + 1, as 8 bytes
}

#[test]
fn server_harness_proves_on_interleaved_connections() {
    let mut s = Script::default();
    s.tag(sop::OPEN).tag(sop::OPEN);
    hello(&mut s, 0, 1);
    hello(&mut s, 1, 2);
    s.tag(sop::PROVE).u8(1).tag(sop::PROVE).u8(0);
    // A report in sequence on each, keyed like everything after the challenge.
    for conn in [0, 1] {
        s.tag(sop::REPORT_NEXT).u8(conn).u32(variant(1, 3)).u32(0);
    }
    assert_eq!(mdm_sync_fuzz::server::run_counting(&s.0), 2);
}

#[test]
fn device_harness_keys_its_messages_after_the_challenge() {
    let mut s = Script::starting_with(&[0]);
    // FDown::Challenge(None, nonce, None): the right version and attempt;
    // the nonce gives the key 0x11111111.
    s.tag(dop::FEED_MSG).u32(variant(0, 8)).u8(0);
    s.0.extend_from_slice(&[0x11; 16]);
    s.u8(0);
    // FDown::Welcome(ack 0, periodic 0, token not wanted), then the next
    // task offer.
    s.tag(dop::FEED_MSG).u32(variant(1, 8)).u32(0).u32(0).u8(0);
    s.tag(dop::NEXT_TASK).u8(0).u16(7).u8(0);
    assert_eq!(mdm_sync_fuzz::device::run_counting(&s.0), 1);
}
