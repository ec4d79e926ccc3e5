//! `cargo xtask qemu`: build the EL2 hypervisor and boot it on QEMU's virt board.

use std::path::Path;
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
    let mut config = hw_tests::QemuConfig::new(smp, cpu);
    config.icount = icount;
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
            guests_build_cmd().run(ctx)?;
            Some(write_manifest(ctx, scenario)?.to_string_lossy().into_owned())
        }
        None => None,
    };
    build_cmd().run(ctx)?;
    ensure_qemu(ctx)?;
    let cmd = qemu_cmd(&image_path(), manifest.as_deref(), smp, &args.cpu, args.icount, args.append.as_deref());
    let timeout = Duration::from_secs(args.timeout_secs);
    println!("xtask: running (timeout {}s) {}", args.timeout_secs, cmd.display());
    let start = Instant::now();
    let status = run_with_timeout(ctx, &cmd, timeout)?;
    let took = start.elapsed().as_secs_f64();
    match status {
        None => Err(Error::new(format!(
            "QEMU did not finish within {}s; killed it (the hypervisor hung, or raise --timeout)",
            args.timeout_secs
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

/// Runs `cmd` with stdin closed (so QEMU leaves the terminal alone) and its output streamed;
/// kills it after `timeout`. `Ok(None)`: it was killed.
fn run_with_timeout(ctx: &Ctx, cmd: &Cmd, timeout: Duration) -> Result<Option<ExitStatus>, Error> {
    let mut child = Command::new(&cmd.program)
        .args(&cmd.args)
        .current_dir(&ctx.root)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| Error::new(format!("could not start `{}`: {e}", cmd.program)))?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(Some(status)),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(None);
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(Error::new(format!("waiting for `{}` failed: {e}", cmd.program))),
        }
    }
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
             -nographic -nic none -no-reboot -semihosting-config enable=on,target=native \
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
