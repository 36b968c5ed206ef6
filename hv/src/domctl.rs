//! Domain control (`Hypercall::DomCtl`): how dom0 creates, builds, runs and
//! destroys guests. Every operation checks the caller is dom0, validates
//! every argument, and leaves nothing half-done on error. Also hv's state
//! besides the domains ([`State`]) and the view of everything locked that
//! work across domains takes ([`Hypervisor`]).

use abi::domctl::{
    COPY_MAX, DomCtlOp, FOREIGN_SHARE_PAGES, FOREIGN_WINDOW_BASE, FOREIGN_WINDOW_PAGES, INITIAL_GDT, MAX_WEIGHT,
    VcpuContext,
};
use abi::{DomainId, Error};
use spin::mutex::TicketMutexGuard;
use zerocopy::IntoBytes;

use crate::domain::{Domain, DomainTable, MAX_DOMAINS, MAX_VCPUS, sched_key};
use crate::foreign::ForeignWindow;
use crate::grant_ops::Grants;
use crate::log_ring::Level;
use crate::platform::{Platform, StartRegisters, VcpuSetup};

/// Everything hv knows besides the domains, under hv's table lock.
pub struct State {
    pub boot_tsc: u64,
    /// Pages reserved for hv at boot (its image and the frame bitmap);
    /// frames it allocates later (tables, VMCSs) are counted on top.
    pub reserved_pages: u64,
    /// The id the next created domain gets (ids are not reused soon).
    pub next_domain_id: DomainId,
    /// What dom0 has mapped in its foreign window, and of whom.
    pub foreign: ForeignWindow<MAX_DOMAINS>,
}

impl State {
    /// The state before boot fills it in.
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        State { boot_tsc: 0, reserved_pages: 0, next_domain_id: 1, foreign: ForeignWindow::with_abi_share() }
    }
}

/// hv's state with every domain locked: the table lock, then each domain.
pub struct Hypervisor<'a, P: Platform> {
    pub state: TicketMutexGuard<'a, State>,
    pub domains: DomainTable<'a, P>,
}

impl<'d, P: Platform> Hypervisor<'d, P> {
    /// What the grant code works on.
    pub fn grants(&mut self) -> Grants<'_, 'd, P> {
        Grants { domains: &mut self.domains, foreign: &mut self.state.foreign }
    }
}

/// `Hypercall::DomCtl`.
pub fn domctl<P: Platform>(
    hv: &mut Hypervisor<P>,
    caller: usize,
    [operation, a1, a2, a3, a4]: [u64; 5],
) -> Result<u64, Error> {
    if !hv.domains[caller].privileged {
        return Err(Error::Permission);
    }
    let operation = DomCtlOp::from_number(operation).ok_or(Error::InvalidArgument)?;
    if operation == DomCtlOp::Create {
        return create(hv, a1, a2);
    }
    if operation == DomCtlOp::UnmapForeign {
        return crate::grant_ops::unmap_foreign(&mut hv.grants(), caller, a2);
    }
    let id = DomainId::try_from(a1).map_err(|_| Error::InvalidArgument)?;
    if operation == DomCtlOp::ListDomains {
        // `a1` is where the list starts: no domain need have that id.
        return list_domains(hv, caller, id, a2, a3);
    }
    let target = hv.domains.slot_of(id).ok_or(Error::NotFound)?;
    // dom0 itself can be listed and scheduled, but not destroyed, paused or built.
    let is_guest = !hv.domains[target].privileged;
    let guest_only = || if is_guest { Ok(()) } else { Err(Error::InvalidArgument) };
    match operation {
        // These were answered above.
        DomCtlOp::Create | DomCtlOp::UnmapForeign | DomCtlOp::ListDomains => Err(Error::InvalidArgument),
        DomCtlOp::Destroy => {
            guest_only()?;
            if stopped_elsewhere(hv, caller, target) {
                destroy(hv, target);
            }
            Ok(0)
        }
        DomCtlOp::Pause => {
            guest_only()?;
            let domain = &mut hv.domains[target];
            domain.paused = true;
            domain.stop_all();
            Ok(0)
        }
        DomCtlOp::Unpause => {
            guest_only()?;
            let domain = &mut hv.domains[target];
            if !domain.has_vcpu() {
                return Err(Error::Busy);
            }
            domain.paused = false;
            domain.notify_all();
            Ok(0)
        }
        DomCtlOp::PopulateMemory => {
            guest_only()?;
            hv.domains[target].populate(a2, a3)
        }
        DomCtlOp::CopyToGuest => {
            guest_only()?;
            copy_to_guest(hv, caller, target, a2, a3, a4)
        }
        DomCtlOp::SetVcpuContext => {
            guest_only()?;
            let context: VcpuContext = hv.domains[caller].read_struct(a2)?;
            start_vcpu(&mut hv.domains[target], target, 0, &context).map(|()| 0)
        }
        DomCtlOp::SetScheduling => {
            let weight =
                u32::try_from(a2).ok().filter(|w| (1..=MAX_WEIGHT).contains(w)).ok_or(Error::InvalidArgument)?;
            // The cap is in percent of one CPU for the whole domain: at most
            // 100 per vCPU (150 = one and a half CPUs).
            let most = 100 * hv.domains[target].vcpu_count as u64;
            let cap = u32::try_from(a3).ok().filter(|&c| u64::from(c) <= most).ok_or(Error::InvalidArgument)?;
            P::scheduler().lock().set_group_params(id, weight, cap).map_err(|_| Error::InvalidArgument)?;
            let domain = &mut hv.domains[target];
            domain.weight = weight;
            domain.cap = cap;
            Ok(0)
        }
        DomCtlOp::MapForeign => {
            guest_only()?;
            crate::grant_ops::map_foreign(&mut hv.grants(), caller, target, a2, a3)
        }
        DomCtlOp::SetMaxMemory => {
            let domain = &mut hv.domains[target];
            if a2 < domain.current_pages {
                return Err(Error::Busy);
            }
            domain.max_pages = a2;
            Ok(0)
        }
        DomCtlOp::GetVcpuInfo => {
            let vcpu = u32::try_from(a2).map_err(|_| Error::NotFound)?;
            let info = hv.domains[target].vcpu_info(vcpu).ok_or(Error::NotFound)?;
            hv.domains[caller].write_guest(a3, info.as_bytes()).map(|()| 0)
        }
        DomCtlOp::SetAffinity => set_affinity(hv, target, a2, a3),
    }
}

fn create<P: Platform>(hv: &mut Hypervisor<P>, max_pages: u64, vcpus: u64) -> Result<u64, Error> {
    if hv.domains.count() == MAX_DOMAINS {
        return Err(Error::Busy);
    }
    let vcpus = if vcpus == 0 { 1 } else { vcpus };
    if max_pages == 0 || max_pages > P::total_pages() || vcpus > MAX_VCPUS as u64 {
        return Err(Error::InvalidArgument);
    }
    // Ids count up (1..=32767, then wrap), skipping ids in use, so a stale
    // id in dom0's tools rarely names a new domain.
    let mut id = hv.state.next_domain_id;
    while id == abi::DOM0 || hv.domains.slot_of(id).is_some() {
        id = if id >= 32767 { 1 } else { id + 1 };
    }
    let mut domain = Domain::new(id, false, max_pages)?;
    domain.vcpu_count = vcpus as usize;
    if let Err(domain) = add_to_scheduler(hv, domain) {
        domain.tear_down();
        return Err(Error::Busy);
    }
    hv.state.next_domain_id = if id >= 32767 { 1 } else { id + 1 };
    P::log(Level::Info, format_args!("d{id} created (at most {} KiB, {vcpus} vCPUs)", max_pages * 4));
    const _: () = assert!(MAX_DOMAINS < 32767);
    Ok(id as u64)
}

/// Enters each of `domain`'s vCPUs in the scheduler and the domain in the
/// table (all or nothing; the domain comes back on failure).
#[allow(clippy::result_large_err)]
pub fn add_to_scheduler<P: Platform>(hv: &mut Hypervisor<P>, domain: Domain<P>) -> Result<(), Domain<P>> {
    let id = domain.id;
    // Each vCPU is an entry; a domain's entries form one group, which has
    // the domain's weight and cap (shared among its active vCPUs).
    for vcpu in 0..domain.vcpu_count {
        let key = sched_key(id, vcpu);
        let mut scheduler = P::scheduler().lock();
        if scheduler.add(key, domain.weight).is_err() || scheduler.set_group(key, id).is_err() {
            drop(scheduler);
            remove_from_scheduler::<P>(id);
            return Err(domain);
        }
    }
    if P::scheduler().lock().set_group_params(id, domain.weight, domain.cap).is_err() {
        remove_from_scheduler::<P>(id);
        return Err(domain);
    }
    if let Err(domain) = hv.domains.insert(domain) {
        remove_from_scheduler::<P>(id);
        return Err(domain);
    }
    Ok(())
}

/// Takes every vCPU of domain `id` out of the scheduler.
fn remove_from_scheduler<P: Platform>(id: DomainId) {
    let mut scheduler = P::scheduler().lock();
    for vcpu in 0..MAX_VCPUS {
        let _ = scheduler.remove(sched_key(id, vcpu));
    }
}

/// Whether domain `target` is off every CPU, so it can be taken apart. If
/// another CPU runs it, that CPU is told to stop it (paused, kicked) and
/// the caller's hypercall is restarted (`Domain::restart_call`): it runs
/// again once the caller is next entered, by which time the kicked CPU has
/// let go of it (a kick takes it out of the guest at once).
fn stopped_elsewhere<P: Platform>(hv: &mut Hypervisor<P>, caller: usize, target: usize) -> bool {
    let domain = &mut hv.domains[target];
    if !domain.running() {
        return true;
    }
    domain.paused = true;
    domain.stop_all();
    restart(&mut hv.domains[caller]);
    false
}

/// Has the caller's current hypercall run again when its vCPU is next
/// entered, and that vCPU leave its CPU now (the call waits for another
/// CPU: see `VcpuSlot::restart_call`).
pub(crate) fn restart<P: Platform>(caller: &mut Domain<P>) {
    if let Some(vcpu) = caller.current_vcpu() {
        let slot = &mut caller.vcpus[vcpu];
        slot.restart_call = true;
        slot.reschedule = true;
    }
}

/// Removes domain `target` and returns everything it had.
pub fn destroy<P: Platform>(hv: &mut Hypervisor<P>, target: usize) {
    let id = hv.domains[target].id;
    // 1. Every mapping of its pages goes first, so no frame is freed
    //    while mapped, and the grants it mapped are released.
    crate::grant_ops::end_domain(&mut hv.grants(), target);
    // 2. Its event channels end; peers see them Closed (if it crashed or
    //    shut down, this happened then).
    crate::event_ops::end_channels(&mut hv.domains, target);
    // 3. The scheduler forgets it; its frames, tables and VMCSs are freed
    //    (no CPU holds its registers: each saves them when it lets go).
    remove_from_scheduler::<P>(id);
    let Some(domain) = hv.domains.remove(target) else { return };
    let pages = domain.current_pages;
    domain.tear_down();
    P::log(Level::Info, format_args!("d{id} destroyed, {} KiB returned", pages * 4));
}

fn copy_to_guest<P: Platform>(
    hv: &mut Hypervisor<P>,
    caller: usize,
    target: usize,
    destination: u64,
    source: u64,
    length: u64,
) -> Result<u64, Error> {
    if length > COPY_MAX {
        return Err(Error::InvalidArgument);
    }
    let mut buffer = [0u8; abi::PAGE_SIZE as usize];
    let mut done = 0;
    while done < length {
        let piece = (length - done).min(buffer.len() as u64) as usize;
        let source_address = source.checked_add(done).ok_or(Error::BadAddress)?;
        let destination_address = destination.checked_add(done).ok_or(Error::BadAddress)?;
        hv.domains[caller].read_guest(source_address, &mut buffer[..piece])?;
        hv.domains[target].write_guest(destination_address, &buffer[..piece])?;
        done += piece as u64;
    }
    Ok(done)
}

/// Creates vCPU `vcpu` of `domain` (in slot `target`) from `context` (checked here:
/// canonical addresses, a page-aligned CR3 in the domain's RAM range, the
/// documented GDT size) and marks it up; it runs once the scheduler picks
/// it (and the domain is not paused). `Busy` if it is up already.
pub fn start_vcpu<P: Platform>(
    domain: &mut Domain<P>,
    target: usize,
    vcpu: usize,
    context: &VcpuContext,
) -> Result<(), Error> {
    // Up, or taken down but still leaving its CPU (retired there).
    let slot = domain.vcpus.get(vcpu).ok_or(Error::InvalidArgument)?;
    if slot.up || slot.running {
        return Err(Error::Busy);
    }
    let canonical = |address: u64| address < (1 << 47);
    let valid = match context.mode {
        abi::domctl::VCPU_MODE_LONG => {
            canonical(context.rip)
                && canonical(context.rsp)
                && canonical(context.gdt_base)
                && context.cr3.is_multiple_of(abi::PAGE_SIZE)
                && context.cr3 < FOREIGN_WINDOW_BASE
                && context.gdt_limit as usize == INITIAL_GDT.len() * 8 - 1
        }
        // 32-bit registers; the kernel makes its own stack and tables.
        abi::domctl::VCPU_MODE_PVH => {
            context.rip <= u64::from(u32::MAX)
                && context.rdi <= u64::from(u32::MAX)
                && (context.rsp, context.cr3, context.gdt_base, context.gdt_limit) == (0, 0, 0, 0)
        }
        _ => false,
    };
    if !valid {
        return Err(Error::InvalidArgument);
    }
    let registers = if context.mode == abi::domctl::VCPU_MODE_PVH {
        StartRegisters { rbx: context.rdi, ..StartRegisters::default() }
    } else {
        StartRegisters { rdi: context.rdi, ..StartRegisters::default() }
    };
    start_checked(domain, target, vcpu, context, registers)
}

/// [`start_vcpu`] of a `context` its caller has checked (Xen's
/// `VCPUOP_up` too: `crate::xen`), with `registers`: creates the vCPU,
/// marks it up and keeps what it started from (`VcpuSlot::start_state`).
/// `InvalidArgument` for no such vCPU, `Busy` if it is up or still leaving
/// its CPU, and the machine's errors.
pub fn start_checked<P: Platform>(
    domain: &mut Domain<P>,
    target: usize,
    vcpu: usize,
    context: &VcpuContext,
    registers: StartRegisters,
) -> Result<(), Error> {
    // Up, or taken down but still leaving its CPU (retired there).
    let slot = domain.vcpus.get(vcpu).ok_or(Error::InvalidArgument)?;
    if slot.up || slot.running {
        return Err(Error::Busy);
    }
    let setup = VcpuSetup {
        domain_id: domain.id,
        vcpu_id: vcpu as u32,
        ept_root: domain.ept.root(),
        // One VPID per vCPU slot of the table (1..=512): a reused one is
        // flushed on every CPU the new vCPU arrives at.
        vpid: (target * MAX_VCPUS + vcpu + 1) as u16,
        io_bitmaps: domain.io_bitmaps,
        msr_bitmap: domain.msr_bitmap,
        context,
        registers,
    };
    let created = P::create_vcpu(&setup).inspect_err(|_| {
        P::log(Level::Error, format_args!("d{}: creating its vCPU {vcpu} failed", domain.id));
    })?;
    let slot = &mut domain.vcpus[vcpu];
    slot.vcpu = Some(created);
    slot.start_state = Some((*context, registers));
    (slot.up, slot.blocked, slot.reschedule, slot.timer_deadline) = (true, false, false, 0);
    slot.apic = crate::vlapic::VirtualApic::RESET;
    domain.notify(vcpu);
    Ok(())
}

/// Takes vCPU `vcpu` of `domain` down: it stops at once, wherever it is,
/// and loses its state (its timer, a block, a pending upcall go with it).
/// One on another CPU is kicked and retired there when it lets go of it
/// (`run_slice`; until then `start_vcpu` says `Busy`), as is the calling
/// vCPU taking itself down; one no CPU holds is released here.
/// `InvalidArgument` for no such vCPU, `NotFound` if it is not up, `Busy`
/// if it is the only vCPU up (the domain would stop: shut it down instead).
pub fn stop_vcpu<P: Platform>(domain: &mut Domain<P>, vcpu: usize) -> Result<(), Error> {
    if vcpu >= domain.vcpu_count {
        return Err(Error::InvalidArgument);
    }
    if !domain.vcpus[vcpu].up {
        return Err(Error::NotFound);
    }
    if domain.vcpus.iter().filter(|slot| slot.up).count() == 1 {
        return Err(Error::Busy);
    }
    let slot = &mut domain.vcpus[vcpu];
    (slot.up, slot.blocked, slot.timer_deadline, slot.upcall_due) = (false, false, 0, false);
    (slot.upcall_raised, slot.apic) = (false, crate::vlapic::VirtualApic::RESET);
    if slot.running {
        // Its CPU (this one, if it took itself down) retires it when it
        // lets go of it (`run_slice`).
        slot.reschedule = true;
        slot.notify(false);
    } else if let Some(cpu) = slot.vcpu.take() {
        P::release_vcpu(cpu);
    }
    Ok(())
}

fn list_domains<P: Platform>(
    hv: &mut Hypervisor<P>,
    caller: usize,
    start: DomainId,
    address: u64,
    count: u64,
) -> Result<u64, Error> {
    let mut ids: arrayvec::ArrayVec<DomainId, MAX_DOMAINS> =
        hv.domains.iter().map(|d| d.id).filter(|&id| id >= start).collect();
    ids.sort_unstable();
    let count = (count as usize).min(ids.len());
    let mut bytes = [0u8; MAX_DOMAINS * 4];
    for (slot, id) in bytes.chunks_exact_mut(4).zip(&ids[..count]) {
        slot.copy_from_slice(&id.to_le_bytes());
    }
    hv.domains[caller].write_guest(address, &bytes[..count * 4])?;
    Ok(count as u64)
}

fn set_affinity<P: Platform>(hv: &mut Hypervisor<P>, target: usize, vcpu: u64, mask: u64) -> Result<u64, Error> {
    let vcpu = u32::try_from(vcpu).map_err(|_| Error::NotFound)?;
    hv.domains[target].vcpu_info(vcpu).ok_or(Error::NotFound)?;
    let mask = mask & P::online_cpus();
    if mask == 0 {
        return Err(Error::InvalidArgument);
    }
    hv.domains[target].vcpus[vcpu as usize].affinity = mask;
    Ok(0)
}

// Every guest hv can run (all its domains but dom0) gets a full share of
// dom0's foreign window.
const _: () = assert!((MAX_DOMAINS as u64 - 1) * FOREIGN_SHARE_PAGES <= FOREIGN_WINDOW_PAGES);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_platform::{self as machine, Fake};
    use abi::domctl::{DEFAULT_WEIGHT, VcpuInfo, VcpuState};
    use spin::mutex::TicketMutex;
    use zerocopy::FromBytes;

    /// Where dom0 keeps what it passes by address.
    const BUFFER: u64 = 0x1000;

    /// hv's state and table over the fake machine, with dom0 in slot 0
    /// (4 pages of RAM, its vCPU 0 running on this CPU, as when it calls).
    fn machine() -> Hypervisor<'static, Fake> {
        let state: &'static TicketMutex<State> = Box::leak(Box::new(TicketMutex::new(State::new())));
        let mut hv = Hypervisor { state: state.lock(), domains: crate::domain::tests::table() };
        let mut dom0 = Domain::<Fake>::new(abi::DOM0, true, 64).unwrap();
        dom0.populate(0, 4).unwrap();
        dom0.vcpus[0].running = true;
        dom0.vcpus[0].last_cpu = 0;
        add_to_scheduler(&mut hv, dom0).ok().unwrap();
        hv
    }

    fn call(hv: &mut Hypervisor<Fake>, caller: usize, op: DomCtlOp, [a1, a2, a3, a4]: [u64; 4]) -> Result<u64, Error> {
        domctl(hv, caller, [op as u64, a1, a2, a3, a4])
    }

    /// A PVH context `start_vcpu` accepts.
    fn pvh_context() -> VcpuContext {
        VcpuContext { rip: 0x100_0850, rdi: 0x1000, mode: abi::domctl::VCPU_MODE_PVH, ..VcpuContext::default() }
    }

    /// A context `start_vcpu` accepts.
    fn context() -> VcpuContext {
        VcpuContext {
            rip: 0x10_0000,
            rsp: 0x20_0000,
            cr3: 0x3000,
            gdt_base: 0x4000,
            gdt_limit: 39,
            ..VcpuContext::default()
        }
    }

    /// Has dom0 pass `context` to `SetVcpuContext` for domain `id`.
    fn set_context(hv: &mut Hypervisor<Fake>, id: DomainId, context: &VcpuContext) -> Result<u64, Error> {
        hv.domains[0].write_guest(BUFFER, context.as_bytes()).unwrap();
        call(hv, 0, DomCtlOp::SetVcpuContext, [id as u64, BUFFER, 0, 0])
    }

    fn frames() -> usize {
        machine::with(|state| state.frames.len())
    }

    #[test]
    fn a_guest_built_run_and_destroyed_gives_back_every_frame() {
        let mut hv = machine();
        let before = frames();
        let id = call(&mut hv, 0, DomCtlOp::Create, [64, 2, 0, 0]).unwrap() as DomainId;
        assert_eq!(call(&mut hv, 0, DomCtlOp::PopulateMemory, [id as u64, 0, 16, 0]), Ok(16));
        hv.domains[0].write_guest(BUFFER, b"kernel").unwrap();
        assert_eq!(call(&mut hv, 0, DomCtlOp::CopyToGuest, [id as u64, 0x5000, BUFFER, 6]), Ok(6));
        let target = hv.domains.slot_of(id).unwrap();
        let mut copied = [0; 6];
        hv.domains[target].read_guest(0x5000, &mut copied).unwrap();
        assert_eq!(&copied, b"kernel");
        assert_eq!(set_context(&mut hv, id, &context()), Ok(0));
        assert_eq!(set_context(&mut hv, id, &context()), Err(Error::Busy), "vCPU 0 is up already");
        assert_eq!(call(&mut hv, 0, DomCtlOp::Unpause, [id as u64, 0, 0, 0]), Ok(0));
        assert!(hv.domains[target].runnable(0));
        assert!(frames() > before + 16);
        assert_eq!(call(&mut hv, 0, DomCtlOp::Destroy, [id as u64, 0, 0, 0]), Ok(0));
        assert_eq!(frames(), before, "EPT tables, RAM and the vCPU's frame all freed");
        assert_eq!(machine::with(|state| state.released_vcpus.clone()), [0x10_0000]);
        assert_eq!(hv.domains.count(), 1);
        assert_eq!(call(&mut hv, 0, DomCtlOp::Pause, [id as u64, 0, 0, 0]), Err(Error::NotFound));
        let key = sched_key(id, 0);
        assert!(Fake::scheduler().lock().remove(key).is_err(), "the scheduler forgot its vCPUs");
        assert!(machine::with(|state| state.log.iter().any(|line| line.contains(&format!("d{id} destroyed")))));
    }

    #[test]
    fn only_dom0_controls_domains_and_dom0_is_not_destroyed_paused_or_built() {
        let mut hv = machine();
        let id = call(&mut hv, 0, DomCtlOp::Create, [16, 1, 0, 0]).unwrap();
        let guest = hv.domains.slot_of(id as DomainId).unwrap();
        for op in [DomCtlOp::Create, DomCtlOp::Destroy, DomCtlOp::ListDomains, DomCtlOp::GetVcpuInfo] {
            assert_eq!(call(&mut hv, guest, op, [id, 16, 0, 0]), Err(Error::Permission), "{op:?}");
        }
        for op in [DomCtlOp::Destroy, DomCtlOp::Pause, DomCtlOp::Unpause, DomCtlOp::PopulateMemory] {
            assert_eq!(call(&mut hv, 0, op, [0, 0, 1, 0]), Err(Error::InvalidArgument), "{op:?} of dom0");
        }
        assert_eq!(call(&mut hv, 0, DomCtlOp::Pause, [77, 0, 0, 0]), Err(Error::NotFound));
        assert_eq!(call(&mut hv, 0, DomCtlOp::Pause, [1 << 40, 0, 0, 0]), Err(Error::InvalidArgument));
        assert_eq!(domctl(&mut hv, 0, [99, id, 0, 0, 0]), Err(Error::InvalidArgument), "no such operation");
        assert_eq!(hv.domains.count(), 2);
    }

    #[test]
    fn create_refuses_bad_sizes_and_counts_ids_up_past_those_in_use() {
        let mut hv = machine();
        let total = machine::TOTAL_PAGES;
        for (pages, vcpus) in [(0, 1), (total + 1, 1), (16, MAX_VCPUS as u64 + 1)] {
            assert_eq!(call(&mut hv, 0, DomCtlOp::Create, [pages, vcpus, 0, 0]), Err(Error::InvalidArgument));
        }
        assert_eq!(call(&mut hv, 0, DomCtlOp::Create, [16, 0, 0, 0]), Ok(1), "0 vCPUs means 1");
        assert_eq!(hv.domains[hv.domains.slot_of(1).unwrap()].vcpu_count, 1);
        hv.state.next_domain_id = 32767;
        assert_eq!(call(&mut hv, 0, DomCtlOp::Create, [16, 8, 0, 0]), Ok(32767));
        assert_eq!(call(&mut hv, 0, DomCtlOp::Create, [16, 1, 0, 0]), Ok(2), "wraps, skipping 0 and 1 (in use)");
        while hv.domains.count() < MAX_DOMAINS {
            call(&mut hv, 0, DomCtlOp::Create, [1, 1, 0, 0]).unwrap();
        }
        let frames = frames();
        assert_eq!(call(&mut hv, 0, DomCtlOp::Create, [1, 1, 0, 0]), Err(Error::Busy), "the table is full");
        assert_eq!(self::frames(), frames);
    }

    #[test]
    fn a_refused_vcpu_context_changes_nothing_and_leaks_nothing() {
        let mut hv = machine();
        let id = call(&mut hv, 0, DomCtlOp::Create, [16, 1, 0, 0]).unwrap() as DomainId;
        let before = frames();
        let bad = [
            VcpuContext { rip: 1 << 47, ..context() },
            VcpuContext { rsp: u64::MAX, ..context() },
            VcpuContext { gdt_base: 1 << 63, ..context() },
            VcpuContext { cr3: 0x3008, ..context() },
            VcpuContext { cr3: abi::domctl::FOREIGN_WINDOW_BASE, ..context() },
            VcpuContext { mode: 2, ..context() },
            VcpuContext { mode: abi::domctl::VCPU_MODE_PVH, ..context() },
            VcpuContext { mode: abi::domctl::VCPU_MODE_PVH, rip: 1 << 32, ..pvh_context() },
            VcpuContext { mode: abi::domctl::VCPU_MODE_PVH, rdi: 1 << 32, ..pvh_context() },
            VcpuContext { mode: abi::domctl::VCPU_MODE_PVH, rsp: 0x1000, ..pvh_context() },
            VcpuContext { gdt_limit: 47, ..context() },
        ];
        for context in bad {
            assert_eq!(set_context(&mut hv, id, &context), Err(Error::InvalidArgument), "{context:?}");
        }
        machine::with(|state| state.refuse_vcpus = true);
        assert_eq!(set_context(&mut hv, id, &context()), Err(Error::InvalidArgument));
        assert!(machine::with(|state| state.log.iter().any(|line| line.contains("creating its vCPU 0 failed"))));
        machine::with(|state| (state.refuse_vcpus, state.frames_left) = (false, Some(0)));
        assert_eq!(set_context(&mut hv, id, &context()), Err(Error::OutOfMemory));
        machine::with(|state| state.frames_left = None);
        assert_eq!(frames(), before);
        let target = hv.domains.slot_of(id).unwrap();
        assert!(!hv.domains[target].has_vcpu());
        assert_eq!(call(&mut hv, 0, DomCtlOp::Unpause, [id as u64, 0, 0, 0]), Err(Error::Busy), "nothing to run");
        assert_eq!(call(&mut hv, 0, DomCtlOp::SetVcpuContext, [id as u64, 1 << 40, 0, 0]), Err(Error::BadAddress));
        // A PVH kernel's entry state is taken.
        assert_eq!(set_context(&mut hv, id, &pvh_context()).map(|_| ()), Ok(()));
        assert!(hv.domains[target].has_vcpu());
    }

    #[test]
    fn scheduling_memory_and_affinity_are_checked_before_anything_changes() {
        let mut hv = machine();
        let id = call(&mut hv, 0, DomCtlOp::Create, [16, 2, 0, 0]).unwrap();
        let target = hv.domains.slot_of(id as DomainId).unwrap();
        for (weight, cap) in [(0, 0), (u64::from(MAX_WEIGHT) + 1, 0), (256, 201), (1 << 33, 0), (256, 1 << 33)] {
            assert_eq!(call(&mut hv, 0, DomCtlOp::SetScheduling, [id, weight, cap, 0]), Err(Error::InvalidArgument));
        }
        assert_eq!((hv.domains[target].weight, hv.domains[target].cap), (DEFAULT_WEIGHT, 0));
        assert_eq!(call(&mut hv, 0, DomCtlOp::SetScheduling, [id, 512, 200, 0]), Ok(0), "100 per vCPU");
        assert_eq!((hv.domains[target].weight, hv.domains[target].cap), (512, 200));
        assert_eq!(call(&mut hv, 0, DomCtlOp::SetScheduling, [0, 1024, 50, 0]), Ok(0), "dom0 too");

        assert_eq!(call(&mut hv, 0, DomCtlOp::PopulateMemory, [id, 0, 4, 0]), Ok(4));
        assert_eq!(call(&mut hv, 0, DomCtlOp::SetMaxMemory, [id, 3, 0, 0]), Err(Error::Busy), "below what it has");
        assert_eq!(call(&mut hv, 0, DomCtlOp::SetMaxMemory, [id, 4, 0, 0]), Ok(0));
        assert_eq!(call(&mut hv, 0, DomCtlOp::PopulateMemory, [id, 0x10_0000, 1, 0]), Err(Error::OutOfMemory));

        assert_eq!(call(&mut hv, 0, DomCtlOp::SetAffinity, [id, 2, 0b1, 0]), Err(Error::NotFound), "no vCPU 2");
        assert_eq!(call(&mut hv, 0, DomCtlOp::SetAffinity, [id, 1, 0b100, 0]), Err(Error::InvalidArgument));
        assert_eq!(call(&mut hv, 0, DomCtlOp::SetAffinity, [id, 1, 0b110, 0]), Ok(0));
        assert_eq!(hv.domains[target].vcpus[1].affinity, 0b10, "CPUs not online are dropped");

        assert_eq!(call(&mut hv, 0, DomCtlOp::GetVcpuInfo, [id, 1, BUFFER, 0]), Ok(0));
        let mut bytes = [0; size_of::<VcpuInfo>()];
        hv.domains[0].read_guest(BUFFER, &mut bytes).unwrap();
        let info = VcpuInfo::read_from_bytes(&bytes).unwrap();
        assert_eq!((info.vcpu_id, info.state, info.affinity), (1, VcpuState::Offline as u32, 0b10));
        assert_eq!(call(&mut hv, 0, DomCtlOp::GetVcpuInfo, [id, 2, BUFFER, 0]), Err(Error::NotFound));
        assert_eq!(call(&mut hv, 0, DomCtlOp::GetVcpuInfo, [id, 0, 1 << 40, 0]), Err(Error::BadAddress));
        assert_eq!(call(&mut hv, 0, DomCtlOp::CopyToGuest, [id, 0, BUFFER, COPY_MAX + 1]), Err(Error::InvalidArgument));
        assert_eq!(call(&mut hv, 0, DomCtlOp::CopyToGuest, [id, 0x8000, BUFFER, 8]), Err(Error::BadAddress));
    }

    #[test]
    fn list_domains_gives_ids_in_order_from_the_first_asked_for() {
        let mut hv = machine();
        for _ in 0..3 {
            call(&mut hv, 0, DomCtlOp::Create, [16, 1, 0, 0]).unwrap();
        }
        call(&mut hv, 0, DomCtlOp::Destroy, [2, 0, 0, 0]).unwrap();
        call(&mut hv, 0, DomCtlOp::Create, [16, 1, 0, 0]).unwrap();
        let list = |hv: &mut Hypervisor<Fake>, start: u64, count: u64| {
            let listed = call(hv, 0, DomCtlOp::ListDomains, [start, BUFFER, count, 0]).unwrap() as usize;
            let mut bytes = vec![0; listed * 4];
            hv.domains[0].read_guest(BUFFER, &mut bytes).unwrap();
            bytes.chunks(4).map(|id| u32::from_le_bytes(id.try_into().unwrap())).collect::<Vec<_>>()
        };
        assert_eq!(list(&mut hv, 0, 10), [0, 1, 3, 4], "the slot freed by 2 holds 4 now");
        assert_eq!(list(&mut hv, 2, 10), [3, 4]);
        assert_eq!(list(&mut hv, 0, 2), [0, 1]);
        assert_eq!(list(&mut hv, 5, 10), [], "from an id no domain has (a list read in pages)");
    }

    #[test]
    fn a_domain_running_on_another_cpu_is_stopped_first_and_destroyed_on_the_call_again() {
        let mut hv = machine();
        let id = call(&mut hv, 0, DomCtlOp::Create, [16, 1, 0, 0]).unwrap();
        assert_eq!(set_context(&mut hv, id as DomainId, &context()), Ok(0));
        let target = hv.domains.slot_of(id as DomainId).unwrap();
        let slot = &mut hv.domains[target].vcpus[0];
        // CPU 1 runs it: its vCPU is out of its slot.
        let vcpu = slot.vcpu.take();
        (slot.running, slot.last_cpu) = (true, 1);
        assert_eq!(call(&mut hv, 0, DomCtlOp::Destroy, [id, 0, 0, 0]), Ok(0));
        assert_eq!(hv.domains.slot_of(id as DomainId), Some(target), "not destroyed yet");
        assert!(hv.domains[target].paused);
        assert_eq!(machine::with(|state| state.kicks.clone()), [1], "CPU 1 told to stop it");
        let caller = &hv.domains[0].vcpus[0];
        assert!(caller.restart_call && caller.reschedule, "dom0's call runs again");
        // CPU 1 lets go of it; dom0's call comes again.
        let slot = &mut hv.domains[target].vcpus[0];
        (slot.vcpu, slot.running) = (vcpu, false);
        assert_eq!(call(&mut hv, 0, DomCtlOp::Destroy, [id, 0, 0, 0]), Ok(0));
        assert_eq!(hv.domains.slot_of(id as DomainId), None);
    }
}
