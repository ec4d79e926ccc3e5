//! The console: a PL011 UART that every core may print to, a whole line at a time.
//!
//! [`println!`](crate::println!) takes the console lock for the whole line (its formatting
//! included), so lines from different cores never interleave. Lines end with `\r\n` (a serial
//! console). Before [`init`], output is dropped.
//!
//! The panic and exception paths use [`crash_line`]: if the crashing core itself holds the
//! lock (it faulted or panicked in the middle of a line), the lock is taken over, which is sound
//! because the interrupted line is never resumed; if another core holds it for too long, the
//! line goes to the semihosting debug channel instead.

use core::fmt::{self, Write};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::sync::Mutex;
use arm_pl011_uart::{PL011Registers, Uart, UniqueMmioPointer};

use crate::{semihosting, smp, timer};

static UART: Mutex<Option<Uart<'static>>> = Mutex::new(None);

/// The UART's physical address once [`init`] ran (0 before): [`mmu::init`](crate::mmu::init)
/// refuses a map that would leave it out.
static BASE: AtomicUsize = AtomicUsize::new(0);

/// The core index holding [`UART`]'s lock, or [`NO_OWNER`]. Set by a core right after it takes
/// the lock and cleared right before it releases it, so a core reading its own index here knows
/// it is inside a line of its own.
static OWNER: AtomicUsize = AtomicUsize::new(NO_OWNER);
const NO_OWNER: usize = usize::MAX;

/// Prints one line to the console, atomically with respect to other cores' lines.
#[macro_export]
macro_rules! println {
    () => {
        $crate::console::print_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::console::print_line(format_args!($($arg)*))
    };
}

/// Starts the console on the PL011 at `base`. (The UART is used as the firmware left it: QEMU's
/// needs no set-up, and its baud rate clock is not known here.)
///
/// # Safety
///
/// `base` must be the physical address of a PL011's register block, mapped as device memory
/// in the current and every later translation map, and nothing else may access that UART.
pub unsafe fn init(base: usize) {
    let Some(regs) = NonNull::new(base as *mut PL011Registers) else {
        return;
    };
    // SAFETY: the caller promises `base` is a PL011 mapped as device memory that nothing else
    // accesses, so this is the one pointer to it, valid for the rest of the run.
    let uart = Uart::new(unsafe { UniqueMmioPointer::new(regs) });
    *UART.lock() = Some(uart);
    BASE.store(base, Ordering::Release);
}

/// The console UART's 4 KiB register block, once [`init`] ran.
pub fn mmio_region() -> Option<core::ops::Range<usize>> {
    match BASE.load(Ordering::Acquire) {
        0 => None,
        base => Some(base..base + 0x1000),
    }
}

/// Writes through to the UART, turning `\n` into `\r\n`.
struct Crlf<'a, 'u>(&'a mut Uart<'u>);

impl Write for Crlf<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for (i, part) in s.split('\n').enumerate() {
            if i > 0 {
                self.0.write_str("\r\n")?;
            }
            self.0.write_str(part)?;
        }
        Ok(())
    }
}

/// Prints `args` and a line end while holding the console lock. Used by
/// [`println!`](crate::println!).
///
/// # Panics
///
/// If called while formatting a line on the same core (a `Display` impl that prints): that
/// would deadlock.
pub fn print_line(args: fmt::Arguments<'_>) {
    let me = smp::current_core_index();
    assert!(OWNER.load(Ordering::Relaxed) != me, "println! while printing a line on core {me}");
    let mut uart = UART.lock();
    OWNER.store(me, Ordering::Relaxed);
    if let Some(uart) = uart.as_mut() {
        let mut w = Crlf(uart);
        let _ = w.write_fmt(args);
        let _ = w.write_str("\n");
    }
    OWNER.store(NO_OWNER, Ordering::Relaxed);
}

/// Prints a line on the way out of the run (panic or exception): never blocks for long, and
/// works even if this core was interrupted in the middle of a line. Callers never return to
/// the code they interrupted.
pub(crate) fn crash_line(args: fmt::Arguments<'_>) {
    let me = smp::current_core_index();
    if OWNER.load(Ordering::Relaxed) == me {
        // SAFETY: this core holds the lock: only this core stores its own index in OWNER, right
        // after taking the lock, and clears it before releasing it. The code holding the guard
        // was interrupted by this panic or exception and never resumes (both paths end the run),
        // so its guard is never used or dropped again and nobody else holds the lock.
        unsafe { UART.force_unlock() };
        OWNER.store(NO_OWNER, Ordering::Relaxed);
    }
    // Another core may be in the middle of a line; give it 100 ms to finish.
    let patience = timer::frequency_hz() / 10;
    let start = timer::ticks();
    loop {
        if let Some(mut uart) = UART.try_lock() {
            OWNER.store(me, Ordering::Relaxed);
            if let Some(uart) = uart.as_mut() {
                let mut w = Crlf(uart);
                let _ = w.write_fmt(args);
                let _ = w.write_str("\n");
                OWNER.store(NO_OWNER, Ordering::Relaxed);
                return;
            }
            OWNER.store(NO_OWNER, Ordering::Relaxed);
            break;
        }
        if timer::ticks().wrapping_sub(start) > patience {
            break;
        }
        core::hint::spin_loop();
    }
    // No console: the semihosting debug channel (QEMU's stderr).
    struct Semihosting;
    impl Write for Semihosting {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            semihosting::write_str(s);
            Ok(())
        }
    }
    let _ = Semihosting.write_fmt(args);
    semihosting::write_str("\n");
}
