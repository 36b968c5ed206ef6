//! The block device as Mica offers it: Xen's blkif (since ABI 1.0),
//! whose ring entries, operations and statuses [`crate::xen::io::block`]
//! specifies ([`BlkifRequest`], [`BlkifResponse`], [`BlkifOp`],
//! [`BlkifRsp`]), on a one-page ring of Xen's `io/ring.h` layout
//! ([`crate::xen::io`]: a 64-byte header, then [`BLKIF_RING_SIZE`] = 32
//! entries of 112 bytes), between a guest's block front end and dom0's
//! back end. This module says how Mica connects and serves it.
//!
//! A virtual disk is an array of 512-byte sectors, `0..sectors`. Data moves
//! through pages the front end grants to dom0 ([`crate::grant`]): each of a
//! request's 1..=[`BLKIF_MAX_SEGMENTS_PER_REQUEST`] (11) segments names a
//! grant (`gref`) and the sectors `first_sect..=last_sect` (0..=7) of that
//! page to transfer; the segments' sectors are consecutive on the disk from
//! `sector_number`.
//!
//! Front and back end meet through the store as Xen's toolstack and
//! Linux's `xen-blkfront` do ([`crate::store`] has the directories, keys
//! and state diagram): dom0 publishes
//! `/local/domain/0/backend/vbd/<guest>/51712` (the first disk, `xvda`:
//! `sectors`, `info`, `mode`, `feature-flush-cache`, `feature-persistent`,
//! ..., `state` = 2 InitWait) and `device/vbd/51712` (`backend`,
//! `virtual-device`, `device-type`, `state` = 1 Initialising), before the
//! guest runs for a disk in its config or while it runs (`block-attach`).
//! The front end grants dom0 its ring page (the start-info page's
//! `block_ring` when the builder reserved one, else any page of its own),
//! allocates an event port for dom0, writes `ring-ref`, `event-channel`,
//! `protocol` = `x86_64-abi`, `feature-persistent` = 1 and `state` = 3
//! Initialised, and waits for 4 Connected. Disconnecting (`block-detach`)
//! goes through Closing and Closed as for a vif ([`crate::net`]). The
//! front end may also close the disk itself (state 5 Closing): dom0 then
//! answers 6 Closed with the ring and every transfer page unmapped, keeps
//! the disk for the guest, and offers it again (2 InitWait) when the front
//! end writes 1 Initialising ([`crate::store`]
//! has the state diagram). Operations in this version: [`BlkifOp::Read`],
//! [`BlkifOp::Write`], [`BlkifOp::FlushDiskcache`] (with or without
//! segments; the segments are ignored); no discard, no barriers, no
//! indirect requests (dom0 advertises none of them). Every other operation
//! is answered [`BlkifRsp::Eopnotsupp`]; a request dom0 finds invalid (no
//! or more than 11 segments, a segment whose `first_sect > last_sect` or
//! `last_sect > 7`, sectors past the disk's end, a write to a read-only
//! disk, a grant dom0 cannot use) [`BlkifRsp::Error`]. A response carries
//! the request's `id` and `operation`; dom0 answers in request order. A
//! ring whose indices run away (more than 32 requests unanswered, or
//! `req_prod` behind what dom0 took) is disconnected.
//!
//! # Data pages (persistent grants)
//! When the front end wrote `feature-persistent` = 1 (dom0 always offers
//! it), dom0 maps a segment's grant the first time a request names it (writable
//! when that request is a read) and keeps it mapped for later requests
//! naming the same grant, up to 64 grants per guest; past that, or when a
//! grant cannot be mapped as the request needs, it moves the data with a
//! hypervisor grant copy instead and keeps nothing. Its mappings last until
//! the back end has written Closed (or removed its directory) or the guest
//! is destroyed. Without the front end's `feature-persistent`, every
//! transfer is a grant copy and no data page stays mapped. Hence, for a
//! front end that wrote it:
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
//!
//! [`BlkifRequest`]: crate::xen::io::block::BlkifRequest
//! [`BlkifResponse`]: crate::xen::io::block::BlkifResponse
//! [`BlkifOp`]: crate::xen::io::block::BlkifOp
//! [`BlkifOp::Read`]: crate::xen::io::block::BlkifOp::Read
//! [`BlkifOp::Write`]: crate::xen::io::block::BlkifOp::Write
//! [`BlkifOp::FlushDiskcache`]: crate::xen::io::block::BlkifOp::FlushDiskcache
//! [`BlkifRsp`]: crate::xen::io::block::BlkifRsp
//! [`BlkifRsp::Eopnotsupp`]: crate::xen::io::block::BlkifRsp::Eopnotsupp
//! [`BlkifRsp::Error`]: crate::xen::io::block::BlkifRsp::Error
//! [`BLKIF_RING_SIZE`]: crate::xen::io::block::BLKIF_RING_SIZE
//! [`BLKIF_MAX_SEGMENTS_PER_REQUEST`]: crate::xen::io::block::BLKIF_MAX_SEGMENTS_PER_REQUEST
