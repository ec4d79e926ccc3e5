//! Writing a checkpoint, section by section, to a [`Sink`].

use alloc::boxed::Box;
use alloc::vec::Vec;

use lz4_flex::block::{compress_into_with_table, get_maximum_output_size, CompressTable};

use super::codec::{self, RunEncoding, Trailer};
use super::error::{EncodeError, Part, SinkError};
use super::state::{check_vgic, CheckpointHeader, DeviceState, Invalid, TimerState, VcpuState, VgicState, VmConfig};
use super::wire::{crc_of, is_zero, StreamCrc};
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
    pub zero_pages: u64,
    pub raw_pages: u64,
    pub lz4_pages: u64,
    /// Bytes of LZ4 blocks (for `lz4_pages` pages).
    pub lz4_bytes: u64,
}

/// The sections still to come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Vcpu(u16),
    Vgic,
    Timers,
    Devices,
    Memory,
    Failed,
}

impl Stage {
    fn part(self) -> Part {
        match self {
            Stage::Vcpu(i) => Part::Vcpu(i),
            Stage::Vgic => Part::Vgic,
            Stage::Timers => Part::Timers,
            Stage::Devices => Part::Devices,
            Stage::Memory | Stage::Failed => Part::Memory,
        }
    }
}

/// The sink plus what the trailer needs: the byte count, section count and stream CRC.
struct Out<S> {
    sink: S,
    offset: u64,
    sections: u32,
    crc: StreamCrc,
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
        let crc = crc_of(parts);
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

/// Writes one checkpoint to a [`Sink`]: call [`Encoder::new`] (file header and config), then
/// [`vcpu`](Encoder::vcpu) for each vCPU in index order, [`vgic`](Encoder::vgic),
/// [`timers`](Encoder::timers), [`devices`](Encoder::devices), then [`memory`](Encoder::memory)
/// and [`memory_zero`](Encoder::memory_zero) over guest RAM from its base upwards, and
/// [`finish`](Encoder::finish). Each call checks its input with the reader's rules, so a
/// finished stream always decodes. Memory is buffered at most one run (64 KiB by default).
pub struct Encoder<S: Sink> {
    out: Out<S>,
    header: CheckpointHeader,
    options: EncodeOptions,
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
    /// Starts a checkpoint: writes the file header and the config section.
    pub fn new(
        sink: S,
        header: &CheckpointHeader,
        config: &VmConfig,
        options: EncodeOptions,
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
        let mut out = Out { sink, offset: 0, sections: 0, crc: StreamCrc::new() };
        let mut scratch = Vec::with_capacity(4096);
        codec::put_header(&mut scratch, header);
        out.put(&scratch)?;
        out.crc.append(crate::checkpoint::wire::CRC.checksum(&scratch), scratch.len() as u64);
        scratch.clear();
        codec::put_config(&mut scratch, config);
        out.section(KIND_CONFIG, &[&scratch])?;
        Ok(Encoder {
            out,
            header: *header,
            options,
            stage: Stage::Vcpu(0),
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

    /// Checks that `got` comes now; fails the encoder otherwise.
    fn expect(&mut self, got: Stage) -> Result<(), EncodeError> {
        if self.stage == Stage::Failed {
            return Err(EncodeError::Poisoned);
        }
        if self.stage != got {
            let e = EncodeError::OutOfOrder { expected: self.stage.part(), got: got.part() };
            self.stage = Stage::Failed;
            return Err(e);
        }
        Ok(())
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
            _ => state.index,
        };
        self.expect(Stage::Vcpu(index))?;
        self.guard(|e| {
            state.check(&e.header, index).map_err(invalid(Part::Vcpu(index)))?;
            e.small_section(KIND_VCPU, |b| codec::put_vcpu(b, state))?;
            e.stage = if index + 1 == e.header.vcpus { Stage::Vgic } else { Stage::Vcpu(index + 1) };
            Ok(())
        })
    }

    /// The vGIC (`Vgic::save`, after every vCPU's list registers were synced).
    pub fn vgic(&mut self, state: &VgicState) -> Result<(), EncodeError> {
        self.expect(Stage::Vgic)?;
        self.guard(|e| {
            check_vgic(state, &e.header).map_err(invalid(Part::Vgic))?;
            e.small_section(KIND_VGIC, |b| codec::put_vgic(b, state))?;
            e.stage = Stage::Timers;
            Ok(())
        })
    }

    pub fn timers(&mut self, state: &TimerState) -> Result<(), EncodeError> {
        self.expect(Stage::Timers)?;
        self.guard(|e| {
            state.check().map_err(invalid(Part::Timers))?;
            e.small_section(KIND_TIMERS, |b| codec::put_timers(b, state))?;
            e.stage = Stage::Devices;
            Ok(())
        })
    }

    pub fn devices(&mut self, state: &DeviceState) -> Result<(), EncodeError> {
        self.expect(Stage::Devices)?;
        self.guard(|e| {
            if let Some(u) = &state.uart {
                u.check().map_err(invalid(Part::Devices))?;
            }
            e.small_section(KIND_DEVICES, |b| codec::put_devices(b, state))?;
            e.stage = Stage::Memory;
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
    /// found here; runs of data pages are compressed as they fill.
    pub fn memory(&mut self, ipa: u64, bytes: &[u8]) -> Result<(), EncodeError> {
        self.expect(Stage::Memory)?;
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
            if let Run::Data { .. } = e.run {
                e.held.extend_from_slice(&bytes[from..]);
            }
            e.next_ipa = ipa + bytes.len() as u64;
            Ok(())
        })
    }

    /// `pages` pages of guest RAM from `ipa` (the next page, as for [`memory`](Self::memory))
    /// that the platform knows are zero (never mapped, never written): nothing is read.
    pub fn memory_zero(&mut self, ipa: u64, pages: u64) -> Result<(), EncodeError> {
        self.expect(Stage::Memory)?;
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
            Ok(())
        })
    }

    fn flush_zero(&mut self) -> Result<(), EncodeError> {
        if let Run::Zero { ipa, pages } = self.run {
            let h = codec::run_header(ipa, pages, RunEncoding::Zero);
            self.out.section(KIND_MEMORY, &[&h])?;
            self.summary.zero_pages += u64::from(pages);
            self.run = Run::None;
        }
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
        let r = self.write_data_run(ipa, pages, data);
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

    fn write_data_run(&mut self, ipa: u64, pages: u32, data: &[u8]) -> Result<(), EncodeError> {
        debug_assert_eq!(data.len(), pages as usize * PAGE_SIZE);
        if self.should_compress() {
            let table = self.table.get_or_insert_with(|| Box::new(CompressTable::large()));
            self.scratch.resize(get_maximum_output_size(data.len()), 0);
            if let Ok(n) = compress_into_with_table(data, &mut self.scratch, table) {
                if n <= data.len() - data.len() / 16 {
                    let h = codec::run_header(ipa, pages, RunEncoding::Lz4);
                    self.out.section(KIND_MEMORY, &[&h, &self.scratch[..n]])?;
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
        self.out.section(KIND_MEMORY, &[&h, data])?;
        self.summary.raw_pages += u64::from(pages);
        Ok(())
    }

    /// Ends the checkpoint (all of guest RAM must have been given): writes the trailer and
    /// returns the sink.
    pub fn finish(mut self) -> Result<(S, EncodeSummary), EncodeError> {
        self.expect(Stage::Memory)?;
        if self.next_ipa != self.header.ram_end() {
            return Err(EncodeError::MemoryIncomplete {
                covered: self.next_ipa - self.header.ram_base,
                expected: self.header.memory_bytes,
            });
        }
        match self.run {
            Run::Data { .. } => self.flush_data(&[])?,
            Run::Zero { .. } => self.flush_zero()?,
            Run::None => {}
        }
        let trailer =
            Trailer { sections: self.out.sections, length: self.out.offset, stream_crc: self.out.crc.value() };
        self.scratch.clear();
        codec::put_trailer(&mut self.scratch, &trailer);
        self.out.section(KIND_END, &[&self.scratch])?;
        let summary = EncodeSummary { bytes: self.out.offset, sections: self.out.sections, ..self.summary };
        Ok((self.out.sink, summary))
    }
}
