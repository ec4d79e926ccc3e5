//! The EL2 exception vector table (`src/asm/vectors.S`) and its report handler.
//!
//! The table has its own 16 entries rather than `aarch64-rt`'s: the guest world switch needs
//! the lower-EL entries to save a whole vCPU context, not a call frame. The four lower-EL
//! AArch64 entries are guest exits (`src/asm/guest.S`, [`crate::guest`]); every other entry
//! saves an [`ExceptionFrame`] and reports it: the exception class, ESR_EL2, ELR_EL2 and
//! FAR_EL2, which core and which vector, then ends the run with
//! [`exit_code::EXCEPTION`](crate::exit_code::EXCEPTION). None of those is expected: EL2 runs
//! with interrupts masked and polls the GIC.

use core::arch::global_asm;
use core::fmt;

use crate::layout::{STACK_GUARD_SIZE, STACK_SIZE};
use crate::{console, mmu, semihosting, smp};

/// The state saved by the vector entry code, at the top of the stack it was taken on.
#[repr(C)]
#[derive(Debug, Clone)]
pub struct ExceptionFrame {
    /// x0 to x30.
    pub x: [u64; 31],
    /// SP at the time of the exception (the frame sits just below it).
    pub sp: u64,
    pub elr: u64,
    pub spsr: u64,
    pub esr: u64,
    pub far: u64,
}

const FRAME_SIZE: usize = core::mem::size_of::<ExceptionFrame>();
const _: () = assert!(FRAME_SIZE == 288 && FRAME_SIZE % 16 == 0);

/// Added to the vector number by the entry code when the frame would not fit on the stack.
const OVERFLOW: u64 = 16;

const _: () = assert!(
    STACK_SIZE.is_power_of_two() && STACK_GUARD_SIZE == STACK_SIZE,
    "the overflow check in vectors.S needs slots of two equal power-of-two halves"
);

global_asm!(
    include_str!("asm/vectors.S"),
    frame_size = const FRAME_SIZE,
    handler = sym report,
    stack_shift = const STACK_SIZE.trailing_zeros(),
    overflow = const OVERFLOW,
);

/// Which of the 16 vectors was taken: 4 sources (current EL with SP0 or SPx, lower EL in
/// AArch64 or AArch32) times 4 types (synchronous, IRQ, FIQ, SError).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vector(pub u8);

impl fmt::Display for Vector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SOURCE: [&str; 4] =
            ["current EL with SP0", "current EL with SPx", "lower EL AArch64", "lower EL AArch32"];
        const KIND: [&str; 4] = ["synchronous", "IRQ", "FIQ", "SError"];
        let v = usize::from(self.0 & 15);
        write!(f, "{} from {}", KIND[v % 4], SOURCE[v / 4])
    }
}

/// The name of an exception class (ESR_ELx.EC).
pub fn exception_class_name(ec: u8) -> &'static str {
    match ec {
        0x00 => "unknown reason",
        0x01 => "WFI/WFE trapped",
        0x07 => "SVE/SIMD/FP access trapped",
        0x0e => "illegal execution state",
        0x15 => "SVC in AArch64",
        0x16 => "HVC in AArch64",
        0x17 => "SMC in AArch64",
        0x18 => "MSR/MRS/system instruction trapped",
        0x20 => "instruction abort from a lower EL",
        0x21 => "instruction abort at EL2",
        0x22 => "PC alignment fault",
        0x24 => "data abort from a lower EL",
        0x25 => "data abort at EL2",
        0x26 => "SP alignment fault",
        0x2c => "floating-point trap",
        0x2f => "SError",
        0x30 | 0x31 => "breakpoint",
        0x32 | 0x33 => "software step",
        0x34 | 0x35 => "watchpoint",
        0x3c => "BRK instruction",
        _ => "other",
    }
}

/// Called by the vector entry code with the saved frame; reports and ends the run.
extern "C" fn report(frame: &ExceptionFrame, vector: u64) -> ! {
    let core = smp::current_core();
    let ec = ((frame.esr >> 26) & 0x3f) as u8;
    if vector & OVERFLOW != 0 {
        console::crash_line(format_args!(
            "EL2 exception on core {}: stack overflow: no room for the exception frame; reporting on a reset stack (x0 lost)",
            core.0
        ));
    }
    // Several lines, each one console line: another core's output may fall between them, so
    // each says which core it is about.
    console::crash_line(format_args!(
        "EL2 exception on core {}: {}: EC {ec:#04x} ({}), ESR_EL2 {:#x}, ELR_EL2 {:#x}, FAR_EL2 {:#x}",
        core.0,
        Vector((vector & 15) as u8),
        exception_class_name(ec),
        frame.esr,
        frame.elr,
        frame.far,
    ));
    if let Some(owner) = mmu::guard_region_owner(frame.far as usize) {
        console::crash_line(format_args!(
            "EL2 exception on core {}: FAR_EL2 is in the guard region under core {owner}'s stack: stack overflow",
            core.0
        ));
    }
    console::crash_line(format_args!(
        "EL2 exception on core {}: SPSR_EL2 {:#x}, SP {:#x}, LR {:#x}",
        core.0, frame.spsr, frame.sp, frame.x[30]
    ));
    for (row, regs) in frame.x[..30].chunks(6).enumerate() {
        console::crash_line(format_args!(
            "  core {} x{:<2} {:016x} {:016x} {:016x} {:016x} {:016x} {:016x}",
            core.0,
            row * 6,
            regs[0],
            regs[1],
            regs[2],
            regs[3],
            regs[4],
            regs[5]
        ));
    }
    semihosting::exit(crate::exit_code::EXCEPTION)
}

/// Executes `BRK #0x5e1f`: a synchronous exception at EL2 that the handler reports (EC 0x3c)
/// before ending the run. For the self-tests that check the exception path end to end.
pub fn breakpoint() -> ! {
    // SAFETY: BRK only raises a synchronous exception; the EL2 handler reports it and ends the
    // run without returning here, and the instruction touches no memory or register.
    unsafe { core::arch::asm!("brk #0x5e1f", options(nomem, nostack, noreturn)) }
}
