//! The loop every core runs: ask the runtime, run a vCPU until the decision's `until` or idle
//! until the next timer, handle what comes back, and tell the other cores (IPIs) what they must
//! look at.
//!
//! Around every guest entry the vGIC is carried out (docs/vgic.md, *What the platform must do*):
//! the virtual timer's line is sampled into the model, the list registers are filled from it,
//! and at the exit they are read back and synced. Interrupts that become pending for other vCPUs
//! wake them (`System::wake`) and kick their cores.
//!
//! The virtual timer of the running vCPU fires as the physical PPI 27. Its handler drops the
//! priority but leaves the interrupt active, so it does not fire again while the guest handles
//! its virtual copy; it is deactivated once the timer's line (ENABLE, not IMASK, ISTATUS) is low
//! again at an entry, or when the vCPU leaves the core. A vCPU that is not running has its
//! timer's deadline in [`Vcpu::timer_deadline`]; its owner folds these deadlines into the
//! `until` it programs and raises the line (which wakes the vCPU) when one passes.

use vcpu_runtime::trace::{FaultKind, StopReason, TraceEvent, TraceKind};
use vcpu_runtime::{CoreId, CoreRuntime, Decision, Event, ExitReason, Instant, VcpuId, VcpuState};
use vdev::vgic::{decode_ich_lr, encode_ich_lr, Effects, Lr, MAX_LRS};

use super::exits::{self, Action};
use super::vm::{Vcpu, Vm, NO_DEADLINE};
use super::Hypervisor;
use crate::guest::{self, ExitKind, VcpuContext};
use crate::{fail, gic, smp, stage2, timer};

/// One core's private state in the loop.
pub(super) struct Core<'h> {
    pub hyp: &'h Hypervisor,
    pub me: CoreId,
    pub rt: CoreRuntime,
    /// The physical PPI 27 was acknowledged and left active for the loaded vCPU.
    vtimer_active: bool,
    /// List registers filled at the last entry.
    lrs_used: usize,
    /// The loaded vCPU's last fill found nothing to deliver (no LR used, no overflow), at model
    /// epoch `fill_epoch`, with its timer's line at `timer_line`: while all of that holds and its
    /// LRs are empty, an entry need not look at the model.
    fill_clean: bool,
    fill_epoch: u64,
    timer_line: bool,
    /// Something this core's runtime must decide about happened (a local wake-up or CPU_ON):
    /// the running vCPU goes back to the runtime at its next exit.
    pub poll: bool,
    /// Guest exits taken on this core.
    pub exits: u64,
    /// A running `HV_BENCH` window: operation, iterations, exits at its start.
    pub bench: Option<(u64, u64, u64)>,
}

/// Sets this core up for guests and runs its loop.
pub(super) fn run(hyp: &'static Hypervisor, me: CoreId) -> ! {
    let Some(shared) = hyp.cores.get(me.index()) else { smp::park() };
    if let Err(e) = gic::init_this_core(shared.mpidr) {
        fail!("core {}: {e}", me.0);
    }
    guest::init_this_core();
    if let Err(e) = stage2::init_this_core() {
        fail!("core {}: {e}", me.0);
    }
    let Some(rt) = hyp.take_runtime(me) else { smp::park() };
    let mut core = Core {
        hyp,
        me,
        rt,
        vtimer_active: false,
        lrs_used: 0,
        fill_clean: false,
        fill_epoch: 0,
        timer_line: false,
        poll: false,
        exits: 0,
        bench: None,
    };
    core.main_loop()
}

/// The virtual timer's interrupt line, from a `CNTV_CTL_EL0` value: enabled, not masked, and
/// the condition met.
fn vtimer_line(ctl: u64) -> bool {
    ctl & 0b111 == 0b101
}

impl Core<'_> {
    fn main_loop(&mut self) -> ! {
        loop {
            let now = timer::now();
            if self.hyp.ending() || now >= self.hyp.end {
                self.hyp.begin_ending(self.me);
                self.hyp.finish(self.me, &self.rt);
            }
            self.fire_timers(now);
            self.poll = false;
            let decision = self.rt.next(&self.hyp.sys, now, &mut self.hyp.trace());
            self.send_kicks();
            match decision {
                Decision::Run { vcpu, until } => {
                    let until = until.min(self.next_timer()).min(self.hyp.end);
                    let reason = self.run_vcpu(vcpu, until);
                    let now = timer::now();
                    let event = Event::Exit { vcpu, reason };
                    if let Err(e) = self.rt.handle(&self.hyp.sys, event, now, &mut self.hyp.trace()) {
                        fail!("core {}: {e}", self.me.0);
                    }
                    self.after_exit(vcpu, reason);
                    self.send_kicks();
                }
                Decision::Idle { until } => self.idle(until.unwrap_or(Instant::NEVER)),
                Decision::PowerOff => smp::park(),
            }
        }
    }

    /// IPIs to the cores the runtime says must look at their mail or requests.
    fn send_kicks(&mut self) {
        for core in self.rt.take_kicks().iter() {
            if core != self.me {
                self.hyp.kick_core(core, true);
            }
        }
    }

    /// The earliest virtual-timer deadline among this core's vCPUs (none runs now).
    fn next_timer(&self) -> Instant {
        let mut next = NO_DEADLINE;
        for v in self.rt.vcpus() {
            if matches!(v.state(), VcpuState::Blocked | VcpuState::Runnable) {
                next = next.min(self.hyp.vcpu(v.id()).timer_deadline.load(core::sync::atomic::Ordering::Acquire));
            }
        }
        Instant(next)
    }

    /// Raises the virtual-timer line of every vCPU of this core whose deadline has passed (which
    /// wakes it if the interrupt is enabled).
    fn fire_timers(&mut self, now: Instant) {
        use core::sync::atomic::Ordering;
        let mut i = 0;
        while i < self.rt.vcpus().len() {
            let v = &self.rt.vcpus()[i];
            i += 1;
            if !matches!(v.state(), VcpuState::Blocked | VcpuState::Runnable) {
                continue;
            }
            let vcpu = self.hyp.vcpu(v.id());
            if vcpu.timer_deadline.load(Ordering::Acquire) > now.as_nanos() {
                continue;
            }
            vcpu.timer_deadline.store(NO_DEADLINE, Ordering::Release);
            let vm = &self.hyp.vms[vcpu.vm.index()];
            let fx = vm.vgic().set_level(gic::PPI_VTIMER, Some(vcpu.index), true);
            self.dispatch(vm, fx, None);
        }
    }

    /// Nothing to run: waits for an interrupt, or until `until` or the next timer deadline.
    fn idle(&mut self, until: Instant) {
        let wake = until.min(self.next_timer()).min(self.hyp.end);
        if wake != Instant::NEVER {
            timer::arm_hyp_timer(wake);
        }
        if !self.poll {
            aarch64_cpu::asm::wfi();
        }
        // The timer's line is level: drop it before acknowledging, or it fires again at once.
        timer::disarm_hyp_timer();
        while let Some(intid) = gic::ack() {
            gic::eoi(intid);
            gic::deactivate(intid);
            if intid == gic::SGI_KICK {
                self.hyp.cores[self.me.index()].poll.store(false, core::sync::atomic::Ordering::Release);
            }
        }
    }

    /// After the runtime took the exit: a stopped vCPU is counted; a vCPU of a stopping VM that
    /// just parked is asked to come back on, so that it stops too.
    fn after_exit(&mut self, vcpu: VcpuId, reason: ExitReason) {
        let vm = self.hyp.vm_of(vcpu);
        match reason {
            // Halted: the run is ending anyway; the VM did not stop by itself.
            ExitReason::Stop(StopReason::Halted) => {}
            ExitReason::Stop(_) => self.hyp.vcpu_stopped(self.me, vm),
            ExitReason::PsciCpuOff if vm.stopping.load(core::sync::atomic::Ordering::SeqCst) => {
                let _ = self.hyp.sys.request_power_on(vcpu);
            }
            _ => {}
        }
    }

    /// Makes every vCPU of `vm` in `fx.kick` look at its interrupts: a blocked one is woken, one
    /// running on another core is made to exit. `current` (the vCPU this core runs) refills at
    /// its next entry anyway.
    pub fn dispatch(&mut self, vm: &Vm, fx: Effects, current: Option<VcpuId>) {
        for index in fx.kick.iter() {
            if let Some(id) = vm.vcpu_id(index) {
                if Some(id) != current {
                    self.kick_vcpu(id);
                }
            }
        }
    }

    /// Wakes `vcpu` (if blocked) and, if it runs on another core, makes it exit.
    pub fn kick_vcpu(&mut self, vcpu: VcpuId) {
        let sys = &self.hyp.sys;
        match sys.wake(vcpu) {
            Some(core) if core == self.me => self.poll = true,
            Some(core) => self.hyp.kick_core(core, true),
            None => {
                let status = sys.status(vcpu);
                if status.state == VcpuState::Running && status.owner != self.me {
                    self.hyp.kick_core(status.owner, false);
                }
            }
        }
    }

    /// Starts stopping `vm` (SYSTEM_OFF, SYSTEM_RESET, a fatal fault): every other vCPU of it is
    /// woken or powered on, and stops when it next comes to run (`caller` stops with its exit).
    pub fn stop_vm(&mut self, vm: &Vm, reason: StopReason, caller: VcpuId) {
        if !vm.begin_stop(reason) {
            return;
        }
        for index in 0..vm.vcpus {
            let Some(id) = vm.vcpu_id(index) else { continue };
            if id == caller {
                continue;
            }
            self.kick_vcpu(id);
            match self.hyp.sys.request_power_on(id) {
                Ok(core) if core == self.me => self.poll = true,
                Ok(core) => self.hyp.kick_core(core, true),
                Err(_) => {}
            }
        }
    }

    /// Emits a `fault` trace event.
    pub fn fault(&mut self, vm: &Vm, vcpu: &Vcpu, fault: FaultKind) {
        let event = TraceEvent { at: timer::now(), kind: TraceKind::GuestFault { vm: vm.id, vcpu: vcpu.id, fault } };
        use vcpu_runtime::TraceSink;
        self.hyp.trace().emit(event);
    }

    /// Whether another vCPU of this core is runnable (a WFE may yield to it).
    pub fn others_runnable(&self, vcpu: VcpuId) -> bool {
        self.rt.vcpus().iter().any(|v| v.id() != vcpu && v.state() == VcpuState::Runnable)
    }

    /// Runs `vcpu` until `until`, handling its exits, and returns why it left the core.
    fn run_vcpu(&mut self, id: VcpuId, until: Instant) -> ExitReason {
        use core::sync::atomic::Ordering;
        let hyp = self.hyp;
        let vcpu = hyp.vcpu(id);
        let vm = &hyp.vms[vcpu.vm.index()];
        if vm.stopping.load(Ordering::SeqCst) {
            return ExitReason::Stop(vm.stop_reason());
        }
        if hyp.ending() {
            return ExitReason::Stop(StopReason::Halted);
        }
        let mut ctx = vcpu.ctx.lock();
        if let Some((entry, x0)) = vcpu.boot.lock().take() {
            ctx.reset(entry, x0);
        }
        vcpu.timer_deadline.store(NO_DEADLINE, Ordering::Release);
        guest::load(&ctx, vm.vttbr);
        self.fill_clean = false;
        timer::arm_hyp_timer(until);
        let reason = loop {
            self.vgic_enter(vm, vcpu);
            let kind = guest::enter(&mut ctx.regs);
            self.exits += 1;
            let syndrome = guest::syndrome();
            self.vgic_exit(vm, vcpu);
            let action = match kind {
                ExitKind::Sync => exits::handle(self, vm, vcpu, &mut ctx, syndrome),
                ExitKind::Irq | ExitKind::Fiq => self.take_irqs(until),
                ExitKind::SError => {
                    self.fault(vm, vcpu, FaultKind::Other(0x2f));
                    self.stop_vm(vm, StopReason::Fault, id);
                    Action::Exit(ExitReason::Stop(StopReason::Fault))
                }
            };
            let leaving = match action {
                Action::Exit(reason @ (ExitReason::Stop(_) | ExitReason::PsciCpuOff)) => break reason,
                Action::Exit(reason) => Some(reason),
                Action::Resume => None,
            };
            if vm.stopping.load(Ordering::SeqCst) {
                break ExitReason::Stop(vm.stop_reason());
            }
            // The run is over (every other guest stopped, or the scenario's time is up).
            if hyp.ending() || timer::now() >= hyp.end {
                break ExitReason::Stop(StopReason::Halted);
            }
            if let Some(reason) = leaving {
                break reason;
            }
            if self.poll {
                break ExitReason::Preempted;
            }
        };
        timer::disarm_hyp_timer();
        self.unload(vcpu, &mut ctx, reason);
        reason
    }

    /// Takes the vCPU off the core: saves its state, lets go of the physical timer interrupt,
    /// and notes its timer deadline for the core loop.
    fn unload(&mut self, vcpu: &Vcpu, ctx: &mut VcpuContext, reason: ExitReason) {
        guest::unload(ctx);
        if self.vtimer_active {
            // The saved vCPU's timer is disabled in the hardware now: its line is low.
            gic::deactivate(gic::PPI_VTIMER);
            self.vtimer_active = false;
        }
        let ctl = ctx.el1.cntv_ctl;
        let armed = ctl & 0b11 == 0b01;
        let deadline = match reason {
            ExitReason::Stop(_) | ExitReason::PsciCpuOff => NO_DEADLINE,
            _ if armed => timer::instant_of_ticks(ctx.el1.cntv_cval).as_nanos(),
            _ => NO_DEADLINE,
        };
        vcpu.timer_deadline.store(deadline, core::sync::atomic::Ordering::Release);
    }

    /// A physical IRQ ended the guest's run: acknowledges everything pending. The run goes back
    /// to the runtime when its time is up or another core asked this one to poll.
    fn take_irqs(&mut self, until: Instant) -> Action {
        let mut leave = false;
        while let Some(intid) = gic::ack() {
            gic::eoi(intid);
            match intid {
                gic::SGI_KICK => {
                    gic::deactivate(intid);
                    if self.hyp.cores[self.me.index()].poll.swap(false, core::sync::atomic::Ordering::AcqRel) {
                        leave = true;
                    }
                }
                gic::PPI_HYP_TIMER => {
                    timer::disarm_hyp_timer();
                    gic::deactivate(intid);
                    leave = true;
                }
                // Stays active until its line is low again (`vgic_enter`, `unload`).
                gic::PPI_VTIMER => self.vtimer_active = true,
                _ => gic::deactivate(intid),
            }
        }
        if leave || timer::now() >= until {
            Action::Exit(ExitReason::Preempted)
        } else {
            Action::Resume
        }
    }

    /// Before an entry: the timer's line into the model, the list registers from it.
    fn vgic_enter(&mut self, vm: &Vm, vcpu: &Vcpu) {
        let line = vtimer_line(guest::vtimer_ctl());
        if self.vtimer_active && !line {
            gic::deactivate(gic::PPI_VTIMER);
            self.vtimer_active = false;
        }
        // Nothing in the LRs, nothing was deliverable at the last fill, and nothing changed
        // since: the LRs stay empty (and ICH_HCR_EL2 as that fill set it).
        if self.lrs_used == 0 && self.fill_clean && line == self.timer_line && vm.vgic_epoch() == self.fill_epoch {
            return;
        }
        let mut lrs = [Lr::INVALID; MAX_LRS];
        let (n, overflow, epoch) = {
            let mut vgic = vm.vgic();
            // A private interrupt: only this vCPU can be kicked, and it is about to enter.
            let _ = vgic.set_level(gic::PPI_VTIMER, Some(vcpu.index), line);
            let n = vgic.fill_lrs(vcpu.index, self.hyp.lrs, &mut lrs);
            (n, vgic.overflow(vcpu.index, 0), vm.vgic_epoch())
        };
        for (i, lr) in lrs.iter().enumerate().take(self.hyp.lrs) {
            gic::write_lr(i, if i < n { encode_ich_lr(lr) } else { 0 });
        }
        self.lrs_used = n;
        self.fill_clean = n == 0 && !overflow;
        self.fill_epoch = epoch;
        self.timer_line = line;
        gic::set_ich_hcr(gic::ICH_HCR_EN | if overflow { gic::ICH_HCR_UIE } else { 0 });
    }

    /// After an exit: the list registers back into the model, the timer's line sampled.
    fn vgic_exit(&mut self, vm: &Vm, vcpu: &Vcpu) {
        let line = vtimer_line(guest::vtimer_ctl());
        if self.lrs_used == 0 && line == self.timer_line {
            return;
        }
        gic::set_ich_hcr(0);
        let mut lrs = [0u64; MAX_LRS];
        for (i, lr) in lrs.iter_mut().enumerate().take(self.lrs_used) {
            *lr = gic::read_lr(i);
            gic::write_lr(i, 0);
        }
        let mut fx = Effects::NONE;
        {
            let mut vgic = vm.vgic();
            for lr in &lrs[..self.lrs_used] {
                fx = fx.merge(vgic.sync_lr(vcpu.index, decode_ich_lr(*lr)));
            }
            fx = fx.merge(vgic.set_level(gic::PPI_VTIMER, Some(vcpu.index), line));
        }
        self.lrs_used = 0;
        self.fill_clean = false;
        self.timer_line = line;
        self.dispatch(vm, fx, Some(vcpu.id));
    }
}
