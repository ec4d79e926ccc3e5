//! Control frames: the fixed-size, checksummed messages that close a live migration.
//!
//! ```text
//! offset size field
//!  0     8    magic "HVCTL\0\0\0"
//!  8     1    kind: 1 READY, 2 REFUSED, 3 COMMIT, 4 DONE, 5 ABORT, 6 RECEIVED
//!  9     3    reserved (0)
//! 12     4    REFUSED: the refusal code; else 0
//! 16     8    READY: the stream's length before its trailer; RECEIVED: bytes read; else 0
//! 24     4    READY: the stream's CRC-32C (the trailer's); else 0
//! 28    32    REFUSED: the reason, UTF-8, NUL-padded; else 0
//! 60     4    CRC-32C of bytes 0..60
//! ```

use core::fmt;

use crate::checkpoint::wire::CRC;
use crate::checkpoint::Trailer;

/// The first 8 bytes of every control frame.
pub const CONTROL_MAGIC: [u8; 8] = *b"HVCTL\0\0\0";
/// Bytes of a control frame.
pub const CONTROL_FRAME_LEN: usize = 64;

const KIND_READY: u8 = 1;
const KIND_REFUSED: u8 = 2;
const KIND_COMMIT: u8 = 3;
const KIND_DONE: u8 = 4;
const KIND_ABORT: u8 = 5;
const KIND_RECEIVED: u8 = 6;
const REASON_AT: usize = 28;

/// Why the destination refused a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The stream failed verification (a checksum, a rule of the format, the trailer).
    Invalid = 1,
    /// The stream is valid but this machine cannot run it (its counter frequency, the VM's
    /// size, what the manifest allows).
    Incompatible = 2,
    /// This machine has no room for the VM now (memory, cores).
    NoResources = 3,
    /// Anything else; the reason says what.
    Other = 4,
}

impl Refusal {
    fn from_code(code: u32) -> Option<Refusal> {
        Some(match code {
            1 => Refusal::Invalid,
            2 => Refusal::Incompatible,
            3 => Refusal::NoResources,
            4 => Refusal::Other,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Refusal::Invalid => "invalid stream",
            Refusal::Incompatible => "incompatible",
            Refusal::NoResources => "no resources",
            Refusal::Other => "other",
        }
    }
}

/// A short text carried in a frame: at most [`Reason::MAX_LEN`] bytes of UTF-8, no NUL.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Reason {
    bytes: [u8; Reason::MAX_LEN],
    len: u8,
}

impl Reason {
    pub const MAX_LEN: usize = 32;

    /// `text` up to its first NUL, cut to at most [`MAX_LEN`](Self::MAX_LEN) bytes at a
    /// character boundary: any text makes a reason, a long one loses its end.
    pub fn new(text: &str) -> Reason {
        let text = text.split('\0').next().unwrap_or("");
        let mut len = text.len().min(Reason::MAX_LEN);
        while !text.is_char_boundary(len) {
            len -= 1;
        }
        let mut bytes = [0u8; Reason::MAX_LEN];
        bytes[..len].copy_from_slice(&text.as_bytes()[..len]);
        Reason { bytes, len: len as u8 }
    }

    pub fn as_str(&self) -> &str {
        // Built only from a `&str` cut at a character boundary, or from checked UTF-8.
        core::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

impl Default for Reason {
    fn default() -> Self {
        Reason::new("")
    }
}

impl fmt::Debug for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A control message of the live migration protocol (docs/migration.md, *Live migration*).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Control {
    /// Destination → source: the whole stream verified, to its trailer, and the guest is built
    /// and ready to start. `stream_len` and `stream_crc` are the trailer's `length` and
    /// `stream_crc` ([`Control::ready`]): the source checks that they are its stream's.
    Ready { stream_len: u64, stream_crc: u32 },
    /// Destination → source: the stream is refused; the source resumes the guest.
    Refused { code: Refusal, reason: Reason },
    /// Source → destination: the source has given the guest up for good (it will not resume
    /// it); the destination starts it.
    Commit,
    /// Destination → source: the guest runs on the destination; the source may free it.
    Done,
    /// The migration is abandoned: the source resumes the guest and the destination discards
    /// what it built. Either side may send it before COMMIT; after COMMIT only the
    /// destination, and only if no vCPU of the guest has run there.
    Abort,
    /// Destination → source, while the stream flows: this many bytes of it were read. The
    /// source keeps at most a window of unconfirmed bytes in flight (flow control over a
    /// transport that may drop what it cannot take, as QEMU's virtio console does).
    Received { bytes: u64 },
}

/// A frame that is not a valid control message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlError {
    /// Not a control frame.
    BadMagic,
    /// The frame was damaged.
    Checksum {
        stored: u32,
        computed: u32,
    },
    UnknownKind(u8),
    UnknownRefusal(u32),
    /// A field this kind does not use, or reserved bytes, are not zero.
    Reserved {
        field: &'static str,
    },
    /// The reason is not UTF-8, or has bytes after its NUL padding began.
    BadReason,
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("control frame: ")?;
        match *self {
            ControlError::BadMagic => f.write_str("not a control frame (bad magic)"),
            ControlError::Checksum { stored, computed } => {
                write!(f, "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")
            }
            ControlError::UnknownKind(k) => write!(f, "unknown kind {k}"),
            ControlError::UnknownRefusal(c) => write!(f, "unknown refusal code {c}"),
            ControlError::Reserved { field } => write!(f, "{field} is not zero"),
            ControlError::BadReason => f.write_str("the reason is not NUL-padded UTF-8"),
        }
    }
}

impl Control {
    /// The READY that confirms the stream this trailer ends.
    pub fn ready(trailer: &Trailer) -> Control {
        Control::Ready { stream_len: trailer.length, stream_crc: trailer.stream_crc }
    }

    /// A REFUSED with its reason (cut to fit, see [`Reason::new`]).
    pub fn refused(code: Refusal, reason: &str) -> Control {
        Control::Refused { code, reason: Reason::new(reason) }
    }

    /// The protocol's name of the message.
    pub fn name(&self) -> &'static str {
        match self {
            Control::Ready { .. } => "READY",
            Control::Refused { .. } => "REFUSED",
            Control::Commit => "COMMIT",
            Control::Done => "DONE",
            Control::Abort => "ABORT",
            Control::Received { .. } => "RECEIVED",
        }
    }

    pub fn encode(&self) -> [u8; CONTROL_FRAME_LEN] {
        let mut b = [0u8; CONTROL_FRAME_LEN];
        b[..8].copy_from_slice(&CONTROL_MAGIC);
        b[8] = match self {
            Control::Ready { .. } => KIND_READY,
            Control::Refused { .. } => KIND_REFUSED,
            Control::Commit => KIND_COMMIT,
            Control::Done => KIND_DONE,
            Control::Abort => KIND_ABORT,
            Control::Received { .. } => KIND_RECEIVED,
        };
        match self {
            Control::Ready { stream_len, stream_crc } => {
                b[16..24].copy_from_slice(&stream_len.to_le_bytes());
                b[24..28].copy_from_slice(&stream_crc.to_le_bytes());
            }
            Control::Refused { code, reason } => {
                b[12..16].copy_from_slice(&(*code as u32).to_le_bytes());
                let text = reason.as_str().as_bytes();
                b[REASON_AT..REASON_AT + text.len()].copy_from_slice(text);
            }
            Control::Received { bytes } => b[16..24].copy_from_slice(&bytes.to_le_bytes()),
            Control::Commit | Control::Done | Control::Abort => {}
        }
        let crc = CRC.checksum(&b[..60]);
        b[60..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Reads a frame: the magic, then the checksum, then the kind and its fields; every byte a
    /// kind does not use must be zero.
    pub fn decode(frame: &[u8; CONTROL_FRAME_LEN]) -> Result<Control, ControlError> {
        if frame[..8] != CONTROL_MAGIC {
            return Err(ControlError::BadMagic);
        }
        let word = |at: usize| u32::from_le_bytes([frame[at], frame[at + 1], frame[at + 2], frame[at + 3]]);
        let (stored, computed) = (word(60), CRC.checksum(&frame[..60]));
        if stored != computed {
            return Err(ControlError::Checksum { stored, computed });
        }
        if frame[9..12] != [0, 0, 0] {
            return Err(ControlError::Reserved { field: "reserved bytes" });
        }
        let code = word(12);
        let mut len = [0u8; 8];
        len.copy_from_slice(&frame[16..24]);
        let stream_len = u64::from_le_bytes(len);
        let stream_crc = word(24);
        let reason = &frame[REASON_AT..60];
        let unused = |used_code: bool, used_stream: bool, used_reason: bool| {
            if !used_code && code != 0 {
                Err(ControlError::Reserved { field: "code" })
            } else if !used_stream && (stream_len != 0 || stream_crc != 0) {
                Err(ControlError::Reserved { field: "stream length and CRC" })
            } else if !used_reason && reason.iter().any(|&c| c != 0) {
                Err(ControlError::Reserved { field: "reason" })
            } else {
                Ok(())
            }
        };
        match frame[8] {
            KIND_READY => {
                unused(false, true, false)?;
                Ok(Control::Ready { stream_len, stream_crc })
            }
            KIND_REFUSED => {
                unused(true, false, true)?;
                let code = Refusal::from_code(code).ok_or(ControlError::UnknownRefusal(code))?;
                let end = reason.iter().position(|&c| c == 0).unwrap_or(reason.len());
                if reason[end..].iter().any(|&c| c != 0) {
                    return Err(ControlError::BadReason);
                }
                let text = core::str::from_utf8(&reason[..end]).map_err(|_| ControlError::BadReason)?;
                Ok(Control::Refused { code, reason: Reason::new(text) })
            }
            KIND_RECEIVED => {
                if stream_crc != 0 {
                    return Err(ControlError::Reserved { field: "stream CRC" });
                }
                unused(false, true, false)?;
                Ok(Control::Received { bytes: stream_len })
            }
            kind @ (KIND_COMMIT | KIND_DONE | KIND_ABORT) => {
                unused(false, false, false)?;
                Ok(match kind {
                    KIND_COMMIT => Control::Commit,
                    KIND_DONE => Control::Done,
                    _ => Control::Abort,
                })
            }
            k => Err(ControlError::UnknownKind(k)),
        }
    }
}

impl fmt::Display for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Control::Ready { stream_len, stream_crc } => {
                write!(f, "READY (stream of {stream_len} bytes, crc {stream_crc:#010x})")
            }
            Control::Refused { code, reason } => write!(f, "REFUSED ({}: {reason})", code.name()),
            other => f.write_str(other.name()),
        }
    }
}
