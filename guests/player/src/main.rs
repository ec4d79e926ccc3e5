//! `player`: replays a guest's simulated demand, so that the hypervisor on QEMU sees the load the
//! simulator sees for the same scenario (docs/guests.md, *player*).
//!
//! The schedule is the guest's data blob: the hypervisor copies it to the base of RAM and passes
//! its address in `x0` (docs/guest-abi.md). `xtask` and hw-tests write it from the guest's
//! `demand` with `platform_sim::schedule::player_schedule`: for each vCPU, a list of jobs
//! (release time, CPU work, optional deadline), and the duration. The format is in
//! docs/guests.md; every offset, count and release is checked before anything runs.
//!
//! vCPU 0 calibrates a busy loop (generator steps per second of counter time, the fastest of a
//! few timed runs, before any other vCPU runs), takes the common start time and starts every
//! other vCPU of the schedule with `CPU_ON`. Each vCPU then replays its own list: it sleeps (the
//! virtual timer armed at the release, then WFI) until a job's release, computes for the job's
//! work as a number of calibrated steps (CPU time: a vCPU that loses its core meanwhile finishes
//! later, as a simulated one would), and counts the job, its work, and a miss if it finished
//! after release + deadline. Work is done in release order, so a job released while earlier work
//! is pending waits for it, as in the simulator. At the schedule's end (start + duration) every
//! vCPU stops, abandoning a job it is still computing and never starting the rest (the simulator
//! does no work after the duration either). vCPU 0 sleeps until then, collects the counts and
//! prints them:
//!
//! ```text
//! player: vcpus=2 duration_ms=2000 jobs=400 steps_per_ms=...
//! player: vcpu 0 jobs=200 misses=0 work_us=400000
//! player: vcpu 1 jobs=200 misses=0 work_us=400000
//! player: done vcpus=2
//! RESULT: PASS
//! ```
//!
//! Misses are reported, not failures. It fails on a missing or malformed schedule, a schedule
//! for another number of vCPUs than the guest has, or a vCPU that cannot be started.

#![no_std]
#![no_main]
#![deny(unsafe_code)]

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use guest_rt::sync::SpinLock;
use guest_rt::{cpu_index, ensure, fail, gic, mem, println, psci, timer, Fail, MAX_VCPUS};

guest_rt::guest_main!(main);

/// The schedule's first bytes.
const MAGIC: [u8; 4] = *b"DPLY";
/// The schedule format this player reads.
const VERSION: u32 = 1;
const HEADER_LEN: usize = 24;
const TABLE_ENTRY_LEN: usize = 8;
const ENTRY_LEN: usize = 24;

/// Generator steps per calibration run, and how many timed runs. Short runs, many of them: a run is about 1 ms under QEMU, shorter than a timeslice, so the
/// fastest of them ran without being preempted even when another guest shares the core.
const SAMPLE: u64 = 10_000;
const TRIES: usize = 25;
/// The sleep before each calibration run, in microseconds.
const SPREAD_US: u64 = 1_000;
/// The busy loop looks at the clock (for the schedule's end) this often, in microseconds of work.
const CHUNK_US: u64 = 100;
/// How long vCPU 0 waits after the end for the others to hand in their counts.
const COLLECT_MS: u64 = 5_000;

/// The schedule, validated by vCPU 0 before it starts the others.
static SCHEDULE: SpinLock<Option<Schedule>> = SpinLock::new(None);
/// Counter value of the common start, and of the end (start + duration).
static START: AtomicU64 = AtomicU64::new(0);
static END: AtomicU64 = AtomicU64::new(0);
/// Generator steps per second of counter time.
static RATE: AtomicU64 = AtomicU64::new(0);
/// Per vCPU: jobs done, deadline misses, work done (ns), whether it has handed them in.
static JOBS: [AtomicU64; MAX_VCPUS] = [const { AtomicU64::new(0) }; MAX_VCPUS];
static MISSES: [AtomicU64; MAX_VCPUS] = [const { AtomicU64::new(0) }; MAX_VCPUS];
static WORK_NS: [AtomicU64; MAX_VCPUS] = [const { AtomicU64::new(0) }; MAX_VCPUS];
static DONE: [AtomicBool; MAX_VCPUS] = [const { AtomicBool::new(false) }; MAX_VCPUS];
/// Per vCPU: its timer fired since it was last armed.
static FIRED: [AtomicBool; MAX_VCPUS] = [const { AtomicBool::new(false) }; MAX_VCPUS];

/// A validated schedule blob.
#[derive(Clone, Copy)]
struct Schedule {
    blob: &'static [u8],
    vcpus: usize,
    duration_ns: u64,
}

/// One job.
#[derive(Clone, Copy)]
struct Job {
    release_ns: u64,
    work_ns: u64,
    /// 0: none.
    deadline_ns: u64,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl Schedule {
    /// Checks the header, the table and every entry: each vCPU's entries lie after the table
    /// and the vCPUs before it, inside the blob, 8-byte aligned; releases go forward and come
    /// before the duration.
    fn parse(blob: &'static [u8]) -> Result<Schedule, Fail> {
        ensure!(blob.len() >= HEADER_LEN, "schedule: {} bytes, no room for the header", blob.len());
        ensure!(blob[..4] == MAGIC, "schedule: bad magic {:02x?} (expected \"DPLY\")", &blob[..4]);
        let version = u32_at(blob, 4);
        ensure!(version == VERSION, "schedule: version {}, the player reads {}", version, VERSION);
        let vcpus = u32_at(blob, 8) as usize;
        ensure!((1..=MAX_VCPUS).contains(&vcpus), "schedule: {} vCPUs, the player runs 1 to {}", vcpus, MAX_VCPUS);
        ensure!(u32_at(blob, 12) == 0, "schedule: reserved word {:#x} is not 0", u32_at(blob, 12));
        let schedule = Schedule { blob, vcpus, duration_ns: u64_at(blob, 16) };
        let mut next = HEADER_LEN + vcpus * TABLE_ENTRY_LEN;
        for v in 0..vcpus {
            let (offset, count) = schedule.list(v);
            let end = offset + count * ENTRY_LEN;
            ensure!(
                offset >= next && offset % 8 == 0 && end <= blob.len(),
                "schedule: vCPU {}: {} entries at {} lie outside {}..{}",
                v,
                count,
                offset,
                next,
                blob.len()
            );
            let mut last = 0;
            for k in 0..count {
                let job = schedule.job(v, k);
                ensure!(
                    job.release_ns >= last && job.release_ns < schedule.duration_ns,
                    "schedule: vCPU {} entry {}: release {} ns is out of order or not before the end",
                    v,
                    k,
                    job.release_ns
                );
                last = job.release_ns;
            }
            next = end;
        }
        Ok(schedule)
    }

    /// vCPU `v`'s first entry (byte offset) and entry count.
    fn list(&self, v: usize) -> (usize, usize) {
        let at = HEADER_LEN + v * TABLE_ENTRY_LEN;
        (u32_at(self.blob, at) as usize, u32_at(self.blob, at + 4) as usize)
    }

    /// Entry `k` of vCPU `v` (in bounds: checked by `parse`).
    fn job(&self, v: usize, k: usize) -> Job {
        let at = self.list(v).0 + k * ENTRY_LEN;
        Job {
            release_ns: u64_at(self.blob, at),
            work_ns: u64_at(self.blob, at + 8),
            deadline_ns: u64_at(self.blob, at + 16),
        }
    }

    fn jobs(&self) -> usize {
        (0..self.vcpus).map(|v| self.list(v).1).sum()
    }
}

/// Counter ticks in `ns` nanoseconds.
fn ticks(ns: u64) -> u64 {
    (u128::from(ns) * u128::from(timer::frequency()) / 1_000_000_000).min(u128::from(u64::MAX)) as u64
}

/// Generator steps per second of counter time on this vCPU: the fastest of a few timed runs
/// (the one least disturbed), after a warm-up (QEMU translates the loop on its first run). The
/// runs are spread over some 25 ms (a short sleep between two), so that a burst of work
/// elsewhere on the host or the core (another guest starting) cannot disturb all of them.
fn calibrate() -> u64 {
    guest_rt::work::steps(SAMPLE, 1);
    let mut best = u64::MAX;
    for i in 0..TRIES as u64 {
        sleep_until(timer::now() + timer::ticks_from_us(SPREAD_US));
        let start = timer::now();
        guest_rt::work::steps(SAMPLE, i + 2);
        best = best.min((timer::now() - start).max(1));
    }
    (u128::from(SAMPLE) * u128::from(timer::frequency()) / u128::from(best)).max(1) as u64
}

/// The virtual timer's interrupt. As Linux's arch timer driver does, it acknowledges (disables)
/// the timer only if the timer says it fired (`ISTATUS`); any other timer interrupt is spurious
/// and changes nothing, so the sleeper goes on waiting and the timer stays armed. (Under QEMU's
/// TCG, `ISTATUS` can lag the counter: an interrupt raised from the counter alone may arrive
/// before it. Disabling the timer then would leave a line that never rose and never falls.)
fn on_timer(_intid: u32) {
    if timer::pending() {
        timer::disable();
        FIRED[cpu_index()].store(true, Ordering::Release);
    }
}

/// Sleeps until the counter reaches `target`: arms the virtual timer for it and waits (WFI)
/// until the timer has fired.
fn sleep_until(target: u64) {
    if timer::now() >= target {
        return;
    }
    let fired = &FIRED[cpu_index()];
    fired.store(false, Ordering::Relaxed);
    timer::set_cval(target);
    gic::wait_until(|| fired.load(Ordering::Acquire));
}

/// Computes for `work_ns` of CPU time at `rate` steps per second; false if the counter reached
/// `end` first (the rest is abandoned).
fn work(work_ns: u64, rate: u64, end: u64, seed: u64) -> bool {
    let mut left = (u128::from(work_ns) * u128::from(rate) / 1_000_000_000) as u64;
    let chunk = (rate / (1_000_000 / CHUNK_US)).max(1);
    let mut x = seed;
    while left > 0 {
        if timer::now() >= end {
            return false;
        }
        let n = left.min(chunk);
        x = guest_rt::work::steps(n, x);
        left -= n;
    }
    true
}

/// Replays vCPU `me`'s jobs and hands in its counts.
fn replay(schedule: &Schedule, me: usize) {
    let start = START.load(Ordering::Acquire);
    let end = END.load(Ordering::Acquire);
    let rate = RATE.load(Ordering::Acquire);
    let (mut jobs, mut misses, mut work_ns) = (0u64, 0u64, 0u64);
    for k in 0..schedule.list(me).1 {
        let job = schedule.job(me, k);
        let release = start.saturating_add(ticks(job.release_ns));
        sleep_until(release);
        if !work(job.work_ns, rate, end, k as u64) {
            break;
        }
        let done = timer::now();
        jobs += 1;
        work_ns += job.work_ns;
        if job.deadline_ns != 0 && done > release.saturating_add(ticks(job.deadline_ns)) {
            misses += 1;
        }
    }
    JOBS[me].store(jobs, Ordering::Relaxed);
    MISSES[me].store(misses, Ordering::Relaxed);
    WORK_NS[me].store(work_ns, Ordering::Relaxed);
    DONE[me].store(true, Ordering::Release);
}

/// Where `CPU_ON` starts vCPU `index`.
fn secondary(index: u64) -> ! {
    let me = cpu_index();
    if me as u64 != index {
        guest_rt::finish(Err(fail!("cpu_on context {} arrived on cpu {}", index, me)));
    }
    let schedule = *SCHEDULE.lock();
    let Some(schedule) = schedule else {
        guest_rt::finish(Err(fail!("cpu {} started before the schedule was set", me)));
    };
    gic::init();
    replay(&schedule, me);
    let err = psci::cpu_off();
    println!("player: cpu {} CPU_OFF returned {:?}", me, err);
    guest_rt::halt()
}

fn main(x0: u64) -> Result<(), Fail> {
    ensure!(cpu_index() == 0, "booted on cpu {}", cpu_index());
    let blob = mem::data_blob(x0).ok_or_else(|| {
        fail!("no schedule (x0={:#x}): the player runs under the hypervisor, its demand as data blob", x0)
    })?;
    let schedule = Schedule::parse(blob)?;
    gic::init();
    let vcpus = gic::redistributor_count();
    ensure!(vcpus == schedule.vcpus, "the schedule is for {} vCPUs, this guest has {}", schedule.vcpus, vcpus);
    gic::set_handler(timer::VTIMER_INTID, on_timer);

    let rate = calibrate();
    println!(
        "player: vcpus={} duration_ms={} jobs={} steps_per_ms={}",
        vcpus,
        schedule.duration_ns / 1_000_000,
        schedule.jobs(),
        rate / 1000
    );
    *SCHEDULE.lock() = Some(schedule);
    RATE.store(rate, Ordering::Release);
    let start = timer::now();
    let end = start.saturating_add(ticks(schedule.duration_ns));
    START.store(start, Ordering::Release);
    END.store(end, Ordering::Release);
    for v in 1..vcpus {
        psci::cpu_on(v as u64, secondary, v as u64).map_err(|e| fail!("CPU_ON of vCPU {} failed: {:?}", v, e))?;
    }

    replay(&schedule, 0);
    // The schedule's duration passes on vCPU 0 too, then every vCPU has stopped or is about to.
    sleep_until(end);
    let give_up = timer::now().saturating_add(ticks(COLLECT_MS * 1_000_000));
    while !(0..vcpus).all(|v| DONE[v].load(Ordering::Acquire)) {
        ensure!(timer::now() < give_up, "a vCPU did not stop within {} ms of the end", COLLECT_MS);
        sleep_until(timer::now() + ticks(1_000_000));
    }
    timer::disable();
    gic::irq_disable();
    for v in 0..vcpus {
        println!(
            "player: vcpu {} jobs={} misses={} work_us={}",
            v,
            JOBS[v].load(Ordering::Relaxed),
            MISSES[v].load(Ordering::Relaxed),
            WORK_NS[v].load(Ordering::Relaxed) / 1000
        );
    }
    println!("player: done vcpus={}", vcpus);
    Ok(())
}
