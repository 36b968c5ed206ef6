//! The CPUID view a domain gets: hv's CPUID policy.
//!
//! CPUID always exits; hv runs it on the CPU and passes the answer through
//! [`filter_cpuid`]. What a domain is told it has must be what it can use:
//! a kernel enables every feature it is told of, and one that hv neither
//! switches nor emulates ends in #GP or #UD far from its cause (Debian's
//! kernel, told of AVX-512 state in leaf 0xD's sub-leaf 1, asked XSETBV for
//! it and oopsed). So the policy keeps:
//!
//! - the instruction-set features the CPU runs natively in VMX non-root
//!   mode (SSE*, AES, RDRAND, BMI, RDTSCP, INVPCID: hv enables the last two);
//! - XSAVE state hv switches per vCPU (`cpu_state::xcr0`): x87 and SSE;
//! - a guest's x2APIC (`vlapic`) and its ids;
//!
//! and hides, as Xen's PVH policy does:
//!
//! - AVX and everything built on its state (AVX2, FMA, F16C, AVX-512,
//!   AMX, VAES, VPCLMULQDQ) and MPX: XCR0 cannot enable their state;
//! - VMX and SMX (no nested virtualization), MONITOR/MWAIT and WAITPKG
//!   (they would exit and be refused), PCID;
//! - machine check (MCE, MCA), thermal and power management (ACPI, TM,
//!   TM2, EST, APERF/MPERF, the thermal leaf), performance monitoring (PDCM,
//!   leaf 0xA), debug store, processor trace, SGX, resource director
//!   technology, protection keys: hv emulates none of their MSRs;
//! - the speculation-control MSRs' features (SPEC_CTRL, STIBP, SSBD,
//!   L1D_FLUSH, ARCH_CAPABILITIES, CORE_CAPABILITIES): hv does not pass
//!   those MSRs through, so a guest picks software mitigations.
//!
//! All of it is pure arithmetic, tested on the host.

use abi::cpuid;

/// The CPUID result vCPU `ids.1` of domain `ids.0` sees for `leaf` and
/// `subleaf` (ECX), given what the CPU returned. Leaf 1 gains the
/// hypervisor-present bit and loses what hv does not offer; a guest's (not
/// dom0's) leaf 1 shows its x2APIC and leaves 0xB and 0x1F its x2APIC id;
/// the hypervisor range 0x4000_0000.. holds Xen's leaves, then Mica's (see
/// `abi::cpuid`), and zeros; leaves of hidden features read as zeros; all
/// else passes through.
pub fn filter_cpuid(leaf: u32, subleaf: u32, raw: [u32; 4], ids: (u32, u32)) -> [u32; 4] {
    let [eax, ebx, ecx, edx] = raw;
    let guest = ids.0 != abi::DOM0;
    match leaf {
        // A guest's local APIC is hv's (`vlapic`): x2APIC with the
        // TSC-deadline timer, its id the vCPU's.
        1 if guest => [
            eax,
            ebx & 0x00ff_ffff | ids.1 << 24,
            (ecx | cpuid::HYPERVISOR_PRESENT_BIT | GUEST_APIC_LEAF1_ECX) & !HIDDEN_LEAF1_ECX,
            (edx | GUEST_APIC_LEAF1_EDX) & !HIDDEN_LEAF1_EDX,
        ],
        1 => [eax, ebx, (ecx | cpuid::HYPERVISOR_PRESENT_BIT) & !HIDDEN_LEAF1_ECX, edx & !HIDDEN_LEAF1_EDX],
        // Thermal and power management: only "the APIC timer runs in
        // every C-state" (ARAT), which the emulated one does.
        6 => [eax & LEAF6_ARAT, 0, 0, 0],
        // Structured extended features: sub-leaf 0 only (its EAX, the
        // highest sub-leaf, says so); the others name AVX and AMX forms.
        7 if subleaf == 0 => [0, ebx & !HIDDEN_LEAF7_EBX, ecx & !HIDDEN_LEAF7_ECX, edx & !HIDDEN_LEAF7_EDX],
        // Leaves of hidden features: performance monitoring (0xA), RDT
        // monitoring and allocation (0xF, 0x10), SGX (0x12), processor
        // trace (0x14), AMX (0x1D, 0x1E), and sub-leaves of 7 past 0.
        7 | 0xa | 0xf | 0x10 | 0x12 | 0x14 | 0x1d | 0x1e => [0; 4],
        // Extended topology: the x2APIC id in EDX.
        0xb | 0x1f if guest => [eax, ebx, ecx, ids.1],
        // XSAVE: only the state hv switches (see `cpu_state::xcr0`), in the
        // legacy area and the header (512 + 64 bytes), in every sub-leaf.
        0xd => match subleaf {
            // Sub-leaf 0: the XCR0 bits; the area's size for the enabled
            // state and for all of it.
            0 => [eax & crate::cpu_state::xcr0::ALLOWED as u32, XSAVE_AREA_BYTES, XSAVE_AREA_BYTES, 0],
            // Sub-leaf 1: XSAVEOPT (a plain XSAVE that may skip unchanged
            // state) only: no compacted format, no XINUSE, no supervisor
            // state (XSAVES and IA32_XSS are not virtualized); ECX:EDX, the
            // IA32_XSS bits, none.
            1 => [eax & XSAVEOPT, XSAVE_AREA_BYTES, 0, 0],
            // The components' own sub-leaves (2 and up): none offered.
            _ => [0; 4],
        },
        0x4000_0000..=0x4fff_ffff => hypervisor_leaf(leaf, ids),
        _ => raw,
    }
}

/// The hypervisor range: Mica's own leaves (most asked for: dom0 checks
/// them), Xen's, and zeros for the rest.
fn hypervisor_leaf(leaf: u32, (domain, vcpu): (u32, u32)) -> [u32; 4] {
    use abi::xen::cpuid as xen;
    match leaf {
        cpuid::LEAF_SIGNATURE => {
            let [b, c, d] = cpuid::signature_registers();
            [cpuid::LEAF_MAX, b, c, d]
        }
        cpuid::LEAF_VERSION => [abi::ABI_VERSION, 0, 0, 0],
        0x4000_0000 => {
            let [b, c, d] = xen::signature_registers();
            [xen::XEN_CPUID_FIRST_LEAF + xen::LEAF_HVM, b, c, d]
        }
        0x4000_0001 => [abi::xen::version::MICA_XEN_VERSION, 0, 0, 0],
        // One hypercall page, filled by a write of its address to this MSR.
        0x4000_0002 => [1, abi::xen::hypercall::HYPERCALL_PAGE_MSR, 0, 0],
        0x4000_0004 => [xen::MICA_HVM_CPUID_FEATURES, vcpu, domain, 0],
        // The time leaf (the TSC is the CPU's, never emulated) and the rest.
        _ => [0; 4],
    }
}

/// A mask of the given bit numbers.
const fn bits(numbers: &[u32]) -> u32 {
    let mut mask = 0;
    let mut index = 0;
    while index < numbers.len() {
        mask |= 1 << numbers[index];
        index += 1;
    }
    mask
}

/// CPUID.1:ECX bits hv hides: DTES64 (2), MONITOR (3), DS-CPL (4), VMX (5),
/// SMX (6), EST (7), TM2 (8), FMA (12), xTPR (14), PDCM (15), PCID (17),
/// DCA (18), AVX (28), F16C (29).
const HIDDEN_LEAF1_ECX: u32 = bits(&[2, 3, 4, 5, 6, 7, 8, 12, 14, 15, 17, 18, 28, 29]);
/// CPUID.1:EDX bits hv hides: MCE (7), MTRR (12), MCA (14), DS (21), ACPI
/// (22), TM (29), PBE (31). Without MCE and MCA hidden, Debian's kernel
/// read MCG_STATUS, got #GP and panicked ("MCA architectural violation").
/// The MTRR MSRs are not virtualized (EPT sets memory types): with MTRR
/// shown, the kernel read MTRRcap unchecked and logged a call trace; with
/// it hidden it finds MTRRs off, as it did when those reads faulted.
const HIDDEN_LEAF1_EDX: u32 = bits(&[7, 12, 14, 21, 22, 29, 31]);
/// CPUID.7.0:EBX bits hv hides: TSC_ADJUST (1: the MSR is not
/// virtualized; Debian's kernel read it unchecked and logged a call
/// trace), SGX (2), AVX2 (5), RDT-M (12), MPX (14), RDT-A (15), AVX512F
/// (16), AVX512DQ (17), AVX512_IFMA (21), Intel PT (25), AVX512PF (26),
/// AVX512ER (27), AVX512CD (28), AVX512BW (30), AVX512VL (31).
const HIDDEN_LEAF7_EBX: u32 = bits(&[1, 2, 5, 12, 14, 15, 16, 17, 21, 25, 26, 27, 28, 30, 31]);
/// CPUID.7.0:ECX bits hv hides: AVX512_VBMI (1), PKU (3), OSPKE (4; hv
/// keeps CR4.PKE, so PKRU, to itself), WAITPKG (5), AVX512_VBMI2 (6), VAES
/// (9), VPCLMULQDQ (10), AVX512_VNNI (11), AVX512_BITALG (12),
/// AVX512_VPOPCNTDQ (14), SGX_LC (30).
const HIDDEN_LEAF7_ECX: u32 = bits(&[1, 3, 4, 5, 6, 9, 10, 11, 12, 14, 30]);
/// CPUID.7.0:EDX bits hv hides: AVX512_4VNNIW (2), AVX512_4FMAPS (3),
/// AVX512_VP2INTERSECT (8), AMX_BF16 (22), AVX512_FP16 (23), AMX_TILE
/// (24), AMX_INT8 (25), IBRS/IBPB (26), STIBP (27), L1D_FLUSH (28),
/// ARCH_CAPABILITIES (29), CORE_CAPABILITIES (30), SSBD (31).
const HIDDEN_LEAF7_EDX: u32 = bits(&[2, 3, 8, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31]);
/// CPUID.6:EAX.ARAT (2).
const LEAF6_ARAT: u32 = 1 << 2;
/// CPUID.(0xD,1):EAX.XSAVEOPT (0).
const XSAVEOPT: u32 = 1;
/// CPUID.1:ECX bits of a guest's APIC: x2APIC (21) and TSC-deadline (24).
const GUEST_APIC_LEAF1_ECX: u32 = (1 << 21) | (1 << 24);
/// CPUID.1:EDX.APIC (9).
const GUEST_APIC_LEAF1_EDX: u32 = 1 << 9;
/// Size of an XSAVE area holding x87 and SSE state only.
const XSAVE_AREA_BYTES: u32 = 576;
/// CPUID.1:ECX.OSXSAVE.
const OSXSAVE_BIT: u32 = 1 << 27;

/// CPUID.1:ECX with OSXSAVE as the guest's CR4.OSXSAVE has it (CPUID runs
/// in hv, where the bit would show hv's CR4).
pub fn with_osxsave(ecx: u32, guest_osxsave: bool) -> u32 {
    if guest_osxsave { ecx | OSXSAVE_BIT } else { ecx & !OSXSAVE_BIT }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers shaped like a Skylake-X's (the model our Bochs emulates):
    /// leaf, sub-leaf, registers.
    const SKYLAKE_X: [(u32, u32, [u32; 4]); 8] = [
        (1, 0, [0x5_0654, 0x0010_0800, 0x7ffe_fbff, 0xbfeb_fbff]),
        (6, 0, [0x77, 0x2, 0x9, 0]),
        (7, 0, [0, 0xd19f_4fbb, 0x0000_0008, 0x9c00_0000]),
        (0xa, 0, [0x0760_4304, 0, 0, 0x603]),
        (0xd, 0, [0x2ff, 0xa88, 0xa88, 0]),
        (0xd, 1, [0xf, 0xa88, 0x100, 0]),
        (0xd, 2, [0x100, 0x240, 0, 0]),
        (0xd, 6, [0x200, 0x480, 0, 0]),
    ];

    fn skylake(leaf: u32, subleaf: u32) -> [u32; 4] {
        SKYLAKE_X.iter().find(|(l, s, _)| (*l, *s) == (leaf, subleaf)).map(|(_, _, raw)| *raw).unwrap()
    }

    #[test]
    fn xsave_offers_only_the_state_hv_switches_in_every_sub_leaf() {
        for ids in [(abi::DOM0, 0), (7, 1)] {
            let leaf = |subleaf| filter_cpuid(0xd, subleaf, skylake(0xd, subleaf), ids);
            assert_eq!(leaf(0), [3, 576, 576, 0], "x87 and SSE, in 576 bytes");
            // The bug Linux found: sub-leaf 1 passed sub-leaf 0's filter, so
            // ECX (the IA32_XSS bits) read 576 = ZMM_Hi256 | PKRU, and the
            // kernel set XCR0 = x87 | SSE | ZMM_Hi256.
            assert_eq!(leaf(1), [1, 576, 0, 0], "XSAVEOPT only; no supervisor state");
            assert_eq!(leaf(2), [0; 4], "no AVX component");
            assert_eq!(leaf(6), [0; 4], "no AVX-512 component");
        }
        // Every XCR0 value a guest can compose from what CPUID offers
        // (sub-leaf 0's EAX, sub-leaf 1's ECX) is one XSETBV accepts.
        let offered = leaf_bits(0xd, 0, 0) | leaf_bits(0xd, 1, 2);
        assert_eq!(crate::cpu_state::xsetbv(0, u64::from(offered), 0x2ff), Some(u64::from(offered)));
    }

    fn leaf_bits(leaf: u32, subleaf: u32, register: usize) -> u32 {
        filter_cpuid(leaf, subleaf, skylake(leaf, subleaf), (7, 0))[register]
    }

    #[test]
    fn no_feature_built_on_state_hv_does_not_switch_is_offered() {
        let leaf1 = filter_cpuid(1, 0, skylake(1, 0), (7, 0));
        for (bit, name) in [(28, "AVX"), (12, "FMA"), (29, "F16C"), (5, "VMX"), (3, "MONITOR"), (17, "PCID")] {
            assert_eq!(leaf1[2] & 1 << bit, 0, "leaf 1 ECX: {name} hidden");
        }
        for (bit, name) in [(7, "MCE"), (12, "MTRR"), (14, "MCA"), (22, "ACPI"), (29, "TM")] {
            assert_eq!(leaf1[3] & 1 << bit, 0, "leaf 1 EDX: {name} hidden");
        }
        let [max_subleaf, ebx, ecx, edx] = filter_cpuid(7, 0, skylake(7, 0), (7, 0));
        assert_eq!(max_subleaf, 0, "sub-leaf 0 only");
        assert_eq!(ebx & bits(&[5, 16, 17, 28, 30, 31]), 0, "AVX2 and AVX-512 hidden");
        assert_eq!(ebx & bits(&[1]), 0, "TSC_ADJUST hidden (its MSR is not virtualized)");
        assert_eq!(ebx & bits(&[0, 3, 8, 9, 10]), bits(&[0, 3, 8, 9, 10]), "FSGSBASE, BMI1/2, ERMS, INVPCID kept");
        assert_eq!(ecx & bits(&[3, 4]), 0, "PKU, OSPKE hidden");
        assert_eq!(edx & bits(&[26, 27, 28, 29, 31]), 0, "speculation-control MSRs hidden");
        assert_eq!(filter_cpuid(7, 1, [0x30, 0, 0, 0], (7, 0)), [0; 4], "AVX-VNNI and the like hidden");
        assert_eq!(filter_cpuid(6, 0, skylake(6, 0), (7, 0)), [1 << 2, 0, 0, 0], "ARAT only: no APERF/MPERF");
        assert_eq!(filter_cpuid(0xa, 0, skylake(0xa, 0), (7, 0)), [0; 4], "no performance counters");
    }

    #[test]
    fn cpuid_view() {
        let ids = (7, 2);
        let leaf1 = filter_cpuid(1, 0, [0x906ea, 0, (1 << 5) | (1 << 3) | 1, 0], ids);
        assert_eq!(leaf1[2] & (1 << 5), 0, "VMX hidden");
        assert_eq!(leaf1[2] & (1 << 3), 0, "MONITOR hidden");
        assert_ne!(leaf1[2] & cpuid::HYPERVISOR_PRESENT_BIT, 0);
        assert_eq!(leaf1[2] & 1, 1, "other bits pass");
        for domain in [abi::DOM0, 7] {
            let edx = filter_cpuid(1, 0, [0x906ea, 0, 0, (1 << 7) | (1 << 14) | 1], (domain, 0))[3];
            assert_eq!(edx & ((1 << 7) | (1 << 14)), 0, "d{domain}: MCE and MCA hidden");
            assert_eq!(edx & 1, 1, "d{domain}: other bits pass");
        }
        let signature = filter_cpuid(cpuid::LEAF_SIGNATURE, 0, [0; 4], ids);
        assert_eq!(signature[0], cpuid::LEAF_MAX);
        assert_eq!(cpuid::signature_from_registers(signature[1], signature[2], signature[3]), cpuid::SIGNATURE);
        assert_eq!(filter_cpuid(cpuid::LEAF_VERSION, 0, [7; 4], ids), [abi::ABI_VERSION, 0, 0, 0]);
        for leaf in [0x4000_0010, 0x4000_0005, 0x4000_0102, 0x4000_0200, 0x4fff_ffff] {
            assert_eq!(
                filter_cpuid(leaf, 0, [7; 4], ids),
                [0; 4],
                "{leaf:#x}: not the CPU's (or an outer hypervisor's)"
            );
        }
        assert_eq!(filter_cpuid(0, 0, [1, 2, 3, 4], ids), [1, 2, 3, 4]);
        assert_eq!(with_osxsave(0, true), 1 << 27);
        assert_eq!(with_osxsave(u32::MAX, false), !(1 << 27));
    }

    #[test]
    fn a_guest_sees_its_x2apic_and_dom0_the_cpus_leaf_1() {
        let raw = [0x906ea, 0x0a10_0800, 0, 0];
        let [_, ebx, ecx, edx] = filter_cpuid(1, 0, raw, (7, 2));
        assert_eq!(ebx, 0x0210_0800, "initial APIC id: the vCPU's");
        assert_eq!(ecx & (1 << 21 | 1 << 24), 1 << 21 | 1 << 24, "x2APIC, TSC-deadline");
        assert_eq!(edx & (1 << 9), 1 << 9, "APIC");
        assert_eq!(filter_cpuid(0xb, 0, [1, 2, 0x100, 9], (7, 2)), [1, 2, 0x100, 2]);
        let [_, ebx, ecx, edx] = filter_cpuid(1, 0, raw, (abi::DOM0, 2));
        assert_eq!((ebx, ecx & (1 << 21 | 1 << 24), edx), (0x0a10_0800, 0, 0), "dom0: as before");
        assert_eq!(filter_cpuid(0xb, 0, [1, 2, 0x100, 9], (abi::DOM0, 2)), [1, 2, 0x100, 9]);
    }

    #[test]
    fn xen_guests_find_xen_4_17_with_their_ids_and_a_hypercall_page() {
        use abi::xen::cpuid as xen;
        let ids = (7, 2);
        let base = xen::find_xen_base(|leaf| filter_cpuid(leaf, 0, [0x55; 4], ids));
        assert_eq!(base, Some(0x4000_0000));
        let [max, ..] = filter_cpuid(0x4000_0000, 0, [0; 4], ids);
        assert_eq!(max, 0x4000_0004);
        assert_eq!(filter_cpuid(0x4000_0001, 0, [0; 4], ids)[0], 4 << 16 | 17);
        assert_eq!(filter_cpuid(0x4000_0002, 0, [0; 4], ids), [1, 0x4000_0000, 0, 0], "one page, its MSR");
        let [features, vcpu, domain, _] = filter_cpuid(0x4000_0004, 0, [0; 4], ids);
        assert_ne!(features & xen::XEN_HVM_CPUID_VCPU_ID_PRESENT, 0);
        assert_eq!((vcpu, domain), (2, 7));
    }
}
