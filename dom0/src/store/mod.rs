//! The store: dom0's hierarchical key/value tree with permissions, watches,
//! transactions and quotas, and the parser of its wire protocol, Xen's
//! xenstore messages ([`abi::xen::io::store`]; the tree's rules are
//! [`abi::store`]'s). No I/O: a transport feeds a domain's request bytes to
//! a [`MessageAssembler`], hands each complete message to [`Store::handle`],
//! and copies the reply and any queued [`Store::pop_event`] messages into
//! the response ring.
//!
//! Memory is bounded and fixed when the store is built, so no guest can make
//! dom0 allocate (the capacities are const parameters; [`DefaultStore`] is
//! the size dom0 runs with):
//! - `NODES` node-table entries (entry 0 is the root `/`). A node links to its
//!   parent, first child and next sibling by index.
//! - `ARENA` bytes holding every node's name and value, and every watch's
//!   path and token, as extents (a 4-byte header naming the owning entry,
//!   then the bytes). Freed extents are reclaimed by compaction when the
//!   free tail runs out.
//! - `WATCHES` watch-table entries.
//! - `DOMAINS` per-domain records: [`Quota`], [`Usage`], a queue of
//!   [`EVENT_QUEUE_BYTES`] bytes of pending watch events (when it is full
//!   the oldest events are dropped and counted), and room for
//!   [`TRANSACTIONS_PER_DOMAIN`] open transactions.
//!
//! [`Store::new`] is a `const fn`, so dom0 can keep the store in a static
//! (about 2.4 MiB for [`DefaultStore`]) rather than on a stack.
//!
//! Quotas: a guest may own at most [`Quota::nodes`] nodes and
//! [`Quota::bytes`] arena bytes, and register [`Quota::watches`] watches
//! (`ENOSPC` beyond, as Xen's C xenstored answers). A node's bytes are
//! charged to its owner; a guest writing a node it does not own (by grant)
//! is checked against the owner's quota, except that nodes owned by dom0
//! are not limited (dom0 chose to grant the write, and a value is at most
//! `VALUE_MAX` bytes). dom0 is never refused for quota, and nodes it
//! creates for a guest count against the guest. [`DefaultStore`] is sized
//! so that every guest at its [`Quota::GUEST`] quota together still leave a
//! quarter of each table to dom0: guests cannot exhaust the store, alone or
//! together.
//!
//! # Transactions
//! A transaction is a log, not a copy. Each domain record has
//! [`TRANSACTIONS_PER_DOMAIN`] transaction slots; a slot holds up to
//! [`TRANSACTION_CHANGES`] changes (write, mkdir, remove, set permissions:
//! the resolved path, the value in a [`TRANSACTION_BYTES`]-byte buffer, the
//! permissions of the nodes a creation makes, what it adds to the arena and
//! to whose quota) and up to [`TRANSACTION_READS`] *looks*: (node, its
//! generation) pairs for every live node the transaction's answers depended
//! on. Every node carries two generations from one store-wide counter: its
//! own (bumped when its value, permissions or list of children change, and
//! fresh when a node is created, so a reused slot never matches) and its
//! subtree's (bumped with any change at or below it).
//!
//! A request inside a transaction is answered from a view: the node as the
//! log says (the last write's value; removed by a later remove of it or an
//! ancestor; created with the permissions the creating change recorded),
//! else the live node, whose lookup records a look at the deepest existing
//! node on the path (its own generation covers its value, permissions and
//! children, hence the absence of the rest of the path). A remove records a
//! look at the subtree's generation (its permission check read all of it).
//! Permissions are checked against the view exactly as live requests are
//! checked against the tree; a change is only logged.
//!
//! Commit: if any look is stale, `EAGAIN`. Otherwise the log is replayed on
//! the tree by the ordinary operations, which fire watches as they go (so
//! watches fire at commit only). The replay cannot fail halfway: nothing
//! the transaction looked at changed, so every permission check passes as
//! it did in the view; and before replaying, the commit checks that the
//! node table, the arena and each non-dom0 owner's quota have room for
//! everything the log creates or grows (removals are not credited), or
//! answers `ENOSPC` having applied nothing. Whatever the answer, the
//! transaction is over and its slot free; a domain's transactions are
//! dropped when it resets its watches and when it is removed.

use core::fmt::Write as _;

use abi::store::{Access, GRANTS_MAX, HOME_PREFIX, PATH_MAX, PathForm, TOKEN_MAX, VALUE_MAX, check_path};
use abi::xen::errno::Errno;
use abi::xen::io::store::{XENSTORE_PAYLOAD_MAX, XSD_SOCKMSG_SIZE, XsdSockmsg, XsdSockmsgType, xsd_error_name};
use abi::{DOM0, DomainId};
use arrayvec::ArrayString;

/// Bytes of the largest message, header and payload: the buffer each side
/// of a connection needs.
pub const MESSAGE_MAX: usize = XSD_SOCKMSG_SIZE + PAYLOAD_MAX;
/// Bytes of the largest payload.
const PAYLOAD_MAX: usize = XENSTORE_PAYLOAD_MAX as usize;
/// Transactions a domain may have open at once (`ENOSPC` beyond).
pub const TRANSACTIONS_PER_DOMAIN: usize = 4;
/// Changes one transaction may log (`ENOSPC` beyond).
pub const TRANSACTION_CHANGES: usize = 32;
/// Bytes of paths and values one transaction may log (`ENOSPC` beyond).
pub const TRANSACTION_BYTES: usize = 2048;
/// Looks at live nodes one transaction may record (`ENOSPC` beyond).
pub const TRANSACTION_READS: usize = 64;

/// Node-table entries of [`DefaultStore`].
pub const DEFAULT_NODES: usize = 4096;
/// Arena bytes of [`DefaultStore`].
pub const DEFAULT_ARENA: usize = 512 * 1024;
/// Watch-table entries of [`DefaultStore`].
pub const DEFAULT_WATCHES: usize = 2048;
/// Per-domain records of [`DefaultStore`]: dom0 and 63 guests, as many
/// domains as hv runs.
pub const DEFAULT_DOMAINS: usize = 64;
/// Bytes of pending watch events kept per domain. An event takes its path
/// and token plus 4 bytes: at least three events of maximal size, and
/// dozens of ordinary ones.
pub const EVENT_QUEUE_BYTES: usize = 4096;

/// The store dom0 runs: about 2.4 MiB.
pub type DefaultStore = Store<DEFAULT_NODES, DEFAULT_ARENA, DEFAULT_WATCHES, DEFAULT_DOMAINS>;

// Guests at their default quotas use at most three quarters of each table.
const _: () = assert!((DEFAULT_DOMAINS - 1) * Quota::GUEST.nodes as usize <= DEFAULT_NODES / 4 * 3);
const _: () = assert!((DEFAULT_DOMAINS - 1) * Quota::GUEST.bytes as usize <= DEFAULT_ARENA / 4 * 3);
const _: () = assert!((DEFAULT_DOMAINS - 1) * Quota::GUEST.watches as usize <= DEFAULT_WATCHES / 4 * 3);

/// An absolute path, resolved.
type PathBuffer = ArrayString<PATH_MAX>;

/// Bytes of an arena extent's header: owning slot (u16), length (u16).
const EXTENT_HEADER: usize = 4;
/// Slot number of a freed extent.
const FREE_SLOT: u16 = u16::MAX;
/// The root node's index. No node links to it as a child or sibling, so 0
/// also means "none" in those links.
const ROOT: u16 = 0;
/// Bytes an event takes in a queue besides its path and token: a u16
/// length and the two NULs.
const EVENT_OVERHEAD: usize = 4;

const _: () = assert!(EVENT_QUEUE_BYTES >= 3 * (PATH_MAX + TOKEN_MAX + EVENT_OVERHEAD));
const _: () = assert!(PATH_MAX + VALUE_MAX <= u16::MAX as usize);

/// What a domain may own and register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Nodes owned.
    pub nodes: u32,
    /// Arena bytes of the nodes owned and the watches registered (names,
    /// values, paths, tokens, 4 bytes of header each).
    pub bytes: u32,
    /// Watches registered.
    pub watches: u32,
}

impl Quota {
    /// A guest's default: room for a handful of devices.
    pub const GUEST: Quota = Quota { nodes: 48, bytes: 6 * 1024, watches: 16 };
    /// dom0's: never refused.
    pub const UNLIMITED: Quota = Quota { nodes: u32::MAX, bytes: u32::MAX, watches: u32::MAX };
}

/// What a domain owns and has registered now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Nodes owned.
    pub nodes: u32,
    /// Arena bytes of those nodes and of the watches registered.
    pub bytes: u32,
    /// Watches registered.
    pub watches: u32,
}

/// A domain's record, for the shell and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DomainReport {
    /// What the domain may use.
    pub quota: Quota,
    /// What it uses.
    pub usage: Usage,
    /// Events queued, not yet popped.
    pub pending_events: u32,
    /// Events dropped because the queue was full.
    pub dropped_events: u64,
}

/// One per-domain grant in a node's [`Permissions`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    /// The domain granted access.
    pub domain: DomainId,
    /// What it may do.
    pub access: Access,
}

/// A node's permissions: the owner has full access, a domain with a grant
/// has the grant's access, every other domain has `others`; dom0 always
/// has full access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permissions {
    /// The owning domain: full access; its quota is charged.
    pub owner: DomainId,
    /// The access of domains that are neither the owner nor granted.
    pub others: Access,
    grants: [Grant; GRANTS_MAX],
    grant_count: u8,
}

impl Permissions {
    /// Owned by `owner`, nothing for anyone else.
    pub const fn owned_by(owner: DomainId) -> Permissions {
        Permissions {
            owner,
            others: Access::None,
            grants: [Grant { domain: 0, access: Access::None }; GRANTS_MAX],
            grant_count: 0,
        }
    }

    /// The per-domain grants.
    pub fn grants(&self) -> &[Grant] {
        &self.grants[..(self.grant_count as usize).min(GRANTS_MAX)]
    }

    /// Adds a grant: [`Errno::Einval`] if `domain` already has one,
    /// [`Errno::E2big`] if the node holds [`GRANTS_MAX`] already.
    pub fn grant(&mut self, domain: DomainId, access: Access) -> Result<(), Errno> {
        if self.grants().iter().any(|grant| grant.domain == domain) {
            return Err(Errno::Einval);
        }
        let count = self.grants().len();
        if count == GRANTS_MAX {
            return Err(Errno::E2big);
        }
        self.grants[count] = Grant { domain, access };
        self.grant_count += 1;
        Ok(())
    }

    /// Removes `domain`'s grant, if any.
    fn revoke(&mut self, domain: DomainId) {
        let count = self.grants().len();
        if let Some(at) = self.grants().iter().position(|grant| grant.domain == domain) {
            self.grants.copy_within(at + 1..count, at);
            self.grant_count -= 1;
        }
    }

    /// What `domain` may do.
    pub fn access(&self, domain: DomainId) -> Access {
        if domain == DOM0 || domain == self.owner {
            return Access::Both;
        }
        self.grants().iter().find(|grant| grant.domain == domain).map_or(self.others, |grant| grant.access)
    }
}

#[derive(Clone, Copy)]
struct Node {
    /// In the tree (the root is always, whatever this says).
    used: bool,
    parent: u16,
    /// 0 = no children.
    first_child: u16,
    /// 0 = last child.
    next_sibling: u16,
    name_len: u16,
    value_len: u16,
    /// Offset of the extent (name, then value) in the arena; meaningless
    /// when both lengths are 0 (only the root can have no name).
    extent: u32,
    permissions: Permissions,
    /// Bumped when the value, permissions or list of children change;
    /// fresh when the node is made (see the module docs, Transactions).
    generation: u64,
    /// Bumped with any change at or below the node.
    subtree_generation: u64,
}

impl Node {
    const EMPTY: Node = Node {
        used: false,
        parent: ROOT,
        first_child: 0,
        next_sibling: 0,
        name_len: 0,
        value_len: 0,
        extent: 0,
        permissions: Permissions::owned_by(DOM0),
        generation: 0,
        subtree_generation: 0,
    };

    fn has_extent(&self) -> bool {
        self.name_len != 0 || self.value_len != 0
    }

    /// Arena bytes the node takes.
    fn size(&self) -> usize {
        if self.has_extent() { EXTENT_HEADER + self.name_len as usize + self.value_len as usize } else { 0 }
    }
}

#[derive(Clone, Copy)]
struct Watch {
    used: bool,
    domain: DomainId,
    /// Offset of the extent (absolute path, then token) in the arena.
    extent: u32,
    path_len: u16,
    token_len: u16,
}

impl Watch {
    const EMPTY: Watch = Watch { used: false, domain: 0, extent: 0, path_len: 0, token_len: 0 };

    fn size(&self) -> usize {
        EXTENT_HEADER + self.path_len as usize + self.token_len as usize
    }
}

/// A domain's pending events: records of a u16 payload length and the
/// payload (path NUL token NUL) in a byte ring with free-running indices.
#[derive(Clone, Copy)]
struct EventQueue {
    bytes: [u8; EVENT_QUEUE_BYTES],
    read: usize,
    write: usize,
    count: u32,
}

impl EventQueue {
    const EMPTY: EventQueue = EventQueue { bytes: [0; EVENT_QUEUE_BYTES], read: 0, write: 0, count: 0 };

    fn used(&self) -> usize {
        self.write.wrapping_sub(self.read)
    }

    fn put(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.bytes[self.write % EVENT_QUEUE_BYTES] = byte;
            self.write = self.write.wrapping_add(1);
        }
    }

    fn byte_at(&self, index: usize) -> u8 {
        self.bytes[index % EVENT_QUEUE_BYTES]
    }

    /// Payload length of the oldest event.
    fn front_len(&self) -> Option<usize> {
        if self.count == 0 {
            return None;
        }
        Some(u16::from_le_bytes([self.byte_at(self.read), self.byte_at(self.read.wrapping_add(1))]) as usize)
    }

    /// Queues an event; returns how many old ones were dropped for room.
    fn push(&mut self, path: &[u8], token: &[u8]) -> u32 {
        let payload = path.len() + 1 + token.len() + 1;
        let mut dropped = 0;
        while EVENT_QUEUE_BYTES - self.used() < 2 + payload {
            self.pop(&mut []);
            dropped += 1;
        }
        self.put(&(payload as u16).to_le_bytes());
        self.put(path);
        self.put(&[0]);
        self.put(token);
        self.put(&[0]);
        self.count += 1;
        dropped
    }

    /// Removes the oldest event, copying as much of its payload as fits
    /// into `out`; returns the payload length.
    fn pop(&mut self, out: &mut [u8]) -> usize {
        let Some(length) = self.front_len() else { return 0 };
        let start = self.read.wrapping_add(2);
        for (index, byte) in out.iter_mut().take(length).enumerate() {
            *byte = self.byte_at(start.wrapping_add(index));
        }
        self.read = start.wrapping_add(length);
        self.count -= 1;
        length
    }
}

/// What a logged change does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    Write,
    Mkdir,
    Remove,
    SetPermissions,
}

/// One change in a transaction's log.
#[derive(Clone, Copy)]
struct LogEntry {
    change: Change,
    /// The resolved path at `start` in the transaction's bytes, then the
    /// value (writes only).
    start: u16,
    path_len: u16,
    value_len: u16,
    /// SetPermissions: the new permissions. Write and Mkdir that create
    /// nodes: the permissions of every node they create.
    permissions: Permissions,
    /// Nodes a Write or Mkdir creates (in the view when it was logged).
    new_nodes: u16,
    /// Arena bytes it may add (a replaced value's growth, or the new
    /// nodes' extents).
    bytes: u32,
    /// Arena bytes a replaced value needs while the old one still lives.
    transient: u32,
    /// Whose quota `new_nodes` and `bytes` are charged to.
    owner: DomainId,
}

impl LogEntry {
    // All zero, like the rest of an empty store, so that a static store
    // needs no initialised data.
    const EMPTY: LogEntry = LogEntry {
        change: Change::Write,
        start: 0,
        path_len: 0,
        value_len: 0,
        permissions: Permissions::owned_by(DOM0),
        new_nodes: 0,
        bytes: 0,
        transient: 0,
        owner: DOM0,
    };
}

/// A live node a transaction's answers depended on, as it was then.
#[derive(Clone, Copy)]
struct Look {
    node: u16,
    /// Compare with the node's subtree generation, not its own.
    subtree: bool,
    generation: u64,
}

/// An open transaction: its log and its looks (see the module docs).
#[derive(Clone, Copy)]
struct Transaction {
    /// 0: the slot is free.
    id: u32,
    entries: [LogEntry; TRANSACTION_CHANGES],
    entry_count: usize,
    bytes: [u8; TRANSACTION_BYTES],
    byte_count: usize,
    looks: [Look; TRANSACTION_READS],
    look_count: usize,
}

impl Transaction {
    const EMPTY: Transaction = Transaction {
        id: 0,
        entries: [LogEntry::EMPTY; TRANSACTION_CHANGES],
        entry_count: 0,
        bytes: [0; TRANSACTION_BYTES],
        byte_count: 0,
        looks: [Look { node: 0, subtree: false, generation: 0 }; TRANSACTION_READS],
        look_count: 0,
    };

    fn entries(&self) -> &[LogEntry] {
        &self.entries[..self.entry_count]
    }

    fn path(&self, entry: &LogEntry) -> &str {
        let start = entry.start as usize;
        // Logged from `&str`s.
        core::str::from_utf8(&self.bytes[start..start + entry.path_len as usize]).unwrap_or("")
    }

    fn value(&self, entry: &LogEntry) -> &[u8] {
        let start = entry.start as usize + entry.path_len as usize;
        &self.bytes[start..start + entry.value_len as usize]
    }

    /// Records a look (once per node and kind): `ENOSPC` when full.
    fn look(&mut self, node: u16, subtree: bool, generation: u64) -> Result<(), Errno> {
        if self.looks[..self.look_count].iter().any(|look| look.node == node && look.subtree == subtree) {
            return Ok(());
        }
        if self.look_count == TRANSACTION_READS {
            return Err(Errno::Enospc);
        }
        self.looks[self.look_count] = Look { node, subtree, generation };
        self.look_count += 1;
        Ok(())
    }

    /// Appends a change: `ENOSPC` when the log is full.
    fn log(&mut self, mut entry: LogEntry, path: &str, value: &[u8]) -> Result<(), Errno> {
        let end = self.byte_count + path.len() + value.len();
        if self.entry_count == TRANSACTION_CHANGES || end > TRANSACTION_BYTES {
            return Err(Errno::Enospc);
        }
        entry.start = self.byte_count as u16;
        entry.path_len = path.len() as u16;
        entry.value_len = value.len() as u16;
        self.bytes[self.byte_count..self.byte_count + path.len()].copy_from_slice(path.as_bytes());
        self.bytes[self.byte_count + path.len()..end].copy_from_slice(value);
        self.byte_count = end;
        self.entries[self.entry_count] = entry;
        self.entry_count += 1;
        Ok(())
    }
}

const _: () = assert!(TRANSACTION_BYTES <= u16::MAX as usize);

#[derive(Clone, Copy)]
struct DomainSlot {
    used: bool,
    id: DomainId,
    quota: Quota,
    usage: Usage,
    dropped: u64,
    queue: EventQueue,
    transactions: [Transaction; TRANSACTIONS_PER_DOMAIN],
    /// The id the next transaction tries first (0 is skipped).
    next_transaction: u32,
}

impl DomainSlot {
    const EMPTY: DomainSlot = DomainSlot {
        used: false,
        id: 0,
        quota: Quota { nodes: 0, bytes: 0, watches: 0 },
        usage: Usage { nodes: 0, bytes: 0, watches: 0 },
        dropped: 0,
        queue: EventQueue::EMPTY,
        transactions: [Transaction::EMPTY; TRANSACTIONS_PER_DOMAIN],
        // Id 0 is never handed out: the first id is 1.
        next_transaction: 0,
    };

    /// The index of open transaction `id`.
    fn transaction(&self, id: u32) -> Option<usize> {
        if id == 0 {
            return None;
        }
        self.transactions.iter().position(|transaction| transaction.id == id)
    }
}

fn find_slot(domains: &[DomainSlot], id: DomainId) -> Option<usize> {
    domains.iter().position(|slot| slot.used && slot.id == id)
}

/// The components of an absolute path.
fn components(path: &str) -> impl Iterator<Item = &[u8]> {
    path.as_bytes()[1..].split(|&byte| byte == b'/').filter(|name| !name.is_empty())
}

/// Whether `path` is `ancestor` or below it.
fn is_at_or_below(path: &[u8], ancestor: &[u8]) -> bool {
    ancestor == b"/" || (path.starts_with(ancestor) && (path.len() == ancestor.len() || path[ancestor.len()] == b'/'))
}

/// A domain's home directory.
fn home(domain: DomainId) -> PathBuffer {
    let mut path = PathBuffer::new();
    // Cannot fail: the prefix and ten digits fit.
    let _ = write!(path, "{HOME_PREFIX}{domain}");
    path
}

/// Resolves a path as `caller` sent it into an absolute one.
fn resolve(caller: DomainId, path: &str) -> Result<PathBuffer, Errno> {
    let mut absolute = PathBuffer::new();
    match check_path(path.as_bytes())? {
        PathForm::Absolute => absolute.try_push_str(path).map_err(|_| Errno::E2big)?,
        PathForm::Relative => write!(absolute, "{HOME_PREFIX}{caller}/{path}").map_err(|_| Errno::E2big)?,
    }
    Ok(absolute)
}

/// Values and tokens: UTF-8 (guaranteed by `&str`) without NUL.
fn check_text(text: &str, max: usize) -> Result<(), Errno> {
    if text.len() > max {
        return Err(Errno::E2big);
    }
    if text.as_bytes().contains(&0) {
        return Err(Errno::Einval);
    }
    Ok(())
}

/// The store. `NODES`, `ARENA`, `WATCHES` and `DOMAINS` are its capacities
/// (see the module docs); all memory is inside this value.
pub struct Store<const NODES: usize, const ARENA: usize, const WATCHES: usize, const DOMAINS: usize> {
    nodes: [Node; NODES],
    /// Nodes in use besides the root.
    node_count: usize,
    arena: [u8; ARENA],
    /// Bytes of the arena holding extents, live or freed.
    arena_end: usize,
    /// Bytes of live extents.
    arena_live: usize,
    watches: [Watch; WATCHES],
    domains: [DomainSlot; DOMAINS],
    /// The last generation handed out (see the module docs).
    generation: u64,
}

impl<const NODES: usize, const ARENA: usize, const WATCHES: usize, const DOMAINS: usize>
    Store<NODES, ARENA, WATCHES, DOMAINS>
{
    const CAPACITIES_FIT: () = assert!(
        NODES >= 2 && NODES + WATCHES < FREE_SLOT as usize && ARENA <= u32::MAX as usize && DOMAINS >= 1,
        "store capacities out of range"
    );

    /// An empty store: the root `/`, owned by dom0, nobody else may read it.
    pub const fn new() -> Self {
        let () = Self::CAPACITIES_FIT;
        Store {
            nodes: [Node::EMPTY; NODES],
            node_count: 0,
            arena: [0; ARENA],
            arena_end: 0,
            arena_live: 0,
            watches: [Watch::EMPTY; WATCHES],
            domains: [DomainSlot::EMPTY; DOMAINS],
            generation: 0,
        }
    }

    // ---- Domains ----

    /// Registers a domain with `quota` (or changes its quota) and creates
    /// its home `/local/domain/<domain>`, owned by it, if missing. dom0
    /// calls this when it builds a domain.
    pub fn introduce_domain(&mut self, domain: DomainId, quota: Quota) -> Result<(), Errno> {
        let slot = self.ensure_domain(domain)?;
        self.domains[slot].quota = quota;
        let home = home(domain);
        if self.lookup(&home).is_none() {
            self.create(DOM0, &home, None)?;
            self.set_permissions(DOM0, &home, &Permissions::owned_by(domain))?;
        }
        Ok(())
    }

    /// Forgets a destroyed domain: drops its watches and queued events,
    /// removes its home subtree (firing other domains' watches), hands the
    /// nodes it owned elsewhere to dom0 and revokes its grants everywhere,
    /// so that a later domain with the same id inherits nothing.
    pub fn remove_domain(&mut self, domain: DomainId) -> Result<(), Errno> {
        if domain == DOM0 {
            return Err(Errno::Einval);
        }
        for index in 0..WATCHES {
            if self.watches[index].used && self.watches[index].domain == domain {
                self.free_watch(index);
            }
        }
        if let Some(slot) = find_slot(&self.domains, domain) {
            self.domains[slot] = DomainSlot::EMPTY;
        }
        let home = home(domain);
        if let Some(node) = self.lookup(&home) {
            let permissions = self.nodes[node as usize].permissions;
            self.fire(&home, &permissions, true);
            self.delete_subtree(node);
        }
        for index in 0..NODES {
            if index != ROOT as usize && !self.nodes[index].used {
                continue;
            }
            let node = &mut self.nodes[index];
            let before = node.permissions;
            node.permissions.revoke(domain);
            if node.permissions.owner == domain {
                node.permissions.owner = DOM0;
                let size = node.size();
                self.charge(DOM0, 1, size as i64);
            }
            if self.nodes[index].permissions != before {
                self.changed(index as u16);
            }
        }
        Ok(())
    }

    /// A domain's quota, usage and event counters, if it has a record.
    pub fn domain(&self, domain: DomainId) -> Option<DomainReport> {
        let slot = &self.domains[find_slot(&self.domains, domain)?];
        Some(DomainReport {
            quota: slot.quota,
            usage: slot.usage,
            pending_events: slot.queue.count,
            dropped_events: slot.dropped,
        })
    }

    /// Nodes in the tree, the root included.
    pub fn node_count(&self) -> usize {
        self.node_count + 1
    }

    /// Arena bytes in live extents.
    pub fn arena_bytes(&self) -> usize {
        self.arena_live
    }

    /// The slot of `domain`, made on first use with the default quota
    /// (unlimited for dom0) and the usage it already has.
    fn ensure_domain(&mut self, domain: DomainId) -> Result<usize, Errno> {
        if let Some(slot) = find_slot(&self.domains, domain) {
            return Ok(slot);
        }
        let slot = self.domains.iter().position(|slot| !slot.used).ok_or(Errno::Enospc)?;
        let usage = self.recount(domain);
        self.domains[slot] = DomainSlot {
            used: true,
            id: domain,
            quota: if domain == DOM0 { Quota::UNLIMITED } else { Quota::GUEST },
            usage,
            ..DomainSlot::EMPTY
        };
        Ok(slot)
    }

    /// What `domain` owns, counted from the tables.
    fn recount(&self, domain: DomainId) -> Usage {
        let mut usage = Usage::default();
        for (index, node) in self.nodes.iter().enumerate() {
            if (node.used || index == ROOT as usize) && node.permissions.owner == domain {
                usage.nodes += 1;
                usage.bytes += node.size() as u32;
            }
        }
        for watch in self.watches.iter().filter(|watch| watch.used && watch.domain == domain) {
            usage.watches += 1;
            usage.bytes += watch.size() as u32;
        }
        usage
    }

    /// Adds to (or, negative, takes from) `owner`'s node count and bytes.
    fn charge(&mut self, owner: DomainId, nodes: i64, bytes: i64) {
        if let Some(slot) = find_slot(&self.domains, owner) {
            let usage = &mut self.domains[slot].usage;
            usage.nodes = (usage.nodes as i64 + nodes).clamp(0, u32::MAX as i64) as u32;
            usage.bytes = (usage.bytes as i64 + bytes).clamp(0, u32::MAX as i64) as u32;
        }
    }

    /// Checks that `caller` may make `owner` own `nodes` more nodes and
    /// `bytes` more bytes.
    fn check_quota(&mut self, caller: DomainId, owner: DomainId, nodes: usize, bytes: i64) -> Result<(), Errno> {
        if caller == DOM0 || owner == DOM0 {
            return Ok(());
        }
        let slot = &self.domains[self.ensure_domain(owner)?];
        let nodes_after = slot.usage.nodes as u64 + nodes as u64;
        let bytes_after = slot.usage.bytes as i64 + bytes;
        if nodes_after > slot.quota.nodes as u64 || bytes_after > slot.quota.bytes as i64 {
            return Err(Errno::Enospc);
        }
        Ok(())
    }

    // ---- The arena ----

    /// Makes room for `bytes` at the arena's end, compacting if needed.
    fn reserve(&mut self, bytes: usize) -> Result<(), Errno> {
        if self.arena_live + bytes > ARENA {
            return Err(Errno::Enospc);
        }
        if self.arena_end + bytes > ARENA {
            self.compact();
        }
        Ok(())
    }

    /// Writes an extent for `slot` holding `first` then `second` at the end
    /// of the arena (room reserved); returns its offset.
    fn place(&mut self, slot: u16, first: &[u8], second: &[u8]) -> u32 {
        let offset = self.arena_end;
        let length = first.len() + second.len();
        self.arena[offset..offset + 2].copy_from_slice(&slot.to_le_bytes());
        self.arena[offset + 2..offset + 4].copy_from_slice(&(length as u16).to_le_bytes());
        let data = offset + EXTENT_HEADER;
        self.arena[data..data + first.len()].copy_from_slice(first);
        self.arena[data + first.len()..data + length].copy_from_slice(second);
        self.arena_end += EXTENT_HEADER + length;
        self.arena_live += EXTENT_HEADER + length;
        offset as u32
    }

    fn extent_length(&self, offset: usize) -> usize {
        u16::from_le_bytes([self.arena[offset + 2], self.arena[offset + 3]]) as usize
    }

    fn release(&mut self, offset: u32) {
        let offset = offset as usize;
        let size = EXTENT_HEADER + self.extent_length(offset);
        self.arena[offset..offset + 2].copy_from_slice(&FREE_SLOT.to_le_bytes());
        self.arena_live -= size;
        if offset + size == self.arena_end {
            self.arena_end = offset;
        }
    }

    /// Slides every live extent down over the freed ones, in order.
    fn compact(&mut self) {
        let (mut read, mut write) = (0, 0);
        while read < self.arena_end {
            let slot = u16::from_le_bytes([self.arena[read], self.arena[read + 1]]);
            let size = EXTENT_HEADER + self.extent_length(read);
            if slot != FREE_SLOT {
                self.arena.copy_within(read..read + size, write);
                let slot = slot as usize;
                if slot < NODES {
                    self.nodes[slot].extent = write as u32;
                } else {
                    self.watches[slot - NODES].extent = write as u32;
                }
                write += size;
            }
            read += size;
        }
        self.arena_end = write;
    }

    fn name(&self, node: u16) -> &[u8] {
        let node = &self.nodes[node as usize];
        if !node.has_extent() {
            return &[];
        }
        let start = node.extent as usize + EXTENT_HEADER;
        &self.arena[start..start + node.name_len as usize]
    }

    fn value(&self, node: u16) -> &[u8] {
        let node = &self.nodes[node as usize];
        if !node.has_extent() {
            return &[];
        }
        let start = node.extent as usize + EXTENT_HEADER + node.name_len as usize;
        &self.arena[start..start + node.value_len as usize]
    }

    // ---- The tree ----

    /// Notes a change of `node`'s value, permissions or children: a new
    /// generation for it, and for the subtrees of it and its ancestors.
    fn changed(&mut self, node: u16) {
        self.generation += 1;
        let generation = self.generation;
        self.nodes[node as usize].generation = generation;
        let mut at = node;
        loop {
            self.nodes[at as usize].subtree_generation = generation;
            if at == ROOT {
                break;
            }
            at = self.nodes[at as usize].parent;
        }
    }

    fn child(&self, parent: u16, name: &[u8]) -> Option<u16> {
        let mut child = self.nodes[parent as usize].first_child;
        while child != 0 {
            if self.name(child) == name {
                return Some(child);
            }
            child = self.nodes[child as usize].next_sibling;
        }
        None
    }

    /// Follows an absolute path as far as it exists: the deepest existing
    /// node and how many components it took.
    fn walk(&self, path: &str) -> (u16, usize) {
        let mut node = ROOT;
        let mut depth = 0;
        for name in components(path) {
            match self.child(node, name) {
                Some(child) => node = child,
                None => break,
            }
            depth += 1;
        }
        (node, depth)
    }

    fn lookup(&self, path: &str) -> Option<u16> {
        let (node, depth) = self.walk(path);
        (depth == components(path).count()).then_some(node)
    }

    /// Follows `path` for `caller` without telling it what it may not
    /// know: the deepest existing node on the path and how many components
    /// it took (as [`Self::walk`]). A caller with no access at all to that node is
    /// refused with [`Errno::Eacces`] whether the rest of the path
    /// exists or not, so a node it may not see and a missing one below
    /// it are refused alike, by every operation (otherwise a guest could
    /// enumerate other guests' devices). Where it may look, a missing
    /// child is no secret: `Directory` would list it.
    fn locate(&self, caller: DomainId, path: &str) -> Result<(u16, usize), Errno> {
        let (node, depth) = self.walk(path);
        if self.nodes[node as usize].permissions.access(caller) == Access::None {
            return Err(Errno::Eacces);
        }
        Ok((node, depth))
    }

    /// Looks up an existing node that `caller` needs `read` or write access
    /// to (refused alike whether it exists, where the caller may not look:
    /// see [`Self::locate`]).
    fn find(&self, caller: DomainId, path: &str, read: bool) -> Result<u16, Errno> {
        let (node, depth) = self.locate(caller, path)?;
        if depth != components(path).count() {
            return Err(Errno::Enoent);
        }
        let access = self.nodes[node as usize].permissions.access(caller);
        if (read && !access.can_read()) || (!read && !access.can_write()) {
            return Err(Errno::Eacces);
        }
        Ok(node)
    }

    /// Write (`value` given) or mkdir (`None`) on a resolved path.
    /// Mkdir of an existing node needs write access to it, as a write does:
    /// its answer must not depend on existence where the caller may not look.
    fn create(&mut self, caller: DomainId, path: &str, value: Option<&[u8]>) -> Result<(), Errno> {
        let (deepest, depth) = self.locate(caller, path)?;
        let total = components(path).count();
        let parent = self.nodes[deepest as usize];
        if depth == total {
            if !parent.permissions.access(caller).can_write() {
                return Err(Errno::Eacces);
            }
            let Some(value) = value else { return Ok(()) };
            self.replace_value(caller, deepest, value)?;
            let permissions = self.nodes[deepest as usize].permissions;
            self.fire(path, &permissions, false);
            return Ok(());
        }
        if !parent.permissions.access(caller).can_write() {
            return Err(Errno::Eacces);
        }
        let value = value.unwrap_or(&[]);
        let new_nodes = total - depth;
        let bytes: usize =
            components(path).skip(depth).map(|name| EXTENT_HEADER + name.len()).sum::<usize>() + value.len();
        // dom0 creates on behalf of the directory's owner; a guest owns
        // what it creates.
        let owner = if caller == DOM0 { parent.permissions.owner } else { caller };
        self.check_quota(caller, owner, new_nodes, bytes as i64)?;
        if NODES - 1 - self.node_count < new_nodes {
            return Err(Errno::Enospc);
        }
        self.reserve(bytes)?;
        let mut node = deepest;
        for (index, name) in components(path).skip(depth).enumerate() {
            let value = if index + 1 == new_nodes { value } else { &[] };
            node = self.new_child(node, name, value, owner);
        }
        self.charge(owner, new_nodes as i64, bytes as i64);
        let permissions = self.nodes[node as usize].permissions;
        self.fire(path, &permissions, false);
        Ok(())
    }

    /// Appends a child to `parent` (node slot and arena room checked).
    fn new_child(&mut self, parent: u16, name: &[u8], value: &[u8], owner: DomainId) -> u16 {
        let Some(index) = (1..NODES).find(|&index| !self.nodes[index].used) else { return parent };
        let index = index as u16;
        let extent = self.place(index, name, value);
        let mut permissions = self.nodes[parent as usize].permissions;
        permissions.owner = owner;
        self.nodes[index as usize] = Node {
            used: true,
            parent,
            first_child: 0,
            next_sibling: 0,
            name_len: name.len() as u16,
            value_len: value.len() as u16,
            extent,
            permissions,
            generation: 0,
            subtree_generation: 0,
        };
        self.node_count += 1;
        let first = self.nodes[parent as usize].first_child;
        if first == 0 {
            self.nodes[parent as usize].first_child = index;
        } else {
            let mut last = first;
            while self.nodes[last as usize].next_sibling != 0 {
                last = self.nodes[last as usize].next_sibling;
            }
            self.nodes[last as usize].next_sibling = index;
        }
        self.changed(parent);
        self.changed(index);
        index
    }

    fn replace_value(&mut self, caller: DomainId, node: u16, value: &[u8]) -> Result<(), Errno> {
        let old = self.nodes[node as usize];
        let name_len = old.name_len as usize;
        let length = name_len + value.len();
        let new_size = if length == 0 { 0 } else { EXTENT_HEADER + length };
        let delta = new_size as i64 - old.size() as i64;
        self.check_quota(caller, old.permissions.owner, 0, delta)?;
        self.reserve(new_size)?;
        // Compaction may have moved the old extent.
        let old = self.nodes[node as usize];
        let mut extent = old.extent;
        if new_size != 0 {
            // The new extent copies the name from the old one, which lives
            // in the arena too, so it is built in place rather than by `place`.
            let offset = self.arena_end;
            self.arena[offset..offset + 2].copy_from_slice(&node.to_le_bytes());
            self.arena[offset + 2..offset + 4].copy_from_slice(&(length as u16).to_le_bytes());
            let data = offset + EXTENT_HEADER;
            if old.has_extent() {
                let name = old.extent as usize + EXTENT_HEADER;
                self.arena.copy_within(name..name + name_len, data);
            }
            self.arena[data + name_len..data + length].copy_from_slice(value);
            self.arena_end += new_size;
            self.arena_live += new_size;
            extent = offset as u32;
        }
        if old.has_extent() {
            self.release(old.extent);
        }
        self.nodes[node as usize].extent = extent;
        self.nodes[node as usize].value_len = value.len() as u16;
        self.charge(old.permissions.owner, 0, delta);
        self.changed(node);
        Ok(())
    }

    fn free_node(&mut self, index: u16) {
        let node = self.nodes[index as usize];
        if node.has_extent() {
            self.release(node.extent);
        }
        self.charge(node.permissions.owner, -1, -(node.size() as i64));
        self.nodes[index as usize] = Node::EMPTY;
        self.node_count -= 1;
    }

    /// Whether `caller` may write `top` and every node below it.
    fn subtree_writable(&self, caller: DomainId, top: u16) -> bool {
        // Depth first along the links: down to the first child, else on to
        // the next sibling of the nearest node below `top` that has one.
        let mut node = top;
        loop {
            if !self.nodes[node as usize].permissions.access(caller).can_write() {
                return false;
            }
            let first = self.nodes[node as usize].first_child;
            if first != 0 {
                node = first;
                continue;
            }
            loop {
                if node == top {
                    return true;
                }
                let next = self.nodes[node as usize].next_sibling;
                if next != 0 {
                    node = next;
                    break;
                }
                node = self.nodes[node as usize].parent;
            }
        }
    }

    /// Unlinks `top` from its parent and frees it with everything below.
    fn delete_subtree(&mut self, top: u16) {
        let parent = self.nodes[top as usize].parent;
        let next = self.nodes[top as usize].next_sibling;
        if self.nodes[parent as usize].first_child == top {
            self.nodes[parent as usize].first_child = next;
        } else {
            let mut sibling = self.nodes[parent as usize].first_child;
            while sibling != 0 && self.nodes[sibling as usize].next_sibling != top {
                sibling = self.nodes[sibling as usize].next_sibling;
            }
            if sibling != 0 {
                self.nodes[sibling as usize].next_sibling = next;
            }
        }
        self.changed(parent);
        // Free leaves from the top down until only `top` is left: each
        // round descends along first children to a leaf and unlinks it.
        loop {
            let mut leaf = top;
            while self.nodes[leaf as usize].first_child != 0 {
                leaf = self.nodes[leaf as usize].first_child;
            }
            if leaf == top {
                break;
            }
            let parent = self.nodes[leaf as usize].parent;
            self.nodes[parent as usize].first_child = self.nodes[leaf as usize].next_sibling;
            self.free_node(leaf);
        }
        self.free_node(top);
    }

    // ---- Watches ----

    fn watch_path(&self, watch: &Watch) -> &[u8] {
        let start = watch.extent as usize + EXTENT_HEADER;
        &self.arena[start..start + watch.path_len as usize]
    }

    fn watch_token(&self, watch: &Watch) -> &[u8] {
        let start = watch.extent as usize + EXTENT_HEADER + watch.path_len as usize;
        &self.arena[start..start + watch.token_len as usize]
    }

    fn find_watch(&self, domain: DomainId, path: &str, token: &str) -> Option<usize> {
        self.watches.iter().position(|watch| {
            watch.used
                && watch.domain == domain
                && self.watch_path(watch) == path.as_bytes()
                && self.watch_token(watch) == token.as_bytes()
        })
    }

    fn free_watch(&mut self, index: usize) {
        let watch = self.watches[index];
        self.release(watch.extent);
        self.watches[index] = Watch::EMPTY;
        if let Some(slot) = find_slot(&self.domains, watch.domain) {
            let usage = &mut self.domains[slot].usage;
            usage.watches = usage.watches.saturating_sub(1);
            usage.bytes = usage.bytes.saturating_sub(watch.size() as u32);
        }
    }

    /// Queues events for a change of `changed` (whose permissions, before
    /// a removal or after any other change, are `permissions`).
    fn fire(&mut self, changed: &str, permissions: &Permissions, removal: bool) {
        let changed = changed.as_bytes();
        for watch in &self.watches {
            if !watch.used {
                continue;
            }
            let start = watch.extent as usize + EXTENT_HEADER;
            let path = &self.arena[start..start + watch.path_len as usize];
            let token = &self.arena[start + path.len()..start + path.len() + watch.token_len as usize];
            let event_path = if is_at_or_below(changed, path) {
                changed
            } else if removal && is_at_or_below(path, changed) {
                path
            } else {
                continue;
            };
            if !permissions.access(watch.domain).can_read() {
                continue;
            }
            if let Some(slot) = find_slot(&self.domains, watch.domain) {
                let slot = &mut self.domains[slot];
                slot.dropped += slot.queue.push(event_path, token) as u64;
            }
        }
    }

    // ---- Operations, as the protocol has them ----

    /// A node's value.
    pub fn read(&self, caller: DomainId, path: &str) -> Result<&str, Errno> {
        let path = resolve(caller, path)?;
        let node = self.find(caller, &path, true)?;
        core::str::from_utf8(self.value(node)).map_err(|_| Errno::Einval)
    }

    /// Sets a node's value, creating it and its missing parents.
    pub fn write(&mut self, caller: DomainId, path: &str, value: &str) -> Result<(), Errno> {
        check_text(value, VALUE_MAX)?;
        let path = resolve(caller, path)?;
        self.create(caller, &path, Some(value.as_bytes()))
    }

    /// Creates a node with an empty value unless it exists.
    pub fn mkdir(&mut self, caller: DomainId, path: &str) -> Result<(), Errno> {
        let path = resolve(caller, path)?;
        self.create(caller, &path, None)
    }

    /// Removes a node and its subtree.
    pub fn remove(&mut self, caller: DomainId, path: &str) -> Result<(), Errno> {
        let path = resolve(caller, path)?;
        if path.as_str() == "/" {
            return Err(Errno::Einval);
        }
        let node = self.find(caller, &path, false)?;
        if !self.subtree_writable(caller, node) {
            return Err(Errno::Eacces);
        }
        let permissions = self.nodes[node as usize].permissions;
        self.fire(&path, &permissions, true);
        self.delete_subtree(node);
        Ok(())
    }

    /// dom0 writes a node it keeps owning that `reader` may read but not
    /// change or remove (not even by removing a parent it owns): facts
    /// about a guest in its home, like its `name` and `domid`. Missing
    /// parents are created as [`Self::write`] creates them.
    pub fn write_read_only(&mut self, path: &str, value: &str, reader: DomainId) -> Result<(), Errno> {
        self.write(DOM0, path, value)?;
        let mut permissions = Permissions::owned_by(DOM0);
        if reader != DOM0 {
            permissions.grant(reader, Access::Read)?;
        }
        self.set_permissions(DOM0, path, &permissions)
    }

    /// The names of a node's children, in creation order.
    pub fn directory(&self, caller: DomainId, path: &str) -> Result<impl Iterator<Item = &str> + '_, Errno> {
        let path = resolve(caller, path)?;
        let node = self.find(caller, &path, true)?;
        let mut child = self.nodes[node as usize].first_child;
        Ok(core::iter::from_fn(move || {
            if child == 0 {
                return None;
            }
            let name = self.name(child);
            child = self.nodes[child as usize].next_sibling;
            // Names are checked path components: ASCII.
            Some(core::str::from_utf8(name).unwrap_or(""))
        }))
    }

    /// A node's permissions.
    pub fn get_permissions(&self, caller: DomainId, path: &str) -> Result<Permissions, Errno> {
        let path = resolve(caller, path)?;
        let node = self.find(caller, &path, true)?;
        Ok(self.nodes[node as usize].permissions)
    }

    /// Replaces a node's permissions: the owner or dom0 only, and only dom0
    /// may change the owner.
    pub fn set_permissions(&mut self, caller: DomainId, path: &str, permissions: &Permissions) -> Result<(), Errno> {
        let path = resolve(caller, path)?;
        let (node, depth) = self.locate(caller, &path)?;
        if depth != components(&path).count() {
            return Err(Errno::Enoent);
        }
        let old = self.nodes[node as usize];
        if caller != DOM0 && (old.permissions.owner != caller || permissions.owner != caller) {
            return Err(Errno::Eacces);
        }
        if permissions.owner != old.permissions.owner {
            self.charge(old.permissions.owner, -1, -(old.size() as i64));
            self.charge(permissions.owner, 1, old.size() as i64);
        }
        self.nodes[node as usize].permissions = *permissions;
        self.changed(node);
        self.fire(&path, permissions, false);
        Ok(())
    }

    /// Registers a watch and queues its first event.
    pub fn watch(&mut self, caller: DomainId, path: &str, token: &str) -> Result<(), Errno> {
        check_text(token, TOKEN_MAX)?;
        let path = resolve(caller, path)?;
        if self.find_watch(caller, &path, token).is_some() {
            return Err(Errno::Eexist);
        }
        let slot = self.ensure_domain(caller)?;
        let size = EXTENT_HEADER + path.len() + token.len();
        let record = &self.domains[slot];
        if caller != DOM0
            && (record.usage.watches >= record.quota.watches
                || record.usage.bytes as u64 + size as u64 > record.quota.bytes as u64)
        {
            return Err(Errno::Enospc);
        }
        let index = self.watches.iter().position(|watch| !watch.used).ok_or(Errno::Enospc)?;
        self.reserve(size)?;
        let extent = self.place((NODES + index) as u16, path.as_bytes(), token.as_bytes());
        self.watches[index] =
            Watch { used: true, domain: caller, extent, path_len: path.len() as u16, token_len: token.len() as u16 };
        let record = &mut self.domains[slot];
        record.usage.watches += 1;
        record.usage.bytes += size as u32;
        record.dropped += record.queue.push(path.as_bytes(), token.as_bytes()) as u64;
        Ok(())
    }

    /// Removes a watch. Events it already queued stay queued.
    pub fn unwatch(&mut self, caller: DomainId, path: &str, token: &str) -> Result<(), Errno> {
        check_text(token, TOKEN_MAX)?;
        let path = resolve(caller, path)?;
        let index = self.find_watch(caller, &path, token).ok_or(Errno::Enoent)?;
        self.free_watch(index);
        Ok(())
    }

    /// Removes all of `caller`'s watches and ends its transactions,
    /// unapplied (`RESET_WATCHES`). Events already queued stay queued.
    pub fn reset_watches(&mut self, caller: DomainId) {
        for index in 0..WATCHES {
            if self.watches[index].used && self.watches[index].domain == caller {
                self.free_watch(index);
            }
        }
        if let Some(slot) = find_slot(&self.domains, caller) {
            self.domains[slot].transactions = [Transaction::EMPTY; TRANSACTIONS_PER_DOMAIN];
        }
    }

    /// Size of the next queued event's message for `domain`, if any.
    pub fn next_event_size(&self, domain: DomainId) -> Option<usize> {
        let slot = find_slot(&self.domains, domain)?;
        self.domains[slot].queue.front_len().map(|length| XSD_SOCKMSG_SIZE + length)
    }

    /// Takes `domain`'s oldest queued event as a `WATCH_EVENT` message
    /// (`path|token|`, `req_id` and `tx_id` 0); returns its size, 0 if none
    /// was queued.
    pub fn pop_event(&mut self, domain: DomainId, out: &mut [u8; MESSAGE_MAX]) -> usize {
        let Some(slot) = find_slot(&self.domains, domain) else { return 0 };
        let length = self.domains[slot].queue.pop(&mut out[XSD_SOCKMSG_SIZE..]);
        if length == 0 {
            return 0;
        }
        let header =
            XsdSockmsg { r#type: XsdSockmsgType::WatchEvent.number(), req_id: 0, tx_id: 0, len: length as u32 };
        out[..XSD_SOCKMSG_SIZE].copy_from_slice(&header.to_bytes());
        XSD_SOCKMSG_SIZE + length
    }

    // ---- Transactions (see the module docs) ----

    /// Opens a transaction for `caller`; returns its id. `ENOSPC` when the
    /// caller has [`TRANSACTIONS_PER_DOMAIN`] open.
    pub fn transaction_start(&mut self, caller: DomainId) -> Result<u32, Errno> {
        let slot = self.ensure_domain(caller)?;
        let record = &mut self.domains[slot];
        let free = record.transactions.iter().position(|transaction| transaction.id == 0).ok_or(Errno::Enospc)?;
        let mut id = record.next_transaction;
        while id == 0 || record.transaction(id).is_some() {
            id = id.wrapping_add(1);
        }
        record.next_transaction = id.wrapping_add(1);
        record.transactions[free] = Transaction { id, ..Transaction::EMPTY };
        Ok(id)
    }

    /// Ends `caller`'s transaction `id`: applies it (`commit`) or drops it.
    /// `ENOENT` if it is not open; `EAGAIN` if a node it looked at changed
    /// since, `ENOSPC` if its changes do not fit: then nothing is applied.
    /// The transaction is over in every case.
    pub fn transaction_end(&mut self, caller: DomainId, id: u32, commit: bool) -> Result<(), Errno> {
        let slot = find_slot(&self.domains, caller).ok_or(Errno::Enoent)?;
        let index = self.domains[slot].transaction(id).ok_or(Errno::Enoent)?;
        let transaction = core::mem::replace(&mut self.domains[slot].transactions[index], Transaction::EMPTY);
        if commit { self.commit(caller, &transaction) } else { Ok(()) }
    }

    fn commit(&mut self, caller: DomainId, transaction: &Transaction) -> Result<(), Errno> {
        for look in &transaction.looks[..transaction.look_count] {
            let node = &self.nodes[look.node as usize];
            let now = if look.subtree { node.subtree_generation } else { node.generation };
            if !(node.used || look.node == ROOT) || now != look.generation {
                return Err(Errno::Eagain);
            }
        }
        // Room for everything the log creates or grows, before any of it.
        let entries = transaction.entries();
        let new_nodes: usize = entries.iter().map(|entry| entry.new_nodes as usize).sum();
        let bytes: u64 = entries.iter().map(|entry| entry.bytes as u64).sum();
        let transient = entries.iter().map(|entry| entry.transient as u64).max().unwrap_or(0);
        if NODES - 1 - self.node_count < new_nodes || self.arena_live as u64 + bytes + transient > ARENA as u64 {
            return Err(Errno::Enospc);
        }
        if caller != DOM0 {
            for (index, entry) in entries.iter().enumerate() {
                let owner = entry.owner;
                if owner == DOM0 || entries[..index].iter().any(|earlier| earlier.owner == owner) {
                    continue;
                }
                let (nodes, bytes) =
                    entries.iter().filter(|entry| entry.owner == owner).fold((0, 0), |(nodes, bytes), entry| {
                        (nodes + entry.new_nodes as usize, bytes + entry.bytes as i64)
                    });
                self.check_quota(caller, owner, nodes, bytes)?;
            }
        }
        let mut first_error = None;
        for entry in entries {
            let path = transaction.path(entry);
            let result = match entry.change {
                Change::Write => self.create(caller, path, Some(transaction.value(entry))),
                Change::Mkdir => self.create(caller, path, None),
                Change::Remove => self.remove(caller, path),
                Change::SetPermissions => self.set_permissions(caller, path, &entry.permissions),
            };
            // Cannot fail (see the module docs); if it did, the rest is
            // still applied and the first error answered.
            if let Err(error) = result {
                debug_assert!(false, "a checked transaction failed at commit: {error:?}");
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// [`Self::view`], recording the look it depends on.
    fn view_looked(&self, transaction: &mut Transaction, path: &str, upto: usize) -> Result<Option<ViewNode>, Errno> {
        let (node, depends) = self.view(transaction, path, upto);
        if let Some(depends) = depends {
            transaction.look(depends, false, self.nodes[depends as usize].generation)?;
        }
        Ok(node)
    }

    /// The node at `path` (absolute) as `transaction` sees it after its
    /// first `upto` changes (`None` if it does not exist there), and the
    /// live node the answer depends on, if any: the deepest existing one on
    /// the path, whose own generation covers its value, permissions and
    /// children (so also the absence of the rest of the path).
    fn view(&self, transaction: &Transaction, path: &str, upto: usize) -> (Option<ViewNode>, Option<u16>) {
        let (mut written, mut set, mut creator, mut removed) = (None, None, None, false);
        for (index, entry) in transaction.entries[..upto].iter().enumerate().rev() {
            let target = transaction.path(entry);
            match entry.change {
                Change::Remove if is_at_or_below(path.as_bytes(), target.as_bytes()) => {
                    removed = true;
                    break;
                }
                Change::SetPermissions if target == path => {
                    set.get_or_insert(entry.permissions);
                    creator = Some(index);
                }
                Change::Write if target == path => {
                    written.get_or_insert(index);
                    creator = Some(index);
                }
                Change::Write | Change::Mkdir if is_at_or_below(target.as_bytes(), path.as_bytes()) => {
                    creator = Some(index);
                }
                _ => {}
            }
        }
        let (live, depends) = if removed {
            (None, None)
        } else {
            let (node, depth) = self.walk(path);
            ((depth == components(path).count()).then_some(node), Some(node))
        };
        let found = match (live, creator) {
            (Some(node), _) => ViewNode {
                value: written.map_or(ViewValue::Live(node), ViewValue::Logged),
                permissions: set.unwrap_or(self.nodes[node as usize].permissions),
                live,
            },
            // Created in the transaction, by its first change at or below it.
            (None, Some(creator)) => ViewNode {
                value: written.map_or(ViewValue::Empty, ViewValue::Logged),
                permissions: set.unwrap_or(transaction.entries[creator].permissions),
                live: None,
            },
            (None, None) => return (None, depends),
        };
        (Some(found), depends)
    }

    /// The deepest node on `path` that `transaction` sees (after all its
    /// changes), and how many components it took; refused as
    /// [`Self::locate`] refuses.
    fn view_locate(
        &self,
        caller: DomainId,
        transaction: &mut Transaction,
        path: &str,
    ) -> Result<(ViewNode, usize), Errno> {
        let upto = transaction.entry_count;
        let total = components(path).count();
        // Existence is monotone along a path (a node's ancestors exist):
        // search for the deepest that exists.
        let (mut low, mut high) = (0, total);
        while low < high {
            let middle = (low + high).div_ceil(2);
            match self.view(transaction, prefix(path, middle), upto).0 {
                Some(_) => low = middle,
                None => high = middle - 1,
            }
        }
        // The answer depends on the node found and on the absence of the
        // next one (not on the probes between).
        if low < total {
            self.view_looked(transaction, prefix(path, low + 1), upto)?;
        }
        // The root is never removed.
        let found = self.view_looked(transaction, prefix(path, low), upto)?.ok_or(Errno::Einval)?;
        if found.permissions.access(caller) == Access::None {
            return Err(Errno::Eacces);
        }
        Ok((found, low))
    }

    /// An existing node `caller` needs `read` or write access to, in the view.
    fn view_find(
        &self,
        caller: DomainId,
        transaction: &mut Transaction,
        path: &str,
        read: bool,
    ) -> Result<ViewNode, Errno> {
        let (node, depth) = self.view_locate(caller, transaction, path)?;
        if depth != components(path).count() {
            return Err(Errno::Enoent);
        }
        let access = node.permissions.access(caller);
        if (read && !access.can_read()) || (!read && !access.can_write()) {
            return Err(Errno::Eacces);
        }
        Ok(node)
    }

    fn view_value<'a>(&'a self, transaction: &'a Transaction, node: &ViewNode) -> &'a [u8] {
        match node.value {
            ViewValue::Live(live) => self.value(live),
            ViewValue::Logged(index) => transaction.value(&transaction.entries[index]),
            ViewValue::Empty => &[],
        }
    }

    /// A request inside `transaction`: as the live operations, against
    /// the view, logging changes instead of making them.
    fn transaction_request(
        &mut self,
        caller: DomainId,
        transaction: &mut Transaction,
        kind: XsdSockmsgType,
        payload: &[u8],
        out: &mut Reply,
    ) -> Result<(), Errno> {
        match kind {
            XsdSockmsgType::Read => {
                let [path] = strings(payload)?;
                let path = resolve(caller, path)?;
                let node = self.view_find(caller, transaction, &path, true)?;
                out.raw(self.view_value(transaction, &node))
            }
            XsdSockmsgType::Write | XsdSockmsgType::Mkdir => {
                let (path, value) = if kind == XsdSockmsgType::Write {
                    let (path, value) = path_and_value(payload)?;
                    check_text(value, VALUE_MAX)?;
                    (path, Some(value.as_bytes()))
                } else {
                    let [path] = strings(payload)?;
                    (path, None)
                };
                let path = resolve(caller, path)?;
                self.transaction_create(caller, transaction, &path, value)?;
                out.ok()
            }
            XsdSockmsgType::Rm => {
                let [path] = strings(payload)?;
                let path = resolve(caller, path)?;
                if path.as_str() == "/" {
                    return Err(Errno::Einval);
                }
                let node = self.view_find(caller, transaction, &path, false)?;
                if let Some(live) = node.live {
                    // What the transaction created below is the caller's
                    // (or dom0's, which may write anything); what it did
                    // not create is live, and checked as a live remove
                    // checks it.
                    if !self.subtree_writable(caller, live) {
                        return Err(Errno::Eacces);
                    }
                    transaction.look(live, true, self.nodes[live as usize].subtree_generation)?;
                }
                transaction.log(LogEntry { change: Change::Remove, ..LogEntry::EMPTY }, &path, &[])?;
                out.ok()
            }
            XsdSockmsgType::Directory => {
                let [path] = strings(payload)?;
                let path = resolve(caller, path)?;
                let node = self.view_find(caller, transaction, &path, true)?;
                self.transaction_directory(transaction, &path, &node, out)
            }
            XsdSockmsgType::GetPerms => {
                let [path] = strings(payload)?;
                let path = resolve(caller, path)?;
                let node = self.view_find(caller, transaction, &path, true)?;
                out.permissions(&node.permissions)
            }
            XsdSockmsgType::SetPerms => {
                let (path, permissions) = parse_set_permissions(payload)?;
                let path = resolve(caller, path)?;
                let (node, depth) = self.view_locate(caller, transaction, &path)?;
                if depth != components(&path).count() {
                    return Err(Errno::Enoent);
                }
                if caller != DOM0 && (node.permissions.owner != caller || permissions.owner != caller) {
                    return Err(Errno::Eacces);
                }
                let entry = LogEntry { change: Change::SetPermissions, permissions, ..LogEntry::EMPTY };
                transaction.log(entry, &path, &[])?;
                out.ok()
            }
            _ => Err(Errno::Enosys),
        }
    }

    /// Write (`value` given) or mkdir inside a transaction, as
    /// [`Self::create`] does live.
    fn transaction_create(
        &mut self,
        caller: DomainId,
        transaction: &mut Transaction,
        path: &str,
        value: Option<&[u8]>,
    ) -> Result<(), Errno> {
        let (deepest, depth) = self.view_locate(caller, transaction, path)?;
        if !deepest.permissions.access(caller).can_write() {
            return Err(Errno::Eacces);
        }
        let total = components(path).count();
        let entry = if depth == total {
            let Some(value) = value else { return Ok(()) };
            let old = self.view_value(transaction, &deepest).len();
            let name = components(path).last().map_or(0, <[u8]>::len);
            LogEntry {
                change: Change::Write,
                bytes: value.len().saturating_sub(old) as u32,
                transient: (EXTENT_HEADER + name + value.len()) as u32,
                owner: deepest.permissions.owner,
                ..LogEntry::EMPTY
            }
        } else {
            let new_nodes = total - depth;
            let bytes = components(path).skip(depth).map(|name| EXTENT_HEADER + name.len()).sum::<usize>()
                + value.map_or(0, <[u8]>::len);
            let owner = if caller == DOM0 { deepest.permissions.owner } else { caller };
            // Early answers; the commit checks again, all changes together.
            self.check_quota(caller, owner, new_nodes, bytes as i64)?;
            if NODES - 1 - self.node_count < new_nodes {
                return Err(Errno::Enospc);
            }
            let mut permissions = deepest.permissions;
            permissions.owner = owner;
            LogEntry {
                change: if value.is_some() { Change::Write } else { Change::Mkdir },
                permissions,
                new_nodes: new_nodes as u16,
                bytes: bytes as u32,
                owner,
                ..LogEntry::EMPTY
            }
        };
        transaction.log(entry, path, value.unwrap_or(&[]))
    }

    /// The children of `node` (at `path`) as `transaction` sees them: the
    /// live ones it did not remove, then the ones it created.
    fn transaction_directory(
        &self,
        transaction: &mut Transaction,
        path: &str,
        node: &ViewNode,
        out: &mut Reply,
    ) -> Result<(), Errno> {
        let upto = transaction.entry_count;
        let mut child_path = PathBuffer::new();
        let mut visible = |store: &Self, transaction: &mut Transaction, name: &[u8]| -> Result<bool, Errno> {
            child_path.clear();
            let name = core::str::from_utf8(name).map_err(|_| Errno::Einval)?;
            let separator = if path == "/" { "" } else { "/" };
            write!(child_path, "{path}{separator}{name}").map_err(|_| Errno::E2big)?;
            let related = transaction.entries().iter().any(|entry| {
                let target = transaction.path(entry).as_bytes();
                is_at_or_below(target, child_path.as_bytes()) || is_at_or_below(child_path.as_bytes(), target)
            });
            // A live child nothing in the log touches is there: the look
            // at `node` covers its list of children.
            Ok(!related || store.view_looked(transaction, &child_path, upto)?.is_some())
        };
        if let Some(live) = node.live {
            let mut child = self.nodes[live as usize].first_child;
            while child != 0 {
                if visible(self, transaction, self.name(child))? {
                    out.field(self.name(child))?;
                }
                child = self.nodes[child as usize].next_sibling;
            }
        }
        for index in 0..upto {
            let entry = transaction.entries[index];
            if !matches!(entry.change, Change::Write | Change::Mkdir) {
                continue;
            }
            let target = transaction.path(&entry);
            let Some(rest) = child_below(target, path) else { continue };
            let mut name = ArrayString::<PATH_MAX>::new();
            let _ = name.try_push_str(rest);
            if !out.has_field(name.as_bytes()) && visible(self, transaction, name.as_bytes())? {
                out.field(name.as_bytes())?;
            }
        }
        Ok(())
    }

    // ---- The wire ----

    /// Answers one request message from `caller` (header and payload, as
    /// a [`MessageAssembler`] collects them) with a reply message written
    /// to `response`; returns the reply's size. Every byte of the request
    /// is checked; anything wrong is answered with an `ERROR` message.
    pub fn handle(&mut self, caller: DomainId, request: &[u8], response: &mut [u8; MESSAGE_MAX]) -> usize {
        let (head, reply) = response.split_at_mut(XSD_SOCKMSG_SIZE);
        let header = request.first_chunk::<XSD_SOCKMSG_SIZE>().map(XsdSockmsg::from_bytes);
        let mut out = Reply { bytes: reply, length: 0 };
        let result = match &header {
            // Too short to carry even a request id: answered with id 0.
            None => Err(Errno::Einval),
            Some(header) => self.dispatch(caller, header, &request[XSD_SOCKMSG_SIZE..], &mut out),
        };
        let header = header.unwrap_or_default();
        let kind = match result {
            Ok(()) => header.r#type,
            Err(error) => {
                out.length = 0;
                // Cannot fail: a name is a few bytes.
                let _ = out.field(xsd_error_name(error).as_bytes());
                XsdSockmsgType::Error.number()
            }
        };
        let length = out.length;
        let reply_header = XsdSockmsg { r#type: kind, req_id: header.req_id, tx_id: header.tx_id, len: length as u32 };
        head.copy_from_slice(&reply_header.to_bytes());
        XSD_SOCKMSG_SIZE + length
    }

    fn dispatch(
        &mut self,
        caller: DomainId,
        header: &XsdSockmsg,
        payload: &[u8],
        out: &mut Reply,
    ) -> Result<(), Errno> {
        if header.len as usize > PAYLOAD_MAX {
            return Err(Errno::E2big);
        }
        if payload.len() != header.len as usize {
            return Err(Errno::Einval);
        }
        let kind = XsdSockmsgType::from_number(header.r#type).ok_or(Errno::Enosys)?;
        use XsdSockmsgType as T;
        // Types that ignore `tx_id`, as in Xen.
        match kind {
            T::Watch | T::Unwatch => {
                let [path, token] = strings(payload)?;
                if kind == T::Watch {
                    self.watch(caller, path, token)?
                } else {
                    self.unwatch(caller, path, token)?
                }
                return out.ok();
            }
            T::GetDomainPath => {
                let [domain] = strings(payload)?;
                let domain = abi::store::parse_decimal(domain.as_bytes()).ok_or(Errno::Einval)?;
                return out.field(home(domain).as_bytes());
            }
            T::ResetWatches => {
                self.reset_watches(caller);
                return out.ok();
            }
            T::Read | T::Write | T::Mkdir | T::Rm | T::Directory | T::GetPerms | T::SetPerms => {}
            T::TransactionStart | T::TransactionEnd => {}
            _ => return Err(Errno::Enosys),
        }
        let open = |store: &Self| {
            find_slot(&store.domains, caller)
                .and_then(|slot| Some((slot, store.domains[slot].transaction(header.tx_id)?)))
        };
        let transaction = match (header.tx_id, open(self)) {
            (0, _) => None,
            (_, None) => return Err(Errno::Enoent),
            (_, Some(found)) => Some(found),
        };
        match (kind, transaction) {
            (T::TransactionStart, Some(_)) => Err(Errno::Ebusy),
            (T::TransactionStart, None) => {
                let id = self.transaction_start(caller)?;
                let mut text = ArrayString::<10>::new();
                // Cannot fail: ten digits.
                let _ = write!(text, "{id}");
                out.field(text.as_bytes())
            }
            (T::TransactionEnd, _) => {
                let commit = match strings(payload)? {
                    ["T"] => true,
                    ["F"] => false,
                    _ => return Err(Errno::Einval),
                };
                self.transaction_end(caller, header.tx_id, commit)?;
                out.ok()
            }
            (_, Some((slot, index))) => {
                let mut open = core::mem::replace(&mut self.domains[slot].transactions[index], Transaction::EMPTY);
                let result = self.transaction_request(caller, &mut open, kind, payload, out);
                self.domains[slot].transactions[index] = open;
                result
            }
            (_, None) => self.live_request(caller, kind, payload, out),
        }
    }

    /// A request outside any transaction.
    fn live_request(
        &mut self,
        caller: DomainId,
        kind: XsdSockmsgType,
        payload: &[u8],
        out: &mut Reply,
    ) -> Result<(), Errno> {
        use XsdSockmsgType as T;
        match kind {
            T::Read => {
                let [path] = strings(payload)?;
                let value = self.read(caller, path)?;
                out.raw(value.as_bytes())
            }
            T::Write => {
                let (path, value) = path_and_value(payload)?;
                self.write(caller, path, value)?;
                out.ok()
            }
            T::Mkdir => {
                let [path] = strings(payload)?;
                self.mkdir(caller, path)?;
                out.ok()
            }
            T::Rm => {
                let [path] = strings(payload)?;
                self.remove(caller, path)?;
                out.ok()
            }
            T::Directory => {
                let [path] = strings(payload)?;
                for name in self.directory(caller, path)? {
                    out.field(name.as_bytes())?;
                }
                Ok(())
            }
            T::GetPerms => {
                let [path] = strings(payload)?;
                let permissions = self.get_permissions(caller, path)?;
                out.permissions(&permissions)
            }
            T::SetPerms => {
                let (path, permissions) = parse_set_permissions(payload)?;
                self.set_permissions(caller, path, &permissions)?;
                out.ok()
            }
            _ => Err(Errno::Enosys),
        }
    }
}

impl<const NODES: usize, const ARENA: usize, const WATCHES: usize, const DOMAINS: usize> Default
    for Store<NODES, ARENA, WATCHES, DOMAINS>
{
    fn default() -> Self {
        Self::new()
    }
}

/// Where a node's value comes from, as a transaction sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ViewValue {
    /// The live node's.
    Live(u16),
    /// The log entry's (a write).
    Logged(usize),
    /// Created empty in the transaction.
    Empty,
}

/// A node as a transaction sees it.
#[derive(Clone, Copy)]
struct ViewNode {
    value: ViewValue,
    permissions: Permissions,
    /// The live node, when the transaction sees it (not one it removed
    /// and made again).
    live: Option<u16>,
}

/// The first `depth` components of an absolute path (`/` for 0).
fn prefix(path: &str, depth: usize) -> &str {
    if depth == 0 {
        return "/";
    }
    let mut seen = 0;
    for (at, byte) in path.bytes().enumerate().skip(1) {
        if byte == b'/' {
            seen += 1;
            if seen == depth {
                return &path[..at];
            }
        }
    }
    path
}

/// The name of the child of `parent` that `path` is at or below, if it is
/// strictly below `parent`.
fn child_below<'a>(path: &'a str, parent: &str) -> Option<&'a str> {
    let rest = if parent == "/" { path.strip_prefix('/')? } else { path.strip_prefix(parent)?.strip_prefix('/')? };
    rest.split('/').next().filter(|name| !name.is_empty())
}

/// A payload of exactly `N` NUL-terminated UTF-8 strings.
fn strings<const N: usize>(payload: &[u8]) -> Result<[&str; N], Errno> {
    let (&last, body) = payload.split_last().ok_or(Errno::Einval)?;
    if last != 0 {
        return Err(Errno::Einval);
    }
    let mut fields = body.split(|&byte| byte == 0);
    let mut found = [""; N];
    for slot in &mut found {
        *slot = core::str::from_utf8(fields.next().ok_or(Errno::Einval)?).map_err(|_| Errno::Einval)?;
    }
    if fields.next().is_some() {
        return Err(Errno::Einval);
    }
    Ok(found)
}

/// A `WRITE` payload: the path and its NUL, then the value (no NUL).
fn path_and_value(payload: &[u8]) -> Result<(&str, &str), Errno> {
    let at = payload.iter().position(|&byte| byte == 0).ok_or(Errno::Einval)?;
    let path = core::str::from_utf8(&payload[..at]).map_err(|_| Errno::Einval)?;
    let value = core::str::from_utf8(&payload[at + 1..]).map_err(|_| Errno::Einval)?;
    Ok((path, value))
}

/// A `SET_PERMS` payload: the path, the owner entry, then up to
/// [`GRANTS_MAX`] grants, each NUL-terminated. More grants than a node
/// holds is `E2BIG`.
fn parse_set_permissions(payload: &[u8]) -> Result<(&str, Permissions), Errno> {
    let (&last, body) = payload.split_last().ok_or(Errno::Einval)?;
    if last != 0 {
        return Err(Errno::Einval);
    }
    let mut fields = body.split(|&byte| byte == 0);
    let path = core::str::from_utf8(fields.next().ok_or(Errno::Einval)?).map_err(|_| Errno::Einval)?;
    let (access, owner) = parse_permission(fields.next().ok_or(Errno::Einval)?)?;
    let mut permissions = Permissions::owned_by(owner);
    permissions.others = access;
    for grant in fields {
        let (access, domain) = parse_permission(grant)?;
        permissions.grant(domain, access)?;
    }
    Ok((path, permissions))
}

/// Decodes a permission entry: an access letter and a decimal domain id.
fn parse_permission(entry: &[u8]) -> Result<(Access, DomainId), Errno> {
    let (&letter, digits) = entry.split_first().ok_or(Errno::Einval)?;
    let access = Access::from_letter(letter).ok_or(Errno::Einval)?;
    let domain = abi::store::parse_decimal(digits).ok_or(Errno::Einval)?;
    Ok((access, domain))
}

/// A reply payload being written.
struct Reply<'a> {
    bytes: &'a mut [u8],
    length: usize,
}

impl Reply<'_> {
    /// Appends bytes as they are; `E2BIG` if they do not fit.
    fn raw(&mut self, bytes: &[u8]) -> Result<(), Errno> {
        let end = self.length + bytes.len();
        if end > self.bytes.len() {
            return Err(Errno::E2big);
        }
        self.bytes[self.length..end].copy_from_slice(bytes);
        self.length = end;
        Ok(())
    }

    /// Appends a string and its NUL; `E2BIG` if it does not fit.
    fn field(&mut self, field: &[u8]) -> Result<(), Errno> {
        self.raw(field)?;
        self.raw(&[0])
    }

    /// The reply of requests that answer nothing else: `OK|`.
    fn ok(&mut self) -> Result<(), Errno> {
        self.field(b"OK")
    }

    /// Whether the strings written so far include `field`.
    fn has_field(&self, field: &[u8]) -> bool {
        self.bytes[..self.length].split(|&byte| byte == 0).any(|written| written == field)
    }

    /// A node's permissions: the owner entry, then each grant.
    fn permissions(&mut self, permissions: &Permissions) -> Result<(), Errno> {
        self.permission(permissions.others, permissions.owner)?;
        for grant in permissions.grants() {
            self.permission(grant.access, grant.domain)?;
        }
        Ok(())
    }

    fn permission(&mut self, access: Access, domain: DomainId) -> Result<(), Errno> {
        let mut entry = ArrayString::<11>::new();
        // Cannot fail: a letter and at most ten digits.
        let _ = write!(entry, "{}{domain}", access.letter() as char);
        self.field(entry.as_bytes())
    }
}

/// Collects one message at a time from a domain's request byte stream.
/// Feed it whatever the ring holds; when [`MessageAssembler::message`]
/// returns a message, hand it to [`Store::handle`], then
/// [`MessageAssembler::clear`]. A message whose header announces more than
/// `XENSTORE_PAYLOAD_MAX` (4096) bytes has its payload skipped, and is
/// given as its header alone (which `handle` answers with `E2BIG`), so the
/// stream stays in step. (Xen's xenstored drops such a connection; see
/// [`abi::store`], Transport.)
pub struct MessageAssembler {
    buffer: [u8; MESSAGE_MAX],
    filled: usize,
    /// Payload bytes of an oversized message still to skip.
    skip: u64,
    oversized: bool,
}

impl MessageAssembler {
    /// An assembler waiting for a message's first byte.
    pub const fn new() -> MessageAssembler {
        MessageAssembler { buffer: [0; MESSAGE_MAX], filled: 0, skip: 0, oversized: false }
    }

    /// The payload length announced by the header, once it is in.
    fn announced(&self) -> Option<usize> {
        let header = self.buffer.first_chunk::<XSD_SOCKMSG_SIZE>()?;
        (self.filled >= XSD_SOCKMSG_SIZE).then(|| XsdSockmsg::from_bytes(header).len as usize)
    }

    /// Takes bytes up to the end of the current message; returns how many
    /// it took (0 while a complete message waits to be cleared).
    pub fn feed(&mut self, bytes: &[u8]) -> usize {
        if self.message().is_some() {
            return 0;
        }
        let mut taken = 0;
        if self.filled < XSD_SOCKMSG_SIZE {
            let count = (XSD_SOCKMSG_SIZE - self.filled).min(bytes.len());
            self.buffer[self.filled..self.filled + count].copy_from_slice(&bytes[..count]);
            self.filled += count;
            taken = count;
            if let Some(length) = self.announced()
                && length > PAYLOAD_MAX
            {
                self.oversized = true;
                self.skip = length as u64;
            }
        }
        let rest = &bytes[taken..];
        if self.oversized {
            let count = (self.skip.min(rest.len() as u64)) as usize;
            self.skip -= count as u64;
            return taken + count;
        }
        if let Some(length) = self.announced() {
            let count = (XSD_SOCKMSG_SIZE + length - self.filled).min(rest.len());
            self.buffer[self.filled..self.filled + count].copy_from_slice(&rest[..count]);
            self.filled += count;
            taken += count;
        }
        taken
    }

    /// The complete message, if one is in.
    pub fn message(&self) -> Option<&[u8]> {
        let length = self.announced()?;
        if self.oversized {
            return (self.skip == 0).then_some(&self.buffer[..XSD_SOCKMSG_SIZE]);
        }
        (self.filled == XSD_SOCKMSG_SIZE + length).then_some(&self.buffer[..self.filled])
    }

    /// Forgets the complete message (or a partial one, when a connection
    /// is reset).
    pub fn clear(&mut self) {
        self.filled = 0;
        self.skip = 0;
        self.oversized = false;
    }
}

impl Default for MessageAssembler {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::xen::io::store::XsdSockmsgType as T;
    use abi::xen::io::store::xsd_error_from_payload;
    use abi::xen::io::xenbus::XenbusState;
    use std::collections::BTreeMap;
    use std::string::{String, ToString};
    use std::vec::Vec;

    /// A small store for most tests: 128 nodes, 8 KiB of arena, 32 watches,
    /// 8 domains.
    type Small = Store<128, 8192, 32, 8>;

    fn small() -> Box<Small> {
        Box::new(Small::new())
    }

    /// Usable as a static, as dom0 keeps it.
    static SHARED: spin::Mutex<Small> = spin::Mutex::new(Small::new());

    /// The tables agree with themselves: usage matches a recount, live
    /// arena bytes match the extents, every node is reachable by its links.
    fn check_consistent<const N: usize, const A: usize, const W: usize, const D: usize>(store: &Store<N, A, W, D>) {
        for slot in store.domains.iter().filter(|slot| slot.used) {
            assert_eq!(slot.usage, store.recount(slot.id), "usage of domain {}", slot.id);
            assert!(slot.queue.used() <= EVENT_QUEUE_BYTES);
        }
        let node_bytes: usize = store.nodes.iter().map(|node| if node.used { node.size() } else { 0 }).sum::<usize>()
            + store.nodes[0].size();
        let watch_bytes: usize = store.watches.iter().filter(|watch| watch.used).map(|watch| watch.size()).sum();
        assert_eq!(store.arena_live, node_bytes + watch_bytes);
        assert!(store.arena_end <= A);
        // Walk the tree from the root; every used node is found once.
        let mut seen = 0;
        let mut stack = vec![ROOT];
        while let Some(node) = stack.pop() {
            seen += 1;
            let mut child = store.nodes[node as usize].first_child;
            while child != 0 {
                assert!(store.nodes[child as usize].used);
                assert_eq!(store.nodes[child as usize].parent, node);
                stack.push(child);
                child = store.nodes[child as usize].next_sibling;
            }
        }
        assert_eq!(seen, store.node_count());
    }

    fn names<const N: usize, const A: usize, const W: usize, const D: usize>(
        store: &Store<N, A, W, D>,
        caller: DomainId,
        path: &str,
    ) -> Vec<String> {
        store.directory(caller, path).unwrap().map(str::to_string).collect()
    }

    fn events<const N: usize, const A: usize, const W: usize, const D: usize>(
        store: &mut Store<N, A, W, D>,
        domain: DomainId,
    ) -> Vec<(String, String)> {
        let mut found = Vec::new();
        let mut message = [0u8; MESSAGE_MAX];
        while let Some(size) = store.next_event_size(domain) {
            assert_eq!(store.pop_event(domain, &mut message), size);
            let (header, payload) = parse_reply(&message[..size]);
            assert_eq!((header.r#type, header.req_id, header.tx_id), (T::WatchEvent.number(), 0, 0));
            let fields = strings_of(payload);
            assert_eq!(fields.len(), 2);
            found.push((fields[0].clone(), fields[1].clone()));
        }
        found
    }

    /// A message of any type with every field NUL-terminated.
    fn message(kind: u32, request_id: u32, fields: &[&[u8]]) -> Vec<u8> {
        let mut payload = Vec::new();
        for field in fields {
            payload.extend_from_slice(field);
            payload.push(0);
        }
        framed(kind, request_id, 0, &payload)
    }

    fn framed(kind: u32, req_id: u32, tx_id: u32, payload: &[u8]) -> Vec<u8> {
        let header = XsdSockmsg { r#type: kind, req_id, tx_id, len: payload.len() as u32 };
        let mut bytes = header.to_bytes().to_vec();
        bytes.extend(payload);
        bytes
    }

    /// A request as xs_wire frames it: strings NUL-terminated, except a
    /// `WRITE`'s value.
    fn request(kind: T, req_id: u32, tx_id: u32, fields: &[&[u8]]) -> Vec<u8> {
        let mut payload = Vec::new();
        for (index, field) in fields.iter().enumerate() {
            payload.extend_from_slice(field);
            if !(kind == T::Write && index == 1) {
                payload.push(0);
            }
        }
        framed(kind.number(), req_id, tx_id, &payload)
    }

    /// Splits a reply into its header and payload, checking the framing.
    fn parse_reply(reply: &[u8]) -> (XsdSockmsg, &[u8]) {
        let header = XsdSockmsg::from_bytes(reply.first_chunk().expect("a header"));
        let payload = &reply[XSD_SOCKMSG_SIZE..];
        assert_eq!(header.len as usize, payload.len());
        assert!(payload.len() <= PAYLOAD_MAX);
        (header, payload)
    }

    /// The NUL-terminated strings of a payload.
    fn strings_of(payload: &[u8]) -> Vec<String> {
        let mut fields = Vec::new();
        if let Some((&last, body)) = payload.split_last() {
            assert_eq!(last, 0, "payload ends with NUL");
            for field in body.split(|&byte| byte == 0) {
                fields.push(String::from_utf8(field.to_vec()).expect("UTF-8"));
            }
        }
        fields
    }

    /// Sends one request over the wire, outside any transaction; the
    /// reply's strings (a `READ`'s value; nothing for `OK`), or its error.
    fn call<const N: usize, const A: usize, const W: usize, const D: usize>(
        store: &mut Store<N, A, W, D>,
        caller: DomainId,
        kind: T,
        fields: &[&str],
    ) -> Result<Vec<String>, Errno> {
        call_in(store, caller, 0, kind, fields)
    }

    /// [`call`] with a transaction id.
    fn call_in<const N: usize, const A: usize, const W: usize, const D: usize>(
        store: &mut Store<N, A, W, D>,
        caller: DomainId,
        tx_id: u32,
        kind: T,
        fields: &[&str],
    ) -> Result<Vec<String>, Errno> {
        let fields: Vec<&[u8]> = fields.iter().map(|field| field.as_bytes()).collect();
        let mut response = [0u8; MESSAGE_MAX];
        let size = store.handle(caller, &request(kind, 77, tx_id, &fields), &mut response);
        let (header, payload) = parse_reply(&response[..size]);
        assert_eq!((header.req_id, header.tx_id), (77, tx_id));
        if header.r#type == T::Error.number() {
            assert_eq!(payload.last(), Some(&0));
            return Err(xsd_error_from_payload(payload).expect("a known error name"));
        }
        assert_eq!(header.r#type, kind.number());
        match kind {
            T::Read => Ok(vec![String::from_utf8(payload.to_vec()).expect("UTF-8")]),
            T::Directory | T::GetPerms | T::TransactionStart | T::GetDomainPath => Ok(strings_of(payload)),
            _ => {
                assert_eq!(payload, b"OK\0");
                Ok(vec![])
            }
        }
    }

    /// Starts a transaction over the wire; its id.
    fn start<const N: usize, const A: usize, const W: usize, const D: usize>(
        store: &mut Store<N, A, W, D>,
        caller: DomainId,
    ) -> Result<u32, Errno> {
        let id = call(store, caller, T::TransactionStart, &[""])?;
        Ok(id[0].parse().expect("a decimal id"))
    }

    /// Ends a transaction over the wire.
    fn end<const N: usize, const A: usize, const W: usize, const D: usize>(
        store: &mut Store<N, A, W, D>,
        caller: DomainId,
        id: u32,
        commit: bool,
    ) -> Result<(), Errno> {
        call_in(store, caller, id, T::TransactionEnd, &[if commit { "T" } else { "F" }]).map(|_| ())
    }

    #[test]
    fn relative_and_absolute_paths_name_the_same_node() {
        let mut store = small();
        store.introduce_domain(3, Quota::GUEST).unwrap();
        store.write(3, "device/vbd/0/state", "1").unwrap();
        assert_eq!(store.read(3, "/local/domain/3/device/vbd/0/state"), Ok("1"));
        assert_eq!(store.read(3, "device/vbd/0/state"), Ok("1"));
        assert_eq!(store.read(DOM0, "/local/domain/3/device/vbd/0/state"), Ok("1"));
        // Relative for dom0 means dom0's home.
        assert_eq!(store.read(DOM0, "device/vbd/0/state"), Err(Errno::Enoent));
        assert_eq!(store.read(3, "device"), Ok(""), "parents are created with empty values");
        assert_eq!(names(&*store, 3, "device/vbd"), ["0"]);
        check_consistent(&*store);
    }

    #[test]
    fn limits_apply_to_the_resolved_path() {
        let mut store = small();
        store.introduce_domain(3, Quota::GUEST).unwrap();
        let prefix = "/local/domain/3/";
        let relative = "a".repeat(PATH_MAX - prefix.len());
        assert_eq!(store.write(3, &relative, "x"), Ok(()));
        let relative = "a".repeat(PATH_MAX - prefix.len() + 1);
        assert_eq!(store.write(3, &relative, "x"), Err(Errno::E2big));
        let mut absolute = String::from(prefix);
        absolute.push_str(&"b".repeat(PATH_MAX + 1 - prefix.len()));
        assert_eq!(store.write(3, &absolute, "x"), Err(Errno::E2big));
        assert_eq!(store.write(3, "v", &"x".repeat(VALUE_MAX)), Ok(()));
        assert_eq!(store.write(3, "v", &"x".repeat(VALUE_MAX + 1)), Err(Errno::E2big));
        assert_eq!(store.write(3, "v", "a\0b"), Err(Errno::Einval));
        assert_eq!(store.watch(3, "v", &"t".repeat(TOKEN_MAX + 1)), Err(Errno::E2big));
        for bad in ["", "/a/", "a//b", "a/../b", "/a b", "é"] {
            assert_eq!(store.write(3, bad, "x"), Err(Errno::Einval), "{bad:?}");
        }
    }

    #[test]
    fn a_guest_cannot_reach_another_home() {
        let mut store = small();
        store.introduce_domain(1, Quota::GUEST).unwrap();
        store.introduce_domain(2, Quota::GUEST).unwrap();
        store.write(2, "secret", "42").unwrap();
        let path = "/local/domain/2/secret";
        assert_eq!(store.read(1, path), Err(Errno::Eacces));
        assert_eq!(store.write(1, path, "0"), Err(Errno::Eacces));
        assert_eq!(store.write(1, "/local/domain/2/new", "0"), Err(Errno::Eacces));
        assert_eq!(store.mkdir(1, "/local/domain/2/new"), Err(Errno::Eacces));
        assert_eq!(store.remove(1, path), Err(Errno::Eacces));
        assert!(store.directory(1, "/local/domain/2").is_err());
        assert_eq!(store.get_permissions(1, path), Err(Errno::Eacces));
        assert_eq!(store.set_permissions(1, path, &Permissions::owned_by(1)), Err(Errno::Eacces));
        // Nor the rest of the tree.
        assert_eq!(store.write(1, "/elsewhere", "x"), Err(Errno::Eacces));
        assert!(store.directory(1, "/local/domain").is_err());
        assert_eq!(store.read(2, path), Ok("42"));
        check_consistent(&*store);
    }

    #[test]
    fn the_backend_tree_needs_a_grant() {
        let mut store = small();
        store.introduce_domain(5, Quota::GUEST).unwrap();
        let dir = "/local/domain/0/backend/vbd/5/0";
        store.mkdir(DOM0, dir).unwrap();
        store.write(DOM0, "/local/domain/0/backend/vbd/5/0/state", "1").unwrap();
        assert_eq!(store.read(5, "/local/domain/0/backend/vbd/5/0/state"), Err(Errno::Eacces));
        let mut permissions = Permissions::owned_by(DOM0);
        permissions.grant(5, Access::Read).unwrap();
        store.set_permissions(DOM0, dir, &permissions).unwrap();
        // The grant is per node: the existing child is still closed ...
        assert_eq!(store.read(5, "/local/domain/0/backend/vbd/5/0/state"), Err(Errno::Eacces));
        // ... and new children inherit it.
        store.write(DOM0, "/local/domain/0/backend/vbd/5/0/sectors", "2048").unwrap();
        assert_eq!(store.read(5, "/local/domain/0/backend/vbd/5/0/sectors"), Ok("2048"));
        assert_eq!(names(&*store, 5, dir), ["state", "sectors"]);
        assert_eq!(store.write(5, "/local/domain/0/backend/vbd/5/0/sectors", "1"), Err(Errno::Eacces));
        assert_eq!(store.write(5, "/local/domain/0/backend/vbd/5/0/new", "1"), Err(Errno::Eacces));
        assert_eq!(store.remove(5, dir), Err(Errno::Eacces));
        // Another guest has no grant.
        store.introduce_domain(6, Quota::GUEST).unwrap();
        assert_eq!(store.read(6, "/local/domain/0/backend/vbd/5/0/sectors"), Err(Errno::Eacces));
        let seen = store.get_permissions(5, "/local/domain/0/backend/vbd/5/0/sectors").unwrap();
        assert_eq!((seen.owner, seen.grants()), (DOM0, &[Grant { domain: 5, access: Access::Read }][..]));
    }

    #[test]
    fn a_write_grant_lets_a_guest_create_nodes_it_owns() {
        let mut store = small();
        store.introduce_domain(5, Quota::GUEST).unwrap();
        store.mkdir(DOM0, "/shared").unwrap();
        let mut permissions = Permissions::owned_by(DOM0);
        permissions.grant(5, Access::Write).unwrap();
        store.set_permissions(DOM0, "/shared", &permissions).unwrap();
        let before = store.domain(5).unwrap().usage.nodes;
        store.write(5, "/shared/a/b", "v").unwrap();
        let made = store.get_permissions(DOM0, "/shared/a/b").unwrap();
        assert_eq!(made.owner, 5, "a guest owns what it creates");
        assert_eq!(made.grants(), permissions.grants(), "and inherits the parent's grants");
        assert_eq!(store.domain(5).unwrap().usage.nodes, before + 2);
        // Write-only on /shared: no listing.
        assert!(store.directory(5, "/shared").is_err());
        check_consistent(&*store);
    }

    #[test]
    fn only_the_owner_changes_permissions_and_only_dom0_changes_owners() {
        let mut store = small();
        store.introduce_domain(1, Quota::GUEST).unwrap();
        store.introduce_domain(2, Quota::GUEST).unwrap();
        store.write(1, "mine", "x").unwrap();
        let mut open = Permissions::owned_by(1);
        open.others = Access::Read;
        assert_eq!(store.set_permissions(1, "mine", &open), Ok(()));
        assert_eq!(store.read(2, "/local/domain/1/mine"), Ok("x"));
        assert_eq!(store.write(2, "/local/domain/1/mine", "y"), Err(Errno::Eacces));
        // Giving it away is refused.
        assert_eq!(store.set_permissions(1, "mine", &Permissions::owned_by(2)), Err(Errno::Eacces));
        // A write grant is not ownership.
        let mut shared = Permissions::owned_by(1);
        shared.grant(2, Access::Both).unwrap();
        store.set_permissions(1, "mine", &shared).unwrap();
        assert_eq!(store.write(2, "/local/domain/1/mine", "y"), Ok(()));
        assert_eq!(store.set_permissions(2, "/local/domain/1/mine", &Permissions::owned_by(2)), Err(Errno::Eacces));
        // dom0 may move it; the node moves between quotas.
        let (one, two) = (store.domain(1).unwrap().usage, store.domain(2).unwrap().usage);
        store.set_permissions(DOM0, "/local/domain/1/mine", &Permissions::owned_by(2)).unwrap();
        assert_eq!(store.domain(1).unwrap().usage.nodes, one.nodes - 1);
        assert_eq!(store.domain(2).unwrap().usage.nodes, two.nodes + 1);
        let mut full = Permissions::owned_by(1);
        for domain in 0..GRANTS_MAX as u32 {
            full.grant(10 + domain, Access::Read).unwrap();
        }
        assert_eq!(full.grant(99, Access::Read), Err(Errno::E2big));
        assert_eq!(full.grant(10, Access::Write), Err(Errno::Einval), "one grant per domain");
        check_consistent(&*store);
    }

    #[test]
    fn dom0_fills_a_home_on_behalf_of_its_guest() {
        let mut store = small();
        store.introduce_domain(4, Quota::GUEST).unwrap();
        assert_eq!(store.get_permissions(DOM0, "/local/domain/4").unwrap(), Permissions::owned_by(4));
        store.write(DOM0, "/local/domain/4/device/vbd/0/backend", "/local/domain/0/backend/vbd/4/0").unwrap();
        assert_eq!(store.get_permissions(4, "device/vbd/0/backend").unwrap().owner, 4);
        assert_eq!(store.domain(4).unwrap().usage.nodes, 5, "home, device, vbd, 0, backend");
        assert_eq!(store.read(4, "device/vbd/0/backend"), Ok("/local/domain/0/backend/vbd/4/0"));
        check_consistent(&*store);
    }

    #[test]
    fn a_guest_cannot_change_what_dom0_says_about_it() {
        let mut store = small();
        store.introduce_domain(4, Quota::GUEST).unwrap();
        // A node dom0 writes in a home with a plain write is the guest's:
        // how `name` and `domid` were written, and the guest rewrote them.
        store.write(DOM0, "/local/domain/4/scratch", "dom0's").unwrap();
        assert_eq!(store.write(4, "scratch", "mine"), Ok(()));
        let usage = store.domain(4).unwrap().usage;
        store.write_read_only("/local/domain/4/name", "web", 4).unwrap();
        store.write_read_only("/local/domain/4/domid", "4", 4).unwrap();
        assert_eq!(store.domain(4).unwrap().usage, usage, "dom0's nodes are not charged to the guest");
        assert_eq!(store.read(4, "name"), Ok("web"));
        assert_eq!(store.read(4, "/local/domain/4/domid"), Ok("4"));
        assert_eq!(store.write(4, "name", "dom0"), Err(Errno::Eacces));
        assert_eq!(store.remove(4, "name"), Err(Errno::Eacces));
        assert_eq!(store.set_permissions(4, "name", &Permissions::owned_by(4)), Err(Errno::Eacces));
        assert_eq!(store.mkdir(4, "name"), Err(Errno::Eacces));
        // Nor by removing its home, which it owns, with them.
        assert_eq!(store.remove(4, "/local/domain/4"), Err(Errno::Eacces));
        assert_eq!(store.read(4, "name"), Ok("web"));
        // What is its own below goes as before, with everything below it.
        store.write(4, "data/a/b", "1").unwrap();
        assert_eq!(store.remove(4, "data"), Ok(()));
        assert_eq!(store.read(4, "data/a/b"), Err(Errno::Enoent));
        // Another guest sees nothing of it; dom0 still removes the home.
        store.introduce_domain(5, Quota::GUEST).unwrap();
        assert_eq!(store.read(5, "/local/domain/4/name"), Err(Errno::Eacces));
        store.remove_domain(4).unwrap();
        assert_eq!(store.read(DOM0, "/local/domain/4/name"), Err(Errno::Enoent));
        check_consistent(&*store);
    }

    #[test]
    fn tree_operations() {
        let mut store = small();
        assert_eq!(store.node_count(), 1);
        store.write(DOM0, "/a/b/c", "1").unwrap();
        store.write(DOM0, "/a/b/d", "2").unwrap();
        store.write(DOM0, "/a/e", "3").unwrap();
        assert_eq!(store.mkdir(DOM0, "/a/b"), Ok(()), "mkdir of an existing node is fine");
        assert_eq!(store.read(DOM0, "/a/b/c"), Ok("1"), "and changes nothing");
        store.mkdir(DOM0, "/a/f").unwrap();
        assert_eq!(store.read(DOM0, "/a/f"), Ok(""));
        assert_eq!(names(&*store, DOM0, "/a"), ["b", "e", "f"]);
        assert_eq!(names(&*store, DOM0, "/"), ["a"]);
        store.write(DOM0, "/a/b/c", "longer value").unwrap();
        assert_eq!(store.read(DOM0, "/a/b/c"), Ok("longer value"));
        store.write(DOM0, "/a/b/c", "").unwrap();
        assert_eq!(store.read(DOM0, "/a/b/c"), Ok(""));
        store.write(DOM0, "/", "root value").unwrap();
        assert_eq!(store.read(DOM0, "/"), Ok("root value"));
        store.write(DOM0, "/", "").unwrap();
        assert_eq!(store.remove(DOM0, "/a/b"), Ok(()));
        assert_eq!(store.read(DOM0, "/a/b/c"), Err(Errno::Enoent));
        assert_eq!(store.remove(DOM0, "/a/b"), Err(Errno::Enoent));
        assert_eq!(names(&*store, DOM0, "/a"), ["e", "f"]);
        assert_eq!(store.remove(DOM0, "/"), Err(Errno::Einval));
        store.remove(DOM0, "/a").unwrap();
        assert_eq!(store.node_count(), 1);
        assert_eq!(store.arena_bytes(), 0);
        check_consistent(&*store);
    }

    #[test]
    fn watches_fire_at_and_below_the_watched_path_with_the_token() {
        let mut store = small();
        store.introduce_domain(3, Quota::GUEST).unwrap();
        store.watch(3, "device", "dev-token").unwrap();
        assert_eq!(
            events(&mut *store, 3),
            [("/local/domain/3/device".to_string(), "dev-token".to_string())],
            "first event at once"
        );
        store.write(3, "device/vbd/0/state", "1").unwrap();
        store.write(3, "device", "x").unwrap();
        store.write(3, "devices", "not below").unwrap();
        store.write(3, "other", "not below").unwrap();
        store.mkdir(3, "device/vbd/0/state").unwrap(); // exists: no change, no event
        assert_eq!(
            events(&mut *store, 3),
            [
                ("/local/domain/3/device/vbd/0/state".to_string(), "dev-token".to_string()),
                ("/local/domain/3/device".to_string(), "dev-token".to_string()),
            ]
        );
        // Two watches on one path, each with its token.
        store.watch(3, "device", "second").unwrap();
        events(&mut *store, 3);
        store.write(3, "device/vbd", "y").unwrap();
        let mut tokens: Vec<String> = events(&mut *store, 3).into_iter().map(|(_, token)| token).collect();
        tokens.sort();
        assert_eq!(tokens, ["dev-token", "second"]);
        // Permission changes fire too.
        store.set_permissions(3, "device", &Permissions::owned_by(3)).unwrap();
        assert_eq!(events(&mut *store, 3).len(), 2);
    }

    #[test]
    fn unwatch_and_duplicates() {
        let mut store = small();
        store.introduce_domain(3, Quota::GUEST).unwrap();
        store.watch(3, "a", "t").unwrap();
        assert_eq!(store.watch(3, "/local/domain/3/a", "t"), Err(Errno::Eexist), "relative and absolute are one watch");
        store.watch(3, "a", "u").unwrap();
        assert_eq!(store.domain(3).unwrap().usage.watches, 2);
        events(&mut *store, 3);
        store.unwatch(3, "a", "t").unwrap();
        assert_eq!(store.unwatch(3, "a", "t"), Err(Errno::Enoent));
        assert_eq!(store.unwatch(3, "b", "u"), Err(Errno::Enoent));
        store.write(3, "a", "1").unwrap();
        assert_eq!(events(&mut *store, 3), [("/local/domain/3/a".to_string(), "u".to_string())]);
        store.unwatch(3, "a", "u").unwrap();
        store.write(3, "a", "2").unwrap();
        assert!(events(&mut *store, 3).is_empty());
        assert_eq!(store.domain(3).unwrap().usage.watches, 0);
        check_consistent(&*store);
    }

    #[test]
    fn events_only_reach_domains_that_may_read_the_node() {
        let mut store = small();
        store.introduce_domain(5, Quota::GUEST).unwrap();
        store.introduce_domain(6, Quota::GUEST).unwrap();
        store.watch(6, "/local/domain/5", "spy").unwrap();
        store.watch(6, "/", "everything").unwrap();
        events(&mut *store, 6);
        store.write(5, "secret", "1").unwrap();
        store.write(DOM0, "/local/domain/0/backend/vbd/5/0/state", "1").unwrap();
        assert!(events(&mut *store, 6).is_empty());
        // dom0 watches everything and may read it all.
        store.watch(DOM0, "/", "all").unwrap();
        events(&mut *store, DOM0);
        store.write(5, "secret", "2").unwrap();
        assert_eq!(events(&mut *store, DOM0), [("/local/domain/5/secret".to_string(), "all".to_string())]);
        // Made readable, it fires for 6 as well.
        let mut open = Permissions::owned_by(5);
        open.grant(6, Access::Read).unwrap();
        store.set_permissions(5, "secret", &open).unwrap();
        store.write(5, "secret", "3").unwrap();
        assert_eq!(events(&mut *store, 6).len(), 4, "two watches, two changes");
    }

    #[test]
    fn removal_fires_watches_above_and_below() {
        let mut store = small();
        store.write(DOM0, "/a/b/c/d", "1").unwrap();
        store.watch(DOM0, "/a", "above").unwrap();
        store.watch(DOM0, "/a/b/c/d", "below").unwrap();
        store.watch(DOM0, "/a/b/c/d/not-there", "deeper").unwrap();
        store.watch(DOM0, "/a/x", "beside").unwrap();
        events(&mut *store, DOM0);
        store.remove(DOM0, "/a/b").unwrap();
        let mut found = events(&mut *store, DOM0);
        found.sort();
        assert_eq!(
            found,
            [
                ("/a/b".to_string(), "above".to_string()),
                ("/a/b/c/d".to_string(), "below".to_string()),
                ("/a/b/c/d/not-there".to_string(), "deeper".to_string()),
            ]
        );
    }

    #[test]
    fn node_byte_and_watch_quotas() {
        let mut store = small();
        let quota = Quota { nodes: 6, bytes: 200, watches: 2 };
        store.introduce_domain(7, quota).unwrap();
        // Home plus five.
        for key in 0..5 {
            store.write(7, &format!("k{key}"), "v").unwrap();
        }
        assert_eq!(store.write(7, "k5", "v"), Err(Errno::Enospc));
        assert_eq!(store.write(7, "deep/er", "v"), Err(Errno::Enospc), "all parents or nothing");
        assert_eq!(store.read(7, "deep"), Err(Errno::Enoent));
        store.remove(7, "k4").unwrap();
        store.write(7, "k5", "v").unwrap();
        // Bytes: grow a value past 200 bytes in all.
        let used = store.domain(7).unwrap().usage.bytes as usize;
        let room = 200 - used;
        assert_eq!(store.write(7, "k0", &"x".repeat(room + 2)), Err(Errno::Enospc));
        assert_eq!(store.write(7, "k0", &"x".repeat(room + 1)), Ok(()), "the old value's byte is returned");
        assert_eq!(store.domain(7).unwrap().usage.bytes, 200);
        store.write(7, "k0", "").unwrap();
        // Watches.
        store.watch(7, "a", "1").unwrap();
        store.watch(7, "b", "2").unwrap();
        assert_eq!(store.watch(7, "c", "3"), Err(Errno::Enospc));
        store.unwatch(7, "a", "1").unwrap();
        store.watch(7, "c", "3").unwrap();
        // dom0 is not limited, and what it makes for the guest counts.
        store.write(DOM0, "/local/domain/7/from-dom0", "v").unwrap();
        assert_eq!(store.domain(7).unwrap().usage.nodes, 7);
        assert_eq!(store.write(7, "k9", "v"), Err(Errno::Enospc));
        check_consistent(&*store);
    }

    #[test]
    fn event_queues_are_bounded_and_drop_the_oldest() {
        let mut store = small();
        store.introduce_domain(3, Quota::GUEST).unwrap();
        store.watch(3, "k", "token").unwrap();
        for round in 0..1000 {
            store.write(3, "k", &round.to_string()).unwrap();
            assert!(store.domains[find_slot(&store.domains, 3).unwrap()].queue.used() <= EVENT_QUEUE_BYTES);
        }
        let report = store.domain(3).unwrap();
        // Each event: 2 + "/local/domain/3/k\0" (18) + "token\0" (6) = 26 bytes.
        let fits = EVENT_QUEUE_BYTES / 26;
        assert_eq!(report.pending_events as usize, fits);
        assert_eq!(report.dropped_events, 1001 - fits as u64);
        assert_eq!(events(&mut *store, 3).len(), fits);
        assert_eq!(store.domain(3).unwrap().pending_events, 0);
        // Maximal events still fit and cycle.
        let long = "p".repeat(PATH_MAX - "/local/domain/3/".len());
        let token = "t".repeat(TOKEN_MAX);
        store.watch(3, &long, &token).unwrap();
        for _ in 0..10 {
            store.write(3, &long, "v").unwrap();
        }
        assert_eq!(store.domain(3).unwrap().pending_events, 3);
        for (path, found) in events(&mut *store, 3) {
            assert_eq!((path.len(), found), (PATH_MAX, token.clone()));
        }
        // Nobody else's queue is touched.
        assert_eq!(store.next_event_size(DOM0), None);
    }

    /// Every operation a guest sends about another domain's tree, and
    /// about the tree outside its home, is answered the same whether the
    /// node exists or not: no operation is an existence oracle.
    #[test]
    fn refusals_do_not_reveal_whether_a_node_exists() {
        let mut store = small();
        for domain in [5, 6] {
            store.introduce_domain(domain, Quota::GUEST).unwrap();
        }
        store.write(DOM0, "/local/domain/6/device/vif/0/state", "1").unwrap();
        store.write(DOM0, "/local/domain/0/backend/vif/6/0/state", "2").unwrap();
        let mut permissions = Permissions::owned_by(DOM0);
        permissions.grant(5, Access::Read).unwrap();
        store.mkdir(DOM0, "/local/domain/0/backend/vif/5/0").unwrap();
        store.set_permissions(DOM0, "/local/domain/0/backend/vif/5/0", &permissions).unwrap();
        // (existing, missing) pairs guest 5 may not see.
        let pairs = [
            ("/local/domain/6/device/vif/0", "/local/domain/6/device/vbd/0"),
            ("/local/domain/6/device/vif/0/state", "/local/domain/6/device/vif/1/state"),
            ("/local/domain/6", "/local/domain/7"),
            ("/local/domain/0/backend/vif/6/0", "/local/domain/0/backend/vif/7/0"),
            ("/local/domain/0/backend/vif/6", "/local/domain/0/backend/vbd/5"),
            ("/local", "/nothing"),
        ];
        let operations = [T::Read, T::Mkdir, T::Write, T::Rm, T::Directory, T::GetPerms, T::SetPerms];
        for (existing, missing) in pairs {
            for op in operations {
                let ask = |store: &mut Small, path: &str| {
                    let fields: &[&str] = match op {
                        T::Write => &[path, "x"],
                        T::SetPerms => &[path, "b5"],
                        _ => &[path],
                    };
                    call(store, 5, op, fields)
                };
                assert_eq!(ask(&mut store, existing), Err(Errno::Eacces), "{op:?} {existing}");
                assert_eq!(ask(&mut store, missing), Err(Errno::Eacces), "{op:?} {missing}");
            }
        }
        // Where the guest may look, missing nodes are reported as missing.
        assert_eq!(store.read(5, "/local/domain/0/backend/vif/5/0/nothing"), Err(Errno::Enoent));
        assert_eq!(store.read(5, "nothing"), Err(Errno::Enoent));
        // Nothing was changed by the refused requests.
        assert_eq!(store.read(DOM0, "/local/domain/6/device/vif/0/state"), Ok("1"));
        assert_eq!(store.read(DOM0, "/local/domain/6/device/vbd"), Err(Errno::Enoent));
        assert_eq!(store.read(DOM0, "/local/domain/7"), Err(Errno::Enoent));
        check_consistent(&*store);
    }

    #[test]
    fn a_full_store_refuses_with_enospc_and_recovers() {
        let mut store = small();
        let mut written = 0;
        let error = loop {
            match store.write(DOM0, &format!("/k{written}"), "0123456789") {
                Ok(()) => written += 1,
                Err(error) => break error,
            }
        };
        assert_eq!(error, Errno::Enospc);
        assert_eq!(written, 127, "the node table is the limit here");
        check_consistent(&*store);
        store.remove(DOM0, "/k5").unwrap();
        store.write(DOM0, "/k5", "again").unwrap();
        // Now the arena: fewer, bigger values.
        let mut store = small();
        let value = "v".repeat(2000);
        let mut written = 0;
        while store.write(DOM0, &format!("/big{written}"), &value).is_ok() {
            written += 1;
        }
        assert_eq!(written, 8192 / 2010);
        assert_eq!(store.write(DOM0, "/one-more", &value), Err(Errno::Enospc));
        store.remove(DOM0, "/big0").unwrap();
        store.write(DOM0, "/one-more", &value).unwrap();
        check_consistent(&*store);
    }

    use crate::test_random::XorShift;

    #[test]
    fn the_tree_matches_a_model_through_many_changes() {
        // Random writes and removes in a small arena force compaction
        // often; every value must survive it.
        let mut store = small();
        let mut model: BTreeMap<String, String> = BTreeMap::new();
        let mut random = XorShift(0x9e37_79b9_7f4a_7c15);
        let paths = ["/a", "/a/b", "/a/b/c", "/a/d", "/e", "/e/f", "/e/f/g", "/h"];
        for step in 0..20_000 {
            let path = paths[random.below(paths.len())];
            if random.below(4) == 0 {
                let result = store.remove(DOM0, path);
                let present = model.contains_key(path);
                assert_eq!(result.is_ok(), present, "step {step}");
                model.retain(|key, _| !is_at_or_below(key.as_bytes(), path.as_bytes()));
            } else {
                let value = "z".repeat(random.below(800));
                store.write(DOM0, path, &value).unwrap();
                // Parents appear with empty values.
                let mut parent = String::new();
                for name in components(path) {
                    parent.push('/');
                    parent.push_str(core::str::from_utf8(name).unwrap());
                    model.entry(parent.clone()).or_default();
                }
                model.insert(path.to_string(), value);
            }
            for path in paths {
                assert_eq!(store.read(DOM0, path).ok(), model.get(path).map(String::as_str), "step {step}: {path}");
            }
        }
        check_consistent(&*store);
    }

    #[test]
    fn remove_domain_cleans_up() {
        let mut store = small();
        store.introduce_domain(5, Quota::GUEST).unwrap();
        store.introduce_domain(6, Quota::GUEST).unwrap();
        store.write(5, "device/vbd/0/state", "4").unwrap();
        store.watch(5, "device", "mine").unwrap();
        store.write(5, "pending", "event").unwrap();
        // A node 5 owns elsewhere, and grants naming 5.
        let mut shared = Permissions::owned_by(DOM0);
        shared.grant(5, Access::Both).unwrap();
        store.mkdir(DOM0, "/shared").unwrap();
        store.set_permissions(DOM0, "/shared", &shared).unwrap();
        store.write(5, "/shared/left-behind", "x").unwrap();
        // Others watching 5's home (dom0) see it go.
        store.watch(DOM0, "/local/domain/5/device/vbd/0/state", "backend").unwrap();
        store.watch(6, "/local/domain/5", "nosy").unwrap();
        events(&mut *store, DOM0);
        events(&mut *store, 6);
        assert!(store.domain(5).unwrap().pending_events > 0);

        store.remove_domain(5).unwrap();
        assert_eq!(store.domain(5), None, "record, quota and queued events are gone");
        assert!(store.watches.iter().all(|watch| !watch.used || watch.domain != 5));
        assert_eq!(store.read(DOM0, "/local/domain/5"), Err(Errno::Enoent));
        assert_eq!(
            events(&mut *store, DOM0),
            [("/local/domain/5/device/vbd/0/state".to_string(), "backend".to_string())]
        );
        assert!(events(&mut *store, 6).is_empty(), "6 could not read 5's home");
        let left = store.get_permissions(DOM0, "/shared/left-behind").unwrap();
        assert_eq!(left.owner, DOM0);
        assert!(left.grants().is_empty(), "no grant survives for a reused id");
        assert!(store.get_permissions(DOM0, "/shared").unwrap().grants().is_empty());
        // A new domain 5 starts clean.
        store.introduce_domain(5, Quota::GUEST).unwrap();
        assert_eq!(store.domain(5).unwrap().usage, Usage { nodes: 1, bytes: 5, watches: 0 });
        assert_eq!(store.read(5, "/shared/left-behind"), Err(Errno::Eacces));
        assert_eq!(store.remove_domain(DOM0), Err(Errno::Einval));
        check_consistent(&*store);
    }

    #[test]
    fn every_operation_over_the_wire() {
        let mut store = small();
        store.introduce_domain(2, Quota::GUEST).unwrap();
        use T::*;
        assert_eq!(call(&mut *store, 2, Write, &["dev/a", "hello"]), Ok(vec![]));
        assert_eq!(call(&mut *store, 2, Read, &["dev/a"]), Ok(vec!["hello".to_string()]));
        assert_eq!(call(&mut *store, 2, Mkdir, &["dev/b"]), Ok(vec![]));
        assert_eq!(call(&mut *store, 2, Write, &["dev/c", ""]), Ok(vec![]));
        assert_eq!(call(&mut *store, 2, Read, &["dev/c"]), Ok(vec![String::new()]));
        assert_eq!(call(&mut *store, 2, Directory, &["dev"]), Ok(vec!["a".into(), "b".into(), "c".into()]));
        assert_eq!(call(&mut *store, 2, Directory, &["dev/a"]), Ok(vec![]));
        assert_eq!(call(&mut *store, 2, GetPerms, &["dev/a"]), Ok(vec!["n2".to_string()]));
        assert_eq!(call(&mut *store, 2, SetPerms, &["dev/a", "r2", "b0", "w7"]), Ok(vec![]));
        assert_eq!(call(&mut *store, 2, GetPerms, &["dev/a"]), Ok(vec!["r2".into(), "b0".into(), "w7".into()]));
        assert_eq!(call(&mut *store, 2, SetPerms, &["dev/a", "n3"]), Err(Errno::Eacces));
        assert_eq!(call(&mut *store, 2, SetPerms, &["dev/a", "n2", "r1", "r1"]), Err(Errno::Einval));
        assert_eq!(call(&mut *store, 2, SetPerms, &["dev/a", "n2", "r1", "r3", "r4", "r5", "r6"]), Err(Errno::E2big));
        assert_eq!(call(&mut *store, 2, SetPerms, &["dev/a", "x2"]), Err(Errno::Einval));
        assert_eq!(call(&mut *store, 2, SetPerms, &["dev/a", "r"]), Err(Errno::Einval));
        assert_eq!(call(&mut *store, 2, SetPerms, &["dev/a"]), Err(Errno::Einval));
        assert_eq!(call(&mut *store, 2, Watch, &["dev", "tok"]), Ok(vec![]));
        assert_eq!(call(&mut *store, 2, Watch, &["dev", "tok"]), Err(Errno::Eexist));
        assert_eq!(events(&mut *store, 2), [("/local/domain/2/dev".to_string(), "tok".to_string())]);
        assert_eq!(call(&mut *store, 2, Rm, &["dev/b"]), Ok(vec![]));
        assert_eq!(events(&mut *store, 2), [("/local/domain/2/dev/b".to_string(), "tok".to_string())]);
        assert_eq!(call(&mut *store, 2, Unwatch, &["dev", "tok"]), Ok(vec![]));
        assert_eq!(call(&mut *store, 2, Unwatch, &["dev", "tok"]), Err(Errno::Enoent));
        assert_eq!(call(&mut *store, 2, Read, &["dev/b"]), Err(Errno::Enoent));
        assert_eq!(call(&mut *store, 2, GetDomainPath, &["7"]), Ok(vec!["/local/domain/7".to_string()]));
        assert_eq!(call(&mut *store, 2, GetDomainPath, &["x"]), Err(Errno::Einval));
        // Missing, but where guest 2 may not look: refused, not reported missing.
        assert_eq!(call(&mut *store, 2, Read, &["/local/domain/0"]), Err(Errno::Eacces));
        assert_eq!(call(&mut *store, 2, Read, &["/"]), Err(Errno::Eacces));
        // A listing too long for one message.
        for index in 0..20 {
            let name = format!("{index:0>250}");
            store.mkdir(DOM0, &format!("/wide/{name}")).unwrap();
        }
        assert_eq!(call(&mut *store, DOM0, Directory, &["/wide"]), Err(Errno::E2big));
        // Through the static, as dom0 would hold it.
        let mut shared = SHARED.lock();
        assert_eq!(call(&mut *shared, DOM0, Write, &["/x", "1"]), Ok(vec![]));
    }

    /// Sends `request` (type, req_id 0x01020304, tx_id `tx_id`, payload)
    /// and returns the whole reply's bytes.
    fn exchange(store: &mut Small, caller: DomainId, kind: u32, tx_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut response = [0u8; MESSAGE_MAX];
        let size = store.handle(caller, &framed(kind, 0x0102_0304, tx_id, payload), &mut response);
        response[..size].to_vec()
    }

    /// The bytes a reply should be: the header, then `payload`.
    fn expected(kind: u32, tx_id: u32, payload: &[u8]) -> Vec<u8> {
        framed(kind, 0x0102_0304, tx_id, payload)
    }

    /// Every reply, byte for byte, as Xen's xs_wire has it.
    #[test]
    fn replies_are_xs_wire_byte_for_byte() {
        let mut store = small();
        store.introduce_domain(2, Quota::GUEST).unwrap();
        let store = &mut *store;
        let check = |store: &mut Small, kind: T, tx_id: u32, payload: &[u8], reply_kind: T, reply: &[u8]| {
            let got = exchange(store, 2, kind.number(), tx_id, payload);
            assert_eq!(got, expected(reply_kind.number(), tx_id, reply), "{kind:?} {payload:?}");
        };
        // The header: type 11 (WRITE), the request's id and tx_id, the length.
        check(store, T::Write, 0, b"k\0value", T::Write, b"OK\0");
        assert_eq!(&expected(T::Write.number(), 0, b"OK\0")[..16], [11, 0, 0, 0, 4, 3, 2, 1, 0, 0, 0, 0, 3, 0, 0, 0]);
        check(store, T::Read, 0, b"k\0", T::Read, b"value");
        check(store, T::Write, 0, b"k\0", T::Write, b"OK\0");
        check(store, T::Read, 0, b"k\0", T::Read, b"");
        check(store, T::Mkdir, 0, b"d/e\0", T::Mkdir, b"OK\0");
        check(store, T::Write, 0, b"d/f\0x", T::Write, b"OK\0");
        check(store, T::Directory, 0, b"d\0", T::Directory, b"e\0f\0");
        check(store, T::Directory, 0, b"d/e\0", T::Directory, b"");
        check(store, T::GetPerms, 0, b"d\0", T::GetPerms, b"n2\0");
        check(store, T::SetPerms, 0, b"d\0r2\0b0\0w7\0", T::SetPerms, b"OK\0");
        check(store, T::GetPerms, 0, b"d\0", T::GetPerms, b"r2\0b0\0w7\0");
        check(store, T::Rm, 0, b"d/e\0", T::Rm, b"OK\0");
        check(store, T::Watch, 0, b"d\0tok\0", T::Watch, b"OK\0");
        check(store, T::Unwatch, 0, b"d\0tok\0", T::Unwatch, b"OK\0");
        check(store, T::GetDomainPath, 0, b"12\0", T::GetDomainPath, b"/local/domain/12\0");
        check(store, T::ResetWatches, 0, b"\0", T::ResetWatches, b"OK\0");
        // Errors: type 16, the name and a NUL, req_id and tx_id echoed.
        check(store, T::Read, 0, b"missing\0", T::Error, b"ENOENT\0");
        check(store, T::Read, 9, b"k\0", T::Error, b"ENOENT\0");
        check(store, T::Read, 0, b"/local/domain/0\0", T::Error, b"EACCES\0");
        check(store, T::Read, 0, b"k", T::Error, b"EINVAL\0");
        check(store, T::Watch, 0, b"d\0tok\0", T::Watch, b"OK\0");
        check(store, T::Watch, 0, b"d\0tok\0", T::Error, b"EEXIST\0");
        check(store, T::Introduce, 0, b"3\0", T::Error, b"ENOSYS\0");
        check(store, T::Control, 0, b"\0", T::Error, b"ENOSYS\0");
        let got = exchange(store, 2, 99, 0, b"\0");
        assert_eq!(got, expected(T::Error.number(), 0, b"ENOSYS\0"));
        // A watch event: type 15, path and token, req_id and tx_id 0.
        let mut event = [0u8; MESSAGE_MAX];
        while store.next_event_size(2).is_some() {
            store.pop_event(2, &mut event);
        }
        store.write(2, "d", "changed").unwrap();
        let size = store.pop_event(2, &mut event);
        assert_eq!(event[..size], *framed(T::WatchEvent.number(), 0, 0, b"/local/domain/2/d\0tok\0"));
        // Transactions: the id in decimal and a NUL; the end's OK.
        check(store, T::TransactionStart, 0, b"\0", T::TransactionStart, b"1\0");
        check(store, T::TransactionStart, 0, b"\0", T::TransactionStart, b"2\0");
        check(store, T::Write, 1, b"k\0in", T::Write, b"OK\0");
        check(store, T::Read, 1, b"k\0", T::Read, b"in");
        check(store, T::TransactionEnd, 1, b"T\0", T::TransactionEnd, b"OK\0");
        check(store, T::TransactionEnd, 2, b"F\0", T::TransactionEnd, b"OK\0");
        check(store, T::TransactionEnd, 2, b"F\0", T::Error, b"ENOENT\0");
        check(store, T::Read, 0, b"k\0", T::Read, b"in");
    }

    #[test]
    fn malformed_messages_get_errors() {
        let mut store = small();
        store.introduce_domain(2, Quota::GUEST).unwrap();
        let mut response = [0u8; MESSAGE_MAX];
        let check = |store: &mut Small, request: &[u8], expected: Errno| {
            let mut response = [0u8; MESSAGE_MAX];
            let size = store.handle(2, request, &mut response);
            let (header, payload) = parse_reply(&response[..size]);
            assert_eq!(header.r#type, T::Error.number(), "{request:?}");
            assert_eq!(strings_of(payload), [expected.name()], "{request:?}");
        };
        let read = T::Read.number();
        check(&mut store, &[], Errno::Einval);
        check(&mut store, &[1, 0, 0], Errno::Einval);
        let mut good = message(read, 9, &[b"a"]);
        // Length longer or shorter than the bytes given.
        good[12] = 9;
        check(&mut store, &good, Errno::Einval);
        good[12] = 1;
        check(&mut store, &good, Errno::Einval);
        // Oversized length: the payload limit does not count the header.
        let mut big = XsdSockmsg { r#type: read, req_id: 1, tx_id: 0, len: PAYLOAD_MAX as u32 + 1 }.to_bytes().to_vec();
        check(&mut store, &big, Errno::E2big);
        big.resize(MESSAGE_MAX + 1, b'a');
        check(&mut store, &big, Errno::E2big);
        // A full 4096-byte payload is fine (a write of a long value).
        let mut path = b"v\0".to_vec();
        path.resize(PAYLOAD_MAX, b'x');
        let size = store.handle(DOM0, &framed(T::Write.number(), 1, 0, &path), &mut response);
        assert_eq!(parse_reply(&response[..size]).1, b"E2BIG\0", "over VALUE_MAX, but framed and parsed");
        // Missing final NUL, bad UTF-8, wrong field counts.
        let mut unterminated = message(read, 1, &[b"a"]);
        unterminated.pop();
        unterminated[12] -= 1;
        check(&mut store, &unterminated, Errno::Einval);
        check(&mut store, &framed(T::Write.number(), 1, 0, b"a\0\xff\xfe"), Errno::Einval);
        check(&mut store, &framed(T::Write.number(), 1, 0, b"a"), Errno::Einval);
        check(&mut store, &framed(T::Write.number(), 1, 0, b"a\0b\0"), Errno::Einval);
        check(&mut store, &message(read, 1, &[]), Errno::Einval);
        check(&mut store, &message(read, 1, &[b"a", b"b"]), Errno::Einval);
        check(&mut store, &message(T::Watch.number(), 1, &[b"a"]), Errno::Einval);
        check(&mut store, &message(T::Watch.number(), 1, &[b"a", b"b", b"c"]), Errno::Einval);
        check(&mut store, &message(T::TransactionEnd.number(), 1, &[b"X"]), Errno::Einval);
        // Bad paths.
        check(&mut store, &message(read, 1, &[b""]), Errno::Einval);
        check(&mut store, &message(read, 1, &[b"a//b"]), Errno::Einval);
        check(&mut store, &message(read, 1, &[&[b'a'; PATH_MAX + 1]]), Errno::E2big);
        // Types a client may not send, or that do not exist: as Xen's
        // xenstored, ENOSYS.
        check(&mut store, &message(T::WatchEvent.number(), 1, &[b"a", b"b"]), Errno::Enosys);
        check(&mut store, &message(T::Error.number(), 1, &[b"EINVAL"]), Errno::Enosys);
        check(&mut store, &message(20, 1, &[b"a"]), Errno::Enosys);
        check(&mut store, &message(99, 1, &[b"a"]), Errno::Enosys);
        // A transaction that is not open; a start inside one.
        let mut transaction = message(read, 1, &[b"a"]);
        transaction[8] = 1;
        check(&mut store, &transaction, Errno::Enoent);
        let id = start(&mut *store, 2).unwrap();
        let mut nested = message(T::TransactionStart.number(), 1, &[b""]);
        nested[8..12].copy_from_slice(&id.to_le_bytes());
        check(&mut store, &nested, Errno::Ebusy);
        // Another domain's transaction id is not the caller's.
        let mut foreign = message(read, 1, &[b"a"]);
        foreign[8..12].copy_from_slice(&id.to_le_bytes());
        let size = store.handle(DOM0, &foreign, &mut response);
        assert_eq!(parse_reply(&response[..size]).1, b"ENOENT\0");
    }

    /// Checks a reply to `request` is well formed: an ERROR with a name
    /// from Xen's table, or the request's own type (one a client may send),
    /// `req_id` and `tx_id` echoed.
    fn check_reply(request: &[u8], reply: &[u8]) {
        let (header, payload) = parse_reply(reply);
        let sent = request.first_chunk::<XSD_SOCKMSG_SIZE>().map(XsdSockmsg::from_bytes).unwrap_or_default();
        assert_eq!((header.req_id, header.tx_id), (sent.req_id, sent.tx_id));
        if header.r#type == T::Error.number() {
            assert_eq!(payload.last(), Some(&0));
            assert!(xsd_error_from_payload(payload).is_some(), "{payload:?}");
        } else {
            assert_eq!(header.r#type, sent.r#type);
            let kind = T::from_number(sent.r#type).unwrap();
            assert!(!matches!(kind, T::WatchEvent | T::Error));
            if kind != T::Read {
                assert_eq!(payload.last().map_or(0, |&byte| byte), 0, "strings end with NUL");
            }
        }
    }

    /// The types a hostile client sends most: every one the store serves.
    const KINDS: [T; 13] = [
        T::Read,
        T::Write,
        T::Mkdir,
        T::Rm,
        T::Directory,
        T::GetPerms,
        T::SetPerms,
        T::Watch,
        T::Unwatch,
        T::GetDomainPath,
        T::TransactionStart,
        T::TransactionEnd,
        T::ResetWatches,
    ];

    fn random_request(random: &mut XorShift) -> Vec<u8> {
        const PIECES: [&[u8]; 17] = [
            b"device/vbd/0/state",
            b"/local/domain/1/x",
            b"/local/domain/2/secret",
            b"/local/domain/0/backend",
            b"/",
            b"a",
            b"a/b",
            b"4",
            b"b1",
            b"r0",
            b"n2",
            b"T",
            b"F",
            b"",
            b"..",
            b"\xff",
            b"a//b",
        ];
        if random.below(8) == 0 {
            let length = random.below(48);
            return (0..length).map(|_| random.next() as u8).collect();
        }
        let kind =
            if random.below(10) == 0 { random.below(30) as u32 } else { KINDS[random.below(KINDS.len())].number() };
        // Mostly the field count the kind wants, so that requests get past
        // the framing checks into the store.
        let count = match (random.below(4), T::from_number(kind)) {
            (0, _) | (_, None) => random.below(5),
            (_, Some(T::Write | T::Watch | T::Unwatch)) => 2,
            (_, Some(T::SetPerms)) => 2 + random.below(3),
            _ => 1,
        };
        let fields: Vec<&[u8]> = (0..count).map(|_| PIECES[random.below(PIECES.len())]).collect();
        // Transactions 1 to 5 are open often (ids start at 1), 0 mostly.
        let tx_id = if random.below(3) == 0 { random.below(6) as u32 } else { 0 };
        let mut bytes = match T::from_number(kind) {
            Some(kind) => request(kind, random.next() as u32, tx_id, &fields),
            None => message(kind, random.next() as u32, &fields),
        };
        for _ in 0..random.below(4).saturating_sub(1) {
            match random.below(4) {
                0 if !bytes.is_empty() => {
                    let at = random.below(bytes.len());
                    bytes[at] = random.next() as u8;
                }
                1 => bytes.truncate(random.below(bytes.len() + 1)),
                2 => bytes.push(random.next() as u8),
                _ if bytes.len() > 12 => bytes[12] = random.below(40) as u8,
                _ => {}
            }
        }
        bytes
    }

    #[test]
    fn random_messages_never_panic_and_always_get_a_valid_reply() {
        let mut store = small();
        store.introduce_domain(1, Quota::GUEST).unwrap();
        store.introduce_domain(2, Quota::GUEST).unwrap();
        store.write(2, "secret", "s").unwrap();
        let mut random = XorShift(0x1234_5678_9abc_def1);
        let mut response = [0u8; MESSAGE_MAX];
        let mut event = [0u8; MESSAGE_MAX];
        for round in 0..40_000 {
            let request = random_request(&mut random);
            // Hostile guests first, then everyone.
            let caller = if round < 20_000 { [1, 3][random.below(2)] } else { [1, 2, 3, DOM0][random.below(4)] };
            let size = store.handle(caller, &request, &mut response);
            check_reply(&request, &response[..size]);
            if random.below(4) == 0 {
                let size = store.pop_event(caller, &mut event);
                if size != 0 {
                    let (header, payload) = parse_reply(&event[..size]);
                    assert_eq!(header.r#type, T::WatchEvent.number());
                    assert_eq!(strings_of(payload).len(), 2);
                }
            }
            if round == 20_000 - 1 {
                assert_eq!(store.read(2, "secret"), Ok("s"), "guest 2's secret stayed its own");
            }
        }
        check_consistent(&*store);
    }

    /// Feeds `stream` to an assembler in random pieces and answers every
    /// message; returns the replies' request ids.
    fn serve_stream(store: &mut Small, caller: DomainId, stream: &[u8], random: &mut XorShift) -> Vec<u32> {
        let mut assembler = MessageAssembler::new();
        let mut response = [0u8; MESSAGE_MAX];
        let mut ids = Vec::new();
        let mut at = 0;
        while at < stream.len() {
            let piece = (1 + random.below(300)).min(stream.len() - at);
            let mut offered = &stream[at..at + piece];
            at += piece;
            while !offered.is_empty() {
                let taken = assembler.feed(offered);
                offered = &offered[taken..];
                match assembler.message() {
                    Some(request) => {
                        let size = store.handle(caller, request, &mut response);
                        check_reply(request, &response[..size]);
                        ids.push(XsdSockmsg::from_bytes(response.first_chunk().unwrap()).req_id);
                        assembler.clear();
                    }
                    None => assert!(offered.is_empty(), "an incomplete message takes all it is offered"),
                }
            }
        }
        ids
    }

    #[test]
    fn a_byte_stream_stays_in_step() {
        let mut store = small();
        store.introduce_domain(1, Quota::GUEST).unwrap();
        let mut random = XorShift(0xfeed_beef_dead_f00d);
        // Framed messages with hostile contents, some with runaway lengths
        // whose bytes do follow: every one gets its reply, in order.
        let mut stream = Vec::new();
        let mut sent = Vec::new();
        for id in 0..3000u32 {
            let mut request = random_request(&mut random);
            request.resize(request.len().max(XSD_SOCKMSG_SIZE), 0);
            let length = if random.below(50) == 0 {
                PAYLOAD_MAX + 1 + random.below(5000)
            } else {
                request.len() - XSD_SOCKMSG_SIZE
            };
            request.resize(XSD_SOCKMSG_SIZE + length, b'x');
            request[4..8].copy_from_slice(&id.to_le_bytes());
            request[12..16].copy_from_slice(&(length as u32).to_le_bytes());
            stream.extend(&request);
            sent.push(id);
        }
        assert_eq!(serve_stream(&mut store, 1, &stream, &mut random), sent);
        // Unframed garbage: whatever it parses as, nothing panics.
        let garbage: Vec<u8> = (0..200_000).map(|_| random.next() as u8).collect();
        serve_stream(&mut store, 1, &garbage, &mut random);
        check_consistent(&*store);
    }

    #[test]
    fn the_assembler_reassembles_and_skips_oversized_payloads() {
        let mut assembler = MessageAssembler::new();
        let first = request(T::Read, 1, 0, &[b"some/path"]);
        let second = request(T::Write, 2, 0, &[b"k", b"v"]);
        let mut stream = first.clone();
        stream.extend(&second);
        // One byte at a time.
        let mut taken = 0;
        while assembler.message().is_none() {
            taken += assembler.feed(&stream[taken..taken + 1]);
        }
        assert_eq!(assembler.message(), Some(&first[..]));
        assert_eq!(assembler.feed(&stream[taken..]), 0, "nothing taken until cleared");
        assembler.clear();
        // Then all at once: only up to the message's end.
        assert_eq!(assembler.feed(&stream[taken..]), second.len());
        assert_eq!(assembler.message(), Some(&second[..]));
        assembler.clear();
        // A runaway length is skipped exactly, then the next message parses.
        let huge = XsdSockmsg { r#type: T::Write.number(), req_id: 3, tx_id: 5, len: 10_000 };
        let mut stream = huge.to_bytes().to_vec();
        stream.extend(std::iter::repeat_n(b'x', 10_000));
        stream.extend(&first);
        let mut at = 0;
        while assembler.message().is_none() {
            at += assembler.feed(&stream[at..(at + 700).min(stream.len())]);
        }
        assert_eq!(at, 16 + 10_000);
        let mut store = small();
        let mut response = [0u8; MESSAGE_MAX];
        let size = store.handle(DOM0, assembler.message().unwrap(), &mut response);
        let (header, payload) = parse_reply(&response[..size]);
        assert_eq!((header.r#type, header.req_id, header.tx_id, payload), (T::Error.number(), 3, 5, &b"E2BIG\0"[..]));
        assembler.clear();
        assert_eq!(assembler.feed(&stream[at..]), first.len());
        assert_eq!(assembler.message(), Some(&first[..]));
    }

    /// A split-device end driven by the events it receives, over the wire.
    struct End {
        domain: DomainId,
        /// Its own directory and its peer's, absolute.
        own: String,
        peer: String,
        seen_peer: XenbusState,
    }

    impl End {
        fn state(&self, store: &mut Small, path: &str) -> XenbusState {
            let value = call(store, self.domain, T::Read, &[&format!("{path}/state")]);
            XenbusState::from_key(value.ok().as_ref().map(|fields| fields[0].as_bytes()))
        }

        fn set(&self, store: &mut Small, state: XenbusState) {
            call(store, self.domain, T::Write, &[&format!("{}/state", self.own), state.format()]).unwrap();
        }

        fn read(&self, store: &mut Small, key: &str) -> u32 {
            let fields = call(store, self.domain, T::Read, &[&format!("{}/{key}", self.peer)]).unwrap();
            abi::store::parse_decimal(fields[0].as_bytes()).unwrap()
        }
    }

    #[test]
    fn a_front_end_and_a_back_end_meet_through_the_store() {
        let mut store = small();
        let store = &mut *store;
        let guest = 5;
        let front_dir = "/local/domain/5/device/vbd/51712";
        let back_dir = "/local/domain/0/backend/vbd/5/51712";
        // The toolstack: the guest's home, both directories, permissions
        // first so that the keys inherit them.
        store.introduce_domain(guest, Quota::GUEST).unwrap();
        store.mkdir(DOM0, front_dir).unwrap();
        let mut front_permissions = Permissions::owned_by(guest);
        front_permissions.grant(DOM0, Access::Read).unwrap();
        store.set_permissions(DOM0, front_dir, &front_permissions).unwrap();
        store.write(DOM0, &format!("{front_dir}/backend"), back_dir).unwrap();
        store.write(DOM0, &format!("{front_dir}/backend-id"), "0").unwrap();
        store.write(DOM0, &format!("{front_dir}/state"), XenbusState::Initialising.format()).unwrap();
        store.mkdir(DOM0, back_dir).unwrap();
        let mut back_permissions = Permissions::owned_by(DOM0);
        back_permissions.grant(guest, Access::Read).unwrap();
        store.set_permissions(DOM0, back_dir, &back_permissions).unwrap();
        store.write(DOM0, &format!("{back_dir}/frontend"), front_dir).unwrap();
        store.write(DOM0, &format!("{back_dir}/frontend-id"), "5").unwrap();
        store.write(DOM0, &format!("{back_dir}/state"), XenbusState::Initialising.format()).unwrap();

        // The front end finds its back end through its own directory.
        let found = call(store, guest, T::Read, &["device/vbd/51712/backend"]).unwrap();
        let mut front = End {
            domain: guest,
            own: front_dir.to_string(),
            peer: found[0].clone(),
            seen_peer: XenbusState::Initialising,
        };
        let mut back = End {
            domain: DOM0,
            own: back_dir.to_string(),
            peer: front_dir.to_string(),
            seen_peer: XenbusState::Initialising,
        };
        call(store, guest, T::Watch, &[&format!("{}/state", front.peer), "backend-state"]).unwrap();
        call(store, DOM0, T::Watch, &[&format!("{}/state", back.peer), "frontend-state"]).unwrap();

        // The back end publishes its parameters and waits.
        call(store, DOM0, T::Write, &[&format!("{back_dir}/sectors"), "2048"]).unwrap();
        back.set(store, XenbusState::InitWait);

        let mut mapped = None;
        for _round in 0..10 {
            for (_, token) in events(store, guest) {
                assert_eq!(token, "backend-state");
                let peer = front.state(store, &front.peer.clone());
                let own = front.state(store, &front.own.clone());
                match (own, peer) {
                    (XenbusState::Initialising, XenbusState::InitWait) => {
                        assert_eq!(front.read(store, "sectors"), 2048);
                        call(store, guest, T::Write, &["device/vbd/51712/ring-ref", "8"]).unwrap();
                        call(store, guest, T::Write, &["device/vbd/51712/event-channel", "3"]).unwrap();
                        front.set(store, XenbusState::Initialised);
                    }
                    (XenbusState::Initialised, XenbusState::Connected) => front.set(store, XenbusState::Connected),
                    (XenbusState::Connected, XenbusState::Closing) => front.set(store, XenbusState::Closing),
                    (XenbusState::Closing, XenbusState::Closed) => front.set(store, XenbusState::Closed),
                    _ => {}
                }
                front.seen_peer = peer;
            }
            for (_, token) in events(store, DOM0) {
                assert_eq!(token, "frontend-state");
                let peer = back.state(store, &back.peer.clone());
                let own = back.state(store, &back.own.clone());
                match (own, peer) {
                    (XenbusState::InitWait, XenbusState::Initialised) => {
                        mapped = Some((back.read(store, "ring-ref"), back.read(store, "event-channel")));
                        back.set(store, XenbusState::Connected);
                    }
                    (XenbusState::Connected, XenbusState::Closing) => back.set(store, XenbusState::Closed),
                    _ => {}
                }
                back.seen_peer = peer;
            }
        }
        assert_eq!(mapped, Some((8, 3)));
        assert_eq!(front.state(store, front_dir), XenbusState::Connected);
        assert_eq!(back.state(store, back_dir), XenbusState::Connected);
        assert_eq!((front.seen_peer, back.seen_peer), (XenbusState::Connected, XenbusState::Connected));
        // The guest cannot move the back end's state.
        assert_eq!(call(store, guest, T::Write, &[&format!("{back_dir}/state"), "6"]), Err(Errno::Eacces));

        // The front end closes; both reach Closed.
        front.set(store, XenbusState::Closing);
        for _round in 0..10 {
            for _ in events(store, DOM0) {
                if back.state(store, front_dir) == XenbusState::Closing
                    && back.state(store, back_dir) == XenbusState::Connected
                {
                    back.set(store, XenbusState::Closed);
                }
            }
            for _ in events(store, guest) {
                if front.state(store, back_dir) == XenbusState::Closed
                    && front.state(store, front_dir) == XenbusState::Closing
                {
                    front.set(store, XenbusState::Closed);
                }
            }
        }
        assert_eq!(front.state(store, front_dir), XenbusState::Closed);
        assert_eq!(back.state(store, back_dir), XenbusState::Closed);

        // The guest is destroyed: the back end's watch fires and the key is gone.
        store.remove_domain(guest).unwrap();
        assert_eq!(events(store, DOM0).len(), 1);
        assert_eq!(call(store, DOM0, T::Read, &[&format!("{front_dir}/state")]), Err(Errno::Enoent));
        check_consistent(store);
    }

    // ---- Transactions ----

    #[test]
    fn a_transaction_is_invisible_until_it_commits() {
        let mut store = small();
        store.introduce_domain(2, Quota::GUEST).unwrap();
        store.introduce_domain(3, Quota::GUEST).unwrap();
        let store = &mut *store;
        call(store, 2, T::Write, &["dev/old", "1"]).unwrap();
        let id = start(store, 2).unwrap();
        assert_eq!(call_in(store, 2, id, T::Write, &["dev/new/key", "fresh"]), Ok(vec![]));
        assert_eq!(call_in(store, 2, id, T::Write, &["dev/old", "2"]), Ok(vec![]));
        assert_eq!(call_in(store, 2, id, T::Mkdir, &["dev/empty"]), Ok(vec![]));
        // Inside: its own changes.
        assert_eq!(call_in(store, 2, id, T::Read, &["dev/new/key"]), Ok(vec!["fresh".to_string()]));
        assert_eq!(call_in(store, 2, id, T::Read, &["dev/new"]), Ok(vec![String::new()]));
        assert_eq!(call_in(store, 2, id, T::Read, &["dev/old"]), Ok(vec!["2".to_string()]));
        assert_eq!(
            call_in(store, 2, id, T::Directory, &["dev"]),
            Ok(vec!["old".to_string(), "new".to_string(), "empty".to_string()])
        );
        assert_eq!(call_in(store, 2, id, T::GetPerms, &["dev/new/key"]), Ok(vec!["n2".to_string()]));
        // Outside, the caller's own and dom0's view: nothing yet.
        assert_eq!(call(store, 2, T::Read, &["dev/new/key"]), Err(Errno::Enoent));
        assert_eq!(call(store, 2, T::Read, &["dev/old"]), Ok(vec!["1".to_string()]));
        assert_eq!(names(store, DOM0, "/local/domain/2/dev"), ["old"]);
        let (nodes, bytes) = (store.node_count(), store.arena_bytes());
        end(store, 2, id, true).unwrap();
        assert_eq!(store.read(DOM0, "/local/domain/2/dev/new/key"), Ok("fresh"));
        assert_eq!(store.read(3, "/local/domain/2/dev/old"), Err(Errno::Eacces), "permissions as ever");
        assert_eq!(store.read(2, "dev/old"), Ok("2"));
        assert_eq!(names(store, 2, "dev"), ["old", "new", "empty"]);
        assert_eq!(store.node_count(), nodes + 3);
        assert!(store.arena_bytes() > bytes);
        assert_eq!(end(store, 2, id, true), Err(Errno::Enoent), "over after its end");
        check_consistent(store);
    }

    #[test]
    fn a_conflict_is_eagain_and_the_retry_commits() {
        let mut store = small();
        store.introduce_domain(2, Quota::GUEST).unwrap();
        let store = &mut *store;
        store.write(2, "counter", "1").unwrap();
        // Read, someone else writes what was read, commit: EAGAIN.
        let id = start(store, 2).unwrap();
        let seen = call_in(store, 2, id, T::Read, &["counter"]).unwrap();
        call_in(store, 2, id, T::Write, &["counter", &format!("{}1", seen[0])]).unwrap();
        call(store, 2, T::Write, &["counter", "5"]).unwrap();
        assert_eq!(end(store, 2, id, true), Err(Errno::Eagain));
        assert_eq!(store.read(2, "counter"), Ok("5"), "nothing of it applied");
        assert_eq!(end(store, 2, id, false), Err(Errno::Enoent), "EAGAIN ended it");
        // The retry reads again and commits.
        let id = start(store, 2).unwrap();
        let seen = call_in(store, 2, id, T::Read, &["counter"]).unwrap();
        call_in(store, 2, id, T::Write, &["counter", &format!("{}1", seen[0])]).unwrap();
        assert_eq!(end(store, 2, id, true), Ok(()));
        assert_eq!(store.read(2, "counter"), Ok("51"));
        // A blind write conflicts too, and so does a node created where the
        // transaction found none, and a change below a removed subtree.
        let id = start(store, 2).unwrap();
        call_in(store, 2, id, T::Write, &["counter", "x"]).unwrap();
        store.write(DOM0, "/local/domain/2/counter", "dom0").unwrap();
        assert_eq!(end(store, 2, id, true), Err(Errno::Eagain));
        let id = start(store, 2).unwrap();
        assert_eq!(call_in(store, 2, id, T::Read, &["later"]), Err(Errno::Enoent));
        store.write(2, "later", "now").unwrap();
        assert_eq!(end(store, 2, id, true), Err(Errno::Eagain));
        store.write(2, "tree/a/b", "1").unwrap();
        let id = start(store, 2).unwrap();
        call_in(store, 2, id, T::Rm, &["tree"]).unwrap();
        store.write(2, "tree/a/c", "2").unwrap();
        assert_eq!(end(store, 2, id, true), Err(Errno::Eagain));
        assert_eq!(store.read(2, "tree/a/c"), Ok("2"));
        // Changes elsewhere do not conflict.
        let id = start(store, 2).unwrap();
        call_in(store, 2, id, T::Read, &["counter"]).unwrap();
        call_in(store, 2, id, T::Write, &["counter", "mine"]).unwrap();
        store.write(2, "unrelated", "x").unwrap();
        store.write(2, "tree/a/b", "3").unwrap();
        assert_eq!(end(store, 2, id, true), Ok(()));
        assert_eq!(store.read(2, "counter"), Ok("mine"));
        check_consistent(store);
    }

    #[test]
    fn an_abandoned_transaction_leaves_nothing() {
        let mut store = small();
        store.introduce_domain(2, Quota::GUEST).unwrap();
        let store = &mut *store;
        store.write(2, "keep", "1").unwrap();
        let (nodes, bytes, usage) = (store.node_count(), store.arena_bytes(), store.domain(2).unwrap().usage);
        let id = start(store, 2).unwrap();
        call_in(store, 2, id, T::Write, &["a/b/c", "v"]).unwrap();
        call_in(store, 2, id, T::Rm, &["keep"]).unwrap();
        assert_eq!(call_in(store, 2, id, T::Read, &["keep"]), Err(Errno::Enoent));
        call_in(store, 2, id, T::SetPerms, &["a", "r2"]).unwrap();
        end(store, 2, id, false).unwrap();
        assert_eq!(store.read(2, "keep"), Ok("1"));
        assert_eq!(store.read(2, "a"), Err(Errno::Enoent));
        assert_eq!((store.node_count(), store.arena_bytes()), (nodes, bytes));
        assert_eq!(store.domain(2).unwrap().usage, usage);
        check_consistent(store);
    }

    #[test]
    fn watches_fire_at_commit_only() {
        let mut store = small();
        store.introduce_domain(2, Quota::GUEST).unwrap();
        let store = &mut *store;
        store.watch(DOM0, "/local/domain/2/dev", "backend").unwrap();
        store.watch(2, "dev", "mine").unwrap();
        events(store, DOM0);
        events(store, 2);
        let id = start(store, 2).unwrap();
        call_in(store, 2, id, T::Write, &["dev/state", "3"]).unwrap();
        call_in(store, 2, id, T::Write, &["dev/ring-ref", "8"]).unwrap();
        assert!(events(store, DOM0).is_empty() && events(store, 2).is_empty(), "nothing before the commit");
        end(store, 2, id, true).unwrap();
        let fired: Vec<String> = events(store, DOM0).into_iter().map(|(path, _)| path).collect();
        assert_eq!(fired, ["/local/domain/2/dev/state", "/local/domain/2/dev/ring-ref"]);
        assert_eq!(events(store, 2).len(), 2);
        // An abandoned or failed one fires nothing.
        let id = start(store, 2).unwrap();
        call_in(store, 2, id, T::Write, &["dev/state", "4"]).unwrap();
        end(store, 2, id, false).unwrap();
        let id = start(store, 2).unwrap();
        call_in(store, 2, id, T::Write, &["dev/state", "5"]).unwrap();
        store.write(2, "dev/state", "6").unwrap();
        events(store, DOM0);
        assert_eq!(end(store, 2, id, true), Err(Errno::Eagain));
        assert!(events(store, DOM0).is_empty());
    }

    #[test]
    fn permissions_hold_inside_a_transaction() {
        let mut store = small();
        store.introduce_domain(2, Quota::GUEST).unwrap();
        store.introduce_domain(3, Quota::GUEST).unwrap();
        let store = &mut *store;
        store.write_read_only("/local/domain/2/name", "guest", 2).unwrap();
        store.write(3, "secret", "s").unwrap();
        let id = start(store, 2).unwrap();
        assert_eq!(call_in(store, 2, id, T::Read, &["/local/domain/3/secret"]), Err(Errno::Eacces));
        assert_eq!(call_in(store, 2, id, T::Read, &["/local/domain/3/missing"]), Err(Errno::Eacces));
        assert_eq!(call_in(store, 2, id, T::Write, &["/local/domain/3/x", "1"]), Err(Errno::Eacces));
        assert_eq!(call_in(store, 2, id, T::Write, &["name", "dom0"]), Err(Errno::Eacces));
        assert_eq!(call_in(store, 2, id, T::Rm, &["/local/domain/2"]), Err(Errno::Eacces), "name is dom0's");
        assert_eq!(call_in(store, 2, id, T::SetPerms, &["name", "b2"]), Err(Errno::Eacces));
        assert_eq!(call_in(store, 2, id, T::Rm, &["/"]), Err(Errno::Einval));
        // Its own nodes: created with its permissions, which it may change.
        call_in(store, 2, id, T::Write, &["mine/a", "1"]).unwrap();
        call_in(store, 2, id, T::SetPerms, &["mine", "r2", "b3"]).unwrap();
        assert_eq!(call_in(store, 2, id, T::GetPerms, &["mine"]), Ok(vec!["r2".to_string(), "b3".to_string()]));
        assert_eq!(call_in(store, 2, id, T::SetPerms, &["mine", "n3"]), Err(Errno::Eacces), "not to another owner");
        call_in(store, 2, id, T::Write, &["mine/b", "2"]).unwrap();
        assert_eq!(
            call_in(store, 2, id, T::GetPerms, &["mine/b"]),
            Ok(vec!["r2".to_string(), "b3".to_string()]),
            "inherited from the parent as the transaction sees it"
        );
        assert_eq!(call(store, 3, T::Read, &["/local/domain/2/mine/b"]), Err(Errno::Eacces), "not yet");
        end(store, 2, id, true).unwrap();
        assert_eq!(store.read(3, "/local/domain/2/mine/b"), Ok("2"));
        assert_eq!(store.read(3, "/local/domain/2/mine/a"), Err(Errno::Eacces), "created before the grant");
        check_consistent(store);
    }

    #[test]
    fn transactions_and_their_logs_are_bounded() {
        let mut store = small();
        store.introduce_domain(2, Quota::GUEST).unwrap();
        let store = &mut *store;
        let (nodes, bytes) = (store.node_count(), store.arena_bytes());
        let ids: Vec<u32> = (0..TRANSACTIONS_PER_DOMAIN).map(|_| start(store, 2).unwrap()).collect();
        assert_eq!(start(store, 2), Err(Errno::Enospc), "one more than a domain may have");
        let other = start(store, DOM0).unwrap();
        end(store, DOM0, other, false).unwrap();
        // Changes: at most TRANSACTION_CHANGES.
        for index in 0..TRANSACTION_CHANGES {
            call_in(store, 2, ids[0], T::Write, &[&format!("k{index}"), "v"]).unwrap();
        }
        assert_eq!(call_in(store, 2, ids[0], T::Write, &["one-more", "v"]), Err(Errno::Enospc));
        assert_eq!(call_in(store, 2, ids[0], T::Read, &["k3"]), Ok(vec!["v".to_string()]), "still usable");
        // Bytes: at most TRANSACTION_BYTES of paths and values.
        let big = "x".repeat(TRANSACTION_BYTES - 100);
        call_in(store, 2, ids[1], T::Write, &["a", &big]).unwrap();
        assert_eq!(call_in(store, 2, ids[1], T::Write, &["b", &"y".repeat(200)]), Err(Errno::Enospc));
        // Looks: at most TRANSACTION_READS live nodes.
        for index in 0..=TRANSACTION_READS {
            store.write(DOM0, &format!("/r/{index}"), "v").unwrap();
        }
        let dom0 = start(store, DOM0).unwrap();
        // A read of an existing node looks at that node only.
        let refused = (0..=TRANSACTION_READS)
            .map(|index| call_in(store, DOM0, dom0, T::Read, &[&format!("/r/{index}")]))
            .position(|result| result.is_err());
        assert_eq!(refused, Some(TRANSACTION_READS));
        let error = call_in(store, DOM0, dom0, T::Read, &["/r/0"]);
        assert_eq!(error, Ok(vec!["v".to_string()]), "a node it looked at already needs no new look");
        let last = format!("/r/{TRANSACTION_READS}");
        assert_eq!(call_in(store, DOM0, dom0, T::Read, &[&last]), Err(Errno::Enospc));
        store.remove(DOM0, "/r").unwrap();
        assert_eq!(end(store, DOM0, dom0, true), Err(Errno::Eagain), "its reads were removed");
        // Abandoned and failed transactions free everything; new ones start.
        for id in &ids[..2] {
            end(store, 2, *id, false).unwrap();
        }
        end(store, 2, ids[2], true).unwrap();
        assert_eq!((store.node_count(), store.arena_bytes()), (nodes, bytes), "nothing leaked");
        let again = start(store, 2).unwrap();
        assert!(!ids.contains(&again) || again != ids[3], "ids are unique among open ones");
        assert_ne!(again, ids[3]);
        check_consistent(store);
    }

    #[test]
    fn a_commit_over_quota_applies_nothing() {
        let mut store = small();
        store.introduce_domain(7, Quota { nodes: 6, bytes: 1024, watches: 2 }).unwrap();
        let store = &mut *store;
        store.write(7, "k0", "0").unwrap();
        let usage = store.domain(7).unwrap().usage;
        let id = start(store, 7).unwrap();
        // Each fits alone; together they exceed the 6 nodes.
        call_in(store, 7, id, T::Write, &["k0", "changed"]).unwrap();
        call_in(store, 7, id, T::Write, &["a/b", "1"]).unwrap();
        call_in(store, 7, id, T::Write, &["c/d", "2"]).unwrap();
        call_in(store, 7, id, T::Write, &["e/f", "3"]).unwrap();
        assert_eq!(end(store, 7, id, true), Err(Errno::Enospc));
        assert_eq!(store.read(7, "k0"), Ok("0"), "not even the first change");
        assert_eq!(store.read(7, "a/b"), Err(Errno::Enoent));
        assert_eq!(store.domain(7).unwrap().usage, usage);
        // Within the quota, the same commits.
        let id = start(store, 7).unwrap();
        call_in(store, 7, id, T::Write, &["k0", "changed"]).unwrap();
        call_in(store, 7, id, T::Write, &["a/b", "1"]).unwrap();
        assert_eq!(end(store, 7, id, true), Ok(()));
        assert_eq!(store.read(7, "a/b"), Ok("1"));
        check_consistent(store);
    }

    #[test]
    fn removing_a_domain_or_resetting_drops_its_transactions() {
        let mut store = small();
        store.introduce_domain(2, Quota::GUEST).unwrap();
        let store = &mut *store;
        let (nodes, bytes) = (store.node_count(), store.arena_bytes());
        let id = start(store, 2).unwrap();
        call_in(store, 2, id, T::Write, &["pending", "v"]).unwrap();
        store.watch(2, "w", "t").unwrap();
        assert_eq!(call(store, 2, T::ResetWatches, &[""]), Ok(vec![]));
        assert_eq!(end(store, 2, id, true), Err(Errno::Enoent));
        assert_eq!(store.unwatch(2, "w", "t"), Err(Errno::Enoent), "its watches are gone too");
        assert_eq!(store.domain(2).unwrap().usage.watches, 0);
        let id = start(store, 2).unwrap();
        call_in(store, 2, id, T::Write, &["pending", "v"]).unwrap();
        store.remove_domain(2).unwrap();
        store.introduce_domain(2, Quota::GUEST).unwrap();
        assert_eq!(end(store, 2, id, true), Err(Errno::Enoent), "a new domain 2 inherits nothing");
        assert_eq!(store.read(2, "pending"), Err(Errno::Enoent));
        // Another domain's transaction that looked at a node whose grants
        // named the removed domain sees the change.
        store.introduce_domain(3, Quota::GUEST).unwrap();
        let mut shared = Permissions::owned_by(DOM0);
        shared.grant(3, Access::Read).unwrap();
        shared.grant(2, Access::Both).unwrap();
        store.mkdir(DOM0, "/shared").unwrap();
        store.set_permissions(DOM0, "/shared", &shared).unwrap();
        let id = start(store, 3).unwrap();
        assert_eq!(call_in(store, 3, id, T::GetPerms, &["/shared"]), Ok(vec!["n0".into(), "r3".into(), "b2".into()]));
        store.remove_domain(2).unwrap();
        assert_eq!(end(store, 3, id, true), Err(Errno::Eagain), "its grant was revoked meanwhile");
        store.remove(DOM0, "/shared").unwrap();
        store.remove_domain(3).unwrap();
        store.introduce_domain(2, Quota::GUEST).unwrap();
        assert_eq!((store.node_count(), store.arena_bytes()), (nodes, bytes));
        check_consistent(store);
    }

    /// Random requests of one guest inside a transaction are answered as a
    /// second store answers them applied at once; after the commit both
    /// trees agree. The view is exact, so the commit never fails halfway.
    #[test]
    fn a_transaction_sees_what_applying_it_makes() {
        let paths =
            ["a", "a/b", "a/b/c", "a/d", "e", "e/f", "/local/domain/3/x", "/local/domain/0/ro", "/local/domain/0/ro/k"];
        let mut random = XorShift(0x005e_ed0f_7a55);
        let (mut committed, mut refusals) = (0, 0);
        for round in 0..300 {
            let (mut inside, mut applied) = (small(), small());
            for store in [&mut inside, &mut applied] {
                store.introduce_domain(2, Quota::GUEST).unwrap();
                store.introduce_domain(3, Quota::GUEST).unwrap();
                store.write(2, "a/b", "start").unwrap();
                store.write(2, "e", "").unwrap();
                let mut readable = Permissions::owned_by(DOM0);
                readable.grant(2, Access::Read).unwrap();
                store.write(DOM0, "/local/domain/0/ro/k", "dom0's").unwrap();
                store.set_permissions(DOM0, "/local/domain/0/ro", &readable).unwrap();
            }
            let id = start(&mut *inside, 2).unwrap();
            for _ in 0..random.below(20) {
                let path = paths[random.below(paths.len())];
                let value = ["", "1", "two"][random.below(3)];
                let (kind, fields): (T, Vec<&str>) = match random.below(7) {
                    0 => (T::Read, vec![path]),
                    1 | 2 => (T::Write, vec![path, value]),
                    3 => (T::Mkdir, vec![path]),
                    4 => (T::Rm, vec![path]),
                    5 => (T::Directory, vec![path]),
                    _ if random.below(2) == 0 => (T::GetPerms, vec![path]),
                    _ => (T::SetPerms, vec![path, ["n2", "r2", "b2"][random.below(3)], "r3"]),
                };
                let seen = call_in(&mut *inside, 2, id, kind, &fields);
                let made = call(&mut *applied, 2, kind, &fields);
                assert_eq!(seen, made, "round {round}: {kind:?} {fields:?}");
                refusals += seen.is_err() as u32;
            }
            end(&mut *inside, 2, id, true).unwrap();
            committed += 1;
            for path in paths {
                for caller in [2, 3, DOM0] {
                    assert_eq!(inside.read(caller, path), applied.read(caller, path), "round {round}: {path}");
                    assert_eq!(inside.get_permissions(caller, path), applied.get_permissions(caller, path));
                }
            }
            assert_eq!(inside.domain(2).unwrap().usage, applied.domain(2).unwrap().usage);
            check_consistent(&*inside);
        }
        assert!(committed == 300 && refusals > 50, "{refusals} refusals");
    }

    /// The messages Linux's xenbus sends when a block front end connects
    /// (`talk_to_blkback`: its keys in one transaction, then
    /// `xenbus_switch_state` in another), byte for byte: relative paths,
    /// `TRANSACTION_START` with an empty string, values without NUL. The
    /// back end writing its own directory meanwhile does not conflict; dom0
    /// writing the front end's `state` does, and the retry commits.
    #[test]
    fn linux_xenbus_connects_a_disk() {
        let mut store = small();
        let store = &mut *store;
        let front = "/local/domain/5/device/vbd/51712";
        store.introduce_domain(5, Quota::GUEST).unwrap();
        store.write(DOM0, &format!("{front}/state"), "1").unwrap();
        store.write(DOM0, "/local/domain/0/backend/vbd/5/51712/state", "2").unwrap();
        let send = |store: &mut Small, kind: T, tx_id: u32, payload: &[u8]| -> (u32, Vec<u8>) {
            let mut response = [0u8; MESSAGE_MAX];
            let size = store.handle(5, &framed(kind.number(), 9, tx_id, payload), &mut response);
            let (header, reply) = parse_reply(&response[..size]);
            assert_eq!((header.req_id, header.tx_id), (9, tx_id));
            (header.r#type, reply.to_vec())
        };
        let ok = (T::Write.number(), b"OK\0".to_vec());
        for attempt in 0..2 {
            let (kind, id) = send(store, T::TransactionStart, 0, b"\0");
            assert_eq!(kind, T::TransactionStart.number());
            let tx = abi::store::parse_decimal(id.strip_suffix(&[0]).unwrap()).unwrap();
            for (key, value) in
                [("ring-ref", "8"), ("event-channel", "3"), ("protocol", "x86_64-abi"), ("feature-persistent", "1")]
            {
                let payload = format!("device/vbd/51712/{key}\0{value}");
                assert_eq!(send(store, T::Write, tx, payload.as_bytes()), ok);
            }
            // xenbus_switch_state reads the state in the transaction first.
            assert_eq!(send(store, T::Read, tx, b"device/vbd/51712/state\0"), (T::Read.number(), b"1".to_vec()));
            assert_eq!(send(store, T::Write, tx, b"device/vbd/51712/state\x003"), ok);
            store.write(DOM0, "/local/domain/0/backend/vbd/5/51712/sectors", "2048").unwrap();
            if attempt == 0 {
                store.write(DOM0, &format!("{front}/state"), "1").unwrap();
            }
            let end = send(store, T::TransactionEnd, tx, b"T\0");
            if attempt == 0 {
                assert_eq!(end, (T::Error.number(), b"EAGAIN\0".to_vec()));
                assert_eq!(store.read(DOM0, &format!("{front}/ring-ref")), Err(Errno::Enoent));
            } else {
                assert_eq!(end, (T::TransactionEnd.number(), b"OK\0".to_vec()));
            }
        }
        assert_eq!(store.read(DOM0, &format!("{front}/protocol")), Ok("x86_64-abi"));
        assert_eq!(store.read(DOM0, &format!("{front}/state")), Ok("3"));
        check_consistent(store);
    }

    #[test]
    fn guests_at_their_quotas_cannot_exhaust_the_default_store() {
        // The default store is about 1 MiB: build it on a thread with room.
        let worker = std::thread::Builder::new().stack_size(64 << 20).spawn(|| {
            let mut store = Box::new(DefaultStore::new());
            for guest in 1..DEFAULT_DOMAINS as u32 {
                store.introduce_domain(guest, Quota::GUEST).unwrap();
                let mut key = 0;
                let error = loop {
                    match store.write(guest, &format!("k{key}"), &"v".repeat(100)) {
                        Ok(()) => key += 1,
                        Err(error) => break error,
                    }
                };
                assert_eq!(error, Errno::Enospc);
                // Grow values until the byte quota stops it.
                for key in 0..key {
                    if store.write(guest, &format!("k{key}"), &"w".repeat(VALUE_MAX)).is_err() {
                        break;
                    }
                }
                let mut watch = 0;
                let error = loop {
                    match store.watch(guest, &"p".repeat(200), &format!("{watch}")) {
                        Ok(()) => watch += 1,
                        Err(error) => break error,
                    }
                };
                assert_eq!(error, Errno::Enospc);
            }
            // Every guest is at a quota; dom0 still has a quarter of each table.
            for key in 0..DEFAULT_NODES / 4 - 2 {
                store.write(DOM0, &format!("/dom0/k{key}"), "v").unwrap();
            }
            for watch in 0..DEFAULT_WATCHES / 4 {
                store.watch(DOM0, "/dom0", &format!("{watch}")).unwrap();
            }
            store.write(DOM0, "/dom0/big", &"b".repeat(VALUE_MAX)).unwrap();
            check_consistent(&*store);
        });
        worker.unwrap().join().unwrap();
    }
}
