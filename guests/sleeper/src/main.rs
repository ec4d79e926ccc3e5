//! `sleeper`: an idle guest for the live-migration downtime benchmark (docs/migration.md).
//!
//! It sleeps in WFI on a virtual-timer tick every `TICK_US` (1 ms) for `GUEST_SLEEPER_MS` ms
//! (default 3000) of its virtual time, and records the longest gap between two ticks it
//! handled: a vCPU that was not running (descheduled, or paused by a migration) sees its next
//! tick late by as long, since the hypervisor advances the guest's virtual counter by the
//! downtime it measured. At the end it prints `sleeper: ticks=N max_gap_us=G` and powers off.

#![no_std]
#![no_main]
#![deny(unsafe_code)]

use core::sync::atomic::{AtomicU64, Ordering};

use guest_rt::{ensure, gic, println, setting, timer, Fail};

guest_rt::guest_main!(main);

const RUN_MS: u64 = setting(option_env!("GUEST_SLEEPER_MS"), 3000);
const TICK_US: u64 = 1_000;

static TICKS: AtomicU64 = AtomicU64::new(0);
static LAST: AtomicU64 = AtomicU64::new(0);
static MAX_GAP: AtomicU64 = AtomicU64::new(0);
static NEXT_CVAL: AtomicU64 = AtomicU64::new(0);
static END: AtomicU64 = AtomicU64::new(0);

/// One tick: the gap since the last one, and the next one a period after this one's due time
/// (lateness does not accumulate; ticks missed while away are skipped, not replayed).
fn on_tick(_intid: u32) {
    let now = timer::now();
    let gap = now - LAST.swap(now, Ordering::AcqRel);
    MAX_GAP.fetch_max(gap, Ordering::AcqRel);
    TICKS.fetch_add(1, Ordering::AcqRel);
    let period = timer::ticks_from_us(TICK_US);
    let mut next = NEXT_CVAL.load(Ordering::Relaxed) + period;
    while next <= now {
        next += period;
    }
    NEXT_CVAL.store(next, Ordering::Relaxed);
    // The last interrupt comes at the end itself, which ends the main loop's wait.
    let end = END.load(Ordering::Relaxed);
    if now >= end {
        timer::disable();
    } else {
        timer::set_cval(next.min(end));
    }
}

fn main(_x0: u64) -> Result<(), Fail> {
    gic::init();
    gic::set_handler(timer::VTIMER_INTID, on_tick);
    let start = timer::now();
    END.store(start + timer::ticks_from_us(RUN_MS * 1000), Ordering::Release);
    LAST.store(start, Ordering::Release);
    NEXT_CVAL.store(start + timer::ticks_from_us(TICK_US), Ordering::Release);
    println!("sleeper: run_ms={RUN_MS} tick_us={TICK_US}");
    timer::set_cval(start + timer::ticks_from_us(TICK_US));
    timer::enable();
    gic::irq_enable();
    let end = END.load(Ordering::Acquire);
    gic::wait_until(|| timer::now() >= end);
    timer::disable();
    let ticks = TICKS.load(Ordering::Acquire);
    ensure!(ticks > 0, "no timer tick in {} ms", RUN_MS);
    println!("sleeper: ticks={} max_gap_us={}", ticks, timer::us_from_ticks(MAX_GAP.load(Ordering::Acquire)));
    Ok(())
}
