//! Example guest that attacks the hypervisor's interface and must get its
//! documented answer each time, then runs on (as must everyone else).
//! Prints one line per check and a summary.
//!
//! - Part `xen` (issue 10): Xen's calls, the interface guests use:
//!   bad guest addresses (memory not its own, non-canonical, unmapped in
//!   either half, running off the end of its RAM, a huge count), other
//!   domains' resources (dom0's parameters, ports, grants, shared info,
//!   memory map), hostile structures (ports, vCPUs, reasons, indices and
//!   flags out of range), operations and numbers hv does not offer; each
//!   answer is Xen's errno, or for grant operations the entry's `GNTST_*`
//!   status.
//! - Part `mica`: Mica's own calls (numbers from 0x1000), which a guest
//!   can still make: dom0-only operations, memory not its own, bad values.
//!
//! Then: XMM0 kept across a guest second of Xen `sched_op` yields while
//! another `hostile` does the same (hv switches SSE state), and an unknown
//! number refused.
#![no_std]
#![no_main]

use core::fmt::Write;

use abi::Error;
use abi::Hypercall as H;
use abi::domctl::DomCtlOp as D;
use abi::event::EventOp as E;
use abi::hypercall::PlatformOp;
use abi::xen::Hypercall as X;
use abi::xen::console_io::ConsoleIoOp;
use abi::xen::event_channel::{
    EvtchnAllocUnbound, EvtchnBindInterdomain, EvtchnBindIpi, EvtchnBindVcpu, EvtchnBindVirq, EvtchnClose, EvtchnOp,
    EvtchnSend, EvtchnStatus, EvtchnUnmask, Virq,
};
use abi::xen::grant_table::{
    GNTCOPY_DEST_GREF, GNTCOPY_SOURCE_GREF, GNTMAP_HOST_MAP, GNTMAP_READONLY, GnttabCopy, GnttabCopyPtr,
    GnttabMapGrantRef, GnttabOp, GnttabSetVersion, GnttabUnmapGrantRef, GrantStatus,
};
use abi::xen::hvm::{CallbackVia, HVM_PARAM_CALLBACK_IRQ, HVM_PARAM_STORE_PFN, HvmOp, XenHvmParam};
use abi::xen::memory::{MemoryOp, XENMAPSPACE_GRANT_TABLE, XENMAPSPACE_SHARED_INFO, XenAddToPhysmap};
use abi::xen::sched::{SchedOp, SchedPoll, SchedShutdown, ShutdownReason};
use abi::xen::vcpu::{VcpuOp, VcpuRegisterVcpuInfo};
use abi::xen::version::{XenFeatureInfo, XenVersionOp};
use abi::xen::{DOMID_SELF, Errno};
use pv_drivers::guest::{self, Guest};
use pv_drivers::hypercall;
use zerocopy::{Immutable, IntoBytes};

/// Guest-physical memory this guest was never given (mapped by its page
/// tables, backed by nothing in EPT).
const NOT_MINE: u64 = 0x3000_0000;
/// The first address past the canonical lower half.
const NON_CANONICAL: u64 = 0x0000_8000_0000_0000;
/// Canonical addresses the guest's page tables do not map: the top of
/// the lower (user) half and the kernel half.
const UNMAPPED_LOW: u64 = 0x0000_7fff_ffff_f000;
const UNMAPPED_HIGH: u64 = 0xffff_ffff_8000_0000;
/// Where the grant checks would map: above the guest's RAM, below hv's
/// limit for guests.
const MAP_AT: u64 = 0x3000_0000;
/// A domain id no domain has (below Xen's reserved ids).
const ABSENT: u16 = 32000;

/// Pages the Xen checks' structures live in (hv reads and writes them).
#[repr(C, align(4096))]
struct Scratch([u8; 3 * 4096]);
static mut SCRATCH: Scratch = Scratch([0; 3 * 4096]);

/// Lays argument structures out in [`SCRATCH`], each 8-byte aligned.
struct Layout {
    used: usize,
}

impl Layout {
    /// Copies `value` into the scratch pages; its address.
    fn put<T: IntoBytes + Immutable>(&mut self, value: T) -> u64 {
        self.put_bytes(value.as_bytes())
    }

    fn put_bytes(&mut self, bytes: &[u8]) -> u64 {
        let at = (&raw mut SCRATCH as usize + self.used) as *mut u8;
        assert!(self.used + bytes.len() <= size_of::<Scratch>());
        // SAFETY: inside SCRATCH (checked above), which only this guest's
        // calls touch; written through a raw pointer, as hv writes it too.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), at, bytes.len()) };
        self.used = (self.used + bytes.len()).next_multiple_of(8);
        at as u64
    }
}

/// What a Xen check must answer.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// This value.
    Returns(u64),
    /// This errno.
    Fails(Errno),
    /// 0, with this `GNTST_*` status in the entry's 16-bit field at this address.
    Status(u64, GrantStatus),
}

/// One check of a Xen call: name, number, arguments (RDI, RSI, RDX), answer.
type XenCheck = (&'static str, X, [u64; 3], Answer);

/// One check of a Mica call: name, number, arguments, documented result.
type MicaCheck = (&'static str, H, [u64; 5], Result<u64, Error>);

fn op(number: impl Into<u64>) -> u64 {
    number.into()
}

/// The Xen checks; `ram_end` is the first address past this guest's RAM.
fn xen_checks(me: u16, buffer: u64, ram_end: u64) -> [XenCheck; 69] {
    use Answer::{Fails, Returns, Status};
    let mut at = Layout { used: 0 };
    let write = op(ConsoleIoOp::Write.number());
    // A line of text laid across a page boundary of its own.
    let crossing_text = b"hostile: xen: console text across a page boundary\n";
    at.used = 4096 - 24;
    let crossing = at.put_bytes(crossing_text);
    let features = at.put(XenFeatureInfo { submap_idx: 1, submap: 0 });
    let physmap =
        |at: &mut Layout, domid, space, idx, gpfn| at.put(XenAddToPhysmap { domid, space, idx, gpfn, size: 0 });
    let dom0_shared_info = physmap(&mut at, 0, XENMAPSPACE_SHARED_INFO, 0, buffer / 4096);
    let shared_info_not_mine = physmap(&mut at, DOMID_SELF, XENMAPSPACE_SHARED_INFO, 0, NOT_MINE / 4096);
    let grant_frame_4 = physmap(&mut at, DOMID_SELF, XENMAPSPACE_GRANT_TABLE, 4, buffer / 4096);
    let unknown_space = physmap(&mut at, DOMID_SELF, 99, 0, buffer / 4096);
    let param = |at: &mut Layout, domid, index, value| at.put(XenHvmParam { domid, pad: 0, index, value });
    let dom0_store = param(&mut at, 0, HVM_PARAM_STORE_PFN, 0);
    let my_store = param(&mut at, DOMID_SELF, HVM_PARAM_STORE_PFN, 1);
    let callback_gsi = param(&mut at, DOMID_SELF, HVM_PARAM_CALLBACK_IRQ, CallbackVia::Gsi(5).encode());
    let callback_low = param(&mut at, DOMID_SELF, HVM_PARAM_CALLBACK_IRQ, CallbackVia::Vector(8).encode());
    let param_beyond = param(&mut at, DOMID_SELF, 1000, 0);
    let dom0_port_1 = at.put(EvtchnBindInterdomain { remote_dom: 0, remote_port: 1, ..Default::default() });
    let absent_domain = at.put(EvtchnBindInterdomain { remote_dom: ABSENT, remote_port: 1, ..Default::default() });
    let in_dom0_table = at.put(EvtchnAllocUnbound { dom: 0, remote_dom: me, port: 0 });
    let send_free = at.put(EvtchnSend { port: 200 });
    let send_beyond = at.put(EvtchnSend { port: u32::MAX });
    let close_0 = at.put(EvtchnClose { port: 0 });
    let dom0_status = at.put(EvtchnStatus { dom: 0, port: 1, ..Default::default() });
    let unmask_beyond = at.put(EvtchnUnmask { port: 4096 });
    let timer_of_vcpu_5 = at.put(EvtchnBindVirq { virq: Virq::Timer.number(), vcpu: 5, port: 0 });
    let undefined_virq = at.put(EvtchnBindVirq { virq: 5, vcpu: 0, port: 0 });
    let ipi_far = at.put(EvtchnBindIpi { vcpu: u32::MAX, port: 0 });
    let move_free = at.put(EvtchnBindVcpu { port: 200, vcpu: 0 });
    let map = |at: &mut Layout, dom, r#ref, host_addr, flags| {
        at.put(GnttabMapGrantRef { host_addr, flags, r#ref, dom, ..Default::default() })
    };
    let readonly = GNTMAP_HOST_MAP | GNTMAP_READONLY;
    let map_dom0 = map(&mut at, 0, 1, MAP_AT, readonly);
    let map_absent = map(&mut at, ABSENT, 1, MAP_AT, readonly);
    let map_beyond = map(&mut at, 0, 512, MAP_AT, readonly);
    let map_unaligned = map(&mut at, 0, 1, MAP_AT + 8, readonly);
    let map_device = map(&mut at, 0, 1, MAP_AT, GNTMAP_READONLY);
    let unmap =
        |at: &mut Layout, handle| at.put(GnttabUnmapGrantRef { host_addr: MAP_AT, handle, ..Default::default() });
    let unmap_wrong_handle = unmap(&mut at, 7);
    let unmap_nothing = unmap(&mut at, (MAP_AT / 4096) as u32);
    let grant = |domid, r#ref: u32, offset| GnttabCopyPtr { u: u64::from(r#ref), domid, offset, _pad0: 0 };
    let frame = |domid, address: u64| GnttabCopyPtr { u: address / 4096, domid, offset: 0, _pad0: 0 };
    let copy = |at: &mut Layout, source, dest, len, flags| {
        at.put(GnttabCopy { source, dest, len, flags, ..Default::default() })
    };
    let copy_dom0 = copy(&mut at, grant(0, 1, 0), frame(DOMID_SELF, buffer), 8, GNTCOPY_SOURCE_GREF);
    let copy_crossing = copy(&mut at, grant(0, 1, 4000), frame(DOMID_SELF, buffer), 200, GNTCOPY_SOURCE_GREF);
    let copy_grants = copy(&mut at, grant(0, 1, 0), grant(0, 2, 0), 8, GNTCOPY_SOURCE_GREF | GNTCOPY_DEST_GREF);
    let copy_to_dom0_frame = copy(&mut at, grant(0, 1, 0), frame(0, buffer), 8, GNTCOPY_SOURCE_GREF);
    let version_2 = at.put(GnttabSetVersion { version: 2 });
    let suspend = at.put(SchedShutdown { reason: ShutdownReason::Suspend.number() });
    let reason_99 = at.put(SchedShutdown { reason: 99 });
    let port_256 = at.put(256u32);
    let poll_129 = at.put(SchedPoll { ports: port_256, nr_ports: 129, ..Default::default() });
    let poll_256 = at.put(SchedPoll { ports: port_256, nr_ports: 1, ..Default::default() });
    let poll_unreadable = at.put(SchedPoll { ports: NOT_MINE, nr_ports: 1, ..Default::default() });
    let context = at.put([0u8; 128]);
    let info_crossing = at.put(VcpuRegisterVcpuInfo { mfn: buffer / 4096, offset: 4090, rsvd: 0 });
    let status = |address: u64, offset: u64, status| Status(address + offset, status);
    let grant_op = |operation: GnttabOp| op(operation.number());
    let evtchn = |operation: EvtchnOp| op(operation.number());
    let xen_version = abi::xen::version::MICA_XEN_VERSION;
    [
        // Bad guest addresses.
        ("console write from memory not mine", X::ConsoleIo, [write, 16, NOT_MINE], Fails(Errno::Efault)),
        ("console write from the null page", X::ConsoleIo, [write, 16, 8], Fails(Errno::Efault)),
        ("console write at a non-canonical address", X::ConsoleIo, [write, 16, NON_CANONICAL], Fails(Errno::Efault)),
        ("console write, lower half unmapped", X::ConsoleIo, [write, 16, UNMAPPED_LOW], Fails(Errno::Efault)),
        ("console write, kernel half unmapped", X::ConsoleIo, [write, 16, UNMAPPED_HIGH], Fails(Errno::Efault)),
        ("console write running off my RAM", X::ConsoleIo, [write, 16, ram_end - 8], Fails(Errno::Efault)),
        ("console write of u64::MAX bytes", X::ConsoleIo, [write, u64::MAX, ram_end - 64], Fails(Errno::Efault)),
        ("console write at u64::MAX - 7", X::ConsoleIo, [write, 16, u64::MAX - 7], Fails(Errno::Efault)),
        ("console write across my pages", X::ConsoleIo, [write, crossing_text.len() as u64, crossing], Returns(0)),
        ("console read (dom0's)", X::ConsoleIo, [op(ConsoleIoOp::Read.number()), 16, buffer], Fails(Errno::Eperm)),
        ("console operation 2", X::ConsoleIo, [2, 16, buffer], Fails(Errno::Enosys)),
        ("version", X::XenVersion, [op(XenVersionOp::Version.number()), 0, 0], Returns(u64::from(xen_version))),
        (
            "extraversion into memory not mine",
            X::XenVersion,
            [op(XenVersionOp::Extraversion.number()), NOT_MINE, 0],
            Fails(Errno::Efault),
        ),
        ("feature word 1", X::XenVersion, [op(XenVersionOp::GetFeatures.number()), features, 0], Fails(Errno::Einval)),
        // Other domains' resources, and my own where they are not mine to set.
        (
            "shared info of dom0",
            X::MemoryOp,
            [op(MemoryOp::AddToPhysmap.number()), dom0_shared_info, 0],
            Fails(Errno::Eperm),
        ),
        (
            "shared info at memory not mine",
            X::MemoryOp,
            [op(MemoryOp::AddToPhysmap.number()), shared_info_not_mine, 0],
            Fails(Errno::Einval),
        ),
        (
            "grant table frame 4 (a table has 4: 0-3)",
            X::MemoryOp,
            [op(MemoryOp::AddToPhysmap.number()), grant_frame_4, 0],
            Fails(Errno::Einval),
        ),
        (
            "physmap space 99",
            X::MemoryOp,
            [op(MemoryOp::AddToPhysmap.number()), unknown_space, 0],
            Fails(Errno::Enosys),
        ),
        (
            "add_to_physmap from a non-canonical address",
            X::MemoryOp,
            [op(MemoryOp::AddToPhysmap.number()), NON_CANONICAL, 0],
            Fails(Errno::Efault),
        ),
        ("set dom0's memory map", X::MemoryOp, [op(MemoryOp::SetMemoryMap.number()), buffer, 0], Fails(Errno::Eperm)),
        ("memory operation 63", X::MemoryOp, [63, buffer, 0], Fails(Errno::Enosys)),
        ("dom0's store frame", X::HvmOp, [op(HvmOp::GetParam.number()), dom0_store, 0], Fails(Errno::Eperm)),
        ("set my own store frame", X::HvmOp, [op(HvmOp::SetParam.number()), my_store, 0], Fails(Errno::Eperm)),
        (
            "callback on an interrupt line",
            X::HvmOp,
            [op(HvmOp::SetParam.number()), callback_gsi, 0],
            Fails(Errno::Einval),
        ),
        ("callback on vector 8", X::HvmOp, [op(HvmOp::SetParam.number()), callback_low, 0], Fails(Errno::Einval)),
        ("parameter 1000", X::HvmOp, [op(HvmOp::GetParam.number()), param_beyond, 0], Fails(Errno::Einval)),
        ("parameter from memory not mine", X::HvmOp, [op(HvmOp::GetParam.number()), NOT_MINE, 0], Fails(Errno::Efault)),
        // Event channels: other domains' ports, ports and vCPUs out of range.
        (
            "bind to dom0's port 1",
            X::EventChannelOp,
            [evtchn(EvtchnOp::BindInterdomain), dom0_port_1, 0],
            Fails(Errno::Einval),
        ),
        (
            "bind to a domain that does not exist",
            X::EventChannelOp,
            [evtchn(EvtchnOp::BindInterdomain), absent_domain, 0],
            Fails(Errno::Esrch),
        ),
        (
            "a port in dom0's table",
            X::EventChannelOp,
            [evtchn(EvtchnOp::AllocUnbound), in_dom0_table, 0],
            Fails(Errno::Eperm),
        ),
        (
            "send on a port I do not have",
            X::EventChannelOp,
            [evtchn(EvtchnOp::Send), send_free, 0],
            Fails(Errno::Einval),
        ),
        ("send on port 2^32 - 1", X::EventChannelOp, [evtchn(EvtchnOp::Send), send_beyond, 0], Fails(Errno::Einval)),
        ("send from memory not mine", X::EventChannelOp, [evtchn(EvtchnOp::Send), NOT_MINE, 0], Fails(Errno::Efault)),
        ("close port 0", X::EventChannelOp, [evtchn(EvtchnOp::Close), close_0, 0], Fails(Errno::Einval)),
        ("status of dom0's port", X::EventChannelOp, [evtchn(EvtchnOp::Status), dom0_status, 0], Fails(Errno::Eperm)),
        ("unmask port 4096", X::EventChannelOp, [evtchn(EvtchnOp::Unmask), unmask_beyond, 0], Fails(Errno::Einval)),
        (
            "timer of vcpu 5 of 1",
            X::EventChannelOp,
            [evtchn(EvtchnOp::BindVirq), timer_of_vcpu_5, 0],
            Fails(Errno::Enoent),
        ),
        (
            "virtual IRQ 5 (Xen defines none)",
            X::EventChannelOp,
            [evtchn(EvtchnOp::BindVirq), undefined_virq, 0],
            Fails(Errno::Einval),
        ),
        ("ipi for vcpu 2^32 - 1", X::EventChannelOp, [evtchn(EvtchnOp::BindIpi), ipi_far, 0], Fails(Errno::Enoent)),
        ("move a free port", X::EventChannelOp, [evtchn(EvtchnOp::BindVcpu), move_free, 0], Fails(Errno::Einval)),
        ("FIFO event channels", X::EventChannelOp, [evtchn(EvtchnOp::InitControl), buffer, 0], Fails(Errno::Enosys)),
        // Grants: another domain's, hostile entries, arrays, counts.
        (
            "map dom0's grant 1",
            X::GrantTableOp,
            [grant_op(GnttabOp::MapGrantRef), map_dom0, 1],
            status(map_dom0, 18, GrantStatus::PermissionDenied),
        ),
        (
            "map a grant of no domain",
            X::GrantTableOp,
            [grant_op(GnttabOp::MapGrantRef), map_absent, 1],
            status(map_absent, 18, GrantStatus::BadDomain),
        ),
        (
            "map grant 512",
            X::GrantTableOp,
            [grant_op(GnttabOp::MapGrantRef), map_beyond, 1],
            status(map_beyond, 18, GrantStatus::BadGntref),
        ),
        (
            "map at an unaligned address",
            X::GrantTableOp,
            [grant_op(GnttabOp::MapGrantRef), map_unaligned, 1],
            status(map_unaligned, 18, GrantStatus::BadVirtAddr),
        ),
        (
            "map without host_map",
            X::GrantTableOp,
            [grant_op(GnttabOp::MapGrantRef), map_device, 1],
            status(map_device, 18, GrantStatus::GeneralError),
        ),
        ("map 65 entries", X::GrantTableOp, [grant_op(GnttabOp::MapGrantRef), map_dom0, 65], Fails(Errno::Einval)),
        (
            "map 2^32 + 1 entries",
            X::GrantTableOp,
            [grant_op(GnttabOp::MapGrantRef), map_dom0, (1 << 32) + 1],
            Fails(Errno::Einval),
        ),
        (
            "map array in memory not mine",
            X::GrantTableOp,
            [grant_op(GnttabOp::MapGrantRef), NOT_MINE, 1],
            Fails(Errno::Efault),
        ),
        (
            "unmap with a wrong handle",
            X::GrantTableOp,
            [grant_op(GnttabOp::UnmapGrantRef), unmap_wrong_handle, 1],
            status(unmap_wrong_handle, 20, GrantStatus::BadHandle),
        ),
        (
            "unmap of nothing",
            X::GrantTableOp,
            [grant_op(GnttabOp::UnmapGrantRef), unmap_nothing, 1],
            status(unmap_nothing, 20, GrantStatus::BadVirtAddr),
        ),
        (
            "copy from dom0's grant 1",
            X::GrantTableOp,
            [grant_op(GnttabOp::Copy), copy_dom0, 1],
            status(copy_dom0, 36, GrantStatus::PermissionDenied),
        ),
        (
            "copy across a page",
            X::GrantTableOp,
            [grant_op(GnttabOp::Copy), copy_crossing, 1],
            status(copy_crossing, 36, GrantStatus::BadCopyArg),
        ),
        (
            "copy between two grants",
            X::GrantTableOp,
            [grant_op(GnttabOp::Copy), copy_grants, 1],
            status(copy_grants, 36, GrantStatus::GeneralError),
        ),
        (
            "copy into dom0's frame",
            X::GrantTableOp,
            [grant_op(GnttabOp::Copy), copy_to_dom0_frame, 1],
            status(copy_to_dom0_frame, 36, GrantStatus::BadDomain),
        ),
        (
            "grant table version 2",
            X::GrantTableOp,
            [grant_op(GnttabOp::SetVersion), version_2, 1],
            Fails(Errno::Enosys),
        ),
        // Scheduling and vCPUs: hostile reasons, port lists and vCPU ids.
        ("shutdown for a suspend", X::SchedOp, [op(SchedOp::Shutdown.number()), suspend, 0], Fails(Errno::Einval)),
        ("shutdown with reason 99", X::SchedOp, [op(SchedOp::Shutdown.number()), reason_99, 0], Fails(Errno::Einval)),
        (
            "shutdown from memory not mine",
            X::SchedOp,
            [op(SchedOp::Shutdown.number()), NOT_MINE, 0],
            Fails(Errno::Efault),
        ),
        ("poll of 129 ports", X::SchedOp, [op(SchedOp::Poll.number()), poll_129, 0], Fails(Errno::Einval)),
        ("poll of port 256", X::SchedOp, [op(SchedOp::Poll.number()), poll_256, 0], Fails(Errno::Einval)),
        ("poll of ports not mine", X::SchedOp, [op(SchedOp::Poll.number()), poll_unreadable, 0], Fails(Errno::Efault)),
        ("initialise vcpu 0 (running)", X::VcpuOp, [op(VcpuOp::Initialise.number()), 0, context], Fails(Errno::Eexist)),
        ("up of vcpu 1 of 1", X::VcpuOp, [op(VcpuOp::Up.number()), 1, 0], Fails(Errno::Enoent)),
        (
            "vcpu_info across its page",
            X::VcpuOp,
            [op(VcpuOp::RegisterVcpuInfo.number()), 0, info_crossing],
            Fails(Errno::Enxio),
        ),
        (
            "timer from memory not mine",
            X::VcpuOp,
            [op(VcpuOp::SetSingleshotTimer.number()), 0, NOT_MINE],
            Fails(Errno::Efault),
        ),
        // Calls hv does not offer.
        ("multicall", X::Multicall, [0, buffer, 1], Fails(Errno::Enosys)),
        ("PV iret", X::Iret, [0, 0, 0], Fails(Errno::Enosys)),
        ("domctl", X::Domctl, [0, buffer, 0], Fails(Errno::Enosys)),
    ]
}

/// The Mica checks (numbers from 0x1000): what Mica's own calls still
/// answer a guest.
fn mica_checks(me: u64, own: u64) -> [MicaCheck; 16] {
    [
        ("create a domain", H::DomCtl, [D::Create as u64, 16, 0, 0, 0], Err(Error::Permission)),
        ("destroy dom0", H::DomCtl, [D::Destroy as u64, 0, 0, 0, 0], Err(Error::Permission)),
        ("pause myself through domctl", H::DomCtl, [D::Pause as u64, me, 0, 0, 0], Err(Error::Permission)),
        ("read the hv log", H::DmesgRead, [own, 4096, 0, 0, 0], Err(Error::Permission)),
        ("power the machine off", H::Platform, [PlatformOp::PowerOff as u64, 0, 0, 0, 0], Err(Error::Permission)),
        ("dom0's domain info", H::DomainInfo, [0, own, 4096, 0, 0], Err(Error::Permission)),
        ("my own domain info", H::DomainInfo, [me, own, 704, 0, 0], Ok(704)),
        ("console write from memory not mine", H::ConsoleWrite, [NOT_MINE, 16, 0, 0, 0], Err(Error::BadAddress)),
        ("hv info into memory not mine", H::HvInfo, [NOT_MINE, 4096, 0, 0, 0], Err(Error::BadAddress)),
        // dom0's port 1 is the console of the first guest dom0 built: taken.
        ("bind to dom0's connected port 1", H::Event, [E::BindInterdomain as u64, 0, 1, 0, 0], Err(Error::Busy)),
        ("send on a port I do not have", H::Event, [E::Send as u64, 200, 0, 0, 0], Err(Error::NotFound)),
        ("event page not mine", H::Event, [E::RegisterPage as u64, NOT_MINE, 0xf3, 0, 0], Err(Error::BadAddress)),
        ("event page unaligned", H::Event, [E::RegisterPage as u64, own + 8, 0xf3, 0, 0], Err(Error::InvalidArgument)),
        ("shutdown with a bad reason", H::Sched, [2, 99, 0, 0, 0], Err(Error::InvalidArgument)),
        ("unknown vcpu operation", H::Vcpu, [7, 0, 0, 0, 0], Err(Error::InvalidArgument)),
        ("the null hypercall still works", H::Null, [0; 5], Ok(0)),
    ]
}

/// Makes a Xen check; whether it got its answer, and what it got.
fn run_xen(call: X, [a1, a2, a3]: [u64; 3], answer: Answer) -> (bool, i64, Option<i16>) {
    // SAFETY: the pointers passed name SCRATCH or `buffer` (ours), or
    // memory hv must refuse; none of these calls may take a page of ours
    // over (each is one hv refuses, or a console write).
    let raw = unsafe { hypercall::raw(call.number(), [a1, a2, a3, 0, 0]) };
    match answer {
        Answer::Returns(value) => (raw >= 0 && raw as u64 == value, raw, None),
        Answer::Fails(errno) => (Errno::decode(raw) == Err(errno), raw, None),
        Answer::Status(at, status) => {
            // SAFETY: `at` is the status field of an entry in SCRATCH.
            let got = unsafe { core::ptr::read_volatile(at as *const i16) };
            (raw == 0 && got == status.number(), raw, Some(got))
        }
    }
}

#[unsafe(no_mangle)]
extern "C" fn _start(start_info: u64) -> ! {
    let mut guest = Guest::init(start_info);
    let mut buffer = [0u8; 4096];
    let own = buffer.as_mut_ptr() as u64;
    let me = guest.domain_id();
    let ram_end = guest.start_info.regions().iter().map(|region| region.base + region.size).max().unwrap_or(0);
    let (mut passed, mut total) = (0, 0);
    let verdict = |ok: bool| if ok { "as documented" } else { "WRONG" };
    for (name, call, arguments, answer) in xen_checks(me as u16, own, ram_end) {
        let (ok, raw, status) = run_xen(call, arguments, answer);
        (passed, total) = (passed + ok as usize, total + 1);
        match status {
            Some(status) => {
                let _ = writeln!(guest, "hostile: xen: {name}: {} (rax {raw}, status {status})", verdict(ok));
            }
            None => {
                let _ = writeln!(guest, "hostile: xen: {name}: {} (rax {raw})", verdict(ok));
            }
        }
        if !ok {
            let _ = writeln!(guest, "hostile: xen: {name}: documented {answer:?}");
        }
    }
    for (name, call, arguments, expected) in mica_checks(u64::from(me), own) {
        // SAFETY: the only pointers passed are `buffer` (ours, 4 KiB) and
        // memory we do not own, which hv must refuse.
        let raw = unsafe { hypercall::raw(call as u64, arguments) };
        let ok = Error::decode(raw) == expected;
        (passed, total) = (passed + ok as usize, total + 1);
        let _ = writeln!(guest, "hostile: mica: {name}: {} (rax {raw})", verdict(ok));
    }
    // Register isolation: keep a marker in XMM0 across yields (Xen's
    // sched_op) for a second of guest time while other domains run
    // (another `hostile` does the same with its own marker); hv must
    // switch SSE state, not leak it.
    let marker = 0x4d49_4341_0000_0000u64 | u64::from(me);
    let mut kept = true;
    // SAFETY: turns on CR4.OSFXSR (bit 9) so SSE instructions work; this
    // guest owns its CR4 (hv only reserves VMXE).
    unsafe { core::arch::asm!("mov {t}, cr4", "or {t}, 0x200", "mov cr4, {t}", t = out(reg) _, options(nostack)) };
    let until = guest::now() + guest.ticks_per_second();
    let mut yields = 0u64;
    while guest::now() < until {
        yields += 1;
        let seen: u64;
        // SAFETY: moves a value into XMM0, yields through a hypercall (which
        // preserves every register but RAX) and reads XMM0 back.
        unsafe {
            core::arch::asm!(
                "movq xmm0, {marker}",
                "vmcall",
                "movq {seen}, xmm0",
                marker = in(reg) marker,
                seen = out(reg) seen,
                inout("rax") X::SchedOp.number() => _,
                in("rdi") u64::from(SchedOp::Yield.number()),
                out("xmm0") _,
                options(nostack),
            );
        }
        kept &= seen == marker;
    }
    (passed, total) = (passed + kept as usize, total + 1);
    let _ = writeln!(guest, "hostile: XMM0 kept across {yields} yields: {}", verdict(kept));
    // SAFETY: number 9999 is no hypercall; hv must say so, as Xen does
    // (it is outside Mica's range): -ENOSYS.
    let unknown = unsafe { hypercall::raw(9999, [0; 5]) };
    let ok = unknown == Errno::Enosys.code();
    (passed, total) = (passed + ok as usize, total + 1);
    let _ = writeln!(guest, "hostile: unknown hypercall 9999: {} (rax {unknown})", verdict(ok));
    let _ = writeln!(guest, "hostile: {passed} of {total} checks passed; still running");
    core::hint::black_box(&mut buffer);
    loop {
        guest.wait_for_event();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    guest::crash(format_args!("hostile: panic: {info}\n"))
}
