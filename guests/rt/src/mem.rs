//! The guest's free RAM: everything above the image.
//!
//! The image is linked at `0x4008_0000` and may not grow past 4 MiB (`memory.ld`), so RAM from
//! [`SCRATCH_BASE`] (`0x4048_0000`) on belongs to nobody. [`scratch`] hands a slice of it out
//! once. How much RAM there is depends on the platform (`-m` on QEMU, `memory_mib` under the
//! hypervisor): the caller asks only for what the guest's configuration says it has.

use core::sync::atomic::{AtomicBool, Ordering};

/// First byte of RAM above the image.
pub const SCRATCH_BASE: u64 = crate::RAM_BASE + 0x8_0000 + 4 * 1024 * 1024;

/// The most that [`scratch`] hands out: the rest of the guest's normal-memory mapping (1 GiB
/// from `RAM_BASE`).
pub const SCRATCH_MAX: usize = (crate::RAM_BASE + crate::mmu::BLOCK - SCRATCH_BASE) as usize;

static TAKEN: AtomicBool = AtomicBool::new(false);

/// The free RAM `[SCRATCH_BASE, SCRATCH_BASE + bytes)` as words, the first time it is asked
/// for; `None` after that, or if `bytes` exceeds [`SCRATCH_MAX`]. The guest must have that much
/// RAM: touching RAM it does not have ends in an abort.
pub fn scratch(bytes: usize) -> Option<&'static mut [u64]> {
    if bytes > SCRATCH_MAX || TAKEN.swap(true, Ordering::AcqRel) {
        return None;
    }
    let words = bytes / 8;
    // SAFETY: the range lies in the normal-memory RAM block of the identity map, above the
    // image (whose size the linker script bounds), so no Rust object lives there; `TAKEN`
    // makes this the only reference ever made to it. Any bit pattern is a valid u64, so the
    // (uninitialised as far as Rust knows, but physically present) RAM is valid to read.
    Some(unsafe { core::slice::from_raw_parts_mut(SCRATCH_BASE as *mut u64, words) })
}
