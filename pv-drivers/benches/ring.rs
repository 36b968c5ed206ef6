//! Host benchmark (not a test): request/response round trips per second
//! between two threads through the block ring (one shared page, the same
//! code guests and dom0 run), next to the same traffic through two `rtrb`
//! SPSC queues, in one run.
//!
//!     cargo bench -p pv-drivers --bench ring

use std::time::Instant;

use abi::block::{Request, Response};
use pv_drivers::ring::{BlockBack, BlockFront};

const ROUND_TRIPS: u64 = 2_000_000;
/// Requests in flight at most (the ring has 32 slots).
const DEPTH: u64 = 32;

#[repr(C, align(4096))]
struct Page([u8; 4096]);

struct Shared(*mut u8);
// SAFETY: both threads touch the page only through the ring types, which
// use volatile accesses and fences, as two domains would.
unsafe impl Send for Shared {}

fn ring() -> f64 {
    let page = Box::into_raw(Box::new(Page([0; 4096]))) as *mut u8;
    // SAFETY: the page outlives both ends (freed after the join below).
    let mut front = unsafe { BlockFront::new(page) };
    let shared = Shared(page);
    let started = Instant::now();
    let back = std::thread::spawn(move || {
        let shared = shared;
        // SAFETY: as above.
        let mut back = unsafe { BlockBack::attach(shared.0) };
        let mut answered = 0;
        while answered < ROUND_TRIPS {
            match back.pop_request() {
                Ok(Some(request)) => {
                    let response =
                        Response { id: request.id, operation: request.operation, _reserved: [0; 3], status: 0 };
                    back.push_response(&response).expect("a slot per consumed request");
                    answered += 1;
                }
                Ok(None) => {
                    back.publish_responses();
                    std::hint::spin_loop();
                }
                Err(error) => panic!("ring corrupt: {error:?}"),
            }
        }
        back.publish_responses();
    });
    let (mut sent, mut received) = (0u64, 0u64);
    while received < ROUND_TRIPS {
        while sent < ROUND_TRIPS
            && sent - received < DEPTH
            && front.push_request(&Request { id: sent, ..Request::default() }).is_ok()
        {
            sent += 1;
        }
        front.publish_requests();
        while let Ok(Some(response)) = front.pop_response() {
            assert_eq!(response.id, received);
            received += 1;
        }
    }
    back.join().expect("back end thread");
    let seconds = started.elapsed().as_secs_f64();
    // SAFETY: both ends are done with the page.
    drop(unsafe { Box::from_raw(page as *mut Page) });
    ROUND_TRIPS as f64 / seconds
}

fn spsc() -> f64 {
    let (mut requests_in, mut requests_out) = rtrb::RingBuffer::<Request>::new(DEPTH as usize);
    let (mut responses_in, mut responses_out) = rtrb::RingBuffer::<Response>::new(DEPTH as usize);
    let started = Instant::now();
    let back = std::thread::spawn(move || {
        let mut answered = 0;
        while answered < ROUND_TRIPS {
            if let Ok(request) = requests_out.pop() {
                let response = Response { id: request.id, operation: request.operation, _reserved: [0; 3], status: 0 };
                while responses_in.push(response).is_err() {
                    std::hint::spin_loop();
                }
                answered += 1;
            } else {
                std::hint::spin_loop();
            }
        }
    });
    let (mut sent, mut received) = (0u64, 0u64);
    while received < ROUND_TRIPS {
        while sent < ROUND_TRIPS
            && sent - received < DEPTH
            && requests_in.push(Request { id: sent, ..Request::default() }).is_ok()
        {
            sent += 1;
        }
        while let Ok(response) = responses_out.pop() {
            assert_eq!(response.id, received);
            received += 1;
        }
    }
    back.join().expect("back end thread");
    ROUND_TRIPS as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let ring = ring();
    let spsc = spsc();
    println!("block ring (88-byte requests, one shared page): {:>12.0} round trips/s", ring);
    println!("rtrb SPSC pair (same structs, depth {DEPTH}):        {:>12.0} round trips/s", spsc);
    println!("ring / rtrb: {:.2}", ring / spsc);
}
