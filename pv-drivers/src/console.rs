//! The console ring (layout and protocol in `abi::console`), for both ends:
//! the guest's front end writes output and reads input, dom0's back end does
//! the opposite. Each side treats the other's index as hostile.
//!
//! The page is shared memory: it is only ever accessed through raw pointers
//! with volatile loads and stores, never through Rust references.

use core::sync::atomic::{Ordering, fence};

use abi::console::{INPUT_SIZE, OUTPUT_SIZE};

/// The other side's index ran more than a ring's size ahead: the ring is
/// corrupt and the side that sees it stops using it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Corrupt;

/// Bytes waiting between `consumer` and `producer` in a ring of `size`.
pub const fn pending(producer: u32, consumer: u32, size: usize) -> Result<usize, Corrupt> {
    let waiting = producer.wrapping_sub(consumer) as usize;
    if waiting > size { Err(Corrupt) } else { Ok(waiting) }
}

const INPUT: usize = 0;
const OUTPUT: usize = INPUT_SIZE;
const INPUT_CONSUMER: usize = INPUT_SIZE + OUTPUT_SIZE;
const INPUT_PRODUCER: usize = INPUT_CONSUMER + 4;
const OUTPUT_CONSUMER: usize = INPUT_CONSUMER + 8;
const OUTPUT_PRODUCER: usize = INPUT_CONSUMER + 12;

/// One direction of the ring: where its bytes and indices live.
#[derive(Clone, Copy)]
struct Direction {
    data: usize,
    size: usize,
    producer: usize,
    consumer: usize,
}

const TO_GUEST: Direction =
    Direction { data: INPUT, size: INPUT_SIZE, producer: INPUT_PRODUCER, consumer: INPUT_CONSUMER };
const FROM_GUEST: Direction =
    Direction { data: OUTPUT, size: OUTPUT_SIZE, producer: OUTPUT_PRODUCER, consumer: OUTPUT_CONSUMER };

/// A mapped console page.
#[derive(Debug)]
pub struct ConsoleRing {
    base: *mut u8,
}

// SAFETY: the ring is only accessed through volatile loads and stores with
// fences, which is sound from any thread: the other side of the ring is
// another domain anyway, so moving the handle adds no new concurrency.
unsafe impl Send for ConsoleRing {}

impl ConsoleRing {
    /// Wraps the console page at `base`.
    ///
    /// # Safety
    /// `base` must point to a mapped, writable, 4 KiB page laid out as
    /// `abi::console::ConsoleRing` that stays mapped while this value lives.
    pub const unsafe fn new(base: *mut u8) -> ConsoleRing {
        ConsoleRing { base }
    }

    fn load(&self, offset: usize) -> u32 {
        // SAFETY: offset is one of the index fields, inside the page `new` vouched for.
        unsafe { core::ptr::read_volatile(self.base.add(offset) as *const u32) }
    }

    fn store(&self, offset: usize, value: u32) {
        // SAFETY: as for `load`.
        unsafe { core::ptr::write_volatile(self.base.add(offset) as *mut u32, value) }
    }

    fn produce(&self, direction: Direction, bytes: &[u8]) -> Result<usize, Corrupt> {
        let producer = self.load(direction.producer);
        let consumer = self.load(direction.consumer);
        let used = pending(producer, consumer, direction.size)?;
        let count = bytes.len().min(direction.size - used);
        for (index, &byte) in bytes[..count].iter().enumerate() {
            let slot = producer.wrapping_add(index as u32) as usize % direction.size;
            // SAFETY: slot < size, inside this direction's data area of the page.
            unsafe { core::ptr::write_volatile(self.base.add(direction.data + slot), byte) };
        }
        // The bytes must be visible before the index that publishes them.
        fence(Ordering::Release);
        self.store(direction.producer, producer.wrapping_add(count as u32));
        Ok(count)
    }

    fn consume(&self, direction: Direction, out: &mut [u8]) -> Result<usize, Corrupt> {
        let producer = self.load(direction.producer);
        // Read the published bytes only after reading the index.
        fence(Ordering::Acquire);
        let consumer = self.load(direction.consumer);
        let available = pending(producer, consumer, direction.size)?;
        let count = available.min(out.len());
        for (index, slot_out) in out[..count].iter_mut().enumerate() {
            let slot = consumer.wrapping_add(index as u32) as usize % direction.size;
            // SAFETY: slot < size, inside this direction's data area of the page.
            *slot_out = unsafe { core::ptr::read_volatile(self.base.add(direction.data + slot)) };
        }
        // The bytes are copied out before the slots are handed back.
        fence(Ordering::Release);
        self.store(direction.consumer, consumer.wrapping_add(count as u32));
        Ok(count)
    }

    /// Guest: queues output; returns how many bytes fit.
    pub fn write_output(&self, bytes: &[u8]) -> Result<usize, Corrupt> {
        self.produce(FROM_GUEST, bytes)
    }

    /// Guest: takes waiting input.
    pub fn read_input(&self, out: &mut [u8]) -> Result<usize, Corrupt> {
        self.consume(TO_GUEST, out)
    }

    /// Back end: takes the guest's output.
    pub fn read_output(&self, out: &mut [u8]) -> Result<usize, Corrupt> {
        self.consume(FROM_GUEST, out)
    }

    /// Back end: free bytes in the output ring (what `write_output` would take).
    pub fn output_room(&self) -> Result<usize, Corrupt> {
        self.room(FROM_GUEST)
    }

    /// Free bytes in `direction`'s ring.
    fn room(&self, direction: Direction) -> Result<usize, Corrupt> {
        let used = pending(self.load(direction.producer), self.load(direction.consumer), direction.size)?;
        Ok(direction.size - used)
    }

    /// Back end: queues input for the guest; returns how many bytes fit.
    pub fn write_input(&self, bytes: &[u8]) -> Result<usize, Corrupt> {
        self.produce(TO_GUEST, bytes)
    }
}

/// A store ring page, Xen's `xenstore_domain_interface`
/// (`abi::xen::io::store::XenstoreDomainInterface`): requests go client to
/// server in the 1024-byte `req` ring, replies and watch events server to
/// client in the 1024-byte `rsp` ring, with the console's protocol.
#[derive(Debug)]
pub struct StoreRingAccess(ConsoleRing);

mod store_layout {
    use super::Direction;
    use abi::xen::io::store::{XENSTORE_RING_SIZE, XenstoreDomainInterface};
    use core::mem::offset_of;

    /// Client to server.
    pub const REQUESTS: Direction = Direction {
        data: offset_of!(XenstoreDomainInterface, req),
        size: XENSTORE_RING_SIZE,
        producer: offset_of!(XenstoreDomainInterface, req_prod),
        consumer: offset_of!(XenstoreDomainInterface, req_cons),
    };
    /// Server to client.
    pub const REPLIES: Direction = Direction {
        data: offset_of!(XenstoreDomainInterface, rsp),
        size: XENSTORE_RING_SIZE,
        producer: offset_of!(XenstoreDomainInterface, rsp_prod),
        consumer: offset_of!(XenstoreDomainInterface, rsp_cons),
    };
}

impl StoreRingAccess {
    /// Wraps the store page at `base`.
    ///
    /// # Safety
    /// `base` must point to a mapped, writable 4 KiB page laid out as
    /// `XenstoreDomainInterface` that stays mapped while this value lives.
    pub const unsafe fn new(base: *mut u8) -> StoreRingAccess {
        // SAFETY: the caller's promise covers the whole page, all the
        // ring ever touches (store_layout's offsets are inside it).
        StoreRingAccess(unsafe { ConsoleRing::new(base) })
    }

    /// Client: queues request bytes; returns how many fit.
    pub fn client_send(&self, bytes: &[u8]) -> Result<usize, Corrupt> {
        self.0.produce(store_layout::REQUESTS, bytes)
    }

    /// Client: takes reply and event bytes.
    pub fn client_receive(&self, out: &mut [u8]) -> Result<usize, Corrupt> {
        self.0.consume(store_layout::REPLIES, out)
    }

    /// Server: takes request bytes.
    pub fn server_receive(&self, out: &mut [u8]) -> Result<usize, Corrupt> {
        self.0.consume(store_layout::REQUESTS, out)
    }

    /// Server: queues reply and event bytes; returns how many fit.
    pub fn server_send(&self, bytes: &[u8]) -> Result<usize, Corrupt> {
        self.0.produce(store_layout::REPLIES, bytes)
    }

    /// Server: bytes of room in the reply ring.
    pub fn server_room(&self) -> Result<usize, Corrupt> {
        self.0.room(store_layout::REPLIES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C, align(4096))]
    struct Page([u8; 4096]);

    struct SharedPage(*mut u8);
    // SAFETY: the tests only touch the page through ConsoleRing's volatile
    // accesses, as two guests would; the Box outlives both threads.
    unsafe impl Send for SharedPage {}

    #[test]
    fn index_arithmetic_detects_corruption() {
        assert_eq!(pending(10, 4, 16), Ok(6));
        assert_eq!(pending(3, u32::MAX - 2, 16), Ok(6), "wrapping counters");
        assert_eq!(pending(100, 4, 16), Err(Corrupt));
        assert_eq!(pending(4, 5, 16), Err(Corrupt), "consumer ahead of producer");
    }

    #[test]
    fn output_streams_between_two_threads_in_order() {
        let page = Box::into_raw(Box::new(Page([0; 4096])));
        let shared = SharedPage(page as *mut u8);
        const TOTAL: usize = 200_000;
        let producer = std::thread::spawn(move || {
            let shared = shared;
            // SAFETY: the page outlives the thread (joined below).
            let ring = unsafe { ConsoleRing::new(shared.0) };
            let data: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
            let mut sent = 0;
            while sent < TOTAL {
                sent += ring.write_output(&data[sent..(sent + 700).min(TOTAL)]).unwrap();
                std::thread::yield_now();
            }
        });
        // SAFETY: as above.
        let ring = unsafe { ConsoleRing::new(page as *mut u8) };
        let mut received = Vec::new();
        let mut buffer = [0u8; 333];
        while received.len() < TOTAL {
            let count = ring.read_output(&mut buffer).unwrap();
            received.extend_from_slice(&buffer[..count]);
        }
        producer.join().unwrap();
        assert!(received.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
        // SAFETY: both users are done.
        drop(unsafe { Box::from_raw(page) });
    }

    #[test]
    fn the_store_ring_is_xens_xenstore_domain_interface() {
        let mut page = Box::new(Page([0; 4096]));
        let word = |page: &Page, at: usize| u32::from_le_bytes(page.0[at..at + 4].try_into().unwrap());
        {
            // SAFETY: `page` outlives `ring` (this block).
            let ring = unsafe { StoreRingAccess::new(page.0.as_mut_ptr()) };
            assert_eq!(ring.client_send(b"req"), Ok(3));
            assert_eq!(ring.server_send(b"reply"), Ok(5));
        }
        // req at 0, rsp at 1024; req_cons, req_prod, rsp_cons, rsp_prod from 2048.
        assert_eq!((&page.0[..3], &page.0[1024..1029]), (&b"req"[..], &b"reply"[..]));
        assert_eq!([2048, 2052, 2056, 2060].map(|at| word(&page, at)), [0, 3, 0, 5]);
        {
            // SAFETY: as above.
            let ring = unsafe { StoreRingAccess::new(page.0.as_mut_ptr()) };
            let mut out = [0; 8];
            assert_eq!((ring.server_receive(&mut out), &out[..3]), (Ok(3), &b"req"[..]));
            assert_eq!(ring.server_room(), Ok(1024 - 5), "a 1024-byte reply ring");
        }
        assert_eq!(word(&page, 2048), 3);
    }

    #[test]
    fn full_ring_and_hostile_indices() {
        let mut page = Box::new(Page([0; 4096]));
        let base = page.0.as_mut_ptr();
        // SAFETY: `page` outlives `ring`.
        let ring = unsafe { ConsoleRing::new(base) };
        assert_eq!(ring.write_input(&[7; INPUT_SIZE + 10]), Ok(INPUT_SIZE), "only a ring's worth fits");
        assert_eq!(ring.write_input(b"x"), Ok(0));
        let mut out = [0u8; 8];
        assert_eq!(ring.read_input(&mut out), Ok(8));
        // A hostile guest moves its output producer far ahead.
        // SAFETY: writing the output producer field inside the page.
        unsafe { core::ptr::write_volatile(base.add(OUTPUT_PRODUCER) as *mut u32, 1_000_000) };
        assert_eq!(ring.read_output(&mut out), Err(Corrupt));
        drop(page);
    }
}
