//! The store's per-domain records: introducing and removing a domain,
//! its quota and what it uses.

use abi::xen::errno::Errno;
use abi::{DOM0, DomainId};

use crate::store::paths::home;
use crate::store::transactions::{TRANSACTIONS_PER_DOMAIN, Transaction};
use crate::store::tree::ROOT;
use crate::store::watches::EventQueue;
use crate::store::{Permissions, Store};

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

#[derive(Clone, Copy)]
pub(super) struct DomainSlot {
    pub(super) used: bool,
    pub(super) id: DomainId,
    pub(super) quota: Quota,
    pub(super) usage: Usage,
    pub(super) dropped: u64,
    pub(super) queue: EventQueue,
    pub(super) transactions: [Transaction; TRANSACTIONS_PER_DOMAIN],
    /// The id the next transaction tries first (0 is skipped).
    pub(super) next_transaction: u32,
}

impl DomainSlot {
    pub(super) const EMPTY: DomainSlot = DomainSlot {
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
    pub(super) fn transaction(&self, id: u32) -> Option<usize> {
        if id == 0 {
            return None;
        }
        self.transactions.iter().position(|transaction| transaction.id == id)
    }
}

pub(super) fn find_slot(domains: &[DomainSlot], id: DomainId) -> Option<usize> {
    domains.iter().position(|slot| slot.used && slot.id == id)
}

impl<const NODES: usize, const ARENA: usize, const WATCHES: usize, const DOMAINS: usize>
    Store<NODES, ARENA, WATCHES, DOMAINS>
{
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

    /// The slot of `domain`, made on first use with the default quota
    /// (unlimited for dom0) and the usage it already has.
    pub(super) fn ensure_domain(&mut self, domain: DomainId) -> Result<usize, Errno> {
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
    pub(super) fn recount(&self, domain: DomainId) -> Usage {
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
    pub(super) fn charge(&mut self, owner: DomainId, nodes: i64, bytes: i64) {
        if let Some(slot) = find_slot(&self.domains, owner) {
            let usage = &mut self.domains[slot].usage;
            usage.nodes = (usage.nodes as i64 + nodes).clamp(0, u32::MAX as i64) as u32;
            usage.bytes = (usage.bytes as i64 + bytes).clamp(0, u32::MAX as i64) as u32;
        }
    }

    /// Checks that `caller` may make `owner` own `nodes` more nodes and
    /// `bytes` more bytes.
    pub(super) fn check_quota(
        &mut self,
        caller: DomainId,
        owner: DomainId,
        nodes: usize,
        bytes: i64,
    ) -> Result<(), Errno> {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::*;
    use crate::store::{DEFAULT_DOMAINS, DEFAULT_NODES, DEFAULT_WATCHES, DefaultStore};
    use abi::store::{Access, VALUE_MAX};
    use std::string::ToString;

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
