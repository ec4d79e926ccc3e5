//! `spin`: every vCPU busy for a fixed time, for testing CPU shares.
//!
//! The boot vCPU sets a common end time `GUEST_SPIN_MS` (default 2000) milliseconds of counter
//! time ahead, starts vCPUs 1, 2, ... with `CPU_ON` until one answers `INVALID_PARAMETERS` (at
//! most 7 secondaries), and then every vCPU computes in rounds of `GUEST_SPIN_ROUND`
//! generator steps (default 20000) until the end time. No vCPU ever waits, so each one is
//! always runnable: the share of the CPU each gets is the scheduler's decision, and the number
//! of rounds it completed shows it. The boot vCPU waits for the others to finish, prints one
//! line per vCPU and `spin: vcpus=N rounds=R`, and passes if every vCPU completed a round.
//!
//! ```text
//! spin: vcpus=2 spin_ms=2000 round=20000
//! spin: cpu 0 rounds=1234
//! spin: cpu 1 rounds=1190
//! spin: vcpus=2 rounds=2424
//! RESULT: PASS
//! ```

#![no_std]
#![no_main]
#![deny(unsafe_code)]

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use guest_rt::psci::{self, Error as PsciError};
use guest_rt::{cpu_index, ensure, fail, println, setting, timer, Fail, MAX_VCPUS};

guest_rt::guest_main!(main);

/// How long every vCPU computes, in milliseconds of counter time.
const SPIN_MS: u64 = setting(option_env!("GUEST_SPIN_MS"), 2000);
/// Generator steps per round.
const ROUND: u64 = setting(option_env!("GUEST_SPIN_ROUND"), 20_000);
/// HV_MARK id of a vCPU's end (value: its rounds).
const MARK_DONE: u32 = 5;

/// Counter value at which every vCPU stops.
static END: AtomicU64 = AtomicU64::new(0);
static ROUNDS: [AtomicU64; MAX_VCPUS] = [const { AtomicU64::new(0) }; MAX_VCPUS];
static DONE: [AtomicBool; MAX_VCPUS] = [const { AtomicBool::new(false) }; MAX_VCPUS];

/// Computes in rounds until the end time; returns the rounds done.
fn spin(seed: u64) -> u64 {
    let end = END.load(Ordering::Acquire);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut rounds = 0;
    while timer::now() < end {
        for _ in 0..ROUND {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x = core::hint::black_box(x);
        }
        rounds += 1;
    }
    rounds
}

fn finish_cpu(me: usize, rounds: u64) {
    ROUNDS[me].store(rounds, Ordering::Relaxed);
    guest_rt::hypercall::hv_mark(MARK_DONE, rounds);
    DONE[me].store(true, Ordering::Release);
}

fn secondary(index: u64) -> ! {
    let me = cpu_index();
    if me as u64 != index {
        guest_rt::finish(Err(fail!("cpu_on context {} arrived on cpu {}", index, me)));
    }
    finish_cpu(me, spin(index));
    guest_rt::halt()
}

fn main(_x0: u64) -> Result<(), Fail> {
    let me = cpu_index();
    ensure!(me == 0, "booted on cpu {}", me);
    END.store(timer::now() + timer::ticks_from_us(SPIN_MS * 1000), Ordering::Release);
    let mut vcpus = 1;
    for target in 1..MAX_VCPUS as u64 {
        match psci::cpu_on(target, secondary, target) {
            Ok(()) => vcpus += 1,
            Err(PsciError::InvalidParameters) => break,
            Err(e) => return Err(fail!("CPU_ON of cpu {} failed: {:?}", target, e)),
        }
    }
    println!("spin: vcpus={} spin_ms={} round={}", vcpus, SPIN_MS, ROUND);
    finish_cpu(me, spin(0));
    // Every vCPU stops at the same end time; give the others a while to notice it.
    let all_done = timer::wait_until(5000, || (0..vcpus).all(|i| DONE[i].load(Ordering::Acquire)));
    let mut total = 0;
    for (i, rounds) in ROUNDS.iter().enumerate().take(vcpus) {
        let rounds = rounds.load(Ordering::Relaxed);
        total += rounds;
        println!("spin: cpu {} rounds={}", i, rounds);
    }
    println!("spin: vcpus={} rounds={}", vcpus, total);
    ensure!(all_done, "not every vCPU finished");
    ensure!((0..vcpus).all(|i| ROUNDS[i].load(Ordering::Relaxed) > 0), "a vCPU completed no round");
    Ok(())
}
