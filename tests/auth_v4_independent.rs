//! The authentication of protocol versions 4 to 6 checked against PROTOCOL.md section 6
//! with a SHA-256 compression function written here from FIPS 180-4 (6.2.2),
//! not the `sha2` crate the library uses: the documented blocks are built
//! from the text, compressed here, and compared with the vectors of 15.1 and
//! with what `mdm_sync::auth` computes.

use mdm_sync::auth;
use mdm_sync::wire::DeviceId;

const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

const IV: [u8; 32] = [
    0x6a, 0x09, 0xe6, 0x67, 0xbb, 0x67, 0xae, 0x85, 0x3c, 0x6e, 0xf3, 0x72, 0xa5, 0x4f, 0xf5, 0x3a,
    0x51, 0x0e, 0x52, 0x7f, 0x9b, 0x05, 0x68, 0x8c, 0x1f, 0x83, 0xd9, 0xab, 0x5b, 0xe0, 0xcd, 0x19,
];

/// FIPS 180-4 6.2.2 steps 1 to 4 on one block, state as 32 big-endian bytes.
fn c(state: &[u8; 32], block: &[u8]) -> [u8; 32] {
    assert_eq!(block.len(), 64, "C takes exactly one block");
    let h: Vec<u32> = state
        .chunks(4)
        .map(|b| u32::from_be_bytes(b.try_into().unwrap()))
        .collect();
    let mut w = [0u32; 64];
    for t in 0..16 {
        w[t] = u32::from_be_bytes(block[4 * t..4 * t + 4].try_into().unwrap());
    }
    for t in 16..64 {
        let s0 = w[t - 15].rotate_right(7) ^ w[t - 15].rotate_right(18) ^ (w[t - 15] >> 3);
        let s1 = w[t - 2].rotate_right(17) ^ w[t - 2].rotate_right(19) ^ (w[t - 2] >> 10);
        w[t] = s1
            .wrapping_add(w[t - 7])
            .wrapping_add(s0)
            .wrapping_add(w[t - 16]);
    }
    let (mut a, mut b, mut cc, mut d, mut e, mut f, mut g, mut hh) =
        (h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]);
    for t in 0..64 {
        let big_s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
        let ch = (e & f) ^ (!e & g);
        let t1 = hh
            .wrapping_add(big_s1)
            .wrapping_add(ch)
            .wrapping_add(K[t])
            .wrapping_add(w[t]);
        let big_s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
        let maj = (a & b) ^ (a & cc) ^ (b & cc);
        let t2 = big_s0.wrapping_add(maj);
        hh = g;
        g = f;
        f = e;
        e = d.wrapping_add(t1);
        d = cc;
        cc = b;
        b = a;
        a = t1.wrapping_add(t2);
    }
    let out = [a, b, cc, d, e, f, g, hh];
    let mut bytes = [0u8; 32];
    for i in 0..8 {
        bytes[4 * i..4 * i + 4].copy_from_slice(&h[i].wrapping_add(out[i]).to_be_bytes());
    }
    bytes
}

/// Whole-message SHA-256 from `c` (FIPS 180-4 5.1.1 padding).
fn sha256(msg: &[u8]) -> [u8; 32] {
    let mut m = msg.to_vec();
    m.push(0x80);
    while m.len() % 64 != 56 {
        m.push(0);
    }
    m.extend_from_slice(&((msg.len() as u64) * 8).to_be_bytes());
    let mut s = IV;
    for block in m.chunks(64) {
        s = c(&s, block);
    }
    s
}

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The bytes of `vector NAME:` in PROTOCOL.md.
fn vector(name: &str) -> Vec<u8> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/PROTOCOL.md"))
        .expect("PROTOCOL.md");
    let prefix = format!("vector {name}: ");
    let line = text
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no vector {name}"));
    unhex(&line[prefix.len()..])
}

fn arr32(v: &[u8]) -> [u8; 32] {
    v.try_into().unwrap()
}

/// The FIPS 180-4 examples (one and two blocks) and the empty message.
#[test]
fn own_sha256_meets_fips_examples() {
    assert_eq!(
        sha256(b"abc").to_vec(),
        unhex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    );
    assert_eq!(
        sha256(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq").to_vec(),
        unhex("248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
    );
    assert_eq!(
        sha256(b"").to_vec(),
        unhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    );
}

const MASTER: [u8; 32] = {
    let mut m = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        m[i] = i as u8;
        i += 1;
    }
    m
};
const SEED: [u8; 32] = {
    let mut m = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        m[i] = 0x20 + i as u8;
        i += 1;
    }
    m
};

/// Section 6.2's text, built byte by byte from its words.
fn master_block(master: &[u8; 32]) -> Vec<u8> {
    let mut b = master.to_vec();
    let domain = b"mdm-sync/4 secret key";
    assert_eq!(domain.len(), 21, "the text says 21 ASCII bytes");
    b.extend_from_slice(domain);
    b.extend_from_slice(&[0; 11]);
    b
}

fn secret_block(device: u64, generation: u32) -> Vec<u8> {
    let mut b = b"mdm-sync/4 secret".to_vec();
    assert_eq!(b.len(), 17);
    b.extend_from_slice(&device.to_le_bytes());
    b.extend_from_slice(&generation.to_le_bytes());
    b.extend_from_slice(&[0; 35]);
    b
}

/// Section 6.4's block for a `Hello` payload: a payload of up to 31 bytes
/// itself (version 6), a longer one by its SHA-256.
fn proof_block(nonce: &[u8], hello: &[u8]) -> Vec<u8> {
    if hello.len() <= 31 {
        let mut b = b"mdm-sync/6 short".to_vec();
        assert_eq!(b.len(), 16);
        b.extend_from_slice(nonce);
        b.extend_from_slice(hello);
        b.resize(63, 0);
        b.push(hello.len() as u8);
        return b;
    }
    let mut b = b"mdm-sync/4 proof".to_vec();
    assert_eq!(b.len(), 16);
    b.extend_from_slice(nonce);
    b.extend_from_slice(&sha256(hello));
    b
}

/// Every authentication vector of 15.1 follows from the documented inputs
/// through this file's own compression, and the library agrees.
#[test]
fn protocol_md_auth_vectors_follow_from_the_text() {
    let mb = master_block(&MASTER);
    assert_eq!(mb, vector("master-block"));
    let m = c(&IV, &mb);
    assert_eq!(m.to_vec(), vector("master-state"));
    let sb = secret_block(1001, 2);
    assert_eq!(sb, vector("secret-block"));
    let secret = c(&m, &sb);
    assert_eq!(secret.to_vec(), vector("secret"));
    assert_eq!(auth::derive_secret(&MASTER, DeviceId(1001), 2), secret);

    // Nonce 1: first half of SHA-256(seed || domain zero-padded || 0 u64 LE).
    let mut input = SEED.to_vec();
    input.extend_from_slice(b"mdm-sync/2 nonce pairs");
    input.extend_from_slice(&[0; 10]);
    assert_eq!(input.len(), 64);
    input.extend_from_slice(&0u64.to_le_bytes());
    assert_eq!(input[32..].to_vec(), vector("nonce-input"));
    let nonce = sha256(&input)[..16].to_vec();
    assert_eq!(nonce, vector("nonce"));
    assert_eq!(auth::nonce(&SEED, 1).to_vec(), nonce);
    assert_eq!(nonce[..4].to_vec(), vector("session-key"));

    // The hello vector is a frame: magic(2) length(2) payload CRC(4).
    let hello_frame = vector("hello");
    let payload = &hello_frame[4..hello_frame.len() - 4];
    assert_eq!(payload.len(), 26, "15.1 says 26 payload bytes");
    let pb = proof_block(&nonce, payload);
    assert_eq!(pb, vector("proof-block"));
    let p = c(&secret, &pb);
    assert_eq!(p.to_vec(), vector("proof"));
    let n16: [u8; 16] = nonce.clone().try_into().unwrap();
    let bound = auth::bind_hello(payload);
    assert_eq!(auth::proof(&secret, &n16, &bound), p);
    assert!(auth::verify(&secret, &n16, &bound, &p));

    // A longer Hello (hello-long): the block holds its SHA-256.
    let long_frame = vector("hello-long");
    let long = &long_frame[4..long_frame.len() - 4];
    assert!(long.len() > 31);
    let hh = sha256(long);
    assert_eq!(hh.to_vec(), vector("hello-long-hash"));
    assert_eq!(auth::hello_hash(long), hh);
    let pb = proof_block(&nonce, long);
    assert_eq!(pb, vector("proof-block-long"));
    let pl = c(&secret, &pb);
    assert_eq!(pl.to_vec(), vector("proof-long"));
    assert_eq!(auth::proof(&secret, &n16, &auth::bind_hello(long)), pl);
    // The proof frame carries exactly this proof.
    let pf = vector("proof-frame");
    assert!(
        pf.windows(32).any(|w| w == p),
        "proof-frame does not carry the proof"
    );
}

/// Random inputs: the library's proof, secret and hello hash equal this
/// file's compression of the documented blocks; one changed bit anywhere
/// (secret, nonce, hello, generation, device) fails or changes the result.
#[test]
fn library_equals_own_compression_on_many_inputs() {
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..2000 {
        let mut master = [0u8; 32];
        master.iter_mut().for_each(|b| *b = next() as u8);
        let device = next();
        let generation = next() as u32;
        let secret = auth::derive_secret(&master, DeviceId(device), generation);
        let want = c(
            &c(&IV, &master_block(&master)),
            &secret_block(device, generation),
        );
        assert_eq!(secret, want, "round {round}");
        assert_ne!(
            auth::derive_secret(&master, DeviceId(device), generation.wrapping_add(1)),
            secret
        );
        assert_ne!(
            auth::derive_secret(&master, DeviceId(device ^ 1), generation),
            secret
        );

        let mut nonce = [0u8; 16];
        nonce.iter_mut().for_each(|b| *b = next() as u8);
        // Half of them short enough to be held in the block as they are.
        let len = if round % 2 == 0 {
            next() % 32
        } else {
            next() % 400
        } as usize;
        let hello: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let hh = sha256(&hello);
        assert_eq!(auth::hello_hash(&hello), hh, "{len} bytes");
        let bound = auth::bind_hello(&hello);
        let p = auth::proof(&secret, &nonce, &bound);
        assert_eq!(p, c(&secret, &proof_block(&nonce, &hello)), "{len} bytes");
        assert!(auth::verify(&secret, &nonce, &bound, &p));
        let bit = (next() % 256) as usize;
        let mut s2 = secret;
        s2[bit / 8] ^= 1 << (bit % 8);
        assert!(!auth::verify(&s2, &nonce, &bound, &p));
        let mut n2 = nonce;
        n2[(bit / 8) % 16] ^= 1 << (bit % 8);
        assert!(!auth::verify(&secret, &n2, &bound, &p));
        let mut h2 = bound;
        h2.bytes[bit / 8] ^= 1 << (bit % 8);
        assert!(!auth::verify(&secret, &nonce, &h2, &p));
        // The proof of one hello is not the proof of a hello one byte longer.
        let mut longer = hello.clone();
        longer.push(0);
        assert!(!auth::verify(
            &secret,
            &nonce,
            &auth::bind_hello(&longer),
            &p
        ));
        let _ = arr32(&p);
    }
}
