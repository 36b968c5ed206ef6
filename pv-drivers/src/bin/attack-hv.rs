//! Hostile-guest suite: attack-hv (placeholder; its attack modes are being written).
#![no_std]
#![no_main]

use core::fmt::Write;

use pv_drivers::guest::{self, Guest};

#[unsafe(no_mangle)]
extern "C" fn _start(start_info: u64) -> ! {
    let mut guest = Guest::init(start_info);
    let mut cmdline = arrayvec::ArrayString::<256>::new();
    let _ = cmdline.try_push_str(guest.cmdline());
    let _ = writeln!(guest, "attack-hv: no attack modes yet (cmdline {:?})", cmdline.as_str());
    loop {
        guest.wait_for_event();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    guest::crash(format_args!("attack-hv: panic: {info}\n"))
}
