//! Live migration between hypervisor instances (docs/migration.md, *Live migration*): the
//! `dirtier` guest of `scenarios/live.toml` runs on a source instance (`-smp 2`), which sends it
//! with pre-copy rounds to a destination instance (`-smp 4`) through the host relay
//! (`hw_tests::relay`); the guest checks after every round that the memory it wrote last is
//! intact, so a page lost on the way fails it.
//!
//! The relay then cuts the connection at each stage of the protocol: the guest must go on at the
//! source (never lost), and never run at the destination (never in two places). A COMMIT lost
//! after the source sent it leaves the migration in doubt: the source says so and neither side
//! runs the guest.

use std::thread;
use std::time::Duration;

use hw_tests::relay::{Cut, Link, Relay, RelayReport};
use hw_tests::{run, QemuConfig, Run};

/// Both sides give up on a silent peer after this long.
const TIMEOUT_MS: u64 = 3000;

/// The dirtier's last line in a complete run.
const DONE: &str = "dirtier: done rounds=60";

struct Migration {
    source: Run,
    destination: Run,
    relay: RelayReport,
}

fn migrate(cut: Cut, source_args: &str) -> Migration {
    let relay = Relay::start(Link::UNLIMITED, cut);
    let (sp, dp) = (relay.source_port, relay.destination_port);
    let destination = thread::spawn(move || {
        let config = QemuConfig::new(4, "cortex-a57")
            .scenario("live")
            .stream(dp)
            .append(&format!("hv.trace=events hv.migrate-in hv.migrate-timeout-ms={TIMEOUT_MS}"))
            .timeout(Duration::from_secs(120));
        run(&config)
    });
    let config = QemuConfig::new(2, "cortex-a57")
        .scenario("live")
        .stream(sp)
        .append(&format!("hv.trace=events hv.migrate-out=300 hv.migrate-timeout-ms={TIMEOUT_MS} {source_args}"))
        .timeout(Duration::from_secs(120));
    let source = run(&config);
    let destination = destination.join().expect("destination thread");
    let relay = relay.finish();
    eprintln!("hw-tests: live {cut:?}: source: {}", source.summary());
    eprintln!("hw-tests: live {cut:?}: destination: {}", destination.summary());
    eprintln!("hw-tests: live {cut:?}: relay: {relay:?}");
    for (side, r) in [("source", &source), ("destination", &destination)] {
        for l in r.lines().filter(|l| l.starts_with("migrate") || l.contains("FAIL")) {
            eprintln!("hw-tests: live {cut:?}: {side}: {l}");
        }
    }
    Migration { source, destination, relay }
}

/// The round numbers the dirtier finished on a side.
fn rounds(r: &Run) -> Vec<u32> {
    r.guest_lines("dirtier")
        .filter_map(|l| l.strip_prefix("dirtier round "))
        .filter_map(|l| l.split('/').next()?.parse().ok())
        .collect()
}

fn moves_and_carries_on(dirty_log: &str) {
    let m = migrate(Cut::Never, &format!("hv.dirty-log={dirty_log}"));
    m.source.assert_clean();
    m.source.assert_present("migrate: guest dirtier migrated:");
    m.source.assert_present(&format!("dirty_log={dirty_log}"));
    m.source.assert_absent(DONE);
    m.destination.assert_clean();
    m.destination.assert_present("migrate: guest dirtier received and committed");
    m.destination.assert_guest_passed("dirtier");
    m.destination.assert_guest_line("dirtier", DONE);
    let (before, after) = (rounds(&m.source), rounds(&m.destination));
    assert!(!before.is_empty(), "the guest ran at the source first");
    // Carries on from the exact point: the next round is the one after the last.
    assert_eq!(after.first().copied(), Some(before.last().unwrap() + 1), "before {before:?}, after {after:?}");
    assert_eq!(after.last(), Some(&60));
    // Pre-copy rounds ran while the guest wrote: state, then pages again, then the trailer.
    assert!(m.relay.sections.ends_with(&[2, 3, 4, 5, 8, 9, 7]) || m.relay.sections.ends_with(&[2, 3, 4, 5, 9, 7]));
}

#[test]
fn a_running_guest_moves_to_another_instance_and_carries_on() {
    moves_and_carries_on("wp");
}

#[test]
fn hardware_dirty_state_tracks_pages_on_cpu_max() {
    // `-cpu max` has FEAT_HAFDBS; the source uses it when asked (hv.dirty-log=hw).
    let relay = Relay::start(Link::UNLIMITED, Cut::Never);
    let (sp, dp) = (relay.source_port, relay.destination_port);
    let destination = thread::spawn(move || {
        run(&QemuConfig::new(2, "max")
            .scenario("live")
            .stream(dp)
            .append(&format!("hv.trace=events hv.migrate-in hv.migrate-timeout-ms={TIMEOUT_MS}"))
            .timeout(Duration::from_secs(120)))
    });
    let source = run(&QemuConfig::new(2, "max")
        .scenario("live")
        .stream(sp)
        .append(&format!("hv.trace=events hv.migrate-out=300 hv.dirty-log=hw hv.migrate-timeout-ms={TIMEOUT_MS}"))
        .timeout(Duration::from_secs(120)));
    let destination = destination.join().expect("destination thread");
    let _ = relay.finish();
    eprintln!("hw-tests: live hw: source: {}", source.summary());
    for l in source.lines().filter(|l| l.starts_with("migrate")) {
        eprintln!("hw-tests: live hw: source: {l}");
    }
    source.assert_clean();
    source.assert_present("dirty_log=hw");
    destination.assert_clean();
    destination.assert_guest_line("dirtier", DONE);
}

#[test]
fn a_cut_before_commit_leaves_the_guest_running_at_the_source() {
    for cut in [Cut::AfterSourceBytes(256 * 1024), Cut::BeforeSection(2), Cut::BeforeSection(7), Cut::DropReady] {
        let m = migrate(cut, "");
        assert!(m.relay.cut, "{cut:?}: the relay never cut");
        m.source.assert_clean();
        m.source.assert_present("migrate: not migrated:");
        m.source.assert_present("guest dirtier resumes here");
        m.source.assert_guest_passed("dirtier");
        m.source.assert_guest_line("dirtier", DONE);
        m.destination.assert_exit(1);
        m.destination.assert_present("FAIL: migrate:");
        assert!(rounds(&m.destination).is_empty(), "{cut:?}: the guest must not run at the destination");
    }
}

#[test]
fn a_lost_commit_is_reported_in_doubt_and_runs_nowhere() {
    let m = migrate(Cut::DropCommit, "");
    assert!(m.relay.cut);
    m.source.assert_present("IN DOUBT");
    m.source.assert_absent(DONE);
    m.destination.assert_exit(1);
    m.destination.assert_present("not committed");
    assert!(rounds(&m.destination).is_empty(), "the guest must not run at the destination");
}
