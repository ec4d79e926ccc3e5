//! `cargo xtask offload`: the CloneCloud-style experiment of issue 5 (docs/migration.md,
//! *Offload*). A "phone" instance (`-smp 2`, the `phone-dual` energy model) runs the
//! `offloader` guest of `scenarios/offload.toml`; at the guest's offload point the phone's
//! hypervisor decides with `migrate::offload` whether sending it to a "server" instance
//! (`-smp 8`) pays, over a host relay that models the link (`hw_tests::relay`: each built-in
//! profile's bandwidth each way and half its round-trip time per direction); the server sends
//! the guest back at its return point. A local run (`hv.offload=never`) is the baseline.
//!
//! Reported per case: the decision, the guest's end-to-end time (its own virtual clock, which
//! moves on by each migration's downtime), the phone's energy (its cores, from the hypervisor's
//! energy report, plus the radio's for the transfers, from the link profile's power model and
//! the bytes that actually crossed), the bytes each way, the downtimes, and the job's digest,
//! which must be the same wherever the job ran. Written as a table and a PNG plot to
//! `target/offload/`.

use std::fmt::Write as _;
use std::path::Path;
use std::thread;
use std::time::Duration;

use hw_tests::relay::{Cut, Link, Relay};
use hw_tests::{run, QemuConfig, Run};
use migrate::offload::LinkProfile;

use crate::exec::Ctx;
use crate::Error;

/// The server's cores (the offload model in the hypervisor assumes as many).
const SERVER_CORES: u32 = 8;

/// The first line containing `marker`, and the value of `key=` in it (decimal, or hex after
/// `0x`); also for `cargo xtask bench live`'s lines.
pub(crate) fn field(output: &str, marker: &str, key: &str) -> Option<u64> {
    let line = output.lines().find(|l| l.contains(marker))?;
    let at = line.find(&format!("{key}="))? + key.len() + 1;
    let rest = &line[at..];
    let digits = rest.strip_prefix("0x").unwrap_or(rest);
    let end = digits.find(|c: char| !c.is_ascii_hexdigit()).unwrap_or(digits.len());
    if rest.starts_with("0x") {
        u64::from_str_radix(&digits[..end], 16).ok()
    } else {
        let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        rest[..end].parse().ok()
    }
}

/// What one case measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    pub case: String,
    pub decision: String,
    pub end_to_end_ms: u64,
    pub job_ms: u64,
    pub digest: u64,
    pub core_energy_uj: u64,
    pub radio_energy_uj: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub downtime_out_us: u64,
    pub downtime_back_us: u64,
    /// The model's estimate at the offload point (local µJ, offloaded µJ), when it decided.
    pub model_uj: Option<(u64, u64)>,
}

/// The radio's energy for a transfer of `up` bytes and, `away_ns` later, `down` bytes over
/// `link` (µJ): promotion, sending, the tail (and a second promotion when the remote run
/// outlasts it), receiving, and the tail after the last byte — the same model
/// `migrate::offload::estimate` plans with, applied to what was actually sent.
pub fn radio_energy_uj(link: &LinkProfile, up: u64, down: u64, away_ns: u64) -> u64 {
    let uj = |mw: u32, ns: u64| u64::from(mw) * ns / 1_000_000;
    let up_ns = up * 8 * 1_000_000_000 / link.uplink_bps.max(1);
    let down_ns = down * 8 * 1_000_000_000 / link.downlink_bps.max(1);
    let waiting = away_ns.saturating_sub(up_ns + down_ns);
    let mut e = uj(link.promotion_mw, link.promotion_ns) + uj(link.tx_mw, up_ns) + uj(link.rx_mw, down_ns);
    if waiting > link.tail_ns {
        e += uj(link.tail_mw, link.tail_ns)
            + uj(link.idle_mw, waiting - link.tail_ns)
            + uj(link.promotion_mw, link.promotion_ns);
    } else {
        e += uj(link.tail_mw, waiting);
    }
    e + uj(link.tail_mw, link.tail_ns)
}

/// Reads a case's consoles.
pub fn outcome(case: &str, link: Option<&LinkProfile>, phone: &str, server: Option<&str>) -> Result<Outcome, String> {
    let missing = |what: &str| format!("{case}: no `{what}` on the phone's console");
    let mut o = Outcome {
        case: case.to_string(),
        decision: if phone.contains("offload: decision=offload") { "offload".into() } else { "local".into() },
        end_to_end_ms: field(phone, "offloader: vcpus=", "total_ms")
            .ok_or_else(|| missing("offloader: ... total_ms="))?,
        job_ms: field(phone, "offloader: vcpus=", "job_ms").ok_or_else(|| missing("offloader: ... job_ms="))?,
        digest: field(phone, "offloader: vcpus=", "digest").ok_or_else(|| missing("offloader: ... digest="))?,
        core_energy_uj: field(phone, "energy total_uj=", "total_uj").ok_or_else(|| missing("energy total_uj="))?,
        ..Outcome::default()
    };
    if let (Some(l), Some(e)) = (phone.lines().find(|l| l.starts_with("offload: model over")), link) {
        let nums: Vec<u64> = l.split_whitespace().filter_map(|w| w.parse().ok()).collect();
        // "local T ms E uJ; offloaded T ms E uJ ...": the energies are the 2nd and 4th numbers.
        if nums.len() >= 4 {
            o.model_uj = Some((nums[1], nums[3]));
        }
        let _ = e;
    }
    if o.decision == "offload" {
        let server = server.ok_or_else(|| format!("{case}: offloaded, but there is no server console"))?;
        o.bytes_up = field(phone, "migrated: bytes=", "bytes").ok_or_else(|| missing("migrated: bytes="))?;
        o.bytes_down = field(server, "migrated: bytes=", "bytes")
            .ok_or_else(|| format!("{case}: no `migrated: bytes=` on the server's console"))?;
        o.downtime_out_us = field(server, "resumes: downtime_us=", "downtime_us")
            .ok_or_else(|| format!("{case}: no `resumes: downtime_us=` on the server's console"))?;
        o.downtime_back_us = field(phone, "is back:", "downtime_us").ok_or_else(|| missing("is back: downtime_us="))?;
        let away_ms = field(phone, "is back:", "away_ms").ok_or_else(|| missing("is back: away_ms="))?;
        if let Some(link) = link {
            o.radio_energy_uj = radio_energy_uj(link, o.bytes_up, o.bytes_down, away_ms * 1_000_000);
        }
    }
    Ok(o)
}

/// One case: the phone with `hv.offload=WORD`, and a server behind a relay over `link`.
fn run_case((manifest, server_manifest): (&Path, &Path), word: &str, link: Option<&LinkProfile>) -> (Run, Option<Run>) {
    let phone_config = |port: Option<u16>| {
        let mut c = QemuConfig::new(2, "cortex-a57")
            .manifest_file(manifest)
            .append(&format!("hv.trace=off hv.offload={word} hv.migrate-timeout-ms=30000"))
            .timeout(Duration::from_secs(600));
        if let Some(p) = port {
            c = c.stream(p);
        }
        c
    };
    let Some(link) = link else {
        return (run(&phone_config(None)), None);
    };
    let model = Link {
        up_bytes_per_s: link.uplink_bps / 8,
        down_bytes_per_s: link.downlink_bps / 8,
        latency: Duration::from_nanos(link.rtt_ns / 2),
    };
    let relay = Relay::start(model, Cut::Never);
    let server_config = QemuConfig::new(SERVER_CORES, "cortex-a57")
        .manifest_file(server_manifest)
        .stream(relay.destination_port)
        .append("hv.trace=off hv.migrate-in hv.offload-server hv.migrate-timeout-ms=30000")
        .timeout(Duration::from_secs(600));
    let server = thread::spawn(move || run(&server_config));
    let phone = run(&phone_config(Some(relay.source_port)));
    let server = server.join().unwrap_or_else(|_| panic!("the server's thread panicked"));
    let report = relay.finish();
    println!("xtask: offload: relay: {} bytes phone to server, {} back", report.source_bytes, report.destination_bytes);
    (phone, Some(server))
}

pub fn offload(ctx: &Ctx) -> Result<(), Error> {
    crate::setup::ensure_target(ctx)?;
    crate::setup::ensure_qemu(ctx)?;
    crate::manifest::guests_build_cmd().run(ctx)?;
    crate::qemu::build_cmd().run(ctx)?;
    let path = crate::tasks::resolve_scenario(ctx, "offload")?;
    let scenario = vcpu_runtime::scenario::load(&ctx.root.join(&path)).map_err(|e| Error::new(e.to_string()))?;
    let manifest = crate::manifest::write_manifest(ctx, &scenario)?;
    // The server is another board: eight cores, no phone energy model; the same guest.
    let mut on_server = scenario.clone();
    on_server.name = format!("{}-server", scenario.name);
    on_server.board.cores = SERVER_CORES as u16;
    on_server.board.energy_profile = "generic".into();
    let server_manifest = crate::manifest::write_manifest(ctx, &on_server)?;
    let mut cases: Vec<(&str, &str, Option<&LinkProfile>)> = vec![("local (never offload)", "never", None)];
    for link in LinkProfile::ALL.iter() {
        cases.push((link.name, link.name, Some(link)));
    }
    let mut outcomes = Vec::new();
    for (name, word, link) in &cases {
        println!(
            "xtask: offload: {name}: phone -smp 2 (hv.offload={word}){}",
            if link.is_some() { ", server -smp 8 behind the relay" } else { "" }
        );
        let (phone, server) = run_case((&manifest, &server_manifest), &word.to_ascii_lowercase(), *link);
        let bad = |r: &Run| r.exit_code != Some(0) && r.output.contains("offloader: vcpus=");
        let o = outcome(name, *link, &phone.output, server.as_ref().map(|s| s.output.as_str())).map_err(|e| {
            Error::new(format!(
                "{e}\n--- phone ({}):\n{}\n--- server:\n{}",
                phone.summary(),
                phone.output,
                server.as_ref().map_or(String::new(), |s| format!("({})\n{}", s.summary(), s.output))
            ))
        })?;
        if bad(&phone) {
            return Err(Error::new(format!("{name}: the phone did not end cleanly ({})", phone.summary())));
        }
        println!(
            "xtask: offload: {name}: {} end_to_end_ms={} phone_uj={} (cores {} + radio {})",
            o.decision,
            o.end_to_end_ms,
            o.core_energy_uj + o.radio_energy_uj,
            o.core_energy_uj,
            o.radio_energy_uj
        );
        outcomes.push(o);
    }
    if let Some(first) = outcomes.first() {
        if let Some(o) = outcomes.iter().find(|o| o.digest != first.digest) {
            return Err(Error::new(format!(
                "the job's digest differs: {:#x} ({}) against {:#x} ({})",
                o.digest, o.case, first.digest, first.case
            )));
        }
    }
    let table = table(&outcomes);
    println!("\n{table}");
    let dir = ctx.root.join("target/offload");
    std::fs::create_dir_all(&dir).map_err(|e| Error::new(format!("cannot create {}: {e}", dir.display())))?;
    std::fs::write(dir.join("offload.md"), &table).map_err(|e| Error::new(format!("cannot write the table: {e}")))?;
    let names: Vec<&str> = outcomes.iter().map(|o| o.case.as_str()).collect();
    let panels = [
        platform_sim::chart::Panel {
            title: "phone energy".into(),
            unit: "J".into(),
            values: outcomes.iter().map(|o| (o.core_energy_uj + o.radio_energy_uj) as f64 / 1e6).collect(),
        },
        platform_sim::chart::Panel {
            title: "end to end".into(),
            unit: "s".into(),
            values: outcomes.iter().map(|o| o.end_to_end_ms as f64 / 1e3).collect(),
        },
        platform_sim::chart::Panel {
            title: "bytes moved".into(),
            unit: "KB".into(),
            values: outcomes.iter().map(|o| (o.bytes_up + o.bytes_down) as f64 / 1e3).collect(),
        },
    ];
    let png = platform_sim::chart::bar_chart_png("offload: phone (-smp 2) and server (-smp 8)", &names, &panels)
        .map_err(|e| Error::new(format!("cannot draw the plot: {e}")))?;
    std::fs::write(dir.join("offload.png"), png).map_err(|e| Error::new(format!("cannot write the plot: {e}")))?;
    println!("xtask: offload: table target/offload/offload.md, plot target/offload/offload.png");
    Ok(())
}

/// The report as a Markdown table.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut s = String::from(
        "| case | decision | model: local / offloaded | end to end | job | phone energy (cores + radio) | bytes up / down | downtime out / back |\n|---|---|---|---|---|---|---|---|\n",
    );
    for o in outcomes {
        let model =
            o.model_uj.map_or("-".to_string(), |(l, r)| format!("{:.2} J / {:.2} J", l as f64 / 1e6, r as f64 / 1e6));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.2} s | {:.2} s | {:.2} J ({:.2} + {:.2}) | {} / {} | {:.1} / {:.1} ms |",
            o.case,
            o.decision,
            model,
            o.end_to_end_ms as f64 / 1e3,
            o.job_ms as f64 / 1e3,
            (o.core_energy_uj + o.radio_energy_uj) as f64 / 1e6,
            o.core_energy_uj as f64 / 1e6,
            o.radio_energy_uj as f64 / 1e6,
            o.bytes_up,
            o.bytes_down,
            o.downtime_out_us as f64 / 1e3,
            o.downtime_back_us as f64 / 1e3
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHONE: &str = "offload: model over WiFi: local 880 ms 1200000 uJ; offloaded 300 ms 400000 uJ (upload 10 ms, remote 200 ms, download 10 ms)
offload: decision=offload link=WiFi guest=app job_minstr=1600 state_bytes=40960
migrate: guest app migrated: bytes=40000 rounds=1 pages_resent=0 dirty_log=wp paused_us=900 total_ms=40
offload: guest app is back: away_ms=500 downtime_us=2500
[app] offloader: vcpus=4 job_minstr=1600 job_ms=450 digest=0x00000000deadbeef total_ms=1300
energy total_uj=900000 governor_periods=100 cpu_on_retries=0 online_at_end=0x3
";
    const SERVER: &str = "migrate: guest app resumes: downtime_us=3000 (source 900 + here 2100)
migrate: guest app migrated: bytes=30000 rounds=2 pages_resent=4 dirty_log=wp paused_us=800 total_ms=60
";

    #[test]
    fn an_offloaded_case_reads_both_consoles() {
        let o = outcome("WiFi", Some(&LinkProfile::WIFI), PHONE, Some(SERVER)).unwrap();
        assert_eq!(o.decision, "offload");
        assert_eq!((o.end_to_end_ms, o.job_ms, o.digest), (1300, 450, 0xdead_beef));
        assert_eq!((o.bytes_up, o.bytes_down), (40000, 30000));
        assert_eq!((o.downtime_out_us, o.downtime_back_us), (3000, 2500));
        assert_eq!(o.core_energy_uj, 900_000);
        assert_eq!(o.model_uj, Some((1_200_000, 400_000)));
        assert_eq!(o.radio_energy_uj, radio_energy_uj(&LinkProfile::WIFI, 40000, 30000, 500_000_000));
        assert!(table(&[o]).contains("| WiFi | offload |"));
    }

    #[test]
    fn a_local_case_needs_no_server() {
        let phone = "offload: decision=local link=3G guest=app job_minstr=1600 state_bytes=40960\n\
                     [app] offloader: vcpus=4 job_minstr=1600 job_ms=900 digest=0x1 total_ms=1500\n\
                     energy total_uj=2000000 governor_periods=1\n";
        let o = outcome("3G", Some(&LinkProfile::THREE_G), phone, None).unwrap();
        assert_eq!((o.decision.as_str(), o.radio_energy_uj, o.bytes_up), ("local", 0, 0));
        assert!(outcome("3G", None, "nothing", None).unwrap_err().contains("offloader"));
    }

    #[test]
    fn radio_energy_grows_with_bytes_and_pays_a_second_promotion_after_the_tail() {
        let l = LinkProfile::LTE;
        let small = radio_energy_uj(&l, 10_000, 10_000, 100_000_000);
        let big = radio_energy_uj(&l, 10_000_000, 10_000, 100_000_000);
        assert!(big > small);
        let long_away = radio_energy_uj(&l, 10_000, 10_000, l.tail_ns * 3);
        assert!(long_away > small + u64::from(l.promotion_mw) * l.promotion_ns / 1_000_000);
    }
}
