//! hv's IDT (SDM Vol. 3A 6.14): every exception prints a register dump and
//! stops the machine; an NMI is only counted. hv runs with interrupts disabled; device interrupts
//! reach it only as VM exits.

use core::arch::global_asm;
use core::mem::size_of;

use x86_64::VirtAddr;
use x86_64::instructions::tables::lidt;
use x86_64::structures::DescriptorTablePointer;
use x86_64::structures::gdt::SegmentSelector;
use x86_64::structures::idt::{Entry, HandlerFunc};

use super::gdt;

/// Registers saved by the exception entry stubs, lowest address first.
#[repr(C)]
pub struct ExceptionFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

global_asm!(
    r#"
    .macro EXCEPTION_NO_ERROR vector
    .balign 16
exception_stub_\vector:
    push 0
    push \vector
    jmp exception_common
    .endm
    .macro EXCEPTION_ERROR vector
    .balign 16
exception_stub_\vector:
    push \vector
    jmp exception_common
    .endm

    .section .text
    /* The exceptions that push an error code (SDM 6.13), then the others. */
    .irp vector, 8, 10, 11, 12, 13, 14, 17, 21, 29, 30
    EXCEPTION_ERROR \vector
    .endr
    .irp vector, 0, 1, 2, 3, 4, 5, 6, 7, 9, 15, 16, 18, 19, 20, 22, 23, 24, 25, 26, 27, 28, 31
    EXCEPTION_NO_ERROR \vector
    .endr

    /* Spurious APIC interrupts need no acknowledgement (SDM 12.9). */
    .balign 16
spurious_interrupt_stub:
    iretq

    /* Device interrupts while hv idles (vectors 0x30-0x3f): record the line,
       acknowledge, return. */
    .macro DEVICE_INTERRUPT vector
    .balign 16
device_stub_\vector:
    push rdi
    mov edi, \vector
    jmp device_common
    .endm
    .irp vector, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63
    DEVICE_INTERRUPT \vector
    .endr
device_common:
    push rax
    push rcx
    push rdx
    push rsi
    push r8
    push r9
    push r10
    push r11
    call {device_interrupt}
    pop r11
    pop r10
    pop r9
    pop r8
    pop rsi
    pop rdx
    pop rcx
    pop rax
    pop rdi
    iretq

    /* The APIC timer while hv idles: acknowledge and return. */
    .balign 16
timer_interrupt_stub:
    push rax
    push rcx
    push rdx
    push rsi
    push rdi
    push r8
    push r9
    push r10
    push r11
    call {end_of_interrupt}
    pop r11
    pop r10
    pop r9
    pop r8
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rax
    iretq

exception_common:
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
    push rdi
    push rbp
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    mov rdi, rsp
    and rsp, -16
    call {handler}
2:
    cli
    hlt
    jmp 2b

    .section .rodata
    .balign 8
    .global exception_stub_table
exception_stub_table:
    .irp vector, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31
    .quad exception_stub_\vector
    .endr
    .global spurious_stub_address
spurious_stub_address:
    .quad spurious_interrupt_stub
    .global timer_stub_address
timer_stub_address:
    .quad timer_interrupt_stub
    .global device_stub_table
device_stub_table:
    .irp vector, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63
    .quad device_stub_\vector
    .endr
    .section .text
"#,
    handler = sym exception_handler,
    end_of_interrupt = sym super::lapic::end_of_interrupt,
    device_interrupt = sym super::ioapic::device_interrupt,
);

/// NMIs taken while hv itself ran (VMX root). An NMI is the platform's
/// (hv has no NMI source of its own): counted and ignored, never fatal.
/// NMIs that arrive while a guest runs are VM exits instead (see
/// `vmx::count_nmi`).
pub static NMIS_IN_ROOT: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

global_asm!(
    r#"
    .section .text
    .balign 16
nmi_in_root_stub:
    lock inc qword ptr [rip + {count}]
    iretq

    .section .rodata
    .balign 8
    .global nmi_stub_address
nmi_stub_address:
    .quad nmi_in_root_stub
    .section .text
"#,
    count = sym NMIS_IN_ROOT,
);

unsafe extern "C" {
    static nmi_stub_address: u64;
    static exception_stub_table: [u64; 32];
    static spurious_stub_address: u64;
    static timer_stub_address: u64;
    static device_stub_table: [u64; 16];
}

/// Vector of the local APIC's spurious interrupt.
pub const SPURIOUS_VECTOR: u8 = 0xff;

/// hv's 256 gates, each the crate's gate entry. (The crate's
/// `InterruptDescriptorTable` gives the first 32 vectors a type per
/// exception, for `extern "x86-interrupt"` handlers; hv's stubs are
/// assembly with one frame layout, so every vector gets the same entry type.)
#[repr(C, align(16))]
struct Idt([Entry<HandlerFunc>; 256]);
const _: () = assert!(size_of::<Idt>() == 4096);

static mut IDT: Idt = Idt([Entry::missing(); 256]);

/// Base address of the IDT, for the VMCS host state.
pub fn idt_base() -> u64 {
    &raw const IDT as u64
}

/// A 64-bit interrupt gate (type 0xE), present, DPL 0, into hv's code
/// segment, on IST slot `ist` (0: the current stack).
fn gate(handler: u64, ist: u8) -> Entry<HandlerFunc> {
    let mut entry = Entry::missing();
    // SAFETY: an entry is only data until an IDT holding it is loaded, and
    // `init` makes gates only from the entry stubs above. hv's code selector
    // is a 64-bit code segment on every CPU, and both IST slots are filled
    // in every CPU's TSS (gdt). The crate counts IST slots from 0.
    unsafe {
        let options = entry.set_handler_addr(VirtAddr::new(handler));
        options.set_code_selector(SegmentSelector(gdt::CODE_SELECTOR));
        if ist != 0 {
            options.set_stack_index(u16::from(ist) - 1);
        }
    }
    entry
}

/// Fills and loads the IDT. Boot CPU, once, after the GDT.
pub fn init() {
    let mut idt = Idt([Entry::missing(); 256]);
    // SAFETY: the stub tables are immutable data emitted above.
    let (exceptions, nmi, spurious, timer, devices) = unsafe {
        (exception_stub_table, nmi_stub_address, spurious_stub_address, timer_stub_address, device_stub_table)
    };
    for (vector, stub) in exceptions.into_iter().enumerate() {
        let ist = match vector {
            8 => gdt::DOUBLE_FAULT_IST,
            2 | 18 => gdt::NMI_IST,
            _ => 0,
        };
        idt.0[vector] = gate(stub, ist);
    }
    // An NMI only counts (on its own stack; IRETQ unblocks NMIs again).
    idt.0[2] = gate(nmi, gdt::NMI_IST);
    idt.0[SPURIOUS_VECTOR as usize] = gate(spurious, 0);
    idt.0[super::lapic::TIMER_VECTOR as usize] = gate(timer, 0);
    // A kick only ends HLT (see smp::kick): acknowledged like the timer.
    idt.0[super::smp::KICK_VECTOR as usize] = gate(timer, 0);
    for (line, stub) in devices.into_iter().enumerate() {
        idt.0[super::ioapic::FIRST_VECTOR as usize + line] = gate(stub, 0);
    }
    // SAFETY: boot is single-threaded and no CPU has loaded IDT yet; this
    // is its only write.
    unsafe { (&raw mut IDT).write(idt) };
    load();
}

/// Loads the IDT the boot CPU built on an application processor: the
/// gates are the same on every CPU (each CPU's TSS gives its own IST
/// stacks). After [`init`] on the boot CPU.
pub fn load_on_ap() {
    load();
}

fn load() {
    let pointer = DescriptorTablePointer { limit: (size_of::<Idt>() - 1) as u16, base: VirtAddr::new(idt_base()) };
    // SAFETY: IDT lives forever; `init` filled it before any CPU loads it
    // and it is never written again.
    unsafe { lidt(&pointer) };
}

const EXCEPTION_NAMES: [&str; 32] = [
    "#DE divide error",
    "#DB debug",
    "NMI",
    "#BP breakpoint",
    "#OF overflow",
    "#BR bound range",
    "#UD invalid opcode",
    "#NM device not available",
    "#DF double fault",
    "coprocessor segment overrun",
    "#TS invalid TSS",
    "#NP segment not present",
    "#SS stack fault",
    "#GP general protection",
    "#PF page fault",
    "reserved",
    "#MF x87 error",
    "#AC alignment check",
    "#MC machine check",
    "#XM SIMD error",
    "#VE virtualization exception",
    "#CP control protection",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "#HV hypervisor injection",
    "#VC VMM communication",
    "#SX security",
    "reserved",
];

extern "C" fn exception_handler(frame: *const ExceptionFrame) -> ! {
    // SAFETY: the entry stub passes a pointer to the frame it just pushed on
    // this CPU's stack; it stays valid because this function never returns.
    let frame = unsafe { &*frame };
    let name = EXCEPTION_NAMES.get(frame.vector as usize).copied().unwrap_or("unknown vector");
    crate::log::emergency(format_args!(
        "hv: EXCEPTION {} (vector {}) error {:#x} at rip {:#018x}\n\
         rax {:#018x} rbx {:#018x} rcx {:#018x} rdx {:#018x}\n\
         rsi {:#018x} rdi {:#018x} rbp {:#018x} rsp {:#018x}\n\
         r8  {:#018x} r9  {:#018x} r10 {:#018x} r11 {:#018x}\n\
         r12 {:#018x} r13 {:#018x} r14 {:#018x} r15 {:#018x}\n\
         cs {:#x} ss {:#x} rflags {:#x} cr2 {:#018x} cr3 {:#018x}\n\
         hv: halted\n",
        name,
        frame.vector,
        frame.error_code,
        frame.rip,
        frame.rax,
        frame.rbx,
        frame.rcx,
        frame.rdx,
        frame.rsi,
        frame.rdi,
        frame.rbp,
        frame.rsp,
        frame.r8,
        frame.r9,
        frame.r10,
        frame.r11,
        frame.r12,
        frame.r13,
        frame.r14,
        frame.r15,
        frame.cs,
        frame.ss,
        frame.rflags,
        super::cpu::read_cr2(),
        super::cpu::read_cr3(),
    ));
    super::cpu::halt_forever()
}
