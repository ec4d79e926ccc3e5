//! What can go wrong reading or writing a checkpoint, said precisely enough to act on.

use core::fmt;

use super::state::Arch;
use super::{kind_name, FORMAT_VERSION, OLDEST_READABLE_VERSION};

/// Which part of a checkpoint an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The fixed file header.
    Header,
    /// A section's 16-byte header (its kind is not trusted yet).
    SectionHeader,
    Config,
    Vcpu(u16),
    Vgic,
    Timers,
    Devices,
    /// A memory run (a snapshot's memory, or round 0 of a live stream).
    Memory,
    /// A dirty run of a live stream.
    Dirty,
    /// The timing section of a live stream.
    Timing,
    /// The trailer section.
    End,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::Header => f.write_str("header"),
            Part::SectionHeader => f.write_str("section header"),
            Part::Config => f.write_str("config"),
            Part::Vcpu(i) => write!(f, "vcpu {i}"),
            Part::Vgic => f.write_str("vgic"),
            Part::Timers => f.write_str("timers"),
            Part::Devices => f.write_str("devices"),
            Part::Memory => f.write_str("memory"),
            Part::Dirty => f.write_str("dirty"),
            Part::Timing => f.write_str("timing"),
            Part::End => f.write_str("end"),
        }
    }
}

/// A [`Source`](super::Source) that could not deliver bytes (not the end of the stream, which
/// is reported as [`Problem::Truncated`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceError(pub &'static str);

/// A [`Sink`](super::Sink) that could not take bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SinkError(pub &'static str);

/// What is wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// Not a checkpoint.
    BadMagic,
    /// Written by another format version.
    UnsupportedVersion(u16),
    /// Taken on another architecture.
    WrongArch(Arch),
    /// The stream ends `have` bytes into a part that needs `need`.
    Truncated {
        need: u64,
        have: u64,
    },
    Checksum {
        stored: u32,
        computed: u32,
    },
    /// A size or count over the reader's [`Limits`](super::Limits).
    TooLarge {
        field: &'static str,
        value: u64,
        max: u64,
    },
    /// A value outside what its field allows.
    OutOfRange {
        field: &'static str,
        value: u64,
    },
    /// Reserved bytes or bits that are not zero.
    Reserved {
        field: &'static str,
    },
    /// A section whose length does not fit its content.
    BadLength {
        expected: u64,
        found: u64,
    },
    /// A section kind this reader does not know.
    UnknownSection(u8),
    /// A known section out of order (sections come in a fixed order).
    UnexpectedSection {
        found: u8,
        expected: Part,
    },
    /// A section only a live stream has (dirty, timing) in a snapshot (no `LIVE` flag).
    LiveSectionInSnapshot(u8),
    /// A section the stream's layout requires is not there (a live stream's timing section).
    MissingSection(Part),
    /// A device type this reader does not know, or a device saved twice.
    UnknownDevice(u16),
    DuplicateDevice(u16),
    /// Text that is not UTF-8.
    BadText {
        field: &'static str,
    },
    /// Memory runs must cover guest RAM in order, from its base, without gaps or overlap.
    MemoryOutOfOrder {
        ipa: u64,
        expected: u64,
    },
    /// A run that is not inside guest RAM (it extends past its end or, a dirty run, starts
    /// below its base).
    MemoryOutsideRam {
        ipa: u64,
        pages: u64,
    },
    /// A dirty run whose IPA is not a multiple of the page size.
    Unaligned {
        ipa: u64,
    },
    /// A section that needs all of guest RAM came before all of it did: the trailer of a
    /// snapshot, or anything but memory during a live stream's round 0.
    MemoryIncomplete {
        covered: u64,
        expected: u64,
    },
    /// An LZ4 block that does not decode to exactly its run's pages.
    Lz4 {
        reason: &'static str,
    },
    /// The caller's [`GuestMemory`](super::GuestMemory) refused a range the checkpoint is
    /// allowed to write.
    GuestMemoryRefused {
        ipa: u64,
        len: u64,
    },
    /// The trailer disagrees with the stream it ends.
    TrailerMismatch {
        field: &'static str,
        stored: u64,
        computed: u64,
    },
    /// Bytes after the trailer ([`decode_all`](super::decode_all) only).
    TrailingBytes(u64),
    Source(SourceError),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Problem::BadMagic => f.write_str("not a checkpoint (bad magic)"),
            Problem::UnsupportedVersion(v) => {
                write!(
                    f,
                    "format version {v} (this reader knows versions {OLDEST_READABLE_VERSION} to {FORMAT_VERSION})"
                )
            }
            Problem::WrongArch(a) => write!(f, "wrong architecture: {a} (this host restores {})", Arch::HOST),
            Problem::Truncated { need, have } => write!(f, "truncated: needs {need} bytes, {have} left"),
            Problem::Checksum { stored, computed } => {
                write!(f, "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")
            }
            Problem::TooLarge { field, value, max } => write!(f, "{field} {value} is over the limit of {max}"),
            Problem::OutOfRange { field, value } => write!(f, "{field} {value:#x} is out of range"),
            Problem::Reserved { field } => write!(f, "reserved {field} is not zero"),
            Problem::BadLength { expected, found } => {
                write!(f, "length {found} does not fit the content ({expected} expected)")
            }
            Problem::UnknownSection(k) => write!(f, "unknown section kind {k}"),
            Problem::UnexpectedSection { found, expected } => {
                write!(f, "found a {} section where {expected} was expected", kind_name(found))
            }
            Problem::LiveSectionInSnapshot(k) => {
                write!(f, "a {} section in a snapshot (the header has no LIVE flag)", kind_name(k))
            }
            Problem::MissingSection(part) => write!(f, "the {part} section is missing"),
            Problem::UnknownDevice(t) => write!(f, "unknown device type {t}"),
            Problem::DuplicateDevice(t) => write!(f, "device type {t} saved twice"),
            Problem::BadText { field } => write!(f, "{field} is not valid UTF-8"),
            Problem::MemoryOutOfOrder { ipa, expected } => {
                write!(f, "run at IPA {ipa:#x} out of order (the next page is {expected:#x})")
            }
            Problem::MemoryOutsideRam { ipa, pages } => {
                write!(f, "run of {pages} pages at IPA {ipa:#x} is not inside guest RAM")
            }
            Problem::Unaligned { ipa } => write!(f, "run IPA {ipa:#x} is not page aligned"),
            Problem::MemoryIncomplete { covered, expected } => {
                write!(f, "memory ends after {covered} of {expected} bytes of guest RAM")
            }
            Problem::Lz4 { reason } => write!(f, "bad LZ4 block: {reason}"),
            Problem::GuestMemoryRefused { ipa, len } => {
                write!(f, "guest memory refused {len} bytes at IPA {ipa:#x}")
            }
            Problem::TrailerMismatch { field, stored, computed } => {
                write!(f, "trailer {field} is {stored:#x}, the stream has {computed:#x}")
            }
            Problem::TrailingBytes(n) => write!(f, "{n} bytes after the trailer"),
            Problem::Source(SourceError(why)) => write!(f, "source failed: {why}"),
        }
    }
}

/// A checkpoint the reader refuses: where (section number, part, byte offset of the part's
/// start in the stream) and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointError {
    /// The section's number (0 = the first after the file header), if in a section.
    pub section: Option<u32>,
    pub part: Part,
    pub offset: u64,
    pub problem: Problem,
}

impl fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("checkpoint: ")?;
        match self.section {
            Some(n) => write!(f, "section {n} ({}) ", self.part)?,
            None => write!(f, "{} ", self.part)?,
        }
        write!(f, "at byte {}: {}", self.offset, self.problem)
    }
}

/// Why the encoder refused a call. The encoder is unusable after an error (the stream it wrote
/// is incomplete and will be refused by any reader).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    Sink(SinkError),
    /// Sections must be given in order: for a snapshot, header and config, vCPUs 0..n, vGIC,
    /// timers, devices, memory, then `finish`; for a live stream, header and config, memory,
    /// dirty runs, vCPUs 0..n, vGIC, timers, devices, dirty runs, timing, then `finish`.
    OutOfOrder {
        expected: Part,
        got: Part,
    },
    /// A dirty run or timing section given to a snapshot encoder ([`Encoder::new`](super::Encoder::new));
    /// only a live stream ([`Encoder::new_live`](super::Encoder::new_live)) has them.
    NotLive {
        got: Part,
    },
    /// A value the format does not allow (the reader would refuse it).
    Invalid {
        part: Part,
        field: &'static str,
        value: u64,
    },
    /// `finish` (or, in a live stream, anything but memory) before all of guest RAM was given.
    MemoryIncomplete {
        covered: u64,
        expected: u64,
    },
    /// A previous call failed.
    Poisoned,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("checkpoint encoder: ")?;
        match *self {
            EncodeError::Sink(SinkError(why)) => write!(f, "sink failed: {why}"),
            EncodeError::OutOfOrder { expected, got } => write!(f, "got {got} where {expected} was expected"),
            EncodeError::NotLive { got } => write!(f, "got {got}, which only a live stream has"),
            EncodeError::Invalid { part, field, value } => write!(f, "{part}: {field} {value:#x} is not allowed"),
            EncodeError::MemoryIncomplete { covered, expected } => {
                write!(f, "memory ended after {covered} of {expected} bytes of guest RAM")
            }
            EncodeError::Poisoned => f.write_str("a previous call failed"),
        }
    }
}
