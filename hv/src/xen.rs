//! Xen's guest hypercalls (`abi::xen`), as far as hv implements them yet
//! (issue 10): `xen_version`, `console_io`, `sched_op`, `memory_op`
//! (placing the shared-info page), `hvm_op` (the callback vector),
//! `vcpu_op` (placing `vcpu_info`, timers, starting and stopping vCPUs)
//! and `event_channel_op` (2-level), on
//! the calling domain alone (its lock held) or, for what binds or closes
//! channels between domains, with every domain locked
//! ([`dispatch_table`]; also `vcpu_op` up, which needs the domain's
//! slot). Every other number below `XEN_HYPERCALL_LIMIT`
//! answers `-ENOSYS`.
//!
//! The event channel operations run Mica's own (`event_ops`) on Xen's
//! argument structures; a domain that placed a shared-info page gets its
//! events in Xen's 2-level layout there (`event_ops::Words`).
//!
//! As in Xen for HVM and PVH guests, an argument that points at memory is
//! a guest-virtual address of the calling vCPU, translated through its
//! page tables as they are at the call ([`AddressSpace`]); results and
//! errors are Xen's (`-errno`).

use abi::domctl::VcpuContext;
use abi::event::EventOp;
use abi::xen::console_io::ConsoleIoOp;
use abi::xen::event_channel::{
    EvtchnAllocUnbound, EvtchnBindInterdomain, EvtchnBindIpi, EvtchnBindVcpu, EvtchnBindVirq, EvtchnClose, EvtchnOp,
    EvtchnSend, EvtchnStatus, EvtchnUnmask, PortState as XenPortState, Virq as XenVirq,
};
use abi::xen::grant_table::GRANT_TABLE_FRAMES;
use abi::xen::hvm::{CallbackVia, HVM_NR_PARAMS, HVM_PARAM_CALLBACK_IRQ, HvmOp, XenHvmParam};
use abi::xen::memory::{MEMOP_CMD_MASK, MemoryOp, XENMAPSPACE_GRANT_TABLE, XENMAPSPACE_SHARED_INFO, XenAddToPhysmap};
use abi::xen::sched::{SchedOp, SchedShutdown, ShutdownReason};
use abi::xen::shared_info::{PVCLOCK_TSC_STABLE_BIT, VcpuTimeInfo, pvclock_scale_for_frequency};
use abi::xen::vcpu::{
    VCPU_HVM_MODE_32B, VCPU_HVM_MODE_64B, VcpuHvmContext32, VcpuHvmContext64, VcpuOp, VcpuRegisterVcpuInfo,
    VcpuSetSingleshotTimer,
};
use abi::xen::version::{XenExtraversion, XenFeatureInfo, XenVersionOp, feature};
use abi::xen::{Errno, Hypercall};
use zerocopy::IntoBytes;

use crate::domain::{Domain, DomainTable, Ended};
use crate::domctl::Hypervisor;
use crate::event_ops::Call;
pub use crate::guest_virtual::AddressSpace;
use crate::log_ring::Level;
use crate::paging::Access;
use crate::platform::{Platform, StartRegisters};

/// What `XENVER_version` reports: the Xen interface Mica follows.
pub const XEN_VERSION: u32 = abi::xen::version::MICA_XEN_VERSION;
/// The version suffix: Mica names itself here (`xen_version` 4.17.0-mica).
pub const EXTRAVERSION: &str = ".0-mica";
/// The feature bits hv offers: memory is translated by EPT (the guest sees
/// its own frame numbers), page tables are the guest's own, events arrive
/// as an upcall vector (`HVM_PARAM_CALLBACK_IRQ`), and the pvclock in
/// `vcpu_info` is safe to use (the TSC is stable).
pub const FEATURES: u32 = 1 << feature::WRITABLE_PAGE_TABLES
    | 1 << feature::AUTO_TRANSLATED_PHYSMAP
    | 1 << feature::HVM_CALLBACK_VECTOR
    | 1 << feature::HVM_SAFE_PVCLOCK;
/// Longest `console_io` write taken in one call; Xen takes any count, a
/// longer one is cut here (the result is 0 either way, as in Xen).
pub const CONSOLE_WRITE_MAX: usize = 4096;

/// Fills the hypercall page a guest asked for by writing `value` to MSR
/// `HYPERCALL_PAGE_MSR` (CPUID leaf 0x4000_0002 names it): `value` is the
/// page's guest-physical address, whose low 12 bits select the page (Mica
/// offers one, 0). Stub `n` at offset `32 * n` is `mov eax, n; vmcall;
/// ret`, the rest of the page `int3`, so a stray jump into it traps.
/// `Err` for another page index or an address outside the domain's RAM:
/// the write gets #GP, as on Xen.
pub fn fill_hypercall_page<P: Platform>(domain: &Domain<P>, value: u64) -> Result<(), Errno> {
    use abi::xen::hypercall::{HYPERCALL_PAGE_STUBS, HYPERCALL_STUB_SIZE, hypercall_page_stub};
    if !value.is_multiple_of(abi::PAGE_SIZE) {
        return Err(Errno::Einval);
    }
    let mut page = [0xccu8; abi::PAGE_SIZE as usize];
    for (number, stub) in page.chunks_exact_mut(HYPERCALL_STUB_SIZE).enumerate().take(HYPERCALL_PAGE_STUBS) {
        let code = hypercall_page_stub(number as u32);
        stub[..code.len()].copy_from_slice(&code);
    }
    domain.write_guest(value, &page).map_err(|_| Errno::Efault)
}

/// What a Xen call came to on its caller's domain alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XenCall {
    /// Its result.
    Done(Result<u64, Errno>),
    /// A send to another domain (as `event_ops::Call::Raise`); its result
    /// is 0.
    Raise { target: abi::DomainId, port: u32, from: u32 },
    /// It binds or closes channels between domains: [`dispatch_table`]
    /// runs it with every domain locked.
    Table,
}

/// Runs Xen hypercall `number` for the calling vCPU of `domain`, whose
/// addresses `space` translates. `-ENOSYS` for what hv does not offer.
/// The hot path, a send, goes straight to its own small function; the
/// rest, out of line, keeps the run loop's registers.
#[inline]
pub fn dispatch<P: Platform>(
    domain: &mut Domain<P>,
    space: &AddressSpace,
    number: u64,
    arguments @ [a1, a2, ..]: [u64; 5],
) -> XenCall {
    // Sub-operations are 32-bit (`cmd` is an `int` in Xen's prototypes).
    if number == Hypercall::EventChannelOp.number() && a1 as u32 == EvtchnOp::Send.number() {
        return send_call(domain, space, a2);
    }
    dispatch_other(domain, space, number, arguments)
}

/// `EVTCHNOP_send` ([`send`]), out of line with a small frame.
#[inline(never)]
fn send_call<P: Platform>(domain: &mut Domain<P>, space: &AddressSpace, address: u64) -> XenCall {
    send(domain, space, address).unwrap_or_else(|errno| XenCall::Done(Err(errno)))
}

/// [`dispatch`] for every call but a send.
#[inline(never)]
fn dispatch_other<P: Platform>(
    domain: &mut Domain<P>,
    space: &AddressSpace,
    number: u64,
    [a1, a2, a3, ..]: [u64; 5],
) -> XenCall {
    let operation = a1 as u32;
    XenCall::Done(match Hypercall::from_number(number) {
        Some(Hypercall::XenVersion) => xen_version(domain, space, operation, a2),
        Some(Hypercall::ConsoleIo) => console_io(domain, space, operation, a2, a3),
        Some(Hypercall::SchedOp) => sched_op(domain, space, operation, a2),
        Some(Hypercall::MemoryOp) => {
            return memory_op(domain, space, operation, a2).unwrap_or_else(|errno| XenCall::Done(Err(errno)));
        }
        // Map, unmap and copy concern other domains.
        Some(Hypercall::GrantTableOp) if crate::xen_grant::is_table_op(operation) => return XenCall::Table,
        Some(Hypercall::GrantTableOp) => grant_table_op(domain, space, operation, a2, a3),
        Some(Hypercall::HvmOp) => {
            return hvm_op(domain, space, operation, a2).unwrap_or_else(|errno| XenCall::Done(Err(errno)));
        }
        // Starting a vCPU takes its domain's slot (the vCPU's VPID).
        Some(Hypercall::VcpuOp) if operation == VcpuOp::Up.number() => return XenCall::Table,
        Some(Hypercall::VcpuOp) => vcpu_op(domain, space, operation, a2, a3),
        Some(Hypercall::SetTimerOp) => Ok(set_timer_op(domain, a1)),
        Some(Hypercall::EventChannelOp) => {
            return event_channel_op(domain, space, operation, a2).unwrap_or_else(|errno| XenCall::Done(Err(errno)));
        }
        _ => Err(Errno::Enosys),
    })
}

/// Runs what [`dispatch`] answered [`XenCall::Table`] for, with every
/// domain locked: binding and closing channels between domains, placing
/// the grant table.
pub fn dispatch_table<P: Platform>(
    hv: &mut Hypervisor<'_, P>,
    caller: usize,
    space: &AddressSpace,
    number: u64,
    [a1, a2, a3, ..]: [u64; 5],
) -> Result<u64, Errno> {
    match Hypercall::from_number(number) {
        Some(Hypercall::EventChannelOp) => event_channel_table(&mut hv.domains, caller, space, a1, a2),
        Some(Hypercall::HvmOp) => toolstack_param(&mut hv.domains, caller, space, a1, a2),
        Some(Hypercall::GrantTableOp) => crate::xen_grant::table_op(hv, caller, space, a1 as u32, a2, a3),
        Some(Hypercall::VcpuOp) if a1 as u32 == VcpuOp::Up.number() => vcpu_up(hv, caller, a2),
        Some(Hypercall::MemoryOp) if a1 as u32 & MEMOP_CMD_MASK == MemoryOp::SetMemoryMap.number() => {
            set_memory_map(&mut hv.domains, caller, space, a2)
        }
        Some(Hypercall::MemoryOp) => {
            // A frame of the grant table (checked again: the guest may have
            // changed its request since `memory_op` looked).
            let request: XenAddToPhysmap = space.read_struct(&hv.domains[caller], a2)?;
            let index = usize::try_from(request.idx).ok().filter(|&index| index < GRANT_TABLE_FRAMES);
            let address = request.gpfn.checked_mul(abi::PAGE_SIZE);
            let (Some(index), Some(address), XENMAPSPACE_GRANT_TABLE) = (index, address, request.space) else {
                return Err(Errno::Einval);
            };
            crate::grant_ops::place_table_frame(&mut hv.grants(), caller, index, address, true).map(|()| 0).map_err(
                |error| match error {
                    // Xen's answers: a bad place, no memory, in use.
                    abi::Error::OutOfMemory => Errno::Enomem,
                    abi::Error::Busy => Errno::Ebusy,
                    _ => Errno::Einval,
                },
            )
        }
        _ => Err(Errno::Enosys),
    }
}

/// The `event_channel_op`s across domains.
fn event_channel_table<P: Platform>(
    domains: &mut DomainTable<'_, P>,
    caller: usize,
    space: &AddressSpace,
    a1: u64,
    a2: u64,
) -> Result<u64, Errno> {
    let me = domains[caller].id;
    // A domain names itself as DOMID_SELF or by its id.
    let named = |dom: u16| if dom == abi::xen::DOMID_SELF { me } else { u32::from(dom) };
    let mica = |domains: &mut DomainTable<'_, P>, operation: EventOp, a1: u64, a2: u64| {
        crate::event_ops::event_op(domains, caller, [operation as u64, a1, a2, 0, 0]).map_err(errno)
    };
    match EvtchnOp::from_number(a1 as u32).ok_or(Errno::Enosys)? {
        EvtchnOp::AllocUnbound => {
            let mut request: EvtchnAllocUnbound = space.read_struct(&domains[caller], a2)?;
            let remote = u64::from(named(request.remote_dom));
            let owner = named(request.dom);
            let owner = if owner == me {
                caller
            } else {
                // A port in another domain's table: the toolstack's (dom0
                // offers a domain it builds its store and console ports).
                if !domains[caller].privileged {
                    return Err(Errno::Eperm);
                }
                domains.slot_of(owner).ok_or(Errno::Esrch)?
            };
            let port = crate::event_ops::event_op(domains, owner, [EventOp::AllocUnbound as u64, remote, 0, 0, 0]);
            request.port = port.map_err(|error| match error {
                abi::Error::Busy => Errno::Enospc,
                error => unknown_domain(errno(error)),
            })? as u32;
            space.write(&domains[caller], a2, request.as_bytes()).map(|()| 0)
        }
        EvtchnOp::BindInterdomain => {
            let mut request: EvtchnBindInterdomain = space.read_struct(&domains[caller], a2)?;
            let remote = named(request.remote_dom);
            if domains.slot_of(remote).is_none() {
                return Err(Errno::Esrch);
            }
            let port = crate::event_ops::event_op(
                domains,
                caller,
                [EventOp::BindInterdomain as u64, u64::from(remote), u64::from(request.remote_port), 0, 0],
            );
            // As Xen: a remote port that is not offered to the caller
            // (beyond the table, free, offered to another, connected) is
            // -EINVAL whatever Mica calls it; no free local port -ENOSPC.
            request.local_port = port.map_err(|error| match error {
                abi::Error::Busy if no_free_port(&domains[caller]) => Errno::Enospc,
                _ => Errno::Einval,
            })? as u32;
            space.write(&domains[caller], a2, request.as_bytes()).map(|()| 0)
        }
        EvtchnOp::Close => {
            let request: EvtchnClose = space.read_struct(&domains[caller], a2)?;
            // A free port or one beyond the table: -EINVAL, as in Xen.
            mica(domains, EventOp::Close, u64::from(request.port), 0).map(|_| 0).map_err(|_| Errno::Einval)
        }
        _ => Err(Errno::Enosys),
    }
}

/// Xen's errno for one of Mica's errors (event channel operations).
fn errno(error: abi::Error) -> Errno {
    match error {
        abi::Error::Permission => Errno::Eperm,
        abi::Error::NotFound => Errno::Enoent,
        abi::Error::Busy => Errno::Ebusy,
        abi::Error::OutOfMemory => Errno::Enomem,
        abi::Error::BadAddress => Errno::Efault,
        _ => Errno::Einval,
    }
}

/// Where Mica says NotFound of a domain, Xen says "no such domain".
fn unknown_domain(errno: Errno) -> Errno {
    if errno == Errno::Enoent { Errno::Esrch } else { errno }
}

/// Whether `domain`'s port table has no free port left: where a binding
/// fails for that, Mica says `Busy` and Xen `-ENOSPC`.
fn no_free_port<P: Platform>(domain: &Domain<P>) -> bool {
    (1..abi::event::PORT_COUNT as u32).all(|port| domain.events.binding(port) != Ok(crate::event::Binding::Free))
}

/// `-ENOENT` unless the domain has vCPU `vcpu`: Xen checks the vCPU an
/// event channel operation names before anything else.
fn event_vcpu<P: Platform>(domain: &Domain<P>, vcpu: u32) -> Result<(), Errno> {
    vcpu_index(domain, u64::from(vcpu)).map(|_| ())
}

/// `EVTCHNOP_send` of the `evtchn_send` at `address`. As in Xen, a send
/// on a port whose other end is gone (unbound, or its domain ended) is
/// dropped without an error.
#[inline]
fn send<P: Platform>(domain: &mut Domain<P>, space: &AddressSpace, address: u64) -> Result<XenCall, Errno> {
    let port = send_port(domain, space, address)?;
    match crate::event_ops::send(domain, port) {
        Ok(Call::Raise { target, port, from }) => Ok(XenCall::Raise { target, port, from }),
        Ok(_) => Ok(XenCall::Done(Ok(0))),
        Err(error) => send_errno(error).map_or(Ok(XenCall::Done(Ok(0))), Err),
    }
}

/// The port of an `EVTCHNOP_send`: the `evtchn_send` at guest-virtual
/// `address` (for a caller's own fast path, as hv's run loop takes it).
#[inline(always)]
pub fn send_port<P: Platform>(domain: &Domain<P>, space: &AddressSpace, address: u64) -> Result<u32, Errno> {
    const _: () = assert!(size_of::<EvtchnSend>() == 4);
    space.read_u32(domain, address)
}

/// What a refused send answers in Xen's terms: nothing (`None`, the send
/// returns 0) for a port not connected yet or whose peer is gone, as Xen
/// drops those; `-EINVAL` for a free port, one beyond the table, a
/// virtual IRQ's, as Xen.
#[inline]
pub fn send_errno(error: abi::Error) -> Option<Errno> {
    match error {
        abi::Error::Busy | abi::Error::Closed => None,
        _ => Some(Errno::Einval),
    }
}

/// `event_channel_op` on the caller's domain alone; the operations across
/// domains come back as [`XenCall::Table`]. FIFO channels
/// (`init_control`, `expand_array`, `set_priority`) are refused with
/// `-ENOSYS`, so guests use the 2-level ones.
fn event_channel_op<P: Platform>(
    domain: &mut Domain<P>,
    space: &AddressSpace,
    operation: u32,
    address: u64,
) -> Result<XenCall, Errno> {
    let mica = |domain: &mut Domain<P>, operation: EventOp, a1: u64, a2: u64| match crate::event_ops::event_op_own(
        domain,
        [operation as u64, a1, a2, 0, 0],
    ) {
        Call::Done(result) => Ok(XenCall::Done(result.map_err(errno))),
        Call::Raise { target, port, from } => Ok(XenCall::Raise { target, port, from }),
        Call::Pair { .. } | Call::Table => Err(Errno::Einval),
    };
    // The port a binding returns goes back into the argument structure.
    let returned = |call: XenCall| match call {
        XenCall::Done(result) => result.map(|port| port as u32),
        _ => Err(Errno::Einval),
    };
    match EvtchnOp::from_number(operation).ok_or(Errno::Enosys)? {
        EvtchnOp::Send => send(domain, space, address),
        EvtchnOp::Unmask => {
            let request: EvtchnUnmask = space.read_struct(domain, address)?;
            mica(domain, EventOp::Unmask, u64::from(request.port), 0)
        }
        EvtchnOp::BindVcpu => {
            let request: EvtchnBindVcpu = space.read_struct(domain, address)?;
            event_vcpu(domain, request.vcpu)?;
            // A free port, an IPI's or a virtual IRQ's: -EINVAL, as in Xen
            // (an IPI names its vCPU when it is bound).
            if domain.events.binding(request.port) == Ok(crate::event::Binding::Ipi) {
                return Err(Errno::Einval);
            }
            let bound = mica(domain, EventOp::BindVcpu, u64::from(request.port), u64::from(request.vcpu))?;
            Ok(XenCall::Done(returned(bound).map(|_| 0).map_err(|_| Errno::Einval)))
        }
        EvtchnOp::BindIpi => {
            let mut request: EvtchnBindIpi = space.read_struct(domain, address)?;
            event_vcpu(domain, request.vcpu)?;
            let port = returned(mica(domain, EventOp::BindIpi, u64::from(request.vcpu), 0)?);
            request.port = port.map_err(|errno| if errno == Errno::Ebusy { Errno::Enospc } else { errno })?;
            space.write(domain, address, request.as_bytes()).map(|()| XenCall::Done(Ok(0)))
        }
        EvtchnOp::BindVirq => {
            let mut request: EvtchnBindVirq = space.read_struct(domain, address)?;
            // Mica raises the timer and the console; the others never
            // fire, and are bound all the same (Linux binds VIRQ_DEBUG on
            // every CPU and gives up on a CPU where that fails). As in Xen,
            // one bound once per domain is bound on vCPU 0.
            let xen_virq = XenVirq::from_number(request.virq).ok_or(Errno::Einval)?;
            if !xen_virq.is_per_vcpu() && request.vcpu != 0 {
                return Err(Errno::Einval);
            }
            event_vcpu(domain, request.vcpu)?;
            let virq = match xen_virq {
                XenVirq::Timer => abi::event::Virq::Timer,
                XenVirq::Console => abi::event::Virq::Console,
                silent => {
                    let (number, vcpu) = (silent.number() as u8, request.vcpu as u8);
                    if domain.events.silent_virq_bound(number, vcpu) {
                        return Err(Errno::Eexist);
                    }
                    request.port = domain.events.bind_silent_virq(number, vcpu).map_err(|error| match error {
                        abi::Error::Busy => Errno::Enospc,
                        _ => Errno::Einval,
                    })?;
                    return space.write(domain, address, request.as_bytes()).map(|()| XenCall::Done(Ok(0)));
                }
            };
            let port = mica(domain, EventOp::BindVirq, virq as u64, u64::from(request.vcpu))?;
            // Busy: bound already on that vCPU (-EEXIST), or no free port.
            let bound = domain.events.virq_port(virq, request.vcpu as usize).is_some();
            request.port = returned(port).map_err(|errno| match errno {
                Errno::Ebusy if bound => Errno::Eexist,
                Errno::Ebusy => Errno::Enospc,
                errno => errno,
            })?;
            space.write(domain, address, request.as_bytes()).map(|()| XenCall::Done(Ok(0)))
        }
        EvtchnOp::Status => {
            let mut request: EvtchnStatus = space.read_struct(domain, address)?;
            if request.dom != abi::xen::DOMID_SELF && u32::from(request.dom) != domain.id {
                return Err(Errno::Eperm);
            }
            let XenCall::Done(word) = mica(domain, EventOp::Status, u64::from(request.port), 0)? else {
                return Err(Errno::Einval);
            };
            let status = abi::event::PortStatus::decode(word?).ok_or(Errno::Einval)?;
            use abi::event::PortState as Mica;
            let remote_dom = status.remote_domain as u16;
            request.set_state(match status.state {
                // A port whose peer ended reads as closed: Xen makes it
                // unbound for the dead domain's id, which a later domain
                // with that id could bind; here nothing can, until closed.
                Mica::Free | Mica::Closed => XenPortState::Closed,
                Mica::Unbound => XenPortState::Unbound { remote_dom },
                Mica::Interdomain => XenPortState::Interdomain { remote_dom, remote_port: u32::from(status.remote) },
                // By Xen's number: Mica's own numbers differ.
                Mica::Virq => XenPortState::Virq(match domain.events.binding(request.port) {
                    Ok(crate::event::Binding::Virq(abi::event::Virq::Timer)) => XenVirq::Timer.number(),
                    Ok(crate::event::Binding::Virq(abi::event::Virq::Console)) => XenVirq::Console.number(),
                    _ => u32::from(status.remote),
                }),
                Mica::Pirq => XenPortState::Pirq(u32::from(status.remote)),
                Mica::Ipi => XenPortState::Ipi,
            });
            request.vcpu = domain.events.notify_vcpu(request.port) as u32;
            space.write(domain, address, request.as_bytes()).map(|()| XenCall::Done(Ok(0)))
        }
        EvtchnOp::AllocUnbound | EvtchnOp::BindInterdomain | EvtchnOp::Close => Ok(XenCall::Table),
        _ => Err(Errno::Enosys),
    }
}

/// Checks that `domid` names the caller (`DOMID_SELF` or its id).
fn own<P: Platform>(domain: &Domain<P>, domid: u16) -> Result<(), Errno> {
    if domid == abi::xen::DOMID_SELF || u32::from(domid) == domain.id { Ok(()) } else { Err(Errno::Eperm) }
}

/// The host frame of guest frame `gfn`, writable RAM of the domain (not
/// dom0's foreign window).
fn own_page<P: Platform>(domain: &Domain<P>, gfn: u64) -> Result<u64, Errno> {
    let address = gfn.checked_mul(abi::PAGE_SIZE).filter(|&a| a < abi::domctl::FOREIGN_WINDOW_BASE);
    let address = address.ok_or(Errno::Einval)?;
    domain.host_frame(address, Access::READ | Access::WRITE).map_err(|_| Errno::Einval)
}

/// `memory_op`: `add_to_physmap` of the shared-info page and of the
/// grant table's one frame. Mica keeps the guest's own RAM page at that
/// frame as the page (Xen puts one of its own there): for shared info,
/// its contents become the shared info, zeroed the first time, carried
/// over when the page moves; for the grant table, the guest's entries
/// there are the table (as `GrantOp::SetupTable` registers it).
fn memory_op<P: Platform>(
    domain: &mut Domain<P>,
    space: &AddressSpace,
    operation: u32,
    address: u64,
) -> Result<XenCall, Errno> {
    match MemoryOp::from_number(operation & MEMOP_CMD_MASK).ok_or(Errno::Enosys)? {
        MemoryOp::AddToPhysmap => {
            let request: XenAddToPhysmap = space.read_struct(domain, address)?;
            own(domain, request.domid)?;
            match (request.space, request.idx) {
                (XENMAPSPACE_SHARED_INFO, 0) => {}
                // Where a frame of the table goes concerns the domains that
                // map its grants (`grant_ops::place_table_frame`).
                (XENMAPSPACE_GRANT_TABLE, index) if index < GRANT_TABLE_FRAMES as u64 => {
                    return Ok(XenCall::Table);
                }
                (XENMAPSPACE_SHARED_INFO | XENMAPSPACE_GRANT_TABLE, _) => return Err(Errno::Einval),
                _ => return Err(Errno::Enosys),
            }
            let frame = own_page(domain, request.gpfn)?;
            let mut page = [0u8; abi::PAGE_SIZE as usize];
            if domain.xen_shared_info != 0 && !P::copy_from(domain.xen_shared_info, &mut page) {
                return Err(Errno::Efault);
            }
            if !P::copy_to(frame, &page) {
                return Err(Errno::Efault);
            }
            domain.xen_shared_info = frame;
            for vcpu in 0..domain.vcpu_count {
                write_time_info(domain, vcpu)?;
            }
            Ok(XenCall::Done(Ok(0)))
        }
        MemoryOp::MemoryMap => {
            use abi::xen::memory::XenMemoryMap;
            if domain.memory_map.is_empty() {
                return Err(Errno::Enosys);
            }
            let mut request: XenMemoryMap = space.read_struct(domain, address)?;
            let count = domain.memory_map.len().min(request.nr_entries as usize);
            for (index, entry) in domain.memory_map[..count].iter().enumerate() {
                let at = request.buffer.checked_add(index as u64 * 20).ok_or(Errno::Efault)?;
                space.write(domain, at, &entry.to_bytes())?;
            }
            request.nr_entries = count as u32;
            space.write(domain, address, request.as_bytes()).map(|()| XenCall::Done(Ok(0)))
        }
        // The toolstack's: another domain's map.
        MemoryOp::SetMemoryMap if domain.privileged => Ok(XenCall::Table),
        MemoryOp::SetMemoryMap => Err(Errno::Eperm),
        _ => Err(Errno::Enosys),
    }
}

/// `memory_op` set_memory_map by dom0: domain `domid`'s map, at most
/// `MEMORY_MAP_MAX_ENTRIES` entries.
fn set_memory_map<P: Platform>(
    domains: &mut DomainTable<'_, P>,
    caller: usize,
    space: &AddressSpace,
    address: u64,
) -> Result<u64, Errno> {
    use abi::xen::memory::{E820Entry, MEMORY_MAP_MAX_ENTRIES, XenForeignMemoryMap};
    let request: XenForeignMemoryMap = space.read_struct(&domains[caller], address)?;
    let target = domains.slot_of(u32::from(request.domid)).ok_or(Errno::Esrch)?;
    let count = request.map.nr_entries as usize;
    if count > MEMORY_MAP_MAX_ENTRIES {
        return Err(Errno::Einval);
    }
    let mut map = arrayvec::ArrayVec::new();
    for index in 0..count as u64 {
        let at = request.map.buffer.checked_add(index * 20).ok_or(Errno::Efault)?;
        let entry: E820Entry = space.read_struct(&domains[caller], at)?;
        map.try_push(entry).map_err(|_| Errno::Einval)?;
    }
    domains[target].memory_map = map;
    Ok(0)
}

/// `grant_table_op` on the caller alone: the table's size (one frame of
/// 512 entries, also the most) and its version (1 only). Mapping and
/// copying grants are Mica's own calls for now (`-ENOSYS` here).
fn grant_table_op<P: Platform>(
    domain: &mut Domain<P>,
    space: &AddressSpace,
    operation: u32,
    address: u64,
    count: u64,
) -> Result<u64, Errno> {
    use abi::xen::grant_table::{GnttabGetVersion, GnttabOp, GnttabQuerySize, GnttabSetVersion, GrantStatus};
    let operation = GnttabOp::from_number(operation).ok_or(Errno::Enosys)?;
    if matches!(operation, GnttabOp::QuerySize | GnttabOp::SetVersion | GnttabOp::GetVersion) && count != 1 {
        return Err(Errno::Einval);
    }
    match operation {
        GnttabOp::QuerySize => {
            let mut request: GnttabQuerySize = space.read_struct(domain, address)?;
            if request.dom != abi::xen::DOMID_SELF && u32::from(request.dom) != domain.id {
                request.status = GrantStatus::BadDomain.number();
            } else {
                // The frames placed: up to the highest one (Linux places
                // them from the highest down).
                let placed = domain.grant_frames.iter().rposition(|&frame| frame != 0).map_or(0, |last| last + 1);
                (request.nr_frames, request.max_nr_frames, request.status) =
                    (placed as u32, GRANT_TABLE_FRAMES as u32, GrantStatus::Okay.number());
            }
            space.write(domain, address, request.as_bytes()).map(|()| 0)
        }
        GnttabOp::SetVersion => {
            let mut request: GnttabSetVersion = space.read_struct(domain, address)?;
            let answer = match request.version {
                1 => Ok(0),
                2 => Err(Errno::Enosys),
                _ => Err(Errno::Einval),
            };
            request.version = 1;
            space.write(domain, address, request.as_bytes())?;
            answer
        }
        GnttabOp::GetVersion => {
            let mut request: GnttabGetVersion = space.read_struct(domain, address)?;
            own(domain, request.dom)?;
            request.version = 1;
            space.write(domain, address, request.as_bytes()).map(|()| 0)
        }
        _ => Err(Errno::Enosys),
    }
}

/// `hvm_op`: the callback vector (`HVM_PARAM_CALLBACK_IRQ`, vector type
/// only) is set and read; the store and console parameters read 0 until
/// dom0 sets them.
fn hvm_op<P: Platform>(
    domain: &mut Domain<P>,
    space: &AddressSpace,
    operation: u32,
    address: u64,
) -> Result<XenCall, Errno> {
    let operation = HvmOp::from_number(operation).ok_or(Errno::Enosys)?;
    if !matches!(operation, HvmOp::SetParam | HvmOp::GetParam) {
        return Err(Errno::Enosys);
    }
    let mut request: XenHvmParam = space.read_struct(domain, address)?;
    if own(domain, request.domid).is_err() && domain.privileged {
        // The toolstack sets another domain's parameters.
        return Ok(XenCall::Table);
    }
    own(domain, request.domid)?;
    if request.index >= HVM_NR_PARAMS {
        return Err(Errno::Einval);
    }
    let done = |result| Ok(XenCall::Done(result));
    match (operation, request.index) {
        (HvmOp::SetParam, HVM_PARAM_CALLBACK_IRQ) => {
            domain.upcall_vector = match CallbackVia::decode(request.value) {
                CallbackVia::None => 0,
                CallbackVia::Vector(vector) if vector >= 32 => vector,
                // Mica raises no interrupt lines for guests: vectors only.
                _ => return Err(Errno::Einval),
            };
            done(Ok(0))
        }
        (HvmOp::GetParam, index) => {
            request.value = match index {
                HVM_PARAM_CALLBACK_IRQ if domain.upcall_vector != 0 => {
                    CallbackVia::Vector(domain.upcall_vector).encode()
                }
                HVM_PARAM_CALLBACK_IRQ => 0,
                index => match TOOLSTACK_PARAMS.iter().position(|&param| param == index) {
                    Some(slot) => domain.hvm_params[slot],
                    None => return Err(Errno::Eperm),
                },
            };
            done(space.write(domain, address, request.as_bytes()).map(|()| 0))
        }
        _ => Err(Errno::Eperm),
    }
}

/// The HVM parameters the toolstack sets and the guest reads: the store's
/// frame and port, the console's frame and port (in `Domain::hvm_params`
/// order). A port is the guest's own, bound to dom0's end before it runs.
pub const TOOLSTACK_PARAMS: [u32; 4] = {
    use abi::xen::hvm::{HVM_PARAM_CONSOLE_EVTCHN, HVM_PARAM_CONSOLE_PFN, HVM_PARAM_STORE_EVTCHN, HVM_PARAM_STORE_PFN};
    [HVM_PARAM_STORE_PFN, HVM_PARAM_STORE_EVTCHN, HVM_PARAM_CONSOLE_PFN, HVM_PARAM_CONSOLE_EVTCHN]
};

/// `hvm_op` set_param or get_param by dom0 on another domain (the
/// toolstack): one of [`TOOLSTACK_PARAMS`], else `-EINVAL`. A frame must
/// be the domain's RAM, a port within its table; `-ESRCH` for a domain
/// that does not exist.
fn toolstack_param<P: Platform>(
    domains: &mut DomainTable<'_, P>,
    caller: usize,
    space: &AddressSpace,
    operation: u64,
    address: u64,
) -> Result<u64, Errno> {
    use abi::xen::hvm::{HVM_PARAM_CONSOLE_PFN, HVM_PARAM_STORE_PFN};
    let mut request: XenHvmParam = space.read_struct(&domains[caller], address)?;
    if !domains[caller].privileged {
        return Err(Errno::Eperm);
    }
    let target = domains.slot_of(u32::from(request.domid)).ok_or(Errno::Esrch)?;
    let slot = TOOLSTACK_PARAMS.iter().position(|&param| param == request.index).ok_or(Errno::Einval)?;
    match HvmOp::from_number(operation as u32) {
        Some(HvmOp::SetParam) => {
            let valid = match request.index {
                HVM_PARAM_STORE_PFN | HVM_PARAM_CONSOLE_PFN => own_page(&domains[target], request.value).is_ok(),
                _ => request.value < abi::event::PORT_COUNT as u64,
            };
            if !valid {
                return Err(Errno::Einval);
            }
            domains[target].hvm_params[slot] = request.value;
            Ok(0)
        }
        Some(HvmOp::GetParam) => {
            request.value = domains[target].hvm_params[slot];
            space.write(&domains[caller], address, request.as_bytes()).map(|()| 0)
        }
        _ => Err(Errno::Enosys),
    }
}

/// Host address of `vcpu`'s `vcpu_info`, if the domain placed its shared
/// info (the slot there) or registered one.
fn vcpu_info_address<P: Platform>(domain: &Domain<P>, vcpu: usize) -> Option<u64> {
    match (domain.xen_vcpu_info[vcpu], domain.xen_shared_info) {
        (0, 0) => None,
        (0, shared_info) => Some(shared_info + 64 * vcpu as u64),
        (registered, _) => Some(registered),
    }
}

/// Writes vCPU `vcpu`'s time (pvclock) into its `vcpu_info`: system time
/// is nanoseconds since the TSC's zero, at the TSC's rate. hv runs on
/// CPUs whose TSCs tick alike and together, so the one snapshot holds
/// for good (`PVCLOCK_TSC_STABLE_BIT`), and it is written only when the
/// structure is placed. The version is odd while it changes, as the
/// protocol asks.
fn write_time_info<P: Platform>(domain: &Domain<P>, vcpu: usize) -> Result<(), Errno> {
    let Some(info) = vcpu_info_address(domain, vcpu) else { return Ok(()) };
    let (mul, shift) = pvclock_scale_for_frequency(P::tsc_khz() * 1000).ok_or(Errno::Einval)?;
    let time = info + 32;
    let snapshot =
        VcpuTimeInfo { tsc_to_system_mul: mul, tsc_shift: shift, flags: PVCLOCK_TSC_STABLE_BIT, ..Default::default() };
    // Odd while the rest changes, then the next even value (the word also
    // holds `pad0`, zero).
    let odd = P::load(time) as u32 | 1;
    P::swap(time, u64::from(odd));
    if !P::copy_to(time + 8, &snapshot.as_bytes()[8..]) {
        return Err(Errno::Efault);
    }
    P::swap(time, u64::from(odd.wrapping_add(1)));
    Ok(())
}

/// The index of the domain's vCPU `vcpu`; `-ENOENT` if it has none.
fn vcpu_index<P: Platform>(domain: &Domain<P>, vcpu: u64) -> Result<usize, Errno> {
    usize::try_from(vcpu).ok().filter(|&v| v < domain.vcpu_count).ok_or(Errno::Enoent)
}

/// `vcpu_op`: placing a vCPU's `vcpu_info` (once per vCPU, as in Xen; its
/// contents move along), giving a vCPU its first state (`initialise`),
/// taking one down, whether a vCPU is up, and the calls Linux makes
/// that need nothing from Mica: the runstate area is accepted and left
/// unwritten, and there is no periodic timer to stop. `up` is
/// [`vcpu_up`].
fn vcpu_op<P: Platform>(
    domain: &mut Domain<P>,
    space: &AddressSpace,
    operation: u32,
    vcpu: u64,
    address: u64,
) -> Result<u64, Errno> {
    let vcpu = vcpu_index(domain, vcpu)?;
    match VcpuOp::from_number(operation).ok_or(Errno::Enosys)? {
        // As in Xen: once per vCPU (a vCPU that was started or is up is
        // initialised too), read before anything is checked.
        VcpuOp::Initialise => {
            let request: VcpuHvmContext32 = space.read_struct(domain, address)?;
            let slot = &domain.vcpus[vcpu];
            if slot.start_state.is_some() || slot.up || slot.running {
                return Err(Errno::Eexist);
            }
            domain.vcpus[vcpu].start_state = Some(start_state(&request)?);
            Ok(0)
        }
        // As in Xen, a vCPU that is down already stays so (0), and the
        // last one up going down shuts the domain down (power-off); dom0
        // going down would be the machine (`-EPERM`, as in `sched_op`).
        // It keeps its initialised state for `up`.
        VcpuOp::Down => match crate::domctl::stop_vcpu(domain, vcpu) {
            Ok(()) | Err(abi::Error::NotFound) => Ok(0),
            Err(abi::Error::Busy) if domain.privileged => Err(Errno::Eperm),
            Err(abi::Error::Busy) => {
                P::log(Level::Info, format_args!("d{} shut down (its last vCPU went down)", domain.id));
                domain.ended = Some(Ended::Shutdown(abi::hypercall::ShutdownReason::PowerOff));
                domain.stop_all();
                Ok(0)
            }
            Err(error) => Err(errno(error)),
        },
        VcpuOp::RegisterVcpuInfo => {
            let request: VcpuRegisterVcpuInfo = space.read_struct(domain, address)?;
            let size = size_of::<abi::xen::shared_info::VcpuInfo>() as u32;
            if domain.xen_vcpu_info[vcpu] != 0 {
                return Err(Errno::Ebusy);
            }
            if !request.offset.is_multiple_of(8) || request.offset > 4096 - size {
                return Err(Errno::Enxio);
            }
            let info = own_page(domain, request.mfn)? + u64::from(request.offset);
            // What the guest had in its shared-info slot comes along.
            let mut bytes = [0u8; 64];
            if domain.xen_shared_info != 0 && !P::copy_from(domain.xen_shared_info + 64 * vcpu as u64, &mut bytes) {
                return Err(Errno::Efault);
            }
            if !P::copy_to(info, &bytes) {
                return Err(Errno::Efault);
            }
            domain.xen_vcpu_info[vcpu] = info;
            write_time_info(domain, vcpu).map(|()| 0)
        }
        // The single-shot timer, in system time (ns): the calling vCPU's
        // own, which raises its VIRQ_TIMER port. A time already past fires
        // at once (Xen's `VCPU_SSHOTTMR_future` is ignored, as Xen does).
        VcpuOp::SetSingleshotTimer | VcpuOp::StopSingleshotTimer if vcpu != P::current_vcpu() => Err(Errno::Einval),
        VcpuOp::SetSingleshotTimer => {
            let request: VcpuSetSingleshotTimer = space.read_struct(domain, address)?;
            domain.vcpus[vcpu].timer_deadline = tsc_deadline::<P>(request.timeout_abs_ns);
            Ok(0)
        }
        VcpuOp::StopSingleshotTimer => {
            domain.vcpus[vcpu].timer_deadline = 0;
            Ok(0)
        }
        VcpuOp::IsUp => Ok(u64::from(domain.vcpus[vcpu].up)),
        VcpuOp::RegisterRunstateMemoryArea | VcpuOp::StopPeriodicTimer => Ok(0),
        _ => Err(Errno::Enosys),
    }
}

/// `vcpu_op` up, with every domain locked (the vCPU's VPID comes from its
/// domain's slot, `caller`): starts an initialised vCPU that is down. As
/// in Xen, one that is up stays as it is (0) and one never initialised is
/// `-EINVAL`. One that went down starts again from the state it was
/// initialised with or last started from: Xen resumes it where it
/// stopped, but hv does not keep a stopped vCPU's registers. One still
/// leaving its CPU after going down is waited for: the call runs again
/// once the caller is next entered (`domctl::restart`).
fn vcpu_up<P: Platform>(hv: &mut Hypervisor<'_, P>, caller: usize, vcpu: u64) -> Result<u64, Errno> {
    let domain = &mut hv.domains[caller];
    let vcpu = vcpu_index(domain, vcpu)?;
    let slot = &domain.vcpus[vcpu];
    if slot.up {
        return Ok(0);
    }
    let (context, registers) = slot.start_state.ok_or(Errno::Einval)?;
    if slot.running {
        crate::domctl::restart(domain);
        return Ok(0);
    }
    crate::domctl::start_checked(domain, caller, vcpu, &context, registers).map(|()| 0).map_err(errno)
}

/// CR0's protection-enable and paging bits, and those a CPU in VMX
/// operation holds at 1 whatever is asked (extension type, numeric error).
const CR0_PE: u64 = 1;
const CR0_PG: u64 = 1 << 31;
const CR0_FIXED: u64 = 1 << 4 | 1 << 5;
/// EFER's long-mode active bit, which the CPU sets with LME and paging.
const EFER_LMA: u64 = 1 << 10;
/// RFLAGS bit 1, always 1.
const RFLAGS_FIXED: u64 = 1 << 1;

/// hv's 64-bit entry state (`abi::domctl::VCPU_MODE_LONG`): CR0 = PE, MP,
/// ET, NE, WP, PG; CR4 = PAE; EFER = LME, LMA, NXE; RFLAGS = bit 1 alone
/// (interrupts off). Xen's `VCPU_HVM_MODE_64B` must ask for it.
pub const LONG_MODE_CR0: u64 = 0x8005_0033;
/// See [`LONG_MODE_CR0`].
pub const LONG_MODE_CR4: u64 = 1 << 5;
/// See [`LONG_MODE_CR0`].
pub const LONG_MODE_EFER: u64 = 1 << 8 | EFER_LMA | 1 << 11;
/// hv's 32-bit entry state (`abi::domctl::VCPU_MODE_PVH`): CR0 = PE, ET,
/// NE (paging off); CR3, CR4 and EFER 0; flat segments. Xen's
/// `VCPU_HVM_MODE_32B` must ask for it.
pub const PROTECTED_MODE_CR0: u64 = 0x31;
/// Access rights, in Xen's `*_ar` layout, of the flat 32-bit code segment
/// (execute/read, accessed, present, 32-bit, 4 KiB granular), the flat
/// data segment (read/write) and the busy TSS of hv's entry states.
const CODE32_AR: u16 = 0xc9b;
const DATA32_AR: u16 = 0xc93;
const TSS_BUSY_AR: u16 = 0x8b;

/// Whether `address` is canonical (bits 63..48 copy bit 47).
fn canonical(address: u64) -> bool {
    ((address << 16) as i64 >> 16) as u64 == address
}

/// The state `VCPUOP_initialise` gives a vCPU, from Xen's
/// `vcpu_hvm_context` (`request`; read as the 32-bit set, the 64-bit one
/// is the same bytes). hv starts vCPUs in one of its two entry states, so
/// the registers Xen lets a guest choose must ask for one of them (CR0
/// bits the CPU fixes, RFLAGS bit 1 and EFER.LMA may be left out), with
/// any general registers, instruction and stack pointer. 64-bit: RIP and
/// RSP canonical, CR3 a page-aligned address below the foreign window;
/// its segments are flat (hidden parts only: the GDT register is 0, as in
/// Xen, until the guest loads its own). 32-bit: paging off, segments
/// flat. `-EINVAL` for another mode or state.
fn start_state(request: &VcpuHvmContext32) -> Result<(VcpuContext, StartRegisters), Errno> {
    use zerocopy::FromBytes;
    let no_gdt = |mode, rip, rsp, cr3| VcpuContext { rip, rsp, cr3, mode, ..VcpuContext::default() };
    match request.mode {
        VCPU_HVM_MODE_64B => {
            let registers = VcpuHvmContext64::read_from_bytes(request.as_bytes()).map_err(|_| Errno::Einval)?.x86_64;
            let valid = canonical(registers.rip)
                && canonical(registers.rsp)
                && registers.cr3.is_multiple_of(abi::PAGE_SIZE)
                && registers.cr3 < abi::domctl::FOREIGN_WINDOW_BASE
                && registers.cr0 & (CR0_PE | CR0_PG) == CR0_PE | CR0_PG
                && registers.cr0 | CR0_FIXED == LONG_MODE_CR0
                && registers.cr4 == LONG_MODE_CR4
                && registers.efer | EFER_LMA == LONG_MODE_EFER
                && registers.rflags | RFLAGS_FIXED == RFLAGS_FIXED;
            if !valid {
                return Err(Errno::Einval);
            }
            let context = no_gdt(abi::domctl::VCPU_MODE_LONG, registers.rip, registers.rsp, registers.cr3);
            Ok((
                VcpuContext { rdi: registers.rdi, ..context },
                StartRegisters {
                    rax: registers.rax,
                    rcx: registers.rcx,
                    rdx: registers.rdx,
                    rbx: registers.rbx,
                    rbp: registers.rbp,
                    rsi: registers.rsi,
                    rdi: registers.rdi,
                },
            ))
        }
        VCPU_HVM_MODE_32B => {
            let registers = &request.x86_32;
            let flat = |base: u32, limit: u32, ar: u16, wanted: u16| (base, limit, ar | 1) == (0, u32::MAX, wanted);
            let valid = u64::from(registers.cr0) & (CR0_PE | CR0_PG) == CR0_PE
                && u64::from(registers.cr0) | CR0_FIXED == PROTECTED_MODE_CR0
                && (registers.cr3, registers.cr4, registers.efer) == (0, 0, 0)
                && registers.eflags | RFLAGS_FIXED as u32 == RFLAGS_FIXED as u32
                && flat(registers.cs_base, registers.cs_limit, registers.cs_ar, CODE32_AR)
                && flat(registers.ds_base, registers.ds_limit, registers.ds_ar, DATA32_AR)
                && flat(registers.ss_base, registers.ss_limit, registers.ss_ar, DATA32_AR)
                && flat(registers.es_base, registers.es_limit, registers.es_ar, DATA32_AR)
                && (registers.tr_base, registers.tr_limit, registers.tr_ar) == (0, 0x67, TSS_BUSY_AR);
            if !valid {
                return Err(Errno::Einval);
            }
            let context = no_gdt(abi::domctl::VCPU_MODE_PVH, registers.eip.into(), registers.esp.into(), 0);
            Ok((
                VcpuContext { rdi: registers.ebx.into(), ..context },
                StartRegisters {
                    rax: registers.eax.into(),
                    rcx: registers.ecx.into(),
                    rdx: registers.edx.into(),
                    rbx: registers.ebx.into(),
                    rbp: registers.ebp.into(),
                    rsi: registers.esi.into(),
                    rdi: registers.edi.into(),
                },
            ))
        }
        _ => Err(Errno::Einval),
    }
}

/// `set_timer_op`: the calling vCPU's single-shot timer, the deadline in
/// a register (system time in ns; 0 stops it), as
/// `VCPUOP_set_singleshot_timer` and `VCPUOP_stop_singleshot_timer` do
/// with a structure. A time already past fires at once.
fn set_timer_op<P: Platform>(domain: &mut Domain<P>, timeout_ns: u64) -> u64 {
    let vcpu = P::current_vcpu();
    domain.vcpus[vcpu].timer_deadline = if timeout_ns == 0 { 0 } else { tsc_deadline::<P>(timeout_ns) };
    0
}

fn xen_version<P: Platform>(
    domain: &Domain<P>,
    space: &AddressSpace,
    operation: u32,
    address: u64,
) -> Result<u64, Errno> {
    match XenVersionOp::from_number(operation).ok_or(Errno::Enosys)? {
        XenVersionOp::Version => Ok(u64::from(XEN_VERSION)),
        XenVersionOp::Pagesize => Ok(abi::PAGE_SIZE),
        XenVersionOp::Extraversion => {
            space.write(domain, address, XenExtraversion::new(EXTRAVERSION).as_bytes()).map(|()| 0)
        }
        XenVersionOp::GetFeatures => {
            let mut info: XenFeatureInfo = space.read_struct(domain, address)?;
            // One word of features; Xen answers a larger index with -EINVAL.
            info.submap = match info.submap_idx {
                0 => FEATURES,
                _ => return Err(Errno::Einval),
            };
            space.write(domain, address, info.as_bytes()).map(|()| 0)
        }
        _ => Err(Errno::Enosys),
    }
}

fn console_io<P: Platform>(
    domain: &mut Domain<P>,
    space: &AddressSpace,
    operation: u32,
    count: u64,
    address: u64,
) -> Result<u64, Errno> {
    match ConsoleIoOp::from_number(operation).ok_or(Errno::Enosys)? {
        ConsoleIoOp::Write => {
            let mut buffer = [0u8; CONSOLE_WRITE_MAX];
            let text = &mut buffer[..count.min(CONSOLE_WRITE_MAX as u64) as usize];
            space.read(domain, address, text)?;
            // As Xen does, pieces are gathered into whole lines: a guest
            // printing a line in parts logs it once.
            for &byte in text.iter() {
                let line = &mut domain.console_line;
                line.push(byte);
                if byte == b'\n' || line.is_full() {
                    P::domain_text(domain.id, line, &mut domain.log_budget);
                    line.clear();
                }
            }
            Ok(0)
        }
        // hv's console input belongs to dom0's UART driver, not to a call.
        ConsoleIoOp::Read => Err(Errno::Eperm),
    }
}

/// The TSC value at system time `ns` (hv's pvclock: ns since TSC 0),
/// rounded up so that a timer never fires early; at least 1 (0 means
/// "none" in the deadlines).
fn tsc_deadline<P: Platform>(ns: u64) -> u64 {
    let khz = u128::from(P::tsc_khz().max(1));
    u64::try_from((u128::from(ns) * khz).div_ceil(1_000_000)).unwrap_or(u64::MAX).max(1)
}

fn sched_op<P: Platform>(
    domain: &mut Domain<P>,
    space: &AddressSpace,
    operation: u32,
    address: u64,
) -> Result<u64, Errno> {
    let vcpu = P::current_vcpu();
    match SchedOp::from_number(operation).ok_or(Errno::Enosys)? {
        SchedOp::Yield => {
            domain.vcpus[vcpu].reschedule = true;
            Ok(0)
        }
        SchedOp::Block => {
            crate::event_ops::block(domain, vcpu);
            Ok(0)
        }
        SchedOp::Shutdown => {
            let request: SchedShutdown = space.read_struct(domain, address)?;
            let reason = match ShutdownReason::from_number(request.reason) {
                Some(ShutdownReason::Poweroff) => abi::hypercall::ShutdownReason::PowerOff,
                Some(ShutdownReason::Reboot) => abi::hypercall::ShutdownReason::Reboot,
                Some(ShutdownReason::Crash) => abi::hypercall::ShutdownReason::Crash,
                // A suspend needs a resume and a soft reset a toolstack
                // that rebuilds in place: Mica has neither, so the guest
                // goes on (Linux takes the error as a cancelled suspend).
                Some(ShutdownReason::Suspend | ShutdownReason::SoftReset) => return Err(Errno::Einval),
                // Its watchdog expired: Xen's toolstack restarts or
                // destroys it (on_watchdog); here it is a crash (on_crash).
                Some(ShutdownReason::Watchdog) => {
                    P::log(Level::Warning, format_args!("d{}: its watchdog expired: a crash", domain.id));
                    abi::hypercall::ShutdownReason::Crash
                }
                // A code Xen does not define: a bad argument (Xen would end
                // the domain and leave its toolstack to guess).
                None => return Err(Errno::Einval),
            };
            if domain.privileged {
                // dom0 shutting down is the machine shutting down.
                return Err(Errno::Eperm);
            }
            P::log(Level::Info, format_args!("d{} shut down ({reason:?})", domain.id));
            domain.ended = Some(Ended::Shutdown(reason));
            domain.stop_all();
            Ok(0)
        }
        SchedOp::Poll => {
            use abi::xen::sched::{SCHED_POLL_MAX_PORTS, SchedPoll};
            let request: SchedPoll = space.read_struct(domain, address)?;
            if request.nr_ports > SCHED_POLL_MAX_PORTS {
                return Err(Errno::Einval);
            }
            let mut ports = [0u64; abi::event::BITMAP_WORDS];
            for index in 0..u64::from(request.nr_ports) {
                let at = request.ports.checked_add(index * 4).ok_or(Errno::Efault)?;
                let port = space.read_u32(domain, at)? as usize;
                if port >= abi::event::PORT_COUNT {
                    return Err(Errno::Einval);
                }
                ports[port / 64] |= 1 << (port % 64);
            }
            let deadline = if request.timeout == 0 { 0 } else { tsc_deadline::<P>(request.timeout) };
            crate::event_ops::poll(domain, vcpu, ports, deadline);
            Ok(0)
        }
        _ => Err(Errno::Enosys),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_platform::{self as machine, Fake};
    use crate::guest_virtual::{LARGE, PRESENT, WRITABLE};
    use abi::xen::hypercall::Hypercall as H;
    use zerocopy::FromBytes;

    /// Guest-physical layout: four page-table pages, then data.
    const PML4: u64 = 0x1000;
    const PDPT: u64 = 0x2000;
    const PD: u64 = 0x3000;
    const PT: u64 = 0x4000;
    const DATA: u64 = 0x5000;
    /// Tables of the large-page mappings.
    const PDPT_LOW: u64 = 0x8000;
    const PD_LOW: u64 = 0x9000;
    const PDPT_HIGH: u64 = 0xa000;
    /// Where the tables map `DATA` (and the page after it, read-only).
    const VIRTUAL: u64 = 0xffff_8000_0020_0000;

    /// A domain with 16 pages of RAM from 0 and long-mode page tables that
    /// map `VIRTUAL` to `DATA` (writable) and `VIRTUAL + 4 KiB` to
    /// `DATA + 4 KiB` (read-only), 2 MiB pages at 1 GiB and a 1 GiB page
    /// at 512 GiB onto low memory.
    fn domain(privileged: bool) -> (Domain<Fake>, AddressSpace) {
        domain_with_id(if privileged { 0 } else { 1 })
    }

    /// As [`domain`], with id `id` (dom0 for 0).
    fn domain_with_id(id: abi::DomainId) -> (Domain<Fake>, AddressSpace) {
        let mut domain = Domain::<Fake>::new(id, id == abi::DOM0, 64).unwrap();
        domain.populate(0, 16).unwrap();
        let entry = |domain: &Domain<Fake>, table: u64, index: u64, value: u64| {
            domain.write_guest(table + index * 8, &value.to_le_bytes()).unwrap();
        };
        let table = PRESENT | WRITABLE;
        entry(&domain, PML4, (VIRTUAL >> 39) & 0x1ff, PDPT | table);
        entry(&domain, PDPT, (VIRTUAL >> 30) & 0x1ff, PD | table);
        entry(&domain, PD, (VIRTUAL >> 21) & 0x1ff, PT | table);
        entry(&domain, PT, (VIRTUAL >> 12) & 0x1ff, DATA | table);
        entry(&domain, PT, ((VIRTUAL >> 12) & 0x1ff) + 1, (DATA + 0x1000) | PRESENT);
        // 1 GiB: a 2 MiB page onto 0; 512 GiB: a 1 GiB page onto 0.
        entry(&domain, PML4, 0, PDPT_LOW | table);
        entry(&domain, PDPT_LOW, 1, PD_LOW | table);
        entry(&domain, PD_LOW, 0, LARGE | table);
        entry(&domain, PML4, 1, PDPT_HIGH | table);
        entry(&domain, PDPT_HIGH, 0, LARGE | table);
        (domain, AddressSpace::LongMode { cr3: PML4, vcpu: 0 })
    }

    fn call(domain: &mut Domain<Fake>, space: &AddressSpace, number: H, arguments: [u64; 3]) -> Result<u64, Errno> {
        match dispatch(domain, space, number.number(), [arguments[0], arguments[1], arguments[2], 0, 0]) {
            XenCall::Done(result) => result,
            other => panic!("{number:?} {arguments:x?}: {other:?}"),
        }
    }

    #[test]
    fn numbers_xen_does_not_define_are_enosys_wherever_they_are() {
        let (mut domain, space) = domain(false);
        // Below 64, between Xen's and Mica's ranges, above Mica's: hv's run
        // loop sends every number outside Mica's range here.
        for number in [11, 63, 64, 9999, 0x1100, 1 << 32, u64::MAX] {
            assert!(!abi::xen::hypercall::is_mica_number(number));
            match dispatch(&mut domain, &space, number, [0; 5]) {
                XenCall::Done(result) => assert_eq!(result, Err(Errno::Enosys), "number {number:#x}"),
                other => panic!("number {number:#x}: {other:?}"),
            }
        }
    }

    #[test]
    fn guest_virtual_addresses_go_through_the_vcpus_page_tables() {
        let (domain, space) = domain(false);
        let translate = |address, write| space.translate(&domain, address, write);
        assert_eq!(translate(VIRTUAL + 0x123, true), Ok(DATA + 0x123));
        assert_eq!(translate(VIRTUAL + 0x1008, false), Ok(DATA + 0x1008));
        assert_eq!(translate(VIRTUAL + 0x1008, true), Err(Errno::Efault), "a read-only page is not written");
        assert_eq!(translate(VIRTUAL + 0x2000, false), Err(Errno::Efault), "not present");
        assert_eq!(translate(0x4000_0000 + 0x5123, false), Ok(0x5123), "2 MiB page");
        assert_eq!(translate(0x4000_0000 + 0x1_2345, false), Err(Errno::Efault), "mapped, but not the domain's RAM");
        assert_eq!(translate((512 << 30) + 0x3456, true), Ok(0x3456), "1 GiB page");
        assert_eq!(translate(0x0000_8000_0000_0000, false), Err(Errno::Efault), "not canonical");
        assert_eq!(AddressSpace::Physical.translate(&domain, 0x1234, true), Ok(0x1234));
        assert_eq!(AddressSpace::Unsupported.translate(&domain, 0x1234, false), Err(Errno::Efault));
        // A copy across the two pages takes each from its own frame, and
        // a write stops at the read-only one.
        domain.write_guest(DATA + 0xffc, b"abcd").unwrap();
        domain.write_guest(DATA + 0x1000, b"efgh").unwrap();
        let mut bytes = [0; 8];
        space.read(&domain, VIRTUAL + 0xffc, &mut bytes).unwrap();
        assert_eq!(&bytes, b"abcdefgh");
        let word = |address| space.read_u32(&domain, address).map(u32::to_le_bytes);
        assert_eq!(word(VIRTUAL + 0xffc), Ok(*b"abcd"), "the upper half of a word");
        assert_eq!(word(VIRTUAL + 0x1000), Ok(*b"efgh"), "the lower half");
        assert_eq!(word(VIRTUAL + 0xffe), Ok(*b"cdef"), "unaligned, across two pages");
        assert_eq!(space.write(&domain, VIRTUAL + 0xffc, b"12345678"), Err(Errno::Efault));
    }

    #[test]
    fn a_cached_walk_is_used_only_while_the_tables_and_the_ept_say_the_same() {
        let (mut domain, space) = domain(false);
        domain.write_guest(DATA, b"data").unwrap();
        domain.write_guest(DATA + 0x1000, b"next").unwrap();
        let read = |domain: &Domain<Fake>| {
            let mut bytes = [0; 4];
            space.read(domain, VIRTUAL, &mut bytes).map(|()| bytes)
        };
        assert_eq!(read(&domain), Ok(*b"data"));
        assert_eq!(domain.vcpus[0].walk.borrow().page(), Some(VIRTUAL), "the walk is kept");
        assert_eq!(read(&domain), Ok(*b"data"));
        // The guest points the page elsewhere (read-only): the next call
        // sees it, TLB flush or not.
        let entry = PT + ((VIRTUAL >> 12) & 0x1ff) * 8;
        domain.write_guest(entry, &((DATA + 0x1000) | PRESENT).to_le_bytes()).unwrap();
        assert_eq!(read(&domain), Ok(*b"next"));
        assert_eq!(space.write(&domain, VIRTUAL, b"xxxx"), Err(Errno::Efault));
        domain.write_guest(entry, &(DATA | PRESENT | WRITABLE).to_le_bytes()).unwrap();
        assert_eq!(space.write(&domain, VIRTUAL, b"DATA"), Ok(()));
        assert_eq!(read(&domain), Ok(*b"DATA"));
        // An upper level goes away: so does the translation.
        let top = PML4 + ((VIRTUAL >> 39) & 0x1ff) * 8;
        domain.write_guest(top, &0u64.to_le_bytes()).unwrap();
        assert_eq!(read(&domain), Err(Errno::Efault));
        domain.write_guest(top, &(PDPT | PRESENT | WRITABLE).to_le_bytes()).unwrap();
        assert_eq!(read(&domain), Ok(*b"DATA"));
        // Another CR3 walks its own tables (none at 0: all zero).
        let other = AddressSpace::LongMode { cr3: DATA + 0x2000, vcpu: 0 };
        assert_eq!(other.read(&domain, VIRTUAL, &mut [0; 4]), Err(Errno::Efault));
        assert_eq!(read(&domain), Ok(*b"DATA"));
        // hv takes the frame from the domain: the walk kept must not reach
        // it (the fake's memory still holds the old bytes).
        domain.ept.unmap(&mut Fake::tables(), DATA).unwrap();
        assert_eq!(read(&domain), Err(Errno::Efault));
    }

    #[test]
    fn xen_version_reports_xen_4_17_mica_and_the_features_offered() {
        let (mut domain, space) = domain(false);
        let version = |domain: &mut Domain<Fake>, op: XenVersionOp, address| {
            call(domain, &space, H::XenVersion, [u64::from(op.number()), address, 0])
        };
        assert_eq!(version(&mut domain, XenVersionOp::Version, 0), Ok(4 << 16 | 17));
        assert_eq!(version(&mut domain, XenVersionOp::Pagesize, 0), Ok(4096));
        assert_eq!(version(&mut domain, XenVersionOp::Extraversion, VIRTUAL), Ok(0));
        let mut text = [0; 16];
        domain.read_guest(DATA, &mut text).unwrap();
        assert_eq!(&text, b".0-mica\0\0\0\0\0\0\0\0\0");
        domain.write_guest(DATA, &[0; 8]).unwrap();
        assert_eq!(version(&mut domain, XenVersionOp::GetFeatures, VIRTUAL), Ok(0));
        let mut info = [0; 8];
        domain.read_guest(DATA, &mut info).unwrap();
        assert_eq!(u32::from_le_bytes(info[4..].try_into().unwrap()), FEATURES);
        assert_ne!(FEATURES & 1 << feature::AUTO_TRANSLATED_PHYSMAP, 0);
        assert_ne!(FEATURES & 1 << feature::HVM_CALLBACK_VECTOR, 0, "Linux PVH needs the vector callback");
        domain.write_guest(DATA, &1u32.to_le_bytes()).unwrap();
        assert_eq!(version(&mut domain, XenVersionOp::GetFeatures, VIRTUAL), Err(Errno::Einval), "one word only");
        assert_eq!(version(&mut domain, XenVersionOp::Extraversion, VIRTUAL + 0x1000), Err(Errno::Efault));
        assert_eq!(version(&mut domain, XenVersionOp::CompileInfo, VIRTUAL), Err(Errno::Enosys));
        assert_eq!(call(&mut domain, &space, H::XenVersion, [99, 0, 0]), Err(Errno::Enosys));
    }

    #[test]
    fn console_io_writes_lines_to_hvs_log_and_reads_nothing() {
        let (mut domain, space) = domain(false);
        domain.write_guest(DATA, b"hello from a Xen guest\n").unwrap();
        let write = u64::from(ConsoleIoOp::Write.number());
        // In three pieces: logged once, as one line.
        for (offset, length) in [(0, 5), (5, 10), (15, 8)] {
            assert_eq!(call(&mut domain, &space, H::ConsoleIo, [write, length, VIRTUAL + offset]), Ok(0));
        }
        assert_eq!(machine::with(|state| state.log.clone()), ["(d1) hello from a Xen guest\n"]);
        // A line longer than the buffer is logged in full pieces.
        let long = [b'x'; crate::domain::CONSOLE_LINE_BYTES + 1];
        domain.write_guest(DATA, &long).unwrap();
        assert_eq!(call(&mut domain, &space, H::ConsoleIo, [write, long.len() as u64, VIRTUAL]), Ok(0));
        assert_eq!(machine::with(|state| state.log.len()), 2);
        assert_eq!(domain.console_line.as_slice(), b"x", "the rest waits for its newline");
        assert_eq!(call(&mut domain, &space, H::ConsoleIo, [write, 4, VIRTUAL + 0x2000]), Err(Errno::Efault));
        let read = u64::from(ConsoleIoOp::Read.number());
        assert_eq!(call(&mut domain, &space, H::ConsoleIo, [read, 4, VIRTUAL]), Err(Errno::Eperm));
        assert_eq!(call(&mut domain, &space, H::ConsoleIo, [2, 4, VIRTUAL]), Err(Errno::Enosys));
        // Counts past the limit are cut, not refused; the upper half of
        // the sub-operation word is ignored, as in Xen.
        assert_eq!(call(&mut domain, &space, H::ConsoleIo, [write | 1 << 32, 1 << 40, 0x4000_0000]), Ok(0));
    }

    #[test]
    fn sched_op_shuts_a_guest_down_for_the_reasons_mica_has() {
        let shutdown = u64::from(SchedOp::Shutdown.number());
        use abi::hypercall::ShutdownReason as Ends;
        for (reason, expected) in [
            (ShutdownReason::Poweroff.number(), Ok(Ends::PowerOff)),
            (ShutdownReason::Reboot.number(), Ok(Ends::Reboot)),
            (ShutdownReason::Crash.number(), Ok(Ends::Crash)),
            (ShutdownReason::Suspend.number(), Err(Errno::Einval)),
            (ShutdownReason::SoftReset.number(), Err(Errno::Einval)),
            (ShutdownReason::Watchdog.number(), Ok(Ends::Crash)),
            (7, Err(Errno::Einval)),
            (u32::MAX, Err(Errno::Einval)),
        ] {
            let (mut domain, space) = domain(false);
            domain.write_guest(DATA, &reason.to_le_bytes()).unwrap();
            let result = call(&mut domain, &space, H::SchedOp, [shutdown, VIRTUAL, 0]);
            match expected {
                Ok(ended) => {
                    assert_eq!(result, Ok(0));
                    assert_eq!(domain.ended, Some(Ended::Shutdown(ended)));
                }
                Err(errno) => {
                    assert_eq!(result, Err(errno));
                    assert_eq!(domain.ended, None);
                }
            }
        }
        let (mut domain, space) = domain(false);
        assert_eq!(call(&mut domain, &space, H::SchedOp, [shutdown, VIRTUAL + 0x2000, 0]), Err(Errno::Efault));
        let (mut dom0, space) = self::domain(true);
        assert_eq!(call(&mut dom0, &space, H::SchedOp, [shutdown, VIRTUAL, 0]), Err(Errno::Eperm));
        assert_eq!(dom0.ended, None);
        assert_eq!(call(&mut domain, &space, H::SchedOp, [u64::from(SchedOp::Yield.number()), 0, 0]), Ok(0));
        assert!(domain.vcpus[0].reschedule);
    }

    #[test]
    fn the_toolstack_sets_a_guests_memory_map_which_the_guest_reads() {
        use abi::xen::memory::{E820Entry, XenForeignMemoryMap, XenMemoryMap};
        let mut hv = hypervisor();
        let (dom0, guest) = (xen_domain(&mut hv.domains, 0), xen_domain(&mut hv.domains, 5));
        let (set, get) = (MemoryOp::SetMemoryMap.number(), MemoryOp::MemoryMap.number());
        let map = [E820Entry { addr: 0, size: 0x6000, r#type: 2 }, E820Entry { addr: 0x6000, size: 0xa000, r#type: 1 }];
        let bytes: Vec<u8> = map.iter().flat_map(|entry| entry.to_bytes()).collect();
        hv.domains[dom0].write_guest(DATA + 0x200, &bytes).unwrap();
        let request = |domid, nr_entries| XenForeignMemoryMap {
            domid,
            map: XenMemoryMap { nr_entries, buffer: VIRTUAL + 0x200, ..Default::default() },
            ..Default::default()
        };
        let read = |hv: &mut Hypervisor<'static, Fake>, nr_entries| {
            let asked = XenMemoryMap { nr_entries, buffer: VIRTUAL + 0x200, ..Default::default() };
            let (result, answer) = xen_call(hv, guest, H::MemoryOp, get, asked);
            let mut entries = [0u8; 40];
            hv.domains[guest].read_guest(DATA + 0x200, &mut entries).unwrap();
            (result, answer.nr_entries, entries)
        };
        assert_eq!(read(&mut hv, 8).0, Err(Errno::Enosys), "no map yet");
        assert_eq!(xen_call(&mut hv, dom0, H::MemoryOp, set, request(5, 2)).0, Ok(0));
        let (result, count, entries) = read(&mut hv, 8);
        assert_eq!((result, count, &entries[..]), (Ok(0), 2, &bytes[..]));
        let (result, count, _) = read(&mut hv, 1);
        assert_eq!((result, count), (Ok(0), 1), "a short buffer gets the first entries");
        assert_eq!(xen_call(&mut hv, dom0, H::MemoryOp, set, request(5, 9)).0, Err(Errno::Einval));
        assert_eq!(xen_call(&mut hv, dom0, H::MemoryOp, set, request(9, 1)).0, Err(Errno::Esrch));
        assert_eq!(xen_call(&mut hv, guest, H::MemoryOp, set, request(5, 1)).0, Err(Errno::Eperm));
        assert_eq!(hv.domains[guest].memory_map.len(), 2, "refused calls changed nothing");
    }

    #[test]
    fn sched_op_poll_waits_for_its_ports_masked_or_not_or_its_timeout() {
        use abi::xen::sched::SchedPoll;
        let mut hv = hypervisor();
        let one = xen_domain(&mut hv.domains, 1);
        let poll = SchedOp::Poll.number();
        // Ports 7 and 9 masked (as Linux masks its spinlock kick port).
        hv.domains[one].write_guest(SHARED_INFO + 2560, &(1u64 << 7 | 1 << 9).to_le_bytes()).unwrap();
        let request = |hv: &mut Hypervisor<'static, Fake>, ports: &[u32], timeout| {
            let array: Vec<u8> = ports.iter().flat_map(|port| port.to_le_bytes()).collect();
            hv.domains[one].write_guest(DATA + 0x100, &array).unwrap();
            let request =
                SchedPoll { ports: VIRTUAL + 0x100, nr_ports: ports.len() as u32, timeout, ..Default::default() };
            xen_call(hv, one, H::SchedOp, poll, request).0
        };
        let blocked = |hv: &Hypervisor<'static, Fake>| (hv.domains[one].vcpus[0].blocked, hv.domains[one].polling);
        assert_eq!(request(&mut hv, &[5, 9], 0), Ok(0));
        assert_eq!(blocked(&hv), (true, 1), "nothing pending: it waits");
        crate::event_ops::raise_in(&mut hv.domains[one], 7);
        assert_eq!(blocked(&hv), (true, 1), "a masked port it does not poll leaves it asleep");
        crate::event_ops::raise_in(&mut hv.domains[one], 9);
        assert_eq!(blocked(&hv), (false, 0), "a masked port it polls wakes it");
        assert_eq!(hv.domains[one].vcpus[0].poll_ports, [0; 4]);
        // Port 9 still pending: the next poll returns at once.
        assert_eq!(request(&mut hv, &[9], 0), Ok(0));
        assert_eq!(blocked(&hv), (false, 0));
        // A timeout (system time in ns, a TSC deadline at the platform's
        // rate) wakes it without raising anything.
        hv.domains[one].write_guest(SHARED_INFO + 2048, &0u64.to_le_bytes()).unwrap();
        assert_eq!(request(&mut hv, &[9], 2_000_000), Ok(0));
        let deadline = hv.domains[one].vcpus[0].poll_deadline;
        assert_eq!(deadline, tsc_deadline::<Fake>(2_000_000));
        assert_eq!(crate::event_ops::fire_timers(&mut hv.domains[one], deadline - 1), Some(deadline));
        assert_eq!(blocked(&hv), (true, 1));
        assert_eq!(crate::event_ops::fire_timers(&mut hv.domains[one], deadline), None);
        assert_eq!(blocked(&hv), (false, 0));
        assert_eq!(word(&hv.domains, one, SHARED_INFO + 2048), 0, "nothing was raised");
        // Bad requests.
        assert_eq!(request(&mut hv, &[5; 129], 0), Err(Errno::Einval));
        assert_eq!(request(&mut hv, &[5, 256], 0), Err(Errno::Einval));
        let unreadable = SchedPoll { ports: VIRTUAL + 0x2000, nr_ports: 1, ..Default::default() };
        assert_eq!(xen_call(&mut hv, one, H::SchedOp, poll, unreadable).0, Err(Errno::Efault));
        assert_eq!(blocked(&hv), (false, 0), "refused polls block nothing");
    }

    #[test]
    fn the_hypercall_page_holds_a_vmcall_stub_per_number() {
        let (domain, _) = domain(false);
        assert_eq!(fill_hypercall_page(&domain, DATA), Ok(()));
        let mut page = [0; 4096];
        domain.read_guest(DATA, &mut page).unwrap();
        // Stub 17 (xen_version): mov eax, 17; vmcall; ret; then int3.
        assert_eq!(&page[17 * 32..17 * 32 + 10], [0xb8, 17, 0, 0, 0, 0x0f, 0x01, 0xc1, 0xc3, 0xcc]);
        assert_eq!(&page[127 * 32..127 * 32 + 5], [0xb8, 127, 0, 0, 0]);
        assert_eq!(fill_hypercall_page(&domain, DATA + 1), Err(Errno::Einval), "page 1: Mica has one");
        assert_eq!(fill_hypercall_page(&domain, 1 << 40), Err(Errno::Efault), "not its RAM");
    }

    /// hv's state over the fake machine, with no domain yet.
    fn hypervisor() -> Hypervisor<'static, Fake> {
        let state: &'static spin::mutex::TicketMutex<crate::domctl::State> =
            Box::leak(Box::new(spin::mutex::TicketMutex::new(crate::domctl::State::new())));
        Hypervisor { state: state.lock(), domains: crate::domain::tests::table() }
    }

    /// Where the tests place a domain's shared info, and the vector.
    const SHARED_INFO: u64 = 0xb000;
    const VECTOR: u64 = 0x40;

    /// Calls `event_channel_op` `operation` with `request` at `DATA`, as hv's
    /// run loop would: on the caller alone, or with every domain locked;
    /// a send to another domain is raised there. Returns the result and
    /// the structure as the call left it.
    fn evtchn<T: FromBytes + IntoBytes + zerocopy::Immutable>(
        hv: &mut Hypervisor<'static, Fake>,
        caller: usize,
        operation: EvtchnOp,
        request: T,
    ) -> (Result<u64, Errno>, T) {
        xen_call(hv, caller, H::EventChannelOp, operation.number(), request)
    }

    /// As [`evtchn`], for any call that takes an operation and a structure.
    fn xen_call<T: FromBytes + IntoBytes + zerocopy::Immutable>(
        hv: &mut Hypervisor<'static, Fake>,
        caller: usize,
        number: H,
        operation: u32,
        request: T,
    ) -> (Result<u64, Errno>, T) {
        xen_batch(hv, caller, number, operation, request, 1)
    }

    /// As [`xen_call`], with `count` (the third argument: the entries of
    /// an array `request` holds).
    fn xen_batch<T: FromBytes + IntoBytes + zerocopy::Immutable>(
        hv: &mut Hypervisor<'static, Fake>,
        caller: usize,
        number: H,
        operation: u32,
        request: T,
        count: u64,
    ) -> (Result<u64, Errno>, T) {
        let space = AddressSpace::LongMode { cr3: PML4, vcpu: 0 };
        hv.domains[caller].write_guest(DATA, request.as_bytes()).unwrap();
        let arguments = [u64::from(operation), VIRTUAL, count, 0, 0];
        let result = match dispatch(&mut hv.domains[caller], &space, number.number(), arguments) {
            XenCall::Done(result) => result,
            XenCall::Raise { target, port, from } => {
                let sender = hv.domains[caller].id;
                let slot = hv.domains.slot_of(target).unwrap();
                crate::event_ops::raise_connected(&mut hv.domains[slot], port, sender, from);
                Ok(0)
            }
            XenCall::Table => dispatch_table(hv, caller, &space, number.number(), arguments),
        };
        let mut bytes = vec![0; size_of::<T>()];
        hv.domains[caller].read_guest(DATA, &mut bytes).unwrap();
        (result, T::read_from_bytes(&bytes).unwrap())
    }

    /// A domain `id` with page tables, its shared info at `SHARED_INFO` and
    /// the callback vector set, in `domains`; returns its slot.
    fn xen_domain(domains: &mut DomainTable<'static, Fake>, id: abi::DomainId) -> usize {
        let (mut domain, space) = domain_with_id(id);
        let add = XenAddToPhysmap {
            domid: abi::xen::DOMID_SELF,
            space: XENMAPSPACE_SHARED_INFO,
            gpfn: SHARED_INFO / 4096,
            ..Default::default()
        };
        domain.write_guest(DATA, add.as_bytes()).unwrap();
        let add_to_physmap = u64::from(MemoryOp::AddToPhysmap.number());
        assert_eq!(call(&mut domain, &space, H::MemoryOp, [add_to_physmap, VIRTUAL, 0]), Ok(0));
        let callback = XenHvmParam {
            domid: abi::xen::DOMID_SELF,
            index: HVM_PARAM_CALLBACK_IRQ,
            value: 2 << 56 | VECTOR,
            ..Default::default()
        };
        domain.write_guest(DATA, callback.as_bytes()).unwrap();
        assert_eq!(call(&mut domain, &space, H::HvmOp, [u64::from(HvmOp::SetParam.number()), VIRTUAL, 0]), Ok(0));
        domain.vcpus[0].up = true;
        domains.insert(domain).ok().unwrap()
    }

    fn word(domains: &DomainTable<'static, Fake>, slot: usize, address: u64) -> u64 {
        let mut bytes = [0; 8];
        domains[slot].read_guest(address, &mut bytes).unwrap();
        u64::from_le_bytes(bytes)
    }

    #[test]
    fn two_domains_bind_a_channel_and_a_send_lands_in_xens_2_level_layout() {
        let mut hv = hypervisor();
        let (one, two) = (xen_domain(&mut hv.domains, 1), xen_domain(&mut hv.domains, 2));
        // Two offers a port to one, which binds it.
        let offer = EvtchnAllocUnbound { dom: abi::xen::DOMID_SELF, remote_dom: 1, port: 0 };
        let (result, offer) = evtchn(&mut hv, two, EvtchnOp::AllocUnbound, offer);
        assert_eq!(result, Ok(0));
        let bind = EvtchnBindInterdomain { remote_dom: 2, remote_port: offer.port, ..Default::default() };
        let (result, bound) = evtchn(&mut hv, one, EvtchnOp::BindInterdomain, bind);
        assert_eq!(result, Ok(0));
        let local = bound.local_port;
        assert_ne!(local, 0);
        let status = EvtchnStatus { dom: abi::xen::DOMID_SELF, port: local, ..Default::default() };
        let (_, status) = evtchn(&mut hv, one, EvtchnOp::Status, status);
        assert_eq!(status.state(), Some(XenPortState::Interdomain { remote_dom: 2, remote_port: offer.port }));
        // One sends: two's pending bit, its vCPU 0's selector bit and
        // upcall flag are set, and its upcall is due (vector registered).
        assert_eq!(evtchn(&mut hv, one, EvtchnOp::Send, EvtchnSend { port: local }).0, Ok(0));
        let port = offer.port;
        let pending = SHARED_INFO + 2048 + u64::from(port / 64) * 8;
        assert_eq!(word(&hv.domains, two, pending), 1 << (port % 64));
        assert_eq!(word(&hv.domains, two, SHARED_INFO + 8), 1 << (port / 64), "evtchn_pending_sel");
        assert_eq!(word(&hv.domains, two, SHARED_INFO) & 0xff, 1, "evtchn_upcall_pending");
        assert!(hv.domains[two].vcpus[0].upcall_due);
        // The guest takes its upcall (clears the flag and the selector) but
        // not yet the port: a second send changes nothing.
        hv.domains[two].vcpus[0].upcall_due = false;
        hv.domains[two].write_guest(SHARED_INFO, &[0; 16]).unwrap();
        assert_eq!(evtchn(&mut hv, one, EvtchnOp::Send, EvtchnSend { port: local }).0, Ok(0));
        assert!(!hv.domains[two].vcpus[0].upcall_due);
        assert_eq!(word(&hv.domains, two, SHARED_INFO + 8), 0);
        // Once it cleared the port, a masked send waits for the unmask.
        hv.domains[two].write_guest(pending, &[0; 8]).unwrap();
        hv.domains[two]
            .write_guest(SHARED_INFO + 2560 + u64::from(port / 64) * 8, &(1u64 << (port % 64)).to_le_bytes())
            .unwrap();
        assert_eq!(evtchn(&mut hv, one, EvtchnOp::Send, EvtchnSend { port: local }).0, Ok(0));
        assert!(!hv.domains[two].vcpus[0].upcall_due, "masked");
        assert_eq!(evtchn(&mut hv, two, EvtchnOp::Unmask, EvtchnUnmask { port }).0, Ok(0));
        assert!(hv.domains[two].vcpus[0].upcall_due, "delivered on unmask");
        assert_eq!(word(&hv.domains, two, SHARED_INFO + 8), 1 << (port / 64));
        // Closing one end: the other's sends are dropped, as in Xen; a
        // send on a port that is not allocated is refused.
        assert_eq!(evtchn(&mut hv, two, EvtchnOp::Close, EvtchnClose { port }).0, Ok(0));
        hv.domains[two].write_guest(pending, &[0; 8]).unwrap();
        assert_eq!(evtchn(&mut hv, one, EvtchnOp::Send, EvtchnSend { port: local }).0, Ok(0));
        assert_eq!(word(&hv.domains, two, pending), 0, "nothing reaches the closed port");
        assert_eq!(evtchn(&mut hv, one, EvtchnOp::Send, EvtchnSend { port: 200 }).0, Err(Errno::Einval));
        assert_eq!(evtchn(&mut hv, one, EvtchnOp::Send, EvtchnSend { port: 5000 }).0, Err(Errno::Einval));
        // Offers for unknown domains or in another's table are refused.
        let bad = EvtchnAllocUnbound { dom: abi::xen::DOMID_SELF, remote_dom: 9, port: 0 };
        assert_eq!(evtchn(&mut hv, one, EvtchnOp::AllocUnbound, bad).0, Err(Errno::Esrch));
        let theirs = EvtchnAllocUnbound { dom: 2, remote_dom: 1, port: 0 };
        assert_eq!(evtchn(&mut hv, one, EvtchnOp::AllocUnbound, theirs).0, Err(Errno::Eperm));
    }

    #[test]
    fn a_port_whose_peer_ended_reads_as_closed_and_binds_nothing() {
        let mut hv = hypervisor();
        let (one, two) = (xen_domain(&mut hv.domains, 1), xen_domain(&mut hv.domains, 2));
        let offer = EvtchnAllocUnbound { dom: abi::xen::DOMID_SELF, remote_dom: 1, port: 0 };
        let (_, offer) = evtchn(&mut hv, two, EvtchnOp::AllocUnbound, offer);
        let bind = EvtchnBindInterdomain { remote_dom: 2, remote_port: offer.port, ..Default::default() };
        let (result, bound) = evtchn(&mut hv, one, EvtchnOp::BindInterdomain, bind);
        assert_eq!(result, Ok(0));
        crate::event_ops::end_channels(&mut hv.domains, two);
        let status = EvtchnStatus { dom: abi::xen::DOMID_SELF, port: bound.local_port, ..Default::default() };
        let (result, status) = evtchn(&mut hv, one, EvtchnOp::Status, status);
        assert_eq!(result, Ok(0));
        assert_eq!(status.state(), Some(XenPortState::Closed));
        // Nothing binds it again: not a new offer's taker, not a domain
        // with the dead one's id.
        let again = EvtchnBindInterdomain { remote_dom: 2, remote_port: offer.port, ..Default::default() };
        assert!(evtchn(&mut hv, one, EvtchnOp::BindInterdomain, again).0.is_err());
        // Sends on it are dropped, and closing it frees it.
        assert_eq!(evtchn(&mut hv, one, EvtchnOp::Send, EvtchnSend { port: bound.local_port }).0, Ok(0));
        assert_eq!(evtchn(&mut hv, one, EvtchnOp::Close, EvtchnClose { port: bound.local_port }).0, Ok(0));
        let status = EvtchnStatus { dom: abi::xen::DOMID_SELF, port: bound.local_port, ..Default::default() };
        assert_eq!(evtchn(&mut hv, one, EvtchnOp::Status, status).1.state(), Some(XenPortState::Closed));
    }

    /// Each refusal a guest meets on Xen's event channels is the errno
    /// Xen gives (`abi::xen::event_channel::EvtchnOp`), not Mica's error
    /// turned into its nearest errno: a port in the wrong state `-EINVAL`,
    /// a vCPU it lacks `-ENOENT`, a full table `-ENOSPC`, a domain that does
    /// not exist `-ESRCH`.
    #[test]
    fn event_channel_refusals_are_xens_errnos() {
        let mut hv = hypervisor();
        let (one, two, three) =
            (xen_domain(&mut hv.domains, 1), xen_domain(&mut hv.domains, 2), xen_domain(&mut hv.domains, 3));
        let offer = |hv: &mut Hypervisor<'static, Fake>, slot, remote_dom| {
            let request = EvtchnAllocUnbound { dom: abi::xen::DOMID_SELF, remote_dom, port: 0 };
            let (result, answer) = evtchn(hv, slot, EvtchnOp::AllocUnbound, request);
            assert_eq!(result, Ok(0));
            answer.port
        };
        let bind = |hv: &mut Hypervisor<'static, Fake>, slot, remote_dom, remote_port| {
            let request = EvtchnBindInterdomain { remote_dom, remote_port, ..Default::default() };
            evtchn(hv, slot, EvtchnOp::BindInterdomain, request).0
        };
        let (for_three, for_one) = (offer(&mut hv, two, 3), offer(&mut hv, two, 1));
        assert_eq!(bind(&mut hv, one, 9, 1), Err(Errno::Esrch), "no such domain");
        assert_eq!(bind(&mut hv, one, 2, 200), Err(Errno::Einval), "a free port");
        assert_eq!(bind(&mut hv, one, 2, 5000), Err(Errno::Einval), "beyond the table");
        assert_eq!(bind(&mut hv, one, 2, for_three), Err(Errno::Einval), "offered to another");
        assert_eq!(bind(&mut hv, one, 2, for_one), Ok(0));
        assert_eq!(bind(&mut hv, three, 2, for_one), Err(Errno::Einval), "connected");
        assert_eq!(bind(&mut hv, one, 2, for_one), Err(Errno::Einval), "connected to the caller");
        let free = 200;
        assert_eq!(evtchn(&mut hv, one, EvtchnOp::Send, EvtchnSend { port: free }).0, Err(Errno::Einval));
        assert_eq!(evtchn(&mut hv, one, EvtchnOp::Close, EvtchnClose { port: free }).0, Err(Errno::Einval));
        assert_eq!(evtchn(&mut hv, one, EvtchnOp::Close, EvtchnClose { port: 5000 }).0, Err(Errno::Einval));
        let move_to = |hv: &mut Hypervisor<'static, Fake>, port, vcpu| {
            evtchn(hv, one, EvtchnOp::BindVcpu, EvtchnBindVcpu { port, vcpu }).0
        };
        assert_eq!(move_to(&mut hv, free, 0), Err(Errno::Einval), "a free port");
        assert_eq!(move_to(&mut hv, free, 7), Err(Errno::Enoent), "the vCPU is checked first");
        let (result, ipi) = evtchn(&mut hv, one, EvtchnOp::BindIpi, EvtchnBindIpi { vcpu: 0, port: 0 });
        assert_eq!(result, Ok(0));
        assert_eq!(move_to(&mut hv, ipi.port, 0), Err(Errno::Einval), "an IPI names its vCPU when bound");
        assert_eq!(evtchn(&mut hv, one, EvtchnOp::BindIpi, EvtchnBindIpi { vcpu: 7, port: 0 }).0, Err(Errno::Enoent));
        let timer = |vcpu| EvtchnBindVirq { virq: XenVirq::Timer.number(), vcpu, port: 0 };
        assert_eq!(evtchn(&mut hv, one, EvtchnOp::BindVirq, timer(7)).0, Err(Errno::Enoent));
        assert_eq!(evtchn(&mut hv, one, EvtchnOp::BindVirq, timer(0)).0, Ok(0));
        assert_eq!(evtchn(&mut hv, one, EvtchnOp::BindVirq, timer(0)).0, Err(Errno::Eexist));
        // A full table: every binding is -ENOSPC (Mica says Busy).
        let mut allocated = 0;
        while evtchn(
            &mut hv,
            three,
            EvtchnOp::AllocUnbound,
            EvtchnAllocUnbound { dom: abi::xen::DOMID_SELF, remote_dom: 1, port: 0 },
        )
        .0
        .is_ok()
        {
            allocated += 1;
        }
        assert_eq!(allocated, abi::event::PORT_COUNT - 1);
        let full = EvtchnAllocUnbound { dom: abi::xen::DOMID_SELF, remote_dom: 1, port: 0 };
        assert_eq!(evtchn(&mut hv, three, EvtchnOp::AllocUnbound, full).0, Err(Errno::Enospc));
        assert_eq!(evtchn(&mut hv, three, EvtchnOp::BindIpi, EvtchnBindIpi { vcpu: 0, port: 0 }).0, Err(Errno::Enospc));
        assert_eq!(evtchn(&mut hv, three, EvtchnOp::BindVirq, timer(0)).0, Err(Errno::Enospc));
        let for_three = offer(&mut hv, two, 3);
        assert_eq!(bind(&mut hv, three, 2, for_three), Err(Errno::Enospc), "offered, but no local port");
    }

    #[test]
    fn the_toolstack_gives_a_guest_its_store_port_and_frame_which_the_guest_reads() {
        use abi::xen::hvm::{HVM_PARAM_CONSOLE_PFN, HVM_PARAM_STORE_EVTCHN, HVM_PARAM_STORE_PFN};
        let mut hv = hypervisor();
        let (dom0, guest) = (xen_domain(&mut hv.domains, 0), xen_domain(&mut hv.domains, 5));
        // dom0 allocates the guest's port for itself and binds its end.
        let offer = EvtchnAllocUnbound { dom: 5, remote_dom: 0, port: 0 };
        let (result, offer) = evtchn(&mut hv, dom0, EvtchnOp::AllocUnbound, offer);
        assert_eq!(result, Ok(0));
        assert_eq!(hv.domains[guest].events.binding(offer.port), Ok(crate::event::Binding::Unbound { remote: 0 }));
        let bind = EvtchnBindInterdomain { remote_dom: 5, remote_port: offer.port, ..Default::default() };
        let (result, bound) = evtchn(&mut hv, dom0, EvtchnOp::BindInterdomain, bind);
        assert_eq!(result, Ok(0));
        // It sets the parameters; the guest reads them.
        let param = |domid, index, value| XenHvmParam { domid, index, value, ..Default::default() };
        let (set, get) = (HvmOp::SetParam.number(), HvmOp::GetParam.number());
        let hvm = |hv: &mut Hypervisor<'static, Fake>, caller, operation, request| {
            xen_call(hv, caller, H::HvmOp, operation, request)
        };
        assert_eq!(hvm(&mut hv, dom0, set, param(5, HVM_PARAM_STORE_EVTCHN, offer.port.into())).0, Ok(0));
        assert_eq!(hvm(&mut hv, dom0, set, param(5, HVM_PARAM_STORE_PFN, DATA / 4096)).0, Ok(0));
        let mine = |index| param(abi::xen::DOMID_SELF, index, 0);
        assert_eq!(
            hvm(&mut hv, guest, get, mine(HVM_PARAM_STORE_EVTCHN)),
            (Ok(0), param(abi::xen::DOMID_SELF, HVM_PARAM_STORE_EVTCHN, offer.port.into()))
        );
        assert_eq!(hvm(&mut hv, guest, get, mine(HVM_PARAM_STORE_PFN)).1.value, DATA / 4096);
        assert_eq!(hvm(&mut hv, guest, get, mine(HVM_PARAM_CONSOLE_PFN)).1.value, 0, "not set yet");
        assert_eq!(hvm(&mut hv, dom0, get, param(5, HVM_PARAM_STORE_PFN, 0)).1.value, DATA / 4096);
        // The guest's port reaches dom0's end.
        assert_eq!(evtchn(&mut hv, guest, EvtchnOp::Send, EvtchnSend { port: offer.port }).0, Ok(0));
        let pending = SHARED_INFO + 2048 + u64::from(bound.local_port / 64) * 8;
        assert_eq!(word(&hv.domains, dom0, pending), 1 << (bound.local_port % 64));
        // Bad values, other parameters and unknown domains are refused.
        assert_eq!(hvm(&mut hv, dom0, set, param(5, HVM_PARAM_STORE_PFN, 1 << 30)).0, Err(Errno::Einval));
        assert_eq!(hvm(&mut hv, dom0, set, param(5, HVM_PARAM_STORE_EVTCHN, 256)).0, Err(Errno::Einval));
        assert_eq!(hvm(&mut hv, dom0, set, param(5, HVM_PARAM_CALLBACK_IRQ, 0)).0, Err(Errno::Einval));
        assert_eq!(hvm(&mut hv, dom0, set, param(9, HVM_PARAM_STORE_PFN, 1)).0, Err(Errno::Esrch));
        let offer_for_9 = EvtchnAllocUnbound { dom: 9, remote_dom: 0, port: 0 };
        assert_eq!(evtchn(&mut hv, dom0, EvtchnOp::AllocUnbound, offer_for_9).0, Err(Errno::Esrch));
        // A guest sets neither its own nor another's, nor offers ports in
        // another's table.
        assert_eq!(hvm(&mut hv, guest, set, param(abi::xen::DOMID_SELF, HVM_PARAM_STORE_PFN, 1)).0, Err(Errno::Eperm));
        assert_eq!(hvm(&mut hv, guest, set, param(0, HVM_PARAM_STORE_PFN, 1)).0, Err(Errno::Eperm));
        assert_eq!(hvm(&mut hv, guest, get, param(0, HVM_PARAM_STORE_PFN, 0)).0, Err(Errno::Eperm));
        let theirs = EvtchnAllocUnbound { dom: 0, remote_dom: 5, port: 0 };
        assert_eq!(evtchn(&mut hv, guest, EvtchnOp::AllocUnbound, theirs).0, Err(Errno::Eperm));
        assert_eq!(hvm(&mut hv, guest, get, mine(HVM_PARAM_STORE_PFN)).1.value, DATA / 4096, "unchanged");
    }

    #[test]
    fn a_registered_vcpu_info_takes_the_upcall_flag_and_selector() {
        let mut hv = hypervisor();
        let one = xen_domain(&mut hv.domains, 1);
        let space = AddressSpace::LongMode { cr3: PML4, vcpu: 0 };
        let register = u64::from(VcpuOp::RegisterVcpuInfo.number());
        let info = VcpuRegisterVcpuInfo { mfn: 0xc, offset: 64, ..Default::default() };
        hv.domains[one].write_guest(DATA, info.as_bytes()).unwrap();
        assert_eq!(call(&mut hv.domains[one], &space, H::VcpuOp, [register, 0, VIRTUAL]), Ok(0));
        assert_eq!(call(&mut hv.domains[one], &space, H::VcpuOp, [register, 0, VIRTUAL]), Err(Errno::Ebusy), "once");
        assert_eq!(
            call(&mut hv.domains[one], &space, H::VcpuOp, [register, 5, VIRTUAL]),
            Err(Errno::Enoent),
            "no vCPU 5"
        );
        // An IPI to itself lands in the new vcpu_info, not the old slot.
        let (result, ipi) = evtchn(&mut hv, one, EvtchnOp::BindIpi, EvtchnBindIpi { vcpu: 0, port: 0 });
        assert_eq!(result, Ok(0));
        assert_eq!(evtchn(&mut hv, one, EvtchnOp::Send, EvtchnSend { port: ipi.port }).0, Ok(0));
        assert_eq!(word(&hv.domains, one, 0xc000 + 64) & 0xff, 1);
        assert_eq!(word(&hv.domains, one, 0xc000 + 64 + 8), 1 << (ipi.port / 64));
        assert_eq!(word(&hv.domains, one, SHARED_INFO), 0);
        let status = EvtchnStatus { dom: abi::xen::DOMID_SELF, port: ipi.port, ..Default::default() };
        assert_eq!(evtchn(&mut hv, one, EvtchnOp::Status, status).1.state(), Some(XenPortState::Ipi));
        // The timer binds once per vCPU.
        let virq = EvtchnBindVirq { virq: XenVirq::Timer.number(), vcpu: 0, port: 0 };
        assert_eq!(evtchn(&mut hv, one, EvtchnOp::BindVirq, virq).0, Ok(0));
        assert_eq!(evtchn(&mut hv, one, EvtchnOp::BindVirq, virq).0, Err(Errno::Eexist));
        hv.domains[one].vcpu_count = 2;
        // The IRQs hv never raises bind all the same (Linux binds
        // VIRQ_DEBUG on every CPU and gives up on one where it fails): per
        // vCPU, once each; a domain-wide one on vCPU 0 only; a number Xen
        // does not define: -EINVAL. Status names them by Xen's numbers;
        // closed, they bind again.
        let bind = |virq: XenVirq, vcpu| EvtchnBindVirq { virq: virq.number(), vcpu, port: 0 };
        let (result, debug0) = evtchn(&mut hv, one, EvtchnOp::BindVirq, bind(XenVirq::Debug, 0));
        assert_eq!(result, Ok(0));
        assert_eq!(evtchn(&mut hv, one, EvtchnOp::BindVirq, bind(XenVirq::Debug, 1)).0, Ok(0));
        assert_eq!(evtchn(&mut hv, one, EvtchnOp::BindVirq, bind(XenVirq::Debug, 0)).0, Err(Errno::Eexist));
        assert_eq!(evtchn(&mut hv, one, EvtchnOp::BindVirq, bind(XenVirq::DomExc, 1)).0, Err(Errno::Einval));
        assert_eq!(evtchn(&mut hv, one, EvtchnOp::BindVirq, bind(XenVirq::DomExc, 0)).0, Ok(0));
        let unknown = EvtchnBindVirq { virq: 5, vcpu: 0, port: 0 };
        assert_eq!(evtchn(&mut hv, one, EvtchnOp::BindVirq, unknown).0, Err(Errno::Einval));
        let status = EvtchnStatus { dom: abi::xen::DOMID_SELF, port: debug0.port, ..Default::default() };
        let (result, status) = evtchn(&mut hv, one, EvtchnOp::Status, status);
        assert_eq!((result, status.state(), status.vcpu), (Ok(0), Some(XenPortState::Virq(1)), 0));
        let timer = EvtchnStatus { dom: abi::xen::DOMID_SELF, port: 0, ..Default::default() };
        let timer_port = hv.domains[one].events.virq_port(abi::event::Virq::Timer, 0).unwrap();
        let (_, status) = evtchn(&mut hv, one, EvtchnOp::Status, EvtchnStatus { port: timer_port, ..timer });
        assert_eq!(status.state(), Some(XenPortState::Virq(0)));
        assert_eq!(evtchn(&mut hv, one, EvtchnOp::Close, EvtchnClose { port: debug0.port }).0, Ok(0));
        assert_eq!(evtchn(&mut hv, one, EvtchnOp::BindVirq, bind(XenVirq::Debug, 0)).0, Ok(0));
        for (bad, errno) in [
            (VcpuRegisterVcpuInfo { mfn: 0xc, offset: 4040, ..Default::default() }, Errno::Enxio),
            (VcpuRegisterVcpuInfo { mfn: 0xc, offset: 12, ..Default::default() }, Errno::Enxio),
            (VcpuRegisterVcpuInfo { mfn: 1 << 30, ..Default::default() }, Errno::Einval),
        ] {
            hv.domains[one].write_guest(DATA, bad.as_bytes()).unwrap();
            assert_eq!(call(&mut hv.domains[one], &space, H::VcpuOp, [register, 1, VIRTUAL]), Err(errno), "{bad:?}");
        }
        assert_eq!(hv.domains[one].xen_vcpu_info[1], 0, "nothing placed");
    }

    #[test]
    fn the_callback_is_a_vector_and_the_shared_info_page_must_be_the_callers_ram() {
        let (mut domain, space) = domain(false);
        let hvm = |domain: &mut Domain<Fake>, op: HvmOp, request: XenHvmParam| {
            domain.write_guest(DATA, request.as_bytes()).unwrap();
            let result = call(domain, &space, H::HvmOp, [u64::from(op.number()), VIRTUAL, 0]);
            let mut bytes = [0; 16];
            domain.read_guest(DATA, &mut bytes).unwrap();
            (result, XenHvmParam::read_from_bytes(&bytes).unwrap())
        };
        let param = |index, value| XenHvmParam { domid: abi::xen::DOMID_SELF, index, value, ..Default::default() };
        assert_eq!(hvm(&mut domain, HvmOp::SetParam, param(HVM_PARAM_CALLBACK_IRQ, 2 << 56 | 0xf3)).0, Ok(0));
        assert_eq!(domain.upcall_vector, 0xf3);
        assert_eq!(hvm(&mut domain, HvmOp::GetParam, param(HVM_PARAM_CALLBACK_IRQ, 0)).1.value, 2 << 56 | 0xf3);
        for value in [5, 1 << 56 | 3, 2 << 56 | 0x10] {
            assert_eq!(
                hvm(&mut domain, HvmOp::SetParam, param(HVM_PARAM_CALLBACK_IRQ, value)).0,
                Err(Errno::Einval),
                "{value:#x}"
            );
        }
        assert_eq!(domain.upcall_vector, 0xf3, "unchanged");
        let store = abi::xen::hvm::HVM_PARAM_STORE_PFN;
        assert_eq!(hvm(&mut domain, HvmOp::SetParam, param(store, 5)).0, Err(Errno::Eperm));
        assert_eq!(hvm(&mut domain, HvmOp::GetParam, param(store, 7)), (Ok(0), param(store, 0)));
        assert_eq!(hvm(&mut domain, HvmOp::GetParam, param(HVM_NR_PARAMS, 0)).0, Err(Errno::Einval));
        let other = XenHvmParam { domid: 2, ..param(HVM_PARAM_CALLBACK_IRQ, 0) };
        assert_eq!(hvm(&mut domain, HvmOp::GetParam, other).0, Err(Errno::Eperm));
        // Shared info: only idx 0, only the caller's RAM; a move keeps it.
        let add = |domain: &mut Domain<Fake>, request: XenAddToPhysmap| {
            domain.write_guest(DATA, request.as_bytes()).unwrap();
            call(domain, &space, H::MemoryOp, [u64::from(MemoryOp::AddToPhysmap.number()), VIRTUAL, 0])
        };
        let at = |gpfn| XenAddToPhysmap {
            domid: abi::xen::DOMID_SELF,
            space: XENMAPSPACE_SHARED_INFO,
            gpfn,
            ..Default::default()
        };
        domain.write_guest(0xb000, &[0xff; 4096]).unwrap();
        assert_eq!(add(&mut domain, at(0xb)), Ok(0));
        assert_eq!(domain.xen_shared_info, domain.host_frame(0xb000, Access::READ).unwrap());
        assert_eq!(domain.read_struct::<u64>(0xb000), Ok(0), "zeroed");
        domain.write_guest(0xb000 + 2048, &7u64.to_le_bytes()).unwrap();
        assert_eq!(add(&mut domain, at(0xe)), Ok(0));
        assert_eq!(domain.read_struct::<u64>(0xe000 + 2048), Ok(7), "moved with its contents");
        assert_eq!(add(&mut domain, XenAddToPhysmap { idx: 1, ..at(0xb) }), Err(Errno::Einval));
        assert_eq!(add(&mut domain, at(0x4_0000)), Err(Errno::Einval), "not its RAM");
        assert_eq!(
            add(&mut domain, XenAddToPhysmap { space: 1, idx: 4, ..at(0xb) }),
            Err(Errno::Einval),
            "four frames"
        );
        assert_eq!(add(&mut domain, XenAddToPhysmap { space: 2, ..at(0xb) }), Err(Errno::Enosys), "gmfn moves");
        assert_eq!(add(&mut domain, XenAddToPhysmap { domid: 3, ..at(0xb) }), Err(Errno::Eperm));
    }

    #[test]
    fn pvclock_time_is_written_where_vcpu_info_is_and_the_timer_counts_in_nanoseconds() {
        use abi::xen::shared_info::VcpuTimeInfo;
        let mut hv = hypervisor();
        let one = xen_domain(&mut hv.domains, 1);
        let time = |domains: &DomainTable<'static, Fake>, address: u64| {
            VcpuTimeInfo::read_from_bytes(&{
                let mut bytes = [0; 32];
                domains[one].read_guest(address, &mut bytes).unwrap();
                bytes
            })
            .unwrap()
        };
        // Placed with the shared info: 2 GHz, stable, version even.
        let at_start = time(&hv.domains, SHARED_INFO + 32);
        assert_eq!(at_start.version % 2, 0);
        assert_ne!(at_start.version, 0);
        assert_eq!(at_start.flags, PVCLOCK_TSC_STABLE_BIT);
        assert_eq!(at_start.system_time_at(2_000_000_000), 1_000_000_000, "2e9 ticks are one second");
        // Moved with vcpu_info, and written again there.
        let space = AddressSpace::LongMode { cr3: PML4, vcpu: 0 };
        let info = VcpuRegisterVcpuInfo { mfn: 0xc, offset: 0, ..Default::default() };
        hv.domains[one].write_guest(DATA, info.as_bytes()).unwrap();
        let register = u64::from(VcpuOp::RegisterVcpuInfo.number());
        assert_eq!(call(&mut hv.domains[one], &space, H::VcpuOp, [register, 0, VIRTUAL]), Ok(0));
        let moved = time(&hv.domains, 0xc000 + 32);
        assert_eq!(moved.version, at_start.version + 2, "one more update");
        assert_eq!(moved.system_time_at(4_000_000), 2_000_000);
        // The timer: 1.5 ms of system time is 3 million ticks.
        let timer = VcpuSetSingleshotTimer { timeout_abs_ns: 1_500_000, ..Default::default() };
        hv.domains[one].write_guest(DATA, timer.as_bytes()).unwrap();
        let set = u64::from(VcpuOp::SetSingleshotTimer.number());
        assert_eq!(call(&mut hv.domains[one], &space, H::VcpuOp, [set, 0, VIRTUAL]), Ok(0));
        assert_eq!(hv.domains[one].vcpus[0].timer_deadline, 3_000_000);
        hv.domains[one].vcpu_count = 2;
        assert_eq!(
            call(&mut hv.domains[one], &space, H::VcpuOp, [set, 1, VIRTUAL]),
            Err(Errno::Einval),
            "its own only"
        );
        let stop = u64::from(VcpuOp::StopSingleshotTimer.number());
        assert_eq!(call(&mut hv.domains[one], &space, H::VcpuOp, [stop, 0, 0]), Ok(0));
        assert_eq!(hv.domains[one].vcpus[0].timer_deadline, 0);
        // A timeout at 0 (long past) still arms the timer: it fires at once.
        hv.domains[one].write_guest(DATA, VcpuSetSingleshotTimer::default().as_bytes()).unwrap();
        assert_eq!(call(&mut hv.domains[one], &space, H::VcpuOp, [set, 0, VIRTUAL]), Ok(0));
        assert_eq!(hv.domains[one].vcpus[0].timer_deadline, 1);
        // set_timer_op: the same timer, the time in a register; 0 stops it.
        assert_eq!(call(&mut hv.domains[one], &space, H::SetTimerOp, [2_500_000, 0, 0]), Ok(0));
        assert_eq!(hv.domains[one].vcpus[0].timer_deadline, 5_000_000);
        assert_eq!(call(&mut hv.domains[one], &space, H::SetTimerOp, [0, 0, 0]), Ok(0));
        assert_eq!(hv.domains[one].vcpus[0].timer_deadline, 0);
    }

    #[test]
    fn the_grant_table_frame_is_placed_like_xens_and_holds_v1_entries() {
        use abi::xen::grant_table::{
            GTF_PERMIT_ACCESS, GTF_READING, GTF_READONLY, GnttabOp, GnttabQuerySize, GnttabSetVersion,
        };
        let mut hv = hypervisor();
        let (one, two) = (xen_domain(&mut hv.domains, 1), xen_domain(&mut hv.domains, 2));
        let space = AddressSpace::LongMode { cr3: PML4, vcpu: 0 };
        // Frame 0 of the table at guest frame 0xd: to the table path.
        let add = XenAddToPhysmap {
            domid: abi::xen::DOMID_SELF,
            space: XENMAPSPACE_GRANT_TABLE,
            gpfn: 0xd,
            ..Default::default()
        };
        hv.domains[one].write_guest(DATA, add.as_bytes()).unwrap();
        let arguments = [u64::from(MemoryOp::AddToPhysmap.number()), VIRTUAL, 0, 0, 0];
        assert_eq!(dispatch(&mut hv.domains[one], &space, H::MemoryOp.number(), arguments), XenCall::Table);
        assert_eq!(dispatch_table(&mut hv, one, &space, H::MemoryOp.number(), arguments), Ok(0));
        assert_eq!(hv.domains[one].grant_frames[0], hv.domains[one].host_frame(0xd000, Access::READ).unwrap());
        // A request changed between the two looks is checked again.
        let changed = XenAddToPhysmap { idx: 4, ..add };
        hv.domains[one].write_guest(DATA, changed.as_bytes()).unwrap();
        assert_eq!(dispatch_table(&mut hv, one, &space, H::MemoryOp.number(), arguments), Err(Errno::Einval));
        // A v1 entry in Xen's layout grants domain 2 a read-only page: the
        // grantee maps it, and hv marks it GTF_reading meanwhile.
        let entry = u64::from(GTF_PERMIT_ACCESS | GTF_READONLY) | 2 << 16 | (DATA / 4096) << 32;
        hv.domains[one].write_guest(0xd000 + 5 * 8, &entry.to_le_bytes()).unwrap();
        let map = [abi::grant::GrantOp::Map as u64, 1, 5, 0x4000_0000, 0];
        assert_eq!(crate::grant_ops::grant_op(&mut hv.grants(), two, map), Ok(0));
        assert_eq!(word(&hv.domains, one, 0xd000 + 5 * 8) as u16 & GTF_READING, GTF_READING);
        let writable = [abi::grant::GrantOp::Map as u64, 1, 5, 0x4000_1000, abi::grant::MAP_WRITABLE];
        assert_eq!(crate::grant_ops::grant_op(&mut hv.grants(), two, writable), Err(abi::Error::Permission));
        // Xen's other types permit nothing.
        let transitive = u64::from(abi::xen::grant_table::GTF_TRANSITIVE) | 2 << 16 | (DATA / 4096) << 32;
        hv.domains[one].write_guest(0xd000 + 6 * 8, &transitive.to_le_bytes()).unwrap();
        let map = [abi::grant::GrantOp::Map as u64, 1, 6, 0x4000_2000, 0];
        assert_eq!(crate::grant_ops::grant_op(&mut hv.grants(), two, map), Err(abi::Error::Permission));
        // The size is one frame of four, the version 1.
        let query = GnttabQuerySize { dom: abi::xen::DOMID_SELF, ..Default::default() };
        hv.domains[one].write_guest(DATA, query.as_bytes()).unwrap();
        let size = [u64::from(GnttabOp::QuerySize.number()), VIRTUAL, 1];
        assert_eq!(call(&mut hv.domains[one], &space, H::GrantTableOp, size), Ok(0));
        let answer: GnttabQuerySize = hv.domains[one].read_struct(DATA).unwrap();
        assert_eq!((answer.nr_frames, answer.max_nr_frames, answer.status), (1, 4, 0));
        for (version, expected) in [(1, Ok(0)), (2, Err(Errno::Enosys)), (3, Err(Errno::Einval))] {
            hv.domains[one].write_guest(DATA, GnttabSetVersion { version }.as_bytes()).unwrap();
            let set = [u64::from(GnttabOp::SetVersion.number()), VIRTUAL, 1];
            assert_eq!(call(&mut hv.domains[one], &space, H::GrantTableOp, set), expected, "version {version}");
            assert_eq!(hv.domains[one].read_struct::<u32>(DATA), Ok(1), "the version in effect");
        }
        let get = [u64::from(GnttabOp::GetVersion.number()), VIRTUAL, 1];
        let version = abi::xen::grant_table::GnttabGetVersion { dom: abi::xen::DOMID_SELF, ..Default::default() };
        hv.domains[one].write_guest(DATA, version.as_bytes()).unwrap();
        assert_eq!(call(&mut hv.domains[one], &space, H::GrantTableOp, get), Ok(0));
        assert_eq!(hv.domains[one].read_struct::<u64>(DATA), Ok(1 << 32 | 0x7ff0), "version 1, domain unchanged");
        let theirs = abi::xen::grant_table::GnttabGetVersion { dom: 2, ..Default::default() };
        hv.domains[one].write_guest(DATA, theirs.as_bytes()).unwrap();
        assert_eq!(call(&mut hv.domains[one], &space, H::GrantTableOp, get), Err(Errno::Eperm));
    }

    /// Linux places its table's frames where it has no RAM (unpopulated
    /// physical address space), the highest index first: hv supplies
    /// zeroed frames there, reports them in `query_size`, finds grants in
    /// every frame, keeps a supplied frame where it is, and frees them
    /// with the domain.
    #[test]
    fn a_table_of_several_frames_is_supplied_where_the_guest_has_no_ram() {
        use abi::xen::grant_table::{GTF_PERMIT_ACCESS, GnttabOp, GnttabQuerySize};
        let mut hv = hypervisor();
        let frames_before = machine::with(|state| state.frames.len());
        let (one, two) = (xen_domain(&mut hv.domains, 1), xen_domain(&mut hv.domains, 2));
        let frames_with_domains = machine::with(|state| state.frames.len());
        // 256 MiB: far past the test domain's RAM.
        let hole = 0x1000_0000 / 4096;
        let add = |idx: u64, gpfn: u64| XenAddToPhysmap {
            domid: abi::xen::DOMID_SELF,
            space: XENMAPSPACE_GRANT_TABLE,
            idx,
            gpfn,
            ..Default::default()
        };
        let add_to_physmap = MemoryOp::AddToPhysmap.number();
        // Frame 3 in the hole; frame 0 at the guest's own page 0xd000.
        for (idx, gpfn) in [(3, hole + 3), (0, 0xd)] {
            let (result, _) = xen_call(&mut hv, one, H::MemoryOp, add_to_physmap, add(idx, gpfn));
            assert_eq!(result, Ok(0), "frame {idx}");
        }
        // One frame, and one EPT table for the hole's addresses.
        assert_eq!(machine::with(|state| state.frames.len()), frames_with_domains + 1 + 1, "frame 3 supplied");
        // A grant of frame 0 mapped by domain two: new frames are placed
        // all the same (Linux grows its table while its disk's grants are
        // mapped), frames 2 and 1 in the hole.
        let entry = u64::from(GTF_PERMIT_ACCESS) | 2 << 16 | (DATA / 4096) << 32;
        hv.domains[one].write_guest(0xd000 + 9 * 8, &entry.to_le_bytes()).unwrap();
        let map = [abi::grant::GrantOp::Map as u64, 1, 9, 0x4000_2000, 0];
        assert_eq!(crate::grant_ops::grant_op(&mut hv.grants(), two, map), Ok(0));
        let frames_mapped = machine::with(|state| state.frames.len());
        for (idx, gpfn) in [(2, hole + 2), (1, hole + 1)] {
            let (result, _) = xen_call(&mut hv, one, H::MemoryOp, add_to_physmap, add(idx, gpfn));
            assert_eq!(result, Ok(0), "frame {idx} while a grant is mapped");
        }
        assert_eq!(machine::with(|state| state.frames.len()), frames_mapped + 2, "frames 2 and 1 supplied");
        // Again at the same place: nothing changes; elsewhere, or a fifth: refused.
        assert_eq!(xen_call(&mut hv, one, H::MemoryOp, add_to_physmap, add(2, hole + 2)).0, Ok(0));
        assert_eq!(xen_call(&mut hv, one, H::MemoryOp, add_to_physmap, add(2, hole + 9)).0, Err(Errno::Einval));
        assert_eq!(xen_call(&mut hv, one, H::MemoryOp, add_to_physmap, add(4, hole + 4)).0, Err(Errno::Einval));
        assert_eq!(machine::with(|state| state.frames.len()), frames_mapped + 2, "no more frames");
        assert_eq!(hv.domains[one].grant_frames[0], hv.domains[one].host_frame(0xd000, Access::READ).unwrap());
        let query = GnttabQuerySize { dom: abi::xen::DOMID_SELF, ..Default::default() };
        let (result, answer) = xen_call(&mut hv, one, H::GrantTableOp, GnttabOp::QuerySize.number(), query);
        assert_eq!((result, answer.nr_frames, answer.max_nr_frames), (Ok(0), 4, 4));
        // The frames are zeroed and the guest's: it writes grant 1,600
        // (frame 3, entry 64) there, and domain two maps it.
        let entry_at = (hole + 3) * 4096 + 64 * 8;
        assert_eq!(hv.domains[one].read_struct::<u64>(entry_at), Ok(0));
        let entry = u64::from(GTF_PERMIT_ACCESS) | 2 << 16 | (DATA / 4096) << 32;
        hv.domains[one].write_guest(entry_at, &entry.to_le_bytes()).unwrap();
        let map = [abi::grant::GrantOp::Map as u64, 1, 1600, 0x4000_0000, abi::grant::MAP_WRITABLE];
        assert_eq!(crate::grant_ops::grant_op(&mut hv.grants(), two, map), Ok(0));
        assert_eq!(
            hv.domains[two].host_frame(0x4000_0000, Access::WRITE),
            hv.domains[one].host_frame(DATA, Access::WRITE)
        );
        // Past the table: refused.
        let past = [abi::grant::GrantOp::Map as u64, 1, 2048, 0x4000_1000, 0];
        assert_eq!(crate::grant_ops::grant_op(&mut hv.grants(), two, past), Err(abi::Error::InvalidArgument));
        // While a grant is mapped, no frame moves.
        assert_eq!(xen_call(&mut hv, one, H::MemoryOp, add_to_physmap, add(0, 0xe)).0, Err(Errno::Ebusy));
        // Every frame goes back with the domains.
        crate::domctl::destroy(&mut hv, two);
        crate::domctl::destroy(&mut hv, one);
        assert_eq!(machine::with(|state| state.frames.len()), frames_before, "every frame back");
    }

    #[test]
    fn xens_map_unmap_and_copy_work_on_grants_with_a_status_per_entry() {
        use abi::xen::grant_table::{
            GNTCOPY_DEST_GREF, GNTCOPY_SOURCE_GREF, GNTMAP_HOST_MAP, GNTMAP_READONLY, GTF_PERMIT_ACCESS, GTF_READING,
            GTF_READONLY, GnttabCopy, GnttabCopyPtr, GnttabMapGrantRef, GnttabOp, GnttabUnmapGrantRef, GrantStatus,
        };
        let mut hv = hypervisor();
        let (one, two) = (xen_domain(&mut hv.domains, 1), xen_domain(&mut hv.domains, 2));
        // Domain one's table at 0xd000: grant 5 its page 0x6000 read-only,
        // grant 7 its page 0x7000 writable, both to domain two.
        hv.domains[one].grant_frames[0] = hv.domains[one].host_frame(0xd000, Access::READ).unwrap();
        let entry = |flags: u16, page: u64| u64::from(flags) | 2 << 16 | (page / 4096) << 32;
        hv.domains[one]
            .write_guest(0xd000 + 5 * 8, &entry(GTF_PERMIT_ACCESS | GTF_READONLY, 0x6000).to_le_bytes())
            .unwrap();
        hv.domains[one].write_guest(0xd000 + 7 * 8, &entry(GTF_PERMIT_ACCESS, 0x7000).to_le_bytes()).unwrap();
        hv.domains[one].write_guest(0x6000, b"granted!").unwrap();
        let (map, unmap, copy) =
            (GnttabOp::MapGrantRef.number(), GnttabOp::UnmapGrantRef.number(), GnttabOp::Copy.number());
        let request =
            |r#ref, dom, host_addr, flags| GnttabMapGrantRef { host_addr, flags, r#ref, dom, ..Default::default() };
        // Two maps in one call: each gets its own status.
        let batch = [
            request(5, 1, 0x4000_0000, GNTMAP_HOST_MAP | GNTMAP_READONLY),
            request(5, 1, 0x4000_1000, GNTMAP_HOST_MAP),
        ];
        let (result, done) = xen_batch(&mut hv, two, H::GrantTableOp, map, batch, 2);
        assert_eq!(result, Ok(0));
        assert_eq!((done[0].status, done[0].handle, done[0].dev_bus_addr), (0, 0x40000, 0x4000_0000));
        assert_eq!(done[1].status, GrantStatus::PermissionDenied.number(), "a read-only grant, mapped writable");
        assert_eq!(
            hv.domains[two].host_frame(0x4000_0000, Access::READ),
            hv.domains[one].host_frame(0x6000, Access::READ)
        );
        assert_eq!(word(&hv.domains, one, 0xd000 + 5 * 8) as u16 & GTF_READING, GTF_READING);
        for (bad, status) in [
            (request(600, 1, 0x4000_2000, GNTMAP_HOST_MAP), GrantStatus::BadGntref),
            (request(5, 9, 0x4000_2000, GNTMAP_HOST_MAP), GrantStatus::BadDomain),
            (request(5, 1, 0x4000_2000, GNTMAP_READONLY), GrantStatus::GeneralError),
            (request(5, 1, 0x4000_2000, GNTMAP_HOST_MAP | 1 << 3), GrantStatus::GeneralError),
            (request(5, 1, 0x4000_2008, GNTMAP_HOST_MAP | GNTMAP_READONLY), GrantStatus::BadVirtAddr),
            (request(5, 1, 0x4000_0000, GNTMAP_HOST_MAP | GNTMAP_READONLY), GrantStatus::NoDeviceSpace),
        ] {
            assert_eq!(xen_call(&mut hv, two, H::GrantTableOp, map, bad).1.status, status.number(), "{bad:?}");
        }
        // A domain that placed no table granted nothing (Xen's tables are
        // all empty then); one that does not exist is a bad domain.
        xen_domain(&mut hv.domains, 3);
        let none = request(5, 3, 0x4000_2000, GNTMAP_HOST_MAP | GNTMAP_READONLY);
        assert_eq!(xen_call(&mut hv, two, H::GrantTableOp, map, none).1.status, GrantStatus::PermissionDenied.number());
        assert!(hv.domains[two].host_frame(0x4000_2000, Access::READ).is_err(), "nothing mapped");
        let too_many = [request(5, 1, 0x4000_2000, GNTMAP_HOST_MAP); 2];
        assert_eq!(xen_batch(&mut hv, two, H::GrantTableOp, map, too_many, 65).0, Err(Errno::Einval));
        // Unmap needs the map's handle; then the page is gone and the grant free.
        let undo = |handle| GnttabUnmapGrantRef { host_addr: 0x4000_0000, handle, ..Default::default() };
        assert_eq!(xen_call(&mut hv, two, H::GrantTableOp, unmap, undo(7)).1.status, GrantStatus::BadHandle.number());
        assert_eq!(xen_call(&mut hv, two, H::GrantTableOp, unmap, undo(0x40000)).1.status, 0);
        assert!(hv.domains[two].host_frame(0x4000_0000, Access::READ).is_err());
        assert_eq!(word(&hv.domains, one, 0xd000 + 5 * 8) as u16 & GTF_READING, 0);
        assert_eq!(
            xen_call(&mut hv, two, H::GrantTableOp, unmap, undo(0x40000)).1.status,
            GrantStatus::BadVirtAddr.number()
        );
        // Copies: from grant 5 into two's page 0x8000; from two's page into
        // grant 7 (writable) at offset 16.
        let gref = |r#ref: u32, offset| GnttabCopyPtr { u: u64::from(r#ref), domid: 1, offset, ..Default::default() };
        let frame = |page: u64, offset| GnttabCopyPtr {
            u: page / 4096,
            domid: abi::xen::DOMID_SELF,
            offset,
            ..Default::default()
        };
        let take = GnttabCopy {
            source: gref(5, 0),
            dest: frame(0x8000, 4),
            len: 8,
            flags: GNTCOPY_SOURCE_GREF,
            ..Default::default()
        };
        assert_eq!(xen_call(&mut hv, two, H::GrantTableOp, copy, take).1.status, 0);
        let mut bytes = [0; 8];
        hv.domains[two].read_guest(0x8004, &mut bytes).unwrap();
        assert_eq!(&bytes, b"granted!");
        let give = GnttabCopy {
            source: frame(0x8000, 4),
            dest: gref(7, 16),
            len: 8,
            flags: GNTCOPY_DEST_GREF,
            ..Default::default()
        };
        assert_eq!(xen_call(&mut hv, two, H::GrantTableOp, copy, give).1.status, 0);
        hv.domains[one].read_guest(0x7010, &mut bytes).unwrap();
        assert_eq!(&bytes, b"granted!");
        for (bad, status) in [
            (GnttabCopy { dest: gref(5, 0), ..give }, GrantStatus::PermissionDenied),
            (GnttabCopy { source: frame(0x8000, 4090), ..give }, GrantStatus::BadCopyArg),
            (GnttabCopy { flags: GNTCOPY_SOURCE_GREF | GNTCOPY_DEST_GREF, ..give }, GrantStatus::GeneralError),
            (GnttabCopy { flags: 0, ..give }, GrantStatus::GeneralError),
            (GnttabCopy { source: GnttabCopyPtr { domid: 1, ..frame(0x8000, 4) }, ..give }, GrantStatus::BadDomain),
            (GnttabCopy { dest: GnttabCopyPtr { domid: 9, ..gref(7, 16) }, ..give }, GrantStatus::BadDomain),
            (GnttabCopy { dest: GnttabCopyPtr { domid: 3, ..gref(7, 16) }, ..give }, GrantStatus::PermissionDenied),
        ] {
            assert_eq!(xen_call(&mut hv, two, H::GrantTableOp, copy, bad).1.status, status.number(), "{bad:?}");
        }
        // An array the caller cannot read is the call's own error.
        let space = AddressSpace::LongMode { cr3: PML4, vcpu: 0 };
        let unreadable = [u64::from(map), VIRTUAL + 0x2000, 1, 0, 0];
        assert_eq!(dispatch_table(&mut hv, two, &space, H::GrantTableOp.number(), unreadable), Err(Errno::Efault));
    }

    /// A hostile domain's Xen calls, at random: every number below 64,
    /// sub-operations past the last, pointers at its RAM (writable, read-
    /// only, unmapped), non-canonical, kernel-half and nonsense addresses,
    /// junk in the structures. Each answer is a value or one of Xen's
    /// errnos; the other domain's memory changes only in its event words
    /// (its shared-info page, which channels reach), no frame leaks and
    /// nothing panics. (`hcfuzz` in Bochs fuzzes Mica's numbers only.)
    #[test]
    fn random_xen_calls_answer_xens_errors_and_touch_no_other_domain() {
        let mut hv = hypervisor();
        let (one, two) = (xen_domain(&mut hv.domains, 1), xen_domain(&mut hv.domains, 2));
        let space = AddressSpace::LongMode { cr3: PML4, vcpu: 0 };
        let ram = |hv: &Hypervisor<'static, Fake>| {
            let mut bytes = vec![0; 16 * 4096];
            hv.domains[two].read_guest(0, &mut bytes).unwrap();
            bytes.splice(SHARED_INFO as usize..SHARED_INFO as usize + 4096, []);
            bytes
        };
        // A channel between the two, for sends to reach the other domain.
        let offer = EvtchnAllocUnbound { dom: abi::xen::DOMID_SELF, remote_dom: 1, port: 0 };
        let (_, offer) = evtchn(&mut hv, two, EvtchnOp::AllocUnbound, offer);
        let bind = EvtchnBindInterdomain { remote_dom: 2, remote_port: offer.port, ..Default::default() };
        assert_eq!(evtchn(&mut hv, one, EvtchnOp::BindInterdomain, bind).0, Ok(0));
        let (before, frames) = (ram(&hv), machine::with(|state| state.frames.len()));
        let mut random = crate::test_random::XorShift(0x9e37_79b9_7f4a_7c15);
        let (mut answered, mut raised) = (0, 0);
        let pointers = [VIRTUAL, VIRTUAL + 0xff8, VIRTUAL + 0x1000, VIRTUAL + 0x2000, 0, 1 << 47, u64::MAX, 0x5000];
        for round in 0..100_000 {
            let mut next = || random.next();
            let offered =
                [H::XenVersion, H::ConsoleIo, H::SchedOp, H::MemoryOp, H::HvmOp, H::VcpuOp, H::EventChannelOp];
            let number = if next() % 4 == 0 { next() % 64 } else { offered[(next() % 7) as usize].number() };
            let operation = if next() % 8 == 0 { next() } else { next() % 16 };
            // Shutting down or blocking ends this test's caller, as does
            // taking its one vCPU down.
            if number == H::SchedOp.number() && matches!(operation as u32, 1 | 2)
                || number == H::VcpuOp.number() && operation as u32 == VcpuOp::Down.number()
            {
                continue;
            }
            let argument = |value: u64| match value % 4 {
                0 => value,
                1 => pointers[(value / 4 % 8) as usize],
                _ => VIRTUAL,
            };
            let arguments = [operation, argument(next()), argument(next()), next(), next()];
            let mut junk: [u8; 64] = core::array::from_fn(|index| (next() >> (index % 8)) as u8);
            // Often small numbers first (ports, vCPUs, domain ids, indices).
            if next() % 2 == 0 {
                junk[..8].copy_from_slice(&(next() % 8).to_le_bytes());
            }
            hv.domains[one].write_guest(DATA, &junk).unwrap();
            let result = match dispatch(&mut hv.domains[one], &space, number, arguments) {
                XenCall::Done(result) => result,
                XenCall::Raise { target, port, from } => {
                    let slot = hv.domains.slot_of(target).unwrap();
                    crate::event_ops::raise_connected(&mut hv.domains[slot], port, 1, from);
                    raised += 1;
                    Ok(0)
                }
                XenCall::Table => dispatch_table(&mut hv, one, &space, number, arguments),
            };
            answered += u32::from(result.is_ok());
            assert!(!matches!(result, Err(Errno::Unknown(_))), "round {round}: {number} {arguments:x?}: {result:?}");
            assert!(hv.domains[one].ended.is_none(), "round {round}: the caller ended");
        }
        // The calls get past their checks often enough to reach their work
        // (3,033 of 100,000 with this seed; sends to the other domain are
        // rarer: random closes end the channel early).
        eprintln!("{answered} calls succeeded, {raised} sends reached the other domain");
        assert!(answered > 2_000, "the calls must reach past their checks");
        assert!(ram(&hv) == before, "the other domain's memory changed outside its shared info");
        assert_eq!(machine::with(|state| state.frames.len()), frames, "frames leaked or freed");
    }

    /// A 64-bit `vcpu_hvm_context` in hv's entry state, starting at
    /// `rip` with every general register set.
    fn long_mode_request(rip: u64) -> VcpuHvmContext64 {
        use abi::xen::vcpu::VcpuHvmX86_64;
        VcpuHvmContext64 {
            mode: VCPU_HVM_MODE_64B,
            x86_64: VcpuHvmX86_64 {
                rax: 1,
                rcx: 2,
                rdx: 3,
                rbx: 4,
                rsp: 0x20_0ff8,
                rbp: 6,
                rsi: 7,
                rdi: 8,
                rip,
                rflags: 2,
                cr0: LONG_MODE_CR0,
                cr3: PML4,
                cr4: LONG_MODE_CR4,
                efer: LONG_MODE_EFER,
            },
            ..Default::default()
        }
    }

    /// A 32-bit `vcpu_hvm_context` in hv's entry state (Xen's toolstack
    /// starts a PVH kernel with the same).
    fn protected_mode_request() -> VcpuHvmContext32 {
        use abi::xen::vcpu::VcpuHvmX86_32;
        let flat = u32::MAX;
        VcpuHvmContext32 {
            mode: VCPU_HVM_MODE_32B,
            x86_32: VcpuHvmX86_32 {
                eax: 1,
                ebx: 0x5000,
                edi: 9,
                esp: 0x8000,
                eip: 0x10_0000,
                eflags: 2,
                cr0: PROTECTED_MODE_CR0 as u32,
                cs_limit: flat,
                ds_limit: flat,
                ss_limit: flat,
                es_limit: flat,
                tr_limit: 0x67,
                cs_ar: 0xc9b,
                ds_ar: 0xc93,
                ss_ar: 0xc93,
                es_ar: 0xc93,
                tr_ar: 0x8b,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// A Xen guest (id `id`) with `vcpus` vCPUs, vCPU 0 up.
    fn smp_domain(hv: &mut Hypervisor<'static, Fake>, id: abi::DomainId, vcpus: usize) -> usize {
        let slot = xen_domain(&mut hv.domains, id);
        hv.domains[slot].vcpu_count = vcpus;
        slot
    }

    /// `vcpu_op` `operation` on vCPU `vcpu` by the domain in `slot`, with
    /// `request` (if any) at `DATA`, as the run loop makes it.
    fn vcpu_call<T: IntoBytes + zerocopy::Immutable>(
        hv: &mut Hypervisor<'static, Fake>,
        slot: usize,
        operation: VcpuOp,
        vcpu: u64,
        request: Option<T>,
    ) -> Result<u64, Errno> {
        if let Some(request) = request {
            hv.domains[slot].write_guest(DATA, request.as_bytes()).unwrap();
        }
        let space = AddressSpace::LongMode { cr3: PML4, vcpu: 0 };
        let arguments = [u64::from(operation.number()), vcpu, VIRTUAL, 0, 0];
        match dispatch(&mut hv.domains[slot], &space, H::VcpuOp.number(), arguments) {
            XenCall::Done(result) => result,
            XenCall::Table => dispatch_table(hv, slot, &space, H::VcpuOp.number(), arguments),
            other => panic!("{operation:?}: {other:?}"),
        }
    }

    const NONE: Option<u64> = None;

    #[test]
    fn initialise_gives_a_vcpu_hvs_64_bit_entry_state_once() {
        let mut hv = hypervisor();
        let one = smp_domain(&mut hv, 1, 3);
        let request = long_mode_request(VIRTUAL);
        assert_eq!(vcpu_call(&mut hv, one, VcpuOp::Initialise, 1, Some(request)), Ok(0));
        let slot = &hv.domains[one].vcpus[1];
        assert!(!slot.up && slot.vcpu.is_none(), "it runs once it is up");
        let (context, registers) = slot.start_state.unwrap();
        let expected = VcpuContext {
            rip: VIRTUAL,
            rsp: 0x20_0ff8,
            cr3: PML4,
            rdi: 8,
            mode: abi::domctl::VCPU_MODE_LONG,
            ..VcpuContext::default()
        };
        assert_eq!(context, expected, "flat segments without a GDT");
        assert_eq!(registers, StartRegisters { rax: 1, rcx: 2, rdx: 3, rbx: 4, rbp: 6, rsi: 7, rdi: 8 });
        assert_eq!(vcpu_call(&mut hv, one, VcpuOp::Initialise, 1, Some(request)), Err(Errno::Eexist), "once");
        assert_eq!(vcpu_call(&mut hv, one, VcpuOp::Initialise, 0, Some(request)), Err(Errno::Eexist), "vCPU 0 runs");
        assert_eq!(vcpu_call(&mut hv, one, VcpuOp::Initialise, 3, Some(request)), Err(Errno::Enoent));
        // What hv cannot start a vCPU in is refused, and changes nothing.
        let x86_64 = request.x86_64;
        let bad = [
            VcpuHvmContext64 { mode: 2, ..request },
            long_mode_request(1 << 47),
            long_mode_request(0xffff_7fff_0000_0000),
        ]
        .into_iter()
        .chain(
            [
                abi::xen::vcpu::VcpuHvmX86_64 { rsp: 1 << 63, ..x86_64 },
                abi::xen::vcpu::VcpuHvmX86_64 { cr3: PML4 + 8, ..x86_64 },
                abi::xen::vcpu::VcpuHvmX86_64 { cr3: abi::domctl::FOREIGN_WINDOW_BASE, ..x86_64 },
                abi::xen::vcpu::VcpuHvmX86_64 { cr0: LONG_MODE_CR0 & !CR0_PG, ..x86_64 },
                abi::xen::vcpu::VcpuHvmX86_64 { cr0: LONG_MODE_CR0 | 1 << 30, ..x86_64 },
                abi::xen::vcpu::VcpuHvmX86_64 { cr4: LONG_MODE_CR4 | 1 << 7, ..x86_64 },
                abi::xen::vcpu::VcpuHvmX86_64 { cr4: 0, ..x86_64 },
                abi::xen::vcpu::VcpuHvmX86_64 { efer: EFER_LMA | 1 << 11, ..x86_64 },
                abi::xen::vcpu::VcpuHvmX86_64 { efer: LONG_MODE_EFER | 1, ..x86_64 },
                abi::xen::vcpu::VcpuHvmX86_64 { rflags: 0x202, ..x86_64 },
            ]
            .map(|x86_64| VcpuHvmContext64 { x86_64, ..request }),
        );
        for bad in bad {
            assert_eq!(vcpu_call(&mut hv, one, VcpuOp::Initialise, 2, Some(bad)), Err(Errno::Einval), "{bad:x?}");
        }
        assert_eq!(hv.domains[one].vcpus[2].start_state, None);
        // The bits the CPU fixes may be left out; the state is hv's anyway.
        let lax = abi::xen::vcpu::VcpuHvmX86_64 {
            cr0: LONG_MODE_CR0 & !0x30,
            efer: LONG_MODE_EFER & !EFER_LMA,
            rflags: 0,
            ..x86_64
        };
        assert_eq!(
            vcpu_call(&mut hv, one, VcpuOp::Initialise, 2, Some(VcpuHvmContext64 { x86_64: lax, ..request })),
            Ok(0)
        );
        assert_eq!(hv.domains[one].vcpus[2].start_state.map(|(context, _)| context), Some(expected));
        let space = AddressSpace::LongMode { cr3: PML4, vcpu: 0 };
        let unmapped = [u64::from(VcpuOp::Initialise.number()), 2, VIRTUAL + 0x2000, 0, 0];
        hv.domains[one].vcpus[2].start_state = None;
        assert_eq!(
            dispatch(&mut hv.domains[one], &space, H::VcpuOp.number(), unmapped),
            XenCall::Done(Err(Errno::Efault))
        );
    }

    #[test]
    fn initialise_gives_a_vcpu_hvs_32_bit_entry_state_and_no_other() {
        let mut hv = hypervisor();
        let one = smp_domain(&mut hv, 1, 2);
        let request = protected_mode_request();
        let x86_32 = request.x86_32;
        use abi::xen::vcpu::VcpuHvmX86_32 as R;
        for bad in [
            R { cr0: (PROTECTED_MODE_CR0 | CR0_PG) as u32, ..x86_32 },
            R { cr0: 0x30, ..x86_32 },
            R { cr3: 0x1000, ..x86_32 },
            R { cr4: 1 << 4, ..x86_32 },
            R { efer: 1 << 8, ..x86_32 },
            R { eflags: 0x202, ..x86_32 },
            R { cs_base: 0x1000, ..x86_32 },
            R { cs_limit: 0xf_ffff, ..x86_32 },
            R { cs_ar: 0x09b, ..x86_32 },
            R { ds_ar: 0xc9b, ..x86_32 },
            R { ss_limit: 0xffff, ..x86_32 },
            R { es_base: 1, ..x86_32 },
            R { tr_limit: 0x68, ..x86_32 },
            R { tr_ar: 0x89, ..x86_32 },
        ] {
            let bad = VcpuHvmContext32 { x86_32: bad, ..request };
            assert_eq!(vcpu_call(&mut hv, one, VcpuOp::Initialise, 1, Some(bad)), Err(Errno::Einval), "{bad:x?}");
        }
        assert_eq!(hv.domains[one].vcpus[1].start_state, None);
        // Segments not yet accessed are taken as they are after the entry.
        let request = VcpuHvmContext32 { x86_32: R { cs_ar: 0xc9a, ds_ar: 0xc92, ..x86_32 }, ..request };
        assert_eq!(vcpu_call(&mut hv, one, VcpuOp::Initialise, 1, Some(request)), Ok(0));
        let (context, registers) = hv.domains[one].vcpus[1].start_state.unwrap();
        assert_eq!(
            context,
            VcpuContext {
                rip: 0x10_0000,
                rsp: 0x8000,
                rdi: 0x5000,
                mode: abi::domctl::VCPU_MODE_PVH,
                ..VcpuContext::default()
            }
        );
        assert_eq!(registers, StartRegisters { rax: 1, rbx: 0x5000, rdi: 9, ..StartRegisters::default() });
    }

    #[test]
    fn up_starts_an_initialised_vcpu_and_down_stops_it_keeping_that_state() {
        let mut hv = hypervisor();
        let one = smp_domain(&mut hv, 1, 3);
        assert_eq!(vcpu_call(&mut hv, one, VcpuOp::Up, 1, NONE), Err(Errno::Einval), "never initialised");
        assert_eq!(vcpu_call(&mut hv, one, VcpuOp::Up, 3, NONE), Err(Errno::Enoent));
        let request = long_mode_request(0x40_0000);
        assert_eq!(vcpu_call(&mut hv, one, VcpuOp::Initialise, 1, Some(request)), Ok(0));
        let frames = machine::with(|state| state.frames.len());
        assert_eq!(vcpu_call(&mut hv, one, VcpuOp::Up, 1, NONE), Ok(0));
        let started = |hv: &Hypervisor<'static, Fake>| {
            let slot = &hv.domains[one].vcpus[1];
            slot.vcpu.as_ref().filter(|_| slot.up).map(|vcpu| (vcpu.rip, vcpu.context, vcpu.start_registers))
        };
        let (rip, context, registers) = started(&hv).expect("vCPU 1 is up");
        assert_eq!((rip, context.gdt_base, context.gdt_limit), (0x40_0000, 0, 0));
        assert_eq!(registers, StartRegisters { rax: 1, rcx: 2, rdx: 3, rbx: 4, rbp: 6, rsi: 7, rdi: 8 });
        assert_eq!(vcpu_call(&mut hv, one, VcpuOp::Up, 1, NONE), Ok(0), "up already: nothing changes");
        assert_eq!(machine::with(|state| state.frames.len()), frames + 1, "one vCPU built");
        assert_eq!(vcpu_call(&mut hv, one, VcpuOp::IsUp, 1, NONE), Ok(1));
        // Down: it stops (released: no CPU held it), keeping its state.
        assert_eq!(vcpu_call(&mut hv, one, VcpuOp::Down, 1, NONE), Ok(0));
        assert_eq!(started(&hv), None);
        assert_eq!(machine::with(|state| state.released_vcpus.clone()), [0x40_0000]);
        assert_eq!(vcpu_call(&mut hv, one, VcpuOp::IsUp, 1, NONE), Ok(0));
        assert_eq!(vcpu_call(&mut hv, one, VcpuOp::Down, 1, NONE), Ok(0), "down already");
        assert_eq!(vcpu_call(&mut hv, one, VcpuOp::Down, 2, NONE), Ok(0), "never up");
        assert_eq!(vcpu_call(&mut hv, one, VcpuOp::Initialise, 1, Some(request)), Err(Errno::Eexist));
        assert_eq!(vcpu_call(&mut hv, one, VcpuOp::Up, 1, NONE), Ok(0));
        assert_eq!(started(&hv), Some((rip, context, registers)), "from the state it was initialised with");
        // Mica's own Down makes it lose that state: it may be initialised again.
        let down = [abi::hypercall::VcpuOp::Down as u64, 1, 0, 0, 0];
        assert_eq!(crate::mica_calls::vcpu_op(&mut hv.domains[one], one, down), Ok(0));
        assert_eq!(vcpu_call(&mut hv, one, VcpuOp::Up, 1, NONE), Err(Errno::Einval));
        assert_eq!(vcpu_call(&mut hv, one, VcpuOp::Initialise, 1, Some(long_mode_request(0x50_0000))), Ok(0));
        // A vCPU started by Mica's `Up` is initialised too, from its context.
        let mica =
            VcpuContext { rip: 0x60_0000, cr3: PML4, rdi: 5, gdt_base: 0x3000, gdt_limit: 39, ..Default::default() };
        hv.domains[one].write_guest(DATA, mica.as_bytes()).unwrap();
        let up = [abi::hypercall::VcpuOp::Up as u64, 2, DATA, 0, 0];
        assert_eq!(crate::mica_calls::vcpu_op(&mut hv.domains[one], one, up), Ok(0));
        assert_eq!(vcpu_call(&mut hv, one, VcpuOp::Initialise, 2, Some(request)), Err(Errno::Eexist));
        assert_eq!(vcpu_call(&mut hv, one, VcpuOp::Down, 2, NONE), Ok(0));
        assert_eq!(vcpu_call(&mut hv, one, VcpuOp::Up, 2, NONE), Ok(0));
        let vcpu = hv.domains[one].vcpus[2].vcpu.as_ref().unwrap();
        assert_eq!((vcpu.context, vcpu.start_registers.rdi), (mica, 5));
    }

    #[test]
    fn up_waits_for_a_vcpu_still_leaving_its_cpu() {
        let mut hv = hypervisor();
        let one = smp_domain(&mut hv, 1, 2);
        assert_eq!(vcpu_call(&mut hv, one, VcpuOp::Initialise, 1, Some(long_mode_request(0x40_0000))), Ok(0));
        assert_eq!(vcpu_call(&mut hv, one, VcpuOp::Up, 1, NONE), Ok(0));
        // vCPU 0 calls on this CPU (0); CPU 1 runs vCPU 1.
        let caller = &mut hv.domains[one].vcpus[0];
        (caller.running, caller.last_cpu) = (true, 0);
        let slot = &mut hv.domains[one].vcpus[1];
        let held = slot.vcpu.take();
        (slot.running, slot.last_cpu) = (true, 1);
        assert_eq!(vcpu_call(&mut hv, one, VcpuOp::Down, 1, NONE), Ok(0));
        assert_eq!(machine::with(|state| state.kicks.clone()), [1], "CPU 1 told to let go of it");
        assert_eq!(vcpu_call(&mut hv, one, VcpuOp::Up, 1, NONE), Ok(0));
        let caller = &hv.domains[one].vcpus[0];
        assert!(caller.restart_call && caller.reschedule, "the call runs again later");
        assert!(!hv.domains[one].vcpus[1].up);
        // CPU 1 retires it; the call, made again, starts it.
        hv.domains[one].vcpus[1].running = false;
        Fake::release_vcpu(held.unwrap());
        assert_eq!(vcpu_call(&mut hv, one, VcpuOp::Up, 1, NONE), Ok(0));
        assert!(hv.domains[one].vcpus[1].up && hv.domains[one].vcpus[1].vcpu.is_some());
    }

    #[test]
    fn the_last_vcpu_going_down_shuts_a_guest_down_but_not_dom0() {
        let mut hv = hypervisor();
        let one = smp_domain(&mut hv, 1, 2);
        let dom0 = smp_domain(&mut hv, abi::DOM0, 2);
        assert_eq!(vcpu_call(&mut hv, dom0, VcpuOp::Down, 0, NONE), Err(Errno::Eperm));
        assert!(hv.domains[dom0].ended.is_none() && hv.domains[dom0].vcpus[0].up);
        assert_eq!(vcpu_call(&mut hv, one, VcpuOp::Down, 0, NONE), Ok(0));
        assert_eq!(hv.domains[one].ended, Some(Ended::Shutdown(abi::hypercall::ShutdownReason::PowerOff)));
        assert!(machine::with(|state| state.log.iter().any(|line| line.contains("d1 shut down"))));
    }

    #[test]
    fn calls_hv_does_not_offer_yet_answer_enosys() {
        let (mut domain, space) = domain(false);
        for number in [H::SetTrapTable, H::PhysdevOp, H::Multicall] {
            assert_eq!(call(&mut domain, &space, number, [0, VIRTUAL, 0]), Err(Errno::Enosys), "{number:?}");
        }
        assert_eq!(dispatch(&mut domain, &space, 63, [0; 5]), XenCall::Done(Err(Errno::Enosys)));
        // Sub-operations not offered, FIFO event channels among them.
        for (number, operation) in [
            (H::MemoryOp, MemoryOp::IncreaseReservation.number()),
            (H::EventChannelOp, EvtchnOp::InitControl.number()),
            (H::EventChannelOp, EvtchnOp::ExpandArray.number()),
            (H::HvmOp, HvmOp::PagetableDying.number()),
            (H::VcpuOp, VcpuOp::SendNmi.number()),
            (H::VcpuOp, VcpuOp::SetPeriodicTimer.number()),
        ] {
            let arguments = if number == H::VcpuOp {
                [u64::from(operation), 0, VIRTUAL]
            } else {
                [u64::from(operation), VIRTUAL, 0]
            };
            assert_eq!(call(&mut domain, &space, number, arguments), Err(Errno::Enosys), "{number:?} {operation}");
        }
    }
}
