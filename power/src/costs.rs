//! The energy model as the governor sees it ([`PowerCosts`]): every core at its fastest
//! operating point (the hypervisor does not scale frequencies), its idle states, and CPU_OFF.

use vcpu_runtime::{CoreId, Nanos};

use crate::governor::PowerCosts;
use crate::{ClusterState, EnergyModel};

impl PowerCosts for EnergyModel {
    fn core_count(&self) -> usize {
        EnergyModel::core_count(self)
    }

    fn capacity(&self, core: CoreId) -> u32 {
        self.max_capacity(core)
    }

    fn busy_power_uw(&self, core: CoreId) -> u64 {
        let top = self.opp_count(core).saturating_sub(1);
        u64::from(self.core_type(core).opps.get(top).map_or(0, |o| o.power_uw))
    }

    fn idle_state_count(&self, core: CoreId) -> usize {
        self.core_type(core).idle_states.len()
    }

    fn idle_power_uw(&self, core: CoreId, state: usize) -> u64 {
        self.core_type(core).idle_states.get(state).map_or(0, |s| u64::from(s.power_uw))
    }

    fn idle_min_residency(&self, core: CoreId, state: usize) -> Nanos {
        self.core_type(core)
            .idle_states
            .get(state)
            .map_or(Nanos::ZERO, |s| Nanos::from_micros(u64::from(s.min_residency_us)))
    }

    fn off_power_uw(&self, core: CoreId) -> u64 {
        u64::from(EnergyModel::off_power_uw(self, core))
    }

    fn off_min_residency(&self, core: CoreId) -> Nanos {
        EnergyModel::off_min_residency(self, core)
    }

    fn cluster_of(&self, core: CoreId) -> usize {
        EnergyModel::cluster_of(self, core)
    }

    fn cluster_count(&self) -> usize {
        self.clusters().len()
    }

    fn cluster_power_uw(&self, cluster: usize, on: bool) -> u64 {
        u64::from(EnergyModel::cluster_power_uw(
            self,
            cluster,
            if on { ClusterState::Active } else { ClusterState::Off },
        ))
    }
}
