//! Built-in energy profiles, named by scenarios' `board.energy_profile`.
//!
//! Every figure comes from a published source, and the figures that are estimates (above all
//! idle powers, which Linux device trees do not carry) are marked so here and in
//! `docs/energy-models.md`, which cites each source. OPP power is not written down: it is
//! computed from the published `dynamic-power-coefficient` and OPP voltages with the same
//! Linux formula the device-tree reader uses ([`dynamic_power_uw`]).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use vcpu_runtime::ids::CoreMask;

use crate::model::{dynamic_power_uw, Cluster, CoreModel, CoreType, IdleState, Opp};
use crate::EnergyModel;

/// The names [`EnergyModel::builtin`] knows (`phone-quad` is another name for `sd410`).
pub const PROFILE_NAMES: [&str; 5] = ["generic", "phone-dual", "phone-quad", "sd410", "hikey960"];

/// Cores per cluster in the `generic` profile, as in the Hi6220 its figures come from.
const GENERIC_CLUSTER_SIZE: usize = 4;
/// `generic`'s size when no board says otherwise.
const GENERIC_DEFAULT_CORES: usize = 4;

/// Why [`EnergyModel::for_board`] has no model for a board.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProfileError {
    Unknown {
        name: String,
    },
    /// The profile describes a fixed number of cores and the board has another.
    CoreCount {
        profile: String,
        profile_cores: usize,
        board_cores: u16,
    },
}

impl fmt::Display for ProfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProfileError::Unknown { name } => {
                write!(f, "unknown energy profile {name:?}, expected one of {}", PROFILE_NAMES.join(", "))
            }
            ProfileError::CoreCount { profile, profile_cores, board_cores } if *profile == "generic" => write!(
                f,
                "energy profile \"generic\" takes 1 to {} cores, the board has {board_cores} ({profile_cores} by default)",
                CoreMask::MAX_CORES
            ),
            ProfileError::CoreCount { profile, profile_cores, board_cores } => write!(
                f,
                "energy profile {profile:?} describes {profile_cores} cores, the board has {board_cores} (only \
                 \"generic\" fits any number)"
            ),
        }
    }
}

impl core::error::Error for ProfileError {}

impl EnergyModel {
    /// The built-in profile `name` (see [`PROFILE_NAMES`]) at its own size; `generic` has 4
    /// cores here.
    pub fn builtin(name: &str) -> Option<EnergyModel> {
        match name {
            "generic" => generic(GENERIC_DEFAULT_CORES),
            "phone-dual" => assemble(name, &[&HI6220_A53], &[("cluster0", &HI6220_CLUSTER)], &[(0, 0), (0, 0)]),
            "phone-quad" | "sd410" => assemble(name, &[&MSM8916_A53], &[("cluster0", &MSM8916_CLUSTER)], &[(0, 0); 4]),
            "hikey960" => assemble(
                name,
                &[&HI3660_A53, &HI3660_A73],
                &[("cluster0", &HI3660_A53_CLUSTER), ("cluster1", &HI3660_A73_CLUSTER)],
                &[(0, 0), (0, 0), (0, 0), (0, 0), (1, 1), (1, 1), (1, 1), (1, 1)],
            ),
            _ => None,
        }
    }

    /// The model for a board of `cores` cores with energy profile `profile`: `generic` is
    /// made that size; the other profiles describe a real SoC and must match it.
    pub fn for_board(profile: &str, cores: u16) -> Result<EnergyModel, ProfileError> {
        let count_error = |profile_cores| ProfileError::CoreCount {
            profile: String::from(profile),
            profile_cores,
            board_cores: cores,
        };
        if profile == "generic" {
            return generic(cores as usize).ok_or_else(|| count_error(GENERIC_DEFAULT_CORES));
        }
        let model =
            EnergyModel::builtin(profile).ok_or_else(|| ProfileError::Unknown { name: String::from(profile) })?;
        if model.core_count() != cores as usize {
            return Err(count_error(model.core_count()));
        }
        Ok(model)
    }
}

/// `cores` Hi6220 Cortex-A53s in clusters of four.
fn generic(cores: usize) -> Option<EnergyModel> {
    if cores == 0 || cores > CoreMask::MAX_CORES {
        return None;
    }
    let names: Vec<String> = (0..cores.div_ceil(GENERIC_CLUSTER_SIZE)).map(|c| format!("cluster{c}")).collect();
    let clusters: Vec<(&str, &ClusterSpec)> = names.iter().map(|n| (n.as_str(), &HI6220_CLUSTER)).collect();
    let layout: Vec<(usize, usize)> = (0..cores).map(|i| (0, i / GENERIC_CLUSTER_SIZE)).collect();
    assemble("generic", &[&HI6220_A53], &clusters, &layout)
}

struct StateSpec {
    name: &'static str,
    power_uw: u32,
    entry_latency_us: u32,
    exit_latency_us: u32,
    min_residency_us: u32,
}

struct TypeSpec {
    name: &'static str,
    capacity_dmips_mhz: u32,
    dynamic_power_coefficient: u32,
    /// (`opp-hz`, `opp-microvolt`), slowest first.
    opps: &'static [(u64, u32)],
    wfi_power_uw: u32,
    /// After WFI, shallowest first.
    states: &'static [StateSpec],
    off_power_uw: u32,
}

struct ClusterSpec {
    active_power_uw: u32,
    states: &'static [StateSpec],
}

/// WFI as Linux's PSCI cpuidle driver has it (state 0): 1 µs exit latency and target residency.
const WFI_US: u32 = 1;

fn idle_state(s: &StateSpec) -> IdleState {
    IdleState {
        name: String::from(s.name),
        power_uw: s.power_uw,
        entry_latency_us: s.entry_latency_us,
        exit_latency_us: s.exit_latency_us,
        min_residency_us: s.min_residency_us,
    }
}

fn core_type(t: &TypeSpec) -> Option<CoreType> {
    let opps = t
        .opps
        .iter()
        .map(|&(hz, uv)| {
            let power_uw = dynamic_power_uw(t.dynamic_power_coefficient, uv, hz)?;
            Some(Opp { freq_khz: (hz / 1000) as u32, capacity: 0, power_uw })
        })
        .collect::<Option<Vec<Opp>>>()?;
    let wfi = IdleState {
        name: String::from("WFI"),
        power_uw: t.wfi_power_uw,
        entry_latency_us: WFI_US,
        exit_latency_us: WFI_US,
        min_residency_us: WFI_US,
    };
    Some(CoreType {
        name: String::from(t.name),
        capacity_dmips_mhz: t.capacity_dmips_mhz,
        opps,
        idle_states: core::iter::once(wfi).chain(t.states.iter().map(idle_state)).collect(),
        off_power_uw: t.off_power_uw,
    })
}

/// A checked model from specs; `None` only if a spec breaks a model rule, which the tests
/// rule out for every profile.
fn assemble(
    name: &str,
    types: &[&TypeSpec],
    clusters: &[(&str, &ClusterSpec)],
    cores: &[(usize, usize)],
) -> Option<EnergyModel> {
    let core_types = types.iter().map(|t| core_type(t)).collect::<Option<Vec<_>>>()?;
    let clusters = clusters
        .iter()
        .map(|(name, c)| Cluster {
            name: String::from(*name),
            active_power_uw: c.active_power_uw,
            idle_states: c.states.iter().map(idle_state).collect(),
            off_power_uw: 0,
        })
        .collect();
    let cores = cores.iter().map(|&(core_type, cluster)| CoreModel { core_type, cluster }).collect();
    EnergyModel::new(name, core_types, clusters, cores).ok()
}

// ---------------------------------------------------------------------------------------------
// Hi6220 (HiKey, Kirin 620): Cortex-A53, 28 nm. Sources: hi6220.dtsi (OPPs, coefficient,
// idle-state latencies) and the EAS energy model hi6220-sched-energy.dtsi (idle powers, read
// as mW: its 1.2 GHz busy figure, 670, is within 2 % of the coefficient formula's 660 mW).

const HI6220_A53: TypeSpec = TypeSpec {
    name: "cortex-a53",
    capacity_dmips_mhz: 1024,
    dynamic_power_coefficient: 311,
    opps: &[
        (208_000_000, 1_040_000),
        (432_000_000, 1_040_000),
        (729_000_000, 1_090_000),
        (960_000_000, 1_180_000),
        (1_200_000_000, 1_330_000),
    ],
    wfi_power_uw: 15_000,
    states: &[StateSpec {
        name: "cpu-sleep",
        power_uw: 0,
        entry_latency_us: 700,
        exit_latency_us: 250,
        min_residency_us: 1_000,
    }],
    off_power_uw: 0,
};

const HI6220_CLUSTER: ClusterSpec = ClusterSpec {
    active_power_uw: 47_000,
    states: &[StateSpec {
        name: "cluster-sleep",
        power_uw: 0,
        entry_latency_us: 1_000,
        exit_latency_us: 700,
        min_residency_us: 2_700,
    }],
};

// ---------------------------------------------------------------------------------------------
// MSM8916 (Snapdragon 410): 4× Cortex-A53 up to 1.2 GHz, 28 nm LP. Sources: msm8916.dtsi
// (frequencies, idle-state latencies), the max-corner voltages of Loic Poulain's 2020 OPP
// patch for it. ESTIMATES: the coefficient and every power figure, taken from the Hi6220
// A53 (same core, process node and voltage range); the cluster retention power.

const MSM8916_A53: TypeSpec = TypeSpec {
    name: "cortex-a53",
    capacity_dmips_mhz: 1024,
    dynamic_power_coefficient: 311,
    opps: &[
        (200_000_000, 1_050_000),
        (400_000_000, 1_050_000),
        (533_330_000, 1_150_000),
        (800_000_000, 1_150_000),
        (998_400_000, 1_350_000),
        (1_094_400_000, 1_350_000),
        (1_152_000_000, 1_350_000),
        (1_209_600_000, 1_350_000),
    ],
    wfi_power_uw: 15_000,
    states: &[StateSpec {
        name: "standalone-power-collapse",
        power_uw: 0,
        entry_latency_us: 130,
        exit_latency_us: 150,
        min_residency_us: 2_000,
    }],
    off_power_uw: 0,
};

const MSM8916_CLUSTER: ClusterSpec = ClusterSpec {
    active_power_uw: 47_000,
    states: &[
        StateSpec {
            name: "cluster-retention",
            // ESTIMATE, no published figure: half of the active cluster (L2 kept at a
            // retention voltage).
            power_uw: 23_500,
            entry_latency_us: 500,
            exit_latency_us: 500,
            min_residency_us: 2_000,
        },
        StateSpec {
            name: "cluster-gdhs",
            power_uw: 0,
            entry_latency_us: 2_000,
            exit_latency_us: 2_000,
            min_residency_us: 6_000,
        },
    ],
};

// ---------------------------------------------------------------------------------------------
// Hi3660 (HiKey960, Kirin 960): 4× Cortex-A53 + 4× Cortex-A73. Sources: hi3660.dtsi (OPPs,
// capacity-dmips-mhz, coefficients, idle-state latencies). ESTIMATES: idle powers, from the
// EAS energy model hi3660-sched-energy.dtsi, whose units are arbitrary: each figure is scaled
// by (coefficient-formula power at the top OPP) / (EAS busy cost at the top OPP), i.e.
// 245436/502 µW per unit for the A53s and 1571911/2848 for the A73s, rounded to 100 µW.

const HI3660_A53: TypeSpec = TypeSpec {
    name: "cortex-a53",
    capacity_dmips_mhz: 592,
    dynamic_power_coefficient: 110,
    opps: &[
        (533_000_000, 700_000),
        (999_000_000, 800_000),
        (1_402_000_000, 900_000),
        (1_709_000_000, 1_000_000),
        (1_844_000_000, 1_100_000),
    ],
    wfi_power_uw: 2_400, // EAS 5
    states: &[StateSpec {
        name: "cpu-sleep-0",
        power_uw: 0, // EAS 0
        entry_latency_us: 400,
        exit_latency_us: 650,
        min_residency_us: 1_500,
    }],
    off_power_uw: 0,
};

const HI3660_A53_CLUSTER: ClusterSpec = ClusterSpec {
    active_power_uw: 5_900, // EAS 12
    states: &[StateSpec {
        name: "cluster-sleep-0",
        power_uw: 0,
        entry_latency_us: 500,
        exit_latency_us: 1_600,
        min_residency_us: 3_500,
    }],
};

const HI3660_A73: TypeSpec = TypeSpec {
    name: "cortex-a73",
    capacity_dmips_mhz: 1024,
    dynamic_power_coefficient: 550,
    opps: &[
        (903_000_000, 700_000),
        (1_421_000_000, 800_000),
        (1_805_000_000, 900_000),
        (2_112_000_000, 1_000_000),
        (2_362_000_000, 1_100_000),
    ],
    wfi_power_uw: 9_900, // EAS 18
    states: &[StateSpec {
        name: "cpu-sleep-1",
        power_uw: 1_700, // EAS 3
        entry_latency_us: 400,
        exit_latency_us: 550,
        min_residency_us: 1_500,
    }],
    off_power_uw: 0,
};

const HI3660_A73_CLUSTER: ClusterSpec = ClusterSpec {
    active_power_uw: 56_300, // EAS 102
    states: &[StateSpec {
        name: "cluster-sleep-1",
        power_uw: 0,
        entry_latency_us: 800,
        exit_latency_us: 2_900,
        min_residency_us: 3_500,
    }],
};

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use vcpu_runtime::ids::CoreId;
    use vcpu_runtime::time::Nanos;

    #[test]
    fn every_profile_builds_and_is_named() {
        for name in PROFILE_NAMES {
            let m = EnergyModel::builtin(name).unwrap_or_else(|| panic!("{name} does not build"));
            assert_eq!(m.name(), name);
            for core in 0..m.core_count() {
                assert_eq!(m.core_type(CoreId(core as u16)).idle_states[0].name, "WFI");
            }
        }
        assert_eq!(EnergyModel::builtin("nope"), None);
    }

    #[test]
    fn phone_dual_is_two_hikey_a53s() {
        let m = EnergyModel::builtin("phone-dual").unwrap();
        assert_eq!(m.core_count(), 2);
        assert_eq!(m.clusters().len(), 1);
        let a53 = m.core_type(CoreId(0));
        let powers: Vec<u32> = a53.opps.iter().map(|o| o.power_uw).collect();
        // 311 × V[mV]² × f[MHz] / 10⁶.
        assert_eq!(powers, [69_966, 145_315, 269_364, 415_714, 660_153]);
        let capacities: Vec<u32> = a53.opps.iter().map(|o| o.capacity).collect();
        // The EAS table for the same chip lists 178, 369, 622, 819, 1024.
        assert_eq!(capacities, [177, 368, 622, 819, 1024]);
        assert_eq!(m.deepest_idle_state_for(CoreId(1), Nanos::from_micros(1_000)), 1);
        assert_eq!(m.deepest_cluster_state_for(0, Nanos::from_micros(2_700)), Some(0));
    }

    #[test]
    fn sd410_has_the_msm8916_idle_states() {
        let m = EnergyModel::builtin("sd410").unwrap();
        assert_eq!(m.core_count(), 4);
        let a53 = m.core_type(CoreId(3));
        let spc = &a53.idle_states[1];
        assert_eq!((spc.entry_latency_us, spc.exit_latency_us, spc.min_residency_us), (130, 150, 2_000));
        assert_eq!(a53.opps.len(), 8);
        assert_eq!(a53.opps[7].freq_khz, 1_209_600);
        assert_eq!(a53.opps[2].freq_khz, 533_330);
        let cluster_residencies: Vec<u32> = m.clusters()[0].idle_states.iter().map(|s| s.min_residency_us).collect();
        assert_eq!(cluster_residencies, [2_000, 6_000]);
        assert_eq!(EnergyModel::builtin("phone-quad").unwrap().renamed("sd410"), m);
    }

    #[test]
    fn hikey960_capacities_match_linux() {
        let m = EnergyModel::builtin("hikey960").unwrap();
        assert_eq!(m.core_count(), 8);
        // Linux reports 462 for the A53s of a HiKey960: 592 × 1844 against 1024 × 2362.
        assert_eq!(m.max_capacity(CoreId(0)), 462);
        assert_eq!(m.max_capacity(CoreId(4)), 1024);
        // The EAS model's capacity columns: 133 250 351 429 462 and 390 615 782 915 1024.
        let little: Vec<u32> = m.core_type(CoreId(0)).opps.iter().map(|o| o.capacity).collect();
        let big: Vec<u32> = m.core_type(CoreId(7)).opps.iter().map(|o| o.capacity).collect();
        assert_eq!(little, [133, 250, 351, 428, 462]);
        assert_eq!(big, [391, 616, 782, 915, 1024]);
        assert_eq!(m.cluster_of(CoreId(3)), 0);
        assert_eq!(m.cluster_of(CoreId(4)), 1);
        assert_eq!(m.core_type(CoreId(4)).name, "cortex-a73");
        // The A73 cluster takes 2.9 ms to wake: a 3 ms idle is not worth its 3.5 ms residency.
        assert_eq!(m.deepest_cluster_state_for(1, Nanos::from_millis(3)), None);
    }

    #[test]
    fn generic_fits_any_board() {
        for cores in [1u16, 2, 4, 5, 8, 64] {
            let m = EnergyModel::for_board("generic", cores).unwrap();
            assert_eq!(m.core_count(), cores as usize);
            assert_eq!(m.clusters().len(), (cores as usize).div_ceil(4));
            assert_eq!(m.cluster_of(CoreId(cores - 1)), (cores as usize - 1) / 4);
        }
        let e = EnergyModel::for_board("generic", 0).unwrap_err();
        assert!(e.to_string().contains("takes 1 to 64 cores, the board has 0"), "{e}");
        assert!(EnergyModel::for_board("generic", 65).is_err());
        // Two generic cores are the phone-dual board under another name.
        assert_eq!(
            EnergyModel::for_board("generic", 2).unwrap().renamed("phone-dual"),
            EnergyModel::builtin("phone-dual").unwrap()
        );
    }

    #[test]
    fn fixed_profiles_must_match_the_board() {
        assert!(EnergyModel::for_board("phone-dual", 2).is_ok());
        let e = EnergyModel::for_board("hikey960", 4).unwrap_err();
        assert_eq!(e, ProfileError::CoreCount { profile: "hikey960".to_string(), profile_cores: 8, board_cores: 4 });
        assert!(e.to_string().contains("describes 8 cores, the board has 4"), "{e}");
        let e = EnergyModel::for_board("pixel", 2).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown energy profile \"pixel\", expected one of generic, phone-dual, phone-quad, sd410, hikey960"
        );
    }
}
