//! The network device protocol (since ABI 0.5): a guest's virtual network
//! interface (vif) carries Ethernet frames to and from dom0's software
//! switch over two rings of Xen's `io/ring.h` layout ([`crate::xen::io`]),
//! one for each direction.
//!
//! # Connecting
//! As Xen's toolstack and Linux's `xen-netfront` do it ([`crate::store`]
//! has the directories, keys and state diagram). dom0 publishes the
//! back-end directory `/local/domain/0/backend/vif/<guest>/<n>` (`<n>` the
//! vif's handle, 0 for the first) with its keys and features and `state`
//! = 2 InitWait, and the front-end directory `device/vif/<n>` with
//! `backend`, `backend-id`, `handle`, `mac`, `mtu` and `state` = 1
//! Initialising: before the guest first runs for a vif in its config, or
//! while it runs (`network-attach`; a front end that wants hot-plug
//! watches `device/vif`). The front end then:
//! 1. initialises two ring pages (Xen's `SHARED_RING_INIT`:
//!    [`crate::xen::io::SringHeader::new`]), grants
//!    each to dom0 read-write, and allocates one event port for dom0;
//! 2. writes `tx-ring-ref`, `rx-ring-ref`, `event-channel`,
//!    `request-rx-copy` = 1, `feature-rx-notify` = 1, then `state` = 4
//!    Connected (as Linux's netfront; 3 Initialised is accepted too);
//! 3. waits for the back end's `state` = 4 Connected (6 Closed: refused).
//!
//! One event channel serves both rings in both directions.
//!
//! # Disconnecting
//! To take a vif away (`network-detach`) dom0 sets `online` to 0 and its
//! `state` to Closing (and notifies). The front end stops using the rings, closes its port and
//! writes its own `state` = Closed; dom0 then unmaps the ring pages, closes
//! its end and removes both directories, after which the front end can
//! revoke its grants (they stay mapped, and unrevocable, until then). A
//! front end that does not answer within 5 seconds loses the vif anyway.
//! The block protocol ([`crate::block`]) disconnects the same way.
//!
//! The front end may also close the vif itself (state Closing): dom0 then
//! unmaps both ring pages, closes its end, takes the vif off the switch and
//! answers Closed, keeping both directories and the MAC for the guest; the
//! front end can then revoke its grants, and reconnect by writing
//! Initialising (dom0 answers InitWait) and publishing fresh rings
//! ([`crate::store`] has the state diagram). A vif dom0 disconnected for a
//! broken ring, or refused at connection, is closed and reconnected the
//! same way.
//!
//! # Transmit ring (guest to dom0)
//! The front end puts a frame in a page it granted to dom0 (read-only is
//! enough) and queues a [`TxRequest`] naming the grant, the offset and the
//! length. The back end copies the frame out (one hypervisor grant copy),
//! hands it to the switch and answers a [`TxResponse`] with the request's
//! `id`: [`STATUS_OK`] once the frame left the vif (the switch may still
//! drop it, as a real switch would, when no port can take it), or
//! [`STATUS_ERROR`] for a malformed request (bad grant, range past the page,
//! length outside [`FRAME_MIN`]..=[`FRAME_MAX`]). The page may be reused
//! once the response arrived (see Data pages).
//!
//! # Receive ring (dom0 to guest)
//! The front end posts empty buffers: an [`RxRequest`] names a whole page
//! granted to dom0 read-write. For each frame the switch sends to the vif,
//! the back end takes the oldest posted buffer, copies the frame to offset
//! 0 of its page, and answers an [`RxResponse`] whose `status` is the
//! frame's length (or [`STATUS_ERROR`] when the grant was unusable: the
//! buffer is returned empty). Frames for a vif with no posted buffer are
//! dropped and counted in dom0. Frames carry no FCS and are not padded.
//!
//! # Data pages
//! dom0 never maps a transmit page or receive buffer: each frame moves in
//! one hypervisor grant copy, finished before its response is written. So
//! the front end may reuse or revoke a page as soon as the response naming
//! it arrived (a receive buffer's grant must stay valid while the buffer is
//! posted). Only the two ring pages stay mapped, until disconnection.
//!
//! # Hostile ends
//! The back end copies each request out of the ring once and validates it;
//! a front end whose producer index runs past the ring is disconnected
//! (state Closed) with a log line in dom0. Other vifs are not affected.
//!
//! # Features
//! Keys the back end writes in its directory (Xen's names,
//! [`crate::xen::io::net`]):
//! - `feature-rx-copy` = `1`: frames are copied into posted buffers (the
//!   only receive mode of this version).
//! - `feature-sg` = `0`: a frame is one slot; no scatter-gather.
//! - `feature-gso-tcpv4` = `0`: no segmentation offload.
//! - `feature-no-csum-offload` = `1`: checksums are the sender's job (a
//!   transmit request with any flag, `NETTXF_CSUM_BLANK` included, is
//!   refused).
//!
//! `mtu` (front-end directory, toolstack): the largest payload, [`MTU`].

use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Largest Ethernet payload.
pub const MTU: usize = 1500;
/// Ethernet header bytes: destination, source, EtherType.
pub const HEADER: usize = 14;
/// Longest frame on a vif (header + MTU; no FCS, no VLAN tag).
pub const FRAME_MAX: usize = HEADER + MTU;
/// Shortest frame on a vif (the header alone).
pub const FRAME_MIN: usize = HEADER;

/// Success.
pub const STATUS_OK: i16 = 0;
/// The request was malformed (bad grant, offset or length).
pub const STATUS_ERROR: i16 = -1;

/// A frame to send, written by the front end.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct TxRequest {
    /// The front end's tag, echoed in the response.
    pub id: u16,
    /// Reserved, zero.
    pub flags: u16,
    /// Grant reference of the page holding the frame.
    pub grant: u32,
    /// Offset of the frame in the page; `offset + size <= 4096`.
    pub offset: u16,
    /// Length of the frame, [`FRAME_MIN`]..=[`FRAME_MAX`].
    pub size: u16,
    /// Reserved, zero.
    pub _reserved: u32,
}

const _: () = assert!(size_of::<TxRequest>() == 16);
const _: () = assert!(offset_of!(TxRequest, flags) == 2);
const _: () = assert!(offset_of!(TxRequest, grant) == 4);
const _: () = assert!(offset_of!(TxRequest, offset) == 8);
const _: () = assert!(offset_of!(TxRequest, size) == 10);

/// The answer to a [`TxRequest`], written by the back end.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct TxResponse {
    /// The request's `id`.
    pub id: u16,
    /// [`STATUS_OK`] or [`STATUS_ERROR`].
    pub status: i16,
    /// Reserved, zero.
    pub _reserved: u32,
}

const _: () = assert!(size_of::<TxResponse>() == 8);
const _: () = assert!(offset_of!(TxResponse, status) == 2);

/// An empty receive buffer, posted by the front end.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct RxRequest {
    /// The front end's tag, echoed in the response.
    pub id: u16,
    /// Reserved, zero.
    pub _reserved: u16,
    /// Grant reference of a page granted read-write to dom0.
    pub grant: u32,
}

const _: () = assert!(size_of::<RxRequest>() == 8);
const _: () = assert!(offset_of!(RxRequest, grant) == 4);

/// A received frame (or a returned buffer), written by the back end.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct RxResponse {
    /// The buffer's `id`.
    pub id: u16,
    /// Offset of the frame in the page (0 in this version).
    pub offset: u16,
    /// The frame's length (> 0), or [`STATUS_ERROR`].
    pub status: i16,
    /// Reserved, zero.
    pub _reserved: u16,
}

const _: () = assert!(size_of::<RxResponse>() == 8);
const _: () = assert!(offset_of!(RxResponse, offset) == 2);
const _: () = assert!(offset_of!(RxResponse, status) == 4);

/// Bytes per transmit-ring slot.
pub const TX_SLOT_SIZE: usize = size_of::<TxRequest>();
/// Slots in the transmit ring.
pub const TX_SLOTS: usize = crate::xen::io::page_ring_size(TX_SLOT_SIZE) as usize;
const _: () = assert!(TX_SLOTS == 128);
/// Bytes per receive-ring slot.
pub const RX_SLOT_SIZE: usize = size_of::<RxRequest>();
/// Slots in the receive ring.
pub const RX_SLOTS: usize = crate::xen::io::page_ring_size(RX_SLOT_SIZE) as usize;
const _: () = assert!(RX_SLOTS == 256);

/// Parses a MAC address written as six `:`-separated pairs of hex digits.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in mac.iter_mut() {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Writes `mac` as `xx:xx:xx:xx:xx:xx` into `out`; returns the 17 bytes.
pub fn format_mac(mac: [u8; 6], out: &mut [u8; 17]) -> &str {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (index, byte) in mac.iter().enumerate() {
        out[index * 3] = HEX[(byte >> 4) as usize];
        out[index * 3 + 1] = HEX[(byte & 15) as usize];
        if index < 5 {
            out[index * 3 + 2] = b':';
        }
    }
    core::str::from_utf8(out).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_text_round_trips() {
        let mut out = [0u8; 17];
        let mac = [0x00, 0x16, 0x3e, 0xab, 0x0c, 0xff];
        assert_eq!(format_mac(mac, &mut out), "00:16:3e:ab:0c:ff");
        assert_eq!(parse_mac("00:16:3e:ab:0c:ff"), Some(mac));
        assert_eq!(parse_mac("00:16:3E:AB:0C:FF"), Some(mac));
        for bad in
            ["", "00:16:3e:ab:0c", "00:16:3e:ab:0c:ff:00", "0:16:3e:ab:0c:ff", "00:16:3e:ab:0c:fg", "00-16-3e-ab-0c-ff"]
        {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_largest_frame_fits_a_page() {
        assert!(FRAME_MAX <= crate::PAGE_SIZE as usize);
    }
}
