//! Grant tables (`Hypercall::Grant`): a domain lets one other domain map or
//! copy one of its pages. hv claims the granter's table entry at the moment
//! of use: it checks that the entry names the caller and permits the
//! access and sets its `MAPPED` bit in one compare-exchange of the word it
//! checked (`hvcore::grant_entry`: the granter may be revoking on another
//! CPU at that moment), and keeps the bit set while a copy runs or any
//! mapping of it exists, which is what makes the granter's revocation fail
//! meanwhile (see `abi::grant`).
//! Every mapping is recorded: dom0's in its foreign window
//! ([`ForeignWindow`], which also holds each granter to its share of
//! it), a guest's in its domain (`Domain::mapped_grants`).

use abi::grant::{COPY_TO_GRANT, ENTRIES, GrantOp, MAP_WRITABLE, MAPPED};
use abi::{DomainId, Error};

use crate::domain::{Domain, DomainTable, MAX_DOMAINS};
use crate::foreign::{GuestGrant, Mapping};
use crate::grant_entry::{self, Entry, EntryWord};
use crate::paging::{Access, MemoryType, PageSize};
use crate::platform::{Platform, Shared};

/// dom0's foreign window, as hv keeps it.
pub type ForeignWindow = crate::foreign::ForeignWindow<MAX_DOMAINS>;

/// What the grant hypercall works on: every domain, and what dom0 has
/// mapped in its foreign window.
pub struct Grants<'a, 'd, P: Platform> {
    pub domains: &'a mut DomainTable<'d, P>,
    pub foreign: &'a mut ForeignWindow,
}

/// A grant entry in a granter's table page: each access is one locked
/// instruction on the raw address (the granter changes it concurrently).
impl<P: Platform> EntryWord for Shared<P> {
    fn load(&mut self) -> u64 {
        P::load(self.0)
    }
    fn compare_exchange(&mut self, current: u64, new: u64) -> Result<u64, u64> {
        P::compare_exchange(self.0, current, new)
    }
    fn clear_mapped(&mut self) {
        P::test_and_clear_bit(self.0, MAPPED.trailing_zeros());
    }
}

/// The host address of entry `reference` in `granter`'s table: in frame
/// `reference / 512`. `NotFound` without a table (no frame 0),
/// `InvalidArgument` past the frames placed.
fn entry_address<P: Platform>(granter: &Domain<P>, reference: u64) -> Result<u64, Error> {
    if granter.grant_frames[0] == 0 {
        return Err(Error::NotFound);
    }
    let frame = usize::try_from(reference / ENTRIES as u64).ok().and_then(|index| granter.grant_frames.get(index));
    match frame {
        Some(&frame) if frame != 0 => Ok(frame + reference % ENTRIES as u64 * 8),
        _ => Err(Error::InvalidArgument),
    }
}

/// Places frame `index` of domain `caller`'s grant table at its
/// guest-physical `address` (see `abi::xen::grant_table`): its own RAM page
/// there becomes the frame; where it has nothing and `supply`, hv maps a
/// zeroed frame of its own, freed with the domain (`Domain::grant_supplied`).
/// A supplied frame stays where it was first placed (again there: done;
/// elsewhere: `InvalidArgument`). Placing a frame already placed elsewhere
/// is `Busy` while another domain maps one of the table's grants: the move
/// would lose track of its MAPPED bits. A new frame may be placed at any
/// time (Linux grows its table while its disk's grants are mapped).
pub fn place_table_frame<P: Platform>(
    on: &mut Grants<'_, '_, P>,
    caller: usize,
    index: usize,
    address: u64,
    supply: bool,
) -> Result<(), Error> {
    if !address.is_multiple_of(abi::PAGE_SIZE) || address >= abi::grant::GUEST_MAP_LIMIT {
        return Err(Error::InvalidArgument);
    }
    let domain = &on.domains[caller];
    match domain.grant_supplied.get(index).ok_or(Error::InvalidArgument)? {
        Some(placed) if *placed == address => return Ok(()),
        Some(_) => return Err(Error::InvalidArgument),
        None => {}
    }
    let caller_id = domain.id;
    let moving = domain.grant_frames[index] != 0;
    if moving
        && (on.foreign.maps_grants_of(caller_id)
            || on.domains.iter().any(|d| d.mapped_grants.maps_grants_of(caller_id)))
    {
        return Err(Error::Busy);
    }
    let domain = &mut on.domains[caller];
    let rw = Access::READ | Access::WRITE;
    match domain.host_frame(address, rw) {
        Ok(frame) => {
            domain.grant_frames[index] = frame;
            return Ok(());
        }
        Err(error) if !supply => return Err(error),
        Err(_) => {}
    }
    // Nothing there (a page the guest cannot write is something: `map`
    // refuses it).
    let frame = P::allocate_frame().ok_or(Error::OutOfMemory)?;
    if let Err(error) = domain.ept.map(&mut P::tables(), address, frame, PageSize::Size4K, rw, MemoryType::WriteBack) {
        P::free_frame(frame);
        return Err(error.into());
    }
    domain.grant_frames[index] = frame;
    domain.grant_supplied[index] = Some(address);
    Ok(())
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
fn end_claim<P: Platform>(claimed: &Claimed) {
    grant_entry::release(&mut Shared::<P>::at(claimed.entry_at), claimed.already);
}

/// Claims grant `reference` of `granter` for `caller` (writable access if
/// `write`: see `hvcore::grant_entry::claim`) and finds the host frame it
/// names.
fn claim<P: Platform>(granter: &Domain<P>, reference: u64, caller: DomainId, write: bool) -> Result<Claimed, Error> {
    let entry_at = entry_address(granter, reference)?;
    let grant_entry::Claim { entry, already } = grant_entry::claim(&mut Shared::<P>::at(entry_at), caller, write)?;
    let access = if entry.writable() { Access::READ | Access::WRITE } else { Access::READ };
    let claimed = Claimed { frame: 0, entry, entry_at, already };
    match granter.host_frame(entry.frame as u64 * abi::PAGE_SIZE, access) {
        Ok(frame) => Ok(Claimed { frame, ..claimed }),
        Err(error) => {
            end_claim::<P>(&claimed);
            Err(error)
        }
    }
}

/// Clears `MAPPED` in grant `reference` (entry at `entry_at`) of domain
/// `granter_index` once no mapping of it remains (in dom0's window or a
/// guest's).
fn unclaim<P: Platform>(on: &Grants<'_, '_, P>, granter_index: usize, reference: u64, entry_at: u64) {
    let owner = on.domains[granter_index].id;
    let still_mapped = on.foreign.maps_grant(owner, reference as u32)
        || on.domains.iter().any(|d| d.mapped_grants.maps_grant(owner, reference as u32));
    grant_entry::release(&mut Shared::<P>::at(entry_at), still_mapped);
}

/// Releases the claim of a mapping of grant `reference` of domain `owner`
/// that is gone (unmapped, or its grantee destroyed).
pub fn release_mapping<P: Platform>(on: &Grants<'_, '_, P>, owner: DomainId, reference: u32) {
    if let Some(owner) = on.domains.slot_of(owner)
        && let Ok(entry_at) = entry_address(&on.domains[owner], reference as u64)
    {
        unclaim(on, owner, reference as u64, entry_at);
    }
}

/// Maps grant `reference` of domain `granter` at `address` in guest
/// `caller` (not dom0: see `GrantOp::Map`).
fn map_in_guest<P: Platform>(
    domains: &mut DomainTable<'_, P>,
    caller: usize,
    granter: u64,
    reference: u64,
    address: u64,
    write: bool,
) -> Result<u64, Error> {
    if !address.is_multiple_of(abi::PAGE_SIZE) || address >= abi::grant::GUEST_MAP_LIMIT {
        return Err(Error::InvalidArgument);
    }
    let caller_id = domains[caller].id;
    let granter = granter_index(domains, caller, granter)?;
    let claimed = claim(&domains[granter], reference, caller_id, write)?;
    let owner = domains[granter].id;
    let domain = &mut domains[caller];
    // Recorded first, as for dom0: refused here for a bad or busy address
    // or when the guest has its most grants mapped.
    if let Err(error) = domain.mapped_grants.insert(GuestGrant { address, owner, grant: reference as u32 }) {
        end_claim::<P>(&claimed);
        return Err(error);
    }
    let access = if claimed.entry.writable() { Access::READ | Access::WRITE } else { Access::READ };
    if let Err(error) =
        domain.ept.map(&mut P::tables(), address, claimed.frame, PageSize::Size4K, access, MemoryType::WriteBack)
    {
        domain.mapped_grants.remove(address);
        end_claim::<P>(&claimed);
        return Err(error.into());
    }
    Ok(0)
}

/// Unmaps guest `caller`'s grant mapping at `address`; returns once no CPU
/// can reach the page through it (`Domain::flush_ept`), then releases it.
fn unmap_in_guest<P: Platform>(on: &mut Grants<'_, '_, P>, caller: usize, address: u64) -> Result<u64, Error> {
    let domain = &mut on.domains[caller];
    let mapping = domain.mapped_grants.remove(address).ok_or(Error::NotFound)?;
    let _ = domain.ept.unmap(&mut P::tables(), address);
    domain.flush_ept();
    release_mapping(on, mapping.owner, mapping.grant);
    Ok(0)
}

/// Domain `target` is being destroyed: every mapping of its pages goes,
/// in dom0's window and in guests (each mapper's CPUs drop their
/// translations before the call returns, so its frames may be freed), and
/// the grants it mapped itself are released, so their granters may revoke
/// them.
pub fn end_domain<P: Platform>(on: &mut Grants<'_, '_, P>, target: usize) {
    let id = on.domains[target].id;
    if let Some(dom0) = on.domains.iter_mut().find(|d| d.privileged) {
        let unmapped = on.foreign.remove_owner(id, |address| {
            let _ = dom0.ept.unmap(&mut P::tables(), address);
        });
        if unmapped > 0 {
            dom0.flush_ept();
        }
    }
    for mapper in on.domains.iter_mut().filter(|d| d.mapped_grants.maps_grants_of(id)) {
        let ept = &mut mapper.ept;
        mapper.mapped_grants.remove_owner(id, |grant| {
            let _ = ept.unmap(&mut P::tables(), grant.address);
        });
        mapper.flush_ept();
    }
    let mut mapped = core::mem::take(&mut on.domains[target].mapped_grants);
    mapped.clear(|grant| release_mapping(on, grant.owner, grant.grant));
}

/// Maps host `frame` at `address` in dom0's (slot `dom0`) foreign window
/// as `mapping` says: recorded first (refused when the page is in use or
/// the owner has its share of the window mapped), then in dom0's EPT.
fn map_in_window<P: Platform>(
    on: &mut Grants<'_, '_, P>,
    dom0: usize,
    address: u64,
    frame: u64,
    access: Access,
    mapping: Mapping,
) -> Result<u64, Error> {
    on.foreign.insert(address, mapping)?;
    let ept = &mut on.domains[dom0].ept;
    if let Err(error) = ept.map(&mut P::tables(), address, frame, PageSize::Size4K, access, MemoryType::WriteBack) {
        on.foreign.remove(address, mapping.grant.is_some());
        return Err(error.into());
    }
    Ok(0)
}

/// Removes dom0's (slot `dom0`) mapping at `address` in its foreign window
/// (of a grant if `grant`, else of a guest page) and returns it once no
/// CPU can reach the page through it.
fn unmap_in_window<P: Platform>(
    on: &mut Grants<'_, '_, P>,
    dom0: usize,
    address: u64,
    grant: bool,
) -> Result<Mapping, Error> {
    let mapping = on.foreign.remove(address, grant).ok_or(Error::NotFound)?;
    let domain = &mut on.domains[dom0];
    let _ = domain.ept.unmap(&mut P::tables(), address);
    domain.flush_ept();
    Ok(mapping)
}

/// `DomCtlOp::MapForeign`: maps page `guest_address` of guest `target` at
/// `dom0_address` in dom0's (slot `dom0`) foreign window.
pub fn map_foreign<P: Platform>(
    on: &mut Grants<'_, '_, P>,
    dom0: usize,
    target: usize,
    guest_address: u64,
    dom0_address: u64,
) -> Result<u64, Error> {
    if ForeignWindow::page_of(dom0_address).is_none() || !guest_address.is_multiple_of(abi::PAGE_SIZE) {
        return Err(Error::InvalidArgument);
    }
    let frame = on.domains[target].host_frame(guest_address, Access::READ | Access::WRITE)?;
    let mapping = Mapping { owner: on.domains[target].id, grant: None };
    map_in_window(on, dom0, dom0_address, frame, Access::READ | Access::WRITE, mapping)
}

/// `DomCtlOp::UnmapForeign`: removes dom0's mapping of a guest page at `address`.
pub fn unmap_foreign<P: Platform>(on: &mut Grants<'_, '_, P>, dom0: usize, address: u64) -> Result<u64, Error> {
    unmap_in_window(on, dom0, address, false).map(|_| 0)
}

fn granter_index<P: Platform>(domains: &DomainTable<'_, P>, caller: usize, granter: u64) -> Result<usize, Error> {
    let granter = DomainId::try_from(granter).map_err(|_| Error::InvalidArgument)?;
    let index = domains.slot_of(granter).ok_or(Error::NotFound)?;
    if index == caller || domains[index].ended.is_some() {
        return Err(Error::InvalidArgument);
    }
    Ok(index)
}

/// `GrantOp::Copy` by `caller` of a grant of `granter`, each under its
/// own lock (the granter's keeps the copy apart from maps and unmaps of
/// its grants, which hold every domain's): between a granted page and the
/// caller's memory, within the page.
pub fn copy<P: Platform>(caller: &Domain<P>, granter: &Domain<P>, [_, _, a2, a3, a4]: [u64; 5]) -> Result<u64, Error> {
    let reference = a2 & 0xffff_ffff;
    let offset = (a2 >> 32) & 0xfff;
    let to_grant = a4 & COPY_TO_GRANT != 0;
    let length = a4 & !COPY_TO_GRANT;
    if granter.ended.is_some() || a2 >> 44 != 0 || offset + length > abi::PAGE_SIZE {
        return Err(Error::InvalidArgument);
    }
    // Claimed for the copy, so the granter cannot revoke (and reuse the
    // page) while hv copies from or to it.
    let claimed = claim(granter, reference, caller.id, to_grant)?;
    let frame = claimed.frame;
    let mut buffer = [0u8; abi::PAGE_SIZE as usize];
    let bytes = &mut buffer[..length as usize];
    let copied = if to_grant {
        caller
            .read_guest(a3, bytes)
            .and_then(|()| if P::copy_to(frame + offset, bytes) { Ok(()) } else { Err(Error::BadAddress) })
    } else if P::copy_from(frame + offset, bytes) {
        caller.write_guest(a3, bytes)
    } else {
        Err(Error::BadAddress)
    };
    end_claim::<P>(&claimed);
    copied.map(|()| length)
}

/// `Hypercall::Grant`.
pub fn grant_op<P: Platform>(
    on: &mut Grants<'_, '_, P>,
    caller: usize,
    arguments @ [operation, a1, a2, a3, a4]: [u64; 5],
) -> Result<u64, Error> {
    let operation = GrantOp::from_number(operation).ok_or(Error::InvalidArgument)?;
    let caller_id = on.domains[caller].id;
    match operation {
        // Mica's call: frame 0 only, at the guest's own RAM.
        GrantOp::SetupTable => place_table_frame(on, caller, 0, a1, false).map(|()| 0),
        GrantOp::Map => {
            if !on.domains[caller].privileged {
                return map_in_guest(on.domains, caller, a1, a2, a3, a4 & MAP_WRITABLE != 0);
            }
            if ForeignWindow::page_of(a3).is_none() {
                return Err(Error::InvalidArgument);
            }
            let granter = granter_index(on.domains, caller, a1)?;
            let claimed = claim(&on.domains[granter], a2, caller_id, a4 & MAP_WRITABLE != 0)?;
            let mapping = Mapping { owner: on.domains[granter].id, grant: Some(a2 as u32) };
            let access = if claimed.entry.writable() { Access::READ | Access::WRITE } else { Access::READ };
            map_in_window(on, caller, a3, claimed.frame, access, mapping).inspect_err(|_| end_claim::<P>(&claimed))
        }
        GrantOp::Unmap => {
            if !on.domains[caller].privileged {
                return unmap_in_guest(on, caller, a1);
            }
            let mapping = unmap_in_window(on, caller, a1, true)?;
            if let Some(reference) = mapping.grant {
                release_mapping(on, mapping.owner, reference);
            }
            Ok(0)
        }
        GrantOp::Copy => {
            let granter = granter_index(on.domains, caller, a1)?;
            copy(&on.domains[caller], &on.domains[granter], arguments)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Domain;
    use crate::fake_platform::{self as machine, Fake};
    use abi::grant::{GUEST_MAPPINGS, PERMIT_ACCESS, READONLY};

    /// Guest-physical layout of each test domain: its grant table, the
    /// page it grants, and where a guest maps grants.
    const TABLE: u64 = 0x1000;
    const GRANTED: u64 = 0x2000;
    const MAP_AT: u64 = 0x4000_0000;

    struct Machine {
        domains: DomainTable<'static, Fake>,
        foreign: ForeignWindow,
    }

    impl Machine {
        fn new() -> Machine {
            Machine { domains: crate::domain::tests::table(), foreign: ForeignWindow::with_abi_share() }
        }

        /// A domain with 4 pages of RAM from 0 and its grant table at `TABLE`.
        fn domain(&mut self, id: abi::DomainId) -> usize {
            let mut domain = Domain::<Fake>::new(id, id == abi::DOM0, 16).unwrap();
            domain.populate(0, 4).unwrap();
            let slot = self.domains.insert(domain).ok().unwrap();
            self.call(slot, GrantOp::SetupTable, [TABLE, 0, 0, 0]).unwrap();
            slot
        }

        fn call(&mut self, caller: usize, op: GrantOp, [a1, a2, a3, a4]: [u64; 4]) -> Result<u64, Error> {
            let on = &mut Grants { domains: &mut self.domains, foreign: &mut self.foreign };
            grant_op(on, caller, [op as u64, a1, a2, a3, a4])
        }

        /// Grant `reference` of `granter` for `grantee`, of its page `GRANTED`.
        fn grant(&mut self, granter: usize, reference: u64, grantee: abi::DomainId, flags: u16) {
            let word = flags as u64 | (grantee as u64) << 16 | (GRANTED / abi::PAGE_SIZE) << 32;
            self.domains[granter].write_guest(TABLE + reference * 8, &word.to_le_bytes()).unwrap();
        }

        fn entry_flags(&self, granter: usize, reference: u64) -> u16 {
            let mut bytes = [0; 2];
            self.domains[granter].read_guest(TABLE + reference * 8, &mut bytes).unwrap();
            u16::from_le_bytes(bytes)
        }

        fn read(&self, slot: usize, address: u64) -> Result<u64, Error> {
            let mut bytes = [0; 8];
            self.domains[slot].read_guest(address, &mut bytes).map(|()| u64::from_le_bytes(bytes))
        }
    }

    #[test]
    fn a_guest_maps_a_grant_reads_the_page_and_the_unmap_flushes_before_it_frees_the_grant() {
        let mut machine = Machine::new();
        let granter = machine.domain(1);
        let mapper = machine.domain(2);
        machine.domains[granter].write_guest(GRANTED, &0x5eed_u64.to_le_bytes()).unwrap();
        machine.grant(granter, 3, 2, PERMIT_ACCESS);
        machine.call(mapper, GrantOp::Map, [1, 3, MAP_AT, MAP_WRITABLE]).unwrap();
        assert_eq!(machine.read(mapper, MAP_AT), Ok(0x5eed));
        assert_ne!(machine.entry_flags(granter, 3) & MAPPED, 0, "the granter cannot revoke while mapped");
        machine.domains[mapper].ept_cpus = 0b110;
        machine.call(mapper, GrantOp::Unmap, [MAP_AT, 0, 0, 0]).unwrap();
        // The mapper is not running here: every CPU that ran it is flushed.
        let root = machine.domains[mapper].ept.root();
        assert_eq!(machine::with(|m| m.flushes.clone()), [(root, 0b110)]);
        assert_eq!(machine.entry_flags(granter, 3) & MAPPED, 0);
        assert_eq!(machine.read(mapper, MAP_AT), Err(Error::BadAddress));
        assert_eq!(machine.call(mapper, GrantOp::Unmap, [MAP_AT, 0, 0, 0]), Err(Error::NotFound));
    }

    #[test]
    fn a_grant_is_only_for_its_grantee_and_as_it_permits() {
        let mut machine = Machine::new();
        let granter = machine.domain(1);
        let mapper = machine.domain(2);
        let other = machine.domain(3);
        machine.grant(granter, 0, 2, PERMIT_ACCESS | READONLY);
        machine.grant(granter, 1, 2, 0);
        let map = |machine: &mut Machine, caller, reference, flags| {
            machine.call(caller, GrantOp::Map, [1, reference, MAP_AT, flags])
        };
        assert_eq!(map(&mut machine, other, 0, 0), Err(Error::Permission));
        assert_eq!(map(&mut machine, mapper, 1, 0), Err(Error::Permission));
        assert_eq!(map(&mut machine, mapper, 0, MAP_WRITABLE), Err(Error::Permission));
        assert_eq!(machine.entry_flags(granter, 0) & MAPPED, 0);
        // Read-only it maps, read-only.
        map(&mut machine, mapper, 0, 0).unwrap();
        let (_, access, _) = machine.domains[mapper].ept.translate(&Fake::tables(), MAP_AT).unwrap();
        assert_eq!(access, Access::READ);
        // Bad addresses: unaligned, beyond the limit, over RAM.
        for address in [MAP_AT + 1, abi::grant::GUEST_MAP_LIMIT, 0x3000] {
            assert!(machine.call(mapper, GrantOp::Map, [1, 0, address, 0]).is_err());
        }
        // Nor from itself, nor a reference beyond the table.
        assert_eq!(machine.call(granter, GrantOp::Map, [1, 0, MAP_AT, 0]), Err(Error::InvalidArgument));
        assert_eq!(machine.call(mapper, GrantOp::Map, [1, 512, MAP_AT + 0x1000, 0]), Err(Error::InvalidArgument));
    }

    #[test]
    fn a_guest_maps_at_most_its_share_and_a_refused_map_leaves_nothing_claimed() {
        let mut machine = Machine::new();
        let granter = machine.domain(1);
        let mapper = machine.domain(2);
        for reference in 0..=GUEST_MAPPINGS as u64 {
            machine.grant(granter, reference, 2, PERMIT_ACCESS);
        }
        for reference in 0..GUEST_MAPPINGS as u64 {
            machine.call(mapper, GrantOp::Map, [1, reference, MAP_AT + reference * 0x1000, 0]).unwrap();
        }
        let last = GUEST_MAPPINGS as u64;
        assert_eq!(machine.call(mapper, GrantOp::Map, [1, last, MAP_AT + last * 0x1000, 0]), Err(Error::Busy));
        assert_eq!(machine.entry_flags(granter, last) & MAPPED, 0);
        // Moving the table while its grants are mapped is refused.
        assert_eq!(machine.call(granter, GrantOp::SetupTable, [0x3000, 0, 0, 0]), Err(Error::Busy));
    }

    #[test]
    fn either_end_going_away_unmaps_the_grant_and_frees_it() {
        let mut machine = Machine::new();
        let dom0 = machine.domain(0);
        let granter = machine.domain(1);
        let mapper = machine.domain(2);
        machine.grant(granter, 0, 0, PERMIT_ACCESS);
        machine.grant(granter, 1, 2, PERMIT_ACCESS);
        let window = abi::domctl::FOREIGN_WINDOW_BASE;
        machine.call(dom0, GrantOp::Map, [1, 0, window, 0]).unwrap();
        machine.call(mapper, GrantOp::Map, [1, 1, MAP_AT, 0]).unwrap();
        assert_eq!(machine.call(dom0, GrantOp::Map, [1, 0, window - 0x1000, 0]), Err(Error::InvalidArgument));
        // The granter goes: both mappings go, each mapper flushed.
        end_domain(&mut Grants { domains: &mut machine.domains, foreign: &mut machine.foreign }, granter);
        assert!(machine.read(dom0, window).is_err() && machine.read(mapper, MAP_AT).is_err());
        assert!(!machine.foreign.maps_grants_of(1));
        assert_eq!(machine::with(|m| m.flushes.len()), 2);
        // The mapper goes: the grant it held is free to revoke again.
        machine.grant(granter, 2, 2, PERMIT_ACCESS);
        machine.call(mapper, GrantOp::Map, [1, 2, MAP_AT, 0]).unwrap();
        end_domain(&mut Grants { domains: &mut machine.domains, foreign: &mut machine.foreign }, mapper);
        assert_eq!(machine.entry_flags(granter, 2) & MAPPED, 0);
    }

    #[test]
    fn a_copy_stays_in_the_granted_page_and_releases_its_claim() {
        let mut machine = Machine::new();
        let granter = machine.domain(1);
        let copier = machine.domain(2);
        machine.grant(granter, 0, 2, PERMIT_ACCESS);
        machine.domains[copier].write_guest(0x3000, b"hello").unwrap();
        let into = 16 << 32;
        assert_eq!(machine.call(copier, GrantOp::Copy, [1, into, 0x3000, 5 | COPY_TO_GRANT]), Ok(5));
        let mut copied = [0; 5];
        machine.domains[granter].read_guest(GRANTED + 16, &mut copied).unwrap();
        assert_eq!(&copied, b"hello");
        assert_eq!(machine.entry_flags(granter, 0) & MAPPED, 0);
        // Past the page's end, or an offset beyond 12 bits: refused.
        assert_eq!(machine.call(copier, GrantOp::Copy, [1, 4090 << 32, 0x3000, 8]), Err(Error::InvalidArgument));
        assert_eq!(machine.call(copier, GrantOp::Copy, [1, 1 << 44, 0x3000, 1]), Err(Error::InvalidArgument));
        // A read-only grant is not written.
        machine.grant(granter, 1, 2, PERMIT_ACCESS | READONLY);
        assert_eq!(machine.call(copier, GrantOp::Copy, [1, 1, 0x3000, 1 | COPY_TO_GRANT]), Err(Error::Permission));
        assert_eq!(machine.call(copier, GrantOp::Copy, [1, 1, 0x3000, 5]), Ok(5));
    }

    #[test]
    fn dom0_maps_a_guest_page_in_its_window_only_and_unmaps_it_with_a_flush() {
        let mut machine = Machine::new();
        let dom0 = machine.domain(0);
        let guest = machine.domain(1);
        let window = abi::domctl::FOREIGN_WINDOW_BASE;
        machine.domains[guest].write_guest(GRANTED, &7u64.to_le_bytes()).unwrap();
        let on = &mut Grants { domains: &mut machine.domains, foreign: &mut machine.foreign };
        assert_eq!(map_foreign(on, dom0, guest, GRANTED, window - 0x1000), Err(Error::InvalidArgument));
        assert_eq!(map_foreign(on, dom0, guest, GRANTED + 1, window), Err(Error::InvalidArgument));
        assert_eq!(map_foreign(on, dom0, guest, 0x10_0000, window), Err(Error::BadAddress));
        map_foreign(on, dom0, guest, GRANTED, window).unwrap();
        assert_eq!(map_foreign(on, dom0, guest, 0, window), Err(Error::Busy));
        // A page mapped by MapForeign is not a grant's to unmap, and back.
        assert_eq!(on.call_unmap_grant(dom0, window), Err(Error::NotFound));
        assert_eq!(machine.read(dom0, window), Ok(7));
        let on = &mut Grants { domains: &mut machine.domains, foreign: &mut machine.foreign };
        unmap_foreign(on, dom0, window).unwrap();
        assert_eq!(unmap_foreign(on, dom0, window), Err(Error::NotFound));
        assert_eq!(machine.read(dom0, window), Err(Error::BadAddress));
        assert_eq!(machine::with(|m| m.flushes.len()), 1);
    }

    impl Grants<'_, '_, Fake> {
        fn call_unmap_grant(&mut self, caller: usize, address: u64) -> Result<u64, Error> {
            grant_op(self, caller, [GrantOp::Unmap as u64, address, 0, 0, 0])
        }
    }
}
