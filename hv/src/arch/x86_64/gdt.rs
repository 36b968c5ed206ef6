//! hv's GDT and TSS (SDM Vol. 3A 3.5, 8.7): flat 64-bit code and data, and a
//! TSS whose interrupt stack table gives double faults and NMIs their own stacks.
//!
//! The descriptors, the TSS and the instructions that load them are the
//! `x86_64` crate's; hv only chooses where the tables live (statics on the
//! boot CPU, a frame of its own on each AP), because the VMCS host state and
//! [`super::smp`] need their addresses.

use core::mem::size_of;

use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::{lgdt, load_tss};
use x86_64::structures::DescriptorTablePointer;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::{PrivilegeLevel, VirtAddr};

/// Selector of hv's 64-bit code segment (0x08).
pub const CODE_SELECTOR: u16 = SegmentSelector::new(1, PrivilegeLevel::Ring0).0;
/// Selector of hv's data segment (0x10).
pub const DATA_SELECTOR: u16 = SegmentSelector::new(2, PrivilegeLevel::Ring0).0;
/// Selector of hv's TSS (0x18; its descriptor takes entries 3 and 4).
pub const TSS_SELECTOR: u16 = SegmentSelector::new(3, PrivilegeLevel::Ring0).0;

/// IST slot (1-based, as in the IDT gate) used for double faults.
pub const DOUBLE_FAULT_IST: u8 = 1;
/// IST slot used for NMIs and machine checks.
pub const NMI_IST: u8 = 2;

const IST_STACK_SIZE: usize = 16 * 1024;

/// Entries of hv's GDT: null, code, data and the TSS's two.
const ENTRIES: usize = 5;

/// hv's GDT as the CPU reads it. The crate's `GlobalDescriptorTable` builds
/// the entries ([`table`]), but keeps its length beside them in a layout of
/// its own; hv copies them here so the table starts where `gdt_base` says
/// (and where the boot CPU's frame for an AP begins).
#[repr(C, align(16))]
struct Gdt([u64; ENTRIES]);

#[repr(C, align(16))]
struct Stack([u8; IST_STACK_SIZE]);

static mut DOUBLE_FAULT_STACK: Stack = Stack([0; IST_STACK_SIZE]);
static mut NMI_STACK: Stack = Stack([0; IST_STACK_SIZE]);
static mut TSS: TaskStateSegment = TaskStateSegment::new();
static mut GDT: Gdt = Gdt([0; ENTRIES]);

/// hv's GDT with `tss` as its task descriptor, and the selectors the
/// descriptors got (code, data, TSS).
const fn table(tss: Descriptor) -> (GlobalDescriptorTable<ENTRIES>, [u16; 3]) {
    let mut table = GlobalDescriptorTable::empty();
    let code = table.append(Descriptor::kernel_code_segment());
    let data = table.append(Descriptor::kernel_data_segment());
    let task = table.append(tss);
    (table, [code.0, data.0, task.0])
}

// The VMCS host state uses the selector constants: they must be where
// `table` puts the descriptors.
const _: () = {
    let (_, selectors) = table(Descriptor::SystemSegment(0, 0));
    assert!(selectors[0] == CODE_SELECTOR && selectors[1] == DATA_SELECTOR && selectors[2] == TSS_SELECTOR);
};

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
    unsafe { load(tables as *mut Gdt, (tables + AP_TSS_OFFSET) as *mut TaskStateSegment, double_fault_top, nmi_top) }
}

/// Fills a GDT (null, code, data, TSS) and its TSS and loads them.
///
/// # Safety
/// Both pointers are valid, exclusively this CPU's, and live forever.
unsafe fn load(gdt: *mut Gdt, tss: *mut TaskStateSegment, double_fault_top: u64, nmi_top: u64) {
    let mut task_state = TaskStateSegment::new();
    task_state.interrupt_stack_table[usize::from(DOUBLE_FAULT_IST - 1)] = VirtAddr::new(double_fault_top);
    task_state.interrupt_stack_table[usize::from(NMI_IST - 1)] = VirtAddr::new(nmi_top);
    // SAFETY: the caller's contract: `tss` is this CPU's for good. It is
    // written before its descriptor is made (which reads its I/O map base).
    let descriptor = unsafe {
        tss.write(task_state);
        Descriptor::tss_segment_unchecked(tss)
    };
    let (table, _) = table(descriptor);
    let mut entries = [0; ENTRIES];
    for (slot, entry) in entries.iter_mut().zip(table.entries()) {
        *slot = entry.raw();
    }
    let pointer = DescriptorTablePointer { limit: table.limit(), base: VirtAddr::new(gdt as u64) };
    // SAFETY: the caller's contract: `gdt` is this CPU's for good. The
    // selectors are the table's own (checked above): a 64-bit code segment,
    // a data segment and an available TSS, so the loads cannot fault.
    unsafe {
        gdt.write(Gdt(entries));
        lgdt(&pointer);
        CS::set_reg(SegmentSelector(CODE_SELECTOR));
        DS::set_reg(SegmentSelector(DATA_SELECTOR));
        ES::set_reg(SegmentSelector(DATA_SELECTOR));
        SS::set_reg(SegmentSelector(DATA_SELECTOR));
        load_tss(SegmentSelector(TSS_SELECTOR));
    }
}
