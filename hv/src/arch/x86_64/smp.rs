//! Starting the application processors (SDM Vol. 3A 10.4, "Multiple-
//! Processor (MP) Initialization"; 12.6 for the ICR).
//!
//! The boot CPU copies a real-mode trampoline to [`TRAMPOLINE`] (a page of
//! the first MiB, which the frame allocator never hands out), then sends
//! each AP INIT, and a Start-up IPI naming that page (a second one if the
//! AP did not answer the first). The trampoline goes 16 -> 32 -> 64-bit
//! with hv's own page tables (the boot CPU's CR3) and jumps to
//! [`ap_entry`] on the AP's own stack. APs start one at a time: the
//! trampoline's parameter block is shared.
//!
//! Each AP gets its own stack (with an unmapped guard page below it), GDT
//! and TSS with its own IST stacks, the shared IDT, its local APIC set up
//! like the boot CPU's, a VMXON region (after the same VMX capability
//! checks), and its [`PerCpu`] slot (its GS base points there). It then
//! halts until the boot CPU has built dom0 and kicks it
//! ([`start_scheduling`]), and from then on runs hv's run loop like the
//! boot CPU: every CPU takes domains from the one run queue.
//!
//! CPUs signal each other with one IPI, the kick ([`KICK_VECTOR`]): a CPU
//! that runs a guest leaves it (external-interrupt exiting) and looks at
//! its domain's flags again; an idle CPU leaves HLT and picks again.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use super::vmx::Capabilities;
use super::{cpu, gdt, idt, lapic, vmx};
use hvcore::acpi::MAX_CPUS;

/// Physical address of the trampoline: page 8 of conventional memory,
/// below the EBDA, above the BIOS data area; SIPI vector 0x08.
pub const TRAMPOLINE: u64 = 0x8000;

const _: () = assert!(gdt::AP_TABLES_SIZE <= 4096);

/// Bytes of each AP's stack (above its guard page): as much as the boot
/// CPU's, since any CPU may run any hypercall. The deepest path, a
/// `DomCtl` destroy from the run loop, took about 60 KiB (measured from
/// the frames' sizes, with 512 scheduler entries) and overflowed 64 KiB.
const STACK_SIZE: u64 = 256 * 1024;

/// What a CPU is doing, as `info` shows it.
pub mod state {
    /// No CPU in this slot (or not started: `maxcpus`, no ACPI).
    pub const ABSENT: u32 = 0;
    /// INIT-SIPI-SIPI sent, the AP has not reached hv's Rust code yet.
    pub const STARTING: u32 = 1;
    /// Set up, in VMX root operation, halted: runs no domain yet.
    pub const VMX_ROOT_IDLE: u32 = 2;
    /// Runs dom0 and the domains (the boot CPU).
    pub const RUNNING_DOMAINS: u32 = 3;
    /// Started but failed a check (its VMX capabilities differ from the
    /// boot CPU's, VMXON failed, APIC id mismatch): halted for good.
    pub const FAILED: u32 = 4;
}

/// One CPU's data. Slot 0 is the boot CPU; APs follow in start order.
/// Each CPU's GS base points at its own slot (see [`this_cpu`]), so the
/// first fields are read with one GS-relative load.
#[repr(C)]
pub struct PerCpu {
    /// This slot's index (read through GS: offset 0).
    index: AtomicU64,
    /// Physical address of the VMCS current on this CPU, 0 = none (offset 8).
    pub current_vmcs: AtomicU64,
    /// Which vCPU of its domain this CPU runs (offset 16): the caller of
    /// the hypercall or the subject of the exit hv handles here.
    current_vcpu: AtomicU64,
    /// [`IN_GUEST`] and [`FLUSH_DUE`] (offset 24, changed by this CPU with
    /// one GS-relative XCHG: see [`enter_guest_mode`]).
    guest_state: AtomicU64,
    /// Local APIC id.
    pub apic_id: AtomicU32,
    /// One of [`state`].
    pub state: AtomicU32,
    /// Set by another CPU that wants this one to look at the run queue
    /// again (a kick IPI follows); cleared by this CPU when it does.
    pub kicked: AtomicBool,
    /// The IST stacks' tops and the GDT/TSS frame, set by the boot CPU
    /// before the AP starts.
    double_fault_top: AtomicU64,
    nmi_top: AtomicU64,
    tables: AtomicU64,
    vmxon_region: AtomicU64,
    /// This CPU's GDT and TSS bases, for the host state of a VMCS it loads.
    pub gdt_base: AtomicU64,
    pub tss_base: AtomicU64,
}

const _: () = assert!(core::mem::offset_of!(PerCpu, index) == 0);
const _: () = assert!(core::mem::offset_of!(PerCpu, current_vmcs) == 8);
const _: () = assert!(core::mem::offset_of!(PerCpu, current_vcpu) == 16);
const _: () = assert!(core::mem::offset_of!(PerCpu, guest_state) == 24);

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: PerCpu = PerCpu {
    index: AtomicU64::new(0),
    current_vmcs: AtomicU64::new(0),
    current_vcpu: AtomicU64::new(0),
    guest_state: AtomicU64::new(0),
    apic_id: AtomicU32::new(0),
    state: AtomicU32::new(state::ABSENT),
    kicked: AtomicBool::new(false),
    double_fault_top: AtomicU64::new(0),
    nmi_top: AtomicU64::new(0),
    tables: AtomicU64::new(0),
    vmxon_region: AtomicU64::new(0),
    gdt_base: AtomicU64::new(0),
    tss_base: AtomicU64::new(0),
};

/// Every CPU hv knows, by CPU index.
pub static CPUS: [PerCpu; MAX_CPUS] = [EMPTY; MAX_CPUS];

/// The boot CPU's VMX capabilities, which every AP must match.
static BOOT_CAPABILITIES: spin::Once<Capabilities> = spin::Once::new();

/// The VMX capabilities every running CPU has (the boot CPU's; none
/// before `init_boot_cpu`).
pub fn capabilities() -> &'static Capabilities {
    BOOT_CAPABILITIES.get().unwrap_or(&Capabilities::NONE)
}

/// CPUs in slots 0..this are in [`CPUS`] (started or tried).
static CPU_SLOTS: AtomicU32 = AtomicU32::new(1);

/// CPUs running hv: the boot CPU and every AP that reached VMX root.
pub fn running() -> u32 {
    CPUS.iter()
        .filter(|cpu| matches!(cpu.state.load(Ordering::Acquire), state::VMX_ROOT_IDLE | state::RUNNING_DOMAINS))
        .count() as u32
}

/// Fills `out` with the CPUs running hv as the ABI describes them, each
/// at its CPU index (its slot: the numbering of affinity masks and
/// `VcpuInfo::cpu`); other entries stay as they were (zero: `NONE`), so a
/// CPU that failed to start leaves a gap rather than renumbering the rest.
pub fn describe(out: &mut [abi::info::CpuInfo]) {
    use abi::info::cpu_state;
    for (entry, cpu) in out.iter_mut().zip(&CPUS) {
        let state = match cpu.state.load(Ordering::Acquire) {
            state::RUNNING_DOMAINS => cpu_state::RUNNING_DOMAINS,
            state::VMX_ROOT_IDLE => cpu_state::VMX_ROOT_IDLE,
            _ => continue,
        };
        *entry = abi::info::CpuInfo { apic_id: cpu.apic_id.load(Ordering::Relaxed), state };
    }
}

/// Slots in use (the boot CPU and every AP started or tried).
pub fn slots() -> usize {
    CPU_SLOTS.load(Ordering::Acquire) as usize
}

core::arch::global_asm!(
    r#"
    .section .rodata.ap_trampoline, "a"
    .balign 16
    .global ap_trampoline_start
ap_trampoline_start:
    .code16
    cli
    cld
    movw %cs, %ax
    movw %ax, %ds
    lgdtl ap_gdt_pointer - ap_trampoline_start
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x18, ${base} + ap_protected - ap_trampoline_start

    .code32
ap_protected:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl ${base}, %ebx
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl ap_trampoline_cr3 - ap_trampoline_start(%ebx), %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x900, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80010001, %eax
    movl %eax, %cr0
    ljmpl $0x08, ${base} + ap_long - ap_trampoline_start

    .code64
ap_long:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movl ${base}, %ebx
    movq ap_trampoline_stack - ap_trampoline_start(%rbx), %rsp
    movq ap_trampoline_argument - ap_trampoline_start(%rbx), %rdi
    movq ap_trampoline_entry - ap_trampoline_start(%rbx), %rax
    pushq $0
    jmpq *%rax

    .balign 8
ap_gdt:
    .quad 0
    .quad 0x00af9b000000ffff
    .quad 0x00cf93000000ffff
    .quad 0x00cf9b000000ffff
ap_gdt_pointer:
    .short 31
    .long {base} + ap_gdt - ap_trampoline_start
    .balign 8
    .global ap_trampoline_cr3
ap_trampoline_cr3:
    .quad 0
    .global ap_trampoline_stack
ap_trampoline_stack:
    .quad 0
    .global ap_trampoline_entry
ap_trampoline_entry:
    .quad 0
    .global ap_trampoline_argument
ap_trampoline_argument:
    .quad 0
    .global ap_trampoline_end
ap_trampoline_end:
    .section .text
"#,
    base = const TRAMPOLINE,
    options(att_syntax)
);

unsafe extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
    static ap_trampoline_cr3: u8;
    static ap_trampoline_stack: u8;
    static ap_trampoline_entry: u8;
    static ap_trampoline_argument: u8;
}

/// Where a parameter of the trampoline is in its copy at [`TRAMPOLINE`].
fn parameter(symbol: *const u8) -> u64 {
    TRAMPOLINE + (symbol as u64 - &raw const ap_trampoline_start as u64)
}

/// IA32_GS_BASE: hv's GS base, which points at the CPU's [`PerCpu`].
const IA32_GS_BASE: u32 = 0xc000_0101;

/// Makes slot `index` this CPU's: GS base, index, descriptor-table bases.
fn claim_slot(index: usize, gdt_base: u64, tss_base: u64) {
    let cpu = &CPUS[index];
    cpu.index.store(index as u64, Ordering::Relaxed);
    cpu.gdt_base.store(gdt_base, Ordering::Relaxed);
    cpu.tss_base.store(tss_base, Ordering::Relaxed);
    // SAFETY: IA32_GS_BASE exists on every 64-bit CPU; hv never loads GS
    // or executes SWAPGS, and every VM exit restores this value from the
    // VMCS host state (`Vcpu::check_out` writes it).
    unsafe { cpu::wrmsr(IA32_GS_BASE, cpu as *const PerCpu as u64) };
}

/// The index of the CPU this runs on (its [`CPUS`] slot): one GS-relative
/// load. Valid once the CPU has claimed its slot (boot CPU: `init_boot_cpu`;
/// APs: first thing in `ap_entry`).
#[inline(always)]
pub fn this_cpu() -> usize {
    let index: u64;
    // SAFETY: GS base points at this CPU's PerCpu, whose first field (offset
    // 0, asserted) is its index; the load has no side effect.
    unsafe { core::arch::asm!("mov {}, gs:[0]", out(reg) index, options(nostack, readonly, preserves_flags)) };
    index as usize
}

/// This CPU's [`PerCpu`].
#[inline(always)]
pub fn this() -> &'static PerCpu {
    &CPUS[this_cpu() % MAX_CPUS]
}

/// The physical address of the VMCS current on this CPU (0 = none): one
/// GS-relative load, for the VMX hot path.
#[inline(always)]
pub fn current_vmcs() -> u64 {
    let vmcs: u64;
    // SAFETY: as in `this_cpu`: offset 8 of this CPU's PerCpu (asserted).
    unsafe { core::arch::asm!("mov {}, gs:[8]", out(reg) vmcs, options(nostack, readonly, preserves_flags)) };
    vmcs
}

/// The index (within its domain) of the vCPU this CPU runs: one
/// GS-relative load. Set by the run loop when it checks a vCPU out.
#[inline(always)]
pub fn current_vcpu() -> usize {
    let vcpu: u64;
    // SAFETY: as in `this_cpu`: offset 16 of this CPU's PerCpu (asserted).
    unsafe { core::arch::asm!("mov {}, gs:[16]", out(reg) vcpu, options(nostack, readonly, preserves_flags)) };
    vcpu as usize
}

/// Records which vCPU (index within its domain) this CPU runs.
pub fn set_current_vcpu(vcpu: usize) {
    this().current_vcpu.store(vcpu as u64, Ordering::Relaxed);
}

/// Records which VMCS is current on this CPU.
#[inline(always)]
pub fn set_current_vmcs(vmcs: u64) {
    this().current_vmcs.store(vmcs, Ordering::Relaxed);
}

/// Records the boot CPU in slot 0.
pub fn init_boot_cpu(apic_id: u32, capabilities: &Capabilities) {
    BOOT_CAPABILITIES.call_once(|| *capabilities);
    CPUS[0].apic_id.store(apic_id, Ordering::Relaxed);
    CPUS[0].state.store(state::RUNNING_DOMAINS, Ordering::Release);
}

/// Gives the boot CPU slot 0 (GS base, descriptor tables): before
/// anything calls [`this_cpu`].
pub fn claim_boot_slot() {
    claim_slot(0, gdt::gdt_base(), gdt::tss_base());
}

/// Set once the boot CPU has built dom0: APs then run domains.
static SCHEDULING: AtomicBool = AtomicBool::new(false);

/// Lets every AP that reached VMX root start running domains (boot CPU,
/// once hv's state is complete).
pub fn start_scheduling() {
    SCHEDULING.store(true, Ordering::Release);
    for index in 1..slots() {
        kick(index);
    }
}

/// Vector of the kick IPI: it only makes the CPU leave its guest or its
/// idle HLT, so that it looks at the run queue again.
pub const KICK_VECTOR: u8 = 0xf1;

/// Asks CPU `index` to look at the run queue again: sets its `kicked` flag
/// and sends it [`KICK_VECTOR`] (a guest it runs exits; an idle HLT ends).
pub fn kick(index: usize) {
    let Some(cpu) = CPUS.get(index) else { return };
    if !matches!(cpu.state.load(Ordering::Acquire), state::RUNNING_DOMAINS | state::VMX_ROOT_IDLE) {
        return;
    }
    cpu.kicked.store(true, Ordering::Release);
    lapic::send_fixed_ipi(cpu.apic_id.load(Ordering::Relaxed), KICK_VECTOR);
}

// TLB shootdown. A CPU caches translations derived from a domain's EPT
// while it runs that domain and keeps them until INVEPT (SDM Vol. 3C
// 29.4.3), across VM exits. When hv removes access from an EPT (a grant
// unmapped, a granter destroyed) under its lock, every other CPU that ran
// the domain must drop them before the frame can be reused:
// `flush_ept_elsewhere` sets FLUSH_DUE in each such CPU's `guest_state`
// and, if it was IN_GUEST, kicks it and waits until FLUSH_DUE clears. A
// CPU exchanges its `guest_state` whenever it enters guests (IN_GUEST)
// and leaves them (0), without the lock, and flushes if FLUSH_DUE was set:
// it is in VMX root then, using no guest translation, so the requester
// may go on the moment the bit is gone, and never waits for its own lock.
// All of it is one location changed by locked instructions: no request
// is missed.

/// `PerCpu::guest_state`: the CPU may be in a guest (from letting go of
/// its domain's lock to enter one until it has left it).
const IN_GUEST: u64 = 1;
/// `PerCpu::guest_state`: the CPU owes an all-context INVEPT before its
/// next VM entry.
const FLUSH_DUE: u64 = 2;

/// Sets this CPU's `guest_state` to `state`; returns the old one.
#[inline(always)]
fn exchange_guest_state(state: u64) -> u64 {
    let mut old = state;
    // SAFETY: offset 24 of this CPU's PerCpu (asserted) is `guest_state`,
    // an AtomicU64; XCHG with memory is atomic (implicitly locked).
    unsafe { core::arch::asm!("xchg gs:[24], {}", inout(reg) old, options(nostack, preserves_flags)) };
    old
}

/// This CPU is about to enter guests (the part of the run loop without
/// any lock): announces it and flushes what it owes.
#[inline(always)]
pub fn enter_guest_mode() {
    if exchange_guest_state(IN_GUEST) & FLUSH_DUE != 0 {
        vmx::invalidate_all_ept();
    }
}

/// This CPU has left guests (before it takes any lock again): flushes
/// what it owes, so that a CPU waiting under its locks can go on.
#[inline(always)]
pub fn leave_guest_mode() {
    if exchange_guest_state(0) & FLUSH_DUE != 0 {
        vmx::invalidate_all_ept();
    }
}

/// Makes every CPU in `cpus` (bit i = CPU index i) other than this one
/// drop its EPT-derived translations, and returns once each that may be in
/// a guest has done so; the others do it before their next VM entry.
/// Called under the domain's lock after access was removed from its EPT.
pub fn flush_ept_elsewhere(cpus: u64) {
    let me = this_cpu();
    let mut waiting = 0u64;
    for (index, cpu) in CPUS.iter().enumerate().take(64) {
        if cpus & (1 << index) == 0 || index == me {
            continue;
        }
        if cpu.guest_state.fetch_or(FLUSH_DUE, Ordering::SeqCst) & IN_GUEST != 0 {
            // The kick makes it leave the guest (external-interrupt exiting).
            lapic::send_fixed_ipi(cpu.apic_id.load(Ordering::Relaxed), KICK_VECTOR);
            waiting |= 1 << index;
        }
    }
    for (index, cpu) in CPUS.iter().enumerate().take(64) {
        if waiting & (1 << index) != 0 {
            while cpu.guest_state.load(Ordering::SeqCst) & FLUSH_DUE != 0 {
                core::hint::spin_loop();
            }
        }
    }
}

/// CPUs idle in the run loop (bit = CPU index), so that a domain that
/// becomes runnable can wake one.
static IDLE: AtomicU64 = AtomicU64::new(0);

/// Marks this CPU idle (`true`) or busy. Set before the CPU's last look at
/// the domains (each under its lock) before it waits, so that whoever makes
/// a vCPU runnable under its domain's lock afterwards sees it (`hypervisor::run`).
pub fn set_idle(idle: bool) {
    let bit = 1u64 << (this_cpu() % 64);
    if idle {
        IDLE.fetch_or(bit, Ordering::AcqRel);
    } else {
        IDLE.fetch_and(!bit, Ordering::AcqRel);
    }
}

/// Wakes one idle CPU other than this one, if there is one: `home` (the
/// CPU whose run queue holds the vCPU that woke) if it is idle; returns
/// whether it did.
pub fn wake_idle_cpu(home: usize) -> bool {
    let others = IDLE.load(Ordering::Acquire) & !(1u64 << (this_cpu() % 64));
    if others == 0 {
        return false;
    }
    let home_bit = 1u64.checked_shl(home as u32).unwrap_or(0);
    let index = if others & home_bit != 0 { home } else { others.trailing_zeros() as usize };
    IDLE.fetch_and(!(1u64 << index), Ordering::AcqRel);
    kick(index);
    true
}

/// Why an AP did not come up.
pub type StartError = &'static str;

/// Starts the AP with APIC id `apic_id` in the next free slot and waits
/// until it is idle in VMX root or failed. Boot CPU only, before dom0
/// runs; `tsc_khz` times the waits. Returns the AP's CPU index.
pub fn start_ap(apic_id: u32, tsc_khz: u64) -> Result<usize, StartError> {
    let index = slots();
    if index >= MAX_CPUS {
        return Err("no per-CPU slot left");
    }
    if apic_id > 0xff && !lapic::x2apic() {
        return Err("x2APIC id above 255 on a CPU without x2APIC mode");
    }
    let size = &raw const ap_trampoline_end as u64 - &raw const ap_trampoline_start as u64;
    // SAFETY: the trampoline is bytes of hv's read-only image.
    let code = unsafe { core::slice::from_raw_parts(&raw const ap_trampoline_start, size as usize) };
    // Stack: a guard page, then STACK_SIZE; IST stacks; GDT+TSS; VMXON.
    let stack_frames = 1 + STACK_SIZE / 4096;
    let stack = crate::memory::allocate_contiguous(stack_frames, 4096).ok_or("out of memory for its stack")?;
    if !super::memory::unmap_guard_page(stack, crate::memory::allocate_frame) {
        return Err("cannot unmap its stack's guard page");
    }
    let ist = crate::memory::allocate_contiguous(2 * gdt::AP_IST_STACK_SIZE / 4096, 4096)
        .ok_or("out of memory for its IST stacks")?;
    let tables = crate::memory::allocate_frame().ok_or("out of memory for its GDT")?;
    let vmxon = crate::memory::allocate_frame().ok_or("out of memory for its VMXON region")?;
    let cpu = &CPUS[index];
    cpu.apic_id.store(apic_id, Ordering::Relaxed);
    cpu.double_fault_top.store(ist + gdt::AP_IST_STACK_SIZE, Ordering::Relaxed);
    cpu.nmi_top.store(ist + 2 * gdt::AP_IST_STACK_SIZE, Ordering::Relaxed);
    cpu.tables.store(tables, Ordering::Relaxed);
    cpu.vmxon_region.store(vmxon, Ordering::Relaxed);
    cpu.state.store(state::STARTING, Ordering::Release);
    CPU_SLOTS.store(index as u32 + 1, Ordering::Release);

    super::memory::copy_to(TRAMPOLINE, code);
    super::memory::write_u64(parameter(&raw const ap_trampoline_cr3), cpu::read_cr3());
    super::memory::write_u64(parameter(&raw const ap_trampoline_stack), stack + stack_frames * 4096);
    super::memory::write_u64(parameter(&raw const ap_trampoline_entry), ap_entry as *const () as u64);
    super::memory::write_u64(parameter(&raw const ap_trampoline_argument), index as u64);

    let ticks = |microseconds: u64| tsc_khz.max(1).saturating_mul(microseconds) / 1000;
    let wait = |microseconds: u64| {
        let deadline = cpu::rdtsc().saturating_add(ticks(microseconds));
        while cpu::rdtsc() < deadline && cpu.state.load(Ordering::Acquire) == state::STARTING {
            core::hint::spin_loop();
        }
    };
    let vector = (TRAMPOLINE >> 12) as u32;
    if !lapic::send_ipi(apic_id, lapic::ICR_INIT, ticks(10_000)) {
        cpu.state.store(state::FAILED, Ordering::Release);
        return Err("the INIT IPI was not sent");
    }
    let deadline = cpu::rdtsc().saturating_add(ticks(10_000));
    while cpu::rdtsc() < deadline {
        core::hint::spin_loop();
    }
    for _ in 0..2 {
        if cpu.state.load(Ordering::Acquire) != state::STARTING {
            break;
        }
        lapic::send_ipi(apic_id, lapic::ICR_STARTUP | vector, ticks(10_000));
        wait(200);
    }
    // Up to a second for the AP to set itself up.
    wait(1_000_000);
    match cpu.state.load(Ordering::Acquire) {
        state::VMX_ROOT_IDLE => Ok(index),
        state::STARTING => {
            // It may still run later: leave its slot (and frames) to it.
            Err("no answer to INIT-SIPI-SIPI")
        }
        _ => Err("it failed its checks (VMX capabilities or VMXON)"),
    }
}

/// Rust entry of an AP, on its own stack, from the trampoline, with
/// interrupts off. Never returns.
extern "C" fn ap_entry(index: u64) -> ! {
    let Some(cpu) = CPUS.get(index as usize) else { cpu::halt_forever() };
    let tables = cpu.tables.load(Ordering::Relaxed);
    // SAFETY: the boot CPU gave this AP these frames and stacks for good
    // (start_ap) and nothing else uses them.
    unsafe {
        gdt::init_ap(tables, cpu.double_fault_top.load(Ordering::Relaxed), cpu.nmi_top.load(Ordering::Relaxed));
    }
    claim_slot(index as usize, tables, tables + gdt::AP_TSS_OFFSET);
    idt::load_on_ap();
    let apic_id = lapic::init_ap();
    let ready = apic_id == cpu.apic_id.load(Ordering::Relaxed)
        && BOOT_CAPABILITIES.get().is_some_and(|boot| match vmx::probe() {
            Ok(mine) => vmx::same_capabilities(boot, &mine),
            Err(_) => false,
        })
        && BOOT_CAPABILITIES
            .get()
            .is_some_and(|boot| vmx::enable(boot, cpu.vmxon_region.load(Ordering::Relaxed)).is_ok());
    if !ready {
        cpu.state.store(state::FAILED, Ordering::Release);
        cpu::halt_forever();
    }
    cpu.state.store(state::VMX_ROOT_IDLE, Ordering::Release);
    while !SCHEDULING.load(Ordering::Acquire) {
        // SAFETY: interrupts are enabled only across HLT, so the CPU sleeps
        // until the boot CPU's kick (or another interrupt) arrives; its
        // handler returns here. STI's shadow covers HLT.
        unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
    }
    cpu.state.store(state::RUNNING_DOMAINS, Ordering::Release);
    crate::hypervisor::run()
}

/// The CPUs running hv as a mask, bit i = CPU slot i (the boot CPU and
/// every AP in VMX root): what `DomCtlOp::SetAffinity` keeps of a mask.
pub fn online_mask() -> u64 {
    CPUS.iter()
        .enumerate()
        .filter(|(_, cpu)| matches!(cpu.state.load(Ordering::Acquire), state::VMX_ROOT_IDLE | state::RUNNING_DOMAINS))
        .fold(0, |mask, (index, _)| mask | 1 << index)
}
