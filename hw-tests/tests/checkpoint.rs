//! Checkpoint and restore across hypervisor instances (docs/migration.md, *Checkpoints*): the
//! `counter` guest is stopped at its tenth progress line on `-smp 2`
//! (`hv.checkpoint-on="progress 10/"`; or 100 ms into its run, `hv.checkpoint-at=100`) and
//! checkpointed to a raw image over virtio-blk; a second instance on `-smp 4` restores it from the
//! same file (`hv.restore`) and the guest carries on from where it stopped: its progress lines
//! continue, and it ends with the final state an uninterrupted run computes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hw_tests::{run, workspace_root, QemuConfig, Run};

/// What an uninterrupted counter run ends with (the generator's state after 20,000,000 steps).
const COUNTER_DONE: &str = "counter: done count=20000000 state=0x287db4fc7cfc2623";

fn blank_image(name: &str) -> PathBuf {
    let dir = workspace_root().join("target/hw-tests/checkpoint");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let path = dir.join(format!("{name}.img"));
    let file = std::fs::File::create(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    file.set_len(64 << 20).unwrap_or_else(|e| panic!("cannot size {}: {e}", path.display()));
    path
}

fn instance(smp: u32, image: &Path, append: &str) -> Run {
    let config = QemuConfig::new(smp, "cortex-a57")
        .scenario("counter")
        .disk(image)
        .append(&format!("hv.trace=events {append}"))
        .timeout(Duration::from_secs(120));
    let r = run(&config);
    eprintln!("hw-tests: checkpoint: -smp {smp} {append}: {}", r.summary());
    r
}

/// The `progress N/20` numbers the counter printed.
fn progress(r: &Run) -> Vec<u32> {
    r.guest_lines("counter")
        .filter_map(|l| l.strip_prefix("progress "))
        .filter_map(|l| l.split('/').next()?.parse().ok())
        .collect()
}

/// Takes the checkpoint with `append` (`hv.checkpoint-at` or `hv.checkpoint-on`): the run ends
/// with the counter unfinished. Returns the progress lines it printed before. (How far the
/// counter gets by a time depends on the host's speed: a fast one prints all 20 lines within
/// 100 ms, a slow one none; only unfinished is certain.)
fn take(image: &Path, append: &str) -> Vec<u32> {
    let first = instance(2, image, append);
    first.assert_clean();
    first.assert_present("checkpoint: guest counter:");
    first.assert_absent(COUNTER_DONE);
    progress(&first)
}

#[test]
fn a_checkpoint_restores_on_another_core_count_and_carries_on() {
    let image = blank_image("counter");
    let before = take(&image, "hv.checkpoint-on=\"progress 10/\"");
    // The run ended at the line asked for, before the next one: midway.
    assert_eq!(before.last(), Some(&10), "{before:?}");
    let second = instance(4, &image, "hv.restore");
    second.assert_clean();
    second.assert_present("restore: guest counter from the checkpoint disk");
    second.assert_guest_passed("counter");
    second.assert_guest_line("counter", COUNTER_DONE);
    let after = progress(&second);
    // Carries on from the exact point: the next progress line is the one after the last.
    assert_eq!(after.first().copied(), Some(before.last().unwrap() + 1), "before {before:?}, after {after:?}");
    assert_eq!(after.last(), Some(&20));
}

#[test]
fn a_corrupted_checkpoint_is_refused_and_nothing_runs() {
    let image = blank_image("corrupt");
    take(&image, "hv.checkpoint-at=100");
    // Flip one byte of the stream (past the disk's header sector).
    let mut bytes = std::fs::read(&image).unwrap();
    bytes[512 + 200] ^= 0x40;
    std::fs::write(&image, bytes).unwrap();
    let second = instance(4, &image, "hv.restore");
    second.assert_exit(1);
    second.assert_present("FAIL: restore:");
    assert!(second.guest_lines("counter").next().is_none(), "the guest must not run");
}

/// `hv.checkpoint-on` with a line the guest never prints: the run ends with the guest (it
/// finishes), fails with a message saying so, and writes nothing on the disk.
#[test]
fn a_checkpoint_line_never_printed_fails_the_run_and_writes_nothing() {
    let image = blank_image("never");
    let r = instance(2, &image, "hv.checkpoint-on=\"progress 21/\"");
    r.assert_exit(1);
    r.assert_present(
        "FAIL: checkpoint: the run ended before the first guest printed a line containing \"progress 21/\"; nothing written",
    );
    r.assert_guest_line("counter", COUNTER_DONE);
    let bytes = std::fs::read(&image).unwrap();
    assert!(bytes.iter().all(|&b| b == 0), "the disk was written");
}
