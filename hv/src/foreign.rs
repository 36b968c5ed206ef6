//! dom0's foreign window, page by page: whose page each window page holds
//! (and through which grant), and how many pages of each domain are mapped;
//! and the few grants a guest maps itself ([`GuestGrants`]).
//!
//! Invariant: a domain never has more than the window's share
//! (`abi::domctl::FOREIGN_SHARE_PAGES`) of its pages recorded here, and at
//! most `OWNERS` domains have any. hv records a mapping before it changes
//! EPT and forgets it after, so every EPT mapping in the window is recorded
//! and its owner's frames are never freed while dom0 maps them.

use abi::domctl::{FOREIGN_SHARE_PAGES, FOREIGN_WINDOW_BASE, FOREIGN_WINDOW_PAGES};
use abi::{DomainId, Error, PAGE_SIZE};

/// Pages in the window.
pub const PAGES: usize = FOREIGN_WINDOW_PAGES as usize;

/// A page of another domain mapped into dom0's foreign window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Whose page it is (the granter, or the guest being built).
    pub owner: DomainId,
    /// The grant reference it was mapped through (None: `MapForeign`).
    pub grant: Option<u32>,
}

/// The window's records. `OWNERS`: most domains with pages mapped at once.
pub struct ForeignWindow<const OWNERS: usize> {
    pages: [Option<Mapping>; PAGES],
    /// Pages mapped per domain: (owner, count); count 0 = a free entry.
    counts: [(DomainId, u32); OWNERS],
    /// Of those, the grant mappings (same entry as in `counts`): a grant
    /// is looked for in the window only when its owner has one mapped.
    grant_counts: [u32; OWNERS],
    /// Most pages of one domain mapped at once.
    share: u32,
}

impl<const OWNERS: usize> ForeignWindow<OWNERS> {
    /// An empty window that lets each domain have `share` pages mapped.
    pub const fn new(share: u32) -> Self {
        ForeignWindow { pages: [None; PAGES], counts: [(0, 0); OWNERS], grant_counts: [0; OWNERS], share }
    }

    /// An empty window with the ABI's share.
    pub const fn with_abi_share() -> Self {
        Self::new(FOREIGN_SHARE_PAGES as u32)
    }

    /// The window page at dom0 guest-physical `address`: None unless it is
    /// page-aligned and inside the window.
    pub fn page_of(address: u64) -> Option<usize> {
        if !address.is_multiple_of(PAGE_SIZE) {
            return None;
        }
        let page = address.checked_sub(FOREIGN_WINDOW_BASE)? / PAGE_SIZE;
        (page < PAGES as u64).then_some(page as usize)
    }

    /// dom0's guest-physical address of window page `page`.
    pub fn address_of(page: usize) -> u64 {
        FOREIGN_WINDOW_BASE + page as u64 * PAGE_SIZE
    }

    /// Pages of `owner` mapped now.
    pub fn mapped_by(&self, owner: DomainId) -> u32 {
        self.entry_of(owner).map_or(0, |entry| self.counts[entry].1)
    }

    /// Grants of `owner` mapped now.
    fn grants_mapped_by(&self, owner: DomainId) -> u32 {
        self.entry_of(owner).map_or(0, |entry| self.grant_counts[entry])
    }

    /// `owner`'s entry in `counts`, if it has pages mapped.
    fn entry_of(&self, owner: DomainId) -> Option<usize> {
        self.counts.iter().position(|(id, count)| *count > 0 && *id == owner)
    }

    /// Records `mapping` at `address`. Refused with `InvalidArgument` if the
    /// address is not a window page, `Busy` if that page is in use, if its
    /// owner has its share mapped already, or if `OWNERS` other domains
    /// have pages mapped.
    pub fn insert(&mut self, address: u64, mapping: Mapping) -> Result<(), Error> {
        let page = Self::page_of(address).ok_or(Error::InvalidArgument)?;
        if self.pages[page].is_some() {
            return Err(Error::Busy);
        }
        let entry = match self.entry_of(mapping.owner) {
            Some(entry) => entry,
            None => self.counts.iter().position(|(_, count)| *count == 0).ok_or(Error::Busy)?,
        };
        let (_, count) = self.counts[entry];
        if count >= self.share {
            return Err(Error::Busy);
        }
        if count == 0 {
            self.grant_counts[entry] = 0;
        }
        self.counts[entry] = (mapping.owner, count + 1);
        self.grant_counts[entry] += u32::from(mapping.grant.is_some());
        self.pages[page] = Some(mapping);
        Ok(())
    }

    /// Forgets the mapping at `address` if it is a grant mapping (`grant`)
    /// or a `MapForeign` one (`!grant`), as asked; returns it.
    pub fn remove(&mut self, address: u64, grant: bool) -> Option<Mapping> {
        let page = Self::page_of(address)?;
        let mapping = self.pages[page].filter(|mapping| mapping.grant.is_some() == grant)?;
        self.pages[page] = None;
        if let Some(entry) = self.entry_of(mapping.owner) {
            self.counts[entry].1 -= 1;
            self.grant_counts[entry] -= u32::from(grant);
        }
        Some(mapping)
    }

    /// Whether grant `grant` of `owner` is mapped anywhere in the window.
    pub fn maps_grant(&self, owner: DomainId, grant: u32) -> bool {
        self.grants_mapped_by(owner) > 0
            && self.pages.iter().flatten().any(|m| m.owner == owner && m.grant == Some(grant))
    }

    /// Whether any grant of `owner` is mapped.
    pub fn maps_grants_of(&self, owner: DomainId) -> bool {
        self.grants_mapped_by(owner) > 0
    }

    /// Forgets every mapping of `owner`, calling `unmapped` with each one's
    /// address; returns how many there were.
    pub fn remove_owner(&mut self, owner: DomainId, mut unmapped: impl FnMut(u64)) -> usize {
        if self.mapped_by(owner) == 0 {
            return 0;
        }
        let mut removed = 0;
        for (page, slot) in self.pages.iter_mut().enumerate() {
            if slot.is_some_and(|mapping| mapping.owner == owner) {
                *slot = None;
                unmapped(Self::address_of(page));
                removed += 1;
            }
        }
        if let Some(entry) = self.entry_of(owner) {
            self.counts[entry].1 = 0;
            self.grant_counts[entry] = 0;
        }
        removed
    }

    /// Pages mapped in all.
    pub fn len(&self) -> usize {
        self.counts.iter().map(|(_, count)| *count as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A grant a guest (a domain other than dom0) has mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestGrant {
    /// Guest-physical address of the mapping in the guest.
    pub address: u64,
    /// The granter.
    pub owner: DomainId,
    /// The grant reference.
    pub grant: u32,
}

/// The grants one guest has mapped, at most [`abi::grant::GUEST_MAPPINGS`].
/// hv records a mapping before it changes the guest's EPT and forgets it
/// after, so every grant mapping in a guest's EPT is here.
#[derive(Debug, Default)]
pub struct GuestGrants {
    mapped: arrayvec::ArrayVec<GuestGrant, { abi::grant::GUEST_MAPPINGS }>,
}

impl GuestGrants {
    /// No grants mapped.
    pub const fn new() -> GuestGrants {
        GuestGrants { mapped: arrayvec::ArrayVec::new_const() }
    }

    /// Records `grant`. `InvalidArgument` for an address that is not
    /// page-aligned or not below `GUEST_MAP_LIMIT`; `Busy` when something
    /// is mapped there already or the guest has its most grants mapped.
    pub fn insert(&mut self, grant: GuestGrant) -> Result<(), Error> {
        if !grant.address.is_multiple_of(PAGE_SIZE) || grant.address >= abi::grant::GUEST_MAP_LIMIT {
            return Err(Error::InvalidArgument);
        }
        if self.mapped.iter().any(|m| m.address == grant.address) {
            return Err(Error::Busy);
        }
        self.mapped.try_push(grant).map_err(|_| Error::Busy)
    }

    /// Forgets the mapping at `address`; returns it.
    pub fn remove(&mut self, address: u64) -> Option<GuestGrant> {
        let index = self.mapped.iter().position(|m| m.address == address)?;
        Some(self.mapped.swap_remove(index))
    }

    /// Whether grant `grant` of `owner` is mapped here.
    pub fn maps_grant(&self, owner: DomainId, grant: u32) -> bool {
        self.mapped.iter().any(|m| m.owner == owner && m.grant == grant)
    }

    /// Whether any grant of `owner` is mapped here.
    pub fn maps_grants_of(&self, owner: DomainId) -> bool {
        self.mapped.iter().any(|m| m.owner == owner)
    }

    /// Forgets the mappings of `owner`'s grants, calling `unmapped` with
    /// each; returns how many there were.
    pub fn remove_owner(&mut self, owner: DomainId, mut unmapped: impl FnMut(GuestGrant)) -> usize {
        let before = self.mapped.len();
        self.mapped.retain(|m| {
            let keep = m.owner != owner;
            if !keep {
                unmapped(*m);
            }
            keep
        });
        before - self.mapped.len()
    }

    /// Forgets every mapping, calling `unmapped` with each (the guest is
    /// being destroyed).
    pub fn clear(&mut self, unmapped: impl FnMut(GuestGrant)) {
        self.mapped.drain(..).for_each(unmapped);
    }

    /// Grants mapped now.
    pub fn len(&self) -> usize {
        self.mapped.len()
    }

    pub fn is_empty(&self) -> bool {
        self.mapped.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_random::XorShift;

    fn guest_grant(address: u64, owner: DomainId, grant: u32) -> GuestGrant {
        GuestGrant { address, owner, grant }
    }

    #[test]
    fn a_guest_maps_at_most_its_limit_at_free_aligned_addresses() {
        let mut grants = GuestGrants::new();
        assert_eq!(grants.insert(guest_grant(0x1001, 2, 0)), Err(Error::InvalidArgument));
        assert_eq!(grants.insert(guest_grant(abi::grant::GUEST_MAP_LIMIT, 2, 0)), Err(Error::InvalidArgument));
        for index in 0..abi::grant::GUEST_MAPPINGS as u64 {
            assert_eq!(grants.insert(guest_grant(0x4000_0000 + index * PAGE_SIZE, 2, index as u32)), Ok(()));
        }
        assert_eq!(grants.insert(guest_grant(0x5000_0000, 3, 0)), Err(Error::Busy));
        assert_eq!(grants.remove(0x4000_0000), Some(guest_grant(0x4000_0000, 2, 0)));
        assert_eq!(grants.remove(0x4000_0000), None);
        assert_eq!(grants.insert(guest_grant(0x4000_1000, 3, 0)), Err(Error::Busy), "address in use");
        assert_eq!(grants.insert(guest_grant(0x5000_0000, 3, 0)), Ok(()));
        assert_eq!(grants.len(), abi::grant::GUEST_MAPPINGS);
    }

    #[test]
    fn guest_grants_are_found_and_removed_by_owner() {
        let mut grants = GuestGrants::new();
        grants.insert(guest_grant(0x10_0000, 2, 7)).unwrap();
        grants.insert(guest_grant(0x10_1000, 3, 7)).unwrap();
        grants.insert(guest_grant(0x10_2000, 2, 9)).unwrap();
        assert!(grants.maps_grant(2, 7) && grants.maps_grant(3, 7) && !grants.maps_grant(3, 9));
        assert!(grants.maps_grants_of(2) && !grants.maps_grants_of(4));
        let mut unmapped = Vec::new();
        assert_eq!(grants.remove_owner(2, |m| unmapped.push(m.address)), 2);
        unmapped.sort();
        assert_eq!(unmapped, [0x10_0000, 0x10_2000]);
        assert!(!grants.maps_grants_of(2) && grants.maps_grant(3, 7));
        let mut cleared = Vec::new();
        grants.clear(|m| cleared.push((m.owner, m.grant)));
        assert_eq!(cleared, [(3, 7)]);
        assert!(grants.is_empty());
    }

    type Window = ForeignWindow<4>;

    fn grant(owner: DomainId, grant: u32) -> Mapping {
        Mapping { owner, grant: Some(grant) }
    }

    fn builder(owner: DomainId) -> Mapping {
        Mapping { owner, grant: None }
    }

    fn at(page: usize) -> u64 {
        Window::address_of(page)
    }

    #[test]
    fn only_window_pages_are_accepted() {
        let mut window = Box::new(Window::new(8));
        assert_eq!(Window::page_of(FOREIGN_WINDOW_BASE), Some(0));
        assert_eq!(Window::page_of(FOREIGN_WINDOW_BASE + 1), None);
        assert_eq!(Window::page_of(FOREIGN_WINDOW_BASE - PAGE_SIZE), None);
        assert_eq!(Window::page_of(at(PAGES - 1)), Some(PAGES - 1));
        assert_eq!(Window::page_of(at(PAGES)), None);
        assert_eq!(Window::page_of(!0xfff), None);
        assert_eq!(window.insert(at(PAGES), grant(1, 1)), Err(Error::InvalidArgument));
        assert_eq!(window.insert(at(0) + 8, grant(1, 1)), Err(Error::InvalidArgument));
        assert!(window.is_empty());
    }

    #[test]
    fn a_page_holds_one_mapping() {
        let mut window = Box::new(Window::new(8));
        window.insert(at(3), grant(1, 7)).unwrap();
        assert_eq!(window.insert(at(3), grant(2, 7)), Err(Error::Busy));
        assert_eq!(window.mapped_by(1), 1);
        assert_eq!(window.mapped_by(2), 0);
    }

    #[test]
    fn one_domain_cannot_map_more_than_its_share_and_others_keep_theirs() {
        let mut window = Box::new(Window::new(8));
        for page in 0..8 {
            window.insert(at(page), grant(5, page as u32)).unwrap();
        }
        // Grants and builder mappings count alike.
        assert_eq!(window.insert(at(8), grant(5, 100)), Err(Error::Busy));
        assert_eq!(window.insert(at(8), builder(5)), Err(Error::Busy));
        assert_eq!(window.mapped_by(5), 8);
        // Another domain still gets its whole share.
        for page in 8..16 {
            window.insert(at(page), builder(6)).unwrap();
        }
        assert_eq!(window.insert(at(16), builder(6)), Err(Error::Busy));
        // Unmapping one frees one page of the share.
        assert_eq!(window.remove(at(2), true), Some(grant(5, 2)));
        window.insert(at(20), grant(5, 100)).unwrap();
        assert_eq!(window.insert(at(21), grant(5, 101)), Err(Error::Busy));
    }

    #[test]
    fn remove_matches_the_kind_of_mapping() {
        let mut window = Box::new(Window::new(8));
        window.insert(at(0), grant(1, 9)).unwrap();
        window.insert(at(1), builder(1)).unwrap();
        assert_eq!(window.remove(at(0), false), None);
        assert_eq!(window.remove(at(1), true), None);
        assert_eq!(window.remove(at(2), true), None);
        assert_eq!(window.remove(at(0) + 1, true), None);
        assert_eq!(window.mapped_by(1), 2);
        assert_eq!(window.remove(at(0), true), Some(grant(1, 9)));
        assert_eq!(window.remove(at(1), false), Some(builder(1)));
        assert_eq!(window.mapped_by(1), 0);
        assert!(window.is_empty());
    }

    #[test]
    fn grants_are_found_by_owner_and_reference() {
        let mut window = Box::new(Window::new(8));
        window.insert(at(0), grant(1, 9)).unwrap();
        window.insert(at(1), grant(1, 9)).unwrap();
        window.insert(at(2), builder(2)).unwrap();
        assert!(window.maps_grant(1, 9));
        assert!(!window.maps_grant(1, 8));
        assert!(!window.maps_grant(2, 9));
        assert!(window.maps_grants_of(1));
        assert!(!window.maps_grants_of(2));
        window.remove(at(0), true);
        assert!(window.maps_grant(1, 9));
        window.remove(at(1), true);
        assert!(!window.maps_grant(1, 9));
        assert!(!window.maps_grants_of(1));
    }

    #[test]
    fn removing_an_owner_unmaps_all_its_pages_and_only_its() {
        let mut window = Box::new(Window::new(8));
        window.insert(at(0), grant(1, 1)).unwrap();
        window.insert(at(5), builder(1)).unwrap();
        window.insert(at(6), builder(2)).unwrap();
        let mut unmapped = Vec::new();
        assert_eq!(window.remove_owner(1, |address| unmapped.push(address)), 2);
        assert_eq!(unmapped, [at(0), at(5)]);
        assert_eq!(window.mapped_by(1), 0);
        assert_eq!(window.mapped_by(2), 1);
        assert_eq!(window.remove_owner(1, |_| panic!("nothing left")), 0);
        // Its share is whole again.
        for page in 10..18 {
            window.insert(at(page), grant(1, page as u32)).unwrap();
        }
    }

    #[test]
    fn at_most_owners_domains_have_pages_mapped() {
        let mut window = Box::new(Window::new(8));
        for owner in 1..=4 {
            window.insert(at(owner as usize), builder(owner)).unwrap();
        }
        assert_eq!(window.insert(at(10), builder(5)), Err(Error::Busy));
        window.remove(at(2), false);
        window.insert(at(10), builder(5)).unwrap();
        assert_eq!(window.mapped_by(5), 1);
    }

    #[test]
    fn the_abi_window_holds_a_full_share_for_every_guest() {
        // 63 guests (hv's 64 domains less dom0), each at its full share.
        let mut window = Box::new(ForeignWindow::<64>::with_abi_share());
        let mut page = 0;
        for owner in 1..=63 {
            for reference in 0..FOREIGN_SHARE_PAGES as u32 {
                window.insert(at(page), grant(owner, reference)).unwrap();
                page += 1;
            }
            assert_eq!(window.insert(at(page), grant(owner, 999)), Err(Error::Busy));
        }
        assert_eq!(window.len(), 63 * FOREIGN_SHARE_PAGES as usize);
    }

    /// Random inserts and removes against a plain model: the counts always
    /// match, no domain passes its share, and both outcomes are reached.
    #[test]
    fn random_operations_match_a_model() {
        let mut window = Box::new(Window::new(6));
        let mut model: Vec<Option<Mapping>> = vec![None; 64];
        let mut random = XorShift(0x5eed_f00d_1234_5678);
        let (mut accepted, mut refused_share) = (0, 0);
        for _ in 0..20_000 {
            let page = (random.next() % 64) as usize;
            let owner = 1 + (random.next() % 5) as DomainId;
            match random.next() % 16 {
                0..8 => {
                    let mapping =
                        if random.next().is_multiple_of(2) { builder(owner) } else { grant(owner, page as u32) };
                    let held = model.iter().flatten().filter(|m| m.owner == owner).count();
                    let owners = {
                        let mut ids: Vec<_> = model.iter().flatten().map(|m| m.owner).collect();
                        ids.sort_unstable();
                        ids.dedup();
                        ids
                    };
                    let expected =
                        if model[page].is_some() || held >= 6 || (!owners.contains(&owner) && owners.len() >= 4) {
                            Err(Error::Busy)
                        } else {
                            Ok(())
                        };
                    assert_eq!(window.insert(at(page), mapping), expected);
                    if expected.is_ok() {
                        model[page] = Some(mapping);
                        accepted += 1;
                    } else if model[page].is_none() && held >= 6 {
                        refused_share += 1;
                    }
                }
                8..15 => {
                    let grant_kind = random.next().is_multiple_of(2);
                    let expected = model[page].filter(|m| m.grant.is_some() == grant_kind);
                    assert_eq!(window.remove(at(page), grant_kind), expected);
                    if expected.is_some() {
                        model[page] = None;
                    }
                }
                _ => {
                    let removed = window.remove_owner(owner, |_| {});
                    let expected = model.iter().flatten().filter(|m| m.owner == owner).count();
                    assert_eq!(removed, expected);
                    model.iter_mut().filter(|m| m.is_some_and(|m| m.owner == owner)).for_each(|m| *m = None);
                }
            }
            for owner in 1..=5 {
                let held = model.iter().flatten().filter(|m| m.owner == owner).count();
                assert_eq!(window.mapped_by(owner) as usize, held);
                assert!(held <= 6);
                let grants = || model.iter().flatten().filter(move |m| m.owner == owner && m.grant.is_some());
                assert_eq!(window.maps_grants_of(owner), grants().count() > 0);
                let grant = (random.next() % 64) as u32;
                assert_eq!(window.maps_grant(owner, grant), grants().any(|m| m.grant == Some(grant)));
            }
        }
        assert!(accepted > 1000 && refused_share > 100, "accepted {accepted}, refused for share {refused_share}");
    }
}
