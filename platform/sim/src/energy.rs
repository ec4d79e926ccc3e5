//! Energy runs: the simulator driven period by period by a power policy (the `power` crate's
//! governor, the same code the hypervisor runs), with every core's time booked in the energy
//! model ([`power::Accounting`]).
//!
//! Between two governor periods the simulator runs on its own; at each period the governor reads
//! the runtime ([`power::governor::LoadView`] on the `System`) and its plan is carried out as the
//! hypervisor does: vCPU moves through the runtime's move requests, cores drained and turned
//! off, cores turned back on. Idle time is booked in the idle state the policy picks for the rest
//! the core's timers predict ([`SimObserver::idle_predicted`]), with the break-even cost of
//! entering a state deeper than WFI.

use std::fmt;

use power::governor::{idle_state, Governor, GovernorConfig};
use power::{Accounting, CoreState, EnergyModel};
use serde::Serialize;
use vcpu_runtime::scenario::{GovernorPolicy, Scenario};
use vcpu_runtime::trace::{TraceEvent, TraceKind};
use vcpu_runtime::{CoreId, Instant, Nanos, TraceSink, VcpuId, VmId};

use crate::report::Report;
use crate::{SimError, SimObserver, Simulator};

/// Books the simulated cores' time in an [`Accounting`]: busy intervals at the fastest OPP,
/// rests in the idle state the policy picks, off time.
pub struct EnergyObserver {
    acct: Accounting,
    model: EnergyModel,
    policy: GovernorPolicy,
    vm_of: Vec<VmId>,
    /// Per core: the idle state of the rest that began last.
    rest_state: Vec<usize>,
    /// Per core: the rest being booked (it may arrive in pieces), from, to, state.
    rest: Vec<Option<(Instant, Instant, usize)>>,
}

impl EnergyObserver {
    pub fn new(model: &EnergyModel, policy: GovernorPolicy, vm_of: Vec<VmId>, vms: usize) -> EnergyObserver {
        let cores = model.core_count();
        EnergyObserver {
            acct: Accounting::new(model, vm_of.len(), vms, Instant::ZERO),
            model: model.clone(),
            policy,
            vm_of,
            rest_state: vec![0; cores],
            rest: vec![None; cores],
        }
    }

    fn top_opp(&self, core: CoreId) -> usize {
        self.model.opp_count(core).saturating_sub(1)
    }

    /// Books the rest in progress on `core`, if any.
    fn flush_rest(&mut self, core: CoreId) {
        if let Some((from, to, state)) = self.rest[core.index()].take() {
            let _ = self.acct.book(core, CoreState::Idle { state }, None, from, to);
        }
    }

    /// Books whatever is still in progress; call once the run is over.
    pub fn finish(mut self) -> Accounting {
        for c in 0..self.rest.len() {
            self.flush_rest(CoreId(c as u16));
        }
        self.acct
    }
}

impl SimObserver for EnergyObserver {
    fn vcpu_ran(&mut self, core: CoreId, vcpu: VcpuId, from: Instant, to: Instant) {
        self.flush_rest(core);
        let opp = self.top_opp(core);
        let vm = self.vm_of.get(vcpu.index()).copied().unwrap_or(VmId(0));
        let _ = self.acct.book(core, CoreState::Busy { opp }, Some((vcpu, vm)), from, to);
    }

    fn core_idle(&mut self, core: CoreId, from: Instant, to: Instant) {
        match &mut self.rest[core.index()] {
            // The same rest, reported in pieces (at the governor's periods).
            Some((_, end, _)) if *end == from => *end = to,
            _ => {
                self.flush_rest(core);
                self.rest[core.index()] = Some((from, to, self.rest_state[core.index()]));
            }
        }
    }

    fn core_off(&mut self, core: CoreId, from: Instant, to: Instant) {
        self.flush_rest(core);
        let _ = self.acct.book(core, CoreState::Off, None, from, to);
    }

    fn idle_predicted(&mut self, core: CoreId, at: Instant, wake: Instant) {
        self.flush_rest(core);
        self.rest_state[core.index()] = idle_state(self.policy, core, wake.since(at), &self.model);
    }
}

/// Counts what the energy table reports of the trace: migrations and core power changes.
#[derive(Default)]
struct Counts {
    migrations: u64,
    core_off: u64,
    core_on: u64,
}

struct CountingSink<'a, T: TraceSink> {
    inner: &'a mut T,
    counts: Counts,
}

impl<T: TraceSink> TraceSink for CountingSink<'_, T> {
    fn emit(&mut self, event: TraceEvent) {
        match event.kind {
            TraceKind::VcpuMigrate { .. } => self.counts.migrations += 1,
            TraceKind::CoreState { state: vcpu_runtime::trace::CoreState::Off, .. } => self.counts.core_off += 1,
            TraceKind::CoreState { state: vcpu_runtime::trace::CoreState::Online, .. } => self.counts.core_on += 1,
            _ => {}
        }
        self.inner.emit(event);
    }
}

/// One core's line of the energy report.
#[derive(Clone, Debug, Serialize)]
pub struct CoreEnergyReport {
    pub core: u16,
    pub busy_ns: u64,
    pub idle_ns: u64,
    pub off_ns: u64,
    pub transitions: u64,
    pub energy_uj: u64,
}

/// What one energy run cost and how well it served the guests.
#[derive(Clone, Debug, Serialize)]
pub struct EnergyReport {
    pub scenario: String,
    pub policy: String,
    pub profile: String,
    pub simulated_ns: u64,
    pub energy_uj: u64,
    pub average_power_mw: f64,
    pub cores: Vec<CoreEnergyReport>,
    /// Per VM, by name.
    pub vms: Vec<(String, u64)>,
    /// Deadline misses of every periodic job.
    pub deadline_misses: u64,
    /// Deadline misses of the vCPUs with a real-time reservation.
    pub rt_misses: u64,
    pub wake_latency_max_ns: u64,
    pub wake_latency_avg_ns: u64,
    pub migrations: u64,
    pub core_off: u64,
    pub core_on: u64,
    pub transitions: u64,
}

/// An energy run: the simulator's own report and the energy report.
pub struct PowerRun {
    pub report: Report,
    pub energy: EnergyReport,
}

/// The energy model a scenario's board names, sized to it.
pub fn model_for(scenario: &Scenario) -> Result<EnergyModel, SimError> {
    EnergyModel::for_board(&scenario.board.energy_profile, scenario.board.cores)
        .map_err(|e| SimError(format!("board.energy_profile: {e}")))
}

/// The governor settings of a scenario under `policy`.
pub fn governor_config(scenario: &Scenario, policy: GovernorPolicy) -> GovernorConfig {
    let p = &scenario.policy;
    let mut config = GovernorConfig::new(policy, p.governor_period);
    config.min_move_interval = p.min_migration_interval;
    config.rt_bound_ppm = u64::from(p.rt_utilization_bound_percent) * 10_000;
    config
}

/// Simulates `scenario` under `policy` and books its energy.
pub fn run(scenario: &Scenario, policy: GovernorPolicy, trace: &mut impl TraceSink) -> Result<PowerRun, SimError> {
    let model = model_for(scenario)?;
    let config = governor_config(scenario, policy);
    let runtime = scenario.runtime_config(false);
    let cores = usize::from(scenario.board.cores);
    let mut governor = Governor::new(config, &runtime.vcpus, cores, &model).map_err(|e| SimError(e.to_string()))?;
    let mut sim = Simulator::from_scenario(scenario)?;
    let vm_of: Vec<VmId> = runtime.vcpus.iter().map(|v| v.vm).collect();
    let mut observer = EnergyObserver::new(&model, policy, vm_of, scenario.guests.len());
    let mut sink = CountingSink { inner: trace, counts: Counts::default() };
    let end = Instant::ZERO + scenario.duration;
    let mut t = Instant::ZERO;
    while t < end {
        let next = (t + config.period).min(end);
        sim.run_until(next, &mut sink, &mut observer);
        t = next;
        if t >= end {
            break;
        }
        let plan = governor.decide(sim.system(), t, &model);
        for &(vcpu, dest) in &plan.moves {
            let _ = sim.request_move_observed(vcpu, dest, &mut sink, &mut observer);
        }
        for core in plan.power_off.iter() {
            let _ = sim.take_offline_observed(core.index(), &mut sink, &mut observer);
        }
        for core in plan.power_on.iter() {
            sim.bring_online_observed(core.index(), &mut sink, &mut observer);
        }
    }
    let report = sim.report();
    let acct = observer.finish();
    let counts = sink.counts;
    let energy = energy_report(scenario, policy, &model, &acct, &report, end, counts);
    Ok(PowerRun { report, energy })
}

fn energy_report(
    scenario: &Scenario,
    policy: GovernorPolicy,
    model: &EnergyModel,
    acct: &Accounting,
    report: &Report,
    end: Instant,
    counts: Counts,
) -> EnergyReport {
    let mut cores = Vec::new();
    let mut total = 0u64;
    let mut transitions = 0u64;
    for c in 0..model.core_count() {
        let core = CoreId(c as u16);
        let sum = |states: &mut dyn Iterator<Item = CoreState>| -> u64 {
            states.map(|s| acct.residency(core, s).as_nanos()).sum()
        };
        let busy = sum(&mut (0..model.opp_count(core)).map(|opp| CoreState::Busy { opp }));
        let idle = sum(&mut (0..model.core_type(core).idle_states.len()).map(|state| CoreState::Idle { state }));
        let off = acct.residency(core, CoreState::Off).as_nanos();
        let uj = acct.core_energy(core).total().as_microjoules();
        total += uj;
        transitions += acct.transition_count(core);
        cores.push(CoreEnergyReport {
            core: c as u16,
            busy_ns: busy,
            idle_ns: idle,
            off_ns: off,
            transitions: acct.transition_count(core),
            energy_uj: uj,
        });
    }
    let vms = scenario
        .guests
        .iter()
        .enumerate()
        .map(|(i, g)| (g.name.clone(), acct.vm_energy(VmId(i as u16)).as_microjoules()))
        .collect();
    let wakeups: u64 = report.vcpus.iter().map(|v| v.wakeups).sum();
    let latency_sum: u128 =
        report.vcpus.iter().map(|v| u128::from(v.wake_latency_avg_ns) * u128::from(v.wakeups)).sum();
    let simulated = end.since(Instant::ZERO);
    EnergyReport {
        scenario: scenario.name.clone(),
        policy: policy.name().to_string(),
        profile: model.name().to_string(),
        simulated_ns: simulated.as_nanos(),
        energy_uj: total,
        average_power_mw: if simulated == Nanos::ZERO {
            0.0
        } else {
            total as f64 / (simulated.as_nanos() as f64 / 1e9) / 1000.0
        },
        cores,
        vms,
        deadline_misses: report.total_deadline_misses(),
        rt_misses: report
            .vcpus
            .iter()
            .filter(|v| scenario.guests.get(usize::from(v.vm)).is_some_and(|g| g.reservation.is_some()))
            .map(|v| v.deadline_misses)
            .sum(),
        wake_latency_max_ns: report.vcpus.iter().map(|v| v.wake_latency_max_ns).max().unwrap_or(0),
        wake_latency_avg_ns: if wakeups == 0 { 0 } else { (latency_sum / u128::from(wakeups)) as u64 },
        migrations: counts.migrations,
        core_off: counts.core_off,
        core_on: counts.core_on,
        transitions,
    }
}

impl fmt::Display for EnergyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "energy: {} under {} on {} over {}: {:.3} J ({:.1} mW average)",
            self.scenario,
            self.policy,
            self.profile,
            Nanos(self.simulated_ns),
            self.energy_uj as f64 / 1e6,
            self.average_power_mw
        )?;
        writeln!(
            f,
            "{:>5} {:>12} {:>12} {:>12} {:>11} {:>12}",
            "core", "busy ms", "idle ms", "off ms", "transitions", "energy mJ"
        )?;
        for c in &self.cores {
            writeln!(
                f,
                "{:>5} {:>12.1} {:>12.1} {:>12.1} {:>11} {:>12.1}",
                c.core,
                c.busy_ns as f64 / 1e6,
                c.idle_ns as f64 / 1e6,
                c.off_ns as f64 / 1e6,
                c.transitions,
                c.energy_uj as f64 / 1e3
            )?;
        }
        for (vm, uj) in &self.vms {
            writeln!(f, "  guest {vm}: {:.1} mJ", *uj as f64 / 1e3)?;
        }
        write!(
            f,
            "  deadline misses {} (real-time {}), wake latency avg {} max {}, migrations {}, cores off {} on {}",
            self.deadline_misses,
            self.rt_misses,
            Nanos(self.wake_latency_avg_ns),
            Nanos(self.wake_latency_max_ns),
            self.migrations,
            self.core_off,
            self.core_on
        )
    }
}
