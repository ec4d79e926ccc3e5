//! Hypervisor path lengths, `cargo xtask bench qemu`: the `bench` guest brackets each operation
//! with `HV_BENCH` calls, the hypervisor counts its own retired instructions (PMU
//! `INST_RETIRED` filtered to EL2) in between and prints
//! `bench op=<id> iterations=<n> el2_instructions=<count> exits=<count>`. Under
//! `-icount shift=4,sleep=off` the counts are identical run to run; this module turns the lines
//! of several runs into per-operation figures, minus the empty-loop baseline, and refuses runs
//! that disagree.

use std::collections::BTreeMap;
use std::fmt;

/// One `bench` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub op: u32,
    pub iterations: u64,
    pub el2_instructions: u64,
    pub exits: u64,
}

/// What an operation is and the goal the issue sets for it (EL2 instructions per operation).
pub struct Operation {
    pub op: u32,
    pub name: &'static str,
    /// Events per iteration that the figure is divided by (a yield round trip is two switches).
    pub per_iteration: u64,
    pub goal: Option<u64>,
    pub about: &'static str,
}

pub const OPERATIONS: &[Operation] = &[
    Operation {
        op: 0,
        name: "baseline",
        per_iteration: 1,
        goal: None,
        about: "empty loop (subtracted from the others)",
    },
    Operation { op: 1, name: "null hypercall", per_iteration: 1, goal: Some(60), about: "HV_NULL, entry to return" },
    Operation {
        op: 2,
        name: "virtual interrupt injection",
        per_iteration: 1,
        goal: Some(200),
        about:
            "SGI to self: the trapped ICC_SGI1R write, injection through a list register; the guest's EOI does not trap",
    },
    Operation {
        op: 3,
        name: "virtual IPI, sender side",
        per_iteration: 1,
        goal: Some(300),
        about: "SGI to a vCPU on another core, counted on the sender's core",
    },
    Operation {
        op: 4,
        name: "vCPU switch, full state",
        per_iteration: 2,
        goal: Some(600),
        about: "HV_YIELD between two vCPUs on one core: two switches per iteration",
    },
];

/// Reads the `bench` lines of a console log (anything else is ignored).
pub fn parse(console: &str) -> Vec<Sample> {
    console.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let rest = line.trim().strip_prefix("bench op=")?;
    let mut fields = BTreeMap::new();
    let mut words = rest.split_whitespace();
    fields.insert("op", words.next()?);
    for w in words {
        let (k, v) = w.split_once('=')?;
        fields.insert(k, v);
    }
    Some(Sample {
        op: fields.get("op")?.parse().ok()?,
        iterations: fields.get("iterations")?.parse().ok()?,
        el2_instructions: fields.get("el2_instructions")?.parse().ok()?,
        exits: fields.get("exits")?.parse().ok()?,
    })
}

/// A figure of the report.
#[derive(Clone, Debug, PartialEq)]
pub struct Figure {
    pub op: u32,
    pub name: &'static str,
    /// EL2 instructions per operation, baseline subtracted.
    pub instructions: f64,
    /// Exits per operation.
    pub exits: f64,
    pub goal: Option<u64>,
}

impl Figure {
    pub fn meets_goal(&self) -> bool {
        self.goal.is_none_or(|g| self.instructions <= g as f64)
    }
}

/// Checks that every run printed the same samples and computes the figures. `runs` are the
/// samples of each run (at least one).
pub fn figures(runs: &[Vec<Sample>]) -> Result<Vec<Figure>, String> {
    let first = runs.first().ok_or("no run")?;
    for (i, run) in runs.iter().enumerate().skip(1) {
        if run != first {
            return Err(format!("run {} counted differently from run 1: {:?} vs {:?}", i + 1, run, first));
        }
    }
    let baseline = first.iter().find(|s| s.op == 0).ok_or("no baseline (op 0) line")?;
    let mut out = Vec::new();
    for s in first.iter().filter(|s| s.op != 0) {
        let op = OPERATIONS.iter().find(|o| o.op == s.op).ok_or(format!("unknown bench op {}", s.op))?;
        if s.iterations != baseline.iterations || s.iterations == 0 {
            return Err(format!("op {} ran {} iterations, the baseline {}", s.op, s.iterations, baseline.iterations));
        }
        let events = (s.iterations * op.per_iteration) as f64;
        out.push(Figure {
            op: s.op,
            name: op.name,
            instructions: (s.el2_instructions as f64 - baseline.el2_instructions as f64) / events,
            exits: (s.exits as f64 - baseline.exits as f64) / events,
            goal: op.goal,
        });
    }
    Ok(out)
}

/// The figures as a table.
pub struct Table<'a>(pub &'a [Figure]);

impl fmt::Display for Table<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<30} {:>16} {:>10} {:>8}", "operation", "EL2 instructions", "exits", "goal")?;
        for fig in self.0 {
            writeln!(
                f,
                "{:<30} {:>16.1} {:>10.2} {:>8}{}",
                fig.name,
                fig.instructions,
                fig.exits,
                fig.goal.map_or("-".to_string(), |g| format!("<= {g}")),
                if fig.meets_goal() { "" } else { "  (over the goal)" }
            )?;
        }
        Ok(())
    }
}

/// The scenarios the measurement runs, and the operations taken from each: vCPU 1 on another
/// core for the IPI, on the same core for the switch.
const SCENARIOS: &[(&str, &[u32])] = &[("bench-spread", &[1, 2, 3]), ("bench-onecore", &[4])];
/// The hypervisor prints no per-switch scheduling trace lines while measuring (a console line
/// costs thousands of instructions); every other trace event stays on.
const TRACE_ARG: &str = "hv.trace=events";
/// Runs of each scenario that must agree.
const RUNS: usize = 3;
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// `cargo xtask bench qemu`: boots the `bench` guest on the hypervisor under
/// `-icount shift=4,sleep=off`, three times per scenario, checks the counts are identical, and
/// prints the EL2 path lengths.
pub fn run(ctx: &crate::exec::Ctx) -> Result<(), crate::Error> {
    use crate::Error;
    use std::process::{Command, Stdio};
    crate::setup::ensure_target(ctx)?;
    crate::setup::ensure_qemu(ctx)?;
    crate::manifest::guests_build_cmd().run(ctx)?;
    crate::qemu::build_cmd().run(ctx)?;
    let mut all = Vec::new();
    for (name, ops) in SCENARIOS {
        let path = crate::tasks::resolve_scenario(ctx, name)?;
        let scenario = vcpu_runtime::scenario::load(&ctx.root.join(&path)).map_err(|e| Error::new(e.to_string()))?;
        let manifest = crate::manifest::write_manifest(ctx, &scenario)?.to_string_lossy().into_owned();
        let cmd = crate::qemu::qemu_cmd(
            &crate::qemu::image_path(),
            Some(&manifest),
            u32::from(scenario.board.cores),
            "cortex-a57",
            true,
            Some(TRACE_ARG),
        );
        let mut runs = Vec::new();
        for run in 1..=RUNS {
            println!("xtask: bench qemu: {name}, run {run}/{RUNS}: {}", cmd.display());
            let start = std::time::Instant::now();
            let out = Command::new(&cmd.program)
                .args(&cmd.args)
                .current_dir(&ctx.root)
                .stdin(Stdio::null())
                .stderr(Stdio::inherit())
                .output()
                .map_err(|e| Error::new(format!("could not start `{}`: {e}", cmd.program)))?;
            let console = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() || !console.contains("RESULT: PASS") || start.elapsed() > TIMEOUT {
                return Err(Error::new(format!(
                    "bench run of {name} failed ({}); its console:\n{console}",
                    out.status
                )));
            }
            runs.push(parse(&console));
        }
        let figures = figures(&runs).map_err(|e| Error::new(format!("{name}: {e}")))?;
        all.extend(figures.into_iter().filter(|f| ops.contains(&f.op)));
    }
    println!(
        "\nEL2 path lengths (cortex-a57, -icount shift=4,sleep=off, {TRACE_ARG}, {RUNS} identical runs, baseline subtracted):\n"
    );
    print!("{}", Table(&all));
    for f in &all {
        if let Some(o) = OPERATIONS.iter().find(|o| o.op == f.op) {
            println!("  {}: {}", o.name, o.about);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "[bench] bench: op 0 (baseline) ran 1000 iterations
bench op=0 iterations=1000 el2_instructions=120 exits=2
T 123 mark m0 v0 id=1 val=2
bench op=1 iterations=1000 el2_instructions=48120 exits=1002
bench op=4 iterations=1000 el2_instructions=1000120 exits=2002
";

    #[test]
    fn parses_bench_lines_only() {
        let s = parse(LOG);
        assert_eq!(s.len(), 3);
        assert_eq!(s[1], Sample { op: 1, iterations: 1000, el2_instructions: 48120, exits: 1002 });
        assert!(parse("bench op=x iterations=1").is_empty());
    }

    #[test]
    fn figures_subtract_the_baseline_and_divide_switches() {
        let f = figures(&[parse(LOG), parse(LOG)]).unwrap();
        assert_eq!(f[0].instructions, 48.0);
        assert_eq!(f[0].exits, 1.0);
        assert!(f[0].meets_goal());
        assert_eq!(f[1].name, "vCPU switch, full state");
        assert_eq!(f[1].instructions, 500.0);
        assert_eq!(f[1].exits, 1.0);
        let table = Table(&f).to_string();
        assert!(table.contains("null hypercall") && table.contains("<= 60"), "{table}");
    }

    #[test]
    fn runs_that_disagree_are_refused() {
        let other = LOG.replace("48120", "48121");
        let err = figures(&[parse(LOG), parse(&other)]).unwrap_err();
        assert!(err.contains("run 2 counted differently"), "{err}");
        assert!(figures(&[parse("bench op=1 iterations=10 el2_instructions=5 exits=1")]).is_err());
    }
}
