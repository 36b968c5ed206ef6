//! Grant tables (`Hypercall::Grant`): a domain lets one other domain map or
//! copy one of its pages. hv reads the granter's table entry at the moment
//! of use, checks it names the caller and permits the access, and keeps the
//! entry's `MAPPED` bit set while any mapping of it exists, which is what
//! makes the granter's revocation fail while mapped (see `abi::grant`).
//! Every mapping is recorded in `Hypervisor::foreign`, which also holds
//! each granter to its share of dom0's foreign window.

use abi::grant::{COPY_TO_GRANT, ENTRIES, GrantOp, MAP_WRITABLE, MAPPED, PERMIT_ACCESS, READONLY};
use abi::{DomainId, Error};
use hvcore::paging::{Access, MemoryType, PageSize};

use hvcore::foreign::Mapping;

use crate::arch::memory as physical;
use crate::domctl::in_foreign_window;
use crate::hypervisor::Hypervisor;
use crate::memory::HvTables;

/// A decoded grant entry.
struct Entry {
    flags: u16,
    domain: u16,
    frame: u32,
}

/// The host address of entry `reference` in domain `index`'s table.
fn entry_address(hv: &Hypervisor, index: usize, reference: u64) -> Result<u64, Error> {
    let table = hv.domains[index].grant_table;
    if table == 0 {
        return Err(Error::NotFound);
    }
    if reference >= ENTRIES as u64 {
        return Err(Error::InvalidArgument);
    }
    Ok(table + reference * 8)
}

fn read_entry(address: u64) -> Entry {
    // One 8-byte load: the granter may change the entry at any time, so it
    // is read once and the copy is what gets checked and used.
    let word = physical::atomic_load(address);
    Entry { flags: word as u16, domain: (word >> 16) as u16, frame: (word >> 32) as u32 }
}

/// Checks grant `reference` of domain `granter_index` for use by `caller`
/// (writable access if `write`), returning the host frame it names.
fn check(
    hv: &Hypervisor,
    granter_index: usize,
    reference: u64,
    caller: DomainId,
    write: bool,
) -> Result<(u64, Entry), Error> {
    let address = entry_address(hv, granter_index, reference)?;
    let entry = read_entry(address);
    if entry.flags & PERMIT_ACCESS == 0 || entry.domain as u32 != caller {
        return Err(Error::Permission);
    }
    if write && entry.flags & READONLY != 0 {
        return Err(Error::Permission);
    }
    let access = if entry.flags & READONLY != 0 { Access::READ } else { Access::READ | Access::WRITE };
    let frame = hv.domains[granter_index].host_frame(entry.frame as u64 * abi::PAGE_SIZE, access)?;
    Ok((frame, entry))
}

fn granter_index(hv: &Hypervisor, caller: usize, granter: u64) -> Result<usize, Error> {
    let granter = DomainId::try_from(granter).map_err(|_| Error::InvalidArgument)?;
    let index = hv.index_of(granter).ok_or(Error::NotFound)?;
    if index == caller || hv.domains[index].ended.is_some() {
        return Err(Error::InvalidArgument);
    }
    Ok(index)
}

/// `Hypercall::Grant`.
pub fn grant_op(hv: &mut Hypervisor, caller: usize, [operation, a1, a2, a3, a4]: [u64; 5]) -> Result<u64, Error> {
    let operation = GrantOp::from_number(operation).ok_or(Error::InvalidArgument)?;
    let caller_id = hv.domains[caller].id;
    match operation {
        GrantOp::SetupTable => {
            if a1 % abi::PAGE_SIZE != 0 {
                return Err(Error::InvalidArgument);
            }
            // Moving the table while another domain maps one of its grants
            // would lose track of the MAPPED bits.
            if hv.foreign.maps_grants_of(caller_id) {
                return Err(Error::Busy);
            }
            let domain = &mut hv.domains[caller];
            domain.grant_table = domain.host_frame(a1, Access::READ | Access::WRITE)?;
            Ok(0)
        }
        GrantOp::Map => {
            if !hv.domains[caller].privileged {
                // Only dom0 has a foreign window in this version; guests copy.
                return Err(Error::Permission);
            }
            if !in_foreign_window(a3) {
                return Err(Error::InvalidArgument);
            }
            let granter = granter_index(hv, caller, a1)?;
            let (frame, entry) = check(hv, granter, a2, caller_id, a4 & MAP_WRITABLE != 0)?;
            let owner = hv.domains[granter].id;
            let entry_at = entry_address(hv, granter, a2)?;
            // Recorded first: refused here when the page is in use or the
            // granter has its share of the window mapped.
            hv.foreign.insert(a3, Mapping { owner, grant: Some(a2 as u32) })?;
            let access = if entry.flags & READONLY != 0 { Access::READ } else { Access::READ | Access::WRITE };
            let domain = &mut hv.domains[caller];
            if let Err(error) =
                domain.ept.map(&mut HvTables, a3, frame, PageSize::Size4K, access, MemoryType::WriteBack)
            {
                hv.foreign.remove(a3, true);
                return Err(match error {
                    hvcore::paging::MapError::AlreadyMapped => Error::Busy,
                    hvcore::paging::MapError::OutOfTables => Error::OutOfMemory,
                    _ => Error::InvalidArgument,
                });
            }
            // Entries are 8-byte aligned with `flags` in the low bits.
            physical::atomic_test_and_set_bit(entry_at, MAPPED.trailing_zeros());
            Ok(0)
        }
        GrantOp::Unmap => {
            // Only dom0 maps grants (into its foreign window).
            if !hv.domains[caller].privileged {
                return Err(Error::NotFound);
            }
            let mapping = hv.foreign.remove(a1, true).ok_or(Error::NotFound)?;
            let domain = &mut hv.domains[caller];
            let _ = domain.ept.unmap(&mut HvTables, a1);
            if let Some(vcpu) = domain.vcpu.as_ref() {
                vcpu.flush_ept(&hv.capabilities);
            }
            if let (Some(owner), Some(reference)) = (hv.index_of(mapping.owner), mapping.grant)
                && !hv.foreign.maps_grant(mapping.owner, reference)
                && let Ok(entry_at) = entry_address(hv, owner, reference as u64)
            {
                physical::atomic_test_and_clear_bit(entry_at, MAPPED.trailing_zeros());
            }
            Ok(0)
        }
        GrantOp::Copy => {
            let granter = granter_index(hv, caller, a1)?;
            let reference = a2 & 0xffff_ffff;
            let offset = (a2 >> 32) & 0xfff;
            let to_grant = a4 & COPY_TO_GRANT != 0;
            let length = a4 & !COPY_TO_GRANT;
            if a2 >> 44 != 0 || offset + length > abi::PAGE_SIZE {
                return Err(Error::InvalidArgument);
            }
            let (frame, _) = check(hv, granter, reference, caller_id, to_grant)?;
            let mut buffer = [0u8; abi::PAGE_SIZE as usize];
            let bytes = &mut buffer[..length as usize];
            if to_grant {
                hv.domains[caller].read_guest(a3, bytes)?;
                if !physical::copy_to(frame + offset, bytes) {
                    return Err(Error::BadAddress);
                }
            } else {
                if !physical::copy_from(frame + offset, bytes) {
                    return Err(Error::BadAddress);
                }
                hv.domains[caller].write_guest(a3, bytes)?;
            }
            Ok(length)
        }
    }
}
