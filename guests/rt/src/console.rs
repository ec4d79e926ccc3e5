//! The console: the PL011 at `0x0900_0000`, shared by every vCPU behind one lock so that a line
//! printed with [`println!`](crate::println) is never interleaved with another vCPU's output.
//!
//! The UART is used as QEMU and the hypervisor leave it: no baud-rate or line setup (the
//! hypervisor's UART emulates only the data register writes and the flag register).

use crate::probe::{self, Outcome};
use crate::sync::SpinLock;
use arm_pl011_uart::{PL011Registers, Uart, UniqueMmioPointer};
use core::fmt::{self, Write};
use core::ptr::NonNull;

/// Guest physical address of the PL011 (docs/guest-abi.md).
pub const UART_BASE: u64 = 0x0900_0000;

/// Offset of the flag register (read-only).
pub const UARTFR: u64 = 0x18;
/// Offset of the peripheral identification register 0 (read-only).
pub const UARTPERIPHID0: u64 = 0xFE0;
/// UARTFR.TXFF: transmit FIFO full.
const FR_TXFF: u32 = 1 << 5;

/// The UART, created on first use.
static CONSOLE: SpinLock<Option<Uart<'static>>> = SpinLock::new(None);

fn new_uart() -> Uart<'static> {
    let regs = NonNull::new(UART_BASE as *mut PL011Registers).expect("UART address is not null");
    // SAFETY: the PL011 registers are at UART_BASE, mapped as device memory by the initial page
    // table; this is the only `UniqueMmioPointer` to them ever made (it lives in `CONSOLE`, and
    // `new_uart` runs once, under the console lock, when that is still `None`).
    Uart::new(unsafe { UniqueMmioPointer::new(regs) })
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments) {
    let mut console = CONSOLE.lock();
    let uart = console.get_or_insert_with(new_uart);
    // The UART never reports an error: it waits for room in its FIFO.
    let _ = uart.write_fmt(args);
}

/// Prints on the console, without a newline.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::console::_print(format_args!($($arg)*))
    };
}

/// Prints a whole line on the console.
#[macro_export]
macro_rules! println {
    () => {
        $crate::console::_print(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::console::_print(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Prints from a fatal path (panic, unexpected exception), which may run while this very vCPU
/// holds the console lock: then it writes to the data register directly instead of waiting for a
/// lock that would never be released.
pub fn print_fatal(args: fmt::Arguments) {
    if CONSOLE.held_by_me() {
        let _ = RawUart.write_fmt(args);
    } else {
        _print(args);
    }
}

/// A writer that goes straight to the UART registers, bypassing the console lock.
struct RawUart;

impl Write for RawUart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let fr = (UART_BASE + UARTFR) as *const u32;
        let dr = UART_BASE as *mut u32;
        for byte in s.bytes() {
            // SAFETY: UART_BASE and UARTFR are the PL011's data and flag registers, mapped as device
            // memory; volatile accesses to them affect nothing but the UART. This runs only on a
            // fatal path, where the interrupted console user will never touch the UART again.
            unsafe {
                while fr.read_volatile() & FR_TXFF != 0 {}
                dr.write_volatile(u32::from(byte));
            }
        }
        Ok(())
    }
}

/// Misuses the UART on purpose: writes `value` to the register at `offset`, which should be a
/// read-only one (e.g. [`UARTFR`]), holding the console lock so no line is cut. Returns what the
/// platform did: the write completed (ignored, as a PL011 does) or an abort was taken.
pub fn misuse_write(offset: u64, value: u32) -> Outcome {
    let _console = CONSOLE.lock();
    probe::write32(UART_BASE + offset, value)
}

/// Reads the UART register at `offset` through a fault probe, holding the console lock.
pub fn probe_read(offset: u64) -> Outcome {
    let _console = CONSOLE.lock();
    probe::read32(UART_BASE + offset)
}
