//! The 16550 UART on COM1, used by hv for its log (output only).
//!
//! After dom0 starts it drives the same UART for its shell; hv only ever
//! writes bytes, never reconfigures the port after boot.

use super::cpu::{inb, outb};

const COM1: u16 = 0x3f8;
const DATA: u16 = 0;
const INTERRUPT_ENABLE: u16 = 1;
const FIFO_CONTROL: u16 = 2;
const LINE_CONTROL: u16 = 3;
const MODEM_CONTROL: u16 = 4;
const LINE_STATUS: u16 = 5;
/// LSR bit 5: the transmit holding register is empty.
const TRANSMIT_EMPTY: u8 = 1 << 5;
/// LSR bit 6: the transmitter has sent everything.
const TRANSMITTER_IDLE: u8 = 1 << 6;

/// The ports passed through to dom0 (it owns the UART's input side).
pub const COM1_PORTS: core::ops::Range<u16> = COM1..COM1 + 8;

/// Programs COM1 for 115200 8N1 with FIFOs on. Boot-time only.
pub fn init() {
    // SAFETY: COM1 is the UART hv owns at boot; these writes only configure it.
    unsafe {
        outb(COM1 + INTERRUPT_ENABLE, 0x00);
        outb(COM1 + LINE_CONTROL, 0x80); // divisor latch access
        outb(COM1 + DATA, 0x01); // divisor 1: 115200 baud
        outb(COM1 + INTERRUPT_ENABLE, 0x00);
        outb(COM1 + LINE_CONTROL, 0x03); // 8 bits, no parity, one stop bit
        outb(COM1 + FIFO_CONTROL, 0xc7); // enable and clear FIFOs, 14-byte threshold
        outb(COM1 + MODEM_CONTROL, 0x0b); // DTR, RTS, OUT2
    }
}

/// Writes one byte, waiting for the transmitter (bounded, so a dead UART
/// cannot hang hv).
pub fn write_byte(byte: u8) {
    for _ in 0..100_000 {
        // SAFETY: reading the line status register has no side effects.
        if unsafe { inb(COM1 + LINE_STATUS) } & TRANSMIT_EMPTY != 0 {
            break;
        }
        core::hint::spin_loop();
    }
    // SAFETY: writing the data register sends one byte.
    unsafe { outb(COM1 + DATA, byte) }
}

/// Waits (bounded) until every byte written has left the UART (LSR bit 6),
/// so a power-off or reset does not cut the last line short.
pub fn flush() {
    for _ in 0..1_000_000 {
        // SAFETY: reading the line status register has no side effects.
        if unsafe { inb(COM1 + LINE_STATUS) } & TRANSMITTER_IDLE != 0 {
            return;
        }
        core::hint::spin_loop();
    }
}

/// Writes bytes, turning `\n` into `\r\n` for terminals.
pub fn write_bytes(bytes: &[u8]) {
    for &byte in bytes {
        if byte == b'\n' {
            write_byte(b'\r');
        }
        write_byte(byte);
    }
}
