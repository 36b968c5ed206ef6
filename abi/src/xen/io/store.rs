//! The store protocol on a shared page (`io/xs_wire.h`): messages between
//! a guest and the store (xenstored), a tree of keys with watches and
//! transactions through which front and back ends find each other.
//!
//! # Transport
//! The page's guest frame and the guest's port are the HVM parameters
//! `HVM_PARAM_STORE_PFN` and `HVM_PARAM_STORE_EVTCHN`; the page is
//! reserved in the guest's memory map (and granted to the store through
//! grant [`crate::xen::grant_table::GNTTAB_RESERVED_XENSTORE`]). It holds
//! two byte rings of [`XENSTORE_RING_SIZE`] bytes
//! ([`XenstoreDomainInterface`]): `req` from the guest to the store, `rsp`
//! back. Each works like the console's rings: the producer writes bytes
//! at `*_prod & 1023`, then (release) advances `*_prod` and notifies the
//! port; the consumer reads at `*_cons` and advances it; `prod - cons`
//! never exceeds 1024. Messages are a byte stream and may wrap around the
//! ring's end.
//!
//! # Messages
//! A message is a 16-byte [`XsdSockmsg`] header followed by `len` payload
//! bytes, `len <= XENSTORE_PAYLOAD_MAX`. A reply has the request's `type`,
//! `req_id` and `tx_id`, or `type` [`XsdSockmsgType::Error`] with the
//! error's name as payload (`"ENOENT"` and a NUL; see [`XSD_ERRORS`]).
//! Replies may come in any order; `req_id` matches them up. Watch events
//! arrive unasked, with `req_id` and `tx_id` 0.
//!
//! Payloads (`|` is a NUL byte): paths and other strings end with a NUL;
//! a value does not (its length is what is left of `len`).
//! - `READ path|` -> the value; `WRITE path|value` -> `OK|`;
//!   `MKDIR path|`, `RM path|` -> `OK|`;
//! - `DIRECTORY path|` -> each child's name followed by a NUL;
//! - `GET_PERMS path|` -> permissions, each `<letter><domid>|` (letters
//!   `n` none, `r` read, `w` write, `b` both; the first names the owner
//!   and the default); `SET_PERMS path|perm|perm|...` -> `OK|`;
//! - `WATCH path|token|` -> `OK|`, then one `WATCH_EVENT path|token|`
//!   at once and one each time `path` or a key below it changes;
//!   `UNWATCH path|token|` -> `OK|`;
//! - `TRANSACTION_START |` -> the new transaction id in decimal and a
//!   NUL; requests with that `tx_id` see and change a private copy;
//!   `TRANSACTION_END T|` commits (error `EAGAIN` if another write got in
//!   between: start again), `TRANSACTION_END F|` abandons;
//! - `GET_DOMAIN_PATH domid|` -> `/local/domain/<domid>` and a NUL.
//!
//! A relative path (no leading `/`) is taken relative to the caller's home
//! `/local/domain/<id>`. Paths use `A-Z a-z 0-9 - / _ @`, at most
//! [`XENSTORE_ABS_PATH_MAX`] bytes absolute and [`XENSTORE_REL_PATH_MAX`]
//! relative; values should be printable ASCII without a NUL.

use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::xen::errno::Errno;
use crate::xen::numbered_enum;

/// Bytes of each ring of the store page.
pub const XENSTORE_RING_SIZE: usize = 1024;
/// Largest payload of one message, either way. A store drops a client that
/// sends more.
pub const XENSTORE_PAYLOAD_MAX: u32 = 4096;
/// Longest absolute path.
pub const XENSTORE_ABS_PATH_MAX: usize = 3072;
/// Longest relative path.
pub const XENSTORE_REL_PATH_MAX: usize = 2048;

numbered_enum! {
    /// Message types (`enum xsd_sockmsg_type`).
    pub enum XsdSockmsgType: u32 {
        /// Store control commands (`XS_CONTROL`, formerly `XS_DEBUG`);
        /// control domain only.
        Control = 0,
        /// Lists a key's children.
        Directory = 1,
        /// Reads a value.
        Read = 2,
        /// Reads a key's permissions.
        GetPerms = 3,
        /// Sets a watch.
        Watch = 4,
        /// Removes a watch.
        Unwatch = 5,
        /// Starts a transaction.
        TransactionStart = 6,
        /// Commits or abandons a transaction.
        TransactionEnd = 7,
        /// Toolstack: connects the store to a new domain.
        Introduce = 8,
        /// Toolstack: disconnects a domain.
        Release = 9,
        /// A domain's home path.
        GetDomainPath = 10,
        /// Writes a value, creating missing parents.
        Write = 11,
        /// Creates a key (and missing parents) with an empty value.
        Mkdir = 12,
        /// Removes a key and everything below it.
        Rm = 13,
        /// Sets a key's permissions.
        SetPerms = 14,
        /// Store to client only: a watch fired.
        WatchEvent = 15,
        /// Store to client only: the request failed.
        Error = 16,
        /// Toolstack: whether a domain is connected.
        IsDomainIntroduced = 17,
        /// Toolstack: resumes a domain's connection.
        Resume = 18,
        /// Toolstack: lets a domain act for another.
        SetTarget = 19,
        /// Removes all of the caller's watches and transactions.
        ResetWatches = 21,
        /// Lists a long list of children in parts.
        DirectoryPart = 22,
        /// Reads store features.
        GetFeature = 23,
        /// Sets store features.
        SetFeature = 24,
        /// Reads quotas.
        GetQuota = 25,
        /// Sets quotas.
        SetQuota = 26,
    }
}

/// The control type's old name.
pub const XS_DEBUG: XsdSockmsgType = XsdSockmsgType::Control;
/// A type number never valid (number 20, the removed `XS_RESTRICT`, is
/// not valid either).
pub const XS_INVALID: u32 = 0xffff;

/// Field index of the path in a watch event's payload.
pub const XS_WATCH_PATH: usize = 0;
/// Field index of the token in a watch event's payload.
pub const XS_WATCH_TOKEN: usize = 1;

/// A message header (`xsd_sockmsg`), 16 bytes, little-endian on the ring.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XsdSockmsg {
    /// An [`XsdSockmsgType`] number.
    pub r#type: u32,
    /// Chosen by the client, echoed in the reply.
    pub req_id: u32,
    /// The transaction, 0 for none.
    pub tx_id: u32,
    /// Payload bytes that follow.
    pub len: u32,
}

/// Bytes of [`XsdSockmsg`].
pub const XSD_SOCKMSG_SIZE: usize = 16;

const _: () = assert!(size_of::<XsdSockmsg>() == XSD_SOCKMSG_SIZE);
const _: () = assert!(offset_of!(XsdSockmsg, r#type) == 0);
const _: () = assert!(offset_of!(XsdSockmsg, req_id) == 4);
const _: () = assert!(offset_of!(XsdSockmsg, tx_id) == 8);
const _: () = assert!(offset_of!(XsdSockmsg, len) == 12);

impl XsdSockmsg {
    /// The header's 16 bytes as they go on the ring.
    pub const fn to_bytes(&self) -> [u8; XSD_SOCKMSG_SIZE] {
        let words = [self.r#type, self.req_id, self.tx_id, self.len];
        let mut out = [0u8; XSD_SOCKMSG_SIZE];
        let mut index = 0;
        while index < XSD_SOCKMSG_SIZE {
            out[index] = words[index / 4].to_le_bytes()[index % 4];
            index += 1;
        }
        out
    }

    /// Reads a header from its 16 bytes (any values; check them with
    /// [`XsdSockmsg::validate`]).
    pub const fn from_bytes(bytes: &[u8; XSD_SOCKMSG_SIZE]) -> XsdSockmsg {
        const fn word(bytes: &[u8; XSD_SOCKMSG_SIZE], at: usize) -> u32 {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        }
        XsdSockmsg { r#type: word(bytes, 0), req_id: word(bytes, 4), tx_id: word(bytes, 8), len: word(bytes, 12) }
    }

    /// The message type, if this crate knows it and the payload length is
    /// within [`XENSTORE_PAYLOAD_MAX`]; `None` for a message the receiver
    /// must refuse.
    pub const fn validate(&self) -> Option<XsdSockmsgType> {
        if self.len > XENSTORE_PAYLOAD_MAX {
            return None;
        }
        XsdSockmsgType::from_number(self.r#type)
    }
}

/// The errors a store reply may name, in Xen's table order; on the wire
/// each is its C name ([`Errno::name`]) followed by a NUL.
pub const XSD_ERRORS: [Errno; 16] = [
    Errno::Einval,
    Errno::Eacces,
    Errno::Eexist,
    Errno::Eisdir,
    Errno::Enoent,
    Errno::Enomem,
    Errno::Enospc,
    Errno::Eio,
    Errno::Enotempty,
    Errno::Enosys,
    Errno::Erofs,
    Errno::Ebusy,
    Errno::Eagain,
    Errno::Eisconn,
    Errno::E2big,
    Errno::Eperm,
];

/// The error an `XS_ERROR` payload names (its NUL, if any, stripped);
/// `None` for a name not in [`XSD_ERRORS`].
pub fn xsd_error_from_payload(payload: &[u8]) -> Option<Errno> {
    let name = match payload.split_last() {
        Some((0, rest)) => rest,
        _ => payload,
    };
    XSD_ERRORS.iter().copied().find(|error| error.name().as_bytes() == name)
}

/// The name to send for `error`: its C name if it is in [`XSD_ERRORS`],
/// else `"EINVAL"` (Xen's store does the same for errors it cannot name).
pub fn xsd_error_name(error: Errno) -> &'static str {
    if XSD_ERRORS.contains(&error) { error.name() } else { Errno::Einval.name() }
}

/// [`XenstoreDomainInterface::server_features`]: the store can reconnect a
/// ring (`connection` is used).
pub const XENSTORE_SERVER_FEATURE_RECONNECTION: u32 = 1;
/// [`XenstoreDomainInterface::server_features`]: the `error` field is used.
pub const XENSTORE_SERVER_FEATURE_ERROR: u32 = 2;
/// [`XenstoreDomainInterface::server_features`]: `WATCH` takes a depth.
pub const XENSTORE_SERVER_FEATURE_WATCHDEPTH: u32 = 4;
/// [`XenstoreDomainInterface::server_features`]: permissions may name
/// `DOMID_ANY`.
pub const XENSTORE_SERVER_FEATURE_DOMID_ANY: u32 = 8;

/// [`XenstoreDomainInterface::connection`]: connected (steady state).
pub const XENSTORE_CONNECTED: u32 = 0;
/// [`XenstoreDomainInterface::connection`]: the guest asks to reconnect
/// (only with [`XENSTORE_SERVER_FEATURE_RECONNECTION`]).
pub const XENSTORE_RECONNECT: u32 = 1;

/// [`XenstoreDomainInterface::error`]: no error.
pub const XENSTORE_ERROR_NONE: u32 = 0;
/// [`XenstoreDomainInterface::error`]: a communication problem.
pub const XENSTORE_ERROR_COMM: u32 = 1;
/// [`XenstoreDomainInterface::error`]: a ring index was invalid.
pub const XENSTORE_ERROR_RINGIDX: u32 = 2;
/// [`XenstoreDomainInterface::error`]: a protocol violation (payload too
/// long).
pub const XENSTORE_ERROR_PROTO: u32 = 3;

/// The store page (`xenstore_domain_interface`), at the start of its page.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenstoreDomainInterface {
    /// Requests (guest writes, store reads).
    pub req: [u8; XENSTORE_RING_SIZE],
    /// Replies and watch events (store writes, guest reads).
    pub rsp: [u8; XENSTORE_RING_SIZE],
    /// Request bytes consumed (store).
    pub req_cons: u32,
    /// Request bytes produced (guest).
    pub req_prod: u32,
    /// Reply bytes consumed (guest).
    pub rsp_cons: u32,
    /// Reply bytes produced (store).
    pub rsp_prod: u32,
    /// `XENSTORE_SERVER_FEATURE_*` the store offers (store).
    pub server_features: u32,
    /// `XENSTORE_CONNECTED` or `XENSTORE_RECONNECT` (guest asks, store
    /// answers).
    pub connection: u32,
    /// `XENSTORE_ERROR_*` (store).
    pub error: u32,
    /// The guest's store port, for a domain no toolstack introduced to
    /// the store (written by the domain builder; in Xen, for domains it
    /// builds at boot); 0 otherwise, and then the port is the one in
    /// `HVM_PARAM_STORE_EVTCHN`. Newer than the other fields.
    pub evtchn_port: u32,
}

const _: () = assert!(size_of::<XenstoreDomainInterface>() == 2080);
const _: () = assert!(offset_of!(XenstoreDomainInterface, req) == 0);
const _: () = assert!(offset_of!(XenstoreDomainInterface, rsp) == 1024);
const _: () = assert!(offset_of!(XenstoreDomainInterface, req_cons) == 2048);
const _: () = assert!(offset_of!(XenstoreDomainInterface, req_prod) == 2052);
const _: () = assert!(offset_of!(XenstoreDomainInterface, rsp_cons) == 2056);
const _: () = assert!(offset_of!(XenstoreDomainInterface, rsp_prod) == 2060);
const _: () = assert!(offset_of!(XenstoreDomainInterface, server_features) == 2064);
const _: () = assert!(offset_of!(XenstoreDomainInterface, connection) == 2068);
const _: () = assert!(offset_of!(XenstoreDomainInterface, error) == 2072);
const _: () = assert!(offset_of!(XenstoreDomainInterface, evtchn_port) == 2076);

/// The byte offset of index `index` in a store ring.
pub const fn store_slot(index: u32) -> usize {
    index as usize & (XENSTORE_RING_SIZE - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::test_support::check_numbered;

    #[test]
    fn numbers_match_xen() {
        check_numbered!(XsdSockmsgType, u32);
        assert_eq!(XsdSockmsgType::Write.number(), 11);
        assert_eq!(XsdSockmsgType::WatchEvent.number(), 15);
        assert_eq!(XsdSockmsgType::Error.number(), 16);
        assert_eq!(XsdSockmsgType::SetTarget.number(), 19);
        assert_eq!(XsdSockmsgType::from_number(20), None, "XS_RESTRICT was removed");
        assert_eq!(XsdSockmsgType::ResetWatches.number(), 21);
        assert_eq!(XsdSockmsgType::from_number(XS_INVALID), None);
        assert_eq!(XS_DEBUG.number(), 0);
    }

    #[test]
    fn header_bytes_round_trip() {
        let header = XsdSockmsg { r#type: 11, req_id: 0x0102_0304, tx_id: 7, len: 4096 };
        let bytes = header.to_bytes();
        assert_eq!(bytes[..8], [11, 0, 0, 0, 4, 3, 2, 1]);
        assert_eq!(XsdSockmsg::from_bytes(&bytes), header);
        assert_eq!(header.validate(), Some(XsdSockmsgType::Write));
        assert_eq!(XsdSockmsg { len: 4097, ..header }.validate(), None);
        assert_eq!(XsdSockmsg { r#type: 20, ..header }.validate(), None);
    }

    #[test]
    fn error_names() {
        assert_eq!(xsd_error_from_payload(b"ENOENT\0"), Some(Errno::Enoent));
        assert_eq!(xsd_error_from_payload(b"EAGAIN"), Some(Errno::Eagain));
        assert_eq!(xsd_error_from_payload(b"EFAULT\0"), None, "not in the store's table");
        assert_eq!(xsd_error_from_payload(b""), None);
        assert_eq!(xsd_error_name(Errno::Eacces), "EACCES");
        assert_eq!(xsd_error_name(Errno::Efault), "EINVAL");
        for error in XSD_ERRORS {
            assert_eq!(xsd_error_from_payload(error.name().as_bytes()), Some(error));
        }
    }

    #[test]
    fn slots_wrap() {
        assert_eq!(store_slot(1024), 0);
        assert_eq!(store_slot(u32::MAX), 1023);
    }
}
