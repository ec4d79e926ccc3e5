//! Entry points: the boot core's `_start` and the secondaries' entry (`src/asm/entry.S`), and
//! the [`Board`] trait and [`entry!`](crate::entry!) macro a board binary uses to plug in.
//!
//! Boot core: `_start` (EL2, MMU off, x0 = boot argument) sets HCR_EL2, VBAR_EL2, TPIDR_EL2
//! (core index 0) and SP (top of stack slot 0), turns the MMU and caches on with the static
//! boot map, zeroes .bss and calls [`boot_core`], which sets up the timer, heap and console,
//! finds the device tree and calls [`Board::main`].
//!
//! Secondary core `k`: PSCI `CPU_ON` enters `__hv_secondary_entry` with x0 = `k`; the same
//! per-core setup runs (stack slot `k`, boot map), then [`secondary_core`] moves the core to the
//! final identity map and calls [`Board::secondary_main`].

use core::arch::global_asm;

use vcpu_runtime::CoreId;

use crate::layout::{MAX_CORES, PAGE_SIZE, STACK_SLOT_SIZE};
use crate::{console, gic, heap, mmu, timer};

/// HCR_EL2 while no guest runs: EL1 is AArch64 (RW); no VHE (E2H = 0), no traps, no stage 2.
const HCR_EL2_HOST: u64 = 1 << 31;

global_asm!(
    include_str!("asm/entry.S"),
    max_cores = const MAX_CORES,
    slot_lo = const STACK_SLOT_SIZE & 0xffff,
    slot_hi = const STACK_SLOT_SIZE >> 16,
    hcr = const HCR_EL2_HOST,
    mair = const mmu::MAIR_EL2,
    tcr = const mmu::TCR_EL2_BASE,
    sctlr = const mmu::SCTLR_EL2_MMU_ON,
    boot_table = sym mmu::BOOT_TABLE,
);

const _: () = assert!(STACK_SLOT_SIZE >> 32 == 0 && STACK_SLOT_SIZE % PAGE_SIZE == 0);

/// What the image knows about the machine before it has read the device tree.
///
/// # Safety
///
/// Implementing this trait promises, for the machine the image runs on:
/// 1. `PL011_BASE` is the physical address of a PL011 UART's 4 KiB register block, below
///    [`mmu::BOOT_DEVICE_END`] (so the boot map covers it as device memory), and no other code
///    accesses that UART;
/// 2. `RAM_BASE` is the start of RAM, 1 GiB aligned, and the image is linked inside the first
///    GiB of RAM, at least [`MAX_DTB_SIZE`] above `RAM_BASE` (the boot map covers exactly that
///    GiB as normal memory, and the device tree may occupy the space below the image);
/// 3. `GICD_BASE` and `GICR_BASE` are the physical addresses of a GICv3 distributor and of its
///    first redistributor (the frames follow each other up to the one whose `GICR_TYPER.Last`
///    is set), below [`mmu::BOOT_DEVICE_END`] and inside the device regions the board gives
///    [`mmu::init`], and nothing else accesses them.
pub unsafe trait Board {
    /// The board's name, for the banner.
    const NAME: &'static str;
    /// Physical address of the console UART (a PL011).
    const PL011_BASE: usize;
    /// Physical address where RAM starts; the firmware's device tree is found there when the
    /// boot argument does not point to one.
    const RAM_BASE: usize;
    /// Physical address of the GICv3 distributor.
    const GICD_BASE: usize;
    /// Physical address of the first GICv3 redistributor.
    const GICR_BASE: usize;

    /// The boot core's main function, called with the MMU on (boot map), the console, heap and
    /// timer ready, on core 0.
    fn main(boot: BootInfo) -> !;

    /// A secondary core's main function, called on the final identity map.
    fn secondary_main(core: CoreId) -> !;
}

/// The most bytes of device tree the image accepts (QEMU's is 1 MiB, padding included).
pub const MAX_DTB_SIZE: usize = 2 * 1024 * 1024;

/// What the boot core found at entry.
#[derive(Debug, Clone, Copy)]
pub struct BootInfo {
    /// The firmware's flattened device tree (its header checked: magic and size).
    pub dtb: &'static [u8],
    /// Where it was found.
    pub dtb_source: DtbSource,
}

/// Where the device tree came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtbSource {
    /// The address in x0 at entry (the Linux boot protocol).
    X0,
    /// The start of RAM, where QEMU puts it for images that are not Linux kernels.
    RamBase,
}

/// Defines the entry glue of a board binary: the two functions the assembly entry code calls,
/// which run the platform's boot sequence and then the board's [`Board`] functions.
///
/// ```ignore
/// platform_aarch64::entry!(QemuVirt);
/// ```
#[macro_export]
macro_rules! entry {
    ($board:ty) => {
        /// Called by `_start` on the boot core (src/asm/entry.S in platform-aarch64).
        #[allow(unsafe_code)]
        #[no_mangle]
        extern "C" fn __platform_aarch64_boot(boot_arg: usize) -> ! {
            $crate::entry::boot_core::<$board>(boot_arg)
        }

        /// Called by `__hv_secondary_entry` on each secondary core.
        #[allow(unsafe_code)]
        #[no_mangle]
        extern "C" fn __platform_aarch64_secondary(core: usize) -> ! {
            $crate::entry::secondary_core::<$board>(core)
        }
    };
}

/// The boot core's Rust entry (through [`entry!`](crate::entry!)): timer, heap, console, device
/// tree, then [`Board::main`]. Not for calling from anywhere else.
pub fn boot_core<B: Board>(boot_arg: usize) -> ! {
    timer::init();
    heap::init();
    // SAFETY: `B: Board` promises that `PL011_BASE` is a PL011 that only the console uses,
    // below `mmu::BOOT_DEVICE_END`, so device memory in the boot map; `mmu::init` refuses a
    // final map whose device regions do not cover it.
    unsafe { console::init(B::PL011_BASE) };
    // SAFETY: `B: Board` promises that these are the GIC's distributor and redistributors,
    // device memory the board maps, used by nothing but the `gic` module.
    unsafe { gic::set_bases(B::GICD_BASE, B::GICR_BASE) };
    let Some(boot) = find_dtb::<B>(boot_arg) else {
        crate::fail!("no flattened device tree in x0 ({boot_arg:#x}) or at the start of RAM ({:#x})", B::RAM_BASE);
    };
    B::main(boot)
}

/// A secondary core's Rust entry (through [`entry!`](crate::entry!)): the final map, then
/// [`Board::secondary_main`]. Not for calling from anywhere else.
pub fn secondary_core<B: Board>(core: usize) -> ! {
    mmu::switch_this_core();
    let core = u16::try_from(core).map(CoreId).unwrap_or_else(|_| unreachable!("the entry code checks the index"));
    B::secondary_main(core)
}

/// The device tree: at x0 if it points into the boot map's RAM and holds one, else at RAM_BASE.
fn find_dtb<B: Board>(boot_arg: usize) -> Option<BootInfo> {
    let candidates = [(boot_arg, DtbSource::X0), (B::RAM_BASE, DtbSource::RamBase)];
    candidates.into_iter().find_map(|(addr, dtb_source)| {
        let dtb = dtb_at(addr, B::RAM_BASE)?;
        Some(BootInfo { dtb, dtb_source })
    })
}

/// The device tree at `addr`, if `addr` is 8-byte aligned, lies with the whole tree in the
/// region `[ram_base, ram_base + MAX_DTB_SIZE)` and starts with an FDT header.
fn dtb_at(addr: usize, ram_base: usize) -> Option<&'static [u8]> {
    const FDT_MAGIC: u32 = 0xd00d_feed;
    let window_end = ram_base.checked_add(MAX_DTB_SIZE)?;
    if addr % 8 != 0 || addr < ram_base || addr.checked_add(8)? > window_end {
        return None;
    }
    let header = addr as *const u32;
    // SAFETY: `addr..addr + 8` lies in the first `MAX_DTB_SIZE` bytes of RAM, which the boot map
    // covers as normal memory (the `Board` contract) and which nothing in the image writes (the
    // image is linked above it); `addr` is 4-byte aligned.
    let (magic, total) = unsafe { (header.read_volatile(), header.add(1).read_volatile()) };
    let total = u32::from_be(total) as usize;
    if u32::from_be(magic) != FDT_MAGIC || total < 40 || addr.checked_add(total)? > window_end {
        return None;
    }
    // SAFETY: the `total` bytes at `addr` lie in the same region (checked just above): mapped,
    // initialised by the firmware, and never written by the hypervisor, so a shared `'static`
    // slice of them is valid for the rest of the run.
    Some(unsafe { core::slice::from_raw_parts(addr as *const u8, total) })
}
