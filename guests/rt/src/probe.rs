//! Fault probes: do one access or call that may fault, and report what the platform did.
//!
//! A probe arms a per-vCPU flag, runs exactly one instruction (a load, a store, an `smc` or an
//! `hvc`), and disarms it. If that instruction takes a synchronous exception (a data abort, an
//! undefined instruction) while the flag is armed, the exception handler records `ESR_EL1` and
//! `FAR_EL1` and resumes at the next instruction; the probe returns the record instead of a value.
//! An exception with the flag disarmed is fatal, as in any guest.

use crate::mmu::BLOCK;
use crate::{cpu_index, MAX_VCPUS};
use core::arch::asm;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// An address in the hole of QEMU's `virt` map between the secure memory (ends `0x0F00_0000`)
/// and the PCIe window (starts `0x1000_0000`): no device there, in QEMU or in the hypervisor.
pub const DEVICE_HOLE: u64 = 0x0F00_0000;

/// An address 1 GiB above the start of RAM: outside the RAM of any test guest (they have far
/// less than 1 GiB), mapped as device memory by the guest's own page table.
pub const OUTSIDE_RAM: u64 = crate::RAM_BASE + BLOCK;

/// What happened to a probed access or call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It completed; a load or call gives its value (x0 for a call), a store gives 0.
    Completed(u64),
    /// It took a synchronous exception, now recorded; execution went on after it.
    Exception {
        /// `ESR_EL1` of the exception.
        esr: u64,
        /// `FAR_EL1` of the exception (meaningful for aborts only).
        far: u64,
    },
    /// The address may not be probed: it is RAM or outside the guest's page table.
    Refused,
}

impl Outcome {
    /// The exception class, `ESR_EL1.EC`, if an exception was taken.
    pub fn exception_class(&self) -> Option<u8> {
        match self {
            Outcome::Exception { esr, .. } => Some(((esr >> 26) & 0x3f) as u8),
            _ => None,
        }
    }

    /// A data abort taken at EL1 (`EC` 0x25), e.g. an external abort injected by the platform.
    pub fn is_data_abort(&self) -> bool {
        self.exception_class() == Some(EC_DATA_ABORT_SAME_EL)
    }

    /// An undefined-instruction exception (`EC` 0x00, "unknown reason").
    pub fn is_undefined(&self) -> bool {
        self.exception_class() == Some(EC_UNKNOWN)
    }

    /// For a data abort, the fault status code (`ESR_EL1.ISS.DFSC`).
    pub fn dfsc(&self) -> Option<u8> {
        match self {
            Outcome::Exception { esr, .. } if self.is_data_abort() => Some((esr & 0x3f) as u8),
            _ => None,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Completed(value) => write!(f, "completed value={:#x}", value),
            Outcome::Exception { esr, far } => {
                write!(f, "exception ec={:#04x} esr={:#x}", (esr >> 26) & 0x3f, esr)?;
                if let Some(dfsc) = self.dfsc() {
                    write!(f, " far={:#x} dfsc={:#04x} ({})", far, dfsc, dfsc_name(dfsc))?;
                }
                Ok(())
            }
            Outcome::Refused => f.write_str("refused (not a probeable address)"),
        }
    }
}

/// A short name for a data fault status code.
pub fn dfsc_name(dfsc: u8) -> &'static str {
    match dfsc {
        0x10 => "synchronous external abort",
        0x04..=0x07 => "translation fault",
        0x08..=0x0b => "access flag fault",
        0x0c..=0x0f => "permission fault",
        0x21 => "alignment fault",
        0x14..=0x17 | 0x18 | 0x1c..=0x1f => "external abort on walk or parity",
        _ => "other",
    }
}

/// `ESR_EL1.EC` of an undefined instruction.
pub const EC_UNKNOWN: u8 = 0x00;
/// `ESR_EL1.EC` of a data abort taken without a change of exception level.
pub const EC_DATA_ABORT_SAME_EL: u8 = 0x25;

/// Per-vCPU probe state.
struct ProbeState {
    armed: AtomicBool,
    taken: AtomicBool,
    esr: AtomicU64,
    far: AtomicU64,
}

static PROBES: [ProbeState; MAX_VCPUS] = [const {
    ProbeState {
        armed: AtomicBool::new(false),
        taken: AtomicBool::new(false),
        esr: AtomicU64::new(0),
        far: AtomicU64::new(0),
    }
}; MAX_VCPUS];

fn state() -> &'static ProbeState {
    &PROBES[cpu_index() % MAX_VCPUS]
}

fn arm() {
    let s = state();
    s.taken.store(false, Ordering::Relaxed);
    s.armed.store(true, Ordering::Relaxed);
}

/// Disarms the probe; returns the recorded exception if one was taken.
fn disarm() -> Option<(u64, u64)> {
    let s = state();
    s.armed.store(false, Ordering::Relaxed);
    if s.taken.load(Ordering::Relaxed) {
        Some((s.esr.load(Ordering::Relaxed), s.far.load(Ordering::Relaxed)))
    } else {
        None
    }
}

/// Called by the synchronous exception handler: if a probe is armed on this vCPU, records the
/// exception, disarms, and returns true (the handler then skips the faulting instruction).
pub(crate) fn take_exception(esr: u64, far: u64) -> bool {
    let s = state();
    if s.armed.swap(false, Ordering::Relaxed) {
        s.esr.store(esr, Ordering::Relaxed);
        s.far.store(far, Ordering::Relaxed);
        s.taken.store(true, Ordering::Relaxed);
        true
    } else {
        false
    }
}

fn outcome(value: u64) -> Outcome {
    match disarm() {
        Some((esr, far)) => Outcome::Exception { esr, far },
        None => Outcome::Completed(value),
    }
}

/// Whether `addr` may be probed: 4-byte aligned, mapped as device memory by the guest's page
/// table (the first GiB and the third), so never the guest's own RAM.
fn probeable(addr: u64) -> bool {
    addr.is_multiple_of(4) && (addr < BLOCK || (2 * BLOCK..3 * BLOCK).contains(&addr))
}

/// Loads 32 bits from device address `addr`, catching an abort.
pub fn read32(addr: u64) -> Outcome {
    if !probeable(addr) {
        return Outcome::Refused;
    }
    let mut value: u64 = 0;
    arm();
    // SAFETY: `addr` is in a device-memory block of the guest's identity map (checked above), not
    // RAM, so the load reads no Rust-visible memory. If it faults, the handler records the abort
    // and resumes after this one instruction, leaving `value` as it was.
    unsafe {
        asm!("ldr {v:w}, [{a}]", a = in(reg) addr, v = inout(reg) value, options(nostack, preserves_flags));
    }
    outcome(value)
}

/// Stores 32 bits to device address `addr`, catching an abort.
pub fn write32(addr: u64, value: u32) -> Outcome {
    if !probeable(addr) {
        return Outcome::Refused;
    }
    arm();
    // SAFETY: as in `read32`: a device address, never RAM; a fault resumes after the store.
    unsafe {
        asm!("str {v:w}, [{a}]", a = in(reg) addr, v = in(reg) value, options(nostack, preserves_flags));
    }
    outcome(0)
}

/// Issues an SMCCC call with `smc #0` (function id in w0, arguments in x1..x3), catching an
/// undefined-instruction exception. A completed call gives x0.
pub fn smc(function: u32, args: [u64; 3]) -> Outcome {
    let mut x0 = u64::from(function);
    arm();
    // SAFETY: an SMC either reaches firmware or a hypervisor that follows SMCCC (results in x0..x3,
    // x4..x17 may be clobbered, x18 and above preserved) or is undefined, in which case the handler
    // resumes after it. It accesses none of our memory.
    unsafe {
        asm!(
            "smc #0",
            inout("x0") x0,
            inout("x1") args[0] => _, inout("x2") args[1] => _, inout("x3") args[2] => _,
            out("x4") _, out("x5") _, out("x6") _, out("x7") _, out("x8") _, out("x9") _,
            out("x10") _, out("x11") _, out("x12") _, out("x13") _, out("x14") _, out("x15") _,
            out("x16") _, out("x17") _,
            options(nostack),
        );
    }
    outcome(x0)
}

/// Issues an SMCCC call with `hvc #0`, like [`smc`], catching an undefined-instruction exception.
pub fn hvc(function: u32, args: [u64; 3]) -> Outcome {
    let mut x0 = u64::from(function);
    arm();
    // SAFETY: as in `smc`, for the hypervisor conduit.
    unsafe {
        asm!(
            "hvc #0",
            inout("x0") x0,
            inout("x1") args[0] => _, inout("x2") args[1] => _, inout("x3") args[2] => _,
            out("x4") _, out("x5") _, out("x6") _, out("x7") _, out("x8") _, out("x9") _,
            out("x10") _, out("x11") _, out("x12") _, out("x13") _, out("x14") _, out("x15") _,
            out("x16") _, out("x17") _,
            options(nostack),
        );
    }
    outcome(x0)
}
