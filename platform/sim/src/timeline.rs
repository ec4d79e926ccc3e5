//! The timeline of a run, rebuilt from its trace events: what state each physical core was in,
//! which vCPU it ran, and where each vCPU ran. It is written as a Perfetto / Chrome trace (JSON,
//! [`Timeline::write_perfetto_json`]) and as a PNG picture ([`Timeline::write_png`]).
//!
//! Both platforms feed it: the simulator collects its [`TraceEvent`]s directly, and a QEMU run's
//! console lines are decoded with [`TraceEvent::parse`]. The reconstruction takes the events as
//! they come and never panics:
//! - events need not be sorted (they are, stably, by time); events after the end are ignored, and
//!   so are events that name a core beyond the core count;
//! - a core is assumed `online` until its first event says otherwise;
//! - `run` starts a run (closing whatever the core ran, and wherever else the vCPU ran);
//!   `pre`, `blk`, `park`, `stop` and `mig` end the vCPU's run wherever it is; `core` `online`,
//!   `idle` and `off` end the run on that core. A run or state still open at the end is closed
//!   there.
//! - a core that is not running a vCPU shows the state its last `core` event gave it, except
//!   that an `online` or `busy` core becomes `idle` when its vCPU leaves (the runtime emits no
//!   `idle` event: an online core that ran something and runs nothing now is waiting).
//!
//! See `docs/timeline.md` for what the two files show and how to open them.

#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, BufWriter, Write};

use vcpu_runtime::trace::{CoreState, TraceEvent, TraceKind};
use vcpu_runtime::{CoreId, Instant, Nanos, VcpuId, VmId};

// ---------------------------------------------------------------------------------------------
// The model.

/// An interval during which a core was in one state. A core's intervals tile the timeline:
/// they are sorted, adjacent, and never empty; two neighbours never have the same state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateInterval {
    pub from: Instant,
    pub to: Instant,
    pub state: CoreState,
}

/// An interval during which a vCPU ran on a core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunInterval {
    pub core: CoreId,
    pub vcpu: VcpuId,
    pub from: Instant,
    pub to: Instant,
    /// Why the run ended.
    pub end: RunEnd,
}

/// Why a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// `pre`: descheduled while still runnable.
    Preempted,
    /// `blk`: blocked in WFI.
    Blocked,
    /// `park`: the guest turned the vCPU off.
    Parked,
    /// `stop`: the vCPU stopped for good.
    Stopped,
    /// `mig`: handed over to another core.
    Migrated,
    /// Another vCPU started on the core without an event ending this one.
    Replaced,
    /// The vCPU started on another core without an event ending this run.
    RanElsewhere,
    /// A `core` event (`online`, `idle` or `off`) said the core runs nothing.
    Core(CoreState),
    /// Still running at the end of the timeline.
    Open,
}

impl RunEnd {
    /// A short word for reports and trace arguments.
    pub const fn word(self) -> &'static str {
        match self {
            RunEnd::Preempted => "preempted",
            RunEnd::Blocked => "blocked",
            RunEnd::Parked => "parked",
            RunEnd::Stopped => "stopped",
            RunEnd::Migrated => "migrated",
            RunEnd::Replaced => "replaced",
            RunEnd::RanElsewhere => "ran_elsewhere",
            RunEnd::Core(CoreState::Online) => "core_online",
            RunEnd::Core(CoreState::Idle) => "core_idle",
            RunEnd::Core(CoreState::Off) => "core_off",
            RunEnd::Core(CoreState::Busy) => "core_busy",
            RunEnd::Core(CoreState::Draining) => "core_drain",
            RunEnd::Open => "open",
        }
    }
}

/// A core's power over an interval: the optional power overlay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PowerSpan {
    pub core: CoreId,
    pub from: Instant,
    pub to: Instant,
    /// Microwatts.
    pub power_uw: u64,
}

/// Time a core spent in each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Residency {
    pub online: Nanos,
    pub busy: Nanos,
    pub idle: Nanos,
    pub draining: Nanos,
    pub off: Nanos,
}

impl Residency {
    /// Time spent in `state`.
    pub fn of(&self, state: CoreState) -> Nanos {
        match state {
            CoreState::Online => self.online,
            CoreState::Busy => self.busy,
            CoreState::Idle => self.idle,
            CoreState::Draining => self.draining,
            CoreState::Off => self.off,
        }
    }

    /// Time in all states: the length of the timeline.
    pub fn total(&self) -> Nanos {
        self.online + self.busy + self.idle + self.draining + self.off
    }

    fn add(&mut self, state: CoreState, d: Nanos) {
        let slot = match state {
            CoreState::Online => &mut self.online,
            CoreState::Busy => &mut self.busy,
            CoreState::Idle => &mut self.idle,
            CoreState::Draining => &mut self.draining,
            CoreState::Off => &mut self.off,
        };
        *slot += d;
    }
}

/// A piece of a core's timeline with one state and, when busy, one vCPU (the finest grain:
/// what the picture samples).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    from: Instant,
    to: Instant,
    state: CoreState,
    vcpu: Option<VcpuId>,
}

#[derive(Clone, Debug, Default)]
struct CoreLine {
    segments: Vec<Segment>,
    states: Vec<StateInterval>,
    runs: Vec<RunInterval>,
}

/// The timeline of a run. See the module documentation for how it is rebuilt.
#[derive(Clone, Debug)]
pub struct Timeline {
    start: Instant,
    end: Instant,
    cores: Vec<CoreLine>,
    /// Every vCPU that an event or a name mentions, with its runs in time order.
    vcpus: BTreeMap<VcpuId, Vec<RunInterval>>,
    /// The events shown as instants (migrations, misses, faults, PSCI calls, ...), in time order.
    markers: Vec<TraceEvent>,
    vcpu_names: BTreeMap<VcpuId, String>,
    vm_names: BTreeMap<VmId, String>,
    /// Per core, sorted and not overlapping.
    power: Vec<Vec<PowerSpan>>,
    title: Option<String>,
    ignored: usize,
}

/// What the reconstruction tracks for one core while it reads the events.
#[derive(Clone, Copy, Debug)]
struct CoreTrack {
    /// The state of the last `core` event (or derived when a vCPU leaves).
    declared: CoreState,
    /// The vCPU running now, since when.
    current: Option<(VcpuId, Instant)>,
    /// The state shown now, since when.
    shown: (CoreState, Option<VcpuId>),
    since: Instant,
}

struct Builder {
    start: Instant,
    end: Instant,
    lines: Vec<CoreLine>,
    tracks: Vec<CoreTrack>,
    /// Per vCPU id: the core it runs on now.
    on: Vec<Option<CoreId>>,
    seen: Vec<bool>,
    vcpu_runs: BTreeMap<VcpuId, Vec<RunInterval>>,
    markers: Vec<TraceEvent>,
    ignored: usize,
}

impl Builder {
    fn new(cores: usize, start: Instant, end: Instant) -> Builder {
        let track = CoreTrack {
            declared: CoreState::Online,
            current: None,
            shown: (CoreState::Online, None),
            since: Instant::ZERO,
        };
        Builder {
            start,
            end,
            lines: vec![CoreLine::default(); cores],
            tracks: vec![track; cores],
            on: Vec::new(),
            seen: Vec::new(),
            vcpu_runs: BTreeMap::new(),
            markers: Vec::new(),
            ignored: 0,
        }
    }

    fn core(&self, core: CoreId) -> Option<usize> {
        (core.index() < self.tracks.len()).then_some(core.index())
    }

    fn note(&mut self, vcpu: VcpuId) {
        let i = vcpu.index();
        if i >= self.seen.len() {
            self.seen.resize(i + 1, false);
            self.on.resize(i + 1, None);
        }
        self.seen[i] = true;
    }

    fn clip(&self, from: Instant, to: Instant) -> Option<(Instant, Instant)> {
        let (from, to) = (from.max(self.start), to.min(self.end));
        (from < to).then_some((from, to))
    }

    fn push_segment(&mut self, c: usize, from: Instant, to: Instant, shown: (CoreState, Option<VcpuId>)) {
        let Some((from, to)) = self.clip(from, to) else { return };
        let line = &mut self.lines[c];
        let (state, vcpu) = shown;
        match line.segments.last_mut() {
            Some(last) if last.to == from && last.state == state && last.vcpu == vcpu => last.to = to,
            _ => line.segments.push(Segment { from, to, state, vcpu }),
        }
        match line.states.last_mut() {
            Some(last) if last.to == from && last.state == state => last.to = to,
            _ => line.states.push(StateInterval { from, to, state }),
        }
    }

    fn push_run(&mut self, run: RunInterval) {
        let Some((from, to)) = self.clip(run.from, run.to) else { return };
        let run = RunInterval { from, to, ..run };
        let extend = |list: &mut Vec<RunInterval>| match list.last_mut() {
            Some(last) if last.to == from && last.core == run.core && last.vcpu == run.vcpu => {
                last.to = to;
                last.end = run.end;
            }
            _ => list.push(run),
        };
        extend(&mut self.lines[run.core.index()].runs);
        extend(self.vcpu_runs.entry(run.vcpu).or_default());
    }

    /// Ends the run on core `c` at `t`, if any.
    fn close_run(&mut self, c: usize, t: Instant, end: RunEnd) {
        let Some((vcpu, since)) = self.tracks[c].current.take() else { return };
        if let Some(slot) = self.on.get_mut(vcpu.index()) {
            *slot = None;
        }
        let track = &mut self.tracks[c];
        if matches!(track.declared, CoreState::Online | CoreState::Busy) {
            track.declared = CoreState::Idle;
        }
        self.push_run(RunInterval { core: CoreId(c as u16), vcpu, from: since, to: t, end });
    }

    /// Brings what core `c` shows up to date at `t`.
    fn refresh(&mut self, c: usize, t: Instant) {
        let track = self.tracks[c];
        let shown = match track.current {
            Some((vcpu, _)) => (CoreState::Busy, Some(vcpu)),
            None => (track.declared, None),
        };
        if shown != track.shown {
            self.push_segment(c, track.since, t, track.shown);
            self.tracks[c].shown = shown;
            self.tracks[c].since = t;
        }
    }

    /// The vCPU stopped running (wherever it ran).
    fn leave(&mut self, vcpu: VcpuId, t: Instant, end: RunEnd) {
        self.note(vcpu);
        if let Some(core) = self.on[vcpu.index()] {
            let c = core.index();
            self.close_run(c, t, end);
            self.refresh(c, t);
        }
    }

    fn marker(&mut self, e: &TraceEvent) {
        if e.at >= self.start {
            self.markers.push(*e);
        }
    }

    fn event(&mut self, e: &TraceEvent) {
        let t = e.at;
        match e.kind {
            TraceKind::VcpuRun { core, vcpu } => {
                self.note(vcpu);
                let Some(c) = self.core(core) else {
                    self.ignored += 1;
                    return;
                };
                if matches!(self.tracks[c].current, Some((v, _)) if v == vcpu) {
                    return;
                }
                self.close_run(c, t, RunEnd::Replaced);
                if let Some(other) = self.on[vcpu.index()] {
                    let o = other.index();
                    self.close_run(o, t, RunEnd::RanElsewhere);
                    self.refresh(o, t);
                }
                let track = &mut self.tracks[c];
                track.current = Some((vcpu, t));
                if track.declared == CoreState::Off {
                    track.declared = CoreState::Online;
                }
                self.on[vcpu.index()] = Some(core);
                self.refresh(c, t);
            }
            TraceKind::VcpuPreempt { vcpu, .. } => self.leave(vcpu, t, RunEnd::Preempted),
            TraceKind::VcpuBlock { vcpu, .. } => self.leave(vcpu, t, RunEnd::Blocked),
            TraceKind::VcpuPark { vcpu, .. } => {
                self.leave(vcpu, t, RunEnd::Parked);
                self.marker(e);
            }
            TraceKind::VcpuStop { vcpu, .. } => {
                self.leave(vcpu, t, RunEnd::Stopped);
                self.marker(e);
            }
            TraceKind::VcpuMigrate { vcpu, .. } => {
                self.leave(vcpu, t, RunEnd::Migrated);
                self.marker(e);
            }
            TraceKind::VcpuWake { vcpu, .. } => self.note(vcpu),
            TraceKind::VcpuUnpark { vcpu, .. } => {
                self.note(vcpu);
                self.marker(e);
            }
            TraceKind::CoreState { core, state } => {
                let Some(c) = self.core(core) else {
                    self.ignored += 1;
                    return;
                };
                if matches!(state, CoreState::Online | CoreState::Idle | CoreState::Off) {
                    self.close_run(c, t, RunEnd::Core(state));
                }
                self.tracks[c].declared = state;
                self.refresh(c, t);
            }
            TraceKind::GuestPsci { vcpu, .. }
            | TraceKind::DeadlineMiss { vcpu, .. }
            | TraceKind::GuestFault { vcpu, .. } => {
                self.note(vcpu);
                self.marker(e);
            }
            TraceKind::Reservation { core, vcpu, .. } => {
                self.note(vcpu);
                if self.core(core).is_some() {
                    self.marker(e);
                } else {
                    self.ignored += 1;
                }
            }
            TraceKind::Checkpoint { .. } | TraceKind::Mark { .. } => self.marker(e),
        }
    }

    fn finish(mut self) -> (Vec<CoreLine>, BTreeMap<VcpuId, Vec<RunInterval>>, Vec<TraceEvent>, usize) {
        let end = self.end;
        for c in 0..self.tracks.len() {
            let track = self.tracks[c];
            if let Some((vcpu, since)) = track.current {
                self.push_run(RunInterval { core: CoreId(c as u16), vcpu, from: since, to: end, end: RunEnd::Open });
            }
            self.push_segment(c, track.since, end, track.shown);
        }
        for (i, seen) in self.seen.iter().enumerate() {
            if *seen {
                self.vcpu_runs.entry(VcpuId(i as u16)).or_default();
            }
        }
        (self.lines, self.vcpu_runs, self.markers, self.ignored)
    }
}

impl Timeline {
    /// The timeline of `cores` cores from time zero to `run_end`, rebuilt from `events`.
    pub fn new(events: &[TraceEvent], cores: usize, run_end: Instant) -> Timeline {
        Timeline::between(events, cores, Instant::ZERO, run_end)
    }

    /// The timeline of `cores` cores from `start` to `end`. Events before `start` still set the
    /// state the timeline starts in; instants before it are left out.
    pub fn between(events: &[TraceEvent], cores: usize, start: Instant, end: Instant) -> Timeline {
        let end = end.max(start);
        // Core numbers are u16.
        let cores = cores.min(1 << 16);
        let events: Cow<'_, [TraceEvent]> = if events.windows(2).all(|w| w[0].at <= w[1].at) {
            Cow::Borrowed(events)
        } else {
            let mut sorted = events.to_vec();
            sorted.sort_by_key(|e| e.at);
            Cow::Owned(sorted)
        };
        let mut b = Builder::new(cores, start, end);
        for (i, e) in events.iter().enumerate() {
            if e.at > end {
                b.ignored += events.len() - i;
                break;
            }
            b.event(e);
        }
        let (cores, vcpus, markers, ignored) = b.finish();
        Timeline {
            start,
            end,
            power: vec![Vec::new(); cores.len()],
            cores,
            vcpus,
            markers,
            vcpu_names: BTreeMap::new(),
            vm_names: BTreeMap::new(),
            title: None,
            ignored,
        }
    }

    /// Names vCPUs (e.g. `work/0`); a named vCPU gets a row even if no event mentions it.
    pub fn with_vcpu_names<S: Into<String>>(mut self, names: impl IntoIterator<Item = (VcpuId, S)>) -> Timeline {
        for (vcpu, name) in names {
            self.vcpus.entry(vcpu).or_default();
            self.vcpu_names.insert(vcpu, name.into());
        }
        self
    }

    /// Names VMs (used for the VM events: PSCI calls, faults, checkpoints).
    pub fn with_vm_names<S: Into<String>>(mut self, names: impl IntoIterator<Item = (VmId, S)>) -> Timeline {
        self.vm_names.extend(names.into_iter().map(|(vm, name)| (vm, name.into())));
        self
    }

    /// A title for the picture and the trace's metadata (e.g. the scenario's name).
    pub fn with_title(mut self, title: impl Into<String>) -> Timeline {
        self.title = Some(title.into());
        self
    }

    /// Adds a power overlay: spans of constant power per core. Spans are clipped to the
    /// timeline; spans naming an unknown core, and the parts of a span that overlap an earlier
    /// span of the same core, are dropped.
    pub fn with_power(mut self, spans: impl IntoIterator<Item = PowerSpan>) -> Timeline {
        for s in spans {
            if let (Some(list), Some((from, to))) =
                (self.power.get_mut(s.core.index()), clip(s.from, s.to, self.start, self.end))
            {
                list.push(PowerSpan { from, to, ..s });
            }
        }
        for list in &mut self.power {
            list.sort_by_key(|s| (s.from, s.to));
            let mut kept: Vec<PowerSpan> = Vec::with_capacity(list.len());
            for s in list.drain(..) {
                let from = kept.last().map_or(s.from, |l| s.from.max(l.to));
                if from < s.to {
                    kept.push(PowerSpan { from, ..s });
                }
            }
            *list = kept;
        }
        self
    }

    /// Adds a power overlay from a power per core and state (e.g. an energy model's idle and
    /// active power): one span per state interval.
    pub fn with_state_power(self, mut power_uw: impl FnMut(CoreId, CoreState) -> u64) -> Timeline {
        let spans: Vec<PowerSpan> = (0..self.cores.len())
            .flat_map(|c| {
                let core = CoreId(c as u16);
                self.cores[c].states.iter().map(move |s| (core, *s))
            })
            .map(|(core, s)| PowerSpan { core, from: s.from, to: s.to, power_uw: power_uw(core, s.state) })
            .collect();
        self.with_power(spans)
    }

    pub fn start(&self) -> Instant {
        self.start
    }
    pub fn end(&self) -> Instant {
        self.end
    }
    /// The number of cores.
    pub fn cores(&self) -> usize {
        self.cores.len()
    }
    /// Every vCPU that an event or a name mentions, in id order.
    pub fn vcpus(&self) -> impl Iterator<Item = VcpuId> + '_ {
        self.vcpus.keys().copied()
    }
    /// Events that were not used: after the end, or naming a core beyond the core count.
    pub fn ignored_events(&self) -> usize {
        self.ignored
    }

    /// The states of a core, tiling the timeline (empty for an unknown core or an empty
    /// timeline).
    pub fn core_states(&self, core: CoreId) -> &[StateInterval] {
        self.cores.get(core.index()).map_or(&[], |c| &c.states)
    }

    /// The runs on a core, in time order.
    pub fn core_runs(&self, core: CoreId) -> &[RunInterval] {
        self.cores.get(core.index()).map_or(&[], |c| &c.runs)
    }

    /// Where a vCPU ran, in time order.
    pub fn vcpu_runs(&self, vcpu: VcpuId) -> &[RunInterval] {
        self.vcpus.get(&vcpu).map_or(&[], |r| r)
    }

    /// The events shown as instants: `mig`, `miss`, `fault`, `psci`, `park`, `unpark`, `stop`,
    /// `resv`, `ckpt`, `mark`; in time order.
    pub fn markers(&self) -> &[TraceEvent] {
        &self.markers
    }

    /// The power overlay of a core (sorted, not overlapping; empty without an overlay).
    pub fn power(&self, core: CoreId) -> &[PowerSpan] {
        self.power.get(core.index()).map_or(&[], |p| p)
    }

    /// Time the core spent in each state; the total is the timeline's length.
    pub fn residency(&self, core: CoreId) -> Residency {
        let mut r = Residency::default();
        for s in self.core_states(core) {
            r.add(s.state, s.to - s.from);
        }
        r
    }

    /// The vCPU's name, or `vcpu N`.
    pub fn vcpu_label(&self, vcpu: VcpuId) -> String {
        self.vcpu_names.get(&vcpu).cloned().unwrap_or_else(|| format!("vcpu {}", vcpu.0))
    }

    /// The VM's name, or `vm N`.
    pub fn vm_label(&self, vm: VmId) -> String {
        self.vm_names.get(&vm).cloned().unwrap_or_else(|| format!("vm {}", vm.0))
    }

    fn has_power(&self) -> bool {
        self.power.iter().any(|p| !p.is_empty())
    }
}

fn clip(from: Instant, to: Instant, start: Instant, end: Instant) -> Option<(Instant, Instant)> {
    let (from, to) = (from.max(start), to.min(end));
    (from < to).then_some((from, to))
}

// ---------------------------------------------------------------------------------------------
// Perfetto / Chrome trace JSON.

/// The `pid` of the process that holds one thread per core.
pub const PERFETTO_CORES_PID: u32 = 1;
/// The `pid` of the process that holds one thread per vCPU.
pub const PERFETTO_VCPUS_PID: u32 = 2;

/// The `tid` given to the process-wide instants (checkpoints, marks) of the `vcpus` process.
const PERFETTO_VCPUS_PROCESS_TID: u32 = 100_000;

/// The `tid` of a core's thread.
pub fn perfetto_core_tid(core: CoreId) -> u32 {
    1 + u32::from(core.0)
}

/// The `tid` of a vCPU's thread.
pub fn perfetto_vcpu_tid(vcpu: VcpuId) -> u32 {
    100_001 + u32::from(vcpu.0)
}

/// Nanoseconds written as exact decimal microseconds (the trace format's unit).
struct Us(u64);

impl fmt::Display for Us {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (i, frac) = (self.0 / 1000, self.0 % 1000);
        if frac == 0 {
            write!(f, "{i}")
        } else if frac % 100 == 0 {
            write!(f, "{i}.{}", frac / 100)
        } else if frac % 10 == 0 {
            write!(f, "{i}.{:02}", frac / 10)
        } else {
            write!(f, "{i}.{frac:03}")
        }
    }
}

/// A string written as a JSON string literal.
struct JStr<'a>(&'a str);

impl fmt::Display for JStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if (c as u32) < 0x20 => write!(f, "\\u{:04x}", c as u32)?,
                c => write!(f, "{c}")?,
            }
        }
        f.write_str("\"")
    }
}

/// Writes the events of the `traceEvents` array, separated by commas.
struct Events<W: Write> {
    w: W,
    first: bool,
}

impl<W: Write> Events<W> {
    fn event(&mut self, body: fmt::Arguments<'_>) -> io::Result<()> {
        let sep = if self.first { "" } else { ",\n" };
        self.first = false;
        write!(self.w, "{sep}{{{body}}}")
    }

    fn metadata(&mut self, pid: u32, tid: Option<u32>, what: &str, args: fmt::Arguments<'_>) -> io::Result<()> {
        match tid {
            Some(tid) => self.event(format_args!(
                "\"ph\":\"M\",\"pid\":{pid},\"tid\":{tid},\"name\":\"{what}\",\"args\":{{{args}}}"
            )),
            None => self.event(format_args!("\"ph\":\"M\",\"pid\":{pid},\"name\":\"{what}\",\"args\":{{{args}}}")),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn slice(
        &mut self,
        pid: u32,
        tid: u32,
        from: Instant,
        to: Instant,
        name: &str,
        cat: &str,
        cname: Option<&str>,
        args: fmt::Arguments<'_>,
    ) -> io::Result<()> {
        let (ts, dur) = (Us(from.as_nanos()), Us((to - from).as_nanos()));
        match cname {
            Some(c) => self.event(format_args!(
                "\"ph\":\"X\",\"pid\":{pid},\"tid\":{tid},\"ts\":{ts},\"dur\":{dur},\"name\":{},\"cat\":\"{cat}\",\
                 \"cname\":\"{c}\",\"args\":{{{args}}}",
                JStr(name)
            )),
            None => self.event(format_args!(
                "\"ph\":\"X\",\"pid\":{pid},\"tid\":{tid},\"ts\":{ts},\"dur\":{dur},\"name\":{},\"cat\":\"{cat}\",\
                 \"args\":{{{args}}}",
                JStr(name)
            )),
        }
    }

    fn instant(
        &mut self,
        pid: u32,
        tid: Option<u32>,
        at: Instant,
        name: &str,
        args: fmt::Arguments<'_>,
    ) -> io::Result<()> {
        let ts = Us(at.as_nanos());
        match tid {
            Some(tid) => self.event(format_args!(
                "\"ph\":\"i\",\"s\":\"t\",\"pid\":{pid},\"tid\":{tid},\"ts\":{ts},\"name\":{},\"cat\":\"event\",\
                 \"args\":{{{args}}}",
                JStr(name)
            )),
            None => self.event(format_args!(
                "\"ph\":\"i\",\"s\":\"p\",\"pid\":{pid},\"tid\":{PERFETTO_VCPUS_PROCESS_TID},\"ts\":{ts},\"name\":{},\"cat\":\"event\",\
                 \"args\":{{{args}}}",
                JStr(name)
            )),
        }
    }
}

/// Microwatts as exact decimal milliwatts.
struct Mw(u64);

impl fmt::Display for Mw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Us(self.0).fmt(f)
    }
}

fn state_cname(state: CoreState) -> &'static str {
    match state {
        CoreState::Off => "black",
        CoreState::Idle => "grey",
        CoreState::Online => "good",
        CoreState::Draining => "yellow",
        CoreState::Busy => "thread_state_running",
    }
}

impl Timeline {
    /// Writes the timeline in the Chrome Trace Event Format (a JSON object), which
    /// ui.perfetto.dev and chrome://tracing open:
    /// - process `cores` (pid [`PERFETTO_CORES_PID`]): one thread per core with a slice per
    ///   state interval (`off`, `idle`, `online`, `drain`, `busy`) and, nested in `busy`, a
    ///   slice per vCPU run named by the vCPU; `resv` instants; the power counters
    ///   (`core N power`, in mW) when there is an overlay;
    /// - process `vcpus` (pid [`PERFETTO_VCPUS_PID`]): one thread per vCPU with a slice per run
    ///   named by the core (`core N`), and instants for migrations, deadline misses, faults,
    ///   PSCI calls, park, unpark and stop;
    /// - global instants for checkpoints and marks.
    ///
    /// Times are microseconds written as exact decimals (nanosecond precision).
    pub fn write_perfetto_json(&self, w: impl Write) -> io::Result<()> {
        let mut w = BufWriter::new(w);
        writeln!(
            w,
            "{{\"displayTimeUnit\":\"ns\",\"otherData\":{{\"generator\":\"platform-sim timeline\",\"title\":{},\
             \"start_ns\":{},\"end_ns\":{}}},\"traceEvents\":[",
            JStr(self.title.as_deref().unwrap_or("")),
            self.start.as_nanos(),
            self.end.as_nanos()
        )?;
        let mut ev = Events { w: &mut w, first: true };
        let (cp, vp) = (PERFETTO_CORES_PID, PERFETTO_VCPUS_PID);
        ev.metadata(cp, None, "process_name", format_args!("\"name\":\"cores\""))?;
        ev.metadata(cp, None, "process_sort_index", format_args!("\"sort_index\":1"))?;
        ev.metadata(vp, None, "process_name", format_args!("\"name\":\"vcpus\""))?;
        ev.metadata(vp, None, "process_sort_index", format_args!("\"sort_index\":2"))?;

        for (c, line) in self.cores.iter().enumerate() {
            let core = CoreId(c as u16);
            let tid = perfetto_core_tid(core);
            ev.metadata(cp, Some(tid), "thread_name", format_args!("\"name\":\"core {c}\""))?;
            ev.metadata(cp, Some(tid), "thread_sort_index", format_args!("\"sort_index\":{c}"))?;
            // Each state slice, then the runs it contains: a parent before its children.
            let mut runs = line.runs.iter().peekable();
            for s in &line.states {
                let word = s.state.word();
                ev.slice(
                    cp,
                    tid,
                    s.from,
                    s.to,
                    word,
                    "core",
                    Some(state_cname(s.state)),
                    format_args!("\"state\":\"{word}\""),
                )?;
                while let Some(r) = runs.next_if(|r| r.from < s.to) {
                    ev.slice(
                        cp,
                        tid,
                        r.from,
                        r.to,
                        &self.vcpu_label(r.vcpu),
                        "vcpu",
                        None,
                        format_args!("\"vcpu\":{},\"end\":\"{}\"", r.vcpu.0, r.end.word()),
                    )?;
                }
            }
        }
        for (&vcpu, runs) in &self.vcpus {
            let tid = perfetto_vcpu_tid(vcpu);
            let name = format!("{} (v{})", self.vcpu_label(vcpu), vcpu.0);
            ev.metadata(vp, Some(tid), "thread_name", format_args!("\"name\":{}", JStr(&name)))?;
            ev.metadata(vp, Some(tid), "thread_sort_index", format_args!("\"sort_index\":{}", vcpu.0))?;
            for r in runs {
                let name = format!("core {}", r.core.0);
                ev.slice(
                    vp,
                    tid,
                    r.from,
                    r.to,
                    &name,
                    "placement",
                    None,
                    format_args!("\"core\":{},\"end\":\"{}\"", r.core.0, r.end.word()),
                )?;
            }
        }
        for m in &self.markers {
            self.write_marker(&mut ev, m)?;
        }
        for (c, spans) in self.power.iter().enumerate() {
            let name = format!("core {c} power");
            let mut prev_end: Option<Instant> = None;
            for s in spans {
                if prev_end.is_some_and(|e| e < s.from) {
                    ev.event(format_args!(
                        "\"ph\":\"C\",\"pid\":{cp},\"ts\":{},\"name\":{},\"args\":{{\"mW\":0}}",
                        Us(prev_end.unwrap_or(s.from).as_nanos()),
                        JStr(&name)
                    ))?;
                }
                ev.event(format_args!(
                    "\"ph\":\"C\",\"pid\":{cp},\"ts\":{},\"name\":{},\"args\":{{\"mW\":{}}}",
                    Us(s.from.as_nanos()),
                    JStr(&name),
                    Mw(s.power_uw)
                ))?;
                prev_end = Some(s.to);
            }
            if let Some(e) = prev_end {
                ev.event(format_args!(
                    "\"ph\":\"C\",\"pid\":{cp},\"ts\":{},\"name\":{},\"args\":{{\"mW\":0}}",
                    Us(e.as_nanos()),
                    JStr(&name)
                ))?;
            }
        }
        write!(w, "\n]}}\n")?;
        w.flush()
    }

    fn write_marker<W: Write>(&self, ev: &mut Events<W>, m: &TraceEvent) -> io::Result<()> {
        let vp = PERFETTO_VCPUS_PID;
        let at = m.at;
        match m.kind {
            TraceKind::VcpuMigrate { vcpu, from, to } => ev.instant(
                vp,
                Some(perfetto_vcpu_tid(vcpu)),
                at,
                &format!("migrate c{}>c{}", from.0, to.0),
                format_args!("\"from\":{},\"to\":{}", from.0, to.0),
            ),
            TraceKind::DeadlineMiss { vcpu, deadline, late } => ev.instant(
                vp,
                Some(perfetto_vcpu_tid(vcpu)),
                at,
                "deadline miss",
                format_args!("\"deadline_ns\":{},\"late_ns\":{}", deadline.as_nanos(), late.as_nanos()),
            ),
            TraceKind::GuestFault { vm, vcpu, fault } => ev.instant(
                vp,
                Some(perfetto_vcpu_tid(vcpu)),
                at,
                &format!("fault {fault}"),
                format_args!("\"vm\":{},\"vm_name\":{},\"fault\":\"{fault}\"", vm.0, JStr(&self.vm_label(vm))),
            ),
            TraceKind::GuestPsci { vm, vcpu, call, result } => ev.instant(
                vp,
                Some(perfetto_vcpu_tid(vcpu)),
                at,
                &format!("psci {call}"),
                format_args!("\"vm\":{},\"vm_name\":{},\"result\":{result}", vm.0, JStr(&self.vm_label(vm))),
            ),
            TraceKind::VcpuPark { core, vcpu } | TraceKind::VcpuUnpark { core, vcpu } => {
                ev.instant(vp, Some(perfetto_vcpu_tid(vcpu)), at, m.kind.tag(), format_args!("\"core\":{}", core.0))
            }
            TraceKind::VcpuStop { vcpu, reason } => {
                ev.instant(vp, Some(perfetto_vcpu_tid(vcpu)), at, &format!("stop {reason}"), format_args!(""))
            }
            TraceKind::Reservation { core, vcpu, budget, period, admitted } => ev.instant(
                PERFETTO_CORES_PID,
                Some(perfetto_core_tid(core)),
                at,
                if admitted { "resv admit" } else { "resv reject" },
                format_args!(
                    "\"vcpu\":{},\"budget_ns\":{},\"period_ns\":{}",
                    vcpu.0,
                    budget.as_nanos(),
                    period.as_nanos()
                ),
            ),
            TraceKind::Checkpoint { vm, step, bytes } => ev.instant(
                vp,
                None,
                at,
                &format!("ckpt {} {step}", self.vm_label(vm)),
                format_args!("\"vm\":{},\"bytes\":{bytes}", vm.0),
            ),
            TraceKind::Mark { id, value } => {
                ev.instant(vp, None, at, &format!("mark {id}"), format_args!("\"id\":{id},\"value\":{value}"))
            }
            _ => Ok(()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// PNG.

/// An RGB colour.
pub type Rgb = [u8; 3];

pub const BACKGROUND: Rgb = [255, 255, 255];
pub const TEXT: Rgb = [24, 24, 24];
const GRID: Rgb = [234, 234, 234];
const AXIS: Rgb = [70, 70, 70];
/// Deadline misses, on the vCPU's row.
pub const MISS_COLOR: Rgb = [220, 0, 0];
/// Migrations, under the vCPU's row.
pub const MIGRATION_COLOR: Rgb = [0, 0, 0];
/// Guest faults, on the vCPU's row.
pub const FAULT_COLOR: Rgb = [150, 0, 170];
/// The power overlay's bars.
pub const POWER_COLOR: Rgb = [205, 95, 0];

/// The colour of a core state in the core rows (`busy` is drawn in the running vCPU's colour;
/// this one is for a core that is busy with no vCPU known).
pub const fn state_color(state: CoreState) -> Rgb {
    match state {
        CoreState::Off => [64, 64, 64],
        CoreState::Idle => [214, 214, 214],
        CoreState::Online => [176, 224, 176],
        CoreState::Draining => [246, 200, 120],
        CoreState::Busy => [112, 112, 150],
    }
}

/// Twelve colours apart from each other, from the state colours and from the marker colours
/// (no pure red: that is a deadline miss).
const VCPU_PALETTE: [Rgb; 12] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [190, 140, 0],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [23, 190, 207],
    [188, 189, 34],
    [26, 85, 153],
    [0, 128, 128],
    [180, 40, 120],
];

/// Eight colours for the cores (the vCPU rows show no state colours, only these and the
/// markers).
const CORE_PALETTE: [Rgb; 8] = [
    [31, 119, 180],
    [44, 160, 44],
    [255, 127, 14],
    [23, 190, 207],
    [188, 189, 34],
    [140, 86, 75],
    [227, 119, 194],
    [96, 96, 96],
];

/// A vCPU's colour (in the core rows), from a fixed palette by id.
pub const fn vcpu_color(vcpu: VcpuId) -> Rgb {
    VCPU_PALETTE[vcpu.0 as usize % VCPU_PALETTE.len()]
}

/// A core's colour (in the vCPU rows), from a fixed palette by id.
pub const fn core_color(core: CoreId) -> Rgb {
    CORE_PALETTE[core.0 as usize % CORE_PALETTE.len()]
}

const MARGIN: u32 = 8;
const ROW_H: u32 = 14;
const ROW_GAP: u32 = 4;
const POWER_H: u32 = 20;
const SWATCH: u32 = 8;
const RIGHT_MARGIN: u32 = 28;
const MAX_WIDTH: u32 = 16_384;
const MAX_LABEL_CHARS: usize = 24;
/// More vCPU rows than this are left out of the picture (the JSON has them all).
pub const MAX_VCPU_ROWS: usize = 256;
/// More core rows than this are left out of the picture (the runtime has at most 64 cores).
pub const MAX_CORE_ROWS: usize = 256;
const MIN_TICK_PX: u64 = 70;
const LEGEND_ROW_H: u32 = 14;

/// Where things are in the picture [`Timeline::write_png`] draws for a given width.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PngLayout {
    pub width: u32,
    pub height: u32,
    /// The plot spans columns `plot_x .. plot_x + plot_width`.
    pub plot_x: u32,
    pub plot_width: u32,
    /// Top row of each core's bar (each [`PngLayout::row_height`] high), by core (at most
    /// [`MAX_CORE_ROWS`]).
    pub core_rows: Vec<u32>,
    /// Top row of each core's power bar (empty without a power overlay), by core.
    pub power_rows: Vec<u32>,
    /// Top row of each vCPU's bar, for the vCPUs drawn (at most [`MAX_VCPU_ROWS`]).
    pub vcpu_rows: Vec<(VcpuId, u32)>,
    pub row_height: u32,
    pub power_height: u32,
    /// The time axis line.
    pub axis_y: u32,
    start: Instant,
    span: u64,
    title_y: Option<u32>,
    label_x: u32,
    hidden_vcpus: usize,
    more_y: u32,
    legend_y: u32,
    legend_lines: Vec<Vec<(Rgb, String)>>,
    notes_y: u32,
}

impl PngLayout {
    /// The column that shows time `t` (clamped to the plot).
    pub fn x_at(&self, t: Instant) -> u32 {
        if self.span == 0 || self.plot_width == 0 {
            return self.plot_x;
        }
        let off = t.since(self.start).as_nanos().min(self.span);
        let x = (u128::from(off) * u128::from(self.plot_width) / u128::from(self.span)) as u32;
        self.plot_x + x.min(self.plot_width - 1)
    }

    /// The time range column `i` of the plot stands for, at least 1 ns long.
    fn column(&self, i: u32) -> (Instant, Instant) {
        let at = |i: u32| {
            Instant(
                self.start.as_nanos() + (u128::from(self.span) * u128::from(i) / u128::from(self.plot_width)) as u64,
            )
        };
        let (a, b) = (at(i), at(i + 1));
        (a, if b > a { b } else { Instant(a.as_nanos().saturating_add(1)) })
    }
}

fn truncate_label(s: &str) -> String {
    if s.chars().count() <= MAX_LABEL_CHARS {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(MAX_LABEL_CHARS - 2).collect();
        t.push_str("..");
        t
    }
}

fn text_width(s: &str) -> u32 {
    s.chars().count() as u32 * font::ADVANCE
}

impl Timeline {
    fn legend_items(&self) -> Vec<(Rgb, String)> {
        let mut items = vec![
            (state_color(CoreState::Off), "off".to_string()),
            (state_color(CoreState::Idle), "idle".to_string()),
            (state_color(CoreState::Online), "online".to_string()),
            (state_color(CoreState::Draining), "drain".to_string()),
            (state_color(CoreState::Busy), "busy, vCPU unknown".to_string()),
            (MISS_COLOR, "deadline miss".to_string()),
            (MIGRATION_COLOR, "migration".to_string()),
            (FAULT_COLOR, "fault".to_string()),
        ];
        if self.has_power() {
            items.push((POWER_COLOR, format!("power (full bar {} mW)", Mw(self.max_power_uw()))));
        }
        items
    }

    fn max_power_uw(&self) -> u64 {
        self.power.iter().flatten().map(|s| s.power_uw).max().unwrap_or(0)
    }

    /// The picture's layout for a requested width (clamped to what the labels need and to
    /// 16384 pixels).
    pub fn png_layout(&self, width: u32) -> PngLayout {
        let shown: Vec<VcpuId> = self.vcpus.keys().copied().take(MAX_VCPU_ROWS).collect();
        let hidden = self.vcpus.len() - shown.len();
        let cores = self.cores.len().min(MAX_CORE_ROWS);
        let mut label_chars = 6;
        for c in 0..cores {
            label_chars = label_chars.max(format!("core {c} power").len());
        }
        for &v in &shown {
            label_chars = label_chars.max(truncate_label(&self.vcpu_label(v)).chars().count());
        }
        let label_x = MARGIN + SWATCH + 4;
        let plot_x = label_x + label_chars as u32 * font::ADVANCE + 8;
        let width = width.clamp(plot_x + RIGHT_MARGIN + 16, MAX_WIDTH.max(plot_x + RIGHT_MARGIN + 16));
        let plot_width = width - plot_x - RIGHT_MARGIN;

        let mut y = MARGIN;
        let title_y = self.title.as_ref().map(|_| {
            let t = y;
            y += font::LINE + 4;
            t
        });
        let mut core_rows = Vec::new();
        for _ in 0..cores {
            core_rows.push(y);
            y += ROW_H + ROW_GAP;
        }
        let mut power_rows = Vec::new();
        if self.has_power() {
            y += 4;
            for _ in 0..cores {
                power_rows.push(y);
                y += POWER_H + ROW_GAP;
            }
        }
        y += 8;
        let mut vcpu_rows = Vec::new();
        for v in shown {
            vcpu_rows.push((v, y));
            y += ROW_H + ROW_GAP;
        }
        let more_y = y;
        if hidden > 0 {
            y += font::LINE + 2;
        }
        let axis_y = y + 2;
        y = axis_y + 6 + font::LINE + 10;

        // The legend: swatches with words, wrapped to the width.
        let legend_y = y;
        let mut lines: Vec<Vec<(Rgb, String)>> = vec![Vec::new()];
        let mut x = MARGIN;
        for (color, text) in self.legend_items() {
            let w = 10 + 4 + text_width(&text) + 14;
            if x + w > width && x > MARGIN {
                lines.push(Vec::new());
                x = MARGIN;
            }
            if let Some(line) = lines.last_mut() {
                line.push((color, text));
            }
            x += w;
        }
        y += lines.len() as u32 * LEGEND_ROW_H + 2;
        let notes_y = y;
        y += 2 * LEGEND_ROW_H + MARGIN;
        PngLayout {
            width,
            height: y,
            plot_x,
            plot_width,
            core_rows,
            power_rows,
            vcpu_rows,
            row_height: ROW_H,
            power_height: POWER_H,
            axis_y,
            start: self.start,
            span: (self.end - self.start).as_nanos(),
            title_y,
            label_x,
            hidden_vcpus: hidden,
            more_y,
            legend_y,
            legend_lines: lines,
            notes_y,
        }
    }

    /// Draws the picture for a layout of this timeline ([`Timeline::png_layout`]): rows of
    /// pixels, top to bottom, 3 bytes (RGB) each.
    pub fn render(&self, layout: &PngLayout) -> Vec<u8> {
        let mut cv = Canvas::new(layout.width, layout.height);
        let l = layout;
        if let (Some(y), Some(title)) = (l.title_y, &self.title) {
            cv.text(MARGIN, y, title, TEXT);
        }

        // Grid lines at the ticks, under everything.
        let ticks = axis_ticks(self.start, self.end, l.plot_width);
        let top = l.core_rows.first().copied().unwrap_or(l.axis_y);
        for &(t, _) in &ticks.ticks {
            let x = l.x_at(t);
            cv.fill(x, top, 1, l.axis_y - top, GRID);
        }

        // Core rows: the state covering most of each column; busy in the colour of the vCPU
        // that ran most of it.
        for (c, &y) in l.core_rows.iter().enumerate() {
            let core = CoreId(c as u16);
            cv.fill(MARGIN, y + (ROW_H - SWATCH) / 2, SWATCH, SWATCH, core_color(core));
            cv.text(l.label_x, y + 2, &format!("core {c}"), TEXT);
            let Some(line) = self.cores.get(c) else { continue };
            let segs = &line.segments;
            let mut cursor = 0;
            let mut busy: Vec<(Option<VcpuId>, u64)> = Vec::new();
            for i in 0..l.plot_width {
                let (a, b) = l.column(i);
                while cursor < segs.len() && segs[cursor].to <= a {
                    cursor += 1;
                }
                let mut tally = [0u64; 5];
                busy.clear();
                for s in segs[cursor..].iter().take_while(|s| s.from < b) {
                    let d = overlap(s.from, s.to, a, b);
                    tally[state_index(s.state)] += d;
                    if s.state == CoreState::Busy {
                        match busy.iter_mut().find(|(v, _)| *v == s.vcpu) {
                            Some(e) => e.1 += d,
                            None => busy.push((s.vcpu, d)),
                        }
                    }
                }
                // Ties: busy, drain, online, idle, off.
                let mut best = None;
                for state in [CoreState::Busy, CoreState::Draining, CoreState::Online, CoreState::Idle, CoreState::Off]
                {
                    let d = tally[state_index(state)];
                    if d > 0 && best.is_none_or(|(_, bd)| d > bd) {
                        best = Some((state, d));
                    }
                }
                let color = match best {
                    None => continue,
                    Some((CoreState::Busy, _)) => {
                        let mut top: Option<(Option<VcpuId>, u64)> = None;
                        for &(v, d) in &busy {
                            if top.is_none_or(|(tv, td)| d > td || (d == td && v > tv)) {
                                top = Some((v, d));
                            }
                        }
                        match top.and_then(|(v, _)| v) {
                            Some(v) => vcpu_color(v),
                            None => state_color(CoreState::Busy),
                        }
                    }
                    Some((state, _)) => state_color(state),
                };
                cv.fill(l.plot_x + i, y, 1, ROW_H, color);
            }
        }

        // Power rows: the column's average power as a bar, full height at the highest power.
        if !l.power_rows.is_empty() {
            let max = self.max_power_uw().max(1);
            for (c, &y) in l.power_rows.iter().enumerate() {
                cv.text(l.label_x, y + POWER_H - font::LINE + 2, &format!("core {c} power"), TEXT);
                cv.fill(l.plot_x, y + POWER_H - 1, l.plot_width, 1, GRID);
                let Some(spans) = self.power.get(c) else { continue };
                let mut cursor = 0;
                for i in 0..l.plot_width {
                    let (a, b) = l.column(i);
                    while cursor < spans.len() && spans[cursor].to <= a {
                        cursor += 1;
                    }
                    let mut energy: u128 = 0;
                    for s in spans[cursor..].iter().take_while(|s| s.from < b) {
                        energy += u128::from(s.power_uw) * u128::from(overlap(s.from, s.to, a, b));
                    }
                    let avg = energy / u128::from((b - a).as_nanos().max(1));
                    let h = ((avg * u128::from(POWER_H) + u128::from(max) / 2) / u128::from(max))
                        .min(u128::from(POWER_H)) as u32;
                    if h > 0 {
                        cv.fill(l.plot_x + i, y + POWER_H - h, 1, h, POWER_COLOR);
                    }
                }
            }
        }

        // vCPU rows: the core it ran on most of the column, paler the less of the column it ran.
        for &(vcpu, y) in &l.vcpu_rows {
            cv.fill(MARGIN, y + (ROW_H - SWATCH) / 2, SWATCH, SWATCH, vcpu_color(vcpu));
            cv.text(l.label_x, y + 2, &truncate_label(&self.vcpu_label(vcpu)), TEXT);
            cv.fill(l.plot_x, y + ROW_H - 1, l.plot_width, 1, GRID);
            let runs = self.vcpu_runs(vcpu);
            let mut cursor = 0;
            let mut tally: Vec<(CoreId, u64)> = Vec::new();
            for i in 0..l.plot_width {
                let (a, b) = l.column(i);
                while cursor < runs.len() && runs[cursor].to <= a {
                    cursor += 1;
                }
                tally.clear();
                let mut total = 0;
                for r in runs[cursor..].iter().take_while(|r| r.from < b) {
                    let d = overlap(r.from, r.to, a, b);
                    total += d;
                    match tally.iter_mut().find(|(c, _)| *c == r.core) {
                        Some(e) => e.1 += d,
                        None => tally.push((r.core, d)),
                    }
                }
                let mut top: Option<(CoreId, u64)> = None;
                for &(c, d) in &tally {
                    if top.is_none_or(|(tc, td)| d > td || (d == td && c < tc)) {
                        top = Some((c, d));
                    }
                }
                if let Some((core, _)) = top {
                    let width = (b - a).as_nanos().max(1);
                    // Opacity from 96/256 (a sliver) to 256/256 (the whole column).
                    let alpha = 96 + (u128::from(total.min(width)) * 160 / u128::from(width)) as u32;
                    cv.fill(l.plot_x + i, y, 1, ROW_H - 1, blend(BACKGROUND, core_color(core), alpha));
                }
            }
        }
        if l.hidden_vcpus > 0 {
            cv.text(l.label_x, l.more_y, &format!("{} more vCPUs not shown", l.hidden_vcpus), TEXT);
        }

        // Markers on the vCPU rows.
        let rows: BTreeMap<VcpuId, u32> = l.vcpu_rows.iter().copied().collect();
        for m in &self.markers {
            let (vcpu, color, below) = match m.kind {
                TraceKind::DeadlineMiss { vcpu, .. } => (vcpu, MISS_COLOR, false),
                TraceKind::GuestFault { vcpu, .. } => (vcpu, FAULT_COLOR, false),
                TraceKind::VcpuMigrate { vcpu, .. } => (vcpu, MIGRATION_COLOR, true),
                _ => continue,
            };
            let Some(&y) = rows.get(&vcpu) else { continue };
            let x = l.x_at(m.at);
            if below {
                cv.fill(x, y + ROW_H - 1, 1, ROW_GAP + 1, color);
            } else {
                cv.fill(x, y.saturating_sub(2), 1, ROW_H + 1, color);
                cv.fill(x.saturating_sub(1), y.saturating_sub(2), 3, 2, color);
            }
        }

        // The time axis.
        cv.fill(l.plot_x, l.axis_y, l.plot_width, 1, AXIS);
        for &(t, ref label) in &ticks.ticks {
            let x = l.x_at(t);
            cv.fill(x, l.axis_y, 1, 5, AXIS);
            let w = text_width(label);
            let lx = x.saturating_sub(w / 2).min(l.width.saturating_sub(w));
            cv.text(lx, l.axis_y + 7, label, TEXT);
        }

        // The legend.
        for (n, line) in l.legend_lines.iter().enumerate() {
            let y = l.legend_y + n as u32 * LEGEND_ROW_H;
            let mut x = MARGIN;
            for (color, text) in line {
                cv.fill(x, y + 1, 10, 10, *color);
                cv.text(x + 14, y + 2, text, TEXT);
                x += 10 + 4 + text_width(text) + 14;
            }
        }
        cv.text(MARGIN, l.notes_y, "core rows: state; busy in the colour of the vCPU (square by its name)", TEXT);
        cv.text(
            MARGIN,
            l.notes_y + LEGEND_ROW_H,
            "vCPU rows: the colour of the core it ran on (square by the core); paler = ran part of the pixel",
            TEXT,
        );
        cv.px
    }

    /// Writes the picture as a PNG (8-bit RGB) about `width` pixels wide (see
    /// [`Timeline::png_layout`]): one row per core coloured by state, the power overlay if any,
    /// one row per vCPU coloured by the core it ran on, a time axis and a legend. The same
    /// timeline and width always give the same bytes.
    pub fn write_png(&self, w: impl Write, width: u32) -> io::Result<()> {
        let layout = self.png_layout(width);
        let pixels = self.render(&layout);
        let mut enc = png::Encoder::new(w, layout.width, layout.height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Fast);
        let mut writer = enc.write_header().map_err(io::Error::other)?;
        writer.write_image_data(&pixels).map_err(io::Error::other)?;
        writer.finish().map_err(io::Error::other)
    }
}

fn state_index(state: CoreState) -> usize {
    match state {
        CoreState::Off => 0,
        CoreState::Online => 1,
        CoreState::Idle => 2,
        CoreState::Draining => 3,
        CoreState::Busy => 4,
    }
}

fn overlap(from: Instant, to: Instant, a: Instant, b: Instant) -> u64 {
    to.min(b).as_nanos().saturating_sub(from.max(a).as_nanos())
}

/// `over` on `under` with opacity `alpha`/256.
fn blend(under: Rgb, over: Rgb, alpha: u32) -> Rgb {
    let alpha = alpha.min(256);
    let mix = |u: u8, o: u8| ((u32::from(u) * (256 - alpha) + u32::from(o) * alpha) / 256) as u8;
    [mix(under[0], over[0]), mix(under[1], over[1]), mix(under[2], over[2])]
}

/// Tick marks of the time axis: `(time, label)`.
struct Ticks {
    ticks: Vec<(Instant, String)>,
}

const SEC: u64 = 1_000_000_000;
const MIN: u64 = 60 * SEC;
const HOUR: u64 = 60 * MIN;

/// Tick steps, smallest first: 1-2-5 up to 10 s, then round minutes and hours, then days.
fn tick_steps() -> impl Iterator<Item = u64> {
    let decimal = (0..10u32).flat_map(|k| [1, 2, 5].map(|m| m * 10u64.pow(k)));
    let clock = [20 * SEC, 30 * SEC, MIN, 2 * MIN, 5 * MIN, 10 * MIN, 15 * MIN, 30 * MIN]
        .into_iter()
        .chain([1, 2, 3, 6, 12].map(|h| h * HOUR));
    let days = (0..6u32).flat_map(|k| [1, 2, 5].map(|m| m * 10u64.pow(k) * 24 * HOUR));
    decimal.chain([10 * SEC]).chain(clock).chain(days)
}

/// The unit a step's labels are written in.
fn tick_unit(step: u64) -> (u64, &'static str) {
    if step >= 15 * MIN {
        (HOUR, "h")
    } else if step >= MIN {
        (MIN, "min")
    } else if step >= SEC / 10 {
        (SEC, "s")
    } else if step >= 100_000 {
        (1_000_000, "ms")
    } else if step >= 100 {
        (1_000, "us")
    } else {
        (1, "ns")
    }
}

/// `t` in `unit`, with up to 3 decimals (trailing zeros removed): `0 s`, `1.5 s`, `0.25 h`.
fn time_label(t: u64, unit: u64, name: &str) -> String {
    let milli = (u128::from(t) * 1000 + u128::from(unit) / 2) / u128::from(unit);
    let (i, f) = (milli / 1000, milli % 1000);
    if f == 0 {
        format!("{i} {name}")
    } else {
        let frac = format!("{f:03}");
        format!("{i}.{} {name}", frac.trim_end_matches('0'))
    }
}

fn axis_ticks(start: Instant, end: Instant, plot_width: u32) -> Ticks {
    let span = (end - start).as_nanos();
    if span == 0 || plot_width == 0 {
        let (unit, name) = tick_unit(start.as_nanos().max(1));
        return Ticks { ticks: vec![(start, time_label(start.as_nanos(), unit, name))] };
    }
    // The smallest step that leaves room for a label between ticks.
    let step = tick_steps()
        .find(|&s| u128::from(s) * u128::from(plot_width) >= u128::from(MIN_TICK_PX) * u128::from(span))
        .unwrap_or(u64::MAX / 4);
    let (unit, name) = tick_unit(step);
    let first = start.as_nanos().div_ceil(step).saturating_mul(step);
    let mut ticks = Vec::new();
    let mut t = first;
    while t <= end.as_nanos() && ticks.len() < 1000 {
        ticks.push((Instant(t), time_label(t, unit, name)));
        match t.checked_add(step) {
            Some(n) => t = n,
            None => break,
        }
    }
    Ticks { ticks }
}

/// An RGB picture being drawn; every drawing call is clipped to it.
pub(crate) struct Canvas {
    w: u32,
    h: u32,
    px: Vec<u8>,
}

impl Canvas {
    pub(crate) fn new(w: u32, h: u32) -> Canvas {
        let mut px = Vec::with_capacity(w as usize * h as usize * 3);
        for _ in 0..w as usize * h as usize {
            px.extend_from_slice(&BACKGROUND);
        }
        Canvas { w, h, px }
    }

    pub(crate) fn fill(&mut self, x: u32, y: u32, w: u32, h: u32, c: Rgb) {
        let (x1, y1) = (x.saturating_add(w).min(self.w), y.saturating_add(h).min(self.h));
        for yy in y.min(y1)..y1 {
            let row = yy as usize * self.w as usize;
            for xx in x.min(x1)..x1 {
                let i = (row + xx as usize) * 3;
                self.px[i..i + 3].copy_from_slice(&c);
            }
        }
    }

    /// Writes `s` with its top-left corner at (`x`, `y`).
    pub(crate) fn text(&mut self, x: u32, y: u32, s: &str, c: Rgb) {
        let mut x = x;
        for ch in s.chars() {
            let glyph = font::glyph(ch);
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..font::WIDTH {
                    if bits & (1 << (font::WIDTH - 1 - col)) != 0 {
                        self.fill(x + col, y + row as u32, 1, 1, c);
                    }
                }
            }
            x = x.saturating_add(font::ADVANCE);
            if x >= self.w {
                break;
            }
        }
    }
}

impl Canvas {
    /// The picture as a PNG (8-bit RGB).
    pub(crate) fn png(&self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, self.w, self.h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Fast);
        let mut writer = enc.write_header().map_err(io::Error::other)?;
        writer.write_image_data(&self.px).map_err(io::Error::other)?;
        writer.finish().map_err(io::Error::other)?;
        Ok(out)
    }
}

/// The font's advance and line height, for other pictures of this crate.
pub(crate) const FONT_ADVANCE: u32 = font::ADVANCE;
pub(crate) const FONT_LINE: u32 = font::LINE;

/// A small bitmap font drawn for this module: 5 pixels wide, 7 above the baseline and 2 below
/// (for g, j, p, q, y and the comma), printable ASCII. Anything else is drawn as `?`.
mod font {
    pub const WIDTH: u32 = 5;
    pub const HEIGHT: usize = 9;
    pub const ADVANCE: u32 = 6;
    pub const LINE: u32 = 11;

    /// Glyphs for ' ' ..= '~', rows top to bottom separated by `/`, `#` = ink; missing rows are
    /// blank.
    const GLYPHS: [&str; 95] = [
        "",                                                      // ' '
        "..#../..#../..#../..#../..#../...../..#..",             // !
        ".#.#./.#.#./.#.#.",                                     // "
        ".#.#./.#.#./#####/.#.#./#####/.#.#./.#.#.",             // #
        "..#../.####/#.#../.###./..#.#/####./..#..",             // $
        "##..#/##.#./...#./..#../.#.../.#.##/#..##",             // %
        ".##../#..#./#.#../.#.../#.#.#/#..#./.##.#",             // &
        "..#../..#../.#...",                                     // '
        "...#./..#../.#.../.#.../.#.../..#../...#.",             // (
        ".#.../..#../...#./...#./...#./..#../.#...",             // )
        "...../..#../#.#.#/.###./#.#.#/..#../.....",             // *
        "...../..#../..#../#####/..#../..#../.....",             // +
        "...../...../...../...../...../..#../..#../.#...",       // ,
        "...../...../...../#####/...../...../.....",             // -
        "...../...../...../...../...../.##../.##..",             // .
        "....#/...#./...#./..#../.#.../.#.../#....",             // /
        ".###./#...#/#..##/#.#.#/##..#/#...#/.###.",             // 0
        "..#../.##../..#../..#../..#../..#../.###.",             // 1
        ".###./#...#/....#/...#./..#../.#.../#####",             // 2
        "#####/...#./..#../...#./....#/#...#/.###.",             // 3
        "...#./..##./.#.#./#..#./#####/...#./...#.",             // 4
        "#####/#..../####./....#/....#/#...#/.###.",             // 5
        "..##./.#.../#..../####./#...#/#...#/.###.",             // 6
        "#####/....#/...#./..#../.#.../.#.../.#...",             // 7
        ".###./#...#/#...#/.###./#...#/#...#/.###.",             // 8
        ".###./#...#/#...#/.####/....#/...#./.##..",             // 9
        "...../.##../.##../...../.##../.##../.....",             // :
        "...../.##../.##../...../.##../.##../.#...",             // ;
        "...#./..#../.#.../#..../.#.../..#../...#.",             // <
        "...../...../#####/...../#####/...../.....",             // =
        ".#.../..#../...#./....#/...#./..#../.#...",             // >
        ".###./#...#/....#/...#./..#../...../..#..",             // ?
        ".###./#...#/#.###/#.#.#/#.###/#..../.###.",             // @
        ".###./#...#/#...#/#####/#...#/#...#/#...#",             // A
        "####./#...#/#...#/####./#...#/#...#/####.",             // B
        ".###./#...#/#..../#..../#..../#...#/.###.",             // C
        "###../#..#./#...#/#...#/#...#/#..#./###..",             // D
        "#####/#..../#..../####./#..../#..../#####",             // E
        "#####/#..../#..../####./#..../#..../#....",             // F
        ".###./#...#/#..../#.###/#...#/#...#/.####",             // G
        "#...#/#...#/#...#/#####/#...#/#...#/#...#",             // H
        ".###./..#../..#../..#../..#../..#../.###.",             // I
        "..###/...#./...#./...#./...#./#..#./.##..",             // J
        "#...#/#..#./#.#../##.../#.#../#..#./#...#",             // K
        "#..../#..../#..../#..../#..../#..../#####",             // L
        "#...#/##.##/#.#.#/#.#.#/#...#/#...#/#...#",             // M
        "#...#/#...#/##..#/#.#.#/#..##/#...#/#...#",             // N
        ".###./#...#/#...#/#...#/#...#/#...#/.###.",             // O
        "####./#...#/#...#/####./#..../#..../#....",             // P
        ".###./#...#/#...#/#...#/#.#.#/#..#./.##.#",             // Q
        "####./#...#/#...#/####./#.#../#..#./#...#",             // R
        ".####/#..../#..../.###./....#/....#/####.",             // S
        "#####/..#../..#../..#../..#../..#../..#..",             // T
        "#...#/#...#/#...#/#...#/#...#/#...#/.###.",             // U
        "#...#/#...#/#...#/#...#/#...#/.#.#./..#..",             // V
        "#...#/#...#/#...#/#.#.#/#.#.#/#.#.#/.#.#.",             // W
        "#...#/#...#/.#.#./..#../.#.#./#...#/#...#",             // X
        "#...#/#...#/.#.#./..#../..#../..#../..#..",             // Y
        "#####/....#/...#./..#../.#.../#..../#####",             // Z
        ".###./.#.../.#.../.#.../.#.../.#.../.###.",             // [
        "#..../.#.../.#.../..#../...#./...#./....#",             // \
        ".###./...#./...#./...#./...#./...#./.###.",             // ]
        "..#../.#.#./#...#",                                     // ^
        "...../...../...../...../...../...../#####",             // _
        ".#.../..#..",                                           // `
        "...../...../.###./....#/.####/#...#/.####",             // a
        "#..../#..../####./#...#/#...#/#...#/####.",             // b
        "...../...../.###./#..../#..../#...#/.###.",             // c
        "....#/....#/.####/#...#/#...#/#...#/.####",             // d
        "...../...../.###./#...#/#####/#..../.###.",             // e
        "..##./.#..#/.#.../###../.#.../.#.../.#...",             // f
        "...../...../.####/#...#/#...#/#...#/.####/....#/.###.", // g
        "#..../#..../#.##./##..#/#...#/#...#/#...#",             // h
        "..#../...../.##../..#../..#../..#../.###.",             // i
        "...#./...../..##./...#./...#./...#./...#./#..#./.##..", // j
        "#..../#..../#..#./#.#../##.../#.#../#..#.",             // k
        ".##../..#../..#../..#../..#../..#../.###.",             // l
        "...../...../##.#./#.#.#/#.#.#/#.#.#/#.#.#",             // m
        "...../...../#.##./##..#/#...#/#...#/#...#",             // n
        "...../...../.###./#...#/#...#/#...#/.###.",             // o
        "...../...../####./#...#/#...#/#...#/####./#..../#....", // p
        "...../...../.####/#...#/#...#/#...#/.####/....#/....#", // q
        "...../...../#.##./##..#/#..../#..../#....",             // r
        "...../...../.####/#..../.###./....#/####.",             // s
        ".#.../.#.../###../.#.../.#.../.#..#/..##.",             // t
        "...../...../#...#/#...#/#...#/#..##/.##.#",             // u
        "...../...../#...#/#...#/#...#/.#.#./..#..",             // v
        "...../...../#...#/#...#/#.#.#/#.#.#/.#.#.",             // w
        "...../...../#...#/.#.#./..#../.#.#./#...#",             // x
        "...../...../#...#/#...#/#...#/#...#/.####/....#/.###.", // y
        "...../...../#####/...#./..#../.#.../#####",             // z
        "...#./..#../..#../.#.../..#../..#../...#.",             // {
        "..#../..#../..#../..#../..#../..#../..#..",             // |
        ".#.../..#../..#../...#./..#../..#../.#...",             // }
        "...../...../.#.../#.#.#/...#./...../.....",             // ~
    ];

    /// The rows of `c`'s glyph, 5 bits each (the leftmost pixel in bit 4).
    pub fn glyph(c: char) -> [u8; HEIGHT] {
        let code = c as u32;
        let index = if (0x20..0x7f).contains(&code) { code - 0x20 } else { u32::from(b'?') - 0x20 };
        let mut rows = [0u8; HEIGHT];
        let art = GLYPHS.get(index as usize).copied().unwrap_or("");
        for (row, bits) in rows.iter_mut().zip(art.split('/').filter(|s| !s.is_empty())) {
            *row = bits.bytes().fold(0, |acc, b| (acc << 1) | u8::from(b == b'#'));
        }
        rows
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn every_glyph_is_well_formed() {
            for (i, art) in GLYPHS.iter().enumerate() {
                let rows: Vec<&str> = art.split('/').filter(|s| !s.is_empty()).collect();
                assert!(rows.len() <= HEIGHT, "glyph {i} has {} rows", rows.len());
                for r in &rows {
                    assert_eq!(r.len(), WIDTH as usize, "glyph {i}: row `{r}`");
                    assert!(r.bytes().all(|b| b == b'#' || b == b'.'), "glyph {i}: row `{r}`");
                }
                // Only the descenders use the two rows below the baseline.
                let c = char::from(0x20 + i as u8);
                if rows.len() > 7 {
                    assert!("gjpqy,".contains(c), "`{c}` reaches below the baseline");
                }
            }
            assert_eq!(glyph('A')[0], 0b01110);
            assert_eq!(glyph('é'), glyph('?'));
            assert_eq!(glyph(' '), [0; HEIGHT]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn microseconds_are_exact() {
        assert_eq!(Us(0).to_string(), "0");
        assert_eq!(Us(1).to_string(), "0.001");
        assert_eq!(Us(1_500_000).to_string(), "1500");
        assert_eq!(Us(1_500_001).to_string(), "1500.001");
        assert_eq!(Us(1_500_010).to_string(), "1500.01");
        assert_eq!(Us(1_500_100).to_string(), "1500.1");
        assert_eq!(Us(u64::MAX).to_string(), "18446744073709551.615");
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(JStr("a\"b\\c\nd\u{1}é").to_string(), "\"a\\\"b\\\\c\\nd\\u0001é\"");
    }

    #[test]
    fn tick_labels() {
        assert_eq!(time_label(0, SEC, "s"), "0 s");
        assert_eq!(time_label(1_500_000_000, SEC, "s"), "1.5 s");
        assert_eq!(time_label(15 * MIN, HOUR, "h"), "0.25 h");
        assert_eq!(time_label(250_000, 1_000_000, "ms"), "0.25 ms");
        let t = axis_ticks(Instant::ZERO, Instant(10 * SEC), 1000);
        assert_eq!(t.ticks.first().map(|t| t.1.as_str()), Some("0 s"));
        assert_eq!(t.ticks.get(1).map(|t| t.1.as_str()), Some("1 s"));
        let day = axis_ticks(Instant::ZERO, Instant(24 * HOUR), 1600);
        assert_eq!(day.ticks.get(1).map(|t| t.1.as_str()), Some("2 h"));
        let tiny = axis_ticks(Instant(5), Instant(105), 1000);
        assert_eq!(tiny.ticks.first().map(|t| t.1.as_str()), Some("10 ns"));
        // Never more than one tick per MIN_TICK_PX pixels, whatever the range.
        for (span, w) in [(1, 1), (7, 3000), (u64::MAX / 2, 500), (123_456_789, 16_000)] {
            let t = axis_ticks(Instant::ZERO, Instant(span), w);
            assert!(t.ticks.len() as u64 <= u64::from(w) / MIN_TICK_PX + 2, "{span} ns over {w} px");
        }
    }
}
