//! `offloader`: the guest of the offload experiment (`cargo xtask offload`, docs/migration.md,
//! *Offload*). vCPU 0 starts the others with PSCI `CPU_ON`; they stay on for the whole run and
//! wait for work in WFI (a vCPU that is off could not travel with the guest's job). Then:
//!
//! 1. a light phase of `LIGHT_MS` (sleeping on the timer);
//! 2. `HV_MARK(5, M)`, the offload point: the job about to run is about M million
//!    instructions;
//! 3. the job: every vCPU runs `GUEST_OFFLOADER_MITER` million rounds of a mixing function
//!    (about `INSTR_PER_ROUND` instructions each) on its own state; vCPU 0 combines the results
//!    into a digest that does not depend on where the job ran;
//! 4. `HV_MARK(6, digest)`, the return point;
//! 5. a light phase of `LIGHT_MS` again, then it reports and powers off:
//!
//! ```text
//! offloader: vcpus=4 job_minstr=1600 job_ms=812 digest=0x0123456789abcdef total_ms=1420
//! ```
//!
//! Times are of the guest's virtual counter, which moves on by a migration's downtime.

#![no_std]
#![no_main]
#![deny(unsafe_code)]

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use guest_rt::psci::{self, Error as PsciError};
use guest_rt::{cpu_index, ensure, fail, gic, hypercall, println, setting, timer, Fail, MAX_VCPUS};

guest_rt::guest_main!(main);

/// Millions of job rounds per vCPU.
const MITER: u64 = setting(option_env!("GUEST_OFFLOADER_MITER"), 100);
/// Instructions one round of [`mix`] takes (an estimate from its code: a multiply, shifts,
/// xors, the loop).
const INSTR_PER_ROUND: u64 = 10;
const LIGHT_MS: u64 = 300;
const MARK_OFFLOAD_POINT: u32 = 5;
const MARK_RETURN_POINT: u32 = 6;
/// SGI that tells a vCPU to look for work.
const SGI_WORK: u32 = 3;

/// Bumped by vCPU 0 to start a job; each vCPU's result and its count of finished jobs.
static JOB: AtomicU32 = AtomicU32::new(0);
static RESULTS: [AtomicU64; MAX_VCPUS] = [const { AtomicU64::new(0) }; MAX_VCPUS];
static FINISHED: AtomicU32 = AtomicU32::new(0);

fn mix(mut x: u64, rounds: u64) -> u64 {
    for _ in 0..rounds {
        x = x.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (x >> 31);
        x = core::hint::black_box(x.rotate_left(17) ^ 0xD1B5_4A32_D192_ED03);
    }
    x
}

fn work(me: usize) {
    RESULTS[me].store(mix(me as u64 + 1, MITER * 1_000_000), Ordering::Release);
    FINISHED.fetch_add(1, Ordering::AcqRel);
    if me != 0 {
        // vCPU 0 waits in WFI for the last one.
        gic::send_sgi(SGI_WORK, 0);
    }
}

fn on_work(_intid: u32) {}

fn secondary(index: u64) -> ! {
    let me = cpu_index();
    if me as u64 != index {
        guest_rt::finish(Err(fail!("cpu_on context {index} arrived on cpu {me}")));
    }
    gic::init();
    gic::set_handler(SGI_WORK, on_work);
    gic::irq_enable();
    let mut seen = 0;
    loop {
        gic::wait_until(|| JOB.load(Ordering::Acquire) != seen);
        seen = JOB.load(Ordering::Acquire);
        work(me);
    }
}

/// Sleeps `ms` on the timer (WFI).
fn sleep_ms(ms: u64) {
    let end = timer::now() + timer::ticks_from_us(ms * 1000);
    timer::set_cval(end);
    timer::enable();
    gic::wait_until(|| timer::now() >= end);
    timer::disable();
}

fn on_tick(_intid: u32) {
    timer::disable();
}

fn main(_x0: u64) -> Result<(), Fail> {
    ensure!(cpu_index() == 0, "boots on cpu 0");
    gic::init();
    gic::set_handler(timer::VTIMER_INTID, on_tick);
    gic::set_handler(SGI_WORK, on_work);
    gic::irq_enable();
    let mut vcpus = 1;
    for index in 1..MAX_VCPUS {
        match psci::cpu_on(index as u64, secondary, index as u64) {
            Ok(()) => vcpus += 1,
            Err(PsciError::InvalidParameters) => break,
            Err(e) => return Err(fail!("CPU_ON({index}) returned {e:?}")),
        }
    }
    let start = timer::now();
    sleep_ms(LIGHT_MS);
    let job_minstr = MITER * INSTR_PER_ROUND * vcpus as u64;
    hypercall::hv_mark(MARK_OFFLOAD_POINT, job_minstr);
    let job_start = timer::now();
    JOB.fetch_add(1, Ordering::AcqRel);
    for k in 1..vcpus {
        gic::send_sgi(SGI_WORK, k);
    }
    work(0);
    gic::wait_until(|| FINISHED.load(Ordering::Acquire) == vcpus as u32);
    let job_ms = timer::us_from_ticks(timer::now() - job_start) / 1000;
    let digest = (0..vcpus).fold(0u64, |d, k| d.rotate_left(7) ^ RESULTS[k].load(Ordering::Acquire));
    hypercall::hv_mark(MARK_RETURN_POINT, digest);
    sleep_ms(LIGHT_MS);
    println!(
        "offloader: vcpus={vcpus} job_minstr={job_minstr} job_ms={job_ms} digest={digest:#018x} total_ms={}",
        timer::us_from_ticks(timer::now() - start) / 1000
    );
    Ok(())
}
