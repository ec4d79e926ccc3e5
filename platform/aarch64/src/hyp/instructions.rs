//! `hv.count-instructions`: every core counts the instructions it retires at EL2 (the
//! hypervisor) and at EL0/EL1 (the guests) for the whole run, with PMU counters 1 and 2
//! (`crate::pmu`), and the boot core prints the counts at the end:
//!
//! ```text
//! instructions core=0 el2=... guest=...
//! instructions total el2=... guest=...
//! ```
//!
//! and then the exit profile (`exits class=NAME count=N el2=E per_exit=P`, costliest first):
//! per class of exit, how many and the EL2 instructions from each to the next entry into a
//! guest. Exits the exception vector answers itself are not in it.
//!
//! Meaningful under `-icount`, and exact on one core only: QEMU counts instructions only under
//! `-icount` (0 otherwise), and its instruction event counts icount's global count, every
//! CPU's instructions, filtered by the EL of the core that owns the counter. The counters are
//! paused while their core waits in WFI, so a core does not count the others' instructions as
//! its own then; but an awake core at EL2 still counts another's instructions during that
//! one's turn. On `-smp 1` the split is exact (`cargo xtask bench linux` uses it so). The
//! counters are 32 bits wide; each core adds their progress to its totals whenever it idles,
//! before it turns itself off and at the end of the run, so a core must not retire 2^32
//! instructions without idling (at QEMU's 62.5 M instructions per virtual second with
//! `shift=4`, about a minute).

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
    report_profile(cores);
}

/// Exit classes of the profile: the exception class of `ESR_EL2` (0..64), and these.
const CLASS_IRQ: usize = 64;
/// A data abort that is a write (or stage-1 walk) permission fault: RAM write-protected until its
/// first write (dirty tracking, docs/migration.md).
const CLASS_FIRST_WRITE: usize = 65;
/// The first entry of a run, with no exit before it on this core.
const CLASS_NONE: usize = 66;
/// Interrupts by kind: the EL2 timer, the virtual timer, the kick SGI, the maintenance PPI.
const CLASS_IRQ_HYP_TIMER: usize = 67;
const CLASS_IRQ_VTIMER: usize = 68;
const CLASS_IRQ_KICK: usize = 69;
const CLASS_IRQ_MAINTENANCE: usize = 70;
/// Data aborts on the emulated UART: reads, writes.
const CLASS_UART_READ: usize = 71;
const CLASS_UART_WRITE: usize = 72;
/// Trapped TLB maintenance instructions (`HCR_EL2.TTLB`): system instructions with op0 = 1.
const CLASS_TLBI: usize = 73;
const CLASSES: usize = 74;

/// Per core and exit class: exits, and EL2 instructions from each exit to the next entry into a
/// guest (the exit's handling, and what the core did before it entered a guest again: the
/// runtime's decision, a switch, housekeeping). Written only by their core.
struct CoreProfile {
    exits: [AtomicU64; CLASSES],
    el2: [AtomicU64; CLASSES],
}

static PROFILES: [CoreProfile; MAX_CORES] = [const {
    CoreProfile { exits: [const { AtomicU64::new(0) }; CLASSES], el2: [const { AtomicU64::new(0) }; CLASSES] }
}; MAX_CORES];

/// The class of an exit: `sync` with syndrome `esr`, or an interrupt. (Profiling code stays out
/// of the core loop's hot path: out of line, cold.)
#[cold]
#[inline(never)]
pub fn exit_class(sync: bool, esr: u64) -> u8 {
    if !sync {
        return CLASS_IRQ as u8;
    }
    let ec = ((esr >> 26) & 0x3f) as usize;
    // The test `exits::data_abort` makes before `Vm::dirty_fault`.
    let write_or_walk = esr & (1 << 6 | 1 << 7) != 0;
    if ec == 0x24 && esr & 0x3c == 0x0c && write_or_walk {
        return CLASS_FIRST_WRITE as u8;
    }
    if ec == 0x24 && (crate::guest::syndrome().hpfar << 8) & !0xfff == super::vm::UART_BASE {
        return if esr & (1 << 6) != 0 { CLASS_UART_WRITE } else { CLASS_UART_READ } as u8;
    }
    if ec == 0x18 && (esr >> 20) & 3 == 1 {
        return CLASS_TLBI as u8;
    }
    ec as u8
}

/// A core's place in the profile: the class of its last exit and the EL2 counter then.
#[derive(Clone, Copy)]
pub struct ProfileMark {
    class: u8,
    el2: u32,
}

impl ProfileMark {
    pub const START: Self = Self { class: CLASS_NONE as u8, el2: 0 };

    /// An exit of `class` now.
    #[cold]
    #[inline(never)]
    pub fn exit(class: u8) -> Self {
        Self { class, el2: pmu::read_run_counters().0 }
    }

    /// The interrupt `intid` came with this exit (the first one names the class).
    #[cold]
    #[inline(never)]
    pub fn irq(&mut self, intid: u32) {
        if usize::from(self.class) != CLASS_IRQ {
            return;
        }
        self.class = match intid {
            crate::gic::PPI_HYP_TIMER => CLASS_IRQ_HYP_TIMER,
            crate::gic::PPI_VTIMER => CLASS_IRQ_VTIMER,
            crate::gic::SGI_KICK => CLASS_IRQ_KICK,
            crate::gic::PPI_MAINTENANCE => CLASS_IRQ_MAINTENANCE,
            _ => CLASS_IRQ,
        } as u8;
    }

    /// The core enters a guest now: what it did at EL2 since the exit goes to the exit's class.
    #[cold]
    #[inline(never)]
    pub fn enter(self, me: CoreId) {
        let Some(p) = PROFILES.get(me.index()) else { return };
        let class = usize::from(self.class).min(CLASSES - 1);
        let now = pmu::read_run_counters().0;
        if class != CLASS_NONE {
            p.exits[class].fetch_add(1, Ordering::Relaxed);
        }
        p.el2[class].fetch_add(u64::from(now.wrapping_sub(self.el2)), Ordering::Relaxed);
    }
}

/// Prints the exit profile summed over the cores, the costliest class first:
/// `exits class=NAME count=N el2=E per_exit=P`.
fn report_profile(cores: usize) {
    let mut rows: alloc::vec::Vec<(usize, u64, u64)> = (0..CLASSES)
        .map(|c| {
            let sum = |f: fn(&CoreProfile) -> &[AtomicU64; CLASSES]| -> u64 {
                PROFILES.iter().take(cores).map(|p| f(p)[c].load(Ordering::Relaxed)).sum()
            };
            (c, sum(|p| &p.exits), sum(|p| &p.el2))
        })
        .filter(|&(_, n, e)| n != 0 || e != 0)
        .collect();
    rows.sort_by_key(|r| core::cmp::Reverse(r.2));
    for (class, count, el2) in rows {
        let name = class_name(class);
        println!("exits class={name} count={count} el2={el2} per_exit={}", el2 / count.max(1));
    }
}

fn class_name(class: usize) -> &'static str {
    match class {
        0x01 => "wfx",
        0x07 => "fp",
        0x16 => "hvc",
        0x17 => "smc",
        0x18 => "sysreg",
        0x20 => "iabt",
        0x24 => "dabt-gic",
        CLASS_UART_READ => "dabt-uart-read",
        CLASS_UART_WRITE => "dabt-uart-write",
        CLASS_IRQ => "irq-other",
        CLASS_IRQ_HYP_TIMER => "irq-el2-timer",
        CLASS_IRQ_VTIMER => "irq-vtimer",
        CLASS_IRQ_KICK => "irq-kick",
        CLASS_IRQ_MAINTENANCE => "irq-maintenance",
        CLASS_FIRST_WRITE => "first-write",
        CLASS_TLBI => "tlbi",
        CLASS_NONE => "first-entry",
        _ => "other",
    }
}
