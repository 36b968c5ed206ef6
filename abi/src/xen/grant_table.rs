//! Grant tables, version 1 (`grant_table_op`,
//! [`super::Hypercall::GrantTableOp`]): how a domain lets another domain
//! map or copy one of its pages.
//!
//! # The table
//! The granting domain owns a table of [`GrantEntryV1`] (8 bytes, 512 per
//! 4 KiB frame). A PVH guest does not allocate it: it asks for the
//! hypervisor's frames of its table with `XENMEM_add_to_physmap`, space
//! [`crate::xen::memory::XENMAPSPACE_GRANT_TABLE`], `idx` = frame index
//! 0, 1, ..., each at a guest frame of its choice (Linux puts them in
//! unused physical address space). [`GnttabOp::QuerySize`] reports how many
//! frames the table has and may grow to ([`GRANT_TABLE_FRAMES`] on Mica);
//! Linux assumes 4 when it fails.
//!
//! Mica places a frame two ways: at a guest frame that is the guest's own
//! RAM, that page becomes the frame (its contents the entries; Mica's own
//! guests place their one frame so); at a guest frame where the guest has
//! nothing (below [`crate::grant::GUEST_MAP_LIMIT`]), the hypervisor maps a
//! zeroed frame of its own there, as Xen does, and frees it with the
//! domain. A frame the hypervisor supplied stays where it was first placed
//! (placing it elsewhere is `-EINVAL`); a frame is not moved while another
//! domain maps one of the table's grants (`-EBUSY`).
//! Entries 0..[`GNTTAB_NR_RESERVED_ENTRIES`] are reserved for the
//! toolstack (the console's and the store's ring pages).
//!
//! # Granting and revoking (granter)
//! To grant its frame `f` to domain `d`, the granter writes `domid = d` and
//! `frame = f`, then (release order) `flags = GTF_PERMIT_ACCESS` (with
//! `GTF_READONLY` for read-only access). The entry's index is the grant
//! reference it passes to `d`, usually through the store.
//!
//! To revoke, the granter clears `flags` with an atomic compare-exchange
//! that expects neither `GTF_READING` nor `GTF_WRITING`: those bits are
//! set by the hypervisor while the grantee maps the page or a copy runs,
//! and an exchange that fails means the page is still in use. The
//! hypervisor sets them with a compare-exchange of the same 16 bits, so a
//! map and a revocation never both succeed.
//!
//! # Using a grant (grantee)
//! The grantee maps the page ([`GnttabOp::MapGrantRef`]) at a guest
//! physical address of its own, or has the hypervisor copy to or from it
//! ([`GnttabOp::Copy`]). Each operation takes an array of argument
//! structures: `rsi` is its address, `rdx` the number of entries. The
//! hypercall returns 0 once every entry has been processed and each
//! entry's `status` says how it went ([`GrantStatus`]); a negative `rax`
//! means the array itself was bad (`-EFAULT`, `-EINVAL` for a count that is
//! too large) and no entry after the failing one was processed.
//!
//! Version 2 (sub-page and transitive grants, separate status frames) is
//! not offered: [`GnttabOp::SetVersion`] to 2 fails with `-ENOSYS`, as in
//! a Xen with version 2 disabled (Linux then stays at version 1), and the
//! operations that only version 2 uses return `-ENOSYS`.

use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{DomId, GrantHandle, GrantRef, numbered_enum};

/// Frames a domain's grant table has at most on Mica: 4 of 512 entries
/// (Xen's default maximum is 64; 4 is what Linux assumes of a Xen that
/// does not say, and holds a disk's and a network card's grants).
pub const GRANT_TABLE_FRAMES: usize = 4;
/// Grant references a domain's table can hold at most: 0 to 2,047.
pub const GRANT_TABLE_ENTRIES: usize = GRANT_TABLE_FRAMES * GRANT_ENTRIES_PER_FRAME;

/// One version-1 grant (`grant_entry_v1`). Written by the granter, except
/// `GTF_READING`/`GTF_WRITING` in `flags`, which the hypervisor sets and
/// clears.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GrantEntryV1 {
    /// `GTF_*`: the type in bits 0..2 and the flag bits above.
    pub flags: u16,
    /// The domain allowed to use the grant.
    pub domid: DomId,
    /// The granter's guest frame number.
    pub frame: u32,
}

const _: () = assert!(size_of::<GrantEntryV1>() == 8);
const _: () = assert!(offset_of!(GrantEntryV1, flags) == 0);
const _: () = assert!(offset_of!(GrantEntryV1, domid) == 2);
const _: () = assert!(offset_of!(GrantEntryV1, frame) == 4);

/// Version-1 entries in one 4 KiB table frame.
pub const GRANT_ENTRIES_PER_FRAME: usize = super::XEN_PAGE_SIZE / size_of::<GrantEntryV1>();
const _: () = assert!(GRANT_ENTRIES_PER_FRAME == 512);

/// Entries at the start of the table reserved for the toolstack.
pub const GNTTAB_NR_RESERVED_ENTRIES: GrantRef = 8;
/// Reserved entry granting the console ring page to the console back end.
pub const GNTTAB_RESERVED_CONSOLE: GrantRef = 0;
/// Reserved entry granting the store ring page to the store.
pub const GNTTAB_RESERVED_XENSTORE: GrantRef = 1;

/// Type field: the entry grants nothing.
pub const GTF_INVALID: u16 = 0;
/// Type field: `domid` may map or copy `frame`.
pub const GTF_PERMIT_ACCESS: u16 = 1;
/// Type field: `domid` may transfer a page into `frame` (not offered by
/// Mica).
pub const GTF_ACCEPT_TRANSFER: u16 = 2;
/// Type field (version 2 only): a transitive grant.
pub const GTF_TRANSITIVE: u16 = 3;
/// The bits of `flags` that hold the type.
pub const GTF_TYPE_MASK: u16 = 3;
/// Granter: read-only access.
pub const GTF_READONLY: u16 = 1 << 2;
/// Hypervisor: the grantee has the page mapped or is copying from it.
pub const GTF_READING: u16 = 1 << 3;
/// Hypervisor: the grantee has the page mapped writable or is copying to
/// it.
pub const GTF_WRITING: u16 = 1 << 4;
/// Granter: map with page-level write-through (ignored by Mica).
pub const GTF_PWT: u16 = 1 << 5;
/// Granter: map with page-level cache disable (ignored by Mica).
pub const GTF_PCD: u16 = 1 << 6;
/// Granter: map with the PAT bit (ignored by Mica).
pub const GTF_PAT: u16 = 1 << 7;
/// Version 2 only: the grant covers part of the page.
pub const GTF_SUB_PAGE: u16 = 1 << 8;
/// Transfers only: the transfer is committed (same bit as `GTF_READONLY`).
pub const GTF_TRANSFER_COMMITTED: u16 = 1 << 2;
/// Transfers only: the transfer is complete (same bit as `GTF_READING`).
pub const GTF_TRANSFER_COMPLETED: u16 = 1 << 3;

numbered_enum! {
    /// Grant table operations (`GNTTABOP_*`), in `rdi`.
    pub enum GnttabOp: u32 {
        /// Maps grants ([`GnttabMapGrantRef`] array of `count`, in `rdx`,
        /// at most 64: else `-EINVAL`): with `GNTMAP_host_map` (and
        /// optionally `GNTMAP_readonly`) only; the page appears at
        /// guest-physical `host_addr` (dom0: in its foreign window; a
        /// guest: a free page below `crate::grant::GUEST_MAP_LIMIT`),
        /// `handle` is its frame number. Each entry's `status` says how it
        /// went ([`GrantStatus`]); the call returns 0, or `-EFAULT` when
        /// the array cannot be read or written.
        MapGrantRef = 0,
        /// Unmaps them ([`GnttabUnmapGrantRef`] array, as for
        /// [`GnttabOp::MapGrantRef`]): by `host_addr`, with the map's
        /// handle (else `GNTST_bad_handle`). On return no CPU reaches the
        /// page through the mapping.
        UnmapGrantRef = 1,
        /// PV: returns the machine frames of the caller's table
        /// ([`GnttabSetupTable`]). A PVH guest uses `XENMEM_add_to_physmap`
        /// instead; Mica answers `-ENOSYS`.
        SetupTable = 2,
        /// Debug dump of a table. Not offered (`-ENOSYS`).
        DumpTable = 3,
        /// Page transfer. Not offered (`-ENOSYS`).
        Transfer = 4,
        /// Copies between granted and own pages ([`GnttabCopy`] array, as
        /// for [`GnttabOp::MapGrantRef`]): one end a grant, the other a
        /// frame of the caller's; a copy between two grants is
        /// `GNTST_general_error` in Mica.
        Copy = 5,
        /// Reports the table's size ([`GnttabQuerySize`], one entry).
        QuerySize = 6,
        /// PV: unmap and replace a mapping. Not offered (`-ENOSYS`).
        UnmapAndReplace = 7,
        /// Selects the table version ([`GnttabSetVersion`], one entry):
        /// 1 succeeds, 2 fails with `-ENOSYS`, any other with `-EINVAL`;
        /// the version in effect is written back.
        SetVersion = 8,
        /// Version 2: status frames. Not offered (`-ENOSYS`).
        GetStatusFrames = 9,
        /// Reports the table version ([`GnttabGetVersion`], one entry):
        /// always 1.
        GetVersion = 10,
        /// Version 2: swaps two entries. Not offered (`-ENOSYS`).
        SwapGrantRef = 11,
        /// ARM: cache maintenance. Not offered (`-ENOSYS`).
        CacheFlush = 12,
    }
}

numbered_enum! {
    /// Per-entry status (`GNTST_*`) in the `status` field of each argument
    /// structure. Negative values are failures.
    pub enum GrantStatus: i16 {
        /// Done.
        Okay = 0,
        /// Failed for a reason no other code names.
        GeneralError = -1,
        /// No such domain, or the domain named is the caller where another
        /// is required.
        BadDomain = -2,
        /// The grant reference is beyond the table, or its entry does not
        /// grant this access to the caller.
        BadGntref = -3,
        /// The handle does not name a mapping of the caller.
        BadHandle = -4,
        /// The address to map at is unusable (not page-aligned, not free).
        BadVirtAddr = -5,
        /// The device address does not match the mapping.
        BadDevAddr = -6,
        /// No room in the I/O MMU.
        NoDeviceSpace = -7,
        /// The grant is read-only but write access was asked for, or the
        /// caller may not do this.
        PermissionDenied = -8,
        /// The frame named is not a page the operation may use.
        BadPage = -9,
        /// A copy's range crosses a page boundary.
        BadCopyArg = -10,
        /// Transfers: the page address is too large.
        AddressTooBig = -11,
        /// Not done this time; retry the entry.
        Eagain = -12,
        /// No room for another mapping (handles exhausted).
        NoSpace = -13,
    }
}

impl GrantStatus {
    /// A short description for logs.
    pub const fn describe(self) -> &'static str {
        match self {
            GrantStatus::Okay => "okay",
            GrantStatus::GeneralError => "general error",
            GrantStatus::BadDomain => "bad domain",
            GrantStatus::BadGntref => "bad grant reference",
            GrantStatus::BadHandle => "bad mapping handle",
            GrantStatus::BadVirtAddr => "bad address to map at",
            GrantStatus::BadDevAddr => "bad device address",
            GrantStatus::NoDeviceSpace => "no I/O MMU space",
            GrantStatus::PermissionDenied => "permission denied",
            GrantStatus::BadPage => "bad page",
            GrantStatus::BadCopyArg => "copy crosses a page boundary",
            GrantStatus::AddressTooBig => "address too big",
            GrantStatus::Eagain => "try again",
            GrantStatus::NoSpace => "no space for another mapping",
        }
    }
}

/// [`GnttabMapGrantRef::flags`]: map for device (DMA) access; Mica has no
/// I/O MMU and ignores it.
pub const GNTMAP_DEVICE_MAP: u32 = 1 << 0;
/// [`GnttabMapGrantRef::flags`]: map for CPU access at `host_addr`.
/// Required by Mica.
pub const GNTMAP_HOST_MAP: u32 = 1 << 1;
/// [`GnttabMapGrantRef::flags`]: map read-only (required if the grant is
/// read-only).
pub const GNTMAP_READONLY: u32 = 1 << 2;
/// PV only: the mapping is usable by user space too.
pub const GNTMAP_APPLICATION_MAP: u32 = 1 << 3;
/// PV only: `host_addr` is the machine address of a PTE to write.
pub const GNTMAP_CONTAINS_PTE: u32 = 1 << 4;
/// PV only: bits 16..32 go into the available bits of the PTE.
pub const GNTMAP_GUEST_AVAIL_MASK: u32 = 0xffff_0000;

/// Argument of [`GnttabOp::MapGrantRef`] (one array entry).
///
/// For a PVH caller, `host_addr` is the guest-physical address (page
/// aligned) where the granted page appears; it must not be RAM of the
/// caller's. `dev_bus_addr` is the address a device would use; Mica writes
/// the same guest-physical address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GnttabMapGrantRef {
    /// IN: where to map (see above).
    pub host_addr: u64,
    /// IN: `GNTMAP_*`.
    pub flags: u32,
    /// IN: the grant reference in `dom`'s table.
    pub r#ref: GrantRef,
    /// IN: the granting domain.
    pub dom: DomId,
    /// OUT: a [`GrantStatus`] number.
    pub status: i16,
    /// OUT: the mapping's handle, for the unmap.
    pub handle: GrantHandle,
    /// OUT: the device address of the page.
    pub dev_bus_addr: u64,
}

const _: () = assert!(size_of::<GnttabMapGrantRef>() == 32);
const _: () = assert!(offset_of!(GnttabMapGrantRef, host_addr) == 0);
const _: () = assert!(offset_of!(GnttabMapGrantRef, flags) == 8);
const _: () = assert!(offset_of!(GnttabMapGrantRef, r#ref) == 12);
const _: () = assert!(offset_of!(GnttabMapGrantRef, dom) == 16);
const _: () = assert!(offset_of!(GnttabMapGrantRef, status) == 18);
const _: () = assert!(offset_of!(GnttabMapGrantRef, handle) == 20);
const _: () = assert!(offset_of!(GnttabMapGrantRef, dev_bus_addr) == 24);

/// Argument of [`GnttabOp::UnmapGrantRef`] (one array entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GnttabUnmapGrantRef {
    /// IN: the `host_addr` the page was mapped at.
    pub host_addr: u64,
    /// IN: the `dev_bus_addr` the map returned, or 0.
    pub dev_bus_addr: u64,
    /// IN: the handle the map returned.
    pub handle: GrantHandle,
    /// OUT: a [`GrantStatus`] number.
    pub status: i16,
    /// Padding (implicit in C), zero.
    pub _pad0: u16,
}

const _: () = assert!(size_of::<GnttabUnmapGrantRef>() == 24);
const _: () = assert!(offset_of!(GnttabUnmapGrantRef, host_addr) == 0);
const _: () = assert!(offset_of!(GnttabUnmapGrantRef, dev_bus_addr) == 8);
const _: () = assert!(offset_of!(GnttabUnmapGrantRef, handle) == 16);
const _: () = assert!(offset_of!(GnttabUnmapGrantRef, status) == 20);

/// Argument of [`GnttabOp::SetupTable`] (PV; listed for its layout).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GnttabSetupTable {
    /// IN: the domain, [`super::DOMID_SELF`] for the caller.
    pub dom: DomId,
    /// Padding (implicit in C), zero.
    pub _pad0: u16,
    /// IN: frames wanted.
    pub nr_frames: u32,
    /// OUT: a [`GrantStatus`] number.
    pub status: i16,
    /// Padding (implicit in C), zero.
    pub _pad1: [u16; 3],
    /// IN: address of an array of `nr_frames` 64-bit frame numbers the
    /// hypervisor fills.
    pub frame_list: u64,
}

const _: () = assert!(size_of::<GnttabSetupTable>() == 24);
const _: () = assert!(offset_of!(GnttabSetupTable, dom) == 0);
const _: () = assert!(offset_of!(GnttabSetupTable, nr_frames) == 4);
const _: () = assert!(offset_of!(GnttabSetupTable, status) == 8);
const _: () = assert!(offset_of!(GnttabSetupTable, frame_list) == 16);

/// [`GnttabCopy::flags`]: `source` names a grant, not a frame of the
/// caller.
pub const GNTCOPY_SOURCE_GREF: u16 = 1 << 0;
/// [`GnttabCopy::flags`]: `dest` names a grant, not a frame of the caller.
pub const GNTCOPY_DEST_GREF: u16 = 1 << 1;

/// One end of a [`GnttabCopy`] (`gnttab_copy_ptr`).
///
/// Xen's `u` is a union of a 32-bit grant reference and a 64-bit frame
/// number; here it is one 64-bit word: with the end's `GNTCOPY_*_GREF`
/// flag set, its low 32 bits are the grant reference (the high 32 bits are
/// ignored), otherwise it is a guest frame number of the caller's
/// ([`GnttabCopyPtr::grant_ref`], [`GnttabCopyPtr::gmfn`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GnttabCopyPtr {
    /// The grant reference or frame number (see above).
    pub u: u64,
    /// The domain: the granter for a grant; [`super::DOMID_SELF`] (or the
    /// caller's id) for a frame.
    pub domid: DomId,
    /// Byte offset in the page.
    pub offset: u16,
    /// Padding (implicit in C), zero.
    pub _pad0: u32,
}

const _: () = assert!(size_of::<GnttabCopyPtr>() == 16);
const _: () = assert!(offset_of!(GnttabCopyPtr, u) == 0);
const _: () = assert!(offset_of!(GnttabCopyPtr, domid) == 8);
const _: () = assert!(offset_of!(GnttabCopyPtr, offset) == 10);

impl GnttabCopyPtr {
    /// The grant reference, when this end names a grant.
    pub const fn grant_ref(&self) -> GrantRef {
        self.u as GrantRef
    }

    /// The frame number, when this end names a frame of the caller.
    pub const fn gmfn(&self) -> u64 {
        self.u
    }
}

/// Argument of [`GnttabOp::Copy`] (one array entry): copies `len` bytes
/// from `source` to `dest`. Neither range may cross its page
/// ([`GrantStatus::BadCopyArg`], see [`copy_range_is_valid`]); a grant used
/// as `dest` must be writable.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GnttabCopy {
    /// IN: where to read.
    pub source: GnttabCopyPtr,
    /// IN: where to write.
    pub dest: GnttabCopyPtr,
    /// IN: bytes to copy.
    pub len: u16,
    /// IN: `GNTCOPY_*`.
    pub flags: u16,
    /// OUT: a [`GrantStatus`] number.
    pub status: i16,
    /// Padding (implicit in C), zero.
    pub _pad0: u16,
}

const _: () = assert!(size_of::<GnttabCopy>() == 40);
const _: () = assert!(offset_of!(GnttabCopy, source) == 0);
const _: () = assert!(offset_of!(GnttabCopy, dest) == 16);
const _: () = assert!(offset_of!(GnttabCopy, len) == 32);
const _: () = assert!(offset_of!(GnttabCopy, flags) == 34);
const _: () = assert!(offset_of!(GnttabCopy, status) == 36);

/// Whether `len` bytes from `offset` stay inside one page.
pub const fn copy_range_is_valid(offset: u16, len: u16) -> bool {
    offset as usize + len as usize <= super::XEN_PAGE_SIZE
}

/// Argument of [`GnttabOp::QuerySize`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GnttabQuerySize {
    /// IN: the domain, [`super::DOMID_SELF`] for the caller.
    pub dom: DomId,
    /// Padding (implicit in C), zero.
    pub _pad0: u16,
    /// OUT: frames the table has now.
    pub nr_frames: u32,
    /// OUT: frames it may grow to.
    pub max_nr_frames: u32,
    /// OUT: a [`GrantStatus`] number.
    pub status: i16,
    /// Padding (implicit in C), zero.
    pub _pad1: u16,
}

const _: () = assert!(size_of::<GnttabQuerySize>() == 16);
const _: () = assert!(offset_of!(GnttabQuerySize, dom) == 0);
const _: () = assert!(offset_of!(GnttabQuerySize, nr_frames) == 4);
const _: () = assert!(offset_of!(GnttabQuerySize, max_nr_frames) == 8);
const _: () = assert!(offset_of!(GnttabQuerySize, status) == 12);

/// Argument of [`GnttabOp::SetVersion`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GnttabSetVersion {
    /// IN: the version wanted; OUT: the version in effect (1).
    pub version: u32,
}

const _: () = assert!(size_of::<GnttabSetVersion>() == 4);
const _: () = assert!(offset_of!(GnttabSetVersion, version) == 0);

/// Argument of [`GnttabOp::GetVersion`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GnttabGetVersion {
    /// IN: the domain, [`super::DOMID_SELF`] for the caller.
    pub dom: DomId,
    /// Padding, zero.
    pub pad: u16,
    /// OUT: the table version (1).
    pub version: u32,
}

const _: () = assert!(size_of::<GnttabGetVersion>() == 8);
const _: () = assert!(offset_of!(GnttabGetVersion, dom) == 0);
const _: () = assert!(offset_of!(GnttabGetVersion, version) == 4);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::test_support::check_numbered;

    #[test]
    fn numbers_match_xen() {
        check_numbered!(GnttabOp, u32);
        check_numbered!(GrantStatus, i16);
        assert_eq!(GnttabOp::QuerySize.number(), 6);
        assert_eq!(GnttabOp::SetVersion.number(), 8);
        for (index, status) in GrantStatus::ALL.iter().enumerate() {
            assert_eq!(status.number(), -(index as i16), "GNTST_* are 0, -1, ... in order");
            assert_eq!(GrantStatus::from_number(status.number()), Some(*status));
            assert!(!status.describe().is_empty());
        }
        assert_eq!(GrantStatus::from_number(-14), None);
        assert_eq!(GrantStatus::BadCopyArg.number(), -10);
        assert_eq!(GrantStatus::Eagain.number(), -12);
    }

    #[test]
    fn flag_bits() {
        assert_eq!(GTF_PERMIT_ACCESS & GTF_TYPE_MASK, GTF_PERMIT_ACCESS);
        assert_eq!((GTF_READONLY, GTF_READING, GTF_WRITING), (4, 8, 16));
        assert_eq!(GTF_READONLY & GTF_TYPE_MASK, 0);
        assert_eq!((GNTMAP_HOST_MAP, GNTMAP_READONLY), (2, 4));
    }

    #[test]
    fn copy_ends() {
        let end = GnttabCopyPtr { u: 0xdead_beef_0000_0007, domid: 3, offset: 0, _pad0: 0 };
        assert_eq!(end.grant_ref(), 7);
        assert_eq!(end.gmfn(), 0xdead_beef_0000_0007);
        assert!(copy_range_is_valid(0, 4096));
        assert!(copy_range_is_valid(4095, 1));
        assert!(!copy_range_is_valid(4095, 2));
        assert!(!copy_range_is_valid(u16::MAX, u16::MAX));
    }
}
