//! Reading an energy model from a flattened device tree (DTB), in the bindings Linux uses and
//! SoC vendors already maintain, plus a few `local,` properties for what Linux does not carry
//! (idle power). `docs/energy-models.md` lists every property read and gives an example.
//!
//! What is read, per CPU node under `/cpus` (`device_type = "cpu"`, in tree order = `CoreId`):
//!
//! - `operating-points-v2` (required): the OPP table. Each enabled OPP needs `opp-hz`; its power
//!   is `opp-microwatt` if the table has it, else the Linux EM formula from the CPU's
//!   `dynamic-power-coefficient` and the OPP's `opp-microvolt` ([`dynamic_power_uw`]). CPUs
//!   sharing a table share its power data, so (as in Linux, where only the policy CPU's node
//!   is read) the coefficient may be given on just one of them; where repeated it must agree.
//! - `capacity-dmips-mhz`: on every CPU or on none (then all count as 1024), as in Linux.
//! - Idle states: `cpu-idle-states` (states whose `arm,psci-suspend-param` has a power level,
//!   bits 25:24, of 1 or more are cluster states), or else the PSCI hierarchy: the CPU's
//!   `power-domains` (the `psci` one if `power-domain-names` says so) has the core states in
//!   `domain-idle-states`, and its parent domain the cluster states. Each state needs
//!   `entry-latency-us`, `exit-latency-us`, `min-residency-us` and `local,power-uw`; disabled
//!   states are skipped. WFI comes first, with the CPU's `local,wfi-power-uw`.
//! - `local,off-power-uw` (default 0: a core that is off is power-gated).
//!
//! Clusters are the parent PSCI power domains, else the `cluster*` nodes of `/cpus/cpu-map`,
//! else one cluster of all CPUs described by `/cpus`. A cluster node may carry
//! `local,active-power-uw` and `local,off-power-uw` (default 0). The cores of a cluster must
//! agree on its idle states.
//!
//! The reader never panics on a malformed blob: [`flat_device_tree`] is fallible throughout,
//! and every property is length-checked here.

use alloc::borrow::ToOwned;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use flat_device_tree::node::FdtNode;
use flat_device_tree::Fdt;

use crate::model::{
    build, dynamic_power_uw, Cluster, CoreModel, CoreType, IdleState, Item, ModelError, Opp, Violation,
};
use crate::EnergyModel;

#[cfg(test)]
mod dts;
#[cfg(test)]
mod tests;

/// The root's index in [`Tree::nodes`]: it is added first.
const ROOT: usize = 0;

/// Deeper nesting than any real device tree; bounds the recursion on a hostile blob.
const MAX_DEPTH: usize = 32;

/// WFI's latencies: Linux's PSCI cpuidle driver gives its state 0 (WFI) 1 µs exit latency and residency.
const WFI_LATENCY_US: u32 = 1;

/// See the [module documentation](self).
pub(crate) fn load(blob: &[u8]) -> Result<EnergyModel, ModelError> {
    let fdt = Fdt::new(blob).map_err(|e| ModelError::Blob { reason: format!("{e}") })?;
    check_nesting(blob)?;
    let tree = Tree::new(&fdt)?;
    let name = tree
        .strings(ROOT, "model")
        .next()
        .or_else(|| tree.strings(ROOT, "compatible").next())
        .unwrap_or("device-tree")
        .to_owned();
    Loader::new(&tree)?.load(name)
}

/// Bounds the nesting of the structure block in one flat pass. The reader recurses once per
/// level (and so does `flat_device_tree` when it skips a subtree): without this, a hostile
/// blob of nested nodes would overflow the stack instead of being rejected.
fn check_nesting(blob: &[u8]) -> Result<(), ModelError> {
    const BEGIN_NODE: u32 = 1;
    const END_NODE: u32 = 2;
    const PROP: u32 = 3;
    const NOP: u32 = 4;
    let word = |at: usize| blob.get(at..at.checked_add(4)?).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let align = |at: usize| at.checked_add(3).map(|a| a & !3);
    // `Fdt::new` has read the header, so both fields are there.
    let (Some(offset), Some(size)) = (word(8), word(36)) else { return Ok(()) };
    let end = (offset as usize).saturating_add(size as usize).min(blob.len());
    let mut at = offset as usize;
    let mut depth = 0usize;
    while at < end {
        at = match word(at) {
            Some(BEGIN_NODE) => {
                depth += 1;
                if depth > MAX_DEPTH + 1 {
                    return Err(ModelError::Blob { reason: format!("nodes nested deeper than {MAX_DEPTH} levels") });
                }
                let name = at + 4;
                let Some(nul) = blob.get(name..end).and_then(|b| b.iter().position(|&c| c == 0)) else { break };
                match align(name + nul + 1) {
                    Some(next) => next,
                    None => break,
                }
            }
            Some(END_NODE) => {
                depth = depth.saturating_sub(1);
                at + 4
            }
            Some(PROP) => match word(at + 4).and_then(|len| align((at + 12).checked_add(len as usize)?)) {
                Some(next) => next,
                None => break,
            },
            Some(NOP) => at + 4,
            // FDT_END, or something the reader will stop at as well.
            _ => break,
        };
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The tree: every node with its full path and properties, and the phandle index.

struct TreeNode<'a> {
    path: String,
    props: Vec<(&'a str, &'a [u8])>,
    children: Vec<usize>,
}

struct Tree<'a> {
    nodes: Vec<TreeNode<'a>>,
    /// (phandle, node), sorted by phandle.
    phandles: Vec<(u32, usize)>,
}

impl<'a> Tree<'a> {
    fn new(fdt: &Fdt<'a>) -> Result<Tree<'a>, ModelError> {
        let root = fdt.find_node("/").ok_or_else(|| ModelError::Blob { reason: "no root node".into() })?;
        let mut tree = Tree { nodes: Vec::new(), phandles: Vec::new() };
        tree.add(root, String::from("/"), 0)?;
        for (n, node) in tree.nodes.iter().enumerate() {
            for name in ["phandle", "linux,phandle"] {
                if let Some((_, value)) = node.props.iter().find(|(p, _)| *p == name) {
                    if let Ok(bytes) = <[u8; 4]>::try_from(*value) {
                        tree.phandles.push((u32::from_be_bytes(bytes), n));
                        break;
                    }
                }
            }
        }
        tree.phandles.sort_unstable();
        if let Some(w) = tree.phandles.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(tree.error(
                w[1].1,
                "phandle",
                format!("{:#x} is also the phandle of {}", w[0].0, tree.path(w[0].1)),
            ));
        }
        Ok(tree)
    }

    fn add(&mut self, node: FdtNode<'_, 'a>, path: String, depth: usize) -> Result<usize, ModelError> {
        if depth > MAX_DEPTH {
            return Err(ModelError::Blob { reason: format!("{path}: nodes nested deeper than {MAX_DEPTH} levels") });
        }
        let index = self.nodes.len();
        let props = node.properties().map(|p| (p.name, p.value)).collect();
        self.nodes.push(TreeNode { path: path.clone(), props, children: Vec::new() });
        for child in node.children() {
            let child_path = if path == "/" { format!("/{}", child.name) } else { format!("{path}/{}", child.name) };
            let c = self.add(child, child_path, depth + 1)?;
            self.nodes[index].children.push(c);
        }
        Ok(index)
    }

    fn path(&self, n: usize) -> &str {
        &self.nodes[n].path
    }

    /// The node's own name (the last path component).
    fn name(&self, n: usize) -> &str {
        let path = self.path(n);
        path.rsplit('/').next().filter(|s| !s.is_empty()).unwrap_or(path)
    }

    fn children(&self, n: usize) -> impl Iterator<Item = usize> + '_ {
        self.nodes[n].children.iter().copied()
    }

    fn child(&self, n: usize, name: &str) -> Option<usize> {
        self.children(n).find(|&c| self.name(c) == name)
    }

    fn error(&self, n: usize, property: &str, reason: impl Into<String>) -> ModelError {
        ModelError::Node { node: self.path(n).to_owned(), property: property.to_owned(), reason: reason.into() }
    }

    fn prop(&self, n: usize, name: &str) -> Option<&'a [u8]> {
        self.nodes[n].props.iter().find(|(p, _)| *p == name).map(|(_, v)| *v)
    }

    fn has(&self, n: usize, name: &str) -> bool {
        self.prop(n, name).is_some()
    }

    /// The strings of a string-list property (none if absent or not UTF-8).
    fn strings(&self, n: usize, name: &str) -> impl Iterator<Item = &'a str> {
        let text = self.prop(n, name).and_then(|v| core::str::from_utf8(v).ok()).unwrap_or("");
        text.strip_suffix('\0').unwrap_or(text).split('\0').filter(|s| !s.is_empty())
    }

    fn is_enabled(&self, n: usize) -> bool {
        matches!(self.strings(n, "status").next(), None | Some("okay" | "ok"))
    }

    /// A property's 32-bit cells.
    fn cells(&self, n: usize, name: &str) -> Result<Option<Vec<u32>>, ModelError> {
        let Some(value) = self.prop(n, name) else { return Ok(None) };
        if value.len() % 4 != 0 {
            return Err(self.error(n, name, format!("must be 32-bit cells, has {} bytes", value.len())));
        }
        Ok(Some(value.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])).collect()))
    }

    /// A property that is exactly one 32-bit cell.
    fn u32_prop(&self, n: usize, name: &str) -> Result<Option<u32>, ModelError> {
        let Some(value) = self.prop(n, name) else { return Ok(None) };
        match <[u8; 4]>::try_from(value) {
            Ok(bytes) => Ok(Some(u32::from_be_bytes(bytes))),
            Err(_) => Err(self.error(n, name, format!("must be one 32-bit cell, has {} bytes", value.len()))),
        }
    }

    fn required_u32(&self, n: usize, name: &str, why: &str) -> Result<u32, ModelError> {
        self.u32_prop(n, name)?.ok_or_else(|| self.error(n, name, format!("missing{why}")))
    }

    fn node_of(&self, from: usize, property: &str, phandle: u32) -> Result<usize, ModelError> {
        match self.phandles.binary_search_by_key(&phandle, |&(p, _)| p) {
            Ok(i) => Ok(self.phandles[i].1),
            Err(_) => Err(self.error(from, property, format!("phandle {phandle:#x} refers to no node"))),
        }
    }

    /// A property that lists phandles without arguments (`<&A &B>` or `<&A>, <&B>`).
    fn phandle_list(&self, n: usize, name: &str) -> Result<Option<Vec<usize>>, ModelError> {
        let Some(cells) = self.cells(n, name)? else { return Ok(None) };
        cells.iter().map(|&p| self.node_of(n, name, p)).collect::<Result<Vec<_>, _>>().map(Some)
    }

    /// The targets of a `power-domains`-style list, each phandle followed by as many argument
    /// cells as its target's `#power-domain-cells` says.
    fn power_domains(&self, n: usize) -> Result<Vec<usize>, ModelError> {
        let Some(cells) = self.cells(n, "power-domains")? else { return Ok(Vec::new()) };
        let mut targets = Vec::new();
        let mut rest = &cells[..];
        while let [phandle, tail @ ..] = rest {
            let target = self.node_of(n, "power-domains", *phandle)?;
            let args = self.u32_prop(target, "#power-domain-cells")?.unwrap_or(0) as usize;
            if args > tail.len() {
                let reason = format!("{} takes {args} argument cells, the list ends first", self.path(target));
                return Err(self.error(n, "power-domains", reason));
            }
            targets.push(target);
            rest = &tail[args..];
        }
        Ok(targets)
    }
}

// ---------------------------------------------------------------------------------------------
// From the tree to the model.

/// Where a CPU's cluster comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ClusterKey {
    /// A parent PSCI power domain or a `cpu-map` cluster node.
    Node(usize),
    /// No grouping given: all CPUs form one cluster, described by `/cpus`.
    AllCpus,
}

struct Cpu {
    node: usize,
    opp_table: usize,
    dmips: Option<u32>,
    core_states: Vec<usize>,
    cluster_states: Vec<usize>,
    cluster: ClusterKey,
}

/// An OPP table's contents.
struct OppTable {
    opps: Vec<Opp>,
    /// The node of each OPP.
    nodes: Vec<usize>,
    /// The property the power came from, for error messages.
    power_property: &'static str,
}

/// Which nodes each part of the model came from, to turn a [`Violation`] into a node error.
struct TypeSource {
    cpu: usize,
    table: usize,
    opps: Vec<usize>,
    /// The idle-state nodes after WFI.
    states: Vec<usize>,
    power_property: &'static str,
}

struct ClusterSource {
    node: usize,
    states: Vec<usize>,
}

struct Loader<'t, 'a> {
    tree: &'t Tree<'a>,
    cpus_node: usize,
    cpus: Vec<Cpu>,
}

const NO_IDLE_POWER: &str =
    ": Linux device trees carry no idle power; add it (µW), or use a TOML model or a built-in profile";

impl<'t, 'a> Loader<'t, 'a> {
    fn new(tree: &'t Tree<'a>) -> Result<Loader<'t, 'a>, ModelError> {
        let root = ROOT;
        let cpus_node = tree.child(root, "cpus").ok_or_else(|| tree.error(root, "", "no /cpus node"))?;
        let cpu_nodes: Vec<usize> =
            tree.children(cpus_node).filter(|&c| tree.strings(c, "device_type").next() == Some("cpu")).collect();
        if cpu_nodes.is_empty() {
            return Err(tree.error(cpus_node, "", "no CPU nodes (children with device_type = \"cpu\")"));
        }
        let map = CpuMap::read(tree, cpus_node)?;
        let cpus = cpu_nodes.iter().map(|&n| Loader::read_cpu(tree, n, &map)).collect::<Result<Vec<_>, _>>()?;
        Ok(Loader { tree, cpus_node, cpus })
    }

    fn read_cpu(tree: &Tree<'a>, n: usize, map: &CpuMap) -> Result<Cpu, ModelError> {
        let opp_table = match tree.phandle_list(n, "operating-points-v2")?.and_then(|list| list.first().copied()) {
            Some(table) => table,
            None if tree.has(n, "operating-points") => {
                return Err(tree.error(
                    n,
                    "operating-points-v2",
                    "missing (the legacy operating-points table has no place for power data)",
                ))
            }
            None => return Err(tree.error(n, "operating-points-v2", "missing: the energy model needs the OPP table")),
        };
        let dmips = tree.u32_prop(n, "capacity-dmips-mhz")?;
        let mut core_states = Vec::new();
        let mut cluster_states = Vec::new();
        let mut cluster = None;
        if let Some(states) = tree.phandle_list(n, "cpu-idle-states")? {
            for s in states.into_iter().filter(|&s| tree.is_enabled(s)) {
                let power_level = tree.u32_prop(s, "arm,psci-suspend-param")?.map_or(0, |p| (p >> 24) & 0x3);
                if power_level == 0 {
                    core_states.push(s);
                } else {
                    cluster_states.push(s);
                }
            }
        } else if let Some(domain) = psci_domain(tree, n)? {
            core_states = domain_idle_states(tree, domain)?;
            if let Some(&parent) = tree.power_domains(domain)?.first() {
                cluster_states = domain_idle_states(tree, parent)?;
                cluster = Some(ClusterKey::Node(parent));
            }
        }
        let cluster = match cluster {
            Some(key) => key,
            None => map.cluster_of(tree, n)?,
        };
        Ok(Cpu { node: n, opp_table, dmips, core_states, cluster_states, cluster })
    }

    fn load(self, name: String) -> Result<EnergyModel, ModelError> {
        let tree = self.tree;
        // capacity-dmips-mhz: all or none, as Linux (which otherwise gives every CPU 1024).
        if let Some(with) = self.cpus.iter().find(|c| c.dmips.is_some()) {
            if let Some(without) = self.cpus.iter().find(|c| c.dmips.is_none()) {
                let reason = format!("missing, but {} has it (give it on every CPU or on none)", tree.path(with.node));
                return Err(tree.error(without.node, "capacity-dmips-mhz", reason));
            }
        }

        // The OPP tables and the power data of the CPUs sharing each.
        let mut tables: Vec<(usize, OppTable, u32, u32)> = Vec::new(); // (table, contents, WFI µW, off µW)
        let mut table_of_cpu = Vec::with_capacity(self.cpus.len());
        for cpu in &self.cpus {
            if let Some(t) = tables.iter().position(|t| t.0 == cpu.opp_table) {
                table_of_cpu.push(t);
                continue;
            }
            table_of_cpu.push(tables.len());
            let sharing: Vec<usize> =
                self.cpus.iter().filter(|c| c.opp_table == cpu.opp_table).map(|c| c.node).collect();
            let coefficient = self.agreed(&sharing, cpu.opp_table, "dynamic-power-coefficient")?;
            let wfi = self.agreed(&sharing, cpu.opp_table, "local,wfi-power-uw")?;
            let off = self.agreed(&sharing, cpu.opp_table, "local,off-power-uw")?.unwrap_or(0);
            let Some(wfi) = wfi else {
                return Err(tree.error(cpu.node, "local,wfi-power-uw", format!("missing{NO_IDLE_POWER}")));
            };
            if coefficient == Some(0) {
                let holder = sharing.iter().copied().find(|&c| tree.has(c, "dynamic-power-coefficient"));
                return Err(tree.error(holder.unwrap_or(cpu.node), "dynamic-power-coefficient", "must not be 0"));
            }
            tables.push((cpu.opp_table, self.opp_table(cpu.opp_table, coefficient)?, wfi, off));
        }

        // Core types: CPUs with the same OPP table, capacity and idle states.
        let mut core_types: Vec<CoreType> = Vec::new();
        let mut type_sources: Vec<TypeSource> = Vec::new();
        let mut type_of_cpu = Vec::with_capacity(self.cpus.len());
        for (i, cpu) in self.cpus.iter().enumerate() {
            let dmips = cpu.dmips.unwrap_or(1024);
            let same = |s: &TypeSource, t: &CoreType| {
                s.table == cpu.opp_table && t.capacity_dmips_mhz == dmips && s.states == cpu.core_states
            };
            if let Some(t) = type_sources.iter().zip(&core_types).position(|(s, t)| same(s, t)) {
                type_of_cpu.push(t);
                continue;
            }
            let (_, table, wfi, off) = &tables[table_of_cpu[i]];
            let mut idle_states = Vec::with_capacity(cpu.core_states.len() + 1);
            idle_states.push(IdleState {
                name: "WFI".into(),
                power_uw: *wfi,
                entry_latency_us: WFI_LATENCY_US,
                exit_latency_us: WFI_LATENCY_US,
                min_residency_us: WFI_LATENCY_US,
            });
            for &s in &cpu.core_states {
                idle_states.push(self.idle_state(s)?);
            }
            type_of_cpu.push(core_types.len());
            core_types.push(CoreType {
                name: self.type_name(cpu.node, &core_types),
                capacity_dmips_mhz: dmips,
                opps: table.opps.clone(),
                idle_states,
                off_power_uw: *off,
            });
            type_sources.push(TypeSource {
                cpu: cpu.node,
                table: cpu.opp_table,
                opps: table.nodes.clone(),
                states: cpu.core_states.clone(),
                power_property: table.power_property,
            });
        }

        // Clusters, in order of their first CPU.
        let mut clusters: Vec<Cluster> = Vec::new();
        let mut cluster_sources: Vec<ClusterSource> = Vec::new();
        let mut keys: Vec<(ClusterKey, usize)> = Vec::new(); // (key, first CPU index)
        let mut cores = Vec::with_capacity(self.cpus.len());
        for (i, cpu) in self.cpus.iter().enumerate() {
            let cluster = match keys.iter().position(|(k, _)| *k == cpu.cluster) {
                Some(c) => {
                    let first = &self.cpus[keys[c].1];
                    if first.cluster_states != cpu.cluster_states {
                        let reason = format!(
                            "its cluster idle states differ from those of {}, in the same cluster {}",
                            tree.path(first.node),
                            clusters[c].name
                        );
                        return Err(tree.error(cpu.node, "", reason));
                    }
                    c
                }
                None => {
                    keys.push((cpu.cluster, i));
                    let node = match cpu.cluster {
                        ClusterKey::Node(n) => n,
                        ClusterKey::AllCpus => self.cpus_node,
                    };
                    let name = match cpu.cluster {
                        ClusterKey::Node(n) => tree.name(n).to_owned(),
                        ClusterKey::AllCpus => "cpus".to_owned(),
                    };
                    clusters.push(Cluster {
                        name,
                        active_power_uw: tree.u32_prop(node, "local,active-power-uw")?.unwrap_or(0),
                        idle_states: cpu
                            .cluster_states
                            .iter()
                            .map(|&s| self.idle_state(s))
                            .collect::<Result<_, _>>()?,
                        off_power_uw: tree.u32_prop(node, "local,off-power-uw")?.unwrap_or(0),
                    });
                    cluster_sources.push(ClusterSource { node, states: cpu.cluster_states.clone() });
                    clusters.len() - 1
                }
            };
            cores.push(CoreModel { core_type: type_of_cpu[i], cluster });
        }

        build(name, core_types, clusters, cores).map_err(|v| self.locate(v, &type_sources, &cluster_sources))
    }

    /// A property that CPUs sharing an OPP table may each carry, or only one of them.
    fn agreed(&self, sharing: &[usize], table: usize, property: &str) -> Result<Option<u32>, ModelError> {
        let mut found: Option<(u32, usize)> = None;
        for &cpu in sharing {
            let Some(value) = self.tree.u32_prop(cpu, property)? else { continue };
            match found {
                Some((first, at)) if first != value => {
                    let reason = format!(
                        "{value} differs from {first} on {}, which shares the OPP table {}",
                        self.tree.path(at),
                        self.tree.path(table)
                    );
                    return Err(self.tree.error(cpu, property, reason));
                }
                Some(_) => {}
                None => found = Some((value, cpu)),
            }
        }
        Ok(found.map(|(value, _)| value))
    }

    fn opp_table(&self, table: usize, coefficient: Option<u32>) -> Result<OppTable, ModelError> {
        let tree = self.tree;
        if !tree.strings(table, "compatible").any(|c| c.starts_with("operating-points-v2")) {
            return Err(tree.error(table, "compatible", "not an operating-points-v2 table"));
        }
        let entries: Vec<usize> = tree.children(table).filter(|&n| tree.is_enabled(n)).collect();
        let Some(&first) = entries.first() else {
            return Err(tree.error(table, "", "has no operating points"));
        };
        let microwatt = tree.has(first, "opp-microwatt");
        let power_property = if microwatt { "opp-microwatt" } else { "opp-microvolt" };
        let mut result = OppTable { opps: Vec::new(), nodes: Vec::new(), power_property };
        let mut previous_hz = None;
        for &n in &entries {
            let hz = opp_hz(tree, n)?;
            if let Some(previous) = previous_hz.filter(|&p| hz <= p) {
                let reason = format!("not increasing ({hz} after {previous}): list OPPs from slowest to fastest");
                return Err(tree.error(n, "opp-hz", reason));
            }
            previous_hz = Some(hz);
            let freq_khz = u32::try_from(hz / 1000).map_err(|_| tree.error(n, "opp-hz", "too large"))?;
            let power_uw = if microwatt {
                let Some(cells) = tree.cells(n, "opp-microwatt")? else {
                    let reason = format!("missing, but {} of the same table has it", tree.path(first));
                    return Err(tree.error(n, "opp-microwatt", reason));
                };
                // One value per supply: the OPP's power is their sum, as in Linux.
                let sum = cells.iter().map(|&c| c as u64).sum::<u64>();
                u32::try_from(sum).map_err(|_| tree.error(n, "opp-microwatt", "too large"))?
            } else if let Some(c) = coefficient {
                let uv = match tree.cells(n, "opp-microvolt")?.and_then(|v| v.first().copied()) {
                    Some(0) => return Err(tree.error(n, "opp-microvolt", "must not be 0")),
                    Some(uv) => uv,
                    None => {
                        let reason =
                            "missing: the power comes from the CPU's dynamic-power-coefficient and this voltage";
                        return Err(tree.error(n, "opp-microvolt", reason));
                    }
                };
                dynamic_power_uw(c, uv, hz).ok_or_else(|| tree.error(n, "opp-microvolt", "power too large"))?
            } else {
                let reason = "no power: give opp-microwatt on each OPP, or dynamic-power-coefficient on a CPU that \
                              uses this table and opp-microvolt on each OPP";
                return Err(tree.error(n, "", reason));
            };
            result.opps.push(Opp { freq_khz, capacity: 0, power_uw });
            result.nodes.push(n);
        }
        Ok(result)
    }

    fn idle_state(&self, n: usize) -> Result<IdleState, ModelError> {
        let tree = self.tree;
        let name = tree.strings(n, "idle-state-name").next().unwrap_or(tree.name(n)).to_owned();
        Ok(IdleState {
            name,
            power_uw: tree.required_u32(n, "local,power-uw", NO_IDLE_POWER)?,
            entry_latency_us: tree.required_u32(n, "entry-latency-us", "")?,
            exit_latency_us: tree.required_u32(n, "exit-latency-us", "")?,
            min_residency_us: tree.required_u32(n, "min-residency-us", "")?,
        })
    }

    /// `arm,cortex-a53` becomes `cortex-a53`; a second type of the same core gets `-2`.
    fn type_name(&self, cpu: usize, taken: &[CoreType]) -> String {
        let compatible = self.tree.strings(cpu, "compatible").next().unwrap_or("cpu");
        let base = compatible.split_once(',').map_or(compatible, |(_, model)| model);
        let mut name = base.to_owned();
        let mut k = 2;
        while taken.iter().any(|t| t.name == name) {
            name = format!("{base}-{k}");
            k += 1;
        }
        name
    }

    fn locate(&self, v: Violation, types: &[TypeSource], clusters: &[ClusterSource]) -> ModelError {
        let state_property = |field: &str| match field {
            "power_uw" => "local,power-uw",
            "entry_latency_us" => "entry-latency-us",
            "exit_latency_us" => "exit-latency-us",
            "min_residency_us" => "min-residency-us",
            "name" => "idle-state-name",
            _ => "",
        };
        let (node, property) = match v.item {
            Item::Model => (self.cpus_node, ""),
            Item::Core(n) => (self.cpus[n].node, ""),
            Item::CoreType(t) => match v.field {
                "capacity_dmips_mhz" => (types[t].cpu, "capacity-dmips-mhz"),
                "off_power_uw" => (types[t].cpu, "local,off-power-uw"),
                "opps" => (types[t].table, ""),
                _ => (types[t].cpu, ""),
            },
            Item::Opp(t, i) => match v.field {
                "power_uw" => (types[t].opps[i], types[t].power_property),
                _ => (types[t].opps[i], "opp-hz"),
            },
            Item::IdleState(t, 0) => (types[t].cpu, "local,wfi-power-uw"),
            Item::IdleState(t, j) => (types[t].states[j - 1], state_property(v.field)),
            Item::Cluster(c) => match v.field {
                "active_power_uw" => (clusters[c].node, "local,active-power-uw"),
                "off_power_uw" => (clusters[c].node, "local,off-power-uw"),
                _ => (clusters[c].node, ""),
            },
            Item::ClusterState(c, k) => (clusters[c].states[k], state_property(v.field)),
        };
        self.tree.error(node, property, v.reason)
    }
}

/// `opp-hz` is a 64-bit value (`/bits/ 64`); a table with several clocks lists one per clock,
/// and the first is the CPU's.
fn opp_hz(tree: &Tree<'_>, n: usize) -> Result<u64, ModelError> {
    let Some(value) = tree.prop(n, "opp-hz") else {
        return Err(tree.error(n, "opp-hz", "missing"));
    };
    match value.get(..8) {
        Some(bytes) if value.len() % 8 == 0 => {
            let hz =
                u64::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7]]);
            if hz == 0 {
                return Err(tree.error(n, "opp-hz", "must not be 0"));
            }
            Ok(hz)
        }
        _ => Err(tree.error(n, "opp-hz", format!("must be 64-bit values (/bits/ 64), has {} bytes", value.len()))),
    }
}

/// The CPU's PSCI power domain: the one named `psci` in `power-domain-names`, else the first.
fn psci_domain(tree: &Tree<'_>, cpu: usize) -> Result<Option<usize>, ModelError> {
    let domains = tree.power_domains(cpu)?;
    let index = tree.strings(cpu, "power-domain-names").position(|name| name == "psci").unwrap_or(0);
    Ok(domains.get(index).copied())
}

fn domain_idle_states(tree: &Tree<'_>, domain: usize) -> Result<Vec<usize>, ModelError> {
    let states = tree.phandle_list(domain, "domain-idle-states")?.unwrap_or_default();
    Ok(states.into_iter().filter(|&s| tree.is_enabled(s)).collect())
}

/// `/cpus/cpu-map`: which `cluster*` node each CPU is under (the innermost, for nested
/// clusters).
struct CpuMap {
    present: Option<usize>,
    /// (CPU node, cluster node or `None` when not under a cluster).
    entries: Vec<(usize, Option<usize>)>,
}

impl CpuMap {
    fn read(tree: &Tree<'_>, cpus: usize) -> Result<CpuMap, ModelError> {
        let mut map = CpuMap { present: tree.child(cpus, "cpu-map"), entries: Vec::new() };
        if let Some(root) = map.present {
            map.walk(tree, root, None)?;
        }
        Ok(map)
    }

    fn walk(&mut self, tree: &Tree<'_>, n: usize, cluster: Option<usize>) -> Result<(), ModelError> {
        for child in tree.children(n) {
            let cluster = if tree.name(child).starts_with("cluster") { Some(child) } else { cluster };
            if let Some(cells) = tree.cells(child, "cpu")? {
                let [phandle] = cells[..] else {
                    return Err(tree.error(child, "cpu", "must be exactly one phandle"));
                };
                let cpu = tree.node_of(child, "cpu", phandle)?;
                if self.entries.iter().any(|&(c, _)| c == cpu) {
                    return Err(tree.error(child, "cpu", format!("{} is listed twice", tree.path(cpu))));
                }
                self.entries.push((cpu, cluster));
            }
            self.walk(tree, child, cluster)?;
        }
        Ok(())
    }

    fn cluster_of(&self, tree: &Tree<'_>, cpu: usize) -> Result<ClusterKey, ModelError> {
        let Some(map) = self.present else { return Ok(ClusterKey::AllCpus) };
        match self.entries.iter().find(|&&(c, _)| c == cpu) {
            Some((_, Some(cluster))) => Ok(ClusterKey::Node(*cluster)),
            Some((_, None)) => Ok(ClusterKey::AllCpus),
            None => Err(tree.error(cpu, "", format!("not listed in {}", tree.path(map)))),
        }
    }
}
