//! Energy runs: the simulator driven period by period by a power policy (the `power` crate's
//! governor, the same code the hypervisor runs), with every core's time booked in the energy
//! model ([`power::Accounting`]).
//!
//! Between two governor periods the simulator runs on its own; at each period the governor reads
//! the runtime ([`power::governor::LoadView`] on the `System`) and its plan is carried out as the
//! hypervisor does: vCPU moves through the runtime's move requests, cores drained and turned
//! off, cores turned back on, and, as a cpufreq driver would, each core set to its operating
//! point ([`Simulator::set_core_capacity`]: work takes longer at a slower one). Busy time is
//! booked at the operating point it ran at; idle time in the idle state the policy picks for the
//! rest the core's timers predict ([`SimObserver::idle_predicted`]), with the break-even cost of
//! entering a state deeper than WFI; clusters from their cores' timelines
//! ([`Accounting::with_clusters`]).

use std::fmt;

use power::governor::{idle_state, Governor, GovernorConfig};
use power::{Accounting, CoreState, EnergyModel};
use serde::Serialize;
use vcpu_runtime::scenario::{GovernorPolicy, Scenario};
use vcpu_runtime::trace::{TraceEvent, TraceKind};
use vcpu_runtime::{CoreId, Instant, Nanos, TraceSink, VcpuId, VmId};

use crate::report::Report;
use crate::{SimError, SimObserver, Simulator};

/// Books the simulated cores' time in an [`Accounting`]: busy intervals at the core's current
/// OPP, rests in the idle state the policy picks, off time, and the clusters.
pub struct EnergyObserver {
    acct: Accounting,
    model: EnergyModel,
    policy: GovernorPolicy,
    vm_of: Vec<VmId>,
    /// Per core: the OPP it runs at.
    opp: Vec<usize>,
    /// Per core: the idle state of the rest that began last.
    rest_state: Vec<usize>,
    /// Per core: the rest being booked (it may arrive in pieces), from, to, state.
    rest: Vec<Option<(Instant, Instant, usize)>>,
    /// Per core: the off time being booked (it arrives in pieces, one per governor period).
    off: Vec<Option<(Instant, Instant)>>,
}

impl EnergyObserver {
    pub fn new(model: &EnergyModel, policy: GovernorPolicy, vm_of: Vec<VmId>, vms: usize) -> EnergyObserver {
        let cores = model.core_count();
        EnergyObserver {
            acct: Accounting::with_clusters(model, vm_of.len(), vms, Instant::ZERO),
            model: model.clone(),
            policy,
            vm_of,
            opp: (0..cores).map(|c| model.top_opp(CoreId(c as u16))).collect(),
            rest_state: vec![0; cores],
            rest: vec![None; cores],
            off: vec![None; cores],
        }
    }

    /// The OPP `core` runs at from now on (what ran before is booked at the previous one).
    pub fn set_opp(&mut self, core: CoreId, opp: usize) {
        self.opp[core.index()] = opp;
    }

    /// The OPP `core` runs at.
    pub fn opp(&self, core: CoreId) -> usize {
        self.opp[core.index()]
    }

    /// Books the rest or off time in progress on `core`, if any: each is one entry into its
    /// state, however many pieces it was reported in.
    fn flush_rest(&mut self, core: CoreId) {
        if let Some((from, to, state)) = self.rest[core.index()].take() {
            let _ = self.acct.book(core, CoreState::Idle { state }, None, from, to);
        }
        if let Some((from, to)) = self.off[core.index()].take() {
            let _ = self.acct.book(core, CoreState::Off, None, from, to);
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
        let opp = self.opp[core.index()];
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
        match &mut self.off[core.index()] {
            // The same off time, reported in pieces (at the governor's periods).
            Some((_, end)) if *end == from => *end = to,
            _ => {
                self.flush_rest(core);
                self.off[core.index()] = Some((from, to));
            }
        }
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
    /// Busy time at each OPP, slowest first.
    pub busy_ns_by_opp: Vec<u64>,
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
    /// The cores' idle and off time (break-even costs included), all together.
    pub idle_uj: u64,
    /// The clusters' shared logic (L2, snoop control), all together.
    pub clusters_uj: u64,
    /// Per VM, by name.
    pub vms: Vec<(String, u64)>,
    /// Work that became due and work still due at the end (ns at full speed): a policy that
    /// leaves a backlog did less work, and its energy is not comparable.
    pub demand_ns: u64,
    pub backlog_ns: u64,
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

/// Simulates `scenario` under `policy` and books its energy, on a platform that sets the
/// operating points the governor plans (DVFS).
pub fn run(scenario: &Scenario, policy: GovernorPolicy, trace: &mut impl TraceSink) -> Result<PowerRun, SimError> {
    run_on(scenario, policy, true, trace)
}

/// [`run`] on a platform without DVFS: every core at its fastest operating point, as the
/// hypervisor runs on QEMU (docs/governor.md), for comparing the two.
pub fn run_fixed_speed(
    scenario: &Scenario,
    policy: GovernorPolicy,
    trace: &mut impl TraceSink,
) -> Result<PowerRun, SimError> {
    run_on(scenario, policy, false, trace)
}

fn run_on(
    scenario: &Scenario,
    policy: GovernorPolicy,
    dvfs: bool,
    trace: &mut impl TraceSink,
) -> Result<PowerRun, SimError> {
    let model = model_for(scenario)?;
    let mut config = governor_config(scenario, policy);
    config.dvfs = dvfs;
    let runtime = scenario.runtime_config(false);
    let cores = usize::from(scenario.board.cores);
    let mut governor = Governor::new(config, &runtime.vcpus, cores, &model).map_err(|e| SimError(e.to_string()))?;
    let mut sim = Simulator::from_scenario(scenario)?;
    let vm_of: Vec<VmId> = runtime.vcpus.iter().map(|v| v.vm).collect();
    let mut observer = EnergyObserver::new(&model, policy, vm_of, scenario.guests.len());
    let mut sink = CountingSink { inner: trace, counts: Counts::default() };
    // Every core starts at its fastest OPP.
    for c in 0..cores {
        let core = CoreId(c as u16);
        sim.set_core_capacity(c, model.max_capacity(core), &mut sink, &mut observer);
    }
    let end = Instant::ZERO + scenario.duration;
    // The governor runs at the start (so reservations start on cores fast enough for them)
    // and then every period.
    let mut t = Instant::ZERO;
    while t < end {
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
        for (c, &opp) in plan.opps.iter().enumerate().take(cores) {
            let core = CoreId(c as u16);
            if opp != observer.opp(core) {
                sim.set_core_capacity(c, model.capacity_at(core, opp), &mut sink, &mut observer);
                observer.set_opp(core, opp);
            }
        }
        let next = (t + config.period).min(end);
        sim.run_until(next, &mut sink, &mut observer);
        t = next;
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
        let busy_ns_by_opp =
            (0..model.opp_count(core)).map(|opp| acct.residency(core, CoreState::Busy { opp }).as_nanos()).collect();
        let idle = sum(&mut (0..model.core_type(core).idle_states.len()).map(|state| CoreState::Idle { state }));
        let off = acct.residency(core, CoreState::Off).as_nanos();
        let uj = acct.core_energy(core).total().as_microjoules();
        total += uj;
        transitions += acct.transition_count(core);
        cores.push(CoreEnergyReport {
            core: c as u16,
            busy_ns: busy,
            busy_ns_by_opp,
            idle_ns: idle,
            off_ns: off,
            transitions: acct.transition_count(core),
            energy_uj: uj,
        });
    }
    let clusters_uj = acct.clusters_energy().as_microjoules();
    let idle_uj = (0..model.core_count())
        .map(|c| {
            let e = acct.core_energy(CoreId(c as u16));
            e.idle + e.off
        })
        .sum::<power::Energy>()
        .as_microjoules();
    total += clusters_uj;
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
        idle_uj,
        clusters_uj,
        vms,
        demand_ns: report.vcpus.iter().map(|v| v.demand_ns).sum(),
        backlog_ns: report.vcpus.iter().map(|v| v.backlog_ns).sum(),
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
        for c in self.cores.iter().filter(|c| c.busy_ns > 0) {
            let shares: Vec<String> =
                c.busy_ns_by_opp.iter().map(|&ns| format!("{:.0}", ns as f64 * 100.0 / c.busy_ns as f64)).collect();
            writeln!(f, "  core {} busy time by OPP, slowest first: {} %", c.core, shares.join("/"))?;
        }
        writeln!(f, "  clusters (shared logic): {:.1} mJ", self.clusters_uj as f64 / 1e3)?;
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

/// A lower bound on the energy any policy can spend on `scenario`, in µJ, from the model and the
/// work alone: all the work at the most efficient operating point of any core type (the least
/// energy per unit of work), no idle cost for any core, the boot core's cluster up except in
/// the gaps between consecutive arrivals of work (of any vCPU), where it is in whichever cluster
/// state saves most over the gap after its break-even, and every other cluster off. Busy time
/// is not taken out of the gaps and nothing is charged for moving work, so no real run gets
/// close; what it says is how much any policy could save at most.
pub fn lower_bound_uj(scenario: &Scenario, model: &EnergyModel) -> u64 {
    use vcpu_runtime::scenario::Demand;
    let end = Instant::ZERO + scenario.duration;
    let mut arrivals: Vec<Instant> = Vec::new();
    let mut work = 0u128;
    for guest in &scenario.guests {
        let Some(demand) = guest.demand.as_ref() else { continue };
        if matches!(demand, Demand::Batch) {
            // Always busy: no gap, and as much work as the run lasts on one core.
            work += u128::from(scenario.duration.as_nanos()) * u128::from(guest.vcpus);
            arrivals.extend([Instant::ZERO, end]);
            continue;
        }
        for i in 0..guest.vcpus {
            let mut gen = crate::DemandGen::new(demand, i, Instant::ZERO);
            let mut now = Instant::ZERO;
            while let Some(a) = gen.next_arrival(now) {
                if a.at >= end {
                    break;
                }
                work += u128::from(a.work.as_nanos());
                arrivals.push(a.at);
                now = a.at;
            }
        }
    }
    // The least energy per unit of work: the power of running at an OPP times the time a unit
    // of full-speed work takes there (1024 / capacity), in µW × 1024.
    let per_work = (0..model.core_count())
        .flat_map(|c| {
            let core = CoreId(c as u16);
            (0..model.opp_count(core)).map(move |k| (core, k))
        })
        .map(|(core, k)| {
            u128::from(model.opp_power_uw(core, k)) * 1024 * 1024 / u128::from(model.capacity_at(core, k).max(1))
        })
        .min()
        .unwrap_or(0);
    let busy_fj = work * per_work / 1024;
    arrivals.push(Instant::ZERO);
    arrivals.push(end);
    arrivals.sort();
    let home = model.cluster_of(CoreId(0));
    let cluster = &model.clusters()[home];
    let active = u128::from(cluster.active_power_uw);
    let mut cluster_fj = active * u128::from(scenario.duration.as_nanos());
    for w in arrivals.windows(2) {
        let gap = u128::from(w[1].since(w[0]).as_nanos());
        let saved = cluster
            .idle_states
            .iter()
            .map(|s| {
                let r = u128::from(s.min_residency_us) * 1_000;
                (active.saturating_sub(u128::from(s.power_uw))) * gap.saturating_sub(r)
            })
            .max()
            .unwrap_or(0);
        cluster_fj -= saved.min(cluster_fj);
    }
    let others: u128 = (0..model.clusters().len())
        .filter(|&k| k != home)
        .map(|k| u128::from(model.clusters()[k].off_power_uw) * u128::from(scenario.duration.as_nanos()))
        .sum();
    ((busy_fj + cluster_fj + others) / 1_000_000_000) as u64
}
