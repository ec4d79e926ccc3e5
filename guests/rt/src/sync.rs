//! A spin lock for data shared between vCPUs and with interrupt handlers.
//!
//! Taking the lock masks IRQs on this vCPU (and restores the previous mask on release), so an
//! interrupt handler that takes the same lock can never deadlock against the code it
//! interrupted. The lock records its owner so that a fatal path can tell that the lock is held
//! by the very vCPU that is failing ([`SpinLock::held_by_me`]).

use aarch64_cpu::registers::{Readable, DAIF};
use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicUsize, Ordering};

/// No owner.
const FREE: usize = 0;

/// A spin lock whose guard masks IRQs on the holding vCPU.
pub struct SpinLock<T> {
    /// `FREE`, or the owner's `cpu_index() + 1`.
    owner: AtomicUsize,
    data: UnsafeCell<T>,
}

// SAFETY: the lock hands out at most one `&mut T` at a time (the owner field is taken with an
// acquire compare-exchange and released with a release store), so sharing the lock between
// vCPUs only needs `T` to be sendable between them.
unsafe impl<T: Send> Sync for SpinLock<T> {}

impl<T> SpinLock<T> {
    /// A new unlocked lock.
    pub const fn new(value: T) -> Self {
        SpinLock { owner: AtomicUsize::new(FREE), data: UnsafeCell::new(value) }
    }

    /// Takes the lock, spinning until it is free; IRQs stay masked while the guard lives.
    ///
    /// Taking a lock that this vCPU already holds deadlocks; use [`try_lock`](Self::try_lock)
    /// where that can happen.
    pub fn lock(&self) -> SpinLockGuard<'_, T> {
        loop {
            if let Some(guard) = self.try_lock() {
                return guard;
            }
            while self.owner.load(Ordering::Relaxed) != FREE {
                core::hint::spin_loop();
            }
        }
    }

    /// Takes the lock if it is free.
    pub fn try_lock(&self) -> Option<SpinLockGuard<'_, T>> {
        let daif = DAIF.get();
        mask_irqs();
        let me = crate::cpu_index() + 1;
        if self.owner.compare_exchange(FREE, me, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            Some(SpinLockGuard { lock: self, daif })
        } else {
            restore_daif(daif);
            None
        }
    }

    /// Whether this vCPU holds the lock right now.
    pub fn held_by_me(&self) -> bool {
        self.owner.load(Ordering::Relaxed) == crate::cpu_index() + 1
    }
}

/// Holds a [`SpinLock`]; releases it and restores the IRQ mask when dropped.
pub struct SpinLockGuard<'a, T> {
    lock: &'a SpinLock<T>,
    daif: u64,
}

impl<T> Deref for SpinLockGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while this vCPU owns the lock, so no other reference to
        // the data exists.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for SpinLockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this the only reference through the guard.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for SpinLockGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.owner.store(FREE, Ordering::Release);
        restore_daif(self.daif);
    }
}

/// Masks IRQs (and FIQs) on this vCPU.
///
/// The asm blocks here are deliberately not `nomem`: they must stay ordered with the lock's
/// atomic accesses (mask before taking, unmask after releasing).
pub(crate) fn mask_irqs() {
    // SAFETY: setting the I and F mask bits only delays interrupts; it touches no memory.
    unsafe { core::arch::asm!("msr daifset, #3", options(nostack, preserves_flags)) };
}

/// Restores a `DAIF` value read earlier on this vCPU.
pub(crate) fn restore_daif(daif: u64) {
    // SAFETY: writing back a DAIF value this vCPU had before only changes which exceptions are
    // masked; it touches no memory.
    unsafe { core::arch::asm!("msr daif, {}", in(reg) daif, options(nostack, preserves_flags)) };
}
