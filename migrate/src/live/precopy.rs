//! The pre-copy planner: when to stop sending dirty pages while the guest runs.

use crate::checkpoint::PAGE_SIZE;

/// What the planner is bounded by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrecopyLimits {
    /// The longest the guest may stay paused for the last copy, in ns. 300 ms by default, the
    /// default `downtime-limit` of QEMU's migration.
    pub max_downtime_ns: u64,
    /// Rounds at most, round 0 (all of RAM) included. 30 by default.
    pub max_rounds: u32,
    /// A round makes progress when the pages it leaves dirty are at most this share, in
    /// percent, of those the round before left (round 0: of all pages). 90 by default.
    pub progress_percent: u32,
    /// Rounds in a row without progress after which pre-copy stops. 2 by default.
    pub stalled_rounds: u32,
}

impl PrecopyLimits {
    pub const DEFAULT: PrecopyLimits =
        PrecopyLimits { max_downtime_ns: 300_000_000, max_rounds: 30, progress_percent: 90, stalled_rounds: 2 };
}

impl Default for PrecopyLimits {
    fn default() -> Self {
        PrecopyLimits::DEFAULT
    }
}

/// Why pre-copy ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StopReason {
    /// The pages still dirty can be sent within the downtime limit at the measured bandwidth.
    FitsDowntime,
    /// The dirty set stopped shrinking: the guest writes about as fast as the link sends.
    NotConverging,
    /// The round limit was reached.
    MaxRounds,
}

/// What to do after a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Next {
    /// Send the pages dirty now, the guest still running.
    Round,
    /// Pause the guest and send its state and the pages dirty then.
    StopAndCopy { reason: StopReason },
}

/// The pre-copy planner, sans-IO: the platform runs the rounds and tells it, after each, how
/// many pages are dirty now and how many bytes the round sent in how long; it answers whether
/// to run another round.
///
/// The bandwidth is estimated from the rounds' bytes and times, each round's weight halving
/// with every later round (so it follows a link that changes, without one short round
/// deciding it). The expected downtime of `n` dirty pages is `n × PAGE_SIZE ÷ bandwidth`: a
/// page usually costs fewer bytes on the wire (zero pages, LZ4), so the estimate errs long.
#[derive(Clone, Debug)]
pub struct Precopy {
    total_pages: u64,
    limits: PrecopyLimits,
    rounds: u32,
    /// Pages left dirty by the last round (all pages before round 0).
    last_dirty: u64,
    stalled: u32,
    /// Decayed sums of the rounds' bytes and ns.
    bytes: u64,
    ns: u64,
    stopped: Option<StopReason>,
}

impl Precopy {
    /// A planner for a guest of `total_pages` pages, with the default limits.
    pub fn new(total_pages: u64) -> Precopy {
        Precopy::with_limits(total_pages, PrecopyLimits::DEFAULT)
    }

    pub fn with_limits(total_pages: u64, limits: PrecopyLimits) -> Precopy {
        Precopy { total_pages, limits, rounds: 0, last_dirty: total_pages, stalled: 0, bytes: 0, ns: 0, stopped: None }
    }

    pub fn limits(&self) -> &PrecopyLimits {
        &self.limits
    }

    /// The guest's pages.
    pub fn total_pages(&self) -> u64 {
        self.total_pages
    }

    /// Rounds reported so far, round 0 included.
    pub fn rounds(&self) -> u32 {
        self.rounds
    }

    /// The bandwidth estimate in bytes per second, once a round took measurable time.
    pub fn bandwidth(&self) -> Option<u64> {
        (self.ns > 0).then(|| (u128::from(self.bytes) * 1_000_000_000 / u128::from(self.ns)) as u64)
    }

    /// How long sending `pages` pages would take at the estimated bandwidth, in ns (`None`
    /// before any bandwidth is known, or when none was measured).
    pub fn expected_downtime_ns(&self, pages: u64) -> Option<u64> {
        if pages == 0 {
            return Some(0);
        }
        if self.bytes == 0 {
            return None;
        }
        let ns = u128::from(pages) * PAGE_SIZE as u128 * u128::from(self.ns) / u128::from(self.bytes);
        Some(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// The decision made, once pre-copy has ended.
    pub fn stopped(&self) -> Option<StopReason> {
        self.stopped
    }

    /// A round ended: it sent `bytes_sent` bytes in `elapsed_ns`, and `dirty_pages` pages are
    /// dirty now (the next round's pages). Once this has answered `StopAndCopy`, it answers
    /// the same again and learns nothing more.
    pub fn round_done(&mut self, dirty_pages: u64, bytes_sent: u64, elapsed_ns: u64) -> Next {
        if let Some(reason) = self.stopped {
            return Next::StopAndCopy { reason };
        }
        self.rounds += 1;
        if elapsed_ns > 0 {
            self.bytes = self.bytes / 2 + bytes_sent;
            self.ns = self.ns / 2 + elapsed_ns;
        }
        let progress =
            u128::from(dirty_pages) * 100 <= u128::from(self.last_dirty) * u128::from(self.limits.progress_percent);
        self.stalled = if progress { 0 } else { self.stalled + 1 };
        self.last_dirty = dirty_pages;
        let fits = self.expected_downtime_ns(dirty_pages).is_some_and(|ns| ns <= self.limits.max_downtime_ns);
        let reason = if fits {
            StopReason::FitsDowntime
        } else if self.stalled >= self.limits.stalled_rounds {
            StopReason::NotConverging
        } else if self.rounds >= self.limits.max_rounds {
            StopReason::MaxRounds
        } else {
            return Next::Round;
        };
        self.stopped = Some(reason);
        Next::StopAndCopy { reason }
    }
}
