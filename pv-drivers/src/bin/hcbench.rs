//! Example guest that measures hypercall round trips from a guest (not
//! dom0), prints them, then idles (so `console hcbench` can show them).
#![no_std]
#![no_main]

use core::fmt::Write;

use pv_drivers::guest::{self, Guest};
use pv_drivers::hypercall;

const CALLS: u64 = 10_000;

#[unsafe(no_mangle)]
extern "C" fn _start(start_info: u64) -> ! {
    let mut guest = Guest::init(start_info);
    let mut total = 0;
    let mut minimum = u64::MAX;
    for _ in 0..CALLS {
        let start = guest::now();
        hypercall::null();
        let ticks = guest::now() - start;
        total += ticks;
        minimum = minimum.min(ticks);
    }
    let _ = writeln!(guest, "hcbench: null hypercall {} tsc/call (min {minimum}, {CALLS} calls)", total / CALLS);
    // An event from this guest to another domain: the console channel to
    // dom0 (hv: port lookup, pending bit in dom0's event page, wake-up).
    let port = guest.console_port();
    let (mut total, mut minimum) = (0, u64::MAX);
    for _ in 0..CALLS {
        let start = guest::now();
        let _ = hypercall::notify(port);
        let ticks = guest::now() - start;
        total += ticks;
        minimum = minimum.min(ticks);
    }
    let _ = writeln!(guest, "hcbench: event send to dom0 {} tsc/call (min {minimum}, {CALLS} calls)", total / CALLS);
    loop {
        guest.wait_for_event();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    guest::crash(format_args!("hcbench: panic: {info}\n"))
}
