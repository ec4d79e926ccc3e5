// memcpy, memmove and memset for the EL2 image: 16 bytes per load/store pair, 32 per loop.
// Assembled by `global_asm!` in src/mem.rs (which explains why they exist and checks them).
//
// Only general registers: the FP/SIMD registers may hold a guest's state (lazy FP/SIMD), and
// CPTR_EL2.TFP traps EL2's own use of them. Every access is naturally aligned (the wide paths
// run only when source and destination are 8-byte aligned, or become so together), so the
// functions also work with the MMU off, where memory is Device memory and an unaligned access
// faults. Scratch registers only (x0-x7); x0 is returned unchanged.

    .section .text.hv_mem, "ax"

// void *memcpy(void *dst (x0), const void *src (x1), size_t n (x2))
    .global memcpy
    .type   memcpy, %function
    .p2align 4
memcpy:
    mov     x3, x0
    orr     x4, x0, x1
    tst     x4, #7
    b.eq    .Lcpy_aligned
    eor     x4, x0, x1
    tst     x4, #7
    b.ne    .Lcpy_bytes             // never aligned together: byte by byte
    // Congruent: bytes up to the 8-byte boundary, then the wide copy.
.Lcpy_lead:
    cbz     x2, .Lcpy_done
    ldrb    w4, [x1], #1
    strb    w4, [x3], #1
    sub     x2, x2, #1
    tst     x3, #7
    b.ne    .Lcpy_lead
.Lcpy_aligned:
    subs    x2, x2, #32
    b.lo    .Lcpy_tail
.Lcpy_32:
    ldp     x6, x7, [x1, #16]
    ldp     x4, x5, [x1], #32
    subs    x2, x2, #32
    stp     x6, x7, [x3, #16]
    stp     x4, x5, [x3], #32
    b.hs    .Lcpy_32
.Lcpy_tail:
    // The low five bits of x2 are the bytes left (x2 = left - 32).
    tbz     x2, #4, 1f
    ldp     x4, x5, [x1], #16
    stp     x4, x5, [x3], #16
1:  tbz     x2, #3, 2f
    ldr     x4, [x1], #8
    str     x4, [x3], #8
2:  tbz     x2, #2, 3f
    ldr     w4, [x1], #4
    str     w4, [x3], #4
3:  tbz     x2, #1, 4f
    ldrh    w4, [x1], #2
    strh    w4, [x3], #2
4:  tbz     x2, #0, .Lcpy_done
    ldrb    w4, [x1]
    strb    w4, [x3]
.Lcpy_done:
    ret
.Lcpy_bytes:
    cbz     x2, .Lcpy_done
5:  ldrb    w4, [x1], #1
    subs    x2, x2, #1
    strb    w4, [x3], #1
    b.ne    5b
    ret
    .size   memcpy, . - memcpy

// void *memmove(void *dst (x0), const void *src (x1), size_t n (x2))
    .global memmove
    .type   memmove, %function
    .p2align 4
memmove:
    // dst - src >= n (unsigned): dst is below src or past the source's end, and a forward
    // copy never overwrites a byte before reading it (memcpy loads each 32-byte block before
    // storing it).
    sub     x4, x0, x1
    cmp     x4, x2
    b.hs    memcpy
    // dst is inside (src, src + n): copy backward from the ends.
    add     x1, x1, x2
    add     x3, x0, x2
    orr     x4, x1, x3
    tst     x4, #7
    b.eq    .Lmov_aligned
    eor     x4, x1, x3
    tst     x4, #7
    b.ne    .Lmov_bytes
.Lmov_lead:
    cbz     x2, .Lmov_done
    ldrb    w4, [x1, #-1]!
    strb    w4, [x3, #-1]!
    sub     x2, x2, #1
    tst     x3, #7
    b.ne    .Lmov_lead
.Lmov_aligned:
    subs    x2, x2, #32
    b.lo    .Lmov_tail
.Lmov_32:
    ldp     x6, x7, [x1, #-16]
    ldp     x4, x5, [x1, #-32]!
    subs    x2, x2, #32
    stp     x6, x7, [x3, #-16]
    stp     x4, x5, [x3, #-32]!
    b.hs    .Lmov_32
.Lmov_tail:
    tbz     x2, #4, 1f
    ldp     x4, x5, [x1, #-16]!
    stp     x4, x5, [x3, #-16]!
1:  tbz     x2, #3, 2f
    ldr     x4, [x1, #-8]!
    str     x4, [x3, #-8]!
2:  tbz     x2, #2, 3f
    ldr     w4, [x1, #-4]!
    str     w4, [x3, #-4]!
3:  tbz     x2, #1, 4f
    ldrh    w4, [x1, #-2]!
    strh    w4, [x3, #-2]!
4:  tbz     x2, #0, .Lmov_done
    ldrb    w4, [x1, #-1]
    strb    w4, [x3, #-1]
.Lmov_done:
    ret
.Lmov_bytes:
    cbz     x2, .Lmov_done
5:  ldrb    w4, [x1, #-1]!
    subs    x2, x2, #1
    strb    w4, [x3, #-1]!
    b.ne    5b
    ret
    .size   memmove, . - memmove

// void *memset(void *dst (x0), int c (w1), size_t n (x2))
    .global memset
    .type   memset, %function
    .p2align 4
memset:
    mov     x3, x0
    and     x1, x1, #0xff
    orr     x1, x1, x1, lsl #8
    orr     x1, x1, x1, lsl #16
    orr     x1, x1, x1, lsl #32
    tst     x3, #7
    b.eq    .Lset_aligned
.Lset_lead:
    cbz     x2, .Lset_done
    strb    w1, [x3], #1
    sub     x2, x2, #1
    tst     x3, #7
    b.ne    .Lset_lead
.Lset_aligned:
    subs    x2, x2, #32
    b.lo    .Lset_tail
.Lset_32:
    subs    x2, x2, #32
    stp     x1, x1, [x3, #16]
    stp     x1, x1, [x3], #32
    b.hs    .Lset_32
.Lset_tail:
    tbz     x2, #4, 1f
    stp     x1, x1, [x3], #16
1:  tbz     x2, #3, 2f
    str     x1, [x3], #8
2:  tbz     x2, #2, 3f
    str     w1, [x3], #4
3:  tbz     x2, #1, 4f
    strh    w1, [x3], #2
4:  tbz     x2, #0, .Lset_done
    strb    w1, [x3]
.Lset_done:
    ret
    .size   memset, . - memset
