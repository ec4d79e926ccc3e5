//! Trace events and their compact one-line text encoding.
//!
//! The hypervisor and the host simulator both emit [`TraceEvent`]s; the host tools read them
//! back to build reports. An event is written as one line of plain ASCII through
//! [`core::fmt::Display`] and read back with [`TraceEvent::parse`]; neither allocates.
//!
//! ```text
//! T 1500000 mig v3 c0>c1
//! T 2000000 psci m1 v3 cpu_on r=0
//! T 2500000 resv c0 v3 b=2000000 p=10000000 admit
//! ```
//!
//! A line is `T `, the time in decimal nanoseconds, a tag, then the tag's fields, all separated
//! by single spaces. Fields are positional and each kind of field is recognizable on its own:
//! identifiers carry a letter (`c` core, `v` vCPU, `m` VM), other numbers carry a `key=`, and
//! enumerations are bare lowercase words (or `0x…` for an unnamed function id or fault code).
//! Numbers are canonical: no sign on unsigned values, no leading zeros, lowercase hex. The
//! encoding is therefore unique: a line that decodes re-encodes to exactly itself.
//!
//! The full grammar, every tag and the versioning policy are in `docs/trace-format.md`. In short:
//! new tags may be added; a reader skips lines that fail with [`TraceParseError::UnknownTag`].

use core::fmt;

use crate::ids::{CoreId, VcpuId, VmId};
use crate::time::{Instant, Nanos};

/// The marker that starts every trace line.
pub const PREFIX: &str = "T ";

/// No trace line is longer than this many bytes (the line itself, without a line terminator).
///
/// This is a limit of the format, not only of the current tags: tags added later must respect it,
/// so a reader may size its buffer by it. The longest line today is a `resv` line with every
/// number at its maximum, 94 bytes. [`TraceEvent::parse`] rejects longer input with
/// [`TraceParseError::TooLong`].
pub const MAX_LINE_LEN: usize = 128;

/// One trace event: what happened, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    /// When it happened, on the platform's monotonic clock.
    pub at: Instant,
    pub kind: TraceKind,
}

/// What happened. Each variant is one tag of the line format (see [`TraceKind::tag`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceKind {
    /// `run`: the vCPU starts running on the core.
    VcpuRun { core: CoreId, vcpu: VcpuId },
    /// `pre`: the vCPU was descheduled from the core while still runnable.
    VcpuPreempt { core: CoreId, vcpu: VcpuId },
    /// `blk`: the vCPU blocked (WFI) and left the core.
    VcpuBlock { core: CoreId, vcpu: VcpuId },
    /// `wake`: the vCPU became runnable; `core` is the core that owns it.
    VcpuWake { core: CoreId, vcpu: VcpuId },
    /// `park`: the guest turned the vCPU off (PSCI CPU_OFF); `core` owned it.
    VcpuPark { core: CoreId, vcpu: VcpuId },
    /// `unpark`: the guest turned the vCPU on (PSCI CPU_ON); `core` owns it.
    VcpuUnpark { core: CoreId, vcpu: VcpuId },
    /// `stop`: the vCPU stopped for good.
    VcpuStop { vcpu: VcpuId, reason: StopReason },
    /// `mig`: the vCPU was handed over from one core to another.
    VcpuMigrate { vcpu: VcpuId, from: CoreId, to: CoreId },
    /// `core`: a physical core changed state.
    CoreState { core: CoreId, state: CoreState },
    /// `psci`: a guest made a (virtual) PSCI call; `result` is the value returned to the guest.
    GuestPsci { vm: VmId, vcpu: VcpuId, call: PsciCall, result: i32 },
    /// `miss`: a real-time vCPU missed its deadline by `late`.
    DeadlineMiss { vcpu: VcpuId, deadline: Instant, late: Nanos },
    /// `fault`: a guest did something the hypervisor refuses.
    GuestFault { vm: VmId, vcpu: VcpuId, fault: FaultKind },
    /// `ckpt`: a checkpoint of a VM reached a step; `bytes` written so far.
    Checkpoint { vm: VmId, step: CheckpointStep, bytes: u64 },
    /// `resv`: a real-time reservation was requested on a core, and admitted or rejected.
    Reservation { core: CoreId, vcpu: VcpuId, budget: Nanos, period: Nanos, admitted: bool },
    /// `mark`: a free marker that a test guest or a tool may emit.
    Mark { id: u32, value: u64 },
}

/// Why a vCPU stopped for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// `off`: the guest called PSCI SYSTEM_OFF.
    SystemOff,
    /// `reset`: the guest called PSCI SYSTEM_RESET.
    SystemReset,
    /// `fault`: the hypervisor stopped the guest after a fault.
    Fault,
    /// `halt`: stopped by the host (end of scenario, operator).
    Halted,
    /// `migrated`: the guest left for another hypervisor instance (live migration committed).
    Migrated,
}

/// The state of a physical core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoreState {
    /// `online`: powered on and available, nothing scheduled yet.
    Online,
    /// `busy`: running vCPUs.
    Busy,
    /// `idle`: nothing to run, waiting for an interrupt.
    Idle,
    /// `drain`: being emptied by the governor before it goes off.
    Draining,
    /// `off`: powered off (PSCI CPU_OFF).
    Off,
}

/// A guest PSCI call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsciCall {
    Version,
    Features,
    CpuOn,
    CpuOff,
    CpuSuspend,
    AffinityInfo,
    MigrateInfoType,
    SystemOff,
    SystemReset,
    /// Any other call, by SMCCC function id (written in hex, e.g. `0x84000005`).
    Other(u32),
}

/// A guest fault the hypervisor refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// `s2abort`: a stage-2 abort outside the guest's memory and devices.
    StageTwoAbort,
    /// `undef_hvc`: an HVC the hypervisor does not implement.
    UndefinedHypercall,
    /// `undef_smc`: an SMC the hypervisor does not implement.
    UndefinedSmc,
    /// `device`: a virtual device used against its contract.
    DeviceMisuse,
    /// Any other fault, by a platform-defined code (written in hex, e.g. `0x24`).
    Other(u32),
}

/// A step of taking a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointStep {
    Begin,
    Vcpus,
    Memory,
    Done,
    Failed,
}

// ---------------------------------------------------------------------------------------------
// Words of the enumerations.

impl StopReason {
    const WORDS: &'static str = "off|reset|fault|halt|migrated";

    /// The word used in a trace line.
    pub const fn word(self) -> &'static str {
        match self {
            StopReason::SystemOff => "off",
            StopReason::SystemReset => "reset",
            StopReason::Fault => "fault",
            StopReason::Halted => "halt",
            StopReason::Migrated => "migrated",
        }
    }

    fn from_word(s: &str) -> Option<StopReason> {
        Some(match s {
            "off" => StopReason::SystemOff,
            "reset" => StopReason::SystemReset,
            "fault" => StopReason::Fault,
            "halt" => StopReason::Halted,
            "migrated" => StopReason::Migrated,
            _ => return None,
        })
    }
}

impl CoreState {
    const WORDS: &'static str = "online|busy|idle|drain|off";

    /// The word used in a trace line.
    pub const fn word(self) -> &'static str {
        match self {
            CoreState::Online => "online",
            CoreState::Busy => "busy",
            CoreState::Idle => "idle",
            CoreState::Draining => "drain",
            CoreState::Off => "off",
        }
    }

    fn from_word(s: &str) -> Option<CoreState> {
        Some(match s {
            "online" => CoreState::Online,
            "busy" => CoreState::Busy,
            "idle" => CoreState::Idle,
            "drain" => CoreState::Draining,
            "off" => CoreState::Off,
            _ => return None,
        })
    }
}

impl PsciCall {
    const WORDS: &'static str = "version|features|cpu_on|cpu_off|cpu_suspend|affinity_info|\
                                 migrate_info_type|system_off|system_reset|0x<function id>";

    /// The word used in a trace line; `None` for [`PsciCall::Other`], which is written in hex.
    pub const fn word(self) -> Option<&'static str> {
        Some(match self {
            PsciCall::Version => "version",
            PsciCall::Features => "features",
            PsciCall::CpuOn => "cpu_on",
            PsciCall::CpuOff => "cpu_off",
            PsciCall::CpuSuspend => "cpu_suspend",
            PsciCall::AffinityInfo => "affinity_info",
            PsciCall::MigrateInfoType => "migrate_info_type",
            PsciCall::SystemOff => "system_off",
            PsciCall::SystemReset => "system_reset",
            PsciCall::Other(_) => return None,
        })
    }

    fn from_word(s: &str) -> Option<PsciCall> {
        Some(match s {
            "version" => PsciCall::Version,
            "features" => PsciCall::Features,
            "cpu_on" => PsciCall::CpuOn,
            "cpu_off" => PsciCall::CpuOff,
            "cpu_suspend" => PsciCall::CpuSuspend,
            "affinity_info" => PsciCall::AffinityInfo,
            "migrate_info_type" => PsciCall::MigrateInfoType,
            "system_off" => PsciCall::SystemOff,
            "system_reset" => PsciCall::SystemReset,
            _ => return None,
        })
    }
}

impl FaultKind {
    const WORDS: &'static str = "s2abort|undef_hvc|undef_smc|device|0x<code>";

    /// The word used in a trace line; `None` for [`FaultKind::Other`], which is written in hex.
    pub const fn word(self) -> Option<&'static str> {
        Some(match self {
            FaultKind::StageTwoAbort => "s2abort",
            FaultKind::UndefinedHypercall => "undef_hvc",
            FaultKind::UndefinedSmc => "undef_smc",
            FaultKind::DeviceMisuse => "device",
            FaultKind::Other(_) => return None,
        })
    }

    fn from_word(s: &str) -> Option<FaultKind> {
        Some(match s {
            "s2abort" => FaultKind::StageTwoAbort,
            "undef_hvc" => FaultKind::UndefinedHypercall,
            "undef_smc" => FaultKind::UndefinedSmc,
            "device" => FaultKind::DeviceMisuse,
            _ => return None,
        })
    }
}

impl CheckpointStep {
    const WORDS: &'static str = "begin|vcpus|memory|done|failed";

    /// The word used in a trace line.
    pub const fn word(self) -> &'static str {
        match self {
            CheckpointStep::Begin => "begin",
            CheckpointStep::Vcpus => "vcpus",
            CheckpointStep::Memory => "memory",
            CheckpointStep::Done => "done",
            CheckpointStep::Failed => "failed",
        }
    }

    fn from_word(s: &str) -> Option<CheckpointStep> {
        Some(match s {
            "begin" => CheckpointStep::Begin,
            "vcpus" => CheckpointStep::Vcpus,
            "memory" => CheckpointStep::Memory,
            "done" => CheckpointStep::Done,
            "failed" => CheckpointStep::Failed,
            _ => return None,
        })
    }
}

const ADMIT: &str = "admit";
const REJECT: &str = "reject";

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}
impl fmt::Display for CoreState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}
impl fmt::Display for CheckpointStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}
impl fmt::Display for PsciCall {
    /// The word, or `0x` and the function id in lowercase hex for [`PsciCall::Other`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PsciCall::Other(id) => write!(f, "{id:#x}"),
            named => f.write_str(named.word().unwrap_or_default()),
        }
    }
}
impl fmt::Display for FaultKind {
    /// The word, or `0x` and the code in lowercase hex for [`FaultKind::Other`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultKind::Other(code) => write!(f, "{code:#x}"),
            named => f.write_str(named.word().unwrap_or_default()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding.

impl TraceKind {
    /// The tag that names this kind of event in a trace line.
    pub const fn tag(&self) -> &'static str {
        match self {
            TraceKind::VcpuRun { .. } => "run",
            TraceKind::VcpuPreempt { .. } => "pre",
            TraceKind::VcpuBlock { .. } => "blk",
            TraceKind::VcpuWake { .. } => "wake",
            TraceKind::VcpuPark { .. } => "park",
            TraceKind::VcpuUnpark { .. } => "unpark",
            TraceKind::VcpuStop { .. } => "stop",
            TraceKind::VcpuMigrate { .. } => "mig",
            TraceKind::CoreState { .. } => "core",
            TraceKind::GuestPsci { .. } => "psci",
            TraceKind::DeadlineMiss { .. } => "miss",
            TraceKind::GuestFault { .. } => "fault",
            TraceKind::Checkpoint { .. } => "ckpt",
            TraceKind::Reservation { .. } => "resv",
            TraceKind::Mark { .. } => "mark",
        }
    }
}

impl fmt::Display for TraceKind {
    /// The tag and the fields: the line without `T ` and the time.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.tag())?;
        match *self {
            TraceKind::VcpuRun { core, vcpu }
            | TraceKind::VcpuPreempt { core, vcpu }
            | TraceKind::VcpuBlock { core, vcpu }
            | TraceKind::VcpuWake { core, vcpu }
            | TraceKind::VcpuPark { core, vcpu }
            | TraceKind::VcpuUnpark { core, vcpu } => write!(f, " c{} v{}", core.0, vcpu.0),
            TraceKind::VcpuStop { vcpu, reason } => write!(f, " v{} {}", vcpu.0, reason),
            TraceKind::VcpuMigrate { vcpu, from, to } => {
                write!(f, " v{} c{}>c{}", vcpu.0, from.0, to.0)
            }
            TraceKind::CoreState { core, state } => write!(f, " c{} {}", core.0, state),
            TraceKind::GuestPsci { vm, vcpu, call, result } => {
                write!(f, " m{} v{} {} r={}", vm.0, vcpu.0, call, result)
            }
            TraceKind::DeadlineMiss { vcpu, deadline, late } => {
                write!(f, " v{} dl={} late={}", vcpu.0, deadline.0, late.0)
            }
            TraceKind::GuestFault { vm, vcpu, fault } => {
                write!(f, " m{} v{} {}", vm.0, vcpu.0, fault)
            }
            TraceKind::Checkpoint { vm, step, bytes } => {
                write!(f, " m{} {} bytes={}", vm.0, step, bytes)
            }
            TraceKind::Reservation { core, vcpu, budget, period, admitted } => write!(
                f,
                " c{} v{} b={} p={} {}",
                core.0,
                vcpu.0,
                budget.0,
                period.0,
                if admitted { ADMIT } else { REJECT }
            ),
            TraceKind::Mark { id, value } => write!(f, " id={id} val={value}"),
        }
    }
}

impl fmt::Display for TraceEvent {
    /// The whole trace line, without a line terminator: at most [`MAX_LINE_LEN`] bytes of ASCII.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{} {}", self.at.0, self.kind)
    }
}

// ---------------------------------------------------------------------------------------------
// Errors.

/// How many bytes of an offending token a [`Token`] keeps for error messages.
const EXCERPT_LEN: usize = 16;

/// Where an offending token is in the parsed line, and its first bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Token {
    /// Position among the space-separated tokens: 0 is `T`, 1 the time, 2 the tag, 3 the first
    /// field.
    pub index: usize,
    /// Byte offset of the token in the string given to [`TraceEvent::parse`] (surrounding
    /// whitespace included).
    pub offset: usize,
    /// Length of the token in bytes.
    pub len: usize,
    excerpt: [u8; EXCERPT_LEN],
    excerpt_len: u8,
}

impl Token {
    fn new(text: &str, index: usize, offset: usize) -> Token {
        let mut n = text.len().min(EXCERPT_LEN);
        while !text.is_char_boundary(n) {
            n -= 1; // terminates: 0 is always a char boundary
        }
        let mut excerpt = [0u8; EXCERPT_LEN];
        if let (Some(dst), Some(src)) = (excerpt.get_mut(..n), text.as_bytes().get(..n)) {
            dst.copy_from_slice(src);
        }
        Token { index, offset, len: text.len(), excerpt, excerpt_len: n as u8 }
    }

    /// The token's text, cut to its first 16 bytes (at a character boundary).
    pub fn excerpt(&self) -> &str {
        let bytes = self.excerpt.get(..usize::from(self.excerpt_len)).unwrap_or(&[]);
        core::str::from_utf8(bytes).unwrap_or("")
    }

    /// Whether [`Token::excerpt`] is shorter than the token.
    pub fn is_truncated(&self) -> bool {
        usize::from(self.excerpt_len) < self.len
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("index", &self.index)
            .field("offset", &self.offset)
            .field("len", &self.len)
            .field("excerpt", &self.excerpt())
            .finish()
    }
}

impl fmt::Display for Token {
    /// `token 3 `x0` at byte 12`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let more = if self.is_truncated() { "..." } else { "" };
        write!(f, "token {} `{}{}` at byte {}", self.index, self.excerpt(), more, self.offset)
    }
}

/// Why a field's token is malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The token is empty: two spaces in a row.
    Empty,
    /// The token must start with this (`c`, `v`, `m`, or a `key=`).
    ExpectedPrefix(&'static str),
    /// The two halves of the token must be separated by this character (`mig`: `c0>c1`).
    ExpectedSeparator(char),
    /// Not a decimal number: only ASCII digits, with a `-` in front for a negative signed value.
    NotDecimal,
    /// Not a hex number: `0x` and 1 to 8 lowercase hex digits.
    NotHex,
    /// A number that is not canonical: a leading zero, or `-0`.
    LeadingZero,
    /// The number does not fit in the field's type (`u16`, `u32`, `u64`, `i32`).
    OutOfRange(&'static str),
    /// Not one of the words this field takes (listed, separated by `|`).
    UnknownWord(&'static str),
    /// A tag must be a lowercase ASCII letter followed by lowercase letters, digits or `_`.
    InvalidTag,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Empty => f.write_str("empty token (two spaces in a row)"),
            Problem::ExpectedPrefix(p) => write!(f, "expected it to start with `{p}`"),
            Problem::ExpectedSeparator(c) => write!(f, "expected two parts separated by `{c}`"),
            Problem::NotDecimal => f.write_str("not a decimal number"),
            Problem::NotHex => f.write_str("not `0x` and 1 to 8 lowercase hex digits"),
            Problem::LeadingZero => f.write_str("non-canonical number (leading zero or -0)"),
            Problem::OutOfRange(ty) => write!(f, "number does not fit in {ty}"),
            Problem::UnknownWord(words) => write!(f, "expected one of {words}"),
            Problem::InvalidTag => f.write_str("not a tag ([a-z][a-z0-9_]*)"),
        }
    }
}

/// Why a line is not a valid trace event.
///
/// Field names are those of the [`TraceKind`] variant (`core`, `vcpu`, `from`, `result`, ...),
/// or `time` and `tag`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceParseError {
    /// The line (surrounding whitespace removed) does not start with `T `: not a trace line.
    NotTrace,
    /// The line is longer than [`MAX_LINE_LEN`] (surrounding whitespace removed).
    TooLong { len: usize },
    /// A well-formed line whose tag this reader does not know, probably written by a newer
    /// version. Tools should skip the line. Its fields were not examined.
    UnknownTag { at: Instant, tag: Token },
    /// The line ended before this field, which would have been token `index`.
    MissingField { field: &'static str, index: usize },
    /// The token for this field is malformed.
    BadField { field: &'static str, token: Token, problem: Problem },
    /// A token after the last field of the tag.
    ExtraToken { token: Token },
}

impl TraceParseError {
    /// Whether the line is a well-formed trace line of a tag this reader does not know (skip it).
    pub const fn is_unknown_tag(&self) -> bool {
        matches!(self, TraceParseError::UnknownTag { .. })
    }
}

impl fmt::Display for TraceParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceParseError::NotTrace => f.write_str("not a trace line: it does not start with `T `"),
            TraceParseError::TooLong { len } => {
                write!(f, "trace line of {len} bytes is longer than {MAX_LINE_LEN}")
            }
            TraceParseError::UnknownTag { tag, .. } => {
                write!(f, "unknown tag: {tag} (written by a newer version? skip the line)")
            }
            TraceParseError::MissingField { field, index } => {
                write!(f, "missing field `{field}` (token {index}): the line ends early")
            }
            TraceParseError::BadField { field, token, problem } => {
                write!(f, "bad field `{field}` ({token}): {problem}")
            }
            TraceParseError::ExtraToken { token } => {
                write!(f, "unexpected {token} after the last field")
            }
        }
    }
}

impl core::error::Error for TraceParseError {}

// ---------------------------------------------------------------------------------------------
// Decoding.

fn is_space(c: char) -> bool {
    c.is_ascii_whitespace()
}

/// One token of the line being parsed.
#[derive(Clone, Copy)]
struct Tok<'a> {
    text: &'a str,
    index: usize,
    offset: usize,
}

impl Tok<'_> {
    fn token(&self) -> Token {
        Token::new(self.text, self.index, self.offset)
    }

    fn bad(&self, field: &'static str, problem: Problem) -> TraceParseError {
        TraceParseError::BadField { field, token: self.token(), problem }
    }

    /// The rest of the token after `prefix`.
    fn after(&self, field: &'static str, prefix: &'static str) -> Result<&str, TraceParseError> {
        self.text.strip_prefix(prefix).ok_or_else(|| self.bad(field, Problem::ExpectedPrefix(prefix)))
    }
}

/// The space-separated tokens of a line, with their positions.
struct Tokens<'a> {
    split: core::str::Split<'a, char>,
    index: usize,
    offset: usize,
}

impl<'a> Tokens<'a> {
    fn next(&mut self) -> Option<Tok<'a>> {
        let text = self.split.next()?;
        let tok = Tok { text, index: self.index, offset: self.offset };
        self.index += 1;
        self.offset += text.len() + 1;
        Some(tok)
    }

    /// The next token, which must exist and not be empty.
    fn field(&mut self, field: &'static str) -> Result<Tok<'a>, TraceParseError> {
        let index = self.index;
        let tok = self.next().ok_or(TraceParseError::MissingField { field, index })?;
        if tok.text.is_empty() {
            return Err(tok.bad(field, Problem::Empty));
        }
        Ok(tok)
    }

    fn id(&mut self, field: &'static str, prefix: &'static str) -> Result<u16, TraceParseError> {
        let tok = self.field(field)?;
        parse_u16(tok, field, tok.after(field, prefix)?)
    }

    fn core(&mut self) -> Result<CoreId, TraceParseError> {
        self.id("core", "c").map(CoreId)
    }

    fn vcpu(&mut self) -> Result<VcpuId, TraceParseError> {
        self.id("vcpu", "v").map(VcpuId)
    }

    fn vm(&mut self) -> Result<VmId, TraceParseError> {
        self.id("vm", "m").map(VmId)
    }

    /// A `key=<u64>` field.
    fn keyed(&mut self, field: &'static str, key: &'static str) -> Result<u64, TraceParseError> {
        let tok = self.field(field)?;
        let digits = tok.after(field, key)?;
        decimal(digits, u64::MAX, "u64").map_err(|p| tok.bad(field, p))
    }

    /// A word of an enumeration.
    fn word<T>(
        &mut self,
        field: &'static str,
        from_word: fn(&str) -> Option<T>,
        words: &'static str,
    ) -> Result<T, TraceParseError> {
        let tok = self.field(field)?;
        from_word(tok.text).ok_or_else(|| tok.bad(field, Problem::UnknownWord(words)))
    }

    /// A word of an enumeration with an `Other(u32)` written `0x…`.
    fn word_or_hex<T>(
        &mut self,
        field: &'static str,
        from_word: fn(&str) -> Option<T>,
        other: fn(u32) -> T,
        words: &'static str,
    ) -> Result<T, TraceParseError> {
        let tok = self.field(field)?;
        if let Some(v) = from_word(tok.text) {
            Ok(v)
        } else if tok.text.starts_with("0x") {
            hex_u32(tok.text).map(other).map_err(|p| tok.bad(field, p))
        } else {
            Err(tok.bad(field, Problem::UnknownWord(words)))
        }
    }

    /// No token may follow the last field.
    fn end(mut self) -> Result<(), TraceParseError> {
        match self.next() {
            None => Ok(()),
            Some(tok) => Err(TraceParseError::ExtraToken { token: tok.token() }),
        }
    }
}

fn parse_u16(tok: Tok<'_>, field: &'static str, digits: &str) -> Result<u16, TraceParseError> {
    decimal(digits, u64::from(u16::MAX), "u16")
        .map(|v| v as u16) // in range: checked by `decimal`
        .map_err(|p| tok.bad(field, p))
}

/// A canonical unsigned decimal number no greater than `max` (`ty` names its type).
fn decimal(s: &str, max: u64, ty: &'static str) -> Result<u64, Problem> {
    let bytes = s.as_bytes();
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return Err(Problem::NotDecimal);
    }
    if bytes.len() > 1 && bytes.first() == Some(&b'0') {
        return Err(Problem::LeadingZero);
    }
    let mut v: u64 = 0;
    for &b in bytes {
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .filter(|&v| v <= max)
            .ok_or(Problem::OutOfRange(ty))?;
    }
    Ok(v)
}

/// A canonical signed decimal `i32`: an optional `-`, then digits; no `-0`.
fn decimal_i32(s: &str) -> Result<i32, Problem> {
    match s.strip_prefix('-') {
        Some(magnitude) => {
            let m = decimal(magnitude, 1 << 31, "i32")?;
            if m == 0 {
                return Err(Problem::LeadingZero);
            }
            i32::try_from(-(m as i64)).map_err(|_| Problem::OutOfRange("i32"))
        }
        None => {
            let v = decimal(s, i32::MAX as u64, "i32")?;
            i32::try_from(v).map_err(|_| Problem::OutOfRange("i32"))
        }
    }
}

/// A canonical `0x` hex `u32`: lowercase digits, no leading zeros.
fn hex_u32(s: &str) -> Result<u32, Problem> {
    let digits = s.strip_prefix("0x").ok_or(Problem::NotHex)?;
    let bytes = digits.as_bytes();
    if bytes.is_empty() || !bytes.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(Problem::NotHex);
    }
    if bytes.len() > 1 && bytes.first() == Some(&b'0') {
        return Err(Problem::LeadingZero);
    }
    if bytes.len() > 8 {
        return Err(Problem::OutOfRange("u32"));
    }
    u32::from_str_radix(digits, 16).map_err(|_| Problem::OutOfRange("u32"))
}

fn is_tag(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl TraceEvent {
    /// Decode one trace line, as written by `Display`.
    ///
    /// Surrounding ASCII whitespace (a trailing `\r` or `\n` included) is ignored; inside the
    /// line, tokens are separated by exactly one space and every number must be canonical, so a
    /// line decodes only if it re-encodes to exactly itself. Never panics, never allocates, and
    /// looks at no more than [`MAX_LINE_LEN`] bytes past the surrounding whitespace.
    ///
    /// For a console line that may carry text before the trace, see [`find_in`].
    pub fn parse(line: &str) -> Result<TraceEvent, TraceParseError> {
        let start = line.len() - line.trim_start_matches(is_space).len();
        let text = line.trim_matches(is_space);
        if text.len() > MAX_LINE_LEN {
            // Still tell a non-trace line from an overlong trace line.
            return Err(if text.starts_with(PREFIX) {
                TraceParseError::TooLong { len: text.len() }
            } else {
                TraceParseError::NotTrace
            });
        }
        let body = text.strip_prefix(PREFIX).ok_or(TraceParseError::NotTrace)?;
        let mut t = Tokens { split: body.split(' '), index: 1, offset: start + PREFIX.len() };

        let time = t.field("time")?;
        let at = Instant(decimal(time.text, u64::MAX, "u64").map_err(|p| time.bad("time", p))?);

        let tag = t.field("tag")?;
        let kind = match tag.text {
            "run" => TraceKind::VcpuRun { core: t.core()?, vcpu: t.vcpu()? },
            "pre" => TraceKind::VcpuPreempt { core: t.core()?, vcpu: t.vcpu()? },
            "blk" => TraceKind::VcpuBlock { core: t.core()?, vcpu: t.vcpu()? },
            "wake" => TraceKind::VcpuWake { core: t.core()?, vcpu: t.vcpu()? },
            "park" => TraceKind::VcpuPark { core: t.core()?, vcpu: t.vcpu()? },
            "unpark" => TraceKind::VcpuUnpark { core: t.core()?, vcpu: t.vcpu()? },
            "stop" => TraceKind::VcpuStop {
                vcpu: t.vcpu()?,
                reason: t.word("reason", StopReason::from_word, StopReason::WORDS)?,
            },
            "mig" => {
                let vcpu = t.vcpu()?;
                let tok = t.field("from")?;
                let (from, to) =
                    tok.text.split_once('>').ok_or_else(|| tok.bad("to", Problem::ExpectedSeparator('>')))?;
                let from = from.strip_prefix('c').ok_or_else(|| tok.bad("from", Problem::ExpectedPrefix("c")))?;
                let from = parse_u16(tok, "from", from)?;
                let to = to.strip_prefix('c').ok_or_else(|| tok.bad("to", Problem::ExpectedPrefix("c")))?;
                let to = parse_u16(tok, "to", to)?;
                TraceKind::VcpuMigrate { vcpu, from: CoreId(from), to: CoreId(to) }
            }
            "core" => TraceKind::CoreState {
                core: t.core()?,
                state: t.word("state", CoreState::from_word, CoreState::WORDS)?,
            },
            "psci" => TraceKind::GuestPsci {
                vm: t.vm()?,
                vcpu: t.vcpu()?,
                call: t.word_or_hex("call", PsciCall::from_word, PsciCall::Other, PsciCall::WORDS)?,
                result: {
                    let tok = t.field("result")?;
                    decimal_i32(tok.after("result", "r=")?).map_err(|p| tok.bad("result", p))?
                },
            },
            "miss" => TraceKind::DeadlineMiss {
                vcpu: t.vcpu()?,
                deadline: Instant(t.keyed("deadline", "dl=")?),
                late: Nanos(t.keyed("late", "late=")?),
            },
            "fault" => TraceKind::GuestFault {
                vm: t.vm()?,
                vcpu: t.vcpu()?,
                fault: t.word_or_hex("fault", FaultKind::from_word, FaultKind::Other, FaultKind::WORDS)?,
            },
            "ckpt" => TraceKind::Checkpoint {
                vm: t.vm()?,
                step: t.word("step", CheckpointStep::from_word, CheckpointStep::WORDS)?,
                bytes: t.keyed("bytes", "bytes=")?,
            },
            "resv" => TraceKind::Reservation {
                core: t.core()?,
                vcpu: t.vcpu()?,
                budget: Nanos(t.keyed("budget", "b=")?),
                period: Nanos(t.keyed("period", "p=")?),
                admitted: {
                    let tok = t.field("admitted")?;
                    match tok.text {
                        ADMIT => true,
                        REJECT => false,
                        _ => return Err(tok.bad("admitted", Problem::UnknownWord("admit|reject"))),
                    }
                },
            },
            "mark" => TraceKind::Mark {
                id: {
                    let tok = t.field("id")?;
                    let v =
                        decimal(tok.after("id", "id=")?, u64::from(u32::MAX), "u32").map_err(|p| tok.bad("id", p))?;
                    v as u32 // in range: checked by `decimal`
                },
                value: t.keyed("value", "val=")?,
            },
            other if is_tag(other) => {
                return Err(TraceParseError::UnknownTag { at, tag: tag.token() });
            }
            _ => return Err(tag.bad("tag", Problem::InvalidTag)),
        };
        t.end()?;
        Ok(TraceEvent { at, kind })
    }
}

impl core::str::FromStr for TraceEvent {
    type Err = TraceParseError;

    /// Same as [`TraceEvent::parse`].
    fn from_str(s: &str) -> Result<TraceEvent, TraceParseError> {
        TraceEvent::parse(s)
    }
}

/// The trace part of a console line, if it has one.
///
/// Console output may put text before a trace line (a guest name such as `[vm1] `, a log level,
/// a timestamp). The trace part starts at the first `T ` that
/// - is at the start of `line` or follows a byte that is not an ASCII letter, digit or `_`, and
/// - is directly followed by an ASCII digit (the first digit of the time).
///
/// It runs to the end of `line`, trailing ASCII whitespace (`\r`, `\n`) removed. Nothing else is
/// checked: pass the result to [`TraceEvent::parse`]. Returns `None` if there is no such `T `.
///
/// `find_in("[vm1] T 5 run c0 v1\r")` is `Some("T 5 run c0 v1")`;
/// `find_in("AT 5 run c0 v1")` and `find_in("T x")` are `None`.
pub fn find_in(line: &str) -> Option<&str> {
    let bytes = line.as_bytes();
    line.match_indices(PREFIX)
        .map(|(i, _)| i)
        .find(|&i| {
            let before_ok =
                i.checked_sub(1).and_then(|j| bytes.get(j)).is_none_or(|&b| !(b.is_ascii_alphanumeric() || b == b'_'));
            let digit_after = bytes.get(i + PREFIX.len()).is_some_and(u8::is_ascii_digit);
            before_ok && digit_after
        })
        .and_then(|i| line.get(i..))
        .map(|s| s.trim_end_matches(is_space))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ev(at: u64, kind: TraceKind) -> TraceEvent {
        TraceEvent { at: Instant(at), kind }
    }

    const C: CoreId = CoreId(2);
    const V: VcpuId = VcpuId(5);
    const M: VmId = VmId(1);

    /// One example of every variant and its exact line.
    #[rustfmt::skip]
    fn examples() -> Vec<(TraceEvent, &'static str)> {
        use CheckpointStep as Ck;
        use CoreState as Cs;
        use FaultKind as F;
        use PsciCall as P;
        use StopReason as S;
        use TraceKind as K;
        let psci = |call, result| K::GuestPsci { vm: M, vcpu: V, call, result };
        let fault = |fault| K::GuestFault { vm: M, vcpu: V, fault };
        let ckpt = |step, bytes| K::Checkpoint { vm: M, step, bytes };
        let table = [
            (0, K::VcpuRun { core: C, vcpu: V }, "T 0 run c2 v5"),
            (10, K::VcpuPreempt { core: C, vcpu: V }, "T 10 pre c2 v5"),
            (11, K::VcpuBlock { core: C, vcpu: V }, "T 11 blk c2 v5"),
            (12, K::VcpuWake { core: CoreId(0), vcpu: VcpuId(0) }, "T 12 wake c0 v0"),
            (13, K::VcpuPark { core: C, vcpu: V }, "T 13 park c2 v5"),
            (14, K::VcpuUnpark { core: C, vcpu: V }, "T 14 unpark c2 v5"),
            (15, K::VcpuStop { vcpu: V, reason: S::SystemOff }, "T 15 stop v5 off"),
            (16, K::VcpuStop { vcpu: V, reason: S::SystemReset }, "T 16 stop v5 reset"),
            (17, K::VcpuStop { vcpu: V, reason: S::Fault }, "T 17 stop v5 fault"),
            (18, K::VcpuStop { vcpu: V, reason: S::Halted }, "T 18 stop v5 halt"),
            (1_500_000, K::VcpuMigrate { vcpu: VcpuId(3), from: CoreId(0), to: CoreId(1) },
                "T 1500000 mig v3 c0>c1"),
            (20, K::CoreState { core: C, state: Cs::Online }, "T 20 core c2 online"),
            (21, K::CoreState { core: C, state: Cs::Busy }, "T 21 core c2 busy"),
            (22, K::CoreState { core: C, state: Cs::Idle }, "T 22 core c2 idle"),
            (23, K::CoreState { core: C, state: Cs::Draining }, "T 23 core c2 drain"),
            (24, K::CoreState { core: C, state: Cs::Off }, "T 24 core c2 off"),
            (30, psci(P::Version, 0x10001), "T 30 psci m1 v5 version r=65537"),
            (31, psci(P::Features, -1), "T 31 psci m1 v5 features r=-1"),
            (32, psci(P::CpuOn, 0), "T 32 psci m1 v5 cpu_on r=0"),
            (33, psci(P::CpuOff, -3), "T 33 psci m1 v5 cpu_off r=-3"),
            (34, psci(P::CpuSuspend, 0), "T 34 psci m1 v5 cpu_suspend r=0"),
            (35, psci(P::AffinityInfo, 1), "T 35 psci m1 v5 affinity_info r=1"),
            (36, psci(P::MigrateInfoType, 2), "T 36 psci m1 v5 migrate_info_type r=2"),
            (37, psci(P::SystemOff, 0), "T 37 psci m1 v5 system_off r=0"),
            (38, psci(P::SystemReset, 0), "T 38 psci m1 v5 system_reset r=0"),
            (39, psci(P::Other(0x8400_0005), i32::MIN), "T 39 psci m1 v5 0x84000005 r=-2147483648"),
            (40, K::DeadlineMiss { vcpu: V, deadline: Instant(1_000_000), late: Nanos(20_000) },
                "T 40 miss v5 dl=1000000 late=20000"),
            (50, fault(F::StageTwoAbort), "T 50 fault m1 v5 s2abort"),
            (51, fault(F::UndefinedHypercall), "T 51 fault m1 v5 undef_hvc"),
            (52, fault(F::UndefinedSmc), "T 52 fault m1 v5 undef_smc"),
            (53, fault(F::DeviceMisuse), "T 53 fault m1 v5 device"),
            (54, fault(F::Other(0)), "T 54 fault m1 v5 0x0"),
            (55, fault(F::Other(0x24)), "T 55 fault m1 v5 0x24"),
            (60, ckpt(Ck::Begin, 0), "T 60 ckpt m1 begin bytes=0"),
            (61, ckpt(Ck::Vcpus, 4096), "T 61 ckpt m1 vcpus bytes=4096"),
            (62, ckpt(Ck::Memory, 1 << 30), "T 62 ckpt m1 memory bytes=1073741824"),
            (63, ckpt(Ck::Done, 7), "T 63 ckpt m1 done bytes=7"),
            (64, ckpt(Ck::Failed, 8), "T 64 ckpt m1 failed bytes=8"),
            (2_500_000, K::Reservation { core: CoreId(0), vcpu: VcpuId(3), budget: Nanos(2_000_000),
                period: Nanos(10_000_000), admitted: true },
                "T 2500000 resv c0 v3 b=2000000 p=10000000 admit"),
            (71, K::Reservation { core: C, vcpu: V, budget: Nanos(9), period: Nanos(8), admitted: false },
                "T 71 resv c2 v5 b=9 p=8 reject"),
            (80, K::Mark { id: 7, value: 42 }, "T 80 mark id=7 val=42"),
        ];
        table.into_iter().map(|(at, kind, line)| (ev(at, kind), line)).collect()
    }

    #[test]
    fn trace_examples_encode_and_decode() {
        for (event, line) in examples() {
            assert_eq!(event.to_string(), line);
            assert_eq!(TraceEvent::parse(line), Ok(event), "{line}");
            assert_eq!(line.parse::<TraceEvent>(), Ok(event), "{line}");
        }
    }

    #[test]
    fn trace_examples_cover_every_tag() {
        let tags: Vec<&str> = examples().iter().map(|(e, _)| e.kind.tag()).collect();
        for tag in [
            "run", "pre", "blk", "wake", "park", "unpark", "stop", "mig", "core", "psci", "miss", "fault", "ckpt",
            "resv", "mark",
        ] {
            assert!(tags.contains(&tag), "no example for {tag}");
        }
    }

    /// The longest line of each tag, every number at its widest.
    #[rustfmt::skip]
    fn widest() -> Vec<TraceEvent> {
        use TraceKind as K;
        let (c, v, m, t) = (CoreId(u16::MAX), VcpuId(u16::MAX), VmId(u16::MAX), u64::MAX);
        [
            K::VcpuUnpark { core: c, vcpu: v },
            K::VcpuStop { vcpu: v, reason: StopReason::SystemReset },
            K::VcpuMigrate { vcpu: v, from: c, to: c },
            K::CoreState { core: c, state: CoreState::Online },
            K::GuestPsci { vm: m, vcpu: v, call: PsciCall::MigrateInfoType, result: i32::MIN },
            K::GuestPsci { vm: m, vcpu: v, call: PsciCall::Other(u32::MAX), result: i32::MIN },
            K::DeadlineMiss { vcpu: v, deadline: Instant(t), late: Nanos(t) },
            K::GuestFault { vm: m, vcpu: v, fault: FaultKind::UndefinedHypercall },
            K::GuestFault { vm: m, vcpu: v, fault: FaultKind::Other(u32::MAX) },
            K::Checkpoint { vm: m, step: CheckpointStep::Failed, bytes: t },
            K::Reservation { core: c, vcpu: v, budget: Nanos(t), period: Nanos(t), admitted: false },
            K::Mark { id: u32::MAX, value: t },
        ]
        .into_iter()
        .map(|kind| ev(t, kind))
        .collect()
    }

    #[test]
    fn trace_max_line_len_bounds_the_widest_lines() {
        let mut longest = 0;
        for e in widest() {
            let line = e.to_string();
            assert!(line.len() <= MAX_LINE_LEN, "{line}");
            assert_eq!(TraceEvent::parse(&line), Ok(e), "{line}");
            longest = longest.max(line.len());
        }
        // The documented figure for today's tags.
        assert_eq!(longest, 94);
        assert_eq!(
            widest()[10].to_string(),
            "T 18446744073709551615 resv c65535 v65535 b=18446744073709551615 \
             p=18446744073709551615 reject"
        );
    }

    #[test]
    fn trace_accepts_surrounding_whitespace() {
        let e = ev(5, TraceKind::VcpuRun { core: CoreId(0), vcpu: VcpuId(1) });
        for line in ["T 5 run c0 v1\r", "T 5 run c0 v1\r\n", "  T 5 run c0 v1  ", "\tT 5 run c0 v1\n"] {
            assert_eq!(TraceEvent::parse(line), Ok(e), "{line:?}");
        }
    }

    #[test]
    fn trace_find_in_console_lines() {
        assert_eq!(find_in("T 5 run c0 v1"), Some("T 5 run c0 v1"));
        assert_eq!(find_in("[vm1] T 5 run c0 v1\r\n"), Some("T 5 run c0 v1"));
        assert_eq!(find_in("linux0: T 5 run c0 v1"), Some("T 5 run c0 v1"));
        assert_eq!(find_in("GOT 5 apples; T 6 mark id=1 val=2"), Some("T 6 mark id=1 val=2"));
        assert_eq!(find_in("AT 5 run c0 v1"), None);
        assert_eq!(find_in("T x"), None);
        assert_eq!(find_in("T "), None);
        assert_eq!(find_in(""), None);
        assert_eq!(find_in("é T 1 x"), Some("T 1 x"));
        assert_eq!(find_in("éT 1 x"), Some("T 1 x"));
        let e = find_in("[vm1] T 5 run c0 v1\r").map(TraceEvent::parse);
        assert_eq!(e, Some(Ok(ev(5, TraceKind::VcpuRun { core: CoreId(0), vcpu: VcpuId(1) }))));
    }

    #[test]
    #[rustfmt::skip]
    fn trace_errors_name_field_token_and_problem() {
        use TraceParseError as E;
        let bad = |line: &str| match TraceEvent::parse(line).unwrap_err() {
            E::BadField { field, token, problem } => {
                (field, token.index, token.excerpt().to_string(), problem)
            }
            other => panic!("{line}: {other:?}"),
        };
        let parse = TraceEvent::parse;
        assert_eq!(parse(""), Err(E::NotTrace));
        assert_eq!(parse("T"), Err(E::NotTrace));
        assert_eq!(parse("hello"), Err(E::NotTrace));
        assert_eq!(parse("t 5 run c0 v1"), Err(E::NotTrace));
        assert_eq!(parse("T 5"), Err(E::MissingField { field: "tag", index: 2 }));
        assert_eq!(parse("T 5 run c0"), Err(E::MissingField { field: "vcpu", index: 4 }));
        assert_eq!(parse("T 5 mig v1"), Err(E::MissingField { field: "from", index: 4 }));

        assert_eq!(bad("T x run c0 v1"), ("time", 1, "x".into(), Problem::NotDecimal));
        assert_eq!(bad("T +5 run c0 v1"), ("time", 1, "+5".into(), Problem::NotDecimal));
        assert_eq!(bad("T 05 run c0 v1"), ("time", 1, "05".into(), Problem::LeadingZero));
        assert_eq!(bad("T 18446744073709551616 run c0 v1"),
            ("time", 1, "1844674407370955".into(), Problem::OutOfRange("u64")));
        assert_eq!(bad("T 5  run c0 v1"), ("tag", 2, "".into(), Problem::Empty));
        assert_eq!(bad("T 5 RUN c0 v1"), ("tag", 2, "RUN".into(), Problem::InvalidTag));
        assert_eq!(bad("T 5 run x0 v1"), ("core", 3, "x0".into(), Problem::ExpectedPrefix("c")));
        assert_eq!(bad("T 5 run c65536 v1"), ("core", 3, "c65536".into(), Problem::OutOfRange("u16")));
        assert_eq!(bad("T 5 run c0 v1é"), ("vcpu", 4, "v1é".into(), Problem::NotDecimal));
        assert_eq!(bad("T 5 run c0\tv1"), ("core", 3, "c0\tv1".into(), Problem::NotDecimal));
        assert_eq!(bad("T 5 mig v1 c0c1"), ("to", 4, "c0c1".into(), Problem::ExpectedSeparator('>')));
        assert_eq!(bad("T 5 mig v1 0>c1"), ("from", 4, "0>c1".into(), Problem::ExpectedPrefix("c")));
        assert_eq!(bad("T 5 mig v1 c0>c01"), ("to", 4, "c0>c01".into(), Problem::LeadingZero));
        assert_eq!(bad("T 5 core c0 up"), ("state", 4, "up".into(), Problem::UnknownWord(CoreState::WORDS)));
        assert_eq!(bad("T 5 stop v0 on"), ("reason", 4, "on".into(), Problem::UnknownWord(StopReason::WORDS)));
        assert_eq!(bad("T 5 psci m0 v0 0x1g r=0"), ("call", 5, "0x1g".into(), Problem::NotHex));
        assert_eq!(bad("T 5 psci m0 v0 0x r=0"), ("call", 5, "0x".into(), Problem::NotHex));
        assert_eq!(bad("T 5 psci m0 v0 0xA r=0"), ("call", 5, "0xA".into(), Problem::NotHex));
        assert_eq!(bad("T 5 psci m0 v0 0X1 r=0"),
            ("call", 5, "0X1".into(), Problem::UnknownWord(PsciCall::WORDS)));
        assert_eq!(bad("T 5 psci m0 v0 0x01 r=0"), ("call", 5, "0x01".into(), Problem::LeadingZero));
        assert_eq!(bad("T 5 psci m0 v0 0x100000000 r=0"),
            ("call", 5, "0x100000000".into(), Problem::OutOfRange("u32")));
        assert_eq!(bad("T 5 psci m0 v0 cpu_on r=-0"), ("result", 6, "r=-0".into(), Problem::LeadingZero));
        assert_eq!(bad("T 5 psci m0 v0 cpu_on r=+1"), ("result", 6, "r=+1".into(), Problem::NotDecimal));
        assert_eq!(bad("T 5 psci m0 v0 cpu_on r=2147483648"),
            ("result", 6, "r=2147483648".into(), Problem::OutOfRange("i32")));
        assert_eq!(bad("T 5 psci m0 v0 cpu_on r=-2147483649"),
            ("result", 6, "r=-2147483649".into(), Problem::OutOfRange("i32")));
        assert_eq!(bad("T 5 psci m0 v0 cpu_on 0"), ("result", 6, "0".into(), Problem::ExpectedPrefix("r=")));
        assert_eq!(bad("T 5 fault m0 v0 oops"),
            ("fault", 5, "oops".into(), Problem::UnknownWord(FaultKind::WORDS)));
        assert_eq!(bad("T 5 miss v0 late=1 dl=2"),
            ("deadline", 4, "late=1".into(), Problem::ExpectedPrefix("dl=")));
        assert_eq!(bad("T 5 ckpt m0 done bytes=-1"), ("bytes", 5, "bytes=-1".into(), Problem::NotDecimal));
        assert_eq!(bad("T 5 resv c0 v0 b=1 p=2 yes"),
            ("admitted", 7, "yes".into(), Problem::UnknownWord("admit|reject")));
        assert_eq!(bad("T 5 mark id=4294967296 val=0"),
            ("id", 3, "id=4294967296".into(), Problem::OutOfRange("u32")));

        let extra = parse("T 5 run c0 v1 v2").unwrap_err();
        assert!(matches!(extra, E::ExtraToken { token }
            if token.index == 5 && token.offset == 14 && token.excerpt() == "v2"));

        let unknown = parse(" T 5 frobnicate 1 2 3").unwrap_err();
        assert!(unknown.is_unknown_tag());
        assert!(matches!(unknown, E::UnknownTag { at: Instant(5), tag }
            if tag.excerpt() == "frobnicate" && tag.offset == 5));
        // Only well-formed tags are unknown tags; a bad time is not skipped silently.
        assert!(parse("T 5 x_1").unwrap_err().is_unknown_tag());
        assert_eq!(bad("T 5 _x"), ("tag", 2, "_x".into(), Problem::InvalidTag));
        assert!(matches!(parse("T -5 zap"), Err(E::BadField { field: "time", .. })));

        let long = format!("T 5 mark id=1 val=1{}", " x".repeat(100));
        assert_eq!(parse(&long), Err(E::TooLong { len: long.len() }));
        assert_eq!(parse(&"x".repeat(200)), Err(E::NotTrace));
    }

    #[test]
    fn trace_error_messages() {
        let msg = |line: &str| TraceEvent::parse(line).unwrap_err().to_string();
        assert_eq!(msg("T 5 run x0 v1"), "bad field `core` (token 3 `x0` at byte 8): expected it to start with `c`");
        assert_eq!(msg("T 5 run c0"), "missing field `vcpu` (token 4): the line ends early");
        assert_eq!(
            msg("T 5 mark id=1 val=12345678901234567890123"),
            "bad field `value` (token 4 `val=123456789012...` at byte 14): number does not fit in u64"
        );
        assert_eq!(msg("T 5 zap"), "unknown tag: token 2 `zap` at byte 4 (written by a newer version? skip the line)");
    }

    #[test]
    fn trace_token_excerpt_cuts_at_char_boundary() {
        let t = Token::new("aaaaaaaaaaaaaaaé", 0, 0); // 15 ASCII + 2-byte char = 17 bytes
        assert_eq!(t.excerpt(), "aaaaaaaaaaaaaaa");
        assert!(t.is_truncated());
        assert_eq!(t.len, 17);
    }

    fn core_id() -> impl Strategy<Value = CoreId> {
        prop_oneof![Just(0u16), Just(u16::MAX), any::<u16>()].prop_map(CoreId)
    }
    fn vcpu_id() -> impl Strategy<Value = VcpuId> {
        prop_oneof![Just(0u16), Just(u16::MAX), any::<u16>()].prop_map(VcpuId)
    }
    fn vm_id() -> impl Strategy<Value = VmId> {
        prop_oneof![Just(0u16), any::<u16>()].prop_map(VmId)
    }
    fn u64s() -> impl Strategy<Value = u64> {
        prop_oneof![Just(0u64), Just(u64::MAX), 0..1000u64, any::<u64>()]
    }

    fn trace_kind() -> impl Strategy<Value = TraceKind> {
        let stop = prop_oneof![
            Just(StopReason::SystemOff),
            Just(StopReason::SystemReset),
            Just(StopReason::Fault),
            Just(StopReason::Halted),
            Just(StopReason::Migrated),
        ];
        let state = prop_oneof![
            Just(CoreState::Online),
            Just(CoreState::Busy),
            Just(CoreState::Idle),
            Just(CoreState::Draining),
            Just(CoreState::Off),
        ];
        let call = prop_oneof![
            Just(PsciCall::Version),
            Just(PsciCall::Features),
            Just(PsciCall::CpuOn),
            Just(PsciCall::CpuOff),
            Just(PsciCall::CpuSuspend),
            Just(PsciCall::AffinityInfo),
            Just(PsciCall::MigrateInfoType),
            Just(PsciCall::SystemOff),
            Just(PsciCall::SystemReset),
            any::<u32>().prop_map(PsciCall::Other),
            Just(PsciCall::Other(0)),
        ];
        let fault = prop_oneof![
            Just(FaultKind::StageTwoAbort),
            Just(FaultKind::UndefinedHypercall),
            Just(FaultKind::UndefinedSmc),
            Just(FaultKind::DeviceMisuse),
            any::<u32>().prop_map(FaultKind::Other),
        ];
        let step = prop_oneof![
            Just(CheckpointStep::Begin),
            Just(CheckpointStep::Vcpus),
            Just(CheckpointStep::Memory),
            Just(CheckpointStep::Done),
            Just(CheckpointStep::Failed),
        ];
        let result = prop_oneof![Just(0i32), Just(i32::MIN), Just(i32::MAX), -10..10i32, any::<i32>()];
        prop_oneof![
            (core_id(), vcpu_id()).prop_map(|(core, vcpu)| TraceKind::VcpuRun { core, vcpu }),
            (core_id(), vcpu_id()).prop_map(|(core, vcpu)| TraceKind::VcpuPreempt { core, vcpu }),
            (core_id(), vcpu_id()).prop_map(|(core, vcpu)| TraceKind::VcpuBlock { core, vcpu }),
            (core_id(), vcpu_id()).prop_map(|(core, vcpu)| TraceKind::VcpuWake { core, vcpu }),
            (core_id(), vcpu_id()).prop_map(|(core, vcpu)| TraceKind::VcpuPark { core, vcpu }),
            (core_id(), vcpu_id()).prop_map(|(core, vcpu)| TraceKind::VcpuUnpark { core, vcpu }),
            (vcpu_id(), stop).prop_map(|(vcpu, reason)| TraceKind::VcpuStop { vcpu, reason }),
            (vcpu_id(), core_id(), core_id()).prop_map(|(vcpu, from, to)| TraceKind::VcpuMigrate { vcpu, from, to }),
            (core_id(), state).prop_map(|(core, state)| TraceKind::CoreState { core, state }),
            (vm_id(), vcpu_id(), call, result)
                .prop_map(|(vm, vcpu, call, result)| { TraceKind::GuestPsci { vm, vcpu, call, result } }),
            (vcpu_id(), u64s(), u64s()).prop_map(|(vcpu, d, l)| TraceKind::DeadlineMiss {
                vcpu,
                deadline: Instant(d),
                late: Nanos(l)
            }),
            (vm_id(), vcpu_id(), fault).prop_map(|(vm, vcpu, fault)| TraceKind::GuestFault { vm, vcpu, fault }),
            (vm_id(), step, u64s()).prop_map(|(vm, step, bytes)| TraceKind::Checkpoint { vm, step, bytes }),
            (core_id(), vcpu_id(), u64s(), u64s(), any::<bool>()).prop_map(|(core, vcpu, b, p, admitted)| {
                TraceKind::Reservation { core, vcpu, budget: Nanos(b), period: Nanos(p), admitted }
            }),
            (any::<u32>(), u64s()).prop_map(|(id, value)| TraceKind::Mark { id, value }),
        ]
    }

    fn trace_event() -> impl Strategy<Value = TraceEvent> {
        (u64s(), trace_kind()).prop_map(|(at, kind)| TraceEvent { at: Instant(at), kind })
    }

    /// A valid line with one character replaced, or cut short, or with a suffix.
    fn mangled_line() -> impl Strategy<Value = String> {
        (trace_event(), any::<usize>(), any::<char>(), 0..3u8, "[ -~é\\t\\r]{0,4}").prop_map(
            |(e, pos, c, how, suffix)| {
                let line = e.to_string();
                let pos = pos % (line.len() + 1);
                match how {
                    0 => line[..pos].to_string(),
                    1 => {
                        let mut s = line[..pos].to_string();
                        s.push(c);
                        s.push_str(line.get(pos + 1..).unwrap_or(""));
                        s
                    }
                    _ => {
                        let mut s = line.clone();
                        s.insert_str(pos, &suffix);
                        s
                    }
                }
            },
        )
    }

    /// Whatever `parse` says about `s`, it says it without panicking, and if it accepts `s` then
    /// `s` is exactly the encoding (up to surrounding whitespace).
    fn check_total(s: &str) -> Result<(), TestCaseError> {
        match TraceEvent::parse(s) {
            Ok(e) => prop_assert_eq!(e.to_string(), s.trim_matches(is_space)),
            Err(err) => {
                let _ = err.to_string();
                if let TraceParseError::BadField { token, .. } | TraceParseError::ExtraToken { token } = err {
                    prop_assert!(token.offset + token.len <= s.len());
                    prop_assert!(s[token.offset..].starts_with(token.excerpt()));
                }
            }
        }
        if let Some(t) = find_in(s) {
            prop_assert!(t.starts_with(PREFIX));
            let _ = TraceEvent::parse(t);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn trace_round_trip(e in trace_event()) {
            let line = e.to_string();
            prop_assert!(line.len() <= MAX_LINE_LEN);
            prop_assert!(line.is_ascii());
            prop_assert!(!line.ends_with(' ') && !line.contains("  "));
            prop_assert_eq!(TraceEvent::parse(&line), Ok(e));
            prop_assert_eq!(TraceEvent::parse(&format!(" {line}\r\n")), Ok(e));
            let console = format!("[vm7] {line}\r");
            prop_assert_eq!(find_in(&console), Some(line.as_str()));
        }

        #[test]
        fn trace_garbage_never_panics(s in any::<String>()) {
            check_total(&s)?;
            check_total(&format!("T {s}"))?;
            check_total(&format!("T 1 {s}"))?;
            check_total(&format!("T 1 run {s}"))?;
        }

        #[test]
        fn trace_ascii_garbage_never_panics(s in "[ -~]{0,40}") {
            check_total(&s)?;
            check_total(&format!("T 1 psci {s}"))?;
            check_total(&format!("T 1 mig {s}"))?;
        }

        #[test]
        fn trace_mangled_lines_never_panic(s in mangled_line()) {
            check_total(&s)?;
        }

        #[test]
        fn trace_truncated_lines_are_rejected(e in trace_event(), cut in any::<usize>()) {
            let line = e.to_string();
            let cut = cut % line.len();
            let short = &line[..cut];
            // A cut inside the last number can still be a valid (different) event.
            if let Ok(other) = TraceEvent::parse(short) {
                prop_assert_ne!(other, e);
            }
        }
    }
}
