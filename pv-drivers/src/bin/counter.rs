//! Example guest: greets, then prints a counter once per second of guest time.
#![no_std]
#![no_main]

use core::fmt::Write;

use pv_drivers::guest::{self, Guest};

#[unsafe(no_mangle)]
extern "C" fn _start(start_info: u64) -> ! {
    let mut guest = Guest::init(start_info);
    let _ = writeln!(guest, "counter: hello from domain {}", guest.domain_id());
    let second = guest.ticks_per_second();
    let mut deadline = guest::now() + second;
    for count in 1u64.. {
        guest.sleep_until(deadline);
        deadline += second;
        let _ = writeln!(guest, "counter: {count}");
    }
    unreachable!()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    guest::crash(format_args!("counter: panic: {info}\n"))
}
