//! Residency and energy accounting: where each core spent its time, how often it changed
//! state, and whose work the energy went into.
//!
//! The platform reports each core's timeline as consecutive intervals: busy at an OPP running a
//! vCPU ([`Accounting::core_busy`]), in an idle state ([`Accounting::core_idle`]) or off
//! ([`Accounting::core_off`]), and each change of state ([`Accounting::transition`]). Intervals
//! of a core must come in time order and must not overlap; a hole between two is accepted but
//! kept as unaccounted time, so that [`Accounting::check_complete`] (every core's residencies
//! add up to the run) reports it.
//!
//! Energy is the model's power of the state times the time in it, kept exactly ([`Energy`]).
//! A core's busy energy is charged to the vCPU it ran and that vCPU's VM. Idle and off energy
//! is charged to no one: a core idles because no guest needs it, and splitting that energy
//! among guests would make one guest's bill depend on how busy the others are. It is reported
//! per core and in total as [`Accounting::unattributed_energy`].
//!
//! Books made with [`Accounting::with_clusters`] also account each cluster's shared logic
//! (up, in a cluster idle state, or off), derived from its cores' timelines: see the `clusters`
//! module for the rules. That needs every core's timeline in one set of books; the hypervisor,
//! whose cores keep books of their own, uses [`Accounting::new`], which leaves clusters out.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use vcpu_runtime::ids::{CoreId, VcpuId, VmId};
use vcpu_runtime::time::{Instant, Nanos};

use crate::clusters::{Clusters, Hold};
use crate::energy::Energy;
use crate::{ClusterState, EnergyModel};

/// What a core is doing over an interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CoreState {
    /// Running a vCPU at the OPP with this index.
    Busy {
        opp: usize,
    },
    /// In the idle state with this index (0 is WFI).
    Idle {
        state: usize,
    },
    Off,
}

impl fmt::Display for CoreState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreState::Busy { opp } => write!(f, "busy at OPP {opp}"),
            CoreState::Idle { state } => write!(f, "idle state {state}"),
            CoreState::Off => f.write_str("off"),
        }
    }
}

/// A core's energy by kind of state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreEnergy {
    pub busy: Energy,
    pub idle: Energy,
    pub off: Energy,
}

impl CoreEnergy {
    pub fn total(&self) -> Energy {
        self.busy + self.idle + self.off
    }
}

/// A report the accounting refused, or a run that does not add up. Nothing is recorded by a
/// call that returns an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccountingError {
    NoSuchCore(CoreId),
    NoSuchVcpu(VcpuId),
    NoSuchVm(VmId),
    /// The OPP or idle state does not exist on this core.
    NoSuchState {
        core: CoreId,
        state: CoreState,
    },
    EndsBeforeStart {
        core: CoreId,
        from: Instant,
        to: Instant,
    },
    /// The interval starts before the end of the core's last interval (or before the start).
    Overlaps {
        core: CoreId,
        from: Instant,
        accounted_until: Instant,
    },
    /// A "transition" to the state the core is already in.
    NotATransition {
        core: CoreId,
        state: CoreState,
    },
    /// The transition starts from a state the core's last interval was not in.
    WrongFromState {
        core: CoreId,
        from: CoreState,
        last: CoreState,
    },
    /// The core's residencies do not add up to the run (see [`Accounting::check_complete`]).
    Incomplete {
        core: CoreId,
        accounted: Nanos,
        run: Nanos,
    },
}

impl fmt::Display for AccountingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            AccountingError::NoSuchCore(core) => write!(f, "no core {core} in the energy model"),
            AccountingError::NoSuchVcpu(vcpu) => write!(f, "vCPU {vcpu} is not accounted"),
            AccountingError::NoSuchVm(vm) => write!(f, "VM {vm} is not accounted"),
            AccountingError::NoSuchState { core, state } => write!(f, "core {core}: has no state \"{state}\""),
            AccountingError::EndsBeforeStart { core, from, to } => {
                write!(f, "core {core}: interval ends ({}ns) before it starts ({}ns)", to.as_nanos(), from.as_nanos())
            }
            AccountingError::Overlaps { core, from, accounted_until } => write!(
                f,
                "core {core}: interval from {}ns overlaps time already accounted up to {}ns",
                from.as_nanos(),
                accounted_until.as_nanos()
            ),
            AccountingError::NotATransition { core, state } => write!(f, "core {core}: \"{state}\" to itself"),
            AccountingError::WrongFromState { core, from, last } => {
                write!(f, "core {core}: transition from \"{from}\", but the core was \"{last}\"")
            }
            AccountingError::Incomplete { core, accounted, run } => {
                write!(f, "core {core}: residencies add up to {accounted}, the run lasted {run}")
            }
        }
    }
}

impl core::error::Error for AccountingError {}

/// One core's books. States are numbered as slots: the OPPs, then the idle states, then off.
#[derive(Clone, Debug)]
struct CoreAccount {
    accounted_until: Instant,
    last: Option<CoreState>,
    /// The slot of `last`: a state's slot names it, so the next booking compares slots rather
    /// than finding the last state's slot again (a rest's booking, at every wake-up).
    last_slot: Option<usize>,
    residency: Vec<Nanos>,
    unaccounted: Nanos,
    /// `slots × slots`, row = from.
    transitions: Vec<u64>,
    /// Per slot: intervals booked in it (each rest is one entry into its state).
    entries: Vec<u64>,
    /// The core type's operating points and idle states, kept here so that finding a state's
    /// slot, which every booking does up to three times, is two compares (a core books twice
    /// per rest: the runs before it and the rest).
    opps: usize,
    idle_states: usize,
}

impl CoreAccount {
    /// Checks that `[from, to)` may be booked next: it does not end before it starts, and it
    /// does not reach back into time already booked.
    fn check_interval(&self, core: CoreId, from: Instant, to: Instant) -> Result<(), AccountingError> {
        if to < from {
            return Err(AccountingError::EndsBeforeStart { core, from, to });
        }
        if from < self.accounted_until {
            return Err(AccountingError::Overlaps { core, from, accounted_until: self.accounted_until });
        }
        Ok(())
    }

    /// Books the checked interval `[from, to)` in slot `s` (of `state`); returns its length.
    // Inlined: a core's every wake-up books two slots (`Accounting::book_two`).
    #[inline(always)]
    fn book_slot(&mut self, s: usize, state: CoreState, from: Instant, to: Instant) -> Nanos {
        let duration = to - from;
        self.unaccounted += from - self.accounted_until;
        self.residency[s] += duration;
        self.entries[s] += 1;
        self.accounted_until = to;
        self.last = Some(state);
        self.last_slot = Some(s);
        duration
    }

    fn slot(&self, core: CoreId, state: CoreState) -> Result<usize, AccountingError> {
        match state {
            CoreState::Busy { opp } if opp < self.opps => Ok(opp),
            CoreState::Idle { state } if state < self.idle_states => Ok(self.opps + state),
            CoreState::Off => Ok(self.opps + self.idle_states),
            _ => Err(AccountingError::NoSuchState { core, state }),
        }
    }
}

/// See the [module documentation](self).
#[derive(Clone, Debug)]
pub struct Accounting {
    model: EnergyModel,
    start: Instant,
    cores: Vec<CoreAccount>,
    vcpus: Vec<Energy>,
    vms: Vec<Energy>,
    clusters: Option<Clusters>,
}

impl Accounting {
    /// Books for every core of `model`, for vCPUs `0..vcpus` and VMs `0..vms`, from `start`.
    /// This is the only call that allocates.
    pub fn new(model: &EnergyModel, vcpus: usize, vms: usize, start: Instant) -> Accounting {
        let cores = (0..model.core_count())
            .map(|i| {
                let slots = slot_count(model, CoreId(i as u16));
                CoreAccount {
                    accounted_until: start,
                    last: None,
                    last_slot: None,
                    residency: vec![Nanos::ZERO; slots],
                    unaccounted: Nanos::ZERO,
                    transitions: vec![0; slots * slots],
                    entries: vec![0; slots],
                    opps: model.core_type(CoreId(i as u16)).opps.len(),
                    idle_states: model.core_type(CoreId(i as u16)).idle_states.len(),
                }
            })
            .collect();
        Accounting {
            model: model.clone(),
            start,
            cores,
            vcpus: vec![Energy::ZERO; vcpus],
            vms: vec![Energy::ZERO; vms],
            clusters: None,
        }
    }

    /// Like [`new`](Self::new), and accounting every cluster's shared logic from its cores'
    /// timelines (see the [module documentation](self)): all of a cluster's cores must be
    /// booked here. Intervals of a core that runs ahead of the others of its cluster are kept
    /// until they catch up, so this allocates as it goes.
    pub fn with_clusters(model: &EnergyModel, vcpus: usize, vms: usize, start: Instant) -> Accounting {
        let mut a = Accounting::new(model, vcpus, vms, start);
        a.clusters = Some(Clusters::new(model, start));
        a
    }

    /// Whether cluster energy is accounted ([`with_clusters`](Self::with_clusters)).
    pub fn tracks_clusters(&self) -> bool {
        self.clusters.is_some()
    }

    pub fn model(&self) -> &EnergyModel {
        &self.model
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    /// `core` ran `vcpu` (of `vm`) at OPP `opp` from `from` to `to`. The energy is charged to
    /// both.
    pub fn core_busy(
        &mut self,
        core: CoreId,
        opp: usize,
        vcpu: VcpuId,
        vm: VmId,
        from: Instant,
        to: Instant,
    ) -> Result<(), AccountingError> {
        if vcpu.index() >= self.vcpus.len() {
            return Err(AccountingError::NoSuchVcpu(vcpu));
        }
        if vm.index() >= self.vms.len() {
            return Err(AccountingError::NoSuchVm(vm));
        }
        let duration = self.record(core, CoreState::Busy { opp }, from, to)?;
        let energy = self.model.active_energy(core, opp, duration);
        self.vcpus[vcpu.index()] += energy;
        self.vms[vm.index()] += energy;
        Ok(())
    }

    /// `core` was in idle state `state` from `from` to `to`.
    pub fn core_idle(&mut self, core: CoreId, state: usize, from: Instant, to: Instant) -> Result<(), AccountingError> {
        self.record(core, CoreState::Idle { state }, from, to).map(drop)
    }

    /// `core` was off from `from` to `to`.
    pub fn core_off(&mut self, core: CoreId, from: Instant, to: Instant) -> Result<(), AccountingError> {
        self.record(core, CoreState::Off, from, to).map(drop)
    }

    /// `core` changed from `from` to `to` (an OPP change, entering or leaving an idle state,
    /// powering off or on). `from` must be the state of the core's last interval, if it has
    /// one.
    pub fn transition(&mut self, core: CoreId, from: CoreState, to: CoreState) -> Result<(), AccountingError> {
        let account = self.cores.get_mut(core.index()).ok_or(AccountingError::NoSuchCore(core))?;
        let from_slot = account.slot(core, from)?;
        let to_slot = account.slot(core, to)?;
        if from == to {
            return Err(AccountingError::NotATransition { core, state: from });
        }
        if let Some(last) = account.last.filter(|&last| last != from) {
            return Err(AccountingError::WrongFromState { core, from, last });
        }
        let slots = account.residency.len();
        account.transitions[from_slot * slots + to_slot] += 1;
        account.last = Some(to);
        account.last_slot = Some(to_slot);
        Ok(())
    }

    fn record(&mut self, core: CoreId, state: CoreState, from: Instant, to: Instant) -> Result<Nanos, AccountingError> {
        let account = self.cores.get_mut(core.index()).ok_or(AccountingError::NoSuchCore(core))?;
        let s = account.slot(core, state)?;
        account.check_interval(core, from, to)?;
        let duration = account.book_slot(s, state, from, to);
        self.push_cluster(core, state, from, to);
        Ok(duration)
    }

    /// The clusters' side of a core's interval (when clusters are accounted). Inlined: without
    /// clusters (the hypervisor's books) it is one test.
    #[inline(always)]
    fn push_cluster(&mut self, core: CoreId, state: CoreState, from: Instant, to: Instant) {
        if let Some(clusters) = self.clusters.as_mut() {
            let hold = match state {
                CoreState::Busy { .. } => Hold::Up,
                // The cluster can power down only once every core has: in its deepest state
                // (not WFI), or off.
                CoreState::Idle { state } if state > 0 && state + 1 == self.model.idle_state_count(core) => Hold::Rest,
                CoreState::Idle { .. } => Hold::Up,
                CoreState::Off => Hold::Off,
            };
            clusters.push(&self.model, core, hold, from, to);
        }
    }

    /// Time `core` spent in `state`.
    ///
    /// # Panics
    /// Like the other read-outs: if `core` or the state does not exist.
    pub fn residency(&self, core: CoreId, state: CoreState) -> Nanos {
        self.cores[core.index()].residency[slot_or_panic(&self.model, core, state)]
    }

    /// The time of every interval of `core` added up.
    pub fn residency_sum(&self, core: CoreId) -> Nanos {
        self.cores[core.index()].residency.iter().fold(Nanos::ZERO, |sum, &r| sum + r)
    }

    /// Holes between `core`'s intervals.
    pub fn unaccounted(&self, core: CoreId) -> Nanos {
        self.cores[core.index()].unaccounted
    }

    /// The end of `core`'s last interval (the start if none).
    pub fn accounted_until(&self, core: CoreId) -> Instant {
        self.cores[core.index()].accounted_until
    }

    /// How often `core` went from `from` to `to`.
    pub fn transitions(&self, core: CoreId, from: CoreState, to: CoreState) -> u64 {
        let account = &self.cores[core.index()];
        let slots = account.residency.len();
        account.transitions[slot_or_panic(&self.model, core, from) * slots + slot_or_panic(&self.model, core, to)]
    }

    /// How often `core` changed state at all.
    pub fn transition_count(&self, core: CoreId) -> u64 {
        self.cores[core.index()].transitions.iter().sum()
    }

    /// `core`'s energy: the power of each state times the time in it.
    pub fn core_energy(&self, core: CoreId) -> CoreEnergy {
        let ty = self.model.core_type(core);
        let residency = &self.cores[core.index()].residency;
        let opps = ty.opps.len();
        let states = ty.idle_states.len();
        let busy = ty.opps.iter().zip(&residency[..opps]).map(|(o, &t)| Energy::from_power(o.power_uw as u64, t));
        let idle = ty.idle_states.iter().zip(&residency[opps..opps + states]);
        let entries = &self.cores[core.index()].entries;
        let wfi = ty.idle_states.first().map_or(0, |s| u64::from(s.power_uw));
        // Going into a state deeper than WFI and out again costs what the state saves over its
        // minimum residency (that is what the minimum residency is: the break-even time), once
        // per entry; a rest shorter than that costs more than WFI would have.
        let entry_cost = |power_uw: u64, residency: Nanos, n: u64| {
            Energy(Energy::from_power(wfi.saturating_sub(power_uw), residency).0 * u128::from(n))
        };
        let idle_entry: Energy = ty
            .idle_states
            .iter()
            .enumerate()
            .map(|(i, s)| {
                entry_cost(u64::from(s.power_uw), Nanos::from_micros(u64::from(s.min_residency_us)), entries[opps + i])
            })
            .sum();
        CoreEnergy {
            busy: busy.sum(),
            idle: idle.map(|(s, &t)| Energy::from_power(s.power_uw as u64, t)).sum::<Energy>() + idle_entry,
            off: Energy::from_power(ty.off_power_uw as u64, residency[opps + states])
                + entry_cost(u64::from(ty.off_power_uw), self.model.off_min_residency(core), entries[opps + states]),
        }
    }

    /// Books `[from, to)` of `core` as `state` (a busy interval charged to `owner`'s vCPU and
    /// VM), counting a transition when the state differs from the core's last one.
    ///
    /// Everything is checked before anything is booked (an error books nothing), and the
    /// core's account is looked up once: the hypervisor books twice per rest of a core, so this
    /// is on its path from a wake-up to the next guest entry.
    pub fn book(
        &mut self,
        core: CoreId,
        state: CoreState,
        owner: Option<(VcpuId, VmId)>,
        from: Instant,
        to: Instant,
    ) -> Result<(), AccountingError> {
        let charged = match (state, owner) {
            (CoreState::Busy { .. }, Some((vcpu, vm))) => {
                if vcpu.index() >= self.vcpus.len() {
                    return Err(AccountingError::NoSuchVcpu(vcpu));
                }
                if vm.index() >= self.vms.len() {
                    return Err(AccountingError::NoSuchVm(vm));
                }
                Some((vcpu, vm))
            }
            _ => None,
        };
        let account = self.cores.get_mut(core.index()).ok_or(AccountingError::NoSuchCore(core))?;
        let s = account.slot(core, state)?;
        let from_slot = account.last_slot.filter(|&l| l != s);
        account.check_interval(core, from, to)?;
        if let Some(f) = from_slot {
            let slots = account.residency.len();
            account.transitions[f * slots + s] += 1;
        }
        let duration = account.book_slot(s, state, from, to);
        self.push_cluster(core, state, from, to);
        if let (CoreState::Busy { opp }, Some((vcpu, vm))) = (state, charged) {
            let energy = self.model.active_energy(core, opp, duration);
            self.vcpus[vcpu.index()] += energy;
            self.vms[vm.index()] += energy;
        }
        Ok(())
    }

    /// Books `[from, mid)` as `first` and then `[mid, to)` as `second`, with their transitions,
    /// as two [`book`](Self::book)s without owners would, in one lookup (a core's runs and the
    /// rest after them: the hypervisor's every wake-up). Both intervals must be non-empty;
    /// everything is checked before anything is booked.
    pub fn book_two(
        &mut self,
        core: CoreId,
        first: CoreState,
        second: CoreState,
        from: Instant,
        mid: Instant,
        to: Instant,
    ) -> Result<(), AccountingError> {
        let account = self.cores.get_mut(core.index()).ok_or(AccountingError::NoSuchCore(core))?;
        let (s1, s2) = (account.slot(core, first)?, account.slot(core, second)?);
        let last_slot = account.last_slot.filter(|&l| l != s1);
        // Both non-empty (a caller with an empty stretch books through `book`).
        if mid <= from {
            return Err(AccountingError::EndsBeforeStart { core, from, to: mid });
        }
        if to <= mid {
            return Err(AccountingError::EndsBeforeStart { core, from: mid, to });
        }
        account.check_interval(core, from, to)?;
        let slots = account.residency.len();
        if let Some(l) = last_slot {
            account.transitions[l * slots + s1] += 1;
        }
        if s1 != s2 {
            account.transitions[s1 * slots + s2] += 1;
        }
        account.book_slot(s1, first, from, mid);
        account.book_slot(s2, second, mid, to);
        self.push_cluster(core, first, from, mid);
        self.push_cluster(core, second, mid, to);
        Ok(())
    }

    /// The busy energy charged to `vcpu`.
    ///
    /// # Panics
    /// If `vcpu` is not below the count given to [`new`](Self::new).
    pub fn vcpu_energy(&self, vcpu: VcpuId) -> Energy {
        self.vcpus[vcpu.index()]
    }

    /// The busy energy charged to `vm`'s vCPUs.
    pub fn vm_energy(&self, vm: VmId) -> Energy {
        self.vms[vm.index()]
    }

    /// The energy of cluster `cluster`'s shared logic (zero unless the books were made
    /// [`with_clusters`](Self::with_clusters)), up to where all its cores are booked.
    ///
    /// # Panics
    /// If `cluster` is not a cluster of the model.
    pub fn cluster_energy(&self, cluster: usize) -> Energy {
        assert!(cluster < self.model.clusters().len(), "no cluster {cluster}");
        self.clusters.as_ref().map_or(Energy::ZERO, |c| c.energy(&self.model, cluster))
    }

    /// Time cluster `cluster` spent in `state` (zero unless the books were made
    /// [`with_clusters`](Self::with_clusters)).
    ///
    /// # Panics
    /// If `cluster` or the state does not exist.
    pub fn cluster_residency(&self, cluster: usize, state: ClusterState) -> Nanos {
        assert!(cluster < self.model.clusters().len(), "no cluster {cluster}");
        self.clusters.as_ref().map_or(Nanos::ZERO, |c| c.residency(&self.model, cluster, state))
    }

    /// The energy of every cluster's shared logic.
    pub fn clusters_energy(&self) -> Energy {
        (0..self.model.clusters().len()).map(|k| self.cluster_energy(k)).sum()
    }

    /// The energy of every core, and of every cluster when clusters are accounted.
    pub fn total_energy(&self) -> Energy {
        (0..self.cores.len()).map(|i| self.core_energy(CoreId(i as u16)).total()).sum::<Energy>()
            + self.clusters_energy()
    }

    /// Idle and off energy of every core, and cluster energy: charged to no guest.
    pub fn unattributed_energy(&self) -> Energy {
        (0..self.cores.len())
            .map(|i| {
                let e = self.core_energy(CoreId(i as u16));
                e.idle + e.off
            })
            .sum::<Energy>()
            + self.clusters_energy()
    }

    /// Checks that every core's residencies add up to the run from the start to `until`: no
    /// hole was left between intervals and none is missing at the end.
    pub fn check_complete(&self, until: Instant) -> Result<(), AccountingError> {
        let run = until - self.start;
        for i in 0..self.cores.len() {
            let core = CoreId(i as u16);
            let accounted = self.residency_sum(core);
            if accounted != run {
                return Err(AccountingError::Incomplete { core, accounted, run });
            }
        }
        Ok(())
    }
}

fn slot_count(model: &EnergyModel, core: CoreId) -> usize {
    let ty = model.core_type(core);
    ty.opps.len() + ty.idle_states.len() + 1
}

fn slot(model: &EnergyModel, core: CoreId, state: CoreState) -> Result<usize, AccountingError> {
    if core.index() >= model.core_count() {
        return Err(AccountingError::NoSuchCore(core));
    }
    let ty = model.core_type(core);
    let (opps, states) = (ty.opps.len(), ty.idle_states.len());
    match state {
        CoreState::Busy { opp } if opp < opps => Ok(opp),
        CoreState::Idle { state } if state < states => Ok(opps + state),
        CoreState::Off => Ok(opps + states),
        _ => Err(AccountingError::NoSuchState { core, state }),
    }
}

fn slot_or_panic(model: &EnergyModel, core: CoreId, state: CoreState) -> usize {
    match slot(model, core, state) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    const MS: u64 = 1_000_000;

    fn at(ms: u64) -> Instant {
        Instant(ms * MS)
    }

    fn phone() -> Accounting {
        Accounting::new(&EnergyModel::builtin("phone-dual").unwrap(), 3, 2, Instant::ZERO)
    }

    #[test]
    fn residency_and_energy_of_a_timeline() {
        let mut a = phone();
        let c0 = CoreId(0);
        let top = 4; // 1.2 GHz, 660153 µW
        a.core_busy(c0, top, VcpuId(0), VmId(0), at(0), at(10)).unwrap();
        a.transition(c0, CoreState::Busy { opp: top }, CoreState::Busy { opp: 0 }).unwrap();
        a.core_busy(c0, 0, VcpuId(2), VmId(1), at(10), at(20)).unwrap();
        a.transition(c0, CoreState::Busy { opp: 0 }, CoreState::Idle { state: 0 }).unwrap();
        a.core_idle(c0, 0, at(20), at(25)).unwrap();
        a.transition(c0, CoreState::Idle { state: 0 }, CoreState::Off).unwrap();
        a.core_off(c0, at(25), at(100)).unwrap();

        assert_eq!(a.residency(c0, CoreState::Busy { opp: top }), Nanos::from_millis(10));
        assert_eq!(a.residency(c0, CoreState::Idle { state: 0 }), Nanos::from_millis(5));
        assert_eq!(a.residency(c0, CoreState::Off), Nanos::from_millis(75));
        assert_eq!(a.residency(c0, CoreState::Idle { state: 1 }), Nanos::ZERO);
        assert_eq!(a.residency_sum(c0), Nanos::from_millis(100));
        assert_eq!(a.transitions(c0, CoreState::Busy { opp: 0 }, CoreState::Idle { state: 0 }), 1);
        assert_eq!(a.transitions(c0, CoreState::Idle { state: 0 }, CoreState::Busy { opp: 0 }), 0);
        assert_eq!(a.transition_count(c0), 3);

        // 660153 µW × 10 ms = 6601.53 µJ; 69966 µW × 10 ms; 15000 µW × 5 ms; off draws 0, but
        // going off once costs what WFI would have drawn over the off break-even time (1 ms).
        let e = a.core_energy(c0);
        assert_eq!(e.busy.as_nanojoules(), 6_601_530 + 699_660);
        assert_eq!(e.idle.as_nanojoules(), 75_000);
        assert_eq!(e.off.as_nanojoules(), 15_000);
        assert_eq!(a.vcpu_energy(VcpuId(0)).as_nanojoules(), 6_601_530);
        assert_eq!(a.vcpu_energy(VcpuId(1)), Energy::ZERO);
        assert_eq!(a.vm_energy(VmId(1)).as_nanojoules(), 699_660);
        assert_eq!(a.unattributed_energy().as_nanojoules(), 90_000);
        // Busy energy is charged exactly once: to the vCPUs, and to the VMs.
        let vcpus: Energy = (0..3).map(|v| a.vcpu_energy(VcpuId(v))).sum();
        let vms: Energy = (0..2).map(|v| a.vm_energy(VmId(v))).sum();
        assert_eq!(vcpus, e.busy);
        assert_eq!(vms, e.busy);
        assert_eq!(a.total_energy(), e.busy + e.idle + e.off);
    }

    /// `book` counts the transition and books the interval, or, on any error, neither; and it
    /// gives the same books as the separate calls.
    #[test]
    fn a_refused_booking_books_nothing() {
        let mut a = phone();
        let c0 = CoreId(0);
        a.book(c0, CoreState::Busy { opp: 4 }, Some((VcpuId(0), VmId(0))), at(0), at(10)).unwrap();
        a.book(c0, CoreState::Idle { state: 0 }, None, at(10), at(12)).unwrap();
        let books = |a: &Accounting| {
            (a.transition_count(c0), a.residency_sum(c0), a.accounted_until(c0), a.vcpu_energy(VcpuId(1)))
        };
        let before = books(&a);
        for (state, owner, from, to) in [
            (CoreState::Busy { opp: 4 }, Some((VcpuId(1), VmId(0))), at(11), at(13)), // overlaps
            (CoreState::Busy { opp: 4 }, Some((VcpuId(1), VmId(0))), at(14), at(13)), // ends first
            (CoreState::Busy { opp: 99 }, None, at(12), at(13)),                      // no such OPP
            (CoreState::Busy { opp: 4 }, Some((VcpuId(9), VmId(0))), at(12), at(13)), // no such vCPU
        ] {
            assert!(a.book(c0, state, owner, from, to).is_err(), "{state:?} {from:?}..{to:?}");
            assert_eq!(books(&a), before, "{state:?} {from:?}..{to:?} booked something");
        }
        let mut b = phone();
        b.core_busy(c0, 4, VcpuId(0), VmId(0), at(0), at(10)).unwrap();
        b.transition(c0, CoreState::Busy { opp: 4 }, CoreState::Idle { state: 0 }).unwrap();
        b.core_idle(c0, 0, at(10), at(12)).unwrap();
        assert_eq!(books(&b), before);
        assert_eq!(a.vcpu_energy(VcpuId(0)), b.vcpu_energy(VcpuId(0)));
        assert_eq!(a.core_energy(c0).total(), b.core_energy(c0).total());
    }

    /// `book_two` books what two `book`s would, or nothing when either interval is wrong.
    #[test]
    fn two_bookings_in_one_call_are_two_bookings() {
        let c0 = CoreId(0);
        let (busy, rest) = (CoreState::Busy { opp: 4 }, CoreState::Idle { state: 1 });
        let mut one = phone();
        let mut two = phone();
        for k in 0..3 {
            let t = 10 * k;
            one.book_two(c0, busy, rest, at(t), at(t + 4), at(t + 10)).unwrap();
            two.book(c0, busy, None, at(t), at(t + 4)).unwrap();
            two.book(c0, rest, None, at(t + 4), at(t + 10)).unwrap();
        }
        let books = |a: &Accounting| {
            (
                a.transition_count(c0),
                a.transitions(c0, busy, rest),
                a.transitions(c0, rest, busy),
                a.residency(c0, busy),
                a.residency(c0, rest),
                a.accounted_until(c0),
                a.core_energy(c0).total(),
            )
        };
        assert_eq!(books(&one), books(&two));
        let before = books(&one);
        assert!(one.book_two(c0, busy, rest, at(29), at(31), at(35)).is_err(), "overlaps");
        assert!(one.book_two(c0, busy, rest, at(30), at(30), at(35)).is_err(), "empty first");
        assert!(one.book_two(c0, busy, rest, at(30), at(32), at(32)).is_err(), "empty second");
        assert!(one.book_two(c0, CoreState::Busy { opp: 99 }, rest, at(30), at(32), at(35)).is_err());
        assert_eq!(books(&one), before, "a refused booking booked something");
    }

    #[test]
    fn deep_rests_pay_their_break_even_once_per_entry() {
        let mut a = phone();
        let c = CoreId(1);
        // Ten 0.5 ms rests in the deep state (0 µW, 1 ms minimum residency): each costs what
        // WFI (15 mW) draws in 1 ms, so ten cost 150 µJ, twice what WFI would have cost.
        for k in 0..10 {
            a.book(c, CoreState::Idle { state: 1 }, None, Instant(k * MS), Instant(k * MS + MS / 2)).unwrap();
            a.book(
                c,
                CoreState::Busy { opp: 0 },
                Some((VcpuId(0), VmId(0))),
                Instant(k * MS + MS / 2),
                Instant((k + 1) * MS),
            )
            .unwrap();
        }
        assert_eq!(a.core_energy(c).idle.as_nanojoules(), 150_000);
        assert_eq!(a.transition_count(c), 19, "book counts each change of state");
        // One long rest pays it once: 15 µJ, against 150 µJ of WFI for 10 ms.
        let mut b = phone();
        b.book(c, CoreState::Idle { state: 1 }, None, Instant::ZERO, at(10)).unwrap();
        assert_eq!(b.core_energy(c).idle.as_nanojoules(), 15_000);
        assert_eq!(b.transition_count(c), 0);
    }

    #[test]
    fn books_with_clusters_add_the_shared_logic() {
        let model = EnergyModel::builtin("phone-dual").unwrap();
        let mut plain = Accounting::new(&model, 1, 1, Instant::ZERO);
        let mut full = Accounting::with_clusters(&model, 1, 1, Instant::ZERO);
        assert!(!plain.tracks_clusters() && full.tracks_clusters());
        for a in [&mut plain, &mut full] {
            // Core 0 runs 0–5 ms and rests deeply to 20 ms; core 1 is off throughout.
            a.book(CoreId(0), CoreState::Busy { opp: 0 }, Some((VcpuId(0), VmId(0))), at(0), at(5)).unwrap();
            a.book(CoreId(0), CoreState::Idle { state: 1 }, None, at(5), at(20)).unwrap();
            a.book(CoreId(1), CoreState::Off, None, at(0), at(20)).unwrap();
        }
        assert_eq!(plain.clusters_energy(), Energy::ZERO);
        assert_eq!(plain.cluster_residency(0, ClusterState::Active), Nanos::ZERO);
        // Up while core 0 runs (5 ms at 47 mW), then cluster-sleep for 15 ms (0 µW), entered
        // once at its break-even cost (47 mW × 2.7 ms).
        assert_eq!(full.cluster_residency(0, ClusterState::Active), Nanos::from_millis(5));
        assert_eq!(full.cluster_residency(0, ClusterState::Idle(0)), Nanos::from_millis(15));
        assert_eq!(full.cluster_energy(0).as_nanojoules(), 235_000 + 126_900);
        assert_eq!(full.total_energy(), plain.total_energy() + full.clusters_energy());
        assert_eq!(full.unattributed_energy(), plain.unattributed_energy() + full.clusters_energy());
        assert_eq!(full.vcpu_energy(VcpuId(0)), plain.vcpu_energy(VcpuId(0)), "no guest pays for the cluster");
    }

    #[test]
    fn completeness_check_finds_holes_and_missing_ends() {
        let mut a = phone();
        for core in [CoreId(0), CoreId(1)] {
            a.core_idle(core, 1, at(0), at(50)).unwrap();
        }
        a.core_idle(CoreId(0), 1, at(50), at(100)).unwrap();
        // Core 1 leaves a hole from 50 to 60 ms.
        a.core_off(CoreId(1), at(60), at(100)).unwrap();
        assert_eq!(a.unaccounted(CoreId(1)), Nanos::from_millis(10));
        assert_eq!(a.accounted_until(CoreId(1)), at(100));
        let e = a.check_complete(at(100)).unwrap_err();
        assert_eq!(
            e,
            AccountingError::Incomplete {
                core: CoreId(1),
                accounted: Nanos::from_millis(90),
                run: Nanos::from_millis(100)
            }
        );
        assert_eq!(e.to_string(), "core 1: residencies add up to 90.000ms, the run lasted 100.000ms");
        a.core_off(CoreId(1), at(100), at(100)).unwrap();

        let mut b = phone();
        for core in [CoreId(0), CoreId(1)] {
            b.core_idle(core, 0, at(0), at(100)).unwrap();
        }
        assert_eq!(b.check_complete(at(100)), Ok(()));
        // The run went on after the last report.
        assert!(matches!(b.check_complete(at(101)), Err(AccountingError::Incomplete { core: CoreId(0), .. })));
    }

    #[test]
    fn refuses_bad_reports_without_recording_them() {
        let mut a = phone();
        let c0 = CoreId(0);
        a.core_idle(c0, 0, at(0), at(10)).unwrap();
        let before = a.clone();
        assert_eq!(
            a.core_idle(c0, 0, at(5), at(20)),
            Err(AccountingError::Overlaps { core: c0, from: at(5), accounted_until: at(10) })
        );
        assert_eq!(
            a.core_idle(c0, 0, at(30), at(20)),
            Err(AccountingError::EndsBeforeStart { core: c0, from: at(30), to: at(20) })
        );
        assert_eq!(a.core_idle(CoreId(2), 0, at(10), at(20)), Err(AccountingError::NoSuchCore(CoreId(2))));
        assert_eq!(
            a.core_idle(c0, 2, at(10), at(20)),
            Err(AccountingError::NoSuchState { core: c0, state: CoreState::Idle { state: 2 } })
        );
        assert_eq!(
            a.core_busy(c0, 5, VcpuId(0), VmId(0), at(10), at(20)),
            Err(AccountingError::NoSuchState { core: c0, state: CoreState::Busy { opp: 5 } })
        );
        assert_eq!(a.core_busy(c0, 0, VcpuId(3), VmId(0), at(10), at(20)), Err(AccountingError::NoSuchVcpu(VcpuId(3))));
        assert_eq!(a.core_busy(c0, 0, VcpuId(0), VmId(2), at(10), at(20)), Err(AccountingError::NoSuchVm(VmId(2))));
        assert_eq!(
            a.transition(c0, CoreState::Off, CoreState::Busy { opp: 0 }),
            Err(AccountingError::WrongFromState { core: c0, from: CoreState::Off, last: CoreState::Idle { state: 0 } })
        );
        assert_eq!(
            a.transition(c0, CoreState::Idle { state: 0 }, CoreState::Idle { state: 0 }),
            Err(AccountingError::NotATransition { core: c0, state: CoreState::Idle { state: 0 } })
        );
        assert_eq!(a.residency_sum(c0), before.residency_sum(c0));
        assert_eq!(a.transition_count(c0), 0);
        assert_eq!(a.total_energy(), before.total_energy());
        // Before the first interval, any state may be left.
        let mut fresh = phone();
        fresh.transition(c0, CoreState::Off, CoreState::Busy { opp: 0 }).unwrap();
        assert_eq!(fresh.transition_count(c0), 1);
    }

    #[test]
    fn intervals_before_the_start_overlap() {
        let mut a = Accounting::new(&EnergyModel::builtin("phone-dual").unwrap(), 1, 1, at(10));
        assert!(matches!(a.core_off(CoreId(0), at(5), at(15)), Err(AccountingError::Overlaps { .. })));
        a.core_off(CoreId(0), at(10), at(15)).unwrap();
        assert_eq!(a.residency_sum(CoreId(0)), Nanos::from_millis(5));
    }

    #[test]
    fn many_short_pieces_cost_what_one_long_piece_does() {
        let model = EnergyModel::builtin("hikey960").unwrap();
        let mut pieces = Accounting::new(&model, 1, 1, Instant::ZERO);
        let mut whole = Accounting::new(&model, 1, 1, Instant::ZERO);
        let big = CoreId(7);
        let mut t = Instant::ZERO;
        for _ in 0..10_000 {
            pieces.core_busy(big, 2, VcpuId(0), VmId(0), t, t + Nanos(333)).unwrap();
            t += Nanos(333);
        }
        whole.core_busy(big, 2, VcpuId(0), VmId(0), Instant::ZERO, t).unwrap();
        assert_eq!(pieces.vcpu_energy(VcpuId(0)), whole.vcpu_energy(VcpuId(0)));
        assert_eq!(pieces.core_energy(big), whole.core_energy(big));
    }

    /// `book` counts a transition at every change of state, none between intervals in one state.
    #[test]
    fn alternating_book_counts_transitions() {
        let m = EnergyModel::for_board("generic", 4).unwrap();
        let mut a = Accounting::new(&m, 2, 1, Instant::ZERO);
        let top = m.opp_count(CoreId(0)) - 1;
        for k in 0..5u64 {
            a.book(CoreId(0), CoreState::Busy { opp: top }, None, Instant(k * 10), Instant(k * 10 + 5)).unwrap();
            a.book(CoreId(0), CoreState::Idle { state: 0 }, None, Instant(k * 10 + 5), Instant(k * 10 + 10)).unwrap();
        }
        assert_eq!(a.transition_count(CoreId(0)), 9);
        a.book(CoreId(0), CoreState::Idle { state: 0 }, None, Instant(50), Instant(60)).unwrap();
        assert_eq!(a.transition_count(CoreId(0)), 9, "idle after idle is no transition");
    }
}
