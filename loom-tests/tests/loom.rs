//! Loom models of the cross-core protocol. Run them as CI does:
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p loom-tests --release --target-dir target/loom`
//!
//! The scenarios live in the crate (`src/lib.rs`) so that `tests/scenarios.rs` runs the very
//! same ones with std threads and sequentially when loom is off. Each model also checks that
//! loom's executions reached every case the scenario is about.
#![cfg(loom)]

use std::sync::Arc;

use loom_tests::{Loom, Reached, Request, Runner};

/// Explores `scenario` with loom, then checks that the executions reported every `required` fact.
fn model(required: &'static [&'static str], scenario: fn(&dyn Runner) -> Vec<String>) {
    let reached = Arc::new(Reached::default());
    let r = reached.clone();
    loom::model(move || r.add(scenario(&Loom)));
    reached.check(required);
}

const WAKE_KICKED_CORE0: &str = "wake kicked Some(CoreId(0))";
const WAKE_KICKED_CORE1: &str = "wake kicked Some(CoreId(1))";
const WAKE_KICKED_NONE: &str = "wake kicked None";
const RAN: &str = "ran in a thread: true";
const DID_NOT_RUN: &str = "ran in a thread: false";
/// What model 12 must reach: the signal finding the vCPU running or not, the core seeing the
/// event at its entry or not.
const SIGNAL_VS_START: [&str; 4] =
    ["signal Running(CoreId(0))", "signal Other", "saw the event at entry: true", "saw the event at entry: false"];
const MIGRATED: &str = "migrate Ok(())";
const MIGRATE_REFUSED: &str = "migrate Err(CoreOffline(CoreId(1)))";

/// Model 1: a blocked vCPU handed from core 0 to core 1 while it is woken and core 1 decides.
#[test]
fn handover_while_waking() {
    model(&[WAKE_KICKED_CORE0, WAKE_KICKED_CORE1, RAN, DID_NOT_RUN], loom_tests::handover_while_waking);
}

/// Model 2: WFI exit against a wake-up.
#[test]
fn wake_vs_block() {
    model(&[WAKE_KICKED_CORE0, WAKE_KICKED_NONE, RAN, DID_NOT_RUN], loom_tests::wake_vs_block);
}

/// Model 12: an interrupt for a runnable vCPU while its core starts running it.
#[test]
fn signal_vs_start() {
    model(&SIGNAL_VS_START, loom_tests::signal_vs_start);
}

/// Model 3: two senders and a receiver on one mailbox.
#[test]
fn mailbox_two_senders() {
    model(
        &[
            "core 2 ran []",
            "core 2 ran [VcpuId(0)]",
            "core 2 ran [VcpuId(2)]",
            "core 2 ran [VcpuId(0), VcpuId(0)]",
            "core 2 ran [VcpuId(2), VcpuId(2)]",
        ],
        loom_tests::mailbox_two_senders,
    );
}

/// Model 4: two CPU_ONs for one parked vCPU, and its owner deciding.
#[test]
fn power_on_race() {
    model(&["loser Some(Err(OnPending))", "loser Some(Err(AlreadyOn))", RAN, DID_NOT_RUN], loom_tests::power_on_race);
}

/// Model 5: a core going offline while another hands it a vCPU.
#[test]
fn offline_while_handing_over() {
    model(&[MIGRATED, MIGRATE_REFUSED], loom_tests::offline_while_handing_over);
}

/// Model 6a: a wake-up while a hand-over to a core going offline is aborted.
///
/// Fails today (the wake-up is lost when the hand-over is aborted; see
/// `loom_tests::request_during_aborted_handover`), as does 6b.
#[test]
fn wake_during_aborted_handover() {
    model(&[MIGRATED, MIGRATE_REFUSED], |r| loom_tests::request_during_aborted_handover(r, Request::Wake));
}

/// Model 6b: a CPU_ON while a hand-over to a core going offline is aborted.
#[test]
fn power_on_during_aborted_handover() {
    model(&[MIGRATED, MIGRATE_REFUSED], |r| loom_tests::request_during_aborted_handover(r, Request::PowerOn));
}

/// Model 8: a move request that reaches the new owner before the vCPU it names.
#[test]
fn move_request_overtaking_its_vcpu() {
    model(
        &["request posted to Some(CoreId(0))", "request posted to Some(CoreId(1))"],
        loom_tests::move_request_overtaking_its_vcpu,
    );
}

/// Model 9: a core marks two dirty pages on either side of a bitmap word's boundary while
/// another takes the runs (`migrate::live::AtomicDirtyBitmap`, the live-migration dirty log).
/// However the two interleave, each page is taken exactly once over that take and one more
/// after both are done, and the first take may have seen none, either or both.
#[test]
fn dirty_bitmap_mark_vs_take() {
    use migrate::live::AtomicDirtyBitmap;
    let reached = Arc::new(Reached::default());
    let r = reached.clone();
    loom::model(move || {
        let map = loom::sync::Arc::new(AtomicDirtyBitmap::new(128));
        let marker = {
            let map = map.clone();
            loom::thread::spawn(move || {
                map.mark(63);
                map.mark(64);
            })
        };
        let taker = {
            let map = map.clone();
            loom::thread::spawn(move || {
                let mut first = Vec::new();
                map.take_runs(|page, count| first.push((page, count)));
                first
            })
        };
        marker.join().expect("the marker panicked");
        let first = taker.join().expect("the taker panicked");
        let mut rest = Vec::new();
        map.take_runs(|page, count| rest.push((page, count)));
        let mut pages: Vec<u64> = first.iter().chain(&rest).flat_map(|&(p, n)| p..p + n).collect();
        pages.sort_unstable();
        assert_eq!(pages, [63, 64], "first take {first:?}, then {rest:?}");
        assert_eq!(map.count(), 0);
        r.add(vec![format!("first take {first:?}")]);
    });
    reached.check(&["first take []", "first take [(63, 1)]", "first take [(64, 1)]", "first take [(63, 2)]"]);
}

/// Model 10: core 0 carries out a VM's trapped TLB maintenance instruction (after the guest
/// changed a translation) while core 1 enters and leaves the VM's guest twice, reading the
/// translation through its own TLB (`vcpu_runtime::tlb`). A read that starts after the
/// instruction completed never sees the old translation; core 0 waits for core 1 exactly when
/// it finds it in the guest, and core 1 catches up at an entry in some executions.
#[test]
fn guest_tlbi_vs_entering_core() {
    use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use vcpu_runtime::tlb::{CoreTlb, GuestRun, VmTlb};
    const OLD: u64 = 1;
    const NEW: u64 = 2;
    let reached = Arc::new(Reached::default());
    let r = reached.clone();
    loom::model(move || {
        let vm = loom::sync::Arc::new(VmTlb::new());
        let runs = loom::sync::Arc::new([GuestRun::new(), GuestRun::new()]);
        let translation = loom::sync::Arc::new(AtomicU64::new(OLD));
        let completed = loom::sync::Arc::new(AtomicBool::new(false));
        let core1 = {
            let (vm, runs, translation, completed) = (vm.clone(), runs.clone(), translation.clone(), completed.clone());
            loom::thread::spawn(move || {
                let mut tlb = CoreTlb::new(1);
                let mut cached: Option<u64> = None;
                let mut caught_up = false;
                for _ in 0..2 {
                    if tlb.enter(&runs[1], 0, &vm) {
                        cached = None;
                        caught_up = true;
                    }
                    let after = completed.load(Ordering::SeqCst);
                    let seen = *cached.get_or_insert_with(|| translation.load(Ordering::SeqCst));
                    assert!(!after || seen == NEW, "core 1 used the old translation after the TLBI completed");
                    tlb.exit(&runs[1]);
                }
                caught_up
            })
        };
        let mut tlb = CoreTlb::new(1);
        translation.store(NEW, Ordering::SeqCst);
        let waits = tlb.carried_out(0, 0, &vm, runs.iter());
        let waited = !waits.is_empty();
        for wait in waits.iter() {
            while !runs[wait.core].left(wait.run) {
                loom::thread::yield_now();
            }
        }
        completed.store(true, Ordering::SeqCst);
        let caught_up = core1.join().expect("core 1 panicked");
        r.add(vec![format!("waited {waited}"), format!("caught up {caught_up}")]);
    });
    reached.check(&["waited true", "waited false", "caught up true", "caught up false"]);
}

/// Model 11: both cores carry out a trapped instruction of the VM at once, each between two
/// runs of its guest, after changing its own page's translation; each reads both pages through
/// its own TLB in its runs. Neither waits for the other for ever (each is out of the guest while
/// it carries out), and neither reads the other's page's old translation in a run it enters
/// after both instructions completed.
#[test]
fn guest_tlbi_on_both_cores() {
    use loom::sync::atomic::{AtomicU64, Ordering};
    use vcpu_runtime::tlb::{CoreTlb, GuestRun, VmTlb};
    const OLD: u64 = 1;
    const NEW: u64 = 2;
    loom::model(|| {
        let vm = loom::sync::Arc::new(VmTlb::new());
        let runs = loom::sync::Arc::new([GuestRun::new(), GuestRun::new()]);
        let pages = loom::sync::Arc::new([AtomicU64::new(OLD), AtomicU64::new(OLD)]);
        let core = |me: usize| {
            let (vm, runs, pages) = (vm.clone(), runs.clone(), pages.clone());
            loom::thread::spawn(move || {
                let mut tlb = CoreTlb::new(1);
                let mut cached: [Option<u64>; 2] = [None, None];
                if tlb.enter(&runs[me], 0, &vm) {
                    cached = [None, None];
                }
                for (page, cache) in pages.iter().zip(&mut cached) {
                    cache.get_or_insert_with(|| page.load(Ordering::Acquire));
                }
                tlb.exit(&runs[me]);
                pages[me].store(NEW, Ordering::Release);
                cached[me] = None;
                let waits = tlb.carried_out(me, 0, &vm, runs.iter());
                for wait in waits.iter() {
                    while !runs[wait.core].left(wait.run) {
                        loom::thread::yield_now();
                    }
                }
                (tlb, cached)
            })
        };
        let (a, b) = (core(0), core(1));
        let done = [a.join().expect("core 0 panicked"), b.join().expect("core 1 panicked")];
        for (me, (mut tlb, mut cached)) in done.into_iter().enumerate() {
            if tlb.enter(&runs[me], 0, &vm) {
                cached = [None, None];
            }
            let other = 1 - me;
            let seen = cached[other].unwrap_or_else(|| pages[other].load(Ordering::Acquire));
            assert_eq!(seen, NEW, "core {me} used core {other}'s old translation after both instructions");
        }
    });
}
