//! The test guests' own self-check, directly on QEMU (no hypervisor).
//!
//! Builds `guests/` once (release, `aarch64-unknown-none-softfloat`, into `target/el2`), then
//! boots each guest on `qemu-system-aarch64 -M virt,gic-version=3 -cpu cortex-a57 -smp 4
//! -m 256M` at EL1, which is the platform of docs/guest-abi.md without a hypervisor, and checks
//! its console: `RESULT: PASS`, QEMU's exit status 0, no panic, and each guest's own lines.
//! The same guests later run under the hypervisor.
//!
//! QEMU runs one at a time (a lock), so the real-time guest is not disturbed by another QEMU
//! even when the test harness runs tests in parallel. Set `GUESTS_QEMU` to use another QEMU
//! binary. Without QEMU the tests fail: they run in `cargo xtask test`'s hw-tests step, which
//! installs QEMU first.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

/// How long one guest may run before QEMU is killed.
const TIMEOUT: Duration = Duration::from_secs(30);
/// vCPUs given to every guest.
const SMP: usize = 4;
/// Real-time attempts of the `rt` guest. Its virtual counter follows the host's clock, so a run
/// misses deadlines whenever the host leaves QEMU without a CPU for several milliseconds (seen
/// on a loaded 2-core machine: release latencies of 5-90 ms), which says nothing about the guest.
const RT_ATTEMPTS: usize = 3;
/// After [`RT_ATTEMPTS`] runs that failed only by missing deadlines, one more run in QEMU's
/// instruction-count mode: virtual time advances with the instructions executed (8 ns each) and
/// skips idle time, so the host's load cannot delay anything and `misses=0` is deterministic for
/// a correct guest.
const RT_ICOUNT: &[&str] = &["-icount", "shift=3,sleep=off"];

/// The QEMU binary, if there is one.
fn qemu() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("GUESTS_QEMU") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("qemu-system-aarch64")).find(|p| p.is_file())
}

/// Fails the test when QEMU is missing: these tests run in `cargo xtask test`'s hw-tests step,
/// which installs QEMU first; a missing QEMU is a broken set-up, never a reason to skip.
fn require_qemu() {
    if qemu().is_none() {
        panic!("no qemu-system-aarch64 on PATH: install qemu-system-arm (cargo xtask test does) or set GUESTS_QEMU");
    }
}

/// What one QEMU run gave.
struct Run {
    guest: String,
    status: Option<i32>,
    timed_out: bool,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Run {
    fn lines(&self) -> impl Iterator<Item = &str> {
        self.stdout.lines().map(|l| l.trim_end_matches('\r'))
    }

    fn has_line(&self, line: &str) -> bool {
        self.lines().any(|l| l == line)
    }

    /// The value of `key=` in the first line that starts with `prefix`.
    fn field(&self, prefix: &str, key: &str) -> Option<u64> {
        let line = self.lines().find(|l| l.starts_with(prefix))?;
        let pattern = format!("{key}=");
        let rest = &line[line.find(&pattern)? + pattern.len()..];
        rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    }

    fn dump(&self) -> String {
        format!(
            "guest {}: status {:?}{} after {:.2}s\n--- console ---\n{}--- stderr ---\n{}",
            self.guest,
            self.status,
            if self.timed_out { " (timed out, killed)" } else { "" },
            self.took.as_secs_f64(),
            self.stdout,
            self.stderr
        )
    }

    /// What every guest must show: PASS, exit status 0, no panic.
    fn check_common(&self) -> Result<(), String> {
        if self.timed_out {
            return Err(format!("timed out after {TIMEOUT:?}"));
        }
        if self.status != Some(0) {
            return Err(format!("QEMU exit status {:?}, expected 0", self.status));
        }
        if self.stdout.to_lowercase().contains("panic") || self.stderr.to_lowercase().contains("panic") {
            return Err("the output mentions a panic".into());
        }
        if !self.has_line("RESULT: PASS") {
            return Err("no `RESULT: PASS` line".into());
        }
        if self.lines().any(|l| l.starts_with("RESULT: FAIL")) {
            return Err("a `RESULT: FAIL` line".into());
        }
        Ok(())
    }
}

/// Boots `guest` on QEMU without a hypervisor and collects its console, one QEMU at a time.
fn run_guest(guest: &str) -> Run {
    run_guest_with(guest, &[])
}

/// [`run_guest`] with extra QEMU arguments.
fn run_guest_with(guest: &str, extra: &[&str]) -> Run {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let elf = hw_tests::guests_dir().join(guest);
    assert!(elf.is_file(), "no guest ELF at {}", elf.display());
    let qemu = qemu().expect("checked by require_qemu");
    let _lock = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());

    let start = Instant::now();
    let mut child = Command::new(&qemu)
        .args(["-M", "virt,gic-version=3", "-cpu", "cortex-a57", "-smp", &SMP.to_string(), "-m", "256M"])
        .args(["-nographic", "-nic", "none", "-no-reboot"])
        .args(extra)
        .arg("-kernel")
        .arg(&elf)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", qemu.display()));
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });

    let mut timed_out = false;
    let status = loop {
        match child.try_wait().expect("wait for QEMU") {
            Some(status) => break status,
            None if start.elapsed() > TIMEOUT => {
                timed_out = true;
                let _ = child.kill();
                break child.wait().expect("wait for killed QEMU");
            }
            None => thread::sleep(Duration::from_millis(10)),
        }
    };
    let took = start.elapsed();
    let stdout = String::from_utf8_lossy(&out_reader.join().expect("stdout reader")).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().expect("stderr reader")).into_owned();
    let run = Run { guest: guest.into(), status: status.code(), timed_out, stdout, stderr, took };
    eprintln!("guests_native: {guest} ran {:.2}s, status {:?}", took.as_secs_f64(), run.status);
    run
}

/// Runs `guest` and applies the common checks and `check`; panics with the console on failure.
fn run_and_check(guest: &str, check: impl Fn(&Run) -> Result<(), String>) -> Run {
    let run = run_guest(guest);
    if let Err(why) = run.check_common().and_then(|()| check(&run)) {
        panic!("{why}\n{}", run.dump());
    }
    run
}

#[test]
fn counter() {
    require_qemu();
    run_and_check("counter", |run| {
        let steps = run.field("counter: steps=", "steps").ok_or("no `counter: steps=` line")?;
        for step in 1..=steps {
            let prefix = format!("progress {step}/{steps} ");
            if !run.lines().any(|l| l.starts_with(&prefix)) {
                return Err(format!("no `{prefix}` line"));
            }
        }
        run.field("counter: done", "count").ok_or("no `counter: done` line")?;
        Ok(())
    });
}

#[test]
fn bench() {
    require_qemu();
    run_and_check("bench", |run| {
        for op in ["0 (baseline)", "1 (null)", "2 (sgi-self)", "3 (ipi-send)", "4 (yield)"] {
            let line = format!("bench: op {op} ran ");
            if !run.lines().any(|l| l.starts_with(&line)) {
                return Err(format!("no `{line}` line"));
            }
        }
        Ok(())
    });
}

#[test]
fn fpu() {
    require_qemu();
    run_and_check("fpu", |run| {
        for cpu in 0..SMP {
            let line = format!("fpu: cpu {cpu} rounds=300 mismatches=0");
            if !run.has_line(&line) {
                return Err(format!("no `{line}` line"));
            }
        }
        Ok(())
    });
}

#[test]
fn smp() {
    require_qemu();
    run_and_check("smp", |run| {
        let secondaries = run.field("smp: secondaries=", "secondaries").ok_or("no `smp: secondaries=` line")?;
        if secondaries != (SMP - 1) as u64 {
            return Err(format!("{secondaries} secondaries started, expected {}", SMP - 1));
        }
        for cpu in 1..SMP {
            let reported = format!("smp: cpu {cpu} reported ");
            if !run.lines().any(|l| l.starts_with(&reported)) {
                return Err(format!("cpu {cpu} did not report"));
            }
            let stopped = format!("smp: cpu {cpu} stopping pings=3 broadcasts=1");
            if !run.has_line(&stopped) {
                return Err(format!("no `{stopped}` line"));
            }
        }
        for phase in 1..=4 {
            let prefix = format!("smp: phase {phase} ok");
            if !run.lines().any(|l| l.starts_with(&prefix)) {
                return Err(format!("no `{prefix}` line"));
            }
        }
        Ok(())
    });
}

#[test]
fn rt() {
    require_qemu();
    let check = |run: &Run| -> Result<(), String> {
        let periods = run.field("rt periods=", "periods").ok_or("no `rt periods=` line")?;
        let misses = run.field("rt periods=", "misses").ok_or("no `misses=` on the `rt periods=` line")?;
        if periods < 100 {
            return Err(format!("only {periods} periods"));
        }
        if misses != 0 {
            return Err(format!("misses={misses}"));
        }
        Ok(())
    };
    let missed_only = |run: &Run| {
        run.status == Some(0)
            && run.lines().any(|l| l.starts_with("RESULT: FAIL misses="))
            && run.field("rt periods=", "misses").is_some_and(|m| m > 0)
    };
    for attempt in 1..=RT_ATTEMPTS {
        let run = run_guest("rt");
        if missed_only(&run) {
            eprintln!("guests_native: rt attempt {attempt} missed deadlines (host noise?):\n{}", run.dump());
            continue;
        }
        if let Err(why) = run.check_common().and_then(|()| check(&run)) {
            panic!("{why} (attempt {attempt})\n{}", run.dump());
        }
        return;
    }
    eprintln!(
        "guests_native: rt missed deadlines in {RT_ATTEMPTS} real-time runs; checking it in instruction-count mode"
    );
    let run = run_guest_with("rt", RT_ICOUNT);
    if let Err(why) = run.check_common().and_then(|()| check(&run)) {
        panic!("{why} (with {RT_ICOUNT:?}, after {RT_ATTEMPTS} real-time runs that missed deadlines)\n{}", run.dump());
    }
}

#[test]
fn dirtier() {
    require_qemu();
    run_and_check("dirtier", |run| {
        let rounds = run.field("dirtier: done", "rounds").ok_or("no `dirtier: done` line")?;
        for round in 1..=rounds {
            let prefix = format!("dirtier round {round}/{rounds} ok ");
            if !run.lines().any(|l| l.starts_with(&prefix)) {
                return Err(format!("no `{prefix}` line"));
            }
        }
        Ok(())
    });
}

#[test]
fn misbehave() {
    require_qemu();
    run_and_check("misbehave", |run| {
        if !run.has_line("misbehave: platform=bare-qemu") {
            return Err("the guest did not see bare QEMU".into());
        }
        let steps: Vec<&str> = run.lines().filter(|l| l.starts_with("misbehave: step ")).collect();
        let total = run.field("misbehave: steps=", "steps").ok_or("no `misbehave: steps=` line")?;
        if steps.len() as u64 != total || total < 11 {
            return Err(format!("{} step lines, summary says {total}", steps.len()));
        }
        if let Some(bad) = steps.iter().find(|l| !l.ends_with(" ok")) {
            return Err(format!("unexpected answer: {bad}"));
        }
        // What bare QEMU answers (docs/guests.md): aborts for memory nobody has, NOT_SUPPORTED for
        // unknown HVCs, an undefined instruction for SMC, ignored writes to read-only UART registers.
        for (step, what) in [
            ("stage2-read", "data-abort"),
            ("stage2-write", "data-abort"),
            ("device-hole-read", "data-abort"),
            ("hvc-unknown", "returned NOT_SUPPORTED"),
            ("smc", "undefined-instruction"),
            ("uart-write-fr", "write-ignored"),
        ] {
            let prefix = format!("misbehave: step {step}: {what}");
            if !steps.iter().any(|l| l.starts_with(&prefix)) {
                return Err(format!("no `{prefix}` line"));
            }
        }
        Ok(())
    });
}
