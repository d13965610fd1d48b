//! Push delivery: the server's [`PushSender`] and a loopback UDP channel.
//!
//! A push says "sync now" and nothing else: no task, no policy, no secret.
//! The device answers it by connecting and fetching its work, so a lost,
//! duplicated, delayed or forged push costs at most one extra sync.
//!
//! The UDP channel is for examples, tests and simulations on one machine.
//! Its datagram is 16 bytes: the tag [`PUSH_TAG`] and the device id (u64,
//! little-endian), so one receiving socket can serve many simulated devices.
//! The device's push token is its receiver's address, e.g. `127.0.0.1:40123`.
//! Both ends stay on the loopback interface: receivers bind 127.0.0.1 only and
//! the sender refuses any token that is not a loopback address.

use core::net::{Ipv4Addr, SocketAddr};
use core::time::Duration as WallDuration;
use std::io::{self, ErrorKind};
use std::net::UdpSocket;
use std::string::{String, ToString};

use crate::wire::{DeviceId, Platform};

/// First eight bytes of every push datagram.
pub const PUSH_TAG: [u8; 8] = *b"MDMSYNC1";
/// Length of a push datagram: tag and device id.
pub const PUSH_LEN: usize = 16;

/// The datagram that tells `device` to sync now.
pub fn encode_push(device: DeviceId) -> [u8; PUSH_LEN] {
    let mut d = [0; PUSH_LEN];
    d[..8].copy_from_slice(&PUSH_TAG);
    d[8..].copy_from_slice(&device.0.to_le_bytes());
    d
}

/// The device a push datagram is for; `None` for anything that is not one.
pub fn decode_push(datagram: &[u8]) -> Option<DeviceId> {
    let (tag, id) = datagram.split_at_checked(8)?;
    let id: [u8; 8] = id.try_into().ok()?;
    (tag == PUSH_TAG).then_some(DeviceId(u64::from_le_bytes(id)))
}

/// Why a push could not be handed to the push service.
#[derive(Debug)]
#[non_exhaustive]
pub enum PushError {
    /// The device's push token is not usable by this sender, for good (the
    /// service refused it, or it names nothing the sender can reach). The
    /// server adapter then drops it ([`Server::push_token_rejected`]), and
    /// the device's next sync is asked for its token.
    ///
    /// [`Server::push_token_rejected`]: crate::server::Server::push_token_rejected
    BadToken,
    /// The token names an address off the loopback interface, which
    /// [`UdpPushSender`] never sends to. A refusal for good, like
    /// [`BadToken`](Self::BadToken): the server adapter drops the token.
    NotLoopback(SocketAddr),
    /// The push service (here: the socket) failed. The token stays: the
    /// next push tries it again.
    Io(io::Error),
}

impl PushError {
    /// Whether the token is refused for good (it can never be used by this
    /// sender), so that the server adapter drops it and asks the device for
    /// its token at its next sync; `false` for a failure that may pass.
    pub fn is_permanent(&self) -> bool {
        matches!(self, PushError::BadToken | PushError::NotLoopback(_))
    }
}

impl core::fmt::Display for PushError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PushError::BadToken => f.write_str("push token not usable"),
            PushError::NotLoopback(a) => write!(f, "push address {a} is not loopback"),
            PushError::Io(e) => write!(f, "push send failed: {e}"),
        }
    }
}

impl core::error::Error for PushError {}

/// Hands "sync now" pushes to a push service (FCM, APNs, loopback UDP).
///
/// Called by the server adapter for every [`SendPush`] event, on the
/// engine's task: it must not block. A sender for a remote service queues
/// the request for its own worker. A failed push needs no retry: the
/// device's periodic sync delivers the work anyway. A sender that learns only
/// later that the service refused a token for good reports it through
/// `ServerHandle::push_token_rejected` (tokio adapter).
///
/// Any `FnMut(DeviceId, Platform, &str) -> Result<(), PushError>` is a sender.
///
/// [`SendPush`]: crate::server::ServerEvent::SendPush
pub trait PushSender {
    /// Asks the service to wake `device` on `platform` through its `token`.
    fn send_push(
        &mut self,
        device: DeviceId,
        platform: Platform,
        token: &str,
    ) -> Result<(), PushError>;
}

impl<F: FnMut(DeviceId, Platform, &str) -> Result<(), PushError>> PushSender for F {
    fn send_push(
        &mut self,
        device: DeviceId,
        platform: Platform,
        token: &str,
    ) -> Result<(), PushError> {
        self(device, platform, token)
    }
}

/// Sends push datagrams from a loopback UDP socket to the address in each
/// device's token. Non-blocking: a full socket buffer loses the push.
#[derive(Debug)]
pub struct UdpPushSender {
    socket: UdpSocket,
}

impl UdpPushSender {
    /// A sender on an ephemeral port of 127.0.0.1.
    pub fn bind_loopback() -> io::Result<Self> {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        socket.set_nonblocking(true)?;
        Ok(Self { socket })
    }

    /// The sender's own address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

impl PushSender for UdpPushSender {
    fn send_push(&mut self, device: DeviceId, _: Platform, token: &str) -> Result<(), PushError> {
        let addr: SocketAddr = token.parse().map_err(|_| PushError::BadToken)?;
        if !addr.ip().is_loopback() {
            return Err(PushError::NotLoopback(addr));
        }
        self.socket
            .send_to(&encode_push(device), addr)
            .map(|_| ())
            .map_err(PushError::Io)
    }
}

/// Receives push datagrams on a socket bound to 127.0.0.1.
#[derive(Debug)]
pub struct UdpPushReceiver {
    socket: UdpSocket,
    token: String,
}

impl UdpPushReceiver {
    /// A receiver on an ephemeral port of 127.0.0.1.
    pub fn bind_loopback() -> io::Result<Self> {
        Self::bind_loopback_port(0)
    }

    /// A receiver on a given port of 127.0.0.1 (0: ephemeral).
    pub fn bind_loopback_port(port: u16) -> io::Result<Self> {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, port))?;
        let token = socket.local_addr()?.to_string();
        Ok(Self { socket, token })
    }

    /// The push token to give the server: this receiver's address.
    pub fn token(&self) -> &String {
        &self.token
    }

    /// The receiver's address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Waits up to `timeout` for a push; returns the device it is for, or
    /// `None` when the time is up. Datagrams that are not pushes are skipped.
    /// A `timeout` too long for the system clock to count to (such as
    /// `Duration::MAX`) waits until a push comes.
    pub fn recv_timeout(&self, timeout: WallDuration) -> io::Result<Option<DeviceId>> {
        // `None`: no instant that far ahead, so no deadline.
        let deadline = std::time::Instant::now().checked_add(timeout);
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return self.try_recv();
            }
            self.socket.set_nonblocking(false)?;
            self.socket.set_read_timeout(left)?;
            match self.recv_one() {
                Ok(Some(id)) => return Ok(Some(id)),
                Ok(None) => continue,
                Err(e) if is_timeout(&e) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// A push that has already arrived, without waiting. Reads at most
    /// [`TRY_RECV_DATAGRAMS`] datagrams: a flood of datagrams that are not
    /// pushes cannot hold the caller's loop, and a push queued behind more
    /// of them than that comes at a later call.
    pub fn try_recv(&self) -> io::Result<Option<DeviceId>> {
        self.socket.set_nonblocking(true)?;
        for _ in 0..TRY_RECV_DATAGRAMS {
            match self.recv_one() {
                Ok(Some(id)) => return Ok(Some(id)),
                Ok(None) => continue,
                Err(e) if is_timeout(&e) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// One datagram: `Some` if it is a push.
    fn recv_one(&self) -> io::Result<Option<DeviceId>> {
        let mut buf = [0u8; 64];
        loop {
            match self.socket.recv_from(&mut buf) {
                Ok((n, _)) => return Ok(decode_push(&buf[..n.min(buf.len())])),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Datagrams [`UdpPushReceiver::try_recv`] reads at most per call.
pub const TRY_RECV_DATAGRAMS: usize = 32;

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagram_round_trips_and_rejects_garbage() {
        let d = encode_push(DeviceId(0x0102_0304_0506_0708));
        assert_eq!(decode_push(&d), Some(DeviceId(0x0102_0304_0506_0708)));
        assert_eq!(decode_push(&d[..15]), None);
        let mut bad = d;
        bad[0] ^= 1;
        assert_eq!(decode_push(&bad), None);
        assert_eq!(decode_push(&[]), None);
        let mut long = [0u8; 17];
        long[..16].copy_from_slice(&d);
        assert_eq!(decode_push(&long), None);
    }
}
