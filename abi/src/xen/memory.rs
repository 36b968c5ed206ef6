//! `memory_op` ([`super::Hypercall::MemoryOp`]): a PVH guest's view of its
//! guest-physical address space.
//!
//! `rdi` is a [`MemoryOp`], `rsi` the address of its argument. A PVH
//! guest uses two operations: [`MemoryOp::AddToPhysmap`] to place the
//! shared-info page and its grant table frames, and
//! [`MemoryOp::MemoryMap`] to read its memory map when its
//! `hvm_start_info` has none (version 0). Xen reads only bits 0..6 of
//! `rdi` as the operation and keeps a preempted call's progress in the
//! bits above; a guest passes the bare number ([`MEMOP_CMD_MASK`]).

use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{DomId, numbered_enum};

/// The bits of `rdi` that name the operation.
pub const MEMOP_CMD_MASK: u32 = (1 << 6) - 1;

numbered_enum! {
    /// Memory operations (`XENMEM_*`), in `rdi`. Mica offers those whose
    /// documentation does not say otherwise; the rest return `-ENOSYS`.
    pub enum MemoryOp: u32 {
        /// Adds pages to the domain ([`XenMemoryReservation`]). Not
        /// offered: Mica gives a domain all its memory at creation.
        IncreaseReservation = 0,
        /// Gives pages back ([`XenMemoryReservation`]). Not offered yet
        /// (ballooning).
        DecreaseReservation = 1,
        /// PV: the highest machine frame. Not offered.
        MaximumRamPage = 2,
        /// Pages the domain has now ([`XenMemoryDomain`]), returned in
        /// `rax`. Errors: `-ESRCH` no such domain; `-EPERM` another domain
        /// (unprivileged).
        CurrentReservation = 3,
        /// Pages the domain may have ([`XenMemoryDomain`]), returned in
        /// `rax`; errors as [`MemoryOp::CurrentReservation`].
        MaximumReservation = 4,
        /// PV: frames of the machine-to-physical table. Not offered.
        MachphysMfnList = 5,
        /// Backs guest frames with memory ([`XenMemoryReservation`]). Not
        /// offered (see [`MemoryOp::IncreaseReservation`]).
        PopulatePhysmap = 6,
        /// Places a hypervisor page or a page of the domain's own at a
        /// guest frame ([`XenAddToPhysmap`]). Returns 0. Errors: `-EINVAL`
        /// an unknown space, or an `idx` beyond it (a grant table frame the
        /// table cannot grow to); `-ESRCH` no such domain; `-EPERM` another
        /// domain (unprivileged); `-ENOMEM` no memory to grow the grant
        /// table.
        AddToPhysmap = 7,
        /// The domain's memory map ([`XenMemoryMap`], entries as
        /// [`E820Entry`]). Writes the first `min(nr_entries, entries in
        /// the map)` entries, sets `nr_entries` to that count and returns
        /// 0: a buffer that is too small silently gets a truncated map.
        /// Errors: `-ENOSYS` the domain has no memory map (dom0 sets one
        /// for every PVH guest, the same as its `hvm_start_info` carries);
        /// `-EFAULT` an unwritable buffer.
        MemoryMap = 9,
        /// The host's memory map (control domain). Not offered.
        MachineMemoryMap = 10,
        /// PV: exchange pages for others. Not offered.
        Exchange = 11,
        /// PV: where the machine-to-physical table is mapped. Not offered.
        MachphysMapping = 12,
        /// Sets a domain's memory map ([`XenForeignMemoryMap`]; dom0, the
        /// toolstack, for a domain it builds): at most
        /// [`MEMORY_MAP_MAX_ENTRIES`] entries, which
        /// [`MemoryOp::MemoryMap`] then answers. Errors: `-EPERM` not dom0;
        /// `-ESRCH` no such domain; `-EINVAL` too many entries; `-EFAULT`
        /// unreadable ones.
        SetMemoryMap = 13,
        /// The highest guest frame in use ([`XenMemoryDomain`]), returned
        /// in `rax`; errors as [`MemoryOp::CurrentReservation`].
        MaximumGpfn = 14,
        /// Removes what a guest frame maps ([`XenRemoveFromPhysmap`]): for
        /// a page placed with [`MemoryOp::AddToPhysmap`], the frame becomes
        /// empty (no RAM) until something is placed there again. Errors:
        /// `-EINVAL` nothing removable is mapped there; `-ESRCH`, `-EPERM`
        /// as above.
        RemoveFromPhysmap = 15,
        /// Populate-on-demand target (toolstack). Not offered.
        SetPodTarget = 16,
        /// Populate-on-demand target (toolstack). Not offered.
        GetPodTarget = 17,
        /// Memory sharing statistics. Not offered.
        GetSharingFreedPages = 18,
        /// Memory sharing statistics. Not offered.
        GetSharingSharedPages = 19,
        /// Paging (toolstack). Not offered.
        PagingOp = 20,
        /// Memory access control (toolstack). Not offered.
        AccessOp = 21,
        /// Memory sharing (toolstack). Not offered.
        SharingOp = 22,
        /// Batched form of [`MemoryOp::AddToPhysmap`]. Not offered.
        AddToPhysmapBatch = 23,
        /// Claims pages for a domain being built (toolstack). Not offered.
        ClaimPages = 24,
        /// PV (32-bit): frames of the compatibility table. Not offered.
        MachphysCompatMfnList = 25,
        /// Virtual NUMA information. Not offered.
        GetVnumainfo = 26,
        /// Reserved device memory (toolstack). Not offered.
        ReservedDeviceMemoryMap = 27,
        /// Maps a resource of another domain (device models). Not offered.
        AcquireResource = 28,
    }
}

/// [`XenAddToPhysmap::space`]: the shared-info page (`idx` 0). The page
/// becomes the domain's [`super::shared_info::SharedInfo`]; if it is
/// already mapped elsewhere it moves. The RAM frame that was at `gpfn` is
/// gone (Linux picks a free RAM page for this).
pub const XENMAPSPACE_SHARED_INFO: u32 = 0;
/// [`XenAddToPhysmap::space`]: frame `idx` of the domain's grant table
/// (growing the table to `idx + 1` frames if allowed). With
/// [`XENMAPIDX_GRANT_TABLE_STATUS`] set in `idx`: a version-2 status frame
/// (not offered).
pub const XENMAPSPACE_GRANT_TABLE: u32 = 1;
/// [`XenAddToPhysmap::space`]: move the domain's own frame `idx` to `gpfn`.
/// Not offered by Mica.
pub const XENMAPSPACE_GMFN: u32 = 2;
/// [`XenAddToPhysmap::space`]: as `GMFN` for `size` frames. Not offered.
pub const XENMAPSPACE_GMFN_RANGE: u32 = 3;
/// Batch only: a frame of another domain. Not offered.
pub const XENMAPSPACE_GMFN_FOREIGN: u32 = 4;
/// ARM only: device memory.
pub const XENMAPSPACE_DEV_MMIO: u32 = 5;

/// Bit of [`XenAddToPhysmap::idx`] selecting a grant status frame
/// (version 2) instead of a table frame.
pub const XENMAPIDX_GRANT_TABLE_STATUS: u64 = 0x8000_0000;

/// Argument of [`MemoryOp::AddToPhysmap`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenAddToPhysmap {
    /// The domain whose map changes: [`super::DOMID_SELF`] or the caller.
    pub domid: DomId,
    /// Frames to move, for [`XENMAPSPACE_GMFN_RANGE`] only.
    pub size: u16,
    /// A `XENMAPSPACE_*` value.
    pub space: u32,
    /// Which page of the space (see each space).
    pub idx: u64,
    /// The guest frame where the page appears.
    pub gpfn: u64,
}

const _: () = assert!(size_of::<XenAddToPhysmap>() == 24);
const _: () = assert!(offset_of!(XenAddToPhysmap, domid) == 0);
const _: () = assert!(offset_of!(XenAddToPhysmap, size) == 2);
const _: () = assert!(offset_of!(XenAddToPhysmap, space) == 4);
const _: () = assert!(offset_of!(XenAddToPhysmap, idx) == 8);
const _: () = assert!(offset_of!(XenAddToPhysmap, gpfn) == 16);

/// Argument of [`MemoryOp::RemoveFromPhysmap`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenRemoveFromPhysmap {
    /// The domain: [`super::DOMID_SELF`] or the caller.
    pub domid: DomId,
    /// Padding (implicit in C), zero.
    pub _pad0: [u16; 3],
    /// The guest frame to empty.
    pub gpfn: u64,
}

const _: () = assert!(size_of::<XenRemoveFromPhysmap>() == 16);
const _: () = assert!(offset_of!(XenRemoveFromPhysmap, domid) == 0);
const _: () = assert!(offset_of!(XenRemoveFromPhysmap, gpfn) == 8);

/// Argument of the reservation queries ([`MemoryOp::CurrentReservation`],
/// [`MemoryOp::MaximumReservation`], [`MemoryOp::MaximumGpfn`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenMemoryDomain {
    /// The domain: [`super::DOMID_SELF`] or the caller.
    pub domid: DomId,
}

const _: () = assert!(size_of::<XenMemoryDomain>() == 2);

/// Argument of the reservation changes (`XENMEM_increase_reservation`,
/// `decrease_reservation`, `populate_physmap`); listed for its layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenMemoryReservation {
    /// Address of an array of `nr_extents` 64-bit frame numbers (the first
    /// frame of each extent).
    pub extent_start: u64,
    /// Number of extents.
    pub nr_extents: u64,
    /// Each extent is `2^extent_order` frames.
    pub extent_order: u32,
    /// `XENMEMF_*` flags (address width, NUMA node).
    pub mem_flags: u32,
    /// The domain: [`super::DOMID_SELF`] or the caller.
    pub domid: DomId,
    /// Padding (implicit in C), zero.
    pub _pad0: [u16; 3],
}

const _: () = assert!(size_of::<XenMemoryReservation>() == 32);
const _: () = assert!(offset_of!(XenMemoryReservation, extent_start) == 0);
const _: () = assert!(offset_of!(XenMemoryReservation, nr_extents) == 8);
const _: () = assert!(offset_of!(XenMemoryReservation, extent_order) == 16);
const _: () = assert!(offset_of!(XenMemoryReservation, mem_flags) == 20);
const _: () = assert!(offset_of!(XenMemoryReservation, domid) == 24);

/// Argument of [`MemoryOp::MemoryMap`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenMemoryMap {
    /// IN: entries the buffer holds; OUT: entries written.
    pub nr_entries: u32,
    /// Padding (implicit in C), zero.
    pub _pad0: u32,
    /// IN: address of an array of [`E820Entry`] (20 bytes each, no
    /// padding between them).
    pub buffer: u64,
}

const _: () = assert!(size_of::<XenMemoryMap>() == 16);
const _: () = assert!(offset_of!(XenMemoryMap, nr_entries) == 0);
const _: () = assert!(offset_of!(XenMemoryMap, buffer) == 8);

/// Argument of [`MemoryOp::SetMemoryMap`] (`xen_foreign_memory_map`):
/// the domain and its map (`map.nr_entries` entries at `map.buffer`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenForeignMemoryMap {
    /// The domain whose map this is.
    pub domid: DomId,
    /// Padding (implicit in C), zero.
    pub _pad0: [u16; 3],
    /// The map.
    pub map: XenMemoryMap,
}

const _: () = assert!(size_of::<XenForeignMemoryMap>() == 24);
const _: () = assert!(offset_of!(XenForeignMemoryMap, map) == 8);

/// Most entries a domain's memory map holds in Mica.
pub const MEMORY_MAP_MAX_ENTRIES: usize = 8;

/// One entry of [`MemoryOp::MemoryMap`]'s buffer, in the BIOS E820 format:
/// 20 bytes, no padding (so `addr` and `size` are only 4-byte aligned).
/// `type` uses the same values as
/// [`super::start_info::HvmMemmapType`].
#[repr(C, packed(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct E820Entry {
    /// Start of the range (guest-physical).
    pub addr: u64,
    /// Length of the range in bytes.
    pub size: u64,
    /// What the range is ([`super::start_info::HvmMemmapType`] number).
    pub r#type: u32,
}

/// Bytes of one [`E820Entry`].
pub const E820_ENTRY_SIZE: usize = 20;

const _: () = assert!(size_of::<E820Entry>() == E820_ENTRY_SIZE);
const _: () = assert!(offset_of!(E820Entry, addr) == 0);
const _: () = assert!(offset_of!(E820Entry, size) == 8);
const _: () = assert!(offset_of!(E820Entry, r#type) == 16);

impl E820Entry {
    /// The entry's 20 bytes (little-endian), for writing into a buffer.
    pub const fn to_bytes(self) -> [u8; E820_ENTRY_SIZE] {
        let mut out = [0u8; E820_ENTRY_SIZE];
        let (addr, size, kind) = (self.addr.to_le_bytes(), self.size.to_le_bytes(), self.r#type.to_le_bytes());
        let mut index = 0;
        while index < 8 {
            out[index] = addr[index];
            out[8 + index] = size[index];
            index += 1;
        }
        let mut index = 0;
        while index < 4 {
            out[16 + index] = kind[index];
            index += 1;
        }
        out
    }

    /// Reads an entry from its 20 bytes.
    pub const fn from_bytes(bytes: [u8; E820_ENTRY_SIZE]) -> E820Entry {
        let [a0, a1, a2, a3, a4, a5, a6, a7, s0, s1, s2, s3, s4, s5, s6, s7, k0, k1, k2, k3] = bytes;
        E820Entry {
            addr: u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
            size: u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
            r#type: u32::from_le_bytes([k0, k1, k2, k3]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::test_support::check_numbered;

    #[test]
    fn numbers_match_xen() {
        check_numbered!(MemoryOp, u32);
        assert_eq!(MemoryOp::AddToPhysmap.number(), 7);
        assert_eq!(MemoryOp::MemoryMap.number(), 9);
        assert_eq!(MemoryOp::from_number(8), None, "8 was removed from Xen");
        assert!(MemoryOp::ALL.iter().all(|op| op.number() & !MEMOP_CMD_MASK == 0));
    }

    #[test]
    fn e820_entry_bytes_round_trip() {
        let entry = E820Entry { addr: 0x1_0000_0000, size: 0x20_0000, r#type: 1 };
        let bytes = entry.to_bytes();
        assert_eq!(bytes[..8], 0x1_0000_0000u64.to_le_bytes());
        assert_eq!(bytes[8..16], 0x20_0000u64.to_le_bytes());
        assert_eq!(bytes[16..], 1u32.to_le_bytes());
        assert_eq!(E820Entry::from_bytes(bytes), entry);
    }
}
