//! Live vCPU moves between cores under QEMU: the `wanderer` guest (docs/guests.md) checks its own
//! invariants while the hypervisor moves each of its vCPUs to the next core every millisecond
//! (`hv.migrate-every=1000`, docs/platform.md); the `fpu` guests check that their FP/SIMD
//! registers (switched lazily) move with them.

use std::time::Duration;

use hw_tests::{run, QemuConfig};
use vcpu_runtime::trace::TraceKind;

fn wander(smp: u32) {
    let config = QemuConfig::new(smp, "cortex-a57")
        .scenario("wanderer")
        .append("hv.trace=events hv.migrate-every=1000")
        .timeout(Duration::from_secs(240));
    let r = run(&config);
    eprintln!("hw-tests: wanderer: {}", r.summary());
    r.assert_clean();
    r.assert_guest_passed("wanderer");
    r.assert_guest_line("wanderer", "violations=0");
    for cpu in [1, 2] {
        r.assert_guest_line("wanderer", &format!("wanderer: cpu {cpu} ticks="));
    }
    let events = r.trace_events().unwrap_or_else(|e| r.fail(&e));
    let moves = events.iter().filter(|e| matches!(e.kind, TraceKind::VcpuMigrate { .. })).count();
    // Three vCPUs asked to move every millisecond for three seconds: thousands of hand-overs
    // (fewer when the host runs QEMU's threads late: a request for a vCPU still in flight is
    // refused and the next one comes a millisecond later).
    eprintln!("hw-tests: wanderer: {moves} moves");
    assert!(moves >= 1_500, "only {moves} moves");
    for s in r.stats() {
        assert!(s.get("migrations") >= 300, "{s:?}");
        assert_eq!(s.state(), "stopped", "{s:?}");
    }
}

#[test]
fn vcpus_moved_every_millisecond_smp2() {
    wander(2);
}

#[test]
fn vcpus_moved_every_millisecond_smp4() {
    wander(4);
}

/// The `fpu` scenario on two cores with every vCPU moved every millisecond: FP/SIMD registers
/// live in one core's hardware when their vCPU is put away go with it to the next core.
#[test]
fn fp_registers_move_with_their_vcpu() {
    let config = QemuConfig::new(2, "cortex-a57")
        .scenario("fpu")
        .append("hv.trace=events hv.migrate-every=1000")
        .timeout(Duration::from_secs(120));
    let r = run(&config);
    eprintln!("hw-tests: fpu moving: {}", r.summary());
    r.assert_clean();
    for g in ["fpu-a", "fpu-b", "counter"] {
        r.assert_guest_passed(g);
    }
    for g in ["fpu-a", "fpu-b"] {
        for cpu in 0..2 {
            r.assert_guest_line(g, &format!("fpu: cpu {cpu} rounds=300 mismatches=0"));
            let s = r.stat(g, cpu);
            assert!(s.get("migrations") >= 20, "{g}/{cpu} moved too little to tell: {s:?}");
        }
    }
}
