//! `memcpy`, `memmove` and `memset` for the EL2 image (`asm/mem.S`), and their check.
//!
//! Without them the image links `compiler_builtins`' portable versions, which copy eight bytes
//! per loop iteration in four instructions (a byte at a time when source and destination are
//! not aligned alike). The runtime moves a vCPU's scheduling state between cores by value
//! (about 200 bytes, copied eight times per hand-over), and those copies were a quarter of
//! the vCPU move's EL2 instructions (docs/benchmarks.md). These copy 32 bytes per iteration
//! of six instructions with general-register load/store pairs (never FP/SIMD: those registers
//! may hold a guest's state, and EL2's own use of them traps), and every access is naturally
//! aligned, so they work with the MMU off too. `compiler_builtins` defines its versions weak,
//! so these take their place in every caller, `core`'s included.
//!
//! [`check`] compares them with the obvious byte loops over every length up to
//! [`CHECK_MAX_LEN`] and every alignment of source and destination, and `memmove` in both
//! directions at several overlaps; `hv.selftest=mem` runs it at boot (hw-test
//! `the_memory_functions_agree_with_byte_loops`).

use core::arch::global_asm;
use core::hint::black_box;

global_asm!(include_str!("asm/mem.S"));

extern "C" {
    fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8;
    fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8;
    fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8;
}

/// The longest length [`check`] tries: two 32-byte iterations and every tail.
pub const CHECK_MAX_LEN: usize = 80;
const BUF: usize = 192;
/// Where `memmove`'s source starts in its buffer (plus the source's misalignment).
const MOVE_BASE: usize = 48;
/// `memmove`'s destination relative to its source: below it and above it, overlapping at
/// distances shorter and longer than a load pair and a loop iteration, and equal.
const MOVE_SHIFTS: [isize; 7] = [-40, -16, -3, 0, 5, 16, 40];

/// A wrong byte [`check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemError {
    pub function: &'static str,
    pub len: usize,
    pub dst_offset: usize,
    pub src_offset: usize,
    /// The first wrong byte's index in the destination buffer.
    pub index: usize,
    pub expected: u8,
    pub found: u8,
}

impl core::fmt::Display for MemError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{}: length {}, destination at {}, source at {}: byte {} is {:#04x}, expected {:#04x}",
            self.function, self.len, self.dst_offset, self.src_offset, self.index, self.found, self.expected
        )
    }
}

#[repr(C, align(16))]
struct Buf([u8; BUF]);

/// A byte pattern that no length or offset repeats within a buffer (37 is odd, so
/// `i * 37 mod 256` differs for 256 consecutive `i`).
fn pattern(seed: u8, i: usize) -> u8 {
    (i as u8).wrapping_mul(37).wrapping_add(seed)
}

fn fill(buf: &mut Buf, seed: u8) {
    for (i, b) in buf.0.iter_mut().enumerate() {
        *b = pattern(seed, i);
    }
}

fn verify(
    buf: &Buf,
    expected: impl Fn(usize) -> u8,
    function: &'static str,
    len: usize,
    dst_offset: usize,
    src_offset: usize,
) -> Result<(), MemError> {
    match buf.0.iter().enumerate().find(|&(i, &b)| b != expected(i)) {
        None => Ok(()),
        Some((index, &found)) => {
            Err(MemError { function, len, dst_offset, src_offset, index, expected: expected(index), found })
        }
    }
}

/// Checks `memcpy`, `memmove` and `memset` against byte loops; returns how many cases agreed.
pub fn check() -> Result<u32, MemError> {
    let mut src = Buf([0; BUF]);
    let mut dst = Buf([0; BUF]);
    let mut cases = 0;
    for len in 0..=CHECK_MAX_LEN {
        for s in 0..8 {
            for d in 0..8 {
                fill(&mut src, 1);
                fill(&mut dst, 2);
                // SAFETY: `d + len` and `s + len` are at most 87 < BUF, so both ranges lie in
                // their own buffers, which do not overlap; `black_box` keeps the compiler from
                // replacing the call with its own copy.
                unsafe {
                    memcpy(black_box(dst.0.as_mut_ptr().add(d)), black_box(src.0.as_ptr().add(s)), black_box(len))
                };
                let expected = |i: usize| if (d..d + len).contains(&i) { pattern(1, i - d + s) } else { pattern(2, i) };
                verify(&dst, expected, "memcpy", len, d, s)?;
                cases += 1;

                for shift in MOVE_SHIFTS {
                    let from = MOVE_BASE + s;
                    let to = from.wrapping_add_signed(shift) + d;
                    fill(&mut dst, 3);
                    // SAFETY: `from + len` ≤ 48 + 7 + 80 and `to + len` ≤ 48 + 7 + 40 + 7 + 80
                    // = 182 < BUF, and `to` ≥ 48 - 40 ≥ 0: both ranges lie in the buffer;
                    // `memmove` allows them to overlap.
                    unsafe {
                        let base = dst.0.as_mut_ptr();
                        memmove(black_box(base.add(to)), black_box(base.add(from)), black_box(len));
                    }
                    let expected =
                        |i: usize| if (to..to + len).contains(&i) { pattern(3, i - to + from) } else { pattern(3, i) };
                    verify(&dst, expected, "memmove", len, to, from)?;
                    cases += 1;
                }
            }
        }
        for d in 0..8 {
            fill(&mut dst, 4);
            let c = 0x1a5 + len as i32; // only the low byte counts
                                        // SAFETY: `d + len` ≤ 87 < BUF.
            unsafe { memset(black_box(dst.0.as_mut_ptr().add(d)), black_box(c), black_box(len)) };
            let expected = |i: usize| if (d..d + len).contains(&i) { c as u8 } else { pattern(4, i) };
            verify(&dst, expected, "memset", len, d, 0)?;
            cases += 1;
        }
    }
    Ok(cases)
}
