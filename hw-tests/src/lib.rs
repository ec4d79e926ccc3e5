//! Boots the EL2 hypervisor under QEMU and checks how it ends and what it printed.
//!
//! [`image`] builds the hypervisor once per test process (release, `platform/qemu-virt`, target
//! directory `target/el2`, as `cargo xtask qemu` does); [`run`] boots it with a
//! [`QemuConfig`], kills QEMU after the timeout, and returns a [`Run`]: the exit code, the
//! console output, how long it took. The `Run` helpers check the exit code, patterns that must
//! or must not appear (the [`FAILURE_PATTERNS`]), and the trace lines.
//!
//! The QEMU command line is the one `cargo xtask qemu` uses (xtask/src/qemu.rs): keep the two
//! in step.

use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use vcpu_runtime::trace::{self, TraceEvent};

/// Text that must not appear in a clean run's output: the hypervisor prints these words only
/// when something went wrong (`panic on core ...`, `EL2 exception on core ...`, `FAIL: ...`).
pub const FAILURE_PATTERNS: &[&str] = &["panic", "exception", "FAIL"];

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
}

impl QemuConfig {
    /// `smp` cores of model `cpu`, a 60 s timeout, no icount, no boot arguments.
    pub fn new(smp: u32, cpu: &str) -> QemuConfig {
        QemuConfig { smp, cpu: cpu.into(), timeout: Duration::from_secs(60), icount: false, append: None }
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
        if let Some(append) = &self.append {
            args.extend(["-append".into(), append.clone()]);
        }
        args
    }
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
    pub duration: Duration,
}

/// Builds the image if needed, boots it with `config` and waits for QEMU to end (or kills it
/// at the timeout).
pub fn run(config: &QemuConfig) -> Run {
    let image = image();
    let args = config.qemu_args(image);
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
    let stdout = reader(child.stdout.take());
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
    let mut output = stdout.join().unwrap_or_default();
    let err = stderr.join().unwrap_or_default();
    if !err.trim().is_empty() {
        output.push_str("\n[qemu stderr]\n");
        output.push_str(&err);
    }
    Run { config: config.clone(), command, exit_code, timed_out, output, duration }
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

    /// The lines holding one of the [`FAILURE_PATTERNS`].
    pub fn failure_lines(&self) -> Vec<&str> {
        self.lines().filter(|l| FAILURE_PATTERNS.iter().any(|p| l.contains(p))).collect()
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
    fn fail(&self, what: &str) -> ! {
        panic!("{what}\ncommand: {}\n{}\n--- output ---\n{}\n--- end ---", self.command, self.summary(), self.output);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_with(output: &str, exit_code: Option<i32>) -> Run {
        Run {
            config: QemuConfig::new(2, "cortex-a57"),
            command: "qemu".into(),
            exit_code,
            timed_out: false,
            output: output.into(),
            duration: Duration::from_millis(5),
        }
    }

    #[test]
    fn qemu_args_match_xtask() {
        let c = QemuConfig::new(4, "max").append("hv.selftest=panic");
        assert_eq!(
            c.qemu_args(Path::new("img")).join(" "),
            "-M virt,virtualization=on,gic-version=3 -cpu max -smp 4 -m 1G -nographic -nic none -no-reboot \
             -semihosting-config enable=on,target=native -kernel img -append hv.selftest=panic"
        );
        let c = QemuConfig { icount: true, ..QemuConfig::new(1, "cortex-a57") };
        assert!(c.qemu_args(Path::new("img")).join(" ").contains("-icount shift=4,sleep=off -kernel img"));
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
