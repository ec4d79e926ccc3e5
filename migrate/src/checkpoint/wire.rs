//! Little-endian reading and writing, and the CRC-32C arithmetic of the format.

use alloc::vec::Vec;

/// CRC-32C (Castagnoli), slice-by-16 tables (16 KiB, built at compile time).
pub(crate) const CRC: crc::Crc<u32, crc::Table<16>> = crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISCSI);

// ----- CRC combination -----
//
// The whole-stream checksum is the CRC-32C of every byte before the trailer. Rather than hash
// every byte twice (once for its section, once for the stream), the stream CRC is built from
// the section CRCs: crc(A ‖ B) = crc(A)·x^(8·|B|) mod P  ⊕  crc(B), the method of zlib's
// `crc32_combine` (polynomial arithmetic over GF(2), bit-reflected as CRC-32C is).

/// CRC-32C's polynomial, bit-reflected.
const POLY: u32 = 0x82F6_3B78;

/// a·b mod P (both bit-reflected polynomials).
const fn multmodp(a: u32, mut b: u32) -> u32 {
    if a == 0 {
        return 0;
    }
    let mut m: u32 = 1 << 31;
    let mut p: u32 = 0;
    loop {
        if a & m != 0 {
            p ^= b;
            if a & (m - 1) == 0 {
                break;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
    }
    p
}

/// `X2N[k]` = x^(2^k) mod P.
const X2N: [u32; 32] = {
    let mut t = [0u32; 32];
    let mut p: u32 = 1 << 30; // x^1
    t[0] = p;
    let mut k = 1;
    while k < 32 {
        p = multmodp(p, p);
        t[k] = p;
        k += 1;
    }
    t
};

/// x^(n·2^k) mod P.
const fn x2nmodp(mut n: u64, mut k: usize) -> u32 {
    let mut p: u32 = 1 << 31; // x^0
    while n != 0 {
        if n & 1 != 0 {
            p = multmodp(X2N[k & 31], p);
        }
        n >>= 1;
        k += 1;
    }
    p
}

/// The operator that appends `len` bytes to a CRC (for [`combine_with`]).
pub(crate) const fn combine_op(len: u64) -> u32 {
    x2nmodp(len, 3)
}

/// CRC of A ‖ B from crc(A), crc(B) and `op` = `combine_op(|B|)`.
pub(crate) const fn combine_with(op: u32, crc_a: u32, crc_b: u32) -> u32 {
    multmodp(op, crc_a) ^ crc_b
}

/// A running CRC of a stream, extended by (CRC, length) pieces; remembers the operator of the
/// last length, since most sections of a checkpoint have the same few lengths.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StreamCrc {
    crc: u32,
    last_len: u64,
    last_op: u32,
}

impl StreamCrc {
    pub(crate) const fn new() -> StreamCrc {
        StreamCrc { crc: 0, last_len: 0, last_op: combine_op(0) }
    }

    pub(crate) fn append(&mut self, crc: u32, len: u64) {
        if len != self.last_len {
            self.last_len = len;
            self.last_op = combine_op(len);
        }
        self.crc = combine_with(self.last_op, self.crc, crc);
    }

    /// Appends a section header (16 bytes), whose own CRC is computed here.
    pub(crate) fn append_bytes16(&mut self, bytes: &[u8; 16]) {
        const OP16: u32 = combine_op(16);
        self.crc = combine_with(OP16, self.crc, CRC.checksum(bytes));
    }

    pub(crate) const fn value(&self) -> u32 {
        self.crc
    }
}

// ----- writing -----

/// Appends little-endian fields to a buffer.
pub(crate) struct Put<'a>(pub(crate) &'a mut Vec<u8>);

impl Put<'_> {
    pub(crate) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u128(&mut self, v: u128) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    pub(crate) fn zeros(&mut self, n: usize) {
        self.0.resize(self.0.len() + n, 0);
    }
}

// ----- reading -----

/// Reads little-endian fields from a payload whose length was checked beforehand. A read past
/// the end yields zero and marks the cursor overrun (checked once at the end), so parsing code
/// needs no error path per field and can never index out of bounds.
pub(crate) struct Get<'a> {
    bytes: &'a [u8],
    at: usize,
    overrun: bool,
}

impl<'a> Get<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Get<'a> {
        Get { bytes, at: 0, overrun: false }
    }

    pub(crate) fn take(&mut self, n: usize) -> &'a [u8] {
        match self.at.checked_add(n).and_then(|end| self.bytes.get(self.at..end)) {
            Some(s) => {
                self.at += n;
                s
            }
            None => {
                self.overrun = true;
                self.at = self.bytes.len();
                &[]
            }
        }
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let s = self.take(N);
        if s.len() == N {
            a.copy_from_slice(s);
        }
        a
    }

    pub(crate) fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }
    pub(crate) fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }
    pub(crate) fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }
    pub(crate) fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
    pub(crate) fn u128(&mut self) -> u128 {
        u128::from_le_bytes(self.array())
    }

    /// Bytes consumed so far.
    pub(crate) fn position(&self) -> usize {
        self.at
    }

    /// Whether every read so far was inside the payload and the payload is used up.
    pub(crate) fn exact(&self) -> bool {
        !self.overrun && self.at == self.bytes.len()
    }
}

/// Whether a page (or any buffer) is all zero bytes. Written so that the compiler vectorizes it
/// and so that a non-zero page is usually rejected within its first 64 bytes.
pub(crate) fn is_zero(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(64);
    for c in &mut chunks {
        let mut acc = 0u64;
        for w in c.chunks_exact(8) {
            let mut a = [0u8; 8];
            a.copy_from_slice(w);
            acc |= u64::from_ne_bytes(a);
        }
        if acc != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combine_matches_the_crc_of_the_concatenation() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for split in [0, 1, 15, 16, 17, 1000, 4096, 4999, 5000] {
            let (a, b) = data.split_at(split);
            let combined = combine_with(combine_op(b.len() as u64), CRC.checksum(a), CRC.checksum(b));
            assert_eq!(combined, CRC.checksum(&data), "split at {split}");
        }
        let mut s = StreamCrc::new();
        let mut hdr = [0u8; 16];
        hdr.copy_from_slice(&data[..16]);
        s.append_bytes16(&hdr);
        s.append(CRC.checksum(&data[16..100]), 84);
        s.append(CRC.checksum(&data[100..184]), 84);
        s.append(CRC.checksum(&data[184..]), (data.len() - 184) as u64);
        assert_eq!(s.value(), CRC.checksum(&data));
    }

    #[test]
    fn crc32c_check_value() {
        assert_eq!(CRC.checksum(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn zero_detection() {
        let mut page = [0u8; 4096];
        assert!(is_zero(&page));
        page[4095] = 1;
        assert!(!is_zero(&page));
        page[4095] = 0;
        page[70] = 0x80;
        assert!(!is_zero(&page));
        assert!(is_zero(&[0u8; 7]));
        assert!(!is_zero(&[0, 0, 1]));
    }

    #[test]
    fn get_never_reads_past_the_end() {
        let b = [1u8, 2, 3];
        let mut g = Get::new(&b);
        assert_eq!(g.u16(), 0x0201);
        assert!(!g.exact());
        assert_eq!(g.u32(), 0);
        assert!(!g.exact());
        assert_eq!(g.take(usize::MAX).len(), 0);
    }
}
