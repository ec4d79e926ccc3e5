//! `misbehave`: one after another, the faults a hypervisor must survive, and what came back.
//!
//! Each step prints one line
//! `misbehave: step NAME: WHAT-HAPPENED (expected on PLATFORM: EXPECTATION) ok|UNEXPECTED`
//! where PLATFORM is `hypervisor` or `bare-qemu` (told apart by `HV_NULL`'s answer). The guest
//! passes if every step got an architecturally valid answer for the platform it runs on:
//!
//! | step | does | valid answers |
//! |---|---|---|
//! | `stage2-read`, `stage2-write` | load / store at `0x8000_0000`, 1 GiB above RAM start | a data abort (hypervisor: stage-2 fault, abort injected; bare QEMU: its bus's external abort) |
//! | `device-hole-read` | load at `0x0F00_0000`, where no device is | a data abort |
//! | `hvc-unknown` | HVC with an undefined function id of the hypervisor service range (`0xC600_00FF`) | x0 = `NOT_SUPPORTED` |
//! | `hvc-unknown-psci` | HVC with an undefined PSCI function id (`0x8400_00FF`) | x0 = `NOT_SUPPORTED` |
//! | `psci-features-unknown` | PSCI_FEATURES of that id | `NOT_SUPPORTED` |
//! | `psci-cpu-on-bad-mpidr` | CPU_ON of MPIDR `0xFF_0000` (no such vCPU) | `INVALID_PARAMETERS` |
//! | `smc` | SMC with PSCI_VERSION (the conduit is HVC) | an undefined-instruction exception (bare QEMU: no EL3), or x0 = `NOT_SUPPORTED` |
//! | `uart-write-fr`, `uart-write-periphid` | store to the PL011's read-only flag and ID registers | the write is ignored, or a data abort |
//! | `uart-after` | reads the flag register and prints | the UART still works |

#![no_std]
#![no_main]
#![deny(unsafe_code)]

use guest_rt::hypercall::{self, Platform, NOT_SUPPORTED};
use guest_rt::probe::{self, Outcome};
use guest_rt::{console, ensure, println, psci, Fail};

guest_rt::guest_main!(main);

/// An undefined function id in the hypervisor service range (owner 6, fast, SMC64).
const HV_UNKNOWN: u32 = 0xC600_00FF;
/// An undefined function id in the PSCI range (fast, SMC32).
const PSCI_UNKNOWN: u32 = 0x8400_00FF;
/// A CPU that no test platform has.
const BAD_MPIDR: u64 = 0xFF_0000;
/// SMCCC INVALID_PARAMETERS as raw x0.
const INVALID_PARAMETERS: u64 = -2i64 as u64;

struct Steps {
    platform: Platform,
    total: u32,
    failed: u32,
}

impl Steps {
    /// Prints one step's line and counts it.
    fn report(&mut self, name: &str, what: core::fmt::Arguments, expected: &str, ok: bool) {
        self.total += 1;
        if !ok {
            self.failed += 1;
        }
        println!(
            "misbehave: step {}: {} (expected on {}: {}) {}",
            name,
            what,
            self.platform,
            expected,
            if ok { "ok" } else { "UNEXPECTED" }
        );
    }

    /// A load or store that must abort.
    fn must_abort(&mut self, name: &str, addr: u64, outcome: Outcome) {
        let expected = match self.platform {
            Platform::Hypervisor => "stage-2 fault, data abort injected",
            _ => "data abort (QEMU's bus error on an unassigned address)",
        };
        let what = match (outcome.is_data_abort(), self.platform) {
            (true, Platform::Hypervisor) => "abort-injected",
            (true, _) => "data-abort",
            (false, _) => "no-abort",
        };
        self.report(name, format_args!("{} addr={:#x} {}", what, addr, outcome), expected, outcome.is_data_abort());
    }

    /// A call whose x0 must be exactly `want`.
    fn must_return(&mut self, name: &str, outcome: Outcome, want: u64) {
        let ok = outcome == Outcome::Completed(want);
        let expected = hypercall::answer_name(want);
        match outcome {
            Outcome::Completed(x0) => {
                self.report(name, format_args!("returned {} ({:#x})", hypercall::answer_name(x0), x0), expected, ok)
            }
            other => self.report(name, format_args!("{}", other), expected, ok),
        }
    }
}

fn main(_x0: u64) -> Result<(), Fail> {
    let platform = hypercall::platform();
    let mut steps = Steps { platform, total: 0, failed: 0 };
    println!("misbehave: platform={}", platform);

    // Memory the guest does not have.
    steps.must_abort("stage2-read", probe::OUTSIDE_RAM, probe::read32(probe::OUTSIDE_RAM));
    steps.must_abort("stage2-write", probe::OUTSIDE_RAM + 0x40, probe::write32(probe::OUTSIDE_RAM + 0x40, 0xdead_beef));
    steps.must_abort("device-hole-read", probe::DEVICE_HOLE, probe::read32(probe::DEVICE_HOLE));

    // Calls nobody implements.
    steps.must_return("hvc-unknown", probe::hvc(HV_UNKNOWN, [1, 2, 3]), NOT_SUPPORTED);
    steps.must_return("hvc-unknown-psci", probe::hvc(PSCI_UNKNOWN, [0, 0, 0]), NOT_SUPPORTED);
    let features = psci::features(PSCI_UNKNOWN);
    steps.report(
        "psci-features-unknown",
        format_args!("returned {:?}", features),
        "NOT_SUPPORTED",
        features == Err(psci::Error::NotSupported),
    );
    steps.must_return("psci-cpu-on-bad-mpidr", probe::hvc(psci::PSCI_CPU_ON_64, [BAD_MPIDR, 0, 0]), INVALID_PARAMETERS);

    // SMC, although the conduit is HVC.
    let smc = probe::smc(psci::PSCI_VERSION, [0, 0, 0]);
    let (what, ok) = match smc {
        o if o.is_undefined() => ("undefined-instruction", true),
        Outcome::Completed(NOT_SUPPORTED) => ("returned NOT_SUPPORTED", true),
        _ => ("other", false),
    };
    let expected = match platform {
        Platform::BareQemu => "undefined-instruction (no EL3) or NOT_SUPPORTED",
        _ => "NOT_SUPPORTED or undefined-instruction",
    };
    steps.report("smc", format_args!("{} {}", what, smc), expected, ok);

    // The emulated UART, misused: writes to read-only registers.
    for (name, offset) in [("uart-write-fr", console::UARTFR), ("uart-write-periphid", console::UARTPERIPHID0)] {
        let outcome = console::misuse_write(offset, 0xffff_ffff);
        let what = match outcome {
            Outcome::Completed(_) => "write-ignored",
            o if o.is_data_abort() => "data-abort",
            _ => "other",
        };
        let ok = matches!(outcome, Outcome::Completed(_)) || outcome.is_data_abort();
        steps.report(name, format_args!("{} {}", what, outcome), "write ignored, or a data abort", ok);
    }
    let fr = console::probe_read(console::UARTFR);
    steps.report(
        "uart-after",
        format_args!("flag register read: {}", fr),
        "the UART still works",
        matches!(fr, Outcome::Completed(_)),
    );

    println!("misbehave: steps={} unexpected={}", steps.total, steps.failed);
    ensure!(steps.failed == 0, "{} of {} steps got an unexpected answer", steps.failed, steps.total);
    Ok(())
}
