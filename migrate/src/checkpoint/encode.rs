//! Writing a checkpoint, section by section, to a [`Sink`]: a snapshot or a live stream.

use alloc::boxed::Box;
use alloc::vec::Vec;

use lz4_flex::block::{compress_into_with_table, get_maximum_output_size, CompressTable};

use super::codec::{self, RunEncoding, Trailer};
use super::error::{EncodeError, Part, SinkError};
use super::state::{
    check_vgic, CheckpointHeader, DeviceState, Invalid, TimerState, Timing, VcpuState, VgicState, VmConfig,
};
use super::wire::{is_zero, StreamCrc};
use super::*;

/// Where a checkpoint goes: a file, a socket, a buffer. Each call takes all of `bytes` or fails.
pub trait Sink {
    fn write(&mut self, bytes: &[u8]) -> Result<(), SinkError>;
}

impl Sink for Vec<u8> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), SinkError> {
        self.extend_from_slice(bytes);
        Ok(())
    }
}

impl<S: Sink + ?Sized> Sink for &mut S {
    fn write(&mut self, bytes: &[u8]) -> Result<(), SinkError> {
        (**self).write(bytes)
    }
}

/// Whether the encoder compresses data runs. Any choice produces the same format; the reader
/// handles all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Store every non-zero page raw (fastest, largest).
    None,
    /// Try LZ4 on every data run; keep it when it saves at least 1/16 of the run.
    Lz4,
    /// As `Lz4`, but after a run that does not compress, skip compressing the next 1, 2, 4 …
    /// up to 64 runs (reset by a run that compresses): incompressible memory then costs little
    /// more than a copy, while compressible memory is still found within 64 runs.
    Adaptive,
}

/// How the encoder writes memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncodeOptions {
    pub compression: Compression,
    /// Pages per data run, 1..=[`MAX_DATA_RUN_PAGES`]. 16 (64 KiB, LZ4's window) keeps a run in
    /// the L2 cache between the compress, checksum and write passes.
    pub run_pages: u32,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions { compression: Compression::Adaptive, run_pages: 16 }
    }
}

/// What the encoder wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncodeSummary {
    /// Bytes of the whole stream.
    pub bytes: u64,
    /// Sections, trailer included.
    pub sections: u32,
    /// Pages in zero, raw and LZ4 runs: memory runs and dirty runs alike.
    pub zero_pages: u64,
    pub raw_pages: u64,
    pub lz4_pages: u64,
    /// Bytes of LZ4 blocks (for `lz4_pages` pages).
    pub lz4_bytes: u64,
    /// Pages in dirty runs (a live stream's re-sent pages; also counted above).
    pub dirty_pages: u64,
    /// The trailer, once [`finish`](Encoder::finish) wrote it: what the destination's READY
    /// must name ([`Control::ready`](crate::live::Control::ready)).
    pub trailer: Option<Trailer>,
}

/// What comes next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Vcpu(u16),
    Vgic,
    Timers,
    Devices,
    /// Memory over guest RAM in order: a snapshot's last sections, a live stream's round 0.
    Memory,
    /// Live: round 0 complete; dirty runs or vCPU 0.
    PreCopy,
    /// Live: the paused state written; dirty runs or the timing section.
    FinalDirty,
    /// Live: the timing section written; `finish`.
    Timed,
    Failed,
}

impl Stage {
    /// The part that comes now (for error messages).
    fn part(self) -> Part {
        match self {
            Stage::Vcpu(i) => Part::Vcpu(i),
            Stage::Vgic => Part::Vgic,
            Stage::Timers => Part::Timers,
            Stage::Devices => Part::Devices,
            Stage::Memory | Stage::Failed => Part::Memory,
            Stage::PreCopy => Part::Vcpu(0),
            Stage::FinalDirty => Part::Timing,
            Stage::Timed => Part::End,
        }
    }

    /// Whether a call that writes `got` may come now.
    fn allows(self, got: Part) -> bool {
        match self {
            Stage::Failed => false,
            Stage::PreCopy | Stage::FinalDirty if got == Part::Dirty => true,
            _ => self.part() == got,
        }
    }
}

/// The sink plus what the trailer needs: the byte count, section count and stream CRC.
struct Out<S> {
    sink: S,
    offset: u64,
    sections: u32,
    crc: StreamCrc,
    /// Computes the section payloads' CRCs.
    crc32c: Crc32c,
}

impl<S: Sink> Out<S> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        self.sink.write(bytes).map_err(EncodeError::Sink)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// One section whose payload is `parts` laid end to end.
    fn section(&mut self, kind: u8, parts: &[&[u8]]) -> Result<(), EncodeError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let crc = parts.iter().fold(0, |crc, p| self.crc32c.append(crc, p));
        let header = codec::section_header(kind, len as u32, crc);
        self.put(&header)?;
        for p in parts {
            self.put(p)?;
        }
        self.crc.append_bytes16(&header);
        self.crc.append(crc, len as u64);
        self.sections += 1;
        Ok(())
    }
}

/// The run being gathered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Run {
    None,
    Zero {
        ipa: u64,
        pages: u32,
    },
    /// Its first `held` bytes are in `Encoder::held`; the rest in the caller's current slice.
    Data {
        ipa: u64,
        pages: u32,
    },
}

/// Writes one checkpoint to a [`Sink`]. Each call checks its input with the reader's rules, and
/// calls out of order are refused, so a finished stream always decodes. Memory is buffered at
/// most one run (64 KiB by default).
///
/// - A **snapshot**: [`Encoder::new`] (file header and config), then [`vcpu`](Encoder::vcpu)
///   for each vCPU in index order, [`vgic`](Encoder::vgic), [`timers`](Encoder::timers),
///   [`devices`](Encoder::devices), then [`memory`](Encoder::memory) and
///   [`memory_zero`](Encoder::memory_zero) over guest RAM from its base upwards, and
///   [`finish`](Encoder::finish).
/// - A **live stream**: [`Encoder::new_live`] (file header with `LIVE`, and config), then
///   `memory` / `memory_zero` over all of guest RAM (round 0, while the guest runs), then
///   [`dirty`](Encoder::dirty) for the pages dirtied meanwhile (any number of calls and
///   rounds), then, the guest paused, `vcpu` × n, `vgic`, `timers`, `devices`, `dirty` again for
///   the last dirty pages, [`timing`](Encoder::timing) and `finish`.
pub struct Encoder<S: Sink> {
    out: Out<S>,
    header: CheckpointHeader,
    options: EncodeOptions,
    /// A live stream (header flag `LIVE`).
    live: bool,
    stage: Stage,
    /// The next guest page expected.
    next_ipa: u64,
    run: Run,
    /// Pages of the current data run given in earlier calls.
    held: Vec<u8>,
    /// Scratch for small sections and for LZ4 output.
    scratch: Vec<u8>,
    table: Option<Box<CompressTable>>,
    skip_left: u32,
    skip_next: u32,
    summary: EncodeSummary,
}

fn invalid(part: Part) -> impl Fn(Invalid) -> EncodeError {
    move |i| EncodeError::Invalid { part, field: i.field, value: i.value }
}

impl<S: Sink> Encoder<S> {
    /// Starts a snapshot: writes the file header and the config section. The header's
    /// `format_version` must be [`FORMAT_VERSION`] ([`CheckpointHeader::new`] makes one).
    pub fn new(
        sink: S,
        header: &CheckpointHeader,
        config: &VmConfig,
        options: EncodeOptions,
    ) -> Result<Encoder<S>, EncodeError> {
        Encoder::start(sink, header, config, options, false)
    }

    /// Starts a live migration stream: writes the file header (flag `LIVE`) and the config
    /// section; guest memory comes next.
    pub fn new_live(
        sink: S,
        header: &CheckpointHeader,
        config: &VmConfig,
        options: EncodeOptions,
    ) -> Result<Encoder<S>, EncodeError> {
        Encoder::start(sink, header, config, options, true)
    }

    fn start(
        sink: S,
        header: &CheckpointHeader,
        config: &VmConfig,
        options: EncodeOptions,
        live: bool,
    ) -> Result<Encoder<S>, EncodeError> {
        let bad = |field, value| EncodeError::Invalid { part: Part::Header, field, value };
        if header.format_version != FORMAT_VERSION {
            return Err(bad("format version", header.format_version.into()));
        }
        if header.arch != Arch::HOST {
            return Err(bad("arch", header.arch.0.into()));
        }
        if header.vcpus == 0 || header.vcpus > Limits::DEFAULT.max_vcpus {
            return Err(bad("vcpus", header.vcpus.into()));
        }
        let page = PAGE_SIZE as u64;
        if header.memory_bytes == 0
            || header.memory_bytes % page != 0
            || header.memory_bytes > Limits::DEFAULT.max_memory
        {
            return Err(bad("memory bytes", header.memory_bytes));
        }
        if header.ram_base % page != 0 || header.ram_base.checked_add(header.memory_bytes).is_none() {
            return Err(bad("ram base", header.ram_base));
        }
        if options.run_pages == 0 || options.run_pages > MAX_DATA_RUN_PAGES {
            return Err(EncodeError::Invalid {
                part: Part::Memory,
                field: "run pages",
                value: options.run_pages.into(),
            });
        }
        config.check().map_err(invalid(Part::Config))?;
        let mut out = Out { sink, offset: 0, sections: 0, crc: StreamCrc::new(), crc32c: Crc32c::default() };
        let mut scratch = Vec::with_capacity(4096);
        codec::put_header(&mut scratch, header, if live { FLAG_LIVE } else { 0 });
        out.put(&scratch)?;
        out.crc.append(crate::checkpoint::wire::CRC.checksum(&scratch), scratch.len() as u64);
        scratch.clear();
        codec::put_config(&mut scratch, config);
        out.section(KIND_CONFIG, &[&scratch])?;
        Ok(Encoder {
            out,
            header: *header,
            options,
            live,
            stage: if live { Stage::Memory } else { Stage::Vcpu(0) },
            next_ipa: header.ram_base,
            run: Run::None,
            held: Vec::new(),
            scratch,
            table: None,
            skip_left: 0,
            skip_next: 0,
            summary: EncodeSummary::default(),
        })
    }

    /// Computes the section payloads' CRC-32C with `crc` from now on instead of
    /// [`Crc32c::default`] (a platform's CRC-32C instructions): every implementation gives the
    /// same values, so what was written before is unchanged.
    pub fn with_crc(mut self, crc: Crc32c) -> Encoder<S> {
        self.out.crc32c = crc;
        self
    }

    /// Checks that a call writing `got` may come now; fails the encoder otherwise.
    fn expect(&mut self, got: Part) -> Result<(), EncodeError> {
        if self.stage == Stage::Failed {
            return Err(EncodeError::Poisoned);
        }
        if !self.stage.allows(got) {
            let e = if !self.live && matches!(got, Part::Dirty | Part::Timing) {
                EncodeError::NotLive { got }
            } else if self.live && self.stage == Stage::Memory {
                self.memory_incomplete()
            } else {
                EncodeError::OutOfOrder { expected: self.stage.part(), got }
            };
            self.stage = Stage::Failed;
            return Err(e);
        }
        Ok(())
    }

    fn memory_incomplete(&self) -> EncodeError {
        EncodeError::MemoryIncomplete {
            covered: self.next_ipa - self.header.ram_base,
            expected: self.header.memory_bytes,
        }
    }

    /// What has been written so far (a memory run still being gathered is not in it yet).
    /// Between pre-copy rounds, the difference of `bytes` is what a round sent.
    pub fn summary(&self) -> EncodeSummary {
        EncodeSummary { bytes: self.out.offset, sections: self.out.sections, ..self.summary }
    }

    /// Runs `f`; any error fails the encoder.
    fn guard<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T, EncodeError>) -> Result<T, EncodeError> {
        let r = f(self);
        if r.is_err() {
            self.stage = Stage::Failed;
        }
        r
    }

    fn small_section(&mut self, kind: u8, put: impl FnOnce(&mut Vec<u8>)) -> Result<(), EncodeError> {
        self.scratch.clear();
        put(&mut self.scratch);
        self.out.section(kind, &[&self.scratch])
    }

    /// The next vCPU (indices 0, 1, … in order).
    pub fn vcpu(&mut self, state: &VcpuState) -> Result<(), EncodeError> {
        let index = match self.stage {
            Stage::Vcpu(i) => i,
            Stage::PreCopy => 0,
            _ => state.index,
        };
        self.expect(Part::Vcpu(index))?;
        self.guard(|e| {
            state.check(&e.header, index).map_err(invalid(Part::Vcpu(index)))?;
            e.small_section(KIND_VCPU, |b| codec::put_vcpu(b, state))?;
            e.stage = if index + 1 == e.header.vcpus { Stage::Vgic } else { Stage::Vcpu(index + 1) };
            Ok(())
        })
    }

    /// The vGIC (`Vgic::save`, after every vCPU's list registers were synced).
    pub fn vgic(&mut self, state: &VgicState) -> Result<(), EncodeError> {
        self.expect(Part::Vgic)?;
        self.guard(|e| {
            check_vgic(state, &e.header).map_err(invalid(Part::Vgic))?;
            e.small_section(KIND_VGIC, |b| codec::put_vgic(b, state))?;
            e.stage = Stage::Timers;
            Ok(())
        })
    }

    /// The guest's counter (for a live stream: its virtual count when the guest was paused).
    pub fn timers(&mut self, state: &TimerState) -> Result<(), EncodeError> {
        self.expect(Part::Timers)?;
        self.guard(|e| {
            state.check().map_err(invalid(Part::Timers))?;
            e.small_section(KIND_TIMERS, |b| codec::put_timers(b, state))?;
            e.stage = Stage::Devices;
            Ok(())
        })
    }

    pub fn devices(&mut self, state: &DeviceState) -> Result<(), EncodeError> {
        self.expect(Part::Devices)?;
        self.guard(|e| {
            if let Some(u) = &state.uart {
                u.check().map_err(invalid(Part::Devices))?;
            }
            e.small_section(KIND_DEVICES, |b| codec::put_devices(b, state))?;
            e.stage = if e.live { Stage::FinalDirty } else { Stage::Memory };
            Ok(())
        })
    }

    /// Checks that `[ipa, ipa + len)` is the next stretch of guest RAM.
    fn check_next(&self, ipa: u64, len: u64) -> Result<(), EncodeError> {
        let bad = |field, value| EncodeError::Invalid { part: Part::Memory, field, value };
        if ipa != self.next_ipa {
            return Err(bad("ipa (not the next page)", ipa));
        }
        if len % PAGE_SIZE as u64 != 0 {
            return Err(bad("length (not whole pages)", len));
        }
        if ipa.checked_add(len).is_none_or(|end| end > self.header.ram_end()) {
            return Err(bad("length (past the end of RAM)", len));
        }
        Ok(())
    }

    /// The next `bytes.len()` bytes of guest RAM (whole pages), which start at `ipa`: the first
    /// call gives the RAM base, each next call continues where the last stopped. Zero pages are
    /// found here; runs of data pages are compressed as they fill. In a live stream this is
    /// round 0, which must cover all of RAM before anything else comes.
    pub fn memory(&mut self, ipa: u64, bytes: &[u8]) -> Result<(), EncodeError> {
        self.expect(Part::Memory)?;
        self.guard(|e| {
            e.check_next(ipa, bytes.len() as u64)?;
            // Where the current data run starts in `bytes` (when it started in this call).
            let mut from = 0usize;
            for (k, page) in bytes.chunks_exact(PAGE_SIZE).enumerate() {
                let at = k * PAGE_SIZE;
                let page_ipa = ipa + at as u64;
                if is_zero(page) {
                    match e.run {
                        Run::Zero { ipa, pages } if pages < u32::MAX => {
                            e.run = Run::Zero { ipa, pages: pages + 1 };
                            continue;
                        }
                        Run::Data { .. } => e.flush_data(&bytes[from..at])?,
                        _ => e.flush_zero()?,
                    }
                    e.run = Run::Zero { ipa: page_ipa, pages: 1 };
                } else {
                    match e.run {
                        Run::Data { ipa, pages } if pages < e.options.run_pages => {
                            e.run = Run::Data { ipa, pages: pages + 1 };
                            continue;
                        }
                        Run::Data { .. } => e.flush_data(&bytes[from..at])?,
                        Run::Zero { .. } => e.flush_zero()?,
                        Run::None => {}
                    }
                    e.run = Run::Data { ipa: page_ipa, pages: 1 };
                    from = at;
                }
            }
            e.next_ipa = ipa + bytes.len() as u64;
            if e.next_ipa == e.header.ram_end() {
                // The last piece: write the run now rather than hold its tail.
                match e.run {
                    Run::Data { .. } => e.flush_data(&bytes[from..])?,
                    _ => e.flush_zero()?,
                }
                e.memory_complete();
            } else if let Run::Data { .. } = e.run {
                e.held.extend_from_slice(&bytes[from..]);
            }
            Ok(())
        })
    }

    /// All of guest RAM was given (and its last run written).
    fn memory_complete(&mut self) {
        if self.live {
            self.stage = Stage::PreCopy;
        }
    }

    /// `pages` pages of guest RAM from `ipa` (the next page, as for [`memory`](Self::memory))
    /// that the platform knows are zero (never mapped, never written): nothing is read.
    pub fn memory_zero(&mut self, ipa: u64, pages: u64) -> Result<(), EncodeError> {
        self.expect(Part::Memory)?;
        self.guard(|e| {
            let len = pages.checked_mul(PAGE_SIZE as u64).ok_or(EncodeError::Invalid {
                part: Part::Memory,
                field: "pages",
                value: pages,
            })?;
            e.check_next(ipa, len)?;
            let mut left = pages;
            if let Run::Data { .. } = e.run {
                e.flush_data(&[])?;
            }
            while left > 0 {
                let (start, have) = match e.run {
                    Run::Zero { ipa, pages } => (ipa, pages),
                    _ => (e.next_ipa, 0),
                };
                let add = left.min(u64::from(u32::MAX - have)) as u32;
                e.run = Run::Zero { ipa: start, pages: have + add };
                left -= u64::from(add);
                e.next_ipa += u64::from(add) * PAGE_SIZE as u64;
                if left > 0 {
                    e.flush_zero()?;
                }
            }
            if e.next_ipa == e.header.ram_end() {
                e.flush_zero()?;
                e.memory_complete();
            }
            Ok(())
        })
    }

    /// Pages of guest RAM dirtied since they were last sent (a live stream only): `bytes` is
    /// whole pages from the page-aligned `ipa`, anywhere inside RAM, in any order; a page sent
    /// again overrides its earlier copy. Allowed after round 0 covered RAM and before vCPU 0
    /// (the pre-copy rounds), and after the devices and before the timing section (the last
    /// dirty pages, the guest paused). Zero pages are found and elided as in
    /// [`memory`](Self::memory); runs do not continue from one call to the next.
    pub fn dirty(&mut self, ipa: u64, bytes: &[u8]) -> Result<(), EncodeError> {
        self.expect(Part::Dirty)?;
        self.guard(|e| {
            let bad = |field, value| EncodeError::Invalid { part: Part::Dirty, field, value };
            let page = PAGE_SIZE as u64;
            let len = bytes.len() as u64;
            if ipa % page != 0 {
                return Err(bad("ipa (not page aligned)", ipa));
            }
            if len % page != 0 {
                return Err(bad("length (not whole pages)", len));
            }
            if ipa < e.header.ram_base || ipa.checked_add(len).is_none_or(|end| end > e.header.ram_end()) {
                return Err(bad("range (not inside RAM)", ipa));
            }
            // The current run: its first byte in `bytes`, its pages, whether they are zero.
            let (mut start, mut pages, mut zero) = (0usize, 0u32, false);
            for (k, p) in bytes.chunks_exact(PAGE_SIZE).enumerate() {
                let at = k * PAGE_SIZE;
                let z = is_zero(p);
                let full = if zero { pages == u32::MAX } else { pages == e.options.run_pages };
                if pages > 0 && (z != zero || full) {
                    e.write_dirty_run(ipa + start as u64, pages, zero, &bytes[start..at])?;
                    pages = 0;
                }
                if pages == 0 {
                    (start, zero) = (at, z);
                }
                pages += 1;
            }
            if pages > 0 {
                e.write_dirty_run(ipa + start as u64, pages, zero, &bytes[start..])?;
            }
            e.summary.dirty_pages += len / page;
            Ok(())
        })
    }

    fn write_dirty_run(&mut self, ipa: u64, pages: u32, zero: bool, data: &[u8]) -> Result<(), EncodeError> {
        if zero {
            self.write_zero_run(KIND_DIRTY, ipa, pages)
        } else {
            self.write_data_run(KIND_DIRTY, ipa, pages, data)
        }
    }

    /// The live stream's timing section (after the last dirty pages; `finish` comes next).
    pub fn timing(&mut self, timing: &Timing) -> Result<(), EncodeError> {
        self.expect(Part::Timing)?;
        self.guard(|e| {
            e.small_section(KIND_TIMING, |b| codec::put_timing(b, timing))?;
            e.stage = Stage::Timed;
            Ok(())
        })
    }

    fn flush_zero(&mut self) -> Result<(), EncodeError> {
        if let Run::Zero { ipa, pages } = self.run {
            self.run = Run::None;
            self.write_zero_run(KIND_MEMORY, ipa, pages)?;
        }
        Ok(())
    }

    fn write_zero_run(&mut self, kind: u8, ipa: u64, pages: u32) -> Result<(), EncodeError> {
        let h = codec::run_header(ipa, pages, RunEncoding::Zero);
        self.out.section(kind, &[&h])?;
        self.summary.zero_pages += u64::from(pages);
        Ok(())
    }

    /// Writes the current data run: the pages held from earlier calls, then `tail`.
    fn flush_data(&mut self, tail: &[u8]) -> Result<(), EncodeError> {
        let Run::Data { ipa, pages } = self.run else { return Ok(()) };
        self.run = Run::None;
        let mut held = core::mem::take(&mut self.held);
        let data = if held.is_empty() {
            tail
        } else {
            held.extend_from_slice(tail);
            &held[..]
        };
        let r = self.write_data_run(KIND_MEMORY, ipa, pages, data);
        held.clear();
        self.held = held;
        r
    }

    fn should_compress(&mut self) -> bool {
        match self.options.compression {
            Compression::None => false,
            Compression::Lz4 => true,
            Compression::Adaptive => {
                if self.skip_left > 0 {
                    self.skip_left -= 1;
                    false
                } else {
                    true
                }
            }
        }
    }

    fn write_data_run(&mut self, kind: u8, ipa: u64, pages: u32, data: &[u8]) -> Result<(), EncodeError> {
        debug_assert_eq!(data.len(), pages as usize * PAGE_SIZE);
        if self.should_compress() {
            let table = self.table.get_or_insert_with(|| Box::new(CompressTable::large()));
            self.scratch.resize(get_maximum_output_size(data.len()), 0);
            if let Ok(n) = compress_into_with_table(data, &mut self.scratch, table) {
                if n <= data.len() - data.len() / 16 {
                    let h = codec::run_header(ipa, pages, RunEncoding::Lz4);
                    self.out.section(kind, &[&h, &self.scratch[..n]])?;
                    self.summary.lz4_pages += u64::from(pages);
                    self.summary.lz4_bytes += n as u64;
                    self.skip_next = 0;
                    return Ok(());
                }
            }
            self.skip_next = (self.skip_next * 2).clamp(1, 64);
            self.skip_left = self.skip_next;
        }
        let h = codec::run_header(ipa, pages, RunEncoding::Raw);
        self.out.section(kind, &[&h, data])?;
        self.summary.raw_pages += u64::from(pages);
        Ok(())
    }

    /// Gives up the stream without a trailer and returns the sink (a live migration abandoned
    /// midway, which then tells the destination by other means). What was written stays an
    /// unfinished stream that any reader refuses.
    pub fn abandon(self) -> S {
        self.out.sink
    }

    /// Ends the stream: writes the trailer and returns the sink. A snapshot needs all of guest
    /// RAM given; a live stream needs its timing section written.
    pub fn finish(mut self) -> Result<(S, EncodeSummary), EncodeError> {
        let done = match self.stage {
            Stage::Failed => return Err(EncodeError::Poisoned),
            Stage::Memory if self.next_ipa != self.header.ram_end() => return Err(self.memory_incomplete()),
            Stage::Memory => !self.live,
            Stage::Timed => true,
            _ => false,
        };
        if !done {
            return Err(EncodeError::OutOfOrder { expected: self.stage.part(), got: Part::End });
        }
        // The last memory run was written when RAM was complete.
        debug_assert_eq!(self.run, Run::None);
        let trailer =
            Trailer { sections: self.out.sections, length: self.out.offset, stream_crc: self.out.crc.value() };
        self.scratch.clear();
        codec::put_trailer(&mut self.scratch, &trailer);
        self.out.section(KIND_END, &[&self.scratch])?;
        let summary = EncodeSummary {
            bytes: self.out.offset,
            sections: self.out.sections,
            trailer: Some(trailer),
            ..self.summary
        };
        Ok((self.out.sink, summary))
    }
}
