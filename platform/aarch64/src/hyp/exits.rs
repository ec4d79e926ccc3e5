//! What a guest's synchronous exit means, and the answer: WFI/WFE, HVC (PSCI through
//! `vdev::psci`, the hypervisor's own calls), trapped SMC, trapped system registers (the SGI
//! registers of the GIC), and data aborts on the emulated devices (`vdev::mmio` decodes them;
//! the UART, GICD and GICR models answer). Anything the hypervisor cannot or will not do gets an
//! architectural answer in the guest (an injected abort or undefined instruction, or
//! `NOT_SUPPORTED`) and a `fault` trace event.

use core::cell::Cell;

use vcpu_runtime::trace::{FaultKind, PsciCall, StopReason, TraceEvent, TraceKind};
use vcpu_runtime::{AffinityState, CoreId, ExitReason, PowerOnError, TraceSink, VcpuId};
use vdev::idregs::{self, IdReg};
use vdev::mmio::{decode_data_abort, trap_kind, MmioAccess, TrapKind};
use vdev::psci::{self, func, PsciOutcome, PsciVm};
use vdev::smccc;
use vdev::uart::UartError;
use vdev::vgic::Effects;

use super::core_loop::Core;
use super::vm::{Vcpu, Vm, GICR_BASE, UART_BASE, UART_INTID, UART_SIZE};
use super::{Hypervisor, Printable};
use crate::guest::{self, GuestRegs, Syndrome, VcpuContext};
use crate::timer;

/// `HV_NULL` (docs/guest-abi.md). The world switch answers it in the exception vector
/// (`guest::HV_NULL`); it is handled here too, should it ever come this way.
pub const HV_NULL: u32 = guest::HV_NULL;
/// `HV_MARK`: x1 = marker id, x2 = value.
pub const HV_MARK: u32 = 0xC600_0001;
/// `HV_YIELD`: gives the core to any other runnable vCPU.
pub const HV_YIELD: u32 = 0xC600_0002;
/// `HV_BENCH`: x1 = phase (0 start, 1 stop, 2 start on every core), x2 = operation, x3 =
/// iterations; counts the hypervisor's own instructions in between (`super::bench`).
pub const HV_BENCH: u32 = 0xC600_0003;
/// `HV_BENCH_MOVE`: x1 = a physical core; asks the runtime to hand the calling vCPU over to it
/// (a benchmark of the move, `cargo xtask bench qemu`). Answered only under `hv.bench`.
pub const HV_BENCH_MOVE: u32 = 0xC600_0004;
/// SMCCC `NOT_SUPPORTED` as a register value.
const NOT_SUPPORTED: u64 = -1i64 as u64;
/// SMCCC `INVALID_PARAMETERS` as a register value.
const INVALID_PARAMETERS: u64 = -2i64 as u64;

/// What the core does after an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    /// Enter the vCPU again.
    Resume,
    /// Give the core back to the runtime with this exit reason.
    Exit(ExitReason),
}

/// Handles a synchronous exit of `vcpu` with syndrome `esr` (its context is loaded;
/// `ctx.regs` holds its registers).
pub(super) fn handle(core: &mut Core<'_>, vm: &Vm, vcpu: &Vcpu, ctx: &mut VcpuContext, esr: u64) -> Action {
    let kind = trap_kind(esr);
    // The vCPU's first FP/SIMD use since it was loaded: its registers go in, and the
    // instruction runs again.
    if matches!(kind, TrapKind::FpSimd) && guest::fp_trap(ctx) {
        return Action::Resume;
    }
    let regs = &mut ctx.regs;
    match kind {
        TrapKind::Wfx { wfe: false } => {
            regs.pc += 4;
            wfi(vm, vcpu)
        }
        TrapKind::Wfx { wfe: true } => {
            regs.pc += 4;
            if core.others_runnable(vcpu.id) {
                Action::Exit(ExitReason::Yield)
            } else {
                Action::Resume
            }
        }
        // ELR_EL2 already points past the HVC.
        TrapKind::Hvc { .. } => hvc(core, vm, vcpu, regs),
        TrapKind::Smc { .. } => {
            // Trapped by HCR_EL2.TSC; ELR_EL2 points at the SMC. There is no firmware.
            regs.x[0] = NOT_SUPPORTED;
            regs.pc += 4;
            core.fault(vm, vcpu, FaultKind::UndefinedSmc);
            Action::Resume
        }
        TrapKind::SysReg { iss } => sysreg(core, vm, vcpu, ctx, iss),
        TrapKind::DataAbort => data_abort(core, vm, vcpu, regs, guest::syndrome()),
        TrapKind::InstructionAbort => {
            guest::inject_instruction_abort(regs, guest::syndrome().far);
            core.fault(vm, vcpu, FaultKind::StageTwoAbort);
            Action::Resume
        }
        TrapKind::FpSimd | TrapKind::Other { .. } => {
            guest::inject_undef(regs);
            core.fault(vm, vcpu, FaultKind::Other(((esr >> 26) & 0x3f) as u32));
            Action::Resume
        }
    }
}

/// WFI (and PSCI CPU_SUSPEND): back to the guest at once if an interrupt is pending for it
/// that its virtual CPU interface would signal (the list registers were synced into the model
/// at the exit; the priority mask, group enables and running priority are the live ones of
/// this loaded vCPU), else it blocks. A vCPU that masks what is pending does not spin.
fn wfi(vm: &Vm, vcpu: &Vcpu) -> Action {
    let cpu = crate::gic::virtual_cpu_interface();
    if vm.vgic().has_pending(vcpu.index, cpu) {
        Action::Resume
    } else {
        Action::Exit(ExitReason::Wfi)
    }
}

/// A trapped system register access (EC 0x18): the guest's writes to the SGI generation
/// registers go to the vGIC, its TLB maintenance instructions (for a VM that traps them) are
/// carried out (`Core::guest_tlbi`), its reads of the ID registers get the hypervisor's view of them
/// (`vdev::idregs`), `ACTLR_EL1` reads as the hardware's and ignores writes; anything else gets
/// an undefined instruction.
fn sysreg(core: &mut Core<'_>, vm: &Vm, vcpu: &Vcpu, ctx: &mut VcpuContext, iss: u32) -> Action {
    let regs = &mut ctx.regs;
    if let Some(op2) = sgi_register_write(iss) {
        let rt = ((iss >> 5) & 0x1f) as usize;
        let value = if rt == 31 { 0 } else { regs.x[rt] };
        let fx = {
            let mut vgic = vm.vgic();
            if op2 == 5 {
                vgic.send_sgi(vcpu.index, value)
            } else {
                vgic.send_sgi_group0(vcpu.index, value)
            }
        };
        core.dispatch(vm, fx, Some(vcpu.id));
        regs.pc += 4;
        return Action::Resume;
    }
    let op0 = (iss >> 20) & 3;
    let op2 = (iss >> 17) & 7;
    let op1 = (iss >> 14) & 7;
    let crn = (iss >> 10) & 0xf;
    let rt = ((iss >> 5) & 0x1f) as usize;
    let crm = (iss >> 1) & 0xf;
    let read = iss & 1 == 1;
    // TLB maintenance (HCR_EL2.TTLB, for the VMs that trap it).
    if let Some(op) = vdev::tlbi::TlbiOp::from_encoding(op0, op1, crn, crm, op2) {
        if !read && vm.trap_tlbi {
            let xt = if rt == 31 { 0 } else { regs.x[rt] };
            regs.pc += 4;
            if let Some(waits) = core.guest_tlbi(vm, op, xt) {
                // Not complete until those cores have left the guest: the vCPU waits off the
                // core, and finishes the wait before it next enters.
                ctx.tlbi_waits = Some(waits);
                return Action::Exit(ExitReason::Preempted);
            }
            return Action::Resume;
        }
    }
    // The ID registers (HCR_EL2.TID3): the guest's view of the hardware's.
    if let Some(reg) = IdReg::from_encoding(op0, op1, crn, crm, op2) {
        if read {
            let value = idregs::guest_view(reg, crate::sysreg::id_register(reg.crm, reg.op2));
            if rt != 31 {
                regs.x[rt] = value;
            }
            regs.pc += 4;
            return Action::Resume;
        }
    }
    // ACTLR_EL1 (HCR_EL2.TACR): implementation defined and not switched; reads give the
    // hardware's value, writes are ignored.
    if op0 == 3 && op1 == 0 && crn == 1 && crm == 0 && op2 == 1 {
        if read && rt != 31 {
            regs.x[rt] = crate::sysreg::actlr_el1();
        }
        regs.pc += 4;
        return Action::Resume;
    }
    guest::inject_undef(regs);
    core.fault(vm, vcpu, FaultKind::Other(0x18));
    Action::Resume
}

/// The ISS (EC 0x18) of an `MSR` to `ICC_SGI1R_EL1`, without Rt (bits 9:5) and Op2 (19:17):
/// Op0 3 (21:20), Op1 0 (16:14), CRn 12 (13:10), CRm 11 (4:1), a write (bit 0 clear).
const ISS_SGI_WRITE: u32 = (3 << 20) | (12 << 10) | (11 << 1);
/// The ISS bits that identify the register and the direction: all but Rt and Op2.
const ISS_SGI_MASK: u32 = 0x01ff_ffff & !(0x1f << 5) & !(0x7 << 17);

/// Op2 of a write to `ICC_SGI1R_EL1` (5), `ICC_ASGI1R_EL1` (6) or `ICC_SGI0R_EL1` (7), the
/// registers `S3_0_C12_C11_<op2>`, from the ISS of a trapped system register access.
fn sgi_register_write(iss: u32) -> Option<u32> {
    let op2 = (iss >> 17) & 7;
    (iss & ISS_SGI_MASK == ISS_SGI_WRITE && op2 >= 5).then_some(op2)
}

/// The low 32 bits of the ESR of an `MSR ICC_SGI1R_EL1, Xt` (EC 0x18, IL, the ISS of
/// [`ISS_SGI_WRITE`] with Op2 5), with every bit of Rt set.
const ESR_SGI1R_WRITE: u32 = (0x18 << 26) | (1 << 25) | ISS_SGI_WRITE | (5 << 17) | (0x1f << 5);

/// The value of a trapped `ICC_SGI1R_EL1` write (syndrome `esr`, the guest's registers
/// `regs`), if the exit is one: the hot exit of a guest's IPIs, recognized before the general
/// exit decode (`Core::sgi_at_exit`).
#[inline(always)]
pub(super) fn sgi1r_write(esr: u64, regs: &GuestRegs) -> Option<u64> {
    // Rt set, so that one compare tests the rest (an AArch64 trap has IL set).
    if esr as u32 | (0x1f << 5) != ESR_SGI1R_WRITE {
        return None;
    }
    let rt = ((esr >> 5) & 0x1f) as usize;
    Some(regs.x.get(rt).copied().unwrap_or(0))
}

/// The SGI of an `ICC_SGI1R_EL1` value that names `vcpu` alone.
#[inline(always)]
pub(super) fn sgi_to_self_only(value: u64, vcpu: &Vcpu) -> Option<u32> {
    (value & SGI1R_TARGETS == vcpu.sgi_self_target).then_some(((value >> 24) & 0xf) as u32)
}

/// The fields of an `ICC_SGI1R_EL1` value that name its targets: Aff3, IRM, RS, Aff2, Aff1 and
/// TargetList.
const SGI1R_TARGETS: u64 = 0xff << 48 | 0xf << 44 | 1 << 40 | 0xff << 32 | 0xff << 16 | 0xffff;

/// `ESR_EL2` of an `HVC #0` from AArch64 (EC 0x16, IL, immediate 0): SMCCC calls, the guest
/// ABI's among them, use immediate 0.
const ESR_HVC_0: u64 = (0x16 << 26) | (1 << 25);

/// Whether the synchronous exit with syndrome `esr` is an `HV_YIELD`, answered (x0 = 0) if so:
/// tested before the general decode ([`handle`]), a yield being the one exit that switches
/// vCPUs on its own.
#[inline(always)]
pub(super) fn take_yield(esr: u64, regs: &mut GuestRegs) -> bool {
    if esr == ESR_HVC_0 && regs.x[0] as u32 == HV_YIELD {
        regs.x[0] = 0;
        true
    } else {
        false
    }
}

/// An HVC: the hypervisor's calls, PSCI, or `NOT_SUPPORTED`.
fn hvc(core: &mut Core<'_>, vm: &Vm, vcpu: &Vcpu, regs: &mut GuestRegs) -> Action {
    let function = regs.x[0] as u32;
    match function {
        HV_NULL => regs.x[0] = 0,
        HV_MARK => {
            let event =
                TraceEvent { at: timer::now(), kind: TraceKind::Mark { id: regs.x[1] as u32, value: regs.x[2] } };
            core.hyp.trace().emit(event);
            super::live::on_mark(core.hyp, vm.id.index(), regs.x[1] as u32, regs.x[2]);
            regs.x[0] = 0;
        }
        HV_YIELD => {
            regs.x[0] = 0;
            return Action::Exit(ExitReason::Yield);
        }
        HV_BENCH => regs.x[0] = super::bench::call(core, vcpu.id, regs.x[1], regs.x[2], regs.x[3]),
        HV_BENCH_MOVE if !super::bench::moves_allowed() => regs.x[0] = NOT_SUPPORTED,
        HV_BENCH_MOVE => {
            // A request as the governor's (`CoreRuntime::request_move`, from the vCPU's own
            // core): the vCPU leaves the core at this exit and the runtime hands it over at its
            // next decision.
            let dest = u16::try_from(regs.x[1]).map(CoreId);
            match dest.map(|d| core.rt.request_move(&core.hyp.sys, vcpu.id, d)) {
                Ok(Ok(owner)) => {
                    regs.x[0] = 0;
                    if owner == core.me {
                        core.poll = true;
                    } else {
                        core.hyp.kick_core(owner, true);
                    }
                }
                _ => regs.x[0] = INVALID_PARAMETERS,
            }
        }
        f if psci::is_psci(f) => return psci_call(core, vm, vcpu, regs),
        f => match smccc::discovery(f) {
            // A question about the services offered (SMCCC discovery), not misuse: traced as a
            // call, without a fault event.
            Some(answer) => {
                match answer {
                    smccc::Discovery::NotSupported => regs.x[0] = NOT_SUPPORTED,
                    smccc::Discovery::Values(v) => regs.x[..4].copy_from_slice(&v),
                }
                let call = PsciCall::Other(f);
                let kind = TraceKind::GuestPsci { vm: vm.id, vcpu: vcpu.id, call, result: answer.x0() as i32 };
                core.hyp.trace().emit(TraceEvent { at: timer::now(), kind });
            }
            None => {
                regs.x[0] = NOT_SUPPORTED;
                core.fault(vm, vcpu, FaultKind::UndefinedHypercall);
            }
        },
    }
    Action::Resume
}

/// The PSCI view of one VM for `vdev::psci`.
struct PsciView<'a> {
    hyp: &'a Hypervisor,
    vm: &'a Vm,
    me: CoreId,
    /// A CPU_ON made a vCPU of this core runnable: the runtime should decide soon.
    local_poll: Cell<bool>,
}

impl PsciVm for PsciView<'_> {
    fn vcpu_by_mpidr(&self, mpidr: u64) -> Option<VcpuId> {
        if mpidr & !0xff != 0 {
            return None;
        }
        self.vm.vcpu_id(mpidr as u16)
    }

    fn is_ram(&self, ipa: u64) -> bool {
        self.vm.is_ram(ipa, 4)
    }

    fn power_on(&self, vcpu: VcpuId, entry: u64, context: u64) -> Result<(), PowerOnError> {
        let target = self.hyp.vcpu(vcpu);
        // The slot is written under its lock together with the request, so the owner, which
        // takes it under the same lock when it first runs the vCPU, always finds it.
        let mut slot = target.boot.lock();
        let owner = self.hyp.sys.request_power_on(vcpu)?;
        *slot = Some((entry, context));
        drop(slot);
        if owner == self.me {
            self.local_poll.set(true);
        } else {
            self.hyp.kick_core(owner, true);
        }
        Ok(())
    }

    fn affinity_info(&self, vcpu: VcpuId) -> Option<AffinityState> {
        self.hyp.sys.affinity_info(vcpu)
    }
}

fn psci_name(function: u32) -> PsciCall {
    match function & !func::SMC64 {
        func::PSCI_VERSION => PsciCall::Version,
        func::PSCI_FEATURES => PsciCall::Features,
        func::CPU_ON => PsciCall::CpuOn,
        func::CPU_OFF => PsciCall::CpuOff,
        func::CPU_SUSPEND => PsciCall::CpuSuspend,
        func::AFFINITY_INFO => PsciCall::AffinityInfo,
        func::MIGRATE_INFO_TYPE => PsciCall::MigrateInfoType,
        func::SYSTEM_OFF => PsciCall::SystemOff,
        func::SYSTEM_RESET => PsciCall::SystemReset,
        _ => PsciCall::Other(function),
    }
}

fn psci_call(core: &mut Core<'_>, vm: &Vm, vcpu: &Vcpu, regs: &mut GuestRegs) -> Action {
    let function = regs.x[0] as u32;
    let view = PsciView { hyp: core.hyp, vm, me: core.me, local_poll: Cell::new(false) };
    let outcome = psci::handle([regs.x[0], regs.x[1], regs.x[2], regs.x[3]], &view);
    if view.local_poll.get() {
        core.poll = true;
    }
    let result = match outcome {
        PsciOutcome::Return(r) => r as i32,
        _ => 0,
    };
    let event = TraceEvent {
        at: timer::now(),
        kind: TraceKind::GuestPsci { vm: vm.id, vcpu: vcpu.id, call: psci_name(function), result },
    };
    core.hyp.trace().emit(event);
    match outcome {
        PsciOutcome::Return(r) => {
            regs.x[0] = r as u64;
            Action::Resume
        }
        PsciOutcome::Suspend => {
            regs.x[0] = 0;
            wfi(vm, vcpu)
        }
        PsciOutcome::CpuOff => Action::Exit(ExitReason::PsciCpuOff),
        PsciOutcome::SystemOff => {
            core.stop_vm(vm, StopReason::SystemOff, vcpu.id);
            Action::Exit(ExitReason::Stop(vm.stop_reason()))
        }
        PsciOutcome::SystemReset => {
            // Every vCPU turns itself off; the last to go loads the image again and starts
            // vCPU 0 (`Core::finish_reset`).
            if vm.begin_reset() {
                core.quiesce_vm(vm, vcpu.id);
            }
            if vm.stopping.load(core::sync::atomic::Ordering::SeqCst) {
                Action::Exit(ExitReason::Stop(vm.stop_reason()))
            } else {
                Action::Exit(ExitReason::PsciCpuOff)
            }
        }
    }
}

/// What an emulated device made of an access.
enum Outcome {
    /// Done; a read gives its value. `misuse`: the device ignored it (a reserved or read-only
    /// register), worth a `device` fault event.
    Done { value: Option<u64>, misuse: bool },
    /// The access is refused: the guest gets a synchronous external abort.
    Abort(FaultKind),
}

/// A stage-2 data abort: an emulated device's register, or an access outside anything the
/// guest has (an abort is injected).
fn data_abort(core: &mut Core<'_>, vm: &Vm, vcpu: &Vcpu, regs: &mut GuestRegs, syn: Syndrome) -> Action {
    let write = syn.esr & (1 << 6) != 0;
    // A permission fault (DFSC 0b0011xx) on a write, or on the guest's own stage-1 walk (which may
    // write its tables' access flags), in RAM that dirty logging write-protected: marked, made
    // writable, and the access is retried.
    let s1ptw = syn.esr & (1 << 7) != 0;
    if syn.esr & 0x3c == 0x0c && (write || s1ptw) {
        let ipa = ((syn.hpfar & 0x0fff_ffff_fff0) << 8) | (syn.far & 0xfff);
        if vm.dirty_fault(ipa) {
            return Action::Resume;
        }
    }
    let il32 = syn.esr & (1 << 25) != 0;
    let access = match decode_data_abort(syn.esr, syn.hpfar, syn.far) {
        Ok(a) => a,
        Err(_) => {
            // No syndrome to emulate with, an external abort, or a fault on the guest's own
            // stage-1 walk (its tables outside its RAM).
            guest::inject_data_abort(regs, syn.far, write, il32);
            core.fault(vm, vcpu, FaultKind::StageTwoAbort);
            return Action::Resume;
        }
    };
    let value = if access.write { access.store_value(reg(regs, access.reg)) } else { 0 };
    let outcome = if (UART_BASE..UART_BASE + UART_SIZE).contains(&access.ipa) {
        uart(core, vm, &access, access.ipa - UART_BASE, value)
    } else if vm.gicd_range().contains(&access.ipa) {
        gic(core, vm, vcpu, &access, access.ipa - vm.gicd_range().start, value, false)
    } else if vm.gicr_range().contains(&access.ipa) {
        gic(core, vm, vcpu, &access, access.ipa - GICR_BASE, value, true)
    } else {
        Outcome::Abort(FaultKind::StageTwoAbort)
    };
    match outcome {
        Outcome::Done { value, misuse } => {
            if let Some(v) = value {
                if access.reg != 31 {
                    regs.x[usize::from(access.reg)] = access.load_value(v);
                }
            }
            if misuse {
                core.fault(vm, vcpu, FaultKind::DeviceMisuse);
            }
            regs.pc += 4;
        }
        Outcome::Abort(fault) => {
            guest::inject_data_abort(regs, syn.far, access.write, il32);
            core.fault(vm, vcpu, fault);
        }
    }
    Action::Resume
}

/// A general-purpose register as a store's source (x31 is XZR).
fn reg(regs: &GuestRegs, n: u8) -> u64 {
    regs.x.get(usize::from(n)).copied().unwrap_or(0)
}

fn uart(core: &mut Core<'_>, vm: &Vm, access: &MmioAccess, offset: u64, value: u64) -> Outcome {
    let mut uart = vm.uart.lock();
    if !access.write {
        return match uart.read(offset, access.size) {
            Ok(v) => Outcome::Done { value: Some(v), misuse: false },
            Err(_) => Outcome::Abort(FaultKind::DeviceMisuse),
        };
    }
    let mut checkpoint_now = false;
    let result = uart.write(offset, access.size, value, |line| {
        crate::println!("[{}] {}", vm.name, Printable(line));
        checkpoint_now |= super::checkpoint::is_checkpoint_line(vm.id.index(), line);
    });
    // The controller learns of a change while the UART is still held, so that two vCPUs'
    // writes cannot hand it their levels in the wrong order.
    let fx = match uart.irq_line_change() {
        Some(line) => vm.vgic().set_level(UART_INTID, None, line),
        None => Effects::NONE,
    };
    drop(uart);
    if checkpoint_now {
        // `hv.checkpoint-on`: the run ends here, every vCPU at its next exit boundary (this
        // one at once: the poll makes the core look at the run's end before resuming it).
        core.hyp.begin_ending(core.me);
        core.poll = true;
    }
    core.dispatch(vm, fx, None);
    match result {
        Ok(()) => Outcome::Done { value: None, misuse: false },
        Err(UartError::ReadOnly { .. }) => Outcome::Done { value: None, misuse: true },
        Err(_) => Outcome::Abort(FaultKind::DeviceMisuse),
    }
}

#[allow(clippy::too_many_arguments)]
fn gic(
    core: &mut Core<'_>,
    vm: &Vm,
    vcpu: &Vcpu,
    access: &MmioAccess,
    offset: u64,
    value: u64,
    redistributor: bool,
) -> Outcome {
    if !access.write {
        let vgic = vm.vgic();
        let before = vgic.ignored_accesses().0;
        let read =
            if redistributor { vgic.redist_read(offset, access.size) } else { vgic.dist_read(offset, access.size) };
        return match read {
            Ok(v) => Outcome::Done { value: Some(v), misuse: vgic.ignored_accesses().0 > before },
            Err(_) => Outcome::Abort(FaultKind::DeviceMisuse),
        };
    }
    let mut vgic = vm.vgic();
    let written = if redistributor {
        vgic.redist_write(offset, access.size, value)
    } else {
        vgic.dist_write(offset, access.size, value)
    };
    drop(vgic);
    match written {
        Ok(fx) => {
            core.dispatch(vm, fx, Some(vcpu.id));
            Outcome::Done { value: None, misuse: fx.ignored }
        }
        Err(_) => Outcome::Abort(FaultKind::DeviceMisuse),
    }
}
