//! A read-only reader for ustar (POSIX.1-1988) and GNU tar archives: the boot ramdisk.
//!
//! An archive is a sequence of 512-byte blocks: each entry is a header block
//! followed by its data, padded to a whole block, and the archive ends with a
//! block of zeros (GNU tar writes two, then pads to a 10 KiB record). The
//! header fields used here, by byte offset:
//!
//! | offset | length | field    | used as                                               |
//! |--------|--------|----------|-------------------------------------------------------|
//! | 0      | 100    | name     | the path, NUL-terminated unless it fills the field    |
//! | 124    | 12     | size     | data length: octal digits ended by NUL or space       |
//! | 148    | 8      | chksum   | octal sum of the header's bytes, this field as spaces |
//! | 156    | 1      | typeflag | `'0'`/NUL/`'7'` file, `'5'` directory, others below   |
//! | 257    | 6      | magic    | `"ustar\0"` (POSIX) or `"ustar "` (GNU)               |
//! | 345    | 155    | prefix   | POSIX only: the path is `prefix + "/" + name`         |
//!
//! The checksum is accepted when it matches the sum of the bytes taken either
//! unsigned (the standard) or as signed chars (what some old tars wrote).
//!
//! Type flags `'1'`..=`'6'` (links, devices, directories, FIFOs) never have
//! data blocks, whatever their size field says. A GNU long-name header
//! (`'L'`) is consumed: its data is the next entry's path. Every other type
//! (pax `'x'`/`'g'` headers included) is an entry of kind
//! [`EntryKind::Other`] whose data is skipped; pax attributes are not
//! applied, so archives should be made with `--format=ustar` or GNU tar's
//! default `--format=gnu`, not `--format=posix`.
//!
//! Paths are at most [`PATH_MAX`] bytes of UTF-8: the longest a ustar header
//! can hold. A leading `./` is removed (`tar -C dir .` writes one); the
//! archive root `./` itself is named `.`. Directories keep the trailing `/`
//! that tar writes.

use core::fmt;
use core::ops::Range;

use arrayvec::ArrayString;

/// Size of a header or data block.
pub const BLOCK_SIZE: usize = 512;
/// Longest path: a 155-byte prefix, a `/` and a 100-byte name.
pub const PATH_MAX: usize = 256;

const NAME: Range<usize> = 0..100;
const SIZE: Range<usize> = 124..136;
const CHECKSUM: Range<usize> = 148..156;
const TYPEFLAG: usize = 156;
const MAGIC: Range<usize> = 257..263;
const PREFIX: Range<usize> = 345..500;

/// The POSIX magic; GNU tar's own format writes `"ustar "` and has no prefix field.
const POSIX_MAGIC: &[u8] = b"ustar\0";
const GNU_LONG_NAME: u8 = b'L';

/// Why an archive cannot be read. `offset` is the byte offset of the header
/// of the entry at fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TarError {
    /// The archive ends inside a header or inside an entry's data blocks
    /// (or after a long-name header with no entry for it).
    Truncated { offset: usize },
    /// The header's checksum field is not octal or does not match its bytes.
    BadChecksum { offset: usize },
    /// The size field is not an octal number.
    BadNumber { offset: usize },
    /// The path is empty, not UTF-8 or longer than [`PATH_MAX`] bytes.
    BadName { offset: usize },
}

impl fmt::Display for TarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            TarError::Truncated { offset } => write!(f, "archive truncated in the entry at offset {offset}"),
            TarError::BadChecksum { offset } => write!(f, "bad header checksum at offset {offset}"),
            TarError::BadNumber { offset } => write!(f, "bad size field in the header at offset {offset}"),
            TarError::BadName { offset } => write!(f, "bad path in the header at offset {offset}"),
        }
    }
}

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Directory,
    /// Anything else: links, devices, FIFOs, pax headers, unknown types.
    Other,
}

/// One entry of an archive.
///
/// The path is copied out of the header because a ustar path is split
/// between two fields and so is not one slice of the archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The path, normalised as the module docs describe.
    pub name: ArrayString<PATH_MAX>,
    /// What the entry is.
    pub kind: EntryKind,
    /// The file's contents; empty for anything but a file.
    pub data: &'a [u8],
}

/// An archive in memory.
#[derive(Clone, Copy, Debug)]
pub struct Archive<'a> {
    bytes: &'a [u8],
}

impl<'a> Archive<'a> {
    /// Wraps the archive's bytes; nothing is checked until it is read.
    pub const fn new(bytes: &'a [u8]) -> Archive<'a> {
        Archive { bytes }
    }

    /// The entries in archive order.
    pub fn entries(&self) -> Entries<'a> {
        Entries { bytes: self.bytes, offset: 0, finished: false }
    }

    /// The first [`EntryKind::File`] entry whose path is exactly `name`.
    /// An error in any entry before it is returned instead.
    pub fn find(&self, name: &str) -> Result<Option<Entry<'a>>, TarError> {
        for entry in self.entries() {
            let entry = entry?;
            if entry.kind == EntryKind::File && entry.name.as_str() == name {
                return Ok(Some(entry));
            }
        }
        Ok(None)
    }
}

/// Iterator over an archive's entries. It stops at the end-of-archive zero
/// block or at the end of the bytes, and after yielding an error.
#[derive(Clone, Debug)]
pub struct Entries<'a> {
    bytes: &'a [u8],
    /// Where the next header starts.
    offset: usize,
    finished: bool,
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<Entry<'a>, TarError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        let result = self.read_entry();
        if !matches!(result, Ok(Some(_))) {
            self.finished = true;
        }
        result.transpose()
    }
}

/// A header block and the data blocks after it.
struct Block<'a> {
    header: &'a [u8; BLOCK_SIZE],
    /// The data, `size` bytes without the padding.
    data: &'a [u8],
}

impl<'a> Entries<'a> {
    /// Reads headers until one that is an entry; `Ok(None)` at the end.
    fn read_entry(&mut self) -> Result<Option<Entry<'a>>, TarError> {
        let mut long_name: Option<&'a [u8]> = None;
        loop {
            let offset = self.offset;
            let Some(block) = self.read_block()? else {
                return match long_name {
                    Some(_) => Err(TarError::Truncated { offset }),
                    None => Ok(None),
                };
            };
            let typeflag = block.header[TYPEFLAG];
            if typeflag == GNU_LONG_NAME {
                long_name = Some(until_nul(block.data));
                continue;
            }
            let name = match long_name {
                Some(name) => path(&[], name),
                None if &block.header[MAGIC] == POSIX_MAGIC => path(&block.header[PREFIX], &block.header[NAME]),
                None => path(&[], &block.header[NAME]),
            }
            .ok_or(TarError::BadName { offset })?;
            let kind = match typeflag {
                // Pre-POSIX tars marked directories only with a trailing slash.
                0 if name.ends_with('/') => EntryKind::Directory,
                0 | b'0' | b'7' => EntryKind::File,
                b'5' => EntryKind::Directory,
                _ => EntryKind::Other,
            };
            let data = if kind == EntryKind::File { block.data } else { &[] };
            return Ok(Some(Entry { name, kind, data }));
        }
    }

    /// Checks the header at `self.offset` and moves past its data;
    /// `Ok(None)` at the end of the bytes or at a zero block.
    fn read_block(&mut self) -> Result<Option<Block<'a>>, TarError> {
        let offset = self.offset;
        if offset == self.bytes.len() {
            return Ok(None);
        }
        let header: &[u8; BLOCK_SIZE] = self
            .bytes
            .get(offset..)
            .and_then(|rest| rest.get(..BLOCK_SIZE))
            .and_then(|header| header.try_into().ok())
            .ok_or(TarError::Truncated { offset })?;
        if header.iter().all(|&byte| byte == 0) {
            return Ok(None);
        }
        if !checksum_matches(header) {
            return Err(TarError::BadChecksum { offset });
        }
        let size = parse_octal(&header[SIZE]).ok_or(TarError::BadNumber { offset })?;
        // These types never have data blocks; their size field may describe
        // the linked file instead.
        let size = if matches!(header[TYPEFLAG], b'1'..=b'6') { 0 } else { size };
        let truncated = TarError::Truncated { offset };
        let size = usize::try_from(size).map_err(|_| truncated)?;
        let data_start = offset + BLOCK_SIZE;
        let padded = size.div_ceil(BLOCK_SIZE).checked_mul(BLOCK_SIZE).ok_or(truncated)?;
        let next = data_start.checked_add(padded).filter(|&next| next <= self.bytes.len()).ok_or(truncated)?;
        let data = self.bytes.get(data_start..data_start + size).ok_or(truncated)?;
        self.offset = next;
        Ok(Some(Block { header, data }))
    }
}

/// The bytes before the first NUL, or all of them.
fn until_nul(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&byte| byte == 0).unwrap_or(field.len());
    &field[..end]
}

/// Joins a prefix field (possibly empty) and a name field into a path and
/// normalises it; `None` if it is empty, not UTF-8 or too long.
fn path(prefix: &[u8], name: &[u8]) -> Option<ArrayString<PATH_MAX>> {
    let prefix = core::str::from_utf8(until_nul(prefix)).ok()?;
    let name = core::str::from_utf8(until_nul(name)).ok()?;
    let mut joined = ArrayString::<PATH_MAX>::new();
    if !prefix.is_empty() {
        joined.try_push_str(prefix).ok()?;
        joined.try_push('/').ok()?;
    }
    joined.try_push_str(name).ok()?;
    let normalised = match joined.strip_prefix("./") {
        Some("") => ".",
        Some(rest) => rest,
        None => joined.as_str(),
    };
    if normalised.is_empty() {
        return None;
    }
    ArrayString::from(normalised).ok()
}

/// Whether the stored checksum matches the header's bytes, summed unsigned
/// or as signed chars, with the checksum field counted as spaces.
fn checksum_matches(header: &[u8; BLOCK_SIZE]) -> bool {
    let Some(stored) = parse_octal(&header[CHECKSUM]) else { return false };
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (index, &byte) in header.iter().enumerate() {
        let byte = if CHECKSUM.contains(&index) { b' ' } else { byte };
        unsigned += u64::from(byte);
        signed += i64::from(i8::from_ne_bytes([byte]));
    }
    stored == unsigned || i64::try_from(stored) == Ok(signed)
}

/// An octal field: optional leading spaces, at least one digit, then
/// nothing but NULs and spaces (the terminator may be absent when the
/// digits fill the field).
fn parse_octal(field: &[u8]) -> Option<u64> {
    let start = field.iter().position(|&byte| byte != b' ')?;
    let digits = field[start..].iter().take_while(|byte| (b'0'..=b'7').contains(byte)).count();
    if digits == 0 {
        return None;
    }
    let (number, rest) = field[start..].split_at(digits);
    if !rest.iter().all(|&byte| byte == 0 || byte == b' ') {
        return None;
    }
    number.iter().try_fold(0u64, |value, &digit| value.checked_mul(8)?.checked_add(u64::from(digit - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;
    use std::fs;
    use std::path::PathBuf;
    use std::process::Command;
    use std::string::{String, ToString};
    use std::vec::Vec;

    /// A scratch directory removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let path = std::env::temp_dir().join(format!("mica-tar-test-{}-{tag}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const LONG_DIRECTORY: &str = "long/dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd";
    const LONG_FILE: &str = "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff.txt";

    fn pattern(length: usize, seed: u8) -> Vec<u8> {
        (0..length).map(|index| (index as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    /// The files the test tree holds, by path.
    fn files() -> Vec<(String, Vec<u8>)> {
        std::vec![
            ("boot/empty".to_string(), Vec::new()),
            ("boot/kernel.elf".to_string(), pattern(3000, 1)),
            ("data/exact512".to_string(), pattern(512, 2)),
            ("data/exact513".to_string(), pattern(513, 3)),
            ("etc/nested/deeper/guest.cfg".to_string(), b"name = \"g\"\n".to_vec()),
            (format!("{LONG_DIRECTORY}/{LONG_FILE}"), pattern(1, 4)),
        ]
    }

    const DIRECTORIES: [&str; 7] = [
        "boot/",
        "data/",
        "etc/",
        "etc/nested/",
        "etc/nested/deeper/",
        "long/",
        "long/dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd/",
    ];

    /// Builds the test tree and archives it with the real `tar`.
    fn make_archive(directory: &TempDir, format: &str, members: &[&str]) -> Vec<u8> {
        let root = directory.0.join("root");
        for (path, contents) in files() {
            let path = root.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, contents).unwrap();
        }
        let archive = directory.0.join(format!("{format}.tar"));
        let status = Command::new("tar")
            .args([&format!("--format={format}"), "--sort=name", "--owner=0", "--group=0", "--numeric-owner", "-cf"])
            .arg(&archive)
            .arg("-C")
            .arg(&root)
            .args(members)
            .status()
            .expect("the tests need GNU tar on the PATH");
        assert!(status.success(), "tar failed");
        fs::read(archive).unwrap()
    }

    /// What the archive of the whole tree should list, in order.
    fn expected_entries() -> Vec<(String, EntryKind, Vec<u8>)> {
        let mut expected: Vec<(String, EntryKind, Vec<u8>)> = DIRECTORIES
            .iter()
            .map(|directory| (directory.to_string(), EntryKind::Directory, Vec::new()))
            .chain(files().into_iter().map(|(path, data)| (path, EntryKind::File, data)))
            .collect();
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        expected
    }

    fn listing(bytes: &[u8]) -> Vec<(String, EntryKind, Vec<u8>)> {
        Archive::new(bytes)
            .entries()
            .map(|entry| {
                let entry = entry.unwrap();
                (entry.name.to_string(), entry.kind, entry.data.to_vec())
            })
            .collect()
    }

    fn ustar_archive(directory: &TempDir) -> Vec<u8> {
        make_archive(directory, "ustar", &["boot", "data", "etc", "long"])
    }

    /// Writes a header's checksum the way tar does: six octal digits, NUL, space.
    fn set_checksum(header: &mut [u8]) {
        header[CHECKSUM].fill(b' ');
        let sum: u32 = header[..BLOCK_SIZE].iter().map(|&byte| u32::from(byte)).sum();
        header[CHECKSUM].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    }

    /// A POSIX header for `name` with `size` and `typeflag`, checksummed.
    fn header(name: &str, size: usize, typeflag: u8) -> Vec<u8> {
        let mut header = std::vec![0u8; BLOCK_SIZE];
        header[..name.len()].copy_from_slice(name.as_bytes());
        header[100..108].copy_from_slice(b"0000644\0");
        header[SIZE].copy_from_slice(format!("{size:011o}\0").as_bytes());
        header[TYPEFLAG] = typeflag;
        header[MAGIC].copy_from_slice(POSIX_MAGIC);
        header[263..265].copy_from_slice(b"00");
        set_checksum(&mut header);
        header
    }

    fn file(name: &str, data: &[u8]) -> Vec<u8> {
        entry_of_type(name, b'0', data)
    }

    fn entry_of_type(name: &str, typeflag: u8, data: &[u8]) -> Vec<u8> {
        let mut bytes = header(name, data.len(), typeflag);
        bytes.extend_from_slice(data);
        bytes.resize(bytes.len().next_multiple_of(BLOCK_SIZE), 0);
        bytes
    }

    #[test]
    fn reads_ustar_from_gnu_tar() {
        let directory = TempDir::new("ustar");
        let bytes = ustar_archive(&directory);
        assert_eq!(listing(&bytes), expected_entries());

        // The long path needed the prefix field.
        let long_header = bytes
            .chunks(BLOCK_SIZE)
            .find(|block| block.starts_with(LONG_FILE.as_bytes()))
            .expect("tar split the long path");
        assert_eq!(until_nul(&long_header[PREFIX]), LONG_DIRECTORY.as_bytes());

        let archive = Archive::new(&bytes);
        for (path, contents) in files() {
            let entry = archive.find(&path).unwrap().unwrap();
            assert_eq!((entry.name.as_str(), entry.kind, entry.data), (path.as_str(), EntryKind::File, &contents[..]));
        }
        assert_eq!(archive.find("data/exact512").unwrap().unwrap().data.len(), 512);
        assert_eq!(archive.find("data/exact513").unwrap().unwrap().data.len(), 513);
        assert!(archive.find("boot/empty").unwrap().unwrap().data.is_empty());
        // Directories, partial and unnormalised paths are not files.
        for missing in ["boot", "boot/", "kernel.elf", "./boot/kernel.elf", "/boot/kernel.elf", "", "boot/kernel.el"] {
            assert_eq!(archive.find(missing).unwrap(), None, "{missing}");
        }
    }

    #[test]
    fn strips_leading_dot_slash() {
        let directory = TempDir::new("dot");
        let bytes = make_archive(&directory, "ustar", &["."]);
        let mut expected = expected_entries();
        expected.insert(0, (".".to_string(), EntryKind::Directory, Vec::new()));
        assert_eq!(listing(&bytes), expected);
        let archive = Archive::new(&bytes);
        assert_eq!(archive.find("etc/nested/deeper/guest.cfg").unwrap().unwrap().data, b"name = \"g\"\n");
    }

    #[test]
    fn reads_gnu_format_with_long_names() {
        let directory = TempDir::new("gnu");
        let bytes = make_archive(&directory, "gnu", &["."]);
        // GNU tar wrote a long-name header for the long file; it is consumed.
        assert!(bytes.chunks(BLOCK_SIZE).any(|block| block.starts_with(b"././@LongLink") && block[TYPEFLAG] == b'L'));
        let mut expected = expected_entries();
        expected.insert(0, (".".to_string(), EntryKind::Directory, Vec::new()));
        assert_eq!(listing(&bytes), expected);
        let path = format!("{LONG_DIRECTORY}/{LONG_FILE}");
        assert_eq!(Archive::new(&bytes).find(&path).unwrap().unwrap().data, &pattern(1, 4)[..]);
    }

    /// Cutting the archive anywhere either ends cleanly at an entry boundary
    /// or reports the entry that was cut.
    #[test]
    fn truncated_archives() {
        let directory = TempDir::new("truncated");
        let bytes = ustar_archive(&directory);
        let entries = expected_entries();
        // Where each entry starts, and where the entries end.
        let mut boundaries = std::vec![0];
        for (_, _, data) in &entries {
            let last = *boundaries.last().unwrap();
            boundaries.push(last + BLOCK_SIZE + data.len().next_multiple_of(BLOCK_SIZE));
        }
        let end = *boundaries.last().unwrap();
        assert!(bytes[end..end + BLOCK_SIZE].iter().all(|&byte| byte == 0));

        for length in (0..=end + BLOCK_SIZE).chain([end + BLOCK_SIZE + 1, bytes.len()]) {
            let results: Vec<_> = Archive::new(&bytes[..length]).entries().collect();
            let complete = boundaries.iter().rposition(|&boundary| boundary <= length).unwrap();
            let complete = complete.min(entries.len());
            assert!(results[..complete].iter().all(Result::is_ok), "length {length}");
            if boundaries.contains(&length) || length >= end + BLOCK_SIZE {
                assert_eq!(results.len(), complete, "length {length}");
            } else {
                assert_eq!(results.len(), complete + 1, "length {length}");
                let offset = boundaries[complete];
                assert_eq!(results[complete], Err(TarError::Truncated { offset }), "length {length}");
            }
            let find = Archive::new(&bytes[..length]).find("data/exact513");
            let data_513_ends = boundaries[entries.iter().position(|e| e.0 == "data/exact513").unwrap() + 1];
            if length >= data_513_ends {
                assert_eq!(find.unwrap().unwrap().data.len(), 513);
            } else {
                assert!(matches!(find, Ok(None) | Err(TarError::Truncated { .. })), "length {length}");
            }
        }
    }

    #[test]
    fn corrupt_checksums() {
        let directory = TempDir::new("checksum");
        let mut bytes = ustar_archive(&directory);
        let third = 2 * BLOCK_SIZE; // boot/, boot/empty, then boot/kernel.elf
        assert!(bytes[third..].starts_with(b"boot/kernel.elf\0"));
        bytes[third] = b'B';
        let results: Vec<_> = Archive::new(&bytes).entries().collect();
        assert_eq!(results.len(), 3);
        assert!(results[0].is_ok() && results[1].is_ok());
        assert_eq!(results[2], Err(TarError::BadChecksum { offset: third }));
        assert_eq!(Archive::new(&bytes).find("data/exact512"), Err(TarError::BadChecksum { offset: third }));
        // An entry before the damage is still found.
        assert!(Archive::new(&bytes).find("boot/empty").unwrap().is_some());

        // A checksum field that is not octal.
        let mut bytes = file("a", b"x");
        bytes[CHECKSUM].copy_from_slice(b"0123x5\0 ");
        assert_eq!(Archive::new(&bytes).entries().next(), Some(Err(TarError::BadChecksum { offset: 0 })));
        let mut bytes = file("a", b"x");
        bytes[CHECKSUM].fill(0);
        assert_eq!(Archive::new(&bytes).entries().next(), Some(Err(TarError::BadChecksum { offset: 0 })));
        // Not a tar archive at all.
        let text = [b'#'; 2048];
        assert_eq!(Archive::new(&text).find("x"), Err(TarError::BadChecksum { offset: 0 }));
    }

    #[test]
    fn signed_checksums() {
        let mut bytes = file("caf\u{e9}/men\u{fc}", b"data");
        assert_eq!(Archive::new(&bytes).find("caf\u{e9}/men\u{fc}").unwrap().unwrap().data, b"data");
        // Rewrite the checksum as a signed-char sum, as old tars did.
        bytes[CHECKSUM].fill(b' ');
        let signed: i64 = bytes[..BLOCK_SIZE].iter().map(|&byte| i64::from(byte as i8)).sum();
        bytes[CHECKSUM].copy_from_slice(format!("{signed:06o}\0 ").as_bytes());
        let unsigned: i64 = bytes[..BLOCK_SIZE].iter().map(|&byte| i64::from(byte)).sum();
        assert_ne!(signed, unsigned);
        assert_eq!(Archive::new(&bytes).find("caf\u{e9}/men\u{fc}").unwrap().unwrap().data, b"data");
    }

    #[test]
    fn octal_fields() {
        assert_eq!(parse_octal(b"00000001750\0"), Some(0o1750));
        assert_eq!(parse_octal(b"   1750 \0\0\0\0"), Some(0o1750));
        assert_eq!(parse_octal(b"777777777777"), Some(0o777777777777));
        assert_eq!(parse_octal(b"012345\0 "), Some(0o12345));
        for bad in [&b"00000000008\0"[..], b"\0\0\0\0", b"        ", b"12 3\0", b"-1\0", b"1\x001", b"", b"0x10\0"] {
            assert_eq!(parse_octal(bad), None, "{bad:?}");
        }

        for size_field in [&b"0000000008\0\0"[..], b"00000000001x", b"            ", b"\x80\0\0\0\0\0\0\0\0\0\0\x01"] {
            let mut bytes = file("a", b"x");
            bytes[SIZE].copy_from_slice(size_field);
            set_checksum(&mut bytes);
            let mut entries = Archive::new(&bytes).entries();
            assert_eq!(entries.next(), Some(Err(TarError::BadNumber { offset: 0 })));
            assert_eq!(entries.next(), None);
        }
        // A size that would run far past the end.
        let mut bytes = file("a", b"x");
        bytes[SIZE].copy_from_slice(b"77777777777\0");
        set_checksum(&mut bytes);
        assert_eq!(Archive::new(&bytes).find("a"), Err(TarError::Truncated { offset: 0 }));
    }

    #[test]
    fn names_and_kinds() {
        let mut bytes = Vec::new();
        bytes.extend(file("./a", b"1"));
        bytes.extend(header("dir/", 0, b'5'));
        bytes.extend(header("old-style-dir/", 0, 0));
        bytes.extend(file("old-style-file", b"2"));
        // A hard link and a symlink claiming a size: no data blocks follow.
        bytes.extend(header("hard", 1000, b'1'));
        bytes.extend(header("soft", 7, b'2'));
        bytes.extend(header("fifo", 0, b'6'));
        // A pax header: kind Other, its data skipped.
        let pax = b"30 mtime=1700000000.123456789\n";
        let mut pax_entry = header("PaxHeaders/x", pax.len(), b'x');
        pax_entry.extend_from_slice(pax);
        pax_entry.resize(2 * BLOCK_SIZE, 0);
        bytes.extend(pax_entry);
        bytes.extend(entry_of_type("contiguous", b'7', b"3"));
        // A name filling all 100 bytes of its field, unterminated.
        let hundred = "n".repeat(100);
        bytes.extend(file(&hundred, b"4"));
        // A POSIX prefix.
        let mut prefixed = file("name", b"5");
        prefixed[PREFIX][..6].copy_from_slice(b"./pre1");
        set_checksum(&mut prefixed);
        bytes.extend(prefixed);
        // A prefix in a GNU-format header is not a prefix (GNU keeps times there).
        let mut gnu = file("gnu", b"6");
        gnu[MAGIC].copy_from_slice(b"ustar ");
        gnu[263..265].copy_from_slice(b" \0");
        gnu[PREFIX][..4].copy_from_slice(b"junk");
        set_checksum(&mut gnu);
        bytes.extend(gnu);
        bytes.resize(bytes.len() + 2 * BLOCK_SIZE, 0);
        // Anything after the end-of-archive block is ignored.
        bytes.extend(file("after-the-end", b"7"));

        let listed: Vec<_> = Archive::new(&bytes)
            .entries()
            .map(|entry| entry.map(|entry| (entry.name.to_string(), entry.kind, entry.data.to_vec())).unwrap())
            .collect();
        let owned = |name: &str, kind, data: &[u8]| (name.to_string(), kind, data.to_vec());
        assert_eq!(
            listed,
            std::vec![
                owned("a", EntryKind::File, b"1"),
                owned("dir/", EntryKind::Directory, b""),
                owned("old-style-dir/", EntryKind::Directory, b""),
                owned("old-style-file", EntryKind::File, b"2"),
                owned("hard", EntryKind::Other, b""),
                owned("soft", EntryKind::Other, b""),
                owned("fifo", EntryKind::Other, b""),
                owned("PaxHeaders/x", EntryKind::Other, b""),
                owned("contiguous", EntryKind::File, b"3"),
                owned(&hundred, EntryKind::File, b"4"),
                owned("pre1/name", EntryKind::File, b"5"),
                owned("gnu", EntryKind::File, b"6"),
            ]
        );
        assert_eq!(Archive::new(&bytes).find("after-the-end"), Ok(None));
        assert_eq!(Archive::new(&bytes).find("hard"), Ok(None));
    }

    #[test]
    fn bad_names() {
        fn bad(bytes: &[u8]) -> Option<Result<Entry<'_>, TarError>> {
            let mut entries = Archive::new(bytes).entries();
            let first = entries.next();
            assert_eq!(entries.next(), None, "nothing after an error");
            first
        }
        let mut bytes = file("x", b"");
        bytes[0] = 0xff;
        set_checksum(&mut bytes);
        assert_eq!(bad(&bytes), Some(Err(TarError::BadName { offset: 0 })));
        // An empty name.
        let mut bytes = file("x", b"");
        bytes[0] = 0;
        set_checksum(&mut bytes);
        assert_eq!(bad(&bytes), Some(Err(TarError::BadName { offset: 0 })));
        // Bad UTF-8 in the prefix, at the second entry.
        let mut second = file("y", b"");
        second[PREFIX][0] = 0xc3;
        set_checksum(&mut second);
        let mut bytes = file("first", b"");
        bytes.extend(second);
        let results: Vec<_> = Archive::new(&bytes).entries().collect();
        assert_eq!(results.len(), 2);
        assert_eq!(results[1], Err(TarError::BadName { offset: BLOCK_SIZE }));
        // A long name longer than a path may be.
        let long = "l".repeat(PATH_MAX + 1);
        let mut bytes = header("././@LongLink", long.len() + 1, b'L');
        bytes.extend_from_slice(long.as_bytes());
        bytes.resize(2 * BLOCK_SIZE, 0);
        bytes.extend(file("short", b""));
        assert_eq!(bad(&bytes), Some(Err(TarError::BadName { offset: 2 * BLOCK_SIZE })));
        // A long name with no entry after it.
        let mut bytes = header("././@LongLink", 4, b'L');
        bytes.extend_from_slice(b"abc\0");
        bytes.resize(4 * BLOCK_SIZE, 0);
        assert_eq!(bad(&bytes), Some(Err(TarError::Truncated { offset: 2 * BLOCK_SIZE })));
        // The longest name that fits.
        let longest = "m".repeat(PATH_MAX);
        let mut bytes = header("././@LongLink", longest.len() + 1, b'L');
        bytes.extend_from_slice(longest.as_bytes());
        bytes.resize(2 * BLOCK_SIZE, 0);
        bytes.extend(file("short", b"z"));
        assert_eq!(Archive::new(&bytes).find(&longest).unwrap().unwrap().data, b"z");
    }

    #[test]
    fn empty_and_zero_archives() {
        assert_eq!(Archive::new(&[]).entries().next(), None);
        assert_eq!(Archive::new(&[0; 10240]).entries().next(), None);
        assert_eq!(Archive::new(&[0; 100]).entries().next(), Some(Err(TarError::Truncated { offset: 0 })));
        assert_eq!(Archive::new(&[]).find("x"), Ok(None));
    }

    #[test]
    fn error_messages() {
        assert_eq!(TarError::Truncated { offset: 1024 }.to_string(), "archive truncated in the entry at offset 1024");
        assert_eq!(TarError::BadChecksum { offset: 0 }.to_string(), "bad header checksum at offset 0");
    }

    /// Mutates a real archive many times, sometimes fixing the checksums so
    /// the damage reaches the other checks; reading must never panic and
    /// must always end.
    #[test]
    fn mutations_never_panic() {
        let directory = TempDir::new("fuzz");
        let good = make_archive(&directory, "gnu", &["."]);
        let good = &good[..good.len().min(16 * 1024)];
        let mut generator = crate::test_random::XorShift(0x2545_f491_4f6c_dd1d);
        let mut random = move || generator.next() as usize;
        const INTERESTING: &[u8] = b"\0 /.01578xLg5\x80\xff";
        let mut outcomes = [0usize; 5];
        for _ in 0..20_000 {
            let mut bytes = good.to_vec();
            for _ in 0..=random() % 3 {
                let position = random() % bytes.len();
                bytes[position] =
                    if random() % 2 == 0 { INTERESTING[random() % INTERESTING.len()] } else { random() as u8 };
                if random() % 4 != 0 {
                    let block = position / BLOCK_SIZE * BLOCK_SIZE;
                    set_checksum(&mut bytes[block..block + BLOCK_SIZE]);
                }
            }
            if random() % 4 == 0 {
                bytes.truncate(random() % (bytes.len() + 1));
            }
            let archive = Archive::new(&bytes);
            let mut count = 0;
            for entry in archive.entries() {
                count += 1;
                assert!(count <= bytes.len() / BLOCK_SIZE + 1);
                match entry {
                    Ok(entry) => {
                        assert!(!entry.name.is_empty());
                        assert!(entry.kind == EntryKind::File || entry.data.is_empty());
                        outcomes[0] += 1;
                    }
                    Err(TarError::Truncated { .. }) => outcomes[1] += 1,
                    Err(TarError::BadChecksum { .. }) => outcomes[2] += 1,
                    Err(TarError::BadNumber { .. }) => outcomes[3] += 1,
                    Err(TarError::BadName { .. }) => outcomes[4] += 1,
                }
            }
            let _ = archive.find("boot/kernel.elf");
        }
        assert!(outcomes.iter().all(|&count| count > 0), "{outcomes:?}");
    }
}
