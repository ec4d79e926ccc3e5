//! Cores: which one is running ([`current_core`]), starting the secondaries with PSCI
//! `CPU_ON`, and the hand-shake by which they report in.
//!
//! Core ids are dense, in boot order: the boot core is core 0, and the board numbers the
//! others as it starts them (in device-tree order). The entry code keeps the calling core's id
//! in TPIDR_EL2 and gives core `k` stack slot `k`.

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use aarch64_cpu::registers::{Readable, MPIDR_EL1, TPIDR_EL2};
use smccc::psci;
use vcpu_runtime::{CoreId, Nanos};

use crate::layout::MAX_CORES;
use crate::{mmu, timer};

const _: () = assert!(MAX_CORES <= 64, "ONLINE is a 64-bit mask");

/// The affinity fields of MPIDR_EL1 (Aff3, Aff2, Aff1, Aff0): what a device tree's `/cpus/*`
/// `reg` and PSCI `CPU_ON` use.
pub const MPIDR_AFFINITY_MASK: u64 = 0xff_00ff_ffff;

extern "C" {
    /// The secondaries' entry point, in src/asm/entry.S.
    fn __hv_secondary_entry();
}

/// Bit `k` is set once core `k` has reported in.
static ONLINE: AtomicU64 = AtomicU64::new(0);

/// Bit `k` is set while a physical core has been (or is being) started as core `k`: a stack
/// slot is never given to two cores. Bit 0, the boot core, is always set.
static STARTED: AtomicU64 = AtomicU64::new(1);

/// The calling core's id.
pub fn current_core() -> CoreId {
    CoreId(current_core_index() as u16)
}

pub(crate) fn current_core_index() -> usize {
    // TPIDR_EL2 is set by the entry code before any Rust code runs, to an index < MAX_CORES.
    TPIDR_EL2.get() as usize
}

/// The calling core's MPIDR affinity (MPIDR_EL1 & [`MPIDR_AFFINITY_MASK`]).
pub fn current_mpidr() -> u64 {
    MPIDR_EL1.get() & MPIDR_AFFINITY_MASK
}

/// Why a secondary could not be started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartError {
    /// Core ids run from 1 to `MAX_CORES - 1` for secondaries.
    NoStackSlot { core: CoreId },
    /// [`mmu::init`] has not built the final map the secondaries switch to.
    MmuNotReady,
    /// A core was already started as this core id (its stack slot is taken).
    AlreadyStarted { core: CoreId },
    /// PSCI refused `CPU_ON`.
    Psci { core: CoreId, mpidr: u64, error: psci::Error },
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::NoStackSlot { core } => {
                write!(f, "core {} has no stack slot (secondaries are 1..={})", core.0, MAX_CORES - 1)
            }
            StartError::MmuNotReady => write!(f, "the EL2 identity map is not built yet"),
            StartError::AlreadyStarted { core } => write!(f, "core {} was already started", core.0),
            StartError::Psci { core, mpidr, error } => {
                write!(f, "PSCI CPU_ON of core {} (mpidr {mpidr:#x}) failed: {error:?}", core.0)
            }
        }
    }
}

/// Starts the core with MPIDR affinity `mpidr` as core `core`, with PSCI `CPU_ON` over the
/// conduit `C` (`smccc::Smc` on QEMU's virt board: the device tree's `/psci` `method`). The core
/// enters `__hv_secondary_entry`, moves to the final map and calls the board's
/// `secondary_main(core)`. Each core id can be started once: a stack slot is never shared.
/// Starting an MPIDR that is already on fails in PSCI (`ALREADY_ON`).
pub fn start_secondary<C: smccc::Call>(core: CoreId, mpidr: u64) -> Result<(), StartError> {
    if core.0 == 0 || usize::from(core.0) >= MAX_CORES {
        return Err(StartError::NoStackSlot { core });
    }
    if !mmu::is_initialised() {
        return Err(StartError::MmuNotReady);
    }
    let bit = 1u64 << core.0;
    if STARTED.fetch_or(bit, Ordering::AcqRel) & bit != 0 {
        return Err(StartError::AlreadyStarted { core });
    }
    let entry = __hv_secondary_entry as *const () as usize as u64;
    psci::cpu_on::<C>(mpidr, entry, u64::from(core.0)).map_err(|error| {
        // PSCI started nothing: the slot is free again.
        STARTED.fetch_and(!bit, Ordering::AcqRel);
        StartError::Psci { core, mpidr, error }
    })
}

/// Starts again a core that was started once ([`start_secondary`]) and has since turned itself
/// off with [`power_off_self`]: PSCI `CPU_ON` with the same entry point and core id, so it
/// comes back through `__hv_secondary_entry` onto its own stack slot. PSCI answers
/// `ALREADY_ON` while the core has not finished turning off; the caller retries later.
pub fn restart_secondary<C: smccc::Call>(core: CoreId, mpidr: u64) -> Result<(), StartError> {
    if core.0 == 0 || usize::from(core.0) >= MAX_CORES {
        return Err(StartError::NoStackSlot { core });
    }
    if STARTED.load(Ordering::Acquire) & (1u64 << core.0) == 0 {
        // Never started: its first start goes through `start_secondary`.
        return Err(StartError::NoStackSlot { core });
    }
    let entry = __hv_secondary_entry as *const () as usize as u64;
    psci::cpu_on::<C>(mpidr, entry, u64::from(core.0)).map_err(|error| StartError::Psci { core, mpidr, error })
}

/// Turns the calling core off with PSCI `CPU_OFF` (which only ever turns off its caller). On
/// success it does not return: the core comes back, if ever, at `__hv_secondary_entry` with a
/// fresh stack. It returns the error when the firmware refuses (`DENIED`, or `NOT_SUPPORTED`
/// on a platform without the call).
pub fn power_off_self<C: smccc::Call>() -> psci::Error {
    ONLINE.fetch_and(!(1u64 << current_core_index()), Ordering::AcqRel);
    let result = psci::cpu_off::<C>();
    ONLINE.fetch_or(1 << current_core_index(), Ordering::AcqRel);
    match result {
        Ok(()) => psci::Error::NotSupported,
        Err(e) => e,
    }
}

/// Records that the calling core is up (for [`wait_online`]).
pub fn report_online() {
    ONLINE.fetch_or(1 << current_core_index(), Ordering::Release);
}

/// The cores that have reported in, as a bit mask (bit `k`: core `k`).
pub fn online_mask() -> u64 {
    ONLINE.load(Ordering::Acquire)
}

/// Waits until cores `0..count` have all reported in, or `timeout` has passed. Returns the mask
/// of the cores that did.
pub fn wait_online(count: usize, timeout: Nanos) -> Result<u64, u64> {
    let want = if count >= 64 { u64::MAX } else { (1u64 << count) - 1 };
    let start = timer::now();
    loop {
        let mask = online_mask();
        if mask & want == want {
            return Ok(mask);
        }
        if timer::now().since(start) > timeout {
            return Err(mask);
        }
        core::hint::spin_loop();
    }
}

/// Parks the calling core for good (until the runtime's core loop exists).
pub fn park() -> ! {
    loop {
        aarch64_cpu::asm::wfe();
    }
}

/// Wakes every core waiting in [`wait_for_event`] (`SEV`), after the caller's earlier stores.
pub fn wake_all() {
    crate::sysreg::dsb_ish();
    aarch64_cpu::asm::sev();
}

/// Waits for an event (`WFE`): a [`wake_all`], an interrupt, or a spurious wake-up.
pub fn wait_for_event() {
    aarch64_cpu::asm::wfe();
}
