//! Utilization tracking: an exponentially weighted moving average of busy time.
//!
//! Time is cut into fixed [`UTIL_PERIOD`]s (1 ms). At the end of each period the average moves
//! towards that period's busy fraction: `u = u·y + busy·(1 − y)`, with `y` chosen so that the
//! weight of a period halves every `half_life` (default 32 ms, as Linux PELT). A core that was
//! fully busy for one half-life after being idle reads 50 %, after two 75 %, and so on.
//! Values are fixed-point: [`UTIL_ONE`] is 100 %. Everything is integer arithmetic, because the
//! EL2 image has no FPU (`aarch64-unknown-none-softfloat`).

use crate::time::{Instant, Nanos};

/// 100 % utilization in the fixed-point scale used everywhere (`2^16`).
pub const UTIL_ONE: u32 = 1 << 16;
/// The averaging period.
pub const UTIL_PERIOD: Nanos = Nanos::from_millis(1);
/// Full speed: the capacity of the biggest core at its fastest operating point (Linux's
/// `SCHED_CAPACITY_SCALE`). A core running slower does `capacity / CAPACITY_SCALE` of that
/// work per unit of time ([`Ewma::advance_scaled`]).
pub const CAPACITY_SCALE: u32 = 1024;

/// The work (CPU time at full speed) done by running `ran` at `capacity` out of
/// [`CAPACITY_SCALE`], rounded up, so that a run of [`time_for_work`] completes that work. (A
/// reservation's budget is such work: at half speed it lasts twice as long.)
#[inline]
pub fn work_done(ran: Nanos, capacity: u32) -> Nanos {
    if capacity >= CAPACITY_SCALE {
        return ran;
    }
    Nanos((ran.as_nanos() as u128 * capacity as u128).div_ceil(CAPACITY_SCALE as u128) as u64)
}

/// How long `work` (CPU time at full speed) takes at `capacity` out of [`CAPACITY_SCALE`].
#[inline]
pub fn time_for_work(work: Nanos, capacity: u32) -> Nanos {
    if capacity >= CAPACITY_SCALE {
        return work;
    }
    let ns = (work.as_nanos() as u128 * CAPACITY_SCALE as u128).div_ceil(capacity.max(1) as u128);
    Nanos(u64::try_from(ns).unwrap_or(u64::MAX))
}

const Q32: u64 = 1 << 32;

/// The per-period decay factor `y = 2^(−period/half_life)` in Q32, and its powers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decay {
    y_q32: u64,
}

impl Decay {
    /// The factor for a half-life (rounded to whole periods, at least one).
    pub fn for_half_life(half_life: Nanos) -> Decay {
        let periods = (half_life.as_nanos() / UTIL_PERIOD.as_nanos()).max(1);
        // Find y in Q32 with y^periods = 1/2 by bisection: y^n is monotonic in y.
        let (mut lo, mut hi) = (0u64, Q32);
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if pow_q32(mid, periods) > Q32 / 2 {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        Decay { y_q32: hi }
    }

    /// `y^n` in Q32.
    pub fn pow(self, n: u64) -> u64 {
        pow_q32(self.y_q32, n)
    }
}

fn mul_q32(a: u64, b: u64) -> u64 {
    ((a as u128 * b as u128) >> 32) as u64
}

fn pow_q32(mut base: u64, mut n: u64) -> u64 {
    let mut acc = Q32;
    while n > 0 {
        if acc == 0 {
            break;
        }
        if n & 1 == 1 {
            acc = mul_q32(acc, base);
        }
        base = mul_q32(base, base);
        n >>= 1;
    }
    acc
}

/// `ns` of running at `capacity` as work: ns at full speed.
#[inline]
const fn scale(ns: u64, capacity: u32) -> u64 {
    if capacity == CAPACITY_SCALE {
        ns
    } else {
        (ns as u128 * capacity as u128 / CAPACITY_SCALE as u128) as u64
    }
}

const fn period_end_after(t: Instant) -> u64 {
    let p = UTIL_PERIOD.as_nanos();
    (t.as_nanos() / p).saturating_add(1).saturating_mul(p)
}

/// An exponentially weighted average of the busy fraction of something (a vCPU or a core).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ewma {
    /// Average up to the start of the current period, in [`UTIL_ONE`] units.
    util: u32,
    /// Counts the period closes ([`Ewma::generation`]).
    generation: u32,
    /// Busy time accumulated in the current (unfinished) period.
    busy_in_period: u64,
    /// Everything before this instant has been accounted.
    last: Instant,
    /// End of the current period (kept so the common path needs no division).
    period_end: u64,
}

impl Ewma {
    pub const fn new(start: Instant) -> Ewma {
        Ewma { util: 0, generation: 0, busy_in_period: 0, last: start, period_end: period_end_after(start) }
    }

    /// A tracker that starts at a given value (used when a vCPU arrives with its history).
    pub const fn with_value(start: Instant, util: u32) -> Ewma {
        Ewma { util, generation: 0, busy_in_period: 0, last: start, period_end: period_end_after(start) }
    }

    /// Accounts the time from the last update to `now`, during which the tracked thing was
    /// busy (`busy = true`) or not. Time going backwards is ignored.
    #[inline]
    pub fn advance(&mut self, decay: Decay, now: Instant, busy: bool) {
        self.advance_scaled(decay, now, if busy { CAPACITY_SCALE } else { 0 });
    }

    /// Like [`advance`](Self::advance), with busy time counted at `capacity` out of
    /// [`CAPACITY_SCALE`] (0: idle): the average of a vCPU that ran on a core at half speed
    /// counts half of its running time, so it measures work rather than time (Linux's
    /// frequency and CPU invariance of PELT). At [`CAPACITY_SCALE`] it is exactly `advance`.
    #[inline]
    pub fn advance_scaled(&mut self, decay: Decay, now: Instant, capacity: u32) {
        let capacity = capacity.min(CAPACITY_SCALE);
        let now_ns = now.as_nanos();
        if now_ns < self.period_end {
            // The common case: still inside the current period.
            if capacity > 0 && now > self.last {
                self.busy_in_period += scale(now_ns - self.last.as_nanos(), capacity);
            }
            if now > self.last {
                self.last = now;
            }
            return;
        }
        self.close_periods(decay, now_ns, capacity);
    }

    /// A run from `since` to `now` at `capacity` ([`Ewma::advance_scaled`]): the time from the
    /// last update to `since` counts as idle, the run as busy. The same as `advance_scaled(since,
    /// 0)` then `advance_scaled(now, capacity)`, in one step when both fall in the current
    /// period (the common case: a run shorter than the averaging period).
    #[inline(always)]
    pub fn advance_run(&mut self, decay: Decay, since: Instant, now: Instant, capacity: u32) {
        if now.as_nanos() < self.period_end && since >= self.last && now >= since {
            let capacity = capacity.min(CAPACITY_SCALE);
            if capacity > 0 {
                self.busy_in_period += scale(now.as_nanos() - since.as_nanos(), capacity);
            }
            self.last = now;
            return;
        }
        self.advance_scaled(decay, since, 0);
        self.advance_scaled(decay, now, capacity);
    }

    #[cold]
    fn close_periods(&mut self, decay: Decay, now_ns: u64, capacity: u32) {
        let p = UTIL_PERIOD.as_nanos();
        let period_end = self.period_end;
        if capacity > 0 {
            self.busy_in_period += scale(period_end.saturating_sub(self.last.as_nanos()), capacity);
        }
        // Close the current period.
        let y = decay.y_q32;
        let frac = (self.busy_in_period.min(p) * UTIL_ONE as u64) / p;
        self.util = (mul_q32(self.util as u64, y) + mul_q32(frac, Q32 - y)) as u32;
        // Whole periods in which the state did not change have a closed form: the average
        // moves from where it is towards the level of that state by 1 − yⁿ of the way.
        let full = (now_ns - period_end) / p;
        if full > 0 {
            let yn = decay.pow(full);
            let level = (UTIL_ONE as u64 * capacity as u64 / CAPACITY_SCALE as u64) as u32;
            self.util = if self.util <= level {
                level - mul_q32((level - self.util) as u64, yn) as u32
            } else {
                level + mul_q32((self.util - level) as u64, yn) as u32
            };
        }
        let period_start = period_end + full * p;
        self.busy_in_period = if capacity > 0 { scale(now_ns - period_start, capacity) } else { 0 };
        self.period_end = period_start + p;
        self.last = Instant(now_ns);
        self.generation = self.generation.wrapping_add(1);
    }

    /// The average as of the last completed period, in [`UTIL_ONE`] units.
    pub const fn value(&self) -> u32 {
        self.util
    }

    /// The instant up to which time has been accounted.
    pub const fn last_update(&self) -> Instant {
        self.last
    }

    /// Changes (wrapping) every time an update passes the end of the current period, the only
    /// time [`Ewma::value`] changes. [`Ewma::decayed_to`] from any instant of one period gives
    /// the same, so a published copy needs refreshing only when this moved.
    pub const fn generation(&self) -> u32 {
        self.generation
    }

    /// The value a reader at `now` should see for something that has been idle since the last
    /// update (used for blocked vCPUs, whose owner does not update them).
    pub fn decayed_to(&self, decay: Decay, now: Instant) -> u32 {
        let mut copy = *self;
        copy.advance(decay, now, false);
        copy.value()
    }
}

/// Formats a [`UTIL_ONE`]-scaled value as a percentage with one decimal, e.g. `37.5%`.
pub fn percent(util: u32) -> impl core::fmt::Display {
    struct P(u64);
    impl core::fmt::Display for P {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            write!(f, "{}.{}%", self.0 / 10, self.0 % 10)
        }
    }
    P((util as u64 * 1000 + UTIL_ONE as u64 / 2) / UTIL_ONE as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pct(u: u32) -> f64 {
        u as f64 * 100.0 / UTIL_ONE as f64
    }

    #[test]
    fn half_life_is_respected() {
        let d = Decay::for_half_life(Nanos::from_millis(32));
        let y32 = d.pow(32) as f64 / Q32 as f64;
        assert!((y32 - 0.5).abs() < 1e-6, "y^32 = {y32}");
        let mut e = Ewma::new(Instant::ZERO);
        e.advance(d, Instant(Nanos::from_millis(32).as_nanos()), true);
        assert!((pct(e.value()) - 50.0).abs() < 0.1, "{}", pct(e.value()));
        e.advance(d, Instant(Nanos::from_millis(64).as_nanos()), true);
        assert!((pct(e.value()) - 75.0).abs() < 0.1, "{}", pct(e.value()));
        e.advance(d, Instant(Nanos::from_millis(96).as_nanos()), false);
        assert!((pct(e.value()) - 37.5).abs() < 0.1, "{}", pct(e.value()));
    }

    #[test]
    fn step_by_step_equals_closed_form() {
        let d = Decay::for_half_life(Nanos::from_millis(20));
        let mut a = Ewma::new(Instant::ZERO);
        let mut b = Ewma::new(Instant::ZERO);
        // a: one big busy stretch; b: the same time in 37 us steps.
        a.advance(d, Instant(50_000_000), true);
        let mut t = 0;
        while t < 50_000_000 {
            t = (t + 37_000).min(50_000_000);
            b.advance(d, Instant(t), true);
        }
        // Per-period rounding accumulates a little; within 0.1 % of a core.
        assert!(a.value().abs_diff(b.value()) <= UTIL_ONE / 1000, "{} vs {}", a.value(), b.value());
    }

    #[test]
    fn duty_cycle_converges_to_busy_fraction() {
        let d = Decay::for_half_life(Nanos::from_millis(32));
        let mut e = Ewma::new(Instant::ZERO);
        // 30 % busy in every 1 ms period, for 1 s.
        for ms in 0..1000u64 {
            let start = ms * 1_000_000;
            e.advance(d, Instant(start + 300_000), true);
            e.advance(d, Instant(start + 1_000_000), false);
        }
        assert!((pct(e.value()) - 30.0).abs() < 0.2, "{}", pct(e.value()));
    }

    #[test]
    fn scaled_busy_time_counts_as_work() {
        let d = Decay::for_half_life(Nanos::from_millis(32));
        // Always running at a quarter of full speed reads 25 %: a quarter of a big core's work.
        let mut e = Ewma::new(Instant::ZERO);
        e.advance_scaled(d, Instant(Nanos::from_secs(1).as_nanos()), CAPACITY_SCALE / 4);
        assert!((pct(e.value()) - 25.0).abs() < 0.1, "{}", pct(e.value()));
        // From above, it decays towards that level.
        let mut f = Ewma::with_value(Instant::ZERO, UTIL_ONE);
        f.advance_scaled(d, Instant(Nanos::from_millis(32).as_nanos()), CAPACITY_SCALE / 4);
        assert!((pct(f.value()) - 62.5).abs() < 0.2, "{}", pct(f.value()));
        // 60 % busy at half speed in every period: 30 %, as 30 % busy at full speed.
        let mut g = Ewma::new(Instant::ZERO);
        for ms in 0..1000u64 {
            let start = ms * 1_000_000;
            g.advance_scaled(d, Instant(start + 600_000), CAPACITY_SCALE / 2);
            g.advance(d, Instant(start + 1_000_000), false);
        }
        assert!((pct(g.value()) - 30.0).abs() < 0.2, "{}", pct(g.value()));
        // Full speed is the unscaled average.
        let (mut a, mut b) = (Ewma::new(Instant::ZERO), Ewma::new(Instant::ZERO));
        for t in [300_000u64, 2_700_000, 2_900_000, 40_000_000] {
            a.advance(d, Instant(t), true);
            b.advance_scaled(d, Instant(t), CAPACITY_SCALE);
        }
        assert_eq!(a, b);
    }

    #[test]
    fn long_idle_decays_to_zero_and_never_overflows() {
        let d = Decay::for_half_life(Nanos::from_millis(32));
        let mut e = Ewma::with_value(Instant::ZERO, UTIL_ONE);
        e.advance(d, Instant(u64::MAX / 2), false);
        assert_eq!(e.value(), 0);
        let mut f = Ewma::new(Instant::ZERO);
        f.advance(d, Instant(u64::MAX / 2), true);
        assert!(f.value() <= UTIL_ONE && f.value() > UTIL_ONE - 2);
    }

    #[test]
    fn a_run_is_idle_then_busy() {
        let d = Decay::for_half_life(Nanos::from_millis(32));
        // Runs within one period, across periods, starting before the last update, at every
        // capacity: advance_run is the two-step update.
        let cases = [
            (100_000u64, 150_000u64, 400_000u64, CAPACITY_SCALE),
            (100_000, 100_000, 100_000, CAPACITY_SCALE),
            (100_000, 900_000, 1_700_000, CAPACITY_SCALE / 2),
            (2_500_000, 2_400_000, 2_600_000, CAPACITY_SCALE),
            (300_000, 4_000_000, 9_100_000, 0),
            (999_999, 1_000_000, 1_000_001, CAPACITY_SCALE),
        ];
        for (last, since, now, cap) in cases {
            let mut start = Ewma::with_value(Instant::ZERO, UTIL_ONE / 3);
            start.advance(d, Instant(last), true);
            let (mut a, mut b) = (start, start);
            a.advance_run(d, Instant(since), Instant(now), cap);
            b.advance_scaled(d, Instant(since), 0);
            b.advance_scaled(d, Instant(now), cap);
            assert_eq!(a, b, "last {last} since {since} now {now} capacity {cap}");
        }
    }

    #[test]
    fn percent_formats() {
        extern crate std;
        use std::format;
        assert_eq!(format!("{}", percent(UTIL_ONE / 2)), "50.0%");
        assert_eq!(format!("{}", percent(UTIL_ONE)), "100.0%");
        assert_eq!(format!("{}", percent(0)), "0.0%");
    }
}
