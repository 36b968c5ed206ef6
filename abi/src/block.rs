//! The block device protocol: requests and responses carried on an
//! [`crate::ring`] ring between a guest's block front end and dom0's back end.
//!
//! A virtual disk is an array of 512-byte sectors, `0..sectors`. Data moves
//! through pages the front end grants to dom0 ([`crate::grant`]): each
//! segment names a grant and the sectors of that page to transfer.
//!
//! Front and back end meet through the store (since ABI 0.4): dom0
//! publishes `/local/domain/0/backend/vbd/<guest>/0` (`frontend`,
//! `sectors`, `mode`, `state` = InitWait) and `device/vbd/0` (`backend`,
//! `state` = Initialising), before the guest runs for a disk in its config
//! or while it runs (`block-attach`). The front end grants dom0 its ring
//! page (the start-info page's `block_ring` when the builder reserved one,
//! else any page of its own), allocates an event port for dom0, writes
//! `ring-ref`, `event-channel` and `state` = Initialised, and waits for
//! Connected. Disconnecting (`block-detach`) goes through Closing and Closed
//! as for a vif ([`crate::net`]). The front end may also close the disk
//! itself (state Closing): dom0 then answers Closed with the ring and every
//! transfer page unmapped, keeps the disk for the guest, and offers it
//! again (InitWait) when the front end writes Initialising ([`crate::store`]
//! has the state diagram). Features in this version: read, write,
//! flush; no discard, no barriers beyond flush. A back end that receives a
//! request it cannot parse answers [`STATUS_ERROR`]; a ring whose indices
//! run away is disconnected.
//!
//! # Data pages (persistent grants)
//! dom0 maps a segment's grant the first time a request names it (writable
//! when that request is a read) and keeps it mapped for later requests
//! naming the same grant, up to 64 grants per guest; past that, or when a
//! grant cannot be mapped as the request needs, it moves the data with a
//! hypervisor grant copy instead and keeps nothing. Its mappings last until
//! the back end has written Closed (or removed its directory) or the guest
//! is destroyed. Hence, for the front end:
//! - A data page is its own again once the response to the request that
//!   named it has arrived: dom0 touches a data page only while it serves
//!   such a request, and answers after the transfer is complete. Until
//!   then the front end must neither read what a read brings nor change
//!   what a write takes.
//! - It cannot count on revoking a grant it has named in a request while
//!   connected (revocation is refused while dom0 maps the page), and keeps
//!   the page and its grant entry unchanged, since dom0 keeps using the
//!   page it mapped. Once the back end is Closed, every grant can be
//!   revoked.
//! - Reusing the same few pages (and grants) for all requests is what
//!   makes transfers copy-free; a fresh grant per request soon spends the
//!   64 and falls back to copies.

use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Bytes per sector.
pub const SECTOR_SIZE: u64 = 512;
/// Sectors per page.
pub const SECTORS_PER_PAGE: u8 = 8;
/// Most segments (pages) in one request.
pub const MAX_SEGMENTS: usize = 8;

/// Read sectors into the granted pages.
pub const OP_READ: u8 = 0;
/// Write sectors from the granted pages.
pub const OP_WRITE: u8 = 1;
/// Make earlier writes durable.
pub const OP_FLUSH: u8 = 2;

/// Success.
pub const STATUS_OK: i32 = 0;
/// The request failed (bad field, out of range, device error).
pub const STATUS_ERROR: i32 = -1;
/// The operation is not supported.
pub const STATUS_UNSUPPORTED: i32 = -2;

/// One page of a transfer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Segment {
    /// Grant reference of the page (front end's grant table).
    pub grant: u32,
    /// First sector within the page, 0..8.
    pub first_sector: u8,
    /// Last sector within the page (inclusive), first..8.
    pub last_sector: u8,
    /// Reserved, zero.
    pub _reserved: u16,
}

const _: () = assert!(size_of::<Segment>() == 8);
const _: () = assert!(offset_of!(Segment, first_sector) == 4);
const _: () = assert!(offset_of!(Segment, last_sector) == 5);

/// A request, written by the front end.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Request {
    /// Echoed in the response; the front end's own tag.
    pub id: u64,
    /// `OP_READ`, `OP_WRITE` or `OP_FLUSH`.
    pub operation: u8,
    /// Valid entries in `segments` (1..=8; 0 for flush).
    pub segment_count: u8,
    /// Reserved, zero.
    pub _reserved: [u8; 6],
    /// First sector of the transfer on the virtual disk.
    pub sector: u64,
    /// The pages; sectors are transferred in segment order, contiguously.
    pub segments: [Segment; MAX_SEGMENTS],
}

const _: () = assert!(size_of::<Request>() == 88);
const _: () = assert!(offset_of!(Request, operation) == 8);
const _: () = assert!(offset_of!(Request, segment_count) == 9);
const _: () = assert!(offset_of!(Request, sector) == 16);
const _: () = assert!(offset_of!(Request, segments) == 24);

/// A response, written by the back end.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Response {
    /// The request's `id`.
    pub id: u64,
    /// The request's `operation`.
    pub operation: u8,
    /// Reserved, zero.
    pub _reserved: [u8; 3],
    /// `STATUS_OK`, `STATUS_ERROR` or `STATUS_UNSUPPORTED`.
    pub status: i32,
}

const _: () = assert!(size_of::<Response>() == 16);
const _: () = assert!(offset_of!(Response, status) == 12);

/// Bytes per ring slot (the larger of request and response).
pub const SLOT_SIZE: usize = size_of::<Request>();
/// Slots in the block ring.
pub const SLOTS: usize = crate::ring::slot_count(SLOT_SIZE);
const _: () = assert!(SLOTS == 32);
