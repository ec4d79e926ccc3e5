//! Boots the hypervisor on QEMU's virt board: every core comes online, with the trace to
//! show it; and every failure path ends the run loudly, with the right exit code.
//!
//! Run with `cargo test -p hw-tests --release -- --test-threads=1` (what `cargo xtask test`
//! does): one QEMU at a time, so the timing-sensitive bring-up is not starved.

use std::collections::BTreeSet;
use std::time::Duration;

use hw_tests::{run, QemuConfig, Run};
use vcpu_runtime::trace::{CoreState, TraceKind};

/// Boots with `smp` cores of model `cpu` and checks the whole bring-up.
fn boots(smp: u32, cpu: &str) -> Run {
    let r = run(&QemuConfig::new(smp, cpu));
    eprintln!("hw-tests: {}", r.summary());
    r.assert_clean();
    r.assert_present("hypervisor ");
    r.assert_present("psci: version ");
    for k in 0..smp {
        r.assert_present(&format!("core {k} online (mpidr "));
    }
    r.assert_present(&format!("all {smp} cores online"));
    let events = r.trace_events().unwrap_or_else(|e| panic!("{e}\n{}", r.output));
    let online: Vec<u16> = events
        .iter()
        .filter_map(|e| match e.kind {
            TraceKind::CoreState { core, state: CoreState::Online } => Some(core.0),
            _ => None,
        })
        .collect();
    let distinct: BTreeSet<u16> = online.iter().copied().collect();
    assert_eq!(online.len(), smp as usize, "one online event per core: {online:?}");
    assert_eq!(distinct, (0..smp as u16).collect(), "online events: {online:?}");
    // The boot core reports in before it starts anybody.
    assert_eq!(online[0], 0, "core 0 first: {online:?}");
    r
}

#[test]
fn smp1_cortex_a57() {
    boots(1, "cortex-a57");
}

#[test]
fn smp2_cortex_a57() {
    boots(2, "cortex-a57");
}

#[test]
fn smp4_cortex_a57() {
    let r = boots(4, "cortex-a57");
    r.assert_present("cpu: Arm Cortex-A57");
    r.assert_present("VMID 8 bits");
}

#[test]
fn smp8_cortex_a57() {
    boots(8, "cortex-a57");
}

#[test]
fn smp4_max() {
    let r = boots(4, "max");
    r.assert_present("cpu: QEMU max");
    r.assert_present("PA 52 bits (EL2 map uses 48)");
    r.assert_present("VMID 16 bits");
}

/// Runs a self-test of a failure path (`hv.selftest=NAME`, see platform/qemu-virt/src/selftest.rs).
fn selftest(name: &str, smp: u32, extra: &str) -> Run {
    let r = run(&QemuConfig::new(smp, "cortex-a57").append(&format!("hv.selftest={name} {extra}")));
    eprintln!("hw-tests: {}", r.summary());
    r.assert_present(&format!("selftest: {name}"));
    r.assert_absent("all 2 cores online");
    r
}

#[test]
fn a_boot_core_panic_fails_the_run() {
    let r = selftest("panic", 2, "");
    r.assert_exit(2);
    r.assert_present("panic on core 0 at src/selftest.rs");
}

#[test]
fn a_secondary_panic_fails_the_run() {
    let r = selftest("secondary-panic", 2, "");
    r.assert_exit(2);
    r.assert_present("panic on core 1 at src/selftest.rs");
}

#[test]
fn an_el2_exception_is_reported() {
    let r = selftest("brk", 2, "");
    r.assert_exit(3);
    r.assert_present("EL2 exception on core 0: synchronous from current EL with SPx: EC 0x3c (BRK instruction)");
    r.assert_present("ESR_EL2 0xf2005e1f");
}

#[test]
fn a_stack_overflow_hits_the_guard_region() {
    let r = selftest("overflow", 2, "");
    r.assert_exit(3);
    r.assert_present("EL2 exception on core 1: stack overflow");
    r.assert_present("EC 0x25 (data abort at EL2)");
    r.assert_present("FAR_EL2 is in the guard region under core 1's stack");
}

#[test]
fn a_core_that_never_comes_online_fails_the_run() {
    let r = selftest("hang", 2, "hv.online-timeout-ms=300");
    r.assert_exit(1);
    r.assert_present("FAIL: core 1 (mpidr 0x1) did not come online");
    r.assert_present("FAIL: 1 of 2 cores came online within 300 ms");
}

/// The image's own `memcpy`, `memmove` and `memset` (platform/aarch64/src/asm/mem.S) against
/// byte loops, at every length up to 80 and every alignment, `memmove` at overlaps both ways;
/// then the boot goes on and ends cleanly.
#[test]
fn the_memory_functions_agree_with_byte_loops() {
    let r = run(&QemuConfig::new(2, "cortex-a57").append("hv.selftest=mem"));
    eprintln!("hw-tests: {}", r.summary());
    r.assert_exit(0);
    r.assert_present("selftest: mem: memcpy, memmove and memset agree with byte loops in 42120 cases");
    r.assert_present("all 2 cores online");
}

#[test]
fn the_runner_kills_a_hung_run() {
    let cfg = QemuConfig::new(2, "cortex-a57")
        .append("hv.selftest=hang hv.online-timeout-ms=600000")
        .timeout(Duration::from_secs(2));
    let r = run(&cfg);
    eprintln!("hw-tests: {}", r.summary());
    assert!(r.timed_out && r.exit_code.is_none(), "{}", r.summary());
    assert!(r.duration < Duration::from_secs(10), "{}", r.summary());
}
