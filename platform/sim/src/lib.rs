//! A discrete-event simulator of N cores that drives the very same runtime as the hypervisor.
//!
//! Each simulated core asks its [`CoreRuntime`] for a [`Decision`] and carries it out in
//! simulated time: a vCPU "runs" by consuming the work its [`DemandGen`] gave it, exits with
//! WFI when it has none left, and is preempted when the decision's `until` comes. Work that
//! arrives for a blocked vCPU wakes it through [`System::wake`], exactly as an interrupt would
//! on the hypervisor. The simulator checks the runtime's invariants as it goes (a vCPU runs on
//! at most one core, only its owner runs it, parked and stopped vCPUs never run) and reports
//! CPU time, wake-up latency, job response times and deadline misses per vCPU.

pub mod chart;
pub mod demand;
pub mod energy;
pub mod report;
pub mod schedule;
pub mod timeline;
pub mod traces;

use std::collections::VecDeque;
use std::fmt;

use vcpu_runtime::scenario::Scenario;
use vcpu_runtime::util::{time_for_work, work_done, CAPACITY_SCALE};
use vcpu_runtime::{
    build, CoreId, CoreRuntime, Decision, Event, ExitReason, Instant, Nanos, RuntimeConfig, System, TraceSink, VcpuId,
    VcpuState,
};

pub use demand::{Arrival, DemandGen};
pub use report::{CoreReport, Report, VcpuReport};

/// Callbacks for what happens on the simulated cores: the hook the energy accounting plugs into.
pub trait SimObserver {
    /// `core` ran `vcpu` from `from` to `to`.
    fn vcpu_ran(&mut self, _core: CoreId, _vcpu: VcpuId, _from: Instant, _to: Instant) {}
    /// `core` was idle (waiting for an interrupt) from `from` to `to`.
    fn core_idle(&mut self, _core: CoreId, _from: Instant, _to: Instant) {}
    /// `core` was off from `from` to `to`.
    fn core_off(&mut self, _core: CoreId, _from: Instant, _to: Instant) {}
    /// `core` starts to rest at `at` and expects to be woken at `wake` (its runtime's timer or
    /// the next timer of a vCPU it owns), as an idle governor would predict from its timers.
    fn idle_predicted(&mut self, _core: CoreId, _at: Instant, _wake: Instant) {}
}

/// Observes nothing.
impl SimObserver for () {}

/// A broken runtime invariant, found while simulating.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub at: Instant,
    pub what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at {}: {}", Nanos(self.at.as_nanos()), self.what)
    }
}

/// A simulation that cannot start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimError(pub String);

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for SimError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CoreActivity {
    Running { vcpu: VcpuId, since: Instant, until: Instant },
    Idle { since: Instant, until: Option<Instant> },
    Off { since: Instant },
}

#[derive(Clone, Copy, Debug)]
struct Job {
    deadline: Instant,
    left: Nanos,
    released: Instant,
}

struct VcpuSim {
    gen: DemandGen,
    next: Option<Arrival>,
    /// Work due and not yet done.
    pending: Nanos,
    /// Periodic jobs in release order (their work is part of `pending`).
    jobs: VecDeque<Job>,
    running_on: Option<CoreId>,
    demand: Nanos,
    jobs_done: u64,
    deadline_misses: u64,
    max_lateness: Nanos,
    max_response: Nanos,
}

/// The simulator.
pub struct Simulator {
    sys: System,
    cores: Vec<CoreRuntime>,
    activity: Vec<CoreActivity>,
    /// When each event source fires next, in nanoseconds: first one entry per core (when its
    /// activity ends by itself, [`Simulator::core_deadline`]), then one per vCPU (its next
    /// arrival). One flat array keeps the search for the next event a tight loop.
    times: Vec<u64>,
    vcpus: Vec<VcpuSim>,
    now: Instant,
    violations: Vec<Violation>,
    events: u64,
    scenario_name: String,
    vcpu_names: Vec<String>,
    /// Per core: how fast it runs, out of [`CAPACITY_SCALE`] ([`Simulator::set_core_capacity`]).
    capacity: Vec<u32>,
}

/// Which simulator event comes next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    Core(usize),
    Arrival(usize),
}

impl Simulator {
    /// A simulator for a scenario; every guest needs a demand description.
    pub fn from_scenario(scenario: &Scenario) -> Result<Simulator, SimError> {
        let config = scenario.runtime_config(false);
        let mut gens = Vec::new();
        let mut names = Vec::new();
        for guest in &scenario.guests {
            let demand = guest
                .demand
                .as_ref()
                .ok_or_else(|| SimError(format!("guest `{}` has no demand description to simulate", guest.name)))?;
            for i in 0..guest.vcpus {
                gens.push(DemandGen::new(demand, i, Instant::ZERO));
                names.push(format!("{}/{}", guest.name, i));
            }
        }
        let mut sim = Simulator::new(&config, gens)?;
        sim.scenario_name = scenario.name.clone();
        sim.vcpu_names = names;
        Ok(sim)
    }

    /// A simulator for a runtime configuration with one generator per vCPU.
    pub fn new(config: &RuntimeConfig, gens: Vec<DemandGen>) -> Result<Simulator, SimError> {
        if gens.len() != config.vcpus.len() {
            return Err(SimError(format!("{} demand generators for {} vCPUs", gens.len(), config.vcpus.len())));
        }
        let (sys, cores) = build(config, Instant::ZERO).map_err(|e| SimError(e.to_string()))?;
        let mut vcpus: Vec<VcpuSim> = gens
            .into_iter()
            .map(|gen| VcpuSim {
                gen,
                next: None,
                pending: Nanos::ZERO,
                jobs: VecDeque::new(),
                running_on: None,
                demand: Nanos::ZERO,
                jobs_done: 0,
                deadline_misses: 0,
                max_lateness: Nanos::ZERO,
                max_response: Nanos::ZERO,
            })
            .collect();
        for v in vcpus.iter_mut() {
            v.next = v.gen.next_arrival(Instant::ZERO);
        }
        let n = cores.len();
        let mut times = vec![0u64; n];
        times.extend(vcpus.iter().map(|v| v.next.map_or(u64::MAX, |a| a.at.as_nanos())));
        let names = (0..vcpus.len()).map(|i| format!("vcpu{i}")).collect();
        Ok(Simulator {
            sys,
            cores,
            activity: vec![CoreActivity::Idle { since: Instant::ZERO, until: Some(Instant::ZERO) }; n],
            times,
            vcpus,
            now: Instant::ZERO,
            violations: Vec::new(),
            events: 0,
            scenario_name: String::from("custom"),
            vcpu_names: names,
            capacity: vec![CAPACITY_SCALE; n],
        })
    }

    pub fn system(&self) -> &System {
        &self.sys
    }
    pub fn now(&self) -> Instant {
        self.now
    }
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// How fast core `c` runs, out of [`CAPACITY_SCALE`].
    pub fn core_capacity(&self, c: usize) -> u32 {
        self.capacity[c]
    }

    /// The time at which a core's current activity ends by itself.
    fn core_deadline(&self, c: usize) -> Instant {
        match self.activity[c] {
            CoreActivity::Running { vcpu, since, until } => {
                let done = since + time_for_work(self.vcpus[vcpu.index()].pending, self.capacity[c]);
                done.min(until)
            }
            CoreActivity::Idle { until, .. } => until.unwrap_or(Instant::NEVER),
            CoreActivity::Off { .. } => Instant::NEVER,
        }
    }

    fn set_activity(&mut self, c: usize, activity: CoreActivity) {
        self.activity[c] = activity;
        self.times[c] = self.core_deadline(c).as_nanos();
    }

    fn next_event(&self) -> (Instant, Next) {
        let mut best = u64::MAX;
        let mut at = 0;
        for (i, &t) in self.times.iter().enumerate() {
            if t < best {
                best = t;
                at = i;
            }
        }
        let n = self.cores.len();
        (Instant(best), if at < n { Next::Core(at) } else { Next::Arrival(at - n) })
    }

    /// Runs until `end` (simulated), emitting trace events into `trace` and observations into
    /// `observer`.
    pub fn run_until(&mut self, end: Instant, trace: &mut impl TraceSink, observer: &mut impl SimObserver) {
        loop {
            let (t, what) = self.next_event();
            if t > end {
                break;
            }
            self.now = t;
            self.events += 1;
            match what {
                Next::Core(c) => self.interrupt(c, trace, observer),
                Next::Arrival(i) => self.arrival(i, trace, observer),
            }
        }
        self.now = end;
        // Bring every core's accounting up to `end` without ending anything.
        for c in 0..self.cores.len() {
            match self.activity[c] {
                CoreActivity::Running { vcpu, since, until } => {
                    self.consume(c, vcpu, since, end);
                    observer.vcpu_ran(CoreId(c as u16), vcpu, since, end);
                    self.cores[c].tick(&self.sys, end);
                    self.set_activity(c, CoreActivity::Running { vcpu, since: end, until });
                }
                CoreActivity::Idle { since, until } => {
                    observer.core_idle(CoreId(c as u16), since, end);
                    self.cores[c].tick(&self.sys, end);
                    self.set_activity(c, CoreActivity::Idle { since: end, until });
                }
                CoreActivity::Off { since } => {
                    observer.core_off(CoreId(c as u16), since, end);
                    self.set_activity(c, CoreActivity::Off { since: end });
                }
            }
        }
    }

    /// Work done by `vcpu` on core `c` from `from` to `to` (at the core's capacity): completes
    /// jobs in order and checks deadlines.
    fn consume(&mut self, c: usize, vcpu: VcpuId, from: Instant, to: Instant) {
        let capacity = self.capacity[c];
        let v = &mut self.vcpus[vcpu.index()];
        let mut work = work_done(to - from, capacity).min(v.pending);
        v.pending -= work;
        let mut t = from;
        while work > Nanos::ZERO {
            let Some(job) = v.jobs.front_mut() else { break };
            let step = job.left.min(work);
            job.left -= step;
            work -= step;
            t = (t + time_for_work(step, capacity)).min(to);
            if job.left == Nanos::ZERO {
                let job = v.jobs.pop_front().unwrap_or(Job { deadline: t, left: Nanos::ZERO, released: t });
                v.jobs_done += 1;
                v.max_response = v.max_response.max(t - job.released);
                if t > job.deadline {
                    v.deadline_misses += 1;
                    v.max_lateness = v.max_lateness.max(t - job.deadline);
                }
            }
        }
    }

    /// Ends the run of whatever core `c` is running now: the vCPU exits with WFI if its work is
    /// done, else preempted. Returns false if the core is off.
    fn stop_running(&mut self, c: usize, trace: &mut impl TraceSink, observer: &mut impl SimObserver) -> bool {
        match self.activity[c] {
            CoreActivity::Running { vcpu, since, .. } => {
                self.consume(c, vcpu, since, self.now);
                observer.vcpu_ran(CoreId(c as u16), vcpu, since, self.now);
                let reason = if self.vcpus[vcpu.index()].pending == Nanos::ZERO {
                    ExitReason::Wfi
                } else {
                    ExitReason::Preempted
                };
                self.exit(c, vcpu, reason, trace);
            }
            CoreActivity::Idle { since, .. } => observer.core_idle(CoreId(c as u16), since, self.now),
            // An off core takes no interrupts: its mailbox is closed and it owns nothing.
            CoreActivity::Off { .. } => return false,
        }
        true
    }

    fn exit(&mut self, c: usize, vcpu: VcpuId, reason: ExitReason, trace: &mut impl TraceSink) {
        self.vcpus[vcpu.index()].running_on = None;
        let now = self.now;
        if let Err(e) = self.cores[c].handle(&self.sys, Event::Exit { vcpu, reason }, now, trace) {
            self.violations.push(Violation { at: now, what: e.to_string() });
        }
    }

    /// Asks core `c` what to do and starts doing it.
    fn decide(&mut self, c: usize, trace: &mut impl TraceSink, observer: &mut impl SimObserver) {
        let now = self.now;
        if let Some(vcpu) = self.cores[c].current() {
            self.violations
                .push(Violation { at: now, what: format!("core {c} asked to decide while running vCPU {vcpu}") });
            return;
        }
        let decision = self.cores[c].next(&self.sys, now, trace);
        let activity = match decision {
            Decision::Run { vcpu, until } => {
                self.check_run(c, vcpu);
                self.vcpus[vcpu.index()].running_on = Some(CoreId(c as u16));
                CoreActivity::Running { vcpu, since: now, until: until.max(now) }
            }
            Decision::Idle { until } => {
                // The next arrival of a vCPU this core owns stands for the guest's timer.
                let mut wake = until.unwrap_or(Instant::NEVER);
                for v in self.cores[c].vcpus() {
                    if let Some(a) = self.vcpus[v.id().index()].next {
                        wake = wake.min(a.at);
                    }
                }
                observer.idle_predicted(CoreId(c as u16), now, wake);
                CoreActivity::Idle { since: now, until }
            }
            Decision::PowerOff => CoreActivity::Off { since: now },
        };
        self.set_activity(c, activity);
        self.deliver_kicks(c, trace, observer);
    }

    fn check_run(&mut self, c: usize, vcpu: VcpuId) {
        let now = self.now;
        if let Some(other) = self.vcpus[vcpu.index()].running_on {
            self.violations.push(Violation {
                at: now,
                what: format!("vCPU {vcpu} chosen on core {c} while running on core {other}"),
            });
        }
        let status = self.sys.status(vcpu);
        if status.owner != CoreId(c as u16) || status.state != VcpuState::Running {
            self.violations
                .push(Violation { at: now, what: format!("vCPU {vcpu} run on core {c} but its word says {status:?}") });
        }
    }

    /// Sends the IPIs a core asked for: a kicked core re-decides (preempting what it runs).
    fn deliver_kicks(&mut self, from: usize, trace: &mut impl TraceSink, observer: &mut impl SimObserver) {
        let kicks = self.cores[from].take_kicks();
        for core in kicks.iter() {
            if core.index() < self.cores.len() {
                self.interrupt(core.index(), trace, observer);
            }
        }
    }

    /// An interrupt (or its own timer) reaches core `c`: whatever it runs exits, and it decides
    /// again.
    fn interrupt(&mut self, c: usize, trace: &mut impl TraceSink, observer: &mut impl SimObserver) {
        if self.stop_running(c, trace, observer) {
            self.decide(c, trace, observer);
        }
    }

    fn arrival(&mut self, i: usize, trace: &mut impl TraceSink, observer: &mut impl SimObserver) {
        let now = self.now;
        let v = &mut self.vcpus[i];
        let Some(a) = v.next.take() else { return };
        let was_idle = v.pending == Nanos::ZERO;
        v.pending += a.work;
        v.demand += a.work;
        if let Some(deadline) = a.deadline {
            v.jobs.push_back(Job { deadline, left: a.work, released: a.at });
        }
        v.next = v.gen.next_arrival(now);
        self.times[self.cores.len() + i] = v.next.map_or(u64::MAX, |a| a.at.as_nanos());
        if !was_idle {
            // Still busy with earlier work: it is runnable or running already, and if it is
            // running its core's activity now ends later.
            if let Some(core) = v.running_on {
                self.times[core.index()] = self.core_deadline(core.index()).as_nanos();
            }
            return;
        }
        let vcpu = VcpuId(i as u16);
        if let Some(core) = self.sys.wake(vcpu) {
            // The interrupt reaches the owner core.
            let c = core.index();
            self.interrupt(c, trace, observer);
        }
    }

    /// A report of everything so far.
    pub fn report(&self) -> Report {
        report::build(self)
    }

    /// Runs a whole scenario and reports.
    pub fn run_scenario(scenario: &Scenario, trace: &mut impl TraceSink) -> Result<Report, SimError> {
        let mut sim = Simulator::from_scenario(scenario)?;
        sim.run_until(Instant::ZERO + scenario.duration, trace, &mut ());
        Ok(sim.report())
    }

    /// Takes core `c` offline between runs (hands its vCPUs over, then it powers off).
    pub fn take_offline(&mut self, c: usize, trace: &mut impl TraceSink) -> Result<(), String> {
        self.take_offline_observed(c, trace, &mut ())
    }

    /// [`Simulator::take_offline`], telling `observer` how the core's activity ended.
    pub fn take_offline_observed(
        &mut self,
        c: usize,
        trace: &mut impl TraceSink,
        observer: &mut impl SimObserver,
    ) -> Result<(), String> {
        let now = self.now;
        self.stop_running(c, trace, observer);
        let r = self.cores[c].handle(&self.sys, Event::CoreGoingOffline, now, trace).map_err(|e| e.to_string());
        self.decide(c, trace, observer);
        r
    }

    /// Brings core `c` back online.
    pub fn bring_online(&mut self, c: usize, trace: &mut impl TraceSink) {
        self.bring_online_observed(c, trace, &mut ())
    }

    /// [`Simulator::bring_online`], telling `observer` how the core's off time ended.
    pub fn bring_online_observed(&mut self, c: usize, trace: &mut impl TraceSink, observer: &mut impl SimObserver) {
        let CoreActivity::Off { since } = self.activity[c] else {
            // Already on: nothing to do (and deciding now would abandon what it runs).
            return;
        };
        let now = self.now;
        observer.core_off(CoreId(c as u16), since, now);
        let _ = self.cores[c].handle(&self.sys, Event::CoreOnline, now, trace);
        self.decide(c, trace, observer);
    }

    /// Sets how fast core `c` runs from now on (an operating point's capacity, out of
    /// [`CAPACITY_SCALE`]): a vCPU's work takes `CAPACITY_SCALE / capacity` times its length at
    /// full speed. The core's runtime is told too (its budgets and utilization follow the
    /// speed). A run in progress ends here (reported to `observer` at the old speed) and the core
    /// decides again, as after an interrupt.
    pub fn set_core_capacity(
        &mut self,
        c: usize,
        capacity: u32,
        trace: &mut impl TraceSink,
        observer: &mut impl SimObserver,
    ) {
        let capacity = capacity.clamp(1, CAPACITY_SCALE);
        if self.capacity[c] == capacity {
            return;
        }
        let running = matches!(self.activity[c], CoreActivity::Running { .. });
        if running {
            self.stop_running(c, trace, observer);
        }
        self.capacity[c] = capacity;
        self.cores[c].set_capacity(capacity);
        if running {
            self.decide(c, trace, observer);
        } else {
            self.times[c] = self.core_deadline(c).as_nanos();
        }
    }

    /// Asks for a vCPU to move to `dest` (handled by its owner at once, as after an IPI).
    pub fn request_move(&mut self, vcpu: VcpuId, dest: CoreId, trace: &mut impl TraceSink) -> Result<(), String> {
        self.request_move_observed(vcpu, dest, trace, &mut ())
    }

    /// [`Simulator::request_move`], telling `observer` how the owner's activity ended.
    pub fn request_move_observed(
        &mut self,
        vcpu: VcpuId,
        dest: CoreId,
        trace: &mut impl TraceSink,
        observer: &mut impl SimObserver,
    ) -> Result<(), String> {
        let owner = self.sys.request_move(vcpu, dest).map_err(|e| e.to_string())?;
        self.interrupt(owner.index(), trace, observer);
        Ok(())
    }
}
