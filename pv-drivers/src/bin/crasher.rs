//! Example guest that misbehaves on purpose, to show that hv stops it alone.
//! Its command line picks how: `mode=memory` (default) writes to
//! guest-physical memory it was never given; `mode=triple` triple-faults;
//! `mode=port` touches an I/O port it does not own (refused, not fatal),
//! then writes past its memory; `mode=panic` panics, so the runtime's
//! crash report goes out through Xen's calls (`console_io`, then
//! `sched_op` shutdown with `SHUTDOWN_crash`).
#![no_std]
#![no_main]

use core::fmt::Write;

use pv_drivers::guest::{self, Guest};

/// 768 MiB: mapped by the initial page tables, backed by nothing.
const NOT_MINE: u64 = 0x3000_0000;

#[unsafe(no_mangle)]
extern "C" fn _start(start_info: u64) -> ! {
    let mut guest = Guest::init(start_info);
    let start_info = guest.start_info;
    let mode = start_info.cmdline().split_whitespace().find_map(|word| word.strip_prefix("mode=")).unwrap_or("memory");
    let _ = writeln!(guest, "crasher: misbehaving now (mode={mode})");
    match mode {
        "triple" => {
            // SAFETY: deliberately loads an empty IDT and raises an exception,
            // which triple-faults: the point of this guest.
            unsafe { core::arch::asm!("lidt [{}]", "ud2", in(reg) &[0u64; 2], options(noreturn)) }
        }
        "panic" => panic!("on purpose (mode=panic)"),
        "port" => {
            // SAFETY: an OUT to the CMOS index port, which hv refuses for guests.
            unsafe { core::arch::asm!("out 0x70, al", in("al") 0u8, options(nomem, nostack)) };
            let _ = writeln!(guest, "crasher: the port write was refused and I am still here");
        }
        _ => {}
    }
    // SAFETY: deliberately writes memory this domain does not own: hv stops it.
    unsafe { core::ptr::write_volatile(NOT_MINE as *mut u64, 0xdead) };
    let _ = writeln!(guest, "crasher: still alive, which is a hypervisor bug");
    loop {
        guest.wait_for_event();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    guest::crash(format_args!("crasher: panic: {info}\n"))
}
