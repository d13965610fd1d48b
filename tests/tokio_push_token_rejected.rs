//! The tokio server adapter and refused push tokens: a token the push sender
//! refuses for good (`PushError::BadToken`, or the UDP sender's
//! `NotLoopback`) is dropped from the store, so no push goes to it again; a
//! refusal that comes later, through `ServerHandle::push_token_rejected`,
//! drops the token only while the store still holds that one. The only
//! network use is one datagram to 127.0.0.1.
#![cfg(feature = "tokio")]

use std::sync::{Arc, Mutex};

use mdm_sync::adapters::push::PushError;
use mdm_sync::adapters::tokio::{Builder, ServerHandle};
use mdm_sync::server::{FleetStore, MemoryStore, Server, ServerConfig};
use mdm_sync::time::Instant;
use mdm_sync::wire::{DeviceId, Platform, TaskKind};

const DEV: DeviceId = DeviceId(9);

/// The device's push token as the store holds it.
async fn target(h: &ServerHandle<MemoryStore>) -> Option<String> {
    h.call(|s, _| {
        s.store()
            .push_target(DEV)
            .unwrap()
            .map(|(_, t)| t.to_string())
    })
    .await
    .unwrap()
}

/// A server with `DEV` enrolled and holding push token `token`.
fn server_holding(token: &str) -> Server<MemoryStore> {
    let mut server = Server::new(
        ServerConfig::default(),
        MemoryStore::new(),
        [1; 32],
        [2; 32],
    );
    server.enroll(DEV, Instant::ZERO).unwrap();
    let store = server.store_mut();
    store.set_push_target(DEV, Platform::Ios, token).unwrap();
    server
}

#[tokio::test]
async fn a_token_the_sender_refuses_is_dropped_and_pushed_no_more() {
    let server = server_holding("revoked");
    let tried = Arc::new(Mutex::new(Vec::new()));
    let log = tried.clone();
    let sender = move |_: DeviceId, _: Platform, token: &str| {
        log.lock().unwrap().push(token.to_string());
        match token {
            "revoked" => Err(PushError::BadToken),
            _ => Ok(()),
        }
    };
    let (handle, engine) = Builder::new(server, sender).spawn();

    handle
        .enqueue_task(DEV, TaskKind::Lock, Default::default())
        .await
        .unwrap();
    assert_eq!(target(&handle).await, None, "dropped after the refusal");
    handle
        .enqueue_task(DEV, TaskKind::Scan, Default::default())
        .await
        .unwrap();
    assert_eq!(*tried.lock().unwrap(), ["revoked"], "no second push to it");

    // The device sends a new token; a late refusal of the old one keeps it,
    // one of the new one drops it.
    handle
        .call(|s, _| s.store_mut().set_push_target(DEV, Platform::Ios, "fresh"))
        .await
        .unwrap()
        .unwrap();
    let kept = !handle.push_token_rejected(DEV, "revoked").await.unwrap();
    assert!(kept, "a late refusal of the old token");
    assert_eq!(target(&handle).await.as_deref(), Some("fresh"));
    assert!(handle.push_token_rejected(DEV, "fresh").await.unwrap());
    assert_eq!(target(&handle).await, None);

    handle.shutdown().await;
    engine.await.unwrap();
}

/// The UDP sender refuses a token that names an address off the loopback
/// interface (`PushError::NotLoopback`): that is for good too, so the token
/// is dropped and no second push is tried. A token the sender cannot read
/// (`BadToken`) is dropped the same way, and a loopback one stays. Nothing is
/// sent off the machine: the sender refuses before sending.
#[tokio::test]
async fn the_udp_sender_refusing_a_non_loopback_address_drops_the_token() {
    use mdm_sync::adapters::push::{PushSender, UdpPushSender};

    for (token, dropped) in [
        ("192.0.2.1:9", true), // TEST-NET-1: not loopback
        ("[2001:db8::1]:9", true),
        ("not an address", true),
        ("127.0.0.1:9", false),
    ] {
        let server = server_holding(token);
        let mut udp = UdpPushSender::bind_loopback().unwrap();
        let tried = Arc::new(Mutex::new(0));
        let count = tried.clone();
        let sender = move |d: DeviceId, p: Platform, t: &str| {
            *count.lock().unwrap() += 1;
            udp.send_push(d, p, t)
        };
        let (handle, engine) = Builder::new(server, sender).spawn();
        handle
            .enqueue_task(DEV, TaskKind::Lock, Default::default())
            .await
            .unwrap();
        let held = target(&handle).await;
        assert_eq!(held.is_none(), dropped, "{token}: {held:?}");
        handle
            .enqueue_task(DEV, TaskKind::Scan, Default::default())
            .await
            .unwrap();
        // The push rate limit holds a second push back for a while, so a
        // kept token is tried once here as well: what differs is the store.
        assert_eq!(*tried.lock().unwrap(), 1, "{token}");
        handle.shutdown().await;
        engine.await.unwrap();
    }
}

/// `ServerHandle::retire`: the device's open task ends dropped, its push
/// target goes with it (so no push is tried for it), operator calls for it
/// fail as for an unknown device, and enrolling it again gives a new secret.
#[tokio::test]
async fn a_retired_device_is_forgotten_through_the_handle() {
    use mdm_sync::adapters::tokio::CallError;
    use mdm_sync::server::{ServerError, TaskState};

    let server = server_holding("token");
    let old_secret = server.device_secret(DEV).unwrap();
    let (handle, engine) = Builder::new(server, |_: DeviceId, _: Platform, _: &str| Ok(())).spawn();
    let task = handle
        .enqueue_task(DEV, TaskKind::Lock, Default::default())
        .await
        .unwrap();
    handle.retire(DEV).await.unwrap();
    let state = handle.task(task).await.unwrap().map(|t| t.state);
    assert_eq!(state, Some(TaskState::Dropped));
    assert_eq!(target(&handle).await, None);
    let refused = handle
        .enqueue_task(DEV, TaskKind::Lock, Default::default())
        .await;
    assert!(matches!(
        refused,
        Err(CallError::Server(ServerError::UnknownDevice))
    ));
    assert!(matches!(
        handle.retire(DEV).await,
        Err(CallError::Server(ServerError::UnknownDevice))
    ));
    assert_ne!(handle.enroll(DEV).await.unwrap(), old_secret);
    assert_eq!(handle.device_view(DEV).await.unwrap().generation, 1);
    handle.shutdown().await;
    engine.await.unwrap();
}
