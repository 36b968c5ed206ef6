//! Thin wrappers over x86-64 instructions: port I/O, MSRs, control registers, CPUID, TSC.

use core::arch::asm;

/// Result of the CPUID instruction.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuidResult {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// Executes CPUID for `leaf`/`subleaf`.
pub fn cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    CpuidResult { eax: r.eax, ebx: r.ebx, ecx: r.ecx, edx: r.edx }
}

/// What hv needs to know of the CPU from CPUID, decoded by `raw-cpuid`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Features {
    /// VT-x (CPUID.1:ECX.VMX).
    pub vmx: bool,
    /// The local APIC timer's TSC-deadline mode (CPUID.1:ECX.TSC_DEADLINE).
    pub tsc_deadline: bool,
    /// x2APIC mode of the local APIC (CPUID.1:ECX.x2APIC).
    pub x2apic: bool,
    /// 1 GiB pages (CPUID.8000_0001H:EDX.Page1GB).
    pub pages_1g: bool,
    /// RDTSCP and IA32_TSC_AUX (CPUID.8000_0001H:EDX.RDTSCP).
    pub rdtscp: bool,
    /// The XCR0 bits the CPU supports (CPUID.(EAX=0DH,ECX=0)), 0 without
    /// XSAVE: x87, SSE, AVX, MPX, AVX-512 and PKRU state as the leaf reports.
    pub xcr0_supported: u64,
}

/// Reads the CPU's [`Features`].
pub fn features() -> Features {
    let cpuid = raw_cpuid::CpuId::new();
    let info = cpuid.get_feature_info();
    let has = |test: fn(&raw_cpuid::FeatureInfo) -> bool| info.as_ref().is_some_and(test);
    let xsave = has(raw_cpuid::FeatureInfo::has_xsave);
    let xcr0_supported = match cpuid.get_extended_state_info() {
        Some(state) if xsave => [
            (0, state.xcr0_supports_legacy_x87()),
            (1, state.xcr0_supports_sse_128()),
            (2, state.xcr0_supports_avx_256()),
            (3, state.xcr0_supports_mpx_bndregs()),
            (4, state.xcr0_supports_mpx_bndcsr()),
            (5, state.xcr0_supports_avx512_opmask()),
            (6, state.xcr0_supports_avx512_zmm_hi256()),
            (7, state.xcr0_supports_avx512_zmm_hi16()),
            (9, state.xcr0_supports_pkru()),
        ]
        .iter()
        .filter(|(_, supported)| *supported)
        .fold(0, |bits, (bit, _)| bits | 1u64 << bit),
        _ => 0,
    };
    Features {
        vmx: has(raw_cpuid::FeatureInfo::has_vmx),
        tsc_deadline: has(raw_cpuid::FeatureInfo::has_tsc_deadline),
        x2apic: has(raw_cpuid::FeatureInfo::has_x2apic),
        pages_1g: cpuid.get_extended_processor_and_feature_identifiers().is_some_and(|ext| ext.has_1gib_pages()),
        rdtscp: cpuid.get_extended_processor_and_feature_identifiers().is_some_and(|ext| ext.has_rdtscp()),
        xcr0_supported,
    }
}

/// Reads the time-stamp counter.
#[inline(always)]
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the counter (CR4.TSD is clear in VMX root).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Writes a byte to an I/O port.
///
/// # Safety
/// The port must belong to a device hv owns, and the write must not break
/// memory safety (for example by reprogramming a DMA engine).
#[inline(always)]
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: the caller vouches for the port.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags)) }
}

/// Reads a byte from an I/O port.
///
/// # Safety
/// As for [`outb`]: reads can have device side effects.
#[inline(always)]
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: the caller vouches for the port.
    unsafe { asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags)) }
    value
}

/// Writes a 16-bit word to an I/O port.
///
/// # Safety
/// As for [`outb`].
#[inline(always)]
pub unsafe fn outw(port: u16, value: u16) {
    // SAFETY: the caller vouches for the port.
    unsafe { asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags)) }
}

/// Writes a 32-bit doubleword to an I/O port.
///
/// # Safety
/// As for [`outb`].
#[inline(always)]
pub unsafe fn outl(port: u16, value: u32) {
    // SAFETY: the caller vouches for the port.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags)) }
}

/// Reads a 32-bit doubleword from an I/O port.
///
/// # Safety
/// As for [`outb`].
#[inline(always)]
pub unsafe fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: the caller vouches for the port.
    unsafe { asm!("in eax, dx", out("eax") value, in("dx") port, options(nomem, nostack, preserves_flags)) }
    value
}

/// Reads a model-specific register.
///
/// # Safety
/// The MSR must exist on this CPU, or the read faults.
#[inline(always)]
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: the caller guarantees the MSR exists.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") low, out("edx") high, options(nomem, nostack, preserves_flags)) }
    (high as u64) << 32 | low as u64
}

/// Writes a model-specific register.
///
/// # Safety
/// The MSR must exist and the value must keep the machine in a state hv
/// relies on (paging, long mode, its own control of interrupts).
#[inline(always)]
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller vouches for the MSR and value.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack, preserves_flags))
    }
}

/// Writes extended control register `register` (XSETBV).
///
/// # Safety
/// CR4.OSXSAVE must be set, `register` must exist (0 = XCR0), and the value
/// must be valid for it (for XCR0: x87 set, only supported bits), or the
/// instruction faults.
#[inline(always)]
pub unsafe fn xsetbv(register: u32, value: u64) {
    // SAFETY: the caller vouches for CR4.OSXSAVE, the register and the value.
    unsafe {
        asm!("xsetbv", in("ecx") register, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nomem, nostack, preserves_flags))
    }
}

/// Reads CR0.
pub fn read_cr0() -> u64 {
    let value;
    // SAFETY: reading CR0 has no side effects.
    unsafe { asm!("mov {}, cr0", out(reg) value, options(nomem, nostack, preserves_flags)) }
    value
}

/// Writes CR0.
///
/// # Safety
/// The new value must keep paging and protection as hv relies on.
pub unsafe fn write_cr0(value: u64) {
    // SAFETY: the caller vouches for the value.
    unsafe { asm!("mov cr0, {}", in(reg) value, options(nostack, preserves_flags)) }
}

/// Reads CR2 (the last page-fault linear address).
pub fn read_cr2() -> u64 {
    let value;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) value, options(nomem, nostack, preserves_flags)) }
    value
}

/// Reads CR3.
pub fn read_cr3() -> u64 {
    let value;
    // SAFETY: reading CR3 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) value, options(nomem, nostack, preserves_flags)) }
    value
}

/// Reads CR4.
pub fn read_cr4() -> u64 {
    let value;
    // SAFETY: reading CR4 has no side effects.
    unsafe { asm!("mov {}, cr4", out(reg) value, options(nomem, nostack, preserves_flags)) }
    value
}

/// Writes CR4.
///
/// # Safety
/// The new value must keep paging (PAE) and anything hv relies on.
pub unsafe fn write_cr4(value: u64) {
    // SAFETY: the caller vouches for the value.
    unsafe { asm!("mov cr4, {}", in(reg) value, options(nostack, preserves_flags)) }
}

/// Stops this CPU for good: interrupts off, halt forever.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: with interrupts disabled HLT just stops the CPU; nothing
        // else depends on it running.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}

/// Model-specific register numbers (SDM Vol. 4).
pub mod msr {
    pub const IA32_APIC_BASE: u32 = 0x1b;
    pub const IA32_STAR: u32 = 0xc000_0081;
    pub const IA32_LSTAR: u32 = 0xc000_0082;
    pub const IA32_CSTAR: u32 = 0xc000_0083;
    pub const IA32_FMASK: u32 = 0xc000_0084;
    pub const IA32_TSC_AUX: u32 = 0xc000_0103;
    pub const IA32_FEATURE_CONTROL: u32 = 0x3a;
    pub const IA32_VMX_BASIC: u32 = 0x480;
    pub const IA32_VMX_PINBASED_CTLS: u32 = 0x481;
    pub const IA32_VMX_PROCBASED_CTLS: u32 = 0x482;
    pub const IA32_VMX_EXIT_CTLS: u32 = 0x483;
    pub const IA32_VMX_ENTRY_CTLS: u32 = 0x484;
    pub const IA32_VMX_MISC: u32 = 0x485;
    pub const IA32_VMX_CR0_FIXED0: u32 = 0x486;
    pub const IA32_VMX_CR0_FIXED1: u32 = 0x487;
    pub const IA32_VMX_CR4_FIXED0: u32 = 0x488;
    pub const IA32_VMX_CR4_FIXED1: u32 = 0x489;
    pub const IA32_VMX_PROCBASED_CTLS2: u32 = 0x48b;
    pub const IA32_VMX_EPT_VPID_CAP: u32 = 0x48c;
    pub const IA32_VMX_TRUE_PINBASED_CTLS: u32 = 0x48d;
    pub const IA32_VMX_TRUE_PROCBASED_CTLS: u32 = 0x48e;
    pub const IA32_VMX_TRUE_EXIT_CTLS: u32 = 0x48f;
    pub const IA32_VMX_TRUE_ENTRY_CTLS: u32 = 0x490;
    pub const IA32_PAT: u32 = 0x277;
    pub const IA32_EFER: u32 = 0xc000_0080;
    pub const IA32_KERNEL_GS_BASE: u32 = 0xc000_0102;
}
