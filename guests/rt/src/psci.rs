//! PSCI over HVC (docs/guest-abi.md), and the secondary-vCPU entry behind [`cpu_on`].
//!
//! [`cpu_on`] starts a vCPU at this crate's assembly entry, which turns the MMU on with the
//! shared identity map, takes the stack of that vCPU (one per `MPIDR_EL1.Aff0`, up to
//! [`MAX_VCPUS`]), installs the exception vectors and calls the Rust function given to
//! `cpu_on` with its context. The function and context travel through a per-vCPU start slot,
//! claimed by `cpu_on` and freed by the started vCPU, so a second `CPU_ON` aimed at a vCPU that is
//! already on (or still starting) never disturbs it: the platform's answer (`ALREADY_ON`,
//! `ON_PENDING`) is simply returned.

use crate::{cpu_index, MAX_VCPUS};
use core::arch::naked_asm;
use core::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use smccc::psci::{self as raw, LowestAffinityLevel};
use smccc::Hvc;

pub use smccc::psci::{
    AffinityState, Error, Version, PSCI_AFFINITY_INFO_64, PSCI_CPU_OFF, PSCI_CPU_ON_64, PSCI_FEATURES, PSCI_SYSTEM_OFF,
    PSCI_SYSTEM_RESET, PSCI_VERSION,
};

/// Size of each secondary vCPU's stack.
pub const STACK_SIZE: usize = 32 * 1024;

/// PSCI return codes as raw values (for printing and for callers that want the number).
pub fn error_code(error: Error) -> i64 {
    i64::from(error)
}

/// `PSCI_VERSION`.
pub fn version() -> Result<Version, Error> {
    raw::version::<Hvc>()
}

/// `PSCI_FEATURES` for `function_id`: the feature flags, or `NOT_SUPPORTED`.
pub fn features(function_id: u32) -> Result<u32, Error> {
    raw::psci_features::<Hvc>(function_id)
}

/// `AFFINITY_INFO` for one vCPU (lowest affinity level 0).
pub fn affinity_info(target_mpidr: u64) -> Result<AffinityState, Error> {
    raw::affinity_info::<Hvc>(target_mpidr, LowestAffinityLevel::All)
}

/// `CPU_OFF` for the calling vCPU. Returns only if the platform refused (the error it gave).
pub fn cpu_off() -> Error {
    crate::gic::irq_disable();
    match raw::cpu_off::<Hvc>() {
        Ok(()) => Error::Unknown(0),
        Err(e) => e,
    }
}

/// `SYSTEM_OFF`. Returns only if the platform refused.
pub fn system_off() -> Error {
    match raw::system_off::<Hvc>() {
        Ok(()) => Error::Unknown(0),
        Err(e) => e,
    }
}

/// `SYSTEM_RESET`. Returns only if the platform refused.
pub fn system_reset() -> Error {
    match raw::system_reset::<Hvc>() {
        Ok(()) => Error::Unknown(0),
        Err(e) => e,
    }
}

/// `CPU_ON` (64-bit): starts the vCPU whose MPIDR is `target_mpidr` at `entry(context)`, on its
/// own stack, with the MMU and exception vectors set up.
///
/// `entry` runs with IRQs masked and must never return (it ends with [`cpu_off`] or
/// [`crate::finish`]). A target whose `Aff0` is [`MAX_VCPUS`] or more, or with other affinity
/// fields set, has no stack here: that is `INVALID_PARAMETERS` without asking the platform.
pub fn cpu_on(target_mpidr: u64, entry: fn(u64) -> !, context: u64) -> Result<(), Error> {
    let index = (target_mpidr & 0xff) as usize;
    if index >= MAX_VCPUS || target_mpidr & !0xff != 0 {
        return Err(Error::InvalidParameters);
    }
    let slot = &SLOTS[index];
    let claimed = slot.state.compare_exchange(FREE, CLAIMED, Ordering::Acquire, Ordering::Relaxed).is_ok();
    if claimed {
        slot.entry.store(entry as usize, Ordering::Relaxed);
        slot.context.store(context, Ordering::Relaxed);
        slot.state.store(READY, Ordering::Release);
    }
    // Not claimed: a start of that vCPU is in flight (its slot is still READY), so it is on or
    // on its way; ask the platform anyway, which must say ALREADY_ON or ON_PENDING.
    let result = raw::cpu_on::<Hvc>(target_mpidr, secondary_entry as *const () as usize as u64, context);
    if claimed && result.is_err() {
        // Nobody will consume the slot: the vCPU was not started by this call.
        slot.state.store(FREE, Ordering::Release);
    }
    result
}

const FREE: u8 = 0;
const CLAIMED: u8 = 1;
const READY: u8 = 2;

/// What a starting vCPU runs; written by `cpu_on`, read and freed by the vCPU.
struct StartSlot {
    state: AtomicU8,
    entry: AtomicUsize,
    context: AtomicU64,
}

static SLOTS: [StartSlot; MAX_VCPUS] =
    [const { StartSlot { state: AtomicU8::new(FREE), entry: AtomicUsize::new(0), context: AtomicU64::new(0) } };
        MAX_VCPUS];

/// The secondary vCPUs' stacks, one per `Aff0`. Placed in the image's `.stack` output section,
/// which the loader does not need to zero.
#[repr(C, align(4096))]
struct Stacks([[u8; STACK_SIZE]; MAX_VCPUS]);

#[unsafe(link_section = ".stack.vcpus")]
static mut VCPU_STACKS: Stacks = Stacks([[0; STACK_SIZE]; MAX_VCPUS]);

/// Where PSCI `CPU_ON` starts a vCPU (MMU off, EL1h, IRQs masked, x0 = context id).
///
/// # Safety
///
/// Only PSCI calls it, as a reset entry point.
#[unsafe(naked)]
unsafe extern "C" fn secondary_entry() -> ! {
    naked_asm!(
        // The context id stays in x19 (callee-saved) across the calls below.
        "mov x19, x0",
        // Turn on the MMU and caches with the initial page table (clobbers x8-x12, x30).
        "bl enable_mmu",
        // This vCPU's stack: VCPU_STACKS[Aff0 + 1] is the top of VCPU_STACKS[Aff0].
        "mrs x1, mpidr_el1",
        "and x1, x1, #0xff",
        "cmp x1, #{max}",
        "b.hs 2f",
        "add x1, x1, #1",
        "mov x2, #{stack_size}",
        "mul x1, x1, x2",
        "adrp x2, {stacks}",
        "add x2, x2, :lo12:{stacks}",
        "add x2, x2, x1",
        "mov sp, x2",
        "bl {set_vector}",
        "mov x0, x19",
        "b {rust_entry}",
        // No stack for this vCPU: park it.
        "2:",
        "wfe",
        "b 2b",
        max = const MAX_VCPUS,
        stack_size = const STACK_SIZE,
        stacks = sym VCPU_STACKS,
        set_vector = sym aarch64_rt::set_exception_vector,
        rust_entry = sym secondary_main,
    )
}

/// The Rust side of a secondary vCPU's start: runs what its start slot says.
extern "C" fn secondary_main(_context_id: u64) -> ! {
    let slot = &SLOTS[cpu_index()];
    // `cpu_on` fills the slot before asking the platform, so it is READY by now, unless the
    // platform started this vCPU a second time for one request (QEMU does that when a second
    // CPU_ON comes before the vCPU is out of reset: it never reports ON_PENDING).
    if !crate::timer::wait_until(1000, || slot.state.load(Ordering::Acquire) == READY) {
        crate::println!("guest-rt: cpu {} started without a pending cpu_on request; parking it", cpu_index());
        crate::halt();
    }
    let entry = slot.entry.load(Ordering::Relaxed);
    let context = slot.context.load(Ordering::Relaxed);
    slot.state.store(FREE, Ordering::Release);
    // SAFETY: `cpu_on` stores only `fn(u64) -> !` pointers (cast to usize) in a slot before
    // marking it READY, and the acquire load above makes that store visible.
    let entry: fn(u64) -> ! = unsafe { core::mem::transmute::<usize, fn(u64) -> !>(entry) };
    entry(context)
}
