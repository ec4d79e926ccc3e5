//! Boots the EL2 hypervisor under QEMU and checks how it ends and what it printed.
//!
//! [`image`] builds the hypervisor once per test process (release, `platform/qemu-virt`, target
//! directory `target/el2`, as `cargo xtask qemu` does); [`run`] boots it with a
//! [`QemuConfig`], kills QEMU after the timeout, and returns a [`Run`]: the exit code, the
//! console output, how long it took. The `Run` helpers check the exit code, patterns that must
//! or must not appear (the [`FAILURE_PATTERNS`]), the guests' results, the trace lines and the
//! `stat vcpu` lines.
//!
//! With a scenario ([`QemuConfig::scenario`]), [`manifest`] builds the test guests once, writes
//! the scenario's manifest as `cargo xtask qemu SCENARIO` does (xtask/src/manifest.rs) and QEMU
//! loads it at [`MANIFEST_ADDR`]. Both write it with [`encode_manifest`], which also gives the
//! demand player (`image = "player"`) its schedule.
//!
//! The Linux guest's kernel and initramfs ([`linux_assets`]) are made by `cargo xtask linux`
//! into `target/linux/`; [`bare_linux_args`] boots them on QEMU without the hypervisor.
//!
//! The QEMU command line is the one `cargo xtask qemu` uses (xtask/src/qemu.rs), and manifests
//! are built the same way: keep the two in step.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

pub mod hostwait;
pub mod linux_image;
pub mod relay;
pub mod rtmiss;

use vcpu_runtime::manifest::{elf_image, encode, GuestImage};
use vcpu_runtime::scenario::{Demand, Guest, Payload, Scenario};
use vcpu_runtime::trace::{self, TraceEvent};
use vcpu_runtime::Nanos;

/// Text that must not appear in a clean run's output: the hypervisor prints these words only
/// when something went wrong (`panic on core ...`, `EL2 exception on core ...`, `FAIL: ...`).
/// Guest lines (`[name] ...`) are held to [`GUEST_FAILURE_PATTERNS`] instead: a guest may
/// print "exception" when it reports one it took on purpose (`misbehave`).
pub const FAILURE_PATTERNS: &[&str] = &["panic", "exception", "FAIL"];

/// Text that must not appear in a guest's lines in a clean run.
pub const GUEST_FAILURE_PATTERNS: &[&str] = &["panic", "RESULT: FAIL", "UNEXPECTED"];

/// Where QEMU loads a scenario manifest (xtask/src/manifest.rs, platform/qemu-virt/src/main.rs).
pub use vcpu_runtime::manifest::QEMU_VIRT_ADDR as MANIFEST_ADDR;

/// The target of the EL2 image.
pub const EL2_TARGET: &str = "aarch64-unknown-none-softfloat";

/// The workspace root (the parent of `hw-tests/`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The hypervisor image, built on first use: `cargo build --release` in `platform/qemu-virt`
/// with `--target-dir ../../target/el2`. Panics with cargo's output when the build fails.
pub fn image() -> &'static Path {
    static IMAGE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match IMAGE.get_or_init(build_image) {
        Ok(path) => path,
        Err(e) => panic!("building the hypervisor failed:\n{e}"),
    }
}

fn build_image() -> Result<PathBuf, String> {
    let root = workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let start = Instant::now();
    let out = Command::new(cargo)
        .args(["build", "--release", "--target", EL2_TARGET, "--target-dir", "../../target/el2"])
        .current_dir(root.join("platform/qemu-virt"))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("could not run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo build ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let image = root.join("target/el2").join(EL2_TARGET).join("release/hypervisor");
    if !image.is_file() {
        return Err(format!("cargo built, but {} is missing", image.display()));
    }
    eprintln!("hw-tests: built {} in {:.1}s", image.display(), start.elapsed().as_secs_f64());
    Ok(image)
}

/// How to boot the hypervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuConfig {
    /// `-smp`.
    pub smp: u32,
    /// `-cpu`.
    pub cpu: String,
    /// QEMU is killed after this long.
    pub timeout: Duration,
    /// `-icount shift=4,sleep=off`.
    pub icount: bool,
    /// `-append`: the hypervisor's boot arguments.
    pub append: Option<String>,
    /// A scenario manifest to load at [`MANIFEST_ADDR`].
    pub manifest: Option<PathBuf>,
    /// A raw disk image attached as a virtio-blk device on the virtio-mmio bus (the hypervisor's
    /// checkpoint disk, docs/platform.md *virtio-blk transport*).
    pub disk: Option<PathBuf>,
    /// A loopback TCP port the migration stream (a virtio console) connects to: `-device
    /// virtio-serial-device -chardev socket,id=mig,host=127.0.0.1,port=PORT -device
    /// virtconsole,chardev=mig`.
    pub stream_port: Option<u16>,
}

impl QemuConfig {
    /// `smp` cores of model `cpu`, a 60 s timeout, no icount, no boot arguments.
    pub fn new(smp: u32, cpu: &str) -> QemuConfig {
        QemuConfig {
            smp,
            cpu: cpu.into(),
            timeout: Duration::from_secs(60),
            icount: false,
            append: None,
            manifest: None,
            disk: None,
            stream_port: None,
        }
    }

    /// With the manifest of this scenario (a file in `scenarios/`, by name): see [`manifest`].
    pub fn scenario(mut self, name: &str) -> QemuConfig {
        self.manifest = Some(manifest(name));
        self
    }

    /// With this manifest file.
    pub fn manifest_file(mut self, path: &Path) -> QemuConfig {
        self.manifest = Some(path.to_path_buf());
        self
    }

    /// With this raw disk image as a virtio-blk device: `-drive if=none,file=PATH,format=raw,id=ckpt
    /// -device virtio-blk-device,drive=ckpt`.
    pub fn disk(mut self, image: &Path) -> QemuConfig {
        self.disk = Some(image.to_path_buf());
        self
    }

    /// With the migration stream connected to `port` on loopback.
    pub fn stream(mut self, port: u16) -> QemuConfig {
        self.stream_port = Some(port);
        self
    }

    /// With these boot arguments.
    pub fn append(mut self, args: &str) -> QemuConfig {
        self.append = Some(args.into());
        self
    }

    /// With this timeout.
    pub fn timeout(mut self, timeout: Duration) -> QemuConfig {
        self.timeout = timeout;
        self
    }

    /// The arguments of `qemu-system-aarch64` for `image`.
    pub fn qemu_args(&self, image: &Path) -> Vec<String> {
        let mut args: Vec<String> = [
            "-M",
            "virt,virtualization=on,gic-version=3",
            "-cpu",
            &self.cpu,
            "-smp",
            &self.smp.to_string(),
            "-m",
            "1G",
            // The emulated cores' threads named `CPU n/TCG`, for `hostwait`.
            "-name",
            "hv,debug-threads=on",
            "-nographic",
            "-nic",
            "none",
            "-no-reboot",
            "-semihosting-config",
            "enable=on,target=native",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if self.icount {
            args.extend(["-icount".into(), "shift=4,sleep=off".into()]);
        }
        args.extend(["-kernel".into(), image.display().to_string()]);
        if let Some(manifest) = &self.manifest {
            args.extend([
                "-device".into(),
                format!("loader,file={},addr={MANIFEST_ADDR:#x},force-raw=on", manifest.display()),
            ]);
        }
        if let Some(disk) = &self.disk {
            // QEMU's option syntax: a comma in a value is written twice.
            let file = disk.display().to_string().replace(',', ",,");
            args.extend([
                "-drive".into(),
                format!("if=none,file={file},format=raw,id=ckpt"),
                "-device".into(),
                "virtio-blk-device,drive=ckpt".into(),
            ]);
        }
        if let Some(port) = self.stream_port {
            args.extend([
                "-device".into(),
                "virtio-serial-device".into(),
                "-chardev".into(),
                format!("socket,id=mig,host=127.0.0.1,port={port}"),
                "-device".into(),
                "virtconsole,chardev=mig".into(),
            ]);
        }
        if let Some(append) = &self.append {
            args.extend(["-append".into(), append.clone()]);
        }
        args
    }
}

/// The test guests, built once per test process (`cargo build --release` in `guests/`, as
/// `cargo xtask qemu` does); returns the directory holding their ELF files.
pub fn guests_dir() -> &'static Path {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let root = workspace_root();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let start = Instant::now();
        // Inside guests/ so that its .cargo/config.toml applies; without what the outer cargo
        // may have set for host builds.
        let out = Command::new(cargo)
            .args(["build", "--release", "--target", EL2_TARGET, "--target-dir", "../target/el2"])
            .current_dir(root.join("guests"))
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_RUSTFLAGS")
            .env_remove("CARGO_BUILD_TARGET")
            .env_remove("CARGO_TARGET_DIR")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("could not run cargo: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "building guests/ failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        eprintln!("hw-tests: built guests/ in {:.1}s", start.elapsed().as_secs_f64());
        Ok(root.join("target/el2").join(EL2_TARGET).join("release"))
    });
    match built {
        Ok(dir) => dir,
        Err(e) => panic!("{e}"),
    }
}

/// The manifest of `scenarios/NAME.toml`, written once per test process to
/// `target/el2/manifests/hw-tests-NAME.manifest`: each `test-image` payload is a file, or else
/// a test guest named by its last path component (`image = "counter"`), and each Linux guest's
/// kernel, initramfs and command line are laid out by [`linux_image::read_guest`], as in
/// `cargo xtask qemu` (xtask/src/manifest.rs). When a Linux guest's files are missing, the
/// project's assets are made first ([`linux_assets`]), as the scenarios name those.
pub fn manifest(name: &str) -> PathBuf {
    static MANIFESTS: OnceLock<Mutex<BTreeMap<String, PathBuf>>> = OnceLock::new();
    let mut made = MANIFESTS.get_or_init(|| Mutex::new(BTreeMap::new())).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = made.get(name) {
        return path.clone();
    }
    let path = manifest_of(name, &load_scenario(name));
    made.insert(name.to_string(), path.clone());
    path
}

/// Writes `bytes` to `path` unless it holds them already, and then waits until they are on
/// the disk. A Linux scenario's manifest is tens of MB: written and left to the kernel's
/// writeback, it would be flushed some 30 s later, in the middle of a QEMU run whose
/// real-time guest the host's I/O and its CPU time then disturb.
pub fn write_settled(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    let mut file = std::fs::File::create(path)?;
    std::io::Write::write_all(&mut file, bytes)?;
    file.sync_all()
}

/// `scenarios/NAME.toml`, loaded (panics with the loader's message when it is bad).
pub fn load_scenario(name: &str) -> Scenario {
    let file = workspace_root().join("scenarios").join(format!("{name}.toml"));
    vcpu_runtime::scenario::load(&file).unwrap_or_else(|e| panic!("{e}"))
}

/// Writes the manifest of `scenario` (as [`manifest`] does, for a scenario a test may have
/// changed) to `target/el2/manifests/hw-tests-TAG.manifest` and returns its path.
pub fn manifest_of(tag: &str, scenario: &Scenario) -> PathBuf {
    let root = workspace_root();
    let bin = guests_dir();
    let images: Vec<GuestImage> = scenario
        .guests
        .iter()
        .map(|g| match &g.payload {
            Payload::TestImage { image } => {
                let given = root.join(image);
                let path = if given.is_file() { given } else { bin.join(given.file_name().unwrap_or_default()) };
                let bytes = std::fs::read(&path)
                    .unwrap_or_else(|e| panic!("guest `{}`: cannot read {}: {e}", g.name, path.display()));
                elf_image(&bytes).unwrap_or_else(|e| panic!("guest `{}`: {}: {e}", g.name, path.display()))
            }
            Payload::Linux { kernel, initrd, cmdline } => {
                let kernel = root.join(kernel);
                let initrd = initrd.as_ref().map(|f| root.join(f));
                if !kernel.is_file() || initrd.as_ref().is_some_and(|f| !f.is_file()) {
                    // The scenarios name the project's own kernel and initramfs: made when
                    // missing (another missing file stays missing, and is named below).
                    linux_assets();
                }
                linux_image::read_guest(&kernel, initrd.as_deref(), cmdline, g.memory_mib)
                    .unwrap_or_else(|e| panic!("guest `{}`: {e}", g.name))
            }
            Payload::None => panic!("guest `{}`: a simulator-only guest cannot run on the hypervisor", g.name),
        })
        .collect();
    let bytes = encode_manifest(scenario, images).unwrap_or_else(|e| panic!("manifest of {tag}: {e}"));
    let dir = root.join("target/el2/manifests");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let path = dir.join(format!("hw-tests-{tag}.manifest"));
    write_settled(&path, &bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

/// The test guest that replays its guest's `demand` (docs/guests.md, *player*): a
/// `test-image` guest whose image is named this.
pub const PLAYER_IMAGE: &str = "player";

/// The periodic real-time test guest (docs/guests.md, *rt*): a `test-image` guest whose image is
/// named this. With a periodic `demand` it runs that job over the scenario's duration
/// ([`rt_params`]); without one, its built-in 2 ms every 10 ms for 100 periods.
pub const RT_IMAGE: &str = "rt";

/// How much longer than the scenario's duration the hypervisor lets a scenario run whose guests
/// follow their `demand` over the duration (a player, an `rt` guest with a periodic demand).
/// Their clocks start when they boot, after the hypervisor's, and they end themselves
/// (SYSTEM_OFF) once their schedule is done; the hypervisor, which would otherwise halt them at
/// the duration measured from its own start, waits this much longer. The run still ends as soon
/// as every guest has stopped.
pub const PLAYER_GRACE: Nanos = Nanos::from_secs(1);

/// Whether `guest` is the test image named `name`.
fn is_image(guest: &Guest, name: &str) -> bool {
    match &guest.payload {
        Payload::TestImage { image } => Path::new(image).file_name().is_some_and(|n| n == name),
        _ => false,
    }
}

/// Whether `guest` is the demand player ([`PLAYER_IMAGE`]).
pub fn is_player(guest: &Guest) -> bool {
    is_image(guest, PLAYER_IMAGE)
}

/// The magic of the `rt` guest's parameter blob ([`rt_params`]).
pub const RT_PARAMS_MAGIC: [u8; 8] = *b"HVRTPAR1";

/// The `rt` guest's parameter blob (docs/guests.md, *rt*): [`RT_PARAMS_MAGIC`], then the
/// period, the work and the deadline in microseconds and the number of periods, little-endian
/// u64 each.
pub fn rt_params(period: Nanos, work: Nanos, deadline: Nanos, periods: u64) -> Vec<u8> {
    let mut blob = RT_PARAMS_MAGIC.to_vec();
    for word in [period.as_micros(), work.as_micros(), deadline.as_micros(), periods] {
        blob.extend_from_slice(&word.to_le_bytes());
    }
    blob
}

/// The data blob of `guest` of `scenario` (the `initrd` of its manifest record, which the
/// hypervisor puts at the base of the guest's RAM): for the demand player, the schedule of its
/// `demand` over the scenario's duration (`platform_sim::schedule::player_schedule`); for the
/// `rt` guest with a periodic `demand`, that job for as many periods as the duration holds
/// ([`rt_params`]; its release offset is not used); empty for every other guest. A player
/// without a demand, a schedule too large, or an `rt` guest whose demand is not periodic is an
/// error (which does not repeat the guest's name: [`encode_manifest`] puts it in front).
pub fn guest_data(scenario: &Scenario, guest: &Guest) -> Result<Vec<u8>, String> {
    if is_image(guest, RT_IMAGE) {
        return match &guest.demand {
            None => Ok(Vec::new()),
            Some(Demand::Periodic { period, work, deadline, .. }) => {
                let periods = scenario.duration.as_nanos() / period.as_nanos().max(1);
                Ok(rt_params(*period, *work, *deadline, periods))
            }
            Some(other) => Err(format!(
                "image = \"{RT_IMAGE}\" runs a periodic job: its demand must be periodic (or absent, for the \
                 built-in 2 ms every 10 ms, 100 times), not {other:?}"
            )),
        };
    }
    if !is_player(guest) {
        return Ok(Vec::new());
    }
    let demand = guest.demand.as_ref().ok_or_else(|| {
        format!(
            "image = \"{PLAYER_IMAGE}\" replays the guest's `demand`, but it has none (add e.g. \
             `demand = {{ kind = \"periodic\", period = \"10ms\", work = \"2ms\" }}`)"
        )
    })?;
    platform_sim::schedule::player_schedule(demand, guest.vcpus, scenario.duration)
        .map_err(|e| format!("the player's schedule: {e}"))
}

/// The manifest of `scenario` with its guests' `images` (in guest order), as `cargo xtask qemu`
/// and these tests write it: each guest's image gets its data blob ([`guest_data`]), and when a
/// guest follows its demand over the duration (a player, or an `rt` guest with a blob) the
/// hypervisor's duration is the scenario's plus [`PLAYER_GRACE`]. Errors name the guest:
/// `guests[I] (`NAME`): ...`.
pub fn encode_manifest(scenario: &Scenario, mut images: Vec<GuestImage>) -> Result<Vec<u8>, String> {
    let mut scheduled = 0;
    for (i, (guest, image)) in scenario.guests.iter().zip(images.iter_mut()).enumerate() {
        let data = guest_data(scenario, guest).map_err(|e| format!("guests[{i}] (`{}`): {e}", guest.name))?;
        if !data.is_empty() {
            image.initrd = data;
            scheduled += 1;
        }
    }
    let bytes = if scheduled == 0 {
        encode(scenario, &images)
    } else {
        let mut longer = scenario.clone();
        longer.duration = scenario.duration + PLAYER_GRACE;
        encode(&longer, &images)
    };
    bytes.map_err(|e| e.to_string())
}

/// The Linux guest's assets: a Debian arm64 kernel `Image` and the test initramfs, which
/// `cargo xtask linux` fetches and builds into `target/linux/` (docs/linux-guests.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinuxAssets {
    pub image: PathBuf,
    pub initramfs: PathBuf,
}

/// Where `cargo xtask linux` puts the assets, relative to the workspace root.
pub const LINUX_DIR: &str = "target/linux";

/// Lines a Linux guest prints only when its kernel is in trouble: a panic, a BUG or an oops, an
/// RCU stall (`rcu: INFO: rcu_sched detected stalls on CPUs/tasks`, `rcu_sched self-detected
/// stall on CPU`), a soft or hard lockup, a warning with its backtrace.
pub const LINUX_FAILURE_PATTERNS: &[&str] = &[
    "Kernel panic",
    "BUG:",
    "Oops",
    "rcu: INFO",
    "self-detected stall",
    "detected stalls",
    "soft lockup",
    "hard LOCKUP",
    "WARNING: CPU",
    "Call trace:",
];

/// The Linux assets, made once per test process when missing by running `cargo xtask linux`
/// (`cargo xtask test` makes them before the QEMU tests, so this is for `cargo test -p
/// hw-tests` on its own). Panics with xtask's output when it fails.
pub fn linux_assets() -> &'static LinuxAssets {
    static ASSETS: OnceLock<Result<LinuxAssets, String>> = OnceLock::new();
    let made = ASSETS.get_or_init(|| {
        let root = workspace_root();
        let assets = LinuxAssets {
            image: root.join(LINUX_DIR).join("Image"),
            initramfs: root.join(LINUX_DIR).join("initramfs.cpio"),
        };
        if assets.image.is_file() && assets.initramfs.is_file() {
            return Ok(assets);
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let start = Instant::now();
        let out = Command::new(cargo)
            .args(["run", "--quiet", "--package", "xtask", "--", "linux"])
            .current_dir(&root)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("could not run cargo: {e}"))?;
        if !out.status.success() || !assets.image.is_file() || !assets.initramfs.is_file() {
            return Err(format!(
                "cargo xtask linux ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        eprintln!("hw-tests: made the Linux assets in {:.1}s", start.elapsed().as_secs_f64());
        Ok(assets)
    });
    match made {
        Ok(assets) => assets,
        Err(e) => panic!("making the Linux assets failed:\n{e}"),
    }
}

/// The QEMU arguments that boot the Linux `assets` directly, with no hypervisor: the kernel at
/// EL1 on `config.smp` CPUs of model `config.cpu`, 256 MiB, the initramfs, and `config.append`
/// as the kernel command line. `cargo xtask bench linux` boots the same.
pub fn bare_linux_args(config: &QemuConfig, assets: &LinuxAssets) -> Vec<String> {
    let mut args: Vec<String> = [
        "-M",
        "virt,gic-version=3",
        "-cpu",
        &config.cpu,
        "-smp",
        &config.smp.to_string(),
        "-m",
        "256M",
        "-nographic",
        "-nic",
        "none",
        "-no-reboot",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if config.icount {
        args.extend(["-icount".into(), "shift=4,sleep=off".into()]);
    }
    args.extend([
        "-kernel".into(),
        assets.image.display().to_string(),
        "-initrd".into(),
        assets.initramfs.display().to_string(),
    ]);
    if let Some(cmdline) = &config.append {
        args.extend(["-append".into(), cmdline.clone()]);
    }
    args
}

/// One QEMU run.
#[derive(Debug, Clone)]
pub struct Run {
    pub config: QemuConfig,
    /// The command line, for messages.
    pub command: String,
    /// QEMU's exit code; `None` if it was killed (timeout) or died by a signal.
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    /// Console (stdout) then QEMU's stderr, if it wrote any.
    pub output: String,
    /// When each console line arrived, since QEMU started: the i-th of [`Run::lines`], for the
    /// console's lines (not the stderr that may follow them).
    pub line_times: Vec<Duration>,
    /// How long QEMU's threads waited for a host CPU ([`hostwait`]).
    pub host_waits: hostwait::HostWaits,
    pub duration: Duration,
}

/// Builds the image if needed, boots it with `config` and waits for QEMU to end (or kills it
/// at the timeout).
pub fn run(config: &QemuConfig) -> Run {
    run_with_args(config, config.qemu_args(image()))
}

/// Runs `qemu-system-aarch64 args` and waits for it to end (or kills it at `config`'s timeout);
/// `config` says what the run is, for its messages.
pub fn run_with_args(config: &QemuConfig, args: Vec<String>) -> Run {
    let command = format!("qemu-system-aarch64 {}", args.join(" "));
    let start = Instant::now();
    let mut child = Command::new("qemu-system-aarch64")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "could not start qemu-system-aarch64: {e}\n`cargo xtask test` installs QEMU (as root), or: \
                 sudo apt-get install -y qemu-system-arm\n{command}"
            )
        });
    let monitor = hostwait::WaitMonitor::start(child.id(), start);
    let stdout = line_reader(child.stdout.take(), start);
    let stderr = reader(child.stderr.take());
    let deadline = start + config.timeout;
    let (exit_code, timed_out) = loop {
        match child.try_wait() {
            Ok(Some(status)) => break (status.code(), false),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break (None, true);
            }
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("waiting for QEMU failed: {e}"),
        }
    };
    let duration = start.elapsed();
    let host_waits = monitor.finish();
    let (mut output, line_times) = stdout.join().unwrap_or_default();
    let err = stderr.join().unwrap_or_default();
    if !err.trim().is_empty() {
        output.push_str("\n[qemu stderr]\n");
        output.push_str(&err);
    }
    Run { config: config.clone(), command, exit_code, timed_out, output, line_times, host_waits, duration }
}

/// Reads `pipe` to its end, noting when each line arrived (since `start`).
fn line_reader<R: Read + Send + 'static>(
    pipe: Option<R>,
    start: Instant,
) -> thread::JoinHandle<(String, Vec<Duration>)> {
    thread::spawn(move || {
        let (mut bytes, mut times) = (Vec::new(), Vec::new());
        if let Some(pipe) = pipe {
            let mut pipe = std::io::BufReader::new(pipe);
            loop {
                match std::io::BufRead::read_until(&mut pipe, b'\n', &mut bytes) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => times.push(start.elapsed()),
                }
            }
        }
        (String::from_utf8_lossy(&bytes).into_owned(), times)
    })
}

fn reader<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

impl Run {
    /// The output's lines, line ends (`\r\n` on the serial console) removed.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.output.lines().map(|l| l.trim_end_matches('\r'))
    }

    /// The lines holding one of the [`FAILURE_PATTERNS`] (guest lines: one of the
    /// [`GUEST_FAILURE_PATTERNS`]).
    pub fn failure_lines(&self) -> Vec<&str> {
        self.lines()
            .filter(|l| {
                let patterns = if l.starts_with('[') { GUEST_FAILURE_PATTERNS } else { FAILURE_PATTERNS };
                patterns.iter().any(|p| l.contains(p))
            })
            .collect()
    }

    /// The console lines of guest `name` (printed as `[name] line`), without the prefix.
    pub fn guest_lines<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        let prefix = format!("[{name}] ");
        self.lines().filter_map(move |l| l.strip_prefix(prefix.as_str()))
    }

    /// Panics unless guest `name` printed `RESULT: PASS`.
    #[track_caller]
    pub fn assert_guest_passed(&self, name: &str) {
        if !self.guest_lines(name).any(|l| l == "RESULT: PASS") {
            self.fail(&format!("guest `{name}` did not print RESULT: PASS"));
        }
    }

    /// Panics unless guest `name` printed a line containing `pattern`.
    #[track_caller]
    pub fn assert_guest_line(&self, name: &str, pattern: &str) {
        if !self.guest_lines(name).any(|l| l.contains(pattern)) {
            self.fail(&format!("guest `{name}` printed no line containing `{pattern}`"));
        }
    }

    /// The `stat vcpu GUEST/INDEX key=value ...` lines the hypervisor prints at the end.
    pub fn stats(&self) -> Vec<VcpuStat> {
        self.lines().filter_map(VcpuStat::parse).collect()
    }

    /// The stat line of vCPU `index` of guest `guest`; panics if there is none.
    #[track_caller]
    pub fn stat(&self, guest: &str, index: u16) -> VcpuStat {
        match self.stats().into_iter().find(|s| s.guest == guest && s.index == index) {
            Some(s) => s,
            None => self.fail(&format!("no `stat vcpu {guest}/{index}` line")),
        }
    }

    /// The `stat vm GUEST key=value ...` line of guest `guest` (printed for a VM whose TLB
    /// maintenance the hypervisor carried out: `tlbi=`, `tlbi_waited=`); panics if there is none.
    #[track_caller]
    pub fn vm_stat(&self, guest: &str) -> VmStat {
        match self.lines().filter_map(VmStat::parse).find(|s| s.guest == guest) {
            Some(s) => s,
            None => self.fail(&format!("no `stat vm {guest}` line")),
        }
    }

    /// Reservation periods lost over the run, summed over the `stat vcpu` lines
    /// (`reservation_misses`; 0 without them): for a retry decision, before the assertions.
    pub fn reservation_periods_lost(&self) -> u64 {
        self.stats().iter().map(|s| s.get("reservation_misses")).sum()
    }

    /// Panics unless every vCPU's stat line says its reservation lost no period
    /// (`reservation_misses=0`: the scheduler gave each real-time vCPU its budget before each
    /// deadline). Needs the stat lines, and the field on each.
    #[track_caller]
    pub fn assert_reservations_honoured(&self) {
        let stats = self.stats();
        if stats.is_empty() {
            self.fail("no `stat vcpu` lines");
        }
        for s in &stats {
            match s.fields.get("reservation_misses").map(|v| v.parse::<u64>()) {
                Some(Ok(0)) => {}
                Some(Ok(n)) => self.fail(&format!("vCPU {}/{} lost {n} reservation periods", s.guest, s.index)),
                _ => self.fail(&format!("`stat vcpu {}/{}` has no `reservation_misses=N`", s.guest, s.index)),
            }
        }
    }

    /// Panics, showing the run, unless QEMU ended by itself with `code`.
    #[track_caller]
    pub fn assert_exit(&self, code: i32) {
        if self.timed_out {
            self.fail(&format!("QEMU did not end within {:?}; killed it", self.config.timeout));
        }
        if self.exit_code != Some(code) {
            self.fail(&format!("exit code {:?}, expected {code}", self.exit_code));
        }
    }

    /// Exit code 0 and no failure pattern in the output.
    #[track_caller]
    pub fn assert_clean(&self) {
        self.assert_exit(0);
        let bad = self.failure_lines();
        if !bad.is_empty() {
            self.fail(&format!("failure patterns {FAILURE_PATTERNS:?} in the output: {bad:?}"));
        }
    }

    /// Panics unless some line contains `pattern`.
    #[track_caller]
    pub fn assert_present(&self, pattern: &str) {
        if !self.lines().any(|l| l.contains(pattern)) {
            self.fail(&format!("no line contains `{pattern}`"));
        }
    }

    /// Panics if some line contains `pattern`.
    #[track_caller]
    pub fn assert_absent(&self, pattern: &str) {
        if let Some(line) = self.lines().find(|l| l.contains(pattern)) {
            self.fail(&format!("`{pattern}` appears: {line:?}"));
        }
    }

    /// Every trace event in the output (found with `trace::find_in`, read with
    /// `TraceEvent::parse`). Lines with a tag this build does not know are skipped, as the
    /// format requires; any other malformed trace line is an error.
    pub fn trace_events(&self) -> Result<Vec<TraceEvent>, String> {
        let mut events = Vec::new();
        for line in self.lines() {
            let Some(text) = trace::find_in(line) else { continue };
            match TraceEvent::parse(text) {
                Ok(event) => events.push(event),
                Err(e) if e.is_unknown_tag() => {}
                Err(e) => return Err(format!("bad trace line {line:?}: {e}")),
            }
        }
        Ok(events)
    }

    /// One line for logs: configuration, outcome, time.
    pub fn summary(&self) -> String {
        let mut s = format!("-smp {} -cpu {}", self.config.smp, self.config.cpu);
        if let Some(a) = &self.config.append {
            let _ = write!(s, " -append {a:?}");
        }
        let outcome = match (self.timed_out, self.exit_code) {
            (true, _) => "timed out".to_string(),
            (false, Some(c)) => format!("exit {c}"),
            (false, None) => "killed by a signal".to_string(),
        };
        let _ = write!(s, ": {outcome} in {:.2}s", self.duration.as_secs_f64());
        s
    }

    #[track_caller]
    pub fn fail(&self, what: &str) -> ! {
        panic!("{what}\ncommand: {}\n{}\n--- output ---\n{}\n--- end ---", self.command, self.summary(), self.output);
    }
}

/// One `stat vm GUEST key=value ...` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmStat {
    pub guest: String,
    pub fields: BTreeMap<String, String>,
}

impl VmStat {
    /// Reads a stat line; `None` for any other line.
    pub fn parse(line: &str) -> Option<VmStat> {
        let (guest, fields) = stat_line(line, "vm")?;
        Some(VmStat { guest: guest.to_string(), fields })
    }

    /// A numeric field (`tlbi`, `tlbi_waited`); 0 when missing.
    pub fn get(&self, key: &str) -> u64 {
        stat_number(&self.fields, key)
    }
}

/// One `stat vcpu GUEST/INDEX key=value ...` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuStat {
    pub guest: String,
    pub index: u16,
    pub fields: BTreeMap<String, String>,
}

/// The subject word and the `key=value` fields of a `stat KIND subject ...` line.
fn stat_line<'a>(line: &'a str, kind: &str) -> Option<(&'a str, BTreeMap<String, String>)> {
    let mut words = line.strip_prefix("stat ")?.strip_prefix(kind)?.strip_prefix(' ')?.split_ascii_whitespace();
    let subject = words.next()?;
    let fields = words.filter_map(|w| w.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Some((subject, fields))
}

/// A numeric field of a stat line; 0 when missing.
fn stat_number(fields: &BTreeMap<String, String>, key: &str) -> u64 {
    fields.get(key).and_then(|v| v.parse().ok()).unwrap_or(0)
}

impl VcpuStat {
    /// Reads a stat line; `None` for any other line.
    pub fn parse(line: &str) -> Option<VcpuStat> {
        let (subject, fields) = stat_line(line, "vcpu")?;
        let (guest, index) = subject.rsplit_once('/')?;
        Some(VcpuStat { guest: guest.to_string(), index: index.parse().ok()?, fields })
    }

    /// A numeric field (`cpu_ns`, `runs`, ...); 0 when missing.
    pub fn get(&self, key: &str) -> u64 {
        stat_number(&self.fields, key)
    }

    /// The `state=` field.
    pub fn state(&self) -> &str {
        self.fields.get("state").map(String::as_str).unwrap_or("")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn a_manifest_is_written_once_and_rewritten_when_it_changes() {
        let dir = std::env::temp_dir().join(format!("hw-tests-settled-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.manifest");
        let modified = || std::fs::metadata(&path).unwrap().modified().unwrap();
        write_settled(&path, b"first").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        let written = modified();
        std::thread::sleep(std::time::Duration::from_millis(20));
        // The same bytes again: the file is left alone.
        write_settled(&path, b"first").unwrap();
        assert_eq!(modified(), written);
        write_settled(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert!(modified() > written);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    pub(crate) fn run_with(output: &str, exit_code: Option<i32>) -> Run {
        Run {
            config: QemuConfig::new(2, "cortex-a57"),
            command: "qemu".into(),
            exit_code,
            timed_out: false,
            output: output.into(),
            line_times: Vec::new(),
            host_waits: hostwait::HostWaits::default(),
            duration: Duration::from_millis(5),
        }
    }

    fn scenario_of(guests: &str) -> Scenario {
        scenario_for("1s", guests)
    }

    fn scenario_for(duration: &str, guests: &str) -> Scenario {
        let text = format!(
            "name = \"t\"\nduration = \"{duration}\"\n[board]\ncores = 2\nenergy_profile = \"generic\"\n{guests}"
        );
        vcpu_runtime::scenario::parse(&text, Path::new("scenarios/t.toml")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn image() -> GuestImage {
        GuestImage { entry_ipa: 0x4008_0000, segments: vec![(0x4008_0000, vec![0; 16], 16)], ..GuestImage::default() }
    }

    const PLAYER: &str = "[[guests]]\nname = \"p\"\nvcpus = 2\nkind = \"test-image\"\nimage = \"player\"\n";
    const COUNTER: &str = "[[guests]]\nname = \"c\"\nkind = \"test-image\"\nimage = \"counter\"\n";

    #[test]
    fn the_player_gets_its_schedule_and_the_run_a_grace() {
        let periodic = "demand = { kind = \"periodic\", period = \"10ms\", work = \"2ms\" }\n";
        let s = scenario_of(&format!("{PLAYER}{periodic}{COUNTER}"));
        assert!(is_player(&s.guests[0]) && !is_player(&s.guests[1]));
        let bytes = encode_manifest(&s, vec![image(), image()]).unwrap();
        let m = vcpu_runtime::manifest::Manifest::parse(&bytes).unwrap();
        assert_eq!(m.policy.duration, Nanos::from_secs(1) + PLAYER_GRACE);
        let guests: Vec<_> = m.guests().collect();
        let schedule = platform_sim::schedule::decode_schedule(guests[0].initrd).unwrap();
        assert_eq!(schedule.duration, Nanos::from_secs(1), "the schedule covers the scenario's duration");
        assert_eq!((schedule.vcpus.len(), schedule.vcpus[1].len()), (2, 100));
        assert_eq!(guests[0].initrd, guest_data(&s, &s.guests[0]).unwrap());
        assert!(guests[1].initrd.is_empty(), "only the player gets a data blob");

        // Without a player, the manifest is encode's, duration and all.
        let s = scenario_of(COUNTER);
        let bytes = encode_manifest(&s, vec![image()]).unwrap();
        assert_eq!(bytes, encode(&s, &[image()]).unwrap());
    }

    #[test]
    fn the_rt_guest_runs_its_periodic_demand_over_the_duration() {
        const RT: &str = "[[guests]]\nname = \"r\"\nkind = \"test-image\"\nimage = \"rt\"\n";
        let periodic = "demand = { kind = \"periodic\", period = \"10ms\", work = \"2ms\", deadline = \"8ms\" }\n";
        let s = scenario_for("3s", &format!("{RT}{periodic}{COUNTER}"));
        let blob = guest_data(&s, &s.guests[0]).unwrap();
        let mut expected = b"HVRTPAR1".to_vec();
        for w in [10_000u64, 2_000, 8_000, 300] {
            expected.extend_from_slice(&w.to_le_bytes());
        }
        assert_eq!(blob, expected);
        let bytes = encode_manifest(&s, vec![image(), image()]).unwrap();
        let m = vcpu_runtime::manifest::Manifest::parse(&bytes).unwrap();
        assert_eq!(m.policy.duration, Nanos::from_secs(3) + PLAYER_GRACE, "the rt guest's clock starts late too");
        assert_eq!(m.guests().next().unwrap().initrd, blob.as_slice());

        // Without a demand: the built-in settings, no blob, no grace.
        let s = scenario_of(RT);
        assert!(guest_data(&s, &s.guests[0]).unwrap().is_empty());
        assert_eq!(encode_manifest(&s, vec![image()]).unwrap(), encode(&s, &[image()]).unwrap());
        // Another kind of demand is refused.
        let s = scenario_of(&format!("{RT}demand = {{ kind = \"batch\" }}\n"));
        let err = encode_manifest(&s, vec![image()]).unwrap_err();
        assert!(err.starts_with("guests[0] (`r`): image = \"rt\" runs a periodic job"), "{err}");
    }

    #[test]
    fn a_player_needs_a_demand_that_fits() {
        let s = scenario_of(&format!("{COUNTER}{PLAYER}"));
        let err = encode_manifest(&s, vec![image(), image()]).unwrap_err();
        assert!(err.starts_with("guests[1] (`p`): image = \"player\" replays") && err.contains("has none"), "{err}");
        let s = scenario_for("24h", &format!("{PLAYER}demand = {{ kind = \"phone-day\" }}\n"));
        let err = encode_manifest(&s, vec![image()]).unwrap_err();
        assert!(
            err.starts_with("guests[0] (`p`): the player's schedule: phone-day demand over 86400.000s on 2 vCPUs"),
            "{err}"
        );
        assert!(err.contains("at most 524288 bytes") && err.contains("shorter duration"), "{err}");
    }

    #[test]
    fn qemu_args_match_xtask() {
        let c = QemuConfig::new(4, "max").append("hv.selftest=panic");
        assert_eq!(
            c.qemu_args(Path::new("img")).join(" "),
            "-M virt,virtualization=on,gic-version=3 -cpu max -smp 4 -m 1G -name hv,debug-threads=on -nographic -nic none -no-reboot \
             -semihosting-config enable=on,target=native -kernel img -append hv.selftest=panic"
        );
        let c = QemuConfig { icount: true, ..QemuConfig::new(1, "cortex-a57") };
        assert!(c.qemu_args(Path::new("img")).join(" ").contains("-icount shift=4,sleep=off -kernel img"));
        let c = QemuConfig::new(1, "cortex-a57").manifest_file(Path::new("m.manifest"));
        assert!(c
            .qemu_args(Path::new("img"))
            .join(" ")
            .ends_with("-kernel img -device loader,file=m.manifest,addr=0x44000000,force-raw=on"));
        let c = QemuConfig::new(2, "cortex-a57").disk(Path::new("target/a,b.img")).append("hv.disk-test=read");
        assert!(c.qemu_args(Path::new("img")).join(" ").ends_with(
            "-kernel img -drive if=none,file=target/a,,b.img,format=raw,id=ckpt -device virtio-blk-device,drive=ckpt \
             -append hv.disk-test=read"
        ));
    }

    #[test]
    fn bare_linux_command_line() {
        let assets = LinuxAssets { image: "t/Image".into(), initramfs: "t/i.cpio".into() };
        let c = QemuConfig::new(2, "cortex-a57").append("console=ttyAMA0 test=boot");
        assert_eq!(
            bare_linux_args(&c, &assets).join(" "),
            "-M virt,gic-version=3 -cpu cortex-a57 -smp 2 -m 256M -nographic -nic none -no-reboot \
             -kernel t/Image -initrd t/i.cpio -append console=ttyAMA0 test=boot"
        );
        let c = QemuConfig { icount: true, ..QemuConfig::new(1, "max") };
        assert!(bare_linux_args(&c, &assets)
            .join(" ")
            .ends_with("-icount shift=4,sleep=off -kernel t/Image -initrd t/i.cpio"));
    }

    #[test]
    fn guest_lines_and_stats() {
        let r = run_with(
            "[misbehave] step: abort-injected exception ec=0x25 ok\r\n[misbehave] RESULT: PASS\r\n\
             stat vcpu misbehave/0 cpu_ns=1200 runs=3 state=stopped\r\n",
            Some(0),
        );
        r.assert_clean();
        r.assert_guest_passed("misbehave");
        r.assert_guest_line("misbehave", "abort-injected");
        let s = r.stat("misbehave", 0);
        assert_eq!((s.get("cpu_ns"), s.get("runs"), s.state()), (1200, 3, "stopped"));
        // A `stat vm` line is not a vCPU's, and the other way round.
        assert!(VcpuStat::parse("stat vm linux tlbi=5").is_none());
        assert!(VmStat::parse("stat vcpu misbehave/0 runs=3").is_none());
        assert!(VmStat::parse("stat vmx linux tlbi=5").is_none());
        let v =
            run_with("stat vcpu linux/0 runs=1\nstat vm linux tlbi=43204 tlbi_waited=14\n", Some(0)).vm_stat("linux");
        assert_eq!((v.get("tlbi"), v.get("tlbi_waited")), (43204, 14));
        assert!(std::panic::catch_unwind(|| r.vm_stat("misbehave")).is_err());
        assert!(std::panic::catch_unwind(|| r.assert_guest_passed("counter")).is_err());
        let failed = run_with("[counter] RESULT: FAIL misses=3\n", Some(0));
        assert_eq!(failed.failure_lines().len(), 1);
    }

    #[test]
    fn reservations_honoured_needs_every_stat_line_at_zero() {
        let ok = run_with(
            "stat vcpu rt/0 reservation_misses=0 state=stopped\nstat vcpu a/0 reservation_misses=0\n",
            Some(0),
        );
        ok.assert_reservations_honoured();
        for bad in [
            "stat vcpu rt/0 reservation_misses=2 state=stopped\n",
            "stat vcpu rt/0 state=stopped\n",
            "stat vcpu rt/0 reservation_misses=x\n",
            "no stats\n",
        ] {
            let r = run_with(bad, Some(0));
            assert!(std::panic::catch_unwind(|| r.assert_reservations_honoured()).is_err(), "{bad}");
        }
    }

    #[test]
    fn patterns_and_trace() {
        let r = run_with("hello\r\ncore 0 online (mpidr 0x0)\r\nT 5 core c0 online\r\nT 6 newtag c0\r\n", Some(0));
        r.assert_clean();
        r.assert_present("core 0 online");
        r.assert_absent("core 1 online");
        let events = r.trace_events().unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].to_string(), "T 5 core c0 online");

        let bad = run_with("T 5 core cX online\n", Some(0));
        assert!(bad.trace_events().unwrap_err().contains("bad trace line"));

        let failed = run_with("panic on core 1 at x.rs:1:1: boom\nFAIL: it\n", Some(2));
        assert_eq!(failed.failure_lines().len(), 2);
        failed.assert_exit(2);
        assert!(std::panic::catch_unwind(|| failed.assert_clean()).is_err());
    }
}
