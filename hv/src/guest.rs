//! Rules for what a domain hands hv: guest-physical buffers passed to
//! hypercalls, versioned-by-size structures, and the CPUID view a domain gets.
//!
//! All of it is pure arithmetic so that hostile values can be tested on the host.

use abi::Error;
use abi::cpuid;

/// One piece of a guest buffer that lies within a single 4 KiB page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Guest-physical address of the piece.
    pub guest_physical: u64,
    /// Offset of the piece within the whole buffer.
    pub offset: usize,
    /// Length of the piece (never crosses a page boundary).
    pub length: usize,
}

/// Splits a guest buffer into page-bounded chunks.
#[derive(Clone, Debug)]
pub struct PageChunks {
    next: u64,
    offset: usize,
    remaining: u64,
}

/// Validates a guest buffer `[guest_physical, guest_physical + length)`:
/// the length must be at most `max_length` and the range must not wrap.
/// Whether the pages are the caller's is checked when each chunk is
/// translated. A zero length gives no chunks.
pub fn page_chunks(guest_physical: u64, length: u64, max_length: u64) -> Result<PageChunks, Error> {
    if length > max_length {
        return Err(Error::InvalidArgument);
    }
    if guest_physical.checked_add(length).is_none() {
        return Err(Error::BadAddress);
    }
    Ok(PageChunks { next: guest_physical, offset: 0, remaining: length })
}

impl Iterator for PageChunks {
    type Item = Chunk;

    fn next(&mut self) -> Option<Chunk> {
        if self.remaining == 0 {
            return None;
        }
        let page_left = abi::PAGE_SIZE - (self.next % abi::PAGE_SIZE);
        let length = page_left.min(self.remaining);
        let chunk = Chunk { guest_physical: self.next, offset: self.offset, length: length as usize };
        self.next += length;
        self.offset += length as usize;
        self.remaining -= length;
        Some(chunk)
    }
}

/// How many bytes of a size-versioned structure to write back: the caller
/// allocated `requested` bytes, the oldest layout is `minimum` bytes, and
/// the current one `full` bytes.
pub fn versioned_size(requested: u64, minimum: u64, full: usize) -> Result<usize, Error> {
    if requested < minimum {
        return Err(Error::BufferTooSmall);
    }
    Ok(requested.min(full as u64) as usize)
}

/// CPUID.1:ECX bits hv hides: VMX (5; no nested virtualization) and
/// MONITOR/MWAIT (3; they exit and are refused).
const HIDDEN_LEAF1_ECX: u32 = (1 << 5) | (1 << 3);
/// CPUID.1:EDX bits hv hides: machine-check exception (7) and
/// architecture (14): hv emulates no machine-check MSRs (MCG_CAP,
/// MCG_STATUS, the banks), and Linux panics ("MCA architectural
/// violation") when a CPU that claims MCA faults on reading them.
const HIDDEN_LEAF1_EDX: u32 = (1 << 7) | (1 << 14);

/// The CPUID result vCPU `vcpu` of domain `domain` sees for `leaf`, given
/// what the CPU returned. Leaf 1 gains the hypervisor-present bit and
/// loses what hv does not offer; a guest's (not dom0's) leaf 1 shows its
/// x2APIC (`vlapic`) and leaves 0xB and 0x1F its x2APIC id; the hypervisor range 0x4000_0000.. holds
/// Xen's leaves, then Mica's (see `abi::cpuid`), and zeros; all else
/// passes through.
pub fn filter_cpuid(leaf: u32, raw: [u32; 4], ids: (u32, u32)) -> [u32; 4] {
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
        // Extended topology: the x2APIC id in EDX.
        0xb | 0x1f if guest => [eax, ebx, ecx, ids.1],
        0x4000_0000..=0x4fff_ffff => hypervisor_leaf(leaf, ids),
        // Structured extended features: no protection keys (hv keeps
        // CR4.PKE, so PKRU, to itself).
        7 => [eax, ebx, ecx & !HIDDEN_LEAF7_ECX, edx],
        // XSAVE: only the state hv switches (see `cpu_state::xcr0`), in the
        // legacy area and the header (512 + 64 bytes).
        0xd => [eax & crate::cpu_state::xcr0::ALLOWED as u32, ebx, XSAVE_AREA_BYTES, 0],
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

/// CPUID.1:ECX bits of a guest's APIC: x2APIC (21) and TSC-deadline (24).
const GUEST_APIC_LEAF1_ECX: u32 = (1 << 21) | (1 << 24);
/// CPUID.1:EDX.APIC (9).
const GUEST_APIC_LEAF1_EDX: u32 = 1 << 9;

/// CPUID.7.0:ECX bits hv hides: PKU (3) and OSPKE (4).
const HIDDEN_LEAF7_ECX: u32 = (1 << 3) | (1 << 4);
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

    #[test]
    fn cpuid_offers_only_state_hv_switches() {
        // Leaf 7: PKU and OSPKE hidden, the rest kept.
        assert_eq!(filter_cpuid(7, [0, 1, 0xff, 2], (1, 0)), [0, 1, 0xe7, 2]);
        // Leaf 0xD: a Skylake-X's x87..PKRU becomes x87 and SSE only.
        assert_eq!(filter_cpuid(0xd, [0x2ff, 0x240, 0xa88, 0], (1, 0)), [3, 0x240, 576, 0]);
        assert_eq!(with_osxsave(0, true), 1 << 27);
        assert_eq!(with_osxsave(u32::MAX, false), !(1 << 27));
    }

    #[test]
    fn chunks_split_at_page_boundaries() {
        let chunks: Vec<_> = page_chunks(0x1ff0, 0x1020, 0x10000).unwrap().collect();
        assert_eq!(
            chunks,
            vec![
                Chunk { guest_physical: 0x1ff0, offset: 0, length: 0x10 },
                Chunk { guest_physical: 0x2000, offset: 0x10, length: 0x1000 },
                Chunk { guest_physical: 0x3000, offset: 0x1010, length: 0x10 },
            ]
        );
        assert_eq!(chunks.iter().map(|c| c.length).sum::<usize>(), 0x1020);
    }

    #[test]
    fn hostile_buffers_are_refused() {
        assert_eq!(page_chunks(u64::MAX - 4, 8, 100).err(), Some(Error::BadAddress));
        assert_eq!(page_chunks(0, 4097, 4096).err(), Some(Error::InvalidArgument));
        assert_eq!(page_chunks(0, u64::MAX, u64::MAX).err(), None);
        assert_eq!(page_chunks(1, u64::MAX, u64::MAX).err(), Some(Error::BadAddress));
        assert_eq!(page_chunks(0x5000, 0, 10).unwrap().count(), 0);
    }

    #[test]
    fn chunks_of_random_buffers_cover_them_exactly() {
        let mut random = crate::test_random::XorShift(0x1234_5678_9abc_def0);
        for _ in 0..10_000 {
            let seed = random.next();
            let address = seed % (1 << 40);
            let length = (seed >> 40) % 20_000;
            let mut expected = address;
            let mut total = 0;
            for chunk in page_chunks(address, length, 1 << 20).unwrap() {
                assert_eq!(chunk.guest_physical, expected);
                assert_eq!(chunk.offset as u64, total);
                assert!(chunk.length > 0);
                assert_eq!(chunk.guest_physical / 4096, (chunk.guest_physical + chunk.length as u64 - 1) / 4096);
                expected += chunk.length as u64;
                total += chunk.length as u64;
            }
            assert_eq!(total, length);
        }
    }

    #[test]
    fn versioned_sizes() {
        assert_eq!(versioned_size(10, 80, 80), Err(Error::BufferTooSmall));
        assert_eq!(versioned_size(80, 80, 80), Ok(80));
        assert_eq!(versioned_size(4096, 80, 96), Ok(96));
        assert_eq!(versioned_size(88, 80, 96), Ok(88));
    }

    #[test]
    fn cpuid_view() {
        let ids = (7, 2);
        let leaf1 = filter_cpuid(1, [0x906ea, 0, (1 << 5) | (1 << 3) | 1, 0], ids);
        assert_eq!(leaf1[2] & (1 << 5), 0, "VMX hidden");
        assert_eq!(leaf1[2] & (1 << 3), 0, "MONITOR hidden");
        assert_ne!(leaf1[2] & cpuid::HYPERVISOR_PRESENT_BIT, 0);
        assert_eq!(leaf1[2] & 1, 1, "other bits pass");
        for domain in [abi::DOM0, 7] {
            let edx = filter_cpuid(1, [0x906ea, 0, 0, (1 << 7) | (1 << 14) | 1], (domain, 0))[3];
            assert_eq!(edx & ((1 << 7) | (1 << 14)), 0, "d{domain}: MCE and MCA hidden");
            assert_eq!(edx & 1, 1, "d{domain}: other bits pass");
        }
        let signature = filter_cpuid(cpuid::LEAF_SIGNATURE, [0; 4], ids);
        assert_eq!(signature[0], cpuid::LEAF_MAX);
        assert_eq!(cpuid::signature_from_registers(signature[1], signature[2], signature[3]), cpuid::SIGNATURE);
        assert_eq!(filter_cpuid(cpuid::LEAF_VERSION, [7; 4], ids), [abi::ABI_VERSION, 0, 0, 0]);
        for leaf in [0x4000_0010, 0x4000_0005, 0x4000_0102, 0x4000_0200, 0x4fff_ffff] {
            assert_eq!(filter_cpuid(leaf, [7; 4], ids), [0; 4], "{leaf:#x}: not the CPU's (or an outer hypervisor's)");
        }
        assert_eq!(filter_cpuid(0, [1, 2, 3, 4], ids), [1, 2, 3, 4]);
    }

    #[test]
    fn a_guest_sees_its_x2apic_and_dom0_the_cpus_leaf_1() {
        let raw = [0x906ea, 0x0a10_0800, 0, 0];
        let [_, ebx, ecx, edx] = filter_cpuid(1, raw, (7, 2));
        assert_eq!(ebx, 0x0210_0800, "initial APIC id: the vCPU's");
        assert_eq!(ecx & (1 << 21 | 1 << 24), 1 << 21 | 1 << 24, "x2APIC, TSC-deadline");
        assert_eq!(edx & (1 << 9), 1 << 9, "APIC");
        assert_eq!(filter_cpuid(0xb, [1, 2, 0x100, 9], (7, 2)), [1, 2, 0x100, 2]);
        let [_, ebx, ecx, edx] = filter_cpuid(1, raw, (abi::DOM0, 2));
        assert_eq!((ebx, ecx & (1 << 21 | 1 << 24), edx), (0x0a10_0800, 0, 0), "dom0: as before");
        assert_eq!(filter_cpuid(0xb, [1, 2, 0x100, 9], (abi::DOM0, 2)), [1, 2, 0x100, 9]);
    }

    #[test]
    fn xen_guests_find_xen_4_17_with_their_ids_and_a_hypercall_page() {
        use abi::xen::cpuid as xen;
        let ids = (7, 2);
        let base = xen::find_xen_base(|leaf| filter_cpuid(leaf, [0x55; 4], ids));
        assert_eq!(base, Some(0x4000_0000));
        let [max, ..] = filter_cpuid(0x4000_0000, [0; 4], ids);
        assert_eq!(max, 0x4000_0004);
        assert_eq!(filter_cpuid(0x4000_0001, [0; 4], ids)[0], 4 << 16 | 17);
        assert_eq!(filter_cpuid(0x4000_0002, [0; 4], ids), [1, 0x4000_0000, 0, 0], "one page, its MSR");
        let [features, vcpu, domain, _] = filter_cpuid(0x4000_0004, [0; 4], ids);
        assert_ne!(features & xen::XEN_HVM_CPUID_VCPU_ID_PRESENT, 0);
        assert_eq!((vcpu, domain), (2, 7));
    }
}
