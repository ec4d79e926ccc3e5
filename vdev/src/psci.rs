//! Guest PSCI 1.1, all virtual: a guest's CPU_OFF parks a vCPU, CPU_ON unparks a sibling, and no
//! call ever reaches the firmware or powers a physical core (only the governor does that).
//!
//! The platform decodes an HVC (or trapped SMC) into the function id and arguments and calls
//! [`handle`]; the answer is what to put in x0 and what to do with the caller.

use vcpu_runtime::{AffinityState, PowerOnError, VcpuId};

/// PSCI return codes (PSCI 1.1, table 6).
pub mod ret {
    pub const SUCCESS: i64 = 0;
    pub const NOT_SUPPORTED: i64 = -1;
    pub const INVALID_PARAMETERS: i64 = -2;
    pub const DENIED: i64 = -3;
    pub const ALREADY_ON: i64 = -4;
    pub const ON_PENDING: i64 = -5;
    pub const INTERNAL_FAILURE: i64 = -6;
    pub const NOT_PRESENT: i64 = -7;
    pub const DISABLED: i64 = -8;
    pub const INVALID_ADDRESS: i64 = -9;
}

/// Function ids (the 64-bit calling convention ones have bit 30 set; both are accepted).
pub mod func {
    pub const PSCI_VERSION: u32 = 0x8400_0000;
    pub const CPU_SUSPEND: u32 = 0x8400_0001;
    pub const CPU_OFF: u32 = 0x8400_0002;
    pub const CPU_ON: u32 = 0x8400_0003;
    pub const AFFINITY_INFO: u32 = 0x8400_0004;
    pub const MIGRATE: u32 = 0x8400_0005;
    pub const MIGRATE_INFO_TYPE: u32 = 0x8400_0006;
    pub const MIGRATE_INFO_UP_CPU: u32 = 0x8400_0007;
    pub const SYSTEM_OFF: u32 = 0x8400_0008;
    pub const SYSTEM_RESET: u32 = 0x8400_0009;
    pub const PSCI_FEATURES: u32 = 0x8400_000A;
    pub const SMCCC_VERSION: u32 = 0x8000_0000;
    pub const SMCCC_ARCH_FEATURES: u32 = 0x8000_0001;
    /// Bit 30 of a function id: the SMC64/HVC64 calling convention.
    pub const SMC64: u32 = 1 << 30;
}

/// PSCI 1.1 as `PSCI_VERSION` reports it (major in the upper half).
pub const VERSION_1_1: i64 = 0x0001_0001;
/// SMCCC 1.1.
pub const SMCCC_1_1: i64 = 0x0001_0001;
/// MIGRATE_INFO_TYPE: no Trusted OS that needs migrating.
pub const MIGRATE_NOT_REQUIRED: i64 = 2;

/// What the VM offers the PSCI handler: the caller's siblings and their power state.
pub trait PsciVm {
    /// The vCPU of this VM with this MPIDR affinity (Aff0 = its index), if any.
    fn vcpu_by_mpidr(&self, mpidr: u64) -> Option<VcpuId>;
    /// Whether `[ipa, ipa + 4)` is inside the VM's RAM (a valid entry point).
    fn is_ram(&self, ipa: u64) -> bool;
    /// Starts a parked vCPU at `entry` with `context` in x0 (see [`PsciOutcome::Return`]).
    fn power_on(&self, vcpu: VcpuId, entry: u64, context: u64) -> Result<(), PowerOnError>;
    fn affinity_info(&self, vcpu: VcpuId) -> Option<AffinityState>;
}

/// What the platform does after a PSCI call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsciOutcome {
    /// Put this in x0 and resume the caller.
    Return(i64),
    /// CPU_SUSPEND: behave as WFI (block until an interrupt), then return SUCCESS. A power-down
    /// request is allowed to return as if it had been a standby one, keeping all state.
    Suspend,
    /// CPU_OFF: park the caller (no return; a sibling's CPU_ON restarts it at a new entry).
    CpuOff,
    /// SYSTEM_OFF: stop this guest (the others go on).
    SystemOff,
    /// SYSTEM_RESET: restart this guest from its image (the platform turns every vCPU off, loads
    /// the image again and starts the boot vCPU).
    SystemReset,
}

/// Whether `function` (bits 0..31 of x0) is a PSCI or SMCCC architecture call this handles.
pub fn is_psci(function: u32) -> bool {
    let f = function & !func::SMC64;
    (func::PSCI_VERSION..=func::PSCI_FEATURES).contains(&f)
        || f == func::SMCCC_VERSION
        || f == func::SMCCC_ARCH_FEATURES
}

/// Handles one guest PSCI call: `x` are the caller's x0..x3.
pub fn handle(x: [u64; 4], vm: &impl PsciVm) -> PsciOutcome {
    let function = x[0] as u32;
    let sixty_four = function & func::SMC64 != 0;
    // SMC32/HVC32 arguments are 32-bit: the upper halves are not part of the call.
    let arg = |i: usize| if sixty_four { x[i] } else { x[i] & 0xffff_ffff };
    use PsciOutcome::Return;
    match function & !func::SMC64 {
        func::PSCI_VERSION => Return(VERSION_1_1),
        func::SMCCC_VERSION => Return(SMCCC_1_1),
        // No firmware workarounds to advertise.
        func::SMCCC_ARCH_FEATURES => Return(ret::NOT_SUPPORTED),
        func::CPU_SUSPEND => PsciOutcome::Suspend,
        func::CPU_OFF => PsciOutcome::CpuOff,
        func::CPU_ON => {
            let Some(target) = vm.vcpu_by_mpidr(arg(1)) else {
                return Return(ret::INVALID_PARAMETERS);
            };
            let entry = arg(2);
            if !vm.is_ram(entry) {
                return Return(ret::INVALID_ADDRESS);
            }
            Return(match vm.power_on(target, entry, arg(3)) {
                Ok(()) => ret::SUCCESS,
                Err(PowerOnError::AlreadyOn) => ret::ALREADY_ON,
                Err(PowerOnError::OnPending) => ret::ON_PENDING,
                Err(PowerOnError::NoSuchVcpu) => ret::INVALID_PARAMETERS,
            })
        }
        func::AFFINITY_INFO => {
            // Only affinity level 0 (a single vCPU) is supported.
            if arg(2) != 0 {
                return Return(ret::INVALID_PARAMETERS);
            }
            match vm.vcpu_by_mpidr(arg(1)).and_then(|v| vm.affinity_info(v)) {
                Some(AffinityState::On) => Return(0),
                Some(AffinityState::Off) => Return(1),
                Some(AffinityState::OnPending) => Return(2),
                None => Return(ret::INVALID_PARAMETERS),
            }
        }
        func::MIGRATE_INFO_TYPE => Return(MIGRATE_NOT_REQUIRED),
        func::MIGRATE | func::MIGRATE_INFO_UP_CPU => Return(ret::NOT_SUPPORTED),
        func::SYSTEM_OFF => PsciOutcome::SystemOff,
        func::SYSTEM_RESET => PsciOutcome::SystemReset,
        func::PSCI_FEATURES => {
            let queried = arg(1) as u32;
            let base = queried & !func::SMC64;
            let supported = match base {
                func::MIGRATE | func::MIGRATE_INFO_UP_CPU => false,
                // 64-bit variants exist only for the calls that take addresses or MPIDRs.
                func::CPU_SUSPEND | func::CPU_ON | func::AFFINITY_INFO => true,
                _ => is_psci(queried) && queried & func::SMC64 == 0,
            };
            // CPU_SUSPEND's feature flags: original power-state format, no OS-initiated mode.
            Return(if supported { 0 } else { ret::NOT_SUPPORTED })
        }
        _ => Return(ret::NOT_SUPPORTED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::RefCell;

    /// A VM of four vCPUs; vCPU 0 runs, the others are parked until powered on.
    struct Vm {
        on: RefCell<[AffinityState; 4]>,
        started: RefCell<Option<(VcpuId, u64, u64)>>,
    }

    impl Vm {
        fn new() -> Vm {
            Vm {
                on: RefCell::new([AffinityState::On, AffinityState::Off, AffinityState::Off, AffinityState::Off]),
                started: RefCell::new(None),
            }
        }
    }

    impl PsciVm for Vm {
        fn vcpu_by_mpidr(&self, mpidr: u64) -> Option<VcpuId> {
            (mpidr < 4).then_some(VcpuId(mpidr as u16))
        }
        fn is_ram(&self, ipa: u64) -> bool {
            (0x4000_0000..0x4800_0000).contains(&ipa)
        }
        fn power_on(&self, vcpu: VcpuId, entry: u64, context: u64) -> Result<(), PowerOnError> {
            let mut on = self.on.borrow_mut();
            match on[vcpu.index()] {
                AffinityState::On => Err(PowerOnError::AlreadyOn),
                AffinityState::OnPending => Err(PowerOnError::OnPending),
                AffinityState::Off => {
                    on[vcpu.index()] = AffinityState::OnPending;
                    *self.started.borrow_mut() = Some((vcpu, entry, context));
                    Ok(())
                }
            }
        }
        fn affinity_info(&self, vcpu: VcpuId) -> Option<AffinityState> {
            Some(self.on.borrow()[vcpu.index()])
        }
    }

    const CPU_ON64: u64 = (func::CPU_ON | func::SMC64) as u64;

    #[test]
    fn version_and_features() {
        let vm = Vm::new();
        assert_eq!(handle([func::PSCI_VERSION as u64, 0, 0, 0], &vm), PsciOutcome::Return(VERSION_1_1));
        assert_eq!(handle([func::MIGRATE_INFO_TYPE as u64, 0, 0, 0], &vm), PsciOutcome::Return(2));
        let features = |f: u32| handle([func::PSCI_FEATURES as u64, f as u64, 0, 0], &vm);
        for f in [func::CPU_OFF, func::SYSTEM_OFF, func::SYSTEM_RESET, func::CPU_ON | func::SMC64, func::SMCCC_VERSION]
        {
            assert_eq!(features(f), PsciOutcome::Return(0), "{f:#x}");
        }
        for f in [func::MIGRATE, func::SYSTEM_OFF | func::SMC64, 0xC600_0000] {
            assert_eq!(features(f), PsciOutcome::Return(ret::NOT_SUPPORTED), "{f:#x}");
        }
        assert_eq!(handle([0x8400_00ff, 0, 0, 0], &vm), PsciOutcome::Return(ret::NOT_SUPPORTED));
    }

    #[test]
    fn cpu_on_and_affinity_info() {
        let vm = Vm::new();
        let affinity = |mpidr: u64| handle([func::AFFINITY_INFO as u64, mpidr, 0, 0], &vm);
        assert_eq!(affinity(1), PsciOutcome::Return(1)); // OFF
        assert_eq!(handle([CPU_ON64, 1, 0x4008_1000, 42], &vm), PsciOutcome::Return(0));
        assert_eq!(*vm.started.borrow(), Some((VcpuId(1), 0x4008_1000, 42)));
        assert_eq!(affinity(1), PsciOutcome::Return(2)); // ON_PENDING
        assert_eq!(handle([CPU_ON64, 1, 0x4008_1000, 0], &vm), PsciOutcome::Return(ret::ON_PENDING));
        assert_eq!(handle([CPU_ON64, 0, 0x4008_1000, 0], &vm), PsciOutcome::Return(ret::ALREADY_ON));
        assert_eq!(affinity(0), PsciOutcome::Return(0)); // ON
                                                         // Wrong arguments.
        assert_eq!(handle([CPU_ON64, 9, 0x4008_1000, 0], &vm), PsciOutcome::Return(ret::INVALID_PARAMETERS));
        assert_eq!(handle([CPU_ON64, 2, 0x1000, 0], &vm), PsciOutcome::Return(ret::INVALID_ADDRESS));
        assert_eq!(affinity(9), PsciOutcome::Return(ret::INVALID_PARAMETERS));
        assert_eq!(handle([func::AFFINITY_INFO as u64, 1, 1, 0], &vm), PsciOutcome::Return(ret::INVALID_PARAMETERS));
    }

    #[test]
    fn thirty_two_bit_calls_ignore_upper_halves() {
        let vm = Vm::new();
        let upper = 0xdead_beef_0000_0000;
        assert_eq!(
            handle([func::CPU_ON as u64, upper | 2, upper | 0x4008_0000, upper | 7], &vm),
            PsciOutcome::Return(0)
        );
        assert_eq!(*vm.started.borrow(), Some((VcpuId(2), 0x4008_0000, 7)));
    }

    #[test]
    fn power_calls() {
        let vm = Vm::new();
        assert_eq!(handle([func::CPU_OFF as u64, 0, 0, 0], &vm), PsciOutcome::CpuOff);
        assert_eq!(
            handle([(func::CPU_SUSPEND | func::SMC64) as u64, 0x1_0000, 0x4008_0000, 0], &vm),
            PsciOutcome::Suspend
        );
        assert_eq!(handle([func::SYSTEM_OFF as u64, 0, 0, 0], &vm), PsciOutcome::SystemOff);
        assert_eq!(handle([func::SYSTEM_RESET as u64, 0, 0, 0], &vm), PsciOutcome::SystemReset);
        assert!(is_psci(func::CPU_ON | func::SMC64) && is_psci(func::SMCCC_VERSION) && !is_psci(0xC600_0000));
    }
}
