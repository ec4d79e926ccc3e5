//! The consolidation governor on the hypervisor, under QEMU: real PSCI `CPU_OFF` and `CPU_ON` of
//! physical cores (`scenarios/power-phases.toml`: light, heavy, light).
//!
//! Without `-icount`: under it QEMU runs the cores one at a time on one clock, so a core's work
//! slows down as other cores get busy, and the real-time guest's 2 ms job (calibrated while the
//! others were idle) would take several times longer in the heavy phase.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use hw_tests::{run, QemuConfig, Run};
use vcpu_runtime::trace::{CoreState, TraceEvent, TraceKind};

const LIGHT_END_NS: u64 = 1_500_000_000;
const HEAVY_END_NS: u64 = 3_000_000_000;

/// One `energy core=N key=value ...` line of the report.
fn energy_lines(r: &Run) -> Vec<BTreeMap<String, u64>> {
    r.lines()
        .filter_map(|l| l.strip_prefix("energy core="))
        .map(|rest| {
            let mut fields = BTreeMap::new();
            let mut words = rest.split_ascii_whitespace();
            if let Some(core) = words.next().and_then(|w| w.parse().ok()) {
                fields.insert("core".to_string(), core);
            }
            for w in words {
                if let Some((k, v)) = w.split_once('=') {
                    fields.insert(k.to_string(), v.parse().unwrap_or(u64::MAX));
                }
            }
            fields
        })
        .collect()
}

/// Per core, its `core` state events in order, with their times relative to the run's start
/// (the first event).
fn core_states(events: &[TraceEvent]) -> BTreeMap<u16, Vec<(u64, CoreState)>> {
    let start = events.first().map_or(0, |e| e.at.as_nanos());
    let mut per = BTreeMap::<u16, Vec<(u64, CoreState)>>::new();
    for e in events {
        if let TraceKind::CoreState { core, state } = e.kind {
            per.entry(core.0).or_default().push((e.at.as_nanos() - start, state));
        }
    }
    per
}

/// Runs before the real-time guest's misses fail the test. QEMU's counter follows the host's
/// clock and each guest core is a host thread, so a host hiccup can stretch the RT guest's 2 ms
/// job past its period without the hypervisor being at fault (about one run in five on this
/// 2-core machine): as the `rt` test in guests.rs, a run with misses is tried again. Under
/// `-icount` this scenario would not help: its cores share one instruction clock.
const RT_ATTEMPTS: u32 = 4;

/// The manifest of power-phases as this test runs it: the RT guest without its demand, so that
/// it runs its built-in 100 periods (docs/guests.md), which fall in the first light phase. With
/// its demand it would run through the heavy phase too; there, on this 2-core host shared with
/// other work, QEMU's core threads do not get a host core each (with `-smp 4` three emulated
/// cores are busy), and the RT guest's 2 ms job stretches past its period whatever the
/// hypervisor does: the misses would measure the host.
fn power_phases_manifest() -> PathBuf {
    let mut scenario = hw_tests::load_scenario("power-phases");
    for g in scenario.guests.iter_mut().filter(|g| g.name == "rt") {
        g.demand = None;
    }
    hw_tests::manifest_of("power-phases-rt100", &scenario)
}

/// Boots power-phases on `smp` cores with `append` added to the boot arguments, and checks
/// what holds whether cores really turn off or park in WFI: every guest passes, no vCPU is lost,
/// the RT guest misses nothing, and every core's residencies add up to the run.
fn power_phases_run(smp: u32, append: &str) -> (Run, Vec<TraceEvent>, Vec<BTreeMap<String, u64>>) {
    // Scheduling events stay off the console: printed synchronously, they would slow every
    // switch down far more than the hypervisor itself.
    let config = QemuConfig::new(smp, "cortex-a57")
        .manifest_file(&power_phases_manifest())
        .append(&format!("hv.trace=events {append}"))
        .timeout(Duration::from_secs(240));
    let mut attempt = 1;
    let r = loop {
        let r = run(&config);
        eprintln!("hw-tests: power-phases (attempt {attempt}): {}", r.summary());
        // A late job prints its own line; a tick skipped outright counts only in the total.
        let misses = r.guest_lines("rt").any(|l| {
            l.starts_with("rt: miss in period") || (l.starts_with("rt periods=") && !l.ends_with(" misses=0"))
        });
        hw_tests::rtmiss::log(&r, "rt", "power-phases");
        // A run the host held up (a miss of the guest's or a period the scheduler lost) is
        // tried again; the run kept must have neither (below).
        if (!misses && r.reservation_periods_lost() == 0) || attempt == RT_ATTEMPTS {
            break r;
        }
        attempt += 1;
    };
    r.assert_clean();
    r.assert_present("hypervisor: all guests stopped after");
    r.assert_present("energy: profile generic governor consolidate");
    for g in ["player", "rt"] {
        r.assert_guest_passed(g);
    }
    // No vCPU lost: every one ran its whole schedule, the real-time guest missed nothing.
    r.assert_guest_line("rt", "rt periods=100 misses=0");
    r.assert_reservations_honoured();
    r.assert_guest_line("player", "player: done vcpus=2");
    let stats = r.stats();
    assert_eq!(stats.len(), 3, "{stats:?}");
    assert!(stats.iter().all(|s| s.state() == "stopped"), "{stats:?}");
    let events = r.trace_events().unwrap_or_else(|e| r.fail(&e));
    let energy = energy_lines(&r);
    assert_eq!(energy.len() as u32, smp, "one energy line per core: {energy:?}");
    for e in &energy {
        assert_eq!(e["sum_ns"], e["run_ns"], "residencies add up to the run on core {}: {e:?}", e["core"]);
        assert_eq!(e["busy_ns"] + e["idle_ns"] + e["off_ns"], e["sum_ns"], "{e:?}");
    }
    (r, events, energy)
}

/// The phases a run went through, or what it lacked.
fn phase_check(smp: u32, events: &[TraceEvent]) -> Result<(), String> {
    let states = core_states(events);
    // Light phase: at least half the cores turn off (never the boot core).
    let off_in_light: Vec<u16> = states
        .iter()
        .filter(|(_, s)| s.iter().any(|&(t, st)| st == CoreState::Off && t < LIGHT_END_NS))
        .map(|(&c, _)| c)
        .collect();
    if (off_in_light.len() as u32) * 2 < smp {
        return Err(format!("cores off in the light phase: {off_in_light:?} of {smp}\n{states:?}"));
    }
    if off_in_light.contains(&0) {
        return Err(format!("the boot core went off\n{states:?}"));
    }
    // Heavy phase: cores come back.
    let back = states
        .values()
        .any(|s| s.iter().any(|&(t, st)| st == CoreState::Online && (LIGHT_END_NS..HEAVY_END_NS).contains(&t)));
    if !back {
        return Err(format!("no core came back in the heavy phase\n{states:?}"));
    }
    // And the last light phase turns some off again.
    if !states.values().any(|s| s.iter().any(|&(t, st)| st == CoreState::Off && t >= HEAVY_END_NS)) {
        return Err(format!("no core went off after the heavy phase\n{states:?}"));
    }
    Ok(())
}

fn phases(smp: u32) {
    // The phases follow the guests' load measured in host time: on a loaded host a phase can
    // look heavier than it is and a core stay on. Such a run is tried again, up to
    // RT_ATTEMPTS runs, as a run with a real-time miss is; the last one must pass.
    let mut attempt = 1;
    let (r, energy) = loop {
        let (r, events, energy) = power_phases_run(smp, "");
        match phase_check(smp, &events) {
            Ok(()) => break (r, energy),
            Err(e) if attempt < RT_ATTEMPTS => {
                eprintln!("hw-tests: power-phases -smp {smp} (attempt {attempt}): {e}; trying again");
                attempt += 1;
            }
            Err(e) => r.fail(&e),
        }
    };
    r.assert_absent("CPU_OFF refused");

    // The report: something was off, and no core was refused.
    for e in &energy {
        assert_eq!(e["cpu_off_refused"], 0);
    }
    assert!(energy.iter().any(|e| e["off_ns"] > 0), "{energy:?}");
    assert_eq!(energy[0]["off_ns"], 0, "the boot core is never off");
}

#[test]
fn consolidation_turns_cores_off_and_on_smp2() {
    phases(2);
}

#[test]
fn consolidation_turns_cores_off_and_on_smp4() {
    phases(4);
}

/// When `CPU_OFF` is refused (forced with `hv.cpu-off=wfi`: QEMU's PSCI never refuses), a
/// drained core says so, parks in WFI, is counted in the report, and comes back when the
/// governor wants it; its parked time is WFI time, not off time.
#[test]
fn a_refused_cpu_off_parks_the_core_in_wfi() {
    let (r, events, energy) = power_phases_run(2, "hv.cpu-off=wfi");
    r.assert_present("power: core 1: PSCI CPU_OFF refused (PSCI call denied): parking in WFI");
    assert!(energy[1]["cpu_off_refused"] >= 1, "{energy:?}");
    assert!(energy.iter().all(|e| e["off_ns"] == 0), "parked is not off: {energy:?}");
    let states = core_states(&events);
    let c1 = &states[&1];
    assert!(
        c1.iter().any(|&(t, st)| st == CoreState::Online && (LIGHT_END_NS..HEAVY_END_NS).contains(&t)),
        "core 1 came back in the heavy phase: {c1:?}"
    );
}

/// The same scenario on the simulator and on QEMU books energies within 10 % of each other
/// (`scenarios/energy-compare.toml`: two player guests on one core, under `-icount` so that the
/// guests' work takes the same instructions every run).
#[test]
fn simulator_and_qemu_energies_agree() {
    let path = hw_tests::workspace_root().join("scenarios/energy-compare.toml");
    let scenario = vcpu_runtime::scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
    // The hypervisor sets no operating points on QEMU and keeps no cluster books (its cores
    // book their own time): the simulator runs at the top OPP and is compared core for core.
    let sim = platform_sim::energy::run_fixed_speed(&scenario, scenario.policy.governor, &mut ())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(sim.report.violations.is_empty(), "{:?}", sim.report.violations);

    let config = QemuConfig::new(1, "cortex-a57")
        .scenario("energy-compare")
        .append("hv.trace=events")
        .timeout(Duration::from_secs(240));
    let r = run(&QemuConfig { icount: true, ..config });
    eprintln!("hw-tests: energy-compare: {}", r.summary());
    r.assert_clean();
    for g in ["a", "b"] {
        r.assert_guest_passed(g);
        r.assert_guest_line(g, "player: vcpu 0 jobs=225 misses=0");
    }
    let qemu_uj: u64 = r
        .lines()
        .find_map(|l| l.strip_prefix("energy total_uj="))
        .and_then(|rest| rest.split_ascii_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| r.fail("no `energy total_uj=` line"));
    // The run on QEMU lasts a little longer than the scenario (boot, the player's grace): compare
    // average power.
    let energy = energy_lines(&r);
    let run_ns = energy[0]["run_ns"] as f64;
    let qemu_mw = qemu_uj as f64 / run_ns * 1e6;
    let sim_mw = (sim.energy.energy_uj - sim.energy.clusters_uj) as f64 / (sim.energy.simulated_ns as f64 / 1e9) / 1e3;
    let diff = (qemu_mw - sim_mw).abs() / sim_mw;
    eprintln!("hw-tests: energy-compare: simulator {sim_mw:.1} mW, QEMU {qemu_mw:.1} mW ({:.1} % apart)", diff * 100.0);
    assert!(diff <= 0.10, "simulator {sim_mw:.1} mW and QEMU {qemu_mw:.1} mW differ by {:.1} %", diff * 100.0);
}
