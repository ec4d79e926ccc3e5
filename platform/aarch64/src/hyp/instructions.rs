//! `hv.count-instructions`: every core counts the instructions it retires at EL2 (the
//! hypervisor) and at EL0/EL1 (the guests) for the whole run, with PMU counters 1 and 2
//! (`crate::pmu`), and the boot core prints the counts at the end:
//!
//! ```text
//! instructions core=0 el2=... guest=...
//! instructions total el2=... guest=...
//! ```
//!
//! Meaningful under `-icount` on one core only: QEMU counts instructions only under `-icount`
//! (0 otherwise), and its instruction event counts icount's global count, every CPU's
//! instructions, filtered by the EL of the core that owns the counter: with two cores, core 1
//! idling at EL2 counts core 0's guest instructions as its own EL2 ones. On `-smp 1` the split
//! is exact (`cargo xtask bench linux` uses it so). The counters are 32 bits wide; each core
//! adds their progress to its totals whenever it idles, before it turns itself off and at the
//! end of the run, so a core must not retire 2^32 instructions without idling (at QEMU's
//! 62.5 M instructions per virtual second with `shift=4`, about a minute).

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use vcpu_runtime::CoreId;

use crate::layout::MAX_CORES;
use crate::{pmu, println};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Per core: instructions at EL2 and in the guests so far, and the counters' raw values when
/// they were last read. Each core writes only its own; the boot core reads them all at the end
/// of the run, after every core has finished.
struct CoreCounts {
    el2: AtomicU64,
    guest: AtomicU64,
    raw: AtomicU64,
}

static COUNTS: [CoreCounts; MAX_CORES] =
    [const { CoreCounts { el2: AtomicU64::new(0), guest: AtomicU64::new(0), raw: AtomicU64::new(0) } }; MAX_CORES];

/// `hv.count-instructions`.
pub fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// Whether the run counts its instructions.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// This core starts (or, back from off, restarts) its counters from zero.
pub fn start(me: CoreId) {
    if !enabled() {
        return;
    }
    if let Some(c) = COUNTS.get(me.index()) {
        c.raw.store(0, Ordering::Relaxed);
        pmu::start_run_counters();
    }
}

/// Adds what this core's counters moved since they were last read to its totals.
pub fn sample(me: CoreId) {
    if !enabled() {
        return;
    }
    let Some(c) = COUNTS.get(me.index()) else { return };
    let (el2, guest) = pmu::read_run_counters();
    let last = c.raw.load(Ordering::Relaxed);
    let (last_el2, last_guest) = ((last >> 32) as u32, last as u32);
    c.el2.fetch_add(u64::from(el2.wrapping_sub(last_el2)), Ordering::Relaxed);
    c.guest.fetch_add(u64::from(guest.wrapping_sub(last_guest)), Ordering::Relaxed);
    c.raw.store(u64::from(el2) << 32 | u64::from(guest), Ordering::Relaxed);
}

/// Prints every core's counts and their sum (the boot core, at the end of the run).
pub fn report(cores: usize) {
    if !enabled() {
        return;
    }
    let (mut el2, mut guest) = (0, 0);
    for (k, c) in COUNTS.iter().take(cores).enumerate() {
        let (e, g) = (c.el2.load(Ordering::Relaxed), c.guest.load(Ordering::Relaxed));
        println!("instructions core={k} el2={e} guest={g}");
        el2 += e;
        guest += g;
    }
    println!("instructions total el2={el2} guest={guest}");
}
