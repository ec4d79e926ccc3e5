//! Device trees shaped like the upstream ones (`arch/arm64/boot/dts/qcom/msm8916.dtsi`,
//! `arch/arm64/boot/dts/hisilicon/hi3660.dtsi`), with the `local,` idle-power properties added,
//! and the ways a tree can be wrong.

use std::string::{String, ToString};
use std::vec::Vec;

use super::dts::compile;
use crate::{EnergyModel, ModelError};
use vcpu_runtime::ids::CoreId;
use vcpu_runtime::time::Nanos;

/// MSM8916 as in Linux 5.x: idle states listed in `cpu-idle-states`, no cpu-map. The
/// coefficient and the voltages are not upstream (see docs/energy-models.md).
const MSM8916: &str = r#"
/ {
    model = "Qualcomm Technologies, Inc. APQ 8016 SBC";
    compatible = "qcom,apq8016-sbc", "qcom,apq8016";
    #address-cells = <2>;
    #size-cells = <2>;

    cpus {
        #address-cells = <1>;
        #size-cells = <0>;

        CPU0: cpu@0 {
            device_type = "cpu";
            compatible = "arm,cortex-a53";
            reg = <0x0>;
            next-level-cache = <&L2_0>;
            enable-method = "psci";
            cpu-idle-states = <&CPU_SLEEP_0>;
            operating-points-v2 = <&cpu_opp_table>;
            #cooling-cells = <2>;
            dynamic-power-coefficient = <311>;
            local,wfi-power-uw = <15000>;
        };

        CPU1: cpu@1 {
            device_type = "cpu";
            compatible = "arm,cortex-a53";
            reg = <0x1>;
            next-level-cache = <&L2_0>;
            enable-method = "psci";
            cpu-idle-states = <&CPU_SLEEP_0>;
            operating-points-v2 = <&cpu_opp_table>;
            #cooling-cells = <2>;
        };

        CPU2: cpu@2 {
            device_type = "cpu";
            compatible = "arm,cortex-a53";
            reg = <0x2>;
            next-level-cache = <&L2_0>;
            enable-method = "psci";
            cpu-idle-states = <&CPU_SLEEP_0>;
            operating-points-v2 = <&cpu_opp_table>;
            #cooling-cells = <2>;
        };

        CPU3: cpu@3 {
            device_type = "cpu";
            compatible = "arm,cortex-a53";
            reg = <0x3>;
            next-level-cache = <&L2_0>;
            enable-method = "psci";
            cpu-idle-states = <&CPU_SLEEP_0>;
            operating-points-v2 = <&cpu_opp_table>;
            #cooling-cells = <2>;
        };

        L2_0: l2-cache {
            compatible = "cache";
            cache-level = <2>;
        };

        idle-states {
            entry-method = "psci";

            CPU_SLEEP_0: cpu-sleep-0 {
                compatible = "arm,idle-state";
                idle-state-name = "standalone-power-collapse";
                arm,psci-suspend-param = <0x40000002>;
                entry-latency-us = <130>;
                exit-latency-us = <150>;
                min-residency-us = <2000>;
                local-timer-stop;
                local,power-uw = <0>;
            };
        };
    };

    cpu_opp_table: opp-table-cpu {
        compatible = "operating-points-v2";
        opp-shared;

        opp-200000000 { opp-hz = /bits/ 64 <200000000>; opp-microvolt = <1050000>; };
        opp-400000000 { opp-hz = /bits/ 64 <400000000>; opp-microvolt = <1050000>; };
        opp-533330000 { opp-hz = /bits/ 64 <533330000>; opp-microvolt = <1150000>; };
        opp-800000000 { opp-hz = /bits/ 64 <800000000>; opp-microvolt = <1150000>; };
        opp-998400000 { opp-hz = /bits/ 64 <998400000>; opp-microvolt = <1350000>; };
        opp-1094400000 { opp-hz = /bits/ 64 <1094400000>; opp-microvolt = <1350000>; };
        opp-1152000000 { opp-hz = /bits/ 64 <1152000000>; opp-microvolt = <1350000>; };
        opp-1209600000 { opp-hz = /bits/ 64 <1209600000>; opp-microvolt = <1350000>; };
    };

    psci {
        compatible = "arm,psci-1.0";
        method = "smc";
    };
};
"#;

/// MSM8916 as in Linux 6.x: PSCI power-domain hierarchy with cluster states. CPU3 also lists
/// a CPR domain first, to check that the one named "psci" is taken.
const MSM8916_DOMAINS: &str = r#"
/ {
    model = "msm8916 with domains";
    #address-cells = <2>;
    #size-cells = <2>;

    cpus {
        #address-cells = <1>;
        #size-cells = <0>;

        CPU0: cpu@0 {
            device_type = "cpu";
            compatible = "arm,cortex-a53";
            reg = <0x0>;
            enable-method = "psci";
            operating-points-v2 = <&cpu_opp_table>;
            power-domains = <&CPU_PD0>;
            power-domain-names = "psci";
            dynamic-power-coefficient = <311>;
            local,wfi-power-uw = <15000>;
        };
        CPU1: cpu@1 {
            device_type = "cpu";
            compatible = "arm,cortex-a53";
            reg = <0x1>;
            enable-method = "psci";
            operating-points-v2 = <&cpu_opp_table>;
            power-domains = <&CPU_PD1>;
            power-domain-names = "psci";
        };
        CPU2: cpu@2 {
            device_type = "cpu";
            compatible = "arm,cortex-a53";
            reg = <0x2>;
            enable-method = "psci";
            operating-points-v2 = <&cpu_opp_table>;
            power-domains = <&CPU_PD2>;
            power-domain-names = "psci";
        };
        CPU3: cpu@3 {
            device_type = "cpu";
            compatible = "arm,cortex-a53";
            reg = <0x3>;
            enable-method = "psci";
            operating-points-v2 = <&cpu_opp_table>;
            power-domains = <&rpmpd 7>, <&CPU_PD3>;
            power-domain-names = "cpr", "psci";
        };

        idle-states {
            entry-method = "psci";

            CPU_SLEEP_0: cpu-sleep-0 {
                compatible = "arm,idle-state";
                idle-state-name = "standalone-power-collapse";
                arm,psci-suspend-param = <0x40000002>;
                entry-latency-us = <130>;
                exit-latency-us = <150>;
                min-residency-us = <2000>;
                local-timer-stop;
                local,power-uw = <0>;
            };
        };

        domain-idle-states {
            CLUSTER_RET: cluster-retention {
                compatible = "domain-idle-state";
                arm,psci-suspend-param = <0x41000012>;
                entry-latency-us = <500>;
                exit-latency-us = <500>;
                min-residency-us = <2000>;
                local,power-uw = <23500>;
            };

            CLUSTER_PWRDN: cluster-gdhs {
                compatible = "domain-idle-state";
                arm,psci-suspend-param = <0x41000032>;
                entry-latency-us = <2000>;
                exit-latency-us = <2000>;
                min-residency-us = <6000>;
                local,power-uw = <0>;
            };
        };
    };

    cpu_opp_table: opp-table-cpu {
        compatible = "operating-points-v2";
        opp-shared;

        opp-200000000 { opp-hz = /bits/ 64 <200000000>; opp-microvolt = <1050000>; };
        opp-400000000 { opp-hz = /bits/ 64 <400000000>; opp-microvolt = <1050000>; };
        opp-533330000 { opp-hz = /bits/ 64 <533330000>; opp-microvolt = <1150000>; };
        opp-800000000 { opp-hz = /bits/ 64 <800000000>; opp-microvolt = <1150000>; };
        opp-998400000 { opp-hz = /bits/ 64 <998400000>; opp-microvolt = <1350000>; };
        opp-1094400000 { opp-hz = /bits/ 64 <1094400000>; opp-microvolt = <1350000>; };
        opp-1152000000 { opp-hz = /bits/ 64 <1152000000>; opp-microvolt = <1350000>; };
        opp-1209600000 { opp-hz = /bits/ 64 <1209600000>; opp-microvolt = <1350000>; };
    };

    psci {
        compatible = "arm,psci-1.0";
        method = "smc";

        CPU_PD0: power-domain-cpu0 {
            #power-domain-cells = <0>;
            power-domains = <&CLUSTER_PD>;
            domain-idle-states = <&CPU_SLEEP_0>;
        };
        CPU_PD1: power-domain-cpu1 {
            #power-domain-cells = <0>;
            power-domains = <&CLUSTER_PD>;
            domain-idle-states = <&CPU_SLEEP_0>;
        };
        CPU_PD2: power-domain-cpu2 {
            #power-domain-cells = <0>;
            power-domains = <&CLUSTER_PD>;
            domain-idle-states = <&CPU_SLEEP_0>;
        };
        CPU_PD3: power-domain-cpu3 {
            #power-domain-cells = <0>;
            power-domains = <&CLUSTER_PD>;
            domain-idle-states = <&CPU_SLEEP_0>;
        };
        CLUSTER_PD: power-domain-cluster {
            #power-domain-cells = <0>;
            domain-idle-states = <&CLUSTER_RET>, <&CLUSTER_PWRDN>;
            local,active-power-uw = <47000>;
        };
    };

    rpmpd: power-controller {
        compatible = "qcom,msm8916-rpmpd";
        #power-domain-cells = <1>;
    };
};
"#;

/// Hi3660 (HiKey960) as upstream: cpu-map clusters, cluster states in `cpu-idle-states`, the
/// coefficient on the first CPU of each cluster only.
const HIKEY960: &str = r#"
/ {
    model = "HiKey960";
    compatible = "hisilicon,hi3660-hikey960", "hisilicon,hi3660";
    #address-cells = <2>;
    #size-cells = <2>;

    psci {
        compatible = "arm,psci-0.2";
        method = "smc";
    };

    cpus {
        #address-cells = <2>;
        #size-cells = <0>;

        cpu-map {
            cluster0 {
                local,active-power-uw = <5900>;
                core0 { cpu = <&cpu0>; };
                core1 { cpu = <&cpu1>; };
                core2 { cpu = <&cpu2>; };
                core3 { cpu = <&cpu3>; };
            };
            cluster1 {
                local,active-power-uw = <56300>;
                core0 { cpu = <&cpu4>; };
                core1 { cpu = <&cpu5>; };
                core2 { cpu = <&cpu6>; };
                core3 { cpu = <&cpu7>; };
            };
        };

        cpu0: cpu@0 {
            compatible = "arm,cortex-a53";
            device_type = "cpu";
            reg = <0x0 0x0>;
            enable-method = "psci";
            next-level-cache = <&A53_L2>;
            cpu-idle-states = <&CPU_SLEEP_0 &CLUSTER_SLEEP_0>;
            capacity-dmips-mhz = <592>;
            operating-points-v2 = <&cluster0_opp>;
            #cooling-cells = <2>;
            dynamic-power-coefficient = <110>;
            local,wfi-power-uw = <2400>;
        };
        cpu1: cpu@1 {
            compatible = "arm,cortex-a53";
            device_type = "cpu";
            reg = <0x0 0x1>;
            enable-method = "psci";
            next-level-cache = <&A53_L2>;
            cpu-idle-states = <&CPU_SLEEP_0 &CLUSTER_SLEEP_0>;
            capacity-dmips-mhz = <592>;
            operating-points-v2 = <&cluster0_opp>;
            #cooling-cells = <2>;
        };
        cpu2: cpu@2 {
            compatible = "arm,cortex-a53";
            device_type = "cpu";
            reg = <0x0 0x2>;
            enable-method = "psci";
            next-level-cache = <&A53_L2>;
            cpu-idle-states = <&CPU_SLEEP_0 &CLUSTER_SLEEP_0>;
            capacity-dmips-mhz = <592>;
            operating-points-v2 = <&cluster0_opp>;
            #cooling-cells = <2>;
        };
        cpu3: cpu@3 {
            compatible = "arm,cortex-a53";
            device_type = "cpu";
            reg = <0x0 0x3>;
            enable-method = "psci";
            next-level-cache = <&A53_L2>;
            cpu-idle-states = <&CPU_SLEEP_0 &CLUSTER_SLEEP_0>;
            capacity-dmips-mhz = <592>;
            operating-points-v2 = <&cluster0_opp>;
            #cooling-cells = <2>;
        };
        cpu4: cpu@100 {
            compatible = "arm,cortex-a73";
            device_type = "cpu";
            reg = <0x0 0x100>;
            enable-method = "psci";
            next-level-cache = <&A73_L2>;
            cpu-idle-states = <&CPU_SLEEP_1 &CLUSTER_SLEEP_1>;
            capacity-dmips-mhz = <1024>;
            operating-points-v2 = <&cluster1_opp>;
            #cooling-cells = <2>;
            dynamic-power-coefficient = <550>;
            local,wfi-power-uw = <9900>;
        };
        cpu5: cpu@101 {
            compatible = "arm,cortex-a73";
            device_type = "cpu";
            reg = <0x0 0x101>;
            enable-method = "psci";
            next-level-cache = <&A73_L2>;
            cpu-idle-states = <&CPU_SLEEP_1 &CLUSTER_SLEEP_1>;
            capacity-dmips-mhz = <1024>;
            operating-points-v2 = <&cluster1_opp>;
            #cooling-cells = <2>;
        };
        cpu6: cpu@102 {
            compatible = "arm,cortex-a73";
            device_type = "cpu";
            reg = <0x0 0x102>;
            enable-method = "psci";
            next-level-cache = <&A73_L2>;
            cpu-idle-states = <&CPU_SLEEP_1 &CLUSTER_SLEEP_1>;
            capacity-dmips-mhz = <1024>;
            operating-points-v2 = <&cluster1_opp>;
            #cooling-cells = <2>;
        };
        cpu7: cpu@103 {
            compatible = "arm,cortex-a73";
            device_type = "cpu";
            reg = <0x0 0x103>;
            enable-method = "psci";
            next-level-cache = <&A73_L2>;
            cpu-idle-states = <&CPU_SLEEP_1 &CLUSTER_SLEEP_1>;
            capacity-dmips-mhz = <1024>;
            operating-points-v2 = <&cluster1_opp>;
            #cooling-cells = <2>;
        };

        idle-states {
            entry-method = "psci";

            CPU_SLEEP_0: cpu-sleep-0 {
                compatible = "arm,idle-state";
                local-timer-stop;
                arm,psci-suspend-param = <0x0010000>;
                entry-latency-us = <400>;
                exit-latency-us = <650>;
                min-residency-us = <1500>;
                local,power-uw = <0>;
            };
            CLUSTER_SLEEP_0: cluster-sleep-0 {
                compatible = "arm,idle-state";
                local-timer-stop;
                arm,psci-suspend-param = <0x1010000>;
                entry-latency-us = <500>;
                exit-latency-us = <1600>;
                min-residency-us = <3500>;
                local,power-uw = <0>;
            };

            CPU_SLEEP_1: cpu-sleep-1 {
                compatible = "arm,idle-state";
                local-timer-stop;
                arm,psci-suspend-param = <0x0010000>;
                entry-latency-us = <400>;
                exit-latency-us = <550>;
                min-residency-us = <1500>;
                local,power-uw = <1700>;
            };
            CLUSTER_SLEEP_1: cluster-sleep-1 {
                compatible = "arm,idle-state";
                local-timer-stop;
                arm,psci-suspend-param = <0x1010000>;
                entry-latency-us = <800>;
                exit-latency-us = <2900>;
                min-residency-us = <3500>;
                local,power-uw = <0>;
            };
        };

        A53_L2: l2-cache0 {
            compatible = "cache";
        };
        A73_L2: l2-cache1 {
            compatible = "cache";
        };
    };

    cluster0_opp: opp_table0 {
        compatible = "operating-points-v2";
        opp-shared;

        opp00 { opp-hz = /bits/ 64 <533000000>; opp-microvolt = <700000>; clock-latency-ns = <300000>; };
        opp01 { opp-hz = /bits/ 64 <999000000>; opp-microvolt = <800000>; clock-latency-ns = <300000>; };
        opp02 { opp-hz = /bits/ 64 <1402000000>; opp-microvolt = <900000>; clock-latency-ns = <300000>; };
        opp03 { opp-hz = /bits/ 64 <1709000000>; opp-microvolt = <1000000>; clock-latency-ns = <300000>; };
        opp04 { opp-hz = /bits/ 64 <1844000000>; opp-microvolt = <1100000>; clock-latency-ns = <300000>; };
    };

    cluster1_opp: opp_table1 {
        compatible = "operating-points-v2";
        opp-shared;

        opp10 { opp-hz = /bits/ 64 <903000000>; opp-microvolt = <700000>; clock-latency-ns = <300000>; };
        opp11 { opp-hz = /bits/ 64 <1421000000>; opp-microvolt = <800000>; clock-latency-ns = <300000>; };
        opp12 { opp-hz = /bits/ 64 <1805000000>; opp-microvolt = <900000>; clock-latency-ns = <300000>; };
        opp13 { opp-hz = /bits/ 64 <2112000000>; opp-microvolt = <1000000>; clock-latency-ns = <300000>; };
        opp14 { opp-hz = /bits/ 64 <2362000000>; opp-microvolt = <1100000>; clock-latency-ns = <300000>; };
    };
};
"#;

fn load(source: &str) -> Result<EnergyModel, ModelError> {
    EnergyModel::from_dtb(&compile(source))
}

/// `source` with the first `from` replaced by `to` (which must be there).
fn edit(source: &str, from: &str, to: &str) -> String {
    assert!(source.contains(from), "{from:?} is not in the source");
    source.replacen(from, to, 1)
}

fn node_error(source: &str) -> (String, String, String) {
    match load(source) {
        Err(ModelError::Node { node, property, reason }) => (node, property, reason),
        other => panic!("expected a node error, got {other:?}"),
    }
}

#[test]
fn reads_an_msm8916_with_cpu_idle_states() {
    let m = load(MSM8916).unwrap();
    assert_eq!(m.name(), "Qualcomm Technologies, Inc. APQ 8016 SBC");
    assert_eq!(m.core_count(), 4);
    assert_eq!(m.core_types().len(), 1);
    assert_eq!(m.clusters().len(), 1);
    assert_eq!(m.clusters()[0].name, "cpus");
    assert_eq!(m.clusters()[0].idle_states, []);
    let a53 = m.core_type(CoreId(2));
    assert_eq!(a53.name, "cortex-a53");
    assert_eq!(a53.capacity_dmips_mhz, 1024, "no capacity-dmips-mhz anywhere: every CPU counts as 1024");
    let freqs: Vec<u32> = a53.opps.iter().map(|o| o.freq_khz).collect();
    assert_eq!(freqs, [200_000, 400_000, 533_330, 800_000, 998_400, 1_094_400, 1_152_000, 1_209_600]);
    // 311 × 1350² × 1209 / 10⁶ (MHz truncated, as Linux).
    assert_eq!(a53.opps[7].power_uw, 685_258);
    assert_eq!(m.max_capacity(CoreId(0)), 1024);
    let names: Vec<&str> = a53.idle_states.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["WFI", "standalone-power-collapse"]);
    let spc = &a53.idle_states[1];
    assert_eq!((spc.entry_latency_us, spc.exit_latency_us, spc.min_residency_us), (130, 150, 2_000));
    assert_eq!(m.deepest_idle_state_for(CoreId(1), Nanos::from_millis(2)), 1);
    // The built-in profile comes from the same figures.
    assert_eq!(a53, &EnergyModel::builtin("sd410").unwrap().core_types()[0]);
}

#[test]
fn reads_an_msm8916_with_psci_power_domains() {
    let m = load(MSM8916_DOMAINS).unwrap();
    assert_eq!(m.core_count(), 4);
    assert_eq!(m.core_types().len(), 1, "CPU3's extra CPR domain does not make it another type");
    assert_eq!(m.clusters().len(), 1);
    let cluster = &m.clusters()[0];
    assert_eq!(cluster.name, "power-domain-cluster");
    let builtin = EnergyModel::builtin("sd410").unwrap();
    assert_eq!(m.core_types(), builtin.core_types());
    assert_eq!(cluster.idle_states, builtin.clusters()[0].idle_states);
    assert_eq!(cluster.active_power_uw, 47_000);
    assert_eq!(m.deepest_cluster_state_for(0, Nanos::from_millis(5)), Some(0));
    assert_eq!(m.deepest_cluster_state_for(0, Nanos::from_millis(6)), Some(1));
}

#[test]
fn reads_a_hikey960() {
    let m = load(HIKEY960).unwrap();
    assert_eq!(m.name(), "HiKey960");
    assert_eq!(m.core_count(), 8);
    assert_eq!(m.max_capacity(CoreId(0)), 462);
    assert_eq!(m.max_capacity(CoreId(7)), 1024);
    assert_eq!(m.cluster_of(CoreId(3)), 0);
    assert_eq!(m.cluster_of(CoreId(4)), 1);
    let little = m.core_type(CoreId(1));
    assert_eq!(little.idle_states.len(), 2, "WFI and cpu-sleep-0; cluster-sleep-0 is the cluster's");
    assert_eq!(m.clusters()[0].idle_states[0].name, "cluster-sleep-0");
    // The coefficient on cpu4 holds for cpu5-7, which share its table.
    assert_eq!(m.core_type(CoreId(6)).opps[4].power_uw, 1_571_911);
    assert_eq!(m.renamed("hikey960"), EnergyModel::builtin("hikey960").unwrap());
}

#[test]
fn disabled_nodes_are_skipped() {
    let source = edit(
        HIKEY960,
        "CLUSTER_SLEEP_1: cluster-sleep-1 {",
        "CLUSTER_SLEEP_1: cluster-sleep-1 { status = \"disabled\";",
    );
    let m = load(&source).unwrap();
    assert_eq!(m.clusters()[1].idle_states, []);
    let source = edit(HIKEY960, "opp14 {", "opp14 { status = \"disabled\";");
    assert_eq!(load(&source).unwrap().core_type(CoreId(4)).opps.len(), 4);
}

#[test]
fn opp_microwatt_is_used_when_given() {
    let mut source = String::from(HIKEY960);
    for (opp, uw) in
        [("opp10", 250_000), ("opp11", 500_000), ("opp12", 800_000), ("opp13", 1_100_000), ("opp14", 1_600_000)]
    {
        source = edit(&source, &format!("{opp} {{"), &format!("{opp} {{ opp-microwatt = <{uw}>;"));
    }
    let m = load(&source).unwrap();
    let powers: Vec<u32> = m.core_type(CoreId(4)).opps.iter().map(|o| o.power_uw).collect();
    assert_eq!(powers, [250_000, 500_000, 800_000, 1_100_000, 1_600_000]);
    // All or none.
    let partial = edit(&source, "opp12 { opp-microwatt = <800000>;", "opp12 {");
    let (node, property, reason) = node_error(&partial);
    assert_eq!((node.as_str(), property.as_str()), ("/opp_table1/opp12", "opp-microwatt"));
    assert_eq!(reason, "missing, but /opp_table1/opp10 of the same table has it");
}

#[test]
fn bad_trees_are_rejected_with_node_property_and_reason() {
    let cases: &[(&str, &str, &str)] = &[
        // OPPs out of order.
        (
            "opp-hz = /bits/ 64 <999000000>",
            "opp-hz = /bits/ 64 <500000000>",
            "/opp_table0/opp01: opp-hz: not increasing (500000000 after 533000000): list OPPs from slowest to fastest",
        ),
        // A missing OPP table.
        (
            "operating-points-v2 = <&cluster0_opp>;\n            #cooling-cells = <2>;\n        };\n        cpu3",
            "#cooling-cells = <2>;\n        };\n        cpu3",
            "/cpus/cpu@2: operating-points-v2: missing: the energy model needs the OPP table",
        ),
        // Only the legacy table.
        (
            "operating-points-v2 = <&cluster0_opp>;\n            #cooling-cells = <2>;\n        };\n        cpu3",
            "operating-points = <533000 700000>;\n        };\n        cpu3",
            "/cpus/cpu@2: operating-points-v2: missing (the legacy operating-points table has no place for power data)",
        ),
        // A phandle to nowhere.
        (
            "cpu-idle-states = <&CPU_SLEEP_0 &CLUSTER_SLEEP_0>;\n            capacity-dmips-mhz = <592>;\n            operating-points-v2 = <&cluster0_opp>;\n            #cooling-cells = <2>;\n        };\n        cpu2",
            "cpu-idle-states = <&CPU_SLEEP_0 0x99>;\n            capacity-dmips-mhz = <592>;\n            operating-points-v2 = <&cluster0_opp>;\n            #cooling-cells = <2>;\n        };\n        cpu2",
            "/cpus/cpu@1: cpu-idle-states: phandle 0x99 refers to no node",
        ),
        // No idle power.
        (
            "min-residency-us = <1500>;\n                local,power-uw = <0>;",
            "min-residency-us = <1500>;",
            "/cpus/idle-states/cpu-sleep-0: local,power-uw: missing: Linux device trees carry no idle power; add it \
             (µW), or use a TOML model or a built-in profile",
        ),
        (
            "local,wfi-power-uw = <9900>;",
            "",
            "/cpus/cpu@100: local,wfi-power-uw: missing: Linux device trees carry no idle power; add it (µW), or use \
             a TOML model or a built-in profile",
        ),
        // A missing latency.
        ("min-residency-us = <3500>;", "", "/cpus/idle-states/cluster-sleep-0: min-residency-us: missing"),
        // Power data that disagrees, or is not there.
        (
            "capacity-dmips-mhz = <592>;\n            operating-points-v2 = <&cluster0_opp>;\n            #cooling-cells = <2>;\n        };\n        cpu2",
            "capacity-dmips-mhz = <592>;\n            operating-points-v2 = <&cluster0_opp>;\n            #cooling-cells = <2>;\n            dynamic-power-coefficient = <111>;\n        };\n        cpu2",
            "/cpus/cpu@1: dynamic-power-coefficient: 111 differs from 110 on /cpus/cpu@0, which shares the OPP table \
             /opp_table0",
        ),
        (
            "dynamic-power-coefficient = <550>;",
            "",
            "/opp_table1/opp10: no power: give opp-microwatt on each OPP, or dynamic-power-coefficient on a CPU that \
             uses this table and opp-microvolt on each OPP",
        ),
        ("dynamic-power-coefficient = <550>;", "dynamic-power-coefficient = <0>;", "/cpus/cpu@100: dynamic-power-coefficient: must not be 0"),
        ("opp-microvolt = <900000>;", "", "/opp_table0/opp02: opp-microvolt: missing: the power comes from the CPU's dynamic-power-coefficient and this voltage"),
        (
            "opp-hz = /bits/ 64 <2362000000>; opp-microvolt = <1100000>;",
            "opp-hz = /bits/ 64 <2362000000>; opp-microvolt = <600000>;",
            "/opp_table1/opp14: opp-microvolt: decreases with frequency (467676 µW at 2362000 kHz, 1161600 µW at \
             2112000 kHz)",
        ),
        ("opp-hz = /bits/ 64 <533000000>;", "opp-hz = <533000000>;", "/opp_table0/opp00: opp-hz: must be 64-bit values (/bits/ 64), has 4 bytes"),
        ("opp-hz = /bits/ 64 <533000000>;", "", "/opp_table0/opp00: opp-hz: missing"),
        ("cluster1_opp: opp_table1 {\n        compatible = \"operating-points-v2\";", "cluster1_opp: opp_table1 {", "/opp_table1: compatible: not an operating-points-v2 table"),
        // capacity-dmips-mhz on some CPUs only.
        (
            "reg = <0x0 0x3>;\n            enable-method = \"psci\";\n            next-level-cache = <&A53_L2>;\n            cpu-idle-states = <&CPU_SLEEP_0 &CLUSTER_SLEEP_0>;\n            capacity-dmips-mhz = <592>;",
            "reg = <0x0 0x3>;\n            enable-method = \"psci\";\n            next-level-cache = <&A53_L2>;\n            cpu-idle-states = <&CPU_SLEEP_0 &CLUSTER_SLEEP_0>;",
            "/cpus/cpu@3: capacity-dmips-mhz: missing, but /cpus/cpu@0 has it (give it on every CPU or on none)",
        ),
        // Idle states in the wrong order, or costing more than the cluster they save.
        (
            "exit-latency-us = <650>;",
            "exit-latency-us = <0>;",
            "/cpus/idle-states/cpu-sleep-0: exit-latency-us: 0 is less than the 1 of the shallower state \"WFI\": \
             list idle states from shallowest to deepest",
        ),
        (
            "min-residency-us = <3500>;\n                local,power-uw = <0>;",
            "min-residency-us = <3500>;\n                local,power-uw = <9000>;",
            "/cpus/idle-states/cluster-sleep-0: local,power-uw: 9000 µW is more than the active cluster (5900 µW)",
        ),
        // Cores of a cluster that do not agree on its states, or that no cluster lists.
        (
            "cpu-idle-states = <&CPU_SLEEP_0 &CLUSTER_SLEEP_0>;\n            capacity-dmips-mhz = <592>;\n            operating-points-v2 = <&cluster0_opp>;\n            #cooling-cells = <2>;\n        };\n        cpu4",
            "cpu-idle-states = <&CPU_SLEEP_0>;\n            capacity-dmips-mhz = <592>;\n            operating-points-v2 = <&cluster0_opp>;\n            #cooling-cells = <2>;\n        };\n        cpu4",
            "/cpus/cpu@3: its cluster idle states differ from those of /cpus/cpu@0, in the same cluster cluster0",
        ),
        ("core3 { cpu = <&cpu3>; };", "", "/cpus/cpu@3: not listed in /cpus/cpu-map"),
        ("core3 { cpu = <&cpu3>; };", "core3 { cpu = <&cpu2>; };", "/cpus/cpu-map/cluster0/core3: cpu: /cpus/cpu@2 is listed twice"),
        ("local,active-power-uw = <5900>;", "local,active-power-uw = /bits/ 64 <5900>;", "/cpus/cpu-map/cluster0: local,active-power-uw: must be one 32-bit cell, has 8 bytes"),
    ];
    for (from, to, expected) in cases {
        let e = load(&edit(HIKEY960, from, to)).expect_err(expected);
        assert_eq!(e.to_string(), *expected, "replacing {from:?}");
    }
}

#[test]
fn trees_without_cpus_are_rejected() {
    let e = load("/ { model = \"no cpus\"; };").unwrap_err();
    assert_eq!(e.to_string(), "/: no /cpus node");
    let e = load("/ { cpus { #address-cells = <1>; l2 { compatible = \"cache\"; }; }; };").unwrap_err();
    assert_eq!(e.to_string(), "/cpus: no CPU nodes (children with device_type = \"cpu\")");
    let (node, _, reason) = node_error(&edit(HIKEY960, "psci {", "psci { phandle = <1>;"));
    assert_eq!((node.as_str(), reason.as_str()), ("/cpus/cpu@0", "0x1 is also the phandle of /psci"));
}

#[test]
fn blobs_that_are_not_device_trees_are_rejected() {
    assert!(matches!(EnergyModel::from_dtb(b"not a device tree"), Err(ModelError::Blob { .. })));
    assert!(matches!(EnergyModel::from_dtb(&[]), Err(ModelError::Blob { .. })));
    let blob = compile(HIKEY960);
    let e = EnergyModel::from_dtb(&blob[..blob.len() / 2]).unwrap_err();
    assert!(e.to_string().starts_with("not a readable device tree: "), "{e}");
}

/// A blob of `levels` nested empty nodes under the root, written by hand (`vm-fdt` refuses
/// more than 64 levels).
fn nested_blob(levels: usize) -> Vec<u8> {
    let mut structure = Vec::new();
    let word = |w: u32, out: &mut Vec<u8>| out.extend_from_slice(&w.to_be_bytes());
    word(1, &mut structure); // FDT_BEGIN_NODE, the root's empty name padded to a word
    word(0, &mut structure);
    for _ in 0..levels {
        word(1, &mut structure);
        structure.extend_from_slice(b"n\0\0\0");
    }
    for _ in 0..=levels {
        word(2, &mut structure); // FDT_END_NODE
    }
    word(9, &mut structure); // FDT_END
    let header_and_reservations = 40 + 16;
    let total = header_and_reservations + structure.len();
    let mut blob = Vec::new();
    for w in [0xd00d_feed, total as u32, 56, total as u32, 40, 17, 16, 0, 0, structure.len() as u32] {
        word(w, &mut blob);
    }
    blob.extend_from_slice(&[0; 16]); // the empty memory reservation map
    blob.extend_from_slice(&structure);
    blob
}

/// Deep nesting is rejected before anything recurses through it (100 000 levels would
/// overflow the stack).
#[test]
fn deeply_nested_blobs_are_rejected() {
    let e = EnergyModel::from_dtb(&nested_blob(100_000)).unwrap_err();
    assert_eq!(e.to_string(), "not a readable device tree: nodes nested deeper than 32 levels");
    assert_eq!(EnergyModel::from_dtb(&nested_blob(33)).unwrap_err(), e);
    // 32 levels below the root are read (and then there is no /cpus).
    assert_eq!(EnergyModel::from_dtb(&nested_blob(32)).unwrap_err().to_string(), "/: no /cpus node");
}

/// Corrupted blobs give an error or some model, never a panic or a hang.
#[test]
fn corrupted_blobs_never_panic() {
    let blob = compile(HIKEY960);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut rejected = 0;
    for round in 0..3_000 {
        let mut bad = blob.clone();
        for _ in 0..1 + round % 4 {
            let at = random() as usize % bad.len();
            bad[at] = match round % 3 {
                0 => random() as u8,
                1 => bad[at] ^ 0x01,
                _ => 0xff,
            };
        }
        if round % 7 == 0 {
            bad.truncate(random() as usize % bad.len());
        }
        rejected += EnergyModel::from_dtb(&bad).is_err() as u32;
    }
    assert!(rejected > 100, "corruption went unnoticed: only {rejected} rejected");
}

#[test]
fn errors_name_the_node_for_model_rules_too() {
    // A cluster state that costs more than the active cluster in a tree without a cpu-map:
    // the implicit cluster is described by /cpus.
    let source = edit(MSM8916_DOMAINS, "local,active-power-uw = <47000>;", "");
    let (node, property, reason) = node_error(&source);
    assert_eq!((node.as_str(), property.as_str()), ("/cpus/domain-idle-states/cluster-retention", "local,power-uw"));
    assert_eq!(reason, "23500 µW is more than the active cluster (0 µW)");
    let implicit = edit(MSM8916, "#size-cells = <0>;\n", "#size-cells = <0>;\n        local,off-power-uw = <5>;\n");
    let (node, property, _) = node_error(&implicit);
    assert_eq!((node.as_str(), property.as_str()), ("/cpus", "local,off-power-uw"));
    let off = edit(
        MSM8916,
        "local,wfi-power-uw = <15000>;",
        "local,wfi-power-uw = <15000>;\n            local,off-power-uw = <1>;",
    );
    let (node, property, reason) = node_error(&off);
    assert_eq!((node.as_str(), property.as_str()), ("/cpus/cpu@0", "local,off-power-uw"));
    assert!(reason.contains("more than the deepest idle state"), "{reason}");
    let wfi = edit(MSM8916, "local,wfi-power-uw = <15000>;", "local,wfi-power-uw = <100000>;");
    let (node, property, reason) = node_error(&wfi);
    assert_eq!((node.as_str(), property.as_str()), ("/cpus/cpu@0", "local,wfi-power-uw"));
    assert!(reason.contains("more than running at the slowest operating point"), "{reason}");
}
