//! The aarch64 EL2 platform of the hypervisor: what runs between the reset vector and the
//! runtime's core loop, and the hardware duties the runtime asks of it.
//!
//! The boot platform: the EL2 entry points ([`entry`]), per-core stacks ([`layout`]), the EL2
//! exception vector table ([`exceptions`]), the EL2 stage-1 identity map with caches on
//! ([`mmu`]), secondary bring-up with PSCI `CPU_ON` ([`smp`]), a console that never interleaves
//! lines ([`console`], [`println!`]), the generic timer and the EL2 timer ([`timer`]),
//! semihosting exit ([`semihosting`]), a heap, and a panic handler that reports the core and
//! fails the run.
//!
//! The hypervisor: RAM handed out in disjoint regions ([`ram`]), the vCPU context and world
//! switch ([`guest`]), stage-2 tables ([`stage2`]), the physical GIC and the virtual CPU
//! interface ([`gic`]), system register access ([`sysreg`]), `memcpy`, `memmove` and `memset`
//! ([`mem`]), CRC-32C with the CPU's CRC32C
//! instructions for checkpoints ([`crc`]), and, in safe code over all of
//! these, VMs built from the scenario manifest and the core loop that runs them with the
//! portable runtime ([`hyp`]).
//!
//! A board crate (such as `platform/qemu-virt`) implements [`entry::Board`] and names it with
//! [`entry!`]; everything it needs beyond that is safe code. All of the hypervisor's `unsafe`
//! lives in this crate; each block says which invariant holds and why.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

pub mod console;
pub mod cpu;
pub mod crc;
pub mod entry;
pub mod exceptions;
pub mod gic;
pub mod guest;
mod heap;
pub mod hyp;
pub mod layout;
pub mod mem;
pub mod mmu;
mod panic;
pub mod pmu;
pub mod ram;
pub mod semihosting;
pub mod smp;
pub mod stage2;
pub mod sync;
pub mod sysreg;
pub mod timer;
pub mod virtio;

pub use vcpu_runtime::{CoreId, Instant};

/// The exit codes the hypervisor ends QEMU with, through semihosting `SYS_EXIT`.
pub mod exit_code {
    /// The run did what it was asked.
    pub const SUCCESS: u32 = 0;
    /// A check failed (a core did not come online, a bad device tree, ...); the console says which.
    pub const FAILURE: u32 = 1;
    /// The hypervisor panicked.
    pub const PANIC: u32 = 2;
    /// An unexpected exception reached EL2.
    pub const EXCEPTION: u32 = 3;
    /// The image was not entered at EL2 (set by the entry code, before anything can be printed).
    pub const WRONG_EL: u32 = 4;
}

/// Reports a failure on the console as `FAIL: ...` and ends the run with
/// [`exit_code::FAILURE`].
#[macro_export]
macro_rules! fail {
    ($($arg:tt)*) => {{
        $crate::println!("FAIL: {}", format_args!($($arg)*));
        $crate::semihosting::exit($crate::exit_code::FAILURE)
    }};
}
