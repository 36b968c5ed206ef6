//! Just enough ACPI (ACPI 6.x spec, chapter 5) for hv: from the RSDP the boot
//! loader hands over, find the FADT's PM1a/PM1b control ports and the
//! DSDT's `\_S5` sleep type (to power off), the FADT's reset register (to
//! reboot), and the MADT's I/O APIC address, interrupt overrides and CPUs.
//!
//! Every table is read through a [`PhysicalReader`] and length- and
//! checksum-checked before use; firmware tables are data, not trusted code.

/// Reads physical memory (the caller's identity map, or a test image).
pub trait PhysicalReader {
    /// Copies `out.len()` bytes at `address`; false if unreadable.
    fn read(&self, address: u64, out: &mut [u8]) -> bool;
}

/// What hv uses from ACPI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcpiInfo {
    /// PM1a control block I/O port (0 if absent).
    pub pm1a_control: u16,
    /// PM1b control block I/O port (0 if absent).
    pub pm1b_control: u16,
    /// `\_S5` SLP_TYPa and SLP_TYPb values, if the DSDT has them.
    pub s5_sleep_types: Option<(u8, u8)>,
    /// The I/O APIC's physical address from the MADT (first one), if any.
    pub ioapic_address: Option<u32>,
    /// The FADT's reset register and value, when the firmware says it works
    /// (ACPI 4.8.3.6) and it is a register hv can write.
    pub reset: Option<ResetRegister>,
    /// How each ISA IRQ reaches the I/O APIC: the MADT's interrupt source
    /// overrides (ACPI 5.2.12.5), identity and ISA defaults elsewhere.
    pub isa_routes: [IsaRoute; 16],
    /// The enabled (or online-capable) processors' local APIC ids, in MADT
    /// order (the boot CPU is conventionally first, but hv does not rely on
    /// it); at most [`MAX_CPUS`].
    pub cpu_ids: [u32; MAX_CPUS],
    /// How many of `cpu_ids` are valid.
    pub cpu_count: usize,
}

impl AcpiInfo {
    /// The CPUs' local APIC ids.
    pub fn cpus(&self) -> &[u32] {
        &self.cpu_ids[..self.cpu_count]
    }
}

/// The most CPUs hv takes from the MADT.
pub const MAX_CPUS: usize = 64;

/// A processor entry of the MADT: type 0 (processor local APIC, 8 bytes:
/// ACPI id, APIC id, flags) or type 9 (processor local x2APIC, 16 bytes:
/// reserved, x2APIC id, flags, ACPI uid). Flags bit 0 is Enabled, bit 1
/// Online Capable (ACPI 6.3: may be enabled later; hv starts it too, as
/// the firmware left it startable). An 8-bit id of 0xff is a placeholder.
fn processor(entry: &[u8]) -> Option<u32> {
    let (id, flags) = match *entry.first()? {
        0 if entry.len() >= 8 => (u32::from(*entry.get(3)?), u32_at(entry, 4)?),
        9 if entry.len() >= 16 => (u32_at(entry, 4)?, u32_at(entry, 8)?),
        _ => return None,
    };
    if flags & 3 == 0 || (entry[0] == 0 && id == 0xff) || id == u32::MAX {
        return None;
    }
    Some(id)
}

/// Where ISA IRQ `n` arrives at the I/O APIC and how it signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IsaRoute {
    /// The global system interrupt (I/O APIC input) the IRQ is wired to.
    pub gsi: u32,
    /// Active low (ISA default: active high).
    pub active_low: bool,
    /// Level-triggered (ISA default: edge).
    pub level: bool,
}

impl IsaRoute {
    /// The ISA default for IRQ `irq`: same input, edge, active high.
    pub const fn identity(irq: u8) -> IsaRoute {
        IsaRoute { gsi: irq as u32, active_low: false, level: false }
    }
}

impl Default for AcpiInfo {
    fn default() -> AcpiInfo {
        AcpiInfo {
            pm1a_control: 0,
            pm1b_control: 0,
            s5_sleep_types: None,
            ioapic_address: None,
            reset: None,
            isa_routes: core::array::from_fn(|irq| IsaRoute::identity(irq as u8)),
            cpu_ids: [0; MAX_CPUS],
            cpu_count: 0,
        }
    }
}

/// The I/O APIC input each ISA IRQ uses, given its routes and the number of
/// inputs: overridden IRQs first, so an override wins the input it names
/// over the identity route of the IRQ that input would otherwise carry (IRQ
/// 2 has none once IRQ 0 arrives at GSI 2); None for an IRQ whose input is
/// taken or missing.
pub fn assign_inputs(routes: &[IsaRoute; 16], inputs: u32) -> [Option<u32>; 16] {
    let mut assigned = [None; 16];
    let mut claimed = 0u64;
    let overridden = |irq: usize| routes[irq] != IsaRoute::identity(irq as u8);
    let order = (0..16).filter(|&irq| overridden(irq)).chain((0..16).filter(|&irq| !overridden(irq)));
    for irq in order {
        let gsi = routes[irq].gsi;
        if gsi < inputs.min(64) && claimed & 1 << gsi == 0 {
            claimed |= 1 << gsi;
            assigned[irq] = Some(gsi);
        }
    }
    assigned
}

/// An interrupt source override (MADT entry type 2, 10 bytes: bus, source
/// IRQ, GSI, MPS INTI flags): polarity in flags bits 0-1 (0 = the bus's,
/// 1 = high, 3 = low), trigger in bits 2-3 (0 = the bus's, 1 = edge, 3 =
/// level). Only ISA (bus 0) sources are taken.
fn isa_override(entry: &[u8]) -> Option<(u8, IsaRoute)> {
    let (bus, irq) = (*entry.get(2)?, *entry.get(3)?);
    let gsi = u32_at(entry, 4)?;
    let flags = u16::from_le_bytes(entry.get(8..10)?.try_into().ok()?);
    if bus != 0 || irq >= 16 {
        return None;
    }
    Some((irq, IsaRoute { gsi, active_low: flags & 3 == 3, level: (flags >> 2) & 3 == 3 }))
}

/// Where writing [`ResetRegister::value`] resets the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetSpace {
    /// An I/O port (Generic Address Structure space 1).
    Io(u16),
    /// A byte of physical memory (space 0).
    Memory(u64),
}

/// The FADT's RESET_REG (a byte-wide register) and RESET_VALUE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResetRegister {
    pub space: ResetSpace,
    pub value: u8,
}

/// FADT Flags bit 10: RESET_REG_SUP.
const FADT_RESET_SUPPORTED: u32 = 1 << 10;

/// The reset register from a FADT (Flags at 112, RESET_REG, a 12-byte
/// Generic Address Structure, at 116, RESET_VALUE at 128). Only an 8-bit
/// register at bit offset 0 in I/O or memory space is taken.
fn reset_register(fadt: &[u8]) -> Option<ResetRegister> {
    if u32_at(fadt, 112)? & FADT_RESET_SUPPORTED == 0 {
        return None;
    }
    let (space_id, width, offset) = (*fadt.get(116)?, *fadt.get(117)?, *fadt.get(118)?);
    let address = u64_at(fadt, 120)?;
    let value = *fadt.get(128)?;
    if width != 8 || offset != 0 || address == 0 {
        return None;
    }
    let space = match space_id {
        0 => ResetSpace::Memory(address),
        1 => ResetSpace::Io(u16::try_from(address).ok()?),
        _ => return None,
    };
    Some(ResetRegister { space, value })
}

const MAX_TABLES: usize = 64;
const MAX_DSDT: usize = 256 * 1024;

fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |sum, &b| sum.wrapping_add(b)) == 0
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// Reads a whole table at `address` into `buffer`, checking its length
/// field and checksum; returns its signature and length.
fn read_table<'a>(reader: &impl PhysicalReader, address: u64, buffer: &'a mut [u8]) -> Option<([u8; 4], &'a [u8])> {
    let mut header = [0u8; 36];
    if !reader.read(address, &mut header) {
        return None;
    }
    let length = u32_at(&header, 4)? as usize;
    if length < 36 || length > buffer.len() {
        return None;
    }
    let table = &mut buffer[..length];
    if !reader.read(address, table) || !checksum_ok(table) {
        return None;
    }
    Some((header[..4].try_into().ok()?, table))
}

/// Finds `\_S5` in AML: `NameOp "_S5_" PackageOp PkgLength NumElements
/// SLP_TYPa SLP_TYPb` (values as BytePrefix+byte or a bare 0/1 constant).
pub fn find_s5(aml: &[u8]) -> Option<(u8, u8)> {
    let at = aml.windows(4).position(|w| w == b"_S5_")?;
    let mut cursor = at + 4;
    if *aml.get(cursor)? != 0x12 {
        return None; // not followed by a PackageOp
    }
    cursor += 1;
    // PkgLength: the top two bits of the first byte count extra bytes.
    let extra = (*aml.get(cursor)? >> 6) as usize;
    cursor += 1 + extra + 1; // length bytes, then NumElements
    let mut value = || -> Option<u8> {
        let byte = *aml.get(cursor)?;
        let (result, width) = match byte {
            0x0a => (*aml.get(cursor + 1)?, 2), // BytePrefix
            0x00 => (0, 1),                     // ZeroOp
            0x01 => (1, 1),                     // OneOp
            _ => return None,
        };
        cursor += width;
        Some(result)
    };
    let a = value()?;
    let b = value().unwrap_or(0);
    Some((a & 7, b & 7))
}

/// Walks the tables from the RSDP bytes the boot loader copied.
pub fn parse(rsdp: &[u8], reader: &impl PhysicalReader) -> Option<AcpiInfo> {
    if rsdp.get(..8)? != b"RSD PTR " || !checksum_ok(rsdp.get(..20)?) {
        return None;
    }
    let revision = *rsdp.get(15)?;
    // ACPI 2+: the XSDT (64-bit entries) if present, else the RSDT.
    let (root, entry_size) = match (revision, u64_at(rsdp, 24)) {
        (2.., Some(xsdt)) if xsdt != 0 && rsdp.len() >= 36 && checksum_ok(&rsdp[..36]) => (xsdt, 8),
        _ => (u32_at(rsdp, 16)? as u64, 4),
    };
    let mut buffer = [0u8; 4 + 36 + 8 * MAX_TABLES];
    let (signature, root_table) = read_table(reader, root, &mut buffer)?;
    if &signature != b"XSDT" && &signature != b"RSDT" {
        return None;
    }
    let mut entries = [0u64; MAX_TABLES];
    let count = ((root_table.len() - 36) / entry_size).min(MAX_TABLES);
    for (index, entry) in entries.iter_mut().take(count).enumerate() {
        let at = 36 + index * entry_size;
        *entry = if entry_size == 8 { u64_at(root_table, at)? } else { u32_at(root_table, at)? as u64 };
    }
    let mut info = AcpiInfo::default();
    let mut table = [0u8; 4096];
    for &address in &entries[..count] {
        let Some((signature, bytes)) = read_table(reader, address, &mut table) else { continue };
        match &signature {
            b"FACP" => {
                info.pm1a_control = u32_at(bytes, 64).unwrap_or(0) as u16;
                info.pm1b_control = u32_at(bytes, 68).unwrap_or(0) as u16;
                info.reset = reset_register(bytes);
                let dsdt = u64_at(bytes, 140).filter(|&a| a != 0).or(u32_at(bytes, 40).map(u64::from));
                if let Some(dsdt) = dsdt {
                    info.s5_sleep_types = find_s5_in_table(reader, dsdt);
                }
            }
            b"APIC" => {
                // MADT entries from offset 44: type, length, ...; type 1 is an I/O APIC.
                let mut at = 44;
                while at + 2 <= bytes.len() {
                    let (kind, length) = (bytes[at], bytes[at + 1] as usize);
                    if length < 2 || at + length > bytes.len() {
                        break;
                    }
                    if kind == 1 && length >= 12 && info.ioapic_address.is_none() {
                        info.ioapic_address = u32_at(bytes, at + 4);
                    }
                    if kind == 2
                        && length >= 10
                        && let Some((irq, route)) = isa_override(&bytes[at..at + length])
                    {
                        info.isa_routes[irq as usize] = route;
                    }
                    if let Some(id) = processor(&bytes[at..at + length])
                        && !info.cpus().contains(&id)
                        && info.cpu_count < MAX_CPUS
                    {
                        info.cpu_ids[info.cpu_count] = id;
                        info.cpu_count += 1;
                    }
                    at += length;
                }
            }
            _ => {}
        }
    }
    Some(info)
}

/// Reads the DSDT in pieces (it can be large) and finds `\_S5`.
fn find_s5_in_table(reader: &impl PhysicalReader, address: u64) -> Option<(u8, u8)> {
    let mut header = [0u8; 36];
    if !reader.read(address, &mut header) || &header[..4] != b"DSDT" {
        return None;
    }
    let length = (u32_at(&header, 4)? as usize).min(MAX_DSDT);
    // Scan in overlapping windows so a match across a boundary is found.
    let mut window = [0u8; 4096];
    let mut offset = 36;
    while offset < length {
        let size = (length - offset).min(window.len());
        if !reader.read(address + offset as u64, &mut window[..size]) {
            return None;
        }
        if let Some(found) = find_s5(&window[..size]) {
            return Some(found);
        }
        if size < window.len() {
            break;
        }
        offset += size - 16;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sparse physical memory for tests.
    struct Memory(std::collections::BTreeMap<u64, Vec<u8>>);

    impl PhysicalReader for Memory {
        fn read(&self, address: u64, out: &mut [u8]) -> bool {
            for (&base, bytes) in &self.0 {
                if address >= base && address + out.len() as u64 <= base + bytes.len() as u64 {
                    let start = (address - base) as usize;
                    out.copy_from_slice(&bytes[start..start + out.len()]);
                    return true;
                }
            }
            false
        }
    }

    fn table(signature: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0u8; 36];
        bytes[..4].copy_from_slice(signature);
        bytes.extend_from_slice(body);
        let length = bytes.len() as u32;
        bytes[4..8].copy_from_slice(&length.to_le_bytes());
        let sum = bytes.iter().fold(0u8, |s, &b| s.wrapping_add(b));
        bytes[9] = 0u8.wrapping_sub(sum);
        bytes
    }

    fn machine() -> (Vec<u8>, Memory) {
        let mut aml = vec![0x10, 0x20, 0x5c]; // some unrelated AML first
        aml.extend_from_slice(&[0x08, b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04, 0x0a, 0x05, 0x0a, 0x05, 0x00, 0x00]);
        let dsdt = table(b"DSDT", &aml);
        let mut fadt_body = vec![0u8; 244 - 36];
        fadt_body[40 - 36..44 - 36].copy_from_slice(&0x3000u32.to_le_bytes());
        fadt_body[64 - 36..68 - 36].copy_from_slice(&0xb004u32.to_le_bytes());
        let fadt = table(b"FACP", &fadt_body);
        let mut madt_body = vec![0u8; 8];
        madt_body.extend_from_slice(&[0, 8, 0, 0, 1, 0, 0, 0]); // a local APIC, id 0
        madt_body.extend_from_slice(&[0, 8, 1, 1, 0, 0, 0, 0]); // disabled, id 1
        madt_body.extend_from_slice(&[0, 8, 2, 3, 2, 0, 0, 0]); // online capable, id 3
        madt_body.extend_from_slice(&[0, 8, 3, 0xff, 1, 0, 0, 0]); // placeholder id
        madt_body.extend_from_slice(&[9, 16, 0, 0, 0x00, 0x01, 0, 0, 1, 0, 0, 0, 4, 0, 0, 0]); // x2APIC id 256
        madt_body.extend_from_slice(&[9, 16, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 5, 0, 0, 0]); // x2APIC, id 3 again
        madt_body.extend_from_slice(&[0, 6, 4, 7, 1, 0]); // truncated local APIC
        madt_body.extend_from_slice(&[1, 12, 1, 0]);
        madt_body.extend_from_slice(&0xfec0_0000u32.to_le_bytes());
        madt_body.extend_from_slice(&0u32.to_le_bytes());
        // Overrides: IRQ 0 -> GSI 2 (bus defaults), IRQ 9 level, active low.
        madt_body.extend_from_slice(&[2, 10, 0, 0, 2, 0, 0, 0, 0, 0]);
        madt_body.extend_from_slice(&[2, 10, 0, 9, 9, 0, 0, 0, 0x0f, 0]);
        let madt = table(b"APIC", &madt_body);
        let mut rsdt_body = Vec::new();
        rsdt_body.extend_from_slice(&0x1000u32.to_le_bytes());
        rsdt_body.extend_from_slice(&0x2000u32.to_le_bytes());
        let rsdt = table(b"RSDT", &rsdt_body);
        let mut rsdp = b"RSD PTR ".to_vec();
        rsdp.extend_from_slice(&[0; 7]);
        rsdp.push(0); // revision 0
        rsdp.extend_from_slice(&0x4000u32.to_le_bytes());
        let sum = rsdp.iter().fold(0u8, |s, &b| s.wrapping_add(b));
        rsdp[8] = 0u8.wrapping_sub(sum);
        let memory = Memory([(0x1000, fadt), (0x2000, madt), (0x3000, dsdt), (0x4000, rsdt)].into_iter().collect());
        (rsdp, memory)
    }

    #[test]
    fn finds_power_off_and_the_io_apic() {
        let (rsdp, memory) = machine();
        let info = parse(&rsdp, &memory).unwrap();
        assert_eq!(info.pm1a_control, 0xb004);
        assert_eq!(info.s5_sleep_types, Some((5, 5)));
        assert_eq!(info.ioapic_address, Some(0xfec0_0000));
        assert_eq!(info.isa_routes[0], IsaRoute { gsi: 2, active_low: false, level: false });
        assert_eq!(info.isa_routes[9], IsaRoute { gsi: 9, active_low: true, level: true });
        assert_eq!(info.isa_routes[4], IsaRoute::identity(4));
        assert_eq!(info.cpus(), &[0, 3, 256], "enabled and online-capable CPUs, each once");
        // An override of a non-ISA bus, or of an IRQ past 15, is not an ISA route.
        assert_eq!(isa_override(&[2, 10, 1, 5, 5, 0, 0, 0, 0x0f, 0]), None);
        assert_eq!(isa_override(&[2, 10, 0, 16, 16, 0, 0, 0, 0x0f, 0]), None);
        assert_eq!(isa_override(&[2, 10, 0, 5]), None, "truncated");
    }

    #[test]
    fn processors_are_enabled_local_apic_or_x2apic_entries() {
        assert_eq!(processor(&[0, 8, 0, 5, 1, 0, 0, 0]), Some(5));
        assert_eq!(processor(&[0, 8, 0, 5, 0, 0, 0, 0]), None, "disabled");
        assert_eq!(processor(&[0, 8, 0, 5, 2, 0, 0, 0]), Some(5), "online capable");
        assert_eq!(processor(&[0, 8, 0, 0xff, 1, 0, 0, 0]), None, "placeholder");
        assert_eq!(processor(&[9, 16, 0, 0, 0x34, 0x12, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]), Some(0x1234));
        assert_eq!(processor(&[9, 16, 0, 0, 0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(processor(&[9, 12, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0]), None, "truncated x2APIC");
        assert_eq!(processor(&[1, 12, 1, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0]), None, "an I/O APIC");
    }

    #[test]
    fn overrides_win_their_inputs() {
        let mut routes: [IsaRoute; 16] = core::array::from_fn(|irq| IsaRoute::identity(irq as u8));
        routes[0] = IsaRoute { gsi: 2, active_low: false, level: false };
        routes[9] = IsaRoute { gsi: 20, active_low: true, level: true };
        let inputs = assign_inputs(&routes, 24);
        assert_eq!(inputs[0], Some(2));
        assert_eq!(inputs[2], None, "IRQ 2's input went to IRQ 0");
        assert_eq!(inputs[9], Some(20));
        assert_eq!(inputs[4], Some(4));
        // An override past the I/O APIC's inputs routes nowhere.
        routes[9].gsi = 30;
        assert_eq!(assign_inputs(&routes, 24)[9], None);
        // IRQ 5 overridden onto input 11: it wins it over IRQ 11's identity route.
        routes[5] = IsaRoute { gsi: 11, active_low: false, level: true };
        let inputs = assign_inputs(&routes, 24);
        assert_eq!((inputs[5], inputs[11]), (Some(11), None));
    }

    #[test]
    fn the_reset_register_is_taken_only_when_supported_and_writable() {
        let mut fadt = vec![0u8; 244];
        assert_eq!(reset_register(&fadt), None, "RESET_REG_SUP clear");
        fadt[112..116].copy_from_slice(&FADT_RESET_SUPPORTED.to_le_bytes());
        fadt[116..120].copy_from_slice(&[1, 8, 0, 1]);
        fadt[120..128].copy_from_slice(&0xcf9u64.to_le_bytes());
        fadt[128] = 0x06;
        assert_eq!(reset_register(&fadt), Some(ResetRegister { space: ResetSpace::Io(0xcf9), value: 6 }));
        fadt[116] = 0;
        fadt[120..128].copy_from_slice(&0xfed0_0000u64.to_le_bytes());
        assert_eq!(reset_register(&fadt).map(|r| r.space), Some(ResetSpace::Memory(0xfed0_0000)));
        fadt[116] = 2; // PCI configuration space: not taken
        assert_eq!(reset_register(&fadt), None);
        fadt[116] = 1;
        fadt[120..128].copy_from_slice(&0x1_0000u64.to_le_bytes());
        assert_eq!(reset_register(&fadt), None, "past the I/O space");
        fadt[120..128].copy_from_slice(&0xcf9u64.to_le_bytes());
        fadt[117] = 16;
        assert_eq!(reset_register(&fadt), None, "not a byte register");
        assert_eq!(reset_register(&fadt[..100]), None, "an ACPI 1.0 FADT has none");
    }

    #[test]
    fn broken_tables_are_skipped_not_trusted() {
        let (mut rsdp, memory) = machine();
        rsdp[0] = b'X';
        assert_eq!(parse(&rsdp, &memory), None);
        let (rsdp, mut memory) = machine();
        memory.0.get_mut(&0x1000).unwrap()[40] ^= 0xff; // FADT checksum broken
        let info = parse(&rsdp, &memory).unwrap();
        assert_eq!(info.pm1a_control, 0, "a table with a bad checksum is ignored");
        assert_eq!(info.ioapic_address, Some(0xfec0_0000));
        assert_eq!(find_s5(b"_S5_"), None);
        assert_eq!(find_s5(&[b'_', b'S', b'5', b'_', 0x12, 0x04, 0x02, 0x00, 0x01]), Some((0, 1)));
    }

    #[test]
    fn random_memory_never_panics() {
        let (rsdp, memory) = machine();
        let mut random = crate::test_random::XorShift(0x2545_f491_4f6c_dd1d);
        for _ in 0..2000 {
            let mut memory = Memory(memory.0.clone());
            for bytes in memory.0.values_mut() {
                for _ in 0..4 {
                    let seed = random.next();
                    let at = (seed as usize) % bytes.len();
                    bytes[at] = (seed >> 32) as u8;
                }
            }
            let _ = parse(&rsdp, &memory);
        }
    }
}
