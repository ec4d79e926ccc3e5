//! The scenario manifest of `cargo xtask qemu SCENARIO`: every test guest's payload resolved to
//! an ELF file, read with `vcpu_runtime::manifest::elf_image`; every Linux guest's kernel `Image`
//! (unpacked if gzip-compressed), initramfs and command line laid out by
//! `linux::image::guest_image` (docs/manifest-format.md, *Linux guests*); the whole scenario written with
//! `hw_tests::encode_manifest` (`vcpu_runtime::manifest::encode`, plus the demand player's
//! schedule for a guest with `image = "player"`) to `target/el2/manifests/NAME.manifest`. QEMU
//! loads it at `vcpu_runtime::manifest::QEMU_VIRT_ADDR` (`-device loader,...,force-raw=on`) and
//! the hypervisor parses it at boot (docs/platform.md, *Memory map of the hypervisor*).
//!
//! hw-tests builds manifests the same way (hw-tests/src/lib.rs): keep the two in step.

use std::path::{Path, PathBuf};

use hw_tests::encode_manifest;
use vcpu_runtime::manifest::{elf_image, GuestImage};
use vcpu_runtime::scenario::{Payload, Scenario};

use crate::exec::{Cmd, Ctx};
use crate::linux;
use crate::setup::EL2_TARGET;
use crate::tasks::EL2_TARGET_DIR;
use crate::Error;

/// The most bytes of manifest the hypervisor accepts: the region reserved for it from
/// `vcpu_runtime::manifest::QEMU_VIRT_ADDR`, above the hypervisor image (linked at `0x4020_0000`,
/// at most 62 MiB); guest RAM comes after it. The hypervisor has the same limit
/// (platform/qemu-virt/src/main.rs).
pub const MANIFEST_MAX: u64 = 128 << 20;

/// The test guests' workspace.
pub const GUESTS_CRATE: &str = "guests";

/// `cargo build --release` of the test guests, run inside `guests/` (for its .cargo/config.toml).
pub fn guests_build_cmd() -> Cmd {
    let up = "../".repeat(Path::new(GUESTS_CRATE).components().count());
    let target_dir = format!("{up}{EL2_TARGET_DIR}");
    Cmd::cargo(["build", "--release", "--target", EL2_TARGET, "--target-dir", &target_dir]).in_dir(GUESTS_CRATE)
}

/// Where the built test guests are, relative to the workspace root.
pub fn guest_bin_dir() -> PathBuf {
    Path::new(EL2_TARGET_DIR).join(EL2_TARGET).join("release")
}

/// The ELF file of a `test-image` payload. `image` is the path as the scenario loader resolved
/// it (against the scenario's directory): a file there wins; otherwise its last component names
/// a test guest binary in `bin_dir` (`image = "counter"` is `guests/counter`).
pub fn resolve_image(image: &Path, bin_dir: &Path) -> Result<PathBuf, String> {
    if image.is_file() {
        return Ok(image.to_path_buf());
    }
    let name = image.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let built = bin_dir.join(&name);
    if !name.is_empty() && built.is_file() {
        return Ok(built);
    }
    let mut known: Vec<String> = std::fs::read_dir(bin_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_file() && e.path().extension().is_none())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "hypervisor")
        .collect();
    known.sort();
    Err(format!(
        "image `{}` is neither a file nor a test guest (built test guests: {})",
        image.display(),
        if known.is_empty() { "none".to_string() } else { known.join(", ") }
    ))
}

/// Every guest's image, in scenario order. Guests without a payload are refused: they exist
/// only in the simulator.
pub fn guest_images(scenario: &Scenario, root: &Path, bin_dir: &Path) -> Result<Vec<GuestImage>, String> {
    let mut images = Vec::new();
    for (i, guest) in scenario.guests.iter().enumerate() {
        let field = format!("guests[{i}] (`{}`)", guest.name);
        let image = match &guest.payload {
            Payload::TestImage { image } => {
                let path = resolve_image(&root.join(image), bin_dir).map_err(|e| format!("{field}: {e}"))?;
                let bytes =
                    std::fs::read(&path).map_err(|e| format!("{field}: cannot read {}: {e}", path.display()))?;
                elf_image(&bytes).map_err(|e| format!("{field}: {}: {e}", path.display()))?
            }
            Payload::Linux { kernel, initrd, cmdline } => linux::image::read_guest(
                &root.join(kernel),
                initrd.as_ref().map(|f| root.join(f)).as_deref(),
                cmdline,
                guest.memory_mib,
            )
            .map_err(|e| format!("{field}: {e}"))?,
            Payload::None => {
                return Err(format!(
                    "{field}: kind = \"none\": a simulator-only guest has nothing to boot on QEMU (give it a \
                     `kind = \"test-image\"` payload)"
                ));
            }
        };
        images.push(image);
    }
    Ok(images)
}

/// Writes the manifest of `scenario` to `target/el2/manifests/NAME.manifest` (the guests must
/// be built) and returns its path relative to the workspace root.
pub fn write_manifest(ctx: &Ctx, scenario: &Scenario) -> Result<PathBuf, Error> {
    let images = guest_images(scenario, &ctx.root, &ctx.root.join(guest_bin_dir())).map_err(Error::new)?;
    let bytes = encode_manifest(scenario, images).map_err(|e| Error::new(format!("manifest: {e}")))?;
    if bytes.len() as u64 > MANIFEST_MAX {
        return Err(Error::new(format!(
            "manifest: {} bytes, more than the {} MiB the hypervisor reserves for it",
            bytes.len(),
            MANIFEST_MAX >> 20
        )));
    }
    let dir = Path::new(EL2_TARGET_DIR).join("manifests");
    std::fs::create_dir_all(ctx.root.join(&dir))
        .map_err(|e| Error::new(format!("cannot create {}: {e}", dir.display())))?;
    let path = dir.join(format!("{}.manifest", scenario.name));
    hw_tests::write_settled(&ctx.root.join(&path), &bytes)
        .map_err(|e| Error::new(format!("cannot write {}: {e}", path.display())))?;
    println!("xtask: qemu: wrote {} ({} bytes, {} guests)", path.display(), bytes.len(), scenario.guests.len());
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_resolve_to_files_or_built_guests() {
        let tmp = std::env::temp_dir().join(format!("xtask-manifest-{}", std::process::id()));
        let bin = tmp.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("counter"), b"elf").unwrap();
        std::fs::write(tmp.join("own.elf"), b"elf").unwrap();
        assert_eq!(resolve_image(&tmp.join("own.elf"), &bin).unwrap(), tmp.join("own.elf"));
        assert_eq!(resolve_image(&tmp.join("scenarios/counter"), &bin).unwrap(), bin.join("counter"));
        let err = resolve_image(&tmp.join("scenarios/nope"), &bin).unwrap_err();
        assert!(err.contains("neither a file nor a test guest") && err.contains("counter"), "{err}");
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn linux_guests_carry_kernel_initramfs_and_command_line() {
        use vcpu_runtime::manifest::{GuestKind, Manifest};
        let tmp = std::env::temp_dir().join(format!("xtask-manifest-linux-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let image = linux::image::fake_image(0, 0x40_0000, 0x1_0000);
        std::fs::write(tmp.join("Image"), &image).unwrap();
        std::fs::write(tmp.join("initramfs.cpio"), b"070701 cpio").unwrap();
        let text = "name = \"l\"\nduration = \"1s\"\n[board]\ncores = 2\nenergy_profile = \"phone-dual\"\n\
                    [[guests]]\nname = \"linux\"\nvcpus = 2\nmemory_mib = 64\nkind = \"linux\"\n\
                    kernel = \"Image\"\ninitrd = \"initramfs.cpio\"\ncmdline = \"console=ttyAMA0 test=boot\"\n";
        let scenario = vcpu_runtime::scenario::parse(text, &tmp.join("l.toml")).unwrap();
        let images = guest_images(&scenario, Path::new("/"), &tmp).unwrap();
        let bytes = encode_manifest(&scenario, images).unwrap();
        let manifest = Manifest::parse(&bytes).unwrap();
        let guest = manifest.guest(0).unwrap();
        assert_eq!(guest.kind, GuestKind::Linux);
        assert_eq!(guest.entry_ipa, 0x4020_0000);
        let segments = guest.segments();
        assert_eq!(segments.len(), 1);
        assert_eq!(
            (segments[0].ipa, segments[0].data, segments[0].mem_len),
            (0x4020_0000, image.as_slice(), 0x40_0000)
        );
        assert_eq!(guest.initrd, b"070701 cpio");
        assert_eq!(guest.cmdline, "console=ttyAMA0 test=boot");

        // Too little RAM for the kernel is refused with the size it needs.
        let small = text.replace("memory_mib = 64", "memory_mib = 4");
        let scenario = vcpu_runtime::scenario::parse(&small, &tmp.join("l.toml")).unwrap();
        let err = guest_images(&scenario, Path::new("/"), &tmp).unwrap_err();
        assert!(err.starts_with("guests[0] (`linux`): kernel ") && err.contains("need memory_mib >= 7"), "{err}");
        // A missing kernel is named.
        std::fs::remove_file(tmp.join("Image")).unwrap();
        let err = guest_images(&scenario, Path::new("/"), &tmp).unwrap_err();
        assert!(err.contains("cannot read the kernel") && err.contains("Image"), "{err}");
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn build_command() {
        assert_eq!(
            guests_build_cmd().rerun_line(),
            "cd guests && cargo build --release --target aarch64-unknown-none-softfloat --target-dir ../target/el2"
        );
    }
}
