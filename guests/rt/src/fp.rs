//! The FP/SIMD registers (Q0-Q31, FPCR, FPSR), for checking that a hypervisor gives every vCPU
//! its own. The guests are built for `aarch64-unknown-none-softfloat`: compiled code never
//! touches these registers, so what [`write`] puts there stays until [`read`] looks, whatever
//! Rust code runs in between on this vCPU (its exception handlers included).

use aarch64_cpu::registers::{ReadWriteable, CPACR_EL1};

/// FP/SIMD state as [`write`] and [`read`] move it.
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FpState {
    /// Q0 to Q31.
    pub v: [u128; 32],
    /// FPCR (only [`FPCR_BITS`] are kept).
    pub fpcr: u64,
    /// FPSR (only [`FPSR_BITS`] are kept).
    pub fpsr: u64,
}

/// FPCR bits every Armv8-A core implements: RMode (23:22), FZ (24), DN (25), AHP (26).
pub const FPCR_BITS: u64 = 0x07C0_0000;
/// FPSR cumulative flags: IOC, DZC, OFC, UFC, IXC (4:0), IDC (7), QC (27).
pub const FPSR_BITS: u64 = 0x0800_009F;

/// Lets EL1 and EL0 use FP/SIMD (`CPACR_EL1.FPEN` = 0b11): until then it traps to EL1.
pub fn enable() {
    CPACR_EL1.modify(CPACR_EL1::FPEN::TrapNothing);
    // SAFETY: an instruction barrier touches no memory.
    unsafe { core::arch::asm!("isb", options(nomem, nostack, preserves_flags)) };
}

/// Loads `state` into the FP/SIMD registers. [`enable`] first.
pub fn write(state: &FpState) {
    // SAFETY: reads the 528 bytes of `state` (a valid reference) and writes Q0-Q31, FPCR and
    // FPSR, which compiled code never uses in this softfloat image, so no value the compiler
    // keeps is clobbered; the general registers it uses are its operands.
    unsafe {
        core::arch::asm!(
            ".arch_extension fp",
            ".arch_extension simd",
            "ldp q0, q1, [{p}, #0]",
            "ldp q2, q3, [{p}, #32]",
            "ldp q4, q5, [{p}, #64]",
            "ldp q6, q7, [{p}, #96]",
            "ldp q8, q9, [{p}, #128]",
            "ldp q10, q11, [{p}, #160]",
            "ldp q12, q13, [{p}, #192]",
            "ldp q14, q15, [{p}, #224]",
            "ldp q16, q17, [{p}, #256]",
            "ldp q18, q19, [{p}, #288]",
            "ldp q20, q21, [{p}, #320]",
            "ldp q22, q23, [{p}, #352]",
            "ldp q24, q25, [{p}, #384]",
            "ldp q26, q27, [{p}, #416]",
            "ldp q28, q29, [{p}, #448]",
            "ldp q30, q31, [{p}, #480]",
            "ldr {a}, [{p}, #512]",
            "ldr {b}, [{p}, #520]",
            "msr fpcr, {a}",
            "msr fpsr, {b}",
            p = in(reg) state as *const FpState,
            a = out(reg) _,
            b = out(reg) _,
            options(nostack, readonly, preserves_flags),
        )
    };
}

/// The FP/SIMD registers now.
pub fn read() -> FpState {
    let mut state = FpState { v: [0; 32], fpcr: 0, fpsr: 0 };
    // SAFETY: writes the 528 bytes of `state` (an exclusive reference) from Q0-Q31, FPCR and
    // FPSR, which it only reads.
    unsafe {
        core::arch::asm!(
            ".arch_extension fp",
            ".arch_extension simd",
            "stp q0, q1, [{p}, #0]",
            "stp q2, q3, [{p}, #32]",
            "stp q4, q5, [{p}, #64]",
            "stp q6, q7, [{p}, #96]",
            "stp q8, q9, [{p}, #128]",
            "stp q10, q11, [{p}, #160]",
            "stp q12, q13, [{p}, #192]",
            "stp q14, q15, [{p}, #224]",
            "stp q16, q17, [{p}, #256]",
            "stp q18, q19, [{p}, #288]",
            "stp q20, q21, [{p}, #320]",
            "stp q22, q23, [{p}, #352]",
            "stp q24, q25, [{p}, #384]",
            "stp q26, q27, [{p}, #416]",
            "stp q28, q29, [{p}, #448]",
            "stp q30, q31, [{p}, #480]",
            "mrs {a}, fpcr",
            "mrs {b}, fpsr",
            "str {a}, [{p}, #512]",
            "str {b}, [{p}, #520]",
            p = in(reg) &mut state as *mut FpState,
            a = out(reg) _,
            b = out(reg) _,
            options(nostack, preserves_flags),
        )
    };
    state.fpcr &= FPCR_BITS;
    state.fpsr &= FPSR_BITS;
    state
}

const _: () = {
    assert!(core::mem::offset_of!(FpState, fpcr) == 512);
    assert!(core::mem::offset_of!(FpState, fpsr) == 520);
};
