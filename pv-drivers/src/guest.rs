//! A minimal runtime for guest kernels: reads the start-info page, registers
//! the event page and the upcall handler, binds the console, offers
//! console I/O and sleeping on the vCPU timer, and starts further vCPUs.

use core::arch::{asm, global_asm};
use core::fmt;
use core::fmt::Write as _;

use abi::event::EventOp;
use abi::start_info::{START_INFO_MAGIC, StartInfo};
use abi::xen::errno::Errno;
use abi::xen::io::block::{
    BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_SECTOR_SIZE, BlkifOp, BlkifRequest, BlkifRequestSegment, BlkifRsp,
    SECTORS_PER_PAGE,
};
use abi::xen::io::store::{XENSTORE_PAYLOAD_MAX, XSD_SOCKMSG_SIZE, XsdSockmsg, XsdSockmsgType, xsd_error_from_payload};

use crate::console::ConsoleRing;
use crate::hypercall;

/// The vector hv injects for event upcalls.
pub const UPCALL_VECTOR: u8 = 0xf3;

#[repr(C, align(4096))]
struct Page([u8; 4096]);

/// The shared-info page (Xen's layout: event words, `vcpu_info`, time),
/// shared with hv (accessed only through raw pointers).
static mut EVENT_PAGE: Page = Page([0; 4096]);

#[repr(C, align(16))]
struct Idt([[u64; 2]; 256]);
static mut IDT: Idt = Idt([[0; 2]; 256]);

/// The grant table page.
static mut GRANT_PAGE: Page = Page([0; 4096]);

/// The first vif's pages: the transmit and receive rings, then the
/// transmit and receive buffers (granted to dom0 once at start-up).
const NET_PAGES_COUNT: usize = 2 + crate::net::TX_BUFFERS + crate::net::RX_BUFFERS;
#[repr(C, align(4096))]
struct NetPages([[u8; 4096]; NET_PAGES_COUNT]);
static mut NET_PAGES: NetPages = NetPages([[0; 4096]; NET_PAGES_COUNT]);

/// The disk ring's page when the builder reserved none (a disk attached
/// after start-up).
static mut DISK_RING: Page = Page([0; 4096]);

/// Pages for disk transfers, granted to dom0 once at start-up: as many as
/// dom0 keeps mapped for a guest (persistent grants, `abi::block`), so
/// every transfer is copy-free.
const DISK_PAGES: usize = 64;
#[repr(C, align(4096))]
struct DiskBuffer([[u8; 4096]; DISK_PAGES]);
static mut DISK_BUFFER: DiskBuffer = DiskBuffer([[0; 4096]; DISK_PAGES]);

/// Why a disk transfer failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskError {
    /// The guest has no disk.
    NoDisk,
    /// Not a whole number of sectors, more than the buffer, or past the end.
    BadRequest,
    /// dom0 answered with an error status (`abi::xen::io::block::BlkifRsp`).
    Status(i16),
    /// dom0 broke the ring protocol; the disk is no longer used.
    Broken,
}

/// The block front end: one ring, the event port, persistent grants of
/// the transfer pages.
struct Disk {
    ring: crate::ring::BlockFront,
    /// The ring's page (the builder's or `DISK_RING`).
    ring_page: u64,
    port: u32,
    sectors: u64,
    grants: [u32; DISK_PAGES],
    next_id: u64,
    broken: bool,
}

/// Why [`Guest::disk_close`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseError {
    /// No disk is connected.
    NotConnected,
    /// The back end did not answer Closed within a second.
    NoAnswer,
    /// The back end said Closed but still maps a page (its grant could
    /// not be revoked).
    StillMapped,
}

/// Bytes of the largest store message (xs_wire): the header and a payload
/// of at most `XENSTORE_PAYLOAD_MAX` bytes.
const STORE_MESSAGE_MAX: usize = XSD_SOCKMSG_SIZE + XENSTORE_PAYLOAD_MAX as usize;

/// The store client: the ring page, the event port, the next request id.
struct StoreClient {
    ring: crate::console::StoreRingAccess,
    port: u32,
    next_id: u32,
    /// The message being received (header, then exactly its payload).
    incoming: [u8; STORE_MESSAGE_MAX],
    incoming_length: usize,
    /// Watch events received and not yet taken by `take_watch_events`.
    watch_events: u32,
}

impl StoreClient {
    /// Reads more of the incoming message; returns its total length once
    /// it is complete (it is then in `incoming[..total]`; the caller resets
    /// `incoming_length`).
    fn receive(&mut self) -> Result<Option<usize>, StoreFailure> {
        loop {
            let wanted = if self.incoming_length < XSD_SOCKMSG_SIZE {
                XSD_SOCKMSG_SIZE
            } else {
                let total = XSD_SOCKMSG_SIZE + self.header().len as usize;
                if total > STORE_MESSAGE_MAX {
                    return Err(StoreFailure::Broken);
                }
                total
            };
            // Complete: the header is in, and as much payload as it announces.
            if self.incoming_length >= XSD_SOCKMSG_SIZE && self.incoming_length == wanted {
                return Ok(Some(wanted));
            }
            let count = self
                .ring
                .client_receive(&mut self.incoming[self.incoming_length..wanted])
                .map_err(|_| StoreFailure::Broken)?;
            if count == 0 {
                return Ok(None);
            }
            let _ = crate::xen::evtchn::notify(self.port);
            self.incoming_length += count;
        }
    }

    /// The header of the incoming message (once 16 bytes are in).
    fn header(&self) -> XsdSockmsg {
        XsdSockmsg::from_bytes(self.incoming.first_chunk().unwrap_or(&[0; XSD_SOCKMSG_SIZE]))
    }
}

/// An open store transaction ([`Guest::store_transaction_start`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreTransaction(pub u32);

/// How [`Guest::store_transaction_end`] ended a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransactionEnd {
    /// Committed (or, when abandoning, abandoned).
    Done,
    /// Not committed: something it read changed meanwhile (`EAGAIN`).
    /// Nothing of it was applied; run it again from the start.
    Retry,
}

/// Why a store request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreFailure {
    /// The guest has no store connection.
    NoStore,
    /// dom0 answered with this error (a name from Xen's table).
    Refused(Errno),
    /// The request does not fit a message, or the reply was malformed or
    /// too long for the caller's buffer.
    BadMessage,
    /// dom0 broke the ring protocol.
    Broken,
}

/// Upcalls taken so far (written only by the upcall handler).
static UPCALLS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

global_asm!(
    r#"
    .section .text
    .balign 16
    .global mica_upcall_stub
mica_upcall_stub:
    push rax
    push rcx
    push rdx
    push rsi
    push rdi
    push r8
    push r9
    push r10
    push r11
    call {handler}
    pop r11
    pop r10
    pop r9
    pop r8
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rax
    iretq
"#,
    handler = sym upcall_handler,
);

unsafe extern "C" {
    fn mica_upcall_stub();
}

/// Upcalls each vCPU took (vCPU 0's also count in `UPCALLS`).
static VCPU_UPCALLS: [core::sync::atomic::AtomicU64; abi::hypercall::MAX_VCPUS as usize] =
    [const { core::sync::atomic::AtomicU64::new(0) }; abi::hypercall::MAX_VCPUS as usize];

/// Set once another vCPU takes upcalls ([`accept_upcalls`]): the handler
/// then asks hv which vCPU it runs on (one hypercall per upcall).
static SEVERAL_VCPUS: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

extern "C" fn upcall_handler() {
    let vcpu = if SEVERAL_VCPUS.load(core::sync::atomic::Ordering::Relaxed) {
        hypercall::vcpu_id().unwrap_or(0).min(abi::hypercall::MAX_VCPUS - 1) as usize
    } else {
        0
    };
    // Acknowledge: hv raises this vCPU's upcall again only after its flag
    // and selector (in its `vcpu_info`) are cleared.
    // SAFETY: EVENT_PAGE is this domain's shared-info page.
    unsafe { crate::event_page::clear_upcall(&raw mut EVENT_PAGE as u64, vcpu as u32) };
    VCPU_UPCALLS[vcpu].fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    if vcpu == 0 {
        UPCALLS.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    }
}

/// Upcalls vCPU `vcpu` has taken so far (0 for a vCPU beyond the limit).
pub fn vcpu_upcalls(vcpu: u32) -> u64 {
    VCPU_UPCALLS.get(vcpu as usize).map_or(0, |count| count.load(core::sync::atomic::Ordering::Relaxed))
}

/// Lets the calling vCPU (one started with [`Guest::start_vcpu`], after
/// [`Guest::init`] ran on vCPU 0) take upcalls: loads the runtime's IDT
/// and enables interrupts. Events reach it on the ports bound to it
/// (`EventOp::BindVcpu`, `BindIpi`).
///
/// # Safety
/// Call once per vCPU, from the vCPU itself, with a stack that can take an
/// interrupt frame.
pub unsafe fn accept_upcalls() {
    SEVERAL_VCPUS.store(true, core::sync::atomic::Ordering::Relaxed);
    let base = &raw const IDT as u64;
    let pointer: [u16; 5] = [4095, base as u16, (base >> 16) as u16, (base >> 32) as u16, (base >> 48) as u16];
    // SAFETY: the IDT was filled by `Guest::init` and is never written
    // again; its one gate is the upcall stub, which saves what it uses.
    unsafe { asm!("lidt [{}]", "sti", in(reg) &pointer, options(nostack)) };
}

/// The address of the domain's shared-info page, its event words (for
/// vCPUs other than 0, which must not use the `Guest`:
/// `event_page::take_pending` on it).
pub fn event_page() -> u64 {
    &raw const EVENT_PAGE as u64
}

/// Tests and clears port `port`'s pending bit.
fn take_pending(port: u32) -> bool {
    // SAFETY: EVENT_PAGE is this domain's registered event page.
    unsafe { crate::event_page::take_pending(&raw mut EVENT_PAGE as u64, port) }
}

/// A running guest.
pub struct Guest {
    pub start_info: StartInfo,
    console: Option<ConsoleRing>,
    console_port: u32,
    timer_port: u32,
    /// The console port fired since the last `wait_for_input`.
    console_event: bool,
    disk: Option<Disk>,
    store: Option<StoreClient>,
    /// The store port fired since the client last looked.
    store_event: bool,
    /// The grant table (set up when the guest has a store, so devices).
    grants: Option<crate::grant::GrantTable>,
    /// The first vif's front end and its event port.
    net: Option<(crate::net::NetFront, u32)>,
    /// The event port of a device being connected (see `wait_for_backend`).
    handshake_port: Option<u32>,
    /// Grants of the vif's pages (kept until dom0 has let go of them).
    net_grants: DeviceGrants,
    /// Grants of the disk's ring and transfer pages (likewise).
    disk_grants: DeviceGrants,
}

/// What [`Guest::net_hotplug`] or [`Guest::disk_hotplug`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChange {
    /// A device dom0 offered is connected.
    Connected,
    /// dom0 took the device away; the front end let go of it.
    Disconnected,
}

/// The grants of one device's pages (the disk's ring and transfer pages,
/// or the vif's rings and buffers), kept until dom0 has let go of them.
type DeviceGrants = arrayvec::ArrayVec<u32, { DISK_PAGES + 1 }>;
const _: () = assert!(NET_PAGES_COUNT <= DISK_PAGES + 1, "a vif's grants fit the list");

/// The devices a guest's front ends connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DeviceKind {
    Disk,
    Vif,
}

/// The store directory of the guest's first device of class `kind`
/// (`vbd`, `vif`), relative to its home, as Xen's toolstack names it:
/// `device/vbd/51712` (Xen's virtual-device number of `xvda`),
/// `device/vif/0` (handle 0).
pub fn device_directory(kind: &str) -> arrayvec::ArrayString<32> {
    let number = match kind {
        "vbd" => abi::xen::io::block::xvd_virtual_device(0, 0).unwrap_or(0),
        _ => 0,
    };
    let mut path = arrayvec::ArrayString::new();
    let _ = write!(path, "device/{kind}/{number}");
    path
}

/// The path of `key` in [`device_directory`]`(kind)`.
pub fn device_key(kind: &str, key: &str) -> arrayvec::ArrayString<64> {
    let mut path = arrayvec::ArrayString::new();
    let _ = write!(path, "{}/{key}", device_directory(kind));
    path
}

impl DeviceKind {
    /// The device's class in the store ([`device_directory`]).
    fn store_name(self) -> &'static str {
        match self {
            DeviceKind::Disk => "vbd",
            DeviceKind::Vif => "vif",
        }
    }
}

impl Guest {
    /// Sets the guest up from the start-info page at `start_info_address`.
    /// Stops the domain if the page is not a Mica start-info page.
    pub fn init(start_info_address: u64) -> Guest {
        // SAFETY: the builder wrote a StartInfo there before entry; it is
        // copied out once.
        let start_info: StartInfo = unsafe { core::ptr::read_volatile(start_info_address as *const StartInfo) };
        if start_info.magic != START_INFO_MAGIC {
            let _ = hypercall::console_write(b"guest: bad start-info magic\n");
            hypercall::shutdown(abi::hypercall::ShutdownReason::Crash);
        }
        // IDT: only the upcall vector (an exception in a guest without
        // handlers triple-faults, and hv reports the crash).
        let handler = mica_upcall_stub as *const () as u64;
        let gate_low = (handler & 0xffff) | (0x08 << 16) | (0x8e << 40) | ((handler >> 16) & 0xffff) << 48;
        // SAFETY: boot is single-threaded; IDT is written once, then loaded.
        unsafe {
            let idt = &raw mut IDT;
            (*idt).0[UPCALL_VECTOR as usize] = [gate_low, handler >> 32];
            let pointer: [u16; 5] = {
                let base = idt as u64;
                [4095, base as u16, (base >> 16) as u16, (base >> 32) as u16, (base >> 48) as u16]
            };
            asm!("lidt [{}]", in(reg) &pointer, options(nostack));
        }
        // Events in Xen's 2-level layout, in the shared-info page (ABI 1.0),
        // raised as upcalls on UPCALL_VECTOR.
        // SAFETY: the static page is dedicated to hv's use for the domain's life.
        let _ = unsafe { crate::xen::place_shared_info_at(&raw mut EVENT_PAGE as u64) };
        let _ = crate::xen::set_callback_vector(UPCALL_VECTOR);
        let timer_port = crate::xen::evtchn::bind_virq(abi::xen::event_channel::Virq::Timer, 0).unwrap_or(0);
        let mut guest = Guest {
            start_info,
            console: None,
            console_port: 0,
            timer_port,
            console_event: false,
            disk: None,
            store: None,
            store_event: false,
            grants: None,
            net: None,
            handshake_port: None,
            net_grants: arrayvec::ArrayVec::new_const(),
            disk_grants: arrayvec::ArrayVec::new_const(),
        };
        // The store's and the console's ports are ours, connected to
        // dom0's before we first ran (ABI 1.0).
        if start_info.store_page != 0 {
            // SAFETY: the builder reserved this page of our RAM for the store
            // ring; dom0 maps it; it stays ours for the guest's life.
            let ring = unsafe { crate::console::StoreRingAccess::new(start_info.store_page as *mut u8) };
            guest.store = Some(StoreClient {
                ring,
                port: start_info.store_port,
                next_id: 1,
                incoming: [0; STORE_MESSAGE_MAX],
                incoming_length: 0,
                watch_events: 0,
            });
        }
        if start_info.console_page != 0 {
            // SAFETY: the builder reserved this page of our RAM for the console.
            guest.console = Some(unsafe { ConsoleRing::new(start_info.console_page as *mut u8) });
            guest.console_port = start_info.console_port;
        }
        if guest.store.is_some() {
            // SAFETY: the static page is dedicated to the grant table for good.
            guest.grants = unsafe { crate::grant::GrantTable::new(&raw mut GRANT_PAGE as u64) }.ok();
        }
        if guest.store.is_some() {
            if guest.device_offered("vbd") {
                guest.disk = guest.connect_disk();
            }
            // Hear of disks dom0 offers later (block-attach).
            let _ = guest.store_watch("device/vbd", "vbds");
        }
        if guest.store.is_some() {
            guest.net = guest.connect_net();
            // Hear of vifs dom0 offers later (network-attach).
            let _ = guest.store_watch("device/vif", "vifs");
        }
        // SAFETY: the upcall handler is installed; from here events interrupt us.
        unsafe { asm!("sti", options(nomem, nostack)) };
        guest
    }

    /// Connects the block front end through the store (`abi::store`):
    /// reads the back end's directory and the disk size, grants dom0 the ring
    /// page and the transfer pages, allocates an event port for dom0,
    /// publishes `ring-ref`, `event-channel`, `protocol`,
    /// `feature-persistent` and `state` = Initialised, and
    /// waits (bounded) for the back end to answer Connected. On failure
    /// nothing stays granted or allocated.
    fn connect_disk(&mut self) -> Option<Disk> {
        self.connect_device(DeviceKind::Disk, Guest::try_connect_disk)
    }

    /// Runs a device connection `attempt` with the pages of an earlier
    /// connection revoked first (refused while dom0 still maps one); if the
    /// attempt fails, closes the port it allocated and revokes what it
    /// granted, so nothing stays granted or allocated.
    fn connect_device<T>(
        &mut self,
        device: DeviceKind,
        attempt: fn(&mut Guest, &mut Option<u32>) -> Option<T>,
    ) -> Option<T> {
        if !self.release_grants(device) {
            return None;
        }
        let mut port = None;
        let connected = attempt(self, &mut port);
        if connected.is_none() {
            if let Some(port) = port {
                let _ = crate::xen::evtchn::close(port);
            }
            self.release_grants(device);
        }
        connected
    }

    /// Revokes the grants of `device`'s pages; true when none is left (a
    /// page dom0 still maps stays granted, and listed, until it lets go).
    fn release_grants(&mut self, device: DeviceKind) -> bool {
        let references = match device {
            DeviceKind::Disk => &mut self.disk_grants,
            DeviceKind::Vif => &mut self.net_grants,
        };
        if let Some(table) = self.grants.as_mut() {
            references.retain(|reference| table.end_access(*reference).is_err());
        }
        references.is_empty()
    }

    fn try_connect_disk(&mut self, allocated_port: &mut Option<u32>) -> Option<Disk> {
        use abi::store::parse_decimal;
        use abi::xen::io::block::{
            KEY_EVENT_CHANNEL, KEY_FEATURE_PERSISTENT, KEY_PROTOCOL, KEY_RING_REF, KEY_SECTORS, XEN_IO_PROTO_ABI_X86_64,
        };
        use abi::xen::io::xenbus::{KEY_BACKEND, KEY_STATE, XenbusState};
        let mut backend = [0u8; 96];
        let length = self.store_read(&device_key("vbd", KEY_BACKEND), &mut backend).ok()?;
        let backend = core::str::from_utf8(&backend[..length]).ok()?;
        let mut backend_path = arrayvec::ArrayString::<96>::new();
        backend_path.try_push_str(backend).ok()?;
        let key = |name: &str| {
            let mut path = arrayvec::ArrayString::<128>::new();
            let _ = write!(path, "{backend_path}/{name}");
            path
        };
        let mut value = [0u8; 32];
        let length = self.store_read(&key(KEY_STATE), &mut value).ok()?;
        if XenbusState::from_key(Some(&value[..length])) != XenbusState::InitWait {
            return None;
        }
        let length = self.store_read(&key(KEY_SECTORS), &mut value).ok()?;
        let sectors = parse_decimal(&value[..length])? as u64;

        // The builder's ring page if it reserved one (a disk in the config),
        // else the runtime's own (a disk attached later).
        let ring_page =
            if self.start_info.block_ring != 0 { self.start_info.block_ring } else { &raw mut DISK_RING as u64 };
        let mut grant = |address: u64| {
            let reference = self.grants.as_mut()?.grant(abi::DOM0, address, false).ok()?;
            self.disk_grants.try_push(reference).ok()?;
            Some(reference)
        };
        // The ring is initialised before dom0 can see it.
        // SAFETY: the page is ours for the guest's life and used by nothing
        // else (an earlier connection's grants were all revoked above); dom0
        // maps it through the grant.
        let ring = unsafe { crate::ring::BlockFront::new(ring_page as *mut u8) };
        let ring_ref = grant(ring_page)?;
        let mut grants = [0u32; DISK_PAGES];
        for (index, reference) in grants.iter_mut().enumerate() {
            *reference = grant((&raw mut DISK_BUFFER as u64) + index as u64 * 4096)?;
        }
        let port = crate::xen::evtchn::alloc_unbound(abi::DOM0 as u16).ok()?;
        *allocated_port = Some(port);
        let mut number = arrayvec::ArrayString::<16>::new();
        let _ = write!(number, "{ring_ref}");
        self.store_write(&device_key("vbd", KEY_RING_REF), &number).ok()?;
        number.clear();
        let _ = write!(number, "{port}");
        self.store_write(&device_key("vbd", KEY_EVENT_CHANNEL), &number).ok()?;
        self.store_write(&device_key("vbd", KEY_PROTOCOL), XEN_IO_PROTO_ABI_X86_64).ok()?;
        // The same transfer pages (and grants) serve every request.
        self.store_write(&device_key("vbd", KEY_FEATURE_PERSISTENT), "1").ok()?;
        let state = device_key("vbd", KEY_STATE);
        self.store_write(&state, XenbusState::Initialised.format()).ok()?;
        if !self.wait_for_backend(&key(KEY_STATE), port) {
            return None;
        }
        let _ = self.store_write(&state, XenbusState::Connected.format());
        // Hear of the back end's state changes (block-detach).
        let _ = self.store_watch(&backend_path, "vbd-backend");
        Some(Disk { ring, ring_page, port, sectors, grants, next_id: 1, broken: false })
    }

    /// Whether dom0 closed (or removed) the back end of [`device_directory`]`(kind)`.
    fn backend_closing(&mut self, kind: &str) -> bool {
        use abi::xen::io::xenbus::{KEY_BACKEND, KEY_STATE, XenbusState};
        let mut text = [0u8; 96];
        let Ok(length) = self.store_read(&device_key(kind, KEY_BACKEND), &mut text) else { return true };
        let mut state = arrayvec::ArrayString::<128>::new();
        let _ = write!(state, "{}/{KEY_STATE}", core::str::from_utf8(&text[..length]).unwrap_or(""));
        let length = self.store_read(&state, &mut text).unwrap_or(0);
        matches!(XenbusState::from_key(Some(&text[..length])), XenbusState::Closing | XenbusState::Closed)
    }

    /// Whether dom0 offers [`device_directory`]`(kind)` (its front-end
    /// directory names a back end).
    fn device_offered(&mut self, kind: &str) -> bool {
        let mut text = [0u8; 96];
        self.store_read(&device_key(kind, abi::xen::io::xenbus::KEY_BACKEND), &mut text).is_ok()
    }

    /// Follows dom0's changes to the disk (call after store watch events):
    /// connects a disk dom0 offered (`block-attach`), and lets go of one
    /// dom0 is closing (`block-detach`): the front end stops, says Closed,
    /// and revokes its grants once dom0 has unmapped the pages.
    pub fn disk_hotplug(&mut self) -> Option<DeviceChange> {
        self.hotplug(DeviceKind::Disk)
    }

    /// `disk_hotplug` and `net_hotplug`: connects `device` if dom0 offers
    /// it and it is not connected, lets go of it if dom0 is closing it.
    fn hotplug(&mut self, device: DeviceKind) -> Option<DeviceChange> {
        let (kind, connected) = match device {
            DeviceKind::Disk => ("vbd", self.disk.is_some()),
            DeviceKind::Vif => ("vif", self.net.is_some()),
        };
        if !connected {
            // Pages of a closed connection come back as dom0 unmaps them.
            self.release_grants(device);
            if !self.device_offered(kind) {
                return None;
            }
            let connected = match device {
                DeviceKind::Disk => {
                    self.disk = self.connect_disk();
                    self.disk.is_some()
                }
                DeviceKind::Vif => {
                    self.net = self.connect_net();
                    self.net.is_some()
                }
            };
            return connected.then_some(DeviceChange::Connected);
        }
        if !self.backend_closing(kind) {
            return None;
        }
        let port = match device {
            DeviceKind::Disk => self.disk.take().map(|disk| disk.port),
            DeviceKind::Vif => self.net.take().map(|(_, port)| port),
        };
        if let Some(port) = port {
            let _ = crate::xen::evtchn::close(port);
        }
        let state = device_key(kind, abi::xen::io::xenbus::KEY_STATE);
        let _ = self.store_write(&state, abi::xen::io::xenbus::XenbusState::Closed.format());
        self.release_grants(device);
        Some(DeviceChange::Disconnected)
    }

    /// The front end closes its own disk (`abi::store`): writes Closing,
    /// waits (a second at most) for the back end's Closed, closes its port,
    /// revokes its grants and writes Closed. Ok once every grant was
    /// revoked (dom0 unmapped the ring and every transfer page). A page
    /// dom0 still maps stays granted and listed; a later connection
    /// retries revoking it.
    pub fn disk_close(&mut self) -> Result<(), CloseError> {
        let port = self.disk.take().ok_or(CloseError::NotConnected)?.port;
        self.close_device(DeviceKind::Disk, port)
    }

    /// [`Guest::disk_close`] for the vif (both rings and every buffer page).
    pub fn net_close(&mut self) -> Result<(), CloseError> {
        let (_, port) = self.net.take().ok_or(CloseError::NotConnected)?;
        self.close_device(DeviceKind::Vif, port)
    }

    fn close_device(&mut self, device: DeviceKind, port: u32) -> Result<(), CloseError> {
        use abi::xen::io::xenbus::{KEY_STATE, XenbusState};
        let kind = device.store_name();
        let state = device_key(kind, KEY_STATE);
        let _ = self.store_write(&state, XenbusState::Closing.format());
        let closed = self.wait_backend_state(kind, XenbusState::Closed);
        let _ = crate::xen::evtchn::close(port);
        let released = self.release_grants(device);
        let _ = self.store_write(&state, XenbusState::Closed.format());
        match (closed, released) {
            (false, _) => Err(CloseError::NoAnswer),
            (true, false) => Err(CloseError::StillMapped),
            (true, true) => Ok(()),
        }
    }

    /// Reconnects a disk closed with [`Guest::disk_close`]: writes
    /// Initialising, waits (a second at most) for the back end's InitWait,
    /// then connects with a fresh ring and fresh grants. Whether it is
    /// connected.
    pub fn disk_reconnect(&mut self) -> bool {
        if self.disk.is_none() && self.reoffer(DeviceKind::Disk) {
            self.disk = self.connect_disk();
        }
        self.disk.is_some()
    }

    /// [`Guest::disk_reconnect`] for the vif.
    pub fn net_reconnect(&mut self) -> bool {
        if self.net.is_none() && self.reoffer(DeviceKind::Vif) {
            self.net = self.connect_net();
        }
        self.net.is_some()
    }

    /// Writes `device`'s state Initialising and waits for the back end's InitWait.
    fn reoffer(&mut self, device: DeviceKind) -> bool {
        use abi::xen::io::xenbus::{KEY_STATE, XenbusState};
        let kind = device.store_name();
        let _ = self.store_write(&device_key(kind, KEY_STATE), XenbusState::Initialising.format());
        self.wait_backend_state(kind, XenbusState::InitWait)
    }

    /// Waits (a second of guest time at most, 1 ms per look) until the back
    /// end of [`device_directory`]`(kind)` (`vbd`, `vif`) says `wanted`.
    pub fn wait_backend_state(&mut self, kind: &str, wanted: abi::xen::io::xenbus::XenbusState) -> bool {
        use abi::xen::io::xenbus::{KEY_BACKEND, KEY_STATE, XenbusState};
        let mut text = [0u8; 96];
        let Ok(length) = self.store_read(&device_key(kind, KEY_BACKEND), &mut text) else { return false };
        let mut state = arrayvec::ArrayString::<128>::new();
        let _ = write!(state, "{}/{KEY_STATE}", core::str::from_utf8(&text[..length]).unwrap_or(""));
        let give_up = now() + self.ticks_per_second();
        loop {
            let length = self.store_read(&state, &mut text).unwrap_or(0);
            if XenbusState::from_key(Some(&text[..length])) == wanted {
                return true;
            }
            if now() > give_up {
                return false;
            }
            self.set_timer(now() + self.ticks_per_second() / 1000);
            self.wait_for_event();
        }
    }

    /// Waits until the back end's `state` node (absolute path `state_key`)
    /// says Connected: true, or Closing/Closed or a second of guest time
    /// passed: false. The back end notifies `port` when it connects; a 1 ms
    /// timer bounds each wait.
    fn wait_for_backend(&mut self, state_key: &str, port: u32) -> bool {
        // The back end notifies `port` when it binds it; every wait in here
        // (the store requests' too) must take that bit, or hv would not let
        // the vCPU block while it is pending and the guest would spin.
        self.handshake_port = Some(port);
        let connected = self.poll_backend_state(state_key);
        self.handshake_port = None;
        take_pending(port);
        connected
    }

    fn poll_backend_state(&mut self, state_key: &str) -> bool {
        use abi::xen::io::xenbus::XenbusState;
        let mut value = [0u8; 32];
        let give_up = now() + self.ticks_per_second();
        loop {
            let length = self.store_read(state_key, &mut value).unwrap_or(0);
            match XenbusState::from_key(Some(&value[..length])) {
                XenbusState::Connected => return true,
                XenbusState::Closing | XenbusState::Closed => return false,
                _ if now() > give_up => return false,
                _ => {
                    self.set_timer(now() + self.ticks_per_second() / 1000);
                    self.wait_for_event();
                }
            }
        }
    }

    /// Connects the first vif's front end through the store (`abi::net`):
    /// grants dom0 both ring pages and the buffer pages, allocates the event
    /// port, publishes `tx-ring-ref`, `rx-ring-ref`, `event-channel`,
    /// `request-rx-copy`, `feature-rx-notify` and `state` = Connected (as
    /// Linux's netfront), waits for the back end's Connected, then posts the
    /// receive buffers. None when the guest has no vif or the back end refused.
    fn connect_net(&mut self) -> Option<(crate::net::NetFront, u32)> {
        self.connect_device(DeviceKind::Vif, Guest::try_connect_net)
    }

    fn try_connect_net(&mut self, allocated_port: &mut Option<u32>) -> Option<(crate::net::NetFront, u32)> {
        use crate::net::{Buffer, NetFront, RX_BUFFERS, TX_BUFFERS};
        use abi::xen::io::net::{
            KEY_EVENT_CHANNEL, KEY_FEATURE_RX_NOTIFY, KEY_REQUEST_RX_COPY, KEY_RX_RING_REF, KEY_TX_RING_REF,
        };
        use abi::xen::io::xenbus::{KEY_BACKEND, KEY_STATE, XenbusState};
        let mut text = [0u8; 96];
        let length = self.store_read(&device_key("vif", KEY_BACKEND), &mut text).ok()?;
        let mut backend_state = arrayvec::ArrayString::<128>::new();
        let backend = core::str::from_utf8(&text[..length]).ok()?;
        write!(backend_state, "{backend}/{KEY_STATE}").ok()?;
        let mut backend_path = arrayvec::ArrayString::<96>::new();
        backend_path.try_push_str(backend).ok()?;
        let mut state = [0u8; 8];
        let length = self.store_read(&backend_state, &mut state).ok()?;
        if XenbusState::from_key(Some(&state[..length])) != XenbusState::InitWait {
            return None;
        }
        let rings = &raw mut NET_PAGES as u64;
        let page = |index: usize| rings + index as u64 * 4096;
        let mut grant = |address: u64, readonly: bool| {
            let reference = self.grants.as_mut()?.grant(abi::DOM0, address, readonly).ok()?;
            self.net_grants.try_push(reference).ok()?;
            Some(reference)
        };
        let tx_ring = grant(page(0), false)?;
        let rx_ring = grant(page(1), false)?;
        let mut tx_buffers = [Buffer::default(); TX_BUFFERS];
        for (index, buffer) in tx_buffers.iter_mut().enumerate() {
            let address = page(2 + index);
            *buffer = Buffer { address, grant: grant(address, true)? };
        }
        let mut rx_buffers = [Buffer::default(); RX_BUFFERS];
        for (index, buffer) in rx_buffers.iter_mut().enumerate() {
            let address = page(2 + TX_BUFFERS + index);
            *buffer = Buffer { address, grant: grant(address, false)? };
        }
        // SAFETY: NET_PAGES is dedicated to this one vif: two ring pages, then
        // the buffers, each granted to dom0 as passed; nothing else uses them
        // (an earlier connection's grants were all revoked above).
        let mut front = unsafe { NetFront::new(page(0) as *mut u8, page(1) as *mut u8, tx_buffers, rx_buffers) };
        let port = hypercall::event(EventOp::AllocUnbound, abi::DOM0 as u64, 0).ok()? as u32;
        *allocated_port = Some(port);
        let mut number = arrayvec::ArrayString::<16>::new();
        // Receive by copy (the only mode), and a notification whenever it
        // posts receive buffers (`net_receive`).
        for (key, value) in [
            (KEY_TX_RING_REF, tx_ring),
            (KEY_RX_RING_REF, rx_ring),
            (KEY_EVENT_CHANNEL, port),
            (KEY_REQUEST_RX_COPY, 1),
            (KEY_FEATURE_RX_NOTIFY, 1),
        ] {
            number.clear();
            write!(number, "{value}").ok()?;
            self.store_write(&device_key("vif", key), &number).ok()?;
        }
        // Straight to Connected, as Linux's netfront goes.
        self.store_write(&device_key("vif", KEY_STATE), XenbusState::Connected.format()).ok()?;
        if !self.wait_for_backend(&backend_state, port) {
            return None;
        }
        // Hear of the back end's state changes (network-detach).
        let _ = self.store_watch(&backend_path, "vif-backend");
        front.post_receive_buffers().ok()?;
        // The back end has not asked for events yet: tell it once.
        let _ = hypercall::notify(port);
        Some((front, port))
    }

    /// Follows dom0's changes to the vif (call after store watch events,
    /// see [`Guest::take_watch_events`]): connects a vif dom0 offered
    /// (`network-attach`), and lets go of one dom0 is closing
    /// (`network-detach`): the front end stops, says Closed, and revokes
    /// its grants once dom0 has unmapped the pages.
    pub fn net_hotplug(&mut self) -> Option<DeviceChange> {
        self.hotplug(DeviceKind::Vif)
    }

    /// Whether the vif is connected.
    pub fn net_connected(&self) -> bool {
        self.net.is_some()
    }

    /// The vif's MAC address as dom0 assigned it (None without a vif).
    pub fn net_mac(&mut self) -> Option<[u8; 6]> {
        self.net.as_ref()?;
        let mut text = [0u8; 32];
        let length = self.store_read(&device_key("vif", abi::xen::io::net::KEY_MAC), &mut text).ok()?;
        abi::net::parse_mac(core::str::from_utf8(&text[..length]).ok()?)
    }

    /// Sends one Ethernet frame on the vif (without waiting for dom0).
    pub fn net_send(&mut self, frame: &[u8]) -> Result<(), crate::net::NetError> {
        let (front, port) = self.net.as_mut().ok_or(crate::net::NetError::Broken)?;
        if front.send(frame)? {
            let _ = hypercall::notify(*port);
        }
        Ok(())
    }

    /// Copies the next received frame into `out` (at least 1514 bytes);
    /// returns its length, or None when nothing is waiting.
    pub fn net_receive(&mut self, out: &mut [u8]) -> Result<Option<usize>, crate::net::NetError> {
        let (front, port) = self.net.as_mut().ok_or(crate::net::NetError::Broken)?;
        match front.receive(out)? {
            Some((length, notify)) => {
                if notify {
                    let _ = hypercall::notify(*port);
                }
                Ok(Some(length))
            }
            None => Ok(None),
        }
    }

    /// Waits for the vif (a frame or a transmit answer), the console, or
    /// the TSC `deadline`, whichever comes first.
    pub fn net_wait(&mut self, deadline: u64) {
        let Some((front, _)) = self.net.as_mut() else {
            self.sleep_until(deadline);
            return;
        };
        if front.arm_events() || now() >= deadline {
            return;
        }
        let _ = hypercall::set_timer(deadline);
        self.wait_for_event();
    }

    /// Sends one Ethernet frame on the vif in two slots, the first `first`
    /// bytes at the end of a page ([`crate::net::NetFront::send_split`]).
    pub fn net_send_split(&mut self, frame: &[u8], first: usize) -> Result<(), crate::net::NetError> {
        let (front, port) = self.net.as_mut().ok_or(crate::net::NetError::Broken)?;
        if front.send_split(frame, first)? {
            let _ = hypercall::notify(*port);
        }
        Ok(())
    }

    /// Sends raw transmit slots (tests of hostile front ends: nothing is
    /// checked; see [`crate::net::NetFront::send_raw`]) and notifies dom0.
    pub fn net_send_raw(&mut self, slots: &[abi::xen::io::net::NetifTxRequest]) -> Result<(), crate::net::NetError> {
        let (front, port) = self.net.as_mut().ok_or(crate::net::NetError::Broken)?;
        front.send_raw(slots)?;
        let _ = hypercall::notify(*port);
        Ok(())
    }

    /// Takes dom0's transmit answers (frees buffers, counts errors).
    pub fn net_reclaim(&mut self) -> Result<(), crate::net::NetError> {
        self.net.as_mut().ok_or(crate::net::NetError::Broken)?.0.reclaim()
    }

    /// The transmit ring page's address (tests corrupt it on purpose).
    pub fn net_tx_ring_page(&self) -> Option<u64> {
        self.net.as_ref().map(|_| &raw const NET_PAGES as u64)
    }

    /// The receive ring page's address (tests corrupt it on purpose).
    pub fn net_rx_ring_page(&self) -> Option<u64> {
        self.net.as_ref().map(|_| &raw const NET_PAGES as u64 + abi::PAGE_SIZE)
    }

    /// Notifies dom0's net back end.
    pub fn net_notify(&self) {
        if let Some((_, port)) = &self.net {
            let _ = hypercall::notify(*port);
        }
    }

    /// The vif's counters (None without a vif).
    pub fn net_stats(&self) -> Option<crate::net::NetStats> {
        self.net.as_ref().map(|(front, _)| front.stats)
    }

    /// The disk's size in sectors (0 without a disk).
    pub fn disk_sectors(&self) -> u64 {
        self.disk.as_ref().map_or(0, |disk| disk.sectors)
    }

    /// Most bytes one disk transfer moves.
    pub const DISK_TRANSFER_MAX: usize = BLKIF_MAX_SEGMENTS_PER_REQUEST * 4096;

    /// Reads whole sectors from `sector` into `out` (at most
    /// [`Guest::DISK_TRANSFER_MAX`] bytes), waiting for dom0's answer.
    pub fn disk_read(&mut self, sector: u64, out: &mut [u8]) -> Result<(), DiskError> {
        self.disk_transfer(BlkifOp::Read, sector, out.len())?;
        let buffer = &raw const DISK_BUFFER as *const u8;
        // SAFETY: the buffer holds `out.len()` bytes dom0 just wrote through
        // the grants; no Rust reference to it exists.
        unsafe { core::ptr::copy_nonoverlapping(buffer, out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    /// Reads `bytes` (whole sectors, at most [`Guest::DISK_TRANSFER_MAX`])
    /// from `sector` into the transfer pages and leaves them there: no copy,
    /// for callers that can use the data in place (and for measurements).
    pub fn disk_read_in_place(&mut self, sector: u64, bytes: usize) -> Result<(), DiskError> {
        self.disk_transfer(BlkifOp::Read, sector, bytes)
    }

    /// Writes whole sectors from `data` at `sector`, waiting for dom0's answer.
    pub fn disk_write(&mut self, sector: u64, data: &[u8]) -> Result<(), DiskError> {
        if data.len() > Self::DISK_TRANSFER_MAX {
            return Err(DiskError::BadRequest);
        }
        let buffer = &raw mut DISK_BUFFER as *mut u8;
        // SAFETY: the buffer is ours and large enough (checked above).
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), buffer, data.len()) };
        self.disk_transfer(BlkifOp::Write, sector, data.len())
    }

    /// Reads `requests` requests of `pages_each` pages (8 sectors a page)
    /// from `sector` on into the granted transfer pages, all in flight at
    /// once, and leaves the data there (no copy): the front end at full
    /// speed, for throughput measurements. Returns how many succeeded.
    pub fn disk_read_ahead(&mut self, sector: u64, requests: usize, pages_each: usize) -> Result<usize, DiskError> {
        let disk = self.disk.as_mut().ok_or(DiskError::NoDisk)?;
        let pages_each = pages_each.clamp(1, BLKIF_MAX_SEGMENTS_PER_REQUEST);
        let pages = (requests * pages_each).min(DISK_PAGES) / pages_each * pages_each;
        if sector.checked_add(pages as u64 * 8).is_none_or(|end| end > disk.sectors) {
            return Err(DiskError::BadRequest);
        }
        let first_id = disk.next_id;
        for first_page in (0..pages).step_by(pages_each) {
            let mut request = BlkifRequest {
                id: disk.next_id,
                operation: BlkifOp::Read.number(),
                nr_segments: pages_each as u8,
                sector_number: sector + first_page as u64 * 8,
                ..Default::default()
            };
            for (slot, page) in request.seg.iter_mut().zip(first_page..first_page + pages_each) {
                *slot = BlkifRequestSegment { gref: disk.grants[page], first_sect: 0, last_sect: 7, _pad0: 0 };
            }
            disk.next_id += 1;
            disk.ring.push_request(&request).map_err(|_| DiskError::Broken)?;
        }
        let pages = pages / pages_each;
        if disk.ring.publish_requests() {
            let _ = crate::xen::evtchn::notify(disk.port);
        }
        let mut good = 0;
        let mut answered = 0;
        while answered < pages {
            let disk = self.disk.as_mut().ok_or(DiskError::NoDisk)?;
            match disk.ring.pop_response() {
                Ok(Some(response)) if (first_id..first_id + pages as u64).contains(&response.id) => {
                    answered += 1;
                    good += (response.status == BlkifRsp::Okay.number()) as usize;
                }
                Ok(Some(_)) | Err(_) => {
                    disk.broken = true;
                    return Err(DiskError::Broken);
                }
                Ok(None) => {
                    if !disk.ring.arm_response_event() {
                        self.wait_for_event();
                    }
                }
            }
        }
        Ok(good)
    }

    /// Asks dom0 to make earlier writes durable.
    pub fn disk_flush(&mut self) -> Result<(), DiskError> {
        self.disk_transfer(BlkifOp::FlushDiskcache, 0, 0)
    }

    /// Grants dom0 access to the page at `address` through the disk's grant
    /// table (for tests of hostile front ends: the address need not be ours).
    pub fn grant_to_dom0(&mut self, address: u64, readonly: bool) -> Result<u32, DiskError> {
        let table = self.grants.as_mut().ok_or(DiskError::NoDisk)?;
        table.grant(abi::DOM0, address, readonly).map_err(|_| DiskError::BadRequest)
    }

    /// Revokes a grant made with [`Guest::grant_to_dom0`]: `Busy` while
    /// dom0 maps the page.
    pub fn end_grant(&mut self, reference: u32) -> Result<(), abi::Error> {
        self.grants.as_mut().ok_or(abi::Error::NotFound)?.end_access(reference)
    }

    /// Tries to revoke the grant of transfer page `page` (tests: dom0 keeps
    /// used pages mapped, so this must fail with `Busy`).
    pub fn revoke_transfer_page(&mut self, page: usize) -> Result<(), abi::Error> {
        let disk = self.disk.as_mut().ok_or(abi::Error::NotFound)?;
        let reference = *disk.grants.get(page).ok_or(abi::Error::InvalidArgument)?;
        self.grants.as_mut().ok_or(abi::Error::NotFound)?.end_access(reference)
    }

    /// Sends `request` as it is (no checks) and waits for its response's status.
    pub fn disk_request(&mut self, request: &BlkifRequest) -> Result<i16, DiskError> {
        self.disk_submit(request)?;
        self.wait_for_response(request.id)
    }

    /// Sends `request` as it is (no checks) and notifies dom0 without
    /// waiting (tests of hostile front ends race dom0 with it); take the
    /// answer with [`Guest::disk_wait_response`].
    pub fn disk_submit(&mut self, request: &BlkifRequest) -> Result<(), DiskError> {
        let disk = self.disk.as_mut().ok_or(DiskError::NoDisk)?;
        if disk.ring.push_request(request).is_err() {
            return Err(DiskError::Broken);
        }
        // Always notify: a hostile front end wants dom0 running now.
        disk.ring.publish_requests();
        let _ = crate::xen::evtchn::notify(disk.port);
        Ok(())
    }

    /// Waits for the response to the request `id` sent by
    /// [`Guest::disk_submit`] (the next one on the ring); its status.
    pub fn disk_wait_response(&mut self, id: u64) -> Result<i16, DiskError> {
        self.wait_for_response(id)
    }

    /// The disk ring page's address (tests corrupt it on purpose).
    pub fn disk_ring_page(&self) -> Option<u64> {
        self.disk.as_ref().map(|disk| disk.ring_page)
    }

    /// Notifies dom0's disk back end.
    pub fn disk_notify(&self) {
        if let Some(disk) = &self.disk {
            let _ = crate::xen::evtchn::notify(disk.port);
        }
    }

    fn wait_for_response(&mut self, id: u64) -> Result<i16, DiskError> {
        loop {
            let disk = self.disk.as_mut().ok_or(DiskError::NoDisk)?;
            match disk.ring.pop_response() {
                Ok(Some(response)) if response.id == id => return Ok(response.status),
                Ok(Some(_)) | Err(_) => {
                    disk.broken = true;
                    return Err(DiskError::Broken);
                }
                Ok(None) => {
                    if !disk.ring.arm_response_event() {
                        self.wait_for_event();
                    }
                }
            }
        }
    }

    fn disk_transfer(&mut self, operation: BlkifOp, sector: u64, bytes: usize) -> Result<(), DiskError> {
        let disk = self.disk.as_mut().ok_or(DiskError::NoDisk)?;
        if disk.broken {
            return Err(DiskError::Broken);
        }
        let sector_size = BLKIF_SECTOR_SIZE as usize;
        let count = bytes / sector_size;
        if !bytes.is_multiple_of(sector_size)
            || bytes > Self::DISK_TRANSFER_MAX
            || (operation != BlkifOp::FlushDiskcache && count == 0)
        {
            return Err(DiskError::BadRequest);
        }
        if sector.checked_add(count as u64).is_none_or(|end| end > disk.sectors) {
            return Err(DiskError::BadRequest);
        }
        let mut request = BlkifRequest {
            id: disk.next_id,
            operation: operation.number(),
            sector_number: sector,
            ..Default::default()
        };
        disk.next_id += 1;
        let pages = count.div_ceil(SECTORS_PER_PAGE as usize);
        for page in 0..pages {
            let first = page * 8;
            let last = (count - 1).min(first + 7);
            request.seg[page] = BlkifRequestSegment {
                gref: disk.grants[page],
                first_sect: 0,
                last_sect: (last - first) as u8,
                _pad0: 0,
            };
        }
        request.nr_segments = pages as u8;
        match self.disk_request(&request)? {
            status if status == BlkifRsp::Okay.number() => Ok(()),
            status => Err(DiskError::Status(status)),
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
        let mut reply = [0u8; STORE_MESSAGE_MAX];
        let length = self.store_request(XsdSockmsgType::Read, transaction, &[path], &mut reply)?;
        // The reply payload is the value, without a NUL.
        let value = &reply[XSD_SOCKMSG_SIZE..XSD_SOCKMSG_SIZE + length];
        let destination = out.get_mut(..value.len()).ok_or(StoreFailure::BadMessage)?;
        destination.copy_from_slice(value);
        Ok(value.len())
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
        let mut reply = [0u8; STORE_MESSAGE_MAX];
        self.store_request(XsdSockmsgType::Write, transaction, &[path, value], &mut reply).map(|_| ())
    }

    /// Opens a store transaction: requests made with it see the store as
    /// it was plus their own changes, and nobody else sees those until
    /// [`Guest::store_transaction_end`] commits them.
    pub fn store_transaction_start(&mut self) -> Result<StoreTransaction, StoreFailure> {
        let mut reply = [0u8; STORE_MESSAGE_MAX];
        let length = self.store_request(XsdSockmsgType::TransactionStart, None, &[""], &mut reply)?;
        // The reply payload is the id in decimal and a NUL.
        let text = &reply[XSD_SOCKMSG_SIZE..XSD_SOCKMSG_SIZE + length];
        let digits = text.strip_suffix(&[0]).ok_or(StoreFailure::BadMessage)?;
        match abi::store::parse_decimal(digits) {
            Some(id) if id != 0 => Ok(StoreTransaction(id)),
            _ => Err(StoreFailure::BadMessage),
        }
    }

    /// Ends `transaction`: commits its changes (`commit`) or abandons them.
    /// [`TransactionEnd::Retry`] when the store refused the commit for a
    /// conflict (`EAGAIN`): the caller starts again, reading anew.
    pub fn store_transaction_end(
        &mut self,
        transaction: StoreTransaction,
        commit: bool,
    ) -> Result<TransactionEnd, StoreFailure> {
        let mut reply = [0u8; STORE_MESSAGE_MAX];
        let argument = if commit { "T" } else { "F" };
        match self.store_request(XsdSockmsgType::TransactionEnd, Some(transaction), &[argument], &mut reply) {
            Ok(_) => Ok(TransactionEnd::Done),
            Err(StoreFailure::Refused(Errno::Eagain)) => Ok(TransactionEnd::Retry),
            Err(failure) => Err(failure),
        }
    }

    /// Sends any one request (`fields` as the type takes them: strings,
    /// and for `WRITE` the path then the value) and waits for its reply;
    /// returns the reply's payload length. For guests that probe the store
    /// (the hostile-guest suite).
    pub fn store_op(&mut self, kind: XsdSockmsgType, fields: &[&str]) -> Result<usize, StoreFailure> {
        let mut reply = [0u8; STORE_MESSAGE_MAX];
        self.store_request(kind, None, fields, &mut reply)
    }

    /// Sends one request and waits for its reply; watch events that arrive
    /// meanwhile are counted for [`Guest::take_watch_events`]. Each field
    /// goes with a NUL after it, except a `WRITE`'s value (its second
    /// field), as xs_wire has it. Returns the reply's payload length (the
    /// payload follows the header in `reply`).
    fn store_request(
        &mut self,
        kind: XsdSockmsgType,
        transaction: Option<StoreTransaction>,
        fields: &[&str],
        reply: &mut [u8; STORE_MESSAGE_MAX],
    ) -> Result<usize, StoreFailure> {
        let store = self.store.as_mut().ok_or(StoreFailure::NoStore)?;
        let mut message = [0u8; STORE_MESSAGE_MAX];
        let mut length = XSD_SOCKMSG_SIZE;
        for (index, field) in fields.iter().enumerate() {
            let terminated = !(kind == XsdSockmsgType::Write && index == 1);
            let end = length + field.len() + terminated as usize;
            if end > STORE_MESSAGE_MAX || field.as_bytes().contains(&0) {
                return Err(StoreFailure::BadMessage);
            }
            message[length..length + field.len()].copy_from_slice(field.as_bytes());
            length = end;
        }
        let id = store.next_id;
        store.next_id = store.next_id.wrapping_add(1).max(1);
        let tx_id = transaction.map_or(0, |transaction| transaction.0);
        let header = XsdSockmsg { r#type: kind.number(), req_id: id, tx_id, len: (length - XSD_SOCKMSG_SIZE) as u32 };
        message[..XSD_SOCKMSG_SIZE].copy_from_slice(&header.to_bytes());
        let mut sent = 0;
        loop {
            let store = self.store.as_mut().ok_or(StoreFailure::NoStore)?;
            let mut progress = false;
            if sent < length {
                let count = store.ring.client_send(&message[sent..length]).map_err(|_| StoreFailure::Broken)?;
                if count > 0 {
                    sent += count;
                    progress = true;
                    let _ = crate::xen::evtchn::notify(store.port);
                }
            }
            if let Some(total) = store.receive()? {
                progress = true;
                store.incoming_length = 0;
                let header = store.header();
                match XsdSockmsgType::from_number(header.r#type) {
                    Some(XsdSockmsgType::WatchEvent) => store.watch_events = store.watch_events.saturating_add(1),
                    Some(XsdSockmsgType::Error) if header.req_id == id => {
                        let name = &store.incoming[XSD_SOCKMSG_SIZE..total];
                        return Err(
                            xsd_error_from_payload(name).map_or(StoreFailure::BadMessage, StoreFailure::Refused)
                        );
                    }
                    Some(answered) if header.req_id == id && answered == kind => {
                        reply[..total].copy_from_slice(&store.incoming[..total]);
                        return Ok(header.len as usize);
                    }
                    _ => return Err(StoreFailure::BadMessage),
                }
            }
            if !progress {
                self.store_event = false;
                self.wait_for_event();
            }
        }
    }

    /// Asks the store to report changes at or below `path` (relative to
    /// this domain's home, or absolute); events are counted, see
    /// [`Guest::take_watch_events`]. The store reports once at once.
    pub fn store_watch(&mut self, path: &str, token: &str) -> Result<(), StoreFailure> {
        let mut reply = [0u8; STORE_MESSAGE_MAX];
        self.store_request(XsdSockmsgType::Watch, None, &[path, token], &mut reply).map(|_| ())
    }

    /// Watch events that arrived since the last call (reads any waiting on
    /// the store ring first, without blocking).
    pub fn take_watch_events(&mut self) -> u32 {
        let Some(store) = self.store.as_mut() else { return 0 };
        while let Ok(Some(_)) = store.receive() {
            store.incoming_length = 0;
            // Nothing else is outstanding here: anything but an event is dropped.
            if XsdSockmsgType::from_number(store.header().r#type) == Some(XsdSockmsgType::WatchEvent) {
                store.watch_events = store.watch_events.saturating_add(1);
            }
        }
        core::mem::take(&mut store.watch_events)
    }

    /// The guest-physical addresses of the event page and the grant table
    /// page the runtime registered (tests that register others on purpose
    /// put these back).
    pub fn registered_pages(&self) -> (u64, u64) {
        (&raw const EVENT_PAGE as u64, &raw const GRANT_PAGE as u64)
    }

    /// This domain's number of vCPUs (`vcpus` in its config), from hv's
    /// `DomainInfo`; 1 when hv does not say.
    pub fn vcpu_count(&self) -> u32 {
        hypercall::domain_info(self.domain_id()).map_or(1, |info| info.vcpu_count.max(1))
    }

    /// Starts vCPU `vcpu` (1 to [`Guest::vcpu_count`] minus one) running
    /// `entry(argument)` on the stack below `stack_top`, with this vCPU's
    /// page tables (CR3) and GDT, through [`hypercall::vcpu_up`].
    ///
    /// The new vCPU starts in 64-bit mode with interrupts off and no IDT:
    /// an exception there is a triple fault, which crashes the domain. It
    /// gets no upcalls (events notify vCPU 0 only), though its own timer
    /// ([`hypercall::set_timer`]) wakes it from [`hypercall::block`]. It
    /// must not use the `Guest` (console, store, devices): the runtime is
    /// not thread-safe and belongs to vCPU 0; share data through atomics.
    ///
    /// Errors are hv's (`VcpuOp::Up`): `InvalidArgument` for no such vCPU,
    /// `Busy` when it is up already.
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
        self.console_port
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
        if self.start_info.tsc_khz == 0 { 1_000_000_000 } else { self.start_info.tsc_khz * 1000 }
    }

    /// Tests and clears event port `port`'s pending bit.
    pub fn take_port(&self, port: u32) -> bool {
        take_pending(port)
    }

    /// Upcalls taken so far.
    pub fn upcalls(&self) -> u64 {
        UPCALLS.load(core::sync::atomic::Ordering::Relaxed)
    }

    /// Writes to the console (or the hypervisor log when there is none),
    /// waiting while the ring is full.
    pub fn write(&mut self, mut bytes: &[u8]) {
        let Some(ring) = &self.console else {
            let _ = hypercall::console_write(bytes);
            return;
        };
        while !bytes.is_empty() {
            match ring.write_output(bytes) {
                Ok(0) => {
                    let _ = crate::xen::evtchn::notify(self.console_port);
                    crate::xen::yield_now();
                }
                Ok(count) => bytes = &bytes[count..],
                Err(_) => {
                    // dom0 corrupted the ring: fall back to the hv log.
                    let _ = hypercall::console_write(bytes);
                    return;
                }
            }
        }
        let _ = crate::xen::evtchn::notify(self.console_port);
    }

    /// Reads waiting console input (non-blocking).
    pub fn read(&mut self, out: &mut [u8]) -> usize {
        let count = self.console.as_ref().and_then(|ring| ring.read_input(out).ok()).unwrap_or(0);
        if count > 0 {
            let _ = crate::xen::evtchn::notify(self.console_port);
        }
        count
    }

    /// Halts until an event arrives (the upcall wakes us), then collects
    /// the ports that fired. hv does not block a vCPU while an unmasked port
    /// is pending, so every port we bound is consumed here.
    pub fn wait_for_event(&mut self) {
        // SAFETY: STI;HLT: the vCPU blocks in hv until an event; the upcall
        // handler runs on wake-up and returns after HLT.
        unsafe { asm!("sti", "hlt", options(nomem, nostack)) };
        self.collect_events();
    }

    fn collect_events(&mut self) {
        take_pending(self.timer_port);
        if let Some(port) = self.handshake_port {
            take_pending(port);
        }
        if let Some(disk) = &self.disk {
            take_pending(disk.port);
        }
        if let Some((_, port)) = &self.net {
            take_pending(*port);
        }
        if let Some(store) = &self.store
            && take_pending(store.port)
        {
            self.store_event = true;
        }
        if self.console.is_some() && take_pending(self.console_port) {
            self.console_event = true;
        }
    }

    /// Arms this vCPU's single-shot timer (Xen's `vcpu_op`) for TSC value
    /// `deadline`: its `VIRQ_TIMER` port fires then.
    fn set_timer(&self, deadline: u64) {
        let _ = crate::xen::set_timer(0, crate::xen::tsc_to_ns(deadline, self.start_info.tsc_khz));
    }

    /// Sleeps until the TSC reaches `deadline`.
    pub fn sleep_until(&mut self, deadline: u64) {
        self.set_timer(deadline);
        while now() < deadline {
            self.wait_for_event();
        }
    }

    /// Waits until the console port fires (input arrived or space freed).
    pub fn wait_for_input(&mut self) {
        self.collect_events();
        while !core::mem::take(&mut self.console_event) {
            self.wait_for_event();
        }
    }

    /// Whether the console port is connected (dom0 still serves it).
    pub fn console_connected(&self) -> bool {
        use abi::xen::event_channel::EvtchnStat;
        crate::xen::evtchn::status(self.console_port)
            .is_ok_and(|status| status.status == EvtchnStat::Interdomain.number())
    }
}

impl fmt::Write for Guest {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        self.write(text.as_bytes());
        Ok(())
    }
}

/// Starts vCPU `vcpu` of this domain running `entry(argument)` on the
/// stack below `stack_top`, with the calling vCPU's page tables (CR3) and
/// GDT, through [`hypercall::vcpu_up`]: [`Guest::start_vcpu`] without the
/// runtime, for kernels that set themselves up (dom0). The new vCPU
/// starts in 64-bit mode with interrupts off and no IDT.
///
/// # Safety
/// As for [`Guest::start_vcpu`]: `stack_top` ends writable memory of this
/// domain that only the new vCPU uses, and the page tables and GDT of the
/// calling vCPU stay as they are while the new one runs.
pub unsafe fn start_vcpu(
    vcpu: u32,
    entry: extern "C" fn(u64) -> !,
    stack_top: u64,
    argument: u64,
) -> Result<(), abi::Error> {
    /// The new vCPU's first instructions. Xen's 64-bit entry state has
    /// flat segments but no GDT, and an interrupt or IRET (an upcall, once
    /// the vCPU takes them) reads the GDT: so it loads the caller's (base
    /// in RDX, limit in CX, the pointer built below its stack pointer),
    /// then jumps to `entry` (RSI), with RDI and RSP as `entry` expects.
    #[unsafe(naked)]
    extern "C" fn load_gdt_and_enter() -> ! {
        core::arch::naked_asm!(
            "sub rsp, 16",
            "mov [rsp], cx",
            "mov [rsp + 2], rdx",
            "lgdt [rsp]",
            "add rsp, 16",
            "jmp rsi",
        )
    }
    let (gdt_base, gdt_limit) = read_gdtr();
    // Where a `call` would leave the stack pointer (see
    // `hypercall::vcpu_entry_context`).
    let rsp = (stack_top & !0xf).wrapping_sub(8);
    let mut context = crate::xen::long_mode_context(load_gdt_and_enter as *const () as u64, rsp, read_cr3());
    let registers = &mut context.x86_64;
    (registers.rdi, registers.rsi) = (argument, entry as usize as u64);
    (registers.rdx, registers.rcx) = (gdt_base, u64::from(gdt_limit));
    // In Mica's terms, as `hypercall::vcpu_up` answered: a vCPU initialised
    // already is up, or still stopping after `hypercall::vcpu_down`.
    let refused = |errno: Errno| match errno {
        Errno::Eexist | Errno::Ebusy => abi::Error::Busy,
        Errno::Efault => abi::Error::BadAddress,
        Errno::Enomem => abi::Error::OutOfMemory,
        _ => abi::Error::InvalidArgument,
    };
    // SAFETY: `entry` is a function of this kernel that takes a word and
    // never returns, reached through `load_gdt_and_enter`, which touches
    // only the new stack; the caller dedicates the stack and keeps the
    // page tables and GDT this vCPU runs on.
    unsafe { crate::xen::vcpu_initialise(vcpu, &context) }.map_err(refused)?;
    // SAFETY: as above; its stack is its own from now on.
    unsafe { crate::xen::vcpu_up(vcpu) }.map_err(refused)
}

/// The guest-physical address of the current page-table root (CR3
/// without its flag bits; SDM 4.5).
fn read_cr3() -> u64 {
    let cr3: u64;
    // SAFETY: reading CR3 at CPL 0 changes nothing.
    unsafe { asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack, preserves_flags)) };
    cr3 & 0x000f_ffff_ffff_f000
}

/// The GDT register: (base, limit). SGDT stores the 2-byte limit, then
/// the 8-byte base (SDM 3.5.1).
fn read_gdtr() -> (u64, u16) {
    let mut register = [0u8; 10];
    // SAFETY: SGDT writes exactly the 10 bytes of `register`.
    unsafe { asm!("sgdt [{}]", in(reg) register.as_mut_ptr(), options(nostack, preserves_flags)) };
    let [limit_low, limit_high, base @ ..] = register;
    (u64::from_le_bytes(base), u16::from_le_bytes([limit_low, limit_high]))
}

/// The time-stamp counter.
pub fn now() -> u64 {
    // SAFETY: RDTSC only reads the counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Stops the guest with a crash report (for panic handlers). The report
/// goes to hv's log in one write (one log line) when it fits 256 bytes.
pub fn crash(message: fmt::Arguments) -> ! {
    let mut line = arrayvec::ArrayString::<256>::new();
    if fmt::write(&mut line, message).is_ok() {
        let _ = hypercall::console_write(line.as_bytes());
    } else {
        let _ = hypercall::console_write(b"crash report too long\n");
    }
    hypercall::shutdown(abi::hypercall::ShutdownReason::Crash);
    loop {
        core::hint::spin_loop();
    }
}
