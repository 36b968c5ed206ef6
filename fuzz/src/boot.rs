//! What the firmware and boot loader hand hv: the multiboot2 boot
//! information and the ACPI tables.

use hvcore::acpi::{AcpiInfo, PhysicalReader, ResetSpace, assign_inputs};
use hvcore::io_ports;
use hvcore::mmio::DevicePolicy;
use hvcore::multiboot2::parse;

use crate::bytes::Bytes;

/// Parses the input as boot information. What an accepted one yields
/// borrows only from the bytes inside `total_size`, strings hold no NUL,
/// modules do not end before they start; the device-memory policy built
/// from its memory map never lets dom0 map a range the map calls RAM; and
/// its RSDP, if any, is walked as hv walks it (the input standing in for
/// physical memory).
pub fn multiboot2(data: &[u8]) {
    let Ok(info) = parse(data) else { return };
    let total_size = u32::from_le_bytes(data[..4].try_into().expect("parse read the size")) as usize;
    let inside = data[..total_size].as_ptr_range();
    let borrowed = |bytes: &[u8]| {
        let range = bytes.as_ptr_range();
        assert!(bytes.is_empty() || (inside.start <= range.start && range.end <= inside.end));
    };
    for text in [info.cmdline, info.bootloader_name].into_iter().chain(info.modules.iter().map(|m| m.cmdline)) {
        borrowed(text.as_bytes());
        assert!(!text.contains('\0'));
    }
    for module in &info.modules {
        assert!(module.start <= module.end);
    }
    let mut policy = DevicePolicy::new();
    policy.forbid_ram(&info.memory_map);
    for entry in &info.memory_map {
        let base = entry.base & !0xfff;
        for address in [base, entry.end().saturating_sub(1) & !0xfff, base.wrapping_add(0x1000)] {
            let Ok(range) = policy.check(address, 1) else { continue };
            // Kind 2 is reserved; every other kind is RAM of some sort.
            for ram in info.memory_map.iter().filter(|ram| ram.kind != 2 && ram.length != 0) {
                assert!(range.end <= ram.base || ram.end() <= range.start, "{range:?} is RAM: {ram:?}");
            }
        }
    }
    if let Some(rsdp) = info.acpi_rsdp {
        borrowed(rsdp);
        if let Some(acpi) = hvcore::acpi::parse(rsdp, &Memory(data)) {
            check_acpi(&acpi, 24);
        }
    }
}

/// Physical memory from address 0, for the ACPI walk.
struct Memory<'a>(&'a [u8]);

impl PhysicalReader for Memory<'_> {
    fn read(&self, address: u64, out: &mut [u8]) -> bool {
        let Some(bytes) = usize::try_from(address).ok().and_then(|start| self.0.get(start..)?.get(..out.len())) else {
            return false;
        };
        out.copy_from_slice(bytes);
        true
    }
}

/// Bytes that split the structured ACPI input into the RSDP and tables.
const SEPARATOR: &[u8] = b"%TBL";
/// Where table `n` (from 1) of the structured input lies in memory.
const TABLE_STRIDE: usize = 0x1000;

/// Walks ACPI tables. Bit 0 of the first byte picks the input's form:
/// raw, the rest of the input is physical memory from address 0 with the
/// RSDP at its start (bits 1..7 are the RSDP's length); structured, the
/// rest is split at `%TBL` into the RSDP and tables laid 4 KiB apart from
/// address 0x1000, each with its length and checksum fields made right
/// (so the fuzzer reaches what lies behind them). Bits 2..7 also give the
/// number of I/O APIC inputs for [`assign_inputs`]. Sleep types are 3-bit
/// values, ISA IRQs get distinct inputs that exist, and the ports hv keeps
/// stay closed to dom0.
pub fn acpi(data: &[u8]) {
    let mut input = Bytes::new(data);
    let flags = input.byte();
    let inputs = u32::from(flags >> 2);
    let rest = input.take(data.len());
    let info = if flags & 1 == 0 {
        let length = usize::from(flags >> 1).min(rest.len());
        hvcore::acpi::parse(&rest[..length], &Memory(rest))
    } else {
        let mut pieces = split(rest, SEPARATOR);
        let mut rsdp = pieces.next().unwrap_or_default().to_vec();
        fix_rsdp(&mut rsdp);
        let mut memory = Vec::new();
        for (index, piece) in pieces.enumerate().take(16) {
            let mut table = piece[..piece.len().min(TABLE_STRIDE)].to_vec();
            fix_table(&mut table);
            memory.resize((index + 1) * TABLE_STRIDE, 0);
            memory.extend_from_slice(&table);
        }
        hvcore::acpi::parse(&rsdp, &Memory(&memory))
    };
    if let Some(info) = info {
        check_acpi(&info, inputs);
    }
}

fn split<'a>(bytes: &'a [u8], separator: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
    let mut rest = Some(bytes);
    core::iter::from_fn(move || {
        let bytes = rest?;
        match bytes.windows(separator.len()).position(|window| window == separator) {
            Some(at) => {
                rest = Some(&bytes[at + separator.len()..]);
                Some(&bytes[..at])
            }
            None => {
                rest = None;
                Some(bytes)
            }
        }
    })
}

/// Makes `bytes` sum to zero by adjusting the byte at `at`.
fn fix_checksum(bytes: &mut [u8], at: usize) {
    bytes[at] = 0;
    let sum = bytes.iter().fold(0u8, |sum, &byte| sum.wrapping_add(byte));
    bytes[at] = 0u8.wrapping_sub(sum);
}

fn fix_rsdp(rsdp: &mut Vec<u8>) {
    if rsdp.len() < 20 {
        rsdp.resize(20, 0);
    }
    rsdp[..8].copy_from_slice(b"RSD PTR ");
    fix_checksum(&mut rsdp[..20], 8);
    if rsdp.len() >= 36 {
        fix_checksum(&mut rsdp[..36], 32);
    }
}

fn fix_table(table: &mut [u8]) {
    if table.len() >= 36 {
        let length = table.len() as u32;
        table[4..8].copy_from_slice(&length.to_le_bytes());
        fix_checksum(table, 9);
    }
}

fn check_acpi(info: &AcpiInfo, inputs: u32) {
    if let Some((a, b)) = info.s5_sleep_types {
        assert!(a <= 7 && b <= 7);
    }
    let assigned = assign_inputs(&info.isa_routes, inputs);
    let mut claimed = 0u64;
    for (irq, gsi) in assigned.iter().enumerate() {
        let Some(gsi) = *gsi else { continue };
        assert!(gsi < inputs && gsi < 64, "IRQ {irq} on missing input {gsi}");
        assert_eq!(gsi, info.isa_routes[irq].gsi);
        assert!(claimed & 1 << gsi == 0, "input {gsi} given twice");
        claimed |= 1 << gsi;
    }
    let reset_port = info.reset.and_then(|reset| match reset.space {
        ResetSpace::Io(port) => Some(port),
        ResetSpace::Memory(_) => None,
    });
    for port in [info.pm1a_control, info.pm1b_control].into_iter().chain(reset_port).filter(|&port| port != 0) {
        assert!(io_ports::check(u64::from(port), 1, Some(info)).is_err(), "port {port:#x} open to dom0");
    }
}
