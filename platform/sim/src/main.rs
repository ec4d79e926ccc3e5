//! `hvsim SCENARIO.toml [--duration D] [--trace FILE] [--report-json FILE] [--policy P]
//! [--no-dvfs] [--timeline PREFIX]`: simulates a scenario on the host under a power policy and prints the
//! report, the energy report and where the timeline files went.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant as WallClock;

use platform_sim::energy;
use platform_sim::timeline::Timeline;
use vcpu_runtime::scenario::{self, parse_duration, GovernorPolicy};
use vcpu_runtime::trace::TraceEvent;
use vcpu_runtime::{Instant, TraceSink};

const USAGE: &str =
    "usage: hvsim SCENARIO.toml [--duration D] [--trace FILE] [--report-json FILE] [--policy P] [--no-dvfs] [--timeline PREFIX]
  --duration D        simulate D instead of the scenario's duration (e.g. 10s, 500ms, 24h)
  --trace FILE        write every trace event, one line each (docs/trace-format.md)
  --report-json FILE  write the report and the energy report as JSON
  --policy P          power policy: spread, hotplug, race-to-idle or consolidate (default: the
                      scenario's policy.governor); `all` compares every policy in one table
  --no-dvfs           every core at its top operating point, as the hypervisor runs on QEMU
SCENARIO may also be builtin:TRACE[:UTIL[:PROFILE:CORES]], a built-in phone trace (idle-bursts,
audio, video-call, browsing, batch-sync) at UTIL % of the board (default 25, phone-dual:2)
  --timeline PREFIX   write the timeline to PREFIX.json (Perfetto) and PREFIX.png (default:
                      target/sim/SCENARIO-POLICY); runs of more than 5 million events skip it";

/// Runs with more trace events than this write no timeline (the events are kept in memory).
const TIMELINE_MAX_EVENTS: usize = 5_000_000;

struct Args {
    scenario: PathBuf,
    duration: Option<vcpu_runtime::Nanos>,
    trace: Option<PathBuf>,
    report_json: Option<PathBuf>,
    policy: Option<GovernorPolicy>,
    /// `--policy all`: every policy, compared in one table.
    all_policies: bool,
    /// `--no-dvfs`: no operating point changes.
    fixed_speed: bool,
    timeline: Option<PathBuf>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut scenario = None;
    let mut duration = None;
    let mut trace = None;
    let mut report_json = None;
    let mut policy = None;
    let mut all_policies = false;
    let mut fixed_speed = false;
    let mut timeline = None;
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--duration" => {
                let v = value("--duration")?;
                duration = Some(parse_duration(&v).map_err(|e| format!("--duration {v}: {e}"))?);
            }
            "--trace" => trace = Some(PathBuf::from(value("--trace")?)),
            "--report-json" => report_json = Some(PathBuf::from(value("--report-json")?)),
            "--policy" => {
                let p = value("--policy")?;
                if p == "all" {
                    all_policies = true;
                } else {
                    policy = Some(GovernorPolicy::from_name(&p).ok_or_else(|| {
                        format!(
                            "--policy {p}: unknown policy; available: spread, hotplug, race-to-idle, consolidate, all"
                        )
                    })?);
                }
            }
            "--timeline" => timeline = Some(PathBuf::from(value("--timeline")?)),
            "--no-dvfs" => fixed_speed = true,
            "-h" | "--help" => return Err(String::new()),
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            s => {
                if scenario.replace(PathBuf::from(s)).is_some() {
                    return Err("give one scenario".into());
                }
            }
        }
    }
    Ok(Args {
        scenario: scenario.ok_or("no scenario given")?,
        duration,
        trace,
        report_json,
        policy,
        all_policies,
        fixed_speed,
        timeline,
    })
}

struct FileSink(BufWriter<File>, Option<std::io::Error>);

impl TraceSink for FileSink {
    fn emit(&mut self, event: TraceEvent) {
        if self.1.is_none() {
            if let Err(e) = writeln!(self.0, "{event}") {
                self.1 = Some(e);
            }
        }
    }
}

/// Keeps the events for the timeline (up to a bound) and writes them to the trace file.
struct Sinks {
    file: Option<FileSink>,
    events: Vec<TraceEvent>,
    dropped: bool,
}

impl TraceSink for Sinks {
    fn emit(&mut self, event: TraceEvent) {
        if let Some(f) = &mut self.file {
            f.emit(event);
        }
        if self.events.len() < TIMELINE_MAX_EVENTS {
            self.events.push(event);
        } else {
            self.dropped = true;
        }
    }
}

/// A scenario file, or a built-in trace: `builtin:TRACE[:UTIL[:PROFILE:CORES]]` (utilization in
/// percent of the board, default 25; board default phone-dual, 2 cores).
fn load_scenario(given: &std::path::Path) -> Result<scenario::Scenario, String> {
    let text = given.to_string_lossy();
    let Some(spec) = text.strip_prefix("builtin:") else {
        return scenario::load(given).map_err(|e| e.to_string());
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let trace = parts[0];
    let util = match parts.get(1) {
        Some(u) => u.parse().map_err(|_| format!("{text}: utilization `{u}` is not a whole percent"))?,
        None => 25,
    };
    let (profile, cores) = match (parts.get(2), parts.get(3)) {
        (Some(p), Some(c)) => (*p, c.parse().map_err(|_| format!("{text}: cores `{c}` is not a number"))?),
        (None, None) => ("phone-dual", 2),
        _ => return Err(format!("{text}: give the board as PROFILE:CORES")),
    };
    platform_sim::traces::scenario(trace, profile, cores, util, vcpu_runtime::Nanos::from_secs(20)).ok_or_else(|| {
        format!(
            "{text}: no built-in trace `{trace}` reaching {util} % on {cores} cores; traces: {}",
            platform_sim::traces::TRACES.join(", ")
        )
    })
}

/// Runs `scenario` under `policy`, with or without DVFS.
fn energy_run(
    scenario: &scenario::Scenario,
    policy: GovernorPolicy,
    fixed_speed: bool,
    trace: &mut impl TraceSink,
) -> Result<energy::PowerRun, platform_sim::SimError> {
    if fixed_speed {
        energy::run_fixed_speed(scenario, policy, trace)
    } else {
        energy::run(scenario, policy, trace)
    }
}

/// `--policy all`: every policy on the scenario, one line each.
fn compare(scenario: &scenario::Scenario, fixed_speed: bool) -> Result<bool, String> {
    println!(
        "{:<13} {:>9} {:>9} {:>9} {:>12} {:>12} {:>6} {:>9} {:>11}",
        "policy", "energy J", "avg mW", "RT miss", "latency avg", "latency max", "moves", "cores off", "transitions"
    );
    let mut ok = true;
    for policy in GovernorPolicy::ALL {
        let run = energy_run(scenario, policy, fixed_speed, &mut ()).map_err(|e| e.to_string())?;
        let e = &run.energy;
        ok &= run.report.violations.is_empty();
        println!(
            "{:<13} {:>9.3} {:>9.1} {:>9} {:>12} {:>12} {:>6} {:>9} {:>11}",
            policy.name(),
            e.energy_uj as f64 / 1e6,
            e.average_power_mw,
            e.rt_misses,
            vcpu_runtime::Nanos(e.wake_latency_avg_ns).to_string(),
            vcpu_runtime::Nanos(e.wake_latency_max_ns).to_string(),
            e.migrations,
            e.core_off,
            e.transitions
        );
    }
    Ok(ok)
}

fn run(args: Args) -> Result<bool, String> {
    let mut scenario = load_scenario(&args.scenario)?;
    if let Some(d) = args.duration {
        scenario.duration = d;
    }
    if args.all_policies {
        println!("{}: {} over {}", scenario.name, scenario.description, scenario.duration);
        return compare(&scenario, args.fixed_speed);
    }
    let policy = args.policy.unwrap_or(scenario.policy.governor);
    let file = match &args.trace {
        Some(path) => {
            let file = File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
            Some(FileSink(BufWriter::new(file), None))
        }
        None => None,
    };
    let mut sinks = Sinks { file, events: Vec::new(), dropped: false };
    let wall = WallClock::now();
    let run = energy_run(&scenario, policy, args.fixed_speed, &mut sinks)
        .map_err(|e| format!("{}: {e}", args.scenario.display()))?;
    let took = wall.elapsed();
    if let (Some(mut f), Some(path)) = (sinks.file.take(), &args.trace) {
        if let Some(e) = f.1.take() {
            return Err(format!("{}: {e}", path.display()));
        }
        f.0.flush().map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let report = &run.report;
    print!("{report}");
    println!("{}", run.energy);
    println!("simulated in {:.3} s of wall time", took.as_secs_f64());
    if let Some(path) = &args.trace {
        println!("trace: {}", path.display());
    }
    if sinks.dropped {
        println!("timeline: skipped, the run has more than {TIMELINE_MAX_EVENTS} trace events");
    } else {
        let prefix = args
            .timeline
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("target/sim/{}-{}", scenario.name, policy.name())));
        let (json, png) = write_timeline(&sinks.events, &scenario, report, &run.energy, &prefix)?;
        println!("timeline: {} (Perfetto, ui.perfetto.dev) and {}", json.display(), png.display());
    }
    if let Some(path) = &args.report_json {
        let both = serde_json::json!({ "report": report, "energy": run.energy });
        std::fs::write(path, both.to_string()).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("report: {}", path.display());
    }
    Ok(report.violations.is_empty())
}

/// Writes the run's Perfetto JSON and PNG timeline next to `prefix`.
fn write_timeline(
    events: &[TraceEvent],
    scenario: &scenario::Scenario,
    report: &platform_sim::report::Report,
    energy: &energy::EnergyReport,
    prefix: &std::path::Path,
) -> Result<(PathBuf, PathBuf), String> {
    if let Some(dir) = prefix.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let end = Instant::ZERO + scenario.duration;
    let timeline = Timeline::new(events, usize::from(scenario.board.cores), end)
        .with_vcpu_names(report.vcpus.iter().map(|v| (vcpu_runtime::VcpuId(v.id), v.name.clone())))
        .with_title(format!("{} under {}: {:.3} J", scenario.name, energy.policy, energy.energy_uj as f64 / 1e6));
    let json = prefix.with_extension("json");
    let png = prefix.with_extension("png");
    let open = |p: &PathBuf| File::create(p).map(BufWriter::new).map_err(|e| format!("{}: {e}", p.display()));
    timeline.write_perfetto_json(open(&json)?).map_err(|e| format!("{}: {e}", json.display()))?;
    timeline.write_png(open(&png)?, 1600).map_err(|e| format!("{}: {e}", png.display()))?;
    Ok((json, png))
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("hvsim: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("hvsim: runtime invariants were violated (see the report)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("hvsim: {e}");
            ExitCode::FAILURE
        }
    }
}
