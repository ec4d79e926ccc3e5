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

use migrate::checkpoint::{
    CheckpointHeader, EncodeOptions, Encoder, Sink, SinkError, Source, SourceError, Timing, VmConfig,
};
use migrate::live::{Control, Next, Precopy, PrecopyLimits, Refusal, CONTROL_FRAME_LEN};
use spin::Mutex;
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
/// The shortest pause between two steps of a migration under way.
const STEP_PERIOD: Nanos = Nanos::from_micros(500);

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
    Over,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);
/// When the boot core should come back ([`NEVER`]: no migration under way).
static NEXT_STEP: AtomicU64 = AtomicU64::new(NEVER);

/// At boot, with `hv.migrate-out`: opens the stream (a missing device fails the boot now, not
/// in the middle of the run) and arms the migration for its time.
pub fn arm(start: Instant, vms: usize) -> Result<(), String> {
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
        None => return false,
    };
    let (next, poll) = match state {
        State::Armed { at, vm, stream } if now >= at => match start(core, vm, *stream, now) {
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
                (State::Over, finish(core, out, vm))
            }
            Err(e) => {
                let vm = out.vm;
                let mut peer = out.enc.abandon().0;
                send_abort(&mut peer);
                abort(core, vm, &e);
                (State::Over, true)
            }
        },
        State::Over => (State::Over, false),
    };
    // At most half of the boot core's time: its own vCPUs (maybe the migrating guest's) run
    // between steps at least as long as the last step took.
    let done = timer::now();
    NEXT_STEP.store(
        match &next {
            State::Armed { at, .. } => at.as_nanos(),
            State::Running(_) => (done + Nanos(done.since(now).as_nanos().max(STEP_PERIOD.as_nanos()))).as_nanos(),
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
    stream: MigrationStream,
    now: Instant,
) -> Result<alloc::boxed::Box<Outgoing>, String> {
    let vm = &core.hyp.vms[vm_index];
    let hardware = vm.start_dirty_log().map_err(|e| format!("dirty logging: {e}"))?;
    let header = CheckpointHeader::new(vm.vcpus, vm.ram_ipa.start, vm.ram_bytes());
    let config = VmConfig { name: vm.name.clone(), weight: vm.weight, reservation: vm.reservation };
    let enc = match Encoder::new_live(StreamSink(Peer::new(stream)), &header, &config, EncodeOptions::default()) {
        Ok(enc) => enc,
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
    }))
}

/// Sends up to [`STEP_BYTES`] of a round, or, when the round is over, asks the planner.
fn run_step(core: &mut Core<'_>, out: &mut Outgoing, now: Instant) -> Result<Progress, String> {
    let vm = &core.hyp.vms[out.vm];
    let mut page = alloc::vec![0u8; PAGE as usize * 16];
    match &mut out.phase {
        Phase::FullCopy { offset } => {
            let end = (*offset + STEP_BYTES).min(vm.ram_bytes());
            while *offset < end {
                let n = (end - *offset).min(page.len() as u64) as usize;
                if !vm.snapshot_ram(*offset, &mut page[..n]) {
                    return Err(format!("guest RAM at offset {:#x} cannot be read", *offset));
                }
                out.enc.memory(vm.ram_ipa.start + *offset, &page[..n]).map_err(|e| format!("{e}"))?;
                *offset += n as u64;
            }
            if *offset < vm.ram_bytes() {
                return Ok(Progress::More { poll: false });
            }
        }
        Phase::Rounds { runs, next, done } => {
            let mut budget = STEP_BYTES / PAGE;
            while budget > 0 && *next < runs.len() {
                let (first, count) = runs[*next];
                let n = (count - *done).min(budget).min(16);
                let offset = (first + *done) * PAGE;
                let bytes = (n * PAGE) as usize;
                if !vm.snapshot_ram(offset, &mut page[..bytes]) {
                    return Err(format!("guest RAM at offset {offset:#x} cannot be read"));
                }
                out.enc.dirty(vm.ram_ipa.start + offset, &page[..bytes]).map_err(|e| format!("{e}"))?;
                out.pages_resent += n;
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
            // The pages harvested now are sent after the pause, with the last ones.
            out.phase = Phase::Rounds { runs, next: 0, done: 0 };
            pause(core, out.vm);
            out.phase_after_pause(now);
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
    vm.paused.store(true, Ordering::SeqCst);
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
    vm.paused.store(false, Ordering::SeqCst);
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
    let mut page = alloc::vec![0u8; PAGE as usize * 16];
    for &(first, count) in &runs {
        let mut done = 0;
        while done < count {
            let n = (count - done).min(16);
            let offset = (first + done) * PAGE;
            let bytes = (n * PAGE) as usize;
            if !vm.snapshot_ram(offset, &mut page[..bytes]) {
                return Err(format!("guest RAM at offset {offset:#x} cannot be read"));
            }
            out.enc.dirty(vm.ram_ipa.start + offset, &page[..bytes]).map_err(|e| format!("{e}"))?;
            out.pages_resent += n;
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

/// A vCPU's state in the runtime, for its power state in the checkpoint.
fn vcpu_power(core: &Core<'_>, id: VcpuId) -> VcpuState {
    core.hyp.sys.status(id).state
}

/// The stream is complete: READY or not decides.
fn finish(core: &mut Core<'_>, out: alloc::boxed::Box<Outgoing>, vm_index: usize) -> bool {
    let Outgoing { enc, started, rounds, pages_resent, hardware, paused_ns, .. } = *out;
    let (sink, summary) = match enc.finish() {
        Ok(done) => done,
        Err(e) => {
            abort(core, vm_index, &format!("{e}"));
            return true;
        }
    };
    let mut peer = sink.0;
    if let Err(e) = peer.stream.flush() {
        abort(core, vm_index, &format!("{e}"));
        return true;
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
            return true;
        }
        Ok(Control::Refused { code, reason }) => {
            abort(core, vm_index, &format!("the destination refused ({}): {reason}", code.name()));
            return true;
        }
        Ok(other) => {
            send_abort(&mut peer);
            abort(core, vm_index, &format!("the destination answered {other} instead of READY"));
            return true;
        }
        Err(e) => {
            send_abort(&mut peer);
            abort(core, vm_index, &format!("no READY from the destination: {e}"));
            return true;
        }
    }
    // Committed: from here the guest belongs to the destination.
    let commit = peer.stream.write(&Control::Commit.encode()).and_then(|()| peer.stream.flush());
    core.stop_vm(vm, StopReason::Migrated, VcpuId(u16::MAX));
    let total = timer::now().since(started);
    match commit.map_err(|e| format!("{e}")).and_then(|()| peer.await_control(timer::now() + answer_timeout())) {
        Ok(Control::Done) => println!(
            "migrate: guest {} migrated: bytes={} rounds={rounds} pages_resent={pages_resent} dirty_log={} paused_us={} total_ms={}",
            vm.name,
            summary.bytes,
            if hardware { "hw" } else { "wp" },
            paused_ns / 1000,
            total.as_millis()
        ),
        Ok(other) => println!("migrate: guest {}: IN DOUBT: COMMIT sent, the destination answered {other}; the guest is stopped here", vm.name),
        Err(e) => println!(
            "migrate: guest {}: IN DOUBT: COMMIT sent, no DONE ({e}); the guest is stopped here and may not run there",
            vm.name
        ),
    }
    true
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
}

/// The destination's part, at boot before any core runs the VM: fills `vm` from the stream and
/// answers READY, or REFUSED with the reason (and returns it as the error).
pub fn receive(vm: &Vm, vcpus: &[super::vm::Vcpu]) -> Result<Incoming, String> {
    let mut stream = MigrationStream::open().map_err(|e| format!("{e}"))?;
    println!("migrate: waiting for a guest on the virtio console at {:#x}", stream.mmio().base);
    let result = checkpoint::restore_from(StreamSource { stream: &mut stream, confirmed: 0 }, vm, vcpus);
    match result {
        Ok((restored, stream_len, stream_crc)) => {
            let ready = Control::Ready { stream_len, stream_crc };
            stream.write(&ready.encode()).and_then(|()| stream.flush()).map_err(|e| format!("{e}"))?;
            let received_at = timer::now();
            Ok(Incoming { restored, stream: Peer::new(stream), received_at })
        }
        Err(e) => {
            let refused = Control::refused(Refusal::Invalid, &e);
            let _ = stream.write(&refused.encode()).and_then(|()| stream.flush());
            Err(e)
        }
    }
}

/// After READY: waits for COMMIT. Only then may the VM run.
pub fn await_commit(incoming: &mut Incoming) -> Result<(), String> {
    match incoming.stream.await_control(timer::now() + answer_timeout())? {
        Control::Commit => Ok(()),
        other => Err(format!("the source answered {other} instead of COMMIT")),
    }
}

/// The VM runs here now: DONE tells the source.
pub fn send_done(incoming: &mut Incoming) {
    let stream = &mut incoming.stream.stream;
    let _ = stream.write(&Control::Done.encode()).and_then(|()| stream.flush());
}
