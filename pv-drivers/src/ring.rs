//! The generic one-page request/response ring (layout and protocol in
//! `abi::ring`), both ends: [`FrontRing`] for the requester, [`BackRing`] for
//! the responder.
//!
//! The page is shared memory. It is touched only through `SharedPage`: header
//! words with volatile 32-bit loads and stores, slots with volatile word and
//! byte copies, never through Rust references. That accessor is the only unsafe
//! code here besides the two constructors that take the raw page; the
//! protocol logic is safe code (`deny(unsafe_code)` below).
//!
//! A request or response is copied out of its slot into a private buffer and
//! decoded from that copy ([`Slot`]), so a peer rewriting the slot meanwhile
//! can change only the value received, never a value after it was checked.
//! Each end keeps private copies of the indices it produces and checks every
//! index the other end writes; an index outside the window the protocol
//! allows is reported as [`RingError::Corrupt`], with the ring's state left
//! unchanged, and the caller disconnects.
//!
//! The front end zeroes the header when it creates the ring, so both event
//! indices start "not waiting": no publish notifies until the other end has
//! armed its event. An end therefore polls once before it first waits, which
//! `arm_*_event` does anyway.
#![deny(unsafe_code)]

use core::marker::PhantomData;
use core::mem::{offset_of, size_of};
use core::sync::atomic::{Ordering, fence};

use abi::block::{MAX_SEGMENTS, Request, Response, Segment};
use abi::ring::{HEADER_SIZE, RingHeader, should_notify};

use shared_page::SharedPage;

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

/// A value carried in a ring slot. It is encoded field by field in little
/// endian at its ABI offsets, so bytes from the ring are never reinterpreted
/// in place as a Rust value.
pub trait Slot: Copy + Default {
    /// Bytes of the encoding: the ABI structure's size.
    const SIZE: usize;
    /// Writes the encoding into `out[..SIZE]` (panics if `out` is shorter).
    fn to_bytes(&self, out: &mut [u8]);
    /// Decodes `bytes[..SIZE]`, whatever they hold: the caller validates the
    /// fields (panics if `bytes` is shorter).
    fn from_bytes(bytes: &[u8]) -> Self;
}

pub(crate) fn put(out: &mut [u8], offset: usize, field: &[u8]) {
    out[offset..offset + field.len()].copy_from_slice(field);
}

pub(crate) fn take<const N: usize>(bytes: &[u8], offset: usize) -> [u8; N] {
    let mut field = [0; N];
    field.copy_from_slice(&bytes[offset..offset + N]);
    field
}

/// Offset of segment `index` within a request.
const fn segment_offset(index: usize) -> usize {
    offset_of!(Request, segments) + index * size_of::<Segment>()
}

impl Slot for Request {
    const SIZE: usize = size_of::<Request>();

    #[inline]
    fn to_bytes(&self, out: &mut [u8]) {
        put(out, offset_of!(Request, id), &self.id.to_le_bytes());
        put(out, offset_of!(Request, operation), &[self.operation]);
        put(out, offset_of!(Request, segment_count), &[self.segment_count]);
        put(out, offset_of!(Request, _reserved), &self._reserved);
        put(out, offset_of!(Request, sector), &self.sector.to_le_bytes());
        for (index, segment) in self.segments.iter().enumerate() {
            let base = segment_offset(index);
            put(out, base + offset_of!(Segment, grant), &segment.grant.to_le_bytes());
            put(out, base + offset_of!(Segment, first_sector), &[segment.first_sector]);
            put(out, base + offset_of!(Segment, last_sector), &[segment.last_sector]);
            put(out, base + offset_of!(Segment, _reserved), &segment._reserved.to_le_bytes());
        }
    }

    #[inline]
    fn from_bytes(bytes: &[u8]) -> Self {
        let mut segments = [Segment::default(); MAX_SEGMENTS];
        for (index, segment) in segments.iter_mut().enumerate() {
            let base = segment_offset(index);
            *segment = Segment {
                grant: u32::from_le_bytes(take(bytes, base + offset_of!(Segment, grant))),
                first_sector: bytes[base + offset_of!(Segment, first_sector)],
                last_sector: bytes[base + offset_of!(Segment, last_sector)],
                _reserved: u16::from_le_bytes(take(bytes, base + offset_of!(Segment, _reserved))),
            };
        }
        Request {
            id: u64::from_le_bytes(take(bytes, offset_of!(Request, id))),
            operation: bytes[offset_of!(Request, operation)],
            segment_count: bytes[offset_of!(Request, segment_count)],
            _reserved: take(bytes, offset_of!(Request, _reserved)),
            sector: u64::from_le_bytes(take(bytes, offset_of!(Request, sector))),
            segments,
        }
    }
}

impl Slot for Response {
    const SIZE: usize = size_of::<Response>();

    fn to_bytes(&self, out: &mut [u8]) {
        put(out, offset_of!(Response, id), &self.id.to_le_bytes());
        put(out, offset_of!(Response, operation), &[self.operation]);
        put(out, offset_of!(Response, _reserved), &self._reserved);
        put(out, offset_of!(Response, status), &self.status.to_le_bytes());
    }

    fn from_bytes(bytes: &[u8]) -> Self {
        Response {
            id: u64::from_le_bytes(take(bytes, offset_of!(Response, id))),
            operation: bytes[offset_of!(Response, operation)],
            _reserved: take(bytes, offset_of!(Response, _reserved)),
            status: i32::from_le_bytes(take(bytes, offset_of!(Response, status))),
        }
    }
}

mod shared_page {
    //! The raw accessor of the ring page: the only place that dereferences it.
    #![allow(unsafe_code, reason = "the one raw accessor of the shared page")]

    const PAGE_SIZE: usize = abi::PAGE_SIZE as usize;

    /// A 4 KiB page shared with another domain, read and written only with
    /// volatile accesses. Every access is bounds-checked against the page, so
    /// the methods are safe whatever offsets the protocol computes.
    #[derive(Debug)]
    pub(super) struct SharedPage {
        base: *mut u8,
    }

    // SAFETY: the page is only accessed through volatile loads and stores
    // with fences, which is sound from any thread: the other end of the ring
    // is another domain anyway, so moving the handle adds no new concurrency.
    unsafe impl Send for SharedPage {}

    impl SharedPage {
        /// Wraps the page at `base`.
        ///
        /// # Safety
        /// `base` must point to a mapped, writable, page-aligned 4 KiB page
        /// that stays mapped while this value lives, and that nothing in this
        /// domain accesses through Rust references meanwhile.
        pub(super) const unsafe fn new(base: *mut u8) -> SharedPage {
            SharedPage { base }
        }

        /// Reads the 32-bit word at `offset`, a multiple of 4 inside the page.
        #[inline]
        pub(super) fn load(&self, offset: usize) -> u32 {
            assert!(offset.is_multiple_of(4) && offset < PAGE_SIZE, "word outside the ring page");
            // SAFETY: the word is inside the page `new` vouched for and
            // 4-byte aligned (the page is page-aligned).
            unsafe { core::ptr::read_volatile(self.base.add(offset).cast::<u32>()) }
        }

        /// Writes the 32-bit word at `offset`, a multiple of 4 inside the page.
        #[inline]
        pub(super) fn store(&self, offset: usize, value: u32) {
            assert!(offset.is_multiple_of(4) && offset < PAGE_SIZE, "word outside the ring page");
            // SAFETY: as for `load`; the page is writable.
            unsafe { core::ptr::write_volatile(self.base.add(offset).cast::<u32>(), value) }
        }

        /// Copies `out.len()` bytes of the page starting at `offset` into
        /// `out`: whole 8-byte words where aligned (every slot of the block
        /// ring), the rest byte by byte. Byte order in memory is preserved.
        #[inline]
        pub(super) fn copy_out(&self, offset: usize, out: &mut [u8]) {
            assert!(offset <= PAGE_SIZE && out.len() <= PAGE_SIZE - offset, "bytes outside the ring page");
            let word_bytes = if offset.is_multiple_of(8) { out.len() / 8 * 8 } else { 0 };
            let (words, bytes) = out.split_at_mut(word_bytes);
            for (index, chunk) in words.chunks_exact_mut(8).enumerate() {
                // SAFETY: the word is inside the page and 8-byte aligned.
                let word = unsafe { core::ptr::read_volatile(self.base.add(offset + index * 8).cast::<u64>()) };
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            for (index, byte) in bytes.iter_mut().enumerate() {
                // SAFETY: the byte is inside the page.
                *byte = unsafe { core::ptr::read_volatile(self.base.add(offset + word_bytes + index)) };
            }
        }

        /// Copies `bytes` into the page starting at `offset`, as `copy_out`.
        #[inline]
        pub(super) fn copy_in(&self, offset: usize, bytes: &[u8]) {
            assert!(offset <= PAGE_SIZE && bytes.len() <= PAGE_SIZE - offset, "bytes outside the ring page");
            let word_bytes = if offset.is_multiple_of(8) { bytes.len() / 8 * 8 } else { 0 };
            let (words, rest) = bytes.split_at(word_bytes);
            for (index, chunk) in words.chunks_exact(8).enumerate() {
                let mut word = [0; 8];
                word.copy_from_slice(chunk);
                // SAFETY: the word is inside the writable page and 8-byte aligned.
                unsafe {
                    core::ptr::write_volatile(self.base.add(offset + index * 8).cast::<u64>(), u64::from_ne_bytes(word))
                };
            }
            for (index, &byte) in rest.iter().enumerate() {
                // SAFETY: the byte is inside the writable page.
                unsafe { core::ptr::write_volatile(self.base.add(offset + word_bytes + index), byte) };
            }
        }
    }
}

/// Byte offsets of the header words in the page.
const REQ_PROD: usize = offset_of!(RingHeader, req_prod);
const REQ_EVENT: usize = offset_of!(RingHeader, req_event);
const RSP_PROD: usize = offset_of!(RingHeader, rsp_prod);
const RSP_EVENT: usize = offset_of!(RingHeader, rsp_event);

/// The page with its geometry: what both ends share.
#[derive(Debug)]
struct Ring<Req, Rsp, const SLOTS: usize, const SLOT_SIZE: usize> {
    page: SharedPage,
    _carries: PhantomData<fn() -> (Req, Rsp)>,
}

impl<Req: Slot, Rsp: Slot, const SLOTS: usize, const SLOT_SIZE: usize> Ring<Req, Rsp, SLOTS, SLOT_SIZE> {
    /// Fails the build of any ring type whose slots do not fit the page.
    const GEOMETRY_FITS: () = {
        // u32 indices wrap at 2^32; a power-of-two slot count divides that,
        // so an index names the same slot before and after the wrap.
        assert!(SLOTS.is_power_of_two(), "the slot count must be a power of two");
        assert!(HEADER_SIZE + SLOTS * SLOT_SIZE <= abi::PAGE_SIZE as usize, "the slots must fit in one page");
        assert!(Req::SIZE <= SLOT_SIZE && Rsp::SIZE <= SLOT_SIZE, "requests and responses must fit a slot");
    };

    fn new(page: SharedPage) -> Self {
        let () = Self::GEOMETRY_FITS;
        Ring { page, _carries: PhantomData }
    }

    fn slot_offset(index: u32) -> usize {
        HEADER_SIZE + index as usize % SLOTS * SLOT_SIZE
    }

    /// Copies `value` into slot `index` (modulo the slot count).
    fn write<T: Slot>(&self, index: u32, value: &T) {
        let mut bytes = [0u8; SLOT_SIZE];
        value.to_bytes(&mut bytes);
        self.page.copy_in(Self::slot_offset(index), &bytes[..T::SIZE]);
    }

    /// Copies slot `index` out of the ring, then decodes the private copy.
    fn read<T: Slot>(&self, index: u32) -> T {
        let mut bytes = [0u8; SLOT_SIZE];
        self.page.copy_out(Self::slot_offset(index), &mut bytes[..T::SIZE]);
        T::from_bytes(&bytes)
    }
}

/// Front end (requester) of a ring of `SLOTS` slots of `SLOT_SIZE` bytes.
#[derive(Debug)]
pub struct FrontRing<Req: Slot, Rsp: Slot, const SLOTS: usize, const SLOT_SIZE: usize> {
    ring: Ring<Req, Rsp, SLOTS, SLOT_SIZE>,
    /// Requests written so far, published or not.
    req_prod_private: u32,
    /// Requests published: the `req_prod` last stored. The page's copy is
    /// not trusted, since the back end can write it too.
    req_prod_published: u32,
    /// Responses taken so far.
    rsp_cons: u32,
}

impl<Req: Slot, Rsp: Slot, const SLOTS: usize, const SLOT_SIZE: usize> FrontRing<Req, Rsp, SLOTS, SLOT_SIZE> {
    /// Creates the ring in `page`, zeroing its header.
    ///
    /// # Safety
    /// `page` must be a mapped, writable, page-aligned 4 KiB page shared
    /// with the back end for the life of the value, never accessed through
    /// Rust references.
    #[allow(unsafe_code, reason = "takes the raw page")]
    pub unsafe fn new(page: *mut u8) -> Self {
        // SAFETY: the caller's guarantee is the one `SharedPage::new` needs.
        let ring = Ring::new(unsafe { SharedPage::new(page) });
        for word in (0..HEADER_SIZE).step_by(4) {
            ring.page.store(word, 0);
        }
        FrontRing { ring, req_prod_private: 0, req_prod_published: 0, rsp_cons: 0 }
    }

    /// Slots a request can be queued in now.
    pub fn free_slots(&self) -> usize {
        // Every request occupies its slot until its response is taken.
        SLOTS.saturating_sub(self.req_prod_private.wrapping_sub(self.rsp_cons) as usize)
    }

    /// Queues a request (not yet visible to the back end); `Err(Full)` when
    /// no slot is free.
    pub fn push_request(&mut self, request: &Req) -> Result<(), RingError> {
        if self.free_slots() == 0 {
            return Err(RingError::Full);
        }
        self.ring.write(self.req_prod_private, request);
        self.req_prod_private = self.req_prod_private.wrapping_add(1);
        Ok(())
    }

    /// Publishes the queued requests; returns true if the back end must be
    /// notified (it armed `req_event` and the new requests passed it).
    pub fn publish_requests(&mut self) -> bool {
        let old = self.req_prod_published;
        let new = self.req_prod_private;
        if old == new {
            return false;
        }
        // The requests' bytes must be visible before the index that publishes them.
        fence(Ordering::Release);
        self.ring.page.store(REQ_PROD, new);
        self.req_prod_published = new;
        // The store of req_prod must be ordered before the load of req_event;
        // the back end's `arm_request_event` orders them the other way round,
        // so at least one of us sees the other's store: either it finds the
        // requests or we find its event and notify.
        fence(Ordering::SeqCst);
        should_notify(old, new, self.ring.page.load(REQ_EVENT))
    }

    /// Takes the next response, if any. `Err(Corrupt)` if the back end's
    /// `rsp_prod` is behind the responses taken or ahead of the requests
    /// published.
    pub fn pop_response(&mut self) -> Result<Option<Rsp>, RingError> {
        let rsp_prod = self.ring.page.load(RSP_PROD);
        // Read the slot only after the index that published it.
        fence(Ordering::Acquire);
        let available = rsp_prod.wrapping_sub(self.rsp_cons);
        // Only published requests can have been answered (this also catches
        // an rsp_prod that went backwards: it wraps to a huge count).
        if available > self.req_prod_published.wrapping_sub(self.rsp_cons) {
            return Err(RingError::Corrupt);
        }
        if available == 0 {
            return Ok(None);
        }
        let response = self.ring.read(self.rsp_cons);
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        Ok(Some(response))
    }

    /// Prepares to wait: asks the back end to notify on the next response.
    /// Returns true if `pop_response` has something to report (a response,
    /// or corruption) and the caller must not wait.
    pub fn arm_response_event(&mut self) -> bool {
        if self.ring.page.load(RSP_PROD) != self.rsp_cons {
            return true;
        }
        self.ring.page.store(RSP_EVENT, self.rsp_cons.wrapping_add(1));
        // The store of rsp_event must be ordered before the re-read of
        // rsp_prod: pairs with the fence in `BackRing::publish_responses`, so
        // a response published meanwhile is either seen here or notified.
        fence(Ordering::SeqCst);
        self.ring.page.load(RSP_PROD) != self.rsp_cons
    }
}

/// Back end (responder) of a ring of `SLOTS` slots of `SLOT_SIZE` bytes.
#[derive(Debug)]
pub struct BackRing<Req: Slot, Rsp: Slot, const SLOTS: usize, const SLOT_SIZE: usize> {
    ring: Ring<Req, Rsp, SLOTS, SLOT_SIZE>,
    /// Requests taken so far.
    req_cons: u32,
    /// Responses written so far, published or not.
    rsp_prod_private: u32,
    /// Responses published: the `rsp_prod` last stored.
    rsp_prod_published: u32,
}

impl<Req: Slot, Rsp: Slot, const SLOTS: usize, const SLOT_SIZE: usize> BackRing<Req, Rsp, SLOTS, SLOT_SIZE> {
    /// Attaches to a ring the front end has just created in `page`. Reads
    /// nothing yet: every index the front end writes is checked when used.
    ///
    /// # Safety
    /// As for [`FrontRing::new`]: `page` is the front end's ring page,
    /// mapped and writable in this domain for the life of the value.
    #[allow(unsafe_code, reason = "takes the raw page")]
    pub unsafe fn attach(page: *mut u8) -> Self {
        // SAFETY: the caller's guarantee is the one `SharedPage::new` needs.
        let ring = Ring::new(unsafe { SharedPage::new(page) });
        BackRing { ring, req_cons: 0, rsp_prod_private: 0, rsp_prod_published: 0 }
    }

    /// Copies the next request out of the ring. Only the indices are
    /// validated; the caller validates the fields of the copy.
    /// `Err(Corrupt)` when `req_prod` is behind `req_cons` or more than
    /// `SLOTS` ahead of the responses written (a hostile front end).
    pub fn pop_request(&mut self) -> Result<Option<Req>, RingError> {
        let req_prod = self.ring.page.load(REQ_PROD);
        // Read the slot only after the index that published it.
        fence(Ordering::Acquire);
        // Requests not yet answered each hold their own slot: more than
        // SLOTS of them would make us read slots we are writing responses to.
        let unanswered = req_prod.wrapping_sub(self.rsp_prod_private);
        let available = req_prod.wrapping_sub(self.req_cons);
        if unanswered > SLOTS as u32 || available > unanswered {
            return Err(RingError::Corrupt);
        }
        if available == 0 {
            return Ok(None);
        }
        let request = self.ring.read(self.req_cons);
        self.req_cons = self.req_cons.wrapping_add(1);
        Ok(Some(request))
    }

    /// Writes the response to the oldest unanswered request into its slot
    /// (not yet visible); `Err(Full)` if every request taken is answered.
    pub fn push_response(&mut self, response: &Rsp) -> Result<(), RingError> {
        if self.rsp_prod_private == self.req_cons {
            return Err(RingError::Full);
        }
        self.ring.write(self.rsp_prod_private, response);
        self.rsp_prod_private = self.rsp_prod_private.wrapping_add(1);
        Ok(())
    }

    /// Publishes the written responses; returns true if the front end must
    /// be notified (it armed `rsp_event` and the new responses passed it).
    pub fn publish_responses(&mut self) -> bool {
        let old = self.rsp_prod_published;
        let new = self.rsp_prod_private;
        if old == new {
            return false;
        }
        // The responses' bytes must be visible before the index that publishes them.
        fence(Ordering::Release);
        self.ring.page.store(RSP_PROD, new);
        self.rsp_prod_published = new;
        // The store of rsp_prod must be ordered before the load of rsp_event;
        // pairs with the fence in `FrontRing::arm_response_event`.
        fence(Ordering::SeqCst);
        should_notify(old, new, self.ring.page.load(RSP_EVENT))
    }

    /// Prepares to wait: asks the front end to notify on the next request.
    /// Returns true if `pop_request` has something to report (a request, or
    /// corruption) and the caller must not wait.
    pub fn arm_request_event(&mut self) -> bool {
        if self.ring.page.load(REQ_PROD) != self.req_cons {
            return true;
        }
        self.ring.page.store(REQ_EVENT, self.req_cons.wrapping_add(1));
        // The store of req_event must be ordered before the re-read of
        // req_prod: pairs with the fence in `FrontRing::publish_requests`.
        fence(Ordering::SeqCst);
        self.ring.page.load(REQ_PROD) != self.req_cons
    }
}

/// The block device ring's front end (`abi::block`).
pub type BlockFront = FrontRing<Request, Response, { abi::block::SLOTS }, { abi::block::SLOT_SIZE }>;
/// The block device ring's back end (`abi::block`).
pub type BlockBack = BackRing<Request, Response, { abi::block::SLOTS }, { abi::block::SLOT_SIZE }>;

#[cfg(test)]
#[allow(unsafe_code, reason = "the tests allocate and free the shared page")]
mod tests {
    use super::*;
    use abi::block::{OP_READ, OP_WRITE, SLOTS};
    use std::sync::atomic::AtomicBool;
    use std::time::{Duration, Instant};

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

        /// A ring whose indices all start at `index`, as if that many
        /// requests had gone through already: to cross the u32 wrap soon.
        fn starting_at(index: u32) -> MockPeer {
            let mut peer = MockPeer::new();
            peer.front.req_prod_private = index;
            peer.front.req_prod_published = index;
            peer.front.rsp_cons = index;
            peer.back.req_cons = index;
            peer.back.rsp_prod_private = index;
            peer.back.rsp_prod_published = index;
            for word in [REQ_PROD, REQ_EVENT, RSP_PROD, RSP_EVENT] {
                peer.poke(word, index);
            }
            peer
        }

        fn peek(&self, word: usize) -> u32 {
            self.front.ring.page.load(word)
        }

        fn poke(&self, word: usize, value: u32) {
            self.front.ring.page.store(word, value);
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
    fn request(id: u64) -> Request {
        let mut segments = [Segment::default(); MAX_SEGMENTS];
        for (index, segment) in segments.iter_mut().enumerate() {
            segment.grant = (id as u32).wrapping_mul(31).wrapping_add(index as u32);
            segment.first_sector = (id % 8) as u8;
            segment.last_sector = 7;
        }
        Request {
            id,
            operation: if id.is_multiple_of(2) { OP_READ } else { OP_WRITE },
            segment_count: (id % 8) as u8 + 1,
            _reserved: [0; 6],
            sector: id.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            segments,
        }
    }

    fn response(request: &Request) -> Response {
        Response { id: request.id, operation: request.operation, _reserved: [0; 3], status: request.id as i32 }
    }

    #[test]
    fn slot_encoding_follows_the_abi_layout() {
        let mut bytes = [0u8; 16];
        Response { id: 0x0102_0304_0506_0708, operation: 2, _reserved: [9, 10, 11], status: -2 }.to_bytes(&mut bytes);
        assert_eq!(bytes, [8, 7, 6, 5, 4, 3, 2, 1, 2, 9, 10, 11, 0xFE, 0xFF, 0xFF, 0xFF]);

        // Every byte of a request survives decode and re-encode, reserved
        // ones included: the encoding covers the whole structure.
        let mut random = Random(0x1234_5678);
        for _ in 0..100 {
            let original: Vec<u8> = (0..Request::SIZE).map(|_| random.next() as u8).collect();
            let mut again = [0u8; Request::SIZE];
            Request::from_bytes(&original).to_bytes(&mut again);
            assert_eq!(original, again);
        }
        let mut bytes = [0u8; Request::SIZE];
        request(5).to_bytes(&mut bytes);
        assert_eq!(bytes[16..24], request(5).sector.to_le_bytes(), "sector at offset 16");
        assert_eq!(bytes[24 + 8..24 + 12], request(5).segments[1].grant.to_le_bytes(), "second segment's grant");
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
        assert_eq!(peer.back.push_response(&Response::default()), Err(RingError::Full), "nothing to answer");
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
        assert_eq!(peer.back.push_response(&Response::default()), Err(RingError::Full), "every request answered");
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

        // Nobody waits yet: publishing notifies no one.
        front.push_request(&request(0)).unwrap();
        assert!(!front.publish_requests());
        assert_eq!(back.pop_request().unwrap().unwrap().id, 0);
        assert_eq!(back.pop_request(), Ok(None));
        // The back end arms with nothing pending and waits: the next publish notifies, once.
        assert!(!back.arm_request_event());
        assert!(!front.publish_requests(), "nothing new to publish");
        front.push_request(&request(1)).unwrap();
        assert!(front.publish_requests());
        front.push_request(&request(2)).unwrap();
        assert!(!front.publish_requests(), "already notified; the back end has not armed again");
        // Arming with requests pending says so instead of asking to be told.
        assert!(back.arm_request_event());
        front.push_request(&request(3)).unwrap();
        assert!(!front.publish_requests());
        // One notification for a batch.
        for id in 1..4 {
            assert_eq!(back.pop_request().unwrap().unwrap().id, id);
        }
        assert!(!back.arm_request_event());
        for id in 4..9 {
            front.push_request(&request(id)).unwrap();
        }
        assert!(front.publish_requests());

        // The same for responses.
        for id in 0..4 {
            back.push_response(&response(&request(id))).unwrap();
        }
        assert!(!back.publish_responses(), "the front end is not waiting");
        assert!(front.arm_response_event(), "responses are pending");
        for id in 0..4 {
            assert_eq!(front.pop_response().unwrap().unwrap().id, id);
        }
        assert!(!front.arm_response_event());
        assert!(!back.publish_responses(), "nothing new to publish");
        for id in 4..9 {
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
        // Whether each end armed with nothing pending and is not yet notified.
        let (mut back_waiting, mut front_waiting) = (false, false);
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
                    while peer.back.push_response(&Response::default()).is_ok() {
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
        assert_eq!(peer.back.pop_request().unwrap().unwrap().id, 0);
        for hostile in [1_000_000, SLOTS as u32 + 1, u32::MAX, 0] {
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
        assert_eq!(peer.back.pop_request().unwrap().unwrap().id, 0);
        peer.poke(REQ_PROD, 500);
        assert_eq!(peer.back.pop_request(), Err(RingError::Corrupt));
        peer.poke(REQ_PROD, 2);
        assert_eq!(peer.back.pop_request().unwrap().unwrap().id, 1);
        // A slot rewritten after the copy does not change the request taken.
        peer.front.push_request(&request(2)).unwrap();
        peer.front.publish_requests();
        let taken = peer.back.pop_request().unwrap().unwrap();
        peer.front.ring.write(2, &request(77));
        assert_eq!(taken, request(2));
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
            assert_eq!(peer.front.pop_response(), Err(RingError::Corrupt), "rsp_prod {hostile}");
            assert!(peer.front.arm_response_event(), "corruption is reported, not waited on");
        }
        // Answers to every published request are legal, even if the back
        // end skipped writing them (the caller checks the ids).
        peer.poke(RSP_PROD, 4);
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
                        // Legal: rsp_prod names a count between the responses
                        // taken and the requests published.
                        if !in_window(rsp_prod, responses_taken, published) {
                            assert_eq!(result, Err(RingError::Corrupt));
                            corrupt_reports += 1;
                        } else if rsp_prod == responses_taken as u32 {
                            assert_eq!(result, Ok(None));
                        } else {
                            assert!(matches!(result, Ok(Some(_))));
                            responses_taken += 1;
                        }
                    }
                    6..=8 => {
                        let req_prod = peer.peek(REQ_PROD);
                        let result = peer.back.pop_request();
                        // Legal: req_prod names a count between the requests
                        // taken and a ring's worth past the responses written.
                        if !in_window(req_prod, requests_taken, answered + SLOTS as u64) {
                            assert_eq!(result, Err(RingError::Corrupt));
                            corrupt_reports += 1;
                        } else if req_prod == requests_taken as u32 {
                            assert_eq!(result, Ok(None));
                        } else {
                            assert!(matches!(result, Ok(Some(_))));
                            requests_taken += 1;
                        }
                    }
                    9..=10 => {
                        let result = peer.back.push_response(&Response::default());
                        assert_eq!(result.is_err(), answered == requests_taken);
                        answered += result.is_ok() as u64;
                    }
                    11..=12 => {
                        peer.back.publish_responses();
                    }
                    13 => {
                        if random.next().is_multiple_of(2) {
                            peer.front.arm_response_event();
                        } else {
                            peer.back.arm_request_event();
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
                assert!(responses_taken <= published && published <= queued);
                assert!(queued - responses_taken <= SLOTS as u64);
                assert!(answered <= requests_taken && requests_taken - answered <= SLOTS as u64);
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
