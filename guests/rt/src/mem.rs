//! The guest's RAM outside its image: the data blob below it, the free RAM above it.
//!
//! The image is linked at `0x4008_0000` and may not grow past 4 MiB (`memory.ld`), so RAM from
//! [`SCRATCH_BASE`] (`0x4048_0000`) on belongs to nobody. [`scratch`] hands a slice of it out
//! once. How much RAM there is depends on the platform (`-m` on QEMU, `memory_mib` under the
//! hypervisor): the caller asks only for what the guest's configuration says it has.
//!
//! Below the image, from [`DATA_BASE`] (the base of RAM), the hypervisor may have put a data
//! blob for the guest and passed its address in `x0` (docs/guest-abi.md); [`data_blob`] reads it.

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

/// Where the hypervisor puts a test guest's data blob (docs/guest-abi.md): the base of RAM.
pub const DATA_BASE: u64 = crate::RAM_BASE;

/// The most a data blob holds: the RAM from [`DATA_BASE`] up to the image (linked at
/// `0x4008_0000`); the hypervisor refuses larger blobs (`TEST_DATA_MAX`).
pub const DATA_MAX: usize = 0x8_0000;

/// The data blob the platform passed at entry, given the boot vCPU's `x0` (main's argument):
/// when `x0` is [`DATA_BASE`], the [`DATA_MAX`] bytes from there; else (`x0` = 0: no blob; bare
/// QEMU passes 0) `None`. The blob's own header says how much of it is used; the rest is
/// whatever RAM holds (zeros under the hypervisor, which clears guest RAM). Nothing in the guest
/// writes there, so every call may hand the bytes out.
pub fn data_blob(x0: u64) -> Option<&'static [u8]> {
    if x0 != DATA_BASE {
        return None;
    }
    // SAFETY: `[DATA_BASE, DATA_BASE + DATA_MAX)` is RAM below the image (which memory.ld
    // places at DATA_BASE + DATA_MAX), inside the normal-memory block of the identity map, and
    // present because the image above it is. No Rust object lives there and nothing in the guest
    // writes it (the runtime hands out only RAM above the image), so shared references to it
    // stay valid for the rest of the run; any byte is a valid u8.
    Some(unsafe { core::slice::from_raw_parts(DATA_BASE as *const u8, DATA_MAX) })
}
