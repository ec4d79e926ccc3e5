//! The byte layout of each section's payload (see `docs/checkpoint-format.md`): one `put_*`
//! and one `get_*` per section, side by side so that they cannot drift apart.

use alloc::string::String;
use alloc::vec::Vec;

use super::error::Problem;
use super::state::*;
use super::wire::{Get, Put};
use super::{FILE_HEADER_LEN, FLAG_LIVE, MAGIC};

pub(crate) const CONFIG_LEN: usize = 56;
pub(crate) const VCPU_LEN: usize = 1104;
pub(crate) const TIMERS_LEN: usize = 16;
pub(crate) const END_LEN: usize = 24;
pub(crate) const TIMING_LEN: usize = 24;
pub(crate) const RUN_HEADER_LEN: usize = 16;
const VGIC_FIXED: usize = 16;
const IRQ_LEN: usize = 12;
const DEVICES_FIXED: usize = 8;
pub(crate) const DEVICE_PL011: u16 = 1;
const PL011_LEN: usize = 296;
/// The most device records a devices section may hold.
pub(crate) const MAX_DEVICES: u16 = 16;

const fn pad8(n: usize) -> usize {
    (n + 7) & !7
}

/// Invalid → Problem.
pub(crate) fn out_of_range(i: Invalid) -> Problem {
    Problem::OutOfRange { field: i.field, value: i.value }
}

// ----- file header -----

/// The file header; `flags` is 0 or [`FLAG_LIVE`].
pub(crate) fn put_header(out: &mut Vec<u8>, h: &CheckpointHeader, flags: u32) {
    let start = out.len();
    let mut p = Put(out);
    p.bytes(&MAGIC);
    p.u16(h.format_version);
    p.u16(FILE_HEADER_LEN as u16);
    p.u32(h.arch.0);
    p.u32(flags);
    p.u16(h.vcpus);
    p.u16(0);
    p.u32(super::PAGE_SIZE as u32);
    p.u32(0);
    p.u64(h.ram_base);
    p.u64(h.memory_bytes);
    p.zeros(12);
    let crc = super::wire::CRC.checksum(&out[start..]);
    Put(out).u32(crc);
}

/// Bytes 8..12 of the header: (format version, header length), read before the rest so that
/// a reader of another version is told so before anything else.
pub(crate) fn get_version(b: &[u8]) -> (u16, u16) {
    let mut g = Get::new(b);
    (g.u16(), g.u16())
}

/// The rest of the header, after magic, version and length were checked and its CRC verified:
/// the header and its flags.
pub(crate) fn get_header(b: &[u8]) -> Result<(CheckpointHeader, u32), Problem> {
    let mut g = Get::new(b);
    g.take(8);
    let format_version = g.u16();
    g.u16();
    let arch = Arch(g.u32());
    let flags = g.u32();
    let vcpus = g.u16();
    let r0 = g.u16();
    let page_size = g.u32();
    let r1 = g.u32();
    let ram_base = g.u64();
    let memory_bytes = g.u64();
    let reserved = g.take(12);
    if arch != Arch::HOST {
        return Err(Problem::WrongArch(arch));
    }
    // Version 1 has no flags; version 2 has LIVE.
    let known = if format_version >= 2 { FLAG_LIVE } else { 0 };
    if flags & !known != 0 {
        return Err(Problem::Reserved { field: "flags" });
    }
    if r0 != 0 || r1 != 0 || reserved.iter().any(|&b| b != 0) {
        return Err(Problem::Reserved { field: "header bytes" });
    }
    if page_size != super::PAGE_SIZE as u32 {
        return Err(Problem::OutOfRange { field: "page size", value: page_size.into() });
    }
    Ok((CheckpointHeader { format_version, arch, vcpus, ram_base, memory_bytes }, flags))
}

// ----- section header -----

pub(crate) fn section_header(kind: u8, len: u32, payload_crc: u32) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0] = kind;
    h[4..8].copy_from_slice(&len.to_le_bytes());
    h[8..12].copy_from_slice(&payload_crc.to_le_bytes());
    let crc = super::wire::CRC.checksum(&h[..12]);
    h[12..16].copy_from_slice(&crc.to_le_bytes());
    h
}

// ----- config -----

pub(crate) fn put_config(out: &mut Vec<u8>, c: &VmConfig) {
    let mut p = Put(out);
    let mut name = [0u8; 32];
    let n = c.name.len().min(32);
    name[..n].copy_from_slice(&c.name.as_bytes()[..n]);
    p.bytes(&name);
    p.u32(c.weight);
    p.u32(0);
    let (budget, period) = c.reservation.unwrap_or((0, 0));
    p.u64(budget);
    p.u64(period);
}

pub(crate) fn get_config(b: &[u8]) -> Result<VmConfig, Problem> {
    let mut g = Get::new(b);
    let raw = g.take(32);
    let weight = g.u32();
    let reserved = g.u32();
    let budget = g.u64();
    let period = g.u64();
    if !g.exact() {
        return Err(Problem::BadLength { expected: CONFIG_LEN as u64, found: b.len() as u64 });
    }
    if reserved != 0 {
        return Err(Problem::Reserved { field: "config bytes" });
    }
    let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
    if raw[end..].iter().any(|&c| c != 0) {
        return Err(Problem::Reserved { field: "name padding" });
    }
    let name = core::str::from_utf8(&raw[..end]).map_err(|_| Problem::BadText { field: "name" })?;
    let reservation = match (budget, period) {
        (0, 0) => None,
        (b, p) => Some((b, p)),
    };
    let config = VmConfig { name: String::from(name), weight, reservation };
    config.check().map_err(out_of_range)?;
    Ok(config)
}

// ----- vCPU -----

fn power_code(p: PowerState) -> (u8, u64, u64) {
    match p {
        PowerState::Off => (0, 0, 0),
        PowerState::On => (1, 0, 0),
        PowerState::OnPending { entry, context } => (2, entry, context),
    }
}

pub(crate) fn put_vcpu(out: &mut Vec<u8>, v: &VcpuState) {
    let mut p = Put(out);
    let (power, entry, context) = power_code(v.power);
    p.u16(v.index);
    p.u8(power);
    p.zeros(5);
    p.u64(entry);
    p.u64(context);
    for x in v.regs.x {
        p.u64(x);
    }
    p.u64(v.regs.pc);
    p.u64(v.regs.pstate);
    for r in v.el1.as_array() {
        p.u64(r);
    }
    p.u64(v.timer.cntv_ctl);
    p.u64(v.timer.cntv_cval);
    p.u64(v.fp.fpcr);
    p.u64(v.fp.fpsr);
    for q in v.fp.v {
        p.u128(q);
    }
    p.u64(v.gic.vmcr);
    for a in v.gic.ap0r.iter().chain(&v.gic.ap1r) {
        p.u64(*a);
    }
    p.u64(v.vmpidr);
}

pub(crate) fn get_vcpu(b: &[u8], header: &CheckpointHeader, expected_index: u16) -> Result<VcpuState, Problem> {
    let mut g = Get::new(b);
    let index = g.u16();
    let power = g.u8();
    let reserved = g.take(5);
    let entry = g.u64();
    let context = g.u64();
    let mut regs = CpuRegs::default();
    for x in &mut regs.x {
        *x = g.u64();
    }
    regs.pc = g.u64();
    regs.pstate = g.u64();
    let mut el1 = [0u64; 24];
    for r in &mut el1 {
        *r = g.u64();
    }
    let timer = VirtualTimer { cntv_ctl: g.u64(), cntv_cval: g.u64() };
    let mut fp = FpSimd { fpcr: g.u64(), fpsr: g.u64(), v: [0; 32] };
    for q in &mut fp.v {
        *q = g.u128();
    }
    let mut gic = GicCpu { vmcr: g.u64(), ..GicCpu::default() };
    for a in gic.ap0r.iter_mut().chain(gic.ap1r.iter_mut()) {
        *a = g.u64();
    }
    let vmpidr = g.u64();
    if !g.exact() {
        return Err(Problem::BadLength { expected: VCPU_LEN as u64, found: b.len() as u64 });
    }
    if reserved.iter().any(|&c| c != 0) {
        return Err(Problem::Reserved { field: "vcpu bytes" });
    }
    let power = match power {
        0 => PowerState::Off,
        1 => PowerState::On,
        2 => PowerState::OnPending { entry, context },
        p => return Err(Problem::OutOfRange { field: "power state", value: p.into() }),
    };
    if !matches!(power, PowerState::OnPending { .. }) && (entry != 0 || context != 0) {
        return Err(Problem::Reserved { field: "entry and context of a vCPU not pending" });
    }
    let v = VcpuState { index, power, regs, el1: El1Regs::from_array(el1), timer, fp, gic, vmpidr };
    v.check(header, expected_index).map_err(out_of_range)?;
    Ok(v)
}

// ----- vGIC -----

pub(crate) fn vgic_len(vcpus: u16, spis: u16) -> usize {
    let irqs = usize::from(vcpus) * vdev::vgic::PRIVATE_COUNT as usize + usize::from(spis);
    VGIC_FIXED + pad8(usize::from(vcpus)) + irqs * IRQ_LEN
}

pub(crate) fn put_vgic(out: &mut Vec<u8>, v: &VgicState) {
    let mut p = Put(out);
    p.u16(v.vcpus);
    p.u16(v.spis);
    p.u8(v.priority_bits);
    p.zeros(3);
    p.u32(v.gicd_ctlr);
    p.u32(0);
    for &s in &v.processor_sleep {
        p.u8(s.into());
    }
    p.zeros(pad8(v.processor_sleep.len()) - v.processor_sleep.len());
    for irq in &v.irqs {
        let flags = u8::from(irq.enabled)
            | u8::from(irq.group1) << 1
            | u8::from(irq.edge) << 2
            | u8::from(irq.level) << 3
            | u8::from(irq.pending_latch) << 4
            | u8::from(irq.active) << 5;
        p.u8(flags);
        p.u8(irq.priority);
        p.u16(irq.owner);
        p.u64(irq.route);
    }
}

pub(crate) fn get_vgic(b: &[u8], header: &CheckpointHeader) -> Result<VgicState, Problem> {
    let mut g = Get::new(b);
    let vcpus = g.u16();
    let spis = g.u16();
    let priority_bits = g.u8();
    let r0 = g.take(3);
    let gicd_ctlr = g.u32();
    let r1 = g.u32();
    if r0.iter().any(|&c| c != 0) || r1 != 0 {
        return Err(Problem::Reserved { field: "vgic bytes" });
    }
    if vcpus != header.vcpus {
        return Err(Problem::OutOfRange { field: "vgic vcpus", value: vcpus.into() });
    }
    if spis % 32 != 0 || spis > vdev::vgic::MAX_SPIS {
        return Err(Problem::OutOfRange { field: "spis", value: spis.into() });
    }
    let expected = vgic_len(vcpus, spis);
    if b.len() != expected {
        return Err(Problem::BadLength { expected: expected as u64, found: b.len() as u64 });
    }
    let sleep = g.take(pad8(usize::from(vcpus)));
    let (sleep, pad) = sleep.split_at(usize::from(vcpus).min(sleep.len()));
    if pad.iter().any(|&c| c != 0) {
        return Err(Problem::Reserved { field: "processor_sleep padding" });
    }
    let mut processor_sleep = Vec::with_capacity(sleep.len());
    for &s in sleep {
        match s {
            0 | 1 => processor_sleep.push(s == 1),
            s => return Err(Problem::OutOfRange { field: "processor_sleep", value: s.into() }),
        }
    }
    let count = usize::from(vcpus) * vdev::vgic::PRIVATE_COUNT as usize + usize::from(spis);
    let mut irqs = Vec::with_capacity(count);
    for _ in 0..count {
        let flags = g.u8();
        if flags & !IRQ_FLAG_BITS != 0 {
            return Err(Problem::Reserved { field: "interrupt flag bits" });
        }
        irqs.push(IrqState {
            enabled: flags & 1 != 0,
            group1: flags & 2 != 0,
            edge: flags & 4 != 0,
            level: flags & 8 != 0,
            pending_latch: flags & 16 != 0,
            active: flags & 32 != 0,
            priority: g.u8(),
            owner: g.u16(),
            route: g.u64(),
        });
    }
    if !g.exact() {
        return Err(Problem::BadLength { expected: expected as u64, found: b.len() as u64 });
    }
    let v = VgicState { vcpus, spis, priority_bits, gicd_ctlr, processor_sleep, irqs };
    check_vgic(&v, header).map_err(out_of_range)?;
    Ok(v)
}

// ----- timers -----

pub(crate) fn put_timers(out: &mut Vec<u8>, t: &TimerState) {
    let mut p = Put(out);
    p.u64(t.counter_hz);
    p.u64(t.virtual_count);
}

pub(crate) fn get_timers(b: &[u8]) -> Result<TimerState, Problem> {
    let mut g = Get::new(b);
    let t = TimerState { counter_hz: g.u64(), virtual_count: g.u64() };
    if !g.exact() {
        return Err(Problem::BadLength { expected: TIMERS_LEN as u64, found: b.len() as u64 });
    }
    t.check().map_err(out_of_range)?;
    Ok(t)
}

// ----- devices -----

pub(crate) fn put_devices(out: &mut Vec<u8>, d: &DeviceState) {
    let mut p = Put(out);
    p.u16(u16::from(d.uart.is_some()));
    p.zeros(6);
    if let Some(u) = &d.uart {
        p.u16(DEVICE_PL011);
        p.u16(0); // instance
        p.u32(PL011_LEN as u32);
        for r in [u.ibrd, u.fbrd, u.lcr_h, u.cr, u.ifls, u.imsc, u.ris, u.dmacr] {
            p.u32(r);
        }
        let n = u.line.len().min(vdev::uart::LINE_MAX);
        p.u16(n as u16);
        p.zeros(6);
        p.bytes(&u.line[..n]);
        p.zeros(vdev::uart::LINE_MAX - n);
    }
}

pub(crate) fn get_devices(b: &[u8]) -> Result<DeviceState, Problem> {
    let mut g = Get::new(b);
    let count = g.u16();
    let reserved = g.take(6);
    if b.len() < DEVICES_FIXED {
        return Err(Problem::BadLength { expected: DEVICES_FIXED as u64, found: b.len() as u64 });
    }
    if reserved.iter().any(|&c| c != 0) {
        return Err(Problem::Reserved { field: "devices bytes" });
    }
    if count > MAX_DEVICES {
        return Err(Problem::TooLarge { field: "device count", value: count.into(), max: MAX_DEVICES.into() });
    }
    let mut devices = DeviceState::default();
    for _ in 0..count {
        let kind = g.u16();
        let instance = g.u16();
        let len = g.u32() as usize;
        if len > b.len() {
            return Err(Problem::BadLength { expected: len as u64, found: b.len() as u64 });
        }
        let data = g.take(pad8(len));
        if data.len() != pad8(len) {
            return Err(Problem::BadLength { expected: (b.len() + pad8(len)) as u64, found: b.len() as u64 });
        }
        if data[len..].iter().any(|&c| c != 0) {
            return Err(Problem::Reserved { field: "device record padding" });
        }
        match kind {
            DEVICE_PL011 => {
                if devices.uart.is_some() {
                    return Err(Problem::DuplicateDevice(kind));
                }
                if instance != 0 {
                    return Err(Problem::OutOfRange { field: "uart instance", value: instance.into() });
                }
                if len != PL011_LEN {
                    return Err(Problem::BadLength { expected: PL011_LEN as u64, found: len as u64 });
                }
                devices.uart = Some(get_pl011(&data[..len])?);
            }
            k => return Err(Problem::UnknownDevice(k)),
        }
    }
    if !g.exact() {
        return Err(Problem::BadLength { expected: g.position() as u64, found: b.len() as u64 });
    }
    Ok(devices)
}

fn get_pl011(b: &[u8]) -> Result<Pl011State, Problem> {
    let mut g = Get::new(b);
    let mut regs = [0u32; 8];
    for r in &mut regs {
        *r = g.u32();
    }
    let n = usize::from(g.u16());
    let reserved = g.take(6);
    let line = g.take(vdev::uart::LINE_MAX);
    if reserved.iter().any(|&c| c != 0) {
        return Err(Problem::Reserved { field: "uart bytes" });
    }
    if n > vdev::uart::LINE_MAX {
        return Err(Problem::OutOfRange { field: "uart line length", value: n as u64 });
    }
    if line.len() != vdev::uart::LINE_MAX || line[n..].iter().any(|&c| c != 0) {
        return Err(Problem::Reserved { field: "uart line padding" });
    }
    let [ibrd, fbrd, lcr_h, cr, ifls, imsc, ris, dmacr] = regs;
    let u = Pl011State { ibrd, fbrd, lcr_h, cr, ifls, imsc, ris, dmacr, line: line[..n].to_vec() };
    u.check().map_err(out_of_range)?;
    Ok(u)
}

// ----- memory runs -----

/// How a run's pages are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEncoding {
    /// All zero: nothing stored.
    Zero = 0,
    /// The pages as they are.
    Raw = 1,
    /// One LZ4 block (the block format, no frame) that decodes to exactly the run's pages.
    Lz4 = 2,
}

pub(crate) fn run_header(ipa: u64, pages: u32, encoding: RunEncoding) -> [u8; RUN_HEADER_LEN] {
    let mut h = [0u8; RUN_HEADER_LEN];
    h[..8].copy_from_slice(&ipa.to_le_bytes());
    h[8..12].copy_from_slice(&pages.to_le_bytes());
    h[12] = encoding as u8;
    h
}

/// A run header: (IPA, pages, encoding).
pub(crate) fn get_run_header(b: &[u8]) -> Result<(u64, u32, RunEncoding), Problem> {
    let mut g = Get::new(b);
    let ipa = g.u64();
    let pages = g.u32();
    let encoding = g.u8();
    let reserved = g.take(3);
    if b.len() < RUN_HEADER_LEN {
        return Err(Problem::BadLength { expected: RUN_HEADER_LEN as u64, found: b.len() as u64 });
    }
    if reserved.iter().any(|&c| c != 0) {
        return Err(Problem::Reserved { field: "run header bytes" });
    }
    let encoding = match encoding {
        0 => RunEncoding::Zero,
        1 => RunEncoding::Raw,
        2 => RunEncoding::Lz4,
        e => return Err(Problem::OutOfRange { field: "run encoding", value: e.into() }),
    };
    Ok((ipa, pages, encoding))
}

// ----- timing -----

pub(crate) fn put_timing(out: &mut Vec<u8>, t: &Timing) {
    let mut p = Put(out);
    p.u64(t.downtime_ns);
    p.u32(t.precopy_rounds);
    p.u32(0);
    p.u64(t.pages_resent);
}

pub(crate) fn get_timing(b: &[u8]) -> Result<Timing, Problem> {
    let mut g = Get::new(b);
    let downtime_ns = g.u64();
    let precopy_rounds = g.u32();
    let reserved = g.u32();
    let pages_resent = g.u64();
    if !g.exact() {
        return Err(Problem::BadLength { expected: TIMING_LEN as u64, found: b.len() as u64 });
    }
    if reserved != 0 {
        return Err(Problem::Reserved { field: "timing bytes" });
    }
    Ok(Timing { downtime_ns, precopy_rounds, pages_resent })
}

// ----- trailer -----

/// The last section: what the stream before it must add up to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer {
    /// Sections before the trailer.
    pub sections: u32,
    /// Bytes before the trailer's section header.
    pub length: u64,
    /// CRC-32C of those bytes.
    pub stream_crc: u32,
}

pub(crate) fn put_trailer(out: &mut Vec<u8>, t: &Trailer) {
    let mut p = Put(out);
    p.u32(t.sections);
    p.u32(0);
    p.u64(t.length);
    p.u32(t.stream_crc);
    p.u32(0);
}

pub(crate) fn get_trailer(b: &[u8]) -> Result<Trailer, Problem> {
    let mut g = Get::new(b);
    let sections = g.u32();
    let r0 = g.u32();
    let length = g.u64();
    let stream_crc = g.u32();
    let r1 = g.u32();
    if !g.exact() {
        return Err(Problem::BadLength { expected: END_LEN as u64, found: b.len() as u64 });
    }
    if r0 != 0 || r1 != 0 {
        return Err(Problem::Reserved { field: "trailer bytes" });
    }
    Ok(Trailer { sections, length, stream_crc })
}
