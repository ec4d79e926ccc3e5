//! Linux guest assets, `cargo xtask linux` (docs/linux-guests.md): a real arm64 kernel and a
//! busybox initramfs whose init runs a test the kernel command line picks.
//!
//! The kernel and busybox come from Debian's arm64 packages, fetched with a private apt state
//! (linux/apt.rs) into `target/linux/`: the cloud kernel flavour when its configuration has what
//! a QEMU `virt` guest needs built in, else the generic one. Each result is kept: a second run
//! finds `Image`, `busybox` and `sources.txt` and does no network work; if only the files are
//! gone, they are unpacked again from the packages kept in `target/linux/debs/`. The initramfs
//! (linux/initramfs.rs) is rebuilt from the kept busybox on every run, which costs nothing and
//! keeps it in step with init.sh; the file is rewritten only when its bytes change.

mod apt;
pub mod bench;
pub mod initramfs;

/// The arm64 `Image` header and a Linux guest's manifest image, shared with hw-tests.
pub use hw_tests::linux_image as image;

use std::path::{Component, Path, PathBuf};

use vcpu_runtime::scenario::{Payload, Scenario};

use crate::exec::{on_path, Cmd, Ctx};
use crate::Error;
use apt::{dependency_with_prefix, Candidate, PrivateApt};

/// Where the assets go, relative to the workspace root (not `CARGO_TARGET_DIR`: scenarios name
/// the files by a path relative to themselves, `../target/linux/Image`).
pub const LINUX_DIR: &str = "target/linux";
/// The raw kernel `Image`.
pub const IMAGE_FILE: &str = "Image";
/// The uncompressed newc initramfs.
pub const INITRAMFS_FILE: &str = "initramfs.cpio";
/// The kernel's configuration, from its package.
const CONFIG_FILE: &str = "config";
/// The static arm64 busybox, from its package.
const BUSYBOX_FILE: &str = "busybox";
/// Which packages the files came from (`key = value` lines).
const SOURCES_FILE: &str = "sources.txt";

/// The kernel meta-packages tried in order: each depends on the concrete package of the newest
/// kernel of its flavour. The cloud flavour is the smaller (fewer drivers, 21 MB against 60 MB
/// as packages of 6.1.0-56).
pub const KERNEL_FLAVOURS: &[&str] = &["linux-image-cloud-arm64", "linux-image-arm64"];

/// The package of the static arm64 busybox.
pub const BUSYBOX_PACKAGE: &str = "busybox-static";

/// A kernel configuration option and why the guest needs it.
pub type KernelNeed = (&'static str, &'static str);

/// What the kernel must have built in (`=y`: the initramfs has no modules) to boot as a QEMU
/// `virt` guest and run the tests, and why.
pub const KERNEL_NEEDS: &[KernelNeed] = &[
    ("CONFIG_SERIAL_AMBA_PL011", "the PL011 UART driver (console=ttyAMA0)"),
    ("CONFIG_SERIAL_AMBA_PL011_CONSOLE", "a kernel console on the PL011"),
    ("CONFIG_ARM_GIC_V3", "the GICv3 interrupt controller"),
    ("CONFIG_ARM_ARCH_TIMER", "the generic timer"),
    ("CONFIG_ARM_PSCI_FW", "PSCI: starting secondary CPUs, CPU hotplug, power-off"),
    ("CONFIG_SMP", "more than one CPU"),
    ("CONFIG_HOTPLUG_CPU", "CPU hotplug (test=hotplug)"),
    ("CONFIG_BLK_DEV_INITRD", "booting from an initramfs"),
    ("CONFIG_DEVTMPFS", "/dev, mounted by init"),
    ("CONFIG_PROC_FS", "/proc, which init reads"),
    ("CONFIG_SYSFS", "/sys, where CPUs go on- and offline"),
    ("CONFIG_TMPFS", "/tmp, where the busy test's jobs write"),
    ("CONFIG_BINFMT_ELF", "running busybox"),
    ("CONFIG_BINFMT_SCRIPT", "running /init, a script"),
];

/// The assets, with paths relative to the workspace root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assets {
    pub image: PathBuf,
    pub initramfs: PathBuf,
    /// `sources.txt`: the packages and versions they came from.
    pub sources: Vec<(String, String)>,
}

/// `cargo xtask linux`: makes sure the assets exist and prints where they are.
pub fn linux(ctx: &Ctx) -> Result<(), Error> {
    let assets = ensure_assets(ctx)?;
    let size = |p: &Path| std::fs::metadata(ctx.root.join(p)).map(|m| m.len()).unwrap_or(0);
    println!("xtask: linux: kernel    {} ({} bytes)", assets.image.display(), size(&assets.image));
    println!("xtask: linux: initramfs {} ({} bytes)", assets.initramfs.display(), size(&assets.initramfs));
    for (key, value) in &assets.sources {
        println!("xtask: linux:   {key} = {value}");
    }
    println!(
        "xtask: linux: boot them on bare QEMU with:\n    qemu-system-aarch64 -M virt,gic-version=3 -cpu cortex-a57 -smp 2 \
         -m 256M -nographic -nic none -no-reboot -kernel {} -initrd {} -append 'console=ttyAMA0 test=boot'",
        assets.image.display(),
        assets.initramfs.display()
    );
    Ok(())
}

/// Fetches what is missing and builds the initramfs; see the module documentation.
pub fn ensure_assets(ctx: &Ctx) -> Result<Assets, Error> {
    let dir = ctx.root.join(LINUX_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| Error::new(format!("cannot create {}: {e}", dir.display())))?;
    let mut sources = read_sources(&dir.join(SOURCES_FILE));
    let kernel_cached = dir.join(IMAGE_FILE).is_file() && sources.iter().any(|(k, _)| k == "kernel");
    let busybox_cached = dir.join(BUSYBOX_FILE).is_file() && sources.iter().any(|(k, _)| k == "busybox");
    if kernel_cached && busybox_cached {
        println!("xtask: linux: using the kernel and busybox kept in {LINUX_DIR} (delete it to fetch them again)");
    } else {
        for tool in ["apt-get", "apt-cache", "dpkg-deb"] {
            if !on_path(tool) {
                return Err(Error::new(format!(
                    "{tool} is not on PATH: `cargo xtask linux` fetches the kernel and busybox from Debian's \
                     arm64 packages and needs apt and dpkg (a Debian or Ubuntu host). Elsewhere, give a \
                     Linux guest your own arm64 Image and initramfs (docs/linux-guests.md)"
                )));
            }
        }
        let mut apt = PrivateApt::create(&dir.join("apt"))?;
        let debs = dir.join("debs");
        if !kernel_cached {
            if let Some(deb) = kept_deb(&sources, "kernel", &debs) {
                // The package chosen before is still there: no need to ask the archive again.
                println!("xtask: linux: unpacking the kernel again from {}", deb.display());
                if let Unpacked::Lacks(missing) = unpack_kernel(ctx, &deb, &dir)? {
                    let names: Vec<&str> = missing.iter().map(|(option, _)| *option).collect();
                    return Err(Error::new(format!(
                        "{} lacks {}; delete {LINUX_DIR} to choose a kernel again",
                        deb.display(),
                        names.join(", ")
                    )));
                }
            } else {
                sources.retain(|(k, _)| !k.starts_with("kernel"));
                sources.extend(fetch_kernel(ctx, &mut apt, &debs, &dir)?);
                write_sources(&dir.join(SOURCES_FILE), &sources)?;
            }
        }
        if !busybox_cached {
            if let Some(deb) = kept_deb(&sources, "busybox", &debs) {
                println!("xtask: linux: unpacking busybox again from {}", deb.display());
                unpack_busybox(ctx, &deb, &dir)?;
            } else {
                sources.retain(|(k, _)| !k.starts_with("busybox"));
                sources.extend(fetch_busybox(ctx, &mut apt, &debs, &dir)?);
                write_sources(&dir.join(SOURCES_FILE), &sources)?;
            }
        }
    }
    // The scratch directory of `dpkg-deb -x`, empty by now.
    let _ = std::fs::remove_dir(dir.join("extract"));
    let busybox = read(&dir.join(BUSYBOX_FILE))?;
    let cpio = initramfs::build(&busybox);
    let initramfs = dir.join(INITRAMFS_FILE);
    if std::fs::read(&initramfs).ok().as_deref() != Some(cpio.as_slice()) {
        write(&initramfs, &cpio)?;
        println!("xtask: linux: wrote {LINUX_DIR}/{INITRAMFS_FILE} ({} bytes): busybox, /init", cpio.len());
    }
    Ok(Assets {
        image: Path::new(LINUX_DIR).join(IMAGE_FILE),
        initramfs: Path::new(LINUX_DIR).join(INITRAMFS_FILE),
        sources,
    })
}

/// Downloads the first kernel flavour whose configuration has [`KERNEL_NEEDS`], writes its raw
/// `Image` and configuration into `out`, and returns the `sources.txt` lines saying which.
fn fetch_kernel(ctx: &Ctx, apt: &mut PrivateApt, debs: &Path, out: &Path) -> Result<Vec<(String, String)>, Error> {
    let mut refused = Vec::new();
    for flavour in KERNEL_FLAVOURS {
        let meta = apt.candidate(ctx, flavour)?;
        let Some(concrete) = dependency_with_prefix(&meta.depends, "linux-image-") else {
            return Err(Error::new(format!(
                "{flavour} {}: no linux-image-* dependency in `{}`",
                meta.version, meta.depends
            )));
        };
        let kernel = apt.candidate(ctx, &concrete)?;
        println!("xtask: linux: {flavour} {} is {} {}", meta.version, kernel.package, kernel.version);
        let deb = apt.download(ctx, &kernel, debs)?;
        match unpack_kernel(ctx, &deb, out)? {
            Unpacked::Kernel { release } => {
                let why = if refused.is_empty() {
                    format!("{flavour}: the first flavour tried; every option the guest needs is built in")
                } else {
                    format!("{flavour}, since {}", refused.join("; "))
                };
                println!("xtask: linux: chose {}: {why}", kernel.package);
                return Ok(vec![
                    ("kernel".into(), format!("{} {}", kernel.package, kernel.version)),
                    ("kernel_release".into(), release),
                    ("kernel_flavour".into(), why),
                ]);
            }
            Unpacked::Lacks(missing) => {
                let list: Vec<String> = missing.iter().map(|(o, why)| format!("{o} ({why})")).collect();
                println!(
                    "xtask: linux: {} lacks, built in: {}; trying the next flavour",
                    kernel.package,
                    list.join(", ")
                );
                refused.push(format!("{} lacks {}", kernel.package, list.join(", ")));
            }
        }
    }
    Err(Error::new(format!("no kernel flavour has what a QEMU virt guest needs: {}", refused.join("; "))))
}

/// What [`unpack_kernel`] found in a kernel package.
enum Unpacked {
    /// The kernel of this release is written out.
    Kernel { release: String },
    /// Its configuration lacks these.
    Lacks(Vec<KernelNeed>),
}

/// Unpacks the kernel package `deb`; when its configuration has every one of [`KERNEL_NEEDS`],
/// writes the raw `Image` (unpacked if the package's `vmlinuz` is compressed) and the
/// configuration into `out` and returns the kernel release, else returns what it lacks.
fn unpack_kernel(ctx: &Ctx, deb: &Path, out: &Path) -> Result<Unpacked, Error> {
    let extracted = extract(ctx, deb, &out.join("extract"))?;
    let result = (|| {
        let vmlinuz = find_in(&extracted.join("boot"), "vmlinuz-")?;
        let config_file = find_in(&extracted.join("boot"), "config-")?;
        let config = std::fs::read_to_string(&config_file)
            .map_err(|e| Error::new(format!("cannot read {}: {e}", config_file.display())))?;
        let missing = missing_options(&config);
        if !missing.is_empty() {
            return Ok(Unpacked::Lacks(missing));
        }
        let packed = read(&vmlinuz)?;
        let (image, header) = image::unpack(&packed).map_err(|e| Error::new(format!("{}: {e}", vmlinuz.display())))?;
        write(&out.join(IMAGE_FILE), &image)?;
        write(&out.join(CONFIG_FILE), config.as_bytes())?;
        let name = vmlinuz.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let release = name.trim_start_matches("vmlinuz-").to_string();
        println!(
            "xtask: linux: kernel {release}: {name} is {}; Image {} bytes, text_offset {:#x}, image_size {:#x}, {} pages",
            if packed.len() == image.len() { "a raw Image already" } else { "gzip-compressed: unpacked" },
            image.len(),
            header.text_offset,
            header.image_size,
            header.page_size().unwrap_or("unknown")
        );
        Ok(Unpacked::Kernel { release })
    })();
    remove(&extracted);
    result
}

/// The package file kept in `debs` of the package `sources` names under `key`
/// (`NAME VERSION`), when it is there.
fn kept_deb(sources: &[(String, String)], key: &str, debs: &Path) -> Option<PathBuf> {
    let (_, value) = sources.iter().find(|(k, _)| k == key)?;
    let (package, version) = value.split_once(' ')?;
    let candidate = Candidate { package: package.into(), version: version.into(), depends: String::new() };
    let file = debs.join(candidate.deb_file_name());
    file.is_file().then_some(file)
}

/// Downloads busybox-static, checks its binary is a static arm64 executable and writes it into
/// `out`; returns the `sources.txt` line.
fn fetch_busybox(ctx: &Ctx, apt: &mut PrivateApt, debs: &Path, out: &Path) -> Result<Vec<(String, String)>, Error> {
    let package: Candidate = apt.candidate(ctx, BUSYBOX_PACKAGE)?;
    println!("xtask: linux: {BUSYBOX_PACKAGE} {}", package.version);
    let deb = apt.download(ctx, &package, debs)?;
    unpack_busybox(ctx, &deb, out)?;
    Ok(vec![("busybox".into(), format!("{} {}", package.package, package.version))])
}

/// Unpacks the busybox package `deb`, checks its binary is a static arm64 executable and writes
/// it into `out`.
fn unpack_busybox(ctx: &Ctx, deb: &Path, out: &Path) -> Result<(), Error> {
    let extracted = extract(ctx, deb, &out.join("extract"))?;
    let binary = extracted.join("bin/busybox");
    let bytes = read(&binary)?;
    check_static_arm64(&bytes).map_err(|e| Error::new(format!("{}: {e}", binary.display())))?;
    write(&out.join(BUSYBOX_FILE), &bytes)?;
    remove(&extracted);
    Ok(())
}

/// Unpacks `deb` with `dpkg-deb -x` into a fresh directory under `scratch`.
fn extract(ctx: &Ctx, deb: &Path, scratch: &Path) -> Result<PathBuf, Error> {
    let stem = deb.file_stem().unwrap_or_default().to_string_lossy().into_owned();
    let into = scratch.join(stem);
    remove(&into);
    std::fs::create_dir_all(&into).map_err(|e| Error::new(format!("cannot create {}: {e}", into.display())))?;
    Cmd::new("dpkg-deb", ["-x".to_string(), deb.display().to_string(), into.display().to_string()]).run(ctx)?;
    Ok(into)
}

/// The one file in `dir` whose name starts with `prefix`.
fn find_in(dir: &Path, prefix: &str) -> Result<PathBuf, Error> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::new(format!("cannot read {}: {e}", dir.display())))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(prefix)))
        .collect();
    match found.len() {
        1 => Ok(found.remove(0)),
        n => Err(Error::new(format!("{} has {n} files named {prefix}*, expected one", dir.display()))),
    }
}

/// The [`KERNEL_NEEDS`] options that `config` (a kernel `.config`) does not build in.
pub fn missing_options(config: &str) -> Vec<KernelNeed> {
    KERNEL_NEEDS
        .iter()
        .filter(|(option, _)| !config.lines().any(|l| l.strip_prefix(option).is_some_and(|rest| rest == "=y")))
        .copied()
        .collect()
}

/// Checks that `elf` is a statically linked aarch64 executable: no `PT_INTERP` segment, since
/// the initramfs has no dynamic loader.
pub fn check_static_arm64(elf: &[u8]) -> Result<(), String> {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| elf.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let u64_at = |o: usize| elf.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return Err("not a little-endian 64-bit ELF file".into());
    }
    if u16_at(18) != Some(183) {
        return Err("not an aarch64 program (e_machine is not EM_AARCH64)".into());
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(32), u16_at(54), u16_at(56)) else {
        return Err("truncated ELF header".into());
    };
    for i in 0..usize::from(phnum) {
        let at = phoff as usize + i * usize::from(phentsize);
        match u32_at(at) {
            Some(3) => {
                return Err(
                    "dynamically linked (it has a PT_INTERP segment); the initramfs needs a static busybox".into()
                )
            }
            Some(_) => {}
            None => return Err("truncated program headers".into()),
        }
    }
    Ok(())
}

/// Whether the path `file` (as a scenario names it, absolute or relative to the workspace root)
/// lies under `target/linux/`, so that `cargo xtask linux` makes it.
pub fn is_asset_path(root: &Path, file: &Path) -> bool {
    // Lexically: the file may not exist yet, so it cannot be canonicalized.
    let mut normal = PathBuf::new();
    for part in root.join(file).components() {
        match part {
            Component::ParentDir => {
                normal.pop();
            }
            Component::CurDir => {}
            other => normal.push(other),
        }
    }
    normal.starts_with(root.join(LINUX_DIR))
}

/// Before a scenario's manifest is written: when a Linux guest's kernel or initramfs is missing
/// and lies under `target/linux/`, makes the assets ([`ensure_assets`]). Other missing files
/// are left to the manifest writer, which names them.
pub fn ensure_for_scenario(ctx: &Ctx, scenario: &Scenario) -> Result<(), Error> {
    let wanted = scenario.guests.iter().any(|g| match &g.payload {
        Payload::Linux { kernel, initrd, .. } => std::iter::once(kernel).chain(initrd).any(|f| {
            let path = ctx.root.join(f);
            !path.is_file() && is_asset_path(&ctx.root, &path)
        }),
        _ => false,
    });
    if wanted {
        println!("xtask: linux: the scenario boots the kernel and initramfs of {LINUX_DIR}; making them");
        ensure_assets(ctx)?;
    }
    Ok(())
}

fn read_sources(file: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn write_sources(file: &Path, sources: &[(String, String)]) -> Result<(), Error> {
    let mut text = String::from("# Where cargo xtask linux took the files of this directory from.\n");
    for (k, v) in sources {
        text.push_str(&format!("{k} = {v}\n"));
    }
    write(file, text.as_bytes())
}

fn read(file: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(file).map_err(|e| Error::new(format!("cannot read {}: {e}", file.display())))
}

/// Writes through a temporary file and a rename, so an interrupted run never leaves a partial
/// file that a later run would take as the cached asset.
fn write(file: &Path, bytes: &[u8]) -> Result<(), Error> {
    let partial = file.with_extension("partial");
    std::fs::write(&partial, bytes)
        .and_then(|()| std::fs::rename(&partial, file))
        .map_err(|e| Error::new(format!("cannot write {}: {e}", file.display())))
}

fn remove(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_options_must_be_built_in() {
        let all: String = KERNEL_NEEDS.iter().map(|(o, _)| format!("{o}=y\n")).collect();
        assert!(missing_options(&all).is_empty());
        let modular = all.replace("CONFIG_SERIAL_AMBA_PL011=y", "CONFIG_SERIAL_AMBA_PL011=m");
        let missing = missing_options(&modular);
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].0, "CONFIG_SERIAL_AMBA_PL011");
        // A prefix of another option's name does not count.
        let unset = all.replace("CONFIG_SMP=y", "# CONFIG_SMP is not set\nCONFIG_SMP_ON_UP=y");
        assert_eq!(missing_options(&unset).iter().map(|m| m.0).collect::<Vec<_>>(), ["CONFIG_SMP"]);
    }

    #[test]
    fn busybox_must_be_static_arm64() {
        let mut elf = vec![0u8; 64 + 56];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[18..20].copy_from_slice(&183u16.to_le_bytes());
        elf[32..40].copy_from_slice(&64u64.to_le_bytes());
        elf[54..56].copy_from_slice(&56u16.to_le_bytes());
        elf[56..58].copy_from_slice(&1u16.to_le_bytes());
        elf[64..68].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(check_static_arm64(&elf), Ok(()));
        elf[64..68].copy_from_slice(&3u32.to_le_bytes());
        assert!(check_static_arm64(&elf).unwrap_err().contains("PT_INTERP"));
        elf[18..20].copy_from_slice(&62u16.to_le_bytes());
        assert!(check_static_arm64(&elf).unwrap_err().contains("not an aarch64"));
        assert!(check_static_arm64(b"#!/bin/sh").is_err());
    }

    #[test]
    fn asset_paths_are_found_lexically() {
        let root = Path::new("/w");
        assert!(is_asset_path(root, Path::new("/w/scenarios/../target/linux/Image")));
        assert!(is_asset_path(root, Path::new("target/linux/initramfs.cpio")));
        assert!(!is_asset_path(root, Path::new("/w/scenarios/images/Image")));
        assert!(!is_asset_path(root, Path::new("/w/target/linux/../el2/x")));
    }

    #[test]
    fn sources_round_trip() {
        let dir = std::env::temp_dir().join(format!("xtask-linux-sources-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(SOURCES_FILE);
        let sources = vec![("kernel".to_string(), "linux-image-x 1.0".to_string()), ("busybox".into(), "b 1:2".into())];
        write_sources(&file, &sources).unwrap();
        assert_eq!(read_sources(&file), sources);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
