//! The network device protocol (since ABI 0.5): a guest's virtual network
//! interface (vif) carries Ethernet frames to and from dom0's software
//! switch over two rings of Xen's `io/ring.h` layout ([`crate::xen::io`]),
//! one for each direction, with Xen's `netif` entries.
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
//! Xen's `netif` ([`crate::xen::io::net`]): [`NetifTxRequest`] slots of
//! 12 bytes and [`NetifTxResponse`]s of 4 on a ring of
//! [`NETIF_TX_RING_SIZE`] = 256 entries. A frame is one or more slots, as
//! Linux's `xen-netfront` builds it: the first slot's `size` is the whole
//! frame's length and its own bytes are that length less the later
//! slots' sizes; every slot but the last carries `NETTXF_MORE_DATA`; all
//! of a frame's slots are published together. The back end copies the
//! frame out (one hypervisor grant copy a slot, each checked first),
//! hands it to the switch and answers every slot with the frame's status,
//! in ring order, each with its own `id`: `NETIF_RSP_OKAY` once the frame
//! left the vif (the switch may still drop it, as a real switch would,
//! when no port can take it), or `NETIF_RSP_ERROR` for a refused frame.
//! A page may be reused once the response naming it arrived (see Data
//! pages).
//!
//! What dom0 does with each transmit flag (`NETTXF_*`, first slot):
//! - `CSUM_BLANK` (Linux sets it, with `DATA_VALIDATED`, for every frame
//!   whose checksum the guest's stack left to the device): dom0 fills in
//!   the TCP or UDP checksum of an IPv4 frame (the field is recomputed
//!   whole over the pseudo-header and the segment, whatever the front end
//!   left in it; a UDP sum of 0 is sent as 0xffff) before the frame goes
//!   to the switch, which offers no checksum offload. A frame flagged so
//!   that is not an unfragmented IPv4 TCP or UDP packet wholly inside the
//!   frame (IPv6 included: dom0 offers no `feature-ipv6-csum-offload`) is
//!   refused with `NETIF_RSP_ERROR`.
//! - `DATA_VALIDATED`: accepted and ignored (nothing after dom0 relies on
//!   it).
//! - `MORE_DATA`: the frame continues in the next slot; a frame may use
//!   up to [`XEN_NETIF_NR_SLOTS_MIN`] = 18 data slots (Linux's most).
//! - `EXTRA_INFO`: extra-info slots ([`NetifExtraInfo`], chained by
//!   `XEN_NETIF_EXTRA_FLAG_MORE`, at most 4) follow the first slot. dom0
//!   offers no GSO, multicast control or hashing, so such a frame is
//!   refused: the first slot and its data slots are answered
//!   `NETIF_RSP_ERROR` and each extra-info slot `NETIF_RSP_NULL` (id 0),
//!   which keeps both ends' indices in step.
//! - Any other bit: the frame is refused (`NETIF_RSP_ERROR`).
//!
//! Flags on later slots other than `MORE_DATA` are ignored, as Xen's
//! netback does. A frame is also refused when a slot's grant is outside
//! the grant table or fails to copy, a slot runs past its page, the total
//! length is outside [`FRAME_MIN`]..=[`FRAME_MAX`], or the later slots
//! hold more bytes than the total.
//!
//! # Receive ring (dom0 to guest)
//! The front end posts empty buffers: a [`NetifRxRequest`] names a whole
//! page granted to dom0 read-write (its `pad` is ignored: Linux leaves
//! it unwritten). For each frame the switch sends to the vif, the back
//! end takes the oldest posted buffer, copies the frame to offset 0 of its
//! page, and answers a [`NetifRxResponse`] whose `status` is the frame's
//! length, with `flags` = 0 (or `NETIF_RSP_ERROR` when the grant was
//! unusable: the buffer is returned empty, and the frame goes to the next
//! buffer). A frame always fits one buffer, so `NETRXF_MORE_DATA` is never
//! set; nor is `NETRXF_EXTRA_INFO` (no GSO), `NETRXF_CSUM_BLANK` (every
//! frame on the switch carries its checksums: dom0 filled any blank ones)
//! or `NETRXF_DATA_VALIDATED` (dom0 does not verify checksums, so the
//! guest does). Frames for a vif with no posted buffer are dropped and
//! counted in dom0. Frames carry no FCS and are not padded.
//!
//! # Data pages
//! dom0 never maps a transmit page or receive buffer: each slot moves in
//! one hypervisor grant copy, finished before its response is written. So
//! the front end may reuse or revoke a page as soon as the response naming
//! it arrived (a receive buffer's grant must stay valid while the buffer is
//! posted). Only the two ring pages stay mapped, until disconnection.
//!
//! # Hostile ends
//! The back end copies each slot out of the ring once and validates it.
//! A front end is disconnected (state Closed, with a log line in dom0)
//! when its producer index runs past the ring, when a frame's slots
//! (`MORE_DATA` or extra-info chains) run past the requests it published,
//! or when a frame has more than 18 data slots or 4 extra-info slots (as
//! Xen's netback treats its fatal cases). Every other malformed frame is
//! answered with errors and the ring goes on. Other vifs are not affected.
//!
//! # Features
//! Keys the back end writes in its directory (Xen's names,
//! [`crate::xen::io::net`]):
//! - `feature-rx-copy` = `1`: frames are copied into posted buffers (the
//!   only receive mode of this version).
//! - `feature-sg` = `1`: a transmitted frame may span several slots
//!   (Linux's netfront drops frames that cross a page without it).
//! - `feature-gso-tcpv4` = `0`: no segmentation offload.
//! - `feature-no-csum-offload` = `1`: dom0 sends the front end no blank
//!   checksums. Linux's netfront sends `CSUM_BLANK` frames whatever this
//!   key says; dom0 fills them (above).
//!
//! `mtu` (front-end directory, toolstack): the largest payload, [`MTU`].
//!
//! [`NetifTxRequest`]: crate::xen::io::net::NetifTxRequest
//! [`NetifTxResponse`]: crate::xen::io::net::NetifTxResponse
//! [`NetifRxRequest`]: crate::xen::io::net::NetifRxRequest
//! [`NetifRxResponse`]: crate::xen::io::net::NetifRxResponse
//! [`NetifExtraInfo`]: crate::xen::io::net::NetifExtraInfo
//! [`NETIF_TX_RING_SIZE`]: crate::xen::io::net::NETIF_TX_RING_SIZE
//! [`XEN_NETIF_NR_SLOTS_MIN`]: crate::xen::io::net::XEN_NETIF_NR_SLOTS_MIN

/// Largest Ethernet payload.
pub const MTU: usize = 1500;
/// Ethernet header bytes: destination, source, EtherType.
pub const HEADER: usize = 14;
/// Longest frame on a vif (header + MTU; no FCS, no VLAN tag).
pub const FRAME_MAX: usize = HEADER + MTU;
/// Shortest frame on a vif (the header alone).
pub const FRAME_MIN: usize = HEADER;
/// Most data slots of one transmitted frame.
pub const TX_FRAME_SLOTS: usize = crate::xen::io::net::XEN_NETIF_NR_SLOTS_MIN as usize;
/// Most extra-info slots after one transmitted frame's first slot.
pub const TX_EXTRA_SLOTS: usize = 4;

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
