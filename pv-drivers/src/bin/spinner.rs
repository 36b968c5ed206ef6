//! Example guest: spins forever without yielding or halting, printing its
//! progress now and then, to show that the scheduler still shares the CPU.
#![no_std]
#![no_main]

use core::fmt::Write;

use pv_drivers::guest::{self, Guest};

/// Iterations between progress lines.
const REPORT_EVERY: u64 = 1 << 22;

#[unsafe(no_mangle)]
extern "C" fn _start(start_info: u64) -> ! {
    let mut guest = Guest::init(start_info);
    let _ = writeln!(guest, "spinner: spinning (domain {})", guest.domain_id());
    let mut iterations: u64 = 0;
    loop {
        iterations = core::hint::black_box(iterations + 1);
        if iterations.is_multiple_of(REPORT_EVERY) {
            let _ = writeln!(guest, "spinner: {} million iterations", iterations >> 20);
        }
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    guest::crash(format_args!("spinner: panic: {info}\n"))
}
