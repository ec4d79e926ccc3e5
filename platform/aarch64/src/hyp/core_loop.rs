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

use vcpu_runtime::tlb::{CoreTlb, Waits};
use vcpu_runtime::trace::{FaultKind, StopReason, TraceEvent, TraceKind};
use vcpu_runtime::{CoreId, CoreRuntime, Decision, Event, ExitReason, Instant, Signal, VcpuId, VcpuState};
use vdev::vgic::{decode_ich_lr, encode_ich_lr, Effects, Lr};

use super::exits::{self, Action};
use super::instructions::ProfileMark;
use super::power;
use super::vm::{Vcpu, Vm, NO_DEADLINE};
use super::Hypervisor;
use crate::guest::{self, ExitKind, GuestRegs, LrMemo, VcpuContext};
use crate::{fail, gic, smp, stage2, timer};
use core::sync::atomic::AtomicU64;
use spin::MutexGuard;

/// One core's private state in the loop.
pub(super) struct Core<'h> {
    pub hyp: &'h Hypervisor,
    pub me: CoreId,
    pub rt: CoreRuntime,
    /// The vCPU whose run ended last and is still loaded (its context locked, its state in the
    /// hardware), if it may run again: when the runtime picks it again right away, it is
    /// entered without saving and restoring its state; when anything else comes first, it is
    /// put away ([`Core::put_away`]). Its timer deadline was noted when its run ended, as for
    /// a vCPU that was put away.
    kept: Option<(VcpuId, MutexGuard<'h, VcpuContext>)>,
    /// The loaded vCPU's vGIC state flags ([`VgicFlags`]).
    vgic: VgicFlags,
    /// List registers filled at the last entry. The others are empty (0 or invalid): every
    /// list register is cleared or found consumed at the exit after it was filled, so all are
    /// empty before each fill.
    lrs_used: usize,
    /// The INTID loaded into each used list register.
    lr_intid: [u32; vdev::vgic::MAX_LRS],
    /// The LRs hold exactly what the model gave since the last exit, which `sgi_at_exit` took
    /// whole (LR 0 loaded with a self-IPI, or nothing touched for an IPI to others) and which
    /// enters again at once: the next entry need not look at the model.
    lrs_fresh: bool,
    /// The loaded vCPU's interrupt epoch (`Vcpu::vgic_epoch`) at its last fill
    /// ([`VgicFlags::FILL_CLEAN`]).
    fill_epoch: u64,
    /// Something this core's runtime must decide about happened (a local wake-up or CPU_ON):
    /// the running vCPU goes back to the runtime at its next exit.
    pub poll: bool,
    /// Guest exits taken on this core that came back from `guest::enter` (see
    /// [`Core::exit_count`] for all of them).
    pub exits: u64,
    /// A running `HV_BENCH` window: operation, iterations, exits at its start.
    pub bench: Option<(u64, u64, u64)>,
    /// Energy booking without a lock on the switch path: the end of what was accounted last,
    /// the end of the last run when runs wait to be handed in, and each vCPU's run time since.
    book_mark: Instant,
    runs_end: Option<Instant>,
    vcpu_busy: alloc::vec::Vec<u64>,
    /// The earliest virtual-timer deadline among this core's blocked and runnable vCPUs
    /// ([`Core::next_timer`]), and whose it is, while `timers_known`: kept up to date as runs
    /// end (the only time a deadline of this core's vCPUs is set) and recomputed from the
    /// vCPUs when it may have moved later (its vCPU was picked to run, deadlines fired) or the
    /// core's vCPUs changed (`CoreRuntime::membership` is no longer `timers_membership`). A
    /// deadline cleared by another core (an offloaded guest coming back) leaves it early, which
    /// costs one early look.
    timers_min: u64,
    timers_holder: Option<VcpuId>,
    timers_known: bool,
    timers_membership: u64,
    /// When [`Core::housekeeping`] is due next: the run's end, and on core 0 the governor's
    /// period, forced migrations and the live-migration step, the earliest as it left them; a
    /// poll kick makes it due at once.
    housekeeping_at: Instant,
    /// `hv.count-instructions`: the class of the last exit and the EL2 count then, for the
    /// exit profile (`super::instructions`).
    profile: Option<ProfileMark>,
    /// The list register holding the virtual timer interrupt mapped to the physical PPI (HW
    /// bit), while it is in one.
    vtimer_hw_lr: Option<usize>,
    /// The VM registers (`VTTBR_EL2`, `CNTVOFF_EL2`, `HCR_EL2`) as this core last loaded them
    /// for a vCPU, so that a switch between two vCPUs of one VM does not write them again.
    vm_loaded: Option<guest::VmRegs>,
    /// This core's part in carrying out guests' trapped TLB maintenance (`vcpu_runtime::tlb`).
    tlb: CoreTlb,
    /// The core's operating point, for its energy book: the hypervisor sets none and runs at
    /// the top one (`Power::opp`), so it is looked up once, not at every wake-up.
    opp: usize,
}

/// Sets this core up for guests and runs its loop; when the governor has it drain, it gives its
/// runtime back and turns itself off (docs/governor.md). A core that PSCI refuses to turn off
/// waits in WFI until the governor wants it again, and goes round once more; one that did turn
/// off comes back through the secondary entry, here, with a fresh stack.
pub(super) fn run(hyp: &'static Hypervisor, me: CoreId) -> ! {
    use core::sync::atomic::Ordering;
    let Some(shared) = hyp.cores.get(me.index()) else { smp::park() };
    loop {
        if let Err(e) = gic::init_this_core(shared.mpidr) {
            fail!("core {}: {e}", me.0);
        }
        guest::init_this_core();
        if let Err(e) = stage2::init_this_core() {
            fail!("core {}: {e}", me.0);
        }
        super::instructions::start(me);
        let Some(rt) = hyp.take_runtime(me) else { smp::park() };
        let mut core = Core {
            hyp,
            me,
            rt,
            kept: None,
            vgic: VgicFlags::NONE,
            lrs_used: 0,
            lr_intid: [0; vdev::vgic::MAX_LRS],
            lrs_fresh: false,
            fill_epoch: 0,
            poll: false,
            exits: 0,
            bench: None,
            book_mark: hyp.power.accounts.get(me.index()).map_or(hyp.start, |b| b.lock().mark),
            runs_end: None,
            vcpu_busy: alloc::vec![0; hyp.vcpus.len()],
            timers_min: NO_DEADLINE,
            timers_holder: None,
            timers_known: false,
            timers_membership: 0,
            housekeeping_at: Instant::ZERO,
            vm_loaded: None,
            tlb: CoreTlb::new(hyp.vms.len()),
            profile: super::instructions::enabled().then_some(ProfileMark::START),
            vtimer_hw_lr: None,
            opp: hyp.power.opp(me),
        };
        if shared.power.load(Ordering::Acquire) == power::STARTING {
            let now = timer::now();
            if let Some(book) = hyp.power.accounts.get(me.index()) {
                book.lock().back_on(me, now);
            }
            core.book_mark = now;
            if let Err(e) = core.rt.handle(&hyp.sys, Event::CoreOnline, now, &mut hyp.trace()) {
                fail!("core {}: back on: {e}", me.0);
            }
            shared.power.store(power::ON, Ordering::Release);
        }
        core.main_loop();
        // Drained: every vCPU was handed over. The runtime waits in the hypervisor for the core
        // to come back.
        let now = timer::now();
        core.hand_in_runs();
        if let Some(book) = hyp.power.accounts.get(me.index()) {
            book.lock().going_off(me, now);
        }
        hyp.give_back_runtime(me, core.rt);
        if let Err(e) = gic::disable_this_core(shared.mpidr) {
            fail!("core {}: {e}", me.0);
        }
        super::instructions::sample(me);
        shared.power.store(power::OFF, Ordering::Release);
        let error = power::power_off_self();
        // Still here: PSCI refused. Park in WFI until the governor wants the core again.
        if let Some(book) = hyp.power.accounts.get(me.index()) {
            book.lock().parked_instead();
        }
        crate::println!("power: core {}: PSCI CPU_OFF refused ({error}): parking in WFI", me.0);
        {
            use vcpu_runtime::TraceSink;
            let kind = TraceKind::CoreState { core: me, state: vcpu_runtime::trace::CoreState::Idle };
            hyp.trace().emit(TraceEvent { at: timer::now(), kind });
        }
        // Awake again, so that the governor's kick ends the WFI.
        if let Err(e) = gic::init_this_core(shared.mpidr) {
            fail!("core {}: {e}", me.0);
        }
        if shared.power.compare_exchange(power::OFF, power::PARKED, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            while shared.power.load(Ordering::Acquire) == power::PARKED && !hyp.ending() {
                aarch64_cpu::asm::wfi();
            }
        }
        if hyp.ending() {
            smp::park();
        }
        shared.power.store(power::STARTING, Ordering::Release);
    }
}

/// The loaded vCPU's virtual-timer line: enabled, not masked, and the counter at or past the
/// compare value, in the guest's virtual count (`CNTVOFF_EL2` is loaded). Computed from the counter rather than read from
/// `CNTV_CTL_EL0.ISTATUS`, which QEMU's TCG updates late: the model's level, raised by
/// `fire_timers` from the same comparison, must not be seen low just after, or it would never be
/// lowered again (an interrupt storm once the guest disables its timer).
fn vtimer_line() -> bool {
    let ctl = guest::vtimer_ctl();
    ctl & 0b11 == 0b01 && timer::virtual_counter() >= guest::vtimer_cval()
}

/// The loaded vCPU's virtual-timer deadline (ns, [`NO_DEADLINE`] if its timer cannot fire),
/// from the live timer of `vm`'s vCPU: noted when its run ends, as `guest::save` would leave it.
#[inline(always)]
fn loaded_deadline(vm: &Vm) -> u64 {
    use core::sync::atomic::Ordering;
    if guest::vtimer_ctl() & 0b11 == 0b01 {
        // In the guest's virtual count: physical = virtual + CNTVOFF.
        let cntvoff = vm.cntvoff.load(Ordering::Relaxed);
        timer::instant_of_ticks(guest::vtimer_cval().wrapping_add(cntvoff)).as_nanos()
    } else {
        NO_DEADLINE
    }
}

impl Core<'_> {
    /// Runs the core until it has drained and its runtime decides it powers off.
    fn main_loop(&mut self) {
        loop {
            let now = timer::now();
            if now >= self.housekeeping_at {
                self.housekeeping(now);
            }
            self.fire_timers(now);
            self.poll = false;
            let decision = self.rt.next(&self.hyp.sys, now, &mut self.hyp.trace());
            match decision {
                Decision::Run { vcpu, until } => {
                    self.send_kicks();
                    // Its deadline is not among the others' any more.
                    if self.timers_holder == Some(vcpu) {
                        self.timers_known = false;
                    }
                    let until = until.min(self.next_timer()).min(self.housekeeping_at);
                    // A yield may have switched to another vCPU in the run (`Core::switch_on_yield`).
                    let (vcpu, reason, now) = self.run_vcpu(vcpu, until);
                    let event = Event::Exit { vcpu, reason };
                    if let Err(e) = self.rt.handle(&self.hyp.sys, event, now, &mut self.hyp.trace()) {
                        fail!("core {}: {e}", self.me.0);
                    }
                    if !matches!(reason, ExitReason::Stop(_) | ExitReason::PsciCpuOff) {
                        // Blocked or runnable again, with the deadline its run left.
                        let deadline = self.hyp.vcpu(vcpu).timer_deadline.load(core::sync::atomic::Ordering::Acquire);
                        self.note_deadline(vcpu, deadline);
                    }
                    self.after_exit(vcpu, reason);
                    self.send_kicks();
                }
                // The vCPU kept loaded is saved before the kicks: a vCPU this decision handed
                // to another core is in memory before that core is told to take it (which
                // would otherwise wait for its context's lock). `idle` sends them.
                Decision::Idle { until } => {
                    self.put_away();
                    self.idle(until.unwrap_or(Instant::NEVER))
                }
                Decision::PowerOff => {
                    self.put_away();
                    self.send_kicks();
                    return;
                }
            }
        }
    }

    /// What the loop looks at only when `housekeeping_at` is due (`now`): the end of the run
    /// (all cores leave their loops), core 0's governor period (and forced migrations) and
    /// live-migration step, and a governor's request that this core drain. Then when it is due
    /// next: the end of the run, or core 0's next period or step. Every other core sets the
    /// run's end or a drain request with a poll kick to this core ([`Core::polled`]), and this
    /// core's own end of the run comes with a vCPU's stop ([`Core::after_exit`]).
    #[inline(never)]
    fn housekeeping(&mut self, now: Instant) {
        use core::sync::atomic::Ordering;
        if self.hyp.ending() || now >= self.hyp.end {
            self.put_away();
            self.hand_in_runs();
            self.hyp.begin_ending(self.me);
            self.hyp.finish(self.me, &self.rt);
        }
        let mut next = self.hyp.end;
        if self.me.index() == 0 {
            if self.hyp.govern(&mut self.rt, now) {
                self.poll = true;
            }
            if super::live::step(self, now) {
                self.poll = true;
            }
            next = next.min(self.hyp.next_governor_tick()).min(super::live::next_step());
        }
        let shared = &self.hyp.cores[self.me.index()];
        if shared.power.load(Ordering::Acquire) == power::DRAIN {
            // The vCPU kept loaded goes back to memory before anyone else may take it.
            self.put_away();
            match self.rt.handle(&self.hyp.sys, Event::CoreGoingOffline, now, &mut self.hyp.trace()) {
                // The next decision is PowerOff.
                Ok(()) => {}
                Err(e) => {
                    crate::println!("power: core {} stays on: {e}", self.me.0);
                    shared.power.store(power::ON, Ordering::Release);
                }
            }
        }
        self.housekeeping_at = next;
    }

    /// Another core asked this one for its housekeeping (a kick with its `housekeep` flag,
    /// `Hypervisor::kick_core_to_housekeep`): the run may be ending or the governor may want the
    /// core drained or started, and on core 0 a guest's mark may have brought the
    /// live-migration step forward (`live::on_mark`): the housekeeping is due at once.
    fn polled(&mut self) {
        self.housekeeping_at = Instant::ZERO;
    }

    /// IPIs to the cores the runtime says must look at their mail or requests.
    fn send_kicks(&mut self) {
        let kicks = self.rt.take_kicks();
        if kicks.is_empty() {
            return;
        }
        for core in kicks.iter() {
            if core != self.me {
                self.hyp.kick_core(core, true);
            }
        }
    }

    /// The earliest virtual-timer deadline among this core's blocked and runnable vCPUs.
    fn next_timer(&mut self) -> Instant {
        if !self.timers_known || self.timers_membership != self.rt.membership() {
            self.scan_timers();
        }
        Instant(self.timers_min)
    }

    /// [`Core::next_timer`] during a run: the runtime's vCPUs are those of the loop's last
    /// decision, before which the loop took the earliest deadline, so they need no comparison.
    #[inline(always)]
    fn next_timer_in_run(&mut self) -> Instant {
        debug_assert!(!self.timers_known || self.timers_membership == self.rt.membership());
        if !self.timers_known {
            self.scan_timers();
        }
        Instant(self.timers_min)
    }

    /// Finds the earliest timer deadline of this core's blocked and runnable vCPUs.
    fn scan_timers(&mut self) {
        let (mut min, mut holder) = (NO_DEADLINE, None);
        for v in self.rt.vcpus() {
            if matches!(v.state(), VcpuState::Blocked | VcpuState::Runnable) {
                let deadline = self.hyp.vcpu(v.id()).timer_deadline.load(core::sync::atomic::Ordering::Acquire);
                if deadline < min {
                    (min, holder) = (deadline, Some(v.id()));
                }
            }
        }
        self.timers_min = min;
        self.timers_holder = holder;
        self.timers_known = true;
        self.timers_membership = self.rt.membership();
    }

    /// The run of `vcpu` ended and left its timer deadline at `deadline`: the earliest one
    /// follows.
    fn note_deadline(&mut self, vcpu: VcpuId, deadline: u64) {
        if self.timers_known && deadline < self.timers_min {
            self.timers_min = deadline;
            self.timers_holder = Some(vcpu);
        }
    }

    /// Raises the virtual-timer line of every vCPU of this core whose deadline has passed (which
    /// wakes it if the interrupt is enabled).
    fn fire_timers(&mut self, now: Instant) {
        use core::sync::atomic::Ordering;
        if self.next_timer() > now {
            return;
        }
        // Some have passed: the earliest left is found again below.
        self.timers_known = false;
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
        let wake = until.min(self.next_timer()).min(self.housekeeping_at);
        if wake != Instant::NEVER {
            timer::arm_hyp_timer(wake);
        }
        // What the core did since its last booking (deciding) is booked with the rest that
        // follows, in the idle state the policy picks for the rest predicted (until the timer).
        let start = timer::now();
        let state = self.hyp.power.idle_state(self.me, wake.since(start));
        // Last before waiting: the cores the decision concerns (a hand-over's destination).
        self.send_kicks();
        if !self.poll {
            // An every-core `HV_BENCH` window counts only while the core is awake.
            if super::bench::every_core_open() {
                super::bench::pause(self);
            }
            let counting = super::instructions::enabled();
            if counting {
                crate::pmu::pause_run_counters();
            }
            aarch64_cpu::asm::wfi();
            if counting {
                crate::pmu::resume_run_counters();
            }
            if super::bench::every_core_open() {
                super::bench::resume(self);
            }
        }
        super::instructions::sample(self.me);
        let end = timer::now();
        if let Some(book) = self.hyp.power.accounts.get(self.me.index()) {
            let mut book = book.lock();
            match self.runs_end.take() {
                Some(runs_end) => {
                    book.book_runs_then_rest(self.me, self.opp, runs_end, state, end, &mut self.vcpu_busy);
                }
                None => book.book(self.me, power::AcctState::Idle { state }, None, end),
            }
        }
        self.book_mark = end;
        // The timer's line is level: drop it before acknowledging, or it fires again at once.
        timer::disarm_hyp_timer();
        while let Some(intid) = gic::ack() {
            gic::eoi(intid);
            gic::deactivate(intid);
            if intid == gic::SGI_KICK {
                let shared = &self.hyp.cores[self.me.index()];
                shared.poll.store(false, core::sync::atomic::Ordering::Release);
                if shared.housekeep.swap(false, core::sync::atomic::Ordering::AcqRel) {
                    self.polled();
                }
            }
        }
    }

    /// After the runtime took the exit: a stopped vCPU is counted; a vCPU of a stopping VM that
    /// just parked is asked to come back on, so that it stops too.
    fn after_exit(&mut self, vcpu: VcpuId, reason: ExitReason) {
        match reason {
            // Halted: the run is ending anyway; the VM did not stop by itself. The core's own
            // end comes with its housekeeping, now (the end may have been set on this core,
            // before the run's time was up: `hv.checkpoint-on`).
            ExitReason::Stop(StopReason::Halted) => self.housekeeping_at = Instant::ZERO,
            ExitReason::Stop(_) => {
                // It may have been the last: the run's end is looked at next.
                self.hyp.vcpu_stopped(self.me, self.hyp.vm_of(vcpu));
                self.housekeeping_at = Instant::ZERO;
            }
            ExitReason::PsciCpuOff if self.hyp.vm_of(vcpu).stopping.load(core::sync::atomic::Ordering::SeqCst) => {
                let _ = self.hyp.sys.request_power_on(vcpu);
            }
            ExitReason::PsciCpuOff if self.hyp.vm_of(vcpu).is_resetting() => self.finish_reset(self.hyp.vm_of(vcpu)),
            _ => {}
        }
    }

    /// Makes every vCPU of `vm` in `fx.kick` look at its interrupts: its interrupt epoch moves
    /// (so its next entry fills its list registers), then a blocked one is woken and one running
    /// on another core is made to exit. `current` (the vCPU this core runs) refills at its next
    /// entry anyway.
    ///
    /// The model kicks every vCPU that gains an interrupt to load (its property tests check it),
    /// but the one whose list registers it just took back, which refills anyway: so a vCPU
    /// whose epoch did not move since its last fill has nothing new. The epoch moves before the
    /// wake-up or the IPI, so a vCPU that read the old value is made to look again.
    #[inline]
    pub fn dispatch(&mut self, vm: &Vm, fx: Effects, current: Option<VcpuId>) {
        for index in fx.kick.iter() {
            if let Some(id) = vm.vcpu_id(index) {
                self.hyp.vcpu(id).vgic_epoch.fetch_add(1, core::sync::atomic::Ordering::AcqRel);
                if Some(id) != current {
                    self.kick_vcpu(id);
                }
            }
        }
    }

    /// Wakes `vcpu` (if blocked) and, if it runs on another core, makes it exit.
    pub fn kick_vcpu(&mut self, vcpu: VcpuId) {
        match self.hyp.sys.signal(vcpu) {
            Signal::Woken(core) if core == self.me => self.poll = true,
            Signal::Woken(core) => self.hyp.kick_core(core, true),
            Signal::Running(core) if core != self.me => self.hyp.kick_core(core, false),
            Signal::Running(_) | Signal::Other => {}
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

    /// The first step of a `SYSTEM_RESET` of `vm` by `caller`: every other vCPU is woken or
    /// made to exit, and turns itself off when it next comes to run (`run_vcpu`).
    pub fn quiesce_vm(&mut self, vm: &Vm, caller: VcpuId) {
        for index in 0..vm.vcpus {
            match vm.vcpu_id(index) {
                Some(id) if id != caller => self.kick_vcpu(id),
                _ => {}
            }
        }
    }

    /// A vCPU of a resetting VM turned off. If it was the last one on, this core loads the
    /// image (and data blob) again, resets the VM's devices and starts vCPU 0 at the entry point, as at boot;
    /// the guest starts its other vCPUs with `CPU_ON` again.
    fn finish_reset(&mut self, vm: &Vm) {
        use super::vm::{RESET_LOADING, RESET_QUIESCING};
        use core::sync::atomic::Ordering;
        let sys = &self.hyp.sys;
        let all_off = (0..vm.vcpus)
            .filter_map(|i| vm.vcpu_id(i))
            .all(|id| sys.affinity_info(id) == Some(vcpu_runtime::AffinityState::Off));
        if !all_off
            || vm
                .resetting
                .compare_exchange(RESET_QUIESCING, RESET_LOADING, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
        {
            return;
        }
        if let Err(e) = vm.reload() {
            fail!("guest {}: reset: {e}", vm.name);
        }
        for index in 0..vm.vcpus {
            let Some(id) = vm.vcpu_id(index) else { continue };
            let vcpu = self.hyp.vcpu(id);
            vcpu.timer_deadline.store(NO_DEADLINE, Ordering::Release);
            *vcpu.boot.lock() = None;
            // A fill made before the reset must not be trusted after it.
            vcpu.vgic_epoch.fetch_add(1, Ordering::AcqRel);
        }
        stage2::forget_vm(vm.vttbr);
        crate::println!("guest {}: reset, restarting at {:#x}", vm.name, vm.entry_ipa);
        vm.end_reset();
        let Some(boot_vcpu) = vm.vcpu_id(0) else { return };
        let mut slot = self.hyp.vcpu(boot_vcpu).boot.lock();
        match sys.request_power_on(boot_vcpu) {
            Ok(owner) => {
                *slot = Some((vm.entry_ipa, vm.boot_x0));
                drop(slot);
                if owner == self.me {
                    self.poll = true;
                } else {
                    self.hyp.kick_core(owner, true);
                }
            }
            Err(e) => fail!("guest {}: reset: cannot start vCPU 0: {e:?}", vm.name),
        }
    }

    /// Emits a `fault` trace event.
    pub fn fault(&mut self, vm: &Vm, vcpu: &Vcpu, fault: FaultKind) {
        let event = TraceEvent { at: timer::now(), kind: TraceKind::GuestFault { vm: vm.id, vcpu: vcpu.id, fault } };
        use vcpu_runtime::TraceSink;
        self.hyp.trace().emit(event);
    }

    /// Guest exits taken on this core, those the world switch answered itself included.
    pub fn exit_count(&self) -> u64 {
        self.exits + guest::fast_exits(self.me.index())
    }

    /// Whether another vCPU of this core is runnable (a WFE may yield to it).
    pub fn others_runnable(&self, vcpu: VcpuId) -> bool {
        self.rt.vcpus().iter().any(|v| v.id() != vcpu && v.state() == VcpuState::Runnable)
    }

    /// Runs `id` until `until`, handling its exits, and returns the vCPU that left the core,
    /// why and when: `id`, or the one a yield switched to without leaving this function
    /// ([`Core::switch_on_yield`]), which then went through the same checks and load as `id`.
    fn run_vcpu(&mut self, mut id: VcpuId, mut until: Instant) -> (VcpuId, ExitReason, Instant) {
        use core::sync::atomic::Ordering;
        let hyp = self.hyp;
        // Whether `id` is of the VM whose registers are loaded: after a yield's switch to a peer
        // of the same VM (below).
        let mut same_vm = false;
        let mut vcpu = hyp.vcpu(id);
        let mut vm = &hyp.vms[vcpu.vm.index()];
        'vcpu: loop {
            // Every entry is checked after the runtime made the vCPU `Running` (a yield's peer
            // too): a core that stops, resets or pauses the VM sets its flag first and then
            // signals each vCPU, which kicks this core only if it sees the vCPU running here.
            if vm.held() {
                if vm.stopping.load(Ordering::SeqCst) {
                    self.put_away();
                    return (id, ExitReason::Stop(vm.stop_reason()), timer::now());
                }
                if hyp.ending() {
                    self.put_away();
                    return (id, ExitReason::Stop(StopReason::Halted), timer::now());
                }
                if vm.is_resetting() {
                    // Off until the reset starts the guest again (a CPU_ON of its old life is
                    // void).
                    self.put_away();
                    vcpu.boot.lock().take();
                    return (id, ExitReason::PsciCpuOff, timer::now());
                }
                if vm.paused.load(Ordering::Acquire) {
                    // Live migration holds the VM: blocked until it is resumed (which wakes it).
                    self.put_away();
                    return (id, ExitReason::Wfi, timer::now());
                }
            }
            let mut ctx = match self.kept.take() {
                // Picked again right away: still loaded, as its last run left it (a runnable vCPU
                // has no CPU_ON waiting in its boot slot).
                Some((kept, ctx)) if kept == id => ctx,
                kept => {
                    // Another vCPU kept loaded is saved first; the guest settings of `HCR_EL2` and
                    // the stage-2 registers stay for this one (a switch).
                    let switch = kept.is_some();
                    if let Some((_, ctx)) = kept {
                        self.save_vcpu(ctx);
                    }
                    let mut ctx = vcpu.ctx.lock();
                    if let Some((entry, x0)) = vcpu.boot.take() {
                        ctx.reset(entry, x0);
                    }
                    if same_vm {
                        // Its VM's registers are loaded, unchanged while one of its vCPUs runs
                        // here (a restore changes them with the VM paused, every vCPU out).
                        guest::load_of_same_vm(&ctx);
                    } else {
                        let regs = vm.regs();
                        if switch {
                            guest::load_after_save(&ctx, (Some(regs) != self.vm_loaded).then_some(regs));
                        } else {
                            guest::load(&ctx, regs);
                        }
                        self.vm_loaded = Some(regs);
                    }
                    let memo = ctx.lr_memo;
                    // Whatever was put away before let go of the timer's PPI (`vtimer_released`);
                    // the model's timer level is synced at the first entry.
                    debug_assert!(!self.vgic.has(VgicFlags::VTIMER_ACTIVE));
                    self.vgic = VgicFlags(memo.flags);
                    self.fill_epoch = memo.epoch;
                    if self.vgic.has(VgicFlags::FILL_CLEAN) {
                        // As that fill left it (no overflow); `unload` turned the interface off.
                        gic::set_ich_hcr(gic::ICH_HCR_EN);
                    }
                    ctx
                }
            };
            if ctx.tlbi_waits.is_some() && !self.finish_tlbi(vm, &mut ctx) {
                // The cores its TLB maintenance waits for have still not left the guest: the core
                // goes to the runtime (another vCPU, a real-time job, say), and this one, kept
                // loaded, tries again when it is picked. Its timer deadline is the one its last run
                // left.
                let end = self.end_run(id);
                self.kept = Some((id, ctx));
                return (id, ExitReason::Preempted, end);
            }
            vcpu.timer_deadline.store(NO_DEADLINE, Ordering::Release);
            timer::arm_hyp_timer_before_eret(until);
            let reason = loop {
                self.vgic_enter(vm, vcpu);
                if let Some(mark) = self.profile {
                    mark.enter(self.me);
                }
                if vm.trap_tlbi {
                    self.tlb_enter(vm);
                }
                let kind = guest::enter(&mut ctx.regs);
                if vm.trap_tlbi {
                    self.tlb_exit();
                }
                self.exits += 1;
                let esr = guest::esr();
                if self.profile.is_some() {
                    let class = super::instructions::exit_class(kind == ExitKind::Sync, esr);
                    self.profile = Some(ProfileMark::exit(class));
                }
                // An IPI: the whole exit here when it can be (`sgi_at_exit`).
                let sgi =
                    if kind == ExitKind::Sync { self.sgi_at_exit(vm, vcpu, &mut ctx.regs, esr) } else { SgiExit::No };
                let action = if sgi == SgiExit::Sent {
                    continue;
                } else if sgi == SgiExit::SentPoll {
                    // The runtime looks first (the IPI woke a vCPU of this core): no entry now.
                    self.lrs_fresh = false;
                    Action::Resume
                } else {
                    self.vgic_exit(vm, vcpu);
                    match kind {
                        ExitKind::Sync if exits::take_yield(esr, &mut ctx.regs) => Action::Exit(ExitReason::Yield),
                        ExitKind::Sync => exits::handle(self, vm, vcpu, &mut ctx, esr),
                        ExitKind::Irq | ExitKind::Fiq => match self.take_irqs(until) {
                            Action::Exit(ExitReason::Preempted) if !self.poll => self.renew(&mut until),
                            action => action,
                        },
                        ExitKind::SError => {
                            self.fault(vm, vcpu, FaultKind::Other(0x2f));
                            self.stop_vm(vm, StopReason::Fault, id);
                            Action::Exit(ExitReason::Stop(StopReason::Fault))
                        }
                    }
                };
                // A yield needs none of the checks below: the yielder stays runnable, and a change
                // to its VM is seen when it is next picked (its entry's checks), as for any
                // runnable vCPU, and the run's end at the loop's housekeeping; the peer a yield
                // switches to is checked at its entry above.
                if action == Action::Exit(ExitReason::Yield) {
                    if let Some((next, next_until)) = self.switch_on_yield(vcpu, vm, timer::ticks()) {
                        // This run ends as a yield's does below: kept loaded, its deadline
                        // noted; at the top, once the peer's entry has passed its VM's test,
                        // the yielder is saved and the peer loaded.
                        self.kept = Some((id, ctx));
                        let peer = hyp.vcpu(next);
                        same_vm = peer.vm == vcpu.vm;
                        if !same_vm {
                            vm = &hyp.vms[peer.vm.index()];
                        }
                        (id, vcpu, until) = (next, peer, next_until);
                        continue 'vcpu;
                    }
                    break ExitReason::Yield;
                }
                let leaving = match action {
                    Action::Exit(reason @ (ExitReason::Stop(_) | ExitReason::PsciCpuOff)) => break reason,
                    Action::Exit(reason) => Some(reason),
                    Action::Resume => None,
                };
                // A trap the guest resumes from changes nothing the checks below look at: the VM's
                // stop, reset and pause, the end of the run (every one set with a kick IPI to the
                // cores running the vCPUs concerned, or by this core's exit handlers, which then
                // leave or poll) and the run's time (the EL2 timer) each come with a physical IRQ,
                // which brings the vCPU straight back once it resumes, and that exit checks.
                if leaving.is_none() && kind == ExitKind::Sync && !self.poll {
                    continue;
                }
                if vm.held() {
                    if vm.stopping.load(Ordering::SeqCst) {
                        break ExitReason::Stop(vm.stop_reason());
                    }
                    if vm.is_resetting() {
                        break ExitReason::PsciCpuOff;
                    }
                    if vm.paused.load(Ordering::Acquire) {
                        break ExitReason::Wfi;
                    }
                    // The run is over (every other guest stopped).
                    if hyp.ending() {
                        break ExitReason::Stop(StopReason::Halted);
                    }
                }
                // The scenario's time is up. (`end_ticks` is `end` in counter ticks: the same
                // test without a conversion.)
                if timer::ticks() >= hyp.end_ticks {
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
            let end = self.end_run(id);
            match reason {
                // Off the core for good (or until a CPU_ON): put away now, no deadline.
                ExitReason::Stop(_) | ExitReason::PsciCpuOff => {
                    self.put_away_vcpu(ctx);
                    vcpu.timer_deadline.store(NO_DEADLINE, Ordering::Release);
                }
                // It may be picked again at once: kept loaded until the runtime has decided. Its
                // deadline is noted now, from the live timer, as `put_away` would from the saved.
                _ => {
                    vcpu.timer_deadline.store(loaded_deadline(vm), Ordering::Release);
                    self.kept = Some((id, ctx));
                }
            }
            return (id, reason, end);
        }
    }

    /// A yield of `vcpu` (of `vm`, loaded) at its exit, the counter read at `ticks`: when the
    /// runtime would take it and pick a share peer with nothing else to look at first
    /// ([`CoreRuntime::switch_on_yield`]), and the core loop would do nothing else between the
    /// two runs (no poll asked for, no housekeeping or virtual-timer deadline due), the exit
    /// and the decision are taken here:
    /// the run ends as [`Core::run_vcpu`] ends a yield's and the loop takes it (its deadline
    /// noted among the others), and the peer and the `until` the loop would give it are
    /// returned. `None`, with nothing done, otherwise.
    #[inline(always)]
    fn switch_on_yield(&mut self, vcpu: &Vcpu, vm: &Vm, ticks: u64) -> Option<(VcpuId, Instant)> {
        use core::sync::atomic::Ordering;
        if self.poll {
            return None;
        }
        let now = timer::instant_of_ticks(ticks);
        if now >= self.housekeeping_at || now >= self.next_timer_in_run() {
            return None;
        }
        let id = vcpu.id;
        let (next, until) = self.rt.switch_on_yield(&self.hyp.sys, id, now, &mut self.hyp.trace())?;
        // The EL2 timer stays armed: the peer's entry arms it for a later time (`until` is
        // after `now`), which drops its line if it had fired.
        self.end_run_at(id, now);
        let deadline = loaded_deadline(vm);
        vcpu.timer_deadline.store(deadline, Ordering::Release);
        // The earliest deadline, known since the test above, with the yielder's; found again
        // if it was the peer's, which is not among the others' any more.
        self.note_deadline(id, deadline);
        let timers = if self.timers_holder == Some(next) {
            self.timers_known = false;
            self.next_timer()
        } else {
            Instant(self.timers_min)
        };
        Some((next, until.min(timers).min(self.housekeeping_at)))
    }

    /// The run of `id` ends now, which is returned: the run (and the deciding before it) is
    /// its vCPU's time, booked when the core rests.
    #[inline(always)]
    fn end_run(&mut self, id: VcpuId) -> Instant {
        self.end_run_at(id, timer::now())
    }

    /// [`Core::end_run`] at `end`, read already.
    #[inline(always)]
    fn end_run_at(&mut self, id: VcpuId, end: Instant) -> Instant {
        if let Some(t) = self.vcpu_busy.get_mut(id.index()) {
            *t += end.since(self.book_mark).as_nanos();
        }
        self.book_mark = end;
        self.runs_end = Some(end);
        end
    }

    /// Before an entry into a VM that traps its TLB maintenance: announces it, and catches up
    /// with the VM's instructions carried out on other cores since this one last did
    /// (`CoreTlb::enter`).
    #[inline(never)]
    fn tlb_enter(&mut self, vm: &Vm) {
        let Some(shared) = self.hyp.cores.get(self.me.index()) else { return };
        if self.tlb.enter(&shared.guest_run, vm.id.index(), &vm.tlb) {
            guest::tlb_catch_up();
        }
    }

    /// After the exit from a VM that traps its TLB maintenance: out of its guest.
    #[inline(never)]
    fn tlb_exit(&mut self) {
        if let Some(shared) = self.hyp.cores.get(self.me.index()) {
            self.tlb.exit(&shared.guest_run);
        }
    }

    /// A guest's trapped TLB maintenance instruction (`HCR_EL2.TTLB`): `op` is carried out on
    /// this core at once; every other core catches up (drops all the VM's stage-1 entries)
    /// before it next enters the VM's guest, and those in the VM's guest now are kicked out of
    /// it and waited for, so that no vCPU of the VM uses a stale translation once the guest's
    /// instruction has completed (`vcpu_runtime::tlb`). No core is stopped that does not run
    /// the VM: a shareable `TLBI` would stop them all under QEMU (docs/linux-guests.md, *Guest
    /// TLB maintenance*).
    ///
    /// The wait here is bounded ([`set_tlbi_spin`], `hv.tlbi-spin-us`): a core that has not
    /// left the guest by then is off its host CPU, and this one would hold its own, interrupts
    /// masked, with nothing else run. The waits still open are returned: they go into the
    /// vCPU's context, the vCPU leaves the core (`Preempted`), so that the core can run another
    /// one (a real-time guest's job, say), and it finishes the wait before it next enters
    /// ([`Core::finish_tlbi`]), on whichever core, again spinning at most that long and else
    /// leaving the core again. Until then the instruction has not completed for the guest,
    /// which does not run. No core spins here longer than the bound.
    pub fn guest_tlbi(&mut self, vm: &Vm, op: vdev::tlbi::TlbiOp, xt: u64) -> Option<Waits> {
        guest::tlbi_local(op, xt);
        let cores = &self.hyp.cores;
        let waits = self.tlb.carried_out(self.me.index(), vm.id.index(), &vm.tlb, cores.iter().map(|c| &c.guest_run));
        if waits.is_empty() {
            return None;
        }
        for wait in waits.iter() {
            if let Some(c) = cores.get(wait.core) {
                gic::send_sgi_value(c.kick_sgi);
            }
        }
        let start = timer::counter();
        let done = self.spin_for_tlbi(&waits, start);
        self.note_tlbi_wait(vm, start);
        if done {
            None
        } else {
            vm.tlbi_deferred.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
            Some(waits)
        }
    }

    /// Spins until every core of `waits` has left the guest run it was named in, or for
    /// [`TLBI_SPIN_NS`] from counter `start`; whether they all left. Each leaves at its kick (a
    /// guest cannot hold it off): a few instructions of its own, unless the host deschedules it.
    fn spin_for_tlbi(&self, waits: &Waits, start: u64) -> bool {
        let spin = TLBI_SPIN_NS.load(core::sync::atomic::Ordering::Relaxed);
        let bound = start.saturating_add(timer::nanos_to_ticks(spin, timer::frequency_hz()));
        loop {
            if self.tlbi_waits_done(waits) {
                return true;
            }
            if timer::counter() >= bound {
                return false;
            }
            crate::cpu::yield_hint();
        }
    }

    /// Before a vCPU whose last trapped TLB maintenance instruction left waits open
    /// ([`Core::guest_tlbi`]) enters again: they are waited for (by now the cores concerned
    /// have mostly left), as long as the first wait (`hv.tlbi-spin-us`); whether they are
    /// over. Those still open stay in the context, and the vCPU does not enter.
    /// (Out of line: rare, and its waits are a large value.)
    #[inline(never)]
    fn finish_tlbi(&mut self, vm: &Vm, ctx: &mut VcpuContext) -> bool {
        let Some(waits) = ctx.tlbi_waits.take() else { return true };
        let start = timer::counter();
        let done = self.spin_for_tlbi(&waits, start);
        self.note_tlbi_wait(vm, start);
        if !done {
            ctx.tlbi_waits = Some(waits);
        }
        done
    }

    /// Whether every core of `waits` has left the guest run it was named in.
    fn tlbi_waits_done(&self, waits: &Waits) -> bool {
        waits.iter().all(|w| self.hyp.cores.get(w.core).is_none_or(|c| c.guest_run.left(w.run)))
    }

    /// Books a wait of a trapped TLB maintenance instruction that started at counter `start`.
    fn note_tlbi_wait(&self, vm: &Vm, start: u64) {
        let waited = timer::counter().wrapping_sub(start);
        vm.tlbi_wait_ticks.fetch_add(waited, core::sync::atomic::Ordering::Relaxed);
        vm.tlbi_wait_ticks_max.fetch_max(waited, core::sync::atomic::Ordering::Relaxed);
        // A long one held this core (interrupts masked, nothing else run): said when it ends,
        // with when it started on the trace's clock, so that a late job elsewhere can be matched
        // with it (docs/linux-guests.md, *Real-time misses and the host*).
        let waited_ns = timer::ticks_to_nanos(waited, timer::frequency_hz());
        if waited_ns >= LONG_TLBI_WAIT_NS {
            let from = timer::instant_of_ticks(start).as_nanos();
            crate::println!(
                "tlbi wait: core {} waited {} us from {from} ns for vm {}'s guest to be left elsewhere",
                self.me.0,
                waited_ns / 1000,
                vm.name
            );
        }
    }

    /// Hands the runs collected since the last rest in to the core's energy book.
    fn hand_in_runs(&mut self) {
        if let (Some(runs_end), Some(book)) = (self.runs_end.take(), self.hyp.power.accounts.get(self.me.index())) {
            book.lock().book_runs(self.me, self.opp, runs_end, &mut self.vcpu_busy);
        }
    }

    /// [`Core::put_away`], for the migration, which reads vCPU contexts on this core.
    pub fn put_away_kept(&mut self) {
        self.put_away();
    }

    /// Puts away the vCPU kept loaded since its last run, if any (before anything else runs
    /// or the core idles).
    fn put_away(&mut self) {
        if let Some((_, ctx)) = self.kept.take() {
            self.put_away_vcpu(ctx);
        }
    }

    /// Takes a loaded vCPU off the core: saves its state, lets go of the physical timer
    /// interrupt, and unlocks its context. (Its timer deadline is noted when its run ends.)
    fn put_away_vcpu(&mut self, mut ctx: MutexGuard<'_, VcpuContext>) {
        // The last exit emptied the list registers (`vgic_exit`).
        ctx.lr_memo = self.lr_memo();
        guest::unload(&mut ctx);
        self.vtimer_released();
    }

    /// [`Core::put_away_vcpu`] when another vCPU is loaded right after: `HCR_EL2` and the
    /// virtual CPU interface stay on (`guest::save`), the next load sets them for its vCPU.
    fn save_vcpu(&mut self, mut ctx: MutexGuard<'_, VcpuContext>) {
        ctx.lr_memo = self.lr_memo();
        guest::save(&mut ctx);
        self.vtimer_released();
    }

    /// What the loaded vCPU's last fill left, kept with it while it is not loaded.
    fn lr_memo(&self) -> LrMemo {
        LrMemo { flags: self.vgic.0 & VgicFlags::MEMO, epoch: self.fill_epoch }
    }

    /// The vCPU just saved has its virtual timer disabled in the hardware: the physical PPI 27
    /// left active for it is deactivated.
    fn vtimer_released(&mut self) {
        if self.vgic.has(VgicFlags::VTIMER_ACTIVE) {
            // The saved vCPU's timer is disabled in the hardware now: its line is low.
            gic::deactivate(gic::PPI_VTIMER);
            self.vgic.set(VgicFlags::VTIMER_ACTIVE, false);
        }
    }

    /// A physical IRQ ended the guest's run: acknowledges everything pending. The run goes back
    /// to the runtime when its time is up or another core asked this one to poll.
    fn take_irqs(&mut self, until: Instant) -> Action {
        let mut leave = false;
        while let Some(intid) = gic::ack() {
            gic::eoi(intid);
            if let Some(mark) = &mut self.profile {
                mark.irq(intid);
            }
            match intid {
                gic::SGI_KICK => {
                    gic::deactivate(intid);
                    let shared = &self.hyp.cores[self.me.index()];
                    if shared.poll.swap(false, core::sync::atomic::Ordering::AcqRel) {
                        leave = true;
                    }
                    if shared.housekeep.swap(false, core::sync::atomic::Ordering::AcqRel) {
                        self.polled();
                        leave = true;
                    }
                }
                gic::PPI_HYP_TIMER => {
                    timer::disarm_hyp_timer();
                    gic::deactivate(intid);
                    leave = true;
                }
                // Stays active until its line is low again (`vgic_enter`, `unload`).
                gic::PPI_VTIMER => self.vgic.set(VgicFlags::VTIMER_ACTIVE, true),
                _ => gic::deactivate(intid),
            }
        }
        if leave || timer::now() >= until {
            Action::Exit(ExitReason::Preempted)
        } else {
            Action::Resume
        }
    }

    /// The run's time is up and nothing else asked for the core: when no housekeeping or timer
    /// deadline is due and the runtime would pick this vCPU again for a fresh slice
    /// (`CoreRuntime::renew`), its next run starts here, without leaving the guest's loop;
    /// otherwise the run ends (`Preempted`).
    #[inline(never)]
    fn renew(&mut self, until: &mut Instant) -> Action {
        let now = timer::now();
        if now >= self.housekeeping_at || now >= self.next_timer() {
            return Action::Exit(ExitReason::Preempted);
        }
        match self.rt.renew(&self.hyp.sys, now) {
            Some(end) => {
                *until = end.min(self.next_timer()).min(self.housekeeping_at);
                timer::arm_hyp_timer(*until);
                Action::Resume
            }
            None => Action::Exit(ExitReason::Preempted),
        }
    }

    /// Before an entry: the timer's line into the model, the list registers from it.
    fn vgic_enter(&mut self, vm: &Vm, vcpu: &Vcpu) {
        // The exit just now was an IPI taken whole (`sgi_at_exit`), which found the timer's
        // line as the model has it, its physical interrupt not held active, and the vCPU's
        // epoch where the last fill left it (and did not move it itself). What changed since
        // comes with a physical interrupt once the guest runs, which brings it back: a rise of
        // the line as the timer's PPI, and a bump of the epoch by another core with its kick
        // (`Core::dispatch`: the vCPU is running here).
        if self.lrs_fresh {
            self.lrs_fresh = false;
            return;
        }
        let epoch = &vcpu.vgic_epoch;
        let line = vtimer_line();
        if self.vgic.has(VgicFlags::VTIMER_ACTIVE) && !line {
            gic::deactivate(gic::PPI_VTIMER);
            self.vgic.set(VgicFlags::VTIMER_ACTIVE, false);
        }
        // Nothing in the LRs, nothing was deliverable at the last fill, and nothing new for
        // this vCPU since (its epoch): the LRs stay empty (and ICH_HCR_EL2 as that fill set it).
        if self.lrs_used == 0
            && self.vgic.has(VgicFlags::FILL_CLEAN)
            && line == self.vgic.has(VgicFlags::TIMER_LINE)
            && epoch.load(core::sync::atomic::Ordering::Acquire) == self.fill_epoch
        {
            return;
        }
        // Filled a few at a time (the model hands out the best first, so the order is the same
        // as in one call); only the filled ones are written, the others are empty already.
        let mut chunk = [Lr::INVALID; 4];
        // Whether an LR was loaded with a pending interrupt (NPIE below).
        let mut any_pending = false;
        let (n, overflow, epoch) = {
            let mut vgic = vm.vgic();
            // A private interrupt: only this vCPU can be kicked, and it is about to enter.
            if !self.vgic.has(VgicFlags::TIMER_SYNCED) || line != self.vgic.has(VgicFlags::TIMER_LINE) {
                let _ = vgic.set_level(gic::PPI_VTIMER, Some(vcpu.index), line);
            }
            let mut n = 0;
            // Whether the model may have more than the list registers took.
            let mut more = true;
            while n < self.hyp.lrs {
                let asked = chunk.len().min(self.hyp.lrs - n);
                let got = vgic.fill_lrs(vcpu.index, asked, &mut chunk);
                for (i, lr) in chunk[..got].iter().enumerate() {
                    if lr.intid == gic::PPI_VTIMER && self.vgic.has(VgicFlags::VTIMER_ACTIVE) {
                        // The physical PPI is held active for this vCPU: mapped to the virtual
                        // one (the HW bit), the guest's deactivation ends it too, without the
                        // EOI maintenance interrupt a level interrupt otherwise needs.
                        gic::write_lr(n + i, encode_ich_lr(&Lr { hw: Some(gic::PPI_VTIMER), ..*lr }));
                        self.vtimer_hw_lr = Some(n + i);
                    } else {
                        gic::write_lr(n + i, encode_ich_lr(lr));
                    }
                    self.lr_intid[n + i] = lr.intid;
                    any_pending |= lr.state.pending();
                }
                n += got;
                if got < asked {
                    // It handed out fewer than asked for: nothing is left behind.
                    more = false;
                    break;
                }
            }
            // Read under the lock: a change this fill did not see is made after it, and its
            // epoch bump comes later still.
            (n, more && vgic.overflow(vcpu.index, 0), epoch.load(core::sync::atomic::Ordering::Acquire))
        };
        self.lrs_used = n;
        let mut flags = self.vgic.0 & VgicFlags::VTIMER_ACTIVE;
        if n == 0 && !overflow {
            flags |= VgicFlags::FILL_CLEAN;
        }
        if !overflow {
            flags |= VgicFlags::NOTHING_WAITING;
        }
        if line {
            flags |= VgicFlags::TIMER_LINE;
        }
        self.vgic = VgicFlags(flags | VgicFlags::TIMER_SYNCED);
        self.fill_epoch = epoch;
        gic::set_ich_hcr(gic::ICH_HCR_EN | maintenance(overflow, any_pending));
    }

    /// After an exit: the list registers back into the model, the timer's line sampled. (The
    /// common cases inline: nothing in the LRs and the line as it was, or every LR consumed.)
    #[inline(always)]
    fn vgic_exit(&mut self, vm: &Vm, vcpu: &Vcpu) {
        if let Some(i) = self.vtimer_hw_lr.take() {
            // Empty: the guest deactivated the virtual timer interrupt, and with it the
            // physical one.
            if gic::ich_elrsr() & (1 << i) != 0 {
                self.vgic.set(VgicFlags::VTIMER_ACTIVE, false);
            }
        }
        let line = vtimer_line();
        if line == self.vgic.has(VgicFlags::TIMER_LINE) && (self.lrs_used == 0 || self.retire_consumed_lrs(vm, vcpu)) {
            return;
        }
        self.sync_lrs(vm, vcpu, line);
    }

    /// [`Core::vgic_exit`]'s general case: every used LR synced into the model, the timer's
    /// `line` set.
    #[inline(never)]
    fn sync_lrs(&mut self, vm: &Vm, vcpu: &Vcpu, line: bool) {
        gic::set_ich_hcr(0);
        let mut fx = Effects::NONE;
        {
            let mut vgic = vm.vgic();
            for i in 0..self.lrs_used {
                let lr = gic::read_lr(i);
                gic::write_lr(i, 0);
                fx = fx.merge(vgic.sync_lr(vcpu.index, decode_ich_lr(lr)));
            }
            if !self.vgic.has(VgicFlags::TIMER_SYNCED) || line != self.vgic.has(VgicFlags::TIMER_LINE) {
                fx = fx.merge(vgic.set_level(gic::PPI_VTIMER, Some(vcpu.index), line));
            }
        }
        self.lrs_used = 0;
        self.vgic.set(VgicFlags::FILL_CLEAN, false);
        self.vgic.set(VgicFlags::TIMER_LINE, line);
        self.vgic.set(VgicFlags::TIMER_SYNCED, true);
        self.dispatch(vm, fx, Some(vcpu.id));
    }

    /// The common exit after an interrupt was taken: every used list register is empty
    /// (`ICH_ELRSR_EL2`), the guest took and ended what was in them. When the model confirms
    /// each was a plain edge interrupt with nothing new since (`Vgic::retire_consumed`),
    /// that is the whole sync; and if the last fill left nothing behind, nothing waits now
    /// either, so the next entry needs no fill while the epoch holds. Returns false, having
    /// changed nothing the general sync does not redo, when it cannot.
    fn retire_consumed_lrs(&mut self, vm: &Vm, vcpu: &Vcpu) -> bool {
        let used = (1u64 << self.lrs_used) - 1;
        if self.lrs_used == 0 || gic::ich_elrsr() & used != used {
            return false;
        }
        let mut vgic = vm.vgic();
        // All or none: a refusal leaves the model as it was for the general sync.
        let n = self.lrs_used;
        let mut retired = 0;
        while retired < n && vgic.retire_consumed(vcpu.index, self.lr_intid[retired]) {
            retired += 1;
        }
        if retired < n {
            self.sync_lrs_from(vm, vcpu, vgic, retired);
            return true;
        }
        drop(vgic);
        if !self.vgic.has(VgicFlags::NOTHING_WAITING) {
            // The fill left interrupts behind and asked for a maintenance interrupt, whose
            // condition (no valid LR) now holds: turn it off before this core acknowledges
            // the physical PPI, or it would be asserted again at once. The next entry refills
            // and asks again.
            gic::set_ich_hcr(0);
        }
        self.lrs_used = 0;
        self.vgic.set(VgicFlags::FILL_CLEAN, self.vgic.has(VgicFlags::NOTHING_WAITING));
        true
    }

    /// [`Core::retire_consumed_lrs`] when the model refused to retire the used LR `first`:
    /// that one and the rest are synced the general way, under the same lock `vgic` (the empty
    /// LRs read as invalid).
    #[inline(never)]
    fn sync_lrs_from(&mut self, vm: &Vm, vcpu: &Vcpu, mut vgic: MutexGuard<'_, vdev::vgic::Vgic>, first: usize) {
        let n = self.lrs_used;
        let mut fx = Effects::NONE;
        for i in first..n {
            let lr = gic::read_lr(i);
            fx = fx.merge(vgic.sync_lr(vcpu.index, decode_ich_lr(lr)));
        }
        drop(vgic);
        gic::set_ich_hcr(0);
        for i in 0..n {
            gic::write_lr(i, 0);
        }
        self.lrs_used = 0;
        self.vgic.set(VgicFlags::FILL_CLEAN, false);
        self.dispatch(vm, fx, Some(vcpu.id));
    }

    /// A trapped `ICC_SGI1R_EL1` write (syndrome `esr`), at the exit, before `vgic_exit`: when
    /// nothing waits for the vCPU's list registers (the last fill left nothing behind, the
    /// epoch and the timer's line are where it left them, the timer's physical interrupt is not
    /// held active), that is the whole exit, done where `vgic_exit`, the exit decode and
    /// `vgic_enter` would each have looked at the LRs; PC + 4. Returns [`SgiExit::No`], having
    /// changed nothing, when the general path must do it.
    ///
    /// - An SGI to the vCPU alone, when its LRs are empty or hold only one interrupt the guest
    ///   has taken and ended: straight into LR 0 under one lock, the consumed one retired in
    ///   the same step; no kick (the vCPU is here), no fill at the entry.
    /// - Any other, when its LRs are empty: sent, and its targets woken or kicked; the entry
    ///   skips the model unless the SGI named the sender too.
    ///
    /// What changes after that comes as a physical interrupt once the guest runs (`vgic_enter`).
    #[inline(always)]
    fn sgi_at_exit(&mut self, vm: &Vm, vcpu: &Vcpu, regs: &mut GuestRegs, esr: u64) -> SgiExit {
        let Some(value) = exits::sgi1r_write(esr, regs) else { return SgiExit::No };
        // (`poll` is never set at a guest's exit: the loop goes back to the runtime before
        // entering a guest with it set.)
        debug_assert!(!self.poll);
        let epoch = &vcpu.vgic_epoch;
        // Nothing waiting, the timer's line synced and as the model has it, its PPI not held.
        let ready = VgicFlags::NOTHING_WAITING | VgicFlags::TIMER_SYNCED;
        let line = if vtimer_line() { VgicFlags::TIMER_LINE } else { 0 };
        let tested = ready | VgicFlags::TIMER_LINE | VgicFlags::VTIMER_ACTIVE;
        if self.vgic.0 & tested != ready | line || epoch.load(core::sync::atomic::Ordering::Acquire) != self.fill_epoch
        {
            return SgiExit::No;
        }
        if let Some(intid) = exits::sgi_to_self_only(value, vcpu) {
            // (A GICv3 CPU interface has at least one LR.)
            let lr = match self.lrs_used {
                0 if self.vgic.has(VgicFlags::FILL_CLEAN) => vm.vgic().send_sgi_to_self_direct(vcpu.index, intid),
                1 if gic::ich_elrsr() & 1 != 0 => {
                    vm.vgic().retire_and_send_sgi_to_self(vcpu.index, self.lr_intid[0], intid)
                }
                _ => None,
            };
            let Some(lr) = lr else { return SgiExit::No };
            gic::write_lr(0, encode_ich_lr(&lr));
            self.lr_intid[0] = intid;
            self.lrs_used = 1;
            self.vgic.set(VgicFlags::FILL_CLEAN, false);
            self.lrs_fresh = true;
            regs.pc += 4;
            SgiExit::Sent
        } else {
            if self.lrs_used != 0 || !self.vgic.has(VgicFlags::FILL_CLEAN) {
                return SgiExit::No;
            }
            let fx = vm.vgic().send_sgi(vcpu.index, value);
            // Named too, it refills at the entry (`dispatch` bumps its epoch).
            self.lrs_fresh = !fx.kick.contains(vcpu.index);
            self.dispatch(vm, fx, Some(vcpu.id));
            regs.pc += 4;
            if self.poll {
                SgiExit::SentPoll
            } else {
                SgiExit::Sent
            }
        }
    }
}

/// A wait of a trapped guest TLB maintenance instruction for other cores that is said on the
/// console (`Core::guest_tlbi`).
const LONG_TLBI_WAIT_NS: u64 = 1_000_000;

/// How long a trapped guest TLB maintenance instruction waits for other cores before its vCPU
/// leaves the core, and again at each of its next entries until they have left
/// (`Core::guest_tlbi`, `Core::finish_tlbi`). Waits that complete take tens of microseconds
/// under QEMU; one that does not within this is the host's.
static TLBI_SPIN_NS: AtomicU64 = AtomicU64::new(200_000);

/// Sets [`TLBI_SPIN_NS`] (`hv.tlbi-spin-us`; 0: no spinning, the vCPU leaves the core until the
/// other cores have left the guest).
pub fn set_tlbi_spin(nanos: u64) {
    TLBI_SPIN_NS.store(nanos, core::sync::atomic::Ordering::Relaxed);
}

/// A core's flags about its loaded vCPU's list registers and timer interrupt, in one byte so
/// that the IPI's test at the exit ([`Core::sgi_at_exit`]) is one load and compare.
#[derive(Clone, Copy)]
struct VgicFlags(u8);

impl VgicFlags {
    const NONE: VgicFlags = VgicFlags(0);
    /// The physical PPI 27 was acknowledged and left active for the loaded vCPU.
    const VTIMER_ACTIVE: u8 = 1 << 0;
    /// The last fill (or direct load) left nothing behind in the model for the loaded vCPU:
    /// every interrupt that wanted an LR got one.
    const NOTHING_WAITING: u8 = 1 << 1;
    /// The loaded vCPU's last fill found nothing to deliver (no LR used, no overflow), at its
    /// interrupt epoch `Core::fill_epoch`, with its timer's line at [`VgicFlags::TIMER_LINE`]:
    /// while all of that holds and its LRs are empty, an entry need not look at the model.
    /// Kept with the vCPU (`VcpuContext::lr_memo`) while it is not loaded.
    const FILL_CLEAN: u8 = 1 << 2;
    /// The timer's line as the model last had it from this core.
    const TIMER_LINE: u8 = 1 << 3;
    /// The model's level of the loaded vCPU's timer interrupt is [`VgicFlags::TIMER_LINE`]
    /// (only this core's glue drives it while the vCPU is loaded): set once the glue has set it
    /// since the load (the timer's deadline may have raised it while the vCPU was not loaded).
    const TIMER_SYNCED: u8 = 1 << 4;
    /// What is kept with a vCPU that is not loaded (`LrMemo::flags`).
    const MEMO: u8 = VgicFlags::FILL_CLEAN | VgicFlags::TIMER_LINE;

    fn has(self, flag: u8) -> bool {
        self.0 & flag != 0
    }

    fn set(&mut self, flag: u8, on: bool) {
        self.0 = if on { self.0 | flag } else { self.0 & !flag };
    }
}

/// What [`Core::sgi_at_exit`] did.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SgiExit {
    /// Nothing: the general path handles the exit.
    No,
    /// The SGI is sent: the guest goes on.
    Sent,
    /// The SGI is sent and woke a vCPU of this core: the runtime looks first.
    SentPoll,
}

/// The maintenance interrupts an entry asks for (`ICH_HCR_EL2`) when interrupts were left
/// behind (`overflow`): UIE (at most one LR still valid) always, and NPIE (no LR pending any
/// more) when the fill loaded a pending one, so the rest come as soon as the guest has
/// acknowledged what it was given, even while the LRs still hold active interrupts. Without a
/// pending LR NPIE would fire at once, and again after every refill: it is left off.
fn maintenance(overflow: bool, any_pending: bool) -> u64 {
    match (overflow, any_pending) {
        (false, _) => 0,
        (true, false) => gic::ICH_HCR_UIE,
        (true, true) => gic::ICH_HCR_UIE | gic::ICH_HCR_NPIE,
    }
}
