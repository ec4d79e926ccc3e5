//! A guest's TLB maintenance instructions, when the hypervisor traps them (`HCR_EL2.TTLB`).
//!
//! Trapped, a `TLBI` is carried out by the hypervisor: on the trapping core in its local form
//! ([`TlbiOp`], for the VMID loaded there), and on the VM's other cores by invalidating all of
//! the VM's stage-1 entries before its vCPUs run there again (docs/linux-guests.md, *Guest TLB
//! maintenance*). So the shareable forms (`…IS`, `…OS`) map to the same local operation: the
//! reach to other cores is the hypervisor's business, not the instruction's.
//!
//! Every `TLBI` a guest can issue at EL1 is `SYS #op1, C8 or C9, Cm, #op2, Xt` with `op0` = 1
//! and `op1` = 0. Those this module knows by name are the Armv8.0 forms and those of
//! FEAT_TLBIOS and FEAT_TLBIRANGE; anything else in that space (the FEAT_XS `…nXS` forms in
//! `CRn` 9, encodings added later) becomes [`TlbiOp::Vmalle1`], which invalidates more than was
//! asked for and so is always a correct answer.

/// The local operation a trapped guest `TLBI` becomes on the trapping core. `Xt` is passed on
/// unchanged: its layout (VA or range, ASID, TTL hints) is the same in the local form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlbiOp {
    /// All stage-1 entries of the VM (`TLBI VMALLE1`).
    Vmalle1,
    /// By VA and ASID (`TLBI VAE1`).
    Vae1,
    /// By ASID (`TLBI ASIDE1`).
    Aside1,
    /// By VA, all ASIDs (`TLBI VAAE1`).
    Vaae1,
    /// By VA and ASID, last level only (`TLBI VALE1`).
    Vale1,
    /// By VA, all ASIDs, last level only (`TLBI VAALE1`).
    Vaale1,
    /// The FEAT_TLBIRANGE forms of the four VA operations (`TLBI RVAE1`, `RVAAE1`, `RVALE1`,
    /// `RVAALE1`).
    Rvae1,
    Rvaae1,
    Rvale1,
    Rvaale1,
}

impl TlbiOp {
    /// The operation of a trapped `SYS` instruction (ISS of EC 0x18: `op0`, `op1`, `CRn`,
    /// `CRm`, `op2`), or `None` when it is not a TLB maintenance instruction at all.
    pub fn from_encoding(op0: u32, op1: u32, crn: u32, crm: u32, op2: u32) -> Option<TlbiOp> {
        if op0 != 1 || op1 != 0 || !(crn == 8 || crn == 9) {
            return None;
        }
        if crn == 9 {
            return Some(TlbiOp::Vmalle1);
        }
        let op = match (crm, op2) {
            // Local (CRm 7), inner shareable (3), outer shareable (1).
            (7 | 3 | 1, 0) => TlbiOp::Vmalle1,
            (7 | 3 | 1, 1) => TlbiOp::Vae1,
            (7 | 3 | 1, 2) => TlbiOp::Aside1,
            (7 | 3 | 1, 3) => TlbiOp::Vaae1,
            (7 | 3 | 1, 5) => TlbiOp::Vale1,
            (7 | 3 | 1, 7) => TlbiOp::Vaale1,
            // Range: local (CRm 6), inner shareable (2), outer shareable (5).
            (6 | 2 | 5, 1) => TlbiOp::Rvae1,
            (6 | 2 | 5, 3) => TlbiOp::Rvaae1,
            (6 | 2 | 5, 5) => TlbiOp::Rvale1,
            (6 | 2 | 5, 7) => TlbiOp::Rvaale1,
            _ => TlbiOp::Vmalle1,
        };
        Some(op)
    }
}

#[cfg(test)]
mod tests {
    use super::TlbiOp;

    /// `(CRn, CRm, op2)` of an EL1 `TLBI` by name, as the Arm ARM lists them.
    fn op(crn: u32, crm: u32, op2: u32) -> Option<TlbiOp> {
        TlbiOp::from_encoding(1, 0, crn, crm, op2)
    }

    #[test]
    fn shareable_forms_become_their_local_forms() {
        // VMALLE1IS, VAE1IS, ASIDE1IS, VAAE1IS, VALE1IS, VAALE1IS.
        assert_eq!(op(8, 3, 0), Some(TlbiOp::Vmalle1));
        assert_eq!(op(8, 3, 1), Some(TlbiOp::Vae1));
        assert_eq!(op(8, 3, 2), Some(TlbiOp::Aside1));
        assert_eq!(op(8, 3, 3), Some(TlbiOp::Vaae1));
        assert_eq!(op(8, 3, 5), Some(TlbiOp::Vale1));
        assert_eq!(op(8, 3, 7), Some(TlbiOp::Vaale1));
        // The outer shareable and local forms.
        for crm in [1, 7] {
            assert_eq!(op(8, crm, 1), Some(TlbiOp::Vae1));
            assert_eq!(op(8, crm, 7), Some(TlbiOp::Vaale1));
        }
    }

    #[test]
    fn range_forms_keep_their_range() {
        // RVAE1IS (CRm 2), RVAAE1OS (CRm 5), RVALE1 (CRm 6), RVAALE1IS.
        assert_eq!(op(8, 2, 1), Some(TlbiOp::Rvae1));
        assert_eq!(op(8, 5, 3), Some(TlbiOp::Rvaae1));
        assert_eq!(op(8, 6, 5), Some(TlbiOp::Rvale1));
        assert_eq!(op(8, 2, 7), Some(TlbiOp::Rvaale1));
    }

    #[test]
    fn unknown_tlb_operations_invalidate_everything() {
        // VAE1ISNXS (FEAT_XS) and an unallocated op2.
        assert_eq!(op(9, 3, 1), Some(TlbiOp::Vmalle1));
        assert_eq!(op(8, 7, 4), Some(TlbiOp::Vmalle1));
        assert_eq!(op(8, 6, 0), Some(TlbiOp::Vmalle1));
    }

    #[test]
    fn other_system_instructions_are_not_tlb_maintenance() {
        // DC CIVAC (CRn 7), an EL2 TLBI (op1 4), a system register (op0 3).
        assert_eq!(op(7, 14, 1), None);
        assert_eq!(TlbiOp::from_encoding(1, 4, 8, 3, 1), None);
        assert_eq!(TlbiOp::from_encoding(3, 0, 8, 3, 1), None);
    }
}
