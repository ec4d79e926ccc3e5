//! The generic timer: the system counter's frequency (CNTFRQ_EL0) and [`now`].

use core::sync::atomic::{AtomicU64, Ordering};

use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::{Readable, CNTFRQ_EL0, CNTPCT_EL0};
use vcpu_runtime::Instant;

static FREQUENCY_HZ: AtomicU64 = AtomicU64::new(0);
/// Nanoseconds per counter tick when that is a whole number (16 at QEMU's 62.5 MHz), else 0:
/// then [`now`] and the conversions multiply or divide by it, which gives exactly what the
/// general 128-bit formulas give, without a 128-bit division on every exit.
static NANOS_PER_TICK: AtomicU64 = AtomicU64::new(0);

/// Reads the counter frequency once, on the boot core.
pub(crate) fn init() {
    let hz = CNTFRQ_EL0.get();
    FREQUENCY_HZ.store(hz, Ordering::Relaxed);
    if hz != 0 && hz <= NANOS_PER_SEC && NANOS_PER_SEC % hz == 0 {
        NANOS_PER_TICK.store(NANOS_PER_SEC / hz, Ordering::Relaxed);
    }
}

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// [`NANOS_PER_TICK`] if it applies to `frequency_hz` (the counter's own frequency).
fn whole_nanos_per_tick(frequency_hz: u64) -> Option<u64> {
    let k = NANOS_PER_TICK.load(Ordering::Relaxed);
    (k != 0 && frequency_hz == FREQUENCY_HZ.load(Ordering::Relaxed)).then_some(k)
}

/// The system counter's frequency in Hz (62.5 MHz on QEMU's virt board).
pub fn frequency_hz() -> u64 {
    match FREQUENCY_HZ.load(Ordering::Relaxed) {
        0 => CNTFRQ_EL0.get(),
        f => f,
    }
}

/// The counter now, without a barrier (for a comparison with a timer's compare value, which the
/// counter reaches by itself).
pub fn counter() -> u64 {
    CNTPCT_EL0.get()
}

/// The loaded vCPU's virtual counter (`CNTVCT_EL0` = physical count − `CNTVOFF_EL2`), without a
/// barrier.
pub fn virtual_counter() -> u64 {
    aarch64_cpu::registers::CNTVCT_EL0.get()
}

/// The system counter (CNTPCT_EL0), read after an ISB so the read is not hoisted above
/// earlier instructions.
pub fn ticks() -> u64 {
    barrier::isb(barrier::SY);
    CNTPCT_EL0.get()
}

/// Converts counter ticks to nanoseconds at `frequency_hz` (without overflow for any `u64`).
pub fn ticks_to_nanos(ticks: u64, frequency_hz: u64) -> u64 {
    if frequency_hz == 0 {
        return 0;
    }
    if let Some(k) = whole_nanos_per_tick(frequency_hz) {
        // ticks · 10^9 / f = ticks · k exactly; the cast below keeps the low 64 bits as well.
        return ticks.wrapping_mul(k);
    }
    (u128::from(ticks) * 1_000_000_000 / u128::from(frequency_hz)) as u64
}

/// Monotonic time since the counter started (machine reset), in nanoseconds: the clock of the
/// trace events.
pub fn now() -> Instant {
    Instant(own_ticks_to_nanos(ticks()))
}

/// [`ticks_to_nanos`] at the counter's own frequency.
fn own_ticks_to_nanos(ticks: u64) -> u64 {
    match NANOS_PER_TICK.load(Ordering::Relaxed) {
        0 => ticks_to_nanos(ticks, frequency_hz()),
        k => ticks.wrapping_mul(k),
    }
}

/// Converts nanoseconds to counter ticks at `frequency_hz`, rounding up (so a deadline in ticks
/// is never earlier than the one in nanoseconds).
pub fn nanos_to_ticks(nanos: u64, frequency_hz: u64) -> u64 {
    if let Some(k) = whole_nanos_per_tick(frequency_hz) {
        // ⌈nanos · f / 10^9⌉ = ⌈nanos / k⌉, never more than u64::MAX.
        return nanos.div_ceil(k);
    }
    let t = (u128::from(nanos) * u128::from(frequency_hz)).div_ceil(1_000_000_000);
    t.min(u128::from(u64::MAX)) as u64
}

/// The instant at which the system counter reads `ticks`.
pub fn instant_of_ticks(ticks: u64) -> Instant {
    Instant(own_ticks_to_nanos(ticks))
}

crate::sysreg::sysreg_write!(fn write_cnthp_cval_el2 = "cnthp_cval_el2");
crate::sysreg::sysreg_write!(fn write_cnthp_ctl_el2 = "cnthp_ctl_el2");

/// Arms the EL2 physical timer (CNTHP, PPI 26) to fire at `at` (at once if `at` is past).
pub fn arm_hyp_timer(at: Instant) {
    arm_hyp_timer_before_eret(at);
    barrier::isb(barrier::SY);
}

/// [`arm_hyp_timer`] right before an entry into a guest: the `ERET` synchronizes the writes
/// (IRQs are masked at EL2 until then), so no `ISB` of its own.
#[inline(always)]
pub fn arm_hyp_timer_before_eret(at: Instant) {
    let ticks = match NANOS_PER_TICK.load(Ordering::Relaxed) {
        0 => nanos_to_ticks(at.as_nanos(), frequency_hz()),
        k => at.as_nanos().div_ceil(k),
    };
    write_cnthp_cval_el2(ticks);
    write_cnthp_ctl_el2(1);
}

/// Disarms the EL2 physical timer: its interrupt line drops.
pub fn disarm_hyp_timer() {
    write_cnthp_ctl_el2(0);
    barrier::isb(barrier::SY);
}
