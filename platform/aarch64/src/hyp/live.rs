//! Live pre-copy migration of a VM to another hypervisor instance over the migration stream
//! (`crate::virtio::stream`), in checkpoint format version 2 with the `LIVE` layout
//! (docs/checkpoint-format.md) and the control protocol of `migrate::live` (docs/migration.md,
//! *Live migration*).
//!
//! **Source** (`hv.migrate-out=MS[:VM]`): MS ms into the run the boot core starts migrating the
//! VM (default the first). The work is cut into steps that the boot core's loop runs between its
//! own scheduling decisions, so guests keep running on it too:
//!
//! 1. Dirty logging on (stage 2), header and config out, then all of guest RAM (round 0), a
//!    slice per step.
//! 2. Rounds: harvest the pages written since the last harvest (write-protecting them again),
//!    send them; the planner (`migrate::live::Precopy`) decides after each round whether another
//!    one is worth it or the rest fits the downtime limit.
//! 3. Stop-and-copy: the VM is paused (its vCPUs leave their cores at their next exit), then its
//!    vCPUs, vGIC, timers, devices, the last dirty pages, the timing section and the trailer go
//!    out in one step.
//! 4. The destination answers READY (it verified the whole stream) or REFUSED. On READY the
//!    source sends COMMIT, the VM stops here for good (`migrated`) and DONE is awaited. On
//!    REFUSED, a broken stream or no answer in time, dirty logging ends and the VM resumes here.
//!
//! **Destination** (`hv.migrate-in`): the first VM is built from the manifest as for a restore,
//! then filled from the stream (verified to the trailer before anything of it runs), READY goes
//! back, and the VM starts once COMMIT arrives; its virtual counter continues from the source's
//! plus the downtime measured on both sides.

use alloc::format;
use alloc::string::{String, ToString};
use core::sync::atomic::{AtomicU64, Ordering};

use crate::sync::Mutex;
use migrate::checkpoint::{
    CheckpointHeader, EncodeOptions, Encoder, Sink, SinkError, Source, SourceError, Timing, VmConfig,
};
use migrate::live::{Control, Next, Precopy, PrecopyLimits, Refusal, CONTROL_FRAME_LEN};
use vcpu_runtime::trace::StopReason;
use vcpu_runtime::{Instant, Nanos, VcpuId, VcpuState};

use super::checkpoint;
use super::core_loop::Core;
use super::vm::{DirtyRuns, Vm, PAGE};
use crate::virtio::MigrationStream;
use crate::{println, timer};

/// Not asked for.
const NEVER: u64 = u64::MAX;
static MIGRATE_OUT_AT_MS: AtomicU64 = AtomicU64::new(NEVER);
static MIGRATE_OUT_VM: AtomicU64 = AtomicU64::new(0);
static MIGRATE_IN: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
/// Downtime limit of the pre-copy planner, ns (`hv.downtime-ms=`).
static DOWNTIME_LIMIT_NS: AtomicU64 = AtomicU64::new(300_000_000);

/// Bytes of guest RAM one step reads and sends: the boot core's other guests wait that long.
const STEP_BYTES: u64 = 1 << 20;
/// How long the source waits for READY after the trailer, and the destination for COMMIT (and
/// for each piece of the stream), ns: `hv.migrate-timeout-ms=`, default 10 s.
static ANSWER_TIMEOUT_NS: AtomicU64 = AtomicU64::new(10_000_000_000);
/// `HV_MARK` id with which a guest says it is about to run a heavy job (the value: its size in
/// millions of instructions): the offload point (docs/migration.md, *Offload*).
pub const MARK_OFFLOAD_POINT: u32 = 5;
/// `HV_MARK` id with which a guest says its heavy job is done: the return point.
pub const MARK_RETURN_POINT: u32 = 6;
/// How often the phone looks for its guest coming back.
const RETURN_POLL: Nanos = Nanos::from_millis(1);

/// `hv.offload=`: what the phone decides at the offload point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffloadPolicy {
    /// By the model over this link profile (`migrate::offload::LinkProfile::ALL`, by index).
    Model(usize),
    Always,
    Never,
}

static OFFLOAD: Mutex<Option<OffloadPolicy>> = Mutex::new(None);
static OFFLOAD_SERVER: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
/// A guest's mark the boot core has not handled yet: (mark id, VM, value).
static PENDING_MARK: Mutex<Option<(u32, usize, u64)>> = Mutex::new(None);

/// `hv.offload=wifi|lte|3g|always|never`; `None` for an unknown word.
pub fn set_offload(word: &str) -> Option<()> {
    let policy = match word {
        "always" => OffloadPolicy::Always,
        "never" => OffloadPolicy::Never,
        _ => OffloadPolicy::Model(
            migrate::offload::LinkProfile::ALL.iter().position(|l| l.name.eq_ignore_ascii_case(word))?,
        ),
    };
    *OFFLOAD.lock() = Some(policy);
    Some(())
}

/// `hv.offload-server`: a guest received at boot goes back at its return point.
pub fn set_offload_server(on: bool) {
    OFFLOAD_SERVER.store(on, Ordering::Relaxed);
}

pub fn offload_server() -> bool {
    OFFLOAD_SERVER.load(Ordering::Relaxed)
}

/// A guest's `HV_MARK` (any core): the offload and return points wake the boot core's
/// migration step.
pub(super) fn on_mark(hyp: &super::Hypervisor, vm: usize, id: u32, value: u64) {
    if id != MARK_OFFLOAD_POINT && id != MARK_RETURN_POINT {
        return;
    }
    let phone = matches!(*OFFLOAD.lock(), Some(OffloadPolicy::Model(_) | OffloadPolicy::Always));
    if !phone && !offload_server() {
        return;
    }
    *PENDING_MARK.lock() = Some((id, vm, value));
    NEXT_STEP.store(0, Ordering::Release);
    hyp.kick_core_to_housekeep(vcpu_runtime::CoreId(0));
}

/// The value of a pending mark `id` of guest `vm`, taken.
fn take_request(id: u32, vm: usize) -> Option<u64> {
    let mut pending = PENDING_MARK.lock();
    match *pending {
        Some((i, v, value)) if i == id && v == vm => {
            *pending = None;
            Some(value)
        }
        _ => None,
    }
}

/// The offload decision at the offload point of guest `vm`, whose job is `job_minstr` million
/// instructions: by the model (`migrate::offload::estimate`) over the configured link, for the
/// least phone energy. The phone is the board's energy model: one instruction per cycle at the
/// top operating point on each core the guest's vCPUs can use, busy at the top OPP's power,
/// idle in the deepest idle state. The server runs as many of the guest's vCPUs at once as it
/// has cores ([`SERVER_CORES`]), each at the phone core's speed (both run on the same emulation
/// host; a real server core is faster, which only favours offloading). The state to send is the
/// guest's RAM that is not zero, each way.
fn offload_pays(core: &Core<'_>, vm_index: usize, job_minstr: u64) -> bool {
    use migrate::offload::{estimate, Choice, Device, Goal, Job, LinkProfile};
    let vm = &core.hyp.vms[vm_index];
    let policy = match *OFFLOAD.lock() {
        Some(p) => p,
        None => return false,
    };
    let model = &core.hyp.power.model;
    let cores = model.cores().len() as u64;
    let ty = model.core_type(vcpu_runtime::CoreId(0));
    let top = ty.opps.last().map_or((1_000_000, 0), |o| (u64::from(o.freq_khz), u64::from(o.power_uw)));
    let deepest_idle_uw = ty.idle_states.last().map_or(u64::from(ty.off_power_uw), |i| u64::from(i.power_uw));
    let vcpus = u64::from(vm.vcpus);
    let used = vcpus.min(cores);
    let per_core_ips = top.0 * 1000;
    let phone = Device {
        instructions_per_sec: per_core_ips * used,
        busy_mw: ((top.1 * used + deepest_idle_uw * (cores - used)) / 1000) as u32,
        idle_mw: (deepest_idle_uw * cores / 1000) as u32,
    };
    let mut state = alloc::vec![0u8; PAGE as usize];
    let mut nonzero = 0u64;
    let mut offset = 0;
    while offset < vm.ram_bytes() {
        if vm.snapshot_ram(offset, &mut state) && state.iter().any(|&b| b != 0) {
            nonzero += 1;
        }
        offset += PAGE;
    }
    let bytes = nonzero * PAGE;
    let job = Job { instructions: job_minstr.saturating_mul(1_000_000), upload_bytes: bytes, download_bytes: bytes };
    let server_ips = per_core_ips * vcpus.min(SERVER_CORES);
    let (link, decision) = match policy {
        OffloadPolicy::Always => ("forced", true),
        OffloadPolicy::Never => ("forced", false),
        OffloadPolicy::Model(k) => {
            let link = &LinkProfile::ALL[k];
            let e = estimate(&job, &phone, server_ips, link);
            println!(
                "offload: model over {}: local {} ms {} uJ; offloaded {} ms {} uJ (upload {} ms, remote {} ms, download {} ms)",
                link.name,
                e.local.time_ns / 1_000_000,
                e.local.energy_uj,
                e.offload.total.time_ns / 1_000_000,
                e.offload.total.energy_uj,
                e.offload.upload.time_ns / 1_000_000,
                e.offload.remote.time_ns / 1_000_000,
                e.offload.download.time_ns / 1_000_000
            );
            (link.name, e.choose(Goal::Energy) == Choice::Offload)
        }
    };
    println!(
        "offload: decision={} link={link} guest={} job_minstr={job_minstr} state_bytes={bytes}",
        if decision { "offload" } else { "local" },
        vm.name
    );
    decision
}

/// The cores of the server the offload model assumes (`-smp 8` in `cargo xtask offload`).
const SERVER_CORES: u64 = 8;

/// The longest a pre-copy step works before the boot core's guests get their turn.
const STEP_TIME: Nanos = Nanos::from_millis(1);
/// The shortest pause between two steps of a migration under way.
const STEP_PERIOD: Nanos = Nanos::from_micros(500);
/// How soon the boot core looks again whether a paused guest's vCPUs have left their cores.
const PAUSE_POLL: Nanos = Nanos::from_micros(50);

/// `hv.migrate-out=MS[:VM]`.
pub fn set_migrate_out(at_ms: u64, vm: u16) {
    MIGRATE_OUT_VM.store(u64::from(vm), Ordering::Relaxed);
    MIGRATE_OUT_AT_MS.store(at_ms, Ordering::Relaxed);
}

/// `hv.migrate-in`.
pub fn set_migrate_in(on: bool) {
    MIGRATE_IN.store(on, Ordering::Relaxed);
}

pub fn migrate_in_requested() -> bool {
    MIGRATE_IN.load(Ordering::Relaxed)
}

/// `hv.migrate-timeout-ms=MS`.
pub fn set_answer_timeout(timeout: Nanos) {
    ANSWER_TIMEOUT_NS.store(timeout.as_nanos(), Ordering::Relaxed);
}

fn answer_timeout() -> Nanos {
    Nanos(ANSWER_TIMEOUT_NS.load(Ordering::Relaxed))
}

/// `hv.downtime-ms=MS`.
pub fn set_downtime_limit(limit: Nanos) {
    DOWNTIME_LIMIT_NS.store(limit.as_nanos(), Ordering::Relaxed);
}

/// Bytes the source may have sent beyond what the destination confirmed reading
/// (`Control::Received`): QEMU's virtio console drops what its socket cannot take at once, so
/// the stream is flow-controlled end to end instead (docs/migration.md, *Transport*).
const WINDOW: u64 = 1 << 20;
/// The destination confirms what it read every this many bytes.
const RECEIVED_EVERY: u64 = 256 << 10;

/// The stream with the control frames coming back: partial frames are kept, flow-control
/// frames are taken as they come.
struct Peer {
    stream: MigrationStream,
    rx: [u8; CONTROL_FRAME_LEN],
    rx_len: usize,
    /// Stream bytes the other side confirmed reading.
    confirmed: u64,
}

impl Peer {
    fn new(stream: MigrationStream) -> Peer {
        Peer { stream, rx: [0; CONTROL_FRAME_LEN], rx_len: 0, confirmed: 0 }
    }

    /// The next control frame, waiting until `deadline` (not at all when it has passed).
    fn next_frame(&mut self, deadline: Instant) -> Result<Option<Control>, String> {
        loop {
            let n = self.stream.read_available(&mut self.rx[self.rx_len..]).map_err(|e| format!("{e}"))?;
            self.rx_len += n;
            if self.rx_len == CONTROL_FRAME_LEN {
                self.rx_len = 0;
                return Control::decode(&self.rx).map(Some).map_err(|e| format!("a bad control frame: {e}"));
            }
            if n == 0 {
                if timer::now() >= deadline {
                    return Ok(None);
                }
                core::hint::spin_loop();
            }
        }
    }

    /// The next control frame other than a flow-control one, waiting until `deadline`.
    fn await_control(&mut self, deadline: Instant) -> Result<Control, String> {
        loop {
            match self.next_frame(deadline)? {
                Some(Control::Received { bytes }) => self.confirmed = self.confirmed.max(bytes),
                Some(other) => return Ok(other),
                None => return Err("no answer before the deadline".to_string()),
            }
        }
    }

    /// Waits until no more than [`WINDOW`] bytes are unconfirmed.
    fn await_window(&mut self) -> Result<(), String> {
        let deadline = timer::now() + answer_timeout();
        while self.stream.counts().0.saturating_sub(self.confirmed) > WINDOW {
            match self.next_frame(deadline)? {
                Some(Control::Received { bytes }) => self.confirmed = self.confirmed.max(bytes),
                Some(other) => return Err(format!("the destination answered {other} while the stream flowed")),
                None => {
                    return Err(format!(
                        "the destination stopped reading: {} bytes sent, {} confirmed",
                        self.stream.counts().0,
                        self.confirmed
                    ))
                }
            }
        }
        Ok(())
    }
}

/// The codec's sink: the stream, buffered and flow-controlled.
struct StreamSink(Peer);

impl Sink for StreamSink {
    fn write(&mut self, bytes: &[u8]) -> Result<(), SinkError> {
        self.0.stream.write(bytes).map_err(|_| SinkError("the migration stream failed a write"))?;
        self.0.await_window().map_err(|_| SinkError("the destination stopped reading the migration stream"))
    }
}

/// The codec's source: the stream, each wait bounded by the answer timeout; what it read is
/// confirmed every [`RECEIVED_EVERY`] bytes.
struct StreamSource<'a> {
    stream: &'a mut MigrationStream,
    confirmed: u64,
}

impl Source for StreamSource<'_> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, SourceError> {
        if buf.is_empty() {
            return Ok(0);
        }
        let deadline = timer::now() + answer_timeout();
        loop {
            let n = self.stream.read_available(buf).map_err(|_| SourceError("the migration stream failed a read"))?;
            if n > 0 {
                let read = self.stream.counts().1;
                if read - self.confirmed >= RECEIVED_EVERY {
                    self.confirmed = read;
                    let frame = Control::Received { bytes: read }.encode();
                    self.stream
                        .write(&frame)
                        .and_then(|()| self.stream.flush())
                        .map_err(|_| SourceError("the migration stream failed a write"))?;
                }
                return Ok(n);
            }
            if timer::now() >= deadline {
                return Err(SourceError("the migration stream went quiet (nothing within the timeout)"));
            }
            core::hint::spin_loop();
        }
    }
}

/// Where an outgoing migration is.
enum Phase {
    /// Round 0: all of RAM, from this byte offset.
    FullCopy { offset: u64 },
    /// A later round: these runs of dirty pages, from run `next` (and page `done` in it).
    Rounds { runs: DirtyRuns, next: usize, done: u64 },
    /// The VM was asked to pause at this time; its vCPUs are leaving their cores.
    Pausing { since: Instant },
}

/// An outgoing migration under way.
struct Outgoing {
    vm: usize,
    enc: Encoder<StreamSink>,
    planner: Precopy,
    phase: Phase,
    /// The current round: its start and the stream bytes sent before it.
    round_start: Instant,
    round_bytes: u64,
    rounds: u32,
    pages_resent: u64,
    hardware: bool,
    started: Instant,
    /// Dirty pages harvested when the planner chose to stop: sent after the pause.
    final_runs: DirtyRuns,
    /// The guest's pause, from its request to the timing section.
    paused_ns: u64,
    after: After,
    /// Pages the dirty log saw written: by faults, by the CPU (at the pause).
    log_counts: (u64, u64),
}

/// What becomes of the source's VM once the destination took it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum After {
    /// It stops here for good (`migrated`).
    Stop,
    /// It stays paused here, its memory kept, until it comes back over the same stream
    /// (offload: the phone waits for the guest the server sends back).
    AwaitReturn,
}

/// The boot core's migration state: before, during, after.
enum State {
    /// Waiting for the time `hv.migrate-out` named (the stream is opened at boot).
    Armed {
        at: Instant,
        vm: usize,
        stream: alloc::boxed::Box<MigrationStream>,
    },
    Running(alloc::boxed::Box<Outgoing>),
    /// Offload, on the phone: the stream is open, the guest runs here until it reaches its
    /// offload point (`HV_MARK` [`MARK_OFFLOAD_POINT`]) and the model says offloading pays.
    Phone {
        vm: usize,
        peer: alloc::boxed::Box<Peer>,
    },
    /// Offload, on the phone: the guest was sent and is paused here; it comes back over `peer`.
    AwaitingReturn {
        vm: usize,
        peer: alloc::boxed::Box<Peer>,
        since: Instant,
    },
    /// Offload, on the server: the guest arrived at boot over `peer`; it goes back when it
    /// reaches its return point (`HV_MARK` [`MARK_RETURN_POINT`]).
    Server {
        vm: usize,
        peer: alloc::boxed::Box<Peer>,
    },
    Over,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);
/// When the boot core should come back ([`NEVER`]: no migration under way).
static NEXT_STEP: AtomicU64 = AtomicU64::new(NEVER);

/// At boot, with `hv.migrate-out`: opens the stream (a missing device fails the boot now, not
/// in the middle of the run) and arms the migration for its time.
pub fn arm(start: Instant, vms: usize) -> Result<(), String> {
    if let Some(policy) = *OFFLOAD.lock() {
        if vms == 0 {
            return Err("hv.offload: the scenario has no guest".to_string());
        }
        if policy == OffloadPolicy::Never {
            println!("offload: never: guest 0 runs here");
            return Ok(());
        }
        let stream = MigrationStream::open().map_err(|e| format!("{e}"))?;
        println!("offload: {policy:?}: guest 0 may leave at its offload point; stream at {:#x}", stream.mmio().base);
        *STATE.lock() = Some(State::Phone { vm: 0, peer: alloc::boxed::Box::new(Peer::new(stream)) });
        return Ok(());
    }
    let at_ms = MIGRATE_OUT_AT_MS.load(Ordering::Relaxed);
    if at_ms == NEVER {
        return Ok(());
    }
    let vm = MIGRATE_OUT_VM.load(Ordering::Relaxed) as usize;
    if vm >= vms {
        return Err(format!("hv.migrate-out names guest {vm}; the scenario has {vms}"));
    }
    let stream = MigrationStream::open().map_err(|e| format!("{e}"))?;
    println!("migrate: stream on the virtio console at {:#x}; guest {vm} leaves at {at_ms} ms", stream.mmio().base);
    let at = start + Nanos::from_millis(at_ms);
    NEXT_STEP.store(at.as_nanos(), Ordering::Release);
    *STATE.lock() = Some(State::Armed { at, vm, stream: alloc::boxed::Box::new(stream) });
    Ok(())
}

/// When the boot core must come back for the migration (`Instant::NEVER` if none is under way).
pub fn next_step() -> Instant {
    Instant(NEXT_STEP.load(Ordering::Acquire))
}

/// The boot core's turn: starts the migration when due and runs one step of it. Returns whether
/// the runtime must look again (a VM was paused, resumed or stopped).
pub(super) fn step(core: &mut Core<'_>, now: Instant) -> bool {
    if now.as_nanos() < NEXT_STEP.load(Ordering::Acquire) {
        return false;
    }
    let mut slot = STATE.lock();
    let state = match slot.take() {
        Some(s) => s,
        None => {
            NEXT_STEP.store(NEVER, Ordering::Release);
            return false;
        }
    };
    let (next, poll) = match state {
        State::Armed { at, vm, stream } if now >= at => match start(core, vm, Peer::new(*stream), After::Stop, now) {
            Ok(out) => (State::Running(out), false),
            Err(e) => {
                println!("migrate: not migrated: cannot start: {e}; guest {vm} stays here");
                (State::Over, false)
            }
        },
        armed @ State::Armed { .. } => (armed, false),
        State::Running(out) if core.hyp.vms[out.vm].stopping.load(Ordering::Acquire) => {
            abandon(out, &core.hyp.vms);
            (State::Over, false)
        }
        State::Running(mut out) => match run_step(core, &mut out, now) {
            Ok(Progress::More { poll }) => (State::Running(out), poll),
            Ok(Progress::Sent) => {
                let vm = out.vm;
                finish(core, out, vm)
            }
            Err(e) => {
                let vm = out.vm;
                let mut peer = out.enc.abandon().0;
                send_abort(&mut peer);
                abort(core, vm, &e);
                (State::Over, true)
            }
        },
        State::Phone { vm, peer } => match take_request(MARK_OFFLOAD_POINT, vm) {
            Some(job) if offload_pays(core, vm, job) => match start(core, vm, *peer, After::AwaitReturn, now) {
                Ok(out) => (State::Running(out), false),
                Err(e) => {
                    println!("offload: cannot start: {e}; guest {vm} runs here");
                    (State::Over, false)
                }
            },
            Some(_) => {
                // Kept here: the server, waiting for a stream, is told at once.
                let mut peer = peer;
                send_abort(&mut peer);
                (State::Over, false)
            }
            None => (State::Phone { vm, peer }, false),
        },
        State::AwaitingReturn { vm, mut peer, since } => match peer.stream.has_data() {
            Ok(true) => {
                receive_back(core, vm, &mut peer, since);
                (State::Over, true)
            }
            Ok(false) => (State::AwaitingReturn { vm, peer, since }, false),
            Err(e) => {
                println!(
                    "offload: guest {}: the stream failed while it was away ({e}); it stays paused here",
                    core.hyp.vms[vm].name
                );
                (State::Over, false)
            }
        },
        State::Server { vm, peer } => match take_request(MARK_RETURN_POINT, vm) {
            Some(_) => match start(core, vm, *peer, After::Stop, now) {
                Ok(out) => (State::Running(out), false),
                Err(e) => {
                    println!("offload: cannot send the guest back: {e}; it runs on here");
                    (State::Over, false)
                }
            },
            None => (State::Server { vm, peer }, false),
        },
        State::Over => (State::Over, false),
    };
    // At most half of the boot core's time: its own vCPUs (maybe the migrating guest's) run
    // between steps at least as long as the last step took.
    let done = timer::now();
    NEXT_STEP.store(
        match &next {
            State::Armed { at, .. } => at.as_nanos(),
            // Paused: the guest waits for every step, so the next comes as soon as the vCPUs can
            // have left (a kick away).
            State::Running(out) if matches!(out.phase, Phase::Pausing { .. }) => (done + PAUSE_POLL).as_nanos(),
            State::Running(_) => (done + Nanos(done.since(now).as_nanos().max(STEP_PERIOD.as_nanos()))).as_nanos(),
            // Woken by the guest's mark (`on_mark`).
            State::Phone { .. } | State::Server { .. } => NEVER,
            State::AwaitingReturn { .. } => (done + RETURN_POLL).as_nanos(),
            State::Over => NEVER,
        },
        Ordering::Release,
    );
    *slot = Some(next);
    poll
}

/// What a step achieved.
enum Progress {
    More {
        poll: bool,
    },
    /// The stream is complete (trailer sent); the answer is next.
    Sent,
}

fn start(
    core: &mut Core<'_>,
    vm_index: usize,
    peer: Peer,
    after: After,
    now: Instant,
) -> Result<alloc::boxed::Box<Outgoing>, String> {
    let vm = &core.hyp.vms[vm_index];
    let hardware = vm.start_dirty_log().map_err(|e| format!("dirty logging: {e}"))?;
    let header = CheckpointHeader::new(vm.vcpus, vm.ram_ipa.start, vm.ram_bytes());
    let config = VmConfig { name: vm.name.clone(), weight: vm.weight, reservation: vm.reservation };
    let enc = match Encoder::new_live(StreamSink(peer), &header, &config, EncodeOptions::default()) {
        Ok(enc) => enc.with_crc(crate::crc::crc32c()),
        Err(e) => {
            let _ = vm.stop_dirty_log();
            return Err(format!("{e}"));
        }
    };
    let planner = Precopy::with_limits(
        vm.ram_bytes() / PAGE,
        PrecopyLimits { max_downtime_ns: DOWNTIME_LIMIT_NS.load(Ordering::Relaxed), ..PrecopyLimits::DEFAULT },
    );
    println!(
        "migrate: guest {}: pre-copy of {} MiB, dirty logging by {}",
        vm.name,
        vm.ram_bytes() >> 20,
        if hardware { "the CPU (HAFDBS)" } else { "write-protect faults" }
    );
    Ok(alloc::boxed::Box::new(Outgoing {
        vm: vm_index,
        enc,
        planner,
        phase: Phase::FullCopy { offset: 0 },
        round_start: now,
        round_bytes: 0,
        rounds: 0,
        pages_resent: 0,
        hardware,
        started: now,
        final_runs: DirtyRuns::new(),
        paused_ns: 0,
        after,
        log_counts: (0, 0),
    }))
}

/// Sends up to [`STEP_BYTES`] of a round, or, when the round is over, asks the planner.
fn run_step(core: &mut Core<'_>, out: &mut Outgoing, now: Instant) -> Result<Progress, String> {
    let vm = &core.hyp.vms[out.vm];
    let mut page = alloc::vec![0u8; PAGE as usize * 16];
    match &mut out.phase {
        Phase::FullCopy { offset } => {
            // Pages never written are zero runs, not read: a step reads at most STEP_BYTES.
            let mut read = 0;
            while read < STEP_BYTES && *offset < vm.ram_bytes() && timer::now().since(now) < STEP_TIME {
                // Data runs of up to 16 pages (the copy buffer), zero runs of any length.
                let (touched, n) = vm.touched_run(*offset, 16);
                let n = if touched { n } else { vm.touched_run(*offset, u64::MAX).1 };
                let ipa = vm.ram_ipa.start + *offset;
                if touched {
                    let bytes = (n * PAGE) as usize;
                    if !vm.snapshot_ram(*offset, &mut page[..bytes]) {
                        return Err(format!("guest RAM at offset {:#x} cannot be read", *offset));
                    }
                    out.enc.memory(ipa, &page[..bytes]).map_err(|e| format!("{e}"))?;
                    read += n * PAGE;
                } else {
                    out.enc.memory_zero(ipa, n).map_err(|e| format!("{e}"))?;
                }
                *offset += n * PAGE;
            }
            if *offset < vm.ram_bytes() {
                return Ok(Progress::More { poll: false });
            }
        }
        Phase::Rounds { runs, next, done } => {
            let mut budget = STEP_BYTES / PAGE;
            while budget > 0 && *next < runs.len() && timer::now().since(now) < STEP_TIME {
                let (first, count) = runs[*next];
                let n = (count - *done).min(budget).min(16);
                send_dirty(&mut out.enc, &mut out.pages_resent, vm, &mut page, first + *done, n)?;
                budget -= n;
                *done += n;
                if *done == count {
                    *next += 1;
                    *done = 0;
                }
            }
            if *next < runs.len() {
                return Ok(Progress::More { poll: false });
            }
        }
        Phase::Pausing { since } => {
            let since = *since;
            return pausing(core, out, since, now);
        }
    }
    // The round is sent: what was written meanwhile decides what comes next.
    out.rounds += 1;
    let mut runs = DirtyRuns::new();
    vm.harvest_dirty(&mut runs).map_err(|e| format!("dirty log: {e}"))?;
    let dirty: u64 = runs.iter().map(|&(_, n)| n).sum();
    let sent = out.enc.summary().bytes;
    let elapsed = timer::now().since(out.round_start).as_nanos();
    let next = out.planner.round_done(dirty, sent - out.round_bytes, elapsed);
    println!(
        "migrate: guest {}: round {} sent {} bytes in {} ms; {dirty} pages dirty since",
        vm.name,
        out.rounds - 1,
        sent - out.round_bytes,
        elapsed / 1_000_000
    );
    out.round_start = timer::now();
    out.round_bytes = sent;
    match next {
        Next::Round => {
            out.phase = Phase::Rounds { runs, next: 0, done: 0 };
            Ok(Progress::More { poll: false })
        }
        Next::StopAndCopy { reason } => {
            println!(
                "migrate: guest {}: round {} left {dirty} dirty pages: stop and copy ({reason:?})",
                vm.name, out.rounds
            );
            // The pages harvested now are sent after the pause, with the last ones. The downtime
            // starts at the pause itself (not at this step's start: the guest ran until now).
            out.phase = Phase::Rounds { runs, next: 0, done: 0 };
            let paused_at = timer::now();
            pause(core, out.vm);
            out.phase_after_pause(paused_at);
            Ok(Progress::More { poll: true })
        }
    }
}

impl Outgoing {
    /// Keeps the harvested runs for the final copy and waits for the vCPUs to leave.
    fn phase_after_pause(&mut self, now: Instant) {
        let runs = match core::mem::replace(&mut self.phase, Phase::Pausing { since: now }) {
            Phase::Rounds { runs, .. } => runs,
            _ => DirtyRuns::new(),
        };
        self.final_runs = runs;
    }
}

/// Pauses `vm`: every vCPU leaves its core at its next exit or entry and stays blocked.
fn pause(core: &mut Core<'_>, vm_index: usize) {
    let vm = &core.hyp.vms[vm_index];
    vm.set_paused(true);
    // The boot core itself may hold one of them loaded.
    core.put_away_kept();
    for index in 0..vm.vcpus {
        if let Some(id) = vm.vcpu_id(index) {
            core.kick_vcpu(id);
        }
    }
}

/// Resumes a paused `vm`: its vCPUs run again (a vCPU that was waiting in WFI sees a spurious
/// wake-up, which the architecture allows).
fn resume(core: &mut Core<'_>, vm_index: usize) {
    let vm = &core.hyp.vms[vm_index];
    vm.set_paused(false);
    for index in 0..vm.vcpus {
        if let Some(id) = vm.vcpu_id(index) {
            core.kick_vcpu(id);
        }
    }
}

/// Whether every vCPU of `vm` is off its core with its state saved.
fn all_left(core: &Core<'_>, vm: &Vm) -> bool {
    (0..vm.vcpus)
        .filter_map(|i| vm.vcpu_id(i))
        .all(|id| core.hyp.sys.status(id).state != VcpuState::Running && core.hyp.vcpu(id).ctx.try_lock().is_some())
}

/// Waits for the pause, then sends the stop-and-copy part and the trailer.
fn pausing(core: &mut Core<'_>, out: &mut Outgoing, since: Instant, now: Instant) -> Result<Progress, String> {
    let vm = &core.hyp.vms[out.vm];
    if !all_left(core, vm) {
        if now.since(since) > Nanos::from_secs(1) {
            return Err("the guest's vCPUs did not leave their cores within 1 s".to_string());
        }
        return Ok(Progress::More { poll: false });
    }
    // Downtime from here. The last pages: what the final harvest finds and what the planner's
    // last round left.
    let mut runs = core::mem::take(&mut out.final_runs);
    vm.harvest_dirty(&mut runs).map_err(|e| format!("dirty log: {e}"))?;
    checkpoint::encode_state(&mut out.enc, vm, &core.hyp.vcpus, |id| vcpu_power(core, id))?;
    out.log_counts = vm.dirty_log_counts();
    let mut page = alloc::vec![0u8; PAGE as usize * 16];
    for &(first, count) in &runs {
        let mut done = 0;
        while done < count {
            let n = (count - done).min(16);
            send_dirty(&mut out.enc, &mut out.pages_resent, vm, &mut page, first + done, n)?;
            done += n;
        }
    }
    let paused_ns = timer::now().since(since).as_nanos();
    out.enc
        .timing(&Timing {
            downtime_ns: paused_ns,
            precopy_rounds: out.rounds.saturating_sub(1),
            pages_resent: out.pages_resent,
        })
        .map_err(|e| format!("{e}"))?;
    out.paused_ns = paused_ns;
    Ok(Progress::Sent)
}

/// Copies `n` pages (at most the buffer's 16) of guest RAM from page `first` and sends them as a
/// dirty run; counts them in `pages_resent`.
fn send_dirty(
    enc: &mut Encoder<StreamSink>,
    pages_resent: &mut u64,
    vm: &Vm,
    page: &mut [u8],
    first: u64,
    n: u64,
) -> Result<(), String> {
    let offset = first * PAGE;
    let bytes = (n * PAGE) as usize;
    let buf = page.get_mut(..bytes).ok_or("a dirty run larger than the copy buffer")?;
    if !vm.snapshot_ram(offset, buf) {
        return Err(format!("guest RAM at offset {offset:#x} cannot be read"));
    }
    enc.dirty(vm.ram_ipa.start + offset, buf).map_err(|e| format!("{e}"))?;
    *pages_resent += n;
    Ok(())
}

/// A vCPU's state in the runtime, for its power state in the checkpoint.
fn vcpu_power(core: &Core<'_>, id: VcpuId) -> VcpuState {
    core.hyp.sys.status(id).state
}

/// The stream is complete: READY or not decides.
fn finish(core: &mut Core<'_>, out: alloc::boxed::Box<Outgoing>, vm_index: usize) -> (State, bool) {
    let Outgoing { enc, started, rounds, pages_resent, hardware, paused_ns, after, log_counts, .. } = *out;
    let (sink, summary) = match enc.finish() {
        Ok(done) => done,
        Err(e) => {
            abort(core, vm_index, &format!("{e}"));
            return (State::Over, true);
        }
    };
    let mut peer = sink.0;
    if let Err(e) = peer.stream.flush() {
        abort(core, vm_index, &format!("{e}"));
        return (State::Over, true);
    }
    let answer = peer.await_control(timer::now() + answer_timeout());
    let vm = &core.hyp.vms[vm_index];
    match answer {
        Ok(Control::Ready { stream_len, stream_crc })
            if summary.trailer.is_some_and(|t| t.length == stream_len && t.stream_crc == stream_crc) => {}
        Ok(Control::Ready { stream_len, stream_crc }) => {
            send_abort(&mut peer);
            abort(
                core,
                vm_index,
                &format!(
                    "the destination verified {stream_len} bytes with CRC {stream_crc:#010x}; the stream sent was {:?}",
                    summary.trailer
                ),
            );
            return (State::Over, true);
        }
        Ok(Control::Refused { code, reason }) => {
            abort(core, vm_index, &format!("the destination refused ({}): {reason}", code.name()));
            return (State::Over, true);
        }
        Ok(other) => {
            send_abort(&mut peer);
            abort(core, vm_index, &format!("the destination answered {other} instead of READY"));
            return (State::Over, true);
        }
        Err(e) => {
            send_abort(&mut peer);
            abort(core, vm_index, &format!("no READY from the destination: {e}"));
            return (State::Over, true);
        }
    }
    // Committed: from here the guest belongs to the destination.
    let commit = peer.stream.write(&Control::Commit.encode()).and_then(|()| peer.stream.flush());
    match after {
        After::Stop => core.stop_vm(vm, StopReason::Migrated, VcpuId(u16::MAX)),
        // Paused, its memory kept; nothing here runs it until it comes back.
        After::AwaitReturn => {
            if let Err(e) = vm.stop_dirty_log() {
                crate::fail!("migrate: guest {}: cannot end dirty logging: {e}", vm.name);
            }
        }
    }
    let total = timer::now().since(started);
    match commit.map_err(|e| format!("{e}")).and_then(|()| peer.await_control(timer::now() + answer_timeout())) {
        Ok(Control::Done) => println!(
            "migrate: guest {} migrated: bytes={} rounds={rounds} pages_resent={pages_resent} dirty_log={} faulted={} found_by_cpu={} paused_us={} total_ms={}",
            vm.name,
            summary.bytes,
            if hardware { "hw" } else { "wp" },
            log_counts.0,
            log_counts.1,
            paused_ns / 1000,
            total.as_millis()
        ),
        Ok(other) => println!("migrate: guest {}: IN DOUBT: COMMIT sent, the destination answered {other}; the guest is stopped here", vm.name),
        Err(e) => println!(
            "migrate: guest {}: IN DOUBT: COMMIT sent, no DONE ({e}); the guest is stopped here and may not run there",
            vm.name
        ),
    }
    let next = match after {
        After::AwaitReturn => {
            println!("offload: guest {} is away; waiting for it to come back", vm.name);
            State::AwaitingReturn { vm: vm_index, peer: alloc::boxed::Box::new(peer), since: timer::now() }
        }
        After::Stop => State::Over,
    };
    (next, true)
}

/// The guest stopped (or the run ends) while it was being sent: the destination is told to
/// drop what it has.
fn abandon(out: alloc::boxed::Box<Outgoing>, vms: &[Vm]) {
    let vm = &vms[out.vm];
    let mut peer = out.enc.abandon().0;
    send_abort(&mut peer);
    let _ = vm.stop_dirty_log();
    println!("migrate: not migrated: guest {} stopped before it was sent; the destination was told to abort", vm.name);
}

/// Tells the destination, best effort, to drop what it has (ABORT).
fn send_abort(peer: &mut Peer) {
    let _ = peer.stream.write(&Control::Abort.encode()).and_then(|()| peer.stream.flush());
}

/// The run ends: a migration still under way is abandoned.
pub fn end_of_run(vms: &[Vm]) {
    if let Some(State::Running(out)) = STATE.lock().take() {
        abandon(out, vms);
    }
}

/// The migration failed before the destination took the guest: it runs on here.
fn abort(core: &mut Core<'_>, vm_index: usize, why: &str) {
    let vm = &core.hyp.vms[vm_index];
    if let Err(e) = vm.stop_dirty_log() {
        crate::fail!("migrate: guest {}: cannot end dirty logging: {e}", vm.name);
    }
    resume(core, vm_index);
    println!("migrate: not migrated: {why}; guest {} resumes here", vm.name);
}

/// What a migration brought in, for the runtime.
pub struct Incoming {
    pub restored: checkpoint::Restored,
    stream: Peer,
    /// When the trailer was in.
    pub received_at: Instant,
    /// READY for the stream received, sent once this instance is ready to run the guest.
    ready: Control,
}

/// The destination's part, at boot before any core runs the VM: fills `vm` from the stream,
/// verified to its trailer, or answers REFUSED with the reason (and returns it as the error).
/// READY follows in [`await_commit`].
pub fn receive(vm: &Vm, vcpus: &[super::vm::Vcpu]) -> Result<Incoming, String> {
    let mut stream = MigrationStream::open().map_err(|e| format!("{e}"))?;
    // All of the guest's RAM counts as written once the stream is in (`touch_all`): its
    // stage-2 half now, while nothing runs in the VM, rather than in the downtime.
    vm.make_ram_writable();
    println!("migrate: waiting for a guest on the virtio console at {:#x}", stream.mmio().base);
    let result = first_bytes(&mut stream).and_then(|head| {
        checkpoint::restore_from(
            Prefixed { head, used: 0, rest: StreamSource { stream: &mut stream, confirmed: 0 } },
            vm,
            vcpus,
        )
    });
    match result {
        Ok((restored, stream_len, stream_crc)) => {
            let received_at = timer::now();
            vm.mark_all_touched();
            Ok(Incoming {
                restored,
                stream: Peer::new(stream),
                received_at,
                ready: Control::Ready { stream_len, stream_crc },
            })
        }
        Err(e) => {
            let refused = Control::refused(Refusal::Invalid, &e);
            let _ = stream.write(&refused.encode()).and_then(|()| stream.flush());
            Err(e)
        }
    }
}

/// The stream's first 8 bytes: a checkpoint's magic, or the start of a control frame (a source
/// that decided to keep its guest sends ABORT instead of a stream), which is read whole and
/// reported as the error.
fn first_bytes(stream: &mut MigrationStream) -> Result<[u8; 8], String> {
    let mut head = [0u8; 8];
    let mut source = StreamSource { stream, confirmed: 0 };
    let mut got = 0;
    while got < head.len() {
        got += source.read(&mut head[got..]).map_err(|e| e.0.to_string())?;
    }
    if head == migrate::live::CONTROL_MAGIC {
        let mut frame = [0u8; CONTROL_FRAME_LEN];
        frame[..8].copy_from_slice(&head);
        let mut got = 8;
        while got < frame.len() {
            got += source.read(&mut frame[got..]).map_err(|e| e.0.to_string())?;
        }
        return Err(match Control::decode(&frame) {
            Ok(c) => format!("the source sent {c} instead of a guest"),
            Err(e) => format!("the source sent a bad control frame ({e}) instead of a guest"),
        });
    }
    Ok(head)
}

/// A source that gives `head` first, then `rest`.
struct Prefixed<'a> {
    head: [u8; 8],
    used: usize,
    rest: StreamSource<'a>,
}

impl Source for Prefixed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, SourceError> {
        if self.used < self.head.len() {
            let n = (self.head.len() - self.used).min(buf.len());
            buf[..n].copy_from_slice(&self.head[self.used..self.used + n]);
            self.used += n;
            return Ok(n);
        }
        self.rest.read(buf)
    }
}

/// Once everything that could still fail here is done (the runtime, the energy model): READY,
/// then COMMIT is awaited. Only then may the VM run. (A failure before READY leaves the source
/// without an answer: it resumes the guest at its timeout.)
pub fn await_commit(incoming: &mut Incoming) -> Result<(), String> {
    let ready = incoming.ready.encode();
    let stream = &mut incoming.stream.stream;
    stream.write(&ready).and_then(|()| stream.flush()).map_err(|e| format!("{e}"))?;
    match incoming.stream.await_control(timer::now() + answer_timeout())? {
        Control::Commit => Ok(()),
        other => Err(format!("the source answered {other} instead of COMMIT")),
    }
}

/// The VM runs here now: DONE tells the source. With `hv.offload-server` the stream is kept:
/// the guest goes back over it at its return point.
pub fn send_done(incoming: Incoming, vm: usize) {
    let mut peer = incoming.stream;
    let _ = peer.stream.write(&Control::Done.encode()).and_then(|()| peer.stream.flush());
    if offload_server() {
        println!("offload: serving guest {vm}; it goes back at its return point");
        *STATE.lock() = Some(State::Server { vm, peer: alloc::boxed::Box::new(peer) });
    }
}

/// The phone's guest comes back (it is paused here, its vCPUs off their cores): its RAM, vCPUs,
/// vGIC and devices are replaced from the stream, verified to the trailer; then READY, COMMIT,
/// and it resumes with its virtual time moved on by the downtime. A failure before COMMIT leaves
/// it to the server, which resumes it there (this copy may be half overwritten: it stays
/// paused).
fn receive_back(core: &mut Core<'_>, vm_index: usize, peer: &mut Peer, since: Instant) {
    let hyp = core.hyp;
    let vm = &hyp.vms[vm_index];
    let away = timer::now().since(since);
    let result = checkpoint::restore_from(StreamSource { stream: &mut peer.stream, confirmed: 0 }, vm, &hyp.vcpus);
    let (restored, stream_len, stream_crc) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ =
                peer.stream.write(&Control::refused(Refusal::Invalid, &e).encode()).and_then(|()| peer.stream.flush());
            println!("offload: guest {} could not come back: {e}; it stays with the server", vm.name);
            return;
        }
    };
    let received_at = timer::now();
    vm.touch_all();
    // Every vCPU must be as the server had it: on (the runtime has them paused, not off).
    if let Some(k) = restored.power.iter().position(|p| !matches!(p, migrate::checkpoint::PowerState::On)) {
        let why = format!("vCPU {k} comes back off; the phone has it on");
        let _ = peer
            .stream
            .write(&Control::refused(Refusal::Incompatible, &why).encode())
            .and_then(|()| peer.stream.flush());
        println!("offload: guest {} could not come back: {why}", vm.name);
        return;
    }
    let ready = Control::Ready { stream_len, stream_crc };
    if peer.stream.write(&ready.encode()).and_then(|()| peer.stream.flush()).is_err() {
        println!("offload: guest {}: READY could not be sent; it stays with the server", vm.name);
        return;
    }
    match peer.await_control(timer::now() + answer_timeout()) {
        Ok(Control::Commit) => {}
        Ok(other) => {
            println!("offload: guest {}: the server answered {other} instead of COMMIT; it stays there", vm.name);
            return;
        }
        Err(e) => {
            println!("offload: guest {}: no COMMIT ({e}); it stays with the server", vm.name);
            return;
        }
    }
    let here = timer::now().since(received_at).as_nanos();
    let downtime = restored.timing.as_ref().map_or(0, |t| t.downtime_ns) + here;
    let ticks = timer::nanos_to_ticks(downtime, timer::frequency_hz());
    vm.cntvoff.store(restored.timers.cntvoff(timer::counter()).wrapping_sub(ticks), Ordering::Release);
    for index in 0..vm.vcpus {
        if let Some(id) = vm.vcpu_id(index) {
            let vcpu = hyp.vcpu(id);
            // Its timer's deadline comes from the restored state, when it next leaves a core.
            vcpu.timer_deadline.store(super::vm::NO_DEADLINE, Ordering::Release);
            vcpu.vgic_epoch.fetch_add(1, Ordering::AcqRel);
        }
    }
    resume(core, vm_index);
    let _ = peer.stream.write(&Control::Done.encode()).and_then(|()| peer.stream.flush());
    println!("offload: guest {} is back: away_ms={} downtime_us={}", vm.name, away.as_millis(), downtime / 1000);
}
