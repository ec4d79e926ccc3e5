//! `HV_BENCH` (docs/guest-abi.md): the hypervisor counts its own retired instructions (PMU event
//! counter 0, `INST_RETIRED` at EL2 only, `crate::pmu`) between a guest's start and stop calls,
//! and at the stop prints them.
//!
//! A **core window** (phase 0) counts on the caller's core only, without a pause: the
//! operations that stay on one core (its state is `Core::bench`).
//!
//! An **every-core window** (phase 2) counts on every core, for an operation that goes from core
//! to core (`HV_BENCH_MOVE`: the vCPU move). Under QEMU's `-icount` the counter follows QEMU's
//! global instruction count while its core is at EL2: every CPU's instructions, also while the
//! core waits in WFI and another one runs. So in such a window a core counts only while it is
//! awake: it pauses its counter just before WFI and resumes it just after ([`pause`],
//! [`resume`]; it joins the window, from zero, at its first wake-up in it), and publishes its
//! count when it pauses. The stop adds the counts of every core that joined. QEMU runs the CPUs
//! of an `-icount` machine in turn in one thread, and leaves an awake CPU for another only when
//! it waits or a timer deadline ends its turn: a core's count is its own instructions exactly
//! when no other core ran while it was awake, that is when the cores' awake intervals did not
//! overlap. Each wake-up takes a number from a global sequence; a core that finds, when it
//! pauses, that the sequence moved since its own wake-up was awake while another core woke up.
//! That, a core still awake at the stop, or a core that pauses in a window it never joined, is
//! an overlap: the stop reports how many (`cargo xtask bench` refuses a figure with any).
//!
//! Not counted on the way: the instructions of the pause after the counter stopped, the WFI,
//! and those of the wake-up before it restarts (the window test after WFI included). The test
//! before WFI is counted, as production code runs it too.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use vcpu_runtime::VcpuId;

use super::core_loop::Core;
use crate::layout::MAX_CORES;
use crate::pmu;

/// SMCCC `NOT_SUPPORTED` as a register value.
const NOT_SUPPORTED: u64 = -1i64 as u64;

/// The open every-core window's number, 0 when none is open.
/// `hv.bench`: the guests may call `HV_BENCH_MOVE`.
static MOVES_ALLOWED: AtomicBool = AtomicBool::new(false);

/// `hv.bench`: lets the guests ask for moves of their own vCPUs (`HV_BENCH_MOVE`). Off by
/// default: a guest must not bounce its vCPUs between cores at will and load the others' cores.
pub fn allow_moves(allowed: bool) {
    MOVES_ALLOWED.store(allowed, Ordering::Relaxed);
}

/// Whether `HV_BENCH_MOVE` is answered.
pub fn moves_allowed() -> bool {
    MOVES_ALLOWED.load(Ordering::Relaxed)
}

static WINDOW: AtomicU64 = AtomicU64::new(0);
/// The last window's number.
static WINDOWS: AtomicU64 = AtomicU64::new(0);
/// The open window's operation and iterations (the stop must name the same).
static OP: AtomicU64 = AtomicU64::new(0);
static ITERATIONS: AtomicU64 = AtomicU64::new(0);
/// The calling vCPU's migrations when the window opened.
static MIGRATIONS: AtomicU64 = AtomicU64::new(0);
/// Wake-ups so far, every window (each takes the next number: the overlap test).
static SEQUENCE: AtomicU64 = AtomicU64::new(0);
/// Wake-ups in the open window, and overlaps found so far.
static WAKES: AtomicU64 = AtomicU64::new(0);
static OVERLAPS: AtomicU64 = AtomicU64::new(0);

/// One core's part of the every-core window, written by that core (and at the start by the
/// caller's core for itself).
struct CoreCount {
    /// The window the core joined last.
    window: AtomicU64,
    /// Its count when it last paused.
    el2: AtomicU64,
    /// Its exits when it joined, and since then when it last paused.
    exits_at_join: AtomicU64,
    exits: AtomicU64,
    /// The sequence number of its last wake-up (or of the start).
    woke: AtomicU64,
    /// It is counting (between a wake-up and a pause).
    awake: AtomicBool,
}

static CORES: [CoreCount; MAX_CORES] = [const {
    CoreCount {
        window: AtomicU64::new(0),
        el2: AtomicU64::new(0),
        exits_at_join: AtomicU64::new(0),
        exits: AtomicU64::new(0),
        woke: AtomicU64::new(0),
        awake: AtomicBool::new(false),
    }
}; MAX_CORES];

/// Whether an every-core window is open (tested on the idle path, before and after WFI).
#[inline(always)]
pub(super) fn every_core_open() -> bool {
    WINDOW.load(Ordering::Relaxed) != 0
}

/// `HV_BENCH(phase, op, iterations)` of `vcpu` on `core`; returns the answer for x0.
pub(super) fn call(core: &mut Core<'_>, vcpu: VcpuId, phase: u64, op: u64, iterations: u64) -> u64 {
    match phase {
        0 => {
            WINDOW.store(0, Ordering::Relaxed);
            core.bench = Some((op, iterations, core.exit_count()));
            // Last: everything after this is part of the window.
            pmu::start_el2_instruction_count();
            0
        }
        1 => {
            // First: everything before this is part of the window.
            let count = pmu::stop_el2_instruction_count();
            match core.bench.take() {
                Some((started, n, exits)) if started == op && n == iterations => {
                    crate::println!(
                        "bench op={op} iterations={iterations} el2_instructions={count} exits={}",
                        core.exit_count() - exits
                    );
                    0
                }
                _ if stop_every_core(core, vcpu, op, iterations, count) => 0,
                _ => NOT_SUPPORTED,
            }
        }
        2 => {
            start_every_core(core, vcpu, op, iterations);
            0
        }
        _ => NOT_SUPPORTED,
    }
}

/// The calling vCPU's migrations so far (it runs on `core`, so `core`'s runtime holds it).
fn migrations(core: &Core<'_>, vcpu: VcpuId) -> u64 {
    core.rt.vcpus().iter().find(|v| v.id() == vcpu).map_or(0, |v| v.stats().migrations)
}

fn start_every_core(core: &mut Core<'_>, vcpu: VcpuId, op: u64, iterations: u64) {
    core.bench = None;
    let window = WINDOWS.fetch_add(1, Ordering::Relaxed) + 1;
    OP.store(op, Ordering::Relaxed);
    ITERATIONS.store(iterations, Ordering::Relaxed);
    MIGRATIONS.store(migrations(core, vcpu), Ordering::Relaxed);
    WAKES.store(0, Ordering::Relaxed);
    OVERLAPS.store(0, Ordering::Relaxed);
    let mine = &CORES[core.me.index()];
    mine.window.store(window, Ordering::Relaxed);
    mine.exits_at_join.store(core.exit_count(), Ordering::Relaxed);
    mine.woke.store(SEQUENCE.fetch_add(1, Ordering::AcqRel) + 1, Ordering::Relaxed);
    mine.awake.store(true, Ordering::Relaxed);
    WINDOW.store(window, Ordering::Release);
    // Last: everything after this is part of the window.
    pmu::start_el2_instruction_count();
}

/// The stop of an every-core window on `core`, whose own count is `count`: prints the line and
/// closes the window. False if no such window is open.
fn stop_every_core(core: &mut Core<'_>, vcpu: VcpuId, op: u64, iterations: u64, count: u64) -> bool {
    let window = WINDOW.load(Ordering::Acquire);
    if window == 0 || OP.load(Ordering::Relaxed) != op || ITERATIONS.load(Ordering::Relaxed) != iterations {
        return false;
    }
    WINDOW.store(0, Ordering::Release);
    let me = core.me.index();
    let mut overlaps = OVERLAPS.load(Ordering::Acquire);
    let mine = &CORES[me];
    mine.awake.store(false, Ordering::Relaxed);
    if mine.window.load(Ordering::Relaxed) != window
        || SEQUENCE.load(Ordering::Acquire) != mine.woke.load(Ordering::Relaxed)
    {
        overlaps += 1;
    }
    let (mut el2, mut exits, mut cores) = (count, core.exit_count() - mine.exits_at_join.load(Ordering::Relaxed), 1);
    for (k, c) in CORES.iter().enumerate() {
        if k == me || c.window.load(Ordering::Acquire) != window {
            continue;
        }
        // Still counting: its count is not final, and it ran while this core did.
        if c.awake.load(Ordering::Acquire) {
            overlaps += 1;
        }
        el2 += c.el2.load(Ordering::Relaxed);
        exits += c.exits.load(Ordering::Relaxed);
        cores += 1;
    }
    let moves = migrations(core, vcpu).wrapping_sub(MIGRATIONS.load(Ordering::Relaxed));
    crate::println!(
        "bench op={op} iterations={iterations} el2_instructions={el2} exits={exits} cores={cores} wakes={} moves={moves} overlaps={overlaps}",
        WAKES.load(Ordering::Relaxed)
    );
    true
}

/// Just before this core waits in WFI in an every-core window: its counter stops (first) and
/// its count is published.
#[inline(never)]
pub(super) fn pause(core: &Core<'_>) {
    let count = pmu::pause_el2_instruction_count();
    let window = WINDOW.load(Ordering::Acquire);
    let mine = &CORES[core.me.index()];
    if mine.window.load(Ordering::Relaxed) != window {
        // Ran in the window without counting.
        OVERLAPS.fetch_add(1, Ordering::AcqRel);
        return;
    }
    mine.el2.store(count, Ordering::Relaxed);
    mine.exits.store(core.exit_count() - mine.exits_at_join.load(Ordering::Relaxed), Ordering::Relaxed);
    if SEQUENCE.load(Ordering::Acquire) != mine.woke.load(Ordering::Relaxed) {
        // Another core woke up while this one counted.
        OVERLAPS.fetch_add(1, Ordering::AcqRel);
    }
    mine.awake.store(false, Ordering::Release);
}

/// Just after this core woke up from WFI in an every-core window: it takes its wake-up's number,
/// joins the window if it has not yet (its counter from zero) and restarts its counter (last).
#[inline(never)]
pub(super) fn resume(core: &Core<'_>) {
    let window = WINDOW.load(Ordering::Acquire);
    let mine = &CORES[core.me.index()];
    WAKES.fetch_add(1, Ordering::Relaxed);
    mine.woke.store(SEQUENCE.fetch_add(1, Ordering::AcqRel) + 1, Ordering::Relaxed);
    mine.awake.store(true, Ordering::Release);
    if mine.window.load(Ordering::Relaxed) != window {
        mine.window.store(window, Ordering::Relaxed);
        mine.exits_at_join.store(core.exit_count(), Ordering::Relaxed);
        mine.el2.store(0, Ordering::Relaxed);
        mine.exits.store(0, Ordering::Relaxed);
        // Last: from zero.
        pmu::start_el2_instruction_count();
    } else {
        // Last.
        pmu::resume_el2_instruction_count();
    }
}
