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
//! RAM is mapped normal write-back, inner shareable, read-write, executable, in 4 KiB pages (no
//! blocks), so that dirty logging can write-protect single pages without splitting a live block
//! (which would need break-before-make). Anything else (the emulated devices, holes) stays
//! unmapped, so the guest's accesses there trap as stage-2 data aborts.
//!
//! **Dirty logging** (live migration, docs/migration.md): [`Stage2Map::write_protect`] makes RAM
//! pages read-only at stage 2. With software tracking, the guest's first write to such a page is a
//! stage-2 permission fault; the exit handler marks the page dirty and makes it writable again
//! ([`Stage2Map::make_writable`], then [`invalidate_ipa_local`]: this core's entries only). With hardware tracking (FEAT_HAFDBS:
//! `VTCR_EL2.HD` and the descriptors' DBM bit) the CPU makes the page writable itself on the
//! first write and [`Stage2Map::harvest_hardware_dirty`] finds such pages. Changing only the
//! write permission of a live descriptor needs no break-before-make; the TLB entries of the VM
//! are dropped on every core after each change that takes permission away ([`invalidate_vm`]),
//! and on the faulting core only after one that gives it back (another core's stale read-only
//! entry costs it one spurious fault).

use core::fmt;
use core::ops::Range;

use aarch64_paging::descriptor::{PhysicalAddress, Stage2Attributes};
use aarch64_paging::idmap::IdTranslation;
use aarch64_paging::paging::{Constraints, MemoryRegion, Stage2};
use aarch64_paging::{MapError, Mapping};
use core::cell::RefCell;

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
    let hd = if hardware_dirty_supported() && HARDWARE_DIRTY.load(core::sync::atomic::Ordering::Relaxed) {
        VTCR_HD
    } else {
        0
    };
    t0sz | (sl0 << 6) | (1 << 8) | (1 << 10) | (3 << 12) | (ps << 16) | (1 << 31) | hd
}

/// `VTCR_EL2.HD`: the CPU updates the dirty state of stage-2 descriptors with DBM set.
const VTCR_HD: u64 = 1 << 22;

/// Hardware dirty tracking is wanted where the CPU has it (`hv.dirty-log=wp` turns it off).
static HARDWARE_DIRTY: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(true);

/// `hv.dirty-log=hw|wp`: whether stage-2 dirty logging uses the CPU's dirty state where it has it
/// (else write-protect faults). Before the cores set `VTCR_EL2`.
pub fn set_hardware_dirty(wanted: bool) {
    HARDWARE_DIRTY.store(wanted, core::sync::atomic::Ordering::Relaxed);
}

/// Whether the CPU updates stage-2 dirty state (`ID_AA64MMFR1_EL1.HAFDBS` >= 2).
pub fn hardware_dirty_supported() -> bool {
    let mmfr1: u64;
    // SAFETY: reading an ID register has no side effect.
    unsafe { core::arch::asm!("mrs {}, id_aa64mmfr1_el1", out(reg) mmfr1, options(nomem, nostack, preserves_flags)) };
    mmfr1 & 0xf >= 2
}

/// Whether dirty logging uses the hardware's dirty state on this machine.
pub fn hardware_dirty() -> bool {
    hardware_dirty_supported() && HARDWARE_DIRTY.load(core::sync::atomic::Ordering::Relaxed)
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
    invalidate_vm(vttbr);
    // SAFETY: instruction cache invalidation (all cores) changes no memory contents.
    unsafe { core::arch::asm!("ic ialluis", "dsb ish", "isb", options(nostack, preserves_flags)) };
}

/// Drops every TLB entry of the VM with this `VTTBR_EL2` (stage 1 and 2, all cores), after a
/// permission was taken away. `VTTBR_EL2` is borrowed for the TLBI and given back.
pub fn invalidate_vm(vttbr: u64) {
    let saved: u64;
    // SAFETY: reading VTTBR_EL2 has no side effect.
    unsafe { core::arch::asm!("mrs {}, vttbr_el2", out(reg) saved, options(nomem, nostack, preserves_flags)) };
    // SAFETY: no guest runs on this core while it is at EL2, so the VMID in VTTBR_EL2 matters
    // only to the TLBI, which only drops entries of that VMID on every core; the `dsb ish` before
    // makes the descriptor writes visible to the walkers first. VTTBR_EL2 is restored before
    // anything could enter a guest.
    unsafe {
        core::arch::asm!(
            "dsb ishst",
            "msr vttbr_el2, {vm}",
            "isb",
            "tlbi vmalls12e1is",
            "dsb ish",
            "msr vttbr_el2, {saved}",
            "isb",
            vm = in(reg) vttbr,
            saved = in(reg) saved,
            options(nostack, preserves_flags)
        )
    };
}

/// Drops this core's TLB entries of one guest page of the VM whose `VTTBR_EL2` is loaded here (an
/// exit handler's), after its write permission was given back: its stage-2 entry and every
/// combined stage-1+2 entry of the VMID (those are not tagged by IPA).
///
/// This core only: giving a permission back needs no broadcast. Another core can hold only the
/// old read-only entry, which at worst makes its next write fault once more; that fault finds
/// the page writable already and drops that core's entries the same way (a spurious fault, as
/// KVM handles them). A broadcast here would cost every core of the machine: under QEMU a
/// shareable TLBI stops every vCPU thread and flushes each one's whole TLB, and a Linux guest
/// first writes tens of thousands of pages while it boots.
pub fn invalidate_ipa_local(ipa: u64) {
    // SAFETY: TLB invalidation on this core by IPA for the current VMID, then of its stage-1
    // entries; drops cached translations only. The `dsb ishst` first makes the descriptor
    // write visible to every core's walker (another core's spurious fault reads it).
    unsafe {
        core::arch::asm!(
            "dsb ishst",
            "tlbi ipas2e1, {page}",
            "dsb nsh",
            "tlbi vmalle1",
            "dsb nsh",
            "isb",
            page = in(reg) ipa >> 12,
            options(nostack, preserves_flags)
        )
    };
}

/// Drops this core's TLB entries, stage 1 and stage 2, of the VM loaded on it (`VTTBR_EL2`'s
/// VMID), after a change of its stage-2 map that only relaxed permissions: other cores keep
/// their entries, as with [`invalidate_ipa_local`].
pub fn invalidate_loaded_vm_local() {
    // SAFETY: TLB invalidation on this core for the current VMID; drops cached translations
    // only. The `dsb ishst` first makes the descriptor writes visible to every core's walker.
    unsafe { core::arch::asm!("dsb ishst", "tlbi vmalls12e1", "dsb nsh", "isb", options(nostack, preserves_flags)) };
}

/// The DBM bit of a stage-2 descriptor (`aarch64-paging` has no name for it at stage 2).
const S2_DBM: Stage2Attributes = Stage2Attributes::from_bits_retain(1 << 51);

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
        self.map
            .map_range(&region, PhysicalAddress(pa as usize), RAM, Constraints::NO_BLOCK_MAPPINGS)
            .map_err(Stage2Error::Map)
    }

    /// Makes the RAM pages of `ipa` read-only (with DBM set when `hardware` tracks dirtiness).
    /// The caller drops the VM's TLB entries after ([`invalidate_vm`]) before it reads the pages.
    pub fn write_protect(&mut self, ipa: Range<u64>, hardware: bool) -> Result<(), Stage2Error> {
        let region = MemoryRegion::new(ipa.start as usize, ipa.end as usize);
        let set = Stage2Attributes::S2AP_ACCESS_RO | if hardware { S2_DBM } else { Stage2Attributes::empty() };
        self.map
            .modify_range(&region, &|_, d| {
                if d.level() == 3 && d.flags().contains(Stage2Attributes::VALID) {
                    d.modify_flags(set, Stage2Attributes::S2AP_ACCESS_WO)?;
                }
                Ok(())
            })
            .map_err(Stage2Error::Map)
    }

    /// Gives the RAM page at `ipa` its write permission back and drops DBM (the end of dirty
    /// logging, or a software-tracked page written). The caller drops the page's TLB entries.
    pub fn make_writable(&mut self, ipa: Range<u64>) -> Result<(), Stage2Error> {
        let region = MemoryRegion::new(ipa.start as usize, ipa.end as usize);
        self.map
            .modify_range(&region, &|_, d| {
                if d.level() == 3 && d.flags().contains(Stage2Attributes::VALID) {
                    d.modify_flags(Stage2Attributes::S2AP_ACCESS_RW, S2_DBM)?;
                }
                Ok(())
            })
            .map_err(Stage2Error::Map)
    }

    /// With hardware dirty tracking: every page of `ipa` the CPU made writable since it was
    /// write-protected is made read-only again and handed to `dirty` (its IPA). The caller drops
    /// the VM's TLB entries before it reads those pages: a write through a stale entry lands
    /// before the copy, a later one marks the page again.
    pub fn harvest_hardware_dirty(&mut self, ipa: Range<u64>, dirty: &mut dyn FnMut(u64)) -> Result<(), Stage2Error> {
        let region = MemoryRegion::new(ipa.start as usize, ipa.end as usize);
        let found = RefCell::new(dirty);
        self.map
            .modify_range(&region, &|range, d| {
                let flags = d.flags();
                if d.level() == 3 && flags.contains(Stage2Attributes::VALID | S2_DBM | Stage2Attributes::S2AP_ACCESS_WO)
                {
                    // Only this bit changes, and only from set to clear: the CPU never clears it.
                    d.modify_flags(Stage2Attributes::empty(), Stage2Attributes::S2AP_ACCESS_WO)?;
                    (found.borrow_mut())(range.start().0 as u64);
                }
                Ok(())
            })
            .map_err(Stage2Error::Map)
    }

    /// `VTTBR_EL2` for this VM: root table and VMID.
    pub fn vttbr(&self) -> u64 {
        (self.map.root_address().0 as u64) | (u64::from(self.vmid) << 48)
    }

    pub fn vmid(&self) -> u16 {
        self.vmid
    }
}
