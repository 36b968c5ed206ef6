//! Host benchmark (not a test): blkif request/response round trips per
//! second between two spinning threads through the block ring (one shared
//! page, the same code guests and dom0 run), next to the same workload on
//! Xen's own `io/ring.h` macros and `blkif.h` types in C (`ring_h.c`,
//! built here with the host's `cc -O2` against Debian's libxen-dev), in
//! one run: five rounds of each, alternating, and the ratio of the
//! medians (and the median of the rounds' ratios).
//!
//!     cargo bench -p pv-drivers --bench ring
//!
//! The workload: a 64-byte header and 32 entries of 112 bytes (blkif),
//! at most 32 requests in flight, every request and response copied out
//! of the ring whole, producer indices checked once per batch, no events
//! armed (each end publishes only when it has something new), and each
//! front end takes one batch of responses a round.
//! Without `cc` or the Xen headers the bench fails and says what to
//! install; it never reports a rate it did not measure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use abi::xen::io::block::{BlkifRequest, BlkifResponse, BlkifRsp};
use pv_drivers::ring::{BlockBack, BlockFront};

const ROUND_TRIPS: u64 = 4_000_000;
/// Requests in flight at most (the ring has 32 slots).
const DEPTH: u64 = 32;
/// Rounds of each, alternating; the medians are compared.
const ROUNDS: usize = 5;

#[repr(C, align(4096))]
struct Page([u8; 4096]);

struct Shared(*mut u8);
// SAFETY: both threads touch the page only through the ring types, which
// use volatile accesses and fences, as two domains would.
unsafe impl Send for Shared {}

/// Round trips per second through the Rust ring.
fn rust_ring() -> f64 {
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
                    let response = BlkifResponse {
                        id: request.id,
                        operation: request.operation,
                        status: BlkifRsp::Okay.number(),
                        ..BlkifResponse::default()
                    };
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
            && front.push_request(&BlkifRequest { id: sent, ..BlkifRequest::default() }).is_ok()
        {
            sent += 1;
        }
        front.publish_requests();
        // One look at rsp_prod a round: one batch, as the C loop takes.
        for _ in 0..front.unconsumed_responses().expect("ring corrupt") {
            let response = front.pop_response().expect("checked").expect("counted");
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

/// Builds `ring_h.c`, or panics saying what is missing.
fn build_ring_h() -> PathBuf {
    for header in ["/usr/include/xen/io/ring.h", "/usr/include/xen/io/blkif.h"] {
        assert!(
            Path::new(header).exists(),
            "\n\n*** {header} is missing: the yardstick needs Xen's headers \
             (Debian: apt-get install libxen-dev). No comparison was made. ***\n"
        );
    }
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/ring_h.c");
    let binary = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ring_h");
    let status = Command::new("cc")
        .args(["-O2", "-Wall", "-pthread", "-o"])
        .arg(&binary)
        .arg(&source)
        .status()
        .unwrap_or_else(|error| {
            panic!("\n\n*** cannot run cc ({error}): the yardstick needs a C compiler. No comparison was made. ***\n")
        });
    assert!(status.success(), "\n\n*** cc failed to build {}: no comparison was made. ***\n", source.display());
    binary
}

/// Round trips per second through Xen's `io/ring.h`, in a fresh process.
fn c_ring(binary: &Path) -> f64 {
    let output = Command::new(binary).arg(ROUND_TRIPS.to_string()).output().expect("run ring_h");
    assert!(output.status.success(), "ring_h failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().parse().expect("ring_h prints a rate")
}

fn median(mut rates: Vec<f64>) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

fn main() {
    let binary = build_ring_h();
    let (mut rust, mut c) = (Vec::new(), Vec::new());
    // One of each first, not counted: warms the caches, the CPU's clock
    // and the page cache holding ring_h.
    rust_ring();
    c_ring(&binary);
    for _ in 0..ROUNDS {
        rust.push(rust_ring());
        c.push(c_ring(&binary));
    }
    let format = |rates: &[f64]| rates.iter().map(|rate| format!("{:.1}", rate / 1e6)).collect::<Vec<_>>().join(" ");
    println!("blkif ring, 112-byte requests, 32 slots, depth {DEPTH}, {ROUND_TRIPS} round trips a round");
    println!(
        "  Rust pv_drivers::ring: {:>6.1} M round trips/s (rounds: {})",
        median(rust.clone()) / 1e6,
        format(&rust)
    );
    println!("  C Xen io/ring.h:       {:>6.1} M round trips/s (rounds: {})", median(c.clone()) / 1e6, format(&c));
    // The pair ratios too: a round of each runs back to back, so their
    // ratio holds when the machine's speed drifts between rounds (a shared
    // host moves the two threads between cores that share a cache and
    // cores that do not, which changes both rates several times over).
    let pairs: Vec<f64> = rust.iter().zip(&c).map(|(rust, c)| rust / c).collect();
    println!(
        "  Rust / C: {:.2} (medians), {:.2} (median of the rounds' ratios)",
        median(rust) / median(c),
        median(pairs)
    );
}
