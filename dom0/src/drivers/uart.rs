//! 16550 UART driver for COM1: input polled or on IRQ 4, output queued and
//! handed over a FIFO at a time. dom0 owns the serial console: hv
//! passes the eight COM1 ports through to it.

use core::arch::asm;
use core::fmt;

const COM1: u16 = 0x3f8;
const DATA: u16 = 0;
const INTERRUPT_ENABLE: u16 = 1;
const FIFO_CONTROL: u16 = 2;
const LINE_CONTROL: u16 = 3;
const MODEM_CONTROL: u16 = 4;
const LINE_STATUS: u16 = 5;
/// LSR bit 0: a received byte is waiting.
const DATA_READY: u8 = 1 << 0;
/// LSR bit 5: the transmit holding register is empty.
const TRANSMIT_EMPTY: u8 = 1 << 5;
/// LSR bit 6: the transmitter has sent everything.
const TRANSMITTER_IDLE: u8 = 1 << 6;

fn outb(port: u16, value: u8) {
    // SAFETY: only COM1's ports are used, which hv passes through to dom0;
    // writing them affects only the UART.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags)) }
}

fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`; reads of COM1 have no memory effects.
    unsafe { asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags)) }
    value
}

/// Bytes written but not yet handed to the UART.
const TRANSMIT_QUEUE: usize = 4096;
/// The 16550's transmit FIFO: bytes the UART takes at once when LSR says
/// the holding register (the FIFO, with FIFOs on) is empty.
const TRANSMIT_FIFO: usize = 16;

/// The serial console. Output is queued and handed to the UART a FIFO's
/// worth at a time ([`Uart::drain`], called from dom0's loop), so a line
/// of output costs dom0 a few port writes instead of a busy wait of a
/// whole line at 115200 baud while guests wait for their I/O.
pub struct Uart {
    queue: [u8; TRANSMIT_QUEUE],
    /// Index of the oldest queued byte.
    head: usize,
    /// Queued bytes.
    length: usize,
}

impl Uart {
    /// Programs 115200 8N1, FIFOs on (so emulators deliver input promptly).
    pub fn init() -> Uart {
        // Let hv's last log bytes leave before the FIFOs are reset (LSR bit 6:
        // transmitter empty); bounded so a dead UART cannot hang dom0.
        for _ in 0..1_000_000 {
            if inb(COM1 + LINE_STATUS) & TRANSMITTER_IDLE != 0 {
                break;
            }
            core::hint::spin_loop();
        }
        outb(COM1 + INTERRUPT_ENABLE, 0x00);
        outb(COM1 + LINE_CONTROL, 0x80);
        outb(COM1 + DATA, 0x01);
        outb(COM1 + INTERRUPT_ENABLE, 0x00);
        outb(COM1 + LINE_CONTROL, 0x03);
        outb(COM1 + FIFO_CONTROL, 0xc7);
        outb(COM1 + MODEM_CONTROL, 0x0b);
        Uart { queue: [0; TRANSMIT_QUEUE], head: 0, length: 0 }
    }

    /// The UART as `init` left it, with an empty queue (for the panic handler).
    pub fn without_init() -> Uart {
        Uart { queue: [0; TRANSMIT_QUEUE], head: 0, length: 0 }
    }

    /// Queues one byte and hands the UART what it can take now. With the
    /// queue full, waits for the UART to take the oldest bytes first.
    pub fn write_byte(&mut self, byte: u8) {
        while self.length == TRANSMIT_QUEUE {
            while inb(COM1 + LINE_STATUS) & TRANSMIT_EMPTY == 0 {
                core::hint::spin_loop();
            }
            self.drain();
        }
        self.queue[(self.head + self.length) % TRANSMIT_QUEUE] = byte;
        self.length += 1;
        self.drain();
    }

    /// Hands queued bytes to the UART if its transmit FIFO is empty (one
    /// status read otherwise). Returns whether bytes are still queued.
    pub fn drain(&mut self) -> bool {
        if self.length == 0 {
            return false;
        }
        if inb(COM1 + LINE_STATUS) & TRANSMIT_EMPTY == 0 {
            return true;
        }
        for _ in 0..self.length.min(TRANSMIT_FIFO) {
            outb(COM1 + DATA, self.queue[self.head]);
            self.head = (self.head + 1) % TRANSMIT_QUEUE;
            self.length -= 1;
        }
        self.length != 0
    }

    /// Sends bytes, turning `\n` into `\r\n`.
    pub fn write_bytes(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if byte == b'\n' {
                self.write_byte(b'\r');
            }
            self.write_byte(byte);
        }
    }

    /// Waits until everything written has left the UART (LSR bit 6), so a
    /// power-off does not cut the last line short. Bounded.
    pub fn flush(&mut self) {
        while self.drain() {
            core::hint::spin_loop();
        }
        for _ in 0..1_000_000 {
            if inb(COM1 + LINE_STATUS) & TRANSMITTER_IDLE != 0 {
                return;
            }
            core::hint::spin_loop();
        }
    }

    /// Interrupts on received data (IER bit 0); the line is ISA IRQ 4, which
    /// dom0 binds to an event channel. OUT2 (set by `init`) gates it on PCs.
    pub fn enable_receive_interrupt(&mut self) {
        outb(COM1 + INTERRUPT_ENABLE, 0x01);
    }

    /// A received byte, if one is waiting.
    pub fn try_read_byte(&mut self) -> Option<u8> {
        if inb(COM1 + LINE_STATUS) & DATA_READY != 0 { Some(inb(COM1 + DATA)) } else { None }
    }
}

impl fmt::Write for Uart {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        self.write_bytes(text.as_bytes());
        Ok(())
    }
}
