//! The platform's spin lock: `spin`'s mutex with `yield` as the wait hint.
//!
//! `spin`'s default hint is `core::hint::spin_loop()`, an `isb` on aarch64. Under QEMU's TCG
//! with `-icount` the cores run one at a time, in turn, and a core spinning on a lock held by
//! a core that is not running spins until its turn ends, which can be a long way off (the
//! `HV_BENCH` IPI window once counted 250 EL2 instructions per operation of a sender spinning
//! on the VM's vGIC lock). QEMU ends a core's turn at a `yield`, so the holder runs and lets the
//! lock go. On hardware `yield` is the architecture's hint for a spin-wait (SMT cores give the
//! other thread the pipeline); it costs what the `isb` did.

/// `spin::RelaxStrategy` with the `yield` hint.
pub struct YieldHint;

impl spin::RelaxStrategy for YieldHint {
    #[inline(always)]
    fn relax() {
        // SAFETY: `yield` is a hint; it touches no memory and no register.
        unsafe { core::arch::asm!("yield", options(nomem, nostack, preserves_flags)) };
    }
}

/// A spin lock that waits with [`YieldHint`]; its guard is `spin::MutexGuard`.
pub type Mutex<T> = spin::mutex::Mutex<T, YieldHint>;
