//! The images disk, and where `create` finds a file.
//!
//! Guest kernels and initramfs are too big for the boot ramdisk, so an
//! operator keeps them, with guest configs, on a disk: an ext4 filesystem
//! filled with standard tools (`mkfs.ext4 -d <folder> <image>`), read here
//! read-only with the `ext4-view` crate (superblock, group descriptor and
//! extent checksums checked). dom0 takes the first of its ATA disks whose
//! superblock says ext4; guest disk regions may not lie on it.
//!
//! Names are paths below the filesystem's root, without the leading `/`
//! (`linux.cfg`, `debian/vmlinux`). Where a name is looked for:
//! - `create NAME`: a NAME ending in `.cfg` is looked for as it is; any
//!   other as `NAME.cfg` first, then `NAME` (so `create linux` finds
//!   `linux.cfg` even beside a kernel file called `linux`). Each name in
//!   the ramdisk first, then on the images disk.
//! - A config's `kernel` and `ramdisk`: in the config's own store first
//!   (where the operator put them together), then in the other.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt::{self, Write};

use arrayvec::{ArrayString, ArrayVec};
use ext4_view::{Ext4, Ext4Error};

pub use ext4_view::Ext4Read;

use crate::toolstack::ext4_map::{self, BlockMap};
use crate::toolstack::image_file::{ImageFile, ReadError};

/// Byte offset of an ext2/3/4 superblock on its disk.
pub const SUPERBLOCK_OFFSET: u64 = 1024;
/// Offset of `s_magic` in the superblock, and its value.
const MAGIC_OFFSET: usize = 0x38;
const MAGIC: u16 = 0xef53;
/// Most files `ls` lists and lookups see on the disk, and the deepest folder.
pub const MAX_FILES: usize = 1024;
const MAX_DEPTH: usize = 8;

/// Whether the first 512 bytes of a superblock (the disk's bytes from
/// [`SUPERBLOCK_OFFSET`]) carry the ext2/3/4 magic number: the disk is
/// meant to be an images disk, and a filesystem that then does not load
/// is reported as broken.
pub fn has_ext4_magic(superblock: &[u8]) -> bool {
    superblock.get(MAGIC_OFFSET..MAGIC_OFFSET + 2) == Some(&MAGIC.to_le_bytes()[..])
}

/// A file on the images disk, for `ls`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskEntry {
    /// Its path below the root, without the leading `/`.
    pub path: String,
    /// Its size in bytes.
    pub length: u64,
}

/// Why the images disk's filesystem was refused, in ext4-view's words.
#[derive(Debug)]
pub struct LoadError(Ext4Error);

impl fmt::Display for LoadError {
    fn fmt(&self, out: &mut fmt::Formatter) -> fmt::Result {
        write!(out, "{}", self.0)
    }
}

/// The images disk's filesystem, and the regular files on it.
pub struct ImagesDisk {
    filesystem: Ext4,
    /// A second reader of the disk, for files' blocks read by their block
    /// maps (`ext4-view` owns the first).
    direct: RefCell<Box<dyn Ext4Read>>,
    files: Vec<DiskEntry>,
    /// More than [`MAX_FILES`] files, or folders deeper than eight: some
    /// were left out.
    truncated: bool,
}

impl fmt::Debug for ImagesDisk {
    fn fmt(&self, out: &mut fmt::Formatter) -> fmt::Result {
        out.debug_struct("ImagesDisk").field("files", &self.files.len()).finish_non_exhaustive()
    }
}

impl ImagesDisk {
    /// Loads the filesystem that `reader` reads (its superblock, group
    /// descriptors and journal) and lists its regular files. A clone of
    /// `reader` reads files by their block maps.
    pub fn load<R: Ext4Read + Clone + 'static>(reader: R) -> Result<Self, LoadError> {
        let direct = RefCell::new(Box::new(reader.clone()) as Box<dyn Ext4Read>);
        let filesystem = Ext4::load(Box::new(reader)).map_err(LoadError)?;
        let mut disk = Self { filesystem, direct, files: Vec::new(), truncated: false };
        disk.walk(String::new(), 0).map_err(LoadError)?;
        disk.files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(disk)
    }

    /// Adds the regular files below folder `folder` (a path without the
    /// leading `/`; empty for the root), depth first.
    fn walk(&mut self, folder: String, depth: usize) -> Result<(), Ext4Error> {
        if depth > MAX_DEPTH {
            self.truncated = true;
            return Ok(());
        }
        let mut folders = Vec::new();
        let mut absolute = String::from("/");
        absolute.push_str(&folder);
        for entry in self.filesystem.read_dir(absolute.as_str())? {
            let entry = entry?;
            let Ok(name) = entry.file_name().as_str() else { continue };
            if name == "." || name == ".." || (depth == 0 && name == "lost+found") {
                continue;
            }
            let mut path = folder.clone();
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(name);
            let kind = entry.file_type()?;
            if kind.is_dir() {
                folders.push(path);
            } else if kind.is_regular_file() {
                if self.files.len() == MAX_FILES {
                    self.truncated = true;
                    return Ok(());
                }
                let length = entry.metadata()?.len();
                self.files.push(DiskEntry { path, length });
            }
        }
        for path in folders {
            self.walk(path, depth + 1)?;
        }
        Ok(())
    }

    /// The regular files, by path.
    pub fn files(&self) -> &[DiskEntry] {
        &self.files
    }

    /// Whether some files were left out of [`files`](Self::files).
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// Whether a regular file `name` is on the disk.
    pub fn contains(&self, name: &str) -> bool {
        self.files.binary_search_by(|entry| entry.path.as_str().cmp(name)).is_ok()
    }

    /// Opens regular file `name` for reading ranges of it: by its block
    /// map where [`ext4_map`] can read one, else through `ext4-view`. (The
    /// file borrows the disk: it shares the filesystem's unsynchronized
    /// reference count, so it must not outlive or leave its owner.)
    pub fn open(&self, name: &str) -> Result<DiskFile<'_>, ReadError> {
        self.open_as(name, true)
    }

    /// Opens `name`, by its block map if `mapped` and there is one.
    fn open_as(&self, name: &str, mapped: bool) -> Result<DiskFile<'_>, ReadError> {
        if !self.contains(name) {
            return Err(ReadError("no such file on the images disk"));
        }
        let mut absolute = String::from("/");
        absolute.push_str(name);
        let file = self.filesystem.open(absolute.as_str()).map_err(read_error)?;
        let length = file.metadata().len();
        let map = mapped.then(|| ext4_map::map_file(&mut **self.direct.borrow_mut(), name, length)).flatten();
        let source = match map {
            Some(map) => Source::Mapped(map),
            None => Source::Ext4View(Box::new(RefCell::new(file))),
        };
        Ok(DiskFile { source, length, disk: self })
    }

    /// The whole of file `name`, for a config (at most `limit` bytes).
    pub fn read_small(&self, name: &str, limit: u64) -> Result<Vec<u8>, ReadError> {
        read_small(&self.open(name)?, limit)
    }
}

/// The whole of `file`, for a config (at most `limit` bytes).
pub fn read_small(file: &dyn ImageFile, limit: u64) -> Result<Vec<u8>, ReadError> {
    if file.length() > limit {
        return Err(ReadError("the file is too large for a config"));
    }
    let mut bytes = alloc::vec![0u8; file.length() as usize];
    file.read_at(0, &mut bytes)?;
    Ok(bytes)
}

/// ext4-view's error, as a fixed reason.
fn read_error(error: Ext4Error) -> ReadError {
    ReadError(match error {
        Ext4Error::Io(_) => "the images disk could not be read",
        Ext4Error::Corrupt(_) => "the images disk's filesystem is corrupt",
        Ext4Error::NotFound => "no such file on the images disk",
        Ext4Error::IsADirectory => "a folder, not a file",
        Ext4Error::Incompatible(_) => "the file uses an ext4 feature dom0 cannot read",
        _ => "the file cannot be read",
    })
}

/// An open file on the images disk.
pub struct DiskFile<'a> {
    source: Source,
    length: u64,
    disk: &'a ImagesDisk,
}

/// How a [`DiskFile`]'s bytes are read.
enum Source {
    /// By its block map, in runs of contiguous blocks.
    Mapped(BlockMap),
    /// Through ext4-view's file and its position: reading on from where
    /// the last read ended is cheap; a seek walks the file's blocks from
    /// the start.
    Ext4View(Box<RefCell<ext4_view::File>>),
}

impl DiskFile<'_> {
    /// Whether the file is read by its block map (else through ext4-view).
    pub fn is_mapped(&self) -> bool {
        matches!(self.source, Source::Mapped(_))
    }
}

impl ImageFile for DiskFile<'_> {
    fn length(&self) -> u64 {
        self.length
    }

    fn read_at(&self, offset: u64, buffer: &mut [u8]) -> Result<(), ReadError> {
        if offset.checked_add(buffer.len() as u64).is_none_or(|end| end > self.length) {
            return Err(ReadError("read past the end of the file"));
        }
        let file = match &self.source {
            Source::Mapped(map) => return map.read(&mut **self.disk.direct.borrow_mut(), offset, buffer),
            Source::Ext4View(file) => file,
        };
        let mut file = file.borrow_mut();
        if file.position() != offset {
            file.seek_to(offset).map_err(read_error)?;
        }
        let mut done = 0;
        while done < buffer.len() {
            match file.read_bytes(&mut buffer[done..]).map_err(read_error)? {
                0 => return Err(ReadError("the file ended early")),
                count => done += count,
            }
        }
        Ok(())
    }
}

/// Which store a file is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    /// The boot ramdisk.
    Ramdisk,
    /// The images disk.
    Disk,
}

impl Store {
    /// The other store.
    pub fn other(self) -> Store {
        match self {
            Store::Ramdisk => Store::Disk,
            Store::Disk => Store::Ramdisk,
        }
    }
}

/// Longest name looked up (a ramdisk path, or a disk path with `.cfg`).
pub const NAME_MAX: usize = 300;

/// The names `create NAME` looks for, in order (see the module docs).
pub fn config_names(name: &str) -> ArrayVec<ArrayString<NAME_MAX>, 2> {
    let mut names = ArrayVec::new();
    let mut push = |text: &str| {
        if let Ok(text) = ArrayString::from(text) {
            names.push(text);
        }
    };
    if name.ends_with(".cfg") {
        push(name);
    } else {
        let mut with_suffix: ArrayString<NAME_MAX> = ArrayString::new();
        if write!(with_suffix, "{name}.cfg").is_ok() {
            push(&with_suffix);
        }
        push(name);
    }
    names
}

/// The first of `names` that `find` finds in one of `stores` (each name
/// in every store before the next name), with its store and what `find`
/// gave for it: the file itself, so that nothing is looked up twice.
pub fn look_up<'n, N: AsRef<str>, T>(
    names: &'n [N],
    stores: &[Store],
    find: impl Fn(Store, &str) -> Option<T>,
) -> Option<(Store, &'n str, T)> {
    names
        .iter()
        .map(AsRef::as_ref)
        .find_map(|name| stores.iter().find_map(|&store| find(store, name).map(|found| (store, name, found))))
}

/// The error when none of `names` was found: which names, and where it
/// looked (`disk`: the images disk's name, if there is one), e.g. "no
/// file 'x.cfg' or 'x' in the ramdisk or on the images disk ata1-slave
/// (see 'ls')".
pub fn not_found<N: AsRef<str>>(names: &[N], disk: Option<&str>) -> ArrayString<{ 2 * NAME_MAX + 100 }> {
    let mut message = ArrayString::new();
    let _ = write!(message, "no file");
    for (index, name) in names.iter().enumerate() {
        let separator = if index == 0 { " " } else { " or " };
        let _ = write!(message, "{separator}'{}'", name.as_ref());
    }
    let _ = write!(message, " in the ramdisk");
    if let Some(disk) = disk {
        let _ = write!(message, " or on the images disk {disk}");
    }
    let _ = write!(message, " (see 'ls')");
    message
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    #[test]
    fn create_looks_for_name_cfg_then_name_in_the_ramdisk_then_on_the_disk() {
        let names = |name: &str| config_names(name).iter().map(|name| name.to_string()).collect::<Vec<_>>();
        assert_eq!(names("linux"), ["linux.cfg", "linux"]);
        assert_eq!(names("linux.cfg"), ["linux.cfg"]);
        assert_eq!(names("guests/netserve"), ["guests/netserve.cfg", "guests/netserve"]);
        let ramdisk = ["counter.cfg", "counter.elf", "linux"];
        let disk = ["linux.cfg", "vmlinux", "counter.cfg", "only-on-disk"];
        // What a store gives for a name: here its place in the store's list.
        let find = |store: Store, name: &str| match store {
            Store::Ramdisk => ramdisk.iter().position(|&file| file == name),
            Store::Disk => disk.iter().position(|&file| file == name),
        };
        let both = [Store::Ramdisk, Store::Disk];
        let config =
            |name: &str| look_up(&config_names(name), &both, find).map(|(store, found, _)| (store, found.to_owned()));
        assert_eq!(look_up(&["vmlinux"], &both, find), Some((Store::Disk, "vmlinux", 1)), "what find gave");
        // The config before a kernel file of the same name; the ramdisk first.
        assert_eq!(config("linux"), Some((Store::Disk, "linux.cfg".into())));
        assert_eq!(config("linux.cfg"), Some((Store::Disk, "linux.cfg".into())));
        assert_eq!(config("counter"), Some((Store::Ramdisk, "counter.cfg".into())));
        assert_eq!(config("only-on-disk"), Some((Store::Disk, "only-on-disk".into())));
        assert_eq!(config("missing"), None);
        // A kernel: the config's store first, then the other.
        let kernel = |from: Store, name: &str| look_up(&[name], &[from, from.other()], find).map(|(store, ..)| store);
        assert_eq!(kernel(Store::Disk, "counter.cfg"), Some(Store::Disk));
        assert_eq!(kernel(Store::Ramdisk, "counter.cfg"), Some(Store::Ramdisk));
        assert_eq!(kernel(Store::Disk, "counter.elf"), Some(Store::Ramdisk));
        assert_eq!(kernel(Store::Ramdisk, "vmlinux"), Some(Store::Disk));
        assert_eq!(kernel(Store::Ramdisk, "nothing"), None);
    }

    #[test]
    fn a_missing_name_says_where_it_was_looked_for() {
        // Without an images disk, the words the system tests know.
        assert_eq!(not_found(&["missing.elf"], None).as_str(), "no file 'missing.elf' in the ramdisk (see 'ls')");
        assert_eq!(
            not_found(&config_names("x"), Some("ata1-slave")).as_str(),
            "no file 'x.cfg' or 'x' in the ramdisk or on the images disk ata1-slave (see 'ls')"
        );
    }

    /// An ext4 image made by `mkfs.ext4 -d` from `folder`, or `None` (said
    /// loudly) where e2fsprogs is not installed.
    pub(crate) fn make_image(folder: &Path, image: &Path, megabytes: u32) -> Option<Vec<u8>> {
        // An existing file: mkfs.ext4 then says nothing of making one.
        std::fs::File::create(image).unwrap();
        let made = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(folder)
            .arg(image)
            .arg(format!("{megabytes}M"))
            .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin")
            .status();
        match made {
            Ok(status) if status.success() => Some(std::fs::read(image).unwrap()),
            Ok(status) => panic!("mkfs.ext4 -d {} failed: {status}", folder.display()),
            Err(error) => {
                // Straight to stderr: the test harness captures `eprintln!`
                // of a passing test, and this must be seen.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "\n*** SKIPPED: mkfs.ext4 is not installed ({error}); install e2fsprogs to test the ext4 reader ***\n"
                );
                None
            }
        }
    }

    pub(crate) fn scratch(name: &str) -> PathBuf {
        let folder = std::env::temp_dir().join(format!("mica-images-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&folder);
        std::fs::create_dir_all(&folder).unwrap();
        folder
    }

    #[test]
    fn reads_an_image_made_by_mkfs_ext4() {
        let folder = scratch("read");
        let files = folder.join("files");
        std::fs::create_dir_all(files.join("debian/deep")).unwrap();
        std::fs::write(files.join("linux.cfg"), "name = \"linux\"\n").unwrap();
        // A large file over several extents' worth of blocks, with a pattern.
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        std::fs::write(files.join("debian/vmlinux"), &big).unwrap();
        std::fs::write(files.join("debian/deep/empty"), b"").unwrap();
        let Some(image) = make_image(&files, &folder.join("images.img"), 16) else { return };
        assert!(has_ext4_magic(&image[SUPERBLOCK_OFFSET as usize..]));
        let disk = ImagesDisk::load(image.clone()).unwrap();
        let listed: Vec<(&str, u64)> = disk.files().iter().map(|entry| (entry.path.as_str(), entry.length)).collect();
        assert_eq!(listed, [("debian/deep/empty", 0), ("debian/vmlinux", 3_000_000), ("linux.cfg", 15)]);
        assert!(!disk.truncated());
        assert_eq!(disk.read_small("linux.cfg", 4096).unwrap(), b"name = \"linux\"\n");
        assert!(disk.read_small("debian/vmlinux", 4096).is_err(), "too large for a config");
        assert!(disk.open("debian").is_err() && disk.open("nothing").is_err());
        // Ranges: in order, backwards, unaligned, across blocks, to the end.
        // Both ways of reading a file: by its block map, through ext4-view.
        for mapped in [true, false] {
            let file = disk.open_as("debian/vmlinux", mapped).unwrap();
            assert_eq!(file.length(), 3_000_000);
            assert_eq!(file.is_mapped(), mapped);
            for (offset, length) in
                [(0, 100), (100, 70_000), (2_999_000, 1000), (4095, 2), (1_234_567, 300_001), (0, 3_000_000)]
            {
                let mut buffer = vec![0u8; length];
                file.read_at(offset as u64, &mut buffer).unwrap();
                assert!(buffer == big[offset..offset + length], "range {offset}+{length}, mapped {mapped}");
            }
            assert!(file.read_at(2_999_999, &mut [0u8; 2]).is_err(), "past the end");
        }
        let _ = std::fs::remove_dir_all(&folder);
    }

    #[test]
    fn a_corrupt_or_missing_filesystem_is_refused() {
        let folder = scratch("corrupt");
        let files = folder.join("files");
        std::fs::create_dir_all(&files).unwrap();
        std::fs::write(files.join("a.cfg"), "x").unwrap();
        let Some(image) = make_image(&files, &folder.join("images.img"), 8) else { return };
        // No magic: not an images disk at all.
        assert!(!has_ext4_magic(&[0u8; 512]));
        // The magic, but a damaged superblock: its label changed behind
        // its checksum (mkfs.ext4 turns metadata checksums on).
        let mut damaged = image.clone();
        damaged[SUPERBLOCK_OFFSET as usize + 0x78] ^= 0x20;
        assert!(has_ext4_magic(&damaged[SUPERBLOCK_OFFSET as usize..]));
        let error = ImagesDisk::load(damaged).unwrap_err();
        assert!(error.to_string().contains("checksum"), "{error}");
        // Cut short: reads past the end fail.
        assert!(ImagesDisk::load(image[..4096].to_vec()).is_err());
        let _ = std::fs::remove_dir_all(&folder);
    }
}
