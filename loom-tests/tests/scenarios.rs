//! The loom scenarios without loom, so that a plain `cargo test --workspace` checks them too:
//! each with its thread bodies run one after another in every order (deterministic: the plain
//! logic of the protocol, and every outcome a sequential order can produce is checked to occur),
//! then many times on real std threads.
#![cfg(not(loom))]

use loom_tests::{permutations, Reached, Request, Runner, Sequential, StdThreads};

/// Rounds on std threads per scenario.
const ROUNDS: usize = 200;

/// Runs `scenario` in every order of its `bodies` thread bodies and checks that the orders
/// reached every `required` fact; then `ROUNDS` times on std threads.
fn check(bodies: usize, required: &[&str], scenario: impl Fn(&dyn Runner) -> Vec<String>) {
    let reached = Reached::default();
    for order in permutations(bodies) {
        reached.add(scenario(&Sequential(order)));
    }
    reached.check(required);
    for _ in 0..ROUNDS {
        scenario(&StdThreads);
    }
}

const WAKE_KICKED_CORE0: &str = "wake kicked Some(CoreId(0))";
const WAKE_KICKED_CORE1: &str = "wake kicked Some(CoreId(1))";
const WAKE_KICKED_NONE: &str = "wake kicked None";
const RAN: &str = "ran in a thread: true";
const DID_NOT_RUN: &str = "ran in a thread: false";
const MIGRATED: &str = "migrate Ok(())";
const MIGRATE_REFUSED: &str = "migrate Err(CoreOffline(CoreId(1)))";

#[test]
fn permutations_are_complete() {
    let mut p = permutations(3);
    p.sort();
    assert_eq!(p, vec![vec![0, 1, 2], vec![0, 2, 1], vec![1, 0, 2], vec![1, 2, 0], vec![2, 0, 1], vec![2, 1, 0]]);
}

#[test]
fn handover_while_waking() {
    check(3, &[WAKE_KICKED_CORE0, WAKE_KICKED_CORE1, RAN, DID_NOT_RUN], |r| loom_tests::handover_while_waking(r));
}

#[test]
fn wake_vs_block() {
    check(2, &[WAKE_KICKED_CORE0, WAKE_KICKED_NONE, RAN], |r| loom_tests::wake_vs_block(r));
}

#[test]
fn signal_vs_start() {
    check(
        2,
        &["signal Running(CoreId(0))", "signal Other", "saw the event at entry: true", "saw the event at entry: false"],
        |r| loom_tests::signal_vs_start(r),
    );
}

#[test]
fn mailbox_two_senders() {
    check(3, &["core 2 ran []", "core 2 ran [VcpuId(0), VcpuId(0)]", "core 2 ran [VcpuId(2), VcpuId(2)]"], |r| {
        loom_tests::mailbox_two_senders(r)
    });
}

#[test]
fn power_on_race() {
    check(3, &["loser Some(Err(OnPending))", "loser Some(Err(AlreadyOn))", RAN, DID_NOT_RUN], |r| {
        loom_tests::power_on_race(r)
    });
}

#[test]
fn offline_while_handing_over() {
    check(2, &[MIGRATED, MIGRATE_REFUSED], |r| loom_tests::offline_while_handing_over(r));
}

#[test]
fn wake_during_aborted_handover() {
    check(3, &[MIGRATED, MIGRATE_REFUSED], |r| loom_tests::request_during_aborted_handover(r, Request::Wake));
}

#[test]
fn power_on_during_aborted_handover() {
    check(3, &[MIGRATED, MIGRATE_REFUSED], |r| loom_tests::request_during_aborted_handover(r, Request::PowerOn));
}

#[test]
fn move_request_overtaking_its_vcpu() {
    check(2, &["request posted to Some(CoreId(0))", "request posted to Some(CoreId(1))"], |r| {
        loom_tests::move_request_overtaking_its_vcpu(r)
    });
}
