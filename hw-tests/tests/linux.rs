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

use std::path::{Path, PathBuf};
use std::time::Duration;

use hw_tests::{bare_linux_args, linux_assets, rtmiss, run, run_with_args, QemuConfig, Run, LINUX_FAILURE_PATTERNS};
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

/// No line of the hypervisor's own (guest lines, `[NAME] ...`, aside) shows a failure pattern:
/// for runs where a guest's own verdict is allowed to fail.
#[track_caller]
fn assert_hypervisor_lines_clean(r: &Run) {
    let bad: Vec<&str> = r
        .lines()
        .filter(|l| !l.starts_with('['))
        .filter(|l| hw_tests::FAILURE_PATTERNS.iter().any(|p| l.contains(p)))
        .collect();
    if !bad.is_empty() {
        r.fail(&format!("the hypervisor reported a failure: {bad:?}"));
    }
}

/// Linux guest `guest` ran init's test `test` to `LINUX-TEST: PASS`, printed none of the
/// [`LINUX_FAILURE_PATTERNS`], and ended itself with `SYSTEM_OFF`; no `fault` event of its VM
/// is in the trace. Returns its console lines.
#[track_caller]
fn assert_linux_passed<'a>(r: &'a Run, guest: &'a str, test: &str) -> Vec<&'a str> {
    if !r.guest_lines(guest).any(|l| l.starts_with(&format!("LINUX-INIT: started test={test} "))) {
        r.fail(&format!("guest `{guest}`: init did not start test {test}"));
    }
    assert_linux_finished(r, guest, test)
}

/// What [`assert_linux_passed`] checks after init's start (a guest restored from a checkpoint
/// started before it).
#[track_caller]
fn assert_linux_finished<'a>(r: &'a Run, guest: &'a str, test: &str) -> Vec<&'a str> {
    let lines: Vec<&str> = r.guest_lines(guest).collect();
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

/// QEMU's `-cpu max` has SVE, SME, pointer authentication and MTE, whose state the hypervisor
/// does not switch: the guest's ID registers (trapped, `vdev::idregs`) hide them, so the kernel
/// never uses them, and boots. Its TLB maintenance is trapped too (`hv.guest-tlbi=trap`): on
/// `-cpu max` the kernel may use the outer-shareable and range forms (FEAT_TLBIOS,
/// FEAT_TLBIRANGE), which the hypervisor carries out in their local forms (`vdev::tlbi`).
#[test]
fn linux_boots_on_the_hypervisor_cpu_max() {
    let r = on_hypervisor("linux", 2, "max", "hv.guest-tlbi=trap");
    assert_hypervisor_clean(&r);
    let tlbi = r.vm_stat("linux").get("tlbi");
    assert!(tlbi > 1_000, "tlbi={tlbi}");
    r.assert_present("cpu: QEMU max");
    assert_linux_passed(&r, "linux", "boot");
    r.assert_guest_line("linux", "LINUX-TEST: PASS boot cpus=2 nproc=2");
    // What the kernel found: features of -cpu max the guest may use, none of those hidden.
    r.assert_guest_line("linux", "CPU features: detected: LSE atomic instructions");
    for hidden in
        ["Scalable Vector", "Scalable Matrix", "Address authentication", "Generic authentication", "Memory Tagging"]
    {
        if let Some(line) = r.guest_lines("linux").find(|l| l.contains(hidden)) {
            r.fail(&format!("the guest found a hidden feature: {line:?}"));
        }
    }
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
/// clock and each guest core is a host thread, so a host hiccup can stretch the RT guest's job
/// past its period without the hypervisor being at fault (as in the `rt` and power tests).
const RT_ATTEMPTS: u32 = 8;

/// How many deadline misses the RT guest printed before both Linux guests started init
/// (console order), and its miss lines after.
fn rt_misses_around_boot<'a>(r: &'a Run, linux: &[&str]) -> (usize, Vec<&'a str>) {
    lines_around_boot(r, linux, |l| l.starts_with("[rt] rt: miss in period"))
}

/// The lines matching `pattern` before both Linux guests' init started (counted), and after.
fn lines_around_boot<'a>(r: &'a Run, linux: &[&str], pattern: impl Fn(&str) -> bool) -> (usize, Vec<&'a str>) {
    let lines: Vec<&str> = r.lines().collect();
    let started = |g: &&str| lines.iter().position(|l| l.starts_with(&format!("[{g}] LINUX-INIT: started")));
    let booted = linux.iter().map(|g| started(g).unwrap_or(lines.len())).max().unwrap_or(0);
    (
        lines[..booted].iter().filter(|l| pattern(l)).count(),
        lines[booted..].iter().copied().filter(|l| pattern(l)).collect(),
    )
}

/// The scheduler's `miss` trace events (a reservation period that ended with budget left
/// while its vCPU was runnable; docs/trace-format.md) before both kernels booted, and after.
fn reservation_misses_around_boot<'a>(r: &'a Run, linux: &[&str]) -> (usize, Vec<&'a str>) {
    lines_around_boot(r, linux, |l| l.starts_with("T ") && l.contains(" miss v"))
}

/// The RT guest's own count of its misses (`rt periods=N misses=M`: late jobs and skipped
/// ticks alike); `None` without that line.
fn rt_verdict(r: &Run) -> Option<u64> {
    r.guest_lines("rt").find_map(|l| l.strip_prefix("rt periods=")?.split_once(" misses=")?.1.parse().ok())
}

/// Two Linux guests of 2 vCPUs and the RT guest on two cores: both Linux guests finish their
/// scripts (one CPU-bound, one unplugging a CPU), each one's SYSTEM_OFF stops only itself, the
/// scheduler gives the RT guest its budget before every deadline over the whole run (no `miss`
/// trace event; they must add up to the `stat vcpu` lines' `reservation_misses`), and the RT
/// guest misses no deadline in its 2,000 periods.
///
/// The guests' TLB maintenance is trapped and carried out by the hypervisor (`hv.guest-tlbi`
/// defaults to that when a guest has a reservation): a booting kernel issues some 43,000 TLB
/// invalidations, and as broadcasts each one stopped every vCPU thread of QEMU, the RT guest's
/// included (24–360 misses a run, nearly all while the kernels booted; docs/linux-guests.md).
/// What can still make a run miss is the host (itself a VM here), which now and then takes
/// QEMU's threads away for ten milliseconds or more: a 1 ms job then takes 11–22 ms with the
/// job started on time (docs/linux-guests.md, *Real-time misses*). So a run with a miss or a
/// lost period is tried again, up to [`RT_ATTEMPTS`] runs, as the `rt` and power tests do, and
/// the first run with none is judged. Each miss is said with how long QEMU's threads waited for
/// a host CPU in its window and what the RT core's thread did (`hw_tests::rtmiss`). Should
/// every run miss, the cleanest is judged and each of its misses must be the host's: QEMU's
/// measured wait for a host CPU in the miss's window at least as long as the job was late.
#[test]
fn two_linux_guests_and_the_rt_guest_share_two_cores() {
    const PERIODS: usize = 2_000;
    let config = QemuConfig::new(2, "cortex-a57").scenario("linux-pair").append("hv.trace=events").timeout(TIMEOUT);
    let linux = ["work", "personal"];
    // The first run with no miss and no lost period is judged; failing that, the cleanest:
    // fewest lost periods, then fewest misses the host's measured stalls do not explain.
    let mut best: Option<((usize, usize, u64), Run)> = None;
    for attempt in 1..=RT_ATTEMPTS {
        let r = hypervisor_run(&config, &format!("linux-pair (attempt {attempt})"));
        let (before, after) = rt_misses_around_boot(&r, &linux);
        let (lost_before, lost_after) = reservation_misses_around_boot(&r, &linux);
        let misses = rtmiss::rt_misses(&r, "rt");
        let unexplained = misses.iter().filter(|m| !m.explained()).count();
        let verdict = rt_verdict(&r);
        eprintln!(
            "hw-tests: linux-pair (attempt {attempt}): rt missed {verdict:?} deadlines; late jobs while the kernels booted: {before}, after: {} ({unexplained} misses not explained by the host); reservation periods lost while they booted: {lost_before}, after: {}",
            after.len(),
            lost_after.len()
        );
        for m in &misses {
            eprintln!("hw-tests: linux-pair:   {m}");
        }
        let score = (lost_before + lost_after.len(), unexplained, verdict.unwrap_or(u64::MAX));
        if best.as_ref().is_none_or(|(kept, _)| score < *kept) {
            best = Some((score, r));
        }
        if score == (0, 0, 0) {
            break;
        }
    }
    let (_, r) = best.expect("RT_ATTEMPTS is at least 1");
    // The hypervisor's own lines are clean (the rt guest's verdict counts every miss).
    assert_hypervisor_lines_clean(&r);
    r.assert_exit(0);
    r.assert_present("hypervisor: all guests stopped after");
    assert_linux_passed(&r, "work", "busy");
    r.assert_guest_line("work", "busy: job 2 loops=");
    assert_linux_passed(&r, "personal", "hotplug");
    r.assert_guest_line("personal", "LINUX-TEST: PASS hotplug rounds=2 transitions=4 cpus=2");
    r.assert_present("guest TLB maintenance: trapped");
    for guest in linux {
        let tlbi = r.vm_stat(guest).get("tlbi");
        assert!(tlbi > 1_000, "guest {guest}: only {tlbi} TLB maintenance instructions carried out");
    }
    let (lost_before, lost_after) = reservation_misses_around_boot(&r, &linux);
    if lost_before != 0 || !lost_after.is_empty() {
        r.fail(&format!(
            "the scheduler lost reservation periods: {lost_before} while the kernels booted, after: {lost_after:?}"
        ));
    }
    assert_eq!(
        (lost_before + lost_after.len()) as u64,
        r.reservation_periods_lost(),
        "the trace's miss events and the stat lines' reservation_misses disagree"
    );
    r.assert_guest_line("rt", &format!("rt periods={PERIODS} misses="));
    if rt_verdict(&r) != Some(0) {
        // Every run missed: each miss of the one kept must be the host's, its measured stall
        // covering how late the job was.
        let misses = rtmiss::rt_misses(&r, "rt");
        let said: Vec<String> = misses.iter().map(|m| m.to_string()).collect();
        if misses.is_empty() || misses.iter().any(|m| !m.explained()) {
            r.fail(&format!(
                "the rt guest missed deadlines in each of {RT_ATTEMPTS} runs, not all of them the host's; the cleanest run's:\n{}",
                said.join("\n")
            ));
        }
        eprintln!(
            "hw-tests: linux-pair: the rt guest missed deadlines in each of {RT_ATTEMPTS} runs; every miss of the cleanest was the host's:\n{}",
            said.join("\n")
        );
    }
    // A Linux guest's SYSTEM_OFF ends only that guest: the RT guest went on after the first
    // one powered off, to its last period.
    let line_of = |pattern: &str| r.lines().position(|l| l.contains(pattern));
    let rt_done = line_of("[rt] rt periods=").unwrap_or_else(|| r.fail("no rt result"));
    let first_off = linux.iter().filter_map(|g| line_of(&format!("guest {g}: stopped (off)"))).min();
    assert!(first_off.is_some_and(|off| off < rt_done), "no Linux guest stopped before the rt guest finished");
    for s in r.stats() {
        assert_eq!(s.state(), "stopped", "{s:?}");
    }
}

/// Where in the output each line containing `pattern` is (line numbers): the console shows the
/// guests' lines and the trace events in the order they happened.
fn lines_with(r: &Run, pattern: &str) -> Vec<usize> {
    r.lines().enumerate().filter(|(_, l)| l.contains(pattern)).map(|(i, _)| i).collect()
}

/// The first line containing `pattern`; fails the run without one.
#[track_caller]
fn first_line(r: &Run, pattern: &str) -> usize {
    lines_with(r, pattern).first().copied().unwrap_or_else(|| r.fail(&format!("no line contains `{pattern}`")))
}

/// The consolidation governor with two Linux guests on a dual-core phone
/// (`scenarios/linux-phases.toml`): while both idle, core 1 is drained and turned off; when
/// "work" starts two CPU-bound jobs it comes back; after them it goes off again. Neither guest's
/// log shows an RCU stall, a lockup or a timer that came late: `personal` sleeps 14 s through
/// all of it and must wake on time.
#[test]
fn consolidation_turns_a_core_off_under_idle_linux_guests() {
    let r = on_hypervisor("linux-phases", 2, "cortex-a57", "");
    assert_hypervisor_clean(&r);
    r.assert_present("energy: profile phone-dual governor consolidate");
    assert_linux_passed(&r, "work", "phases");
    assert_linux_passed(&r, "personal", "idle");
    let light = first_line(&r, "[work] phases: light uptime=");
    let heavy = first_line(&r, "[work] phases: heavy uptime=");
    let heavy_done = first_line(&r, "[work] phases: heavy done uptime=");
    let off = lines_with(&r, "core c1 off");
    let online = lines_with(&r, "core c1 online");
    assert!(
        off.iter().any(|&l| light < l && l < heavy),
        "core 1 did not go off while both guests idled (lines {light}..{heavy}): off at {off:?}"
    );
    assert!(
        online.iter().any(|&l| heavy < l && l < heavy_done),
        "core 1 did not come back for the CPU-bound jobs (lines {heavy}..{heavy_done}): online at {online:?}"
    );
    assert!(off.iter().any(|&l| l > heavy_done), "core 1 did not go off again after the jobs: {off:?}");
    r.assert_absent("CPU_OFF refused");
    // The boot core stays on; core 1 was off for a while.
    let off_ns = |core: u32| -> u64 {
        r.lines()
            .find_map(|l| l.strip_prefix(&format!("energy core={core} ")))
            .and_then(|rest| rest.split_ascii_whitespace().find_map(|w| w.strip_prefix("off_ns=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| r.fail(&format!("no off_ns for core {core}")))
    };
    assert_eq!(off_ns(0), 0, "the boot core is never off");
    assert!(off_ns(1) > 1_000_000_000, "core 1 off for {} ns", off_ns(1));
    // No timer interrupt lost: the 14 s sleep ended within 2 s of its time.
    let slept: f64 = r
        .guest_lines("personal")
        .find_map(|l| l.strip_prefix("LINUX-TEST: PASS idle slept="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| r.fail("no `PASS idle slept=` line"));
    assert!((14.0..16.0).contains(&slept), "personal asked for 14 s of sleep and got {slept} s");
    // The jobs ran on both vCPUs.
    r.assert_guest_line("work", "phases: job 2 loops=");
}

/// A Linux guest's vCPUs moved to the other core every 2 ms for the whole run
/// (`hv.migrate-every=2000`): it boots, runs CPU-bound jobs on both vCPUs, idles, and powers off
/// with nothing wrong in its log. Its TLB maintenance is trapped (`hv.guest-tlbi=trap`): the
/// hypervisor's own shootdown (`vcpu_runtime::tlb`) keeps both vCPUs' translations right while
/// they change cores all the time; a stale one would crash the kernel or corrupt its test. And
/// no wait for the other core is done at once (`hv.tlbi-spin-us=0`): each one that finds the
/// other core in the guest is left to the vCPU, which leaves its core and finishes the wait
/// before its next entry, wherever the moves take it.
#[test]
fn linux_vcpus_moved_between_cores_every_2ms() {
    let r = on_hypervisor("linux-busy", 2, "cortex-a57", "hv.migrate-every=2000 hv.guest-tlbi=trap hv.tlbi-spin-us=0");
    assert_hypervisor_clean(&r);
    let stat = r.vm_stat("linux");
    let (tlbi, waited, deferred) = (stat.get("tlbi"), stat.get("tlbi_waited"), stat.get("tlbi_deferred"));
    eprintln!(
        "hw-tests: linux: {tlbi} TLB maintenance instructions carried out, {waited} waited for the other core, \
         {deferred} of those by the vCPU at its next entry"
    );
    assert!(tlbi > 1_000 && waited > 0 && deferred > 0, "tlbi={tlbi} tlbi_waited={waited} tlbi_deferred={deferred}");
    assert_linux_passed(&r, "linux", "busy");
    r.assert_guest_line("linux", "busy: job 2 loops=");
    let events = r.trace_events().unwrap_or_else(|e| r.fail(&e));
    let moves = events.iter().filter(|e| matches!(e.kind, TraceKind::VcpuMigrate { .. })).count();
    eprintln!("hw-tests: linux: {moves} moves");
    for s in r.stats() {
        // Hundreds of moves a second while the vCPU is on.
        assert!(s.get("migrations") >= 1_000, "{s:?}");
        assert_eq!(s.state(), "stopped", "{s:?}");
    }
}

/// A fresh raw disk image of 512 MiB for the checkpoint (a 256 MiB guest's checkpoint takes
/// about 20 MB: its memory is mostly zero pages and LZ4 runs).
fn blank_disk(name: &str) -> PathBuf {
    let dir = hw_tests::workspace_root().join("target/hw-tests/checkpoint");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let path = dir.join(format!("{name}.img"));
    let file = std::fs::File::create(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    file.set_len(512 << 20).unwrap_or_else(|e| panic!("cannot size {}: {e}", path.display()));
    path
}

/// The tick numbers `ticks: N uptime=S` a guest printed.
fn ticks(r: &Run) -> Vec<u32> {
    r.guest_lines("linux")
        .filter_map(|l| l.strip_prefix("ticks: "))
        .filter_map(|l| l.split(' ').next()?.parse().ok())
        .collect()
}

fn checkpoint_instance(smp: u32, disk: &Path, append: &str) -> Run {
    let config = QemuConfig::new(smp, "cortex-a57")
        .scenario("linux-ticks")
        .disk(disk)
        .append(&format!("hv.trace=events {append}"))
        .timeout(TIMEOUT);
    hypervisor_run(&config, &format!("linux-ticks {append}"))
}

/// A Linux guest checkpointed in the middle of its script on `-smp 2` (`hv.checkpoint-on`: the
/// run ends at its fifth tick) carries on when restored from the disk by another instance with a different
/// core count (`hv.restore`): its next tick is the one after the last, its clock goes on, it
/// passes and powers off with nothing wrong in its log.
fn checkpoint_and_restore_on(smp: u32) {
    let disk = blank_disk(&format!("linux-smp{smp}"));
    // The guest ticks every second for 12 s; the run ends at its fifth tick, however long the
    // boot took (a fixed time would depend on the host's speed).
    let first = checkpoint_instance(2, &disk, "hv.checkpoint-on=\"ticks: 5 \"");
    first.assert_clean();
    first.assert_present("checkpoint: guest linux:");
    first.assert_absent("LINUX-TEST:");
    let before = ticks(&first);
    if before.last() != Some(&5) {
        first.fail(&format!("the checkpoint was not taken at the fifth tick: {before:?}"));
    }
    for line in first.guest_lines("linux") {
        if let Some(p) = LINUX_FAILURE_PATTERNS.iter().find(|p| line.contains(*p)) {
            first.fail(&format!("the guest printed `{p}` before its checkpoint: {line:?}"));
        }
    }
    let second = checkpoint_instance(smp, &disk, "hv.restore");
    assert_hypervisor_clean(&second);
    second.assert_present("restore: guest linux from the checkpoint disk");
    assert_linux_finished(&second, "linux", "ticks");
    let after = ticks(&second);
    let last = *before.last().unwrap_or(&0);
    assert_eq!(after.first().copied(), Some(last + 1), "before {before:?}, after {after:?}");
    assert_eq!(after.last(), Some(&12), "after {after:?}");
    // The restored guest did not boot again.
    if second.guest_lines("linux").any(|l| l.contains("Booting Linux")) {
        second.fail("the restored guest booted from scratch");
    }
}

#[test]
fn linux_checkpoint_on_smp2_restores_on_smp1() {
    checkpoint_and_restore_on(1);
}

#[test]
fn linux_checkpoint_on_smp2_restores_on_smp4() {
    checkpoint_and_restore_on(4);
}

/// A Linux guest whose kernel panics (`test=panic`: init exits) beside one that works: the
/// panic stays in its guest. "work" finishes its script and powers off, the hypervisor reports
/// nothing wrong and ends the run at the scenario's duration with "crash" halted.
#[test]
fn a_linux_panic_stops_only_that_guest() {
    let r = on_hypervisor("linux-crash", 2, "cortex-a57", "");
    r.assert_exit(0);
    // The hypervisor's own lines are clean; the guest lines of "crash" hold its panic.
    assert_hypervisor_lines_clean(&r);
    r.assert_guest_line("crash", "panic: init exits now");
    r.assert_guest_line("crash", "Kernel panic - not syncing: Attempted to kill init!");
    assert_linux_passed(&r, "work", "busy");
    r.assert_present("hypervisor: scenario duration elapsed after");
    r.assert_absent("guest crash: stopped");
    // One of its vCPUs spun in the panic until the end: halted (the other is stopped in WFI).
    if !r.lines().any(|l| l.starts_with("T ") && l.ends_with(" halt")) {
        r.fail("no vCPU was halted at the end of the run");
    }
    for s in r.stats().iter().filter(|s| s.guest == "work") {
        assert_eq!(s.state(), "stopped", "{s:?}");
    }
}
