//! The energy model: what each core can run at and what that costs, what each idle state saves
//! and what it costs to leave, and the same for the logic a cluster of cores shares.
//!
//! Units are integers throughout (the EL2 image has no FPU): power in µW, frequency in kHz,
//! latency and residency in µs, capacity in 1/1024 of the biggest core at its fastest
//! operating point (the Linux convention, `SCHED_CAPACITY_SCALE`). A model is built once
//! ([`EnergyModel::new`], [`EnergyModel::from_dtb`](crate::EnergyModel::from_dtb), a TOML file
//! or a built-in profile), checked as a whole, and then only read: every query is a couple of
//! array lookups and never allocates.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use vcpu_runtime::ids::{CoreId, CoreMask};
use vcpu_runtime::time::Nanos;
use vcpu_runtime::util::UTIL_ONE;

use crate::energy::Energy;

/// The capacity of the biggest core at its fastest operating point.
pub const CAPACITY_SCALE: u32 = 1024;

/// One operating point (a frequency and the voltage that goes with it) of a core type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opp {
    pub freq_khz: u32,
    /// Work done per unit of time at this OPP, out of [`CAPACITY_SCALE`] for the biggest core
    /// at its top OPP. Computed by [`EnergyModel::new`] from the core type's
    /// `capacity_dmips_mhz` and the frequency; any value passed in is replaced.
    pub capacity: u32,
    /// Power of one core running flat out (100 % busy) at this OPP.
    pub power_uw: u32,
}

/// A state a core (or a cluster's shared logic) can rest in while it has nothing to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdleState {
    pub name: String,
    /// Power while in the state: of one core for a core state, of the cluster's shared logic
    /// (L2, interconnect port) for a cluster state.
    pub power_uw: u32,
    pub entry_latency_us: u32,
    pub exit_latency_us: u32,
    /// Shortest stay for which entering the state saves energy (it costs some to go in and out).
    pub min_residency_us: u32,
}

/// A kind of core: every core of a type has the same operating points and idle states.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreType {
    /// E.g. `cortex-a53`; unique in a model.
    pub name: String,
    /// Relative performance per MHz (Dhrystone MIPS/MHz, normalized so the best type is 1024),
    /// the device-tree `capacity-dmips-mhz`.
    pub capacity_dmips_mhz: u32,
    /// Slowest first; frequency strictly increasing, power never decreasing.
    pub opps: Vec<Opp>,
    /// Shallowest first (index 0 is WFI): residency and exit latency never decreasing, power
    /// never increasing.
    pub idle_states: Vec<IdleState>,
    /// Power of a core that is off (PSCI `CPU_OFF`).
    pub off_power_uw: u32,
}

/// Cores that share logic (L2 cache, snoop control) which can itself be put to sleep once all
/// of them rest deeply enough, or are off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// E.g. `cluster0`; unique in a model.
    pub name: String,
    /// Power of the shared logic while the cluster is up (some core is running or in a core
    /// idle state). 0 when it is counted in the cores' own figures.
    pub active_power_uw: u32,
    /// Cluster-level idle states, shallowest first (may be empty).
    pub idle_states: Vec<IdleState>,
    /// Power of the shared logic when every core of the cluster is off.
    pub off_power_uw: u32,
}

/// One physical core: which [`CoreType`] it is and which [`Cluster`] it belongs to (indices
/// into [`EnergyModel::core_types`] and [`EnergyModel::clusters`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CoreModel {
    pub core_type: usize,
    pub cluster: usize,
}

/// What a cluster's shared logic is doing, for [`EnergyModel::cluster_power_uw`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClusterState {
    /// Up: at least one core is running or in a core-level idle state.
    Active,
    /// In the cluster idle state with this index.
    Idle(usize),
    /// Every core of the cluster is off.
    Off,
}

/// A checked energy model of a whole machine. See the [module documentation](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnergyModel {
    name: String,
    cores: Vec<CoreModel>,
    core_types: Vec<CoreType>,
    clusters: Vec<Cluster>,
    /// Per core: its frequency domain (derived: the cores of one type in one cluster).
    freq_domain: Vec<usize>,
}

/// Why a model could not be built: which input, where in it, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelError {
    /// The bytes are not a flattened device tree that can be read.
    Blob { reason: String },
    /// A device-tree node (its full path) or one of its properties is missing or wrong.
    /// `property` is empty when the node as a whole is meant.
    Node { node: String, property: String, reason: String },
    /// A field of a model given as data (a TOML file or [`EnergyModel::new`]) is missing or
    /// wrong; `path` is dotted, e.g. `core_types[0].opps[2].power_uw`.
    Field { path: String, reason: String },
    /// A TOML file that is not TOML, or has a key or a value type the format does not have.
    Syntax { line: u32, column: u32, reason: String },
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelError::Blob { reason } => write!(f, "not a readable device tree: {reason}"),
            ModelError::Node { node, property, reason } if property.is_empty() => write!(f, "{node}: {reason}"),
            ModelError::Node { node, property, reason } => write!(f, "{node}: {property}: {reason}"),
            ModelError::Field { path, reason } if path.is_empty() => f.write_str(reason),
            ModelError::Field { path, reason } => write!(f, "{path}: {reason}"),
            ModelError::Syntax { line, column, reason } => write!(f, "line {line}, column {column}: {reason}"),
        }
    }
}

impl core::error::Error for ModelError {}

/// A broken rule found by [`build`], in terms of the model; each input format turns it into a
/// [`ModelError`] that points into that input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Violation {
    pub item: Item,
    /// The model field, e.g. `power_uw`; empty for the item as a whole.
    pub field: &'static str,
    pub reason: String,
}

/// The part of a model a [`Violation`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Item {
    Model,
    Core(usize),
    CoreType(usize),
    Opp(usize, usize),
    IdleState(usize, usize),
    Cluster(usize),
    ClusterState(usize, usize),
}

impl Item {
    /// The dotted path of the item in the model's own layout (the TOML format's, too).
    pub(crate) fn path(self) -> String {
        match self {
            Item::Model => String::new(),
            Item::Core(n) => format!("cores[{n}]"),
            Item::CoreType(t) => format!("core_types[{t}]"),
            Item::Opp(t, i) => format!("core_types[{t}].opps[{i}]"),
            Item::IdleState(t, j) => format!("core_types[{t}].idle_states[{j}]"),
            Item::Cluster(c) => format!("clusters[{c}]"),
            Item::ClusterState(c, k) => format!("clusters[{c}].idle_states[{k}]"),
        }
    }
}

/// `item.field` joined for an error message.
pub(crate) fn join_path(item: &str, field: &str) -> String {
    match (item.is_empty(), field.is_empty()) {
        (true, _) => String::from(field),
        (false, true) => String::from(item),
        (false, false) => format!("{item}.{field}"),
    }
}

impl EnergyModel {
    /// Checks a model and fills in the OPP capacities. `cores[i]` is [`CoreId`]`(i)`.
    ///
    /// The rules: 1 to 64 cores; every core names an existing type and cluster, every type
    /// and cluster is used by some core, and names are unique and not empty. A type has at
    /// least one OPP and at least one idle state; frequencies strictly increase and power
    /// never decreases with frequency; idle states go from shallow to deep (minimum residency
    /// and exit latency never decrease, power never increases), and no idle state costs more
    /// than running at the slowest OPP; off costs no more than the deepest idle state. Cluster
    /// idle states follow the same order and cost no more than the active cluster, and the
    /// off cluster no more than any of them. Zero is rejected where it has no meaning
    /// (frequency, OPP power, `capacity_dmips_mhz`).
    ///
    /// Capacities follow Linux (`topology_normalize_cpu_scale`, `em_init_performance`): a
    /// type's top capacity is `capacity_dmips_mhz × top frequency`, scaled so that the
    /// largest over the types in use is [`CAPACITY_SCALE`]; an OPP's is the top capacity
    /// scaled by its frequency over the top frequency (both rounded down).
    pub fn new(
        name: impl Into<String>,
        core_types: Vec<CoreType>,
        clusters: Vec<Cluster>,
        cores: Vec<CoreModel>,
    ) -> Result<EnergyModel, ModelError> {
        build(name.into(), core_types, clusters, cores)
            .map_err(|v| ModelError::Field { path: join_path(&v.item.path(), v.field), reason: v.reason })
    }

    /// The model's name (a profile name, or what its source called it).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn core_count(&self) -> usize {
        self.cores.len()
    }

    /// Every core, in [`CoreId`] order.
    pub fn cores(&self) -> &[CoreModel] {
        &self.cores
    }

    pub fn core_types(&self) -> &[CoreType] {
        &self.core_types
    }

    pub fn clusters(&self) -> &[Cluster] {
        &self.clusters
    }

    /// All cores of the model as a mask.
    pub fn all_cores(&self) -> CoreMask {
        CoreMask::first(self.cores.len())
    }

    /// The type of `core`.
    ///
    /// # Panics
    /// Like every per-core query: if `core` is not below [`core_count`](Self::core_count).
    #[inline]
    pub fn core_type(&self, core: CoreId) -> &CoreType {
        &self.core_types[self.cores[core.index()].core_type]
    }

    /// The index (into [`clusters`](Self::clusters)) of `core`'s cluster.
    #[inline]
    pub fn cluster_of(&self, core: CoreId) -> usize {
        self.cores[core.index()].cluster
    }

    /// The cores of cluster `cluster`.
    pub fn cores_of_cluster(&self, cluster: usize) -> CoreMask {
        self.cores
            .iter()
            .enumerate()
            .filter(|(_, c)| c.cluster == cluster)
            .fold(CoreMask::NONE, |mask, (i, _)| mask.with(CoreId(i as u16)))
    }

    /// The frequency domain of `core`: the cores that always run at the same operating point.
    /// It is the cores of one type in one cluster, as in every SoC the built-in profiles
    /// describe (each clocks a cluster's CPUs together: one `opp-shared` table, one Linux
    /// cpufreq policy per cluster).
    #[inline]
    pub fn freq_domain_of(&self, core: CoreId) -> usize {
        self.freq_domain[core.index()]
    }

    /// How many frequency domains the model has (numbered from 0 in the order of their first
    /// core).
    pub fn freq_domain_count(&self) -> usize {
        self.freq_domain.iter().max().map_or(0, |&d| d + 1)
    }

    /// The cores of frequency domain `domain`.
    pub fn cores_of_freq_domain(&self, domain: usize) -> CoreMask {
        self.freq_domain
            .iter()
            .enumerate()
            .filter(|&(_, &d)| d == domain)
            .fold(CoreMask::NONE, |mask, (i, _)| mask.with(CoreId(i as u16)))
    }

    /// Power of `core` busy 100 % of the time at OPP `opp`.
    ///
    /// # Panics
    /// If `opp` is not below [`opp_count`](Self::opp_count).
    #[inline]
    pub fn opp_power_uw(&self, core: CoreId, opp: usize) -> u32 {
        self.core_type(core).opps[opp].power_uw
    }

    /// The index of `core`'s fastest OPP.
    #[inline]
    pub fn top_opp(&self, core: CoreId) -> usize {
        self.opp_count(core) - 1
    }

    /// The minimum residency of idle state `state` of `core`.
    ///
    /// # Panics
    /// If `state` is not an idle state of the core's type.
    #[inline]
    pub fn idle_min_residency(&self, core: CoreId, state: usize) -> Nanos {
        Nanos::from_micros(u64::from(self.core_type(core).idle_states[state].min_residency_us))
    }

    /// How many idle states `core` has (WFI included).
    #[inline]
    pub fn idle_state_count(&self, core: CoreId) -> usize {
        self.core_type(core).idle_states.len()
    }

    #[inline]
    pub fn opp_count(&self, core: CoreId) -> usize {
        self.core_type(core).opps.len()
    }

    /// The capacity of `core` at OPP `opp` (out of [`CAPACITY_SCALE`]).
    ///
    /// # Panics
    /// If `opp` is not below [`opp_count`](Self::opp_count).
    #[inline]
    pub fn capacity_at(&self, core: CoreId, opp: usize) -> u32 {
        self.core_type(core).opps[opp].capacity
    }

    /// The capacity of `core` at its fastest OPP.
    #[inline]
    pub fn max_capacity(&self, core: CoreId) -> u32 {
        self.core_type(core).opps.last().map_or(0, |o| o.capacity)
    }

    /// The slowest OPP of `core` whose capacity is at least `capacity`, or the fastest if none
    /// is enough.
    pub fn opp_for_capacity(&self, core: CoreId, capacity: u32) -> usize {
        let opps = &self.core_type(core).opps;
        opps.iter().position(|o| o.capacity >= capacity).unwrap_or(opps.len() - 1)
    }

    /// Power of `core` at OPP `opp` when busy a fraction `util` of the time, in
    /// [`UTIL_ONE`] units (clamped to 100 %). The idle remainder is not included: add
    /// [`idle_power_uw`](Self::idle_power_uw) for it if the core idles in between.
    ///
    /// # Panics
    /// If `opp` is not below [`opp_count`](Self::opp_count).
    #[inline]
    pub fn active_power_uw(&self, core: CoreId, opp: usize, util: u32) -> u32 {
        let full = self.core_type(core).opps[opp].power_uw as u64;
        (full * util.min(UTIL_ONE) as u64 / UTIL_ONE as u64) as u32
    }

    /// Power of `core` in idle state `state` (0 is WFI).
    ///
    /// # Panics
    /// If `state` is not an idle state of the core's type.
    #[inline]
    pub fn idle_power_uw(&self, core: CoreId, state: usize) -> u32 {
        self.core_type(core).idle_states[state].power_uw
    }

    #[inline]
    pub fn off_power_uw(&self, core: CoreId) -> u32 {
        self.core_type(core).off_power_uw
    }

    /// The deepest idle state of `core` worth entering for an idle period expected to last
    /// `predicted_idle`: the deepest whose minimum residency fits. WFI (0) when none does.
    #[inline]
    pub fn deepest_idle_state_for(&self, core: CoreId, predicted_idle: Nanos) -> usize {
        self.deepest_idle_state_within(core, predicted_idle, Nanos::MAX)
    }

    /// Like [`deepest_idle_state_for`](Self::deepest_idle_state_for), also keeping the exit
    /// latency within `exit_latency_limit` (for a core that must answer an interrupt quickly,
    /// e.g. one running a real-time vCPU). WFI (0) when nothing deeper qualifies.
    pub fn deepest_idle_state_within(&self, core: CoreId, predicted_idle: Nanos, exit_latency_limit: Nanos) -> usize {
        deepest_state(&self.core_type(core).idle_states, predicted_idle, exit_latency_limit).unwrap_or(0)
    }

    /// Power of the shared logic of cluster `cluster` in `state`.
    ///
    /// # Panics
    /// If `cluster` or the idle state index is out of range.
    #[inline]
    pub fn cluster_power_uw(&self, cluster: usize, state: ClusterState) -> u32 {
        let c = &self.clusters[cluster];
        match state {
            ClusterState::Active => c.active_power_uw,
            ClusterState::Idle(k) => c.idle_states[k].power_uw,
            ClusterState::Off => c.off_power_uw,
        }
    }

    /// The deepest cluster idle state of `cluster` worth entering when all its cores are
    /// expected to rest `predicted_idle`; `None` when none fits (the cluster stays up).
    pub fn deepest_cluster_state_for(&self, cluster: usize, predicted_idle: Nanos) -> Option<usize> {
        deepest_state(&self.clusters[cluster].idle_states, predicted_idle, Nanos::MAX)
    }

    /// Energy `core` uses running flat out at `opp` for `duration`.
    pub fn active_energy(&self, core: CoreId, opp: usize, duration: Nanos) -> Energy {
        Energy::from_power(self.core_type(core).opps[opp].power_uw as u64, duration)
    }

    /// The shortest time off that saves energy: turning a core off and on again costs at
    /// least what its deepest idle state's round trip does (PSCI implementations power a core
    /// down the same way for both), so it is that state's minimum residency, and at least 1 ms.
    pub fn off_min_residency(&self, core: CoreId) -> Nanos {
        let deepest = self.core_type(core).idle_states.last().map_or(0, |s| u64::from(s.min_residency_us));
        Nanos::from_micros(deepest.max(1000))
    }

    /// The same model under another name.
    pub fn renamed(mut self, name: impl Into<String>) -> EnergyModel {
        self.name = name.into();
        self
    }
}

fn deepest_state(states: &[IdleState], predicted_idle: Nanos, exit_latency_limit: Nanos) -> Option<usize> {
    states.iter().rposition(|s| {
        Nanos::from_micros(s.min_residency_us as u64) <= predicted_idle
            && Nanos::from_micros(s.exit_latency_us as u64) <= exit_latency_limit
    })
}

fn violation(item: Item, field: &'static str, reason: impl Into<String>) -> Violation {
    Violation { item, field, reason: reason.into() }
}

/// Checks everything [`EnergyModel::new`] promises and computes the capacities.
pub(crate) fn build(
    name: String,
    mut core_types: Vec<CoreType>,
    clusters: Vec<Cluster>,
    cores: Vec<CoreModel>,
) -> Result<EnergyModel, Violation> {
    if cores.is_empty() {
        return Err(violation(Item::Model, "cores", "must list at least one core"));
    }
    if cores.len() > CoreMask::MAX_CORES {
        return Err(violation(
            Item::Model,
            "cores",
            format!("at most {} cores are supported, got {}", CoreMask::MAX_CORES, cores.len()),
        ));
    }
    for (n, core) in cores.iter().enumerate() {
        if core.core_type >= core_types.len() {
            let reason = format!("unknown core type {} (the model has {})", core.core_type, core_types.len());
            return Err(violation(Item::Core(n), "core_type", reason));
        }
        if core.cluster >= clusters.len() {
            let reason = format!("unknown cluster {} (the model has {})", core.cluster, clusters.len());
            return Err(violation(Item::Core(n), "cluster", reason));
        }
    }
    for (t, ty) in core_types.iter().enumerate() {
        check_name(&ty.name, core_types[..t].iter().map(|o| o.name.as_str()), Item::CoreType(t))?;
        if !cores.iter().any(|c| c.core_type == t) {
            return Err(violation(Item::CoreType(t), "", "no core is of this type"));
        }
        check_core_type(t, ty)?;
    }
    for (c, cluster) in clusters.iter().enumerate() {
        check_name(&cluster.name, clusters[..c].iter().map(|o| o.name.as_str()), Item::Cluster(c))?;
        if !cores.iter().any(|core| core.cluster == c) {
            return Err(violation(Item::Cluster(c), "", "no core belongs to this cluster"));
        }
        check_cluster(c, cluster)?;
    }
    // Every type is in use, so the largest raw capacity is over the whole machine.
    let raw = |ty: &CoreType| ty.capacity_dmips_mhz as u64 * ty.opps[ty.opps.len() - 1].freq_khz as u64;
    let max_raw = core_types.iter().map(raw).max().unwrap_or(1).max(1);
    for (t, ty) in core_types.iter_mut().enumerate() {
        let top_capacity = raw(ty) * CAPACITY_SCALE as u64 / max_raw;
        let top_freq = ty.opps[ty.opps.len() - 1].freq_khz as u64;
        for (i, opp) in ty.opps.iter_mut().enumerate() {
            opp.capacity = (top_capacity * opp.freq_khz as u64 / top_freq) as u32;
            if opp.capacity == 0 {
                return Err(violation(
                    Item::Opp(t, i),
                    "freq_khz",
                    format!(
                        "capacity rounds to 0 (less than 1/{CAPACITY_SCALE} of the biggest core at its top \
                         frequency)"
                    ),
                ));
            }
        }
    }
    // Frequency domains: the cores of one type in one cluster share a clock, numbered in the
    // order of their first core.
    let mut domains: Vec<(usize, usize)> = Vec::new();
    let freq_domain = cores
        .iter()
        .map(|c| {
            let key = (c.cluster, c.core_type);
            domains.iter().position(|&d| d == key).unwrap_or_else(|| {
                domains.push(key);
                domains.len() - 1
            })
        })
        .collect();
    Ok(EnergyModel { name, cores, core_types, clusters, freq_domain })
}

fn check_name<'a>(name: &str, earlier: impl Iterator<Item = &'a str>, item: Item) -> Result<(), Violation> {
    if name.is_empty() {
        return Err(violation(item, "name", "must not be empty"));
    }
    let mut earlier = earlier;
    if earlier.any(|e| e == name) {
        return Err(violation(item, "name", format!("{name:?} is used twice")));
    }
    Ok(())
}

fn check_core_type(t: usize, ty: &CoreType) -> Result<(), Violation> {
    if ty.capacity_dmips_mhz == 0 {
        return Err(violation(Item::CoreType(t), "capacity_dmips_mhz", "must be greater than 0"));
    }
    if ty.opps.is_empty() {
        return Err(violation(Item::CoreType(t), "opps", "must list at least one operating point"));
    }
    for (i, opp) in ty.opps.iter().enumerate() {
        if opp.freq_khz == 0 {
            return Err(violation(Item::Opp(t, i), "freq_khz", "must be greater than 0"));
        }
        if opp.power_uw == 0 {
            return Err(violation(Item::Opp(t, i), "power_uw", "must be greater than 0"));
        }
        if i > 0 {
            let prev = &ty.opps[i - 1];
            if opp.freq_khz <= prev.freq_khz {
                let reason = format!(
                    "not increasing ({} kHz after {} kHz): list operating points from slowest to fastest",
                    opp.freq_khz, prev.freq_khz
                );
                return Err(violation(Item::Opp(t, i), "freq_khz", reason));
            }
            if opp.power_uw < prev.power_uw {
                let reason = format!(
                    "decreases with frequency ({} µW at {} kHz, {} µW at {} kHz)",
                    opp.power_uw, opp.freq_khz, prev.power_uw, prev.freq_khz
                );
                return Err(violation(Item::Opp(t, i), "power_uw", reason));
            }
        }
    }
    if ty.idle_states.is_empty() {
        return Err(violation(Item::CoreType(t), "idle_states", "must list at least one idle state (WFI)"));
    }
    check_states(&ty.idle_states, |j| Item::IdleState(t, j))?;
    let slowest = &ty.opps[0];
    for (j, state) in ty.idle_states.iter().enumerate() {
        if state.power_uw > slowest.power_uw {
            let reason = format!(
                "{} µW is more than running at the slowest operating point ({} µW at {} kHz)",
                state.power_uw, slowest.power_uw, slowest.freq_khz
            );
            return Err(violation(Item::IdleState(t, j), "power_uw", reason));
        }
    }
    let deepest = &ty.idle_states[ty.idle_states.len() - 1];
    if ty.off_power_uw > deepest.power_uw {
        let reason = format!(
            "{} µW is more than the deepest idle state {:?} ({} µW)",
            ty.off_power_uw, deepest.name, deepest.power_uw
        );
        return Err(violation(Item::CoreType(t), "off_power_uw", reason));
    }
    Ok(())
}

fn check_cluster(c: usize, cluster: &Cluster) -> Result<(), Violation> {
    check_states(&cluster.idle_states, |k| Item::ClusterState(c, k))?;
    if let Some(first) = cluster.idle_states.first() {
        if first.power_uw > cluster.active_power_uw {
            let reason =
                format!("{} µW is more than the active cluster ({} µW)", first.power_uw, cluster.active_power_uw);
            return Err(violation(Item::ClusterState(c, 0), "power_uw", reason));
        }
    }
    let floor = cluster.idle_states.last().map_or(cluster.active_power_uw, |s| s.power_uw);
    if cluster.off_power_uw > floor {
        let reason = format!("{} µW is more than the cluster's lowest other state ({floor} µW)", cluster.off_power_uw);
        return Err(violation(Item::Cluster(c), "off_power_uw", reason));
    }
    Ok(())
}

/// The shallow-to-deep order shared by core and cluster idle states.
fn check_states(states: &[IdleState], item: impl Fn(usize) -> Item) -> Result<(), Violation> {
    for (j, state) in states.iter().enumerate() {
        if state.name.is_empty() {
            return Err(violation(item(j), "name", "must not be empty"));
        }
        if j == 0 {
            continue;
        }
        let prev = &states[j - 1];
        let order = |field: &'static str, this: u32, before: u32| {
            violation(
                item(j),
                field,
                format!(
                    "{this} is less than the {before} of the shallower state {:?}: list idle states from \
                     shallowest to deepest",
                    prev.name
                ),
            )
        };
        if state.min_residency_us < prev.min_residency_us {
            return Err(order("min_residency_us", state.min_residency_us, prev.min_residency_us));
        }
        if state.exit_latency_us < prev.exit_latency_us {
            return Err(order("exit_latency_us", state.exit_latency_us, prev.exit_latency_us));
        }
        if state.power_uw > prev.power_uw {
            let reason = format!(
                "{} µW is more than the shallower state {:?} ({} µW): a deeper state must not cost more",
                state.power_uw, prev.name, prev.power_uw
            );
            return Err(violation(item(j), "power_uw", reason));
        }
    }
    Ok(())
}

/// Power of an operating point from the Linux Energy Model's device-tree formula
/// (`_get_dt_power` in `drivers/opp/of.c`, in µW since commit ae6ccaa65038, 2022):
/// `P[µW] = C × V[mV]² × f[MHz] / 10⁶`, with `C` the `dynamic-power-coefficient` and V and f
/// truncated to whole mV and MHz as Linux does. `None` if the result does not fit in `u32`.
pub fn dynamic_power_uw(coefficient: u32, microvolt: u32, freq_hz: u64) -> Option<u32> {
    let mv = (microvolt / 1000) as u128;
    let mhz = (freq_hz / 1_000_000) as u128;
    u32::try_from(coefficient as u128 * mv * mv * mhz / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    fn state(name: &str, power_uw: u32, entry: u32, exit: u32, residency: u32) -> IdleState {
        IdleState {
            name: name.to_string(),
            power_uw,
            entry_latency_us: entry,
            exit_latency_us: exit,
            min_residency_us: residency,
        }
    }

    fn opp(freq_khz: u32, power_uw: u32) -> Opp {
        Opp { freq_khz, capacity: 0, power_uw }
    }

    fn little() -> CoreType {
        CoreType {
            name: "little".to_string(),
            capacity_dmips_mhz: 512,
            opps: vec![opp(500_000, 50_000), opp(1_000_000, 150_000)],
            idle_states: vec![state("wfi", 10_000, 1, 1, 1), state("sleep", 1_000, 100, 200, 1_000)],
            off_power_uw: 0,
        }
    }

    fn big() -> CoreType {
        CoreType {
            name: "big".to_string(),
            capacity_dmips_mhz: 1024,
            opps: vec![opp(1_000_000, 300_000), opp(2_000_000, 1_000_000)],
            idle_states: vec![state("wfi", 20_000, 1, 1, 1)],
            off_power_uw: 0,
        }
    }

    fn cluster(name: &str) -> Cluster {
        Cluster {
            name: name.to_string(),
            active_power_uw: 30_000,
            idle_states: vec![state("cluster-sleep", 0, 500, 1_000, 3_000)],
            off_power_uw: 0,
        }
    }

    fn big_little() -> EnergyModel {
        EnergyModel::new(
            "test",
            vec![little(), big()],
            vec![cluster("c0"), cluster("c1")],
            vec![
                CoreModel { core_type: 0, cluster: 0 },
                CoreModel { core_type: 0, cluster: 0 },
                CoreModel { core_type: 1, cluster: 1 },
            ],
        )
        .unwrap()
    }

    fn field_error(types: Vec<CoreType>, clusters: Vec<Cluster>, cores: Vec<CoreModel>) -> (String, String) {
        match EnergyModel::new("bad", types, clusters, cores) {
            Err(ModelError::Field { path, reason }) => (path, reason),
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    fn one_core(ty: CoreType) -> (String, String) {
        field_error(vec![ty], vec![cluster("c0")], vec![CoreModel { core_type: 0, cluster: 0 }])
    }

    #[test]
    fn capacities_are_normalized_like_linux() {
        let m = big_little();
        // little: 512 × 1 GHz against big: 1024 × 2 GHz.
        assert_eq!(m.max_capacity(CoreId(2)), 1024);
        assert_eq!(m.capacity_at(CoreId(2), 0), 512);
        assert_eq!(m.max_capacity(CoreId(0)), 256);
        assert_eq!(m.capacity_at(CoreId(1), 0), 128);
        assert_eq!(m.core_type(CoreId(1)).name, "little");
        assert_eq!(m.cluster_of(CoreId(2)), 1);
        assert_eq!(m.cores_of_cluster(0), CoreMask(0b011));
        assert_eq!(m.all_cores(), CoreMask(0b111));
        assert_eq!(m.freq_domain_count(), 2);
        assert_eq!(m.freq_domain_of(CoreId(1)), 0);
        assert_eq!(m.cores_of_freq_domain(1), CoreMask(0b100));
    }

    #[test]
    fn frequency_domains_are_a_clusters_cores_of_one_type() {
        // Two types in one cluster (as DynamIQ): two domains; the profiles: one per cluster.
        let m = EnergyModel::new(
            "mixed",
            vec![little(), big()],
            vec![cluster("c0")],
            vec![
                CoreModel { core_type: 1, cluster: 0 },
                CoreModel { core_type: 0, cluster: 0 },
                CoreModel { core_type: 0, cluster: 0 },
            ],
        )
        .unwrap();
        assert_eq!(m.freq_domain_count(), 2);
        assert_eq!(m.cores_of_freq_domain(0), CoreMask(0b001));
        assert_eq!(m.cores_of_freq_domain(1), CoreMask(0b110));
        for (name, domains) in [("phone-dual", 1), ("sd410", 1), ("hikey960", 2)] {
            let m = EnergyModel::builtin(name).unwrap();
            assert_eq!(m.freq_domain_count(), domains, "{name}");
            for k in 0..m.clusters().len() {
                assert_eq!(m.cores_of_freq_domain(k), m.cores_of_cluster(k), "{name}");
            }
        }
    }

    #[test]
    fn capacity_rounds_down() {
        let mut slow = little();
        slow.capacity_dmips_mhz = 1000;
        slow.opps = vec![opp(333_333, 100_000), opp(1_000_000, 200_000)];
        let m = EnergyModel::new("m", vec![slow], vec![cluster("c")], vec![CoreModel { core_type: 0, cluster: 0 }])
            .unwrap();
        assert_eq!(m.max_capacity(CoreId(0)), 1024);
        assert_eq!(m.capacity_at(CoreId(0), 0), 341); // 1024 × 333333 / 1000000 = 341.3
    }

    #[test]
    fn opp_for_capacity_picks_the_slowest_that_suffices() {
        let m = big_little();
        assert_eq!(m.opp_for_capacity(CoreId(2), 0), 0);
        assert_eq!(m.opp_for_capacity(CoreId(2), 512), 0);
        assert_eq!(m.opp_for_capacity(CoreId(2), 513), 1);
        assert_eq!(m.opp_for_capacity(CoreId(2), 5000), 1);
    }

    #[test]
    fn power_queries() {
        let m = big_little();
        assert_eq!(m.active_power_uw(CoreId(2), 1, UTIL_ONE), 1_000_000);
        assert_eq!(m.active_power_uw(CoreId(2), 1, UTIL_ONE / 4), 250_000);
        assert_eq!(m.active_power_uw(CoreId(2), 1, UTIL_ONE * 3), 1_000_000, "clamped to 100 %");
        assert_eq!(m.active_power_uw(CoreId(0), 0, 0), 0);
        assert_eq!(m.idle_power_uw(CoreId(0), 1), 1_000);
        assert_eq!(m.off_power_uw(CoreId(0)), 0);
        assert_eq!(m.cluster_power_uw(0, ClusterState::Active), 30_000);
        assert_eq!(m.cluster_power_uw(0, ClusterState::Idle(0)), 0);
        assert_eq!(m.cluster_power_uw(0, ClusterState::Off), 0);
        assert_eq!(m.active_energy(CoreId(2), 1, Nanos::from_millis(1)).as_nanojoules(), 1_000_000);
    }

    #[test]
    fn idle_state_choice_respects_residency_and_latency() {
        let m = big_little();
        let little = CoreId(0);
        assert_eq!(m.deepest_idle_state_for(little, Nanos::ZERO), 0);
        assert_eq!(m.deepest_idle_state_for(little, Nanos::from_micros(999)), 0);
        assert_eq!(m.deepest_idle_state_for(little, Nanos::from_micros(1_000)), 1);
        assert_eq!(m.deepest_idle_state_for(little, Nanos::from_secs(10)), 1);
        assert_eq!(m.deepest_idle_state_within(little, Nanos::from_secs(10), Nanos::from_micros(199)), 0);
        assert_eq!(m.deepest_idle_state_within(little, Nanos::from_secs(10), Nanos::from_micros(200)), 1);
        assert_eq!(m.deepest_idle_state_for(CoreId(2), Nanos::from_secs(10)), 0, "big has only WFI");
        assert_eq!(m.deepest_cluster_state_for(0, Nanos::from_micros(2_999)), None);
        assert_eq!(m.deepest_cluster_state_for(0, Nanos::from_micros(3_000)), Some(0));
    }

    #[test]
    fn dynamic_power_matches_the_linux_formula() {
        // hi6220 (HiKey) top OPP: C = 311, 1.33 V, 1.2 GHz: 311 × 1330² × 1200 / 10⁶ µW.
        assert_eq!(dynamic_power_uw(311, 1_330_000, 1_200_000_000), Some(660_153));
        // Sub-mV and sub-MHz parts are dropped, as in Linux.
        assert_eq!(dynamic_power_uw(100, 1_000_999, 998_400_000), dynamic_power_uw(100, 1_000_000, 998_000_000));
        assert_eq!(dynamic_power_uw(u32::MAX, 2_000_000, 5_000_000_000), None);
    }

    #[test]
    fn rejects_structural_mistakes() {
        let c0 = || vec![cluster("c0")];
        let core = |core_type, cluster| CoreModel { core_type, cluster };
        let (path, reason) = field_error(vec![little()], c0(), vec![]);
        assert_eq!((path.as_str(), reason.as_str()), ("cores", "must list at least one core"));
        let (path, reason) = field_error(vec![little()], c0(), vec![core(1, 0)]);
        assert_eq!(path, "cores[0].core_type");
        assert!(reason.contains("unknown core type 1"), "{reason}");
        let (path, _) = field_error(vec![little()], c0(), vec![core(0, 3)]);
        assert_eq!(path, "cores[0].cluster");
        let (path, reason) = field_error(vec![little(), big()], c0(), vec![core(0, 0)]);
        assert_eq!((path.as_str(), reason.as_str()), ("core_types[1]", "no core is of this type"));
        let (path, reason) = field_error(vec![little()], vec![cluster("a"), cluster("b")], vec![core(0, 0)]);
        assert_eq!((path.as_str(), reason.as_str()), ("clusters[1]", "no core belongs to this cluster"));
        let (path, reason) = field_error(vec![little(), little()], c0(), vec![core(0, 0), core(1, 0)]);
        assert_eq!(path, "core_types[1].name");
        assert!(reason.contains("used twice"), "{reason}");
        let (path, _) = field_error(vec![little()], c0(), vec![core(0, 0); 65]);
        assert_eq!(path, "cores");
    }

    #[test]
    fn rejects_bad_operating_points() {
        let mut t = little();
        t.opps.swap(0, 1);
        let (path, reason) = one_core(t);
        assert_eq!(path, "core_types[0].opps[1].freq_khz");
        assert!(reason.contains("not increasing (500000 kHz after 1000000 kHz)"), "{reason}");

        let mut t = little();
        t.opps[1].power_uw = 40_000;
        let (path, reason) = one_core(t);
        assert_eq!(path, "core_types[0].opps[1].power_uw");
        assert!(reason.contains("decreases with frequency"), "{reason}");

        let mut t = little();
        t.opps[0].power_uw = 0;
        assert_eq!(one_core(t).0, "core_types[0].opps[0].power_uw");

        let mut t = little();
        t.opps.clear();
        assert_eq!(one_core(t).0, "core_types[0].opps");

        let mut t = little();
        t.capacity_dmips_mhz = 0;
        assert_eq!(one_core(t).0, "core_types[0].capacity_dmips_mhz");
    }

    #[test]
    fn rejects_idle_states_out_of_order() {
        let mut t = little();
        t.idle_states.swap(0, 1);
        let (path, reason) = one_core(t);
        assert_eq!(path, "core_types[0].idle_states[1].min_residency_us");
        assert!(reason.contains("shallowest to deepest"), "{reason}");

        let mut t = little();
        t.idle_states[1].exit_latency_us = 0;
        assert_eq!(one_core(t).0, "core_types[0].idle_states[1].exit_latency_us");

        let mut t = little();
        t.idle_states[1].power_uw = 11_000;
        assert_eq!(one_core(t).0, "core_types[0].idle_states[1].power_uw");

        let mut t = little();
        t.idle_states[0].power_uw = 60_000;
        let (path, reason) = one_core(t);
        assert_eq!(path, "core_types[0].idle_states[0].power_uw");
        assert!(reason.contains("more than running"), "{reason}");

        let mut t = little();
        t.idle_states.clear();
        assert_eq!(one_core(t).0, "core_types[0].idle_states");

        let mut t = little();
        t.off_power_uw = 2_000;
        assert_eq!(one_core(t).0, "core_types[0].off_power_uw");
    }

    #[test]
    fn rejects_inconsistent_cluster_states() {
        let core = vec![CoreModel { core_type: 0, cluster: 0 }];
        let mut c = cluster("c0");
        c.idle_states[0].power_uw = 40_000;
        let (path, _) = field_error(vec![little()], vec![c], core.clone());
        assert_eq!(path, "clusters[0].idle_states[0].power_uw");
        let mut c = cluster("c0");
        c.idle_states.insert(0, state("deep-first", 0, 1, 1, 5_000));
        let (path, _) = field_error(vec![little()], vec![c], core.clone());
        assert_eq!(path, "clusters[0].idle_states[1].min_residency_us");
        let mut c = cluster("c0");
        c.off_power_uw = 1;
        let (path, _) = field_error(vec![little()], vec![c], core);
        assert_eq!(path, "clusters[0].off_power_uw");
    }

    #[test]
    fn errors_display_where_and_why() {
        let e = ModelError::Node {
            node: "/opp-table/opp-998400000".to_string(),
            property: "opp-hz".to_string(),
            reason: "not increasing".to_string(),
        };
        assert_eq!(e.to_string(), "/opp-table/opp-998400000: opp-hz: not increasing");
        let e = ModelError::Node { node: "/".to_string(), property: String::new(), reason: "no /cpus".to_string() };
        assert_eq!(e.to_string(), "/: no /cpus");
        let e = ModelError::Field { path: "clusters[0].name".to_string(), reason: "must not be empty".to_string() };
        assert_eq!(e.to_string(), "clusters[0].name: must not be empty");
        let e = ModelError::Syntax { line: 3, column: 7, reason: "expected `=`".to_string() };
        assert_eq!(e.to_string(), "line 3, column 7: expected `=`");
        let e = ModelError::Blob { reason: "bad magic".to_string() };
        assert_eq!(e.to_string(), "not a readable device tree: bad magic");
    }
}
