//! The EL1 virtual timer: counter `CNTVCT_EL0`, compare `CNTV_CVAL_EL0`/`CNTV_TVAL_EL0`,
//! control `CNTV_CTL_EL0`, interrupt PPI 27 ([`VTIMER_INTID`]).

use aarch64_cpu::registers::{Readable, Writeable, CNTFRQ_EL0, CNTVCT_EL0, CNTV_CTL_EL0, CNTV_CVAL_EL0, CNTV_TVAL_EL0};

/// The virtual timer's interrupt (docs/guest-abi.md).
pub const VTIMER_INTID: u32 = 27;

/// Counter frequency in Hz.
pub fn frequency() -> u64 {
    CNTFRQ_EL0.get()
}

/// The virtual counter now. An `isb` first, so the read is not hoisted above earlier work.
pub fn now() -> u64 {
    // SAFETY: an instruction barrier touches no memory.
    unsafe { core::arch::asm!("isb", options(nomem, nostack, preserves_flags)) };
    CNTVCT_EL0.get()
}

/// Counter ticks in `us` microseconds.
pub fn ticks_from_us(us: u64) -> u64 {
    (u128::from(us) * u128::from(frequency()) / 1_000_000) as u64
}

/// Microseconds in `ticks` counter ticks.
pub fn us_from_ticks(ticks: u64) -> u64 {
    (u128::from(ticks) * 1_000_000 / u128::from(frequency().max(1))) as u64
}

/// Fires the timer `ticks` from now (`CNTV_TVAL_EL0`) and enables it, unmasked.
pub fn set_tval(ticks: u32) {
    CNTV_TVAL_EL0.set(u64::from(ticks));
    enable();
}

/// Fires the timer when the counter reaches `deadline` (`CNTV_CVAL_EL0`) and enables it,
/// unmasked.
pub fn set_cval(deadline: u64) {
    CNTV_CVAL_EL0.set(deadline);
    enable();
}

/// The current compare value.
pub fn cval() -> u64 {
    CNTV_CVAL_EL0.get()
}

/// Enables the timer with its interrupt unmasked.
pub fn enable() {
    CNTV_CTL_EL0.write(CNTV_CTL_EL0::ENABLE::SET + CNTV_CTL_EL0::IMASK::CLEAR);
}

/// Disables the timer (its interrupt line drops).
pub fn disable() {
    CNTV_CTL_EL0.write(CNTV_CTL_EL0::ENABLE::CLEAR + CNTV_CTL_EL0::IMASK::SET);
}

/// Whether the timer condition is met (`CNTV_CTL_EL0.ISTATUS`).
pub fn pending() -> bool {
    CNTV_CTL_EL0.is_set(CNTV_CTL_EL0::ISTATUS)
}

/// A point in counter time to wait for.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(u64);

impl Deadline {
    /// `ms` milliseconds from now.
    pub fn after_ms(ms: u64) -> Self {
        Deadline(now() + ticks_from_us(ms * 1000))
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        now() >= self.0
    }
}

/// Spins until `cond` holds or `ms` milliseconds have passed; returns whether it held.
pub fn wait_until(ms: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Deadline::after_ms(ms);
    loop {
        if cond() {
            return true;
        }
        if deadline.expired() {
            return cond();
        }
        core::hint::spin_loop();
    }
}

/// Busy-waits for `us` microseconds of counter time.
pub fn delay_us(us: u64) {
    let end = now() + ticks_from_us(us);
    while now() < end {
        core::hint::spin_loop();
    }
}
