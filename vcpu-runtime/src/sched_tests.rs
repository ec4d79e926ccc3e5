//! Unit tests of the per-core runtime, driven by hand.
//!
//! [`drive`] stands in for a platform's core loop on one core, single-threaded: it asks
//! [`CoreRuntime::next`] what to do, "runs" the vCPU by asking a guest model when and why it
//! comes back, and reports that exit. Every test asserts on measured numbers: CPU time from
//! [`VcpuStats`], the runs the driver performed, the shared state words and the trace.

extern crate std;

use std::string::ToString;
use std::vec;
use std::vec::Vec;

use super::*;
use crate::system::{AffinityState, PowerOnError, VcpuStatus};
use crate::util::{CAPACITY_SCALE, UTIL_ONE};

const C0: CoreId = CoreId(0);
const C1: CoreId = CoreId(1);
const V0: VcpuId = VcpuId(0);
const V1: VcpuId = VcpuId(1);
const V2: VcpuId = VcpuId(2);
const V3: VcpuId = VcpuId(3);

const fn ms(n: u64) -> Nanos {
    Nanos::from_millis(n)
}

const fn at_ms(n: u64) -> Instant {
    Instant(n * 1_000_000)
}

/// A proportional-share vCPU of VM 0 that may run anywhere and starts runnable.
fn share(index: u16, weight: u32) -> VcpuConfig {
    VcpuConfig {
        vm: VmId(0),
        index_in_vm: index,
        weight,
        reservation: None,
        affinity: CoreMask::ALL,
        starts_parked: false,
    }
}

fn reserved(index: u16, budget: Nanos, period: Nanos) -> VcpuConfig {
    VcpuConfig { reservation: Some(Reservation { budget, period }), ..share(index, 256) }
}

fn pinned(cfg: VcpuConfig, affinity: CoreMask) -> VcpuConfig {
    VcpuConfig { affinity, ..cfg }
}

fn parked(cfg: VcpuConfig) -> VcpuConfig {
    VcpuConfig { starts_parked: true, ..cfg }
}

fn config(cores: u16, vcpus: Vec<VcpuConfig>) -> RuntimeConfig {
    RuntimeConfig { cores, params: SchedParams::default(), vcpus }
}

fn system(cores: u16, vcpus: Vec<VcpuConfig>) -> (System, Vec<CoreRuntime>) {
    build(&config(cores, vcpus), Instant::ZERO).expect("the test system builds")
}

/// One run of a vCPU that [`drive`] performed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slice {
    vcpu: VcpuId,
    start: Instant,
    end: Instant,
    /// The `until` of the decision (before the driver cut it at the end of the drive).
    until: Instant,
    reason: ExitReason,
}

/// The guest model of an always-busy vCPU: it runs until its time is up.
fn busy(_: VcpuId, _: Instant, until: Instant) -> (Instant, ExitReason) {
    (until, ExitReason::Preempted)
}

/// Runs `core` from `from` to `to` as the platform's core loop does. `guest(vcpu, start, end)`
/// says when (at most `end`: the decision's `until`, or `to` if that is earlier, where a timer
/// tick takes the core back) and why the vCPU comes back. Idle stretches last until the
/// decision's `until` (or `to`). Returns the runs, in order.
fn drive<T: TraceSink>(
    sys: &System,
    core: &mut CoreRuntime,
    from: Instant,
    to: Instant,
    trace: &mut T,
    mut guest: impl FnMut(VcpuId, Instant, Instant) -> (Instant, ExitReason),
) -> Vec<Slice> {
    let mut now = from;
    let mut slices = Vec::new();
    let mut empty_runs = 0;
    while now < to {
        match core.next(sys, now, trace) {
            Decision::Run { vcpu, until } => {
                assert!(until > now, "core {} decided to run vCPU {vcpu} until {until:?} at {now:?}", core.core());
                assert_eq!(sys.status(vcpu), status(core.core(), VcpuState::Running, false, false));
                assert_eq!(core.current(), Some(vcpu));
                let end_max = until.min(to);
                let (end, reason) = guest(vcpu, now, end_max);
                assert!(now <= end && end <= end_max, "the guest model ended a run outside it");
                core.handle(sys, Event::Exit { vcpu, reason }, end, trace).expect("the exit of the running vCPU");
                slices.push(Slice { vcpu, start: now, end, until, reason });
                empty_runs = if end == now { empty_runs + 1 } else { 0 };
                assert!(empty_runs < 1_000, "no progress on core {} at {now:?}", core.core());
                now = end;
            }
            Decision::Idle { until } => {
                if let Some(u) = until {
                    assert!(u > now, "core {} idles until {u:?} at {now:?}", core.core());
                }
                now = until.map_or(to, |u| u.min(to));
            }
            Decision::PowerOff => break,
        }
    }
    slices
}

/// CPU time `vcpu` got in `[from, to)` according to the runs.
fn ran(slices: &[Slice], vcpu: VcpuId, from: Instant, to: Instant) -> Nanos {
    slices
        .iter()
        .filter(|s| s.vcpu == vcpu)
        .map(|s| s.end.min(to).since(s.start.max(from)))
        .fold(Nanos::ZERO, |a, b| a + b)
}

/// The longest `vcpu` waited for the core between two of its runs (or from the first run).
fn worst_wait(slices: &[Slice], vcpu: VcpuId) -> Nanos {
    let mut last_end = slices.first().map_or(Instant::ZERO, |s| s.start);
    let mut worst = Nanos::ZERO;
    for s in slices.iter().filter(|s| s.vcpu == vcpu) {
        worst = worst.max(s.start.since(last_end));
        last_end = s.end;
    }
    worst
}

/// The scheduling state of `vcpu` on `core` (panics if the core does not own it).
fn sched(core: &CoreRuntime, vcpu: VcpuId) -> &VcpuSched {
    core.vcpus().iter().find(|v| v.id() == vcpu).unwrap_or_else(|| panic!("core {} does not own {vcpu}", core.core()))
}

fn owns(core: &CoreRuntime, vcpu: VcpuId) -> bool {
    core.vcpus().iter().any(|v| v.id() == vcpu)
}

fn status(owner: CoreId, state: VcpuState, wake_pending: bool, power_on_pending: bool) -> VcpuStatus {
    VcpuStatus { owner, state, wake_pending, power_on_pending }
}

fn cpu(core: &CoreRuntime, vcpu: VcpuId) -> Nanos {
    sched(core, vcpu).stats().cpu_time
}

fn frac(part: Nanos, whole: Nanos) -> f64 {
    part.as_nanos() as f64 / whole.as_nanos() as f64
}

/// Runs the core's next decision, which must be `vcpu`, and has it come back with `reason` at `end`.
fn run_once(
    sys: &System,
    core: &mut CoreRuntime,
    vcpu: VcpuId,
    now: Instant,
    end: Instant,
    reason: ExitReason,
    trace: &mut impl TraceSink,
) {
    match core.next(sys, now, trace) {
        Decision::Run { vcpu: v, .. } if v == vcpu => {}
        other => panic!("core {} should run vCPU {vcpu} at {now:?} but decided {other:?}", core.core()),
    }
    core.handle(sys, Event::Exit { vcpu, reason }, end, trace).expect("exit");
}

// ---- proportional share ------------------------------------------------------------------------

#[test]
fn weights_1_2_4_share_one_core_in_proportion() {
    let (sys, mut cores) = system(1, vec![share(0, 128), share(1, 256), share(2, 512)]);
    let end = at_ms(10_000);
    let slices = drive(&sys, &mut cores[0], Instant::ZERO, end, &mut (), busy);
    let core = &cores[0];
    let total = end.since(Instant::ZERO);
    // The core never idled, and the counters agree with the runs the driver performed.
    assert_eq!(core.stats().busy, total);
    for v in [V0, V1, V2] {
        assert_eq!(cpu(core, v), ran(&slices, v, Instant::ZERO, end), "vCPU {v}");
    }
    for (v, expected) in [(V0, 1.0 / 7.0), (V1, 2.0 / 7.0), (V2, 4.0 / 7.0)] {
        let got = frac(cpu(core, v), total);
        assert!((got - expected).abs() <= 0.02 * expected, "vCPU {v}: {got:.4} of the core, expected {expected:.4}");
    }
    // Timeslices are respected: no run is longer than 4 ms.
    assert!(slices.iter().all(|s| s.end.since(s.start) <= SchedParams::default().timeslice));
}

#[test]
fn a_vcpu_that_blocks_half_the_time_gets_only_bounded_wake_credit() {
    let params = SchedParams::default();
    let (sys, mut cores) = system(1, vec![share(0, 256), share(1, 256), share(2, 256)]);
    let core = &mut cores[0];
    let phase = ms(50);
    let mut all = Vec::new();
    let mut worst_phase = Nanos::ZERO;
    for k in 0..100u64 {
        let t0 = at_ms(100 * k);
        // V0 wants the core for 50 ms...
        let busy_phase = drive(&sys, core, t0, t0 + phase, &mut (), busy);
        let got = ran(&busy_phase, V0, t0, t0 + phase);
        worst_phase = worst_phase.max(got);
        // ...then executes WFI as soon as it is entered, and is woken 50 ms later.
        let sleep_phase = drive(&sys, core, t0 + phase, t0 + phase + phase, &mut (), |v, start, until| {
            if v == V0 {
                (start, ExitReason::Wfi)
            } else {
                (until, ExitReason::Preempted)
            }
        });
        assert_eq!(sys.status(V0).state, VcpuState::Blocked, "V0 blocked in phase {k}");
        assert_eq!(sys.wake(V0), Some(C0));
        all.extend(busy_phase);
        all.extend(sleep_phase);
    }
    // In every phase where it wants the core, V0 gets no more than a third of it, plus at most
    // its wake credit and one timeslice of rounding (a sleeper's credit is bounded).
    let fair = Nanos(phase.as_nanos() / 3);
    assert!(
        worst_phase <= fair + params.wake_credit + params.timeslice,
        "V0 got {worst_phase} of a 50 ms phase (fair share {fair})"
    );
    // It is not punished for sleeping either: over all phases, at least its fair third.
    let v0 = cpu(core, V0);
    assert!(v0 >= Nanos(100 * fair.as_nanos()), "V0 got {v0} in 100 phases of {phase}");
    // The others are never starved: the sleeper's returns make no one wait longer than in the
    // same system without sleeping (three always-busy vCPUs: round robin, a wait of two
    // timeslices) plus the one turn its bounded wake credit can buy it.
    let (base_sys, mut base) = system(1, vec![share(0, 256), share(1, 256), share(2, 256)]);
    let baseline = drive(&base_sys, &mut base[0], Instant::ZERO, at_ms(10_000), &mut (), busy);
    let bound = [V0, V1, V2].iter().map(|&v| worst_wait(&baseline, v)).max().unwrap_or(Nanos::ZERO);
    assert_eq!(bound, Nanos(2 * params.timeslice.as_nanos()), "baseline worst wait {bound}");
    for v in [V1, V2] {
        let worst = worst_wait(&all, v);
        assert!(
            worst <= bound + params.timeslice,
            "vCPU {v} waited {worst} for the core (without the sleeper: {bound})"
        );
        // And together they had the rest of the core.
        assert!(cpu(core, v) >= ms(4_000), "vCPU {v} got {}", cpu(core, v));
    }
    assert_eq!(core.stats().busy, ms(10_000), "the core never idled");
    assert_eq!(all.iter().filter(|s| s.reason == ExitReason::Wfi).count(), 100);
    assert!(all.iter().filter(|s| s.reason == ExitReason::Wfi).all(|s| s.vcpu == V0));
    // 99 wake-ups taken in; the last one waits in the word for the next decision.
    assert_eq!(sched(core, V0).stats().wakeups, 99);
    assert_eq!(sys.status(V0), status(C0, VcpuState::Blocked, true, false));
}

#[test]
fn equal_weights_on_two_cores_do_not_share_a_vcpu() {
    // Build places share vCPUs on the core with the fewest, so four spread two and two.
    let (sys, mut cores) = system(2, vec![share(0, 256), share(1, 256), share(2, 256), share(3, 256)]);
    assert!(owns(&cores[0], V0) && owns(&cores[1], V1) && owns(&cores[0], V2) && owns(&cores[1], V3));
    for c in cores.iter_mut() {
        drive(&sys, c, Instant::ZERO, at_ms(1_000), &mut (), busy);
    }
    for (c, v) in [(0, V0), (1, V1), (0, V2), (1, V3)] {
        let got = frac(cpu(&cores[c], v), ms(1_000));
        assert!((got - 0.5).abs() <= 0.01, "vCPU {v} got {got:.4} of core {c}");
    }
}

// ---- real-time reservations ---------------------------------------------------------------------

/// A tiny deterministic generator for irregular exits.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn rt_beside_two_share_vcpus(
    mut guest: impl FnMut(VcpuId, Instant, Instant) -> (Instant, ExitReason),
) -> (Vec<Slice>, System, Vec<CoreRuntime>) {
    let (sys, mut cores) = system(1, vec![share(0, 256), reserved(1, ms(3), ms(10)), share(2, 256)]);
    assert_eq!(sys.reserved_ppm(C0), 300_000);
    let slices = drive(&sys, &mut cores[0], Instant::ZERO, at_ms(1_000), &mut (), &mut guest);
    (slices, sys, cores)
}

#[test]
fn a_reservation_gets_exactly_its_budget_in_every_period() {
    let (slices, _sys, cores) = rt_beside_two_share_vcpus(busy);
    for k in 0..100 {
        let (from, to) = (at_ms(10 * k), at_ms(10 * k + 10));
        // At least its budget (the guarantee), and no more while the share vCPUs are runnable
        // (the hard server is throttled).
        assert_eq!(ran(&slices, V1, from, to), ms(3), "period {k}");
        // EDF puts it first: it starts at the beginning of its period.
        let first = slices.iter().find(|s| s.vcpu == V1 && s.start >= from).expect("a run in every period");
        assert_eq!(first.start, from, "period {k}");
    }
    // A share vCPU's run never reaches past the server's replenishment.
    for s in slices.iter().filter(|s| s.vcpu != V1) {
        let next_period = at_ms((s.start.as_nanos() / 10_000_000 + 1) * 10);
        assert!(s.until <= next_period, "{s:?}");
        assert_eq!(s.reason, ExitReason::Preempted);
    }
    // The share vCPUs split the other 70 % evenly.
    for v in [V0, V2] {
        let got = frac(cpu(&cores[0], v), ms(1_000));
        assert!((got - 0.35).abs() <= 0.01, "vCPU {v} got {got:.4}");
    }
    assert_eq!(cpu(&cores[0], V1), ms(300));
}

/// At half speed a budget (CPU time at full speed) lasts twice as long, and the vCPU's
/// utilization counts half its running time: both measure work, not time.
#[test]
fn at_half_speed_a_budget_lasts_twice_as_long() {
    let (sys, mut cores) = system(1, vec![share(0, 256), reserved(1, ms(3), ms(10)), share(2, 256)]);
    cores[0].set_capacity(CAPACITY_SCALE / 2);
    assert_eq!(cores[0].capacity(), CAPACITY_SCALE / 2);
    let slices = drive(&sys, &mut cores[0], Instant::ZERO, at_ms(1_000), &mut (), &mut busy);
    for k in 0..100 {
        let (from, to) = (at_ms(10 * k), at_ms(10 * k + 10));
        assert_eq!(ran(&slices, V1, from, to), ms(6), "period {k}");
    }
    // Always runnable, 60 % of the time at half speed: 30 % of a core's work.
    let util = sched(&cores[0], V1).utilization();
    // (read at the end of a run: within the ripple of the 10 ms cycle)
    assert!(util.abs_diff(UTIL_ONE * 3 / 10) <= UTIL_ONE / 50, "{util}");
    // A fresh core is at full speed.
    let (_, fresh) = system(1, vec![share(0, 256)]);
    assert_eq!(fresh[0].capacity(), CAPACITY_SCALE);
}

#[test]
fn a_reservation_keeps_its_budget_with_irregular_exits() {
    // Every run may end early (an interrupt, a WFE), at a pseudo-random point.
    let mut rng = Lcg(7);
    let (slices, _sys, cores) = rt_beside_two_share_vcpus(|_, start, until| {
        let len = until.since(start).as_nanos();
        if rng.below(3) == 0 {
            (start + Nanos(rng.below(len + 1)), ExitReason::Preempted)
        } else {
            (until, ExitReason::Preempted)
        }
    });
    for k in 0..100 {
        let (from, to) = (at_ms(10 * k), at_ms(10 * k + 10));
        assert_eq!(ran(&slices, V1, from, to), ms(3), "period {k}");
    }
    assert_eq!(cores[0].stats().busy, ms(1_000));
}

#[test]
fn a_honoured_reservation_counts_no_misses() {
    let (_, _, cores) = rt_beside_two_share_vcpus(busy);
    assert_eq!(sched(&cores[0], V1).stats().reservation_misses, 0);
}

/// A server's first period starts at its core's first decision: a platform that starts its
/// cores a while after building the system loses nothing.
#[test]
fn a_reservation_starts_at_its_cores_first_decision() {
    let (sys, mut cores) = system(1, vec![reserved(0, ms(2), ms(10))]);
    let core = &mut cores[0];
    assert_eq!(core.next(&sys, at_ms(50), &mut ()), Decision::Run { vcpu: V0, until: at_ms(52) });
    let s = sched(core, V0).rt.expect("a server");
    assert_eq!((s.deadline, s.remaining), (at_ms(60), ms(2)));
    core.handle(&sys, Event::Exit { vcpu: V0, reason: ExitReason::Preempted }, at_ms(52), &mut ()).unwrap();
    assert_eq!(sched(core, V0).stats().reservation_misses, 0);
}

/// A platform that does not take the core back when a server wakes (its core held elsewhere,
/// a lost kick) makes the server miss its deadline with budget left: counted once per lost
/// period, and the server starts afresh from the late decision.
#[test]
fn a_period_lost_with_budget_left_is_a_reservation_miss() {
    let (sys, mut cores) = system(1, vec![share(0, 256), reserved(1, ms(2), ms(10))]);
    let core = &mut cores[0];
    let misses = |core: &CoreRuntime| sched(core, V1).stats().reservation_misses;
    // V1 runs 1 ms and waits for an interrupt; V0 gets the core.
    run_once(&sys, core, V1, Instant::ZERO, at_ms(1), ExitReason::Wfi, &mut ());
    let Decision::Run { vcpu: V0, .. } = core.next(&sys, at_ms(1), &mut ()) else { panic!("V0 runs") };
    // V1's interrupt at 2 ms makes it runnable (deadline 10 ms kept, 1 ms left), but V0's run
    // only ends at 25 ms.
    core.handle(&sys, Event::Wake { vcpu: V1 }, at_ms(2), &mut ()).unwrap();
    core.handle(&sys, Event::Exit { vcpu: V0, reason: ExitReason::Preempted }, at_ms(25), &mut ()).unwrap();
    assert_eq!(misses(core), 0);
    let mut trace = Vec::new();
    assert_eq!(core.next(&sys, at_ms(25), &mut trace), Decision::Run { vcpu: V1, until: at_ms(27) });
    let miss = TraceKind::DeadlineMiss { vcpu: V1, deadline: at_ms(10), late: ms(15) };
    assert!(trace.contains(&TraceEvent { at: at_ms(25), kind: miss }), "{trace:?}");
    let s = sched(core, V1).rt.expect("a server");
    assert_eq!((s.deadline, s.remaining), (at_ms(35), ms(2)));
    core.handle(&sys, Event::Exit { vcpu: V1, reason: ExitReason::Preempted }, at_ms(27), &mut ()).unwrap();
    assert_eq!(misses(core), 1);
    // From then on, honoured: 2 ms in each period from 35 ms (a throttled server misses
    // nothing), no further miss.
    let slices = drive(&sys, core, at_ms(27), at_ms(135), &mut (), busy);
    for k in 0..10 {
        assert_eq!(ran(&slices, V1, at_ms(35 + 10 * k), at_ms(45 + 10 * k)), ms(2), "period {k}");
    }
    assert_eq!(misses(core), 1);
}

#[test]
fn an_exhausted_reservation_idles_until_its_replenishment() {
    let (sys, mut cores) = system(1, vec![reserved(0, ms(2), ms(10))]);
    let core = &mut cores[0];
    assert_eq!(core.next(&sys, Instant::ZERO, &mut ()), Decision::Run { vcpu: V0, until: at_ms(2) });
    core.handle(&sys, Event::Exit { vcpu: V0, reason: ExitReason::Preempted }, at_ms(2), &mut ()).unwrap();
    // Alone and runnable, but its budget is spent: the core idles until the next period.
    assert_eq!(core.next(&sys, at_ms(2), &mut ()), Decision::Idle { until: Some(at_ms(10)) });
    assert_eq!(core.next(&sys, at_ms(10), &mut ()), Decision::Run { vcpu: V0, until: at_ms(12) });
}

#[test]
fn a_waking_reservation_follows_the_cbs_wake_up_rule() {
    // 2 ms every 10 ms; it blocks after 1 ms and wakes at 9 ms with 1 ms left and 1 ms to its
    // deadline: 1/1 > 2/10, so the CBS rule gives it a new deadline (19 ms) and a full budget.
    let (sys, mut cores) = system(1, vec![reserved(0, ms(2), ms(10))]);
    let core = &mut cores[0];
    run_once(&sys, core, V0, Instant::ZERO, at_ms(1), ExitReason::Wfi, &mut ());
    assert_eq!(sys.wake(V0), Some(C0));
    assert_eq!(core.next(&sys, at_ms(9), &mut ()), Decision::Run { vcpu: V0, until: at_ms(11) });
    let s = sched(core, V0).rt.expect("a server");
    assert_eq!((s.deadline, s.remaining), (at_ms(19), ms(2)));
    // Woken at 2 ms instead, with 1 ms left and 8 ms to go (1/8 <= 2/10): it keeps both.
    let (sys, mut cores) = system(1, vec![reserved(0, ms(2), ms(10))]);
    let core = &mut cores[0];
    run_once(&sys, core, V0, Instant::ZERO, at_ms(1), ExitReason::Wfi, &mut ());
    assert_eq!(sys.wake(V0), Some(C0));
    assert_eq!(core.next(&sys, at_ms(2), &mut ()), Decision::Run { vcpu: V0, until: at_ms(3) });
    let s = sched(core, V0).rt.expect("a server");
    assert_eq!((s.deadline, s.remaining), (at_ms(10), ms(1)));
}

// ---- admission control ---------------------------------------------------------------------------

#[test]
fn build_refuses_reservations_over_the_bound_of_their_only_core() {
    let only0 = CoreMask::single(C0);
    let vcpus = vec![pinned(reserved(0, ms(6), ms(10)), only0), pinned(reserved(1, ms(4), ms(10)), only0)];
    let err = build(&config(2, vcpus.clone()), Instant::ZERO).expect_err("100 % on core 0");
    let closest = AdmissionError { core: C0, requested_ppm: 400_000, admitted_ppm: 600_000, bound_ppm: 900_000 };
    assert_eq!(err, BuildError::Admission { vm: VmId(0), index: 1, closest });
    let text = err.to_string();
    assert!(text.contains("core 0") && text.contains("10.0% over the bound of 90.0%"), "{text}");
    assert_eq!(
        text,
        "VM 0 vCPU 1: reservation refused on every allowed core; closest: core 0: a reservation of 40.0% would \
         bring real-time utilization to 100.0%, 10.0% over the bound of 90.0%"
    );
    // With both cores allowed they go to different cores.
    let spread: Vec<VcpuConfig> = vcpus.into_iter().map(|v| pinned(v, CoreMask::ALL)).collect();
    let (sys, cores) = build(&config(2, spread), Instant::ZERO).expect("60 % + 40 % on two cores");
    assert_eq!((sys.reserved_ppm(C0), sys.reserved_ppm(C1)), (600_000, 400_000));
    assert!(owns(&cores[0], V0) && owns(&cores[1], V1));
}

#[test]
fn set_reservation_that_oversubscribes_keeps_the_old_one() {
    let (sys, mut cores) = system(1, vec![reserved(0, ms(5), ms(10)), share(1, 256)]);
    let core = &mut cores[0];
    let mut trace: Vec<TraceEvent> = Vec::new();
    assert_eq!(sys.reserved_ppm(C0), 500_000);
    let half = Reservation { budget: ms(5), period: ms(10) };
    // A second 50 % does not fit beside the first.
    let err = core.set_reservation(&sys, V1, Some(half), at_ms(1), &mut trace).expect_err("100 %");
    assert_eq!(
        err,
        SetReservationError::Admission(AdmissionError {
            core: C0,
            requested_ppm: 500_000,
            admitted_ppm: 500_000,
            bound_ppm: 900_000
        })
    );
    assert_eq!(
        err.to_string(),
        "core 0: a reservation of 50.0% would bring real-time utilization to 100.0%, 10.0% over the bound of 90.0%"
    );
    assert_eq!(sys.reserved_ppm(C0), 500_000);
    assert_eq!(sched(core, V1).reservation(), None);
    // Replacing V0's own reservation by 95 % fails too, and leaves its 50 % in place.
    let too_big = Reservation { budget: ms(95), period: ms(100) };
    assert!(matches!(
        core.set_reservation(&sys, V0, Some(too_big), at_ms(1), &mut trace),
        Err(SetReservationError::Admission(AdmissionError { requested_ppm: 950_000, admitted_ppm: 0, .. }))
    ));
    assert_eq!(sys.reserved_ppm(C0), 500_000);
    assert_eq!(sched(core, V0).reservation(), Some(half));
    // Its own old bandwidth counts as free when it is replaced: 80 % fits.
    let big = Reservation { budget: ms(8), period: ms(10) };
    core.set_reservation(&sys, V0, Some(big), at_ms(1), &mut trace).expect("80 % in place of 50 %");
    assert_eq!(sys.reserved_ppm(C0), 800_000);
    // The bound itself is admitted.
    let tenth = Reservation { budget: ms(1), period: ms(10) };
    core.set_reservation(&sys, V1, Some(tenth), at_ms(1), &mut trace).expect("exactly 90 %");
    assert_eq!(sys.reserved_ppm(C0), 900_000);
    core.set_reservation(&sys, V1, None, at_ms(1), &mut trace).expect("removal");
    assert_eq!(sys.reserved_ppm(C0), 800_000);
    assert_eq!(
        core.set_reservation(&sys, V1, Some(Reservation { budget: ms(2), period: ms(1) }), at_ms(1), &mut trace),
        Err(SetReservationError::Invalid)
    );
    let verdicts: Vec<(VcpuId, bool)> = trace
        .iter()
        .filter_map(|e| match e.kind {
            TraceKind::Reservation { core: C0, vcpu, admitted, .. } => Some((vcpu, admitted)),
            _ => None,
        })
        .collect();
    assert_eq!(verdicts, vec![(V1, false), (V0, false), (V0, true), (V1, true)]);
}

// ---- affinity ------------------------------------------------------------------------------------

#[test]
fn affinity_places_refuses_moves_and_keeps_a_core_online() {
    let only1 = CoreMask::single(C1);
    let (sys, mut cores) = system(2, vec![share(0, 256), pinned(share(1, 256), only1)]);
    assert!(owns(&cores[1], V1) && !owns(&cores[0], V1));
    assert_eq!(sys.status(V1).owner, C1);
    let mut trace: Vec<TraceEvent> = Vec::new();
    assert_eq!(
        cores[1].migrate(&sys, V1, C0, Instant::ZERO, &mut trace),
        Err(MoveError::Affinity { vcpu: V1, dest: C0 })
    );
    // Core 1 cannot go offline: V1 may run nowhere else. It stays online and keeps V1.
    let err = cores[1].handle(&sys, Event::CoreGoingOffline, Instant::ZERO, &mut trace).expect_err("V1 is pinned");
    assert!(
        matches!(
            err,
            RuntimeError::Offline(OfflineError::CannotMove { vcpu: V1, reason: MoveError::Affinity { vcpu: V1, .. } })
        ),
        "{err:?}"
    );
    assert!(cores[1].is_online() && sys.online_cores().contains(C1));
    assert_eq!(sys.status(V1), status(C1, VcpuState::Runnable, false, false));
    let slices = drive(&sys, &mut cores[1], Instant::ZERO, at_ms(20), &mut trace, busy);
    assert_eq!(ran(&slices, V1, Instant::ZERO, at_ms(20)), ms(20));
    // The mailbox reopened: core 1 still takes vCPUs.
    cores[0].migrate(&sys, V0, C1, at_ms(20), &mut trace).expect("core 1 is online");
    let slices = drive(&sys, &mut cores[1], at_ms(20), at_ms(40), &mut trace, busy);
    assert!(ran(&slices, V0, at_ms(20), at_ms(40)) >= ms(8));
    let states: Vec<CoreState> = trace
        .iter()
        .filter_map(|e| match e.kind {
            TraceKind::CoreState { core: C1, state } => Some(state),
            _ => None,
        })
        .collect();
    assert_eq!(states, vec![CoreState::Draining, CoreState::Online]);
}

// ---- parked vCPUs and guest PSCI -----------------------------------------------------------------

#[test]
fn parked_vcpus_run_only_after_power_on() {
    let (sys, mut cores) = system(1, vec![share(0, 256), parked(share(1, 256))]);
    let core = &mut cores[0];
    let mut trace: Vec<TraceEvent> = Vec::new();
    assert_eq!(sys.affinity_info(V1), Some(AffinityState::Off));
    // Interrupts for a parked vCPU wake nothing.
    let mut slices = Vec::new();
    for k in 0..50 {
        assert_eq!(sys.wake(V1), None);
        slices.extend(drive(&sys, core, at_ms(2 * k), at_ms(2 * k + 2), &mut trace, busy));
    }
    assert!(slices.iter().all(|s| s.vcpu == V0));
    assert_eq!(cpu(core, V1), Nanos::ZERO);
    assert_eq!(sys.affinity_info(V1), Some(AffinityState::Off));
    // CPU_ON: pending until the owner takes it in at its next decision.
    assert_eq!(sys.request_power_on(V1), Ok(C0));
    assert_eq!(sys.affinity_info(V1), Some(AffinityState::OnPending));
    assert_eq!(sys.request_power_on(V1), Err(PowerOnError::OnPending));
    let slices = drive(&sys, core, at_ms(100), at_ms(200), &mut trace, busy);
    assert_eq!(sys.affinity_info(V1), Some(AffinityState::On));
    assert_eq!(sys.request_power_on(V1), Err(PowerOnError::AlreadyOn));
    let v1 = ran(&slices, V1, at_ms(100), at_ms(200));
    assert!(v1 >= ms(46) && v1 <= ms(54), "V1 got {v1} of 100 ms beside one peer");
    // CPU_OFF parks it again, and it stays off.
    let t = at_ms(200);
    let mut exits = 0;
    let slices = drive(&sys, core, t, t + ms(100), &mut trace, |v, start, until| {
        if v == V1 {
            exits += 1;
            (start + Nanos::from_micros(10), ExitReason::PsciCpuOff)
        } else {
            (until, ExitReason::Preempted)
        }
    });
    assert_eq!(exits, 1);
    assert_eq!(sys.status(V1), status(C0, VcpuState::Parked, false, false));
    assert_eq!(sys.affinity_info(V1), Some(AffinityState::Off));
    let v1_runs: Vec<&Slice> = slices.iter().filter(|s| s.vcpu == V1).collect();
    assert!(v1_runs.len() == 1 && v1_runs[0].reason == ExitReason::PsciCpuOff, "{v1_runs:?}");
    assert_eq!(sys.request_power_on(V1), Ok(C0));
    let kinds: Vec<TraceKind> = trace
        .iter()
        .map(|e| e.kind)
        .filter(|k| matches!(k, TraceKind::VcpuUnpark { .. } | TraceKind::VcpuPark { .. }))
        .collect();
    assert_eq!(kinds, vec![TraceKind::VcpuUnpark { core: C0, vcpu: V1 }, TraceKind::VcpuPark { core: C0, vcpu: V1 }]);
}

// ---- wake-ups ----------------------------------------------------------------------------------

#[test]
fn a_wake_before_block_is_not_lost() {
    let (sys, mut cores) = system(1, vec![share(0, 256)]);
    let core = &mut cores[0];
    let mut trace: Vec<TraceEvent> = Vec::new();
    assert!(matches!(core.next(&sys, Instant::ZERO, &mut trace), Decision::Run { vcpu: V0, .. }));
    // An interrupt arrives while it runs: no kick is needed, the request stays in the word.
    assert_eq!(sys.wake(V0), None);
    assert_eq!(sys.status(V0), status(C0, VcpuState::Running, true, false));
    core.handle(&sys, Event::Exit { vcpu: V0, reason: ExitReason::Wfi }, at_ms(1), &mut trace).unwrap();
    // The WFI does not block: the wake-up is consumed and the vCPU stays runnable.
    assert_eq!(sys.status(V0), status(C0, VcpuState::Runnable, false, false));
    assert!(!trace.iter().any(|e| matches!(e.kind, TraceKind::VcpuBlock { .. })));
    assert!(matches!(core.next(&sys, at_ms(1), &mut trace), Decision::Run { vcpu: V0, .. }));
    core.handle(&sys, Event::Exit { vcpu: V0, reason: ExitReason::Wfi }, at_ms(2), &mut trace).unwrap();
    // Without a pending wake-up it blocks, and a wake-up kicks its owner.
    assert_eq!(sys.status(V0), status(C0, VcpuState::Blocked, false, false));
    assert_eq!(core.next(&sys, at_ms(2), &mut trace), Decision::Idle { until: None });
    assert_eq!(sys.wake(V0), Some(C0));
    assert_eq!(sys.wake(V0), None, "one kick is enough");
    assert_eq!(core.next(&sys, at_ms(5), &mut trace), Decision::Run { vcpu: V0, until: at_ms(9) });
    let stats = *sched(core, V0).stats();
    assert_eq!((stats.wakeups, stats.runs, stats.wake_latency_total), (1, 3, Nanos::ZERO));
}

#[test]
fn a_local_wake_event_makes_a_blocked_vcpu_runnable_and_latency_is_measured() {
    let (sys, mut cores) = system(1, vec![share(0, 256), share(1, 256)]);
    let core = &mut cores[0];
    run_once(&sys, core, V0, Instant::ZERO, at_ms(1), ExitReason::Wfi, &mut ());
    assert_eq!(core.next(&sys, at_ms(1), &mut ()), Decision::Run { vcpu: V1, until: at_ms(5) });
    // An interrupt for V0 handled on its own core while V1 runs: runnable at once...
    core.handle(&sys, Event::Wake { vcpu: V0 }, at_ms(2), &mut ()).unwrap();
    assert_eq!(sys.status(V0), status(C0, VcpuState::Runnable, false, false));
    assert_eq!(sched(core, V0).state(), VcpuState::Runnable);
    assert_eq!(core.current(), Some(V1));
    // ...and it runs when V1's slice ends: it waited 3 ms.
    core.handle(&sys, Event::Exit { vcpu: V1, reason: ExitReason::Preempted }, at_ms(5), &mut ()).unwrap();
    assert!(matches!(core.next(&sys, at_ms(5), &mut ()), Decision::Run { vcpu: V0, .. }));
    let s = *sched(core, V0).stats();
    assert_eq!((s.wakeups, s.wake_latency_total, s.wake_latency_max), (1, ms(3), ms(3)));
    // Out-of-range vCPUs are ignored.
    core.handle(&sys, Event::Wake { vcpu: VcpuId(99) }, at_ms(5), &mut ()).unwrap();
}

// ---- migration -----------------------------------------------------------------------------------

#[test]
fn migration_keeps_lag_and_moves_ownership() {
    // Core 1's vCPUs weigh 4x as much, so its virtual clock runs 4x slower than core 0's.
    let (sys, mut cores) = system(2, vec![share(0, 256), share(1, 1024), share(2, 256), share(3, 1024)]);
    assert!(owns(&cores[0], V0) && owns(&cores[1], V1) && owns(&cores[0], V2) && owns(&cores[1], V3));
    let mut trace: Vec<TraceEvent> = Vec::new();
    let t = at_ms(101);
    drive(&sys, &mut cores[0], Instant::ZERO, t, &mut trace, busy);
    drive(&sys, &mut cores[1], Instant::ZERO, t, &mut trace, busy);
    let (src_min, dst_min) = (cores[0].min_vtime, cores[1].min_vtime);
    assert!(src_min > dst_min + 100_000_000, "{src_min} vs {dst_min}");
    let before = *sched(&cores[0], V2);
    let lag = before.vtime as i128 - src_min as i128;
    let params = SchedParams::default();
    let rate = before.vtime_rate;
    // Within the bounds a hand-over keeps (one timeslice ahead, the wake credit behind).
    assert!(lag != 0 && lag <= to_vtime(params.timeslice, rate) as i128);
    assert!(lag >= -(to_vtime(params.wake_credit, rate) as i128));
    cores[0].migrate(&sys, V2, C1, t, &mut trace).expect("the move");
    assert_eq!(cores[0].take_kicks(), CoreMask::single(C1));
    // In flight: the word already names the new owner; neither core lists it.
    assert_eq!(sys.status(V2), status(C1, VcpuState::Migrating, false, false));
    assert!(!owns(&cores[0], V2) && !owns(&cores[1], V2));
    // The destination takes it in at its next decision, at the same distance from its minimum.
    let _ = cores[1].next(&sys, t, &mut trace);
    let after = *sched(&cores[1], V2);
    assert_eq!(after.vtime as i128 - dst_min as i128, lag);
    assert_eq!(after.stats().migrations, 1);
    assert_eq!(after.stats().cpu_time, before.stats().cpu_time);
    assert_eq!(after.last_migrated(), t);
    assert_eq!(sys.status(V2).owner, C1);
    assert_ne!(sys.status(V2).state, VcpuState::Migrating);
    assert!(trace.iter().any(|e| e.kind == TraceKind::VcpuMigrate { vcpu: V2, from: C0, to: C1 }));
    // The source never runs it again.
    let slices = drive(&sys, &mut cores[0], t, at_ms(200), &mut trace, busy);
    assert!(slices.iter().all(|s| s.vcpu == V0));
    assert_eq!(ran(&slices, V0, t, at_ms(200)), ms(99));
}

#[test]
fn migration_moves_the_reservation_and_refuses_the_running_vcpu() {
    let (sys, mut cores) = system(2, vec![reserved(0, ms(2), ms(10)), share(1, 256), share(2, 256)]);
    // The reservation is placed first; then the share vCPUs go to the core with the fewest vCPUs
    // and, on a tie, the least reserved bandwidth.
    assert!(owns(&cores[0], V0) && owns(&cores[1], V1) && owns(&cores[1], V2));
    assert_eq!((sys.reserved_ppm(C0), sys.reserved_ppm(C1)), (200_000, 0));
    // Running: it can move only between runs.
    assert!(matches!(cores[0].next(&sys, Instant::ZERO, &mut ()), Decision::Run { vcpu: V0, .. }));
    assert_eq!(cores[0].migrate(&sys, V0, C1, at_ms(1), &mut ()), Err(MoveError::Running(V0)));
    cores[0].handle(&sys, Event::Exit { vcpu: V0, reason: ExitReason::Preempted }, at_ms(1), &mut ()).unwrap();
    // Between runs it moves, and its bandwidth with it.
    cores[0].migrate(&sys, V0, C1, at_ms(1), &mut ()).expect("the move");
    assert_eq!((sys.reserved_ppm(C0), sys.reserved_ppm(C1)), (0, 200_000));
    // Its server moves too: 1 ms of budget left until the deadline at 10 ms, then 2 ms a period.
    let slices = drive(&sys, &mut cores[1], at_ms(1), at_ms(100), &mut (), busy);
    assert_eq!(ran(&slices, V0, at_ms(1), at_ms(10)), ms(1));
    for k in 1..10 {
        assert_eq!(ran(&slices, V0, at_ms(10 * k), at_ms(10 * k + 10)), ms(2), "period {k}");
    }
    assert_eq!(sched(&cores[1], V0).stats().migrations, 1);
    // Moves against admission, to missing cores and of vCPUs a core does not own are refused.
    cores[1].migrate(&sys, V1, C0, at_ms(100), &mut ()).expect("V1 to core 0");
    run_once(&sys, &mut cores[0], V1, at_ms(100), at_ms(100), ExitReason::Preempted, &mut ());
    let big = Reservation { budget: ms(8), period: ms(10) };
    cores[0].set_reservation(&sys, V1, Some(big), at_ms(100), &mut ()).expect("80 % on core 0");
    assert_eq!(
        cores[1].migrate(&sys, V0, C0, at_ms(100), &mut ()),
        Err(MoveError::Admission(AdmissionError {
            core: C0,
            requested_ppm: 200_000,
            admitted_ppm: 800_000,
            bound_ppm: 900_000
        }))
    );
    assert_eq!((sys.reserved_ppm(C0), sys.reserved_ppm(C1)), (800_000, 200_000), "a refused move changes nothing");
    assert!(owns(&cores[1], V0));
    assert_eq!(sys.status(V0), status(C1, VcpuState::Runnable, false, false));
    assert_eq!(cores[1].migrate(&sys, V0, CoreId(2), at_ms(100), &mut ()), Err(MoveError::NoSuchCore(CoreId(2))));
    assert_eq!(cores[0].migrate(&sys, V0, C1, at_ms(100), &mut ()), Err(MoveError::NotOwned { vcpu: V0, core: C0 }));
    assert_eq!(cores[1].migrate(&sys, V0, C1, at_ms(100), &mut ()), Ok(()), "a move to itself is a no-op");
}

#[test]
fn a_move_request_is_carried_out_at_the_owners_next_decision() {
    let (sys, mut cores) = system(2, vec![share(0, 256), share(1, 256), share(2, 256)]);
    assert!(owns(&cores[0], V2));
    assert_eq!(sys.request_move(V2, C1), Ok(C0));
    assert_eq!(sys.request_move(VcpuId(9), C1), Err(MoveError::NoSuchVcpu(VcpuId(9))));
    assert_eq!(sys.request_move(V2, CoreId(5)), Err(MoveError::NoSuchCore(CoreId(5))));
    let _ = cores[0].next(&sys, Instant::ZERO, &mut ());
    assert!(!owns(&cores[0], V2));
    assert_eq!(sys.status(V2), status(C1, VcpuState::Migrating, false, false));
    let _ = cores[1].next(&sys, Instant::ZERO, &mut ());
    assert!(owns(&cores[1], V2));
    assert_eq!(sys.status(V2).owner, C1);
}

#[test]
fn a_blocked_vcpu_woken_in_flight_runs_on_arrival() {
    let (sys, mut cores) = system(2, vec![share(0, 256)]);
    run_once(&sys, &mut cores[0], V0, Instant::ZERO, at_ms(1), ExitReason::Wfi, &mut ());
    cores[0].migrate(&sys, V0, C1, at_ms(1), &mut ()).expect("the move");
    // The waker reads the new owner from the word and kicks it.
    assert_eq!(sys.wake(V0), Some(C1));
    assert_eq!(sys.status(V0), status(C1, VcpuState::Migrating, true, false));
    assert!(matches!(cores[1].next(&sys, at_ms(2), &mut ()), Decision::Run { vcpu: V0, .. }));
    assert_eq!(sched(&cores[1], V0).stats().wakeups, 1);
}

// ---- going offline and coming back -------------------------------------------------------------

#[test]
fn a_core_going_offline_hands_everything_over_and_powers_off() {
    let (sys, mut cores) = system(2, vec![share(0, 256), share(1, 256), share(2, 256), share(3, 256)]);
    let mut trace: Vec<TraceEvent> = Vec::new();
    drive(&sys, &mut cores[1], Instant::ZERO, at_ms(10), &mut trace, busy);
    cores[1].handle(&sys, Event::CoreGoingOffline, at_ms(10), &mut trace).expect("core 0 takes V1 and V3");
    assert!(cores[1].vcpus().is_empty() && !cores[1].is_online());
    assert_eq!(sys.online_cores(), CoreMask::single(C0));
    for v in [V1, V3] {
        assert_eq!(sys.status(v), status(C0, VcpuState::Migrating, false, false));
    }
    assert_eq!(cores[1].next(&sys, at_ms(10), &mut trace), Decision::PowerOff);
    // The last online core refuses.
    assert_eq!(
        cores[0].handle(&sys, Event::CoreGoingOffline, at_ms(10), &mut trace),
        Err(RuntimeError::Offline(OfflineError::LastCore))
    );
    assert!(cores[0].is_online());
    assert_eq!(cores[0].migrate(&sys, V0, C1, at_ms(10), &mut trace), Err(MoveError::CoreOffline(C1)));
    // Core 0 runs all four, equally.
    let slices = drive(&sys, &mut cores[0], at_ms(10), at_ms(410), &mut trace, busy);
    for v in [V0, V1, V2, V3] {
        let got = ran(&slices, v, at_ms(10), at_ms(410));
        assert!(got >= ms(96) && got <= ms(104), "vCPU {v} got {got} of 400 ms");
        assert_eq!(sys.status(v).owner, C0);
    }
    // Back online: it accepts hand-overs again.
    cores[1].handle(&sys, Event::CoreOnline, at_ms(410), &mut trace).unwrap();
    assert!(cores[1].is_online() && sys.online_cores().contains(C1));
    cores[0].migrate(&sys, V1, C1, at_ms(410), &mut trace).expect("core 1 is back");
    let slices = drive(&sys, &mut cores[1], at_ms(410), at_ms(420), &mut trace, busy);
    assert_eq!(ran(&slices, V1, at_ms(410), at_ms(420)), ms(10));
    let states: Vec<CoreState> = trace
        .iter()
        .filter_map(|e| match e.kind {
            TraceKind::CoreState { core: C1, state } => Some(state),
            _ => None,
        })
        .collect();
    assert_eq!(states, vec![CoreState::Draining, CoreState::Off, CoreState::Online]);
    let moved: Vec<VcpuId> = trace
        .iter()
        .filter_map(|e| match e.kind {
            TraceKind::VcpuMigrate { vcpu, from: C1, to: C0 } => Some(vcpu),
            _ => None,
        })
        .collect();
    assert_eq!(moved.len(), 2);
    assert!(moved.contains(&V1) && moved.contains(&V3));
}

#[test]
fn a_core_cannot_go_offline_while_it_runs_a_vcpu() {
    let (sys, mut cores) = system(2, vec![share(0, 256)]);
    assert!(matches!(cores[0].next(&sys, Instant::ZERO, &mut ()), Decision::Run { vcpu: V0, .. }));
    assert_eq!(
        cores[0].handle(&sys, Event::CoreGoingOffline, at_ms(1), &mut ()),
        Err(RuntimeError::Offline(OfflineError::Busy))
    );
    assert!(cores[0].is_online() && owns(&cores[0], V0));
}

#[test]
fn going_offline_moves_reservations_where_they_fit() {
    // Core 0 has 80 % admitted: core 1's reservation of 30 % does not fit there.
    let (sys, mut cores) = system(2, vec![reserved(0, ms(8), ms(10)), reserved(1, ms(2), ms(10)), share(2, 256)]);
    assert!(owns(&cores[0], V0) && owns(&cores[1], V1));
    // Raise V1's reservation to 30 %, then try to take core 1 offline.
    cores[1]
        .set_reservation(&sys, V1, Some(Reservation { budget: ms(3), period: ms(10) }), Instant::ZERO, &mut ())
        .unwrap();
    let err = cores[1].handle(&sys, Event::CoreGoingOffline, Instant::ZERO, &mut ()).expect_err("110 % on core 0");
    assert!(
        matches!(
            err,
            RuntimeError::Offline(OfflineError::CannotMove {
                vcpu: V1,
                reason: MoveError::Admission(AdmissionError { core: C0, .. })
            })
        ),
        "{err:?}"
    );
    assert!(cores[1].is_online() && owns(&cores[1], V1));
    assert_eq!((sys.reserved_ppm(C0), sys.reserved_ppm(C1)), (800_000, 300_000));
}

// ---- errors and the end of a vCPU ------------------------------------------------------------------

#[test]
fn an_exit_for_a_vcpu_the_core_is_not_running_is_refused() {
    let (sys, mut cores) = system(2, vec![share(0, 256), share(1, 256), share(2, 256)]);
    let exit = |vcpu| Event::Exit { vcpu, reason: ExitReason::Preempted };
    assert_eq!(
        cores[0].handle(&sys, exit(V0), Instant::ZERO, &mut ()),
        Err(RuntimeError::NotRunning { vcpu: V0, core: C0 })
    );
    assert!(matches!(cores[0].next(&sys, Instant::ZERO, &mut ()), Decision::Run { vcpu: V0, .. }));
    // Another vCPU of the same core, or one of another core: refused, and V0 is still running.
    let err = cores[0].handle(&sys, exit(V2), at_ms(1), &mut ()).expect_err("V2 is not running");
    assert_eq!(err, RuntimeError::NotRunning { vcpu: V2, core: C0 });
    assert_eq!(err.to_string(), "core 0 got an exit for vCPU 2, which it was not running");
    assert_eq!(
        cores[0].handle(&sys, exit(V1), at_ms(1), &mut ()),
        Err(RuntimeError::NotRunning { vcpu: V1, core: C0 })
    );
    assert_eq!(cores[0].current(), Some(V0));
    assert_eq!(sys.status(V0).state, VcpuState::Running);
    cores[0].handle(&sys, exit(V0), at_ms(1), &mut ()).expect("the real exit");
    assert_eq!(cpu(&cores[0], V0), ms(1));
    assert_eq!(cpu(&cores[0], V2), Nanos::ZERO);
}

#[test]
fn a_stopped_vcpu_releases_its_reservation_and_never_runs_again() {
    let (sys, mut cores) = system(2, vec![reserved(0, ms(3), ms(10)), share(1, 256)]);
    let mut trace: Vec<TraceEvent> = Vec::new();
    assert_eq!(sys.reserved_ppm(C0), 300_000);
    run_once(&sys, &mut cores[0], V0, Instant::ZERO, at_ms(1), ExitReason::Stop(StopReason::SystemOff), &mut trace);
    assert_eq!(sys.reserved_ppm(C0), 0);
    assert_eq!(sched(&cores[0], V0).reservation(), None);
    assert_eq!(sys.status(V0), status(C0, VcpuState::Stopped, false, false));
    assert_eq!(sys.affinity_info(V0), Some(AffinityState::Off));
    assert_eq!(sys.wake(V0), None);
    assert_eq!(cores[0].next(&sys, at_ms(1), &mut trace), Decision::Idle { until: None });
    assert!(drive(&sys, &mut cores[0], at_ms(1), at_ms(100), &mut trace, busy).is_empty());
    assert_eq!(cores[0].migrate(&sys, V0, C1, at_ms(100), &mut trace), Err(MoveError::Stopped(V0)));
    // A stopped vCPU does not keep its core online.
    cores[0].handle(&sys, Event::CoreGoingOffline, at_ms(100), &mut trace).expect("nothing to move");
    assert_eq!(cpu(&cores[0], V0), ms(1));
    assert!(trace.iter().any(|e| e.kind == TraceKind::VcpuStop { vcpu: V0, reason: StopReason::SystemOff }));
}

// ---- utilization -------------------------------------------------------------------------------

#[test]
fn utilization_follows_the_half_life() {
    let (sys, mut cores) = system(1, vec![share(0, 256), share(1, 256)]);
    let core = &mut cores[0];
    let pct = |u: u32| u as f64 * 100.0 / UTIL_ONE as f64;
    // Busy for one half-life (32 ms) from idle: 50 %; two: 75 %.
    drive(&sys, core, Instant::ZERO, at_ms(32), &mut (), busy);
    core.handle(&sys, Event::Tick, at_ms(32), &mut ()).unwrap();
    assert!((pct(sys.core_utilization(C0)) - 50.0).abs() < 0.5, "{}", pct(sys.core_utilization(C0)));
    drive(&sys, core, at_ms(32), at_ms(64), &mut (), busy);
    core.handle(&sys, Event::Tick, at_ms(64), &mut ()).unwrap();
    assert!((pct(sys.core_utilization(C0)) - 75.0).abs() < 0.5, "{}", pct(sys.core_utilization(C0)));
    // Two always-busy vCPUs sharing the core each read about half of it.
    drive(&sys, core, at_ms(64), at_ms(1_000), &mut (), busy);
    for v in [V0, V1] {
        let u = pct(sys.vcpu_utilization(v, at_ms(1_000)));
        assert!((u - 50.0).abs() < 5.0, "vCPU {v}: {u}%");
    }
    // A vCPU that stays blocked decays by half every half-life.
    let slices = drive(&sys, core, at_ms(1_000), at_ms(1_100), &mut (), |v, start, until| {
        if v == V0 {
            (start, ExitReason::Wfi)
        } else {
            (until, ExitReason::Preempted)
        }
    });
    let blocked_at = slices.iter().find(|s| s.vcpu == V0).expect("V0 ran and blocked").end;
    assert!(slices.iter().filter(|s| s.vcpu == V0).count() == 1);
    let before = sys.vcpu_utilization(V0, blocked_at);
    let after = sys.vcpu_utilization(V0, blocked_at + ms(32));
    assert!((after as f64 / before as f64 - 0.5).abs() < 0.03, "{before} -> {after}");
    // The core stayed busy with V1.
    core.handle(&sys, Event::Tick, at_ms(1_100), &mut ()).unwrap();
    assert!(pct(sys.core_utilization(C0)) > 99.0, "{}", pct(sys.core_utilization(C0)));
}

// ---- trace ---------------------------------------------------------------------------------------

#[test]
fn trace_events_name_the_right_core_and_vcpu() {
    let (sys, mut cores) = system(2, vec![share(0, 256), share(1, 256), share(2, 256), parked(share(3, 256))]);
    assert!(owns(&cores[0], V0) && owns(&cores[1], V1) && owns(&cores[0], V2) && owns(&cores[1], V3));
    let mut trace: Vec<TraceEvent> = Vec::new();
    // Core 1: V1 runs 1 ms and parks (PSCI CPU_OFF).
    run_once(&sys, &mut cores[1], V1, at_ms(0), at_ms(1), ExitReason::PsciCpuOff, &mut trace);
    // Core 0: V0 runs 4 ms and is preempted by V2, which blocks after 1 ms; V0 runs again.
    assert_eq!(cores[0].next(&sys, at_ms(0), &mut trace), Decision::Run { vcpu: V0, until: at_ms(4) });
    cores[0].handle(&sys, Event::Exit { vcpu: V0, reason: ExitReason::Preempted }, at_ms(4), &mut trace).unwrap();
    run_once(&sys, &mut cores[0], V2, at_ms(4), at_ms(5), ExitReason::Wfi, &mut trace);
    assert!(matches!(cores[0].next(&sys, at_ms(5), &mut trace), Decision::Run { vcpu: V0, .. }));
    // V2 is woken while V0 runs; core 0 takes the wake-up in at its next decision and runs V2
    // (far behind V0), which is then handed to core 1.
    assert_eq!(sys.wake(V2), Some(C0));
    cores[0].handle(&sys, Event::Exit { vcpu: V0, reason: ExitReason::Preempted }, at_ms(6), &mut trace).unwrap();
    run_once(&sys, &mut cores[0], V2, at_ms(6), at_ms(7), ExitReason::Preempted, &mut trace);
    cores[0].migrate(&sys, V2, C1, at_ms(7), &mut trace).unwrap();
    // A sibling powers V3 on; core 1 takes in V2 and the CPU_ON at its next decision.
    assert_eq!(sys.request_power_on(V3), Ok(C1));
    let d = cores[1].next(&sys, at_ms(8), &mut trace);
    assert!(matches!(d, Decision::Run { vcpu: V2 | V3, .. }), "{d:?}");

    let events: Vec<(u64, TraceKind)> = trace.iter().map(|e| (e.at.as_nanos() / 1_000_000, e.kind)).collect();
    let picked = match d {
        Decision::Run { vcpu, .. } => vcpu,
        _ => unreachable!(),
    };
    assert_eq!(
        events,
        vec![
            (0, TraceKind::VcpuRun { core: C1, vcpu: V1 }),
            (1, TraceKind::VcpuPark { core: C1, vcpu: V1 }),
            (0, TraceKind::VcpuRun { core: C0, vcpu: V0 }),
            (4, TraceKind::VcpuPreempt { core: C0, vcpu: V0 }),
            (4, TraceKind::VcpuRun { core: C0, vcpu: V2 }),
            (5, TraceKind::VcpuBlock { core: C0, vcpu: V2 }),
            (5, TraceKind::VcpuRun { core: C0, vcpu: V0 }),
            (6, TraceKind::VcpuWake { core: C0, vcpu: V2 }),
            (6, TraceKind::VcpuPreempt { core: C0, vcpu: V0 }),
            (6, TraceKind::VcpuRun { core: C0, vcpu: V2 }),
            (7, TraceKind::VcpuMigrate { vcpu: V2, from: C0, to: C1 }),
            (8, TraceKind::VcpuUnpark { core: C1, vcpu: V3 }),
            (8, TraceKind::VcpuRun { core: C1, vcpu: picked }),
        ]
    );
}

// ---- regressions: bugs these tests found ---------------------------------------------------------

/// `migrate` of a vCPU that is not running while another one runs: `swap_remove` moves the
/// running vCPU (the last in the list) into the freed slot, so the running index must follow it
/// (it went stale and the next exit panicked).
#[test]

fn migrating_another_vcpu_while_one_runs_keeps_the_running_one() {
    let (sys, mut cores) =
        system(2, vec![pinned(share(0, 256), CoreMask::ALL), pinned(share(1, 256), CoreMask::single(C0))]);
    assert!(owns(&cores[0], V0) && owns(&cores[0], V1));
    // V0 runs first, then V1 (the last in core 0's list) runs.
    run_once(&sys, &mut cores[0], V0, Instant::ZERO, at_ms(4), ExitReason::Preempted, &mut ());
    assert!(matches!(cores[0].next(&sys, at_ms(4), &mut ()), Decision::Run { vcpu: V1, .. }));
    cores[0].migrate(&sys, V0, C1, at_ms(5), &mut ()).expect("V0 is not running");
    assert_eq!(cores[0].current(), Some(V1));
    cores[0].handle(&sys, Event::Exit { vcpu: V1, reason: ExitReason::Preempted }, at_ms(6), &mut ()).expect("exit");
    assert_eq!(cpu(&cores[0], V1), ms(2));
}

/// The same through the event path: the platform emulates a guest's SGI (a trap it resumes from)
/// and reports `Event::Wake` for a blocked sibling while the sender keeps running, and the
/// mailbox holds a governor's move request. The wake-up takes effect at once; the mail waits
/// for the next decision (it used to be taken in then, moving vCPUs under the running one).
#[test]

fn a_local_wake_while_running_that_takes_in_a_move_request_keeps_the_running_vcpu() {
    let only0 = CoreMask::single(C0);
    let (sys, mut cores) = system(2, vec![share(0, 256), pinned(share(1, 256), only0), pinned(share(2, 256), only0)]);
    assert!(owns(&cores[0], V0) && owns(&cores[0], V1) && owns(&cores[0], V2));
    run_once(&sys, &mut cores[0], V0, Instant::ZERO, at_ms(4), ExitReason::Preempted, &mut ());
    run_once(&sys, &mut cores[0], V1, at_ms(4), at_ms(5), ExitReason::Wfi, &mut ());
    assert!(matches!(cores[0].next(&sys, at_ms(5), &mut ()), Decision::Run { vcpu: V2, .. }));
    // The governor on another core asks for V0 to move; then V2 sends an SGI to V1.
    assert_eq!(sys.request_move(V0, C1), Ok(C0));
    cores[0].handle(&sys, Event::Wake { vcpu: V1 }, at_ms(6), &mut ()).unwrap();
    assert_eq!(cores[0].current(), Some(V2));
    assert_eq!(sched(&cores[0], V1).state(), VcpuState::Runnable);
    assert!(owns(&cores[0], V0), "the move waits for the next decision");
    cores[0].handle(&sys, Event::Exit { vcpu: V2, reason: ExitReason::Preempted }, at_ms(7), &mut ()).expect("exit");
    assert_eq!(cpu(&cores[0], V2), ms(2));
    let _ = cores[0].next(&sys, at_ms(7), &mut ());
    assert!(!owns(&cores[0], V0));
    assert_eq!(sys.status(V0), status(C1, VcpuState::Migrating, false, false));
}

/// A hand-over that fails to post (destination closed or mailbox full) is undone with
/// `abort_handover`; a wake-up that arrived while the word named the destination kicked the
/// destination, so the abort must kick the owner again. This replays the interleaving of
/// `migrate` (begin_handover ... post fails ... abort_handover) with a concurrent
/// `System::wake` in between, step by step (the loom models `wake_during_aborted_handover` and
/// `power_on_during_aborted_handover` explore it with threads).
#[test]
fn a_wake_during_an_aborted_handover_is_not_lost() {
    let (sys, mut cores) = system(2, vec![share(0, 256)]);
    run_once(&sys, &mut cores[0], V0, Instant::ZERO, at_ms(1), ExitReason::Wfi, &mut ());
    // migrate(): the word goes in flight to core 1...
    sys.begin_handover(V0, C0, C1);
    // ...another core wakes V0 and kicks the owner the word names...
    assert_eq!(sys.wake(V0), Some(C1));
    // ...migrate()'s post fails (core 1 closed its mailbox) and it gives V0 back.
    sys.abort_handover(V0, C0);
    assert_eq!(sys.status(V0), status(C0, VcpuState::Blocked, true, false));
    assert!(
        matches!(cores[0].next(&sys, at_ms(2), &mut ()), Decision::Run { vcpu: V0, .. }),
        "the wake-up was lost: {:?}",
        sys.status(V0)
    );
}

#[test]
fn a_power_on_during_an_aborted_handover_is_not_lost() {
    let (sys, mut cores) = system(2, vec![parked(share(0, 256))]);
    sys.begin_handover(V0, C0, C1);
    assert_eq!(sys.request_power_on(V0), Ok(C1));
    sys.abort_handover(V0, C0);
    assert!(
        matches!(cores[0].next(&sys, at_ms(1), &mut ()), Decision::Run { vcpu: V0, .. }),
        "the CPU_ON was lost: {:?}, AFFINITY_INFO says {:?}",
        sys.status(V0),
        sys.affinity_info(V0)
    );
}

/// `run` means "the vCPU starts running on the core". A vCPU that blocks (or parks) and is
/// entered again on the same core with nothing in between must get a `run` (it got none, so a
/// trace reader saw `blk`, `wake` and then the vCPU never running).
#[test]

fn a_vcpu_entered_again_after_blocking_gets_a_run_event() {
    let (sys, mut cores) = system(1, vec![share(0, 256)]);
    let mut trace: Vec<TraceEvent> = Vec::new();
    run_once(&sys, &mut cores[0], V0, Instant::ZERO, at_ms(1), ExitReason::Wfi, &mut trace);
    assert_eq!(sys.wake(V0), Some(C0));
    run_once(&sys, &mut cores[0], V0, at_ms(2), at_ms(3), ExitReason::Preempted, &mut trace);
    let kinds: Vec<TraceKind> = trace.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![
            TraceKind::VcpuRun { core: C0, vcpu: V0 },
            TraceKind::VcpuBlock { core: C0, vcpu: V0 },
            TraceKind::VcpuWake { core: C0, vcpu: V0 },
            TraceKind::VcpuRun { core: C0, vcpu: V0 },
        ]
    );
}

/// `Yield` puts the vCPU behind its runnable share peers only. Reservations' virtual time is
/// charged as they run but compared with no one's: a reservation that gets more CPU than a share
/// vCPU runs ahead, and a yielder that jumped there starved for a time growing with uptime.
/// Here a 50 % reservation and two share vCPUs, all weight 256: after 1 s the reservation's
/// virtual time was twice the share vCPUs', and the yielder waited about 500 ms.
#[test]

fn a_yield_does_not_starve_beside_a_reservation() {
    let (sys, mut cores) = system(1, vec![share(0, 256), reserved(1, ms(5), ms(10)), share(2, 256)]);
    let core = &mut cores[0];
    drive(&sys, core, Instant::ZERO, at_ms(1_000), &mut (), busy);
    // V0 yields once (a WFE in a spin loop, say), then is always busy again.
    let mut yielded = false;
    let slices = drive(&sys, core, at_ms(1_000), at_ms(1_100), &mut (), |v, start, until| {
        if v == V0 && !yielded {
            yielded = true;
            (start + Nanos::from_micros(10), ExitReason::Yield)
        } else {
            (until, ExitReason::Preempted)
        }
    });
    assert!(yielded);
    // Behind its one share peer: it gets about half of the 50 ms the reservation leaves, less
    // one timeslice.
    let got = ran(&slices, V0, at_ms(1_000), at_ms(1_100));
    assert!(got >= ms(15), "V0 got {got} in the 100 ms after it yielded");
}

/// A vCPU that yields must not keep the core through the granularity rule (it did while within
/// `min_granularity` of the least virtual time, so a spinning guest spun on instead of letting
/// its sibling run).
#[test]

fn a_yield_hands_the_core_to_a_runnable_peer() {
    let (sys, mut cores) = system(1, vec![share(0, 256), share(1, 256)]);
    let core = &mut cores[0];
    let mut trace: Vec<TraceEvent> = Vec::new();
    run_once(&sys, core, V0, Instant::ZERO, Instant(10_000), ExitReason::Yield, &mut trace);
    let d = core.next(&sys, Instant(10_000), &mut trace);
    assert!(matches!(d, Decision::Run { vcpu: V1, .. }), "after V0 yielded the core decided {d:?}");
    let kinds: Vec<TraceKind> = trace.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![
            TraceKind::VcpuRun { core: C0, vcpu: V0 },
            TraceKind::VcpuPreempt { core: C0, vcpu: V0 },
            TraceKind::VcpuRun { core: C0, vcpu: V1 },
        ]
    );
    assert_eq!(sched(core, V0).stats().preemptions, 1);
}

/// A reservation alone on its core, always busy: each period it runs its budget, is throttled
/// (the core idles) and runs again at the replenishment. The trace shows every one of those runs
/// (`run` at the start, `pre` when it is throttled), so a timeline drawn from it is right.
#[test]
fn a_throttled_reservation_leaves_the_core_in_the_trace() {
    let (sys, mut cores) = system(1, vec![reserved(0, ms(2), ms(10))]);
    let mut events: Vec<TraceEvent> = Vec::new();
    drive(&sys, &mut cores[0], Instant::ZERO, at_ms(100), &mut events, &mut busy);
    let runs = events.iter().filter(|e| matches!(e.kind, TraceKind::VcpuRun { vcpu: V0, .. })).count();
    let pres = events.iter().filter(|e| matches!(e.kind, TraceKind::VcpuPreempt { vcpu: V0, .. })).count();
    assert_eq!(runs, 10, "one run per period: {events:?}");
    assert!(pres >= 9, "throttled at the end of each period's budget: {pres}");
    assert_eq!(cpu(&cores[0], V0), ms(20));
}

/// `renew` keeps a lone share vCPU on the core with exactly the bookkeeping of a preemption at
/// its slice's end and the decision after it: run side by side against `Exit { Preempted }` +
/// `next()` over many slices (utilization periods closing on the way), the two cores agree on
/// every vCPU and core statistic, the published utilization and the runs' ends.
#[test]
fn renew_is_a_preemption_and_the_same_pick() {
    let (sys_a, mut a) = system(1, vec![share(0, 256), share(1, 256)]);
    let (sys_b, mut b) = system(1, vec![share(0, 256), share(1, 256)]);
    // V1 blocks at once on both: V0 is left alone.
    for (sys, cores) in [(&sys_a, &mut a), (&sys_b, &mut b)] {
        run_once(sys, &mut cores[0], V0, Instant::ZERO, at_ms(1), ExitReason::Preempted, &mut ());
        run_once(sys, &mut cores[0], V1, at_ms(1), at_ms(1), ExitReason::Wfi, &mut ());
    }
    let Decision::Run { vcpu: V0, until: mut until_a } = a[0].next(&sys_a, at_ms(1), &mut ()) else { panic!() };
    let Decision::Run { vcpu: V0, until: mut until_b } = b[0].next(&sys_b, at_ms(1), &mut ()) else { panic!() };
    for _ in 0..50 {
        assert_eq!(until_a, until_b);
        until_a = a[0].renew(&sys_a, until_a).expect("V0 is alone: renewed");
        b[0].handle(&sys_b, Event::Exit { vcpu: V0, reason: ExitReason::Preempted }, until_b, &mut ()).unwrap();
        let Decision::Run { vcpu: V0, until } = b[0].next(&sys_b, until_b, &mut ()) else { panic!("V0 again") };
        until_b = until;
        assert_eq!(format!("{:?}", sched(&a[0], V0)), format!("{:?}", sched(&b[0], V0)));
        assert_eq!(a[0].stats(), b[0].stats());
        assert_eq!(sys_a.vcpu_utilization(V0, until_a), sys_b.vcpu_utilization(V0, until_b));
        assert_eq!(sys_a.status(V0), sys_b.status(V0));
    }
}

/// `renew` declines whenever `next` could decide otherwise: before the slice ends, with another
/// vCPU runnable, with a wake-up waiting, or with a reservation on the core.
#[test]
fn renew_declines_when_next_could_decide_otherwise() {
    let (sys, mut cores) = system(1, vec![share(0, 256), share(1, 256)]);
    let core = &mut cores[0];
    assert!(core.renew(&sys, at_ms(4)).is_none(), "nothing runs");
    let Decision::Run { vcpu, until } = core.next(&sys, Instant::ZERO, &mut ()) else { panic!() };
    assert!(core.renew(&sys, until).is_none(), "the other vCPU is runnable");
    core.handle(&sys, Event::Exit { vcpu, reason: ExitReason::Preempted }, until, &mut ()).unwrap();
    let other = if vcpu == V0 { V1 } else { V0 };
    let Decision::Run { vcpu: v, until: u } = core.next(&sys, until, &mut ()) else { panic!() };
    assert_eq!(v, other);
    core.handle(&sys, Event::Exit { vcpu: v, reason: ExitReason::Wfi }, u, &mut ()).unwrap();
    let Decision::Run { vcpu: alone, until: end } = core.next(&sys, u, &mut ()) else { panic!() };
    assert_eq!(alone, vcpu);
    assert!(core.renew(&sys, Instant(end.as_nanos() - 1_000)).is_none(), "the slice is not over");
    // A wake-up for the blocked one is waiting.
    assert_eq!(sys.wake(other), Some(C0));
    assert!(core.renew(&sys, end).is_none(), "a wake-up waits");
    core.handle(&sys, Event::Exit { vcpu: alone, reason: ExitReason::Preempted }, end, &mut ()).unwrap();

    let (sys, mut cores) = system(1, vec![share(0, 256), reserved(1, Nanos::from_millis(1), Nanos::from_millis(10))]);
    let core = &mut cores[0];
    run_once(&sys, core, V1, Instant::ZERO, Instant::ZERO, ExitReason::Wfi, &mut ());
    let Decision::Run { vcpu: V0, until } = core.next(&sys, Instant::ZERO, &mut ()) else { panic!() };
    assert!(core.renew(&sys, until).is_none(), "a reservation on the core");
}

/// A hand-over whose `Arrive` cannot be posted (the destination's mailbox is full) leaves the
/// source exactly as it was: the vCPU back in its place on the list, its statistics and
/// migration time unchanged, its word owned by the source; and a later hand-over goes through.
#[test]
fn a_refused_hand_over_puts_the_vcpu_back_as_it_was() {
    let (sys, mut cores) = system(2, vec![pinned(share(0, 256), CoreMask::ALL), share(1, 256), share(2, 256)]);
    let mut c0 = cores.remove(0);
    let mut c1 = cores.remove(0);
    let mut trace = Vec::new();
    // All three start on core 0 and core 1 in turn: put every one on core 0 first.
    for v in [V0, V1, V2] {
        if c1.vcpus().iter().any(|s| s.id() == v) {
            c1.migrate(&sys, v, C0, at_ms(0), &mut trace).expect("to core 0");
        }
    }
    c0.next(&sys, at_ms(1), &mut trace);
    let current = c0.current().expect("core 0 runs a vCPU");
    let before: Vec<(VcpuId, u64, Instant)> =
        c0.vcpus().iter().map(|s| (s.id(), s.stats().migrations, s.last_migrated)).collect();
    // Fill core 1's mailbox with requests it has not read.
    while sys.post(C1, Message::MoveRequest { vcpu: V3, dest: C0 }).is_ok() {}
    let moved = before.iter().map(|&(v, ..)| v).find(|&v| v != current).expect("an idle vCPU");
    assert_eq!(c0.migrate(&sys, moved, C1, at_ms(2), &mut trace), Err(MoveError::Busy(moved)));
    let after: Vec<(VcpuId, u64, Instant)> =
        c0.vcpus().iter().map(|s| (s.id(), s.stats().migrations, s.last_migrated)).collect();
    assert_eq!(after, before, "the list, statistics and migration times are as before");
    assert_eq!(c0.current(), Some(current), "the running vCPU is still the current one");
    assert_eq!(sys.status(moved).owner, C0);
    // Once core 1 has read its mail, the same hand-over succeeds.
    sys.close_mailbox(C1, |_| {});
    sys.open_mailbox(C1);
    c0.migrate(&sys, moved, C1, at_ms(3), &mut trace).expect("the mailbox has room again");
    c1.next(&sys, at_ms(3), &mut trace);
    assert!(c1
        .vcpus()
        .iter()
        .any(|s| s.id() == moved && s.stats().migrations == before.iter().find(|b| b.0 == moved).unwrap().1 + 1));
}

#[test]
fn a_signal_says_whether_it_woke_the_vcpu_or_found_it_running() {
    use crate::Signal;
    let (sys, mut cores) = system(2, vec![share(0, 1)]);
    let core = &mut cores[0];
    // Running on core 0: found there, woken by nobody.
    assert!(matches!(core.next(&sys, Instant::ZERO, &mut ()), Decision::Run { vcpu: V0, .. }));
    assert_eq!(sys.signal(V0), Signal::Running(C0));
    // The signal stays pending: its WFI does not block. Then it blocks, and is woken once; a
    // second signal finds it runnable already.
    core.handle(&sys, Event::Exit { vcpu: V0, reason: ExitReason::Wfi }, at_ms(1), &mut ()).unwrap();
    assert_eq!(sys.status(V0).state, VcpuState::Runnable, "the signal was pending: no block");
    run_once(&sys, core, V0, at_ms(1), at_ms(2), ExitReason::Wfi, &mut ());
    assert_eq!(sys.status(V0).state, VcpuState::Blocked);
    assert_eq!(sys.signal(V0), Signal::Woken(C0));
    assert_eq!(sys.signal(V0), Signal::Other);
    assert_eq!(sys.wake(V0), None);
}

/// `switch_on_yield` is `Exit { Yield }` then `next()`: two identical one-core systems run the
/// same random exits (yields, preemptions, blocks, with wake-ups landing between runs and runs
/// crossing utilization periods), one taking every yield it can through `switch_on_yield`, the
/// other always the long way; after every step the decisions, the whole runtime state, the
/// shared state words, the published utilization and the traces agree. Both kinds of step must
/// occur: the fast one most of the time, and declines (a wake-up waiting, no peer runnable).
#[test]
fn switch_on_yield_is_a_yield_and_the_next_decision() {
    let vcpus = || vec![share(0, 256), share(1, 512), share(2, 128), share(3, 256)];
    let (sys_a, mut a) = system(1, vcpus());
    let (sys_b, mut b) = system(1, vcpus());
    let (mut trace_a, mut trace_b) = (Vec::new(), Vec::new());
    let mut rng = Lcg(7);
    let mut now = Instant::ZERO;
    let mut decided_a = None;
    let (mut fast, mut declined) = (0, 0);
    for step in 0..5_000 {
        let da = decided_a.take().unwrap_or_else(|| a[0].next(&sys_a, now, &mut trace_a));
        let db = b[0].next(&sys_b, now, &mut trace_b);
        assert_eq!(da, db, "step {step}");
        assert_eq!(format!("{:?}", a[0]), format!("{:?}", b[0]), "step {step}");
        assert_eq!(trace_a, trace_b, "step {step}");
        for v in 0..4 {
            let v = VcpuId(v);
            assert_eq!(sys_a.status(v), sys_b.status(v), "step {step}");
            assert_eq!(sys_a.vcpu_utilization(v, now), sys_b.vcpu_utilization(v, now), "step {step}");
        }
        // Wake-ups land while a vCPU runs (or the core idles), on both alike.
        if rng.below(4) == 0 {
            let v = VcpuId(rng.below(4) as u16);
            assert_eq!(sys_a.wake(v), sys_b.wake(v), "step {step}");
        }
        match da {
            Decision::Run { vcpu, until } => {
                let end = (now + Nanos(rng.below(3_000_000))).min(until);
                let reason = match rng.below(10) {
                    0..=5 => ExitReason::Yield,
                    6 | 7 => ExitReason::Preempted,
                    _ => ExitReason::Wfi,
                };
                b[0].handle(&sys_b, Event::Exit { vcpu, reason }, end, &mut trace_b).unwrap();
                let switched = if reason == ExitReason::Yield {
                    a[0].switch_on_yield(&sys_a, vcpu, end, &mut trace_a)
                } else {
                    None
                };
                match switched {
                    Some((next, until)) => {
                        assert_ne!(next, vcpu, "step {step}: a yield switches");
                        decided_a = Some(Decision::Run { vcpu: next, until });
                        fast += 1;
                    }
                    None => {
                        if reason == ExitReason::Yield {
                            declined += 1;
                        }
                        a[0].handle(&sys_a, Event::Exit { vcpu, reason }, end, &mut trace_a).unwrap();
                    }
                }
                now = end;
            }
            Decision::Idle { .. } => now += ms(1),
            Decision::PowerOff => panic!("step {step}: the core is online"),
        }
    }
    assert!(fast > 1_000 && declined > 100, "fast {fast}, declined {declined}");
}

/// `switch_on_yield` declines, changing nothing, whenever `next()` could decide otherwise than
/// a share peer: no peer runnable, a reservation on the core, a wake-up waiting, and for a vCPU
/// that is not the running one.
#[test]
fn switch_on_yield_declines_when_next_could_decide_otherwise() {
    let unchanged = |core: &CoreRuntime, sys: &System, before: &str, why: &str| {
        assert_eq!(format!("{core:?}"), before, "{why}: the runtime is unchanged");
        assert_eq!(sys.status(V0).state, VcpuState::Running, "{why}: still running");
    };
    let (sys, mut cores) = system(1, vec![share(0, 256), share(1, 256)]);
    let core = &mut cores[0];
    run_once(&sys, core, V0, Instant::ZERO, Instant::ZERO, ExitReason::Yield, &mut ());
    run_once(&sys, core, V1, Instant::ZERO, Instant::ZERO, ExitReason::Wfi, &mut ());
    let Decision::Run { vcpu: V0, .. } = core.next(&sys, Instant::ZERO, &mut ()) else { panic!() };
    let before = format!("{core:?}");
    assert_eq!(core.switch_on_yield(&sys, V0, at_ms(1), &mut ()), None);
    unchanged(core, &sys, &before, "no peer runnable");
    assert_eq!(core.switch_on_yield(&sys, V1, at_ms(1), &mut ()), None);
    unchanged(core, &sys, &before, "not the running vCPU");
    assert_eq!(sys.wake(V1), Some(C0));
    assert_eq!(core.switch_on_yield(&sys, V0, at_ms(1), &mut ()), None);
    unchanged(core, &sys, &before, "a wake-up waits");
    let (sys2, mut cores2) = system(2, vec![share(0, 256), share(1, 256), share(2, 256)]);
    let c = &mut cores2[0];
    let Decision::Run { vcpu: V0, .. } = c.next(&sys2, Instant::ZERO, &mut ()) else { panic!() };
    assert_eq!(c.request_move(&sys2, V2, C1), Ok(C0));
    let before2 = format!("{c:?}");
    assert_eq!(c.switch_on_yield(&sys2, V0, at_ms(1), &mut ()), None);
    unchanged(c, &sys2, &before2, "the core's own move request waits");
    // The wake-up taken in, the yield switches.
    core.handle(&sys, Event::Exit { vcpu: V0, reason: ExitReason::Preempted }, at_ms(1), &mut ()).unwrap();
    let Decision::Run { vcpu, .. } = core.next(&sys, at_ms(1), &mut ()) else { panic!() };
    let other = if vcpu == V0 { V1 } else { V0 };
    assert_eq!(core.switch_on_yield(&sys, vcpu, at_ms(2), &mut ()).map(|(v, _)| v), Some(other));

    let (sys, mut cores) = system(1, vec![share(0, 256), reserved(1, ms(1), ms(10)), share(2, 256)]);
    let core = &mut cores[0];
    run_once(&sys, core, V1, Instant::ZERO, Instant::ZERO, ExitReason::Wfi, &mut ());
    let Decision::Run { vcpu: V0, .. } = core.next(&sys, Instant::ZERO, &mut ()) else { panic!() };
    let before = format!("{core:?}");
    assert_eq!(core.switch_on_yield(&sys, V0, at_ms(1), &mut ()), None);
    unchanged(core, &sys, &before, "a reservation on the core");
}

/// A move the owner core asks for itself (`CoreRuntime::request_move`) is carried out at its
/// next decision as one through its mailbox is, without a message: side by side with
/// `System::request_move` on a twin system, the running vCPU asking for its own move at its
/// exit, the two agree after the owner's decision and after the destination's (the runtime
/// states, the state words, the traces), and the owner's mailbox stayed empty. A vCPU of
/// another core goes to that core's mailbox; bad arguments are refused as `System` refuses them.
#[test]
fn a_move_the_owner_asks_for_itself_needs_no_message() {
    let (sys_a, mut a) = system(2, vec![share(0, 256), share(1, 256), share(2, 256)]);
    let (sys_b, mut b) = system(2, vec![share(0, 256), share(1, 256), share(2, 256)]);
    let (mut trace_a, mut trace_b) = (Vec::new(), Vec::new());
    assert!(owns(&a[0], V0) && owns(&a[0], V2) && owns(&a[1], V1));
    let Decision::Run { vcpu: V0, .. } = a[0].next(&sys_a, Instant::ZERO, &mut trace_a) else { panic!() };
    let Decision::Run { vcpu: V0, .. } = b[0].next(&sys_b, Instant::ZERO, &mut trace_b) else { panic!() };
    // V0, running, asks to go to core 1 (as `HV_BENCH_MOVE` does).
    assert_eq!(a[0].request_move(&sys_a, V0, C1), Ok(C0));
    assert_eq!(sys_b.request_move(V0, C1), Ok(C0));
    assert!(!sys_a.has_requests(C0), "no message, no kick");
    assert!(sys_b.has_requests(C0));
    for (sys, cores, trace) in [(&sys_a, &mut a, &mut trace_a), (&sys_b, &mut b, &mut trace_b)] {
        cores[0].handle(sys, Event::Exit { vcpu: V0, reason: ExitReason::Preempted }, at_ms(1), trace).unwrap();
        let Decision::Run { vcpu: V2, .. } = cores[0].next(sys, at_ms(1), trace) else { panic!("V2 next") };
        assert!(!owns(&cores[0], V0));
        assert_eq!(sys.status(V0), status(C1, VcpuState::Migrating, false, false));
    }
    assert_eq!(format!("{:?}", a[0]), format!("{:?}", b[0]));
    for (sys, cores, trace) in [(&sys_a, &mut a, &mut trace_a), (&sys_b, &mut b, &mut trace_b)] {
        let _ = cores[1].next(sys, at_ms(1), trace);
        assert!(owns(&cores[1], V0));
    }
    assert_eq!(format!("{:?}", a[1]), format!("{:?}", b[1]));
    assert_eq!(trace_a, trace_b);
    for v in [V0, V1, V2] {
        assert_eq!(sys_a.status(v), sys_b.status(v));
    }
    // Core 1's vCPU, asked for by core 0: a message to core 1.
    assert_eq!(a[0].request_move(&sys_a, V1, C0), Ok(C1));
    assert!(sys_a.has_requests(C1) && !sys_a.has_requests(C0));
    assert_eq!(a[0].request_move(&sys_a, VcpuId(9), C1), Err(MoveError::NoSuchVcpu(VcpuId(9))));
    assert_eq!(a[0].request_move(&sys_a, V2, CoreId(5)), Err(MoveError::NoSuchCore(CoreId(5))));
}

/// The owner's own requests are kept without allocating: once as many wait as the system has
/// vCPUs, the next is refused as a full mailbox refuses one (`Busy`), and the decision takes
/// them all (a stale one, for a vCPU gone meanwhile, is dropped).
#[test]
fn the_owners_own_move_requests_are_bounded_and_all_taken() {
    let (sys, mut cores) = system(2, vec![share(0, 256), share(1, 256), share(2, 256)]);
    let core = &mut cores[0];
    for _ in 0..3 {
        assert_eq!(core.request_move(&sys, V2, C1), Ok(C0));
    }
    assert_eq!(core.request_move(&sys, V0, C1), Err(MoveError::Busy(V0)));
    let _ = core.next(&sys, Instant::ZERO, &mut ());
    assert!(!owns(core, V2), "handed over once; the two repeats found it gone");
    assert_eq!(sys.status(V2).owner, C1);
    assert_eq!(core.request_move(&sys, V0, C1), Ok(C0), "room again");
}
