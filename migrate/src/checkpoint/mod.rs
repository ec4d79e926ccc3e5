//! The checkpoint format: a VM's whole state as one versioned, checksummed stream, written and
//! read section by section (`docs/checkpoint-format.md` has the byte layout).
//!
//! A checkpoint is a 64-byte file header (magic, format version, architecture, the VM's shape),
//! then sections in a fixed order — config, one per vCPU (by index in the VM, never by physical
//! core), vGIC, timers, devices, memory runs covering guest RAM in order — then a trailer
//! section holding the CRC-32C of everything before it. Every section has its own CRC-32C,
//! which the reader verifies before it parses the section or hands out anything of it.
//!
//! - [`Encoder`] writes to a [`Sink`] as the platform hands it the state; guest memory goes in
//!   page by page or in any larger pieces, and is never held whole: zero pages cost 32 bytes per
//!   run, other pages are LZ4-compressed in runs of up to 16 pages (stored raw when they do not
//!   compress).
//! - [`Decoder`] reads from a [`Source`] and yields one [`Event`] per section, writing memory
//!   runs into the caller's [`GuestMemory`]. It never panics, refuses anything malformed with a
//!   [`CheckpointError`] naming section, offset and reason, and enforces [`Limits`].
//! - [`decode_all`] checks a whole checkpoint held in memory and returns it as a
//!   [`Checkpoint`], or an error and nothing.
//!
//! **No partial restore.** The reader validates each section before it yields it, but a stream
//! can still fail later (truncated, a later section corrupt, the trailer's checksum wrong). The
//! platform must therefore restore into a *fresh* VM that does not run, and start it only after
//! [`Event::End`]: on any error it discards that VM, and the source VM (or the stored
//! checkpoint) is untouched.

mod codec;
mod decode;
mod encode;
mod error;
mod state;
mod wire;

#[cfg(test)]
mod tests;

pub use codec::{RunEncoding, Trailer};
pub use decode::{
    decode_all, decode_all_with, Checkpoint, DataRange, Decoder, Discard, Event, GuestMemory, MemoryRun, NoMemory,
    Source,
};
pub use encode::{Compression, EncodeOptions, EncodeSummary, Encoder, Sink};
pub use error::{CheckpointError, EncodeError, Part, Problem, SinkError, SourceError};
pub use state::{
    Arch, CheckpointHeader, CpuRegs, DeviceState, El1Regs, FpSimd, GicCpu, IrqState, Pl011State, PowerState,
    TimerState, VcpuState, VgicState, VirtualTimer, VmConfig,
};

/// The first 8 bytes of every checkpoint.
pub const MAGIC: [u8; 8] = *b"HVCHKPT\0";
/// The version this crate writes and the only one it reads.
pub const FORMAT_VERSION: u16 = 1;
/// Bytes of the file header.
pub const FILE_HEADER_LEN: usize = 64;
/// Bytes of each section's header.
pub const SECTION_HEADER_LEN: usize = 16;
/// The granule of guest memory in a checkpoint.
pub const PAGE_SIZE: usize = 4096;
/// The most pages one raw or LZ4 run may hold (1 MiB); zero runs have no such limit.
pub const MAX_DATA_RUN_PAGES: u32 = 256;

/// Section kinds, in the order they must appear.
pub(crate) const KIND_CONFIG: u8 = 1;
pub(crate) const KIND_VCPU: u8 = 2;
pub(crate) const KIND_VGIC: u8 = 3;
pub(crate) const KIND_TIMERS: u8 = 4;
pub(crate) const KIND_DEVICES: u8 = 5;
pub(crate) const KIND_MEMORY: u8 = 6;
pub(crate) const KIND_END: u8 = 7;

pub(crate) fn kind_name(kind: u8) -> &'static str {
    match kind {
        KIND_CONFIG => "config",
        KIND_VCPU => "vcpu",
        KIND_VGIC => "vgic",
        KIND_TIMERS => "timers",
        KIND_DEVICES => "devices",
        KIND_MEMORY => "memory",
        KIND_END => "end",
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
