//! Scenarios of the runtime's cross-core protocol, written once and run three ways:
//!
//! * under loom (`RUSTFLAGS="--cfg loom"`, `tests/loom.rs`), which explores the interleavings;
//! * with plain std threads, many times (`tests/scenarios.rs`);
//! * sequentially, the threads' bodies run one after another in every order
//!   (`tests/scenarios.rs`), which checks the plain logic of every scenario deterministically.
//!
//! A scenario builds a system, drives it to its starting point on the calling thread, hands
//! its thread bodies to a [`Runner`], then drains every core on the calling thread and checks
//! the invariants of the protocol (a failed check panics):
//! * every vCPU is in exactly one core's [`CoreRuntime::vcpus`] list and its state word names that
//!   core as its owner (nothing lost, nothing duplicated, nothing left in flight);
//! * no vCPU is ever entered by two cores at once ([`RunCells`]);
//! * no request is lost: a woken or powered-on vCPU runs at its owner's next decision.
//!
//! A scenario returns a few facts about the execution (which thread won a race, whether a core
//! got to run the vCPU inside the threads): the tests check that the runs together reached
//! every interesting case, so that a model cannot pass by never exercising the race it is
//! about.
//!
//! Thread counts stay within loom's limit of 5 including the main thread.

use vcpu_runtime::{
    build, CoreId, CoreMask, CoreRuntime, Decision, Event, ExitReason, Instant, MoveError, PowerOnError, RuntimeConfig,
    RuntimeError, SchedParams, Signal, System, VcpuConfig, VcpuId, VcpuState, VmId,
};

/// The primitives of the thread bodies: loom's under `cfg(loom)`, std's otherwise.
pub mod shim {
    #[cfg(loom)]
    pub use loom::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };
    #[cfg(not(loom))]
    pub use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };
}

use shim::{Arc, AtomicUsize, Ordering};

/// What a thread body hands back for the final checks.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The core runtime the body drove, returned to the main thread.
    pub core: Option<CoreRuntime>,
    pub migrate: Option<Result<(), MoveError>>,
    pub offline: Option<Result<(), RuntimeError>>,
    pub power_on: Option<Result<CoreId, PowerOnError>>,
    /// The core a wake-up asked to kick.
    pub kick: Option<CoreId>,
    /// vCPUs the body's core entered, in order.
    pub runs: Vec<VcpuId>,
    /// What `System::signal` found.
    pub signal: Option<Signal>,
    /// Whether the body's core, entering a vCPU, saw the event published for it.
    pub saw_event: Option<bool>,
}

/// One thread's work.
pub type Body = Box<dyn FnOnce() -> Outcome + Send + 'static>;

/// Runs a scenario's thread bodies and returns their outcomes in the order of `bodies`.
pub trait Runner {
    fn run(&self, bodies: Vec<Body>) -> Vec<Outcome>;
}

/// Each body on its own loom thread (call inside `loom::model`).
#[cfg(loom)]
pub struct Loom;

#[cfg(loom)]
impl Runner for Loom {
    fn run(&self, bodies: Vec<Body>) -> Vec<Outcome> {
        assert!(bodies.len() <= 4, "loom allows at most 5 threads including the main thread");
        let handles: Vec<_> = bodies.into_iter().map(loom::thread::spawn).collect();
        handles.into_iter().map(|h| h.join().expect("a model thread panicked")).collect()
    }
}

/// Each body on its own std thread.
#[cfg(not(loom))]
pub struct StdThreads;

#[cfg(not(loom))]
impl Runner for StdThreads {
    fn run(&self, bodies: Vec<Body>) -> Vec<Outcome> {
        let handles: Vec<_> = bodies.into_iter().map(std::thread::spawn).collect();
        handles.into_iter().map(|h| h.join().expect("a scenario thread panicked")).collect()
    }
}

/// The bodies one after another on the calling thread, in the order given (a permutation of
/// the body indices).
#[cfg(not(loom))]
pub struct Sequential(pub Vec<usize>);

#[cfg(not(loom))]
impl Runner for Sequential {
    fn run(&self, bodies: Vec<Body>) -> Vec<Outcome> {
        assert_eq!(self.0.len(), bodies.len(), "the order must name every body once");
        let mut slots: Vec<Option<Body>> = bodies.into_iter().map(Some).collect();
        let mut outcomes: Vec<Option<Outcome>> = slots.iter().map(|_| None).collect();
        for &i in &self.0 {
            let body = slots[i].take().expect("the order names a body twice");
            outcomes[i] = Some(body());
        }
        outcomes.into_iter().map(|o| o.expect("every body ran")).collect()
    }
}

/// Every order of `n` items (n! of them).
pub fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![Vec::new()];
    }
    let mut out = Vec::new();
    for rest in permutations(n - 1) {
        for at in 0..=rest.len() {
            let mut p = rest.clone();
            p.insert(at, n - 1);
            out.push(p);
        }
    }
    out
}

/// Per vCPU, the core that has entered it (core index + 1) or 0: a core that is handed a
/// vCPU another core is still running trips [`RunCells::enter`].
pub struct RunCells(Vec<AtomicUsize>);

impl RunCells {
    pub fn new(vcpus: usize) -> RunCells {
        RunCells((0..vcpus).map(|_| AtomicUsize::new(0)).collect())
    }
    pub fn enter(&self, core: CoreId, vcpu: VcpuId) {
        let me = core.index() + 1;
        if let Err(other) = self.0[vcpu.index()].compare_exchange(0, me, Ordering::SeqCst, Ordering::SeqCst) {
            panic!("core {core} entered vCPU {vcpu} while core {} was running it", other - 1);
        }
    }
    pub fn leave(&self, core: CoreId, vcpu: VcpuId) {
        let was = self.0[vcpu.index()].swap(0, Ordering::SeqCst);
        assert_eq!(was, core.index() + 1, "core {core} left vCPU {vcpu}, which it was not running");
    }
}

/// The time every scenario runs at: the protocol does not depend on it.
pub const NOW: Instant = Instant(1_000_000);

/// A share vCPU of VM 0 that may run on `affinity`.
pub fn vcpu(index: u16, affinity: CoreMask, starts_parked: bool) -> VcpuConfig {
    VcpuConfig { vm: VmId(0), index_in_vm: index, weight: 256, reservation: None, affinity, starts_parked }
}

/// Builds a system of `cores` cores and the given vCPUs.
pub fn system(cores: u16, vcpus: Vec<VcpuConfig>) -> (Arc<System>, Vec<CoreRuntime>) {
    let config = RuntimeConfig { cores, params: SchedParams::default(), vcpus };
    let (sys, runtimes) = build(&config, Instant::ZERO).expect("the scenario's system builds");
    (Arc::new(sys), runtimes)
}

/// The core that owns `vcpu` according to the cores' lists; panics unless exactly one does.
pub fn owner_of(cores: &[CoreRuntime], vcpu: VcpuId) -> CoreId {
    let owners: Vec<CoreId> =
        cores.iter().filter(|c| c.vcpus().iter().any(|v| v.id() == vcpu)).map(|c| c.core()).collect();
    assert_eq!(owners.len(), 1, "vCPU {vcpu} is in the lists of cores {owners:?}, not exactly one");
    owners[0]
}

/// Checks that every vCPU is in exactly one list, once, and that its state word agrees (same
/// owner, not in flight, same state as the owner's copy).
pub fn check_ownership(sys: &System, cores: &[CoreRuntime]) {
    for c in cores {
        let mut ids: Vec<VcpuId> = c.vcpus().iter().map(|v| v.id()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), c.vcpus().len(), "core {} lists a vCPU twice", c.core());
    }
    for i in 0..sys.vcpu_count() {
        let v = VcpuId(i as u16);
        let owner = owner_of(cores, v);
        let status = sys.status(v);
        assert_eq!(
            status.owner, owner,
            "vCPU {v}: the state word names core {} but core {owner} lists it",
            status.owner
        );
        assert_ne!(status.state, VcpuState::Migrating, "vCPU {v} is still in flight after the cores drained");
        let local = cores[owner.index()].vcpus().iter().find(|s| s.id() == v).map(|s| s.state());
        assert_eq!(local, Some(status.state), "vCPU {v}: core {owner}'s copy of the state disagrees with the word");
    }
}

/// One decision of `core`: if it runs a vCPU, the vCPU is entered (checked against `cells`)
/// and comes straight back preempted. Returns the decision.
pub fn step(sys: &System, core: &mut CoreRuntime, cells: &RunCells, runs: &mut Vec<VcpuId>) -> Decision {
    let decision = core.next(sys, NOW, &mut ());
    if let Decision::Run { vcpu, .. } = decision {
        cells.enter(core.core(), vcpu);
        runs.push(vcpu);
        cells.leave(core.core(), vcpu);
        core.handle(sys, Event::Exit { vcpu, reason: ExitReason::Preempted }, NOW, &mut ())
            .expect("the core reports the exit of the vCPU it runs");
    }
    decision
}

/// After the threads: lets every core take in its mail and requests, in rounds, so that a
/// vCPU passed on twice (handed to a core that then evacuates it) settles.
pub fn drain(sys: &System, cores: &mut [CoreRuntime], cells: &RunCells) {
    for _ in 0..3 {
        for c in cores.iter_mut() {
            step(sys, c, cells, &mut Vec::new());
        }
    }
}

/// The owner's next decision must run `vcpu` (it is runnable and alone on its core, or the
/// only runnable one there): a wake-up or power-on was not lost.
pub fn assert_runs_next(sys: &System, cores: &mut [CoreRuntime], vcpu: VcpuId) {
    let owner = owner_of(cores, vcpu);
    let core = &mut cores[owner.index()];
    let decision = core.next(sys, NOW, &mut ());
    match decision {
        Decision::Run { vcpu: v, .. } if v == vcpu => {
            core.handle(sys, Event::Exit { vcpu, reason: ExitReason::Preempted }, NOW, &mut ()).expect("exit");
        }
        other => panic!(
            "vCPU {vcpu} should run on its owner core {owner} but the core decided {other:?}; status {:?}",
            sys.status(vcpu)
        ),
    }
}

fn kicked(kick: Option<CoreId>) -> String {
    format!("wake kicked {kick:?}")
}

fn ran_in_thread(runs: &[VcpuId]) -> String {
    format!("ran in a thread: {}", !runs.is_empty())
}

fn take_core(outcome: &mut Outcome) -> CoreRuntime {
    outcome.core.take().expect("the body hands its core back")
}

/// Sets up a vCPU that is blocked on `core`: runs it, then reports a WFI exit.
fn block_on(sys: &System, core: &mut CoreRuntime, vcpu: VcpuId) {
    assert!(matches!(core.next(sys, NOW, &mut ()), Decision::Run { vcpu: v, .. } if v == vcpu));
    core.handle(sys, Event::Exit { vcpu, reason: ExitReason::Wfi }, NOW, &mut ()).expect("WFI exit");
    assert_eq!(sys.status(vcpu).state, VcpuState::Blocked);
}

const V0: VcpuId = VcpuId(0);
const V1: VcpuId = VcpuId(1);
const V2: VcpuId = VcpuId(2);
const C0: CoreId = CoreId(0);
const C1: CoreId = CoreId(1);
const C2: CoreId = CoreId(2);

/// Model 1: core 0 hands a blocked vCPU to core 1 while core 1 decides (and runs whatever it
/// gets) and a third party wakes the vCPU. The vCPU ends on core 1, ran on one core at a time,
/// and the wake-up is not lost.
pub fn handover_while_waking(runner: &dyn Runner) -> Vec<String> {
    let (sys, mut cores) = system(2, vec![vcpu(0, CoreMask::ALL, false)]);
    assert_eq!(owner_of(&cores, V0), C0);
    block_on(&sys, &mut cores[0], V0);
    let cells = Arc::new(RunCells::new(1));

    let mut core1 = cores.pop().expect("core 1");
    let mut core0 = cores.pop().expect("core 0");
    let (s0, s1, s2, cells1) = (sys.clone(), sys.clone(), sys.clone(), cells.clone());
    let bodies: Vec<Body> = vec![
        Box::new(move || {
            let migrate = Some(core0.migrate(&s0, V0, C1, NOW, &mut ()));
            Outcome { core: Some(core0), migrate, ..Outcome::default() }
        }),
        Box::new(move || {
            let mut runs = Vec::new();
            for _ in 0..2 {
                step(&s1, &mut core1, &cells1, &mut runs);
            }
            Outcome { core: Some(core1), runs, ..Outcome::default() }
        }),
        Box::new(move || Outcome { kick: s2.wake(V0), ..Outcome::default() }),
    ];
    let mut out = runner.run(bodies);

    assert_eq!(out[0].migrate, Some(Ok(())), "core 1 is online with an open mailbox: the hand-over succeeds");
    let mut cores = vec![take_core(&mut out[0]), take_core(&mut out[1])];
    drain(&sys, &mut cores, &cells);
    check_ownership(&sys, &cores);
    assert_eq!(owner_of(&cores, V0), C1);
    assert_runs_next(&sys, &mut cores, V0);
    vec![kicked(out[2].kick), ran_in_thread(&out[1].runs)]
}

/// Model 12: an interrupt for a runnable vCPU (the event published, then `System::signal`,
/// as the hypervisor's `Core::dispatch` bumps the vCPU's interrupt epoch and then signals it)
/// while its core starts running it and, entering it, reads the event (the epoch at
/// `vgic_enter`). Either the signal finds the vCPU running, and the platform kicks its core, or
/// the core sees the event: an IPI is never left unseen.
pub fn signal_vs_start(runner: &dyn Runner) -> Vec<String> {
    let (sys, mut cores) = system(1, vec![vcpu(0, CoreMask::ALL, false)]);
    let event = Arc::new(AtomicUsize::new(0));
    let mut core0 = cores.pop().expect("core 0");
    let (s0, s1, e0, e1) = (sys.clone(), sys.clone(), event.clone(), event.clone());
    let bodies: Vec<Body> = vec![
        Box::new(move || {
            let decision = core0.next(&s0, NOW, &mut ());
            let saw_event = matches!(decision, Decision::Run { vcpu: V0, .. }).then(|| e0.load(Ordering::Acquire) != 0);
            Outcome { core: Some(core0), saw_event, ..Outcome::default() }
        }),
        Box::new(move || {
            e1.fetch_add(1, Ordering::AcqRel);
            Outcome { signal: Some(s1.signal(V0)), ..Outcome::default() }
        }),
    ];
    let out = runner.run(bodies);
    let signal = out[1].signal.expect("the sender signalled");
    let saw = out[0].saw_event.expect("core 0 runs its only runnable vCPU");
    assert!(signal == Signal::Running(C0) || saw, "signal {signal:?} and the core entered without seeing the event");
    vec![format!("signal {signal:?}"), format!("saw the event at entry: {saw}")]
}

/// Model 2: the running vCPU executes WFI on its core while another thread wakes it. The core
/// decides once more concurrently; afterwards the vCPU is not left blocked with the wake-up
/// consumed.
pub fn wake_vs_block(runner: &dyn Runner) -> Vec<String> {
    let (sys, mut cores) = system(1, vec![vcpu(0, CoreMask::ALL, false)]);
    assert!(matches!(cores[0].next(&sys, NOW, &mut ()), Decision::Run { vcpu: V0, .. }));
    let cells = Arc::new(RunCells::new(1));
    cells.enter(C0, V0);

    let mut core0 = cores.pop().expect("core 0");
    let (s0, s1, cells0) = (sys.clone(), sys.clone(), cells.clone());
    let bodies: Vec<Body> = vec![
        Box::new(move || {
            cells0.leave(C0, V0);
            core0.handle(&s0, Event::Exit { vcpu: V0, reason: ExitReason::Wfi }, NOW, &mut ()).expect("WFI exit");
            let mut runs = Vec::new();
            step(&s0, &mut core0, &cells0, &mut runs);
            Outcome { core: Some(core0), runs, ..Outcome::default() }
        }),
        Box::new(move || Outcome { kick: s1.wake(V0), ..Outcome::default() }),
    ];
    let mut out = runner.run(bodies);

    let mut cores = vec![take_core(&mut out[0])];
    check_ownership(&sys, &cores);
    assert_ne!(
        (sys.status(V0).state, sys.status(V0).wake_pending),
        (VcpuState::Blocked, false),
        "the wake-up was consumed but the vCPU is blocked"
    );
    assert_runs_next(&sys, &mut cores, V0);
    vec![kicked(out[1].kick), ran_in_thread(&out[0].runs)]
}

/// Model 3: two cores hand a vCPU each to core 2 through its mailbox while core 2 decides.
/// Every vCPU ends in exactly one list, none lost.
pub fn mailbox_two_senders(runner: &dyn Runner) -> Vec<String> {
    let zero_two = CoreMask::single(C0).with(C2);
    let one_two = CoreMask::single(C1).with(C2);
    let (sys, cores) =
        system(3, vec![vcpu(0, zero_two, false), vcpu(1, CoreMask::single(C0), false), vcpu(2, one_two, false)]);
    assert_eq!([owner_of(&cores, V0), owner_of(&cores, V1), owner_of(&cores, V2)], [C0, C0, C1]);
    let cells = Arc::new(RunCells::new(3));

    let mut it = cores.into_iter();
    let (mut core0, mut core1, mut core2) = (it.next().expect("0"), it.next().expect("1"), it.next().expect("2"));
    let (s0, s1, s2, cells2) = (sys.clone(), sys.clone(), sys.clone(), cells.clone());
    let bodies: Vec<Body> = vec![
        Box::new(move || {
            let migrate = Some(core0.migrate(&s0, V0, C2, NOW, &mut ()));
            Outcome { core: Some(core0), migrate, ..Outcome::default() }
        }),
        Box::new(move || {
            let migrate = Some(core1.migrate(&s1, V2, C2, NOW, &mut ()));
            Outcome { core: Some(core1), migrate, ..Outcome::default() }
        }),
        Box::new(move || {
            let mut runs = Vec::new();
            for _ in 0..2 {
                step(&s2, &mut core2, &cells2, &mut runs);
            }
            Outcome { core: Some(core2), runs, ..Outcome::default() }
        }),
    ];
    let mut out = runner.run(bodies);

    assert_eq!(out[0].migrate, Some(Ok(())));
    assert_eq!(out[1].migrate, Some(Ok(())));
    assert!(out[2].runs.iter().all(|v| [V0, V2].contains(v)), "core 2 ran a vCPU it was never given");
    let facts = vec![format!("core 2 ran {:?}", out[2].runs)];
    let mut cores: Vec<CoreRuntime> = out.iter_mut().map(take_core).collect();
    drain(&sys, &mut cores, &cells);
    check_ownership(&sys, &cores);
    assert_eq!([owner_of(&cores, V0), owner_of(&cores, V1), owner_of(&cores, V2)], [C2, C0, C2]);
    facts
}

/// Model 4: two siblings' PSCI CPU_ON for the same parked vCPU race with each other and with
/// its owner's decisions. Exactly one succeeds; the vCPU runs.
pub fn power_on_race(runner: &dyn Runner) -> Vec<String> {
    let (sys, mut cores) = system(1, vec![vcpu(0, CoreMask::ALL, true)]);
    assert_eq!(sys.status(V0).state, VcpuState::Parked);
    let cells = Arc::new(RunCells::new(1));

    let mut core0 = cores.pop().expect("core 0");
    let (s0, s1, s2, cells0) = (sys.clone(), sys.clone(), sys.clone(), cells.clone());
    let bodies: Vec<Body> = vec![
        Box::new(move || Outcome { power_on: Some(s0.request_power_on(V0)), ..Outcome::default() }),
        Box::new(move || Outcome { power_on: Some(s1.request_power_on(V0)), ..Outcome::default() }),
        Box::new(move || {
            let mut runs = Vec::new();
            step(&s2, &mut core0, &cells0, &mut runs);
            Outcome { core: Some(core0), runs, ..Outcome::default() }
        }),
    ];
    let mut out = runner.run(bodies);

    let results = [out[0].power_on.expect("set"), out[1].power_on.expect("set")];
    let ok = results.iter().filter(|r| **r == Ok(C0)).count();
    assert_eq!(ok, 1, "exactly one CPU_ON succeeds: {results:?}");
    assert!(
        results.iter().all(|r| matches!(r, Ok(_) | Err(PowerOnError::OnPending) | Err(PowerOnError::AlreadyOn))),
        "{results:?}"
    );
    let mut cores = vec![take_core(&mut out[2])];
    check_ownership(&sys, &cores);
    assert_runs_next(&sys, &mut cores, V0);
    assert_eq!(sys.affinity_info(V0), Some(vcpu_runtime::AffinityState::On));
    let loser = results.iter().find(|r| r.is_err()).copied();
    vec![format!("loser {loser:?}"), ran_in_thread(&out[2].runs)]
}

/// Model 5: core 1 goes offline while core 0 hands it a vCPU. Core 1 has one vCPU of its own
/// to evacuate. The offline succeeds (core 0 takes everything), core 1 owns nothing, nothing is
/// lost, and the hand-over either failed cleanly (the vCPU is still on core 0) or succeeded and
/// core 1 passed the vCPU on to an online core.
pub fn offline_while_handing_over(runner: &dyn Runner) -> Vec<String> {
    let (sys, mut cores) = system(2, vec![vcpu(0, CoreMask::ALL, false), vcpu(1, CoreMask::ALL, false)]);
    assert_eq!([owner_of(&cores, V0), owner_of(&cores, V1)], [C0, C1]);
    let cells = Arc::new(RunCells::new(2));

    let mut core1 = cores.pop().expect("core 1");
    let mut core0 = cores.pop().expect("core 0");
    let (s0, s1) = (sys.clone(), sys.clone());
    let bodies: Vec<Body> = vec![
        Box::new(move || {
            let migrate = Some(core0.migrate(&s0, V0, C1, NOW, &mut ()));
            Outcome { core: Some(core0), migrate, ..Outcome::default() }
        }),
        Box::new(move || {
            let offline = Some(core1.handle(&s1, Event::CoreGoingOffline, NOW, &mut ()));
            Outcome { core: Some(core1), offline, ..Outcome::default() }
        }),
    ];
    let mut out = runner.run(bodies);

    assert_eq!(out[1].offline, Some(Ok(())), "core 0 stays online and takes core 1's vCPUs");
    let migrate = out[0].migrate.expect("set");
    assert!(matches!(migrate, Ok(()) | Err(MoveError::CoreOffline(C1))), "{migrate:?}");
    let mut cores = vec![take_core(&mut out[0]), take_core(&mut out[1])];
    if migrate.is_err() {
        assert_eq!(owner_of(&cores, V0), C0, "a failed hand-over leaves the vCPU with its owner");
    }
    drain(&sys, &mut cores, &cells);
    check_ownership(&sys, &cores);
    assert!(!sys.online_cores().contains(C1));
    assert!(!cores[1].is_online());
    assert!(cores[1].vcpus().is_empty(), "offline core 1 still owns {:?}", cores[1].vcpus());
    for v in [V0, V1] {
        let owner = owner_of(&cores, v);
        assert!(sys.online_cores().contains(owner), "vCPU {v} ended on offline core {owner}");
    }
    assert_eq!(cores[1].next(&sys, NOW, &mut ()), Decision::PowerOff);
    vec![format!("migrate {migrate:?}")]
}

/// The request a third party makes for the vCPU in [`request_during_aborted_handover`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// An interrupt for the blocked vCPU ([`System::wake`]).
    Wake,
    /// A sibling's PSCI CPU_ON for the parked vCPU ([`System::request_power_on`]).
    PowerOn,
}

/// Model 6: core 0 hands a blocked (or parked) vCPU to core 1 while core 1 goes offline and a
/// third party wakes (or powers on) the vCPU. Whether the hand-over succeeds or is aborted, the
/// request must not be lost: the vCPU runs at its owner's next decision.
///
/// Loom finds the request lost when core 0 passed its online check and marked the vCPU in
/// flight to core 1, core 1 then went offline (closing its mailbox), the request saw the vCPU
/// in flight and kicked core 1, and core 0's post failed: `abort_handover` gives the vCPU back
/// to core 0 with the request bit set but nobody kicks core 0, and later requests see the bit
/// already set and kick no one. The interleaving is inside `migrate`, so only loom reaches it;
/// run sequentially or on std threads this scenario passes.
pub fn request_during_aborted_handover(runner: &dyn Runner, request: Request) -> Vec<String> {
    let parked = request == Request::PowerOn;
    let (sys, mut cores) = system(2, vec![vcpu(0, CoreMask::ALL, parked)]);
    assert_eq!(owner_of(&cores, V0), C0);
    if !parked {
        block_on(&sys, &mut cores[0], V0);
    }
    let cells = Arc::new(RunCells::new(1));

    let mut core1 = cores.pop().expect("core 1");
    let mut core0 = cores.pop().expect("core 0");
    let (s0, s1, s2) = (sys.clone(), sys.clone(), sys.clone());
    let bodies: Vec<Body> = vec![
        Box::new(move || {
            let migrate = Some(core0.migrate(&s0, V0, C1, NOW, &mut ()));
            Outcome { core: Some(core0), migrate, ..Outcome::default() }
        }),
        Box::new(move || {
            let offline = Some(core1.handle(&s1, Event::CoreGoingOffline, NOW, &mut ()));
            Outcome { core: Some(core1), offline, ..Outcome::default() }
        }),
        Box::new(move || match request {
            Request::Wake => Outcome { kick: s2.wake(V0), ..Outcome::default() },
            Request::PowerOn => Outcome { power_on: Some(s2.request_power_on(V0)), ..Outcome::default() },
        }),
    ];
    let mut out = runner.run(bodies);

    assert_eq!(out[1].offline, Some(Ok(())));
    if request == Request::PowerOn {
        assert!(out[2].power_on.expect("set").is_ok(), "the only CPU_ON for a parked vCPU succeeds");
    }
    let facts = vec![format!("migrate {:?}", out[0].migrate.expect("set"))];
    let mut cores = vec![take_core(&mut out[0]), take_core(&mut out[1])];
    drain(&sys, &mut cores, &cells);
    check_ownership(&sys, &cores);
    assert_eq!(owner_of(&cores, V0), C0);
    assert_runs_next(&sys, &mut cores, V0);
    facts
}

/// Facts reported by the runs of a scenario, gathered across runs (and across loom's
/// executions: it is std's, outside the model).
#[derive(Debug, Default)]
pub struct Reached(std::sync::Mutex<std::collections::BTreeSet<String>>);

impl Reached {
    pub fn add(&self, facts: Vec<String>) {
        self.0.lock().expect("not poisoned").extend(facts);
    }
    /// Panics unless every fact in `required` was reported by some run.
    pub fn check(&self, required: &[&str]) {
        let seen = self.0.lock().expect("not poisoned");
        for r in required {
            assert!(seen.contains(*r), "no run reached \"{r}\"; the runs reached {seen:#?}");
        }
    }
}

/// Model 8: core 0 hands v0 to core 1 while a third party asks for v0 to move to core 2. The
/// request reads the owner from the state word, so it may reach core 1 before v0 does; core 1
/// must keep it until v0 arrives rather than drop it. Whatever the order, once the cores have
/// drained, an accepted request has taken v0 to core 2.
pub fn move_request_overtaking_its_vcpu(runner: &dyn Runner) -> Vec<String> {
    let (sys, mut cores) = system(3, vec![vcpu(0, CoreMask::ALL, false)]);
    assert_eq!(owner_of(&cores, V0), C0);
    block_on(&sys, &mut cores[0], V0);
    let cells = Arc::new(RunCells::new(1));
    let core2 = cores.pop().expect("core 2");
    let core1 = cores.pop().expect("core 1");
    let mut core0 = cores.pop().expect("core 0");
    let (s0, s1) = (sys.clone(), sys.clone());
    let bodies: Vec<Body> = vec![
        Box::new(move || {
            let migrate = Some(core0.migrate(&s0, V0, C1, NOW, &mut ()));
            Outcome { core: Some(core0), migrate, ..Outcome::default() }
        }),
        Box::new(move || {
            // `kick` reports the core the request was posted to.
            let kick = s1.request_move(V0, C2).ok();
            Outcome { kick, ..Outcome::default() }
        }),
    ];
    let mut out = runner.run(bodies);
    assert_eq!(out[0].migrate, Some(Ok(())));
    let mut cores = vec![take_core(&mut out[0]), core1, core2];
    drain(&sys, &mut cores, &cells);
    check_ownership(&sys, &cores);
    // Posted to core 0 before the hand-over: core 0 no longer owns v0 when it reads the
    // request, which is then stale and dropped (v0 stays on core 1). Posted to core 1 (the
    // owner named while in flight): it is carried out once v0 arrives.
    match out[1].kick {
        Some(C1) => assert_eq!(owner_of(&cores, V0), C2, "the request that overtook v0 was lost"),
        Some(C0) => assert!(matches!(owner_of(&cores, V0), C1 | C2)),
        other => panic!("request_move answered {other:?}"),
    }
    vec![format!("request posted to {:?}", out[1].kick)]
}
