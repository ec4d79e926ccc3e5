//! Reading a scenario from TOML (host only, feature `std`).
//!
//! Three steps: the text is parsed as TOML (syntax errors: file, line, column); it is
//! deserialized into raw structs that mirror the file (`deny_unknown_fields`; durations parsed
//! with [`parse_duration`]); the raw structs are converted into the model, which is then
//! checked by [`Scenario::validate`]. Every error is tied to the dotted path of the field it is
//! about, and to its line and column when the field is in the file.

use core::ops::Range;
use std::borrow::ToOwned;
use std::fmt;
use std::format;
use std::path::Path;
use std::string::{String, ToString};
use std::vec::Vec;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::{
    check_range, missing_core_number, parse_duration, parse_trace_csv, Board, Demand, GovernorPolicy, Guest, Payload,
    Policy, Reservation, Scenario, ScenarioError,
};
use crate::ids::{CoreId, CoreMask};
use crate::time::Nanos;

/// Reads and parses the scenario file at `path` (see [`parse`]).
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
        file: path.display().to_string(),
        location: None,
        field: String::new(),
        reason: format!("cannot read: {e}"),
    })?;
    parse(&text, path)
}

/// Parses and validates a scenario. `origin` is the file the text came from: errors name it,
/// its stem is the default scenario name, and relative paths in the scenario (kernel, initrd,
/// image, trace files) are resolved against its directory and stored resolved. Trace files are
/// read and parsed.
pub fn parse(text: &str, origin: &Path) -> Result<Scenario, ScenarioError> {
    let file = origin.display().to_string();
    if let Err(e) = toml::from_str::<toml::Table>(text) {
        return Err(ScenarioError {
            file,
            location: e.span().map(|s| line_col(text, s.start)),
            field: String::new(),
            reason: one_line(e.message()),
        });
    }
    let spans = SpanIndex::new(text);
    let raw: RawScenario = toml::from_str(text).map_err(|e| {
        let (field, offset) = match e.span() {
            Some(span) => spans.field_at(&span, e.message()),
            None => (String::new(), None),
        };
        ScenarioError {
            file: file.clone(),
            location: offset.map(|o| line_col(text, o)),
            field,
            reason: one_line(e.message()),
        }
    })?;
    let dir = origin.parent().unwrap_or(Path::new(""));
    let default_name = origin.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    raw.convert(dir, default_name).and_then(|scenario| scenario.validate().map(|()| scenario)).map_err(|mut e| {
        e.location = spans.location_of(&e.field).map(|o| line_col(text, o));
        e.file = file;
        e
    })
}

// ---------------------------------------------------------------------------------------------
// Raw structs: the file as written.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: Option<String>,
    description: Option<String>,
    duration: RawDuration,
    board: RawBoard,
    policy: Option<RawPolicy>,
    guests: Option<Vec<RawGuest>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBoard {
    cores: RawInt,
    energy_profile: String,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    timeslice: Option<RawDuration>,
    min_granularity: Option<RawDuration>,
    rt_utilization_bound_percent: Option<RawInt>,
    governor: Option<String>,
    governor_period: Option<RawDuration>,
    min_migration_interval: Option<RawDuration>,
    util_half_life: Option<RawDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuest {
    name: String,
    vcpus: Option<RawInt>,
    memory_mib: Option<RawInt>,
    weight: Option<RawInt>,
    reservation: Option<RawReservation>,
    affinity: Option<Vec<RawInt>>,
    kind: Option<RawPayloadKind>,
    image: Option<String>,
    kernel: Option<String>,
    initrd: Option<String>,
    cmdline: Option<String>,
    demand: Option<RawDemand>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReservation {
    budget: RawDuration,
    period: RawDuration,
}

#[derive(Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum RawPayloadKind {
    TestImage,
    Linux,
    None,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDemand {
    kind: RawDemandKind,
    period: Option<RawDuration>,
    work: Option<RawDuration>,
    deadline: Option<RawDuration>,
    offset: Option<RawDuration>,
    burst_mean: Option<RawDuration>,
    think_mean: Option<RawDuration>,
    seed: Option<RawInt>,
    file: Option<String>,
    active_minutes: Option<RawInt>,
}

#[derive(Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum RawDemandKind {
    Periodic,
    Interactive,
    Batch,
    Trace,
    PhoneDay,
}

/// A TOML integer, range-checked later with the field's own limits.
#[derive(Clone, Copy)]
struct RawInt(i64);

impl<'de> Deserialize<'de> for RawInt {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RawInt, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawInt;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawInt, E> {
                Ok(RawInt(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawInt, E> {
                i64::try_from(v).map(RawInt).map_err(|_| E::custom(format!("integer {v} is too large")))
            }
        }
        deserializer.deserialize_i64(V)
    }
}

/// A duration string with a unit ("4ms"), parsed while deserializing so that a bad one is
/// reported at its place in the file.
#[derive(Clone, Copy)]
struct RawDuration(Nanos);

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RawDuration, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string with a unit, like \"10ms\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawDuration, E> {
                parse_duration(v).map(RawDuration).map_err(|e| E::custom(format!("invalid duration {v:?}: {e}")))
            }
        }
        deserializer.deserialize_str(V)
    }
}

// ---------------------------------------------------------------------------------------------
// Raw structs to the model.

fn int_in(field: &str, value: RawInt, lo: i64, hi: i64) -> Result<i64, ScenarioError> {
    check_range(field, value.0, lo, hi).map(|()| value.0)
}

/// `path` relative to `dir`, as a string.
fn resolve(dir: &Path, path: &str, field: &str) -> Result<String, ScenarioError> {
    if path.is_empty() {
        return Err(ScenarioError::new(field, "must not be empty"));
    }
    let joined = dir.join(path);
    joined
        .to_str()
        .map(ToOwned::to_owned)
        .ok_or_else(|| ScenarioError::new(field, format!("{} is not valid UTF-8", joined.display())))
}

impl RawScenario {
    fn convert(self, dir: &Path, default_name: String) -> Result<Scenario, ScenarioError> {
        let board = Board {
            cores: int_in("board.cores", self.board.cores, 1, Board::MAX_CORES.into())? as u16,
            energy_profile: self.board.energy_profile,
        };
        let policy = self.policy.unwrap_or_default().convert()?;
        let guests = self
            .guests
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, g)| g.convert(&format!("guests[{i}]"), dir, board.cores))
            .collect::<Result<Vec<Guest>, ScenarioError>>()?;
        Ok(Scenario {
            name: self.name.unwrap_or(default_name),
            description: self.description.unwrap_or_default(),
            board,
            policy,
            guests,
            duration: self.duration.0,
        })
    }
}

impl RawPolicy {
    fn convert(self) -> Result<Policy, ScenarioError> {
        let d = Policy::default();
        let governor = match self.governor {
            None => d.governor,
            Some(name) => GovernorPolicy::from_name(&name).ok_or_else(|| {
                let names: Vec<&str> = GovernorPolicy::ALL.iter().map(|p| p.name()).collect();
                ScenarioError::new(
                    "policy.governor",
                    format!("unknown governor {name:?}, expected one of {}", names.join(", ")),
                )
            })?,
        };
        let rt_bound = match self.rt_utilization_bound_percent {
            None => d.rt_utilization_bound_percent,
            Some(v) => int_in("policy.rt_utilization_bound_percent", v, 1, 100)? as u32,
        };
        Ok(Policy {
            timeslice: self.timeslice.map_or(d.timeslice, |v| v.0),
            min_granularity: self.min_granularity.map_or(d.min_granularity, |v| v.0),
            rt_utilization_bound_percent: rt_bound,
            governor,
            governor_period: self.governor_period.map_or(d.governor_period, |v| v.0),
            min_migration_interval: self.min_migration_interval.map_or(d.min_migration_interval, |v| v.0),
            util_half_life: self.util_half_life.map_or(d.util_half_life, |v| v.0),
        })
    }
}

impl RawPayloadKind {
    fn name(self) -> &'static str {
        match self {
            RawPayloadKind::TestImage => "test-image",
            RawPayloadKind::Linux => "linux",
            RawPayloadKind::None => "none",
        }
    }
}

impl RawGuest {
    fn convert(self, at: &str, dir: &Path, cores: u16) -> Result<Guest, ScenarioError> {
        let field = |name: &str| format!("{at}.{name}");
        let vcpus = match self.vcpus {
            None => 1,
            Some(v) => int_in(&field("vcpus"), v, 1, Guest::MAX_VCPUS.into())? as u16,
        };
        let memory_mib = match self.memory_mib {
            None => Guest::DEFAULT_MEMORY_MIB,
            Some(v) => int_in(&field("memory_mib"), v, 1, Guest::MAX_MEMORY_MIB.into())? as u32,
        };
        let weight = match self.weight {
            None => Guest::DEFAULT_WEIGHT,
            Some(v) => int_in(&field("weight"), v, 1, Guest::MAX_WEIGHT.into())? as u32,
        };
        let reservation = self.reservation.map(|r| Reservation { budget: r.budget.0, period: r.period.0 });
        let affinity = match self.affinity {
            None => None,
            Some(list) => {
                if list.is_empty() {
                    return Err(ScenarioError::new(field("affinity"), "must name at least one core"));
                }
                let mut mask = CoreMask::NONE;
                for (j, core) in list.iter().enumerate() {
                    let at_j = format!("{at}.affinity[{j}]");
                    if !(0..i64::from(cores)).contains(&core.0) {
                        return Err(ScenarioError::new(at_j, missing_core_number(core.0, cores)));
                    }
                    let core = CoreId(core.0 as u16);
                    if mask.contains(core) {
                        return Err(ScenarioError::new(at_j, format!("core {core} is listed twice")));
                    }
                    mask = mask.with(core);
                }
                Some(mask)
            }
        };

        let kind = self.kind.unwrap_or(RawPayloadKind::None);
        let only_for = |name: &str, present: bool, wanted: RawPayloadKind| {
            if present && kind != wanted {
                let default = if self.kind.is_none() { " (the default)" } else { "" };
                Err(ScenarioError::new(
                    field(name),
                    format!(
                        "only valid with kind = \"{}\", but this guest's kind is \"{}\"{default}",
                        wanted.name(),
                        kind.name()
                    ),
                ))
            } else {
                Ok(())
            }
        };
        only_for("image", self.image.is_some(), RawPayloadKind::TestImage)?;
        only_for("kernel", self.kernel.is_some(), RawPayloadKind::Linux)?;
        only_for("initrd", self.initrd.is_some(), RawPayloadKind::Linux)?;
        only_for("cmdline", self.cmdline.is_some(), RawPayloadKind::Linux)?;
        let payload = match kind {
            RawPayloadKind::TestImage => {
                let image = self.image.ok_or_else(|| {
                    ScenarioError::new(
                        field("image"),
                        "required for kind = \"test-image\": the test guest image to boot",
                    )
                })?;
                Payload::TestImage { image: resolve(dir, &image, &field("image"))? }
            }
            RawPayloadKind::Linux => {
                let kernel = self.kernel.ok_or_else(|| {
                    ScenarioError::new(field("kernel"), "required for kind = \"linux\": the path of the kernel Image")
                })?;
                Payload::Linux {
                    kernel: resolve(dir, &kernel, &field("kernel"))?,
                    initrd: self.initrd.map(|p| resolve(dir, &p, &field("initrd"))).transpose()?,
                    cmdline: self.cmdline.unwrap_or_default(),
                }
            }
            RawPayloadKind::None => Payload::None,
        };
        let demand = self.demand.map(|d| d.convert(&field("demand"), dir)).transpose()?;
        Ok(Guest { name: self.name, vcpus, memory_mib, weight, reservation, affinity, payload, demand })
    }
}

impl RawDemandKind {
    fn name(self) -> &'static str {
        match self {
            RawDemandKind::Periodic => "periodic",
            RawDemandKind::Interactive => "interactive",
            RawDemandKind::Batch => "batch",
            RawDemandKind::Trace => "trace",
            RawDemandKind::PhoneDay => "phone-day",
        }
    }

    /// The fields this kind takes besides `kind`.
    fn fields(self) -> &'static [&'static str] {
        match self {
            RawDemandKind::Periodic => &["period", "work", "deadline", "offset"],
            RawDemandKind::Interactive => &["burst_mean", "think_mean", "seed"],
            RawDemandKind::Batch => &[],
            RawDemandKind::Trace => &["file"],
            RawDemandKind::PhoneDay => &["seed", "active_minutes"],
        }
    }
}

impl RawDemand {
    fn convert(self, at: &str, dir: &Path) -> Result<Demand, ScenarioError> {
        let kind = self.kind;
        let field = |name: &str| format!("{at}.{name}");
        let present = [
            ("period", self.period.is_some()),
            ("work", self.work.is_some()),
            ("deadline", self.deadline.is_some()),
            ("offset", self.offset.is_some()),
            ("burst_mean", self.burst_mean.is_some()),
            ("think_mean", self.think_mean.is_some()),
            ("seed", self.seed.is_some()),
            ("file", self.file.is_some()),
            ("active_minutes", self.active_minutes.is_some()),
        ];
        if let Some((name, _)) = present.iter().find(|(name, present)| *present && !kind.fields().contains(name)) {
            let takes = match kind.fields() {
                [] => "no other fields".to_string(),
                fields => fields.join(", "),
            };
            return Err(ScenarioError::new(
                field(name),
                format!("not used by kind = \"{}\" (it takes {takes})", kind.name()),
            ));
        }
        let required = |name: &str, value: Option<RawDuration>| {
            value
                .map(|v| v.0)
                .ok_or_else(|| ScenarioError::new(field(name), format!("required for kind = \"{}\"", kind.name())))
        };
        let seed = match self.seed {
            None => 0,
            Some(v) => int_in(&field("seed"), v, 0, i64::MAX)? as u64,
        };
        Ok(match kind {
            RawDemandKind::Periodic => {
                let period = required("period", self.period)?;
                Demand::Periodic {
                    period,
                    work: required("work", self.work)?,
                    deadline: self.deadline.map_or(period, |v| v.0),
                    offset: self.offset.map_or(Nanos::ZERO, |v| v.0),
                }
            }
            RawDemandKind::Interactive => Demand::Interactive {
                burst_mean: required("burst_mean", self.burst_mean)?,
                think_mean: required("think_mean", self.think_mean)?,
                seed,
            },
            RawDemandKind::Batch => Demand::Batch,
            RawDemandKind::Trace => {
                let file =
                    self.file.ok_or_else(|| ScenarioError::new(field("file"), "required for kind = \"trace\""))?;
                let file = resolve(dir, &file, &field("file"))?;
                let text = std::fs::read_to_string(&file)
                    .map_err(|e| ScenarioError::new(field("file"), format!("{file}: cannot read: {e}")))?;
                let points = parse_trace_csv(&text).map_err(|e| {
                    let place = if e.line == 0 { file.clone() } else { format!("{file}:{}", e.line) };
                    ScenarioError::new(field("file"), format!("{place}: {}", e.reason))
                })?;
                Demand::Trace { file, points }
            }
            RawDemandKind::PhoneDay => Demand::PhoneDay {
                seed,
                active_minutes: match self.active_minutes {
                    None => Demand::DEFAULT_ACTIVE_MINUTES,
                    Some(v) => int_in(&field("active_minutes"), v, 0, Demand::PHONE_DAY_MINUTES.into())? as u32,
                },
            },
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Where things are in the text: dotted field paths and their spans.

/// 1-based line and column (in characters) of byte `offset` in `text` (the TOML readers of
/// scenarios and of energy models report errors with it).
pub fn line_col(text: &str, offset: usize) -> (u32, u32) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line.try_into().unwrap_or(u32::MAX), column.try_into().unwrap_or(u32::MAX))
}

/// TOML error messages may span lines; an error is reported on one.
fn one_line(message: &str) -> String {
    message.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}

/// The span of every key, value and array element in the document, with its dotted path.
struct SpanIndex {
    entries: Vec<SpanEntry>,
}

struct SpanEntry {
    path: String,
    span: Range<usize>,
    is_key: bool,
}

impl SpanIndex {
    /// An empty index if the text cannot be walked (it then has a value, like a datetime, that
    /// no scenario field takes; deserialization reports it without a field path).
    fn new(text: &str) -> SpanIndex {
        let mut index = SpanIndex { entries: Vec::new() };
        if let Ok(Node::Table(entries)) = toml::from_str::<Node>(text) {
            index.add_table(String::new(), entries);
        }
        index
    }

    fn add_table(&mut self, prefix: String, entries: Vec<(toml::Spanned<String>, toml::Spanned<Node>)>) {
        for (key, value) in entries {
            let path = if prefix.is_empty() { key.get_ref().clone() } else { format!("{prefix}.{}", key.get_ref()) };
            self.entries.push(SpanEntry { path: path.clone(), span: key.span(), is_key: true });
            self.add_value(path, value);
        }
    }

    fn add_value(&mut self, path: String, value: toml::Spanned<Node>) {
        self.entries.push(SpanEntry { path: path.clone(), span: value.span(), is_key: false });
        match value.into_inner() {
            Node::Table(entries) => self.add_table(path, entries),
            Node::Array(elements) => {
                for (i, element) in elements.into_iter().enumerate() {
                    self.add_value(format!("{path}[{i}]"), element);
                }
            }
            Node::Scalar => {}
        }
    }

    /// The field a deserialization error at `span` is about, and the offset to report. A
    /// value or key whose span is exactly the error's is it; a missing field is reported on
    /// its table (the top level if none matches); otherwise the innermost span containing the
    /// error's start.
    fn field_at(&self, span: &Range<usize>, message: &str) -> (String, Option<usize>) {
        if let Some(e) = self.entries.iter().rev().find(|e| e.span == *span) {
            return (e.path.clone(), Some(span.start));
        }
        if message.starts_with("missing field") {
            return (String::new(), None);
        }
        let containing = self.entries.iter().rev().filter(|e| e.span.contains(&span.start));
        match containing.min_by_key(|e| e.span.len()) {
            Some(e) => (e.path.clone(), Some(span.start)),
            None => (String::new(), Some(span.start)),
        }
    }

    /// Where `path` (or, if it is not in the file, its closest enclosing field) is: the start
    /// of its key, or of the array element.
    fn location_of(&self, path: &str) -> Option<usize> {
        let mut path = path;
        while !path.is_empty() {
            let mut matches = self.entries.iter().filter(|e| e.path == path);
            let found = match matches.clone().find(|e| e.is_key) {
                Some(key) => Some(key),
                None => matches.next(),
            };
            if let Some(e) = found {
                return Some(e.span.start);
            }
            path = &path[..path.rfind(['.', '[']).unwrap_or(0)];
        }
        None
    }
}

/// A TOML document's shape, enough to know where every key and value is.
enum Node {
    Table(Vec<(toml::Spanned<String>, toml::Spanned<Node>)>),
    Array(Vec<toml::Spanned<Node>>),
    Scalar,
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Node, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any TOML value")
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut elements = Vec::new();
                while let Some(element) = seq.next_element()? {
                    elements.push(element);
                }
                Ok(Node::Array(elements))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key()? {
                    entries.push((key, map.next_value()?));
                }
                Ok(Node::Table(entries))
            }
        }
        deserializer.deserialize_any(V)
    }
}
