//! The identity map that `aarch64-rt` installs before any Rust code runs (boot and secondary
//! vCPUs alike).
//!
//! One level-1 table of 1 GiB blocks (`TCR_EL1.T0SZ` = 25, 39-bit addresses):
//!
//! | block | addresses | memory type | what is there |
//! |---|---|---|---|
//! | 0 | `0x0000_0000`..`0x4000_0000` | Device-nGnRE, execute-never | GIC, PL011 and the holes between devices |
//! | 1 | `0x4000_0000`..`0x8000_0000` | Normal write-back, inner shareable | RAM (only `memory_mib` of it exists) |
//! | 2 | `0x8000_0000`..`0xC000_0000` | Device-nGnRE, execute-never | nothing: beyond any test guest's RAM ([`crate::probe::OUTSIDE_RAM`]) |
//!
//! Normal cacheable RAM is what makes exclusives (and so atomics and the spin lock) work, and it
//! keeps the guest's view of its memory coherent with the hypervisor's cacheable mapping.

use aarch64_paging::descriptor::El1Attributes;
use aarch64_paging::mair::{Mair, MairAttribute, NormalMemory};
use aarch64_rt::InitialPagetable;

/// Block attributes for device memory.
const DEVICE: El1Attributes = El1Attributes::VALID
    .union(El1Attributes::ATTRIBUTE_INDEX_0)
    .union(El1Attributes::ACCESSED)
    .union(El1Attributes::UXN)
    .union(El1Attributes::PXN);

/// Block attributes for RAM.
const MEMORY: El1Attributes = El1Attributes::VALID
    .union(El1Attributes::ATTRIBUTE_INDEX_1)
    .union(El1Attributes::INNER_SHAREABLE)
    .union(El1Attributes::ACCESSED)
    .union(El1Attributes::NON_GLOBAL);

/// Attribute 0: device nGnRE; attribute 1: normal write-back read/write-allocate.
const MAIR: Mair = Mair::EMPTY.with_attribute(0, MairAttribute::DEVICE_NGNRE).with_attribute(
    1,
    MairAttribute::normal(
        NormalMemory::WriteBackNonTransientReadWriteAllocate,
        NormalMemory::WriteBackNonTransientReadWriteAllocate,
    ),
);

/// Size of one level-1 block.
pub(crate) const BLOCK: u64 = 1 << 30;

aarch64_rt::initial_pagetable!(
    {
        let mut table = [0; 512];
        table[0] = DEVICE.bits();
        table[1] = MEMORY.bits() | crate::RAM_BASE as usize;
        table[2] = DEVICE.bits() | (2 * BLOCK) as usize;
        InitialPagetable(table)
    },
    MAIR.0
);
