//! hv's GDT and TSS (SDM Vol. 3A 3.5, 8.7): flat 64-bit code and data, and a
//! TSS whose interrupt stack table gives double faults and NMIs their own stacks.

use core::arch::asm;
use core::mem::size_of;

/// Selector of hv's 64-bit code segment.
pub const CODE_SELECTOR: u16 = 0x08;
/// Selector of hv's data segment.
pub const DATA_SELECTOR: u16 = 0x10;
/// Selector of hv's TSS.
pub const TSS_SELECTOR: u16 = 0x18;

/// IST slot (1-based, as in the IDT gate) used for double faults.
pub const DOUBLE_FAULT_IST: u8 = 1;
/// IST slot used for NMIs and machine checks.
pub const NMI_IST: u8 = 2;

const IST_STACK_SIZE: usize = 16 * 1024;

/// The 64-bit task-state segment (SDM Vol. 3A Figure 8-11).
#[repr(C, packed(4))]
struct TaskStateSegment {
    _reserved0: u32,
    privilege_stacks: [u64; 3],
    _reserved1: u64,
    interrupt_stacks: [u64; 7],
    _reserved2: u64,
    _reserved3: u16,
    io_map_base: u16,
}
const _: () = assert!(size_of::<TaskStateSegment>() == 104);

#[repr(C, align(16))]
struct Stack([u8; IST_STACK_SIZE]);

#[repr(C, align(16))]
struct Gdt([u64; 5]);

#[repr(C, packed(2))]
struct DescriptorPointer {
    limit: u16,
    base: u64,
}

static mut DOUBLE_FAULT_STACK: Stack = Stack([0; IST_STACK_SIZE]);
static mut NMI_STACK: Stack = Stack([0; IST_STACK_SIZE]);
static mut TSS: TaskStateSegment = TaskStateSegment {
    _reserved0: 0,
    privilege_stacks: [0; 3],
    _reserved1: 0,
    interrupt_stacks: [0; 7],
    _reserved2: 0,
    _reserved3: 0,
    io_map_base: size_of::<TaskStateSegment>() as u16,
};
static mut GDT: Gdt = Gdt([0; 5]);

/// Physical (= virtual) base address of the GDT, for the VMCS host state.
pub fn gdt_base() -> u64 {
    &raw const GDT as u64
}

/// Base address of the TSS, for the VMCS host state.
pub fn tss_base() -> u64 {
    &raw const TSS as u64
}

/// Builds and loads the GDT and TSS. Boot CPU, once, before anything that may fault.
pub fn init() {
    // SAFETY: boot runs single-threaded with interrupts off; nothing else
    // touches these statics yet, and they live forever.
    unsafe {
        load(
            &raw mut GDT,
            &raw mut TSS,
            (&raw const DOUBLE_FAULT_STACK as u64) + IST_STACK_SIZE as u64,
            (&raw const NMI_STACK as u64) + IST_STACK_SIZE as u64,
        )
    }
}

/// Bytes an application processor's GDT and TSS take (one frame holds them).
pub const AP_TABLES_SIZE: u64 = (size_of::<Gdt>() + size_of::<TaskStateSegment>()) as u64;
/// Where an application processor's TSS is in its tables frame.
pub const AP_TSS_OFFSET: u64 = size_of::<Gdt>() as u64;
/// Bytes of each IST stack an application processor needs.
pub const AP_IST_STACK_SIZE: u64 = IST_STACK_SIZE as u64;

/// Builds and loads an application processor's own GDT and TSS in
/// `tables` (a zeroed, hv-owned frame, 16-byte aligned), with IST stacks
/// ending at `double_fault_top` and `nmi_top`. That AP, once.
///
/// # Safety
/// `tables` must be an identity-mapped frame of at least
/// [`AP_TABLES_SIZE`] bytes owned by this CPU forever; the stack tops must
/// end hv-owned stacks of [`AP_IST_STACK_SIZE`] bytes, used by nothing else.
pub unsafe fn init_ap(tables: u64, double_fault_top: u64, nmi_top: u64) {
    // SAFETY: the caller's contract; the GDT is first in the frame and the
    // TSS follows it (both types need at most 16-byte alignment).
    unsafe {
        load(tables as *mut Gdt, (tables + size_of::<Gdt>() as u64) as *mut TaskStateSegment, double_fault_top, nmi_top)
    }
}

/// Fills a GDT (null, code, data, TSS) and its TSS and loads them.
///
/// # Safety
/// Both pointers are valid, exclusively this CPU's, and live forever.
unsafe fn load(gdt: *mut Gdt, tss_pointer: *mut TaskStateSegment, double_fault_top: u64, nmi_top: u64) {
    let tss = tss_pointer as u64;
    let limit = (size_of::<TaskStateSegment>() - 1) as u64;
    // Available 64-bit TSS (type 9), present.
    let tss_low = (limit & 0xffff)
        | (tss & 0xff_ffff) << 16
        | 0x89 << 40
        | ((limit >> 16) & 0xf) << 48
        | ((tss >> 24) & 0xff) << 56;
    let tss_high = tss >> 32;
    // SAFETY: the caller's contract: both are this CPU's own tables.
    unsafe {
        (*tss_pointer).io_map_base = size_of::<TaskStateSegment>() as u16;
        (*tss_pointer).interrupt_stacks[DOUBLE_FAULT_IST as usize - 1] = double_fault_top;
        (*tss_pointer).interrupt_stacks[NMI_IST as usize - 1] = nmi_top;
        (*gdt).0 = [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff, tss_low, tss_high];
        let pointer = DescriptorPointer { limit: (size_of::<Gdt>() - 1) as u16, base: gdt as u64 };
        asm!(
            "lgdt [{pointer}]",
            "push {code}",
            "lea {scratch}, [rip + 2f]",
            "push {scratch}",
            "retfq",
            "2:",
            "mov ds, {data:x}",
            "mov es, {data:x}",
            "mov ss, {data:x}",
            "ltr {tss:x}",
            pointer = in(reg) &pointer,
            code = in(reg) CODE_SELECTOR as u64,
            data = in(reg) DATA_SELECTOR as u64,
            tss = in(reg) TSS_SELECTOR as u64,
            scratch = out(reg) _,
        );
    }
}
