//! Per-core scheduling: the [`CoreRuntime`] each physical core owns, and its decisions.
//!
//! Two classes share a core:
//! * **Real-time reservations** (budget `Q` every period `P`) run first, earliest deadline
//!   first, each as a hard constant-bandwidth server: a server that exhausts its budget waits
//!   for its replenishment, and a vCPU that wakes with more budget than its bandwidth allows
//!   before its deadline gets a fresh deadline. Admission keeps the sum of `Q/P` on each core
//!   under the bound (default 90 %), so every admitted server gets its budget in every period.
//!   A budget is CPU time at full speed: on a core the platform slowed down
//!   ([`CoreRuntime::set_capacity`]) it lasts proportionally longer (Linux's `SCHED_DEADLINE`
//!   does the same), and the power governor keeps such a core fast enough for its servers.
//! * **Proportional share** (Xen credit2 style): running burns credit at a rate inversely
//!   proportional to the vCPU's weight; the vCPU with the most credit runs. We keep the
//!   credit as a *weighted virtual time* (`vtime`, which is credit with the sign flipped and no
//!   resets): `vtime += run_time · 1024 / weight`, and the smallest `vtime` runs. A vCPU that
//!   wakes is placed no more than `wake_credit` behind the core's minimum, so sleeping earns
//!   no unbounded credit; a vCPU that moves to another core keeps its lag.
//!
//! Nothing here allocates after [`build`]: a core's vCPU list has room for every vCPU of the
//! system, and mailboxes never grow.

use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::ids::{CoreId, CoreMask, VcpuId, VmId};
use crate::system::{AdmissionError, Message, PostError, System};
use crate::time::{Instant, Nanos};
use crate::trace::{CoreState, StopReason, TraceEvent, TraceKind};
use crate::util::{time_for_work, work_done, Ewma, CAPACITY_SCALE};
use crate::vcpu::{Reservation, VcpuConfig, VcpuInfo, VcpuState};

/// Scheduler parameters (the policy knobs of a scenario that the scheduler reads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedParams {
    /// Longest a proportional-share vCPU runs before the core decides again.
    pub timeslice: Nanos,
    /// A running share vCPU is not preempted by one that is less than this far ahead of it in
    /// (weighted) time: stops wake-ups from thrashing the core.
    pub min_granularity: Nanos,
    /// How far behind the core's least virtual time a waking vCPU may place itself.
    pub wake_credit: Nanos,
    /// Real-time admission bound per core, in ppm of the core.
    pub rt_bound_ppm: u64,
    /// Half-life of the utilization averages.
    pub util_half_life: Nanos,
}

impl Default for SchedParams {
    fn default() -> Self {
        SchedParams {
            timeslice: Nanos::from_millis(4),
            min_granularity: Nanos::from_micros(500),
            wake_credit: Nanos::from_millis(2),
            rt_bound_ppm: 900_000,
            util_half_life: Nanos::from_millis(32),
        }
    }
}

/// Virtual time advances by `run_time · VTIME_SCALE / weight`.
const VTIME_SCALE: u64 = 1024;

/// The virtual-time rate of a weight: `VTIME_SCALE / weight` in Q32, so charging run time is a
/// multiplication (no division on the scheduling path).
const fn vtime_rate(weight: u32) -> u64 {
    (VTIME_SCALE << 32) / (if weight == 0 { 1 } else { weight as u64 })
}

/// The vCPU's part of [`CoreRuntime::charge`]: its run from `since` to `now` on a core of
/// `capacity` (CPU time, virtual time, a reservation's budget, utilization, published when its
/// period closed).
#[inline(always)]
fn charge_vcpu(v: &mut VcpuSched, sys: &System, since: Instant, now: Instant, capacity: u32) {
    let ran = now.since(since);
    v.stats.cpu_time += ran;
    v.vtime = v.vtime.saturating_add(to_vtime(ran, v.vtime_rate));
    if let Some(s) = v.rt.as_mut() {
        s.remaining = s.remaining.saturating_sub(work_done(ran, capacity));
    }
    v.util.advance_run(sys.decay, since, now, capacity);
    if v.util.generation() != v.published {
        v.published = v.util.generation();
        sys.publish_vcpu_util(v.id, &v.util);
    }
}

fn to_vtime(d: Nanos, rate: u64) -> u64 {
    ((d.as_nanos() as u128 * rate as u128) >> 32).min(u64::MAX as u128) as u64
}

/// Why a vCPU came back to the hypervisor, as far as scheduling cares. Exits the platform
/// handles and resumes from (an emulated MMIO access, a hypercall) are not reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// Its time was up or an interrupt needs the core: still runnable.
    Preempted,
    /// The guest yielded (a WFE or a yield hypercall): still runnable, goes behind its peers.
    Yield,
    /// The guest executed WFI: blocks until a wake-up.
    Wfi,
    /// The guest called PSCI CPU_OFF: parked until a sibling's CPU_ON.
    PsciCpuOff,
    /// The vCPU ends for good.
    Stop(StopReason),
}

/// An event the platform feeds to a core's runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A periodic housekeeping tick: refreshes the utilization figures others read.
    Tick,
    /// The vCPU this core was running came back.
    Exit { vcpu: VcpuId, reason: ExitReason },
    /// An interrupt is pending for a vCPU (owned by this core or any other).
    Wake { vcpu: VcpuId },
    /// This core came (back) online and takes vCPUs.
    CoreOnline,
    /// This core should go offline: it hands its vCPUs over and then decides
    /// [`Decision::PowerOff`].
    CoreGoingOffline,
}

/// What a core should do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Enter this vCPU and take it back no later than `until` (arm the timer for it).
    Run { vcpu: VcpuId, until: Instant },
    /// Nothing to run: wait for an interrupt, or until `until` when a reservation replenishes.
    Idle { until: Option<Instant> },
    /// The core has handed everything over: switch it off (PSCI CPU_OFF).
    PowerOff,
}

/// Errors from runtime requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoveError {
    NoSuchVcpu(VcpuId),
    NoSuchCore(CoreId),
    /// The core that was asked does not own the vCPU.
    NotOwned {
        vcpu: VcpuId,
        core: CoreId,
    },
    /// The vCPU is running right now; it can move only between runs.
    Running(VcpuId),
    Stopped(VcpuId),
    /// The destination is not in the vCPU's affinity mask.
    Affinity {
        vcpu: VcpuId,
        dest: CoreId,
    },
    CoreOffline(CoreId),
    /// The vCPU's reservation does not fit on the destination.
    Admission(AdmissionError),
    /// Too many messages in flight; try again later.
    Busy(VcpuId),
}

impl core::fmt::Display for MoveError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MoveError::NoSuchVcpu(v) => write!(f, "there is no vCPU {v}"),
            MoveError::NoSuchCore(c) => write!(f, "there is no core {c}"),
            MoveError::NotOwned { vcpu, core } => write!(f, "vCPU {vcpu} is not owned by core {core}"),
            MoveError::Running(v) => write!(f, "vCPU {v} is running; it can move only between runs"),
            MoveError::Stopped(v) => write!(f, "vCPU {v} has stopped"),
            MoveError::Affinity { vcpu, dest } => write!(f, "core {dest} is outside vCPU {vcpu}'s affinity"),
            MoveError::CoreOffline(c) => write!(f, "core {c} is offline"),
            MoveError::Admission(e) => write!(f, "{e}"),
            MoveError::Busy(v) => write!(f, "too many hand-overs in flight to move vCPU {v}; try again"),
        }
    }
}

/// Why a core could not go offline (it stays online, nothing is lost).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OfflineError {
    /// A vCPU is running on the core: go offline between runs.
    Busy,
    /// The last online core cannot go offline.
    LastCore,
    /// A vCPU could not be placed on any other online core.
    CannotMove { vcpu: VcpuId, reason: MoveError },
}

impl core::fmt::Display for OfflineError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            OfflineError::Busy => write!(f, "a vCPU is running on the core"),
            OfflineError::LastCore => write!(f, "it is the last online core"),
            OfflineError::CannotMove { vcpu, reason } => write!(f, "vCPU {vcpu} cannot leave it: {reason}"),
        }
    }
}

/// Errors of [`CoreRuntime::handle`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeError {
    /// An exit was reported for a vCPU this core was not running.
    NotRunning {
        vcpu: VcpuId,
        core: CoreId,
    },
    Offline(OfflineError),
}

impl core::fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RuntimeError::NotRunning { vcpu, core } => {
                write!(f, "core {core} got an exit for vCPU {vcpu}, which it was not running")
            }
            RuntimeError::Offline(e) => write!(f, "cannot go offline: {e}"),
        }
    }
}

/// Where trace events go: the console on the hypervisor, a file or a vector in the simulator.
pub trait TraceSink {
    fn emit(&mut self, event: TraceEvent);
    /// Whether this sink keeps the events a vCPU switch makes (`run`, `pre`, `blk`, `wake`):
    /// the runtime does not build those it would drop. Every other event is always emitted.
    fn wants_switch_events(&self) -> bool {
        true
    }
}

/// Discards events.
impl TraceSink for () {
    fn emit(&mut self, _: TraceEvent) {}
}

#[cfg(any(test, feature = "std"))]
impl TraceSink for alloc::vec::Vec<TraceEvent> {
    fn emit(&mut self, event: TraceEvent) {
        self.push(event);
    }
}

/// Per-vCPU counters, kept by whichever core owns the vCPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuStats {
    /// CPU time the vCPU has received.
    pub cpu_time: Nanos,
    /// Times it was entered.
    pub runs: u64,
    /// Times it went from blocked to runnable.
    pub wakeups: u64,
    /// Sum and maximum of the time from wake-up to running.
    pub wake_latency_total: Nanos,
    pub wake_latency_max: Nanos,
    /// Times it was handed over to another core.
    pub migrations: u64,
    /// Times it was descheduled while still runnable.
    pub preemptions: u64,
    /// Periods of its reservation that ended with budget left while it was runnable: the
    /// server's deadline passed before it got the CPU time it was owed (the scheduler's side
    /// of a real-time guarantee; 0 whenever the reservation was honoured, however slowly the
    /// guest's own work went).
    pub reservation_misses: u64,
}

/// A real-time vCPU's constant-bandwidth server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RtServer {
    res: Reservation,
    deadline: Instant,
    remaining: Nanos,
    /// Built with the system and not yet looked at by its core: its first period starts at
    /// that core's first decision, not when the system was built (the platform may take a
    /// while to start its cores, or wait for a migration's commit).
    unstarted: bool,
}

/// A vCPU's scheduling state. It belongs to the vCPU's owner core and travels with the vCPU
/// when it is handed over.
#[derive(Clone, Copy, Debug)]
pub struct VcpuSched {
    id: VcpuId,
    vm: VmId,
    weight: u32,
    /// [`vtime_rate`] of `weight`.
    vtime_rate: u64,
    affinity: CoreMask,
    rt: Option<RtServer>,
    vtime: u64,
    util: Ewma,
    /// `util.generation()` when it was last published ([`System::publish_vcpu_util`]): within
    /// a period the published value and what readers decay it to do not change.
    published: u32,
    /// Mirrors the state in the vCPU's shared word (only the owner writes it).
    state: VcpuState,
    last_migrated: Instant,
    /// When it last became runnable after a wake-up, if it has not run since.
    woken_at: Option<Instant>,
    stats: VcpuStats,
}

impl VcpuSched {
    pub fn id(&self) -> VcpuId {
        self.id
    }
    pub fn vm(&self) -> VmId {
        self.vm
    }
    pub fn state(&self) -> VcpuState {
        self.state
    }
    pub fn stats(&self) -> &VcpuStats {
        &self.stats
    }
    pub fn weight(&self) -> u32 {
        self.weight
    }
    pub fn affinity(&self) -> CoreMask {
        self.affinity
    }
    pub fn reservation(&self) -> Option<Reservation> {
        self.rt.map(|s| s.res)
    }
    /// Utilization (in [`UTIL_ONE`](crate::util::UTIL_ONE) units) as of its last update.
    pub fn utilization(&self) -> u32 {
        self.util.value()
    }
    pub fn last_migrated(&self) -> Instant {
        self.last_migrated
    }
    fn is_runnable(&self) -> bool {
        self.state == VcpuState::Runnable
    }
    fn ppm(&self) -> u64 {
        self.rt.map_or(0, |s| s.res.bandwidth_ppm())
    }
}

/// Per-core counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreStats {
    /// Time spent running vCPUs.
    pub busy: Nanos,
    /// Decisions taken.
    pub decisions: u64,
    /// vCPU switches (a different vCPU than last time was entered).
    pub switches: u64,
}

#[derive(Clone, Copy, Debug)]
struct Current {
    idx: usize,
    since: Instant,
    id: VcpuId,
}

/// A physical core's half of the runtime. Owned by that core alone: no locks on its paths.
#[derive(Debug)]
pub struct CoreRuntime {
    core: CoreId,
    params: SchedParams,
    /// Boxed, so that a hand-over moves a pointer between cores, not the state (208 bytes).
    #[allow(clippy::vec_box)]
    vcpus: Vec<Box<VcpuSched>>,
    current: Option<Current>,
    /// The vCPU entered last (for switch counting, tracing and the wake-up granularity).
    last_run: Option<VcpuId>,
    /// The least virtual time among this core's runnable share vCPUs; never decreases.
    min_vtime: u64,
    util: Ewma,
    online: bool,
    kicks: CoreMask,
    stats: CoreStats,
    /// Reused buffer for messages (sized at build, so it never grows).
    scratch: Vec<Message>,
    /// Move requests that arrived before their vCPU (sized at build).
    deferred_moves: Vec<(VcpuId, CoreId)>,
    /// Moves of its own vCPUs this core asked for itself ([`CoreRuntime::request_move`]), for
    /// its next decision: a request that needs no mailbox. Capacity for every vCPU, reserved.
    local_moves: Vec<(VcpuId, CoreId)>,
    /// When the slice given to the last share vCPU ends: the granularity rule keeps that vCPU
    /// on the core only before then, so a slice that ran out always rotates.
    slice_end: Instant,
    /// How fast the core runs, out of [`CAPACITY_SCALE`] ([`CoreRuntime::set_capacity`]).
    capacity: u32,
    /// Counts the changes of `vcpus`' membership ([`CoreRuntime::membership`]).
    membership: u64,
}

/// The static description of a system for [`build`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeConfig {
    pub cores: u16,
    pub params: SchedParams,
    pub vcpus: Vec<VcpuConfig>,
}

/// A system that cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildError {
    /// `cores` must be 1..=64.
    Cores(u16),
    /// More vCPUs than the runtime numbers (65535).
    TooManyVcpus(usize),
    ZeroWeight {
        vm: VmId,
        index: u16,
    },
    /// The affinity names no existing core.
    EmptyAffinity {
        vm: VmId,
        index: u16,
    },
    /// A reservation with a zero period or a budget over its period.
    BadReservation {
        vm: VmId,
        index: u16,
    },
    /// The reservation fits on none of the allowed cores; the error is the closest miss.
    Admission {
        vm: VmId,
        index: u16,
        closest: AdmissionError,
    },
}

impl core::fmt::Display for BuildError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BuildError::Cores(n) => write!(f, "a system has 1 to 64 cores, not {n}"),
            BuildError::TooManyVcpus(n) => write!(f, "{n} vCPUs are more than the runtime supports (65535)"),
            BuildError::ZeroWeight { vm, index } => write!(f, "VM {vm} vCPU {index}: weight must be at least 1"),
            BuildError::EmptyAffinity { vm, index } => {
                write!(f, "VM {vm} vCPU {index}: affinity names no existing core")
            }
            BuildError::BadReservation { vm, index } => {
                write!(f, "VM {vm} vCPU {index}: reservation needs a non-zero period and a budget no larger than it")
            }
            BuildError::Admission { vm, index, closest } => {
                write!(f, "VM {vm} vCPU {index}: reservation refused on every allowed core; closest: {closest}")
            }
        }
    }
}

/// Builds the shared [`System`] and one [`CoreRuntime`] per core, placing every vCPU on a core:
/// reservations first (each on the allowed core with the least real-time load that admits it),
/// then the others on the allowed core with the fewest vCPUs.
pub fn build(config: &RuntimeConfig, start: Instant) -> Result<(System, Vec<CoreRuntime>), BuildError> {
    let n_cores = config.cores;
    if n_cores == 0 || n_cores as usize > CoreMask::MAX_CORES {
        return Err(BuildError::Cores(n_cores));
    }
    if config.vcpus.len() > u16::MAX as usize {
        return Err(BuildError::TooManyVcpus(config.vcpus.len()));
    }
    let all = CoreMask::first(n_cores as usize);
    let mut reserved = alloc::vec![0u64; n_cores as usize];
    let mut count = alloc::vec![0usize; n_cores as usize];
    let mut placement = alloc::vec![CoreId(0); config.vcpus.len()];
    // Reservations first: they are the constrained ones.
    let mut order: Vec<usize> = (0..config.vcpus.len()).collect();
    order.sort_by_key(|&i| core::cmp::Reverse(config.vcpus[i].reservation.map_or(0, |r| r.bandwidth_ppm())));
    for &i in &order {
        let v = &config.vcpus[i];
        let (vm, index) = (v.vm, v.index_in_vm);
        if v.weight == 0 {
            return Err(BuildError::ZeroWeight { vm, index });
        }
        let allowed = v.affinity.and(all);
        if allowed.is_empty() {
            return Err(BuildError::EmptyAffinity { vm, index });
        }
        let core = match v.reservation {
            Some(r) => {
                if r.period == Nanos::ZERO || r.budget > r.period || r.budget == Nanos::ZERO {
                    return Err(BuildError::BadReservation { vm, index });
                }
                let ppm = r.bandwidth_ppm();
                let best = allowed.iter().min_by_key(|c| (reserved[c.index()], count[c.index()])).unwrap_or(CoreId(0));
                let total = reserved[best.index()].saturating_add(ppm);
                if total > config.params.rt_bound_ppm {
                    return Err(BuildError::Admission {
                        vm,
                        index,
                        closest: AdmissionError {
                            core: best,
                            requested_ppm: ppm,
                            admitted_ppm: reserved[best.index()],
                            bound_ppm: config.params.rt_bound_ppm,
                        },
                    });
                }
                reserved[best.index()] = total;
                best
            }
            None => allowed.iter().min_by_key(|c| (count[c.index()], reserved[c.index()])).unwrap_or(CoreId(0)),
        };
        count[core.index()] += 1;
        placement[i] = core;
    }

    let infos: Vec<VcpuInfo> = config
        .vcpus
        .iter()
        .enumerate()
        .map(|(i, v)| VcpuInfo { id: VcpuId(i as u16), vm: v.vm, index_in_vm: v.index_in_vm })
        .collect();
    let initial_state = |v: &VcpuConfig| if v.starts_parked { VcpuState::Parked } else { VcpuState::Runnable };
    let owners: Vec<(CoreId, VcpuState)> =
        config.vcpus.iter().zip(&placement).map(|(v, &c)| (c, initial_state(v))).collect();
    let system = System::new(config.params, n_cores, infos, &owners);
    let mut cores: Vec<CoreRuntime> = (0..n_cores)
        .map(|c| CoreRuntime {
            core: CoreId(c),
            params: config.params,
            vcpus: Vec::with_capacity(config.vcpus.len()),
            current: None,
            last_run: None,
            min_vtime: 0,
            util: Ewma::new(start),
            online: true,
            kicks: CoreMask::NONE,
            stats: CoreStats::default(),
            scratch: Vec::with_capacity(2 * config.vcpus.len() + 4),
            deferred_moves: Vec::with_capacity(config.vcpus.len()),
            local_moves: Vec::with_capacity(config.vcpus.len()),
            slice_end: start,
            capacity: CAPACITY_SCALE,
            membership: 0,
        })
        .collect();
    for (i, v) in config.vcpus.iter().enumerate() {
        let core = placement[i];
        if let Some(r) = v.reservation {
            // Cannot fail: the placement above checked the same bound.
            let _ = system.reserve(core, r.bandwidth_ppm());
        }
        cores[core.index()].vcpus.push(Box::new(VcpuSched {
            id: VcpuId(i as u16),
            vm: v.vm,
            weight: v.weight,
            vtime_rate: vtime_rate(v.weight),
            affinity: v.affinity.and(all),
            rt: v.reservation.map(|res| RtServer {
                res,
                deadline: start + res.period,
                remaining: res.budget,
                unstarted: true,
            }),
            vtime: 0,
            util: Ewma::new(start),
            published: 0,
            state: initial_state(v),
            last_migrated: start,
            woken_at: None,
            stats: VcpuStats::default(),
        }));
    }
    Ok((system, cores))
}

impl CoreRuntime {
    pub fn core(&self) -> CoreId {
        self.core
    }
    pub fn is_online(&self) -> bool {
        self.online
    }
    /// The vCPUs this core owns (in no particular order).
    pub fn vcpus(&self) -> &[Box<VcpuSched>] {
        &self.vcpus
    }
    /// A number that changes whenever a vCPU joins or leaves [`CoreRuntime::vcpus`] (a
    /// hand-over either way), so that the platform can keep what it derives from the list (the
    /// earliest timer deadline of this core's vCPUs) until the list changes.
    pub fn membership(&self) -> u64 {
        self.membership
    }
    /// The vCPU running now, if any.
    pub fn current(&self) -> Option<VcpuId> {
        self.current.map(|c| self.vcpus[c.idx].id)
    }
    pub fn stats(&self) -> &CoreStats {
        &self.stats
    }
    /// The core's busy utilization (in [`UTIL_ONE`](crate::util::UTIL_ONE) units) as of its last update.
    pub fn utilization(&self) -> u32 {
        self.util.value()
    }
    /// Cores that must be sent an IPI because of what this core did since the last call.
    pub fn take_kicks(&mut self) -> CoreMask {
        core::mem::replace(&mut self.kicks, CoreMask::NONE)
    }

    /// Takes the vCPU at `idx` off the list, keeping `current` on the running vCPU (which
    /// `swap_remove` may move into `idx`).
    fn remove(&mut self, idx: usize) -> Box<VcpuSched> {
        let last = self.vcpus.len() - 1;
        let removed = self.vcpus.swap_remove(idx);
        self.membership += 1;
        if let Some(cur) = self.current.as_mut() {
            debug_assert_ne!(cur.idx, idx, "the running vCPU cannot be removed");
            if cur.idx == last {
                cur.idx = idx;
            }
        }
        removed
    }

    /// Undoes [`CoreRuntime::remove`] of `idx`: the list is as it was before.
    fn put_back(&mut self, idx: usize, sched: Box<VcpuSched>) {
        self.vcpus.push(sched);
        let last = self.vcpus.len() - 1;
        self.vcpus.swap(idx, last);
        self.membership += 1;
        if let Some(cur) = self.current.as_mut() {
            if cur.idx == idx && idx != last {
                cur.idx = last;
            }
        }
    }

    fn find(&self, vcpu: VcpuId) -> Option<usize> {
        self.vcpus.iter().position(|v| v.id == vcpu)
    }

    /// Feeds one event to this core. (Inlined, so that a caller passing a known event calls
    /// its handler directly.)
    #[inline(always)]
    pub fn handle(
        &mut self,
        sys: &System,
        event: Event,
        now: Instant,
        trace: &mut impl TraceSink,
    ) -> Result<(), RuntimeError> {
        match event {
            Event::Tick => {
                self.tick(sys, now);
                Ok(())
            }
            Event::Exit { vcpu, reason } => self.on_exit(sys, vcpu, reason, now, trace),
            Event::Wake { vcpu } => {
                self.wake(sys, vcpu, now, trace);
                Ok(())
            }
            Event::CoreOnline => {
                self.come_online(sys, now, trace);
                Ok(())
            }
            Event::CoreGoingOffline => self.go_offline(sys, now, trace).map_err(RuntimeError::Offline),
        }
    }

    /// Refreshes utilization and charges the running vCPU up to `now`.
    pub fn tick(&mut self, sys: &System, now: Instant) {
        if let Some(cur) = self.current {
            self.charge(sys, cur.idx, cur.since, now);
            self.current = Some(Current { since: now, ..cur });
        } else {
            self.util.advance(sys.decay, now, false);
        }
        sys.publish_core_util(self.core, self.util.value());
    }

    /// Signals an event for any vCPU; a local one is handled at once.
    pub fn wake(&mut self, sys: &System, vcpu: VcpuId, now: Instant, trace: &mut impl TraceSink) {
        if vcpu.index() >= sys.vcpu_count() {
            return;
        }
        if let Some(target) = sys.wake(vcpu) {
            if target == self.core {
                // Mail waits for the next decision: it may move vCPUs, and one may be running.
                self.take_requests(sys, now, trace);
            } else {
                self.kicks = self.kicks.with(target);
            }
        }
    }

    /// How fast the core runs: its capacity at its current operating point, out of
    /// [`CAPACITY_SCALE`] (the biggest core at its fastest). [`CAPACITY_SCALE`] until the
    /// platform says otherwise.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// The platform changed the core's speed (an operating point, docs/governor.md), between
    /// runs: from now on a vCPU's utilization counts its running time at `capacity` out of
    /// [`CAPACITY_SCALE`] (so it measures work, whatever the speed), and a reservation's budget,
    /// which is CPU time at full speed, lasts `CAPACITY_SCALE / capacity` times longer, as
    /// Linux's `SCHED_DEADLINE` scales runtime by frequency and capacity. Admission stays in
    /// bandwidth at full speed: the governor keeps every core fast enough for what it admitted.
    pub fn set_capacity(&mut self, capacity: u32) {
        debug_assert!(self.current.is_none(), "set_capacity while a vCPU is running on core {}", self.core);
        self.capacity = capacity.clamp(1, CAPACITY_SCALE);
    }

    /// Accounts run time from `since` to `now` to the vCPU at `idx`.
    // Inlined: with a second caller (`renew`) the compiler took it out of line, and the exit
    // path of every switch paid a call (`cargo xtask bench qemu`: 20 instructions a switch).
    #[inline(always)]
    fn charge(&mut self, sys: &System, idx: usize, since: Instant, now: Instant) {
        let capacity = self.capacity;
        charge_vcpu(&mut self.vcpus[idx], sys, since, now, capacity);
        self.charge_core(sys, since, now);
    }

    /// The core's part of [`CoreRuntime::charge`]: its utilization and busy time.
    #[inline(always)]
    fn charge_core(&mut self, sys: &System, since: Instant, now: Instant) {
        self.util.advance_run(sys.decay, since, now, CAPACITY_SCALE);
        self.stats.busy += now.since(since);
    }

    fn on_exit(
        &mut self,
        sys: &System,
        vcpu: VcpuId,
        reason: ExitReason,
        now: Instant,
        trace: &mut impl TraceSink,
    ) -> Result<(), RuntimeError> {
        let Some(cur) = self.current.filter(|c| c.id == vcpu) else {
            return Err(RuntimeError::NotRunning { vcpu, core: self.core });
        };
        self.current = None;
        self.charge_core(sys, cur.since, now);
        let (core, at, capacity) = (self.core, now, self.capacity);
        // One reference to the vCPU's state for its charge and its new state.
        let v = &mut *self.vcpus[cur.idx];
        charge_vcpu(v, sys, cur.since, now, capacity);
        match reason {
            ExitReason::Preempted | ExitReason::Yield => {
                sys.stop_running(vcpu);
                v.state = VcpuState::Runnable;
                if reason == ExitReason::Yield {
                    // Behind every share peer that is runnable now (reservations keep no virtual
                    // time worth comparing), and without the last runner's stickiness.
                    let mut max = 0;
                    for o in &self.vcpus {
                        if o.rt.is_none() && o.is_runnable() && o.vtime > max {
                            max = o.vtime;
                        }
                    }
                    let v = &mut self.vcpus[cur.idx];
                    v.vtime = v.vtime.max(max.saturating_add(1));
                    self.last_run = None;
                    v.stats.preemptions += 1;
                    if trace.wants_switch_events() {
                        trace.emit(TraceEvent { at, kind: TraceKind::VcpuPreempt { core, vcpu } });
                    }
                }
            }
            ExitReason::Wfi => {
                if sys.try_block(vcpu) {
                    v.state = VcpuState::Blocked;
                    self.last_run = None;
                    if trace.wants_switch_events() {
                        trace.emit(TraceEvent { at, kind: TraceKind::VcpuBlock { core, vcpu } });
                    }
                } else {
                    v.state = VcpuState::Runnable;
                }
            }
            ExitReason::PsciCpuOff => {
                sys.set_state(vcpu, VcpuState::Parked, 0);
                v.state = VcpuState::Parked;
                v.woken_at = None;
                self.last_run = None;
                trace.emit(TraceEvent { at, kind: TraceKind::VcpuPark { core, vcpu } });
            }
            ExitReason::Stop(why) => {
                sys.set_state(vcpu, VcpuState::Stopped, 0);
                v.state = VcpuState::Stopped;
                let ppm = v.ppm();
                v.rt = None;
                sys.release(core, ppm);
                self.last_run = None;
                trace.emit(TraceEvent { at, kind: TraceKind::VcpuStop { vcpu, reason: why } });
            }
        }
        Ok(())
    }

    /// A vCPU of this core became runnable at `now` (from blocked, or from parked when
    /// `powered_on`).
    fn became_runnable(&mut self, idx: usize, now: Instant, powered_on: bool, trace: &mut impl TraceSink) {
        let (core, min_vtime, credit) = (self.core, self.min_vtime, self.params.wake_credit);
        let v = &mut self.vcpus[idx];
        v.state = VcpuState::Runnable;
        v.woken_at = Some(now);
        v.stats.wakeups += 1;
        v.vtime =
            if powered_on { min_vtime } else { v.vtime.max(min_vtime.saturating_sub(to_vtime(credit, v.vtime_rate))) };
        if let Some(s) = v.rt.as_mut() {
            // Constant-bandwidth server wake-up rule: keep the current deadline only if the
            // remaining budget fits the reserved bandwidth until then.
            let left = s.deadline.since(now);
            if now >= s.deadline
                || (s.remaining.as_nanos() as u128) * (s.res.period.as_nanos() as u128)
                    > (left.as_nanos() as u128) * (s.res.budget.as_nanos() as u128)
            {
                s.deadline = now + s.res.period;
                s.remaining = s.res.budget;
            }
        }
        let vcpu = v.id;
        if powered_on || trace.wants_switch_events() {
            trace.emit(TraceEvent {
                at: now,
                kind: if powered_on {
                    TraceKind::VcpuUnpark { core, vcpu }
                } else {
                    TraceKind::VcpuWake { core, vcpu }
                },
            });
        }
    }

    /// Takes in messages and pending requests. Only between runs: a message may hand a vCPU
    /// over, which must not be the running one.
    fn poll(&mut self, sys: &System, now: Instant, trace: &mut impl TraceSink) {
        debug_assert!(self.current.is_none());
        if self.deferred_moves.is_empty() && self.local_moves.is_empty() && !sys.has_requests(self.core) {
            return;
        }
        // Until the last message the mailbox held when it was taken: one posted since sets its
        // flag again, which the next decision sees (a poster on another core kicks this one
        // too).
        while let Some((msg, more)) = sys.take_mail(self.core) {
            self.receive(sys, msg, now, trace);
            if !more {
                break;
            }
        }
        // After the mail: a vCPU on its way here may have arrived.
        self.take_local_moves(sys, now, trace);
        // Requests that overtook their vCPU go back to the mailbox for the next decision.
        // (No IPI to ourselves: the mailbox flag is seen at the next decision anyway.)
        while let Some((vcpu, dest)) = self.deferred_moves.pop() {
            let _ = sys.post(self.core, Message::MoveRequest { vcpu, dest });
        }
        self.take_requests(sys, now, trace);
    }

    /// Makes the owned vCPUs whose wake-up or power-on was requested runnable.
    fn take_requests(&mut self, sys: &System, now: Instant, trace: &mut impl TraceSink) {
        if sys.take_kick(self.core) {
            for idx in 0..self.vcpus.len() {
                let state = self.vcpus[idx].state;
                if matches!(state, VcpuState::Blocked | VcpuState::Parked) {
                    if let Some(old) = sys.consume_requests(self.vcpus[idx].id) {
                        sys.count_wakeup(self.vcpus[idx].id);
                        self.became_runnable(idx, now, old == VcpuState::Parked, trace);
                    }
                }
            }
        }
    }

    fn receive(&mut self, sys: &System, msg: Message, now: Instant, trace: &mut impl TraceSink) {
        match msg {
            Message::Arrive { sched, lag } => {
                let vcpu = sched.id;
                self.vcpus.push(sched);
                let idx = self.vcpus.len() - 1;
                self.membership += 1;
                let before = self.vcpus[idx].state;
                let after = sys.complete_handover(self.core, vcpu);
                self.vcpus[idx].vtime = if lag >= 0 {
                    self.min_vtime.saturating_add(lag as u64)
                } else {
                    self.min_vtime.saturating_sub(lag.unsigned_abs())
                };
                if after == VcpuState::Runnable && before != VcpuState::Runnable {
                    sys.count_wakeup(vcpu);
                    self.became_runnable(idx, now, before == VcpuState::Parked, trace);
                }
                if !self.online {
                    // Sent before we closed: pass it on.
                    let _ = self.evacuate(sys, idx, now, trace);
                }
            }
            Message::MoveRequest { vcpu, dest } => self.take_move_request(sys, vcpu, dest, now, trace),
        }
    }

    /// A request to hand `vcpu` over to `dest`, from the mailbox or this core's own.
    fn take_move_request(
        &mut self,
        sys: &System,
        vcpu: VcpuId,
        dest: CoreId,
        now: Instant,
        trace: &mut impl TraceSink,
    ) {
        if let Some(idx) = self.find(vcpu) {
            let _ = self.migrate_at(sys, idx, dest, now, trace);
        } else if sys.status(vcpu).owner == self.core && sys.status(vcpu).state == VcpuState::Migrating {
            // The request overtook the vCPU it names, which is on its way here: ask again once
            // it has arrived (at the next decision).
            self.deferred_moves.push((vcpu, dest));
        }
        // Otherwise it is stale (the vCPU moved on meanwhile) and dropped.
    }

    /// The moves this core asked for its own vCPUs since its last decision, in the order asked.
    /// (Out of line: the decision's common path, with none, stays as short as it was.)
    #[inline(never)]
    fn take_local_moves(&mut self, sys: &System, now: Instant, trace: &mut impl TraceSink) {
        let mut i = 0;
        while i < self.local_moves.len() {
            let (vcpu, dest) = self.local_moves[i];
            i += 1;
            self.take_move_request(sys, vcpu, dest, now, trace);
        }
        self.local_moves.clear();
    }

    /// Asks for `vcpu` to be handed over to `dest`, as [`System::request_move`] does, from this
    /// core: a vCPU this core owns is handed over at its next decision without a message
    /// through its own mailbox (the governor's moves of the boot core's vCPUs, a guest's
    /// `HV_BENCH_MOVE`); any other goes to its owner's mailbox. Returns the core to kick (this
    /// one: its running vCPU, if it is the one, must come back to the runtime first).
    pub fn request_move(&mut self, sys: &System, vcpu: VcpuId, dest: CoreId) -> Result<CoreId, MoveError> {
        let owner = sys.move_owner(vcpu, dest)?;
        if owner != self.core {
            return sys.post_move(owner, vcpu, dest);
        }
        if self.local_moves.len() == self.local_moves.capacity() {
            return Err(MoveError::Busy(vcpu));
        }
        self.local_moves.push((vcpu, dest));
        Ok(self.core)
    }

    /// Hands a vCPU this core owns over to `dest`. Called between runs.
    pub fn migrate(
        &mut self,
        sys: &System,
        vcpu: VcpuId,
        dest: CoreId,
        now: Instant,
        trace: &mut impl TraceSink,
    ) -> Result<(), MoveError> {
        let idx = self.find(vcpu).ok_or(MoveError::NotOwned { vcpu, core: self.core })?;
        self.migrate_at(sys, idx, dest, now, trace)
    }

    /// [`CoreRuntime::migrate`] of the vCPU at `idx` of this core's list.
    #[inline(always)]
    fn migrate_at(
        &mut self,
        sys: &System,
        idx: usize,
        dest: CoreId,
        now: Instant,
        trace: &mut impl TraceSink,
    ) -> Result<(), MoveError> {
        let vcpu = self.vcpus[idx].id;
        if dest.index() >= sys.core_count() {
            return Err(MoveError::NoSuchCore(dest));
        }
        if dest == self.core {
            return Ok(());
        }
        if self.current.is_some_and(|c| c.idx == idx) {
            return Err(MoveError::Running(vcpu));
        }
        let v = &self.vcpus[idx];
        if v.state == VcpuState::Stopped {
            return Err(MoveError::Stopped(vcpu));
        }
        if !v.affinity.contains(dest) {
            return Err(MoveError::Affinity { vcpu, dest });
        }
        if !sys.online_cores().contains(dest) {
            return Err(MoveError::CoreOffline(dest));
        }
        let ppm = v.ppm();
        if ppm > 0 {
            sys.reserve(dest, ppm).map_err(MoveError::Admission)?;
        }
        // Its virtual time relative to this core's, at most a slice ahead and a wake-up's credit
        // behind (each far below i64's range).
        let lag = if v.vtime >= self.min_vtime {
            (v.vtime - self.min_vtime).min(to_vtime(self.params.timeslice, v.vtime_rate)) as i64
        } else {
            -((self.min_vtime - v.vtime).min(to_vtime(self.params.wake_credit, v.vtime_rate)) as i64)
        };
        sys.begin_handover(vcpu, self.core, dest);
        // Off the list and into the message (a pointer moves), as the receiver will take it;
        // put back as it was if the message cannot be posted.
        let mut sched = self.remove(idx);
        let (last_migrated, woken_at) = (sched.last_migrated, sched.woken_at);
        sched.last_migrated = now;
        sched.stats.migrations += 1;
        sched.woken_at = woken_at.map(|_| now);
        if let Err((e, msg)) = sys.post(dest, Message::Arrive { sched, lag }) {
            sys.abort_handover(vcpu, self.core);
            if let Message::Arrive { mut sched, .. } = msg {
                sched.last_migrated = last_migrated;
                sched.stats.migrations -= 1;
                sched.woken_at = woken_at;
                self.put_back(idx, sched);
            }
            if ppm > 0 {
                sys.release(dest, ppm);
            }
            return Err(match e {
                PostError::Closed => MoveError::CoreOffline(dest),
                PostError::Full => MoveError::Busy(vcpu),
            });
        }
        if ppm > 0 {
            sys.release(self.core, ppm);
        }
        if self.last_run == Some(vcpu) {
            self.last_run = None;
        }
        self.kicks = self.kicks.with(dest);
        trace.emit(TraceEvent { at: now, kind: TraceKind::VcpuMigrate { vcpu, from: self.core, to: dest } });
        Ok(())
    }

    /// Moves the vCPU at `idx` to the least-utilized online core it may run on.
    fn evacuate(
        &mut self,
        sys: &System,
        idx: usize,
        now: Instant,
        trace: &mut impl TraceSink,
    ) -> Result<(), MoveError> {
        let (id, affinity) = (self.vcpus[idx].id, self.vcpus[idx].affinity);
        let candidates = affinity.and(sys.online_cores()).without(self.core);
        let mut last_err = MoveError::Affinity { vcpu: id, dest: self.core };
        // Least-utilized candidate first; no sorting into a vector, so no allocation.
        let mut left = candidates;
        while let Some(dest) = left.iter().min_by_key(|&c| (sys.core_utilization(c), sys.reserved_ppm(c), c)) {
            left = left.without(dest);
            match self.migrate(sys, id, dest, now, trace) {
                Ok(()) => return Ok(()),
                Err(e) => last_err = e,
            }
        }
        Err(last_err)
    }

    /// Starts taking this core offline: hands every vCPU to other online cores. On success the
    /// next decision is [`Decision::PowerOff`]; on failure the core stays online, and vCPUs
    /// already moved stay where they went.
    pub fn go_offline(&mut self, sys: &System, now: Instant, trace: &mut impl TraceSink) -> Result<(), OfflineError> {
        if self.current.is_some() {
            return Err(OfflineError::Busy);
        }
        if !self.online {
            return Ok(());
        }
        if sys.online_cores().without(self.core).is_empty() {
            return Err(OfflineError::LastCore);
        }
        trace.emit(TraceEvent { at: now, kind: TraceKind::CoreState { core: self.core, state: CoreState::Draining } });
        // No new hand-overs choose us from here on...
        sys.set_online(self.core, false);
        self.online = false;
        // ...and none can be posted once the mailbox is closed; take in what is queued.
        // Into the preallocated scratch list: the handling may post to other mailboxes, which
        // must not happen under our own mailbox's lock.
        let mut queued = core::mem::take(&mut self.scratch);
        sys.close_mailbox(self.core, |m| queued.push(m));
        for m in queued.drain(..) {
            self.receive(sys, m, now, trace);
        }
        self.scratch = queued;
        self.take_local_moves(sys, now, trace);
        let mut idx = 0;
        while idx < self.vcpus.len() {
            if self.vcpus[idx].state == VcpuState::Stopped {
                idx += 1;
                continue;
            }
            if let Err(reason) = self.evacuate(sys, idx, now, trace) {
                let vcpu = self.vcpus[idx].id;
                // Back online, keeping the utilization history: the core never went off.
                let util = self.util;
                self.come_online(sys, now, trace);
                self.util = util;
                return Err(OfflineError::CannotMove { vcpu, reason });
            }
        }
        self.util.advance(sys.decay, now, false);
        sys.publish_core_util(self.core, 0);
        Ok(())
    }

    fn come_online(&mut self, sys: &System, now: Instant, trace: &mut impl TraceSink) {
        if self.online {
            return;
        }
        self.online = true;
        self.util = Ewma::new(now);
        sys.open_mailbox(self.core);
        sys.set_online(self.core, true);
        trace.emit(TraceEvent { at: now, kind: TraceKind::CoreState { core: self.core, state: CoreState::Online } });
    }

    /// The running vCPU's run reached the `until` of its [`Decision::Run`] with nothing else
    /// for the core to do: when `next` would pick it again at once for a fresh slice (a share
    /// vCPU, alone runnable on a core without reservations, no mail, wake-up or move waiting,
    /// its slice over), charges the run and starts the new one without it leaving the core,
    /// and returns the new run's end; the same bookkeeping as `Exit { Preempted }` then
    /// `next()`, without the state word's two changes, the pass over the vCPUs that finds
    /// nothing else, or the platform's exit from and re-entry into its guest. `None`
    /// otherwise: the platform ends the run as usual.
    pub fn renew(&mut self, sys: &System, now: Instant) -> Option<Instant> {
        let cur = self.current?;
        if !self.online
            || now < self.slice_end
            || !self.deferred_moves.is_empty()
            || !self.local_moves.is_empty()
            || sys.has_requests(self.core)
        {
            return None;
        }
        for (i, v) in self.vcpus.iter().enumerate() {
            if v.rt.is_some() || (i != cur.idx && v.state == VcpuState::Runnable) {
                return None;
            }
        }
        self.stats.decisions += 1;
        self.charge(sys, cur.idx, cur.since, now);
        let v = &mut self.vcpus[cur.idx];
        self.min_vtime = self.min_vtime.max(v.vtime);
        v.stats.runs += 1;
        self.slice_end = now + self.params.timeslice;
        self.current = Some(Current { since: now, ..cur });
        Some(self.slice_end)
    }

    /// The running `vcpu` yields (`HV_YIELD`, or a WFE with others runnable) and another
    /// share vCPU of this core is runnable, with no reservation on the core and no mail,
    /// wake-up or move waiting: takes the exit and decides in one pass, and returns the vCPU
    /// to run next (never `vcpu`) and until when. The same bookkeeping as `Exit { Yield }`
    /// then `next()` (tested side by side), without the exit's and the decision's separate
    /// passes over the vCPUs, and from the platform without a return to its core loop
    /// (docs/platform.md, *A yield's switch*). `None`, having changed nothing, when
    /// `next()` could decide differently than picking the least-served runnable peer: the
    /// platform then takes the exit as usual.
    #[inline(always)]
    pub fn switch_on_yield(
        &mut self,
        sys: &System,
        vcpu: VcpuId,
        now: Instant,
        trace: &mut impl TraceSink,
    ) -> Option<(VcpuId, Instant)> {
        let cur = self.current.filter(|c| c.id == vcpu)?;
        if !self.online
            || !self.deferred_moves.is_empty()
            || !self.local_moves.is_empty()
            || sys.has_requests(self.core)
        {
            return None;
        }
        // The peers: the latest virtual time (the yielder goes behind it) and the pick, the
        // first with the least (as `next()` finds it: the yielder, behind them all, is not it).
        let (mut peers_max, mut best, mut pick) = (0, u64::MAX, None);
        for (i, v) in self.vcpus.iter().enumerate() {
            if v.rt.is_some() {
                return None;
            }
            // A peer (the yielder is `Running`).
            if v.state == VcpuState::Runnable {
                peers_max = peers_max.max(v.vtime);
                if v.vtime < best {
                    (best, pick) = (v.vtime, Some(i));
                }
            }
        }
        let pick = pick?;
        let core = self.core;
        let switch_events = trace.wants_switch_events();
        // The exit (`on_exit`, `Yield`), on one reference to the yielder.
        self.current = None;
        let capacity = self.capacity;
        let v = &mut *self.vcpus[cur.idx];
        charge_vcpu(v, sys, cur.since, now, capacity);
        sys.stop_running(vcpu);
        v.state = VcpuState::Runnable;
        v.vtime = v.vtime.max(peers_max).saturating_add(1);
        v.stats.preemptions += 1;
        self.charge_core(sys, cur.since, now);
        if switch_events {
            trace.emit(TraceEvent { at: now, kind: TraceKind::VcpuPreempt { core, vcpu } });
        }
        // The decision (`next`): a fresh slice, as the yield cleared the last runner.
        self.stats.decisions += 1;
        self.min_vtime = self.min_vtime.max(best);
        let until = now + self.params.timeslice;
        self.slice_end = until;
        let next = self.start_run(sys, pick, now);
        self.stats.switches += 1;
        if switch_events {
            trace.emit(TraceEvent { at: now, kind: TraceKind::VcpuRun { core, vcpu: next } });
        }
        self.last_run = Some(next);
        self.current = Some(Current { idx: pick, since: now, id: next });
        Some((next, until))
    }

    /// The picked vCPU at `idx` starts running at `now`: its state word and its own state, its
    /// run and its wake-up latency counted. Returns it.
    #[inline(always)]
    fn start_run(&mut self, sys: &System, idx: usize, now: Instant) -> VcpuId {
        let v = &mut *self.vcpus[idx];
        sys.start_running(self.core, v.id);
        v.state = VcpuState::Running;
        v.stats.runs += 1;
        if let Some(w) = v.woken_at.take() {
            let lat = now.since(w);
            v.stats.wake_latency_total += lat;
            v.stats.wake_latency_max = v.stats.wake_latency_max.max(lat);
        }
        v.id
    }

    /// Decides what the core does next. Takes in mail and wake-ups first.
    pub fn next(&mut self, sys: &System, now: Instant, trace: &mut impl TraceSink) -> Decision {
        debug_assert!(self.current.is_none(), "next() while a vCPU is running on core {}", self.core);
        self.stats.decisions += 1;
        self.poll(sys, now, trace);
        if !self.online {
            trace.emit(TraceEvent { at: now, kind: TraceKind::CoreState { core: self.core, state: CoreState::Off } });
            return Decision::PowerOff;
        }
        // One pass: replenish throttled servers whose time has come, note the next such
        // replenishment, and find the earliest-deadline server with budget and the share vCPU
        // with the least virtual time.
        let mut next_replenish: Option<Instant> = None;
        let mut pick: Option<usize> = None;
        let mut best_deadline = Instant::NEVER;
        let mut best_vtime = u64::MAX;
        let mut share_pick: Option<usize> = None;
        for (i, v) in self.vcpus.iter_mut().enumerate() {
            if let Some(s) = v.rt.as_mut() {
                if core::mem::take(&mut s.unstarted) && v.state == VcpuState::Runnable {
                    s.deadline = now + s.res.period;
                    s.remaining = s.res.budget;
                }
                if v.state == VcpuState::Runnable && s.remaining > Nanos::ZERO && s.deadline <= now {
                    // Runnable with budget left at its deadline: the period is lost. Counted,
                    // and the server starts afresh from now (as SCHED_DEADLINE does with a
                    // late entity), so the loss is counted once.
                    v.stats.reservation_misses += 1;
                    let late = now.since(s.deadline);
                    trace.emit(TraceEvent {
                        at: now,
                        kind: TraceKind::DeadlineMiss { vcpu: v.id, deadline: s.deadline, late },
                    });
                    s.deadline = now + s.res.period;
                    s.remaining = s.res.budget;
                }
                if s.remaining == Nanos::ZERO {
                    if s.deadline <= now {
                        s.remaining = s.res.budget;
                        let next = s.deadline + s.res.period;
                        s.deadline = if next > now { next } else { now + s.res.period };
                    } else if v.state == VcpuState::Runnable {
                        next_replenish = Some(next_replenish.map_or(s.deadline, |n| n.min(s.deadline)));
                        continue;
                    }
                }
                if v.state == VcpuState::Runnable && s.deadline < best_deadline {
                    best_deadline = s.deadline;
                    pick = Some(i);
                }
            } else if v.state == VcpuState::Runnable && v.vtime < best_vtime {
                best_vtime = v.vtime;
                share_pick = Some(i);
            }
        }
        let until;
        if let Some(i) = pick {
            let remaining = self.vcpus[i].rt.map_or(Nanos::ZERO, |s| s.remaining);
            let lasts = time_for_work(remaining, self.capacity);
            until = next_replenish.map_or(now + lasts, |r| r.min(now + lasts));
        } else if let Some(mut i) = share_pick {
            self.min_vtime = self.min_vtime.max(best_vtime);
            // The vCPU that ran last keeps the core, for the rest of its slice, while it is less
            // than the granularity ahead; otherwise the pick gets a fresh slice.
            let mut end = now + self.params.timeslice;
            // (Looked for only within its slice: a yield, a block or a slice's end clears or
            // outlives it, so the common switch does not search.)
            let last_idx = match self.last_run {
                Some(id) if now < self.slice_end => {
                    self.vcpus.iter().position(|v| v.id == id && v.rt.is_none() && v.state == VcpuState::Runnable)
                }
                _ => None,
            };
            if let Some(l) = last_idx {
                let lv = &self.vcpus[l];
                if lv.vtime <= best_vtime.saturating_add(to_vtime(self.params.min_granularity, lv.vtime_rate)) {
                    i = l;
                    end = self.slice_end;
                }
            }
            self.slice_end = end;
            pick = Some(i);
            until = next_replenish.map_or(end, |r| r.min(end));
        } else {
            self.util.advance(sys.decay, now, false);
            // The vCPU that ran last is runnable but throttled (its budget is spent until its
            // replenishment): it leaves the core now, and its next run is a new one.
            if let Some(prev) = self.last_run.take() {
                if let Some(p) = self.vcpus.iter_mut().find(|p| p.id == prev && p.state == VcpuState::Runnable) {
                    p.stats.preemptions += 1;
                    if trace.wants_switch_events() {
                        trace
                            .emit(TraceEvent { at: now, kind: TraceKind::VcpuPreempt { core: self.core, vcpu: prev } });
                    }
                }
            }
            return Decision::Idle { until: next_replenish };
        }
        let idx = pick.unwrap_or(0);
        // The time until now, idle for the core and for the vCPU, goes into their averages
        // with the run (`charge`, from `since`).
        let core = self.core;
        let vcpu = self.start_run(sys, idx, now);
        if self.last_run != Some(vcpu) {
            if let Some(prev) = self.last_run {
                if let Some(p) = self.vcpus.iter_mut().find(|p| p.id == prev && p.state == VcpuState::Runnable) {
                    p.stats.preemptions += 1;
                    if trace.wants_switch_events() {
                        trace.emit(TraceEvent { at: now, kind: TraceKind::VcpuPreempt { core, vcpu: prev } });
                    }
                }
            }
            self.stats.switches += 1;
            if trace.wants_switch_events() {
                trace.emit(TraceEvent { at: now, kind: TraceKind::VcpuRun { core, vcpu } });
            }
            self.last_run = Some(vcpu);
        }
        self.current = Some(Current { idx, since: now, id: vcpu });
        Decision::Run { vcpu, until }
    }

    /// Admits (or with `None` removes) a real-time reservation for a vCPU this core owns.
    pub fn set_reservation(
        &mut self,
        sys: &System,
        vcpu: VcpuId,
        reservation: Option<Reservation>,
        now: Instant,
        trace: &mut impl TraceSink,
    ) -> Result<(), SetReservationError> {
        let idx = self.find(vcpu).ok_or(SetReservationError::NotOwned { vcpu, core: self.core })?;
        if self.vcpus[idx].state == VcpuState::Stopped {
            return Err(SetReservationError::Stopped(vcpu));
        }
        let old_ppm = self.vcpus[idx].ppm();
        if let Some(r) = reservation {
            if r.period == Nanos::ZERO || r.budget == Nanos::ZERO || r.budget > r.period {
                return Err(SetReservationError::Invalid);
            }
            // One atomic step, so a concurrent admission on this core cannot slip in between.
            let admitted = sys.reserve_replacing(self.core, old_ppm, r.bandwidth_ppm());
            let (core, budget, period) = (self.core, r.budget, r.period);
            trace.emit(TraceEvent {
                at: now,
                kind: TraceKind::Reservation { core, vcpu, budget, period, admitted: admitted.is_ok() },
            });
            admitted.map_err(SetReservationError::Admission)?;
            self.vcpus[idx].rt =
                Some(RtServer { res: r, deadline: now + r.period, remaining: r.budget, unstarted: false });
        } else {
            sys.release(self.core, old_ppm);
            self.vcpus[idx].rt = None;
            self.vcpus[idx].vtime = self.min_vtime;
        }
        Ok(())
    }
}

/// Why a reservation was not set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetReservationError {
    NotOwned {
        vcpu: VcpuId,
        core: CoreId,
    },
    Stopped(VcpuId),
    /// Zero period or budget, or a budget over the period.
    Invalid,
    Admission(AdmissionError),
}

impl core::fmt::Display for SetReservationError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SetReservationError::NotOwned { vcpu, core } => write!(f, "vCPU {vcpu} is not owned by core {core}"),
            SetReservationError::Stopped(v) => write!(f, "vCPU {v} has stopped"),
            SetReservationError::Invalid => {
                write!(f, "a reservation needs a non-zero budget no larger than its non-zero period")
            }
            SetReservationError::Admission(e) => write!(f, "{e}"),
        }
    }
}

#[cfg(test)]
#[path = "sched_tests.rs"]
mod tests;
