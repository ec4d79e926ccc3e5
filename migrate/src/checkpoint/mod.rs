//! The checkpoint format: a VM's whole state as one versioned, checksummed stream, written and
//! read section by section (`docs/checkpoint-format.md` has the byte layout).
//!
//! A stream is a 64-byte file header (magic, format version, flags, architecture, the VM's
//! shape), then sections, then a trailer section holding the CRC-32C of everything before it.
//! Every section has its own CRC-32C, which the reader verifies before it parses the section or
//! hands out anything of it. Two layouts share the sections:
//!
//! - **Snapshot** (no flag; version 1's only layout): config, one section per vCPU (by index in
//!   the VM, never by physical core), vGIC, timers, devices, memory runs covering guest RAM in
//!   order, trailer.
//! - **Live** (header flag [`FLAG_LIVE`], version 2): config, memory runs covering guest RAM in
//!   order (round 0, sent while the guest runs), dirty runs (pre-copy rounds: pages anywhere in
//!   RAM, a later copy overriding an earlier one), then the paused state — vCPUs, vGIC, timers,
//!   devices — then the last dirty runs, a [`Timing`] section and the trailer.
//!
//! - [`Encoder`] writes to a [`Sink`] as the platform hands it the state; guest memory goes in
//!   page by page or in any larger pieces, and is never held whole: zero pages cost 32 bytes per
//!   run, other pages are LZ4-compressed in runs of up to 16 pages (stored raw when they do not
//!   compress).
//! - [`Decoder`] reads from a [`Source`] and yields one [`Event`] per section, writing memory
//!   and dirty runs into the caller's [`GuestMemory`]. It never panics, refuses anything
//!   malformed with a [`CheckpointError`] naming section, offset and reason, and enforces
//!   [`Limits`]. It reads format versions 1 and 2.
//! - [`decode_all`] checks a whole checkpoint held in memory and returns it as a
//!   [`Checkpoint`], or an error and nothing.
//! - [`Crc32c`] computes the section payloads' CRC-32C: the portable tables, the CPU's
//!   instructions with the `hw-crc` feature (host builds), or a platform's own
//!   ([`Encoder::with_crc`], [`Decoder::with_crc`]). The stream is the same with any.
//!
//! **No partial restore.** The reader validates each section before it yields it, but a stream
//! can still fail later (truncated, a later section corrupt, the trailer's checksum wrong). The
//! platform must therefore restore into a *fresh* VM that does not run, and start it only after
//! [`Event::End`]: on any error it discards that VM, and the source VM (or the stored
//! checkpoint) is untouched.

mod checksum;
mod codec;
mod decode;
mod encode;
mod error;
mod state;
pub(crate) mod wire;

#[cfg(test)]
mod tests;

pub use checksum::Crc32c;
pub use codec::{RunEncoding, Trailer};
pub use decode::{
    decode_all, decode_all_with, Checkpoint, DataRange, Decoder, Discard, Event, GuestMemory, MemoryRun, NoMemory,
    Source,
};
pub use encode::{Compression, EncodeOptions, EncodeSummary, Encoder, Sink};
pub use error::{CheckpointError, EncodeError, Part, Problem, SinkError, SourceError};
pub use state::{
    Arch, CheckpointHeader, CpuRegs, DeviceState, El1Regs, FpSimd, GicCpu, IrqState, Pl011State, PowerState,
    TimerState, Timing, VcpuState, VgicState, VirtualTimer, VmConfig,
};

/// The first 8 bytes of every checkpoint.
pub const MAGIC: [u8; 8] = *b"HVCHKPT\0";
/// The version this crate writes. It reads every version from [`OLDEST_READABLE_VERSION`] up to
/// this one.
pub const FORMAT_VERSION: u16 = 2;
/// The oldest version this crate reads (version 1: snapshots only, no header flags).
pub const OLDEST_READABLE_VERSION: u16 = 1;
/// Header flag (bit 0 of the flags word, version 2): the stream is a live migration stream
/// (memory first, then dirty runs, the paused state, the last dirty runs and a timing section).
pub const FLAG_LIVE: u32 = 1;
/// Bytes of the file header.
pub const FILE_HEADER_LEN: usize = 64;
/// Bytes of each section's header.
pub const SECTION_HEADER_LEN: usize = 16;
/// The granule of guest memory in a checkpoint.
pub const PAGE_SIZE: usize = 4096;
/// The most pages one raw or LZ4 run may hold (1 MiB); zero runs have no such limit.
pub const MAX_DATA_RUN_PAGES: u32 = 256;

/// Section kinds (the order they come in depends on the layout; see the module doc).
pub(crate) const KIND_CONFIG: u8 = 1;
pub(crate) const KIND_VCPU: u8 = 2;
pub(crate) const KIND_VGIC: u8 = 3;
pub(crate) const KIND_TIMERS: u8 = 4;
pub(crate) const KIND_DEVICES: u8 = 5;
pub(crate) const KIND_MEMORY: u8 = 6;
pub(crate) const KIND_END: u8 = 7;
/// Version 2, live streams only.
pub(crate) const KIND_DIRTY: u8 = 8;
/// Version 2, live streams only.
pub(crate) const KIND_TIMING: u8 = 9;

/// The highest section kind a stream of `version` may hold.
pub(crate) const fn last_kind(version: u16) -> u8 {
    if version >= 2 {
        KIND_TIMING
    } else {
        KIND_END
    }
}

pub(crate) fn kind_name(kind: u8) -> &'static str {
    match kind {
        KIND_CONFIG => "config",
        KIND_VCPU => "vcpu",
        KIND_VGIC => "vgic",
        KIND_TIMERS => "timers",
        KIND_DEVICES => "devices",
        KIND_MEMORY => "memory",
        KIND_END => "end",
        KIND_DIRTY => "dirty",
        KIND_TIMING => "timing",
        _ => "unknown",
    }
}

/// What the reader accepts at most; anything larger is refused with
/// [`Problem::TooLarge`] before it is read or allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// vCPUs (the vGIC model's own limit is 64).
    pub max_vcpus: u16,
    /// Bytes of guest RAM.
    pub max_memory: u64,
    /// Bytes of one section's payload (bounds the reader's buffer).
    pub max_section_len: u32,
}

impl Limits {
    /// 64 vCPUs, 64 GiB of RAM (what a boot manifest allows), and sections up to the largest
    /// the format has (a raw run of [`MAX_DATA_RUN_PAGES`]).
    pub const DEFAULT: Limits = Limits {
        max_vcpus: vdev::vgic::MAX_VCPUS,
        max_memory: 64 << 30,
        max_section_len: (codec::RUN_HEADER_LEN + MAX_DATA_RUN_PAGES as usize * PAGE_SIZE) as u32,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}
