//! Device authentication: HMAC-SHA256 challenge-response.
//!
//! The server answers a device's `Hello` with a fresh 16-byte nonce. The device
//! proves it holds its per-device secret with
//! `HMAC-SHA256(secret, "mdm-sync/2 proof" || nonce || SHA-256(Hello payload))`.
//! A nonce is used for one session only, so a recorded proof fails in any
//! other session; the proof covers the exact `Hello` bytes the server read, so
//! a `Hello` replayed from an earlier session (or altered on the way: another
//! task ledger, another push token) fails it too. Comparison is constant-time.

use hmac::{KeyInit, Mac};
use sha2::Digest;

use crate::wire::DeviceId;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// A per-device secret shared by the device and the server.
pub type Secret = [u8; 32];

const DOMAIN: &[u8] = b"mdm-sync/2 proof";

/// SHA-256 of a `Hello` frame's payload, the exact bytes on the wire: what the
/// proof binds the session to.
pub fn hello_hash(payload: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(payload).into()
}

/// The proof a device sends for `nonce`, after the `Hello` whose payload
/// hashes to `hello` (see [`hello_hash`]).
pub fn proof(secret: &Secret, nonce: &[u8; 16], hello: &[u8; 32]) -> [u8; 32] {
    mac(secret, nonce, hello).finalize().into_bytes().into()
}

/// Whether `proof` is right for `nonce` and the `Hello` hashing to `hello`
/// (constant-time comparison).
pub fn verify(secret: &Secret, nonce: &[u8; 16], hello: &[u8; 32], proof: &[u8; 32]) -> bool {
    mac(secret, nonce, hello).verify_slice(proof).is_ok()
}

/// The secret of device `device` in enrollment `generation`, derived from the
/// server's master key: `HMAC-SHA256(master, "mdm-sync/1 secret" || id (u64 LE)
/// || generation (u32 LE))`. The server stores no per-device secret; a new
/// generation (re-enrollment) gets a new secret and the old one stops working.
pub fn derive_secret(master: &Secret, device: DeviceId, generation: u32) -> Secret {
    derive_secret_prepared(&PreparedKey::new(master), device, generation)
}

/// [`derive_secret`] with a master key prepared once.
pub fn derive_secret_prepared(master: &PreparedKey, device: DeviceId, generation: u32) -> Secret {
    keyed(
        master,
        b"mdm-sync/1 secret",
        &device.0.to_le_bytes(),
        &generation.to_le_bytes(),
    )
}

/// An HMAC-SHA256 key with its inner and outer pads already hashed, for a
/// key used over and over (the server's master key and nonce seed): each use
/// then hashes two SHA-256 blocks instead of four.
#[derive(Clone)]
pub struct PreparedKey(HmacSha256);

impl PreparedKey {
    /// Prepares `key`.
    pub fn new(key: &Secret) -> Self {
        Self(hmac_with(key))
    }
}

/// 16 bytes of an HMAC-based generator: `HMAC-SHA256(seed, "mdm-sync/1 nonce"
/// || counter (u64 LE))`, truncated. Unpredictable while `seed` is secret and
/// fresh; unique while `counter` never repeats for the same seed.
pub fn nonce(seed: &Secret, counter: u64) -> [u8; 16] {
    nonce_prepared(&PreparedKey::new(seed), counter)
}

/// [`nonce`] with a seed prepared once.
pub fn nonce_prepared(seed: &PreparedKey, counter: u64) -> [u8; 16] {
    let full = keyed(seed, b"mdm-sync/1 nonce", &counter.to_le_bytes(), &[]);
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

fn keyed(key: &PreparedKey, domain: &[u8], a: &[u8], b: &[u8]) -> [u8; 32] {
    let mut m = key.0.clone();
    m.update(domain);
    m.update(a);
    m.update(b);
    m.finalize().into_bytes().into()
}

fn hmac_with(secret: &Secret) -> HmacSha256 {
    // HMAC pads short keys with zeros to the block size; padding here lets us use
    // the infallible constructor instead of `new_from_slice`.
    let mut key = [0u8; 64];
    key[..32].copy_from_slice(secret);
    <HmacSha256 as KeyInit>::new(&key.into())
}

fn mac(secret: &Secret, nonce: &[u8; 16], hello: &[u8; 32]) -> HmacSha256 {
    let mut m = hmac_with(secret);
    m.update(DOMAIN);
    m.update(nonce);
    m.update(hello);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_verifies_only_for_its_own_inputs() {
        let secret = [7u8; 32];
        let nonce = [1u8; 16];
        let hello = hello_hash(b"hello bytes");
        let p = proof(&secret, &nonce, &hello);
        assert!(verify(&secret, &nonce, &hello, &p));
        assert!(
            !verify(&secret, &[2u8; 16], &hello, &p),
            "replayed on a new nonce"
        );
        let other = hello_hash(b"hello bytez");
        assert!(!verify(&secret, &nonce, &other, &p), "another Hello");
        assert!(!verify(&[8u8; 32], &nonce, &hello, &p));
    }

    #[test]
    fn padded_key_equals_the_slice_constructor() {
        let secret = [9u8; 32];
        let mut a = hmac_with(&secret);
        let mut b = HmacSha256::new_from_slice(&secret).unwrap();
        a.update(b"x");
        b.update(b"x");
        assert_eq!(a.finalize().into_bytes(), b.finalize().into_bytes());
    }

    #[test]
    fn derived_secrets_and_nonces_differ_per_input() {
        let m = [3u8; 32];
        assert_ne!(
            derive_secret(&m, DeviceId(1), 0),
            derive_secret(&m, DeviceId(1), 1)
        );
        assert_ne!(
            derive_secret(&m, DeviceId(1), 0),
            derive_secret(&m, DeviceId(2), 0)
        );
        assert_ne!(nonce(&m, 1), nonce(&m, 2));
    }
}
