//! The local APIC in xAPIC mode (SDM Vol. 3A 12.4): hv enables it, masks its
//! local interrupt sources and acknowledges interrupts that reach it.

use core::sync::atomic::{AtomicU64, Ordering};

use super::cpu::{msr, rdmsr};
use super::idt::SPURIOUS_VECTOR;

const ID: u64 = 0x20;
const VERSION: u64 = 0x30;
const TASK_PRIORITY: u64 = 0x80;
const END_OF_INTERRUPT: u64 = 0xb0;
const SPURIOUS_VECTOR_REGISTER: u64 = 0xf0;
const LVT_TIMER: u64 = 0x320;
const LVT_LINT0: u64 = 0x350;
const LVT_LINT1: u64 = 0x360;
const LVT_ERROR: u64 = 0x370;
/// LVT mask bit (SDM Vol. 3A Figure 12-8).
const MASKED: u32 = 1 << 16;
/// SVR bit 8: APIC software enable.
const SOFTWARE_ENABLE: u32 = 1 << 8;
/// IA32_APIC_BASE bit 11: APIC global enable.
const GLOBAL_ENABLE: u64 = 1 << 11;

static BASE: AtomicU64 = AtomicU64::new(0);

fn write(register: u64, value: u32) {
    let base = BASE.load(Ordering::Relaxed);
    if base == 0 {
        return;
    }
    // SAFETY: BASE is the APIC's MMIO page, identity-mapped uncached by the
    // boot page tables; a volatile 32-bit store is the documented access.
    unsafe { core::ptr::write_volatile((base + register) as *mut u32, value) }
}

fn read(register: u64) -> u32 {
    let base = BASE.load(Ordering::Relaxed);
    if base == 0 {
        return 0;
    }
    // SAFETY: as in `write`: an aligned 32-bit volatile load from the APIC page.
    unsafe { core::ptr::read_volatile((base + register) as *const u32) }
}

/// Masks the legacy 8259 PICs (hv uses the APIC only) and enables the local
/// APIC with its local vector table masked. Returns (APIC id, version).
pub fn init() -> (u32, u32) {
    // SAFETY: ports 0x21 and 0xa1 are the 8259 interrupt mask registers;
    // masking every line has no other effect.
    unsafe {
        super::cpu::outb(0x21, 0xff);
        super::cpu::outb(0xa1, 0xff);
    }
    // SAFETY: IA32_APIC_BASE exists on every CPU with VMX.
    let apic_base = unsafe { rdmsr(msr::IA32_APIC_BASE) };
    if apic_base & GLOBAL_ENABLE == 0 {
        return (0, 0);
    }
    BASE.store(apic_base & 0x000f_ffff_ffff_f000, Ordering::Relaxed);
    write(TASK_PRIORITY, 0);
    write(LVT_TIMER, MASKED);
    write(LVT_LINT0, MASKED);
    write(LVT_LINT1, MASKED);
    write(LVT_ERROR, MASKED);
    write(SPURIOUS_VECTOR_REGISTER, SOFTWARE_ENABLE | SPURIOUS_VECTOR as u32);
    (read(ID) >> 24, read(VERSION) & 0xff)
}

/// Signals end of interrupt for the interrupt being serviced.
pub fn end_of_interrupt() {
    write(END_OF_INTERRUPT, 0);
}
