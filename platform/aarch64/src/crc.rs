//! CRC-32C with the Armv8 CRC32C instructions, for the checkpoint codec and the checkpoint
//! disk's stream checksum: [`crc32c`] is what they use, chosen once per boot.
//!
//! The codec (`migrate`, no `unsafe`) cannot call the instructions itself: a safe call to a
//! `#[target_feature]` intrinsic needs the feature on the caller, and an `unsafe` block that
//! vouches for the CPU. So the instructions are wrapped here, checked against the portable
//! tables ([`Crc32c::checks_out`]) and handed to the codec as a [`Crc32c`].

use core::arch::aarch64::{__crc32cb, __crc32cd};

use migrate::checkpoint::Crc32c;

use crate::cpu;

static CHOSEN: spin::Once<Crc32c> = spin::Once::new();

/// The CRC-32C implementation for this CPU: the CRC32C instructions when it has them and they
/// agree with the portable tables, else the tables (said once on the console).
pub fn crc32c() -> Crc32c {
    *CHOSEN.call_once(|| {
        if !cpu::has_crc32() {
            return Crc32c::PORTABLE;
        }
        let armv8 = Crc32c::new("Armv8 CRC32C instructions", armv8_append);
        if armv8.checks_out() {
            armv8
        } else {
            crate::println!("crc: the CRC32C instructions disagree with the tables; using the tables");
            Crc32c::PORTABLE
        }
    })
}

/// [`Crc32c`]'s `append` with the CRC32C instructions. Only [`crc32c`] hands it out, after
/// [`cpu::has_crc32`] said the CPU has them.
fn armv8_append(crc: u32, bytes: &[u8]) -> u32 {
    // SAFETY: `armv8_append` is reachable only through the `Crc32c` that `crc32c` builds after
    // `cpu::has_crc32()` returned true, so the CPU executes the CRC32C instructions; the
    // function has no other precondition.
    unsafe { crc32c_words(crc, bytes) }
}

/// One CRC32CX per aligned 8 bytes, CRC32CB for the bytes before and after them. Serial: on a
/// real core this runs at one word per instruction latency (3 cycles on Cortex-A57); three
/// interleaved streams would triple that.
///
/// # Safety
///
/// The CPU must have the CRC32 instructions (ID_AA64ISAR0_EL1.CRC32 ≠ 0).
#[target_feature(enable = "crc")]
unsafe fn crc32c_words(crc: u32, bytes: &[u8]) -> u32 {
    // SAFETY: every bit pattern is a valid u64, so viewing the aligned middle of a byte slice
    // as u64s is sound; `align_to` picks the middle. (The target has strict alignment: the
    // words must be aligned for single loads.)
    let (head, words, tail) = unsafe { bytes.align_to::<u64>() };
    let mut c = !crc;
    for &b in head {
        c = __crc32cb(c, b);
    }
    for &w in words {
        // The instruction takes the word's bytes in little-endian order, as memory holds them.
        c = __crc32cd(c, u64::from_le(w));
    }
    for &b in tail {
        c = __crc32cb(c, b);
    }
    !c
}
