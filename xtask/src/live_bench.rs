//! `cargo xtask bench migrate`, the QEMU half: live migration of an idle 256 MiB guest
//! (`scenarios/live-idle.toml`, the `sleeper` guest) between two hypervisor instances through
//! the host relay on loopback (docs/migration.md). Reported per run: the stream's bytes, the
//! pre-copy rounds, the total migration time, the downtime both hypervisors measured, and the
//! guest-visible gap (the longest interval between two of the guest's 1 ms timer ticks, whose
//! virtual counter moves on by the downtime). Wall-clock figures, so they vary run to run; the
//! goal (downtime ≤ 60 ms) is checked against the worst run.

use std::thread;
use std::time::Duration;

use hw_tests::relay::{Cut, Link, Relay};
use hw_tests::{run, QemuConfig, Run};

use crate::exec::Ctx;
use crate::offload::field;
use crate::Error;

/// Runs of the benchmark.
const RUNS: usize = 3;
/// The downtime goal of issue 5, ms.
const DOWNTIME_GOAL_MS: f64 = 60.0;

/// What one migration measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    pub bytes: u64,
    pub rounds: u64,
    pub total_ms: u64,
    pub downtime_us: u64,
    /// The source's part of it (pause to timing section).
    pub source_us: u64,
    pub guest_gap_us: u64,
}

/// The figures of a source's and a destination's consoles.
pub fn figures(source: &str, destination: &str) -> Result<Figures, String> {
    let missing = |what: &str| format!("no `{what}` in the consoles");
    Ok(Figures {
        bytes: field(source, "migrated:", "bytes").ok_or_else(|| missing("migrated: bytes="))?,
        rounds: field(source, "migrated:", "rounds").ok_or_else(|| missing("migrated: rounds="))?,
        total_ms: field(source, "migrated:", "total_ms").ok_or_else(|| missing("migrated: total_ms="))?,
        downtime_us: field(destination, "resumes:", "downtime_us").ok_or_else(|| missing("resumes: downtime_us="))?,
        source_us: field(source, "migrated:", "paused_us").ok_or_else(|| missing("migrated: paused_us="))?,
        guest_gap_us: field(destination, "sleeper: ticks=", "max_gap_us").ok_or_else(|| missing("max_gap_us="))?,
    })
}

/// One migration of `scenario` from a `-smp source_smp` instance to a `-smp destination_smp`
/// one over `link`; returns both consoles.
pub fn migrate_once(
    manifest: &std::path::Path,
    (source_smp, destination_smp): (u32, u32),
    source_args: &str,
    destination_args: &str,
    link: Link,
) -> (Run, Run) {
    let relay = Relay::start(link, Cut::Never);
    let (sp, dp) = (relay.source_port, relay.destination_port);
    let dest_config = QemuConfig::new(destination_smp, "cortex-a57")
        .manifest_file(manifest)
        .stream(dp)
        .append(&format!("hv.trace=off hv.migrate-in {destination_args}"))
        .timeout(Duration::from_secs(300));
    let destination = thread::spawn(move || run(&dest_config));
    let source = run(&QemuConfig::new(source_smp, "cortex-a57")
        .manifest_file(manifest)
        .stream(sp)
        .append(&format!("hv.trace=off {source_args}"))
        .timeout(Duration::from_secs(300)));
    let destination = destination.join().unwrap_or_else(|_| panic!("the destination's thread panicked"));
    let _ = relay.finish();
    (source, destination)
}

pub fn run_bench(ctx: &Ctx) -> Result<(), Error> {
    crate::setup::ensure_target(ctx)?;
    crate::setup::ensure_qemu(ctx)?;
    crate::manifest::guests_build_cmd().run(ctx)?;
    crate::qemu::build_cmd().run(ctx)?;
    let path = crate::tasks::resolve_scenario(ctx, "live-idle")?;
    let scenario = vcpu_runtime::scenario::load(&ctx.root.join(&path)).map_err(|e| Error::new(e.to_string()))?;
    let manifest = crate::manifest::write_manifest(ctx, &scenario)?;
    let mut all = Vec::new();
    for k in 1..=RUNS {
        println!("xtask: bench migrate: run {k}/{RUNS}: sleeper, 256 MiB, -smp 2 to -smp 2, loopback");
        let (source, destination) = migrate_once(&manifest, (2, 2), "hv.migrate-out=500", "", Link::UNLIMITED);
        match figures(&source.output, &destination.output) {
            Ok(f) => all.push(f),
            Err(e) => {
                return Err(Error::new(format!(
                    "run {k}: {e}\n--- source ({}):\n{}\n--- destination ({}):\n{}",
                    source.summary(),
                    source.output,
                    destination.summary(),
                    destination.output
                )))
            }
        }
    }
    println!(
        "\nLive migration of an idle 256 MiB guest, -smp 2 to -smp 2, loopback relay, cortex-a57 ({RUNS} runs):\n"
    );
    println!(
        "| run | stream bytes | rounds | migration time | downtime (hypervisors) | of it, source | guest-visible gap |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (k, f) in all.iter().enumerate() {
        println!(
            "| {} | {} | {} | {} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
            k + 1,
            f.bytes,
            f.rounds,
            f.total_ms,
            f.downtime_us as f64 / 1000.0,
            f.source_us as f64 / 1000.0,
            f.guest_gap_us as f64 / 1000.0
        );
    }
    let worst = all.iter().map(|f| f.downtime_us.max(f.guest_gap_us.saturating_sub(1000))).max().unwrap_or(0);
    let worst_ms = worst as f64 / 1000.0;
    println!(
        "\nworst downtime {worst_ms:.1} ms (the guest's gap less its 1 ms tick period): goal <= {DOWNTIME_GOAL_MS} ms: {}",
        if worst_ms <= DOWNTIME_GOAL_MS { "met" } else { "NOT met" }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_come_from_both_consoles() {
        let source = "migrate: guest sleeper migrated: bytes=4321 rounds=1 pages_resent=3 dirty_log=wp paused_us=1500 total_ms=812\n";
        let destination = "migrate: guest sleeper resumes: downtime_us=25000 (source 1500 + here 23500)\n\
                           [sleeper] sleeper: ticks=2990 max_gap_us=26012\n";
        assert_eq!(
            figures(source, destination),
            Ok(Figures {
                bytes: 4321,
                rounds: 1,
                total_ms: 812,
                downtime_us: 25000,
                source_us: 1500,
                guest_gap_us: 26012
            })
        );
        assert!(figures("", destination).unwrap_err().contains("migrated: bytes="));
    }
}
