//! SMCCC service discovery besides PSCI: the queries a guest makes to learn which services the
//! hypervisor offers (SMC Calling Convention, Arm DEN 0028, *General Service Queries*, and the
//! TRNG service's version call, Arm DEN 0098).
//!
//! A Linux guest asks, at boot, for the True Random Number Generator's version (`TRNG_VERSION`)
//! and for the vendor hypervisor service's UID (KVM's, to find KVM's own services). Answering
//! `NOT_SUPPORTED` is how a hypervisor says a service is absent: these calls are questions, not
//! misuse, so the platform answers them here without a `fault` event. Any other unknown
//! function id still gets `NOT_SUPPORTED` from the platform, and is reported.
//!
//! This hypervisor implements calls in the vendor-specific hypervisor service range (owner 6:
//! `HV_NULL`, `HV_MARK`, ..., docs/guest-abi.md), so it answers that range's general queries:
//! its UID ([`HYPERVISOR_UID`]) and revision ([`REVISION`]).

/// The vendor hypervisor service's Call Count query (deprecated by SMCCC 1.1: not answered).
pub const VENDOR_HYP_CALL_COUNT: u32 = 0x8600_FF00;
/// The vendor hypervisor service's Call UID query.
pub const VENDOR_HYP_CALL_UID: u32 = 0x8600_FF01;
/// The vendor hypervisor service's Revision query.
pub const VENDOR_HYP_REVISION: u32 = 0x8600_FF03;
/// `TRNG_VERSION` and `TRNG_FEATURES` (SMC32) of the standard service's TRNG range.
pub const TRNG_VERSION: u32 = 0x8400_0050;
pub const TRNG_FEATURES: u32 = 0x8400_0051;

/// The UUID that names this hypervisor's vendor service,
/// `8ff6bcf4-cd88-479d-855a-86f21ff19d34` (a random one, made for this project).
pub const HYPERVISOR_UUID: [u8; 16] =
    [0x8f, 0xf6, 0xbc, 0xf4, 0xcd, 0x88, 0x47, 0x9d, 0x85, 0x5a, 0x86, 0xf2, 0x1f, 0xf1, 0x9d, 0x34];

/// [`HYPERVISOR_UUID`] as the Call UID query returns it: four 32-bit words in w0..w3, each
/// holding four bytes of the UUID in little-endian order (the packing KVM's UID uses too).
pub const HYPERVISOR_UID: [u32; 4] = {
    let u = HYPERVISOR_UUID;
    let mut words = [0u32; 4];
    let mut i = 0;
    while i < 4 {
        words[i] = u32::from_le_bytes([u[4 * i], u[4 * i + 1], u[4 * i + 2], u[4 * i + 3]]);
        i += 1;
    }
    words
};

/// The revision of the vendor hypervisor service: 0.1 (major in w0, minor in w1).
pub const REVISION: (u32, u32) = (0, 1);

/// SMCCC `NOT_SUPPORTED` in x0.
pub const NOT_SUPPORTED: u64 = -1i64 as u64;

/// The answer to a discovery call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Discovery {
    /// Not offered: x0 = `NOT_SUPPORTED`, x1..x3 unchanged.
    NotSupported,
    /// x0..x3 = these values.
    Values([u64; 4]),
}

impl Discovery {
    /// What x0 holds afterwards.
    pub fn x0(&self) -> u64 {
        match self {
            Discovery::NotSupported => NOT_SUPPORTED,
            Discovery::Values(v) => v[0],
        }
    }
}

/// The answer when `function` (bits 0..31 of x0) is a service discovery call; `None` for any
/// other function. Discovery calls: the general service queries (function numbers `0xFF00` to
/// `0xFFFF`) of every owner's fast-call range, SMC32 or SMC64, and the TRNG service's
/// `TRNG_VERSION` and `TRNG_FEATURES` (no TRNG here). Only the vendor hypervisor range's
/// Call UID and Revision have an answer other than `NOT_SUPPORTED`.
pub fn discovery(function: u32) -> Option<Discovery> {
    let fast = function & (1 << 31) != 0;
    let number = function & 0xFFFF;
    match function {
        VENDOR_HYP_CALL_UID => Some(Discovery::Values(HYPERVISOR_UID.map(u64::from))),
        VENDOR_HYP_REVISION => Some(Discovery::Values([u64::from(REVISION.0), u64::from(REVISION.1), 0, 0])),
        TRNG_VERSION | TRNG_FEATURES => Some(Discovery::NotSupported),
        _ if fast && number >= 0xFF00 => Some(Discovery::NotSupported),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_probes_are_answered() {
        // What a Linux 6.1 guest asks at boot (drivers/char/hw_random/arm_smccc_trng.c through
        // smccc_probe_trng, and kvm_init_hyp_services).
        assert_eq!(discovery(TRNG_VERSION), Some(Discovery::NotSupported));
        let Some(Discovery::Values(uid)) = discovery(VENDOR_HYP_CALL_UID) else { panic!("no UID") };
        assert_eq!(uid, [0xf4bc_f68f, 0x9d47_88cd, 0xf286_5a85, 0x349d_f11f]);
        // Not KVM's UID (28b46fb6-2ec5-11e9-a9ca-4b564d003a74), so Linux looks for no KVM service.
        assert_ne!(uid[0], 0xb66f_b428);
        assert_eq!(discovery(VENDOR_HYP_REVISION), Some(Discovery::Values([0, 1, 0, 0])));
        assert_eq!(discovery(VENDOR_HYP_CALL_COUNT).map(|d| d.x0()), Some(NOT_SUPPORTED));
    }

    #[test]
    fn general_queries_of_every_range_and_nothing_else() {
        // The standard service's and the SiP service's UID queries, 32- and 64-bit forms.
        for f in [0x8400_FF01, 0xC400_FF01, 0x8200_FF01, 0x8600_FF02, 0xBF00_FF03] {
            assert_eq!(discovery(f), Some(Discovery::NotSupported), "{f:#x}");
        }
        // Ordinary calls are not discovery calls: PSCI, the hypervisor's own, unknown ones.
        for f in [0x8400_0000, 0x8400_00FF, 0xC600_0000, 0xC600_00FF, 0x8400_0052, 0x0600_FF01] {
            assert_eq!(discovery(f), None, "{f:#x}");
        }
    }
}
