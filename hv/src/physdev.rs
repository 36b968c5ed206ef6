//! Physical device access for dom0 (`Hypercall::Physdev`): maps device
//! memory dom0 names into its EPT, tells it the machine addresses behind
//! its RAM and its mapped foreign-window pages, for DMA, and opens device
//! I/O ports in its I/O bitmap. What may be mapped is decided by
//! `hvcore::mmio`, which ports may be opened by `hvcore::io_ports`.

use abi::Error;
use abi::domctl::{FOREIGN_WINDOW_BASE, FOREIGN_WINDOW_SIZE};
use abi::physdev::{PhysdevOp, TRANSLATE_DEVICE_WRITES};
use hvcore::paging::{Access, MapError, MemoryType, PageSize};

use crate::hypervisor::Hypervisor;
use crate::memory::HvTables;

/// `Hypercall::Physdev`.
pub fn physdev_op(hv: &mut Hypervisor, caller: usize, [operation, a1, a2, ..]: [u64; 5]) -> Result<u64, Error> {
    if !hv.domains[caller].privileged {
        return Err(Error::Permission);
    }
    match PhysdevOp::from_number(operation).ok_or(Error::InvalidArgument)? {
        PhysdevOp::MapMmio => map_mmio(hv, caller, a1, a2),
        PhysdevOp::Translate => translate(hv, caller, a1, a2),
        PhysdevOp::AllowIoPorts => allow_io_ports(hv, caller, a1, a2),
    }
}

fn map_mmio(hv: &mut Hypervisor, caller: usize, address: u64, pages: u64) -> Result<u64, Error> {
    let range = hv.state.device_policy.check(address, pages).map_err(|_| Error::InvalidArgument)?;
    let domain = &mut hv.domains[caller];
    let mut mapped_any = false;
    for page in (range.start..range.end).step_by(abi::PAGE_SIZE as usize) {
        let result = domain.ept.map(
            &mut HvTables,
            page,
            page,
            PageSize::Size4K,
            Access::READ | Access::WRITE,
            MemoryType::Uncacheable,
        );
        match result {
            Ok(()) => mapped_any = true,
            // Mapped by an earlier call: fine if it is the same device page.
            Err(MapError::AlreadyMapped) => match domain.ept.translate(&HvTables, page) {
                Some((host, _, _)) if host == page => {}
                _ => return Err(Error::Busy),
            },
            Err(MapError::OutOfTables) => return Err(Error::OutOfMemory),
            Err(_) => return Err(Error::InvalidArgument),
        }
    }
    // New entries replace non-present ones, which the CPU does not cache;
    // the flush only makes that independent of the implementation.
    if mapped_any {
        domain.flush_ept();
    }
    Ok(0)
}

/// RAM is dom0's and always writable; a foreign-window page is a guest's,
/// mapped now by a grant (maybe read-only) or `MapForeign`, and translates
/// only while it stays mapped.
fn translate(hv: &Hypervisor, caller: usize, guest_physical: u64, flags: u64) -> Result<u64, Error> {
    if flags & !TRANSLATE_DEVICE_WRITES != 0 {
        return Err(Error::InvalidArgument);
    }
    let in_window = (FOREIGN_WINDOW_BASE..FOREIGN_WINDOW_BASE + FOREIGN_WINDOW_SIZE).contains(&guest_physical);
    let needed = if in_window && flags & TRANSLATE_DEVICE_WRITES == 0 {
        Access::READ
    } else if in_window || guest_physical < hv.state.dom0_ram_bytes {
        Access::READ | Access::WRITE
    } else {
        return Err(Error::InvalidArgument);
    };
    let domain = &hv.domains[caller];
    match domain.ept.translate(&HvTables, guest_physical) {
        Some((host, access, _)) if access.contains(needed) => Ok(host),
        _ => Err(Error::InvalidArgument),
    }
}

/// Clears `count` ports from `first` in dom0's own I/O bitmaps. The CPU
/// reads the bitmaps at each I/O instruction (SDM 26.1.3); dom0 is not
/// running while its hypercall is handled, so nothing needs flushing.
fn allow_io_ports(hv: &mut Hypervisor, caller: usize, first: u64, count: u64) -> Result<u64, Error> {
    let ports =
        hvcore::io_ports::check(first, count, crate::arch::platform::acpi()).map_err(|_| Error::InvalidArgument)?;
    let [bitmap_a, bitmap_b] = hv.domains[caller].io_bitmaps;
    // Only dom0 has bitmaps of its own; the guests' shared page stays all ones.
    if bitmap_a == 0 || bitmap_b == 0 {
        return Err(Error::InvalidArgument);
    }
    for port in ports {
        // Bitmap A covers ports 0-0x7FFF, B 0x8000-0xFFFF (SDM 25.6.4).
        let (page, bit) = if port < 0x8000 { (bitmap_a, port) } else { (bitmap_b, port - 0x8000) };
        crate::dom0::clear_bit(page, u64::from(bit));
    }
    Ok(0)
}
