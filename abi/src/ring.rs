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
//!    advances `req_prod`, then notifies the back end if the rule below
//!    says so.
//! 2. The back end reads `req_prod` (acquire), **copies each request out of
//!    the ring before validating it**, and checks that `req_prod - rsp_prod`
//!    never exceeds the slot count (else the front end is hostile: disconnect).
//! 3. The back end writes responses into slots `rsp_prod..`, then (release)
//!    advances `rsp_prod`, then notifies the front end if the rule says so.
//!
//! # Starting
//! The front end zeroes the whole header each time it hands a ring over
//! (before it grants the page and publishes its reference; a reconnection
//! too): both ends count every index from 0. The slots need no initial
//! value.
//!
//! # Notifications
//! Each consumer writes its own event index: the back end `req_event`, the
//! front end `rsp_event`. An event index `e` asks the producer for an event
//! when its index reaches or passes `e`. 0, the value at start, is reached
//! only when the index wraps, so at start neither end asks: no event flows
//! until the consumer arms, and each end looks at the ring once before it
//! first waits (arming, below, does so).
//! - Posting: after advancing its index from `old` (the value it last
//!   published) to `new`, the producer issues a full fence (a store-load
//!   barrier: `mfence` or a locked instruction; release is not enough),
//!   reads the consumer's event index `e` and sends one event on the
//!   ring's channel exactly when [`should_notify`]`(old, new, e)`: `e` lies
//!   in `old + 1 ..= new` (wrapping).
//! - Arming: a consumer that found nothing to take and is about to wait
//!   stores `e = consumed + 1` (`consumed` = the items it has taken, i.e.
//!   the index of the next one), issues a full fence, and reads the
//!   producer index again; if that moved, it consumes instead of waiting.
//!   Either the producer's read sees the new `e` or the consumer's re-read
//!   sees the new index, so no wake-up is lost.
//!
//! Events are hints: the indices are the truth, and an end may also poll.
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
    /// Send an event when `req_prod` reaches this (back end; 0 at start).
    pub req_event: u32,
    /// Responses produced so far (back end).
    pub rsp_prod: u32,
    /// Send an event when `rsp_prod` reaches this (front end; 0 at start).
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

/// Whether a producer that moved its index from `old` to `new` must notify
/// the consumer whose event index is `event`: `event` is in `old + 1 ..=
/// new` (all wrapping). See the module docs for the fences around it.
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
