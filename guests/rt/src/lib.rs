//! Runtime of the bare-metal EL1 test guests.
//!
//! A guest sees the platform of `docs/guest-abi.md`: QEMU's `virt` board with a GICv3, a PL011,
//! PSCI over HVC and RAM at `0x4000_0000`. The same image runs on that board directly (QEMU
//! without virtualization, the guest at EL1) and under our hypervisor.
//!
//! What this crate gives a guest, all as safe functions (the guests hold no `unsafe`):
//!
//! - entry at EL1 through `aarch64-rt`, with the MMU and caches turned on before any Rust code
//!   runs (an identity map: device memory below RAM, normal cacheable memory for RAM), so
//!   atomics work; per-vCPU stacks for up to [`MAX_VCPUS`] vCPUs (indexed by `MPIDR_EL1.Aff0`)
//!   and a secondary entry for PSCI `CPU_ON` ([`psci::cpu_on`]);
//! - a console ([`print!`], [`println!`]) on the PL011 whose lines are never interleaved;
//! - PSCI ([`psci`]), the hypervisor's hypercalls ([`hypercall`]), the virtual timer
//!   ([`timer`]), the GICv3 CPU interface and redistributor ([`gic`]) with an IRQ vector that
//!   dispatches to registered handlers;
//! - fault probes ([`probe`]) that turn an abort or an undefined instruction into a value;
//! - the FP/SIMD registers ([`fp`]), written and read back whole;
//! - [`finish`], which prints `RESULT: PASS` or `RESULT: FAIL <reason>` and calls PSCI
//!   `SYSTEM_OFF`; a panic prints itself and finishes with FAIL.
//!
//! A guest is a `#![no_std] #![no_main]` binary that names its main function with
//! [`guest_main!`]; main returns `Result<(), Fail>` and [`fail!`] builds the failure.

#![no_std]
#![deny(missing_docs)]

pub mod console;
mod exceptions;
pub mod fp;
pub mod gic;
pub mod hypercall;
pub mod mem;
mod mmu;
pub mod probe;
pub mod psci;
pub mod sync;
pub mod timer;
pub mod work;

use aarch64_cpu::registers::{Readable, MPIDR_EL1};
use core::fmt::{self, Write};
use core::panic::PanicInfo;

/// Guest physical address of RAM (docs/guest-abi.md).
pub const RAM_BASE: u64 = 0x4000_0000;

/// The most vCPUs a guest supports: there is a stack for each, indexed by `MPIDR_EL1.Aff0`.
pub const MAX_VCPUS: usize = 8;

/// This vCPU's index: `MPIDR_EL1.Aff0` (docs/guest-abi.md: the vCPU index in the VM).
pub fn cpu_index() -> usize {
    (MPIDR_EL1.get() & 0xff) as usize
}

/// This vCPU's MPIDR affinity fields (Aff3..Aff0), as PSCI and the GIC want them.
pub fn mpidr() -> u64 {
    MPIDR_EL1.get() & 0xff_00ff_ffff
}

/// A build-time setting: `value` (from `option_env!`) parsed as a decimal number, or `default`
/// when unset. Use it in a `const`, so a malformed value fails the build:
/// `const ROUNDS: u64 = guest_rt::setting(option_env!("GUEST_DIRTIER_ROUNDS"), 20);`
pub const fn setting(value: Option<&str>, default: u64) -> u64 {
    let bytes = match value {
        Some(v) => v.as_bytes(),
        None => return default,
    };
    assert!(!bytes.is_empty(), "empty guest setting");
    let mut n: u64 = 0;
    let mut i = 0;
    while i < bytes.len() {
        let digit = bytes[i];
        assert!(digit.is_ascii_digit(), "guest setting is not a decimal number");
        n = n * 10 + (digit - b'0') as u64;
        i += 1;
    }
    n
}

/// Why a guest failed: a short message, truncated to [`Fail::CAPACITY`] bytes (there is no heap;
/// small enough to return by value in a `Result`).
pub struct Fail {
    buf: [u8; Fail::CAPACITY],
    len: u8,
}

impl Fail {
    /// The longest reason kept.
    pub const CAPACITY: usize = 119;

    /// Formats a failure reason; see [`fail!`].
    pub fn new(args: fmt::Arguments) -> Self {
        let mut fail = Fail { buf: [0; Fail::CAPACITY], len: 0 };
        // Writing to a `Fail` never fails: it truncates.
        let _ = fail.write_fmt(args);
        fail
    }

    /// The reason as text.
    pub fn as_str(&self) -> &str {
        let bytes = &self.buf[..usize::from(self.len)];
        match core::str::from_utf8(bytes) {
            Ok(s) => s,
            // Truncation may split a multi-byte character: keep the valid prefix.
            Err(e) => core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or(""),
        }
    }
}

impl Write for Fail {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let len = usize::from(self.len);
        let n = s.len().min(Fail::CAPACITY - len);
        self.buf[len..len + n].copy_from_slice(&s.as_bytes()[..n]);
        // len + n <= CAPACITY < 256.
        self.len = (len + n) as u8;
        Ok(())
    }
}

impl fmt::Debug for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Builds a [`Fail`] from a format string: `return Err(fail!("misses={}", misses))`.
#[macro_export]
macro_rules! fail {
    ($($arg:tt)*) => {
        $crate::Fail::new(format_args!($($arg)*))
    };
}

/// Returns `Err(fail!(...))` from the enclosing function unless the condition holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            return Err($crate::fail!($($arg)*));
        }
    };
}

/// Ends the guest: prints `RESULT: PASS` or `RESULT: FAIL <reason>` and calls PSCI
/// `SYSTEM_OFF` (docs/guest-abi.md). Any vCPU may call it.
pub fn finish(result: Result<(), Fail>) -> ! {
    match &result {
        Ok(()) => println!("RESULT: PASS"),
        Err(reason) => println!("RESULT: FAIL {}", reason),
    }
    let err = psci::system_off();
    // SYSTEM_OFF does not return on success; if it did, say so and stop this vCPU.
    println!("guest-rt: SYSTEM_OFF returned {:?}", err);
    halt()
}

/// A busy-wait hint (`yield`). Under QEMU's one-core-at-a-time TCG it also lets the other
/// vCPUs' cores run, where `spin_loop` (an `isb`) does not.
pub fn relax() {
    // SAFETY: `yield` is a hint; it touches no memory and no register.
    unsafe { core::arch::asm!("yield", options(nomem, nostack, preserves_flags)) };
}

/// Stops this vCPU for good: IRQs masked, waiting for interrupts that never come.
pub fn halt() -> ! {
    gic::irq_disable();
    loop {
        gic::wait_for_interrupt();
    }
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    // The console lock may be held by this very vCPU (a panic inside a print): `print_fatal`
    // writes past it in that case.
    console::print_fatal(format_args!("guest-rt: panic on cpu {}: {}\n", cpu_index(), info));
    finish(Err(fail!("panic on cpu {}", cpu_index())))
}

/// Declares the guest's main function and its boot entry.
///
/// `main` must be `fn(u64) -> Result<(), guest_rt::Fail>`; its argument is `x0` at entry
/// (the device tree's address, or 0). The runtime prints a start line, runs main on the boot
/// vCPU and passes its result to [`finish`].
///
/// ```ignore
/// #![no_std]
/// #![no_main]
/// guest_rt::guest_main!(main);
/// fn main(_dtb: u64) -> Result<(), guest_rt::Fail> { Ok(()) }
/// ```
#[macro_export]
macro_rules! guest_main {
    ($main:ident) => {
        // The boot stack and the exported entry symbol need unsafe attributes; they are the only
        // unsafe a guest contains, and come from here.
        #[allow(unsafe_code)]
        mod __guest_rt_entry {
            $crate::__private::aarch64_rt::entry!(start, 16);

            fn start(x0: u64, _x1: u64, _x2: u64, _x3: u64) -> ! {
                $crate::__private::boot(env!("CARGO_BIN_NAME"), x0, super::$main)
            }
        }
    };
}

#[doc(hidden)]
pub mod __private {
    pub use aarch64_rt;

    /// Runs a guest's main on the boot vCPU; see [`guest_main!`](crate::guest_main).
    pub fn boot(name: &'static str, x0: u64, main: fn(u64) -> Result<(), crate::Fail>) -> ! {
        let platform = crate::hypercall::platform();
        crate::println!(
            "guest {}: start cpu={} platform={} timer={}Hz x0={:#x}",
            name,
            crate::cpu_index(),
            platform,
            crate::timer::frequency(),
            x0
        );
        crate::finish(main(x0))
    }
}
