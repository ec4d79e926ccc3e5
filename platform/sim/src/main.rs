//! `hvsim SCENARIO.toml [--duration D] [--trace FILE] [--report-json FILE] [--policy P]`:
//! simulates a scenario on the host and prints the report.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant as WallClock;

use platform_sim::Simulator;
use vcpu_runtime::scenario::{self, parse_duration};
use vcpu_runtime::trace::TraceEvent;
use vcpu_runtime::{Instant, TraceSink};

const USAGE: &str = "usage: hvsim SCENARIO.toml [--duration D] [--trace FILE] [--report-json FILE] [--policy spread]
  --duration D        simulate D instead of the scenario's duration (e.g. 10s, 500ms, 24h)
  --trace FILE        write every trace event, one line each (docs/trace-format.md)
  --report-json FILE  write the report as JSON
  --policy P          power policy; only `spread` (all cores on) exists until the energy governor lands";

struct Args {
    scenario: PathBuf,
    duration: Option<vcpu_runtime::Nanos>,
    trace: Option<PathBuf>,
    report_json: Option<PathBuf>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut scenario = None;
    let mut duration = None;
    let mut trace = None;
    let mut report_json = None;
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
                if p != "spread" {
                    return Err(format!("--policy {p}: unknown policy; available: spread"));
                }
            }
            "-h" | "--help" => return Err(String::new()),
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            s => {
                if scenario.replace(PathBuf::from(s)).is_some() {
                    return Err("give one scenario".into());
                }
            }
        }
    }
    Ok(Args { scenario: scenario.ok_or("no scenario given")?, duration, trace, report_json })
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

fn run(args: Args) -> Result<bool, String> {
    let mut scenario = scenario::load(&args.scenario).map_err(|e| e.to_string())?;
    if let Some(d) = args.duration {
        scenario.duration = d;
    }
    let mut sim = Simulator::from_scenario(&scenario).map_err(|e| format!("{}: {e}", args.scenario.display()))?;
    let end = Instant::ZERO + scenario.duration;
    let wall = WallClock::now();
    match &args.trace {
        Some(path) => {
            let file = File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let mut sink = FileSink(BufWriter::new(file), None);
            sim.run_until(end, &mut sink, &mut ());
            if let Some(e) = sink.1.take() {
                return Err(format!("{}: {e}", path.display()));
            }
            sink.0.flush().map_err(|e| format!("{}: {e}", path.display()))?;
        }
        None => sim.run_until(end, &mut (), &mut ()),
    }
    let took = wall.elapsed();
    let report = sim.report();
    print!("{report}");
    println!("simulated in {:.3} s of wall time", took.as_secs_f64());
    if let Some(path) = &args.trace {
        println!("trace: {}", path.display());
    }
    if let Some(path) = &args.report_json {
        std::fs::write(path, report.to_json()).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("report: {}", path.display());
    }
    Ok(report.violations.is_empty())
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
