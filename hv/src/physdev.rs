//! Physical device access for dom0 (`Hypercall::Physdev`): maps device
//! memory dom0 names into its EPT, tells it the machine addresses behind
//! its RAM and its mapped foreign-window pages, for DMA, and opens device
//! I/O ports in its I/O bitmap. What may be mapped is decided by
//! [`crate::mmio`], which ports may be opened by [`crate::io_ports`].

use abi::Error;
use abi::domctl::{FOREIGN_WINDOW_BASE, FOREIGN_WINDOW_SIZE};
use abi::physdev::{PhysdevOp, TRANSLATE_DEVICE_WRITES};

use crate::acpi::AcpiInfo;
use crate::domain::Domain;
use crate::mmio::DevicePolicy;
use crate::paging::{Access, MapError, MemoryType, PageSize};
use crate::platform::Platform;

/// `Hypercall::Physdev` from `domain` (dom0 only, its lock held alone):
/// what it may map is `policy`'s, its RAM is `ram_bytes` from 0 (what
/// `Translate` answers for), the ports hv keeps are named in `acpi`.
pub fn physdev_op<P: Platform>(
    domain: &mut Domain<P>,
    (policy, ram_bytes): &(DevicePolicy, u64),
    acpi: Option<&AcpiInfo>,
    [operation, a1, a2, ..]: [u64; 5],
) -> Result<u64, Error> {
    if !domain.privileged {
        return Err(Error::Permission);
    }
    match PhysdevOp::from_number(operation).ok_or(Error::InvalidArgument)? {
        PhysdevOp::MapMmio => map_mmio(domain, policy, a1, a2),
        PhysdevOp::Translate => translate(domain, *ram_bytes, a1, a2),
        PhysdevOp::AllowIoPorts => allow_io_ports(domain, acpi, a1, a2),
    }
}

fn map_mmio<P: Platform>(
    domain: &mut Domain<P>,
    policy: &DevicePolicy,
    address: u64,
    pages: u64,
) -> Result<u64, Error> {
    let range = policy.check(address, pages).map_err(|_| Error::InvalidArgument)?;
    let mut mapped_any = false;
    for page in (range.start..range.end).step_by(abi::PAGE_SIZE as usize) {
        let result = domain.ept.map(
            &mut P::tables(),
            page,
            page,
            PageSize::Size4K,
            Access::READ | Access::WRITE,
            MemoryType::Uncacheable,
        );
        match result {
            Ok(()) => mapped_any = true,
            // Mapped by an earlier call: fine if it is the same device page.
            Err(MapError::AlreadyMapped) => match domain.ept.translate(&P::tables(), page) {
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
fn translate<P: Platform>(domain: &Domain<P>, ram_bytes: u64, guest_physical: u64, flags: u64) -> Result<u64, Error> {
    if flags & !TRANSLATE_DEVICE_WRITES != 0 {
        return Err(Error::InvalidArgument);
    }
    let in_window = (FOREIGN_WINDOW_BASE..FOREIGN_WINDOW_BASE + FOREIGN_WINDOW_SIZE).contains(&guest_physical);
    let needed = if in_window && flags & TRANSLATE_DEVICE_WRITES == 0 {
        Access::READ
    } else if in_window || guest_physical < ram_bytes {
        Access::READ | Access::WRITE
    } else {
        return Err(Error::InvalidArgument);
    };
    match domain.ept.translate(&P::tables(), guest_physical) {
        Some((host, access, _)) if access.contains(needed) => Ok(host),
        _ => Err(Error::InvalidArgument),
    }
}

/// Clears `count` ports from `first` in dom0's own I/O bitmaps. The CPU
/// reads the bitmaps at each I/O instruction (SDM 26.1.3), so nothing is
/// cached: dom0's other vCPUs may use the ports at once.
fn allow_io_ports<P: Platform>(
    domain: &Domain<P>,
    acpi: Option<&AcpiInfo>,
    first: u64,
    count: u64,
) -> Result<u64, Error> {
    let ports = crate::io_ports::check(first, count, acpi).map_err(|_| Error::InvalidArgument)?;
    let [bitmap_a, bitmap_b] = domain.io_bitmaps;
    // Only dom0 has bitmaps of its own; the guests' shared page stays all ones.
    if bitmap_a == 0 || bitmap_b == 0 {
        return Err(Error::InvalidArgument);
    }
    for port in ports {
        // Bitmap A covers ports 0-0x7FFF, B 0x8000-0xFFFF (SDM 25.6.4).
        let (page, bit) = if port < 0x8000 { (bitmap_a, port) } else { (bitmap_b, port - 0x8000) };
        P::test_and_clear_bit(page + u64::from(bit / 64) * 8, bit % 64);
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_platform::{self as machine, Fake};
    use abi::physdev::DEVICE_WINDOW_BASE;

    /// A device page in the window, and dom0's RAM: 4 pages from 0.
    const DEVICE: u64 = DEVICE_WINDOW_BASE + 0x10_0000;
    const RAM_BYTES: u64 = 4 * abi::PAGE_SIZE;

    fn dom0(privileged: bool) -> Domain<Fake> {
        let mut domain = Domain::<Fake>::new(0, privileged, 16).unwrap();
        domain.populate(0, 4).unwrap();
        domain
    }

    fn call(domain: &mut Domain<Fake>, policy: &DevicePolicy, op: PhysdevOp, a1: u64, a2: u64) -> Result<u64, Error> {
        physdev_op(domain, &(policy.clone(), RAM_BYTES), None, [op as u64, a1, a2, 0, 0])
    }

    #[test]
    fn only_dom0_reaches_devices() {
        let policy = DevicePolicy::new();
        let mut guest = dom0(false);
        for op in [PhysdevOp::MapMmio, PhysdevOp::Translate, PhysdevOp::AllowIoPorts] {
            assert_eq!(call(&mut guest, &policy, op, DEVICE, 1), Err(Error::Permission));
        }
    }

    #[test]
    fn device_memory_maps_once_and_what_the_policy_forbids_does_not() {
        let mut policy = DevicePolicy::new();
        policy.forbid(DEVICE + 0x1000, DEVICE + 0x2000);
        let mut domain = dom0(true);
        assert_eq!(call(&mut domain, &policy, PhysdevOp::MapMmio, DEVICE, 1), Ok(0));
        let (host, access, _) = domain.ept.translate(&Fake::tables(), DEVICE).unwrap();
        assert_eq!((host, access), (DEVICE, Access::READ | Access::WRITE));
        assert_eq!(machine::with(|m| m.flushes.len()), 1);
        // Again: nothing new, no flush.
        assert_eq!(call(&mut domain, &policy, PhysdevOp::MapMmio, DEVICE, 1), Ok(0));
        assert_eq!(machine::with(|m| m.flushes.len()), 1);
        for (address, pages) in [(DEVICE, 2), (DEVICE + 1, 1), (0x1000, 1), (DEVICE, 0)] {
            assert_eq!(call(&mut domain, &policy, PhysdevOp::MapMmio, address, pages), Err(Error::InvalidArgument));
        }
    }

    #[test]
    fn translate_answers_for_dom0s_ram_and_mapped_window_pages_only() {
        let policy = DevicePolicy::new();
        let mut domain = dom0(true);
        let host = domain.host_frame(0x2000, Access::READ).unwrap();
        assert_eq!(call(&mut domain, &policy, PhysdevOp::Translate, 0x2010, 0), Ok(host + 0x10));
        assert_eq!(call(&mut domain, &policy, PhysdevOp::Translate, RAM_BYTES, 0), Err(Error::InvalidArgument));
        assert_eq!(call(&mut domain, &policy, PhysdevOp::Translate, 0, 1 << 5), Err(Error::InvalidArgument));
        // A read-only page in the foreign window: for device reads, not writes.
        let window = FOREIGN_WINDOW_BASE;
        domain
            .ept
            .map(&mut Fake::tables(), window, host, PageSize::Size4K, Access::READ, MemoryType::WriteBack)
            .unwrap();
        assert_eq!(call(&mut domain, &policy, PhysdevOp::Translate, window, 0), Ok(host));
        let writes = TRANSLATE_DEVICE_WRITES;
        assert_eq!(call(&mut domain, &policy, PhysdevOp::Translate, window, writes), Err(Error::InvalidArgument));
        assert_eq!(call(&mut domain, &policy, PhysdevOp::Translate, window + 0x1000, 0), Err(Error::InvalidArgument));
    }

    #[test]
    fn io_ports_open_in_dom0s_own_bitmaps_and_never_hvs() {
        let policy = DevicePolicy::new();
        let mut domain = dom0(true);
        assert_eq!(call(&mut domain, &policy, PhysdevOp::AllowIoPorts, 0x3f8, 8), Err(Error::InvalidArgument));
        let bitmaps = [Fake::allocate_frame().unwrap(), Fake::allocate_frame().unwrap()];
        for page in bitmaps {
            assert!(Fake::copy_to(page, &[0xff; 4096]));
        }
        domain.io_bitmaps = bitmaps;
        assert_eq!(call(&mut domain, &policy, PhysdevOp::AllowIoPorts, 0x3f8, 8), Ok(0));
        assert_eq!(call(&mut domain, &policy, PhysdevOp::AllowIoPorts, 0xc000, 2), Ok(0));
        // 0x3f8..0x400 is bits 56..64 of word 15 of bitmap A; 0xc000 is bit 0
        // of word 0x4000 / 64 of bitmap B.
        assert_eq!(Fake::load(bitmaps[0] + 0x3f8 / 64 * 8), 0x00ff_ffff_ffff_ffff);
        assert_eq!(Fake::load(bitmaps[1] + 0x4000 / 64 * 8), !0b11);
        // The PIT and the PCI reset register stay hv's.
        for (first, count) in [(0x40, 4), (0xcf8, 4)] {
            assert_eq!(call(&mut domain, &policy, PhysdevOp::AllowIoPorts, first, count), Err(Error::InvalidArgument));
        }
    }
}
