//! The loopback UDP push receiver under garbage from other ports: only a
//! well-formed push is reported, whatever came before it.
#![cfg(feature = "std")]

use core::time::Duration as WallDuration;
use std::net::UdpSocket;

use mdm_sync::adapters::push::{encode_push, UdpPushReceiver};
use mdm_sync::wire::DeviceId;

#[test]
fn garbage_datagrams_from_other_ports_are_skipped() {
    let rx = UdpPushReceiver::bind_loopback().unwrap();
    let to = rx.local_addr().unwrap();
    let push = encode_push(DeviceId(42));
    let mut long = [0u8; 100];
    long[..16].copy_from_slice(&push);
    for _ in 0..3 {
        let other = UdpSocket::bind("127.0.0.1:0").unwrap();
        other.send_to(&[], to).unwrap();
        other.send_to(&push[..15], to).unwrap();
        other.send_to(&[0xFF; 16], to).unwrap();
        other.send_to(&long, to).unwrap(); // a push with a tail is not one
        other.send_to(&[0xAB; 9000], to).unwrap();
    }
    assert_eq!(rx.try_recv().unwrap(), None);
    let other = UdpSocket::bind("127.0.0.1:0").unwrap();
    other.send_to(&[0x00; 64], to).unwrap();
    other.send_to(&push, to).unwrap();
    let got = rx.recv_timeout(WallDuration::from_secs(5)).unwrap();
    assert_eq!(got, Some(DeviceId(42)));
    assert_eq!(rx.try_recv().unwrap(), None);
}

/// A flood of datagrams that are not pushes: `try_recv` reads a bounded
/// number of them per call (it returns, leaving the rest queued), and the
/// push behind them comes out at a later call.
#[test]
fn a_flood_of_garbage_does_not_hold_try_recv() {
    use mdm_sync::adapters::push::TRY_RECV_DATAGRAMS;
    let rx = UdpPushReceiver::bind_loopback().unwrap();
    let to = rx.local_addr().unwrap();
    let other = UdpSocket::bind("127.0.0.1:0").unwrap();
    let flood = 3 * TRY_RECV_DATAGRAMS + 5;
    for i in 0..flood {
        other.send_to(&[i as u8; 8], to).unwrap();
    }
    other.send_to(&encode_push(DeviceId(7)), to).unwrap();
    // Loopback delivers at once, but give the kernel a moment all the same.
    std::thread::sleep(WallDuration::from_millis(50));
    let mut calls = 0;
    let got = loop {
        calls += 1;
        if let Some(id) = rx.try_recv().unwrap() {
            break id;
        }
        assert!(calls <= flood, "the push never came");
    };
    assert_eq!(got, DeviceId(7));
    // Each call read at most its bound: the push needed several.
    assert!(calls > flood / TRY_RECV_DATAGRAMS, "{calls} calls");
}

/// A caller that means "wait as long as it takes" and says so with
/// `Duration::MAX` (as `std` itself allows for other waits) must get the
/// push, not a panic: the receiver's deadline is `now + timeout`, which
/// overflowed `std::time::Instant` and panicked before any datagram was
/// read (found by breaker15). The push is sent before the call, so the
/// wait ends at once when it works.
#[test]
fn an_endless_wait_takes_the_push_that_is_there() {
    let rx = UdpPushReceiver::bind_loopback().unwrap();
    let to = rx.local_addr().unwrap();
    let other = UdpSocket::bind("127.0.0.1:0").unwrap();
    other.send_to(&[0x00; 3], to).unwrap(); // skipped, the wait goes on
    other.send_to(&encode_push(DeviceId(9)), to).unwrap();
    let got = rx.recv_timeout(WallDuration::MAX).unwrap();
    assert_eq!(got, Some(DeviceId(9)));
}
