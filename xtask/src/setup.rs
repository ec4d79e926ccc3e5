//! What xtask installs by itself: the bare-metal Rust target and QEMU.

use crate::exec::{on_path, Cmd, Ctx};
use crate::Error;

/// The target of the EL2 hypervisor and the guests: no FP/SIMD at EL2.
pub const EL2_TARGET: &str = "aarch64-unknown-none-softfloat";

/// The Debian package that provides `qemu-system-aarch64`.
pub const QEMU_PACKAGE: &str = "qemu-system-arm";

/// Makes sure rustup has the EL2 target for the pinned toolchain; adds it when missing.
pub fn ensure_target(ctx: &Ctx) -> Result<(), Error> {
    println!("xtask: checking that the {EL2_TARGET} target is installed");
    let installed = Cmd::new("rustup", ["target", "list", "--installed"]).output(ctx)?.ok_or_else(|| {
        Error::new(format!(
            "rustup is not on PATH; xtask needs it to add the {EL2_TARGET} target. \
                 Install rustup (https://rustup.rs), then rerun; the toolchain in \
                 rust-toolchain.toml is installed on first use"
        ))
    })?;
    if installed.lines().any(|l| l.trim() == EL2_TARGET) {
        println!("xtask: {EL2_TARGET} is installed");
        return Ok(());
    }
    println!("xtask: {EL2_TARGET} is missing; adding it");
    Cmd::new("rustup", ["target", "add", EL2_TARGET]).run(ctx)
}

/// Makes sure `qemu-system-aarch64` is on PATH; as root, installs it with apt-get.
pub fn ensure_qemu(ctx: &Ctx) -> Result<(), Error> {
    if let Some(version) = qemu_version(ctx)? {
        println!("xtask: found {version}");
        return Ok(());
    }
    let root = Cmd::new("id", ["-u"]).output(ctx).ok().flatten().is_some_and(|uid| uid.trim() == "0");
    if !root {
        return Err(Error::new(format!(
            "qemu-system-aarch64 is not on PATH; install it with:\n    \
             sudo apt-get install -y {QEMU_PACKAGE}"
        )));
    }
    if !on_path("apt-get") {
        return Err(Error::new(format!(
            "qemu-system-aarch64 is not on PATH and apt-get is missing; install QEMU \
             (the package providing qemu-system-aarch64, {QEMU_PACKAGE} on Debian/Ubuntu) by hand"
        )));
    }
    println!("xtask: qemu-system-aarch64 is missing; installing {QEMU_PACKAGE} with apt-get");
    Cmd::new("apt-get", ["update"]).run(ctx)?;
    Cmd::new("apt-get", ["install", "-y", QEMU_PACKAGE]).env("DEBIAN_FRONTEND", "noninteractive").run(ctx)?;
    match qemu_version(ctx)? {
        Some(version) => {
            println!("xtask: installed {version}");
            Ok(())
        }
        None => Err(Error::new(format!("installed {QEMU_PACKAGE} but qemu-system-aarch64 is still not on PATH"))),
    }
}

/// The nightly toolchain and `cargo-fuzz` for the checkpoint reader's fuzz target
/// (`migrate/fuzz`): installed with rustup and `cargo install` when missing.
pub fn ensure_fuzz(ctx: &Ctx) -> Result<(), Error> {
    // Through rustup: the `cargo` that runs xtask is a toolchain's own binary, which does not
    // understand `+nightly`.
    let toolchains = Cmd::new("rustup", ["toolchain", "list"]).output(ctx)?.unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        println!("xtask: no nightly toolchain (cargo-fuzz needs it); installing it with rustup");
        Cmd::new("rustup", ["toolchain", "install", "nightly", "--profile", "minimal"]).run(ctx)?;
    }
    if Cmd::new("rustup", ["run", "nightly", "cargo", "fuzz", "--version"]).output(ctx).ok().flatten().is_none() {
        println!("xtask: cargo-fuzz is missing; installing it with cargo install");
        Cmd::new("cargo", ["install", "cargo-fuzz", "--locked"]).run(ctx)?;
    }
    Ok(())
}

/// The first line of `qemu-system-aarch64 --version`, or `None` when it is not installed.
fn qemu_version(ctx: &Ctx) -> Result<Option<String>, Error> {
    Ok(Cmd::new("qemu-system-aarch64", ["--version"])
        .output(ctx)?
        .map(|out| out.lines().next().unwrap_or("qemu-system-aarch64").trim().to_string()))
}
