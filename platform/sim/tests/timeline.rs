//! The timeline: reconstruction from trace events, the Perfetto JSON and the PNG picture.

use std::collections::BTreeMap;
use std::path::Path;

use platform_sim::timeline::{
    core_color, perfetto_core_tid, perfetto_vcpu_tid, state_color, vcpu_color, PowerSpan, Residency, RunEnd,
    RunInterval, StateInterval, Timeline, BACKGROUND, MIGRATION_COLOR, MISS_COLOR, PERFETTO_CORES_PID,
    PERFETTO_VCPUS_PID, POWER_COLOR, TEXT,
};
use platform_sim::{SimObserver, Simulator};
use serde_json::Value;
use vcpu_runtime::scenario;
use vcpu_runtime::trace::{CoreState, FaultKind, PsciCall, StopReason, TraceEvent, TraceKind};
use vcpu_runtime::{CoreId, Instant, Nanos, VcpuId, VmId};

const MS: u64 = 1_000_000;
const C0: CoreId = CoreId(0);
const C1: CoreId = CoreId(1);
const V0: VcpuId = VcpuId(0);
const V1: VcpuId = VcpuId(1);
const V2: VcpuId = VcpuId(2);

fn ms(t: u64) -> Instant {
    Instant(t * MS)
}

fn ev(t_ms: u64, kind: TraceKind) -> TraceEvent {
    TraceEvent { at: ms(t_ms), kind }
}

fn run(core: CoreId, vcpu: VcpuId) -> TraceKind {
    TraceKind::VcpuRun { core, vcpu }
}
fn pre(core: CoreId, vcpu: VcpuId) -> TraceKind {
    TraceKind::VcpuPreempt { core, vcpu }
}
fn blk(core: CoreId, vcpu: VcpuId) -> TraceKind {
    TraceKind::VcpuBlock { core, vcpu }
}
fn mig(vcpu: VcpuId, from: CoreId, to: CoreId) -> TraceKind {
    TraceKind::VcpuMigrate { vcpu, from, to }
}
fn core(core: CoreId, state: CoreState) -> TraceKind {
    TraceKind::CoreState { core, state }
}

/// Two cores, three vCPUs, 100 ms: preemption, blocking, migrations, core 0 draining, off and
/// back on, a deadline miss.
fn scenario_events() -> Vec<TraceEvent> {
    vec![
        ev(0, run(C0, V0)),
        ev(0, run(C1, V1)),
        ev(10, pre(C0, V0)),
        ev(10, run(C0, V2)),
        ev(20, blk(C1, V1)),
        ev(25, mig(V0, C0, C1)),
        ev(30, run(C1, V0)),
        ev(40, blk(C0, V2)),
        ev(40, core(C0, CoreState::Draining)),
        ev(41, mig(V2, C0, C1)),
        ev(41, core(C0, CoreState::Off)),
        ev(50, TraceKind::DeadlineMiss { vcpu: V0, deadline: ms(45), late: Nanos::from_millis(5) }),
        ev(55, TraceKind::GuestPsci { vm: VmId(1), vcpu: V2, call: PsciCall::CpuOn, result: 0 }),
        ev(60, core(C0, CoreState::Online)),
        ev(60, mig(V2, C1, C0)),
        ev(62, run(C0, V2)),
        ev(65, TraceKind::VcpuWake { core: C1, vcpu: V1 }),
        ev(70, pre(C1, V0)),
        ev(70, run(C1, V1)),
        ev(80, TraceKind::GuestFault { vm: VmId(1), vcpu: V2, fault: FaultKind::StageTwoAbort }),
        ev(90, TraceKind::Mark { id: 7, value: 42 }),
    ]
}

fn scenario_timeline() -> Timeline {
    Timeline::new(&scenario_events(), 2, ms(100))
        .with_vcpu_names([(V0, "work/0"), (V1, "work/1"), (V2, "rt/0")])
        .with_vm_names([(VmId(0), "work"), (VmId(1), "rt")])
        .with_title("scenario")
}

fn si(from: u64, to: u64, state: CoreState) -> StateInterval {
    StateInterval { from: ms(from), to: ms(to), state }
}

fn ri(core: CoreId, vcpu: VcpuId, from: u64, to: u64, end: RunEnd) -> RunInterval {
    RunInterval { core, vcpu, from: ms(from), to: ms(to), end }
}

#[test]
fn reconstructs_core_states_and_runs() {
    let tl = scenario_timeline();
    assert_eq!(tl.cores(), 2);
    assert_eq!(tl.vcpus().collect::<Vec<_>>(), vec![V0, V1, V2]);
    assert_eq!(
        tl.core_states(C0),
        &[
            si(0, 40, CoreState::Busy),
            si(40, 41, CoreState::Draining),
            si(41, 60, CoreState::Off),
            si(60, 62, CoreState::Online),
            si(62, 100, CoreState::Busy),
        ]
    );
    assert_eq!(
        tl.core_states(C1),
        &[si(0, 20, CoreState::Busy), si(20, 30, CoreState::Idle), si(30, 100, CoreState::Busy)]
    );
    assert_eq!(
        tl.core_runs(C0),
        &[ri(C0, V0, 0, 10, RunEnd::Preempted), ri(C0, V2, 10, 40, RunEnd::Blocked), ri(C0, V2, 62, 100, RunEnd::Open),]
    );
    assert_eq!(
        tl.core_runs(C1),
        &[ri(C1, V1, 0, 20, RunEnd::Blocked), ri(C1, V0, 30, 70, RunEnd::Preempted), ri(C1, V1, 70, 100, RunEnd::Open),]
    );
    assert_eq!(tl.vcpu_runs(V0), &[ri(C0, V0, 0, 10, RunEnd::Preempted), ri(C1, V0, 30, 70, RunEnd::Preempted)]);
    assert_eq!(tl.vcpu_runs(V1), &[ri(C1, V1, 0, 20, RunEnd::Blocked), ri(C1, V1, 70, 100, RunEnd::Open)]);
    assert_eq!(tl.vcpu_runs(V2), &[ri(C0, V2, 10, 40, RunEnd::Blocked), ri(C0, V2, 62, 100, RunEnd::Open)]);
    assert!(tl.vcpu_runs(VcpuId(9)).is_empty());
    assert!(tl.core_states(CoreId(2)).is_empty());

    let r0 = tl.residency(C0);
    assert_eq!(
        r0,
        Residency {
            online: Nanos::from_millis(2),
            busy: Nanos::from_millis(78),
            idle: Nanos::ZERO,
            draining: Nanos::from_millis(1),
            off: Nanos::from_millis(19),
        }
    );
    assert_eq!(tl.residency(C1).idle, Nanos::from_millis(10));
    for c in [C0, C1] {
        assert_eq!(tl.residency(c).total(), Nanos::from_millis(100), "core {c}");
    }
    // Busy time is exactly the time vCPUs ran.
    let ran: u64 = tl.core_runs(C0).iter().map(|r| (r.to - r.from).as_nanos()).sum();
    assert_eq!(tl.residency(C0).busy.as_nanos(), ran);

    let tags: Vec<&str> = tl.markers().iter().map(|m| m.kind.tag()).collect();
    assert_eq!(tags, ["mig", "mig", "miss", "psci", "mig", "fault", "mark"]);
    assert_eq!(tl.ignored_events(), 0);
    assert_eq!(tl.vcpu_label(V2), "rt/0");
    assert_eq!(tl.vcpu_label(VcpuId(9)), "vcpu 9");
}

#[test]
fn assumes_online_until_the_first_event_and_clips_to_the_range() {
    // Core 1 has no event before 30 ms; the range starts at 15 ms and ends at 50 ms.
    let events = [ev(10, run(C0, V0)), ev(30, core(C1, CoreState::Off)), ev(40, blk(C0, V0)), ev(60, run(C0, V1))];
    let tl = Timeline::between(&events, 2, ms(15), ms(50));
    assert_eq!(tl.core_states(C0), &[si(15, 40, CoreState::Busy), si(40, 50, CoreState::Idle)]);
    assert_eq!(tl.core_states(C1), &[si(15, 30, CoreState::Online), si(30, 50, CoreState::Off)]);
    assert_eq!(tl.core_runs(C0), &[ri(C0, V0, 15, 40, RunEnd::Blocked)]);
    assert_eq!(tl.ignored_events(), 1, "the run after the end");
    // V1 only appears after the end: it has no row.
    assert_eq!(tl.vcpus().collect::<Vec<_>>(), vec![V0]);
    // An empty range: nothing, but no panic either.
    let empty = Timeline::between(&events, 2, ms(50), ms(20));
    assert_eq!(empty.start(), empty.end());
    assert!(empty.core_states(C0).is_empty());
    assert_eq!(empty.residency(C0).total(), Nanos::ZERO);
    let mut out = Vec::new();
    empty.write_perfetto_json(&mut out).unwrap();
    empty.write_png(&mut out, 300).unwrap();
}

#[test]
fn odd_events_are_handled_without_panic() {
    let events = [
        ev(0, run(C0, V0)),
        // A second run on a busy core closes the first.
        ev(5, run(C0, V1)),
        // V1 runs on core 1 without leaving core 0: it left core 0.
        ev(8, run(C1, V1)),
        // A vCPU leaving a core it is not on, an unknown core, a stop of a vCPU that never ran.
        ev(9, pre(C0, V2)),
        ev(9, run(CoreId(7), V2)),
        ev(9, core(CoreId(7), CoreState::Off)),
        ev(9, TraceKind::VcpuStop { vcpu: VcpuId(5), reason: StopReason::Halted }),
        // Core 1 goes off while running V1; then V0 runs on the off core (it must be on).
        ev(10, core(C1, CoreState::Off)),
        ev(12, run(C1, V0)),
        ev(12, run(C1, V0)),
        // Zero-length run.
        ev(14, run(C0, V2)),
        ev(14, blk(C0, V2)),
        // Busy without a vCPU, idle closing a run.
        ev(15, core(C0, CoreState::Busy)),
        ev(16, core(C1, CoreState::Idle)),
    ];
    let tl = Timeline::new(&events, 2, ms(20));
    assert_eq!(tl.ignored_events(), 2);
    assert_eq!(tl.core_runs(C0), &[ri(C0, V0, 0, 5, RunEnd::Replaced), ri(C0, V1, 5, 8, RunEnd::RanElsewhere)]);
    assert_eq!(
        tl.core_runs(C1),
        &[ri(C1, V1, 8, 10, RunEnd::Core(CoreState::Off)), ri(C1, V0, 12, 16, RunEnd::Core(CoreState::Idle))]
    );
    assert_eq!(
        tl.core_states(C0),
        &[si(0, 8, CoreState::Busy), si(8, 15, CoreState::Idle), si(15, 20, CoreState::Busy)]
    );
    assert_eq!(
        tl.core_states(C1),
        &[
            si(0, 8, CoreState::Online),
            si(8, 10, CoreState::Busy),
            si(10, 12, CoreState::Off),
            si(12, 16, CoreState::Busy),
            si(16, 20, CoreState::Idle),
        ]
    );
    assert!(tl.vcpus().any(|v| v == VcpuId(5)));
    check_invariants(&tl);
}

#[test]
fn unsorted_events_are_sorted() {
    // Groups of events at the same time in reverse order; inside a group, the order stays (the
    // sort is stable, and the order of events at one instant matters).
    let mut by_time: BTreeMap<Instant, Vec<TraceEvent>> = BTreeMap::new();
    for e in scenario_events() {
        by_time.entry(e.at).or_default().push(e);
    }
    let shuffled: Vec<TraceEvent> = by_time.into_values().rev().flatten().collect();
    let a = Timeline::new(&shuffled, 2, ms(100));
    let b = scenario_timeline();
    for c in [C0, C1] {
        assert_eq!(a.core_states(c), b.core_states(c));
        assert_eq!(a.core_runs(c), b.core_runs(c));
    }
}

// ---------------------------------------------------------------------------------------------
// Invariants, checked on every timeline the tests build.

fn check_invariants(tl: &Timeline) {
    for c in 0..tl.cores() {
        let core = CoreId(c as u16);
        let states = tl.core_states(core);
        if tl.end() > tl.start() {
            assert_eq!(states.first().map(|s| s.from), Some(tl.start()), "core {c} starts at the start");
            assert_eq!(states.last().map(|s| s.to), Some(tl.end()), "core {c} ends at the end");
        }
        for s in states {
            assert!(s.from < s.to, "core {c}: empty state {s:?}");
        }
        for w in states.windows(2) {
            assert_eq!(w[0].to, w[1].from, "core {c}: states tile");
            assert_ne!(w[0].state, w[1].state, "core {c}: neighbours differ");
        }
        assert_eq!(tl.residency(core).total(), tl.end() - tl.start());
        // Runs: in order, not overlapping, inside busy states; busy without runs only where a
        // `core busy` event said so.
        let runs = tl.core_runs(core);
        let mut i = 0;
        for r in runs {
            assert!(r.from < r.to && r.core == core, "{r:?}");
            while states[i].to <= r.from {
                i += 1;
            }
            let s = states[i];
            assert_eq!(s.state, CoreState::Busy, "{r:?} in {s:?}");
            assert!(s.from <= r.from && r.to <= s.to, "{r:?} inside {s:?}");
        }
        for w in runs.windows(2) {
            assert!(w[0].to <= w[1].from, "core {c}: runs overlap: {w:?}");
        }
    }
    // The same runs, seen from the vCPUs.
    let mut by_vcpu: Vec<RunInterval> = Vec::new();
    for v in tl.vcpus() {
        let runs = tl.vcpu_runs(v);
        for w in runs.windows(2) {
            assert!(w[0].to <= w[1].from, "vCPU {v}: runs overlap: {w:?}");
        }
        by_vcpu.extend(runs.iter().inspect(|r| assert_eq!(r.vcpu, v)));
    }
    let mut by_core: Vec<RunInterval> = (0..tl.cores()).flat_map(|c| tl.core_runs(CoreId(c as u16)).to_vec()).collect();
    let key = |r: &RunInterval| (r.core, r.from);
    by_vcpu.sort_by_key(key);
    by_core.sort_by_key(key);
    assert!(by_vcpu == by_core, "the vCPUs' runs are the cores' runs");
}

// ---------------------------------------------------------------------------------------------
// JSON.

/// A Chrome trace time (microseconds, maybe fractional) in nanoseconds, rounded as Perfetto
/// does.
fn ns(v: &Value) -> i64 {
    let us = v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"));
    (us * 1000.0).round() as i64
}

/// A slice of a thread: from, to (ns), name.
type Slice = (i64, i64, String);

struct Parsed {
    events: Vec<Value>,
}

impl Parsed {
    fn of(tl: &Timeline) -> Parsed {
        let mut out = Vec::new();
        tl.write_perfetto_json(&mut out).unwrap();
        let root: Value = serde_json::from_slice(&out).unwrap_or_else(|e| panic!("invalid JSON: {e}"));
        assert_eq!(root["displayTimeUnit"], "ns");
        let events = root["traceEvents"].as_array().expect("traceEvents is an array").clone();
        let p = Parsed { events };
        p.check_structure();
        p
    }

    fn check_structure(&self) {
        let mut slices: BTreeMap<(u64, u64), Vec<Slice>> = BTreeMap::new();
        for e in &self.events {
            let ph = e["ph"].as_str().expect("ph");
            assert!(e["pid"].is_u64(), "{e}");
            assert!(e["name"].is_string(), "{e}");
            match ph {
                "M" => assert!(e["args"].is_object(), "{e}"),
                "X" => {
                    let (ts, dur) = (ns(&e["ts"]), ns(&e["dur"]));
                    assert!(ts >= 0 && dur > 0, "{e}");
                    let key = (e["pid"].as_u64().unwrap(), e["tid"].as_u64().expect("tid"));
                    slices.entry(key).or_default().push((ts, ts + dur, e["name"].as_str().unwrap().to_string()));
                }
                "i" => {
                    assert!(matches!(e["s"].as_str(), Some("t" | "p" | "g")), "{e}");
                    assert!(ns(&e["ts"]) >= 0);
                    assert!(e["tid"].is_u64(), "{e}");
                }
                "C" => {
                    assert!(ns(&e["ts"]) >= 0);
                    let args = e["args"].as_object().expect("counter args");
                    assert!(!args.is_empty() && args.values().all(|v| v.is_number()), "{e}");
                }
                other => panic!("unexpected phase {other}"),
            }
        }
        // On every thread, slices nest properly: sorted by start (longest first), each one is
        // either inside the enclosing one or after it.
        for ((pid, tid), mut list) in slices {
            list.sort_by_key(|&(from, to, _)| (from, std::cmp::Reverse(to)));
            let mut stack: Vec<(i64, i64)> = Vec::new();
            let mut depth_max = 0;
            for (from, to, name) in &list {
                while stack.last().is_some_and(|&(_, end)| end <= *from) {
                    stack.pop();
                }
                if let Some(&(_, end)) = stack.last() {
                    assert!(
                        *to <= end,
                        "pid {pid} tid {tid}: `{name}` [{from}, {to}) overlaps its parent ending {end}"
                    );
                }
                stack.push((*from, *to));
                depth_max = depth_max.max(stack.len());
            }
            let limit = if pid == u64::from(PERFETTO_CORES_PID) { 2 } else { 1 };
            assert!(depth_max <= limit, "pid {pid} tid {tid}: slices nest {depth_max} deep");
        }
    }

    fn with(&self, ph: &str, pid: u32, tid: Option<u32>) -> impl Iterator<Item = &Value> + '_ {
        let ph = ph.to_string();
        self.events
            .iter()
            .filter(move |e| e["ph"] == ph.as_str() && e["pid"] == pid && tid.is_none_or(|t| e["tid"] == t))
    }

    fn thread_name(&self, pid: u32, tid: u32) -> Option<String> {
        self.with("M", pid, Some(tid))
            .find(|e| e["name"] == "thread_name")
            .and_then(|e| e["args"]["name"].as_str().map(str::to_string))
    }
}

#[test]
fn perfetto_json_has_threads_slices_instants() {
    let tl = scenario_timeline();
    let p = Parsed::of(&tl);
    let cp = PERFETTO_CORES_PID;
    let vp = PERFETTO_VCPUS_PID;
    let names: Vec<_> = p.with("M", cp, None).filter(|e| e["name"] == "process_name").collect();
    assert_eq!(names[0]["args"]["name"], "cores");
    assert_eq!(p.thread_name(cp, perfetto_core_tid(C1)).as_deref(), Some("core 1"));
    assert_eq!(p.thread_name(vp, perfetto_vcpu_tid(V2)).as_deref(), Some("rt/0 (v2)"));

    // Core 0: its states, and the runs nested in busy, in microseconds.
    let slices: Vec<(String, i64, i64)> = p
        .with("X", cp, Some(perfetto_core_tid(C0)))
        .map(|e| (e["name"].as_str().unwrap().to_string(), ns(&e["ts"]), ns(&e["dur"])))
        .collect();
    let m = MS as i64;
    assert_eq!(
        slices,
        vec![
            ("busy".to_string(), 0, 40 * m),
            ("work/0".to_string(), 0, 10 * m),
            ("rt/0".to_string(), 10 * m, 30 * m),
            ("drain".to_string(), 40 * m, m),
            ("off".to_string(), 41 * m, 19 * m),
            ("online".to_string(), 60 * m, 2 * m),
            ("busy".to_string(), 62 * m, 38 * m),
            ("rt/0".to_string(), 62 * m, 38 * m),
        ]
    );
    // V0's thread: where it ran.
    let v0: Vec<(String, i64)> = p
        .with("X", vp, Some(perfetto_vcpu_tid(V0)))
        .map(|e| (e["name"].as_str().unwrap().to_string(), ns(&e["ts"])))
        .collect();
    assert_eq!(v0, vec![("core 0".to_string(), 0), ("core 1".to_string(), 30 * m)]);
    let run = p.with("X", vp, Some(perfetto_vcpu_tid(V0))).next().unwrap();
    assert_eq!(run["args"]["core"], 0);
    assert_eq!(run["args"]["end"], "preempted");

    // Instants: migrations and the miss on the vCPU's thread, the fault, the PSCI call.
    let instants: Vec<(String, u64, i64)> = p
        .events
        .iter()
        .filter(|e| e["ph"] == "i")
        .map(|e| (e["name"].as_str().unwrap().to_string(), e["tid"].as_u64().unwrap(), ns(&e["ts"])))
        .collect();
    let tid = |v: VcpuId| u64::from(perfetto_vcpu_tid(v));
    assert!(instants.contains(&("migrate c0>c1".to_string(), tid(V0), 25 * m)), "{instants:?}");
    assert!(instants.contains(&("deadline miss".to_string(), tid(V0), 50 * m)), "{instants:?}");
    assert!(instants.contains(&("psci cpu_on".to_string(), tid(V2), 55 * m)), "{instants:?}");
    assert!(instants.contains(&("fault s2abort".to_string(), tid(V2), 80 * m)), "{instants:?}");
    assert!(instants.iter().any(|(n, _, t)| n == "mark 7" && *t == 90 * m), "{instants:?}");
    let miss = p.events.iter().find(|e| e["name"] == "deadline miss").unwrap();
    assert_eq!(miss["args"]["late_ns"], 5 * MS);
    let fault = p.events.iter().find(|e| e["name"] == "fault s2abort").unwrap();
    assert_eq!(fault["args"]["vm_name"], "rt");
    // No power overlay, no counters.
    assert!(p.events.iter().all(|e| e["ph"] != "C"));
}

#[test]
fn perfetto_json_times_are_exact_nanoseconds() {
    // Odd nanosecond times survive the trip through microseconds.
    let events = [
        TraceEvent { at: Instant(1_000_000_007), kind: run(C0, V0) },
        TraceEvent { at: Instant(1_000_000_019), kind: pre(C0, V0) },
        TraceEvent { at: Instant(1_000_000_019), kind: run(C0, V1) },
    ];
    let tl = Timeline::new(&events, 1, Instant(86_400_000_000_123));
    let p = Parsed::of(&tl);
    let runs: Vec<(i64, i64)> =
        p.with("X", PERFETTO_VCPUS_PID, None).map(|e| (ns(&e["ts"]), ns(&e["ts"]) + ns(&e["dur"]))).collect();
    assert_eq!(runs, vec![(1_000_000_007, 1_000_000_019), (1_000_000_019, 86_400_000_000_123)]);
}

#[test]
fn power_overlay_adds_counters_and_rows() {
    let power = |_: CoreId, s: CoreState| match s {
        CoreState::Busy => 1_200_000,
        CoreState::Idle | CoreState::Online | CoreState::Draining => 50_500,
        CoreState::Off => 0,
    };
    let tl = scenario_timeline().with_state_power(power);
    assert_eq!(
        tl.power(C1),
        &[
            PowerSpan { core: C1, from: ms(0), to: ms(20), power_uw: 1_200_000 },
            PowerSpan { core: C1, from: ms(20), to: ms(30), power_uw: 50_500 },
            PowerSpan { core: C1, from: ms(30), to: ms(100), power_uw: 1_200_000 },
        ]
    );
    let p = Parsed::of(&tl);
    let counters: Vec<(String, i64, f64)> = p
        .events
        .iter()
        .filter(|e| e["ph"] == "C")
        .map(|e| (e["name"].as_str().unwrap().to_string(), ns(&e["ts"]), e["args"]["mW"].as_f64().unwrap()))
        .collect();
    let c1: Vec<(i64, f64)> = counters.iter().filter(|c| c.0 == "core 1 power").map(|c| (c.1, c.2)).collect();
    let m = MS as i64;
    assert_eq!(c1, vec![(0, 1200.0), (20 * m, 50.5), (30 * m, 1200.0), (100 * m, 0.0)]);

    // Explicit spans: clipped, overlaps dropped, unknown cores ignored; a gap reads as 0.
    let tl = Timeline::new(&scenario_events(), 2, ms(100)).with_power([
        PowerSpan { core: C0, from: ms(90), to: ms(200), power_uw: 7 },
        PowerSpan { core: C0, from: ms(0), to: ms(50), power_uw: 5 },
        PowerSpan { core: C0, from: ms(40), to: ms(60), power_uw: 6 },
        PowerSpan { core: CoreId(9), from: ms(0), to: ms(50), power_uw: 5 },
    ]);
    assert_eq!(
        tl.power(C0),
        &[
            PowerSpan { core: C0, from: ms(0), to: ms(50), power_uw: 5 },
            PowerSpan { core: C0, from: ms(50), to: ms(60), power_uw: 6 },
            PowerSpan { core: C0, from: ms(90), to: ms(100), power_uw: 7 },
        ]
    );
    let p = Parsed::of(&tl);
    let c0: Vec<(i64, f64)> = p
        .events
        .iter()
        .filter(|e| e["ph"] == "C" && e["name"] == "core 0 power")
        .map(|e| (ns(&e["ts"]), e["args"]["mW"].as_f64().unwrap()))
        .collect();
    assert_eq!(c0, vec![(0, 0.005), (50 * m, 0.006), (60 * m, 0.0), (90 * m, 0.007), (100 * m, 0.0)]);
}

// ---------------------------------------------------------------------------------------------
// PNG.

struct Image {
    width: u32,
    height: u32,
    rgb: Vec<u8>,
}

impl Image {
    fn decode(bytes: &[u8]) -> Image {
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().expect("a PNG header");
        let mut buf = vec![0; reader.output_buffer_size().expect("a size")];
        let info = reader.next_frame(&mut buf).expect("a PNG frame");
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        buf.truncate(info.buffer_size());
        Image { width: info.width, height: info.height, rgb: buf }
    }

    fn at(&self, x: u32, y: u32) -> [u8; 3] {
        let i = (y as usize * self.width as usize + x as usize) * 3;
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }
}

fn png_of(tl: &Timeline, width: u32) -> (Vec<u8>, Image) {
    let mut bytes = Vec::new();
    tl.write_png(&mut bytes, width).unwrap();
    let image = Image::decode(&bytes);
    (bytes, image)
}

#[test]
fn png_shows_states_placement_and_markers() {
    let tl = scenario_timeline();
    let layout = tl.png_layout(1000);
    let (bytes, img) = png_of(&tl, 1000);
    assert_eq!((img.width, img.height), (layout.width, layout.height));
    assert_eq!(img.width, 1000);
    assert_eq!(layout.core_rows.len(), 2);
    assert!(layout.power_rows.is_empty());
    assert_eq!(layout.vcpu_rows.iter().map(|r| r.0).collect::<Vec<_>>(), vec![V0, V1, V2]);

    let mid = |y: u32| y + layout.row_height / 2;
    let core_px = |c: usize, t_ms: u64| img.at(layout.x_at(ms(t_ms)), mid(layout.core_rows[c]));
    // Core 0: V0, then V2, drain (one pixel at this width, still shown), off, online, V2.
    assert_eq!(core_px(0, 5), vcpu_color(V0));
    assert_eq!(core_px(0, 25), vcpu_color(V2));
    assert_eq!(core_px(0, 50), state_color(CoreState::Off));
    assert_eq!(core_px(0, 61), state_color(CoreState::Online));
    assert_eq!(core_px(0, 80), vcpu_color(V2));
    // Core 1: V1, idle, V0, V1.
    assert_eq!(core_px(1, 10), vcpu_color(V1));
    assert_eq!(core_px(1, 25), state_color(CoreState::Idle));
    assert_eq!(core_px(1, 50), vcpu_color(V0));
    assert_eq!(core_px(1, 90), vcpu_color(V1));

    // vCPU rows: coloured by the core, blank while not running.
    let row = |v: VcpuId| layout.vcpu_rows.iter().find(|r| r.0 == v).unwrap().1;
    let vcpu_px = |v: VcpuId, t_ms: u64| img.at(layout.x_at(ms(t_ms)), mid(row(v)));
    assert_eq!(vcpu_px(V0, 5), core_color(C0));
    assert_eq!(vcpu_px(V0, 22), BACKGROUND);
    assert_eq!(vcpu_px(V0, 45), core_color(C1));
    assert_eq!(vcpu_px(V1, 25), BACKGROUND);
    assert_eq!(vcpu_px(V2, 20), core_color(C0));
    assert_eq!(vcpu_px(V2, 53), BACKGROUND);
    // The miss at 50 ms: a red mark on V0's row; the migration at 25 ms: a tick under it.
    assert_eq!(img.at(layout.x_at(ms(50)), row(V0)), MISS_COLOR);
    assert_eq!(img.at(layout.x_at(ms(25)), row(V0) + layout.row_height), MIGRATION_COLOR);

    // Labels and ticks are drawn: text-coloured pixels left of the plot and under the axis.
    let ink = |x0: u32, x1: u32, y0: u32, y1: u32| {
        (y0..y1).flat_map(|y| (x0..x1).map(move |x| (x, y))).filter(|&(x, y)| img.at(x, y) == TEXT).count()
    };
    assert!(ink(0, layout.plot_x, layout.core_rows[0], layout.core_rows[0] + layout.row_height) > 10, "core label");
    assert!(ink(layout.plot_x, img.width, layout.axis_y + 6, layout.axis_y + 18) > 30, "tick labels");
    assert!(ink(0, img.width, layout.axis_y + 20, img.height) > 200, "legend");

    // Deterministic.
    let (again, _) = png_of(&tl, 1000);
    assert_eq!(bytes, again);
    // Another width, another picture with the same states.
    let (_, wide) = png_of(&tl, 3000);
    assert_eq!(wide.width, 3000);
    let l3 = tl.png_layout(3000);
    assert_eq!(wide.at(l3.x_at(ms(50)), mid(l3.core_rows[0])), state_color(CoreState::Off));
}

#[test]
fn png_columns_show_what_covers_most_of_them() {
    // Core 0 alternates V0 (3 us) and V1 (1 us) for 100 ms: at 500 px each column covers 200 us,
    // and V0 covers most of each. Core 1 alternates 1 us off and 3 us idle: idle everywhere.
    let mut events = Vec::new();
    let mut t = 0;
    while t < 100 * MS {
        events.push(TraceEvent { at: Instant(t), kind: run(C0, V0) });
        events.push(TraceEvent { at: Instant(t), kind: core(C1, CoreState::Off) });
        events.push(TraceEvent { at: Instant(t + 3_000), kind: run(C0, V1) });
        events.push(TraceEvent { at: Instant(t + 1_000), kind: core(C1, CoreState::Idle) });
        t += 4_000;
    }
    events.sort_by_key(|e| e.at);
    let tl = Timeline::new(&events, 2, ms(100));
    let layout = tl.png_layout(500);
    let (_, img) = png_of(&tl, 500);
    let y0 = layout.core_rows[0] + 3;
    let y1 = layout.core_rows[1] + 3;
    for x in layout.plot_x..layout.plot_x + layout.plot_width {
        assert_eq!(img.at(x, y0), vcpu_color(V0), "column {x}");
        assert_eq!(img.at(x, y1), state_color(CoreState::Idle), "column {x}");
    }
    // V1's row: on core 0 a quarter of every column: pale but not blank.
    let (v1, y) = layout.vcpu_rows[1];
    assert_eq!(v1, V1);
    let px = img.at(layout.plot_x + 10, y + 3);
    assert_ne!(px, BACKGROUND);
    assert_ne!(px, core_color(C0));
}

#[test]
fn png_draws_power_rows() {
    let tl = scenario_timeline().with_state_power(|_, s| match s {
        CoreState::Busy => 1_000_000,
        CoreState::Off => 0,
        _ => 100_000,
    });
    let layout = tl.png_layout(800);
    let (_, img) = png_of(&tl, 800);
    assert_eq!(layout.power_rows.len(), 2);
    let bottom = |c: usize| layout.power_rows[c] + layout.power_height - 2;
    let top = |c: usize| layout.power_rows[c];
    // Busy: a full bar; off: nothing; idle: a low bar.
    assert_eq!(img.at(layout.x_at(ms(5)), top(0)), POWER_COLOR);
    assert_eq!(img.at(layout.x_at(ms(53)), bottom(0)), BACKGROUND);
    assert_eq!(img.at(layout.x_at(ms(25)), bottom(1)), POWER_COLOR);
    assert_eq!(img.at(layout.x_at(ms(25)), top(1)), BACKGROUND);
}

#[test]
fn png_survives_extremes() {
    let tl = scenario_timeline();
    for width in [0, 1, 50] {
        let (_, img) = png_of(&tl, width);
        assert_eq!(img.width, tl.png_layout(width).width);
        assert!(img.width < 400, "as narrow as the labels allow");
    }
    for width in [20_000, u32::MAX] {
        let layout = tl.png_layout(width);
        assert_eq!(layout.width, 16_384);
        assert_eq!(tl.render(&layout).len(), layout.width as usize * layout.height as usize * 3);
    }
    // A 1 ns run drawn 1000 px wide; a run of 24 hours; no cores and no events.
    let events = [TraceEvent { at: Instant(0), kind: run(C0, V0) }];
    png_of(&Timeline::new(&events, 1, Instant(1)), 1000);
    png_of(&Timeline::new(&events, 1, Instant(86_400 * 1_000_000_000)), 1000);
    png_of(&Timeline::new(&[], 0, Instant(0)), 1000);
    // Many vCPUs: the picture keeps the first 256 rows.
    let many: Vec<TraceEvent> =
        (0..400u16).map(|i| TraceEvent { at: Instant(u64::from(i)), kind: run(C0, VcpuId(i)) }).collect();
    let tl = Timeline::new(&many, 1, Instant(1000));
    assert_eq!(tl.png_layout(800).vcpu_rows.len(), 256);
    png_of(&tl, 800);
}

// ---------------------------------------------------------------------------------------------
// Random input, and a large trace.

/// xorshift64*: a small deterministic generator for the fuzz test.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_event(rng: &mut Rng, t: u64) -> TraceEvent {
    let c = CoreId(rng.below(4) as u16); // core 3 is beyond the 3 cores
    let d = CoreId(rng.below(4) as u16);
    let v = VcpuId(rng.below(6) as u16);
    let states = [CoreState::Online, CoreState::Busy, CoreState::Idle, CoreState::Draining, CoreState::Off];
    let kind = match rng.below(14) {
        0..=3 => run(c, v),
        4 => pre(c, v),
        5 => blk(c, v),
        6 => TraceKind::VcpuPark { core: c, vcpu: v },
        7 => TraceKind::VcpuUnpark { core: c, vcpu: v },
        8 => TraceKind::VcpuStop { vcpu: v, reason: StopReason::Fault },
        9 => mig(v, c, d),
        10 => core(c, states[rng.below(5) as usize]),
        11 => TraceKind::DeadlineMiss { vcpu: v, deadline: Instant(t), late: Nanos(3) },
        12 => TraceKind::Reservation { core: c, vcpu: v, budget: Nanos(1), period: Nanos(2), admitted: true },
        _ => TraceKind::Checkpoint { vm: VmId(0), step: vcpu_runtime::trace::CheckpointStep::Begin, bytes: 0 },
    };
    TraceEvent { at: Instant(t), kind }
}

#[test]
fn random_events_keep_the_invariants() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for round in 0..300 {
        let n = rng.below(60) as usize;
        let mut t = rng.below(5);
        let mut events = Vec::new();
        for _ in 0..n {
            // Mostly increasing, sometimes equal, sometimes going back.
            t = match rng.below(8) {
                0 => t.saturating_sub(rng.below(10)),
                1 | 2 => t,
                _ => t + rng.below(20),
            };
            events.push(random_event(&mut rng, t));
        }
        let start = Instant(rng.below(30));
        let end = Instant(start.as_nanos() + rng.below(400));
        let tl = Timeline::between(&events, 3, start, end)
            .with_state_power(|c, s| u64::from(c.0) * 1000 + if s == CoreState::Busy { 500 } else { 7 });
        check_invariants(&tl);
        Parsed::of(&tl);
        let layout = tl.png_layout(200 + round);
        assert_eq!(tl.render(&layout).len(), layout.width as usize * layout.height as usize * 3);
        // Encoding is slow in a debug build: a few rounds are enough.
        if round % 20 == 0 {
            let (_, img) = png_of(&tl, 200 + round);
            assert_eq!((img.width, img.height), (layout.width, layout.height));
        }
    }
}

/// Collects the simulator's own account of what ran where.
#[derive(Default)]
struct Ran(BTreeMap<CoreId, Vec<(VcpuId, Instant, Instant)>>);

impl SimObserver for Ran {
    fn vcpu_ran(&mut self, core: CoreId, vcpu: VcpuId, from: Instant, to: Instant) {
        let list = self.0.entry(core).or_default();
        match list.last_mut() {
            Some(last) if last.0 == vcpu && last.2 == from => last.2 = to,
            _ if from < to => list.push((vcpu, from, to)),
            _ => {}
        }
    }
}

#[test]
fn simulator_trace_rebuilds_what_the_simulator_ran() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scenarios/rt-mixed.toml");
    let s = scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let mut sim = Simulator::from_scenario(&s).unwrap();
    let mut trace: Vec<TraceEvent> = Vec::new();
    let mut ran = Ran::default();
    let end = ms(300);
    sim.run_until(ms(100), &mut trace, &mut ran);
    sim.take_offline(1, &mut trace).unwrap();
    sim.run_until(ms(200), &mut trace, &mut ran);
    sim.bring_online(1, &mut trace);
    sim.run_until(end, &mut trace, &mut ran);
    let report = sim.report();
    assert!(report.violations.is_empty(), "{:?}", report.violations);

    let tl = Timeline::new(&trace, 2, end)
        .with_vcpu_names(report.vcpus.iter().map(|v| (VcpuId(v.id), v.name.clone())))
        .with_title(s.name.clone());
    check_invariants(&tl);
    for c in [C0, C1] {
        let rebuilt: Vec<(VcpuId, Instant, Instant)> = tl.core_runs(c).iter().map(|r| (r.vcpu, r.from, r.to)).collect();
        assert_eq!(rebuilt, ran.0.get(&c).cloned().unwrap_or_default(), "core {c}");
    }
    // Core 1 was off from about 100 to 200 ms.
    let off = tl.residency(C1).off;
    assert!(off >= Nanos::from_millis(99) && off <= Nanos::from_millis(100), "{off}");
    assert_eq!(tl.vcpu_label(VcpuId(0)), "rt/0");
    Parsed::of(&tl);
    png_of(&tl, 1200);
}

#[test]
fn a_large_trace_is_handled_in_linear_time() {
    // 4 cores, 16 vCPUs, 400 000 events over 10 s: runs, preemptions, blocks, migrations, cores
    // going off and on, misses.
    let mut rng = Rng(77);
    let mut events = Vec::with_capacity(400_000);
    let mut running: [Option<VcpuId>; 4] = [None; 4];
    let mut off = [false; 4];
    let mut t = 0u64;
    while events.len() < 400_000 {
        t += 25_000;
        let c = rng.below(4) as usize;
        let core_id = CoreId(c as u16);
        if off[c] {
            if rng.below(50) == 0 {
                off[c] = false;
                events.push(TraceEvent { at: Instant(t), kind: core(core_id, CoreState::Online) });
            }
            continue;
        }
        if let Some(v) = running[c].take() {
            let kind = match rng.below(10) {
                0 => blk(core_id, v),
                1 => mig(v, core_id, CoreId(((c + 1) % 4) as u16)),
                _ => pre(core_id, v),
            };
            events.push(TraceEvent { at: Instant(t), kind });
        }
        if rng.below(400) == 0 {
            off[c] = true;
            events.push(TraceEvent { at: Instant(t), kind: core(core_id, CoreState::Off) });
            continue;
        }
        let v = VcpuId((c * 4 + rng.below(4) as usize) as u16);
        running[c] = Some(v);
        events.push(TraceEvent { at: Instant(t), kind: run(core_id, v) });
        if rng.below(100) == 0 {
            events.push(TraceEvent {
                at: Instant(t),
                kind: TraceKind::DeadlineMiss { vcpu: v, deadline: Instant(t), late: Nanos(1) },
            });
        }
    }
    let end = Instant(t + 1);
    let tl = Timeline::new(&events, 4, end);
    check_invariants(&tl);
    let runs: usize = (0..4).map(|c| tl.core_runs(CoreId(c)).len()).sum();
    assert!(runs > 100_000, "{runs} runs");

    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut json = Count(0);
    tl.write_perfetto_json(&mut json).unwrap();
    assert!(json.0 > 10_000_000, "{} bytes of JSON", json.0);
    let (_, img) = png_of(&tl, 1600);
    assert_eq!(img.width, 1600);
}
