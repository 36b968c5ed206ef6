//! The CPUID interface of the hypervisor (the 0x4000_0000 leaf range).
//!
//! A domain detects a hypervisor by CPUID leaf 0x1 ECX bit 31 ("hypervisor
//! present"). From ABI 1.0 the first leaves, 0x4000_0000 to 0x4000_0004,
//! are Xen's ([`crate::xen::cpuid`]: signature "XenVMMXenVMM", version
//! 4.17, the hypercall page MSR, the vCPU and domain ids), so that Xen
//! guests find Xen; Mica's own come next, at [`LEAF_SIGNATURE`], whose
//! EBX, ECX, EDX hold [`SIGNATURE`] (Xen guests scan the range in steps
//! of 0x100 and stop at Xen's). Every other leaf of the range reads zero.

/// EAX: highest hypervisor leaf. EBX, ECX, EDX: [`SIGNATURE`].
pub const LEAF_SIGNATURE: u32 = 0x4000_0100;
/// EAX: [`crate::ABI_VERSION`]. EBX, ECX, EDX: zero (reserved).
pub const LEAF_VERSION: u32 = 0x4000_0101;
/// The highest hypervisor leaf this ABI defines.
pub const LEAF_MAX: u32 = LEAF_VERSION;

/// The twelve signature bytes, in EBX, ECX, EDX order (little-endian words).
pub const SIGNATURE: [u8; 12] = *b"MicaMicaMica";

/// CPUID.1:ECX bit 31: a hypervisor is present.
pub const HYPERVISOR_PRESENT_BIT: u32 = 1 << 31;

/// The signature as the three register values (EBX, ECX, EDX).
pub const fn signature_registers() -> [u32; 3] {
    let s = SIGNATURE;
    [
        u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
        u32::from_le_bytes([s[4], s[5], s[6], s[7]]),
        u32::from_le_bytes([s[8], s[9], s[10], s[11]]),
    ]
}

/// Reassembles the signature from EBX, ECX, EDX.
pub const fn signature_from_registers(ebx: u32, ecx: u32, edx: u32) -> [u8; 12] {
    let b = ebx.to_le_bytes();
    let c = ecx.to_le_bytes();
    let d = edx.to_le_bytes();
    [b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2], d[3]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_round_trips() {
        let [b, c, d] = signature_registers();
        assert_eq!(signature_from_registers(b, c, d), SIGNATURE);
    }
}
