//! Command-line parsing for `cargo xtask`: a hand-written parser, so xtask builds with few
//! dependencies and in seconds.

use crate::Error;

/// The scenario `cargo xtask demo` runs when none is given.
pub const DEFAULT_SCENARIO: &str = "scenarios/phone-demo.toml";

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
pub const BENCHES: &[Bench] = &[
    Bench { name: "sched", package: "vcpu-runtime", about: "run queues and scheduler decisions" },
    Bench { name: "sim", package: "platform-sim", about: "simulator throughput" },
    Bench { name: "qemu", package: "", about: "hypervisor path lengths in EL2 instructions (QEMU, -icount)" },
    Bench {
        name: "energy",
        package: "",
        about: "energy of every power policy on the built-in phone traces (simulator)",
    },
    Bench {
        name: "migrate",
        package: "migrate",
        about: "checkpoint codec against memcpy (criterion); the vCPU move between cores in EL2 instructions (QEMU, -icount)",
    },
    Bench {
        name: "live",
        package: "",
        about: "live migration of an idle 256 MiB guest between two instances on QEMU: downtime, migration time",
    },
    Bench {
        name: "linux",
        package: "",
        about: "Linux guest boot on bare QEMU: wall time to init, icount time (baseline for the hypervisor)",
    },
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
    /// Build the EL2 image and boot it on QEMU.
    Qemu(QemuArgs),
    /// Fetch the Linux guest's kernel and busybox and build its initramfs, in target/linux/.
    Linux,
    /// `offload`: the offload experiment on QEMU (phone, server, relay), every link profile.
    Offload,
}

/// The `--cpu` QEMU runs when none is given.
pub const DEFAULT_QEMU_CPU: &str = "cortex-a57";
/// The `--smp` when neither it nor a scenario gives the number of cores.
pub const DEFAULT_QEMU_SMP: u32 = 2;
/// The `--timeout` (seconds) when none is given.
pub const DEFAULT_QEMU_TIMEOUT_SECS: u64 = 60;
/// The most cores `--smp` accepts (a scenario's board has at most 64).
pub const MAX_QEMU_SMP: u32 = 64;

/// The arguments of `cargo xtask qemu`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuArgs {
    /// The scenario whose guests the hypervisor runs (its manifest is loaded beside the image).
    pub scenario: Option<String>,
    /// `--smp N`; `None`: the scenario's `board.cores`, else [`DEFAULT_QEMU_SMP`].
    pub smp: Option<u32>,
    /// `--cpu NAME`.
    pub cpu: String,
    /// `--timeout SECONDS`.
    pub timeout_secs: u64,
    /// `--icount`: deterministic instruction counting (`-icount shift=4,sleep=off`).
    pub icount: bool,
    /// `--append ARGS`: the hypervisor's boot arguments (`/chosen/bootargs`).
    pub append: Option<String>,
    /// `--disk PATH`: a raw image attached as the checkpoint disk (virtio-blk).
    pub disk: Option<String>,
    /// `--stream PORT`: the migration stream (a virtio console) connected to this loopback port.
    pub stream: Option<u16>,
}

impl Default for QemuArgs {
    fn default() -> QemuArgs {
        QemuArgs {
            scenario: None,
            smp: None,
            cpu: DEFAULT_QEMU_CPU.into(),
            timeout_secs: DEFAULT_QEMU_TIMEOUT_SECS,
            icount: false,
            append: None,
            disk: None,
            stream: None,
        }
    }
}

/// The text of `cargo xtask help`.
pub fn help() -> String {
    let mut s = String::from(
        "cargo xtask: build, run, test and bench the energy-aware hypervisor

USAGE: cargo xtask COMMAND [ARGS]

COMMANDS:
  demo [SCENARIO]        SCENARIO (default scenarios/phone-demo.toml) on the simulator, then on
                         the hypervisor under QEMU: results, power, energy report, timeline
  test [--quick]         fmt, clippy, unit tests, loom models, EL2 build, QEMU tests; --quick skips loom and QEMU
  sim SCENARIO [ARGS..]  run hvsim (release) on SCENARIO; ARGS go to hvsim:
                         --policy P, --duration D, --trace FILE, --report-json FILE
  bench [NAME]           run the criterion benches, all or one group (NAME below)
  qemu [SCENARIO] [--smp N] [--cpu NAME] [--timeout SECONDS] [--icount] [--append ARGS] [--disk PATH] [--stream PORT]
                         build the EL2 hypervisor (release) and boot it on qemu-system-aarch64;
                         exits with QEMU's status (0 only when the hypervisor ended cleanly).
                         --smp: cores (default: the scenario's board.cores, else 2);
                         --cpu: QEMU CPU model (default cortex-a57; `max` for the newest features);
                         --timeout: kill QEMU and fail after SECONDS (default 60);
                         --icount: deterministic time (-icount shift=4,sleep=off);
                         --append: boot arguments for the hypervisor (e.g. hv.selftest=panic);
                         --disk: a raw image as the checkpoint disk (hv.checkpoint-at=MS or hv.checkpoint-on=TEXT, hv.restore);
                         --stream: the migration stream to 127.0.0.1:PORT (hv.migrate-out=MS, hv.migrate-in).
                         With SCENARIO, the test guests are built too and the scenario's manifest
                         (target/el2/manifests/NAME.manifest) is loaded beside the image: the
                         hypervisor runs its guests; without, it only checks its boot.
                         A Linux guest's kernel or initramfs under target/linux/ is made first
                         when missing (as `linux` does)
  offload                the offload experiment on QEMU: a phone (-smp 2) offloads a guest's heavy job
                         to a server (-smp 8) through a relay modelling WiFi, LTE and 3G when the model
                         says it pays, against running it locally; table and plot in target/offload/
  linux                  fetch an arm64 kernel and busybox from Debian (private apt state) into
                         target/linux/ and build the test initramfs; prints the paths of
                         target/linux/Image and target/linux/initramfs.cpio (kept: a second run
                         does no network work)
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
`test`, `demo` and `qemu` add the aarch64-unknown-none-softfloat target with rustup when it is
missing; `test` (when it runs QEMU tests) and `qemu` install qemu-system-arm with apt-get (as root);
`test` (before the QEMU tests) makes the Linux assets as `linux` does.
See docs/xtask.md, docs/linux-guests.md and, for the hypervisor's boot and exit codes, docs/platform.md.
",
    );
    s
}

fn command_names() -> &'static str {
    "demo, test, sim, bench, qemu, linux, offload, help"
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
        "qemu" => {
            if wants_help(rest) {
                return Ok(Command::Help);
            }
            parse_qemu(rest).map(Command::Qemu)
        }
        "offload" => match rest {
            [] => Ok(Command::Offload),
            _ if wants_help(rest) => Ok(Command::Help),
            _ => Err(Error::usage(format!("`offload` takes no arguments, got `{}`", rest.join(" ")))),
        },
        "linux" => match rest {
            [] => Ok(Command::Linux),
            _ if wants_help(rest) => Ok(Command::Help),
            _ => Err(Error::usage(format!("`linux` takes no arguments, got `{}`", rest.join(" ")))),
        },
        other => Err(Error::usage(format!("unknown command `{other}`; commands: {}", command_names()))),
    }
}

fn parse_qemu(args: &[String]) -> Result<QemuArgs, Error> {
    let mut q = QemuArgs::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        // `--flag=value` and `--flag value` both work.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = |what: &str| -> Result<String, Error> {
            match inline.clone().or_else(|| it.next().cloned()) {
                Some(v) if !v.is_empty() => Ok(v),
                _ => Err(Error::usage(format!("`qemu {flag}` needs {what}"))),
            }
        };
        match flag {
            "--smp" => {
                let v = value("a number of cores")?;
                match v.parse::<u32>() {
                    Ok(n) if (1..=MAX_QEMU_SMP).contains(&n) => q.smp = Some(n),
                    _ => {
                        return Err(Error::usage(format!(
                            "`qemu --smp` takes a number of cores from 1 to {MAX_QEMU_SMP}, not `{v}`"
                        )))
                    }
                }
            }
            "--cpu" => {
                let v = value("a QEMU CPU model (cortex-a57, max, ...)")?;
                if v.starts_with('-') || v.contains(char::is_whitespace) {
                    return Err(Error::usage(format!("`qemu --cpu` takes a QEMU CPU model, not `{v}`")));
                }
                q.cpu = v;
            }
            "--timeout" => {
                let v = value("a number of seconds")?;
                match v.parse::<u64>() {
                    Ok(n) if n > 0 => q.timeout_secs = n,
                    _ => {
                        return Err(Error::usage(format!(
                            "`qemu --timeout` takes a whole number of seconds above 0, not `{v}`"
                        )))
                    }
                }
            }
            "--append" => q.append = Some(value("the hypervisor's boot arguments")?),
            "--disk" => q.disk = Some(value("a raw disk image")?),
            "--stream" => {
                let v = value("a TCP port on 127.0.0.1")?;
                match v.parse::<u16>() {
                    Ok(p) if p > 0 => q.stream = Some(p),
                    _ => return Err(Error::usage(format!("`qemu --stream` takes a TCP port (1..65535), not `{v}`"))),
                }
            }
            "--icount" if inline.is_none() => q.icount = true,
            s if s.starts_with('-') => {
                return Err(Error::usage(format!(
                    "`qemu` does not take `{arg}`; it takes [SCENARIO] --smp N --cpu NAME --timeout SECONDS --icount --append ARGS --disk PATH --stream PORT"
                )))
            }
            _ if q.scenario.is_none() => q.scenario = Some(arg.clone()),
            _ => return Err(Error::usage(format!("`qemu` takes at most one SCENARIO, got `{arg}` too"))),
        }
    }
    Ok(q)
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
        for name in ["demo", "test", "sim", "bench", "qemu", "linux", "offload", "help"] {
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
    fn linux_takes_nothing() {
        assert_eq!(parse(["linux"]).unwrap(), Command::Linux);
        assert_eq!(parse(["offload"]).unwrap(), Command::Offload);
        assert!(parse(["offload", "x"]).is_err());
        assert_eq!(parse(["linux", "--help"]).unwrap(), Command::Help);
        assert!(err(&["linux", "now"]).contains("`linux` takes no arguments"));
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

    fn qemu(args: &[&str]) -> QemuArgs {
        let mut all = vec!["qemu"];
        all.extend_from_slice(args);
        match parse(all.iter().copied()).unwrap() {
            Command::Qemu(q) => q,
            other => panic!("{args:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn qemu_defaults() {
        let q = qemu(&[]);
        assert_eq!(q, QemuArgs::default());
        assert_eq!((q.smp, q.cpu.as_str(), q.timeout_secs, q.icount), (None, "cortex-a57", 60, false));
        assert_eq!(q.scenario, None);
        assert_eq!(q.append, None);
    }

    #[test]
    fn qemu_takes_every_option_in_any_order() {
        let q = qemu(&[
            "--icount",
            "--smp",
            "4",
            "phone-dual",
            "--cpu",
            "max",
            "--timeout",
            "5",
            "--append",
            "a=b c",
            "--disk",
            "c.img",
            "--stream",
            "4555",
        ]);
        assert_eq!(
            q,
            QemuArgs {
                scenario: Some("phone-dual".into()),
                smp: Some(4),
                cpu: "max".into(),
                timeout_secs: 5,
                icount: true,
                append: Some("a=b c".into()),
                disk: Some("c.img".into()),
                stream: Some(4555),
            }
        );
        let q = qemu(&["--smp=8", "--cpu=cortex-a57", "--timeout=120"]);
        assert_eq!((q.smp, q.cpu.as_str(), q.timeout_secs), (Some(8), "cortex-a57", 120));
    }

    #[test]
    fn qemu_help() {
        assert_eq!(parse(["qemu", "--help"]).unwrap(), Command::Help);
        assert_eq!(parse(["qemu", "--smp", "2", "-h"]).unwrap(), Command::Help);
    }

    #[test]
    fn qemu_rejects_bad_values() {
        for (args, needle) in [
            (&["qemu", "--smp"][..], "needs a number of cores"),
            (&["qemu", "--smp", "0"], "from 1 to 64"),
            (&["qemu", "--smp", "65"], "from 1 to 64"),
            (&["qemu", "--smp", "two"], "not `two`"),
            (&["qemu", "--smp="], "needs a number of cores"),
            (&["qemu", "--timeout", "0"], "above 0"),
            (&["qemu", "--timeout", "1.5"], "not `1.5`"),
            (&["qemu", "--cpu"], "needs a QEMU CPU model"),
            (&["qemu", "--cpu", "--icount"], "not `--icount`"),
            (&["qemu", "--icount=yes"], "does not take `--icount=yes`"),
            (&["qemu", "--gdb"], "does not take `--gdb`"),
            (&["qemu", "a.toml", "b.toml"], "at most one SCENARIO"),
            (&["qemu", "--append"], "needs the hypervisor's boot arguments"),
        ] {
            let e = err(args);
            assert!(e.contains(needle), "{args:?}: {e}");
        }
    }

    #[test]
    fn help_mentions_every_command_and_bench() {
        let h = help();
        for word in ["demo", "test", "sim", "bench", "qemu", "linux", "--smp", "--icount", "help", "--quick"] {
            assert!(h.contains(word), "help lacks {word}");
        }
        for b in BENCHES {
            assert!(h.contains(b.name) && h.contains(b.package));
        }
    }
}
