//! The commands: `test`, `demo`, `sim`, `bench` (`qemu` is in qemu.rs).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cli::{Bench, BENCHES};
use crate::exec::{Cmd, Ctx};
use crate::setup::{ensure_fuzz, ensure_qemu, ensure_target, EL2_TARGET, QEMU_PACKAGE};
use crate::Error;

/// The EL2 workspaces, built for [`EL2_TARGET`] when their manifest exists.
pub const EL2_CRATES: &[&str] = &["platform/qemu-virt", "guests"];

/// Where the EL2 builds go, relative to the workspace root (kept apart from host builds).
pub const EL2_TARGET_DIR: &str = "target/el2";

/// The cargo-fuzz project of the checkpoint reader, and how long `test` fuzzes it.
const FUZZ_DIR: &str = "migrate/fuzz";
const FUZZ_SECONDS: u32 = 30;

/// Loom's `--cfg loom` would rebuild every dependency, so loom gets its own target directory.
const LOOM_TARGET_DIR: &str = "target/loom";

/// What a step of `cargo xtask test` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    EnsureTarget,
    EnsureQemu,
    EnsureFuzz,
    /// The Linux guest's kernel and initramfs in target/linux/ (`cargo xtask linux`).
    EnsureLinux,
    Run(Cmd),
}

/// One step of `cargo xtask test`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub name: String,
    pub action: Action,
}

impl Step {
    fn run(name: impl Into<String>, cmd: Cmd) -> Step {
        Step { name: name.into(), action: Action::Run(cmd) }
    }

    /// The shell line that redoes this step by hand.
    pub fn rerun_line(&self) -> String {
        match &self.action {
            Action::EnsureTarget => format!("rustup target add {EL2_TARGET}"),
            Action::EnsureQemu => format!("sudo apt-get install -y {QEMU_PACKAGE}"),
            Action::EnsureFuzz => {
                "rustup toolchain install nightly --profile minimal && cargo install cargo-fuzz --locked".into()
            }
            Action::EnsureLinux => "cargo xtask linux".into(),
            Action::Run(cmd) => cmd.rerun_line(),
        }
    }

    fn execute(&self, ctx: &Ctx) -> Result<(), Error> {
        match &self.action {
            Action::EnsureTarget => ensure_target(ctx),
            Action::EnsureQemu => ensure_qemu(ctx),
            Action::EnsureFuzz => ensure_fuzz(ctx),
            Action::EnsureLinux => crate::linux::ensure_assets(ctx).map(drop),
            Action::Run(cmd) => cmd.run(ctx),
        }
    }
}

/// The steps of `cargo xtask test`, and the ones left out with the reason.
#[derive(Debug, Default)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub skipped: Vec<(String, String)>,
}

/// Builds the plan of `cargo xtask test` for the workspace at `root`.
pub fn test_plan(root: &Path, quick: bool) -> Plan {
    let mut plan = Plan::default();
    let steps = &mut plan.steps;
    steps.push(Step { name: "rust target".into(), action: Action::EnsureTarget });
    steps.push(Step::run("fmt", Cmd::cargo(["fmt", "--all", "--", "--check"])));
    steps.push(Step::run("clippy", Cmd::cargo(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])));
    steps.push(Step::run(
        "clippy vcpu-runtime/std",
        Cmd::cargo(["clippy", "-p", "vcpu-runtime", "--features", "std", "--all-targets", "--", "-D", "warnings"]),
    ));
    // The portable crates must build `no_std` for the EL2 target: the hypervisor links them.
    steps.push(Step::run(
        "no_std runtime crates",
        Cmd::cargo([
            "build",
            "-p",
            "vcpu-runtime",
            "-p",
            "power",
            "-p",
            "migrate",
            "--target",
            EL2_TARGET,
            "--target-dir",
            EL2_TARGET_DIR,
        ]),
    ));
    // hw-tests boot QEMU: they run in their own step below, after QEMU is ensured.
    steps.push(Step::run("test", Cmd::cargo(["test", "--workspace", "--exclude", "hw-tests"])));
    steps.push(Step::run("test vcpu-runtime/std", Cmd::cargo(["test", "-p", "vcpu-runtime", "--features", "std"])));
    if quick {
        plan.skipped.push(("loom".into(), "--quick".into()));
    } else {
        steps.push(Step::run(
            "loom",
            Cmd::cargo(["test", "-p", "loom-tests", "--release", "--target-dir", LOOM_TARGET_DIR])
                .env("RUSTFLAGS", "--cfg loom")
                .env("LOOM_MAX_PREEMPTIONS", "2"),
        ));
    }
    if quick {
        plan.skipped.push(("fuzz".into(), "--quick".into()));
    } else if root.join(FUZZ_DIR).join("Cargo.toml").is_file() {
        // The checkpoint reader against hostile input, for a bounded time (docs/checkpoint-format.md).
        steps.push(Step { name: "fuzz tools".into(), action: Action::EnsureFuzz });
        let time = format!("-max_total_time={FUZZ_SECONDS}");
        steps.push(Step::run(
            "fuzz checkpoint reader",
            Cmd::new("rustup", ["run", "nightly", "cargo", "fuzz", "run", "decode", "--", &time]).in_dir(FUZZ_DIR),
        ));
    }
    for dir in EL2_CRATES {
        if !root.join(dir).join("Cargo.toml").is_file() {
            plan.skipped.push((format!("el2 {dir}"), format!("no {dir}/Cargo.toml yet")));
            continue;
        }
        // Run inside the crate's directory, so that its own .cargo/config.toml (linker script,
        // rustflags) applies: cargo reads configuration from the working directory upwards.
        let up = "../".repeat(Path::new(dir).components().count());
        let target_dir = format!("{up}{EL2_TARGET_DIR}");
        let el2 = |args: &[&str]| -> Vec<String> {
            let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            all.extend(["--target", EL2_TARGET, "--target-dir", &target_dir].map(String::from));
            all
        };
        steps.push(Step::run(format!("fmt {dir}"), Cmd::cargo(["fmt", "--all", "--", "--check"]).in_dir(dir)));
        let mut clippy = el2(&["clippy"]);
        clippy.extend(["--", "-D", "warnings"].map(String::from));
        steps.push(Step::run(format!("clippy {dir}"), Cmd::cargo(clippy).in_dir(dir)));
        steps.push(Step::run(format!("build {dir}"), Cmd::cargo(el2(&["build", "--release"])).in_dir(dir)));
    }
    if quick {
        plan.skipped.push(("hw-tests".into(), "--quick".into()));
    } else if has_test_files(&root.join("hw-tests/tests")) {
        steps.push(Step { name: "qemu".into(), action: Action::EnsureQemu });
        // hw-tests/tests/linux.rs boots them; fetched here so that a missing apt or network
        // fails as its own step, not inside a test.
        steps.push(Step { name: "linux assets".into(), action: Action::EnsureLinux });
        steps
            .push(Step::run("hw-tests", Cmd::cargo(["test", "-p", "hw-tests", "--release", "--", "--test-threads=1"])));
    } else {
        plan.skipped.push(("hw-tests".into(), "no hw-tests/tests/*.rs yet".into()));
    }
    plan
}

/// Whether `dir` holds an integration test: a `*.rs` file or a directory with a `main.rs`.
fn has_test_files(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let p = e.path();
        (p.is_file() && p.extension().is_some_and(|x| x == "rs")) || (p.is_dir() && p.join("main.rs").is_file())
    })
}

/// `cargo xtask test [--quick]`: runs the plan, stops at the first failure, prints a summary.
pub fn test(ctx: &Ctx, quick: bool) -> Result<(), Error> {
    let plan = test_plan(&ctx.root, quick);
    let total = plan.steps.len();
    println!("xtask: test: {total} steps{}", if quick { " (--quick: no loom, no QEMU tests)" } else { "" });
    let mut done: Vec<(&Step, Duration, bool)> = Vec::new();
    let mut failure = None;
    for (i, step) in plan.steps.iter().enumerate() {
        println!("\nxtask: [{}/{total}] {}", i + 1, step.name);
        let start = Instant::now();
        let result = step.execute(ctx);
        done.push((step, start.elapsed(), result.is_ok()));
        if let Err(e) = result {
            failure = Some((step, e));
            break;
        }
    }

    println!("\nxtask: summary");
    for (step, took, ok) in &done {
        let status = if *ok { "ok" } else { "FAILED" };
        println!("  {status:<7} {:>8}  {}", fmt_duration(*took), step.name);
    }
    for step in plan.steps.iter().skip(done.len()) {
        println!("  {:<7} {:>8}  {}", "not run", "", step.name);
    }
    for (name, why) in &plan.skipped {
        println!("  {:<7} {:>8}  {name} ({why})", "skipped", "");
    }
    let passed = done.iter().filter(|(_, _, ok)| *ok).count();
    let failed = done.len() - passed;
    if let Some((step, e)) = &failure {
        println!("xtask: step `{}` failed: {e}", step.name);
        println!("xtask: rerun it with: {}", step.rerun_line());
    }
    println!("xtask: {passed} passed, {failed} failed");
    match failure {
        Some(_) => Err(Error::reported(1)),
        None => Ok(()),
    }
}

fn fmt_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        let s = d.as_secs();
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// `cargo xtask sim SCENARIO [ARGS...]`.
pub fn sim(ctx: &Ctx, scenario: &str, args: &[String]) -> Result<(), Error> {
    // A built-in trace (`builtin:audio:25`) is hvsim's to resolve.
    let scenario =
        if scenario.starts_with("builtin:") { scenario.to_string() } else { resolve_scenario(ctx, scenario)? };
    hvsim(&scenario, args).run(ctx)
}

fn hvsim(scenario: &str, args: &[String]) -> Cmd {
    let mut all: Vec<String> = ["run", "--release", "-p", "platform-sim", "--bin", "hvsim", "--", scenario]
        .iter()
        .map(|s| s.to_string())
        .collect();
    all.extend(args.iter().cloned());
    Cmd::cargo(all)
}

/// Finds a scenario given as a path relative to the current directory, a path relative to the
/// workspace root, or a name in `scenarios/` (with or without `.toml`). Returns a path usable
/// from the root (relative when it is inside the workspace).
pub fn resolve_scenario(ctx: &Ctx, given: &str) -> Result<String, Error> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| ctx.root.clone());
    let candidates: Vec<PathBuf> = vec![
        cwd.join(given),
        ctx.root.join(given),
        ctx.root.join("scenarios").join(given),
        ctx.root.join("scenarios").join(format!("{given}.toml")),
    ];
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        let found = found.canonicalize().unwrap_or_else(|_| found.clone());
        let root = ctx.root.canonicalize().unwrap_or_else(|_| ctx.root.clone());
        let shown = found.strip_prefix(&root).unwrap_or(&found);
        return Ok(shown.to_string_lossy().into_owned());
    }
    let known = list_scenarios(&ctx.root);
    Err(Error::new(format!(
        "scenario `{given}` not found; scenarios in scenarios/: {}",
        if known.is_empty() { "none yet".to_string() } else { known.join(", ") }
    )))
}

fn list_scenarios(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("scenarios"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    names.sort();
    names
}

/// `cargo xtask bench [NAME]`.
pub fn bench(ctx: &Ctx, only: Option<Bench>) -> Result<(), Error> {
    let selected: Vec<Bench> = match only {
        Some(b) => vec![b],
        None => BENCHES.to_vec(),
    };
    for b in &selected {
        println!("xtask: bench {}: {}", b.name, b.about);
        if b.name == "qemu" {
            crate::pathlen::run(ctx, crate::pathlen::ALL)?;
        } else if b.name == "live" {
            crate::live_bench::run_bench(ctx)?;
        } else if b.name == "linux" {
            crate::linux::bench::run(ctx)?;
        } else if b.name == "energy" {
            Cmd::cargo([
                "run",
                "--release",
                "-p",
                "platform-sim",
                "--bin",
                "energy-table",
                "--",
                "--out",
                "docs/energy-table.md",
            ])
            .run(ctx)?;
        } else {
            Cmd::cargo(["bench", "-p", b.package]).run(ctx)?;
        }
        if b.name == "migrate" {
            // The vCPU move between cores (issue 5), with the switch its goal is a multiple of;
            // measured by `qemu` already when every group runs.
            match only {
                Some(_) => crate::pathlen::run(ctx, crate::pathlen::MOVE)?,
                None => println!("xtask: bench migrate: the vCPU move between cores is in `bench qemu`'s table above"),
            }
        }
    }
    // Only the groups with a package are criterion benches.
    if selected.iter().all(|b| b.package.is_empty()) {
        return Ok(());
    }
    let report = ctx.target_dir().join("criterion/report/index.html");
    let shown = report.strip_prefix(&ctx.root).unwrap_or(&report);
    println!(
        "xtask: criterion reports: {} (one directory per benchmark under {})",
        shown.display(),
        shown.parent().and_then(Path::parent).unwrap_or(shown).display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh empty directory under the system temp dir.
    fn temp_root(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn names(plan: &Plan) -> Vec<&str> {
        plan.steps.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn full_plan_without_el2_or_hw_tests() {
        let root = temp_root("bare");
        let plan = test_plan(&root, false);
        assert_eq!(
            names(&plan),
            [
                "rust target",
                "fmt",
                "clippy",
                "clippy vcpu-runtime/std",
                "no_std runtime crates",
                "test",
                "test vcpu-runtime/std",
                "loom"
            ]
        );
        assert_eq!(plan.steps[5].rerun_line(), "cargo test --workspace --exclude hw-tests");
        let loom = &plan.steps[7];
        assert_eq!(
            loom.rerun_line(),
            "RUSTFLAGS='--cfg loom' LOOM_MAX_PREEMPTIONS=2 \
             cargo test -p loom-tests --release --target-dir target/loom"
        );
        assert_eq!(plan.skipped.len(), 3); // two EL2 crates, hw-tests
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn quick_skips_loom_and_hw_tests() {
        let root = temp_root("quick");
        std::fs::create_dir_all(root.join("hw-tests/tests")).unwrap();
        std::fs::write(root.join("hw-tests/tests/boot.rs"), "").unwrap();
        let quick = test_plan(&root, true);
        assert!(!names(&quick).contains(&"loom"));
        assert!(!names(&quick).contains(&"hw-tests"));
        let full = test_plan(&root, false);
        assert!(names(&full).ends_with(&["qemu", "linux assets", "hw-tests"]));
        assert_eq!(full.steps.last().unwrap().rerun_line(), "cargo test -p hw-tests --release -- --test-threads=1");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn el2_steps_only_for_existing_manifests() {
        let root = temp_root("el2");
        std::fs::create_dir_all(root.join("platform/qemu-virt")).unwrap();
        std::fs::write(root.join("platform/qemu-virt/Cargo.toml"), "").unwrap();
        let plan = test_plan(&root, true);
        let el2: Vec<&Step> = plan.steps.iter().filter(|s| s.name.ends_with("platform/qemu-virt")).collect();
        assert_eq!(el2.len(), 3);
        assert_eq!(
            el2[1].rerun_line(),
            "cd platform/qemu-virt && cargo clippy --target aarch64-unknown-none-softfloat \
             --target-dir ../../target/el2 -- -D warnings"
        );
        assert_eq!(
            el2[2].rerun_line(),
            "cd platform/qemu-virt && cargo build --release --target aarch64-unknown-none-softfloat \
             --target-dir ../../target/el2"
        );
        assert!(!names(&plan).iter().any(|n| n.contains("guests")));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn scenarios_resolve_by_path_or_name() {
        let root = temp_root("scen");
        std::fs::create_dir_all(root.join("scenarios")).unwrap();
        std::fs::write(root.join("scenarios/phone-dual.toml"), "").unwrap();
        let ctx = Ctx { root: root.clone(), cargo: "cargo".into() };
        for given in ["scenarios/phone-dual.toml", "phone-dual.toml", "phone-dual"] {
            assert_eq!(resolve_scenario(&ctx, given).unwrap(), "scenarios/phone-dual.toml", "{given}");
        }
        let e = resolve_scenario(&ctx, "nope").unwrap_err().to_string();
        assert!(e.contains("`nope` not found") && e.contains("phone-dual.toml"), "{e}");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn durations() {
        assert_eq!(fmt_duration(Duration::from_millis(1300)), "1.3s");
        assert_eq!(fmt_duration(Duration::from_secs(125)), "2m05s");
    }
}
