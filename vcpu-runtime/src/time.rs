//! Time in nanoseconds: [`Instant`] is a point on the platform's monotonic clock (the generic
//! timer on aarch64, simulated time on the host), [`Nanos`] a length of time.

use core::fmt;
use core::ops::{Add, AddAssign, Sub, SubAssign};

/// A point in time, in nanoseconds since the platform's clock started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Instant(pub u64);

/// A length of time in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Nanos(pub u64);

impl Instant {
    pub const ZERO: Instant = Instant(0);
    /// Far enough in the future to mean "never" (about 584 years).
    pub const NEVER: Instant = Instant(u64::MAX);

    pub const fn as_nanos(self) -> u64 {
        self.0
    }
    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub const fn since(self, earlier: Instant) -> Nanos {
        Nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Nanos {
    pub const ZERO: Nanos = Nanos(0);
    pub const MAX: Nanos = Nanos(u64::MAX);

    pub const fn from_micros(us: u64) -> Nanos {
        Nanos(us.saturating_mul(1_000))
    }
    pub const fn from_millis(ms: u64) -> Nanos {
        Nanos(ms.saturating_mul(1_000_000))
    }
    pub const fn from_secs(s: u64) -> Nanos {
        Nanos(s.saturating_mul(1_000_000_000))
    }
    pub const fn as_nanos(self) -> u64 {
        self.0
    }
    pub const fn as_micros(self) -> u64 {
        self.0 / 1_000
    }
    pub const fn as_millis(self) -> u64 {
        self.0 / 1_000_000
    }
    pub const fn saturating_sub(self, other: Nanos) -> Nanos {
        Nanos(self.0.saturating_sub(other.0))
    }
    pub const fn min(self, other: Nanos) -> Nanos {
        if self.0 < other.0 {
            self
        } else {
            other
        }
    }
}

impl Add<Nanos> for Instant {
    type Output = Instant;
    fn add(self, d: Nanos) -> Instant {
        Instant(self.0.saturating_add(d.0))
    }
}
impl AddAssign<Nanos> for Instant {
    fn add_assign(&mut self, d: Nanos) {
        *self = *self + d;
    }
}
impl Sub<Instant> for Instant {
    type Output = Nanos;
    fn sub(self, earlier: Instant) -> Nanos {
        self.since(earlier)
    }
}
impl Add for Nanos {
    type Output = Nanos;
    fn add(self, d: Nanos) -> Nanos {
        Nanos(self.0.saturating_add(d.0))
    }
}
impl AddAssign for Nanos {
    fn add_assign(&mut self, d: Nanos) {
        *self = *self + d;
    }
}
impl Sub for Nanos {
    type Output = Nanos;
    fn sub(self, d: Nanos) -> Nanos {
        self.saturating_sub(d)
    }
}
impl SubAssign for Nanos {
    fn sub_assign(&mut self, d: Nanos) {
        *self = *self - d;
    }
}

impl fmt::Display for Nanos {
    /// Human-readable with a unit: `750ns`, `12.500us`, `4.000ms`, `1.250s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n < 1_000 {
            write!(f, "{n}ns")
        } else if n < 1_000_000 {
            write!(f, "{}.{:03}us", n / 1_000, n % 1_000)
        } else if n < 1_000_000_000 {
            write!(f, "{}.{:03}ms", n / 1_000_000, (n / 1_000) % 1_000)
        } else {
            write!(f, "{}.{:03}s", n / 1_000_000_000, (n / 1_000_000) % 1_000)
        }
    }
}
