//! Decoding what a guest did from the syndrome the hardware reports to EL2.
//!
//! On an exit the platform reads `ESR_EL2` (and for aborts `FAR_EL2` and `HPFAR_EL2`) and
//! hands the raw values here. The decoding is plain bit arithmetic, so it lives here and is
//! tested on the host against the Arm ARM's ISS encodings.

/// Why a vCPU came back to EL2, from `ESR_EL2.EC` and its ISS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrapKind {
    /// WFI (`wfe == false`) or WFE.
    Wfx { wfe: bool },
    /// HVC from AArch64 with its 16-bit immediate.
    Hvc { imm: u16 },
    /// SMC from AArch64 (trapped by HCR_EL2.TSC) with its immediate.
    Smc { imm: u16 },
    /// A trapped MSR/MRS/system instruction (ISS kept raw).
    SysReg { iss: u32 },
    /// An instruction fetch that faulted at stage 2.
    InstructionAbort,
    /// A data access that faulted at stage 2.
    DataAbort,
    /// An FP/SIMD access trapped by CPTR_EL2.
    FpSimd,
    /// Anything else: the raw exception class.
    Other { ec: u8 },
}

const EC_SHIFT: u32 = 26;

/// The exception class and kind of an `ESR_EL2` value.
pub fn trap_kind(esr: u64) -> TrapKind {
    let ec = ((esr >> EC_SHIFT) & 0x3f) as u8;
    let iss = (esr & 0x1ff_ffff) as u32;
    match ec {
        0x01 => TrapKind::Wfx { wfe: iss & 1 == 1 },
        0x07 => TrapKind::FpSimd,
        0x16 => TrapKind::Hvc { imm: iss as u16 },
        0x17 => TrapKind::Smc { imm: iss as u16 },
        0x18 => TrapKind::SysReg { iss },
        0x20 => TrapKind::InstructionAbort,
        0x24 => TrapKind::DataAbort,
        _ => TrapKind::Other { ec },
    }
}

/// A guest's access to an emulated device, decoded from a stage-2 data abort.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioAccess {
    /// The guest physical address accessed.
    pub ipa: u64,
    /// Bytes: 1, 2, 4 or 8.
    pub size: u8,
    pub write: bool,
    /// The general-purpose register transferred (31 means XZR for a write's source).
    pub reg: u8,
    /// A load that sign-extends (LDRSB, LDRSH, LDRSW).
    pub sign_extend: bool,
    /// The register is 64-bit (X) rather than 32-bit (W).
    pub sixty_four: bool,
}

/// Why a data abort cannot be emulated as a simple access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortError {
    /// `ESR_EL2.EC` is not a data abort from a lower exception level.
    NotDataAbort,
    /// No instruction syndrome (ISV = 0): a load/store pair, a post-indexed access, SIMD...
    /// The platform answers by injecting an abort into the guest.
    NoSyndrome,
    /// The fault happened on the guest's own stage-1 table walk.
    Stage1Walk,
    /// An external abort, not a translation or permission fault.
    External,
}

/// Decodes a stage-2 data abort: `esr` from `ESR_EL2`, `hpfar` from `HPFAR_EL2` (its FIPA
/// field, bits 43 to 4, holds IPA bits 51 to 12) and `far` from `FAR_EL2` (for the page offset).
pub fn decode_data_abort(esr: u64, hpfar: u64, far: u64) -> Result<MmioAccess, AbortError> {
    if trap_kind(esr) != TrapKind::DataAbort {
        return Err(AbortError::NotDataAbort);
    }
    let iss = esr & 0x1ff_ffff;
    if iss & (1 << 9) != 0 {
        return Err(AbortError::External);
    }
    if iss & (1 << 7) != 0 {
        return Err(AbortError::Stage1Walk);
    }
    if iss & (1 << 24) == 0 {
        return Err(AbortError::NoSyndrome);
    }
    let sas = (iss >> 22) & 0x3;
    let ipa = ((hpfar >> 4) & 0xff_ffff_ffff) << 12 | (far & 0xfff);
    Ok(MmioAccess {
        ipa,
        size: 1 << sas,
        write: iss & (1 << 6) != 0,
        reg: ((iss >> 16) & 0x1f) as u8,
        sign_extend: iss & (1 << 21) != 0,
        sixty_four: iss & (1 << 15) != 0,
    })
}

impl MmioAccess {
    /// The value a load leaves in its register, given what the device returned (only the
    /// access's bytes are used): sign- or zero-extended, and cut to 32 bits for a W register.
    pub fn load_value(&self, device: u64) -> u64 {
        let bits = self.size as u32 * 8;
        let raw = if bits >= 64 { device } else { device & ((1u64 << bits) - 1) };
        let extended = if self.sign_extend && bits < 64 {
            let shift = 64 - bits;
            (((raw << shift) as i64) >> shift) as u64
        } else {
            raw
        };
        if self.sixty_four {
            extended
        } else {
            extended & 0xffff_ffff
        }
    }

    /// The value a store writes, from the source register's content (XZR reads as 0).
    pub fn store_value(&self, reg_value: u64) -> u64 {
        let v = if self.reg == 31 { 0 } else { reg_value };
        let bits = self.size as u32 * 8;
        if bits >= 64 {
            v
        } else {
            v & ((1u64 << bits) - 1)
        }
    }
}

/// `ESR_EL1` for a synchronous external abort to inject into a guest after a data access it
/// may not make (EC 0x25, data abort taken without a change in EL; DFSC 0x10, synchronous
/// external abort; IL set for a 32-bit instruction).
pub const INJECTED_DATA_ABORT_ESR: u64 = (0x25 << EC_SHIFT) | (1 << 25) | 0x10;
/// `ESR_EL1` for an undefined instruction to inject (EC 0, IL set).
pub const INJECTED_UNDEF_ESR: u64 = 1 << 25;

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a data-abort ESR_EL2 from its fields.
    fn esr(isv: bool, sas: u64, sse: bool, srt: u64, sf: bool, wnr: bool) -> u64 {
        (0x24 << 26)
            | (1 << 25)
            | ((isv as u64) << 24)
            | (sas << 22)
            | ((sse as u64) << 21)
            | (srt << 16)
            | ((sf as u64) << 15)
            | ((wnr as u64) << 6)
            | 0x07 // DFSC: translation fault, level 3
    }

    #[test]
    fn decodes_a_word_store() {
        // str w3, [x0] to 0x0900_0000 (the guest's UART data register).
        let a = decode_data_abort(esr(true, 2, false, 3, false, true), 0x0900_0000 >> 8, 0x0900_0000).unwrap();
        assert_eq!(
            a,
            MmioAccess { ipa: 0x0900_0000, size: 4, write: true, reg: 3, sign_extend: false, sixty_four: false }
        );
        assert_eq!(a.store_value(0xdead_beef_1234_5678), 0x1234_5678);
    }

    #[test]
    fn decodes_the_page_offset_and_high_ipa_bits() {
        let ipa = 0x80A0_1018_u64;
        let a =
            decode_data_abort(esr(true, 3, false, 7, true, false), (ipa >> 12) << 4, 0xffff_0000_0000_0018).unwrap();
        assert_eq!(a.ipa, ipa);
        assert_eq!((a.size, a.write, a.reg, a.sixty_four), (8, false, 7, true));
    }

    #[test]
    fn loads_extend_as_the_instruction_says() {
        let ldrsb_w = MmioAccess { ipa: 0, size: 1, write: false, reg: 0, sign_extend: true, sixty_four: false };
        assert_eq!(ldrsb_w.load_value(0x80), 0xffff_ff80);
        let ldrsb_x = MmioAccess { sixty_four: true, ..ldrsb_w };
        assert_eq!(ldrsb_x.load_value(0x80), 0xffff_ffff_ffff_ff80);
        let ldrh = MmioAccess { size: 2, sign_extend: false, ..ldrsb_w };
        assert_eq!(ldrh.load_value(0x1234_8765), 0x8765);
        let str_xzr = MmioAccess { reg: 31, write: true, size: 8, ..ldrsb_x };
        assert_eq!(str_xzr.store_value(0x55), 0);
    }

    #[test]
    fn refuses_what_cannot_be_emulated() {
        assert_eq!(decode_data_abort(esr(false, 2, false, 0, false, true), 0, 0), Err(AbortError::NoSyndrome));
        assert_eq!(
            decode_data_abort(esr(true, 2, false, 0, false, true) | (1 << 7), 0, 0),
            Err(AbortError::Stage1Walk)
        );
        assert_eq!(decode_data_abort(esr(true, 2, false, 0, false, true) | (1 << 9), 0, 0), Err(AbortError::External));
        assert_eq!(decode_data_abort(0x16 << 26, 0, 0), Err(AbortError::NotDataAbort));
    }

    #[test]
    fn exception_classes() {
        assert_eq!(trap_kind((0x01 << 26) | 1), TrapKind::Wfx { wfe: true });
        assert_eq!(trap_kind(0x01 << 26), TrapKind::Wfx { wfe: false });
        assert_eq!(trap_kind((0x16 << 26) | 0x1234), TrapKind::Hvc { imm: 0x1234 });
        assert_eq!(trap_kind(0x17 << 26), TrapKind::Smc { imm: 0 });
        assert_eq!(trap_kind(0x24 << 26), TrapKind::DataAbort);
        assert_eq!(trap_kind(0x3c << 26), TrapKind::Other { ec: 0x3c });
    }

    proptest::proptest! {
        #[test]
        fn never_panics(esr_v in proptest::num::u64::ANY, hpfar in proptest::num::u64::ANY, far in proptest::num::u64::ANY, dev in proptest::num::u64::ANY) {
            if let Ok(a) = decode_data_abort(esr_v, hpfar, far) {
                let _ = a.load_value(dev);
                let _ = a.store_value(dev);
                proptest::prop_assert!(matches!(a.size, 1 | 2 | 4 | 8));
            }
            let _ = trap_kind(esr_v);
        }
    }
}
