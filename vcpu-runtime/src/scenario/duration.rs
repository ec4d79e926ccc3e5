//! Durations written with a unit: `"4ms"`, `"500us"`, `"10s"`, `"1.5ms"`, `"1h"`.

use core::fmt;

use crate::time::Nanos;

/// Why a duration string was rejected by [`parse_duration`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DurationError {
    /// Nothing but whitespace.
    Empty,
    /// Starts with a minus sign.
    Negative,
    /// Not a number followed by a unit (e.g. `"ms"`, `"1.2.3s"`, `"abc"`).
    BadNumber,
    /// A number without a unit (e.g. `"10"`).
    MissingUnit,
    /// A unit other than `ns`, `us` (or `µs`), `ms`, `s`, `min`, `h`.
    UnknownUnit,
    /// A fraction that is not a whole number of nanoseconds (e.g. `"1.5ns"`).
    TooPrecise,
    /// More than `u64::MAX` nanoseconds (about 584 years).
    Overflow,
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DurationError::Empty => "empty duration",
            DurationError::Negative => "durations cannot be negative",
            DurationError::BadNumber => "expected a number followed by a unit, like \"10ms\"",
            DurationError::MissingUnit => "missing unit: write e.g. \"10ms\" (units: ns, us, ms, s, min, h)",
            DurationError::UnknownUnit => "unknown unit (use ns, us, ms, s, min or h)",
            DurationError::TooPrecise => "not a whole number of nanoseconds",
            DurationError::Overflow => "too long (at most about 584 years)",
        })
    }
}

impl core::error::Error for DurationError {}

/// Parses a duration written as a decimal number and a unit: `ns`, `us` (or `µs`), `ms`, `s`,
/// `min` or `h`, e.g. `"4ms"`, `"500us"`, `"1.5ms"`, `"10s"`, `"1h"`. Whitespace around the
/// string and between number and unit is allowed. Never panics; the output of
/// [`Nanos`]'s `Display` (`"4.000ms"`) parses back.
pub fn parse_duration(text: &str) -> Result<Nanos, DurationError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s.starts_with('-') {
        return Err(DurationError::Negative);
    }
    let number_end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(number_end);
    let unit = unit.trim_start();
    let (int, frac) = match number.split_once('.') {
        Some((int, frac)) => (int, Some(frac)),
        None => (number, None),
    };
    // Both halves must be non-empty runs of digits ("1.5", "10"; not ".5", "5.", "1.2.3").
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || frac.is_some_and(|f| !digits(f)) {
        return Err(DurationError::BadNumber);
    }
    if unit.is_empty() {
        return Err(DurationError::MissingUnit);
    }
    let scale: u64 = match unit {
        "ns" => 1,
        "us" | "µs" | "μs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "min" => 60 * 1_000_000_000,
        "h" => 3_600 * 1_000_000_000,
        _ => return Err(DurationError::UnknownUnit),
    };
    let mut whole: u64 = 0;
    for b in int.bytes() {
        whole =
            whole.checked_mul(10).and_then(|w| w.checked_add(u64::from(b - b'0'))).ok_or(DurationError::Overflow)?;
    }
    let mut nanos = whole.checked_mul(scale).ok_or(DurationError::Overflow)?;
    if let Some(frac) = frac {
        // frac / 10^n of a unit is frac * scale / 10^n ns and must be a whole number. After
        // trailing zeros are dropped, exactness needs n <= 13 (the largest scale, 3.6e12,
        // holds 2^13 and 5^11), so the arithmetic below fits in a u128.
        let frac = frac.trim_end_matches('0');
        if frac.len() > 13 {
            return Err(DurationError::TooPrecise);
        }
        let numerator = frac.bytes().fold(0u128, |acc, b| acc * 10 + u128::from(b - b'0')) * u128::from(scale);
        let denominator = 10u128.pow(frac.len() as u32);
        if numerator % denominator != 0 {
            return Err(DurationError::TooPrecise);
        }
        let extra = u64::try_from(numerator / denominator).map_err(|_| DurationError::Overflow)?;
        nanos = nanos.checked_add(extra).ok_or(DurationError::Overflow)?;
    }
    Ok(Nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn scenario_duration_units() {
        assert_eq!(parse_duration("750ns"), Ok(Nanos(750)));
        assert_eq!(parse_duration("500us"), Ok(Nanos::from_micros(500)));
        assert_eq!(parse_duration("500µs"), Ok(Nanos::from_micros(500)));
        assert_eq!(parse_duration("4ms"), Ok(Nanos::from_millis(4)));
        assert_eq!(parse_duration("10s"), Ok(Nanos::from_secs(10)));
        assert_eq!(parse_duration("2min"), Ok(Nanos::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Nanos::from_secs(3600)));
        assert_eq!(parse_duration("24h"), Ok(Nanos::from_secs(86_400)));
        assert_eq!(parse_duration("0s"), Ok(Nanos::ZERO));
    }

    #[test]
    fn scenario_duration_fractions_and_spacing() {
        assert_eq!(parse_duration("1.5ms"), Ok(Nanos::from_micros(1_500)));
        assert_eq!(parse_duration("0.25s"), Ok(Nanos::from_millis(250)));
        assert_eq!(parse_duration("1.5h"), Ok(Nanos::from_secs(5_400)));
        assert_eq!(parse_duration("0.000000001s"), Ok(Nanos(1)));
        assert_eq!(parse_duration("1.000000000000000000000s"), Ok(Nanos::from_secs(1)));
        assert_eq!(parse_duration("  10 ms "), Ok(Nanos::from_millis(10)));
        assert_eq!(parse_duration("007ms"), Ok(Nanos::from_millis(7)));
        assert_eq!(parse_duration("1.5ns"), Err(DurationError::TooPrecise));
        assert_eq!(parse_duration("0.0000000001s"), Err(DurationError::TooPrecise));
        assert_eq!(parse_duration("0.00000000000000000000000001h"), Err(DurationError::TooPrecise));
    }

    #[test]
    fn scenario_duration_display_parses_back() {
        for n in [Nanos(750), Nanos::from_micros(12_500), Nanos::from_millis(4), Nanos::from_millis(1_250)] {
            assert_eq!(parse_duration(&n.to_string()), Ok(n), "{n}");
        }
    }

    #[test]
    fn scenario_duration_garbage() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert_eq!(parse_duration("   "), Err(DurationError::Empty));
        assert_eq!(parse_duration("10"), Err(DurationError::MissingUnit));
        assert_eq!(parse_duration("ms"), Err(DurationError::BadNumber));
        assert_eq!(parse_duration("abc"), Err(DurationError::BadNumber));
        assert_eq!(parse_duration(".5ms"), Err(DurationError::BadNumber));
        assert_eq!(parse_duration("5.ms"), Err(DurationError::BadNumber));
        assert_eq!(parse_duration("1.2.3s"), Err(DurationError::BadNumber));
        assert_eq!(parse_duration("+5ms"), Err(DurationError::BadNumber));
        assert_eq!(parse_duration("-5ms"), Err(DurationError::Negative));
        assert_eq!(parse_duration("10 parsecs"), Err(DurationError::UnknownUnit));
        assert_eq!(parse_duration("10m"), Err(DurationError::UnknownUnit));
        assert_eq!(parse_duration("10MS"), Err(DurationError::UnknownUnit));
        assert_eq!(parse_duration("1ms2us"), Err(DurationError::UnknownUnit));
        assert_eq!(parse_duration("1e3ms"), Err(DurationError::UnknownUnit));
        assert_eq!(parse_duration("٣ms"), Err(DurationError::BadNumber));
    }

    #[test]
    fn scenario_duration_overflow() {
        assert_eq!(parse_duration("18446744073709551615ns"), Ok(Nanos::MAX));
        assert_eq!(parse_duration("18446744073709551616ns"), Err(DurationError::Overflow));
        assert_eq!(parse_duration("18446744073709551615s"), Err(DurationError::Overflow));
        assert_eq!(parse_duration("99999999999999999999999999999999h"), Err(DurationError::Overflow));
        assert_eq!(parse_duration("5124095h"), Ok(Nanos(5_124_095 * 3_600_000_000_000)));
        assert_eq!(parse_duration("5124096h"), Err(DurationError::Overflow));
        // The whole part fits, adding the fraction does not.
        assert_eq!(parse_duration("18446744073.709551615s"), Ok(Nanos::MAX));
        assert_eq!(parse_duration("18446744073.709551616s"), Err(DurationError::Overflow));
        assert_eq!(parse_duration("5124095.9999999999999h"), Err(DurationError::TooPrecise));
        assert_eq!(parse_duration("5124095.99h"), Err(DurationError::Overflow));
    }

    proptest::proptest! {
        #[test]
        fn scenario_duration_never_panics(s in "\\PC{0,40}") {
            let _ = parse_duration(&s);
        }

        #[test]
        fn scenario_duration_numbers_roundtrip(n in 0u64..=u64::MAX / 1_000_000_000) {
            proptest::prop_assert_eq!(parse_duration(&alloc::format!("{n}s")), Ok(Nanos::from_secs(n)));
            proptest::prop_assert_eq!(parse_duration(&alloc::format!("{n}ns")), Ok(Nanos(n)));
        }
    }
}
