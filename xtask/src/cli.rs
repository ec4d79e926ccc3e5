//! Command-line parsing for `cargo xtask`: a hand-written parser, so xtask builds with no
//! dependencies and in seconds.

use crate::Error;

/// The scenario `cargo xtask demo` runs when none is given.
pub const DEFAULT_SCENARIO: &str = "scenarios/phone-dual.toml";

/// A benchmark group of `cargo xtask bench NAME`: one package's criterion benches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bench {
    /// The name given on the command line.
    pub name: &'static str,
    /// The package whose benches `cargo bench -p` runs.
    pub package: &'static str,
    /// One line for `help`.
    pub about: &'static str,
}

/// Every known benchmark group, in the order `cargo xtask bench` runs them.
/// (`energy`, `migrate` and `linux` will join when their crates have benches.)
pub const BENCHES: &[Bench] = &[
    Bench { name: "sched", package: "vcpu-runtime", about: "run queues and scheduler decisions" },
    Bench { name: "sim", package: "platform-sim", about: "simulator throughput" },
];

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Print the command list.
    Help,
    /// Every check and test; `quick` skips loom and the QEMU tests.
    Test { quick: bool },
    /// Run the simulator on a scenario (later: boot the hypervisor on QEMU).
    Demo { scenario: Option<String> },
    /// Run `hvsim` on a scenario, passing the remaining arguments through.
    Sim { scenario: String, args: Vec<String> },
    /// Run the criterion benches, all of them or one group.
    Bench { only: Option<Bench> },
}

/// The text of `cargo xtask help`.
pub fn help() -> String {
    let mut s = String::from(
        "cargo xtask: build, run, test and bench the energy-aware hypervisor

USAGE: cargo xtask COMMAND [ARGS]

COMMANDS:
  demo [SCENARIO]        run the simulator on SCENARIO (default scenarios/phone-dual.toml) and show its report
  test [--quick]         fmt, clippy, unit tests, loom models, EL2 build, QEMU tests; --quick skips loom and QEMU
  sim SCENARIO [ARGS..]  run hvsim (release) on SCENARIO; ARGS go to hvsim:
                         --policy P, --duration D, --trace FILE, --report-json FILE
  bench [NAME]           run the criterion benches, all or one group (NAME below)
  help                   print this list

BENCH NAMES:
",
    );
    for b in BENCHES {
        s.push_str(&format!("  {:<8} cargo bench -p {:<14} {}\n", b.name, b.package, b.about));
    }
    s.push_str(
        "
SCENARIO is a path (relative to the current or the workspace directory) or a name in scenarios/.
`test` and `demo` add the aarch64-unknown-none-softfloat target with rustup when it is missing;
`test` installs qemu-system-arm with apt-get (as root) when it runs QEMU tests. See docs/xtask.md.
",
    );
    s
}

fn command_names() -> &'static str {
    "demo, test, sim, bench, help"
}

fn bench_names() -> String {
    BENCHES.iter().map(|b| b.name).collect::<Vec<_>>().join(", ")
}

/// Parses the arguments after `cargo xtask`.
pub fn parse<I, S>(args: I) -> Result<Command, Error>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let args: Vec<String> = args.into_iter().map(Into::into).collect();
    let Some((cmd, rest)) = args.split_first() else {
        return Ok(Command::Help);
    };
    // `sim` passes its arguments through untouched, so `--help` after the scenario is hvsim's.
    let wants_help = |rest: &[String]| rest.iter().any(|a| a == "-h" || a == "--help");
    match cmd.as_str() {
        "help" | "-h" | "--help" => Ok(Command::Help),
        "test" => {
            if wants_help(rest) {
                return Ok(Command::Help);
            }
            let mut quick = false;
            for a in rest {
                match a.as_str() {
                    "--quick" => quick = true,
                    other => return Err(Error::usage(format!("`test` takes only --quick, not `{other}`"))),
                }
            }
            Ok(Command::Test { quick })
        }
        "demo" => {
            if wants_help(rest) {
                return Ok(Command::Help);
            }
            match rest {
                [] => Ok(Command::Demo { scenario: None }),
                [s] if !s.starts_with('-') => Ok(Command::Demo { scenario: Some(s.clone()) }),
                _ => Err(Error::usage(format!("`demo` takes at most one SCENARIO, got `{}`", rest.join(" ")))),
            }
        }
        "sim" => match rest.split_first() {
            Some((s, _)) if s == "-h" || s == "--help" => Ok(Command::Help),
            Some((s, args)) if !s.starts_with('-') => Ok(Command::Sim { scenario: s.clone(), args: args.to_vec() }),
            _ => Err(Error::usage("`sim` needs a SCENARIO first: cargo xtask sim SCENARIO [hvsim args...]")),
        },
        "bench" => {
            if wants_help(rest) {
                return Ok(Command::Help);
            }
            match rest {
                [] => Ok(Command::Bench { only: None }),
                [name] => match BENCHES.iter().find(|b| b.name == name) {
                    Some(b) => Ok(Command::Bench { only: Some(*b) }),
                    None => Err(Error::usage(format!("unknown bench `{name}`; known benches: {}", bench_names()))),
                },
                _ => Err(Error::usage(format!(
                    "`bench` takes at most one NAME ({}), got `{}`",
                    bench_names(),
                    rest.join(" ")
                ))),
            }
        }
        other => Err(Error::usage(format!("unknown command `{other}`; commands: {}", command_names()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(args: &[&str]) -> String {
        parse(args.iter().copied()).unwrap_err().to_string()
    }

    #[test]
    fn no_args_and_help_flags_print_help() {
        for args in [&[][..], &["help"], &["-h"], &["--help"], &["test", "--help"]] {
            assert_eq!(parse(args.iter().copied()).unwrap(), Command::Help, "{args:?}");
        }
    }

    #[test]
    fn unknown_command_lists_the_commands() {
        let e = err(&["frobnicate"]);
        assert!(e.contains("unknown command `frobnicate`"), "{e}");
        for name in ["demo", "test", "sim", "bench", "help"] {
            assert!(e.contains(name), "{e} lacks {name}");
        }
    }

    #[test]
    fn test_takes_quick_only() {
        assert_eq!(parse(["test"]).unwrap(), Command::Test { quick: false });
        assert_eq!(parse(["test", "--quick"]).unwrap(), Command::Test { quick: true });
        assert!(err(&["test", "--fast"]).contains("--fast"));
    }

    #[test]
    fn demo_scenario_is_optional() {
        assert_eq!(parse(["demo"]).unwrap(), Command::Demo { scenario: None });
        assert_eq!(
            parse(["demo", "scenarios/quad.toml"]).unwrap(),
            Command::Demo { scenario: Some("scenarios/quad.toml".into()) }
        );
        assert!(err(&["demo", "a.toml", "b.toml"]).contains("at most one"));
        assert!(err(&["demo", "--policy"]).contains("at most one"));
    }

    #[test]
    fn sim_passes_the_rest_through() {
        assert_eq!(
            parse(["sim", "s.toml", "--policy", "consolidate", "--help"]).unwrap(),
            Command::Sim {
                scenario: "s.toml".into(),
                args: vec!["--policy".into(), "consolidate".into(), "--help".into()],
            }
        );
        assert!(err(&["sim"]).contains("needs a SCENARIO"));
        assert!(err(&["sim", "--policy", "x"]).contains("needs a SCENARIO"));
    }

    #[test]
    fn bench_names_are_checked() {
        assert_eq!(parse(["bench"]).unwrap(), Command::Bench { only: None });
        let Command::Bench { only: Some(b) } = parse(["bench", "sched"]).unwrap() else {
            panic!("bench sched did not parse");
        };
        assert_eq!(b.package, "vcpu-runtime");
        let e = err(&["bench", "foo"]);
        assert!(e.contains("unknown bench `foo`"), "{e}");
        assert!(e.contains("sched, sim"), "{e}");
        assert!(err(&["bench", "sched", "sim"]).contains("at most one"));
    }

    #[test]
    fn help_mentions_every_command_and_bench() {
        let h = help();
        for word in ["demo", "test", "sim", "bench", "help", "--quick"] {
            assert!(h.contains(word), "help lacks {word}");
        }
        for b in BENCHES {
            assert!(h.contains(b.name) && h.contains(b.package));
        }
    }
}
