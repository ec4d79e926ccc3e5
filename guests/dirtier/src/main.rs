//! `dirtier`: dirties its free RAM round after round, as a workload for live migration.
//!
//! It takes `GUEST_DIRTIER_MIB` MiB (default 8) of the RAM above its image (from
//! `0x4048_0000`, so the guest needs `memory_mib` >= 5 + that) and, for `GUEST_DIRTIER_ROUNDS`
//! rounds (default 60), writes a pattern that depends on the round and on each word's address,
//! then reads it all back and checks it. Before each round's writes it also checks that the
//! previous round's pattern is still intact (memory carried over a migration must be). After
//! each round it calls `HV_MARK(4, round)` and prints `dirtier round R/K ok ...`.

#![no_std]
#![no_main]
#![deny(unsafe_code)]

use guest_rt::{ensure, fail, hypercall, mem, println, setting, timer, Fail};

guest_rt::guest_main!(main);

const MIB: u64 = setting(option_env!("GUEST_DIRTIER_MIB"), 8);
const ROUNDS: u64 = setting(option_env!("GUEST_DIRTIER_ROUNDS"), 60);
/// `HV_MARK` id of a finished round (value: the round number).
const MARK_ROUND: u32 = 4;

/// The word expected at index `i` after round `round`.
fn pattern(round: u64, i: usize) -> u64 {
    let x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ round.wrapping_mul(0xD1B5_4A32_D192_ED03);
    x ^ (x >> 29)
}

/// The first word of `words` that differs from round `round`'s pattern.
fn check(words: &[u64], round: u64) -> Result<(), Fail> {
    match words.iter().enumerate().find(|&(i, &w)| w != pattern(round, i)) {
        None => Ok(()),
        Some((i, &w)) => Err(fail!(
            "round {}: word {} at {:#x} is {:#x}, expected {:#x}",
            round,
            i,
            mem::SCRATCH_BASE + 8 * i as u64,
            w,
            pattern(round, i)
        )),
    }
}

fn main(_x0: u64) -> Result<(), Fail> {
    let bytes = (MIB * 1024 * 1024) as usize;
    let words = mem::scratch(bytes).ok_or_else(|| fail!("cannot have {} MiB of scratch RAM", MIB))?;
    let expected = hypercall::expected_mark_answer();
    println!("dirtier: {} MiB at {:#x}, {} rounds", MIB, mem::SCRATCH_BASE, ROUNDS);
    let start = timer::now();
    for round in 1..=ROUNDS {
        if round > 1 {
            check(words, round - 1)?;
        }
        let round_start = timer::now();
        for (i, w) in words.iter_mut().enumerate() {
            *w = pattern(round, i);
        }
        check(words, round)?;
        let answer = hypercall::hv_mark(MARK_ROUND, round);
        ensure!(
            answer == expected,
            "HV_MARK({}, {}) returned {:#x}, expected {:#x}",
            MARK_ROUND,
            round,
            answer,
            expected
        );
        println!(
            "dirtier round {}/{} ok mib={} round_ms={}",
            round,
            ROUNDS,
            MIB,
            timer::us_from_ticks(timer::now() - round_start) / 1000
        );
    }
    println!(
        "dirtier: done rounds={} dirtied_mib={} elapsed_ms={}",
        ROUNDS,
        ROUNDS * MIB,
        timer::us_from_ticks(timer::now() - start) / 1000
    );
    Ok(())
}
