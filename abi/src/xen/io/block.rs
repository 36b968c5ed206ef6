//! The block device protocol (`io/blkif.h`): a front end in the guest
//! (Linux's `xen-blkfront`) sends read and write requests for a virtual
//! disk to a back end over one shared ring.
//!
//! # Connecting
//! Directories and states as in [`super::xenbus`], class `vbd`, device id
//! the disk's [`KEY_VIRTUAL_DEVICE`] number (`device/vbd/51712` for
//! `xvda`, see [`xvd_virtual_device`]).
//! 1. The back end publishes its features ([`KEY_FEATURE_FLUSH_CACHE`],
//!    [`KEY_FEATURE_PERSISTENT`], ...; an absent key means 0) and moves to
//!    `InitWait`.
//! 2. The front end initialises a ring page, grants it to the back end,
//!    allocates an unbound port for it, writes [`KEY_RING_REF`],
//!    [`KEY_EVENT_CHANNEL`], [`KEY_PROTOCOL`] (= [`XEN_IO_PROTO_ABI_X86_64`])
//!    and, if it wants them, [`KEY_FEATURE_PERSISTENT`], then moves to
//!    `Initialised`.
//! 3. The back end maps the ring, binds the port, publishes
//!    [`KEY_SECTORS`], [`KEY_INFO`], [`KEY_SECTOR_SIZE`] and moves to
//!    `Connected`; the front end reads them and moves to `Connected`.
//!
//! Multi-page rings (`ring-page-order`), several queues and indirect
//! requests are optional: a front end uses them only when the back end
//! advertises them, so a back end without them never sees them. This
//! module defines the keys and layouts for one page and one queue only.
//!
//! # Requests
//! Sector numbers count 512-byte sectors whatever [`KEY_SECTOR_SIZE`]
//! says. Each data segment names a granted 4 KiB page and the sectors
//! `first_sect..=last_sect` (0..=7) of it to transfer; a request's
//! segments transfer consecutive sectors starting at `sector_number`. The
//! back end answers each request with one [`BlkifResponse`] carrying its
//! `id`, in any order.

use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::page_ring_size;
use crate::xen::{GrantRef, numbered_enum};

numbered_enum! {
    /// Request operations (`BLKIF_OP_*`), in [`BlkifRequest::operation`].
    pub enum BlkifOp: u8 {
        /// Read sectors into the segments' pages.
        Read = 0,
        /// Write the segments' pages to sectors.
        Write = 1,
        /// Write, ordered after all earlier writes and durable before
        /// completion (with `feature-barrier`; deprecated).
        WriteBarrier = 2,
        /// Make earlier completed writes durable (with
        /// [`KEY_FEATURE_FLUSH_CACHE`]); may carry no segments.
        FlushDiskcache = 3,
        /// Reserved (once a vendor's "get info" request).
        Reserved1 = 4,
        /// Discard sectors ([`BlkifRequestDiscard`], with
        /// `feature-discard`).
        Discard = 5,
        /// Segments listed in separate granted pages
        /// ([`BlkifRequestIndirect`], with
        /// `feature-max-indirect-segments`).
        Indirect = 6,
    }
}

numbered_enum! {
    /// Response statuses (`BLKIF_RSP_*`), in [`BlkifResponse::status`].
    pub enum BlkifRsp: i16 {
        /// The operation is not supported.
        Eopnotsupp = -2,
        /// The operation failed (an I/O error, or a request the back end
        /// found invalid).
        Error = -1,
        /// Done.
        Okay = 0,
    }
}

/// Most data segments in one [`BlkifRequest`].
pub const BLKIF_MAX_SEGMENTS_PER_REQUEST: usize = 11;
/// Most indirect pages in one [`BlkifRequestIndirect`].
pub const BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST: usize = 8;
/// Bytes of a sector as `sector_number`, `first_sect` and `last_sect`
/// count them.
pub const BLKIF_SECTOR_SIZE: u32 = 512;
/// Sectors in one segment's page: `last_sect` is at most this minus 1.
pub const SECTORS_PER_PAGE: u8 = 8;

/// [`BlkifRequestDiscard::flag`]: discard securely (with `discard-secure`).
pub const BLKIF_DISCARD_SECURE: u8 = 1 << 0;

/// [`KEY_INFO`] bit: the disk is a CD-ROM.
pub const VDISK_CDROM: u32 = 0x1;
/// [`KEY_INFO`] bit: the medium is removable.
pub const VDISK_REMOVABLE: u32 = 0x2;
/// [`KEY_INFO`] bit: the disk is read-only.
pub const VDISK_READONLY: u32 = 0x4;

/// One data segment (`blkif_request_segment`), 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BlkifRequestSegment {
    /// Grant of the data page (writable by the back end for a read).
    pub gref: GrantRef,
    /// First sector of the page to transfer (0..=7).
    pub first_sect: u8,
    /// Last sector of the page to transfer, inclusive (`first_sect..=7`).
    pub last_sect: u8,
    /// Padding (implicit in C), zero.
    pub _pad0: u16,
}

const _: () = assert!(size_of::<BlkifRequestSegment>() == 8);
const _: () = assert!(offset_of!(BlkifRequestSegment, gref) == 0);
const _: () = assert!(offset_of!(BlkifRequestSegment, first_sect) == 4);
const _: () = assert!(offset_of!(BlkifRequestSegment, last_sect) == 5);

impl BlkifRequestSegment {
    /// Sectors this segment transfers, or `None` if its range is invalid.
    pub const fn sectors(&self) -> Option<u32> {
        if self.first_sect > self.last_sect || self.last_sect >= SECTORS_PER_PAGE {
            return None;
        }
        Some((self.last_sect - self.first_sect) as u32 + 1)
    }
}

/// A read, write, barrier or flush request (`blkif_request`), 112 bytes.
/// Written by the front end.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BlkifRequest {
    /// A [`BlkifOp`] number.
    pub operation: u8,
    /// Segments used (1..=11 for reads and writes; 0 allowed for a flush).
    pub nr_segments: u8,
    /// The device handle (unused by Linux; 0).
    pub handle: u16,
    /// Padding (implicit in C), zero.
    pub _pad0: u32,
    /// The front end's tag, echoed in the response.
    pub id: u64,
    /// First 512-byte sector.
    pub sector_number: u64,
    /// The data segments.
    pub seg: [BlkifRequestSegment; BLKIF_MAX_SEGMENTS_PER_REQUEST],
}

const _: () = assert!(size_of::<BlkifRequest>() == 112);
const _: () = assert!(offset_of!(BlkifRequest, operation) == 0);
const _: () = assert!(offset_of!(BlkifRequest, nr_segments) == 1);
const _: () = assert!(offset_of!(BlkifRequest, handle) == 2);
const _: () = assert!(offset_of!(BlkifRequest, id) == 8);
const _: () = assert!(offset_of!(BlkifRequest, sector_number) == 16);
const _: () = assert!(offset_of!(BlkifRequest, seg) == 24);

/// A discard request (`blkif_request_discard`), 32 bytes at the start of
/// a ring entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BlkifRequestDiscard {
    /// [`BlkifOp::Discard`].
    pub operation: u8,
    /// [`BLKIF_DISCARD_SECURE`] or 0.
    pub flag: u8,
    /// As [`BlkifRequest::handle`].
    pub handle: u16,
    /// Padding (implicit in C), zero.
    pub _pad0: u32,
    /// The front end's tag.
    pub id: u64,
    /// First 512-byte sector.
    pub sector_number: u64,
    /// Sectors to discard.
    pub nr_sectors: u64,
}

const _: () = assert!(size_of::<BlkifRequestDiscard>() == 32);
const _: () = assert!(offset_of!(BlkifRequestDiscard, flag) == 1);
const _: () = assert!(offset_of!(BlkifRequestDiscard, id) == 8);
const _: () = assert!(offset_of!(BlkifRequestDiscard, sector_number) == 16);
const _: () = assert!(offset_of!(BlkifRequestDiscard, nr_sectors) == 24);

/// An indirect request (`blkif_request_indirect`), 64 bytes on x86_64 at
/// the start of a ring entry. Each indirect page holds up to 512
/// [`BlkifRequestSegment`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BlkifRequestIndirect {
    /// [`BlkifOp::Indirect`].
    pub operation: u8,
    /// [`BlkifOp::Read`] or [`BlkifOp::Write`].
    pub indirect_op: u8,
    /// Segments in all indirect pages.
    pub nr_segments: u16,
    /// Padding (implicit in C), zero.
    pub _pad0: u32,
    /// The front end's tag.
    pub id: u64,
    /// First 512-byte sector.
    pub sector_number: u64,
    /// As [`BlkifRequest::handle`].
    pub handle: u16,
    /// Padding (implicit in C), zero.
    pub _pad1: u16,
    /// Grants of the pages holding the segments.
    pub indirect_grefs: [GrantRef; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST],
    /// Padding (implicit in C on x86_64; explicit on i386), zero.
    pub _pad2: u32,
}

const _: () = assert!(size_of::<BlkifRequestIndirect>() == 64);
const _: () = assert!(offset_of!(BlkifRequestIndirect, indirect_op) == 1);
const _: () = assert!(offset_of!(BlkifRequestIndirect, nr_segments) == 2);
const _: () = assert!(offset_of!(BlkifRequestIndirect, id) == 8);
const _: () = assert!(offset_of!(BlkifRequestIndirect, sector_number) == 16);
const _: () = assert!(offset_of!(BlkifRequestIndirect, handle) == 24);
const _: () = assert!(offset_of!(BlkifRequestIndirect, indirect_grefs) == 28);

/// A response (`blkif_response`), 16 bytes. Written by the back end into
/// the entry of a consumed request.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BlkifResponse {
    /// The request's `id`.
    pub id: u64,
    /// The request's `operation`.
    pub operation: u8,
    /// Padding (implicit in C), zero.
    pub _pad0: u8,
    /// A [`BlkifRsp`] number.
    pub status: i16,
    /// Padding (implicit in C), zero.
    pub _pad1: u32,
}

const _: () = assert!(size_of::<BlkifResponse>() == 16);
const _: () = assert!(offset_of!(BlkifResponse, id) == 0);
const _: () = assert!(offset_of!(BlkifResponse, operation) == 8);
const _: () = assert!(offset_of!(BlkifResponse, status) == 10);

/// Bytes of a ring entry: the larger of request and response.
pub const BLKIF_ENTRY_SIZE: usize = size_of::<BlkifRequest>();
const _: () = assert!(BLKIF_ENTRY_SIZE >= size_of::<BlkifResponse>());
/// Entries in a one-page block ring.
pub const BLKIF_RING_SIZE: u32 = page_ring_size(BLKIF_ENTRY_SIZE);
const _: () = assert!(BLKIF_RING_SIZE == 32);

/// The [`KEY_PROTOCOL`] value for the x86_64 layouts of this module.
pub const XEN_IO_PROTO_ABI_X86_64: &str = "x86_64-abi";

/// Front end: grant of the ring page.
pub const KEY_RING_REF: &str = "ring-ref";
/// Front end: its port for the ring (unbound for the back end's domain).
pub const KEY_EVENT_CHANNEL: &str = "event-channel";
/// Front end: the layout of the ring's entries ([`XEN_IO_PROTO_ABI_X86_64`];
/// absent means the back end's native layout).
pub const KEY_PROTOCOL: &str = "protocol";
/// Front end: log2 of the ring's pages (absent: one page).
pub const KEY_RING_PAGE_ORDER: &str = "ring-page-order";
/// Back end: largest `ring-page-order` it accepts (absent: 0).
pub const KEY_MAX_RING_PAGE_ORDER: &str = "max-ring-page-order";
/// Both: the end can keep grants mapped across requests (`"1"`); used
/// only if both say so.
pub const KEY_FEATURE_PERSISTENT: &str = "feature-persistent";
/// Back end: [`BlkifOp::FlushDiskcache`] is supported (`"1"`).
pub const KEY_FEATURE_FLUSH_CACHE: &str = "feature-flush-cache";
/// Back end: [`BlkifOp::WriteBarrier`] is supported (`"1"`).
pub const KEY_FEATURE_BARRIER: &str = "feature-barrier";
/// Back end: [`BlkifOp::Discard`] is supported (`"1"`).
pub const KEY_FEATURE_DISCARD: &str = "feature-discard";
/// Back end: most segments of an indirect request (absent: no indirect
/// requests).
pub const KEY_FEATURE_MAX_INDIRECT_SEGMENTS: &str = "feature-max-indirect-segments";
/// Back end: disk size in 512-byte sectors, decimal.
pub const KEY_SECTORS: &str = "sectors";
/// Back end: logical sector size in bytes, a power of two from 512.
pub const KEY_SECTOR_SIZE: &str = "sector-size";
/// Back end: physical sector size in bytes (absent: `sector-size`).
pub const KEY_PHYSICAL_SECTOR_SIZE: &str = "physical-sector-size";
/// Back end: `VDISK_*` bits, decimal.
pub const KEY_INFO: &str = "info";
/// Back end (toolstack): `"r"` or `"w"`.
pub const KEY_MODE: &str = "mode";
/// Front end (toolstack): the disk's number ([`xvd_virtual_device`]),
/// also the device directory's name.
pub const KEY_VIRTUAL_DEVICE: &str = "virtual-device";
/// Front end (toolstack): `"disk"` or `"cdrom"`.
pub const KEY_DEVICE_TYPE: &str = "device-type";

/// The [`KEY_VIRTUAL_DEVICE`] number of Xen virtual disk `disk`, partition
/// `partition` (`xvda` is disk 0, partition 0 the whole disk): the short
/// form `202 << 8 | disk << 4 | partition` for disks and partitions below
/// 16, else the long form `1 << 28 | disk << 8 | partition`. `None` beyond
/// the long form (disk 2^20, partition 256).
pub const fn xvd_virtual_device(disk: u32, partition: u32) -> Option<u32> {
    if disk < 16 && partition < 16 {
        Some(202 << 8 | disk << 4 | partition)
    } else if disk < 1 << 20 && partition < 256 {
        Some(1 << 28 | disk << 8 | partition)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::test_support::check_numbered;

    #[test]
    fn numbers_match_xen() {
        check_numbered!(BlkifOp, u8);
        check_numbered!(BlkifRsp, i16);
        assert_eq!(BlkifOp::Discard.number(), 5);
        assert_eq!(BlkifRsp::Eopnotsupp.number(), -2);
        assert_eq!(BlkifRsp::from_number(-3), None);
    }

    #[test]
    fn segments() {
        let segment = |first_sect, last_sect| BlkifRequestSegment { gref: 1, first_sect, last_sect, _pad0: 0 };
        assert_eq!(segment(0, 7).sectors(), Some(8));
        assert_eq!(segment(3, 3).sectors(), Some(1));
        assert_eq!(segment(4, 3).sectors(), None);
        assert_eq!(segment(0, 8).sectors(), None);
    }

    #[test]
    fn virtual_devices() {
        assert_eq!(xvd_virtual_device(0, 0), Some(51712), "xvda");
        assert_eq!(xvd_virtual_device(1, 2), Some(51730), "xvdb2");
        assert_eq!(xvd_virtual_device(16, 0), Some(1 << 28 | 16 << 8));
        assert_eq!(xvd_virtual_device(536, 37), Some(1 << 28 | 536 << 8 | 37));
        assert_eq!(xvd_virtual_device(1 << 20, 0), None);
        assert_eq!(xvd_virtual_device(0, 256), None);
    }
}
