//! Identifiers that cannot be mixed up: a physical core, a VM, a vCPU.

use core::fmt;

/// A physical core, numbered densely from 0 in boot order (not an MPIDR).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct CoreId(pub u16);

/// A virtual machine (guest), numbered densely from 0 in scenario order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct VmId(pub u16);

/// A vCPU, numbered densely from 0 across the whole system (not per VM): it indexes the
/// runtime's vCPU table. The VM and the vCPU's index inside its VM are kept in [`VcpuInfo`](crate::VcpuInfo).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct VcpuId(pub u16);

impl CoreId {
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}
impl VmId {
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}
impl VcpuId {
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for CoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
impl fmt::Display for VmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
impl fmt::Display for VcpuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The set of physical cores a vCPU may run on (up to [`CoreMask::MAX_CORES`] cores).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, Default)]
pub struct CoreMask(pub u64);

impl CoreMask {
    pub const MAX_CORES: usize = 64;
    pub const ALL: CoreMask = CoreMask(u64::MAX);
    pub const NONE: CoreMask = CoreMask(0);

    /// The first `n` cores.
    pub const fn first(n: usize) -> CoreMask {
        if n >= 64 {
            CoreMask::ALL
        } else {
            CoreMask((1u64 << n) - 1)
        }
    }
    pub const fn single(core: CoreId) -> CoreMask {
        CoreMask(1u64 << core.0)
    }
    pub const fn contains(self, core: CoreId) -> bool {
        (core.0 as usize) < 64 && self.0 & (1u64 << core.0) != 0
    }
    pub const fn with(self, core: CoreId) -> CoreMask {
        CoreMask(self.0 | (1u64 << core.0))
    }
    pub const fn without(self, core: CoreId) -> CoreMask {
        CoreMask(self.0 & !(1u64 << core.0))
    }
    pub const fn and(self, other: CoreMask) -> CoreMask {
        CoreMask(self.0 & other.0)
    }
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub const fn count(self) -> u32 {
        self.0.count_ones()
    }
    /// The cores in the mask, lowest first.
    pub fn iter(self) -> impl Iterator<Item = CoreId> {
        let mut bits = self.0;
        core::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let i = bits.trailing_zeros();
            bits &= bits - 1;
            Some(CoreId(i as u16))
        })
    }
}
