//! The GICv3 interrupt controller of one VM, as a portable model: distributor (GICD), one
//! redistributor (GICR) per vCPU, the interrupt state behind them, and the hand-over of
//! interrupts to the hardware list registers (`ICH_LR<n>_EL2`) of the virtual CPU interface.
//!
//! The platform owns the hardware: it traps the guest's GICD/GICR accesses and calls
//! [`Vgic::dist_read`]/[`Vgic::dist_write`]/[`Vgic::redist_read`]/[`Vgic::redist_write`], traps
//! `ICC_SGI1R_EL1` and calls [`Vgic::send_sgi`], drives device lines with [`Vgic::set_level`]
//! and [`Vgic::inject_edge`], and around every guest run calls [`Vgic::sync_lr`] (exit) and
//! [`Vgic::fill_lrs`] (entry). Every call that can make an interrupt deliverable returns
//! [`Effects`]: the vCPUs the platform must kick (force an exit, or wake from WFI) so that they
//! pick the interrupt up. The guest's own acknowledge and EOI never trap (they act on the list
//! registers through the virtual CPU interface); the model learns about them at `sync_lr`.
//!
//! What the guest sees: a GICv3 (architecture revision 3) with a single Security state
//! (`GICD_CTLR.DS` = 1, as QEMU's `virt` board without EL3 and KVM present it), affinity
//! routing always on, no LPIs and no ITS, `N` SPIs (a multiple of 32), and vCPU `i` having
//! affinity `0.0.0.i`. `docs/vgic.md` has the register map.
//!
//! One model serves one VM; it is not internally synchronized (the platform holds it in a
//! lock). No call after [`Vgic::new`] allocates, except [`Vgic::save`].

use alloc::vec;
use alloc::vec::Vec;
use core::cell::Cell;

mod lr;
mod regs;
#[cfg(test)]
mod tests;

pub use lr::{decode_ich_lr, encode_ich_lr, Lr, LrState};

/// SGIs are INTIDs 0..16.
pub const SGI_COUNT: u32 = 16;
/// SGIs and PPIs (0..32) are private to a vCPU and live in its redistributor.
pub const PRIVATE_COUNT: u32 = 32;
/// The most vCPUs one model serves ([`VcpuSet`] is a 64-bit mask).
pub const MAX_VCPUS: u16 = 64;
/// The most SPIs (INTIDs 32..992; the architecture stops SPIs at 1019 and this model counts
/// them in whole groups of 32).
pub const MAX_SPIS: u16 = 960;
/// The architectural maximum of list registers (`ICH_VTR_EL2.ListRegs` + 1 ≤ 16).
pub const MAX_LRS: usize = 16;
/// Size of the distributor frame.
pub const GICD_SIZE: u64 = 0x1_0000;
/// Size of one vCPU's redistributor: the RD_base frame, then the SGI_base frame.
pub const GICR_STRIDE: u64 = 0x2_0000;
/// Offset of the SGI_base frame inside one redistributor.
pub const GICR_SGI_BASE: u64 = 0x1_0000;

/// `GICD_CTLR.EnableGrp0` (single Security state view).
const CTLR_GRP0: u32 = 1 << 0;
/// `GICD_CTLR.EnableGrp1` (single Security state view).
const CTLR_GRP1: u32 = 1 << 1;

/// The shape of a VM's interrupt controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VgicConfig {
    /// vCPUs, 1..=[`MAX_VCPUS`]; vCPU `i` has affinity 0.0.0.`i`.
    pub vcpus: u16,
    /// SPIs, a multiple of 32 up to [`MAX_SPIS`]; they are INTIDs `32..32 + spis`.
    pub spis: u16,
    /// Implemented priority bits, 4..=8: the low `8 - priority_bits` bits of every priority
    /// read as zero. Set it to the virtual CPU interface's `ICH_VTR_EL2.PRIbits + 1`.
    pub priority_bits: u8,
}

impl VgicConfig {
    /// `vcpus` vCPUs and `spis` SPIs with 5 priority bits (what QEMU's and KVM's virtual CPU
    /// interfaces implement).
    pub const fn new(vcpus: u16, spis: u16) -> VgicConfig {
        VgicConfig { vcpus, spis, priority_bits: 5 }
    }
}

/// A configuration or saved state the model refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VgicError {
    /// `vcpus` is 0 or more than [`MAX_VCPUS`].
    BadVcpuCount(u16),
    /// `spis` is not a multiple of 32 or more than [`MAX_SPIS`].
    BadSpiCount(u16),
    /// `priority_bits` is not in 4..=8.
    BadPriorityBits(u8),
    /// A saved state whose shape (vCPUs, SPIs, vector lengths) does not match this model.
    ShapeMismatch,
}

/// A guest access the model refuses; the platform injects a synchronous external abort into
/// the guest (a data abort with DFSC 0b010000), as a real GIC answers with a bus error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmioError {
    /// Not 1, 2, 4 or 8 bytes, or not aligned to its size.
    Unaligned { offset: u64, size: u8 },
    /// A size the register does not allow: 32-bit registers take only 32-bit accesses
    /// (`IPRIORITYR` also bytes), 64-bit registers (`IROUTER`, `GICR_TYPER`) 64-bit accesses
    /// or 32-bit accesses to either half.
    BadSize { offset: u64, size: u8 },
}

/// The guest's half of its virtual CPU interface, as far as it decides whether a pending
/// interrupt in a list register is signalled to the vCPU (IHI 0069, 4.8 and 12.4): the
/// priority mask and group enables of `ICH_VMCR_EL2`, and the running priority that the
/// active-priority registers (`ICH_AP0R<n>_EL2`, `ICH_AP1R<n>_EL2`) imply. That state lives in
/// the hardware while the vCPU runs and in its context otherwise, not in this model;
/// [`Vgic::has_pending`] takes it as an argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuInterface {
    /// `ICH_VMCR_EL2.VPMR`: only priorities numerically lower than this are signalled.
    pub priority_mask: u8,
    /// `ICH_VMCR_EL2.VENG0` (the guest's `ICC_IGRPEN0_EL1`).
    pub group0_enabled: bool,
    /// `ICH_VMCR_EL2.VENG1` (the guest's `ICC_IGRPEN1_EL1`).
    pub group1_enabled: bool,
    /// The group priority of the highest-priority active interrupt (the lowest active
    /// priority bit), or `None` when nothing is active: only a numerically lower priority
    /// preempts it.
    pub running_priority: Option<u8>,
}

impl CpuInterface {
    /// Nothing masked: every deliverable interrupt counts.
    pub const OPEN: CpuInterface =
        CpuInterface { priority_mask: 0xFF, group0_enabled: true, group1_enabled: true, running_priority: None };

    /// The view of the registers: `ICH_VMCR_EL2` and the implemented active-priority registers
    /// of both groups (1, 2 or 4 each, for 5, 6 or 7 preemption bits: bit `i` of the
    /// concatenation is group priority `i << (8 - bits)`). Only their low 32 bits count.
    pub fn from_registers(vmcr: u64, ap0r: &[u64], ap1r: &[u64]) -> CpuInterface {
        let shift = match ap0r.len().max(ap1r.len()) {
            0 | 1 => 3,
            2 | 3 => 2,
            _ => 1,
        };
        let mut running = None;
        for n in 0..ap0r.len().max(ap1r.len()).min(4) {
            let bits = (ap0r.get(n).copied().unwrap_or(0) | ap1r.get(n).copied().unwrap_or(0)) as u32;
            if bits != 0 {
                running = Some((((n as u32) * 32 + bits.trailing_zeros()) << shift).min(0xFF) as u8);
                break;
            }
        }
        CpuInterface {
            priority_mask: (vmcr >> 24) as u8,
            group0_enabled: vmcr & 1 != 0,
            group1_enabled: vmcr & 2 != 0,
            running_priority: running,
        }
    }

    /// Whether an interrupt of this group and priority, pending in a list register, would be
    /// signalled. Priorities the running priority's group covers do not preempt it: with the
    /// running priority a multiple of the group's granule, "lower than it" is the same test on
    /// the priority and on its group priority, whatever the binary point.
    pub fn signals(self, group1: bool, priority: u8) -> bool {
        let enabled = if group1 { self.group1_enabled } else { self.group0_enabled };
        enabled && priority < self.priority_mask && self.running_priority.is_none_or(|r| priority < r)
    }
}

/// A set of vCPUs of this VM (bit `i` = vCPU `i`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VcpuSet(pub u64);

impl VcpuSet {
    pub const EMPTY: VcpuSet = VcpuSet(0);

    pub const fn contains(self, vcpu: u16) -> bool {
        vcpu < 64 && self.0 & (1 << vcpu) != 0
    }

    pub fn insert(&mut self, vcpu: u16) {
        if vcpu < 64 {
            self.0 |= 1 << vcpu;
        }
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub const fn len(self) -> u32 {
        self.0.count_ones()
    }

    /// The vCPUs in the set, lowest first.
    pub fn iter(self) -> impl Iterator<Item = u16> {
        let mut bits = self.0;
        core::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let v = bits.trailing_zeros() as u16;
            bits &= bits - 1;
            Some(v)
        })
    }
}

/// What the platform must do after a call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// vCPUs to kick: each has an interrupt it should now see (a new deliverable one, or one
    /// whose list register went stale). A running vCPU must be made to exit (so that it syncs
    /// and refills its list registers); a vCPU blocked in WFI must re-check
    /// [`Vgic::has_pending`]. The calling vCPU may be in the set; it refills at its next entry
    /// anyway.
    pub kick: VcpuSet,
    /// The access hit no implemented register (a reserved offset, an unimplemented interrupt,
    /// a register that affinity routing makes RES0, or a write to a read-only register) and was
    /// ignored, or an injection named an interrupt or vCPU that does not exist. Worth a trace
    /// line: a well-behaved guest never does it.
    pub ignored: bool,
}

impl Effects {
    pub const NONE: Effects = Effects { kick: VcpuSet::EMPTY, ignored: false };

    const IGNORED: Effects = Effects { kick: VcpuSet::EMPTY, ignored: true };

    /// Both effects.
    pub fn merge(self, other: Effects) -> Effects {
        Effects { kick: VcpuSet(self.kick.0 | other.kick.0), ignored: self.ignored || other.ignored }
    }
}

// Bookkeeping of an interrupt that sits in a list register (`Irq::lr`).
/// The LR was loaded with the pending state.
const LR_P: u8 = 1 << 0;
/// The LR was loaded with the active state.
const LR_A: u8 = 1 << 1;
/// The pending state in the LR came from the soft latch of a level interrupt (`ISPENDR`).
const LR_SOFT: u8 = 1 << 2;
/// The guest wrote `ICPENDR` for it since: drop the LR's pending state at sync.
const LR_CPEND: u8 = 1 << 3;
/// The guest wrote `ICACTIVER` for it since: drop the LR's active state at sync.
const LR_CACT: u8 = 1 << 4;

/// `GICD_IROUTER` bits kept: Interrupt_Routing_Mode (31) and Aff2.Aff1.Aff0 (Aff3 is RES0:
/// `GICD_TYPER.A3V` = 0).
const IROUTER_MASK: u32 = 0x80FF_FFFF;
const IROUTER_IRM: u32 = 1 << 31;

/// One interrupt's state, private (per vCPU) or shared.
///
/// While `in_lr`, the list register holds part of the state: the pending state of an edge
/// interrupt or of a level interrupt's soft latch moved there, as did the active state, so
/// `latch` and `active` hold only what happened since (new edges, `ISPENDR`/`ISACTIVER`
/// writes), and `lr` records what was loaded and what was cleared since; `sync_lr` merges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Irq {
    enabled: bool,
    group1: bool,
    /// Edge-triggered (`ICFGR` Int_config = 1); otherwise level-sensitive.
    edge: bool,
    /// The input line (level interrupts are pending while it is high).
    level: bool,
    /// Pending latch: an edge, or for a level interrupt a write to `ISPENDR`.
    latch: bool,
    active: bool,
    in_lr: bool,
    lr: u8,
    priority: u8,
    /// SPIs: the vCPU the interrupt is in an LR of, or active on. An active SPI stays with
    /// that vCPU until it is deactivated, whatever `IROUTER` says meanwhile.
    owner: u16,
    /// SPIs: `GICD_IROUTER` bits `[31:0]`.
    route: u32,
}

impl Irq {
    /// Pending, as far as the model holds the state (not counting an LR).
    fn pending(&self) -> bool {
        self.latch || (!self.edge && self.level)
    }

    /// Pending as a register read shows it: the model's state plus what was loaded into an LR
    /// (as last synced; the guest may have acknowledged it since).
    fn read_pending(&self) -> bool {
        self.pending() || (self.in_lr && self.lr & LR_P != 0 && self.lr & LR_CPEND == 0)
    }

    fn read_active(&self) -> bool {
        self.active || (self.in_lr && self.lr & LR_A != 0 && self.lr & LR_CACT == 0)
    }

    fn clear_pending(&mut self) {
        self.latch = false;
        if self.in_lr {
            self.lr |= LR_CPEND;
        }
    }

    fn clear_active(&mut self) {
        self.active = false;
        if self.in_lr {
            self.lr |= LR_CACT;
        }
    }

    fn reset(intid: u32) -> Irq {
        // Group 1, as KVM resets a GICv3 guest's interrupts and as Linux configures them;
        // SGIs are edge-triggered (fixed), PPIs and SPIs level-sensitive until configured.
        Irq { group1: true, edge: intid < SGI_COUNT, ..Irq::default() }
    }
}

/// The interrupt controller of one VM.
#[derive(Clone, Debug)]
pub struct Vgic {
    vcpus: u16,
    spis: u16,
    priority_bits: u8,
    /// Mask of implemented priority bits.
    prio_mask: u8,
    /// `GICD_CTLR` group enables (`CTLR_GRP0 | CTLR_GRP1`).
    ctlr: u32,
    /// `GICR_WAKER.ProcessorSleep` per vCPU (`ChildrenAsleep` follows it at once).
    sleep: Vec<bool>,
    /// Where an SPI with `IROUTER.IRM` = 1 goes: the lowest-numbered awake vCPU (or 0).
    any_target: u16,
    /// vCPU `v`'s SGIs and PPIs at `v * 32 ..`, then the SPIs.
    irqs: Vec<Irq>,
    /// The interrupts that want a list register ([`Vgic::wants_lr`]), exactly: bit `i` of
    /// `want_private[v]` is vCPU `v`'s INTID `i`, bit `k % 64` of `want_spi[k / 64]` is SPI
    /// `32 + k`. Kept up to date by [`Vgic::refresh`] after every change of an interrupt's
    /// state (and of `GICD_CTLR`), so that delivery (`fill_lrs`, `overflow`, `has_pending`)
    /// looks only at these instead of scanning every interrupt.
    want_private: Vec<u32>,
    want_spi: Vec<u64>,
    ignored_reads: Cell<u64>,
    ignored_writes: u64,
}

impl Vgic {
    /// A controller in its reset state: distributor disabled, every interrupt disabled,
    /// inactive, not pending, priority 0, Group 1, level-sensitive (SGIs edge), SPIs routed to
    /// vCPU 0, every redistributor asleep (`GICR_WAKER` = ProcessorSleep | ChildrenAsleep).
    pub fn new(config: VgicConfig) -> Result<Vgic, VgicError> {
        if config.vcpus == 0 || config.vcpus > MAX_VCPUS {
            return Err(VgicError::BadVcpuCount(config.vcpus));
        }
        if config.spis % 32 != 0 || config.spis > MAX_SPIS {
            return Err(VgicError::BadSpiCount(config.spis));
        }
        if !(4..=8).contains(&config.priority_bits) {
            return Err(VgicError::BadPriorityBits(config.priority_bits));
        }
        Ok(Vgic::build(config))
    }

    /// The reset state of a validated configuration.
    fn build(config: VgicConfig) -> Vgic {
        let private = usize::from(config.vcpus) * PRIVATE_COUNT as usize;
        let mut irqs = vec![Irq::default(); private + usize::from(config.spis)];
        for (slot, irq) in irqs.iter_mut().enumerate() {
            let intid = if slot < private { (slot % 32) as u32 } else { (slot - private) as u32 + 32 };
            *irq = Irq::reset(intid);
        }
        // Nothing is pending or active at reset: nothing wants a list register.
        Vgic {
            vcpus: config.vcpus,
            spis: config.spis,
            priority_bits: config.priority_bits,
            prio_mask: 0xFFu8 << (8 - config.priority_bits),
            ctlr: 0,
            sleep: vec![true; usize::from(config.vcpus)],
            any_target: 0,
            irqs,
            want_private: vec![0; usize::from(config.vcpus)],
            want_spi: vec![0; usize::from(config.spis).div_ceil(64)],
            ignored_reads: Cell::new(0),
            ignored_writes: 0,
        }
    }

    /// The configuration this model was built with.
    pub fn config(&self) -> VgicConfig {
        VgicConfig { vcpus: self.vcpus, spis: self.spis, priority_bits: self.priority_bits }
    }

    /// Back to the reset state (a system reset of the VM). The platform must also drop
    /// whatever its list registers hold for this VM.
    pub fn reset(&mut self) {
        let (reads, writes) = (self.ignored_reads.get(), self.ignored_writes);
        *self = Vgic::build(self.config());
        self.ignored_reads.set(reads);
        self.ignored_writes = writes;
    }

    /// Accesses ignored so far (reads, writes): see [`Effects::ignored`]. Reads have no
    /// `Effects`, so this counter is how the platform notices a guest reading reserved space.
    pub fn ignored_accesses(&self) -> (u64, u64) {
        (self.ignored_reads.get(), self.ignored_writes)
    }

    // ----- indexing -----

    fn private_len(&self) -> usize {
        usize::from(self.vcpus) * PRIVATE_COUNT as usize
    }

    /// The slot of `intid` as seen by `vcpu` (SGIs and PPIs are per vCPU).
    fn slot(&self, vcpu: u16, intid: u32) -> Option<usize> {
        if intid < PRIVATE_COUNT {
            (vcpu < self.vcpus).then(|| usize::from(vcpu) * PRIVATE_COUNT as usize + intid as usize)
        } else {
            self.spi_slot(intid)
        }
    }

    fn spi_slot(&self, intid: u32) -> Option<usize> {
        (intid >= PRIVATE_COUNT && intid < PRIVATE_COUNT + u32::from(self.spis))
            .then(|| self.private_len() + (intid - PRIVATE_COUNT) as usize)
    }

    fn intid_of(&self, slot: usize) -> u32 {
        let private = self.private_len();
        if slot < private {
            (slot % PRIVATE_COUNT as usize) as u32
        } else {
            (slot - private) as u32 + PRIVATE_COUNT
        }
    }

    /// The vCPU an `IROUTER` value routes to, if any.
    fn route_target(&self, route: u32) -> Option<u16> {
        if route & IROUTER_IRM != 0 {
            return Some(self.any_target);
        }
        // Our vCPUs have Aff3.Aff2.Aff1 = 0.0.0 and Aff0 = index; anything else names a PE that
        // does not exist, and the interrupt stays pending, delivered to nobody.
        let aff0 = (route & 0xFF) as u16;
        (route & 0x00FF_FF00 == 0 && aff0 < self.vcpus).then_some(aff0)
    }

    /// The vCPU that handles the interrupt in `slot` now.
    fn target(&self, slot: usize) -> Option<u16> {
        let private = self.private_len();
        if slot < private {
            return Some((slot / PRIVATE_COUNT as usize) as u16);
        }
        let irq = &self.irqs[slot];
        if irq.in_lr || irq.active {
            Some(irq.owner)
        } else {
            self.route_target(irq.route)
        }
    }

    fn group_enabled(&self, irq: &Irq) -> bool {
        self.ctlr & if irq.group1 { CTLR_GRP1 } else { CTLR_GRP0 } != 0
    }

    /// Pending and allowed to be signalled: enabled, its group enabled in `GICD_CTLR`, and not
    /// a level interrupt that is still active (a level interrupt is never handed out as
    /// pending-and-active: it is re-sampled after its EOI instead).
    fn deliverable(&self, irq: &Irq) -> bool {
        irq.pending() && irq.enabled && self.group_enabled(irq) && (irq.edge || !irq.active)
    }

    /// `fill_lrs` would hand it out: not in an LR, and active (it must be in an LR for the
    /// guest's EOI to find it) or deliverable.
    fn wants_lr(&self, irq: &Irq) -> bool {
        !irq.in_lr && (irq.active || self.deliverable(irq))
    }

    /// After a change to the interrupt in `slot` (or to `GICD_CTLR`): its bit in the want
    /// sets follows [`Vgic::wants_lr`].
    #[inline]
    fn refresh(&mut self, slot: usize) {
        let want = self.wants_lr(&self.irqs[slot]);
        self.set_want(slot, want);
    }

    /// Sets the want bit of the interrupt in `slot` (which must be what `wants_lr` says).
    fn set_want(&mut self, slot: usize, want: bool) {
        let private = self.private_len();
        if slot < private {
            self.set_want_private(slot / PRIVATE_COUNT as usize, slot as u32 % PRIVATE_COUNT, want);
        } else {
            let k = slot - private;
            let word = &mut self.want_spi[k / 64];
            *word = (*word & !(1 << (k % 64))) | (u64::from(want) << (k % 64));
        }
    }

    /// [`Vgic::set_want`] of private interrupt `intid` of vCPU `vcpu`.
    #[inline(always)]
    fn set_want_private(&mut self, vcpu: usize, intid: u32, want: bool) {
        if let Some(word) = self.want_private.get_mut(vcpu) {
            *word = (*word & !(1 << intid)) | (u32::from(want) << intid);
        }
    }

    /// [`Vgic::refresh`] of every interrupt (after `GICD_CTLR` or a restore).
    fn refresh_all(&mut self) {
        for slot in 0..self.irqs.len() {
            self.refresh(slot);
        }
    }

    /// After a change to the interrupt in `slot`: kick whoever must look at it again.
    fn touch(&self, slot: usize, fx: &mut Effects) {
        let irq = &self.irqs[slot];
        if irq.in_lr || self.wants_lr(irq) {
            if let Some(t) = self.target(slot) {
                fx.kick.insert(t);
            }
        }
    }

    /// Calls `f` with every slot that wants a list register of `vcpu` now ([`Vgic::wants_lr`]
    /// and targeted at it): its SGIs and PPIs, then the SPIs, each in INTID order, until `f`
    /// returns false. Only the want sets are visited: the cost follows the number of
    /// interrupts in flight, not the number of interrupts.
    fn for_each_wanting(&self, vcpu: u16, mut f: impl FnMut(usize, &Irq) -> bool) {
        let base = usize::from(vcpu) * PRIVATE_COUNT as usize;
        let mut bits = self.want_private[usize::from(vcpu)];
        while bits != 0 {
            let slot = base + bits.trailing_zeros() as usize;
            bits &= bits - 1;
            if !f(slot, &self.irqs[slot]) {
                return;
            }
        }
        let private = self.private_len();
        for (w, &word) in self.want_spi.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let slot = private + w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if self.target(slot) == Some(vcpu) && !f(slot, &self.irqs[slot]) {
                    return;
                }
            }
        }
    }

    fn recompute_any_target(&mut self) -> bool {
        let t = self.sleep.iter().position(|s| !s).unwrap_or(0) as u16;
        let changed = t != self.any_target;
        self.any_target = t;
        changed
    }

    /// Kicks every vCPU that has something to (re)load: after a global change (`GICD_CTLR`).
    fn kick_all_interested(&self) -> Effects {
        let mut fx = Effects::NONE;
        for slot in 0..self.irqs.len() {
            self.touch(slot, &mut fx);
        }
        fx
    }

    // ----- injection -----

    /// Drives an interrupt line. `intid` is a PPI (16..32: `vcpu` names whose) or an SPI
    /// (`vcpu` is ignored: `IROUTER` decides). A level-sensitive interrupt is pending while its
    /// line is high; an edge-triggered one latches pending on a rising edge. SGIs have no line:
    /// use [`Vgic::send_sgi`]. Unknown INTIDs or vCPUs are ignored (`Effects::ignored`).
    ///
    /// A line that drops while its interrupt sits pending in a list register is noticed at the
    /// next `sync_lr`; the guest may take it once more meanwhile (as with a real GIC's latency).
    pub fn set_level(&mut self, intid: u32, vcpu: Option<u16>, level: bool) -> Effects {
        let Some(slot) = self.line_slot(intid, vcpu) else {
            return Effects::IGNORED;
        };
        let irq = &mut self.irqs[slot];
        if level == irq.level {
            return Effects::NONE;
        }
        irq.level = level;
        if !level {
            // A level interrupt may stop being pending.
            self.refresh(slot);
            return Effects::NONE;
        }
        if irq.edge {
            irq.latch = true;
            self.refresh(slot);
            return self.kick_if_enabled(slot);
        }
        // A level interrupt already in an LR is either pending there or active (and will be
        // re-sampled at its EOI): nothing new to show.
        if irq.in_lr || irq.latch {
            return Effects::NONE;
        }
        self.refresh(slot);
        self.kick_if_enabled(slot)
    }

    /// Latches an interrupt pending, as an edge on its line (or, for a level-sensitive one, as
    /// a write to `ISPENDR` would: pending until acknowledged). PPIs need `vcpu`; SPIs ignore
    /// it. Unknown INTIDs or vCPUs, and SGIs, are ignored.
    pub fn inject_edge(&mut self, intid: u32, vcpu: Option<u16>) -> Effects {
        let Some(slot) = self.line_slot(intid, vcpu) else {
            return Effects::IGNORED;
        };
        self.irqs[slot].latch = true;
        self.refresh(slot);
        self.kick_if_enabled(slot)
    }

    fn line_slot(&self, intid: u32, vcpu: Option<u16>) -> Option<usize> {
        if intid < SGI_COUNT {
            None
        } else if intid < PRIVATE_COUNT {
            self.slot(vcpu?, intid)
        } else {
            self.spi_slot(intid)
        }
    }

    /// A new pending state in `slot`: kick its vCPU if the interrupt may be signalled. An edge
    /// that arrives while the interrupt is in an LR is kicked too: the guest may already have
    /// acknowledged the first one, and the second must not wait for an unrelated exit.
    fn kick_if_enabled(&self, slot: usize) -> Effects {
        let irq = &self.irqs[slot];
        let mut fx = Effects::NONE;
        if irq.enabled && self.group_enabled(irq) {
            if let Some(t) = self.target(slot) {
                fx.kick.insert(t);
            }
        }
        fx
    }

    /// A guest write to `ICC_SGI1R_EL1` (trapped: `HCR_EL2.IMO` makes SGI generation trap) by
    /// vCPU `from_vcpu`: decodes INTID `[27:24]`, TargetList `[15:0]`, Aff1 `[23:16]`, Aff2 `[39:32]`,
    /// RS `[47:44]`, Aff3 `[55:48]` and IRM `[40]`. IRM = 1 targets every vCPU but the sender;
    /// otherwise the vCPUs with affinity Aff3.Aff2.Aff1.(RS*16 + bit) for each TargetList bit
    /// (ours are 0.0.0.index, so a non-zero Aff1..3 reaches nobody). The SGI becomes pending
    /// in each target's redistributor whatever its group (as KVM; `ICC_SGI0R_EL1` goes through
    /// [`Vgic::send_sgi_group0`]).
    #[inline]
    pub fn send_sgi(&mut self, from_vcpu: u16, icc_sgi1r: u64) -> Effects {
        self.dispatch_sgi(from_vcpu, icc_sgi1r, true)
    }

    /// A guest write to `ICC_SGI0R_EL1`: as [`Vgic::send_sgi`], but it only makes Group 0
    /// SGIs pending.
    pub fn send_sgi_group0(&mut self, from_vcpu: u16, icc_sgi0r: u64) -> Effects {
        self.dispatch_sgi(from_vcpu, icc_sgi0r, false)
    }

    #[inline(always)]
    fn dispatch_sgi(&mut self, from: u16, value: u64, allow_group1: bool) -> Effects {
        if from >= self.vcpus {
            return Effects::IGNORED;
        }
        let intid = ((value >> 24) & 0xF) as u32;
        // The common case, one target (Linux's IPIs to one CPU): no target set.
        let list = value & 0xFFFF;
        if value & (1 << 40 | 0xFF << 48 | 0xFF << 32 | 0xFF << 16) == 0 && list & list.wrapping_sub(1) == 0 {
            let aff0 = ((value >> 44) & 0xF) as u16 * 16 + list.trailing_zeros() as u16;
            if list == 0 || aff0 >= self.vcpus {
                return Effects::NONE;
            }
            return self.pend_sgi(aff0, intid, allow_group1);
        }
        self.dispatch_sgi_to_many(from, value, intid, allow_group1)
    }

    /// [`Vgic::dispatch_sgi`] for any other `value`: IRM = 1 or a TargetList of several.
    #[inline(never)]
    fn dispatch_sgi_to_many(&mut self, from: u16, value: u64, intid: u32, allow_group1: bool) -> Effects {
        let targets = if value & (1 << 40) != 0 {
            let all = if self.vcpus == 64 { u64::MAX } else { (1u64 << self.vcpus) - 1 };
            VcpuSet(all & !(1u64 << from))
        } else {
            let aff1 = (value >> 16) & 0xFF;
            let aff2 = (value >> 32) & 0xFF;
            let aff3 = (value >> 48) & 0xFF;
            let rs = ((value >> 44) & 0xF) as u16;
            let mut list = value & 0xFFFF;
            let mut set = VcpuSet::EMPTY;
            if aff1 | aff2 | aff3 == 0 {
                while list != 0 {
                    let aff0 = rs * 16 + list.trailing_zeros() as u16;
                    list &= list - 1;
                    if aff0 < self.vcpus {
                        set.insert(aff0);
                    }
                }
            }
            set
        };
        let mut fx = Effects::NONE;
        for t in targets.iter() {
            fx = fx.merge(self.pend_sgi(t, intid, allow_group1));
        }
        fx
    }

    /// SGI `intid` becomes pending on vCPU `target` (only a Group 0 one unless `allow_group1`).
    #[inline(always)]
    fn pend_sgi(&mut self, target: u16, intid: u32, allow_group1: bool) -> Effects {
        let slot = usize::from(target) * PRIVATE_COUNT as usize + intid as usize;
        let Some(irq) = self.irqs.get_mut(slot) else { return Effects::NONE };
        if !allow_group1 && irq.group1 {
            return Effects::NONE;
        }
        irq.latch = true;
        let irq = *irq;
        // `refresh` and `kick_if_enabled`, for a private interrupt of `target`.
        self.set_want_private(usize::from(target), intid, self.wants_lr(&irq));
        let mut fx = Effects::NONE;
        if irq.enabled && self.group_enabled(&irq) {
            fx.kick.insert(target);
        }
        fx
    }

    /// Fast path of a guest's `ICC_SGI1R_EL1` write that targets only the sender: when SGI
    /// `intid` of `vcpu` can go straight into a free list register — enabled, its group
    /// enabled, and neither pending, active nor in an LR already — it is marked as loaded (as
    /// [`Vgic::fill_lrs`] would) and the LR to write is returned. `None`: nothing changed, use
    /// [`Vgic::send_sgi`].
    ///
    /// The caller must know that nothing else waits for an LR of `vcpu` (its last fill left
    /// nothing behind and no kick came since), so loading this one keeps the LRs holding the
    /// best interrupts; the hardware orders those by priority itself.
    #[inline(always)]
    pub fn send_sgi_to_self_direct(&mut self, vcpu: u16, intid: u32) -> Option<Lr> {
        if vcpu >= self.vcpus || intid >= SGI_COUNT {
            return None;
        }
        let slot = usize::from(vcpu) * PRIVATE_COUNT as usize + intid as usize;
        let irq = self.irqs[slot];
        if irq.in_lr || !self.loadable_sgi(&irq) {
            return None;
        }
        Some(self.load_sgi(slot, vcpu, intid))
    }

    /// Fast path of [`Vgic::sync_lr`] for a list register the hardware reports empty
    /// (`ICH_ELRSR_EL2`): the guest took and ended `intid`. For an edge interrupt with nothing
    /// new since it was loaded (no new edge, no register write on it), that is the whole sync:
    /// it is out of the LR and wants none. Returns false, changing nothing, in every other
    /// case; then sync it with [`Vgic::sync_lr`] and an invalid LR.
    #[inline]
    pub fn retire_consumed(&mut self, vcpu: u16, intid: u32) -> bool {
        let Some(slot) = self.slot(vcpu, intid) else { return false };
        let irq = &mut self.irqs[slot];
        if !Self::retirable(irq, vcpu) {
            return false;
        }
        irq.in_lr = false;
        irq.lr = 0;
        true
    }

    /// [`Vgic::retire_consumed`] of `consumed` then [`Vgic::send_sgi_to_self_direct`] of
    /// `intid`, all or nothing: `vcpu` sends itself an SGI while its only loaded list register,
    /// which held `consumed`, is empty (the guest took and ended it). `consumed` may be `intid`
    /// itself. The caller must know what [`Vgic::send_sgi_to_self_direct`] asks. `None`:
    /// nothing changed, sync the LR and send the general way.
    #[inline(always)]
    pub fn retire_and_send_sgi_to_self(&mut self, vcpu: u16, consumed: u32, intid: u32) -> Option<Lr> {
        if vcpu >= self.vcpus || intid >= SGI_COUNT {
            return None;
        }
        let new = usize::from(vcpu) * PRIVATE_COUNT as usize + intid as usize;
        if consumed == intid {
            // The same SGI again (a private interrupt, an edge, its owner the vCPU): retired
            // and loaded again, it is as it is now.
            let irq = self.irqs.get(new)?;
            return (irq.in_lr && irq.lr == LR_P && self.loadable_sgi(irq))
                .then(|| Lr::pending_sgi(intid, irq.priority));
        }
        let old = self.slot(vcpu, consumed)?;
        if !Self::retirable(&self.irqs[old], vcpu) {
            return None;
        }
        let irq = self.irqs[new];
        // As it is once `consumed` is retired: out of the LR if it is the same one.
        if (irq.in_lr && new != old) || !self.loadable_sgi(&irq) {
            return None;
        }
        self.irqs[old].in_lr = false;
        self.irqs[old].lr = 0;
        Some(self.load_sgi(new, vcpu, intid))
    }

    /// Whether an interrupt whose LR came back empty from `vcpu` can simply leave it: a plain
    /// edge handed out as pending (by a fill or the SGI fast path), nothing new on it since.
    #[inline(always)]
    fn retirable(irq: &Irq, vcpu: u16) -> bool {
        irq.in_lr && irq.owner == vcpu && irq.edge && !irq.latch && !irq.active && irq.lr == LR_P
    }

    /// Whether an SGI out of any LR can go straight into one as pending: enabled, its group
    /// enabled, neither pending nor active.
    #[inline(always)]
    fn loadable_sgi(&self, irq: &Irq) -> bool {
        irq.enabled && irq.group1 && self.group_enabled(irq) && !irq.active && !irq.latch
    }

    /// Marks SGI `intid` of `vcpu` (at `slot`) as loaded pending into an LR, as
    /// [`Vgic::fill_lrs`] would, and returns that LR.
    #[inline(always)]
    fn load_sgi(&mut self, slot: usize, vcpu: u16, intid: u32) -> Lr {
        let irq = &mut self.irqs[slot];
        irq.in_lr = true;
        irq.lr = LR_P;
        irq.owner = vcpu;
        Lr::pending_sgi(intid, irq.priority)
    }

    // ----- delivery -----

    /// Whether `vcpu` has an interrupt that its virtual CPU interface would signal once in a
    /// list register: one `fill_lrs` would hand out as pending, whose group the guest enabled
    /// (`cpu`'s group enables) and whose priority is higher than the guest's priority mask and
    /// than its running priority. It is the wake-up test for a vCPU in WFI: a vCPU that masks
    /// everything pending stays blocked instead of spinning through WFI. Interrupts already in
    /// its list registers are not counted (sync them first). [`CpuInterface::OPEN`] asks
    /// whether anything is deliverable at all.
    pub fn has_pending(&self, vcpu: u16, cpu: CpuInterface) -> bool {
        if vcpu >= self.vcpus {
            return false;
        }
        let mut found = false;
        self.for_each_wanting(vcpu, |_, irq| {
            found = self.deliverable(irq) && cpu.signals(irq.group1, irq.priority);
            !found
        });
        found
    }

    /// Whether `vcpu` has more interrupts to load than `free_lrs` list registers hold. Ask it
    /// before `fill_lrs` with the free count, or after with 0 ("anything left behind?"); if
    /// so, the platform sets `ICH_HCR_EL2.UIE` (maintenance interrupt when at most one LR is
    /// valid) or `NPIE` (when none is pending) so the guest comes back for the rest.
    pub fn overflow(&self, vcpu: u16, free_lrs: usize) -> bool {
        if vcpu >= self.vcpus {
            return false;
        }
        let mut waiting = 0usize;
        self.for_each_wanting(vcpu, |_, _| {
            waiting += 1;
            waiting <= free_lrs
        });
        waiting > free_lrs
    }

    /// Loads up to `min(free, out.len(), 16)` interrupts for `vcpu` into `out` and returns how
    /// many. First the active interrupts not in an LR (the guest's EOI must find them), then
    /// the deliverable ones, each group by priority (lower value first), then INTID. Each one
    /// handed out is marked as in an LR and is not handed out again until [`Vgic::sync_lr`]
    /// gives it back. Nothing is pending while the distributor's group enable is off, but
    /// active interrupts are still loaded.
    ///
    /// Level-sensitive interrupts get `eoi_maintenance` (the LR's EOI bit) so that the guest's
    /// EOI raises a maintenance interrupt and the line is re-sampled at the resulting exit;
    /// edge-triggered ones do not. `hw` is always `None`.
    pub fn fill_lrs(&mut self, vcpu: u16, free: usize, out: &mut [Lr]) -> usize {
        let cap = free.min(out.len()).min(MAX_LRS);
        if vcpu >= self.vcpus || cap == 0 {
            return 0;
        }
        // The common case (QEMU has 4 list registers) sorts in a smaller array.
        if cap <= 4 {
            self.fill_best::<4>(vcpu, cap, out)
        } else {
            self.fill_best::<MAX_LRS>(vcpu, cap, out)
        }
    }

    /// [`Vgic::fill_lrs`] for `cap` ≤ `N`.
    fn fill_best<const N: usize>(&mut self, vcpu: u16, cap: usize, out: &mut [Lr]) -> usize {
        // The `cap` best candidates, kept sorted by key (insertion into a small array).
        // Sort key: not active, then priority, then slot (which orders this vCPU's interrupts
        // as their INTIDs do: its SGIs and PPIs, then the SPIs); the slot is the low 32 bits.
        let mut best = [0u64; N];
        let mut n = 0usize;
        self.for_each_wanting(vcpu, |slot, irq| {
            let key = (u64::from(!irq.active) << 40) | (u64::from(irq.priority) << 32) | slot as u64;
            if n == cap && key >= best[cap - 1] {
                return true;
            }
            let mut i = if n == cap { cap - 1 } else { n };
            while i > 0 && best[i - 1] > key {
                best[i] = best[i - 1];
                i -= 1;
            }
            best[i] = key;
            n = (n + 1).min(cap);
            true
        });
        for (k, &key) in best[..n].iter().enumerate() {
            out[k] = self.load(vcpu, key as u32 as usize);
        }
        n
    }

    /// Moves the interrupt in `slot` into an LR of `vcpu`.
    fn load(&mut self, vcpu: u16, slot: usize) -> Lr {
        let intid = self.intid_of(slot);
        let pend = self.deliverable(&self.irqs[slot]);
        let irq = &mut self.irqs[slot];
        let act = irq.active;
        let state = match (pend, act) {
            (true, true) => LrState::PendingActive,
            (true, false) => LrState::Pending,
            _ => LrState::Active,
        };
        let mut flags = 0;
        if pend {
            flags |= LR_P;
            if irq.edge {
                irq.latch = false;
            } else if irq.latch {
                irq.latch = false;
                flags |= LR_SOFT;
            }
        }
        if act {
            flags |= LR_A;
            irq.active = false;
        }
        irq.in_lr = true;
        irq.lr = flags;
        irq.owner = vcpu;
        let lr = Lr { intid, priority: irq.priority, state, group1: irq.group1, hw: None, eoi_maintenance: !irq.edge };
        // In an LR now: it wants none.
        self.set_want(slot, false);
        lr
    }

    /// Takes back an interrupt the platform read out of one of `vcpu`'s list registers at
    /// exit, with the state the guest left it in: pending (not acknowledged yet) stays
    /// pending, active stays active (and stays with this vCPU), invalid means the guest EOIed
    /// it (a level interrupt is pending again only if its line is still high). Register
    /// writes made meanwhile (`ICPENDR`, `ICACTIVER`, new edges, `ISPENDR`) are merged in.
    /// The interrupt may be handed out again afterwards. An LR the model did not hand out
    /// (wrong vCPU or INTID) is ignored (`Effects::ignored`). The kick set names another vCPU
    /// that should now take the interrupt (its `IROUTER` changed meanwhile).
    pub fn sync_lr(&mut self, vcpu: u16, lr: Lr) -> Effects {
        let Some(slot) = self.slot(vcpu, lr.intid) else {
            return Effects::IGNORED;
        };
        let irq = &mut self.irqs[slot];
        if !irq.in_lr || irq.owner != vcpu {
            return Effects::IGNORED;
        }
        let lr_pend = lr.state.pending() && irq.lr & LR_CPEND == 0;
        let lr_act = lr.state.active() && irq.lr & LR_CACT == 0;
        if lr_pend && (irq.edge || irq.lr & LR_SOFT != 0) {
            irq.latch = true;
        }
        irq.active |= lr_act;
        irq.in_lr = false;
        irq.lr = 0;
        let want = self.wants_lr(&self.irqs[slot]);
        self.set_want(slot, want);
        let mut fx = Effects::NONE;
        if want {
            if let Some(t) = self.target(slot) {
                if t != vcpu {
                    fx.kick.insert(t);
                }
            }
        }
        fx
    }

    // ----- checkpoints -----

    /// The whole state as plain data. Exact when no interrupt is in a list register (sync
    /// every vCPU's LRs first); otherwise an interrupt in an LR is saved with the state it was
    /// loaded with, merged with what happened since.
    pub fn save(&self) -> VgicState {
        let private = self.private_len();
        let irqs = self
            .irqs
            .iter()
            .enumerate()
            .map(|(slot, irq)| {
                let active = irq.read_active();
                let lr_pend = irq.in_lr && irq.lr & LR_P != 0 && irq.lr & LR_CPEND == 0;
                IrqState {
                    enabled: irq.enabled,
                    group1: irq.group1,
                    edge: irq.edge,
                    level: irq.level,
                    pending_latch: irq.latch || (lr_pend && (irq.edge || irq.lr & LR_SOFT != 0)),
                    active,
                    priority: irq.priority,
                    route: u64::from(irq.route),
                    owner: if slot >= private && active { irq.owner } else { 0 },
                }
            })
            .collect();
        VgicState {
            vcpus: self.vcpus,
            spis: self.spis,
            priority_bits: self.priority_bits,
            gicd_ctlr: self.dist_ctlr_value(),
            processor_sleep: self.sleep.clone(),
            irqs,
        }
    }

    /// Replaces the whole state by a saved one of the same shape (vCPUs, SPIs); every value is
    /// sanitized as a register write would be (priorities masked to this model's bits, SGIs
    /// edge, `IROUTER` reserved bits cleared). Nothing is in a list register afterwards: the
    /// platform must start this VM's vCPUs with empty LRs. The ignored-access counters are
    /// kept.
    pub fn restore(&mut self, state: &VgicState) -> Result<(), VgicError> {
        let private = self.private_len();
        if state.vcpus != self.vcpus
            || state.spis != self.spis
            || state.irqs.len() != self.irqs.len()
            || state.processor_sleep.len() != self.sleep.len()
        {
            return Err(VgicError::ShapeMismatch);
        }
        for (slot, (irq, s)) in self.irqs.iter_mut().zip(&state.irqs).enumerate() {
            let sgi = slot < private && slot % (PRIVATE_COUNT as usize) < SGI_COUNT as usize;
            let spi = slot >= private;
            *irq = Irq {
                enabled: s.enabled,
                group1: s.group1,
                edge: s.edge || sgi,
                level: s.level && !sgi,
                latch: s.pending_latch,
                active: s.active,
                in_lr: false,
                lr: 0,
                priority: s.priority & self.prio_mask,
                owner: if spi && s.active && s.owner < self.vcpus { s.owner } else { 0 },
                route: if spi { s.route as u32 & IROUTER_MASK } else { 0 },
            };
        }
        self.ctlr = state.gicd_ctlr & (CTLR_GRP0 | CTLR_GRP1);
        self.sleep.copy_from_slice(&state.processor_sleep);
        self.recompute_any_target();
        self.refresh_all();
        Ok(())
    }

    /// A new model holding a saved state (its configuration comes from the state).
    pub fn from_state(state: &VgicState) -> Result<Vgic, VgicError> {
        let mut vgic =
            Vgic::new(VgicConfig { vcpus: state.vcpus, spis: state.spis, priority_bits: state.priority_bits })?;
        vgic.restore(state)?;
        Ok(vgic)
    }
}

/// The saved state of a [`Vgic`]: plain data for checkpoints and migration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VgicState {
    pub vcpus: u16,
    pub spis: u16,
    pub priority_bits: u8,
    /// `GICD_CTLR` as the guest reads it (only EnableGrp0/EnableGrp1 are restored).
    pub gicd_ctlr: u32,
    /// `GICR_WAKER.ProcessorSleep` of each vCPU's redistributor.
    pub processor_sleep: Vec<bool>,
    /// Every interrupt: vCPU 0's INTIDs 0..32, vCPU 1's, ..., then SPIs 32..32 + `spis`.
    pub irqs: Vec<IrqState>,
}

/// One interrupt in a [`VgicState`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IrqState {
    pub enabled: bool,
    pub group1: bool,
    /// Edge-triggered (always for SGIs).
    pub edge: bool,
    /// The input line (PPIs and SPIs driven by `set_level`).
    pub level: bool,
    /// The pending latch (edge, `ISPENDR`, SGI); a level interrupt is also pending while
    /// `level` is high.
    pub pending_latch: bool,
    pub active: bool,
    pub priority: u8,
    /// SPIs: `GICD_IROUTER` (0 for SGIs and PPIs).
    pub route: u64,
    /// SPIs: the vCPU an active SPI is active on (0 otherwise).
    pub owner: u16,
}
