//! A device and a server over random histories of push-token changes,
//! reboots, store losses, re-enrollments and connections cut at any frame,
//! checked against the one promise of protocol version 5's token rules
//! (PROTOCOL.md 7.2): once the device has settled (its next periodic sync
//! and every sync it wants then have run), the server holds the device's current token, so pushes reach it.
//! And the token rules cost a bounded number of syncs: settling never takes
//! more than a few sessions.

use mdm_sync::device::{Device, DeviceConfig, Event};
use mdm_sync::server::{DeviceRecord, FleetStore, MemoryStore, PushToken, Server, ServerConfig};
use mdm_sync::time::{Duration, Instant};
use mdm_sync::wire::{self, frame, DeviceId, Down, FrameDecoder, Platform, Up, MAX_FRAME};
use proptest::prelude::*;

const ID: DeviceId = DeviceId(77);
const MASTER: [u8; 32] = [5; 32];
const TOKENS: [&str; 4] = ["", "fcm:a", "fcm:b", "apns:0123456789abcdef"];

fn token(i: u8) -> heapless::String<{ wire::PUSH_TOKEN_MAX }> {
    heapless::String::try_from(TOKENS[usize::from(i) % TOKENS.len()]).unwrap()
}

#[derive(Clone, Debug)]
enum Op {
    /// A manual sync; the connection is cut at transfer `cut` (the chunk is
    /// lost), and the token changes before transfer `change.0`.
    Sync {
        cut: Option<u8>,
        change: Option<(u8, u8)>,
    },
    /// The application sets a token while idle.
    SetToken(u8),
    /// The device reboots from its last persisted snapshot.
    Reboot,
    /// The server's store is rebuilt from its device rows: every push
    /// target is lost.
    StoreLosesTargets,
    /// The device is re-enrolled: a new engine with the new secret.
    ReEnroll,
    /// Time passes with nothing forced.
    Wait(u16),
    /// The device settles and the server's token is checked.
    Check,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (
            proptest::option::of(0u8..12),
            proptest::option::of((0u8..12, 0u8..4)),
        )
            .prop_map(|(cut, change)| Op::Sync { cut, change }),
        2 => (0u8..4).prop_map(Op::SetToken),
        1 => Just(Op::Reboot),
        1 => Just(Op::StoreLosesTargets),
        1 => Just(Op::ReEnroll),
        1 => (0u16..4000).prop_map(Op::Wait),
        1 => Just(Op::Check),
    ]
}

struct World {
    server: Server<MemoryStore>,
    device: Device,
    cfg: DeviceConfig,
    snapshot: Option<Vec<u8>>,
    now: Instant,
    /// Sessions that got their `Welcome` since the counter was reset.
    welcomes: usize,
    /// Welcomes whose `want_token` did not say whether the store held a
    /// target, and what it held.
    wrong_asks: Vec<(bool, Option<(Platform, PushToken)>)>,
}

fn server(store: MemoryStore) -> Server<MemoryStore> {
    Server::new(ServerConfig::default(), store, MASTER, [6; 32])
}

impl World {
    fn new(first: u8) -> World {
        let now = Instant::from_millis(1_000);
        let mut server = server(MemoryStore::new());
        let secret = server.enroll(ID, now).unwrap();
        let mut cfg = DeviceConfig::new(ID, 0, secret, Platform::Ios);
        cfg.push_token = token(first);
        let device = Device::new(cfg.clone(), now);
        World {
            server,
            device,
            cfg,
            snapshot: None,
            now,
            welcomes: 0,
            wrong_asks: Vec::new(),
        }
    }

    fn set_token(&mut self, i: u8) {
        self.cfg.push_token = token(i);
        self.device.set_push_token(token(i), self.now);
    }

    fn events(&mut self) -> (bool, bool) {
        let (mut connect, mut disconnect) = (false, false);
        while let Some(ev) = self.device.poll_event() {
            match ev {
                Event::Connect => connect = true,
                Event::Disconnect => disconnect = true,
                Event::Persist => {
                    let mut buf = vec![0u8; 8192];
                    let n = self.device.snapshot(&mut buf).unwrap();
                    buf.truncate(n);
                    self.snapshot = Some(buf);
                }
                _ => {}
            }
        }
        (connect, disconnect)
    }

    /// Runs timers at `now` and moves bytes until nothing moves, with the
    /// faults of `Op::Sync`.
    fn pump(&mut self, cut: Option<u8>, change: Option<(u8, u8)>) {
        let now = self.now;
        self.device.handle_timeout(now);
        self.server.handle_timeout(now).unwrap();
        let mut conn = None;
        let mut down = FrameDecoder::<MAX_FRAME>::new();
        let mut transfers = 0u8;
        let mut buf = [0u8; 1024];
        for _ in 0..2000 {
            let mut moved = false;
            let (connect, disconnect) = self.events();
            if disconnect {
                moved = true;
                if let Some(c) = conn.take() {
                    self.server.connection_closed(c, now);
                }
            }
            if connect {
                moved = true;
                conn = Some(self.server.connection_opened(now).unwrap());
                self.device.connected(now);
                down = FrameDecoder::new();
            }
            'link: while let Some(c) = conn {
                let mut chunks = Vec::new();
                while let Some(n) = self.device.poll_transmit(&mut buf).unwrap() {
                    chunks.push((true, buf[..n].to_vec()));
                    if let Ok(Up::Hello(_)) = wire::decode::<Up>(frame::payload(&buf[..n])) {
                        break; // the change may come between Hello and Proof
                    }
                }
                while let Some(n) = self.server.poll_transmit_for(c, &mut buf) {
                    chunks.push((false, buf[..n].to_vec()));
                }
                if chunks.is_empty() {
                    break;
                }
                moved = true;
                for (up, bytes) in chunks {
                    transfers = transfers.saturating_add(1);
                    if let Some((at, t)) = change {
                        if at == transfers {
                            self.set_token(t);
                        }
                    }
                    if cut == Some(transfers) {
                        self.server.connection_closed(c, now);
                        self.device.disconnected(now);
                        conn = None;
                        break 'link;
                    }
                    if up {
                        let _ = self.server.handle_bytes(c, &bytes, now);
                    } else {
                        down.push(&bytes);
                        while let Some(Ok(p)) = down.decode() {
                            match wire::decode::<Down>(p) {
                                Ok(Down::Challenge { nonce, .. }) => {
                                    down.set_key(frame::session_key(&nonce))
                                }
                                Ok(Down::Welcome { want_token, .. }) => {
                                    self.welcomes += 1;
                                    let held = self.server.store().push_target(ID).unwrap();
                                    if want_token == held.is_some() {
                                        self.wrong_asks.push((want_token, held));
                                    }
                                }
                                _ => {}
                            }
                        }
                        let _ = self.device.handle_bytes(&bytes, now);
                    }
                }
            }
            while self.server.poll_event().is_some() {}
            self.device.handle_timeout(now);
            if !moved {
                break;
            }
        }
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Sync { cut, change } => {
                self.device.manual_sync(self.now);
                self.pump(cut, change);
            }
            Op::SetToken(t) => self.set_token(t),
            Op::Reboot => {
                let restored = self
                    .snapshot
                    .as_ref()
                    .and_then(|s| Device::restore(self.cfg.clone(), s, self.now).ok());
                self.device = restored.unwrap_or_else(|| Device::new(self.cfg.clone(), self.now));
            }
            Op::StoreLosesTargets => {
                let rec = self.server.store().device(ID).unwrap().unwrap();
                let mut store = MemoryStore::new();
                store.put_device(&rec).unwrap();
                self.server = server(store);
            }
            Op::ReEnroll => {
                self.cfg.secret = self.server.enroll(ID, self.now).unwrap();
                let rec: DeviceRecord = self.server.store().device(ID).unwrap().unwrap();
                self.cfg.generation = rec.generation;
                self.snapshot = None;
                self.device = Device::new(self.cfg.clone(), self.now);
            }
            Op::Wait(s) => {
                self.now = self.now + Duration::from_secs(u64::from(s));
                self.pump(None, None);
            }
            Op::Check => {}
        }
    }

    /// Lets every sync the device wants run without faults (backoffs
    /// included) up to and after its next periodic sync (a server that lost
    /// the token learns that it did only when the device next syncs), then
    /// checks that the server holds the device's token.
    fn settle_and_check(&mut self, history: &[Op]) -> Result<(), TestCaseError> {
        self.welcomes = 0;
        self.now = self.now + self.device.periodic_interval();
        self.pump(None, None);
        for _ in 0..4 {
            self.now = self.now + self.cfg.timers.backoff_max + Duration::from_secs(1);
            self.pump(None, None);
        }
        prop_assert!(
            self.wrong_asks.is_empty(),
            "want_token against the store: {:?} after {history:?}",
            self.wrong_asks
        );
        prop_assert!(
            self.welcomes <= 4,
            "{} sessions to settle after {history:?}",
            self.welcomes
        );
        if self.cfg.push_token.is_empty() {
            return Ok(()); // an empty token withdraws nothing (a known limit)
        }
        let held = self.server.store().push_target(ID).unwrap();
        let want = Some((Platform::Ios, self.cfg.push_token.as_str()));
        prop_assert_eq!(
            held.as_ref().map(|(p, t)| (*p, t.as_str())),
            want,
            "after {:?}",
            history
        );
        Ok(())
    }
}

proptest! {
    #[test]
    fn a_settled_device_is_reachable_by_push(
        first in 0u8..4,
        ops in proptest::collection::vec(op(), 1..24),
    ) {
        let mut w = World::new(first);
        for (i, op) in ops.iter().enumerate() {
            match op {
                Op::Check => w.settle_and_check(&ops[..=i])?,
                op => w.apply(op),
            }
        }
        w.settle_and_check(&ops)?;
    }
}

/// A device whose token "fcm:a" and then "fcm:b" the server confirmed, and
/// a server whose store was then restored from a backup taken in between:
/// it holds the device's row and the replaced token "fcm:a".
fn restored_with_the_replaced_token() -> World {
    let mut w = World::new(1);
    w.pump(None, None); // the boot sync: "fcm:a" held and confirmed
    let backup = w.server.store().device(ID).unwrap().unwrap();
    w.now = w.now + Duration::from_mins(5);
    w.set_token(2);
    w.pump(None, None); // "fcm:b" held and confirmed
    let held = w.server.store().push_target(ID).unwrap();
    assert_eq!(held.map(|(_, t)| t), Some(token(2)));

    // The restore: the device's row and the push target of the backup.
    let mut store = MemoryStore::new();
    store.put_device(&backup).unwrap();
    store.set_push_target(ID, Platform::Ios, TOKENS[1]).unwrap();
    w.server = server(store);
    w
}

fn assert_holds_the_current_token(w: &World) {
    let held = w.server.store().push_target(ID).unwrap();
    assert_eq!(
        held.map(|(_, t)| t),
        Some(token(2)),
        "the server still pushes to the replaced token"
    );
}

/// The server's store is restored from a backup taken while it held the
/// device's previous token; the device, which has since had its new token
/// confirmed, sends none in push-started syncs, and the restored store
/// answers that it holds a target: no `want_token`. Pushes go to the
/// replaced token until the device's next periodic sync, which carries its
/// token (PROTOCOL.md 7.2) and corrects the store. (Version 4 sent the token
/// in every `Hello`, so any sync repaired such a store.)
#[test]
fn a_store_restored_with_an_older_token_is_corrected_by_the_next_sync() {
    let mut w = restored_with_the_replaced_token();

    // A day of periodic syncs, and a push-started one.
    for _ in 0..8 {
        w.now = w.now + w.device.periodic_interval();
        w.pump(None, None);
    }
    w.device.push_received(w.now);
    w.pump(None, None);
    assert_holds_the_current_token(&w);
}

/// The store restored with the replaced token, as above, but the device
/// syncs on its own more often than its periodic interval (a manual sync
/// every half interval here; reports or compliance events do the same), so
/// no sync has trigger `Periodic`: the first sync a periodic interval after
/// the token's last confirmation still carries it (PROTOCOL.md 7.2).
#[test]
fn a_store_restored_with_an_older_token_is_corrected_though_the_device_syncs_often() {
    let mut w = restored_with_the_replaced_token();

    // Four periodic intervals, a sync every half of one.
    let half = Duration::from_millis(w.device.periodic_interval().as_millis() / 2);
    for _ in 0..8 {
        w.now = w.now + half;
        w.device.manual_sync(w.now);
        w.pump(None, None);
    }
    assert_holds_the_current_token(&w);
}

/// The store restored with the replaced token, as above; the periodic timer
/// fires just as the device raises a compliance event, so the session that
/// serves the periodic sync has trigger `Compliance`; it still carries the
/// token, being the first sync a periodic interval after its confirmation.
#[test]
fn a_periodic_sync_under_another_trigger_corrects_a_restored_store() {
    use mdm_sync::wire::ComplianceEvent;
    let mut w = restored_with_the_replaced_token();

    for _ in 0..4 {
        w.now = w.now + w.device.periodic_interval();
        w.device.handle_timeout(w.now); // the periodic want
        w.device
            .raise_compliance(ComplianceEvent::ProfileChanged, w.now)
            .unwrap();
        w.pump(None, None);
    }
    assert_holds_the_current_token(&w);
}
