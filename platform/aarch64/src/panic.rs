//! The panic handler: prints the panic with the core it happened on and fails the run.

use core::panic::PanicInfo;

use crate::{console, exit_code, semihosting, smp};

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    let core = smp::current_core().0;
    match info.location() {
        Some(at) => console::crash_line(format_args!(
            "panic on core {core} at {}:{}:{}: {}",
            at.file(),
            at.line(),
            at.column(),
            info.message()
        )),
        None => console::crash_line(format_args!("panic on core {core}: {}", info.message())),
    }
    semihosting::exit(exit_code::PANIC)
}
