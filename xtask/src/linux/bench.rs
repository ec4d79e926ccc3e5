//! `cargo xtask bench linux`, the bare-QEMU half: how long the Linux guest takes to reach its
//! init on QEMU without the hypervisor, the baseline a Linux guest on the hypervisor will be
//! compared with.
//!
//! Two figures. Wall time from starting QEMU to init's `LINUX-INIT: started` line (and to
//! QEMU's exit), over [`RUNS`] runs: it depends on the host and its load. And, in one run under
//! `-icount shift=4,sleep=off`, the guest's own clock when the kernel starts init (its log's
//! timestamp on `Run /init as init process`): with icount, virtual time advances 16 ns per
//! instruction executed, so this clock measures the work done, not the host's speed. It is an
//! upper bound on instructions: with `sleep=off` the clock also jumps over the time every CPU
//! idles to its next timer.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hw_tests::{bare_linux_args, LinuxAssets, QemuConfig};

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

/// Boots the assets with `config` and times the init marker as its line arrives.
fn timed_boot(ctx: &Ctx, config: &QemuConfig, assets: &LinuxAssets) -> Result<Boot, Error> {
    let args = bare_linux_args(config, assets);
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

/// The `uptime=` init printed on its marker line, in seconds.
pub fn marker_uptime(console: &str) -> Option<f64> {
    let line = console.lines().find(|l| l.contains(INIT_MARKER))?;
    line.split_whitespace().find_map(|w| w.strip_prefix("uptime="))?.parse().ok()
}

/// `cargo xtask bench linux`.
pub fn run(ctx: &Ctx) -> Result<(), Error> {
    crate::setup::ensure_qemu(ctx)?;
    let assets = super::ensure_assets(ctx)?;
    let assets = LinuxAssets { image: ctx.root.join(&assets.image), initramfs: ctx.root.join(&assets.initramfs) };
    let config = QemuConfig::new(2, "cortex-a57").append(CMDLINE);
    let mut boots = Vec::new();
    for run in 1..=RUNS {
        let boot = timed_boot(ctx, &config, &assets)?;
        let marker = boot.to_marker.ok_or_else(|| Error::new(format!("no `{INIT_MARKER}` line:\n{}", boot.console)))?;
        println!(
            "xtask: bench linux: run {run}/{RUNS}: init after {:.2} s, QEMU ended after {:.2} s",
            marker.as_secs_f64(),
            boot.to_exit.as_secs_f64()
        );
        boots.push(marker);
    }
    boots.sort();
    let median = boots[boots.len() / 2];

    let counted = QemuConfig { icount: true, ..config.clone() };
    let boot = timed_boot(ctx, &counted, &assets)?;
    let kernel_clock = kernel_time_of(&boot.console, RUN_INIT)
        .ok_or_else(|| Error::new(format!("no `{RUN_INIT}` line:\n{}", boot.console)))?;
    let uptime = marker_uptime(&boot.console).unwrap_or(f64::NAN);

    println!("\nxtask: bench linux: the Linux guest on bare QEMU (-smp 2 -cpu cortex-a57 -m 256M, {CMDLINE})");
    println!(
        "  wall time to init's marker    median {:.2} s (min {:.2} s, max {:.2} s) over {RUNS} runs",
        median.as_secs_f64(),
        boots[0].as_secs_f64(),
        boots[boots.len() - 1].as_secs_f64()
    );
    println!(
        "  -icount shift=4,sleep=off     kernel clock at `{RUN_INIT}` {kernel_clock:.3} s, init's uptime {uptime:.2} s:"
    );
    println!(
        "                                at most {:.0} M instructions (16 ns each; idle time skipped counts too)",
        kernel_clock * 1e9 / ICOUNT_NS_PER_INSTRUCTION / 1e6
    );
    println!("  (wall {:.2} s under icount)", boot.to_exit.as_secs_f64());
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
        assert_eq!(marker_uptime(console), Some(2.24));
        assert_eq!(marker_uptime("LINUX-INIT: started test=boot\n"), None);
    }
}
