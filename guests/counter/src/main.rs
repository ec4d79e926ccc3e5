//! `counter`: a fixed amount of work in steps, with a progress line and an `HV_MARK` per step.
//!
//! Each step advances a xorshift64 generator `GUEST_COUNTER_WORK` times (default 1000000);
//! there are `GUEST_COUNTER_STEPS` steps (default 20), both settable at build time. After each
//! step it calls `HV_MARK(1, step)` and prints `progress N/STEPS state=...`. At the end it
//! recomputes the whole sequence in one go and checks it lands on the same state (a vCPU whose
//! registers or memory were disturbed between steps would not), then calls `HV_MARK(2, count)`.
//!
//! `HV_MARK` must answer 0 under the hypervisor and `NOT_SUPPORTED` on bare QEMU.

#![no_std]
#![no_main]
#![deny(unsafe_code)]

use guest_rt::{ensure, hypercall, println, setting, timer, Fail};

guest_rt::guest_main!(main);

/// Number of steps (progress lines).
const STEPS: u64 = setting(option_env!("GUEST_COUNTER_STEPS"), 20);
/// Generator steps per progress step.
const WORK: u64 = setting(option_env!("GUEST_COUNTER_WORK"), 1_000_000);
/// `HV_MARK` id of a progress step (value: the step number).
const MARK_PROGRESS: u32 = 1;
/// `HV_MARK` id of the end (value: the total count).
const MARK_DONE: u32 = 2;
const SEED: u64 = 0x9E37_79B9_7F4A_7C15;

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

fn main(_x0: u64) -> Result<(), Fail> {
    let expected = hypercall::expected_mark_answer();
    println!(
        "counter: steps={} work={} hv_mark expected={:#x} ({})",
        STEPS,
        WORK,
        expected,
        hypercall::answer_name(expected)
    );
    let start = timer::now();
    let mut state = SEED;
    let mut count = 0u64;
    for step in 1..=STEPS {
        for _ in 0..WORK {
            state = xorshift(core::hint::black_box(state));
            count += 1;
        }
        let answer = hypercall::hv_mark(MARK_PROGRESS, step);
        ensure!(
            answer == expected,
            "HV_MARK({}, {}) returned {:#x}, expected {:#x}",
            MARK_PROGRESS,
            step,
            answer,
            expected
        );
        println!("progress {}/{} state={:#018x}", step, STEPS, state);
    }
    let elapsed_us = timer::us_from_ticks(timer::now() - start);

    ensure!(count == STEPS * WORK, "count {} != {}", count, STEPS * WORK);
    let mut check = SEED;
    for _ in 0..count {
        check = xorshift(core::hint::black_box(check));
    }
    ensure!(check == state, "state {:#x} != recomputed {:#x}", state, check);
    let answer = hypercall::hv_mark(MARK_DONE, count);
    ensure!(answer == expected, "HV_MARK({}, {}) returned {:#x}, expected {:#x}", MARK_DONE, count, answer, expected);
    println!("counter: done count={} state={:#018x} elapsed_ms={}", count, state, elapsed_us / 1000);
    Ok(())
}
