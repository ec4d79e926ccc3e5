//! The hypervisor's instruction counts: PMU event counter 0 counting `INST_RETIRED` at EL2
//! only, for `HV_BENCH` (docs/guest-abi.md, `hyp::bench`); counters 1 and 2 counting the whole run's
//! instructions at EL2 and in the guests, for `hv.count-instructions` (`hyp::instructions`).
//! Under `-icount shift=4,sleep=off` QEMU retires the same instructions in every run, so the
//! figures are bit-identical run to run.
//!
//! The counters are the hypervisor's; guests are not given the PMU (their ID registers say
//! there is none, `vdev::idregs`).

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

/// Pauses counter 0 (an every-core `HV_BENCH` window, just before the core waits in WFI) and
/// returns its count; the counter keeps it until [`resume_el2_instruction_count`]. Disabled
/// first, so nothing after the `msr` is counted.
pub fn pause_el2_instruction_count() -> u64 {
    let count: u64;
    // SAFETY: disables event counter 0 of this core and reads it; no memory, translation or
    // exception routing state is involved.
    unsafe {
        core::arch::asm!(
            "msr pmcntenclr_el0, {one}",
            "isb",
            "mrs {count}, pmevcntr0_el0",
            count = out(reg) count,
            one = in(reg) 1u64,
            options(nostack, preserves_flags),
        )
    };
    count
}

/// Resumes counter 0 from the count [`pause_el2_instruction_count`] left (just after the core
/// woke up from WFI); the `msr` is the last thing, so nothing before it is counted.
pub fn resume_el2_instruction_count() {
    // SAFETY: enables event counter 0 of this core, as configured by
    // `start_el2_instruction_count`; no memory or translation state is involved.
    unsafe {
        core::arch::asm!(
            "msr pmcntenset_el0, {one}",
            "isb",
            one = in(reg) 1u64,
            options(nostack, preserves_flags),
        )
    };
}

/// PMEVTYPER<n>_EL0 filter for EL0 and EL1 only: P, U and NSH clear (EL2 not counted).
const FILTER_EL0_EL1: u64 = 0;
/// The event counters of [`start_run_counters`]: 1 counts EL2, 2 counts EL0 and EL1.
const RUN_COUNTERS: u64 = 0b110;

/// Starts counters 1 and 2 from zero, counting `INST_RETIRED` at EL2 and at EL0/EL1
/// respectively, for the whole run (`hv.count-instructions`). Independent of counter 0
/// (`HV_BENCH`). QEMU counts instructions only under `-icount`; without it they read 0.
pub fn start_run_counters() {
    // SAFETY: the PMU registers written here select, reset and enable event counters 1 and 2
    // of this core (and set PMCR_EL0.E, which `start_el2_instruction_count` sets too). They
    // change no translation, memory attribute or exception routing.
    unsafe {
        core::arch::asm!(
            "msr pmcntenclr_el0, {both}",
            "msr pmselr_el0, {one}",
            "isb",
            "msr pmxevtyper_el0, {el2}",
            "msr pmxevcntr_el0, xzr",
            "msr pmselr_el0, {two}",
            "isb",
            "msr pmxevtyper_el0, {el01}",
            "msr pmxevcntr_el0, xzr",
            "mrs {tmp}, pmcr_el0",
            "orr {tmp}, {tmp}, {e}",
            "msr pmcr_el0, {tmp}",
            "isb",
            "msr pmcntenset_el0, {both}",
            "isb",
            both = in(reg) RUN_COUNTERS,
            one = in(reg) 1u64,
            two = in(reg) 2u64,
            el2 = in(reg) INST_RETIRED | FILTER_EL2_ONLY,
            el01 = in(reg) INST_RETIRED | FILTER_EL0_EL1,
            e = in(reg) PMCR_E,
            tmp = out(reg) _,
            options(nostack, preserves_flags),
        )
    };
}

/// Stops counters 1 and 2 (`hv.count-instructions`) while the core waits in WFI: under
/// `-icount` QEMU's instruction event follows the global count, so a waiting core would count
/// the other cores' instructions as its own. [`resume_run_counters`] goes on from their values.
pub fn pause_run_counters() {
    // SAFETY: disables event counters 1 and 2 of this core; no memory, translation or
    // exception routing state is involved.
    unsafe {
        core::arch::asm!("msr pmcntenclr_el0, {both}", "isb", both = in(reg) RUN_COUNTERS, options(nostack, preserves_flags))
    };
}

/// Restarts counters 1 and 2 after [`pause_run_counters`].
pub fn resume_run_counters() {
    // SAFETY: enables event counters 1 and 2 of this core, as `start_run_counters` configured
    // them; no memory, translation or exception routing state is involved.
    unsafe {
        core::arch::asm!("msr pmcntenset_el0, {both}", "isb", both = in(reg) RUN_COUNTERS, options(nostack, preserves_flags))
    };
}

/// The raw values of counters 1 and 2 (EL2, EL0/EL1 instructions), 32 bits each: they wrap.
pub fn read_run_counters() -> (u32, u32) {
    let (el2, guest): (u64, u64);
    // SAFETY: reads event counters 1 and 2 of this core; no state changes.
    unsafe {
        core::arch::asm!(
            "isb",
            "mrs {el2}, pmevcntr1_el0",
            "mrs {guest}, pmevcntr2_el0",
            el2 = out(reg) el2,
            guest = out(reg) guest,
            options(nostack, preserves_flags),
        )
    };
    (el2 as u32, guest as u32)
}
