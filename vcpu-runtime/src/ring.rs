//! A byte ring: the hypervisor's console output waits here between the `println!` that made a
//! line and the moment a core has time to write it to the UART.
//!
//! A line is pushed whole or not at all (lines from different cores never interleave), and
//! bytes leave in the order they came. Portable so that its wrap-around is tested on the host.

/// A ring of `N` bytes.
pub struct ByteRing<const N: usize> {
    buf: [u8; N],
    /// Index of the oldest byte.
    head: usize,
    /// Bytes held.
    len: usize,
}

impl<const N: usize> Default for ByteRing<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> ByteRing<N> {
    pub const fn new() -> Self {
        ByteRing { buf: [0; N], head: 0, len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Room left.
    pub fn free(&self) -> usize {
        N - self.len
    }

    /// Appends all of `bytes`, or nothing (returns false) when they do not fit.
    pub fn push(&mut self, bytes: &[u8]) -> bool {
        if bytes.len() > self.free() {
            return false;
        }
        let tail = (self.head + self.len) % N;
        let first = bytes.len().min(N - tail);
        self.buf[tail..tail + first].copy_from_slice(&bytes[..first]);
        self.buf[..bytes.len() - first].copy_from_slice(&bytes[first..]);
        self.len += bytes.len();
        true
    }

    /// Moves the oldest bytes into `out`, as many as fit; returns how many.
    pub fn pop_into(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.len);
        let first = n.min(N - self.head);
        out[..first].copy_from_slice(&self.buf[self.head..self.head + first]);
        out[first..n].copy_from_slice(&self.buf[..n - first]);
        self.head = (self.head + n) % N;
        self.len -= n;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_leave_in_order_across_the_wrap() {
        let mut r = ByteRing::<8>::new();
        assert!(r.push(b"abcde"));
        let mut out = [0u8; 3];
        assert_eq!(r.pop_into(&mut out), 3);
        assert_eq!(&out, b"abc");
        // 2 held, 6 free: this push wraps around the end.
        assert!(r.push(b"fghijk"));
        assert_eq!((r.len(), r.free()), (8, 0));
        let mut all = [0u8; 16];
        assert_eq!(r.pop_into(&mut all), 8);
        assert_eq!(&all[..8], b"defghijk");
        assert!(r.is_empty());
    }

    #[test]
    fn a_line_that_does_not_fit_is_not_pushed_at_all() {
        let mut r = ByteRing::<4>::new();
        assert!(r.push(b"ab"));
        assert!(!r.push(b"cde"));
        assert_eq!(r.len(), 2);
        assert!(r.push(b"cd"));
        assert!(!r.push(b"e"));
        let mut out = [0u8; 4];
        assert_eq!(r.pop_into(&mut out), 4);
        assert_eq!(&out, b"abcd");
    }

    #[test]
    fn popping_an_empty_ring_gives_nothing() {
        let mut r = ByteRing::<4>::default();
        let mut out = [0u8; 2];
        assert_eq!(r.pop_into(&mut out), 0);
        assert!(r.push(b"xyzw"));
        assert_eq!(r.pop_into(&mut out), 2);
        assert_eq!(&out, b"xy");
        assert_eq!(r.pop_into(&mut out), 2);
        assert_eq!(&out, b"zw");
        assert_eq!(r.pop_into(&mut out), 0);
    }
}
