//! Xen's CPUID leaves: how a guest detects Xen and learns its version,
//! hypercall page MSR, time parameters and HVM features.
//!
//! Xen's leaves start at the first unused multiple of 0x100 from
//! 0x4000_0000: at 0x4000_0000 normally, at 0x4000_0100 when Xen also
//! offers Hyper-V's leaves at 0x4000_0000. A guest scans for the
//! signature ([`find_xen_base`]). Mica will offer them at 0x4000_0000.
//!
//! **Not yet in effect.** Today Mica's own leaves occupy 0x4000_0000
//! ([`crate::cpuid`], signature "MicaMicaMica"). When hv moves to this
//! ABI, 0x4000_0000.. will carry Xen's leaves as below, and Mica's own
//! version will be found elsewhere (decided in that step).
//!
//! Leaves, relative to the base:
//! - base + 0 ([`LEAF_SIGNATURE`]): EAX the highest Xen leaf, EBX ECX EDX
//!   `"XenVMMXenVMM"` ([`XEN_CPUID_SIGNATURE_EBX`] ...).
//! - base + 1 ([`LEAF_VERSION`]): EAX `major << 16 | minor`.
//! - base + 2 ([`LEAF_HYPERCALL`]): EAX hypercall pages (1), EBX the MSR
//!   that fills one ([`super::hypercall::HYPERCALL_PAGE_MSR`]), ECX EDX
//!   feature bits (PV only; 0).
//! - base + 3 ([`LEAF_TIME`]), sub-leaf 0: EAX `XEN_CPUID_TSC_*` flags,
//!   EBX the TSC mode, ECX the guest TSC frequency in kHz, EDX the
//!   migration count; sub-leaf 1: EAX/EBX the TSC offset (low/high), ECX
//!   the TSC-to-ns multiplier and EDX the shift (as in
//!   [`super::shared_info::VcpuTimeInfo`]); sub-leaf 2: EAX the host TSC
//!   frequency in kHz.
//! - base + 4 ([`LEAF_HVM`]), sub-leaf 0: EAX `XEN_HVM_CPUID_*` flags, EBX
//!   the vCPU id (with [`XEN_HVM_CPUID_VCPU_ID_PRESENT`]), ECX the domain id
//!   (with [`XEN_HVM_CPUID_DOMID_PRESENT`]). Linux uses the vCPU id to name
//!   vCPUs in `vcpu_op` and `bind_virq`; without it, it falls back to the
//!   ACPI id.
//! - base + 5 ([`LEAF_PV`]): PV only.

/// The usual base of Xen's leaves.
pub const XEN_CPUID_FIRST_LEAF: u32 = 0x4000_0000;
/// Xen's base when Hyper-V leaves occupy the first one.
pub const XEN_CPUID_VIRIDIAN_BASE: u32 = 0x4000_0100;

/// Offset of the signature leaf.
pub const LEAF_SIGNATURE: u32 = 0;
/// Offset of the version leaf.
pub const LEAF_VERSION: u32 = 1;
/// Offset of the hypercall page leaf.
pub const LEAF_HYPERCALL: u32 = 2;
/// Offset of the time leaf.
pub const LEAF_TIME: u32 = 3;
/// Offset of the HVM features leaf.
pub const LEAF_HVM: u32 = 4;
/// Offset of the PV parameters leaf.
pub const LEAF_PV: u32 = 5;
/// Highest offset Xen defines (`XEN_CPUID_MAX_NUM_LEAVES`); the signature
/// leaf's EAX is at most base + this.
pub const XEN_CPUID_MAX_NUM_LEAVES: u32 = 5;

/// The signature, EBX part: `"XenV"`.
pub const XEN_CPUID_SIGNATURE_EBX: u32 = 0x566e_6558;
/// The signature, ECX part: `"MMXe"`.
pub const XEN_CPUID_SIGNATURE_ECX: u32 = 0x6558_4d4d;
/// The signature, EDX part: `"nVMM"`.
pub const XEN_CPUID_SIGNATURE_EDX: u32 = 0x4d4d_566e;
/// The signature's twelve bytes in EBX, ECX, EDX order.
pub const XEN_CPUID_SIGNATURE: [u8; 12] = *b"XenVMMXenVMM";

/// Leaf 2, ECX: PV only, `MMU_PT_UPDATE_PRESERVE_AD` is available.
pub const XEN_CPUID_FEAT1_MMU_PT_UPDATE_PRESERVE_AD: u32 = 1 << 0;

/// Leaf 3 sub-leaf 0, EAX: the TSC is emulated.
pub const XEN_CPUID_TSC_EMULATED: u32 = 1 << 0;
/// Leaf 3 sub-leaf 0, EAX: the host TSC is reliable (invariant and
/// synchronised).
pub const XEN_CPUID_HOST_TSC_RELIABLE: u32 = 1 << 1;
/// Leaf 3 sub-leaf 0, EAX: RDTSCP is available.
pub const XEN_CPUID_RDTSCP_INSTR_AVAIL: u32 = 1 << 2;
/// Leaf 3 sub-leaf 0, EBX: emulate the TSC when needed.
pub const XEN_CPUID_TSC_MODE_DEFAULT: u32 = 0;
/// Leaf 3 sub-leaf 0, EBX: always emulate the TSC.
pub const XEN_CPUID_TSC_MODE_ALWAYS_EMULATE: u32 = 1;
/// Leaf 3 sub-leaf 0, EBX: never emulate the TSC (Mica's mode).
pub const XEN_CPUID_TSC_MODE_NEVER_EMULATE: u32 = 2;
/// Leaf 3 sub-leaf 0, EBX: never emulate, with a per-domain TSC_AUX.
pub const XEN_CPUID_TSC_MODE_PVRDTSCP: u32 = 3;

/// Leaf 4, EAX: APIC register accesses are virtualised in hardware.
pub const XEN_HVM_CPUID_APIC_ACCESS_VIRT: u32 = 1 << 0;
/// Leaf 4, EAX: x2APIC MSR accesses are virtualised in hardware.
pub const XEN_HVM_CPUID_X2APIC_VIRT: u32 = 1 << 1;
/// Leaf 4, EAX: memory mapped from other domains has I/O MMU entries.
pub const XEN_HVM_CPUID_IOMMU_MAPPINGS: u32 = 1 << 2;
/// Leaf 4, EAX: EBX holds the vCPU id. Mica sets it.
pub const XEN_HVM_CPUID_VCPU_ID_PRESENT: u32 = 1 << 3;
/// Leaf 4, EAX: ECX holds the domain id. Mica sets it.
pub const XEN_HVM_CPUID_DOMID_PRESENT: u32 = 1 << 4;
/// Leaf 4, EAX: interrupt remapping may use 15-bit destination ids.
pub const XEN_HVM_CPUID_EXT_DEST_ID: u32 = 1 << 5;
/// Leaf 4, EAX: per-vCPU upcall vectors (`HVMOP_set_evtchn_upcall_vector`)
/// work. Mica does not set it, so Linux uses the domain-wide callback
/// vector.
pub const XEN_HVM_CPUID_UPCALL_VECTOR: u32 = 1 << 6;

/// Leaf 4 EAX as Mica will report it: vCPU and domain ids present.
pub const MICA_HVM_CPUID_FEATURES: u32 = XEN_HVM_CPUID_VCPU_ID_PRESENT | XEN_HVM_CPUID_DOMID_PRESENT;

/// Leaf 5 sub-leaf 0, EBX: maximum machine address width (bits 0..8).
pub const XEN_CPUID_MACHINE_ADDRESS_WIDTH_MASK: u32 = 0xff;

/// The signature as EBX, ECX, EDX.
pub const fn signature_registers() -> [u32; 3] {
    [XEN_CPUID_SIGNATURE_EBX, XEN_CPUID_SIGNATURE_ECX, XEN_CPUID_SIGNATURE_EDX]
}

/// Whether EBX, ECX, EDX of a leaf hold Xen's signature.
pub const fn is_xen_signature(ebx: u32, ecx: u32, edx: u32) -> bool {
    ebx == XEN_CPUID_SIGNATURE_EBX && ecx == XEN_CPUID_SIGNATURE_ECX && edx == XEN_CPUID_SIGNATURE_EDX
}

/// The base of Xen's leaves, found the way guests look for it: the first
/// of 0x4000_0000, 0x4000_0100, ... 0x4000_ff00 whose leaf carries the
/// signature and whose EAX reaches at least base + 2. `cpuid(leaf)` returns
/// EAX, EBX, ECX, EDX.
pub fn find_xen_base(mut cpuid: impl FnMut(u32) -> [u32; 4]) -> Option<u32> {
    (0..0x100u32).map(|index| XEN_CPUID_FIRST_LEAF + index * 0x100).find(|&base| {
        let [eax, ebx, ecx, edx] = cpuid(base);
        is_xen_signature(ebx, ecx, edx) && eax.wrapping_sub(base) >= LEAF_HYPERCALL && eax >= base
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_words_spell_xenvmm() {
        let [ebx, ecx, edx] = signature_registers();
        let mut bytes = [0u8; 12];
        bytes[..4].copy_from_slice(&ebx.to_le_bytes());
        bytes[4..8].copy_from_slice(&ecx.to_le_bytes());
        bytes[8..].copy_from_slice(&edx.to_le_bytes());
        assert_eq!(bytes, XEN_CPUID_SIGNATURE);
        assert!(is_xen_signature(ebx, ecx, edx));
        assert!(!is_xen_signature(ecx, ebx, edx));
    }

    #[test]
    fn base_search() {
        let xen = |base: u32| {
            move |leaf: u32| {
                if leaf == base {
                    let [b, c, d] = signature_registers();
                    [base + XEN_CPUID_MAX_NUM_LEAVES, b, c, d]
                } else if leaf == XEN_CPUID_FIRST_LEAF {
                    [0x4000_0005, u32::from_le_bytes(*b"Micr"), u32::from_le_bytes(*b"osof"), 0]
                } else {
                    [0; 4]
                }
            }
        };
        assert_eq!(find_xen_base(xen(XEN_CPUID_FIRST_LEAF)), Some(0x4000_0000));
        assert_eq!(find_xen_base(xen(XEN_CPUID_VIRIDIAN_BASE)), Some(0x4000_0100));
        assert_eq!(find_xen_base(|_| [0; 4]), None);
        // A signature whose leaf count is too small does not count.
        let short = |leaf: u32| {
            let [b, c, d] = signature_registers();
            if leaf == XEN_CPUID_FIRST_LEAF { [leaf + 1, b, c, d] } else { [0; 4] }
        };
        assert_eq!(find_xen_base(short), None);
    }

    #[test]
    fn mica_reports_ids() {
        assert_eq!(MICA_HVM_CPUID_FEATURES, 0x18);
        assert_eq!(MICA_HVM_CPUID_FEATURES & XEN_HVM_CPUID_UPCALL_VECTOR, 0);
    }
}
