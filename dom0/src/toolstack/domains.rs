//! dom0's toolstack: the guests it built, their console back ends, and the
//! shell commands that manage them (`create`, `destroy`, `list`, ...).
//! Their disk and vif back ends live in `data_path::DATA`, which the
//! toolstack connects and disconnects there (under that lock) and which
//! the data paths serve, on a vCPU of their own when dom0 has two.

use core::fmt::Write;

use abi::domctl::{DomCtlOp, FOREIGN_WINDOW_BASE, VcpuContext};
use abi::event::EventOp;
use abi::info::DomainState;
use abi::{DomainId, Error};
use arrayvec::{ArrayString, ArrayVec};
use dom0core::backends::device_link::{self, Class, Link, Offer, Published, Step};
use dom0core::backends::window::Use;
use dom0core::shell::cpu_list::{self, CpuList, Cpus};
use dom0core::toolstack::builder::{self, BuildRequest, DomainControl};
use dom0core::toolstack::config::{GuestConfig, OnCrash};
use dom0core::toolstack::image_file::ImageFile;
use dom0core::toolstack::images::{self, DiskFile, Ext4Read, ImagesDisk, Store};
use dom0core::toolstack::tar::{Archive, EntryKind};
use pv_drivers::console::ConsoleRing;
use pv_drivers::hypercall;

use crate::backends::data_path::{self, BlockBackend, DATA, Lock, Notice, UPLINK};
use crate::drivers::uart::Uart;
use abi::xen::io::xenbus::XenbusState;
use dom0core::backends::block::Region;
use dom0core::store::{DefaultStore, MESSAGE_MAX, MessageAssembler, Permissions, Quota};
use pv_drivers::console::StoreRingAccess;
use pv_drivers::ring::BlockBack;

use crate::backends::net::netback::NetBackend;
use dom0core::backends::net::switch::PortId;
use dom0core::shell::terminal::{Context, escape};

/// `store [path]`: prints the tree below `path`, one `path = "value"` line
/// per node, depth first (bounded depth and output).
pub fn show_store(path: &str, out: &mut Uart) {
    let store = STORE.lock();
    if let Err(error) = store.read(abi::DOM0, path) {
        let _ = writeln!(out, "dom0: store: {path}: {}", error.name());
        return;
    }
    let mut lines = 0;
    show_node(&store, path, 0, &mut lines, out);
}

fn show_node(store: &DefaultStore, path: &str, depth: usize, lines: &mut usize, out: &mut Uart) {
    const MAX_LINES: usize = 400;
    if *lines >= MAX_LINES || depth > 12 {
        return;
    }
    let value = store.read(abi::DOM0, path).unwrap_or("");
    // Values are guest-written: escaped, so they cannot reach the terminal raw.
    let _ = writeln!(out, "{path} = \"{}\"", escape(value.as_bytes(), Context::Quoted));
    *lines += 1;
    let Ok(children) = store.directory(abi::DOM0, path) else { return };
    let mut names: ArrayVec<ArrayString<64>, 32> = ArrayVec::new();
    for name in children {
        let mut copy = ArrayString::new();
        if copy.try_push_str(name).is_ok() && names.try_push(copy).is_err() {
            break;
        }
    }
    for name in names {
        let mut child: ArrayString<256> = ArrayString::new();
        let separator = if path.ends_with('/') { "" } else { "/" };
        if write!(child, "{path}{separator}{name}").is_ok() {
            show_node(store, &child, depth + 1, lines, out);
        }
    }
}

/// `n` in decimal, as the store keeps numbers.
fn decimal(n: u64) -> ArrayString<20> {
    let mut text = ArrayString::new();
    let _ = write!(text, "{n}");
    text
}

/// Lets go of a disk's connection, taken out of `DATA` (the caller holds
/// no lock but the store's): makes the writes durable, closes the event
/// channel (unless dom0 closed it when the ring broke), unmaps the ring
/// and every persistent grant (so the guest can revoke them) and returns
/// their window pages. Nothing is in flight: the data paths serve a
/// request to the end before they let go of `DATA`.
fn release_block(block: BlockBackend) {
    if let Some(disk) = DATA.lock().disks.get_mut(block.disk) {
        let _ = disk.flush();
    }
    if block.broken.is_none() {
        data_path::close_port(block.port);
    }
    unmap_slot(block.slot);
    for (_, _, slot) in block.mapped {
        unmap_slot(slot);
    }
}

/// Lets go of a vif's connection, taken out of `DATA`: closes the event
/// channel, unmaps both ring pages (so the guest can revoke them) and
/// returns their window pages. (The caller takes the vif off the switch.)
fn release_net(net: NetBackend) {
    data_path::close_port(net.port);
    for slot in net.slots {
        unmap_slot(slot);
    }
}

/// Unmaps the grant mapped at foreign-window slot `slot` and frees the slot.
fn unmap_slot(slot: usize) {
    let _ = hypercall::grant_unmap(FOREIGN_WINDOW_BASE + slot as u64 * abi::PAGE_SIZE);
    WINDOW.lock().release(slot);
}

/// Seconds a front end has to let go of a device being detached.
const DETACH_TIMEOUT_SECONDS: u64 = 5;

/// What backs a guest's device, whatever its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backing {
    /// A region of a physical disk (its index in `DataPath::disks`).
    Disk { disk: usize, region: Region },
    /// A port of the switch, locked to this MAC.
    Vif { mac: [u8; 6] },
}

impl Backing {
    fn class(self) -> Class {
        self.offer().class()
    }

    /// What the store offers the front end.
    fn offer(self) -> Offer {
        match self {
            Backing::Disk { region, .. } => Offer::Disk { sectors: region.sectors, readonly: region.readonly },
            Backing::Vif { mac } => Offer::Vif { mac },
        }
    }
}

/// Where a guest's device is in `device_link`'s machine, as the toolstack
/// keeps it (whether a live one is connected or broken, the data paths say).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Offered (back end InitWait).
    Offered,
    /// Connected, in `DATA` (possibly broken since).
    Live,
    /// Back end Closed, nothing mapped.
    Closed,
    /// The operator detaches it (back end Closing) since this TSC.
    Detaching { since: u64 },
}

/// A guest's device of one class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Device {
    pub backing: Backing,
    pub phase: Phase,
}

/// The `device_link::Link` of guest `id`'s `device`.
fn link_of(id: DomainId, device: &Device) -> Link {
    match device.phase {
        Phase::Offered => Link::Offered,
        Phase::Closed => Link::Closed,
        Phase::Detaching { .. } => Link::Detaching,
        Phase::Live => match live_port(id, device.backing.class()) {
            Some((_, false)) => Link::Connected,
            Some((_, true)) => Link::Broken,
            None => Link::Closed,
        },
    }
}

/// The event port of guest `id`'s connected device of `class`, and whether
/// its ring broke (then the port may be closed already); None when the
/// data paths hold none.
fn live_port(id: DomainId, class: Class) -> Option<(u32, bool)> {
    let data = DATA.lock();
    let devices = data.guest(id)?;
    match class {
        Class::Vbd => devices.block.as_ref().map(|block| (block.port, block.broken.is_some())),
        Class::Vif => match (&devices.net, devices.broken_vif) {
            (Some(net), _) => Some((net.port, false)),
            (None, Some(_)) => Some((0, true)),
            (None, None) => None,
        },
    }
}

/// Lets go of whatever the data paths hold of guest `id`'s device of
/// `class` (connected or broken): makes a disk's writes durable, closes
/// the port, takes a vif off the switch, unmaps the rings and persistent
/// grants (so the guest can revoke them) and returns their window pages.
/// Bounded: one device's rings and at most `PERSISTENT_GRANTS` pages.
fn release_device(id: DomainId, class: Class) {
    match class {
        Class::Vbd => {
            let block = DATA.lock().guest_mut(id).and_then(|d| d.block.take());
            if let Some(block) = block {
                release_block(block);
            }
        }
        Class::Vif => {
            let (net, broken_vif) = {
                let mut data = DATA.lock();
                let taken = data.guest_mut(id).map_or((None, None), |d| (d.net.take(), d.broken_vif.take()));
                if taken.0.is_some() {
                    data.switch.remove_port(id as PortId);
                }
                taken
            };
            if let Some(net) = net {
                release_net(net);
            }
            if let Some((slots, _, _)) = broken_vif {
                // Its port was closed and it left the switch when it broke.
                for slot in slots {
                    unmap_slot(slot);
                }
            }
        }
    }
}

/// Connects guest `id`'s disk: maps the ring page the front end granted,
/// binds its port and hands the back end to the data paths. False (nothing
/// left mapped or bound) when anything it named is unusable.
fn connect_disk(id: DomainId, disk: usize, region: Region, published: &Published) -> bool {
    let Some(slot) = WINDOW.lock().take(id, Use::Ring) else { return false };
    let address = FOREIGN_WINDOW_BASE + slot as u64 * abi::PAGE_SIZE;
    let mapped = hypercall::grant_map(id, published.grants[0], address, true);
    let bound = mapped.and_then(|()| hypercall::event(EventOp::BindInterdomain, id as u64, published.port as u64));
    let Ok(dom0_port) = bound else {
        if mapped.is_ok() {
            let _ = hypercall::grant_unmap(address);
        }
        WINDOW.lock().release(slot);
        return false;
    };
    // SAFETY: hv just mapped the guest's granted ring page read-write at
    // this identity-mapped address; dom0 keeps it mapped until it releases
    // the device or the guest is destroyed.
    let ring = unsafe { BlockBack::attach(address as *mut u8) };
    let block = BlockBackend {
        ring,
        port: dom0_port as u32,
        slot,
        disk,
        region,
        requests: 0,
        service_tsc: 0,
        broken: None,
        persistent: published.persistent,
        mapped: ArrayVec::new(),
        mapped_by_grant: [0; abi::xen::grant_table::GRANT_TABLE_ENTRIES],
    };
    if let Some(devices) = DATA.lock().guest_mut(id) {
        devices.block = Some(block);
    }
    // Served from now on (on the data-path vCPU, if dom0 has one, which its
    // port then notifies).
    data_path::adopt(dom0_port as u32);
    let _ = hypercall::notify(dom0_port as u32);
    true
}

/// Connects guest `id`'s vif: locks its switch port to `mac`, maps both
/// ring pages, binds the port and hands the back end to the data paths.
/// False (nothing left mapped, bound or on the switch) when anything it
/// named is unusable.
fn connect_vif(id: DomainId, mac: [u8; 6], published: &Published) -> bool {
    // The vif may send from its MAC only, and frames to it come here.
    if DATA.lock().switch.add_static(id as PortId, mac).is_err() {
        return false;
    }
    let tx_slot = WINDOW.lock().take(id, Use::Ring);
    let rx_slot = WINDOW.lock().take(id, Use::Ring);
    let address = |slot: usize| FOREIGN_WINDOW_BASE + slot as u64 * abi::PAGE_SIZE;
    let (tx_mapped, rx_mapped, bound) = match (tx_slot, rx_slot) {
        (Some(tx_slot), Some(rx_slot)) => {
            let tx_mapped = hypercall::grant_map(id, published.grants[0], address(tx_slot), true);
            let rx_mapped =
                tx_mapped.and_then(|()| hypercall::grant_map(id, published.grants[1], address(rx_slot), true));
            let bound =
                rx_mapped.and_then(|()| hypercall::event(EventOp::BindInterdomain, id as u64, published.port as u64));
            (tx_mapped.is_ok(), rx_mapped.is_ok(), bound.ok())
        }
        _ => (false, false, None),
    };
    match (tx_slot, rx_slot, bound) {
        (Some(tx_slot), Some(rx_slot), Some(dom0_port)) => {
            // SAFETY: hv just mapped the guest's granted ring pages read-write
            // at these identity-mapped addresses; dom0 keeps them mapped until
            // it releases the device or the guest is destroyed.
            let (tx, rx) = unsafe {
                (
                    pv_drivers::net::TxBack::attach(address(tx_slot) as *mut u8),
                    pv_drivers::net::RxBack::attach(address(rx_slot) as *mut u8),
                )
            };
            let net = NetBackend::new(tx, rx, dom0_port as u32, [tx_slot, rx_slot], mac);
            if let Some(devices) = DATA.lock().guest_mut(id) {
                devices.net = Some(net);
            }
            data_path::adopt(dom0_port as u32);
            let _ = hypercall::notify(dom0_port as u32);
            true
        }
        _ => {
            for (slot, mapped) in [(tx_slot, tx_mapped), (rx_slot, rx_mapped)] {
                if let Some(slot) = slot {
                    if mapped {
                        let _ = hypercall::grant_unmap(address(slot));
                    }
                    WINDOW.lock().release(slot);
                }
            }
            DATA.lock().switch.remove_port(id as PortId);
            false
        }
    }
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Most guests dom0 manages (hv's limit less dom0).
pub const MAX_GUESTS: usize = 63;
/// Pages of dom0's foreign window it hands out (consoles, rings, data pages).
pub const WINDOW_SLOTS: usize = abi::domctl::FOREIGN_WINDOW_PAGES as usize;
/// dom0's foreign window: each guest's pages within its share (see
/// `dom0core::backends::window`).
pub type ForeignWindow = dom0core::backends::window::Window<WINDOW_SLOTS, MAX_GUESTS>;
/// dom0's foreign window, shared by the toolstack and the data paths (which
/// map persistent grants). Held for one change at a time.
pub static WINDOW: Lock<ForeignWindow> = Lock::new(ForeignWindow::new());
/// A guest that dies within this many seconds of starting counts as a quick death.
const QUICK_DEATH_SECONDS: u64 = 10;
/// Quick deaths in a row after which `on_crash = "restart"` gives up.
const RESTARTS_MAX: u32 = 5;
/// Console output kept per guest for `console` to replay on attach.
const HISTORY: usize = 4096;

/// A guest's console back end.
pub struct Console {
    ring: ConsoleRing,
    /// dom0's end of the console event channel.
    port: u32,
    /// Slot of the foreign window holding the ring page.
    slot: usize,
}

/// A guest dom0 built.
pub struct Guest {
    pub id: DomainId,
    pub config: GuestConfig,
    /// Where its config was found: its kernel is looked for there first
    /// (again when it is restarted).
    pub config_store: Store,
    pub console: Option<Console>,
    history: [u8; HISTORY],
    history_length: usize,
    /// A crash or shutdown was already acted on or reported.
    pub handled_end: bool,
    /// TSC when `create` started.
    created_at: u64,
    /// Restarts in a row that followed a death soon after start.
    quick_restarts: u32,
    /// TSC ticks `create` took to build the domain (its images read and
    /// loaded) up to starting it.
    pub create_build: u64,
    /// TSC ticks from `create` to the first console byte dom0 saw.
    pub create_to_first_output: Option<u64>,
    /// TSC ticks from `create` to the latest console output dom0 saw (for
    /// a guest now waiting at its shell: to its prompt).
    pub create_to_latest_output: Option<u64>,
    /// Its store connection.
    pub store: Option<StoreChannel>,
    /// Its disk and its vif (indexed by `Class`), in whatever phase.
    pub devices: [Option<Device>; 2],
}

/// A guest's connection to the store: its ring page (mapped in dom0), the
/// event port, and the message being reassembled from its request bytes.
pub struct StoreChannel {
    ring: StoreRingAccess,
    port: u32,
    slot: usize,
    assembler: MessageAssembler,
    /// A reply or event that did not fit in the ring yet, and how much of
    /// it was sent.
    pending: [u8; MESSAGE_MAX],
    pending_length: usize,
    pending_sent: usize,
    /// Request bytes taken from the ring but not yet fed to the assembler.
    carry: [u8; 256],
    carry_length: usize,
}

/// The store, served to every domain (dom0 uses it directly).
pub static STORE: spin::Mutex<DefaultStore> = spin::Mutex::new(DefaultStore::new());

impl Guest {
    fn remember(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if self.history_length == HISTORY {
                self.history.copy_within(HISTORY / 2.., 0);
                self.history_length = HISTORY / 2;
            }
            self.history[self.history_length] = byte;
            self.history_length += 1;
        }
    }
}

/// The images disk (`dom0core::toolstack::images`): which disk, and its
/// filesystem.
pub struct Images {
    /// Its index in `DATA.disks`.
    disk: usize,
    name: &'static str,
    filesystem: ImagesDisk,
}

// SAFETY: the filesystem shares a reference count (`Rc`) among its parts,
// which is not atomic. Every share lives inside `filesystem` or in a
// `DiskFile` that borrows it (`ImagesDisk::open`), so all of them are
// reached only through the `Toolstack` that owns this, under its lock:
// moving the whole to another vCPU never lets two touch the count at once.
// Its reader (`AtaReader`) holds only a disk index.
unsafe impl Send for Images {}

/// The images disk's bytes for ext4-view and for files read by their
/// block maps: its sectors through the ATA driver, under `DATA`'s lock
/// (the data paths share the driver).
///
/// ext4-view asks for 32 KiB at a time, and a disk command costs about as
/// much as the PIO of a few KiB: so each miss reads ahead
/// [`READ_AHEAD_SECTORS`] (one command) into `ahead`, from which the next
/// blocks of a file (mostly contiguous on a disk `mkfs.ext4 -d` filled)
/// are copied. A read of at least [`DIRECT_BYTES`] (a run of a file's
/// blocks, read by its block map) goes straight into the caller's buffer.
/// The disk is never written while dom0 reads it (guests may not have
/// regions on it), so what was read ahead stays true.
#[derive(Clone)]
struct AtaReader {
    disk: usize,
    /// The sectors read ahead, from `ahead_first`.
    ahead: alloc::vec::Vec<u8>,
    ahead_first: u64,
}

/// Sectors one read-ahead takes: the most one ATA command moves.
const READ_AHEAD_SECTORS: u64 = 256;
/// Reads this long or longer are not read ahead (ext4-view's are 32 KiB;
/// the builder's chunks, read by a file's block map, 128 KiB).
const DIRECT_BYTES: usize = 64 * 1024;

impl AtaReader {
    fn new(disk: usize) -> AtaReader {
        AtaReader { disk, ahead: alloc::vec::Vec::new(), ahead_first: 0 }
    }

    /// Whether bytes `start..end` of the disk were read ahead.
    fn ahead_holds(&self, start: u64, end: u64) -> bool {
        let first = self.ahead_first * 512;
        start >= first && end <= first + self.ahead.len() as u64
    }
}

/// Why the images disk could not be read.
#[derive(Debug)]
struct DiskReadError(dom0core::drivers::ata_protocol::AtaError);

impl core::fmt::Display for DiskReadError {
    fn fmt(&self, out: &mut core::fmt::Formatter) -> core::fmt::Result {
        write!(out, "disk read failed: {}", self.0)
    }
}

impl core::error::Error for DiskReadError {}

impl Ext4Read for AtaReader {
    fn read(
        &mut self,
        start_byte: u64,
        destination: &mut [u8],
    ) -> Result<(), alloc::boxed::Box<dyn core::error::Error + Send + Sync>> {
        const SECTOR: u64 = 512;
        let end = start_byte + destination.len() as u64;
        let first = start_byte / SECTOR;
        let mut data = DATA.lock();
        let disk = data.disks.get_mut(self.disk).ok_or_else(|| {
            alloc::boxed::Box::new(DiskReadError(dom0core::drivers::ata_protocol::AtaError::NoDevice))
        })?;
        let failed = |error| alloc::boxed::Box::new(DiskReadError(error));
        let whole_sectors = start_byte.is_multiple_of(SECTOR) && end.is_multiple_of(SECTOR);
        if whole_sectors && destination.len() >= DIRECT_BYTES {
            return disk.read(first, destination).map_err(failed).map_err(Into::into);
        }
        if !self.ahead_holds(start_byte, end) {
            // Read ahead from the first sector asked for, up to the disk's end.
            let sectors = READ_AHEAD_SECTORS.min(disk.sectors().saturating_sub(first));
            self.ahead.resize((sectors * SECTOR) as usize, 0);
            if sectors == 0 || disk.read(first, &mut self.ahead).is_err() {
                self.ahead.clear();
            }
            self.ahead_first = first;
        }
        if self.ahead_holds(start_byte, end) {
            let skip = (start_byte - self.ahead_first * SECTOR) as usize;
            destination.copy_from_slice(&self.ahead[skip..skip + destination.len()]);
            return Ok(());
        }
        // Longer than a read-ahead, or it failed: exactly what was asked.
        if whole_sectors {
            // ext4's blocks are whole sectors: straight into the caller's buffer.
            return disk.read(first, destination).map_err(failed).map_err(Into::into);
        }
        let mut sectors = alloc::vec![0u8; ((end.div_ceil(SECTOR) - first) * SECTOR) as usize];
        disk.read(first, &mut sectors).map_err(failed)?;
        let skip = (start_byte - first * SECTOR) as usize;
        destination.copy_from_slice(&sectors[skip..skip + destination.len()]);
        Ok(())
    }
}

/// A file `create` found: in the ramdisk, or open on the images disk.
enum Found<'a> {
    Ramdisk(&'static [u8]),
    Disk(alloc::boxed::Box<DiskFile<'a>>),
}

impl Found<'_> {
    fn file(&self) -> &dyn ImageFile {
        match self {
            Found::Ramdisk(bytes) => bytes,
            Found::Disk(file) => &**file,
        }
    }
}

/// Longest config file read from the images disk.
const CONFIG_MAX: u64 = 64 * 1024;

/// The guests, the ramdisk and the images disk.
pub struct Toolstack {
    pub guests: ArrayVec<Guest, MAX_GUESTS>,
    pub ramdisk: Archive<'static>,
    /// The images disk, if dom0 found one (`find_images`).
    pub images: Option<Images>,
    pub tsc_khz: u64,
    /// The guest whose console is attached to the serial line.
    pub attached: Option<DomainId>,
    /// Console output on its way to the history and the serial line.
    console_buffer: [u8; 512],
}

/// The builder's view of the hypervisor: dom0's hypercalls.
struct Hypervisor {
    /// vCPUs of the domain `create` makes (the config's `vcpus`).
    vcpus: u32,
    console: Option<Console>,
    /// The store ring being connected.
    store: Option<StoreChannel>,
}

impl Hypervisor {
    /// Maps `page` of `domain` into a free foreign-window slot and connects
    /// an event channel to it as Xen's toolstack does: a port of the
    /// domain's own, allocated for dom0 in its table, which dom0 binds at
    /// once, so the domain finds it connected when it first runs. Returns
    /// (address, slot, dom0's port, the domain's port).
    fn map_and_bind(&mut self, domain: DomainId, page: u64) -> Result<(u64, usize, u32, u32), Error> {
        let slot = WINDOW.lock().take(domain, Use::Ring).ok_or(Error::Busy)?;
        let address = FOREIGN_WINDOW_BASE + slot as u64 * abi::PAGE_SIZE;
        let ports = hypercall::domctl(DomCtlOp::MapForeign, domain, page, address, 0).and_then(|_| {
            connect_port(domain).inspect_err(|_| {
                let _ = hypercall::domctl(DomCtlOp::UnmapForeign, 0, address, 0, 0);
            })
        });
        match ports {
            Ok((ours, theirs)) => Ok((address, slot, ours, theirs)),
            Err(error) => {
                WINDOW.lock().release(slot);
                Err(error)
            }
        }
    }
}

/// A channel between dom0 and `domain` as Xen's toolstack makes one: a port
/// in the domain's table, unbound for dom0 (`event_channel_op`
/// alloc_unbound on its behalf), then bound by dom0. Returns (dom0's port,
/// the domain's port); on failure nothing stays allocated (the domain's
/// port is closed with the domain when it is destroyed, which a failed
/// build does).
fn connect_port(domain: DomainId) -> Result<(u32, u32), Error> {
    use abi::xen::event_channel::{EvtchnAllocUnbound, EvtchnOp};
    let dom = u16::try_from(domain).map_err(|_| Error::InvalidArgument)?;
    let mut offer = EvtchnAllocUnbound { dom, remote_dom: abi::DOM0 as u16, port: 0 };
    pv_drivers::xen::event_channel(EvtchnOp::AllocUnbound, &mut offer).map_err(|_| Error::Busy)?;
    let ours = hypercall::event(EventOp::BindInterdomain, domain as u64, u64::from(offer.port))?;
    Ok((ours as u32, offer.port))
}

impl DomainControl for Hypervisor {
    fn create(&mut self, max_pages: u64) -> Result<DomainId, Error> {
        hypercall::create_domain_with_vcpus(max_pages, self.vcpus)
    }

    fn vcpus(&self) -> u32 {
        self.vcpus.max(1)
    }

    fn set_memory_map(&mut self, domain: DomainId, map: &[abi::xen::memory::E820Entry]) -> Result<(), Error> {
        let domid = u16::try_from(domain).map_err(|_| Error::InvalidArgument)?;
        pv_drivers::xen::set_memory_map(domid, map).map_err(|errno| match errno {
            abi::xen::Errno::Esrch => Error::NotFound,
            abi::xen::Errno::Eperm => Error::Permission,
            _ => Error::InvalidArgument,
        })
    }

    fn populate(&mut self, domain: DomainId, guest_physical: u64, pages: u64) -> Result<(), Error> {
        hypercall::domctl(DomCtlOp::PopulateMemory, domain, guest_physical, pages, 0).map(|_| ())
    }

    fn copy(&mut self, domain: DomainId, guest_physical: u64, bytes: &[u8]) -> Result<(), Error> {
        hypercall::copy_to_guest(domain, guest_physical, bytes)
    }

    fn set_context(&mut self, domain: DomainId, context: &VcpuContext) -> Result<(), Error> {
        hypercall::set_vcpu_context(domain, context)
    }

    fn set_scheduling(&mut self, domain: DomainId, weight: u32, cap: u32) -> Result<(), Error> {
        hypercall::domctl(DomCtlOp::SetScheduling, domain, weight as u64, cap as u64, 0).map(|_| ())
    }

    fn set_hvm_param(&mut self, domain: DomainId, index: u32, value: u64) -> Result<(), Error> {
        use abi::xen::Errno;
        let domid = u16::try_from(domain).map_err(|_| Error::InvalidArgument)?;
        pv_drivers::xen::set_hvm_param(domid, index, value).map_err(|errno| match errno {
            Errno::Esrch => Error::NotFound,
            Errno::Eperm => Error::Permission,
            _ => Error::InvalidArgument,
        })
    }

    fn connect_console(&mut self, domain: DomainId, page: u64) -> Result<u32, Error> {
        let (address, slot, port, guest_port) = self.map_and_bind(domain, page)?;
        // SAFETY: hv just mapped the guest's console page read-write at this
        // identity-mapped address of the foreign window; it stays mapped
        // until dom0 destroys the guest (which drops this Console first).
        let ring = unsafe { ConsoleRing::new(address as *mut u8) };
        self.console = Some(Console { ring, port, slot });
        Ok(guest_port)
    }

    fn connect_store(&mut self, domain: DomainId, page: u64) -> Result<u32, Error> {
        let (address, slot, port, guest_port) = self.map_and_bind(domain, page)?;
        // SAFETY: hv just mapped the guest's store page read-write at this
        // identity-mapped address of the foreign window; it stays mapped
        // until dom0 destroys the guest (which drops the channel first).
        let ring = unsafe { StoreRingAccess::new(address as *mut u8) };
        self.store = Some(StoreChannel {
            ring,
            port,
            slot,
            assembler: MessageAssembler::new(),
            pending: [0; MESSAGE_MAX],
            pending_length: 0,
            pending_sent: 0,
            carry: [0; 256],
            carry_length: 0,
        });
        Ok(guest_port)
    }

    fn destroy(&mut self, domain: DomainId) {
        if let Some(console) = self.console.take() {
            release_console(console);
        }
        if let Some(store) = self.store.take() {
            release_slot(store.port, store.slot);
        }
        let _ = hypercall::domctl(DomCtlOp::Destroy, domain, 0, 0, 0);
        WINDOW.lock().release_guest(domain);
    }
}

/// Closes dom0's end of a back end's channel and frees its window slot. hv
/// removes the mapping itself when the guest is destroyed; unmapping first
/// is harmless.
fn release_slot(port: u32, slot: usize) {
    let address = FOREIGN_WINDOW_BASE + slot as u64 * abi::PAGE_SIZE;
    let _ = hypercall::domctl(DomCtlOp::UnmapForeign, 0, address, 0, 0);
    data_path::close_port(port);
    WINDOW.lock().release(slot);
}

fn release_console(console: Console) {
    release_slot(console.port, console.slot);
}

/// Whether a domain crashed: hv stopped it, or it shut down saying it
/// crashed (Xen's SHUTDOWN_crash: a kernel's panic), as libxl counts it.
fn crashed(state: DomainState, shutdown_reason: u32) -> bool {
    match state {
        DomainState::Crashed => true,
        DomainState::Shutdown => shutdown_reason == abi::hypercall::ShutdownReason::Crash as u32,
        _ => false,
    }
}

/// A one-letter-per-flag state column like `xl list`'s.
fn state_flags(state: DomainState, shutdown_reason: u32) -> &'static str {
    match state {
        _ if crashed(state, shutdown_reason) => "----c-",
        DomainState::Running => "r-----",
        DomainState::Blocked => "-b----",
        DomainState::Paused => "--p---",
        DomainState::Shutdown | DomainState::Crashed => "---s--",
    }
}

/// The toolstack's state: far too large for dom0's stack (every guest's
/// console history), so it lives here.
pub static TOOLSTACK: spin::Mutex<Toolstack> = spin::Mutex::new(Toolstack {
    guests: ArrayVec::new_const(),
    ramdisk: Archive::new(&[]),
    images: None,
    tsc_khz: 0,
    attached: None,
    console_buffer: [0; 512],
});

impl Toolstack {
    /// Sets the boot ramdisk and the TSC frequency.
    pub fn init(&mut self, ramdisk: &'static [u8], tsc_khz: u64) {
        self.ramdisk = Archive::new(ramdisk);
        self.tsc_khz = tsc_khz;
    }

    /// Finds a guest by name or id. dom0 itself is not a guest.
    pub fn find(&self, name_or_id: &str) -> Option<usize> {
        if let Ok(id) = name_or_id.parse::<DomainId>() {
            return self.guests.iter().position(|g| g.id == id);
        }
        self.guests.iter().position(|g| g.config.name.as_str() == name_or_id)
    }

    fn name_of(&self, id: DomainId) -> &str {
        if id == abi::DOM0 {
            return "Domain-0";
        }
        self.guests.iter().find(|g| g.id == id).map_or("(unknown)", |g| g.config.name.as_str())
    }

    /// Looks for the images disk: the first disk whose superblock says
    /// ext4 (`dom0core::toolstack::images`). One whose filesystem does not
    /// load is reported and left alone.
    pub fn find_images(&mut self, out: &mut Uart) {
        let names: ArrayVec<&'static str, 4> = DATA.lock().disks.iter().map(|disk| disk.name()).collect();
        for (disk, name) in names.into_iter().enumerate() {
            let mut superblock = [0u8; 512];
            let read = DATA.lock().disks[disk].read(images::SUPERBLOCK_OFFSET / 512, &mut superblock);
            if read.is_err() || !images::has_ext4_magic(&superblock) {
                continue;
            }
            if let Some(images) = &self.images {
                let _ = writeln!(out, "dom0: images: {name} holds ext4 too; the images disk is {}", images.name);
                continue;
            }
            match ImagesDisk::load(AtaReader::new(disk)) {
                Ok(filesystem) => {
                    let count = filesystem.files().len();
                    let more = if filesystem.truncated() { " (more left out)" } else { "" };
                    let _ = writeln!(out, "dom0: images: ext4 on {name}, {count} files{more}");
                    self.images = Some(Images { disk, name, filesystem });
                }
                Err(error) => {
                    let _ = writeln!(
                        out,
                        "dom0: images: {name} has an ext4 superblock but its filesystem cannot be read ({error}); carrying on without an images disk"
                    );
                }
            }
        }
    }

    /// `ls`: the ramdisk's files, then the images disk's, each with its
    /// store and size.
    pub fn ls(&self, out: &mut Uart) {
        for entry in self.ramdisk.entries() {
            match entry {
                Ok(entry) if entry.kind == EntryKind::File => {
                    let _ = writeln!(out, "ramdisk     {:>10}  {}", entry.data.len(), entry.name);
                }
                Ok(_) => {}
                Err(error) => {
                    let _ = writeln!(out, "dom0: ramdisk: {error}");
                    break;
                }
            }
        }
        if let Some(images) = &self.images {
            for entry in images.filesystem.files() {
                let _ = writeln!(out, "{:<11} {:>10}  {}", images.name, entry.length, entry.path);
            }
            if images.filesystem.truncated() {
                let _ = writeln!(out, "dom0: images: only the first {} files are listed", images::MAX_FILES);
            }
        }
    }

    /// File `name` in `store`: `None` if it is not there, `Some(Err(..))`
    /// if it is but cannot be opened (why), else the file. A ramdisk
    /// lookup walks the archive, checking every header on the way: the
    /// entry found is the one taken, never looked up again.
    fn found_file(&self, store: Store, name: &str) -> Option<Result<Found<'_>, alloc::string::String>> {
        match (store, &self.images) {
            (Store::Ramdisk, _) => match self.ramdisk.find(name) {
                Ok(Some(entry)) if entry.kind == EntryKind::File => Some(Ok(Found::Ramdisk(entry.data))),
                _ => None,
            },
            (Store::Disk, Some(images)) if images.filesystem.contains(name) => Some(
                images.filesystem.open(name).map(|file| Found::Disk(alloc::boxed::Box::new(file))).map_err(|error| {
                    let mut message = alloc::string::String::new();
                    let _ = write!(message, "{name} on {}: {error}", images.name);
                    message
                }),
            ),
            (Store::Disk, _) => None,
        }
    }

    /// Finds file `name`: in `first`, then in the other store.
    fn find_file(&self, name: &str, first: Store) -> Result<(Store, Found<'_>), alloc::string::String> {
        if let Some((store, _, found)) =
            images::look_up(&[name], &[first, first.other()], |store, name| self.found_file(store, name))
        {
            return found.map(|file| (store, file));
        }
        let mut message = alloc::string::String::new();
        if let Err(error) = self.ramdisk.find(name) {
            let _ = write!(message, "ramdisk: {error}");
        } else {
            let disk_name = self.images.as_ref().map(|images| images.name);
            let _ = write!(message, "{}", images::not_found(&[name], disk_name));
        }
        Err(message)
    }

    /// `create <config>`: `create NAME` finds NAME.cfg or NAME in the
    /// ramdisk or on the images disk (`dom0core::toolstack::images`).
    /// Returns the new guest's id.
    pub fn create(&mut self, config_name: &str, out: &mut Uart) -> Option<DomainId> {
        let names = images::config_names(config_name);
        let both = [Store::Ramdisk, Store::Disk];
        let Some((store, name, found)) = images::look_up(&names, &both, |store, name| self.found_file(store, name))
        else {
            let disk_name = self.images.as_ref().map(|images| images.name);
            match self.ramdisk.find(config_name) {
                Err(error) => {
                    let _ = writeln!(out, "dom0: create: ramdisk: {error}");
                }
                Ok(_) => {
                    let _ = writeln!(out, "dom0: create: {}", images::not_found(&names, disk_name));
                }
            }
            return None;
        };
        let parsed = match found {
            Ok(Found::Ramdisk(text)) => dom0core::toolstack::config::parse(text),
            Ok(disk) => match images::read_small(disk.file(), CONFIG_MAX) {
                Ok(text) => dom0core::toolstack::config::parse(&text),
                Err(error) => {
                    let disk_name = self.images.as_ref().map_or("the images disk", |images| images.name);
                    let _ = writeln!(out, "dom0: create: {name} on {disk_name}: {error}");
                    return None;
                }
            },
            Err(message) => {
                let _ = writeln!(out, "dom0: create: {message}");
                return None;
            }
        };
        let config = match parsed {
            Ok(config) => config,
            Err(error) => {
                let _ = writeln!(out, "dom0: create: {config_name}: {error}");
                return None;
            }
        };
        self.create_from(config, store, out)
    }

    /// Builds and starts the guest `config` describes; its kernel and
    /// ramdisk are looked for in `store` (the config's) first.
    fn create_from(&mut self, config: GuestConfig, config_store: Store, out: &mut Uart) -> Option<DomainId> {
        let created_at = rdtsc();
        if self.find(&config.name).is_some() {
            let _ = writeln!(out, "dom0: create: a guest named '{}' exists already", config.name);
            return None;
        }
        if self.guests.is_full() {
            let _ = writeln!(out, "dom0: create: dom0 manages at most {MAX_GUESTS} guests");
            return None;
        }
        let kernel = match self.find_file(&config.kernel, config_store) {
            Ok((_, kernel)) => kernel,
            Err(message) => {
                let _ = writeln!(out, "dom0: create: kernel: {message}");
                return None;
            }
        };
        let ramdisk = if config.ramdisk.is_empty() {
            None
        } else {
            match self.find_file(&config.ramdisk, config_store) {
                Ok((_, ramdisk)) => Some(ramdisk),
                Err(message) => {
                    let _ = writeln!(out, "dom0: create: ramdisk: {message}");
                    return None;
                }
            }
        };
        // The disk: at most one per guest for now, a region of a disk dom0 found.
        let mut disk = None;
        if config.disks.len() > 1 {
            let _ = writeln!(out, "dom0: create: {}: only one disk per guest is supported", config.name);
            return None;
        }
        if let Some(entry) = config.disks.first() {
            match self.disk_region(entry) {
                Ok(found) => disk = Some(found),
                Err(message) => {
                    let _ = writeln!(out, "dom0: create: {}: {message}", config.name);
                    return None;
                }
            }
        }
        // The vif: at most one per guest for now, with a MAC unique on the switch.
        let mut vif = None;
        if config.vifs.len() > 1 {
            let _ = writeln!(out, "dom0: create: {}: only one vif per guest is supported", config.name);
            return None;
        }
        if let Some(entry) = config.vifs.first() {
            let spec = match dom0core::backends::net::parse_vif(entry) {
                Ok(spec) => spec,
                Err(error) => {
                    let _ = writeln!(out, "dom0: create: {}: vif \"{entry}\": {error}", config.name);
                    return None;
                }
            };
            let mac = match spec.mac {
                Some(mac) if self.mac_in_use(mac) => {
                    let mut text = [0u8; 17];
                    let _ = writeln!(
                        out,
                        "dom0: create: {}: MAC {} is already on the switch",
                        config.name,
                        abi::net::format_mac(mac, &mut text)
                    );
                    return None;
                }
                Some(mac) => mac,
                // Filled in once the domain id is known.
                None => [0; 6],
            };
            vif = Some(mac);
        }
        let request = BuildRequest {
            kernel: kernel.file(),
            memory_bytes: config.memory_mib as u64 * (1 << 20),
            cmdline: &config.cmdline,
            tsc_khz: self.tsc_khz,
            weight: config.weight,
            cap: config.cap,
            block_sectors: disk.map(|(_, region)| region.sectors),
            ramdisk: ramdisk.as_ref().map(Found::file),
            require_pvh: config.pvh,
        };
        let mut control = Hypervisor { vcpus: config.vcpus, console: None, store: None };
        let id = match builder::build(&mut control, &request) {
            Ok(id) => id,
            Err(error) => {
                let _ = writeln!(out, "dom0: create: {}: {error}", config.name);
                return None;
            }
        };
        let console = control.console.take();
        let store = control.store.take();
        // The guest's home in the store, before it first runs: its name and
        // id, and its disk's front-end and back-end directories.
        {
            let mut store_tree = STORE.lock();
            let _ = store_tree.introduce_domain(id, Quota::GUEST);
            let home = |key: &str| {
                let mut path: ArrayString<96> = ArrayString::new();
                let _ = write!(path, "/local/domain/{id}/{key}");
                path
            };
            // dom0's word about the guest: it may read them, never change them.
            let _ = store_tree.write_read_only(&home("name"), &config.name, id);
            let _ = store_tree.write_read_only(&home("domid"), &decimal(id as u64), id);
            // Each vCPU's availability, as Xen's toolstack writes it: Linux
            // reads it (its Xen CPU hotplug) and keeps a vCPU said offline down.
            for vcpu in 0..config.vcpus {
                let mut key: ArrayString<32> = ArrayString::new();
                let _ = write!(key, "cpu/{vcpu}/availability");
                let _ = store_tree.write_read_only(&home(&key), "online", id);
            }
            let _ = store_tree.set_permissions(abi::DOM0, &home(""), &Permissions::owned_by(id));
            if let Some((_, region)) = disk {
                device_link::publish(&mut *store_tree, id, Backing::Disk { disk: 0, region }.offer());
            }
            if let Some(mac) = vif.as_mut() {
                if *mac == [0; 6] {
                    *mac = dom0core::backends::net::default_mac(id, 0);
                }
                device_link::publish(&mut *store_tree, id, Offer::Vif { mac: *mac });
            }
        }
        if let Err(error) = hypercall::domctl(DomCtlOp::Unpause, id, 0, 0, 0) {
            let _ = writeln!(out, "dom0: create: {}: unpause failed: {}", config.name, error.describe());
            let _ = STORE.lock().remove_domain(id);
            for class in Class::ALL {
                let _ = STORE.lock().remove(abi::DOM0, &device_link::back_class_directory(class, id));
            }
            control.console = console;
            control.store = store;
            control.destroy(id);
            return None;
        }
        let _ = writeln!(out, "dom0: created '{}' as domain {id}", config.name);
        DATA.lock().add_guest(id, config.name);
        self.guests.push(Guest {
            id,
            config,
            config_store,
            console,
            history: [0; HISTORY],
            history_length: 0,
            handled_end: false,
            created_at,
            quick_restarts: 0,
            create_build: rdtsc().wrapping_sub(created_at),
            create_to_first_output: None,
            create_to_latest_output: None,
            store,
            devices: [
                disk.map(|(disk, region)| Device { backing: Backing::Disk { disk, region }, phase: Phase::Offered }),
                vif.map(|mac| Device { backing: Backing::Vif { mac }, phase: Phase::Offered }),
            ],
        });
        Some(id)
    }

    /// `destroy`: tears guest `index` down.
    pub fn destroy(&mut self, index: usize, out: &mut Uart) {
        let mut guest = self.guests.remove(index);
        if self.attached == Some(guest.id) {
            self.attached = None;
        }
        if let Some(console) = guest.console.take() {
            release_console(console);
        }
        if let Some(store) = guest.store.take() {
            release_slot(store.port, store.slot);
        }
        let _ = STORE.lock().remove_domain(guest.id);
        for class in Class::ALL {
            let _ = STORE.lock().remove(abi::DOM0, &device_link::back_class_directory(class, guest.id));
        }
        // Out of the data paths (and off the switch) first: nothing serves
        // its back ends once they are taken.
        let devices = DATA.lock().remove_guest(guest.id);
        let (block, net, broken_vif) = devices.map_or((None, None, None), |d| (d.block, d.net, d.broken_vif));
        if let Some(net) = net {
            data_path::close_port(net.port);
            // hv removes dom0's grant mappings of the ring pages when the
            // guest is destroyed; the slots come back here.
            for slot in net.slots {
                WINDOW.lock().release(slot);
            }
        }
        if let Some((slots, _, _)) = broken_vif {
            for slot in slots {
                WINDOW.lock().release(slot);
            }
        }
        if let Some(block) = block {
            // Make what the guest wrote durable before it goes away.
            if let Some(disk) = DATA.lock().disks.get_mut(block.disk) {
                let _ = disk.flush();
            }
            release_slot(block.port, block.slot);
            // hv removes dom0's mappings of the guest's pages when it is
            // destroyed; the slots come back here.
            for (_, _, slot) in block.mapped {
                WINDOW.lock().release(slot);
            }
        }
        let destroyed = hypercall::domctl(DomCtlOp::Destroy, guest.id, 0, 0, 0);
        // hv removed every mapping of the guest's pages; whatever window
        // page dom0 still counted for it is free again.
        WINDOW.lock().release_guest(guest.id);
        match destroyed {
            Ok(_) => {
                let _ = writeln!(out, "dom0: destroyed '{}' (domain {})", guest.config.name, guest.id);
            }
            Err(error) => {
                let _ = writeln!(out, "dom0: destroy '{}': {}", guest.config.name, error.describe());
            }
        }
    }

    /// `selftest`'s check that hv holds a domain to its share of the
    /// foreign window and no further: maps page 0 of `domain` (a scratch
    /// domain dom0 maps nothing else of) at `FOREIGN_SHARE_PAGES` window
    /// pages, then at one more (hv must refuse: Busy); a page of another,
    /// new domain still maps there; after one of the first is unmapped, the
    /// scratch domain's page maps there too. Everything is unmapped and the
    /// second domain destroyed. Returns the refused call's result, or what
    /// went wrong. The window stays locked throughout, so the data paths map
    /// no persistent grant into the page the check borrows.
    pub fn check_foreign_share(&mut self, domain: DomainId) -> Result<i64, &'static str> {
        let mut window = WINDOW.lock();
        let address = |slot: usize| FOREIGN_WINDOW_BASE + slot as u64 * abi::PAGE_SIZE;
        let map = |owner: DomainId, slot: usize| hypercall::domctl(DomCtlOp::MapForeign, owner, 0, address(slot), 0);
        let unmap = |slot: usize| hypercall::domctl(DomCtlOp::UnmapForeign, 0, address(slot), 0, 0);
        let mut slots: ArrayVec<usize, { dom0core::backends::window::SHARE }> = ArrayVec::new();
        let mut outcome = Ok(0);
        while !slots.is_full() {
            let Some(slot) = window.take(domain, Use::Ring) else {
                outcome = Err("no window page for a mapping within the share");
                break;
            };
            slots.push(slot);
            if map(domain, slot).is_err() {
                outcome = Err("hv refused a mapping within the share");
                break;
            }
        }
        // A page no one uses, so only the share can make hv refuse it.
        let extra = window.first_free();
        if let (Ok(_), Some(extra)) = (outcome, extra) {
            outcome = match map(domain, extra) {
                Ok(_) => {
                    let _ = unmap(extra);
                    Err("hv mapped more than the share")
                }
                Err(Error::Busy) => Ok(Error::Busy.code()),
                Err(_) => Err("hv refused the mapping beyond the share with the wrong error"),
            };
        }
        if let (Ok(_), Some(extra)) = (outcome, extra) {
            // Another domain's page is not held back by this one's share.
            let other = hypercall::create_domain(1)
                .and_then(|id| hypercall::domctl(DomCtlOp::PopulateMemory, id, 0, 1, 0).map(|_| id));
            let other_mapped = match other {
                Ok(id) => {
                    let mapped = map(id, extra).is_ok();
                    let _ = unmap(extra);
                    mapped
                }
                Err(_) => false,
            };
            if let Ok(id) = other {
                let _ = hypercall::domctl(DomCtlOp::Destroy, id, 0, 0, 0);
            }
            let _ = unmap(slots[0]);
            let remapped = map(domain, extra).is_ok();
            let _ = unmap(extra);
            if !other_mapped {
                outcome = Err("another domain's page was refused while one domain held its share");
            } else if !remapped {
                outcome = Err("hv refused a mapping after one was unmapped");
            }
        }
        if extra.is_none() && outcome.is_ok() {
            outcome = Err("no free window page");
        }
        for slot in slots {
            let _ = unmap(slot);
            window.release(slot);
        }
        outcome
    }

    /// `pause` / `unpause`.
    pub fn set_paused(&mut self, index: usize, paused: bool, out: &mut Uart) {
        let guest = &self.guests[index];
        let operation = if paused { DomCtlOp::Pause } else { DomCtlOp::Unpause };
        if let Err(error) = hypercall::domctl(operation, guest.id, 0, 0, 0) {
            let _ = writeln!(out, "dom0: {}: {}", guest.config.name, error.describe());
        }
    }

    /// `sched`: sets what is given, then shows the values.
    pub fn sched(&mut self, target: &str, weight: Option<u32>, cap: Option<u32>, out: &mut Uart) {
        let Some(id) = self.domain_id(target) else {
            let _ = writeln!(out, "dom0: no domain '{target}'");
            return;
        };
        let info = match hypercall::domain_info(id) {
            Ok(info) => info,
            Err(error) => {
                let _ = writeln!(out, "dom0: sched: {}", error.describe());
                return;
            }
        };
        let (weight, cap) = (weight.unwrap_or(info.weight), cap.unwrap_or(info.cap));
        let most = 100 * info.vcpu_count.max(1);
        if cap > most {
            let _ = writeln!(
                out,
                "dom0: sched: cap {cap} is more than {most} ({} vCPUs, at most 100 percent of a CPU each)",
                info.vcpu_count
            );
            return;
        }
        if let Err(error) = hypercall::domctl(DomCtlOp::SetScheduling, id, weight as u64, cap as u64, 0) {
            let _ = writeln!(out, "dom0: sched: {}", error.describe());
            return;
        }
        let _ = writeln!(out, "{:<20} {:>5} {:>6} {:>4}", "Name", "ID", "Weight", "Cap");
        let _ = writeln!(out, "{:<20} {:>5} {:>6} {:>4}", self.name_of(id), id, weight, cap);
    }

    /// The domain `target` names: dom0 (`0` or `Domain-0`), or a guest by
    /// name or id.
    fn domain_id(&self, target: &str) -> Option<DomainId> {
        if target == "0" || target == "Domain-0" {
            return Some(abi::DOM0);
        }
        self.find(target).map(|index| self.guests[index].id)
    }

    /// `vcpu-list [<domain>]`, like `xl vcpu-list`: a row per vCPU of every
    /// domain, or of `target` (columns in `dom0core::shell::cpu_list`).
    pub fn vcpu_list(&self, target: Option<&str>, out: &mut Uart) {
        let mut ids = [0u32; 64];
        let count = match target {
            Some(target) => match self.domain_id(target) {
                Some(id) => {
                    ids[0] = id;
                    1
                }
                None => {
                    let _ = writeln!(out, "dom0: vcpu-list: no domain '{target}' (see 'list')");
                    return;
                }
            },
            None => match hypercall::list_domains(0, &mut ids) {
                Ok(count) => count,
                Err(error) => {
                    let _ = writeln!(out, "dom0: vcpu-list: {}", error.describe());
                    return;
                }
            },
        };
        let online = match hypercall::hv_info() {
            Ok(hv) => cpu_list::online_mask_of(&hv.cpus),
            Err(error) => {
                let _ = writeln!(out, "dom0: vcpu-list: {}", error.describe());
                return;
            }
        };
        let _ = cpu_list::write_vcpu_header(out);
        for &id in &ids[..count] {
            // A domain destroyed since it was listed is left out.
            let Ok(info) = hypercall::domain_info(id) else { continue };
            for vcpu in 0..info.vcpu_count {
                if let Ok(vcpu_info) = hypercall::vcpu_info(id, vcpu) {
                    let _ = cpu_list::write_vcpu_row(out, self.name_of(id), id, &vcpu_info, self.tsc_khz, online);
                }
            }
        }
    }

    /// `vcpu-pin <domain> <vcpu> <cpus>`, like `xl vcpu-pin`: lets vCPU
    /// `vcpu` of `target` (every vCPU for `None`) run only on `cpus` from
    /// its next scheduling on. Refuses, with one line, a domain or vCPU
    /// that does not exist and CPUs that do not run hv; prints nothing
    /// when it worked (`vcpu-list` shows the result).
    pub fn vcpu_pin(&self, target: &str, vcpu: Option<u32>, cpus: CpuList, out: &mut Uart) {
        let Some(id) = self.domain_id(target) else {
            let _ = writeln!(out, "dom0: vcpu-pin: no domain '{target}' (see 'list')");
            return;
        };
        let name = self.name_of(id);
        let (vcpus, online) = match hypercall::domain_info(id).and_then(|info| Ok((info, hypercall::hv_info()?))) {
            Ok((info, hv)) => (info.vcpu_count, cpu_list::online_mask_of(&hv.cpus)),
            Err(error) => {
                let _ = writeln!(out, "dom0: vcpu-pin: {name}: {}", error.describe());
                return;
            }
        };
        let chosen = match vcpu {
            None => 0..vcpus,
            Some(vcpu) if vcpu < vcpus => vcpu..vcpu + 1,
            Some(vcpu) => {
                let _ = writeln!(
                    out,
                    "dom0: vcpu-pin: '{name}' has no vCPU {vcpu} (its vCPUs: {})",
                    Cpus(cpu_list::online_mask(vcpus))
                );
                return;
            }
        };
        let mask = match cpu_list::pin_mask(cpus, online) {
            Ok(mask) => mask,
            Err(offline) => {
                let _ = writeln!(
                    out,
                    "dom0: vcpu-pin: CPU {} not running hv (running hv: {})",
                    Cpus(offline),
                    Cpus(online)
                );
                return;
            }
        };
        for vcpu in chosen {
            if let Err(error) = hypercall::set_affinity(id, vcpu, mask) {
                let _ = writeln!(out, "dom0: vcpu-pin: '{name}' vCPU {vcpu}: {}", error.describe());
                return;
            }
        }
    }

    /// `list`, like `xl list`.
    pub fn list(&self, out: &mut Uart) {
        let mut ids = [0u32; 64];
        let count = match hypercall::list_domains(0, &mut ids) {
            Ok(count) => count,
            Err(error) => {
                let _ = writeln!(out, "dom0: list: {}", error.describe());
                return;
            }
        };
        let _ = writeln!(out, "{:<32} {:>5} {:>5} {:>5} {:>8} {:>9}", "Name", "ID", "Mem", "VCPUs", "State", "Time(s)");
        for &id in &ids[..count] {
            let Ok(info) = hypercall::domain_info(id) else { continue };
            let state =
                DomainState::from_number(info.state).map_or("------", |state| state_flags(state, info.shutdown_reason));
            let tenths = if self.tsc_khz == 0 { 0 } else { info.cpu_time_tsc / (self.tsc_khz * 100) };
            let _ = writeln!(
                out,
                "{:<32} {:>5} {:>5} {:>5} {:>8} {:>7}.{}",
                self.name_of(id),
                id,
                info.current_pages / 256,
                info.vcpu_count,
                state,
                tenths / 10,
                tenths % 10
            );
        }
    }

    /// `mem`.
    pub fn mem(&self, out: &mut Uart) {
        match hypercall::hv_info() {
            Ok(hv) => {
                let _ = writeln!(
                    out,
                    "hv memory: total {} KiB, free {} KiB, hv {} KiB",
                    hv.total_pages * 4,
                    hv.free_pages * 4,
                    hv.hv_pages * 4
                );
            }
            Err(error) => {
                let _ = writeln!(out, "dom0: mem: {}", error.describe());
                return;
            }
        }
        let _ = writeln!(out, "{:<32} {:>5} {:>12} {:>12}", "Name", "ID", "Current(KiB)", "Max(KiB)");
        let mut ids = [0u32; 64];
        let count = hypercall::list_domains(0, &mut ids).unwrap_or(0);
        for &id in &ids[..count] {
            if let Ok(info) = hypercall::domain_info(id) {
                let _ = writeln!(
                    out,
                    "{:<32} {:>5} {:>12} {:>12}",
                    self.name_of(id),
                    id,
                    info.current_pages * 4,
                    info.max_pages * 4
                );
            }
        }
    }

    /// Attaches the serial console to guest `index`, replaying its recent output.
    pub fn attach(&mut self, index: usize, out: &mut Uart) {
        let guest = &self.guests[index];
        if guest.console.is_none() {
            let _ = writeln!(out, "dom0: '{}' has no console", guest.config.name);
            return;
        }
        let _ =
            writeln!(out, "dom0: attached to '{}' (domain {}); Ctrl-] returns to dom0", guest.config.name, guest.id);
        let _ = write!(out, "{}", escape(&guest.history[..guest.history_length], Context::Console));
        self.attached = Some(guest.id);
    }

    /// Sends typed bytes to the attached guest's console.
    pub fn type_into_attached(&mut self, bytes: &[u8]) {
        let Some(guest) = self.guests.iter_mut().find(|g| Some(g.id) == self.attached) else { return };
        if let Some(console) = &guest.console
            && console.ring.write_input(bytes).is_ok()
        {
            let _ = hypercall::notify(console.port);
        }
    }

    /// Moves guests' console output into their history and, for the
    /// attached guest, onto the serial line. Returns whether anything moved.
    pub fn service_consoles(&mut self, out: &mut Uart) -> bool {
        let mut moved = false;
        let attached = self.attached;
        let mut corrupt: ArrayVec<usize, MAX_GUESTS> = ArrayVec::new();
        let buffer = &mut self.console_buffer;
        for (index, guest) in self.guests.iter_mut().enumerate() {
            let Some(console) = &guest.console else { continue };
            match console.ring.read_output(buffer) {
                Ok(0) => {}
                Ok(count) => {
                    moved = true;
                    let _ = hypercall::notify(console.port);
                    let age = rdtsc().wrapping_sub(guest.created_at);
                    guest.create_to_first_output.get_or_insert(age);
                    guest.create_to_latest_output = Some(age);
                    guest.remember(&buffer[..count]);
                    if attached == Some(guest.id) {
                        let _ = write!(out, "{}", escape(&buffer[..count], Context::Console));
                    }
                }
                Err(_) => {
                    let _ = corrupt.try_push(index);
                }
            }
        }
        for index in corrupt {
            let guest = &mut self.guests[index];
            let _ = writeln!(out, "\ndom0: '{}' corrupted its console ring; console disconnected", guest.config.name);
            if let Some(console) = guest.console.take() {
                release_console(console);
            }
            if self.attached == Some(guest.id) {
                self.attached = None;
            }
        }
        moved
    }

    /// Moves every guest's disk and vif one step through `device_link`'s
    /// machine (`abi::store`'s "Devices and the handshake"): connects a
    /// device whose front end is ready (Initialised, or Connected as
    /// Linux's netfront writes), lets go of one whose front end left
    /// Connected (directories kept; answered Closed), offers a Closed one
    /// again when its front end writes Initialising, and finishes a detach
    /// once the front end says Closed (or went away, or the timeout
    /// passed): released, Closed, both directories removed. One step per
    /// device per call, each bounded (a device's rings and at most
    /// `PERSISTENT_GRANTS` pages to unmap), so a front end flapping
    /// Closing/Initialising costs dom0 no more than its own store writes.
    pub fn follow_devices(&mut self, out: &mut Uart) {
        let timeout = self.tsc_khz.max(1) * 1000 * DETACH_TIMEOUT_SECONDS;
        for guest in self.guests.iter_mut() {
            let (id, name) = (guest.id, guest.config.name);
            for class in Class::ALL {
                let Some(device) = guest.devices[class as usize] else { continue };
                let noun = class.noun();
                let timed_out =
                    matches!(device.phase, Phase::Detaching { since } if rdtsc().wrapping_sub(since) > timeout);
                let mut store_tree = STORE.lock();
                let front = device_link::front_state(&*store_tree, class, id);
                let (answer, phase) = match device_link::next_step(link_of(id, &device), front, timed_out) {
                    Step::Stay => continue,
                    Step::Connect => {
                        let published = device_link::published(&*store_tree, class, id);
                        let connected = published.is_some_and(|published| match device.backing {
                            Backing::Disk { disk, region } => connect_disk(id, disk, region, &published),
                            Backing::Vif { mac } => connect_vif(id, mac, &published),
                        });
                        if connected {
                            (XenbusState::Connected, Some(Phase::Live))
                        } else {
                            // The front end may try again (Initialising).
                            let _ =
                                writeln!(out, "\ndom0: '{name}' offered a {noun} ring dom0 cannot use; {noun} closed");
                            (XenbusState::Closed, Some(Phase::Closed))
                        }
                    }
                    Step::Close => {
                        release_device(id, class);
                        let _ = writeln!(out, "\ndom0: '{name}': {noun} 0 closed by the front end");
                        (XenbusState::Closed, Some(Phase::Closed))
                    }
                    Step::Refuse => (XenbusState::Closed, Some(Phase::Closed)),
                    Step::Reoffer => (XenbusState::InitWait, Some(Phase::Offered)),
                    Step::Remove => {
                        release_device(id, class);
                        let how = if timed_out { " (the front end did not answer; taken away)" } else { "" };
                        let _ = writeln!(out, "\ndom0: '{name}': {noun} 0 detached{how}");
                        (XenbusState::Closed, None)
                    }
                };
                device_link::write_back_state(&mut *store_tree, class, id, answer);
                match phase {
                    Some(phase) => guest.devices[class as usize] = Some(Device { phase, ..device }),
                    None => {
                        device_link::unpublish(&mut *store_tree, class, id);
                        guest.devices[class as usize] = None;
                    }
                }
            }
        }
    }

    /// The physical disk and region a `disk` entry names, checked: the disk
    /// exists, the region fits it, and no other guest's disk (in any
    /// phase) overlaps it.
    fn disk_region(&self, entry: &str) -> Result<(usize, Region), ArrayString<200>> {
        let mut message = ArrayString::new();
        let spec = match dom0core::toolstack::disk_spec::parse(entry) {
            Ok(spec) => spec,
            Err(error) => {
                let _ = write!(message, "disk \"{entry}\": {error}");
                return Err(message);
            }
        };
        let data = DATA.lock();
        let Some(index) = data.disks.iter().position(|d| d.name() == spec.device) else {
            let _ = write!(message, "no disk '{}' (see 'devices')", spec.device);
            return Err(message);
        };
        if self.images.as_ref().is_some_and(|images| images.disk == index) {
            let _ = write!(
                message,
                "disk \"{entry}\": {} is the images disk (guest images and configs); a guest may not use it",
                spec.device
            );
            return Err(message);
        }
        let size = data.disks[index].sectors();
        if spec.start + spec.sectors > size {
            let _ = write!(
                message,
                "disk region {}+{} is past the end of {} ({size} sectors)",
                spec.start, spec.sectors, spec.device
            );
            return Err(message);
        }
        let overlapping = self
            .guests
            .iter()
            .filter_map(|g| match g.devices[Class::Vbd as usize]?.backing {
                Backing::Disk { disk, region } => Some((disk, region)),
                Backing::Vif { .. } => None,
            })
            .any(|(disk, region)| {
                disk == index && spec.start < region.start + region.sectors && region.start < spec.start + spec.sectors
            });
        if overlapping {
            let _ = write!(message, "disk region overlaps another guest's");
            return Err(message);
        }
        Ok((index, Region { start: spec.start, sectors: spec.sectors, readonly: spec.readonly }))
    }

    /// `block-attach`: offers guest `index` a disk (a `disk` entry); its
    /// front end connects as at start-up.
    pub fn block_attach(&mut self, index: usize, entry: &str, out: &mut Uart) {
        let guest = &self.guests[index];
        let name = guest.config.name;
        if guest.devices[Class::Vbd as usize].is_some() {
            let _ = writeln!(out, "dom0: block-attach: '{name}' has a disk already (block-detach it first)");
            return;
        }
        let (disk, region) = match self.disk_region(entry) {
            Ok(found) => found,
            Err(message) => {
                let _ = writeln!(out, "dom0: block-attach: {message}");
                return;
            }
        };
        self.offer(index, Backing::Disk { disk, region });
        let _ = writeln!(out, "dom0: '{name}': disk 0 offered ({entry}, {} sectors)", region.sectors);
    }

    /// Publishes `backing` to guest `index` (back end InitWait).
    fn offer(&mut self, index: usize, backing: Backing) {
        let guest = &mut self.guests[index];
        device_link::publish(&mut *STORE.lock(), guest.id, backing.offer());
        guest.devices[backing.class() as usize] = Some(Device { backing, phase: Phase::Offered });
    }

    /// `block-detach`: see [`Toolstack::detach`].
    pub fn block_detach(&mut self, index: usize, out: &mut Uart) {
        self.detach(index, Class::Vbd, "block-detach", out);
    }

    /// `network-detach`: see [`Toolstack::detach`].
    pub fn network_detach(&mut self, index: usize, out: &mut Uart) {
        self.detach(index, Class::Vif, "network-detach", out);
    }

    /// Takes guest `index`'s device of `class` away: a connected one is
    /// asked to close as Xen's toolstack asks (`online` 0, back end
    /// Closing) and goes once the front end says Closed, or after
    /// `DETACH_TIMEOUT_SECONDS` (`follow_devices`); any other (offered,
    /// closed, or with a broken ring) goes at once.
    fn detach(&mut self, index: usize, class: Class, command: &str, out: &mut Uart) {
        let guest = &mut self.guests[index];
        let (id, name, noun) = (guest.id, guest.config.name, class.noun());
        let Some(device) = guest.devices[class as usize].as_mut() else {
            let _ = writeln!(out, "dom0: {command}: '{name}' has no {noun}");
            return;
        };
        if let (Phase::Live | Phase::Detaching { .. }, Some((port, false))) = (device.phase, live_port(id, class)) {
            if device.phase == Phase::Live {
                device_link::begin_detach(&mut *STORE.lock(), class, id);
                let _ = hypercall::notify(port);
                device.phase = Phase::Detaching { since: rdtsc() };
            }
            let _ = writeln!(out, "dom0: '{name}': {noun} 0 closing (waiting for the front end)");
            return;
        }
        guest.devices[class as usize] = None;
        release_device(id, class);
        device_link::unpublish(&mut *STORE.lock(), class, id);
        let _ = writeln!(out, "dom0: '{name}': {noun} 0 detached");
    }

    /// `network-attach`: offers guest `index` a vif (settings as in a
    /// config's `vif` entry); its front end connects as at start-up.
    pub fn network_attach(&mut self, index: usize, settings: &str, out: &mut Uart) {
        let guest = &self.guests[index];
        let name = guest.config.name;
        if guest.devices[Class::Vif as usize].is_some() {
            let _ = writeln!(out, "dom0: network-attach: '{name}' has a vif already (network-detach it first)");
            return;
        }
        let spec = match dom0core::backends::net::parse_vif(settings) {
            Ok(spec) => spec,
            Err(error) => {
                let _ = writeln!(out, "dom0: network-attach: \"{settings}\": {error}");
                return;
            }
        };
        let mac = spec.mac.unwrap_or(dom0core::backends::net::default_mac(guest.id, 0));
        let mut text = [0u8; 17];
        if self.mac_in_use(mac) {
            let _ = writeln!(
                out,
                "dom0: network-attach: MAC {} is already on the switch",
                abi::net::format_mac(mac, &mut text)
            );
            return;
        }
        self.offer(index, Backing::Vif { mac });
        let _ = writeln!(out, "dom0: '{name}': vif 0 offered, mac {}", abi::net::format_mac(mac, &mut text));
    }

    /// Whether `mac` is the NIC's or any guest's vif's (in any phase).
    fn mac_in_use(&self, mac: [u8; 6]) -> bool {
        let nic = crate::drivers::e1000::NIC.lock().as_ref().is_some_and(|nic| nic.mac() == mac);
        nic || self
            .guests
            .iter()
            .any(|g| g.devices[Class::Vif as usize].is_some_and(|device| device.backing == Backing::Vif { mac }))
    }

    /// Serves the guests' store requests and delivers their watch events.
    /// Returns whether anything moved.
    pub fn service_store(&mut self) -> bool {
        /// Most store messages (requests answered, watch events sent) per
        /// guest per pass of dom0's loop.
        const STORE_BATCH: usize = 32;
        let mut moved = false;
        let mut store_tree = STORE.lock();
        for guest in self.guests.iter_mut() {
            let Some(channel) = guest.store.as_mut() else { continue };
            let mut notify = false;
            let mut broken = false;
            // Messages handled for this guest in this pass: bounded, so a
            // guest that refills its ring from another CPU as fast as dom0
            // empties it cannot hold dom0 here (the next pass goes on).
            let mut handled = 0;
            loop {
                if handled == STORE_BATCH {
                    moved = true;
                    break;
                }
                // Finish sending what is pending first.
                if channel.pending_sent < channel.pending_length {
                    match channel.ring.server_send(&channel.pending[channel.pending_sent..channel.pending_length]) {
                        Ok(0) => break,
                        Ok(count) => {
                            channel.pending_sent += count;
                            notify = true;
                            continue;
                        }
                        Err(_) => {
                            broken = true;
                            break;
                        }
                    }
                }
                // Then a complete request, or more request bytes.
                if let Some(message) = channel.assembler.message() {
                    channel.pending_length = store_tree.handle(guest.id, message, &mut channel.pending);
                    channel.pending_sent = 0;
                    channel.assembler.clear();
                    moved = true;
                    handled += 1;
                    continue;
                }
                if store_tree.next_event_size(guest.id).is_some() {
                    channel.pending_length = store_tree.pop_event(guest.id, &mut channel.pending);
                    channel.pending_sent = 0;
                    moved = true;
                    handled += 1;
                    continue;
                }
                // Then request bytes already taken from the ring, then more.
                if channel.carry_length > 0 {
                    let taken = channel.assembler.feed(&channel.carry[..channel.carry_length]);
                    if taken == 0 {
                        break;
                    }
                    channel.carry.copy_within(taken..channel.carry_length, 0);
                    channel.carry_length -= taken;
                    continue;
                }
                match channel.ring.server_receive(&mut channel.carry) {
                    Ok(0) => break,
                    Ok(count) => {
                        channel.carry_length = count;
                        moved = true;
                    }
                    Err(_) => {
                        // The guest ran its request index away: disconnect.
                        broken = true;
                        break;
                    }
                }
            }
            if broken {
                if let Some(channel) = guest.store.take() {
                    release_slot(channel.port, channel.slot);
                }
            } else if notify {
                let _ = hypercall::notify(channel.port);
            }
        }
        moved
    }

    /// `diskbench`: reads a region of a physical disk directly, 64 sectors
    /// (one front-end request's worth) at a time, and reports the TSC ticks.
    /// The disks are locked for one read at a time: the guests' disk
    /// requests (served on the data-path vCPU, if dom0 has one) take turns
    /// with the bench.
    pub fn disk_bench(&mut self, region: &str, out: &mut Uart) {
        let spec = match dom0core::toolstack::disk_spec::parse(region) {
            Ok(spec) => spec,
            Err(error) => {
                let _ = writeln!(out, "dom0: diskbench: {error}");
                return;
            }
        };
        let Some(disk) = DATA.lock().disks.iter().position(|d| d.name() == spec.device) else {
            let _ = writeln!(out, "dom0: diskbench: no disk '{}' (see 'devices')", spec.device);
            return;
        };
        let mut buffer = [0u8; 64 * 512];
        let started = rdtsc();
        let mut sector = spec.start;
        let end = spec.start + spec.sectors;
        while sector < end {
            let count = (end - sector).min(64) as usize;
            let read = DATA.lock().disks[disk].read(sector, &mut buffer[..count * 512]);
            if let Err(error) = read {
                let _ = writeln!(out, "dom0: diskbench: read at {sector}: {error}");
                return;
            }
            sector += count as u64;
        }
        let _ = writeln!(out, "diskbench: read {} sectors in {} tsc", spec.sectors, rdtsc() - started);
    }

    /// `diskmode <disk> [pio|dma]`: shows, or chooses, how a disk moves data.
    pub fn disk_mode(&mut self, name: &str, dma: Option<bool>, out: &mut Uart) {
        let outcome = DATA.lock().disks.iter_mut().find(|d| d.name() == name).map(|disk| match dma {
            Some(on) => disk.set_dma(on).map(|()| disk.transfer_mode()),
            None => Ok(disk.transfer_mode()),
        });
        match outcome {
            None => {
                let _ = writeln!(out, "dom0: diskmode: no disk '{name}' (see 'devices')");
            }
            Some(Err(reason)) => {
                let _ = writeln!(out, "dom0: diskmode: {name} cannot use DMA: {reason}");
            }
            Some(Ok(mode)) => {
                let _ = writeln!(out, "{name}: {mode}");
            }
        }
    }

    /// `switch`: the MAC table, one line per fresh entry.
    pub fn show_switch(&self, out: &mut Uart) {
        let now = rdtsc() / self.tsc_khz.max(1);
        // Copied out first: the data paths do not wait while the serial line prints.
        let (entries, dropped, refused) = {
            let data = DATA.lock();
            let entries: ArrayVec<_, 256> = data.switch.entries(now).collect();
            (entries, data.switch_dropped, data.switch.refused())
        };
        let _ = writeln!(out, "{:<17}  {:<20} {:>8}", "MAC", "Port", "Age(s)");
        for (mac, port, age_ms) in entries {
            let mut text = [0u8; 17];
            let name = if port == UPLINK { "nic0" } else { self.name_of(port as DomainId) };
            let mac = abi::net::format_mac(mac, &mut text);
            match age_ms {
                Some(age_ms) => {
                    let (seconds, tenths) = (age_ms / 1000, age_ms % 1000 / 100);
                    let _ = writeln!(out, "{mac}  {name:<20} {seconds:>6}.{tenths}");
                }
                // A vif's configured MAC, locked to its port.
                None => {
                    let _ = writeln!(out, "{mac}  {name:<20} {:>8}", "static");
                }
            }
        }
        let _ = writeln!(out, "{dropped} frames dropped");
        let _ = writeln!(out, "{refused} frames refused (source MAC not the port's)");
    }

    /// `devices`: physical disks, and each guest's console and disk. What
    /// the data paths hold is copied out of their lock before it is
    /// printed: they do not wait while the serial line prints.
    pub fn devices(&self, out: &mut Uart) {
        let (disks, switch, nic_interrupts) = {
            let data = DATA.lock();
            let disks: ArrayVec<_, 4> = data
                .disks
                .iter()
                .map(|d| {
                    (d.name(), d.sectors(), ArrayString::<40>::from(d.model()).unwrap_or_default(), d.transfer_mode())
                })
                .collect();
            (disks, (data.switch.len(), data.switch_dropped, data.switch.refused()), data.nic.interrupts)
        };
        let disk_name = |index: usize| disks.get(index).map_or("?", |disk| disk.0);
        let _ = writeln!(out, "Physical disks:");
        if disks.is_empty() {
            let _ = writeln!(out, "  (none found)");
        }
        for (name, sectors, model, mode) in &disks {
            let _ = writeln!(out, "  {name:<12} {sectors:>10} sectors  {model}, {mode}");
        }
        let _ = writeln!(out, "Network:");
        let nic = crate::drivers::e1000::NIC
            .lock()
            .as_ref()
            .map(|nic| (nic.stats(), nic.mac(), nic.link_up(), nic.interrupt_port().is_some()));
        match nic {
            Some((stats, mac, link_up, interrupt)) => {
                let mut text = [0u8; 17];
                let _ = writeln!(
                    out,
                    "  {:<12} e1000 mac {}  link {}, {}, tx {} frames ({} dropped), rx {} frames, {} interrupt events",
                    "nic0",
                    abi::net::format_mac(mac, &mut text),
                    if link_up { "up" } else { "down" },
                    if interrupt { "interrupt-driven" } else { "polled" },
                    stats.tx_frames,
                    stats.tx_dropped,
                    stats.rx_frames,
                    nic_interrupts
                );
            }
            None => {
                let _ = writeln!(out, "  (no NIC found)");
            }
        }
        let _ = writeln!(
            out,
            "  switch: {} addresses learned, {} frames dropped, {} refused (source MAC not the port's)",
            switch.0, switch.1, switch.2
        );
        let _ = writeln!(out, "Guest devices:");
        for guest in &self.guests {
            let console = if guest.console.is_some() { "connected" } else { "disconnected" };
            let _ = writeln!(out, "  {:<20} console  {console}", guest.config.name);
            let held = WINDOW.lock().held(guest.id);
            let _ = writeln!(
                out,
                "  {:<20} window   {} ring pages, {} grant pages mapped",
                guest.config.name, held.rings, held.grants
            );
            let mut text = [0u8; 17];
            for device in guest.devices.iter().flatten() {
                let state = match device.phase {
                    Phase::Offered => "waiting for the front end",
                    Phase::Closed => "closed by the front end (Initialising reconnects)",
                    Phase::Live | Phase::Detaching { .. } => continue,
                };
                let class = device.backing.class();
                let (front, name) = (device_link::front_directory(class, guest.id), guest.config.name);
                // The front-end directory as the guest names it (relative to its home).
                let store_path = front.split_once("/device/").map_or(front.as_str(), |(_, path)| path);
                let _ = match device.backing {
                    Backing::Disk { disk, region } => writeln!(
                        out,
                        "  {name:<20} disk     {}:{}+{}  {state} (store: device/{store_path})",
                        disk_name(disk),
                        region.start,
                        region.sectors
                    ),
                    Backing::Vif { mac } => writeln!(
                        out,
                        "  {name:<20} vif      {}  {state} (store: device/{store_path})",
                        abi::net::format_mac(mac, &mut text)
                    ),
                };
            }
            let (broken_vif, net, block) = {
                let data = DATA.lock();
                let devices = data.guest(guest.id);
                (
                    devices.and_then(|d| d.broken_vif).map(|(_, reason, _)| reason),
                    devices.and_then(|d| d.net.as_ref()).map(|net| (net.mac, net.stats)),
                    devices.and_then(|d| d.block.as_ref()).map(|block| {
                        let counts = (block.requests, block.service_tsc, block.mapped.len());
                        (block.broken, block.disk, block.region, counts)
                    }),
                )
            };
            if let Some(reason) = broken_vif {
                let _ = writeln!(out, "  {:<20} vif      disconnected: {reason}", guest.config.name);
            }
            if let Some((mac, stats)) = net {
                let _ = writeln!(
                    out,
                    "  {:<20} vif      {}  {}, tx {} frames ({} refused, {} spoofed), rx {} frames ({} dropped)",
                    guest.config.name,
                    abi::net::format_mac(mac, &mut text),
                    if matches!(guest.devices[Class::Vif as usize], Some(Device { phase: Phase::Detaching { .. }, .. }))
                    {
                        "closing"
                    } else {
                        "connected"
                    },
                    stats.tx_frames,
                    stats.tx_errors,
                    stats.tx_spoofed,
                    stats.rx_frames,
                    stats.rx_dropped
                );
            }
            if let Some((broken, disk, region, (requests, service_tsc, mapped))) = block {
                let state = broken.unwrap_or("connected");
                let _ = writeln!(
                    out,
                    "  {:<20} disk     {}:{}+{}{}  {state}, {requests} requests, {service_tsc} tsc serving them, {mapped} pages mapped",
                    guest.config.name,
                    disk_name(disk),
                    region.start,
                    region.sectors,
                    if region.readonly { ",ro" } else { "" },
                );
            }
        }
    }

    /// Reports what the data paths noticed (`data_path::Notice`), a line
    /// each, on the serial line, which is vCPU 0's. A broken vif is
    /// answered Closed in the store, unless its front end's own steps have
    /// moved it on already (`follow_devices`, also on vCPU 0, so the two
    /// never race). Returns whether anything was printed.
    pub fn report_data_path(&mut self, out: &mut Uart) -> bool {
        let mut printed = false;
        loop {
            let Some(notice) = DATA.lock().next_notice() else { break };
            notice.write(out);
            printed = true;
            if let Notice::VifBroken { id, .. } = notice {
                let mut store_tree = STORE.lock();
                if DATA.lock().guest(id).is_some_and(|d| d.broken_vif.is_some()) {
                    device_link::write_back_state(&mut *store_tree, Class::Vif, id, XenbusState::Closed);
                }
            }
        }
        printed
    }

    /// Acts on guests that crashed or shut down (their `on_crash`).
    /// Returns whether anything was printed.
    pub fn reap(&mut self, out: &mut Uart) -> bool {
        let mut printed = false;
        let mut index = 0;
        while index < self.guests.len() {
            let guest = &self.guests[index];
            let info = hypercall::domain_info(guest.id).ok();
            let state = info.map(|i| (DomainState::from_number(i.state), i.shutdown_reason));
            // A guest that shut down saying it crashed (Xen's SHUTDOWN_crash:
            // a kernel's panic) gets its on_crash policy, as in xl.
            let (crashed, reboot) = match state {
                Some((Some(state @ (DomainState::Crashed | DomainState::Shutdown)), reason)) => {
                    (crashed(state, reason), reason == abi::hypercall::ShutdownReason::Reboot as u32)
                }
                _ => {
                    index += 1;
                    continue;
                }
            };
            if guest.handled_end {
                index += 1;
                continue;
            }
            printed = true;
            let name = guest.config.name;
            let id = guest.id;
            let policy = if crashed {
                guest.config.on_crash
            } else if reboot {
                OnCrash::Restart
            } else {
                OnCrash::Destroy
            };
            // Why it crashed comes from hv's crash record, never from log
            // text, which any guest can write.
            let mut reason: ArrayString<200> = ArrayString::new();
            if crashed && let Some(info) = info {
                dom0core::shell::report::crash_reason(&info.crash, &mut reason);
            }
            let what = if !crashed {
                "shut down"
            } else if matches!(state, Some((Some(DomainState::Shutdown), _))) {
                "crashed (it said so: see its last console lines)"
            } else if reason.is_empty() {
                "crashed (see dmesg)"
            } else {
                reason.as_str()
            };
            let policy_name = match policy {
                OnCrash::Destroy => "destroy",
                OnCrash::Restart => "restart",
                OnCrash::Preserve => "preserve",
            };
            let _ = writeln!(out, "\ndom0: '{name}' (domain {id}) {what}; on_crash={policy_name}");
            match policy {
                OnCrash::Preserve => {
                    self.guests[index].handled_end = true;
                    index += 1;
                }
                OnCrash::Destroy => self.destroy(index, out),
                OnCrash::Restart => {
                    // A guest that keeps dying soon after it starts is not
                    // restarted forever: after RESTARTS_MAX quick deaths in a
                    // row it stays down.
                    let guest = &self.guests[index];
                    let quick =
                        rdtsc().wrapping_sub(guest.created_at) < self.tsc_khz.max(1) * 1000 * QUICK_DEATH_SECONDS;
                    let restarts = if quick { guest.quick_restarts + 1 } else { 0 };
                    let (config, store) = (guest.config.clone(), guest.config_store);
                    self.destroy(index, out);
                    if restarts > RESTARTS_MAX {
                        let _ = writeln!(
                            out,
                            "dom0: '{name}' died {restarts} times within {QUICK_DEATH_SECONDS} s of starting; not restarting it"
                        );
                    } else if let Some(id) = self.create_from(config, store, out)
                        && let Some(new) = self.guests.iter_mut().find(|g| g.id == id)
                    {
                        new.quick_restarts = restarts;
                    }
                }
            }
        }
        printed
    }
}
