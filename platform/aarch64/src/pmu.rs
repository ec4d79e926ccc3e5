//! The hypervisor's own instruction count: PMU event counter 0 counting `INST_RETIRED` at EL2
//! only, for `HV_BENCH` (docs/guest-abi.md). Under `-icount shift=4,sleep=off` QEMU retires the
//! same instructions in every run, so the figures are bit-identical run to run.
//!
//! Counter 0 is the hypervisor's while a bench runs; guests are not given the PMU.

/// `INST_RETIRED` (architecturally executed instructions).
const INST_RETIRED: u64 = 0x08;
/// PMEVTYPER<n>_EL0 filter bits: P (do not count at EL1), U (not at EL0), NSH (count at EL2).
const FILTER_EL2_ONLY: u64 = (1 << 31) | (1 << 30) | (1 << 27);
/// PMCR_EL0: E (enable counters below MDCR_EL2.HPMN).
const PMCR_E: u64 = 1;

/// Starts counting this core's EL2 instructions from zero.
pub fn start_el2_instruction_count() {
    // SAFETY: the PMU registers written here configure, enable and reset event counter 0 of
    // this core. They change no translation, no memory attribute and no exception routing;
    // the worst a wrong value does is count something else.
    unsafe {
        core::arch::asm!(
            "msr pmcntenclr_el0, {one}",
            "msr pmevtyper0_el0, {ty}",
            "msr pmevcntr0_el0, xzr",
            "mrs {tmp}, pmcr_el0",
            "orr {tmp}, {tmp}, {e}",
            "msr pmcr_el0, {tmp}",
            "isb",
            "msr pmcntenset_el0, {one}",
            "isb",
            one = in(reg) 1u64,
            ty = in(reg) INST_RETIRED | FILTER_EL2_ONLY,
            e = in(reg) PMCR_E,
            tmp = out(reg) _,
            options(nostack, preserves_flags),
        )
    };
}

/// Stops counting and returns the count since [`start_el2_instruction_count`].
pub fn stop_el2_instruction_count() -> u64 {
    let count: u64;
    // SAFETY: reads event counter 0 and disables it; as above, no memory or translation state
    // is involved.
    unsafe {
        core::arch::asm!(
            "isb",
            "mrs {count}, pmevcntr0_el0",
            "msr pmcntenclr_el0, {one}",
            count = out(reg) count,
            one = in(reg) 1u64,
            options(nostack, preserves_flags),
        )
    };
    count
}
