//! RAM above the image: handed out once, in regions that never overlap, so that a region's
//! owner may make slices of it.
//!
//! The free RAM between the end of the image and the end of RAM (the final EL2 map covers it as
//! normal write-back memory) is where QEMU's loader puts the scenario manifest and where guest
//! RAM comes from. [`claim`] hands a range of it out once: the registry of claimed ranges
//! refuses any overlap, with the image or with an earlier claim. A [`RamRegion`] is the only
//! way to reach its bytes, so a `&mut` slice of it cannot alias anything.

use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

use crate::sync::Mutex;

use crate::mmu;

/// The ranges claimed so far (never given back).
static CLAIMED: Mutex<Vec<Range<usize>>> = Mutex::new(Vec::new());

/// Why a range of RAM cannot be claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimError {
    /// The final EL2 map is not built yet (RAM is not known).
    NoMap,
    /// Empty or not page aligned.
    BadRange(Range<usize>),
    /// Not inside the RAM above the image.
    OutsideFreeRam { range: Range<usize>, free: Range<usize> },
    /// Overlaps a range claimed before.
    Taken { range: Range<usize>, by: Range<usize> },
}

impl fmt::Display for ClaimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClaimError::NoMap => write!(f, "the EL2 map is not built yet"),
            ClaimError::BadRange(r) => write!(f, "{:#x}..{:#x} is empty or not page aligned", r.start, r.end),
            ClaimError::OutsideFreeRam { range, free } => write!(
                f,
                "{:#x}..{:#x} is not inside the free RAM {:#x}..{:#x} above the image",
                range.start, range.end, free.start, free.end
            ),
            ClaimError::Taken { range, by } => write!(
                f,
                "{:#x}..{:#x} overlaps {:#x}..{:#x}, claimed before",
                range.start, range.end, by.start, by.end
            ),
        }
    }
}

/// RAM between the end of the image and the end of RAM, once the final map is built.
pub fn free_ram() -> Option<Range<usize>> {
    let ram = mmu::ram_range()?;
    Some(mmu::image_layout().end.max(ram.start)..ram.end)
}

/// A claimed region of RAM: mapped read-write, owned by this value alone.
#[derive(Debug)]
pub struct RamRegion {
    range: Range<usize>,
}

/// Claims `range` (page aligned, inside [`free_ram`], overlapping no earlier claim).
pub fn claim(range: Range<usize>) -> Result<RamRegion, ClaimError> {
    let free = free_ram().ok_or(ClaimError::NoMap)?;
    let page = crate::layout::PAGE_SIZE;
    if range.start >= range.end || range.start % page != 0 || range.end % page != 0 {
        return Err(ClaimError::BadRange(range));
    }
    if range.start < free.start || range.end > free.end {
        return Err(ClaimError::OutsideFreeRam { range, free });
    }
    let mut claimed = CLAIMED.lock();
    if let Some(by) = claimed.iter().find(|c| c.start < range.end && range.start < c.end) {
        return Err(ClaimError::Taken { range, by: by.clone() });
    }
    claimed.push(range.clone());
    Ok(RamRegion { range })
}

impl RamRegion {
    /// Its physical (and, in the identity map, virtual) addresses.
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }

    pub fn len(&self) -> usize {
        self.range.len()
    }

    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    /// The region's bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the range is inside RAM above the image, which the final map covers as normal
        // read-write memory (checked by `claim` against `mmu::ram_range`), and the claim
        // registry makes this value the only way to reach it; the shared borrow of `self`
        // keeps `as_mut_slice` from running meanwhile.
        unsafe { core::slice::from_raw_parts(self.range.start as *const u8, self.range.len()) }
    }

    /// The region's bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; the exclusive borrow of `self` makes this the only live
        // reference to the region.
        unsafe { core::slice::from_raw_parts_mut(self.range.start as *mut u8, self.range.len()) }
    }

    /// Gives the region up for good as a read-only slice (say, a blob the firmware loaded):
    /// nothing can write it any more.
    pub fn into_static(self) -> &'static [u8] {
        // SAFETY: as in `as_slice`; consuming the only handle means no `&mut` to the region can
        // ever be made again, so a shared `'static` slice of it stays valid for the run.
        unsafe { core::slice::from_raw_parts(self.range.start as *const u8, self.range.len()) }
    }

    /// Copies `out.len()` bytes from `offset` into `out` while a guest may be writing them (live
    /// migration's pre-copy), a word at a time with volatile loads: a page written during the copy
    /// comes out torn, which the dirty log makes harmless (the page is marked and sent again).
    /// Returns false (and copies nothing) when the range is not inside the region or not 8-byte
    /// aligned.
    pub fn snapshot(&self, offset: usize, out: &mut [u8]) -> bool {
        let Some(end) = offset.checked_add(out.len()) else { return false };
        if end > self.range.len() || offset % 8 != 0 || out.len() % 8 != 0 {
            return false;
        }
        let base = (self.range.start + offset) as *const u64;
        for (i, chunk) in out.chunks_exact_mut(8).enumerate() {
            // SAFETY: `base + i` is an aligned word inside this region (checked above), which is
            // mapped RAM (`as_slice`); a volatile load does not assume the guest leaves it alone.
            let word = unsafe { core::ptr::read_volatile(base.add(i)) };
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        true
    }

    /// Cleans and invalidates the region's data cache lines to the point of coherency, and
    /// invalidates the instruction caches: what was written through the cacheable EL2 map is
    /// then seen by a guest that runs with its MMU and caches off (a vCPU at reset).
    pub fn clean_to_poc(&self) {
        let ctr: u64;
        // SAFETY: reading CTR_EL0 has no side effect.
        unsafe { core::arch::asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack, preserves_flags)) };
        let line = 4usize << ((ctr >> 16) & 0xf);
        let mut addr = self.range.start & !(line - 1);
        while addr < self.range.end {
            // SAFETY: data cache maintenance of an address this region owns (mapped RAM); clean
            // and invalidate does not change the memory's contents as seen by any observer.
            unsafe { core::arch::asm!("dc civac, {}", in(reg) addr, options(nostack, preserves_flags)) };
            addr += line;
        }
        // SAFETY: barriers and instruction cache invalidation change no memory contents.
        unsafe { core::arch::asm!("dsb ish", "ic ialluis", "dsb ish", "isb", options(nostack, preserves_flags)) };
    }

    /// Splits off the first `len` bytes (page aligned) as a region of its own.
    pub fn split_off_front(&mut self, len: usize) -> Option<RamRegion> {
        if len % crate::layout::PAGE_SIZE != 0 || len > self.range.len() {
            return None;
        }
        let front = self.range.start..self.range.start + len;
        self.range.start += len;
        Some(RamRegion { range: front })
    }
}
