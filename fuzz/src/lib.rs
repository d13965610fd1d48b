//! Fuzz harnesses for `mdm-sync`, shared by the cargo-fuzz targets in
//! `fuzz_targets/`, the corpus generator (`examples/gen_corpus.rs`) and the
//! corpus replay test (`tests/corpus.rs`).
//!
//! Every harness reads its input as a script of operations: a tag byte, then
//! the operation's fields (integers little-endian, through `arbitrary`'s
//! `Unstructured`, whose integers are little-endian too), so that real
//! sessions can be written as seed inputs by [`script::Script`], and the
//! fuzzer can mutate them into anything else. Each harness checks its
//! invariants itself and panics (a crash for libFuzzer) when one breaks.

pub mod device;
pub mod frames;
pub mod mirror;
pub mod script;
pub mod server;
pub mod snapshot;

use arbitrary::{Arbitrary, Unstructured};

/// Reads operations from fuzz input; every read succeeds (missing bytes are zero).
pub struct Input<'a> {
    u: Unstructured<'a>,
}

impl<'a> Input<'a> {
    /// Input over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self {
            u: Unstructured::new(data),
        }
    }

    /// The next operation's tag, or `None` at the end of the input.
    pub fn tag(&mut self) -> Option<u8> {
        if self.u.is_empty() {
            None
        } else {
            Some(self.u8())
        }
    }

    /// One byte.
    pub fn u8(&mut self) -> u8 {
        self.u.arbitrary().unwrap_or(0)
    }

    /// Two bytes, little-endian.
    pub fn u16(&mut self) -> u16 {
        self.u.arbitrary().unwrap_or(0)
    }

    /// Four bytes, little-endian.
    pub fn u32(&mut self) -> u32 {
        self.u.arbitrary().unwrap_or(0)
    }

    /// Up to `n` raw bytes.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.u.len());
        self.u.bytes(n).unwrap_or(&[])
    }

    /// A clock reading moved by milliseconds (u32), backwards if the next
    /// byte is odd.
    pub fn moved(&mut self, now: u64) -> u64 {
        let ms = u64::from(self.u32());
        if self.u8() % 2 == 1 {
            now.saturating_sub(ms)
        } else {
            now.saturating_add(ms)
        }
    }

    /// A value built by `arbitrary`, if the input has enough left.
    pub fn arb<T: Arbitrary<'a>>(&mut self) -> Option<T> {
        self.u.arbitrary().ok()
    }
}

/// Feeds `bytes` to `sink` in chunks of `chunk` bytes (0: all at once).
pub fn chunked(bytes: &[u8], chunk: u8, mut sink: impl FnMut(&[u8])) {
    let size = if chunk == 0 {
        bytes.len().max(1)
    } else {
        usize::from(chunk)
    };
    for part in bytes.chunks(size) {
        sink(part);
    }
}
