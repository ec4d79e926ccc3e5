//! System registers the hypervisor reads and writes by name, for the ones `aarch64-cpu` lacks
//! (ICC_*_EL1 at EL2, ICH_ELRSR_EL2, CNTHP_CVAL_EL2, VPIDR_EL2, the EL1 context, ...).
//!
//! Each accessor is one `mrs`/`msr`. Reads are side-effect free (the interrupt acknowledge
//! register, which is not, is read by [`gic::ack`](crate::gic::ack) itself). Writes are
//! crate-private: every register written here configures the guest's context (EL1 and EL0
//! registers, the virtual CPU interface, timers) or interrupt delivery, none of them the EL2
//! translation regime the hypervisor runs on, and each caller says why its value is right.

/// Defines `fn $name() -> u64` reading the system register `$reg`.
macro_rules! sysreg_read {
    ($(#[$meta:meta])* $vis:vis fn $name:ident = $reg:literal) => {
        $(#[$meta])*
        #[inline(always)]
        $vis fn $name() -> u64 {
            let value: u64;
            // SAFETY: reading this system register at EL2 only copies it to a general-purpose
            // register: no memory is accessed and no state changes.
            unsafe {
                core::arch::asm!(concat!("mrs {}, ", $reg), out(reg) value, options(nomem, nostack, preserves_flags))
            };
            value
        }
    };
}

/// Defines `fn $name(value: u64)` writing the system register `$reg`.
macro_rules! sysreg_write {
    ($(#[$meta:meta])* $vis:vis fn $name:ident = $reg:literal) => {
        $(#[$meta])*
        #[inline(always)]
        $vis fn $name(value: u64) {
            // SAFETY: the registers defined with this macro belong to the guest's context (EL1
            // and EL0 state, the virtual timer, the virtual CPU interface) or to interrupt and
            // timer delivery at EL2; none of them changes how EL2 itself translates or accesses
            // memory, so no reference the hypervisor holds is affected.
            unsafe { core::arch::asm!(concat!("msr ", $reg, ", {}"), in(reg) value, options(nostack, preserves_flags)) };
        }
    };
}

pub(crate) use sysreg_read;
pub(crate) use sysreg_write;

/// An instruction synchronization barrier: later instructions see earlier system register
/// writes.
#[inline(always)]
pub fn isb() {
    // SAFETY: a barrier touches no memory and no register.
    unsafe { core::arch::asm!("isb", options(nomem, nostack, preserves_flags)) };
}

/// A data synchronization barrier over the inner-shareable domain.
#[inline(always)]
pub fn dsb_ish() {
    // SAFETY: a barrier touches no memory and no register; it only orders memory accesses.
    unsafe { core::arch::asm!("dsb ish", options(nostack, preserves_flags)) };
}

sysreg_read!(pub fn esr_el2 = "esr_el2");
sysreg_read!(pub fn far_el2 = "far_el2");
sysreg_read!(pub fn hpfar_el2 = "hpfar_el2");
sysreg_read!(pub fn midr_el1 = "midr_el1");
sysreg_read!(pub fn id_aa64mmfr0_el1 = "id_aa64mmfr0_el1");
sysreg_read!(pub fn cntpct_el0 = "cntpct_el0");

/// The hardware's value of the ID register `S3_0_C0_C<crm>_<op2>` (`crm` 1 to 7: the space
/// `HCR_EL2.TID3` traps, `vdev::idregs`), as EL2 reads it; 0 for `crm` or `op2` out of range.
/// Unallocated encodings in this space read as zero.
pub fn id_register(crm: u8, op2: u8) -> u64 {
    macro_rules! read_id {
        ($($crm:literal => [$($op2:literal)*])*) => {
            match (crm, op2) {
                $($(($crm, $op2) => {
                    let value: u64;
                    // SAFETY: reading an ID register at EL2 only copies it to a general-purpose
                    // register: no memory is accessed and no state changes.
                    unsafe {
                        core::arch::asm!(
                            concat!("mrs {}, s3_0_c0_c", stringify!($crm), "_", stringify!($op2)),
                            out(reg) value,
                            options(nomem, nostack, preserves_flags)
                        )
                    };
                    value
                })*)*
                _ => 0,
            }
        };
    }
    read_id! {
        1 => [0 1 2 3 4 5 6 7]
        2 => [0 1 2 3 4 5 6 7]
        3 => [0 1 2 3 4 5 6 7]
        4 => [0 1 2 3 4 5 6 7]
        5 => [0 1 2 3 4 5 6 7]
        6 => [0 1 2 3 4 5 6 7]
        7 => [0 1 2 3 4 5 6 7]
    }
}

sysreg_read!(
    /// `ACTLR_EL1` as the hardware holds it (guests cannot write it: `HCR_EL2.TACR`).
    pub fn actlr_el1 = "actlr_el1"
);
