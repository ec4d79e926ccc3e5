//! The EL1 exception handlers behind `aarch64-rt`'s vector table.
//!
//! - synchronous exceptions: a fault probe ([`crate::probe`]) that is armed on this vCPU gets
//!   the exception recorded and execution resumes after the faulting instruction; anything else
//!   is fatal (it is printed and the guest finishes with FAIL);
//! - IRQs: dispatched to the registered handlers by [`crate::gic::dispatch`];
//! - FIQs and SErrors: fatal (a guest uses neither).

use aarch64_cpu::registers::{Readable, ESR_EL1, FAR_EL1};
use aarch64_rt::{ExceptionHandlers, RegisterStateRef};

struct Handlers;

impl ExceptionHandlers for Handlers {
    extern "C" fn sync_current(mut state: RegisterStateRef) {
        let esr = ESR_EL1.get();
        let far = FAR_EL1.get();
        if crate::probe::take_exception(esr, far) {
            // SAFETY: the probe that was armed executes exactly one 4-byte instruction that may
            // fault (see crate::probe), and is written to continue after it with its registers as
            // they were; moving ELR past that instruction is what it expects.
            unsafe { state.get_mut().elr += 4 };
            return;
        }
        fatal("synchronous exception", &state, esr, far);
    }

    extern "C" fn irq_current(_state: RegisterStateRef) {
        crate::gic::dispatch();
    }

    extern "C" fn fiq_current(state: RegisterStateRef) {
        fatal("FIQ", &state, ESR_EL1.get(), FAR_EL1.get());
    }

    extern "C" fn serror_current(state: RegisterStateRef) {
        fatal("SError", &state, ESR_EL1.get(), FAR_EL1.get());
    }
}

fn fatal(what: &str, state: &RegisterStateRef, esr: u64, far: u64) -> ! {
    crate::console::print_fatal(format_args!(
        "guest-rt: unexpected {} on cpu {}: ec={:#04x} esr={:#x} elr={:#x} far={:#x} spsr={:#x}\n",
        what,
        crate::cpu_index(),
        (esr >> 26) & 0x3f,
        esr,
        state.elr,
        far,
        state.spsr
    ));
    crate::finish(Err(crate::fail!("unexpected {} on cpu {} (esr={:#x})", what, crate::cpu_index(), esr)))
}

aarch64_rt::exception_handlers!(Handlers);
