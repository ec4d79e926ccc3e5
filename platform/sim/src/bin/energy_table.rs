//! `energy-table [--out FILE] [--duration D] [--board PROFILE:CORES]... [--check]`: the policy table of
//! `cargo xtask bench energy`. Every built-in trace (`platform_sim::traces`) at 10, 25, 50 and
//! 75 % of each board, under every policy, simulated; prints the table and the acceptance
//! verdicts, and writes them as Markdown (docs/energy-table.md). With `--check` it exits with a
//! failure when a criterion does not hold.
//!
//! Acceptance (issue 4): at ≤ 25 % utilization `consolidate` uses ≥ 5 % less energy than the best
//! baseline on every trace; at no utilization is it more than 1 % worse than the best baseline;
//! no deadline misses where reservations were admitted.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::Instant as WallClock;

use platform_sim::energy::{self, EnergyReport};
use platform_sim::traces::{self, TRACES};
use vcpu_runtime::scenario::{parse_duration, GovernorPolicy};
use vcpu_runtime::Nanos;

const UTILIZATIONS: [u32; 4] = [10, 25, 50, 75];
/// At or below this utilization consolidate must save this much against the best baseline.
const LIGHT_PERCENT: u32 = 25;
const LIGHT_SAVING_PERCENT: f64 = 5.0;
/// Nowhere may it be worse than the best baseline by more than this.
const WORST_PERCENT: f64 = 1.0;
/// A run that leaves more than this share of the work due undone beyond what the run that did
/// most left (work that came too late for any policy to finish by the end) did not keep up: its
/// energy is for less work than the others'.
const MAX_BACKLOG_PERCENT: u64 = 1;

struct Row {
    board: String,
    trace: &'static str,
    util: u32,
    runs: Vec<EnergyReport>,
    /// No policy can spend less than this (µJ): `energy::lower_bound_uj`.
    bound_uj: u64,
}

impl Row {
    fn energy(&self, policy: GovernorPolicy) -> f64 {
        self.run(policy).map_or(f64::NAN, |r| r.energy_uj as f64)
    }
    /// The best baseline: its energy and which it is.
    fn best(&self) -> (f64, GovernorPolicy) {
        [GovernorPolicy::Spread, GovernorPolicy::Hotplug, GovernorPolicy::RaceToIdle]
            .into_iter()
            .map(|p| (self.energy(p), p))
            .fold((f64::INFINITY, GovernorPolicy::Spread), |a, b| if b.0 < a.0 { b } else { a })
    }
    /// Consolidate against the best baseline, in percent (positive: consolidate saves).
    fn saving(&self) -> (f64, GovernorPolicy) {
        let (best, policy) = self.best();
        ((best - self.energy(GovernorPolicy::Consolidate)) / best * 100.0, policy)
    }
    /// The most any policy could save against the best baseline, in percent: down to the
    /// lower bound.
    fn ceiling(&self) -> f64 {
        let (best, _) = self.best();
        (best - self.bound_uj as f64) / best * 100.0
    }
    /// Where the saving comes from: consolidate against the best baseline in each part of the
    /// energy, in points of the baseline's total (they add up to [`Row::saving`]).
    fn saving_by_part(&self) -> Parts {
        let (_, best) = self.best();
        let (Some(b), Some(c)) = (self.run(best), self.run(GovernorPolicy::Consolidate)) else {
            return Parts { busy: f64::NAN, idle: f64::NAN, clusters: f64::NAN };
        };
        let (pb, pc) = (Parts::of(b), Parts::of(c));
        let total = b.energy_uj as f64 / 100.0;
        Parts {
            busy: (pb.busy - pc.busy) / total,
            idle: (pb.idle - pc.idle) / total,
            clusters: (pb.clusters - pc.clusters) / total,
        }
    }
    /// The share of the best baseline's energy its cores spent idle (or off), in percent: all
    /// that turning cores off can take back, with the same operating points and the clusters up
    /// as long.
    fn best_idle_share(&self) -> f64 {
        let (_, best) = self.best();
        self.run(best).map_or(f64::NAN, |b| b.idle_uj as f64 * 100.0 / b.energy_uj as f64)
    }
    /// The run of `policy`, if the row has one.
    fn run(&self, policy: GovernorPolicy) -> Option<&EnergyReport> {
        self.runs.iter().find(|r| r.policy == policy.name())
    }
}

/// A difference in points as the table prints it (one decimal): one that rounds to zero is
/// +0.0 whatever its sign.
fn points(x: f64) -> f64 {
    if x.abs() < 0.05 {
        0.0
    } else {
        x
    }
}

/// A run's energy in three parts (µJ, or points of a total): cores running, cores idle or off
/// (break-even costs included), and the clusters' shared logic.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Parts {
    busy: f64,
    idle: f64,
    clusters: f64,
}

impl Parts {
    fn of(r: &EnergyReport) -> Parts {
        let (idle, clusters) = (r.idle_uj as f64, r.clusters_uj as f64);
        Parts { busy: r.energy_uj as f64 - idle - clusters, idle, clusters }
    }
}

fn main() -> ExitCode {
    let mut out = None;
    let mut check = false;
    let mut duration = Nanos::from_secs(20);
    let mut boards: Vec<(String, u16)> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_default();
        match a.as_str() {
            "--out" => out = Some(value()),
            "--check" => check = true,
            "--duration" => match parse_duration(&value()) {
                Ok(d) => duration = d,
                Err(e) => return usage(&format!("--duration: {e}")),
            },
            "--board" => {
                let v = value();
                let Some((profile, cores)) = v.split_once(':') else { return usage("--board PROFILE:CORES") };
                let Ok(cores) = cores.parse() else { return usage("--board PROFILE:CORES") };
                boards.push((profile.to_string(), cores));
            }
            _ => return usage(&format!("unknown argument {a}")),
        }
    }
    if boards.is_empty() {
        boards = vec![("phone-dual".into(), 2), ("sd410".into(), 4), ("hikey960".into(), 8)];
    }
    let total = boards.len() * TRACES.len() * UTILIZATIONS.len() * GovernorPolicy::ALL.len();
    let wall = WallClock::now();
    let mut done = 0;
    let mut rows = Vec::new();
    for (profile, cores) in &boards {
        for trace in TRACES {
            for util in UTILIZATIONS {
                let Some(scenario) = traces::scenario(trace, profile, *cores, util, duration) else {
                    eprintln!("energy-table: {trace} cannot reach {util} % on {cores} cores: skipped");
                    done += GovernorPolicy::ALL.len();
                    continue;
                };
                let mut runs = Vec::new();
                for policy in GovernorPolicy::ALL {
                    progress(done, total, &format!("{profile} {trace} {util}% {policy}"));
                    match energy::run(&scenario, policy, &mut ()) {
                        Ok(r) => {
                            if !r.report.violations.is_empty() {
                                eprintln!(
                                    "\nenergy-table: {}: runtime invariants violated: {:?}",
                                    scenario.name, r.report.violations
                                );
                                return ExitCode::FAILURE;
                            }
                            runs.push(r.energy)
                        }
                        Err(e) => {
                            eprintln!("\nenergy-table: {}: {e}", scenario.name);
                            return ExitCode::FAILURE;
                        }
                    }
                    done += 1;
                }
                let bound_uj = energy::model_for(&scenario).map_or(0, |m| energy::lower_bound_uj(&scenario, &m));
                rows.push(Row { board: format!("{profile} ({cores} cores)"), trace, util, runs, bound_uj });
            }
        }
    }
    progress(total, total, "done");
    eprintln!();
    let (table, ok) = render(&rows, duration, wall.elapsed().as_secs_f64());
    print!("{table}");
    if let Some(path) = out {
        if let Err(e) = std::fs::write(&path, &table) {
            eprintln!("energy-table: {path}: {e}");
            return ExitCode::FAILURE;
        }
        println!("energy-table: written to {path}");
    }
    if ok || !check {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn usage(e: &str) -> ExitCode {
    eprintln!(
        "energy-table: {e}\nusage: energy-table [--out FILE] [--duration D] [--board PROFILE:CORES]... [--check]"
    );
    ExitCode::from(2)
}

/// A progress bar on stderr: `[#####.....] 12/160 what`.
fn progress(done: usize, total: usize, what: &str) {
    let width = 30;
    let filled = (done * width).checked_div(total).unwrap_or(width).min(width);
    eprint!("\r[{}{}] {done}/{total} {what:<40}", "#".repeat(filled), ".".repeat(width - filled));
    let _ = std::io::stderr().flush();
}

/// The Markdown table and the verdicts; whether every criterion holds.
fn render(rows: &[Row], duration: Nanos, wall_s: f64) -> (String, bool) {
    let mut s = String::new();
    let _ = writeln!(s, "# Energy table (`cargo xtask bench energy`)\n");
    let _ = writeln!(
        s,
        "Generated by `cargo xtask bench energy` (the `energy-table` binary of `platform/sim`): every built-in \
         trace (docs/governor.md) at 10, 25, 50 and 75 % of the board's capacity (rows a trace cannot reach are \
         left out), {duration} simulated per run, under each policy, with DVFS, energy from the board's energy \
         model (docs/energy-models.md): cores and clusters. Energy in joules; *saving* is consolidate against \
         the best of spread, hotplug and race-to-idle; *at most* is what any policy could save against that \
         baseline, down to a lower bound from the work and the model alone (`energy::lower_bound_uj`: every \
         job at the most efficient operating point, idle cores free, the boot core's cluster asleep in every \
         gap between arrivals of work): loose, it only says where the model rules a saving out. *By part* \
         splits the saving into the cores' busy energy, their idle and off energy (break-even costs \
         included) and the clusters', in points of the best baseline's energy (they add up to the saving); \
         *best idle* is the share of the best baseline's energy its cores spent idle or off: all that \
         turning cores off can take back while the operating points and the clusters' time up stay the \
         same (on a board with one cluster, packing vCPUs barely changes how long the cluster is up: see the \
         *clusters* part). RT misses \
         are the deadline misses of the vCPUs with a reservation; late jobs those of the other periodic vCPUs \
         (spread/hotplug/race-to-idle/consolidate); latency is the mean and worst wake-up latency under \
         consolidate; moves and core off/on counts are consolidate's. {} runs in {wall_s:.1} s of wall time.\n",
        rows.len() * GovernorPolicy::ALL.len()
    );
    let _ = writeln!(
        s,
        "| board | trace | util | spread J | hotplug J | race-to-idle J | consolidate J | saving | by part (busy / idle / clusters) | best idle | at most | RT misses (s/h/r/c) | late jobs (s/h/r/c) | latency avg / max | moves | cores off/on |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut ok = true;
    let mut failures = Vec::new();
    for r in rows {
        let (saving, best) = r.saving();
        let parts = r.saving_by_part();
        let c = r.run(GovernorPolicy::Consolidate);
        let per_policy = |f: &dyn Fn(&EnergyReport) -> u64| -> String {
            GovernorPolicy::ALL
                .iter()
                .map(|p| r.run(*p).map_or("-".into(), |x| f(x).to_string()))
                .collect::<Vec<String>>()
                .join("/")
        };
        let misses = per_policy(&|x| x.rt_misses);
        let late = per_policy(&|x| x.deadline_misses - x.rt_misses);
        let _ = writeln!(
            s,
            "| {} | {} | {} % | {:.3} | {:.3} | {:.3} | {:.3} | {:+.1} % (vs {}) | {:+.1} / {:+.1} / {:+.1} | {:.1} % | {:.1} % | {} | {} | {} / {} | {} | {}/{} |",
            r.board,
            r.trace,
            r.util,
            r.energy(GovernorPolicy::Spread) / 1e6,
            r.energy(GovernorPolicy::Hotplug) / 1e6,
            r.energy(GovernorPolicy::RaceToIdle) / 1e6,
            r.energy(GovernorPolicy::Consolidate) / 1e6,
            points(saving),
            best,
            points(parts.busy),
            points(parts.idle),
            points(parts.clusters),
            r.best_idle_share(),
            r.ceiling(),
            misses,
            late,
            c.map_or("-".into(), |c| Nanos(c.wake_latency_avg_ns).to_string()),
            c.map_or("-".into(), |c| Nanos(c.wake_latency_max_ns).to_string()),
            c.map_or(0, |c| c.migrations),
            c.map_or(0, |c| c.core_off),
            c.map_or(0, |c| c.core_on),
        );
        if r.util <= LIGHT_PERCENT && saving < LIGHT_SAVING_PERCENT {
            failures.push(format!(
                "{} {} at {} %: consolidate saves {saving:.1} %, less than {LIGHT_SAVING_PERCENT} % ({best}'s cores spent {:.1} % of its energy idle or off; busy {:+.1}, idle {:+.1}, clusters {:+.1} points)",
                r.board,
                r.trace,
                r.util,
                r.best_idle_share(),
                points(parts.busy),
                points(parts.idle),
                points(parts.clusters)
            ));
        }
        if saving < -WORST_PERCENT {
            failures.push(format!(
                "{} {} at {} %: consolidate is {:.1} % worse than {best}",
                r.board, r.trace, r.util, -saving
            ));
        }
        if c.is_some_and(|c| c.rt_misses > 0) {
            failures.push(format!("{} {} at {} %: consolidate missed real-time deadlines", r.board, r.trace, r.util));
        }
        let least = r.runs.iter().map(|x| x.backlog_ns).min().unwrap_or(0);
        for run in r.runs.iter().filter(|x| (x.backlog_ns - least) * 100 > x.demand_ns * MAX_BACKLOG_PERCENT) {
            let percent = |ns: u64| ns as f64 * 100.0 / run.demand_ns.max(1) as f64;
            failures.push(format!(
                "{} {} at {} %: {} left {:.1} % of the work undone, {:.1} points more than the policy that did most (its energy is for less work)",
                r.board,
                r.trace,
                r.util,
                run.policy,
                percent(run.backlog_ns),
                percent(run.backlog_ns - least)
            ));
        }
    }
    let _ = writeln!(s, "\n## Acceptance\n");
    let _ = writeln!(
        s,
        "- at ≤ {LIGHT_PERCENT} % utilization consolidate saves ≥ {LIGHT_SAVING_PERCENT} % against the best baseline, on every trace;\n\
         - at no utilization is it more than {WORST_PERCENT} % worse than the best baseline;\n\
         - no deadline misses of reserved vCPUs under consolidate (their reservations were all admitted);\n\
         - every policy does the work, as much of it as the one that does most (at most {MAX_BACKLOG_PERCENT} % of it more left undone at the end: work that arrives too late for any policy to finish by the end does not count against one), so energies compare.\n"
    );
    if failures.is_empty() {
        let _ = writeln!(s, "**All criteria hold.**");
    } else {
        ok = false;
        let _ = writeln!(s, "**Not met:**\n");
        for f in failures {
            let _ = writeln!(s, "- {f}");
        }
    }
    (s, ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(policy: GovernorPolicy, busy: u64, idle: u64, clusters: u64) -> EnergyReport {
        EnergyReport {
            scenario: "s".into(),
            policy: policy.name().into(),
            profile: "phone-dual".into(),
            simulated_ns: 1,
            energy_uj: busy + idle + clusters,
            average_power_mw: 0.0,
            cores: Vec::new(),
            idle_uj: idle,
            clusters_uj: clusters,
            vms: Vec::new(),
            demand_ns: 100,
            backlog_ns: 0,
            deadline_misses: 0,
            rt_misses: 0,
            wake_latency_max_ns: 0,
            wake_latency_avg_ns: 0,
            migrations: 0,
            core_off: 0,
            core_on: 0,
            transitions: 0,
        }
    }

    fn row(util: u32) -> Row {
        Row {
            board: "phone-dual (2 cores)".into(),
            trace: "idle-bursts",
            util,
            runs: vec![
                run(GovernorPolicy::Spread, 700, 100, 220),
                run(GovernorPolicy::Hotplug, 720, 60, 220),
                run(GovernorPolicy::RaceToIdle, 900, 50, 250),
                run(GovernorPolicy::Consolidate, 715, 40, 225),
            ],
            bound_uj: 800,
        }
    }

    #[test]
    fn the_saving_splits_into_parts_of_the_best_baselines_energy() {
        let r = row(10);
        // Hotplug (1000 µJ) is the best baseline; consolidate spends 980.
        let (saving, best) = r.saving();
        assert_eq!(best, GovernorPolicy::Hotplug);
        let parts = r.saving_by_part();
        assert!((parts.busy - 0.5).abs() < 1e-9, "{parts:?}");
        assert!((parts.idle - 2.0).abs() < 1e-9, "{parts:?}");
        assert!((parts.clusters + 0.5).abs() < 1e-9, "{parts:?}");
        assert!((parts.busy + parts.idle + parts.clusters - saving).abs() < 1e-9);
        assert!((saving - 2.0).abs() < 1e-9);
        assert!((r.best_idle_share() - 6.0).abs() < 1e-9);
    }

    #[test]
    fn a_light_row_short_of_the_goal_says_where_its_saving_came_from() {
        let (table, ok) = render(&[row(10)], Nanos::from_secs(1), 0.0);
        assert!(!ok);
        assert!(table.contains("| +2.0 % (vs hotplug) | +0.5 / +2.0 / -0.5 | 6.0 % |"), "{table}");
        assert!(
            table.contains(
                "consolidate saves 2.0 %, less than 5 % (hotplug's cores spent 6.0 % of its energy idle or off; \
                 busy +0.5, idle +2.0, clusters -0.5 points)"
            ),
            "{table}"
        );
        assert_eq!(format!("{:+.1}", points(-0.04)), "+0.0");
        assert_eq!(format!("{:+.1}", points(-0.06)), "-0.1");
        // A heavy row is judged only against being worse.
        let (_, ok) = render(&[row(50)], Nanos::from_secs(1), 0.0);
        assert!(ok);
    }
}
