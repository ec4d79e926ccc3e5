//! Hypervisor path lengths, `cargo xtask bench qemu`: the `bench` guest brackets each operation
//! with `HV_BENCH` calls, the hypervisor counts its own retired instructions (PMU
//! `INST_RETIRED` filtered to EL2) in between and prints
//! `bench op=<id> iterations=<n> el2_instructions=<count> exits=<count>`; an operation counted
//! on every core (the vCPU move) adds `cores=<n> wakes=<n> moves=<n> overlaps=<n>`. Under
//! `-icount shift=4,sleep=off` the counts are identical run to run; this module turns the lines
//! of several runs into per-operation figures, minus the empty-loop baseline, and refuses runs
//! that disagree, and every-core counts whose cores' counting overlapped. A two-core scenario
//! counted on one core runs at several phases and keeps each figure's lowest
//! ([`lowest_over_phases`]).

use std::collections::BTreeMap;
use std::fmt;

/// One `bench` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub op: u32,
    pub iterations: u64,
    pub el2_instructions: u64,
    pub exits: u64,
    /// The fields of a window counted on every core.
    pub every_core: Option<EveryCore>,
}

/// What the hypervisor reports about a window counted on every core (docs/benchmarks.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EveryCore {
    /// Cores whose count is in the sum.
    pub cores: u64,
    /// Wake-ups from WFI in the window (each restarts a core's count).
    pub wakes: u64,
    /// Hand-overs of the calling vCPU in the window.
    pub moves: u64,
    /// Times a core counted while another core ran: the sum is then not the cores' own
    /// instructions.
    pub overlaps: u64,
}

/// An operation's goal, in EL2 instructions per operation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Goal {
    None,
    /// A fixed number (issue 5).
    Fixed(u64),
    /// `factor` times the figure of operation `op`, measured in the same command.
    Times {
        op: u32,
        factor: u64,
    },
}

/// What an operation is and the goal the issue sets for it (EL2 instructions per operation).
pub struct Operation {
    pub op: u32,
    pub name: &'static str,
    /// The operation whose count is subtracted (an empty loop started the same way); `None`
    /// for the baselines themselves.
    pub baseline: Option<u32>,
    /// Events per iteration that the figure is divided by (a yield round trip is two switches).
    pub per_iteration: u64,
    /// Moves of the calling vCPU per iteration (the every-core operations must report exactly
    /// these, and as many wake-ups).
    pub moves_per_iteration: u64,
    pub goal: Goal,
    pub about: &'static str,
}

/// The vCPU switch, whose figure the move's goal is a multiple of.
const SWITCH: u32 = 4;

pub const OPERATIONS: &[Operation] = &[
    Operation {
        op: 0,
        name: "baseline",
        baseline: None,
        per_iteration: 1,
        moves_per_iteration: 0,
        goal: Goal::None,
        about: "empty loop (subtracted from the others)",
    },
    Operation {
        op: 1,
        name: "null hypercall",
        baseline: Some(0),
        per_iteration: 1,
        moves_per_iteration: 0,
        goal: Goal::Fixed(60),
        about: "HV_NULL, entry to return",
    },
    Operation {
        op: 2,
        name: "virtual interrupt injection",
        baseline: Some(0),
        per_iteration: 1,
        moves_per_iteration: 0,
        goal: Goal::Fixed(200),
        about:
            "SGI to self: the trapped ICC_SGI1R write, injection through a list register; the guest's EOI does not trap",
    },
    Operation {
        op: 3,
        name: "virtual IPI, sender side",
        baseline: Some(0),
        per_iteration: 1,
        moves_per_iteration: 0,
        goal: Goal::Fixed(300),
        about: "SGI to a vCPU on another core, counted on the sender's core",
    },
    Operation {
        op: SWITCH,
        name: "vCPU switch, full state",
        baseline: Some(0),
        per_iteration: 2,
        moves_per_iteration: 0,
        goal: Goal::Fixed(600),
        about: "HV_YIELD between two vCPUs on one core: two switches per iteration",
    },
    Operation {
        op: 5,
        name: "baseline, every core",
        baseline: None,
        per_iteration: 1,
        moves_per_iteration: 0,
        goal: Goal::None,
        about: "empty loop counted on every core (subtracted from the move)",
    },
    Operation {
        op: 6,
        name: "vCPU move between cores",
        baseline: Some(5),
        per_iteration: 1,
        moves_per_iteration: 1,
        goal: Goal::Times { op: SWITCH, factor: 2 },
        about: "HV_BENCH_MOVE to the other core, cores 0 and 1 in turn: the source's exit, hand-over, save and kick, \
                the destination's wake-up, take-over, load and entry; both cores' EL2 instructions, each counted while \
                it is awake; goal 2x the vCPU switch",
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
    let number = |key: &str| -> Option<u64> { fields.get(key)?.parse().ok() };
    let every_core = match fields.contains_key("cores") {
        true => Some(EveryCore {
            cores: number("cores")?,
            wakes: number("wakes")?,
            moves: number("moves")?,
            overlaps: number("overlaps")?,
        }),
        false => None,
    };
    Some(Sample {
        op: fields.get("op")?.parse().ok()?,
        iterations: number("iterations")?,
        el2_instructions: number("el2_instructions")?,
        exits: number("exits")?,
        every_core,
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
    /// The goal in EL2 instructions per operation, once known ([`resolve_goals`]).
    pub goal: Option<f64>,
}

impl Figure {
    pub fn meets_goal(&self) -> bool {
        self.goal.is_none_or(|g| self.instructions <= g)
    }
}

fn operation(op: u32) -> Result<&'static Operation, String> {
    OPERATIONS.iter().find(|o| o.op == op).ok_or(format!("unknown bench op {op}"))
}

/// Checks an every-core sample: no overlap, and the moves and wake-ups its operation makes.
fn check_every_core(s: &Sample, op: &Operation) -> Result<(), String> {
    let Some(e) = s.every_core else {
        return match op.moves_per_iteration {
            0 => Ok(()),
            _ => Err(format!("op {} was not counted on every core", s.op)),
        };
    };
    if e.overlaps != 0 {
        return Err(format!(
            "op {}: a core counted while another ran ({} overlaps): the sum is not the cores' own instructions",
            s.op, e.overlaps
        ));
    }
    let moves = op.moves_per_iteration * s.iterations;
    if e.moves != moves || e.wakes != moves {
        return Err(format!(
            "op {}: {} moves and {} wake-ups, expected {moves} of each (a refused move, or a core woken for something else)",
            s.op, e.moves, e.wakes
        ));
    }
    Ok(())
}

/// Checks that every run printed the same samples for the operations `ops` (and their
/// baselines) and computes their figures, in the order of `ops`. `runs` are the samples of each
/// run (at least one). The goals are left for [`resolve_goals`].
pub fn figures(runs: &[Vec<Sample>], ops: &[u32]) -> Result<Vec<Figure>, String> {
    let mut wanted = Vec::new();
    for &op in ops {
        wanted.push(op);
        wanted.extend(operation(op)?.baseline);
    }
    let select = |run: &Vec<Sample>| run.iter().filter(|s| wanted.contains(&s.op)).copied().collect::<Vec<_>>();
    let first = select(runs.first().ok_or("no run")?);
    for (i, run) in runs.iter().enumerate().skip(1) {
        let run = select(run);
        if run != first {
            return Err(format!("run {} counted differently from run 1: {:?} vs {:?}", i + 1, run, first));
        }
    }
    let find = |op: u32| first.iter().find(|s| s.op == op).ok_or(format!("no line for bench op {op}"));
    let mut out = Vec::new();
    for &op in ops {
        let o = operation(op)?;
        let s = find(op)?;
        let b = o.baseline.ok_or(format!("op {op} is a baseline"))?;
        let baseline = find(b)?;
        check_every_core(s, o)?;
        check_every_core(baseline, operation(b)?)?;
        if s.iterations != baseline.iterations || s.iterations == 0 {
            return Err(format!("op {op} ran {} iterations, its baseline {}", s.iterations, baseline.iterations));
        }
        let events = (s.iterations * o.per_iteration) as f64;
        out.push(Figure {
            op,
            name: o.name,
            instructions: (s.el2_instructions as f64 - baseline.el2_instructions as f64) / events,
            exits: (s.exits as f64 - baseline.exits as f64) / events,
            goal: None,
        });
    }
    Ok(out)
}

/// Sets each figure's goal: a fixed one, or a multiple of another figure of `figures` (none
/// when that one was not measured).
pub fn resolve_goals(figures: &mut [Figure]) {
    for i in 0..figures.len() {
        let goal = match OPERATIONS.iter().find(|o| o.op == figures[i].op).map(|o| o.goal) {
            Some(Goal::Fixed(g)) => Some(g as f64),
            Some(Goal::Times { op, factor }) => {
                figures.iter().find(|f| f.op == op).map(|f| (f.instructions * factor as f64 * 10.0).round() / 10.0)
            }
            _ => None,
        };
        figures[i].goal = goal;
    }
}

fn show_goal(goal: Option<f64>) -> String {
    match goal {
        None => "-".into(),
        Some(g) if g.fract() == 0.0 => format!("<= {g:.0}"),
        Some(g) => format!("<= {g:.1}"),
    }
}

/// The figures as a table.
pub struct Table<'a>(pub &'a [Figure]);

impl fmt::Display for Table<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<30} {:>16} {:>10} {:>10}", "operation", "EL2 instructions", "exits", "goal")?;
        for fig in self.0 {
            writeln!(
                f,
                "{:<30} {:>16.1} {:>10.2} {:>10}{}",
                fig.name,
                fig.instructions,
                fig.exits,
                show_goal(fig.goal),
                if fig.meets_goal() { "" } else { "  (over the goal)" }
            )?;
        }
        Ok(())
    }
}

/// A scenario the measurement boots, the operations taken from it, the trace level it runs at
/// and at how many phases ([`phase_arg`]).
struct Scenario {
    name: &'static str,
    ops: &'static [u32],
    trace: &'static str,
    phases: usize,
}

/// The scenarios: vCPU 1 on another core for the IPI, on the same core for the switch, one vCPU
/// moving between two cores for the move. The hypervisor prints no per-switch scheduling trace
/// lines while measuring (a console line costs thousands of instructions), and for the move no
/// trace line at all (every move is a `mig` event); every other trace event stays on. The IPI's
/// scenario runs at several phases: its core's count can take in the other core's instructions
/// ([`lowest_over_phases`]); the move's window detects that itself (overlaps), and the others
/// run on one core.
const SCENARIOS: &[Scenario] = &[
    Scenario { name: "bench-spread", ops: &[1, 2, 3], trace: "events", phases: PHASES },
    Scenario { name: "bench-onecore", ops: &[SWITCH], trace: "events", phases: 1 },
    Scenario { name: "bench-move", ops: &[6], trace: "off", phases: 1 },
];
/// Phases of a two-core scenario whose count is taken on one core.
const PHASES: usize = 4;

/// The boot argument that sets phase `phase` of a scenario: a word the hypervisor ignores (it
/// looks its arguments up by name), whose length changes how many instructions the boot takes
/// before the guest starts, and so where QEMU's turns between the CPUs fall in the measured
/// loops (under `-icount` it runs the CPUs in turn in one thread). Phase 0 has none.
fn phase_arg(phase: usize) -> String {
    match phase {
        0 => String::new(),
        p => format!(" hv.bench-phase={}", "0".repeat(5 * p)),
    }
}

/// An operation whose figure differs between phases: its name and its figure at each phase.
pub type PhaseSpread = (&'static str, Vec<f64>);

/// Under `-icount` the measuring core's counter follows QEMU's global instruction count while it
/// is at EL2, so when QEMU runs another CPU in the middle of the measured path (the IPI's
/// receiver, woken by the kick), that CPU's instructions count too; whether it does depends on
/// the phase, not on the path (seen: the IPI's sender 385.9 at one phase and 643.1 at another,
/// with the same image). Another core's instructions can only add, so each operation's figure
/// is its lowest over the phases; each phase's figures must be identical run to run
/// ([`figures`]). Returns the figures and, for each operation whose phases differ, its figure
/// at every phase.
pub fn lowest_over_phases(per_phase: &[Vec<Figure>]) -> Result<(Vec<Figure>, Vec<PhaseSpread>), String> {
    let first = per_phase.first().ok_or("no phase")?;
    let mut lowest = first.clone();
    let mut spread = Vec::new();
    for (i, fig) in lowest.iter_mut().enumerate() {
        let mut at = Vec::new();
        for phase in per_phase {
            let f =
                phase.get(i).filter(|f| f.op == fig.op).ok_or(format!("a phase has no figure for op {}", fig.op))?;
            at.push(f.instructions);
            if f.instructions < fig.instructions {
                *fig = f.clone();
            }
        }
        if at.iter().any(|&x| x != at[0]) {
            spread.push((fig.name, at));
        }
    }
    Ok((lowest, spread))
}
/// Every scenario (`cargo xtask bench qemu`).
pub const ALL: &[&str] = &["bench-spread", "bench-onecore", "bench-move"];
/// The vCPU move and the switch its goal is a multiple of (`cargo xtask bench migrate`).
pub const MOVE: &[&str] = &["bench-onecore", "bench-move"];
/// Runs of each scenario that must agree.
const RUNS: usize = 3;
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// `cargo xtask bench qemu` (and the move of `bench migrate`): boots the `bench` guest on the
/// hypervisor under `-icount shift=4,sleep=off`, three times for each scenario of `names`,
/// checks the counts are identical, and prints the EL2 path lengths.
pub fn run(ctx: &crate::exec::Ctx, names: &[&str]) -> Result<(), crate::Error> {
    use crate::Error;
    crate::setup::ensure_target(ctx)?;
    crate::setup::ensure_qemu(ctx)?;
    crate::manifest::guests_build_cmd().run(ctx)?;
    crate::qemu::build_cmd().run(ctx)?;
    let mut all = Vec::new();
    let selected: Vec<&Scenario> = SCENARIOS.iter().filter(|s| names.contains(&s.name)).collect();
    let mut spreads = Vec::new();
    for &Scenario { name, ops, trace, phases } in selected.iter().copied() {
        let path = crate::tasks::resolve_scenario(ctx, name)?;
        let scenario = vcpu_runtime::scenario::load(&ctx.root.join(&path)).map_err(|e| Error::new(e.to_string()))?;
        let manifest = crate::manifest::write_manifest(ctx, &scenario)?.to_string_lossy().into_owned();
        let mut per_phase = Vec::new();
        for phase in 0..phases {
            let cmd = crate::qemu::qemu_cmd(
                &crate::qemu::image_path(),
                Some(&manifest),
                u32::from(scenario.board.cores),
                "cortex-a57",
                true,
                Some(&format!("hv.trace={trace} hv.bench{}", phase_arg(phase))),
            );
            let mut runs = Vec::new();
            for run in 1..=RUNS {
                println!(
                    "xtask: bench qemu: {name}, phase {}/{phases}, run {run}/{RUNS}: {}",
                    phase + 1,
                    cmd.display()
                );
                let out = crate::qemu::run_with_timeout(ctx, &cmd, TIMEOUT, false)?;
                let console = out.output;
                let passed = out.status.is_some_and(|s| s.success()) && console.contains("RESULT: PASS");
                if !passed {
                    let status = match out.status {
                        Some(status) => crate::exec::describe(status),
                        None => format!("killed after {} s", TIMEOUT.as_secs()),
                    };
                    return Err(Error::new(format!("bench run of {name} failed ({status}); its console:\n{console}")));
                }
                runs.push(parse(&console));
            }
            per_phase.push(figures(&runs, ops).map_err(|e| Error::new(format!("{name}, phase {}: {e}", phase + 1)))?);
        }
        let (figures, spread) = lowest_over_phases(&per_phase).map_err(|e| Error::new(format!("{name}: {e}")))?;
        all.extend(figures);
        spreads.extend(spread);
    }
    resolve_goals(&mut all);
    let traces: Vec<String> =
        selected.iter().map(|s| format!("{} hv.trace={} phases={}", s.name, s.trace, s.phases)).collect();
    println!(
        "\nEL2 path lengths (cortex-a57, -icount shift=4,sleep=off, {RUNS} identical runs per phase, baseline subtracted, the lowest over the phases; {}):\n",
        traces.join(", ")
    );
    print!("{}", Table(&all));
    for f in &all {
        if let Some(o) = OPERATIONS.iter().find(|o| o.op == f.op) {
            println!("  {}: {}", o.name, o.about);
        }
    }
    for (name, at) in spreads {
        let at: Vec<String> = at.iter().map(|x| format!("{x:.1}")).collect();
        println!(
            "  {name}: {} at the phases; the lowest is taken, the others include another core's instructions",
            at.join(" / ")
        );
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

    const MOVES: &str = "bench op=5 iterations=1000 el2_instructions=150 exits=1 cores=1 wakes=0 moves=0 overlaps=0
[bench] bench: op 5 (baseline-every-core) ran 1000 iterations
bench op=6 iterations=1000 el2_instructions=1200150 exits=1001 cores=2 wakes=1000 moves=1000 overlaps=0
";

    #[test]
    fn parses_bench_lines_only() {
        let s = parse(LOG);
        assert_eq!(s.len(), 3);
        assert_eq!(s[1], Sample { op: 1, iterations: 1000, el2_instructions: 48120, exits: 1002, every_core: None });
        assert!(parse("bench op=x iterations=1").is_empty());
    }

    #[test]
    fn parses_every_core_fields() {
        let s = parse(MOVES);
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].el2_instructions, 1200150);
        assert_eq!(s[1].every_core, Some(EveryCore { cores: 2, wakes: 1000, moves: 1000, overlaps: 0 }));
        // Every field or none: a line with `cores=` but no `overlaps=` is not a sample.
        assert!(parse("bench op=6 iterations=1 el2_instructions=5 exits=1 cores=2 wakes=1 moves=1").is_empty());
        assert!(
            parse("bench op=6 iterations=1 el2_instructions=5 exits=1 cores=2 wakes=1 moves=x overlaps=0").is_empty()
        );
    }

    #[test]
    fn figures_subtract_the_baseline_and_divide_switches() {
        let f = figures(&[parse(LOG), parse(LOG)], &[1, 4]).unwrap();
        assert_eq!(f[0].instructions, 48.0);
        assert_eq!(f[0].exits, 1.0);
        assert_eq!(f[1].name, "vCPU switch, full state");
        assert_eq!(f[1].instructions, 500.0);
        assert_eq!(f[1].exits, 1.0);
        let mut f = f;
        resolve_goals(&mut f);
        assert!(f[0].meets_goal());
        let table = Table(&f).to_string();
        assert!(table.contains("null hypercall") && table.contains("<= 60"), "{table}");
        // Only the operations asked for.
        assert_eq!(figures(&[parse(LOG)], &[4]).unwrap().len(), 1);
        assert!(figures(&[parse(LOG)], &[2]).unwrap_err().contains("no line for bench op 2"));
    }

    #[test]
    fn the_move_subtracts_its_own_baseline_and_is_held_against_two_switches() {
        let runs = [format!("{LOG}{MOVES}")].map(|l| parse(&l));
        let mut f = figures(&runs, &[4, 6]).unwrap();
        assert_eq!(f[1].name, "vCPU move between cores");
        assert_eq!(f[1].instructions, 1200.0);
        assert_eq!(f[1].exits, 1.0);
        resolve_goals(&mut f);
        assert_eq!(f[1].goal, Some(1000.0));
        assert!(!f[1].meets_goal());
        let table = Table(&f).to_string();
        assert!(table.contains("<= 1000  (over the goal)"), "{table}");
        // Without the switch measured, no goal.
        let mut f = figures(&runs, &[6]).unwrap();
        resolve_goals(&mut f);
        assert_eq!(f[0].goal, None);
        assert!(Table(&f).to_string().contains(" -"));
    }

    #[test]
    fn every_core_counts_that_overlapped_or_missed_moves_are_refused() {
        let check = |log: &str| figures(&[parse(log)], &[6]);
        assert!(check(MOVES).is_ok());
        let err = check(&MOVES.replace("moves=1000 overlaps=0", "moves=1000 overlaps=2")).unwrap_err();
        assert!(err.contains("2 overlaps"), "{err}");
        let err = check(&MOVES.replace("moves=1000", "moves=999")).unwrap_err();
        assert!(err.contains("999 moves"), "{err}");
        let err = check(&MOVES.replace("wakes=1000", "wakes=1003")).unwrap_err();
        assert!(err.contains("1003 wake-ups"), "{err}");
        // The baseline is checked too.
        let err = check(&MOVES.replace("wakes=0 moves=0 overlaps=0", "wakes=0 moves=0 overlaps=1")).unwrap_err();
        assert!(err.contains("op 5"), "{err}");
        // A move counted on one core only is not a move figure.
        let one_core = "bench op=5 iterations=10 el2_instructions=1 exits=1\nbench op=6 iterations=10 el2_instructions=9 exits=1\n";
        assert!(check(one_core).unwrap_err().contains("not counted on every core"));
    }

    #[test]
    fn runs_that_disagree_are_refused() {
        let other = LOG.replace("48120", "48121");
        let err = figures(&[parse(LOG), parse(&other)], &[1, 4]).unwrap_err();
        assert!(err.contains("run 2 counted differently"), "{err}");
        assert!(figures(&[parse("bench op=1 iterations=10 el2_instructions=5 exits=1")], &[1]).is_err());
        // Lines of operations not asked for may differ.
        let spread = format!("{LOG}{MOVES}");
        let moved = spread.replace("1200150", "1200151");
        assert!(figures(&[parse(&spread), parse(&moved)], &[1, 4]).is_ok());
        assert!(figures(&[parse(&spread), parse(&moved)], &[6]).is_err());
    }
    #[test]
    fn the_lowest_phase_is_taken_and_differing_phases_are_reported() {
        let fig =
            |op: u32, name: &'static str, instructions: f64| Figure { op, name, instructions, exits: 1.0, goal: None };
        let phases = [
            vec![fig(1, "null", 21.0), fig(3, "ipi", 643.1)],
            vec![fig(1, "null", 21.0), fig(3, "ipi", 385.9)],
            vec![fig(1, "null", 21.0), fig(3, "ipi", 388.1)],
        ];
        let (lowest, spread) = lowest_over_phases(&phases).unwrap();
        assert_eq!(lowest.iter().map(|f| f.instructions).collect::<Vec<_>>(), [21.0, 385.9]);
        assert_eq!(spread, [("ipi", vec![643.1, 385.9, 388.1])]);
        // A phase without the figure is an error, not a silent pass.
        let err = lowest_over_phases(&[phases[0].clone(), vec![fig(1, "null", 21.0)]]).unwrap_err();
        assert!(err.contains("op 3"), "{err}");
        assert!(lowest_over_phases(&[]).is_err());
        // Each phase adds a word of its own length to the boot arguments.
        assert_eq!(phase_arg(0), "");
        assert_ne!(phase_arg(1).len(), phase_arg(2).len());
    }
}
