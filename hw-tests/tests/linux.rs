//! Linux guests: the Debian arm64 kernel and the busybox initramfs of `cargo xtask linux`
//! (docs/linux-guests.md), first directly on QEMU (the baseline), then on the hypervisor.
//!
//! Every run checks that init printed its start marker and `LINUX-TEST: PASS NAME`, and that the
//! kernel printed none of the [`LINUX_FAILURE_PATTERNS`] (panics, oopses, RCU stalls, lockups,
//! call traces). On bare QEMU, QEMU must end by itself with status 0 (init's `poweroff -f` is
//! PSCI `SYSTEM_OFF`). On the hypervisor the guest's `SYSTEM_OFF` stops only that guest
//! (`guest NAME: stopped (off)`) and the hypervisor ends the run cleanly once every guest has
//! stopped; the guest's lines are the console lines prefixed `[NAME] `, and the trace must show
//! no `fault` event of a Linux guest. One run asks for something false and must see
//! `LINUX-TEST: FAIL`, so a test script that cannot fail is caught.

use std::time::Duration;

use hw_tests::{bare_linux_args, linux_assets, run, run_with_args, QemuConfig, Run, LINUX_FAILURE_PATTERNS};
use vcpu_runtime::trace::TraceKind;

/// A boot takes 3-4 s alone on QEMU's TCG; a loaded 2-core host can make it several times
/// longer.
const TIMEOUT: Duration = Duration::from_secs(240);

/// CPUs of every bare-QEMU run: the hotplug test needs a second one.
const SMP: u32 = 2;

/// Each test script with its parameters (the kernel command line after the console).
const SCRIPTS: &[(&str, &str)] = &[
    ("boot", "test=boot test.cpus=2"),
    ("hotplug", "test=hotplug test.rounds=2"),
    ("busy", "test=busy test.seconds=2 test.idle=1"),
    ("idle", "test=idle test.seconds=2"),
    ("phases", "test=phases test.light=1 test.seconds=1 test.idle=1"),
    ("ticks", "test=ticks test.seconds=2"),
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
            "phases" => {
                for phase in ["light", "heavy", "heavy done", "light-again"] {
                    run.assert_present(&format!("phases: {phase} uptime="));
                }
                run.assert_present("phases: job 2 loops=");
            }
            "ticks" => run.assert_present("ticks: 2 uptime="),
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

// ---- On the hypervisor ----

/// Boots `scenarios/SCENARIO.toml` on the hypervisor with `smp` cores of model `cpu` and the
/// boot arguments `hv.trace=events APPEND` (the per-switch events would print thousands of
/// lines for a Linux boot).
fn on_hypervisor(scenario: &str, smp: u32, cpu: &str, append: &str) -> Run {
    let config = QemuConfig::new(smp, cpu)
        .scenario(scenario)
        .append(format!("hv.trace=events {append}").trim_end())
        .timeout(TIMEOUT);
    hypervisor_run(&config, scenario)
}

fn hypervisor_run(config: &QemuConfig, what: &str) -> Run {
    let r = run(config);
    eprintln!("hw-tests: linux: {what}: {}", r.summary());
    r
}

/// The hypervisor ended cleanly once every guest had stopped.
#[track_caller]
fn assert_hypervisor_clean(r: &Run) {
    r.assert_clean();
    r.assert_present("hypervisor: all guests stopped after");
}

/// Linux guest `guest` ran init's test `test` to `LINUX-TEST: PASS`, printed none of the
/// [`LINUX_FAILURE_PATTERNS`], and ended itself with `SYSTEM_OFF`; no `fault` event of its VM
/// is in the trace. Returns its console lines.
#[track_caller]
fn assert_linux_passed<'a>(r: &'a Run, guest: &'a str, test: &str) -> Vec<&'a str> {
    let lines: Vec<&str> = r.guest_lines(guest).collect();
    if !lines.iter().any(|l| l.starts_with(&format!("LINUX-INIT: started test={test} "))) {
        r.fail(&format!("guest `{guest}`: init did not start test {test}"));
    }
    if let Some(line) = lines.iter().find(|l| l.starts_with("LINUX-TEST: FAIL")) {
        r.fail(&format!("guest `{guest}`: {line}"));
    }
    if !lines.iter().any(|l| l.starts_with(&format!("LINUX-TEST: PASS {test}"))) {
        r.fail(&format!("guest `{guest}` did not print `LINUX-TEST: PASS {test}`"));
    }
    for line in &lines {
        if let Some(p) = LINUX_FAILURE_PATTERNS.iter().find(|p| line.contains(*p)) {
            r.fail(&format!("guest `{guest}` printed `{p}`: {line:?}"));
        }
    }
    r.assert_present(&format!("guest {guest}: stopped (off)"));
    let events = r.trace_events().unwrap_or_else(|e| r.fail(&e));
    let vm = vm_of(r, guest);
    let faults: Vec<String> = events
        .iter()
        .filter(|e| matches!(e.kind, TraceKind::GuestFault { vm: v, .. } if v.0 == vm))
        .map(|e| e.to_string())
        .collect();
    if !faults.is_empty() {
        r.fail(&format!("guest `{guest}` faulted: {faults:?}"));
    }
    lines
}

/// The VM number of guest `name`, from the hypervisor's `vm N "NAME": ...` line.
#[track_caller]
fn vm_of(r: &Run, name: &str) -> u16 {
    let quoted = format!(" \"{name}\": ");
    r.lines()
        .find_map(|l| l.strip_prefix("vm ").filter(|rest| rest.contains(&quoted))?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| r.fail(&format!("no `vm N \"{name}\"` line")))
}

fn boots_on(smp: u32) {
    let r = on_hypervisor("linux", smp, "cortex-a57", "");
    assert_hypervisor_clean(&r);
    assert_linux_passed(&r, "linux", "boot");
    // Both vCPUs came up (test.cpus=2), through the guest's PSCI CPU_ON.
    r.assert_guest_line("linux", "LINUX-TEST: PASS boot cpus=2 nproc=2");
    r.assert_guest_line("linux", "smp: Brought up 1 node, 2 CPUs");
}

#[test]
fn linux_boots_on_the_hypervisor_smp1() {
    boots_on(1);
}

#[test]
fn linux_boots_on_the_hypervisor_smp2() {
    boots_on(2);
}

#[test]
fn linux_boots_on_the_hypervisor_smp4() {
    boots_on(4);
}

/// `echo 0 > /sys/devices/system/cpu/cpu1/online` and back, three times: the kernel's CPU_OFF
/// parks the vCPU and its CPU_ON starts it again.
#[test]
fn linux_cpu_hotplug_on_the_hypervisor() {
    let r = on_hypervisor("linux-hotplug", 2, "cortex-a57", "");
    assert_hypervisor_clean(&r);
    assert_linux_passed(&r, "linux", "hotplug");
    for round in 1..=3 {
        r.assert_guest_line("linux", &format!("hotplug: round {round} cpu1 online=0 cpus=1"));
        r.assert_guest_line("linux", &format!("hotplug: round {round} cpu1 online=1 cpus=2"));
    }
    r.assert_guest_line("linux", "LINUX-TEST: PASS hotplug rounds=3 transitions=6 cpus=2");
    let events = r.trace_events().unwrap_or_else(|e| r.fail(&e));
    let parks = events.iter().filter(|e| matches!(e.kind, TraceKind::VcpuPark { vcpu, .. } if vcpu.0 == 1)).count();
    let unparks = events.iter().filter(|e| matches!(e.kind, TraceKind::VcpuUnpark { vcpu, .. } if vcpu.0 == 1)).count();
    // Parked at its CPU_OFF three times (and once more at the end); started at boot and after
    // each round.
    assert!(parks >= 3 && unparks >= 4, "vCPU 1 parked {parks} times, unparked {unparks} times");
}

/// Runs before the real-time guest's misses fail a test: QEMU's counter follows the host's
/// clock and each guest core is a host thread, so a host hiccup can stretch the RT guest's 2 ms
/// job past its period without the hypervisor being at fault (as in the `rt` and power tests).
const RT_ATTEMPTS: u32 = 4;

/// Runs `config` until the `rt` guest misses nothing, at most [`RT_ATTEMPTS`] times.
fn with_rt_retries(config: &QemuConfig, what: &str) -> Run {
    let mut attempt = 1;
    loop {
        let r = hypervisor_run(config, &format!("{what} (attempt {attempt})"));
        let misses = r.guest_lines("rt").any(|l| l.starts_with("rt: miss in period"));
        if !misses || attempt == RT_ATTEMPTS {
            return r;
        }
        attempt += 1;
    }
}

/// Two Linux guests of 2 vCPUs and the RT guest on two cores: both Linux guests finish their
/// scripts (one CPU-bound, one unplugging a CPU), each one's SYSTEM_OFF stops only itself, and
/// the RT guest misses no deadline over the whole 12 s.
#[test]
fn two_linux_guests_and_the_rt_guest_share_two_cores() {
    let config = QemuConfig::new(2, "cortex-a57").scenario("linux-pair").append("hv.trace=events").timeout(TIMEOUT);
    let r = with_rt_retries(&config, "linux-pair");
    assert_hypervisor_clean(&r);
    assert_linux_passed(&r, "work", "busy");
    r.assert_guest_line("work", "busy: job 2 loops=");
    assert_linux_passed(&r, "personal", "hotplug");
    r.assert_guest_line("personal", "LINUX-TEST: PASS hotplug rounds=2 transitions=4 cpus=2");
    r.assert_guest_passed("rt");
    r.assert_guest_line("rt", "rt periods=1200 misses=0");
    // A Linux guest's SYSTEM_OFF ends only that guest: the RT guest went on after the first
    // one powered off, to its last period.
    let line_of = |pattern: &str| r.lines().position(|l| l.contains(pattern));
    let rt_done = line_of("[rt] rt periods=").unwrap_or_else(|| r.fail("no rt result"));
    let first_off = ["work", "personal"].iter().filter_map(|g| line_of(&format!("guest {g}: stopped (off)"))).min();
    assert!(first_off.is_some_and(|off| off < rt_done), "no Linux guest stopped before the rt guest finished");
    for s in r.stats() {
        assert_eq!(s.state(), "stopped", "{s:?}");
    }
}
