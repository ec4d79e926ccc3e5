//! The simulator's report: per core and per vCPU, as a text table or JSON.

use std::fmt;

use serde::Serialize;
use vcpu_runtime::{Nanos, VcpuId};

use crate::Simulator;

#[derive(Clone, Debug, Serialize)]
pub struct CoreReport {
    pub core: u16,
    pub online: bool,
    /// Time spent running vCPUs, ns.
    pub busy_ns: u64,
    pub busy_percent: f64,
    pub decisions: u64,
    pub switches: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct VcpuReport {
    pub id: u16,
    pub name: String,
    pub vm: u16,
    pub owner: u16,
    /// CPU time received, ns.
    pub cpu_ns: u64,
    /// Share of all CPU time given to vCPUs, percent.
    pub share_percent: f64,
    /// Work that became due, ns at full speed (saturated for always-runnable vCPUs).
    pub demand_ns: u64,
    /// Work due and not done at the end, ns at full speed.
    pub backlog_ns: u64,
    pub wakeups: u64,
    pub wake_latency_avg_ns: u64,
    pub wake_latency_max_ns: u64,
    pub jobs_done: u64,
    pub deadline_misses: u64,
    pub max_lateness_ns: u64,
    pub max_response_ns: u64,
    pub migrations: u64,
    pub preemptions: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub scenario: String,
    pub simulated_ns: u64,
    pub events: u64,
    pub cores: Vec<CoreReport>,
    pub vcpus: Vec<VcpuReport>,
    pub violations: Vec<String>,
}

impl Report {
    pub fn vcpu(&self, name: &str) -> Option<&VcpuReport> {
        self.vcpus.iter().find(|v| v.name == name)
    }
    pub fn total_deadline_misses(&self) -> u64 {
        self.vcpus.iter().map(|v| v.deadline_misses).sum()
    }
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

pub(crate) fn build(sim: &Simulator) -> Report {
    let elapsed = sim.now.as_nanos().max(1);
    let cores: Vec<CoreReport> = sim
        .cores
        .iter()
        .map(|c| CoreReport {
            core: c.core().0,
            online: c.is_online(),
            busy_ns: c.stats().busy.as_nanos(),
            busy_percent: c.stats().busy.as_nanos() as f64 * 100.0 / elapsed as f64,
            decisions: c.stats().decisions,
            switches: c.stats().switches,
        })
        .collect();
    let total_cpu: u64 = sim.cores.iter().flat_map(|c| c.vcpus()).map(|v| v.stats().cpu_time.as_nanos()).sum();
    let mut vcpus = Vec::new();
    for (i, v) in sim.vcpus.iter().enumerate() {
        let id = VcpuId(i as u16);
        let Some((owner, sched)) =
            sim.cores.iter().find_map(|c| c.vcpus().iter().find(|s| s.id() == id).map(|s| (c.core(), s)))
        else {
            continue;
        };
        let st = sched.stats();
        vcpus.push(VcpuReport {
            id: id.0,
            name: sim.vcpu_names[i].clone(),
            vm: sched.vm().0,
            owner: owner.0,
            cpu_ns: st.cpu_time.as_nanos(),
            share_percent: st.cpu_time.as_nanos() as f64 * 100.0 / total_cpu.max(1) as f64,
            demand_ns: v.demand.as_nanos(),
            backlog_ns: v.pending.as_nanos(),
            wakeups: st.wakeups,
            wake_latency_avg_ns: st.wake_latency_total.as_nanos().checked_div(st.wakeups).unwrap_or(0),
            wake_latency_max_ns: st.wake_latency_max.as_nanos(),
            jobs_done: v.jobs_done,
            deadline_misses: v.deadline_misses + v.jobs.iter().filter(|j| j.deadline < sim.now).count() as u64,
            max_lateness_ns: v.max_lateness.as_nanos(),
            max_response_ns: v.max_response.as_nanos(),
            migrations: st.migrations,
            preemptions: st.preemptions,
        });
    }
    Report {
        scenario: sim.scenario_name.clone(),
        simulated_ns: sim.now.as_nanos(),
        events: sim.events,
        cores,
        vcpus,
        violations: sim.violations.iter().map(|v| v.to_string()).collect(),
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "scenario {}: {} simulated, {} simulator events",
            self.scenario,
            Nanos(self.simulated_ns),
            self.events
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "{:<6} {:>7} {:>12} {:>8} {:>10} {:>10}",
            "core", "state", "busy", "busy%", "decisions", "switches"
        )?;
        for c in &self.cores {
            writeln!(
                f,
                "{:<6} {:>7} {:>12} {:>7.1}% {:>10} {:>10}",
                c.core,
                if c.online { "on" } else { "off" },
                Nanos(c.busy_ns).to_string(),
                c.busy_percent,
                c.decisions,
                c.switches
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "{:<16} {:>4} {:>12} {:>7} {:>11} {:>11} {:>8} {:>6} {:>11} {:>5}",
            "vcpu", "core", "cpu", "share", "wake avg", "wake max", "jobs", "misses", "resp max", "migr"
        )?;
        for v in &self.vcpus {
            writeln!(
                f,
                "{:<16} {:>4} {:>12} {:>6.1}% {:>11} {:>11} {:>8} {:>6} {:>11} {:>5}",
                v.name,
                v.owner,
                Nanos(v.cpu_ns).to_string(),
                v.share_percent,
                Nanos(v.wake_latency_avg_ns).to_string(),
                Nanos(v.wake_latency_max_ns).to_string(),
                v.jobs_done,
                v.deadline_misses,
                Nanos(v.max_response_ns).to_string(),
                v.migrations
            )?;
        }
        if self.violations.is_empty() {
            writeln!(f, "\ninvariants: held (a vCPU never ran on two cores, only its owner ran it)")
        } else {
            writeln!(f, "\ninvariants: {} VIOLATIONS", self.violations.len())?;
            for v in &self.violations {
                writeln!(f, "  {v}")?;
            }
            Ok(())
        }
    }
}
