//! The local APIC (SDM Vol. 3A 12.4): hv enables it, masks its local
//! interrupt sources, acknowledges interrupts that reach it and sends IPIs.
//! In x2APIC mode (SDM 12.12) when the CPU has it: registers are MSRs
//! (0x800 + offset / 16), the ICR is one 64-bit MSR with a 32-bit
//! destination, and APIC ids above 255 can be reached; else xAPIC mode,
//! through the MMIO page.

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
/// IA32_APIC_BASE bit 10: x2APIC mode (with bit 11).
const X2APIC_ENABLE: u64 = 1 << 10;
/// The x2APIC MSR of xAPIC register offset 0 (SDM Table 12-6).
const X2APIC_MSR_BASE: u32 = 0x800;

static BASE: AtomicU64 = AtomicU64::new(0);
/// Every CPU drives its APIC in x2APIC mode (the boot CPU has it: `init`).
static X2APIC: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
/// The APIC timer has TSC-deadline mode (read once by `init`, not on every
/// idle wait: the CPUID leaves `cpu::features` reads cost exits under a
/// hypervisor and time on the idle path).
static TSC_DEADLINE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

fn write(register: u64, value: u32) {
    let base = BASE.load(Ordering::Relaxed);
    if base == 0 {
        return;
    }
    if x2apic() {
        // SAFETY: the x2APIC MSR of an architectural register (x2APIC mode
        // is on: `enable_x2apic`); hv writes only documented values.
        return unsafe { super::cpu::wrmsr(X2APIC_MSR_BASE + (register >> 4) as u32, value as u64) };
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
    if x2apic() {
        // SAFETY: as in `write`: a readable architectural register's MSR.
        return unsafe { rdmsr(X2APIC_MSR_BASE + (register >> 4) as u32) } as u32;
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
    let features = super::cpu::features();
    TSC_DEADLINE.store(features.tsc_deadline, Ordering::Relaxed);
    X2APIC.store(features.x2apic, Ordering::Relaxed);
    (init_ap(), read(VERSION) & 0xff)
}

/// Whether the APICs are in x2APIC mode.
pub fn x2apic() -> bool {
    X2APIC.load(Ordering::Relaxed)
}

/// Sets up this CPU's local APIC (task priority 0, every LVT entry masked,
/// software-enabled; the 8259s are masked already): the boot CPU's through
/// [`init`], each application processor's directly (the registers are at
/// the same address on every CPU). Returns its APIC id.
pub fn init_ap() -> u32 {
    if x2apic() {
        // SAFETY: the CPU has x2APIC (the boot CPU's features, which every
        // AP shares); setting EXTD with the APIC enabled is the documented
        // xAPIC-to-x2APIC transition (SDM 12.12.5).
        unsafe {
            let apic_base = rdmsr(msr::IA32_APIC_BASE);
            super::cpu::wrmsr(msr::IA32_APIC_BASE, apic_base | GLOBAL_ENABLE | X2APIC_ENABLE);
        }
    }
    write(TASK_PRIORITY, 0);
    write(LVT_TIMER, MASKED);
    write(LVT_LINT0, MASKED);
    write(LVT_LINT1, MASKED);
    write(LVT_ERROR, MASKED);
    write(SPURIOUS_VECTOR_REGISTER, SOFTWARE_ENABLE | SPURIOUS_VECTOR as u32);
    // The x2APIC id is the whole register; the xAPIC id its top byte.
    if x2apic() { read(ID) } else { read(ID) >> 24 }
}

const ICR_LOW: u64 = 0x300;
const ICR_HIGH: u64 = 0x310;
/// ICR delivery status (bit 12): the previous IPI is not yet sent.
const ICR_PENDING: u32 = 1 << 12;
/// ICR: INIT (101b), level assert, edge.
pub const ICR_INIT: u32 = 0b101 << 8 | 1 << 14;
/// ICR: Start-up (110b) with the page number of the real-mode entry.
pub const ICR_STARTUP: u32 = 0b110 << 8 | 1 << 14;

/// Sends an interprocessor interrupt (`command`: the ICR's low word) to the
/// CPU with xAPIC id `apic_id` and waits (at most `timeout_tsc` ticks) until
/// the APIC has sent it (SDM Vol. 3A 12.6.1). Returns false on timeout or
/// if the APIC is off.
pub fn send_ipi(apic_id: u32, command: u32, timeout_tsc: u64) -> bool {
    if x2apic() {
        send_x2apic(apic_id, command);
        return true;
    }
    if base() == 0 || apic_id > 0xff {
        return false;
    }
    write(ICR_HIGH, apic_id << 24);
    write(ICR_LOW, command);
    let deadline = super::cpu::rdtsc().saturating_add(timeout_tsc);
    while read(ICR_LOW) & ICR_PENDING != 0 {
        if super::cpu::rdtsc() > deadline {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

/// Sends fixed interrupt `vector` to the CPU with xAPIC id `apic_id`
/// without waiting for its delivery (a kick: the sender has nothing to wait
/// for). Waits only until the ICR is free for the write (SDM 12.6.1).
pub fn send_fixed_ipi(apic_id: u32, vector: u8) {
    if x2apic() {
        // Fixed delivery (000b), physical destination, edge, assert.
        return send_x2apic(apic_id, 1 << 14 | vector as u32);
    }
    if base() == 0 || apic_id > 0xff {
        return;
    }
    while read(ICR_LOW) & ICR_PENDING != 0 {
        core::hint::spin_loop();
    }
    write(ICR_HIGH, apic_id << 24);
    // Fixed delivery (000b), physical destination, edge, assert.
    write(ICR_LOW, 1 << 14 | vector as u32);
}

/// Sends an IPI in x2APIC mode: one write of the 64-bit ICR, destination
/// in its top half; the x2APIC has no delivery status to wait for (SDM
/// 12.12.9).
fn send_x2apic(apic_id: u32, command: u32) {
    // SAFETY: the x2APIC ICR MSR (0x830) in x2APIC mode; `command` is a
    // fixed, INIT or start-up IPI to one CPU hv started or starts.
    unsafe { super::cpu::wrmsr(X2APIC_MSR_BASE + 0x30, u64::from(apic_id) << 32 | u64::from(command)) }
}

/// Physical address of the local APIC's registers (from IA32_APIC_BASE), 0
/// when the APIC is disabled.
pub fn base() -> u64 {
    BASE.load(Ordering::Relaxed)
}

/// Vector of the local APIC timer, used only to wake hv from HLT when idle.
pub const TIMER_VECTOR: u8 = 0xf0;
/// IA32_TSC_DEADLINE (SDM Vol. 3A 12.5.4.1).
const IA32_TSC_DEADLINE: u32 = 0x6e0;
/// LVT timer mode bits 18:17 = 10b: TSC-deadline mode.
const TSC_DEADLINE_MODE: u32 = 0b10 << 17;

/// Whether the APIC timer supports TSC-deadline mode (CPUID.1:ECX bit 24).
fn tsc_deadline_supported() -> bool {
    BASE.load(Ordering::Relaxed) != 0 && TSC_DEADLINE.load(Ordering::Relaxed)
}

/// Idles the CPU until the TSC reaches `deadline`, a device interrupt
/// arrives or `kicked` is set (by another CPU, which then sends a kick
/// IPI): halts with the APIC timer armed in TSC-deadline mode, or (where
/// that is missing) halts briefly in a loop.
pub fn wait_until(deadline: u64, kicked: &core::sync::atomic::AtomicBool) {
    let waiting = || super::cpu::rdtsc() < deadline && !super::ioapic::any_pending() && !kicked.load(Ordering::Acquire);
    if !tsc_deadline_supported() {
        while waiting() {
            // SAFETY: interrupts are enabled only across one NOP-length
            // window so a device interrupt can be taken; its handler returns.
            unsafe { core::arch::asm!("sti", "nop", "cli", options(nomem, nostack)) };
            core::hint::spin_loop();
        }
        return;
    }
    write(LVT_TIMER, TSC_DEADLINE_MODE | TIMER_VECTOR as u32);
    while waiting() {
        // SAFETY: arming the deadline MSR only schedules the timer interrupt,
        // whose handler (idt) acknowledges it and returns.
        unsafe { super::cpu::wrmsr(IA32_TSC_DEADLINE, deadline) };
        // SAFETY: interrupts are enabled only across HLT: the timer (or any
        // other interrupt) wakes the CPU, its handler returns here, and CLI
        // restores hv's interrupts-off rule. STI's one-instruction shadow
        // guarantees no interrupt is taken before HLT starts.
        unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
    }
    // SAFETY: writing 0 disarms the deadline timer.
    unsafe { super::cpu::wrmsr(IA32_TSC_DEADLINE, 0) };
    write(LVT_TIMER, MASKED);
}

/// Signals end of interrupt for the interrupt being serviced.
pub extern "C" fn end_of_interrupt() {
    write(END_OF_INTERRUPT, 0);
}
