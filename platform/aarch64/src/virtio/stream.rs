//! The migration stream: a byte pipe to another hypervisor instance over the first virtio
//! console device (QEMU: `-device virtio-serial-device -device virtconsole,chardev=ID` with a
//! `-chardev socket` on loopback, see docs/migration.md *Transport*).
//!
//! The driver is this module's own, on `virtio-drivers`' virtqueues: the crate's console driver
//! hands received bytes out one at a time, too slow for a stream of hundreds of megabytes. Only
//! the console's port 0 is used (`MULTIPORT` is not negotiated), which QEMU gives to the
//! `virtconsole` device. Writes go out in requests of up to [`SEND_CHUNK`] bytes; reads come in
//! through [`RX_BUFFERS`] buffers of [`RX_BUFFER`] bytes kept queued for the device, and are
//! polled, with a deadline.
//!
//! QEMU drops what a console port writes when its socket cannot take it at once (it throttles
//! only non-console ports), and tells the driver nothing when the peer goes away: the migration
//! protocol therefore keeps its own flow control (at most a window of unconfirmed bytes in
//! flight) and its own deadlines (docs/migration.md, *Transport*).

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;

use vcpu_runtime::{Instant, Nanos};
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::mmio::{MmioError, MmioTransport};
use virtio_drivers::transport::{DeviceType, Transport};

use super::{ClaimError, HypHal, MmioDevice, TransportClaim};
use crate::timer;

/// The most bytes one write request carries.
pub const SEND_CHUNK: usize = 64 * 1024;
/// Receive buffers kept queued for the device, and their size.
pub const RX_BUFFERS: usize = 4;
pub const RX_BUFFER: usize = 16 * 1024;

/// Port 0's queues.
const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;
/// Descriptors per queue (a power of two; QEMU's virtio-serial offers more).
const QUEUE_SIZE: usize = 4;

bitflags::bitflags! {
    /// The feature bits this driver knows; it accepts only `VERSION_1` (modern transports).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Features: u64 {
        const VERSION_1 = 1 << 32;
    }
}

/// Why the stream failed.
#[derive(Debug)]
pub enum StreamError {
    /// No virtio console on the board (none was attached to QEMU).
    NoDevice {
        transports: usize,
    },
    /// Another driver holds the console.
    Busy,
    Transport(MmioError),
    /// The device refused to start or a request failed.
    Device(virtio_drivers::Error),

    /// Nothing (or not enough) arrived before the deadline.
    Timeout {
        wanted: usize,
        got: usize,
    },
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamError::NoDevice { transports } => write!(
                f,
                "no virtio console among the {transports} virtio-mmio transports (attach one: \
                 -device virtio-serial-device -device virtconsole,chardev=ID)"
            ),
            StreamError::Busy => f.write_str("the virtio console is held by another driver"),
            StreamError::Transport(e) => write!(f, "virtio console transport: {e:?}"),
            StreamError::Device(e) => write!(f, "virtio console: {e}"),
            StreamError::Timeout { wanted, got } => {
                write!(f, "the stream went quiet: {got} of {wanted} bytes arrived before the deadline")
            }
        }
    }
}

/// One receive buffer, queued for the device or holding bytes not read yet.
struct RxBuffer {
    data: Box<[u8; RX_BUFFER]>,
    /// The device's token while it is queued.
    token: Option<u16>,
    /// Bytes the device wrote, and how many of them were read.
    len: usize,
    read: usize,
}

/// The open migration stream.
pub struct MigrationStream {
    transport: MmioTransport<'static>,
    rxq: VirtQueue<HypHal, QUEUE_SIZE>,
    txq: VirtQueue<HypHal, QUEUE_SIZE>,
    /// In the order they were queued, which is the order the device uses them (one port, FIFO).
    rx: [RxBuffer; RX_BUFFERS],
    /// The buffer to read from next.
    rx_next: usize,
    mmio: MmioDevice,
    /// Bytes written and not sent yet (less than [`SEND_CHUNK`]).
    tx: Vec<u8>,
    sent: u64,
    received: u64,
    // Dropped after the transport (declaration order), which must let go of the registers first.
    _claim: TransportClaim,
}

impl MigrationStream {
    /// Opens the first virtio console that no driver holds.
    pub fn open() -> Result<MigrationStream, StreamError> {
        let (claim, mut transport) = super::claim(DeviceType::Console).map_err(|e| match e {
            ClaimError::NoDevice => StreamError::NoDevice { transports: super::transport_count() },
            ClaimError::Busy => StreamError::Busy,
            ClaimError::Header(e) => StreamError::Transport(e),
        })?;
        transport.begin_init(Features::VERSION_1);
        let rxq = VirtQueue::new(&mut transport, RX_QUEUE, false, false).map_err(StreamError::Device)?;
        let txq = VirtQueue::new(&mut transport, TX_QUEUE, false, false).map_err(StreamError::Device)?;
        transport.finish_init();
        let rx = core::array::from_fn(|_| RxBuffer { data: Box::new([0; RX_BUFFER]), token: None, len: 0, read: 0 });
        let mmio = claim.device();
        let mut stream = MigrationStream {
            transport,
            rxq,
            txq,
            rx,
            rx_next: 0,
            mmio,
            tx: Vec::with_capacity(SEND_CHUNK),
            sent: 0,
            received: 0,
            _claim: claim,
        };
        for k in 0..RX_BUFFERS {
            stream.queue_rx(k)?;
        }
        Ok(stream)
    }

    /// Gives receive buffer `k` (empty) to the device.
    fn queue_rx(&mut self, k: usize) -> Result<(), StreamError> {
        let buf = &mut self.rx[k];
        buf.len = 0;
        buf.read = 0;
        // SAFETY: the buffer is heap memory owned by this stream, which never touches it while it
        // is queued (its token is set until `pop_used` gives it back) and outlives the queue.
        let token = unsafe { self.rxq.add(&[], &mut [buf.data.as_mut_slice()]) }.map_err(StreamError::Device)?;
        buf.token = Some(token);
        if self.rxq.should_notify() {
            self.transport.notify(RX_QUEUE);
        }
        Ok(())
    }

    /// The transport the console sits on.
    pub fn mmio(&self) -> MmioDevice {
        self.mmio
    }

    /// Bytes sent and read so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.sent, self.received)
    }

    /// Writes `bytes`: whole requests of [`SEND_CHUNK`] bytes go out now (waiting while QEMU's
    /// socket is full), the rest waits for more or for [`MigrationStream::flush`].
    pub fn write(&mut self, mut bytes: &[u8]) -> Result<(), StreamError> {
        while !bytes.is_empty() {
            let take = (SEND_CHUNK - self.tx.len()).min(bytes.len());
            self.tx.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.tx.len() == SEND_CHUNK {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// Sends what [`MigrationStream::write`] holds back.
    pub fn flush(&mut self) -> Result<(), StreamError> {
        if !self.tx.is_empty() {
            self.txq.add_notify_wait_pop(&[&self.tx], &mut [], &mut self.transport).map_err(StreamError::Device)?;
            self.sent += self.tx.len() as u64;
            self.tx.clear();
        }
        Ok(())
    }

    /// Whether bytes have arrived that were not read yet.
    pub fn has_data(&mut self) -> Result<bool, StreamError> {
        let b = &self.rx[self.rx_next];
        Ok(match b.token {
            Some(token) => self.rxq.peek_used() == Some(token),
            None => b.read < b.len,
        })
    }

    /// Reads what has arrived into `buf`, without waiting; returns how many bytes.
    pub fn read_available(&mut self, buf: &mut [u8]) -> Result<usize, StreamError> {
        let mut n = 0;
        while n < buf.len() {
            let k = self.rx_next;
            if let Some(token) = self.rx[k].token {
                // Still the device's: done only if it is next on the used ring.
                if self.rxq.peek_used() != Some(token) {
                    break;
                }
                let data = &mut self.rx[k].data;
                // SAFETY: the same buffer that `queue_rx` added with this token.
                let len = unsafe { self.rxq.pop_used(token, &[], &mut [data.as_mut_slice()]) }
                    .map_err(StreamError::Device)?;
                self.rx[k].token = None;
                self.rx[k].len = (len as usize).min(RX_BUFFER);
                self.rx[k].read = 0;
            }
            let b = &mut self.rx[k];
            let take = (b.len - b.read).min(buf.len() - n);
            buf[n..n + take].copy_from_slice(&b.data[b.read..b.read + take]);
            b.read += take;
            n += take;
            if b.read == b.len {
                self.queue_rx(k)?;
                self.rx_next = (k + 1) % RX_BUFFERS;
            }
        }
        self.received += n as u64;
        Ok(n)
    }

    /// Fills `buf` completely, waiting until `deadline` at the latest.
    pub fn read_exact(&mut self, buf: &mut [u8], deadline: Instant) -> Result<(), StreamError> {
        let mut got = 0;
        while got < buf.len() {
            let n = self.read_available(&mut buf[got..])?;
            got += n;
            if n == 0 {
                if timer::now() >= deadline {
                    return Err(StreamError::Timeout { wanted: buf.len(), got });
                }
                core::hint::spin_loop();
            }
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes, each wait for more bounded by `quiet` (the stream may be long;
    /// only a silence is an error).
    pub fn read_exact_quiet(&mut self, buf: &mut [u8], quiet: Nanos) -> Result<(), StreamError> {
        let mut got = 0;
        let mut deadline = timer::now() + quiet;
        while got < buf.len() {
            let n = self.read_available(&mut buf[got..])?;
            got += n;
            if n > 0 {
                deadline = timer::now() + quiet;
            } else if timer::now() >= deadline {
                return Err(StreamError::Timeout { wanted: buf.len(), got });
            } else {
                core::hint::spin_loop();
            }
        }
        Ok(())
    }
}
