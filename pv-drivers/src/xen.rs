//! Wrappers for Xen's guest hypercalls (`abi::xen`) as far as hv offers
//! them (issue 10: `xen_version`, `console_io`, `sched_op`, the shared-info
//! page, `event_channel_op`, starting and stopping vCPUs). Results are
//! Xen's: a value, or an [`Errno`].
//!
//! Pointer arguments are guest-virtual addresses (hv walks the calling
//! vCPU's page tables); a reference passed here is such an address.

use abi::xen::console_io::ConsoleIoOp;
use abi::xen::sched::{SchedOp, SchedShutdown, ShutdownReason};
use abi::xen::version::{XenExtraversion, XenFeatureInfo, XenVersionOp};
use abi::xen::{Errno, Hypercall};

use crate::hypercall::raw3;

/// Calls `event_channel_op` `operation` on `request` (which the call may
/// update: the ports bindings return).
pub fn event_channel<T: zerocopy::IntoBytes + zerocopy::FromBytes>(
    operation: abi::xen::event_channel::EvtchnOp,
    request: &mut T,
) -> Result<(), Errno> {
    let address = request as *mut T as u64;
    // SAFETY: hv reads and writes `request`, which is ours for the call.
    unsafe { call(Hypercall::EventChannelOp, [u64::from(operation.number()), address, 0]) }.map(|_| ())
}

/// Places this domain's shared-info page at `page` (`memory_op`
/// add_to_physmap); from then on its events arrive there, in Xen's
/// 2-level layout.
///
/// # Safety
/// `page` must be a page of this domain's RAM that nothing else uses, at
/// its guest-physical address (Mica's identity map): hv takes it over.
pub unsafe fn place_shared_info(page: &mut Page) -> Result<(), Errno> {
    use abi::xen::memory::{MemoryOp, XENMAPSPACE_SHARED_INFO, XenAddToPhysmap};
    let gpfn = page as *mut Page as u64 / 4096;
    let request =
        XenAddToPhysmap { domid: abi::xen::DOMID_SELF, space: XENMAPSPACE_SHARED_INFO, gpfn, ..Default::default() };
    let address = &raw const request as u64;
    // SAFETY: hv reads `request`; the caller gave up `page`.
    unsafe { call(Hypercall::MemoryOp, [u64::from(MemoryOp::AddToPhysmap.number()), address, 0]) }.map(|_| ())
}

/// Places this domain's shared-info page at guest-physical (and, under
/// Mica's identity map, virtual) `address`, as [`place_shared_info`].
///
/// # Safety
/// As for [`place_shared_info`], for the page at `address`.
pub unsafe fn place_shared_info_at(address: u64) -> Result<(), Errno> {
    // SAFETY: passed on: the caller gave up the page at `address`.
    unsafe { place_shared_info(&mut *(address as *mut Page)) }
}

/// Makes the event upcall vector `vector` (Xen's callback via a vector,
/// `HVM_PARAM_CALLBACK_IRQ`); 0 turns upcalls off.
pub fn set_callback_vector(vector: u8) -> Result<(), Errno> {
    use abi::xen::hvm::{CallbackVia, HVM_PARAM_CALLBACK_IRQ};
    let via = if vector == 0 { CallbackVia::None } else { CallbackVia::Vector(vector) };
    set_hvm_param(abi::xen::DOMID_SELF, HVM_PARAM_CALLBACK_IRQ, via.encode())
}

/// Makes Xen hypercall `number` with `arguments` in RDI, RSI and RDX
/// (no call this module makes takes more; R10 and R8 are left as they
/// are, as Xen's own `_hypercall3` leaves them).
///
/// # Safety
/// Pointer arguments must name memory the caller owns for the call's
/// duration, as the call's documentation requires.
#[inline(always)]
unsafe fn call(number: Hypercall, [a1, a2, a3]: [u64; 3]) -> Result<u64, Errno> {
    // SAFETY: passed on from the caller.
    Errno::decode(unsafe { raw3(number.number(), a1, a2, a3) })
}

/// The Xen interface version hv reports (`major << 16 | minor`).
pub fn version() -> Result<u32, Errno> {
    // SAFETY: no pointer argument.
    unsafe { call(Hypercall::XenVersion, [u64::from(XenVersionOp::Version.number()), 0, 0]) }.map(|v| v as u32)
}

/// The version suffix (Mica's names it: `.0-mica`).
pub fn extraversion() -> Result<XenExtraversion, Errno> {
    let mut text = XenExtraversion::default();
    let address = &raw mut text as u64;
    // SAFETY: `text` is ours and as large as the call writes.
    unsafe { call(Hypercall::XenVersion, [u64::from(XenVersionOp::Extraversion.number()), address, 0]) }?;
    Ok(text)
}

/// Word `index` of the feature bitmap (`XENFEAT_*` bits).
pub fn features(index: u32) -> Result<u32, Errno> {
    let mut info = XenFeatureInfo { submap_idx: index, submap: 0 };
    let address = &raw mut info as u64;
    // SAFETY: `info` is ours; the call reads and writes it.
    unsafe { call(Hypercall::XenVersion, [u64::from(XenVersionOp::GetFeatures.number()), address, 0]) }?;
    Ok(info.submap)
}

/// Writes `text` to hv's console (`console_io`).
pub fn console_write(text: &[u8]) -> Result<(), Errno> {
    let (count, address) = (text.len() as u64, text.as_ptr() as u64);
    // SAFETY: hv reads `text`, which outlives the call.
    unsafe { call(Hypercall::ConsoleIo, [u64::from(ConsoleIoOp::Write.number()), count, address]) }.map(|_| ())
}

/// Xen's CPUID leaf `base + offset` (EAX, EBX, ECX, EDX), `base` being
/// where the Xen signature was found ([`cpuid_base`]).
pub fn cpuid(leaf: u32) -> [u32; 4] {
    let result = core::arch::x86_64::__cpuid(leaf);
    [result.eax, result.ebx, result.ecx, result.edx]
}

/// Where Xen's CPUID leaves start, if the hypervisor shows them: looked
/// for once (a CPUID exit per leaf tried), then remembered, so that
/// [`vcpu_id`] in an upcall costs one exit.
pub fn cpuid_base() -> Option<u32> {
    use core::sync::atomic::{AtomicU32, Ordering};
    // 0: not looked for yet; u32::MAX: none (a base is 0x4000_0000 or above).
    static BASE: AtomicU32 = AtomicU32::new(0);
    match BASE.load(Ordering::Relaxed) {
        0 => {
            let found = abi::xen::cpuid::find_xen_base(cpuid);
            BASE.store(found.unwrap_or(u32::MAX), Ordering::Relaxed);
            found
        }
        u32::MAX => None,
        base => Some(base),
    }
}

/// This vCPU's id, as Xen tells an HVM or PVH guest: EBX of CPUID leaf
/// `base + 4` when EAX says it is there (`XEN_HVM_CPUID_VCPU_ID_PRESENT`).
pub fn vcpu_id() -> Option<u32> {
    use abi::xen::cpuid::{LEAF_HVM, XEN_HVM_CPUID_VCPU_ID_PRESENT};
    let [flags, id, ..] = cpuid(cpuid_base()? + LEAF_HVM);
    (flags & XEN_HVM_CPUID_VCPU_ID_PRESENT != 0).then_some(id)
}

/// A page-aligned page, for the hypercall page.
#[repr(C, align(4096))]
pub struct Page(pub [u8; 4096]);

/// Asks hv to fill `page` with the hypercall stubs (a write of its address
/// to the MSR CPUID leaf `base + 2` names); `false` if no hypervisor
/// offers a page.
///
/// # Safety
/// `page` must be a page of this domain's RAM that nothing else uses, at
/// its guest-physical address (Mica's identity map): hv writes all of it.
pub unsafe fn fill_hypercall_page(page: &mut Page) -> bool {
    let Some(base) = cpuid_base() else { return false };
    let [pages, msr, ..] = cpuid(base + abi::xen::cpuid::LEAF_HYPERCALL);
    if pages == 0 {
        return false;
    }
    let address = page as *mut Page as u64;
    // SAFETY: the MSR is the hypervisor's, which CPUID named: hv fills
    // the page, which the caller gave up.
    unsafe {
        core::arch::asm!("wrmsr", in("ecx") msr, in("eax") address as u32, in("edx") (address >> 32) as u32,
            options(nostack));
    }
    true
}

/// Calls Xen hypercall `number` through a filled hypercall `page`.
///
/// # Safety
/// `page` was filled by [`fill_hypercall_page`]; pointer arguments as for
/// the call itself.
pub unsafe fn call_through_page(page: &Page, number: Hypercall, [a1, a2, a3]: [u64; 3]) -> Result<u64, Errno> {
    let entry = page.0.as_ptr() as u64 + 32 * number.number();
    let result: i64;
    // SAFETY: the stub is `mov eax, n; vmcall; ret`: it clobbers RAX alone
    // (hv preserves every other register) and returns here.
    unsafe {
        core::arch::asm!("call {entry}", entry = in(reg) entry, in("rdi") a1, in("rsi") a2, in("rdx") a3,
            lateout("rax") result);
    }
    Errno::decode(result)
}

/// Arms vCPU `vcpu`'s single-shot timer (the caller's own) for system
/// time `at_ns` (its VIRQ_TIMER port fires then), with
/// `VCPUOP_set_singleshot_timer` (Linux's call; see [`set_timer_op`]).
pub fn set_timer(vcpu: u32, at_ns: u64) -> Result<(), Errno> {
    use abi::xen::vcpu::{VcpuOp, VcpuSetSingleshotTimer};
    let request = VcpuSetSingleshotTimer { timeout_abs_ns: at_ns, ..Default::default() };
    let address = &raw const request as u64;
    let operation = u64::from(VcpuOp::SetSingleshotTimer.number());
    // SAFETY: hv reads `request`, which outlives the call.
    unsafe { call(Hypercall::VcpuOp, [operation, u64::from(vcpu), address]) }.map(|_| ())
}

/// Arms the calling vCPU's single-shot timer for system time `at_ns`, or
/// stops it (0), with `set_timer_op`: the time in a register, so hv reads
/// no guest memory (the runtime's timer, set before every wait).
pub fn set_timer_op(at_ns: u64) -> Result<(), Errno> {
    // SAFETY: no pointer argument.
    unsafe { call(Hypercall::SetTimerOp, [at_ns, 0, 0]) }.map(|_| ())
}

/// Blocks the calling vCPU until an event is pending for it.
pub fn block() {
    // SAFETY: no pointer argument.
    let _ = unsafe { call(Hypercall::SchedOp, [u64::from(SchedOp::Block.number()), 0, 0]) };
}

/// Shuts this domain down for `reason`. Once hv took it the vCPU does not
/// run again, so this returns only hv's refusal.
pub fn shutdown(reason: ShutdownReason) -> Result<(), Errno> {
    let request = SchedShutdown { reason: reason.number() };
    let address = &raw const request as u64;
    // SAFETY: hv reads `request`, which outlives the call.
    unsafe { call(Hypercall::SchedOp, [u64::from(SchedOp::Shutdown.number()), address, 0]) }.map(|_| ())
}

/// HVM parameter `index` (`abi::xen::hvm`) of domain `domid`
/// (`DOMID_SELF` for the caller): its store and console frame and port.
pub fn hvm_param(domid: u16, index: u32) -> Result<u64, Errno> {
    use abi::xen::hvm::{HvmOp, XenHvmParam};
    let mut request = XenHvmParam { domid, index, ..Default::default() };
    let address = &raw mut request as u64;
    // SAFETY: hv reads and writes `request`, which outlives the call.
    unsafe { call(Hypercall::HvmOp, [u64::from(HvmOp::GetParam.number()), address, 0]) }?;
    Ok(request.value)
}

/// Sets HVM parameter `index` of domain `domid` to `value`: a guest its
/// own callback vector; dom0 (the toolstack) a domain's store and console.
pub fn set_hvm_param(domid: u16, index: u32, value: u64) -> Result<(), Errno> {
    use abi::xen::hvm::{HvmOp, XenHvmParam};
    let request = XenHvmParam { domid, index, value, ..Default::default() };
    let address = &raw const request as u64;
    // SAFETY: hv reads `request`, which outlives the call.
    unsafe { call(Hypercall::HvmOp, [u64::from(HvmOp::SetParam.number()), address, 0]) }.map(|_| ())
}

/// Event channel operations in Xen's form, for the runtime and front ends
/// (`event_channel_op`; ports are this domain's own).
pub mod evtchn {
    use abi::xen::Errno;
    use abi::xen::event_channel::{
        EvtchnAllocUnbound, EvtchnBindInterdomain, EvtchnBindIpi, EvtchnBindVcpu, EvtchnBindVirq, EvtchnClose,
        EvtchnOp, EvtchnSend, EvtchnStatus, EvtchnUnmask, Virq,
    };

    use super::event_channel;

    /// Notifies the other end of `port`.
    #[inline]
    pub fn notify(port: u32) -> Result<(), Errno> {
        event_channel(EvtchnOp::Send, &mut EvtchnSend { port })
    }

    /// A new port of this domain that domain `remote` may bind.
    pub fn alloc_unbound(remote: u16) -> Result<u32, Errno> {
        let mut request = EvtchnAllocUnbound { dom: abi::xen::DOMID_SELF, remote_dom: remote, port: 0 };
        event_channel(EvtchnOp::AllocUnbound, &mut request).map(|()| request.port)
    }

    /// Binds port `remote_port` of domain `remote`; returns the local port.
    pub fn bind_interdomain(remote: u16, remote_port: u32) -> Result<u32, Errno> {
        let mut request = EvtchnBindInterdomain { remote_dom: remote, remote_port, ..Default::default() };
        event_channel(EvtchnOp::BindInterdomain, &mut request).map(|()| request.local_port)
    }

    /// Binds virtual IRQ `virq` for vCPU `vcpu`; returns the port.
    pub fn bind_virq(virq: Virq, vcpu: u32) -> Result<u32, Errno> {
        let mut request = EvtchnBindVirq { virq: virq.number(), vcpu, port: 0 };
        event_channel(EvtchnOp::BindVirq, &mut request).map(|()| request.port)
    }

    /// A port whose sends notify vCPU `vcpu` of this domain (an IPI).
    pub fn bind_ipi(vcpu: u32) -> Result<u32, Errno> {
        let mut request = EvtchnBindIpi { vcpu, port: 0 };
        event_channel(EvtchnOp::BindIpi, &mut request).map(|()| request.port)
    }

    /// Makes `port` notify vCPU `vcpu`.
    pub fn bind_vcpu(port: u32, vcpu: u32) -> Result<(), Errno> {
        event_channel(EvtchnOp::BindVcpu, &mut EvtchnBindVcpu { port, vcpu })
    }

    /// Closes `port`.
    pub fn close(port: u32) -> Result<(), Errno> {
        event_channel(EvtchnOp::Close, &mut EvtchnClose { port })
    }

    /// Unmasks `port` (a pending one is delivered).
    pub fn unmask(port: u32) -> Result<(), Errno> {
        event_channel(EvtchnOp::Unmask, &mut EvtchnUnmask { port })
    }

    /// `port`'s state.
    pub fn status(port: u32) -> Result<EvtchnStatus, Errno> {
        let mut request = EvtchnStatus { dom: abi::xen::DOMID_SELF, port, ..Default::default() };
        event_channel(EvtchnOp::Status, &mut request).map(|()| request)
    }
}

/// System time (ns, hv's pvclock: nanoseconds since TSC 0) at TSC value
/// `tsc`, with the TSC ticking `tsc_khz` times a millisecond: how a guest
/// that counts in TSC ticks asks for Xen's single-shot timer. Rounded up,
/// as hv rounds its TSC deadline up: the timer fires at `tsc` or later.
pub fn tsc_to_ns(tsc: u64, tsc_khz: u64) -> u64 {
    u64::try_from((u128::from(tsc) * 1_000_000).div_ceil(u128::from(tsc_khz.max(1)))).unwrap_or(u64::MAX)
}

/// Stops the calling vCPU's single-shot timer.
pub fn stop_timer(vcpu: u32) -> Result<(), Errno> {
    use abi::xen::vcpu::VcpuOp;
    // SAFETY: no pointer argument.
    unsafe { call(Hypercall::VcpuOp, [u64::from(VcpuOp::StopSingleshotTimer.number()), u64::from(vcpu), 0]) }
        .map(|_| ())
}

/// Gives the CPU up (`sched_op` yield).
pub fn yield_now() {
    // SAFETY: no pointer argument.
    let _ = unsafe { call(Hypercall::SchedOp, [u64::from(SchedOp::Yield.number()), 0, 0]) };
}

/// Makes the page at guest-physical (= virtual) `address` this domain's
/// grant table, frame 0 (`memory_op` add_to_physmap of
/// `XENMAPSPACE_grant_table`): its 512 entries are Xen's v1 entries.
///
/// # Safety
/// The page must be this domain's RAM, dedicated to the table for good.
pub unsafe fn place_grant_table_at(address: u64) -> Result<(), Errno> {
    use abi::xen::memory::{MemoryOp, XENMAPSPACE_GRANT_TABLE, XenAddToPhysmap};
    let request = XenAddToPhysmap {
        domid: abi::xen::DOMID_SELF,
        space: XENMAPSPACE_GRANT_TABLE,
        idx: 0,
        gpfn: address / 4096,
        ..Default::default()
    };
    let pointer = &raw const request as u64;
    // SAFETY: hv reads `request`; the caller gave up the page.
    unsafe { call(Hypercall::MemoryOp, [u64::from(MemoryOp::AddToPhysmap.number()), pointer, 0]) }.map(|_| ())
}

/// Sets domain `domid`'s memory map (`memory_op` set_memory_map; dom0,
/// the toolstack), which the domain reads with `memory_map`.
pub fn set_memory_map(domid: u16, entries: &[abi::xen::memory::E820Entry]) -> Result<(), Errno> {
    use abi::xen::memory::{E820_ENTRY_SIZE, MEMORY_MAP_MAX_ENTRIES, MemoryOp, XenForeignMemoryMap, XenMemoryMap};
    let mut buffer = [0u8; E820_ENTRY_SIZE * MEMORY_MAP_MAX_ENTRIES];
    let count = entries.len().min(MEMORY_MAP_MAX_ENTRIES);
    for (slot, entry) in buffer.chunks_exact_mut(E820_ENTRY_SIZE).zip(&entries[..count]) {
        slot.copy_from_slice(&entry.to_bytes());
    }
    let map = XenMemoryMap { nr_entries: count as u32, buffer: buffer.as_ptr() as u64, ..Default::default() };
    let request = XenForeignMemoryMap { domid, map, ..Default::default() };
    let address = &raw const request as u64;
    // SAFETY: hv reads `request` and the entries in `buffer`, both ours for the call.
    unsafe { call(Hypercall::MemoryOp, [u64::from(MemoryOp::SetMemoryMap.number()), address, 0]) }.map(|_| ())
}

/// The 64-bit state hv starts a vCPU in, for [`vcpu_initialise`]
/// (`VCPU_HVM_MODE_64B`; see `abi::xen`'s conformance table): at `rip`
/// with the stack pointer `rsp` and the page tables at `cr3`, CR0 = PE,
/// MP, ET, NE, WP, PG; CR4 = PAE; EFER = LME, LMA, NXE; interrupts off;
/// flat segments and no GDT (the GDT register is 0); every general
/// register 0 (set them in `x86_64`).
pub fn long_mode_context(rip: u64, rsp: u64, cr3: u64) -> abi::xen::vcpu::VcpuHvmContext64 {
    use abi::xen::vcpu::{VCPU_HVM_MODE_64B, VcpuHvmContext64, VcpuHvmX86_64};
    let x86_64 = VcpuHvmX86_64 {
        rip,
        rsp,
        cr3,
        rflags: 1 << 1,
        cr0: 0x8005_0033,
        cr4: 1 << 5,
        efer: 1 << 8 | 1 << 10 | 1 << 11,
        ..Default::default()
    };
    VcpuHvmContext64 { mode: VCPU_HVM_MODE_64B, x86_64, ..Default::default() }
}

/// Gives vCPU `vcpu` of this domain the state it starts in when it is
/// brought up ([`vcpu_up`]): `context` is a `VcpuHvmContext64` (such as
/// [`long_mode_context`]) or a `VcpuHvmContext32`, which hv reads during
/// the call (`vcpu_op` initialise). Once per vCPU, as in Xen: `-EEXIST`
/// for a vCPU initialised already (or started, or up; hv forgets the
/// state only when Mica's own `VcpuOp::Down` takes it down). `-EINVAL`
/// for a state hv does not start vCPUs in, `-ENOENT` for no such vCPU.
///
/// # Safety
/// Whenever the vCPU is brought up, it runs `context`: its RIP, RSP and
/// CR3 must name code that may run concurrently with the rest of this
/// domain, a stack nothing else uses then, and page tables that stay
/// valid while it runs.
pub unsafe fn vcpu_initialise<C: zerocopy::IntoBytes + zerocopy::Immutable>(
    vcpu: u32,
    context: &C,
) -> Result<(), Errno> {
    use abi::xen::vcpu::{VCPU_HVM_CONTEXT_SIZE, VcpuOp};
    const { assert!(size_of::<C>() == VCPU_HVM_CONTEXT_SIZE, "a vcpu_hvm_context is 128 bytes") };
    let address = context.as_bytes().as_ptr() as u64;
    // SAFETY: hv reads `context`, which outlives the call; the caller
    // vouches for what the vCPU runs.
    unsafe { call(Hypercall::VcpuOp, [u64::from(VcpuOp::Initialise.number()), u64::from(vcpu), address]) }.map(|_| ())
}

/// Brings vCPU `vcpu` of this domain up (`vcpu_op` up): it runs beside
/// the caller from the state [`vcpu_initialise`] gave it. Also after a
/// [`vcpu_down`]: hv starts it again from that state (Xen would resume
/// it where it stopped). Does nothing to a vCPU that is up. `-EINVAL` for
/// one never initialised, `-ENOENT` for no such vCPU, `-ENOMEM`.
///
/// # Safety
/// What [`vcpu_initialise`] asks of the state must hold now: the stack in
/// it is this vCPU's alone from now on.
pub unsafe fn vcpu_up(vcpu: u32) -> Result<(), Errno> {
    use abi::xen::vcpu::VcpuOp;
    // SAFETY: no pointer argument; the caller vouches for what it runs.
    unsafe { call(Hypercall::VcpuOp, [u64::from(VcpuOp::Up.number()), u64::from(vcpu), 0]) }.map(|_| ())
}

/// Takes vCPU `vcpu` of this domain down (`vcpu_op` down): it stops at
/// once, wherever it is (taking the calling vCPU down does not return);
/// it stays initialised, for [`vcpu_up`]. A vCPU that is down stays so
/// (`Ok`). As in Xen, taking the domain's last vCPU up down powers the
/// domain off (dom0: `-EPERM`). `-ENOENT` for no such vCPU.
pub fn vcpu_down(vcpu: u32) -> Result<(), Errno> {
    use abi::xen::vcpu::VcpuOp;
    // SAFETY: no pointer argument; a vCPU taken down runs again only
    // through `vcpu_up`, whose caller vouches for it.
    unsafe { call(Hypercall::VcpuOp, [u64::from(VcpuOp::Down.number()), u64::from(vcpu), 0]) }.map(|_| ())
}

/// Whether vCPU `vcpu` of this domain is up (`vcpu_op` is_up).
pub fn vcpu_is_up(vcpu: u32) -> Result<bool, Errno> {
    use abi::xen::vcpu::VcpuOp;
    // SAFETY: no pointer argument.
    unsafe { call(Hypercall::VcpuOp, [u64::from(VcpuOp::IsUp.number()), u64::from(vcpu), 0]) }.map(|up| up == 1)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_long_mode_context_is_hvs_64_bit_entry_state() {
        let context = super::long_mode_context(0x10_0000, 0x20_0000, 0x3000);
        assert_eq!(context.mode, abi::xen::vcpu::VCPU_HVM_MODE_64B);
        let registers = context.x86_64;
        assert_eq!((registers.rip, registers.rsp, registers.cr3), (0x10_0000, 0x20_0000, 0x3000));
        assert_eq!((registers.cr0, registers.cr4, registers.efer, registers.rflags), (0x8005_0033, 0x20, 0xd00, 2));
        assert_eq!((registers.rax, registers.rdi), (0, 0));
    }

    #[test]
    fn tsc_to_ns_rounds_up_so_the_timer_fires_on_the_tick_or_after() {
        assert_eq!(super::tsc_to_ns(50_000, 50_000), 1_000_000, "1 ms at 50 MHz");
        assert_eq!(super::tsc_to_ns(3, 3_000_000), 1, "3 ticks at 3 GHz");
        assert_eq!(super::tsc_to_ns(2, 3_000_000), 1, "rounded up");
        // hv turns the time back into ticks rounding up: never before.
        for (tsc, khz) in [(3u64, 2_000_000u64), (1_234_567, 50_001), (7, 3)] {
            let back = (u128::from(super::tsc_to_ns(tsc, khz)) * u128::from(khz)).div_ceil(1_000_000);
            assert!(back >= u128::from(tsc), "{tsc} at {khz} kHz came back as {back}");
        }
        assert_eq!(super::tsc_to_ns(u64::MAX, 1), u64::MAX, "saturates");
        assert_eq!(super::tsc_to_ns(7, 0), 7_000_000, "a zero rate taken as 1 kHz");
    }
}
