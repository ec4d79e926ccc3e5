//! The consolidation governor and its baselines: every period it reads the vCPUs' utilization,
//! the cores' state and the energy model, and returns a [`Plan`]: cores to power on, vCPU moves,
//! cores to power off, and the operating point of every frequency domain. The platform carries
//! the plan out (docs/governor.md): moves through the runtime's mailboxes, power-off by the core
//! itself (it drains, hands its vCPUs over and calls PSCI CPU_OFF), power-on with CPU_ON from
//! another core, operating points through its cpufreq driver where it has one.
//!
//! The same code runs in the simulator and in the hypervisor.
//!
//! Units: a vCPU's utilization is the runtime's, which counts running time at the core's speed
//! (`CoreRuntime::set_capacity`): [`UTIL_ONE`] is "all of the biggest core at its top operating
//! point" (capacity 1024), so it measures work, and demands measured on cores of different
//! types or at different operating points add up.

use alloc::vec;
use alloc::vec::Vec;

use vcpu_runtime::scenario::GovernorPolicy;
use vcpu_runtime::util::UTIL_ONE;
use vcpu_runtime::{CoreId, CoreMask, Instant, Nanos, System, VcpuConfig, VcpuId, VcpuState};

pub use crate::model::CAPACITY_SCALE;
use crate::{ClusterState, EnergyModel};

/// What the governor reads of the runtime each period. [`System`] is the real one; tests give
/// loads of their own.
pub trait LoadView {
    /// Cores that are online (taking vCPUs).
    fn online_cores(&self) -> CoreMask;
    /// The vCPU's owner core, and whether it is on (not parked by its guest, not stopped).
    fn vcpu_placement(&self, vcpu: VcpuId) -> (CoreId, bool);
    /// The vCPU's utilization at `now`, in [`UTIL_ONE`] units of the biggest core at its top
    /// operating point (running time scaled by the speed it ran at).
    fn vcpu_utilization(&self, vcpu: VcpuId, now: Instant) -> u32;
    /// How many times the vCPU has woken up so far (a running count).
    fn vcpu_wakeups(&self, vcpu: VcpuId) -> u64;
}

impl LoadView for System {
    fn online_cores(&self) -> CoreMask {
        System::online_cores(self)
    }

    fn vcpu_placement(&self, vcpu: VcpuId) -> (CoreId, bool) {
        let status = self.status(vcpu);
        let on = !matches!(status.state, VcpuState::Parked | VcpuState::Stopped) || status.power_on_pending;
        (status.owner, on)
    }

    fn vcpu_utilization(&self, vcpu: VcpuId, now: Instant) -> u32 {
        System::vcpu_utilization(self, vcpu, now)
    }

    fn vcpu_wakeups(&self, vcpu: VcpuId) -> u64 {
        System::vcpu_wakeups(self, vcpu)
    }
}

/// The governor's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GovernorConfig {
    pub policy: GovernorPolicy,
    /// How often [`Governor::decide`] runs (default 10 ms).
    pub period: Nanos,
    /// A vCPU is not moved again within this interval (default 1 ms).
    pub min_move_interval: Nanos,
    /// The share of a core's capacity the plan may fill, in ppm (default 80 %): the rest is
    /// headroom for bursts until the next period.
    pub headroom_ppm: u32,
    /// Real-time admission bound per core, in ppm of its time (the runtime's `rt_bound_ppm`).
    pub rt_bound_ppm: u64,
    /// A different set of cores must model at least this much less power than the current one
    /// (ppm of the current), unless the current one is overloaded (default 1 %).
    pub switch_margin_ppm: u32,
    /// `hotplug`: bring a core on when the online cores' average load exceeds this (ppm).
    pub hotplug_up_ppm: u32,
    /// `hotplug`: take the last core off when the load would fit the others below this (ppm).
    pub hotplug_down_ppm: u32,
    /// Cores never powered off: the hypervisor keeps its boot core on (it runs the governor
    /// and ends the run).
    pub always_on: CoreMask,
    /// The platform can set operating points (default true). Without, every core runs at its
    /// top operating point and the governor plans with it, whatever the policy.
    pub dvfs: bool,
}

impl GovernorConfig {
    /// The defaults for `policy` every `period`.
    pub fn new(policy: GovernorPolicy, period: Nanos) -> GovernorConfig {
        GovernorConfig {
            policy,
            period,
            min_move_interval: Nanos::from_millis(1),
            headroom_ppm: 800_000,
            rt_bound_ppm: 900_000,
            switch_margin_ppm: 10_000,
            hotplug_up_ppm: 800_000,
            hotplug_down_ppm: 300_000,
            always_on: CoreMask::single(CoreId(0)),
            dvfs: true,
        }
    }
}

/// One period's decision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Cores to power on (CPU_ON from a core that is on).
    pub power_on: CoreMask,
    /// vCPUs to hand over, and where.
    pub moves: Vec<(VcpuId, CoreId)>,
    /// Cores that drain and power themselves off (after the moves).
    pub power_off: CoreMask,
    /// Per core: the operating point (index into its type's OPPs) it runs at from now on, the
    /// same for every core of a frequency domain.
    pub opps: Vec<usize>,
    /// The cores the plan keeps on, and the power the model predicts for it (µW).
    pub keep: CoreMask,
    pub predicted_uw: u64,
}

impl Plan {
    /// Whether the plan changes no core's power and moves nothing (operating points aside).
    pub fn is_empty(&self) -> bool {
        self.power_on.is_empty() && self.power_off.is_empty() && self.moves.is_empty()
    }
}

/// What the governor knows of one vCPU in a period.
#[derive(Clone, Copy, Debug)]
struct VcpuLoad {
    id: VcpuId,
    owner: CoreId,
    /// Work wanted, in [`UTIL_ONE`] units of the biggest core at its top OPP.
    demand: u64,
    /// Reserved bandwidth, ppm of a core's time at full speed.
    reserved_ppm: u64,
    affinity: CoreMask,
    active: bool,
    /// Wake-ups per second over the last period: each one ends an idle gap of its core.
    wakes_per_s: u64,
}

/// The governor of one system.
#[derive(Debug)]
pub struct Governor {
    config: GovernorConfig,
    /// Per vCPU: affinity and admitted reservation (ppm), from the runtime configuration.
    statics: Vec<(CoreMask, u64)>,
    /// When the governor last moved each vCPU.
    last_moved: Vec<Option<Instant>>,
    /// Each vCPU's wake-up count at the last decision, and when that was.
    last_wakeups: Vec<u64>,
    last_decision: Option<Instant>,
    /// Per core: consecutive periods the plan has wanted it off.
    off_streak: Vec<u32>,
    /// Per core: the periods of wanting it off that cover its off state's minimum residency.
    min_streak: Vec<u32>,
    /// `hotplug`: consecutive periods the load was low enough to take a core off.
    low_streak: u32,
    /// `consolidate`: the set of cores the last plan chose.
    last_target: CoreMask,
    /// The capacity of the fastest core at its top OPP.
    fastest: u32,
    // Scratch, sized once.
    loads: Vec<VcpuLoad>,
    order: Vec<usize>,
    placed: Vec<bool>,
    assign: Vec<CoreId>,
    core_load: Vec<u64>,
    core_rt: Vec<u64>,
    /// Per frequency domain: the OPP index (of its cores' type).
    domain_opp: Vec<usize>,
    alt_assign: Vec<CoreId>,
    alt_domain_opp: Vec<usize>,
}

/// Why a governor cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GovernorError {
    /// The energy model describes fewer cores than the runtime has.
    ModelCores { model: usize, runtime: usize },
    /// The period is 0.
    Period,
}

impl core::fmt::Display for GovernorError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            GovernorError::ModelCores { model, runtime } => {
                write!(f, "the energy model describes {model} cores, the board has {runtime}")
            }
            GovernorError::Period => f.write_str("the governor period must be longer than 0"),
        }
    }
}

/// The idle state a core enters for a rest predicted to last `predicted`: the deepest state
/// whose minimum residency the prediction covers, as Linux's cpuidle governors (menu, teo)
/// choose whatever the cpufreq governor and the placement. The policies differ in where vCPUs
/// run, on how many cores and how fast, not in this (docs/governor.md).
pub fn idle_state(_policy: GovernorPolicy, core: CoreId, predicted: Nanos, model: &EnergyModel) -> usize {
    model.deepest_idle_state_for(core, predicted)
}

/// A core is wanted off for at least this many periods before it goes off, whatever its off
/// state's minimum residency: bursty loads would otherwise turn cores off and on every few
/// periods, and each round trip costs the off state's break-even energy and moves vCPUs twice.
/// (Two. On the energy table five moves the light rows by −1.5 to +0.5 points; the churn losses
/// once blamed on two periods were an accounting error, docs/governor.md.)
pub const MIN_OFF_PERIODS: u32 = 2;

/// Subsets of at most this many cores are searched exhaustively; bigger boards try the
/// cheapest-first prefixes only.
const EXHAUSTIVE_CORES: usize = 10;

/// schedutil's margin (Linux `map_util_perf`: util + util / 4): a frequency domain runs at the
/// slowest OPP with 1.25 times the utilization of its busiest core.
const SCHEDUTIL_MARGIN_PPM: u64 = 1_250_000;

const PPM: u64 = 1_000_000;
const NS_PER_S: u64 = 1_000_000_000;

/// A capacity (out of [`CAPACITY_SCALE`]) in [`UTIL_ONE`] units.
fn util_of(capacity: u32) -> u64 {
    u64::from(capacity) * u64::from(UTIL_ONE) / u64::from(CAPACITY_SCALE)
}

impl Governor {
    /// A governor for the vCPUs of `vcpus` (the runtime configuration) on `cores` cores.
    pub fn new(
        config: GovernorConfig,
        vcpus: &[VcpuConfig],
        cores: usize,
        model: &EnergyModel,
    ) -> Result<Governor, GovernorError> {
        if model.core_count() < cores {
            return Err(GovernorError::ModelCores { model: model.core_count(), runtime: cores });
        }
        if config.period == Nanos::ZERO {
            return Err(GovernorError::Period);
        }
        let n = vcpus.len();
        let domains = model.freq_domain_count();
        Ok(Governor {
            config,
            statics: vcpus
                .iter()
                .map(|v| (v.affinity.and(CoreMask::first(cores)), v.reservation.map_or(0, |r| r.bandwidth_ppm())))
                .collect(),
            last_moved: vec![None; n],
            last_wakeups: vec![0; n],
            last_decision: None,
            off_streak: vec![0; cores],
            min_streak: (0..cores)
                .map(|c| {
                    let residency = model.off_min_residency(CoreId(c as u16)).as_nanos();
                    residency.div_ceil(config.period.as_nanos()).clamp(u64::from(MIN_OFF_PERIODS), u64::from(u32::MAX))
                        as u32
                })
                .collect(),
            low_streak: 0,
            last_target: CoreMask::NONE,
            fastest: (0..cores).map(|c| model.max_capacity(CoreId(c as u16))).max().unwrap_or(CAPACITY_SCALE),
            loads: Vec::with_capacity(n),
            order: Vec::with_capacity(n),
            placed: vec![false; n],
            assign: vec![CoreId(0); n],
            core_load: vec![0; cores],
            core_rt: vec![0; cores],
            domain_opp: vec![0; domains],
            alt_assign: vec![CoreId(0); n],
            alt_domain_opp: vec![0; domains],
        })
    }

    pub fn config(&self) -> &GovernorConfig {
        &self.config
    }

    /// The idle state a core enters for an idle period predicted to last `predicted`
    /// ([`idle_state`]).
    pub fn idle_state(&self, core: CoreId, predicted: Nanos, model: &EnergyModel) -> usize {
        idle_state(self.config.policy, core, predicted, model)
    }

    /// Decides one period at `now`.
    pub fn decide(&mut self, sys: &impl LoadView, now: Instant, model: &EnergyModel) -> Plan {
        let cores = self.off_streak.len();
        let online = sys.online_cores().and(CoreMask::first(cores));
        self.read_loads(sys, now);
        let target = match self.config.policy {
            GovernorPolicy::Spread | GovernorPolicy::RaceToIdle => CoreMask::first(cores),
            GovernorPolicy::Hotplug => self.hotplug_target(online, model),
            GovernorPolicy::Consolidate => self.consolidate_target(online, model),
        };
        if self.config.policy != GovernorPolicy::Consolidate {
            // Place the vCPUs on the target set, balanced (kept where they are when that is
            // about as good), and pick the operating points.
            if !self.pack(target, true, model) {
                // Nothing fits the headroom: overloaded. Keep vCPUs where they are on cores
                // that stay; those on cores going away go to the least loaded.
                self.pack_overloaded(target, model);
            }
            self.baseline_opps(target, model);
        }
        let predicted_uw = self.power_of(target, model);
        let mut plan = self.plan(online, target, now, predicted_uw);
        plan.opps = (0..cores)
            .map(|c| self.domain_opp[model.freq_domain_of(CoreId(c as u16))].min(model.top_opp(CoreId(c as u16))))
            .collect();
        plan
    }

    /// Reads each vCPU's demand and placement.
    fn read_loads(&mut self, sys: &impl LoadView, now: Instant) {
        self.loads.clear();
        let elapsed = self.last_decision.map_or(self.config.period, |t| now.since(t)).as_nanos().max(1);
        self.last_decision = Some(now);
        for (i, &(affinity, reserved_ppm)) in self.statics.iter().enumerate() {
            let id = VcpuId(i as u16);
            let (owner, active) = sys.vcpu_placement(id);
            // What the vCPU uses. A reservation's bandwidth is not added: it is an admission
            // constraint (the RT bound per core, checked when packing), and the time a
            // reserved vCPU leaves unused goes to the share vCPUs of its core.
            let demand = if active { u64::from(sys.vcpu_utilization(id, now).min(UTIL_ONE)) } else { 0 };
            let wakeups = sys.vcpu_wakeups(id);
            let wakes = wakeups.saturating_sub(self.last_wakeups[i]);
            self.last_wakeups[i] = wakeups;
            let wakes_per_s = (u128::from(wakes) * u128::from(NS_PER_S) / u128::from(elapsed)) as u64;
            self.loads.push(VcpuLoad { id, owner, demand, reserved_ppm, affinity, active, wakes_per_s });
        }
    }

    /// `hotplug`: one core more when the online cores are loaded over the up threshold or a
    /// vCPU fits none of them (a saturated core), one fewer (the highest-numbered) after the load
    /// has fit the others below the down threshold for long enough.
    fn hotplug_target(&mut self, online: CoreMask, model: &EnergyModel) -> CoreMask {
        let total: u64 = self.loads.iter().map(|l| l.demand).sum();
        let cap_of = |set: CoreMask| -> u64 { set.iter().map(|c| util_of(model.max_capacity(c))).sum() };
        let cores = self.off_streak.len();
        let mut target = if online.is_empty() { CoreMask::single(CoreId(0)) } else { online };
        let saturated = !self.pack(target, true, model);
        if saturated || total * PPM > cap_of(target) * u64::from(self.config.hotplug_up_ppm) {
            self.low_streak = 0;
            if let Some(c) = (0..cores).map(|c| CoreId(c as u16)).find(|&c| !target.contains(c)) {
                target = target.with(c);
            }
            return target;
        }
        let last = target.iter().filter(|&c| !self.config.always_on.contains(c)).last();
        if let Some(last) = last.filter(|_| target.count() > 1) {
            let rest = target.without(last);
            // Only if the others can hold every vCPU and reservation: Linux refuses to take a
            // CPU offline when the rest cannot hold the admitted deadline bandwidth.
            if total * PPM < cap_of(rest) * u64::from(self.config.hotplug_down_ppm) && self.pack(rest, true, model) {
                self.low_streak += 1;
                let residency = model.off_min_residency(last);
                if u64::from(self.low_streak) * self.config.period.as_nanos() >= residency.as_nanos() {
                    self.low_streak = 0;
                    return rest;
                }
            } else {
                self.low_streak = 0;
            }
        }
        target
    }

    /// The baselines' operating points: `race-to-idle` (and any policy without DVFS) runs every
    /// core at its top OPP; `spread` and `hotplug` follow schedutil: each frequency domain at
    /// the slowest OPP whose capacity is 1.25 times the utilization of its busiest core, a
    /// reservation counting its bandwidth (as Linux adds `SCHED_DEADLINE` bandwidth).
    fn baseline_opps(&mut self, set: CoreMask, model: &EnergyModel) {
        let domains = self.domain_opp.len();
        let race = self.config.policy == GovernorPolicy::RaceToIdle || !self.config.dvfs;
        for d in 0..domains {
            let members = model.cores_of_freq_domain(d);
            let Some(first) = members.iter().next() else { continue };
            if race {
                self.domain_opp[d] = model.top_opp(first);
                continue;
            }
            let mut want = 0u64;
            for c in members.iter().filter(|&c| set.contains(c) && c.index() < self.core_load.len()) {
                let mut util = 0u64;
                for (i, l) in self.loads.iter().enumerate() {
                    if l.active && self.assign[i] == c {
                        util += if l.reserved_ppm > 0 { l.reserved_ppm * u64::from(UTIL_ONE) / PPM } else { l.demand };
                    }
                }
                want = want.max(util * SCHEDUTIL_MARGIN_PPM / PPM);
            }
            let opps = model.opp_count(first);
            self.domain_opp[d] = (0..opps).find(|&k| util_of(model.capacity_at(first, k)) >= want).unwrap_or(opps - 1);
        }
    }

    /// `consolidate`: the set of cores, the placement and the operating points the model says
    /// cost least, among those that hold every vCPU within the headroom and every reservation
    /// within the RT bound. Each set is tried packed (fullest first, so some cores rest long)
    /// and balanced (so its frequency domains can run slower), each at the cheapest operating
    /// points that hold it. The current set is kept unless another saves the switch margin, or
    /// it no longer fits. Leaves the choice in `assign` and `domain_opp`.
    fn consolidate_target(&mut self, online: CoreMask, model: &EnergyModel) -> CoreMask {
        let cores = self.off_streak.len();
        let mut best: Option<(u64, CoreMask)> = None;
        let always = self.config.always_on.0 & CoreMask::first(cores).0;
        let mut candidates: Vec<CoreMask> = Vec::new();
        if cores <= EXHAUSTIVE_CORES {
            candidates.extend((1..(1u64 << cores)).filter(|b| b & always == always).map(CoreMask));
        } else {
            // Cheapest work first (busy power per capacity), then growing prefixes.
            let mut by_cost: Vec<CoreId> = (0..cores).map(|c| CoreId(c as u16)).collect();
            by_cost.sort_by_key(|&c| {
                (u64::from(model.opp_power_uw(c, model.top_opp(c))) * 1024 / u64::from(model.max_capacity(c).max(1)), c)
            });
            let mut set = CoreMask(always);
            for c in by_cost {
                set = set.with(c);
                candidates.push(set);
            }
        }
        let mut feasible: Vec<(u64, CoreMask)> = Vec::with_capacity(candidates.len());
        for &set in &candidates {
            if let Some(p) = self.cheapest_for(set, model) {
                feasible.push((p, set));
                if best.is_none_or(|(bp, _)| p < bp) {
                    best = Some((p, set));
                }
            }
        }
        let Some((best_uw, best_set)) = best else {
            // Nothing fits: everything on, at full speed.
            let all = CoreMask::first(cores);
            self.last_target = all;
            if !self.pack(all, true, model) {
                self.pack_overloaded(all, model);
            }
            for d in 0..self.domain_opp.len() {
                self.domain_opp[d] = model.cores_of_freq_domain(d).iter().next().map_or(0, |c| model.top_opp(c));
            }
            return all;
        };
        // Sets within the switch margin of the cheapest cost the same as far as the model can
        // tell; of those the one with the fewest cores is chosen (then the cheaper, then the
        // lower-numbered). An emptied core that would rest in an idle state as cheap as off
        // still goes off: the vCPUs' wake-ups then land on one core, where they coalesce, and a
        // core that is off takes no stray interrupt; neither is in the model.
        let within = |p: u64| p <= best_uw + best_uw * u64::from(self.config.switch_margin_ppm) / PPM;
        let pick = feasible
            .iter()
            .filter(|&&(p, _)| within(p))
            .min_by_key(|&&(p, s)| (s.count(), p, s.0))
            .map_or(best_set, |&(_, s)| s);
        // The set the last plan chose, which is being carried out (cores it wanted off may not
        // be off yet): kept while it is within the margin and has no more cores than the pick,
        // so that the plan does not flip between near-equal sets. Judged against the cores that
        // are on instead, an emptied core would look free in a deep idle state and the plan
        // would flip back before the core could go off.
        let current = if self.last_target.is_empty() { online } else { self.last_target };
        let keep = feasible.iter().any(|&(p, s)| s == current && within(p) && s.count() <= pick.count());
        let chosen = if keep { current } else { pick };
        // The placement and operating points of the chosen set (the search above overwrote them).
        if self.cheapest_for(chosen, model).is_none() {
            // Cannot happen (it was feasible): fall back to the cheapest set's.
            let _ = self.cheapest_for(best_set, model);
        }
        self.last_target = chosen;
        chosen
    }

    /// The cheapest way to run the load on `set`: packed or balanced, at the operating points
    /// that cost least; its modelled power, with the placement in `assign` and the OPPs in
    /// `domain_opp`. `None` if the load does not fit `set`.
    fn cheapest_for(&mut self, set: CoreMask, model: &EnergyModel) -> Option<u64> {
        let packed = self.pack(set, false, model).then(|| self.choose_opps(set, model));
        if packed.is_some() {
            self.alt_assign.copy_from_slice(&self.assign);
            self.alt_domain_opp.copy_from_slice(&self.domain_opp);
        }
        let balanced = self.pack(set, true, model).then(|| self.choose_opps(set, model));
        match (packed, balanced) {
            (Some(p), Some(b)) if b < p => Some(b),
            (Some(p), _) => {
                self.assign.copy_from_slice(&self.alt_assign);
                self.domain_opp.copy_from_slice(&self.alt_domain_opp);
                Some(p)
            }
            (None, b) => b,
        }
    }

    /// The operating point of every frequency domain that costs least for the placement in
    /// `assign` on `set`, among those that keep every core of the set within the headroom and
    /// its reservations within the RT bound (the top OPP when none does, or without DVFS); its
    /// modelled power. One domain after the other, the others held at their slowest fitting
    /// OPP until their turn.
    fn choose_opps(&mut self, set: CoreMask, model: &EnergyModel) -> u64 {
        self.tally(set);
        let domains = self.domain_opp.len();
        let mut lowest = [0usize; CoreMask::MAX_CORES];
        for (d, low) in lowest.iter_mut().enumerate().take(domains) {
            let members = model.cores_of_freq_domain(d);
            let Some(first) = members.iter().next() else { continue };
            let top = model.top_opp(first);
            *low = if self.config.dvfs {
                (0..=top)
                    .find(|&k| {
                        members.iter().filter(|&c| set.contains(c) && c.index() < self.core_load.len()).all(|c| {
                            let cap = model.capacity_at(c, k);
                            self.core_load[c.index()] * PPM <= util_of(cap) * u64::from(self.config.headroom_ppm)
                                && self.core_rt[c.index()] * u64::from(CAPACITY_SCALE)
                                    <= self.config.rt_bound_ppm * u64::from(cap)
                        })
                    })
                    .unwrap_or(top)
            } else {
                top
            };
            self.domain_opp[d] = *low;
        }
        let mut best = self.power_of(set, model);
        for (d, &low) in lowest.iter().enumerate().take(domains) {
            let members = model.cores_of_freq_domain(d);
            let Some(first) = members.iter().next() else { continue };
            if !members.iter().any(|c| set.contains(c)) {
                continue;
            }
            let mut best_k = self.domain_opp[d];
            for k in low + 1..=model.top_opp(first) {
                self.domain_opp[d] = k;
                let p = self.power_of(set, model);
                if p < best {
                    best = p;
                    best_k = k;
                }
            }
            self.domain_opp[d] = best_k;
        }
        best
    }

    /// Sums each core's demand and reserved bandwidth under the placement in `assign`.
    fn tally(&mut self, set: CoreMask) {
        self.core_load.iter_mut().for_each(|l| *l = 0);
        self.core_rt.iter_mut().for_each(|l| *l = 0);
        for (i, l) in self.loads.iter().enumerate() {
            let c = self.assign[i];
            if l.active && set.contains(c) && c.index() < self.core_load.len() {
                self.core_load[c.index()] += l.demand;
                self.core_rt[c.index()] += l.reserved_ppm;
            }
        }
    }

    /// Places every active vCPU on a core of `set`: where it is when that core is in the set and
    /// it fits, else (largest demand first) on the fitting core that is cheapest for its work
    /// (`balance` = false: the most loaded that fits, so cores empty out) or least loaded
    /// (`balance` = true, spreading). Fitting is at each core's top OPP: the load within the
    /// headroom (a vCPU alone on one of the fastest cores always fits: it cannot go faster), the
    /// reservations within the RT bound of the core's time (a reservation's bandwidth is at
    /// full speed, so a slower core gives it more of its time). Returns whether everything
    /// fits; `self.assign` holds the placement.
    fn pack(&mut self, set: CoreMask, balance: bool, model: &EnergyModel) -> bool {
        self.core_load.iter_mut().for_each(|l| *l = 0);
        self.core_rt.iter_mut().for_each(|l| *l = 0);
        let headroom = u64::from(self.config.headroom_ppm);
        let rt_bound = self.config.rt_bound_ppm;
        let fastest = self.fastest;
        let fits_core = |load: u64, rt: u64, l: &VcpuLoad, c: CoreId| {
            let cap = model.max_capacity(c);
            let alone = load == 0 && cap >= fastest;
            (alone || (load + l.demand) * PPM <= util_of(cap) * headroom)
                && (rt + l.reserved_ppm) * u64::from(CAPACITY_SCALE) <= rt_bound * u64::from(cap)
        };
        self.order.clear();
        self.order.extend(0..self.loads.len());
        self.sort_order();
        let mut ok = true;
        self.placed.iter_mut().for_each(|p| *p = false);
        // First pass: vCPUs that may stay where they are, stay (in demand order).
        if !balance {
            for k in 0..self.order.len() {
                let i = self.order[k];
                let l = self.loads[i];
                let c = l.owner;
                if !l.active {
                    self.assign[i] = c;
                    self.placed[i] = true;
                    continue;
                }
                if set.contains(c)
                    && l.affinity.contains(c)
                    && fits_core(self.core_load[c.index()], self.core_rt[c.index()], &l, c)
                {
                    self.core_load[c.index()] += l.demand;
                    self.core_rt[c.index()] += l.reserved_ppm;
                    self.assign[i] = c;
                    self.placed[i] = true;
                }
            }
        }
        for k in 0..self.order.len() {
            let i = self.order[k];
            if self.placed[i] {
                continue;
            }
            let l = self.loads[i];
            if !l.active {
                self.assign[i] = l.owner;
                continue;
            }
            let fits = |g: &Governor, c: CoreId| fits_core(g.core_load[c.index()], g.core_rt[c.index()], &l, c);
            let candidates = set.and(l.affinity);
            let choice = if balance {
                // Least loaded (relative to capacity); the vCPU's own core wins ties and near-ties
                // (within half its own demand), so balanced loads do not churn.
                let rel =
                    |g: &Governor, c: CoreId| g.core_load[c.index()] * 1024 / u64::from(model.max_capacity(c).max(1));
                let best = candidates.iter().filter(|&c| fits(self, c)).min_by_key(|&c| (rel(self, c), c));
                match best {
                    Some(b) if candidates.contains(l.owner) && fits(self, l.owner) => {
                        let own = rel(self, l.owner);
                        let slack = l.demand * 512 / u64::from(model.max_capacity(l.owner).max(1));
                        if own <= rel(self, b) + slack {
                            Some(l.owner)
                        } else {
                            Some(b)
                        }
                    }
                    other => other,
                }
            } else {
                // Cheapest per unit of work, then fullest (so the others empty), then lowest.
                candidates.iter().filter(|&c| fits(self, c)).min_by_key(|&c| {
                    (
                        u64::from(model.opp_power_uw(c, model.top_opp(c))) * 1024
                            / u64::from(model.max_capacity(c).max(1)),
                        u64::MAX - self.core_load[c.index()],
                        c,
                    )
                })
            };
            match choice {
                Some(c) => {
                    self.core_load[c.index()] += l.demand;
                    self.core_rt[c.index()] += l.reserved_ppm;
                    self.assign[i] = c;
                }
                None => {
                    ok = false;
                    self.assign[i] = l.owner;
                }
            }
        }
        ok
    }

    /// Sorts the vCPUs in `order` for placing: reservations first (largest bandwidth first),
    /// then by demand, largest first, then by id.
    fn sort_order(&mut self) {
        let loads = &self.loads;
        self.order.sort_by(|&a, &b| {
            (loads[b].reserved_ppm, loads[b].demand, loads[a].id).cmp(&(
                loads[a].reserved_ppm,
                loads[a].demand,
                loads[b].id,
            ))
        });
    }

    /// Placement when not everything fits. Every active vCPU stays on its own core when the
    /// set and its affinity allow and the core holds its reservation within the RT bound; the
    /// others go, reservations first and then largest first, to the core of the set they may
    /// use with the most capacity to spare at its top OPP (a core that holds the reservation
    /// preferred). Then, while the core with the least to spare has a share vCPU that the core
    /// with the most to spare could take and the gap between them exceeds one and a half times
    /// that vCPU's demand, the largest such vCPU moves: so a vCPU too big for a little core
    /// reaches a big one when one is on (Linux's misfit migration) and the overload spreads.
    /// Overloaded vCPUs' measured demands differ by noise from period to period; a greedy
    /// placement from scratch swapped equal vCPUs between the cores every period.
    fn pack_overloaded(&mut self, set: CoreMask, model: &EnergyModel) {
        self.core_load.iter_mut().for_each(|l| *l = 0);
        self.core_rt.iter_mut().for_each(|l| *l = 0);
        let rt_bound = self.config.rt_bound_ppm;
        let rt_fits =
            |rt: u64, c: CoreId| rt * u64::from(CAPACITY_SCALE) <= rt_bound * u64::from(model.max_capacity(c));
        let spare = |load: u64, c: CoreId| util_of(model.max_capacity(c)) as i64 - load as i64;
        self.placed.iter_mut().for_each(|p| *p = false);
        for (i, l) in self.loads.iter().enumerate() {
            let c = l.owner;
            let stays = !l.active
                || (set.contains(c) && l.affinity.contains(c) && rt_fits(self.core_rt[c.index()] + l.reserved_ppm, c));
            if stays {
                self.assign[i] = c;
                self.placed[i] = true;
                if l.active {
                    self.core_load[c.index()] += l.demand;
                    self.core_rt[c.index()] += l.reserved_ppm;
                }
            }
        }
        self.order.clear();
        self.order.extend((0..self.loads.len()).filter(|&i| !self.placed[i]));
        self.sort_order();
        for k in 0..self.order.len() {
            let i = self.order[k];
            let l = self.loads[i];
            let c = set
                .and(l.affinity)
                .iter()
                .max_by_key(|&c| {
                    let load = self.core_load[c.index()] + l.demand;
                    (rt_fits(self.core_rt[c.index()] + l.reserved_ppm, c), spare(load, c), core::cmp::Reverse(c))
                })
                .unwrap_or(l.owner);
            self.assign[i] = c;
            self.core_load[c.index()] += l.demand;
            self.core_rt[c.index()] += l.reserved_ppm;
        }
        // Rebalance: each move lowers the sum of squared loads, so this ends; the bound is a
        // guard.
        for _ in 0..self.loads.len() {
            let on = || set.iter().filter(|c| c.index() < self.core_load.len());
            let (Some(hi), Some(lo)) = (
                on().min_by_key(|&c| (spare(self.core_load[c.index()], c), c)),
                on().max_by_key(|&c| (spare(self.core_load[c.index()], c), core::cmp::Reverse(c))),
            ) else {
                break;
            };
            let gap = spare(self.core_load[lo.index()], lo) - spare(self.core_load[hi.index()], hi);
            let movable = (0..self.loads.len())
                .filter(|&i| {
                    let l = &self.loads[i];
                    l.active
                        && self.assign[i] == hi
                        && l.reserved_ppm == 0
                        && l.affinity.contains(lo)
                        && (l.demand + l.demand / 2) < gap as u64
                })
                .max_by_key(|&i| (self.loads[i].demand, core::cmp::Reverse(i)));
            let Some(i) = movable.filter(|_| gap > 0) else { break };
            let d = self.loads[i].demand;
            self.assign[i] = lo;
            self.core_load[hi.index()] -= d;
            self.core_load[lo.index()] += d;
        }
    }

    /// Modelled power (µW) of the placement in `assign` with `set` on at the operating points
    /// in `domain_opp`, the rest off.
    ///
    /// Per core on: busy power at its OPP times its busy share (its load over its capacity
    /// there); the rest of the time in the idle state the policy picks for the predicted rests
    /// (the idle share of a second over the wake-ups of the vCPUs placed on it), plus that
    /// state's break-even energy once per wake-up. Per core off: its off power. Per cluster
    /// with a core on: the cluster is up while any of its cores runs or rests in a state that
    /// keeps it up (independent cores: 1 − Π(1 − up share)); the rest of the time in the cluster
    /// state its rests (split by all its cores' wake-ups) cover, with that state's break-even
    /// energy per wake-up; a cluster with every core off costs its off power.
    fn power_of(&self, set: CoreMask, model: &EnergyModel) -> u64 {
        let cores = self.off_streak.len();
        let mut load = [0u64; CoreMask::MAX_CORES];
        let mut wakes = [0u64; CoreMask::MAX_CORES];
        for (i, l) in self.loads.iter().enumerate() {
            if l.active {
                load[self.assign[i].index()] += l.demand;
                wakes[self.assign[i].index()] += l.wakes_per_s;
            }
        }
        let clusters = model.clusters().len();
        // Per cluster: the share of time no core holds it up (ppm), whether a core is on, its
        // cores' wake-ups.
        let mut down = [PPM; CoreMask::MAX_CORES];
        let mut any_on = [false; CoreMask::MAX_CORES];
        let mut cluster_wakes = [0u64; CoreMask::MAX_CORES];
        let mut total = 0u64;
        for c in (0..cores).map(|c| CoreId(c as u16)) {
            if !set.contains(c) {
                total += u64::from(model.off_power_uw(c));
                continue;
            }
            let k = model.cluster_of(c);
            let opp = self.domain_opp[model.freq_domain_of(c)].min(model.top_opp(c));
            let cap = util_of(model.capacity_at(c, opp)).max(1);
            let busy_ppm = (load[c.index()] * PPM / cap).min(PPM);
            let idle_ppm = PPM - busy_ppm;
            // The idle gaps: the idle share of a second, split by the wake-ups of the vCPUs on it
            // (a core without wake-ups rests a whole period at least).
            let idle_ns_per_s = idle_ppm * (NS_PER_S / PPM);
            let gap = match wakes[c.index()] {
                0 => Nanos(idle_ns_per_s.max(self.config.period.as_nanos())),
                w => Nanos(idle_ns_per_s / w),
            };
            let state = self.idle_state(c, gap, model);
            let entries = wakes[c.index()].max(1);
            let wfi = u64::from(model.idle_power_uw(c, 0));
            let deep = u64::from(model.idle_power_uw(c, state));
            // Entering a state deeper than WFI costs its break-even energy per gap: what WFI
            // would have saved over its minimum residency (docs/governor.md).
            let penalty = (wfi.saturating_sub(deep) * model.idle_min_residency(c, state).as_nanos().min(idle_ns_per_s)
                / NS_PER_S
                * entries)
                .min(wfi.saturating_sub(deep));
            total += (u64::from(model.opp_power_uw(c, opp)) * busy_ppm + deep * idle_ppm) / PPM + penalty;
            // A core holds its cluster up unless it rests in its deepest state.
            let rests_deep = state > 0 && state + 1 == model.idle_state_count(c);
            let up_ppm = if rests_deep { busy_ppm } else { PPM };
            down[k] = down[k] * (PPM - up_ppm) / PPM;
            any_on[k] = true;
            cluster_wakes[k] += wakes[c.index()];
        }
        for k in 0..clusters {
            if !any_on[k] {
                total += u64::from(model.cluster_power_uw(k, ClusterState::Off));
                continue;
            }
            let active = u64::from(model.cluster_power_uw(k, ClusterState::Active));
            let down_ns_per_s = down[k] * (NS_PER_S / PPM);
            let gap = match cluster_wakes[k] {
                0 => Nanos(down_ns_per_s.max(self.config.period.as_nanos())),
                w => Nanos(down_ns_per_s / w),
            };
            total += match model.deepest_cluster_state_for(k, gap) {
                Some(s) => {
                    let p = u64::from(model.cluster_power_uw(k, ClusterState::Idle(s)));
                    let residency = Nanos::from_micros(u64::from(model.clusters()[k].idle_states[s].min_residency_us));
                    let penalty = (active.saturating_sub(p) * residency.as_nanos().min(down_ns_per_s) / NS_PER_S
                        * cluster_wakes[k].max(1))
                    .min(active.saturating_sub(p));
                    (active * (PPM - down[k]) + p * down[k]) / PPM + penalty
                }
                None => active,
            };
        }
        total
    }

    /// Turns the target set and placement into a plan, with the hysteresis: a core goes off only
    /// once the plan has wanted it off for its off state's minimum residency and every vCPU on
    /// it may move; a vCPU is not moved twice within the minimum interval.
    fn plan(&mut self, online: CoreMask, target: CoreMask, now: Instant, predicted_uw: u64) -> Plan {
        let cores = self.off_streak.len();
        let mut plan = Plan { keep: target, predicted_uw, ..Plan::default() };
        plan.power_on = CoreMask(target.0 & !online.0);
        let movable =
            |g: &Governor, i: usize| g.last_moved[i].is_none_or(|t| now.since(t) >= g.config.min_move_interval);
        for c in (0..cores).map(|c| CoreId(c as u16)) {
            if online.contains(c) && !target.contains(c) {
                self.off_streak[c.index()] = self.off_streak[c.index()].saturating_add(1);
            } else {
                self.off_streak[c.index()] = 0;
            }
        }
        let mut off = CoreMask::NONE;
        for c in (0..cores).map(|c| CoreId(c as u16)) {
            if !online.contains(c) || target.contains(c) {
                continue;
            }
            let all_movable = (0..self.loads.len()).all(|i| self.loads[i].owner != c || movable(self, i));
            if all_movable {
                off = off.with(c);
            }
        }
        off = CoreMask(off.0 & !self.config.always_on.0);
        // Never everything off.
        if off == online {
            off = off.without(online.iter().next().unwrap_or(CoreId(0)));
        }
        plan.power_off = off;
        for i in 0..self.loads.len() {
            let l = self.loads[i];
            let dest = self.assign[i];
            if !l.active || dest == l.owner || !movable(self, i) {
                continue;
            }
            // Moves onto a core that is off wait until it is on (next period).
            if !online.contains(dest) {
                continue;
            }
            plan.moves.push((l.id, dest));
            self.last_moved[i] = Some(now);
        }
        // `consolidate`: a core goes off once it has been wanted off long enough (`hotplug` has
        // its own streak).
        if self.config.policy == GovernorPolicy::Consolidate {
            plan.power_off = CoreMask(plan.power_off.0 & self.off_ready_mask());
        }
        plan
    }

    /// Cores whose off streak covers their off state's minimum residency: the predicted idle
    /// time of a core is as long as the load has already wanted it off.
    fn off_ready_mask(&self) -> u64 {
        let mut m = 0u64;
        for (c, &streak) in self.off_streak.iter().enumerate() {
            if streak >= self.min_streak[c] {
                m |= 1 << c;
            }
        }
        m
    }
}

#[cfg(test)]
mod tests;
