//! The loopback UDP push channel: datagrams carry only "sync now" and a
//! device id; both ends stay on 127.0.0.1. Every wait here is bounded.
#![cfg(feature = "std")]

use core::time::Duration;
use std::net::UdpSocket;
use std::time::Instant;

use mdm_sync::adapters::push::{
    decode_push, encode_push, PushError, PushSender, UdpPushReceiver, UdpPushSender, PUSH_LEN,
    PUSH_TAG,
};
use mdm_sync::wire::{DeviceId, Platform};

const WAIT: Duration = Duration::from_secs(2);

#[test]
fn a_push_reaches_the_receiver_named_by_the_token() {
    let rx = UdpPushReceiver::bind_loopback().unwrap();
    assert!(rx.local_addr().unwrap().ip().is_loopback());
    let mut tx = UdpPushSender::bind_loopback().unwrap();
    tx.send_push(DeviceId(42), Platform::Android, rx.token())
        .unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), Some(DeviceId(42)));
}

#[test]
fn one_shared_receiver_routes_pushes_by_device_id() {
    let rx = UdpPushReceiver::bind_loopback().unwrap();
    let mut tx = UdpPushSender::bind_loopback().unwrap();
    for id in 1..=5 {
        let platform = if id % 2 == 0 {
            Platform::Ios
        } else {
            Platform::Android
        };
        tx.send_push(DeviceId(id), platform, rx.token()).unwrap();
    }
    let mut got: Vec<u64> = (0..5)
        .filter_map(|_| rx.recv_timeout(WAIT).unwrap())
        .map(|d| d.0)
        .collect();
    got.sort();
    assert_eq!(got, vec![1, 2, 3, 4, 5]);
}

#[test]
fn the_datagram_carries_nothing_but_the_tag_and_the_id() {
    let d = encode_push(DeviceId(7));
    assert_eq!(d.len(), PUSH_LEN);
    assert_eq!(d[..8], PUSH_TAG);
    assert_eq!(d[8..], 7u64.to_le_bytes());
    assert_eq!(decode_push(&d), Some(DeviceId(7)));

    // What arrives on the wire is exactly that.
    let raw = UdpSocket::bind("127.0.0.1:0").unwrap();
    raw.set_read_timeout(Some(WAIT)).unwrap();
    let token = raw.local_addr().unwrap().to_string();
    let mut tx = UdpPushSender::bind_loopback().unwrap();
    tx.send_push(DeviceId(7), Platform::Ios, &token).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = raw.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], &d);
    assert!(from.ip().is_loopback());
}

#[test]
fn garbage_datagrams_are_skipped() {
    let rx = UdpPushReceiver::bind_loopback().unwrap();
    let raw = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = rx.local_addr().unwrap();
    raw.send_to(b"hello", to).unwrap();
    let mut wrong_tag = encode_push(DeviceId(3));
    wrong_tag[0] = b'X';
    raw.send_to(&wrong_tag, to).unwrap();
    raw.send_to(&encode_push(DeviceId(9)), to).unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), Some(DeviceId(9)));
}

#[test]
fn tokens_off_loopback_or_malformed_are_refused_without_sending() {
    let mut tx = UdpPushSender::bind_loopback().unwrap();
    let off = tx.send_push(DeviceId(1), Platform::Android, "192.0.2.1:9");
    assert!(matches!(off, Err(PushError::NotLoopback(_))), "{off:?}");
    let bad = tx.send_push(DeviceId(1), Platform::Ios, "fcm:abcdef");
    assert!(matches!(bad, Err(PushError::BadToken)), "{bad:?}");
    let empty = tx.send_push(DeviceId(1), Platform::Ios, "");
    assert!(matches!(empty, Err(PushError::BadToken)), "{empty:?}");
}

#[test]
fn waiting_ends_on_time_when_nothing_comes() {
    let rx = UdpPushReceiver::bind_loopback().unwrap();
    let start = Instant::now();
    assert_eq!(rx.recv_timeout(Duration::from_millis(30)).unwrap(), None);
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(25), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(rx.try_recv().unwrap(), None);
}

#[test]
fn closures_are_push_senders() {
    let mut seen = Vec::new();
    let mut sender = |d: DeviceId, _: Platform, t: &str| -> Result<(), PushError> {
        seen.push((d, t.to_string()));
        Ok(())
    };
    sender.send_push(DeviceId(5), Platform::Ios, "tok").unwrap();
    assert_eq!(seen, vec![(DeviceId(5), "tok".to_string())]);
}
