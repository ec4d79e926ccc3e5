//! The checkpoint disk: one byte stream, written sequentially to the first virtio-blk device and
//! read back with its length and checksum verified.
//!
//! On-disk layout (little-endian; sectors of 512 bytes):
//!
//! | bytes | field |
//! |---|---|
//! | sector 0: `0..8` | magic `HVSTREAM` |
//! | `8..12` | format version, 1 |
//! | `12..16` | sector size, 512 |
//! | `16..24` | payload length in bytes |
//! | `24..28` | CRC-32C (Castagnoli, as the manifest's) of the payload |
//! | `28..32` | CRC-32C of bytes `0..28` of the header |
//! | `32..512` | zero |
//! | sector 1.. | the payload, the last sector padded with zeros |
//!
//! A [`DiskWriter`] first blanks the header sector, then writes the payload from sector 1 in
//! 64 KiB requests, and [`DiskWriter::finish`] writes the padded tail, flushes, writes the
//! header and flushes again: a stream whose writer never finished has no header, and a stream
//! is never half old, half new. A [`DiskReader`] checks the header (magic, its own checksum,
//! version, that the payload fits the disk), and the read that delivers the last byte of the
//! payload checks the payload's CRC: a mismatch is an error there, before the caller can take
//! the stream as good.
//!
//! Each request waits for its completion by polling the used ring, for at most
//! [`REQUEST_TIMEOUT`]. A request that never completes still owns its buffers: the disk then
//! leaks its driver and buffers (the device may still write them), keeps the transport claimed,
//! and answers every later call with [`DiskError::Broken`].

use alloc::alloc::{alloc_zeroed, handle_alloc_error, Layout};
use alloc::boxed::Box;
use core::fmt;
use core::ops::Range;

use crc::{Crc, CRC_32_ISCSI};
use migrate::checkpoint::Crc32c;
use vcpu_runtime::Nanos;
use virtio_drivers::device::blk::{BlkReq, BlkResp, VirtIOBlk};
use virtio_drivers::transport::mmio::{MmioError, MmioTransport};
use virtio_drivers::transport::DeviceType;

use super::{ClaimError, HypHal, MmioDevice, TransportClaim};
use crate::timer;

/// The sector size of the stream's layout and of virtio-blk requests.
pub const SECTOR_SIZE: usize = virtio_drivers::device::blk::SECTOR_SIZE;
/// The header takes the first sector; the payload starts at sector 1.
pub const HEADER_SECTORS: u64 = 1;
/// The header's first bytes.
pub const STREAM_MAGIC: [u8; 8] = *b"HVSTREAM";
/// The layout version this code writes and reads.
pub const STREAM_VERSION: u32 = 1;
/// How long one request may take before the disk gives up on the device.
pub const REQUEST_TIMEOUT: Nanos = Nanos::from_secs(5);

/// Sectors per request: 64 KiB.
const CHUNK_SECTORS: usize = 128;
const CHUNK_BYTES: usize = CHUNK_SECTORS * SECTOR_SIZE;
/// The header fields covered by the header's own checksum.
const HEADER_CHECKED: usize = 28;

/// CRC-32C, as `vcpu_runtime::manifest`.
static CRC32C: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);

/// The CRC-32C of `bytes` (what [`StreamSummary::crc`] holds for a payload). The payload's
/// own running CRC uses [`crate::crc::crc32c`] (the CPU's CRC32C instructions): the same value.
pub fn crc32c(bytes: &[u8]) -> u32 {
    CRC32C.checksum(bytes)
}

/// What a finished stream holds: its payload's length and CRC-32C.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSummary {
    pub len: u64,
    pub crc: u32,
}

/// Why the header sector does not describe a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// The header sector is all zeros: nothing was written, or a writer never finished.
    Blank,
    /// The first 8 bytes are not `HVSTREAM`.
    BadMagic([u8; 8]),
    /// The header's own checksum does not match its fields.
    Checksum { stored: u32, computed: u32 },
    /// A layout version this code does not read.
    Version(u32),
    /// A sector size other than 512.
    SectorSize(u32),
    /// The payload would run past the end of the disk.
    PastEnd { len: u64, capacity: u64 },
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::Blank => {
                write!(f, "the header sector is blank (nothing written, or the writer never finished)")
            }
            HeaderError::BadMagic(m) => write!(f, "magic {m:02x?}, expected \"HVSTREAM\""),
            HeaderError::Checksum { stored, computed } => {
                write!(f, "header checksum {computed:#010x}, the header says {stored:#010x}")
            }
            HeaderError::Version(v) => write!(f, "layout version {v}, this hypervisor reads {STREAM_VERSION}"),
            HeaderError::SectorSize(s) => write!(f, "sector size {s}, expected {SECTOR_SIZE}"),
            HeaderError::PastEnd { len, capacity } => {
                write!(f, "a payload of {len} bytes does not fit a disk of {capacity} bytes after the header")
            }
        }
    }
}

/// Why the checkpoint disk failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskError {
    /// No virtio-mmio transport holds a block device.
    NoDevice { transports: usize },
    /// The block device is open already.
    Busy,
    /// The transport's header no longer reads as a virtio-mmio one.
    Transport(MmioError),
    /// The driver could not set the device up.
    Init(virtio_drivers::Error),
    /// The device is read-only.
    ReadOnly,
    /// The stream does not fit the disk.
    TooSmall { needed: u64, capacity: u64 },
    /// The device refused or failed a request (its status, as `virtio-drivers` names it); a
    /// flush has no sectors.
    Io { op: DiskOp, sectors: Range<u64>, error: virtio_drivers::Error },
    /// A request did not complete within [`REQUEST_TIMEOUT`]; the disk is unusable from now on.
    Timeout { op: DiskOp, sectors: Range<u64> },
    /// An earlier request timed out (see [`DiskError::Timeout`]).
    Broken,
    /// The header sector does not describe a stream.
    Header(HeaderError),
    /// The payload's CRC-32C differs from the header's: the stream is corrupt.
    Checksum { len: u64, stored: u32, computed: u32 },
    /// An earlier error ended this writer or reader.
    Aborted,
}

/// What a request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskOp {
    Read,
    Write,
    Flush,
}

impl fmt::Display for DiskOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DiskOp::Read => "read",
            DiskOp::Write => "write",
            DiskOp::Flush => "flush",
        })
    }
}

impl fmt::Display for DiskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskError::NoDevice { transports } => write!(
                f,
                "no virtio-blk device among {transports} virtio-mmio transports \
                 (QEMU: -drive if=none,file=IMAGE,format=raw,id=ckpt -device virtio-blk-device,drive=ckpt)"
            ),
            DiskError::Busy => write!(f, "the virtio-blk device is open already"),
            DiskError::Transport(e) => write!(f, "virtio-blk transport: {e}"),
            DiskError::Init(e) => write!(f, "virtio-blk set-up failed: {e}"),
            DiskError::ReadOnly => write!(f, "the virtio-blk device is read-only"),
            DiskError::TooSmall { needed, capacity } => {
                write!(f, "device too small: the stream needs {needed} bytes, the disk has {capacity}")
            }
            DiskError::Io { op: DiskOp::Flush, error, .. } => write!(f, "I/O error: flush failed: {error}"),
            DiskError::Io { op, sectors, error } => {
                write!(f, "I/O error: {op} of sectors {}..{} failed: {error}", sectors.start, sectors.end)
            }
            DiskError::Timeout { op, sectors } => write!(
                f,
                "I/O timeout: {op} of sectors {}..{} did not complete within {} ms; the disk is unusable",
                sectors.start,
                sectors.end,
                REQUEST_TIMEOUT.as_millis()
            ),
            DiskError::Broken => write!(f, "the disk is unusable after an I/O timeout"),
            DiskError::Header(e) => write!(f, "bad stream header: {e}"),
            DiskError::Checksum { len, stored, computed } => write!(
                f,
                "checksum mismatch: the {len}-byte payload has CRC-32C {computed:#010x}, the header says {stored:#010x}"
            ),
            DiskError::Aborted => write!(f, "an earlier error ended this stream"),
        }
    }
}

/// The stream header (sector 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StreamHeader {
    len: u64,
    crc: u32,
}

impl StreamHeader {
    /// Writes the header into a sector.
    fn encode(&self, sector: &mut [u8]) {
        sector.fill(0);
        sector[0..8].copy_from_slice(&STREAM_MAGIC);
        sector[8..12].copy_from_slice(&STREAM_VERSION.to_le_bytes());
        sector[12..16].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        sector[16..24].copy_from_slice(&self.len.to_le_bytes());
        sector[24..28].copy_from_slice(&self.crc.to_le_bytes());
        let own = crc32c(&sector[..HEADER_CHECKED]);
        sector[28..32].copy_from_slice(&own.to_le_bytes());
    }

    /// Reads a header sector of a disk of `capacity` bytes.
    fn decode(sector: &[u8], capacity: u64) -> Result<StreamHeader, HeaderError> {
        let u32_at = |at: usize| u32::from_le_bytes([sector[at], sector[at + 1], sector[at + 2], sector[at + 3]]);
        let mut magic = [0; 8];
        magic.copy_from_slice(&sector[0..8]);
        if magic != STREAM_MAGIC {
            if sector.iter().all(|b| *b == 0) {
                return Err(HeaderError::Blank);
            }
            return Err(HeaderError::BadMagic(magic));
        }
        let stored = u32_at(28);
        let computed = crc32c(&sector[..HEADER_CHECKED]);
        if stored != computed {
            return Err(HeaderError::Checksum { stored, computed });
        }
        let version = u32_at(8);
        if version != STREAM_VERSION {
            return Err(HeaderError::Version(version));
        }
        let sector_size = u32_at(12);
        if sector_size as usize != SECTOR_SIZE {
            return Err(HeaderError::SectorSize(sector_size));
        }
        let mut len = [0; 8];
        len.copy_from_slice(&sector[16..24]);
        let len = u64::from_le_bytes(len);
        if stream_bytes(len).is_none_or(|needed| needed > capacity) {
            return Err(HeaderError::PastEnd { len, capacity: capacity.saturating_sub(SECTOR_SIZE as u64) });
        }
        Ok(StreamHeader { len, crc: u32_at(24) })
    }
}

/// The bytes a stream with a `len`-byte payload takes on the disk: the header and the payload
/// padded to whole sectors.
fn stream_bytes(len: u64) -> Option<u64> {
    let sector = SECTOR_SIZE as u64;
    len.checked_next_multiple_of(sector)?.checked_add(HEADER_SECTORS * sector)
}

/// The buffer of one request's data: whole cache lines (and pages) of its own.
#[repr(C, align(4096))]
struct ChunkBuffer([u8; CHUNK_BYTES]);

/// A request's header, which the device reads; alone in its cache writeback granule (128 bytes
/// covers the Arm cores' CTR_EL0.CWG), so cache maintenance of it touches nothing else.
#[repr(C, align(128))]
struct RequestHeader(BlkReq);

/// A request's status byte, which the device writes; alone in its granule likewise.
#[repr(C, align(128))]
struct RequestStatus(BlkResp);

/// The DMA buffers of the one request in flight (the driver's rings come from [`HypHal`]).
struct RequestBuffers {
    chunk: Box<ChunkBuffer>,
    header: Box<RequestHeader>,
    status: Box<RequestStatus>,
}

impl RequestBuffers {
    fn new() -> RequestBuffers {
        // 64 KiB would not fit on a 64 KiB stack: allocate it zeroed in place.
        let layout = Layout::new::<ChunkBuffer>();
        // SAFETY: the layout's size is not zero.
        let ptr = unsafe { alloc_zeroed(layout) }.cast::<ChunkBuffer>();
        if ptr.is_null() {
            handle_alloc_error(layout);
        }
        RequestBuffers {
            // SAFETY: `ptr` is a live allocation of the global allocator with `ChunkBuffer`'s
            // layout, owned by nobody else, and its all-zero bytes are a valid `ChunkBuffer`.
            chunk: unsafe { Box::from_raw(ptr) },
            header: Box::new(RequestHeader(BlkReq::default())),
            status: Box::new(RequestStatus(BlkResp::default())),
        }
    }
}

/// The driver with its buffers and its transport's claim. Fields drop in order: the driver
/// (which takes the queue from the device) before the buffers and the claim.
struct Device {
    blk: VirtIOBlk<HypHal, MmioTransport<'static>>,
    buffers: RequestBuffers,
    _claim: TransportClaim,
}

impl Device {
    /// One request on `bytes` bytes of the chunk buffer at `sector`, polled until it completes.
    /// A flush has no data: `sector` and `bytes` are 0. It waits without a time limit
    /// (`virtio-drivers` has no non-blocking flush).
    fn transfer(&mut self, op: DiskOp, sector: u64, bytes: usize) -> Result<(), DiskError> {
        if op == DiskOp::Flush {
            return self.blk.flush().map_err(|error| DiskError::Io { op, sectors: 0..0, error });
        }
        debug_assert!(bytes > 0 && bytes % SECTOR_SIZE == 0 && bytes <= CHUNK_BYTES);
        let sectors = sector..sector + (bytes / SECTOR_SIZE) as u64;
        let io = |error| DiskError::Io { op, sectors: sectors.clone(), error };
        let RequestBuffers { chunk, header, status } = &mut self.buffers;
        let data = &mut chunk.0[..bytes];
        let block = sector as usize;
        let write = op == DiskOp::Write;
        let submitted = if write {
            // SAFETY: the header, data and status buffers are heap allocations this device owns;
            // nothing touches them until the request completes below, and if it never does, the
            // disk leaks the whole device (`CheckpointDisk::transfer`), so they stay valid for it.
            unsafe { self.blk.write_blocks_nb(block, &mut header.0, data, &mut status.0) }
        } else {
            // SAFETY: as for a write.
            unsafe { self.blk.read_blocks_nb(block, &mut header.0, data, &mut status.0) }
        };
        let token = submitted.map_err(io)?;
        let deadline = timer::now() + REQUEST_TIMEOUT;
        while self.blk.peek_used() != Some(token) {
            if timer::now() > deadline {
                return Err(DiskError::Timeout { op, sectors });
            }
            core::hint::spin_loop();
        }
        let completed = if write {
            // SAFETY: the same buffers as `write_blocks_nb` was given for this token.
            unsafe { self.blk.complete_write_blocks(token, &header.0, data, &mut status.0) }
        } else {
            // SAFETY: the same buffers as `read_blocks_nb` was given for this token.
            unsafe { self.blk.complete_read_blocks(token, &header.0, data, &mut status.0) }
        };
        completed.map_err(io)
    }
}

/// The first virtio-blk device, as one checkpoint stream (module docs: the layout).
pub struct CheckpointDisk {
    /// `None` once a request timed out (the device was leaked).
    device: Option<Device>,
    mmio: MmioDevice,
    capacity_sectors: u64,
    read_only: bool,
}

// The checkpoint code may keep the disk in a lock shared by the cores.
const _: () = {
    const fn is_send<T: Send>() {}
    is_send::<CheckpointDisk>();
};

impl fmt::Debug for CheckpointDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckpointDisk")
            .field("base", &format_args!("{:#x}", self.mmio.base))
            .field("capacity_sectors", &self.capacity_sectors)
            .field("read_only", &self.read_only)
            .field("broken", &self.device.is_none())
            .finish()
    }
}

impl CheckpointDisk {
    /// Opens the first (lowest-address) virtio-mmio block device that [`super::probe_mmio`]
    /// found. The device stays claimed until the disk is dropped.
    pub fn open() -> Result<CheckpointDisk, DiskError> {
        let (claim, transport) = super::claim(DeviceType::Block).map_err(|e| match e {
            ClaimError::NoDevice => DiskError::NoDevice { transports: super::transport_count() },
            ClaimError::Busy => DiskError::Busy,
            ClaimError::Header(e) => DiskError::Transport(e),
        })?;
        let blk = VirtIOBlk::<HypHal, _>::new(transport).map_err(DiskError::Init)?;
        let mmio = claim.device();
        let capacity_sectors = blk.capacity();
        let read_only = blk.readonly();
        let device = Device { blk, buffers: RequestBuffers::new(), _claim: claim };
        Ok(CheckpointDisk { device: Some(device), mmio, capacity_sectors, read_only })
    }

    /// The transport the device sits on.
    pub fn mmio(&self) -> MmioDevice {
        self.mmio
    }

    /// The disk's size in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_sectors * SECTOR_SIZE as u64
    }

    /// The largest payload a stream on this disk can hold.
    pub fn max_payload_bytes(&self) -> u64 {
        self.capacity_sectors.saturating_sub(HEADER_SECTORS) * SECTOR_SIZE as u64
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// A writer of a new stream, which replaces the disk's stream once it has written its first
    /// bytes (or finished).
    pub fn writer(&mut self) -> DiskWriter<'_> {
        DiskWriter {
            disk: self,
            len: 0,
            filled: 0,
            next_sector: HEADER_SECTORS,
            crc: 0,
            crc32c: crate::crc::crc32c(),
            started: false,
            failed: false,
        }
    }

    /// A reader of the disk's stream; fails if the header does not describe one.
    pub fn reader(&mut self) -> Result<DiskReader<'_>, DiskError> {
        self.transfer(DiskOp::Read, 0, SECTOR_SIZE)?;
        let capacity = self.capacity_bytes();
        let header = StreamHeader::decode(&self.chunk()?[..SECTOR_SIZE], capacity).map_err(DiskError::Header)?;
        let mut reader = DiskReader {
            disk: self,
            header,
            pos: 0,
            chunk_start: 0,
            chunk_len: 0,
            crc: 0,
            crc32c: crate::crc::crc32c(),
            failed: false,
        };
        if header.len == 0 {
            reader.verify()?;
        }
        Ok(reader)
    }

    /// The data buffer of requests.
    fn chunk(&mut self) -> Result<&mut [u8; CHUNK_BYTES], DiskError> {
        Ok(&mut self.device.as_mut().ok_or(DiskError::Broken)?.buffers.chunk.0)
    }

    /// One request on the chunk buffer; a timeout leaks the device (module docs).
    fn transfer(&mut self, op: DiskOp, sector: u64, bytes: usize) -> Result<(), DiskError> {
        let device = self.device.as_mut().ok_or(DiskError::Broken)?;
        let result = device.transfer(op, sector, bytes);
        if let Err(DiskError::Timeout { .. }) = result {
            // The device may still read or write the buffers: they must never be freed.
            core::mem::forget(self.device.take());
        }
        result
    }
}

/// Writes a stream from sector 1 on; [`finish`](DiskWriter::finish) writes its header. Dropped
/// unfinished after its first bytes, it leaves a disk without a stream.
pub struct DiskWriter<'d> {
    disk: &'d mut CheckpointDisk,
    /// Payload bytes accepted so far.
    len: u64,
    /// Bytes of the chunk buffer not written yet.
    filled: usize,
    /// Where the chunk buffer goes.
    next_sector: u64,
    /// CRC-32C of the payload so far.
    crc: u32,
    crc32c: Crc32c,
    /// The old header has been blanked.
    started: bool,
    failed: bool,
}

impl fmt::Debug for DiskWriter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskWriter").field("len", &self.len).field("failed", &self.failed).finish()
    }
}

impl DiskWriter<'_> {
    /// Appends `bytes` to the stream. After an error the writer only returns
    /// [`DiskError::Aborted`].
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), DiskError> {
        if self.failed {
            return Err(DiskError::Aborted);
        }
        let result = self.append(bytes);
        self.failed = result.is_err();
        result
    }

    /// Payload bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes what is buffered, flushes, then writes the header and flushes again.
    pub fn finish(mut self) -> Result<StreamSummary, DiskError> {
        if self.failed {
            return Err(DiskError::Aborted);
        }
        self.start()?;
        if self.filled > 0 {
            let padded = self.filled.next_multiple_of(SECTOR_SIZE);
            self.disk.chunk()?[self.filled..padded].fill(0);
            self.disk.transfer(DiskOp::Write, self.next_sector, padded)?;
        }
        self.disk.transfer(DiskOp::Flush, 0, 0)?;
        let summary = StreamSummary { len: self.len, crc: self.crc };
        StreamHeader { len: summary.len, crc: summary.crc }.encode(&mut self.disk.chunk()?[..SECTOR_SIZE]);
        self.disk.transfer(DiskOp::Write, 0, SECTOR_SIZE)?;
        self.disk.transfer(DiskOp::Flush, 0, 0)?;
        Ok(summary)
    }

    /// Before the first payload sector: the disk must be writable, and its old header goes.
    fn start(&mut self) -> Result<(), DiskError> {
        if self.started {
            return Ok(());
        }
        if self.disk.read_only {
            return Err(DiskError::ReadOnly);
        }
        self.disk.chunk()?[..SECTOR_SIZE].fill(0);
        self.disk.transfer(DiskOp::Write, 0, SECTOR_SIZE)?;
        self.started = true;
        Ok(())
    }

    fn append(&mut self, mut bytes: &[u8]) -> Result<(), DiskError> {
        if bytes.is_empty() {
            return Ok(());
        }
        let capacity = self.disk.capacity_bytes();
        let needed = self.len.checked_add(bytes.len() as u64).and_then(stream_bytes).unwrap_or(u64::MAX);
        if needed > capacity {
            return Err(DiskError::TooSmall { needed, capacity });
        }
        self.start()?;
        self.crc = self.crc32c.append(self.crc, bytes);
        self.len += bytes.len() as u64;
        while !bytes.is_empty() {
            let n = bytes.len().min(CHUNK_BYTES - self.filled);
            self.disk.chunk()?[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
            self.filled += n;
            bytes = &bytes[n..];
            if self.filled == CHUNK_BYTES {
                self.disk.transfer(DiskOp::Write, self.next_sector, CHUNK_BYTES)?;
                self.next_sector += CHUNK_SECTORS as u64;
                self.filled = 0;
            }
        }
        Ok(())
    }
}

/// Reads the disk's stream; the read that reaches its end checks the payload's CRC-32C.
pub struct DiskReader<'d> {
    disk: &'d mut CheckpointDisk,
    header: StreamHeader,
    /// Payload bytes delivered so far.
    pos: u64,
    /// The payload offset of the chunk buffer's first byte, and how many of its bytes are payload.
    chunk_start: u64,
    chunk_len: usize,
    /// CRC-32C of the payload so far.
    crc: u32,
    crc32c: Crc32c,
    failed: bool,
}

impl fmt::Debug for DiskReader<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskReader")
            .field("len", &self.header.len)
            .field("pos", &self.pos)
            .field("failed", &self.failed)
            .finish()
    }
}

impl DiskReader<'_> {
    /// The payload's length, from the header.
    pub fn len(&self) -> u64 {
        self.header.len
    }

    pub fn is_empty(&self) -> bool {
        self.header.len == 0
    }

    /// Payload bytes not read yet.
    pub fn remaining(&self) -> u64 {
        self.header.len - self.pos
    }

    /// The payload's CRC-32C, as the header gives it.
    pub fn expected_crc(&self) -> u32 {
        self.header.crc
    }

    /// Reads up to `buf.len()` payload bytes; `Ok(0)` at the end (the payload verified). The
    /// read that delivers the last byte returns [`DiskError::Checksum`] instead if the payload
    /// does not match the header's CRC. After an error the reader only returns
    /// [`DiskError::Aborted`].
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, DiskError> {
        if self.failed {
            return Err(DiskError::Aborted);
        }
        let result = self.read_some(buf);
        self.failed = result.is_err();
        result
    }

    /// Reads (and checks) whatever was not read yet: the stream's length and CRC, once verified.
    pub fn finish(mut self) -> Result<StreamSummary, DiskError> {
        let mut scratch = [0u8; 1024];
        while self.read(&mut scratch)? > 0 {}
        Ok(StreamSummary { len: self.header.len, crc: self.header.crc })
    }

    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, DiskError> {
        if buf.is_empty() || self.pos == self.header.len {
            return Ok(0);
        }
        if self.pos == self.chunk_start + self.chunk_len as u64 {
            // Chunks start at multiples of CHUNK_BYTES, so on a sector boundary.
            let left = self.header.len - self.pos;
            let bytes = left.min(CHUNK_BYTES as u64).next_multiple_of(SECTOR_SIZE as u64) as usize;
            let sector = HEADER_SECTORS + self.pos / SECTOR_SIZE as u64;
            self.disk.transfer(DiskOp::Read, sector, bytes)?;
            self.chunk_start = self.pos;
            self.chunk_len = left.min(bytes as u64) as usize;
        }
        let offset = (self.pos - self.chunk_start) as usize;
        let n = buf.len().min(self.chunk_len - offset);
        buf[..n].copy_from_slice(&self.disk.chunk()?[offset..offset + n]);
        self.crc = self.crc32c.append(self.crc, &buf[..n]);
        self.pos += n as u64;
        if self.pos == self.header.len {
            self.verify()?;
        }
        Ok(n)
    }

    /// Compares the payload's CRC-32C with the header's.
    fn verify(&mut self) -> Result<(), DiskError> {
        let computed = self.crc;
        if computed != self.header.crc {
            return Err(DiskError::Checksum { len: self.header.len, stored: self.header.crc, computed });
        }
        Ok(())
    }
}
