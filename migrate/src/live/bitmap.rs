//! Dirty-page bitmaps: one bit per guest page, 64 pages a word.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
// The runtime's `sync` shim: `core`'s atomics, loom's under `cfg(loom)` (`loom-tests` models
// the marking against the taking).
use vcpu_runtime::sync::atomic::{AtomicU64, Ordering};

/// Words for `pages` bits.
fn words_for(pages: u64) -> usize {
    usize::try_from(pages.div_ceil(64)).unwrap_or(usize::MAX)
}

/// The word and the bit of `page`.
fn locate(page: u64) -> (usize, u64) {
    ((page / 64) as usize, 1 << (page % 64))
}

/// The dirty pages of one guest, owned by one core (or behind the caller's lock): `set` as
/// pages are written, [`take_runs`](DirtyBitmap::take_runs) to send them. Page numbers count
/// from the start of guest RAM (`(ipa - ram_base) / PAGE_SIZE`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirtyBitmap {
    words: Vec<u64>,
    pages: u64,
    /// Bits set.
    count: u64,
}

impl DirtyBitmap {
    /// `pages` pages, none dirty.
    pub fn new(pages: u64) -> DirtyBitmap {
        DirtyBitmap { words: vec![0; words_for(pages)], pages, count: 0 }
    }

    /// Pages the bitmap covers.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Marks `page` dirty. A page outside the bitmap is ignored and `false` returned.
    pub fn set(&mut self, page: u64) -> bool {
        if page >= self.pages {
            return false;
        }
        let (w, bit) = locate(page);
        if self.words[w] & bit == 0 {
            self.words[w] |= bit;
            self.count += 1;
        }
        true
    }

    /// Whether `page` is dirty (`false` outside the bitmap).
    pub fn test(&self, page: u64) -> bool {
        let (w, bit) = locate(page);
        page < self.pages && self.words[w] & bit != 0
    }

    /// Dirty pages.
    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Makes every page clean.
    pub fn clear(&mut self) {
        self.words.fill(0);
        self.count = 0;
    }

    /// The dirty pages as runs `(first_page, count)` of consecutive pages, in increasing
    /// order, each made clean as it is returned (pages of runs not yet returned stay dirty if
    /// the iterator is dropped early).
    pub fn take_runs(&mut self) -> TakeRuns<'_> {
        TakeRuns { map: self, word: 0 }
    }
}

/// The runs of [`DirtyBitmap::take_runs`].
#[derive(Debug)]
pub struct TakeRuns<'a> {
    map: &'a mut DirtyBitmap,
    /// The first word that may still hold a set bit.
    word: usize,
}

impl Iterator for TakeRuns<'_> {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        let words = &mut self.map.words;
        while words.get(self.word).is_some_and(|&w| w == 0) {
            self.word += 1;
        }
        let mut i = self.word;
        let mut bit = words.get(i)?.trailing_zeros();
        let first = i as u64 * 64 + u64::from(bit);
        let mut count = 0u64;
        loop {
            // The set bits from `bit` up, cleared.
            let ones = (words[i] >> bit).trailing_ones();
            words[i] &= !((u64::MAX >> (64 - ones)) << bit);
            count += u64::from(ones);
            if bit + ones < 64 {
                break;
            }
            // The run reaches the word's last bit: it may go on in the next word.
            i += 1;
            bit = 0;
            if words.get(i).is_none_or(|&w| w & 1 == 0) {
                break;
            }
        }
        self.word = i;
        self.map.count -= count;
        Some((first, count))
    }
}

/// The dirty pages of one guest, marked from any core through `&self` (from stage-2 write-fault
/// handling) while one core takes them: each word is an [`AtomicU64`], marked with `fetch_or`
/// and taken with `swap(0)`, so a page marked while the bitmap is being taken is either in
/// this take or stays marked for the next, never lost.
///
/// The bitmap orders only its own bits. Making the page contents consistent with it is the
/// platform's part: write-protect the taken pages again in stage 2 (and invalidate the TLBs)
/// before copying them, so that a guest write after the copy faults and marks the page again.
#[derive(Debug)]
pub struct AtomicDirtyBitmap {
    words: Box<[AtomicU64]>,
    pages: u64,
}

impl AtomicDirtyBitmap {
    /// `pages` pages, none dirty.
    pub fn new(pages: u64) -> AtomicDirtyBitmap {
        AtomicDirtyBitmap { words: (0..words_for(pages)).map(|_| AtomicU64::new(0)).collect(), pages }
    }

    /// Pages the bitmap covers.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Marks `page` dirty. A page outside the bitmap is ignored and `false` returned. A page
    /// that is marked already costs a load, not a write to the shared word.
    pub fn mark(&self, page: u64) -> bool {
        if page >= self.pages {
            return false;
        }
        let (w, bit) = locate(page);
        let word = &self.words[w];
        if word.load(Ordering::Relaxed) & bit == 0 {
            word.fetch_or(bit, Ordering::AcqRel);
        }
        true
    }

    /// Whether `page` is marked (`false` outside the bitmap).
    pub fn is_marked(&self, page: u64) -> bool {
        let (w, bit) = locate(page);
        page < self.pages && self.words[w].load(Ordering::Acquire) & bit != 0
    }

    /// Marked pages (a snapshot: other cores may be marking meanwhile).
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.load(Ordering::Relaxed).count_ones())).sum()
    }

    /// Calls `f(first_page, count)` for each run of marked pages, in increasing order, clearing
    /// them; returns the pages taken. A run that crosses a word boundary is reported whole
    /// unless a core marks or the taker clears in between (then it may come as two runs).
    pub fn take_runs(&self, mut f: impl FnMut(u64, u64)) -> u64 {
        let mut open: Option<(u64, u64)> = None;
        let mut taken = 0;
        for (i, word) in self.words.iter().enumerate() {
            // A clean word is only read: no write to a line other cores may be marking.
            let mut w = if word.load(Ordering::Relaxed) == 0 { 0 } else { word.swap(0, Ordering::AcqRel) };
            taken += u64::from(w.count_ones());
            let mut at = 0u32;
            while w != 0 {
                let zeros = w.trailing_zeros();
                if zeros > 0 {
                    if let Some((first, count)) = open.take() {
                        f(first, count);
                    }
                    w >>= zeros;
                    at += zeros;
                }
                let ones = w.trailing_ones();
                open = Some(match open {
                    Some((first, count)) => (first, count + u64::from(ones)),
                    None => (i as u64 * 64 + u64::from(at), u64::from(ones)),
                });
                at += ones;
                w = w.checked_shr(ones).unwrap_or(0);
            }
            // A run still open goes on only if it reached the word's last bit.
            if at < 64 {
                if let Some((first, count)) = open.take() {
                    f(first, count);
                }
            }
        }
        if let Some((first, count)) = open {
            f(first, count);
        }
        taken
    }
}
