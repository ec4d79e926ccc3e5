//! Reading an energy model from TOML (host only, feature `std`). The format is documented in
//! `docs/energy-models.md`; its layout is the model's own, so a rule broken anywhere is
//! reported with the dotted path of the field, e.g. `core_types[0].opps[2].power_uw`.

use std::format;
use std::string::String;
use std::vec::Vec;
use vcpu_runtime::scenario::line_col;

use serde::Deserialize;
use vcpu_runtime::ids::CoreMask;

use crate::model::{
    build, dynamic_power_uw, join_path, Cluster, CoreModel, CoreType, IdleState, Item, ModelError, Opp, Violation,
};
use crate::EnergyModel;

/// Parses and checks a TOML energy model.
pub(crate) fn parse(text: &str) -> Result<EnergyModel, ModelError> {
    let raw: RawModel = toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map_or((0, 0), |s| line_col(text, s.start));
        let reason = e.message().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ");
        ModelError::Syntax { line, column, reason }
    })?;
    raw.convert()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    name: Option<String>,
    core_types: Option<Vec<RawCoreType>>,
    clusters: Option<Vec<RawCluster>>,
    cores: Option<Vec<RawCores>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCoreType {
    name: Option<String>,
    capacity_dmips_mhz: Option<i64>,
    dynamic_power_coefficient: Option<i64>,
    off_power_uw: Option<i64>,
    opps: Option<Vec<RawOpp>>,
    idle_states: Option<Vec<RawIdleState>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOpp {
    freq_khz: Option<i64>,
    power_uw: Option<i64>,
    microvolt: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdleState {
    name: Option<String>,
    power_uw: Option<i64>,
    entry_latency_us: Option<i64>,
    exit_latency_us: Option<i64>,
    min_residency_us: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: Option<String>,
    active_power_uw: Option<i64>,
    off_power_uw: Option<i64>,
    idle_states: Option<Vec<RawIdleState>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCores {
    core_type: Option<String>,
    cluster: Option<String>,
    count: Option<i64>,
}

fn field_error(path: impl Into<String>, reason: impl Into<String>) -> ModelError {
    ModelError::Field { path: path.into(), reason: reason.into() }
}

fn required<T>(value: Option<T>, path: &str) -> Result<T, ModelError> {
    value.ok_or_else(|| field_error(path, "missing"))
}

/// A non-negative integer that fits the model's `u32`; `positive` also rules out 0.
fn number(value: i64, path: &str, positive: bool) -> Result<u32, ModelError> {
    if value < 0 {
        return Err(field_error(path, format!("must not be negative, got {value}")));
    }
    if positive && value == 0 {
        return Err(field_error(path, "must be greater than 0"));
    }
    u32::try_from(value).map_err(|_| field_error(path, format!("too large, at most {}", u32::MAX)))
}

fn required_number(value: Option<i64>, path: &str, positive: bool) -> Result<u32, ModelError> {
    number(required(value, path)?, path, positive)
}

fn optional_number(value: Option<i64>, path: &str, default: u32) -> Result<u32, ModelError> {
    value.map_or(Ok(default), |v| number(v, path, false))
}

fn idle_states(raw: Option<Vec<RawIdleState>>, at: &str) -> Result<Vec<IdleState>, ModelError> {
    let mut states = Vec::new();
    for (j, s) in raw.unwrap_or_default().into_iter().enumerate() {
        let path = |field: &str| format!("{at}[{j}].{field}");
        states.push(IdleState {
            name: required(s.name, &path("name"))?,
            power_uw: required_number(s.power_uw, &path("power_uw"), false)?,
            entry_latency_us: required_number(s.entry_latency_us, &path("entry_latency_us"), false)?,
            exit_latency_us: required_number(s.exit_latency_us, &path("exit_latency_us"), false)?,
            min_residency_us: required_number(s.min_residency_us, &path("min_residency_us"), false)?,
        });
    }
    Ok(states)
}

impl RawModel {
    fn convert(self) -> Result<EnergyModel, ModelError> {
        let name = required(self.name, "name")?;
        let raw_types = required(self.core_types, "core_types")?;
        let raw_clusters = required(self.clusters, "clusters")?;
        let raw_cores = required(self.cores, "cores")?;

        // capacity_dmips_mhz: for every type or none, as the device-tree property.
        if let Some(with) = raw_types.iter().position(|t| t.capacity_dmips_mhz.is_some()) {
            if let Some(without) = raw_types.iter().position(|t| t.capacity_dmips_mhz.is_none()) {
                return Err(field_error(
                    format!("core_types[{without}].capacity_dmips_mhz"),
                    format!("missing, but core_types[{with}] has it (give it for every core type or for none)"),
                ));
            }
        }

        let mut core_types = Vec::with_capacity(raw_types.len());
        // Per type, which OPPs had their power computed from a voltage.
        let mut from_voltage: Vec<Vec<bool>> = Vec::with_capacity(raw_types.len());
        for (t, ty) in raw_types.into_iter().enumerate() {
            let at = format!("core_types[{t}]");
            let path = |field: &str| format!("{at}.{field}");
            let coefficient = ty
                .dynamic_power_coefficient
                .map(|c| number(c, &path("dynamic_power_coefficient"), true))
                .transpose()?;
            let mut opps = Vec::new();
            let mut voltage = Vec::new();
            for (i, o) in required(ty.opps, &path("opps"))?.into_iter().enumerate() {
                let opp_path = |field: &str| format!("{at}.opps[{i}].{field}");
                let freq_khz = required_number(o.freq_khz, &opp_path("freq_khz"), true)?;
                let power_uw = match (o.power_uw, o.microvolt) {
                    (Some(p), None) => number(p, &opp_path("power_uw"), true)?,
                    (None, Some(uv)) => {
                        let uv = number(uv, &opp_path("microvolt"), true)?;
                        let c = coefficient.ok_or_else(|| {
                            field_error(
                                path("dynamic_power_coefficient"),
                                format!("missing, but opps[{i}] gives microvolt"),
                            )
                        })?;
                        dynamic_power_uw(c, uv, freq_khz as u64 * 1000)
                            .ok_or_else(|| field_error(opp_path("microvolt"), "power too large"))?
                    }
                    (Some(_), Some(_)) => {
                        return Err(field_error(opp_path("microvolt"), "give power_uw or microvolt, not both"))
                    }
                    (None, None) => return Err(field_error(opp_path("power_uw"), "missing (or give microvolt)")),
                };
                voltage.push(o.microvolt.is_some());
                opps.push(Opp { freq_khz, capacity: 0, power_uw });
            }
            core_types.push(CoreType {
                name: required(ty.name, &path("name"))?,
                capacity_dmips_mhz: optional_number(ty.capacity_dmips_mhz, &path("capacity_dmips_mhz"), 1024)?,
                opps,
                idle_states: idle_states(ty.idle_states, &path("idle_states"))?,
                off_power_uw: optional_number(ty.off_power_uw, &path("off_power_uw"), 0)?,
            });
            from_voltage.push(voltage);
        }

        let mut clusters = Vec::with_capacity(raw_clusters.len());
        for (c, cluster) in raw_clusters.into_iter().enumerate() {
            let path = |field: &str| format!("clusters[{c}].{field}");
            clusters.push(Cluster {
                name: required(cluster.name, &path("name"))?,
                active_power_uw: optional_number(cluster.active_power_uw, &path("active_power_uw"), 0)?,
                idle_states: idle_states(cluster.idle_states, &path("idle_states"))?,
                off_power_uw: optional_number(cluster.off_power_uw, &path("off_power_uw"), 0)?,
            });
        }

        let mut cores = Vec::new();
        // The `cores` entry each core came from.
        let mut entry_of_core = Vec::new();
        for (e, entry) in raw_cores.into_iter().enumerate() {
            let path = |field: &str| format!("cores[{e}].{field}");
            let type_name = required(entry.core_type, &path("core_type"))?;
            let core_type = core_types.iter().position(|t| t.name == type_name).ok_or_else(|| {
                let known: Vec<&str> = core_types.iter().map(|t| t.name.as_str()).collect();
                field_error(
                    path("core_type"),
                    format!("unknown core type {type_name:?}, expected one of {}", known.join(", ")),
                )
            })?;
            let cluster_name = required(entry.cluster, &path("cluster"))?;
            let cluster = clusters.iter().position(|c| c.name == cluster_name).ok_or_else(|| {
                let known: Vec<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
                field_error(
                    path("cluster"),
                    format!("unknown cluster {cluster_name:?}, expected one of {}", known.join(", ")),
                )
            })?;
            let count = optional_number(entry.count, &path("count"), 1)?;
            if count == 0 || count as usize > CoreMask::MAX_CORES {
                let reason = format!("must be between 1 and {}, got {count}", CoreMask::MAX_CORES);
                return Err(field_error(path("count"), reason));
            }
            for _ in 0..count {
                cores.push(CoreModel { core_type, cluster });
                entry_of_core.push(e);
            }
        }

        build(name, core_types, clusters, cores).map_err(|v| locate(v, &entry_of_core, &from_voltage))
    }
}

/// The TOML path of a model rule broken at `v`.
fn locate(v: Violation, entry_of_core: &[usize], from_voltage: &[Vec<bool>]) -> ModelError {
    match v.item {
        Item::Core(n) => field_error(join_path(&format!("cores[{}]", entry_of_core[n]), v.field), v.reason),
        Item::Opp(t, i) if v.field == "power_uw" && from_voltage[t][i] => field_error(
            join_path(&v.item.path(), "microvolt"),
            format!("{} (the power computed from microvolt and dynamic_power_coefficient)", v.reason),
        ),
        item => field_error(join_path(&item.path(), v.field), v.reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;
    use vcpu_runtime::ids::CoreId;

    const BIG_LITTLE: &str = r#"
name = "two-clusters"

[[core_types]]
name = "little"
capacity_dmips_mhz = 512
off_power_uw = 0
opps = [
    { freq_khz = 500000, power_uw = 50000 },
    { freq_khz = 1000000, power_uw = 150000 },
]
idle_states = [
    { name = "WFI", power_uw = 10000, entry_latency_us = 1, exit_latency_us = 1, min_residency_us = 1 },
    { name = "cpu-sleep", power_uw = 0, entry_latency_us = 100, exit_latency_us = 200, min_residency_us = 1000 },
]

[[core_types]]
name = "big"
capacity_dmips_mhz = 1024
dynamic_power_coefficient = 550
opps = [
    { freq_khz = 903000, microvolt = 700000 },
    { freq_khz = 2362000, microvolt = 1100000 },
]
idle_states = [
    { name = "WFI", power_uw = 9900, entry_latency_us = 1, exit_latency_us = 1, min_residency_us = 1 },
]

[[clusters]]
name = "little"
active_power_uw = 6000
idle_states = [
    { name = "cluster-sleep", power_uw = 0, entry_latency_us = 500, exit_latency_us = 1600, min_residency_us = 3500 },
]

[[clusters]]
name = "big"

[[cores]]
core_type = "little"
cluster = "little"
count = 2

[[cores]]
core_type = "big"
cluster = "big"
"#;

    fn error(text: &str) -> ModelError {
        match parse(text) {
            Err(e) => e,
            Ok(m) => panic!("parsed: {m:?}"),
        }
    }

    fn field(text: &str) -> (String, String) {
        match error(text) {
            ModelError::Field { path, reason } => (path, reason),
            other => panic!("expected a field error, got {other}"),
        }
    }

    #[test]
    fn reads_a_big_little_model() {
        let m = parse(BIG_LITTLE).unwrap();
        assert_eq!(m.name(), "two-clusters");
        assert_eq!(m.core_count(), 3);
        assert_eq!(m.core_type(CoreId(1)).name, "little");
        assert_eq!(m.core_type(CoreId(2)).name, "big");
        assert_eq!(m.cluster_of(CoreId(2)), 1);
        // 550 × 1100² × 2362 / 10⁶, as the hikey960 A73 top OPP.
        assert_eq!(m.core_type(CoreId(2)).opps[1].power_uw, 1_571_911);
        assert_eq!(m.max_capacity(CoreId(2)), 1024);
        // 512 × 1 GHz against 1024 × 2.362 GHz.
        assert_eq!(m.max_capacity(CoreId(0)), 216);
        assert_eq!(m.clusters()[1].idle_states, []);
        assert_eq!(m.clusters()[1].active_power_uw, 0);
    }

    #[test]
    fn the_documented_example_parses() {
        let doc = include_str!("../../docs/energy-models.md");
        let start = doc.find("```toml\n").expect("a TOML example in docs/energy-models.md") + "```toml\n".len();
        let end = start + doc[start..].find("```").unwrap();
        let m = parse(&doc[start..end]).unwrap();
        assert_eq!(m.core_count(), 4);
    }

    #[test]
    fn missing_and_negative_values_name_the_field() {
        let cases: &[(&str, &str, &str, &str)] = &[
            ("name = \"two-clusters\"", "", "name", "missing"),
            (
                "{ freq_khz = 500000, power_uw = 50000 }",
                "{ power_uw = 50000 }",
                "core_types[0].opps[0].freq_khz",
                "missing",
            ),
            ("power_uw = 50000 }", "power_uw = -5 }", "core_types[0].opps[0].power_uw", "must not be negative, got -5"),
            ("power_uw = 50000 }", "power_uw = 0 }", "core_types[0].opps[0].power_uw", "must be greater than 0"),
            (
                "{ freq_khz = 500000, power_uw = 50000 }",
                "{ freq_khz = 500000 }",
                "core_types[0].opps[0].power_uw",
                "missing (or give microvolt)",
            ),
            (
                "{ freq_khz = 500000, power_uw = 50000 }",
                "{ freq_khz = 500000, power_uw = 1, microvolt = 1 }",
                "core_types[0].opps[0].microvolt",
                "give power_uw or microvolt, not both",
            ),
            (
                "dynamic_power_coefficient = 550\n",
                "",
                "core_types[1].dynamic_power_coefficient",
                "missing, but opps[0] gives microvolt",
            ),
            (
                "dynamic_power_coefficient = 550",
                "dynamic_power_coefficient = 0",
                "core_types[1].dynamic_power_coefficient",
                "must be greater than 0",
            ),
            (
                "capacity_dmips_mhz = 512\n",
                "",
                "core_types[0].capacity_dmips_mhz",
                "missing, but core_types[1] has it (give it for every core type or for none)",
            ),
            (
                "entry_latency_us = 100,",
                "entry_latency_us = -1,",
                "core_types[0].idle_states[1].entry_latency_us",
                "must not be negative, got -1",
            ),
            ("{ name = \"cpu-sleep\", ", "{ ", "core_types[0].idle_states[1].name", "missing"),
            (
                "active_power_uw = 6000",
                "active_power_uw = 6000\noff_power_uw = 4294967296",
                "clusters[0].off_power_uw",
                "too large, at most 4294967295",
            ),
            ("count = 2", "count = 0", "cores[0].count", "must be between 1 and 64, got 0"),
            ("count = 2", "count = 70", "cores[0].count", "must be between 1 and 64, got 70"),
            (
                "core_type = \"big\"",
                "core_type = \"huge\"",
                "cores[1].core_type",
                "unknown core type \"huge\", expected one of little, big",
            ),
            (
                "cluster = \"big\"\n",
                "cluster = \"middle\"\n",
                "cores[1].cluster",
                "unknown cluster \"middle\", expected one of little, big",
            ),
        ];
        for (from, to, path, reason) in cases {
            assert!(BIG_LITTLE.contains(from), "{from}");
            let (p, r) = field(&BIG_LITTLE.replacen(from, to, 1));
            assert_eq!((p.as_str(), r.as_str()), (*path, *reason), "replacing {from:?} by {to:?}");
        }
    }

    #[test]
    fn model_rules_are_reported_at_the_toml_field() {
        let (path, reason) = field(&BIG_LITTLE.replacen("freq_khz = 1000000", "freq_khz = 400000", 1));
        assert_eq!(path, "core_types[0].opps[1].freq_khz");
        assert!(reason.starts_with("not increasing (400000 kHz after 500000 kHz)"), "{reason}");
        let (path, reason) = field(&BIG_LITTLE.replacen("microvolt = 1100000", "microvolt = 400000", 1));
        assert_eq!(path, "core_types[1].opps[1].microvolt");
        assert!(reason.contains("decreases with frequency") && reason.contains("computed from microvolt"), "{reason}");
        let (path, reason) = field(&BIG_LITTLE.replacen("min_residency_us = 1000", "min_residency_us = 0", 1));
        assert_eq!(path, "core_types[0].idle_states[1].min_residency_us");
        assert!(reason.contains("shallowest to deepest"), "{reason}");
        let many = BIG_LITTLE.replacen("cluster = \"big\"\n", "cluster = \"big\"\ncount = 62\n", 1);
        let (path, reason) = field(&many.replacen("count = 2", "count = 3", 1));
        assert_eq!((path.as_str(), reason.as_str()), ("cores", "at most 64 cores are supported, got 65"));
        let twice = BIG_LITTLE.replacen("name = \"big\"\n\n[[cores]]", "name = \"little\"\n\n[[cores]]", 1);
        let (path, reason) = field(&twice.replacen("cluster = \"big\"\n", "cluster = \"little\"\n", 1));
        assert_eq!((path.as_str(), reason.as_str()), ("clusters[1].name", "\"little\" is used twice"));
    }

    #[test]
    fn syntax_and_shape_errors_have_a_line() {
        match error("name = \"x\"\n[[core_types]]\nname = \"a\"\nwat = 3\n") {
            ModelError::Syntax { line, column, reason } => {
                assert_eq!((line, column), (4, 1));
                assert!(reason.contains("unknown field `wat`"), "{reason}");
            }
            other => panic!("{other}"),
        }
        match error("name = \"x\"\ncore_types = 3\n") {
            ModelError::Syntax { line, .. } => assert_eq!(line, 2),
            other => panic!("{other}"),
        }
        match error("name = ") {
            ModelError::Syntax { line, .. } => assert_eq!(line, 1),
            other => panic!("{other}"),
        }
        let e = error("name = \"x\"\n[[core_types]]\nname = 3\n");
        assert!(e.to_string().starts_with("line 3, column 8: "), "{e}");
    }
}
