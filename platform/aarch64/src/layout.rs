// The hypervisor image's fixed layout: how many cores it can run on, their stacks, its heap.
//
// This file is the single source of these numbers: `build.rs` includes it to write the linker
// script (`image.ld`), and the library includes it as `platform_aarch64::layout`.

/// The most cores the image can bring up: one stack slot each.
pub const MAX_CORES: usize = 8;

/// Size of one core's stack.
pub const STACK_SIZE: usize = 64 * 1024;

/// An unmapped guard region below each core's stack, as large as the stack: an overflow
/// faults instead of writing over the stack below it. (It costs no memory that anything else
/// could use: it is part of the image's `.stacks` section, left out of the final map.)
pub const STACK_GUARD_SIZE: usize = STACK_SIZE;

/// One core's stack slot: its guard region, then its stack. Core `k`'s stack top (its initial
/// SP) is `stacks_start + (k + 1) * STACK_SLOT_SIZE`. Slots are aligned to their size, so a
/// stack address has bit `log2(STACK_SIZE)` set and a guard address has it clear: the vector
/// entry code tells an overflow from that one bit, without a scratch register.
pub const STACK_SLOT_SIZE: usize = STACK_GUARD_SIZE + STACK_SIZE;

/// Size of the hypervisor's own heap (page tables, runtime structures). Guest memory does not
/// come from here.
pub const HEAP_SIZE: usize = 16 * 1024 * 1024;

/// Granule of the EL2 stage-1 map; the image's sections are aligned to it.
pub const PAGE_SIZE: usize = 4096;
