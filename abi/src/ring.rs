//! The generic one-page request/response ring shared by a front end (in a
//! guest) and a back end (in dom0), in the style of Xen's `io/ring.h`.
//!
//! Layout: a 64-byte [`RingHeader`], then [`slot_count`] slots of equal size,
//! each holding either a request or its response (a response overwrites the
//! slot of a consumed request). Indices are free-running `u32` counters;
//! slot `i` is `i % slot_count` (a power of two).
//!
//! Protocol (front end = requester):
//! 1. The front end writes requests into slots `req_prod..`, then (release)
//!    advances `req_prod`. If `req_prod` passed `req_event` (the back end
//!    asked to be told), it sends an event.
//! 2. The back end reads `req_prod` (acquire), **copies each request out of
//!    the ring before validating it**, and checks that `req_prod - rsp_prod`
//!    never exceeds the slot count (else the front end is hostile: disconnect).
//! 3. The back end writes responses into slots `rsp_prod..`, then advances
//!    `rsp_prod`; if it passed `rsp_event`, it sends an event.
//! 4. Event suppression: a side that is about to wait sets the other side's
//!    `*_event` to "the index after the last one I have seen + 1", then
//!    re-checks the producer index (to close the race), and only then waits.
//!
//! Each side treats every index and field written by the other as hostile.

use core::mem::{offset_of, size_of};

/// Bytes of the ring page before the first slot.
pub const HEADER_SIZE: usize = 64;

/// The ring page's header. `req_prod` and `rsp_event` are written by the
/// front end, `rsp_prod` and `req_event` by the back end.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingHeader {
    /// Requests produced so far (front end).
    pub req_prod: u32,
    /// Send an event when `req_prod` passes this (back end).
    pub req_event: u32,
    /// Responses produced so far (back end).
    pub rsp_prod: u32,
    /// Send an event when `rsp_prod` passes this (front end).
    pub rsp_event: u32,
    /// Reserved, zero.
    pub _reserved: [u32; 12],
}

const _: () = assert!(size_of::<RingHeader>() == HEADER_SIZE);
const _: () = assert!(offset_of!(RingHeader, req_prod) == 0);
const _: () = assert!(offset_of!(RingHeader, req_event) == 4);
const _: () = assert!(offset_of!(RingHeader, rsp_prod) == 8);
const _: () = assert!(offset_of!(RingHeader, rsp_event) == 12);

/// Slots in a one-page ring whose slot is `slot_size` bytes: the largest
/// power of two that fits after the header.
pub const fn slot_count(slot_size: usize) -> usize {
    let room = (crate::PAGE_SIZE as usize - HEADER_SIZE) / slot_size;
    if room == 0 {
        return 0;
    }
    1 << (usize::BITS - 1 - room.leading_zeros())
}

/// Whether the producer index `new` passed the event index `event` since
/// `old` (all wrapping), i.e. whether to notify the other side.
pub const fn should_notify(old: u32, new: u32, event: u32) -> bool {
    new.wrapping_sub(event) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_counts_are_powers_of_two_that_fit() {
        assert_eq!(slot_count(88), 32);
        assert_eq!(slot_count(16), 128);
        assert_eq!(slot_count(4032), 1);
        assert_eq!(slot_count(5000), 0);
        for size in 1..4032 {
            let count = slot_count(size);
            assert!(count.is_power_of_two());
            assert!(HEADER_SIZE + count * size <= 4096);
            assert!(HEADER_SIZE + 2 * count * size > 4096);
        }
    }

    #[test]
    fn notification_rule() {
        // The consumer asked to hear about index 5 (req_event = 5 + 1 style).
        assert!(should_notify(4, 6, 5));
        assert!(!should_notify(6, 8, 5), "already past: the consumer was told before");
        assert!(should_notify(u32::MAX - 1, 2, 0), "wrapping");
        assert!(!should_notify(3, 3, 3), "nothing produced");
    }
}
