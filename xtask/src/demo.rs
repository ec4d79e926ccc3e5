//! `cargo xtask demo [SCENARIO]`: the scenario on the simulator (the prediction), then on the
//! hypervisor under QEMU (the main part), and a summary of the QEMU run: each guest's result,
//! the phases its guests announced with the cores' power transitions between them, the energy
//! report, the timeline files, and the simulator's energy beside the hypervisor's.
//!
//! The default is `scenarios/phone-demo.toml`: two Linux guests and the `rt` guest on a
//! dual-core phone through a light and a heavy phase. Everything is made on the way: the
//! aarch64 target, the Linux kernel and initramfs (`cargo xtask linux`), the test guests, the
//! manifest, the image, QEMU (as `cargo xtask qemu` does).

use std::path::Path;
use std::time::Duration;

use vcpu_runtime::scenario::Payload;
use vcpu_runtime::trace::{find_in, CoreState, TraceEvent, TraceKind};

use crate::cli::QemuArgs;
use crate::exec::{Cmd, Ctx};
use crate::qemu;
use crate::setup::ensure_target;
use crate::tasks::resolve_scenario;
use crate::Error;

/// The boot arguments of the demo's run: the trace without the per-switch events, which would
/// print thousands of lines and slow the guests down.
pub const DEMO_APPEND: &str = "hv.trace=events";

/// How long QEMU may take beyond the scenario's duration: building the VMs, booting, the end.
const TIMEOUT_MARGIN_SECS: u64 = 240;

/// `cargo xtask demo [SCENARIO]`.
pub fn demo(ctx: &Ctx, scenario: Option<&str>) -> Result<(), Error> {
    ensure_target(ctx)?;
    let path = resolve_scenario(ctx, scenario.unwrap_or(crate::cli::DEFAULT_SCENARIO))?;
    let loaded = vcpu_runtime::scenario::load(&ctx.root.join(&path)).map_err(|e| Error::new(e.to_string()))?;
    let bootable = loaded.guests.iter().all(|g| !matches!(g.payload, Payload::None));

    let report = Path::new("target/sim").join(format!("{}-report.json", loaded.name));
    println!("xtask: demo: 1/2: the simulator's prediction for {path}");
    std::fs::create_dir_all(ctx.root.join("target/sim")).map_err(|e| Error::new(format!("target/sim: {e}")))?;
    hvsim_cmd(&path, &report).run(ctx)?;
    let predicted = std::fs::read_to_string(ctx.root.join(&report)).ok().and_then(|json| SimEnergy::parse(&json));
    if !bootable {
        println!(
            "xtask: demo: {path} has guests without a payload (kind = \"none\"): they exist only in the \
             simulator, so the demo stops here (scenarios/phone-demo.toml boots on QEMU)"
        );
        return Ok(());
    }

    println!("xtask: demo: 2/2: the hypervisor on QEMU ({} cores), {}", loaded.board.cores, loaded.description);
    let args = QemuArgs {
        scenario: Some(path.clone()),
        append: Some(DEMO_APPEND.into()),
        timeout_secs: loaded.duration.as_nanos().div_ceil(1_000_000_000) + TIMEOUT_MARGIN_SECS,
        ..QemuArgs::default()
    };
    let run = qemu::run(ctx, &args)?;
    let names: Vec<&str> = loaded.guests.iter().map(|g| g.name.as_str()).collect();
    let summary = Summary::of(&run.output, &run.line_times, &names);
    println!();
    print!("{}", summary.render(&loaded.name, run.seconds, run.timeline.as_ref(), predicted.as_ref()));
    print!("{}", rt_misses(&run, &names));
    run.outcome()
}

/// Every real-time miss of the run's guests, each with how long QEMU's threads waited for a
/// host CPU then (`hw_tests::rtmiss`): the host here is shared, and a miss it caused says so.
fn rt_misses(run: &qemu::QemuRun, names: &[&str]) -> String {
    let lines: Vec<&str> = run.output.lines().map(|l| l.trim_end_matches('\r')).collect();
    let mut out = String::new();
    for name in names {
        let misses = hw_tests::rtmiss::misses_in(&lines, &run.line_times, &run.host_waits, name);
        if misses.is_empty() {
            continue;
        }
        let explained = misses.iter().filter(|m| m.explained()).count();
        out.push_str(&format!(
            "real-time misses of {name}: {}, {explained} of them covered by the time QEMU waited for a host CPU:\n",
            misses.len()
        ));
        for m in &misses {
            out.push_str(&format!("  {m}\n"));
        }
    }
    out
}

/// `hvsim SCENARIO --report-json REPORT`.
fn hvsim_cmd(scenario: &str, report: &Path) -> Cmd {
    Cmd::cargo([
        "run",
        "--release",
        "-p",
        "platform-sim",
        "--bin",
        "hvsim",
        "--",
        scenario,
        "--report-json",
        &report.display().to_string(),
    ])
}

/// The simulator's energy for the scenario (from `hvsim --report-json`).
#[derive(Debug, Clone, PartialEq)]
pub struct SimEnergy {
    pub energy_uj: u64,
    pub average_power_mw: f64,
    pub simulated_ns: u64,
    pub cores_off: u64,
}

impl SimEnergy {
    /// Reads the `energy` object of hvsim's JSON report.
    pub fn parse(json: &str) -> Option<SimEnergy> {
        let value: serde_json::Value = serde_json::from_str(json).ok()?;
        let e = value.get("energy")?;
        Some(SimEnergy {
            energy_uj: e.get("energy_uj")?.as_u64()?,
            average_power_mw: e.get("average_power_mw")?.as_f64()?,
            simulated_ns: e.get("simulated_ns")?.as_u64()?,
            cores_off: e.get("core_off")?.as_u64()?,
        })
    }
}

/// What the demo shows of a QEMU run.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Summary {
    /// Per guest (scenario order): its result lines (`LINUX-TEST: ...`, `RESULT: ...`, the rt
    /// guest's count), or none.
    pub results: Vec<(String, Vec<String>)>,
    /// In console order: the phases the guests announced (`[work] phases: light uptime=S`,
    /// the uptime on the guest's own clock) and the cores' power transitions, each with its
    /// time on the hypervisor's clock (s from the first trace event): a transition's from its
    /// trace event; a guest's line's from when it arrived, mapped to that clock as
    /// `hw_tests::rtmiss::clock_offset` maps it (at most that late: a line arrives after it is
    /// made). `None` when the line cannot be placed.
    pub timeline: Vec<(Option<f64>, String)>,
    /// The energy report's lines (`energy ...`).
    pub energy: Vec<String>,
    /// `energy total_uj=`, and the run's length from the cores' `run_ns`.
    pub total_uj: Option<u64>,
    pub run_ns: Option<u64>,
    /// The hypervisor's last line (`hypervisor: all guests stopped after ...`).
    pub end: Option<String>,
}

/// A guest's lines that say how it ended.
const RESULT_PREFIXES: &[&str] = &["LINUX-TEST:", "RESULT:", "rt periods=", "player: done"];

impl Summary {
    /// Reads the console output of a run of guests `names`; `times` is when each line arrived
    /// (since QEMU started; empty when unknown).
    pub fn of(output: &str, times: &[Duration], names: &[&str]) -> Summary {
        let mut s =
            Summary { results: names.iter().map(|n| (n.to_string(), Vec::new())).collect(), ..Summary::default() };
        let lines: Vec<&str> = output.lines().map(|l| l.trim_end_matches('\r')).collect();
        let offset = hw_tests::rtmiss::clock_offset(&lines[..lines.len().min(times.len())], times);
        let first_stamp = lines.iter().find_map(|l| find_in(l).and_then(|t| TraceEvent::parse(t).ok()));
        let first = first_stamp.map(|e| e.at.as_nanos());
        // A guest's line on the hypervisor's clock, in s from the first trace event.
        let placed = |i: usize| -> Option<f64> {
            let at = i128::try_from(times.get(i)?.as_nanos()).ok()? - offset?;
            Some((at - i128::from(first?)).max(0) as f64 / 1e9)
        };
        for (i, &line) in lines.iter().enumerate() {
            if let Some(event) = find_in(line).and_then(|t| TraceEvent::parse(t).ok()) {
                let since = event.at.as_nanos().saturating_sub(first.unwrap_or(0));
                if let TraceKind::CoreState { core, state } = event.kind {
                    let what = match state {
                        CoreState::Off => Some("off"),
                        CoreState::Online => Some("on"),
                        _ => None,
                    };
                    if let Some(what) = what {
                        s.timeline.push((Some(since as f64 / 1e9), format!("core {} {what}", core.0)));
                    }
                }
                continue;
            }
            if let Some((name, text)) = line.strip_prefix('[').and_then(|l| l.split_once("] ")) {
                if let Some((_, results)) = s.results.iter_mut().find(|(n, _)| n == name) {
                    if RESULT_PREFIXES.iter().any(|p| text.starts_with(p)) {
                        results.push(text.to_string());
                    }
                    if text.starts_with("phases: ") && !text.starts_with("phases: job") {
                        s.timeline.push((placed(i), format!("[{name}] {text}")));
                    }
                }
                continue;
            }
            if line.starts_with("energy") {
                s.energy.push(line.to_string());
                if let Some(v) = field(line, "energy total_uj=") {
                    s.total_uj = Some(v);
                }
                if let Some(v) = line.strip_prefix("energy core=").and_then(|l| field(l, "run_ns=")) {
                    s.run_ns = Some(v);
                }
            }
            if line.starts_with("hypervisor: all guests stopped") || line.starts_with("hypervisor: scenario duration") {
                s.end = Some(line.to_string());
            }
        }
        s
    }

    /// The summary as printed.
    pub fn render(
        &self,
        name: &str,
        seconds: f64,
        timeline: Option<&(std::path::PathBuf, std::path::PathBuf)>,
        predicted: Option<&SimEnergy>,
    ) -> String {
        let mut out = format!("xtask: demo: {name} on the hypervisor under QEMU, {seconds:.1}s\n");
        out.push_str("guests:\n");
        for (guest, results) in &self.results {
            if results.is_empty() {
                out.push_str(&format!("  {guest}: no result line\n"));
            }
            for r in results {
                out.push_str(&format!("  {guest}: {r}\n"));
            }
        }
        if !self.timeline.is_empty() {
            out.push_str(
                "phases and core power, in order, in s from the first trace event on the hypervisor's clock \
                 (a guest's line: when it reached the console, so at most that; its uptime is its own clock):\n",
            );
            for (at, what) in &self.timeline {
                match at {
                    Some(at) => out.push_str(&format!("  {at:8.3}s  {what}\n")),
                    None => out.push_str(&format!("             {what}\n")),
                }
            }
        }
        out.push_str("energy report:\n");
        for line in &self.energy {
            out.push_str(&format!("  {line}\n"));
        }
        if let Some(end) = &self.end {
            out.push_str(&format!("  {end}\n"));
        }
        if let (Some(uj), Some(ns)) = (self.total_uj, self.run_ns) {
            let mw = uj as f64 / ns as f64 * 1e6;
            out.push_str(&format!(
                "hypervisor: {:.3} J over {:.3}s, {mw:.1} mW average (boot and the guests' own timing included)\n",
                uj as f64 / 1e6,
                ns as f64 / 1e9
            ));
        }
        if let Some(p) = predicted {
            out.push_str(&format!(
                "simulator:  {:.3} J over {:.3}s, {:.1} mW average, cores turned off {} times\n",
                p.energy_uj as f64 / 1e6,
                p.simulated_ns as f64 / 1e9,
                p.average_power_mw,
                p.cores_off
            ));
        }
        match timeline {
            Some((json, png)) => out.push_str(&format!(
                "timeline: {} (Perfetto, ui.perfetto.dev) and {}\n",
                json.display(),
                png.display()
            )),
            None => out.push_str("timeline: none (the run printed no trace events)\n"),
        }
        out
    }
}

/// The number after `key` in `line` (up to the next space).
fn field(line: &str, key: &str) -> Option<u64> {
    let at = line.find(key)? + key.len();
    line[at..].split_ascii_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "\
hypervisor 0.1.0: energy-aware SMP hypervisor, EL2, on QEMU virt\r
T 1000000000 core c0 online\r
T 1000500000 core c1 online\r
[work] LINUX-INIT: started test=phases kernel=6.1.0 cpus=2 uptime=3.00\r
[work] phases: light uptime=3.02\r
[personal] phases: light uptime=3.10\r
T 4500000000 core c1 drain\r
T 4500000000 core c1 off\r
[work] phases: heavy uptime=9.02\r
T 7200000000 core c1 online\r
[work] phases: job 1 loops=5\r
[work] phases: heavy done uptime=14.1\r
[work] LINUX-TEST: PASS phases light=6 jobs=2 loops=10 heavy=5 idle=2\r
[rt] rt periods=2400 misses=0\r
[rt] RESULT: PASS\r
energy: profile phone-dual governor consolidate period 10 ms, 2 cores\r
energy core=0 busy_ns=5 idle_ns=5 off_ns=0 sum_ns=20000000000 run_ns=20000000000 transitions=3 cpu_off_refused=0 energy_uj=600\r
energy core=1 busy_ns=5 idle_ns=5 off_ns=3 sum_ns=20000000000 run_ns=20000000000 transitions=3 cpu_off_refused=0 energy_uj=400\r
energy total_uj=10000000 governor_periods=2000 cpu_on_retries=0 online_at_end=0x3\r
hypervisor: all guests stopped after 20000 ms: 3 of 3 guests stopped, 40 trace events\r
";

    #[test]
    fn the_summary_reads_results_phases_and_energy() {
        // When each line arrived, in s since QEMU started: the trace lines 0.2 s after their
        // stamps (the least such delay is the clocks' offset), the phases' lines later.
        let arrived = [0.1, 1.2, 1.2005, 3.0, 3.2, 3.3, 4.7, 4.7, 5.7, 7.4, 8.0, 10.2, 10.3];
        let times: Vec<Duration> = arrived.iter().map(|&s| Duration::from_secs_f64(s)).collect();
        let s = Summary::of(OUTPUT, &times, &["work", "personal", "rt"]);
        assert_eq!(s.results[0].1, ["LINUX-TEST: PASS phases light=6 jobs=2 loops=10 heavy=5 idle=2"]);
        assert!(s.results[1].1.is_empty());
        assert_eq!(s.results[2].1, ["rt periods=2400 misses=0", "RESULT: PASS"]);
        let timeline = |s: &Summary| -> Vec<String> {
            s.timeline.iter().map(|(t, w)| format!("{} {w}", t.map_or("-".into(), |t| format!("{t:.1}")))).collect()
        };
        assert_eq!(
            timeline(&s),
            [
                "0.0 core 0 on",
                "0.0 core 1 on",
                "2.0 [work] phases: light uptime=3.02",
                "2.1 [personal] phases: light uptime=3.10",
                "3.5 core 1 off",
                "4.5 [work] phases: heavy uptime=9.02",
                "6.2 core 1 on",
                "9.0 [work] phases: heavy done uptime=14.1",
            ]
        );
        // Without arrival times the guests' lines cannot be placed.
        let unplaced = Summary::of(OUTPUT, &[], &["work", "personal", "rt"]);
        assert_eq!(timeline(&unplaced)[2], "- [work] phases: light uptime=3.02");
        assert_eq!(timeline(&unplaced)[4], "3.5 core 1 off");
        assert_eq!(s.energy.len(), 4);
        assert_eq!((s.total_uj, s.run_ns), (Some(10_000_000), Some(20_000_000_000)));
        assert!(s.end.as_deref().unwrap().starts_with("hypervisor: all guests stopped after 20000 ms"));

        let sim =
            SimEnergy { energy_uj: 9_000_000, average_power_mw: 450.0, simulated_ns: 20_000_000_000, cores_off: 2 };
        let files = (Path::new("target/qemu/d.json").to_path_buf(), Path::new("target/qemu/d.png").to_path_buf());
        let text = s.render("d", 31.0, Some(&files), Some(&sim));
        assert!(text.contains("  rt: rt periods=2400 misses=0\n"), "{text}");
        assert!(text.contains("  personal: no result line\n"), "{text}");
        assert!(text.contains("hypervisor: 10.000 J over 20.000s, 500.0 mW average"), "{text}");
        assert!(
            text.contains("simulator:  9.000 J over 20.000s, 450.0 mW average, cores turned off 2 times"),
            "{text}"
        );
        assert!(text.ends_with("timeline: target/qemu/d.json (Perfetto, ui.perfetto.dev) and target/qemu/d.png\n"));
    }

    #[test]
    fn the_simulators_report_is_read() {
        let json = r#"{"energy":{"average_power_mw":869.07,"core_off":3,"energy_uj":20857818,"simulated_ns":24000000000},"report":{}}"#;
        let e = SimEnergy::parse(json).unwrap();
        assert_eq!((e.energy_uj, e.simulated_ns, e.cores_off), (20_857_818, 24_000_000_000, 3));
        assert!(SimEnergy::parse("{}").is_none());
    }
}
