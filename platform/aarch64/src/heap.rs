//! The hypervisor's heap: a buddy allocator over the linker script's `.heap` region.

use core::sync::atomic::{AtomicBool, Ordering};

use buddy_system_allocator::LockedHeap;

#[global_allocator]
static HEAP: LockedHeap<32> = LockedHeap::empty();

static INITIALISED: AtomicBool = AtomicBool::new(false);

extern "C" {
    // Linker-script symbols (image.ld): only their addresses are used.
    static __heap_start: u8;
    static __heap_end: u8;
}

/// Gives the `.heap` region to the allocator; only the first call does anything.
pub(crate) fn init() {
    if INITIALISED.swap(true, Ordering::AcqRel) {
        return;
    }
    let start = (&raw const __heap_start) as usize;
    let end = (&raw const __heap_end) as usize;
    // SAFETY: `[start, end)` is the `.heap` section of the linker script: inside the image, mapped
    // read-write by both the boot map and the final map, and used by nothing but this allocator;
    // the `INITIALISED` flag makes this the only time it is handed over.
    unsafe { HEAP.lock().init(start, end - start) };
}
