//! Grant tables (`Hypercall::Grant`): a domain lets one other domain map or
//! copy one of its pages. hv claims the granter's table entry at the moment
//! of use: it checks that the entry names the caller and permits the
//! access and sets its `MAPPED` bit in one compare-exchange of the word it
//! checked (`hvcore::grant_entry`: the granter may be revoking on another
//! CPU at that moment), and keeps the bit set while a copy runs or any
//! mapping of it exists, which is what makes the granter's revocation fail
//! meanwhile (see `abi::grant`).
//! Every mapping is recorded in `Hypervisor::foreign`, which also holds
//! each granter to its share of dom0's foreign window.

use abi::grant::{COPY_TO_GRANT, ENTRIES, GrantOp, MAP_WRITABLE, MAPPED};
use abi::{DomainId, Error};
use hvcore::paging::{Access, MemoryType, PageSize};

use hvcore::foreign::{GuestGrant, Mapping};
use hvcore::grant_entry::{self, Entry, EntryWord};

use crate::arch::memory as physical;
use crate::domctl::in_foreign_window;
use crate::hypervisor::Hypervisor;
use crate::memory::HvTables;

/// A grant entry in a granter's table page: each access is one locked
/// instruction on the raw address (the granter changes it concurrently).
struct SharedEntry(u64);

impl EntryWord for SharedEntry {
    fn load(&mut self) -> u64 {
        physical::atomic_load(self.0)
    }
    fn compare_exchange(&mut self, current: u64, new: u64) -> Result<u64, u64> {
        physical::atomic_compare_exchange(self.0, current, new)
    }
    fn clear_mapped(&mut self) {
        physical::atomic_test_and_clear_bit(self.0, MAPPED.trailing_zeros());
    }
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

/// A claimed grant: `MAPPED` is set in its entry, so the granter cannot
/// revoke it until [`end_claim`].
struct Claimed {
    /// Host frame of the granted page.
    frame: u64,
    entry: Entry,
    /// Host address of the entry.
    entry_at: u64,
    /// `MAPPED` was set before (a mapping holds it).
    already: bool,
}

/// Ends a claim that added no mapping: clears `MAPPED` unless a mapping
/// held it before (then it stays, and no mapping list needs searching).
fn end_claim(claimed: &Claimed) {
    grant_entry::release(&mut SharedEntry(claimed.entry_at), claimed.already);
}

/// Claims grant `reference` of domain `granter_index` for `caller`
/// (writable access if `write`: see `hvcore::grant_entry::claim`) and
/// finds the host frame it names.
fn claim(
    hv: &Hypervisor,
    granter_index: usize,
    reference: u64,
    caller: DomainId,
    write: bool,
) -> Result<Claimed, Error> {
    let entry_at = entry_address(hv, granter_index, reference)?;
    let grant_entry::Claim { entry, already } = grant_entry::claim(&mut SharedEntry(entry_at), caller, write)?;
    let access = if entry.writable() { Access::READ | Access::WRITE } else { Access::READ };
    let claimed = Claimed { frame: 0, entry, entry_at, already };
    match hv.domains[granter_index].host_frame(entry.frame as u64 * abi::PAGE_SIZE, access) {
        Ok(frame) => Ok(Claimed { frame, ..claimed }),
        Err(error) => {
            end_claim(&claimed);
            Err(error)
        }
    }
}

/// Clears `MAPPED` in grant `reference` (entry at `entry_at`) of domain
/// `granter_index` once no mapping of it remains (in dom0's window or a
/// guest's).
fn unclaim(hv: &Hypervisor, granter_index: usize, reference: u64, entry_at: u64) {
    let owner = hv.domains[granter_index].id;
    let still_mapped = hv.foreign.maps_grant(owner, reference as u32)
        || hv.domains.iter().any(|d| d.mapped_grants.maps_grant(owner, reference as u32));
    grant_entry::release(&mut SharedEntry(entry_at), still_mapped);
}

/// Releases the claim of a mapping of grant `reference` of domain `owner`
/// that is gone (unmapped, or its grantee destroyed).
pub fn release_mapping(hv: &Hypervisor, owner: DomainId, reference: u32) {
    if let Some(owner) = hv.index_of(owner)
        && let Ok(entry_at) = entry_address(hv, owner, reference as u64)
    {
        unclaim(hv, owner, reference as u64, entry_at);
    }
}

/// Maps grant `reference` of domain `granter` at `address` in guest
/// `caller` (not dom0: see `GrantOp::Map`).
fn map_in_guest(
    hv: &mut Hypervisor,
    caller: usize,
    granter: u64,
    reference: u64,
    address: u64,
    write: bool,
) -> Result<u64, Error> {
    if !address.is_multiple_of(abi::PAGE_SIZE) || address >= abi::grant::GUEST_MAP_LIMIT {
        return Err(Error::InvalidArgument);
    }
    let caller_id = hv.domains[caller].id;
    let granter = granter_index(hv, caller, granter)?;
    let claimed = claim(hv, granter, reference, caller_id, write)?;
    let owner = hv.domains[granter].id;
    let domain = &mut hv.domains[caller];
    // Recorded first, as for dom0: refused here for a bad or busy address
    // or when the guest has its most grants mapped.
    if let Err(error) = domain.mapped_grants.insert(GuestGrant { address, owner, grant: reference as u32 }) {
        end_claim(&claimed);
        return Err(error);
    }
    let access = if claimed.entry.writable() { Access::READ | Access::WRITE } else { Access::READ };
    if let Err(error) =
        domain.ept.map(&mut HvTables, address, claimed.frame, PageSize::Size4K, access, MemoryType::WriteBack)
    {
        domain.mapped_grants.remove(address);
        end_claim(&claimed);
        return Err(map_error(error));
    }
    Ok(0)
}

/// The ABI's error for an EPT mapping that failed.
fn map_error(error: hvcore::paging::MapError) -> Error {
    match error {
        // RAM or another mapping there.
        hvcore::paging::MapError::AlreadyMapped => Error::Busy,
        hvcore::paging::MapError::OutOfTables => Error::OutOfMemory,
        _ => Error::InvalidArgument,
    }
}

/// Unmaps guest `caller`'s grant mapping at `address`; returns once no CPU
/// can reach the page through it (`Domain::flush_ept`), then releases it.
fn unmap_in_guest(hv: &mut Hypervisor, caller: usize, address: u64) -> Result<u64, Error> {
    let domain = &mut hv.domains[caller];
    let mapping = domain.mapped_grants.remove(address).ok_or(Error::NotFound)?;
    let _ = domain.ept.unmap(&mut HvTables, address);
    domain.flush_ept();
    release_mapping(hv, mapping.owner, mapping.grant);
    Ok(0)
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
            if hv.foreign.maps_grants_of(caller_id)
                || hv.domains.iter().any(|d| d.mapped_grants.maps_grants_of(caller_id))
            {
                return Err(Error::Busy);
            }
            let domain = &mut hv.domains[caller];
            domain.grant_table = domain.host_frame(a1, Access::READ | Access::WRITE)?;
            Ok(0)
        }
        GrantOp::Map => {
            if !hv.domains[caller].privileged {
                return map_in_guest(hv, caller, a1, a2, a3, a4 & MAP_WRITABLE != 0);
            }
            if !in_foreign_window(a3) {
                return Err(Error::InvalidArgument);
            }
            let granter = granter_index(hv, caller, a1)?;
            let claimed = claim(hv, granter, a2, caller_id, a4 & MAP_WRITABLE != 0)?;
            let owner = hv.domains[granter].id;
            // Recorded first: refused here when the page is in use or the
            // granter has its share of the window mapped.
            if let Err(error) = hv.foreign.insert(a3, Mapping { owner, grant: Some(a2 as u32) }) {
                end_claim(&claimed);
                return Err(error);
            }
            let access = if claimed.entry.writable() { Access::READ | Access::WRITE } else { Access::READ };
            let domain = &mut hv.domains[caller];
            if let Err(error) =
                domain.ept.map(&mut HvTables, a3, claimed.frame, PageSize::Size4K, access, MemoryType::WriteBack)
            {
                hv.foreign.remove(a3, true);
                end_claim(&claimed);
                return Err(map_error(error));
            }
            Ok(0)
        }
        GrantOp::Unmap => {
            if !hv.domains[caller].privileged {
                return unmap_in_guest(hv, caller, a1);
            }
            let mapping = hv.foreign.remove(a1, true).ok_or(Error::NotFound)?;
            let domain = &mut hv.domains[caller];
            let _ = domain.ept.unmap(&mut HvTables, a1);
            domain.flush_ept();
            if let Some(reference) = mapping.grant {
                release_mapping(hv, mapping.owner, reference);
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
            // Claimed for the copy, so the granter cannot revoke (and reuse
            // the page) while hv copies from or to it.
            let claimed = claim(hv, granter, reference, caller_id, to_grant)?;
            let frame = claimed.frame;
            let mut buffer = [0u8; abi::PAGE_SIZE as usize];
            let bytes = &mut buffer[..length as usize];
            let copied = if to_grant {
                hv.domains[caller].read_guest(a3, bytes).and_then(|()| {
                    if physical::copy_to(frame + offset, bytes) { Ok(()) } else { Err(Error::BadAddress) }
                })
            } else if physical::copy_from(frame + offset, bytes) {
                hv.domains[caller].write_guest(a3, bytes)
            } else {
                Err(Error::BadAddress)
            };
            end_claim(&claimed);
            copied.map(|()| length)
        }
    }
}
