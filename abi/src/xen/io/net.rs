//! The network device protocol (`io/netif.h`): a front end in the guest
//! (Linux's `xen-netfront`) exchanges Ethernet frames with a back end over
//! two rings, one for transmit (guest to back end) and one for receive.
//!
//! # Connecting
//! Directories and states as in [`super::xenbus`], class `vif`, device id
//! 0, 1, ...
//! 1. The toolstack writes [`KEY_MAC`] in both directories and
//!    [`KEY_HANDLE`] in the back end's. The back end publishes its
//!    features ([`KEY_FEATURE_RX_COPY`] is required by Linux; an absent key
//!    means 0, except [`KEY_FEATURE_NO_CSUM_OFFLOAD`]: absent means
//!    checksum offload *on*) and moves to `InitWait`.
//! 2. The front end initialises both ring pages, grants them, allocates a
//!    port, writes [`KEY_TX_RING_REF`], [`KEY_RX_RING_REF`],
//!    [`KEY_EVENT_CHANNEL`], [`KEY_REQUEST_RX_COPY`] = 1 and its own
//!    features ([`KEY_FEATURE_RX_NOTIFY`], [`KEY_FEATURE_SG`],
//!    [`KEY_FEATURE_NO_CSUM_OFFLOAD`] = 1 if it cannot accept blank
//!    checksums), posts receive buffers and moves to `Connected`.
//! 3. The back end maps the rings, binds the port and moves to
//!    `Connected`.
//!
//! # Transmit
//! A frame is one or more [`NetifTxRequest`] slots, each naming a granted
//! page, an offset and a length; all but the last carry
//! [`NETTXF_MORE_DATA`], and the first one's `size` is the whole frame's
//! length. The back end copies the frame out and answers every slot with
//! a [`NetifTxResponse`] (the extra-info slots with [`NETIF_RSP_NULL`]).
//! A frame may use up to [`XEN_NETIF_NR_SLOTS_MIN`] slots.
//!
//! # Receive
//! The front end posts empty buffers as [`NetifRxRequest`] (a granted
//! page each); the back end copies a frame into the next buffer(s) and
//! answers each with a [`NetifRxResponse`] whose `status` is the byte
//! count written (or a negative `NETIF_RSP_*`).
//!
//! Extra-info slots (GSO, multicast, hashing: `netif_extra_info`), split
//! event channels, several queues and the control ring are optional
//! features that a front end uses only if the back end advertises them;
//! this module names their keys but defines no layouts for them.

use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::page_ring_size;
use crate::xen::{GrantRef, numbered_enum};

/// Transmit flag: the protocol checksum is blank (to be filled in by
/// whoever sends it on).
pub const NETTXF_CSUM_BLANK: u16 = 1 << 0;
/// Transmit flag: the packet's checksum was validated.
pub const NETTXF_DATA_VALIDATED: u16 = 1 << 1;
/// Transmit flag: the frame continues in the next slot.
pub const NETTXF_MORE_DATA: u16 = 1 << 2;
/// Transmit flag: an extra-info slot follows.
pub const NETTXF_EXTRA_INFO: u16 = 1 << 3;

/// Receive flag: the packet's checksum was validated.
pub const NETRXF_DATA_VALIDATED: u16 = 1 << 0;
/// Receive flag: the protocol checksum is blank.
pub const NETRXF_CSUM_BLANK: u16 = 1 << 1;
/// Receive flag: the frame continues in the next slot.
pub const NETRXF_MORE_DATA: u16 = 1 << 2;
/// Receive flag: an extra-info slot follows.
pub const NETRXF_EXTRA_INFO: u16 = 1 << 3;
/// Receive flag (deprecated): a GSO prefix slot.
pub const NETRXF_GSO_PREFIX: u16 = 1 << 4;

numbered_enum! {
    /// Response statuses (`NETIF_RSP_*`) of transmit responses; receive
    /// responses carry a byte count (>= 0) or one of the negative values.
    pub enum NetifRsp: i16 {
        /// The frame was dropped.
        Dropped = -2,
        /// The slot was invalid or the transfer failed.
        Error = -1,
        /// Sent.
        Okay = 0,
        /// No response: the slot held extra information.
        Null = 1,
    }
}

/// [`NetifRsp::Dropped`] as a number.
pub const NETIF_RSP_DROPPED: i16 = -2;
/// [`NetifRsp::Error`] as a number.
pub const NETIF_RSP_ERROR: i16 = -1;
/// [`NetifRsp::Okay`] as a number.
pub const NETIF_RSP_OKAY: i16 = 0;
/// [`NetifRsp::Null`] as a number.
pub const NETIF_RSP_NULL: i16 = 1;

/// Slots a back end must accept for one transmitted frame.
pub const XEN_NETIF_NR_SLOTS_MIN: u32 = 18;
/// Largest frame `size` in a transmit request.
pub const XEN_NETIF_MAX_TX_SIZE: u32 = 0xffff;

/// One transmit slot (`netif_tx_request`), 12 bytes. Written by the front
/// end.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct NetifTxRequest {
    /// Grant of the page holding the data (read-only for the back end is
    /// enough).
    pub gref: GrantRef,
    /// Offset of the data in the page.
    pub offset: u16,
    /// `NETTXF_*`.
    pub flags: u16,
    /// The front end's tag, echoed in the response.
    pub id: u16,
    /// First slot: the whole frame's length; later slots: this slot's.
    pub size: u16,
}

const _: () = assert!(size_of::<NetifTxRequest>() == 12);
const _: () = assert!(offset_of!(NetifTxRequest, gref) == 0);
const _: () = assert!(offset_of!(NetifTxRequest, offset) == 4);
const _: () = assert!(offset_of!(NetifTxRequest, flags) == 6);
const _: () = assert!(offset_of!(NetifTxRequest, id) == 8);
const _: () = assert!(offset_of!(NetifTxRequest, size) == 10);

/// Extra-info flag: another extra-info slot follows this one.
pub const XEN_NETIF_EXTRA_FLAG_MORE: u8 = 1 << 0;
/// Extra-info type: segmentation offload (`u.gso`).
pub const XEN_NETIF_EXTRA_TYPE_GSO: u8 = 1;
/// Extra-info type: add a multicast address (`u.mcast`).
pub const XEN_NETIF_EXTRA_TYPE_MCAST_ADD: u8 = 2;
/// Extra-info type: remove a multicast address (`u.mcast`).
pub const XEN_NETIF_EXTRA_TYPE_MCAST_DEL: u8 = 3;
/// Extra-info type: the packet's hash (`u.hash`).
pub const XEN_NETIF_EXTRA_TYPE_HASH: u8 = 4;
/// One more than the largest extra-info type.
pub const XEN_NETIF_EXTRA_TYPE_MAX: u8 = 5;

/// An extra-info slot (`netif_extra_info`), 12 bytes, in a transmit
/// slot after a request carrying [`NETTXF_EXTRA_INFO`] (or a receive slot
/// after a response carrying [`NETRXF_EXTRA_INFO`]). Only the header is
/// named here; the type-specific body is left as bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct NetifExtraInfo {
    /// `XEN_NETIF_EXTRA_TYPE_*`.
    pub kind: u8,
    /// [`XEN_NETIF_EXTRA_FLAG_MORE`] or 0.
    pub flags: u8,
    /// The type's body (`u.gso`, `u.mcast`, `u.hash`), padded to 10 bytes.
    pub body: [u8; 10],
}

const _: () = assert!(size_of::<NetifExtraInfo>() == size_of::<NetifTxRequest>());
const _: () = assert!(offset_of!(NetifExtraInfo, flags) == 1);

/// One transmit response (`netif_tx_response`), 4 bytes. Written by the
/// back end.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct NetifTxResponse {
    /// The request's `id`.
    pub id: u16,
    /// A [`NetifRsp`] number.
    pub status: i16,
}

const _: () = assert!(size_of::<NetifTxResponse>() == 4);
const _: () = assert!(offset_of!(NetifTxResponse, status) == 2);

/// One posted receive buffer (`netif_rx_request`), 8 bytes. Written by
/// the front end.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct NetifRxRequest {
    /// The front end's tag, echoed in the response.
    pub id: u16,
    /// Padding, zero.
    pub pad: u16,
    /// Grant of the (writable) buffer page.
    pub gref: GrantRef,
}

const _: () = assert!(size_of::<NetifRxRequest>() == 8);
const _: () = assert!(offset_of!(NetifRxRequest, id) == 0);
const _: () = assert!(offset_of!(NetifRxRequest, gref) == 4);

/// One receive response (`netif_rx_response`), 8 bytes. Written by the
/// back end.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct NetifRxResponse {
    /// The request's `id`.
    pub id: u16,
    /// Offset of the data in the buffer page.
    pub offset: u16,
    /// `NETRXF_*`.
    pub flags: u16,
    /// Bytes written (>= 0) or a negative [`NetifRsp`] number.
    pub status: i16,
}

const _: () = assert!(size_of::<NetifRxResponse>() == 8);
const _: () = assert!(offset_of!(NetifRxResponse, offset) == 2);
const _: () = assert!(offset_of!(NetifRxResponse, flags) == 4);
const _: () = assert!(offset_of!(NetifRxResponse, status) == 6);

/// Bytes of a transmit ring entry (the larger of request and response).
pub const NETIF_TX_ENTRY_SIZE: usize = size_of::<NetifTxRequest>();
const _: () = assert!(NETIF_TX_ENTRY_SIZE >= size_of::<NetifTxResponse>());
/// Entries in a one-page transmit ring.
pub const NETIF_TX_RING_SIZE: u32 = page_ring_size(NETIF_TX_ENTRY_SIZE);
const _: () = assert!(NETIF_TX_RING_SIZE == 256);

/// Bytes of a receive ring entry (request and response are both 8).
pub const NETIF_RX_ENTRY_SIZE: usize = size_of::<NetifRxResponse>();
const _: () = assert!(NETIF_RX_ENTRY_SIZE == size_of::<NetifRxRequest>());
/// Entries in a one-page receive ring.
pub const NETIF_RX_RING_SIZE: u32 = page_ring_size(NETIF_RX_ENTRY_SIZE);
const _: () = assert!(NETIF_RX_RING_SIZE == 256);

/// Front end: grant of the transmit ring page.
pub const KEY_TX_RING_REF: &str = "tx-ring-ref";
/// Front end: grant of the receive ring page.
pub const KEY_RX_RING_REF: &str = "rx-ring-ref";
/// Front end: its port for both rings.
pub const KEY_EVENT_CHANNEL: &str = "event-channel";
/// Front end, split event channels: the transmit port.
pub const KEY_EVENT_CHANNEL_TX: &str = "event-channel-tx";
/// Front end, split event channels: the receive port.
pub const KEY_EVENT_CHANNEL_RX: &str = "event-channel-rx";
/// Both (toolstack): the MAC address, `"aa:bb:cc:dd:ee:ff"`.
pub const KEY_MAC: &str = "mac";
/// Back end (toolstack): the device number.
pub const KEY_HANDLE: &str = "handle";
/// Back end: it copies into the front end's receive buffers (`"1"`).
pub const KEY_FEATURE_RX_COPY: &str = "feature-rx-copy";
/// Front end: it wants receive by copy (`"1"`; the only mode Linux uses).
pub const KEY_REQUEST_RX_COPY: &str = "request-rx-copy";
/// Front end: it notifies when it posts receive buffers (`"1"`).
pub const KEY_FEATURE_RX_NOTIFY: &str = "feature-rx-notify";
/// Both: frames may span several slots (`"1"`).
pub const KEY_FEATURE_SG: &str = "feature-sg";
/// Both: `"1"` turns IPv4 TCP/UDP checksum offload off. Absent means
/// offload on.
pub const KEY_FEATURE_NO_CSUM_OFFLOAD: &str = "feature-no-csum-offload";
/// Both: IPv6 checksum offload (`"1"`; absent means off).
pub const KEY_FEATURE_IPV6_CSUM_OFFLOAD: &str = "feature-ipv6-csum-offload";
/// Both: TCPv4 segmentation offload (`"1"`; absent means off).
pub const KEY_FEATURE_GSO_TCPV4: &str = "feature-gso-tcpv4";
/// Both: TCPv6 segmentation offload (`"1"`; absent means off).
pub const KEY_FEATURE_GSO_TCPV6: &str = "feature-gso-tcpv6";
/// Back end: separate transmit and receive ports are supported (`"1"`).
pub const KEY_FEATURE_SPLIT_EVENT_CHANNELS: &str = "feature-split-event-channels";
/// Back end: most queues it supports (absent: one).
pub const KEY_MULTI_QUEUE_MAX_QUEUES: &str = "multi-queue-max-queues";
/// Back end: link state, `"1"` up, `"0"` down (absent: up).
pub const KEY_CARRIER: &str = "carrier";
/// Front end (toolstack): MTU in bytes (absent: 1500).
pub const KEY_MTU: &str = "mtu";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::test_support::check_numbered;

    #[test]
    fn numbers_match_xen() {
        check_numbered!(NetifRsp, i16);
        assert_eq!(NetifRsp::Dropped.number(), -2);
        assert_eq!(NetifRsp::Null.number(), NETIF_RSP_NULL);
        assert_eq!(NetifRsp::Okay.number(), NETIF_RSP_OKAY);
        assert_eq!(NetifRsp::Error.number(), NETIF_RSP_ERROR);
        assert_eq!(NetifRsp::Dropped.number(), NETIF_RSP_DROPPED);
        assert_eq!((NETTXF_MORE_DATA, NETRXF_MORE_DATA), (4, 4));
        assert_eq!((NETTXF_CSUM_BLANK, NETRXF_CSUM_BLANK), (1, 2), "the two rings number them differently");
    }
}
