//! The console: a PL011 UART that every core may print to, a whole line at a time.
//!
//! [`println!`](crate::println!) takes the console lock for the whole line (its formatting
//! included), so lines from different cores never interleave. Lines end with `\r\n` (a serial
//! console). Before [`init`], output is dropped.
//!
//! While guests run ([`set_deferred`]), a line goes into a ring in memory instead of straight
//! to the UART, and cores write the ring out when they have time: before they wait for an
//! interrupt, for as long as none is pending ([`drain_while`]). When output has waited longer
//! than [`MAX_WAIT_NS`], the core printing the next line writes out as much as it adds, and a
//! core's housekeeping writes a little of what waited longer still ([`drain_if_older`]).
//! Writing a line to a UART takes a core from its vCPUs with interrupts masked (on hardware at
//! 115200 baud about 87 µs a character; under QEMU every character is an exit into its device
//! model, and now and then one waits milliseconds for QEMU's lock), which a real-time guest's
//! release would wait out. A full ring is written out by the line that needs the room: output
//! is never dropped. What is left is written when the guests are done ([`set_deferred`]) and
//! on every way out of the run ([`semihosting::exit`]).
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
use vcpu_runtime::ring::ByteRing;

use crate::{semihosting, smp, timer};

/// Output waiting for the UART: a few seconds of a Linux guest's boot log.
const RING_BYTES: usize = 64 * 1024;

/// Written to the UART under the lock at a time: the most a line's printer waits for a core
/// that is writing the ring out.
const CHUNK_BYTES: usize = 64;

/// A PL011's transmit FIFO (16 entries; r1p5 has 32).
const FIFO_BYTES: usize = 16;

/// How long a line may wait in the ring for an idle core before the core printing the next
/// one writes out as much as it adds (so a busy core pays for its own output, as it did when
/// every line was written at once, but only when no core had the time).
const MAX_WAIT_NS: u64 = 20_000_000;

/// The UART and the output waiting for it.
struct Console {
    uart: Option<Uart<'static>>,
    ring: ByteRing<RING_BYTES>,
}

static UART: Mutex<Console> = Mutex::new(Console { uart: None, ring: ByteRing::new() });

/// Whether lines wait in the ring ([`set_deferred`]).
static DEFERRED: AtomicBool = AtomicBool::new(false);

/// When the ring last went from empty to holding a line (counter ticks), 0 while it is empty:
/// read without the lock by [`drain_if_older`] and [`pending`].
static PENDING_SINCE: AtomicU64 = AtomicU64::new(0);

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
    UART.lock().uart = Some(uart);
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

/// Appends to the ring, turning `\n` into `\r\n`; what does not fit waits for the ring's
/// oldest output to be written (the UART's pace: nothing is dropped).
struct ToRing<'a>(&'a mut Console);

impl ToRing<'_> {
    fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let n = bytes.len().min(self.0.ring.free());
            if n == 0 {
                let booking = if DEFERRED.load(Ordering::Relaxed) { Booking::Busy } else { Booking::Unbooked };
                write_while(self.0, true, booking, |done| done == 0);
                continue;
            }
            let (now, rest) = bytes.split_at(n);
            self.0.ring.push(now);
            bytes = rest;
        }
    }
}

impl Write for ToRing<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for (i, part) in s.split('\n').enumerate() {
            if i > 0 {
                self.push(b"\r\n");
            }
            self.push(part.as_bytes());
        }
        Ok(())
    }
}

/// Writes up to [`CHUNK_BYTES`] of the ring's oldest output to the UART; with `wait`, waits
/// for room in the UART's FIFO, otherwise stops where it is full. Returns the bytes written.
/// The flag register is read once per [`FIFO_BYTES`] written into an empty FIFO (every read
/// and write is an exit into QEMU's device model).
fn write_chunk(console: &mut Console, wait: bool) -> usize {
    let Some(uart) = console.uart.as_mut() else {
        return 0;
    };
    let mut written = 0;
    let mut room = 0;
    while written < CHUNK_BYTES && !console.ring.is_empty() {
        if room == 0 {
            room = if uart.is_tx_fifo_empty() {
                FIFO_BYTES
            } else if !uart.is_tx_fifo_full() {
                1
            } else if wait {
                continue;
            } else {
                break;
            };
        }
        let mut byte = [0u8];
        console.ring.pop_into(&mut byte);
        uart.write_word(byte[0]);
        written += 1;
        room -= 1;
    }
    if console.ring.is_empty() {
        PENDING_SINCE.store(0, Ordering::Relaxed);
    }
    written
}

/// Whose time writing the console's output took ([`costs`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Booking {
    /// A core that had nothing else to do.
    Idle,
    /// A core taken from its vCPUs while guests run.
    Busy,
    /// Before the guests start or after they stopped.
    Unbooked,
}

/// Writes chunks while `more(bytes written so far)`, booking the time as `booking` says.
fn write_while(console: &mut Console, wait: bool, booking: Booking, mut more: impl FnMut(usize) -> bool) {
    let start = timer::ticks();
    let mut total = 0;
    while more(total) {
        let n = write_chunk(console, wait);
        if n == 0 {
            break;
        }
        total += n;
    }
    let took = timer::ticks().wrapping_sub(start);
    match booking {
        Booking::Idle => {
            IDLE_BYTES.fetch_add(total as u64, Ordering::Relaxed);
        }
        Booking::Busy if total > 0 => {
            BUSY_BYTES.fetch_add(total as u64, Ordering::Relaxed);
            BUSY_TICKS.fetch_add(took, Ordering::Relaxed);
            BUSY_TICKS_MAX.fetch_max(took, Ordering::Relaxed);
        }
        _ => {}
    }
}

/// Console output written while guests run by cores with nothing else to do, and by cores
/// taken from their vCPUs for it (the printing core when the output had waited too long, a
/// housekeeping's share, a line that needed room): bytes, and the time the latter took, in all
/// and at most at once.
static IDLE_BYTES: AtomicU64 = AtomicU64::new(0);
static BUSY_BYTES: AtomicU64 = AtomicU64::new(0);
static BUSY_TICKS: AtomicU64 = AtomicU64::new(0);
static BUSY_TICKS_MAX: AtomicU64 = AtomicU64::new(0);

/// What the console's output cost: `(idle bytes, busy bytes, busy ticks, longest busy write in
/// ticks)` ([`IDLE_BYTES`]).
pub fn costs() -> (u64, u64, u64, u64) {
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    (get(&IDLE_BYTES), get(&BUSY_BYTES), get(&BUSY_TICKS), get(&BUSY_TICKS_MAX))
}

/// Prints `args` and a line end while holding the console lock. Used by
/// [`println!`](crate::println!). While [`set_deferred`], the line goes into the ring.
///
/// # Panics
///
/// If called while formatting a line on the same core (a `Display` impl that prints): that
/// would deadlock.
pub fn print_line(args: fmt::Arguments<'_>) {
    let me = smp::current_core_index();
    assert!(OWNER.load(Ordering::Relaxed) != me, "println! while printing a line on core {me}");
    let mut console = UART.lock();
    OWNER.store(me, Ordering::Relaxed);
    if console.uart.is_some() {
        let before = console.ring.len();
        let mut w = ToRing(&mut console);
        let _ = w.write_fmt(args);
        let _ = w.write_str("\n");
        let added = console.ring.len().saturating_sub(before);
        let now = timer::ticks();
        let since = PENDING_SINCE.load(Ordering::Relaxed);
        if !DEFERRED.load(Ordering::Relaxed) {
            write_while(&mut console, true, Booking::Unbooked, |_| true);
        } else if since == 0 {
            // The ring was empty (or emptied while this line made room for itself).
            PENDING_SINCE.store(now.max(1), Ordering::Relaxed);
        } else if since != 0 && now.wrapping_sub(since) > timer::nanos_to_ticks(MAX_WAIT_NS, timer::frequency_hz()) {
            write_while(&mut console, false, Booking::Busy, |done| done < added);
            if !console.ring.is_empty() {
                // What is left is younger than what went: it waits anew.
                PENDING_SINCE.store(now.max(1), Ordering::Relaxed);
            }
        }
    }
    OWNER.store(NO_OWNER, Ordering::Relaxed);
}

/// Lines printed from now on wait in the ring (`true`, while guests run) or are written at
/// once (`false`, which first writes out what waits).
pub fn set_deferred(deferred: bool) {
    DEFERRED.store(deferred, Ordering::Relaxed);
    if !deferred {
        flush();
    }
}

/// Whether output waits to be written (without taking the lock).
#[inline]
pub fn pending() -> bool {
    PENDING_SINCE.load(Ordering::Relaxed) != 0
}

/// Writes the ring out a chunk at a time while `more()` says there is time, without waiting for
/// the UART or for another core that holds the console: for a core with nothing else to do.
pub fn drain_while(mut more: impl FnMut() -> bool) {
    if !pending() || !more() {
        return;
    }
    let Some(mut console) = UART.try_lock() else { return };
    let mut first = true;
    write_while(&mut console, false, Booking::Idle, |_| core::mem::take(&mut first) || more());
}

/// Writes up to `budget` bytes of the ring out when it has held output for longer than
/// `age_ticks`: a safety net for output no idle core and no printing core wrote out.
pub fn drain_if_older(age_ticks: u64, budget: usize) {
    let since = PENDING_SINCE.load(Ordering::Relaxed);
    if since == 0 || timer::ticks().wrapping_sub(since) < age_ticks {
        return;
    }
    let Some(mut console) = UART.try_lock() else { return };
    write_while(&mut console, false, Booking::Busy, |done| done < budget);
    if !console.ring.is_empty() {
        PENDING_SINCE.store(timer::ticks().max(1), Ordering::Relaxed);
    }
}

/// Writes out everything that waits, waiting for the UART and the lock.
pub fn flush() {
    let mut console = UART.lock();
    write_while(&mut console, true, Booking::Unbooked, |_| true);
}

/// Writes out what waits on the way out of the run: like [`flush`], but never waits for long
/// (this core may hold the lock, interrupted in a line, or another core may never let go of it).
pub(crate) fn flush_at_exit() {
    if OWNER.load(Ordering::Relaxed) == smp::current_core_index() {
        return;
    }
    let patience = timer::frequency_hz() / 10;
    let start = timer::ticks();
    while timer::ticks().wrapping_sub(start) <= patience {
        if let Some(mut console) = UART.try_lock() {
            write_while(&mut console, true, Booking::Unbooked, |_| true);
            return;
        }
        core::hint::spin_loop();
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
        if let Some(mut console) = UART.try_lock() {
            OWNER.store(me, Ordering::Relaxed);
            // What waited comes first, as it was printed first.
            write_while(&mut console, true, Booking::Unbooked, |_| true);
            if let Some(uart) = console.uart.as_mut() {
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
