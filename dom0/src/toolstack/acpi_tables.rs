//! The ACPI tables a PVH guest finds through `hvm_start_info.rsdp_paddr`
//! (ACPI 6.4, chapter 5): Linux needs a MADT naming its vCPUs' local APICs
//! (without one it never sets up its per-CPU timers) and a FADT. One page
//! holds them all:
//!
//! | offset | table                                                        |
//! |--------|--------------------------------------------------------------|
//! | 0      | RSDP (revision 2), pointing at the XSDT                      |
//! | 64     | XSDT: the FADT and the MADT                                  |
//! | 128    | FADT (revision 6.4): hardware-reduced, no legacy devices; the sleep control and status registers are I/O ports |
//! | 448    | DSDT: `\_S5` alone (no devices to describe)                  |
//! | 512    | MADT: one enabled local APIC per vCPU (APIC id = vCPU id), no I/O APIC, no 8259 |
//!
//! The guest may not reclaim the page: the memory map marks it ACPI.
//!
//! S5 (soft off) is the one sleep state: a guest powers off through it as
//! on a machine (`abi::xen::start_info`: the ports and the sleep type;
//! hv turns the write into a power-off).

/// Bytes of the tables: one page.
pub const TABLES_SIZE: usize = 4096;

const RSDP: usize = 0;
const XSDT: usize = 64;
const FADT: usize = 128;
const DSDT: usize = 448;
const MADT: usize = 512;

/// Bytes of a system description table's header.
const HEADER: usize = 36;
/// Bytes of a revision 6 FADT.
const FADT_LENGTH: usize = 276;
/// Most vCPUs the MADT can name in its page (8-byte entries after 44 bytes).
pub const MAX_VCPUS: u32 = ((TABLES_SIZE - MADT - 44) / 8) as u32;

/// The DSDT's one definition, in AML: `Name (_S5, Package () { 5, 5 })`
/// (NameOp, the name, PackageOp, PkgLength 6, 2 elements, two BytePrefix
/// constants: SLP_TYPa and SLP_TYPb).
const S5_AML: [u8; 12] = {
    use abi::xen::start_info::ACPI_S5_SLEEP_TYPE as S5;
    [0x08, b'_', b'S', b'5', b'_', 0x12, 0x06, 0x02, 0x0a, S5, 0x0a, S5]
};

const _: () = assert!(XSDT + HEADER + 16 <= FADT && FADT + FADT_LENGTH <= DSDT && DSDT + HEADER + S5_AML.len() <= MADT);

/// The tables for a guest with `vcpus` vCPUs (at most [`MAX_VCPUS`]), to be
/// placed at guest-physical `base`; the RSDP is at `base`.
pub fn build(base: u64, vcpus: u32) -> [u8; TABLES_SIZE] {
    let vcpus = vcpus.clamp(1, MAX_VCPUS) as usize;
    let mut page = [0u8; TABLES_SIZE];
    let address = |offset: usize| base + offset as u64;

    // XSDT: the FADT and the MADT.
    header(&mut page[XSDT..], b"XSDT", HEADER + 16, 1);
    page[XSDT + HEADER..][..8].copy_from_slice(&address(FADT).to_le_bytes());
    page[XSDT + HEADER + 8..][..8].copy_from_slice(&address(MADT).to_le_bytes());
    checksum(&mut page[XSDT..XSDT + HEADER + 16]);

    // FADT: the DSDT (32- and 64-bit pointers), hardware-reduced ACPI
    // (flags bit 20), no VGA (boot architecture bit 2) and no CMOS RTC
    // (bit 5); every fixed-hardware block and the SCI absent.
    header(&mut page[FADT..], b"FACP", FADT_LENGTH, 6);
    let dsdt = address(DSDT);
    page[FADT + 40..][..4].copy_from_slice(&(dsdt as u32).to_le_bytes());
    page[FADT + 109..][..2].copy_from_slice(&(1u16 << 2 | 1 << 5).to_le_bytes());
    page[FADT + 112..][..4].copy_from_slice(&(1u32 << 20).to_le_bytes());
    page[FADT + 131] = 4; // FADT minor version: ACPI 6.4.
    page[FADT + 140..][..8].copy_from_slice(&dsdt.to_le_bytes());
    // The sleep control and status registers (offsets 244 and 256): byte
    // ports in system I/O space (generic address: space 1, 8 bits at bit
    // 0, byte access, the port).
    for (offset, port) in [(244, ACPI_SLEEP_CONTROL_PORT), (256, ACPI_SLEEP_STATUS_PORT)] {
        page[FADT + offset..][..4].copy_from_slice(&[1, 8, 0, 1]);
        page[FADT + offset + 4..][..8].copy_from_slice(&u64::from(port).to_le_bytes());
    }
    checksum(&mut page[FADT..FADT + FADT_LENGTH]);

    // DSDT: `\_S5` alone.
    let dsdt_length = HEADER + S5_AML.len();
    header(&mut page[DSDT..], b"DSDT", dsdt_length, 2);
    page[DSDT + HEADER..dsdt_length + DSDT].copy_from_slice(&S5_AML);
    checksum(&mut page[DSDT..DSDT + dsdt_length]);

    // MADT: the local APIC address, no PC-AT 8259s (flags 0), then a
    // processor local APIC entry (type 0, 8 bytes: ACPI uid, APIC id,
    // flags = enabled) per vCPU.
    let madt_length = 44 + 8 * vcpus;
    header(&mut page[MADT..], b"APIC", madt_length, 5);
    page[MADT + 36..][..4].copy_from_slice(&0xfee0_0000u32.to_le_bytes());
    for vcpu in 0..vcpus {
        let entry = &mut page[MADT + 44 + 8 * vcpu..][..8];
        entry[..4].copy_from_slice(&[0, 8, vcpu as u8, vcpu as u8]);
        entry[4..].copy_from_slice(&1u32.to_le_bytes());
    }
    checksum(&mut page[MADT..MADT + madt_length]);

    // RSDP (ACPI 2.0+): the XSDT; the first checksum covers 20 bytes, the
    // extended one all 36.
    let rsdp = &mut page[RSDP..RSDP + 36];
    rsdp[..8].copy_from_slice(b"RSD PTR ");
    rsdp[9..15].copy_from_slice(OEM_ID);
    rsdp[15] = 2;
    rsdp[20..24].copy_from_slice(&36u32.to_le_bytes());
    rsdp[24..32].copy_from_slice(&address(XSDT).to_le_bytes());
    rsdp[8] = checksum_byte(&rsdp[..20]);
    rsdp[32] = checksum_byte(&rsdp[..36]);
    page
}

const OEM_ID: &[u8; 6] = b"MICA  ";

use abi::xen::start_info::{ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_STATUS_PORT};

/// Writes a table header: `signature`, `length`, `revision`, Mica's ids.
fn header(table: &mut [u8], signature: &[u8; 4], length: usize, revision: u8) {
    table[..4].copy_from_slice(signature);
    table[4..8].copy_from_slice(&(length as u32).to_le_bytes());
    table[8] = revision;
    table[10..16].copy_from_slice(OEM_ID);
    table[16..24].copy_from_slice(b"MICAPVH ");
    table[24..28].copy_from_slice(&1u32.to_le_bytes());
    table[28..32].copy_from_slice(b"MICA");
    table[32..36].copy_from_slice(&1u32.to_le_bytes());
}

/// The byte that makes `bytes` (with it at 0) sum to 0 modulo 256.
fn checksum_byte(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |sum, &byte| sum.wrapping_add(byte)))
}

/// Sets a table's checksum byte (offset 9) so that the table sums to 0.
fn checksum(table: &mut [u8]) {
    table[9] = 0;
    table[9] = checksum_byte(table);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the tables as a guest would: hv's own ACPI parser over the page.
    struct Page(u64, [u8; TABLES_SIZE]);

    impl hvcore::acpi::PhysicalReader for Page {
        fn read(&self, address: u64, out: &mut [u8]) -> bool {
            let Some(offset) = address.checked_sub(self.0).map(|offset| offset as usize) else { return false };
            match self.1.get(offset..offset + out.len()) {
                Some(bytes) => {
                    out.copy_from_slice(bytes);
                    true
                }
                None => false,
            }
        }
    }

    #[test]
    fn the_tables_name_every_vcpu_and_no_legacy_hardware() {
        let base = 0x5000;
        for vcpus in [1, 4, 8] {
            let page = Page(base, build(base, vcpus));
            let info = hvcore::acpi::parse(&page.1[..36], &page).expect("the RSDP and XSDT parse");
            assert_eq!(info.cpus(), &(0..vcpus).collect::<Vec<_>>()[..], "one local APIC per vCPU");
            assert_eq!(info.ioapic_address, None);
            assert_eq!((info.pm1a_control, info.pm1b_control, info.reset), (0, 0, None), "hardware-reduced");
            assert_eq!(info.s5_sleep_types, Some((5, 5)), "the DSDT's \\_S5, read as the firmware's is");
        }
        let page = build(base, 2);
        let sum = |range: core::ops::Range<usize>| page[range].iter().fold(0u8, |sum, &byte| sum.wrapping_add(byte));
        assert_eq!((sum(0..20), sum(0..36)), (0, 0), "both RSDP checksums");
        for (table, length) in
            [(XSDT, HEADER + 16), (FADT, FADT_LENGTH), (DSDT, HEADER + S5_AML.len()), (MADT, 44 + 16)]
        {
            assert_eq!(sum(table..table + length), 0, "table at {table}");
            assert_eq!(u32::from_le_bytes(page[table + 4..table + 8].try_into().unwrap()) as usize, length);
        }
        let flags = u32::from_le_bytes(page[FADT + 112..FADT + 116].try_into().unwrap());
        assert_ne!(flags & 1 << 20, 0, "HW_REDUCED_ACPI");
        assert_eq!(&page[FADT + 140..FADT + 148], &(base + DSDT as u64).to_le_bytes());
        // The sleep registers: byte-wide I/O ports, hv's.
        for (offset, port) in [(244, 0xb100u64), (256, 0xb101)] {
            assert_eq!(&page[FADT + offset..FADT + offset + 4], &[1, 8, 0, 1]);
            assert_eq!(&page[FADT + offset + 4..FADT + offset + 12], &port.to_le_bytes());
        }
        // Too many vCPUs for the page: the MADT names as many as fit.
        let page = Page(base, build(base, 1000));
        assert_eq!(hvcore::acpi::parse(&page.1[..36], &page).unwrap().cpus().len(), MAX_VCPUS.min(64) as usize);
    }
}
