//! The foundation's acceptance checks, measured on the simulator driving the real runtime.

use std::path::Path;

use platform_sim::{DemandGen, Simulator};
use vcpu_runtime::scenario::{self, Demand};
use vcpu_runtime::trace::{TraceEvent, TraceKind};
use vcpu_runtime::{
    CoreId, CoreMask, Instant, Nanos, Reservation, RuntimeConfig, SchedParams, VcpuConfig, VcpuId, VmId,
};

fn scenario(name: &str) -> scenario::Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scenarios").join(name);
    scenario::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn vcpu(vm: u16, weight: u32, reservation: Option<Reservation>, affinity: CoreMask) -> VcpuConfig {
    VcpuConfig { vm: VmId(vm), index_in_vm: 0, weight, reservation, affinity, starts_parked: false }
}

fn periodic(period_us: u64, work_us: u64, offset_us: u64) -> Demand {
    Demand::Periodic {
        period: Nanos::from_micros(period_us),
        work: Nanos::from_micros(work_us),
        deadline: Nanos::from_micros(period_us),
        offset: Nanos::from_micros(offset_us),
    }
}

#[test]
fn weights_1_2_4_share_within_2_percent_over_10_s() {
    let s = scenario("weights-124.toml");
    assert_eq!(s.duration, Nanos::from_secs(10));
    let report = Simulator::run_scenario(&s, &mut ()).unwrap();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    let total: u64 = report.vcpus.iter().map(|v| v.cpu_ns).sum();
    assert!(total >= Nanos::from_millis(9_990).as_nanos(), "the core was kept busy: {total} ns");
    let weights: Vec<u32> = s.guests.iter().map(|g| g.weight).collect();
    let wsum: u32 = weights.iter().sum();
    for (v, w) in report.vcpus.iter().zip(&weights) {
        let expected = *w as f64 / wsum as f64;
        let got = v.cpu_ns as f64 / total as f64;
        // ±2 % of the expected share, relative.
        assert!((got - expected).abs() <= 0.02 * expected, "{}: share {got:.4}, expected {expected:.4}", v.name);
    }
}

#[test]
fn admitted_reservations_miss_no_deadline_under_competing_load() {
    // rt-mixed: a reserved periodic guest among batch competitors on two cores.
    let report = Simulator::run_scenario(&scenario("rt-mixed.toml"), &mut ()).unwrap();
    let rt = report.vcpu("rt/0").unwrap();
    assert_eq!(rt.jobs_done, 1000, "one job per 10 ms over 10 s");
    assert_eq!(rt.deadline_misses, 0);
    assert!(report.violations.is_empty(), "{:?}", report.violations);

    // Harder: three reservations with unaligned periods and offsets filling 85 % of one core
    // against three always-runnable share vCPUs; each job needs its whole budget.
    let one_core = CoreMask::single(CoreId(0));
    let res = |b: u64, p: u64| Some(Reservation { budget: Nanos::from_micros(b), period: Nanos::from_micros(p) });
    let config = RuntimeConfig {
        cores: 1,
        params: SchedParams::default(),
        vcpus: vec![
            vcpu(0, 256, res(3_000, 10_000), one_core),
            vcpu(1, 256, res(2_000, 7_000), one_core),
            vcpu(2, 256, res(1_400, 5_000), one_core),
            vcpu(3, 256, None, one_core),
            vcpu(4, 512, None, one_core),
            vcpu(5, 1024, None, one_core),
        ],
    };
    let gens = vec![
        DemandGen::new(&periodic(10_000, 3_000, 130), 0, Instant::ZERO),
        DemandGen::new(&periodic(7_000, 2_000, 2_900), 0, Instant::ZERO),
        DemandGen::new(&periodic(5_000, 1_400, 777), 0, Instant::ZERO),
        DemandGen::new(&Demand::Batch, 0, Instant::ZERO),
        DemandGen::new(&Demand::Batch, 0, Instant::ZERO),
        DemandGen::new(&Demand::Batch, 0, Instant::ZERO),
    ];
    let mut sim = Simulator::new(&config, gens).unwrap();
    sim.run_until(Instant::ZERO + Nanos::from_secs(10), &mut (), &mut ());
    let report = sim.report();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    for v in &report.vcpus[..3] {
        assert!(v.jobs_done >= 990, "{}: {} jobs", v.name, v.jobs_done);
        assert_eq!(v.deadline_misses, 0, "{} missed deadlines (max lateness {} ns)", v.name, v.max_lateness_ns);
    }
    // The share vCPUs still split the remaining ~15 % by weight (1:2:4).
    let share: Vec<f64> = report.vcpus[3..].iter().map(|v| v.cpu_ns as f64).collect();
    let sum: f64 = share.iter().sum();
    assert!(sum > 0.10 * 1e10, "share vCPUs got {sum} ns");
    for (got, want) in share.iter().zip([1.0 / 7.0, 2.0 / 7.0, 4.0 / 7.0]) {
        assert!((got / sum - want).abs() < 0.02, "share {} vs {want}", got / sum);
    }
}

#[test]
fn over_subscribed_reservations_are_refused_naming_the_core() {
    let one_core = CoreMask::single(CoreId(1));
    let res = Some(Reservation { budget: Nanos::from_millis(5), period: Nanos::from_millis(10) });
    let config = RuntimeConfig {
        cores: 2,
        params: SchedParams::default(),
        vcpus: vec![vcpu(0, 256, res, one_core), vcpu(1, 256, res, one_core)],
    };
    let err = Simulator::new(&config, vec![DemandGen::new(&Demand::Batch, 0, Instant::ZERO); 2]).err().unwrap();
    assert!(err.0.contains("core 1"), "{err}");
    assert!(err.0.contains("10.0% over the bound of 90.0%"), "{err}");
}

/// Collects trace events.
#[derive(Default)]
struct Collect(Vec<TraceEvent>);
impl vcpu_runtime::TraceSink for Collect {
    fn emit(&mut self, e: TraceEvent) {
        self.0.push(e);
    }
}

#[test]
fn affinity_holds_and_no_vcpu_runs_on_two_cores_through_migrations_and_offlining() {
    // Four cores, twelve vCPUs of mixed demand, some pinned; every 5 ms something moves: a
    // vCPU is asked to move somewhere (allowed or not), or a core goes off or comes back.
    let cores = 4u16;
    let mut vcpus = Vec::new();
    let mut gens = Vec::new();
    for i in 0..12u16 {
        let affinity = match i % 4 {
            0 => CoreMask::single(CoreId(0)).with(CoreId(1)),
            1 => CoreMask::single(CoreId(2)).with(CoreId(3)),
            _ => CoreMask::ALL,
        };
        let reservation =
            (i % 6 == 5).then_some(Reservation { budget: Nanos::from_millis(1), period: Nanos::from_millis(10) });
        vcpus.push(VcpuConfig {
            vm: VmId(i / 3),
            index_in_vm: i % 3,
            weight: 128 << (i % 3),
            reservation,
            affinity,
            starts_parked: false,
        });
        let demand = match i % 3 {
            0 => Demand::Batch,
            1 => Demand::Interactive {
                burst_mean: Nanos::from_millis(2),
                think_mean: Nanos::from_millis(6),
                seed: i as u64,
            },
            _ => periodic(10_000, 800, i as u64 * 311),
        };
        gens.push(DemandGen::new(&demand, i, Instant::ZERO));
    }
    let config = RuntimeConfig { cores, params: SchedParams::default(), vcpus: vcpus.clone() };
    let mut sim = Simulator::new(&config, gens).unwrap();
    let mut trace = Collect::default();
    let mut rng = platform_sim::demand::Rng::new(42);
    let mut offline_ok = 0;
    let mut moves_ok = 0;
    let mut t = Instant::ZERO;
    for _ in 0..2_000 {
        t += Nanos::from_millis(5);
        sim.run_until(t, &mut trace, &mut ());
        match rng.below(4) {
            0 => {
                let c = rng.below(cores as u64) as usize;
                if sim.take_offline(c, &mut trace).is_ok() {
                    offline_ok += 1;
                }
            }
            1 => {
                let c = rng.below(cores as u64) as usize;
                sim.bring_online(c, &mut trace);
            }
            _ => {
                let v = VcpuId(rng.below(vcpus.len() as u64) as u16);
                let dest = CoreId(rng.below(cores as u64) as u16);
                if sim.request_move(v, dest, &mut trace).is_ok() {
                    moves_ok += 1;
                }
            }
        }
    }
    let report = sim.report();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert!(offline_ok > 50 && moves_ok > 500, "{offline_ok} offlines, {moves_ok} move requests");
    // Affinity: every run of a vCPU was on an allowed core; and migrations happened.
    let mut runs = 0;
    let mut migrations = 0;
    for e in &trace.0 {
        match e.kind {
            TraceKind::VcpuRun { core, vcpu } => {
                runs += 1;
                assert!(vcpus[vcpu.index()].affinity.contains(core), "vCPU {vcpu} ran on core {core}");
            }
            TraceKind::VcpuMigrate { vcpu, to, .. } => {
                migrations += 1;
                assert!(vcpus[vcpu.index()].affinity.contains(to), "vCPU {vcpu} moved to core {to}");
            }
            _ => {}
        }
    }
    assert!(runs > 2_000 && migrations > 200, "{runs} runs, {migrations} migrations");
    // Nothing was lost: every vCPU is owned by exactly one core and kept getting CPU.
    assert_eq!(report.vcpus.len(), vcpus.len());
    for v in &report.vcpus {
        assert!(v.cpu_ns > Nanos::from_millis(50).as_nanos(), "{} got only {} ns", v.name, v.cpu_ns);
    }
    // Always-runnable vCPUs kept getting their share (a vCPU stranded in a runtime state would
    // fall far short): 12 vCPUs on at most four cores for 10 s.
    for v in report.vcpus.iter().filter(|v| v.id % 3 == 0) {
        assert!(v.cpu_ns > Nanos::from_secs(1).as_nanos(), "batch {} got only {} ns", v.name, v.cpu_ns);
    }
    // Reservations moved with their vCPUs and made every deadline.
    for v in report.vcpus.iter().filter(|v| v.id % 6 == 5) {
        assert_eq!(v.deadline_misses, 0, "{}", v.name);
    }
    // The trace survives its text encoding.
    for e in trace.0.iter().step_by(97) {
        let line = e.to_string();
        assert_eq!(TraceEvent::parse(&line), Ok(*e), "{line}");
    }
}

#[test]
fn default_scenario_runs_clean() {
    let s = scenario("phone-dual.toml");
    let report = Simulator::run_scenario(&s, &mut ()).unwrap();
    assert!(report.violations.is_empty());
    assert_eq!(report.vcpus.len(), 4);
    for v in &report.vcpus {
        // Interactive demand is light: every vCPU gets all it asked for within the run, give or
        // take the burst in progress at the end.
        assert!(v.cpu_ns + Nanos::from_millis(100).as_nanos() >= v.demand_ns.min(s.duration.as_nanos()), "{v:?}");
    }
    let text = report.to_string();
    assert!(text.contains("work/0") && text.contains("invariants: held"), "{text}");
}
