//! Multiboot2 entry: the header GRUB looks for, the 32-bit entry point, and
//! the switch to long mode with hv's boot page tables.
//!
//! GRUB enters `_start` in 32-bit protected mode, paging off, with the
//! multiboot2 magic in EAX and the boot information's physical address in EBX
//! (Multiboot2 spec 3.3). We identity-map the first 4 GiB with 2 MiB pages
//! (the top GiB, where the local APIC and other MMIO live, uncached), enable
//! PAE, long mode and paging (SDM Vol. 3A 10.8.5), load a 64-bit GDT and call
//! `hv_main(magic, info)`.

core::arch::global_asm!(
    r#"
    .section .multiboot2, "a"
    .balign 8
mb2_header_start:
    .long 0xe85250d6
    .long 0
    .long mb2_header_end - mb2_header_start
    .long 0x100000000 - (0xe85250d6 + (mb2_header_end - mb2_header_start))
    .balign 8
    .short 0
    .short 0
    .long 8
mb2_header_end:

    .section .bss.boot, "aw", @nobits
    .balign 4096
boot_pml4:
    .skip 4096
    .global boot_pdpt
boot_pdpt:
    .skip 4096
    .global boot_pd
boot_pd:
    .skip 4096 * 4
    /* A page table for the 2 MiB around the stack's guard page (see
       memory::guard_boot_stack), then the guard page, then the stack. */
    .global boot_guard_pt
boot_guard_pt:
    .skip 4096
    .global boot_stack_guard
boot_stack_guard:
    .skip 4096
    .global boot_stack_bottom
boot_stack_bottom:
    .skip 262144
    .global boot_stack_top
boot_stack_top:

    .section .rodata.boot, "a"
    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00af9b000000ffff
    .quad 0x00cf93000000ffff
boot_gdt_end:
boot_gdt_pointer:
    .short boot_gdt_end - boot_gdt - 1
    .quad boot_gdt

    .section .text.boot, "ax"
    .code32
    .global _start
_start:
    cli
    cld
    movl $boot_stack_top, %esp
    movl %eax, %edi
    movl %ebx, %esi

    /* PML4[0] -> PDPT; PDPT[0..4] -> the four page directories. */
    movl $boot_pdpt, %eax
    orl $3, %eax
    movl %eax, boot_pml4
    xorl %ecx, %ecx
1:
    movl %ecx, %eax
    shll $12, %eax
    addl $boot_pd, %eax
    orl $3, %eax
    movl %eax, boot_pdpt(,%ecx,8)
    incl %ecx
    cmpl $4, %ecx
    jb 1b

    /* 2048 2 MiB pages: present, writable, large; PCD|PWT from 3 GiB up. */
    xorl %ecx, %ecx
2:
    movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax
    cmpl $1536, %ecx
    jb 3f
    orl $0x18, %eax
3:
    movl %eax, boot_pd(,%ecx,8)
    incl %ecx
    cmpl $2048, %ecx
    jb 2b

    /* CR4.PAE, then CR3, then EFER.LME|NXE, then CR0.PG|WP|PE. */
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl $boot_pml4, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x900, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80010001, %eax
    movl %eax, %cr0

    lgdt boot_gdt_pointer
    ljmp $0x08, $long_mode_entry

    .code64
long_mode_entry:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movabsq $boot_stack_top, %rsp
    movl %edi, %edi
    movl %esi, %esi
    call hv_main
4:
    cli
    hlt
    jmp 4b
"#,
    options(att_syntax)
);
