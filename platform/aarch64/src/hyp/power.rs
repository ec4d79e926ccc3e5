//! Physical core power: the governor's period on the boot core, carrying its plans out (vCPU
//! moves, cores draining and turning themselves off with PSCI `CPU_OFF`, `CPU_ON` of cores that
//! are needed again, with retries), the WFI fallback when `CPU_OFF` is refused, and the energy
//! accounting of every core's time (docs/governor.md).
//!
//! A core's power state ([`CoreShared::power`]) moves:
//! `ON → DRAIN` (the governor asks) `→ OFF` (the core drained, gave its runtime back and is
//! calling `CPU_OFF`) `→ STARTING` (the governor's `CPU_ON` went through) `→ ON` (the core is
//! back in its loop). When `CPU_OFF` is refused the core goes `OFF → PARKED` and waits in WFI;
//! the governor turns it `PARKED → STARTING` and kicks it. A drain the runtime refuses (the last
//! core, a vCPU that cannot move) goes back to `ON`.

use core::sync::atomic::Ordering;

use crate::sync::Mutex;
use power::governor::{idle_state, Governor, GovernorConfig, Plan};
pub use power::CoreState as AcctState;
use power::{Accounting, EnergyModel};
use vcpu_runtime::{CoreId, CoreMask, CoreRuntime, Instant, Nanos, VcpuId};

use super::Hypervisor;
use crate::{println, smp};

/// On and running its loop.
pub const ON: u8 = 0;
/// Asked to drain and turn itself off.
pub const DRAIN: u8 = 1;
/// Off (or calling `CPU_OFF`).
pub const OFF: u8 = 2;
/// `CPU_OFF` was refused: waiting in WFI for the governor.
pub const PARKED: u8 = 3;
/// Being started again.
pub const STARTING: u8 = 4;

/// Whether a drained core turns itself off with PSCI `CPU_OFF` (the default) or parks in WFI as
/// when `CPU_OFF` is refused (boot argument `hv.cpu-off=wfi`: for a board whose firmware cannot
/// bring cores back, and to exercise that path on QEMU, whose PSCI never refuses).
static CPU_OFF_BY_PSCI: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(true);

/// Sets how drained cores turn off (before the cores run guests).
pub fn set_cpu_off_by_psci(psci: bool) {
    CPU_OFF_BY_PSCI.store(psci, Ordering::Relaxed);
}

/// PSCI `CPU_OFF` for the calling core, or `DENIED` without asking the firmware when the
/// hypervisor was told to park cores in WFI. Returns only on a refusal.
pub fn power_off_self() -> smccc::psci::Error {
    if CPU_OFF_BY_PSCI.load(Ordering::Relaxed) {
        smp::power_off_self::<smccc::Smc>()
    } else {
        smccc::psci::Error::Denied
    }
}

/// `hv.migrate-every=US`: every that many microseconds the boot core moves every vCPU that is on
/// to the next online core (0: never). A stress of the hand-over, for the hw-tests.
static MIGRATE_EVERY_NS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
static NEXT_MIGRATION: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Sets the forced-migration period (before the cores run guests); zero turns it off.
pub fn set_migrate_every(period: Nanos) {
    MIGRATE_EVERY_NS.store(period.as_nanos(), Ordering::Relaxed);
}

/// `CPU_ON` attempts on a core that answer `ALREADY_ON` (it has not finished turning off)
/// before the governor reports the core as stuck; it keeps retrying every period.
const CPU_ON_REPORT_AFTER: u32 = 10;

/// The governor's state, used by the boot core only.
pub struct GovernorState {
    pub governor: Governor,
    /// Periods the governor ran, and `CPU_ON` calls that had to be retried.
    pub periods: u64,
    pub cpu_on_retries: u64,
}

/// Power management shared by the cores.
pub struct Power {
    pub model: EnergyModel,
    pub config: GovernorConfig,
    pub governor: Mutex<GovernorState>,
    /// When the next period is due (ns of the counter), read without the lock on every loop.
    pub next_tick: core::sync::atomic::AtomicU64,
    /// One book per core, written by that core only (so never contended but at the end).
    pub accounts: alloc::vec::Vec<Mutex<CoreBook>>,
}

/// One core's energy book: its intervals go to `acct` back to back from `mark`.
pub struct CoreBook {
    pub acct: Accounting,
    pub mark: Instant,
    /// `CPU_OFF` refused (the core parked in WFI instead), how often.
    pub cpu_off_refused: u64,
    /// The core is off: its time from `mark` on is off time.
    pub off: bool,
    /// Per vCPU: the time this core ran it (its energy is that times the core's busy power:
    /// cores run at one OPP).
    pub vcpu_busy_ns: alloc::vec::Vec<u64>,
}

impl CoreBook {
    /// Books `[mark, to)` as `state` (busy intervals charged to `vcpu` of `vm`), and counts a
    /// transition when the state changes.
    pub fn book(&mut self, core: CoreId, state: AcctState, owner: Option<(VcpuId, vcpu_runtime::VmId)>, to: Instant) {
        let from = self.mark;
        if to < from {
            return;
        }
        // Hypervisor time with no vCPU (between runs) is booked as WFI.
        let state = match (state, owner) {
            (AcctState::Busy { .. }, None) => AcctState::Idle { state: 0 },
            _ => state,
        };
        let _ = self.acct.book(core, state, owner, from, to);
        self.mark = to;
    }

    /// [`CoreBook::book_runs`] up to `runs_end` and then a rest in idle state `idle_state` up
    /// to `to`, in one booking when both stretches are non-empty (a core's every wake-up).
    pub fn book_runs_then_rest(
        &mut self,
        core: CoreId,
        opp: usize,
        runs_end: Instant,
        idle_state: usize,
        to: Instant,
        per_vcpu: &mut [u64],
    ) {
        let rest = AcctState::Idle { state: idle_state };
        if runs_end > self.mark && to > runs_end {
            let _ = self.acct.book_two(core, AcctState::Busy { opp }, rest, self.mark, runs_end, to);
            self.mark = to;
            self.hand_in(per_vcpu);
        } else {
            self.book_runs(core, opp, runs_end, per_vcpu);
            self.book(core, rest, None, to);
        }
    }

    /// Adds each vCPU's share of the runs just booked (`per_vcpu`, which it empties).
    fn hand_in(&mut self, per_vcpu: &mut [u64]) {
        for (total, ns) in self.vcpu_busy_ns.iter_mut().zip(per_vcpu.iter_mut()) {
            *total += core::mem::take(ns);
        }
    }

    /// Books a stretch of runs, `[mark, to)` busy at `opp`, and adds each vCPU's share of it
    /// (`per_vcpu`, ns by vCPU index, which it empties). The core collects runs without a lock
    /// and hands them in here when it rests, turns off or ends the run.
    pub fn book_runs(&mut self, core: CoreId, opp: usize, to: Instant, per_vcpu: &mut [u64]) {
        if to > self.mark {
            let _ = self.acct.book(core, AcctState::Busy { opp }, None, self.mark, to);
            self.mark = to;
        }
        self.hand_in(per_vcpu);
    }
}

impl CoreBook {
    /// The core is about to turn off at `now`: what it did since its mark (draining) is booked
    /// as WFI; from here on its time is off time.
    pub fn going_off(&mut self, core: CoreId, now: Instant) {
        self.book(core, AcctState::Idle { state: 0 }, None, now);
        self.off = true;
    }

    /// `CPU_OFF` was refused: the core waits in WFI, and that is how its time is booked.
    pub fn parked_instead(&mut self) {
        self.off = false;
        self.cpu_off_refused += 1;
    }

    /// The core is back at `now`: its off (or parked) time is booked.
    pub fn back_on(&mut self, core: CoreId, now: Instant) {
        let state = if self.off { AcctState::Off } else { AcctState::Idle { state: 0 } };
        self.book(core, state, None, now);
        self.off = false;
    }
}

impl Power {
    /// Power management for `cores` cores with `model`, the runtime's vCPUs and VMs. The
    /// hypervisor has no cpufreq driver (QEMU's virt board has nothing to drive): the governor
    /// plans with every core at its top OPP (`dvfs` off), which is what the cores run at and
    /// what the energy report books.
    pub fn new(
        model: EnergyModel,
        config: GovernorConfig,
        vcpus: &[vcpu_runtime::VcpuConfig],
        vms: usize,
        cores: usize,
        now: Instant,
    ) -> Result<Power, power::governor::GovernorError> {
        let config = GovernorConfig { dvfs: false, ..config };
        let governor = Governor::new(config, vcpus, cores, &model)?;
        let accounts = (0..cores)
            .map(|_| {
                Mutex::new(CoreBook {
                    acct: Accounting::new(&model, vcpus.len(), vms, now),
                    mark: now,
                    cpu_off_refused: 0,
                    off: false,
                    vcpu_busy_ns: alloc::vec![0; vcpus.len()],
                })
            })
            .collect();
        Ok(Power {
            governor: Mutex::new(GovernorState { governor, periods: 0, cpu_on_retries: 0 }),
            next_tick: core::sync::atomic::AtomicU64::new((now + config.period).as_nanos()),
            model,
            config,
            accounts,
        })
    }

    /// Books every core's time until `now` as WFI, as hypervisor time with no vCPU is: a
    /// migration's destination waiting for its guest (its books start at its boot, and the
    /// first run would otherwise be charged the wait).
    pub fn book_wait(&self, now: Instant) {
        for (k, book) in self.accounts.iter().enumerate() {
            book.lock().book(CoreId(k as u16), AcctState::Idle { state: 0 }, None, now);
        }
    }

    /// The OPP cores run at (the hypervisor does not scale frequencies): the fastest.
    pub fn opp(&self, core: CoreId) -> usize {
        self.model.opp_count(core).saturating_sub(1)
    }

    /// The idle state a core enters for a rest predicted to last `predicted`, by the policy.
    pub fn idle_state(&self, core: CoreId, predicted: Nanos) -> usize {
        idle_state(self.config.policy, core, predicted, &self.model)
    }
}

impl Hypervisor {
    /// The boot core, at the top of its loop: runs the governor when its period is due and
    /// carries the plan out (and the forced migrations of `hv.migrate-every=`). Returns whether
    /// this core should poll its runtime (a move of one of its own vCPUs, asked of `rt`, its
    /// runtime, without a message: `CoreRuntime::request_move`).
    pub(super) fn govern(&self, rt: &mut CoreRuntime, now: Instant) -> bool {
        let poll = self.migrate_all(rt, now);
        if now.as_nanos() < self.power.next_tick.load(Ordering::Relaxed) {
            return poll;
        }
        self.power.next_tick.store((now + self.power.config.period).as_nanos(), Ordering::Relaxed);
        let mut g = self.power.governor.lock();
        g.periods += 1;
        let plan = g.governor.decide(&self.sys, now, &self.power.model);
        let moved = self.carry_out(rt, &plan, &mut g);
        drop(g);
        poll || moved
    }

    /// `hv.migrate-every=`: when due, asks every vCPU that is on (running, runnable or blocked)
    /// to move to the next online core after its owner.
    fn migrate_all(&self, rt: &mut CoreRuntime, now: Instant) -> bool {
        let every = MIGRATE_EVERY_NS.load(Ordering::Relaxed);
        if every == 0 || now.as_nanos() < NEXT_MIGRATION.load(Ordering::Relaxed) {
            return false;
        }
        NEXT_MIGRATION.store(now.as_nanos() + every, Ordering::Relaxed);
        let online = self.sys.online_cores().and(CoreMask::first(self.cores.len()));
        let mut poll = false;
        for v in 0..self.vcpus.len() {
            let vcpu = VcpuId(v as u16);
            let status = self.sys.status(vcpu);
            if !matches!(
                status.state,
                vcpu_runtime::VcpuState::Running | vcpu_runtime::VcpuState::Runnable | vcpu_runtime::VcpuState::Blocked
            ) {
                continue;
            }
            let n = self.cores.len() as u16;
            let Some(dest) = (1..n).map(|k| CoreId((status.owner.0 + k) % n)).find(|&c| online.contains(c)) else {
                continue;
            };
            if let Ok(owner) = rt.request_move(&self.sys, vcpu, dest) {
                if owner == rt.core() {
                    poll = true;
                } else {
                    self.kick_core(owner, true);
                }
            }
        }
        poll
    }

    /// The governor's next period, for the boot core's timer.
    pub(super) fn next_governor_tick(&self) -> Instant {
        let tick = self.power.next_tick.load(Ordering::Relaxed);
        match MIGRATE_EVERY_NS.load(Ordering::Relaxed) {
            0 => Instant(tick),
            _ => Instant(tick.min(NEXT_MIGRATION.load(Ordering::Relaxed))),
        }
    }

    fn carry_out(&self, rt: &mut CoreRuntime, plan: &Plan, g: &mut GovernorState) -> bool {
        let mut poll = false;
        for &(vcpu, dest) in &plan.moves {
            // Refused moves (the vCPU is in flight, the destination went away) wait for the
            // next period's plan.
            if let Ok(owner) = rt.request_move(&self.sys, vcpu, dest) {
                if owner == rt.core() {
                    poll = true;
                } else {
                    self.kick_core(owner, true);
                }
            }
        }
        for core in plan.power_off.iter() {
            let Some(shared) = self.cores.get(core.index()) else { continue };
            if core != rt.core()
                && shared.power.compare_exchange(ON, DRAIN, Ordering::AcqRel, Ordering::Acquire).is_ok()
            {
                self.kick_core_to_housekeep(core);
            }
        }
        for core in plan.power_on.iter() {
            self.power_on(core, g);
        }
        poll
    }

    /// Brings an off (or parked) core back: `CPU_ON`, retried at the next period while PSCI
    /// says the core is still on its way off.
    fn power_on(&self, core: CoreId, g: &mut GovernorState) {
        let Some(shared) = self.cores.get(core.index()) else { return };
        if shared.power.compare_exchange(PARKED, STARTING, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.kick_core_to_housekeep(core);
            return;
        }
        if shared.power.compare_exchange(OFF, STARTING, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return;
        }
        match smp::restart_secondary::<smccc::Smc>(core, shared.mpidr) {
            Ok(()) => shared.cpu_on_failures.store(0, Ordering::Relaxed),
            Err(e) => {
                // Not off yet (ALREADY_ON), or PSCI refused: try again next period. A core that
                // turned to PARKED meanwhile is taken care of then too.
                let _ = shared.power.compare_exchange(STARTING, OFF, Ordering::AcqRel, Ordering::Acquire);
                g.cpu_on_retries += 1;
                let failures = shared.cpu_on_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if failures == CPU_ON_REPORT_AFTER {
                    println!("power: core {}: CPU_ON failing ({e}), retrying every period", core.0);
                }
            }
        }
    }

    /// Prints the energy report: per core its residency in each state, transitions and
    /// energy, then per VM and in total (docs/governor.md, *Report*).
    pub(super) fn energy_report(&self, end: Instant) {
        let power = &self.power;
        let mut total_uj = 0u64;
        let mut vm_uj = alloc::vec![0u64; self.vms.len()];
        println!(
            "energy: profile {} governor {} period {} ms, {} cores",
            power.model.name(),
            power.config.policy,
            power.config.period.as_millis(),
            self.cores.len()
        );
        for (k, book) in power.accounts.iter().enumerate() {
            let core = CoreId(k as u16);
            let mut b = book.lock();
            // Close the last interval at the end of the run: off for a core that is off, else
            // the time since its last run or rest, in the hypervisor's loop, as WFI.
            if b.mark < end {
                let state = if b.off { AcctState::Off } else { AcctState::Idle { state: 0 } };
                b.book(core, state, None, end);
            }
            let acct = &b.acct;
            let busy: Nanos = (0..power.model.opp_count(core))
                .map(|o| acct.residency(core, AcctState::Busy { opp: o }))
                .fold(Nanos::ZERO, |a, r| a + r);
            let idle: Nanos = (0..power.model.core_type(core).idle_states.len())
                .map(|s| acct.residency(core, AcctState::Idle { state: s }))
                .fold(Nanos::ZERO, |a, r| a + r);
            let off = acct.residency(core, AcctState::Off);
            let energy = acct.core_energy(core).total();
            let uj = energy.as_microjoules();
            total_uj += uj;
            println!(
                "energy core={} busy_ns={} idle_ns={} off_ns={} sum_ns={} run_ns={} transitions={} cpu_off_refused={} energy_uj={}",
                k,
                busy.as_nanos(),
                idle.as_nanos(),
                off.as_nanos(),
                acct.residency_sum(core).as_nanos(),
                end.since(acct.start()).as_nanos(),
                acct.transition_count(core),
                b.cpu_off_refused,
                uj
            );
            let busy_uw = u64::from(power.model.core_type(core).opps.get(power.opp(core)).map_or(0, |o| o.power_uw));
            for (v, &ns) in b.vcpu_busy_ns.iter().enumerate() {
                if let Some(vcpu) = self.vcpus.get(v) {
                    vm_uj[vcpu.vm.index()] += ::power::Energy::from_power(busy_uw, Nanos(ns)).as_microjoules();
                }
            }
        }
        for (vm, uj) in self.vms.iter().zip(&vm_uj) {
            println!("energy vm={} energy_uj={}", vm.name, uj);
        }
        let g = power.governor.lock();
        println!(
            "energy total_uj={} governor_periods={} cpu_on_retries={} online_at_end={:#x}",
            total_uj,
            g.periods,
            g.cpu_on_retries,
            self.sys.online_cores().and(CoreMask::first(self.cores.len())).0
        );
    }
}
