//! Arm semihosting: how the hypervisor ends a QEMU run with an exit status.
//!
//! `SYS_EXIT` with `ADP_Stopped_ApplicationExit` makes QEMU (started with
//! `-semihosting-config enable=on,target=native`) exit with the given code: the only way for the
//! image to report failure, since PSCI `SYSTEM_OFF` always ends QEMU with status 0.

use core::arch::asm;
use core::sync::atomic::{AtomicBool, Ordering};

/// `SYS_EXIT`.
const SYS_EXIT: u64 = 0x18;
/// `SYS_WRITEC`: writes one character to the debug channel.
const SYS_WRITEC: u64 = 0x03;
/// `ADP_Stopped_ApplicationExit`: the reason that makes the subcode the exit status.
const ADP_STOPPED_APPLICATION_EXIT: u64 = 0x2_0026;

static EXITING: AtomicBool = AtomicBool::new(false);

/// Ends the run: QEMU exits with status `code` (0 only for success, see
/// [`exit_code`](crate::exit_code)).
///
/// Without semihosting, `HLT` is an undefined instruction: the exception handler reports it and
/// calls `exit` again, which then parks the core for good (the host's timeout ends the run).
pub fn exit(code: u32) -> ! {
    if !EXITING.swap(true, Ordering::AcqRel) {
        let block = [ADP_STOPPED_APPLICATION_EXIT, u64::from(code)];
        // SAFETY: `hlt #0xf000` is the AArch64 semihosting call: x0 = SYS_EXIT, x1 = address of
        // the two-word parameter block, which lives on this stack for the whole call. The host
        // reads the block and ends the machine; it writes no memory.
        unsafe {
            asm!("hlt #0xf000", in("x0") SYS_EXIT, in("x1") block.as_ptr(), options(nostack, readonly));
        }
    }
    loop {
        aarch64_cpu::asm::wfe();
    }
}

/// Writes `s` to the semihosting debug channel, byte by byte (QEMU: its stderr). The panic and
/// exception paths use it when the console cannot be had.
pub fn write_str(s: &str) {
    if EXITING.load(Ordering::Acquire) {
        return;
    }
    for byte in s.bytes() {
        let c = byte;
        // SAFETY: `hlt #0xf000` with x0 = SYS_WRITEC and x1 = the address of one byte, `c`, which
        // lives on this stack for the call; the host only reads it. x0 is clobbered (the call
        // returns a value in it).
        unsafe {
            asm!("hlt #0xf000", inout("x0") SYS_WRITEC => _, in("x1") &raw const c, options(nostack, readonly));
        }
    }
}
