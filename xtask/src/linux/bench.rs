//! `cargo xtask bench linux`: the Linux guest's boot to its init (`test=boot`) on QEMU without
//! the hypervisor (the baseline) and as a guest of the hypervisor, the same kernel, initramfs
//! and command line (`scenarios/linux.toml`'s guest with [`CMDLINE`]).
//!
//! Figures of each: wall time from starting QEMU to init's `LINUX-INIT: started` line (and to
//! QEMU's exit), over [`RUNS`] runs on `-smp 2` (2 vCPUs): it depends on the host and its load;
//! under the hypervisor it includes the hypervisor's boot and building the VM. And, in runs
//! under `-icount shift=4,sleep=off`, the guest's own clock when the kernel starts init (its
//! log's timestamp on `Run /init as init process`): with icount, virtual time advances 16 ns per
//! instruction executed, by any CPU at any EL, so this clock measures the work done, not the
//! host's speed, and the hypervisor's instructions show up in it. It is an upper bound on
//! instructions: with `sleep=off` the clock also jumps over the time every CPU idles to its next
//! timer. The ratio of the two clocks is the overhead; on `-smp 1` with one vCPU the hypervisor
//! also counts its own and the guest's instructions exactly (`hv.count-instructions`: the PMU's
//! instruction event under icount, which counts every CPU's, so exact on one core only).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hw_tests::{bare_linux_args, LinuxAssets, QemuConfig};
use vcpu_runtime::scenario::Payload;

use crate::exec::{describe, Ctx};
use crate::Error;

/// Timed runs.
pub const RUNS: usize = 3;
/// The command line of every run: the boot test, which powers off as soon as init is up.
pub const CMDLINE: &str = "console=ttyAMA0 test=boot";
/// QEMU is killed after this long.
const TIMEOUT: Duration = Duration::from_secs(120);
/// Nanoseconds of virtual time per instruction under `-icount shift=4`.
const ICOUNT_NS_PER_INSTRUCTION: f64 = 16.0;
/// The kernel's log line when it starts init.
const RUN_INIT: &str = "Run /init as init process";
/// init's first line.
const INIT_MARKER: &str = "LINUX-INIT: started";

/// One boot, timed.
#[derive(Debug)]
struct Boot {
    /// Wall time from starting QEMU to init's marker.
    to_marker: Option<Duration>,
    /// Wall time until QEMU ended.
    to_exit: Duration,
    console: String,
}

/// Runs QEMU with `args` (a bare boot, or the hypervisor with a Linux guest) and times init's
/// marker as its line arrives; the boot test must pass and QEMU end with status 0.
fn timed_run(ctx: &Ctx, args: Vec<String>) -> Result<Boot, Error> {
    println!("xtask: bench linux: running qemu-system-aarch64 {}", args.join(" "));
    let start = Instant::now();
    let mut child = Command::new("qemu-system-aarch64")
        .args(&args)
        .current_dir(&ctx.root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| Error::new(format!("could not start qemu-system-aarch64: {e}")))?;
    let stdout = child.stdout.take().ok_or_else(|| Error::new("QEMU's stdout is not piped"))?;
    // Lines with their arrival time, from a reader thread, so the wait below can time out.
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    let mut console = String::new();
    let mut to_marker = None;
    loop {
        match lines.recv_timeout(Duration::from_millis(50)) {
            Ok((at, line)) => {
                if to_marker.is_none() && line.contains(INIT_MARKER) {
                    to_marker = Some(at - start);
                }
                console.push_str(line.trim_end_matches('\r'));
                console.push('\n');
            }
            // The reader ended: QEMU closed its output.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) if start.elapsed() > TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::new(format!("QEMU did not end within {TIMEOUT:?}; its console:\n{console}")));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
    let status = child.wait().map_err(|e| Error::new(format!("waiting for QEMU failed: {e}")))?;
    let to_exit = start.elapsed();
    if !status.success() || !console.contains("LINUX-TEST: PASS boot") {
        return Err(Error::new(format!("the boot test did not pass ({}); its console:\n{console}", describe(status))));
    }
    Ok(Boot { to_marker, to_exit, console })
}

/// The kernel log's timestamp, in seconds, of the first line containing `text`:
/// `[    2.314055] Run /init as init process` gives 2.314055.
pub fn kernel_time_of(console: &str, text: &str) -> Option<f64> {
    let line = console.lines().find(|l| l.contains(text))?;
    let stamp = line.trim_start().strip_prefix('[')?.split(']').next()?;
    stamp.trim().parse().ok()
}

/// The hypervisor's boot arguments in these runs: the trace without the per-switch events.
const HV_APPEND: &str = "hv.trace=events";

/// The guest's console lines (`[linux] ...`) without their prefix, as bare QEMU prints them.
pub fn guest_console(console: &str) -> String {
    console.lines().filter_map(|l| l.strip_prefix("[linux] ")).map(|l| format!("{l}\n")).collect()
}

/// `instructions total el2=E guest=G` of a run with `hv.count-instructions`.
pub fn instruction_counts(console: &str) -> Option<(u64, u64)> {
    let line = console.lines().find_map(|l| l.strip_prefix("instructions total "))?;
    let field = |key: &str| line.split_whitespace().find_map(|w| w.strip_prefix(key))?.parse().ok();
    Some((field("el2=")?, field("guest=")?))
}

/// The manifest of `scenarios/linux.toml`'s guest with `vcpus` vCPUs and the bench's command
/// line, written as `target/el2/manifests/bench-linux-N.manifest`.
fn hypervisor_manifest(ctx: &Ctx, vcpus: u16) -> Result<std::path::PathBuf, Error> {
    let file = ctx.root.join("scenarios/linux.toml");
    let mut scenario = vcpu_runtime::scenario::load(&file).map_err(|e| Error::new(e.to_string()))?;
    scenario.name = format!("bench-linux-{vcpus}");
    scenario.board.cores = vcpus;
    for guest in &mut scenario.guests {
        guest.vcpus = vcpus;
        if let Payload::Linux { cmdline, .. } = &mut guest.payload {
            *cmdline = CMDLINE.into();
        }
    }
    Ok(ctx.root.join(crate::manifest::write_manifest(ctx, &scenario)?))
}

/// One icount run of the guest; its kernel clock at `Run /init`, and the console.
fn icount_clock(ctx: &Ctx, args: Vec<String>, hypervisor: bool) -> Result<(f64, Boot), Error> {
    let boot = timed_run(ctx, args)?;
    let guest = if hypervisor { guest_console(&boot.console) } else { boot.console.clone() };
    let clock = kernel_time_of(&guest, RUN_INIT)
        .ok_or_else(|| Error::new(format!("no `{RUN_INIT}` line:\n{}", boot.console)))?;
    Ok((clock, boot))
}

/// Median, min and max of the markers of `RUNS` timed boots with `args`.
fn wall_times(ctx: &Ctx, what: &str, args: &[String]) -> Result<(Duration, Duration, Duration), Error> {
    let mut boots = Vec::new();
    for run in 1..=RUNS {
        let boot = timed_run(ctx, args.to_vec())?;
        let marker = boot.to_marker.ok_or_else(|| Error::new(format!("no `{INIT_MARKER}` line:\n{}", boot.console)))?;
        println!(
            "xtask: bench linux: {what} run {run}/{RUNS}: init after {:.2} s, QEMU ended after {:.2} s",
            marker.as_secs_f64(),
            boot.to_exit.as_secs_f64()
        );
        boots.push(marker);
    }
    boots.sort();
    Ok((boots[boots.len() / 2], boots[0], boots[boots.len() - 1]))
}

/// `cargo xtask bench linux`.
pub fn run(ctx: &Ctx) -> Result<(), Error> {
    crate::setup::ensure_qemu(ctx)?;
    let assets = super::ensure_assets(ctx)?;
    let assets = LinuxAssets { image: ctx.root.join(&assets.image), initramfs: ctx.root.join(&assets.initramfs) };
    crate::qemu::build_cmd().run(ctx)?;
    let image = ctx.root.join(crate::qemu::image_path());
    let manifest2 = hypervisor_manifest(ctx, 2)?;
    let manifest1 = hypervisor_manifest(ctx, 1)?;
    let bare = |smp: u32, icount: bool| {
        bare_linux_args(&QemuConfig { icount, ..QemuConfig::new(smp, "cortex-a57").append(CMDLINE) }, &assets)
    };
    let hyp = |smp: u32, icount: bool, manifest: &std::path::Path, append: &str| {
        let config = QemuConfig { icount, ..QemuConfig::new(smp, "cortex-a57").manifest_file(manifest).append(append) };
        config.qemu_args(&image)
    };

    let bare_wall = wall_times(ctx, "bare", &bare(2, false))?;
    let hyp_wall = wall_times(ctx, "hypervisor", &hyp(2, false, &manifest2, HV_APPEND))?;
    let (bare2, bare_boot) = icount_clock(ctx, bare(2, true), false)?;
    let (hyp2, hyp_boot) = icount_clock(ctx, hyp(2, true, &manifest2, HV_APPEND), true)?;
    let (bare1, _) = icount_clock(ctx, bare(1, true), false)?;
    let counted = format!("{HV_APPEND} hv.count-instructions");
    let (hyp1, counted_boot) = icount_clock(ctx, hyp(1, true, &manifest1, &counted), true)?;
    let (el2, guest) = instruction_counts(&counted_boot.console)
        .ok_or_else(|| Error::new(format!("no `instructions total` line:\n{}", counted_boot.console)))?;

    let secs = |d: Duration| d.as_secs_f64();
    println!("\nxtask: bench linux: the Linux guest ({CMDLINE}) on bare QEMU and on the hypervisor (-cpu cortex-a57)");
    println!("  wall time from QEMU's start to init's marker, -smp 2, 2 vCPUs, median (min-max) of {RUNS}:");
    println!("    bare QEMU       {:.2} s ({:.2}-{:.2})", secs(bare_wall.0), secs(bare_wall.1), secs(bare_wall.2));
    println!(
        "    hypervisor      {:.2} s ({:.2}-{:.2}), {:.2}x (the hypervisor's boot and the VM's set-up included)",
        secs(hyp_wall.0),
        secs(hyp_wall.1),
        secs(hyp_wall.2),
        secs(hyp_wall.0) / secs(bare_wall.0)
    );
    println!("  -icount shift=4,sleep=off: the kernel's clock at `{RUN_INIT}` (16 ns per instruction, idle skipped):");
    let m = |clock: f64| clock * 1e9 / ICOUNT_NS_PER_INSTRUCTION / 1e6;
    println!(
        "    -smp 2, 2 vCPUs: bare {bare2:.3} s ({:.0} M), hypervisor {hyp2:.3} s ({:.0} M): ratio {:.3}",
        m(bare2),
        m(hyp2),
        hyp2 / bare2
    );
    println!(
        "    -smp 1, 1 vCPU:  bare {bare1:.3} s ({:.0} M), hypervisor {hyp1:.3} s ({:.0} M): ratio {:.3}",
        m(bare1),
        m(hyp1),
        hyp1 / bare1
    );
    println!(
        "    -smp 1, whole run counted by the hypervisor: {:.0} M guest instructions, {:.0} M at EL2 ({:.2} % of the guest's)",
        guest as f64 / 1e6,
        el2 as f64 / 1e6,
        el2 as f64 * 100.0 / guest.max(1) as f64
    );
    println!(
        "  (wall under icount: bare {:.2} s, hypervisor {:.2} s, -smp 2)",
        secs(bare_boot.to_exit),
        secs(hyp_boot.to_exit)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_read_from_the_console() {
        let console = "[    0.000000] Booting Linux\n[    2.314055] Run /init as init process\n\
                       LINUX-INIT: started test=boot kernel=6.1.0 cpus=2 uptime=2.24\n";
        assert_eq!(kernel_time_of(console, RUN_INIT), Some(2.314055));
        assert_eq!(kernel_time_of(console, "nothing"), None);
        // Under the hypervisor the guest's lines carry its name.
        let hyp = "core 0 online\n[linux] [    2.5] Run /init as init process\n\
                   instructions core=0 el2=5 guest=7\ninstructions total el2=12 guest=34\n";
        assert_eq!(kernel_time_of(&guest_console(hyp), RUN_INIT), Some(2.5));
        assert_eq!(instruction_counts(hyp), Some((12, 34)));
        assert_eq!(instruction_counts("instructions total el2=1\n"), None);
    }
}
