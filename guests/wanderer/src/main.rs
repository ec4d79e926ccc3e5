//! `wanderer`: checks its own invariants while the hypervisor moves its vCPUs from core to core
//! (`hv.migrate-every=`, docs/platform.md). Every vCPU, for `RUN_MS`:
//!
//! - **work**: computes a generator and keeps a running checksum, recomputed at the end from
//!   scratch: registers and memory survive every move;
//! - **time**: reads the virtual counter in a loop; it never goes backwards, on this vCPU, across
//!   any move;
//! - **timers**: its virtual timer fires every `TICK_US`, the compare value advanced by one period
//!   each time, until the end of the run; every tick due arrives (late perhaps), none twice;
//! - **IPIs**: vCPU 0 sends SGI 1 to every other vCPU in turn and waits for its SGI 2 answer;
//!   every ping is answered.
//!
//! ```text
//! wanderer: vcpus=2 run_ms=3000
//! wanderer: cpu 1 ticks=3000 expected=3000 counter_steps=... backwards=0 checksum=ok pings=...
//! wanderer: pings=... pongs=... violations=0
//! RESULT: PASS
//! ```

#![no_std]
#![no_main]
#![deny(unsafe_code)]

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use guest_rt::psci::{self, Error as PsciError};
use guest_rt::{cpu_index, ensure, fail, gic, println, timer, Fail, MAX_VCPUS};

guest_rt::guest_main!(main);

const RUN_MS: u64 = 3_000;
const TICK_US: u64 = 1_000;
const SGI_PING: u32 = 1;
const SGI_PONG: u32 = 2;
/// How long vCPU 0 waits for an answer to a ping.
const TIMEOUT_MS: u64 = 2_000;
/// How long vCPU 0 waits for the others to finish their checks (recomputing the work takes as
/// long as the work did).
const FINISH_MS: u64 = 30_000;

static TICKS: [AtomicU64; MAX_VCPUS] = [const { AtomicU64::new(0) }; MAX_VCPUS];
/// The compare value each vCPU's timer was armed with last.
static NEXT_CVAL: [AtomicU64; MAX_VCPUS] = [const { AtomicU64::new(0) }; MAX_VCPUS];
static PINGS: [AtomicU32; MAX_VCPUS] = [const { AtomicU32::new(0) }; MAX_VCPUS];
static PONGS: AtomicU32 = AtomicU32::new(0);
static VIOLATIONS: AtomicU32 = AtomicU32::new(0);
static DONE: [AtomicBool; MAX_VCPUS] = [const { AtomicBool::new(false) }; MAX_VCPUS];
static START: AtomicU64 = AtomicU64::new(0);

fn violation(args: core::fmt::Arguments) {
    VIOLATIONS.fetch_add(1, Ordering::AcqRel);
    println!("wanderer: violation on cpu {}: {}", cpu_index(), args);
}

/// When the run ends (counter value), for the timer handler.
static END: AtomicU64 = AtomicU64::new(0);

/// The virtual timer: one tick, the next one period later (lateness does not accumulate); no
/// tick after the end of the run, so exactly `(end - start) / period` ticks are due.
fn on_tick(_intid: u32) {
    let me = cpu_index();
    TICKS[me].fetch_add(1, Ordering::AcqRel);
    let next = NEXT_CVAL[me].load(Ordering::Relaxed) + timer::ticks_from_us(TICK_US);
    NEXT_CVAL[me].store(next, Ordering::Relaxed);
    if next > END.load(Ordering::Relaxed) {
        timer::disable();
    } else {
        timer::set_cval(next);
    }
}

fn on_ping(_intid: u32) {
    PINGS[cpu_index()].fetch_add(1, Ordering::AcqRel);
    gic::send_sgi(SGI_PONG, 0);
}

fn on_pong(_intid: u32) {
    PONGS.fetch_add(1, Ordering::AcqRel);
}

/// The per-vCPU part: work, time and timers until the end; then the checks. Returns the ticks.
fn wander(me: usize) -> u64 {
    gic::init();
    gic::set_handler(timer::VTIMER_INTID, on_tick);
    gic::set_handler(SGI_PING, on_ping);
    gic::set_handler(SGI_PONG, on_pong);
    let start = START.load(Ordering::Acquire);
    let period = timer::ticks_from_us(TICK_US);
    let end = start + timer::ticks_from_us(RUN_MS * 1000);
    END.store(end, Ordering::Relaxed);
    // The first tick one period after the common start: the count is comparable on every vCPU.
    NEXT_CVAL[me].store(start + period, Ordering::Relaxed);
    timer::set_cval(start + period);
    timer::enable();
    gic::irq_enable();
    let seed = 0x9E37_79B9_7F4A_7C15u64 ^ me as u64 | 1;
    let (mut x, mut steps, mut sum) = (seed, 0u64, 0u64);
    let mut last = timer::now();
    let mut backwards = 0u64;
    loop {
        for _ in 0..256 {
            x = guest_rt::work::step(x);
            sum = sum.wrapping_add(core::hint::black_box(x));
        }
        steps += 256;
        let now = timer::now();
        if now < last {
            backwards += 1;
            violation(format_args!("virtual time went back from {last} to {now}"));
        }
        last = now;
        if now >= end {
            break;
        }
    }
    // Every tick due must come, late perhaps (a host that runs this vCPU's thread late delays
    // its timer), but none twice and none after the end.
    let expected = (end - start) / period;
    let wait = timer::now() + timer::ticks_from_us(TIMEOUT_MS * 1000);
    while TICKS[me].load(Ordering::Acquire) < expected && timer::now() < wait {
        guest_rt::relax();
    }
    gic::irq_disable();
    timer::disable();
    // The work again, from scratch, with nothing to disturb it.
    let (mut y, mut check) = (seed, 0u64);
    for _ in 0..steps {
        y = guest_rt::work::step(y);
        check = check.wrapping_add(y);
    }
    if check != sum {
        violation(format_args!("checksum {sum:#x} after {steps} steps, recomputed {check:#x}"));
    }
    let ticks = TICKS[me].load(Ordering::Acquire);
    if ticks != expected {
        violation(format_args!("{ticks} timer ticks, {expected} periods elapsed"));
    }
    println!(
        "wanderer: cpu {me} ticks={ticks} expected={expected} counter_steps={steps} backwards={backwards} checksum={} pings={}",
        if check == sum { "ok" } else { "BAD" },
        PINGS[me].load(Ordering::Relaxed)
    );
    ticks
}

fn secondary(index: u64) -> ! {
    let me = cpu_index();
    if me as u64 != index {
        guest_rt::finish(Err(fail!("cpu_on context {index} arrived on cpu {me}")));
    }
    wander(me);
    DONE[me].store(true, Ordering::Release);
    let err = psci::cpu_off();
    guest_rt::finish(Err(fail!("CPU_OFF on cpu {me} returned {err:?}")))
}

/// vCPU 0 between its own work: pings the others in turn until the end.
fn pinger(others: &[usize]) -> Result<(), Fail> {
    let start = START.load(Ordering::Acquire);
    let end = start + timer::ticks_from_us(RUN_MS * 1000);
    let mut sent = 0u32;
    let mut k = 0;
    while timer::now() < end && !others.is_empty() {
        let target = others[k % others.len()];
        k += 1;
        let before = PONGS.load(Ordering::Acquire);
        gic::send_sgi(SGI_PING, target);
        sent += 1;
        let deadline = timer::now() + timer::ticks_from_us(TIMEOUT_MS * 1000);
        while PONGS.load(Ordering::Acquire) == before {
            if timer::now() > deadline {
                violation(format_args!("ping {sent} to cpu {target} not answered"));
                return Ok(());
            }
            guest_rt::relax();
        }
        // A few hundred microseconds between pings.
        let pause = timer::now() + timer::ticks_from_us(300);
        while timer::now() < pause {
            guest_rt::relax();
        }
    }
    let _ = sent;
    Ok(())
}

fn main(_x0: u64) -> Result<(), Fail> {
    ensure!(cpu_index() == 0, "boots on cpu 0");
    gic::init();
    let mut others = [0usize; MAX_VCPUS];
    let mut n = 0;
    START.store(timer::now() + timer::ticks_from_us(20_000), Ordering::Release);
    for index in 1..MAX_VCPUS {
        match psci::cpu_on(index as u64, secondary, index as u64) {
            Ok(()) => {
                others[n] = index;
                n += 1;
            }
            Err(PsciError::InvalidParameters) => break,
            Err(e) => return Err(fail!("CPU_ON({index}) returned {e:?}")),
        }
    }
    let others = &others[..n];
    println!("wanderer: vcpus={} run_ms={RUN_MS}", n + 1);
    // vCPU 0 pings from an interrupt-free loop of its own, then does its part of the checks
    // for time and timers over a short second run.
    gic::set_handler(SGI_PONG, on_pong);
    gic::irq_enable();
    while timer::now() < START.load(Ordering::Acquire) {
        guest_rt::relax();
    }
    pinger(others)?;
    gic::irq_disable();
    let deadline = timer::now() + timer::ticks_from_us(FINISH_MS * 1000);
    while !others.iter().all(|&c| DONE[c].load(Ordering::Acquire)) {
        ensure!(timer::now() < deadline, "the other vCPUs did not finish");
        guest_rt::relax();
    }
    let pings: u32 = others.iter().map(|&c| PINGS[c].load(Ordering::Relaxed)).sum();
    let pongs = PONGS.load(Ordering::Relaxed);
    let violations = VIOLATIONS.load(Ordering::Relaxed);
    println!("wanderer: pings={pings} pongs={pongs} violations={violations}");
    ensure!(pings == pongs, "{pings} pings received, {pongs} answers");
    ensure!(pongs > 0 || others.is_empty(), "no ping was answered");
    ensure!(violations == 0, "{violations} violations");
    Ok(())
}
