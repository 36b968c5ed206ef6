//! Shared-memory device protocols (Xen's `io/` headers): the generic
//! request/response ring and the console, store, block and network
//! protocols built on shared pages, plus the xenbus state machine that
//! connects front and back ends.
//!
//! # The generic ring (`io/ring.h`)
//! One page shared between a front end (which makes requests) and a back
//! end (which answers them). It starts with a 64-byte [`SringHeader`];
//! entries follow at offset [`SRING_HEADER_SIZE`]. An entry is large enough
//! for a request or a response of the protocol (Xen declares it as a union
//! of the two; a response overwrites the entry of a consumed request).
//! The number of entries is the largest power of two that fits in the rest
//! of the page ([`ring_size`]): 32 for block, 256 for each network ring.
//!
//! Indices are free-running `u32` counters that wrap at 2^32; entry `i` is
//! at slot `i & (size - 1)` ([`ring_slot`]). All index arithmetic is
//! wrapping.
//!
//! Who writes what: the front end writes requests, `req_prod` and
//! `rsp_event`; the back end writes responses, `rsp_prod` and `req_event`.
//! Each side keeps a private producer index (requests or responses it has
//! written but not yet published) and a private consumer index.
//!
//! **Publishing** (Xen's `RING_PUSH_*_AND_CHECK_NOTIFY`): write the
//! entries; release fence (entries before index); store the new producer
//! index; full fence (the index store before the event index load); read
//! the peer's event index and notify the peer's event channel only if the
//! push crossed it ([`push_needs_notify`]).
//!
//! **Going idle** (`RING_FINAL_CHECK_FOR_*`): when a side has consumed
//! everything, it sets its event index to its consumer index + 1
//! ([`final_check_event`]), full fence, and reads the producer index again:
//! if more arrived in between, it keeps working instead of waiting.
//!
//! **Defence.** Each side copies an entry out of the shared page before
//! checking it (the peer may change it meanwhile) and checks the peer's
//! producer index: a front end that publishes more requests than there are
//! free slots ([`request_prod_overflow`]) or a back end that publishes more
//! responses than requests outstanding ([`response_prod_overflow`]) is
//! broken or hostile, and the connection is dropped.

use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub mod block;
pub mod console;
pub mod net;
pub mod store;
pub mod xenbus;

/// Bytes of the ring header; the first entry starts here.
pub const SRING_HEADER_SIZE: usize = 64;

/// The header of a shared ring page (the fixed part of Xen's
/// `*_sring`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SringHeader {
    /// Requests published so far (front end).
    pub req_prod: u32,
    /// The back end wants an event once `req_prod` passes this (back end).
    pub req_event: u32,
    /// Responses published so far (back end).
    pub rsp_prod: u32,
    /// The front end wants an event once `rsp_prod` passes this (front
    /// end).
    pub rsp_event: u32,
    /// Protocol-private bytes (Xen's `pvt` union; netif once used byte 0
    /// for "smart poll"). Zero, ignored.
    pub pvt: [u8; 4],
    /// Padding, zero.
    pub _pad: [u32; 11],
}

const _: () = assert!(size_of::<SringHeader>() == SRING_HEADER_SIZE);
const _: () = assert!(offset_of!(SringHeader, req_prod) == 0);
const _: () = assert!(offset_of!(SringHeader, req_event) == 4);
const _: () = assert!(offset_of!(SringHeader, rsp_prod) == 8);
const _: () = assert!(offset_of!(SringHeader, rsp_event) == 12);
const _: () = assert!(offset_of!(SringHeader, pvt) == 16);
const _: () = assert!(offset_of!(SringHeader, _pad) == 20);

impl SringHeader {
    /// A freshly initialised ring (Xen's `SHARED_RING_INIT`, done by the
    /// front end before it publishes the ring): no requests or responses,
    /// each side wants an event for the first entry.
    pub const fn new() -> SringHeader {
        SringHeader { req_prod: 0, req_event: 1, rsp_prod: 0, rsp_event: 1, pvt: [0; 4], _pad: [0; 11] }
    }
}

/// Entries of `entry_size` bytes in a ring of `ring_bytes` bytes (header
/// included): the largest power of two that fits; 0 if none does.
pub const fn ring_size(ring_bytes: usize, entry_size: usize) -> u32 {
    if entry_size == 0 || ring_bytes <= SRING_HEADER_SIZE {
        return 0;
    }
    let room = (ring_bytes - SRING_HEADER_SIZE) / entry_size;
    if room == 0 {
        return 0;
    }
    1 << (usize::BITS - 1 - room.leading_zeros())
}

/// Entries in a one-page ring of `entry_size`-byte entries.
pub const fn page_ring_size(entry_size: usize) -> u32 {
    ring_size(super::XEN_PAGE_SIZE, entry_size)
}

/// The slot of index `index` in a ring of `size` (a power of two) entries.
pub const fn ring_slot(index: u32, size: u32) -> u32 {
    index & (size - 1)
}

/// Whether publishing the producer index `new` (it was `old`) crossed the
/// peer's event index `event`, so the peer must be notified: `event` is in
/// `(old, new]`, all wrapping.
pub const fn push_needs_notify(old: u32, new: u32, event: u32) -> bool {
    new.wrapping_sub(event) < new.wrapping_sub(old)
}

/// The event index a side sets before it goes idle: one past what it has
/// consumed, so the next entry published notifies it.
pub const fn final_check_event(consumer: u32) -> u32 {
    consumer.wrapping_add(1)
}

/// Front end: request slots free, given its private `req_prod_pvt` and
/// the responses it has consumed, `rsp_cons`.
pub const fn free_requests(size: u32, req_prod_pvt: u32, rsp_cons: u32) -> u32 {
    size.wrapping_sub(req_prod_pvt.wrapping_sub(rsp_cons))
}

/// Front end: responses published and not yet consumed.
pub const fn unconsumed_responses(rsp_prod: u32, rsp_cons: u32) -> u32 {
    rsp_prod.wrapping_sub(rsp_cons)
}

/// Back end: requests published and not yet consumed, never more than the
/// ring can hold beyond the responses already produced (so a hostile
/// `req_prod` cannot make the back end read stale slots).
pub const fn unconsumed_requests(size: u32, req_prod: u32, req_cons: u32, rsp_prod_pvt: u32) -> u32 {
    let published = req_prod.wrapping_sub(req_cons);
    let room = size.wrapping_sub(req_cons.wrapping_sub(rsp_prod_pvt));
    if published < room { published } else { room }
}

/// Back end: whether consuming request `req_cons` would overrun the ring
/// (more requests taken than responses made room for).
pub const fn request_cons_overflow(size: u32, req_cons: u32, rsp_prod_pvt: u32) -> bool {
    req_cons.wrapping_sub(rsp_prod_pvt) >= size
}

/// Back end: whether the front end's `req_prod` claims more outstanding
/// requests than the ring holds (a broken front end).
pub const fn request_prod_overflow(size: u32, req_prod: u32, rsp_prod_pvt: u32) -> bool {
    req_prod.wrapping_sub(rsp_prod_pvt) > size
}

/// Front end: whether the back end's `rsp_prod` claims more responses than
/// requests were outstanding (a broken back end).
pub const fn response_prod_overflow(size: u32, rsp_prod: u32, rsp_cons: u32) -> bool {
    rsp_prod.wrapping_sub(rsp_cons) > size
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_powers_of_two_that_fit() {
        assert_eq!(page_ring_size(112), 32, "blkif's 112-byte entries");
        assert_eq!(page_ring_size(12), 256, "netif tx");
        assert_eq!(page_ring_size(8), 256, "netif rx");
        assert_eq!(page_ring_size(4032), 1);
        assert_eq!(page_ring_size(4033), 0);
        assert_eq!(page_ring_size(0), 0);
        assert_eq!(ring_size(64, 8), 0);
        assert_eq!(ring_size(2 * 4096, 112), 64, "a two-page ring");
        for entry in 1..=4032 {
            let size = page_ring_size(entry) as usize;
            assert!(size.is_power_of_two());
            assert!(SRING_HEADER_SIZE + size * entry <= 4096);
            assert!(SRING_HEADER_SIZE + 2 * size * entry > 4096);
        }
    }

    #[test]
    fn fresh_header() {
        let header = SringHeader::new();
        assert_eq!((header.req_prod, header.req_event, header.rsp_prod, header.rsp_event), (0, 1, 0, 1));
    }

    #[test]
    fn slots_wrap() {
        assert_eq!(ring_slot(0, 32), 0);
        assert_eq!(ring_slot(33, 32), 1);
        assert_eq!(ring_slot(u32::MAX, 256), 255);
        assert_eq!(ring_slot(u32::MAX.wrapping_add(1), 256), 0);
    }

    #[test]
    fn notify_rule() {
        // The peer asked for an event at index 1 (a fresh ring).
        assert!(push_needs_notify(0, 1, 1));
        assert!(push_needs_notify(0, 5, 1));
        assert!(!push_needs_notify(1, 5, 1), "already told");
        assert!(!push_needs_notify(3, 3, 3), "nothing published");
        assert!(!push_needs_notify(3, 5, 9), "event index not reached");
        // Across the wrap at 2^32.
        assert!(push_needs_notify(u32::MAX - 1, 2, 0));
        assert!(push_needs_notify(u32::MAX - 1, 2, u32::MAX));
        assert!(!push_needs_notify(u32::MAX - 1, 2, 3));
        assert_eq!(final_check_event(u32::MAX), 0);
        // Going idle at consumer c, then one entry published: notify.
        let consumer = u32::MAX;
        assert!(push_needs_notify(consumer, consumer.wrapping_add(1), final_check_event(consumer)));
    }

    #[test]
    fn counts_wrap() {
        let size = 32;
        assert_eq!(free_requests(size, 10, 10), 32);
        assert_eq!(free_requests(size, 42, 10), 0);
        assert_eq!(free_requests(size, 5, u32::MAX - 10), 16, "across the wrap");
        assert_eq!(unconsumed_responses(3, u32::MAX - 1), 5);
        assert_eq!(unconsumed_requests(size, 7, u32::MAX - 2, u32::MAX - 2), 10);
        // A hostile req_prod far ahead is clamped to the ring's room.
        assert_eq!(unconsumed_requests(size, 1_000_000, 0, 0), 32);
        assert_eq!(unconsumed_requests(size, 1_000_000, 20, 0), 12);
    }

    #[test]
    fn overflow_checks() {
        let size = 32;
        assert!(!request_prod_overflow(size, 32, 0));
        assert!(request_prod_overflow(size, 33, 0));
        assert!(!request_prod_overflow(size, 20, u32::MAX - 11), "32 outstanding across the wrap");
        assert!(request_prod_overflow(size, 21, u32::MAX - 11));
        assert!(request_prod_overflow(size, u32::MAX, 0), "req_prod behind is a huge distance");
        assert!(!request_cons_overflow(size, 31, 0));
        assert!(request_cons_overflow(size, 32, 0));
        assert!(!response_prod_overflow(size, 32, 0));
        assert!(response_prod_overflow(size, 33, 0));
        assert!(response_prod_overflow(size, 4, u32::MAX - 28));
    }
}
