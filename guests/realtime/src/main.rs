//! `rt`: a periodic real-time task on the virtual timer.
//!
//! The virtual timer fires every `GUEST_RT_PERIOD_US` (default 10000 µs = 10 ms) at exact
//! multiples of the period (`CNTV_CVAL_EL0` advanced by one period per tick, so lateness never
//! accumulates). Each tick releases one job: `GUEST_RT_WORK_US` (default 2000 µs) of computation,
//! calibrated at start-up as a number of generator steps, so that a vCPU that does not get the
//! CPU finishes late. A period is a miss when its job ends after the next tick is due (measured
//! with `CNTVCT_EL0`), and every tick that was skipped outright is a miss too.
//!
//! Every miss is said in a line, with the timing that makes it (`response_us`, and `start_us`
//! and `job_us`, for a job that ended late; `late_us`, how late the first of them was handled,
//! for ticks skipped), and marked with `HV_MARK` id 3 under the hypervisor.
//!
//! After `GUEST_RT_PERIODS` periods (default 100) it prints `rt periods=N misses=M` and the worst
//! response time and release latency; PASS if M == 0.
//!
//! Under the hypervisor the scenario may set period, work, deadline and the number of periods
//! instead: its manifest writer turns the guest's periodic `demand` over the scenario's duration
//! into a parameter blob ([`Params::from_blob`], docs/guests.md), whose address comes in `x0`.

#![no_std]
#![no_main]
#![deny(unsafe_code)]

use core::sync::atomic::{AtomicU64, Ordering};
use guest_rt::{ensure, fail, gic, hypercall, mem, println, setting, timer, Fail};

guest_rt::guest_main!(main);

const PERIOD_US: u64 = setting(option_env!("GUEST_RT_PERIOD_US"), 10_000);
const WORK_US: u64 = setting(option_env!("GUEST_RT_WORK_US"), 2_000);
const PERIODS: u64 = setting(option_env!("GUEST_RT_PERIODS"), 100);
/// `HV_MARK` id of a miss (value: the period number).
const MARK_MISS: u32 = 3;

/// What the guest runs: a job of `work_us` every `period_us`, due `deadline_us` after its
/// release, for `periods` periods.
struct Params {
    period_us: u64,
    work_us: u64,
    deadline_us: u64,
    periods: u64,
}

/// The parameter blob's magic (docs/guests.md, *rt*): then period, work and deadline in
/// microseconds and the number of periods, little-endian u64 each.
const PARAMS_MAGIC: [u8; 8] = *b"HVRTPAR1";

impl Params {
    /// The built-in settings (`GUEST_RT_*` at build time).
    const BUILT_IN: Params =
        Params { period_us: PERIOD_US, work_us: WORK_US, deadline_us: PERIOD_US, periods: PERIODS };

    /// The parameters of the blob at `x0`; the built-in ones without a blob.
    fn from_blob(x0: u64) -> Result<Params, Fail> {
        let Some(blob) = mem::data_blob(x0) else { return Ok(Params::BUILT_IN) };
        if blob[..8] != PARAMS_MAGIC {
            return Err(fail!("the data blob at {:#x} is not an rt parameter blob (magic {:02x?})", x0, &blob[..8]));
        }
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&blob[8 + 8 * i..16 + 8 * i]);
            u64::from_le_bytes(b)
        };
        Ok(Params { period_us: word(0), work_us: word(1), deadline_us: word(2), periods: word(3) })
    }
}

/// Ticks taken so far.
static TICKS: AtomicU64 = AtomicU64::new(0);
/// Counter value at which the latest tick was due.
static RELEASE: AtomicU64 = AtomicU64::new(0);
/// Period in counter ticks (set before the timer starts).
static PERIOD: AtomicU64 = AtomicU64::new(0);
/// Worst lateness of the tick handler behind the tick's due time, in counter ticks.
static MAX_LATENCY: AtomicU64 = AtomicU64::new(0);

fn on_tick(_intid: u32) {
    let due = timer::cval();
    let latency = timer::now().saturating_sub(due);
    MAX_LATENCY.fetch_max(latency, Ordering::Relaxed);
    RELEASE.store(due, Ordering::Relaxed);
    timer::set_cval(due + PERIOD.load(Ordering::Relaxed));
    TICKS.fetch_add(1, Ordering::Release);
}

/// The job: `steps` generator steps.
/// One job: `steps` generator steps.
fn job(steps: u64) -> u64 {
    guest_rt::work::steps(steps, 0x2545_F491_4F6C_DD1D)
}

/// Generator steps that take `work_us` on this vCPU: the median of several timed runs, after a
/// warm-up (QEMU translates the loop on its first run).
fn calibrate(work_us: u64) -> u64 {
    const SAMPLE: u64 = 100_000;
    const RUNS: usize = 7;
    job(SAMPLE);
    let mut times = [0u64; RUNS];
    for t in times.iter_mut() {
        let start = timer::now();
        job(SAMPLE);
        *t = (timer::now() - start).max(1);
    }
    times.sort_unstable();
    (SAMPLE * timer::ticks_from_us(work_us) / times[RUNS / 2]).max(1)
}

fn main(x0: u64) -> Result<(), Fail> {
    let Params { period_us, work_us, deadline_us, periods: total } = Params::from_blob(x0)?;
    let period = timer::ticks_from_us(period_us);
    let deadline = timer::ticks_from_us(deadline_us);
    ensure!(
        period > 0 && work_us < deadline_us && deadline_us <= period_us && total > 0,
        "bad settings: period {} us, work {} us, deadline {} us, {} periods",
        period_us,
        work_us,
        deadline_us,
        total
    );
    let steps = calibrate(work_us);
    println!(
        "rt: period_us={} work_us={} deadline_us={} periods={} work_steps={}",
        period_us, work_us, deadline_us, total, steps
    );

    gic::init();
    gic::set_handler(timer::VTIMER_INTID, on_tick);
    PERIOD.store(period, Ordering::Relaxed);
    timer::set_cval(timer::now() + period);

    let mut seen = 0;
    let mut periods = 0;
    let mut misses = 0;
    let mut max_response = 0;
    while periods < total {
        gic::wait_until(|| TICKS.load(Ordering::Acquire) > seen);
        gic::irq_disable();
        let ticks = TICKS.load(Ordering::Acquire);
        let release = RELEASE.load(Ordering::Relaxed);
        gic::irq_enable();
        // Ticks that came and went while the previous job ran: their jobs never ran. Ticks past
        // the run's last period are not periods of it.
        let new = (ticks - seen).min(total - periods);
        let skipped = new - 1;
        misses += skipped;
        if skipped > 0 {
            // Said as a miss line too, so that whoever reads the output sees every miss. How
            // late the first skipped tick was handled (its job would have ended `work` later
            // still) lets the harness weigh the miss against the host's stalls.
            let late = timer::now().saturating_sub(release.saturating_sub(skipped * period));
            hypercall::hv_mark(MARK_MISS, periods + 1);
            println!(
                "rt: miss in period {}: {} ticks skipped, their jobs never ran, late_us={}",
                periods + 1,
                skipped,
                timer::us_from_ticks(late)
            );
        }
        periods += new;
        seen = ticks;

        let start = timer::now();
        job(steps);
        let end = timer::now();
        let response = end.saturating_sub(release);
        max_response = max_response.max(response);
        if response > deadline {
            misses += 1;
            hypercall::hv_mark(MARK_MISS, periods);
            println!(
                "rt: miss in period {}: response_us={} start_us={} job_us={}",
                periods,
                timer::us_from_ticks(response),
                timer::us_from_ticks(start.saturating_sub(release)),
                timer::us_from_ticks(end - start)
            );
        }
    }
    timer::disable();
    gic::irq_disable();

    println!(
        "rt: max_response_us={} max_release_latency_us={}",
        timer::us_from_ticks(max_response),
        timer::us_from_ticks(MAX_LATENCY.load(Ordering::Relaxed))
    );
    println!("rt periods={} misses={}", periods, misses);
    ensure!(misses == 0, "misses={}", misses);
    Ok(())
}
