//! `cargo xtask qemu`: build the EL2 hypervisor and boot it on QEMU's virt board.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::cli::{QemuArgs, DEFAULT_QEMU_SMP};
use crate::exec::{describe, Cmd, Ctx};
use crate::manifest::{guests_build_cmd, write_manifest};
use crate::setup::{ensure_qemu, ensure_target, EL2_TARGET};
use crate::tasks::{resolve_scenario, EL2_TARGET_DIR};
use crate::Error;

/// The EL2 image's workspace.
pub const IMAGE_CRATE: &str = "platform/qemu-virt";

/// The exit status QEMU's own `timeout`-style failure is reported with.
pub const TIMEOUT_EXIT_CODE: i32 = 124;

/// The hypervisor image, relative to the workspace root.
pub fn image_path() -> String {
    format!("{EL2_TARGET_DIR}/{EL2_TARGET}/release/hypervisor")
}

/// `cargo build --release` of the image, run inside its crate (for its .cargo/config.toml).
pub fn build_cmd() -> Cmd {
    let up = "../".repeat(Path::new(IMAGE_CRATE).components().count());
    let target_dir = format!("{up}{EL2_TARGET_DIR}");
    Cmd::cargo(["build", "--release", "--target", EL2_TARGET, "--target-dir", &target_dir]).in_dir(IMAGE_CRATE)
}

/// The QEMU command line for `image`, with the scenario `manifest` loaded beside it when there
/// is one: the same one the hw-tests run (`hw_tests::QemuConfig::qemu_args`).
pub fn qemu_cmd(image: &str, manifest: Option<&str>, smp: u32, cpu: &str, icount: bool, append: Option<&str>) -> Cmd {
    qemu_cmd_with(image, manifest, smp, cpu, icount, append, &Attached::default())
}

/// Devices attached to a run besides the board's own.
#[derive(Debug, Default, Clone, Copy)]
pub struct Attached<'a> {
    /// A raw disk image as the checkpoint disk (virtio-blk).
    pub disk: Option<&'a str>,
    /// The migration stream (a virtio console) connected to this loopback port.
    pub stream: Option<u16>,
}

/// [`qemu_cmd`] with the devices of `attached`.
pub fn qemu_cmd_with(
    image: &str,
    manifest: Option<&str>,
    smp: u32,
    cpu: &str,
    icount: bool,
    append: Option<&str>,
    attached: &Attached<'_>,
) -> Cmd {
    let mut config = hw_tests::QemuConfig::new(smp, cpu);
    config.icount = icount;
    if let Some(d) = attached.disk {
        config = config.disk(std::path::Path::new(d));
    }
    if let Some(port) = attached.stream {
        config = config.stream(port);
    }
    if let Some(m) = manifest {
        config = config.manifest_file(std::path::Path::new(m));
    }
    if let Some(a) = append {
        config = config.append(a);
    }
    Cmd::new("qemu-system-aarch64", config.qemu_args(std::path::Path::new(image)))
}

/// What the hypervisor's exit statuses mean (platform/aarch64's `exit_code`).
pub fn exit_meaning(code: i32) -> &'static str {
    match code {
        0 => "the hypervisor ended cleanly",
        1 => "the hypervisor reported a failure (see the FAIL line)",
        2 => "the hypervisor panicked",
        3 => "an unexpected exception reached EL2",
        4 => "the image was not entered at EL2 (is virtualization=on?)",
        _ => "QEMU itself failed, or the hypervisor used an unknown code",
    }
}

/// `cargo xtask qemu ...`.
pub fn qemu(ctx: &Ctx, args: &QemuArgs) -> Result<(), Error> {
    run(ctx, args)?.outcome()
}

/// One boot of the hypervisor on QEMU, ended: what it printed and how it ended.
#[derive(Debug)]
pub struct QemuRun {
    /// The exit status; `None` when it was killed at the timeout.
    pub status: Option<ExitStatus>,
    /// The console output (streamed as it came, and kept).
    pub output: String,
    /// When each line of `output` arrived, since QEMU started.
    pub line_times: Vec<Duration>,
    /// How long QEMU's threads waited for a host CPU (`hw_tests::hostwait`).
    pub host_waits: hw_tests::hostwait::HostWaits,
    /// The run's timeline files (Perfetto JSON, PNG), when it had trace events.
    pub timeline: Option<(PathBuf, PathBuf)>,
    /// Seconds from QEMU's start to its end.
    pub seconds: f64,
    pub timeout_secs: u64,
}

impl QemuRun {
    /// Ok when the hypervisor ended cleanly; otherwise an error saying what the status means
    /// (xtask leaves with QEMU's status, or 124 after a timeout).
    pub fn outcome(&self) -> Result<(), Error> {
        let took = self.seconds;
        match self.status {
            None => Err(Error::new(format!(
                "QEMU did not finish within {}s; killed it (the hypervisor hung, or raise --timeout)",
                self.timeout_secs
            ))
            .with_code(Some(TIMEOUT_EXIT_CODE))),
            Some(status) if status.success() => {
                println!("xtask: qemu: exit status 0 after {took:.1}s: {}", exit_meaning(0));
                Ok(())
            }
            Some(status) => {
                let meaning = status.code().map(exit_meaning).unwrap_or("QEMU was killed by a signal");
                Err(Error::new(format!("QEMU ended with {} after {took:.1}s: {meaning}", describe(status)))
                    .with_code(status.code()))
            }
        }
    }
}

/// Builds what `args` needs (the test guests, the scenario's manifest, making the Linux assets
/// it names when missing, the image), boots QEMU with its console streamed, and writes the
/// run's timeline.
pub fn run(ctx: &Ctx, args: &QemuArgs) -> Result<QemuRun, Error> {
    ensure_target(ctx)?;
    let mut smp = args.smp;
    let mut scenario = None;
    if let Some(given) = &args.scenario {
        let path = resolve_scenario(ctx, given)?;
        let loaded = vcpu_runtime::scenario::load(&ctx.root.join(&path)).map_err(|e| Error::new(e.to_string()))?;
        println!("xtask: qemu: scenario {path}: {} cores, {} guests", loaded.board.cores, loaded.guests.len());
        smp = smp.or(Some(u32::from(loaded.board.cores)));
        scenario = Some(loaded);
    }
    let smp = smp.unwrap_or(DEFAULT_QEMU_SMP);
    let manifest = match &scenario {
        Some(scenario) => {
            crate::linux::ensure_for_scenario(ctx, scenario)?;
            guests_build_cmd().run(ctx)?;
            Some(write_manifest(ctx, scenario)?.to_string_lossy().into_owned())
        }
        None => None,
    };
    build_cmd().run(ctx)?;
    ensure_qemu(ctx)?;
    let cmd = qemu_cmd_with(
        &image_path(),
        manifest.as_deref(),
        smp,
        &args.cpu,
        args.icount,
        args.append.as_deref(),
        &Attached { disk: args.disk.as_deref(), stream: args.stream },
    );
    let timeout = Duration::from_secs(args.timeout_secs);
    println!("xtask: running (timeout {}s) {}", args.timeout_secs, cmd.display());
    let start = Instant::now();
    let Streamed { status, output, line_times, host_waits } = run_with_timeout(ctx, &cmd, timeout, true)?;
    let seconds = start.elapsed().as_secs_f64();
    let name = scenario.as_ref().map_or("boot", |s| s.name.as_str());
    let timeline = match write_timeline(ctx, name, smp, &output) {
        Ok(Some((json, png))) => {
            println!("xtask: qemu: timeline {} (Perfetto, ui.perfetto.dev) and {}", json.display(), png.display());
            Some((json, png))
        }
        Ok(None) => None,
        Err(e) => {
            println!("xtask: qemu: no timeline: {e}");
            None
        }
    };
    Ok(QemuRun { status, output, line_times, host_waits, timeline, seconds, timeout_secs: args.timeout_secs })
}

/// What [`run_with_timeout`] kept of a run.
pub struct Streamed {
    /// `None` when it was killed at its timeout.
    pub status: Option<ExitStatus>,
    pub output: String,
    pub line_times: Vec<Duration>,
    pub host_waits: hw_tests::hostwait::HostWaits,
}

/// Runs `cmd` with stdin closed (so QEMU leaves the terminal alone) and its output kept (for
/// the timeline, with when each line came) and, with `echo`, streamed to the terminal; how
/// long its threads waited for a host CPU is sampled. Kills it after `timeout`.
pub fn run_with_timeout(ctx: &Ctx, cmd: &Cmd, timeout: Duration, echo: bool) -> Result<Streamed, Error> {
    let start = Instant::now();
    let mut child = Command::new(&cmd.program)
        .args(&cmd.args)
        .current_dir(&ctx.root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| Error::new(format!("could not start `{}`: {e}", cmd.program)))?;
    let monitor = hw_tests::hostwait::WaitMonitor::start(child.id(), start);
    let stdout = child.stdout.take();
    let copier = thread::spawn(move || {
        let (mut kept, mut times) = (String::new(), Vec::new());
        if let Some(out) = stdout {
            let mut terminal = std::io::stdout();
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                times.push(start.elapsed());
                if echo {
                    let _ = writeln!(terminal, "{line}");
                }
                kept.push_str(&line);
                kept.push('\n');
            }
        }
        (kept, times)
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(Error::new(format!("waiting for `{}` failed: {e}", cmd.program))),
        }
    };
    let host_waits = monitor.finish();
    let (output, line_times) = copier.join().unwrap_or_default();
    Ok(Streamed { status, output, line_times, host_waits })
}

/// Writes the run's timeline (docs/timeline.md) from the trace lines in its console output to
/// `target/qemu/NAME.json` and `.png`; `None` when the output has no trace events.
fn write_timeline(ctx: &Ctx, name: &str, cores: u32, output: &str) -> Result<Option<(PathBuf, PathBuf)>, String> {
    use vcpu_runtime::trace::{find_in, TraceEvent};
    let events: Vec<TraceEvent> = output
        .lines()
        .filter_map(|l| find_in(l.trim_end_matches('\r')))
        .filter_map(|t| TraceEvent::parse(t).ok())
        .collect();
    let (Some(first), Some(last)) = (events.iter().map(|e| e.at).min(), events.iter().map(|e| e.at).max()) else {
        return Ok(None);
    };
    if last <= first {
        return Ok(None);
    }
    let dir = ctx.root.join("target/qemu");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let timeline = platform_sim::timeline::Timeline::between(&events, cores as usize, first, last)
        .with_title(format!("{name} on QEMU, {cores} cores"));
    let json = dir.join(format!("{name}.json"));
    let png = dir.join(format!("{name}.png"));
    let open = |p: &PathBuf| {
        std::fs::File::create(p).map(std::io::BufWriter::new).map_err(|e| format!("{}: {e}", p.display()))
    };
    timeline.write_perfetto_json(open(&json)?).map_err(|e| format!("{}: {e}", json.display()))?;
    timeline.write_png(open(&png)?, 1600).map_err(|e| format!("{}: {e}", png.display()))?;
    let shown = |p: PathBuf| p.strip_prefix(&ctx.root).map(PathBuf::from).unwrap_or(p);
    Ok(Some((shown(json), shown(png))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line() {
        let c = qemu_cmd("target/el2/x/hypervisor", None, 4, "cortex-a57", false, None);
        assert_eq!(
            c.display(),
            "qemu-system-aarch64 -M virt,virtualization=on,gic-version=3 -cpu cortex-a57 -smp 4 -m 1G \
             -name hv,debug-threads=on -nographic -nic none -no-reboot -semihosting-config enable=on,target=native \
             -kernel target/el2/x/hypervisor"
        );
        let c = qemu_cmd("img", None, 1, "max", true, Some("hv.selftest=panic"));
        assert!(
            c.display().ends_with("-icount shift=4,sleep=off -kernel img -append hv.selftest=panic"),
            "{}",
            c.display()
        );
        let c = qemu_cmd("img", Some("m.manifest"), 2, "cortex-a57", false, None);
        assert!(
            c.display().ends_with("-kernel img -device loader,file=m.manifest,addr=0x44000000,force-raw=on"),
            "{}",
            c.display()
        );
    }

    #[test]
    fn build_runs_in_the_image_crate() {
        assert_eq!(
            build_cmd().rerun_line(),
            "cd platform/qemu-virt && cargo build --release --target aarch64-unknown-none-softfloat \
             --target-dir ../../target/el2"
        );
        assert_eq!(image_path(), "target/el2/aarch64-unknown-none-softfloat/release/hypervisor");
    }

    #[test]
    fn exit_codes_are_explained() {
        assert!(exit_meaning(0).contains("cleanly"));
        assert!(exit_meaning(2).contains("panicked"));
        assert!(exit_meaning(3).contains("exception"));
        assert!(exit_meaning(77).contains("unknown"));
    }
}
