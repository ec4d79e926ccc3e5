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
                DemandGen::PhoneDay(Box::new(PhoneDay::new(*seed, seed ^ salt, *active_minutes, start)))
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
/// * Idle: a keep-alive of 2 ms every 30 s and a background sync of 150 ms at 60 % of a core
///   every 15 min (± 2 min).
/// * Active: `active_minutes` split into sessions of 0.5 to 20 min (exponential, mean 4 min)
///   laid out between 07:00 and 23:30 with random gaps; each session is browsing, video or
///   game. Inside a session the demand is redrawn every 1 ms around the activity's level.
#[derive(Clone, Debug)]
pub struct PhoneDay {
    rng: Rng,
    /// Sessions as (start, end, activity), sorted.
    sessions: Vec<(Instant, Instant, Activity)>,
    session: usize,
    /// The next 1 ms step inside the current session.
    step: Instant,
    /// Browsing bursts: remaining steps of the current burst and its level.
    burst_left: u32,
    burst_level: u32,
    next_keepalive: Instant,
    next_sync: Instant,
    end: Instant,
}

const DAY: Nanos = Nanos::from_secs(24 * 3600);

impl PhoneDay {
    /// `session_seed` lays out the day's sessions (shared by a guest's vCPUs); `load_seed`
    /// drives the per-millisecond load.
    pub fn new(session_seed: u64, load_seed: u64, active_minutes: u32, start: Instant) -> PhoneDay {
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
        let mut rng = Rng::new(load_seed);
        let keepalive_phase = Nanos::from_millis(rng.below(30_000));
        PhoneDay {
            next_keepalive: start + Nanos::from_secs(30) + keepalive_phase,
            next_sync: start + Nanos::from_secs(15 * 60) + keepalive_phase,
            rng,
            sessions,
            session: 0,
            step: first_step,
            burst_left: 0,
            burst_level: 0,
            end: start + DAY,
        }
    }

    /// Total active time of the day.
    pub fn active_time(&self) -> Nanos {
        self.sessions.iter().map(|s| s.1 - s.0).fold(Nanos::ZERO, |a, b| a + b)
    }

    fn level(&mut self, activity: Activity, step_in_session: u64) -> u32 {
        match activity {
            Activity::Browsing => {
                if self.burst_left == 0 {
                    // Between bursts: light touch handling, then a burst of 20..300 ms.
                    if self.rng.below(100) < 3 {
                        self.burst_left = 20 + self.rng.below(280) as u32;
                        self.burst_level = 40 + self.rng.below(61) as u32;
                    } else {
                        return self.rng.below(16) as u32;
                    }
                }
                self.burst_left -= 1;
                self.burst_level
            }
            Activity::Video => {
                // A frame every 33 ms costs more; the rest is steady decode.
                let base = if step_in_session % 33 < 6 { 55 } else { 22 };
                base + self.rng.below(11) as u32
            }
            Activity::Game => 50 + self.rng.below(51) as u32,
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
            self.step += STEP;
            if self.step >= end {
                self.session += 1;
                self.burst_left = 0;
                self.step = self.sessions.get(self.session).map_or(Instant::NEVER, |s| s.0);
            }
            let idx = (at - start).as_nanos() / STEP.as_nanos();
            let level = self.level(activity, idx);
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
        let mut day = PhoneDay::new(3, 4, 150, Instant::ZERO);
        assert_eq!(day.active_time(), Nanos::from_secs(150 * 60));
        let mut last = Instant::ZERO;
        let mut n = 0u64;
        while let Some(a) = day.next_arrival() {
            assert!(a.at >= last, "arrivals go forward");
            assert!(a.at < Instant::ZERO + DAY);
            assert!(a.work <= STEP || a.work == Nanos::from_millis(90) || a.work == Nanos::from_millis(2));
            last = a.at;
            n += 1;
        }
        // Most active steps carry demand.
        assert!(n > 150 * 60 * 1000 / 2, "{n} arrivals");
    }
}
