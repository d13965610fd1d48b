//! Device authentication: a challenge-response on SHA-256's compression
//! function keyed by the device's secret.
//!
//! The server answers a device's `Hello` with a fresh 16-byte nonce. The device
//! proves it holds its per-device secret with one SHA-256 compression whose
//! chaining value is the secret ([`proof`]), on a block that holds the nonce
//! and the `Hello` payload itself when that is at most 31 bytes (the usual
//! `Hello`, without a push token):
//! `C(secret, "mdm-sync/6 short" || nonce || payload || zeros || length)`,
//! or else the payload's SHA-256:
//! `C(secret, "mdm-sync/4 proof" || nonce || SHA-256(Hello payload))`
//! (see [`bind_hello`]).
//! A nonce is used for one session only, so a recorded proof fails in any
//! other session; the proof covers the exact `Hello` bytes the server read, so
//! a `Hello` replayed from an earlier session (or altered on the way: another
//! task ledger, another push token) fails it too. Comparison is constant-time.
//!
//! # The keyed compression function
//!
//! `C(state, block)` is SHA-256's compression function (FIPS 180-4, 6.2.2,
//! with the final addition of the input state): a 32-byte state, read as
//! eight big-endian words, and one 64-byte block give a new 32-byte state,
//! written as eight big-endian words. Everything secret here is one call of it
//! with a secret chaining value on a single block, which is why every input
//! of one use has one fixed length:
//!
//! - the proof, `C(secret, 64-byte block)`: 1 compression (HMAC-SHA256 took 5
//!   with the key prepared anew, as a device and the server did per proof),
//!   plus 1 or more to hash a `Hello` of more than 31 bytes;
//! - the server's derived secrets, `C(M, 64-byte block)` with `M` the state
//!   after the block `master || domain`, hashed once ([`PreparedMaster`]):
//!   1 compression (HMAC with a prepared key took 2);
//! - the server's nonces, `C(N, counter block)` with `N` the state after the
//!   block `seed || domain` ([`Nonces`]): half a compression per nonce.
//!
//! Why this is enough: SHA-256's compression function keyed through its
//! chaining value is a pseudo-random function; that is the assumption HMAC's
//! security proof rests on (Bellare, "New Proofs for NMAC and HMAC", 2006:
//! NMAC is this function iterated, keyed in its chaining value; HMAC derives
//! the chaining values by hashing a key block, which assumes in addition that
//! the function keyed through its block gives pseudo-random states, as `M`
//! and `N` here do). A pseudo-random function on inputs of one fixed length is
//! a secure MAC for them. What HMAC's second, outer key adds is protection
//! against length extension: from `C(k, x)` anyone can compute the keyed hash
//! of `x` followed by more blocks. That yields only values for longer inputs,
//! which nobody here ever computes or accepts: a proof is always one block
//! and nothing else is keyed by a device's secret; a secret is always one
//! block under `M`; a nonce is never checked as a MAC. So a proof cannot be
//! forged without the secret, a device's secret tells nothing about another
//! device's or about the master key, and nonces are unpredictable while the
//! seed is secret. The domain strings keep the keyed uses apart even if a
//! server used one key for master and seed, and keep the two forms of the
//! proof's block apart: a block that holds a `Hello` never equals one that
//! holds a hash.
//!
//! The cost: an implementation needs the compression function with a chosen
//! chaining value, not only a whole-message SHA-256 (most software SHA-256
//! has it as its block function; a hardware engine that only hashes whole
//! messages from the standard initial state cannot compute a proof).
//!
//! SHA-256 itself (a long `Hello`'s hash, the nonces) is computed here on whole
//! blocks with the `sha2` crate's compression function (`compress256`): every
//! input has a length known ahead, so each is hashed straight from its bytes,
//! without the buffering and state copies of the streaming `Digest` type.
//! The tests check it against `sha2::Sha256`, and PROTOCOL.md's vectors
//! against the documented blocks.

use ctutils::CtEq;
use sha2::block_api::compress256;

use crate::wire::DeviceId;

/// A per-device secret shared by the device and the server: a SHA-256
/// chaining value (eight big-endian 32-bit words) for [`proof`].
pub type Secret = [u8; 32];

/// The first 16 bytes of the proof's block when it holds the `Hello`'s hash.
const PROOF_DOMAIN: &[u8; 16] = b"mdm-sync/4 proof";

/// The first 16 bytes of the proof's block when it holds the `Hello` itself.
const SHORT_PROOF_DOMAIN: &[u8; 16] = b"mdm-sync/6 short";

/// The longest `Hello` payload that the proof's block holds as it is
/// (PROTOCOL.md 6.4): 32 bytes of room, the last one for the length.
pub const SHORT_HELLO_MAX: usize = 31;

/// The first 17 bytes of a derived secret's block.
const SECRET_DOMAIN: &[u8; 17] = b"mdm-sync/4 secret";

/// The 32 bytes that follow the master key in its block: a domain string,
/// zero-padded.
const MASTER_DOMAIN: &[u8; 32] = b"mdm-sync/4 secret key\0\0\0\0\0\0\0\0\0\0\0";

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

/// A state as its 32 bytes (eight big-endian words): SHA-256's digest
/// encoding.
fn state_bytes(state: [u32; 8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (o, w) in out.chunks_exact_mut(4).zip(state) {
        o.copy_from_slice(&w.to_be_bytes());
    }
    out
}

/// 32 bytes as a state (eight big-endian words).
fn state_words(bytes: &[u8; 32]) -> [u32; 8] {
    let mut state = [0u32; 8];
    for (w, b) in state.iter_mut().zip(bytes.as_chunks::<4>().0) {
        *w = u32::from_be_bytes(*b);
    }
    state
}

/// `C(state, block)`: one compression, no padding (see the module docs).
fn keyed_compress(mut state: [u32; 8], block: &[u8; 64]) -> [u8; 32] {
    compress256(&mut state, core::slice::from_ref(block));
    state_bytes(state)
}

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
    state_bytes(state)
}

/// SHA-256 of a `Hello` frame's payload, the exact bytes on the wire: what the
/// proof binds the session to when the payload is longer than
/// [`SHORT_HELLO_MAX`] (see [`bind_hello`]).
pub fn hello_hash(payload: &[u8]) -> [u8; 32] {
    finish(IV, 0, payload)
}

/// How the proof's block holds the session's `Hello` (PROTOCOL.md 6.4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HelloForm {
    /// The payload itself, at most [`SHORT_HELLO_MAX`] bytes: zero-padded to
    /// 31 bytes, then its length in one byte. The block starts
    /// `"mdm-sync/6 short"`.
    Inline,
    /// The payload's SHA-256 ([`hello_hash`]). The block starts
    /// `"mdm-sync/4 proof"`.
    #[default]
    Hashed,
}

/// What a proof binds of the session's `Hello`: the last 32 bytes of the
/// proof's block and the form that tells how to read them. Made from the
/// payload by [`bind_hello`]; both sides make it from the same bytes (the
/// device from what it sent, the server from what it read).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HelloBinding {
    /// Whether `bytes` hold the payload or its hash.
    pub form: HelloForm,
    /// The payload (padded, its length last) or its SHA-256.
    pub bytes: [u8; 32],
}

/// The binding of a `Hello` frame's payload, the exact bytes on the wire:
/// the payload itself if it has at most [`SHORT_HELLO_MAX`] bytes (no
/// hashing: a `Hello` without a push token, the usual one, costs one SHA-256
/// compression fewer on each side), its SHA-256 otherwise.
pub fn bind_hello(payload: &[u8]) -> HelloBinding {
    let mut bytes = [0u8; 32];
    match bytes.get_mut(..payload.len()) {
        Some(room) if payload.len() <= SHORT_HELLO_MAX => {
            room.copy_from_slice(payload);
            bytes[SHORT_HELLO_MAX] = payload.len() as u8;
            HelloBinding {
                form: HelloForm::Inline,
                bytes,
            }
        }
        _ => HelloBinding {
            form: HelloForm::Hashed,
            bytes: hello_hash(payload),
        },
    }
}

/// The proof's block: the form's domain string, the nonce, the binding's
/// 32 bytes; 64 bytes.
fn proof_block(nonce: &[u8; 16], hello: &HelloBinding) -> [u8; 64] {
    let domain = match hello.form {
        HelloForm::Inline => SHORT_PROOF_DOMAIN,
        HelloForm::Hashed => PROOF_DOMAIN,
    };
    let mut m = [0u8; 64];
    m[..16].copy_from_slice(domain);
    m[16..32].copy_from_slice(nonce);
    m[32..].copy_from_slice(&hello.bytes);
    m
}

/// The proof a device sends for `nonce`, after the `Hello` bound by `hello`
/// (see [`bind_hello`]): one SHA-256 compression with the secret as
/// chaining value, `C(secret, domain || nonce || hello)`, no padding (see
/// the module docs for why that is enough).
pub fn proof(secret: &Secret, nonce: &[u8; 16], hello: &HelloBinding) -> [u8; 32] {
    keyed_compress(state_words(secret), &proof_block(nonce, hello))
}

/// Whether `proof` is right for `nonce` and the `Hello` bound by `hello`
/// (constant-time comparison).
pub fn verify(secret: &Secret, nonce: &[u8; 16], hello: &HelloBinding, proof: &[u8; 32]) -> bool {
    let expected = self::proof(secret, nonce, hello);
    expected.ct_eq(proof).to_bool()
}

/// The secret of device `device` in enrollment `generation`, derived from the
/// server's master key:
///
/// ```text
/// M      = C(IV, master || "mdm-sync/4 secret key" zero-padded to 32 bytes)
/// secret = C(M, "mdm-sync/4 secret" || id (u64 LE) || generation (u32 LE) || 35 zero bytes)
/// ```
///
/// (`C` the keyed compression of the module docs, `IV` SHA-256's initial
/// state, so `M` is SHA-256's state after the first block.) The server's
/// store holds no per-device secret (the engine keeps a device's in memory
/// from its first authenticated handshake, tagged with its generation); a
/// new generation (re-enrollment) gets a new secret and the old one stops
/// working.
pub fn derive_secret(master: &Secret, device: DeviceId, generation: u32) -> Secret {
    derive_secret_prepared(&PreparedMaster::new(master), device, generation)
}

/// [`derive_secret`] with the master key's block hashed once: one
/// compression per secret.
pub fn derive_secret_prepared(
    master: &PreparedMaster,
    device: DeviceId,
    generation: u32,
) -> Secret {
    let mut m = [0u8; 64];
    m[..17].copy_from_slice(SECRET_DOMAIN);
    m[17..25].copy_from_slice(&device.0.to_le_bytes());
    m[25..29].copy_from_slice(&generation.to_le_bytes());
    keyed_compress(master.state, &m)
}

/// A master key's first block hashed: the state `M` of [`derive_secret`],
/// for a master key used over and over (the server's).
#[derive(Clone)]
pub struct PreparedMaster {
    state: [u32; 8],
}

impl PreparedMaster {
    /// Hashes `master`'s block (one compression).
    pub fn new(master: &Secret) -> Self {
        Self {
            state: first_block_state(master, MASTER_DOMAIN),
        }
    }
}

/// SHA-256's state after the first block `key || domain`: a secret chaining
/// value made from a secret key (the master state, the nonce generator's).
fn first_block_state(key: &Secret, domain: &[u8; 32]) -> [u32; 8] {
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(key);
    block[32..].copy_from_slice(domain);
    let mut state = IV;
    compress256(&mut state, &[block]);
    state
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
/// Why this is enough: every output is the compression function keyed by a
/// secret chaining value (the state after the seed's block) on a block that
/// never repeats for the seed, the construction of the module docs; nonces
/// need only be unpredictable, and no one checks them as MACs. So while the
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
        Self {
            keyed: first_block_state(seed, NONCE_DOMAIN),
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
    use proptest::prelude::*;

    /// A proof verifies for its own secret, nonce and `Hello` binding (in
    /// either form), and fails with any one byte of any of them changed, or
    /// with the other form of the same bytes.
    #[test]
    fn proof_verifies_only_for_its_own_inputs() {
        let secret: Secret = core::array::from_fn(|i| (i * 7 + 1) as u8);
        let nonce: [u8; 16] = core::array::from_fn(|i| (i * 5 + 2) as u8);
        let short = bind_hello(b"hello bytes");
        let long = bind_hello(&[7u8; 32]);
        assert_eq!(short.form, HelloForm::Inline);
        assert_eq!(long.form, HelloForm::Hashed);
        for hello in [short, long] {
            let p = proof(&secret, &nonce, &hello);
            assert!(verify(&secret, &nonce, &hello, &p));
            for i in 0..32 {
                let mut s = secret;
                s[i] ^= 0x01;
                assert!(!verify(&s, &nonce, &hello, &p), "secret byte {i}");
                let mut h = hello;
                h.bytes[i] ^= 0x80;
                assert!(!verify(&secret, &nonce, &h, &p), "Hello byte {i}");
                let mut q = p;
                q[i] ^= 0x10;
                assert!(!verify(&secret, &nonce, &hello, &q), "proof byte {i}");
            }
            for i in 0..16 {
                let mut n = nonce;
                n[i] ^= 0x04;
                assert!(!verify(&secret, &n, &hello, &p), "nonce byte {i}");
            }
            let other_form = HelloBinding {
                form: match hello.form {
                    HelloForm::Inline => HelloForm::Hashed,
                    HelloForm::Hashed => HelloForm::Inline,
                },
                ..hello
            };
            assert!(!verify(&secret, &nonce, &other_form, &p), "other form");
        }
        let p = proof(&secret, &nonce, &short);
        let other = bind_hello(b"hello bytez");
        assert!(!verify(&secret, &nonce, &other, &p), "another Hello");
    }

    /// Up to 31 bytes a `Hello` is held as it is, zero-padded, its length
    /// last; from 32 bytes on it is hashed. Payloads that differ only in
    /// trailing zeros bind differently.
    #[test]
    fn short_hellos_are_held_long_ones_hashed() {
        let msg: std::vec::Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(37) | 1).collect();
        for len in 0..=msg.len() {
            let b = bind_hello(&msg[..len]);
            if len <= SHORT_HELLO_MAX {
                let mut want = [0u8; 32];
                want[..len].copy_from_slice(&msg[..len]);
                want[31] = len as u8;
                assert_eq!(
                    b,
                    HelloBinding {
                        form: HelloForm::Inline,
                        bytes: want
                    },
                    "{len}"
                );
            } else {
                assert_eq!(
                    b,
                    HelloBinding {
                        form: HelloForm::Hashed,
                        bytes: reference_sha(&msg[..len])
                    }
                );
            }
        }
        assert_ne!(bind_hello(&[1, 0]), bind_hello(&[1]));
        assert_ne!(bind_hello(&[]), bind_hello(&[0]));
    }

    fn reference_sha(msg: &[u8]) -> [u8; 32] {
        <sha2::Sha256 as sha2::Digest>::digest(msg).into()
    }

    /// SHA-256's compression of one explicitly built block under a state
    /// given as 32 big-endian bytes, written back as 32 big-endian bytes.
    fn reference_compress(state: &[u8], block: &[u8]) -> [u8; 32] {
        let mut words: [u32; 8] = core::array::from_fn(|i| {
            u32::from_be_bytes(state[4 * i..4 * i + 4].try_into().unwrap())
        });
        let block: [u8; 64] = block.try_into().expect("one 64-byte block");
        compress256(&mut words, &[block]);
        let bytes: std::vec::Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
        bytes.try_into().unwrap()
    }

    /// The padding block of a 64-byte SHA-256 message: 0x80, zeros, the bit
    /// length 512 (u64 BE).
    fn padding_of_one_block() -> [u8; 64] {
        let mut pad = [0u8; 64];
        pad[0] = 0x80;
        pad[56..].copy_from_slice(&512u64.to_be_bytes());
        pad
    }

    /// The documented master block, built byte by byte.
    fn reference_master_block(master: &[u8; 32]) -> std::vec::Vec<u8> {
        let mut block = master.to_vec();
        block.extend_from_slice(b"mdm-sync/4 secret key");
        block.resize(64, 0);
        block
    }

    /// The block-level SHA-256 gives what the streaming `sha2` type gives,
    /// at every length around the padding's boundaries.
    #[test]
    fn block_level_sha256_equals_the_streaming_crate() {
        let msg: std::vec::Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in 0..msg.len() {
            let m = &msg[..len];
            assert_eq!(hello_hash(m), reference_sha(m), "SHA-256, {len} bytes");
        }
    }

    /// Every length up to 33 blocks, each padding case several times over.
    #[test]
    fn block_level_sha256_equals_the_crate_up_to_33_blocks() {
        let msg: std::vec::Vec<u8> = (0..64 * 33u32).map(|i| (i * 31 + 11) as u8).collect();
        for len in 0..=msg.len() {
            let m = &msg[..len];
            assert_eq!(hello_hash(m), reference_sha(m), "SHA-256, {len} bytes");
        }
    }

    /// The initial state is SHA-256's (the empty message is one padding
    /// block under it), and the prepared master state `M` is SHA-256's state
    /// after the documented first block: one more padding block under it
    /// gives SHA-256 of that block.
    #[test]
    fn the_master_state_is_sha256s_state_after_its_block() {
        let mut empty = [0u8; 64];
        empty[0] = 0x80;
        assert_eq!(
            reference_compress(&state_bytes(IV), &empty),
            reference_sha(b"")
        );
        for master in [[0u8; 32], [0xFF; 32], core::array::from_fn(|i| i as u8)] {
            let block = reference_master_block(&master);
            let m = state_bytes(PreparedMaster::new(&master).state);
            assert_eq!(m, reference_compress(&state_bytes(IV), &block));
            assert_eq!(
                reference_compress(&m, &padding_of_one_block()),
                reference_sha(&block)
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// SHA-256 of random messages far beyond 300 bytes, at random
        /// offsets into a buffer (any alignment).
        #[test]
        fn sha256_equals_the_crate_on_random_input(
            buf in proptest::collection::vec(any::<u8>(), 0..5000),
            cut in any::<proptest::sample::Index>(),
            start in 0usize..8,
        ) {
            let start = start.min(buf.len());
            let m = &buf[start..start + cut.index(buf.len() - start + 1)];
            prop_assert_eq!(hello_hash(m), reference_sha(m));
        }

        /// Proofs, their check and derived secrets equal the documented
        /// compressions of explicitly built blocks; a proof differing in any
        /// one bit fails.
        #[test]
        fn proofs_and_secrets_equal_the_documented_compressions(
            master in any::<[u8; 32]>(),
            secret in any::<[u8; 32]>(),
            nonce in any::<[u8; 16]>(),
            hello in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..=SHORT_HELLO_MAX),
                proptest::collection::vec(any::<u8>(), 0..700),
            ],
            device in any::<u64>(),
            generation in any::<u32>(),
            bit in 0usize..256,
        ) {
            let h = bind_hello(&hello);
            let mut block = if hello.len() <= SHORT_HELLO_MAX {
                b"mdm-sync/6 short".to_vec()
            } else {
                b"mdm-sync/4 proof".to_vec()
            };
            block.extend_from_slice(&nonce);
            if hello.len() <= SHORT_HELLO_MAX {
                block.extend_from_slice(&hello);
                block.resize(63, 0);
                block.push(hello.len() as u8);
            } else {
                block.extend_from_slice(&reference_sha(&hello));
            }
            let p = proof(&secret, &nonce, &h);
            prop_assert_eq!(p, reference_compress(&secret, &block));
            prop_assert!(verify(&secret, &nonce, &h, &p));
            let mut bad = p;
            bad[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(!verify(&secret, &nonce, &h, &bad));

            let m = reference_compress(&state_bytes(IV), &reference_master_block(&master));
            let mut block = b"mdm-sync/4 secret".to_vec();
            block.extend_from_slice(&device.to_le_bytes());
            block.extend_from_slice(&generation.to_le_bytes());
            block.resize(64, 0);
            let want = reference_compress(&m, &block);
            prop_assert_eq!(derive_secret(&master, DeviceId(device), generation), want);
            prop_assert_eq!(
                derive_secret_prepared(&PreparedMaster::new(&master), DeviceId(device), generation),
                want
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
            derive_secret(&[4u8; 32], DeviceId(1), 0),
            "another master key"
        );
        assert_ne!(
            derive_secret(&m, DeviceId(1), 0),
            derive_secret(&m, DeviceId(1), 1)
        );
        assert_ne!(
            derive_secret(&m, DeviceId(1), 0),
            derive_secret(&m, DeviceId(2), 0)
        );
        assert_ne!(nonce(&m, 1), nonce(&m, 2));
        let prepared = PreparedMaster::new(&m);
        let mut seen = std::collections::HashSet::new();
        for device in [0, 1, 2, 255, 256, u64::MAX - 1, u64::MAX] {
            for generation in [0, 1, 2, 255, 256, u32::MAX] {
                let s = derive_secret_prepared(&prepared, DeviceId(device), generation);
                assert!(seen.insert(s), "device {device} generation {generation}");
            }
        }
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
