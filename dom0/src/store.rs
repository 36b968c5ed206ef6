//! The store: dom0's hierarchical key/value tree with permissions, watches
//! and quotas, and the parser of its wire protocol ([`abi::store`]). No I/O:
//! a transport feeds a domain's request bytes to a [`MessageAssembler`],
//! hands each complete message to [`Store::handle`], and copies the reply
//! and any queued [`Store::pop_event`] messages into the response ring.
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
//! - `DOMAINS` per-domain records: [`Quota`], [`Usage`], and a queue of
//!   [`EVENT_QUEUE_BYTES`] bytes of pending watch events; when it is full
//!   the oldest events are dropped and counted.
//!
//! [`Store::new`] is a `const fn`, so dom0 can keep the store in a static
//! (about 1 MiB for [`DefaultStore`]) rather than on a stack.
//!
//! Quotas: a guest may own at most [`Quota::nodes`] nodes and
//! [`Quota::bytes`] arena bytes, and register [`Quota::watches`] watches
//! ([`StoreError::Quota`] beyond). A node's bytes are charged to its owner;
//! a guest writing a node it does not own (by grant) is checked against the
//! owner's quota, except that nodes owned by dom0 are not limited (dom0
//! chose to grant the write, and a value is at most `VALUE_MAX` bytes).
//! dom0 is never refused for quota, and nodes it creates for a guest count
//! against the guest. [`DefaultStore`] is sized so that every guest at its
//! [`Quota::GUEST`] quota together still leave a quarter of each table to
//! dom0: guests cannot exhaust the store, alone or together.

use core::fmt::Write as _;

use abi::store::{
    Access, GRANTS_MAX, HOME_PREFIX, PATH_MAX, PathForm, STORE_HEADER_SIZE, STORE_MESSAGE_MAX, STORE_PAYLOAD_MAX,
    StoreError, StoreHeader, StoreOp, TOKEN_MAX, VALUE_MAX, check_path,
};
use abi::{DOM0, DomainId};
use arrayvec::{ArrayString, ArrayVec};

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

/// The store dom0 runs: about 1 MiB.
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

    /// Adds a grant: [`StoreError::Invalid`] if `domain` already has one,
    /// [`StoreError::TooBig`] if the node holds [`GRANTS_MAX`] already.
    pub fn grant(&mut self, domain: DomainId, access: Access) -> Result<(), StoreError> {
        if self.grants().iter().any(|grant| grant.domain == domain) {
            return Err(StoreError::Invalid);
        }
        let count = self.grants().len();
        if count == GRANTS_MAX {
            return Err(StoreError::TooBig);
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

#[derive(Clone, Copy)]
struct DomainSlot {
    used: bool,
    id: DomainId,
    quota: Quota,
    usage: Usage,
    dropped: u64,
    queue: EventQueue,
}

impl DomainSlot {
    const EMPTY: DomainSlot = DomainSlot {
        used: false,
        id: 0,
        quota: Quota { nodes: 0, bytes: 0, watches: 0 },
        usage: Usage { nodes: 0, bytes: 0, watches: 0 },
        dropped: 0,
        queue: EventQueue::EMPTY,
    };
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
fn resolve(caller: DomainId, path: &str) -> Result<PathBuffer, StoreError> {
    let mut absolute = PathBuffer::new();
    match check_path(path.as_bytes())? {
        PathForm::Absolute => absolute.try_push_str(path).map_err(|_| StoreError::TooBig)?,
        PathForm::Relative => write!(absolute, "{HOME_PREFIX}{caller}/{path}").map_err(|_| StoreError::TooBig)?,
    }
    Ok(absolute)
}

/// Values and tokens: UTF-8 (guaranteed by `&str`) without NUL.
fn check_text(text: &str, max: usize) -> Result<(), StoreError> {
    if text.len() > max {
        return Err(StoreError::TooBig);
    }
    if text.as_bytes().contains(&0) {
        return Err(StoreError::Invalid);
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
        }
    }

    // ---- Domains ----

    /// Registers a domain with `quota` (or changes its quota) and creates
    /// its home `/local/domain/<domain>`, owned by it, if missing. dom0
    /// calls this when it builds a domain.
    pub fn introduce_domain(&mut self, domain: DomainId, quota: Quota) -> Result<(), StoreError> {
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
    pub fn remove_domain(&mut self, domain: DomainId) -> Result<(), StoreError> {
        if domain == DOM0 {
            return Err(StoreError::Invalid);
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
            node.permissions.revoke(domain);
            if node.permissions.owner == domain {
                node.permissions.owner = DOM0;
                let size = node.size();
                self.charge(DOM0, 1, size as i64);
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
    fn ensure_domain(&mut self, domain: DomainId) -> Result<usize, StoreError> {
        if let Some(slot) = find_slot(&self.domains, domain) {
            return Ok(slot);
        }
        let slot = self.domains.iter().position(|slot| !slot.used).ok_or(StoreError::NoSpace)?;
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
    fn check_quota(&mut self, caller: DomainId, owner: DomainId, nodes: usize, bytes: i64) -> Result<(), StoreError> {
        if caller == DOM0 || owner == DOM0 {
            return Ok(());
        }
        let slot = &self.domains[self.ensure_domain(owner)?];
        let nodes_after = slot.usage.nodes as u64 + nodes as u64;
        let bytes_after = slot.usage.bytes as i64 + bytes;
        if nodes_after > slot.quota.nodes as u64 || bytes_after > slot.quota.bytes as i64 {
            return Err(StoreError::Quota);
        }
        Ok(())
    }

    // ---- The arena ----

    /// Makes room for `bytes` at the arena's end, compacting if needed.
    fn reserve(&mut self, bytes: usize) -> Result<(), StoreError> {
        if self.arena_live + bytes > ARENA {
            return Err(StoreError::NoSpace);
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
    /// refused with [`StoreError::Access`] whether the rest of the path
    /// exists or not, so a node it may not see and a missing one below
    /// it are refused alike, by every operation (otherwise a guest could
    /// enumerate other guests' devices). Where it may look, a missing
    /// child is no secret: `Directory` would list it.
    fn locate(&self, caller: DomainId, path: &str) -> Result<(u16, usize), StoreError> {
        let (node, depth) = self.walk(path);
        if self.nodes[node as usize].permissions.access(caller) == Access::None {
            return Err(StoreError::Access);
        }
        Ok((node, depth))
    }

    /// Looks up an existing node that `caller` needs `read` or write access
    /// to (refused alike whether it exists, where the caller may not look:
    /// see [`Self::locate`]).
    fn find(&self, caller: DomainId, path: &str, read: bool) -> Result<u16, StoreError> {
        let (node, depth) = self.locate(caller, path)?;
        if depth != components(path).count() {
            return Err(StoreError::NoEntry);
        }
        let access = self.nodes[node as usize].permissions.access(caller);
        if (read && !access.can_read()) || (!read && !access.can_write()) {
            return Err(StoreError::Access);
        }
        Ok(node)
    }

    /// Write (`value` given) or mkdir (`None`) on a resolved path.
    /// Mkdir of an existing node needs write access to it, as a write does:
    /// its answer must not depend on existence where the caller may not look.
    fn create(&mut self, caller: DomainId, path: &str, value: Option<&[u8]>) -> Result<(), StoreError> {
        let (deepest, depth) = self.locate(caller, path)?;
        let total = components(path).count();
        let parent = self.nodes[deepest as usize];
        if depth == total {
            if !parent.permissions.access(caller).can_write() {
                return Err(StoreError::Access);
            }
            let Some(value) = value else { return Ok(()) };
            self.replace_value(caller, deepest, value)?;
            let permissions = self.nodes[deepest as usize].permissions;
            self.fire(path, &permissions, false);
            return Ok(());
        }
        if !parent.permissions.access(caller).can_write() {
            return Err(StoreError::Access);
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
            return Err(StoreError::NoSpace);
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
        index
    }

    fn replace_value(&mut self, caller: DomainId, node: u16, value: &[u8]) -> Result<(), StoreError> {
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
    pub fn read(&self, caller: DomainId, path: &str) -> Result<&str, StoreError> {
        let path = resolve(caller, path)?;
        let node = self.find(caller, &path, true)?;
        core::str::from_utf8(self.value(node)).map_err(|_| StoreError::Invalid)
    }

    /// Sets a node's value, creating it and its missing parents.
    pub fn write(&mut self, caller: DomainId, path: &str, value: &str) -> Result<(), StoreError> {
        check_text(value, VALUE_MAX)?;
        let path = resolve(caller, path)?;
        self.create(caller, &path, Some(value.as_bytes()))
    }

    /// Creates a node with an empty value unless it exists.
    pub fn mkdir(&mut self, caller: DomainId, path: &str) -> Result<(), StoreError> {
        let path = resolve(caller, path)?;
        self.create(caller, &path, None)
    }

    /// Removes a node and its subtree.
    pub fn remove(&mut self, caller: DomainId, path: &str) -> Result<(), StoreError> {
        let path = resolve(caller, path)?;
        if path.as_str() == "/" {
            return Err(StoreError::Invalid);
        }
        let node = self.find(caller, &path, false)?;
        if !self.subtree_writable(caller, node) {
            return Err(StoreError::Access);
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
    pub fn write_read_only(&mut self, path: &str, value: &str, reader: DomainId) -> Result<(), StoreError> {
        self.write(DOM0, path, value)?;
        let mut permissions = Permissions::owned_by(DOM0);
        if reader != DOM0 {
            permissions.grant(reader, Access::Read)?;
        }
        self.set_permissions(DOM0, path, &permissions)
    }

    /// The names of a node's children, in creation order.
    pub fn directory(&self, caller: DomainId, path: &str) -> Result<impl Iterator<Item = &str> + '_, StoreError> {
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
    pub fn get_permissions(&self, caller: DomainId, path: &str) -> Result<Permissions, StoreError> {
        let path = resolve(caller, path)?;
        let node = self.find(caller, &path, true)?;
        Ok(self.nodes[node as usize].permissions)
    }

    /// Replaces a node's permissions: the owner or dom0 only, and only dom0
    /// may change the owner.
    pub fn set_permissions(
        &mut self,
        caller: DomainId,
        path: &str,
        permissions: &Permissions,
    ) -> Result<(), StoreError> {
        let path = resolve(caller, path)?;
        let (node, depth) = self.locate(caller, &path)?;
        if depth != components(&path).count() {
            return Err(StoreError::NoEntry);
        }
        let old = self.nodes[node as usize];
        if caller != DOM0 && (old.permissions.owner != caller || permissions.owner != caller) {
            return Err(StoreError::Access);
        }
        if permissions.owner != old.permissions.owner {
            self.charge(old.permissions.owner, -1, -(old.size() as i64));
            self.charge(permissions.owner, 1, old.size() as i64);
        }
        self.nodes[node as usize].permissions = *permissions;
        self.fire(&path, permissions, false);
        Ok(())
    }

    /// Registers a watch and queues its first event.
    pub fn watch(&mut self, caller: DomainId, path: &str, token: &str) -> Result<(), StoreError> {
        check_text(token, TOKEN_MAX)?;
        let path = resolve(caller, path)?;
        if self.find_watch(caller, &path, token).is_some() {
            return Err(StoreError::Exists);
        }
        let slot = self.ensure_domain(caller)?;
        let size = EXTENT_HEADER + path.len() + token.len();
        let record = &self.domains[slot];
        if caller != DOM0
            && (record.usage.watches >= record.quota.watches
                || record.usage.bytes as u64 + size as u64 > record.quota.bytes as u64)
        {
            return Err(StoreError::Quota);
        }
        let index = self.watches.iter().position(|watch| !watch.used).ok_or(StoreError::NoSpace)?;
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
    pub fn unwatch(&mut self, caller: DomainId, path: &str, token: &str) -> Result<(), StoreError> {
        check_text(token, TOKEN_MAX)?;
        let path = resolve(caller, path)?;
        let index = self.find_watch(caller, &path, token).ok_or(StoreError::NoEntry)?;
        self.free_watch(index);
        Ok(())
    }

    /// Size of the next queued event's message for `domain`, if any.
    pub fn next_event_size(&self, domain: DomainId) -> Option<usize> {
        let slot = find_slot(&self.domains, domain)?;
        self.domains[slot].queue.front_len().map(|length| STORE_HEADER_SIZE + length)
    }

    /// Takes `domain`'s oldest queued event as a `WatchEvent` message;
    /// returns its size, 0 if none was queued.
    pub fn pop_event(&mut self, domain: DomainId, out: &mut [u8; STORE_MESSAGE_MAX]) -> usize {
        let Some(slot) = find_slot(&self.domains, domain) else { return 0 };
        let length = self.domains[slot].queue.pop(&mut out[STORE_HEADER_SIZE..]);
        if length == 0 {
            return 0;
        }
        let header =
            StoreHeader { kind: StoreOp::WatchEvent as u32, request_id: 0, transaction: 0, length: length as u32 };
        out[..STORE_HEADER_SIZE].copy_from_slice(&header.to_bytes());
        STORE_HEADER_SIZE + length
    }

    // ---- The wire ----

    /// Answers one request message from `caller` (header and payload, as
    /// a [`MessageAssembler`] collects them) with a reply message written
    /// to `response`; returns the reply's size. Every byte of the request
    /// is checked; anything wrong is answered with an `Error` message.
    pub fn handle(&mut self, caller: DomainId, request: &[u8], response: &mut [u8; STORE_MESSAGE_MAX]) -> usize {
        let (head, reply) = response.split_at_mut(STORE_HEADER_SIZE);
        let header = request.first_chunk::<STORE_HEADER_SIZE>().map(StoreHeader::from_bytes);
        let result = match &header {
            // Too short to carry even a request id: answered with id 0.
            None => Err(StoreError::Invalid),
            Some(header) => self.dispatch(caller, header, &request[STORE_HEADER_SIZE..], reply),
        };
        let header = header.unwrap_or_default();
        let (kind, length) = match result {
            Ok(length) => (header.kind, length),
            Err(error) => {
                let name = error.name().as_bytes();
                reply[..name.len()].copy_from_slice(name);
                reply[name.len()] = 0;
                (StoreOp::Error as u32, name.len() + 1)
            }
        };
        let reply_header =
            StoreHeader { kind, request_id: header.request_id, transaction: header.transaction, length: length as u32 };
        head.copy_from_slice(&reply_header.to_bytes());
        STORE_HEADER_SIZE + length
    }

    fn dispatch(
        &mut self,
        caller: DomainId,
        header: &StoreHeader,
        payload: &[u8],
        reply: &mut [u8],
    ) -> Result<usize, StoreError> {
        if header.length as usize > STORE_PAYLOAD_MAX {
            return Err(StoreError::TooBig);
        }
        if payload.len() != header.length as usize {
            return Err(StoreError::Invalid);
        }
        if header.transaction != 0 {
            return Err(StoreError::NotSupported);
        }
        let op = StoreOp::from_number(header.kind).ok_or(StoreError::NotSupported)?;
        let fields = parse_fields(payload, op == StoreOp::SetPermissions)?;
        let mut out = Reply { bytes: reply, length: 0 };
        match (op, fields.as_slice()) {
            (StoreOp::Read, &[path]) => {
                let value = self.read(caller, path)?;
                out.field(value.as_bytes())?;
            }
            (StoreOp::Write, &[path, value]) => self.write(caller, path, value)?,
            (StoreOp::Mkdir, &[path]) => self.mkdir(caller, path)?,
            (StoreOp::Remove, &[path]) => self.remove(caller, path)?,
            (StoreOp::Directory, &[path]) => {
                for name in self.directory(caller, path)? {
                    out.field(name.as_bytes())?;
                }
            }
            (StoreOp::GetPermissions, &[path]) => {
                let permissions = self.get_permissions(caller, path)?;
                out.permission(permissions.others, permissions.owner)?;
                for grant in permissions.grants() {
                    out.permission(grant.access, grant.domain)?;
                }
            }
            (StoreOp::SetPermissions, &[path, owner, ref grants @ ..]) => {
                let (access, domain) = parse_permission(owner)?;
                let mut permissions = Permissions::owned_by(domain);
                permissions.others = access;
                for grant in grants {
                    let (access, domain) = parse_permission(grant)?;
                    permissions.grant(domain, access)?;
                }
                self.set_permissions(caller, path, &permissions)?;
            }
            (StoreOp::Watch, &[path, token]) => self.watch(caller, path, token)?,
            (StoreOp::Unwatch, &[path, token]) => self.unwatch(caller, path, token)?,
            _ => return Err(StoreError::Invalid),
        }
        Ok(out.length)
    }
}

impl<const NODES: usize, const ARENA: usize, const WATCHES: usize, const DOMAINS: usize> Default
    for Store<NODES, ARENA, WATCHES, DOMAINS>
{
    fn default() -> Self {
        Self::new()
    }
}

/// Most fields a request carries: SetPermissions' path, owner entry and
/// grants.
const FIELDS_MAX: usize = 2 + GRANTS_MAX;

/// Splits a request payload into its NUL-terminated UTF-8 fields. Only
/// SetPermissions can legitimately have many: for it, too many fields is
/// too many entries for a node.
fn parse_fields(payload: &[u8], permissions: bool) -> Result<ArrayVec<&str, FIELDS_MAX>, StoreError> {
    let mut fields = ArrayVec::new();
    let Some((&last, body)) = payload.split_last() else { return Ok(fields) };
    if last != 0 {
        return Err(StoreError::Invalid);
    }
    for field in body.split(|&byte| byte == 0) {
        let field = core::str::from_utf8(field).map_err(|_| StoreError::Invalid)?;
        if fields.try_push(field).is_err() {
            return Err(if permissions { StoreError::TooBig } else { StoreError::Invalid });
        }
    }
    Ok(fields)
}

/// Decodes a permission entry: an access letter and a decimal domain id.
fn parse_permission(entry: &str) -> Result<(Access, DomainId), StoreError> {
    let (&letter, digits) = entry.as_bytes().split_first().ok_or(StoreError::Invalid)?;
    let access = Access::from_letter(letter).ok_or(StoreError::Invalid)?;
    let domain = abi::store::parse_decimal(digits).ok_or(StoreError::Invalid)?;
    Ok((access, domain))
}

/// A reply payload being written.
struct Reply<'a> {
    bytes: &'a mut [u8],
    length: usize,
}

impl Reply<'_> {
    /// Appends a field and its NUL; [`StoreError::TooBig`] if it does not fit.
    fn field(&mut self, field: &[u8]) -> Result<(), StoreError> {
        let end = self.length + field.len() + 1;
        if end > self.bytes.len() {
            return Err(StoreError::TooBig);
        }
        self.bytes[self.length..end - 1].copy_from_slice(field);
        self.bytes[end - 1] = 0;
        self.length = end;
        Ok(())
    }

    fn permission(&mut self, access: Access, domain: DomainId) -> Result<(), StoreError> {
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
/// [`STORE_PAYLOAD_MAX`] bytes has its payload skipped, and is given as its
/// header alone (which `handle` answers with `E2BIG`), so the stream stays
/// in step.
pub struct MessageAssembler {
    buffer: [u8; STORE_MESSAGE_MAX],
    filled: usize,
    /// Payload bytes of an oversized message still to skip.
    skip: u64,
    oversized: bool,
}

impl MessageAssembler {
    /// An assembler waiting for a message's first byte.
    pub const fn new() -> MessageAssembler {
        MessageAssembler { buffer: [0; STORE_MESSAGE_MAX], filled: 0, skip: 0, oversized: false }
    }

    /// The payload length announced by the header, once it is in.
    fn announced(&self) -> Option<usize> {
        let header = self.buffer.first_chunk::<STORE_HEADER_SIZE>()?;
        (self.filled >= STORE_HEADER_SIZE).then(|| StoreHeader::from_bytes(header).length as usize)
    }

    /// Takes bytes up to the end of the current message; returns how many
    /// it took (0 while a complete message waits to be cleared).
    pub fn feed(&mut self, bytes: &[u8]) -> usize {
        if self.message().is_some() {
            return 0;
        }
        let mut taken = 0;
        if self.filled < STORE_HEADER_SIZE {
            let count = (STORE_HEADER_SIZE - self.filled).min(bytes.len());
            self.buffer[self.filled..self.filled + count].copy_from_slice(&bytes[..count]);
            self.filled += count;
            taken = count;
            if let Some(length) = self.announced()
                && length > STORE_PAYLOAD_MAX
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
            let count = (STORE_HEADER_SIZE + length - self.filled).min(rest.len());
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
            return (self.skip == 0).then_some(&self.buffer[..STORE_HEADER_SIZE]);
        }
        (self.filled == STORE_HEADER_SIZE + length).then_some(&self.buffer[..self.filled])
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
    use abi::store::DeviceState;
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
        let mut message = [0u8; STORE_MESSAGE_MAX];
        while let Some(size) = store.next_event_size(domain) {
            assert_eq!(store.pop_event(domain, &mut message), size);
            let (header, fields) = parse_reply(&message[..size]);
            assert_eq!(header.kind, StoreOp::WatchEvent as u32);
            assert_eq!(header.request_id, 0);
            assert_eq!(fields.len(), 2);
            found.push((fields[0].clone(), fields[1].clone()));
        }
        found
    }

    fn message(kind: u32, request_id: u32, fields: &[&[u8]]) -> Vec<u8> {
        let mut payload = Vec::new();
        for field in fields {
            payload.extend_from_slice(field);
            payload.push(0);
        }
        let header = StoreHeader { kind, request_id, transaction: 0, length: payload.len() as u32 };
        let mut bytes = header.to_bytes().to_vec();
        bytes.extend(payload);
        bytes
    }

    /// Splits a reply, checking that it is well formed.
    fn parse_reply(reply: &[u8]) -> (StoreHeader, Vec<String>) {
        let header = StoreHeader::from_bytes(reply.first_chunk().expect("a header"));
        let payload = &reply[STORE_HEADER_SIZE..];
        assert_eq!(header.length as usize, payload.len());
        assert!(payload.len() <= STORE_PAYLOAD_MAX);
        let mut fields = Vec::new();
        if let Some((&last, body)) = payload.split_last() {
            assert_eq!(last, 0, "payload ends with NUL");
            for field in body.split(|&byte| byte == 0) {
                fields.push(String::from_utf8(field.to_vec()).expect("UTF-8"));
            }
        }
        (header, fields)
    }

    /// Sends one request over the wire; the reply's fields, or its error.
    fn call<const N: usize, const A: usize, const W: usize, const D: usize>(
        store: &mut Store<N, A, W, D>,
        caller: DomainId,
        op: StoreOp,
        fields: &[&str],
    ) -> Result<Vec<String>, StoreError> {
        let fields: Vec<&[u8]> = fields.iter().map(|field| field.as_bytes()).collect();
        let request = message(op as u32, 77, &fields);
        let mut response = [0u8; STORE_MESSAGE_MAX];
        let size = store.handle(caller, &request, &mut response);
        let (header, fields) = parse_reply(&response[..size]);
        assert_eq!(header.request_id, 77);
        if header.kind == StoreOp::Error as u32 {
            assert_eq!(fields.len(), 1);
            return Err(StoreError::from_name(fields[0].as_bytes()).expect("a known error name"));
        }
        assert_eq!(header.kind, op as u32);
        Ok(fields)
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
        assert_eq!(store.read(DOM0, "device/vbd/0/state"), Err(StoreError::NoEntry));
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
        assert_eq!(store.write(3, &relative, "x"), Err(StoreError::TooBig));
        let mut absolute = String::from(prefix);
        absolute.push_str(&"b".repeat(PATH_MAX + 1 - prefix.len()));
        assert_eq!(store.write(3, &absolute, "x"), Err(StoreError::TooBig));
        assert_eq!(store.write(3, "v", &"x".repeat(VALUE_MAX)), Ok(()));
        assert_eq!(store.write(3, "v", &"x".repeat(VALUE_MAX + 1)), Err(StoreError::TooBig));
        assert_eq!(store.write(3, "v", "a\0b"), Err(StoreError::Invalid));
        assert_eq!(store.watch(3, "v", &"t".repeat(TOKEN_MAX + 1)), Err(StoreError::TooBig));
        for bad in ["", "/a/", "a//b", "a/../b", "/a b", "é"] {
            assert_eq!(store.write(3, bad, "x"), Err(StoreError::Invalid), "{bad:?}");
        }
    }

    #[test]
    fn a_guest_cannot_reach_another_home() {
        let mut store = small();
        store.introduce_domain(1, Quota::GUEST).unwrap();
        store.introduce_domain(2, Quota::GUEST).unwrap();
        store.write(2, "secret", "42").unwrap();
        let path = "/local/domain/2/secret";
        assert_eq!(store.read(1, path), Err(StoreError::Access));
        assert_eq!(store.write(1, path, "0"), Err(StoreError::Access));
        assert_eq!(store.write(1, "/local/domain/2/new", "0"), Err(StoreError::Access));
        assert_eq!(store.mkdir(1, "/local/domain/2/new"), Err(StoreError::Access));
        assert_eq!(store.remove(1, path), Err(StoreError::Access));
        assert!(store.directory(1, "/local/domain/2").is_err());
        assert_eq!(store.get_permissions(1, path), Err(StoreError::Access));
        assert_eq!(store.set_permissions(1, path, &Permissions::owned_by(1)), Err(StoreError::Access));
        // Nor the rest of the tree.
        assert_eq!(store.write(1, "/elsewhere", "x"), Err(StoreError::Access));
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
        assert_eq!(store.read(5, "/local/domain/0/backend/vbd/5/0/state"), Err(StoreError::Access));
        let mut permissions = Permissions::owned_by(DOM0);
        permissions.grant(5, Access::Read).unwrap();
        store.set_permissions(DOM0, dir, &permissions).unwrap();
        // The grant is per node: the existing child is still closed ...
        assert_eq!(store.read(5, "/local/domain/0/backend/vbd/5/0/state"), Err(StoreError::Access));
        // ... and new children inherit it.
        store.write(DOM0, "/local/domain/0/backend/vbd/5/0/sectors", "2048").unwrap();
        assert_eq!(store.read(5, "/local/domain/0/backend/vbd/5/0/sectors"), Ok("2048"));
        assert_eq!(names(&*store, 5, dir), ["state", "sectors"]);
        assert_eq!(store.write(5, "/local/domain/0/backend/vbd/5/0/sectors", "1"), Err(StoreError::Access));
        assert_eq!(store.write(5, "/local/domain/0/backend/vbd/5/0/new", "1"), Err(StoreError::Access));
        assert_eq!(store.remove(5, dir), Err(StoreError::Access));
        // Another guest has no grant.
        store.introduce_domain(6, Quota::GUEST).unwrap();
        assert_eq!(store.read(6, "/local/domain/0/backend/vbd/5/0/sectors"), Err(StoreError::Access));
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
        assert_eq!(store.write(2, "/local/domain/1/mine", "y"), Err(StoreError::Access));
        // Giving it away is refused.
        assert_eq!(store.set_permissions(1, "mine", &Permissions::owned_by(2)), Err(StoreError::Access));
        // A write grant is not ownership.
        let mut shared = Permissions::owned_by(1);
        shared.grant(2, Access::Both).unwrap();
        store.set_permissions(1, "mine", &shared).unwrap();
        assert_eq!(store.write(2, "/local/domain/1/mine", "y"), Ok(()));
        assert_eq!(
            store.set_permissions(2, "/local/domain/1/mine", &Permissions::owned_by(2)),
            Err(StoreError::Access)
        );
        // dom0 may move it; the node moves between quotas.
        let (one, two) = (store.domain(1).unwrap().usage, store.domain(2).unwrap().usage);
        store.set_permissions(DOM0, "/local/domain/1/mine", &Permissions::owned_by(2)).unwrap();
        assert_eq!(store.domain(1).unwrap().usage.nodes, one.nodes - 1);
        assert_eq!(store.domain(2).unwrap().usage.nodes, two.nodes + 1);
        let mut full = Permissions::owned_by(1);
        for domain in 0..GRANTS_MAX as u32 {
            full.grant(10 + domain, Access::Read).unwrap();
        }
        assert_eq!(full.grant(99, Access::Read), Err(StoreError::TooBig));
        assert_eq!(full.grant(10, Access::Write), Err(StoreError::Invalid), "one grant per domain");
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
        assert_eq!(store.write(4, "name", "dom0"), Err(StoreError::Access));
        assert_eq!(store.remove(4, "name"), Err(StoreError::Access));
        assert_eq!(store.set_permissions(4, "name", &Permissions::owned_by(4)), Err(StoreError::Access));
        assert_eq!(store.mkdir(4, "name"), Err(StoreError::Access));
        // Nor by removing its home, which it owns, with them.
        assert_eq!(store.remove(4, "/local/domain/4"), Err(StoreError::Access));
        assert_eq!(store.read(4, "name"), Ok("web"));
        // What is its own below goes as before, with everything below it.
        store.write(4, "data/a/b", "1").unwrap();
        assert_eq!(store.remove(4, "data"), Ok(()));
        assert_eq!(store.read(4, "data/a/b"), Err(StoreError::NoEntry));
        // Another guest sees nothing of it; dom0 still removes the home.
        store.introduce_domain(5, Quota::GUEST).unwrap();
        assert_eq!(store.read(5, "/local/domain/4/name"), Err(StoreError::Access));
        store.remove_domain(4).unwrap();
        assert_eq!(store.read(DOM0, "/local/domain/4/name"), Err(StoreError::NoEntry));
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
        assert_eq!(store.read(DOM0, "/a/b/c"), Err(StoreError::NoEntry));
        assert_eq!(store.remove(DOM0, "/a/b"), Err(StoreError::NoEntry));
        assert_eq!(names(&*store, DOM0, "/a"), ["e", "f"]);
        assert_eq!(store.remove(DOM0, "/"), Err(StoreError::Invalid));
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
        assert_eq!(
            store.watch(3, "/local/domain/3/a", "t"),
            Err(StoreError::Exists),
            "relative and absolute are one watch"
        );
        store.watch(3, "a", "u").unwrap();
        assert_eq!(store.domain(3).unwrap().usage.watches, 2);
        events(&mut *store, 3);
        store.unwatch(3, "a", "t").unwrap();
        assert_eq!(store.unwatch(3, "a", "t"), Err(StoreError::NoEntry));
        assert_eq!(store.unwatch(3, "b", "u"), Err(StoreError::NoEntry));
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
        assert_eq!(store.write(7, "k5", "v"), Err(StoreError::Quota));
        assert_eq!(store.write(7, "deep/er", "v"), Err(StoreError::Quota), "all parents or nothing");
        assert_eq!(store.read(7, "deep"), Err(StoreError::NoEntry));
        store.remove(7, "k4").unwrap();
        store.write(7, "k5", "v").unwrap();
        // Bytes: grow a value past 200 bytes in all.
        let used = store.domain(7).unwrap().usage.bytes as usize;
        let room = 200 - used;
        assert_eq!(store.write(7, "k0", &"x".repeat(room + 2)), Err(StoreError::Quota));
        assert_eq!(store.write(7, "k0", &"x".repeat(room + 1)), Ok(()), "the old value's byte is returned");
        assert_eq!(store.domain(7).unwrap().usage.bytes, 200);
        store.write(7, "k0", "").unwrap();
        // Watches.
        store.watch(7, "a", "1").unwrap();
        store.watch(7, "b", "2").unwrap();
        assert_eq!(store.watch(7, "c", "3"), Err(StoreError::Quota));
        store.unwatch(7, "a", "1").unwrap();
        store.watch(7, "c", "3").unwrap();
        // dom0 is not limited, and what it makes for the guest counts.
        store.write(DOM0, "/local/domain/7/from-dom0", "v").unwrap();
        assert_eq!(store.domain(7).unwrap().usage.nodes, 7);
        assert_eq!(store.write(7, "k9", "v"), Err(StoreError::Quota));
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
        let operations = [
            StoreOp::Read,
            StoreOp::Mkdir,
            StoreOp::Write,
            StoreOp::Remove,
            StoreOp::Directory,
            StoreOp::GetPermissions,
            StoreOp::SetPermissions,
        ];
        for (existing, missing) in pairs {
            for op in operations {
                let ask = |store: &mut Small, path: &str| {
                    let fields: &[&str] = match op {
                        StoreOp::Write => &[path, "x"],
                        StoreOp::SetPermissions => &[path, "b5"],
                        _ => &[path],
                    };
                    call(store, 5, op, fields)
                };
                assert_eq!(ask(&mut store, existing), Err(StoreError::Access), "{op:?} {existing}");
                assert_eq!(ask(&mut store, missing), Err(StoreError::Access), "{op:?} {missing}");
            }
        }
        // Where the guest may look, missing nodes are reported as missing.
        assert_eq!(store.read(5, "/local/domain/0/backend/vif/5/0/nothing"), Err(StoreError::NoEntry));
        assert_eq!(store.read(5, "nothing"), Err(StoreError::NoEntry));
        // Nothing was changed by the refused requests.
        assert_eq!(store.read(DOM0, "/local/domain/6/device/vif/0/state"), Ok("1"));
        assert_eq!(store.read(DOM0, "/local/domain/6/device/vbd"), Err(StoreError::NoEntry));
        assert_eq!(store.read(DOM0, "/local/domain/7"), Err(StoreError::NoEntry));
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
        assert_eq!(error, StoreError::NoSpace);
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
        assert_eq!(store.write(DOM0, "/one-more", &value), Err(StoreError::NoSpace));
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
                let value = "z".repeat(random.below(800) as usize);
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
        assert_eq!(store.read(DOM0, "/local/domain/5"), Err(StoreError::NoEntry));
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
        assert_eq!(store.read(5, "/shared/left-behind"), Err(StoreError::Access));
        assert_eq!(store.remove_domain(DOM0), Err(StoreError::Invalid));
        check_consistent(&*store);
    }

    #[test]
    fn every_operation_over_the_wire() {
        let mut store = small();
        store.introduce_domain(2, Quota::GUEST).unwrap();
        use StoreOp::*;
        assert_eq!(call(&mut *store, 2, Write, &["dev/a", "hello"]), Ok(vec![]));
        assert_eq!(call(&mut *store, 2, Read, &["dev/a"]), Ok(vec!["hello".to_string()]));
        assert_eq!(call(&mut *store, 2, Mkdir, &["dev/b"]), Ok(vec![]));
        assert_eq!(call(&mut *store, 2, Write, &["dev/c", ""]), Ok(vec![]));
        assert_eq!(call(&mut *store, 2, Read, &["dev/c"]), Ok(vec![String::new()]));
        assert_eq!(call(&mut *store, 2, Directory, &["dev"]), Ok(vec!["a".into(), "b".into(), "c".into()]));
        assert_eq!(call(&mut *store, 2, Directory, &["dev/a"]), Ok(vec![]));
        assert_eq!(call(&mut *store, 2, GetPermissions, &["dev/a"]), Ok(vec!["n2".to_string()]));
        assert_eq!(call(&mut *store, 2, SetPermissions, &["dev/a", "r2", "b0", "w7"]), Ok(vec![]));
        assert_eq!(call(&mut *store, 2, GetPermissions, &["dev/a"]), Ok(vec!["r2".into(), "b0".into(), "w7".into()]));
        assert_eq!(call(&mut *store, 2, SetPermissions, &["dev/a", "n3"]), Err(StoreError::Access));
        assert_eq!(call(&mut *store, 2, SetPermissions, &["dev/a", "n2", "r1", "r1"]), Err(StoreError::Invalid));
        assert_eq!(
            call(&mut *store, 2, SetPermissions, &["dev/a", "n2", "r1", "r3", "r4", "r5", "r6"]),
            Err(StoreError::TooBig)
        );
        assert_eq!(call(&mut *store, 2, SetPermissions, &["dev/a", "x2"]), Err(StoreError::Invalid));
        assert_eq!(call(&mut *store, 2, SetPermissions, &["dev/a", "r"]), Err(StoreError::Invalid));
        assert_eq!(call(&mut *store, 2, SetPermissions, &["dev/a"]), Err(StoreError::Invalid));
        assert_eq!(call(&mut *store, 2, Watch, &["dev", "tok"]), Ok(vec![]));
        assert_eq!(call(&mut *store, 2, Watch, &["dev", "tok"]), Err(StoreError::Exists));
        assert_eq!(events(&mut *store, 2), [("/local/domain/2/dev".to_string(), "tok".to_string())]);
        assert_eq!(call(&mut *store, 2, Remove, &["dev/b"]), Ok(vec![]));
        assert_eq!(events(&mut *store, 2), [("/local/domain/2/dev/b".to_string(), "tok".to_string())]);
        assert_eq!(call(&mut *store, 2, Unwatch, &["dev", "tok"]), Ok(vec![]));
        assert_eq!(call(&mut *store, 2, Unwatch, &["dev", "tok"]), Err(StoreError::NoEntry));
        assert_eq!(call(&mut *store, 2, Read, &["dev/b"]), Err(StoreError::NoEntry));
        // Missing, but where guest 2 may not look: refused, not reported missing.
        assert_eq!(call(&mut *store, 2, Read, &["/local/domain/0"]), Err(StoreError::Access));
        assert_eq!(call(&mut *store, 2, Read, &["/"]), Err(StoreError::Access));
        // A listing too long for one message.
        for index in 0..20 {
            let name = format!("{index:0>250}");
            store.mkdir(DOM0, &format!("/wide/{name}")).unwrap();
        }
        assert_eq!(call(&mut *store, DOM0, Directory, &["/wide"]), Err(StoreError::TooBig));
        // Through the static, as dom0 would hold it.
        let mut shared = SHARED.lock();
        assert_eq!(call(&mut *shared, DOM0, Write, &["/x", "1"]), Ok(vec![]));
    }

    #[test]
    fn malformed_messages_get_errors() {
        let mut store = small();
        store.introduce_domain(2, Quota::GUEST).unwrap();
        let mut response = [0u8; STORE_MESSAGE_MAX];
        let mut check = |request: &[u8], expected: StoreError| {
            let size = store.handle(2, request, &mut response);
            let (header, fields) = parse_reply(&response[..size]);
            assert_eq!(header.kind, StoreOp::Error as u32, "{request:?}");
            assert_eq!(fields, [expected.name()], "{request:?}");
        };
        let read = StoreOp::Read as u32;
        check(&[], StoreError::Invalid);
        check(&[1, 0, 0], StoreError::Invalid);
        let mut good = message(read, 9, &[b"a"]);
        // Length longer or shorter than the bytes given.
        good[12] = 9;
        check(&good, StoreError::Invalid);
        good[12] = 1;
        check(&good, StoreError::Invalid);
        // Oversized length.
        let mut big = StoreHeader { kind: read, request_id: 1, transaction: 0, length: STORE_PAYLOAD_MAX as u32 + 1 }
            .to_bytes()
            .to_vec();
        check(&big, StoreError::TooBig);
        big.resize(STORE_MESSAGE_MAX + 1, b'a');
        check(&big, StoreError::TooBig);
        // Missing final NUL, bad UTF-8, wrong field counts.
        let mut unterminated = message(read, 1, &[b"a"]);
        unterminated.pop();
        unterminated[12] -= 1;
        check(&unterminated, StoreError::Invalid);
        check(&message(StoreOp::Write as u32, 1, &[b"a", b"\xff\xfe"]), StoreError::Invalid);
        check(&message(read, 1, &[]), StoreError::Invalid);
        check(&message(read, 1, &[b"a", b"b"]), StoreError::Invalid);
        check(&message(StoreOp::Write as u32, 1, &[b"a"]), StoreError::Invalid);
        check(&message(StoreOp::Write as u32, 1, &[b"a", b"b", b"c"]), StoreError::Invalid);
        check(&message(StoreOp::Watch as u32, 1, &[b"a", b"b", b"c", b"d", b"e", b"f", b"g"]), StoreError::Invalid);
        // Bad paths.
        check(&message(read, 1, &[b""]), StoreError::Invalid);
        check(&message(read, 1, &[b"a//b"]), StoreError::Invalid);
        check(&message(read, 1, &[&[b'a'; PATH_MAX + 1]]), StoreError::TooBig);
        // Kinds a client may not send, or that do not exist.
        check(&message(StoreOp::WatchEvent as u32, 1, &[b"a", b"b"]), StoreError::Invalid);
        check(&message(StoreOp::Error as u32, 1, &[b"EINVAL"]), StoreError::Invalid);
        check(&message(0, 1, &[b"a"]), StoreError::NotSupported);
        check(&message(99, 1, &[b"a"]), StoreError::NotSupported);
        // Transactions are not in this version.
        let mut transaction = message(read, 1, &[b"a"]);
        transaction[8] = 1;
        check(&transaction, StoreError::NotSupported);
    }

    /// Checks a reply to `request` is well formed: an Error with a known
    /// name, or the request's own kind.
    fn check_reply(request: &[u8], reply: &[u8]) {
        let (header, fields) = parse_reply(reply);
        let sent = request.first_chunk::<STORE_HEADER_SIZE>().map(StoreHeader::from_bytes).unwrap_or_default();
        assert_eq!(header.request_id, sent.request_id);
        if header.kind == StoreOp::Error as u32 {
            assert_eq!(fields.len(), 1);
            assert!(StoreError::from_name(fields[0].as_bytes()).is_some());
        } else {
            assert_eq!(header.kind, sent.kind);
            let op = StoreOp::from_number(sent.kind).unwrap();
            assert!(!matches!(op, StoreOp::WatchEvent | StoreOp::Error));
        }
    }

    fn random_request(random: &mut XorShift) -> Vec<u8> {
        const PIECES: [&[u8]; 14] = [
            b"device/vbd/0/state",
            b"/local/domain/1/x",
            b"/local/domain/2/secret",
            b"/local/domain/0/backend",
            b"/",
            b"a",
            b"4",
            b"b1",
            b"r0",
            b"n2",
            b"",
            b"..",
            b"\xff",
            b"a//b",
        ];
        if random.below(8) == 0 {
            let length = random.below(48) as usize;
            return (0..length).map(|_| random.next() as u8).collect();
        }
        let kind = 1 + random.below(12) as u32;
        // Mostly the field count the kind wants, so that requests get past
        // the framing checks into the store.
        let count = match (random.below(4), StoreOp::from_number(kind)) {
            (0, _) | (_, None) => random.below(5) as usize,
            (_, Some(StoreOp::Write | StoreOp::Watch | StoreOp::Unwatch)) => 2,
            (_, Some(StoreOp::SetPermissions)) => 2 + random.below(3) as usize,
            _ => 1,
        };
        let fields: Vec<&[u8]> = (0..count).map(|_| PIECES[random.below(PIECES.len())]).collect();
        let mut bytes = message(kind, random.next() as u32, &fields);
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
        let mut response = [0u8; STORE_MESSAGE_MAX];
        let mut event = [0u8; STORE_MESSAGE_MAX];
        for round in 0..40_000 {
            let request = random_request(&mut random);
            // Hostile guests first, then everyone.
            let caller = if round < 20_000 {
                [1, 3][random.below(2) as usize]
            } else {
                [1, 2, 3, DOM0][random.below(4) as usize]
            };
            let size = store.handle(caller, &request, &mut response);
            check_reply(&request, &response[..size]);
            if random.below(4) == 0 {
                let size = store.pop_event(caller, &mut event);
                if size != 0 {
                    parse_reply(&event[..size]);
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
        let mut response = [0u8; STORE_MESSAGE_MAX];
        let mut ids = Vec::new();
        let mut at = 0;
        while at < stream.len() {
            let piece = (1 + random.below(300) as usize).min(stream.len() - at);
            let mut offered = &stream[at..at + piece];
            at += piece;
            while !offered.is_empty() {
                let taken = assembler.feed(offered);
                offered = &offered[taken..];
                match assembler.message() {
                    Some(request) => {
                        let size = store.handle(caller, request, &mut response);
                        check_reply(request, &response[..size]);
                        ids.push(StoreHeader::from_bytes(response.first_chunk().unwrap()).request_id);
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
            request.resize(request.len().max(STORE_HEADER_SIZE), 0);
            let length = if random.below(50) == 0 {
                STORE_PAYLOAD_MAX + 1 + random.below(5000) as usize
            } else {
                request.len() - STORE_HEADER_SIZE
            };
            request.resize(STORE_HEADER_SIZE + length, b'x');
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
        let first = message(StoreOp::Read as u32, 1, &[b"some/path"]);
        let second = message(StoreOp::Write as u32, 2, &[b"k", b"v"]);
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
        let huge = StoreHeader { kind: StoreOp::Write as u32, request_id: 3, transaction: 0, length: 10_000 };
        let mut stream = huge.to_bytes().to_vec();
        stream.extend(std::iter::repeat_n(b'x', 10_000));
        stream.extend(&first);
        let mut at = 0;
        while assembler.message().is_none() {
            at += assembler.feed(&stream[at..(at + 700).min(stream.len())]);
        }
        assert_eq!(at, 16 + 10_000);
        let mut store = small();
        let mut response = [0u8; STORE_MESSAGE_MAX];
        let size = store.handle(DOM0, assembler.message().unwrap(), &mut response);
        let (header, fields) = parse_reply(&response[..size]);
        assert_eq!((header.kind, header.request_id, fields), (StoreOp::Error as u32, 3, vec!["E2BIG".to_string()]));
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
        seen_peer: DeviceState,
    }

    impl End {
        fn state(&self, store: &mut Small, path: &str) -> DeviceState {
            let value = call(store, self.domain, StoreOp::Read, &[&format!("{path}/state")]);
            DeviceState::from_key(value.ok().as_ref().map(|fields| fields[0].as_bytes()))
        }

        fn set(&self, store: &mut Small, state: DeviceState) {
            call(store, self.domain, StoreOp::Write, &[&format!("{}/state", self.own), state.as_value()]).unwrap();
        }

        fn read(&self, store: &mut Small, key: &str) -> u32 {
            let fields = call(store, self.domain, StoreOp::Read, &[&format!("{}/{key}", self.peer)]).unwrap();
            abi::store::parse_decimal(fields[0].as_bytes()).unwrap()
        }
    }

    #[test]
    fn a_front_end_and_a_back_end_meet_through_the_store() {
        let mut store = small();
        let store = &mut *store;
        let guest = 5;
        let front_dir = "/local/domain/5/device/vbd/0";
        let back_dir = "/local/domain/0/backend/vbd/5/0";
        // The toolstack: the guest's home, both directories, permissions
        // first so that the keys inherit them.
        store.introduce_domain(guest, Quota::GUEST).unwrap();
        store.mkdir(DOM0, front_dir).unwrap();
        let mut front_permissions = Permissions::owned_by(guest);
        front_permissions.grant(DOM0, Access::Read).unwrap();
        store.set_permissions(DOM0, front_dir, &front_permissions).unwrap();
        store.write(DOM0, &format!("{front_dir}/backend"), back_dir).unwrap();
        store.write(DOM0, &format!("{front_dir}/backend-id"), "0").unwrap();
        store.write(DOM0, &format!("{front_dir}/state"), DeviceState::Initialising.as_value()).unwrap();
        store.mkdir(DOM0, back_dir).unwrap();
        let mut back_permissions = Permissions::owned_by(DOM0);
        back_permissions.grant(guest, Access::Read).unwrap();
        store.set_permissions(DOM0, back_dir, &back_permissions).unwrap();
        store.write(DOM0, &format!("{back_dir}/frontend"), front_dir).unwrap();
        store.write(DOM0, &format!("{back_dir}/frontend-id"), "5").unwrap();
        store.write(DOM0, &format!("{back_dir}/state"), DeviceState::Initialising.as_value()).unwrap();

        // The front end finds its back end through its own directory.
        let found = call(store, guest, StoreOp::Read, &["device/vbd/0/backend"]).unwrap();
        let mut front = End {
            domain: guest,
            own: front_dir.to_string(),
            peer: found[0].clone(),
            seen_peer: DeviceState::Initialising,
        };
        let mut back = End {
            domain: DOM0,
            own: back_dir.to_string(),
            peer: front_dir.to_string(),
            seen_peer: DeviceState::Initialising,
        };
        call(store, guest, StoreOp::Watch, &[&format!("{}/state", front.peer), "backend-state"]).unwrap();
        call(store, DOM0, StoreOp::Watch, &[&format!("{}/state", back.peer), "frontend-state"]).unwrap();

        // The back end publishes its parameters and waits.
        call(store, DOM0, StoreOp::Write, &[&format!("{back_dir}/sectors"), "2048"]).unwrap();
        back.set(store, DeviceState::InitWait);

        let mut mapped = None;
        for _round in 0..10 {
            for (_, token) in events(store, guest) {
                assert_eq!(token, "backend-state");
                let peer = front.state(store, &front.peer.clone());
                let own = front.state(store, &front.own.clone());
                match (own, peer) {
                    (DeviceState::Initialising, DeviceState::InitWait) => {
                        assert_eq!(front.read(store, "sectors"), 2048);
                        call(store, guest, StoreOp::Write, &["device/vbd/0/ring-ref", "8"]).unwrap();
                        call(store, guest, StoreOp::Write, &["device/vbd/0/event-channel", "3"]).unwrap();
                        front.set(store, DeviceState::Initialised);
                    }
                    (DeviceState::Initialised, DeviceState::Connected) => front.set(store, DeviceState::Connected),
                    (DeviceState::Connected, DeviceState::Closing) => front.set(store, DeviceState::Closing),
                    (DeviceState::Closing, DeviceState::Closed) => front.set(store, DeviceState::Closed),
                    _ => {}
                }
                front.seen_peer = peer;
            }
            for (_, token) in events(store, DOM0) {
                assert_eq!(token, "frontend-state");
                let peer = back.state(store, &back.peer.clone());
                let own = back.state(store, &back.own.clone());
                match (own, peer) {
                    (DeviceState::InitWait, DeviceState::Initialised) => {
                        mapped = Some((back.read(store, "ring-ref"), back.read(store, "event-channel")));
                        back.set(store, DeviceState::Connected);
                    }
                    (DeviceState::Connected, DeviceState::Closing) => back.set(store, DeviceState::Closed),
                    _ => {}
                }
                back.seen_peer = peer;
            }
        }
        assert_eq!(mapped, Some((8, 3)));
        assert_eq!(front.state(store, front_dir), DeviceState::Connected);
        assert_eq!(back.state(store, back_dir), DeviceState::Connected);
        assert_eq!((front.seen_peer, back.seen_peer), (DeviceState::Connected, DeviceState::Connected));
        // The guest cannot move the back end's state.
        assert_eq!(call(store, guest, StoreOp::Write, &[&format!("{back_dir}/state"), "6"]), Err(StoreError::Access));

        // The front end closes; both reach Closed.
        front.set(store, DeviceState::Closing);
        for _round in 0..10 {
            for _ in events(store, DOM0) {
                if back.state(store, front_dir) == DeviceState::Closing
                    && back.state(store, back_dir) == DeviceState::Connected
                {
                    back.set(store, DeviceState::Closed);
                }
            }
            for _ in events(store, guest) {
                if front.state(store, back_dir) == DeviceState::Closed
                    && front.state(store, front_dir) == DeviceState::Closing
                {
                    front.set(store, DeviceState::Closed);
                }
            }
        }
        assert_eq!(front.state(store, front_dir), DeviceState::Closed);
        assert_eq!(back.state(store, back_dir), DeviceState::Closed);

        // The guest is destroyed: the back end's watch fires and the key is gone.
        store.remove_domain(guest).unwrap();
        assert_eq!(events(store, DOM0).len(), 1);
        assert_eq!(call(store, DOM0, StoreOp::Read, &[&format!("{front_dir}/state")]), Err(StoreError::NoEntry));
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
                assert_eq!(error, StoreError::Quota);
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
                assert_eq!(error, StoreError::Quota);
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
