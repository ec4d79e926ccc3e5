//! CPU work for the test guests: a xorshift generator whose every step depends on the last, so
//! the work cannot be skipped or reordered, and whose value checks that it was done.

/// One generator step (xorshift64: shifts 13, 7, 17).
pub fn step(x: u64) -> u64 {
    let mut x = x;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// `steps` generator steps from `seed` (made odd, so never the fixed point 0); returns the last
/// value. Each step passes through `black_box`, so the compiler keeps every one.
pub fn steps(steps: u64, seed: u64) -> u64 {
    let mut x = seed | 1;
    for _ in 0..steps {
        x = core::hint::black_box(step(x));
    }
    x
}
