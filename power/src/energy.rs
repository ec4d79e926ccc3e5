//! Energy: power integrated over time, kept exact.
//!
//! µW × ns is a femtojoule, so [`Energy`] counts femtojoules in a `u128`: a product of a `u64`
//! power and a `u64` duration always fits, sums saturate (after some 10²³ J), and energy
//! accumulated in many short pieces is exactly the energy of one long piece: nothing is lost to
//! rounding until it is read out in a coarser unit.

use core::fmt;
use core::ops::{Add, AddAssign};

use vcpu_runtime::time::Nanos;

/// An amount of energy, in femtojoules (10⁻¹⁵ J).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Energy(pub u128);

const FJ_PER_NJ: u128 = 1_000_000;

impl Energy {
    pub const ZERO: Energy = Energy(0);

    /// The energy of `power_uw` drawn for `duration`.
    #[inline]
    pub const fn from_power(power_uw: u64, duration: Nanos) -> Energy {
        Energy(power_uw as u128 * duration.as_nanos() as u128)
    }

    pub const fn as_femtojoules(self) -> u128 {
        self.0
    }

    /// Whole nanojoules (rounded down, saturating at `u64::MAX`).
    pub const fn as_nanojoules(self) -> u64 {
        let nj = self.0 / FJ_PER_NJ;
        if nj > u64::MAX as u128 {
            u64::MAX
        } else {
            nj as u64
        }
    }

    /// Whole microjoules (rounded down, saturating at `u64::MAX`).
    pub const fn as_microjoules(self) -> u64 {
        let uj = self.0 / (FJ_PER_NJ * 1_000);
        if uj > u64::MAX as u128 {
            u64::MAX
        } else {
            uj as u64
        }
    }

    /// The average power over `duration` in µW (0 for an empty duration).
    pub const fn average_power_uw(self, duration: Nanos) -> u64 {
        if duration.as_nanos() == 0 {
            return 0;
        }
        let uw = self.0 / duration.as_nanos() as u128;
        if uw > u64::MAX as u128 {
            u64::MAX
        } else {
            uw as u64
        }
    }

    pub const fn saturating_add(self, other: Energy) -> Energy {
        Energy(self.0.saturating_add(other.0))
    }
}

/// The energy in nanojoules of `power_uw` drawn for `duration` (rounded down, saturating).
/// Sums of many short intervals should be kept as [`Energy`], which does not round.
#[inline]
pub const fn energy_nj(power_uw: u64, duration: Nanos) -> u64 {
    Energy::from_power(power_uw, duration).as_nanojoules()
}

impl Add for Energy {
    type Output = Energy;
    fn add(self, other: Energy) -> Energy {
        self.saturating_add(other)
    }
}

impl AddAssign for Energy {
    fn add_assign(&mut self, other: Energy) {
        *self = *self + other;
    }
}

impl core::iter::Sum for Energy {
    fn sum<I: Iterator<Item = Energy>>(iter: I) -> Energy {
        iter.fold(Energy::ZERO, Add::add)
    }
}

impl fmt::Display for Energy {
    /// Human-readable with a unit and three decimals: `512nJ`, `12.500uJ`, `3.000mJ`, `1.250J`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nj = self.0 / FJ_PER_NJ;
        if nj < 1_000 {
            write!(f, "{nj}nJ")
        } else if nj < 1_000_000 {
            write!(f, "{}.{:03}uJ", nj / 1_000, nj % 1_000)
        } else if nj < 1_000_000_000 {
            write!(f, "{}.{:03}mJ", nj / 1_000_000, (nj / 1_000) % 1_000)
        } else {
            write!(f, "{}.{:03}J", nj / 1_000_000_000, (nj / 1_000_000) % 1_000)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn units() {
        // 1 W for 1 s is 1 J.
        let joule = Energy::from_power(1_000_000, Nanos::from_secs(1));
        assert_eq!(joule.as_nanojoules(), 1_000_000_000);
        assert_eq!(joule.as_microjoules(), 1_000_000);
        assert_eq!(joule.average_power_uw(Nanos::from_secs(1)), 1_000_000);
        assert_eq!(joule.average_power_uw(Nanos::ZERO), 0);
        assert_eq!(energy_nj(15_000, Nanos::from_micros(10)), 150);
    }

    #[test]
    fn no_overflow_and_no_lost_pieces() {
        // The largest power for the longest time fits; the nJ read-out saturates.
        let huge = Energy::from_power(u64::MAX, Nanos::MAX);
        assert_eq!(huge.0, u64::MAX as u128 * u64::MAX as u128);
        assert_eq!(huge.as_nanojoules(), u64::MAX);
        assert_eq!(energy_nj(u64::MAX, Nanos::MAX), u64::MAX);
        assert_eq!(huge + huge, Energy(u128::MAX));
        // 1 µW for 1 ns is below a nJ, but a million of them make one.
        let piece = Energy::from_power(1, Nanos(1));
        assert_eq!(piece.as_nanojoules(), 0);
        let sum: Energy = (0..1_000_000).map(|_| piece).sum();
        assert_eq!(sum.as_nanojoules(), 1);
    }

    #[test]
    fn display() {
        assert_eq!(Energy(512 * FJ_PER_NJ).to_string(), "512nJ");
        assert_eq!(Energy(12_500 * FJ_PER_NJ).to_string(), "12.500uJ");
        assert_eq!(Energy(3_000_000 * FJ_PER_NJ).to_string(), "3.000mJ");
        assert_eq!(Energy(1_250_000_000 * FJ_PER_NJ).to_string(), "1.250J");
    }
}
