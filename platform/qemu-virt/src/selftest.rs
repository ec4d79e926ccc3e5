//! Self-tests of the failure paths, chosen with `hv.selftest=NAME` in `/chosen/bootargs`
//! (QEMU: `-append hv.selftest=NAME`). They check that a failure cannot pass silently: each
//! must end the run with the right exit status and a report on the console. The secondary
//! tests fail before the core counts as online, so the boot core cannot end the run with
//! status 0 first.
//!
//! | NAME | what happens | expected exit status |
//! |---|---|---|
//! | `panic` | the boot core panics once its own line is out | 2 |
//! | `secondary-panic` | the last core panics after printing its online lines | 2 |
//! | `brk` | the boot core executes `BRK` | 3 |
//! | `overflow` | the last core, likewise, recurses until its stack overflows | 3 |
//! | `hang` | the last core never reports in | 1 (after the online timeout) |

use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use platform_aarch64::{exceptions, println};
use vcpu_runtime::CoreId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Test {
    None = 0,
    Panic,
    SecondaryPanic,
    Brk,
    Overflow,
    Hang,
}

const TESTS: [(&str, Test); 5] = [
    ("panic", Test::Panic),
    ("secondary-panic", Test::SecondaryPanic),
    ("brk", Test::Brk),
    ("overflow", Test::Overflow),
    ("hang", Test::Hang),
];

static SELECTED: AtomicU8 = AtomicU8::new(Test::None as u8);
/// The core that runs the secondary tests: the last one.
static TARGET_CORE: AtomicUsize = AtomicUsize::new(0);

fn selected() -> Test {
    let v = SELECTED.load(Ordering::Acquire);
    TESTS.iter().map(|(_, t)| *t).find(|t| *t as u8 == v).unwrap_or(Test::None)
}

/// Reads `hv.selftest=NAME` from the boot arguments (before the secondaries start).
pub fn configure(bootargs: &str, cores: usize) {
    let Some(name) = bootargs.split_ascii_whitespace().find_map(|arg| arg.strip_prefix("hv.selftest=")) else {
        return;
    };
    match TESTS.iter().find(|(n, _)| *n == name) {
        Some((_, test)) => {
            println!("selftest: {name} (core {})", cores - 1);
            TARGET_CORE.store(cores - 1, Ordering::Relaxed);
            SELECTED.store(*test as u8, Ordering::Release);
        }
        None => println!("selftest: unknown test `{name}` ignored"),
    }
}

/// Runs the boot core's part of the selected test, once it has reported in and before it
/// starts the secondaries.
pub fn on_boot_core() {
    match selected() {
        Test::Panic => panic!("selftest: the boot core panics on purpose"),
        Test::Brk => exceptions::breakpoint(),
        _ => {}
    }
}

/// Runs the target core's part of the selected test, after it printed its online lines and
/// before it counts as online: the boot core cannot see all cores online (and end the run
/// with status 0) before the failure has ended the run.
pub fn before_counted_online(core: CoreId) {
    if usize::from(core.0) != TARGET_CORE.load(Ordering::Relaxed) {
        return;
    }
    match selected() {
        Test::SecondaryPanic => panic!("selftest: core {} panics on purpose", core.0),
        Test::Overflow => {
            let depth = recurse(0);
            println!("selftest: recursion returned at depth {depth}?");
        }
        _ => {}
    }
}

/// Whether this core should hold back its online report (the `hang` test).
pub fn hangs(core: CoreId) -> bool {
    selected() == Test::Hang && usize::from(core.0) == TARGET_CORE.load(Ordering::Relaxed)
}

/// Recurses with a 1 KiB frame until the stack runs out (the guard region faults).
fn recurse(depth: u64) -> u64 {
    let frame = core::hint::black_box([depth as u8; 1024]);
    if core::hint::black_box(depth) == u64::MAX {
        return depth;
    }
    recurse(depth + 1) + u64::from(frame[depth as usize % 1024])
}
