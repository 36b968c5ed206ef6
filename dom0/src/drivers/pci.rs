//! PCI bus enumeration through configuration mechanism #1 (the data port
//! 0xCFC passes through to dom0; hv performs dom0's doubleword accesses to
//! the address port 0xCF8 and keeps 0xCF9, the reset control register). Decoding lives in
//! `dom0core::drivers::ata_protocol::pci`, host-tested; this file only moves dwords.

use core::arch::asm;

use arrayvec::ArrayVec;
use dom0core::drivers::ata_protocol::pci::{
    DEVICES_PER_BUS, FUNCTIONS_PER_DEVICE, HEADER_DWORDS, NO_VENDOR, config_address, decode, is_multi_function,
};
pub use dom0core::drivers::ata_protocol::pci::{PciDevice, class_name};

/// CONFIG_ADDRESS: which dword of configuration space 0xCFC reaches.
const CONFIG_ADDRESS: u16 = 0xcf8;
/// CONFIG_DATA: the selected dword.
const CONFIG_DATA: u16 = 0xcfc;

fn outl(port: u16, value: u32) {
    // SAFETY: only the configuration mechanism's ports are used, which hv
    // passes through to dom0; selecting a dword has no other effect.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags)) }
}

fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: as for `outl`; reading configuration space has no memory
    // effects (the standard header has no read-to-clear registers).
    unsafe { asm!("in eax, dx", out("eax") value, in("dx") port, options(nomem, nostack, preserves_flags)) }
    value
}

/// Writes `value` to the configuration address port and reads it back (the
/// selftest's check that hv forwards dom0's accesses to it).
pub fn address_round_trip(value: u32) -> u32 {
    outl(CONFIG_ADDRESS, value);
    inl(CONFIG_ADDRESS)
}

/// Reads the reset control register 0xCF9 as any dom0 code could: hv keeps
/// it, so the read is refused and floats high (0xFF).
pub fn read_reset_control() -> u8 {
    let value: u8;
    // SAFETY: a read of the reset control register has no effect (and hv
    // refuses it anyway); no memory is touched.
    unsafe { asm!("in al, dx", out("al") value, in("dx") 0xcf9u16, options(nomem, nostack, preserves_flags)) }
    value
}

/// Reads one dword of a function's configuration space. The address and
/// data ports are a pair: dom0 is single-threaded, so nothing else selects
/// another dword in between.
fn read_config(bus: u8, device: u8, function: u8, offset: u8) -> u32 {
    outl(CONFIG_ADDRESS, config_address(bus, device, function, offset));
    inl(CONFIG_DATA)
}

/// Writes one dword of a function's configuration space (same pairing as
/// `read_config`).
fn write_config(bus: u8, device: u8, function: u8, offset: u8, value: u32) {
    outl(CONFIG_ADDRESS, config_address(bus, device, function, offset));
    outl(CONFIG_DATA, value);
}

/// Command register bits (PCI Local Bus Specification 3.0, 6.2.2).
const COMMAND_IO_SPACE: u16 = 1 << 0;
const COMMAND_MEMORY_SPACE: u16 = 1 << 1;
const COMMAND_BUS_MASTER: u16 = 1 << 2;

/// Lets `device` answer memory accesses to its BARs and master the bus (DMA).
/// Other command bits are kept; the status half of the dword is written as
/// zeros, which clears none of its write-one-to-clear bits.
pub fn enable_memory_and_bus_master(device: &PciDevice) {
    let (bus, slot, function) = (device.bus, device.device, device.function);
    let command = read_config(bus, slot, function, 0x04) as u16;
    write_config(bus, slot, function, 0x04, (command | COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER) as u32);
}

/// Lets `device` answer I/O accesses to its BARs and master the bus (DMA),
/// keeping the other command bits as `enable_memory_and_bus_master` does.
pub fn enable_io_and_bus_master(device: &PciDevice) {
    let (bus, slot, function) = (device.bus, device.device, device.function);
    let command = read_config(bus, slot, function, 0x04) as u16;
    write_config(bus, slot, function, 0x04, (command | COMMAND_IO_SPACE | COMMAND_BUS_MASTER) as u32);
}

/// The physical address BAR `index` decodes, if it is a memory BAR (32- or
/// 64-bit; PCI 3.0, 6.2.5.1).
pub fn memory_bar(device: &PciDevice, index: usize) -> Option<u64> {
    let low = *device.bars.get(index)?;
    if low & 1 != 0 {
        return None; // an I/O BAR
    }
    let high = match (low >> 1) & 0b11 {
        0b00 => 0,
        0b10 => *device.bars.get(index + 1)?,
        _ => return None,
    };
    Some((high as u64) << 32 | (low & !0xf) as u64)
}

/// Reads the standard header of a function, or `None` when nothing answers.
fn probe(bus: u8, device: u8, function: u8) -> Option<PciDevice> {
    // The vendor alone first: most slots are empty.
    if read_config(bus, device, function, 0) as u16 == NO_VENDOR {
        return None;
    }
    let mut header = [0u32; HEADER_DWORDS];
    for (index, dword) in header.iter_mut().enumerate() {
        *dword = read_config(bus, device, function, (index * 4) as u8);
    }
    decode(bus, device, function, &header)
}

/// Replaces `out`'s contents with every function on buses 0-255, in bus,
/// device, function order: functions 1-7 are probed only when function 0's
/// header type says the device has them. Devices past the 32nd are left out.
pub fn enumerate(out: &mut ArrayVec<PciDevice, 32>) {
    out.clear();
    for bus in 0..=u8::MAX {
        for device in 0..DEVICES_PER_BUS {
            let Some(first) = probe(bus, device, 0) else { continue };
            if out.try_push(first).is_err() {
                return;
            }
            if !is_multi_function(read_config(bus, device, 0, 0x0c)) {
                continue;
            }
            for function in 1..FUNCTIONS_PER_DEVICE {
                if let Some(found) = probe(bus, device, function)
                    && out.try_push(found).is_err()
                {
                    return;
                }
            }
        }
    }
}
