//! Simulator speed: a generated 24-hour phone day on a dual-core (scenarios/phone-day.toml:
//! two guests of two vCPUs, 3.5 h of screen-on time with demand changing every 1 ms, the
//! default 4 ms timeslice). Target: at most 2 s per simulated day.

use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use platform_sim::Simulator;
use vcpu_runtime::scenario;

fn phone_day(c: &mut Criterion) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scenarios/phone-day.toml");
    let s = scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let mut group = c.benchmark_group("sim");
    group.sample_size(10).measurement_time(Duration::from_secs(30)).warm_up_time(Duration::from_secs(1));
    group.bench_function("phone-day-24h-dual-core", |b| {
        b.iter(|| {
            let report = Simulator::run_scenario(&s, &mut ()).unwrap();
            assert!(report.violations.is_empty());
            report.events
        })
    });
    group.finish();
}

fn one_second_phone(c: &mut Criterion) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scenarios/phone-dual.toml");
    let s = scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
    c.bench_function("sim/phone-dual-10s", |b| b.iter(|| Simulator::run_scenario(&s, &mut ()).unwrap().events));
}

criterion_group!(benches, one_second_phone, phone_day);
criterion_main!(benches);
