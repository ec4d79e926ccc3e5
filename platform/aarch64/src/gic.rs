//! The physical GICv3, as the hypervisor uses it at EL2, and the virtual CPU interface
//! (`ICH_*_EL2`) the guests' interrupts go through.
//!
//! Physical interrupts the hypervisor takes, all Group 1, priority 0x80, on every core:
//!
//! | INTID | what | why |
//! |---|---|---|
//! | 0 (SGI) | [`SGI_KICK`] | another core kicks this one: poll the runtime, or make the running vCPU exit |
//! | 25 (PPI) | [`PPI_MAINTENANCE`] | the virtual CPU interface's maintenance interrupt |
//! | 26 (PPI) | [`PPI_HYP_TIMER`] | the EL2 physical timer: the runtime's `until` |
//! | 27 (PPI) | [`PPI_VTIMER`] | the running vCPU's virtual timer |
//!
//! EL2 runs with IRQs masked: a guest's run ends with an IRQ exit when one arrives (`HCR_EL2.IMO`
//! routes them to EL2), and an idle core waits with `WFI` and then polls [`ack`]. The CPU
//! interface runs with `EOImode` = 1: [`eoi`] drops the running priority and [`deactivate`]
//! deactivates, so that the virtual timer's PPI can stay active (and so not fire again) while
//! the guest handles its virtual copy.
//!
//! No SPI is used: the distributor only gets affinity routing and Group 1 enabled.

use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::sysreg::{isb, sysreg_read, sysreg_write};
use crate::timer;

/// SGI that kicks a core.
pub const SGI_KICK: u32 = 0;
/// The virtual CPU interface's maintenance interrupt (Arm's recommended PPI, QEMU's choice).
pub const PPI_MAINTENANCE: u32 = 25;
/// The EL2 physical timer (CNTHP).
pub const PPI_HYP_TIMER: u32 = 26;
/// The EL1 virtual timer (CNTV): the running vCPU's timer.
pub const PPI_VTIMER: u32 = 27;
/// INTIDs from here are special (1020..1023: none pending, ...).
const SPECIAL: u32 = 1020;
const PRIORITY: u8 = 0x80;

static GICD_BASE: AtomicUsize = AtomicUsize::new(0);
static GICR_BASE: AtomicUsize = AtomicUsize::new(0);

// Distributor registers.
const GICD_CTLR: usize = 0x0;
const GICD_CTLR_RWP: u32 = 1 << 31;
const GICD_CTLR_ARE: u32 = 1 << 4;
const GICD_CTLR_GRP1: u32 = 1 << 1;
// Redistributor RD_base frame.
const GICR_CTLR: usize = 0x0;
const GICR_CTLR_RWP: u32 = 1 << 3;
const GICR_TYPER: usize = 0x8;
const GICR_WAKER: usize = 0x14;
const WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
const WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;
// Redistributor SGI_base frame (RD_base + 64 KiB).
const SGI_BASE: usize = 0x1_0000;
const GICR_IGROUPR0: usize = SGI_BASE + 0x80;
const GICR_ISENABLER0: usize = SGI_BASE + 0x100;
const GICR_ICENABLER0: usize = SGI_BASE + 0x180;
const GICR_IPRIORITYR: usize = SGI_BASE + 0x400;

/// Records where the GIC is. Called once by the boot code, from the board's promise.
///
/// # Safety
///
/// `gicd` and `gicr` must be the physical addresses of a GICv3 distributor (64 KiB) and of its
/// first redistributor (the frames follow each other up to the one with `GICR_TYPER.Last`),
/// mapped as device memory in every map the cores use, and used by nothing but this module.
pub(crate) unsafe fn set_bases(gicd: usize, gicr: usize) {
    GICD_BASE.store(gicd, Ordering::Release);
    GICR_BASE.store(gicr, Ordering::Release);
}

/// Why the GIC could not be set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GicError {
    /// The board gave no GIC addresses.
    NoGic,
    /// No redistributor has this core's affinity.
    NoRedistributor { mpidr: u64 },
    /// A register did not settle (RWP or ChildrenAsleep) within 100 ms.
    Timeout(&'static str),
}

impl fmt::Display for GicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GicError::NoGic => write!(f, "the board gave no GIC addresses"),
            GicError::NoRedistributor { mpidr } => write!(f, "no GIC redistributor has affinity {mpidr:#x}"),
            GicError::Timeout(what) => write!(f, "GIC: {what} did not settle within 100 ms"),
        }
    }
}

fn read32(addr: usize) -> u32 {
    // SAFETY: `addr` is a register of the GIC whose addresses `set_bases` was promised: device
    // memory, mapped, 4-byte aligned, accessed by nothing else than this module.
    unsafe { (addr as *const u32).read_volatile() }
}

fn write32(addr: usize, value: u32) {
    // SAFETY: as in `read32`.
    unsafe { (addr as *mut u32).write_volatile(value) }
}

fn read64(addr: usize) -> u64 {
    // SAFETY: as in `read32`; the GICR_TYPER register read with it is 8-byte aligned.
    unsafe { (addr as *const u64).read_volatile() }
}

/// Polls `addr` until `done(value)`, for at most 100 ms.
fn wait(addr: usize, what: &'static str, done: impl Fn(u32) -> bool) -> Result<(), GicError> {
    let start = timer::ticks();
    let patience = timer::frequency_hz() / 10;
    while !done(read32(addr)) {
        if timer::ticks().wrapping_sub(start) > patience {
            return Err(GicError::Timeout(what));
        }
        core::hint::spin_loop();
    }
    Ok(())
}

/// Turns the distributor on: affinity routing, Group 1. Once, on the boot core.
pub fn init_distributor() -> Result<(), GicError> {
    let gicd = GICD_BASE.load(Ordering::Acquire);
    if gicd == 0 {
        return Err(GicError::NoGic);
    }
    let ctlr = gicd + GICD_CTLR;
    // ARE may only change while the groups are disabled.
    write32(ctlr, 0);
    wait(ctlr, "GICD_CTLR.RWP", |v| v & GICD_CTLR_RWP == 0)?;
    write32(ctlr, GICD_CTLR_ARE);
    wait(ctlr, "GICD_CTLR.RWP", |v| v & GICD_CTLR_RWP == 0)?;
    write32(ctlr, GICD_CTLR_ARE | GICD_CTLR_GRP1);
    wait(ctlr, "GICD_CTLR.RWP", |v| v & GICD_CTLR_RWP == 0)
}

/// The RD_base of the redistributor whose affinity is `mpidr` (Aff3.Aff2.Aff1.Aff0).
fn redistributor_of(mpidr: u64) -> Result<usize, GicError> {
    let mut frame = GICR_BASE.load(Ordering::Acquire);
    if frame == 0 {
        return Err(GicError::NoGic);
    }
    let want = ((mpidr >> 8) & 0xff00_0000) | (mpidr & 0xff_ffff);
    for _ in 0..1024 {
        let typer = read64(frame + GICR_TYPER);
        if typer >> 32 == want {
            return Ok(frame);
        }
        if typer & (1 << 4) != 0 {
            break; // Last
        }
        // Two 64 KiB frames, or four with virtual LPIs (GICv4).
        frame += if typer & (1 << 1) != 0 { 0x4_0000 } else { 0x2_0000 };
    }
    Err(GicError::NoRedistributor { mpidr })
}

sysreg_read!(fn icc_sre_el2 = "icc_sre_el2");
sysreg_write!(fn write_icc_sre_el2 = "icc_sre_el2");
sysreg_write!(fn write_icc_sre_el1 = "icc_sre_el1");
sysreg_write!(fn write_icc_pmr_el1 = "icc_pmr_el1");
sysreg_write!(fn write_icc_bpr1_el1 = "icc_bpr1_el1");
sysreg_write!(fn write_icc_ctlr_el1 = "icc_ctlr_el1");
sysreg_write!(fn write_icc_igrpen1_el1 = "icc_igrpen1_el1");
sysreg_write!(fn write_icc_eoir1_el1 = "icc_eoir1_el1");
sysreg_write!(fn write_icc_dir_el1 = "icc_dir_el1");
sysreg_write!(fn write_icc_sgi1r_el1 = "icc_sgi1r_el1");

/// Sets up this core's redistributor and CPU interface: awake, SGI 0 and PPIs 25-27 enabled in
/// Group 1, every other private interrupt disabled; system-register interface at EL2 (and for
/// the guests at EL1), priority mask open, EOImode 1, Group 1 on; the virtual interface off.
pub fn init_this_core(mpidr: u64) -> Result<(), GicError> {
    let rd = redistributor_of(mpidr)?;
    write32(rd + GICR_WAKER, read32(rd + GICR_WAKER) & !WAKER_PROCESSOR_SLEEP);
    wait(rd + GICR_WAKER, "GICR_WAKER.ChildrenAsleep", |v| v & WAKER_CHILDREN_ASLEEP == 0)?;
    // Everything off first. Pending state is left alone: a kick another core sent before this
    // core got here is still delivered once SGI 0 is enabled below.
    write32(rd + GICR_ICENABLER0, u32::MAX);
    wait(rd + GICR_CTLR, "GICR_CTLR.RWP", |v| v & GICR_CTLR_RWP == 0)?;
    write32(rd + GICR_IGROUPR0, u32::MAX);
    for intid in [SGI_KICK, PPI_MAINTENANCE, PPI_HYP_TIMER, PPI_VTIMER] {
        let word = rd + GICR_IPRIORITYR + (intid as usize & !3);
        let shift = (intid % 4) * 8;
        write32(word, (read32(word) & !(0xff << shift)) | (u32::from(PRIORITY) << shift));
    }
    write32(rd + GICR_ISENABLER0, (1 << SGI_KICK) | (1 << PPI_MAINTENANCE) | (1 << PPI_HYP_TIMER) | (1 << PPI_VTIMER));

    // ICC_SRE_EL2: SRE, DFB, DIB, and Enable (EL1 may access ICC_SRE_EL1).
    write_icc_sre_el2(icc_sre_el2() | 0xf);
    isb();
    // The guests' view: system registers, FIQ and IRQ bypass disabled.
    write_icc_sre_el1(0x7);
    write_icc_pmr_el1(0xff);
    write_icc_bpr1_el1(0);
    // EOImode = 1: EOIR drops the priority, DIR deactivates.
    write_icc_ctlr_el1(1 << 1);
    write_icc_igrpen1_el1(1);
    write_ich_hcr(0);
    for n in 0..num_lrs() {
        write_lr(n, 0);
    }
    isb();
    Ok(())
}

/// Before this core turns itself off: its CPU interface stops signalling Group 1 and its
/// redistributor is marked asleep (GICR_WAKER.ProcessorSleep), as the GICv3 power-down
/// sequence asks, so the distributor does not target a core that is gone. [`init_this_core`]
/// undoes it when the core comes back.
pub fn disable_this_core(mpidr: u64) -> Result<(), GicError> {
    let rd = redistributor_of(mpidr)?;
    write_icc_igrpen1_el1(0);
    isb();
    write32(rd + GICR_WAKER, read32(rd + GICR_WAKER) | WAKER_PROCESSOR_SLEEP);
    wait(rd + GICR_WAKER, "GICR_WAKER.ChildrenAsleep", |v| v & WAKER_CHILDREN_ASLEEP != 0)
}

/// Acknowledges the highest-priority pending Group 1 interrupt of this core, if there is one.
/// Each one acknowledged must be ended with [`eoi`], and then deactivated with [`deactivate`]
/// (now or later).
pub fn ack() -> Option<u32> {
    let iar: u64;
    // SAFETY: reading ICC_IAR1_EL1 acknowledges the interrupt in the GIC (its only side effect,
    // which the callers complete with `eoi` and `deactivate`); no memory is accessed.
    unsafe { core::arch::asm!("mrs {}, icc_iar1_el1", out(reg) iar, options(nomem, nostack, preserves_flags)) };
    let intid = (iar & 0xff_ffff) as u32;
    (intid < SPECIAL).then_some(intid)
}

/// Drops the running priority of an acknowledged interrupt (EOImode 1: it stays active).
pub fn eoi(intid: u32) {
    write_icc_eoir1_el1(u64::from(intid));
}

/// Deactivates an interrupt whose priority was dropped.
pub fn deactivate(intid: u32) {
    write_icc_dir_el1(u64::from(intid));
    isb();
}

/// Sends SGI `intid` to the core with affinity `mpidr`.
pub fn send_sgi(intid: u32, mpidr: u64) {
    send_sgi_value(sgi_value(intid, mpidr));
}

/// The `ICC_SGI1R_EL1` value that sends SGI `intid` to the core with affinity `mpidr`.
pub const fn sgi_value(intid: u32, mpidr: u64) -> u64 {
    let aff0 = mpidr & 0xff;
    ((mpidr >> 32) & 0xff) << 48
        | ((mpidr >> 16) & 0xff) << 32
        | (aff0 >> 4) << 44
        | ((mpidr >> 8) & 0xff) << 16
        | ((intid & 0xf) as u64) << 24
        | 1 << (aff0 & 0xf)
}

/// Sends the SGI that `value` ([`sgi_value`]) describes.
pub fn send_sgi_value(value: u64) {
    // Earlier stores (the request the kick is about) are visible before the interrupt.
    crate::sysreg::dsb_ish();
    write_icc_sgi1r_el1(value);
    isb();
}

// ----- the virtual CPU interface -----

sysreg_read!(fn ich_vtr_el2 = "ich_vtr_el2");
sysreg_write!(pub(crate) fn write_ich_hcr = "ich_hcr_el2");
sysreg_read!(pub fn ich_misr = "ich_misr_el2");
sysreg_read!(pub fn ich_elrsr = "ich_elrsr_el2");
sysreg_read!(pub fn ich_vmcr = "ich_vmcr_el2");
sysreg_write!(pub(crate) fn write_ich_vmcr = "ich_vmcr_el2");

/// `ICH_HCR_EL2.En`: the virtual CPU interface is on.
pub const ICH_HCR_EN: u64 = 1 << 0;
/// `ICH_HCR_EL2.UIE`: maintenance interrupt when at most one list register is valid.
pub const ICH_HCR_UIE: u64 = 1 << 1;
/// `ICH_HCR_EL2.NPIE`: maintenance interrupt when no list register is pending.
pub const ICH_HCR_NPIE: u64 = 1 << 3;

/// Sets `ICH_HCR_EL2` (the virtual CPU interface's control: [`ICH_HCR_EN`], ...).
pub fn set_ich_hcr(value: u64) {
    write_ich_hcr(value);
}

/// List registers implemented (`ICH_VTR_EL2.ListRegs` + 1; QEMU has 4).
pub fn num_lrs() -> usize {
    (ich_vtr_el2() & 0x1f) as usize + 1
}

/// Virtual priority bits implemented (`ICH_VTR_EL2.PRIbits` + 1).
pub fn virtual_priority_bits() -> u8 {
    ((ich_vtr_el2() >> 29) & 0x7) as u8 + 1
}

/// Active-priority registers per group (`ICH_AP0R<n>`/`ICH_AP1R<n>`): 1, 2 or 4, from
/// `ICH_VTR_EL2.PREbits` + 1 = 5, 6 or 7. Read from the hardware once (every core has the
/// same); every vCPU load and unload asks.
pub fn num_aprs() -> usize {
    use core::sync::atomic::{AtomicUsize, Ordering};
    static APRS: AtomicUsize = AtomicUsize::new(0);
    match APRS.load(Ordering::Relaxed) {
        0 => {
            let n = match ((ich_vtr_el2() >> 26) & 0x7) + 1 {
                7 => 4,
                6 => 2,
                _ => 1,
            };
            APRS.store(n, Ordering::Relaxed);
            n
        }
        n => n,
    }
}

/// The running vCPU's virtual CPU interface as far as it decides what is signalled: the
/// priority mask and group enables of `ICH_VMCR_EL2` and the running priority of its
/// active-priority registers (for `Vgic::has_pending`). Only meaningful while a vCPU is
/// loaded.
pub fn virtual_cpu_interface() -> vdev::vgic::CpuInterface {
    let n = num_aprs();
    let (mut ap0r, mut ap1r) = ([0u64; 4], [0u64; 4]);
    for i in 0..n {
        ap0r[i] = read_ap0r(i);
        ap1r[i] = read_ap1r(i);
    }
    vdev::vgic::CpuInterface::from_registers(ich_vmcr(), &ap0r[..n], &ap1r[..n])
}

macro_rules! lr_accessors {
    ($($n:literal => $reg:literal),*) => {
        /// Reads `ICH_LR<n>_EL2` (`n` < [`num_lrs`]).
        pub fn read_lr(n: usize) -> u64 {
            match n {
                $($n => { sysreg_read!(fn r = $reg); r() })*
                _ => 0,
            }
        }

        /// Writes `ICH_LR<n>_EL2` (`n` < [`num_lrs`]).
        pub fn write_lr(n: usize, value: u64) {
            match n {
                $($n => { sysreg_write!(fn w = $reg); w(value) })*
                _ => {}
            }
        }
    };
}

lr_accessors!(
    0 => "ich_lr0_el2", 1 => "ich_lr1_el2", 2 => "ich_lr2_el2", 3 => "ich_lr3_el2",
    4 => "ich_lr4_el2", 5 => "ich_lr5_el2", 6 => "ich_lr6_el2", 7 => "ich_lr7_el2",
    8 => "ich_lr8_el2", 9 => "ich_lr9_el2", 10 => "ich_lr10_el2", 11 => "ich_lr11_el2",
    12 => "ich_lr12_el2", 13 => "ich_lr13_el2", 14 => "ich_lr14_el2", 15 => "ich_lr15_el2"
);

macro_rules! apr_accessors {
    ($read:ident, $write:ident, $($n:literal => $reg:literal),*) => {
        /// Reads an active-priority register of the virtual CPU interface (`n` < [`num_aprs`]).
        pub fn $read(n: usize) -> u64 {
            match n {
                $($n => { sysreg_read!(fn r = $reg); r() })*
                _ => 0,
            }
        }

        /// Writes an active-priority register of the virtual CPU interface (`n` < [`num_aprs`]).
        pub fn $write(n: usize, value: u64) {
            match n {
                $($n => { sysreg_write!(fn w = $reg); w(value) })*
                _ => {}
            }
        }
    };
}

apr_accessors!(read_ap0r, write_ap0r, 0 => "ich_ap0r0_el2", 1 => "ich_ap0r1_el2", 2 => "ich_ap0r2_el2", 3 => "ich_ap0r3_el2");
apr_accessors!(read_ap1r, write_ap1r, 0 => "ich_ap1r0_el2", 1 => "ich_ap1r1_el2", 2 => "ich_ap1r2_el2", 3 => "ich_ap1r3_el2");

/// Reads the implemented active-priority registers ([`num_aprs`]: 1, 2 or 4 of each group)
/// into `ap0r` and `ap1r`, for a vCPU that leaves the core; the others stay as they are.
pub fn save_aprs(ap0r: &mut [u64; 4], ap1r: &mut [u64; 4]) {
    let n = num_aprs();
    ap0r[0] = read_ap0r(0);
    ap1r[0] = read_ap1r(0);
    if n > 1 {
        ap0r[1] = read_ap0r(1);
        ap1r[1] = read_ap1r(1);
        if n > 2 {
            ap0r[2] = read_ap0r(2);
            ap1r[2] = read_ap1r(2);
            ap0r[3] = read_ap0r(3);
            ap1r[3] = read_ap1r(3);
        }
    }
}

/// Writes the implemented active-priority registers from `ap0r` and `ap1r` ([`save_aprs`]).
pub fn restore_aprs(ap0r: &[u64; 4], ap1r: &[u64; 4]) {
    let n = num_aprs();
    write_ap0r(0, ap0r[0]);
    write_ap1r(0, ap1r[0]);
    if n > 1 {
        write_ap0r(1, ap0r[1]);
        write_ap1r(1, ap1r[1]);
        if n > 2 {
            write_ap0r(2, ap0r[2]);
            write_ap1r(2, ap1r[2]);
            write_ap0r(3, ap0r[3]);
            write_ap1r(3, ap1r[3]);
        }
    }
}
