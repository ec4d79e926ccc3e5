//! Identification of the CPU: MIDR, physical address size, VMID width, CRC32 instructions.

use core::fmt;

use aarch64_cpu::registers::{Readable, ID_AA64ISAR0_EL1, ID_AA64MMFR0_EL1, ID_AA64MMFR1_EL1, MIDR_EL1};

/// `YIELD`: a hint that the core spins, waiting for another. Under QEMU's single-threaded
/// round robin (`-icount`) it also ends the core's turn, so that the others run: a core spinning
/// without it keeps its turn until a timer deadline, and the next core's turn then has no
/// instructions left (a halted core woken by an interrupt, in particular, never runs).
pub fn yield_hint() {
    // SAFETY: a hint instruction; it changes no memory, register or system state.
    unsafe { core::arch::asm!("yield", options(nomem, nostack, preserves_flags)) };
}

/// The Main ID Register of the calling core.
pub fn midr() -> Midr {
    Midr(MIDR_EL1.get())
}

/// A MIDR_EL1 value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Midr(pub u64);

impl Midr {
    pub fn implementer(self) -> u8 {
        (self.0 >> 24) as u8
    }
    pub fn variant(self) -> u8 {
        ((self.0 >> 20) & 0xf) as u8
    }
    pub fn part(self) -> u16 {
        ((self.0 >> 4) & 0xfff) as u16
    }
    pub fn revision(self) -> u8 {
        (self.0 & 0xf) as u8
    }

    /// The CPU's name, when it is one this table knows.
    pub fn name(self) -> Option<&'static str> {
        let name = match (self.implementer(), self.part()) {
            (0x41, 0xd03) => "Arm Cortex-A53",
            (0x41, 0xd04) => "Arm Cortex-A35",
            (0x41, 0xd05) => "Arm Cortex-A55",
            (0x41, 0xd07) => "Arm Cortex-A57",
            (0x41, 0xd08) => "Arm Cortex-A72",
            (0x41, 0xd09) => "Arm Cortex-A73",
            (0x41, 0xd0a) => "Arm Cortex-A75",
            (0x41, 0xd0b) => "Arm Cortex-A76",
            (0x41, 0xd0c) => "Arm Neoverse N1",
            (0x41, 0xd0d) => "Arm Cortex-A77",
            (0x41, 0xd40) => "Arm Neoverse V1",
            (0x41, 0xd41) => "Arm Cortex-A78",
            (0x41, 0xd44) => "Arm Cortex-X1",
            (0x41, 0xd46) => "Arm Cortex-A510",
            (0x41, 0xd47) => "Arm Cortex-A710",
            (0x41, 0xd49) => "Arm Neoverse N2",
            (0x41, 0xd4f) => "Arm Neoverse V2",
            // QEMU's `-cpu max`: implementer 0 ("software use"), part number 'Q'.
            (0x00, 0x051) => "QEMU max",
            _ => return None,
        };
        Some(name)
    }
}

impl fmt::Display for Midr {
    /// `Arm Cortex-A57 r1p0 (MIDR 0x411fd070)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name}")?,
            None => write!(f, "CPU implementer {:#04x} part {:#05x}", self.implementer(), self.part())?,
        }
        write!(f, " r{}p{} (MIDR {:#x})", self.variant(), self.revision(), self.0)
    }
}

/// The physical address size in bits (ID_AA64MMFR0_EL1.PARange).
pub fn pa_bits() -> u32 {
    match ID_AA64MMFR0_EL1.get() & 0xf {
        0 => 32,
        1 => 36,
        2 => 40,
        3 => 42,
        4 => 44,
        5 => 48,
        _ => 52,
    }
}

/// The physical address size the EL2 map uses: [`pa_bits`] clamped to 48 (the 4 KiB-granule
/// descriptors used here carry 48-bit addresses).
pub fn mapped_pa_bits() -> u32 {
    pa_bits().min(48)
}

/// VMID width in bits (ID_AA64MMFR1_EL1.VMIDBits): 8 or 16.
pub fn vmid_bits() -> u32 {
    match (ID_AA64MMFR1_EL1.get() >> 4) & 0xf {
        2 => 16,
        _ => 8,
    }
}

/// Whether the CPU has the CRC32 instructions, CRC32C* among them (ID_AA64ISAR0_EL1.CRC32,
/// optional in Armv8.0, mandatory from Armv8.1; Cortex-A57 and QEMU's `max` have them).
pub fn has_crc32() -> bool {
    (ID_AA64ISAR0_EL1.get() >> 16) & 0xf != 0
}
