//! Host benchmark (not a test): request/response round trips per second
//! through the ring (one shared page, the same code guests and dom0 run),
//! next to the same workload on Xen's own `io/ring.h` macros and
//! `blkif.h` / `netif.h` types in C (`ring_h.c`, built here with the
//! host's `cc -O2` against Debian's libxen-dev), in one run: rounds of
//! each, alternating, and the ratio of the medians (and the median of the
//! rounds' ratios).
//!
//!     cargo bench -p pv-drivers --bench ring [-- [blkif|netif-tx] [1|2] [rounds]]
//!
//! The workloads: blkif (32 slots of 112 bytes, 112-byte requests and
//! 16-byte responses) and netif's transmit ring (256 slots of 12 bytes,
//! 4-byte responses), each with the whole ring in flight at most, every
//! request and response copied out of the ring whole, producer indices
//! checked once per batch, no events armed (each end publishes only when
//! it has something new), and each front end taking one batch of
//! responses a round. Each on two spinning threads (the ends on two
//! cores, as a guest and dom0) and on one thread taking turns at both
//! ends (the work per entry, without the cache traffic between cores).
//! Without `cc` or the Xen headers the bench fails and says what to
//! install; it never reports a rate it did not measure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use abi::xen::io::block::{BLKIF_ENTRY_SIZE, BlkifOp, BlkifRequest, BlkifResponse, BlkifRsp};
use abi::xen::io::net::{NETIF_RSP_OKAY, NETIF_TX_ENTRY_SIZE, NetifTxRequest, NetifTxResponse};
use pv_drivers::ring::{BackRing, FrontRing, Slot};

/// Rounds of each side, alternating; the medians are compared.
const ROUNDS: usize = 7;

#[repr(C, align(4096))]
struct Page([u8; 4096]);

struct Shared(*mut u8);
// SAFETY: both threads touch the page only through the ring types, which
// use volatile accesses and fences, as two domains would.
unsafe impl Send for Shared {}

/// A ring protocol's entries, as the bench fills, answers and checks them
/// (the same as `ring_h.c`'s `make_request`, `answer` and `answers`).
trait Workload {
    /// The name on the command line and in the report; `ring_h.c` is
    /// built with `-DWORKLOAD_<NAME>` (upper case, `_` for `-`).
    const NAME: &'static str;
    /// Round trips a two-thread round: about a tenth of a second.
    const ROUND_TRIPS: u64;
    type Request: Slot + Send;
    type Response: Slot;
    fn request(number: u64) -> Self::Request;
    fn answer(request: &Self::Request) -> Self::Response;
    fn answers(response: &Self::Response, number: u64) -> bool;
}

struct Blkif;

impl Workload for Blkif {
    const NAME: &'static str = "blkif";
    const ROUND_TRIPS: u64 = 4_000_000;
    type Request = BlkifRequest;
    type Response = BlkifResponse;

    fn request(number: u64) -> BlkifRequest {
        BlkifRequest { operation: BlkifOp::Read.number(), id: number, ..BlkifRequest::default() }
    }

    fn answer(request: &BlkifRequest) -> BlkifResponse {
        BlkifResponse {
            id: request.id,
            operation: request.operation,
            status: BlkifRsp::Okay.number(),
            ..BlkifResponse::default()
        }
    }

    fn answers(response: &BlkifResponse, number: u64) -> bool {
        response.id == number
    }
}

struct NetifTx;

impl Workload for NetifTx {
    const NAME: &'static str = "netif-tx";
    const ROUND_TRIPS: u64 = 16_000_000;
    type Request = NetifTxRequest;
    type Response = NetifTxResponse;

    fn request(number: u64) -> NetifTxRequest {
        NetifTxRequest { gref: number as u32, id: number as u16, size: 1514, ..NetifTxRequest::default() }
    }

    fn answer(request: &NetifTxRequest) -> NetifTxResponse {
        NetifTxResponse { id: request.id, status: NETIF_RSP_OKAY }
    }

    fn answers(response: &NetifTxResponse, number: u64) -> bool {
        response.id == number as u16
    }
}

/// The back end's state (`ring_h.c`'s `struct back_end`).
struct BackEnd<W: Workload, const SLOTS: usize, const SLOT_SIZE: usize> {
    ring: BackRing<W::Request, W::Response, SLOTS, SLOT_SIZE>,
    answered: u64,
}

impl<W: Workload, const SLOTS: usize, const SLOT_SIZE: usize> BackEnd<W, SLOTS, SLOT_SIZE> {
    /// Takes and answers the next request (true), or, with none left,
    /// publishes the responses written (false). A call per request where
    /// `ring_h.c`'s `back_end_poll` takes a batch a call: the same loads
    /// of req_prod, once per batch, either way.
    #[inline(always)]
    fn take(&mut self) -> bool {
        match self.ring.pop_request() {
            Ok(Some(request)) => {
                self.ring.push_response(&W::answer(&request)).expect("a slot per consumed request");
                self.answered += 1;
                true
            }
            Ok(None) => {
                self.ring.publish_responses();
                false
            }
            Err(error) => panic!("ring corrupt: {error:?}"),
        }
    }
}

/// The front end's state between rounds (`ring_h.c`'s `struct front_end`).
struct FrontEnd<W: Workload, const SLOTS: usize, const SLOT_SIZE: usize> {
    ring: FrontRing<W::Request, W::Response, SLOTS, SLOT_SIZE>,
    sent: u64,
    received: u64,
}

impl<W: Workload, const SLOTS: usize, const SLOT_SIZE: usize> FrontEnd<W, SLOTS, SLOT_SIZE> {
    /// Queues requests up to the in-flight limit (the whole ring) and
    /// publishes them, then takes one batch of responses.
    #[inline(always)]
    fn round(&mut self, round_trips: u64) {
        while self.sent < round_trips
            && self.sent - self.received < SLOTS as u64
            && self.ring.push_request(&W::request(self.sent)).is_ok()
        {
            self.sent += 1;
        }
        self.ring.publish_requests();
        // One look at rsp_prod a round: one batch, as the C loop takes.
        for _ in 0..self.ring.unconsumed_responses().expect("ring corrupt") {
            let response = self.ring.pop_response().expect("checked").expect("counted");
            if !W::answers(&response, self.received) {
                out_of_order(self.received);
            }
            self.received += 1;
        }
    }
}

/// Stops the bench on a response that is not the next one. Out of line,
/// taking the count by value: a panic message formatted in the loop would
/// take the address of the front end's counter and keep it in memory.
#[cold]
#[inline(never)]
fn out_of_order(received: u64) -> ! {
    panic!("response {received} out of order");
}

/// Round trips per second through the Rust ring, on `threads` threads.
fn rust_ring<W: Workload, const SLOTS: usize, const SLOT_SIZE: usize>(threads: usize, round_trips: u64) -> f64 {
    let page = Box::into_raw(Box::new(Page([0; 4096]))) as *mut u8;
    // SAFETY: the page outlives both ends (freed after the join below).
    let ring = unsafe { FrontRing::new(page) };
    let mut front = FrontEnd::<W, SLOTS, SLOT_SIZE> { ring, sent: 0, received: 0 };
    let shared = Shared(page);
    let started = Instant::now();
    if threads == 2 {
        let back = std::thread::spawn(move || {
            let shared = shared;
            // SAFETY: as above.
            let ring = unsafe { BackRing::attach(shared.0) };
            let mut back = BackEnd::<W, SLOTS, SLOT_SIZE> { ring, answered: 0 };
            while back.answered < round_trips {
                if !back.take() {
                    std::hint::spin_loop();
                }
            }
            back.take(); // publishes the last responses
        });
        while front.received < round_trips {
            front.round(round_trips);
        }
        back.join().expect("back end thread");
    } else {
        // SAFETY: as above.
        let ring = unsafe { BackRing::attach(shared.0) };
        let mut back = BackEnd::<W, SLOTS, SLOT_SIZE> { ring, answered: 0 };
        while front.received < round_trips {
            front.round(round_trips);
            while back.take() {}
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    // SAFETY: both ends are done with the page.
    drop(unsafe { Box::from_raw(page as *mut Page) });
    round_trips as f64 / seconds
}

/// Builds `ring_h.c` for `workload`, or panics saying what is missing.
fn build_ring_h(workload: &str) -> PathBuf {
    for header in ["/usr/include/xen/io/ring.h", "/usr/include/xen/io/blkif.h", "/usr/include/xen/io/netif.h"] {
        assert!(
            Path::new(header).exists(),
            "\n\n*** {header} is missing: the yardstick needs Xen's headers \
             (Debian: apt-get install libxen-dev). No comparison was made. ***\n"
        );
    }
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/ring_h.c");
    let binary = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ring_h_{workload}"));
    let status = Command::new("cc")
        .args(["-O2", "-Wall", "-pthread"])
        .arg(format!("-DWORKLOAD_{}", workload.to_uppercase().replace('-', "_")))
        .arg("-o")
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
fn c_ring(binary: &Path, threads: usize, round_trips: u64) -> f64 {
    let output =
        Command::new(binary).arg(threads.to_string()).arg(round_trips.to_string()).output().expect("run ring_h");
    assert!(output.status.success(), "ring_h failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().parse().expect("ring_h prints a rate")
}

fn median(mut rates: Vec<f64>) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

/// Runs one workload in one mode, both sides alternating, and reports.
fn compare<W: Workload, const SLOTS: usize, const SLOT_SIZE: usize>(threads: usize, rounds: usize) {
    let binary = build_ring_h(W::NAME);
    // One thread goes several times faster: longer rounds.
    let round_trips = W::ROUND_TRIPS * if threads == 2 { 1 } else { 5 };
    let (mut rust, mut c) = (Vec::new(), Vec::new());
    // One of each first, not counted: warms the caches, the CPU's clock
    // and the page cache holding ring_h.
    rust_ring::<W, SLOTS, SLOT_SIZE>(threads, round_trips);
    c_ring(&binary, threads, round_trips);
    for _ in 0..rounds {
        rust.push(rust_ring::<W, SLOTS, SLOT_SIZE>(threads, round_trips));
        c.push(c_ring(&binary, threads, round_trips));
    }
    let format = |rates: &[f64]| rates.iter().map(|rate| format!("{:.1}", rate / 1e6)).collect::<Vec<_>>().join(" ");
    let mode = if threads == 2 { "two threads" } else { "one thread" };
    println!("{} ring, {SLOTS} slots of {SLOT_SIZE} bytes, {mode}, {round_trips} round trips a round", W::NAME);
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

fn main() {
    // `cargo bench` passes `--bench`; other arguments pick a workload
    // (`blkif`, `netif-tx`), a thread count (`1`, `2`) and the rounds (a
    // number above 2); each kind not named runs all its choices.
    let arguments: Vec<String> = std::env::args().skip(1).filter(|argument| argument != "--bench").collect();
    let named = |name: &str| arguments.iter().any(|argument| argument == name);
    let runs = |kind: &[&str], choice: &str| named(choice) || !kind.iter().any(|&other| named(other));
    let rounds =
        arguments.iter().find_map(|argument| argument.parse::<usize>().ok().filter(|&n| n > 2)).unwrap_or(ROUNDS);
    let workloads = [Blkif::NAME, NetifTx::NAME];
    for threads in [2, 1] {
        if !runs(&["1", "2"], &threads.to_string()) {
            continue;
        }
        if runs(&workloads, Blkif::NAME) {
            compare::<Blkif, 32, BLKIF_ENTRY_SIZE>(threads, rounds);
        }
        if runs(&workloads, NetifTx::NAME) {
            compare::<NetifTx, 256, NETIF_TX_ENTRY_SIZE>(threads, rounds);
        }
    }
}
