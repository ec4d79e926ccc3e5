//! The console: a PL011 UART that every core may print to, a whole line at a time.
//!
//! [`println!`](crate::println!) takes the console lock for the whole line (its formatting
//! included), so lines from different cores never interleave. Lines end with `\r\n` (a serial
//! console). Before [`init`], output is dropped.
//!
//! A character is written as soon as the UART's FIFO has room, and the flag register is read
//! once per [`FIFO_BYTES`] written into an empty FIFO rather than before every character:
//! under QEMU each read and each write is an exit into its device model. What printing cost
//! while guests ran is kept for the run's report ([`costs`]): a line holds its core in EL2
//! with interrupts masked, which a real-time vCPU's release on that core waits out.
//!
//! The panic and exception paths use [`crash_line`]: if the crashing core itself holds the
//! lock (it faulted or panicked in the middle of a line), the lock is taken over, which is sound
//! because the interrupted line is never resumed; if another core holds it for too long, the
//! line goes to the semihosting debug channel instead.

use core::fmt::{self, Write};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

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

/// A PL011's transmit FIFO (16 entries; r1p5 has 32).
const FIFO_BYTES: usize = 16;

/// Writes through to the UART, turning `\n` into `\r\n`; `room` is how many more characters
/// the FIFO is known to take.
struct Crlf<'a, 'u> {
    uart: &'a mut Uart<'u>,
    room: usize,
    bytes: u64,
}

impl<'a, 'u> Crlf<'a, 'u> {
    fn new(uart: &'a mut Uart<'u>) -> Self {
        Crlf { uart, room: 0, bytes: 0 }
    }

    fn put(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            while self.room == 0 {
                self.room =
                    if self.uart.is_tx_fifo_empty() { FIFO_BYTES } else { usize::from(!self.uart.is_tx_fifo_full()) };
            }
            self.uart.write_word(byte);
            self.room -= 1;
        }
        self.bytes += bytes.len() as u64;
    }
}

impl Write for Crlf<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for (i, part) in s.split('\n').enumerate() {
            if i > 0 {
                self.put(b"\r\n");
            }
            self.put(part.as_bytes());
        }
        Ok(())
    }
}

/// Whether guests run: what printing costs from then on is counted ([`costs`]).
static COUNTING: AtomicBool = AtomicBool::new(false);
/// While guests ran: bytes printed, counter ticks spent printing (waiting for the lock
/// included), and the longest line in ticks.
static BYTES: AtomicU64 = AtomicU64::new(0);
static TICKS: AtomicU64 = AtomicU64::new(0);
static TICKS_MAX: AtomicU64 = AtomicU64::new(0);

/// Counts what printing costs from now on (`true`, when the guests start) or no more.
pub fn count_costs(on: bool) {
    COUNTING.store(on, Ordering::Relaxed);
}

/// What printing cost while guests ran: `(bytes, ticks, longest line in ticks)`.
pub fn costs() -> (u64, u64, u64) {
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    (get(&BYTES), get(&TICKS), get(&TICKS_MAX))
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
    let start = timer::ticks();
    let mut uart = UART.lock();
    OWNER.store(me, Ordering::Relaxed);
    let mut bytes = 0;
    if let Some(uart) = uart.as_mut() {
        let mut w = Crlf::new(uart);
        let _ = w.write_fmt(args);
        let _ = w.write_str("\n");
        bytes = w.bytes;
    }
    OWNER.store(NO_OWNER, Ordering::Relaxed);
    drop(uart);
    if COUNTING.load(Ordering::Relaxed) {
        let took = timer::ticks().wrapping_sub(start);
        BYTES.fetch_add(bytes, Ordering::Relaxed);
        TICKS.fetch_add(took, Ordering::Relaxed);
        TICKS_MAX.fetch_max(took, Ordering::Relaxed);
    }
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
                let mut w = Crlf::new(uart);
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
