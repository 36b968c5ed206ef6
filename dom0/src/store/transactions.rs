//! Transactions: a log of changes, answered from a view of the tree and
//! replayed at commit.
//!
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

use abi::store::{Access, PATH_MAX, VALUE_MAX};
use abi::xen::errno::Errno;
use abi::xen::io::store::XsdSockmsgType;
use abi::{DOM0, DomainId};
use arrayvec::ArrayString;

use crate::store::arena::EXTENT_HEADER;
use crate::store::domains::find_slot;
use crate::store::paths::{PathBuffer, check_text, components, is_at_or_below, resolve};
use crate::store::tree::ROOT;
use crate::store::wire::{Reply, parse_set_permissions, path_and_value, strings};
use crate::store::{Permissions, Store};

/// Transactions a domain may have open at once (`ENOSPC` beyond).
pub const TRANSACTIONS_PER_DOMAIN: usize = 4;
/// Changes one transaction may log (`ENOSPC` beyond).
pub const TRANSACTION_CHANGES: usize = 32;
/// Bytes of paths and values one transaction may log (`ENOSPC` beyond).
pub const TRANSACTION_BYTES: usize = 2048;
/// Looks at live nodes one transaction may record (`ENOSPC` beyond).
pub const TRANSACTION_READS: usize = 64;

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
pub(super) struct Transaction {
    /// 0: the slot is free.
    pub(super) id: u32,
    entries: [LogEntry; TRANSACTION_CHANGES],
    entry_count: usize,
    bytes: [u8; TRANSACTION_BYTES],
    byte_count: usize,
    looks: [Look; TRANSACTION_READS],
    look_count: usize,
}

impl Transaction {
    pub(super) const EMPTY: Transaction = Transaction {
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

impl<const NODES: usize, const ARENA: usize, const WATCHES: usize, const DOMAINS: usize>
    Store<NODES, ARENA, WATCHES, DOMAINS>
{
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
    pub(super) fn transaction_request(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::*;
    use crate::store::{MESSAGE_MAX, Quota};
    use crate::test_random::XorShift;
    use abi::xen::io::store::XsdSockmsgType as T;
    use std::string::{String, ToString};
    use std::vec::Vec;

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
}
