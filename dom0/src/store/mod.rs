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
//! The store's parts, a file each, with the tests of what it does:
//! - `tree.rs`: the nodes and the operations on them (read, write, mkdir,
//!   remove, directory, permissions), `paths.rs` resolving the paths they
//!   name;
//! - `permissions.rs`: who may read and write a node;
//! - `arena.rs`: the bytes of names, values, watch paths and tokens;
//! - `domains.rs`: the per-domain records, quotas and usage;
//! - `watches.rs`: watches and the queues of their events;
//! - `transactions.rs`: transactions, a log replayed at commit;
//! - `wire.rs`: the xenstore wire protocol, requests to replies, and the
//!   [`MessageAssembler`].

mod arena;
mod domains;
mod paths;
mod permissions;
mod transactions;
mod tree;
mod watches;
mod wire;

#[cfg(test)]
mod test_support;

pub use domains::{DomainReport, Quota, Usage};
pub use permissions::{Grant, Permissions};
pub use transactions::{TRANSACTION_BYTES, TRANSACTION_CHANGES, TRANSACTION_READS, TRANSACTIONS_PER_DOMAIN};
pub use watches::EVENT_QUEUE_BYTES;
pub use wire::{MESSAGE_MAX, MessageAssembler};

use crate::store::arena::FREE_SLOT;
use crate::store::domains::DomainSlot;
use crate::store::tree::Node;
use crate::store::watches::Watch;

/// Node-table entries of [`DefaultStore`].
pub const DEFAULT_NODES: usize = 4096;
/// Arena bytes of [`DefaultStore`].
pub const DEFAULT_ARENA: usize = 512 * 1024;
/// Watch-table entries of [`DefaultStore`].
pub const DEFAULT_WATCHES: usize = 2048;
/// Per-domain records of [`DefaultStore`]: dom0 and 63 guests, as many
/// domains as hv runs.
pub const DEFAULT_DOMAINS: usize = 64;

/// The store dom0 runs: about 2.4 MiB.
pub type DefaultStore = Store<DEFAULT_NODES, DEFAULT_ARENA, DEFAULT_WATCHES, DEFAULT_DOMAINS>;

// Guests at their default quotas use at most three quarters of each table.
const _: () = assert!((DEFAULT_DOMAINS - 1) * Quota::GUEST.nodes as usize <= DEFAULT_NODES / 4 * 3);
const _: () = assert!((DEFAULT_DOMAINS - 1) * Quota::GUEST.bytes as usize <= DEFAULT_ARENA / 4 * 3);
const _: () = assert!((DEFAULT_DOMAINS - 1) * Quota::GUEST.watches as usize <= DEFAULT_WATCHES / 4 * 3);

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
    /// The last generation handed out (see `transactions.rs`).
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

    /// Nodes in the tree, the root included.
    pub fn node_count(&self) -> usize {
        self.node_count + 1
    }

    /// Arena bytes in live extents.
    pub fn arena_bytes(&self) -> usize {
        self.arena_live
    }
}

impl<const NODES: usize, const ARENA: usize, const WATCHES: usize, const DOMAINS: usize> Default
    for Store<NODES, ARENA, WATCHES, DOMAINS>
{
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;
    use abi::store::Access;
    use abi::xen::errno::Errno;
    use abi::xen::io::store::XsdSockmsgType as T;
    use abi::xen::io::xenbus::XenbusState;
    use abi::{DOM0, DomainId};
    use std::string::{String, ToString};

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
}
