//! The granter's side of grant tables (Xen's v1 entries, `abi::grant`): a
//! table page in this domain's RAM, granting and revoking access to its
//! pages. Entries are shared with the hypervisor: written with volatile
//! stores and revoked with an atomic compare-exchange, never through Rust
//! references.

use abi::grant::{ENTRIES, MAPPED, PERMIT_ACCESS, READONLY};
use abi::{DomainId, Error};

/// A grant table over one page.
#[derive(Debug)]
pub struct GrantTable {
    page: u64,
    used: [u64; ENTRIES / 64],
}

// SAFETY: the table page is only touched with volatile and locked accesses.
unsafe impl Send for GrantTable {}

impl GrantTable {
    /// Takes over the page at guest-physical (= virtual) address `page` and
    /// makes it this domain's grant table as Xen's guests do (`memory_op`
    /// add_to_physmap of the table's frame 0; `Busy` while another domain
    /// maps one of its grants, `InvalidArgument` for anything else).
    ///
    /// # Safety
    /// `page` must be a page of this domain's RAM dedicated to the grant
    /// table for the rest of the domain's life.
    pub unsafe fn new(page: u64) -> Result<GrantTable, Error> {
        // SAFETY: the caller dedicates the page; zeroing it revokes nothing
        // (it was never registered).
        unsafe { core::ptr::write_bytes(page as *mut u8, 0, abi::PAGE_SIZE as usize) };
        // SAFETY: passed on from the caller.
        unsafe { crate::xen::place_grant_table_at(page) }.map_err(|errno| match errno {
            abi::xen::Errno::Ebusy => Error::Busy,
            _ => Error::InvalidArgument,
        })?;
        // Reference 0 is never handed out, so a zeroed ring slot names no grant.
        Ok(GrantTable {
            page,
            used: {
                let mut used = [0; ENTRIES / 64];
                used[0] = 1;
                used
            },
        })
    }

    /// Grants `domain` access to the page at guest-physical `address`;
    /// returns the grant reference.
    pub fn grant(&mut self, domain: DomainId, address: u64, readonly: bool) -> Result<u32, Error> {
        let reference = (0..ENTRIES).find(|&r| self.used[r / 64] & (1 << (r % 64)) == 0).ok_or(Error::Busy)?;
        self.used[reference / 64] |= 1 << (reference % 64);
        let entry = (self.page + reference as u64 * 8) as *mut u64;
        let flags = PERMIT_ACCESS | if readonly { READONLY } else { 0 };
        let word = flags as u64 | (domain as u64 & 0xffff) << 16 | (address / abi::PAGE_SIZE) << 32;
        // SAFETY: the entry lies in our table page; the hypervisor reads it
        // with one 8-byte load, so one aligned store publishes it whole.
        unsafe { core::ptr::write_volatile(entry, word) };
        Ok(reference as u32)
    }

    /// Revokes grant `reference`: fails with `Busy` while the grantee has it
    /// mapped (the hypervisor keeps `MAPPED` set then).
    pub fn end_access(&mut self, reference: u32) -> Result<(), Error> {
        let reference = reference as usize;
        if reference == 0 || reference >= ENTRIES || self.used[reference / 64] & (1 << (reference % 64)) == 0 {
            return Err(Error::InvalidArgument);
        }
        let entry = self.page + reference as u64 * 8;
        loop {
            // SAFETY: aligned entry inside our table page.
            let old = unsafe { core::ptr::read_volatile(entry as *const u64) };
            if old as u16 & MAPPED != 0 {
                return Err(Error::Busy);
            }
            let new = old & !0xffff;
            let swapped: u64;
            // SAFETY: LOCK CMPXCHG on the aligned entry: clears the flags only
            // if the hypervisor did not set MAPPED in between.
            unsafe {
                core::arch::asm!("lock cmpxchg qword ptr [{entry}], {new}", entry = in(reg) entry,
                    new = in(reg) new, inout("rax") old => swapped, options(nostack));
            }
            if swapped == old {
                break;
            }
        }
        self.used[reference / 64] &= !(1 << (reference % 64));
        Ok(())
    }
}
