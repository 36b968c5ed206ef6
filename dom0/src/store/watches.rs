//! Watches, and each domain's queue of the events they fire.

use abi::store::{PATH_MAX, TOKEN_MAX};
use abi::xen::errno::Errno;
use abi::xen::io::store::{XSD_SOCKMSG_SIZE, XsdSockmsg, XsdSockmsgType};
use abi::{DOM0, DomainId};

use crate::store::arena::EXTENT_HEADER;
use crate::store::domains::find_slot;
use crate::store::paths::{check_text, is_at_or_below, resolve};
use crate::store::transactions::{TRANSACTIONS_PER_DOMAIN, Transaction};
use crate::store::{MESSAGE_MAX, Permissions, Store};

/// Bytes of pending watch events kept per domain. An event takes its path
/// and token plus 4 bytes: at least three events of maximal size, and
/// dozens of ordinary ones.
pub const EVENT_QUEUE_BYTES: usize = 4096;

/// Bytes an event takes in a queue besides its path and token: a u16
/// length and the two NULs.
const EVENT_OVERHEAD: usize = 4;

const _: () = assert!(EVENT_QUEUE_BYTES >= 3 * (PATH_MAX + TOKEN_MAX + EVENT_OVERHEAD));

#[derive(Clone, Copy)]
pub(super) struct Watch {
    pub(super) used: bool,
    pub(super) domain: DomainId,
    /// Offset of the extent (absolute path, then token) in the arena.
    pub(super) extent: u32,
    pub(super) path_len: u16,
    pub(super) token_len: u16,
}

impl Watch {
    pub(super) const EMPTY: Watch = Watch { used: false, domain: 0, extent: 0, path_len: 0, token_len: 0 };

    pub(super) fn size(&self) -> usize {
        EXTENT_HEADER + self.path_len as usize + self.token_len as usize
    }
}

/// A domain's pending events: records of a u16 payload length and the
/// payload (path NUL token NUL) in a byte ring with free-running indices.
#[derive(Clone, Copy)]
pub(super) struct EventQueue {
    bytes: [u8; EVENT_QUEUE_BYTES],
    read: usize,
    write: usize,
    pub(super) count: u32,
}

impl EventQueue {
    pub(super) const EMPTY: EventQueue = EventQueue { bytes: [0; EVENT_QUEUE_BYTES], read: 0, write: 0, count: 0 };

    pub(super) fn used(&self) -> usize {
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

impl<const NODES: usize, const ARENA: usize, const WATCHES: usize, const DOMAINS: usize>
    Store<NODES, ARENA, WATCHES, DOMAINS>
{
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

    pub(super) fn free_watch(&mut self, index: usize) {
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
    pub(super) fn fire(&mut self, changed: &str, permissions: &Permissions, removal: bool) {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Quota;
    use crate::store::test_support::*;
    use abi::store::Access;
    use std::string::{String, ToString};
    use std::vec::Vec;

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
}
