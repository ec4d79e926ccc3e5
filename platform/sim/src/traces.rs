//! The built-in phone workloads of the energy table (`cargo xtask bench energy`): each is a set
//! of guests whose vCPUs have the demand of a typical phone activity, scaled to a target
//! utilization of the board (docs/governor.md, *Built-in traces*).
//!
//! The shapes follow what phones do: many threads woken by periodic timers (sensors, audio
//! buffers, display refresh at 60 Hz, network polling), a few interactive bursts (touch, page
//! loads), and real-time decode with a reservation. Periods stay as the activity has them;
//! the work per job and the burst lengths scale, so a busier phone does more per wake-up rather
//! than waking more often.

use power::{EnergyModel, CAPACITY_SCALE};
use vcpu_runtime::scenario::{Board, Demand, GovernorPolicy, Guest, Payload, Policy, Scenario};
use vcpu_runtime::{CoreId, Nanos, Reservation};

/// The built-in traces, by name.
pub const TRACES: [&str; 5] = ["idle-bursts", "audio", "video-call", "browsing", "batch-sync"];

/// The most of the biggest core at its top OPP one vCPU of a trace may want (ppm).
const MAX_VCPU_PPM: u64 = 800_000;

/// One vCPU's demand in a trace, before scaling.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// `work` every `period`, due within the period; `rt`: with a reservation a quarter above
    /// the (scaled) work.
    Periodic { period_us: u64, work_us: u64, rt: bool },
    /// Bursts of `burst_us` on average every `burst_us + think_us`.
    Interactive { burst_us: u64, think_us: u64 },
}

impl Shape {
    /// Utilization in millionths of a core.
    fn ppm(self) -> u64 {
        match self {
            Shape::Periodic { period_us, work_us, .. } => work_us * 1_000_000 / period_us,
            Shape::Interactive { burst_us, think_us } => burst_us * 1_000_000 / (burst_us + think_us),
        }
    }
}

/// The guests of a trace: (guest name, its vCPUs' shapes).
fn shapes(trace: &str) -> Option<Vec<(&'static str, Vec<Shape>)>> {
    use Shape::{Interactive as I, Periodic as P};
    Some(match trace {
        // Screen off: background services woken by timers (sensor hub 10 ms, location 50 ms,
        // keep-alives), with a rare burst (a notification).
        "idle-bursts" => vec![
            (
                "system",
                vec![
                    P { period_us: 10_000, work_us: 300, rt: false },
                    P { period_us: 4_000, work_us: 80, rt: false },
                    P { period_us: 50_000, work_us: 1_500, rt: false },
                ],
            ),
            ("apps", vec![I { burst_us: 20_000, think_us: 400_000 }, P { period_us: 8_000, work_us: 150, rt: false }]),
        ],
        // Music: RT decode of 10 ms buffers with a reservation, a 5 ms mixer, a little UI.
        "audio" => vec![
            (
                "media",
                vec![P { period_us: 10_000, work_us: 900, rt: true }, P { period_us: 5_000, work_us: 250, rt: false }],
            ),
            ("ui", vec![I { burst_us: 4_000, think_us: 300_000 }, P { period_us: 20_000, work_us: 300, rt: false }]),
        ],
        // Video call: camera and encoder at 30 fps, RT audio every 10 ms, network every 5 ms,
        // display at 60 Hz.
        "video-call" => vec![
            (
                "call",
                vec![
                    P { period_us: 33_333, work_us: 3_000, rt: false },
                    P { period_us: 33_333, work_us: 4_000, rt: false },
                    P { period_us: 10_000, work_us: 600, rt: true },
                ],
            ),
            (
                "system",
                vec![P { period_us: 5_000, work_us: 200, rt: false }, P { period_us: 16_667, work_us: 900, rt: false }],
            ),
        ],
        // Web browsing: page loads and scrolls on two threads, the compositor at 60 Hz, network.
        "browsing" => vec![
            ("browser", vec![I { burst_us: 12_000, think_us: 150_000 }, I { burst_us: 6_000, think_us: 90_000 }]),
            (
                "system",
                vec![
                    P { period_us: 16_667, work_us: 1_000, rt: false },
                    P { period_us: 4_000, work_us: 100, rt: false },
                ],
            ),
        ],
        // Background sync: a network thread woken per packet batch, a storage thread, a parser
        // in bursts.
        "batch-sync" => vec![
            (
                "sync",
                vec![P { period_us: 2_000, work_us: 120, rt: false }, P { period_us: 6_000, work_us: 500, rt: false }],
            ),
            ("apps", vec![I { burst_us: 30_000, think_us: 250_000 }]),
        ],
        _ => return None,
    })
}

/// Trace `trace` on a board of `cores` cores with energy profile `profile`, scaled so that its
/// vCPUs want `util_percent` of the whole board's capacity (every core at its fastest), simulated
/// for `duration`. Work is time at full speed (the biggest core at its top OPP), as the
/// simulator counts it: on a board of equal cores, `util_percent` of their time. `None` for an
/// unknown trace or profile, or a utilization its vCPUs cannot reach (one of them would want
/// more than 80 % of the biggest core, or a job would be longer than its period).
pub fn scenario(trace: &str, profile: &str, cores: u16, util_percent: u32, duration: Nanos) -> Option<Scenario> {
    let guests = shapes(trace)?;
    let model = EnergyModel::for_board(profile, cores).ok()?;
    let capacity: u64 = (0..model.core_count()).map(|c| u64::from(model.max_capacity(CoreId(c as u16)))).sum();
    let base_ppm: u64 = guests.iter().flat_map(|(_, s)| s.iter()).map(|s| s.ppm()).sum();
    let target_ppm = u64::from(util_percent) * 10_000 * capacity / u64::from(CAPACITY_SCALE);
    // Work scales by target / base, in millionths.
    let scale = target_ppm * 1_000_000 / base_ppm.max(1);
    // No vCPU may need more than 80 % of the biggest core: beyond that, no policy can keep it
    // within the headroom every policy plans with, and the row would compare backlogs.
    let largest = guests.iter().flat_map(|(_, s)| s.iter()).map(|s| s.ppm()).max().unwrap_or(0);
    if largest * scale / 1_000_000 > MAX_VCPU_PPM {
        return None;
    }
    let scaled = |us: u64| Nanos((us * 1_000 * scale / 1_000_000).max(1_000));
    let mut out = Vec::new();
    for (g, (name, vcpus)) in guests.iter().enumerate() {
        // One guest per vCPU shape list; the scenario format gives a guest one demand for all
        // its vCPUs, so each vCPU is its own single-vCPU guest, named guest.index.
        for (i, shape) in vcpus.iter().enumerate() {
            let seed = (g * 16 + i) as u64 + 1;
            let (demand, reservation) = match *shape {
                Shape::Periodic { period_us, work_us, rt } => {
                    let period = Nanos::from_micros(period_us);
                    let work = scaled(work_us);
                    if work > period {
                        return None;
                    }
                    // A quarter more than the work, within 80 % of a core; a job that needs
                    // more cannot be reserved.
                    let budget = Nanos(work.as_nanos() * 5 / 4).min(Nanos(period.as_nanos() * 8 / 10));
                    if rt && work > budget {
                        return None;
                    }
                    let reservation = rt.then_some(Reservation { budget, period });
                    (
                        Demand::Periodic {
                            period,
                            work,
                            deadline: period,
                            offset: Nanos::from_micros(seed * 137 % period_us),
                        },
                        reservation,
                    )
                }
                Shape::Interactive { burst_us, think_us } => {
                    let burst = scaled(burst_us);
                    // Keep the mean cycle: a longer burst shortens the think time, at least 1 ms.
                    let think =
                        Nanos::from_micros(burst_us + think_us).saturating_sub(burst).max(Nanos::from_millis(1));
                    (Demand::Interactive { burst_mean: burst, think_mean: think, seed }, None)
                }
            };
            out.push(Guest {
                name: format!("{name}.{i}"),
                vcpus: 1,
                memory_mib: 64,
                weight: 256,
                reservation,
                affinity: None,
                payload: Payload::None,
                demand: Some(demand),
            });
        }
    }
    Some(Scenario {
        name: format!("{trace}-{util_percent}pct"),
        description: format!("built-in trace {trace} at {util_percent} % of {cores} cores ({profile})"),
        duration,
        board: Board { cores, energy_profile: profile.to_string() },
        policy: Policy { governor: GovernorPolicy::Consolidate, ..Policy::default() },
        guests: out,
    })
}
