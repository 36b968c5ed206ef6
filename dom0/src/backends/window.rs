//! dom0's foreign window as the toolstack and the back ends hand it out:
//! which guest each window page holds a page of, and what each guest may
//! still have mapped.
//!
//! hv lets dom0 map at most `abi::domctl::FOREIGN_SHARE_PAGES` pages of one
//! guest (its share), and the window holds a full share for every guest
//! dom0 can run, so guests never compete for window pages. Within its
//! share a guest's pages are budgeted here:
//!
//! | use                  | pages                | taken                      |
//! |----------------------|----------------------|----------------------------|
//! | rings                | at most [`RING_PAGES`] | console and store when it is built; block ring and vif rings when they connect |
//! | persistent grants    | at most [`PERSISTENT_GRANTS`] | the block back end, first time it sees a grant |
//!
//! Rings may use the whole share, persistent grants only what the rings
//! leave, so however many distinct grants a front end names (the back end
//! copies through hv beyond the budget), the guest's rings still fit: a
//! disk cannot keep its vif from connecting, nor any guest keep dom0 from
//! building another.

use abi::DomainId;
use abi::domctl::{FOREIGN_SHARE_PAGES, FOREIGN_WINDOW_BASE};

/// Pages of one guest hv lets dom0 map at once.
pub const SHARE: usize = FOREIGN_SHARE_PAGES as usize;
/// A guest's rings: console, store, block ring, vif transmit and receive.
pub const RING_PAGES: usize = 5;
/// Grants of one guest dom0 keeps mapped for its disk: the rest of its
/// share. pv-drivers' front end uses 64 pages (8 requests of 8 segments),
/// Linux's blkfront 264 to read 1 MiB at once (8 indirect requests of 32
/// pages and their indirect pages), so their steady state runs in place;
/// beyond it (Linux names up to 1,056: 32 requests of 33 pages) a request
/// takes one disk command through a bounce buffer and grant copies.
pub const PERSISTENT_GRANTS: usize = SHARE - RING_PAGES;
const _: () = assert!(RING_PAGES + PERSISTENT_GRANTS <= SHARE);

/// What a window page is used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// A ring page (console, store, block, vif).
    Ring,
    /// A page a guest granted for its disk's I/O, kept mapped.
    PersistentGrant,
}

/// Pages one guest holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub rings: usize,
    pub grants: usize,
}

impl Held {
    fn total(&self) -> usize {
        self.rings + self.grants
    }
}

/// The window's `SLOTS` pages, shared by at most `GUESTS` guests.
pub struct Window<const SLOTS: usize, const GUESTS: usize> {
    pages: [Option<(DomainId, Use)>; SLOTS],
    /// Pages held per guest; an entry with nothing held is free.
    held: [(DomainId, Held); GUESTS],
}

impl<const SLOTS: usize, const GUESTS: usize> Window<SLOTS, GUESTS> {
    /// The window holds every guest's whole share, so no guest's pages can
    /// take another's.
    const EVERY_SHARE_FITS: () = assert!(SLOTS >= GUESTS * SHARE);

    /// An empty window.
    pub const fn new() -> Self {
        let () = Self::EVERY_SHARE_FITS;
        const NOTHING: Held = Held { rings: 0, grants: 0 };
        Window { pages: [None; SLOTS], held: [(0, NOTHING); GUESTS] }
    }

    /// dom0's guest-physical address of window page `slot`.
    pub const fn address(slot: usize) -> u64 {
        FOREIGN_WINDOW_BASE + slot as u64 * abi::PAGE_SIZE
    }

    /// What `guest` holds now.
    pub fn held(&self, guest: DomainId) -> Held {
        self.entry(guest).map_or(Held::default(), |index| self.held[index].1)
    }

    fn entry(&self, guest: DomainId) -> Option<usize> {
        self.held.iter().position(|(id, held)| *id == guest && held.total() > 0)
    }

    /// A free window page for a page of `guest`, or None when its budget
    /// for `kind` is spent (or, which the sizes rule out, the window is full).
    pub fn take(&mut self, guest: DomainId, kind: Use) -> Option<usize> {
        let index = match self.entry(guest) {
            Some(index) => index,
            None => self.held.iter().position(|(_, held)| held.total() == 0)?,
        };
        let held = self.held[index].1;
        let allowed = match kind {
            Use::Ring => held.total() < SHARE,
            // Room stays for every ring the guest may still connect.
            Use::PersistentGrant => held.grants < PERSISTENT_GRANTS && held.grants + held.rings.max(RING_PAGES) < SHARE,
        };
        if !allowed {
            return None;
        }
        let slot = self.pages.iter().position(Option::is_none)?;
        self.pages[slot] = Some((guest, kind));
        let counts = &mut self.held[index];
        counts.0 = guest;
        match kind {
            Use::Ring => counts.1.rings += 1,
            Use::PersistentGrant => counts.1.grants += 1,
        }
        Some(slot)
    }

    /// Gives window page `slot` back (nothing if it is free or out of range).
    pub fn release(&mut self, slot: usize) {
        let Some((guest, kind)) = self.pages.get_mut(slot).and_then(Option::take) else { return };
        if let Some(index) = self.entry(guest) {
            let held = &mut self.held[index].1;
            match kind {
                Use::Ring => held.rings -= 1,
                Use::PersistentGrant => held.grants -= 1,
            }
        }
    }

    /// Gives back every page `guest` still holds (when it is destroyed);
    /// returns how many.
    pub fn release_guest(&mut self, guest: DomainId) -> usize {
        let Some(index) = self.entry(guest) else { return 0 };
        let mut released = 0;
        for page in self.pages.iter_mut() {
            if page.is_some_and(|(id, _)| id == guest) {
                *page = None;
                released += 1;
            }
        }
        self.held[index].1 = Held::default();
        released
    }

    /// The first window page not in use, left free (for `selftest`, which
    /// must ask hv for a page beyond a guest's share).
    pub fn first_free(&self) -> Option<usize> {
        self.pages.iter().position(Option::is_none)
    }

    /// Window pages not in use.
    pub fn free(&self) -> usize {
        self.pages.iter().filter(|page| page.is_none()).count()
    }
}

impl<const SLOTS: usize, const GUESTS: usize> Default for Window<SLOTS, GUESTS> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_random::XorShift;

    /// dom0's real sizes: the ABI window, 63 guests.
    type Full = Window<{ abi::domctl::FOREIGN_WINDOW_PAGES as usize }, 63>;
    type Small = Window<{ 3 * SHARE }, 3>;

    #[test]
    fn persistent_grants_stop_at_the_budget_and_leave_room_for_rings() {
        let mut window = Box::new(Small::new());
        assert!(window.take(1, Use::Ring).is_some());
        let mut grants = 0;
        while window.take(1, Use::PersistentGrant).is_some() {
            grants += 1;
        }
        assert_eq!(grants, PERSISTENT_GRANTS);
        // The rings it has not connected yet still fit.
        for _ in 1..RING_PAGES {
            assert!(window.take(1, Use::Ring).is_some());
        }
        assert_eq!(window.held(1), Held { rings: RING_PAGES, grants: PERSISTENT_GRANTS });
        // Letting go of one grant makes room for one more.
        let slot = (0..3 * SHARE).find(|&slot| window.pages[slot] == Some((1, Use::PersistentGrant))).unwrap();
        window.release(slot);
        assert!(window.take(1, Use::PersistentGrant).is_some());
        assert!(window.take(1, Use::PersistentGrant).is_none());
    }

    #[test]
    fn rings_take_at_most_the_share() {
        let mut window = Box::new(Small::new());
        for _ in 0..SHARE {
            assert!(window.take(2, Use::Ring).is_some());
        }
        assert_eq!(window.take(2, Use::Ring), None);
        assert_eq!(window.take(2, Use::PersistentGrant), None);
        // Another guest is untouched.
        assert!(window.take(3, Use::Ring).is_some());
    }

    #[test]
    fn a_guest_with_every_grant_mapped_cannot_keep_a_new_guest_from_being_built() {
        let mut window = Box::new(Full::new());
        // 62 guests with their rings and a full disk cache each.
        for guest in 1..=62 {
            for _ in 0..RING_PAGES {
                window.take(guest, Use::Ring).unwrap();
            }
            while window.take(guest, Use::PersistentGrant).is_some() {}
            assert_eq!(window.held(guest).grants, PERSISTENT_GRANTS);
        }
        // The 63rd still gets its console, store and every other ring.
        for _ in 0..RING_PAGES {
            assert!(window.take(100, Use::Ring).is_some());
        }
        assert_eq!(window.held(100).rings, RING_PAGES);
    }

    #[test]
    fn slots_are_distinct_and_addressed_in_the_window() {
        let mut window = Box::new(Small::new());
        let a = window.take(1, Use::Ring).unwrap();
        let b = window.take(2, Use::Ring).unwrap();
        assert_ne!(a, b);
        let free = window.first_free().unwrap();
        assert!(free != a && free != b);
        assert_eq!(window.first_free(), Some(free));
        assert_eq!(Small::address(1) - Small::address(0), abi::PAGE_SIZE);
        assert_eq!(Small::address(0), FOREIGN_WINDOW_BASE);
        window.release(a);
        window.release(a);
        window.release(10_000);
        assert_eq!(window.held(1), Held::default());
        assert_eq!(window.held(2), Held { rings: 1, grants: 0 });
    }

    #[test]
    fn destroying_a_guest_returns_all_its_pages() {
        let mut window = Box::new(Small::new());
        let free = window.free();
        for _ in 0..3 {
            window.take(7, Use::Ring).unwrap();
        }
        for _ in 0..10 {
            window.take(7, Use::PersistentGrant).unwrap();
        }
        window.take(8, Use::Ring).unwrap();
        assert_eq!(window.release_guest(7), 13);
        assert_eq!(window.held(7), Held::default());
        assert_eq!(window.free(), free - 1);
        assert_eq!(window.release_guest(7), 0);
    }

    #[test]
    fn at_most_guests_guests_hold_pages() {
        let mut window = Box::new(Small::new());
        for guest in 1..=3 {
            window.take(guest, Use::Ring).unwrap();
        }
        assert_eq!(window.take(4, Use::Ring), None);
        window.release_guest(2);
        assert!(window.take(4, Use::Ring).is_some());
    }

    /// Random takes and releases: no guest passes its share or its grant
    /// budget, the counts match the pages, and both outcomes are reached.
    #[test]
    fn random_operations_keep_every_budget() {
        let mut window = Box::new(Small::new());
        let mut random = XorShift(0x0dd_ba11_cafe_f00d);
        let (mut taken, mut refused) = (0, 0);
        for _ in 0..20_000 {
            let guest = 1 + random.below(3) as DomainId;
            // Takes outnumber releases and a guest goes rarely, so guests
            // reach their budgets (a share is hundreds of pages).
            match random.below(8) {
                0..5 => {
                    let kind = if random.below(4) == 0 { Use::Ring } else { Use::PersistentGrant };
                    match window.take(guest, kind) {
                        Some(_) => taken += 1,
                        None => refused += 1,
                    }
                }
                5..7 => window.release(random.below(3 * SHARE)),
                _ => {
                    if random.below(400) == 0 {
                        window.release_guest(guest);
                    }
                }
            }
            for guest in 1..=3 {
                let held = window.held(guest);
                let rings = window.pages.iter().filter(|p| **p == Some((guest, Use::Ring))).count();
                let grants = window.pages.iter().filter(|p| **p == Some((guest, Use::PersistentGrant))).count();
                assert_eq!(held, Held { rings, grants });
                assert!(held.total() <= SHARE && held.grants <= PERSISTENT_GRANTS);
                assert!(held.grants <= SHARE - RING_PAGES);
            }
        }
        assert!(taken > 1000 && refused > 100, "taken {taken}, refused {refused}");
    }
}
