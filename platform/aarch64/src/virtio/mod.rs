//! The hypervisor's own virtio-mmio devices, driver side, on top of the `virtio-drivers` crate:
//! the transports the board's device tree names ([`probe_mmio`]), the [`HypHal`] that gives
//! the drivers DMA memory, and the checkpoint disk ([`disk`]), a byte stream over virtio-blk.
//!
//! **Transports.** QEMU's virt board has 32 virtio-mmio transports (`0x0a00_0000`, `0x200`
//! bytes each); most are empty (device ID 0). The board reads their `reg` from the device tree
//! and hands them to [`probe_mmio`] once the final EL2 map is on. Each region is checked before
//! anything reads it (outside RAM and the console, no overlap with another transport, mapped as
//! device memory at its own address: asked of the MMU with `AT S1E2R`), then its header is read
//! (magic, version, device ID). A registry keeps every transport; [`claim`] hands one out at a
//! time, so two drivers never hold the same registers.
//!
//! **DMA.** The EL2 map is an identity map, so a buffer's physical address is its address.
//! [`HypHal`] allocates DMA pages from the hypervisor's heap (normal write-back memory). QEMU's
//! devices are cache coherent; for hardware that is not, `share` cleans the buffer to the point
//! of coherency and `unshare` cleans and invalidates what the device wrote (cheap, and correct
//! for buffers that own whole cache lines, which the disk's are). The virtqueue rings would also
//! need a non-cacheable mapping there; that is not done (see docs/platform.md).
//!
//! Completions are polled: no interrupt is routed (the SPIs 48..79 stay disabled).

pub mod disk;
pub mod stream;

use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;
use core::ptr::NonNull;

use crate::sync::Mutex;
use virtio_drivers::transport::mmio::{MmioError, MmioTransport, VirtIOHeader};
use virtio_drivers::transport::{DeviceType, DeviceTypeError, Transport};
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

use crate::{console, mmu};

pub use disk::{CheckpointDisk, DiskError, DiskOp, DiskReader, DiskWriter, HeaderError, StreamSummary};
pub use stream::{MigrationStream, StreamError};

/// The virtio-mmio register header: the config space starts here.
const MMIO_HEADER_SIZE: usize = 0x100;

/// The `virtio-drivers` HAL of the EL2 hypervisor: heap pages for DMA, identity addresses.
#[derive(Debug)]
pub struct HypHal;

/// The layout of `pages` DMA pages.
fn dma_layout(pages: usize) -> Option<Layout> {
    Layout::from_size_align(pages.checked_mul(PAGE_SIZE)?, PAGE_SIZE).ok()
}

// SAFETY: `dma_alloc` returns zeroed, page-aligned heap memory that nothing else references
// until `dma_dealloc` gives it back; physical addresses equal virtual ones in the EL2 identity
// map (heap and RAM buffers alike), so the address handed to the device is the buffer's.
unsafe impl Hal for HypHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let Some(layout) = dma_layout(pages).filter(|l| l.size() > 0) else {
            return (0, NonNull::dangling());
        };
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        match NonNull::new(ptr) {
            // 0 is what `virtio-drivers` takes for a failed allocation.
            Some(ptr) => (ptr.as_ptr() as PhysAddr, ptr),
            None => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        let Some(layout) = dma_layout(pages) else { return -1 };
        // SAFETY: the caller promises `vaddr` came from `dma_alloc` with the same `pages`, so with
        // this layout, and was not freed yet.
        unsafe { dealloc(vaddr.as_ptr(), layout) };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        // Identity map. Only the PCI transport asks, and the hypervisor has none.
        NonNull::new(paddr as usize as *mut u8).expect("virtio: MMIO at physical address 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        let range = byte_range(buffer);
        // Whatever the direction: the device must read what the CPU wrote, and no dirty line may
        // later be evicted over what the device writes.
        clean_dcache(range.clone());
        range.start as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, buffer: NonNull<[u8]>, direction: BufferDirection) {
        if direction != BufferDirection::DriverToDevice {
            // Drop any line fetched (speculatively) while the device was writing.
            clean_invalidate_dcache(byte_range(buffer));
        }
    }
}

/// The addresses of a buffer.
fn byte_range(buffer: NonNull<[u8]>) -> Range<usize> {
    let start = buffer.as_ptr() as *mut u8 as usize;
    start..start + buffer.len()
}

/// The smallest data cache line of this core, in bytes (CTR_EL0.DminLine).
fn dcache_line() -> usize {
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effect.
    unsafe { core::arch::asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack, preserves_flags)) };
    4 << ((ctr >> 16) & 0xf)
}

/// `dc cvac` over `range`, then `dsb sy`: what the CPU wrote there reaches the point of coherency
/// before any later access (such as the notify register write) is seen by a device.
fn clean_dcache(range: Range<usize>) {
    let line = dcache_line();
    let mut addr = range.start & !(line - 1);
    while addr < range.end {
        // SAFETY: cleaning a data cache line writes dirty data back; it changes the contents of
        // memory as no observer sees it (every observer already sees the cached value).
        unsafe { core::arch::asm!("dc cvac, {}", in(reg) addr, options(nostack, preserves_flags)) };
        addr += line;
    }
    // SAFETY: a barrier touches no memory; it orders and completes the maintenance above.
    unsafe { core::arch::asm!("dsb sy", options(nostack, preserves_flags)) };
}

/// `dc civac` over `range`, then `dsb sy`: later reads of it come from memory, as a device left it.
fn clean_invalidate_dcache(range: Range<usize>) {
    let line = dcache_line();
    let mut addr = range.start & !(line - 1);
    while addr < range.end {
        // SAFETY: clean and invalidate writes a dirty line back before dropping it, so no write of
        // any observer is lost (unlike `dc ivac`).
        unsafe { core::arch::asm!("dc civac, {}", in(reg) addr, options(nostack, preserves_flags)) };
        addr += line;
    }
    // SAFETY: a barrier touches no memory; it completes the maintenance above.
    unsafe { core::arch::asm!("dsb sy", options(nostack, preserves_flags)) };
}

/// Whether `addr` is mapped in this core's EL2 stage-1 map at the same physical address, as
/// device memory (any Device-* type), according to the MMU itself (`AT S1E2R`).
fn is_device_mapped(addr: usize) -> bool {
    let par: u64;
    // SAFETY: `AT S1E2R` walks the EL2 tables for a read of `addr` without accessing `addr`, and
    // reports in PAR_EL1. PAR_EL1 belongs to a guest's EL1 context when one is loaded on this
    // core, so its value is saved and restored within this block; EL2 runs with interrupts
    // masked, so nothing runs in between.
    unsafe {
        core::arch::asm!(
            "mrs {saved}, par_el1",
            "at s1e2r, {addr}",
            "isb",
            "mrs {par}, par_el1",
            "msr par_el1, {saved}",
            saved = out(reg) _,
            addr = in(reg) addr,
            par = out(reg) par,
            options(nostack, preserves_flags),
        )
    };
    let translated = par & 1 == 0;
    // PAR_EL1.ATTR (bits 63:56) uses MAIR's encoding: 0b0000_xx00 is Device-nGnRnE..GRE.
    let device = (par >> 56) & 0xf0 == 0;
    let same_page = par & 0x0000_ffff_ffff_f000 == (addr & !0xfff) as u64;
    translated && device && same_page
}

/// What [`probe_mmio`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDevice {
    /// The transport's registers.
    pub base: usize,
    pub size: usize,
    /// The virtio device ID (2: block, 3: console, 19: socket); 0 for an empty transport.
    pub device_id: u32,
}

impl MmioDevice {
    /// The device's kind, for messages.
    pub fn kind(&self) -> &'static str {
        match self.device_id {
            0 => "empty transport",
            1 => "network card",
            2 => "block device",
            3 => "console",
            4 => "entropy source",
            16 => "GPU",
            18 => "input device",
            19 => "socket device",
            _ => "device",
        }
    }
}

/// One transport of the registry.
#[derive(Debug)]
struct Slot {
    device: MmioDevice,
    /// A driver holds its registers.
    claimed: bool,
}

/// Every transport [`probe_mmio`] accepted, empty ones included, in address order.
static TRANSPORTS: Mutex<Vec<Slot>> = Mutex::new(Vec::new());
/// Whether [`probe_mmio`] ran (it runs once).
static PROBED: spin::Once<usize> = spin::Once::new();

/// Why the virtio-mmio transports could not be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VirtioError {
    /// The final EL2 map is not built yet.
    NoMap,
    /// [`probe_mmio`] was called twice.
    AlreadyProbed,
    /// A region is smaller than the register header, or not 4-byte aligned.
    BadRegion(Range<usize>),
    /// A region overlaps RAM, the console UART or another transport.
    Overlaps { region: Range<usize>, what: &'static str, other: Range<usize> },
    /// A region is not mapped as device memory at its own address.
    NotDeviceMapped(Range<usize>),
    /// The header is not a virtio-mmio one (magic, version).
    BadHeader { base: usize, error: MmioError },
}

impl fmt::Display for VirtioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VirtioError::NoMap => write!(f, "the EL2 map is not built yet"),
            VirtioError::AlreadyProbed => write!(f, "the virtio-mmio transports were probed already"),
            VirtioError::BadRegion(r) => write!(
                f,
                "virtio-mmio region {:#x}..{:#x} is not 4-byte aligned or smaller than its {MMIO_HEADER_SIZE:#x}-byte header",
                r.start, r.end
            ),
            VirtioError::Overlaps { region, what, other } => write!(
                f,
                "virtio-mmio region {:#x}..{:#x} overlaps {what} {:#x}..{:#x}",
                region.start, region.end, other.start, other.end
            ),
            VirtioError::NotDeviceMapped(r) => {
                write!(f, "virtio-mmio region {:#x}..{:#x} is not mapped as device memory at EL2", r.start, r.end)
            }
            VirtioError::BadHeader { base, error } => write!(f, "virtio-mmio transport at {base:#x}: {error}"),
        }
    }
}

/// Takes the virtio-mmio transports of the board (their `reg` from the device tree): checks each
/// region, reads its header and keeps it in the registry, empty ones included; returns the
/// devices found (device ID ≠ 0), in address order. Runs once, after the final EL2 map is on.
pub fn probe_mmio(regions: &[Range<usize>]) -> Result<Vec<MmioDevice>, VirtioError> {
    if !mmu::is_initialised() {
        return Err(VirtioError::NoMap);
    }
    let mut first = false;
    PROBED.call_once(|| {
        first = true;
        regions.len()
    });
    if !first {
        return Err(VirtioError::AlreadyProbed);
    }
    let mut sorted: Vec<Range<usize>> = regions.to_vec();
    sorted.sort_by_key(|r| r.start);
    let ram = mmu::ram_range().ok_or(VirtioError::NoMap)?;
    let console = console::mmio_region();
    let overlap = |a: &Range<usize>, b: &Range<usize>| a.start < b.end && b.start < a.end;
    for (i, r) in sorted.iter().enumerate() {
        if r.len() < MMIO_HEADER_SIZE || r.start % 4 != 0 {
            return Err(VirtioError::BadRegion(r.clone()));
        }
        if overlap(r, &ram) {
            return Err(VirtioError::Overlaps { region: r.clone(), what: "RAM", other: ram.clone() });
        }
        if let Some(uart) = console.as_ref().filter(|u| overlap(r, u)) {
            return Err(VirtioError::Overlaps { region: r.clone(), what: "the console UART", other: uart.clone() });
        }
        if let Some(next) = sorted.get(i + 1).filter(|n| overlap(r, n)) {
            return Err(VirtioError::Overlaps {
                region: r.clone(),
                what: "the virtio-mmio region",
                other: next.clone(),
            });
        }
        if !is_device_mapped(r.start) || !is_device_mapped(r.end - 1) {
            return Err(VirtioError::NotDeviceMapped(r.clone()));
        }
    }

    let mut slots = TRANSPORTS.lock();
    for r in sorted {
        let device_id = match open_transport(&r) {
            Ok(transport) => transport.device_type() as u32,
            Err(MmioError::InvalidDeviceID(DeviceTypeError::InvalidDeviceType(id))) => id,
            Err(error) => return Err(VirtioError::BadHeader { base: r.start, error }),
        };
        slots.push(Slot { device: MmioDevice { base: r.start, size: r.len(), device_id }, claimed: false });
    }
    Ok(slots.iter().map(|s| s.device).filter(|d| d.device_id != 0).collect())
}

/// A transport's registers. Called with the registry's lock held, for a transport no driver has
/// claimed: that makes the result the only pointer to them (until the lock is released, or for
/// as long as the claim [`claim`] then records lasts).
fn open_transport(region: &Range<usize>) -> Result<MmioTransport<'static>, MmioError> {
    let header = NonNull::new(region.start as *mut VirtIOHeader).ok_or(MmioError::MmioRegionTooSmall)?;
    // SAFETY: `probe_mmio` checked that the region is a 4-byte aligned range of at least the
    // header's size, outside RAM and the console, mapped as device memory at its own address in
    // the EL2 map (which is never unmapped), and overlapping no other transport; the caller holds
    // the registry's lock and the transport is unclaimed, so no other pointer to it is live. The
    // device tree names it a virtio-mmio transport, and `new` checks the magic before anything
    // else.
    unsafe { MmioTransport::new(header, region.len()) }
}

/// The devices [`probe_mmio`] found (device ID ≠ 0), claimed or not, in address order.
pub fn devices() -> Vec<MmioDevice> {
    TRANSPORTS.lock().iter().map(|s| s.device).filter(|d| d.device_id != 0).collect()
}

/// How many transports [`probe_mmio`] took, empty ones included (0 before it ran).
pub fn transport_count() -> usize {
    PROBED.get().copied().unwrap_or(0)
}

/// One transport, held by a driver: nobody else can claim it until this is dropped. Its holder
/// drops the transport [`claim`] gave with it first (the registers are unique to it only while
/// the claim lasts).
#[derive(Debug)]
pub(crate) struct TransportClaim {
    device: MmioDevice,
}

impl TransportClaim {
    /// The transport's device.
    pub(crate) fn device(&self) -> MmioDevice {
        self.device
    }
}

impl Drop for TransportClaim {
    fn drop(&mut self) {
        if let Some(slot) = TRANSPORTS.lock().iter_mut().find(|s| s.device.base == self.device.base) {
            slot.claimed = false;
        }
    }
}

/// Why [`claim`] gave nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClaimError {
    /// No transport holds a device of this type.
    NoDevice,
    /// Every such device is claimed by a driver already.
    Busy,
    /// The transport's header no longer reads as at probe time.
    Header(MmioError),
}

/// Claims the first (lowest-address) transport holding a device of `device_type` that no driver
/// holds, and opens its registers. The caller must drop the transport before the claim.
pub(crate) fn claim(device_type: DeviceType) -> Result<(TransportClaim, MmioTransport<'static>), ClaimError> {
    let mut slots = TRANSPORTS.lock();
    let mut of_type = slots.iter_mut().filter(|s| s.device.device_id == device_type as u32).peekable();
    if of_type.peek().is_none() {
        return Err(ClaimError::NoDevice);
    }
    let slot = of_type.find(|s| !s.claimed).ok_or(ClaimError::Busy)?;
    let device = slot.device;
    // The lock is held and the slot unclaimed: no other pointer to these registers exists.
    let transport = open_transport(&(device.base..device.base + device.size)).map_err(ClaimError::Header)?;
    slot.claimed = true;
    Ok((TransportClaim { device }, transport))
}
