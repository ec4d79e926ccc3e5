//! The vCPU model: configuration, scheduling class and the states a vCPU goes through.

use crate::ids::{CoreMask, VcpuId, VmId};
use crate::time::Nanos;

/// Where a vCPU is in its life. Exactly one core owns a vCPU in every state but
/// [`Migrating`](VcpuState::Migrating), where it is in flight to its new owner's mailbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum VcpuState {
    /// Ready to run, waiting in its owner's run queue.
    Runnable = 0,
    /// Running on its owner core right now.
    Running = 1,
    /// Waiting for an interrupt (the guest executed WFI).
    Blocked = 2,
    /// Switched off by the guest with PSCI CPU_OFF (or never switched on): it never runs until
    /// a sibling's CPU_ON.
    Parked = 3,
    /// Being handed over to another core.
    Migrating = 4,
    /// Ended for good (guest SYSTEM_OFF, fatal fault).
    Stopped = 5,
}

impl VcpuState {
    #[inline]
    pub(crate) const fn from_bits(bits: u32) -> VcpuState {
        // A table, not a match: this sits on the scheduling path.
        const TABLE: [VcpuState; 8] = [
            VcpuState::Runnable,
            VcpuState::Running,
            VcpuState::Blocked,
            VcpuState::Parked,
            VcpuState::Migrating,
            VcpuState::Stopped,
            VcpuState::Stopped,
            VcpuState::Stopped,
        ];
        TABLE[(bits & 0x7) as usize]
    }
}

/// A real-time reservation: `budget` of CPU time in every `period`, scheduled EDF as a
/// constant-bandwidth server. The budget is time at full speed: on a core running at a lower
/// capacity it lasts longer, so it stands for the same work (`CoreRuntime::set_capacity`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub budget: Nanos,
    pub period: Nanos,
}

/// Fixed-point scale of bandwidths: parts per million of one core.
pub const PPM: u64 = 1_000_000;

impl Reservation {
    /// Shortest reservation period a scenario may ask for.
    pub const MIN_PERIOD: Nanos = Nanos::from_micros(100);

    /// The share of one core this reservation takes, in parts per million (rounded up, so
    /// admission never under-counts).
    pub const fn bandwidth_ppm(&self) -> u64 {
        if self.period.0 == 0 {
            return u64::MAX;
        }
        (self.budget.0 as u128 * PPM as u128).div_ceil(self.period.0 as u128) as u64
    }
}

/// Formats a ppm bandwidth as a percentage with one decimal.
pub fn ppm_percent(ppm: u64) -> impl core::fmt::Display {
    struct P(u64);
    impl core::fmt::Display for P {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            let tenths = self.0.saturating_add(500) / 1000;
            write!(f, "{}.{}%", tenths / 10, tenths % 10)
        }
    }
    P(ppm)
}

/// What the runtime must know about a vCPU when the system is built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VcpuConfig {
    pub vm: VmId,
    /// Index of this vCPU inside its VM (its MPIDR affinity as the guest sees it).
    pub index_in_vm: u16,
    /// Proportional-share weight (1..=65535); CPU time divides in proportion to weight.
    pub weight: u32,
    /// Optional real-time reservation.
    pub reservation: Option<Reservation>,
    /// Physical cores the vCPU may run on.
    pub affinity: CoreMask,
    /// Whether the vCPU starts runnable (a VM's boot vCPU) or parked (secondaries wait for a
    /// guest CPU_ON).
    pub starts_parked: bool,
}

/// Static facts about a vCPU, kept by the [`System`](crate::System) for everyone to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuInfo {
    pub id: VcpuId,
    pub vm: VmId,
    pub index_in_vm: u16,
}
