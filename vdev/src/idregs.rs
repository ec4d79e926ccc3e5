//! The CPU features a guest is told about: its view of the AArch64 ID registers.
//!
//! With `HCR_EL2.TID3` set, a guest's reads of the ID register space (`op0` = 3, `op1` = 0,
//! `CRn` = 0, `CRm` = 1..7: `ID_AA64PFR0_EL1`, `ID_AA64ISAR1_EL1`, ..., the AArch32 ID
//! registers and the unallocated encodings between them) trap to EL2. The platform reads the
//! hardware's value and returns [`guest_view`] of it: the same, with the features the hypervisor
//! does not give its guests taken out. A feature a guest is told is absent is one it never uses,
//! so its state (registers the hypervisor does not switch between vCPUs, nor carry in a
//! checkpoint) never matters:
//!
//! | register | field | why it is hidden |
//! |---|---|---|
//! | `ID_AA64PFR0_EL1` | SVE, MPAM, AMU | the SVE registers and `ZCR_EL1` are not switched (`CPTR_EL2.TZ` traps them: an undefined instruction), nor MPAM's or the activity monitors' |
//! | `ID_AA64PFR1_EL1` | everything but BT, SSBS and CSV2_frac: SME, MTE, MPAM_frac, NMI, RNDR_trap, ... | SME's state (`SMCR_EL1`, `TPIDR2_EL0`, ZA) and MTE's (`TFSR_EL1`, `GCR_EL1`, `RGSR_EL1`, the tags) are not switched; later features are unknown here |
//! | `ID_AA64ZFR0_EL1`, `ID_AA64SMFR0_EL1` | all | SVE and SME are hidden |
//! | `ID_AA64DFR0_EL1` | PMUVer, TraceVer, PMSVer, TraceFilt, TraceBuffer, MTPMU, BRBE | the PMU (which the hypervisor's own `HV_BENCH` counts with), trace units, the statistical profiler and the branch record buffer are not virtualised; there is no PMU in the guest's device tree either |
//! | `ID_AA64ISAR1_EL1` | APA, API, GPA, GPI, LS64 | the pointer authentication keys (`APIAKey_EL1`, ...) are not switched; 64-byte loads and stores to devices have nothing to reach |
//! | `ID_AA64ISAR2_EL1` | WFxT, GPA3, APA3, MOPS | `WFIT`/`WFET` would be handled as plain `WFI`/`WFE`, without their timeout; pointer authentication as above; the memory copy instructions need `HCRX_EL2` set up for the guest |
//! | `ID_AA64MMFR1_EL1` | VH, LO | the guest has no EL2; the LORegion registers are not switched |
//! | `ID_AA64MMFR2_EL1` | NV | the guest has no EL2 |
//!
//! Everything else reads as the hardware has it: the guest runs on the real CPU, and the
//! fields left are either instructions without state of their own (atomics, CRC32, RNDR, BTI,
//! ...), state the hypervisor switches (FP/SIMD, the GIC CPU interface, the virtual timer), or
//! properties of the memory system. The AArch32 registers (`CRm` 1 to 3) are passed through.
//! On `-cpu cortex-a57` the only field taken out is the PMU's; on QEMU's `-cpu max` SVE, SME,
//! pointer authentication and the others above.

/// An ID register in the trapped space, by its `CRm` and `op2` (`op0` = 3, `op1` = 0, `CRn` =
/// 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdReg {
    pub crm: u8,
    pub op2: u8,
}

impl IdReg {
    pub const ID_AA64PFR0_EL1: IdReg = IdReg { crm: 4, op2: 0 };
    pub const ID_AA64PFR1_EL1: IdReg = IdReg { crm: 4, op2: 1 };
    pub const ID_AA64ZFR0_EL1: IdReg = IdReg { crm: 4, op2: 4 };
    pub const ID_AA64SMFR0_EL1: IdReg = IdReg { crm: 4, op2: 5 };
    pub const ID_AA64DFR0_EL1: IdReg = IdReg { crm: 5, op2: 0 };
    pub const ID_AA64ISAR0_EL1: IdReg = IdReg { crm: 6, op2: 0 };
    pub const ID_AA64ISAR1_EL1: IdReg = IdReg { crm: 6, op2: 1 };
    pub const ID_AA64ISAR2_EL1: IdReg = IdReg { crm: 6, op2: 2 };
    pub const ID_AA64MMFR0_EL1: IdReg = IdReg { crm: 7, op2: 0 };
    pub const ID_AA64MMFR1_EL1: IdReg = IdReg { crm: 7, op2: 1 };
    pub const ID_AA64MMFR2_EL1: IdReg = IdReg { crm: 7, op2: 2 };

    /// The register a trapped system register access names (its ISS fields), if it lies in
    /// the ID register space `TID3` traps.
    pub fn from_encoding(op0: u32, op1: u32, crn: u32, crm: u32, op2: u32) -> Option<IdReg> {
        (op0 == 3 && op1 == 0 && crn == 0 && (1..=7).contains(&crm) && op2 <= 7)
            .then_some(IdReg { crm: crm as u8, op2: op2 as u8 })
    }
}

/// A mask of the 4-bit fields at these bit positions.
const fn fields(shifts: &[u32]) -> u64 {
    let mut mask = 0u64;
    let mut i = 0;
    while i < shifts.len() {
        mask |= 0xf << shifts[i];
        i += 1;
    }
    mask
}

/// `ID_AA64PFR0_EL1`: SVE [35:32], MPAM [43:40], AMU [47:44].
pub const PFR0_HIDDEN: u64 = fields(&[32, 40, 44]);
/// `ID_AA64PFR1_EL1` fields kept: BT [3:0], SSBS [7:4], CSV2_frac [35:32].
pub const PFR1_KEPT: u64 = fields(&[0, 4, 32]);
/// `ID_AA64DFR0_EL1`: TraceVer [7:4], PMUVer [11:8], PMSVer [35:32], TraceFilt [43:40],
/// TraceBuffer [47:44], MTPMU [51:48], BRBE [55:52].
pub const DFR0_HIDDEN: u64 = fields(&[4, 8, 32, 40, 44, 48, 52]);
/// `ID_AA64ISAR1_EL1`: APA [7:4], API [11:8], GPA [27:24], GPI [31:28], LS64 [63:60].
pub const ISAR1_HIDDEN: u64 = fields(&[4, 8, 24, 28, 60]);
/// `ID_AA64ISAR2_EL1`: WFxT [3:0], GPA3 [11:8], APA3 [15:12], MOPS [19:16].
pub const ISAR2_HIDDEN: u64 = fields(&[0, 8, 12, 16]);
/// `ID_AA64MMFR1_EL1`: VH [11:8], LO [19:16].
pub const MMFR1_HIDDEN: u64 = fields(&[8, 16]);
/// `ID_AA64MMFR2_EL1`: NV [27:24].
pub const MMFR2_HIDDEN: u64 = fields(&[24]);

/// What the guest reads from `reg` when the hardware holds `hardware` (see the module
/// documentation).
pub fn guest_view(reg: IdReg, hardware: u64) -> u64 {
    match reg {
        IdReg::ID_AA64PFR0_EL1 => hardware & !PFR0_HIDDEN,
        IdReg::ID_AA64PFR1_EL1 => hardware & PFR1_KEPT,
        IdReg::ID_AA64ZFR0_EL1 | IdReg::ID_AA64SMFR0_EL1 => 0,
        IdReg::ID_AA64DFR0_EL1 => hardware & !DFR0_HIDDEN,
        IdReg::ID_AA64ISAR1_EL1 => hardware & !ISAR1_HIDDEN,
        IdReg::ID_AA64ISAR2_EL1 => hardware & !ISAR2_HIDDEN,
        IdReg::ID_AA64MMFR1_EL1 => hardware & !MMFR1_HIDDEN,
        IdReg::ID_AA64MMFR2_EL1 => hardware & !MMFR2_HIDDEN,
        _ => hardware,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(value: u64, shift: u32) -> u64 {
        (value >> shift) & 0xf
    }

    #[test]
    fn cortex_a57_keeps_everything_but_the_pmu() {
        // QEMU 7.2's cortex-a57.
        let pfr0 = 0x0000_0000_0000_2222;
        let dfr0 = 0x0000_0000_1030_5106;
        let isar0 = 0x0000_0000_0001_1120;
        let mmfr0 = 0x0000_0000_0000_1124;
        assert_eq!(guest_view(IdReg::ID_AA64PFR0_EL1, pfr0), pfr0);
        assert_eq!(guest_view(IdReg::ID_AA64ISAR0_EL1, isar0), isar0);
        assert_eq!(guest_view(IdReg::ID_AA64MMFR0_EL1, mmfr0), mmfr0);
        let dfr0_guest = guest_view(IdReg::ID_AA64DFR0_EL1, dfr0);
        assert_eq!(field(dfr0_guest, 8), 0, "PMUVer hidden");
        assert_eq!(field(dfr0_guest, 0), 6, "DebugVer kept");
        assert_eq!(field(dfr0_guest, 12), 5, "BRPs kept");
        assert_eq!(field(dfr0_guest, 20), 3, "WRPs kept");
    }

    #[test]
    fn sve_sme_and_pointer_authentication_are_hidden() {
        // Values with fields as a CPU with SVE (1), SME (1), MTE (2), BTI (1), SSBS (2) and
        // pointer authentication (APA 5, GPA 1) sets them.
        let pfr0 = 0x1201_1011_1112_2222u64;
        let pfr1 = 0x0000_0000_0100_0221u64;
        let isar1 = 0x0011_2110_0021_1051u64;
        let isar2 = 0x0000_0000_0001_0001u64;
        let pfr0_guest = guest_view(IdReg::ID_AA64PFR0_EL1, pfr0);
        assert_eq!(field(pfr0_guest, 32), 0, "SVE");
        assert_eq!(pfr0_guest & 0xffff_ffff, pfr0 & 0xffff_ffff, "EL0..EL3, FP, AdvSIMD, GIC, RAS kept");
        let pfr1_guest = guest_view(IdReg::ID_AA64PFR1_EL1, pfr1);
        assert_eq!((field(pfr1_guest, 24), field(pfr1_guest, 8)), (0, 0), "SME and MTE");
        assert_eq!((field(pfr1_guest, 0), field(pfr1_guest, 4)), (1, 2), "BT and SSBS kept");
        let isar1_guest = guest_view(IdReg::ID_AA64ISAR1_EL1, isar1);
        for shift in [4, 8, 24, 28] {
            assert_eq!(field(isar1_guest, shift), 0, "pointer authentication field at {shift}");
        }
        assert_eq!(field(isar1_guest, 0), 1, "DPB kept");
        let isar2_guest = guest_view(IdReg::ID_AA64ISAR2_EL1, isar2);
        assert_eq!((field(isar2_guest, 0), field(isar2_guest, 16)), (0, 0), "WFxT and MOPS");
        assert_eq!(guest_view(IdReg::ID_AA64ZFR0_EL1, 0x1234), 0);
        assert_eq!(guest_view(IdReg::ID_AA64SMFR0_EL1, u64::MAX), 0);
    }

    #[test]
    fn the_trapped_space_is_decoded() {
        assert_eq!(IdReg::from_encoding(3, 0, 0, 4, 0), Some(IdReg::ID_AA64PFR0_EL1));
        assert_eq!(IdReg::from_encoding(3, 0, 0, 1, 0), Some(IdReg { crm: 1, op2: 0 }), "ID_PFR0_EL1");
        // MIDR_EL1 (CRm 0), CTR_EL0 (op1 3), ACTLR_EL1 (CRn 1) are not in it.
        assert_eq!(IdReg::from_encoding(3, 0, 0, 0, 0), None);
        assert_eq!(IdReg::from_encoding(3, 3, 0, 0, 1), None);
        assert_eq!(IdReg::from_encoding(3, 0, 1, 0, 1), None);
        // AArch32 and unallocated encodings read as the hardware has them.
        assert_eq!(guest_view(IdReg { crm: 2, op2: 0 }, 0x0221_1000), 0x0221_1000);
        assert_eq!(guest_view(IdReg { crm: 7, op2: 7 }, 0), 0);
    }
}
