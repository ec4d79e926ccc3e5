// The world switch: entering a vCPU and coming back from it, and the EL1 context of a vCPU.
//
// Assembled by `global_asm!` in src/guest.rs, which supplies the operands in braces:
//   {regs_pc}: offset of `GuestRegs::pc` (ELR_EL2; SPSR_EL2 follows it)
//   {host_frame}: bytes of the host frame __hv_guest_enter pushes
//   {el1_vregs}: offset of `El1State::vregs` (Q0-Q31)
//   {el1_fpcr}: offset of `El1State::fpcr` (FPSR follows it)
//
// __hv_guest_enter(x0 = &mut GuestRegs) -> x0 = exit kind (0 sync, 1 IRQ, 2 FIQ, 3 SError)
//   pushes the host frame [&GuestRegs, x18, x19..x30] on the current (EL2) stack, loads the
//   guest's x0-x30, ELR_EL2 and SPSR_EL2 and ERETs. SP_EL2 is left pointing at the host frame,
//   so the exit path finds the GuestRegs pointer there without a free register.
// __el2_lower_a64_sync/irq/fiq/serror: the four "lower EL, AArch64" vector targets
//   (vectors.S branches here): push the guest's x0/x1, note the kind, save the guest's x2-x30,
//   x0/x1, ELR_EL2 and SPSR_EL2 into the GuestRegs, pop the host frame and return from
//   __hv_guest_enter.
//   The sync entry first answers two exits itself, counting each in {fast_exits}[TPIDR_EL2]:
//   HV_NULL (an HVC, EC 0x16, with w0 = {hv_null}): x0 = 0 and straight back to the guest
//   (ELR_EL2 already points past the HVC); and a read of the emulated UART's flag
//   register, whose value the model fixes (`vdev::uart::FR_VALUE`): the value into the target
//   register and ELR_EL2 past the load. A Linux console polls that register before every
//   character it prints. Nothing else is touched, so each is as if the access had not
//   trapped: whatever the hypervisor must look at meanwhile (a kick, its timer, the end of the
//   run) is a physical IRQ, which the guest takes to EL2 right after the ERET.
// __hv_el1_save(x0 = &mut El1State) / __hv_el1_restore(x0 = &El1State)
//   the EL1/EL0 system registers and the virtual timer of a vCPU (see El1State for the order).
//   Save also disables the virtual timer (CNTV_CTL_EL0 = 0), so that a vCPU that is not loaded
//   cannot raise PPI 27 on this core.
// __hv_fp_save(x0 = &mut El1State) / __hv_fp_restore(x0 = &El1State)
//   its FP/SIMD registers (FPCR, FPSR, Q0-Q31), switched lazily: restored when the vCPU first
//   uses FP/SIMD after it was loaded (CPTR_EL2.TFP traps that use), saved when it is put away
//   if it was restored.
//
// TPIDR_EL2 keeps the core index (entry.S) and is not touched here. The hypervisor itself never
// uses FP/SIMD (softfloat target), so the guest's Q registers stay live in hardware between
// __hv_fp_restore and __hv_fp_save.

.arch_extension fp
.arch_extension simd

.section .text.guest, "ax"

.global __hv_guest_enter
__hv_guest_enter:
    sub sp, sp, #{host_frame}
    stp x0, x18, [sp, #0]
    stp x19, x20, [sp, #16]
    stp x21, x22, [sp, #32]
    stp x23, x24, [sp, #48]
    stp x25, x26, [sp, #64]
    stp x27, x28, [sp, #80]
    stp x29, x30, [sp, #96]
    ldp x1, x2, [x0, #{regs_pc}]
    msr elr_el2, x1
    msr spsr_el2, x2
    ldp x2, x3, [x0, #16]
    ldp x4, x5, [x0, #32]
    ldp x6, x7, [x0, #48]
    ldp x8, x9, [x0, #64]
    ldp x10, x11, [x0, #80]
    ldp x12, x13, [x0, #96]
    ldp x14, x15, [x0, #112]
    ldp x16, x17, [x0, #128]
    ldp x18, x19, [x0, #144]
    ldp x20, x21, [x0, #160]
    ldp x22, x23, [x0, #176]
    ldp x24, x25, [x0, #192]
    ldp x26, x27, [x0, #208]
    ldp x28, x29, [x0, #224]
    ldr x30, [x0, #240]
    ldp x0, x1, [x0, #0]
    eret
    // Not reached; stops straight-line speculation past the ERET.
    dsb nsh
    isb

.global __el2_lower_a64_sync
__el2_lower_a64_sync:
    stp x0, x1, [sp, #-16]!
    // The exception class first: any other exit is on its way after two compares.
    mrs x1, esr_el2
    ubfx x1, x1, #26, #6
    cmp x1, #0x16
    b.eq 8f
    cmp x1, #0x24
    b.ne 3f
    // A read of the UART's flag register (a data abort, EC 0x24, with a valid syndrome: ISV;
    // not sign-extending, not a write, not a stage-1 walk; a byte, halfword or word), at IPA
    // {uart_base_mb} MiB + {uart_fr}: its value is a constant of the model ({uart_fr_value}).
    mrs x1, esr_el2
    tbz x1, #24, 3f
    tbnz x1, #21, 3f
    tbnz x1, #6, 3f
    tbnz x1, #7, 3f
    tbz x1, #23, 7f
    tbnz x1, #22, 3f
7:  mrs x0, hpfar_el2
    cmp x0, #{uart_base_mb}, lsl #12
    b.ne 3f
    mrs x0, far_el2
    and x0, x0, #0xfff
    cmp x0, #{uart_fr}
    b.ne 3f
    // The target register (SRT): x0 and x1 in their saved slots, x2-x30 through the table
    // below (two instructions per register), x31 (XZR) nothing.
    ubfx x1, x1, #16, #5
    cmp x1, #1
    b.hi 2f
    mov x0, #{uart_fr_value}
    str x0, [sp, x1, lsl #3]
    b 4f
2:  cmp x1, #31
    b.eq 4f
    adr x0, 6f
    add x0, x0, x1, lsl #3
    br x0
4:  // Past the load.
    mrs x0, elr_el2
    add x0, x0, #4
    msr elr_el2, x0
5:  // Count the exit answered here, and back to the guest with x0/x1 from their slots.
    mrs x1, tpidr_el2
    adrp x0, {fast_exits}
    add x0, x0, :lo12:{fast_exits}
    add x0, x0, x1, lsl #3
    ldr x1, [x0]
    add x1, x1, #1
    str x1, [x0]
    ldp x0, x1, [sp], #16
    eret
    // Not reached; stops straight-line speculation past the ERET.
    dsb nsh
    isb
    // x0 and x1 (never taken: their slots are written above), then x2-x30.
6:  udf #0
    udf #0
    udf #0
    udf #0
.irp n, 2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30
    mov x\n, #{uart_fr_value}
    b 4b
.endr

.global __el2_lower_a64_irq
__el2_lower_a64_irq:
    stp x0, x1, [sp, #-16]!
    mov x1, #1
    b __hv_guest_exit

.global __el2_lower_a64_fiq
__el2_lower_a64_fiq:
    stp x0, x1, [sp, #-16]!
    mov x1, #2
    b __hv_guest_exit

.global __el2_lower_a64_serror
__el2_lower_a64_serror:
    stp x0, x1, [sp, #-16]!
    mov x1, #3
    b __hv_guest_exit

// (__el2_lower_a64_sync's last part, falling through into __hv_guest_exit.)
8:  // An HVC: HV_NULL answers 0 (in the saved x0), then it is counted and back it goes.
    mov w1, #({hv_null} & 0xffff)
    movk w1, #({hv_null} >> 16), lsl #16
    cmp w0, w1
    b.ne 3f
    str xzr, [sp]
    b 5b
3:  // The general exit (kind 0, a synchronous exception), straight on.
    mov x1, #0

// sp: [guest x0, guest x1], then the host frame [&GuestRegs, x18, x19..x30]; x1 = kind.
__hv_guest_exit:
    ldr x0, [sp, #16]
    stp x2, x3, [x0, #16]
    stp x4, x5, [x0, #32]
    stp x6, x7, [x0, #48]
    stp x8, x9, [x0, #64]
    stp x10, x11, [x0, #80]
    stp x12, x13, [x0, #96]
    stp x14, x15, [x0, #112]
    stp x16, x17, [x0, #128]
    stp x18, x19, [x0, #144]
    stp x20, x21, [x0, #160]
    stp x22, x23, [x0, #176]
    stp x24, x25, [x0, #192]
    stp x26, x27, [x0, #208]
    stp x28, x29, [x0, #224]
    str x30, [x0, #240]
    ldp x2, x3, [sp], #16
    stp x2, x3, [x0, #0]
    mrs x2, elr_el2
    mrs x3, spsr_el2
    stp x2, x3, [x0, #{regs_pc}]
    mov x0, x1
    ldr x18, [sp, #8]
    ldp x19, x20, [sp, #16]
    ldp x21, x22, [sp, #32]
    ldp x23, x24, [sp, #48]
    ldp x25, x26, [sp, #64]
    ldp x27, x28, [sp, #80]
    ldp x29, x30, [sp, #96]
    add sp, sp, #{host_frame}
    ret

// El1State: its first 26 registers in this order (the FP/SIMD half is __hv_fp_save's).
.global __hv_el1_save
__hv_el1_save:
    mrs x1, sp_el0
    mrs x2, sp_el1
    stp x1, x2, [x0, #0]
    mrs x1, elr_el1
    mrs x2, spsr_el1
    stp x1, x2, [x0, #16]
    mrs x1, sctlr_el1
    mrs x2, cpacr_el1
    stp x1, x2, [x0, #32]
    mrs x1, ttbr0_el1
    mrs x2, ttbr1_el1
    stp x1, x2, [x0, #48]
    mrs x1, tcr_el1
    mrs x2, mair_el1
    stp x1, x2, [x0, #64]
    mrs x1, amair_el1
    mrs x2, vbar_el1
    stp x1, x2, [x0, #80]
    mrs x1, contextidr_el1
    mrs x2, tpidr_el0
    stp x1, x2, [x0, #96]
    mrs x1, tpidrro_el0
    mrs x2, tpidr_el1
    stp x1, x2, [x0, #112]
    mrs x1, esr_el1
    mrs x2, far_el1
    stp x1, x2, [x0, #128]
    mrs x1, afsr0_el1
    mrs x2, afsr1_el1
    stp x1, x2, [x0, #144]
    mrs x1, par_el1
    mrs x2, cntkctl_el1
    stp x1, x2, [x0, #160]
    mrs x1, csselr_el1
    mrs x2, mdscr_el1
    stp x1, x2, [x0, #176]
    mrs x1, cntv_cval_el0
    mrs x2, cntv_ctl_el0
    stp x1, x2, [x0, #192]
    msr cntv_ctl_el0, xzr
    isb
    ret

.global __hv_el1_restore
__hv_el1_restore:
    ldp x1, x2, [x0, #0]
    msr sp_el0, x1
    msr sp_el1, x2
    ldp x1, x2, [x0, #16]
    msr elr_el1, x1
    msr spsr_el1, x2
    ldp x1, x2, [x0, #32]
    msr sctlr_el1, x1
    msr cpacr_el1, x2
    ldp x1, x2, [x0, #48]
    msr ttbr0_el1, x1
    msr ttbr1_el1, x2
    ldp x1, x2, [x0, #64]
    msr tcr_el1, x1
    msr mair_el1, x2
    ldp x1, x2, [x0, #80]
    msr amair_el1, x1
    msr vbar_el1, x2
    ldp x1, x2, [x0, #96]
    msr contextidr_el1, x1
    msr tpidr_el0, x2
    ldp x1, x2, [x0, #112]
    msr tpidrro_el0, x1
    msr tpidr_el1, x2
    ldp x1, x2, [x0, #128]
    msr esr_el1, x1
    msr far_el1, x2
    ldp x1, x2, [x0, #144]
    msr afsr0_el1, x1
    msr afsr1_el1, x2
    ldp x1, x2, [x0, #160]
    msr par_el1, x1
    msr cntkctl_el1, x2
    ldp x1, x2, [x0, #176]
    msr csselr_el1, x1
    msr mdscr_el1, x2
    // The compare value first, then the control (which may enable the timer).
    ldp x1, x2, [x0, #192]
    msr cntv_cval_el0, x1
    msr cntv_ctl_el0, x2
    isb
    ret

// The FP/SIMD half of El1State: FPCR and FPSR at {el1_fpcr}, Q0-Q31 at {el1_vregs}. Only with
// CPTR_EL2.TFP clear (it traps EL2's own FP/SIMD accesses too).
.global __hv_fp_save
__hv_fp_save:
    mrs x1, fpcr
    mrs x2, fpsr
    stp x1, x2, [x0, #{el1_fpcr}]
    add x1, x0, #{el1_vregs}
    stp q0, q1, [x1, #0]
    stp q2, q3, [x1, #32]
    stp q4, q5, [x1, #64]
    stp q6, q7, [x1, #96]
    stp q8, q9, [x1, #128]
    stp q10, q11, [x1, #160]
    stp q12, q13, [x1, #192]
    stp q14, q15, [x1, #224]
    stp q16, q17, [x1, #256]
    stp q18, q19, [x1, #288]
    stp q20, q21, [x1, #320]
    stp q22, q23, [x1, #352]
    stp q24, q25, [x1, #384]
    stp q26, q27, [x1, #416]
    stp q28, q29, [x1, #448]
    stp q30, q31, [x1, #480]
    ret

.global __hv_fp_restore
__hv_fp_restore:
    ldp x1, x2, [x0, #{el1_fpcr}]
    msr fpcr, x1
    msr fpsr, x2
    add x1, x0, #{el1_vregs}
    ldp q0, q1, [x1, #0]
    ldp q2, q3, [x1, #32]
    ldp q4, q5, [x1, #64]
    ldp q6, q7, [x1, #96]
    ldp q8, q9, [x1, #128]
    ldp q10, q11, [x1, #160]
    ldp q12, q13, [x1, #192]
    ldp q14, q15, [x1, #224]
    ldp q16, q17, [x1, #256]
    ldp q18, q19, [x1, #288]
    ldp q20, q21, [x1, #320]
    ldp q22, q23, [x1, #352]
    ldp q24, q25, [x1, #384]
    ldp q26, q27, [x1, #416]
    ldp q28, q29, [x1, #448]
    ldp q30, q31, [x1, #480]
    ret
