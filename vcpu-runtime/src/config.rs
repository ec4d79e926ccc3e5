//! From a scenario to the runtime's configuration.

use alloc::vec::Vec;

use crate::ids::{CoreMask, VmId};
use crate::scenario::Scenario;
use crate::sched::{RuntimeConfig, SchedParams};
use crate::vcpu::{VcpuConfig, PPM};

impl Scenario {
    /// The scheduler parameters the scenario's policy asks for.
    pub fn sched_params(&self) -> SchedParams {
        let p = &self.policy;
        SchedParams {
            timeslice: p.timeslice,
            min_granularity: p.min_granularity,
            rt_bound_ppm: p.rt_utilization_bound_percent as u64 * (PPM / 100),
            util_half_life: p.util_half_life,
            ..SchedParams::default()
        }
    }

    /// The runtime configuration: every guest's vCPUs in order (guest 0's first). With
    /// `secondaries_parked`, each guest's vCPUs but the first start parked and wait for the
    /// guest's PSCI CPU_ON, as on real hardware; the simulator starts them all.
    pub fn runtime_config(&self, secondaries_parked: bool) -> RuntimeConfig {
        let mut vcpus = Vec::new();
        for (g, guest) in self.guests.iter().enumerate() {
            for i in 0..guest.vcpus {
                vcpus.push(VcpuConfig {
                    vm: VmId(g as u16),
                    index_in_vm: i,
                    weight: guest.weight,
                    reservation: guest
                        .reservation
                        .map(|r| crate::vcpu::Reservation { budget: r.budget, period: r.period }),
                    affinity: guest.affinity.unwrap_or(CoreMask::ALL),
                    starts_parked: secondaries_parked && i > 0,
                });
            }
        }
        RuntimeConfig { cores: self.board.cores, params: self.sched_params(), vcpus }
    }
}
