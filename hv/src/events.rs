//! Event channel delivery and the `Event`, `Sched` and `Vcpu` hypercalls:
//! the glue between the pure port tables (`hvcore::event`), the domains'
//! event pages and the vCPUs.

use abi::Error;
use abi::event::{EventOp, PORT_COUNT, Virq};
use abi::hypercall::{SchedOp, ShutdownReason, VcpuOp};
use arrayvec::ArrayVec;
use hvcore::event::{self as ports, TableAccess};
use hvcore::event_page::{self, Delivery, EventWords, MASK_OFFSET, upcall_offset};
use hvcore::paging::Access;

use crate::arch::memory as physical;
use crate::hypervisor::Domain;
use crate::hypervisor::Hypervisor;
use hvcore::domain::Ended;
use hvcore::platform::Platform;

/// Port tables of all domains, by id, for the pure binding logic.
pub struct Tables<'a>(pub &'a mut crate::hypervisor::DomainTable);

impl TableAccess for Tables<'_> {
    fn table(&mut self, id: abi::DomainId) -> Option<&mut ports::PortTable> {
        self.0.iter_mut().find(|d| d.id == id && d.ended.is_none()).map(|d| &mut d.events)
    }
}

/// A domain's event page at its host address: each call is one atomic
/// access (the protocol is `hvcore::event_page`).
struct SharedPage(u64);

impl EventWords for SharedPage {
    fn test_and_set_pending(&mut self, port: u32) -> bool {
        physical::atomic_test_and_set_bit(self.0 + (port / 64) as u64 * 8, port % 64)
    }
    fn load_pending(&mut self, word: usize) -> u64 {
        physical::atomic_load(self.0 + word as u64 * 8)
    }
    fn load_mask(&mut self, word: usize) -> u64 {
        physical::atomic_load(self.0 + MASK_OFFSET + word as u64 * 8)
    }
    fn set_mask(&mut self, port: u32, masked: bool) {
        let word = self.0 + MASK_OFFSET + (port / 64) as u64 * 8;
        if masked {
            physical::atomic_test_and_set_bit(word, port % 64);
        } else {
            physical::atomic_test_and_clear_bit(word, port % 64);
        }
    }
    fn test_and_set_upcall(&mut self, vcpu: usize) -> bool {
        physical::atomic_swap(self.0 + upcall_offset(vcpu), 1) != 0
    }
    fn load_upcall(&mut self, vcpu: usize) -> u64 {
        physical::atomic_load(self.0 + upcall_offset(vcpu))
    }
}

/// Marks `port` of domain `index` pending and, if it is unmasked, raises
/// the upcall of the vCPU the port notifies (vCPU 0 if that one is down)
/// and wakes it.
pub fn raise(hv: &mut Hypervisor, index: usize, port: u32) {
    let Some(domain) = hv.domains.get_mut(index) else { return };
    if port as usize >= PORT_COUNT || domain.ended.is_some() {
        return;
    }
    let vcpu = notified_vcpu(domain, port);
    let page = domain.event_page;
    if page == 0 {
        // No page registered: the domain polls; a wake-up is all we can give.
        domain.vcpus[vcpu].blocked = false;
        domain.notify(vcpu);
        return;
    }
    let delivery = event_page::raise(&mut SharedPage(page), port, vcpu, domain.upcall_vector != 0);
    deliver(domain, vcpu, delivery);
}

/// Wakes vCPU `vcpu` and makes its upcall due as `delivery` says; tells
/// its CPU when something changed (no IPI per event of a burst).
fn deliver(domain: &mut Domain, vcpu: usize, delivery: Delivery) {
    if matches!(delivery, Delivery::AlreadyPending | Delivery::Masked) {
        return;
    }
    let woke = core::mem::replace(&mut domain.vcpus[vcpu].blocked, false);
    let upcall = delivery == Delivery::Upcall;
    if upcall {
        domain.vcpus[vcpu].upcall_due = true;
    }
    if woke || upcall {
        domain.notify(vcpu);
    }
}

/// Domain `index` has ended (crashed, shut down) or is being destroyed: its
/// ports are freed, and every port of the others bound to it becomes
/// Closed (`hvcore::event::end_domain`), the connected ones also pending so
/// their owners notice. Done once per domain; later calls do nothing.
pub fn end_channels(hv: &mut Hypervisor, index: usize) {
    let Some(domain) = hv.domains.get_mut(index) else { return };
    if domain.channels_ended {
        return;
    }
    domain.channels_ended = true;
    let id = domain.id;
    let mut own = core::mem::take(&mut domain.events);
    // Each of the ended domain's ports was connected to at most one port,
    // so at most PORT_COUNT ports are notified.
    let mut notified: ArrayVec<(abi::DomainId, u32), PORT_COUNT> = ArrayVec::new();
    let others = hv.domains.iter_mut().filter(|d| d.id != id).map(|d| (d.id, &mut d.events));
    ports::end_domain(&mut own, id, others, |owner, port| {
        let _ = notified.try_push((owner, port));
    });
    for (owner, port) in notified {
        if let Some(owner_index) = hv.index_of(owner) {
            raise(hv, owner_index, port);
        }
    }
}

/// Delivers the device interrupts that arrived: each line's port in the
/// domain that bound it (dom0) becomes pending.
pub fn deliver_device_interrupts(hv: &mut Hypervisor) {
    let lines = crate::arch::ioapic::take_pending();
    if lines == 0 {
        return;
    }
    for line in 0..16u8 {
        if lines & (1 << line) == 0 {
            continue;
        }
        let target = hv
            .domains
            .iter()
            .position(|d| d.privileged)
            .and_then(|index| hv.domains[index].events.pirq_port(line).map(|port| (index, port)));
        if let Some((index, port)) = target {
            raise(hv, index, port);
        }
    }
}

/// Raises virtual IRQ `virq` of vCPU `vcpu` of domain `index` if that
/// vCPU has bound it (each vCPU binds its own: its timer, for one).
pub fn raise_virq(hv: &mut Hypervisor, index: usize, virq: Virq, vcpu: usize) {
    if let Some(port) = hv.domains.get(index).and_then(|d| d.events.virq_port(virq, vcpu)) {
        raise(hv, index, port);
    }
}

/// The vCPU `port` notifies: the one it is bound to, or vCPU 0 if that one
/// is down.
fn notified_vcpu(domain: &Domain, port: u32) -> usize {
    Some(domain.events.notify_vcpu(port)).filter(|&v| v < domain.vcpu_count && domain.vcpus[v].up).unwrap_or(0)
}

/// Blocks vCPU `vcpu` of the domain unless an event is already waiting for
/// it: for vCPU 0 a pending unmasked port, for another its upcall-pending
/// word (set when one of its ports fired).
pub fn block(domain: &mut Domain, vcpu: usize) {
    let page = domain.event_page;
    let waiting = page != 0 && event_page::waiting(&mut SharedPage(page), vcpu, |port| notified_vcpu(domain, port));
    if !waiting {
        let slot = &mut domain.vcpus[vcpu];
        slot.blocked = true;
        slot.reschedule = true;
    }
}

/// Injects the upcall into vCPU `vcpu` (which this CPU runs) if it can take
/// it now, else asks for an exit as soon as it can. Out of line, with the
/// VMCS accessors inlined into it: the run loop's top stays small.
#[inline(never)]
pub fn deliver_upcall(domain: &mut Domain, vcpu: usize) {
    let vector = domain.upcall_vector;
    let slot = &mut domain.vcpus[vcpu];
    let Some(cpu) = slot.vcpu.as_mut() else { return };
    if cpu.interruptible() {
        cpu.inject_interrupt(vector);
        cpu.set_interrupt_window_exiting(false);
        slot.upcall_due = false;
    } else {
        cpu.set_interrupt_window_exiting(true);
    }
}

fn port_argument(value: u64) -> Result<u32, Error> {
    u32::try_from(value).ok().filter(|&p| (p as usize) < PORT_COUNT).ok_or(Error::InvalidArgument)
}

fn domain_argument(value: u64) -> Result<abi::DomainId, Error> {
    abi::DomainId::try_from(value).map_err(|_| Error::InvalidArgument)
}

/// `Hypercall::Event`.
pub fn event_op(hv: &mut Hypervisor, caller: usize, [operation, a1, a2, ..]: [u64; 5]) -> Result<u64, Error> {
    let operation = EventOp::from_number(operation).ok_or(Error::InvalidArgument)?;
    let caller_id = hv.domains[caller].id;
    match operation {
        EventOp::RegisterPage => {
            let vector = u8::try_from(a2).map_err(|_| Error::InvalidArgument)?;
            if vector != 0 && vector < 32 {
                return Err(Error::InvalidArgument);
            }
            if a1 % abi::PAGE_SIZE != 0 {
                return Err(Error::InvalidArgument);
            }
            let domain = &mut hv.domains[caller];
            // The page must be the domain's own RAM: hv keeps its host frame,
            // which stays valid as long as the domain exists.
            let frame = domain.host_frame(a1, Access::READ | Access::WRITE)?;
            if domain.privileged && a1 >= abi::domctl::FOREIGN_WINDOW_BASE {
                return Err(Error::InvalidArgument);
            }
            domain.event_page = frame;
            domain.upcall_vector = vector;
            Ok(0)
        }
        EventOp::AllocUnbound => {
            let remote = domain_argument(a1)?;
            // A domain that ended is gone as far as channels go: a port
            // offered to it now would outlive the Closed ports it left.
            if hv.index_of(remote).is_none_or(|index| hv.domains[index].ended.is_some()) {
                return Err(Error::NotFound);
            }
            hv.domains[caller].events.allocate_unbound(remote).map(u64::from)
        }
        EventOp::BindInterdomain => {
            let remote = domain_argument(a1)?;
            let remote_port = port_argument(a2)?;
            ports::bind_interdomain(&mut Tables(&mut hv.domains), caller_id, remote, remote_port).map(u64::from)
        }
        EventOp::BindVirq => {
            let virq = Virq::from_number(a1).ok_or(Error::InvalidArgument)?;
            let domain = &mut hv.domains[caller];
            let vcpu =
                u8::try_from(a2).ok().filter(|&v| (v as usize) < domain.vcpu_count).ok_or(Error::InvalidArgument)?;
            domain.events.bind_virq(virq, vcpu).map(u64::from)
        }
        EventOp::Send => {
            let port = port_argument(a1)?;
            let domain = &hv.domains[caller];
            if domain.events.binding(port)? == ports::Binding::Ipi {
                // An IPI: pending in the caller's own domain, for its vCPU.
                raise(hv, caller, port);
                return Ok(0);
            }
            // The caller's own table, by its slot (a domain that ended has
            // no channels left to send on).
            if domain.ended.is_some() {
                return Err(Error::NotFound);
            }
            let (target, target_port) = domain.events.send_target(port)?;
            if let Some(index) = hv.index_of(target) {
                raise(hv, index, target_port);
            }
            Ok(0)
        }
        EventOp::Close => {
            let port = port_argument(a1)?;
            let binding = hv.domains[caller].events.binding(port)?;
            ports::close(&mut Tables(&mut hv.domains), caller_id, port)?;
            if let ports::Binding::Pirq(line) = binding {
                crate::arch::ioapic::mask(line);
            }
            Ok(0)
        }
        EventOp::BindPirq => {
            if !hv.domains[caller].privileged {
                return Err(Error::Permission);
            }
            // hv keeps the PIT (0), the cascade (2) and the RTC (8).
            let line =
                u8::try_from(a1).ok().filter(|l| *l < 16 && ![0, 2, 8].contains(l)).ok_or(Error::InvalidArgument)?;
            let port = hv.domains[caller].events.bind_pirq(line)?;
            if !crate::arch::ioapic::unmask(line) {
                let _ = ports::close(&mut Tables(&mut hv.domains), caller_id, port);
                return Err(Error::NotFound);
            }
            Ok(port as u64)
        }
        EventOp::Mask | EventOp::Unmask => {
            let port = port_argument(a1)?;
            let domain = &mut hv.domains[caller];
            let page = domain.event_page;
            if page == 0 {
                return Err(Error::Busy);
            }
            if operation == EventOp::Mask {
                SharedPage(page).set_mask(port, true);
            } else {
                // A level-triggered line hv masked when it fired comes back.
                if let Ok(ports::Binding::Pirq(line)) = domain.events.binding(port) {
                    crate::arch::ioapic::unmask(line);
                }
                // Pending while masked: deliver it now.
                let (vcpu, vector) = (notified_vcpu(domain, port), domain.upcall_vector != 0);
                if let Some(delivery) = event_page::unmask(&mut SharedPage(page), port, vcpu, vector) {
                    deliver(domain, vcpu, delivery);
                }
            }
            Ok(0)
        }
        EventOp::BindVcpu => {
            let port = port_argument(a1)?;
            let domain = &mut hv.domains[caller];
            let vcpu =
                u8::try_from(a2).ok().filter(|&v| (v as usize) < domain.vcpu_count).ok_or(Error::InvalidArgument)?;
            domain.events.bind_vcpu(port, vcpu).map(|()| 0)
        }
        EventOp::BindIpi => {
            let domain = &mut hv.domains[caller];
            let vcpu =
                u8::try_from(a1).ok().filter(|&v| (v as usize) < domain.vcpu_count).ok_or(Error::InvalidArgument)?;
            domain.events.bind_ipi(vcpu).map(u64::from)
        }
        EventOp::Status => {
            let port = port_argument(a1)?;
            hv.domains[caller].events.status(port).map(|status| status.encode())
        }
    }
}

/// `Hypercall::Sched`: acts on the calling vCPU (`Shutdown`: on all).
pub fn sched_op(hv: &mut Hypervisor, caller: usize, [operation, argument, ..]: [u64; 5]) -> Result<u64, Error> {
    let vcpu = crate::arch::smp::current_vcpu();
    let domain = &mut hv.domains[caller];
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
            crate::info!("d{} shut down ({reason:?})", domain.id);
            domain.ended = Some(Ended::Shutdown(reason));
            domain.stop_all();
            Ok(0)
        }
    }
}

/// `Hypercall::Vcpu`: the calling vCPU's timer and id; starting and
/// stopping the domain's other vCPUs.
pub fn vcpu_op(hv: &mut Hypervisor, caller: usize, [operation, a1, a2, ..]: [u64; 5]) -> Result<u64, Error> {
    let me = crate::arch::smp::current_vcpu();
    let count = hv.domains[caller].vcpu_count;
    let target = || usize::try_from(a1).ok().filter(|&vcpu| vcpu < count).ok_or(Error::InvalidArgument);
    match VcpuOp::from_number(operation).ok_or(Error::InvalidArgument)? {
        VcpuOp::SetTimer => {
            // A past deadline fires at the next scheduling decision.
            hv.domains[caller].vcpus[me].timer_deadline = a1;
            Ok(0)
        }
        VcpuOp::Id => Ok(me as u64),
        VcpuOp::Up => {
            let vcpu = target()?;
            let context: abi::domctl::VcpuContext = crate::abi_bytes::read_struct(&hv.domains[caller], a2)?;
            crate::domctl::start_vcpu(hv, caller, vcpu, &context).map(|()| 0)
        }
        VcpuOp::Down => {
            let vcpu = target()?;
            let domain = &mut hv.domains[caller];
            if !domain.vcpus[vcpu].up {
                return Err(Error::NotFound);
            }
            if domain.vcpus.iter().filter(|slot| slot.up).count() == 1 {
                return Err(Error::Busy);
            }
            let slot = &mut domain.vcpus[vcpu];
            slot.up = false;
            slot.blocked = false;
            slot.timer_deadline = 0;
            slot.upcall_due = false;
            if slot.running {
                // Its CPU (this one, if it took itself down) retires it
                // when it lets go of it (`run_slice`).
                slot.reschedule = true;
                slot.notify(false);
            } else if let Some(cpu) = slot.vcpu.take() {
                crate::arch::machine::Machine::release_vcpu(cpu);
            }
            Ok(0)
        }
    }
}
