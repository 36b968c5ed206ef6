//! Host pages standing in for a guest's device pages: one page-aligned
//! allocation, reached by address as the guest's identity-mapped memory is
//! (an address is the host pointer), both by the front end under test
//! (through [`GuestMemory`]) and by the model back ends playing dom0.
#![allow(unsafe_code, reason = "the one raw accessor of the model's pages")]

use std::alloc::{Layout, alloc_zeroed, dealloc};

use crate::console::StoreRingAccess;
use crate::platform::{GuestMemory, NotDeviceMemory};
use crate::ring::{BackRing, FrontRing, Slot};

const PAGE: usize = abi::PAGE_SIZE as usize;

/// `pages` zeroed, page-aligned, contiguous host pages, never reached
/// through Rust references (only raw copies and the rings' volatile
/// accesses), freed when dropped.
#[derive(Debug)]
pub struct Memory {
    base: *mut u8,
    pages: usize,
}

impl Memory {
    /// `pages` zeroed pages (at least one).
    pub fn new(pages: usize) -> Memory {
        let layout = Memory::layout(pages);
        // SAFETY: the size is not zero.
        let base = unsafe { alloc_zeroed(layout) };
        assert!(!base.is_null(), "out of host memory");
        Memory { base, pages }
    }

    fn layout(pages: usize) -> Layout {
        Layout::from_size_align(pages.max(1) * PAGE, PAGE).expect("a page-aligned layout")
    }

    /// The address of page `index`.
    pub fn page(&self, index: usize) -> u64 {
        assert!(index < self.pages, "page {index} of {}", self.pages);
        self.base as u64 + (index * PAGE) as u64
    }

    /// Whether `length` bytes at `address` are all inside the pages.
    fn contains(&self, address: u64, length: usize) -> bool {
        let start = self.base as u64;
        let end = start + (self.pages * PAGE) as u64;
        address >= start && address.checked_add(length as u64).is_some_and(|last| last <= end)
    }

    /// The pointer to page `page` (address), checked to be one of ours.
    fn page_pointer(&self, page: u64) -> Result<*mut u8, NotDeviceMemory> {
        if !page.is_multiple_of(PAGE as u64) || !self.contains(page, PAGE) {
            return Err(NotDeviceMemory);
        }
        Ok(page as *mut u8)
    }

    /// The back end of the ring a front end made on `page`, as dom0 maps
    /// it (panics for a page that is not ours: a broken test).
    pub fn back_ring<Req: Slot, Rsp: Slot, const SLOTS: usize, const SLOT_SIZE: usize>(
        &self,
        page: u64,
    ) -> BackRing<Req, Rsp, SLOTS, SLOT_SIZE> {
        let pointer = self.page_pointer(page).expect("a ring on a page of the model");
        // SAFETY: the page is inside our allocation, which outlives every
        // ring of a test (tests drop the memory last), and is only reached
        // through raw pointers.
        unsafe { BackRing::attach(pointer) }
    }
}

impl Memory {
    /// A handle on the store ring page `page`, for the client or the
    /// model store (panics for a page that is not ours: a broken test).
    pub fn store_ring(&self, page: u64) -> StoreRingAccess {
        let pointer = self.page_pointer(page).expect("a store ring on a page of the model");
        // SAFETY: as for `back_ring`; the store ring's accesses are volatile.
        unsafe { StoreRingAccess::new(pointer) }
    }
}

impl GuestMemory for Memory {
    fn write(&mut self, address: u64, bytes: &[u8]) -> Result<(), NotDeviceMemory> {
        if !self.contains(address, bytes.len()) {
            return Err(NotDeviceMemory);
        }
        // SAFETY: the range is inside our allocation (checked above); no
        // Rust reference into it exists.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), address as *mut u8, bytes.len()) };
        Ok(())
    }

    fn read(&self, address: u64, out: &mut [u8]) -> Result<(), NotDeviceMemory> {
        if !self.contains(address, out.len()) {
            return Err(NotDeviceMemory);
        }
        // SAFETY: as for `write`.
        unsafe { core::ptr::copy_nonoverlapping(address as *const u8, out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    fn front_ring<Req: Slot, Rsp: Slot, const SLOTS: usize, const SLOT_SIZE: usize>(
        &mut self,
        page: u64,
    ) -> Result<FrontRing<Req, Rsp, SLOTS, SLOT_SIZE>, NotDeviceMemory> {
        let pointer = self.page_pointer(page)?;
        // SAFETY: as for `back_ring`.
        Ok(unsafe { FrontRing::new(pointer) })
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.base, Memory::layout(self.pages)) }
    }
}
