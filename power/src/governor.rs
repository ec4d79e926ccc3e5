//! The consolidation governor and its baselines: every period it reads the vCPUs' utilization,
//! the cores' state and the energy model, and returns a [`Plan`]: cores to power on, vCPU moves,
//! cores to power off. The platform carries the plan out (docs/governor.md): moves through the
//! runtime's mailboxes, power-off by the core itself (it drains, hands its vCPUs over and calls
//! PSCI CPU_OFF), power-on with CPU_ON from another core.
//!
//! The same code runs in the simulator and in the hypervisor; it allocates only when it is built.
//!
//! Units: a vCPU's utilization is the runtime's ([`UTIL_ONE`] = always running on its core).
//! Demand is utilization scaled by the capacity of the core it was measured on, in
//! [`UTIL_ONE`] = "all of the biggest core at its top operating point" (capacity 1024), so
//! demands measured on cores of different types add up.

use alloc::vec;
use alloc::vec::Vec;

use vcpu_runtime::scenario::GovernorPolicy;
use vcpu_runtime::util::UTIL_ONE;
use vcpu_runtime::{CoreId, CoreMask, Instant, Nanos, System, VcpuConfig, VcpuId, VcpuState};

/// Capacity of the biggest core at its top operating point (Linux's `SCHED_CAPACITY_SCALE`).
pub const CAPACITY_SCALE: u32 = 1024;

/// What the governor needs to know of the energy model, per physical core and cluster. Powers
/// are in microwatts at the operating point the core runs at (the hypervisor does not scale
/// frequencies, so that is the top one).
pub trait PowerCosts {
    /// Physical cores the model describes.
    fn core_count(&self) -> usize;
    /// Capacity at the running operating point, in [`CAPACITY_SCALE`] units.
    fn capacity(&self, core: CoreId) -> u32;
    /// Power while busy 100 % of the time.
    fn busy_power_uw(&self, core: CoreId) -> u64;
    /// Idle states of the core, shallowest (WFI) first.
    fn idle_state_count(&self, core: CoreId) -> usize;
    /// Power in idle state `state`.
    fn idle_power_uw(&self, core: CoreId, state: usize) -> u64;
    /// Shortest stay in idle state `state` that saves energy.
    fn idle_min_residency(&self, core: CoreId, state: usize) -> Nanos;
    /// Power while the core is off (PSCI CPU_OFF).
    fn off_power_uw(&self, core: CoreId) -> u64;
    /// Shortest time off that saves energy (the break-even of CPU_OFF + CPU_ON).
    fn off_min_residency(&self, core: CoreId) -> Nanos;
    /// The cluster (shared power domain) of the core.
    fn cluster_of(&self, core: CoreId) -> usize;
    /// Clusters in the model.
    fn cluster_count(&self) -> usize;
    /// Power of a cluster's shared logic while any of its cores is on (`on`) or all are off.
    fn cluster_power_uw(&self, cluster: usize, on: bool) -> u64;
}

/// What the governor reads of the runtime each period. [`System`] is the real one; tests give
/// loads of their own.
pub trait LoadView {
    /// Cores that are online (taking vCPUs).
    fn online_cores(&self) -> CoreMask;
    /// The vCPU's owner core, and whether it is on (not parked by its guest, not stopped).
    fn vcpu_placement(&self, vcpu: VcpuId) -> (CoreId, bool);
    /// The vCPU's utilization at `now` on its owner core, in [`UTIL_ONE`] units.
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
    /// Real-time admission bound per core, in ppm (the runtime's `rt_bound_ppm`).
    pub rt_bound_ppm: u64,
    /// A different set of cores must model at least this much less power than the current one
    /// (ppm of the current), unless the current one is overloaded (default 1 %).
    pub switch_margin_ppm: u32,
    /// `hotplug`: bring a core on when the online cores' average load exceeds this (ppm).
    pub hotplug_up_ppm: u32,
    /// `hotplug`: take the last core off when the load would fit the others below this (ppm).
    /// `consolidate`: a set with fewer cores than the cheapest, but as cheap within the switch
    /// margin, is chosen when no core of it is loaded past this (default 30 %).
    pub hotplug_down_ppm: u32,
    /// Cores never powered off: the hypervisor keeps its boot core on (it runs the governor
    /// and ends the run).
    pub always_on: CoreMask,
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
    /// The cores the plan keeps on, and the power the model predicts for it (µW).
    pub keep: CoreMask,
    pub predicted_uw: u64,
}

impl Plan {
    /// Whether the plan changes nothing.
    pub fn is_empty(&self) -> bool {
        self.power_on.is_empty() && self.power_off.is_empty() && self.moves.is_empty()
    }
}

/// What the governor knows of one vCPU in a period.
#[derive(Clone, Copy, Debug)]
struct VcpuLoad {
    id: VcpuId,
    owner: CoreId,
    demand: u64,
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
    /// `consolidate`: a light set with fewer cores than the cheapest (see
    /// [`LIGHT_PERIODS`]), and for how many decisions in a row it has been the choice.
    light_choice: CoreMask,
    light_streak: u32,
    // Scratch, sized once.
    loads: Vec<VcpuLoad>,
    order: Vec<usize>,
    assign: Vec<CoreId>,
    core_load: Vec<u64>,
    core_rt: Vec<u64>,
    /// `consolidate`: the feasible core sets of a decision, their modelled power and whether
    /// their packing is light.
    feasible: Vec<(u64, CoreMask, bool)>,
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

/// The idle state `policy` puts a core in for a rest predicted to last `predicted`: `spread`
/// and `hotplug` use WFI only (state 0), `race-to-idle` the deepest state, `consolidate` the
/// deepest state whose minimum residency the prediction covers.
pub fn idle_state(policy: GovernorPolicy, core: CoreId, predicted: Nanos, costs: &impl PowerCosts) -> usize {
    let n = costs.idle_state_count(core);
    if n == 0 {
        return 0;
    }
    match policy {
        GovernorPolicy::Spread | GovernorPolicy::Hotplug => 0,
        GovernorPolicy::RaceToIdle => n - 1,
        GovernorPolicy::Consolidate => {
            (0..n).rev().find(|&s| costs.idle_min_residency(core, s) <= predicted).unwrap_or(0)
        }
    }
}

/// `consolidate`: how many decisions in a row a light set with fewer cores than the cheapest
/// must be the choice before the plan takes it (100 ms at the default period). Such a set saves
/// nothing the model sees; a load that is light only between its bursts would otherwise turn a
/// core off and on again for each of them (the `idle-bursts` and `browsing` traces).
pub const LIGHT_PERIODS: u32 = 10;

/// A core is wanted off for at least this many periods before it goes off, whatever its off
/// state's minimum residency: bursty loads would otherwise turn cores off and on every few
/// periods, and each round trip costs the off state's break-even energy and moves vCPUs twice.
/// (Two, from the energy table: five removed sd410's churn losses but kept transient placements
/// long enough to cost 25 % on a big.LITTLE row; docs/governor.md.)
pub const MIN_OFF_PERIODS: u32 = 2;

/// Subsets of at most this many cores are searched exhaustively; bigger boards try the
/// cheapest-first prefixes only.
const EXHAUSTIVE_CORES: usize = 10;

impl Governor {
    /// A governor for the vCPUs of `vcpus` (the runtime configuration) on `cores` cores.
    pub fn new(
        config: GovernorConfig,
        vcpus: &[VcpuConfig],
        cores: usize,
        costs: &impl PowerCosts,
    ) -> Result<Governor, GovernorError> {
        if costs.core_count() < cores {
            return Err(GovernorError::ModelCores { model: costs.core_count(), runtime: cores });
        }
        if config.period == Nanos::ZERO {
            return Err(GovernorError::Period);
        }
        let n = vcpus.len();
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
                    let residency = costs.off_min_residency(CoreId(c as u16)).as_nanos();
                    residency.div_ceil(config.period.as_nanos()).clamp(u64::from(MIN_OFF_PERIODS), u64::from(u32::MAX))
                        as u32
                })
                .collect(),
            low_streak: 0,
            last_target: CoreMask::NONE,
            light_choice: CoreMask::NONE,
            light_streak: 0,
            loads: Vec::with_capacity(n),
            order: Vec::with_capacity(n),
            assign: vec![CoreId(0); n],
            core_load: vec![0; cores],
            core_rt: vec![0; cores],
            feasible: Vec::with_capacity(if cores <= EXHAUSTIVE_CORES { 1 << cores } else { cores }),
        })
    }

    pub fn config(&self) -> &GovernorConfig {
        &self.config
    }

    /// The idle state a core enters for an idle period predicted to last `predicted`: `spread`
    /// and `hotplug` use WFI only (state 0), `race-to-idle` the deepest state, `consolidate`
    /// the deepest state whose minimum residency the prediction covers.
    pub fn idle_state(&self, core: CoreId, predicted: Nanos, costs: &impl PowerCosts) -> usize {
        idle_state(self.config.policy, core, predicted, costs)
    }

    /// Decides one period at `now`.
    pub fn decide(&mut self, sys: &impl LoadView, now: Instant, costs: &impl PowerCosts) -> Plan {
        let cores = self.off_streak.len();
        let online = sys.online_cores().and(CoreMask::first(cores));
        self.read_loads(sys, now, costs);
        let target = match self.config.policy {
            GovernorPolicy::Spread | GovernorPolicy::RaceToIdle => CoreMask::first(cores),
            GovernorPolicy::Hotplug => self.hotplug_target(online, costs),
            GovernorPolicy::Consolidate => self.consolidate_target(online, costs),
        };
        // Place the vCPUs on the target set (kept where they are when that fits).
        let balance = !matches!(self.config.policy, GovernorPolicy::Consolidate);
        let feasible = self.pack(target, balance, costs);
        if !feasible {
            // Nothing fits the headroom: overloaded. Keep vCPUs where they are on cores that
            // stay; those on cores going away go to the least loaded.
            self.pack_overloaded(target, costs);
        }
        let predicted_uw = self.power_of(target, costs);
        self.plan(online, target, now, predicted_uw)
    }

    /// Reads each vCPU's demand and placement.
    fn read_loads(&mut self, sys: &impl LoadView, now: Instant, costs: &impl PowerCosts) {
        self.loads.clear();
        let elapsed = self.last_decision.map_or(self.config.period, |t| now.since(t)).as_nanos().max(1);
        self.last_decision = Some(now);
        for (i, &(affinity, reserved_ppm)) in self.statics.iter().enumerate() {
            let id = VcpuId(i as u16);
            let (owner, active) = sys.vcpu_placement(id);
            let util = u64::from(sys.vcpu_utilization(id, now).min(UTIL_ONE));
            let cap = u64::from(costs.capacity(owner).max(1));
            // What the vCPU uses. A reservation's bandwidth is not added: it is an admission
            // constraint (the RT bound per core, checked when packing), and the time a
            // reserved vCPU leaves unused goes to the share vCPUs of its core.
            let mut demand = util * cap / u64::from(CAPACITY_SCALE);
            if !active {
                demand = 0;
            }
            let wakeups = sys.vcpu_wakeups(id);
            let wakes = wakeups.saturating_sub(self.last_wakeups[i]);
            self.last_wakeups[i] = wakeups;
            let wakes_per_s = (u128::from(wakes) * 1_000_000_000 / u128::from(elapsed)) as u64;
            self.loads.push(VcpuLoad { id, owner, demand, reserved_ppm, affinity, active, wakes_per_s });
        }
    }

    /// `hotplug`: one core more when the online cores are loaded over the up threshold, one
    /// fewer (the highest-numbered) after the load has fit the others below the down threshold
    /// for long enough.
    fn hotplug_target(&mut self, online: CoreMask, costs: &impl PowerCosts) -> CoreMask {
        let total: u64 = self.loads.iter().map(|l| l.demand).sum();
        let cap_of = |set: CoreMask| -> u64 {
            set.iter().map(|c| u64::from(costs.capacity(c)) * u64::from(UTIL_ONE) / u64::from(CAPACITY_SCALE)).sum()
        };
        let cores = self.off_streak.len();
        let mut target = if online.is_empty() { CoreMask::single(CoreId(0)) } else { online };
        if total * 1_000_000 > cap_of(target) * u64::from(self.config.hotplug_up_ppm) {
            self.low_streak = 0;
            if let Some(c) = (0..cores).map(|c| CoreId(c as u16)).find(|&c| !target.contains(c)) {
                target = target.with(c);
            }
            return target;
        }
        let last = target.iter().filter(|&c| !self.config.always_on.contains(c)).last();
        if let Some(last) = last.filter(|_| target.count() > 1) {
            let rest = target.without(last);
            if total * 1_000_000 < cap_of(rest) * u64::from(self.config.hotplug_down_ppm) {
                self.low_streak += 1;
                let residency = costs.off_min_residency(last);
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

    /// `consolidate`: the set of cores whose packing the model says costs least, among those
    /// that hold every vCPU within the headroom and every reservation within the RT bound;
    /// and as few cores as that allows. Sets within the switch margin of the cheapest cost the
    /// same as far as the model can tell; of those, one with fewer cores is taken when its
    /// packing is light (no core loaded past the hotplug down threshold, 30 %) and has been
    /// for [`LIGHT_PERIODS`] decisions. An emptied core that would rest in an idle state as
    /// cheap as off then still goes off: the vCPUs' wake-ups land on one core, where they
    /// coalesce (a guest's timers are aligned to its ticks), and a core that is off takes no
    /// stray interrupt; neither is in the model. Otherwise the current set is kept unless it
    /// no longer fits or another saves the margin.
    fn consolidate_target(&mut self, online: CoreMask, costs: &impl PowerCosts) -> CoreMask {
        let cores = self.off_streak.len();
        let mut feasible = core::mem::take(&mut self.feasible);
        feasible.clear();
        let always = self.config.always_on.0;
        if cores <= EXHAUSTIVE_CORES {
            for bits in (1..(1u64 << cores)).filter(|b| b & always == always & ((1u64 << cores) - 1)) {
                self.consider(CoreMask(bits), costs, &mut feasible);
            }
        } else {
            // Cheapest work first (busy power per capacity), then growing prefixes.
            let mut by_cost: Vec<CoreId> = (0..cores).map(|c| CoreId(c as u16)).collect();
            by_cost.sort_by_key(|&c| (costs.busy_power_uw(c) * 1024 / u64::from(costs.capacity(c).max(1)), c));
            let mut set = CoreMask(always & CoreMask::first(cores).0);
            for c in by_cost {
                set = set.with(c);
                self.consider(set, costs, &mut feasible);
            }
        }
        let Some(&(cheapest_uw, cheapest, _)) = feasible.iter().min_by_key(|&&(p, set, _)| (p, u32::MAX - set.count()))
        else {
            // Nothing fits: everything on.
            self.feasible = feasible;
            self.last_target = CoreMask::first(cores);
            return self.last_target;
        };
        let near = cheapest_uw + cheapest_uw * u64::from(self.config.switch_margin_ppm) / 1_000_000;
        // The fewest cores among the sets as cheap as the cheapest, if that set is light.
        let fewest_light = |below: u32| {
            feasible
                .iter()
                .filter(|&&(p, set, light)| p <= near && light && set.count() < below)
                .min_by_key(|&&(p, set, _)| (set.count(), p, set.0))
                .map(|&(_, set, _)| set)
        };
        // The set the last plan chose, which is being carried out (cores it wanted off may not
        // be off yet). Judged against the cores that are on instead, an emptied core would look
        // free in a deep idle state and the plan would flip back before the core could go off.
        let current = if self.last_target.is_empty() { online } else { self.last_target };
        let current_is_near = feasible.iter().any(|&(p, set, _)| set == current && p <= near);
        let chosen = if !current_is_near {
            // The current set no longer fits, or another saves the margin.
            self.light_streak = 0;
            fewest_light(cheapest.count()).unwrap_or(cheapest)
        } else if let Some(fewer) = fewest_light(current.count()) {
            // As cheap with fewer cores, and light: taken once it has been so for
            // LIGHT_PERIODS decisions in a row, so that a load light only between its bursts
            // keeps its cores.
            if self.light_choice == fewer {
                self.light_streak += 1;
            } else {
                self.light_choice = fewer;
                self.light_streak = 1;
            }
            if self.light_streak >= LIGHT_PERIODS {
                self.light_streak = 0;
                fewer
            } else {
                current
            }
        } else {
            self.light_streak = 0;
            current
        };
        self.feasible = feasible;
        self.last_target = chosen;
        chosen
    }

    /// Packs `set` and, when everything fits, notes its modelled power and whether it is light
    /// (no core loaded past the hotplug down threshold).
    fn consider(&mut self, set: CoreMask, costs: &impl PowerCosts, feasible: &mut Vec<(u64, CoreMask, bool)>) {
        if !self.pack(set, false, costs) {
            return;
        }
        let light = set.iter().all(|c| {
            let cap = u64::from(costs.capacity(c)) * u64::from(UTIL_ONE) / u64::from(CAPACITY_SCALE);
            self.core_load[c.index()] * 1_000_000 <= cap * u64::from(self.config.hotplug_down_ppm)
        });
        feasible.push((self.power_of(set, costs), set, light));
    }

    /// Places every active vCPU on a core of `set`: where it is when that core is in the set and
    /// it fits, else (largest demand first) on the fitting core that is cheapest for its work
    /// (`balance` = false: the most loaded that fits, so cores empty out) or least loaded
    /// (`balance` = true, spreading). Returns whether everything fits the headroom and the RT
    /// bound; `self.assign` holds the placement.
    fn pack(&mut self, set: CoreMask, balance: bool, costs: &impl PowerCosts) -> bool {
        self.core_load.iter_mut().for_each(|l| *l = 0);
        self.core_rt.iter_mut().for_each(|l| *l = 0);
        let limit = |c: CoreId| -> u64 {
            u64::from(costs.capacity(c)) * u64::from(UTIL_ONE) / u64::from(CAPACITY_SCALE)
                * u64::from(self.config.headroom_ppm)
                / 1_000_000
        };
        // A vCPU alone on a core fits it whatever its demand: it cannot use more than one core,
        // and on a smaller core it only runs slower, which costs less energy than a big core
        // (the headroom is about vCPUs sharing a core, not about one vCPU's speed).
        let alone_fits = |load: u64, _c: CoreId| load == 0;
        self.order.clear();
        self.order.extend(0..self.loads.len());
        let loads = &self.loads;
        self.order.sort_by(|&a, &b| {
            (loads[b].reserved_ppm, loads[b].demand, loads[a].id).cmp(&(
                loads[a].reserved_ppm,
                loads[a].demand,
                loads[b].id,
            ))
        });
        let mut ok = true;
        // First pass: vCPUs that may stay where they are, stay (in demand order).
        let mut placed = vec![false; self.loads.len()];
        if !balance {
            for k in 0..self.order.len() {
                let i = self.order[k];
                let l = self.loads[i];
                let c = l.owner;
                if !l.active {
                    self.assign[i] = c;
                    placed[i] = true;
                    continue;
                }
                if set.contains(c)
                    && l.affinity.contains(c)
                    && (alone_fits(self.core_load[c.index()], c) || self.core_load[c.index()] + l.demand <= limit(c))
                    && self.core_rt[c.index()] + l.reserved_ppm <= self.config.rt_bound_ppm
                {
                    self.core_load[c.index()] += l.demand;
                    self.core_rt[c.index()] += l.reserved_ppm;
                    self.assign[i] = c;
                    placed[i] = true;
                }
            }
        }
        for k in 0..self.order.len() {
            let i = self.order[k];
            if placed[i] {
                continue;
            }
            let l = self.loads[i];
            if !l.active {
                self.assign[i] = l.owner;
                continue;
            }
            let fits = |g: &Governor, c: CoreId| {
                (alone_fits(g.core_load[c.index()], c) || g.core_load[c.index()] + l.demand <= limit(c))
                    && g.core_rt[c.index()] + l.reserved_ppm <= g.config.rt_bound_ppm
            };
            let candidates = set.and(l.affinity);
            let choice = if balance {
                // Least loaded (relative to capacity); the vCPU's own core wins ties and near-ties
                // (within half its own demand), so balanced loads do not churn.
                let rel = |g: &Governor, c: CoreId| g.core_load[c.index()] * 1024 / u64::from(costs.capacity(c).max(1));
                let best = candidates.iter().filter(|&c| fits(self, c)).min_by_key(|&c| (rel(self, c), c));
                match best {
                    Some(b) if candidates.contains(l.owner) && fits(self, l.owner) => {
                        let own = rel(self, l.owner);
                        let slack = l.demand * 512 / u64::from(costs.capacity(l.owner).max(1));
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
                        costs.busy_power_uw(c) * 1024 / u64::from(costs.capacity(c).max(1)),
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

    /// Placement when nothing fits: vCPUs stay where they are if their core stays on; the others
    /// go to the least loaded core of the set they may use.
    fn pack_overloaded(&mut self, set: CoreMask, costs: &impl PowerCosts) {
        self.core_load.iter_mut().for_each(|l| *l = 0);
        for i in 0..self.loads.len() {
            let l = self.loads[i];
            if set.contains(l.owner) || !l.active {
                self.assign[i] = l.owner;
                self.core_load[l.owner.index()] += l.demand;
            }
        }
        for i in 0..self.loads.len() {
            let l = self.loads[i];
            if set.contains(l.owner) || !l.active {
                continue;
            }
            let rel = |g: &Governor, c: CoreId| g.core_load[c.index()] * 1024 / u64::from(costs.capacity(c).max(1));
            let candidates = set.and(l.affinity);
            let c = candidates.iter().min_by_key(|&c| (rel(self, c), c)).unwrap_or(l.owner);
            self.assign[i] = c;
            self.core_load[c.index()] += l.demand;
        }
    }

    /// Modeled power (µW) of the placement in `self.assign` with `set` on and the rest off.
    fn power_of(&self, set: CoreMask, costs: &impl PowerCosts) -> u64 {
        let cores = self.off_streak.len();
        let mut load = [0u64; CoreMask::MAX_CORES];
        let mut wakes = [0u64; CoreMask::MAX_CORES];
        for (i, l) in self.loads.iter().enumerate() {
            if l.active {
                load[self.assign[i].index()] += l.demand;
                wakes[self.assign[i].index()] += l.wakes_per_s;
            }
        }
        let mut total = 0u64;
        for c in (0..cores).map(|c| CoreId(c as u16)) {
            if !set.contains(c) {
                total += costs.off_power_uw(c);
                continue;
            }
            let cap = u64::from(costs.capacity(c).max(1)) * u64::from(UTIL_ONE) / u64::from(CAPACITY_SCALE);
            let busy = load[c.index()].min(cap);
            let idle = cap - busy;
            // The idle gaps: the idle share of a second, split by the wake-ups of the vCPUs on it
            // (a core without wake-ups rests a whole period at least).
            let idle_ns_per_s = 1_000_000_000 * idle / cap;
            let gap = match wakes[c.index()] {
                0 => Nanos(idle_ns_per_s.max(self.config.period.as_nanos())),
                w => Nanos(idle_ns_per_s / w),
            };
            let state = self.idle_state(c, gap, costs);
            // Entering a state deeper than WFI costs its break-even energy per gap: what WFI
            // would have saved over its minimum residency (docs/governor.md).
            let entries = wakes[c.index()].max(1);
            let wfi = costs.idle_power_uw(c, 0);
            let deep = costs.idle_power_uw(c, state);
            let penalty = wfi.saturating_sub(deep) * costs.idle_min_residency(c, state).as_nanos().min(idle_ns_per_s)
                / 1_000_000_000
                * entries;
            total += (costs.busy_power_uw(c) * busy + deep * idle) / cap + penalty.min(wfi.saturating_sub(deep));
        }
        for k in 0..costs.cluster_count() {
            let on = (0..cores).any(|c| set.contains(CoreId(c as u16)) && costs.cluster_of(CoreId(c as u16)) == k);
            total += costs.cluster_power_uw(k, on);
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
mod tests {
    use super::*;
    use vcpu_runtime::Reservation;

    /// A board for tests: `types[c]` = (capacity, busy µW, cluster) per core; idle states WFI
    /// (0 residency) and retention (2 ms); off after `off_residency`.
    struct Board {
        cores: Vec<(u32, u64, usize)>,
        off_residency: Nanos,
    }

    impl Board {
        fn quad() -> Board {
            Board { cores: vec![(1024, 500_000, 0); 4], off_residency: Nanos::from_millis(5) }
        }
        fn big_little() -> Board {
            let mut cores = vec![(400, 120_000, 0); 4];
            cores.extend([(1024, 1_100_000, 1); 4]);
            Board { cores, off_residency: Nanos::from_millis(5) }
        }
    }

    impl PowerCosts for Board {
        fn core_count(&self) -> usize {
            self.cores.len()
        }
        fn capacity(&self, core: CoreId) -> u32 {
            self.cores[core.index()].0
        }
        fn busy_power_uw(&self, core: CoreId) -> u64 {
            self.cores[core.index()].1
        }
        fn idle_state_count(&self, _core: CoreId) -> usize {
            2
        }
        fn idle_power_uw(&self, core: CoreId, state: usize) -> u64 {
            self.cores[core.index()].1 / if state == 0 { 10 } else { 25 }
        }
        fn idle_min_residency(&self, _core: CoreId, state: usize) -> Nanos {
            if state == 0 {
                Nanos::ZERO
            } else {
                Nanos::from_millis(2)
            }
        }
        fn off_power_uw(&self, _core: CoreId) -> u64 {
            0
        }
        fn off_min_residency(&self, _core: CoreId) -> Nanos {
            self.off_residency
        }
        fn cluster_of(&self, core: CoreId) -> usize {
            self.cores[core.index()].2
        }
        fn cluster_count(&self) -> usize {
            self.cores.iter().map(|c| c.2).max().unwrap_or(0) + 1
        }
        fn cluster_power_uw(&self, cluster: usize, on: bool) -> u64 {
            match (cluster, on) {
                (_, false) => 0,
                (0, true) => 30_000,
                _ => 90_000,
            }
        }
    }

    /// Loads set by hand: per vCPU (owner, on, utilization in percent).
    struct Loads {
        online: CoreMask,
        vcpus: Vec<(CoreId, bool, u32)>,
    }

    impl LoadView for Loads {
        fn online_cores(&self) -> CoreMask {
            self.online
        }
        fn vcpu_placement(&self, vcpu: VcpuId) -> (CoreId, bool) {
            let v = self.vcpus[vcpu.index()];
            (v.0, v.1)
        }
        fn vcpu_utilization(&self, vcpu: VcpuId, _now: Instant) -> u32 {
            self.vcpus[vcpu.index()].2 * UTIL_ONE / 100
        }
        fn vcpu_wakeups(&self, _vcpu: VcpuId) -> u64 {
            0
        }
    }

    impl Loads {
        /// Carries a plan out at once (moves and power changes).
        fn apply(&mut self, plan: &Plan) {
            for &(v, c) in &plan.moves {
                self.vcpus[v.index()].0 = c;
            }
            self.online = CoreMask((self.online.0 | plan.power_on.0) & !plan.power_off.0);
            // What a draining core still holds goes to the least numbered online core.
            let first = self.online.iter().next().unwrap();
            for v in &mut self.vcpus {
                if !self.online.contains(v.0) {
                    v.0 = first;
                }
            }
        }
    }

    fn vcpus(n: usize, cores: usize) -> Vec<VcpuConfig> {
        (0..n)
            .map(|i| VcpuConfig {
                vm: vcpu_runtime::VmId(0),
                index_in_vm: i as u16,
                weight: 256,
                reservation: None,
                affinity: CoreMask::first(cores),
                starts_parked: false,
            })
            .collect()
    }

    /// A governor that may power any core off.
    fn governor(policy: GovernorPolicy, configs: &[VcpuConfig], board: &Board) -> Governor {
        let cores = board.core_count();
        let config =
            GovernorConfig { always_on: CoreMask::NONE, ..GovernorConfig::new(policy, Nanos::from_millis(10)) };
        Governor::new(config, configs, cores, board).unwrap()
    }

    #[test]
    fn always_on_cores_stay_on() {
        let board = Board::quad();
        for policy in GovernorPolicy::ALL {
            let config = GovernorConfig::new(policy, Nanos::from_millis(10));
            assert_eq!(config.always_on, CoreMask::single(CoreId(0)), "the default keeps the boot core");
            let mut gov = Governor::new(config, &vcpus(2, 4), 4, &board).unwrap();
            let mut loads =
                Loads { online: CoreMask::first(4), vcpus: vec![(CoreId(2), true, 5), (CoreId(3), true, 5)] };
            run(&mut gov, &mut loads, &board, 10);
            assert!(loads.online.contains(CoreId(0)), "{policy}: {:?}", loads.online);
            if matches!(policy, GovernorPolicy::Consolidate | GovernorPolicy::Hotplug) {
                assert_eq!(loads.online, CoreMask::single(CoreId(0)), "{policy}: everything on the boot core");
            }
        }
    }

    /// Runs `periods` governor periods, applying each plan; returns the last plan.
    fn run(gov: &mut Governor, loads: &mut Loads, board: &Board, periods: u32) -> Plan {
        let mut plan = Plan::default();
        for p in 0..periods {
            let now = Instant(u64::from(p + 1) * 10_000_000);
            plan = gov.decide(loads, now, board);
            loads.apply(&plan);
        }
        plan
    }

    #[test]
    fn light_load_packs_onto_one_core_and_powers_the_rest_off() {
        let board = Board::quad();
        let mut gov = governor(GovernorPolicy::Consolidate, &vcpus(4, 4), &board);
        let mut loads = Loads { online: CoreMask::first(4), vcpus: (0..4).map(|c| (CoreId(c), true, 10)).collect() };
        let plan = gov.decide(&loads, Instant(10_000_000), &board);
        assert_eq!(plan.keep.count(), 1, "{plan:?}");
        assert_eq!(plan.moves.len(), 3, "three vCPUs join the fourth: {plan:?}");
        assert!(plan.power_off.is_empty(), "not yet: wanted off for {MIN_OFF_PERIODS} periods first");
        let keep = plan.keep.iter().next().unwrap();
        assert!(plan.moves.iter().all(|&(_, c)| c == keep));
        // Busy power is the same on any core; three cores' idle power is saved.
        assert!(plan.predicted_uw < 200_000 + 30_000 + 4 * 45_000, "{plan:?}");
        loads.apply(&plan);
        let plan = gov.decide(&loads, Instant(20_000_000), &board);
        assert_eq!(plan.power_off.count(), 3, "{plan:?}");
        assert!(plan.moves.is_empty());
        loads.apply(&plan);
        let again = gov.decide(&loads, Instant(30_000_000), &board);
        assert!(again.is_empty(), "stable once packed: {again:?}");
    }

    /// On the Hi6220 (`phone-dual`) a core in cpu-sleep costs what an off core does: with idle
    /// vCPUs every set models the same power, and the fewest cores win.
    #[test]
    fn idle_vcpus_pack_even_where_deep_idle_costs_what_off_does() {
        let model = crate::EnergyModel::builtin("phone-dual").unwrap();
        let config = GovernorConfig::new(GovernorPolicy::Consolidate, Nanos::from_millis(10));
        let mut gov = Governor::new(config, &vcpus(4, 2), 2, &model).unwrap();
        let mut loads = Loads { online: CoreMask::first(2), vcpus: (0..4).map(|v| (CoreId(v % 2), true, 1)).collect() };
        for p in 1..=u64::from(LIGHT_PERIODS + MIN_OFF_PERIODS + 2) {
            let plan = gov.decide(&loads, Instant(p * 10_000_000), &model);
            loads.apply(&plan);
        }
        assert_eq!(loads.online, CoreMask::single(CoreId(0)), "{:?}", loads.vcpus);
        assert!(loads.vcpus.iter().all(|v| v.0 == CoreId(0)));
        // Stable once packed, and back on when the load needs both cores.
        assert!(gov.decide(&loads, Instant(900_000_000), &model).is_empty());
        for v in &mut loads.vcpus[..2] {
            v.2 = 70;
        }
        let plan = gov.decide(&loads, Instant(910_000_000), &model);
        assert_eq!(plan.power_on, CoreMask::single(CoreId(1)), "{plan:?}");
    }

    /// A load light only between bursts that need both cores keeps them both on, where the
    /// model sees no saving in turning one off.
    #[test]
    fn light_gaps_between_bursts_keep_the_cores_on() {
        let model = crate::EnergyModel::builtin("phone-dual").unwrap();
        let config = GovernorConfig::new(GovernorPolicy::Consolidate, Nanos::from_millis(10));
        let mut gov = Governor::new(config, &vcpus(2, 2), 2, &model).unwrap();
        let mut loads = Loads { online: CoreMask::first(2), vcpus: (0..2).map(|v| (CoreId(v), true, 1)).collect() };
        for p in 1..=60u64 {
            let burst = p % (u64::from(LIGHT_PERIODS) - 2) == 0;
            for v in &mut loads.vcpus {
                v.2 = if burst { 60 } else { 1 };
            }
            let plan = gov.decide(&loads, Instant(p * 10_000_000), &model);
            assert!(plan.power_off.is_empty(), "period {p}: {plan:?}");
            loads.apply(&plan);
        }
    }

    #[test]
    fn heavy_load_keeps_every_core_on() {
        let board = Board::quad();
        let mut gov = governor(GovernorPolicy::Consolidate, &vcpus(4, 4), &board);
        let mut loads = Loads { online: CoreMask::first(4), vcpus: (0..4).map(|c| (CoreId(c), true, 70)).collect() };
        let plan = run(&mut gov, &mut loads, &board, 5);
        assert_eq!(loads.online, CoreMask::first(4));
        assert!(plan.is_empty(), "{plan:?}");
    }

    #[test]
    fn returning_load_powers_cores_back_on() {
        let board = Board::quad();
        let mut gov = governor(GovernorPolicy::Consolidate, &vcpus(4, 4), &board);
        let mut loads = Loads { online: CoreMask::first(4), vcpus: (0..4).map(|c| (CoreId(c), true, 5)).collect() };
        run(&mut gov, &mut loads, &board, 3);
        assert_eq!(loads.online.count(), 1);
        for v in &mut loads.vcpus {
            v.2 = 60;
        }
        let plan = gov.decide(&loads, Instant(100_000_000), &board);
        assert_eq!(plan.power_on.count(), 3, "240 % of demand needs four cores at 80 %: {plan:?}");
        assert!(plan.power_off.is_empty());
        loads.apply(&plan);
        // The moves onto the new cores follow once they are on.
        run(&mut gov, &mut loads, &board, 2);
        let mut per_core = [0; 4];
        for v in &loads.vcpus {
            per_core[v.0.index()] += 1;
        }
        assert_eq!(per_core, [1, 1, 1, 1], "{:?}", loads.vcpus);
    }

    #[test]
    fn reservations_stay_feasible() {
        let board = Board::quad();
        let mut configs = vcpus(3, 4);
        for c in &mut configs[..2] {
            c.reservation = Some(Reservation { budget: Nanos::from_millis(5), period: Nanos::from_millis(10) });
        }
        let mut gov = governor(GovernorPolicy::Consolidate, &configs, &board);
        // They use little of their reservations: their bandwidth still counts against the RT
        // bound of a core.
        let mut loads = Loads { online: CoreMask::first(4), vcpus: (0..3).map(|c| (CoreId(c), true, 5)).collect() };
        run(&mut gov, &mut loads, &board, 4);
        assert_eq!(loads.online.count(), 2, "two 50 % reservations never share a core (bound 90 %)");
        assert_ne!(loads.vcpus[0].0, loads.vcpus[1].0);
    }

    #[test]
    fn a_core_goes_off_only_after_its_minimum_residency() {
        let mut board = Board::quad();
        board.off_residency = Nanos::from_millis(25);
        let mut gov = governor(GovernorPolicy::Consolidate, &vcpus(2, 4), &board);
        let mut loads = Loads { online: CoreMask::first(4), vcpus: vec![(CoreId(0), true, 10), (CoreId(1), true, 10)] };
        let mut off_at = None;
        for p in 1..=5 {
            let plan = gov.decide(&loads, Instant(p * 10_000_000), &board);
            loads.apply(&plan);
            if !plan.power_off.is_empty() && off_at.is_none() {
                off_at = Some(p);
            }
        }
        assert_eq!(off_at, Some(3), "wanted off for 3 periods of 10 ms covers 25 ms");
    }

    #[test]
    fn a_vcpu_is_not_moved_twice_within_the_interval() {
        let board = Board::quad();
        let mut gov = governor(GovernorPolicy::Consolidate, &vcpus(2, 4), &board);
        let mut loads = Loads { online: CoreMask::first(4), vcpus: vec![(CoreId(0), true, 10), (CoreId(1), true, 10)] };
        let plan = gov.decide(&loads, Instant(10_000_000), &board);
        let (moved, _) = plan.moves[0];
        // Someone else puts it back right away; half a millisecond later it stays there.
        loads.vcpus[moved.index()].0 = CoreId(3);
        let plan = gov.decide(&loads, Instant(10_500_000), &board);
        assert!(plan.moves.iter().all(|&(v, _)| v != moved), "{plan:?}");
        let plan = gov.decide(&loads, Instant(11_000_000), &board);
        assert!(plan.moves.iter().any(|&(v, _)| v == moved), "movable after 1 ms: {plan:?}");
    }

    #[test]
    fn affinity_keeps_a_pinned_core_on() {
        let board = Board::quad();
        let mut configs = vcpus(2, 4);
        configs[1].affinity = CoreMask::single(CoreId(3));
        let mut gov = governor(GovernorPolicy::Consolidate, &configs, &board);
        let mut loads = Loads { online: CoreMask::first(4), vcpus: vec![(CoreId(0), true, 10), (CoreId(3), true, 10)] };
        run(&mut gov, &mut loads, &board, 3);
        assert_eq!(loads.online, CoreMask::single(CoreId(3)), "{:?}", loads.vcpus);
        assert_eq!(loads.vcpus[0].0, CoreId(3));
    }

    #[test]
    fn parked_vcpus_need_no_core() {
        let board = Board::quad();
        let mut gov = governor(GovernorPolicy::Consolidate, &vcpus(4, 4), &board);
        let mut loads = Loads { online: CoreMask::first(4), vcpus: (0..4).map(|c| (CoreId(c), c == 0, 90)).collect() };
        run(&mut gov, &mut loads, &board, 3);
        assert_eq!(loads.online, CoreMask::single(CoreId(0)));
    }

    #[test]
    fn big_little_light_load_runs_on_the_little_cluster() {
        let board = Board::big_little();
        let mut gov = governor(GovernorPolicy::Consolidate, &vcpus(4, 8), &board);
        let mut loads = Loads { online: CoreMask::first(8), vcpus: (0..4).map(|i| (CoreId(4 + i), true, 5)).collect() };
        run(&mut gov, &mut loads, &board, 4);
        assert!(loads.online.iter().all(|c| c.index() < 4), "big cluster off: {:?}", loads.online);
        // One vCPU saturating a little core stays there: slower, but cheaper than a big core.
        loads.vcpus[0].2 = 100;
        run(&mut gov, &mut loads, &board, 3);
        assert!(loads.online.iter().all(|c| c.index() < 4), "{:?}", loads.vcpus);
        // Four saturated vCPUs and four more at 50 % do not fit the little cluster's headroom:
        // the big cluster comes on.
        for v in &mut loads.vcpus {
            v.2 = 100;
        }
        loads.vcpus.extend((0..4).map(|i| (CoreId(i), true, 50)));
        let mut gov = governor(GovernorPolicy::Consolidate, &vcpus(8, 8), &board);
        let plan = run(&mut gov, &mut loads, &board, 3);
        assert!(loads.online.iter().any(|c| c.index() >= 4), "{plan:?} {:?}", loads.vcpus);
    }

    #[test]
    fn spread_keeps_every_core_on_and_balances() {
        let board = Board::quad();
        let mut gov = governor(GovernorPolicy::Spread, &vcpus(4, 4), &board);
        let mut loads = Loads { online: CoreMask::first(4), vcpus: (0..4).map(|_| (CoreId(0), true, 30)).collect() };
        run(&mut gov, &mut loads, &board, 2);
        assert_eq!(loads.online, CoreMask::first(4));
        let mut per_core = [0; 4];
        for v in &loads.vcpus {
            per_core[v.0.index()] += 1;
        }
        assert_eq!(per_core, [1, 1, 1, 1]);
        let light = run(&mut gov, &mut Loads { online: CoreMask::first(4), vcpus: loads.vcpus.clone() }, &board, 1);
        assert!(light.power_off.is_empty());
    }

    #[test]
    fn hotplug_follows_its_thresholds() {
        let board = Board::quad();
        let mut gov = governor(GovernorPolicy::Hotplug, &vcpus(2, 4), &board);
        let mut loads = Loads { online: CoreMask::first(4), vcpus: vec![(CoreId(0), true, 10), (CoreId(1), true, 10)] };
        run(&mut gov, &mut loads, &board, 10);
        assert_eq!(loads.online, CoreMask::single(CoreId(0)), "20 % of load fits one core below 30 %");
        for v in &mut loads.vcpus {
            v.2 = 90;
        }
        run(&mut gov, &mut loads, &board, 1);
        assert_eq!(loads.online.count(), 2, "one core more per period over 80 %");
    }

    #[test]
    fn idle_states_by_policy() {
        let board = Board::quad();
        let c = CoreId(0);
        let short = Nanos::from_micros(500);
        let long = Nanos::from_millis(5);
        let pick = |p| governor(p, &vcpus(1, 4), &board);
        assert_eq!(pick(GovernorPolicy::Spread).idle_state(c, long, &board), 0);
        assert_eq!(pick(GovernorPolicy::Hotplug).idle_state(c, long, &board), 0);
        assert_eq!(pick(GovernorPolicy::RaceToIdle).idle_state(c, short, &board), 1);
        assert_eq!(pick(GovernorPolicy::Consolidate).idle_state(c, short, &board), 0);
        assert_eq!(pick(GovernorPolicy::Consolidate).idle_state(c, long, &board), 1);
    }

    #[test]
    fn bad_configurations_are_refused() {
        let board = Board::quad();
        let e =
            Governor::new(GovernorConfig::new(GovernorPolicy::Spread, Nanos::from_millis(10)), &vcpus(1, 8), 8, &board)
                .unwrap_err();
        assert_eq!(e.to_string(), "the energy model describes 4 cores, the board has 8");
        let e = Governor::new(GovernorConfig::new(GovernorPolicy::Spread, Nanos::ZERO), &vcpus(1, 4), 4, &board)
            .unwrap_err();
        assert_eq!(e, GovernorError::Period);
    }
}
