//! dom0's data paths: the guests' block and net back ends, the physical
//! disks and NIC they drive and the switch between the vifs, all in
//! [`DATA`]; and, when dom0 has a second vCPU (hv's `dom0_vcpus=`), that
//! vCPU's loop, which serves them ([`start`], [`run`]), so that a long
//! shell command, the store or the consoles on vCPU 0 never hold up a
//! guest's disk or network, nor these the shell. With one vCPU, vCPU 0
//! serves them in its own loop ([`DataPath::serve`]), as it always did.
//!
//! Locks, always taken in this order: `toolstack::domains::STORE`, then
//! [`DATA`], then `toolstack::domains::WINDOW` or `drivers::e1000::NIC`.
//! The data-path vCPU takes only the last three (vCPU 0 holds `TOOLSTACK`
//! for good): what it has for the operator or the store it queues as a
//! [`Notice`] for vCPU 0. No lock is held across `SchedOp::Block`, nor
//! while the serial line prints.
//!
//! Events: a port notifies one vCPU (`EventOp::BindVcpu`). Each back end's
//! port, the NIC's and the data-path vCPU's wake-up port notify that vCPU
//! and are in [`DATA_PORTS`]; each vCPU takes only its own pending bits,
//! or the other would miss why it was woken (a level-triggered NIC line
//! stays masked until the NIC is drained and its port unmasked).

use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use abi::DomainId;
use abi::event::{BITMAP_WORDS, EventOp};
use arrayvec::{ArrayString, ArrayVec};
use dom0core::backends::block::Region;
use dom0core::backends::net::switch::{Forward, PortId, Switch};
use dom0core::toolstack::config::NAME_MAX;
use pv_drivers::hypercall;
use pv_drivers::ring::BlockBack;
use spin::relax::RelaxStrategy;

use crate::backends::net::netback::{NetBackend, TX_BATCH, Transmit};
use crate::drivers::ata::AtaDisk;
use crate::toolstack::domains::MAX_GUESTS;

/// A fair spin lock (a ticket lock: the vCPUs take turns, so a shell
/// command that takes the disks again and again cannot starve the
/// guests' requests) whose waiter gives its CPU back to hv between tries:
/// the holder may be the other dom0 vCPU, descheduled while a guest runs,
/// and spinning would only keep it off the CPU longer.
pub type Lock<T> = spin::mutex::TicketMutex<T, YieldToHv>;

/// The relax step of [`Lock`]: a `SchedOp::Yield`.
pub struct YieldToHv;

impl RelaxStrategy for YieldToHv {
    fn relax() {
        hypercall::yield_now();
    }
}

/// The vCPU that serves the data paths when dom0 has more than one.
pub const DATA_VCPU: u32 = 1;

/// The switch port of the physical NIC (guest vifs use their domain id).
pub const UPLINK: PortId = 0;
/// Switch entries not refreshed for this many milliseconds are forgotten.
const SWITCH_AGE_MS: u64 = 300_000;
/// Most addresses the switch learns behind the NIC. Guests' vifs learn
/// nothing (each is locked to its MAC, a static entry), so the table holds
/// every guest's and this many more.
const NIC_LEARN_LIMIT: usize = 128;
const _: () = assert!(MAX_GUESTS + NIC_LEARN_LIMIT <= 256, "the switch table holds every guest and the NIC's share");
/// Firings in a row that found no cause in the NIC after which its line
/// is taken for one shared with a device nobody services (an ACPI SCI,
/// say), which, if level-triggered, would keep firing: the port stays
/// masked and the NIC is polled on the timer.
const SPURIOUS_MAX: u32 = 1000;
/// The data-path vCPU's sleep when idle, in milliseconds: how often it
/// looks at a NIC without an interrupt (or one whose interrupt went to
/// another device on a shared line).
const POLL_MS: u64 = 10;

/// The data paths' state: everything either vCPU may touch.
pub static DATA: Lock<DataPath> = Lock::new(DataPath::new());

/// The ports that notify the data-path vCPU (bit `p % 64` of word `p / 64`).
static DATA_PORTS: PortSet = PortSet([const { AtomicU64::new(0) }; BITMAP_WORDS]);

/// The data-path vCPU's wake-up port (an IPI port bound to it), 0 = none.
static WAKE_PORT: AtomicU32 = AtomicU32::new(0);

/// Set once the data-path vCPU runs [`run`]: vCPU 0 then leaves the data
/// paths to it.
static ON_OWN_VCPU: AtomicBool = AtomicBool::new(false);

/// Bytes of stack for the data-path vCPU.
const STACK_SIZE: usize = 64 * 1024;

#[repr(C, align(16))]
struct Stack([u8; STACK_SIZE]);

/// The data-path vCPU's stack: used by that vCPU alone, never through a
/// reference.
static mut STACK: Stack = Stack([0; STACK_SIZE]);

/// A set of ports, one bit each, read and changed atomically.
struct PortSet([AtomicU64; BITMAP_WORDS]);

impl PortSet {
    fn insert(&self, port: u32) {
        if let Some(word) = self.0.get(port as usize / 64) {
            word.fetch_or(1 << (port % 64), Ordering::SeqCst);
        }
    }

    fn remove(&self, port: u32) {
        if let Some(word) = self.0.get(port as usize / 64) {
            word.fetch_and(!(1 << (port % 64)), Ordering::SeqCst);
        }
    }

    fn words(&self) -> [u64; BITMAP_WORDS] {
        core::array::from_fn(|index| self.0[index].load(Ordering::SeqCst))
    }
}

/// A guest disk's back end: the ring dom0 maps, the event port, and the
/// region of a physical disk it serves.
pub struct BlockBackend {
    pub ring: BlockBack,
    pub port: u32,
    /// Window slot of the ring page.
    pub slot: usize,
    /// Index of the physical disk in `DataPath::disks`.
    pub disk: usize,
    pub region: Region,
    /// Requests served so far.
    pub requests: u64,
    /// TSC ticks dom0 spent serving them (disk I/O included).
    pub service_tsc: u64,
    /// Set when the front end broke the protocol; the ring is no longer read.
    pub broken: Option<&'static str>,
    /// The front end wrote `feature-persistent` = 1: dom0 may keep its
    /// data pages mapped (`mapped`); without it every transfer is a copy.
    pub persistent: bool,
    /// Grants dom0 keeps mapped (persistent grants): (grant, writable,
    /// window slot). The disk reads and writes them in place.
    pub mapped: ArrayVec<(u32, bool, usize), { crate::backends::block::blkback::PERSISTENT_GRANTS }>,
    /// `mapped` indexed by grant reference (index + 1; 0 = not mapped), so
    /// the lookup on every segment costs one load.
    pub mapped_by_grant: [u16; abi::xen::grant_table::GRANT_TABLE_ENTRIES],
}

/// A guest's back ends, as the data paths hold them.
pub struct GuestDevices {
    pub id: DomainId,
    /// Its name, for the operator's messages.
    pub name: ArrayString<NAME_MAX>,
    /// Its disk's back end, once the front end connected through the store.
    pub block: Option<BlockBackend>,
    /// Its vif's back end, once the front end connected through the store.
    pub net: Option<NetBackend>,
    /// A vif dom0 disconnected: the window slots of its ring pages (freed
    /// when the guest is destroyed), why, and its MAC.
    pub broken_vif: Option<([usize; 2], &'static str, [u8; 6])>,
}

/// What the data paths have to tell vCPU 0, which owns the serial line
/// and the store.
#[derive(Clone, Copy, Debug)]
pub enum Notice {
    /// The guest broke its disk ring; its port is closed.
    DiskBroken { name: ArrayString<NAME_MAX>, reason: &'static str },
    /// The guest broke its vif rings; its port is closed and the vif is off
    /// the switch. vCPU 0 answers Closed in the store.
    VifBroken { id: DomainId, name: ArrayString<NAME_MAX>, reason: &'static str },
    /// The NIC's interrupt line keeps firing for another device: the NIC
    /// is polled from now on.
    NicLineShared,
}

impl Notice {
    /// The operator's line (starting on a fresh line).
    pub fn write(&self, out: &mut impl Write) {
        let _ = match self {
            Notice::DiskBroken { name, reason } => {
                writeln!(out, "\ndom0: '{name}' broke its disk ring ({reason}); disk disconnected")
            }
            Notice::VifBroken { name, reason, .. } => {
                writeln!(out, "\ndom0: '{name}' broke its vif rings ({reason}); vif disconnected")
            }
            Notice::NicLineShared => writeln!(
                out,
                "\ndom0: the NIC's interrupt line keeps firing for another device; polling the NIC instead"
            ),
        };
    }
}

/// How the data paths follow the NIC's interrupt.
pub struct NicEvents {
    /// None: no NIC; Some(None): a NIC without an interrupt (looked at on
    /// every pass); Some(Some(port)): its interrupt's event port.
    port: Option<Option<u32>>,
    /// The NIC may hold received frames (its interrupt fired, or it has no
    /// interrupt, or the poll timer ran out).
    due: bool,
    /// Times its interrupt port fired (for `devices`).
    pub interrupts: u64,
    /// The port fired and, if the line is level-triggered, hv keeps it
    /// masked until the NIC is drained and the port unmasked.
    fired: bool,
    /// Firings in a row that found no cause in the NIC (see `SPURIOUS_MAX`).
    spurious: u32,
    /// The NIC's cause count at the last firing.
    causes: u64,
}

/// The guests' back ends, the devices they use, and the switch.
pub struct DataPath {
    /// ATA disks found at start-up.
    pub disks: ArrayVec<AtaDisk, 4>,
    /// Every guest dom0 built, by domain id.
    pub guests: ArrayVec<GuestDevices, MAX_GUESTS>,
    /// The L2 switch joining the guests' vifs and the physical NIC.
    pub switch: Switch<256>,
    /// Frames the switch dropped (no port could take them, or malformed).
    pub switch_dropped: u64,
    pub nic: NicEvents,
    /// The TSC's frequency (0 = unknown): the switch ages its entries in
    /// milliseconds, the data-path vCPU sleeps `POLL_MS` at most.
    pub tsc_khz: u64,
    /// One frame on its way through the switch.
    frame: [u8; 2048],
    /// What vCPU 0 has yet to report (each guest breaks a disk and a vif
    /// at most once per connection, and connecting takes vCPU 0).
    notices: ArrayVec<Notice, { 2 * MAX_GUESTS + 1 }>,
}

impl DataPath {
    const fn new() -> DataPath {
        DataPath {
            disks: ArrayVec::new_const(),
            guests: ArrayVec::new_const(),
            switch: Switch::new(SWITCH_AGE_MS, NIC_LEARN_LIMIT),
            switch_dropped: 0,
            nic: NicEvents { port: None, due: true, interrupts: 0, fired: false, spurious: 0, causes: 0 },
            tsc_khz: 0,
            frame: [0; 2048],
            notices: ArrayVec::new_const(),
        }
    }

    /// Takes the devices dom0 found: its disks, and whether it has a NIC
    /// and on which port that NIC interrupts.
    pub fn init(&mut self, disks: ArrayVec<AtaDisk, 4>, nic_port: Option<Option<u32>>, tsc_khz: u64) {
        self.disks = disks;
        self.nic.port = nic_port;
        self.tsc_khz = tsc_khz;
    }

    /// Guest `id`'s back ends (None for a guest dom0 did not build).
    pub fn guest(&self, id: DomainId) -> Option<&GuestDevices> {
        self.guests.iter().find(|guest| guest.id == id)
    }

    /// Guest `id`'s back ends, to change.
    pub fn guest_mut(&mut self, id: DomainId) -> Option<&mut GuestDevices> {
        self.guests.iter_mut().find(|guest| guest.id == id)
    }

    /// Makes room for a new guest's back ends (none yet).
    pub fn add_guest(&mut self, id: DomainId, name: ArrayString<NAME_MAX>) {
        let _ = self.guests.try_push(GuestDevices { id, name, block: None, net: None, broken_vif: None });
    }

    /// Takes guest `id`'s back ends out (it is being destroyed) and its vif
    /// off the switch; the caller lets go of what they hold.
    pub fn remove_guest(&mut self, id: DomainId) -> Option<GuestDevices> {
        self.switch.remove_port(id as PortId);
        let index = self.guests.iter().position(|guest| guest.id == id)?;
        Some(self.guests.remove(index))
    }

    /// The next notice for vCPU 0, oldest first.
    pub fn next_notice(&mut self) -> Option<Notice> {
        (!self.notices.is_empty()).then(|| self.notices.remove(0))
    }

    /// One pass over the data paths: the guests' disk requests, then the
    /// frames of their vifs and of the NIC; a level-triggered NIC line hv
    /// masked comes back once the NIC is drained. Returns whether anything
    /// was done (then the caller passes again before it sleeps).
    pub fn serve(&mut self) -> bool {
        let mut busy = self.service_disks();
        if matches!(self.nic.port, Some(None)) {
            self.nic.due = true;
        }
        busy |= self.service_net();
        self.rearm_nic_interrupt();
        busy
    }

    /// After the serving vCPU woke: `fired` holds the pending bits it took,
    /// `timer_expired` says its poll timer ran out (then the NIC is looked
    /// at too: an interrupt on a shared line may have gone to another
    /// device's edge).
    pub fn woke(&mut self, fired: &[u64; BITMAP_WORDS], timer_expired: bool) {
        if timer_expired {
            self.nic.due = true;
        }
        if let Some(Some(port)) = self.nic.port
            && fired.get(port as usize / 64).is_some_and(|word| word & (1 << (port % 64)) != 0)
        {
            self.nic.due = true;
            self.nic.interrupts += 1;
            self.nic.fired = true;
        }
    }

    /// Unmasks the NIC's port once the NIC is drained after it fired,
    /// unless the line keeps firing with no cause in the NIC.
    fn rearm_nic_interrupt(&mut self) {
        let Some(Some(port)) = self.nic.port else { return };
        if !self.nic.fired || self.nic.due {
            return;
        }
        self.nic.fired = false;
        let causes = crate::drivers::e1000::NIC.lock().as_ref().map_or(0, |nic| nic.stats().interrupts);
        self.nic.spurious = if causes == self.nic.causes { self.nic.spurious + 1 } else { 0 };
        self.nic.causes = causes;
        if self.nic.spurious < SPURIOUS_MAX {
            let _ = hypercall::event(EventOp::Unmask, port as u64, 0);
        } else if self.nic.spurious == SPURIOUS_MAX {
            let _ = self.notices.try_push(Notice::NicLineShared);
        }
    }

    /// Serves the guests' disk requests. Returns whether anything was done.
    fn service_disks(&mut self) -> bool {
        let DataPath { disks, guests, notices, .. } = self;
        let mut busy = false;
        for guest in guests.iter_mut() {
            let Some(block) = guest.block.as_mut() else { continue };
            if block.broken.is_some() {
                continue;
            }
            let started = rdtsc();
            let served = block.service(disks, guest.id);
            if served {
                block.service_tsc += rdtsc() - started;
            }
            busy |= served;
            if let Some(reason) = block.broken {
                let _ = notices.try_push(Notice::DiskBroken { name: guest.name, reason });
                close_port(block.port);
            }
        }
        busy
    }

    /// Moves frames: from every guest's transmit ring and (when its
    /// interrupt fired, or `nic.due` was set otherwise) from the NIC,
    /// through the switch to guests' receive buffers and the NIC. A front
    /// end that breaks its rings is disconnected (a notice tells vCPU 0).
    /// Returns whether any frame moved.
    fn service_net(&mut self) -> bool {
        let DataPath { guests, switch, switch_dropped, frame, nic, notices, tsc_khz, .. } = self;
        let mut ports = Ports { guests, switch, dropped: switch_dropped };
        let mut moved = false;
        let now = rdtsc() / (*tsc_khz).max(1);
        for index in 0..ports.guests.len() {
            let id = ports.guests[index].id;
            for _ in 0..TX_BATCH {
                let Some(net) = ports.guests[index].net.as_mut() else { break };
                match net.take_frame(id, frame) {
                    Transmit::Frame(length) => {
                        moved = true;
                        ports.switch_frame(id as PortId, &frame[..length], now);
                    }
                    Transmit::Again => moved = true,
                    Transmit::Idle => break,
                }
            }
        }
        if nic.due {
            // Drained unless a whole batch came in (then look again next pass).
            nic.due = false;
            for _ in 0..TX_BATCH {
                // The lock is dropped before switching: the switch may send
                // the frame back out through the NIC.
                let Some(length) = crate::drivers::e1000::NIC.lock().as_mut().and_then(|nic| nic.receive(frame)) else {
                    break;
                };
                moved = true;
                nic.due = true;
                if (abi::net::FRAME_MIN..=abi::net::FRAME_MAX).contains(&length) {
                    ports.switch_frame(UPLINK, &frame[..length], now);
                } else {
                    *ports.dropped += 1;
                }
            }
        }
        for guest in ports.guests.iter_mut() {
            let Some(net) = guest.net.as_mut() else { continue };
            net.flush();
            if let Some(reason) = net.broken {
                let _ = notices.try_push(Notice::VifBroken { id: guest.id, name: guest.name, reason });
                close_port(net.port);
                ports.switch.remove_port(guest.id as PortId);
                // The ring pages stay mapped (and their slots taken) until
                // the guest is destroyed.
                let (slots, mac) = (net.slots, net.mac);
                guest.net = None;
                guest.broken_vif = Some((slots, reason, mac));
            }
        }
        moved
    }
}

/// The switch's view of its ports: the guests' vifs and the NIC (borrowed
/// apart from the data paths' frame buffer).
struct Ports<'a> {
    guests: &'a mut ArrayVec<GuestDevices, MAX_GUESTS>,
    switch: &'a mut Switch<256>,
    dropped: &'a mut u64,
}

impl Ports<'_> {
    /// Sends one frame that arrived on switch port `from` where the switch says.
    fn switch_frame(&mut self, from: PortId, frame: &[u8], now: u64) {
        match self.switch.forward(from, frame, now) {
            Forward::Port(port) => self.send_to_port(port, frame),
            Forward::Flood => {
                if from != UPLINK {
                    self.send_to_port(UPLINK, frame);
                }
                for index in 0..self.guests.len() {
                    let port = self.guests[index].id as PortId;
                    if port != from && self.guests[index].net.is_some() {
                        self.send_to_port(port, frame);
                    }
                }
            }
            Forward::Drop => *self.dropped += 1,
            // Counted by the switch, and against the vif that sent it.
            Forward::Refused => {
                if let Some(net) = self.guests.iter_mut().find(|g| g.id as PortId == from).and_then(|g| g.net.as_mut())
                {
                    net.stats.tx_spoofed += 1;
                }
            }
        }
    }

    fn send_to_port(&mut self, port: PortId, frame: &[u8]) {
        if port == UPLINK {
            if let Some(nic) = crate::drivers::e1000::NIC.lock().as_mut()
                && nic.transmit(frame).is_err()
            {
                *self.dropped += 1;
            }
            return;
        }
        match self.guests.iter_mut().find(|g| g.id as PortId == port).and_then(|g| Some((g.id, g.net.as_mut()?))) {
            Some((id, net)) => net.deliver(id, frame),
            None => *self.dropped += 1,
        }
    }
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Whether the data-path vCPU serves the data paths (else vCPU 0 does, in
/// its own loop).
pub fn on_own_vcpu() -> bool {
    ON_OWN_VCPU.load(Ordering::Acquire)
}

/// Starts the data-path vCPU when dom0 has more than one vCPU (`DomainInfo`
/// of dom0): binds its wake-up port, hands it the NIC's port, and starts
/// it in [`run`] on a stack of its own. Returns whether it runs; with one
/// vCPU nothing changes. Call once, from vCPU 0, after the event page is
/// registered and the NIC probed, before vCPU 0 serves anything.
pub fn start() -> Result<bool, abi::Error> {
    let vcpus = hypercall::domain_info(abi::DOM0)?.vcpu_count;
    if vcpus <= DATA_VCPU {
        return Ok(false);
    }
    let wake = hypercall::event(EventOp::BindIpi, u64::from(DATA_VCPU), 0)? as u32;
    DATA_PORTS.insert(wake);
    WAKE_PORT.store(wake, Ordering::Release);
    let nic_port = DATA.lock().nic.port.flatten();
    ON_OWN_VCPU.store(true, Ordering::Release);
    if let Some(port) = nic_port {
        adopt(port);
    }
    let stack_top = &raw mut STACK as u64 + STACK_SIZE as u64;
    // SAFETY: STACK is this vCPU's alone (it is started once: `Busy`
    // otherwise); `run` touches shared state only through locks and
    // atomics; dom0 never changes its page tables or GDT.
    let started = unsafe { pv_drivers::guest::start_vcpu(DATA_VCPU, run, stack_top, 0) };
    if let Err(error) = started {
        // vCPU 0 keeps serving everything, as with one vCPU.
        ON_OWN_VCPU.store(false, Ordering::Release);
        if let Some(port) = nic_port {
            let _ = hypercall::event(EventOp::BindVcpu, port as u64, 0);
            DATA_PORTS.remove(port);
        }
        close_port(wake);
        WAKE_PORT.store(0, Ordering::Release);
        return Err(error);
    }
    Ok(true)
}

/// Hands port `port` (a back end's just connected, the NIC's) to the
/// data-path vCPU: it notifies that vCPU from now on, and vCPU 0 leaves
/// its events alone. That vCPU is woken, so it serves what the port's
/// back end may already have waiting. Nothing changes with one vCPU.
pub fn adopt(port: u32) {
    if !on_own_vcpu() {
        return;
    }
    DATA_PORTS.insert(port);
    if hypercall::event(EventOp::BindVcpu, port as u64, u64::from(DATA_VCPU)).is_err() {
        DATA_PORTS.remove(port);
    }
    wake();
}

/// Wakes the data-path vCPU (if it runs) to pass over the data paths.
pub fn wake() {
    let port = WAKE_PORT.load(Ordering::Acquire);
    if port != 0 {
        let _ = hypercall::notify(port);
    }
}

/// Closes a back end's port (its back end is no longer in [`DATA`]).
pub fn close_port(port: u32) {
    let _ = hypercall::event(EventOp::Close, port as u64, 0);
    DATA_PORTS.remove(port);
}

/// Takes vCPU 0's pending events from dom0's event page: every pending
/// port but the data-path vCPU's. Returns the bits taken.
pub fn take_vcpu0_events() -> [u64; BITMAP_WORDS] {
    let others = DATA_PORTS.words().map(|word| !word);
    // SAFETY: dom0's shared-info page; vCPU 0's flag and selector are
    // cleared before the bits are taken (`event_page`), each atomically.
    unsafe {
        pv_drivers::event_page::clear_upcall(crate::event_page(), 0);
        pv_drivers::event_page::take_pending_of(crate::event_page(), &others)
    }
}

/// The data-path vCPU: passes over the data paths while there is work,
/// then sleeps until one of its ports fires or `POLL_MS` pass. Started
/// by [`start`] with interrupts off (dom0 takes no upcalls).
extern "C" fn run(_: u64) -> ! {
    // As vCPU 0 does: a guess of 1 MHz when hv did not say.
    let poll = DATA.lock().tsc_khz.max(1000) * POLL_MS;
    loop {
        if DATA.lock().serve() {
            continue;
        }
        let deadline = rdtsc() + poll;
        let _ = hypercall::set_timer(deadline);
        hypercall::block();
        let timer_expired = rdtsc() >= deadline;
        let page = crate::event_page();
        // SAFETY: dom0's registered event page; the flag is cleared before
        // the bits are taken (`hvcore::event_page`), each atomically.
        let fired = unsafe {
            pv_drivers::event_page::clear_upcall(page, DATA_VCPU);
            pv_drivers::event_page::take_pending_of(page, &DATA_PORTS.words())
        };
        DATA.lock().woke(&fired, timer_expired);
    }
}
