//! Hypercall wrappers (convention in the `abi` crate documentation).

use abi::domctl::{DomCtlOp, VcpuContext, VcpuInfo};
use abi::event::EventOp;
use abi::grant::GrantOp;
use abi::hypercall::{Hypercall, PlatformOp, SchedOp, ShutdownReason, VcpuOp};
use abi::info::{DomainInfo, HvInfo};
use abi::physdev::PhysdevOp;
use abi::{DomainId, Error};

/// Issues hypercall `number` with up to five arguments and returns RAX.
/// The number is a plain word so that tests can also make calls the ABI
/// does not define.
///
/// # Safety
/// Pointer arguments must name memory the caller owns for the call's
/// duration, as the hypercall's documentation requires.
#[inline(always)]
pub unsafe fn raw(number: u64, arguments: [u64; 5]) -> i64 {
    let result: i64;
    // SAFETY: VMCALL traps to the hypervisor, which preserves every register
    // except RAX; the caller vouches for the memory the arguments name.
    unsafe {
        core::arch::asm!(
            "vmcall",
            inlateout("rax") number => result,
            in("rdi") arguments[0],
            in("rsi") arguments[1],
            in("rdx") arguments[2],
            in("r10") arguments[3],
            in("r8") arguments[4],
            options(nostack),
        );
    }
    result
}

/// [`raw`] for a call that takes three arguments (RDI, RSI, RDX): the
/// other argument registers are left as they are (hv reads only what an
/// operation takes), which saves the hot calls clearing them.
///
/// # Safety
/// As [`raw`].
#[inline(always)]
pub unsafe fn raw3(number: u64, a0: u64, a1: u64, a2: u64) -> i64 {
    let result: i64;
    // SAFETY: as in `raw`.
    unsafe {
        core::arch::asm!(
            "vmcall",
            inlateout("rax") number => result,
            in("rdi") a0,
            in("rsi") a1,
            in("rdx") a2,
            options(nostack),
        );
    }
    result
}

/// The guest-physical address of a buffer in identity-mapped domain memory.
fn address_of<T: ?Sized>(value: &T) -> u64 {
    value as *const T as *const u8 as u64
}

/// The hypervisor's ABI version (`major << 16 | minor`).
pub fn version() -> u32 {
    // SAFETY: no pointer arguments.
    unsafe { raw(Hypercall::Version as u64, [0; 5]) as u32 }
}

/// The cheapest round trip to the hypervisor.
#[inline(always)]
pub fn null() -> i64 {
    // SAFETY: no pointer arguments.
    unsafe { raw(Hypercall::Null as u64, [0; 5]) }
}

/// Writes text to the hypervisor log (at most 4096 bytes per call; longer
/// text is sent in pieces).
pub fn console_write(text: &[u8]) -> Result<(), Error> {
    for piece in text.chunks(abi::hypercall::CONSOLE_WRITE_MAX as usize) {
        // SAFETY: `piece` is readable memory of the given length.
        Error::decode(unsafe {
            raw(Hypercall::ConsoleWrite as u64, [address_of(piece), piece.len() as u64, 0, 0, 0])
        })?;
    }
    Ok(())
}

/// Copies the most recent hypervisor log into `buffer`; returns the length.
pub fn dmesg(buffer: &mut [u8]) -> Result<usize, Error> {
    // SAFETY: `buffer` is writable memory of the given length.
    let result = unsafe { raw(Hypercall::DmesgRead as u64, [address_of(buffer), buffer.len() as u64, 0, 0, 0]) };
    Error::decode(result).map(|length| length as usize)
}

/// Whole-hypervisor information.
pub fn hv_info() -> Result<HvInfo, Error> {
    let mut info = HvInfo::default();
    let size = core::mem::size_of::<HvInfo>() as u64;
    // SAFETY: `info` is writable and `size` bytes long.
    Error::decode(unsafe { raw(Hypercall::HvInfo as u64, [&raw mut info as u64, size, 0, 0, 0]) })?;
    Ok(info)
}

/// Information about domain `domain`.
pub fn domain_info(domain: DomainId) -> Result<DomainInfo, Error> {
    let mut info = DomainInfo::default();
    let size = core::mem::size_of::<DomainInfo>() as u64;
    // SAFETY: `info` is writable and `size` bytes long.
    Error::decode(unsafe { raw(Hypercall::DomainInfo as u64, [domain as u64, &raw mut info as u64, size, 0, 0]) })?;
    Ok(info)
}

/// Asks the hypervisor to power off or reboot the machine (dom0 only).
/// Returns only on error.
pub fn platform(operation: PlatformOp) -> Error {
    // SAFETY: no pointer arguments.
    match Error::decode(unsafe { raw(Hypercall::Platform as u64, [operation as u64, 0, 0, 0, 0]) }) {
        Err(error) => error,
        Ok(_) => Error::InvalidArgument,
    }
}

/// Gives up the rest of the time slice.
pub fn yield_now() {
    // SAFETY: no pointer arguments.
    unsafe { raw(Hypercall::Sched as u64, [SchedOp::Yield as u64, 0, 0, 0, 0]) };
}

/// Sleeps until an event is pending and unmasked or the vCPU timer fires.
pub fn block() {
    // SAFETY: no pointer arguments.
    unsafe { raw(Hypercall::Sched as u64, [SchedOp::Block as u64, 0, 0, 0, 0]) };
}

/// Stops this domain for good (guests only; dom0 uses [`platform`]).
pub fn shutdown(reason: ShutdownReason) -> Error {
    // SAFETY: no pointer arguments.
    match Error::decode(unsafe { raw(Hypercall::Sched as u64, [SchedOp::Shutdown as u64, reason as u64, 0, 0, 0]) }) {
        Err(error) => error,
        Ok(_) => Error::Busy,
    }
}

/// Arms the one-shot timer for absolute TSC `deadline` (0 cancels).
pub fn set_timer(deadline: u64) -> Result<(), Error> {
    // SAFETY: no pointer arguments.
    Error::decode(unsafe { raw(Hypercall::Vcpu as u64, [VcpuOp::SetTimer as u64, deadline, 0, 0, 0]) }).map(|_| ())
}

/// Starts vCPU `vcpu` of this domain (1 to its vCPU count minus one) from
/// `context`, which hv reads during the call (ABI 0.9, `VcpuOp::Up`). The
/// new vCPU runs at `context.rip` at once, beside the caller. Errors:
/// `InvalidArgument` (no such vCPU, or a context hv refuses), `Busy` (it
/// is up), `BadAddress`, `OutOfMemory`.
///
/// # Safety
/// The new vCPU runs with the context's RIP, RSP, CR3 and GDT: they must
/// name code that may run concurrently with the rest of this domain, a
/// stack nothing else uses while it runs, and page tables and a GDT that
/// stay valid (see [`vcpu_entry_context`] and `guest::Guest::start_vcpu`).
pub unsafe fn vcpu_up(vcpu: u32, context: &VcpuContext) -> Result<(), Error> {
    let arguments = [VcpuOp::Up as u64, u64::from(vcpu), address_of(context), 0, 0];
    // SAFETY: `context` is readable for its size; the caller vouches for
    // what the new vCPU runs.
    Error::decode(unsafe { raw(Hypercall::Vcpu as u64, arguments) }).map(|_| ())
}

/// Takes vCPU `vcpu` of this domain down: it stops at once, wherever it
/// is (ABI 0.9, `VcpuOp::Down`). Taking the calling vCPU down does not
/// return. Errors: `InvalidArgument` (no such vCPU), `NotFound` (it is not
/// up), `Busy` (it is the only vCPU up).
pub fn vcpu_down(vcpu: u32) -> Result<(), Error> {
    // SAFETY: no pointer arguments; a stopped vCPU never runs again, so
    // nothing it borrowed is used after this.
    Error::decode(unsafe { raw(Hypercall::Vcpu as u64, [VcpuOp::Down as u64, u64::from(vcpu), 0, 0, 0]) }).map(|_| ())
}

/// The calling vCPU's id, 0 to the domain's vCPU count minus one (ABI
/// 0.9, `VcpuOp::Id`; an older hv answers `InvalidArgument`).
pub fn vcpu_id() -> Result<u32, Error> {
    // SAFETY: no pointer arguments.
    Error::decode(unsafe { raw(Hypercall::Vcpu as u64, [VcpuOp::Id as u64, 0, 0, 0, 0]) }).map(|id| id as u32)
}

/// The [`VcpuContext`] for [`vcpu_up`] that calls `entry(argument)` (an
/// `extern "C" fn(u64)` at address `entry`) on the stack below
/// `stack_top`, with page tables `cr3` and the GDT at `gdt_base` (limit
/// `gdt_limit`). The stack pointer is `stack_top` rounded down to 16 bytes,
/// less 8: where a `call` would leave it, as the System V ABI expects at a
/// function's first instruction (the builder starts vCPU 0 the same way).
/// The return-address slot holds whatever the stack held; `entry` must
/// never return.
pub fn vcpu_entry_context(
    entry: u64,
    stack_top: u64,
    argument: u64,
    cr3: u64,
    gdt_base: u64,
    gdt_limit: u16,
) -> VcpuContext {
    VcpuContext {
        rip: entry,
        rsp: (stack_top & !0xf).wrapping_sub(8),
        cr3,
        rdi: argument,
        gdt_base,
        gdt_limit,
        mode: abi::domctl::VCPU_MODE_LONG,
        _reserved0: [0; 5],
    }
}

/// An event channel operation with word arguments.
pub fn event(operation: EventOp, a1: u64, a2: u64) -> Result<u64, Error> {
    // SAFETY: no operation takes a pointer except RegisterPage, whose page
    // the caller passes through [`register_event_page`].
    Error::decode(unsafe { raw3(Hypercall::Event as u64, operation as u64, a1, a2) })
}

/// Registers the event page at `page` with upcall `vector` (0 = none).
///
/// # Safety
/// `page` must be a page of this domain's RAM reserved for the event page
/// for the rest of the domain's life: the hypervisor writes it.
pub unsafe fn register_event_page(page: u64, vector: u8) -> Result<(), Error> {
    // SAFETY: the caller dedicates the page.
    Error::decode(unsafe { raw(Hypercall::Event as u64, [EventOp::RegisterPage as u64, page, vector as u64, 0, 0]) })
        .map(|_| ())
}

/// Makes the remote end of `port` pending.
pub fn notify(port: u32) -> Result<(), Error> {
    event(EventOp::Send, port as u64, 0).map(|_| ())
}

/// Domain control with word arguments (dom0 only).
pub fn domctl(operation: DomCtlOp, domain: DomainId, a2: u64, a3: u64, a4: u64) -> Result<u64, Error> {
    debug_assert!(!matches!(
        operation,
        DomCtlOp::SetVcpuContext | DomCtlOp::ListDomains | DomCtlOp::CopyToGuest | DomCtlOp::GetVcpuInfo
    ));
    // SAFETY: the operations passed here take no pointers into dom0's memory
    // (the ones that do have their own wrappers below).
    Error::decode(unsafe { raw(Hypercall::DomCtl as u64, [operation as u64, domain as u64, a2, a3, a4]) })
}

/// Creates a paused, empty domain allowed `max_pages` pages, with one
/// vCPU; returns its id.
pub fn create_domain(max_pages: u64) -> Result<DomainId, Error> {
    create_domain_with_vcpus(max_pages, 1)
}

/// Creates a paused, empty domain allowed `max_pages` pages, with `vcpus`
/// vCPUs (1 to [`abi::hypercall::MAX_VCPUS`]; 0 means 1; more:
/// `InvalidArgument`; ABI 0.9); returns its id.
pub fn create_domain_with_vcpus(max_pages: u64, vcpus: u32) -> Result<DomainId, Error> {
    let arguments = [DomCtlOp::Create as u64, max_pages, u64::from(vcpus), 0, 0];
    // SAFETY: no pointer arguments.
    Error::decode(unsafe { raw(Hypercall::DomCtl as u64, arguments) }).map(|id| id as DomainId)
}

/// Copies `bytes` (in dom0's identity-mapped memory) to `domain` at guest-physical `destination`.
pub fn copy_to_guest(domain: DomainId, destination: u64, bytes: &[u8]) -> Result<(), Error> {
    let mut done = 0;
    for piece in bytes.chunks(abi::domctl::COPY_MAX as usize) {
        let arguments =
            [DomCtlOp::CopyToGuest as u64, domain as u64, destination + done, address_of(piece), piece.len() as u64];
        // SAFETY: `piece` is readable for its length.
        Error::decode(unsafe { raw(Hypercall::DomCtl as u64, arguments) })?;
        done += piece.len() as u64;
    }
    Ok(())
}

/// Sets `domain`'s initial vCPU state.
pub fn set_vcpu_context(domain: DomainId, context: &VcpuContext) -> Result<(), Error> {
    let arguments = [DomCtlOp::SetVcpuContext as u64, domain as u64, address_of(context), 0, 0];
    // SAFETY: `context` is readable for its size.
    Error::decode(unsafe { raw(Hypercall::DomCtl as u64, arguments) }).map(|_| ())
}

/// Lists domain ids from `start` into `ids`; returns how many were written.
pub fn list_domains(start: DomainId, ids: &mut [u32]) -> Result<usize, Error> {
    let arguments = [DomCtlOp::ListDomains as u64, start as u64, address_of(ids), ids.len() as u64, 0];
    // SAFETY: `ids` is writable for its length.
    Error::decode(unsafe { raw(Hypercall::DomCtl as u64, arguments) }).map(|count| count as usize)
}

/// What vCPU `vcpu` of `domain` is doing (dom0 only).
pub fn vcpu_info(domain: DomainId, vcpu: u32) -> Result<VcpuInfo, Error> {
    let mut info = VcpuInfo::default();
    let arguments = [DomCtlOp::GetVcpuInfo as u64, domain as u64, vcpu as u64, &raw mut info as u64, 0];
    // SAFETY: `info` is writable for its size, which is what hv writes.
    Error::decode(unsafe { raw(Hypercall::DomCtl as u64, arguments) })?;
    Ok(info)
}

/// Lets vCPU `vcpu` of `domain` run only on the CPUs of `mask` (bit i =
/// CPU index i; hv keeps those running hv) from its next scheduling on
/// (dom0 only).
pub fn set_affinity(domain: DomainId, vcpu: u32, mask: u64) -> Result<(), Error> {
    let arguments = [DomCtlOp::SetAffinity as u64, domain as u64, vcpu as u64, mask, 0];
    // SAFETY: no pointer arguments.
    Error::decode(unsafe { raw(Hypercall::DomCtl as u64, arguments) }).map(|_| ())
}

/// Registers this domain's grant table page.
pub fn grant_setup_table(page: u64) -> Result<(), Error> {
    // SAFETY: the caller dedicates `page` (see `grant::GrantTable::new`).
    Error::decode(unsafe { raw(Hypercall::Grant as u64, [GrantOp::SetupTable as u64, page, 0, 0, 0]) }).map(|_| ())
}

/// Copies between grant `reference` of `granter` (at byte `offset` of the
/// page) and `local` in this domain; `to_grant` writes into the granted page.
pub fn grant_copy(
    granter: DomainId,
    reference: u32,
    offset: u16,
    local: &mut [u8],
    to_grant: bool,
) -> Result<(), Error> {
    let selector = reference as u64 | (offset as u64 & 0xfff) << 32;
    let length = local.len() as u64 | if to_grant { abi::grant::COPY_TO_GRANT } else { 0 };
    let arguments = [GrantOp::Copy as u64, granter as u64, selector, address_of(local), length];
    // SAFETY: `local` is writable (and readable) for its length.
    Error::decode(unsafe { raw(Hypercall::Grant as u64, arguments) }).map(|_| ())
}

/// Copies `local` into grant `reference` of `granter` at byte `offset`
/// (the direction that only reads the caller's memory).
pub fn grant_copy_to(granter: DomainId, reference: u32, offset: u16, local: &[u8]) -> Result<(), Error> {
    let selector = reference as u64 | (offset as u64 & 0xfff) << 32;
    let length = local.len() as u64 | abi::grant::COPY_TO_GRANT;
    let arguments = [GrantOp::Copy as u64, granter as u64, selector, local.as_ptr() as u64, length];
    // SAFETY: in this direction hv only reads `local`, readable for its length.
    Error::decode(unsafe { raw(Hypercall::Grant as u64, arguments) }).map(|_| ())
}

/// Maps grant `reference` of `granter` at guest-physical `address` (dom0:
/// in its foreign window), writable when `writable` (else refused for a
/// read-only grant).
pub fn grant_map(granter: DomainId, reference: u32, address: u64, writable: bool) -> Result<(), Error> {
    let flags = if writable { abi::grant::MAP_WRITABLE } else { 0 };
    let arguments = [GrantOp::Map as u64, granter as u64, reference as u64, address, flags];
    // SAFETY: hv only maps into this domain's address space; no memory of
    // ours is written.
    Error::decode(unsafe { raw(Hypercall::Grant as u64, arguments) }).map(|_| ())
}

/// Removes a grant mapping at `address`.
pub fn grant_unmap(address: u64) -> Result<(), Error> {
    // SAFETY: no memory of ours is written.
    Error::decode(unsafe { raw(Hypercall::Grant as u64, [GrantOp::Unmap as u64, address, 0, 0, 0]) }).map(|_| ())
}

/// Maps `pages` pages of device memory from `machine_address` into this
/// domain at the same address, uncached (dom0 only; see
/// [`abi::physdev::PhysdevOp::MapMmio`]).
pub fn physdev_map_mmio(machine_address: u64, pages: u64) -> Result<(), Error> {
    let arguments = [PhysdevOp::MapMmio as u64, machine_address, pages, 0, 0];
    // SAFETY: hv only maps device memory into this domain's address space
    // (its device window, where no RAM is); no memory of ours is written.
    Error::decode(unsafe { raw(Hypercall::Physdev as u64, arguments) }).map(|_| ())
}

/// The machine address behind `guest_physical` in this domain's RAM, for a
/// device's DMA (dom0 only; valid within that 4 KiB page).
pub fn physdev_translate(guest_physical: u64) -> Result<u64, Error> {
    // SAFETY: no pointer arguments: the address is only looked up.
    Error::decode(unsafe { raw(Hypercall::Physdev as u64, [PhysdevOp::Translate as u64, guest_physical, 0, 0, 0]) })
}

/// As [`physdev_translate`], also for a page mapped into this domain's
/// foreign window (valid while it stays mapped); `device_writes` when the
/// device will write the page, which refuses a read-only mapping.
pub fn physdev_translate_for_dma(guest_physical: u64, device_writes: bool) -> Result<u64, Error> {
    let flags = if device_writes { abi::physdev::TRANSLATE_DEVICE_WRITES } else { 0 };
    let arguments = [PhysdevOp::Translate as u64, guest_physical, flags, 0, 0];
    // SAFETY: no pointer arguments: the address is only looked up.
    Error::decode(unsafe { raw(Hypercall::Physdev as u64, arguments) })
}

/// Lets this domain reach `count` I/O ports from `first` directly (dom0
/// only; see [`abi::physdev::PhysdevOp::AllowIoPorts`]).
pub fn physdev_allow_io_ports(first: u16, count: u16) -> Result<(), Error> {
    let arguments = [PhysdevOp::AllowIoPorts as u64, u64::from(first), u64::from(count), 0, 0];
    // SAFETY: hv only changes which ports exit; no memory of ours is written.
    Error::decode(unsafe { raw(Hypercall::Physdev as u64, arguments) }).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_context_aligns_the_stack_as_after_a_call() {
        for (stack_top, rsp) in
            [(0x10_0000, 0xf_fff8), (0x10_0008, 0xf_fff8), (0x10_000f, 0xf_fff8), (0x10_0010, 0x10_0008)]
        {
            let context = vcpu_entry_context(0x20_1000, stack_top, 3, 0x4000, 0x3000, 39);
            assert_eq!(context.rsp, rsp, "stack top {stack_top:#x}");
            assert_eq!(context.rsp % 16, 8);
            assert!(context.rsp < stack_top);
        }
    }

    #[test]
    fn entry_context_carries_every_field() {
        let context = vcpu_entry_context(0x20_1234, 0x8_0000, 0xdead_beef, 0x5000, 0x3000, 39);
        let expected = VcpuContext {
            rip: 0x20_1234,
            rsp: 0x7_fff8,
            cr3: 0x5000,
            rdi: 0xdead_beef,
            gdt_base: 0x3000,
            gdt_limit: 39,
            mode: abi::domctl::VCPU_MODE_LONG,
            _reserved0: [0; 5],
        };
        assert_eq!(context, expected);
    }
}
