//! `reset`: PSCI `SYSTEM_RESET` restarts the guest.
//!
//! A boot counter lives in scratch RAM above the image, which a reset leaves alone (RAM keeps
//! its contents through a warm reset, as on real boards and in QEMU); a word in `.data` proves
//! that the image itself was loaded again.
//!
//! 1. First boot (counter 0): the boot vCPU sets the counter to 1, dirties `.data`, starts
//!    vCPU 1 with `CPU_ON` and spins. vCPU 1 calls `SYSTEM_RESET`: the whole guest must restart
//!    at its entry point on vCPU 0, whatever vCPU asked.
//! 2. Second boot (counter 1): `.data` must hold its initial value again, vCPU 1 must be OFF
//!    (a reset turns every vCPU but the boot vCPU off), and the counter goes to 2. The guest
//!    reports `reset: boots=2` and passes.
//!
//! Any other counter value is a failure (a reset that came twice, or RAM wiped).

#![no_std]
#![no_main]
#![deny(unsafe_code)]

use core::sync::atomic::{AtomicU64, Ordering};
use guest_rt::psci::{self, AffinityState};
use guest_rt::{ensure, fail, mem, println, Fail};

guest_rt::guest_main!(main);

/// `.data`, never zero-initialised: its initial value comes from the image.
static IMAGE_WORD: AtomicU64 = AtomicU64::new(IMAGE_INITIAL);
const IMAGE_INITIAL: u64 = 0x5EED_1A6E;
/// What the first boot leaves in it before the reset.
const DIRTY: u64 = 0xD1E7;
/// Written with the boot counter so that a wiped or random scratch word is not taken for one.
const MAGIC: u64 = 0x8E5E_7000;
/// How long to wait for another vCPU's state change.
const TIMEOUT_MS: u64 = 5_000;

fn main(_x0: u64) -> Result<(), Fail> {
    let Some(scratch) = mem::scratch(4096) else {
        return Err(fail!("no scratch RAM"));
    };
    let image_word = IMAGE_WORD.swap(DIRTY, Ordering::AcqRel);
    ensure!(image_word == IMAGE_INITIAL, "the image was not loaded again: .data holds {image_word:#x}");
    let boots = if scratch[0] & !0xff == MAGIC { scratch[0] & 0xff } else { 0 };
    match boots {
        0 => {
            scratch[0] = MAGIC | 1;
            println!("reset: boot 1, vCPU 1 resets the guest");
            if let Err(e) = psci::cpu_on(1, reset_from_secondary, 0) {
                return Err(fail!("CPU_ON of vCPU 1: {e:?}"));
            }
            // Stopped by the reset; coming back here would mean it never happened.
            let start = guest_rt::timer::now();
            while guest_rt::timer::us_from_ticks(guest_rt::timer::now() - start) < TIMEOUT_MS * 1000 {
                guest_rt::relax();
            }
            Err(fail!("SYSTEM_RESET from vCPU 1 did not restart the guest"))
        }
        1 => {
            scratch[0] = MAGIC | 2;
            let state = psci::affinity_info(1);
            ensure!(matches!(state, Ok(AffinityState::Off)), "after the reset vCPU 1 is {state:?}, not OFF");
            println!("reset: boots=2 image reloaded, vCPU 1 off");
            Ok(())
        }
        n => Err(fail!("boot counter {n}: the guest was reset more than once")),
    }
}

fn reset_from_secondary(_context: u64) -> ! {
    let err = psci::system_reset();
    guest_rt::finish(Err(fail!("SYSTEM_RESET returned {err:?}")))
}
