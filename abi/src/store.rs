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
//!     device/vbd/51712/...   if its config gives it a disk (see Devices)
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
//! dom0 adds and removes `device/vbd/51712` and `device/vif/0` while the guest
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
//! Split devices are laid out as Xen's toolstack (libxl) lays them out and
//! as Linux's xenbus, `xen-blkfront` and `xen-netfront` expect them; the
//! states are Xen's [`XenbusState`] numbers, written as decimal text. Guest
//! `<g>`'s device of class `<class>` (`vbd`, `vif`) number `<n>`, served
//! by back-end domain `<b>` (dom0 in this version), lives in two
//! directories, both created by the toolstack before the guest first runs
//! (a device in its config) or while it runs (`block-attach`,
//! `network-attach`):
//!
//! ```text
//! /local/domain/<g>/device/<class>/<n>/        owned by <g>, readable by <b>
//!     backend          absolute path of the back-end directory   (toolstack)
//!     backend-id       <b>                                        (toolstack)
//!     state            the front end's XenbusState               (toolstack 1, then front end)
//! /local/domain/<b>/backend/<class>/<g>/<n>/   owned by <b>, readable by <g>
//!     frontend         absolute path of the front-end directory  (toolstack)
//!     frontend-id      <g>                                        (toolstack)
//!     online           1                                          (toolstack)
//!     state            the back end's XenbusState                (back end)
//! ```
//!
//! A disk (`vbd`, [`crate::xen::io::block`]): `<n>` is Xen's virtual-device
//! number, 51712 for the first disk (`xvda`,
//! [`xvd_virtual_device`](crate::xen::io::block::xvd_virtual_device)).
//!
//! ```text
//! front end:  virtual-device 51712 (toolstack), device-type "disk" (toolstack),
//!             ring-ref, event-channel, protocol "x86_64-abi",
//!             feature-persistent 1 (front end, before it writes 3 Initialised)
//! back end:   sectors (512-byte sectors), sector-size 512,
//!             physical-sector-size 512, info (VDISK_* bits: 4 read-only),
//!             mode "r" or "w", feature-flush-cache 1, feature-persistent 1
//!             (all written before InitWait); no feature-barrier, no
//!             feature-discard, no max-ring-page-order (one ring page),
//!             no indirect segments
//! ```
//!
//! A vif (`vif`, [`crate::xen::io::net`]): `<n>` is the vif's handle, 0
//! for the first.
//!
//! ```text
//! front end:  handle, mac, mtu 1500 (toolstack; Linux's netfront reads its
//!             MAC from its own directory), tx-ring-ref, rx-ring-ref,
//!             event-channel, request-rx-copy 1, feature-rx-notify 1 (front end)
//! back end:   handle, mac (toolstack), feature-rx-copy 1, feature-sg 1,
//!             feature-gso-tcpv4 0, feature-no-csum-offload 1 (dom0 takes
//!             frames of up to 18 slots, fills blank IPv4 TCP/UDP
//!             checksums, sends no blank ones and no GSO, see `abi::net`;
//!             written before InitWait)
//! ```
//!
//! Each end watches the other's `state` and reacts to what it reads there
//! (a read, not the event, is the truth):
//!
//! ```text
//!   front end                                   back end
//!   1 Initialising (toolstack)                  writes its keys -> 2 InitWait
//!   sees back end 2: grants the ring page(s),
//!   allocates a port for <b>, writes its
//!   keys, -> 3 Initialised (vbd, as Linux's
//!   blkfront) or straight -> 4 Connected
//!   (vif, as Linux's netfront)
//!                                               sees front end 3 or 4: reads
//!                                               the keys, maps the ring(s),
//!                                               binds the port -> 4 Connected
//!                                               (6 Closed if it cannot use
//!                                               what the front end named)
//!   sees back end 4: -> 4 Connected
//!
//!   The front end closes (writes 5 Closing, or any state but 3 and 4,
//!   or removes its `state`):
//!   back end (Connected, or one that stopped serving a broken ring):
//!   finishes the requests it took, makes the writes durable, unmaps the
//!   ring(s) and every page it kept mapped (persistent grants), closes its
//!   port -> 6 Closed. Both directories stay.
//!   front end sees back end 6: closes its port, revokes its grants (none
//!   is still mapped now), -> 6 Closed.
//!
//!   The toolstack takes the device away (`block-detach`, `network-detach`):
//!   back end writes online 0 and -> 5 Closing.
//!   front end sees back end 5: stops issuing requests, closes its port,
//!   -> 6 Closed.
//!   back end sees front end 6 (or its `state` gone, or 5 seconds passed):
//!   unmaps and closes as above, -> 6 Closed, and removes both directories.
//!   A device that is not connected goes at once.
//!
//!   Reconnecting (after the front end closed, or after the back end
//!   refused with 6 Closed):
//!   front end writes 1 Initialising.
//!   back end 6 sees front end 1: -> 2 InitWait. It reacts to nothing
//!   else while Closed; in particular not to 3 or 4.
//!   front end sees back end 2: grants (fresh) ring pages, allocates a
//!   port, writes its keys, and the connection proceeds as the first one.
//! ```
//!
//! A back end takes at most one step per device each time it reads the
//! store, and each step is bounded (one ring's pages and the persistent
//! grants to unmap), so a front end that flaps between Closing and
//! Initialising costs it no more than that front end's own store writes.
//!
//! Readings ([`XenbusState::from_key`]): an absent `state` is
//! [`XenbusState::Unknown`] (0): not started, or, for an end that has
//! seen its peer past Initialising, gone (Closed). A value that does not
//! parse reads as Closed. 7 Reconfiguring and 8 Reconfigured are not used
//! by these classes: a back end offering a device refuses a front end
//! that writes them (6 Closed), and one that is connected closes. A
//! missing or malformed required key (`ring-ref`, `tx-ring-ref`,
//! `rx-ring-ref`, `event-channel`) when the front end says it is ready
//! is refused the same way. Persistent grants are used only when both
//! ends write `feature-persistent` = 1; without the front end's, dom0
//! copies every transfer and keeps no page mapped.
//!
//! [`XenbusState`]: crate::xen::io::xenbus::XenbusState
//! [`XenbusState::from_key`]: crate::xen::io::xenbus::XenbusState::from_key
//! [`XenbusState::Unknown`]: crate::xen::io::xenbus::XenbusState::Unknown

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
