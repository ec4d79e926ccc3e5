//! The Linux guest's kernel and initramfs (`cargo xtask linux`, docs/linux-guests.md) directly
//! on QEMU, with no hypervisor: the baseline the hypervisor's Linux guests are held to.
//!
//! Each run boots the Debian arm64 kernel on `-smp 2` with a test picked on the kernel command
//! line and checks that init printed its start marker and `LINUX-TEST: PASS NAME`, that QEMU
//! ended by itself with status 0 (init's `poweroff -f` is PSCI `SYSTEM_OFF`), and that the
//! kernel printed none of the [`LINUX_FAILURE_PATTERNS`]. One run asks for something false and
//! must see `LINUX-TEST: FAIL`, so a test script that cannot fail is caught.

use std::time::Duration;

use hw_tests::{bare_linux_args, linux_assets, run_with_args, QemuConfig, Run, LINUX_FAILURE_PATTERNS};

/// A boot takes 3-4 s alone on QEMU's TCG; a loaded 2-core host can make it several times
/// longer.
const TIMEOUT: Duration = Duration::from_secs(120);

/// CPUs of every run: the hotplug test needs a second one.
const SMP: u32 = 2;

/// Each test script with its parameters (the kernel command line after the console).
const SCRIPTS: &[(&str, &str)] = &[
    ("boot", "test=boot test.cpus=2"),
    ("hotplug", "test=hotplug test.rounds=2"),
    ("busy", "test=busy test.seconds=2 test.idle=1"),
    ("idle", "test=idle test.seconds=2"),
];

/// Boots the assets on bare QEMU with `console=ttyAMA0 ARGS` as the command line.
fn boot(args: &str) -> Run {
    let config = QemuConfig::new(SMP, "cortex-a57").timeout(TIMEOUT).append(&format!("console=ttyAMA0 {args}"));
    let run = run_with_args(&config, bare_linux_args(&config, linux_assets()));
    eprintln!("linux: {}", run.summary());
    run
}

/// QEMU ended by itself with 0, init started, and the kernel printed no failure pattern.
#[track_caller]
fn assert_clean_boot(run: &Run) {
    run.assert_exit(0);
    if !run.lines().any(|l| l.starts_with("LINUX-INIT: started ")) {
        run.fail("init did not print `LINUX-INIT: started`");
    }
    for pattern in LINUX_FAILURE_PATTERNS {
        run.assert_absent(pattern);
    }
}

#[test]
fn linux_boots_on_bare_qemu() {
    for (name, args) in SCRIPTS {
        let run = boot(args);
        assert_clean_boot(&run);
        if let Some(line) = run.lines().find(|l| l.starts_with("LINUX-TEST: FAIL")) {
            run.fail(&format!("test {name} failed: {line}"));
        }
        run.assert_present(&format!("LINUX-TEST: PASS {name}"));
        // What each script checked, as it reported it.
        match *name {
            "boot" => run.assert_present("LINUX-TEST: PASS boot cpus=2 nproc=2"),
            "hotplug" => {
                run.assert_present("hotplug: round 2 cpu1 online=0 cpus=1");
                run.assert_present("LINUX-TEST: PASS hotplug rounds=2 transitions=4 cpus=2");
            }
            "busy" => run.assert_present("busy: job 2 loops="),
            _ => {}
        }
    }
}

#[test]
fn linux_test_failures_are_reported() {
    let run = boot("test=boot test.cpus=3");
    assert_clean_boot(&run);
    run.assert_present("LINUX-TEST: FAIL boot 2 CPUs online, test.cpus=3");
    run.assert_absent("LINUX-TEST: PASS");
}
