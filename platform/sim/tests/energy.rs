//! Energy runs on the simulator: speed (capacity) scaling of work and budgets, operating points
//! and clusters in the books, and the governor's promises on the built-in traces.

use platform_sim::energy::{self, lower_bound_uj, model_for};
use platform_sim::{traces, DemandGen, Simulator};
use vcpu_runtime::scenario::{Demand, GovernorPolicy};
use vcpu_runtime::util::CAPACITY_SCALE;
use vcpu_runtime::{CoreMask, Instant, Nanos, Reservation, RuntimeConfig, SchedParams, VcpuConfig, VmId};

fn one_core(reservation: Option<Reservation>, work_us: u64) -> Simulator {
    let config = RuntimeConfig {
        cores: 1,
        vcpus: vec![VcpuConfig {
            vm: VmId(0),
            index_in_vm: 0,
            weight: 256,
            reservation,
            affinity: CoreMask::first(1),
            starts_parked: false,
        }],
        params: SchedParams::default(),
    };
    let demand = Demand::Periodic {
        period: Nanos::from_millis(10),
        work: Nanos::from_micros(work_us),
        deadline: Nanos::from_millis(10),
        offset: Nanos::ZERO,
    };
    Simulator::new(&config, vec![DemandGen::new(&demand, 0, Instant::ZERO)]).unwrap()
}

/// At half speed a job takes twice as long; a reservation's budget, CPU time at full speed, lasts
/// twice as long too, so a reserved job that fits its budget at full speed still meets its
/// deadline.
#[test]
fn work_and_budgets_scale_with_the_core_speed() {
    for reservation in [None, Some(Reservation { budget: Nanos::from_micros(2_500), period: Nanos::from_millis(10) })] {
        let mut sim = one_core(reservation, 2_000);
        sim.set_core_capacity(0, CAPACITY_SCALE / 2, &mut (), &mut ());
        assert_eq!(sim.core_capacity(0), CAPACITY_SCALE / 2);
        // Up to just before the 101st job arrives.
        sim.run_until(Instant(Nanos::from_millis(995).as_nanos()), &mut (), &mut ());
        let r = sim.report();
        let v = &r.vcpus[0];
        assert_eq!(v.cpu_ns, Nanos::from_millis(400).as_nanos(), "{reservation:?}: 100 jobs of 4 ms");
        assert_eq!(v.jobs_done, 100, "{reservation:?}");
        assert_eq!(v.deadline_misses, 0, "{reservation:?}");
        assert_eq!(v.backlog_ns, 0, "{reservation:?}");
        assert_eq!(v.demand_ns, Nanos::from_millis(200).as_nanos(), "work is counted at full speed");
    }
    // A job bigger than the budget is throttled at any speed: 3 ms of work, 2.5 ms of budget.
    let mut sim =
        one_core(Some(Reservation { budget: Nanos::from_micros(2_500), period: Nanos::from_millis(10) }), 3_000);
    sim.set_core_capacity(0, CAPACITY_SCALE / 2, &mut (), &mut ());
    sim.run_until(Instant(Nanos::from_secs(1).as_nanos()), &mut (), &mut ());
    assert!(sim.report().vcpus[0].deadline_misses > 0);
}

/// Every policy's run books its busy time at the OPPs it ran at, and the clusters' shared
/// logic; the parts add up to the total, and no run spends less than the lower bound.
#[test]
fn energy_runs_book_opps_and_clusters() {
    let scenario = traces::scenario("browsing", "sd410", 4, 10, Nanos::from_secs(4)).unwrap();
    let model = model_for(&scenario).unwrap();
    let bound = lower_bound_uj(&scenario, &model);
    for policy in GovernorPolicy::ALL {
        let run = energy::run(&scenario, policy, &mut ()).unwrap();
        let e = &run.energy;
        assert!(run.report.violations.is_empty(), "{policy}: {:?}", run.report.violations);
        assert!(e.clusters_uj > 0, "{policy}: the cluster is accounted");
        let cores: u64 = e.cores.iter().map(|c| c.energy_uj).sum();
        assert!(cores + e.clusters_uj - e.energy_uj <= 1, "{policy}: cores and clusters make the total");
        assert!(e.energy_uj > bound, "{policy}: {} µJ is under the bound {bound} µJ", e.energy_uj);
        for c in &e.cores {
            assert_eq!(c.busy_ns_by_opp.iter().sum::<u64>(), c.busy_ns, "{policy}");
        }
        let top: u64 = e.cores.iter().map(|c| c.busy_ns_by_opp.last().copied().unwrap_or(0)).sum();
        let busy: u64 = e.cores.iter().map(|c| c.busy_ns).sum();
        if policy == GovernorPolicy::RaceToIdle {
            assert_eq!(top, busy, "race-to-idle runs at the top OPP");
        } else {
            assert!(top < busy / 2, "{policy}: at 10 % most busy time is below the top OPP ({top} of {busy})");
        }
        let fixed = energy::run_fixed_speed(&scenario, policy, &mut ()).unwrap();
        let top: u64 = fixed.energy.cores.iter().map(|c| c.busy_ns_by_opp.last().copied().unwrap_or(0)).sum();
        let busy: u64 = fixed.energy.cores.iter().map(|c| c.busy_ns).sum();
        assert_eq!(top, busy, "{policy}: without DVFS everything runs at the top OPP");
    }
}

/// On the traces with reservations, at light and at heavy load and on every board, no policy
/// misses a reserved deadline, and every policy does the work.
#[test]
fn reserved_vcpus_meet_their_deadlines_under_dvfs() {
    for (profile, cores) in [("phone-dual", 2), ("sd410", 4), ("hikey960", 8)] {
        for trace in ["audio", "video-call"] {
            for util in [10, 25, 50] {
                let Some(scenario) = traces::scenario(trace, profile, cores, util, Nanos::from_secs(3)) else {
                    continue;
                };
                for policy in GovernorPolicy::ALL {
                    let run = energy::run(&scenario, policy, &mut ()).unwrap();
                    let e = &run.energy;
                    assert_eq!(e.rt_misses, 0, "{profile} {trace} {util} % {policy}");
                    assert!(e.backlog_ns * 100 <= e.demand_ns, "{profile} {trace} {util} % {policy}: backlog");
                }
            }
        }
    }
}
