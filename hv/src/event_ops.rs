//! Event channel delivery and the `Event` and `Sched` hypercalls: the glue
//! between the port tables ([`crate::event`]), the domains' event pages
//! ([`crate::event_page`]) and the vCPUs, over the domain table.
//!
//! Each function runs under the lock of each domain it is given (one
//! domain's, or every domain's for a `DomainTable`); the event pages are
//! shared with the guests, whose every access races with these (the page
//! protocol is `event_page`'s).

use abi::Error;
use abi::event::{BITMAP_WORDS, EventOp, PORT_COUNT, Virq};
use abi::hypercall::{SchedOp, ShutdownReason};
use arrayvec::ArrayVec;

use crate::domain::{Domain, DomainTable, Ended};
use crate::event::{self as ports, TableAccess};
use crate::event_page::{self, Delivery, EventWords, MASK_OFFSET, upcall_offset};
use crate::log_ring::Level;
use crate::paging::Access;
use crate::platform::{Platform, Shared};

/// Port tables of all domains, by id, for the binding logic.
struct Tables<'a, 'd, P: Platform>(&'a mut DomainTable<'d, P>);

impl<P: Platform> TableAccess for Tables<'_, '_, P> {
    fn table(&mut self, id: abi::DomainId) -> Option<&mut ports::PortTable> {
        self.0.iter_mut().find(|d| d.id == id && d.ended.is_none()).map(|d| &mut d.events)
    }
}

/// A domain's event page: each call is one atomic access (the protocol is
/// `event_page`'s).
impl<P: Platform> EventWords for Shared<P> {
    fn test_and_set_pending(&mut self, port: u32) -> bool {
        P::test_and_set_bit(self.0 + (port / 64) as u64 * 8, port % 64)
    }
    fn load_pending(&mut self, word: usize) -> u64 {
        P::load(self.0 + word as u64 * 8)
    }
    fn load_mask(&mut self, word: usize) -> u64 {
        P::load(self.0 + MASK_OFFSET + word as u64 * 8)
    }
    fn set_mask(&mut self, port: u32, masked: bool) {
        let word = self.0 + MASK_OFFSET + (port / 64) as u64 * 8;
        if masked {
            P::test_and_set_bit(word, port % 64);
        } else {
            P::test_and_clear_bit(word, port % 64);
        }
    }
    fn test_and_set_upcall(&mut self, vcpu: usize) -> bool {
        P::swap(self.0 + upcall_offset(vcpu), 1) != 0
    }
    fn load_upcall(&mut self, vcpu: usize) -> u64 {
        P::load(self.0 + upcall_offset(vcpu))
    }
}

/// Xen's event words: the shared-info page and one vCPU's `vcpu_info`
/// (2-level layout: pending and mask bitmaps at 2048 and 2560 of shared
/// info; the vCPU's `evtchn_upcall_pending` at byte 0 and
/// `evtchn_pending_sel` at 8 of its `vcpu_info`). Built for the one vCPU
/// an operation concerns ([`Words::of`]), so the hot path copies one
/// address, not every vCPU's.
pub struct XenWords<P> {
    shared_info: u64,
    /// The vCPU it was built for, and the host address of its `vcpu_info`.
    vcpu: usize,
    vcpu_info: u64,
    machine: core::marker::PhantomData<P>,
}

/// Byte offsets of Xen's pending and mask bitmaps in shared info.
const XEN_PENDING: u64 = 2048;
const XEN_MASK: u64 = 2560;

/// Where a domain's event words are: each layout has code of its own
/// (`event_page` is generic over them), so Mica's page, the hot path of
/// dom0 and its back ends, pays nothing for Xen's.
pub enum Words<P> {
    /// None registered: the domain polls.
    None,
    Mica(Shared<P>),
    Xen(XenWords<P>),
}

impl<P: Platform> Words<P> {
    /// `domain`'s words (Xen's when it placed a shared-info page), for an
    /// operation that concerns vCPU `vcpu` (the only one whose upcall flag
    /// and selector they reach in Xen's layout).
    #[inline]
    pub fn of(domain: &Domain<P>, vcpu: usize) -> Words<P> {
        match (domain.xen_shared_info, domain.event_page) {
            (0, 0) => Words::None,
            (0, page) => Words::Mica(Shared::at(page)),
            (shared_info, _) => {
                let vcpu_info = match domain.xen_vcpu_info.get(vcpu) {
                    Some(&0) | None => shared_info + 64 * vcpu as u64,
                    Some(&registered) => registered,
                };
                Words::Xen(XenWords { shared_info, vcpu, vcpu_info, machine: core::marker::PhantomData })
            }
        }
    }
}

impl<P: Platform> XenWords<P> {
    /// Host address of `vcpu`'s `vcpu_info`: the words were built for it.
    fn vcpu_info(&self, vcpu: usize) -> u64 {
        debug_assert_eq!(vcpu, self.vcpu, "Xen's words reach the vCPU they were built for");
        self.vcpu_info
    }
}

impl<P: Platform> EventWords for XenWords<P> {
    fn test_and_set_pending(&mut self, port: u32) -> bool {
        P::test_and_set_bit(self.shared_info + XEN_PENDING + u64::from(port / 64) * 8, port % 64)
    }
    fn load_pending(&mut self, word: usize) -> u64 {
        P::load(self.shared_info + XEN_PENDING + word as u64 * 8)
    }
    fn load_mask(&mut self, word: usize) -> u64 {
        P::load(self.shared_info + XEN_MASK + word as u64 * 8)
    }
    fn set_mask(&mut self, port: u32, masked: bool) {
        let word = self.shared_info + XEN_MASK + u64::from(port / 64) * 8;
        if masked {
            P::test_and_set_bit(word, port % 64);
        } else {
            P::test_and_clear_bit(word, port % 64);
        }
    }
    // `evtchn_upcall_pending` is byte 0: bit 0 of the word.
    fn test_and_set_upcall(&mut self, vcpu: usize) -> bool {
        P::test_and_set_bit(self.vcpu_info(vcpu), 0)
    }
    fn load_upcall(&mut self, vcpu: usize) -> u64 {
        P::load(self.vcpu_info(vcpu)) & 0xff
    }
    fn test_and_set_selector(&mut self, vcpu: usize, word: usize) -> bool {
        P::test_and_set_bit(self.vcpu_info(vcpu) + 8, word as u32)
    }
}

/// Sets port `port`'s mask bit (`mask`), or clears it and says what the
/// unmask delivers (see `event_page::unmask`).
fn mask_or_unmask(words: &mut impl EventWords, port: u32, mask: bool, vcpu: usize, vector: bool) -> Option<Delivery> {
    if mask {
        words.set_mask(port, true);
        return None;
    }
    event_page::unmask(words, port, vcpu, vector)
}

/// Marks `port` of domain `index` pending and, if it is unmasked, raises
/// the upcall of the vCPU the port notifies (see [`raise_in`]).
pub fn raise<P: Platform>(domains: &mut DomainTable<'_, P>, index: usize, port: u32) {
    if let Some(domain) = domains.get_mut(index) {
        raise_in(domain, port);
    }
}

/// Marks `port` of `domain` pending and, if it is unmasked, raises the
/// upcall of the vCPU the port notifies (vCPU 0 if that one is down) and
/// wakes it. Nothing for a domain that ended.
pub fn raise_in<P: Platform>(domain: &mut Domain<P>, port: u32) {
    raise_inline(domain, port);
}

/// [`raise_in`], inline for the sends' hot path ([`raise_connected`]).
#[inline(always)]
fn raise_inline<P: Platform>(domain: &mut Domain<P>, port: u32) {
    if port as usize >= PORT_COUNT || domain.ended.is_some() {
        return;
    }
    // Already pending or masked: nothing more (which vCPU it notifies is
    // looked up only when it matters; the pending and mask bits are the
    // same words whichever vCPU the words are built for).
    let pending = match &mut Words::of(domain, 0) {
        Words::Mica(page) => event_page::mark_pending(page, port),
        Words::Xen(words) => event_page::mark_pending(words, port),
        Words::None => Ok(()),
    };
    if domain.polling != 0 && pending != Err(Delivery::AlreadyPending) {
        wake_pollers(domain, port);
    }
    if pending.is_err() {
        return;
    }
    let vcpu = notified_vcpu(domain, port);
    let vector = domain.upcall_vector != 0;
    let delivery = match &mut Words::of(domain, vcpu) {
        Words::Mica(page) => event_page::raise_upcall(page, port, vcpu, vector),
        Words::Xen(words) => event_page::raise_upcall(words, port, vcpu, vector),
        Words::None => {
            // No page registered: the domain polls; a wake-up is all we can give.
            domain.vcpus[vcpu].blocked = false;
            domain.notify(vcpu);
            return;
        }
    };
    deliver(domain, vcpu, delivery);
}

/// The end of a [`Call::Raise`]: raises `port` of `domain` if it is still
/// connected to port `from_port` of domain `from` (it may have been closed,
/// or the sender's port closed, since the sender read its binding).
#[inline(always)]
pub fn raise_connected<P: Platform>(domain: &mut Domain<P>, port: u32, from: abi::DomainId, from_port: u32) {
    if let Ok(ports::Binding::Interdomain { remote, remote_port }) = domain.events.binding(port)
        && (remote, remote_port) == (from, from_port)
    {
        raise_inline(domain, port);
    }
}

/// Xen's `sched_op` poll by vCPU `vcpu`: returns at once (true) if one
/// of `ports` is pending; otherwise blocks the vCPU until one becomes
/// pending, masked or not ([`raise_in`]), or the TSC reaches `deadline`
/// (0: no timeout; [`fire_timers`]), and returns false. Ports beyond the
/// table must be left out by the caller.
pub fn poll<P: Platform>(domain: &mut Domain<P>, vcpu: usize, ports: [u64; BITMAP_WORDS], deadline: u64) -> bool {
    let pending = |words: &mut dyn FnMut(usize) -> u64| (0..BITMAP_WORDS).any(|word| words(word) & ports[word] != 0);
    let any = match Words::of(domain, vcpu) {
        Words::Mica(mut page) => pending(&mut |word| page.load_pending(word)),
        Words::Xen(mut words) => pending(&mut |word| words.load_pending(word)),
        Words::None => false,
    };
    if any {
        return true;
    }
    let slot = &mut domain.vcpus[vcpu];
    (slot.poll_ports, slot.poll_deadline) = (ports, deadline);
    (slot.blocked, slot.reschedule) = (true, true);
    domain.polling |= 1 << vcpu;
    false
}

/// Ends vCPU `vcpu`'s poll (its ports and deadline forgotten).
fn end_poll<P: Platform>(domain: &mut Domain<P>, vcpu: usize) {
    let slot = &mut domain.vcpus[vcpu];
    (slot.poll_ports, slot.poll_deadline) = ([0; BITMAP_WORDS], 0);
    domain.polling &= !(1 << vcpu);
}

/// Wakes the vCPUs polling `port`, which just became pending.
#[cold]
fn wake_pollers<P: Platform>(domain: &mut Domain<P>, port: u32) {
    let (word, bit) = (port as usize / 64, 1u64 << (port % 64));
    for vcpu in 0..domain.vcpu_count.min(8) {
        if domain.polling & 1 << vcpu != 0 && domain.vcpus[vcpu].poll_ports[word] & bit != 0 {
            end_poll(domain, vcpu);
            domain.vcpus[vcpu].blocked = false;
            domain.notify(vcpu);
        }
    }
}

/// Wakes vCPU `vcpu` and makes its upcall due as `delivery` says; tells
/// its CPU when something changed (no IPI per event of a burst).
fn deliver<P: Platform>(domain: &mut Domain<P>, vcpu: usize, delivery: Delivery) {
    if matches!(delivery, Delivery::AlreadyPending | Delivery::Masked) {
        return;
    }
    if domain.polling & 1 << vcpu != 0 {
        // Woken by another event: its poll is over too.
        end_poll(domain, vcpu);
    }
    let woke = core::mem::replace(&mut domain.vcpus[vcpu].blocked, false);
    let upcall = delivery == Delivery::Upcall;
    if upcall {
        let slot = &mut domain.vcpus[vcpu];
        (slot.upcall_due, slot.upcall_raised) = (true, true);
    }
    if woke || upcall {
        domain.notify(vcpu);
    }
}

/// Domain `index` has ended (crashed, shut down) or is being destroyed: its
/// ports are freed, and every port of the others bound to it becomes
/// Closed (`hvcore::event::end_domain`), the connected ones also pending so
/// their owners notice. Done once per domain; later calls do nothing.
pub fn end_channels<P: Platform>(domains: &mut DomainTable<'_, P>, index: usize) {
    let Some(domain) = domains.get_mut(index) else { return };
    if domain.channels_ended {
        return;
    }
    domain.channels_ended = true;
    let id = domain.id;
    let mut own = core::mem::take(&mut domain.events);
    // Each of the ended domain's ports was connected to at most one port,
    // so at most PORT_COUNT ports are notified.
    let mut notified: ArrayVec<(abi::DomainId, u32), PORT_COUNT> = ArrayVec::new();
    let others = domains.iter_mut().filter(|d| d.id != id).map(|d| (d.id, &mut d.events));
    ports::end_domain(&mut own, id, others, |owner, port| {
        let _ = notified.try_push((owner, port));
    });
    for (owner, port) in notified {
        if let Some(owner_index) = domains.slot_of(owner) {
            raise(domains, owner_index, port);
        }
    }
}

/// Wakes the vCPUs of `domain` whose timer has expired, raising their
/// timer event (the `Timer` virtual IRQ each vCPU binds for itself), and
/// fires their APICs' timers that are due (`vlapic`). Returns the
/// earliest deadline still pending.
pub fn fire_timers<P: Platform>(domain: &mut Domain<P>, now: u64) -> Option<u64> {
    let mut earliest: Option<u64> = None;
    for vcpu in 0..domain.vcpu_count {
        let polled = domain.vcpus[vcpu].poll_deadline;
        if polled != 0 && polled <= now {
            // A poll that timed out: the vCPU runs again, nothing raised.
            end_poll(domain, vcpu);
            domain.vcpus[vcpu].blocked = false;
            domain.notify(vcpu);
        } else if polled != 0 {
            earliest = Some(earliest.map_or(polled, |e| e.min(polled)));
        }
        let apic = domain.vcpus[vcpu].apic.deadline();
        if apic != 0 {
            if apic <= now {
                crate::vlapic::update(domain, vcpu, now);
            }
            let next = domain.vcpus[vcpu].apic.deadline();
            if next != 0 {
                earliest = Some(earliest.map_or(next, |e| e.min(next)));
            }
        }
        let deadline = domain.vcpus[vcpu].timer_deadline;
        if deadline == 0 {
            continue;
        }
        if deadline <= now {
            let slot = &mut domain.vcpus[vcpu];
            slot.timer_deadline = 0;
            slot.blocked = false;
            domain.notify(vcpu);
            if let Some(port) = domain.events.virq_port(Virq::Timer, vcpu) {
                raise_in(domain, port);
            }
        } else {
            earliest = Some(earliest.map_or(deadline, |e| e.min(deadline)));
        }
    }
    earliest
}

/// The vCPU `port` notifies: the one it is bound to, or vCPU 0 if that one
/// is down.
fn notified_vcpu<P: Platform>(domain: &Domain<P>, port: u32) -> usize {
    Some(domain.events.notify_vcpu(port)).filter(|&v| v < domain.vcpu_count && domain.vcpus[v].up).unwrap_or(0)
}

/// Blocks vCPU `vcpu` of the domain unless an event is already waiting for
/// it: for vCPU 0 a pending unmasked port, for another its upcall-pending
/// word (set when one of its ports fired); or its APIC has an interrupt
/// ready.
pub fn block<P: Platform>(domain: &mut Domain<P>, vcpu: usize) {
    let notified = |port| notified_vcpu(domain, port);
    let waiting = match Words::of(domain, vcpu) {
        Words::Mica(mut page) => event_page::waiting(&mut page, vcpu, notified),
        Words::Xen(mut words) => event_page::waiting(&mut words, vcpu, notified),
        Words::None => false,
    };
    if !waiting && domain.vcpus[vcpu].apic.ready().is_none() {
        let slot = &mut domain.vcpus[vcpu];
        slot.blocked = true;
        slot.reschedule = true;
    }
}

fn port_argument(value: u64) -> Result<u32, Error> {
    u32::try_from(value).ok().filter(|&p| (p as usize) < PORT_COUNT).ok_or(Error::InvalidArgument)
}

fn domain_argument(value: u64) -> Result<abi::DomainId, Error> {
    abi::DomainId::try_from(value).map_err(|_| Error::InvalidArgument)
}

/// What an event hypercall came to on its caller's domain alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// Its result.
    Done(Result<u64, Error>),
    /// A send to another domain: its result is 0 once port `port` of domain
    /// `target` is raised with [`raise_connected`] (from the caller's port
    /// `from`), under that domain's lock.
    Raise { target: abi::DomainId, port: u32, from: u32 },
    /// It concerns the caller and domain `other` alone (a grant copy): it
    /// runs with both locked (`grant_ops::copy`).
    Pair { other: abi::DomainId },
    /// It concerns other domains: [`event_op`] runs it on the whole table.
    Table,
}

/// `Hypercall::Event` on the caller's domain alone (its lock held): every
/// operation but those that bind, close or offer ports between domains.
pub fn event_op_own<P: Platform>(domain: &mut Domain<P>, arguments: [u64; 5]) -> Call {
    own_event(domain, arguments).unwrap_or_else(|error| Call::Done(Err(error)))
}

fn own_event<P: Platform>(domain: &mut Domain<P>, [operation, a1, a2, ..]: [u64; 5]) -> Result<Call, Error> {
    let operation = EventOp::from_number(operation).ok_or(Error::InvalidArgument)?;
    let vcpu_argument = |value: u64, count: usize| {
        u8::try_from(value).ok().filter(|&v| (v as usize) < count).ok_or(Error::InvalidArgument)
    };
    let result = match operation {
        EventOp::RegisterPage => {
            let vector = u8::try_from(a2).map_err(|_| Error::InvalidArgument)?;
            if vector != 0 && vector < 32 || a1 % abi::PAGE_SIZE != 0 {
                return Err(Error::InvalidArgument);
            }
            // The page must be the domain's own RAM: hv keeps its host frame,
            // which stays valid as long as the domain exists.
            let frame = domain.host_frame(a1, Access::READ | Access::WRITE)?;
            if domain.privileged && a1 >= abi::domctl::FOREIGN_WINDOW_BASE {
                return Err(Error::InvalidArgument);
            }
            domain.event_page = frame;
            domain.upcall_vector = vector;
            0
        }
        EventOp::BindVirq => {
            let virq = Virq::from_number(a1).ok_or(Error::InvalidArgument)?;
            domain.events.bind_virq(virq, vcpu_argument(a2, domain.vcpu_count)?)?.into()
        }
        EventOp::Send => return send(domain, port_argument(a1)?),
        EventOp::Mask | EventOp::Unmask => {
            let port = port_argument(a1)?;
            let (vcpu, vector) = (notified_vcpu(domain, port), domain.upcall_vector != 0);
            let mask = operation == EventOp::Mask;
            let words = Words::of(domain, vcpu);
            if matches!(words, Words::None) {
                return Err(Error::Busy);
            }
            // A level-triggered line hv masked when it fired comes back.
            if !mask && let Ok(ports::Binding::Pirq(line)) = domain.events.binding(port) {
                P::unmask_line(line);
            }
            let delivery = match words {
                Words::Mica(mut page) => mask_or_unmask(&mut page, port, mask, vcpu, vector),
                Words::Xen(mut words) => mask_or_unmask(&mut words, port, mask, vcpu, vector),
                Words::None => None,
            };
            // Pending while masked: delivered now.
            if let Some(delivery) = delivery {
                deliver(domain, vcpu, delivery);
            }
            0
        }
        EventOp::BindVcpu => {
            let port = port_argument(a1)?;
            domain.events.bind_vcpu(port, vcpu_argument(a2, domain.vcpu_count)?)?;
            0
        }
        EventOp::BindIpi => domain.events.bind_ipi(vcpu_argument(a1, domain.vcpu_count)?)?.into(),
        EventOp::Status => domain.events.status(port_argument(a1)?)?.encode(),
        EventOp::AllocUnbound | EventOp::BindInterdomain | EventOp::Close | EventOp::BindPirq => {
            return Ok(Call::Table);
        }
    };
    Ok(Call::Done(Ok(result)))
}

/// A send on port `port` of `domain` (Mica's `EventOp::Send`, Xen's
/// `EVTCHNOP_send`): an IPI or a loopback channel is raised here; a
/// channel to another domain comes back as [`Call::Raise`], for the caller
/// to finish under that domain's lock.
#[inline(always)]
pub fn send<P: Platform>(domain: &mut Domain<P>, port: u32) -> Result<Call, Error> {
    match domain.events.binding(port)? {
        // A domain that ended has no channels left to send on.
        _ if domain.ended.is_some() => Err(Error::NotFound),
        ports::Binding::Interdomain { remote, remote_port } if remote != domain.id => {
            Ok(Call::Raise { target: remote, port: remote_port, from: port })
        }
        // A loopback channel: its other end is under the same lock.
        ports::Binding::Interdomain { remote_port, .. } => {
            raise_in(domain, remote_port);
            Ok(Call::Done(Ok(0)))
        }
        // An IPI: pending in the caller's own domain, for its vCPU.
        ports::Binding::Ipi => {
            raise_in(domain, port);
            Ok(Call::Done(Ok(0)))
        }
        _ => domain.events.send_target(port).map(|_| Call::Done(Ok(0))),
    }
}

/// `Hypercall::Event` with every domain at hand.
pub fn event_op<P: Platform>(
    domains: &mut DomainTable<'_, P>,
    caller: usize,
    arguments @ [operation, a1, a2, ..]: [u64; 5],
) -> Result<u64, Error> {
    let caller_id = domains[caller].id;
    match EventOp::from_number(operation) {
        Some(EventOp::AllocUnbound) => {
            let remote = domain_argument(a1)?;
            // A domain that ended is gone as far as channels go: a port
            // offered to it now would outlive the Closed ports it left.
            if domains.slot_of(remote).is_none_or(|index| domains[index].ended.is_some()) {
                return Err(Error::NotFound);
            }
            domains[caller].events.allocate_unbound(remote).map(u64::from)
        }
        Some(EventOp::BindInterdomain) => {
            let remote = domain_argument(a1)?;
            let remote_port = port_argument(a2)?;
            ports::bind_interdomain(&mut Tables(domains), caller_id, remote, remote_port).map(u64::from)
        }
        Some(EventOp::Close) => {
            let port = port_argument(a1)?;
            let binding = domains[caller].events.binding(port)?;
            ports::close(&mut Tables(domains), caller_id, port)?;
            if let ports::Binding::Pirq(line) = binding {
                P::mask_line(line);
            }
            Ok(0)
        }
        Some(EventOp::BindPirq) => {
            if !domains[caller].privileged {
                return Err(Error::Permission);
            }
            // hv keeps the PIT (0), the cascade (2) and the RTC (8).
            let line =
                u8::try_from(a1).ok().filter(|l| *l < 16 && ![0, 2, 8].contains(l)).ok_or(Error::InvalidArgument)?;
            let port = domains[caller].events.bind_pirq(line)?;
            if !P::unmask_line(line) {
                let _ = ports::close(&mut Tables(domains), caller_id, port);
                return Err(Error::NotFound);
            }
            Ok(port as u64)
        }
        _ => match event_op_own(&mut domains[caller], arguments) {
            Call::Done(result) => result,
            Call::Raise { target, port, from } => {
                if let Some(index) = domains.slot_of(target) {
                    raise_connected(&mut domains[index], port, caller_id, from);
                }
                Ok(0)
            }
            Call::Pair { .. } | Call::Table => Err(Error::InvalidArgument),
        },
    }
}

/// `Hypercall::Sched`: acts on the calling vCPU (`Shutdown`: on all).
pub fn sched_op<P: Platform>(domain: &mut Domain<P>, [operation, argument, ..]: [u64; 5]) -> Result<u64, Error> {
    let vcpu = P::current_vcpu();
    match SchedOp::from_number(operation).ok_or(Error::InvalidArgument)? {
        SchedOp::Yield => {
            domain.vcpus[vcpu].reschedule = true;
            Ok(0)
        }
        SchedOp::Block => {
            block(domain, vcpu);
            Ok(0)
        }
        SchedOp::Shutdown => {
            let reason = ShutdownReason::from_number(argument).ok_or(Error::InvalidArgument)?;
            if domain.privileged {
                // dom0 shutting down is the machine shutting down.
                return Err(Error::Permission);
            }
            P::log(Level::Info, format_args!("d{} shut down ({reason:?})", domain.id));
            domain.ended = Some(Ended::Shutdown(reason));
            domain.stop_all();
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_platform::{self as machine, Fake};
    use abi::event::{PortState, PortStatus};

    /// Guest-physical address of each test domain's event page.
    const EVENT_PAGE: u64 = 0x2000;
    const VECTOR: u64 = 0x40;

    /// A domain with 4 pages of RAM from 0, `vcpus` vCPUs up, its event
    /// page registered with an upcall vector; returns its slot.
    fn domain(domains: &mut DomainTable<'static, Fake>, id: abi::DomainId, privileged: bool, vcpus: usize) -> usize {
        let mut domain = Domain::<Fake>::new(id, privileged, 16).unwrap();
        domain.populate(0, 4).unwrap();
        domain.vcpu_count = vcpus;
        for slot in &mut domain.vcpus[..vcpus] {
            slot.up = true;
        }
        domain.paused = false;
        let slot = domains.insert(domain).ok().unwrap();
        call(domains, slot, EventOp::RegisterPage, EVENT_PAGE, VECTOR).unwrap();
        slot
    }

    fn call(
        domains: &mut DomainTable<'static, Fake>,
        caller: usize,
        op: EventOp,
        a1: u64,
        a2: u64,
    ) -> Result<u64, Error> {
        event_op(domains, caller, [op as u64, a1, a2, 0, 0])
    }

    /// Word `offset` of the domain's event page, read as the guest would.
    fn page_word(domains: &DomainTable<'static, Fake>, slot: usize, offset: u64) -> u64 {
        let mut bytes = [0; 8];
        domains[slot].read_guest(EVENT_PAGE + offset, &mut bytes).unwrap();
        u64::from_le_bytes(bytes)
    }

    fn pending(domains: &DomainTable<'static, Fake>, slot: usize, port: u64) -> bool {
        page_word(domains, slot, port / 64 * 8) & (1 << (port % 64)) != 0
    }

    fn status(domains: &mut DomainTable<'static, Fake>, slot: usize, port: u64) -> PortStatus {
        PortStatus::decode(call(domains, slot, EventOp::Status, port, 0).unwrap()).unwrap()
    }

    /// Two connected domains: (table, d1's slot, d1's port, d2's slot, d2's port).
    fn connected() -> (DomainTable<'static, Fake>, usize, u64, usize, u64) {
        let mut domains = crate::domain::tests::table();
        let one = domain(&mut domains, 1, false, 1);
        let two = domain(&mut domains, 2, false, 1);
        let offered = call(&mut domains, one, EventOp::AllocUnbound, 2, 0).unwrap();
        let bound = call(&mut domains, two, EventOp::BindInterdomain, 1, offered).unwrap();
        (domains, one, offered, two, bound)
    }

    #[test]
    fn a_send_reaches_the_other_end_and_raises_its_upcall() {
        let (mut domains, one, offered, two, bound) = connected();
        assert_eq!(status(&mut domains, two, bound).state, PortState::Interdomain);
        call(&mut domains, two, EventOp::Send, bound, 0).unwrap();
        assert!(pending(&domains, one, offered));
        assert!(!pending(&domains, two, bound));
        assert_eq!(page_word(&domains, one, upcall_offset(0)), 1);
        assert!(domains[one].vcpus[0].upcall_due);
        // Not running anywhere, runnable: an idle CPU is woken, its own
        // (where it last ran) first.
        assert_eq!(machine::with(|m| m.idle_wakes.clone()), [domains[one].vcpus[0].last_cpu as usize]);
        // A second send while pending changes nothing and tells nobody.
        call(&mut domains, two, EventOp::Send, bound, 0).unwrap();
        assert_eq!(machine::with(|m| m.idle_wakes.len()), 1);
    }

    #[test]
    fn an_event_for_a_vcpu_running_on_another_cpu_kicks_that_cpu() {
        let (mut domains, one, offered, two, bound) = connected();
        let slot = &mut domains[one].vcpus[0];
        slot.running = true;
        slot.last_cpu = 3;
        call(&mut domains, two, EventOp::Send, bound, 0).unwrap();
        assert!(pending(&domains, one, offered));
        assert_eq!(machine::with(|m| m.kicks.clone()), [3]);
    }

    #[test]
    fn a_masked_port_is_delivered_when_unmasked() {
        let (mut domains, one, offered, two, bound) = connected();
        call(&mut domains, one, EventOp::Mask, offered, 0).unwrap();
        call(&mut domains, two, EventOp::Send, bound, 0).unwrap();
        assert!(pending(&domains, one, offered));
        assert!(!domains[one].vcpus[0].upcall_due);
        call(&mut domains, one, EventOp::Unmask, offered, 0).unwrap();
        assert!(domains[one].vcpus[0].upcall_due);
    }

    #[test]
    fn a_blocked_vcpu_wakes_on_an_event_and_blocks_only_with_none_waiting() {
        let (mut domains, one, offered, two, bound) = connected();
        block(&mut domains[one], 0);
        assert!(domains[one].vcpus[0].blocked && domains[one].vcpus[0].reschedule);
        call(&mut domains, two, EventOp::Send, bound, 0).unwrap();
        assert!(!domains[one].vcpus[0].blocked);
        // The port is still pending: blocking again returns at once.
        domains[one].vcpus[0].reschedule = false;
        block(&mut domains[one], 0);
        assert!(!domains[one].vcpus[0].blocked);
        assert!(pending(&domains, one, offered));
    }

    #[test]
    fn closing_one_end_frees_it_and_later_sends_fail() {
        let (mut domains, one, offered, two, bound) = connected();
        call(&mut domains, one, EventOp::Close, offered, 0).unwrap();
        assert_eq!(status(&mut domains, one, offered).state, PortState::Free);
        assert!(call(&mut domains, two, EventOp::Send, bound, 0).is_err());
        assert!(!pending(&domains, one, offered));
        assert_eq!(call(&mut domains, one, EventOp::Send, offered, 0), Err(Error::NotFound));
    }

    #[test]
    fn a_domain_that_ends_leaves_its_peers_ports_closed_and_pending() {
        let (mut domains, one, _, two, bound) = connected();
        domains[one].ended = Some(Ended::Crashed);
        end_channels(&mut domains, one);
        let status = status(&mut domains, two, bound);
        assert_eq!((status.state, status.remote_domain), (PortState::Closed, 1));
        assert!(pending(&domains, two, bound));
        assert_eq!(call(&mut domains, two, EventOp::Send, bound, 0), Err(Error::Closed));
        // Nothing can be offered to, or sent by, the domain that ended.
        assert_eq!(call(&mut domains, two, EventOp::AllocUnbound, 1, 0), Err(Error::NotFound));
        // Ending twice notifies nobody again.
        domains[two].write_guest(EVENT_PAGE, &[0; 8]).unwrap();
        end_channels(&mut domains, one);
        assert!(!pending(&domains, two, bound));
    }

    #[test]
    fn an_ipi_reaches_the_vcpu_it_names_and_wakes_it() {
        let mut domains = crate::domain::tests::table();
        let slot = domain(&mut domains, 1, false, 2);
        let port = call(&mut domains, slot, EventOp::BindIpi, 1, 0).unwrap();
        domains[slot].vcpus[1].blocked = true;
        call(&mut domains, slot, EventOp::Send, port, 0).unwrap();
        assert!(pending(&domains, slot, port));
        assert_eq!(page_word(&domains, slot, upcall_offset(1)), 1);
        assert_eq!(page_word(&domains, slot, upcall_offset(0)), 0);
        assert!(!domains[slot].vcpus[1].blocked && domains[slot].vcpus[1].upcall_due);
        assert!(!domains[slot].vcpus[0].upcall_due);
        // A vCPU the domain does not have is refused.
        assert_eq!(call(&mut domains, slot, EventOp::BindIpi, 2, 0), Err(Error::InvalidArgument));
        // Taken down, its ports notify vCPU 0.
        let second = call(&mut domains, slot, EventOp::BindIpi, 1, 0).unwrap();
        domains[slot].vcpus[1].up = false;
        call(&mut domains, slot, EventOp::Send, second, 0).unwrap();
        assert!(domains[slot].vcpus[0].upcall_due);
    }

    #[test]
    fn physical_lines_are_dom0s_and_a_missing_line_is_refused() {
        let mut domains = crate::domain::tests::table();
        let dom0 = domain(&mut domains, 0, true, 1);
        let guest = domain(&mut domains, 1, false, 1);
        assert_eq!(call(&mut domains, guest, EventOp::BindPirq, 4, 0), Err(Error::Permission));
        for kept in [0, 2, 8, 16] {
            assert_eq!(call(&mut domains, dom0, EventOp::BindPirq, kept, 0), Err(Error::InvalidArgument));
        }
        machine::with(|m| m.missing_lines.push(5));
        assert_eq!(call(&mut domains, dom0, EventOp::BindPirq, 5, 0), Err(Error::NotFound));
        let port = call(&mut domains, dom0, EventOp::BindPirq, 4, 0).unwrap();
        assert_eq!(status(&mut domains, dom0, port).state, PortState::Pirq);
        // The refused line's port was given back: the next bind reuses it.
        assert_eq!(call(&mut domains, dom0, EventOp::BindPirq, 6, 0).unwrap(), port + 1);
        call(&mut domains, dom0, EventOp::Close, port, 0).unwrap();
        assert_eq!(machine::with(|m| m.masked_lines.clone()), [4]);
    }

    #[test]
    fn the_event_page_must_be_the_callers_aligned_ram_and_the_vector_an_interrupt() {
        let mut domains = crate::domain::tests::table();
        let slot = domain(&mut domains, 1, false, 1);
        for (address, vector, error) in [
            (0x2001, VECTOR, Error::InvalidArgument),
            (0x2000, 31, Error::InvalidArgument),
            (0x2000, 256, Error::InvalidArgument),
            (0x10_0000, VECTOR, Error::BadAddress),
        ] {
            assert_eq!(call(&mut domains, slot, EventOp::RegisterPage, address, vector), Err(error));
        }
        assert_eq!(call(&mut domains, slot, EventOp::RegisterPage, 0x3000, 0), Ok(0));
        assert_eq!(event_op(&mut domains, slot, [99, 0, 0, 0, 0]), Err(Error::InvalidArgument));
    }

    #[test]
    fn a_shutdown_stops_every_vcpu_once_and_dom0_cannot_shut_down() {
        let mut domains = crate::domain::tests::table();
        let dom0 = domain(&mut domains, 0, true, 1);
        let guest = domain(&mut domains, 1, false, 2);
        let shutdown = |domains: &mut DomainTable<'static, Fake>, slot| {
            sched_op(&mut domains[slot], [SchedOp::Shutdown as u64, ShutdownReason::Reboot as u64, 0, 0, 0])
        };
        assert_eq!(shutdown(&mut domains, dom0), Err(Error::Permission));
        shutdown(&mut domains, guest).unwrap();
        assert_eq!(domains[guest].ended, Some(Ended::Shutdown(ShutdownReason::Reboot)));
        assert!(domains[guest].vcpus[..2].iter().all(|slot| slot.reschedule));
        assert!(machine::with(|m| m.log.iter().any(|line| line.contains("d1 shut down (Reboot)"))));
    }

    #[test]
    fn a_send_lands_only_while_its_channel_stays_connected() {
        let (mut domains, one, offered, two, bound) = connected();
        let send = [EventOp::Send as u64, bound, 0, 0, 0];
        let Call::Raise { target, port, from } = event_op_own(&mut domains[two], send) else { panic!("not a raise") };
        assert_eq!((target, u64::from(port), u64::from(from)), (1, offered, bound));
        raise_connected(&mut domains[one], port, 2, from);
        assert!(pending(&domains, one, offered));
        domains[one].write_guest(EVENT_PAGE, &[0; 8]).unwrap();
        // The receiver closes its end (on another CPU) before the next
        // raise lands, and the port number is reused for an IPI: the
        // stale raise must not make the IPI pending.
        call(&mut domains, one, EventOp::Close, offered, 0).unwrap();
        assert_eq!(call(&mut domains, one, EventOp::BindIpi, 0, 0), Ok(offered));
        raise_connected(&mut domains[one], port, 2, from);
        assert!(!pending(&domains, one, offered));
    }

    /// A send runs in two steps under two different locks (its binding read
    /// under the sender's, the raise under the receiver's), while the
    /// receiver may close its port and reuse the number in between. In
    /// every interleaving the raise lands exactly when the channel was
    /// still connected at that moment, and never on the reused port.
    #[test]
    fn a_send_racing_a_close_and_reuse_lands_only_while_connected_in_every_interleaving() {
        // Steps: 0 = read the binding, 1 = raise; 2 = close, 3 = rebind the port as an IPI.
        let orders = [[0, 1, 2, 3], [0, 2, 1, 3], [0, 2, 3, 1], [2, 0, 1, 3], [2, 0, 3, 1], [2, 3, 0, 1]];
        for order in orders {
            let (mut domains, one, offered, two, bound) = connected();
            let mut call = None;
            let mut raised_while_connected = false;
            for step in order {
                match step {
                    0 => call = Some(event_op_own(&mut domains[two], [EventOp::Send as u64, bound, 0, 0, 0])),
                    1 => {
                        if let Some(Call::Raise { port, from, .. }) = call {
                            raised_while_connected = domains[one].events.binding(port)
                                == Ok(ports::Binding::Interdomain { remote: 2, remote_port: from });
                            raise_connected(&mut domains[one], port, 2, from);
                        }
                    }
                    2 => assert_eq!(super::tests::call(&mut domains, one, EventOp::Close, offered, 0), Ok(0)),
                    _ => assert_eq!(super::tests::call(&mut domains, one, EventOp::BindIpi, 0, 0), Ok(offered)),
                };
            }
            assert_eq!(pending(&domains, one, offered), raised_while_connected, "order {order:?}");
            // A send that read the binding after the close was refused.
            if order.iter().position(|&s| s == 2) < order.iter().position(|&s| s == 0) {
                assert_eq!(call, Some(Call::Done(Err(Error::Busy))), "order {order:?}");
            }
        }
    }

    #[test]
    fn a_due_timer_wakes_its_vcpu_and_raises_its_own_port_only() {
        let mut domains = crate::domain::tests::table();
        let slot = domain(&mut domains, 1, false, 2);
        let timer_of = |domains: &mut DomainTable<'static, Fake>, vcpu| {
            call(domains, slot, EventOp::BindVirq, Virq::Timer as u64, vcpu).unwrap()
        };
        let (port0, port1) = (timer_of(&mut domains, 0), timer_of(&mut domains, 1));
        let vcpus = &mut domains[slot].vcpus;
        (vcpus[0].timer_deadline, vcpus[0].blocked) = (100, true);
        (vcpus[1].timer_deadline, vcpus[1].blocked) = (300, true);
        assert_eq!(fire_timers(&mut domains[slot], 99), Some(100));
        assert!(!pending(&domains, slot, port0));
        assert_eq!(fire_timers(&mut domains[slot], 200), Some(300));
        assert!(pending(&domains, slot, port0) && !pending(&domains, slot, port1));
        let vcpus = &domains[slot].vcpus;
        assert!(!vcpus[0].blocked && vcpus[0].timer_deadline == 0 && vcpus[0].upcall_due);
        assert!(vcpus[1].blocked && !vcpus[1].upcall_due);
        assert_eq!(fire_timers(&mut domains[slot], 300), None);
        assert!(pending(&domains, slot, port1) && domains[slot].vcpus[1].upcall_due);
    }

    #[test]
    fn a_loopback_send_is_raised_under_the_one_lock() {
        let mut domains = crate::domain::tests::table();
        let slot = domain(&mut domains, 0, true, 1);
        let offered = call(&mut domains, slot, EventOp::AllocUnbound, 0, 0).unwrap();
        let bound = call(&mut domains, slot, EventOp::BindInterdomain, 0, offered).unwrap();
        let send = [EventOp::Send as u64, bound, 0, 0, 0];
        assert_eq!(event_op_own(&mut domains[slot], send), Call::Done(Ok(0)));
        assert!(pending(&domains, slot, offered) && !pending(&domains, slot, bound));
    }
}
