//! Bytes waiting for a peer that reads slower than we write.

use std::io::{self, Write};

/// Capacity kept after the buffer drains; more is given back.
const KEEP_CAPACITY: usize = 1 << 20;
/// Below this many consumed bytes the front is not worth moving.
const MIN_COMPACT: usize = 64 << 10;

/// A FIFO of bytes for one peer. Writes take from the front; appends go to the back. The
/// consumed front is reclaimed as it grows (not only when everything has been written), so the
/// memory held is proportional to what is still unsent, whatever the two rates are. It has no
/// limit of its own: the owner decides how much unsent data it accepts ([`OutBuf::len`]).
#[derive(Debug, Default)]
pub struct OutBuf {
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    pos: usize,
}

impl OutBuf {
    /// An empty buffer.
    pub fn new() -> OutBuf {
        OutBuf::default()
    }

    /// Unsent bytes.
    pub fn len(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// True when everything has been written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held in memory for this buffer (capacity), for accounting and tests.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The unsent bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Appends `data`.
    pub fn push(&mut self, data: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(data);
    }

    /// Appends whatever `f` writes to the vector it is given (for encoders that write into a
    /// `Vec<u8>`); `f` must only append.
    pub fn append_with<R>(&mut self, f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        self.compact();
        f(&mut self.buf)
    }

    /// Drops `n` unsent bytes from the front, as if written.
    pub fn consume(&mut self, n: usize) {
        self.pos += n.min(self.len());
        if self.pos == self.buf.len() {
            self.clear();
        }
    }

    /// Drops everything unsent.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.pos = 0;
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        }
    }

    /// Writes to `w` until it is all written or `w` would block. `Ok(true)`: all written.
    /// Errors are the writer's (a zero-length write is `WriteZero`); `Interrupted` is retried.
    pub fn write_to(&mut self, w: &mut impl Write) -> io::Result<bool> {
        while !self.is_empty() {
            match w.write(self.as_slice()) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.consume(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Moves the unsent bytes to the start once the consumed front is at least as large as
    /// they are (so each byte is moved at most once on average), and gives back capacity that
    /// is far larger than what is held.
    fn compact(&mut self) {
        if self.pos == 0 {
            return;
        }
        if self.pos >= MIN_COMPACT && self.pos >= self.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
            if self.buf.capacity() > KEEP_CAPACITY && self.buf.capacity() > 4 * self.buf.len() {
                self.buf.shrink_to((2 * self.buf.len()).max(KEEP_CAPACITY));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that takes at most `rate` bytes per write and then would block.
    struct Slow {
        got: Vec<u8>,
        rate: usize,
        calls: usize,
    }

    impl Write for Slow {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls.is_multiple_of(2) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = b.len().min(self.rate);
            self.got.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn memory_follows_the_unsent_bytes_not_the_total() {
        let mut o = OutBuf::new();
        let mut peer = Slow {
            got: Vec::new(),
            rate: 4096,
            calls: 0,
        };
        let chunk: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
        let mut sent = 0usize;
        // 256 MiB pass through while the peer never catches up completely.
        for _ in 0..65536 {
            o.push(&chunk);
            sent += chunk.len();
            let _ = o.write_to(&mut peer);
            assert!(o.len() <= 2 * chunk.len());
            assert!(o.capacity() <= 1 << 20, "capacity {}", o.capacity());
            if peer.got.len() > 1 << 20 {
                // Keep the check's own memory small; compare the bytes as they arrive.
                peer.got.clear();
            }
        }
        assert!(sent >= 256 << 20);
        while !o.write_to(&mut peer).unwrap() {}
        assert!(o.is_empty());
    }

    #[test]
    fn bytes_arrive_in_order() {
        let mut o = OutBuf::new();
        let mut peer = Slow {
            got: Vec::new(),
            rate: 7,
            calls: 0,
        };
        let mut want = Vec::new();
        for i in 0..20000u32 {
            let b = i.to_le_bytes();
            o.append_with(|v| v.extend_from_slice(&b));
            want.extend_from_slice(&b);
            let _ = o.write_to(&mut peer);
        }
        while !o.write_to(&mut peer).unwrap() {}
        assert_eq!(peer.got, want);
    }
}
