//! The generic one-page request/response ring of Xen's `io/ring.h`
//! (layout and rules in `abi::xen::io`), both ends: [`FrontRing`] for the
//! requester, [`BackRing`] for the responder. Block (blkif) and net use it.
//!
//! The page is shared memory, touched only through the `shared_page`
//! module: header words with volatile 32-bit loads and stores, whole
//! entries in one pass of volatile 8-byte words (4-byte words or bytes for
//! an entry that is not made of 8-byte words), never through Rust
//! references; no access is bounds-checked at run time, since every offset
//! stays inside the page by construction (a const assertion on the
//! ring's geometry). That module is the only unsafe code here besides the
//! two constructors that take the raw page; the protocol logic is safe code
//! (`deny(unsafe_code)` below).
//!
//! When a consumer has checked a new batch, it asks the CPU to fetch all
//! of the batch's cache lines at once (`PREFETCHT0`, on targets with SSE:
//! the host, not the soft-float kernels) before copying the first entry:
//! with the ends on two cores, the lines come over together instead of
//! one wait per line (`benches/ring.rs`; BENCHMARKS.md, the rings against
//! Xen's `io/ring.h`).
//!
//! # Xen's macros and these methods
//! | `io/ring.h`                              | here                                   |
//! |------------------------------------------|----------------------------------------|
//! | `SHARED_RING_INIT` + `FRONT_RING_INIT`   | [`FrontRing::new`]                      |
//! | `BACK_RING_INIT`                         | [`BackRing::attach`]                    |
//! | `RING_GET_REQUEST` + `req_prod_pvt++`    | [`FrontRing::push_request`]             |
//! | `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`    | [`FrontRing::publish_requests`]         |
//! | `RING_COPY_REQUEST` + `req_cons++`       | [`BackRing::pop_request`]               |
//! | `RING_FINAL_CHECK_FOR_REQUESTS`          | [`BackRing::arm_request_event`]         |
//! | `RING_GET_RESPONSE` + `rsp_prod_pvt++`   | [`BackRing::push_response`]             |
//! | `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`   | [`BackRing::publish_responses`]         |
//! | `RING_COPY_RESPONSE` + `rsp_cons++`      | [`FrontRing::pop_response`]             |
//! | `RING_FINAL_CHECK_FOR_RESPONSES`         | [`FrontRing::arm_response_event`]       |
//!
//! # A hostile peer
//! Each end keeps private copies of the indices it produces (Xen's macros
//! read back the shared `req_prod` in `RING_PUSH_*`; a peer could have
//! rewritten it) and checks every index the other end writes. A consumer
//! reads the peer's producer index once per batch: when it has taken every
//! entry of the last batch, it loads the index again and checks it against
//! the window the protocol allows (a back end: no more than a ring's worth
//! of unanswered requests, the `prod - cons > size` test of Xen's back
//! ends; a front end: no more responses than published requests). An index
//! outside the window is reported as [`RingError::Corrupt`], with the
//! ring's state left unchanged, and the caller disconnects. Within a
//! checked batch no index is reloaded, so a peer that moves its index
//! meanwhile changes only where the next batch ends. A batch is prefetched
//! only once its index passed the check, and only lines of the page.
//!
//! An entry is copied out of its slot whole, into a private value, before
//! anything looks at it (Xen's `RING_COPY_*`, the fix for XSA-155), so a
//! peer rewriting the slot meanwhile can change only the value received,
//! never a value after it was checked. Entry types are `zerocopy`
//! [`FromBytes`]: every bit pattern a peer writes is a valid value, and
//! the caller validates the fields of the copy.
#![deny(unsafe_code)]

use core::sync::atomic::{Ordering, fence};

use abi::xen::io::block::{BLKIF_ENTRY_SIZE, BLKIF_RING_SIZE, BlkifRequest, BlkifResponse};
use abi::xen::io::{SringHeader, final_check_event, push_needs_notify};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use shared_page::{HeaderWord, SharedPage};

/// Why a ring operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// Front end: every slot holds a request or an unconsumed response.
    /// Back end: every request taken has been answered already.
    Full,
    /// The other end's producer index left the window the protocol allows.
    /// Nothing was taken; stop using the ring and disconnect.
    Corrupt,
}

/// A value carried in a ring entry: a plain ABI structure that any bytes
/// are a valid value of (`FromBytes`), with no padding (`IntoBytes`), so it
/// is copied in and out of the page whole. Implemented for every such type.
pub trait Slot: FromBytes + IntoBytes + Immutable + Copy {}

impl<T: FromBytes + IntoBytes + Immutable + Copy> Slot for T {}

mod shared_page {
    //! The raw accessor of the ring page: the only place that dereferences it.
    #![allow(unsafe_code, reason = "the one raw accessor of the shared page")]

    use core::marker::PhantomData;
    use core::mem::{align_of, offset_of, size_of};

    use abi::xen::io::{SRING_HEADER_SIZE, SringHeader};

    use super::Slot;

    const PAGE_SIZE: usize = abi::PAGE_SIZE as usize;
    /// Bytes of an x86 cache line.
    #[cfg(any(test, target_arch = "x86_64"))]
    const CACHE_LINE: usize = 64;

    /// A word of the ring header.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) enum HeaderWord {
        /// `req_prod`: requests published (front end).
        RequestProducer,
        /// `req_event`: the back end wants an event when `req_prod` passes it.
        RequestEvent,
        /// `rsp_prod`: responses published (back end).
        ResponseProducer,
        /// `rsp_event`: the front end wants an event when `rsp_prod` passes it.
        ResponseEvent,
    }

    impl HeaderWord {
        const fn offset(self) -> usize {
            match self {
                HeaderWord::RequestProducer => offset_of!(SringHeader, req_prod),
                HeaderWord::RequestEvent => offset_of!(SringHeader, req_event),
                HeaderWord::ResponseProducer => offset_of!(SringHeader, rsp_prod),
                HeaderWord::ResponseEvent => offset_of!(SringHeader, rsp_event),
            }
        }
    }

    /// A 4 KiB ring page shared with another domain, holding `SLOTS` entries
    /// of `SLOT_SIZE` bytes after the header, read and written only with
    /// volatile accesses. Every offset it touches is inside the page by
    /// construction (the geometry is checked when the type is built), so
    /// its methods are safe whatever index the protocol passes.
    #[derive(Debug)]
    pub(crate) struct SharedPage<const SLOTS: usize, const SLOT_SIZE: usize> {
        base: *mut u8,
        _not_sync: PhantomData<*mut u8>,
    }

    // SAFETY: the page is only accessed through volatile loads and stores
    // with fences, which is sound from any thread: the other end of the ring
    // is another domain anyway, so moving the handle adds no new concurrency.
    unsafe impl<const SLOTS: usize, const SLOT_SIZE: usize> Send for SharedPage<SLOTS, SLOT_SIZE> {}

    impl<const SLOTS: usize, const SLOT_SIZE: usize> SharedPage<SLOTS, SLOT_SIZE> {
        /// Fails the build of any ring whose slots do not fit the page.
        const GEOMETRY_FITS: () = {
            // u32 indices wrap at 2^32; a power-of-two slot count divides
            // that, so an index names the same slot before and after the
            // wrap, and `index & (SLOTS - 1)` is the slot.
            assert!(SLOTS.is_power_of_two(), "the slot count must be a power of two");
            assert!(SRING_HEADER_SIZE + SLOTS * SLOT_SIZE <= PAGE_SIZE, "the slots must fit in one page");
            assert!(SRING_HEADER_SIZE == size_of::<SringHeader>());
        };

        /// Wraps the page at `base`.
        ///
        /// # Safety
        /// `base` must point to a mapped, writable, page-aligned 4 KiB page
        /// that stays mapped while this value lives, and that nothing in this
        /// domain accesses through Rust references meanwhile.
        pub(crate) unsafe fn new(base: *mut u8) -> Self {
            let () = Self::GEOMETRY_FITS;
            SharedPage { base, _not_sync: PhantomData }
        }

        /// Reads a header word.
        #[inline(always)]
        pub(crate) fn load(&self, word: HeaderWord) -> u32 {
            // SAFETY: the header's words are inside the page `new` vouched
            // for and 4-byte aligned (the page is page-aligned).
            unsafe { core::ptr::read_volatile(self.base.add(word.offset()).cast::<u32>()) }
        }

        /// Writes a header word.
        #[inline(always)]
        pub(crate) fn store(&self, word: HeaderWord, value: u32) {
            // SAFETY: as for `load`; the page is writable.
            unsafe { core::ptr::write_volatile(self.base.add(word.offset()).cast::<u32>(), value) }
        }

        /// Writes the whole header (the front end's `SHARED_RING_INIT`).
        pub(crate) fn store_header(&self, header: SringHeader) {
            // SAFETY: the header is the page's first 64 bytes, page-aligned
            // (more than `SringHeader` needs); the page is writable.
            unsafe { core::ptr::write_volatile(self.base.cast::<SringHeader>(), header) }
        }

        /// The address of the slot of entry `index`, for an entry type `T`
        /// that fits the slot and whose alignment the slots keep.
        #[inline(always)]
        fn slot<T: Slot>(&self, index: u32) -> *mut T {
            const {
                assert!(size_of::<T>() <= SLOT_SIZE, "an entry must fit its slot");
                assert!(SLOT_SIZE.is_multiple_of(align_of::<T>()), "every slot must be aligned for the entry");
                assert!(SRING_HEADER_SIZE.is_multiple_of(align_of::<T>()), "the first slot must be aligned");
            }
            let slot = index as usize & (SLOTS - 1);
            // SAFETY: `slot < SLOTS`, so the slot's bytes end at or before
            // `SRING_HEADER_SIZE + SLOTS * SLOT_SIZE <= PAGE_SIZE`
            // (`GEOMETRY_FITS`): inside the page.
            unsafe { self.base.add(SRING_HEADER_SIZE + slot * SLOT_SIZE).cast::<T>() }
        }

        /// Copies entry `index` (modulo the slot count) out of the page:
        /// the whole entry, word by word, with volatile loads of the widest
        /// words its size and the slots' alignment allow (8 bytes for blkif
        /// and netif's receive ring, 4 for netif's transmit ring, whose
        /// entries are 12 bytes), whatever its fields.
        #[inline(always)]
        pub(crate) fn read<T: Slot>(&self, index: u32) -> T {
            let source = self.slot::<T>(index).cast::<u8>();
            let mut value = T::new_zeroed();
            let bytes = value.as_mut_bytes();
            if const { Self::fits_words::<T, 8>() } {
                for (word, chunk) in bytes.chunks_exact_mut(8).enumerate() {
                    // SAFETY: the word is inside the entry's slot (`slot`),
                    // 8-byte aligned (the slots and the entry are multiples
                    // of 8 bytes from a page-aligned page).
                    let loaded = unsafe { core::ptr::read_volatile(source.add(word * 8).cast::<u64>()) };
                    chunk.copy_from_slice(&loaded.to_ne_bytes());
                }
            } else if const { Self::fits_words::<T, 4>() } {
                for (word, chunk) in bytes.chunks_exact_mut(4).enumerate() {
                    // SAFETY: as above, with 4-byte words.
                    let loaded = unsafe { core::ptr::read_volatile(source.add(word * 4).cast::<u32>()) };
                    chunk.copy_from_slice(&loaded.to_ne_bytes());
                }
            } else {
                for (offset, byte) in bytes.iter_mut().enumerate() {
                    // SAFETY: the byte is inside the entry's slot.
                    *byte = unsafe { core::ptr::read_volatile(source.add(offset)) };
                }
            }
            // Any bytes are a valid `T` (`FromBytes`), whatever the peer wrote.
            value
        }

        /// Copies `value` into entry `index` (modulo the slot count), word
        /// by word as `read`.
        #[inline(always)]
        pub(crate) fn write<T: Slot>(&self, index: u32, value: T) {
            let target = self.slot::<T>(index).cast::<u8>();
            let bytes = value.as_bytes();
            if const { Self::fits_words::<T, 8>() } {
                for (word, chunk) in bytes.chunks_exact(8).enumerate() {
                    let stored = u64::from_ne_bytes(chunk.try_into().unwrap_or_default());
                    // SAFETY: as in `read`; the page is writable.
                    unsafe { core::ptr::write_volatile(target.add(word * 8).cast::<u64>(), stored) };
                }
            } else if const { Self::fits_words::<T, 4>() } {
                for (word, chunk) in bytes.chunks_exact(4).enumerate() {
                    let stored = u32::from_ne_bytes(chunk.try_into().unwrap_or_default());
                    // SAFETY: as in `read`, with 4-byte words; the page is writable.
                    unsafe { core::ptr::write_volatile(target.add(word * 4).cast::<u32>(), stored) };
                }
            } else {
                for (offset, &byte) in bytes.iter().enumerate() {
                    // SAFETY: the byte is inside the entry's slot; the page is writable.
                    unsafe { core::ptr::write_volatile(target.add(offset), byte) };
                }
            }
        }

        /// Asks the CPU to start fetching the cache lines that hold the
        /// `count` entries of `T` from entry `first` (modulo the slot
        /// count): a batch just validated, about to be copied out. The
        /// copies then find their lines on the way or arrived, instead of
        /// waiting for each in turn while the other end's core still holds
        /// it. A hint (`PREFETCHT0`): it reads nothing into the program and
        /// cannot fault. On every x86_64 target, the soft-float kernels of
        /// dom0 and the guests included.
        #[inline(always)]
        #[cfg_attr(
            not(target_arch = "x86_64"),
            allow(clippy::extra_unused_type_parameters, reason = "the hint is x86_64's")
        )]
        pub(crate) fn prefetch<T: Slot>(&self, first: u32, count: u32) {
            #[cfg(target_arch = "x86_64")]
            if count != 0 {
                Self::prefetch_lines::<T>(self.base, first, count);
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (first, count);
        }

        /// `prefetch`'s loop, out of line (it runs once a batch): the
        /// ring's state stays in registers on the path taken per entry.
        #[cfg(target_arch = "x86_64")]
        #[inline(never)]
        fn prefetch_lines<T>(base: *mut u8, first: u32, count: u32) {
            Self::for_each_entry_line::<T>(first, count, |line| {
                // SAFETY: a prefetch only hints the cache, with no effect
                // on the program and no fault whatever the address; this
                // one is inside the page anyway (`for_each_entry_line`).
                // PREFETCHT0 names no SSE register, so the soft-float
                // kernel targets (dom0, guests) use it too.
                unsafe {
                    core::arch::asm!(
                        "prefetcht0 [{line}]",
                        line = in(reg) base.wrapping_add(line),
                        options(nostack, preserves_flags, readonly)
                    )
                };
            });
        }

        /// Calls `visit` with the offset in the page of each cache line
        /// holding bytes of the `count` (at most `SLOTS`) entries of `T`
        /// from entry `first` (modulo the slot count): each such line once,
        /// no other, and none outside the page, whatever the indices.
        #[cfg(any(test, target_arch = "x86_64"))]
        #[inline(always)]
        pub(crate) fn for_each_entry_line<T>(first: u32, count: u32, mut visit: impl FnMut(usize)) {
            let size = const {
                assert!(size_of::<T>() <= SLOT_SIZE, "an entry must fit its slot");
                size_of::<T>()
            };
            let offset = |slot: usize| SRING_HEADER_SIZE + slot * SLOT_SIZE;
            let line_of = |offset: usize| offset & !(CACHE_LINE - 1);
            // The lines from the one holding byte `start` to the one
            // holding byte `stop - 1`.
            let mut visit_lines = |start: usize, stop: usize| {
                let mut line = line_of(start);
                while line < stop {
                    visit(line);
                    line += CACHE_LINE;
                }
            };
            let (first, count) = (first as usize & (SLOTS - 1), (count as usize).min(SLOTS));
            if count == 0 {
                return;
            }
            if SLOT_SIZE - size < CACHE_LINE {
                // Entries close together (a whole slot each, or nearly):
                // every line from the first entry's to the last's, in one
                // run up to the last slot, and a second from the first slot
                // when the batch wraps (stopping at the line the first run
                // began with).
                let end = first + count;
                visit_lines(offset(first), offset(end.min(SLOTS) - 1) + size);
                if end > SLOTS {
                    visit_lines(offset(0), (offset(end - SLOTS - 1) + size).min(line_of(offset(first))));
                }
            } else {
                // Entries far apart (blkif's 16-byte responses in 112-byte
                // slots): each entry's own lines only.
                for index in first..first + count {
                    let start = offset(index & (SLOTS - 1));
                    visit_lines(start, start + size);
                }
            }
        }

        /// Whether entries of `T` are whole `WORD`-byte words at
        /// `WORD`-aligned offsets in every slot.
        const fn fits_words<T, const WORD: usize>() -> bool {
            size_of::<T>().is_multiple_of(WORD)
                && SLOT_SIZE.is_multiple_of(WORD)
                && SRING_HEADER_SIZE.is_multiple_of(WORD)
        }
    }
}

use HeaderWord::{RequestEvent, RequestProducer, ResponseEvent, ResponseProducer};

/// Front end (requester) of a ring of `SLOTS` entries of `SLOT_SIZE` bytes
/// carrying `Req` requests and `Rsp` responses.
#[derive(Debug)]
pub struct FrontRing<Req: Slot, Rsp: Slot, const SLOTS: usize, const SLOT_SIZE: usize> {
    page: SharedPage<SLOTS, SLOT_SIZE>,
    /// Requests written so far, published or not (Xen's `req_prod_pvt`).
    req_prod_private: u32,
    /// Requests published: the `req_prod` last stored. The page's copy is
    /// not trusted, since the back end can write it too.
    req_prod_published: u32,
    /// Responses taken so far (`rsp_cons`).
    rsp_cons: u32,
    /// The back end's `rsp_prod` as last loaded and checked: responses up
    /// to it are taken without loading it again.
    rsp_prod_checked: u32,
    _carries: core::marker::PhantomData<fn() -> (Req, Rsp)>,
}

impl<Req: Slot, Rsp: Slot, const SLOTS: usize, const SLOT_SIZE: usize> FrontRing<Req, Rsp, SLOTS, SLOT_SIZE> {
    /// Creates the ring in `page`: writes a fresh header (Xen's
    /// `SHARED_RING_INIT`: no entries, each end wants an event for the
    /// first entry the other publishes). The slots need no initial value.
    ///
    /// # Safety
    /// `page` must be a mapped, writable, page-aligned 4 KiB page shared
    /// with the back end for the life of the value, never accessed through
    /// Rust references.
    #[allow(unsafe_code, reason = "takes the raw page")]
    pub unsafe fn new(page: *mut u8) -> Self {
        // SAFETY: the caller's guarantee is the one `SharedPage::new` needs.
        let page = unsafe { SharedPage::new(page) };
        page.store_header(SringHeader::new());
        FrontRing {
            page,
            req_prod_private: 0,
            req_prod_published: 0,
            rsp_cons: 0,
            rsp_prod_checked: 0,
            _carries: core::marker::PhantomData,
        }
    }

    /// Slots a request can be queued in now.
    #[inline]
    pub fn free_slots(&self) -> usize {
        // Every request occupies its slot until its response is taken.
        SLOTS.saturating_sub(self.req_prod_private.wrapping_sub(self.rsp_cons) as usize)
    }

    /// Queues a request (not yet visible to the back end); `Err(Full)` when
    /// no slot is free.
    #[inline]
    pub fn push_request(&mut self, request: &Req) -> Result<(), RingError> {
        if self.free_slots() == 0 {
            return Err(RingError::Full);
        }
        self.page.write(self.req_prod_private, *request);
        self.req_prod_private = self.req_prod_private.wrapping_add(1);
        Ok(())
    }

    /// Publishes the queued requests (`RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`);
    /// returns true if the back end must be notified (the new requests
    /// passed its `req_event`).
    #[inline]
    pub fn publish_requests(&mut self) -> bool {
        let old = self.req_prod_published;
        let new = self.req_prod_private;
        if old == new {
            return false;
        }
        // The requests' bytes must be visible before the index that publishes them.
        fence(Ordering::Release);
        self.page.store(RequestProducer, new);
        self.req_prod_published = new;
        // The store of req_prod must be ordered before the load of req_event;
        // the back end's `arm_request_event` orders them the other way round,
        // so at least one of us sees the other's store: either it finds the
        // requests or we find its event and notify.
        fence(Ordering::SeqCst);
        push_needs_notify(old, new, self.page.load(RequestEvent))
    }

    /// Responses published and not yet taken (`RING_HAS_UNCONSUMED_RESPONSES`),
    /// loading and checking the back end's `rsp_prod` when the last checked
    /// batch is used up: that many [`FrontRing::pop_response`] calls return
    /// a response without loading it again. `Err(Corrupt)` if `rsp_prod`
    /// went behind the responses taken or ahead of the requests published
    /// (the ring is left unchanged).
    #[inline]
    pub fn unconsumed_responses(&mut self) -> Result<u32, RingError> {
        if self.rsp_prod_checked != self.rsp_cons {
            return Ok(self.rsp_prod_checked.wrapping_sub(self.rsp_cons));
        }
        let rsp_prod = self.page.load(ResponseProducer);
        // Read the entries only after the index that published them.
        fence(Ordering::Acquire);
        let available = rsp_prod.wrapping_sub(self.rsp_cons);
        // Only published requests can have been answered (this also catches
        // an rsp_prod that went backwards: it wraps to a huge count).
        if available > self.req_prod_published.wrapping_sub(self.rsp_cons) {
            return Err(RingError::Corrupt);
        }
        self.page.prefetch::<Rsp>(self.rsp_cons, available);
        self.rsp_prod_checked = rsp_prod;
        Ok(available)
    }

    /// Copies the next response out of the ring, if any (only the index is
    /// validated; the caller checks the fields, the id first).
    /// `Err(Corrupt)` if the back end's `rsp_prod` is behind the responses
    /// taken or ahead of the requests published.
    #[inline]
    pub fn pop_response(&mut self) -> Result<Option<Rsp>, RingError> {
        if self.unconsumed_responses()? == 0 {
            return Ok(None);
        }
        let response = self.page.read(self.rsp_cons);
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        Ok(Some(response))
    }

    /// Prepares to wait (`RING_FINAL_CHECK_FOR_RESPONSES`): asks the back
    /// end to notify on the next response. Returns true if `pop_response`
    /// has something to report (a response, or corruption) and the caller
    /// must not wait.
    pub fn arm_response_event(&mut self) -> bool {
        if self.unconsumed_responses() != Ok(0) {
            return true;
        }
        self.page.store(ResponseEvent, final_check_event(self.rsp_cons));
        // The store of rsp_event must be ordered before the re-read of
        // rsp_prod: pairs with the fence in `BackRing::publish_responses`, so
        // a response published meanwhile is either seen here or notified.
        fence(Ordering::SeqCst);
        self.unconsumed_responses() != Ok(0)
    }
}

/// Back end (responder) of a ring of `SLOTS` entries of `SLOT_SIZE` bytes
/// carrying `Req` requests and `Rsp` responses.
#[derive(Debug)]
pub struct BackRing<Req: Slot, Rsp: Slot, const SLOTS: usize, const SLOT_SIZE: usize> {
    page: SharedPage<SLOTS, SLOT_SIZE>,
    /// Requests taken so far (`req_cons`).
    req_cons: u32,
    /// The front end's `req_prod` as last loaded and checked: requests up
    /// to it are taken without loading it again.
    req_prod_checked: u32,
    /// Responses written so far, published or not (`rsp_prod_pvt`).
    rsp_prod_private: u32,
    /// Responses published: the `rsp_prod` last stored.
    rsp_prod_published: u32,
    _carries: core::marker::PhantomData<fn() -> (Req, Rsp)>,
}

impl<Req: Slot, Rsp: Slot, const SLOTS: usize, const SLOT_SIZE: usize> BackRing<Req, Rsp, SLOTS, SLOT_SIZE> {
    /// Attaches to a ring the front end has just created in `page` (Xen's
    /// `BACK_RING_INIT`: every index from 0). Reads nothing yet: every
    /// index the front end writes is checked when used.
    ///
    /// # Safety
    /// As for [`FrontRing::new`]: `page` is the front end's ring page,
    /// mapped and writable in this domain for the life of the value.
    #[allow(unsafe_code, reason = "takes the raw page")]
    pub unsafe fn attach(page: *mut u8) -> Self {
        BackRing {
            // SAFETY: the caller's guarantee is the one `SharedPage::new` needs.
            page: unsafe { SharedPage::new(page) },
            req_cons: 0,
            req_prod_checked: 0,
            rsp_prod_private: 0,
            rsp_prod_published: 0,
            _carries: core::marker::PhantomData,
        }
    }

    /// Requests published and not yet taken (`RING_HAS_UNCONSUMED_REQUESTS`),
    /// loading and checking the front end's `req_prod` when the last
    /// checked batch is used up: that many [`BackRing::pop_request`] calls
    /// return a request without loading it again. `Err(Corrupt)` when
    /// `req_prod` is behind `req_cons` or more than `SLOTS` ahead of the
    /// responses written (the ring is left unchanged).
    #[inline]
    pub fn unconsumed_requests(&mut self) -> Result<u32, RingError> {
        if self.req_prod_checked != self.req_cons {
            return Ok(self.req_prod_checked.wrapping_sub(self.req_cons));
        }
        let req_prod = self.page.load(RequestProducer);
        // Read the entries only after the index that published them.
        fence(Ordering::Acquire);
        // Requests not yet answered each hold their own slot: more than
        // SLOTS of them would make us read slots we are writing responses
        // to (`prod - cons > size`, with responses as what was consumed).
        let unanswered = req_prod.wrapping_sub(self.rsp_prod_private);
        let available = req_prod.wrapping_sub(self.req_cons);
        if unanswered > SLOTS as u32 || available > unanswered {
            return Err(RingError::Corrupt);
        }
        self.page.prefetch::<Req>(self.req_cons, available);
        self.req_prod_checked = req_prod;
        Ok(available)
    }

    /// Copies the next request out of the ring, if any. Only the indices
    /// are validated; the caller validates the fields of the copy.
    /// `Err(Corrupt)` when `req_prod` is behind `req_cons` or more than
    /// `SLOTS` ahead of the responses written (a hostile front end).
    #[inline]
    pub fn pop_request(&mut self) -> Result<Option<Req>, RingError> {
        if self.unconsumed_requests()? == 0 {
            return Ok(None);
        }
        let request = self.page.read(self.req_cons);
        self.req_cons = self.req_cons.wrapping_add(1);
        Ok(Some(request))
    }

    /// Writes the response to the oldest unanswered request into its slot
    /// (not yet visible); `Err(Full)` if every request taken is answered.
    #[inline]
    pub fn push_response(&mut self, response: &Rsp) -> Result<(), RingError> {
        if self.rsp_prod_private == self.req_cons {
            return Err(RingError::Full);
        }
        self.page.write(self.rsp_prod_private, *response);
        self.rsp_prod_private = self.rsp_prod_private.wrapping_add(1);
        Ok(())
    }

    /// Publishes the written responses
    /// (`RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`); returns true if the front
    /// end must be notified (the new responses passed its `rsp_event`).
    #[inline]
    pub fn publish_responses(&mut self) -> bool {
        let old = self.rsp_prod_published;
        let new = self.rsp_prod_private;
        if old == new {
            return false;
        }
        // The responses' bytes must be visible before the index that publishes them.
        fence(Ordering::Release);
        self.page.store(ResponseProducer, new);
        self.rsp_prod_published = new;
        // The store of rsp_prod must be ordered before the load of rsp_event;
        // pairs with the fence in `FrontRing::arm_response_event`.
        fence(Ordering::SeqCst);
        push_needs_notify(old, new, self.page.load(ResponseEvent))
    }

    /// Prepares to wait (`RING_FINAL_CHECK_FOR_REQUESTS`): asks the front
    /// end to notify on the next request. Returns true if `pop_request` has
    /// something to report (a request, or corruption) and the caller must
    /// not wait.
    pub fn arm_request_event(&mut self) -> bool {
        if self.unconsumed_requests() != Ok(0) {
            return true;
        }
        self.page.store(RequestEvent, final_check_event(self.req_cons));
        // The store of req_event must be ordered before the re-read of
        // req_prod: pairs with the fence in `FrontRing::publish_requests`.
        fence(Ordering::SeqCst);
        self.unconsumed_requests() != Ok(0)
    }
}

/// The block device ring's front end (blkif, `abi::xen::io::block`).
pub type BlockFront = FrontRing<BlkifRequest, BlkifResponse, { BLKIF_RING_SIZE as usize }, BLKIF_ENTRY_SIZE>;
/// The block device ring's back end (blkif, `abi::xen::io::block`).
pub type BlockBack = BackRing<BlkifRequest, BlkifResponse, { BLKIF_RING_SIZE as usize }, BLKIF_ENTRY_SIZE>;

#[cfg(test)]
#[allow(unsafe_code, reason = "the tests allocate and free the shared page")]
mod tests {
    use super::*;
    use abi::xen::io::SRING_HEADER_SIZE;
    use abi::xen::io::block::{BLKIF_MAX_SEGMENTS_PER_REQUEST, BlkifOp, BlkifRequestSegment};
    use std::sync::atomic::AtomicBool;
    use std::time::{Duration, Instant};
    use zerocopy::IntoBytes;

    const SLOTS: usize = BLKIF_RING_SIZE as usize;
    const REQ_PROD: HeaderWord = RequestProducer;
    const REQ_EVENT: HeaderWord = RequestEvent;
    const RSP_PROD: HeaderWord = ResponseProducer;
    const RSP_EVENT: HeaderWord = ResponseEvent;

    #[repr(C, align(4096))]
    struct Page([u8; 4096]);

    /// Both ends over one heap page, as a guest and dom0 share it. The test
    /// plays either end, honestly through `front` and `back` or hostilely by
    /// writing header words with `poke`.
    struct MockPeer {
        front: BlockFront,
        back: BlockBack,
        page: *mut Page,
    }

    impl MockPeer {
        fn new() -> MockPeer {
            let page = Box::into_raw(Box::new(Page([0xA5; 4096])));
            // SAFETY: the page is page-aligned, lives until `drop`, and is
            // only touched through the rings.
            let front = unsafe { BlockFront::new(page.cast()) };
            // SAFETY: as above.
            let back = unsafe { BlockBack::attach(page.cast()) };
            MockPeer { front, back, page }
        }

        /// A fresh ring whose indices all start at `index`, as if that many
        /// requests had gone through already: to cross the u32 wrap soon.
        fn starting_at(index: u32) -> MockPeer {
            let mut peer = MockPeer::new();
            peer.front.req_prod_private = index;
            peer.front.req_prod_published = index;
            peer.front.rsp_cons = index;
            peer.front.rsp_prod_checked = index;
            peer.back.req_cons = index;
            peer.back.req_prod_checked = index;
            peer.back.rsp_prod_private = index;
            peer.back.rsp_prod_published = index;
            for word in [REQ_PROD, RSP_PROD] {
                peer.poke(word, index);
            }
            // Each end wants an event for the first entry, as after `new`.
            for word in [REQ_EVENT, RSP_EVENT] {
                peer.poke(word, index.wrapping_add(1));
            }
            peer
        }

        fn peek(&self, word: HeaderWord) -> u32 {
            self.front.page.load(word)
        }

        fn poke(&self, word: HeaderWord, value: u32) {
            self.front.page.store(word, value);
        }

        /// The page's bytes (the rings are idle while the test looks).
        fn bytes(&self) -> [u8; 4096] {
            // SAFETY: a volatile copy of the live page.
            unsafe { core::ptr::read_volatile(self.page) }.0
        }
    }

    impl Drop for MockPeer {
        fn drop(&mut self) {
            // SAFETY: allocated in `new`; the rings are not used after this.
            drop(unsafe { Box::from_raw(self.page) });
        }
    }

    /// xorshift64: reproducible pseudo-random numbers.
    struct Random(u64);

    impl Random {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound
        }
    }

    /// A request whose every field depends on `id`, to catch torn or stale slots.
    fn request(id: u64) -> BlkifRequest {
        let mut seg = [BlkifRequestSegment::default(); BLKIF_MAX_SEGMENTS_PER_REQUEST];
        for (index, segment) in seg.iter_mut().enumerate() {
            segment.gref = (id as u32).wrapping_mul(31).wrapping_add(index as u32);
            segment.first_sect = (id % 8) as u8;
            segment.last_sect = 7;
        }
        BlkifRequest {
            operation: if id.is_multiple_of(2) { BlkifOp::Read.number() } else { BlkifOp::Write.number() },
            nr_segments: (id % 11) as u8 + 1,
            handle: id as u16,
            _pad0: 0,
            id,
            sector_number: id.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            seg,
        }
    }

    fn response(request: &BlkifRequest) -> BlkifResponse {
        BlkifResponse { id: request.id, operation: request.operation, status: request.id as i16, ..Default::default() }
    }

    /// Checks the cache lines `for_each_entry_line` names for batches of
    /// entries of `T` against the lines holding their bytes: each once,
    /// in the page, none missing and none extra, from starting indices
    /// around the ring's end and the u32 wrap, with counts past the ring.
    fn entry_lines_are_the_batch_lines<T, const SLOTS: usize, const SLOT_SIZE: usize>() {
        const LINES: usize = 4096 / 64;
        let slots = SLOTS as u32;
        let firsts = [0, 1, 2, slots / 2, slots - 3, slots - 1, slots, slots + 1, u32::MAX - 1, u32::MAX];
        for first in firsts {
            for count in 0..=slots + 2 {
                let mut named = [0u32; LINES];
                shared_page::SharedPage::<SLOTS, SLOT_SIZE>::for_each_entry_line::<T>(first, count, |line| {
                    assert!(line.is_multiple_of(64) && line < 4096, "line {line} (first {first}, count {count})");
                    named[line / 64] += 1;
                });
                let mut holding = [0u32; LINES];
                for index in 0..count.min(slots) {
                    let start = SRING_HEADER_SIZE + first.wrapping_add(index) as usize % SLOTS * SLOT_SIZE;
                    holding[start / 64..=(start + size_of::<T>() - 1) / 64].fill(1);
                }
                assert_eq!(named, holding, "{SLOTS} slots of {SLOT_SIZE} bytes, first {first}, count {count}");
            }
        }
    }

    #[test]
    fn the_lines_prefetched_are_the_batch_entries_lines() {
        use abi::xen::io::net::{
            NETIF_RX_ENTRY_SIZE, NETIF_TX_ENTRY_SIZE, NetifRxRequest, NetifTxRequest, NetifTxResponse,
        };
        // blkif: requests fill their slots, responses take 16 bytes of 112.
        entry_lines_are_the_batch_lines::<BlkifRequest, SLOTS, BLKIF_ENTRY_SIZE>();
        entry_lines_are_the_batch_lines::<BlkifResponse, SLOTS, BLKIF_ENTRY_SIZE>();
        // netif: 12-byte transmit slots holding 4-byte responses, 8-byte
        // receive slots; 256 of each, several to a line.
        entry_lines_are_the_batch_lines::<NetifTxRequest, 256, NETIF_TX_ENTRY_SIZE>();
        entry_lines_are_the_batch_lines::<NetifTxResponse, 256, NETIF_TX_ENTRY_SIZE>();
        entry_lines_are_the_batch_lines::<NetifRxRequest, 256, NETIF_RX_ENTRY_SIZE>();
    }

    #[test]
    fn entries_sit_at_xen_offsets_byte_for_byte() {
        let mut peer = MockPeer::new();
        let header = SringHeader::new();
        assert_eq!(peer.bytes()[..SRING_HEADER_SIZE], *header.as_bytes(), "SHARED_RING_INIT's header");
        assert_eq!((peer.peek(REQ_EVENT), peer.peek(RSP_EVENT)), (1, 1));
        for id in 0..2 {
            peer.front.push_request(&request(id)).unwrap();
        }
        let page = peer.bytes();
        // Entry i at 64 + i * 112: blkif's request size, not the response's.
        assert_eq!(page[64..64 + 112], *request(0).as_bytes());
        assert_eq!(page[176..176 + 112], *request(1).as_bytes());
        assert_eq!(page[176 + 16..176 + 24], request(1).sector_number.to_le_bytes(), "sector_number at 16");
        peer.front.publish_requests();
        let taken = peer.back.pop_request().unwrap().unwrap();
        peer.back.push_response(&response(&taken)).unwrap();
        let page = peer.bytes();
        // A response overwrites the first 16 bytes of its request's entry.
        assert_eq!(page[64..80], *response(&request(0)).as_bytes());
        assert_eq!(page[80..64 + 112], request(0).as_bytes()[16..]);
        assert_eq!(page[..4], [2, 0, 0, 0], "req_prod at 0, little endian");
        // blkif_response: id at 0, operation at 8, an int16 status at 10.
        let taken = peer.back.pop_request().unwrap().unwrap();
        let status = abi::xen::io::block::BlkifRsp::Eopnotsupp.number();
        peer.back.push_response(&BlkifResponse { id: taken.id, operation: 7, status, ..Default::default() }).unwrap();
        let page = peer.bytes();
        assert_eq!(page[176..184], 1u64.to_le_bytes());
        assert_eq!((page[184], page[186], page[187]), (7, 0xFE, 0xFF), "BLKIF_RSP_EOPNOTSUPP = -2 at 10");
        peer.back.publish_responses();
        assert_eq!(peer.bytes()[8..12], [2, 0, 0, 0], "rsp_prod at 8");
    }

    #[test]
    fn requests_and_responses_travel_in_order() {
        let mut peer = MockPeer::new();
        for id in 0..5 {
            peer.front.push_request(&request(id)).unwrap();
        }
        assert_eq!(peer.back.pop_request(), Ok(None), "queued but not yet published");
        peer.front.publish_requests();
        for id in 0..5 {
            let taken = peer.back.pop_request().unwrap().unwrap();
            assert_eq!(taken, request(id));
            peer.back.push_response(&response(&taken)).unwrap();
        }
        assert_eq!(peer.back.pop_request(), Ok(None));
        assert_eq!(peer.front.pop_response(), Ok(None), "written but not yet published");
        peer.back.publish_responses();
        for id in 0..5 {
            assert_eq!(peer.front.pop_response(), Ok(Some(response(&request(id)))));
        }
        assert_eq!(peer.front.pop_response(), Ok(None));
    }

    #[test]
    fn full_and_empty() {
        let mut peer = MockPeer::new();
        assert_eq!(peer.front.pop_response(), Ok(None));
        assert_eq!(peer.back.pop_request(), Ok(None));
        assert_eq!(peer.back.push_response(&BlkifResponse::default()), Err(RingError::Full), "nothing to answer");
        assert_eq!(peer.front.free_slots(), SLOTS);
        for id in 0..SLOTS as u64 {
            peer.front.push_request(&request(id)).unwrap();
        }
        assert_eq!(peer.front.free_slots(), 0);
        assert_eq!(peer.front.push_request(&request(99)), Err(RingError::Full));
        peer.front.publish_requests();
        for id in 0..SLOTS as u64 {
            let taken = peer.back.pop_request().unwrap().unwrap();
            assert_eq!(taken.id, id);
            peer.back.push_response(&response(&taken)).unwrap();
        }
        assert_eq!(peer.back.pop_request(), Ok(None));
        assert_eq!(peer.back.push_response(&BlkifResponse::default()), Err(RingError::Full), "every request answered");
        peer.back.publish_responses();
        // A slot frees only once its response is taken.
        assert_eq!(peer.front.push_request(&request(99)), Err(RingError::Full));
        assert_eq!(peer.front.pop_response().unwrap().unwrap().id, 0);
        assert_eq!(peer.front.free_slots(), 1);
        peer.front.push_request(&request(SLOTS as u64)).unwrap();
        assert_eq!(peer.front.push_request(&request(99)), Err(RingError::Full));
    }

    #[test]
    fn a_million_requests_wrap_the_slots_and_the_indices() {
        // Starting just below 2^32, the u32 indices wrap early on.
        let mut peer = MockPeer::starting_at(u32::MAX - 1000);
        let mut random = Random(0xDEAD_BEEF);
        const TOTAL: u64 = 1_000_000;
        let (mut sent, mut answered, mut received) = (0u64, 0u64, 0u64);
        while received < TOTAL {
            for _ in 0..random.below(SLOTS as u64 + 1) {
                if sent == TOTAL || peer.front.push_request(&request(sent)).is_err() {
                    break;
                }
                sent += 1;
            }
            peer.front.publish_requests();
            for _ in 0..random.below(SLOTS as u64 + 1) {
                let Some(taken) = peer.back.pop_request().unwrap() else { break };
                assert_eq!(taken, request(answered));
                peer.back.push_response(&response(&taken)).unwrap();
                answered += 1;
            }
            peer.back.publish_responses();
            while let Some(got) = peer.front.pop_response().unwrap() {
                assert_eq!(got, response(&request(received)));
                received += 1;
            }
        }
        assert_eq!((sent, answered), (TOTAL, TOTAL));
        assert_eq!(peer.peek(REQ_PROD), (u32::MAX - 1000).wrapping_add(TOTAL as u32));
    }

    #[test]
    fn publishing_notifies_only_a_waiting_peer() {
        let mut peer = MockPeer::new();
        let (front, back) = (&mut peer.front, &mut peer.back);

        // A fresh ring asks for an event on the first request (req_event = 1).
        front.push_request(&request(0)).unwrap();
        assert!(front.publish_requests(), "SHARED_RING_INIT: the first request notifies");
        front.push_request(&request(1)).unwrap();
        assert!(!front.publish_requests(), "notified already; the back end has not armed again");
        assert_eq!(back.pop_request().unwrap().unwrap().id, 0);
        assert_eq!(back.pop_request().unwrap().unwrap().id, 1);
        assert_eq!(back.pop_request(), Ok(None));
        // The back end arms with nothing pending and waits: the next publish notifies, once.
        assert!(!back.arm_request_event());
        assert!(!front.publish_requests(), "nothing new to publish");
        front.push_request(&request(2)).unwrap();
        assert!(front.publish_requests());
        front.push_request(&request(3)).unwrap();
        assert!(!front.publish_requests(), "already notified; the back end has not armed again");
        // Arming with requests pending says so instead of asking to be told.
        assert!(back.arm_request_event());
        front.push_request(&request(4)).unwrap();
        assert!(!front.publish_requests());
        // One notification for a batch.
        for id in 2..5 {
            assert_eq!(back.pop_request().unwrap().unwrap().id, id);
        }
        assert!(!back.arm_request_event());
        for id in 5..10 {
            front.push_request(&request(id)).unwrap();
        }
        assert!(front.publish_requests());

        // The same for responses: the first notifies (rsp_event = 1).
        for id in 0..4 {
            back.push_response(&response(&request(id))).unwrap();
        }
        assert!(back.publish_responses(), "the front end wants the first response");
        back.push_response(&response(&request(4))).unwrap();
        assert!(!back.publish_responses(), "the front end is not waiting");
        assert!(front.arm_response_event(), "responses are pending");
        for id in 0..5 {
            assert_eq!(front.pop_response().unwrap().unwrap().id, id);
        }
        assert!(!front.arm_response_event());
        assert!(!back.publish_responses(), "nothing new to publish");
        for id in 5..10 {
            assert_eq!(back.pop_request().unwrap().unwrap().id, id);
            back.push_response(&response(&request(id))).unwrap();
        }
        assert!(back.publish_responses());
        assert!(!back.publish_responses());
    }

    #[test]
    fn notifications_match_a_model_over_random_sequences() {
        let mut peer = MockPeer::starting_at(u32::MAX - 50);
        let mut random = Random(0xC0FFEE);
        // Whether each end wants an event and is not yet notified: both do
        // on a fresh ring.
        let (mut back_waiting, mut front_waiting) = (true, true);
        let (mut next_id, mut notifications) = (0u64, 0u32);
        for _ in 0..100_000 {
            match random.below(6) {
                0 => {
                    let mut pushed = 0;
                    for _ in 0..random.below(4) {
                        if peer.front.push_request(&request(next_id)).is_ok() {
                            next_id += 1;
                            pushed += 1;
                        }
                    }
                    let notify = peer.front.publish_requests();
                    assert_eq!(notify, pushed > 0 && back_waiting);
                    back_waiting &= !notify;
                    notifications += notify as u32;
                }
                1 => while peer.back.pop_request().unwrap().is_some() {},
                2 => {
                    let pending = peer.peek(REQ_PROD) != peer.back.req_cons;
                    assert_eq!(peer.back.arm_request_event(), pending);
                    back_waiting |= !pending;
                }
                3 => {
                    let mut pushed = 0;
                    while peer.back.push_response(&BlkifResponse::default()).is_ok() {
                        pushed += 1;
                    }
                    let notify = peer.back.publish_responses();
                    assert_eq!(notify, pushed > 0 && front_waiting);
                    front_waiting &= !notify;
                    notifications += notify as u32;
                }
                4 => while peer.front.pop_response().unwrap().is_some() {},
                _ => {
                    let pending = peer.peek(RSP_PROD) != peer.front.rsp_cons;
                    assert_eq!(peer.front.arm_response_event(), pending);
                    front_waiting |= !pending;
                }
            }
        }
        assert!(notifications > 1000, "the sequence exercised notification ({notifications})");
    }

    /// An event channel's pending bit, as far as a waiter is concerned.
    struct Doorbell(AtomicBool);

    impl Doorbell {
        fn ring(&self) {
            self.0.store(true, Ordering::Release);
        }

        /// Waits for a ring; a lost wakeup fails the test instead of hanging it.
        fn wait(&self, who: &str) {
            let start = Instant::now();
            while !self.0.swap(false, Ordering::AcqRel) {
                assert!(start.elapsed() < Duration::from_secs(10), "{who}: lost wakeup");
                std::thread::yield_now();
            }
        }
    }

    #[test]
    fn two_threads_with_event_suppression_lose_no_request_and_no_wakeup() {
        const TOTAL: u64 = 200_000;
        let page = Box::into_raw(Box::new(Page([0; 4096])));
        // SAFETY: the page is page-aligned, outlives both threads (joined
        // below) and is only touched through the rings.
        let mut front = unsafe { BlockFront::new(page.cast()) };
        // SAFETY: as above.
        let mut back = unsafe { BlockBack::attach(page.cast()) };
        let to_back = std::sync::Arc::new(Doorbell(AtomicBool::new(false)));
        let to_front = std::sync::Arc::new(Doorbell(AtomicBool::new(false)));

        let (requests_bell, responses_bell) = (to_back.clone(), to_front.clone());
        let back_end = std::thread::spawn(move || {
            let mut answered = 0;
            while answered < TOTAL {
                match back.pop_request().unwrap() {
                    Some(taken) => {
                        assert_eq!(taken, request(answered), "requests arrive whole and in order");
                        back.push_response(&response(&taken)).unwrap();
                        answered += 1;
                    }
                    None => {
                        if back.publish_responses() {
                            responses_bell.ring();
                        }
                        if !back.arm_request_event() {
                            requests_bell.wait("back end");
                        }
                    }
                }
            }
            if back.publish_responses() {
                responses_bell.ring();
            }
        });

        let (mut sent, mut received) = (0u64, 0u64);
        while received < TOTAL {
            while sent < TOTAL && front.push_request(&request(sent)).is_ok() {
                sent += 1;
            }
            if front.publish_requests() {
                to_back.ring();
            }
            let before = received;
            while let Some(got) = front.pop_response().unwrap() {
                assert_eq!(got.id, received, "each response once, in order");
                received += 1;
            }
            if received == before && !front.arm_response_event() {
                to_front.wait("front end");
            }
        }
        back_end.join().unwrap();
        assert_eq!(front.pop_response(), Ok(None));
        // SAFETY: both ends are done with the page.
        drop(unsafe { Box::from_raw(page) });
    }

    #[test]
    fn back_end_rejects_a_runaway_request_producer() {
        let mut peer = MockPeer::new();
        for id in 0..3 {
            peer.front.push_request(&request(id)).unwrap();
        }
        peer.front.publish_requests();
        assert_eq!(peer.back.unconsumed_requests(), Ok(3));
        assert_eq!(peer.back.pop_request().unwrap().unwrap().id, 0);
        // req_prod is checked once per batch: the batch of three stands.
        assert_eq!(peer.back.unconsumed_requests(), Ok(2));
        peer.poke(REQ_PROD, 1_000_000);
        assert_eq!(peer.back.pop_request().unwrap().unwrap().id, 1);
        assert_eq!(peer.back.pop_request().unwrap().unwrap().id, 2);
        for hostile in [1_000_000, SLOTS as u32 + 1, u32::MAX, 0, 2] {
            peer.poke(REQ_PROD, hostile);
            assert_eq!(peer.back.pop_request(), Err(RingError::Corrupt), "req_prod {hostile}");
            assert!(peer.back.arm_request_event(), "corruption is reported, not waited on");
        }
        // Exactly a ring's worth of unanswered requests is still legal.
        peer.poke(REQ_PROD, SLOTS as u32);
        assert!(peer.back.pop_request().unwrap().is_some());
        // Nothing was taken while corrupt: with the honest index back, the
        // next request follows the last good one.
        let mut peer = MockPeer::new();
        peer.front.push_request(&request(0)).unwrap();
        peer.front.push_request(&request(1)).unwrap();
        peer.front.publish_requests();
        peer.poke(REQ_PROD, 500);
        assert_eq!(peer.back.pop_request(), Err(RingError::Corrupt));
        assert_eq!(peer.back.pop_request(), Err(RingError::Corrupt), "still corrupt on the next look");
        peer.poke(REQ_PROD, 2);
        assert_eq!(peer.back.pop_request().unwrap().unwrap().id, 0);
        // A slot rewritten after the copy does not change the request taken.
        let taken = peer.back.pop_request().unwrap().unwrap();
        peer.front.page.write(1, request(77));
        assert_eq!(taken, request(1));
        // Responses written make room for exactly that many more requests.
        for _ in 0..2 {
            peer.back.push_response(&BlkifResponse::default()).unwrap();
        }
        peer.poke(REQ_PROD, 2 + SLOTS as u32 + 1);
        assert_eq!(peer.back.pop_request(), Err(RingError::Corrupt));
        peer.poke(REQ_PROD, 2 + SLOTS as u32);
        assert!(peer.back.pop_request().unwrap().is_some());
    }

    #[test]
    fn front_end_rejects_responses_it_did_not_ask_for() {
        let mut peer = MockPeer::new();
        for id in 0..4 {
            peer.front.push_request(&request(id)).unwrap();
        }
        peer.front.publish_requests();
        peer.front.push_request(&request(4)).unwrap(); // queued, not published
        for hostile in [5, 1_000, u32::MAX] {
            peer.poke(RSP_PROD, hostile);
            assert_eq!(peer.front.unconsumed_responses(), Err(RingError::Corrupt), "rsp_prod {hostile}");
            assert_eq!(peer.front.pop_response(), Err(RingError::Corrupt), "rsp_prod {hostile}");
            assert!(peer.front.arm_response_event(), "corruption is reported, not waited on");
        }
        // Answers to every published request are legal, even if the back
        // end skipped writing them (the caller checks the ids).
        peer.poke(RSP_PROD, 4);
        assert_eq!(peer.front.unconsumed_responses(), Ok(4));
        for _ in 0..4 {
            assert!(peer.front.pop_response().unwrap().is_some());
        }
        assert_eq!(peer.front.pop_response(), Ok(None));
        peer.poke(RSP_PROD, 3);
        assert_eq!(peer.front.pop_response(), Err(RingError::Corrupt), "rsp_prod went backwards");

        // The front end's own req_prod, scribbled by the back end, is
        // restored from its private copy on the next publish.
        peer.poke(REQ_PROD, 12345);
        assert!(!peer.front.publish_requests());
        assert_eq!(peer.peek(REQ_PROD), 5);
    }

    /// Whether `index` names a counter value in `low..=high` (a window
    /// shorter than 2^32 on unwrapped 64-bit counters).
    fn in_window(index: u32, low: u64, high: u64) -> bool {
        (low..=high).any(|counter| counter as u32 == index)
    }

    #[test]
    fn fuzzed_header_words_are_reported_never_accepted() {
        let mut random = Random(0x5EED_F00D);
        let (mut corrupt_reports, mut requests_moved, mut responses_moved) = (0u64, 0u64, 0u64);
        // Many short connections, each from a random starting index (so some
        // cross the u32 wrap), with honest traffic and hostile header writes
        // mixed; a real end would disconnect at the first corruption.
        for _ in 0..3000 {
            let start = random.next() as u32;
            let mut peer = MockPeer::starting_at(start);
            // Unwrapped shadows of the ends' counters: the model.
            let start = start as u64;
            let (mut queued, mut published, mut responses_taken) = (start, start, start);
            let (mut requests_taken, mut answered) = (start, start);
            // The producer indices as each end last checked them.
            let (mut requests_checked, mut responses_checked) = (start, start);
            for _ in 0..100 {
                match random.below(16) {
                    0..=2 => {
                        let result = peer.front.push_request(&request(queued));
                        assert_eq!(result.is_err(), queued - responses_taken == SLOTS as u64);
                        queued += result.is_ok() as u64;
                    }
                    3 => {
                        peer.front.publish_requests();
                        published = queued;
                    }
                    4..=5 => {
                        let rsp_prod = peer.peek(RSP_PROD);
                        let result = peer.front.pop_response();
                        if responses_taken < responses_checked {
                            // Inside a checked batch: no index is read.
                            assert!(matches!(result, Ok(Some(_))));
                            responses_taken += 1;
                        } else if !in_window(rsp_prod, responses_taken, published) {
                            // Legal: rsp_prod names a count between the
                            // responses taken and the requests published.
                            assert_eq!(result, Err(RingError::Corrupt));
                            corrupt_reports += 1;
                        } else if rsp_prod == responses_taken as u32 {
                            assert_eq!(result, Ok(None));
                        } else {
                            assert!(matches!(result, Ok(Some(_))));
                            responses_checked = responses_taken + rsp_prod.wrapping_sub(responses_taken as u32) as u64;
                            responses_taken += 1;
                        }
                    }
                    6..=8 => {
                        let req_prod = peer.peek(REQ_PROD);
                        let result = peer.back.pop_request();
                        if requests_taken < requests_checked {
                            assert!(matches!(result, Ok(Some(_))));
                            requests_taken += 1;
                        } else if !in_window(req_prod, requests_taken, answered + SLOTS as u64) {
                            // Legal: req_prod names a count between the
                            // requests taken and a ring's worth past the
                            // responses written.
                            assert_eq!(result, Err(RingError::Corrupt));
                            corrupt_reports += 1;
                        } else if req_prod == requests_taken as u32 {
                            assert_eq!(result, Ok(None));
                        } else {
                            assert!(matches!(result, Ok(Some(_))));
                            requests_checked = requests_taken + req_prod.wrapping_sub(requests_taken as u32) as u64;
                            requests_taken += 1;
                        }
                    }
                    9..=10 => {
                        let result = peer.back.push_response(&BlkifResponse::default());
                        assert_eq!(result.is_err(), answered == requests_taken);
                        answered += result.is_ok() as u64;
                    }
                    11..=12 => {
                        peer.back.publish_responses();
                    }
                    13 => {
                        // Arming checks the producer index as taking does
                        // (the ends' own writes happen between the loads,
                        // so the index is read after arming).
                        if random.next().is_multiple_of(2) {
                            peer.front.arm_response_event();
                            let rsp_prod = peer.peek(RSP_PROD);
                            if responses_taken == responses_checked && in_window(rsp_prod, responses_taken, published) {
                                responses_checked =
                                    responses_taken + rsp_prod.wrapping_sub(responses_taken as u32) as u64;
                            }
                        } else {
                            peer.back.arm_request_event();
                            let req_prod = peer.peek(REQ_PROD);
                            if requests_taken == requests_checked
                                && in_window(req_prod, requests_taken, answered + SLOTS as u64)
                            {
                                requests_checked = requests_taken + req_prod.wrapping_sub(requests_taken as u32) as u64;
                            }
                        }
                    }
                    _ => {
                        // A hostile end writes a header word: anything, or
                        // near its current value to probe the boundaries.
                        let word = [REQ_PROD, REQ_EVENT, RSP_PROD, RSP_EVENT][random.below(4) as usize];
                        let near = random.below(2 * SLOTS as u64 + 9) as u32;
                        let value = match random.below(4) {
                            0 => random.next() as u32,
                            _ => peer.peek(word).wrapping_add(near).wrapping_sub(SLOTS as u32 + 4),
                        };
                        peer.poke(word, value);
                    }
                }
                // The ends' own counters never break the rules, whatever the header says.
                assert_eq!(peer.front.req_prod_private, queued as u32);
                assert_eq!(peer.front.rsp_cons, responses_taken as u32);
                assert_eq!(peer.back.req_cons, requests_taken as u32);
                assert_eq!(peer.back.rsp_prod_private, answered as u32);
                assert!(responses_taken <= responses_checked && responses_checked <= published);
                assert!(published <= queued && queued - responses_taken <= SLOTS as u64);
                assert!(answered <= requests_taken && requests_taken <= requests_checked);
                assert!(requests_checked - answered <= SLOTS as u64);
            }
            requests_moved += requests_taken - start;
            responses_moved += responses_taken - start;
        }
        // The fuzz reached both sides of every check.
        assert!(corrupt_reports > 1000, "corruption reported {corrupt_reports} times");
        assert!(requests_moved > 10_000, "{requests_moved} requests taken");
        assert!(responses_moved > 5_000, "{responses_moved} responses taken");
    }
}
