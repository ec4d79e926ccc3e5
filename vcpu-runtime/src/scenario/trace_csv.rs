//! The CSV demand traces of [`Demand::Trace`](super::Demand::Trace).
//!
//! One `time_ms,demand_percent` row per line: integer milliseconds, strictly increasing, and an
//! integer percentage `0..=100`. Blank lines and lines starting with `#` are ignored, and the
//! first row may be the header `time_ms,demand_percent`.

use std::fmt;
use std::string::{String, ToString};
use std::vec::Vec;

use crate::time::Nanos;

/// A bad trace: the 1-based line (0 for the file as a whole) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceCsvError {
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for TraceCsvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            f.write_str(&self.reason)
        } else {
            write!(f, "line {}: {}", self.line, self.reason)
        }
    }
}

impl std::error::Error for TraceCsvError {}

/// Parses a demand trace into `(time, percent)` points.
pub fn parse_trace_csv(text: &str) -> Result<Vec<(Nanos, u8)>, TraceCsvError> {
    let mut points: Vec<(Nanos, u8)> = Vec::new();
    let mut header_allowed = true;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let row = raw.trim();
        if row.is_empty() || row.starts_with('#') {
            continue;
        }
        let err = |reason: String| TraceCsvError { line, reason };
        let fields: Vec<&str> = row.split(',').map(str::trim).collect();
        if core::mem::take(&mut header_allowed) && fields == ["time_ms", "demand_percent"] {
            continue;
        }
        let [time, percent] = fields[..] else {
            return Err(err(std::format!("expected 2 fields `time_ms,demand_percent`, got {}: {row:?}", fields.len())));
        };
        let ms: u64 = time
            .parse()
            .map_err(|_| err(std::format!("time_ms must be a whole number of milliseconds, got {time:?}")))?;
        if ms > u64::MAX / 1_000_000 {
            return Err(err(std::format!("time_ms is too large: {ms}")));
        }
        let percent: u8 = match percent.parse::<u64>() {
            Ok(p) if p <= 100 => p as u8,
            _ => {
                return Err(err(std::format!(
                    "demand_percent must be a whole number between 0 and 100, got {percent:?}"
                )))
            }
        };
        let time = Nanos::from_millis(ms);
        if let Some(&(previous, _)) = points.last() {
            if time <= previous {
                return Err(err(std::format!(
                    "time_ms must increase: {ms} is not after the previous row's {}",
                    previous.as_millis()
                )));
            }
        }
        points.push((time, percent));
    }
    if points.is_empty() {
        return Err(TraceCsvError { line: 0, reason: "no `time_ms,demand_percent` rows".to_string() });
    }
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_trace_csv_parses() {
        let text = "# a comment\ntime_ms,demand_percent\n0,10\n\n 5 , 100\n20,0\n";
        assert_eq!(
            parse_trace_csv(text),
            Ok(std::vec![(Nanos::ZERO, 10), (Nanos::from_millis(5), 100), (Nanos::from_millis(20), 0)])
        );
        assert_eq!(parse_trace_csv("3,50"), Ok(std::vec![(Nanos::from_millis(3), 50)]));
    }

    #[test]
    fn scenario_trace_csv_errors_name_the_line() {
        let cases = [
            ("0,10\n1,101\n", 2, "between 0 and 100"),
            ("0,10\n1\n", 2, "expected 2 fields"),
            ("0,10\n1,2,3\n", 2, "expected 2 fields"),
            ("# c\n-1,10\n", 2, "whole number of milliseconds"),
            ("0,10\n0,20\n", 2, "must increase"),
            ("0,10\ntime_ms,demand_percent\n", 2, "whole number of milliseconds"),
            ("1.5,10\n", 1, "whole number of milliseconds"),
            ("99999999999999999,1\n", 1, "too large"),
            ("# only a comment\n", 0, "no `time_ms,demand_percent` rows"),
        ];
        for (text, line, reason) in cases {
            let e = parse_trace_csv(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.reason.contains(reason), "{text:?}: {e}");
        }
    }
}
