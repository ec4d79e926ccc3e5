// The EL2 exception vector table: 16 entries of 128 bytes, 2 KiB aligned (VBAR_EL2 points here).
//
// Assembled by `global_asm!` in src/exceptions.rs, which supplies the operands in braces:
//   {frame_size}: size of `ExceptionFrame`; {handler}: the Rust report function;
//   {stack_shift}: log2 of the stack size; {overflow}: the flag added to the kind on overflow.
//
// Every entry but the four "lower EL, AArch64" ones saves the interrupted state as an
// `ExceptionFrame` on the current stack and calls the Rust handler, which reports it and ends
// the run. The four lower-EL AArch64 entries are guest exits: they branch to the world switch
// (__el2_lower_a64_sync/irq/fiq/serror in src/asm/guest.S).

.macro save_frame_and_report, kind
    sub sp, sp, #{frame_size}
    stp x0, x1, [sp, #0]
    mov x1, #\kind
    b __el2_report
.endm

// Like save_frame_and_report, for exceptions taken on the hypervisor's own stack: first checks
// that the frame fits on the stack. Stack slots are aligned to twice the stack size, with the
// stack in the upper half, so an address in a stack has bit {stack_shift} set and one in the
// guard region below it has it clear. The check swaps x0 and sp arithmetically (the trick
// Linux uses) because no register is free yet. On overflow, SP moves to the top of the same
// core's stack (whose contents no longer matter: the run is ending) and the kind carries the
// overflow flag; x0 is lost.
.macro checked_save_frame_and_report, kind
    sub sp, sp, #{frame_size}
    add sp, sp, x0
    sub x0, sp, x0
    tbz x0, #{stack_shift}, 1f
    sub x0, sp, x0
    sub sp, sp, x0
    stp x0, x1, [sp, #0]
    mov x1, #\kind
    b __el2_report
1:  and x0, x0, #~((2 << {stack_shift}) - 1)
    add x0, x0, #(2 << {stack_shift})
    sub x0, x0, #{frame_size}
    mov sp, x0
    stp xzr, x1, [sp, #0]
    mov x1, #(\kind + {overflow})
    b __el2_report
.endm

.section .text.vectors, "ax"
.balign 2048
.global __el2_vectors
__el2_vectors:

// Current EL with SP_EL0 (kinds 0-3). EL2 code always runs on SP_EL2, so these mean a bug.
.balign 0x80
    save_frame_and_report 0
.balign 0x80
    save_frame_and_report 1
.balign 0x80
    save_frame_and_report 2
.balign 0x80
    save_frame_and_report 3

// Current EL with SP_EL2 (kinds 4-7): the hypervisor's own faults and interrupts.
.balign 0x80
    checked_save_frame_and_report 4
.balign 0x80
    checked_save_frame_and_report 5
.balign 0x80
    checked_save_frame_and_report 6
.balign 0x80
    checked_save_frame_and_report 7

// Lower EL using AArch64: guest exits, to the world switch (src/asm/guest.S).
.balign 0x80
    b __el2_lower_a64_sync
.balign 0x80
    b __el2_lower_a64_irq
.balign 0x80
    b __el2_lower_a64_fiq
.balign 0x80
    b __el2_lower_a64_serror

// Lower EL using AArch32 (kinds 12-15): no AArch32 guests are run (HCR_EL2.RW = 1).
.balign 0x80
    save_frame_and_report 12
.balign 0x80
    save_frame_and_report 13
.balign 0x80
    save_frame_and_report 14
.balign 0x80
    save_frame_and_report 15

.balign 0x80
// Common tail: x0 and x1 are saved at [sp]; x1 holds the kind. Saves x2-x30, the interrupted
// SP, ELR/SPSR/ESR/FAR_EL2 into the `ExceptionFrame` at sp and calls
// handler(frame = sp, kind = x1), which does not return.
__el2_report:
    stp x2, x3, [sp, #16]
    stp x4, x5, [sp, #32]
    stp x6, x7, [sp, #48]
    stp x8, x9, [sp, #64]
    stp x10, x11, [sp, #80]
    stp x12, x13, [sp, #96]
    stp x14, x15, [sp, #112]
    stp x16, x17, [sp, #128]
    stp x18, x19, [sp, #144]
    stp x20, x21, [sp, #160]
    stp x22, x23, [sp, #176]
    stp x24, x25, [sp, #192]
    stp x26, x27, [sp, #208]
    stp x28, x29, [sp, #224]
    add x2, sp, #{frame_size}
    stp x30, x2, [sp, #240]
    mrs x2, elr_el2
    mrs x3, spsr_el2
    stp x2, x3, [sp, #256]
    mrs x2, esr_el2
    mrs x3, far_el2
    stp x2, x3, [sp, #272]
    mov x0, sp
    bl {handler}
0:  wfe
    b 0b

// The four "lower EL, AArch64" targets, __el2_lower_a64_sync/irq/fiq/serror, are the world
// switch's guest-exit path, in src/asm/guest.S.
