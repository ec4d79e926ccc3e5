//! The GICv3 (docs/guest-abi.md: distributor at `0x0800_0000`, one redistributor per vCPU from
//! `0x080A_0000` in vCPU order), driven with `arm-gic`, and the IRQ dispatch.
//!
//! [`init`] on the first vCPU that calls it sets the distributor up (affinity routing, Group 1
//! non-secure enabled, every SPI Group 1 at priority 0x80) and every redistributor's defaults;
//! on every vCPU it enables the system-register CPU interface (`ICC_SRE_EL1`), wakes that vCPU's
//! redistributor, enables the SGIs 0..15 and the virtual timer's PPI 27 there, opens the
//! priority mask (`ICC_PMR_EL1` = 0xFF) and enables Group 1 (`ICC_IGRPEN1_EL1`).
//!
//! IRQs are acknowledged with `ICC_IAR1_EL1` and ended with `ICC_EOIR1_EL1` (EOI mode 0: the
//! write also deactivates); in between, the handler registered for the INTID runs
//! ([`set_handler`]). Handlers run on the interrupted vCPU's stack with IRQs masked.

use crate::sync::{mask_irqs, SpinLock};
use crate::{cpu_index, mpidr, MAX_VCPUS};
use arm_gic::gicv3::registers::{Gicd, GicrSgi};
use arm_gic::gicv3::{GicCpuInterface, GicRedistributorIterator, GicV3, SgiTarget, SgiTargetGroup};
use arm_gic::{IntId, InterruptGroup, UniqueMmioPointer};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Guest physical address of the distributor.
pub const GICD_BASE: u64 = 0x0800_0000;
/// Guest physical address of the first redistributor.
pub const GICR_BASE: u64 = 0x080A_0000;
/// Number of INTIDs that can have a handler: the private ones (SGIs and PPIs).
const PRIVATE_INTIDS: usize = 32;

/// The GIC driver, created by the first [`init`].
static GIC: SpinLock<Option<Gic>> = SpinLock::new(None);

struct Gic {
    driver: GicV3<'static>,
    /// `MPIDR` affinity of each redistributor, in order.
    affinities: [u64; MAX_VCPUS],
    count: usize,
    /// Whether `setup` (distributor and all redistributors) has run.
    distributor_ready: bool,
}

/// Handlers of the private INTIDs, as `fn(u32)` pointers cast to `usize`; 0 = none.
static HANDLERS: [AtomicUsize; PRIVATE_INTIDS] = [const { AtomicUsize::new(0) }; PRIVATE_INTIDS];
/// IRQs acknowledged that had no handler.
static UNHANDLED: AtomicU64 = AtomicU64::new(0);

/// Sets the GIC up for this vCPU (and the distributor, on the first call); see the module doc.
pub fn init() {
    let mut gic = GIC.lock();
    let gic = gic.get_or_insert_with(Gic::new);
    let index = gic.redistributor_of(mpidr());
    if !gic.distributor_ready {
        gic.driver.setup(index);
        gic.distributor_ready = true;
    } else {
        gic.driver.init_cpu(index);
        GicCpuInterface::enable_group1(true);
    }
    for sgi in 0..IntId::SGI_COUNT {
        gic.driver.enable_interrupt(IntId::sgi(sgi), Some(index), true).expect("SGI enable");
    }
    gic.driver
        .enable_interrupt(IntId::ppi(crate::timer::VTIMER_INTID - 16), Some(index), true)
        .expect("virtual timer PPI enable");
    GicCpuInterface::set_priority_mask(0xff);
}

impl Gic {
    fn new() -> Gic {
        let mut affinities = [0; MAX_VCPUS];
        let gicr = NonNull::new(GICR_BASE as *mut GicrSgi).expect("GICR address is not null");
        // SAFETY: GICR_BASE is where the redistributors are, contiguous up to the one whose
        // GICR_TYPER.Last is set, mapped as device memory by the initial page table; nothing else
        // refers to them while the GIC lock is held and the driver does not exist yet. At most
        // MAX_VCPUS of them are visited.
        let iter = unsafe { GicRedistributorIterator::new(gicr) }.expect("redistributor layout");
        let mut count = 0;
        for (slot, redistributor) in affinities.iter_mut().zip(iter) {
            *slot = redistributor.typer().core_mpidr();
            count += 1;
        }
        let gicd = NonNull::new(GICD_BASE as *mut Gicd).expect("GICD address is not null");
        // SAFETY: the distributor is at GICD_BASE and the redistributors at GICR_BASE (`count` of
        // them, as just counted), all mapped as device memory; this driver, kept in `GIC`, is the
        // only thing that refers to them from now on.
        let driver = unsafe { GicV3::new(UniqueMmioPointer::new(gicd), gicr, count) }.expect("GICv3 driver");
        Gic { driver, affinities, count, distributor_ready: false }
    }

    /// The index of the redistributor whose affinity is `mpidr`; the vCPU index if none matches.
    fn redistributor_of(&self, mpidr: u64) -> usize {
        self.affinities[..self.count].iter().position(|&a| a == mpidr).unwrap_or(cpu_index())
    }
}

/// Number of redistributors (one per vCPU), as found by walking `GICR_TYPER.Last`. Needs
/// [`init`] first; 0 before.
pub fn redistributor_count() -> usize {
    GIC.lock().as_ref().map_or(0, |g| g.count)
}

/// Registers `handler` for the private INTID `intid` (an SGI 0..15 or a PPI 16..31).
pub fn set_handler(intid: u32, handler: fn(u32)) {
    HANDLERS[intid as usize].store(handler as usize, Ordering::Release);
}

/// Called by the IRQ vector: acknowledges and handles every pending Group 1 interrupt.
pub(crate) fn dispatch() {
    while let Some(intid) = GicCpuInterface::get_and_acknowledge_interrupt(InterruptGroup::Group1) {
        let n = u32::from(intid);
        let handler = HANDLERS.get(n as usize).map_or(0, |h| h.load(Ordering::Acquire));
        if handler == 0 {
            UNHANDLED.fetch_add(1, Ordering::Relaxed);
        } else {
            // SAFETY: `set_handler` stores only `fn(u32)` pointers cast to usize, and 0 is never
            // one of them.
            let handler = unsafe { core::mem::transmute::<usize, fn(u32)>(handler) };
            handler(n);
        }
        GicCpuInterface::end_interrupt(intid, InterruptGroup::Group1);
    }
}

/// IRQs acknowledged so far for which no handler was registered.
pub fn unhandled_count() -> u64 {
    UNHANDLED.load(Ordering::Relaxed)
}

/// Sends SGI `sgi` (0..15) to the vCPU with index `target` (Aff0; Aff1..3 = 0).
pub fn send_sgi(sgi: u32, target: usize) {
    let target = SgiTarget::List { affinity3: 0, affinity2: 0, affinity1: 0, target_list: 1 << target };
    GicCpuInterface::send_sgi(IntId::sgi(sgi), target, SgiTargetGroup::CurrentGroup1).expect("valid SGI");
}

/// Sends SGI `sgi` (0..15) to every vCPU but this one (`ICC_SGI1R_EL1.IRM` = 1).
pub fn send_sgi_to_others(sgi: u32) {
    GicCpuInterface::send_sgi(IntId::sgi(sgi), SgiTarget::All, SgiTargetGroup::CurrentGroup1).expect("valid SGI");
}

/// Unmasks IRQs on this vCPU.
pub fn irq_enable() {
    // SAFETY: clearing the I mask bit lets IRQs in; their handler is installed by the runtime. The
    // asm is not `nomem`, so memory accesses are not moved across it.
    unsafe { core::arch::asm!("msr daifclr, #2", options(nostack, preserves_flags)) };
}

/// Masks IRQs on this vCPU.
pub fn irq_disable() {
    mask_irqs();
}

/// Waits for an interrupt (`wfi`); returns at once if one is pending, even masked.
pub fn wait_for_interrupt() {
    // SAFETY: `wfi` only waits; it touches no memory.
    unsafe { core::arch::asm!("wfi", options(nostack, preserves_flags)) };
}

/// Sleeps with `wfi` until `cond` holds, handling IRQs meanwhile; leaves IRQs unmasked.
///
/// The condition is checked with IRQs masked and `wfi` entered right after, so an interrupt
/// that makes it true between the check and the `wfi` still wakes the `wfi` (a pending IRQ
/// ends `wfi` even while masked) and is handled before the next check.
pub fn wait_until(mut cond: impl FnMut() -> bool) {
    loop {
        irq_disable();
        if cond() {
            irq_enable();
            return;
        }
        wait_for_interrupt();
        irq_enable();
    }
}
