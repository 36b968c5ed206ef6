//! Rules for the processor state hv keeps per vCPU or refuses: who may
//! make a hypercall (CPL), the virtual task-priority register (CR8), XCR0,
//! and re-injecting an event whose delivery a VM exit cut short.
//!
//! Pure decisions over values read from the VMCS, so the hostile cases are
//! tested on the host; `arch::vmx` reads the fields and applies the answers.
//!
//! # What a guest can change without an exit, and what hv does about it
//! | State                          | How hv isolates it                               |
//! |--------------------------------|--------------------------------------------------|
//! | GPRs, RIP, RFLAGS, segments, CR0/3/4, DR7, DEBUGCTL, EFER, PAT, SYSENTER MSRs, FS/GS base | VMCS guest area (switched by VM entry/exit) |
//! | x87/SSE (FXSAVE image), CR2    | saved and restored on a domain switch (lazy)     |
//! | IA32_KERNEL_GS_BASE (SWAPGS)   | saved and restored on a domain switch (lazy)     |
//! | DR0-3, DR6 (no MOV-DR exiting) | saved and restored on a domain switch (lazy); DR7 and DEBUGCTL in the VMCS, 0x400 and 0 while hv runs, so no guest breakpoint is armed in root mode |
//! | XCR0 (XSETBV exits)            | per vCPU, validated here, loaded on a switch     |
//! | CR8 / TPR                      | CR8-load/store exiting; a per-vCPU value         |
//! | CR4.PKE (PKRU), CR4.VMXE       | owned by hv (CR4 guest/host mask): setting is #GP|
//! | STAR, LSTAR, CSTAR, SFMASK, TSC_AUX (SYSCALL and RDTSCP use them) | RDMSR/WRMSR exit and are emulated (`exits::GuestMsr`: values checked as a CPU checks them); saved and restored on a domain switch (lazy) with KERNEL_GS_BASE |
//! | FS/GS base, KERNEL_GS_BASE, PAT, EFER by RDMSR/WRMSR | exit (guests; dom0's FS/GS base pass through) and are emulated on the VMCS fields or the switched value, checked |
//! | IA32_MISC_ENABLE               | reads a fixed value, writes #GP                   |
//! | IA32_BIOS_SIGN_ID (microcode revision) | reads 0, writes taken and dropped          |
//! | every other MSR                | RDMSR/WRMSR exit and are refused with #GP        |
//! | performance counters           | RDPMC exiting: refused with #GP                  |
//! | caches (WBINVD, INVD)          | WBINVD exiting (INVD always exits): a no-op (memory is write-back, DMA on x86 is cache-coherent) |
//! | VMX instructions               | always exit: #UD, as on a CPU without VMX        |

/// Debug-register values (SDM Vol. 3B 18.2).
pub mod debug {
    /// DR6 after reset: no debug condition recorded, reserved bits as they
    /// read. Every vCPU's initial DR6.
    pub const DR6_INITIAL: u64 = 0xffff_0ff0;
    /// DR7 after reset: every breakpoint disabled (bit 10 reads as 1).
    /// Every vCPU's initial DR7, and what hv runs with (a VM exit loads it,
    /// SDM Vol. 3C 28.5.1).
    pub const DR7_INITIAL: u64 = 0x400;
}

/// Segment access rights bit positions (SDM Vol. 3C 25.4.1, Table 25-2).
const ACCESS_DPL_SHIFT: u64 = 5;

/// The current privilege level of a guest in protected or long mode: the
/// DPL of SS (SDM Vol. 3C 25.4.1: "the value of the DPL field for SS is
/// always equal to the logical processor's current privilege level").
pub fn current_privilege_level(ss_access_rights: u64) -> u8 {
    ((ss_access_rights >> ACCESS_DPL_SHIFT) & 3) as u8
}

/// Whether a VMCALL from privilege level `cpl` is a hypercall hv serves:
/// only from the guest kernel (CPL 0), as `abi::hypercall` documents.
pub fn hypercall_allowed(cpl: u8) -> bool {
    cpl == 0
}

/// A guest access to CR8 that exited (control-register access exit
/// qualification, SDM Vol. 3C 28.2.1, Table 28-3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlRegisterAccess {
    /// MOV to CR8 from general-purpose register `register` (0 = RAX ... 15 = R15).
    WriteCr8 { register: u8 },
    /// MOV from CR8 into general-purpose register `register`.
    ReadCr8 { register: u8 },
    /// MOV to CR4 (only exits when a bit hv owns would change).
    WriteCr4 { register: u8 },
    /// MOV to CR0 (only exits when NE, the one bit hv owns, would differ
    /// from the read shadow: see [`cr0_write`]).
    WriteCr0 { register: u8 },
    /// Any other control-register access (CLTS, LMSW, CR0/CR3): hv asked
    /// for none of these exits.
    Other,
}

/// Decodes a control-register access exit qualification.
pub fn decode_control_register_access(qualification: u64) -> ControlRegisterAccess {
    let number = qualification & 0xf;
    let access_type = (qualification >> 4) & 3;
    let register = ((qualification >> 8) & 0xf) as u8;
    match (number, access_type) {
        (8, 0) => ControlRegisterAccess::WriteCr8 { register },
        (8, 1) => ControlRegisterAccess::ReadCr8 { register },
        (4, 0) => ControlRegisterAccess::WriteCr4 { register },
        (0, 0) => ControlRegisterAccess::WriteCr0 { register },
        _ => ControlRegisterAccess::Other,
    }
}

/// CR0 bits (SDM Vol. 3A 2.5).
pub mod cr0 {
    /// Protection enable.
    pub const PE: u64 = 1 << 0;
    /// Numeric error: VMX operation fixes it to 1 (IA32_VMX_CR0_FIXED0), so
    /// hv owns it (guest/host mask) and the guest sees its own value in the
    /// read shadow; Xen's PVH entry state has it clear (CR0 = PE | ET).
    pub const NE: u64 = 1 << 5;
    /// Not write-through, cache disable: setting NW without CD is #GP.
    pub const NW: u64 = 1 << 29;
    /// Cache disable.
    pub const CD: u64 = 1 << 30;
    /// Paging.
    pub const PG: u64 = 1 << 31;
}

/// EFER's long mode enable and active bits (SDM Vol. 3A 2.2.1).
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// CR4's physical address extension bit.
const CR4_PAE: u64 = 1 << 5;

/// What an emulated MOV to CR0 does: the new read shadow (the guest's
/// CR0), the CR0 the CPU runs with (NE forced on) and the new EFER (LMA
/// follows paging when LME is set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cr0Write {
    /// The guest's view: the value it wrote.
    pub shadow: u64,
    /// The value for the VMCS guest CR0.
    pub cr0: u64,
    /// The guest's EFER afterwards.
    pub efer: u64,
}

/// Emulates a MOV of `value` to CR0 by a guest whose CR0 is `current`,
/// EFER `efer` and CR4 `cr4` (SDM Vol. 3A 2.5, 9.8.5 for the long-mode
/// switch); `None` when the instruction must raise #GP(0): reserved bits
/// (63:32), NW without CD, PG without PE, turning paging on in long mode
/// without PAE, turning paging on with PAE outside long mode (the CPU
/// would load the PDPTEs, which hv does not emulate), or turning it off
/// while long mode is active from 64-bit code (only compatibility mode
/// may; hv does not tell the two apart and refuses both).
pub fn cr0_write(value: u64, current: u64, efer: u64, cr4: u64) -> Option<Cr0Write> {
    if value >> 32 != 0 || (value & cr0::NW != 0 && value & cr0::CD == 0) {
        return None;
    }
    if value & cr0::PG != 0 && value & cr0::PE == 0 {
        return None;
    }
    let paging_before = current & cr0::PG != 0;
    let paging_after = value & cr0::PG != 0;
    let efer = match (paging_before, paging_after) {
        (false, true) if efer & EFER_LME != 0 => {
            if cr4 & CR4_PAE == 0 {
                return None;
            }
            efer | EFER_LMA
        }
        (false, true) if cr4 & CR4_PAE != 0 => return None,
        (true, false) if efer & EFER_LMA != 0 => return None,
        _ => efer,
    };
    Some(Cr0Write { shadow: value, cr0: value | cr0::NE, efer })
}

/// The task priority a MOV to CR8 of `value` sets, or `None` when the
/// instruction must raise #GP(0) (bits 63:4 are reserved, SDM Vol. 3A 10.8.6.1).
///
/// The virtual TPR is only stored and read back: Mica's event upcall does
/// not look at it (a guest masks upcalls with RFLAGS.IF or its event page,
/// see `abi::event`), and it never reaches the local APIC, whose TPR stays
/// 0 for hv.
pub fn cr8_write(value: u64) -> Option<u8> {
    if value > 15 { None } else { Some(value as u8) }
}

/// XCR0 bits (SDM Vol. 1 13.3).
pub mod xcr0 {
    /// x87 state; must always be set.
    pub const X87: u64 = 1 << 0;
    /// SSE state (XMM registers, MXCSR).
    pub const SSE: u64 = 1 << 1;
    /// AVX state (upper halves of the YMM registers).
    pub const AVX: u64 = 1 << 2;
    /// What hv lets a guest enable: exactly the state FXSAVE switches
    /// between domains. Larger state (AVX and up) would need XSAVE on every
    /// switch; until hv does that, CPUID leaf 0xD does not offer it.
    pub const ALLOWED: u64 = X87 | SSE;
    /// The value after reset, and every vCPU's initial value.
    pub const INITIAL: u64 = X87;
}

/// Validates an XSETBV (SDM Vol. 2 XSETBV): `ecx` selects the register
/// (only 0, XCR0, exists), `value` is EDX:EAX, `supported` what the CPU
/// offers (CPUID.(EAX=0DH,ECX=0):EDX:EAX). Returns the new XCR0, or `None`
/// when the guest must get #GP(0).
pub fn xsetbv(ecx: u64, value: u64, supported: u64) -> Option<u64> {
    let allowed = supported & xcr0::ALLOWED;
    let valid = ecx as u32 == 0
        && value & xcr0::X87 != 0
        && value & !allowed == 0
        // AVX without SSE is invalid.
        && (value & xcr0::AVX == 0 || value & xcr0::SSE != 0);
    valid.then_some(value)
}

/// What to write into the VM-entry interruption fields to deliver again an
/// event whose delivery a VM exit interrupted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reinjection {
    /// VM-entry interruption-information field (SDM Vol. 3C 25.8.3).
    pub information: u32,
    /// VM-entry exception error code, when the event delivers one.
    pub error_code: Option<u32>,
    /// VM-entry instruction length, for software interrupts and exceptions
    /// (types 4, 5 and 6), which the CPU needs to push the return address.
    pub instruction_length: Option<u32>,
}

/// Converts the IDT-vectoring information of an exit (SDM Vol. 3C 28.2.4)
/// into the entry fields that re-inject the event (SDM 27.6.1.1), or `None`
/// when no event was being delivered.
///
/// The formats agree on vector (7:0), type (10:8), error-code flag (11) and
/// valid (31); bit 12 of the vectoring information is undefined and bits
/// 30:12 of the entry field are reserved, so only the agreed bits are kept.
pub fn reinjection(vectoring_information: u32, error_code: u32, instruction_length: u32) -> Option<Reinjection> {
    const VALID: u32 = 1 << 31;
    const ERROR_CODE_VALID: u32 = 1 << 11;
    if vectoring_information & VALID == 0 {
        return None;
    }
    let information = vectoring_information & (0xff | 0x700 | ERROR_CODE_VALID | VALID);
    let event_type = (information >> 8) & 7;
    Some(Reinjection {
        information,
        error_code: (information & ERROR_CODE_VALID != 0).then_some(error_code),
        instruction_length: matches!(event_type, 4..=6).then_some(instruction_length),
    })
}

/// Whether an exception-or-NMI exit (basic reason 0) was an NMI: its
/// interruption type (bits 10:8 of the exit interruption information, SDM
/// Vol. 3C 25.9.2) is 2. An NMI is hv's (the platform's), never the
/// running guest's fault; any other type is a guest exception hv intercepts.
pub fn is_nmi(exit_interruption_information: u32) -> bool {
    exit_interruption_information & (1 << 31) != 0 && (exit_interruption_information >> 8) & 7 == 2
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cr0_write_keeps_ne_on_under_the_guests_view() {
        use super::cr0::{NE, PE, PG};
        const ET: u64 = 1 << 4;
        // Linux's PVH entry: paging on with long mode enabled, NE clear.
        let write = cr0_write(PG | PE | ET, PE | ET, EFER_LME, CR4_PAE).unwrap();
        assert_eq!(write, Cr0Write { shadow: PG | PE | ET, cr0: PG | PE | ET | NE, efer: EFER_LME | EFER_LMA });
        // Later, NE set (as Linux's cpu_init does): long mode stays.
        let write = cr0_write(PG | PE | ET | NE, PG | PE | ET | NE, EFER_LME | EFER_LMA, CR4_PAE).unwrap();
        assert_eq!(write.shadow, PG | PE | ET | NE);
        assert_eq!(write.efer, EFER_LME | EFER_LMA);
        // Protected mode without paging: nothing else changes.
        assert_eq!(cr0_write(PE, PE | NE, 0, 0), Some(Cr0Write { shadow: PE, cr0: PE | NE, efer: 0 }));
        // 32-bit paging (no PAE): allowed, no long mode.
        assert_eq!(cr0_write(PG | PE, PE, 0, 0).unwrap().efer, 0);
    }

    #[test]
    fn a_cr0_write_the_cpu_would_refuse_is_a_general_protection_fault() {
        use super::cr0::{CD, NW, PE, PG};
        assert_eq!(cr0_write(1 << 32 | PE, PE, 0, 0), None, "reserved bits");
        assert_eq!(cr0_write(NW | PE, PE, 0, 0), None, "NW without CD");
        assert!(cr0_write(NW | CD | PE, PE, 0, 0).is_some());
        assert_eq!(cr0_write(PG, 0, 0, 0), None, "PG without PE");
        assert_eq!(cr0_write(PG | PE, PE, EFER_LME, 0), None, "long mode without PAE");
        assert_eq!(cr0_write(PG | PE, PE, 0, CR4_PAE), None, "PAE paging: PDPTEs hv does not load");
        assert_eq!(cr0_write(PE, PG | PE, EFER_LME | EFER_LMA, CR4_PAE), None, "paging off in long mode");
        assert_eq!(decode_control_register_access(3 << 8), ControlRegisterAccess::WriteCr0 { register: 3 });
    }

    use super::*;

    #[test]
    fn only_ring_0_makes_hypercalls() {
        // 64-bit data segment, DPL 0 and DPL 3 (access rights as in the VMCS).
        assert_eq!(current_privilege_level(0xc093), 0);
        assert_eq!(current_privilege_level(0xc0f3), 3);
        assert_eq!(current_privilege_level(0xc0b3), 1);
        assert!(hypercall_allowed(current_privilege_level(0xc093)));
        for access in [0xc0f3, 0xc0b3, 0xc0d3] {
            assert!(!hypercall_allowed(current_privilege_level(access)));
        }
    }

    #[test]
    fn control_register_exits_decode() {
        // MOV CR8, RAX: CR 8, type 0, register 0.
        assert_eq!(decode_control_register_access(0x8), ControlRegisterAccess::WriteCr8 { register: 0 });
        // MOV R13, CR8: type 1, register 13.
        assert_eq!(
            decode_control_register_access(0x8 | 1 << 4 | 13 << 8),
            ControlRegisterAccess::ReadCr8 { register: 13 }
        );
        assert_eq!(decode_control_register_access(0x4 | 3 << 8), ControlRegisterAccess::WriteCr4 { register: 3 });
        // CLTS (type 2) and a CR3 load are nothing hv asked for.
        assert_eq!(decode_control_register_access(2 << 4), ControlRegisterAccess::Other);
        assert_eq!(decode_control_register_access(3), ControlRegisterAccess::Other);
    }

    #[test]
    fn nmis_are_told_from_guest_exceptions() {
        // NMI: vector 2, type 2, valid.
        assert!(is_nmi(0x8000_0202));
        // #GP (type 3, error code), #BP (type 6), #DB (type 3), and an invalid field.
        assert!(!is_nmi(0x8000_0b0d));
        assert!(!is_nmi(0x8000_0603));
        assert!(!is_nmi(0x8000_0301));
        assert!(!is_nmi(0x0000_0202));
    }

    #[test]
    fn cr8_takes_four_bits_and_faults_on_more() {
        assert_eq!(cr8_write(0), Some(0));
        assert_eq!(cr8_write(15), Some(15));
        assert_eq!(cr8_write(16), None);
        assert_eq!(cr8_write(u64::MAX), None);
    }

    #[test]
    fn xsetbv_accepts_only_what_hv_switches() {
        let skylake = 0x2ff; // x87, SSE, AVX, MPX, AVX-512, PKRU
        assert_eq!(xsetbv(0, 1, skylake), Some(1));
        assert_eq!(xsetbv(0, 3, skylake), Some(3));
        // x87 is mandatory; AVX needs SSE; AVX and up are not offered.
        assert_eq!(xsetbv(0, 0, skylake), None);
        assert_eq!(xsetbv(0, 2, skylake), None);
        assert_eq!(xsetbv(0, 5, skylake), None);
        assert_eq!(xsetbv(0, 7, skylake), None);
        assert_eq!(xsetbv(0, 0x203, skylake), None);
        // Only XCR0 exists; the upper half of RCX is ignored.
        assert_eq!(xsetbv(1, 3, skylake), None);
        assert_eq!(xsetbv(1 << 32, 3, skylake), Some(3));
        // A CPU without SSE state in XSAVE.
        assert_eq!(xsetbv(0, 3, 1), None);
        for value in 0..1024u64 {
            if let Some(accepted) = xsetbv(0, value, u64::MAX) {
                assert_eq!(accepted & !xcr0::ALLOWED, 0);
                assert_ne!(accepted & xcr0::X87, 0);
            }
        }
    }

    #[test]
    fn cut_short_events_are_reinjected_whole() {
        assert_eq!(reinjection(0, 0, 0), None);
        assert_eq!(reinjection(0x7fff_ffff, 5, 2), None);
        // The upcall, an external interrupt (type 0) on vector 0xf3.
        assert_eq!(
            reinjection(0x8000_00f3, 0, 3),
            Some(Reinjection { information: 0x8000_00f3, error_code: None, instruction_length: None })
        );
        // #PF (hardware exception, type 3) with its error code; bit 12 dropped.
        assert_eq!(
            reinjection(0x8000_1b0e, 6, 0),
            Some(Reinjection { information: 0x8000_0b0e, error_code: Some(6), instruction_length: None })
        );
        // INT 0x80 (software interrupt, type 4) needs its length.
        assert_eq!(
            reinjection(0x8000_0480, 0, 2),
            Some(Reinjection { information: 0x8000_0480, error_code: None, instruction_length: Some(2) })
        );
        // INT3 (software exception, type 6) and INT1 (type 5), NMI (type 2).
        assert_eq!(reinjection(0x8000_0603, 0, 1).and_then(|r| r.instruction_length), Some(1));
        assert_eq!(reinjection(0x8000_0501, 0, 1).and_then(|r| r.instruction_length), Some(1));
        assert_eq!(reinjection(0x8000_0202, 0, 1).and_then(|r| r.instruction_length), None);
        // Reserved bits 30:13 never reach the entry field.
        assert_eq!(reinjection(0xffff_ffff, 0, 0).map(|r| r.information), Some(0x8000_0fff));
    }
}
