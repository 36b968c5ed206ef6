//! The console ring page (`io/console.h`): a byte stream each way between
//! a guest's `hvc0` and the console back end.
//!
//! The page's guest frame and event channel are the HVM parameters
//! `HVM_PARAM_CONSOLE_PFN` and `HVM_PARAM_CONSOLE_EVTCHN`
//! ([`crate::xen::hvm`]); the toolstack sets up both before the guest
//! starts, so a guest has a console without the store. The page is
//! reserved in the guest's memory map.
//!
//! `out` carries the guest's output: the guest writes bytes at
//! `out_prod`, then (release) advances `out_prod` and notifies the port;
//! the back end reads from `out_cons` and advances it. `in` carries input
//! the other way, the back end producing at `in_prod` and the guest
//! consuming at `in_cons`. Indices are free-running `u32` counters; byte
//! `i` of a ring of `n` bytes is at `i & (n - 1)` ([`console_slot`]). A
//! producer never lets `prod - cons` exceed the ring's size; a consumer
//! that sees it does treats the peer as broken.
//!
//! Mica's own console ring ([`crate::console`]) has the same layout up to
//! `out_prod`; `connection` is the one field it does not have.

use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Bytes of the input ring (back end to guest).
pub const XENCONS_IN_SIZE: usize = 1024;
/// Bytes of the output ring (guest to back end).
pub const XENCONS_OUT_SIZE: usize = 2048;

/// [`XenconsInterface::connection`]: the back end services the ring.
pub const XENCONSOLE_CONNECTED: u8 = 0;
/// [`XenconsInterface::connection`]: nobody empties the ring yet (the
/// value the back end starts from, where it uses the field).
pub const XENCONSOLE_DISCONNECTED: u8 = 1;

/// The console page (`xencons_interface`), at the start of its page.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenconsInterface {
    /// Input bytes (back end writes, guest reads).
    pub r#in: [u8; XENCONS_IN_SIZE],
    /// Output bytes (guest writes, back end reads).
    pub out: [u8; XENCONS_OUT_SIZE],
    /// Input consumed (guest).
    pub in_cons: u32,
    /// Input produced (back end).
    pub in_prod: u32,
    /// Output consumed (back end).
    pub out_cons: u32,
    /// Output produced (guest).
    pub out_prod: u32,
    /// [`XENCONSOLE_CONNECTED`] or [`XENCONSOLE_DISCONNECTED`] (back end).
    /// A guest that finds it disconnected may keep writing; output waits.
    pub connection: u8,
    /// Padding (implicit in C), zero.
    pub _pad0: [u8; 3],
}

const _: () = assert!(size_of::<XenconsInterface>() == 3092);
const _: () = assert!(offset_of!(XenconsInterface, r#in) == 0);
const _: () = assert!(offset_of!(XenconsInterface, out) == 1024);
const _: () = assert!(offset_of!(XenconsInterface, in_cons) == 3072);
const _: () = assert!(offset_of!(XenconsInterface, in_prod) == 3076);
const _: () = assert!(offset_of!(XenconsInterface, out_cons) == 3080);
const _: () = assert!(offset_of!(XenconsInterface, out_prod) == 3084);
const _: () = assert!(offset_of!(XenconsInterface, connection) == 3088);

/// The byte offset of index `index` in a console ring of `ring_bytes`
/// bytes (1024 or 2048).
pub const fn console_slot(index: u32, ring_bytes: usize) -> usize {
    index as usize & (ring_bytes - 1)
}

/// Bytes waiting in a console ring, or `None` if the indices claim more
/// than the ring holds (a broken or hostile peer).
pub const fn console_pending(prod: u32, cons: u32, ring_bytes: usize) -> Option<u32> {
    let pending = prod.wrapping_sub(cons);
    if pending as usize > ring_bytes { None } else { Some(pending) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_wrap() {
        assert_eq!(console_slot(2049, XENCONS_OUT_SIZE), 1);
        assert_eq!(console_slot(u32::MAX, XENCONS_IN_SIZE), 1023);
        assert_eq!(console_pending(5, u32::MAX - 2, XENCONS_OUT_SIZE), Some(8));
        assert_eq!(console_pending(2048, 0, XENCONS_OUT_SIZE), Some(2048));
        assert_eq!(console_pending(2049, 0, XENCONS_OUT_SIZE), None);
        assert_eq!(console_pending(0, 1, XENCONS_IN_SIZE), None, "consumer ahead of producer");
    }
}
