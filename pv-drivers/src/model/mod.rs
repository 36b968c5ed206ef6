//! A model of what a guest's front ends talk to, for host tests: the
//! guest's device pages ([`Memory`]), its grant table, and dom0's side
//! ([`Dom0`]: the store and the back ends), all in one [`Model`] that
//! implements [`Platform`]. dom0 runs whenever the front end waits, so a
//! front end that forgets to notify, or waits for something that never
//! comes, is caught: dom0's services look at a ring only after its port
//! was notified, and a test that waits too long fails.

mod blkback;
mod memory;
mod netback;
mod store;

use std::collections::BTreeSet;

use abi::DomainId;

use crate::blkfront::DiskPages;
use crate::netfront::VifPages;
use crate::platform::{GuestMemory, NotDeviceMemory, Platform};
use crate::ring::{FrontRing, Slot};
use crate::store_client::StoreClient;

pub use blkback::{Blkback, HostileDisk};
pub use memory::Memory;
pub use netback::{HostileNet, MAC, Netback};
pub use store::{HostileStore, Store};

/// The guest's domain id in the model.
pub const GUEST: DomainId = 5;

/// The store's event port (the guest's end).
pub const STORE_PORT: u32 = 1;

/// Ticks in a model second.
pub const TICKS_PER_SECOND: u64 = 1_000_000;

/// Waits after which a test has surely hung.
const WAITS_MAX: u64 = 100_000;

/// The guest's pages in the model: the store ring, then the disk's ring and
/// transfer pages, then the vif's.
const STORE_PAGE: usize = 0;
/// The disk's ring page.
pub const DISK_RING_PAGE: usize = 1;
/// The first disk transfer page.
pub const DISK_TRANSFER_PAGE: usize = 2;
/// The first vif page.
pub const VIF_PAGE: usize = DISK_TRANSFER_PAGE + crate::blkfront::TRANSFER_PAGES;
const PAGES: usize = VIF_PAGE + crate::netfront::VIF_PAGES;

/// One entry of the guest's grant table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Who may map it.
    pub domain: DomainId,
    /// The page.
    pub address: u64,
    /// Whether the grantee may only read.
    pub readonly: bool,
    /// Whether the grantee maps it now.
    pub mapped: bool,
}

/// The guest's grant table (reference 0 is never handed out).
#[derive(Debug, Default)]
pub struct Grants {
    entries: Vec<Option<Grant>>,
}

impl Grants {
    fn grant(&mut self, domain: DomainId, address: u64, readonly: bool) -> Result<u32, abi::Error> {
        let grant = Some(Grant { domain, address, readonly, mapped: false });
        if self.entries.is_empty() {
            self.entries.push(None);
        }
        let reference = match self.entries.iter().skip(1).position(Option::is_none) {
            Some(free) => free + 1,
            None if self.entries.len() < abi::grant::ENTRIES => {
                self.entries.push(None);
                self.entries.len() - 1
            }
            None => return Err(abi::Error::Busy),
        };
        self.entries[reference] = grant;
        Ok(reference as u32)
    }

    fn end(&mut self, reference: u32) -> Result<(), abi::Error> {
        let entry = self.entries.get_mut(reference as usize).filter(|entry| entry.is_some());
        let entry = entry.ok_or(abi::Error::InvalidArgument)?;
        if entry.is_some_and(|grant| grant.mapped) {
            return Err(abi::Error::Busy);
        }
        *entry = None;
        Ok(())
    }

    /// dom0 maps grant `reference` (`writable` or not): the page's
    /// address, or None when the guest did not grant it so.
    pub fn map(&mut self, reference: u32, writable: bool) -> Option<u64> {
        let grant = self.entries.get_mut(reference as usize)?.as_mut()?;
        if grant.domain != abi::DOM0 || (writable && grant.readonly) {
            return None;
        }
        grant.mapped = true;
        Some(grant.address)
    }

    /// dom0 unmaps grant `reference`.
    pub fn unmap(&mut self, reference: u32) {
        if let Some(Some(grant)) = self.entries.get_mut(reference as usize) {
            grant.mapped = false;
        }
    }

    /// Grants not revoked.
    pub fn live(&self) -> usize {
        self.entries.iter().flatten().count()
    }
}

/// dom0 as the guest's front ends see it: it maps their grants, serves the
/// store and runs the back ends.
#[derive(Debug)]
pub struct Dom0 {
    /// The guest's pages.
    pub memory: Memory,
    /// The guest's grant table.
    pub grants: Grants,
    /// The guest's store.
    pub store: Store,
    /// Ports the guest notified that dom0 has not looked at yet.
    notified: BTreeSet<u32>,
    /// Ports dom0 notified that the guest has not taken yet.
    pending: BTreeSet<u32>,
}

impl Dom0 {
    /// Whether the guest notified `port` since dom0 last looked.
    pub fn take_notified(&mut self, port: u32) -> bool {
        self.notified.remove(&port)
    }

    /// Notifies the guest's end of `port`.
    pub fn notify_guest(&mut self, port: u32) {
        self.pending.insert(port);
    }
}

/// The guest's platform in the model (see the module docs).
#[derive(Debug)]
pub struct Model {
    /// dom0's side.
    pub dom0: Dom0,
    /// dom0's block back end, once a disk is offered.
    pub blkback: Option<Blkback>,
    /// dom0's net back end, once a vif is offered.
    pub netback: Option<Netback>,
    /// Ports the guest allocated and has not closed.
    pub open_ports: BTreeSet<u32>,
    time: u64,
    /// Waits so far.
    pub waits: u64,
    next_port: u32,
}

impl Model {
    /// A guest with a store and nothing in it.
    pub fn new() -> Model {
        let memory = Memory::new(PAGES);
        let store = Store::new(memory.store_ring(memory.page(STORE_PAGE)), GUEST);
        Model {
            dom0: Dom0 {
                memory,
                grants: Grants::default(),
                store,
                notified: BTreeSet::new(),
                pending: BTreeSet::new(),
            },
            blkback: None,
            netback: None,
            open_ports: BTreeSet::new(),
            time: 0,
            waits: 0,
            next_port: STORE_PORT + 1,
        }
    }

    /// The guest's store client.
    pub fn store_client(&self) -> StoreClient {
        let memory = &self.dom0.memory;
        StoreClient::new(memory.store_ring(memory.page(STORE_PAGE)), STORE_PORT)
    }

    /// The guest's store (dom0's view).
    pub fn store(&mut self) -> &mut Store {
        &mut self.dom0.store
    }

    /// Offers the guest a disk of `sectors` sectors.
    pub fn offer_disk(&mut self, sectors: u64) {
        self.blkback = Some(Blkback::offer(&mut self.dom0, sectors));
    }

    /// The disk's back end (panics without one: a broken test).
    pub fn blkback(&mut self) -> &mut Blkback {
        self.blkback.as_mut().expect("a disk was offered")
    }

    /// The pages the runtime would give the disk.
    pub fn disk_pages(&self) -> DiskPages {
        let memory = &self.dom0.memory;
        DiskPages { ring: memory.page(DISK_RING_PAGE), transfer: memory.page(DISK_TRANSFER_PAGE) }
    }

    /// Offers the guest a vif.
    pub fn offer_vif(&mut self) {
        self.netback = Some(Netback::offer(&mut self.dom0));
    }

    /// The vif's back end (panics without one: a broken test).
    pub fn netback(&mut self) -> &mut Netback {
        self.netback.as_mut().expect("a vif was offered")
    }

    /// The pages the runtime would give the vif.
    pub fn vif_pages(&self) -> VifPages {
        VifPages { first: self.dom0.memory.page(VIF_PAGE) }
    }

    /// Lets dom0 run once: the back ends, then the store (which then also
    /// sends the watch events their writes fired).
    fn run_dom0(&mut self) {
        let dom0 = &mut self.dom0;
        let notified = dom0.take_notified(STORE_PORT);
        dom0.store.serve(notified);
        if let Some(blkback) = self.blkback.as_mut() {
            blkback.run(dom0);
        }
        if let Some(netback) = self.netback.as_mut() {
            netback.run(dom0);
        }
        dom0.store.serve(false);
    }
}

impl GuestMemory for Model {
    fn write(&mut self, address: u64, bytes: &[u8]) -> Result<(), NotDeviceMemory> {
        self.dom0.memory.write(address, bytes)
    }

    fn read(&self, address: u64, out: &mut [u8]) -> Result<(), NotDeviceMemory> {
        self.dom0.memory.read(address, out)
    }

    fn front_ring<Req: Slot, Rsp: Slot, const SLOTS: usize, const SLOT_SIZE: usize>(
        &mut self,
        page: u64,
    ) -> Result<FrontRing<Req, Rsp, SLOTS, SLOT_SIZE>, NotDeviceMemory> {
        self.dom0.memory.front_ring(page)
    }
}

impl Platform for Model {
    fn notify(&mut self, port: u32) {
        self.dom0.notified.insert(port);
    }

    fn alloc_port(&mut self, remote: DomainId) -> Option<u32> {
        assert_eq!(remote, abi::DOM0, "every back end is dom0's");
        let port = self.next_port;
        self.next_port += 1;
        self.open_ports.insert(port);
        Some(port)
    }

    fn close_port(&mut self, port: u32) {
        assert!(self.open_ports.remove(&port), "closing port {port}, which is not open");
    }

    fn take_port(&mut self, port: u32) -> bool {
        self.dom0.pending.remove(&port)
    }

    fn wait_for_event(&mut self) {
        self.waits += 1;
        assert!(self.waits < WAITS_MAX, "the front end waits for ever");
        self.time += TICKS_PER_SECOND / 1000;
        self.run_dom0();
        // The runtime takes the bits of every port it waits on.
        self.dom0.pending.clear();
    }

    fn now(&self) -> u64 {
        self.time
    }

    fn ticks_per_second(&self) -> u64 {
        TICKS_PER_SECOND
    }

    fn set_timer(&mut self, _deadline: u64) {
        // Every wait is a millisecond: the timer always fires in time.
    }

    fn grant(&mut self, domain: DomainId, address: u64, readonly: bool) -> Result<u32, abi::Error> {
        self.dom0.grants.grant(domain, address, readonly)
    }

    fn end_grant(&mut self, reference: u32) -> Result<(), abi::Error> {
        self.dom0.grants.end(reference)
    }
}
