//! A bounds-checked parser for the Multiboot2 boot information structure (Multiboot2 spec 3.6).
//!
//! The structure is an 8-byte header (`total_size: u32`, `reserved: u32`)
//! followed by tags. Each tag starts on an 8-byte boundary with `type: u32`
//! and `size: u32`; `size` counts the 8-byte tag header and the payload but
//! not the padding up to the next tag. A tag of type 0 and size 8 ends the
//! list. All fields are little-endian.
//!
//! The boot loader is trusted less than it looks: a wrong size must not make
//! the hypervisor read past the structure, so every read here goes through
//! `get` and every error is a value, never a panic.

use arrayvec::ArrayVec;

/// The value the boot loader leaves in EAX when it enters the kernel (spec 3.2).
pub const BOOTLOADER_MAGIC: u32 = 0x36d7_6289;

/// Tag types this parser understands (spec 3.6).
mod tag_type {
    pub const END: u32 = 0;
    pub const COMMAND_LINE: u32 = 1;
    pub const BOOTLOADER_NAME: u32 = 2;
    pub const MODULE: u32 = 3;
    pub const MEMORY_MAP: u32 = 6;
    pub const ACPI_OLD_RSDP: u32 = 14;
    pub const ACPI_NEW_RSDP: u32 = 15;
    pub const EFI_MEMORY_MAP: u32 = 17;
    pub const EFI_BOOT_SERVICES_NOT_TERMINATED: u32 = 18;
}

/// The UEFI memory types (UEFI spec 7.2, `EFI_MEMORY_TYPE`) that are not reserved.
mod efi_type {
    pub const LOADER_CODE: u32 = 1;
    pub const LOADER_DATA: u32 = 2;
    pub const BOOT_SERVICES_CODE: u32 = 3;
    pub const BOOT_SERVICES_DATA: u32 = 4;
    pub const CONVENTIONAL_MEMORY: u32 = 7;
    pub const UNUSABLE_MEMORY: u32 = 8;
    pub const ACPI_RECLAIM_MEMORY: u32 = 9;
    pub const ACPI_MEMORY_NVS: u32 = 10;
}

/// Bytes in the info header and in each tag header.
const HEADER_SIZE: usize = 8;
/// Tags start on multiples of this.
const TAG_ALIGN: usize = 8;
/// Bytes in a memory map entry as defined today; later versions may add fields.
const MEMORY_MAP_ENTRY_MINIMUM: u32 = 24;
/// Bytes in a UEFI memory descriptor; firmware may use larger ones.
const EFI_DESCRIPTOR_MINIMUM: u32 = 40;

/// One range of the physical memory map (tag type 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryMapEntry {
    /// First physical byte of the range.
    pub base: u64,
    /// Length of the range in bytes.
    pub length: u64,
    /// 1 = available RAM, 3 = ACPI reclaimable, 4 = ACPI NVS (preserve across
    /// hibernation), 5 = defective RAM, anything else = reserved.
    pub kind: u32,
}

impl MemoryMapEntry {
    /// Whether the range is RAM free for the operating system to use (kind 1).
    pub fn is_available(&self) -> bool {
        self.kind == 1
    }

    /// One past the last byte, saturating at `u64::MAX` for nonsense lengths.
    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.length)
    }
}

/// A boot module (tag type 3): a file the boot loader placed in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Module<'a> {
    /// Physical address of the first byte.
    pub start: u32,
    /// Physical address one past the last byte.
    pub end: u32,
    /// The module's command line from the boot loader configuration.
    pub cmdline: &'a str,
}

/// Why the boot information was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Multiboot2Error {
    /// Fewer bytes than the header or than `total_size` says.
    Truncated,
    /// `total_size` is smaller than the header itself.
    BadTotalSize,
    /// The tag at this byte offset has a size below 8, runs past
    /// `total_size`, or is an end tag whose size is not 8.
    BadTag {
        /// Offset of the tag from the start of the structure.
        offset: usize,
    },
    /// A memory map tag is too short, has an entry size that is below 24 or
    /// not a multiple of 8 (EFI: below 40), or appears twice.
    BadMemoryMap,
    /// A string is not NUL-terminated or not valid UTF-8.
    BadString,
    /// A module tag is too short or its start is above its end.
    BadModule,
    /// More memory map entries or modules than this parser has room for.
    TooManyEntries,
    /// The tags run out before an end tag.
    MissingEndTag,
    /// No memory map tag (neither 6 nor 17): the hypervisor cannot know what is RAM.
    MissingMemoryMap,
}

/// What the hypervisor needs from the boot information; strings and the RSDP
/// borrow from the parsed bytes.
#[derive(Debug)]
pub struct BootInfo<'a> {
    /// The hypervisor's command line; empty if there is no tag 1.
    pub cmdline: &'a str,
    /// The boot loader's name; empty if there is no tag 2.
    pub bootloader_name: &'a str,
    /// The physical memory map, in the order the boot loader gave it: tag
    /// 6, or else tag 17 (the EFI memory map) converted to tag 6's kinds.
    pub memory_map: ArrayVec<MemoryMapEntry, 128>,
    /// Boot modules, in the order the boot loader gave them.
    pub modules: ArrayVec<Module<'a>, 16>,
    /// A copy of the ACPI RSDP: the payload of tag 15 (ACPI 2.0+ RSDP) if
    /// present, else of tag 14 (ACPI 1.0 RSDP).
    pub acpi_rsdp: Option<&'a [u8]>,
}

/// Parses the boot information. `bytes` starts at the structure (its 8-byte
/// `total_size`/`reserved` header) and may extend past `total_size`.
///
/// Unknown tag types are skipped. If a string tag appears more than once the
/// last one wins; a second memory map of one type is an error because the
/// two could disagree about what is RAM. The EFI memory map (tag 17) is
/// read only when there is no tag 6: GRUB gives both, tag 6 converted from
/// the EFI map by GRUB itself.
pub fn parse(bytes: &[u8]) -> Result<BootInfo<'_>, Multiboot2Error> {
    let total_size = read_u32(bytes, 0).ok_or(Multiboot2Error::Truncated)? as usize;
    if total_size < HEADER_SIZE {
        return Err(Multiboot2Error::BadTotalSize);
    }
    // From here on, only `info` is read, so nothing past total_size is used.
    let info = bytes.get(..total_size).ok_or(Multiboot2Error::Truncated)?;

    let mut boot_info = BootInfo {
        cmdline: "",
        bootloader_name: "",
        memory_map: ArrayVec::new(),
        modules: ArrayVec::new(),
        acpi_rsdp: None,
    };
    let mut have_memory_map = false;
    let mut efi_memory_map = None;
    let mut boot_services_exited = true;
    let mut old_rsdp = None;
    let mut new_rsdp = None;

    let mut offset = HEADER_SIZE;
    loop {
        // Both header fields must lie inside the structure for a tag to exist.
        let (Some(kind), Some(size)) = (read_u32(info, offset), read_u32(info, offset + 4)) else {
            return Err(Multiboot2Error::MissingEndTag);
        };
        let size = size as usize;
        let bad_tag = Multiboot2Error::BadTag { offset };
        if size < HEADER_SIZE {
            return Err(bad_tag);
        }
        let tag = info.get(offset..offset.checked_add(size).ok_or(bad_tag)?).ok_or(bad_tag)?;
        let payload = tag.get(HEADER_SIZE..).ok_or(bad_tag)?;

        match kind {
            tag_type::END => {
                if size != HEADER_SIZE {
                    return Err(bad_tag);
                }
                break;
            }
            tag_type::COMMAND_LINE => boot_info.cmdline = parse_string(payload)?,
            tag_type::BOOTLOADER_NAME => boot_info.bootloader_name = parse_string(payload)?,
            tag_type::MODULE => {
                let module = parse_module(payload)?;
                boot_info.modules.try_push(module).map_err(|_| Multiboot2Error::TooManyEntries)?;
            }
            tag_type::MEMORY_MAP => {
                if have_memory_map {
                    return Err(Multiboot2Error::BadMemoryMap);
                }
                have_memory_map = true;
                parse_memory_map(payload, &mut boot_info.memory_map)?;
            }
            tag_type::ACPI_OLD_RSDP => old_rsdp = Some(payload),
            tag_type::ACPI_NEW_RSDP => new_rsdp = Some(payload),
            tag_type::EFI_MEMORY_MAP if efi_memory_map.is_some() => return Err(Multiboot2Error::BadMemoryMap),
            tag_type::EFI_MEMORY_MAP => efi_memory_map = Some(payload),
            tag_type::EFI_BOOT_SERVICES_NOT_TERMINATED => boot_services_exited = false,
            _ => {}
        }
        // A size near usize::MAX cannot get here: the tag fits in `info`.
        offset += size.next_multiple_of(TAG_ALIGN);
    }

    if !have_memory_map {
        let payload = efi_memory_map.ok_or(Multiboot2Error::MissingMemoryMap)?;
        parse_efi_memory_map(payload, boot_services_exited, &mut boot_info.memory_map)?;
    }
    boot_info.acpi_rsdp = new_rsdp.or(old_rsdp);
    Ok(boot_info)
}

/// A little-endian u32 at `offset`, or `None` if it does not fit.
fn read_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    let field = bytes.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_le_bytes(field.try_into().ok()?))
}

/// A little-endian u64 at `offset`, or `None` if it does not fit.
fn read_u64(bytes: &[u8], offset: usize) -> Option<u64> {
    let field = bytes.get(offset..offset.checked_add(8)?)?;
    Some(u64::from_le_bytes(field.try_into().ok()?))
}

/// The UTF-8 text before the first NUL of `payload`.
fn parse_string(payload: &[u8]) -> Result<&str, Multiboot2Error> {
    let length = payload.iter().position(|&byte| byte == 0).ok_or(Multiboot2Error::BadString)?;
    let text = payload.get(..length).ok_or(Multiboot2Error::BadString)?;
    core::str::from_utf8(text).map_err(|_| Multiboot2Error::BadString)
}

/// A module tag payload: `mod_start: u32`, `mod_end: u32`, then the command line.
fn parse_module(payload: &[u8]) -> Result<Module<'_>, Multiboot2Error> {
    let start = read_u32(payload, 0).ok_or(Multiboot2Error::BadModule)?;
    let end = read_u32(payload, 4).ok_or(Multiboot2Error::BadModule)?;
    if start > end {
        return Err(Multiboot2Error::BadModule);
    }
    let cmdline = parse_string(payload.get(8..).ok_or(Multiboot2Error::BadModule)?)?;
    Ok(Module { start, end, cmdline })
}

/// A memory map tag payload: `entry_size: u32`, `entry_version: u32`, then
/// entries of `entry_size` bytes, each starting `base: u64`, `length: u64`,
/// `type: u32`, `reserved: u32`. Trailing bytes too few for a whole entry
/// are ignored. The entry version is not checked: the spec promises that
/// later versions only append fields, which `entry_size` skips over.
fn parse_memory_map(payload: &[u8], entries: &mut ArrayVec<MemoryMapEntry, 128>) -> Result<(), Multiboot2Error> {
    let entry_size = read_u32(payload, 0).ok_or(Multiboot2Error::BadMemoryMap)?;
    if entry_size < MEMORY_MAP_ENTRY_MINIMUM || !entry_size.is_multiple_of(8) {
        return Err(Multiboot2Error::BadMemoryMap);
    }
    let list = payload.get(8..).ok_or(Multiboot2Error::BadMemoryMap)?;
    for raw in list.chunks_exact(entry_size as usize) {
        let (Some(base), Some(length), Some(kind)) = (read_u64(raw, 0), read_u64(raw, 8), read_u32(raw, 16)) else {
            return Err(Multiboot2Error::BadMemoryMap);
        };
        entries.try_push(MemoryMapEntry { base, length, kind }).map_err(|_| Multiboot2Error::TooManyEntries)?;
    }
    Ok(())
}

/// An EFI memory map tag payload (spec 3.6, "EFI memory map"):
/// `descriptor_size: u32`, `descriptor_version: u32`, then UEFI memory
/// descriptors (UEFI spec 7.2, `EFI_MEMORY_DESCRIPTOR`): `type: u32`, 4
/// bytes padding, `physical_start: u64`, `virtual_start: u64`,
/// `number_of_pages: u64` (of 4 KiB), `attribute: u64`. Firmware cuts RAM
/// into many descriptors, so one that continues the previous entry with the
/// same kind extends it.
fn parse_efi_memory_map(
    payload: &[u8],
    boot_services_exited: bool,
    entries: &mut ArrayVec<MemoryMapEntry, 128>,
) -> Result<(), Multiboot2Error> {
    let descriptor_size = read_u32(payload, 0).ok_or(Multiboot2Error::BadMemoryMap)?;
    if descriptor_size < EFI_DESCRIPTOR_MINIMUM {
        return Err(Multiboot2Error::BadMemoryMap);
    }
    let list = payload.get(8..).ok_or(Multiboot2Error::BadMemoryMap)?;
    for raw in list.chunks_exact(descriptor_size as usize) {
        let (Some(efi_type), Some(base), Some(pages)) = (read_u32(raw, 0), read_u64(raw, 8), read_u64(raw, 24)) else {
            return Err(Multiboot2Error::BadMemoryMap);
        };
        let entry =
            MemoryMapEntry { base, length: pages.saturating_mul(4096), kind: efi_kind(efi_type, boot_services_exited) };
        match entries.last_mut() {
            Some(last) if last.kind == entry.kind && last.end() == base => {
                last.length = last.length.saturating_add(entry.length);
            }
            _ => entries.try_push(entry).map_err(|_| Multiboot2Error::TooManyEntries)?,
        }
    }
    Ok(())
}

/// The tag 6 kind of a UEFI memory type. Loader, boot-services and
/// conventional memory is free RAM once the boot services exited (GRUB exits
/// them unless the kernel asks it not to; hv does not); runtime services,
/// MMIO and unknown types stay reserved, as in GRUB's own conversion.
fn efi_kind(efi_type: u32, boot_services_exited: bool) -> u32 {
    use efi_type::*;
    match (efi_type, boot_services_exited) {
        (LOADER_CODE | LOADER_DATA | BOOT_SERVICES_CODE | BOOT_SERVICES_DATA | CONVENTIONAL_MEMORY, true) => 1,
        (ACPI_RECLAIM_MEMORY, _) => 3,
        (ACPI_MEMORY_NVS, _) => 4,
        (UNUSABLE_MEMORY, _) => 5,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a boot information blob from `(type, payload)` tags, adding the
    /// header, tag headers, padding and (if `end`) the end tag.
    fn build(tags: &[(u32, Vec<u8>)], end: bool) -> Vec<u8> {
        let mut blob = vec![0u8; 8];
        for (kind, payload) in tags {
            blob.extend_from_slice(&kind.to_le_bytes());
            blob.extend_from_slice(&((payload.len() + 8) as u32).to_le_bytes());
            blob.extend_from_slice(payload);
            while !blob.len().is_multiple_of(8) {
                blob.push(0);
            }
        }
        if end {
            blob.extend_from_slice(&0u32.to_le_bytes());
            blob.extend_from_slice(&8u32.to_le_bytes());
        }
        let total = blob.len() as u32;
        blob[..4].copy_from_slice(&total.to_le_bytes());
        blob
    }

    /// A NUL-terminated string payload.
    fn string(text: &str) -> Vec<u8> {
        let mut bytes = text.as_bytes().to_vec();
        bytes.push(0);
        bytes
    }

    /// A memory map payload with 24-byte entries.
    fn memory_map(entries: &[(u64, u64, u32)]) -> Vec<u8> {
        memory_map_sized(entries, 24)
    }

    /// A memory map payload with entries padded to `entry_size` bytes.
    fn memory_map_sized(entries: &[(u64, u64, u32)], entry_size: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&entry_size.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        for &(base, length, kind) in entries {
            let mut entry = vec![0u8; entry_size as usize];
            entry[..8].copy_from_slice(&base.to_le_bytes());
            entry[8..16].copy_from_slice(&length.to_le_bytes());
            entry[16..20].copy_from_slice(&kind.to_le_bytes());
            bytes.extend_from_slice(&entry);
        }
        bytes
    }

    /// An EFI memory map payload of `(type, base, pages)` descriptors of
    /// `descriptor_size` bytes, with a nonzero virtual start and attribute
    /// that must not matter.
    fn efi_memory_map(descriptors: &[(u32, u64, u64)], descriptor_size: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&descriptor_size.to_le_bytes());
        bytes.extend_from_slice(&1u32.to_le_bytes());
        for &(kind, base, pages) in descriptors {
            let mut descriptor = vec![0xee; descriptor_size as usize];
            descriptor[..4].copy_from_slice(&kind.to_le_bytes());
            descriptor[8..16].copy_from_slice(&base.to_le_bytes());
            descriptor[24..32].copy_from_slice(&pages.to_le_bytes());
            bytes.extend_from_slice(&descriptor);
        }
        bytes
    }

    /// A small UEFI machine's map, as OVMF gives it: loader, boot-services
    /// and conventional memory interleaved, runtime services, ACPI, MMIO.
    fn ovmf_like_map() -> Vec<u8> {
        efi_memory_map(
            &[
                (3, 0, 1),                       // boot-services code
                (7, 0x1000, 0x9f),               // conventional
                (7, 0x10_0000, 0x700),           // conventional, after a hole
                (2, 0x80_0000, 0x10),            // loader data (GRUB, the modules)
                (4, 0x81_0000, 0x100),           // boot-services data
                (1, 0x91_0000, 0x20),            // loader code
                (9, 0x93_0000, 0x4),             // ACPI reclaimable
                (10, 0x93_4000, 0x4),            // ACPI NVS
                (6, 0x93_8000, 0x8),             // runtime-services data
                (5, 0x94_0000, 0x8),             // runtime-services code
                (7, 0x94_8000, 0xf6b8),          // conventional
                (8, 0x1000_0000, 1),             // unusable
                (0, 0x1000_1000, 1),             // reserved
                (11, 0xffc0_0000, 0x400),        // MMIO (the flash)
                (0x7000_0000, 0x2_0000_0000, 1), // an OEM type
            ],
            48,
        )
    }

    /// A module payload.
    fn module(start: u32, end: u32, cmdline: &str) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&start.to_le_bytes());
        bytes.extend_from_slice(&end.to_le_bytes());
        bytes.extend_from_slice(&string(cmdline));
        bytes
    }

    /// The tags of a typical boot.
    fn typical_tags() -> Vec<(u32, Vec<u8>)> {
        vec![
            (1, string("console=com1 loglevel=3")),
            (2, string("GRUB 2.12")),
            (3, module(0x20_0000, 0x28_1234, "dom0 verbose")),
            (3, module(0x30_0000, 0x30_0000, "")),
            (21, vec![1, 2, 3, 4]),
            (
                6,
                memory_map(&[
                    (0, 0x9_fc00, 1),
                    (0xf_0000, 0x1_0000, 2),
                    (0x10_0000, 0x7ff0_0000, 1),
                    (0x7ff0_0000, 0x1_0000, 3),
                ]),
            ),
            (14, vec![b'R'; 20]),
            (15, vec![b'X'; 36]),
        ]
    }

    #[test]
    fn parses_a_typical_boot() {
        let blob = build(&typical_tags(), true);
        let info = parse(&blob).unwrap();
        assert_eq!(info.cmdline, "console=com1 loglevel=3");
        assert_eq!(info.bootloader_name, "GRUB 2.12");
        assert_eq!(
            info.modules.as_slice(),
            &[
                Module { start: 0x20_0000, end: 0x28_1234, cmdline: "dom0 verbose" },
                Module { start: 0x30_0000, end: 0x30_0000, cmdline: "" },
            ]
        );
        assert_eq!(info.memory_map.len(), 4);
        assert_eq!(info.memory_map[2], MemoryMapEntry { base: 0x10_0000, length: 0x7ff0_0000, kind: 1 });
        assert!(info.memory_map[2].is_available());
        assert!(!info.memory_map[1].is_available());
        assert_eq!(info.memory_map[2].end(), 0x8000_0000);
        assert_eq!(info.acpi_rsdp, Some(&[b'X'; 36][..]));
    }

    #[test]
    fn minimal_boot_has_defaults() {
        let blob = build(&[(6, memory_map(&[(0x10_0000, 0x100_0000, 1)]))], true);
        let info = parse(&blob).unwrap();
        assert_eq!(info.cmdline, "");
        assert_eq!(info.bootloader_name, "");
        assert!(info.modules.is_empty());
        assert_eq!(info.acpi_rsdp, None);
        assert_eq!(info.memory_map.len(), 1);
    }

    #[test]
    fn old_rsdp_used_when_no_new_one() {
        let blob = build(&[(14, vec![7; 20]), (6, memory_map(&[]))], true);
        assert_eq!(parse(&blob).unwrap().acpi_rsdp, Some(&[7u8; 20][..]));
        // The new RSDP wins whatever the order.
        let blob = build(&[(15, vec![8; 36]), (14, vec![7; 20]), (6, memory_map(&[]))], true);
        assert_eq!(parse(&blob).unwrap().acpi_rsdp, Some(&[8u8; 36][..]));
    }

    #[test]
    fn bytes_after_total_size_are_ignored() {
        let mut blob = build(&typical_tags(), true);
        blob.extend_from_slice(&[0xff; 100]);
        assert!(parse(&blob).is_ok());
    }

    #[test]
    fn larger_memory_map_entries_are_stepped_over() {
        let blob = build(&[(6, memory_map_sized(&[(0x1000, 0x2000, 1), (0x5000, 0x1000, 5)], 32))], true);
        let info = parse(&blob).unwrap();
        assert_eq!(
            info.memory_map.as_slice(),
            &[
                MemoryMapEntry { base: 0x1000, length: 0x2000, kind: 1 },
                MemoryMapEntry { base: 0x5000, length: 0x1000, kind: 5 }
            ]
        );
    }

    #[test]
    fn efi_memory_map_is_used_without_a_tag_6() {
        let blob = build(&[(1, string("loglevel=info")), (17, ovmf_like_map()), (15, vec![b'X'; 36])], true);
        let info = parse(&blob).unwrap();
        let entry = |base, length, kind| MemoryMapEntry { base, length, kind };
        // Boot-services, loader and conventional memory is RAM once the boot
        // services exited; neighbours of one kind merge; runtime services,
        // MMIO and unknown types stay reserved.
        assert_eq!(
            info.memory_map.as_slice(),
            &[
                entry(0, 0xa_0000, 1),
                entry(0x10_0000, 0x83_0000, 1),
                entry(0x93_0000, 0x4000, 3),
                entry(0x93_4000, 0x4000, 4),
                entry(0x93_8000, 0x1_0000, 2),
                entry(0x94_8000, 0xf6b8 * 4096, 1),
                entry(0x1000_0000, 0x1000, 5),
                entry(0x1000_1000, 0x1000, 2),
                entry(0xffc0_0000, 0x40_0000, 2),
                entry(0x2_0000_0000, 0x1000, 2),
            ]
        );
    }

    #[test]
    fn tag_6_wins_over_the_efi_memory_map() {
        // GRUB on UEFI gives both; tag 6 is used and tag 17 not even read.
        let map = (6, memory_map(&[(0x10_0000, 0x100_0000, 1)]));
        for efi in [ovmf_like_map(), vec![1, 2, 3]] {
            for tags in [vec![map.clone(), (17, efi.clone())], vec![(17, efi), map.clone()]] {
                let blob = build(&tags, true);
                let info = parse(&blob).unwrap();
                assert_eq!(
                    info.memory_map.as_slice(),
                    &[MemoryMapEntry { base: 0x10_0000, length: 0x100_0000, kind: 1 }]
                );
            }
        }
    }

    #[test]
    fn boot_services_memory_is_reserved_while_boot_services_run() {
        let map = efi_memory_map(&[(3, 0, 1), (7, 0x1000, 0x9f), (1, 0x10_0000, 1), (9, 0x20_0000, 1)], 40);
        for tags in [vec![(18, vec![0; 8]), (17, map.clone())], vec![(17, map.clone()), (18, vec![0; 8])]] {
            let blob = build(&tags, true);
            let info = parse(&blob).unwrap();
            assert_eq!(
                info.memory_map.as_slice(),
                &[
                    MemoryMapEntry { base: 0, length: 0xa_0000, kind: 2 },
                    MemoryMapEntry { base: 0x10_0000, length: 0x1000, kind: 2 },
                    MemoryMapEntry { base: 0x20_0000, length: 0x1000, kind: 3 },
                ]
            );
        }
        // Without tag 18 the same map is RAM.
        assert_eq!(parse(&build(&[(17, map)], true)).unwrap().memory_map[0].kind, 1);
    }

    #[test]
    fn bad_efi_memory_maps() {
        for descriptor_size in [0, 8, 24, 39] {
            let mut payload = efi_memory_map(&[(7, 0, 1)], 40);
            payload[..4].copy_from_slice(&u32::to_le_bytes(descriptor_size));
            assert_eq!(parse(&build(&[(17, payload)], true)).unwrap_err(), Multiboot2Error::BadMemoryMap);
        }
        assert_eq!(parse(&build(&[(17, vec![48, 0, 0, 0])], true)).unwrap_err(), Multiboot2Error::BadMemoryMap);
        let twice = [(17, efi_memory_map(&[], 48)), (17, efi_memory_map(&[], 48))];
        assert_eq!(parse(&build(&twice, true)).unwrap_err(), Multiboot2Error::BadMemoryMap);
        // A descriptor cut short is ignored, as in tag 6; a huge page count saturates.
        let mut payload = efi_memory_map(&[(7, 0x1000, u64::MAX)], 40);
        payload.extend_from_slice(&[0xaa; 39]);
        let blob = build(&[(17, payload)], true);
        let info = parse(&blob).unwrap();
        assert_eq!(info.memory_map.as_slice(), &[MemoryMapEntry { base: 0x1000, length: u64::MAX, kind: 1 }]);
        assert_eq!(info.memory_map[0].end(), u64::MAX);
    }

    #[test]
    fn efi_descriptors_merge_so_many_fit() {
        // 400 descriptors alternating boot-services data and conventional
        // memory are one range; 129 separate ranges are too many.
        let contiguous: Vec<_> = (0..400u64).map(|index| (3 + 4 * (index as u32 % 2), index * 0x1000, 1)).collect();
        let blob = build(&[(17, efi_memory_map(&contiguous, 40))], true);
        let info = parse(&blob).unwrap();
        assert_eq!(info.memory_map.as_slice(), &[MemoryMapEntry { base: 0, length: 400 * 0x1000, kind: 1 }]);
        let apart: Vec<_> = (0..129u64).map(|index| (7, index * 0x2000, 1)).collect();
        assert_eq!(
            parse(&build(&[(17, efi_memory_map(&apart, 40))], true)).unwrap_err(),
            Multiboot2Error::TooManyEntries
        );
        let blob = build(&[(17, efi_memory_map(&apart[..128], 40))], true);
        let info = parse(&blob).unwrap();
        assert_eq!(info.memory_map.len(), 128);
    }

    #[test]
    fn memory_map_end_saturates() {
        let entry = MemoryMapEntry { base: u64::MAX - 5, length: 100, kind: 1 };
        assert_eq!(entry.end(), u64::MAX);
    }

    #[test]
    fn header_errors() {
        assert_eq!(parse(&[]).unwrap_err(), Multiboot2Error::Truncated);
        assert_eq!(parse(&[16, 0, 0]).unwrap_err(), Multiboot2Error::Truncated);
        let mut blob = build(&typical_tags(), true);
        let total = blob.len();
        assert_eq!(parse(&blob[..total - 1]).unwrap_err(), Multiboot2Error::Truncated);
        blob[..4].copy_from_slice(&7u32.to_le_bytes());
        assert_eq!(parse(&blob).unwrap_err(), Multiboot2Error::BadTotalSize);
        blob[..4].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(parse(&blob).unwrap_err(), Multiboot2Error::BadTotalSize);
    }

    #[test]
    fn missing_end_tag() {
        let blob = build(&[(6, memory_map(&[]))], false);
        assert_eq!(parse(&blob).unwrap_err(), Multiboot2Error::MissingEndTag);
        // A header-only structure has no end tag either.
        let blob = build(&[], false);
        assert_eq!(parse(&blob).unwrap_err(), Multiboot2Error::MissingEndTag);
        // total_size cutting the end tag's header in half.
        let mut blob = build(&[(6, memory_map(&[]))], true);
        let cut = (blob.len() - 4) as u32;
        blob[..4].copy_from_slice(&cut.to_le_bytes());
        assert_eq!(parse(&blob).unwrap_err(), Multiboot2Error::MissingEndTag);
    }

    #[test]
    fn missing_memory_map() {
        let blob = build(&[(1, string("x"))], true);
        assert_eq!(parse(&blob).unwrap_err(), Multiboot2Error::MissingMemoryMap);
    }

    /// Overwrites the size field of the tag at `offset`.
    fn set_tag_size(blob: &mut [u8], offset: usize, size: u32) {
        blob[offset + 4..offset + 8].copy_from_slice(&size.to_le_bytes());
    }

    #[test]
    fn bad_tag_sizes() {
        let tags = [(1, string("abc")), (6, memory_map(&[]))];
        for size in [0, 1, 7] {
            let mut blob = build(&tags, true);
            set_tag_size(&mut blob, 8, size);
            assert_eq!(parse(&blob).unwrap_err(), Multiboot2Error::BadTag { offset: 8 });
        }
        // Past total_size.
        let mut blob = build(&tags, true);
        let total = blob.len() as u32;
        set_tag_size(&mut blob, 8, total);
        assert_eq!(parse(&blob).unwrap_err(), Multiboot2Error::BadTag { offset: 8 });
        set_tag_size(&mut blob, 8, u32::MAX);
        assert_eq!(parse(&blob).unwrap_err(), Multiboot2Error::BadTag { offset: 8 });
        // An end tag must be exactly 8 bytes.
        let mut blob = build(&tags, true);
        let end_offset = blob.len() - 8;
        set_tag_size(&mut blob, end_offset, 16);
        assert_eq!(parse(&blob).unwrap_err(), Multiboot2Error::BadTag { offset: end_offset });
        let mut blob = build(&tags, false);
        blob.extend_from_slice(&[0, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let total = blob.len() as u32;
        blob[..4].copy_from_slice(&total.to_le_bytes());
        assert_eq!(parse(&blob).unwrap_err(), Multiboot2Error::BadTag { offset: end_offset });
    }

    #[test]
    fn unknown_tags_are_skipped() {
        let blob = build(&[(0xdead, vec![0xff; 13]), (6, memory_map(&[])), (99, Vec::new())], true);
        assert!(parse(&blob).is_ok());
    }

    #[test]
    fn bad_memory_maps() {
        for entry_size in [0, 8, 16, 20, 28] {
            let blob = build(&[(6, memory_map_sized(&[(0, 0x1000, 1)], entry_size.max(20)))], true);
            let mut blob = blob;
            // Patch entry_size independently of how the entries were laid out.
            blob[16..20].copy_from_slice(&entry_size.to_le_bytes());
            assert_eq!(parse(&blob).unwrap_err(), Multiboot2Error::BadMemoryMap, "entry size {entry_size}");
        }
        // Too short to hold entry_size and entry_version.
        let blob = build(&[(6, vec![24, 0, 0, 0])], true);
        assert_eq!(parse(&blob).unwrap_err(), Multiboot2Error::BadMemoryMap);
        // Twice.
        let blob = build(&[(6, memory_map(&[])), (6, memory_map(&[]))], true);
        assert_eq!(parse(&blob).unwrap_err(), Multiboot2Error::BadMemoryMap);
    }

    #[test]
    fn memory_map_partial_entry_is_ignored() {
        let mut payload = memory_map(&[(0x1000, 0x1000, 1)]);
        payload.extend_from_slice(&[0xaa; 20]);
        let blob = build(&[(6, payload)], true);
        assert_eq!(parse(&blob).unwrap().memory_map.len(), 1);
    }

    #[test]
    fn too_many_entries() {
        let many: Vec<_> = (0..129u64).map(|index| (index * 0x1000, 0x1000, 1)).collect();
        let blob = build(&[(6, memory_map(&many))], true);
        assert_eq!(parse(&blob).unwrap_err(), Multiboot2Error::TooManyEntries);
        let blob = build(&[(6, memory_map(&many[..128]))], true);
        assert_eq!(parse(&blob).unwrap().memory_map.len(), 128);

        let mut tags: Vec<_> = (0..17).map(|index| (3, module(index, index + 1, "m"))).collect();
        tags.push((6, memory_map(&[])));
        assert_eq!(parse(&build(&tags, true)).unwrap_err(), Multiboot2Error::TooManyEntries);
        tags.remove(0);
        assert_eq!(parse(&build(&tags, true)).unwrap().modules.len(), 16);
    }

    #[test]
    fn bad_strings() {
        let map = (6, memory_map(&[]));
        let no_nul = build(&[(1, b"abc".to_vec()), map.clone()], true);
        assert_eq!(parse(&no_nul).unwrap_err(), Multiboot2Error::BadString);
        let empty = build(&[(2, Vec::new()), map.clone()], true);
        assert_eq!(parse(&empty).unwrap_err(), Multiboot2Error::BadString);
        let not_utf8 = build(&[(2, vec![b'a', 0xff, 0xfe, 0]), map.clone()], true);
        assert_eq!(parse(&not_utf8).unwrap_err(), Multiboot2Error::BadString);
        let module_no_nul = build(&[(3, vec![0, 0, 0, 0, 1, 0, 0, 0, b'x']), map.clone()], true);
        assert_eq!(parse(&module_no_nul).unwrap_err(), Multiboot2Error::BadString);
        // Text after the first NUL is ignored, even if it is not UTF-8.
        let after_nul = build(&[(1, vec![b'o', b'k', 0, 0xff]), map], true);
        assert_eq!(parse(&after_nul).unwrap().cmdline, "ok");
    }

    #[test]
    fn bad_modules() {
        let map = (6, memory_map(&[]));
        let backwards = build(&[(3, module(0x2000, 0x1000, "x")), map.clone()], true);
        assert_eq!(parse(&backwards).unwrap_err(), Multiboot2Error::BadModule);
        let short = build(&[(3, vec![0, 0, 0, 0, 1, 0]), map], true);
        assert_eq!(parse(&short).unwrap_err(), Multiboot2Error::BadModule);
    }

    use crate::test_random::XorShift;

    #[test]
    fn random_bytes_never_panic() {
        let mut random = XorShift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..5000 {
            let length = random.below(200);
            let mut blob: Vec<u8> = (0..length).map(|_| random.next() as u8).collect();
            // Make total_size plausible half the time so parsing gets past the header.
            if length >= 4 && random.next().is_multiple_of(2) {
                let total = random.below(length + 1) as u32;
                blob[..4].copy_from_slice(&total.to_le_bytes());
            }
            let _ = parse(&blob);
        }
    }

    #[test]
    fn mutated_boot_info_never_panics() {
        let mut random = XorShift(0x0123_4567_89ab_cdef);
        let originals = [build(&typical_tags(), true), build(&[(2, string("GRUB")), (17, ovmf_like_map())], true)];
        let mut accepted = 0;
        for round in 0..20_000 {
            let mut blob = originals[round % 2].clone();
            for _ in 0..1 + random.below(4) {
                if blob.is_empty() {
                    break;
                }
                let position = random.below(blob.len());
                match random.below(4) {
                    0 => blob[position] = random.next() as u8,
                    1 => blob[position] ^= 1 << random.below(8),
                    // Small or extreme values in a 32-bit field hit the size checks.
                    2 => {
                        let aligned = position & !3;
                        let value = [0u32, 1, 7, 8, 24, 0x7fff_ffff, u32::MAX][random.below(7)];
                        if let Some(field) = blob.get_mut(aligned..aligned + 4) {
                            field.copy_from_slice(&value.to_le_bytes());
                        }
                    }
                    _ => blob.truncate(position),
                }
            }
            if let Ok(info) = parse(&blob) {
                accepted += 1;
                for entry in &info.memory_map {
                    let _ = entry.end();
                }
            }
        }
        // Many mutations land in payload bytes and still parse.
        assert!(accepted > 0);
    }
}
