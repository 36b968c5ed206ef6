/*
 * The C guest's PVH entry: Xen's note names it (XEN_ELFNOTE_PHYS32_ENTRY),
 * so dom0's builder starts vCPU 0 here as Xen starts a PVH kernel
 * (abi::xen::start_info): 32-bit protected mode, paging off, flat
 * segments, EBX = the hvm_start_info's address. It identity-maps the first
 * GiB with 2 MiB pages, enters 64-bit mode (PAE, EFER.LME, paging) on a
 * GDT of its own, and calls guest_main(start_info) on its own stack.
 * Linked at 1 MiB (pvh.ld); .bss is zero (the builder loads into zeroed RAM).
 */
#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define MSR_EFER 0xc0000080
#define EFER_LME (1 << 8)
#define CR0_PG (1 << 31)
#define CR4_PAE (1 << 5)

    .section .note.Xen, "a", @note
    .balign 4
    .long 4                         /* name size: "Xen" and its NUL */
    .long 4                         /* desc size: a 32-bit address */
    .long XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .long pvh_start
    .balign 4

    .section .text.entry, "ax"
    .code32
    .globl pvh_start
pvh_start:
    mov %ebx, %esi                  /* keep the start info */
    movl $(pdpt + 3), pml4          /* present, writable */
    movl $(pd + 3), pdpt
    xor %ecx, %ecx
1:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax                  /* present, writable, 2 MiB page */
    mov %eax, pd(, %ecx, 8)
    inc %ecx
    cmp $512, %ecx
    jb 1b
    mov %cr4, %eax
    or $CR4_PAE, %eax
    mov %eax, %cr4
    mov $pml4, %eax
    mov %eax, %cr3
    mov $MSR_EFER, %ecx
    rdmsr
    or $EFER_LME, %eax
    wrmsr
    mov %cr0, %eax
    or $CR0_PG, %eax
    mov %eax, %cr0
    lgdt gdt_pointer
    ljmp $0x08, $long_mode

    .code64
long_mode:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    lea stack_top(%rip), %rsp
    mov %esi, %edi                  /* zero-extended: guest_main's argument */
    call guest_main
2:  hlt
    jmp 2b

/*
 * What vCPU 1 runs when vCPU 0 starts it with INIT and a Start-up IPI
 * (xenhello.c copies it to the IPI's page below 1 MiB): real mode, CS the
 * page. It stores its x2APIC id (RDMSR 0x802) at offset 0x104 of the page
 * and 0x1234 at offset 0x100, then halts for good.
 */
    .section .rodata
    .code16
    .globl ap_trampoline, ap_trampoline_end
ap_trampoline:
    mov %cs, %ax
    mov %ax, %ds
    mov $0x802, %ecx
    rdmsr
    mov %eax, 0x104
    movw $0x1234, 0x100
3:  cli
    hlt
    jmp 3b
ap_trampoline_end:
    .code64

    .balign 8
gdt:
    .quad 0
    .quad 0x00af9a000000ffff        /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff        /* 0x10: data */
gdt_pointer:
    .word gdt_pointer - gdt - 1
    .long gdt

    .section .bss
    .balign 4096
pml4:
    .skip 4096
pdpt:
    .skip 4096
pd:
    .skip 4096
    .balign 16
    .skip 16384
stack_top:

    .section .note.GNU-stack, "", @progbits   /* no executable stack */
