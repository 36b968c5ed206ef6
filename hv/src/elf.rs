//! Validation of an ELF64 x86-64 executable before loading it (System V gABI, "Object Files" chapter).
//!
//! Only what loading needs is read: the file header and the `PT_LOAD`
//! program headers, decoded by the `elf` crate (bounds-checked, no
//! allocation), and every segment is checked here to lie inside the file,
//! to have sane sizes, to not wrap around the address space and to not
//! overlap another. Once `parse` succeeds, a loader may copy each segment's
//! file bytes and zero the rest of its memory without further checks, after
//! [`ElfImage::check_fits`] has confirmed the target memory.

use arrayvec::ArrayVec;
use elf::ElfBytes;
use elf::abi;
use elf::endian::LittleEndian;
use elf::file::{Class, parse_ident};
use elf::parse::ParseError;
use elf::segment::ProgramHeader;

/// Bytes in an ELF64 file header (gABI "ELF Header").
const FILE_HEADER_SIZE: usize = 64;

/// Why an image was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElfError {
    /// Shorter than the 64-byte file header.
    TooShort,
    /// Does not start with 0x7f 'E' 'L' 'F'.
    BadMagic,
    /// EI_CLASS is not ELFCLASS64.
    NotElf64,
    /// EI_DATA is not ELFDATA2LSB.
    NotLittleEndian,
    /// EI_VERSION or e_version is not EV_CURRENT (1).
    BadVersion,
    /// e_type is not ET_EXEC.
    NotExecutable,
    /// e_machine is not EM_X86_64.
    WrongMachine,
    /// The program header table has the wrong entry size or lies outside the file.
    BadProgramHeaders,
    /// A segment's file bytes lie outside the file.
    SegmentOutsideFile,
    /// A segment has more file bytes than memory bytes.
    SegmentSizes,
    /// A segment's end address wraps around 2^64.
    AddressOverflow,
    /// Two segments share physical or virtual addresses.
    OverlappingSegments,
    /// No `PT_LOAD` segment with memory.
    NoLoadableSegments,
    /// More loadable segments than the loader has room for.
    TooManySegments,
    /// The entry point is not inside an executable segment.
    EntryNotExecutable,
    /// A Xen PVH entry note (`XEN_ELFNOTE_PHYS32_ENTRY`) is not a 4- or
    /// 8-byte number below 4 GiB.
    BadPvhEntry,
    /// A segment lies outside the memory given to it.
    OutsideMemory,
}

impl ElfError {
    /// A short human sentence, for boot messages.
    pub const fn describe(self) -> &'static str {
        match self {
            ElfError::TooShort => "file is shorter than an ELF header",
            ElfError::BadMagic => "file is not ELF (bad magic number)",
            ElfError::NotElf64 => "file is not a 64-bit ELF",
            ElfError::NotLittleEndian => "file is not little-endian",
            ElfError::BadVersion => "file has an unknown ELF version",
            ElfError::NotExecutable => "file is not a static executable (ET_EXEC)",
            ElfError::WrongMachine => "file is not for x86-64",
            ElfError::BadProgramHeaders => "program header table is malformed or outside the file",
            ElfError::SegmentOutsideFile => "a segment's data lies outside the file",
            ElfError::SegmentSizes => "a segment has more file bytes than memory bytes",
            ElfError::AddressOverflow => "a segment's addresses wrap around",
            ElfError::OverlappingSegments => "two segments overlap",
            ElfError::NoLoadableSegments => "file has no loadable segments",
            ElfError::TooManySegments => "file has too many loadable segments",
            ElfError::EntryNotExecutable => "entry point is not in an executable segment",
            ElfError::BadPvhEntry => "the Xen PVH entry note is malformed",
            ElfError::OutsideMemory => "a segment lies outside the memory reserved for it",
        }
    }
}

impl core::fmt::Display for ElfError {
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        formatter.write_str(self.describe())
    }
}

/// One loadable (`PT_LOAD`) segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Physical load address (p_paddr).
    pub phys_addr: u64,
    /// Virtual address (p_vaddr).
    pub virt_addr: u64,
    /// Offset of the segment's bytes in the file (p_offset).
    pub file_offset: u64,
    /// Bytes to copy from the file (p_filesz).
    pub file_size: u64,
    /// Bytes of memory; those past `file_size` are zeroed (p_memsz).
    pub mem_size: u64,
    /// Permissions: PF_X = 1, PF_W = 2, PF_R = 4.
    pub flags: u32,
}

/// Segment permission flag: executable.
pub const PF_X: u32 = 1;
/// Segment permission flag: writable.
pub const PF_W: u32 = 2;
/// Segment permission flag: readable.
pub const PF_R: u32 = 4;

/// Most loadable segments accepted; real kernels have three or four.
const MAX_SEGMENTS: usize = 16;

/// Name of Xen's ELF notes.
const XEN_NOTE_NAME: &str = "Xen";
/// Xen's note holding a PVH kernel's 32-bit physical entry point
/// (`abi::xen::start_info::XEN_ELFNOTE_PHYS32_ENTRY`).
const XEN_ELFNOTE_PHYS32_ENTRY: u64 = 18;

/// A validated ELF64 executable, borrowing the file bytes.
#[derive(Debug)]
pub struct ElfImage<'a> {
    /// The whole file.
    bytes: &'a [u8],
    /// Virtual address of the first instruction (e_entry).
    entry: u64,
    /// The `PT_LOAD` segments with memory, in file order.
    segments: ArrayVec<Segment, MAX_SEGMENTS>,
    /// The PVH entry point from Xen's `PHYS32_ENTRY` note, if any.
    pvh_entry: Option<u32>,
}

impl<'a> ElfImage<'a> {
    /// Validates `bytes` as an x86-64 `ET_EXEC` file. Only `PT_LOAD` segments
    /// are kept; other program headers and segments with no memory are
    /// ignored, but for Xen's PVH entry note in a `PT_NOTE` segment. The
    /// entry point must lie in a segment with `PF_X`: the PVH entry at a
    /// physical address of one when the note is there, else `e_entry` at a
    /// virtual one.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ElfError> {
        if bytes.len() < FILE_HEADER_SIZE {
            return Err(ElfError::TooShort);
        }
        let identification = |error| match error {
            ParseError::BadMagic(_) => ElfError::BadMagic,
            ParseError::UnsupportedElfClass(_) => ElfError::NotElf64,
            ParseError::UnsupportedElfEndianness(_) => ElfError::NotLittleEndian,
            ParseError::UnsupportedVersion(_) => ElfError::BadVersion,
            // The header is whole, so anything else is about the tables.
            _ => ElfError::BadProgramHeaders,
        };
        // The class first: a 32-bit header would be read with 32-bit tables.
        let (_, class, _, _) = parse_ident::<LittleEndian>(bytes).map_err(identification)?;
        if class != Class::ELF64 {
            return Err(ElfError::NotElf64);
        }
        let file = ElfBytes::<LittleEndian>::minimal_parse(bytes).map_err(identification)?;
        let header = &file.ehdr;
        if header.version != u32::from(abi::EV_CURRENT) {
            return Err(ElfError::BadVersion);
        }
        if header.e_type != abi::ET_EXEC {
            return Err(ElfError::NotExecutable);
        }
        if header.e_machine != abi::EM_X86_64 {
            return Err(ElfError::WrongMachine);
        }
        let entry = header.e_entry;
        let mut segments = ArrayVec::<Segment, MAX_SEGMENTS>::new();
        let mut pvh_entry = None;
        for header in file.segments().into_iter().flatten() {
            if header.p_type == abi::PT_NOTE {
                pvh_entry = pvh_entry.or(xen_pvh_entry(&file, &header)?);
            }
            let Some(segment) = check_segment(bytes, &header)? else {
                continue;
            };
            if segments.iter().any(|other| overlaps(other, &segment)) {
                return Err(ElfError::OverlappingSegments);
            }
            segments.try_push(segment).map_err(|_| ElfError::TooManySegments)?;
        }
        if segments.is_empty() {
            return Err(ElfError::NoLoadableSegments);
        }
        let executable = |at: u64, base: fn(&Segment) -> u64| {
            segments.iter().any(|segment| {
                segment.flags & PF_X != 0 && base(segment) <= at && at - base(segment) < segment.mem_size
            })
        };
        let entry_is_executable = match pvh_entry {
            Some(pvh) => executable(u64::from(pvh), |segment| segment.phys_addr),
            None => executable(entry, |segment| segment.virt_addr),
        };
        if !entry_is_executable {
            return Err(ElfError::EntryNotExecutable);
        }
        Ok(Self { bytes, entry, segments, pvh_entry })
    }

    /// Virtual address of the first instruction.
    pub fn entry(&self) -> u64 {
        self.entry
    }

    /// The physical address a PVH boot starts at, in 32-bit protected
    /// mode with paging off (`abi::xen::start_info`): Xen's
    /// `PHYS32_ENTRY` note. `None` for a kernel without one.
    pub fn pvh_entry(&self) -> Option<u32> {
        self.pvh_entry
    }

    /// The loadable segments, in file order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The file bytes of `segment` (`file_size` long) for one from
    /// [`segments`](Self::segments); empty for any segment not inside the file.
    pub fn segment_data(&self, segment: &Segment) -> &'a [u8] {
        let bytes = self.bytes;
        let range = usize::try_from(segment.file_offset)
            .ok()
            .zip(usize::try_from(segment.file_size).ok())
            .and_then(|(start, length)| Some(start..start.checked_add(length)?));
        range.and_then(|range| bytes.get(range)).unwrap_or(&[])
    }

    /// Checks that every segment's `[phys_addr, phys_addr + mem_size)` lies
    /// in `[base, limit)`; otherwise `OutsideMemory`.
    pub fn check_fits(&self, base: u64, limit: u64) -> Result<(), ElfError> {
        // Ends cannot wrap: parse rejected that.
        let fits = self
            .segments
            .iter()
            .all(|segment| segment.phys_addr >= base && segment.phys_addr + segment.mem_size <= limit);
        if fits { Ok(()) } else { Err(ElfError::OutsideMemory) }
    }

    /// The lowest physical address and the highest physical end over the
    /// loadable segments: the memory a loader must provide.
    pub fn physical_extent(&self) -> (u64, u64) {
        let lowest = self.segments.iter().map(|segment| segment.phys_addr).min().unwrap_or(0);
        let highest = self.segments.iter().map(|segment| segment.phys_addr + segment.mem_size).max().unwrap_or(0);
        (lowest, highest)
    }
}

/// The value of Xen's `PHYS32_ENTRY` note in note segment `header`, if it
/// has one: a little-endian number of 4 or 8 bytes (Linux writes a
/// pointer-sized one) below 4 GiB. Notes that do not parse end the search
/// of this segment: a loader only needs to find this one.
fn xen_pvh_entry(file: &ElfBytes<LittleEndian>, header: &ProgramHeader) -> Result<Option<u32>, ElfError> {
    let Ok(notes) = file.segment_data_as_notes(header) else { return Ok(None) };
    for note in notes {
        let elf::note::Note::Unknown(note) = note else { continue };
        if note.n_type != XEN_ELFNOTE_PHYS32_ENTRY || note.name_str().ok() != Some(XEN_NOTE_NAME) {
            continue;
        }
        let value = match *note.desc {
            [a, b, c, d] => u64::from(u32::from_le_bytes([a, b, c, d])),
            [a, b, c, d, e, f, g, h] => u64::from_le_bytes([a, b, c, d, e, f, g, h]),
            _ => return Err(ElfError::BadPvhEntry),
        };
        return u32::try_from(value).map(Some).map_err(|_| ElfError::BadPvhEntry);
    }
    Ok(None)
}

/// Checks one program header; `None` if it is not a `PT_LOAD` with memory.
fn check_segment(bytes: &[u8], header: &ProgramHeader) -> Result<Option<Segment>, ElfError> {
    let segment = Segment {
        phys_addr: header.p_paddr,
        virt_addr: header.p_vaddr,
        file_offset: header.p_offset,
        file_size: header.p_filesz,
        mem_size: header.p_memsz,
        flags: header.p_flags,
    };
    if header.p_type != abi::PT_LOAD || segment.mem_size == 0 {
        return Ok(None);
    }
    if segment.file_size > segment.mem_size {
        return Err(ElfError::SegmentSizes);
    }
    // With no file bytes the offset is meaningless, so it is not checked.
    if segment.file_size != 0 {
        let file_end = segment.file_offset.checked_add(segment.file_size).ok_or(ElfError::SegmentOutsideFile)?;
        if file_end > bytes.len() as u64 {
            return Err(ElfError::SegmentOutsideFile);
        }
    }
    if segment.phys_addr.checked_add(segment.mem_size).is_none()
        || segment.virt_addr.checked_add(segment.mem_size).is_none()
    {
        return Err(ElfError::AddressOverflow);
    }
    Ok(Some(segment))
}

/// Whether two checked segments share a physical or a virtual byte: either
/// way, loading one would clobber the other.
fn overlaps(first: &Segment, second: &Segment) -> bool {
    let ranges_meet = |first_start: u64, second_start: u64| {
        first_start < second_start + second.mem_size && second_start < first_start + first.mem_size
    };
    ranges_meet(first.phys_addr, second.phys_addr) || ranges_meet(first.virt_addr, second.virt_addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A program header to write: (type, flags, offset, vaddr, paddr, filesz, memsz).
    #[derive(Clone, Copy)]
    struct Header {
        kind: u32,
        flags: u32,
        offset: u64,
        virt: u64,
        phys: u64,
        file_size: u64,
        mem_size: u64,
    }

    /// A loadable segment header.
    fn load(flags: u32, offset: u64, address: u64, file_size: u64, mem_size: u64) -> Header {
        Header { kind: 1, flags, offset, virt: address, phys: address, file_size, mem_size }
    }

    /// Writes an ELF64 x86-64 executable: the file header, the program
    /// headers right after it, then zero bytes up to `file_length`.
    fn build(entry: u64, headers: &[Header], file_length: usize) -> Vec<u8> {
        let mut file = vec![0u8; file_length.max(64 + 56 * headers.len())];
        file[..4].copy_from_slice(b"\x7fELF");
        file[4] = 2; // ELFCLASS64
        file[5] = 1; // ELFDATA2LSB
        file[6] = 1; // EV_CURRENT
        file[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        file[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        file[20..24].copy_from_slice(&1u32.to_le_bytes());
        file[24..32].copy_from_slice(&entry.to_le_bytes());
        file[32..40].copy_from_slice(&64u64.to_le_bytes());
        file[52..54].copy_from_slice(&64u16.to_le_bytes());
        file[54..56].copy_from_slice(&56u16.to_le_bytes());
        file[56..58].copy_from_slice(&(headers.len() as u16).to_le_bytes());
        for (number, header) in headers.iter().enumerate() {
            let at = 64 + 56 * number;
            file[at..at + 4].copy_from_slice(&header.kind.to_le_bytes());
            file[at + 4..at + 8].copy_from_slice(&header.flags.to_le_bytes());
            file[at + 8..at + 16].copy_from_slice(&header.offset.to_le_bytes());
            file[at + 16..at + 24].copy_from_slice(&header.virt.to_le_bytes());
            file[at + 24..at + 32].copy_from_slice(&header.phys.to_le_bytes());
            file[at + 32..at + 40].copy_from_slice(&header.file_size.to_le_bytes());
            file[at + 40..at + 48].copy_from_slice(&header.mem_size.to_le_bytes());
            // Notes are 4-byte aligned (as Linux's are), loads page-aligned.
            let align: u64 = if header.kind == 4 { 4 } else { 0x1000 };
            file[at + 48..at + 56].copy_from_slice(&align.to_le_bytes());
        }
        file
    }

    /// A typical kernel: text, read-only data, and data plus bss, with a
    /// note header that must be ignored.
    fn typical() -> Vec<u8> {
        let mut file = build(
            0x20_0010,
            &[
                load(PF_R | PF_X, 0x1000, 0x20_0000, 0x800, 0x800),
                Header { kind: 4, flags: PF_R, offset: 0, virt: 0, phys: 0, file_size: 0, mem_size: 0x40 },
                load(PF_R, 0x2000, 0x20_1000, 0x100, 0x100),
                load(PF_R | PF_W, 0x3000, 0x20_2000, 0x80, 0x5000),
            ],
            0x3080,
        );
        file[0x1000..0x1800].fill(0x90);
        file[0x2000..0x2100].fill(0xaa);
        file[0x3000..0x3080].fill(0xdd);
        file
    }

    #[test]
    fn parses_a_typical_kernel() {
        let file = typical();
        let image = ElfImage::parse(&file).unwrap();
        assert_eq!(image.entry(), 0x20_0010);
        assert_eq!(image.segments().len(), 3);
        let data = image.segments()[2];
        assert_eq!(
            data,
            Segment {
                phys_addr: 0x20_2000,
                virt_addr: 0x20_2000,
                file_offset: 0x3000,
                file_size: 0x80,
                mem_size: 0x5000,
                flags: PF_R | PF_W
            }
        );
        assert_eq!(image.segment_data(&image.segments()[0]), &[0x90; 0x800][..]);
        assert_eq!(image.segment_data(&image.segments()[1]), &[0xaa; 0x100][..]);
        assert_eq!(image.segment_data(&data), &[0xdd; 0x80][..]);
        assert_eq!(image.physical_extent(), (0x20_0000, 0x20_7000));
        assert_eq!(image.check_fits(0x20_0000, 0x20_7000), Ok(()));
        assert_eq!(image.check_fits(0x10_0000, 0x100_0000), Ok(()));
        assert_eq!(image.check_fits(0x20_1000, 0x100_0000), Err(ElfError::OutsideMemory));
        assert_eq!(image.check_fits(0, 0x20_6fff), Err(ElfError::OutsideMemory));
    }

    #[test]
    fn physical_and_virtual_addresses_differ() {
        let header = Header {
            kind: 1,
            flags: PF_R | PF_X,
            offset: 0x1000,
            virt: 0xffff_ffff_8000_0000,
            phys: 0x100_0000,
            file_size: 0x10,
            mem_size: 0x10,
        };
        let file = build(0xffff_ffff_8000_0004, &[header], 0x1010);
        let image = ElfImage::parse(&file).unwrap();
        assert_eq!(image.physical_extent(), (0x100_0000, 0x100_0010));
        // The entry point is virtual: the physical address does not count.
        let file = build(0x100_0004, &[header], 0x1010);
        assert_eq!(ElfImage::parse(&file).unwrap_err(), ElfError::EntryNotExecutable);
    }

    /// A file like Linux's vmlinux: one executable segment at virtual
    /// 0xffff_ffff_8100_0000, physical 16 MiB, and a note segment at file
    /// offset 0x2000 holding a GNU note, then Xen's PVH entry note with a
    /// `desc` of `entry` (its bytes as given).
    fn pvh_kernel(entry: &[u8]) -> Vec<u8> {
        let text = Header {
            kind: 1,
            flags: PF_R | PF_X,
            offset: 0x1000,
            virt: 0xffff_ffff_8100_0000,
            phys: 0x100_0000,
            file_size: 0x1000,
            mem_size: 0x1000,
        };
        let mut notes = Vec::new();
        let mut note = |name: &[u8], kind: u32, desc: &[u8]| {
            notes.extend_from_slice(&(name.len() as u32).to_le_bytes());
            notes.extend_from_slice(&(desc.len() as u32).to_le_bytes());
            notes.extend_from_slice(&kind.to_le_bytes());
            for part in [name, desc] {
                notes.extend_from_slice(part);
                notes.resize(notes.len().next_multiple_of(4), 0);
            }
        };
        note(b"GNU\0", 3, &[0xab; 20]);
        note(b"Xen\0", 18, entry);
        let size = notes.len() as u64;
        let note_header =
            Header { kind: 4, flags: PF_R, offset: 0x2000, virt: 0, phys: 0, file_size: size, mem_size: size };
        let mut file = build(0x100_0000, &[text, note_header], 0x2000 + notes.len());
        file[0x2000..].copy_from_slice(&notes);
        file
    }

    #[test]
    fn a_pvh_kernel_names_its_32_bit_entry_in_xens_note() {
        // Linux writes the entry pointer-sized; others may write 4 bytes.
        let entry = |file: &[u8]| ElfImage::parse(file).map(|image| image.pvh_entry());
        assert_eq!(entry(&pvh_kernel(&0x100_0850u64.to_le_bytes())), Ok(Some(0x100_0850)));
        assert_eq!(entry(&pvh_kernel(&0x100_0004u32.to_le_bytes())), Ok(Some(0x100_0004)));
        // The PVH entry must be in the executable segment, physically.
        let outside = pvh_kernel(&0x200_0000u32.to_le_bytes());
        assert_eq!(ElfImage::parse(&outside).unwrap_err(), ElfError::EntryNotExecutable);
        let too_high = pvh_kernel(&0x1_0000_0000u64.to_le_bytes());
        assert_eq!(ElfImage::parse(&too_high).unwrap_err(), ElfError::BadPvhEntry);
        assert_eq!(ElfImage::parse(&pvh_kernel(&[1, 2])).unwrap_err(), ElfError::BadPvhEntry);
        // Without the note: an ordinary kernel, whose (virtual) entry is
        // checked as before.
        assert_eq!(ElfImage::parse(&typical()).unwrap().pvh_entry(), None);
    }

    #[test]
    fn segment_data_never_panics_on_foreign_segments() {
        let file = typical();
        let image = ElfImage::parse(&file).unwrap();
        let mut foreign = image.segments()[0];
        foreign.file_offset = u64::MAX;
        assert_eq!(image.segment_data(&foreign), &[] as &[u8]);
        foreign.file_offset = 0x3000;
        foreign.file_size = 0x1000;
        assert_eq!(image.segment_data(&foreign), &[] as &[u8]);
    }

    #[test]
    fn header_corruptions() {
        let good = typical();
        let corrupt = |offset: usize, value: &[u8]| {
            let mut file = good.clone();
            file[offset..offset + value.len()].copy_from_slice(value);
            ElfImage::parse(&file).map(|_| ()).unwrap_err()
        };
        assert_eq!(corrupt(0, b"\x7fELG"), ElfError::BadMagic);
        assert_eq!(corrupt(1, b"e"), ElfError::BadMagic);
        assert_eq!(corrupt(4, &[1]), ElfError::NotElf64);
        assert_eq!(corrupt(5, &[2]), ElfError::NotLittleEndian);
        assert_eq!(corrupt(6, &[0]), ElfError::BadVersion);
        assert_eq!(corrupt(20, &[2]), ElfError::BadVersion);
        assert_eq!(corrupt(16, &3u16.to_le_bytes()), ElfError::NotExecutable);
        assert_eq!(corrupt(16, &1u16.to_le_bytes()), ElfError::NotExecutable);
        assert_eq!(corrupt(18, &3u16.to_le_bytes()), ElfError::WrongMachine);
        assert_eq!(corrupt(18, &183u16.to_le_bytes()), ElfError::WrongMachine);
        // Program header table offset past the end, or wrapping.
        assert_eq!(corrupt(32, &(good.len() as u64).to_le_bytes()), ElfError::BadProgramHeaders);
        assert_eq!(corrupt(32, &u64::MAX.to_le_bytes()), ElfError::BadProgramHeaders);
        assert_eq!(corrupt(32, &(good.len() as u64 - 100).to_le_bytes()), ElfError::BadProgramHeaders);
        // Wrong entry size, and a count reaching past the end.
        assert_eq!(corrupt(54, &32u16.to_le_bytes()), ElfError::BadProgramHeaders);
        assert_eq!(corrupt(54, &64u16.to_le_bytes()), ElfError::BadProgramHeaders);
        assert_eq!(corrupt(56, &(u16::MAX - 1).to_le_bytes()), ElfError::BadProgramHeaders);
        // 0xffff (PN_XNUM) means the count is in section header 0, which
        // this file does not have: it counts as none.
        assert_eq!(corrupt(56, &u16::MAX.to_le_bytes()), ElfError::NoLoadableSegments);
        // No program headers at all.
        assert_eq!(corrupt(56, &0u16.to_le_bytes()), ElfError::NoLoadableSegments);
    }

    #[test]
    fn describe_is_a_sentence_for_every_error() {
        use ElfError::*;
        for error in [
            TooShort,
            BadMagic,
            NotElf64,
            NotLittleEndian,
            BadVersion,
            NotExecutable,
            WrongMachine,
            BadProgramHeaders,
            SegmentOutsideFile,
            SegmentSizes,
            AddressOverflow,
            OverlappingSegments,
            NoLoadableSegments,
            TooManySegments,
            EntryNotExecutable,
            OutsideMemory,
        ] {
            assert!(!error.describe().is_empty());
            assert_eq!(format!("{error}"), error.describe());
        }
    }

    #[test]
    fn segment_corruptions() {
        let text = |offset, file_size, mem_size| load(PF_R | PF_X, offset, 0x40_0000, file_size, mem_size);
        let parse = |headers: &[Header]| ElfImage::parse(&build(0x40_0000, headers, 0x2000)).map(|_| ()).unwrap_err();
        assert_eq!(parse(&[text(0x1000, 0x1001, 0x2000)]), ElfError::SegmentOutsideFile);
        assert_eq!(parse(&[text(0x2000, 1, 0x2000)]), ElfError::SegmentOutsideFile);
        assert_eq!(parse(&[text(u64::MAX, 2, 0x2000)]), ElfError::SegmentOutsideFile);
        assert_eq!(parse(&[text(0x1000, 0x200, 0x100)]), ElfError::SegmentSizes);
        let wrapping = Header { phys: u64::MAX - 0xfff, ..text(0x1000, 0x100, 0x1000) };
        assert_eq!(parse(&[wrapping]), ElfError::AddressOverflow);
        let wrapping = Header { virt: u64::MAX - 0x800, ..text(0x1000, 0x100, 0x1000) };
        assert_eq!(parse(&[wrapping]), ElfError::AddressOverflow);
        // Overlap in physical memory, in virtual memory, and containment.
        let data = |phys, virt| Header {
            kind: 1,
            flags: PF_R | PF_W,
            offset: 0x1800,
            virt,
            phys,
            file_size: 0x100,
            mem_size: 0x1000,
        };
        assert_eq!(parse(&[text(0x1000, 0x100, 0x1000), data(0x40_0fff, 0x80_0000)]), ElfError::OverlappingSegments);
        assert_eq!(parse(&[text(0x1000, 0x100, 0x1000), data(0x80_0000, 0x3f_f001)]), ElfError::OverlappingSegments);
        assert_eq!(parse(&[text(0x1000, 0x100, 0x10_0000), data(0x40_8000, 0x40_8000)]), ElfError::OverlappingSegments);
        // Touching is fine.
        assert!(
            ElfImage::parse(&build(0x40_0000, &[text(0x1000, 0x100, 0x1000), data(0x40_1000, 0x40_1000)], 0x2000))
                .is_ok()
        );
    }

    #[test]
    fn ignored_and_missing_segments() {
        // Only a non-load segment, or a load segment with no memory.
        let note = Header {
            kind: 4,
            flags: PF_R | PF_X,
            offset: 0,
            virt: 0x40_0000,
            phys: 0x40_0000,
            file_size: 0x10,
            mem_size: 0x10,
        };
        assert_eq!(ElfImage::parse(&build(0x40_0000, &[note], 0x1000)).unwrap_err(), ElfError::NoLoadableSegments);
        // An empty load segment is ignored even with absurd fields.
        let empty = Header { offset: u64::MAX, file_size: 5, phys: u64::MAX, ..load(PF_X, 0, 0x40_0000, 0, 0) };
        assert_eq!(ElfImage::parse(&build(0x40_0000, &[empty], 0x1000)).unwrap_err(), ElfError::NoLoadableSegments);
        let text = load(PF_R | PF_X, 0x1000, 0x40_0000, 0x10, 0x10);
        let file = build(0x40_0000, &[empty, note, text], 0x1010);
        let image = ElfImage::parse(&file).unwrap();
        assert_eq!(
            image.segments(),
            &[Segment {
                phys_addr: 0x40_0000,
                virt_addr: 0x40_0000,
                file_offset: 0x1000,
                file_size: 0x10,
                mem_size: 0x10,
                flags: PF_R | PF_X
            }]
        );
        // A bss-only segment needs no file bytes, wherever its offset points.
        let bss = Header { offset: u64::MAX, ..load(PF_R | PF_W, 0, 0x50_0000, 0, 0x1000) };
        let file = build(0x40_0000, &[text, bss], 0x1010);
        let image = ElfImage::parse(&file).unwrap();
        assert_eq!(image.segment_data(&image.segments()[1]), &[] as &[u8]);
    }

    #[test]
    fn too_many_segments() {
        let segments: Vec<Header> =
            (0..17).map(|number| load(PF_R | PF_X, 0x1000, 0x40_0000 + number * 0x1000, 0x10, 0x1000)).collect();
        assert_eq!(ElfImage::parse(&build(0x40_0000, &segments, 0x1010)).unwrap_err(), ElfError::TooManySegments);
        assert_eq!(ElfImage::parse(&build(0x40_0000, &segments[..16], 0x1010)).unwrap().segments().len(), 16);
    }

    #[test]
    fn entry_must_be_in_an_executable_segment() {
        let text = load(PF_R | PF_X, 0x1000, 0x40_0000, 0x100, 0x1000);
        let data = load(PF_R | PF_W, 0x1100, 0x40_1000, 0x100, 0x1000);
        let parse = |entry| ElfImage::parse(&build(entry, &[text, data], 0x1200)).map(|image| image.entry());
        assert_eq!(parse(0x40_0000), Ok(0x40_0000));
        // Past the file bytes but within memory still counts.
        assert_eq!(parse(0x40_0fff), Ok(0x40_0fff));
        assert_eq!(parse(0x40_1000), Err(ElfError::EntryNotExecutable));
        assert_eq!(parse(0x3f_ffff), Err(ElfError::EntryNotExecutable));
        assert_eq!(parse(0), Err(ElfError::EntryNotExecutable));
        assert_eq!(parse(u64::MAX), Err(ElfError::EntryNotExecutable));
    }

    #[test]
    fn truncated_files_are_rejected() {
        let good = typical();
        for length in 0..good.len() {
            let result = ElfImage::parse(&good[..length]).map(|_| ()).unwrap_err();
            let expected = match length {
                0..64 => ElfError::TooShort,
                // Cuts the program header table.
                64..288 => ElfError::BadProgramHeaders,
                _ => ElfError::SegmentOutsideFile,
            };
            assert_eq!(result, expected, "length {length}");
        }
        assert!(ElfImage::parse(&good).is_ok());
    }

    use crate::test_random::XorShift;

    #[test]
    fn mutated_files_never_panic() {
        let mut random = XorShift(0xdead_beef_cafe_f00d);
        // Only the headers matter, so fuzz a short file for speed.
        let original = build(
            0x40_0010,
            &[load(PF_R | PF_X, 0x200, 0x40_0000, 0x40, 0x40), load(PF_R | PF_W, 0x240, 0x40_1000, 0x10, 0x2000)],
            0x300,
        );
        assert!(ElfImage::parse(&original).is_ok());
        let mut accepted = 0;
        for _ in 0..20_000 {
            let mut file = original.clone();
            for _ in 0..1 + random.below(4) {
                // Aim at the headers most of the time.
                let position =
                    if random.next().is_multiple_of(4) { random.below(file.len()) } else { random.below(64 + 2 * 56) };
                match random.below(3) {
                    0 => file[position] = random.next() as u8,
                    1 => file[position] ^= 1 << random.below(8),
                    _ => {
                        let aligned = position & !7;
                        let value = [0u64, 1, 0x40_0000, u64::MAX, u64::MAX - 0xfff, 1 << 63][random.below(6)];
                        file[aligned..aligned + 8].copy_from_slice(&value.to_le_bytes());
                    }
                }
            }
            if let Ok(image) = ElfImage::parse(&file) {
                accepted += 1;
                for segment in image.segments() {
                    assert_eq!(image.segment_data(segment).len() as u64, segment.file_size);
                }
                let (low, high) = image.physical_extent();
                assert!(low < high);
                let _ = image.check_fits(low, high);
            }
        }
        assert!(accepted > 0);
        for length in 0..2000 {
            let bytes: Vec<u8> = (0..length % 300).map(|_| random.next() as u8).collect();
            let _ = ElfImage::parse(&bytes);
        }
    }
}
