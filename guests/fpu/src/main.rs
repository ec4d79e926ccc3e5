//! `fpu`: checks that a vCPU's FP/SIMD registers are its own after every time it gave the core
//! away.
//!
//! Every vCPU (the boot vCPU starts the others with `CPU_ON` until one answers
//! `INVALID_PARAMETERS`, at most 7) runs `GUEST_FPU_ROUNDS` rounds (default 300): it writes a
//! pattern of its own into Q0-Q31, FPCR and FPSR, gives the core away (an `HV_YIELD`, and every
//! fourth round a busy wait of 1-2 ms of counter time on top, long enough for timeslices to end
//! and for the hypervisor to move it), reads the registers back and compares. The patterns come
//! from the counter at start and the vCPU's index, so every vCPU of every guest has different
//! values: another vCPU's registers, or stale ones of this vCPU, are caught. The boot vCPU waits
//! for the others, prints one line per vCPU and passes if no round found a difference.
//!
//! ```text
//! fpu: vcpus=2 rounds=300
//! fpu: cpu 0 rounds=300 mismatches=0
//! fpu: cpu 1 rounds=300 mismatches=0
//! RESULT: PASS
//! ```
//!
//! A mismatch prints `fpu: cpu N round R: <register> is <value>, wrote <value>` (the first
//! differing register) and fails the guest.

#![no_std]
#![no_main]
#![deny(unsafe_code)]

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use guest_rt::fp::{self, FpState, FPCR_BITS, FPSR_BITS};
use guest_rt::psci::{self, Error as PsciError};
use guest_rt::{cpu_index, ensure, fail, hypercall, println, setting, timer, Fail, MAX_VCPUS};

guest_rt::guest_main!(main);

/// Rounds every vCPU runs.
const ROUNDS: u64 = setting(option_env!("GUEST_FPU_ROUNDS"), 300);

static SEED: AtomicU64 = AtomicU64::new(0);
static MISMATCHES: [AtomicU64; MAX_VCPUS] = [const { AtomicU64::new(0) }; MAX_VCPUS];
static DONE: [AtomicBool; MAX_VCPUS] = [const { AtomicBool::new(false) }; MAX_VCPUS];

/// A 64-bit mix (splitmix64's finalizer).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What vCPU `me` writes in `round`.
fn pattern(me: usize, round: u64) -> FpState {
    let base = mix(SEED.load(Ordering::Relaxed) ^ ((me as u64) << 48) ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut state = FpState { v: [0; 32], fpcr: 0, fpsr: 0 };
    for (i, v) in state.v.iter_mut().enumerate() {
        let lo = mix(base.wrapping_add(2 * i as u64));
        let hi = mix(base.wrapping_add(2 * i as u64 + 1));
        *v = (u128::from(hi) << 64) | u128::from(lo);
    }
    state.fpcr = mix(base ^ 0xF0) & FPCR_BITS;
    state.fpsr = mix(base ^ 0xF1) & FPSR_BITS;
    state
}

/// The first register where `got` differs from `want`, as text.
fn report(me: usize, round: u64, got: &FpState, want: &FpState) {
    if let Some(i) = (0..32).find(|&i| got.v[i] != want.v[i]) {
        println!("fpu: cpu {} round {}: q{} is {:#034x}, wrote {:#034x}", me, round, i, got.v[i], want.v[i]);
    } else if got.fpcr != want.fpcr {
        println!("fpu: cpu {} round {}: fpcr is {:#x}, wrote {:#x}", me, round, got.fpcr, want.fpcr);
    } else {
        println!("fpu: cpu {} round {}: fpsr is {:#x}, wrote {:#x}", me, round, got.fpsr, want.fpsr);
    }
}

/// Busy for `us` microseconds of counter time.
fn busy(us: u64) {
    let end = timer::now() + timer::ticks_from_us(us);
    while timer::now() < end {
        core::hint::spin_loop();
    }
}

/// The rounds of vCPU `me`; returns its mismatches.
fn rounds(me: usize) -> u64 {
    fp::enable();
    let mut mismatches = 0;
    for round in 0..ROUNDS {
        let want = pattern(me, round);
        fp::write(&want);
        core::hint::black_box(hypercall::hv_yield());
        if round % 4 == 3 {
            busy(1000 + 250 * (me as u64 % 4));
        }
        let got = fp::read();
        if got != want {
            if mismatches < 4 {
                report(me, round, &got, &want);
            }
            mismatches += 1;
        }
    }
    mismatches
}

fn finish_cpu(me: usize, mismatches: u64) {
    MISMATCHES[me].store(mismatches, Ordering::Relaxed);
    DONE[me].store(true, Ordering::Release);
}

fn secondary(_context: u64) -> ! {
    let me = cpu_index();
    finish_cpu(me, rounds(me));
    let error: PsciError = psci::cpu_off();
    guest_rt::finish(Err(fail!("CPU_OFF returned {:?}", error)));
}

fn main(_x0: u64) -> Result<(), Fail> {
    SEED.store(mix(timer::now()), Ordering::Relaxed);
    let mut vcpus = 1;
    while vcpus < MAX_VCPUS {
        match psci::cpu_on(vcpus as u64, secondary, 0) {
            Ok(()) => vcpus += 1,
            Err(PsciError::InvalidParameters) => break,
            Err(e) => return Err(fail!("CPU_ON of vCPU {} failed: {:?}", vcpus, e)),
        }
    }
    println!("fpu: vcpus={} rounds={}", vcpus, ROUNDS);
    finish_cpu(0, rounds(0));
    while !(0..vcpus).all(|i| DONE[i].load(Ordering::Acquire)) {
        core::hint::black_box(hypercall::hv_yield());
    }
    let mut total = 0;
    for (i, m) in MISMATCHES.iter().enumerate().take(vcpus) {
        let m = m.load(Ordering::Relaxed);
        println!("fpu: cpu {} rounds={} mismatches={}", i, ROUNDS, m);
        total += m;
    }
    ensure!(total == 0, "{} rounds found FP/SIMD registers changed", total);
    Ok(())
}
