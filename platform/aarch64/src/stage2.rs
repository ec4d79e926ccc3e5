//! Stage-2 translation: one table per VM (guest physical addresses to the RAM the VM was given)
//! and `VTCR_EL2`, which every VM shares.
//!
//! The tables are built with `aarch64-paging`'s `Stage2` regime (identity-mapped table memory
//! from the heap). That crate sets neither VMID nor `VTCR_EL2`; both are here:
//!
//! - `VTCR_EL2`: 4 KiB granule, IPA size [`IPA_BITS`] (T0SZ = 25, the walk starts at level 1
//!   with one 4 KiB root table), table walks inner-shareable write-back, PS = the CPU's physical
//!   address size clamped to 48 bits (the 4 KiB descriptors carry 48-bit addresses), 8-bit VMIDs
//!   (VS = 0, enough for the 255 VMs a manifest can hold with VMIDs 1..).
//! - `VTTBR_EL2` = root | VMID << 48, loaded with the vCPU ([`crate::guest::load`]).
//!
//! RAM is mapped normal write-back, inner shareable, read-write, executable. Anything else (the
//! emulated devices, holes) stays unmapped, so the guest's accesses there trap as stage-2 data
//! aborts.

use core::fmt;
use core::ops::Range;

use aarch64_paging::descriptor::{PhysicalAddress, Stage2Attributes};
use aarch64_paging::idmap::IdTranslation;
use aarch64_paging::paging::{Constraints, MemoryRegion, Stage2};
use aarch64_paging::{MapError, Mapping};

use crate::sysreg::{isb, sysreg_write};

/// The guest physical address space: 512 GiB, which holds RAM at 1 GiB plus the 64 GiB a
/// manifest may give a guest.
pub const IPA_BITS: u32 = 39;

/// The largest VMID with 8-bit VMIDs.
pub const MAX_VMID: u16 = 255;

/// `VTCR_EL2` for this CPU (PS from `ID_AA64MMFR0_EL1.PARange`, at most 48 bits).
pub fn vtcr() -> u64 {
    let ps = (crate::sysreg::id_aa64mmfr0_el1() & 0xf).min(5);
    let t0sz = u64::from(64 - IPA_BITS);
    let sl0 = 1; // start at level 1 (4 KiB granule)
    t0sz | (sl0 << 6) | (1 << 8) | (1 << 10) | (3 << 12) | (ps << 16) | (1 << 31)
}

sysreg_write!(fn write_vtcr_el2 = "vtcr_el2");

/// Why stage 2 cannot be used on this CPU, or a mapping failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage2Error {
    /// The CPU's physical addresses are narrower than the IPA space.
    PaTooSmall(u32),
    /// VMIDs are 1..=[`MAX_VMID`].
    BadVmid(u16),
    Map(MapError),
}

impl fmt::Display for Stage2Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stage2Error::PaTooSmall(bits) => {
                write!(f, "the CPU has {bits}-bit physical addresses; stage 2 needs at least {IPA_BITS}")
            }
            Stage2Error::BadVmid(v) => write!(f, "VMID {v} is not in 1..={MAX_VMID}"),
            Stage2Error::Map(e) => write!(f, "stage-2 mapping failed: {e}"),
        }
    }
}

/// Sets `VTCR_EL2` on this core and drops any stale stage-1/stage-2 TLB entries of EL1&0.
pub fn init_this_core() -> Result<(), Stage2Error> {
    let pa = crate::cpu::pa_bits();
    if pa < IPA_BITS {
        return Err(Stage2Error::PaTooSmall(pa));
    }
    write_vtcr_el2(vtcr());
    isb();
    // SAFETY: TLB invalidation of the EL1&0 regime (all VMIDs) on this core: no guest runs, and
    // EL2's own translation is not affected.
    unsafe { core::arch::asm!("tlbi alle1", "dsb nsh", "isb", options(nostack, preserves_flags)) };
    Ok(())
}

/// Forgets everything the cores cached of a VM's old life after its image was loaded again
/// (`SYSTEM_RESET`): every TLB entry of its VMID, stage 1 and stage 2, on every core (the
/// guest will reuse its ASIDs with new tables), and every instruction cache line (the new code
/// was only cleaned to the point of coherency). `VTTBR_EL2` is borrowed for the TLBI, which
/// acts on the VMID it holds, and given back.
pub fn forget_vm(vttbr: u64) {
    let saved: u64;
    // SAFETY: reading VTTBR_EL2 has no side effect.
    unsafe { core::arch::asm!("mrs {}, vttbr_el2", out(reg) saved, options(nomem, nostack, preserves_flags)) };
    // SAFETY: no guest runs on this core while it is at EL2, so the VMID in VTTBR_EL2 matters
    // only to the TLBI, which drops entries (of this VMID, all cores) and the instruction
    // caches; EL2's own translation is not affected; VTTBR_EL2 is restored before anything
    // could enter a guest.
    unsafe {
        core::arch::asm!(
            "msr vttbr_el2, {vm}",
            "isb",
            "tlbi vmalls12e1is",
            "ic ialluis",
            "dsb ish",
            "msr vttbr_el2, {saved}",
            "isb",
            vm = in(reg) vttbr,
            saved = in(reg) saved,
            options(nostack, preserves_flags)
        )
    };
}

/// A VM's stage-2 translation table.
pub struct Stage2Map {
    map: Mapping<IdTranslation<Stage2Attributes>, Stage2>,
    vmid: u16,
}

impl fmt::Debug for Stage2Map {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stage2Map").field("root", &self.map.root_address()).field("vmid", &self.vmid).finish()
    }
}

/// Attributes of guest RAM.
const RAM: Stage2Attributes = Stage2Attributes::VALID
    .union(Stage2Attributes::MEMATTR_NORMAL_INNER_WB)
    .union(Stage2Attributes::MEMATTR_NORMAL_OUTER_WB)
    .union(Stage2Attributes::S2AP_ACCESS_RW)
    .union(Stage2Attributes::SH_INNER)
    .union(Stage2Attributes::ACCESS_FLAG);

impl Stage2Map {
    /// An empty table for the VM with this VMID (1..=[`MAX_VMID`]; VMID 0 is never used, so no
    /// TLB entry of another VM can match a new one).
    pub fn new(vmid: u16) -> Result<Stage2Map, Stage2Error> {
        if vmid == 0 || vmid > MAX_VMID {
            return Err(Stage2Error::BadVmid(vmid));
        }
        Ok(Stage2Map { map: Mapping::new(IdTranslation::new(), 1, Stage2), vmid })
    }

    /// Maps guest physical `ipa` to the RAM at `pa` (page aligned, same length). Done before
    /// any vCPU of the VM runs: the table is not live yet, so no TLB maintenance is needed.
    pub fn map_ram(&mut self, ipa: Range<u64>, pa: u64) -> Result<(), Stage2Error> {
        let region = MemoryRegion::new(ipa.start as usize, ipa.end as usize);
        self.map.map_range(&region, PhysicalAddress(pa as usize), RAM, Constraints::empty()).map_err(Stage2Error::Map)
    }

    /// `VTTBR_EL2` for this VM: root table and VMID.
    pub fn vttbr(&self) -> u64 {
        (self.map.root_address().0 as u64) | (u64::from(self.vmid) << 48)
    }

    pub fn vmid(&self) -> u16 {
        self.vmid
    }
}
