//! `bench`: the operations whose hypervisor path length `cargo xtask bench qemu` measures.
//!
//! Each operation runs `ITERATIONS` times between `HV_BENCH(start, op, n)` and
//! `HV_BENCH(stop, op, n)`; the hypervisor counts its own (EL2) retired instructions in between
//! and prints them. Operation 0 is an empty loop: the cost of the two bench calls themselves,
//! which the report subtracts.
//!
//! | op | what one iteration is |
//! |---|---|
//! | 0 `baseline` | nothing |
//! | 1 `null` | one `HV_NULL` |
//! | 2 `sgi-self` | an SGI to this vCPU, taken and EOIed by the guest (EOI does not trap) |
//! | 3 `ipi-send` | an SGI to vCPU 1, counted on the sender's core; vCPU 1 acknowledges each before the next |
//! | 4 `yield` | an `HV_YIELD` to vCPU 1, which yields straight back (two vCPU switches) |
//! | 5 `baseline-every-core` | nothing, counted on every core (`HV_BENCH` phase 2) |
//! | 6 `move` | an `HV_BENCH_MOVE` to the other core of cores 0 and 1 (one move), counted on every core |
//!
//! Operations 3 and 4 need a second vCPU; with one vCPU they are skipped. Where vCPU 1 runs
//! (another core for 3, the same core for 4) is the scenario's business. Operations 5 and 6 come
//! last, once vCPU 1 is off, and are skipped on one core; they start on core 0 and, with an even
//! number of iterations, end there. On bare QEMU the bench calls answer `NOT_SUPPORTED` and the
//! guest only checks that the operations work.

#![no_std]
#![no_main]
#![deny(unsafe_code)]

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use guest_rt::hypercall::{self, Platform};
use guest_rt::psci::{self, Error as PsciError};
use guest_rt::{cpu_index, ensure, gic, println, setting, timer, Fail};

guest_rt::guest_main!(main);

const ITERATIONS: u64 = setting(option_env!("GUEST_BENCH_ITERATIONS"), 1000);
const SGI_SELF: u32 = 5;
const SGI_OTHER: u32 = 6;
const START: u64 = 0;
const STOP: u64 = 1;
/// Start counting on every core (an operation that goes from core to core).
const START_EVERY_CORE: u64 = 2;
const TIMEOUT_MS: u64 = 5_000;

static SELF_TAKEN: AtomicU32 = AtomicU32::new(0);
static OTHER_TAKEN: AtomicU32 = AtomicU32::new(0);
static SECONDARY_UP: AtomicBool = AtomicBool::new(false);
/// vCPU 1 has seen mode 1 and yields.
static YIELDING: AtomicBool = AtomicBool::new(false);
/// What vCPU 1 does: 0 wait for SGIs, 1 yield until told to stop, 2 stop.
static MODE: AtomicU32 = AtomicU32::new(0);

fn on_self_sgi(_: u32) {
    SELF_TAKEN.fetch_add(1, Ordering::Release);
}

fn on_other_sgi(_: u32) {
    OTHER_TAKEN.fetch_add(1, Ordering::Release);
}

/// Runs `body` `ITERATIONS` times between the bench calls of `op`.
fn measure(op: u64, name: &str, body: impl FnMut(u64) -> Result<(), Fail>) -> Result<(), Fail> {
    measure_from(START, op, name, body)
}

/// [`measure`], started with the phase `start` (on this core or on every core).
fn measure_from(start: u64, op: u64, name: &str, mut body: impl FnMut(u64) -> Result<(), Fail>) -> Result<(), Fail> {
    let expected = hypercall::expected_mark_answer();
    let a = hypercall::hv_bench(start, op, ITERATIONS);
    for i in 0..ITERATIONS {
        body(i)?;
    }
    let b = hypercall::hv_bench(STOP, op, ITERATIONS);
    ensure!(
        a == expected && b == expected,
        "HV_BENCH for {} answered {:#x}/{:#x}, expected {:#x}",
        name,
        a,
        b,
        expected
    );
    println!("bench: op {} ({}) ran {} iterations", op, name, ITERATIONS);
    Ok(())
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) -> Result<(), Fail> {
    let deadline = timer::now() + timer::ticks_from_us(TIMEOUT_MS * 1000);
    while !cond() {
        ensure!(timer::now() < deadline, "timed out waiting for {}", what);
        guest_rt::relax();
    }
    Ok(())
}

fn secondary(_context: u64) -> ! {
    gic::init();
    gic::set_handler(SGI_OTHER, on_other_sgi);
    gic::irq_enable();
    SECONDARY_UP.store(true, Ordering::Release);
    loop {
        match MODE.load(Ordering::Acquire) {
            0 => gic::wait_for_interrupt(),
            1 => {
                YIELDING.store(true, Ordering::Release);
                hypercall::hv_yield();
            }
            _ => {
                let error: PsciError = psci::cpu_off();
                guest_rt::finish(Err(guest_rt::fail!("CPU_OFF returned {:?}", error)));
            }
        }
    }
}

fn main(_x0: u64) -> Result<(), Fail> {
    let platform = hypercall::platform();
    println!("bench: iterations={} platform={}", ITERATIONS, platform);
    gic::init();
    gic::set_handler(SGI_SELF, on_self_sgi);
    gic::irq_enable();
    measure(0, "baseline", |_| Ok(()))?;
    measure(1, "null", |_| {
        core::hint::black_box(hypercall::hv_null());
        Ok(())
    })?;
    measure(2, "sgi-self", |i| {
        gic::send_sgi(SGI_SELF, cpu_index());
        wait_for("an SGI to self", || SELF_TAKEN.load(Ordering::Acquire) as u64 > i)
    })?;
    let two = match psci::cpu_on(1, secondary, 0) {
        Ok(()) => true,
        Err(PsciError::InvalidParameters) => false,
        Err(e) => return Err(guest_rt::fail!("CPU_ON of vCPU 1 failed: {:?}", e)),
    };
    if two {
        wait_for("vCPU 1 to come up", || SECONDARY_UP.load(Ordering::Acquire))?;
        measure(3, "ipi-send", |i| {
            gic::send_sgi(SGI_OTHER, 1);
            wait_for("vCPU 1 to take the SGI", || OTHER_TAKEN.load(Ordering::Acquire) as u64 > i)
        })?;
        MODE.store(1, Ordering::Release);
        // vCPU 1 sleeps in WFI: wake it so it sees the new mode, and start once it yields.
        gic::send_sgi(SGI_OTHER, 1);
        wait_for("vCPU 1 to start yielding", || YIELDING.load(Ordering::Acquire))?;
        measure(4, "yield", |_| {
            core::hint::black_box(hypercall::hv_yield());
            Ok(())
        })?;
        MODE.store(2, Ordering::Release);
        gic::send_sgi(SGI_OTHER, 1);
        wait_for("vCPU 1 to turn off", || matches!(psci::affinity_info(1), Ok(psci::AffinityState::Off)))?;
    } else {
        println!("bench: one vCPU: ipi-send and yield skipped");
    }
    moves()?;
    if platform == Platform::BareQemu {
        println!("bench: bare QEMU: nothing was counted");
    }
    Ok(())
}

/// Operations 5 and 6: this vCPU moved between cores 0 and 1, the other vCPU off (so the other
/// core idles while this one works).
fn moves() -> Result<(), Fail> {
    let expected = hypercall::expected_mark_answer();
    // To core 1 and back: there is a core 1, and the window starts on core 0.
    let there = hypercall::hv_bench_move(1);
    if there == hypercall::INVALID_PARAMETERS {
        println!("bench: one core: move skipped");
        return Ok(());
    }
    if there == hypercall::NOT_SUPPORTED && expected != hypercall::NOT_SUPPORTED {
        println!("bench: the hypervisor refuses HV_BENCH_MOVE (it needs hv.bench): move skipped");
        return Ok(());
    }
    let back = hypercall::hv_bench_move(0);
    ensure!(
        there == expected && back == expected,
        "HV_BENCH_MOVE answered {:#x}/{:#x}, expected {:#x}",
        there,
        back,
        expected
    );
    measure_from(START_EVERY_CORE, 5, "baseline-every-core", |_| Ok(()))?;
    measure_from(START_EVERY_CORE, 6, "move", |i| {
        let answer = hypercall::hv_bench_move((i + 1) % 2);
        ensure!(answer == expected, "HV_BENCH_MOVE answered {:#x}, expected {:#x}", answer, expected);
        Ok(())
    })
}
