//! Whether to offload a job (CloneCloud-style): run it on the phone, or migrate the guest to a
//! server over a radio link, run it there and bring the changed state back — whichever costs
//! less energy (or time). Sans-IO arithmetic on integers: time in ns, power in mW, energy in
//! µJ (mW × ns / 10⁶), bandwidth in bit/s.
//!
//! The offloaded path, as the phone sees it:
//!
//! 1. **Promotion**: the radio wakes from idle to its high-power state.
//! 2. **Upload**: half a round trip, then the guest's state at the uplink's throughput (radio
//!    transmitting).
//! 3. **Remote run**: the phone idles; its radio stays in the high-power *tail* state for up to
//!    the tail time, then falls idle — and, if it did, must be promoted again for the result.
//! 4. **Download**: half a round trip, then the changed state at the downlink's throughput
//!    (radio receiving).
//! 5. **Tail**: after the last byte the radio stays in its tail state (energy only: the job is
//!    done, so its time does not add to the latency).
//!
//! The phone's idle power is paid for the whole offloaded latency; radio powers are on top of
//! it. Locally the job costs its run time at the phone's busy power. The built-in link
//! profiles ([`LinkProfile::WIFI`], [`LinkProfile::LTE`], [`LinkProfile::THREE_G`]) come from
//! published measurements; docs/migration.md (*Offload*) says which numbers are measured and
//! which are estimates.

/// A link between the phone and the server, with its radio's power model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkProfile {
    pub name: &'static str,
    /// Throughput phone → server, bit/s.
    pub uplink_bps: u64,
    /// Throughput server → phone, bit/s.
    pub downlink_bps: u64,
    pub rtt_ns: u64,
    /// Radio power while sending at `uplink_bps`, mW.
    pub tx_mw: u32,
    /// Radio power while receiving at `downlink_bps`, mW.
    pub rx_mw: u32,
    /// Radio power when idle (the average over its paging cycle), mW.
    pub idle_mw: u32,
    /// Waking the radio from idle: how long, at what power.
    pub promotion_ns: u64,
    pub promotion_mw: u32,
    /// After the last packet, the radio stays in a high-power state this long, at this power,
    /// before it falls idle.
    pub tail_ns: u64,
    pub tail_mw: u32,
}

/// Huang et al.'s transfer power model: α (µW per Mbit/s) × throughput + β (mW).
const fn transfer_mw(alpha_uw_per_mbps: u64, bps: u64, beta_mw: u64) -> u32 {
    (alpha_uw_per_mbps * bps / 1_000_000_000 + beta_mw) as u32
}

/// The average power of a radio that wakes for `on_ns` at `on_mw` every `period_ns`.
const fn duty_mw(on_mw: u64, on_ns: u64, period_ns: u64) -> u32 {
    (on_mw * on_ns / period_ns) as u32
}

const MS: u64 = 1_000_000;

impl LinkProfile {
    /// 802.11g WiFi. Power model, promotion, tail and beacon cycle from Huang et al. (MobiSys
    /// 2012); throughput and RTT are estimates (see docs/migration.md).
    pub const WIFI: LinkProfile = LinkProfile {
        name: "WiFi",
        uplink_bps: 5_000_000,
        downlink_bps: 10_000_000,
        rtt_ns: 30 * MS,
        tx_mw: transfer_mw(283_170, 5_000_000, 133),
        rx_mw: transfer_mw(137_010, 10_000_000, 133),
        idle_mw: duty_mw(77, 7_600_000, 308_200_000),
        promotion_ns: 79 * MS,
        promotion_mw: 124,
        tail_ns: 238 * MS,
        tail_mw: 119,
    };

    /// LTE. Median throughput from Huang et al.'s 4GTest users (13 Mbit/s down, 6 up); power
    /// model, promotion, tail and idle DRX cycle from the same paper; RTT an estimate.
    pub const LTE: LinkProfile = LinkProfile {
        name: "LTE",
        uplink_bps: 6_000_000,
        downlink_bps: 13_000_000,
        rtt_ns: 70 * MS,
        tx_mw: transfer_mw(438_390, 6_000_000, 1288),
        rx_mw: transfer_mw(51_970, 13_000_000, 1288),
        idle_mw: duty_mw(594, 43_200_000, 1_280_200_000),
        promotion_ns: 260 * MS,
        promotion_mw: 1211,
        tail_ns: 11_576 * MS,
        tail_mw: 1060,
    };

    /// 3G (UMTS/HSPA). Power model, promotion, DCH and FACH tails (folded into one tail of
    /// their summed length at their time-weighted power) and idle DRX cycle from Huang et al.;
    /// Balasubramanian et al. (IMC 2009) measured a tail of the same order (about 12 s).
    /// Throughput and RTT are estimates.
    pub const THREE_G: LinkProfile = LinkProfile {
        name: "3G",
        uplink_bps: 500_000,
        downlink_bps: 1_500_000,
        rtt_ns: 150 * MS,
        tx_mw: transfer_mw(868_980, 500_000, 818),
        rx_mw: transfer_mw(122_120, 1_500_000, 818),
        idle_mw: duty_mw(374, 55_400_000, 5_112_400_000),
        promotion_ns: 582 * MS,
        promotion_mw: 659,
        tail_ns: (8_088 + 824) * MS,
        tail_mw: ((804 * 8_088 + 601 * 824) / (8_088 + 824)) as u32,
    };

    /// The built-in profiles.
    pub const ALL: [LinkProfile; 3] = [LinkProfile::WIFI, LinkProfile::LTE, LinkProfile::THREE_G];
}

/// The phone: how fast it runs the job and what it draws (whole device, screen off).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Device {
    pub instructions_per_sec: u64,
    /// Power while running the job, mW.
    pub busy_mw: u32,
    /// Power while waiting for the network or the server, mW.
    pub idle_mw: u32,
}

/// The job and the state that must travel for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Job {
    /// Instructions it runs, the same on either machine.
    pub instructions: u64,
    /// Bytes to send: the guest's state as a checkpoint stream (zero pages elided, the rest
    /// compressed), plus any input.
    pub upload_bytes: u64,
    /// Bytes to bring back: the pages the remote run changed (a live stream's dirty runs), or
    /// the result.
    pub download_bytes: u64,
}

/// Time and energy of a step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    pub time_ns: u64,
    pub energy_uj: u64,
}

impl Cost {
    fn at(time_ns: u64, mw: u64) -> Cost {
        Cost { time_ns, energy_uj: energy_uj(mw, time_ns) }
    }

    fn plus(self, other: Cost) -> Cost {
        Cost {
            time_ns: self.time_ns.saturating_add(other.time_ns),
            energy_uj: self.energy_uj.saturating_add(other.energy_uj),
        }
    }
}

/// µJ of `mw` for `ns`.
fn energy_uj(mw: u64, ns: u64) -> u64 {
    u64::try_from(u128::from(mw) * u128::from(ns) / 1_000_000).unwrap_or(u64::MAX)
}

/// ns to run `instructions` at `per_sec` (saturating; 0 instructions per second never ends).
fn run_ns(instructions: u64, per_sec: u64) -> u64 {
    match per_sec {
        0 => u64::MAX,
        n => u64::try_from(u128::from(instructions) * 1_000_000_000 / u128::from(n)).unwrap_or(u64::MAX),
    }
}

/// ns to move `bytes` at `bps`.
fn transfer_ns(bytes: u64, bps: u64) -> u64 {
    match bps {
        0 => u64::MAX,
        n => u64::try_from(u128::from(bytes) * 8 * 1_000_000_000 / u128::from(n)).unwrap_or(u64::MAX),
    }
}

/// The offloaded path, step by step (the phone's energy; times as the phone waits them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffloadCost {
    pub promotion: Cost,
    pub upload: Cost,
    /// The remote run, waited for; with a second promotion when it outlasts the radio's tail.
    pub remote: Cost,
    pub download: Cost,
    /// The radio's tail after the download: energy, and its time for the record (not latency).
    pub tail: Cost,
    /// Latency (promotion to the last byte back) and all the energy above.
    pub total: Cost,
}

/// What to minimize.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Goal {
    Energy,
    Time,
}

/// Where to run the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    Local,
    Offload,
}

/// Both paths' costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Estimate {
    pub local: Cost,
    pub offload: OffloadCost,
}

impl Estimate {
    /// The cheaper path for `goal` (local when they tie: nothing to gain by moving).
    pub fn choose(&self, goal: Goal) -> Choice {
        let (local, remote) = match goal {
            Goal::Energy => (self.local.energy_uj, self.offload.total.energy_uj),
            Goal::Time => (self.local.time_ns, self.offload.total.time_ns),
        };
        if remote < local {
            Choice::Offload
        } else {
            Choice::Local
        }
    }

    /// Energy offloading saves (negative: it costs more), µJ.
    pub fn energy_saved_uj(&self) -> i128 {
        i128::from(self.local.energy_uj) - i128::from(self.offload.total.energy_uj)
    }
}

/// Costs `job` both ways: on `phone`, or on a server running `server_instructions_per_sec`
/// reached over `link`.
pub fn estimate(job: &Job, phone: &Device, server_instructions_per_sec: u64, link: &LinkProfile) -> Estimate {
    let idle = u64::from(phone.idle_mw);
    let local = Cost::at(run_ns(job.instructions, phone.instructions_per_sec), phone.busy_mw.into());

    let promotion = Cost::at(link.promotion_ns, u64::from(link.promotion_mw) + idle);
    // Half a round trip of latency (radio connected, no data: its tail power), then the bytes.
    let half_rtt = Cost::at(link.rtt_ns / 2, u64::from(link.tail_mw) + idle);
    let upload = half_rtt.plus(Cost::at(transfer_ns(job.upload_bytes, link.uplink_bps), u64::from(link.tx_mw) + idle));
    let wait = run_ns(job.instructions, server_instructions_per_sec);
    let in_tail = wait.min(link.tail_ns);
    let mut remote = Cost {
        time_ns: wait,
        energy_uj: energy_uj(idle, wait)
            .saturating_add(energy_uj(link.tail_mw.into(), in_tail))
            .saturating_add(energy_uj(link.idle_mw.into(), wait - in_tail)),
    };
    if wait > link.tail_ns {
        // The radio fell idle: it wakes again for the result.
        remote = remote.plus(promotion);
    }
    let download =
        half_rtt.plus(Cost::at(transfer_ns(job.download_bytes, link.downlink_bps), u64::from(link.rx_mw) + idle));
    let tail = Cost::at(link.tail_ns, link.tail_mw.into());
    let latency = promotion.plus(upload).plus(remote).plus(download);
    let total = Cost { time_ns: latency.time_ns, energy_uj: latency.energy_uj.saturating_add(tail.energy_uj) };
    Estimate { local, offload: OffloadCost { promotion, upload, remote, download, tail, total } }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An illustrative phone core: 2·10⁹ instructions a second at 1.5 W, 30 mW idle.
    const PHONE: Device = Device { instructions_per_sec: 2_000_000_000, busy_mw: 1500, idle_mw: 30 };
    /// A server ten times as fast.
    const SERVER: u64 = 20_000_000_000;
    const MB: u64 = 1_000_000;

    #[test]
    fn profiles_follow_the_power_model() {
        // Huang et al.: P = αu·tu + αd·td + β (mW, Mbit/s).
        assert_eq!(LinkProfile::LTE.tx_mw, 3918); // 438.39 × 6 + 1288.04
        assert_eq!(LinkProfile::LTE.rx_mw, 1963); // 51.97 × 13 + 1288.04
        assert_eq!(LinkProfile::WIFI.tx_mw, 1548); // 283.17 × 5 + 132.86
        assert_eq!(LinkProfile::WIFI.rx_mw, 1503); // 137.01 × 10 + 132.86
        assert_eq!(LinkProfile::THREE_G.tx_mw, 1252); // 868.98 × 0.5 + 817.88
        assert_eq!(LinkProfile::THREE_G.rx_mw, 1001); // 122.12 × 1.5 + 817.88
        assert_eq!(LinkProfile::LTE.idle_mw, 20); // 594.3 mW for 43.2 ms every 1280.2 ms
        assert_eq!(LinkProfile::THREE_G.tail_mw, 785); // 803.9 mW for 8088 ms, 601.3 for 824
        for l in LinkProfile::ALL {
            assert!(l.tx_mw > l.idle_mw && l.tail_mw > l.idle_mw, "{}", l.name);
        }
    }

    #[test]
    fn local_cost_is_run_time_at_busy_power() {
        let job = Job { instructions: 4_000_000_000, upload_bytes: 0, download_bytes: 0 };
        let e = estimate(&job, &PHONE, SERVER, &LinkProfile::WIFI);
        assert_eq!(e.local, Cost { time_ns: 2_000_000_000, energy_uj: 3_000_000 });
        // 2 s at 1.5 W = 3 J
    }

    #[test]
    fn the_steps_add_up() {
        let job = Job { instructions: 40_000_000_000, upload_bytes: 4 * MB, download_bytes: MB };
        for link in LinkProfile::ALL {
            let o = estimate(&job, &PHONE, SERVER, &link).offload;
            let steps = [o.promotion, o.upload, o.remote, o.download];
            assert_eq!(o.total.time_ns, steps.iter().map(|c| c.time_ns).sum::<u64>(), "{}", link.name);
            assert_eq!(
                o.total.energy_uj,
                steps.iter().chain([&o.tail]).map(|c| c.energy_uj).sum::<u64>(),
                "{}",
                link.name
            );
        }
        // WiFi, by hand: 4 MB up at 5 Mbit/s is 6.4 s, 1 MB down at 10 Mbit/s 0.8 s.
        let o = estimate(&job, &PHONE, SERVER, &LinkProfile::WIFI).offload;
        assert_eq!(o.upload.time_ns, 15 * MS + 6_400 * MS);
        assert_eq!(o.download.time_ns, 15 * MS + 800 * MS);
        assert_eq!(o.remote.time_ns, 2_000 * MS + 79 * MS); // 2 s remote, then a promotion (tail 238 ms)
        assert_eq!(o.upload.energy_uj, energy_uj(119 + 30, 15 * MS) + energy_uj(1548 + 30, 6_400 * MS));
    }

    #[test]
    fn heavy_compute_with_little_state_goes_to_the_server() {
        // 100 s of phone time, 2 MB up, 200 kB back.
        let job = Job { instructions: 200_000_000_000, upload_bytes: 2 * MB, download_bytes: MB / 5 };
        for link in LinkProfile::ALL {
            let e = estimate(&job, &PHONE, SERVER, &link);
            assert_eq!(e.choose(Goal::Energy), Choice::Offload, "{}: {e:?}", link.name);
            assert_eq!(e.choose(Goal::Time), Choice::Offload, "{}", link.name);
            assert!(e.energy_saved_uj() > 0);
        }
    }

    #[test]
    fn light_compute_with_much_state_stays_on_the_phone() {
        // 1 s of phone time, 50 MB of guest to move.
        let job = Job { instructions: 2_000_000_000, upload_bytes: 50 * MB, download_bytes: 5 * MB };
        for link in LinkProfile::ALL {
            let e = estimate(&job, &PHONE, SERVER, &link);
            assert_eq!(e.choose(Goal::Energy), Choice::Local, "{}", link.name);
            assert_eq!(e.choose(Goal::Time), Choice::Local, "{}", link.name);
            assert!(e.energy_saved_uj() < 0);
        }
    }

    #[test]
    fn the_lte_tail_can_make_offloading_slower_but_cheaper_or_the_reverse() {
        // 6 s of phone time (9 J), 1 MB up, 100 kB back: over WiFi the offload saves energy;
        // over LTE the 11.6 s tail alone (12.3 J) costs more than running locally, though the
        // result comes back sooner.
        let job = Job { instructions: 12_000_000_000, upload_bytes: MB, download_bytes: MB / 10 };
        let wifi = estimate(&job, &PHONE, SERVER, &LinkProfile::WIFI);
        assert_eq!(wifi.choose(Goal::Energy), Choice::Offload);
        let lte = estimate(&job, &PHONE, SERVER, &LinkProfile::LTE);
        assert!(lte.offload.tail.energy_uj > lte.local.energy_uj);
        assert_eq!(lte.choose(Goal::Energy), Choice::Local);
        assert_eq!(lte.choose(Goal::Time), Choice::Offload);
    }

    #[test]
    fn a_faster_link_never_costs_more() {
        let job = Job { instructions: 10_000_000_000, upload_bytes: 8 * MB, download_bytes: 2 * MB };
        let slow = estimate(&job, &PHONE, SERVER, &LinkProfile::LTE);
        let fast_link = LinkProfile { uplink_bps: 12_000_000, downlink_bps: 26_000_000, ..LinkProfile::LTE };
        let fast = estimate(&job, &PHONE, SERVER, &fast_link);
        assert!(fast.offload.total.time_ns < slow.offload.total.time_ns);
        assert!(fast.offload.total.energy_uj < slow.offload.total.energy_uj);
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        let job = Job { instructions: u64::MAX, upload_bytes: u64::MAX, download_bytes: u64::MAX };
        let dead = Device { instructions_per_sec: 0, ..PHONE };
        let no_link = LinkProfile { uplink_bps: 0, downlink_bps: 0, ..LinkProfile::WIFI };
        let e = estimate(&job, &dead, 0, &no_link);
        assert_eq!(e.local.time_ns, u64::MAX);
        assert_eq!(e.offload.total.time_ns, u64::MAX);
        assert_eq!(e.choose(Goal::Time), Choice::Local);
        let nothing =
            estimate(&Job { instructions: 0, upload_bytes: 0, download_bytes: 0 }, &PHONE, SERVER, &LinkProfile::LTE);
        assert_eq!(nothing.local, Cost::default());
        assert_eq!(nothing.choose(Goal::Energy), Choice::Local);
    }
}
