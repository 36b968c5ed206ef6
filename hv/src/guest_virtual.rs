//! Guest-virtual addresses: the pointer arguments of Xen's hypercalls,
//! which hv translates through the calling vCPU's own page tables as they
//! are at the call, as Xen does for HVM and PVH guests.
//!
//! A walk reads up to four guest page-table entries, each in a guest
//! frame that the domain's EPT translates, and then the EPT again for the
//! page found: five EPT walks. Guests pass most arguments in the same few
//! places (a kernel's stack), so each vCPU keeps its last walk
//! ([`Walk`]): the host addresses and values of the entries it read, the
//! host page it found, and the EPT's unmap count ([`PageTable::unmaps`]).
//! A later call on the same page with the same CR3 reuses it only after
//! reading those entries again and finding them unchanged, and only while
//! the EPT has had no unmap since: then a fresh walk would read the same
//! entries from the same frames and end in the same page, so the cache
//! never answers what a walk would not (a guest that edits its tables
//! between two calls gets the new translation, flushed TLB or not).

use core::cell::RefCell;

use abi::xen::Errno;

use crate::domain::Domain;
use crate::paging::Access;
use crate::platform::Platform;

/// How the calling vCPU translated addresses at the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressSpace {
    /// Paging off: guest-virtual is guest-physical.
    Physical,
    /// 4-level paging (long mode) rooted at guest-physical `cr3`, for
    /// vCPU `vcpu` of the domain (whose [`Walk`] it uses).
    LongMode { cr3: u64, vcpu: usize },
    /// A mode hypercall arguments cannot be read in (32-bit paging, 5-level
    /// paging): every pointer argument is `-EFAULT`.
    Unsupported,
}

/// Page-table entry bits (SDM Vol. 3A 4.5).
pub const PRESENT: u64 = 1;
pub const WRITABLE: u64 = 1 << 1;
pub const LARGE: u64 = 1 << 7;
/// Bits 12..52 of an entry: the next table's or the page's frame.
const FRAME: u64 = 0x000f_ffff_ffff_f000;
const PAGE_MASK: u64 = abi::PAGE_SIZE - 1;

/// One vCPU's last page walk (see the module docs), empty until its first.
#[derive(Clone, Copy, Debug)]
pub struct Walk {
    /// The walk is filled in.
    valid: bool,
    /// CR3 it started from.
    cr3: u64,
    /// The guest-virtual page it translated.
    page: u64,
    /// The EPT's unmap count when it was taken.
    unmaps: u64,
    /// Host address and value of each guest entry it read, root first;
    /// a walk that ended early (a large page) repeats its last entry, so
    /// a check always reads four.
    entries: [(u64, u64); 4],
    /// Host-physical address of the page.
    host: u64,
    /// Every entry on the way and the EPT allow writes to the page.
    writable: bool,
}

impl Walk {
    /// No walk yet.
    pub const EMPTY: Walk =
        Walk { valid: false, cr3: 0, page: 0, unmaps: 0, entries: [(0, 0); 4], host: 0, writable: false };
}

impl AddressSpace {
    /// The guest-physical address of guest-virtual `address`, if the
    /// vCPU's page tables map it (writable, when `write`) to the domain's
    /// memory (which its EPT lets it write, when `write`).
    pub fn translate<P: Platform>(&self, domain: &Domain<P>, address: u64, write: bool) -> Result<u64, Errno> {
        match *self {
            AddressSpace::Physical => self.host(domain, address, write).map(|_| address),
            AddressSpace::LongMode { cr3, .. } => Ok(walk(domain, cr3, address, write)?.1),
            AddressSpace::Unsupported => Err(Errno::Efault),
        }
    }

    /// The host-physical address of guest-virtual `address`, if the page
    /// tables map it (writable, when `write`) to the domain's memory
    /// (which its EPT lets it write, when `write`). Inline: the cached
    /// case is the hot path of Xen's calls.
    #[inline(always)]
    fn host<P: Platform>(&self, domain: &Domain<P>, address: u64, write: bool) -> Result<u64, Errno> {
        let (cr3, vcpu) = match *self {
            AddressSpace::Physical => {
                let access = if write { Access::WRITE } else { Access::READ };
                let frame = domain.host_frame(address, access).map_err(|_| Errno::Efault)?;
                return Ok(frame | address & PAGE_MASK);
            }
            AddressSpace::LongMode { cr3, vcpu } => (cr3, vcpu),
            AddressSpace::Unsupported => return Err(Errno::Efault),
        };
        let cache: Option<&RefCell<Walk>> = domain.vcpus.get(vcpu).map(|slot| &slot.walk);
        if let Some(Ok(cached)) = cache.map(RefCell::try_borrow)
            && still_valid(domain, &cached, cr3, address, write)
        {
            return Ok(cached.host | address & PAGE_MASK);
        }
        let (walk, _) = walk(domain, cr3, address, write)?;
        if let Some(Ok(mut cached)) = cache.map(RefCell::try_borrow_mut) {
            *cached = walk;
        }
        Ok(walk.host | address & PAGE_MASK)
    }

    /// Copies guest-virtual `address..+out.len()` into `out`.
    pub fn read<P: Platform>(&self, domain: &Domain<P>, address: u64, out: &mut [u8]) -> Result<(), Errno> {
        let mut done = 0;
        while done < out.len() {
            let at = address.checked_add(done as u64).ok_or(Errno::Efault)?;
            let piece = (out.len() - done).min((abi::PAGE_SIZE - at % abi::PAGE_SIZE) as usize);
            if !P::copy_from(self.host(domain, at, false)?, &mut out[done..done + piece]) {
                return Err(Errno::Efault);
            }
            done += piece;
        }
        Ok(())
    }

    /// Copies `bytes` to guest-virtual `address` (each page checked
    /// writable first; on error leading pages may have been written).
    pub fn write<P: Platform>(&self, domain: &Domain<P>, address: u64, bytes: &[u8]) -> Result<(), Errno> {
        let mut done = 0;
        while done < bytes.len() {
            let at = address.checked_add(done as u64).ok_or(Errno::Efault)?;
            let piece = (bytes.len() - done).min((abi::PAGE_SIZE - at % abi::PAGE_SIZE) as usize);
            if !P::copy_to(self.host(domain, at, true)?, &bytes[done..done + piece]) {
                return Err(Errno::Efault);
            }
            done += piece;
        }
        Ok(())
    }

    /// Reads the `u32` at guest-virtual `address` (a port, a command): with
    /// one load when it is aligned.
    #[inline]
    pub fn read_u32<P: Platform>(&self, domain: &Domain<P>, address: u64) -> Result<u32, Errno> {
        if !address.is_multiple_of(4) {
            return self.read_struct(domain, address);
        }
        let host = self.host(domain, address, false)?;
        Ok((P::load(host & !7) >> ((host & 4) * 8)) as u32)
    }

    /// Reads a structure from guest-virtual `address`.
    pub fn read_struct<T: zerocopy::FromBytes + zerocopy::IntoBytes, P: Platform>(
        &self,
        domain: &Domain<P>,
        address: u64,
    ) -> Result<T, Errno> {
        let mut value = T::new_zeroed();
        self.read(domain, address, value.as_mut_bytes())?;
        Ok(value)
    }
}

impl Walk {
    /// The guest-virtual page it translated, if any (for tests).
    #[cfg(test)]
    pub fn page(&self) -> Option<u64> {
        self.valid.then_some(self.page)
    }
}

/// Whether `walk` answers for `address` (written, when `write`) under
/// `cr3` now: same page and root, no EPT unmap since, every entry it read
/// unchanged.
#[inline]
fn still_valid<P: Platform>(domain: &Domain<P>, walk: &Walk, cr3: u64, address: u64, write: bool) -> bool {
    walk.valid
        && walk.page == address & !PAGE_MASK
        && walk.cr3 == cr3
        && walk.unmaps == domain.ept.unmaps()
        && (walk.writable || !write)
        && walk.entries.iter().all(|&(host, value)| P::load(host) == value)
}

/// Walks the 4-level tables at `cr3` for `address`: the walk (for the
/// cache) and the guest-physical address.
#[inline(never)]
fn walk<P: Platform>(domain: &Domain<P>, cr3: u64, address: u64, write: bool) -> Result<(Walk, u64), Errno> {
    // Canonical: bits 63..47 all equal.
    if ((address as i64) << 16 >> 16) as u64 != address {
        return Err(Errno::Efault);
    }
    let mut walk = Walk {
        valid: true,
        cr3,
        page: address & !PAGE_MASK,
        unmaps: domain.ept.unmaps(),
        writable: true,
        ..Walk::EMPTY
    };
    let mut table = cr3 & FRAME;
    for level in (0..4).rev() {
        let shift = 12 + 9 * level;
        let entry_address = table + ((address >> shift) & 0x1ff) * 8;
        let host =
            domain.host_frame(entry_address, Access::READ).map_err(|_| Errno::Efault)? | entry_address & PAGE_MASK;
        let entry = P::load(host);
        // This level's slot and, should the walk end here, the rest.
        for slot in &mut walk.entries[3 - level..] {
            *slot = (host, entry);
        }
        walk.writable &= entry & WRITABLE != 0;
        if entry & PRESENT == 0 || (write && !walk.writable) {
            return Err(Errno::Efault);
        }
        // A 1 GiB page (level 2) or a 2 MiB page (level 1) ends the walk.
        if level == 0 || (entry & LARGE != 0 && level < 3) {
            let physical = (entry & FRAME & !((1 << shift) - 1)) | address & ((1 << shift) - 1);
            walk.host = match domain.host_frame(physical, Access::READ | Access::WRITE) {
                Ok(host) => host,
                Err(_) => {
                    walk.writable = false;
                    let access = if write { Access::WRITE } else { Access::READ };
                    domain.host_frame(physical, access).map_err(|_| Errno::Efault)?
                }
            };
            return Ok((walk, physical));
        }
        table = entry & FRAME;
    }
    Err(Errno::Efault)
}
