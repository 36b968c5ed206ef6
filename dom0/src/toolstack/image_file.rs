//! Files the builder reads ranges of: a kernel or an initramfs in the boot
//! ramdisk or on the images disk, streamed into a guest's memory a chunk
//! at a time instead of held whole in dom0 (a Linux kernel is 35 MB, an
//! initramfs tens of MiB, dom0's heap a few).
//!
//! A kernel is read in this order: its 64-byte file header, its program
//! header table, its note segments (where Xen's PVH entry note is), then
//! each `PT_LOAD` segment's file bytes straight into the guest
//! ([`ElfHeaders`]). The headers are checked by hv core's ELF rules
//! (`hvcore::elf`, the ones dom0 itself was loaded by), which take a whole
//! file as one slice: they are given a copy of the headers alone in which
//! every loadable segment keeps its addresses and sizes in memory but has
//! no file bytes, and the one rule that needs the file's bytes (each
//! segment lies inside the file) is checked here against the file's
//! length.

use alloc::vec::Vec;
use arrayvec::ArrayVec;
use hvcore::elf::{ElfError, ElfImage};

/// Why a file could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadError(pub &'static str);

impl core::fmt::Display for ReadError {
    fn fmt(&self, out: &mut core::fmt::Formatter) -> core::fmt::Result {
        out.write_str(self.0)
    }
}

/// A file whose bytes can be read at any offset.
pub trait ImageFile {
    /// Bytes in the file.
    fn length(&self) -> u64;
    /// Fills `buffer` with the file's bytes from `offset` on. Reading past
    /// the end is an error.
    fn read_at(&self, offset: u64, buffer: &mut [u8]) -> Result<(), ReadError>;
    /// The whole file, when it is in memory already (the boot ramdisk's):
    /// [`stream`] then hands out its bytes without copying them first.
    fn in_memory(&self) -> Option<&[u8]> {
        None
    }
}

/// A file in memory (the boot ramdisk's, or a test's).
impl ImageFile for &[u8] {
    fn length(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(&self, offset: u64, buffer: &mut [u8]) -> Result<(), ReadError> {
        buffer.copy_from_slice(range(self, offset, buffer.len())?);
        Ok(())
    }

    fn in_memory(&self) -> Option<&[u8]> {
        Some(self)
    }
}

/// `length` bytes of `bytes` from `offset` on; past the end is an error.
fn range(bytes: &[u8], offset: u64, length: usize) -> Result<&[u8], ReadError> {
    let start = usize::try_from(offset).map_err(|_| PAST_END)?;
    start.checked_add(length).and_then(|end| bytes.get(start..end)).ok_or(PAST_END)
}

/// A test's file.
#[cfg(test)]
impl ImageFile for Vec<u8> {
    fn length(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(&self, offset: u64, buffer: &mut [u8]) -> Result<(), ReadError> {
        (&self[..]).read_at(offset, buffer)
    }
}

const PAST_END: ReadError = ReadError("read past the end of the file");

/// Bytes the builder moves at a time, from a file into a guest: the most
/// one ATA command reads (256 sectors), for a file read by its block map.
pub const CHUNK: usize = 128 * 1024;

/// Most program headers read (real kernels have about five).
const MAX_PROGRAM_HEADERS: usize = 64;
/// Most bytes of note segments read (Linux's notes are a few hundred).
const MAX_NOTE_BYTES: u64 = 64 * 1024;
/// gABI sizes of an ELF64 file header and program header.
const FILE_HEADER_SIZE: usize = 64;
const PROGRAM_HEADER_SIZE: usize = 56;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;

/// Why a kernel's headers were refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Not a loadable ELF (hv core's reason).
    Elf(ElfError),
    /// The file could not be read.
    Read(ReadError),
}

/// A kernel's checked ELF headers, read from an [`ImageFile`], and where
/// each loadable segment's bytes are in the file.
#[derive(Debug)]
pub struct ElfHeaders {
    /// The file header, the program headers and the notes' bytes, as a
    /// file `hvcore::elf` checks: loadable segments have no file bytes.
    headers: Vec<u8>,
    /// (offset, length) of each loadable segment's bytes in the file, in
    /// the order of [`ElfImage::segments`].
    file_ranges: ArrayVec<(u64, u64), MAX_PROGRAM_HEADERS>,
}

impl ElfHeaders {
    /// Reads and checks `file`'s headers (a few KiB, whatever the file's size).
    pub fn read(file: &dyn ImageFile) -> Result<Self, HeaderError> {
        let elf = HeaderError::Elf;
        let length = file.length();
        let mut header = [0u8; FILE_HEADER_SIZE];
        if length < FILE_HEADER_SIZE as u64 {
            return Err(elf(ElfError::TooShort));
        }
        file.read_at(0, &mut header).map_err(HeaderError::Read)?;
        // The identification, type and machine first, on the header alone
        // (no program headers: hv core then stops at "no loadable segments").
        let mut bare = header;
        bare[32..40].fill(0); // e_phoff
        bare[40..48].fill(0); // e_shoff
        bare[56..64].fill(0); // e_phnum, e_shentsize, e_shnum, e_shstrndx
        match ElfImage::parse(&bare) {
            Err(ElfError::NoLoadableSegments) => {}
            Err(error) => return Err(elf(error)),
            Ok(_) => return Err(elf(ElfError::BadProgramHeaders)),
        }
        let table_offset = u64::from_le_bytes(header[32..40].try_into().unwrap_or_default());
        let entry_size = u16::from_le_bytes([header[54], header[55]]) as usize;
        let count = u16::from_le_bytes([header[56], header[57]]) as usize;
        let table_end = (count * PROGRAM_HEADER_SIZE) as u64 + table_offset;
        if entry_size != PROGRAM_HEADER_SIZE || count > MAX_PROGRAM_HEADERS || table_end > length {
            return Err(elf(ElfError::BadProgramHeaders));
        }
        let mut table = [0u8; MAX_PROGRAM_HEADERS * PROGRAM_HEADER_SIZE];
        let table = &mut table[..count * PROGRAM_HEADER_SIZE];
        file.read_at(table_offset, table).map_err(HeaderError::Read)?;

        // The copy: file header, program headers, then the notes' bytes.
        let mut headers = Vec::with_capacity(FILE_HEADER_SIZE + table.len() + 1024);
        headers.extend_from_slice(&bare);
        headers[32..40].copy_from_slice(&(FILE_HEADER_SIZE as u64).to_le_bytes());
        headers[56..58].copy_from_slice(&(count as u16).to_le_bytes());
        headers.extend_from_slice(table);
        let mut file_ranges = ArrayVec::new();
        let mut note_bytes = 0;
        for index in 0..count {
            let at = FILE_HEADER_SIZE + index * PROGRAM_HEADER_SIZE;
            let field = |range: core::ops::Range<usize>| -> u64 {
                let mut bytes = [0u8; 8];
                bytes[..range.len()].copy_from_slice(&headers[at + range.start..at + range.end]);
                u64::from_le_bytes(bytes)
            };
            let (kind, offset, file_size, memory_size) =
                (field(0..4) as u32, field(8..16), field(32..40), field(40..48));
            let inside_file = offset.checked_add(file_size).is_some_and(|end| end <= length);
            match kind {
                PT_LOAD if memory_size != 0 => {
                    // hv core's rules on the file bytes, against the file's length.
                    if file_size > memory_size {
                        return Err(elf(ElfError::SegmentSizes));
                    }
                    if file_size != 0 && !inside_file {
                        return Err(elf(ElfError::SegmentOutsideFile));
                    }
                    let _ = file_ranges.try_push((offset, file_size));
                    headers[at + 8..at + 16].fill(0);
                    headers[at + 32..at + 40].fill(0);
                }
                // A note segment outside the file is skipped, as hv core skips notes it cannot read.
                PT_NOTE if inside_file && note_bytes + file_size <= MAX_NOTE_BYTES => {
                    note_bytes += file_size;
                    while headers.len() % 8 != 0 {
                        headers.push(0);
                    }
                    let start = headers.len();
                    headers.resize(start + file_size as usize, 0);
                    file.read_at(offset, &mut headers[start..]).map_err(HeaderError::Read)?;
                    headers[at + 8..at + 16].copy_from_slice(&(start as u64).to_le_bytes());
                }
                PT_NOTE => headers[at..at + 4].fill(0), // PT_NULL: not read
                _ => {}
            }
        }
        let image = ElfImage::parse(&headers).map_err(elf)?;
        // hv core keeps exactly the loadable segments with memory, in file order.
        if image.segments().len() != file_ranges.len() {
            return Err(elf(ElfError::TooManySegments));
        }
        Ok(Self { headers, file_ranges })
    }

    /// The checked image: entry points, segments' addresses and sizes.
    /// (Its segments' file offsets and sizes are the copy's: see
    /// [`file_range`](Self::file_range).)
    pub fn image(&self) -> ElfImage<'_> {
        // `read` parsed these very bytes.
        ElfImage::parse(&self.headers).unwrap_or_else(|_| unreachable!("checked by read"))
    }

    /// (offset, length) in the file of the bytes of segment `index` of
    /// [`image`](Self::image)'s segments.
    pub fn file_range(&self, index: usize) -> (u64, u64) {
        self.file_ranges.get(index).copied().unwrap_or((0, 0))
    }
}

/// Copies `length` bytes of `file` from `offset` on to `destination`
/// through `write` (the guest's memory), [`CHUNK`] at a time: read into
/// `buffer` (grown to a chunk on first use, so a caller streaming several
/// ranges allocates it once), or, for a file in memory, handed out in
/// place (no buffer is allocated then).
pub fn stream<E>(
    file: &dyn ImageFile,
    offset: u64,
    length: u64,
    buffer: &mut Vec<u8>,
    mut write: impl FnMut(u64, &[u8]) -> Result<(), E>,
) -> Result<(), StreamError<E>> {
    let mut done = 0;
    while done < length {
        let piece = (length - done).min(CHUNK as u64) as usize;
        let bytes = match file.in_memory() {
            Some(whole) => range(whole, offset + done, piece).map_err(StreamError::Read)?,
            None => {
                if buffer.len() < CHUNK {
                    buffer.resize(CHUNK, 0);
                }
                file.read_at(offset + done, &mut buffer[..piece]).map_err(StreamError::Read)?;
                &buffer[..piece]
            }
        };
        write(done, bytes).map_err(StreamError::Write)?;
        done += piece as u64;
    }
    Ok(())
}

/// Why [`stream`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamError<E> {
    /// The file could not be read.
    Read(ReadError),
    /// The destination refused a piece.
    Write(E),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A file that counts what is read of it.
    struct Counted<'a> {
        bytes: &'a [u8],
        reads: RefCell<Vec<(u64, usize)>>,
    }

    impl ImageFile for Counted<'_> {
        fn length(&self) -> u64 {
            self.bytes.len() as u64
        }
        fn read_at(&self, offset: u64, buffer: &mut [u8]) -> Result<(), ReadError> {
            self.reads.borrow_mut().push((offset, buffer.len()));
            self.bytes.read_at(offset, buffer)
        }
    }

    /// An ELF64 x86-64 executable: headers at `table_offset`, loadable
    /// segments (offset, physical address, file size, memory size, flags),
    /// an optional Xen PVH note, file `length` bytes of a pattern.
    fn file(table_offset: u64, loads: &[(u64, u64, u64, u64, u32)], pvh: Option<u32>, length: usize) -> Vec<u8> {
        let mut bytes: Vec<u8> = (0..length).map(|i| (i % 251) as u8).collect();
        let count = loads.len() + usize::from(pvh.is_some());
        bytes[..64].fill(0);
        bytes[..4].copy_from_slice(b"\x7fELF");
        bytes[4..7].copy_from_slice(&[2, 1, 1]);
        bytes[16..18].copy_from_slice(&2u16.to_le_bytes());
        bytes[18..20].copy_from_slice(&62u16.to_le_bytes());
        bytes[20..24].copy_from_slice(&1u32.to_le_bytes());
        bytes[24..32].copy_from_slice(&loads[0].1.to_le_bytes());
        bytes[32..40].copy_from_slice(&table_offset.to_le_bytes());
        // Section headers past the end of the file: a streamed read never looks.
        bytes[40..48].copy_from_slice(&(length as u64 * 2).to_le_bytes());
        bytes[52..54].copy_from_slice(&64u16.to_le_bytes());
        bytes[54..56].copy_from_slice(&56u16.to_le_bytes());
        bytes[56..58].copy_from_slice(&(count as u16).to_le_bytes());
        bytes[60..62].copy_from_slice(&3u16.to_le_bytes());
        let mut headers = Vec::new();
        for &(offset, address, file_size, memory_size, flags) in loads {
            let mut header = [0u8; 56];
            header[0..4].copy_from_slice(&PT_LOAD.to_le_bytes());
            header[4..8].copy_from_slice(&flags.to_le_bytes());
            header[8..16].copy_from_slice(&offset.to_le_bytes());
            header[16..24].copy_from_slice(&address.to_le_bytes());
            header[24..32].copy_from_slice(&address.to_le_bytes());
            header[32..40].copy_from_slice(&file_size.to_le_bytes());
            header[40..48].copy_from_slice(&memory_size.to_le_bytes());
            headers.push(header);
        }
        if let Some(entry) = pvh {
            // The note right after the table.
            let note_offset = table_offset + 56 * count as u64;
            let mut note = Vec::new();
            for word in [4u32, 8, 18] {
                note.extend_from_slice(&word.to_le_bytes());
            }
            note.extend_from_slice(b"Xen\0");
            note.extend_from_slice(&u64::from(entry).to_le_bytes());
            bytes[note_offset as usize..note_offset as usize + note.len()].copy_from_slice(&note);
            let mut header = [0u8; 56];
            header[0..4].copy_from_slice(&PT_NOTE.to_le_bytes());
            header[8..16].copy_from_slice(&note_offset.to_le_bytes());
            header[32..40].copy_from_slice(&(note.len() as u64).to_le_bytes());
            header[40..48].copy_from_slice(&(note.len() as u64).to_le_bytes());
            header[48..56].copy_from_slice(&4u64.to_le_bytes());
            headers.push(header);
        }
        for (index, header) in headers.iter().enumerate() {
            let at = table_offset as usize + 56 * index;
            bytes[at..at + 56].copy_from_slice(header);
        }
        bytes
    }

    #[test]
    fn headers_are_read_alone_and_checked_as_hv_core_checks_a_whole_file() {
        let loads = [(0x1000, 0x100000, 0x3000, 0x3000, 5), (0x4000, 0x200000, 0x800, 0x9000, 6)];
        let bytes = file(0x200, &loads, Some(0x100010), 0x4800);
        let counted = Counted { bytes: &bytes, reads: RefCell::new(Vec::new()) };
        let headers = ElfHeaders::read(&counted).unwrap();
        // The header, the table, the note: never a segment's bytes.
        let read: usize = counted.reads.borrow().iter().map(|&(_, length)| length).sum();
        assert_eq!(read, 64 + 3 * 56 + 24, "{:?}", counted.reads.borrow());
        let image = headers.image();
        assert_eq!(image.pvh_entry(), Some(0x100010));
        let whole = {
            // The same file with its section table gone, as a slice for hv core.
            let mut whole = bytes.clone();
            whole[40..48].fill(0);
            whole[60..64].fill(0);
            whole
        };
        let reference = ElfImage::parse(&whole).unwrap();
        assert_eq!(image.entry(), reference.entry());
        assert_eq!(image.physical_extent(), reference.physical_extent());
        for (index, (segment, expected)) in image.segments().iter().zip(reference.segments()).enumerate() {
            assert_eq!(
                (segment.phys_addr, segment.mem_size, segment.flags),
                (expected.phys_addr, expected.mem_size, expected.flags)
            );
            assert_eq!(headers.file_range(index), (expected.file_offset, expected.file_size));
        }
    }

    #[test]
    fn bad_headers_get_hv_cores_reasons() {
        let loads = [(0x1000, 0x100000, 0x3000, 0x3000, 5)];
        let good = file(64, &loads, None, 0x4000);
        assert!(ElfHeaders::read(&&good[..]).is_ok());
        let refused = |bytes: &[u8]| ElfHeaders::read(&bytes).err();
        assert_eq!(refused(&good[..63]), Some(HeaderError::Elf(ElfError::TooShort)));
        let mut magic = good.clone();
        magic[1] = b'X';
        assert_eq!(refused(&magic), Some(HeaderError::Elf(ElfError::BadMagic)));
        let mut machine = good.clone();
        machine[18] = 3;
        assert_eq!(refused(&machine), Some(HeaderError::Elf(ElfError::WrongMachine)));
        // The segment's bytes run past the end of the file.
        assert_eq!(refused(&good[..0x3fff]), Some(HeaderError::Elf(ElfError::SegmentOutsideFile)));
        let sizes = file(64, &[(0x1000, 0x100000, 0x3000, 0x2000, 5)], None, 0x4000);
        assert_eq!(refused(&sizes), Some(HeaderError::Elf(ElfError::SegmentSizes)));
        let table_outside = file(0x3fd0, &loads, None, 0x4000 + 8);
        assert_eq!(refused(&table_outside[..0x4000]), Some(HeaderError::Elf(ElfError::BadProgramHeaders)));
        let overlapping =
            file(64, &[(0x1000, 0x100000, 0x1000, 0x2000, 5), (0x2000, 0x101000, 0x1000, 0x1000, 6)], None, 0x4000);
        assert_eq!(refused(&overlapping), Some(HeaderError::Elf(ElfError::OverlappingSegments)));
        let no_execute = file(64, &[(0x1000, 0x100000, 0x3000, 0x3000, 6)], None, 0x4000);
        assert_eq!(refused(&no_execute), Some(HeaderError::Elf(ElfError::EntryNotExecutable)));
    }

    /// An accepted kernel: entry, PVH entry, and each segment's (physical
    /// address, memory size, flags, file offset, file size).
    type Verdict = Option<(u64, Option<u32>, Vec<(u64, u64, u32, u64, u64)>)>;

    /// hv core's verdict on a whole file (its section table dropped, which
    /// a streamed read never looks at), as the streamed reader reports it.
    fn whole_file_verdict(bytes: &[u8]) -> Verdict {
        let mut whole = bytes.to_vec();
        if whole.len() >= 64 {
            whole[40..48].fill(0);
            whole[60..64].fill(0);
        }
        let image = ElfImage::parse(&whole).ok()?;
        let segments = image
            .segments()
            .iter()
            .map(|segment| (segment.phys_addr, segment.mem_size, segment.flags, segment.file_offset, segment.file_size))
            .collect();
        Some((image.entry(), image.pvh_entry(), segments))
    }

    fn streamed_verdict(bytes: &[u8]) -> Verdict {
        let headers = ElfHeaders::read(&bytes).ok()?;
        let image = headers.image();
        let segments = image
            .segments()
            .iter()
            .enumerate()
            .map(|(index, segment)| {
                let (offset, size) = headers.file_range(index);
                (segment.phys_addr, segment.mem_size, segment.flags, offset, size)
            })
            .collect();
        Some((image.entry(), image.pvh_entry(), segments))
    }

    /// Random damage to the headers of good kernels: the streamed reader
    /// accepts exactly what hv core accepts of the whole file, and finds
    /// the same entry points and segments.
    #[test]
    fn streamed_headers_agree_with_hv_core_on_damaged_files() {
        let mut random = crate::test_random::XorShift(0x1ead_e125);
        let kernels = [
            file(64, &[(0x1000, 0x100000, 0x3000, 0x3000, 5), (0x4000, 0x200000, 0x800, 0x9000, 6)], None, 0x4800),
            file(0x200, &[(0x1000, 0x100000, 0x3000, 0x3000, 5)], Some(0x100010), 0x4800),
            file(
                0x3000,
                &[(0x1000, 0x100000, 0x1000, 0x3000, 7), (0x0, 0x400000, 0, 0x1000, 6)],
                Some(0x100000),
                0x3400,
            ),
        ];
        let (mut accepted, mut refused) = (0, 0);
        for round in 0..20_000 {
            let mut bytes = kernels[round % kernels.len()].clone();
            let table = u64::from_le_bytes(bytes[32..40].try_into().unwrap()) as usize;
            for _ in 0..1 + random.below(3) {
                // A byte of the file header or of the program header table.
                let at = if random.below(2) == 0 { random.below(64) } else { table + random.below(3 * 56) };
                let value = match random.below(3) {
                    0 => random.next() as u8,
                    1 => bytes[at] ^ (1 << random.below(8)),
                    _ => 0,
                };
                if let Some(byte) = bytes.get_mut(at) {
                    *byte = value;
                }
            }
            let count = u16::from_le_bytes([bytes[56], bytes[57]]) as usize;
            if count > MAX_PROGRAM_HEADERS {
                continue; // more than the streamed reader reads: refused by design
            }
            let expected = whole_file_verdict(&bytes);
            assert_eq!(streamed_verdict(&bytes), expected, "round {round}");
            if expected.is_some() { accepted += 1 } else { refused += 1 }
        }
        assert!(accepted > 1000 && refused > 1000, "both outcomes reached: {accepted} accepted, {refused} refused");
    }

    #[test]
    fn streaming_moves_a_chunk_at_a_time_and_stops_at_the_first_failure() {
        let length = 2 * CHUNK + 20_000;
        let bytes: Vec<u8> = (0..length as u32 + 50_000).map(|i| (i % 253) as u8).collect();
        let counted = Counted { bytes: &bytes, reads: RefCell::new(Vec::new()) };
        let mut buffer = Vec::new();
        let mut copy = vec![0u8; length];
        stream(&counted, 10_000, length as u64, &mut buffer, |at, piece| -> Result<(), ()> {
            copy[at as usize..at as usize + piece.len()].copy_from_slice(piece);
            Ok(())
        })
        .unwrap();
        assert_eq!(copy, bytes[10_000..10_000 + length]);
        assert!(counted.reads.borrow().iter().all(|&(_, length)| length <= CHUNK));
        assert_eq!(counted.reads.borrow().len(), 3);
        let mut writes = 0;
        let result = stream(&counted, 0, length as u64, &mut buffer, |_, _| {
            writes += 1;
            if writes == 2 { Err("full") } else { Ok(()) }
        });
        assert_eq!(result, Err(StreamError::Write("full")));
        let result =
            stream(&counted, bytes.len() as u64 - 10_000, 20_000, &mut buffer, |_, _| -> Result<(), ()> { Ok(()) });
        assert_eq!(result, Err(StreamError::Read(PAST_END)));
    }

    #[test]
    fn a_file_in_memory_streams_its_own_bytes_without_a_copy() {
        let bytes: Vec<u8> = (0..3 * CHUNK as u32 + 50_000).map(|i| (i % 251) as u8).collect();
        let file: &[u8] = &bytes;
        // No buffer is allocated: the pieces are the file's own bytes.
        let mut buffer = Vec::new();
        let mut pieces = Vec::new();
        stream(&file, 10_000, 2 * CHUNK as u64 + 20_000, &mut buffer, |at, piece| -> Result<(), ()> {
            assert_eq!(piece.as_ptr(), bytes[10_000 + at as usize..].as_ptr(), "a piece of the file itself");
            pieces.push((at, piece.len()));
            Ok(())
        })
        .unwrap();
        assert_eq!(pieces, [(0, CHUNK), (CHUNK as u64, CHUNK), (2 * CHUNK as u64, 20_000)]);
        assert!(buffer.capacity() == 0, "no buffer for a file in memory");
        let result =
            stream(&file, bytes.len() as u64 - 10_000, 20_000, &mut buffer, |_, _| -> Result<(), ()> { Ok(()) });
        assert_eq!(result, Err(StreamError::Read(PAST_END)));
    }
}
