//! The CRC-32C implementation that checksums section payloads: portable tables by default, the
//! CPU's CRC-32C instructions where a build or a platform provides them. Every implementation
//! computes the same values (CRC-32C, the iSCSI polynomial), so which one wrote a stream never
//! matters to the reader.

use alloc::vec::Vec;
use core::fmt;

use super::wire::CRC;

/// A CRC-32C implementation: `append(crc, bytes)` is the CRC-32C of the bytes `crc` covers
/// followed by `bytes` (`append(0, bytes)`: the CRC-32C of `bytes`), as
/// `crc32c::crc32c_append` has it.
///
/// [`Crc32c::default`] is the best this build has: the `crc32c` crate (SSE4.2 on x86_64, the
/// Armv8 CRC instructions on aarch64, detected at run time; needs `std`) with the `hw-crc`
/// feature, else [`Crc32c::PORTABLE`]. A `no_std` platform whose CPU has CRC-32C instructions
/// wraps them in a function of its own and passes [`Crc32c::new`] of it to the codec
/// ([`Encoder::with_crc`](super::Encoder::with_crc), [`Decoder::with_crc`](super::Decoder::with_crc)),
/// after [`checks_out`](Crc32c::checks_out) said it computes what the portable tables do.
#[derive(Clone, Copy)]
pub struct Crc32c {
    name: &'static str,
    append: fn(u32, &[u8]) -> u32,
}

fn portable_append(crc: u32, bytes: &[u8]) -> u32 {
    // The digest's state is the reflected register before the final XOR; `init` reflects the
    // initial value it is given, so this continues from `crc`.
    let mut d = CRC.digest_with_initial((!crc).reverse_bits());
    d.update(bytes);
    d.finalize()
}

impl Crc32c {
    /// The `crc` crate's slice-by-16 tables (16 KiB, built at compile time): any CPU, `no_std`.
    pub const PORTABLE: Crc32c = Crc32c { name: "portable tables (slice-by-16)", append: portable_append };

    /// The `crc32c` crate: the CPU's CRC-32C instructions where it detects them at run time
    /// (SSE4.2 `crc32` on x86_64, `CRC32C*` on aarch64), else its own tables.
    #[cfg(feature = "hw-crc")]
    pub const HOST: Crc32c =
        Crc32c { name: "crc32c crate (CPU instructions when present)", append: crc32c::crc32c_append };

    /// A platform's implementation; `name` says which it is in `Debug` output. Check it with
    /// [`checks_out`](Self::checks_out) before use: a wrong one writes streams no other reader
    /// accepts, and accepts none that others wrote.
    pub const fn new(name: &'static str, append: fn(u32, &[u8]) -> u32) -> Crc32c {
        Crc32c { name, append }
    }

    /// What this implementation is.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// The CRC-32C of the bytes `crc` covers followed by `bytes`.
    #[inline]
    pub fn append(&self, crc: u32, bytes: &[u8]) -> u32 {
        (self.append)(crc, bytes)
    }

    /// The CRC-32C of `bytes`.
    #[inline]
    pub fn checksum(&self, bytes: &[u8]) -> u32 {
        (self.append)(0, bytes)
    }

    /// Whether this implementation agrees with [`Crc32c::PORTABLE`]: the standard check value,
    /// and 24 KiB of varied bytes taken at every alignment 0..8 in lengths 0..64, at two
    /// alignments in lengths around powers of two up to 16 KiB + 8, whole, and in uneven pieces
    /// appended one to the next (about 0.5 MiB of CRC in all). A platform calls this once
    /// before handing its own implementation to the codec.
    pub fn checks_out(&self) -> bool {
        if self.checksum(b"123456789") != 0xE306_9283 {
            return false;
        }
        let data: Vec<u8> = (0..24 * 1024 + 16u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
        let agrees = |bytes: &[u8]| self.checksum(bytes) == Crc32c::PORTABLE.checksum(bytes);
        let short = (0..8).flat_map(|start| (0..64).map(move |len| (start, len)));
        let long = [0, 5]
            .into_iter()
            .flat_map(|start| (4..=14).flat_map(move |k| [(1 << k) - 1, 1 << k, (1 << k) + 8].map(|len| (start, len))));
        if !short.chain(long).all(|(start, len)| agrees(&data[start..start + len])) {
            return false;
        }
        // Pieces of 1, 7, 13, … bytes, each appended to the CRC of what came before.
        let mut crc = 0;
        let mut at = 0;
        let mut piece = 1;
        while at < data.len() {
            let end = (at + piece).min(data.len());
            crc = self.append(crc, &data[at..end]);
            at = end;
            piece = piece * 2 + 5;
        }
        crc == Crc32c::PORTABLE.checksum(&data) && agrees(&data)
    }
}

impl Default for Crc32c {
    /// `Crc32c::HOST` with the `hw-crc` feature, else [`Crc32c::PORTABLE`].
    fn default() -> Self {
        #[cfg(feature = "hw-crc")]
        {
            Crc32c::HOST
        }
        #[cfg(not(feature = "hw-crc"))]
        {
            Crc32c::PORTABLE
        }
    }
}

impl fmt::Debug for Crc32c {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Crc32c").field(&self.name).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The raw step of a CRC-32C instruction (Armv8 `CRC32CX`, x86 `crc32 r64`): the register
    /// without the pre- and post-inversion, over 8 little-endian bytes. Built from the tables
    /// here, to test the word-wise implementation below as a platform would write it.
    fn word_step(crc: u32, word: u64) -> u32 {
        !portable_append(!crc, &word.to_le_bytes())
    }

    fn words_append(crc: u32, bytes: &[u8]) -> u32 {
        let mut c = !crc;
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut a = [0u8; 8];
            a.copy_from_slice(w);
            c = word_step(c, u64::from_le_bytes(a));
        }
        portable_append(!c, words.remainder())
    }

    fn wrong(crc: u32, bytes: &[u8]) -> u32 {
        // Right except when a piece is 4 KiB or longer.
        portable_append(crc, bytes) ^ u32::from(bytes.len() >= 4096)
    }

    #[test]
    fn portable_continues_a_crc() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        let whole = CRC.checksum(&data);
        for split in [0, 1, 8, 500, 999, 1000] {
            let (a, b) = data.split_at(split);
            assert_eq!(portable_append(portable_append(0, a), b), whole, "split at {split}");
        }
        assert_eq!(Crc32c::PORTABLE.checksum(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn implementations_check_out() {
        assert!(Crc32c::PORTABLE.checks_out());
        assert!(Crc32c::new("words", words_append).checks_out());
        assert!(Crc32c::default().checks_out());
        assert!(!Crc32c::new("wrong", wrong).checks_out());
        assert!(!Crc32c::new("zero", |_, _| 0).checks_out());
    }

    #[cfg(feature = "hw-crc")]
    #[test]
    fn the_crc32c_crate_agrees() {
        assert!(Crc32c::HOST.checks_out());
        // Lengths around its 3-way blocks (3 × 8 KiB and 3 × 256 bytes).
        let data: Vec<u8> = (0..100_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 9) as u8).collect();
        for len in [767, 768, 769, 24_575, 24_576, 24_583, 65_552, 100_000] {
            assert_eq!(Crc32c::HOST.checksum(&data[..len]), Crc32c::PORTABLE.checksum(&data[..len]), "{len}");
        }
    }
}
