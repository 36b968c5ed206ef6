//! The store (since ABI 0.4; Xen's wire format since 1.0): how a domain
//! talks to dom0's store, a hierarchical key/value tree with watches and
//! transactions through which front ends and back ends find each other.
//! The messages are Xen's xenstore protocol ([`crate::xen::io::store`]);
//! this module holds what Mica adds to it: the tree's rules, permissions,
//! quotas, a domain's home, the ring page and the device handshake.
//!
//! # The tree
//! Nodes are named by paths. Every node has a value (UTF-8 text, possibly
//! empty) and may have children; there is no separate "directory" kind.
//! Each domain has a home, `/local/domain/<id>` (decimal id, no leading
//! zeros), which dom0 creates when it builds the domain.
//!
//! - An *absolute* path starts with `/`: `/` itself, or `/` followed by
//!   components separated by single `/`.
//! - A *relative* path does not start with `/` and is resolved against the
//!   caller's home: domain 5 writing `device/vbd/0/state` writes
//!   `/local/domain/5/device/vbd/0/state`.
//! - A component is one or more of `A-Z a-z 0-9 _ . - @`, and is neither `.`
//!   nor `..` (they have no special meaning, so they are refused rather than
//!   silently taken literally). No empty components: no `//`, no trailing `/`.
//! - A path is at most [`PATH_MAX`] bytes *after* a relative path has been
//!   resolved; a value at most [`VALUE_MAX`] bytes; a watch token at most
//!   [`TOKEN_MAX`] bytes. Values and tokens are UTF-8 without NUL bytes.
//!   Longer ones are refused with `E2BIG`.
//! - Compared with Xen's rules (components of `A-Z a-z 0-9 - _ @`, no
//!   `//`, no trailing `/`, 3072 bytes absolute): Mica also allows `.`
//!   inside a component, refuses the components `.` and `..`, and keeps
//!   paths, values and tokens shorter. Every path Linux's xenbus writes
//!   (`device/vbd/51712/ring-ref`, `control/shutdown`, ...) is valid.
//! - Numbers stored as values (states, grant references, ports, sizes) are
//!   decimal ASCII digits, no sign, no spaces ([`parse_decimal`]).
//!
//! # Permissions
//! Each node has an owner domain, an access level for every other domain
//! ([`Access`]), and up to [`GRANTS_MAX`] per-domain grants that override it.
//! The owner may read and write its node; dom0 may do everything everywhere.
//! Permissions are per node: reading `/a/b` needs read access to `/a/b`
//! only, not to `/a`. Reading a node or listing its children needs read
//! access to it; writing an existing node or removing it (with its
//! subtree) needs write access to it; creating a node needs write access to
//! its nearest existing ancestor. Only the owner (or dom0) may change a
//! node's permissions, and only dom0 may give a node to another owner.
//!
//! Existence is no secret only where a domain may look: every operation
//! first follows the path to its deepest existing node, and a domain with
//! no access at all to that node gets `EACCES` whether the
//! rest of the path exists or not (it cannot tell another domain's node
//! from a missing one). Where it has some access, a missing node is
//! `ENOENT`.
//!
//! A node created by a guest is owned by that guest and inherits its
//! parent's other-access and grants. A node created by dom0 keeps its
//! parent's owner as well, so the toolstack filling in a guest's home makes
//! nodes the guest owns. Nodes count against their owner's quota; a guest
//! over quota gets `ENOSPC`.
//!
//! On the wire, permissions are a list of entries, each a letter
//! ([`Access::letter`]) followed by a decimal domain id: the first entry is
//! the owner, its letter the access of domains not listed; each further
//! entry grants its domain that access. `n5` `r7` = owned by domain 5, no
//! access for others, domain 7 may read.
//!
//! # A domain's home
//! When dom0 builds guest `<g>` it fills in the guest's home before the
//! guest first runs:
//!
//! ```text
//! /local/domain/<g>          owned by <g>; other domains: no access
//!     name                   owned by dom0, readable by <g> only
//!     domid                  owned by dom0, readable by <g> only
//!     device/vbd/0/...       if its config gives it a disk (see Devices)
//!     device/vif/0/...       if its config gives it a vif (see Devices)
//! ```
//!
//! - `name`: the guest's name from its config, which the shell's commands
//!   take: 1 to 32 bytes of `A-Z a-z 0-9 _ . -`, not starting with `-` or
//!   `.`, not all digits.
//! - `domid`: `<g>`, decimal.
//!
//! The guest may read `name` and `domid` but not write or remove them (so
//! it cannot remove its home either); everything else below its home is
//! its own, within its quota (this dom0's: 48 nodes, 6 KiB, 16 watches;
//! the device nodes dom0 creates there are the guest's and count too).
//! dom0 adds and removes `device/vbd/0` and `device/vif/0` while the guest
//! runs as the operator attaches and detaches devices. When the guest is
//! destroyed, dom0 removes its home with everything below it and drops its
//! watches. dom0's own home, `/local/domain/0`, holds `name` = `Domain-0`
//! and the back-end directories; of these a guest may read only its own
//! devices' back-end directories.
//!
//! # Messages
//! The store speaks Xen's xenstore wire protocol (`xs_wire.h`), specified
//! in [`crate::xen::io::store`]: a 16-byte
//! [`XsdSockmsg`](crate::xen::io::store::XsdSockmsg) header
//! `{type, req_id, tx_id, len}` (little-endian) followed by `len` payload
//! bytes, `len <= XENSTORE_PAYLOAD_MAX` (4096; the header is not counted,
//! so a whole message is 4112 bytes). Types are Xen's numbers
//! ([`XsdSockmsgType`](crate::xen::io::store::XsdSockmsgType)). In the
//! payloads below `|` is a NUL byte; strings end with one, a value does not
//! (its length is what is left of `len`).
//!
//! | type               | request payload            | success reply payload          |
//! |--------------------|----------------------------|--------------------------------|
//! | `READ`             | `path|`                    | the value (no NUL)             |
//! | `WRITE`            | `path|value`               | `OK|`                          |
//! | `MKDIR`            | `path|`                    | `OK|`                          |
//! | `RM`               | `path|`                    | `OK|`                          |
//! | `DIRECTORY`        | `path|`                    | `name|name|...` (each child)   |
//! | `GET_PERMS`        | `path|`                    | `owner-entry|grant|grant|...`  |
//! | `SET_PERMS`        | `path|owner-entry|grant|...` | `OK|`                        |
//! | `WATCH`            | `path|token|`              | `OK|`                          |
//! | `UNWATCH`          | `path|token|`              | `OK|`                          |
//! | `GET_DOMAIN_PATH`  | `domid|`                   | `/local/domain/<domid>|`       |
//! | `TRANSACTION_START`| `|` (ignored)              | `<decimal id>|`                |
//! | `TRANSACTION_END`  | `T|` commit, `F|` abort    | `OK|`                          |
//! | `RESET_WATCHES`    | `|` (ignored)              | `OK|`                          |
//!
//! A reply has the request's `type`, `req_id` and `tx_id`; a failure is
//! type `ERROR` with the error's name and a NUL (`ENOENT|`), `req_id` and
//! `tx_id` echoed likewise. Names are Xen's errno names
//! ([`crate::xen::errno::Errno::name`], only those in
//! [`XSD_ERRORS`](crate::xen::io::store::XSD_ERRORS)). Replies come in
//! request order; a client may send several requests before reading
//! replies. `WATCH_EVENT` messages (`path|token|`, `req_id` and `tx_id`
//! 0) may arrive between replies at any time.
//!
//! Errors, as this store uses them:
//! - `ENOENT`: no such node, watch or transaction (a `tx_id` that is not
//!   one of the caller's open transactions).
//! - `EACCES`: the caller lacks the access the operation needs.
//! - `EINVAL`: a malformed payload (a string without its NUL, the wrong
//!   number of strings, invalid UTF-8, a value holding a NUL), path or
//!   permission entry, or an operation that makes no sense (removing `/`,
//!   `TRANSACTION_END` with neither `T` nor `F`).
//! - `E2BIG`: a path, value, token or listing over its limit, a header
//!   announcing more than 4096 payload bytes, or more permission entries
//!   than a node holds.
//! - `ENOSPC`: the caller (or the node's owner) is at its quota of nodes,
//!   bytes, watches or open transactions, a transaction outgrew its log,
//!   or the store as a whole is full (dom0 sizes it so that guests within
//!   their quotas cannot fill it). Xen's C xenstored answers `ENOSPC` for
//!   quotas too; `EQUOTA` is not a name Xen's clients know.
//! - `EEXIST`: the watch is already registered.
//! - `EAGAIN`: `TRANSACTION_END T` found a conflict; nothing of the
//!   transaction was applied: run it again from `TRANSACTION_START`.
//! - `EBUSY`: `TRANSACTION_START` sent inside a transaction (a nonzero
//!   `tx_id` naming an open one).
//! - `ENOSYS`: a type this store does not serve: the toolstack's types
//!   (`INTRODUCE`, `RELEASE`, `RESUME`, `SET_TARGET`,
//!   `IS_DOMAIN_INTRODUCED`, `CONTROL`), `DIRECTORY_PART`, features and
//!   quotas, `WATCH_EVENT` and `ERROR` sent by a client, and unknown
//!   numbers; as Xen's C xenstored answers an unknown type.
//!
//! Semantics worth knowing:
//! - `WRITE` creates missing parents (with empty values). `MKDIR` creates a
//!   node with an empty value and succeeds without change if it exists and
//!   the caller may write it. Values are UTF-8 without NUL bytes (Xen
//!   allows any bytes; this store is stricter).
//! - `RM` removes the node and its whole subtree; removing `/` is
//!   `EINVAL`; a missing node is `ENOENT`; a subtree holding a node the
//!   caller may not write is `EACCES` (the `name` and `domid` dom0 writes
//!   in a guest's home are dom0's, readable by the guest, so it cannot
//!   drop them with its home).
//! - `DIRECTORY` lists child names (not paths) in no promised order; a
//!   list longer than 4096 bytes is `E2BIG`.
//! - `tx_id` is ignored by `WATCH`, `UNWATCH`, `GET_DOMAIN_PATH` and
//!   `RESET_WATCHES` (as in Xen), and echoed by every reply.
//!
//! # Transactions
//! `TRANSACTION_START` opens a transaction and answers its id (nonzero,
//! unique among the caller's open ones). `READ`, `WRITE`, `MKDIR`, `RM`,
//! `DIRECTORY`, `GET_PERMS` and `SET_PERMS` sent with that `tx_id` act
//! inside it: they see the store as it was plus the transaction's own
//! changes, and change nothing anyone else can see. `TRANSACTION_END T`
//! commits: if nothing the transaction read or changed was changed by
//! anyone else since it looked, all its changes are applied at once (and
//! only then fire watches); otherwise the answer is `EAGAIN` and nothing is
//! applied. `TRANSACTION_END F` abandons it. Either way the transaction is
//! over (also after `EAGAIN`). A client retries a transaction that ended
//! with `EAGAIN` from the start, reading again what it read.
//!
//! Permissions are checked inside the transaction as outside, against
//! what it sees, and quotas again at commit: a commit that would take the
//! caller (or an owner) over quota, or the store over its capacity, is
//! `ENOSPC` and applies nothing. The commit counts what the transaction
//! creates and grows, not what it removes, so a transaction must fit
//! within the quota on its own.
//!
//! Limits (this dom0's): a domain has at most 4 transactions open
//! (`ENOSPC` beyond, as Xen's per-domain transaction quota); a transaction
//! holds at most 32 changes with 2048 bytes of paths and values, and
//! looks at most 64 times at nodes it has not changed (`ENOSPC` for the
//! request that would outgrow it; the transaction stays open and may
//! still commit or be abandoned). A domain's transactions end, unapplied,
//! when it sends `RESET_WATCHES` and when it is destroyed.
//!
//! # Transport
//! Xen's [`crate::xen::io::store::XenstoreDomainInterface`] (since ABI
//! 1.0; before, a page of Mica's own layout): one page of the guest's
//! memory, which dom0 maps, with an event channel for notification in
//! both directions. Two byte rings of 1024 bytes: `req` (client writes,
//! server reads) and `rsp` (server writes, client reads); Mica leaves
//! `server_features`, `connection` and `error` zero (no reconnection
//! protocol). Indices are free-running `u32` counters, never reduced
//! modulo the size; a ring holds `producer - consumer` bytes (wrapping
//! arithmetic) at index `counter % SIZE`. The producer writes the bytes,
//! then (release) its producer index; the consumer reads the producer index
//! (acquire), copies the bytes out, then (release) its consumer index. A
//! side that finds `producer - consumer > SIZE` treats the ring as corrupt
//! and stops using it. After producing or consuming, send an event on the
//! store port; the other side may also poll.
//!
//! The rings are a byte stream: a message larger than the free space is
//! written in pieces, each published as it is written; the reader
//! reassembles. A writer finishes one message before starting the next, so
//! messages never interleave. A header whose `len` exceeds 4096 is
//! answered with `E2BIG` (its `req_id` and `tx_id` echoed) after the server
//! has skipped its `len` payload bytes, so the stream stays in step. (Xen's
//! xenstored drops such a client's connection instead; Mica keeps serving
//! it, since the client can tell what went wrong and nothing else is
//! lost.) A client that stops reading responses stalls only itself: the
//! server stops reading its requests until the reply fits.
//!
//! The builder of the domain names the store page and the domain's event
//! port in its start-info page (Mica's boot) or as the HVM parameters
//! `HVM_PARAM_STORE_PFN` and `HVM_PARAM_STORE_EVTCHN` (a PVH boot, as
//! Xen's toolstack does).
//!
//! # Devices and the handshake
//! A split device `vbd` number `<n>` of guest `<g>`, served by back-end
//! domain `<b>` (dom0 in this version), lives in two directories, both
//! created by the toolstack:
//!
//! ```text
//! /local/domain/<g>/device/vbd/<n>/        owned by <g>, readable by <b>
//!     backend        absolute path of the back-end directory   (toolstack)
//!     backend-id     <b>; absent = 0                           (toolstack)
//!     state          the front end's DeviceState               (front end)
//!     ring-ref       grant reference of the ring page          (front end)
//!     event-channel  port the front end allocated for <b>      (front end)
//! /local/domain/<b>/backend/vbd/<g>/<n>/   owned by <b>, readable by <g>
//!     frontend       absolute path of the front-end directory  (toolstack)
//!     frontend-id    <g>                                        (toolstack)
//!     state          the back end's DeviceState                (back end)
//!     sectors        disk size in sector-size units            (back end)
//!     sector-size    bytes per sector; absent = 512            (back end)
//!     mode           "r" read-only or "w" read-write; absent = "w" (back end)
//! ```
//!
//! Each end watches the other's `state` and reacts to what it reads there
//! (a read, not the event, is the truth). States ([`DeviceState`]):
//!
//! ```text
//!   front end                                   back end
//!   1 Initialising (toolstack)                  1 Initialising (toolstack)
//!                                               writes sectors, mode ...
//!                                               -> 2 InitWait
//!   sees back end 2: grants the ring page,
//!   allocates a port for <b>, writes
//!   ring-ref, event-channel
//!   -> 3 Initialised
//!                                               sees front end 3: reads
//!                                               ring-ref and event-channel,
//!                                               maps the ring, binds the port
//!                                               -> 4 Connected
//!   sees back end 4: -> 4 Connected
//!
//!   Closing (either end starts by writing 5 Closing):
//!   front end sees back end 5: stops issuing requests, waits for the
//!   outstanding responses, -> 5 Closing.
//!   back end (Connected, or one that stopped serving a broken ring) sees
//!   front end 5 or 6, its `state` gone, or any state but 3 or 4: finishes
//!   the requests it took, unmaps the ring(s) and every page it kept
//!   mapped (persistent grants), closes its port, -> 6 Closed. Both
//!   directories stay (only a close the back end's side started, such as
//!   dom0's `block-detach`, removes them).
//!   front end sees back end 6: closes its port, revokes its grants (none
//!   is still mapped now), -> 6 Closed.
//!
//!   Reconnecting (after the front end closed, or after the back end
//!   refused an offer it could not use with 6 Closed):
//!   front end writes 1 Initialising (the value "1"; an absent `state`
//!   is not a request to reconnect).
//!   back end 6 sees front end 1: -> 2 InitWait. It reacts to nothing
//!   else while Closed; in particular not to 3 Initialised.
//!   front end sees back end 2: grants a (fresh) ring page, allocates a
//!   port, writes ring-ref, event-channel -> 3 Initialised, and the
//!   connection proceeds as the first one.
//! ```
//!
//! A back end takes one step per device each time it reads the store, and
//! each step is bounded (one ring's pages and the persistent grants to
//! unmap), so a front end that flaps between Closing and Initialising
//! costs it no more than that front end's own store writes.
//!
//! Defaults when a key is absent: a missing `state` reads as Initialising
//! (the other end has not started), except that an end that has seen its
//! peer in any later state and then finds `state` (or the whole directory)
//! gone treats the peer as Closed; a `state` value that does not parse is
//! read as Closed, the safe reading ([`DeviceState::from_key`]). Missing
//! optional keys take the defaults listed above; a missing required key
//! (`ring-ref`, `event-channel`, `sectors`) after the peer said it was ready
//! means the peer is broken: write Closing.

use crate::xen::errno::Errno;
use crate::xen::io::store::XENSTORE_PAYLOAD_MAX;

/// Longest path, in bytes, after a relative path is resolved; its NUL is
/// not counted.
pub const PATH_MAX: usize = 1024;
/// Longest value, in bytes; its NUL is not counted.
pub const VALUE_MAX: usize = 2048;
/// Longest watch token, in bytes; its NUL is not counted.
pub const TOKEN_MAX: usize = 128;
/// Most per-domain grants a node carries, besides its owner entry.
pub const GRANTS_MAX: usize = 4;
/// The prefix of every domain's home; the decimal domain id follows.
pub const HOME_PREFIX: &str = "/local/domain/";

/// Payload of the largest request (a write of a maximal path and value).
const LARGEST_WRITE: usize = PATH_MAX + 1 + VALUE_MAX;
/// Payload of the largest event (or watch request).
const LARGEST_EVENT: usize = PATH_MAX + 1 + TOKEN_MAX + 1;
const _: () = assert!(LARGEST_WRITE <= XENSTORE_PAYLOAD_MAX as usize);
const _: () = assert!(LARGEST_EVENT <= XENSTORE_PAYLOAD_MAX as usize);

/// What a domain other than the owner may do with a node.
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Access {
    /// Nothing (`n`).
    #[default]
    None = 0,
    /// Read the value, list children, read permissions, get events (`r`).
    Read = 1,
    /// Write the value, create children, remove (`w`).
    Write = 2,
    /// Both (`b`).
    Both = 3,
}

impl Access {
    /// The letter used on the wire.
    pub const fn letter(self) -> u8 {
        match self {
            Access::None => b'n',
            Access::Read => b'r',
            Access::Write => b'w',
            Access::Both => b'b',
        }
    }

    /// Decodes a letter.
    pub const fn from_letter(letter: u8) -> Option<Access> {
        Some(match letter {
            b'n' => Access::None,
            b'r' => Access::Read,
            b'w' => Access::Write,
            b'b' => Access::Both,
            _ => return None,
        })
    }

    /// Whether this access includes reading.
    pub const fn can_read(self) -> bool {
        matches!(self, Access::Read | Access::Both)
    }

    /// Whether this access includes writing.
    pub const fn can_write(self) -> bool {
        matches!(self, Access::Write | Access::Both)
    }
}

/// The state each end of a split device publishes in its `state` key
/// (decimal text). See the module docs for the diagram.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceState {
    /// The directory exists; this end has not started.
    Initialising = 1,
    /// Back end: its parameters are published; waiting for the front end.
    InitWait = 2,
    /// Front end: ring-ref and event-channel are published.
    Initialised = 3,
    /// Requests may flow.
    Connected = 4,
    /// This end asks to close, or acknowledges the peer's request.
    Closing = 5,
    /// This end has released everything it held for the device.
    Closed = 6,
}

impl DeviceState {
    /// Every state, for decoding and tests.
    pub const ALL: [DeviceState; 6] = [
        DeviceState::Initialising,
        DeviceState::InitWait,
        DeviceState::Initialised,
        DeviceState::Connected,
        DeviceState::Closing,
        DeviceState::Closed,
    ];

    /// Decodes a state number.
    pub fn from_number(number: u32) -> Option<DeviceState> {
        DeviceState::ALL.iter().copied().find(|state| *state as u32 == number)
    }

    /// The value to write to a `state` key.
    pub const fn as_value(self) -> &'static str {
        match self {
            DeviceState::Initialising => "1",
            DeviceState::InitWait => "2",
            DeviceState::Initialised => "3",
            DeviceState::Connected => "4",
            DeviceState::Closing => "5",
            DeviceState::Closed => "6",
        }
    }

    /// Decodes a `state` value; `None` if it is not one.
    pub fn from_value(value: &[u8]) -> Option<DeviceState> {
        parse_decimal(value).and_then(DeviceState::from_number)
    }

    /// The reading of a peer's `state` key under the default rules: absent
    /// is Initialising, unparseable is Closed. (An end that has seen its
    /// peer past Initialising reads a later absence as Closed itself.)
    pub fn from_key(value: Option<&[u8]>) -> DeviceState {
        match value {
            None => DeviceState::Initialising,
            Some(value) => DeviceState::from_value(value).unwrap_or(DeviceState::Closed),
        }
    }
}

/// Key names of the device directories (see the module docs).
pub mod keys {
    /// Both ends: the [`super::DeviceState`].
    pub const STATE: &str = "state";
    /// Front end: absolute path of the back-end directory.
    pub const BACKEND: &str = "backend";
    /// Front end: the back end's domain id; absent = 0.
    pub const BACKEND_ID: &str = "backend-id";
    /// Front end: grant reference of the ring page.
    pub const RING_REF: &str = "ring-ref";
    /// Front end: the port the front end allocated for the back end.
    pub const EVENT_CHANNEL: &str = "event-channel";
    /// Back end: absolute path of the front-end directory.
    pub const FRONTEND: &str = "frontend";
    /// Back end: the front end's domain id.
    pub const FRONTEND_ID: &str = "frontend-id";
    /// Back end (vbd): disk size in sectors.
    pub const SECTORS: &str = "sectors";
    /// Back end (vbd): bytes per sector; absent = 512.
    pub const SECTOR_SIZE: &str = "sector-size";
    /// Back end (vbd): `r` or `w`; absent = `w`.
    pub const MODE: &str = "mode";
}

/// Parses a decimal number as stored in values: 1 to 10 ASCII digits, no
/// sign, no spaces, at most `u32::MAX`.
pub fn parse_decimal(text: &[u8]) -> Option<u32> {
    if text.is_empty() || text.len() > 10 {
        return None;
    }
    let mut value: u64 = 0;
    for &byte in text {
        if !byte.is_ascii_digit() {
            return None;
        }
        value = value * 10 + (byte - b'0') as u64;
    }
    u32::try_from(value).ok()
}

/// Whether a byte may appear in a path component.
pub const fn is_component_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'-' | b'@')
}

/// Whether `name` is a valid path component.
pub fn is_valid_component(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && name.iter().all(|&byte| is_component_byte(byte))
}

/// The two forms of a valid path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathForm {
    /// Starts with `/`.
    Absolute,
    /// Resolved against the caller's home.
    Relative,
}

/// Checks a path's syntax (not the length after resolution, which depends
/// on the caller): `E2BIG` if longer than [`PATH_MAX`], `EINVAL` if
/// malformed.
pub fn check_path(path: &[u8]) -> Result<PathForm, Errno> {
    if path.len() > PATH_MAX {
        return Err(Errno::E2big);
    }
    let (form, rest) = match path {
        [] => return Err(Errno::Einval),
        [b'/'] => return Ok(PathForm::Absolute),
        [b'/', rest @ ..] => (PathForm::Absolute, rest),
        _ => (PathForm::Relative, path),
    };
    if rest.split(|&byte| byte == b'/').all(is_valid_component) { Ok(form) } else { Err(Errno::Einval) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_letters() {
        for access in [Access::None, Access::Read, Access::Write, Access::Both] {
            assert_eq!(Access::from_letter(access.letter()), Some(access));
        }
        assert_eq!(Access::from_letter(b'x'), None);
        assert!(Access::Both.can_read() && Access::Both.can_write());
        assert!(!Access::Write.can_read() && !Access::Read.can_write());
    }

    #[test]
    fn device_states_and_defaults() {
        for state in DeviceState::ALL {
            assert_eq!(DeviceState::from_value(state.as_value().as_bytes()), Some(state));
        }
        assert_eq!(DeviceState::from_key(None), DeviceState::Initialising);
        assert_eq!(DeviceState::from_key(Some(b"4")), DeviceState::Connected);
        assert_eq!(DeviceState::from_key(Some(b"7")), DeviceState::Closed);
        assert_eq!(DeviceState::from_key(Some(b"four")), DeviceState::Closed);
        assert_eq!(DeviceState::from_key(Some(b"")), DeviceState::Closed);
    }

    #[test]
    fn decimals() {
        assert_eq!(parse_decimal(b"0"), Some(0));
        assert_eq!(parse_decimal(b"4294967295"), Some(u32::MAX));
        assert_eq!(parse_decimal(b"4294967296"), None);
        assert_eq!(parse_decimal(b"99999999999"), None);
        for bad in [&b""[..], b"-1", b"+1", b" 1", b"1 ", b"0x10"] {
            assert_eq!(parse_decimal(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn path_syntax() {
        assert_eq!(check_path(b"/"), Ok(PathForm::Absolute));
        assert_eq!(check_path(b"/local/domain/7/device/vbd/0/ring-ref"), Ok(PathForm::Absolute));
        assert_eq!(check_path(b"device/vbd/0/state"), Ok(PathForm::Relative));
        assert_eq!(check_path(b"a_b.c-d@e/F9"), Ok(PathForm::Relative));
        for bad in [&b""[..], b"//", b"/a/", b"a//b", b"/a b", b"a/./b", b"..", b"/a/..", b"a\0b", b"\xc3\xa9"] {
            assert_eq!(check_path(bad), Err(Errno::Einval), "{bad:?}");
        }
        let mut long = [b'a'; PATH_MAX + 1];
        long[0] = b'/';
        assert_eq!(check_path(&long), Err(Errno::E2big));
        assert_eq!(check_path(&long[..PATH_MAX]), Ok(PathForm::Absolute));
    }
}
