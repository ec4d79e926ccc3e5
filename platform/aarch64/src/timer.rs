//! The generic timer: the system counter's frequency (CNTFRQ_EL0) and [`now`].

use core::sync::atomic::{AtomicU64, Ordering};

use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::{Readable, CNTFRQ_EL0, CNTPCT_EL0};
use vcpu_runtime::Instant;

static FREQUENCY_HZ: AtomicU64 = AtomicU64::new(0);

/// Reads the counter frequency once, on the boot core.
pub(crate) fn init() {
    FREQUENCY_HZ.store(CNTFRQ_EL0.get(), Ordering::Relaxed);
}

/// The system counter's frequency in Hz (62.5 MHz on QEMU's virt board).
pub fn frequency_hz() -> u64 {
    match FREQUENCY_HZ.load(Ordering::Relaxed) {
        0 => CNTFRQ_EL0.get(),
        f => f,
    }
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
    (u128::from(ticks) * 1_000_000_000 / u128::from(frequency_hz)) as u64
}

/// Monotonic time since the counter started (machine reset), in nanoseconds: the clock of the
/// trace events.
pub fn now() -> Instant {
    Instant(ticks_to_nanos(ticks(), frequency_hz()))
}

/// Converts nanoseconds to counter ticks at `frequency_hz`, rounding up (so a deadline in ticks
/// is never earlier than the one in nanoseconds).
pub fn nanos_to_ticks(nanos: u64, frequency_hz: u64) -> u64 {
    let t = (u128::from(nanos) * u128::from(frequency_hz)).div_ceil(1_000_000_000);
    t.min(u128::from(u64::MAX)) as u64
}

/// The instant at which the system counter reads `ticks`.
pub fn instant_of_ticks(ticks: u64) -> Instant {
    Instant(ticks_to_nanos(ticks, frequency_hz()))
}

crate::sysreg::sysreg_write!(fn write_cnthp_cval_el2 = "cnthp_cval_el2");
crate::sysreg::sysreg_write!(fn write_cnthp_ctl_el2 = "cnthp_ctl_el2");

/// Arms the EL2 physical timer (CNTHP, PPI 26) to fire at `at` (at once if `at` is past).
pub fn arm_hyp_timer(at: Instant) {
    write_cnthp_cval_el2(nanos_to_ticks(at.as_nanos(), frequency_hz()));
    write_cnthp_ctl_el2(1);
    barrier::isb(barrier::SY);
}

/// Disarms the EL2 physical timer: its interrupt line drops.
pub fn disarm_hyp_timer() {
    write_cnthp_ctl_el2(0);
    barrier::isb(barrier::SY);
}
