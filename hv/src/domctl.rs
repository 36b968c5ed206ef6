//! Domain control (`Hypercall::DomCtl`): how dom0 creates, builds, runs and
//! destroys guests. Every operation checks the caller is dom0, validates
//! every argument, and leaves nothing half-done on error.

use abi::domctl::{
    COPY_MAX, DomCtlOp, FOREIGN_SHARE_PAGES, FOREIGN_WINDOW_BASE, FOREIGN_WINDOW_PAGES, MAX_WEIGHT, VcpuContext,
};
use abi::{DomainId, Error};

use crate::abi_bytes::{bytes_of, read_struct};
use crate::arch::memory::FrameBox;
use crate::arch::vmx::{Vcpu, VcpuConfig, guest_gdt};
use crate::hypervisor::{Domain, Hypervisor, MAX_DOMAINS, SCHEDULER};
use crate::memory;
use hvcore::domain::{MAX_VCPUS, sched_key};
use hvcore::grant_ops::Grants;

/// `Hypercall::DomCtl`.
pub fn domctl(hv: &mut Hypervisor, caller: usize, [operation, a1, a2, a3, a4]: [u64; 5]) -> Result<u64, Error> {
    if !hv.domains[caller].privileged {
        return Err(Error::Permission);
    }
    let operation = DomCtlOp::from_number(operation).ok_or(Error::InvalidArgument)?;
    if operation == DomCtlOp::Create {
        return create(hv, a1, a2);
    }
    if operation == DomCtlOp::UnmapForeign {
        return hvcore::grant_ops::unmap_foreign(&mut grants(hv), caller, a2);
    }
    let id = DomainId::try_from(a1).map_err(|_| Error::InvalidArgument)?;
    let target = hv.domains.slot_of(id).ok_or(Error::NotFound)?;
    // dom0 itself can be listed and scheduled, but not destroyed, paused or built.
    let is_guest = !hv.domains[target].privileged;
    let guest_only = || if is_guest { Ok(()) } else { Err(Error::InvalidArgument) };
    match operation {
        // Both were answered above.
        DomCtlOp::Create | DomCtlOp::UnmapForeign => Err(Error::InvalidArgument),
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
            set_vcpu_context(hv, caller, target, a2)
        }
        DomCtlOp::SetScheduling => {
            let weight =
                u32::try_from(a2).ok().filter(|w| (1..=MAX_WEIGHT).contains(w)).ok_or(Error::InvalidArgument)?;
            // The cap is in percent of one CPU for the whole domain: at most
            // 100 per vCPU (150 = one and a half CPUs).
            let most = 100 * hv.domains[target].vcpu_count as u64;
            let cap = u32::try_from(a3).ok().filter(|&c| u64::from(c) <= most).ok_or(Error::InvalidArgument)?;
            SCHEDULER.lock().set_group_params(id, weight, cap).map_err(|_| Error::InvalidArgument)?;
            let domain = &mut hv.domains[target];
            domain.weight = weight;
            domain.cap = cap;
            Ok(0)
        }
        DomCtlOp::ListDomains => list_domains(hv, caller, id, a2, a3),
        DomCtlOp::MapForeign => {
            guest_only()?;
            hvcore::grant_ops::map_foreign(&mut grants(hv), caller, target, a2, a3)
        }
        DomCtlOp::SetMaxMemory => {
            let domain = &mut hv.domains[target];
            if a2 < domain.current_pages {
                return Err(Error::Busy);
            }
            domain.max_pages = a2;
            Ok(0)
        }
        DomCtlOp::GetVcpuInfo => get_vcpu_info(hv, caller, target, a2, a3),
        DomCtlOp::SetAffinity => set_affinity(hv, target, a2, a3),
    }
}

fn create(hv: &mut Hypervisor, max_pages: u64, vcpus: u64) -> Result<u64, Error> {
    if hv.domains.count() == MAX_DOMAINS {
        return Err(Error::Busy);
    }
    let vcpus = if vcpus == 0 { 1 } else { vcpus };
    if max_pages == 0 || max_pages > crate::memory::totals().total_pages || vcpus > MAX_VCPUS as u64 {
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
    crate::info!("d{id} created (at most {} KiB, {vcpus} vCPUs)", max_pages * 4);
    const _: () = assert!(MAX_DOMAINS < 32767);
    Ok(id as u64)
}

/// Enters each of `domain`'s vCPUs in the scheduler and the domain in the
/// table (all or nothing; the domain comes back on failure).
#[allow(clippy::result_large_err)]
pub fn add_to_scheduler(hv: &mut Hypervisor, domain: Domain) -> Result<(), Domain> {
    let id = domain.id;
    // Each vCPU is an entry; a domain's entries form one group, which has
    // the domain's weight and cap (shared among its active vCPUs).
    for vcpu in 0..domain.vcpu_count {
        let key = sched_key(id, vcpu);
        let mut scheduler = SCHEDULER.lock();
        if scheduler.add(key, domain.weight).is_err() || scheduler.set_group(key, id).is_err() {
            drop(scheduler);
            remove_from_scheduler(id);
            return Err(domain);
        }
    }
    if SCHEDULER.lock().set_group_params(id, domain.weight, domain.cap).is_err() {
        remove_from_scheduler(id);
        return Err(domain);
    }
    if let Err(domain) = hv.domains.insert(domain) {
        remove_from_scheduler(id);
        return Err(domain);
    }
    Ok(())
}

/// Takes every vCPU of domain `id` out of the scheduler.
fn remove_from_scheduler(id: DomainId) {
    let mut scheduler = SCHEDULER.lock();
    for vcpu in 0..MAX_VCPUS {
        let _ = scheduler.remove(sched_key(id, vcpu));
    }
}

/// Whether domain `target` is off every CPU, so it can be taken apart. If
/// another CPU runs it, that CPU is told to stop it (paused, kicked) and
/// the caller's hypercall is restarted (`Domain::restart_call`): it runs
/// again once the caller is next entered, by which time the kicked CPU has
/// let go of it (a kick takes it out of the guest at once).
fn stopped_elsewhere(hv: &mut Hypervisor, caller: usize, target: usize) -> bool {
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
fn restart(caller: &mut Domain) {
    if let Some(vcpu) = caller.current_vcpu() {
        let slot = &mut caller.vcpus[vcpu];
        slot.restart_call = true;
        slot.reschedule = true;
    }
}

/// Removes domain `target` and returns everything it had.
pub fn destroy(hv: &mut Hypervisor, target: usize) {
    let id = hv.domains[target].id;
    // 1. Every mapping of its pages goes first, so no frame is freed
    //    while mapped, and the grants it mapped are released.
    hvcore::grant_ops::end_domain(&mut grants(hv), target);
    // 2. Its event channels end; peers see them Closed (if it crashed or
    //    shut down, this happened then).
    hvcore::event_ops::end_channels(&mut hv.domains, target);
    // 3. The scheduler forgets it; its frames, tables and VMCSs are freed
    //    (no CPU holds its registers: each saves them when it lets go).
    remove_from_scheduler(id);
    let Some(domain) = hv.domains.remove(target) else { return };
    let pages = domain.current_pages;
    domain.tear_down();
    crate::info!("d{id} destroyed, {} KiB returned", pages * 4);
}

fn copy_to_guest(
    hv: &mut Hypervisor,
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

fn set_vcpu_context(hv: &mut Hypervisor, caller: usize, target: usize, context_address: u64) -> Result<u64, Error> {
    let context: VcpuContext = read_struct(&hv.domains[caller], context_address)?;
    start_vcpu(&mut hv.domains[target], target, 0, &context).map(|()| 0)
}

/// The all-ones page every guest has as its I/O bitmaps and its MSR bitmap:
/// all ports and MSRs exit (the CPU only reads it). Set once at boot.
pub static GUEST_BITMAPS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Creates vCPU `vcpu` of `domain` (in slot `target`) from `context` (checked here:
/// canonical addresses, a page-aligned CR3 in the domain's RAM range, the
/// documented GDT size) and marks it up; it runs once the scheduler picks
/// it (and the domain is not paused). `Busy` if it is up already.
pub fn start_vcpu(domain: &mut Domain, target: usize, vcpu: usize, context: &VcpuContext) -> Result<(), Error> {
    // Up, or taken down but still leaving its CPU (retired there).
    let slot = &domain.vcpus[vcpu];
    if slot.up || slot.running {
        return Err(Error::Busy);
    }
    let canonical = |address: u64| address < (1 << 47);
    if !canonical(context.rip)
        || !canonical(context.rsp)
        || !canonical(context.gdt_base)
        || !context.cr3.is_multiple_of(abi::PAGE_SIZE)
        || context.cr3 >= FOREIGN_WINDOW_BASE
        || context.gdt_limit as usize != guest_gdt::DESCRIPTORS.len() * 8 - 1
    {
        return Err(Error::InvalidArgument);
    }
    let vmcs_region = memory::allocate_frame().ok_or(Error::OutOfMemory)?;
    let guest_bitmaps = GUEST_BITMAPS.load(core::sync::atomic::Ordering::Relaxed);
    // dom0's vCPUs share its own bitmaps (its ports, its MSRs); a guest's
    // are the shared deny-all page.
    let own_or = |own: u64, shared: u64| if own != 0 { own } else { shared };
    let config = VcpuConfig {
        vmcs_region,
        ept_root: domain.ept.root(),
        // One VPID per vCPU slot of the table (1..=512): a reused one is
        // flushed on every CPU the new vCPU arrives at (Vcpu::check_out).
        // dom0, in slot 0, has VPID 1 for the vCPU hv built (`dom0::build`).
        vpid: (target * MAX_VCPUS + vcpu + 1) as u16,
        io_bitmap_a: own_or(domain.io_bitmaps[0], guest_bitmaps),
        io_bitmap_b: own_or(domain.io_bitmaps[1], guest_bitmaps),
        msr_bitmap: own_or(domain.msr_bitmap, guest_bitmaps),
        cr3: context.cr3,
        rip: context.rip,
        rsp: context.rsp,
        gdt_base: context.gdt_base,
        gdt_limit: context.gdt_limit,
        rdi: context.rdi,
    };
    match Vcpu::new(crate::arch::smp::capabilities(), &config) {
        Ok(created) => match FrameBox::new(created, memory::allocate_frame) {
            Ok(created) => {
                let slot = &mut domain.vcpus[vcpu];
                slot.vcpu = Some(created);
                (slot.up, slot.blocked, slot.reschedule, slot.timer_deadline) = (true, false, false, 0);
                domain.notify(vcpu);
                Ok(())
            }
            Err(created) => {
                memory::free_frame(created.release(crate::arch::smp::capabilities()));
                Err(Error::OutOfMemory)
            }
        },
        Err(reason) => {
            memory::free_frame(vmcs_region);
            crate::error!("d{}: creating its vCPU {vcpu} failed: {reason}", domain.id);
            Err(Error::InvalidArgument)
        }
    }
}

fn list_domains(hv: &mut Hypervisor, caller: usize, start: DomainId, address: u64, count: u64) -> Result<u64, Error> {
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

fn get_vcpu_info(hv: &mut Hypervisor, caller: usize, target: usize, vcpu: u64, address: u64) -> Result<u64, Error> {
    let vcpu = u32::try_from(vcpu).map_err(|_| Error::NotFound)?;
    let info = hv.domains[target].vcpu_info(vcpu).ok_or(Error::NotFound)?;
    hv.domains[caller].write_guest(address, bytes_of(&info))?;
    Ok(0)
}

fn set_affinity(hv: &mut Hypervisor, target: usize, vcpu: u64, mask: u64) -> Result<u64, Error> {
    let vcpu = u32::try_from(vcpu).map_err(|_| Error::NotFound)?;
    hv.domains[target].vcpu_info(vcpu).ok_or(Error::NotFound)?;
    let mask = mask & crate::arch::smp::online_mask();
    if mask == 0 {
        return Err(Error::InvalidArgument);
    }
    hv.domains[target].vcpus[vcpu as usize].affinity = mask;
    Ok(0)
}

// Every guest hv can run (all its domains but dom0) gets a full share of
// dom0's foreign window.
const _: () = assert!((MAX_DOMAINS as u64 - 1) * FOREIGN_SHARE_PAGES <= FOREIGN_WINDOW_PAGES);

/// What the grant code works on, of `hv`.
pub fn grants<'a, 'd>(hv: &'a mut Hypervisor<'d>) -> Grants<'a, 'd, crate::arch::machine::Machine> {
    Grants { domains: &mut hv.domains, foreign: &mut hv.state.foreign }
}
