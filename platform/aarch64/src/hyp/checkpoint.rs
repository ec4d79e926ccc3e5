//! Checkpoint and restore of a VM through the checkpoint disk (`crate::virtio`), in the format
//! of `migrate::checkpoint` (docs/checkpoint-format.md; docs/migration.md, *Checkpoints*).
//!
//! - `hv.checkpoint-at=MS`: the run ends MS ms after it started, as at the end of a scenario
//!   (every vCPU stops at an exit boundary, its state put away, its list registers synced into
//!   the vGIC model); then the boot core writes the first VM's checkpoint to the disk and the
//!   run ends.
//! - `hv.checkpoint-on="TEXT"`: the run ends, as above, once the first VM's console prints a
//!   line containing TEXT, so that a checkpoint is taken at a point of the guest's own program
//!   however long it took to get there. A run that ends otherwise writes no checkpoint and fails.
//! - `hv.restore`: the first VM is built from the manifest as usual (its RAM, stage 2, devices),
//!   then its memory, vCPUs, vGIC and virtual counter are replaced from the checkpoint on the
//!   disk before any core runs it. The whole stream is verified (every section and the trailer)
//!   before the VM starts: a bad checkpoint fails the boot and nothing of it runs.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use migrate::checkpoint::{
    CheckpointHeader, CpuRegs, Decoder, DeviceState, El1Regs, EncodeOptions, Encoder, Event, FpSimd, GicCpu,
    GuestMemory, Pl011State, PowerState, Sink, SinkError, Source, SourceError, TimerState, Timing, Trailer, VcpuState,
    VirtualTimer, VmConfig,
};
use vcpu_runtime::manifest::GUEST_RAM_BASE;
use vcpu_runtime::{VcpuId, VcpuState as RunState};

use super::vm::{Vcpu, Vm};
use crate::guest::{El1State, GicCpuState, GuestRegs, VcpuContext};
use crate::virtio::{CheckpointDisk, DiskReader, DiskWriter};
use crate::{println, timer};

/// No checkpoint requested.
const NEVER: u64 = u64::MAX;
static CHECKPOINT_AT_MS: AtomicU64 = AtomicU64::new(NEVER);
static RESTORE: AtomicBool = AtomicBool::new(false);
/// `hv.checkpoint-on`'s text, set once at boot.
static CHECKPOINT_ON: spin::Once<String> = spin::Once::new();
/// The first VM printed `CHECKPOINT_ON`'s text.
static CHECKPOINT_ON_SEEN: AtomicBool = AtomicBool::new(false);

/// `hv.checkpoint-at=MS`.
pub fn set_checkpoint_at(ms: u64) {
    CHECKPOINT_AT_MS.store(ms, Ordering::Relaxed);
}

/// When the run must end for a checkpoint, in ms from its start.
pub fn checkpoint_at_ms() -> Option<u64> {
    Some(CHECKPOINT_AT_MS.load(Ordering::Relaxed)).filter(|&ms| ms != NEVER)
}

/// `hv.checkpoint-on=TEXT`.
pub fn set_checkpoint_on(text: &str) {
    CHECKPOINT_ON.call_once(|| text.to_string());
}

/// Whether this run ends with a checkpoint of the first VM.
pub fn requested() -> bool {
    checkpoint_at_ms().is_some() || CHECKPOINT_ON.get().is_some()
}

/// Whether a finished console `line` of VM `vm` is the one `hv.checkpoint-on` waits for: true
/// once, for the first VM's first such line.
pub fn is_checkpoint_line(vm: usize, line: &[u8]) -> bool {
    let Some(text) = CHECKPOINT_ON.get().map(String::as_bytes) else { return false };
    vm == 0 && line.windows(text.len()).any(|w| w == text) && !CHECKPOINT_ON_SEEN.swap(true, Ordering::AcqRel)
}

/// The text `hv.checkpoint-on` waited for, when the run ended without the first VM printing
/// it.
pub fn checkpoint_line_missing() -> Option<&'static str> {
    let text = CHECKPOINT_ON.get()?;
    (!CHECKPOINT_ON_SEEN.load(Ordering::Acquire)).then_some(text.as_str())
}

/// `hv.restore`.
pub fn set_restore(restore: bool) {
    RESTORE.store(restore, Ordering::Relaxed);
}

pub fn restore_requested() -> bool {
    RESTORE.load(Ordering::Relaxed)
}

struct DiskSink<'a>(DiskWriter<'a>);

impl Sink for DiskSink<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), SinkError> {
        self.0.write(bytes).map_err(|_| SinkError("the checkpoint disk refused a write"))
    }
}

struct DiskSource<'a>(DiskReader<'a>);

impl Source for DiskSource<'_> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, SourceError> {
        self.0.read(buf).map_err(|_| SourceError("the checkpoint disk failed a read (I/O or its checksum)"))
    }
}

/// Copies the 24 EL1/EL0 system registers, which both types name alike.
macro_rules! el1_fields {
    ($from:expr => $to:ident { $($extra:tt)* }) => {
        $to {
            sp_el0: $from.sp_el0,
            sp_el1: $from.sp_el1,
            elr_el1: $from.elr_el1,
            spsr_el1: $from.spsr_el1,
            sctlr_el1: $from.sctlr_el1,
            cpacr_el1: $from.cpacr_el1,
            ttbr0_el1: $from.ttbr0_el1,
            ttbr1_el1: $from.ttbr1_el1,
            tcr_el1: $from.tcr_el1,
            mair_el1: $from.mair_el1,
            amair_el1: $from.amair_el1,
            vbar_el1: $from.vbar_el1,
            contextidr_el1: $from.contextidr_el1,
            tpidr_el0: $from.tpidr_el0,
            tpidrro_el0: $from.tpidrro_el0,
            tpidr_el1: $from.tpidr_el1,
            esr_el1: $from.esr_el1,
            far_el1: $from.far_el1,
            afsr0_el1: $from.afsr0_el1,
            afsr1_el1: $from.afsr1_el1,
            par_el1: $from.par_el1,
            cntkctl_el1: $from.cntkctl_el1,
            csselr_el1: $from.csselr_el1,
            mdscr_el1: $from.mdscr_el1,
            $($extra)*
        }
    };
}

/// A vCPU's saved context as checkpoint data.
fn vcpu_state(index: u16, power: PowerState, ctx: &VcpuContext) -> VcpuState {
    let e = &ctx.el1;
    VcpuState {
        index,
        power,
        regs: CpuRegs { x: ctx.regs.x, pc: ctx.regs.pc, pstate: ctx.regs.pstate },
        el1: el1_fields!(e => El1Regs {}),
        timer: VirtualTimer { cntv_ctl: e.cntv_ctl, cntv_cval: e.cntv_cval },
        fp: FpSimd { fpcr: e.fpcr, fpsr: e.fpsr, v: e.vregs },
        gic: GicCpu { vmcr: ctx.gic.vmcr, ap0r: ctx.gic.ap0r, ap1r: ctx.gic.ap1r },
        vmpidr: ctx.vmpidr,
    }
}

/// Checkpoint data back into a vCPU context.
fn restore_context(ctx: &mut VcpuContext, s: &VcpuState) {
    let r = &s.el1;
    ctx.regs = GuestRegs { x: s.regs.x, pc: s.regs.pc, pstate: s.regs.pstate };
    ctx.el1 = el1_fields!(r => El1State {
        cntv_cval: s.timer.cntv_cval,
        cntv_ctl: s.timer.cntv_ctl,
        fpcr: s.fp.fpcr,
        fpsr: s.fp.fpsr,
        vregs: s.fp.v,
    });
    ctx.gic = GicCpuState { vmcr: s.gic.vmcr, ap0r: s.gic.ap0r, ap1r: s.gic.ap1r };
    ctx.vmpidr = s.vmpidr;
    ctx.lr_memo = Default::default();
}

/// Writes the checkpoint of `vm` (every vCPU put away, the run over) to the checkpoint disk.
/// `states` are its vCPUs' runtime states at the end of the run. Returns the bytes written and
/// the stream's CRC.
pub fn write(vm: &Vm, vcpus: &[Vcpu], states: &[(VcpuId, RunState)]) -> Result<(u64, u32), String> {
    let mut disk = CheckpointDisk::open().map_err(|e| format!("{e}"))?;
    let header = CheckpointHeader::new(vm.vcpus, vm.ram_ipa.start, vm.ram_ipa.end - vm.ram_ipa.start);
    let config = VmConfig { name: vm.name.clone(), weight: vm.weight, reservation: vm.reservation };
    let sink = DiskSink(disk.writer());
    let mut enc = Encoder::new(sink, &header, &config, EncodeOptions::default())
        .map_err(|e| format!("{e}"))?
        .with_crc(crate::crc::crc32c());
    let state_of = |id: VcpuId| states.iter().find(|(v, _)| *v == id).map_or(RunState::Parked, |&(_, s)| s);
    encode_state(&mut enc, vm, vcpus, state_of)?;
    vm.with_ram(|ram| enc.memory(header.ram_base, ram)).map_err(|e| format!("{e}"))?;
    let (sink, _summary) = enc.finish().map_err(|e| format!("{e}"))?;
    let summary = sink.0.finish().map_err(|e| format!("{e}"))?;
    Ok((summary.len, summary.crc))
}

/// Writes the state sections of `vm` (every vCPU off its core, state saved): each vCPU, the
/// vGIC, the timers and the devices. `state_of` gives a vCPU's runtime state (a parked vCPU is
/// off; one with a `CPU_ON` waiting is on-pending; any other was on).
pub fn encode_state<S: Sink>(
    enc: &mut Encoder<S>,
    vm: &Vm,
    vcpus: &[Vcpu],
    state_of: impl Fn(VcpuId) -> RunState,
) -> Result<(), String> {
    for vcpu in vcpus.iter().filter(|v| v.vm == vm.id) {
        let boot = *vcpu.boot.lock();
        let power = match (state_of(vcpu.id), boot) {
            (_, Some((entry, context))) => PowerState::OnPending { entry, context },
            (RunState::Parked, None) => PowerState::Off,
            // Stopped here means halted by the end of the run: it was on.
            _ => PowerState::On,
        };
        let ctx = vcpu.ctx.lock();
        enc.vcpu(&vcpu_state(vcpu.index, power, &ctx)).map_err(|e| format!("{e}"))?;
    }
    enc.vgic(&vm.vgic().save()).map_err(|e| format!("{e}"))?;
    let cntvoff = vm.cntvoff.load(Ordering::Acquire);
    let timers =
        TimerState { counter_hz: timer::frequency_hz(), virtual_count: timer::counter().wrapping_sub(cntvoff) };
    enc.timers(&timers).map_err(|e| format!("{e}"))?;
    let uart = {
        let u = vm.uart.lock();
        let [ibrd, fbrd, lcr_h, cr, ifls, imsc, ris, dmacr] = u.registers();
        Pl011State { ibrd, fbrd, lcr_h, cr, ifls, imsc, ris, dmacr, line: u.pending_line().to_vec() }
    };
    enc.devices(&DeviceState { uart: Some(uart) }).map_err(|e| format!("{e}"))?;
    Ok(())
}

/// Guest RAM of a VM being restored.
struct RamPages<'a> {
    ram: &'a mut [u8],
    base: u64,
    vm: &'a Vm,
}

impl GuestMemory for RamPages<'_> {
    fn pages_mut(&mut self, ipa: u64, len: usize) -> Option<&mut [u8]> {
        let start = usize::try_from(ipa.checked_sub(self.base)?).ok()?;
        self.ram.get_mut(start..start.checked_add(len)?)
    }

    /// A zero run: only the pages this VM ever wrote need clearing (the others are zero).
    fn zero(&mut self, ipa: u64, len: u64) -> bool {
        let page = super::vm::PAGE;
        let mut at = 0;
        while at < len {
            let offset = ipa - self.base + at;
            if self.vm.page_touched(offset) {
                match self.pages_mut(ipa + at, page as usize) {
                    Some(p) => p.fill(0),
                    None => return false,
                }
            }
            at += page;
        }
        true
    }
}

/// What a restore leaves for the runtime: each vCPU's power state, the guest's counter, and for
/// a live migration the source's timing (its pause, to add to the guest's virtual time).
pub struct Restored {
    pub power: Vec<PowerState>,
    pub timers: TimerState,
    pub timing: Option<Timing>,
}

/// Replaces `vm` (built, never run) from the checkpoint on the disk: RAM, vCPU contexts, vGIC.
/// Everything is verified before this returns Ok; on an error the VM must not run.
pub fn restore(vm: &Vm, vcpus: &[Vcpu]) -> Result<Restored, String> {
    let mut disk = CheckpointDisk::open().map_err(|e| format!("{e}"))?;
    let reader = disk.reader().map_err(|e| format!("{e}"))?;
    restore_from(DiskSource(reader), vm, vcpus).map(|(r, _, _)| r)
}

/// Replaces `vm` (built, never run) from the checkpoint `source` gives, snapshot or live layout.
/// Everything is verified to the trailer before anything but the VM's RAM changes; on an error
/// the VM must not run. Returns also the trailer's stream length and CRC.
pub fn restore_from<S: Source>(source: S, vm: &Vm, vcpus: &[Vcpu]) -> Result<(Restored, u64, u32), String> {
    let mut decoder = Decoder::new(source).with_crc(crate::crc::crc32c());
    let mut power = Vec::new();
    let mut timers = None;
    let mut timing = None;
    let mut states: Vec<Box<VcpuState>> = Vec::new();
    let mut vgic_state = None;
    let mut devices: Option<DeviceState> = None;
    let mine: Vec<&Vcpu> = vcpus.iter().filter(|v| v.vm == vm.id).collect();
    let trailer = vm.with_ram_mut(|ram| -> Result<Trailer, String> {
        let mut memory = RamPages { ram, base: vm.ram_ipa.start, vm };
        loop {
            let event = decoder.next_event(&mut memory).map_err(|e| e.to_string())?;
            match event {
                Some(Event::Header(h)) => {
                    let size = vm.ram_ipa.end - vm.ram_ipa.start;
                    if h.vcpus != vm.vcpus || h.memory_bytes != size || h.ram_base != GUEST_RAM_BASE {
                        return Err(format!(
                            "the checkpoint is of a VM with {} vCPUs and {} MiB of RAM at {:#x}; guest `{}` has {} vCPUs and {} MiB at {:#x}",
                            h.vcpus,
                            h.memory_bytes >> 20,
                            h.ram_base,
                            vm.name,
                            vm.vcpus,
                            size >> 20,
                            GUEST_RAM_BASE
                        ));
                    }
                }
                Some(Event::Config(c)) => {
                    if c.name != vm.name {
                        println!("restore: checkpoint of `{}` restored into guest `{}`", c.name, vm.name);
                    }
                }
                Some(Event::Vcpu(s)) => states.push(s),
                Some(Event::Vgic(v)) => vgic_state = Some(v),
                Some(Event::Timers(t)) => {
                    if t.counter_hz != timer::frequency_hz() {
                        return Err(format!(
                            "the checkpoint's counter ran at {} Hz, this machine's at {} Hz",
                            t.counter_hz,
                            timer::frequency_hz()
                        ));
                    }
                    timers = Some(t);
                }
                Some(Event::Devices(d)) => devices = Some(d),
                Some(Event::Timing(t)) => timing = Some(t),
                Some(Event::Memory(_)) | Some(Event::Dirty(_)) => {}
                Some(Event::End(t)) => return Ok(t),
                None => return Err("the checkpoint ended without its trailer".to_string()),
            }
        }
    })?;
    // Verified to the trailer: now the VM's state may change.
    let vgic_state = vgic_state.ok_or("the checkpoint has no vGIC section")?;
    vm.vgic().restore(&vgic_state).map_err(|e| format!("vGIC: {e:?}"))?;
    if let Some(u) = devices.and_then(|d| d.uart) {
        *vm.uart.lock() =
            vdev::uart::Pl011::with_state([u.ibrd, u.fbrd, u.lcr_h, u.cr, u.ifls, u.imsc, u.ris, u.dmacr], &u.line);
    }
    for (s, vcpu) in states.iter().zip(&mine) {
        let mut ctx = vcpu.ctx.lock();
        restore_context(&mut ctx, s);
        *vcpu.boot.lock() = match s.power {
            PowerState::OnPending { entry, context } => Some((entry, context)),
            _ => None,
        };
        power.push(s.power);
    }
    let timers = timers.ok_or("the checkpoint has no timer section")?;
    Ok((Restored { power, timers, timing }, trailer.length, trailer.stream_crc))
}
