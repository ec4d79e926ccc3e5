//! Reading a checkpoint (snapshot or live stream, format version 1 or 2), section by section,
//! from a [`Source`].

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

use lz4_flex::block::{decompress_into, DecompressError};

use super::codec::{self, RunEncoding, Trailer};
use super::encode::{EncodeOptions, EncodeSummary, Encoder, Sink};
use super::error::{CheckpointError, EncodeError, Part, Problem, SourceError};
use super::state::{CheckpointHeader, DeviceState, TimerState, Timing, VcpuState, VgicState, VmConfig};
use super::wire::{StreamCrc, CRC};
use super::*;

/// Where a checkpoint comes from. `read` fills a prefix of `buf` and says how much; `Ok(0)`
/// means the stream has ended.
pub trait Source {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, SourceError>;
}

impl Source for &[u8] {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, SourceError> {
        let n = buf.len().min(self.len());
        let (head, rest) = self.split_at(n);
        buf[..n].copy_from_slice(head);
        *self = rest;
        Ok(n)
    }
}

impl<S: Source + ?Sized> Source for &mut S {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, SourceError> {
        (**self).read(buf)
    }
}

/// The guest RAM a checkpoint's memory and dirty runs are written into.
pub trait GuestMemory {
    /// The `len` bytes of guest RAM at `ipa`, to be overwritten (`None`: refused). The decoder
    /// asks only for whole pages inside the header's RAM, at most [`MAX_DATA_RUN_PAGES`] pages
    /// at a time. Memory runs (a snapshot's, a live stream's round 0) ask for each page once,
    /// in increasing order; dirty runs (live streams only, after round 0) then ask again for
    /// pages anywhere in RAM, in any order, each overwriting what was written before.
    fn pages_mut(&mut self, ipa: u64, len: usize) -> Option<&mut [u8]>;

    /// Makes `[ipa, ipa + len)` zero: a memory run of zero pages, over RAM this stream has not
    /// written. RAM that is zero already (a fresh VM's) may return `true` without touching it;
    /// the default writes zeros through [`pages_mut`](Self::pages_mut).
    fn zero(&mut self, ipa: u64, len: u64) -> bool {
        zero_through_pages(self, ipa, len)
    }

    /// Makes `[ipa, ipa + len)` zero again: a dirty run of zero pages, over RAM that round 0 or
    /// an earlier dirty run may have written, so it must really be cleared. The default writes
    /// zeros through [`pages_mut`](Self::pages_mut).
    fn zero_dirty(&mut self, ipa: u64, len: u64) -> bool {
        zero_through_pages(self, ipa, len)
    }
}

/// Zeros `[ipa, ipa + len)` through `pages_mut`, at most [`MAX_DATA_RUN_PAGES`] at a time.
fn zero_through_pages<M: GuestMemory + ?Sized>(memory: &mut M, ipa: u64, len: u64) -> bool {
    const CHUNK: u64 = MAX_DATA_RUN_PAGES as u64 * PAGE_SIZE as u64;
    let mut at = 0;
    while at < len {
        let n = (len - at).min(CHUNK) as usize;
        match memory.pages_mut(ipa + at, n) {
            Some(s) => s.fill(0),
            None => return false,
        }
        at += n as u64;
    }
    true
}

impl<M: GuestMemory + ?Sized> GuestMemory for &mut M {
    fn pages_mut(&mut self, ipa: u64, len: usize) -> Option<&mut [u8]> {
        (**self).pages_mut(ipa, len)
    }
    fn zero(&mut self, ipa: u64, len: u64) -> bool {
        (**self).zero(ipa, len)
    }
    fn zero_dirty(&mut self, ipa: u64, len: u64) -> bool {
        (**self).zero_dirty(ipa, len)
    }
}

/// Guest memory for when there is none yet: refuses every write. In a snapshot, memory
/// sections come after every other section, so a platform can pass this until it has built the
/// VM (a live stream's memory comes right after its config).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoMemory;

impl GuestMemory for NoMemory {
    fn pages_mut(&mut self, _ipa: u64, _len: usize) -> Option<&mut [u8]> {
        None
    }
    fn zero(&mut self, _ipa: u64, _len: u64) -> bool {
        false
    }
    fn zero_dirty(&mut self, _ipa: u64, _len: u64) -> bool {
        false
    }
}

/// Guest memory that accepts everything and keeps nothing: decoding into it checks a whole
/// checkpoint (every checksum, every LZ4 block) without restoring it.
#[derive(Clone, Debug, Default)]
pub struct Discard {
    buf: Vec<u8>,
}

impl GuestMemory for Discard {
    fn pages_mut(&mut self, _ipa: u64, len: usize) -> Option<&mut [u8]> {
        if self.buf.len() < len {
            self.buf.resize(len, 0);
        }
        Some(&mut self.buf[..len])
    }
    fn zero(&mut self, _ipa: u64, _len: u64) -> bool {
        true
    }
    fn zero_dirty(&mut self, _ipa: u64, _len: u64) -> bool {
        true
    }
}

/// A memory or dirty run that was written into the caller's [`GuestMemory`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRun {
    pub ipa: u64,
    pub pages: u32,
    pub encoding: RunEncoding,
}

/// One verified part of a checkpoint, in stream order. A snapshot: `Header`, `Config`,
/// `Vcpu` × vcpus (index order), `Vgic`, `Timers`, `Devices`, `Memory` × n (covering guest RAM
/// from its base), `End`. A live stream ([`Decoder::is_live`]): `Header`, `Config`, `Memory` × n
/// (covering guest RAM), `Dirty` × any, `Vcpu` × vcpus, `Vgic`, `Timers`, `Devices`,
/// `Dirty` × any, `Timing`, `End`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Header(CheckpointHeader),
    Config(VmConfig),
    Vcpu(Box<VcpuState>),
    Vgic(VgicState),
    Timers(TimerState),
    Devices(DeviceState),
    Memory(MemoryRun),
    /// A live stream's re-sent pages, written over what the caller's memory held.
    Dirty(MemoryRun),
    /// A live stream's timing section: the source's downtime so far, for the guest's counter.
    Timing(Timing),
    /// The trailer verified: the whole stream is intact. Only now may a restored VM start.
    End(Trailer),
}

/// What comes next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Header,
    Config,
    Vcpu(u16),
    Vgic,
    Timers,
    Devices,
    /// Memory runs in order: a snapshot's last sections (then the trailer), a live stream's
    /// round 0.
    Memory,
    /// Live: dirty runs or vCPU 0.
    PreCopy,
    /// Live: dirty runs or the timing section.
    FinalDirty,
    /// Live: the trailer.
    End,
    Done,
}

/// Reads a checkpoint from a [`Source`], one [`Event`] per call of
/// [`next_event`](Decoder::next_event). Each section's header and payload checksums are
/// verified, and its content checked, before its event is returned. After an error every call
/// returns that error.
pub struct Decoder<S: Source> {
    source: S,
    limits: Limits,
    offset: u64,
    expect: Expect,
    header: Option<CheckpointHeader>,
    /// The header's `LIVE` flag.
    live: bool,
    sections: u32,
    crc: StreamCrc,
    /// Verifies the section payloads' CRCs.
    crc32c: Crc32c,
    next_ipa: u64,
    buf: Vec<u8>,
    failed: Option<CheckpointError>,
}

/// Why `fill` stopped early.
enum Short {
    /// The stream ended after this many bytes.
    End(usize),
    Source(SourceError),
}

/// Fills `dst` from `source`.
fn fill<S: Source>(source: &mut S, dst: &mut [u8]) -> Result<(), Short> {
    let mut got = 0;
    while got < dst.len() {
        match source.read(&mut dst[got..]) {
            Ok(0) => return Err(Short::End(got)),
            // A source that claims more than it was given is treated as having filled it all.
            Ok(n) => got = got.saturating_add(n).min(dst.len()),
            Err(e) => return Err(Short::Source(e)),
        }
    }
    Ok(())
}

fn lz4_reason(e: &DecompressError) -> &'static str {
    match e {
        DecompressError::OutputTooSmall { .. } => "decodes to more bytes than its pages",
        DecompressError::LiteralOutOfBounds => "literal out of bounds",
        DecompressError::ExpectedAnotherByte => "ends in the middle of a sequence",
        DecompressError::OffsetZero => "match offset 0",
        DecompressError::OffsetOutOfBounds => "match offset out of bounds",
        _ => "malformed block",
    }
}

impl<S: Source> Decoder<S> {
    pub fn new(source: S) -> Decoder<S> {
        Decoder::with_limits(source, Limits::DEFAULT)
    }

    pub fn with_limits(source: S, limits: Limits) -> Decoder<S> {
        Decoder {
            source,
            limits,
            offset: 0,
            expect: Expect::Header,
            header: None,
            live: false,
            sections: 0,
            crc: StreamCrc::new(),
            crc32c: Crc32c::default(),
            next_ipa: 0,
            buf: Vec::new(),
            failed: None,
        }
    }

    /// Verifies section payloads with `crc` instead of [`Crc32c::default`] (a platform's CRC-32C
    /// instructions).
    pub fn with_crc(mut self, crc: Crc32c) -> Decoder<S> {
        self.crc32c = crc;
        self
    }

    /// The header, once its event was returned.
    pub fn header(&self) -> Option<&CheckpointHeader> {
        self.header.as_ref()
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Whether the header, once read, says this is a live stream (flag `LIVE`).
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// Whether [`Event::End`] was returned.
    pub fn is_done(&self) -> bool {
        self.expect == Expect::Done
    }

    /// The source, positioned after what was consumed.
    pub fn into_source(self) -> S {
        self.source
    }

    /// The next part of the checkpoint; `Ok(None)` after [`Event::End`]. `memory` is written
    /// only by memory and dirty runs.
    pub fn next_event<M: GuestMemory + ?Sized>(&mut self, memory: &mut M) -> Result<Option<Event>, CheckpointError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let r = match self.expect {
            Expect::Done => return Ok(None),
            Expect::Header => self.read_header().map(Event::Header),
            _ => self.read_section(memory),
        };
        match r {
            Ok(ev) => Ok(Some(ev)),
            Err(e) => {
                self.failed = Some(e);
                Err(e)
            }
        }
    }

    fn read_header(&mut self) -> Result<CheckpointHeader, CheckpointError> {
        let err = |problem| CheckpointError { section: None, part: Part::Header, offset: 0, problem };
        let need = FILE_HEADER_LEN as u64;
        let short = |s: Short, at: usize| match s {
            Short::End(n) => err(Problem::Truncated { need, have: (at + n) as u64 }),
            Short::Source(e) => err(Problem::Source(e)),
        };
        let mut h = [0u8; FILE_HEADER_LEN];
        if let Err(s) = fill(&mut self.source, &mut h[..8]) {
            // Say "not a checkpoint" rather than "truncated" when what is there is not the magic.
            if let Short::End(n) = s {
                if h[..n] != MAGIC[..n] {
                    return Err(err(Problem::BadMagic));
                }
            }
            return Err(short(s, 0));
        }
        if h[..8] != MAGIC {
            return Err(err(Problem::BadMagic));
        }
        fill(&mut self.source, &mut h[8..12]).map_err(|s| short(s, 8))?;
        let (version, header_len) = codec::get_version(&h[8..12]);
        if !(OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(err(Problem::UnsupportedVersion(version)));
        }
        if usize::from(header_len) != FILE_HEADER_LEN {
            return Err(err(Problem::OutOfRange { field: "header length", value: header_len.into() }));
        }
        fill(&mut self.source, &mut h[12..]).map_err(|s| short(s, 12))?;
        let stored = u32::from_le_bytes([h[60], h[61], h[62], h[63]]);
        let computed = CRC.checksum(&h[..60]);
        if stored != computed {
            return Err(err(Problem::Checksum { stored, computed }));
        }
        let (header, flags) = codec::get_header(&h).map_err(err)?;
        let l = &self.limits;
        if header.vcpus == 0 {
            return Err(err(Problem::OutOfRange { field: "vcpus", value: 0 }));
        }
        if header.vcpus > l.max_vcpus {
            let max = l.max_vcpus.into();
            return Err(err(Problem::TooLarge { field: "vcpus", value: header.vcpus.into(), max }));
        }
        let page = PAGE_SIZE as u64;
        if header.memory_bytes == 0 || header.memory_bytes % page != 0 {
            return Err(err(Problem::OutOfRange { field: "memory bytes", value: header.memory_bytes }));
        }
        if header.memory_bytes > l.max_memory {
            return Err(err(Problem::TooLarge {
                field: "memory bytes",
                value: header.memory_bytes,
                max: l.max_memory,
            }));
        }
        if header.ram_base % page != 0 || header.ram_base.checked_add(header.memory_bytes).is_none() {
            return Err(err(Problem::OutOfRange { field: "ram base", value: header.ram_base }));
        }
        self.crc.append(CRC.checksum(&h), need);
        self.offset = need;
        self.header = Some(header);
        self.live = flags & FLAG_LIVE != 0;
        self.next_ipa = header.ram_base;
        self.expect = Expect::Config;
        Ok(header)
    }

    fn read_section<M: GuestMemory + ?Sized>(&mut self, memory: &mut M) -> Result<Event, CheckpointError> {
        let start = self.offset;
        let index = self.sections;
        let Some(header) = self.header else {
            // Not reachable: sections are read only after the header.
            return Err(CheckpointError { section: None, part: Part::Header, offset: 0, problem: Problem::BadMagic });
        };
        let err = |part, problem| CheckpointError { section: Some(index), part, offset: start, problem };
        let short = |part, need: u64| {
            move |s: Short| match s {
                Short::End(n) => err(part, Problem::Truncated { need, have: n as u64 }),
                Short::Source(e) => err(part, Problem::Source(e)),
            }
        };

        // The section header, checked on its own CRC before any field of it is believed.
        let mut h = [0u8; SECTION_HEADER_LEN];
        fill(&mut self.source, &mut h).map_err(short(Part::SectionHeader, SECTION_HEADER_LEN as u64))?;
        let word = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
        let (stored, computed) = (word(12), CRC.checksum(&h[..12]));
        if stored != computed {
            return Err(err(Part::SectionHeader, Problem::Checksum { stored, computed }));
        }
        let (kind, len, payload_crc) = (h[0], word(4), word(8));
        if h[1..4] != [0, 0, 0] {
            return Err(err(Part::SectionHeader, Problem::Reserved { field: "section flags" }));
        }
        if !(KIND_CONFIG..=last_kind(header.format_version)).contains(&kind) {
            return Err(err(Part::SectionHeader, Problem::UnknownSection(kind)));
        }
        if !self.live && matches!(kind, KIND_DIRTY | KIND_TIMING) {
            return Err(err(Part::SectionHeader, Problem::LiveSectionInSnapshot(kind)));
        }
        // Is it a section that may come now?
        let part = self.part_of(kind, &header).map_err(|(part, problem)| err(part, problem))?;

        // Its length, before reading it.
        if len > self.limits.max_section_len {
            let max = self.limits.max_section_len.into();
            return Err(err(part, Problem::TooLarge { field: "section length", value: len.into(), max }));
        }
        let fixed = match kind {
            KIND_CONFIG => Some(codec::CONFIG_LEN),
            KIND_VCPU => Some(codec::VCPU_LEN),
            KIND_TIMERS => Some(codec::TIMERS_LEN),
            KIND_END => Some(codec::END_LEN),
            KIND_TIMING => Some(codec::TIMING_LEN),
            _ => None,
        };
        let len = len as usize;
        if let Some(f) = fixed.filter(|&f| f != len) {
            return Err(err(part, Problem::BadLength { expected: f as u64, found: len as u64 }));
        }
        if self.buf.len() < len {
            self.buf.resize(len, 0);
        }
        let payload = &mut self.buf[..len];
        fill(&mut self.source, payload).map_err(short(part, len as u64))?;
        let payload = &self.buf[..len];
        let computed = self.crc32c.checksum(payload);
        if computed != payload_crc {
            return Err(err(part, Problem::Checksum { stored: payload_crc, computed }));
        }

        let e = |problem| err(part, problem);
        let event = match part {
            Part::Config => {
                let c = codec::get_config(payload).map_err(e)?;
                self.expect = if self.live { Expect::Memory } else { Expect::Vcpu(0) };
                Event::Config(c)
            }
            Part::Vcpu(i) => {
                let v = codec::get_vcpu(payload, &header, i).map_err(e)?;
                self.expect = if i + 1 == header.vcpus { Expect::Vgic } else { Expect::Vcpu(i + 1) };
                Event::Vcpu(Box::new(v))
            }
            Part::Vgic => {
                let v = codec::get_vgic(payload, &header).map_err(e)?;
                self.expect = Expect::Timers;
                Event::Vgic(v)
            }
            Part::Timers => {
                let t = codec::get_timers(payload).map_err(e)?;
                self.expect = Expect::Devices;
                Event::Timers(t)
            }
            Part::Devices => {
                let d = codec::get_devices(payload).map_err(e)?;
                self.expect = if self.live { Expect::FinalDirty } else { Expect::Memory };
                Event::Devices(d)
            }
            Part::Timing => {
                let t = codec::get_timing(payload).map_err(e)?;
                self.expect = Expect::End;
                Event::Timing(t)
            }
            Part::End => {
                let t = codec::get_trailer(payload).map_err(e)?;
                let check = |field, stored: u64, computed: u64| {
                    if stored == computed {
                        Ok(())
                    } else {
                        Err(e(Problem::TrailerMismatch { field, stored, computed }))
                    }
                };
                check("section count", t.sections.into(), index.into())?;
                check("stream length", t.length, start)?;
                check("stream checksum", t.stream_crc.into(), self.crc.value().into())?;
                self.expect = Expect::Done;
                self.offset = start + (SECTION_HEADER_LEN + len) as u64;
                return Ok(Event::End(t));
            }
            Part::Memory => {
                let run = page_run(payload, &header, Some(self.next_ipa), memory).map_err(e)?;
                self.next_ipa = run.ipa + u64::from(run.pages) * PAGE_SIZE as u64;
                if self.live && self.next_ipa == header.ram_end() {
                    self.expect = Expect::PreCopy;
                }
                Event::Memory(run)
            }
            Part::Dirty => Event::Dirty(page_run(payload, &header, None, memory).map_err(e)?),
            // Not reachable: `part_of` names a section.
            Part::Header | Part::SectionHeader => return Err(e(Problem::UnknownSection(kind))),
        };
        self.crc.append_bytes16(&h);
        self.crc.append(payload_crc, len as u64);
        self.sections += 1;
        self.offset = start + (SECTION_HEADER_LEN + len) as u64;
        Ok(event)
    }
}

impl<S: Source> Decoder<S> {
    /// The part a section of `kind` is if it may come now, or why not (and the part to blame).
    fn part_of(&self, kind: u8, header: &CheckpointHeader) -> Result<Part, (Part, Problem)> {
        let unexpected = |expected| Err((Part::SectionHeader, Problem::UnexpectedSection { found: kind, expected }));
        let want = |k, part| if kind == k { Ok(part) } else { unexpected(part) };
        match self.expect {
            Expect::Config => want(KIND_CONFIG, Part::Config),
            Expect::Vcpu(i) => want(KIND_VCPU, Part::Vcpu(i)),
            Expect::Vgic => want(KIND_VGIC, Part::Vgic),
            Expect::Timers => want(KIND_TIMERS, Part::Timers),
            Expect::Devices => want(KIND_DEVICES, Part::Devices),
            Expect::Memory => {
                let done = self.next_ipa >= header.ram_end();
                let incomplete = |part| {
                    let covered = self.next_ipa - header.ram_base;
                    Err((part, Problem::MemoryIncomplete { covered, expected: header.memory_bytes }))
                };
                match kind {
                    KIND_MEMORY if !done => Ok(Part::Memory),
                    // (A live stream leaves this state when RAM is covered.)
                    KIND_END if done => Ok(Part::End),
                    // What may follow memory, before all of it came.
                    KIND_END => incomplete(Part::End),
                    KIND_DIRTY => incomplete(Part::Dirty),
                    KIND_VCPU if self.live => incomplete(Part::Vcpu(0)),
                    KIND_TIMING => incomplete(Part::Timing),
                    _ => unexpected(if done { Part::End } else { Part::Memory }),
                }
            }
            Expect::PreCopy => match kind {
                KIND_DIRTY => Ok(Part::Dirty),
                _ => want(KIND_VCPU, Part::Vcpu(0)),
            },
            Expect::FinalDirty => match kind {
                KIND_DIRTY => Ok(Part::Dirty),
                KIND_END => Err((Part::End, Problem::MissingSection(Part::Timing))),
                _ => want(KIND_TIMING, Part::Timing),
            },
            Expect::End => want(KIND_END, Part::End),
            // Not reachable: sections are read after the header and before the end.
            Expect::Header | Expect::Done => unexpected(Part::End),
        }
    }
}

/// Checks a memory run (`next_ipa`: the page it must start at) or a dirty run (`None`: any
/// page inside RAM) and writes its pages.
fn page_run<M: GuestMemory + ?Sized>(
    payload: &[u8],
    header: &CheckpointHeader,
    next_ipa: Option<u64>,
    memory: &mut M,
) -> Result<MemoryRun, Problem> {
    let (ipa, pages, encoding) = codec::get_run_header(payload)?;
    let data = payload.get(codec::RUN_HEADER_LEN..).unwrap_or(&[]);
    match next_ipa {
        Some(next) if ipa != next => return Err(Problem::MemoryOutOfOrder { ipa, expected: next }),
        None if ipa % PAGE_SIZE as u64 != 0 => return Err(Problem::Unaligned { ipa }),
        _ => {}
    }
    if pages == 0 {
        return Err(Problem::OutOfRange { field: "run pages", value: 0 });
    }
    let bytes = u64::from(pages) * PAGE_SIZE as u64;
    if ipa < header.ram_base || ipa.checked_add(bytes).is_none_or(|end| end > header.ram_end()) {
        return Err(Problem::MemoryOutsideRam { ipa, pages: pages.into() });
    }
    if encoding != RunEncoding::Zero && pages > MAX_DATA_RUN_PAGES {
        return Err(Problem::TooLarge { field: "run pages", value: pages.into(), max: MAX_DATA_RUN_PAGES.into() });
    }
    let refused = Problem::GuestMemoryRefused { ipa, len: bytes };
    let found = payload.len() as u64;
    let head = codec::RUN_HEADER_LEN as u64;
    match encoding {
        RunEncoding::Zero => {
            if !data.is_empty() {
                return Err(Problem::BadLength { expected: head, found });
            }
            let zeroed = if next_ipa.is_some() { memory.zero(ipa, bytes) } else { memory.zero_dirty(ipa, bytes) };
            if !zeroed {
                return Err(refused);
            }
        }
        RunEncoding::Raw => {
            if data.len() as u64 != bytes {
                return Err(Problem::BadLength { expected: head + bytes, found });
            }
            let dst = memory.pages_mut(ipa, data.len()).filter(|d| d.len() == data.len()).ok_or(refused)?;
            dst.copy_from_slice(data);
        }
        RunEncoding::Lz4 => {
            if data.is_empty() || data.len() as u64 >= bytes {
                return Err(Problem::Lz4 { reason: "block not smaller than its pages" });
            }
            let len = bytes as usize;
            let dst = memory.pages_mut(ipa, len).filter(|d| d.len() == len).ok_or(refused)?;
            match decompress_into(data, dst) {
                Ok(n) if n == len => {}
                Ok(_) => return Err(Problem::Lz4 { reason: "decodes to fewer bytes than its pages" }),
                Err(e) => return Err(Problem::Lz4 { reason: lz4_reason(&e) }),
            }
        }
    }
    Ok(MemoryRun { ipa, pages, encoding })
}

/// A bytes range of guest RAM holding data; RAM outside every range is zero.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataRange {
    pub ipa: u64,
    pub bytes: Vec<u8>,
}

impl DataRange {
    fn end(&self) -> u64 {
        self.ipa + self.bytes.len() as u64
    }
}

/// A whole checkpoint in memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub header: CheckpointHeader,
    pub config: VmConfig,
    /// In index order.
    pub vcpus: Vec<VcpuState>,
    pub vgic: VgicState,
    pub timers: TimerState,
    pub devices: DeviceState,
    /// Guest RAM that is not zero (it may hold zero pages too), in increasing IPA order, not
    /// overlapping. Of a live stream: round 0 with every dirty run applied over it.
    pub memory: Vec<DataRange>,
    /// A live stream's timing section; `None` for a snapshot.
    pub timing: Option<Timing>,
}

/// Collects memory runs into merged ranges, and applies dirty runs over them.
struct Collect(Vec<DataRange>);

impl GuestMemory for Collect {
    fn pages_mut(&mut self, ipa: u64, len: usize) -> Option<&mut [u8]> {
        let end = ipa.checked_add(len as u64)?;
        match self.0.last().map(DataRange::end) {
            // Right after the last range, or past it: memory runs always are, as they come in
            // order.
            Some(last) if last == ipa => {
                let r = self.0.last_mut()?;
                let at = r.bytes.len();
                r.bytes.resize(at + len, 0);
                Some(&mut r.bytes[at..])
            }
            Some(last) if last > ipa => self.cover(ipa, end),
            _ => {
                self.0.push(DataRange { ipa, bytes: vec![0; len] });
                self.0.last_mut().map(|r| &mut r.bytes[..])
            }
        }
    }

    fn zero(&mut self, _ipa: u64, _len: u64) -> bool {
        true
    }

    fn zero_dirty(&mut self, ipa: u64, len: u64) -> bool {
        let end = ipa.saturating_add(len);
        for r in self.0.iter_mut().filter(|r| r.ipa < end && r.end() > ipa) {
            let from = ipa.saturating_sub(r.ipa) as usize;
            let to = (end.min(r.end()) - r.ipa) as usize;
            r.bytes[from..to].fill(0);
        }
        true
    }
}

impl Collect {
    /// `[ipa, end)` as one range: the ranges it overlaps or touches are merged with it into
    /// one (what lies between them zero).
    fn cover(&mut self, ipa: u64, end: u64) -> Option<&mut [u8]> {
        let ranges = &mut self.0;
        // Ranges are sorted and apart, so `first <= stop`, and `first..stop` are those that
        // overlap or touch `[ipa, end)`.
        let first = ranges.partition_point(|r| r.end() < ipa);
        let stop = ranges.partition_point(|r| r.ipa <= end);
        let touched = ranges.get(first..stop)?;
        let inside_one = touched.len() == 1 && touched[0].ipa <= ipa && end <= touched[0].end();
        if !inside_one {
            let start = touched.first().map_or(ipa, |r| r.ipa.min(ipa));
            let finish = touched.last().map_or(end, |r| r.end().max(end));
            let mut bytes = vec![0u8; usize::try_from(finish - start).ok()?];
            for r in ranges.drain(first..stop) {
                let at = (r.ipa - start) as usize;
                bytes[at..at + r.bytes.len()].copy_from_slice(&r.bytes);
            }
            ranges.insert(first, DataRange { ipa: start, bytes });
        }
        let r = ranges.get_mut(first)?;
        let at = usize::try_from(ipa - r.ipa).ok()?;
        r.bytes.get_mut(at..at + usize::try_from(end - ipa).ok()?)
    }
}

/// Checks and reads a whole checkpoint held in memory, with the default [`Limits`]: either all
/// of it is valid (every checksum, every rule, the trailer, no bytes after it) and it is
/// returned, or nothing is.
pub fn decode_all(bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
    decode_all_with(bytes, Limits::DEFAULT)
}

/// [`decode_all`] with other limits.
pub fn decode_all_with(bytes: &[u8], limits: Limits) -> Result<Checkpoint, CheckpointError> {
    let mut d = Decoder::with_limits(bytes, limits);
    let mut mem = Collect(Vec::new());
    let (mut header, mut config, mut vgic, mut timers, mut devices, mut timing) = (None, None, None, None, None, None);
    let mut vcpus = Vec::new();
    while let Some(ev) = d.next_event(&mut mem)? {
        match ev {
            Event::Header(h) => header = Some(h),
            Event::Config(c) => config = Some(c),
            Event::Vcpu(v) => vcpus.push(*v),
            Event::Vgic(v) => vgic = Some(v),
            Event::Timers(t) => timers = Some(t),
            Event::Devices(dv) => devices = Some(dv),
            Event::Timing(t) => timing = Some(t),
            Event::Memory(_) | Event::Dirty(_) | Event::End(_) => {}
        }
    }
    let offset = d.offset();
    let rest = d.into_source();
    if !rest.is_empty() {
        let problem = Problem::TrailingBytes(rest.len() as u64);
        return Err(CheckpointError { section: None, part: Part::End, offset, problem });
    }
    match (header, config, vgic, timers, devices) {
        (Some(header), Some(config), Some(vgic), Some(timers), Some(devices)) => {
            Ok(Checkpoint { header, config, vcpus, vgic, timers, devices, memory: mem.0, timing })
        }
        // Not reachable: the decoder ends only after every section.
        _ => Err(CheckpointError {
            section: None,
            part: Part::End,
            offset,
            problem: Problem::Truncated { need: 1, have: 0 },
        }),
    }
}

impl Checkpoint {
    /// Writes this checkpoint to `sink` in the current format version: a live stream (its
    /// memory as round 0, no dirty runs) when it has a timing section, else a snapshot.
    pub fn encode_into<S: Sink>(&self, sink: S, options: EncodeOptions) -> Result<(S, EncodeSummary), EncodeError> {
        let header = CheckpointHeader { format_version: FORMAT_VERSION, ..self.header };
        match &self.timing {
            None => {
                let mut e = Encoder::new(sink, &header, &self.config, options)?;
                self.encode_state(&mut e)?;
                self.encode_memory(&mut e)?;
                e.finish()
            }
            Some(timing) => {
                let mut e = Encoder::new_live(sink, &header, &self.config, options)?;
                self.encode_memory(&mut e)?;
                self.encode_state(&mut e)?;
                e.timing(timing)?;
                e.finish()
            }
        }
    }

    fn encode_state<S: Sink>(&self, e: &mut Encoder<S>) -> Result<(), EncodeError> {
        for v in &self.vcpus {
            e.vcpu(v)?;
        }
        e.vgic(&self.vgic)?;
        e.timers(&self.timers)?;
        e.devices(&self.devices)
    }

    fn encode_memory<S: Sink>(&self, e: &mut Encoder<S>) -> Result<(), EncodeError> {
        let page = PAGE_SIZE as u64;
        let mut at = self.header.ram_base;
        for r in &self.memory {
            if r.ipa > at {
                e.memory_zero(at, (r.ipa - at) / page)?;
            }
            e.memory(r.ipa, &r.bytes)?;
            at = r.end();
        }
        if at < self.header.ram_end() {
            e.memory_zero(at, (self.header.ram_end() - at) / page)?;
        }
        Ok(())
    }

    /// This checkpoint as bytes.
    pub fn encode(&self, options: EncodeOptions) -> Result<Vec<u8>, EncodeError> {
        self.encode_into(Vec::new(), options).map(|(v, _)| v)
    }
}
