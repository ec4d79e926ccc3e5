//! Scheduler decision cost on the host: what one core pays per scheduling decision.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use vcpu_runtime::{
    build, CoreMask, Decision, Event, ExitReason, Instant, Nanos, Reservation, RuntimeConfig, SchedParams, VcpuConfig,
    VmId,
};

fn config(vcpus: usize, rt: usize) -> RuntimeConfig {
    RuntimeConfig {
        cores: 1,
        params: SchedParams::default(),
        vcpus: (0..vcpus)
            .map(|i| VcpuConfig {
                vm: VmId(i as u16),
                index_in_vm: 0,
                weight: 128 << (i % 3),
                reservation: (i < rt)
                    .then_some(Reservation { budget: Nanos::from_micros(500), period: Nanos::from_millis(10) }),
                affinity: CoreMask::ALL,
                starts_parked: false,
            })
            .collect(),
    }
}

/// Preempt the running vCPU and decide again: the timeslice-expiry path.
fn preempt_and_decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("sched/preempt+next");
    for (n, rt) in [(2, 0), (4, 1), (16, 2)] {
        let (sys, mut cores) = build(&config(n, rt), Instant::ZERO).unwrap();
        let core = &mut cores[0];
        let mut now = Instant::ZERO;
        let mut running = match core.next(&sys, now, &mut ()) {
            Decision::Run { vcpu, .. } => vcpu,
            d => panic!("{d:?}"),
        };
        group.bench_with_input(BenchmarkId::from_parameter(format!("{n}vcpus-{rt}rt")), &n, |b, _| {
            b.iter(|| {
                now += Nanos::from_micros(100);
                core.handle(&sys, Event::Exit { vcpu: running, reason: ExitReason::Preempted }, now, &mut ()).unwrap();
                match core.next(&sys, now, &mut ()) {
                    Decision::Run { vcpu, .. } => running = black_box(vcpu),
                    d => panic!("{d:?}"),
                }
            })
        });
    }
    group.finish();
}

/// A vCPU blocks (WFI), the core idles, an interrupt wakes it and the core decides again: the
/// path an interactive guest takes on every event.
fn block_wake_decide(c: &mut Criterion) {
    let (sys, mut cores) = build(&config(1, 0), Instant::ZERO).unwrap();
    let core = &mut cores[0];
    let mut now = Instant::ZERO;
    let vcpu = match core.next(&sys, now, &mut ()) {
        Decision::Run { vcpu, .. } => vcpu,
        d => panic!("{d:?}"),
    };
    c.bench_function("sched/wfi+idle+wake+run", |b| {
        b.iter(|| {
            now += Nanos::from_micros(300);
            core.handle(&sys, Event::Exit { vcpu, reason: ExitReason::Wfi }, now, &mut ()).unwrap();
            assert!(matches!(core.next(&sys, now, &mut ()), Decision::Idle { .. }));
            now += Nanos::from_micros(700);
            core.handle(&sys, Event::Wake { vcpu }, now, &mut ()).unwrap();
            black_box(core.next(&sys, now, &mut ()));
        })
    });
}

criterion_group!(benches, preempt_and_decide, block_wake_decide);
criterion_main!(benches);
