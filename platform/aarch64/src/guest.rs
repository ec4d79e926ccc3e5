//! A vCPU's register context and the world switch (`src/asm/guest.S`).
//!
//! A vCPU's state is split by how often it moves:
//!
//! - [`GuestRegs`]: x0-x30, PC (ELR_EL2) and PSTATE (SPSR_EL2), switched by [`enter`] at every
//!   entry and exit.
//! - [`El1State`]: the EL1/EL0 system registers and the virtual timer, switched by [`load`] and
//!   [`unload`] when a core starts and stops running a vCPU. In between, while the core handles
//!   exits of the same vCPU, they stay live in the hardware: EL2 never touches them except
//!   through the `inject_*` functions. Its FP/SIMD half is switched lazily: [`load`] leaves the
//!   registers as they are and sets `CPTR_EL2.TFP`, so the vCPU's first FP/SIMD instruction
//!   traps (EC 0x07) and [`fp_trap`] restores them; [`unload`] saves them only if they were
//!   restored. A vCPU that never uses FP/SIMD while loaded costs nothing for it.
//! - [`GicCpuState`]: `ICH_VMCR_EL2` and the active-priority registers, also at load/unload.
//!   The list registers are filled and emptied around every entry by the vGIC glue.
//!
//! While a vCPU runs, `HCR_EL2` holds [`HCR_GUEST`] and `VTTBR_EL2` its VM's stage-2 root:
//! everything the guest can reach is its own RAM (its stage-2 map), so running it cannot touch
//! any memory the hypervisor uses.

use core::arch::global_asm;
use core::mem::offset_of;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::layout::MAX_CORES;

use crate::gic;
use crate::sysreg::{isb, sysreg_read, sysreg_write};
use vdev::tlbi::TlbiOp;

/// x0-x30, PC and PSTATE of a vCPU.
#[repr(C)]
#[derive(Debug, Clone, Default)]
pub struct GuestRegs {
    /// x0 to x30.
    pub x: [u64; 31],
    /// Where the guest resumes (ELR_EL2).
    pub pc: u64,
    /// Its PSTATE (SPSR_EL2).
    pub pstate: u64,
}

/// The EL1 and EL0 system registers, the virtual timer and FP/SIMD of a vCPU, in the order
/// `__hv_el1_save` and `__hv_el1_restore` use.
#[repr(C, align(16))]
#[derive(Debug, Clone)]
pub struct El1State {
    pub sp_el0: u64,
    pub sp_el1: u64,
    pub elr_el1: u64,
    pub spsr_el1: u64,
    pub sctlr_el1: u64,
    pub cpacr_el1: u64,
    pub ttbr0_el1: u64,
    pub ttbr1_el1: u64,
    pub tcr_el1: u64,
    pub mair_el1: u64,
    pub amair_el1: u64,
    pub vbar_el1: u64,
    pub contextidr_el1: u64,
    pub tpidr_el0: u64,
    pub tpidrro_el0: u64,
    pub tpidr_el1: u64,
    pub esr_el1: u64,
    pub far_el1: u64,
    pub afsr0_el1: u64,
    pub afsr1_el1: u64,
    pub par_el1: u64,
    pub cntkctl_el1: u64,
    pub csselr_el1: u64,
    pub mdscr_el1: u64,
    /// The virtual timer's compare value (ticks of the virtual counter, which is the physical
    /// counter: `CNTVOFF_EL2` = 0).
    pub cntv_cval: u64,
    /// The virtual timer's control: ENABLE (bit 0), IMASK (bit 1), ISTATUS (bit 2, as saved).
    pub cntv_ctl: u64,
    pub fpcr: u64,
    pub fpsr: u64,
    /// Q0 to Q31.
    pub vregs: [u128; 32],
}

/// `SCTLR_EL1` at reset: the RES1 bits (11, 20, 22, 23, 28, 29); MMU, caches and alignment
/// checks off.
pub const SCTLR_EL1_RESET: u64 = 0x30d0_0800;

impl El1State {
    /// A vCPU's EL1 state at reset (and after PSCI `CPU_ON`): MMU and caches off, timer off,
    /// everything else zero.
    pub const fn reset() -> El1State {
        El1State {
            sp_el0: 0,
            sp_el1: 0,
            elr_el1: 0,
            spsr_el1: 0,
            sctlr_el1: SCTLR_EL1_RESET,
            cpacr_el1: 0,
            ttbr0_el1: 0,
            ttbr1_el1: 0,
            tcr_el1: 0,
            mair_el1: 0,
            amair_el1: 0,
            vbar_el1: 0,
            contextidr_el1: 0,
            tpidr_el0: 0,
            tpidrro_el0: 0,
            tpidr_el1: 0,
            esr_el1: 0,
            far_el1: 0,
            afsr0_el1: 0,
            afsr1_el1: 0,
            par_el1: 0,
            cntkctl_el1: 0,
            csselr_el1: 0,
            mdscr_el1: 0,
            cntv_cval: 0,
            cntv_ctl: 0,
            fpcr: 0,
            fpsr: 0,
            vregs: [0; 32],
        }
    }
}

/// The vCPU's half of the GIC virtual CPU interface that is not in list registers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GicCpuState {
    pub vmcr: u64,
    pub ap0r: [u64; 4],
    pub ap1r: [u64; 4],
}

/// What the vGIC glue (`hyp/core_loop.rs`) remembers of a vCPU's last list-register fill, so
/// that an entry after the vCPU is loaded again can skip the model as an entry of a vCPU that
/// stayed loaded does: whether the fill found nothing to load and nothing left behind, and the
/// virtual timer's line then (`flags`, the glue's), at model epoch `epoch`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LrMemo {
    pub flags: u8,
    pub epoch: u64,
}

/// Everything of a vCPU that is not in its VM's shared state.
#[derive(Debug, Clone)]
pub struct VcpuContext {
    pub regs: GuestRegs,
    pub el1: El1State,
    pub gic: GicCpuState,
    /// `VMPIDR_EL2`: what the guest reads as `MPIDR_EL1`.
    pub vmpidr: u64,
    /// The vGIC glue's memo of the last fill (not guest state).
    pub lr_memo: LrMemo,
    /// The vCPU's FP/SIMD registers are live in the hardware of the core that has it loaded
    /// (restored by [`fp_trap`], `CPTR_EL2.TFP` clear), not in `el1`; [`unload`] saves them.
    /// Always false while the context is not loaded.
    pub fp_live: bool,
    /// A trapped TLB maintenance instruction of the vCPU is not complete yet: these cores must
    /// have left its VM's guest before it runs again (`Core::guest_tlbi`; not guest state).
    pub tlbi_waits: Option<vcpu_runtime::tlb::Waits>,
}

/// PSTATE of a vCPU at reset: EL1h, D, A, I and F masked.
pub const PSTATE_EL1H_MASKED: u64 = 0x3c5;

impl VcpuContext {
    /// A vCPU at reset with this `MPIDR_EL1`: it will start at `entry` with `x0`.
    pub fn new(vmpidr: u64, entry: u64, x0: u64) -> VcpuContext {
        let mut ctx = VcpuContext {
            regs: GuestRegs::default(),
            el1: El1State::reset(),
            gic: GicCpuState::default(),
            vmpidr,
            lr_memo: LrMemo::default(),
            fp_live: false,
            tlbi_waits: None,
        };
        ctx.reset(entry, x0);
        ctx
    }

    /// Back to the reset state, starting at `entry` with `x0` (PSCI `CPU_ON`: a vCPU comes up
    /// as from reset, MMU off, at EL1h with interrupts masked).
    pub fn reset(&mut self, entry: u64, x0: u64) {
        self.regs = GuestRegs::default();
        self.regs.x[0] = x0;
        self.regs.pc = entry;
        self.regs.pstate = PSTATE_EL1H_MASKED;
        self.el1 = El1State::reset();
        self.gic = GicCpuState::default();
        self.lr_memo = LrMemo::default();
    }
}

/// Why the guest came back: the vector it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// A synchronous exception (trap, HVC, abort): see ESR_EL2.
    Sync,
    /// A physical IRQ for EL2.
    Irq,
    /// A physical FIQ (none is configured).
    Fiq,
    /// An SError.
    SError,
}

const HOST_FRAME: usize = 14 * 8;

/// `HV_NULL` (docs/guest-abi.md), which the world switch answers itself.
pub const HV_NULL: u32 = 0xC600_0000;

/// Per core (indexed by `TPIDR_EL2`, the core index): the `HV_NULL` calls the world switch
/// answered without leaving its exception vector (`guest.S`). Written only by that core's
/// vector code, read by that core.
static FAST_EXITS: [AtomicU64; MAX_CORES] = [const { AtomicU64::new(0) }; MAX_CORES];

/// Guest exits this core answered in the exception vector itself (see [`FAST_EXITS`]); they do
/// not come back from [`enter`].
pub fn fast_exits(core: usize) -> u64 {
    FAST_EXITS.get(core).map_or(0, |c| c.load(Ordering::Relaxed))
}

global_asm!(
    include_str!("asm/guest.S"),
    regs_pc = const offset_of!(GuestRegs, pc),
    host_frame = const HOST_FRAME,
    el1_vregs = const offset_of!(El1State, vregs),
    el1_fpcr = const offset_of!(El1State, fpcr),
    hv_null = const HV_NULL,
    fast_exits = sym FAST_EXITS,
    uart_base_mb = const crate::hyp::vm::UART_BASE >> 20,
    uart_fr = const vdev::uart::reg::FR,
    uart_fr_value = const vdev::uart::FR_VALUE,
);

// The vector's UART test compares HPFAR_EL2 (IPA bits [47:12] at [39:4]) with the base's MiB
// number shifted left by 12, which holds for a MiB-aligned base; `mov` takes the value whole.
const _: () = {
    assert!(crate::hyp::vm::UART_BASE % (1 << 20) == 0 && crate::hyp::vm::UART_BASE >> 20 <= 0xfff);
    assert!(vdev::uart::FR_VALUE <= 0xffff && vdev::uart::reg::FR <= 0xfff);
};

const _: () = {
    assert!(offset_of!(GuestRegs, pstate) == offset_of!(GuestRegs, pc) + 8);
    assert!(offset_of!(GuestRegs, pc) == 31 * 8);
    // The 28 registers of guest.S, in its order.
    assert!(offset_of!(El1State, cntv_cval) == 192 && offset_of!(El1State, fpsr) == 216);
    assert!(offset_of!(El1State, vregs) == 224);
    assert!(HOST_FRAME % 16 == 0);
};

extern "C" {
    fn __hv_guest_enter(regs: *mut GuestRegs) -> u64;
    fn __hv_el1_save(state: *mut El1State);
    fn __hv_el1_restore(state: *const El1State);
    fn __hv_fp_save(state: *mut El1State);
    fn __hv_fp_restore(state: *const El1State);
}

/// `HCR_EL2` while a guest runs:
/// - VM (0): stage 2 on;
/// - SWIO (1): the guest's data-cache invalidate by set/way becomes clean and invalidate (a
///   set/way operation cannot be confined to the guest's memory);
/// - FMO, IMO, AMO (3-5): physical FIQs, IRQs and SErrors go to EL2 (the run ends at once when
///   the hypervisor is needed), and the guest gets virtual ones from the GIC's list registers;
/// - FB (9) and BSU = inner shareable (10): the guest's TLB and instruction-cache maintenance
///   and its barriers reach every core, because its vCPUs move between cores;
/// - TWI (13): WFI traps, so an idle vCPU gives its core back to the runtime;
/// - TWE (14): WFE traps, so a vCPU spinning on a lock held by a descheduled sibling can yield;
/// - TID3 (18): reads of the ID registers trap, and the guest reads the hypervisor's view of
///   them (`vdev::idregs`: SVE, SME, pointer authentication, MTE, the PMU, ... hidden, as their
///   state is not switched);
/// - TSC (19): SMC traps (guests have no firmware; PSCI is over HVC);
/// - TIDCP (20): implementation-defined system registers trap (the guest gets an undefined
///   instruction, as on KVM);
/// - TACR (21): `ACTLR_EL1` traps: it is implementation defined and not switched, so a guest
///   reads the hardware's value and its writes are ignored (as KVM does);
/// - RW (31): EL1 is AArch64.
///
/// E2H and TGE stay 0: EL2 keeps its own translation regime.
pub const HCR_GUEST: u64 = 1
    | (1 << 1)
    | (1 << 3)
    | (1 << 4)
    | (1 << 5)
    | (1 << 9)
    | (1 << 10)
    | (1 << 13)
    | (1 << 14)
    | (1 << 18)
    | (1 << 19)
    | (1 << 20)
    | (1 << 21)
    | (1 << 31);
/// `HCR_EL2.TTLB` (bit 25), added to [`HCR_GUEST`] for the VMs whose TLB maintenance the
/// hypervisor carries out itself ([`tlbi_local`]; docs/linux-guests.md, *Guest TLB
/// maintenance*).
pub const HCR_TTLB: u64 = 1 << 25;
/// `HCR_EL2` while no guest runs (as the entry code sets it): RW only.
pub const HCR_HOST: u64 = 1 << 31;

sysreg_write!(fn write_hcr_el2 = "hcr_el2");
sysreg_write!(fn write_vttbr_el2 = "vttbr_el2");
sysreg_write!(fn write_vmpidr_el2 = "vmpidr_el2");
sysreg_write!(fn write_vpidr_el2 = "vpidr_el2");
sysreg_write!(fn write_cptr_el2 = "cptr_el2");
sysreg_write!(fn write_cnthctl_el2 = "cnthctl_el2");
sysreg_write!(fn write_cntvoff_el2 = "cntvoff_el2");
sysreg_write!(fn write_hstr_el2 = "hstr_el2");

/// `CPTR_EL2` while the loaded vCPU's FP/SIMD registers are in the hardware: FP/SIMD not
/// trapped (TFP = 0), SVE and SME trapped (TZ, TSM: their larger state is not switched), trace
/// not trapped; the other bits RES1.
const CPTR_FP_LIVE: u64 = 0x33ff;
/// `CPTR_EL2` otherwise: [`CPTR_FP_LIVE`] with TFP (bit 10) set, so that FP/SIMD use traps to
/// EL2 (EC 0x07), from EL0 and EL1 (and EL2, which never uses it).
const CPTR_FP_TRAP: u64 = CPTR_FP_LIVE | (1 << 10);

/// The per-core EL2 settings for running guests, once per core:
/// - `CPTR_EL2` = [`CPTR_FP_TRAP`]: FP/SIMD traps until a loaded vCPU uses it ([`fp_trap`]),
///   SVE and SME trapped;
/// - `CNTHCTL_EL2` = EL1PCTEN: the guest may read the physical counter, but its accesses to the
///   EL1 physical timer trap (it has the virtual timer; the physical one is not switched);
/// - `CNTVOFF_EL2` = 0: the guest's virtual counter is the physical counter, the hypervisor's
///   clock;
/// - `HSTR_EL2` = 0: no AArch32 CP15 traps;
/// - `VPIDR_EL2` = this core's MIDR.
///
/// `MDCR_EL2` keeps its reset value (debug registers not trapped); of the debug state only
/// `MDSCR_EL1` is switched.
pub fn init_this_core() {
    write_cptr_el2(CPTR_FP_TRAP);
    write_cnthctl_el2(1);
    write_cntvoff_el2(0);
    write_hstr_el2(0);
    write_vpidr_el2(crate::sysreg::midr_el1());
    isb();
}

/// A VM's EL2 settings for its vCPUs: `VTTBR_EL2` (its stage-2 root and VMID), `CNTVOFF_EL2`
/// and `HCR_EL2` ([`HCR_GUEST`], with [`HCR_TTLB`] if its TLB maintenance traps).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmRegs {
    pub vttbr: u64,
    pub cntvoff: u64,
    pub hcr: u64,
}

/// Makes `ctx` the vCPU this core runs: its EL1 state, virtual timer and virtual CPU interface
/// state into the hardware, `VMPIDR_EL2`, and its VM's [`VmRegs`]. Its FP/SIMD registers
/// follow at its first use of them ([`fp_trap`]; `CPTR_EL2.TFP` is set while no vCPU's are
/// live).
pub fn load(ctx: &VcpuContext, vm: VmRegs) {
    write_vttbr_el2(vm.vttbr);
    write_cntvoff_el2(vm.cntvoff);
    write_hcr_el2(vm.hcr);
    load_vcpu(ctx);
}

/// [`load`] right after [`save`] of another vCPU (a switch): the VM's registers are written
/// only if `vm` says they change (the vCPUs of one VM share them).
pub fn load_after_save(ctx: &VcpuContext, vm: Option<VmRegs>) {
    if let Some(vm) = vm {
        write_vttbr_el2(vm.vttbr);
        write_cntvoff_el2(vm.cntvoff);
        write_hcr_el2(vm.hcr);
    }
    load_vcpu(ctx);
}

/// [`load_after_save`] of a vCPU of the VM whose registers are loaded (a switch between two of
/// its vCPUs).
#[inline(always)]
pub fn load_of_same_vm(ctx: &VcpuContext) {
    load_vcpu(ctx);
}

/// Carries out a guest's trapped TLB maintenance instruction on this core: `op`, the local form
/// of what the guest asked for, with its operand `xt`, for the VMID in `VTTBR_EL2` (the loaded
/// vCPU's VM). The VM's other cores are the caller's business.
pub fn tlbi_local(op: TlbiOp, xt: u64) {
    // SAFETY: each arm is one TLB invalidation of the EL1&0 regime on this core, for the VMID
    // loaded (EL2 with E2H = 0 and TGE = 0 reaches the guest's regime); they only drop cached
    // translations. A range form traps only from a CPU that implements it (on one without,
    // the guest's instruction is undefined at EL1 and never reaches EL2). The `dsb nsh` waits
    // for the invalidation to complete before the guest resumes.
    unsafe {
        match op {
            TlbiOp::Vmalle1 => core::arch::asm!("tlbi vmalle1", options(nostack, preserves_flags)),
            TlbiOp::Vae1 => core::arch::asm!("tlbi vae1, {}", in(reg) xt, options(nostack, preserves_flags)),
            TlbiOp::Aside1 => core::arch::asm!("tlbi aside1, {}", in(reg) xt, options(nostack, preserves_flags)),
            TlbiOp::Vaae1 => core::arch::asm!("tlbi vaae1, {}", in(reg) xt, options(nostack, preserves_flags)),
            TlbiOp::Vale1 => core::arch::asm!("tlbi vale1, {}", in(reg) xt, options(nostack, preserves_flags)),
            TlbiOp::Vaale1 => core::arch::asm!("tlbi vaale1, {}", in(reg) xt, options(nostack, preserves_flags)),
            // The range forms by their `SYS` encodings (CRm 6), which need no assembler feature.
            TlbiOp::Rvae1 => core::arch::asm!("sys #0, c8, c6, #1, {}", in(reg) xt, options(nostack, preserves_flags)),
            TlbiOp::Rvaae1 => core::arch::asm!("sys #0, c8, c6, #3, {}", in(reg) xt, options(nostack, preserves_flags)),
            TlbiOp::Rvale1 => core::arch::asm!("sys #0, c8, c6, #5, {}", in(reg) xt, options(nostack, preserves_flags)),
            TlbiOp::Rvaale1 => {
                core::arch::asm!("sys #0, c8, c6, #7, {}", in(reg) xt, options(nostack, preserves_flags))
            }
        }
        core::arch::asm!("dsb nsh", "isb", options(nostack, preserves_flags));
    }
}

/// Drops this core's stage-1 TLB entries of the VM loaded here (`TLBI VMALLE1` for the VMID in
/// `VTTBR_EL2`): the VM's trapped TLB maintenance ran on another core since this one last did
/// this for it.
pub fn tlb_catch_up() {
    tlbi_local(TlbiOp::Vmalle1, 0);
}

/// The vCPU's own part of [`load`].
fn load_vcpu(ctx: &VcpuContext) {
    write_vmpidr_el2(ctx.vmpidr);
    gic::write_ich_vmcr(ctx.gic.vmcr);
    gic::restore_aprs(&ctx.gic.ap0r, &ctx.gic.ap1r);
    // SAFETY: `__hv_el1_restore` only reads the `El1State` it is given (a valid reference) and
    // writes EL1/EL0 system registers and the virtual timer, none of which the hypervisor uses
    // (it runs at EL2).
    unsafe { __hv_el1_restore(&ctx.el1) };
}

/// Takes the vCPU this core runs off it: saves what [`load`] (and [`fp_trap`]) loaded into
/// `ctx` ([`save`]), turns the virtual CPU interface off (its list registers must be empty by
/// now) and sets `HCR_EL2` back to [`HCR_HOST`].
pub fn unload(ctx: &mut VcpuContext) {
    save(ctx);
    gic::set_ich_hcr(0);
    write_hcr_el2(HCR_HOST);
    isb();
}

/// Saves the loaded vCPU into `ctx` (its EL1 state, virtual timer, FP/SIMD if live, virtual
/// CPU interface state), disables its virtual timer in the hardware and sets FP/SIMD to trap
/// again; `HCR_EL2` and `ICH_HCR_EL2` stay as they are, for [`load_after_save`] of the next
/// vCPU. ([`unload`] is this and the rest.)
pub fn save(ctx: &mut VcpuContext) {
    // SAFETY: `__hv_el1_save` writes only the `El1State` it is given (an exclusive reference)
    // and reads EL1/EL0 registers; its only other effect is disabling the EL1 virtual timer,
    // which belongs to the vCPU being saved.
    unsafe { __hv_el1_save(&mut ctx.el1) };
    if ctx.fp_live {
        // SAFETY: as above, for the FP/SIMD registers, which are this vCPU's (`fp_live`), and
        // accessible at EL2 (`CPTR_EL2.TFP` is clear while they are live).
        unsafe { __hv_fp_save(&mut ctx.el1) };
        write_cptr_el2(CPTR_FP_TRAP);
        ctx.fp_live = false;
    }
    ctx.gic.vmcr = gic::ich_vmcr();
    gic::save_aprs(&mut ctx.gic.ap0r, &mut ctx.gic.ap1r);
}

/// The loaded vCPU's first FP/SIMD instruction since it was loaded trapped (EC 0x07,
/// `CPTR_EL2.TFP`): its FP/SIMD registers go into the hardware and stop trapping. The
/// instruction is retried when the vCPU resumes (`ELR_EL2` still points at it). Returns false,
/// changing nothing, if they were live already (the trap came from something else).
pub fn fp_trap(ctx: &mut VcpuContext) -> bool {
    if ctx.fp_live {
        return false;
    }
    write_cptr_el2(CPTR_FP_LIVE);
    isb();
    // SAFETY: `__hv_fp_restore` only reads the `El1State` it is given (a valid reference) and
    // writes the FP/SIMD registers, which the hypervisor never uses (softfloat) and which now
    // belong to this loaded vCPU; `CPTR_EL2.TFP` was cleared (and synchronized) above.
    unsafe { __hv_fp_restore(&ctx.el1) };
    ctx.fp_live = true;
    true
}

/// Runs the loaded vCPU until it exits: its `regs` go in, and come back as it left them.
///
/// The caller must have [`load`]ed the vCPU's context (which sets `HCR_EL2` and `VTTBR_EL2`):
/// the guest then runs at EL1 behind its stage-2 map.
pub fn enter(regs: &mut GuestRegs) -> ExitKind {
    // SAFETY: `__hv_guest_enter` saves the callee-saved registers (x18-x30) and the
    // `GuestRegs` pointer in a frame on this stack, loads the guest's registers and ERETs; the
    // guest's exit comes back through the lower-EL vectors to `__hv_guest_exit`, which writes
    // the guest's registers into the same `GuestRegs` (an exclusive reference for the whole
    // call), pops the frame and returns here with every callee-saved register restored. While
    // the guest runs, `HCR_EL2.VM` is set and `VTTBR_EL2` points to its stage-2 tables (the
    // caller loaded them), which map only the guest's own RAM: the guest cannot reach memory
    // the hypervisor uses. IRQs stay masked at EL2 throughout.
    let kind = unsafe { __hv_guest_enter(regs) };
    match kind {
        0 => ExitKind::Sync,
        1 => ExitKind::Irq,
        2 => ExitKind::Fiq,
        _ => ExitKind::SError,
    }
}

/// What the guest did, from the syndrome registers of the last exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Syndrome {
    pub esr: u64,
    pub far: u64,
    pub hpfar: u64,
}

/// The exception syndrome (`ESR_EL2`) of the exit just taken.
pub fn esr() -> u64 {
    crate::sysreg::esr_el2()
}

/// The syndrome of the exit just taken, fault addresses included: read by the handlers of the
/// aborts that need them (nothing traps to EL2 between the exit and the handler, so the
/// registers still hold what the exit left).
pub fn syndrome() -> Syndrome {
    Syndrome { esr: crate::sysreg::esr_el2(), far: crate::sysreg::far_el2(), hpfar: crate::sysreg::hpfar_el2() }
}

sysreg_read!(fn read_vbar_el1 = "vbar_el1");
sysreg_write!(fn write_esr_el1 = "esr_el1");
sysreg_write!(fn write_far_el1 = "far_el1");
sysreg_write!(fn write_elr_el1 = "elr_el1");
sysreg_write!(fn write_spsr_el1 = "spsr_el1");

/// Takes a synchronous exception into the loaded vCPU's EL1, as the hardware would: ELR_EL1 =
/// the faulting PC, SPSR_EL1 = its PSTATE, ESR_EL1 = `esr`, FAR_EL1 = `far` (when given), and the
/// vCPU continues at its vector table, at the entry for where it was (EL1 with SP_EL1, EL1 with
/// SP_EL0, or EL0), with PSTATE = EL1h and D, A, I, F masked.
fn inject_sync(regs: &mut GuestRegs, esr: u64, far: Option<u64>) {
    let offset = match regs.pstate & 0xf {
        0b0101 => 0x200, // EL1h: current EL with SP_ELx
        0b0100 => 0x000, // EL1t: current EL with SP_EL0
        _ => 0x400,      // EL0: lower EL, AArch64
    };
    write_elr_el1(regs.pc);
    write_spsr_el1(regs.pstate);
    write_esr_el1(esr);
    if let Some(far) = far {
        write_far_el1(far);
    }
    regs.pc = read_vbar_el1() + offset;
    regs.pstate = PSTATE_EL1H_MASKED;
}

/// From EL0 the exception classes are one lower ("from a lower EL") than from EL1 ("same EL").
fn from_el0(regs: &GuestRegs) -> bool {
    (regs.pstate >> 2) & 3 == 0
}

/// Injects a synchronous external abort for the data access at `far` that faulted at `regs.pc`
/// (DFSC 0b010000; EC 0x25, or 0x24 from EL0; WnR as the access; IL as the instruction).
pub fn inject_data_abort(regs: &mut GuestRegs, far: u64, write: bool, il32: bool) {
    let ec: u64 = if from_el0(regs) { 0x24 } else { 0x25 };
    let esr = (ec << 26) | (u64::from(il32) << 25) | (u64::from(write) << 6) | 0x10;
    inject_sync(regs, esr, Some(far));
}

/// Injects a synchronous external abort on instruction fetch at `far` (IFSC 0b010000; EC 0x21,
/// or 0x20 from EL0).
pub fn inject_instruction_abort(regs: &mut GuestRegs, far: u64) {
    let ec: u64 = if from_el0(regs) { 0x20 } else { 0x21 };
    inject_sync(regs, (ec << 26) | (1 << 25) | 0x10, Some(far));
}

/// Injects an undefined-instruction exception for the instruction at `regs.pc` (EC 0, IL).
pub fn inject_undef(regs: &mut GuestRegs) {
    inject_sync(regs, 1 << 25, None);
}

/// The loaded vCPU's virtual timer control (`CNTV_CTL_EL0`, ISTATUS live).
pub fn vtimer_ctl() -> u64 {
    sysreg_read!(fn r = "cntv_ctl_el0");
    r()
}

/// The loaded vCPU's virtual timer compare value (`CNTV_CVAL_EL0`).
pub fn vtimer_cval() -> u64 {
    sysreg_read!(fn r = "cntv_cval_el0");
    r()
}
