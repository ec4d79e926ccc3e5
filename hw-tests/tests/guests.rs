//! The test guests on the hypervisor: scenarios from `scenarios/` turned into manifests and
//! booted on QEMU's virt board (docs/platform.md). Every test checks the exit code, that no
//! failure pattern appears, every guest's `RESULT: PASS`, the trace events the scenario must
//! produce, and (where it matters) the `stat vcpu` lines; QEMU is killed after a timeout.
//!
//! Run with `cargo test -p hw-tests --release -- --test-threads=1` (what `cargo xtask test`
//! does): one QEMU at a time, so the timing-sensitive tests (weights, real time) are not starved.

use std::collections::BTreeSet;
use std::time::Duration;

use hw_tests::{manifest, run, QemuConfig, Run};
use platform_sim::schedule::decode_schedule;
use vcpu_runtime::manifest::Manifest;
use vcpu_runtime::trace::{FaultKind, PsciCall, StopReason, TraceEvent, TraceKind};
use vcpu_runtime::{CoreId, VcpuId, VmId};

/// How long any one of these runs may take (they take 1-4 s).
const TIMEOUT: Duration = Duration::from_secs(60);

/// Boots `scenarios/NAME.toml` on `smp` cores of model `cpu`; checks that the run ended cleanly
/// because every guest stopped, and that each guest in `guests` passed.
fn scenario(name: &str, smp: u32, cpu: &str, guests: &[&str]) -> (Run, Vec<TraceEvent>) {
    scenario_with(QemuConfig::new(smp, cpu).scenario(name).timeout(TIMEOUT), name, guests)
}

fn scenario_with(config: QemuConfig, name: &str, guests: &[&str]) -> (Run, Vec<TraceEvent>) {
    let r = run(&config);
    eprintln!("hw-tests: {name}: {}", r.summary());
    r.assert_clean();
    r.assert_present(&format!("hypervisor: scenario \"{name}\""));
    r.assert_present("hypervisor: all guests stopped after");
    for g in guests {
        r.assert_guest_passed(g);
    }
    let events = r.trace_events().unwrap_or_else(|e| r.fail(&e));
    (r, events)
}

fn marks(events: &[TraceEvent], id: u32) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e.kind {
            TraceKind::Mark { id: i, value } if i == id => Some(value),
            _ => None,
        })
        .collect()
}

fn faults(events: &[TraceEvent], vm: u16) -> Vec<FaultKind> {
    events
        .iter()
        .filter_map(|e| match e.kind {
            TraceKind::GuestFault { vm: v, fault, .. } if v == VmId(vm) => Some(fault),
            _ => None,
        })
        .collect()
}

fn stops(events: &[TraceEvent]) -> BTreeSet<u16> {
    events
        .iter()
        .filter_map(|e| match e.kind {
            TraceKind::VcpuStop { vcpu, reason: StopReason::SystemOff } => Some(vcpu.0),
            _ => None,
        })
        .collect()
}

fn runs_on(events: &[TraceEvent]) -> Vec<(CoreId, VcpuId)> {
    events
        .iter()
        .filter_map(|e| match e.kind {
            TraceKind::VcpuRun { core, vcpu } => Some((core, vcpu)),
            _ => None,
        })
        .collect()
}

fn psci(events: &[TraceEvent], call: PsciCall) -> Vec<i32> {
    events
        .iter()
        .filter_map(|e| match e.kind {
            TraceKind::GuestPsci { call: c, result, .. } if c == call => Some(result),
            _ => None,
        })
        .collect()
}

#[test]
fn counter_alone() {
    let (r, events) = scenario("counter", 1, "cortex-a57", &["counter"]);
    r.assert_guest_line("counter", "start cpu=0 platform=hypervisor");
    r.assert_guest_line("counter", "progress 20/20");
    assert_eq!(marks(&events, 1), (1..=20).collect::<Vec<u64>>(), "one HV_MARK(1, step) per step");
    assert_eq!(marks(&events, 2), [20_000_000], "HV_MARK(2, count) at the end");
    assert_eq!(psci(&events, PsciCall::SystemOff), [0]);
    assert_eq!(stops(&events), BTreeSet::from([0]));
    assert_eq!(runs_on(&events).first(), Some(&(CoreId(0), VcpuId(0))));
    let s = r.stat("counter", 0);
    assert!(s.get("cpu_ns") > 0 && s.get("runs") > 0 && s.state() == "stopped", "{s:?}");
    assert!(faults(&events, 0).is_empty(), "the counter guest does nothing wrong");
}

/// Lazy FP/SIMD switching: the vCPUs of two `fpu` guests and a `counter` (which never uses
/// FP/SIMD) share one core; every `fpu` vCPU finds its own FP/SIMD registers after each time it
/// gave the core away (hundreds of switches each).
#[test]
fn fpu_registers_stay_with_their_vcpu() {
    let (r, _) = scenario("fpu", 1, "cortex-a57", &["fpu-a", "fpu-b", "counter"]);
    for g in ["fpu-a", "fpu-b"] {
        for cpu in 0..2 {
            r.assert_guest_line(g, &format!("fpu: cpu {cpu} rounds=300 mismatches=0"));
            let s = r.stat(g, cpu);
            assert!(s.get("runs") >= 300, "every round gives the core away: {s:?}");
        }
    }
}

/// Two guests of two always-busy vCPUs each on one core, weights 64 and 192: CPU time divides
/// 25 % / 75 % (within 5 percentage points).
#[test]
fn weights_one_to_three_on_one_core() {
    let (r, _) = scenario("weights", 1, "cortex-a57", &["light", "heavy"]);
    for g in ["light", "heavy"] {
        r.assert_guest_line(g, "spin: vcpus=2 rounds=");
    }
    let time = |g: &str| -> u64 {
        (0..2)
            .map(|i| {
                let s = r.stat(g, i);
                assert!(s.get("cpu_ns") > 0, "{g}/{i} never ran: {s:?}");
                s.get("cpu_ns")
            })
            .sum()
    };
    let (light, heavy) = (time("light"), time("heavy"));
    let share = light as f64 * 100.0 / (light + heavy) as f64;
    eprintln!("hw-tests: weights: light {light} ns, heavy {heavy} ns: {share:.1} % / {:.1} %", 100.0 - share);
    assert!((20.0..=30.0).contains(&share), "light got {share:.1} % of the core, expected 25 % +/- 5");
}

/// Four guests pinned one per core: every core runs its own guest, and only that one.
#[test]
fn four_guests_on_four_cores() {
    let names = ["counter0", "counter1", "counter2", "counter3"];
    let (_, events) = scenario("four", 4, "cortex-a57", &names);
    let runs = runs_on(&events);
    for k in 0..4u16 {
        assert!(runs.contains(&(CoreId(k), VcpuId(k))), "vCPU {k} never ran on core {k}: {runs:?}");
    }
    assert!(runs.iter().all(|(c, v)| c.0 == v.0), "a vCPU ran outside its affinity: {runs:?}");
    assert_eq!(stops(&events), BTreeSet::from([0, 1, 2, 3]));
}

/// The smp guest (4 vCPUs on 2 cores): bring-up with CPU_ON, CPU_OFF and CPU_ON again,
/// AFFINITY_INFO, SGIs between vCPUs through the virtual GIC.
#[test]
fn smp_guest() {
    let (r, events) = scenario("smp", 2, "cortex-a57", &["smp"]);
    r.assert_guest_line("smp", "smp: secondaries=3 boot=cpu0");
    for phase in
        ["phase 1 ok", "phase 2 ok", "phase 3 ok: 9 pings and answers, broadcast reached 3 vCPUs", "phase 4 ok"]
    {
        r.assert_guest_line("smp", phase);
    }
    for cpu in 1..=3 {
        r.assert_guest_line("smp", &format!("smp: cpu {cpu} reported checksum="));
        r.assert_guest_line("smp", &format!("smp: cpu {cpu} stopping pings=3 broadcasts=1"));
    }
    let cpu_on = psci(&events, PsciCall::CpuOn);
    assert!(cpu_on.iter().filter(|&&r| r == 0).count() >= 6, "CPU_ON answers: {cpu_on:?}");
    assert!(cpu_on.iter().any(|&r| r == -4 || r == -5), "the second CPU_ON of a running vCPU: {cpu_on:?}");
    assert!(cpu_on.contains(&-2), "CPU_ON of a vCPU that does not exist: {cpu_on:?}");
    assert!(psci(&events, PsciCall::CpuOff).len() >= 6);
    assert!(!psci(&events, PsciCall::AffinityInfo).is_empty());
    let count = |f: fn(&TraceKind) -> bool| events.iter().filter(|e| f(&e.kind)).count();
    assert!(count(|k| matches!(k, TraceKind::VcpuUnpark { .. })) >= 6, "each secondary powered on twice");
    assert!(count(|k| matches!(k, TraceKind::VcpuPark { .. })) >= 6, "each secondary turned off twice");
    assert!(count(|k| matches!(k, TraceKind::VcpuWake { .. })) >= 9, "SGIs wake the vCPUs waiting for them");
    let cores: BTreeSet<u16> = runs_on(&events).iter().map(|(c, _)| c.0).collect();
    assert_eq!(cores, BTreeSet::from([0, 1]), "the vCPUs run on both cores");
    assert_eq!(stops(&events), BTreeSet::from([0, 1, 2, 3]));
    assert!(faults(&events, 0).is_empty(), "{:?}", faults(&events, 0));
}

/// The rt guest (reservation 8 ms / 10 ms) beside an always-busy guest on one core: no deadline
/// miss in 100 periods. QEMU's counter follows the host's clock, so a loaded host can delay the
/// guest without the hypervisor being at fault: up to 3 runs, then one in QEMU's deterministic
/// instruction-count mode (`-icount`).
#[test]
fn rt_guest_beside_a_busy_guest() {
    let config = QemuConfig::new(1, "cortex-a57").scenario("rt").timeout(TIMEOUT);
    let mut last = None;
    for attempt in 1..=4 {
        let icount = attempt == 4;
        let r = run(&QemuConfig { icount, ..config.clone() });
        eprintln!("hw-tests: rt (attempt {attempt}{}): {}", if icount { ", -icount" } else { "" }, r.summary());
        r.assert_exit(0);
        // A late job prints its own line; a tick skipped outright counts only in the total.
        let misses = r.guest_lines("rt").any(|l| {
            l.starts_with("rt: miss in period") || (l.starts_with("rt periods=") && !l.ends_with(" misses=0"))
        });
        hw_tests::rtmiss::log(&r, "rt", "rt");
        if (misses || r.reservation_periods_lost() > 0) && !icount {
            last = Some(r);
            continue;
        }
        r.assert_clean();
        r.assert_guest_passed("rt");
        r.assert_guest_passed("busy");
        r.assert_guest_line("rt", "rt periods=100 misses=0");
        r.assert_reservations_honoured();
        let events = r.trace_events().unwrap_or_else(|e| r.fail(&e));
        assert!(marks(&events, 3).is_empty(), "HV_MARK(3, period) marks a miss");
        let rt = r.stat("rt", 0);
        assert!(rt.get("wakeups") >= 100, "the timer woke the rt vCPU every period: {rt:?}");
        assert!(r.stat("busy", 0).get("preemptions") >= 90, "the busy guest gave way each period");
        return;
    }
    last.unwrap_or_else(|| unreachable!()).fail("rt missed deadlines in every attempt");
}

/// The misbehave guest beside counter: both finish; every fault misbehave commits is answered
/// in the guest and traced as a `fault` event of its VM; the counter is unaffected.
#[test]
fn misbehave_beside_counter() {
    let (r, events) = scenario("misbehave", 1, "cortex-a57", &["misbehave", "counter"]);
    r.assert_guest_line("misbehave", "misbehave: steps=11 unexpected=0");
    for step in ["stage2-read: abort-injected", "stage2-write: abort-injected", "device-hole-read: abort-injected"] {
        r.assert_guest_line("misbehave", step);
    }
    let f = faults(&events, 0);
    let n = |kind: FaultKind| f.iter().filter(|&&k| k == kind).count();
    assert_eq!(n(FaultKind::StageTwoAbort), 3, "{f:?}");
    assert_eq!(n(FaultKind::UndefinedHypercall), 2, "{f:?}");
    assert_eq!(n(FaultKind::UndefinedSmc), 1, "{f:?}");
    assert_eq!(n(FaultKind::DeviceMisuse), 2, "{f:?}");
    assert!(faults(&events, 1).is_empty(), "the counter guest does nothing wrong");
    assert_eq!(marks(&events, 2), [20_000_000]);
    assert_eq!(stops(&events), BTreeSet::from([0, 1]));
}

/// PSCI SYSTEM_RESET from a secondary vCPU restarts the guest at its entry on vCPU 0 with its
/// image loaded again and its other vCPU off (the guest checks both); the counter guest beside
/// it is not disturbed. Runs on two cores, so the reset has vCPUs on both to bring down.
#[test]
fn system_reset_restarts_guest() {
    let (r, events) = scenario("reset", 2, "cortex-a57", &["reset", "counter"]);
    r.assert_guest_line("reset", "reset: boot 1, vCPU 1 resets the guest");
    r.assert_guest_line("reset", "reset: boots=2 image reloaded, vCPU 1 off");
    r.assert_present("guest reset: reset, restarting at");
    assert_eq!(psci(&events, PsciCall::SystemReset), [0], "one reset");
    // Both of the reset guest's vCPUs and the counter's stop with SYSTEM_OFF in the end; the
    // reset itself stops nobody.
    assert_eq!(stops(&events), BTreeSet::from([0, 1, 2]));
    assert!(
        !events.iter().any(|e| matches!(e.kind, TraceKind::VcpuStop { reason: StopReason::SystemReset, .. })),
        "a reset is not a stop"
    );
    assert_eq!(marks(&events, 2), [20_000_000], "the counter guest ran to its end");
}

/// The main scenario (counter, smp with 4 vCPUs, misbehave, spin with 2 vCPUs) on `smp` cores.
fn main_scenario(smp: u32, cpu: &str) {
    let (r, events) = scenario("main", smp, cpu, &["counter", "smp", "misbehave", "spin"]);
    r.assert_guest_line("smp", "phase 4 ok");
    r.assert_guest_line("misbehave", "unexpected=0");
    r.assert_guest_line("spin", "spin: vcpus=2 rounds=");
    let stats = r.stats();
    assert_eq!(stats.len(), 8, "one stat line per vCPU: {stats:?}");
    assert!(stats.iter().all(|s| s.state() == "stopped"), "{stats:?}");
    assert_eq!(stops(&events), (0..8).collect::<BTreeSet<u16>>());
    assert!(!faults(&events, 2).is_empty(), "misbehave's faults are traced");
    for vm in [0, 1, 3] {
        assert!(faults(&events, vm).is_empty(), "guest {vm}: {:?}", faults(&events, vm));
    }
    let cores: BTreeSet<u16> = runs_on(&events).iter().map(|(c, _)| c.0).collect();
    let want = smp.min(8) as usize;
    assert_eq!(cores.len(), want, "vCPUs ran on cores {cores:?}, expected all {want}");
}

#[test]
fn main_smp1_cortex_a57() {
    main_scenario(1, "cortex-a57");
}

#[test]
fn main_smp2_cortex_a57() {
    main_scenario(2, "cortex-a57");
}

#[test]
fn main_smp4_cortex_a57() {
    main_scenario(4, "cortex-a57");
}

#[test]
fn main_smp8_cortex_a57() {
    main_scenario(8, "cortex-a57");
}

#[test]
fn main_smp4_max() {
    main_scenario(4, "max");
}

/// A manifest whose checksum does not match stops the boot with the parser's message and
/// status 1.
#[test]
fn a_corrupt_manifest_fails_the_boot() {
    let mut bytes = std::fs::read(manifest("counter")).expect("manifest");
    bytes[200] ^= 0x5a;
    let path = std::env::temp_dir().join(format!("hw-tests-corrupt-{}.manifest", std::process::id()));
    std::fs::write(&path, &bytes).expect("write the corrupt manifest");
    let r = run(&QemuConfig::new(1, "cortex-a57").manifest_file(&path).timeout(TIMEOUT));
    let _ = std::fs::remove_file(&path);
    eprintln!("hw-tests: corrupt manifest: {}", r.summary());
    r.assert_exit(1);
    r.assert_present("FAIL: manifest: checksum: checksum mismatch");
    r.assert_absent("hypervisor: scenario");
}

/// A scenario whose duration ends before its guest: the running vCPUs are halted, the
/// statistics printed, and the run still ends cleanly with status 0.
#[test]
fn a_run_ends_at_the_scenarios_duration() {
    let r = run(&QemuConfig::new(2, "cortex-a57").scenario("duration").timeout(TIMEOUT));
    eprintln!("hw-tests: duration: {}", r.summary());
    r.assert_clean();
    r.assert_present("hypervisor: scenario duration elapsed after");
    r.assert_absent("RESULT:");
    let events = r.trace_events().unwrap_or_else(|e| r.fail(&e));
    let halted: BTreeSet<u16> = events
        .iter()
        .filter_map(|e| match e.kind {
            TraceKind::VcpuStop { vcpu, reason: StopReason::Halted } => Some(vcpu.0),
            _ => None,
        })
        .collect();
    assert_eq!(halted, BTreeSet::from([0, 1]), "both vCPUs were running and are halted");
    for i in 0..2 {
        let s = r.stat("spin", i);
        assert!(s.get("cpu_ns") > 300_000_000, "spin/{i} computed most of the 500 ms: {s:?}");
    }
}

/// The demand player (2 vCPUs on 2 cores) replays its periodic demand, 2 ms every 10 ms for 2 s:
/// each vCPU completes exactly the jobs of the schedule in its manifest, misses no deadline,
/// and is charged at least half the work it was given. QEMU's counter follows the host's clock,
/// so (as for `rt`) a loaded host can make it miss: up to 3 runs, then one with `-icount`.
#[test]
fn player_replays_schedule() {
    let bytes = std::fs::read(manifest("player")).expect("manifest");
    let parsed = Manifest::parse(&bytes).unwrap_or_else(|e| panic!("{e}"));
    let guest = parsed.guests().find(|g| g.name == "player").expect("a guest named player");
    let schedule = decode_schedule(guest.initrd).unwrap_or_else(|e| panic!("the player's data blob: {e}"));
    assert_eq!(schedule.vcpus.len(), 2);
    assert_eq!(schedule.vcpus[0].len(), 200, "a job every 10 ms for 2 s");

    let config = QemuConfig::new(2, "cortex-a57").scenario("player").timeout(TIMEOUT);
    let mut last = None;
    for attempt in 1..=4 {
        let icount = attempt == 4;
        let (r, _) = scenario_with(QemuConfig { icount, ..config.clone() }, "player", &["player"]);
        let lines: Vec<&str> = r.guest_lines("player").filter(|l| l.starts_with("player: vcpu ")).collect();
        eprintln!("hw-tests: player (attempt {attempt}{}): {lines:?}", if icount { ", -icount" } else { "" });
        r.assert_guest_line("player", "player: done vcpus=2");
        let missed = lines.len() != 2 || lines.iter().any(|l| !l.contains(" misses=0 "));
        if missed && !icount {
            last = Some(r);
            continue;
        }
        for (v, jobs) in schedule.vcpus.iter().enumerate() {
            let work_us: u64 = jobs.iter().map(|j| j.work.as_micros()).sum();
            r.assert_guest_line("player", &format!("player: vcpu {v} jobs={} misses=0 work_us={work_us}", jobs.len()));
            let cpu_ns = r.stat("player", v as u16).get("cpu_ns");
            assert!(cpu_ns >= work_us * 1000 / 2, "vCPU {v} ran {cpu_ns} ns for {work_us} us of work");
        }
        return;
    }
    last.unwrap_or_else(|| unreachable!()).fail("the player missed deadlines in every attempt");
}
