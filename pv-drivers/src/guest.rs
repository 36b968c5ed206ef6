//! A guest kernel's view of its domain: [`Guest`] puts the runtime
//! (`runtime`: start info, events, timer, console), the store client
//! (`store_client`) and the disk and vif front ends (`blkfront`,
//! `netfront`, connected by `xenbus`) behind one value owned by vCPU 0,
//! and re-exports what the example guests name through this module.

use core::fmt;

use abi::start_info::StartInfo;
use abi::xen::io::block::BlkifRequest;
use abi::xen::io::store::XsdSockmsgType;

use crate::blkfront::Disk;
use crate::net::{NetError, NetStats};
use crate::netfront::Vif;
use crate::platform::Platform;
use crate::runtime::Runtime;
use crate::store_client::StoreClient;
use crate::xenbus::Device;

pub use crate::blkfront::DiskError;
pub use crate::runtime::{UPCALL_VECTOR, accept_upcalls, crash, event_page, now, start_vcpu, vcpu_upcalls};
pub use crate::store_client::{StoreFailure, StoreTransaction, TransactionEnd};
pub use crate::xenbus::{CloseError, DeviceChange, device_directory, device_key};

/// A running guest.
pub struct Guest {
    /// The start-info page as the builder wrote it.
    pub start_info: StartInfo,
    runtime: Runtime,
    store: Option<StoreClient>,
    disk: Device<Disk>,
    /// The first vif.
    net: Device<Vif>,
}

impl Guest {
    /// Sets the guest up from the start-info page at `start_info_address`
    /// (see [`Runtime::init`]), then connects the disk and the vif dom0
    /// offers and watches for later ones. Stops the domain if the page is
    /// not a Mica start-info page.
    pub fn init(start_info_address: u64) -> Guest {
        let runtime = Runtime::init(start_info_address);
        let store = runtime.store_ring().map(|ring| StoreClient::new(ring, runtime.start_info.store_port));
        let mut guest = Guest {
            start_info: runtime.start_info,
            disk: Device::new(runtime.disk_pages()),
            net: Device::new(runtime.vif_pages()),
            runtime,
            store,
        };
        if let Some(store) = guest.store.as_mut() {
            let runtime = &mut guest.runtime;
            // Connects the disk if dom0 offers one.
            let _ = guest.disk.hotplug(runtime, store);
            // Hear of disks dom0 offers later (block-attach).
            let _ = store.watch(runtime, "device/vbd", "vbds");
            guest.net.connect(runtime, store);
            // Hear of vifs dom0 offers later (network-attach).
            let _ = store.watch(runtime, "device/vif", "vifs");
        }
        guest.runtime.enable_upcalls();
        guest
    }

    /// Follows dom0's changes to the disk (call after store watch events):
    /// connects a disk dom0 offered (`block-attach`), and lets go of one
    /// dom0 is closing (`block-detach`): the front end stops, says Closed,
    /// and revokes its grants once dom0 has unmapped the pages.
    pub fn disk_hotplug(&mut self) -> Option<DeviceChange> {
        self.disk.hotplug(&mut self.runtime, self.store.as_mut()?)
    }

    /// Follows dom0's changes to the vif (call after store watch events,
    /// see [`Guest::take_watch_events`]): connects a vif dom0 offered
    /// (`network-attach`), and lets go of one dom0 is closing
    /// (`network-detach`): the front end stops, says Closed, and revokes
    /// its grants once dom0 has unmapped the pages.
    pub fn net_hotplug(&mut self) -> Option<DeviceChange> {
        self.net.hotplug(&mut self.runtime, self.store.as_mut()?)
    }

    /// The front end closes its own disk (`abi::store`): writes Closing,
    /// waits (a second at most) for the back end's Closed, closes its port,
    /// revokes its grants and writes Closed. Ok once every grant was
    /// revoked (dom0 unmapped the ring and every transfer page). A page
    /// dom0 still maps stays granted and listed; a later connection
    /// retries revoking it.
    pub fn disk_close(&mut self) -> Result<(), CloseError> {
        self.disk.close(&mut self.runtime, self.store.as_mut().ok_or(CloseError::NotConnected)?)
    }

    /// [`Guest::disk_close`] for the vif (both rings and every buffer page).
    pub fn net_close(&mut self) -> Result<(), CloseError> {
        self.net.close(&mut self.runtime, self.store.as_mut().ok_or(CloseError::NotConnected)?)
    }

    /// Reconnects a disk closed with [`Guest::disk_close`]: writes
    /// Initialising, waits (a second at most) for the back end's InitWait,
    /// then connects with a fresh ring and fresh grants. Whether it is
    /// connected.
    pub fn disk_reconnect(&mut self) -> bool {
        self.store.as_mut().is_some_and(|store| self.disk.reconnect(&mut self.runtime, store))
    }

    /// [`Guest::disk_reconnect`] for the vif.
    pub fn net_reconnect(&mut self) -> bool {
        self.store.as_mut().is_some_and(|store| self.net.reconnect(&mut self.runtime, store))
    }

    /// Waits (a second of guest time at most, 1 ms per look) until the back
    /// end of [`device_directory`]`(kind)` (`vbd`, `vif`) says `wanted`.
    pub fn wait_backend_state(&mut self, kind: &str, wanted: abi::xen::io::xenbus::XenbusState) -> bool {
        self.store
            .as_mut()
            .is_some_and(|store| crate::xenbus::wait_backend_state(&mut self.runtime, store, kind, wanted))
    }

    /// Whether the vif is connected.
    pub fn net_connected(&self) -> bool {
        self.net.front().is_some()
    }

    /// The vif's MAC address as dom0 assigned it (None without a vif).
    pub fn net_mac(&mut self) -> Option<[u8; 6]> {
        self.net.front()?;
        let mut text = [0u8; 32];
        let key = device_key("vif", abi::xen::io::net::KEY_MAC);
        let length = self.store.as_mut()?.read(&mut self.runtime, &key, &mut text).ok()?;
        abi::net::parse_mac(core::str::from_utf8(&text[..length]).ok()?)
    }

    /// Sends one Ethernet frame on the vif (without waiting for dom0).
    pub fn net_send(&mut self, frame: &[u8]) -> Result<(), NetError> {
        self.net.front_mut().ok_or(NetError::Broken)?.send(&mut self.runtime, frame)
    }

    /// Copies the next received frame into `out` (at least 1514 bytes);
    /// returns its length, or None when nothing is waiting.
    pub fn net_receive(&mut self, out: &mut [u8]) -> Result<Option<usize>, NetError> {
        self.net.front_mut().ok_or(NetError::Broken)?.receive(&mut self.runtime, out)
    }

    /// Waits for the vif (a frame or a transmit answer), the console, or
    /// the TSC `deadline`, whichever comes first.
    pub fn net_wait(&mut self, deadline: u64) {
        match self.net.front_mut() {
            Some(vif) => vif.wait(&mut self.runtime, deadline),
            None => self.sleep_until(deadline),
        }
    }

    /// Sends one Ethernet frame on the vif in two slots, the first `first`
    /// bytes at the end of a page ([`crate::net::NetFront::send_split`]).
    pub fn net_send_split(&mut self, frame: &[u8], first: usize) -> Result<(), NetError> {
        self.net.front_mut().ok_or(NetError::Broken)?.send_split(&mut self.runtime, frame, first)
    }

    /// Sends raw transmit slots (tests of hostile front ends: nothing is
    /// checked; see [`crate::net::NetFront::send_raw`]) and notifies dom0.
    pub fn net_send_raw(&mut self, slots: &[abi::xen::io::net::NetifTxRequest]) -> Result<(), NetError> {
        self.net.front_mut().ok_or(NetError::Broken)?.send_raw(&mut self.runtime, slots)
    }

    /// Takes dom0's transmit answers (frees buffers, counts errors).
    pub fn net_reclaim(&mut self) -> Result<(), NetError> {
        self.net.front_mut().ok_or(NetError::Broken)?.reclaim()
    }

    /// The transmit ring page's address (tests corrupt it on purpose).
    pub fn net_tx_ring_page(&self) -> Option<u64> {
        self.net.front().map(|_| self.net.pages().page(0))
    }

    /// The receive ring page's address (tests corrupt it on purpose).
    pub fn net_rx_ring_page(&self) -> Option<u64> {
        self.net.front().map(|_| self.net.pages().page(1))
    }

    /// Notifies dom0's net back end.
    pub fn net_notify(&mut self) {
        if let Some(vif) = self.net.front() {
            vif.notify(&mut self.runtime);
        }
    }

    /// The vif's counters (None without a vif).
    pub fn net_stats(&self) -> Option<NetStats> {
        self.net.front().map(Vif::stats)
    }

    /// The disk's size in sectors (0 without a disk).
    pub fn disk_sectors(&self) -> u64 {
        self.disk.front().map_or(0, Disk::sectors)
    }

    /// Most bytes one disk transfer moves.
    pub const DISK_TRANSFER_MAX: usize = Disk::TRANSFER_MAX;

    /// Reads whole sectors from `sector` into `out` (at most
    /// [`Guest::DISK_TRANSFER_MAX`] bytes), waiting for dom0's answer.
    pub fn disk_read(&mut self, sector: u64, out: &mut [u8]) -> Result<(), DiskError> {
        self.disk.front_mut().ok_or(DiskError::NoDisk)?.read(&mut self.runtime, sector, out)
    }

    /// Reads `bytes` (whole sectors, at most [`Guest::DISK_TRANSFER_MAX`])
    /// from `sector` into the transfer pages and leaves them there: no copy,
    /// for callers that can use the data in place (and for measurements).
    pub fn disk_read_in_place(&mut self, sector: u64, bytes: usize) -> Result<(), DiskError> {
        self.disk.front_mut().ok_or(DiskError::NoDisk)?.read_in_place(&mut self.runtime, sector, bytes)
    }

    /// Writes whole sectors from `data` at `sector`, waiting for dom0's answer.
    pub fn disk_write(&mut self, sector: u64, data: &[u8]) -> Result<(), DiskError> {
        self.disk.front_mut().ok_or(DiskError::NoDisk)?.write(&mut self.runtime, sector, data)
    }

    /// Reads `requests` requests of `pages_each` pages (8 sectors a page)
    /// from `sector` on into the granted transfer pages, all in flight at
    /// once, and leaves the data there (no copy): the front end at full
    /// speed, for throughput measurements. Returns how many succeeded.
    pub fn disk_read_ahead(&mut self, sector: u64, requests: usize, pages_each: usize) -> Result<usize, DiskError> {
        let disk = self.disk.front_mut().ok_or(DiskError::NoDisk)?;
        disk.read_ahead(&mut self.runtime, sector, requests, pages_each)
    }

    /// Asks dom0 to make earlier writes durable.
    pub fn disk_flush(&mut self) -> Result<(), DiskError> {
        self.disk.front_mut().ok_or(DiskError::NoDisk)?.flush(&mut self.runtime)
    }

    /// Grants dom0 access to the page at `address` through the disk's grant
    /// table (for tests of hostile front ends: the address need not be ours).
    pub fn grant_to_dom0(&mut self, address: u64, readonly: bool) -> Result<u32, DiskError> {
        if !self.runtime.has_grant_table() {
            return Err(DiskError::NoDisk);
        }
        self.runtime.grant(abi::DOM0, address, readonly).map_err(|_| DiskError::BadRequest)
    }

    /// Revokes a grant made with [`Guest::grant_to_dom0`]: `Busy` while
    /// dom0 maps the page.
    pub fn end_grant(&mut self, reference: u32) -> Result<(), abi::Error> {
        self.runtime.end_grant(reference)
    }

    /// Tries to revoke the grant of transfer page `page` (tests: dom0 keeps
    /// used pages mapped, so this must fail with `Busy`).
    pub fn revoke_transfer_page(&mut self, page: usize) -> Result<(), abi::Error> {
        let disk = self.disk.front().ok_or(abi::Error::NotFound)?;
        let reference = disk.transfer_grant(page).ok_or(abi::Error::InvalidArgument)?;
        self.runtime.end_grant(reference)
    }

    /// Sends `request` as it is (no checks) and waits for its response's status.
    pub fn disk_request(&mut self, request: &BlkifRequest) -> Result<i16, DiskError> {
        self.disk.front_mut().ok_or(DiskError::NoDisk)?.request(&mut self.runtime, request)
    }

    /// Sends `request` as it is (no checks) and notifies dom0 without
    /// waiting (tests of hostile front ends race dom0 with it); take the
    /// answer with [`Guest::disk_wait_response`].
    pub fn disk_submit(&mut self, request: &BlkifRequest) -> Result<(), DiskError> {
        self.disk.front_mut().ok_or(DiskError::NoDisk)?.submit(&mut self.runtime, request)
    }

    /// Waits for the response to the request `id` sent by
    /// [`Guest::disk_submit`] (the next one on the ring); its status.
    pub fn disk_wait_response(&mut self, id: u64) -> Result<i16, DiskError> {
        self.disk.front_mut().ok_or(DiskError::NoDisk)?.wait_response(&mut self.runtime, id)
    }

    /// The disk ring page's address (tests corrupt it on purpose).
    pub fn disk_ring_page(&self) -> Option<u64> {
        self.disk.front().map(Disk::ring_page)
    }

    /// Notifies dom0's disk back end.
    pub fn disk_notify(&mut self) {
        if let Some(disk) = self.disk.front() {
            disk.notify(&mut self.runtime);
        }
    }

    /// Reads store node `path` (absolute, or relative to this domain's home)
    /// into `out`; returns the value's length.
    pub fn store_read(&mut self, path: &str, out: &mut [u8]) -> Result<usize, StoreFailure> {
        self.store_read_in(None, path, out)
    }

    /// [`Guest::store_read`] inside `transaction` (or outside, `None`).
    pub fn store_read_in(
        &mut self,
        transaction: Option<StoreTransaction>,
        path: &str,
        out: &mut [u8],
    ) -> Result<usize, StoreFailure> {
        let store = self.store.as_mut().ok_or(StoreFailure::NoStore)?;
        store.read_in(&mut self.runtime, transaction, path, out)
    }

    /// Writes `value` at store node `path`, creating it.
    pub fn store_write(&mut self, path: &str, value: &str) -> Result<(), StoreFailure> {
        self.store_write_in(None, path, value)
    }

    /// [`Guest::store_write`] inside `transaction` (or outside, `None`).
    pub fn store_write_in(
        &mut self,
        transaction: Option<StoreTransaction>,
        path: &str,
        value: &str,
    ) -> Result<(), StoreFailure> {
        let store = self.store.as_mut().ok_or(StoreFailure::NoStore)?;
        store.write_in(&mut self.runtime, transaction, path, value)
    }

    /// Opens a store transaction: requests made with it see the store as
    /// it was plus their own changes, and nobody else sees those until
    /// [`Guest::store_transaction_end`] commits them.
    pub fn store_transaction_start(&mut self) -> Result<StoreTransaction, StoreFailure> {
        self.store.as_mut().ok_or(StoreFailure::NoStore)?.transaction_start(&mut self.runtime)
    }

    /// Ends `transaction`: commits its changes (`commit`) or abandons them.
    /// [`TransactionEnd::Retry`] when the store refused the commit for a
    /// conflict (`EAGAIN`): the caller starts again, reading anew.
    pub fn store_transaction_end(
        &mut self,
        transaction: StoreTransaction,
        commit: bool,
    ) -> Result<TransactionEnd, StoreFailure> {
        let store = self.store.as_mut().ok_or(StoreFailure::NoStore)?;
        store.transaction_end(&mut self.runtime, transaction, commit)
    }

    /// Sends any one request (`fields` as the type takes them: strings,
    /// and for `WRITE` the path then the value) and waits for its reply;
    /// returns the reply's payload length. For guests that probe the store
    /// (the hostile-guest suite).
    pub fn store_op(&mut self, kind: XsdSockmsgType, fields: &[&str]) -> Result<usize, StoreFailure> {
        self.store.as_mut().ok_or(StoreFailure::NoStore)?.op(&mut self.runtime, kind, fields)
    }

    /// Asks the store to report changes at or below `path` (relative to
    /// this domain's home, or absolute); events are counted, see
    /// [`Guest::take_watch_events`]. The store reports once at once.
    pub fn store_watch(&mut self, path: &str, token: &str) -> Result<(), StoreFailure> {
        self.store.as_mut().ok_or(StoreFailure::NoStore)?.watch(&mut self.runtime, path, token)
    }

    /// Watch events that arrived since the last call (reads any waiting on
    /// the store ring first, without blocking).
    pub fn take_watch_events(&mut self) -> u32 {
        self.store.as_mut().map_or(0, |store| store.take_watch_events(&mut self.runtime))
    }

    /// The guest-physical addresses of the event page and the grant table
    /// page the runtime registered (tests that register others on purpose
    /// put these back).
    pub fn registered_pages(&self) -> (u64, u64) {
        self.runtime.registered_pages()
    }

    /// This domain's number of vCPUs (`vcpus` in its config), as a Xen
    /// guest finds it: `VCPUOP_is_up` answers for every vCPU the domain
    /// has, up or not, and `-ENOENT` past the last; at least 1.
    pub fn vcpu_count(&self) -> u32 {
        (1..abi::hypercall::MAX_VCPUS)
            .find(|&vcpu| crate::xen::vcpu_is_up(vcpu).is_err())
            .unwrap_or(abi::hypercall::MAX_VCPUS)
    }

    /// Starts vCPU `vcpu` (1 to [`Guest::vcpu_count`] minus one) running
    /// `entry(argument)` on the stack below `stack_top`, with this vCPU's
    /// page tables (CR3) and GDT, through Xen's `VCPUOP_initialise` and `VCPUOP_up`.
    ///
    /// The new vCPU starts in 64-bit mode with interrupts off and no IDT:
    /// an exception there is a triple fault, which crashes the domain. It
    /// gets no upcalls (events notify vCPU 0 only), though its own timer
    /// ([`crate::xen::set_timer_op`]) wakes it from
    /// [`crate::xen::block`]. It must not use the `Guest` (console,
    /// store, devices): the runtime is not thread-safe and belongs to vCPU
    /// 0; share data through atomics.
    ///
    /// Errors, from Xen's calls put in Mica's terms: `InvalidArgument` for
    /// no such vCPU, `Busy` when it is up already.
    ///
    /// # Safety
    /// `stack_top` must be the end of writable memory of this domain,
    /// under the current page tables, that nothing else uses while the new
    /// vCPU runs (its whole stack: a few KiB at least), for instance a
    /// static array given to this vCPU alone.
    pub unsafe fn start_vcpu(
        &self,
        vcpu: u32,
        entry: extern "C" fn(u64) -> !,
        stack_top: u64,
        argument: u64,
    ) -> Result<(), abi::Error> {
        // SAFETY: the caller's promises are this function's.
        unsafe { start_vcpu(vcpu, entry, stack_top, argument) }
    }

    /// This domain's end of the console event channel (0 without a console).
    pub fn console_port(&self) -> u32 {
        self.runtime.console_port()
    }

    /// This domain's id.
    pub fn domain_id(&self) -> u32 {
        self.start_info.domain_id
    }

    /// The command line.
    pub fn cmdline(&self) -> &str {
        self.start_info.cmdline()
    }

    /// TSC ticks in one second (from the start-info page; a guess if unknown).
    pub fn ticks_per_second(&self) -> u64 {
        self.runtime.ticks_per_second()
    }

    /// Tests and clears event port `port`'s pending bit.
    pub fn take_port(&self, port: u32) -> bool {
        crate::runtime::take_pending(port)
    }

    /// Upcalls taken so far.
    pub fn upcalls(&self) -> u64 {
        crate::runtime::upcalls()
    }

    /// Writes to the console (or the hypervisor log when there is none),
    /// waiting while the ring is full.
    pub fn write(&mut self, bytes: &[u8]) {
        self.runtime.write(bytes);
    }

    /// Reads waiting console input (non-blocking).
    pub fn read(&mut self, out: &mut [u8]) -> usize {
        self.runtime.read(out)
    }

    /// Halts until an event arrives (the upcall wakes us), then collects
    /// the ports that fired. hv does not block a vCPU while an unmasked port
    /// is pending, so every port the runtime and the front ends bound is
    /// consumed here.
    pub fn wait_for_event(&mut self) {
        self.runtime.wait_for_event();
    }

    /// Sleeps until the TSC reaches `deadline`.
    pub fn sleep_until(&mut self, deadline: u64) {
        self.runtime.sleep_until(deadline);
    }

    /// Waits until the console port fires (input arrived or space freed).
    pub fn wait_for_input(&mut self) {
        self.runtime.wait_for_input();
    }

    /// Whether the console port is connected (dom0 still serves it).
    pub fn console_connected(&self) -> bool {
        self.runtime.console_connected()
    }
}

impl fmt::Write for Guest {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        self.write(text.as_bytes());
        Ok(())
    }
}
