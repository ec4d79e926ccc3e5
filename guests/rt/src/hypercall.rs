//! The hypervisor's own hypercalls (docs/guest-abi.md): SMCCC fast calls over HVC, owner 6.
//!
//! Both return the raw x0. Under our hypervisor that is 0; directly on QEMU, whose firmware
//! emulation knows only PSCI, it is SMCCC `NOT_SUPPORTED` (-1). [`platform`] tells the two apart
//! that way.

use core::fmt;
use core::sync::atomic::{AtomicU8, Ordering};

/// `HV_NULL`: does nothing, returns 0.
pub const HV_NULL: u32 = 0xC600_0000;
/// `HV_MARK`: x1 = marker id, x2 = value; the hypervisor emits a trace `mark` event.
pub const HV_MARK: u32 = 0xC600_0001;
/// `HV_YIELD`: gives the physical core to another runnable vCPU, if any.
pub const HV_YIELD: u32 = 0xC600_0002;
/// `HV_BENCH`: x1 = phase (0 start, 1 stop, 2 start on every core), x2 = operation id, x3 =
/// iterations; the hypervisor counts its own (EL2) retired instructions between start and stop.
pub const HV_BENCH: u32 = 0xC600_0003;
/// `HV_BENCH_MOVE`: x1 = a physical core; the hypervisor hands the calling vCPU over to it.
pub const HV_BENCH_MOVE: u32 = 0xC600_0004;
/// SMCCC `INVALID_PARAMETERS` as the raw x0.
pub const INVALID_PARAMETERS: u64 = -2i64 as u64;
/// SMCCC `NOT_SUPPORTED` as the raw x0.
pub const NOT_SUPPORTED: u64 = -1i64 as u64;

/// `HV_NULL`; returns the raw x0.
pub fn hv_null() -> u64 {
    smccc::hvc64(HV_NULL, [0; 17])[0]
}

/// `HV_MARK(id, value)`; returns the raw x0.
pub fn hv_mark(id: u32, value: u64) -> u64 {
    let mut args = [0; 17];
    args[0] = u64::from(id);
    args[1] = value;
    smccc::hvc64(HV_MARK, args)[0]
}

/// `HV_YIELD`; returns the raw x0.
pub fn hv_yield() -> u64 {
    smccc::hvc64(HV_YIELD, [0; 17])[0]
}

/// `HV_BENCH(phase, op, iterations)`; returns the raw x0.
pub fn hv_bench(phase: u64, op: u64, iterations: u64) -> u64 {
    let mut args = [0; 17];
    args[0] = phase;
    args[1] = op;
    args[2] = iterations;
    smccc::hvc64(HV_BENCH, args)[0]
}

/// `HV_BENCH_MOVE(core)`; returns the raw x0.
pub fn hv_bench_move(core: u64) -> u64 {
    let mut args = [0; 17];
    args[0] = core;
    smccc::hvc64(HV_BENCH_MOVE, args)[0]
}

/// Where the guest runs, as told by `HV_NULL`'s answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Platform {
    /// `HV_NULL` returned 0: our hypervisor.
    Hypervisor,
    /// `HV_NULL` returned `NOT_SUPPORTED`: QEMU's `virt` board without a hypervisor.
    BareQemu,
    /// Any other answer.
    Unknown,
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Platform::Hypervisor => "hypervisor",
            Platform::BareQemu => "bare-qemu",
            Platform::Unknown => "unknown",
        })
    }
}

/// 0: not asked yet.
static PLATFORM: AtomicU8 = AtomicU8::new(0);

/// The platform, found with one `HV_NULL` on first use.
pub fn platform() -> Platform {
    match PLATFORM.load(Ordering::Relaxed) {
        1 => Platform::Hypervisor,
        2 => Platform::BareQemu,
        3 => Platform::Unknown,
        _ => {
            let platform = match hv_null() {
                0 => Platform::Hypervisor,
                NOT_SUPPORTED => Platform::BareQemu,
                _ => Platform::Unknown,
            };
            PLATFORM.store(platform as u8 + 1, Ordering::Relaxed);
            platform
        }
    }
}

/// The answer `HV_MARK` must give on this platform: 0 under the hypervisor, `NOT_SUPPORTED` on
/// bare QEMU.
pub fn expected_mark_answer() -> u64 {
    match platform() {
        Platform::BareQemu => NOT_SUPPORTED,
        _ => 0,
    }
}

/// A short name for a raw SMCCC x0.
pub fn answer_name(x0: u64) -> &'static str {
    match x0 as i64 {
        0 => "SUCCESS",
        -1 => "NOT_SUPPORTED",
        -2 => "INVALID_PARAMETERS",
        -3 => "DENIED",
        _ => "other",
    }
}
