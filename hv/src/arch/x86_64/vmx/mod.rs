//! Intel VT-x: capability checks, VMXON, and the vCPU.
//!
//! This is the narrow boundary between generic hv code and VMX: generic code
//! creates a [`Vcpu`], calls [`Vcpu::run`] and gets back an [`Exit`]; it reads
//! and writes guest state through `Vcpu` methods. An AMD SVM backend would
//! offer the same interface over a VMCB.

mod enter;
pub mod vmcs;

use core::arch::asm;

use abi::info::feature;
use bitflags::bitflags;
use hvcore::exits::Exit;
use hvcore::platform::VcpuSetup;

pub use self::enter::GuestRegisters;
use self::vmcs::Field;
use super::cpu::{self, msr, rdmsr};
use super::{gdt, idt};

bitflags! {
    /// Pin-based VM-execution controls (SDM Vol. 3C 25.6.1).
    #[derive(Clone, Copy, Debug)]
    pub struct PinControls: u32 {
        /// External interrupts cause VM exits.
        const EXTERNAL_INTERRUPT_EXITING = 1 << 0;
        /// NMIs cause VM exits.
        const NMI_EXITING = 1 << 3;
        /// The VMX-preemption timer counts down in non-root mode and exits at 0.
        const PREEMPTION_TIMER = 1 << 6;
    }

    /// Primary processor-based VM-execution controls (SDM Vol. 3C 25.6.2).
    #[derive(Clone, Copy, Debug)]
    pub struct PrimaryControls: u32 {
        /// Exit as soon as the guest can take an external interrupt.
        const INTERRUPT_WINDOW_EXITING = 1 << 2;
        /// HLT causes a VM exit.
        const HLT_EXITING = 1 << 7;
        /// MWAIT causes a VM exit.
        const MWAIT_EXITING = 1 << 10;
        /// RDPMC causes a VM exit (performance counters are hv's, and are
        /// not switched between domains).
        const RDPMC_EXITING = 1 << 11;
        /// MOV to CR8 causes a VM exit (the TPR is virtualized per vCPU).
        const CR8_LOAD_EXITING = 1 << 19;
        /// MOV from CR8 causes a VM exit.
        const CR8_STORE_EXITING = 1 << 20;
        /// MOV to or from a debug register exits. hv leaves it off: every
        /// vCPU has its own debug registers (DR7 in the VMCS, DR0-3 and DR6
        /// switched with the other processor state), so guests use them
        /// natively. Not a default1 bit (SDM Vol. 3D A.3.2), so any CPU
        /// lets hv clear it.
        const MOV_DR_EXITING = 1 << 23;
        /// Every I/O instruction exits (ignored when I/O bitmaps are used).
        const UNCONDITIONAL_IO_EXITING = 1 << 24;
        /// I/O bitmaps decide which ports exit.
        const USE_IO_BITMAPS = 1 << 25;
        /// MSR bitmaps decide which MSR accesses exit.
        const USE_MSR_BITMAPS = 1 << 28;
        /// MONITOR causes a VM exit.
        const MONITOR_EXITING = 1 << 29;
        /// The secondary controls are in effect.
        const SECONDARY_CONTROLS = 1 << 31;
    }

    /// Secondary processor-based VM-execution controls (SDM Vol. 3C 25.6.2).
    #[derive(Clone, Copy, Debug)]
    pub struct SecondaryControls: u32 {
        /// Guest-physical addresses are translated by EPT.
        const ENABLE_EPT = 1 << 1;
        /// RDTSCP does not cause #UD in the guest.
        const ENABLE_RDTSCP = 1 << 3;
        /// TLB entries are tagged with the VPID.
        const ENABLE_VPID = 1 << 5;
        /// WBINVD causes a VM exit.
        const WBINVD_EXITING = 1 << 6;
        /// The guest may run unpaged or in real mode.
        const UNRESTRICTED_GUEST = 1 << 7;
        /// INVPCID does not cause #UD in the guest.
        const ENABLE_INVPCID = 1 << 12;
    }

    /// VM-exit controls (SDM Vol. 3C 25.7.1).
    #[derive(Clone, Copy, Debug)]
    pub struct ExitControls: u32 {
        /// Save DR7 and IA32_DEBUGCTL.
        const SAVE_DEBUG_CONTROLS = 1 << 2;
        /// The host runs in 64-bit mode after the exit.
        const HOST_ADDRESS_SPACE_SIZE = 1 << 9;
        /// The CPU acknowledges the interrupt and stores its vector on exit.
        const ACKNOWLEDGE_INTERRUPT_ON_EXIT = 1 << 15;
        /// Save the guest's IA32_PAT.
        const SAVE_PAT = 1 << 18;
        /// Load the host's IA32_PAT.
        const LOAD_PAT = 1 << 19;
        /// Save the guest's IA32_EFER.
        const SAVE_EFER = 1 << 20;
        /// Load the host's IA32_EFER.
        const LOAD_EFER = 1 << 21;
        /// Save the preemption timer's remaining value, so a slice keeps
        /// counting down across VM exits.
        const SAVE_PREEMPTION_TIMER = 1 << 22;
    }

    /// VM-entry controls (SDM Vol. 3C 25.8.1).
    #[derive(Clone, Copy, Debug)]
    pub struct EntryControls: u32 {
        /// Load DR7 and IA32_DEBUGCTL.
        const LOAD_DEBUG_CONTROLS = 1 << 2;
        /// The guest is in IA-32e mode after entry.
        const IA32E_MODE_GUEST = 1 << 9;
        /// Load the guest's IA32_PAT.
        const LOAD_PAT = 1 << 14;
        /// Load the guest's IA32_EFER.
        const LOAD_EFER = 1 << 15;
    }
}

/// IA32_FEATURE_CONTROL bits (SDM Vol. 3C 24.7).
const FEATURE_CONTROL_LOCKED: u64 = 1 << 0;
const FEATURE_CONTROL_VMX_OUTSIDE_SMX: u64 = 1 << 2;
/// CR4.VMXE.
const CR4_VMXE: u64 = 1 << 13;
/// CR4.OSFXSR.
const CR4_OSFXSR: u64 = 1 << 9;
/// CR4.OSXSAVE: XSETBV/XGETBV work (hv needs it to load a guest's XCR0).
const CR4_OSXSAVE: u64 = 1 << 18;
/// CR4.PKE: protection keys (PKRU, which WRPKRU changes without an exit).
const CR4_PKE: u64 = 1 << 22;
/// The CR4 bits hv owns: a guest MOV to CR4 that would set one exits and
/// gets #GP (SDM 25.6.6); the read shadow shows them clear.
const CR4_OWNED_BY_HV: u64 = CR4_VMXE | CR4_PKE;

/// The x87/SSE state of a vCPU in FXSAVE format (SDM Vol. 1 10.5.1).
#[repr(C, align(16))]
pub struct FpuState([u8; 512]);

impl FpuState {
    /// The state after FNINIT with SSE reset: FCW 0x37F, MXCSR 0x1F80.
    pub const fn initial() -> FpuState {
        let mut bytes = [0u8; 512];
        bytes[0] = 0x7f;
        bytes[1] = 0x03;
        bytes[24] = 0x80;
        bytes[25] = 0x1f;
        FpuState(bytes)
    }
}

/// The debug registers of a vCPU that the VMCS does not hold (SDM Vol. 3B
/// 18.2): the breakpoint addresses DR0-DR3 and the status DR6.
struct DebugRegisters {
    addresses: [u64; 4],
    status: u64,
}

impl DebugRegisters {
    /// The values after reset.
    const fn initial() -> DebugRegisters {
        DebugRegisters { addresses: [0; 4], status: hvcore::cpu_state::debug::DR6_INITIAL }
    }

    /// Reads the CPU's DR0-DR3 and DR6.
    fn save(&mut self) {
        let [dr0, dr1, dr2, dr3] = &mut self.addresses;
        // SAFETY: MOV from a debug register at CPL 0 only reads it (CR4.DE
        // does not matter for DR0-3 and DR6, and hv never sets DR7.GD).
        unsafe {
            asm!(
                "mov {}, dr0", "mov {}, dr1", "mov {}, dr2", "mov {}, dr3", "mov {}, dr6",
                out(reg) *dr0, out(reg) *dr1, out(reg) *dr2, out(reg) *dr3, out(reg) self.status,
                options(nostack, nomem, preserves_flags),
            )
        };
    }

    /// Loads DR0-DR3 and DR6 into the CPU.
    fn restore(&self) {
        let [dr0, dr1, dr2, dr3] = self.addresses;
        // SAFETY: the values are the initial ones or what `save` read from
        // the CPU, so DR6's upper half is 0 (no #GP, SDM Vol. 2 MOV DR).
        // The addresses arm nothing while hv runs: a breakpoint needs its
        // enable bit in DR7, and DR7 is 0x400 (all disabled) in VMX root:
        // every VM exit loads 0x400 into it (SDM Vol. 3C 28.5.1; the
        // guest's DR7 stays in the VMCS, 28.3.1) and `enable` set it at
        // boot. IA32_DEBUGCTL is likewise 0 after an exit (no branch
        // trap), so hv never takes a #DB from a guest's debug registers.
        unsafe {
            asm!(
                "mov dr0, {}", "mov dr1, {}", "mov dr2, {}", "mov dr3, {}", "mov dr6, {}",
                in(reg) dr0, in(reg) dr1, in(reg) dr2, in(reg) dr3, in(reg) self.status,
                options(nostack, nomem, preserves_flags),
            )
        };
    }
}

/// IA32_VMX_EPT_VPID_CAP bits (SDM Vol. 3D A.10).
mod ept_vpid_cap {
    pub const PAGE_WALK_4: u64 = 1 << 6;
    pub const WRITE_BACK: u64 = 1 << 14;
    pub const PAGES_2M: u64 = 1 << 16;
    pub const INVEPT: u64 = 1 << 20;
    pub const ACCESSED_DIRTY: u64 = 1 << 21;
    pub const INVEPT_SINGLE: u64 = 1 << 25;
    pub const INVEPT_ALL: u64 = 1 << 26;
    pub const INVVPID: u64 = 1 << 32;
    pub const INVVPID_SINGLE: u64 = 1 << 41;
    pub const INVVPID_ALL: u64 = 1 << 42;
}

/// What VMX offers on this CPU and the control values hv will use.
#[derive(Clone, Copy, Debug)]
pub struct Capabilities {
    pub revision: u32,
    pub pin: u32,
    pub primary: u32,
    pub secondary: u32,
    pub exit: u32,
    pub entry: u32,
    pub ept_vpid: u64,
    /// The preemption timer counts down once every 2^rate TSC ticks.
    pub preemption_timer_rate: u8,
    /// [`abi::info::feature`] bits.
    pub features: u64,
    /// The preemption timer keeps counting across exits (else hv must check
    /// the slice's end itself).
    pub timer_saved_on_exit: bool,
    /// The XCR0 bits the CPU supports (CPUID.(EAX=0DH,ECX=0):EDX:EAX), 0
    /// without XSAVE. hv lets a guest set only some of them (see
    /// `hvcore::cpu_state::xsetbv`) and loads each vCPU's XCR0 on a switch.
    pub xcr0_supported: u64,
    /// Whether the CPU has IA32_TSC_AUX (RDTSCP): switched per vCPU, and
    /// refused to guests without it.
    pub tsc_aux: bool,
    cr0_fixed0: u64,
    cr0_fixed1: u64,
    cr4_fixed0: u64,
    cr4_fixed1: u64,
}

/// Whether another CPU's VMX capabilities are the boot CPU's (so that
/// the controls hv computed once hold on it): revision, controls, EPT/VPID,
/// features, XCR0 and the CR0/CR4 fixed bits.
pub fn same_capabilities(a: &Capabilities, b: &Capabilities) -> bool {
    (a.revision, a.pin, a.primary, a.secondary, a.exit, a.entry, a.ept_vpid, a.preemption_timer_rate)
        == (b.revision, b.pin, b.primary, b.secondary, b.exit, b.entry, b.ept_vpid, b.preemption_timer_rate)
        && (a.features, a.timer_saved_on_exit, a.xcr0_supported, a.tsc_aux)
            == (b.features, b.timer_saved_on_exit, b.xcr0_supported, b.tsc_aux)
        && (a.cr0_fixed0, a.cr0_fixed1, a.cr4_fixed0, a.cr4_fixed1)
            == (b.cr0_fixed0, b.cr0_fixed1, b.cr4_fixed0, b.cr4_fixed1)
}

impl Capabilities {
    /// Nothing: the value before `probe` ran.
    pub const NONE: Capabilities = Capabilities {
        revision: 0,
        pin: 0,
        primary: 0,
        secondary: 0,
        exit: 0,
        entry: 0,
        ept_vpid: 0,
        preemption_timer_rate: 0,
        features: 0,
        timer_saved_on_exit: false,
        xcr0_supported: 0,
        tsc_aux: false,
        cr0_fixed0: 0,
        cr0_fixed1: 0,
        cr4_fixed0: 0,
        cr4_fixed1: 0,
    };
}

/// Combines desired control bits with what a capability MSR allows
/// (SDM Vol. 3D A.3): low half = bits that must be 1, high half = bits that may be 1.
fn adjust(desired: u32, capability: u64) -> u32 {
    (desired | capability as u32) & (capability >> 32) as u32
}

/// Checks everything hv needs from VT-x. On failure returns one sentence
/// naming what is missing.
pub fn probe() -> Result<Capabilities, &'static str> {
    let cpu_features = cpu::features();
    if !cpu_features.vmx {
        return Err("VT-x (VMX) is not supported by this CPU");
    }
    // SAFETY: IA32_FEATURE_CONTROL exists on every CPU with CPUID.1:ECX.VMX.
    let control = unsafe { rdmsr(msr::IA32_FEATURE_CONTROL) };
    if control & FEATURE_CONTROL_LOCKED != 0 && control & FEATURE_CONTROL_VMX_OUTSIDE_SMX == 0 {
        return Err("VT-x is disabled by the firmware (IA32_FEATURE_CONTROL is locked with VMX off)");
    }
    // SAFETY: all VMX capability MSRs exist when CPUID reports VMX; the true
    // control MSRs exist when IA32_VMX_BASIC bit 55 is set (checked).
    let (basic, pin_cap, primary_cap, exit_cap, entry_cap, secondary_cap, ept_vpid, misc) = unsafe {
        let basic = rdmsr(msr::IA32_VMX_BASIC);
        let true_controls = basic & (1 << 55) != 0;
        let pick = |plain, truly| if true_controls { truly } else { plain };
        (
            basic,
            rdmsr(pick(msr::IA32_VMX_PINBASED_CTLS, msr::IA32_VMX_TRUE_PINBASED_CTLS)),
            rdmsr(pick(msr::IA32_VMX_PROCBASED_CTLS, msr::IA32_VMX_TRUE_PROCBASED_CTLS)),
            rdmsr(pick(msr::IA32_VMX_EXIT_CTLS, msr::IA32_VMX_TRUE_EXIT_CTLS)),
            rdmsr(pick(msr::IA32_VMX_ENTRY_CTLS, msr::IA32_VMX_TRUE_ENTRY_CTLS)),
            rdmsr(msr::IA32_VMX_PROCBASED_CTLS2),
            rdmsr(msr::IA32_VMX_EPT_VPID_CAP),
            rdmsr(msr::IA32_VMX_MISC),
        )
    };

    let primary = adjust(
        (PrimaryControls::HLT_EXITING
            | PrimaryControls::USE_IO_BITMAPS
            | PrimaryControls::USE_MSR_BITMAPS
            | PrimaryControls::MWAIT_EXITING
            | PrimaryControls::MONITOR_EXITING
            | PrimaryControls::RDPMC_EXITING
            | PrimaryControls::CR8_LOAD_EXITING
            | PrimaryControls::CR8_STORE_EXITING
            | PrimaryControls::SECONDARY_CONTROLS)
            .bits(),
        primary_cap,
    );
    let isolating =
        (PrimaryControls::RDPMC_EXITING | PrimaryControls::CR8_LOAD_EXITING | PrimaryControls::CR8_STORE_EXITING)
            .bits();
    if primary & isolating != isolating {
        return Err("VT-x cannot intercept MOV CR8 or RDPMC (needed to keep domains apart)");
    }
    if primary & PrimaryControls::MOV_DR_EXITING.bits() != 0 {
        return Err("VT-x cannot let guests use debug registers without exits");
    }
    if primary & PrimaryControls::SECONDARY_CONTROLS.bits() == 0 {
        return Err("VT-x lacks secondary processor controls (needed for EPT)");
    }
    if primary & PrimaryControls::USE_IO_BITMAPS.bits() == 0 || primary & PrimaryControls::USE_MSR_BITMAPS.bits() == 0 {
        return Err("VT-x lacks I/O or MSR bitmaps");
    }
    let secondary = adjust(
        (SecondaryControls::ENABLE_EPT
            | SecondaryControls::ENABLE_VPID
            | SecondaryControls::UNRESTRICTED_GUEST
            | SecondaryControls::ENABLE_RDTSCP
            | SecondaryControls::WBINVD_EXITING
            | SecondaryControls::ENABLE_INVPCID)
            .bits(),
        secondary_cap,
    );
    if secondary & SecondaryControls::ENABLE_EPT.bits() == 0 {
        return Err("VT-x lacks EPT (extended page tables)");
    }
    if secondary & SecondaryControls::UNRESTRICTED_GUEST.bits() == 0 {
        return Err("VT-x lacks unrestricted guest");
    }
    // All-context INVEPT: what a CPU owes after a TLB shootdown (smp).
    let needed_ept =
        ept_vpid_cap::PAGE_WALK_4 | ept_vpid_cap::WRITE_BACK | ept_vpid_cap::INVEPT | ept_vpid_cap::INVEPT_ALL;
    if ept_vpid & needed_ept != needed_ept {
        return Err("EPT lacks 4-level walks, write-back memory or all-context INVEPT");
    }
    let vpid_usable = secondary & SecondaryControls::ENABLE_VPID.bits() != 0
        && ept_vpid & ept_vpid_cap::INVVPID != 0
        && ept_vpid & (ept_vpid_cap::INVVPID_SINGLE | ept_vpid_cap::INVVPID_ALL) != 0;
    let secondary = if vpid_usable { secondary } else { secondary & !SecondaryControls::ENABLE_VPID.bits() };

    let pin = adjust(
        (PinControls::EXTERNAL_INTERRUPT_EXITING | PinControls::NMI_EXITING | PinControls::PREEMPTION_TIMER).bits(),
        pin_cap,
    );
    if pin & PinControls::EXTERNAL_INTERRUPT_EXITING.bits() == 0 {
        return Err("VT-x cannot intercept external interrupts");
    }
    let exit = adjust(
        (ExitControls::HOST_ADDRESS_SPACE_SIZE
            | ExitControls::ACKNOWLEDGE_INTERRUPT_ON_EXIT
            | ExitControls::SAVE_DEBUG_CONTROLS
            | ExitControls::SAVE_EFER
            | ExitControls::LOAD_EFER
            | ExitControls::SAVE_PAT
            | ExitControls::LOAD_PAT
            | ExitControls::SAVE_PREEMPTION_TIMER)
            .bits(),
        exit_cap,
    );
    let entry = adjust(
        (EntryControls::IA32E_MODE_GUEST
            | EntryControls::LOAD_DEBUG_CONTROLS
            | EntryControls::LOAD_EFER
            | EntryControls::LOAD_PAT)
            .bits(),
        entry_cap,
    );
    let needed_exit = (ExitControls::HOST_ADDRESS_SPACE_SIZE
        | ExitControls::ACKNOWLEDGE_INTERRUPT_ON_EXIT
        | ExitControls::SAVE_EFER
        | ExitControls::LOAD_EFER)
        .bits();
    let needed_entry = (EntryControls::IA32E_MODE_GUEST | EntryControls::LOAD_EFER).bits();
    if exit & needed_exit != needed_exit || entry & needed_entry != needed_entry {
        return Err("VT-x cannot switch IA32_EFER or enter 64-bit guests");
    }
    // DR7 and IA32_DEBUGCTL live in the VMCS: each vCPU's are loaded on
    // entry and saved on exit (SDM 28.3.1, 27.3.2.1); without these
    // controls one guest's DR7 would reach the next.
    if exit & ExitControls::SAVE_DEBUG_CONTROLS.bits() == 0 || entry & EntryControls::LOAD_DEBUG_CONTROLS.bits() == 0 {
        return Err("VT-x cannot switch DR7 and IA32_DEBUGCTL");
    }

    let mut features = feature::EPT | feature::UNRESTRICTED_GUEST | feature::IO_BITMAPS | feature::MSR_BITMAPS;
    if secondary & SecondaryControls::ENABLE_VPID.bits() != 0 {
        features |= feature::VPID;
    }
    if pin & PinControls::PREEMPTION_TIMER.bits() != 0 {
        features |= feature::PREEMPTION_TIMER;
    }
    if ept_vpid & ept_vpid_cap::ACCESSED_DIRTY != 0 {
        features |= feature::EPT_ACCESSED_DIRTY;
    }
    if ept_vpid & ept_vpid_cap::PAGES_2M != 0 {
        features |= feature::EPT_2M_PAGES;
    }
    // The XCR0 bits the CPU supports (leaf 0xD), 0 without XSAVE.
    let xcr0_supported = cpu_features.xcr0_supported;
    // SAFETY: the fixed-bit MSRs exist whenever VMX does.
    let (cr0_fixed0, cr0_fixed1, cr4_fixed0, cr4_fixed1) = unsafe {
        (
            rdmsr(msr::IA32_VMX_CR0_FIXED0),
            rdmsr(msr::IA32_VMX_CR0_FIXED1),
            rdmsr(msr::IA32_VMX_CR4_FIXED0),
            rdmsr(msr::IA32_VMX_CR4_FIXED1),
        )
    };
    Ok(Capabilities {
        revision: basic as u32 & 0x7fff_ffff,
        pin,
        primary,
        secondary,
        exit,
        entry,
        ept_vpid,
        preemption_timer_rate: (misc & 0x1f) as u8,
        features,
        timer_saved_on_exit: exit & ExitControls::SAVE_PREEMPTION_TIMER.bits() != 0,
        xcr0_supported,
        tsc_aux: cpu_features.rdtscp,
        cr0_fixed0,
        cr0_fixed1,
        cr4_fixed0,
        cr4_fixed1,
    })
}

/// Executes a VMX instruction with a memory operand and decodes RFLAGS
/// (SDM Vol. 3C 31.2): CF = VMfailInvalid, ZF = VMfailValid.
macro_rules! vmx_instruction {
    ($mnemonic:literal, $operand:expr) => {{
        let operand: u64 = $operand;
        let failed: u8;
        // SAFETY: the callers below pass the physical address of a
        // 4 KiB-aligned region hv owns and has initialised as the SDM requires.
        unsafe {
            asm!(
                concat!($mnemonic, " qword ptr [{operand}]"),
                "setbe {failed}",
                operand = in(reg) &operand,
                failed = out(reg_byte) failed,
                options(nostack),
            );
        }
        failed == 0
    }};
}

/// Turns VMX on for this CPU: fixes CR0/CR4 as VMX requires and executes
/// VMXON on `region` (a zeroed page hv gives up for good).
pub fn enable(capabilities: &Capabilities, region: u64) -> Result<(), &'static str> {
    // SAFETY: reading IA32_FEATURE_CONTROL; writing it only when it is not
    // locked, to turn VMX on outside SMX and lock it (SDM Vol. 3C 24.7).
    unsafe {
        let control = rdmsr(msr::IA32_FEATURE_CONTROL);
        if control & FEATURE_CONTROL_LOCKED == 0 {
            cpu::wrmsr(msr::IA32_FEATURE_CONTROL, control | FEATURE_CONTROL_LOCKED | FEATURE_CONTROL_VMX_OUTSIDE_SMX);
        }
    }
    let cr0 = (cpu::read_cr0() | capabilities.cr0_fixed0) & capabilities.cr0_fixed1;
    // CR4.OSFXSR: FXSAVE/FXRSTOR then move the SSE registers too, which hv
    // switches between domains (hv itself is built without SSE).
    // CR4.OSXSAVE where the CPU has XSAVE: hv loads each vCPU's XCR0.
    let osxsave = if capabilities.xcr0_supported != 0 { CR4_OSXSAVE } else { 0 };
    let cr4 = (cpu::read_cr4() | capabilities.cr4_fixed0 | CR4_VMXE | CR4_OSFXSR | osxsave) & capabilities.cr4_fixed1;
    // SAFETY: the fixed bits only force NE/PE/PG (already on) in CR0 and
    // VMXE in CR4, which hv's own code does not depend on.
    unsafe {
        cpu::write_cr0(cr0);
        cpu::write_cr4(cr4);
    }
    // No breakpoint armed in VMX root from the start, before the first VM
    // exit does it (SDM Vol. 3C 28.5.1), whatever the loader left in DR7:
    // guests' DR0-3 are loaded while hv runs (see `DebugRegisters`).
    // SAFETY: DR7 = 0x400 disables every breakpoint; hv uses none.
    unsafe {
        asm!("mov dr7, {}", in(reg) hvcore::cpu_state::debug::DR7_INITIAL, options(nostack, nomem, preserves_flags))
    };
    // SAFETY: the region is hv-owned; the first word must hold the revision id.
    unsafe { core::ptr::write_volatile(region as *mut u32, capabilities.revision) };
    if vmx_instruction!("vmxon", region) { Ok(()) } else { Err("VMXON failed") }
}

/// The EPT pointer of the tables at `root` (SDM 25.6.11): write-back,
/// 4-level walk, accessed/dirty flags where the CPU offers them.
pub fn ept_pointer(capabilities: &Capabilities, root: u64) -> u64 {
    let accessed_dirty = if capabilities.features & feature::EPT_ACCESSED_DIRTY != 0 { 1 << 6 } else { 0 };
    root | 6 | (3 << 3) | accessed_dirty
}

/// Invalidates EPT-derived translations for one EPT pointer (SDM Vol. 3C 31.3, INVEPT).
pub fn invalidate_ept(capabilities: &Capabilities, ept_pointer: u64) {
    let descriptor: [u64; 2] = [ept_pointer, 0];
    let kind: u64 = if capabilities.ept_vpid & ept_vpid_cap::INVEPT_SINGLE != 0 { 1 } else { 2 };
    // SAFETY: INVEPT only drops cached translations; the type was checked
    // against the capability MSR.
    unsafe {
        asm!("invept {kind}, [{descriptor}]", kind = in(reg) kind, descriptor = in(reg) &descriptor, options(nostack))
    }
}

/// Invalidates the EPT-derived translations of every EPT pointer
/// (all-context INVEPT, which `probe` requires).
pub fn invalidate_all_ept() {
    let descriptor: [u64; 2] = [0, 0];
    // SAFETY: INVEPT only drops cached translations; `probe` checked that
    // the CPU supports the all-context type (2).
    unsafe {
        asm!("invept {kind}, [{descriptor}]", kind = in(reg) 2u64, descriptor = in(reg) &descriptor, options(nostack))
    }
}

/// Invalidates TLB entries tagged with `vpid` (SDM Vol. 3C 31.3, INVVPID).
pub fn invalidate_vpid(capabilities: &Capabilities, vpid: u16) {
    if capabilities.features & feature::VPID == 0 {
        return;
    }
    let descriptor: [u64; 2] = [vpid as u64, 0];
    let kind: u64 = if capabilities.ept_vpid & ept_vpid_cap::INVVPID_SINGLE != 0 { 1 } else { 2 };
    // SAFETY: INVVPID only drops cached translations; the type was checked
    // against the capability MSR.
    unsafe {
        asm!("invvpid {kind}, [{descriptor}]", kind = in(reg) kind, descriptor = in(reg) &descriptor, options(nostack))
    }
}

/// NMIs that arrived while a guest ran (NMI exiting), since boot.
static NMI_EXITS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Counts an NMI exit; returns the count including this one.
pub fn count_nmi() -> u64 {
    NMI_EXITS.fetch_add(1, core::sync::atomic::Ordering::Relaxed) + 1
}

/// The guest GDT layout the domain builder writes (selectors used at entry).
pub mod guest_gdt {
    /// 64-bit code.
    pub const CODE: u16 = 0x08;
    /// Data.
    pub const DATA: u16 = 0x10;
    /// Task-state segment.
    pub const TASK: u16 = 0x18;
    /// The descriptors, as the ABI documents them for every domain.
    pub const DESCRIPTORS: [u64; 5] = abi::domctl::INITIAL_GDT;
}

/// A virtual CPU: one VMCS and the registers the VMCS does not hold.
///
/// Every method makes this vCPU's VMCS current first, so generic code never
/// has to track which VMCS the CPU has loaded.
pub struct Vcpu {
    /// Its domain's id and its own, for CPUID.
    pub ids: (u32, u32),
    vmcs_region: u64,
    ept_pointer: u64,
    vpid: u16,
    primary_controls: u32,
    launched: bool,
    /// General-purpose registers, valid while the vCPU is not running.
    pub registers: GuestRegisters,
    /// x87/SSE registers and CR2 while another domain runs: state the VMCS
    /// does not switch, so hv does (see `save_processor_state`).
    fpu: FpuState,
    cr2: u64,
    /// IA32_KERNEL_GS_BASE, which SWAPGS changes without an exit: switched
    /// with the FPU state (see `save_processor_state`).
    kernel_gs_base: u64,
    /// The SYSCALL MSRs (STAR, LSTAR, CSTAR, FMASK) and TSC_AUX, which the
    /// guest writes through hv (`hvcore::exits::GuestMsr`) and SYSCALL and
    /// RDTSCP use without exits: switched with the FPU state.
    syscall_msrs: [u64; 5],
    /// How many of `SWITCHED_MSRS` the CPU has: 5 with TSC_AUX, else 4.
    switched_msrs: usize,
    /// XCR0 as the guest set it with XSETBV (validated), loaded on a switch.
    xcr0: u64,
    /// DR0-DR3 and DR6, which the guest moves to and from without exits:
    /// switched with the FPU state (see `save_processor_state`). DR7 is
    /// in the VMCS.
    debug: DebugRegisters,
    /// Whether the CPU has XSAVE (so XCR0 exists and hv loads it).
    xsave: bool,
    /// The virtual task priority (CR8): MOV to and from CR8 exit and read
    /// or write this; the local APIC's TPR is never touched.
    cr8: u8,
    /// The CPU that last checked it out ([`NEVER_RAN`]: none yet).
    last_cpu: usize,
}

/// `Vcpu::last_cpu` of a vCPU that never ran.
const NEVER_RAN: usize = usize::MAX;

/// The exit for a VMLAUNCH/VMRESUME that failed with `status` (1 =
/// VMfailInvalid, 2 = VMfailValid); kept out of line so that the hot path
/// after an exit stays short.
#[cold]
#[inline(never)]
fn launch_failed(status: u64) -> Exit {
    let error = if status == 2 { vmcs::read(Field::InstructionError) as u32 } else { 0 };
    Exit::LaunchFailed { error }
}

/// Writes the real-mode state a Start-up IPI gives a CPU (SDM Vol. 3A
/// 10.4.3): CS = `entry` >> 4 with base `entry`, IP 0; the other data
/// segments 0; 64 KiB limits, 16-bit; GDTR and IDTR base 0, limit 0xffff.
/// The guest checks of an unrestricted guest with CR0.PE clear (SDM Vol.
/// 3C 27.3.1.2): read/write data and execute/read code segments of DPL 0,
/// a busy TSS, no LDT (the TSS and LDT as `Vcpu::new` set them).
fn real_mode_segments(entry: u64) {
    use vmcs::write;
    write(Field::GuestCsSelector, entry >> 4);
    write(Field::GuestCsBase, entry);
    write(Field::GuestCsLimit, 0xffff);
    write(Field::GuestCsAccessRights, REAL_CODE_ACCESS);
    write(Field::GuestRip, 0);
    for (selector, base, limit, access) in [
        (Field::GuestSsSelector, Field::GuestSsBase, Field::GuestSsLimit, Field::GuestSsAccessRights),
        (Field::GuestDsSelector, Field::GuestDsBase, Field::GuestDsLimit, Field::GuestDsAccessRights),
        (Field::GuestEsSelector, Field::GuestEsBase, Field::GuestEsLimit, Field::GuestEsAccessRights),
        (Field::GuestFsSelector, Field::GuestFsBase, Field::GuestFsLimit, Field::GuestFsAccessRights),
        (Field::GuestGsSelector, Field::GuestGsBase, Field::GuestGsLimit, Field::GuestGsAccessRights),
    ] {
        write(selector, 0);
        write(base, 0);
        write(limit, 0xffff);
        write(access, REAL_DATA_ACCESS);
    }
    for (base, limit) in [(Field::GuestGdtrBase, Field::GuestGdtrLimit), (Field::GuestIdtrBase, Field::GuestIdtrLimit)]
    {
        write(base, 0);
        write(limit, 0xffff);
    }
}

/// Guest segment access rights (SDM Vol. 3C 25.4.1, Table 25-2).
/// The MSRs switched with a vCPU's other state, in `Vcpu::syscall_msrs`
/// order (TSC_AUX last: only on CPUs with RDTSCP).
const SWITCHED_MSRS: [u32; 5] = [msr::IA32_STAR, msr::IA32_LSTAR, msr::IA32_CSTAR, msr::IA32_FMASK, msr::IA32_TSC_AUX];

const CODE64_ACCESS: u64 = 0xa09b;
/// 32-bit code, execute/read, accessed, present, 4 KiB granular (PVH entry).
const CODE32_ACCESS: u64 = 0xc09b;
/// CR0's protection-enable and paging bits.
const CR0_PE: u64 = 1;
const CR0_PG: u64 = 1 << 31;
/// The CR0 bits hv owns: NE, which VMX fixes to 1 (IA32_VMX_CR0_FIXED0).
const CR0_OWNED_BY_HV: u64 = hvcore::cpu_state::cr0::NE;
/// Guest CR0 at a PVH entry: PE | ET | NE, paging off (the guest sees NE
/// clear, as Xen's PVH entry state says).
const PVH_CR0: u64 = 0x0000_0031;
const DATA_ACCESS: u64 = 0xc093;
/// Real mode's 16-bit segments, byte granular: code execute/read,
/// accessed, present; data read/write, accessed, present.
const REAL_CODE_ACCESS: u64 = 0x9b;
const REAL_DATA_ACCESS: u64 = 0x93;
const TASK_BUSY_ACCESS: u64 = 0x8b;
const UNUSABLE: u64 = 1 << 16;
/// Guest EFER: LME | LMA | NXE.
const GUEST_EFER: u64 = (1 << 8) | (1 << 10) | (1 << 11);
/// Guest CR0: PE | MP | ET | NE | WP | PG.
const GUEST_CR0: u64 = 0x8005_0033;
/// Guest CR4: PAE (VMXE is added as a fixed bit and hidden by the shadow).
const GUEST_CR4: u64 = 1 << 5;
/// The power-on PAT (SDM Vol. 3A 13.12.4).
const DEFAULT_PAT: u64 = 0x0007_0406_0007_0406;

impl Vcpu {
    /// Builds a VMCS in the zeroed page `vmcs_region` for a 64-bit guest
    /// started as `setup` says (its bitmaps' addresses all set), and leaves
    /// it inactive.
    pub fn new(capabilities: &Capabilities, vmcs_region: u64, setup: &VcpuSetup) -> Result<Vcpu, &'static str> {
        let context = setup.context;
        // SAFETY: the region is a zeroed page owned by this vCPU.
        unsafe { core::ptr::write_volatile(vmcs_region as *mut u32, capabilities.revision) };
        if !vmx_instruction!("vmclear", vmcs_region) || !vmx_instruction!("vmptrld", vmcs_region) {
            return Err("VMCLEAR/VMPTRLD failed");
        }
        super::smp::set_current_vmcs(vmcs_region);
        use vmcs::write;
        // Controls.
        write(Field::PinBasedControls, capabilities.pin as u64);
        write(Field::PrimaryProcessorControls, capabilities.primary as u64);
        write(Field::SecondaryProcessorControls, capabilities.secondary as u64);
        write(Field::ExitControls, capabilities.exit as u64);
        write(Field::EntryControls, capabilities.entry as u64);
        write(Field::ExceptionBitmap, 0);
        write(Field::PageFaultErrorCodeMask, 0);
        write(Field::PageFaultErrorCodeMatch, 0);
        write(Field::Cr3TargetCount, 0);
        write(Field::ExitMsrStoreCount, 0);
        write(Field::ExitMsrLoadCount, 0);
        write(Field::EntryMsrLoadCount, 0);
        write(Field::EntryInterruptionInfo, 0);
        write(Field::IoBitmapA, setup.io_bitmaps[0]);
        write(Field::IoBitmapB, setup.io_bitmaps[1]);
        write(Field::MsrBitmap, setup.msr_bitmap);
        let ept_pointer = ept_pointer(capabilities, setup.ept_root);
        write(Field::EptPointer, ept_pointer);
        if capabilities.features & feature::VPID != 0 {
            write(Field::VirtualProcessorId, setup.vpid as u64);
        }
        // The guest owns CR0 and CR4 except NE and VMXE, which VMX forces
        // on and which the read shadows hide (SDM 25.6.6): a MOV to CR0
        // that changes the guest's NE exits and hv emulates it
        // (`emulate_control_register`).
        let cr0 = (GUEST_CR0 | capabilities.cr0_fixed0) & capabilities.cr0_fixed1;
        let cr4 = (GUEST_CR4 | capabilities.cr4_fixed0) & capabilities.cr4_fixed1;
        write(Field::Cr0GuestHostMask, CR0_OWNED_BY_HV);
        write(Field::Cr0ReadShadow, cr0);
        write(Field::Cr4GuestHostMask, CR4_OWNED_BY_HV);
        write(Field::Cr4ReadShadow, cr4 & !CR4_OWNED_BY_HV);

        // Host state (SDM 26.2.2, 26.2.3): this CPU's tables, exit into vmx_exit.
        write(Field::HostCr0, cpu::read_cr0());
        write(Field::HostCr3, cpu::read_cr3());
        write(Field::HostCr4, cpu::read_cr4());
        write(Field::HostCsSelector, gdt::CODE_SELECTOR as u64);
        write(Field::HostSsSelector, gdt::DATA_SELECTOR as u64);
        write(Field::HostDsSelector, gdt::DATA_SELECTOR as u64);
        write(Field::HostEsSelector, gdt::DATA_SELECTOR as u64);
        write(Field::HostFsSelector, 0);
        write(Field::HostGsSelector, 0);
        write(Field::HostTrSelector, gdt::TSS_SELECTOR as u64);
        write(Field::HostFsBase, 0);
        write(Field::HostGsBase, 0);
        write(Field::HostTrBase, gdt::tss_base());
        write(Field::HostGdtrBase, gdt::gdt_base());
        write(Field::HostIdtrBase, idt::idt_base());
        write(Field::HostSysenterCs, 0);
        write(Field::HostSysenterEsp, 0);
        write(Field::HostSysenterEip, 0);
        // SAFETY: IA32_EFER and IA32_PAT exist on every 64-bit CPU.
        let (host_efer, host_pat) = unsafe { (rdmsr(msr::IA32_EFER), rdmsr(msr::IA32_PAT)) };
        write(Field::HostEfer, host_efer);
        write(Field::HostPat, host_pat);
        write(Field::HostRip, enter::vmx_exit as *const () as u64);

        // Guest state (SDM 26.3.1): 64-bit mode, flat segments, paging on;
        // or Xen's PVH entry: 32-bit protected mode, paging off (allowed by
        // unrestricted guest), flat 32-bit segments, no IA-32e mode until
        // the kernel turns it on (a VM exit then stores EFER.LMA into the
        // IA-32e mode guest entry control, SDM 28.3.1).
        // A vCPU a Start-up IPI starts is as this one with protection off
        // and real-mode segments (written below).
        let real = context.mode == hvcore::platform::VCPU_MODE_REAL;
        let pvh = context.mode == abi::domctl::VCPU_MODE_PVH || real;
        let (cr0, cr4, code_access) = if pvh {
            let protection = if real { 0 } else { CR0_PE };
            let cr0 = (PVH_CR0 & !CR0_PE | protection | capabilities.cr0_fixed0 & !(CR0_PE | CR0_PG))
                & capabilities.cr0_fixed1;
            // Xen's PVH entry state: CR0 = PE | ET, NE clear (Linux's
            // head.S then writes PG | PE | ET, which must not exit as a
            // fault: NE is hv's bit, so it keeps its real value).
            write(Field::Cr0ReadShadow, cr0 & !CR0_OWNED_BY_HV);
            write(Field::Cr4ReadShadow, 0);
            let entry = capabilities.entry & !EntryControls::IA32E_MODE_GUEST.bits();
            write(Field::EntryControls, entry as u64);
            (cr0, capabilities.cr4_fixed0 & capabilities.cr4_fixed1, CODE32_ACCESS)
        } else {
            (cr0, cr4, CODE64_ACCESS)
        };
        write(Field::GuestCr0, cr0);
        write(Field::GuestCr3, context.cr3);
        write(Field::GuestCr4, cr4);
        write(Field::GuestDr7, hvcore::cpu_state::debug::DR7_INITIAL);
        write(Field::GuestRsp, context.rsp);
        write(Field::GuestRip, context.rip);
        write(Field::GuestRflags, 0x2);
        write(Field::GuestEfer, if pvh { 0 } else { GUEST_EFER });
        write(Field::GuestPat, DEFAULT_PAT);
        write(Field::GuestDebugControl, 0);
        write(Field::GuestCsSelector, guest_gdt::CODE as u64);
        write(Field::GuestCsBase, 0);
        write(Field::GuestCsLimit, 0xffff_ffff);
        write(Field::GuestCsAccessRights, code_access);
        for (selector, base, limit, access) in [
            (Field::GuestSsSelector, Field::GuestSsBase, Field::GuestSsLimit, Field::GuestSsAccessRights),
            (Field::GuestDsSelector, Field::GuestDsBase, Field::GuestDsLimit, Field::GuestDsAccessRights),
            (Field::GuestEsSelector, Field::GuestEsBase, Field::GuestEsLimit, Field::GuestEsAccessRights),
            (Field::GuestFsSelector, Field::GuestFsBase, Field::GuestFsLimit, Field::GuestFsAccessRights),
            (Field::GuestGsSelector, Field::GuestGsBase, Field::GuestGsLimit, Field::GuestGsAccessRights),
        ] {
            write(selector, guest_gdt::DATA as u64);
            write(base, 0);
            write(limit, 0xffff_ffff);
            write(access, DATA_ACCESS);
        }
        write(Field::GuestLdtrSelector, 0);
        write(Field::GuestLdtrBase, 0);
        write(Field::GuestLdtrLimit, 0);
        write(Field::GuestLdtrAccessRights, UNUSABLE);
        write(Field::GuestTrSelector, guest_gdt::TASK as u64);
        write(Field::GuestTrBase, 0);
        write(Field::GuestTrLimit, 0x67);
        write(Field::GuestTrAccessRights, TASK_BUSY_ACCESS);
        write(Field::GuestGdtrBase, context.gdt_base);
        write(Field::GuestGdtrLimit, context.gdt_limit as u64);
        write(Field::GuestIdtrBase, 0);
        write(Field::GuestIdtrLimit, 0);
        write(Field::GuestInterruptibility, 0);
        write(Field::GuestActivityState, 0);
        write(Field::GuestPendingDebugExceptions, 0);
        write(Field::GuestSysenterCs, 0);
        write(Field::GuestSysenterEsp, 0);
        write(Field::GuestSysenterEip, 0);
        write(Field::VmcsLinkPointer, u64::MAX);
        if real {
            real_mode_segments(context.rip);
        }

        // Written back and inactive until a CPU checks it out (`check_out`
        // flushes its translations on each CPU it arrives at).
        if !vmx_instruction!("vmclear", vmcs_region) {
            return Err("VMCLEAR failed");
        }
        super::smp::set_current_vmcs(0);
        let registers = if pvh {
            GuestRegisters { rbx: context.rdi, ..GuestRegisters::default() }
        } else {
            GuestRegisters { rdi: context.rdi, ..GuestRegisters::default() }
        };
        Ok(Vcpu {
            ids: (setup.domain_id, setup.vcpu_id),
            vmcs_region,
            ept_pointer,
            vpid: setup.vpid,
            primary_controls: capabilities.primary,
            launched: false,
            registers,
            fpu: FpuState::initial(),
            cr2: 0,
            kernel_gs_base: 0,
            syscall_msrs: [0; 5],
            switched_msrs: if capabilities.tsc_aux { 5 } else { 4 },
            xcr0: hvcore::cpu_state::xcr0::INITIAL,
            debug: DebugRegisters::initial(),
            xsave: capabilities.xcr0_supported != 0,
            cr8: 0,
            last_cpu: NEVER_RAN,
        })
    }

    /// Makes this vCPU the one CPU `cpu` (the caller's) runs: loads its
    /// VMCS, gives it this CPU's host state (descriptor tables, GS base),
    /// flushes the translations this CPU may hold for its EPT and VPID
    /// unless it ran here last (they may be stale: the guest changed its
    /// page tables elsewhere, or an EPT root or VPID was reused), and loads
    /// the processor state the VMCS does not hold. Until [`Vcpu::check_in`]
    /// no other CPU may touch it.
    pub fn check_out(&mut self, cpu: usize, capabilities: &Capabilities) {
        if !vmx_instruction!("vmptrld", self.vmcs_region) {
            crate::error!("VMPTRLD of {:#x} failed", self.vmcs_region);
        }
        super::smp::set_current_vmcs(self.vmcs_region);
        let this = super::smp::this();
        vmcs::write(Field::HostGdtrBase, this.gdt_base.load(core::sync::atomic::Ordering::Relaxed));
        vmcs::write(Field::HostTrBase, this.tss_base.load(core::sync::atomic::Ordering::Relaxed));
        vmcs::write(Field::HostGsBase, this as *const super::smp::PerCpu as u64);
        if self.last_cpu != cpu {
            invalidate_ept(capabilities, self.ept_pointer);
            invalidate_vpid(capabilities, self.vpid);
            self.last_cpu = cpu;
        }
        self.restore_processor_state();
    }

    /// Ends a [`Vcpu::check_out`]: saves the processor state and writes the
    /// VMCS back to memory, inactive (VMCLEAR; the next entry is a
    /// VMLAUNCH), so that any CPU may check it out next.
    pub fn check_in(&mut self) {
        self.save_processor_state();
        if !vmx_instruction!("vmclear", self.vmcs_region) {
            crate::error!("VMCLEAR of {:#x} failed", self.vmcs_region);
        }
        super::smp::set_current_vmcs(0);
        self.launched = false;
    }

    /// Saves the processor state the VMCS does not hold (x87/SSE, CR2,
    /// IA32_KERNEL_GS_BASE, DR0-DR3 and DR6) before another domain's vCPU
    /// runs on this CPU.
    ///
    /// Saved here, on a domain switch, rather than through the VMCS MSR
    /// load/store areas: those would cost an MSR load and store on every
    /// VM entry and exit (hypercalls included), while hv switches domains
    /// far less often and not at all while one domain keeps running.
    /// XCR0 needs no saving: it changes only through XSETBV, which exits.
    /// DR6 is saved whether or not the guest wrote it: a #DB delivered to
    /// the guest (single-step, a breakpoint) sets its bits in the CPU.
    pub fn save_processor_state(&mut self) {
        self.cr2 = cpu::read_cr2();
        self.debug.save();
        // SAFETY: IA32_KERNEL_GS_BASE exists on every 64-bit CPU.
        self.kernel_gs_base = unsafe { rdmsr(msr::IA32_KERNEL_GS_BASE) };
        for (value, number) in self.syscall_msrs.iter_mut().zip(&SWITCHED_MSRS[..self.switched_msrs]) {
            // SAFETY: the SYSCALL MSRs exist on every 64-bit CPU, TSC_AUX
            // where `switched_msrs` counts it (CPUID said RDTSCP); reading
            // them changes nothing.
            *value = unsafe { rdmsr(*number) };
        }
        // SAFETY: FXSAVE64 writes 512 bytes to a 16-byte aligned buffer we own;
        // CR4.OSFXSR is set and CR0.EM/TS are clear in VMX root.
        unsafe { asm!("fxsave64 [{}]", in(reg) self.fpu.0.as_mut_ptr(), options(nostack)) };
    }

    /// Loads what `save_processor_state` saved (or the initial state).
    pub fn restore_processor_state(&self) {
        // SAFETY: FXRSTOR64 reads 512 bytes from a 16-byte aligned buffer in
        // FXSAVE format (the initial image or one FXSAVE wrote; its reserved
        // MXCSR bits are zero, so it cannot fault).
        unsafe { asm!("fxrstor64 [{}]", in(reg) self.fpu.0.as_ptr(), options(nostack, readonly)) };
        // SAFETY: CR2 only holds the last page-fault address; writing it
        // affects nothing but what the guest reads back.
        unsafe { asm!("mov cr2, {}", in(reg) self.cr2, options(nostack, nomem)) };
        // SAFETY: hv does not use IA32_KERNEL_GS_BASE (it never executes
        // SWAPGS); the value is canonical (the CPU checked it when the guest
        // put it there with SWAPGS, or it is the initial 0).
        unsafe { cpu::wrmsr(msr::IA32_KERNEL_GS_BASE, self.kernel_gs_base) };
        for (&value, number) in self.syscall_msrs.iter().zip(&SWITCHED_MSRS[..self.switched_msrs]) {
            // SAFETY: hv never uses SYSCALL or TSC_AUX; each value passed
            // `GuestMsr::accepts` (canonical, 32-bit where the CPU wants it)
            // or is the initial 0; the MSR exists (see `save_processor_state`).
            unsafe { cpu::wrmsr(*number, value) };
        }
        self.debug.restore();
        if self.xsave {
            // SAFETY: CR4.OSXSAVE is set in VMX root when the CPU has XSAVE
            // (`enable`); the value passed `cpu_state::xsetbv` (x87 set,
            // only supported bits) or is the initial x87-only value. hv
            // itself uses no XSAVE-managed state.
            unsafe { cpu::xsetbv(0, self.xcr0) };
        }
    }

    /// Makes this vCPU's VMCS the current one (VMPTRLD) if it is not
    /// already. Outside a check-out this happens only for a vCPU no CPU has
    /// checked out (hv's lock held), which is VMCLEARed again by
    /// [`Vcpu::release`] or written over by the next `check_out`.
    #[inline(always)]
    fn load(&self) {
        if super::smp::current_vmcs() != self.vmcs_region {
            if !vmx_instruction!("vmptrld", self.vmcs_region) {
                crate::error!("VMPTRLD of {:#x} failed", self.vmcs_region);
            }
            super::smp::set_current_vmcs(self.vmcs_region);
        }
    }

    /// Retires the vCPU (not checked out): clears its VMCS (so the CPU holds
    /// no cached copy) and flushes its translations here (any other CPU
    /// flushes them when a vCPU that reuses the EPT root or VPID arrives
    /// there: see `check_out`). Returns the VMCS frame for freeing.
    pub fn release(self, capabilities: &Capabilities) -> u64 {
        if !vmx_instruction!("vmclear", self.vmcs_region) {
            crate::error!("VMCLEAR of {:#x} failed", self.vmcs_region);
        }
        if super::smp::current_vmcs() == self.vmcs_region {
            super::smp::set_current_vmcs(0);
        }
        invalidate_ept(capabilities, self.ept_pointer);
        invalidate_vpid(capabilities, self.vpid);
        self.vmcs_region
    }

    /// Whether the guest can take an external interrupt now: RFLAGS.IF set,
    /// no STI or MOV-SS blocking (SDM 26.4.2), and no event already queued
    /// for the next entry (a re-injected one must go first).
    #[inline]
    pub fn interruptible(&self) -> bool {
        self.load();
        vmcs::read(Field::GuestRflags) & (1 << 9) != 0
            && vmcs::read(Field::GuestInterruptibility) & 0x3 == 0
            && vmcs::read(Field::EntryInterruptionInfo) & (1 << 31) == 0
    }

    /// Queues again an event whose delivery this exit cut short (SDM
    /// 28.2.4, 27.6.1.1); without this the guest would lose it (an upcall,
    /// an exception). Call after every exit that
    /// [`Exit::may_interrupt_delivery`].
    pub fn requeue_interrupted_event(&mut self) {
        self.load();
        let vectoring = vmcs::read(Field::IdtVectoringInfo) as u32;
        if vectoring & (1 << 31) == 0 {
            return; // the usual case: no event was being delivered
        }
        let Some(event) = hvcore::cpu_state::reinjection(
            vectoring,
            vmcs::read(Field::IdtVectoringErrorCode) as u32,
            vmcs::read(Field::ExitInstructionLength) as u32,
        ) else {
            return;
        };
        if let Some(code) = event.error_code {
            vmcs::write(Field::EntryExceptionErrorCode, code as u64);
        }
        if let Some(length) = event.instruction_length {
            vmcs::write(Field::EntryInstructionLength, length as u64);
        }
        vmcs::write(Field::EntryInterruptionInfo, event.information as u64);
    }

    /// The saved general-purpose register `number` (0 = RAX ... 15 = R15,
    /// the encoding of exit qualifications); `None` for RSP (4), which the
    /// VMCS holds.
    fn saved_register(&mut self, number: u8) -> Option<&mut u64> {
        let r = &mut self.registers;
        Some(match number & 15 {
            0 => &mut r.rax,
            1 => &mut r.rcx,
            2 => &mut r.rdx,
            3 => &mut r.rbx,
            4 => return None,
            5 => &mut r.rbp,
            6 => &mut r.rsi,
            7 => &mut r.rdi,
            8 => &mut r.r8,
            9 => &mut r.r9,
            10 => &mut r.r10,
            11 => &mut r.r11,
            12 => &mut r.r12,
            13 => &mut r.r13,
            14 => &mut r.r14,
            _ => &mut r.r15,
        })
    }

    /// General-purpose register `number` (as [`Vcpu::saved_register`]).
    fn register(&mut self, number: u8) -> u64 {
        self.saved_register(number).map_or_else(|| vmcs::read(Field::GuestRsp), |value| *value)
    }

    /// Sets general-purpose register `number` (as [`Vcpu::saved_register`]).
    fn set_register(&mut self, number: u8, value: u64) {
        match self.saved_register(number) {
            Some(slot) => *slot = value,
            None => vmcs::write(Field::GuestRsp, value),
        }
    }

    /// How the guest (this vCPU, number `vcpu` of its domain) translates
    /// addresses now, for the pointer arguments of its Xen hypercalls:
    /// paging off, 4-level long mode, or a mode they cannot be read in
    /// (32-bit paging, 5-level paging).
    pub fn address_space(&self, vcpu: usize) -> hvcore::guest_virtual::AddressSpace {
        use hvcore::guest_virtual::AddressSpace;
        // EFER.LMA implies paging on (SDM 10.8.5): the common case, 64-bit
        // mode, takes three reads.
        if vmcs::read(Field::GuestEfer) & 1 << 10 != 0 {
            let five_level = vmcs::read(Field::GuestCr4) & 1 << 12 != 0;
            return if five_level {
                AddressSpace::Unsupported
            } else {
                AddressSpace::LongMode { cr3: vmcs::read(Field::GuestCr3), vcpu }
            };
        }
        let paging = vmcs::read(Field::GuestCr0) & 1 << 31 != 0;
        if paging { AddressSpace::Unsupported } else { AddressSpace::Physical }
    }

    /// Emulates a control-register access exit: MOV to/from CR8 use the
    /// vCPU's virtual TPR; a MOV to CR4 that would set a bit hv owns
    /// (VMXE, PKE) gets #GP, as on a CPU without those features; a MOV to
    /// CR0 that changes the guest's NE is done as `cpu_state::cr0_write`
    /// says (NE stays on underneath, long mode follows paging). Returns
    /// false for an access hv never asked to intercept.
    pub fn emulate_control_register(&mut self, qualification: u64) -> bool {
        use hvcore::cpu_state::ControlRegisterAccess as Access;
        self.load();
        match hvcore::cpu_state::decode_control_register_access(qualification) {
            Access::WriteCr8 { register } => match hvcore::cpu_state::cr8_write(self.register(register)) {
                Some(priority) => {
                    self.cr8 = priority;
                    self.skip_exit_instruction();
                }
                None => self.inject_exception(13, Some(0)),
            },
            Access::ReadCr8 { register } => {
                self.set_register(register, self.cr8 as u64);
                self.skip_exit_instruction();
            }
            Access::WriteCr4 { .. } => self.inject_exception(13, Some(0)),
            Access::WriteCr0 { register } => {
                let value = self.register(register);
                let current = vmcs::read(Field::GuestCr0);
                let cr4 = vmcs::read(Field::GuestCr4);
                match hvcore::cpu_state::cr0_write(value, current, self.efer(), cr4) {
                    Some(write) => {
                        vmcs::write(Field::Cr0ReadShadow, write.shadow);
                        vmcs::write(Field::GuestCr0, write.cr0);
                        self.set_efer(write.efer);
                        self.skip_exit_instruction();
                    }
                    None => self.inject_exception(13, Some(0)),
                }
            }
            Access::Other => return false,
        }
        true
    }

    /// Emulates XSETBV: a valid value becomes this vCPU's XCR0 (and the
    /// CPU's, as this vCPU owns the processor state while it runs); any
    /// other gets #GP(0).
    pub fn emulate_xsetbv(&mut self, supported: u64) {
        self.load();
        let value = (self.registers.rdx << 32) | (self.registers.rax & 0xffff_ffff);
        match hvcore::cpu_state::xsetbv(self.registers.rcx, value, supported) {
            Some(xcr0) if self.xsave => {
                self.xcr0 = xcr0;
                // SAFETY: as in `restore_processor_state`: CR4.OSXSAVE is
                // set in VMX root and the value was validated.
                unsafe { cpu::xsetbv(0, xcr0) };
                self.skip_exit_instruction();
            }
            _ => self.inject_exception(13, Some(0)),
        }
    }

    /// Whether the guest has CR4.OSXSAVE set (CPUID.1:ECX.OSXSAVE shows it).
    pub fn guest_osxsave(&self) -> bool {
        self.load();
        vmcs::read(Field::GuestCr4) & CR4_OSXSAVE != 0
    }

    /// Queues external interrupt `vector` for delivery at the next entry.
    #[inline]
    pub fn inject_interrupt(&mut self, vector: u8) {
        self.load();
        // Interruption type 0 = external interrupt; bit 31 = valid (SDM 25.8.3).
        vmcs::write(Field::EntryInterruptionInfo, vector as u64 | (1 << 31));
    }

    /// Turns interrupt-window exiting on or off (exit when the guest can
    /// take an interrupt, SDM 26.2).
    #[inline]
    pub fn set_interrupt_window_exiting(&mut self, enabled: bool) {
        self.load();
        let bit = PrimaryControls::INTERRUPT_WINDOW_EXITING.bits();
        let controls = if enabled { self.primary_controls | bit } else { self.primary_controls & !bit };
        if controls != self.primary_controls {
            self.primary_controls = controls;
            vmcs::write(Field::PrimaryProcessorControls, controls as u64);
        }
    }

    /// Arms the preemption timer to expire after `ticks` timer ticks.
    pub fn set_preemption_timer(&mut self, ticks: u32) {
        self.load();
        vmcs::write(Field::PreemptionTimerValue, ticks as u64);
    }

    /// Enters the guest and returns the raw exit reason (SDM 25.9.1), so the
    /// caller can take its hot path (VMCALL) before decoding anything else.
    #[inline(always)]
    pub fn enter(&mut self) -> Result<u32, Exit> {
        self.load();
        // SAFETY: this vCPU's VMCS is current and fully initialised (see
        // `new`); `registers` outlives the call; vmx_enter returns to us
        // on the same stack after the exit.
        let status = unsafe { enter::vmx_enter(&mut self.registers, self.launched as u64) };
        if status != 0 {
            return Err(launch_failed(status));
        }
        self.launched = true;
        let raw = vmcs::read(Field::ExitReason) as u32;
        // Only the guest kernel makes hypercalls (abi: refused from CPL > 0).
        // Checked here, where the VMCS is known current: one VMREAD on the
        // hot path; a refused call leaves it as a distinct exit.
        if raw == Self::VMCALL_EXIT
            && !hvcore::cpu_state::hypercall_allowed(hvcore::cpu_state::current_privilege_level(vmcs::read(
                Field::GuestSsAccessRights,
            )))
        {
            return Ok(raw | Self::USER_MODE_FLAG);
        }
        Ok(raw)
    }

    /// The basic exit reason of VMCALL.
    pub const VMCALL_EXIT: u32 = 18;
    /// The basic exit reason of CPUID.
    pub const CPUID_EXIT: u32 = 10;

    /// Set by [`Vcpu::enter`] in a VMCALL exit's reason when the guest was
    /// not at CPL 0 (bit 30 of the exit reason is reserved, always 0 from
    /// the CPU, SDM 25.9.1); [`Vcpu::decode`] makes it
    /// [`Exit::HypercallFromUserMode`]. The basic reason stays 18, so the
    /// call is counted as a VMCALL.
    pub const USER_MODE_FLAG: u32 = 1 << 30;

    /// Decodes a raw exit reason of the current VMCS into an [`Exit`].
    pub fn decode(raw: u32) -> Exit {
        let reason = raw & 0xffff;
        match reason {
            _ if raw & (1 << 31) != 0 => {
                Exit::EntryFailure { reason, qualification: vmcs::read(Field::ExitQualification) }
            }
            _ if raw & Self::USER_MODE_FLAG != 0 => Exit::HypercallFromUserMode,
            18 => Exit::Hypercall,
            10 => Exit::Cpuid,
            12 => Exit::Halt,
            30 => {
                let qualification = vmcs::read(Field::ExitQualification);
                Exit::Io {
                    port: (qualification >> 16) as u16,
                    size: (qualification & 7) as u8 + 1,
                    input: qualification & (1 << 3) != 0,
                    string: qualification & (1 << 4) != 0,
                }
            }
            31 => Exit::MsrRead,
            32 => Exit::MsrWrite,
            48 => Exit::EptViolation {
                guest_physical: vmcs::read(Field::GuestPhysicalAddress),
                qualification: vmcs::read(Field::ExitQualification),
            },
            49 => Exit::EptMisconfiguration { guest_physical: vmcs::read(Field::GuestPhysicalAddress) },
            2 => Exit::TripleFault,
            1 => Exit::ExternalInterrupt { vector: vmcs::read(Field::ExitInterruptionInfo) as u8 },
            0 => {
                let information = vmcs::read(Field::ExitInterruptionInfo) as u32;
                if hvcore::cpu_state::is_nmi(information) { Exit::Nmi } else { Exit::Exception { information } }
            }
            55 => Exit::Xsetbv,
            15 => Exit::Rdpmc,
            13 | 54 => Exit::CacheFlush,
            19..=27 | 50 | 53 => Exit::VmxInstruction,
            29 => Exit::DebugRegister,
            52 => Exit::PreemptionTimer,
            7 => Exit::InterruptWindow,
            28 => Exit::ControlRegister { qualification: vmcs::read(Field::ExitQualification) },
            _ => Exit::Other { reason, qualification: vmcs::read(Field::ExitQualification) },
        }
    }

    /// Moves the guest past the instruction that caused the exit, which
    /// ends a blocking by STI or MOV SS it ran under (SDM Vol. 3C 25.4.2):
    /// after `sti; hlt` an interrupt is taken at once, as on a CPU. (The
    /// hot path's [`Vcpu::skip_exit_instruction`] leaves the blocking to
    /// end after the next instruction.)
    #[inline]
    pub fn skip_instruction(&mut self) {
        self.load();
        self.skip_exit_instruction();
        let interruptibility = vmcs::read(Field::GuestInterruptibility);
        if interruptibility & 0x3 != 0 {
            vmcs::write(Field::GuestInterruptibility, interruptibility & !0x3);
        }
    }

    /// As [`Vcpu::skip_instruction`], for the hot path right after
    /// [`Vcpu::enter`] returned, when this VMCS is known to be current.
    #[inline(always)]
    pub fn skip_exit_instruction(&mut self) {
        let length = vmcs::read(Field::ExitInstructionLength);
        let rip = vmcs::read(Field::GuestRip);
        vmcs::write(Field::GuestRip, rip.wrapping_add(length));
    }

    /// A hypercall's five arguments, in the registers of the calling
    /// convention (RDI, RSI, RDX, R10, R8).
    #[inline(always)]
    pub fn arguments(&self) -> [u64; 5] {
        let r = &self.registers;
        [r.rdi, r.rsi, r.rdx, r.r10, r.r8]
    }

    /// Undoes [`Vcpu::skip_exit_instruction`]: the instruction that caused
    /// the last exit runs again at the next entry.
    pub fn rewind_exit_instruction(&mut self) {
        self.load();
        let length = vmcs::read(Field::ExitInstructionLength);
        let rip = vmcs::read(Field::GuestRip);
        vmcs::write(Field::GuestRip, rip.wrapping_sub(length));
    }

    /// The guest's instruction pointer.
    pub fn rip(&self) -> u64 {
        self.load();
        vmcs::read(Field::GuestRip)
    }

    /// The guest's IA32_EFER (loaded at entry, saved at exit).
    pub fn efer(&self) -> u64 {
        self.load();
        vmcs::read(Field::GuestEfer)
    }

    /// Sets the guest's IA32_EFER, and the IA-32e mode guest entry control
    /// to its LMA bit, which VM entry checks them against (SDM 26.3.1.1).
    pub fn set_efer(&mut self, value: u64) {
        self.load();
        vmcs::write(Field::GuestEfer, value);
        let entry = vmcs::read(Field::EntryControls) & !(EntryControls::IA32E_MODE_GUEST.bits() as u64);
        let long_mode = if value & 1 << 10 != 0 { EntryControls::IA32E_MODE_GUEST.bits() as u64 } else { 0 };
        vmcs::write(Field::EntryControls, entry | long_mode);
    }

    /// The vCPU's `msr` (it runs on this CPU: its switched MSRs are
    /// loaded; FS and GS base and PAT are in its VMCS); `None` for one the
    /// CPU lacks.
    pub fn read_msr(&self, msr: hvcore::exits::GuestMsr) -> Option<u64> {
        use hvcore::exits::GuestMsr;
        self.load();
        Some(match msr {
            GuestMsr::FsBase => vmcs::read(Field::GuestFsBase),
            GuestMsr::GsBase => vmcs::read(Field::GuestGsBase),
            GuestMsr::Pat => vmcs::read(Field::GuestPat),
            // SAFETY: the MSR exists (`switched`); reading changes nothing.
            switched => unsafe { rdmsr(self.machine_msr(switched)?) },
        })
    }

    /// Sets the vCPU's `msr` to `value` (checked by `GuestMsr::accepts`);
    /// false for one the CPU lacks.
    pub fn write_msr(&mut self, msr: hvcore::exits::GuestMsr, value: u64) -> bool {
        use hvcore::exits::GuestMsr;
        self.load();
        match msr {
            GuestMsr::FsBase => vmcs::write(Field::GuestFsBase, value),
            GuestMsr::GsBase => vmcs::write(Field::GuestGsBase, value),
            GuestMsr::Pat => vmcs::write(Field::GuestPat, value),
            switched => {
                let Some(number) = self.machine_msr(switched) else { return false };
                // SAFETY: hv itself uses none of these (no SYSCALL, no
                // SWAPGS, no RDTSCP); the value is one the CPU takes
                // (`accepts`), and the vCPU's switch saves it before another
                // vCPU runs here.
                unsafe { cpu::wrmsr(number, value) };
            }
        }
        true
    }

    /// The machine MSR behind a guest MSR hv switches, if the CPU has it
    /// (`None` too for those the VMCS holds).
    fn machine_msr(&self, msr: hvcore::exits::GuestMsr) -> Option<u32> {
        use hvcore::exits::GuestMsr;
        let index = match msr {
            GuestMsr::KernelGsBase => return Some(msr::IA32_KERNEL_GS_BASE),
            GuestMsr::Star => 0,
            GuestMsr::Lstar => 1,
            GuestMsr::Cstar => 2,
            GuestMsr::Sfmask => 3,
            GuestMsr::TscAux => 4,
            GuestMsr::FsBase | GuestMsr::GsBase | GuestMsr::Pat => return None,
        };
        SWITCHED_MSRS[..self.switched_msrs].get(index).copied()
    }

    /// The guest's CR0.
    pub fn cr0(&self) -> u64 {
        self.load();
        vmcs::read(Field::GuestCr0)
    }

    /// Queues a hardware exception for delivery at the next entry (SDM 27.6).
    pub fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) {
        self.load();
        // Interruption type 3 = hardware exception; bit 11 = deliver error code; bit 31 = valid.
        let mut information = vector as u64 | (3 << 8) | (1 << 31);
        if let Some(code) = error_code {
            information |= 1 << 11;
            vmcs::write(Field::EntryExceptionErrorCode, code as u64);
        }
        vmcs::write(Field::EntryInterruptionInfo, information);
    }
}
