// EL2 entry points of the hypervisor: the boot core's `_start` and the secondaries'
// `__hv_secondary_entry`, and the two MMU routines they share.
//
// Assembled by `global_asm!` in src/entry.rs, which supplies the operands in braces:
//   {max_cores}, {slot_lo}, {slot_hi}: layout constants (the stack slot size is slot_hi:slot_lo)
//   {hcr}, {mair}, {tcr}, {sctlr}: register values from src/mmu.rs and src/entry.rs
//   {boot_table}: the static boot translation table
//   (the vector table, __el2_vectors, is in src/asm/vectors.S)
//
// Register use before Rust runs: x19 keeps the boot argument, x20 the core index; x9-x12 are
// scratch.

.macro adr_l, reg, sym
    adrp \reg, \sym
    add \reg, \reg, :lo12:\sym
.endm

.macro mov_imm32, reg, lo, hi
    movz \reg, #\lo
    movk \reg, #\hi, lsl #16
.endm

// Sets up the calling core, whose dense core index is in \idx (a register, not x9-x12):
// HCR_EL2, VBAR_EL2, TPIDR_EL2 = index, SP = top of the core's stack slot, and the MMU on with
// the boot map. Uses no memory before the MMU is on, so it needs no cache maintenance.
.macro core_setup, idx
    msr daifset, #0xf
    mov_imm32 x9, ({hcr}&0xffff), ({hcr}>>16)
    msr hcr_el2, x9
    adr_l x9, __el2_vectors
    msr vbar_el2, x9
    msr tpidr_el2, \idx
    adr_l x9, __stacks_start
    add x10, \idx, #1
    mov_imm32 x11, {slot_lo}, {slot_hi}
    madd x9, x10, x11, x9
    mov sp, x9
    isb
    adr_l x0, {boot_table}
    bl __hv_enable_mmu
.endm

.section .text.boot, "ax"
.global _start
_start:
    // The boot core. QEMU enters here at EL2 with the MMU off; x0 may carry the DTB address.
    mov x19, x0
    mrs x9, CurrentEL
    ubfx x9, x9, #2, #2
    cmp x9, #2
    b.ne .Lwrong_el
    mov x20, #0
    core_setup x20
    // Zero .bss (16-byte aligned and sized by the linker script), with the caches on.
    adr_l x9, __bss_start
    adr_l x10, __bss_end
0:  cmp x9, x10
    b.hs 1f
    stp xzr, xzr, [x9], #16
    b 0b
1:  mov x0, x19
    bl __platform_aarch64_boot
    b .Lhang

.Lwrong_el:
    // Not entered at EL2 (say, QEMU without virtualization=on): nothing can be printed yet, so
    // leave through semihosting SYS_EXIT with code 4 and the parameter block below.
    mov x0, #0x18
    adr x1, .Lwrong_el_block
    hlt #0xf000
.Lhang:
    wfe
    b .Lhang

.balign 8
.Lwrong_el_block:
    .quad 0x20026
    .quad 4

.section .text.boot.secondary, "ax"
.global __hv_secondary_entry
__hv_secondary_entry:
    // A secondary core, started by PSCI CPU_ON at EL2 with the MMU off; x0 = its core index
    // (the context id the boot core passed). An index without a stack slot parks the core.
    mov x20, x0
    cmp x20, #{max_cores}
    b.hs .Lhang
    core_setup x20
    mov x0, x20
    bl __platform_aarch64_secondary
    b .Lhang

.section .text.mmu, "ax"
// Turns the EL2 stage-1 MMU and the caches on with the translation table whose physical address
// is in x0. Leaf routine: uses x9-x11 only, no stack, no memory.
.global __hv_enable_mmu
__hv_enable_mmu:
    mov_imm32 x9, ({mair}&0xffff), ({mair}>>16)
    msr mair_el2, x9
    // TCR_EL2.PS = the CPU's physical address size, at most 48 bits (encoding 5): the 4 KiB
    // granule descriptors used here cannot carry 52-bit addresses.
    mrs x10, id_aa64mmfr0_el1
    and x10, x10, #0xf
    mov x11, #5
    cmp x10, x11
    csel x10, x10, x11, ls
    mov_imm32 x9, ({tcr}&0xffff), ({tcr}>>16)
    orr x9, x9, x10, lsl #16
    msr tcr_el2, x9
    msr ttbr0_el2, x0
    isb
    tlbi alle2
    ic iallu
    dsb nsh
    isb
    mov_imm32 x9, ({sctlr}&0xffff), ({sctlr}>>16)
    msr sctlr_el2, x9
    isb
    ret

// Moves the calling core from one identity map to another (root physical address in x0): the
// MMU goes off for the few instructions that change TTBR0_EL2 and flush the TLB, so no TLB
// entry of the old map can meet one of the new (the maps may differ in block sizes and
// permissions, which a live switch would not allow). The code runs identity-mapped in both, and
// touches no memory while the MMU is off. Leaf routine: uses x9-x10 only.
.global __hv_switch_ttbr
__hv_switch_ttbr:
    dsb ish
    mrs x9, sctlr_el2
    bic x10, x9, #1
    msr sctlr_el2, x10
    isb
    msr ttbr0_el2, x0
    isb
    tlbi alle2
    dsb nsh
    isb
    msr sctlr_el2, x9
    isb
    ret
