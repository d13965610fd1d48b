//! One direction of the in-memory transport: a byte queue.

pub struct Pipe {
    buf: [u8; 2048],
    len: usize,
}

impl Pipe {
    pub const fn new() -> Self {
        Self {
            buf: [0; 2048],
            len: 0,
        }
    }

    pub fn write(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        assert!(end <= self.buf.len(), "pipe overflow");
        self.buf[self.len..end].copy_from_slice(bytes);
        self.len = end;
    }

    /// Takes up to `out.len()` bytes from the front.
    pub fn read(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.len);
        out[..n].copy_from_slice(&self.buf[..n]);
        self.buf.copy_within(n..self.len, 0);
        self.len -= n;
        n
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }
}
