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
use dom0core::builder::{self, BuildRequest, DomainControl};
use dom0core::config::{GuestConfig, OnCrash};
use dom0core::cpu_list::{self, CpuList, Cpus};
use dom0core::device_link::{self, Link, Step};
use dom0core::tar::{Archive, EntryKind};
use dom0core::window::Use;
use pv_drivers::console::ConsoleRing;
use pv_drivers::hypercall;

use crate::data_path::{self, BlockBackend, DATA, Lock, Notice, UPLINK};
use crate::uart::Uart;
use abi::store::Access;
use abi::store::{DeviceState, keys, parse_decimal};
use dom0core::block_backend::Region;
use dom0core::store::{DefaultStore, MESSAGE_MAX, MessageAssembler, Permissions, Quota};
use pv_drivers::console::StoreRingAccess;
use pv_drivers::ring::BlockBack;

use crate::netback::NetBackend;
use dom0core::switch::PortId;
use dom0core::terminal::{Context, escape};

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

/// Where dom0 keeps the back-end sides of all of guest `id`'s devices of
/// `kind` (`vbd`, `vif`).
fn backend_directory(kind: &str, id: DomainId) -> ArrayString<64> {
    let mut path = ArrayString::new();
    let _ = write!(path, "/local/domain/0/backend/{kind}/{id}");
    path
}

/// Where dom0 keeps the back-end side of guest `id`'s first vif.
fn vif_backend_path(id: DomainId) -> ArrayString<64> {
    let mut path = ArrayString::new();
    let _ = write!(path, "/local/domain/0/backend/vif/{id}/0");
    path
}

/// Publishes guest `id`'s vif 0 in the store: the back-end directory (read
/// by the guest only) with the MAC and features, state InitWait, and the
/// front-end directory with the MAC, state Initialising (`abi::net`).
fn publish_vif(store_tree: &mut DefaultStore, id: DomainId, mac: [u8; 6]) {
    let backend = vif_backend_path(id);
    let key = |name: &str| {
        let mut path: ArrayString<96> = ArrayString::new();
        let _ = write!(path, "{backend}/{name}");
        path
    };
    let front = |name: &str| {
        let mut path: ArrayString<96> = ArrayString::new();
        let _ = write!(path, "/local/domain/{id}/device/vif/0/{name}");
        path
    };
    let mut text = [0u8; 17];
    let mac_text = abi::net::format_mac(mac, &mut text);
    let mut readable = Permissions::owned_by(abi::DOM0);
    let _ = readable.grant(id, Access::Read);
    let _ = store_tree.mkdir(abi::DOM0, &backend);
    let _ = store_tree.set_permissions(abi::DOM0, &backend, &readable);
    let mut frontend: ArrayString<96> = ArrayString::new();
    let _ = write!(frontend, "/local/domain/{id}/device/vif/0");
    let _ = store_tree.write(abi::DOM0, &key(keys::FRONTEND), &frontend);
    let _ = store_tree.write(abi::DOM0, &key(keys::FRONTEND_ID), &decimal(id as u64));
    let _ = store_tree.write(abi::DOM0, &key(abi::net::keys::MAC), mac_text);
    let _ = store_tree.write(abi::DOM0, &key(abi::net::keys::FEATURE_RX_COPY), "1");
    let _ = store_tree.write(abi::DOM0, &key(abi::net::keys::FEATURE_SG), "0");
    let _ = store_tree.write(abi::DOM0, &key(abi::net::keys::FEATURE_CSUM_OFFLOAD), "0");
    let _ = store_tree.write(abi::DOM0, &key(abi::net::keys::MTU), &decimal(abi::net::MTU as u64));
    let _ = store_tree.write(abi::DOM0, &key(keys::STATE), DeviceState::InitWait.as_value());
    let _ = store_tree.write(abi::DOM0, &front("backend"), &backend);
    let _ = store_tree.write(abi::DOM0, &front("backend-id"), "0");
    let _ = store_tree.write(abi::DOM0, &front(abi::net::keys::MAC), mac_text);
    let _ = store_tree.write(abi::DOM0, &front(keys::STATE), DeviceState::Initialising.as_value());
}

/// What guest `id`'s front end of device `<kind>/0` published, once it
/// says Initialised (None before): the decimal values of `names`, in
/// order, each None when absent or malformed.
fn initialised_front<const N: usize>(
    store_tree: &DefaultStore,
    id: DomainId,
    kind: &str,
    names: [&str; N],
) -> Option<[Option<u32>; N]> {
    let front = |key: &str| {
        let mut path: ArrayString<96> = ArrayString::new();
        let _ = write!(path, "/local/domain/{id}/device/{kind}/0/{key}");
        path
    };
    let state = DeviceState::from_key(store_tree.read(abi::DOM0, &front(keys::STATE)).ok().map(str::as_bytes));
    (state == DeviceState::Initialised).then(|| {
        names.map(|key| store_tree.read(abi::DOM0, &front(key)).ok().and_then(|v| parse_decimal(v.as_bytes())))
    })
}

/// Publishes guest `id`'s disk 0 in the store: the back-end directory
/// (read by the guest only) with its size and mode, state InitWait, and the
/// front-end directory, state Initialising (`abi::block`, `abi::store`).
fn publish_vbd(store_tree: &mut DefaultStore, id: DomainId, region: Region) {
    let backend = backend_path(id);
    let key = |name: &str| {
        let mut path: ArrayString<96> = ArrayString::new();
        let _ = write!(path, "{backend}/{name}");
        path
    };
    let front = |name: &str| {
        let mut path: ArrayString<96> = ArrayString::new();
        let _ = write!(path, "/local/domain/{id}/device/vbd/0/{name}");
        path
    };
    // Permissions first: nodes created below inherit them.
    let mut readable = Permissions::owned_by(abi::DOM0);
    let _ = readable.grant(id, Access::Read);
    let _ = store_tree.mkdir(abi::DOM0, &backend);
    let _ = store_tree.set_permissions(abi::DOM0, &backend, &readable);
    let mut frontend: ArrayString<96> = ArrayString::new();
    let _ = write!(frontend, "/local/domain/{id}/device/vbd/0");
    let _ = store_tree.write(abi::DOM0, &key(keys::FRONTEND), &frontend);
    let _ = store_tree.write(abi::DOM0, &key(keys::FRONTEND_ID), &decimal(id as u64));
    let _ = store_tree.write(abi::DOM0, &key(keys::SECTORS), &decimal(region.sectors));
    let _ = store_tree.write(abi::DOM0, &key(keys::MODE), if region.readonly { "r" } else { "w" });
    let _ = store_tree.write(abi::DOM0, &key(keys::STATE), DeviceState::InitWait.as_value());
    let _ = store_tree.write(abi::DOM0, &front("backend"), &backend);
    let _ = store_tree.write(abi::DOM0, &front("backend-id"), "0");
    let _ = store_tree.write(abi::DOM0, &front(keys::STATE), DeviceState::Initialising.as_value());
}

/// Removes guest `id`'s disk 0 from the store (both directories).
fn unpublish_vbd(store_tree: &mut DefaultStore, id: DomainId) {
    let _ = store_tree.remove(abi::DOM0, &backend_directory("vbd", id));
    let mut frontend: ArrayString<96> = ArrayString::new();
    let _ = write!(frontend, "/local/domain/{id}/device/vbd/0");
    let _ = store_tree.remove(abi::DOM0, &frontend);
}

/// Sets the back-end `state` of guest `id`'s device `<kind>/0`.
fn write_backend_state(store_tree: &mut DefaultStore, kind: &str, id: DomainId, state: DeviceState) {
    let mut path: ArrayString<96> = ArrayString::new();
    let _ = write!(path, "/local/domain/0/backend/{kind}/{id}/0/{}", keys::STATE);
    let _ = store_tree.write(abi::DOM0, &path, state.as_value());
}

/// Whether a device `<kind>/0` of guest `id` that dom0 asked to close at
/// TSC `since` may go now: `Some(timed_out)` once its front end says Closed
/// or `timeout` ticks have passed.
fn detach_ready(id: DomainId, kind: &str, since: u64, timeout: u64) -> Option<bool> {
    let mut path: ArrayString<96> = ArrayString::new();
    let _ = write!(path, "/local/domain/{id}/device/{kind}/0/{}", keys::STATE);
    let state = DeviceState::from_key(STORE.lock().read(abi::DOM0, &path).ok().map(str::as_bytes));
    let timed_out = rdtsc().wrapping_sub(since) > timeout;
    (state == DeviceState::Closed || timed_out).then_some(timed_out)
}

/// The `state` guest `id`'s front end of device `<kind>/0` wrote (None
/// when the node or its directory is absent).
fn front_state(store_tree: &DefaultStore, id: DomainId, kind: &str) -> Option<DeviceState> {
    let mut path: ArrayString<96> = ArrayString::new();
    let _ = write!(path, "/local/domain/{id}/device/{kind}/0/{}", keys::STATE);
    store_tree.read(abi::DOM0, &path).ok().map(|value| DeviceState::from_key(Some(value.as_bytes())))
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

/// The event port of guest `id`'s connected disk (None when none is).
fn block_port(id: DomainId) -> Option<u32> {
    DATA.lock().guest(id).and_then(|d| d.block.as_ref()).map(|block| block.port)
}

/// Guest `id`'s vif as the data paths hold it: the event port of a
/// connected one, and whether one broke.
fn vif_link(id: DomainId) -> (Option<u32>, bool) {
    let data = DATA.lock();
    let devices = data.guest(id);
    (devices.and_then(|d| d.net.as_ref()).map(|net| net.port), devices.is_some_and(|d| d.broken_vif.is_some()))
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

/// Removes guest `id`'s vif 0 from the store (both directories; the
/// back-end side's per-guest directory too, vif 0 being its only entry).
fn unpublish_vif(store_tree: &mut DefaultStore, id: DomainId) {
    let _ = store_tree.remove(abi::DOM0, &backend_directory("vif", id));
    let mut frontend: ArrayString<96> = ArrayString::new();
    let _ = write!(frontend, "/local/domain/{id}/device/vif/0");
    let _ = store_tree.remove(abi::DOM0, &frontend);
}

/// Seconds a front end has to let go of a vif being detached.
const DETACH_TIMEOUT_SECONDS: u64 = 5;

/// Where dom0 keeps the back-end side of guest `id`'s first disk.
fn backend_path(id: DomainId) -> ArrayString<64> {
    let mut path = ArrayString::new();
    let _ = write!(path, "/local/domain/0/backend/vbd/{id}/0");
    path
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
/// `dom0core::window`).
pub type ForeignWindow = dom0core::window::Window<WINDOW_SLOTS, MAX_GUESTS>;
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
    pub console: Option<Console>,
    history: [u8; HISTORY],
    history_length: usize,
    /// A crash or shutdown was already acted on or reported.
    pub handled_end: bool,
    /// TSC when `create` started.
    created_at: u64,
    /// Restarts in a row that followed a death soon after start.
    quick_restarts: u32,
    /// TSC ticks from `create` to the first console byte dom0 saw.
    pub create_to_first_output: Option<u64>,
    /// Its disk until the front end has connected: (physical disk, region).
    pub pending_disk: Option<(usize, Region)>,
    /// Its disk while the back end is Closed (the front end closed it, or
    /// dom0 refused what it offered): nothing mapped; the front end writing
    /// Initialising offers it again.
    pub closed_disk: Option<(usize, Region)>,
    /// Its store connection.
    pub store: Option<StoreChannel>,
    /// Its vif's MAC until the front end has connected.
    pub pending_vif: Option<[u8; 6]>,
    /// Its vif's MAC while the back end is Closed (the front end closed
    /// it, or dom0 refused what it offered): nothing mapped; the front end
    /// writing Initialising offers it again.
    pub closed_vif: Option<[u8; 6]>,
    /// `network-detach` asked the connected vif to close at this TSC.
    pub vif_closing: Option<u64>,
    /// `block-detach` asked the connected disk to close at this TSC.
    pub disk_closing: Option<u64>,
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

/// The guests and the ramdisk.
pub struct Toolstack {
    pub guests: ArrayVec<Guest, MAX_GUESTS>,
    pub ramdisk: Archive<'static>,
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

/// A one-letter-per-flag state column like `xl list`'s.
fn state_flags(state: DomainState) -> &'static str {
    match state {
        DomainState::Running => "r-----",
        DomainState::Blocked => "-b----",
        DomainState::Paused => "--p---",
        DomainState::Shutdown => "---s--",
        DomainState::Crashed => "----c-",
    }
}

/// The toolstack's state: far too large for dom0's stack (every guest's
/// console history), so it lives here.
pub static TOOLSTACK: spin::Mutex<Toolstack> = spin::Mutex::new(Toolstack {
    guests: ArrayVec::new_const(),
    ramdisk: Archive::new(&[]),
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

    /// `ls`.
    pub fn ls(&self, out: &mut Uart) {
        for entry in self.ramdisk.entries() {
            match entry {
                Ok(entry) if entry.kind == EntryKind::File => {
                    let _ = writeln!(out, "{:>9}  {}", entry.data.len(), entry.name);
                }
                Ok(_) => {}
                Err(error) => {
                    let _ = writeln!(out, "dom0: ramdisk: {error}");
                    return;
                }
            }
        }
    }

    fn read_file(&self, name: &str) -> Result<&'static [u8], ArrayString<160>> {
        let mut message = ArrayString::new();
        match self.ramdisk.find(name) {
            Ok(Some(entry)) => Ok(entry.data),
            Ok(None) => {
                let _ = write!(message, "no file '{name}' in the ramdisk (see 'ls')");
                Err(message)
            }
            Err(error) => {
                let _ = write!(message, "ramdisk: {error}");
                Err(message)
            }
        }
    }

    /// `create <config>`: returns the new guest's id.
    pub fn create(&mut self, config_name: &str, out: &mut Uart) -> Option<DomainId> {
        let mut with_suffix: ArrayString<300> = ArrayString::new();
        let _ = write!(with_suffix, "{config_name}.cfg");
        let text = match self.read_file(config_name).or_else(|_| self.read_file(&with_suffix)) {
            Ok(text) => text,
            Err(message) => {
                let _ = writeln!(out, "dom0: create: {message}");
                return None;
            }
        };
        let config = match dom0core::config::parse(text) {
            Ok(config) => config,
            Err(error) => {
                let _ = writeln!(out, "dom0: create: {config_name}: {error}");
                return None;
            }
        };
        self.create_from(config, out)
    }

    fn create_from(&mut self, config: GuestConfig, out: &mut Uart) -> Option<DomainId> {
        let created_at = rdtsc();
        if self.find(&config.name).is_some() {
            let _ = writeln!(out, "dom0: create: a guest named '{}' exists already", config.name);
            return None;
        }
        if self.guests.is_full() {
            let _ = writeln!(out, "dom0: create: dom0 manages at most {MAX_GUESTS} guests");
            return None;
        }
        let kernel = match self.read_file(&config.kernel) {
            Ok(kernel) => kernel,
            Err(message) => {
                let _ = writeln!(out, "dom0: create: kernel: {message}");
                return None;
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
            let spec = match dom0core::net_backend::parse_vif(entry) {
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
            kernel,
            memory_bytes: config.memory_mib as u64 * (1 << 20),
            cmdline: &config.cmdline,
            tsc_khz: self.tsc_khz,
            weight: config.weight,
            cap: config.cap,
            block_sectors: disk.map(|(_, region)| region.sectors),
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
            let _ = store_tree.set_permissions(abi::DOM0, &home(""), &Permissions::owned_by(id));
            if let Some((_, region)) = disk {
                publish_vbd(&mut store_tree, id, region);
            }
            if let Some(mac) = vif.as_mut() {
                if *mac == [0; 6] {
                    *mac = dom0core::net_backend::default_mac(id, 0);
                }
                publish_vif(&mut store_tree, id, *mac);
            }
        }
        if let Err(error) = hypercall::domctl(DomCtlOp::Unpause, id, 0, 0, 0) {
            let _ = writeln!(out, "dom0: create: {}: unpause failed: {}", config.name, error.describe());
            let _ = STORE.lock().remove_domain(id);
            let _ = STORE.lock().remove(abi::DOM0, &backend_directory("vbd", id));
            let _ = STORE.lock().remove(abi::DOM0, &backend_directory("vif", id));
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
            console,
            history: [0; HISTORY],
            history_length: 0,
            handled_end: false,
            created_at,
            quick_restarts: 0,
            create_to_first_output: None,
            pending_disk: disk,
            closed_disk: None,
            store,
            pending_vif: vif,
            closed_vif: None,
            vif_closing: None,
            disk_closing: None,
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
        let _ = STORE.lock().remove(abi::DOM0, &backend_directory("vbd", guest.id));
        let _ = STORE.lock().remove(abi::DOM0, &backend_directory("vif", guest.id));
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
        let mut slots: ArrayVec<usize, { dom0core::window::SHARE }> = ArrayVec::new();
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
    /// domain, or of `target` (columns in `dom0core::cpu_list`).
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
            let state = DomainState::from_number(info.state).map_or("------", state_flags);
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
                    if guest.create_to_first_output.is_none() {
                        guest.create_to_first_output = Some(rdtsc().wrapping_sub(guest.created_at));
                    }
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

    /// Follows front ends that close their disk or reconnect it
    /// (`abi::store`'s state diagram, `device_link`): a connected (or
    /// broken) disk whose front end left Connected is let go of (as a
    /// `block-detach` would, but the store directories stay) and answered
    /// Closed; a Closed disk whose front end writes Initialising is offered
    /// again (InitWait), and `advance_handshakes` connects it anew. One
    /// step per guest per call, each bounded (a ring and at most
    /// `PERSISTENT_GRANTS` pages to unmap), so a front end flapping
    /// Closing/Initialising costs dom0 no more than its own store writes.
    pub fn follow_disk_fronts(&mut self, out: &mut Uart) {
        for guest in self.guests.iter_mut() {
            if guest.disk_closing.is_some() {
                // `block-detach` is under way: `finish_disk_detaches` ends it.
                continue;
            }
            let id = guest.id;
            // Some(broken) when connected.
            let connected = DATA.lock().guest(id).and_then(|d| d.block.as_ref()).map(|block| block.broken.is_some());
            let link = match (connected, guest.pending_disk, guest.closed_disk) {
                (Some(true), _, _) => Link::Broken,
                (Some(false), _, _) => Link::Connected,
                (None, Some(_), _) => Link::Offered,
                (None, None, Some(_)) => Link::Closed,
                (None, None, None) => continue,
            };
            let mut store_tree = STORE.lock();
            match device_link::next_step(link, front_state(&store_tree, id, "vbd")) {
                Step::Stay | Step::Connect => {}
                Step::Close => {
                    let block = DATA.lock().guest_mut(id).and_then(|d| d.block.take());
                    if let Some(block) = block {
                        guest.closed_disk = Some((block.disk, block.region));
                        release_block(block);
                    }
                    write_backend_state(&mut store_tree, "vbd", id, DeviceState::Closed);
                    let _ = writeln!(out, "\ndom0: '{}': disk 0 closed by the front end", guest.config.name);
                }
                Step::Refuse => {
                    guest.closed_disk = guest.pending_disk.take();
                    write_backend_state(&mut store_tree, "vbd", id, DeviceState::Closed);
                }
                Step::Reoffer => {
                    guest.pending_disk = guest.closed_disk.take();
                    write_backend_state(&mut store_tree, "vbd", id, DeviceState::InitWait);
                }
            }
        }
    }

    /// Connects disks whose front end reached Initialised in the store: maps
    /// its granted ring page, binds its event port, and answers Connected.
    /// A front end that names a bad grant or port is told Closed.
    pub fn advance_handshakes(&mut self, out: &mut Uart) {
        for guest in self.guests.iter_mut() {
            let Some((disk, region)) = guest.pending_disk else { continue };
            let id = guest.id;
            let mut store_tree = STORE.lock();
            let Some([ring_ref, port]) =
                initialised_front(&store_tree, id, "vbd", [keys::RING_REF, keys::EVENT_CHANNEL])
            else {
                continue;
            };
            guest.pending_disk = None;
            let window_slot = WINDOW.lock().take(id, Use::Ring);
            let connected = match (ring_ref, port, window_slot) {
                (Some(ring_ref), Some(port), Some(slot)) => {
                    let address = FOREIGN_WINDOW_BASE + slot as u64 * abi::PAGE_SIZE;
                    let mapped = hypercall::grant_map(id, ring_ref, address, true);
                    let bound =
                        mapped.and_then(|()| hypercall::event(EventOp::BindInterdomain, id as u64, port as u64));
                    match bound {
                        Ok(dom0_port) => {
                            // SAFETY: hv just mapped the guest's granted ring page
                            // read-write at this identity-mapped address; dom0
                            // keeps it mapped until the guest is destroyed.
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
                                mapped: ArrayVec::new(),
                                mapped_by_grant: [0; abi::grant::ENTRIES],
                            };
                            if let Some(devices) = DATA.lock().guest_mut(id) {
                                devices.block = Some(block);
                            }
                            // Served from now on (on the data-path vCPU, if
                            // dom0 has one, which its port then notifies).
                            data_path::adopt(dom0_port as u32);
                            let _ = hypercall::notify(dom0_port as u32);
                            true
                        }
                        Err(_) => {
                            let _ = hypercall::grant_unmap(address);
                            WINDOW.lock().release(slot);
                            false
                        }
                    }
                }
                (_, _, slot) => {
                    if let Some(slot) = slot {
                        WINDOW.lock().release(slot);
                    }
                    false
                }
            };
            let answer = if connected { DeviceState::Connected } else { DeviceState::Closed };
            write_backend_state(&mut store_tree, "vbd", id, answer);
            if !connected {
                // The front end may try again (Initialising).
                guest.closed_disk = Some((disk, region));
                let _ =
                    writeln!(out, "\ndom0: '{}' offered a disk ring dom0 cannot use; disk closed", guest.config.name);
            }
        }
    }

    /// The physical disk and region a `disk` entry names, checked: the disk
    /// exists, the region fits it, and no other guest's disk (connected or
    /// waiting for its front end) overlaps it.
    fn disk_region(&self, entry: &str) -> Result<(usize, Region), ArrayString<200>> {
        let mut message = ArrayString::new();
        let spec = match dom0core::disk_spec::parse(entry) {
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
            .filter_map(|g| {
                let connected = data.guest(g.id).and_then(|d| d.block.as_ref()).map(|b| (b.disk, b.region));
                connected.or(g.pending_disk).or(g.closed_disk)
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
        if guest.pending_disk.is_some() || guest.closed_disk.is_some() || block_port(guest.id).is_some() {
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
        let id = guest.id;
        publish_vbd(&mut STORE.lock(), id, region);
        self.guests[index].pending_disk = Some((disk, region));
        let _ = writeln!(out, "dom0: '{name}': disk 0 offered ({entry}, {} sectors)", region.sectors);
    }

    /// `block-detach`: a connected disk is asked to close (state Closing)
    /// and goes once the front end says Closed, or after
    /// `DETACH_TIMEOUT_SECONDS`; an unconnected one goes at once.
    pub fn block_detach(&mut self, index: usize, out: &mut Uart) {
        let guest = &mut self.guests[index];
        let (id, name) = (guest.id, guest.config.name);
        if let Some(port) = block_port(id) {
            if guest.disk_closing.is_none() {
                write_backend_state(&mut STORE.lock(), "vbd", id, DeviceState::Closing);
                let _ = hypercall::notify(port);
                guest.disk_closing = Some(rdtsc());
            }
            let _ = writeln!(out, "dom0: '{name}': disk 0 closing (waiting for the front end)");
            return;
        }
        if guest.pending_disk.take().or(guest.closed_disk.take()).is_none() {
            let _ = writeln!(out, "dom0: block-detach: '{name}' has no disk");
            return;
        }
        unpublish_vbd(&mut STORE.lock(), id);
        let _ = writeln!(out, "dom0: '{name}': disk 0 detached");
    }

    /// Finishes `block-detach` of disks whose front end answered Closed, or
    /// that have been Closing for longer than the timeout: dom0 makes the
    /// writes durable, unmaps the ring and every persistent grant (so the
    /// guest can revoke them), closes the channel and removes both store
    /// directories.
    pub fn finish_disk_detaches(&mut self, out: &mut Uart) {
        let timeout = self.tsc_khz.max(1) * 1000 * DETACH_TIMEOUT_SECONDS;
        for guest in self.guests.iter_mut() {
            let Some(since) = guest.disk_closing else { continue };
            let id = guest.id;
            let Some(timed_out) = detach_ready(id, "vbd", since, timeout) else { continue };
            guest.disk_closing = None;
            let block = DATA.lock().guest_mut(id).and_then(|d| d.block.take());
            if let Some(block) = block {
                release_block(block);
            }
            {
                let mut store_tree = STORE.lock();
                write_backend_state(&mut store_tree, "vbd", id, DeviceState::Closed);
                unpublish_vbd(&mut store_tree, id);
            }
            let how = if timed_out { " (the front end did not answer; taken away)" } else { "" };
            let _ = writeln!(out, "\ndom0: '{}': disk 0 detached{how}", guest.config.name);
        }
    }

    /// `network-attach`: offers guest `index` a vif (settings as in a
    /// config's `vif` entry); its front end connects as at start-up.
    pub fn network_attach(&mut self, index: usize, settings: &str, out: &mut Uart) {
        let guest = &self.guests[index];
        let name = guest.config.name;
        let (connected, broken) = vif_link(guest.id);
        if guest.pending_vif.is_some() || connected.is_some() || broken || guest.closed_vif.is_some() {
            let _ = writeln!(out, "dom0: network-attach: '{name}' has a vif already (network-detach it first)");
            return;
        }
        let spec = match dom0core::net_backend::parse_vif(settings) {
            Ok(spec) => spec,
            Err(error) => {
                let _ = writeln!(out, "dom0: network-attach: \"{settings}\": {error}");
                return;
            }
        };
        let id = guest.id;
        let mac = spec.mac.unwrap_or(dom0core::net_backend::default_mac(id, 0));
        if self.mac_in_use(mac) {
            let mut text = [0u8; 17];
            let _ = writeln!(
                out,
                "dom0: network-attach: MAC {} is already on the switch",
                abi::net::format_mac(mac, &mut text)
            );
            return;
        }
        publish_vif(&mut STORE.lock(), id, mac);
        self.guests[index].pending_vif = Some(mac);
        let mut text = [0u8; 17];
        let _ = writeln!(out, "dom0: '{name}': vif 0 offered, mac {}", abi::net::format_mac(mac, &mut text));
    }

    /// Whether `mac` is the NIC's or any guest's vif's.
    fn mac_in_use(&self, mac: [u8; 6]) -> bool {
        // One lock at a time (the data paths take the NIC's inside `DATA`).
        let nic = crate::e1000::NIC.lock().as_ref().is_some_and(|nic| nic.mac() == mac);
        let connected = DATA.lock().guests.iter().any(|d| {
            d.broken_vif.is_some_and(|(_, _, broken)| broken == mac) || d.net.as_ref().is_some_and(|net| net.mac == mac)
        });
        nic || connected || self.guests.iter().any(|g| g.pending_vif == Some(mac) || g.closed_vif == Some(mac))
    }

    /// `network-detach`: a connected vif is asked to close (state Closing)
    /// and goes once the front end says Closed, or after
    /// `DETACH_TIMEOUT_SECONDS`; an unconnected or broken one goes at once.
    pub fn network_detach(&mut self, index: usize, out: &mut Uart) {
        let guest = &mut self.guests[index];
        let (id, name) = (guest.id, guest.config.name);
        let (connected, broken) = vif_link(id);
        if let Some(port) = connected {
            if guest.vif_closing.is_none() {
                write_backend_state(&mut STORE.lock(), "vif", id, DeviceState::Closing);
                let _ = hypercall::notify(port);
                guest.vif_closing = Some(rdtsc());
            }
            let _ = writeln!(out, "dom0: '{name}': vif 0 closing (waiting for the front end)");
            return;
        }
        if guest.pending_vif.take().or(guest.closed_vif.take()).is_none() && !broken {
            let _ = writeln!(out, "dom0: network-detach: '{name}' has no vif");
            return;
        }
        let broken_vif = DATA.lock().guest_mut(id).and_then(|d| d.broken_vif.take());
        if let Some((slots, _, _)) = broken_vif {
            for slot in slots {
                unmap_slot(slot);
            }
        }
        unpublish_vif(&mut STORE.lock(), id);
        let _ = writeln!(out, "dom0: '{name}': vif 0 detached");
    }

    /// Finishes `network-detach` of vifs whose front end answered Closed,
    /// or that have been Closing for longer than the timeout: dom0 lets go
    /// of the ring pages (so the guest can revoke its grants), closes the
    /// channel, leaves the switch and removes both store directories.
    pub fn finish_vif_detaches(&mut self, out: &mut Uart) {
        let timeout = self.tsc_khz.max(1) * 1000 * DETACH_TIMEOUT_SECONDS;
        for guest in self.guests.iter_mut() {
            let Some(since) = guest.vif_closing else { continue };
            let id = guest.id;
            let Some(timed_out) = detach_ready(id, "vif", since, timeout) else { continue };
            guest.vif_closing = None;
            let net = {
                let mut data = DATA.lock();
                data.switch.remove_port(id as PortId);
                data.guest_mut(id).and_then(|d| d.net.take())
            };
            if let Some(net) = net {
                release_net(net);
            }
            {
                let mut store_tree = STORE.lock();
                write_backend_state(&mut store_tree, "vif", id, DeviceState::Closed);
                unpublish_vif(&mut store_tree, id);
            }
            let how = if timed_out { " (the front end did not answer; taken away)" } else { "" };
            let _ = writeln!(out, "\ndom0: '{}': vif 0 detached{how}", guest.config.name);
        }
    }

    /// `follow_disk_fronts` for vifs: a connected (or broken) vif whose
    /// front end left Connected is let go of (rings unmapped, port closed,
    /// off the switch; directories kept) and answered Closed; a Closed vif
    /// whose front end writes Initialising is offered again (InitWait).
    pub fn follow_vif_fronts(&mut self, out: &mut Uart) {
        for guest in self.guests.iter_mut() {
            if guest.vif_closing.is_some() {
                // `network-detach` is under way: `finish_vif_detaches` ends it.
                continue;
            }
            let id = guest.id;
            let (connected, broken) = vif_link(id);
            let link = match (connected, broken, guest.pending_vif, guest.closed_vif) {
                (Some(_), _, _, _) => Link::Connected,
                (None, true, _, _) => Link::Broken,
                (None, false, Some(_), _) => Link::Offered,
                (None, false, None, Some(_)) => Link::Closed,
                (None, false, None, None) => continue,
            };
            let mut store_tree = STORE.lock();
            match device_link::next_step(link, front_state(&store_tree, id, "vif")) {
                Step::Stay | Step::Connect => {}
                Step::Close => {
                    let (net, broken_vif) = {
                        let mut data = DATA.lock();
                        let taken = data.guest_mut(id).map_or((None, None), |d| (d.net.take(), d.broken_vif.take()));
                        if taken.0.is_some() {
                            data.switch.remove_port(id as PortId);
                        }
                        taken
                    };
                    if let Some(net) = net {
                        guest.closed_vif = Some(net.mac);
                        release_net(net);
                    }
                    if let Some((slots, _, mac)) = broken_vif {
                        // Its port was closed and it left the switch when it broke.
                        guest.closed_vif = Some(mac);
                        for slot in slots {
                            unmap_slot(slot);
                        }
                    }
                    write_backend_state(&mut store_tree, "vif", id, DeviceState::Closed);
                    let _ = writeln!(out, "\ndom0: '{}': vif 0 closed by the front end", guest.config.name);
                }
                Step::Refuse => {
                    guest.closed_vif = guest.pending_vif.take();
                    write_backend_state(&mut store_tree, "vif", id, DeviceState::Closed);
                }
                Step::Reoffer => {
                    guest.pending_vif = guest.closed_vif.take();
                    write_backend_state(&mut store_tree, "vif", id, DeviceState::InitWait);
                }
            }
        }
    }

    /// Connects vifs whose front end reached Initialised: maps both granted
    /// ring pages, binds the event port and answers Connected (Closed when
    /// anything it named is unusable; then nothing stays mapped or bound).
    pub fn advance_vif_handshakes(&mut self, out: &mut Uart) {
        for guest in self.guests.iter_mut() {
            let Some(mac) = guest.pending_vif else { continue };
            let id = guest.id;
            let mut store_tree = STORE.lock();
            let published = [abi::net::keys::TX_RING_REF, abi::net::keys::RX_RING_REF, keys::EVENT_CHANNEL];
            let Some([tx_ref, rx_ref, port]) = initialised_front(&store_tree, id, "vif", published) else { continue };
            guest.pending_vif = None;
            // The vif may send from its MAC only, and frames to it come here.
            let locked = DATA.lock().switch.add_static(id as PortId, mac).is_ok();
            let tx_slot = WINDOW.lock().take(id, Use::Ring);
            let rx_slot = WINDOW.lock().take(id, Use::Ring);
            let connected = match (locked, tx_ref, rx_ref, port, tx_slot, rx_slot) {
                (true, Some(tx_ref), Some(rx_ref), Some(port), Some(tx_slot), Some(rx_slot)) => {
                    let address = |slot: usize| FOREIGN_WINDOW_BASE + slot as u64 * abi::PAGE_SIZE;
                    let tx_mapped = hypercall::grant_map(id, tx_ref, address(tx_slot), true);
                    let rx_mapped = tx_mapped.and_then(|()| hypercall::grant_map(id, rx_ref, address(rx_slot), true));
                    let bound =
                        rx_mapped.and_then(|()| hypercall::event(EventOp::BindInterdomain, id as u64, port as u64));
                    match bound {
                        Ok(dom0_port) => {
                            // SAFETY: hv just mapped the guest's granted ring pages
                            // read-write at these identity-mapped addresses; dom0
                            // keeps them mapped until the guest is destroyed.
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
                        Err(_) => {
                            if tx_mapped.is_ok() {
                                let _ = hypercall::grant_unmap(address(tx_slot));
                            }
                            if rx_mapped.is_ok() {
                                let _ = hypercall::grant_unmap(address(rx_slot));
                            }
                            WINDOW.lock().release(tx_slot);
                            WINDOW.lock().release(rx_slot);
                            false
                        }
                    }
                }
                _ => {
                    for slot in [tx_slot, rx_slot].into_iter().flatten() {
                        WINDOW.lock().release(slot);
                    }
                    false
                }
            };
            let answer = if connected { DeviceState::Connected } else { DeviceState::Closed };
            write_backend_state(&mut store_tree, "vif", id, answer);
            if !connected {
                // The front end may try again (Initialising).
                guest.closed_vif = Some(mac);
                if locked {
                    DATA.lock().switch.remove_port(id as PortId);
                }
                let _ = writeln!(out, "\ndom0: '{}' offered vif rings dom0 cannot use; vif closed", guest.config.name);
            }
        }
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
        let spec = match dom0core::disk_spec::parse(region) {
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
        let nic = crate::e1000::NIC
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
            if let Some((disk, region)) = guest.closed_disk {
                let _ = writeln!(
                    out,
                    "  {:<20} disk     {}:{}+{}  closed by the front end (Initialising reconnects)",
                    guest.config.name,
                    disk_name(disk),
                    region.start,
                    region.sectors
                );
            }
            if let Some((disk, region)) = guest.pending_disk {
                let _ = writeln!(
                    out,
                    "  {:<20} disk     {}:{}+{}  waiting for the front end (store: device/vbd/0)",
                    guest.config.name,
                    disk_name(disk),
                    region.start,
                    region.sectors
                );
            }
            let mut text = [0u8; 17];
            if let Some(mac) = guest.pending_vif {
                let _ = writeln!(
                    out,
                    "  {:<20} vif      {}  waiting for the front end (store: device/vif/0)",
                    guest.config.name,
                    abi::net::format_mac(mac, &mut text)
                );
            }
            if let Some(mac) = guest.closed_vif {
                let _ = writeln!(
                    out,
                    "  {:<20} vif      {}  closed by the front end (Initialising reconnects)",
                    guest.config.name,
                    abi::net::format_mac(mac, &mut text)
                );
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
                    if guest.vif_closing.is_some() { "closing" } else { "connected" },
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
    /// moved it on already (`follow_vif_fronts`, also on vCPU 0, so the two
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
                    write_backend_state(&mut store_tree, "vif", id, DeviceState::Closed);
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
            let (crashed, reboot) = match state {
                Some((Some(DomainState::Crashed), _)) => (true, false),
                Some((Some(DomainState::Shutdown), reason)) => {
                    (false, reason == abi::hypercall::ShutdownReason::Reboot as u32)
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
                dom0core::report::crash_reason(&info.crash, &mut reason);
            }
            let what = if !crashed {
                "shut down"
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
                    let config = guest.config.clone();
                    self.destroy(index, out);
                    if restarts > RESTARTS_MAX {
                        let _ = writeln!(
                            out,
                            "dom0: '{name}' died {restarts} times within {QUICK_DEATH_SECONDS} s of starting; not restarting it"
                        );
                    } else if let Some(id) = self.create_from(config, out)
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
