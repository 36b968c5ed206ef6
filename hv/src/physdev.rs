//! Physical device access for dom0 (`Hypercall::Physdev`): maps device
//! memory dom0 names into its EPT and tells it the machine addresses behind
//! its RAM, for DMA. What may be mapped is decided by `hvcore::mmio`.

use abi::Error;
use abi::physdev::PhysdevOp;
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
        PhysdevOp::Translate => translate(hv, caller, a1),
    }
}

fn map_mmio(hv: &mut Hypervisor, caller: usize, address: u64, pages: u64) -> Result<u64, Error> {
    let range = hv.device_policy.check(address, pages).map_err(|_| Error::InvalidArgument)?;
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
    if mapped_any && let Some(vcpu) = domain.vcpu.as_ref() {
        vcpu.flush_ept(&hv.capabilities);
    }
    Ok(0)
}

fn translate(hv: &Hypervisor, caller: usize, guest_physical: u64) -> Result<u64, Error> {
    if guest_physical >= hv.dom0_ram_bytes {
        return Err(Error::InvalidArgument);
    }
    let domain = &hv.domains[caller];
    match domain.ept.translate(&HvTables, guest_physical) {
        Some((host, access, _)) if access.contains(Access::READ | Access::WRITE) => Ok(host),
        _ => Err(Error::InvalidArgument),
    }
}
