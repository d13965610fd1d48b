//! Device authentication: HMAC-SHA256 challenge-response.
//!
//! The server answers a device's `Hello` with a fresh 16-byte nonce. The device
//! proves it holds its per-device secret with
//! `HMAC-SHA256(secret, "mdm-sync/2 proof" || nonce || SHA-256(Hello payload))`.
//! A nonce is used for one session only, so a recorded proof fails in any
//! other session; the proof covers the exact `Hello` bytes the server read, so
//! a `Hello` replayed from an earlier session (or altered on the way: another
//! task ledger, another push token) fails it too. Comparison is constant-time.
//!
//! HMAC and SHA-256 are computed here on whole blocks with the `sha2` crate's
//! compression function (`compress256`): every input has a length known
//! ahead, so each is hashed straight from its bytes, without the buffering
//! and state copies of the streaming `Digest`/`Mac` types (about 1,500
//! instructions per server sync). The results are plain HMAC-SHA256 and
//! SHA-256, checked against the `hmac` and `sha2` crates in the tests and
//! against PROTOCOL.md's vectors.

use ctutils::CtEq;
use sha2::block_api::compress256;

use crate::wire::DeviceId;

/// A per-device secret shared by the device and the server.
pub type Secret = [u8; 32];

const DOMAIN: &[u8; 16] = b"mdm-sync/2 proof";

/// SHA-256's initial hash state.
const IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// Hashes `msg` into `state`, which has absorbed `before` bytes (whole
/// blocks), pads, and returns the digest: SHA-256 of everything absorbed.
fn finish(mut state: [u32; 8], before: u64, msg: &[u8]) -> [u8; 32] {
    let (blocks, tail) = msg.as_chunks::<64>();
    compress256(&mut state, blocks);
    // The tail, the 0x80 marker and the bit length take one or two blocks.
    let mut last = [[0u8; 64]; 2];
    let flat = last.as_flattened_mut();
    flat[..tail.len()].copy_from_slice(tail);
    flat[tail.len()] = 0x80;
    let n = if tail.len() < 56 { 1 } else { 2 };
    let bits = before.wrapping_add(msg.len() as u64).wrapping_mul(8);
    flat[64 * n - 8..64 * n].copy_from_slice(&bits.to_be_bytes());
    compress256(&mut state, &last[..n]);
    let mut out = [0u8; 32];
    for (o, w) in out.chunks_exact_mut(4).zip(state) {
        o.copy_from_slice(&w.to_be_bytes());
    }
    out
}

/// SHA-256 of a `Hello` frame's payload, the exact bytes on the wire: what the
/// proof binds the session to.
pub fn hello_hash(payload: &[u8]) -> [u8; 32] {
    finish(IV, 0, payload)
}

/// The message the proof is the HMAC of: one 64-byte block.
fn proof_input(nonce: &[u8; 16], hello: &[u8; 32]) -> [u8; 64] {
    let mut m = [0u8; 64];
    m[..16].copy_from_slice(DOMAIN);
    m[16..32].copy_from_slice(nonce);
    m[32..].copy_from_slice(hello);
    m
}

/// The proof a device sends for `nonce`, after the `Hello` whose payload
/// hashes to `hello` (see [`hello_hash`]).
pub fn proof(secret: &Secret, nonce: &[u8; 16], hello: &[u8; 32]) -> [u8; 32] {
    PreparedKey::new(secret).mac(&proof_input(nonce, hello))
}

/// Whether `proof` is right for `nonce` and the `Hello` hashing to `hello`
/// (constant-time comparison).
pub fn verify(secret: &Secret, nonce: &[u8; 16], hello: &[u8; 32], proof: &[u8; 32]) -> bool {
    let expected = self::proof(secret, nonce, hello);
    expected.ct_eq(proof).to_bool()
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
    let mut m = [0u8; 29];
    m[..17].copy_from_slice(b"mdm-sync/1 secret");
    m[17..25].copy_from_slice(&device.0.to_le_bytes());
    m[25..].copy_from_slice(&generation.to_le_bytes());
    master.mac(&m)
}

/// An HMAC-SHA256 key with its inner and outer pads already hashed, for a
/// key used over and over (the server's master key): each use then hashes
/// two SHA-256 blocks instead of four.
#[derive(Clone)]
pub struct PreparedKey {
    // The hash states after `key ^ ipad` and after `key ^ opad` (RFC 2104;
    // the 32-byte key zero-padded to the 64-byte block).
    inner: [u32; 8],
    outer: [u32; 8],
}

impl PreparedKey {
    /// Prepares `key`.
    pub fn new(key: &Secret) -> Self {
        let mut ipad = [0x36u8; 64];
        let mut opad = [0x5cu8; 64];
        for ((i, o), k) in ipad.iter_mut().zip(opad.iter_mut()).zip(key) {
            *i ^= k;
            *o ^= k;
        }
        let (mut inner, mut outer) = (IV, IV);
        compress256(&mut inner, &[ipad]);
        compress256(&mut outer, &[opad]);
        Self { inner, outer }
    }

    /// HMAC-SHA256 of `msg` under this key.
    fn mac(&self, msg: &[u8]) -> [u8; 32] {
        let inner = finish(self.inner, 64, msg);
        finish(self.outer, 64, &inner)
    }
}

/// The 32 bytes that follow the seed in the generator's first block (see
/// [`Nonces`]): a domain string, zero-padded.
const NONCE_DOMAIN: &[u8; 32] = b"mdm-sync/2 nonce pairs\0\0\0\0\0\0\0\0\0\0";

/// The server's nonce generator. Nonce `counter` (from 1) is half of a
/// 32-byte block:
///
/// ```text
/// block(i) = SHA-256(seed || "mdm-sync/2 nonce pairs" zero-padded to 32 bytes || i (u64 LE))
/// nonce(counter) = bytes 16 * ((counter - 1) % 2) .. +16 of block((counter - 1) / 2)
/// ```
///
/// so that two nonces cost one SHA-256 compression: the first 64-byte block
/// (seed and domain) is hashed once, when the generator is made; each
/// `block(i)` then compresses one more block (the 8 counter bytes and the
/// padding). The inputs all have one length, 72 bytes.
///
/// Why this is enough: every output is the SHA-256 compression function keyed
/// by a secret chaining value (the hash state after the seed's block) and
/// applied to a block that never repeats for the seed. That the compression
/// function keyed this way is a pseudo-random function is the assumption
/// HMAC's own security proof rests on (HMAC keys it twice; for inputs of one
/// fixed length once suffices, since the one weakness of a plain keyed hash,
/// length extension, yields only hashes of longer inputs, which the server
/// never computes, and nonces are not checked by anyone as MACs). So while the
/// seed is secret a nonce is unpredictable from all the others; two nonces of
/// one seed are equal only by a 128-bit collision (as likely as with the HMAC
/// generator it replaced: about n^2 / 2^129 for n nonces).
#[derive(Clone)]
pub struct Nonces {
    // The hash state after the seed's block.
    keyed: [u32; 8],
    counter: u64,
    // The block of the last nonce handed out, and its index.
    block: [u8; 32],
    block_index: Option<u64>,
}

impl Nonces {
    /// A generator over `seed` (32 fresh random bytes per server process);
    /// its first nonce is nonce 1.
    pub fn new(seed: &Secret) -> Self {
        let mut first = [0u8; 64];
        first[..32].copy_from_slice(seed);
        first[32..].copy_from_slice(NONCE_DOMAIN);
        let mut keyed = IV;
        compress256(&mut keyed, &[first]);
        Self {
            keyed,
            counter: 0,
            block: [0; 32],
            block_index: None,
        }
    }

    /// The next nonce: nonce 1, 2, 3, ... (every second one costs a SHA-256
    /// compression; the others are the second half of the block before).
    pub fn next_nonce(&mut self) -> [u8; 16] {
        self.counter = self.counter.wrapping_add(1);
        let (index, half) = split_counter(self.counter);
        if self.block_index != Some(index) {
            self.block = nonce_block(&self.keyed, index);
            self.block_index = Some(index);
        }
        half_of(&self.block, half)
    }

    /// The number of the last nonce handed out (0 before the first): nonces
    /// are numbered in the order they were made.
    pub fn count(&self) -> u64 {
        self.counter
    }
}

/// Nonce `counter` (from 1) of the generator over `seed` (see [`Nonces`]).
pub fn nonce(seed: &Secret, counter: u64) -> [u8; 16] {
    let (index, half) = split_counter(counter);
    half_of(&nonce_block(&Nonces::new(seed).keyed, index), half)
}

fn split_counter(counter: u64) -> (u64, usize) {
    let n = counter.wrapping_sub(1);
    (n / 2, (n % 2) as usize)
}

fn nonce_block(keyed: &[u32; 8], index: u64) -> [u8; 32] {
    finish(*keyed, 64, &index.to_le_bytes())
}

fn half_of(block: &[u8; 32], half: usize) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(&block[16 * half..16 * half + 16]);
    out
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

    /// The block-level code gives what the streaming `hmac` and `sha2`
    /// types give, at every length around the padding's boundaries.
    #[test]
    fn block_level_hashes_equal_the_streaming_crates() {
        use hmac::{KeyInit, Mac};
        use sha2::Digest;
        let msg: std::vec::Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        let key = [9u8; 32];
        let prepared = PreparedKey::new(&key);
        for len in 0..msg.len() {
            let m = &msg[..len];
            let sha: [u8; 32] = sha2::Sha256::digest(m).into();
            assert_eq!(hello_hash(m), sha, "SHA-256, {len} bytes");
            let mut h = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&key).unwrap();
            h.update(m);
            let want: [u8; 32] = h.finalize().into_bytes().into();
            assert_eq!(prepared.mac(m), want, "HMAC, {len} bytes");
        }
    }

    use proptest::prelude::*;

    fn reference_hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
        use hmac::{KeyInit, Mac};
        let mut h = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).unwrap();
        h.update(msg);
        h.finalize().into_bytes().into()
    }

    fn reference_sha(msg: &[u8]) -> [u8; 32] {
        <sha2::Sha256 as sha2::Digest>::digest(msg).into()
    }

    /// Every length up to 33 blocks, each padding case several times over.
    #[test]
    fn block_level_hashes_equal_the_crates_up_to_33_blocks() {
        let msg: std::vec::Vec<u8> = (0..64 * 33u32).map(|i| (i * 31 + 11) as u8).collect();
        let key: Secret = core::array::from_fn(|i| (i * 13 + 1) as u8);
        let prepared = PreparedKey::new(&key);
        for len in 0..=msg.len() {
            let m = &msg[..len];
            assert_eq!(hello_hash(m), reference_sha(m), "SHA-256, {len} bytes");
            assert_eq!(
                prepared.mac(m),
                reference_hmac(&key, m),
                "HMAC, {len} bytes"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// SHA-256 and HMAC of random keys and messages far beyond 300 bytes,
        /// at random offsets into a buffer (any alignment).
        #[test]
        fn hashes_equal_the_crates_on_random_input(
            key in any::<[u8; 32]>(),
            buf in proptest::collection::vec(any::<u8>(), 0..5000),
            cut in any::<proptest::sample::Index>(),
            start in 0usize..8,
        ) {
            let start = start.min(buf.len());
            let m = &buf[start..start + cut.index(buf.len() - start + 1)];
            prop_assert_eq!(hello_hash(m), reference_sha(m));
            prop_assert_eq!(PreparedKey::new(&key).mac(m), reference_hmac(&key, m));
        }

        /// Proofs, their check and derived secrets equal HMAC-SHA256 of the
        /// documented inputs; a proof differing in any one bit fails.
        #[test]
        fn proofs_and_secrets_equal_the_documented_hmac(
            secret in any::<[u8; 32]>(),
            nonce in any::<[u8; 16]>(),
            hello in proptest::collection::vec(any::<u8>(), 0..700),
            device in any::<u64>(),
            generation in any::<u32>(),
            bit in 0usize..256,
        ) {
            let h = hello_hash(&hello);
            let mut input = std::vec::Vec::new();
            input.extend_from_slice(DOMAIN);
            input.extend_from_slice(&nonce);
            input.extend_from_slice(&h);
            let p = proof(&secret, &nonce, &h);
            prop_assert_eq!(p, reference_hmac(&secret, &input));
            prop_assert!(verify(&secret, &nonce, &h, &p));
            let mut bad = p;
            bad[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(!verify(&secret, &nonce, &h, &bad));
            let mut m = b"mdm-sync/1 secret".to_vec();
            m.extend_from_slice(&device.to_le_bytes());
            m.extend_from_slice(&generation.to_le_bytes());
            prop_assert_eq!(
                derive_secret(&secret, DeviceId(device), generation),
                reference_hmac(&secret, &m)
            );
        }

        /// Any nonce, at any counter, is the documented half of the
        /// documented SHA-256; the generator gives them in order from any
        /// starting point.
        #[test]
        fn nonces_are_the_documented_halves(seed in any::<[u8; 32]>(), counter in 1u64..u64::MAX) {
            let index = (counter - 1) / 2;
            let mut input = seed.to_vec();
            input.extend_from_slice(NONCE_DOMAIN);
            input.extend_from_slice(&index.to_le_bytes());
            let block = reference_sha(&input);
            let half = ((counter - 1) % 2) as usize;
            prop_assert_eq!(&nonce(&seed, counter)[..], &block[16 * half..16 * half + 16]);
            let mut g = Nonces::new(&seed);
            g.counter = counter - 1;
            prop_assert_eq!(g.next_nonce(), nonce(&seed, counter));
            prop_assert_eq!(g.count(), counter);
        }
    }

    /// 200,000 nonces of one generator: all distinct, each the documented
    /// one for its number, `count` the number of the last.
    #[test]
    fn many_nonces_are_distinct_and_numbered() {
        let seed = [0xA7u8; 32];
        let mut g = Nonces::new(&seed);
        assert_eq!(g.count(), 0);
        let mut seen = std::collections::HashSet::new();
        for counter in 1..=200_000u64 {
            let n = g.next_nonce();
            assert_eq!(g.count(), counter);
            assert!(seen.insert(n), "nonce {counter} repeats");
            if counter % 997 == 0 || counter < 10 {
                assert_eq!(n, nonce(&seed, counter), "nonce {counter}");
            }
        }
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

    #[test]
    fn the_generator_gives_the_documented_nonces_in_order() {
        let seed = [5u8; 32];
        let mut g = Nonces::new(&seed);
        let mut seen = std::collections::HashSet::new();
        for counter in 1..=9 {
            let n = g.next_nonce();
            assert_eq!(n, nonce(&seed, counter), "nonce {counter}");
            assert!(seen.insert(n), "nonce {counter} repeats");
        }
        // Nonces 1 and 2 are the two halves of one SHA-256 of the
        // documented 72-byte input.
        let mut input = seed.to_vec();
        input.extend_from_slice(NONCE_DOMAIN);
        input.extend_from_slice(&0u64.to_le_bytes());
        let block: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&input).into();
        assert_eq!(nonce(&seed, 1), block[..16]);
        assert_eq!(nonce(&seed, 2), block[16..]);
        assert_ne!(nonce(&[6u8; 32], 1), nonce(&seed, 1));
    }
}
