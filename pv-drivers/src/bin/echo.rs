//! Example guest: reads lines from its console and echoes them back.
#![no_std]
#![no_main]

use core::fmt::Write;

use pv_drivers::guest::{self, Guest};

#[unsafe(no_mangle)]
extern "C" fn _start(start_info: u64) -> ! {
    let mut guest = Guest::init(start_info);
    let _ = writeln!(guest, "echo: ready (domain {}); type a line", guest.domain_id());
    let mut line = [0u8; 256];
    let mut length = 0;
    loop {
        let mut input = [0u8; 64];
        let count = guest.read(&mut input);
        if count == 0 {
            guest.wait_for_input();
            continue;
        }
        for &byte in &input[..count] {
            match byte {
                b'\r' | b'\n' => {
                    let text = core::str::from_utf8(&line[..length]).unwrap_or("?");
                    let _ = writeln!(guest, "\necho: {text}");
                    length = 0;
                }
                0x08 | 0x7f if length > 0 => {
                    length -= 1;
                    guest.write(b"\x08 \x08");
                }
                0x20..=0x7e if length < line.len() => {
                    line[length] = byte;
                    length += 1;
                    guest.write(&[byte]);
                }
                _ => {}
            }
        }
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    guest::crash(format_args!("echo: panic: {info}\n"))
}
