//! Demand generators: what each simulated vCPU asks of the CPU over time.
//!
//! A generator yields *arrivals*: at instant `at`, `work` of CPU time becomes due, optionally
//! with a deadline (periodic real-time jobs). The simulator adds the work to the vCPU's queue
//! and wakes the vCPU if it was blocked; the vCPU blocks (WFI) whenever its queue is empty.

use vcpu_runtime::scenario::Demand;
use vcpu_runtime::{Instant, Nanos};

/// A small, fast, deterministic PRNG (SplitMix64): the same seed gives the same run.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5851_f42d_4c95_7f2d)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            ((self.next_u64() as u128 * n as u128) >> 64) as u64
        }
    }
    /// Exponentially distributed with the given mean (at least 1 ns).
    pub fn exp(&mut self, mean: Nanos) -> Nanos {
        let u = 1.0 - self.unit(); // (0, 1]
        Nanos(((-u.ln()) * mean.as_nanos() as f64).max(1.0) as u64)
    }
}

/// Work that becomes due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arrival {
    pub at: Instant,
    pub work: Nanos,
    /// For periodic jobs: the job must have received all its work by then.
    pub deadline: Option<Instant>,
}

/// The granularity at which trace and phone-day demand changes.
pub const STEP: Nanos = Nanos::from_millis(1);

/// A generator for one vCPU.
#[derive(Clone, Debug)]
pub enum DemandGen {
    Periodic {
        period: Nanos,
        work: Nanos,
        deadline: Nanos,
        next: Instant,
    },
    Interactive {
        burst_mean: Nanos,
        think_mean: Nanos,
        rng: Rng,
        next: Instant,
    },
    /// Always runnable: one endless arrival at the start.
    Batch {
        given: bool,
    },
    /// Piecewise-constant demand in percent of a core, applied in 1 ms steps.
    Steps {
        points: Vec<(Nanos, u8)>,
        idx: usize,
        step: u64,
    },
    PhoneDay(Box<PhoneDay>),
}

impl DemandGen {
    /// A generator for vCPU number `vcpu_index` of a guest (seeds are varied per vCPU so the
    /// vCPUs of one guest do not move in lock-step).
    pub fn new(demand: &Demand, vcpu_index: u16, start: Instant) -> DemandGen {
        let salt = (vcpu_index as u64 + 1).wrapping_mul(0x9e37_79b9);
        match demand {
            Demand::Periodic { period, work, deadline, offset } => {
                DemandGen::Periodic { period: *period, work: *work, deadline: *deadline, next: start + *offset }
            }
            Demand::Interactive { burst_mean, think_mean, seed } => {
                let mut rng = Rng::new(seed ^ salt);
                let first = rng.exp(*think_mean);
                DemandGen::Interactive { burst_mean: *burst_mean, think_mean: *think_mean, rng, next: start + first }
            }
            Demand::Batch => DemandGen::Batch { given: false },
            Demand::Trace { points, .. } => {
                DemandGen::Steps { points: points.clone(), idx: 0, step: start.as_nanos() / STEP.as_nanos() }
            }
            Demand::PhoneDay { seed, active_minutes } => {
                // The vCPUs of one guest share the user's sessions; only their load differs.
                DemandGen::PhoneDay(Box::new(PhoneDay::new(*seed, seed ^ salt, vcpu_index, *active_minutes, start)))
            }
        }
    }

    /// The next arrival, or `None` when the generator has nothing more to give. Called again
    /// only after the previous arrival has been delivered; `now` is the current time.
    pub fn next_arrival(&mut self, now: Instant) -> Option<Arrival> {
        match self {
            DemandGen::Periodic { period, work, deadline, next } => {
                let at = *next;
                *next = at + *period;
                Some(Arrival { at, work: *work, deadline: Some(at + *deadline) })
            }
            DemandGen::Interactive { burst_mean, think_mean, rng, next } => {
                let at = (*next).max(now);
                let work = rng.exp(*burst_mean);
                // The next burst comes after this one's work and a think time; if the vCPU is
                // slower than that, bursts queue up.
                *next = at + work + rng.exp(*think_mean);
                Some(Arrival { at, work, deadline: None })
            }
            DemandGen::Batch { given } => {
                if *given {
                    None
                } else {
                    *given = true;
                    Some(Arrival { at: now, work: Nanos(u64::MAX / 4), deadline: None })
                }
            }
            DemandGen::Steps { points, idx, step } => loop {
                let t = Nanos(*step * STEP.as_nanos());
                while *idx + 1 < points.len() && points[*idx + 1].0 <= t {
                    *idx += 1;
                }
                if points.is_empty() {
                    return None;
                }
                let (start, pct) = points[*idx];
                if t < start {
                    // Before the first point demand is zero: jump to it.
                    *step = start.as_nanos().div_ceil(STEP.as_nanos());
                    continue;
                }
                if pct == 0 {
                    match points.get(*idx + 1) {
                        Some(&(next_t, _)) => {
                            *step = next_t.as_nanos().div_ceil(STEP.as_nanos());
                            continue;
                        }
                        None => return None,
                    }
                }
                *step += 1;
                return Some(Arrival {
                    at: Instant(t.as_nanos()),
                    work: Nanos(STEP.as_nanos() * pct as u64 / 100),
                    deadline: None,
                });
            },
            DemandGen::PhoneDay(day) => day.next_arrival(),
        }
    }
}

/// What a phone is doing in one active phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Activity {
    /// Scrolling and page loads: mostly light, with bursts of heavy demand.
    Browsing,
    /// Steady decode-like load with a frame rhythm.
    Video,
    /// Heavy and noisy.
    Game,
}

/// A generated 24-hour phone day, from midnight.
///
/// * Idle: a keep-alive of 2 ms every 30 s and a background sync of 90 ms about every 13 to
///   17 min, on every vCPU.
/// * Active: `active_minutes` split into sessions of 0.5 to 20 min (exponential, mean 4 min)
///   laid out between 07:00 and 23:30 with random gaps; each session is browsing (6 in 10),
///   video (3 in 10) or a game (1 in 10). The demand is set for each 1 ms step:
///   - browsing alternates reading (no demand, mean 2 s), scrolling (a 60 Hz frame costing
///     2 to 5 ms of the UI vCPU, mean 1.5 s) and page loads (20 to 300 ms at 40 to 100 % on
///     every vCPU of the guest);
///   - video: every vCPU decodes, 22 to 32 % with a heavier 6 ms every 33 ms frame;
///   - game: every vCPU at 50 to 100 %.
///
/// The session layout and the browsing phases come from `session_seed` and are the same for
/// all vCPUs of a guest (they are one user's actions); the load in each step comes from
/// `load_seed`, which differs per vCPU. vCPU 0 is the UI vCPU.
#[derive(Clone, Debug)]
pub struct PhoneDay {
    /// Per-vCPU load noise.
    rng: Rng,
    /// The user's actions: browsing phases (same sequence on every vCPU of the guest).
    user: Rng,
    ui: bool,
    /// Sessions as (start, end, activity), sorted.
    sessions: Vec<(Instant, Instant, Activity)>,
    session: usize,
    /// The next 1 ms step to consider inside the current session.
    step: Instant,
    /// The current browsing phase and when it ends.
    phase: Browse,
    phase_end: Instant,
    load_level: u32,
    next_keepalive: Instant,
    next_sync: Instant,
    end: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Browse {
    Reading,
    Scrolling,
    Loading,
}

const DAY: Nanos = Nanos::from_secs(24 * 3600);
const FRAME: u64 = 16;

impl PhoneDay {
    /// `session_seed` lays out the day (shared by a guest's vCPUs); `load_seed` drives the
    /// per-millisecond load of this vCPU; `vcpu_index` 0 is the guest's UI vCPU.
    pub fn new(session_seed: u64, load_seed: u64, vcpu_index: u16, active_minutes: u32, start: Instant) -> PhoneDay {
        let mut rng = Rng::new(session_seed);
        let mut lengths = Vec::new();
        let mut left = Nanos::from_secs(active_minutes as u64 * 60);
        while left > Nanos::ZERO {
            let len = rng.exp(Nanos::from_secs(240)).min(Nanos::from_secs(1200)).max(Nanos::from_secs(30)).min(left);
            lengths.push(len);
            left -= len;
        }
        let window_start = start + Nanos::from_secs(7 * 3600);
        let window = Nanos::from_secs(16 * 3600 + 1800);
        let busy: u64 = lengths.iter().map(|l| l.as_nanos()).sum();
        let free = window.as_nanos().saturating_sub(busy);
        // Random gaps that add up to the free time: cut points, sorted.
        let mut cuts: Vec<u64> = (0..lengths.len()).map(|_| rng.below(free.max(1))).collect();
        cuts.sort_unstable();
        let mut sessions = Vec::new();
        let mut t = window_start;
        let mut prev_cut = 0;
        for (len, cut) in lengths.iter().zip(&cuts) {
            t += Nanos(cut - prev_cut);
            prev_cut = *cut;
            let activity = match rng.below(10) {
                0..=5 => Activity::Browsing,
                6..=8 => Activity::Video,
                _ => Activity::Game,
            };
            sessions.push((t, t + *len, activity));
            t += *len;
        }
        let first_step = sessions.first().map_or(Instant::NEVER, |s| s.0);
        let user = Rng::new(session_seed ^ 0x0b5e_55ed);
        let mut rng = Rng::new(load_seed);
        let keepalive_phase = Nanos::from_millis(rng.below(30_000));
        PhoneDay {
            next_keepalive: start + Nanos::from_secs(30) + keepalive_phase,
            next_sync: start + Nanos::from_secs(15 * 60) + keepalive_phase,
            rng,
            user,
            ui: vcpu_index == 0,
            sessions,
            session: 0,
            step: first_step,
            phase: Browse::Reading,
            phase_end: first_step,
            load_level: 0,
            end: start + DAY,
        }
    }

    /// Total active time of the day.
    pub fn active_time(&self) -> Nanos {
        self.sessions.iter().map(|s| s.1 - s.0).fold(Nanos::ZERO, |a, b| a + b)
    }

    /// Starts the next browsing phase at `at` (drawn from the user's sequence, so every vCPU
    /// of the guest draws the same).
    fn next_phase(&mut self, at: Instant) {
        let (phase, mean) = match self.phase {
            Browse::Reading if self.user.below(10) < 6 => (Browse::Scrolling, Nanos::from_millis(1_500)),
            Browse::Scrolling if self.user.below(10) < 7 => (Browse::Reading, Nanos::from_millis(2_000)),
            Browse::Loading => (Browse::Reading, Nanos::from_millis(2_000)),
            _ => (Browse::Loading, Nanos::ZERO),
        };
        self.phase = phase;
        let len = if phase == Browse::Loading {
            self.load_level = 40 + self.user.below(61) as u32;
            Nanos::from_millis(20 + self.user.below(281))
        } else {
            self.user.exp(mean).max(STEP)
        };
        // Phases are whole steps.
        self.phase_end = at + Nanos(len.as_nanos() / STEP.as_nanos() * STEP.as_nanos()).max(STEP);
    }

    /// This vCPU's demand in the step at `at` (percent), and the next step worth looking at.
    fn level(&mut self, activity: Activity, at: Instant, session_start: Instant) -> (u32, Instant) {
        let next = at + STEP;
        match activity {
            Activity::Browsing => {
                while at >= self.phase_end {
                    let from = self.phase_end;
                    self.next_phase(from);
                }
                match self.phase {
                    // Nothing to do until the phase ends.
                    Browse::Reading => (0, self.phase_end),
                    Browse::Scrolling if !self.ui => (0, self.phase_end),
                    Browse::Scrolling => {
                        let ms = (at - session_start).as_nanos() / STEP.as_nanos();
                        let in_frame = ms % FRAME;
                        // The frame's work: 2 to 5 ms of the UI vCPU, then nothing until the next.
                        let frame_ms = 2 + (ms / FRAME) % 4;
                        if in_frame < frame_ms {
                            (70 + self.rng.below(31) as u32, next)
                        } else {
                            (0, (at + Nanos(STEP.as_nanos() * (FRAME - in_frame))).min(self.phase_end))
                        }
                    }
                    Browse::Loading => ((self.load_level + self.rng.below(11) as u32).min(100), next),
                }
            }
            Activity::Video => {
                // A frame every 33 ms costs more; the rest is steady decode.
                let ms = (at - session_start).as_nanos() / STEP.as_nanos();
                let base = if ms % 33 < 6 { 55 } else { 22 };
                (base + self.rng.below(11) as u32, next)
            }
            Activity::Game => (50 + self.rng.below(51) as u32, next),
        }
    }

    fn next_arrival(&mut self) -> Option<Arrival> {
        loop {
            let session_at = self.sessions.get(self.session).map_or(Instant::NEVER, |_| self.step);
            let background = self.next_keepalive.min(self.next_sync);
            if session_at.min(background) >= self.end {
                return None;
            }
            if background <= session_at {
                if self.next_keepalive <= self.next_sync {
                    let at = self.next_keepalive;
                    self.next_keepalive += Nanos::from_secs(30);
                    return Some(Arrival { at, work: Nanos::from_millis(2), deadline: None });
                }
                let at = self.next_sync;
                let jitter = self.rng.below(240);
                self.next_sync += Nanos::from_secs(13 * 60 + jitter);
                return Some(Arrival { at, work: Nanos::from_millis(90), deadline: None });
            }
            let (start, end, activity) = self.sessions[self.session];
            let at = self.step;
            let (level, next) = self.level(activity, at, start);
            self.step = next;
            if self.step >= end {
                self.session += 1;
                self.phase = Browse::Reading;
                self.step = self.sessions.get(self.session).map_or(Instant::NEVER, |s| s.0);
                self.phase_end = self.step;
            }
            if level > 0 {
                return Some(Arrival {
                    at,
                    work: Nanos(STEP.as_nanos() * level.min(100) as u64 / 100),
                    deadline: None,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_releases_on_time_with_deadlines() {
        let d = Demand::Periodic {
            period: Nanos::from_millis(10),
            work: Nanos::from_millis(2),
            deadline: Nanos::from_millis(8),
            offset: Nanos::from_millis(1),
        };
        let mut g = DemandGen::new(&d, 0, Instant::ZERO);
        let a = g.next_arrival(Instant::ZERO).unwrap();
        let b = g.next_arrival(Instant::ZERO).unwrap();
        assert_eq!(a.at, Instant(1_000_000));
        assert_eq!(a.deadline, Some(Instant(9_000_000)));
        assert_eq!(b.at, Instant(11_000_000));
        assert_eq!(b.work, Nanos::from_millis(2));
    }

    #[test]
    fn trace_steps_follow_points() {
        let d = Demand::Trace {
            file: "x.csv".into(),
            points: vec![(Nanos::from_millis(2), 50), (Nanos::from_millis(4), 0), (Nanos::from_millis(6), 100)],
        };
        let mut g = DemandGen::new(&d, 0, Instant::ZERO);
        let got: Vec<(u64, u64)> = (0..4)
            .map(|_| g.next_arrival(Instant::ZERO).unwrap())
            .map(|a| (a.at.as_nanos() / 1_000_000, a.work.as_nanos() / 1_000))
            .collect();
        assert_eq!(got, vec![(2, 500), (3, 500), (6, 1000), (7, 1000)]);
    }

    #[test]
    fn interactive_is_deterministic_and_has_the_right_mean() {
        let d = Demand::Interactive { burst_mean: Nanos::from_millis(5), think_mean: Nanos::from_millis(45), seed: 7 };
        let mut g1 = DemandGen::new(&d, 0, Instant::ZERO);
        let mut g2 = DemandGen::new(&d, 0, Instant::ZERO);
        let mut total = 0u64;
        let n = 20_000;
        for _ in 0..n {
            let a = g1.next_arrival(Instant::ZERO).unwrap();
            assert_eq!(Some(a), g2.next_arrival(Instant::ZERO));
            total += a.work.as_nanos();
        }
        let mean = total as f64 / n as f64 / 1e6;
        assert!((mean - 5.0).abs() < 0.25, "mean burst {mean} ms");
    }

    #[test]
    fn phone_day_has_the_requested_active_time_and_ends_after_a_day() {
        let mut ui = PhoneDay::new(3, 4, 0, 150, Instant::ZERO);
        let mut worker = PhoneDay::new(3, 5, 1, 150, Instant::ZERO);
        assert_eq!(ui.active_time(), Nanos::from_secs(150 * 60));
        assert_eq!(ui.sessions, worker.sessions, "a guest's vCPUs share the user's sessions");
        let count = |day: &mut PhoneDay| {
            let (mut last, mut n, mut work) = (Instant::ZERO, 0u64, Nanos::ZERO);
            while let Some(a) = day.next_arrival() {
                assert!(a.at >= last, "arrivals go forward");
                assert!(a.at < Instant::ZERO + DAY);
                last = a.at;
                n += 1;
                work += a.work;
            }
            (n, work)
        };
        let (n_ui, work_ui) = count(&mut ui);
        let (n_worker, work_worker) = count(&mut worker);
        // Active steps with demand: a good part of the 9 million active milliseconds, fewer on
        // the worker, which has nothing to do while the user reads or scrolls.
        assert!(n_ui > 1_000_000 && n_ui < 9_000_000, "{n_ui}");
        assert!(n_worker < n_ui, "{n_worker} vs {n_ui}");
        // The day's average load is light, as on a real phone: well under 10 % of a core.
        let avg = work_ui.as_nanos() as f64 / DAY.as_nanos() as f64;
        assert!(avg > 0.005 && avg < 0.10, "UI vCPU average load {avg}");
        assert!(work_worker < work_ui);
    }
}
