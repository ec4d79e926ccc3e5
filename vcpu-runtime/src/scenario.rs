//! The scenario model: what a run (on QEMU) or a simulation (on the host) is made of.
//!
//! A scenario names the board (number of cores, energy profile), the scheduling and power
//! policies, and the guests: their vCPUs, memory, weight, optional real-time reservation,
//! optional core affinity, what they run ([`Payload`]) and, for the simulator, their synthetic
//! CPU demand ([`Demand`]). Scenarios are written as TOML files in `scenarios/`; the format is
//! documented in `docs/scenario-format.md`.
//!
//! The model is plain `no_std` data. [`Scenario::validate`] checks every rule that a scenario
//! must satisfy, so code that builds a scenario by hand gets the same checks as a file. With the
//! `std` feature, `load` and `parse` read a TOML file, and a bad scenario fails with a
//! [`ScenarioError`] that names the file, the field and the reason:
//!
//! ```text
//! scenarios/x.toml:14:1: guests[1].weight: must be between 1 and 65535, got 0
//! ```

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::ids::{CoreMask, VmId};
use crate::time::Nanos;
/// A CPU reservation (the runtime's type), applied to each vCPU of a guest.
pub use crate::vcpu::Reservation;

mod duration;
#[cfg(feature = "std")]
mod parser;
#[cfg(feature = "std")]
mod trace_csv;

#[cfg(all(test, feature = "std"))]
mod tests;

pub use duration::{parse_duration, DurationError};
#[cfg(feature = "std")]
pub use parser::{line_col, load, parse};
#[cfg(feature = "std")]
pub use trace_csv::{parse_trace_csv, TraceCsvError};

/// A whole scenario: one board, its policies and its guests, run for `duration`.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// Short name used in reports (defaults to the file's stem when parsed from a file).
    pub name: String,
    /// Free text (may be empty).
    pub description: String,
    pub board: Board,
    pub policy: Policy,
    /// The guests, in [`VmId`] order: `guests[i]` is `VmId(i)`.
    pub guests: Vec<Guest>,
    /// How long to run or simulate.
    pub duration: Nanos,
}

/// The physical machine.
#[derive(Clone, Debug, PartialEq)]
pub struct Board {
    /// Number of physical cores, `1..=64`, numbered `0..cores`.
    pub cores: u16,
    /// Name of the energy profile (resolved by the `power` crate), e.g. `"phone-dual"`.
    pub energy_profile: String,
}

/// Scheduling and power-management knobs.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Proportional-share timeslice (default 4 ms).
    pub timeslice: Nanos,
    /// Shortest slice a vCPU is given, however many compete (default 500 us, `<= timeslice`).
    pub min_granularity: Nanos,
    /// Admission bound for reserved (real-time) utilization per core, in percent (default 90,
    /// `1..=100`).
    pub rt_utilization_bound_percent: u32,
    /// The consolidation governor's policy (default [`GovernorPolicy::Spread`]).
    pub governor: GovernorPolicy,
    /// How often the governor runs (default 10 ms).
    pub governor_period: Nanos,
    /// Shortest time between two migrations of the same vCPU (default 1 ms; 0 allowed).
    pub min_migration_interval: Nanos,
    /// Half-life of the utilization average (default 32 ms).
    pub util_half_life: Nanos,
}

/// What the consolidation governor optimizes for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum GovernorPolicy {
    /// Keep all cores on and spread vCPUs across them (the baseline).
    #[default]
    Spread,
    /// Turn cores off when utilization allows, on again when it rises.
    Hotplug,
    /// Run at full speed to finish work early, then power cores down.
    RaceToIdle,
    /// Pack vCPUs onto as few cores as the energy model says is cheapest.
    Consolidate,
}

/// One guest (VM).
#[derive(Clone, Debug, PartialEq)]
pub struct Guest {
    /// Unique, `1..=32` characters of `A-Z a-z 0-9 - _`.
    pub name: String,
    /// Number of vCPUs, `1..=64` (independent of the number of cores).
    pub vcpus: u16,
    /// Guest RAM in MiB, `1..=65536` (default 128).
    pub memory_mib: u32,
    /// Proportional-share weight, `1..=65535` (default 256).
    pub weight: u32,
    /// Real-time reservation, applied to each vCPU of the guest.
    pub reservation: Option<Reservation>,
    /// Cores the guest's vCPUs may run on (`None`: any core). Never empty, only existing cores.
    pub affinity: Option<CoreMask>,
    /// What the guest runs on real hardware or QEMU.
    pub payload: Payload,
    /// Synthetic demand for the simulator (required when `payload` is [`Payload::None`]).
    pub demand: Option<Demand>,
}

/// What a guest runs. Paths are resolved against the scenario file's directory when parsed.
#[derive(Clone, Debug, PartialEq)]
pub enum Payload {
    /// One of the project's test guest images.
    TestImage { image: String },
    /// A Linux kernel `Image`, an optional initramfs and a command line.
    Linux { kernel: String, initrd: Option<String>, cmdline: String },
    /// Nothing to boot: a simulator-only guest (it must then have a [`Demand`]).
    None,
}

/// Synthetic CPU demand for the simulator. Each vCPU of the guest gets its own generator of
/// this kind; generators of different vCPUs must derive distinct random streams from `seed`
/// (e.g. by mixing in the vCPU's id).
#[derive(Clone, Debug, PartialEq)]
pub enum Demand {
    /// A job of `work` CPU time is released every `period`, the first at `offset`; each job
    /// should finish within `deadline` of its release (`0 < work <= deadline <= period`).
    Periodic { period: Nanos, work: Nanos, deadline: Nanos, offset: Nanos },
    /// Bursts of CPU work with exponentially distributed lengths (mean `burst_mean`),
    /// separated by exponentially distributed think times (mean `think_mean`).
    Interactive { burst_mean: Nanos, think_mean: Nanos, seed: u64 },
    /// Always runnable.
    Batch,
    /// Demand read from a CSV file of `time_ms,demand_percent` rows: from each row's time to
    /// the next row's, the vCPU wants that percentage of a core; the last row holds until the
    /// end, and before the first row demand is 0. Times strictly increase, percentages are
    /// `0..=100`.
    Trace { file: String, points: Vec<(Nanos, u8)> },
    /// A generated 24 h phone day: mostly idle with periodic background syncs, plus
    /// `active_minutes` (`0..=1440`) of active use in phases whose demand changes at 1 ms
    /// granularity.
    PhoneDay { seed: u64, active_minutes: u32 },
}

/// Why a scenario is bad: the file, where in it, which field and why.
///
/// Displays as `FILE[:LINE:COLUMN]: FIELD: REASON`, e.g.
/// `scenarios/x.toml:14:1: guests[1].weight: must be between 1 and 65535, got 0`. Parts that
/// are unknown are left out (an in-memory scenario has no file, an I/O error no field).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScenarioError {
    /// The scenario file as given to `load` or `parse` (with `std`); empty for [`Scenario::validate`].
    pub file: String,
    /// 1-based line and column (in characters) in `file`, when known.
    pub location: Option<(u32, u32)>,
    /// Dotted path of the field, e.g. `guests[1].weight` or `policy.timeslice`; empty when the
    /// error is about the file as a whole.
    pub field: String,
    /// What is wrong, e.g. `must be between 1 and 65535, got 0`.
    pub reason: String,
}

impl ScenarioError {
    /// An error about `field` (a dotted path), not yet tied to a file.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> ScenarioError {
        ScenarioError { file: String::new(), location: None, field: field.into(), reason: reason.into() }
    }
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if !self.file.is_empty() {
            f.write_str(&self.file)?;
            if let Some((line, column)) = self.location {
                write!(f, ":{line}:{column}")?;
            }
            sep = ": ";
        }
        if !self.field.is_empty() {
            write!(f, "{sep}{}", self.field)?;
            sep = ": ";
        }
        write!(f, "{sep}{}", self.reason)
    }
}

impl core::error::Error for ScenarioError {}

impl Board {
    pub const MAX_CORES: u16 = CoreMask::MAX_CORES as u16;

    /// All cores of the board.
    pub const fn all_cores(&self) -> CoreMask {
        CoreMask::first(self.cores as usize)
    }
}

impl Policy {
    pub const DEFAULT_TIMESLICE: Nanos = Nanos::from_millis(4);
    pub const DEFAULT_MIN_GRANULARITY: Nanos = Nanos::from_micros(500);
    pub const DEFAULT_RT_UTILIZATION_BOUND_PERCENT: u32 = 90;
    pub const DEFAULT_GOVERNOR_PERIOD: Nanos = Nanos::from_millis(10);
    pub const DEFAULT_MIN_MIGRATION_INTERVAL: Nanos = Nanos::from_millis(1);
    pub const DEFAULT_UTIL_HALF_LIFE: Nanos = Nanos::from_millis(32);
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            timeslice: Policy::DEFAULT_TIMESLICE,
            min_granularity: Policy::DEFAULT_MIN_GRANULARITY,
            rt_utilization_bound_percent: Policy::DEFAULT_RT_UTILIZATION_BOUND_PERCENT,
            governor: GovernorPolicy::default(),
            governor_period: Policy::DEFAULT_GOVERNOR_PERIOD,
            min_migration_interval: Policy::DEFAULT_MIN_MIGRATION_INTERVAL,
            util_half_life: Policy::DEFAULT_UTIL_HALF_LIFE,
        }
    }
}

impl GovernorPolicy {
    pub const ALL: [GovernorPolicy; 4] =
        [GovernorPolicy::Spread, GovernorPolicy::Hotplug, GovernorPolicy::RaceToIdle, GovernorPolicy::Consolidate];

    /// The name used in scenario files and on command lines: `spread`, `hotplug`,
    /// `race-to-idle`, `consolidate`.
    pub const fn name(self) -> &'static str {
        match self {
            GovernorPolicy::Spread => "spread",
            GovernorPolicy::Hotplug => "hotplug",
            GovernorPolicy::RaceToIdle => "race-to-idle",
            GovernorPolicy::Consolidate => "consolidate",
        }
    }

    /// The policy called `name` (see [`GovernorPolicy::name`]).
    pub fn from_name(name: &str) -> Option<GovernorPolicy> {
        GovernorPolicy::ALL.into_iter().find(|p| p.name() == name)
    }
}

impl fmt::Display for GovernorPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Guest {
    pub const MAX_VCPUS: u16 = 64;
    pub const DEFAULT_WEIGHT: u32 = 256;
    pub const MAX_WEIGHT: u32 = 65535;
    pub const DEFAULT_MEMORY_MIB: u32 = 128;
    pub const MAX_MEMORY_MIB: u32 = 65536;
    pub const MAX_NAME_LEN: usize = 32;

    /// The cores this guest's vCPUs may run on, on a board with `board.cores` cores.
    pub const fn allowed_cores(&self, board: &Board) -> CoreMask {
        match self.affinity {
            Some(mask) => mask.and(board.all_cores()),
            None => board.all_cores(),
        }
    }
}

impl Demand {
    /// Minutes in the generated phone day.
    pub const PHONE_DAY_MINUTES: u32 = 24 * 60;
    pub const DEFAULT_ACTIVE_MINUTES: u32 = 240;

    /// The name used for `kind` in scenario files.
    pub const fn kind_name(&self) -> &'static str {
        match self {
            Demand::Periodic { .. } => "periodic",
            Demand::Interactive { .. } => "interactive",
            Demand::Batch => "batch",
            Demand::Trace { .. } => "trace",
            Demand::PhoneDay { .. } => "phone-day",
        }
    }
}

impl Scenario {
    /// Total number of vCPUs over all guests ([`VcpuId`](crate::VcpuId)s are numbered densely
    /// across guests, in guest order).
    pub fn total_vcpus(&self) -> usize {
        self.guests.iter().map(|g| g.vcpus as usize).sum()
    }

    /// The guest called `name` and its id.
    pub fn guest(&self, name: &str) -> Option<(VmId, &Guest)> {
        self.guests.iter().enumerate().find(|(_, g)| g.name == name).map(|(i, g)| (VmId(i as u16), g))
    }

    /// Checks every rule of the scenario format (ranges, cross-field rules). The error's
    /// `field` uses the same dotted paths as the TOML file; its `file` is empty.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        if self.name.is_empty() {
            return Err(ScenarioError::new("name", "must not be empty"));
        }
        if self.duration == Nanos::ZERO {
            return Err(ScenarioError::new("duration", "must be longer than 0"));
        }
        check_range("board.cores", self.board.cores.into(), 1, Board::MAX_CORES.into())?;
        if self.board.energy_profile.is_empty() {
            return Err(ScenarioError::new("board.energy_profile", "must not be empty"));
        }
        self.policy.validate()?;
        if self.guests.is_empty() {
            return Err(ScenarioError::new("guests", "at least one guest is required"));
        }
        if self.guests.len() > usize::from(u16::MAX) {
            return Err(ScenarioError::new("guests", format!("at most {} guests", u16::MAX)));
        }
        for (i, guest) in self.guests.iter().enumerate() {
            let at = format!("guests[{i}]");
            guest.validate(&at, &self.board)?;
            if let Some(j) = self.guests[..i].iter().position(|g| g.name == guest.name) {
                return Err(ScenarioError::new(
                    format!("{at}.name"),
                    format!("duplicate guest name \"{}\" (also guests[{j}])", guest.name),
                ));
            }
        }
        Ok(())
    }
}

impl Policy {
    fn validate(&self) -> Result<(), ScenarioError> {
        if self.timeslice == Nanos::ZERO {
            return Err(ScenarioError::new("policy.timeslice", "must be longer than 0"));
        }
        if self.min_granularity == Nanos::ZERO || self.min_granularity > self.timeslice {
            return Err(ScenarioError::new(
                "policy.min_granularity",
                format!(
                    "must be longer than 0 and at most policy.timeslice ({}), got {}",
                    self.timeslice, self.min_granularity
                ),
            ));
        }
        check_range("policy.rt_utilization_bound_percent", self.rt_utilization_bound_percent.into(), 1, 100)?;
        if self.governor_period == Nanos::ZERO {
            return Err(ScenarioError::new("policy.governor_period", "must be longer than 0"));
        }
        if self.util_half_life == Nanos::ZERO {
            return Err(ScenarioError::new("policy.util_half_life", "must be longer than 0"));
        }
        Ok(())
    }
}

impl Guest {
    fn validate(&self, at: &str, board: &Board) -> Result<(), ScenarioError> {
        check_name(&format!("{at}.name"), &self.name)?;
        check_range(&format!("{at}.vcpus"), self.vcpus.into(), 1, Guest::MAX_VCPUS.into())?;
        check_range(&format!("{at}.memory_mib"), self.memory_mib.into(), 1, Guest::MAX_MEMORY_MIB.into())?;
        check_range(&format!("{at}.weight"), self.weight.into(), 1, Guest::MAX_WEIGHT.into())?;
        if let Some(r) = self.reservation {
            if r.period < Reservation::MIN_PERIOD {
                return Err(ScenarioError::new(
                    format!("{at}.reservation.period"),
                    format!("must be at least {}, got {}", Reservation::MIN_PERIOD, r.period),
                ));
            }
            if r.budget == Nanos::ZERO || r.budget > r.period {
                return Err(ScenarioError::new(
                    format!("{at}.reservation.budget"),
                    format!("must be longer than 0 and at most the period ({}), got {}", r.period, r.budget),
                ));
            }
        }
        if let Some(mask) = self.affinity {
            if mask.is_empty() {
                return Err(ScenarioError::new(format!("{at}.affinity"), "must name at least one core"));
            }
            if let Some(core) = mask.iter().find(|c| !board.all_cores().contains(*c)) {
                return Err(ScenarioError::new(
                    format!("{at}.affinity"),
                    missing_core_number(core.0.into(), board.cores),
                ));
            }
        }
        match &self.payload {
            Payload::TestImage { image } if image.is_empty() => {
                return Err(ScenarioError::new(format!("{at}.image"), "must not be empty"));
            }
            Payload::Linux { kernel, .. } if kernel.is_empty() => {
                return Err(ScenarioError::new(format!("{at}.kernel"), "must not be empty"));
            }
            Payload::Linux { initrd: Some(initrd), .. } if initrd.is_empty() => {
                return Err(ScenarioError::new(format!("{at}.initrd"), "must not be empty"));
            }
            Payload::None if self.demand.is_none() => {
                return Err(ScenarioError::new(
                    format!("{at}.demand"),
                    "required when the guest has no payload (kind = \"none\"): the simulator needs to know what it runs",
                ));
            }
            _ => {}
        }
        if let Some(demand) = &self.demand {
            demand.validate(&format!("{at}.demand"))?;
        }
        Ok(())
    }
}

impl Demand {
    fn validate(&self, at: &str) -> Result<(), ScenarioError> {
        let positive = |field: &str, value: Nanos| {
            if value == Nanos::ZERO {
                Err(ScenarioError::new(format!("{at}.{field}"), "must be longer than 0"))
            } else {
                Ok(())
            }
        };
        match self {
            Demand::Periodic { period, work, deadline, offset: _ } => {
                positive("period", *period)?;
                positive("work", *work)?;
                if deadline > period {
                    return Err(ScenarioError::new(
                        format!("{at}.deadline"),
                        format!("must be at most the period ({period}), got {deadline}"),
                    ));
                }
                if work > deadline {
                    return Err(ScenarioError::new(
                        format!("{at}.work"),
                        format!("must be at most the deadline ({deadline}), got {work}"),
                    ));
                }
            }
            Demand::Interactive { burst_mean, think_mean, seed: _ } => {
                positive("burst_mean", *burst_mean)?;
                positive("think_mean", *think_mean)?;
            }
            Demand::Batch => {}
            Demand::Trace { file: _, points } => {
                if points.is_empty() {
                    return Err(ScenarioError::new(format!("{at}.file"), "the trace has no points"));
                }
                for (i, w) in points.windows(2).enumerate() {
                    if w[1].0 <= w[0].0 {
                        return Err(ScenarioError::new(
                            format!("{at}.file"),
                            format!(
                                "trace point {}: time {} is not after the previous point's {}",
                                i + 1,
                                w[1].0,
                                w[0].0
                            ),
                        ));
                    }
                }
                if let Some((i, p)) = points.iter().enumerate().find(|(_, p)| p.1 > 100) {
                    return Err(ScenarioError::new(
                        format!("{at}.file"),
                        format!("trace point {i}: demand must be between 0 and 100 percent, got {}", p.1),
                    ));
                }
            }
            Demand::PhoneDay { seed: _, active_minutes } => {
                check_range(
                    &format!("{at}.active_minutes"),
                    (*active_minutes).into(),
                    0,
                    Demand::PHONE_DAY_MINUTES.into(),
                )?;
            }
        }
        Ok(())
    }
}

/// `value` must be in `lo..=hi`.
fn check_range(field: &str, value: i64, lo: i64, hi: i64) -> Result<(), ScenarioError> {
    if (lo..=hi).contains(&value) {
        Ok(())
    } else {
        Err(ScenarioError::new(field, format!("must be between {lo} and {hi}, got {value}")))
    }
}

fn check_name(field: &str, name: &str) -> Result<(), ScenarioError> {
    if name.is_empty() || name.len() > Guest::MAX_NAME_LEN {
        return Err(ScenarioError::new(
            field,
            format!("must be 1 to {} characters long, got {}", Guest::MAX_NAME_LEN, name.len()),
        ));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
        return Err(ScenarioError::new(
            field,
            format!("may only contain letters, digits, '-' and '_', found {c:?} in \"{name}\""),
        ));
    }
    Ok(())
}

fn missing_core_number(core: i64, cores: u16) -> String {
    format!(
        "core {core} does not exist: the board has {cores} core{} (0..={})",
        if cores == 1 { "" } else { "s" },
        cores.saturating_sub(1)
    )
}
