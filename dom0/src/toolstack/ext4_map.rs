//! Where a file's bytes lie on the images disk: its block map, read from
//! its inode's extent tree, so that the builder moves a kernel off the
//! disk in runs of contiguous blocks (one disk command for each 128 KiB
//! chunk, straight into the chunk) instead of through `ext4-view`'s reads
//! of one block at a time (its block cache, and two more copies of each
//! block: about 8,000 instructions a 4 KiB block, BENCHMARKS.md).
//!
//! `ext4-view` 1.0 keeps inode numbers and extents to itself, so this reads
//! the few on-disk structures a block map needs, as ext4's disk layout
//! documents them: the superblock, the group descriptors, inodes, extent
//! trees and directory entries. Everything else (listing, configs,
//! checksums, the journal, any file this cannot map) stays with
//! `ext4-view`, which loaded the same disk first and checked its
//! superblock and group descriptors.
//!
//! [`map_file`] gives `None`, and the caller reads the file through
//! `ext4-view`, for what it does not handle: a journal that needs
//! replaying (its blocks may hold newer metadata than their homes),
//! `meta_bg` descriptor placement, files without extents (ext2/3 block
//! maps) or with inline data, and anything out of bounds or not as ext4
//! lays it out (bad magic numbers, directory entries that overrun their
//! block, trees deeper than ext4 allows, extents that overlap or end past
//! the disk). Extent blocks' checksums are not checked: a damaged extent
//! gives wrong bytes from the images disk, never a read past its end.

use alloc::vec;
use alloc::vec::Vec;

use ext4_view::Ext4Read;

use crate::toolstack::image_file::ReadError;

/// Byte offset of the superblock, and of fields in it.
const SUPERBLOCK_OFFSET: u64 = 1024;
const SB_INODES_COUNT: usize = 0x00;
const SB_BLOCKS_COUNT_LO: usize = 0x04;
const SB_FIRST_DATA_BLOCK: usize = 0x14;
const SB_LOG_BLOCK_SIZE: usize = 0x18;
const SB_INODES_PER_GROUP: usize = 0x28;
const SB_MAGIC: usize = 0x38;
const SB_REV_LEVEL: usize = 0x4c;
const SB_INODE_SIZE: usize = 0x58;
const SB_FEATURE_INCOMPAT: usize = 0x60;
const SB_DESC_SIZE: usize = 0xfe;
const SB_BLOCKS_COUNT_HI: usize = 0x150;
const EXT4_MAGIC: u16 = 0xef53;
/// Incompatible features that matter here.
const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_EXTENTS: u32 = 0x40;
const INCOMPAT_64BIT: u32 = 0x80;

/// Group descriptor fields: the inode table's block, low and high half.
const BG_INODE_TABLE_LO: usize = 0x08;
const BG_INODE_TABLE_HI: usize = 0x28;

/// Inode fields, and the bytes of an inode read here (all of them lie in
/// the first 128, which every inode size has).
const I_MODE: usize = 0x00;
const I_SIZE_LO: usize = 0x04;
const I_FLAGS: usize = 0x20;
const I_BLOCK: usize = 0x28;
const I_BLOCK_LENGTH: usize = 60;
const I_SIZE_HIGH: usize = 0x6c;
const INODE_BYTES: usize = 128;
const MODE_TYPE: u16 = 0xf000;
const MODE_DIRECTORY: u16 = 0x4000;
const MODE_REGULAR: u16 = 0x8000;
const EXTENTS_FL: u32 = 0x8_0000;
const INLINE_DATA_FL: u32 = 0x1000_0000;
const ROOT_INODE: u32 = 2;

/// Extent tree nodes: a 12-byte header, then 12-byte entries.
const EXTENT_MAGIC: u16 = 0xf30a;
const EXTENT_ENTRY: usize = 12;
/// The deepest tree ext4 makes.
const MAX_TREE_DEPTH: u16 = 5;
/// An extent longer than this is uninitialized (allocated, reads as zeros).
const MAX_INITIALIZED_LENGTH: u16 = 32_768;
/// Most extents a map holds (a contiguous 35 MB kernel has one or two),
/// and most tree nodes read for one (so a hostile tree costs little).
const MAX_EXTENTS: usize = 16_384;
const MAX_NODES: usize = 1_024;

/// A run of a file's blocks that lie one after another on the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Extent {
    /// The file's first block in the run.
    file_block: u64,
    /// Where that block is on the disk.
    disk_block: u64,
    /// Blocks in the run.
    blocks: u64,
}

/// Where each byte of a regular file is on the disk. Blocks no extent
/// covers (holes, and uninitialized extents) read as zeros.
#[derive(Debug)]
pub struct BlockMap {
    /// By `file_block`, not overlapping.
    extents: Vec<Extent>,
    block_size: u64,
    length: u64,
}

impl BlockMap {
    /// Fills `buffer` with the file's bytes from `offset` on, reading each
    /// run of contiguous blocks with one `reader` call. Reading past the
    /// end is an error.
    pub fn read(&self, reader: &mut dyn Ext4Read, offset: u64, buffer: &mut [u8]) -> Result<(), ReadError> {
        if offset.checked_add(buffer.len() as u64).is_none_or(|end| end > self.length) {
            return Err(ReadError("read past the end of the file"));
        }
        let mut done = 0;
        while done < buffer.len() {
            let position = offset + done as u64;
            let block = position / self.block_size;
            // The first extent that ends after `block`.
            let index = self.extents.partition_point(|extent| extent.file_block + extent.blocks <= block);
            let left = (buffer.len() - done) as u64;
            let part = match self.extents.get(index) {
                Some(extent) if extent.file_block <= block => {
                    let run_end = (extent.file_block + extent.blocks) * self.block_size;
                    let length = left.min(run_end - position) as usize;
                    let disk_byte =
                        (extent.disk_block + block - extent.file_block) * self.block_size + position % self.block_size;
                    reader
                        .read(disk_byte, &mut buffer[done..done + length])
                        .map_err(|_| ReadError("the images disk could not be read"))?;
                    length
                }
                // A hole, up to the next extent or the end.
                next => {
                    let hole_end = next.map_or(u64::MAX, |extent| extent.file_block * self.block_size);
                    let length = left.min(hole_end - position) as usize;
                    buffer[done..done + length].fill(0);
                    length
                }
            };
            done += part;
        }
        Ok(())
    }
}

/// The block map of regular file `path` (below the root, without the
/// leading `/`), whose length `ext4-view` gave as `length`; `None` where
/// the file cannot be mapped here (see the module docs) or is not that
/// long.
pub fn map_file(reader: &mut dyn Ext4Read, path: &str, length: u64) -> Option<BlockMap> {
    let layout = Layout::read(reader)?;
    let mut number = ROOT_INODE;
    for name in path.split('/').filter(|name| !name.is_empty()) {
        let folder = layout.inode(reader, number)?;
        if folder.mode() & MODE_TYPE != MODE_DIRECTORY {
            return None;
        }
        let entries = layout.map(reader, &folder)?;
        number = layout.find_entry(reader, &entries, name)?;
    }
    let file = layout.inode(reader, number)?;
    if file.mode() & MODE_TYPE != MODE_REGULAR || file.size() != length {
        return None;
    }
    layout.map(reader, &file)
}

/// What the superblock says of where things are.
#[derive(Debug)]
struct Layout {
    block_size: u64,
    blocks: u64,
    inodes: u32,
    inodes_per_group: u32,
    inode_size: u64,
    descriptor_size: u64,
    /// Byte offset of the group descriptor table.
    descriptors: u64,
}

/// An extent tree being read: the extents found, and how many more nodes
/// may be read.
struct Walk {
    extents: Vec<Extent>,
    nodes_left: usize,
}

/// An inode's first 128 bytes.
struct Inode([u8; INODE_BYTES]);

impl Inode {
    fn mode(&self) -> u16 {
        u16_at(&self.0, I_MODE)
    }

    fn size(&self) -> u64 {
        u64::from(u32_at(&self.0, I_SIZE_LO)) | u64::from(u32_at(&self.0, I_SIZE_HIGH)) << 32
    }
}

impl Layout {
    fn read(reader: &mut dyn Ext4Read) -> Option<Layout> {
        let mut superblock = [0u8; 1024];
        reader.read(SUPERBLOCK_OFFSET, &mut superblock).ok()?;
        let incompat = u32_at(&superblock, SB_FEATURE_INCOMPAT);
        let log_block_size = u32_at(&superblock, SB_LOG_BLOCK_SIZE);
        if u16_at(&superblock, SB_MAGIC) != EXT4_MAGIC
            || incompat & (INCOMPAT_RECOVER | INCOMPAT_META_BG) != 0
            || incompat & INCOMPAT_EXTENTS == 0
            || log_block_size > 6
        {
            return None;
        }
        let wide = incompat & INCOMPAT_64BIT != 0;
        let block_size = 1024u64 << log_block_size;
        let high_blocks = if wide { u64::from(u32_at(&superblock, SB_BLOCKS_COUNT_HI)) } else { 0 };
        let inode_size = match u32_at(&superblock, SB_REV_LEVEL) {
            0 => 128,
            _ => u64::from(u16_at(&superblock, SB_INODE_SIZE)),
        };
        let descriptor_size = if wide { u64::from(u16_at(&superblock, SB_DESC_SIZE)) } else { 32 };
        let layout = Layout {
            block_size,
            blocks: u64::from(u32_at(&superblock, SB_BLOCKS_COUNT_LO)) | high_blocks << 32,
            inodes: u32_at(&superblock, SB_INODES_COUNT),
            inodes_per_group: u32_at(&superblock, SB_INODES_PER_GROUP),
            inode_size,
            descriptor_size,
            descriptors: (u64::from(u32_at(&superblock, SB_FIRST_DATA_BLOCK)) + 1) * block_size,
        };
        let sane = layout.inodes_per_group != 0
            && (INODE_BYTES as u64..=block_size).contains(&inode_size)
            && inode_size.is_power_of_two()
            && (32..=1024).contains(&descriptor_size)
            && descriptor_size.is_power_of_two();
        sane.then_some(layout)
    }

    /// Inode `number` (from 1).
    fn inode(&self, reader: &mut dyn Ext4Read, number: u32) -> Option<Inode> {
        let at = self.inode_offset(reader, number)?;
        let mut inode = Inode([0; INODE_BYTES]);
        reader.read(at, &mut inode.0).ok()?;
        Some(inode)
    }

    /// Where inode `number` is on the disk, in bytes.
    fn inode_offset(&self, reader: &mut dyn Ext4Read, number: u32) -> Option<u64> {
        if number == 0 || number > self.inodes {
            return None;
        }
        let (group, index) = ((number - 1) / self.inodes_per_group, (number - 1) % self.inodes_per_group);
        let mut descriptor = [0u8; 64];
        let descriptor = &mut descriptor[..self.descriptor_size.min(64) as usize];
        reader.read(self.descriptors + u64::from(group) * self.descriptor_size, descriptor).ok()?;
        let mut table = u64::from(u32_at(descriptor, BG_INODE_TABLE_LO));
        if self.descriptor_size >= 64 {
            table |= u64::from(u32_at(descriptor, BG_INODE_TABLE_HI)) << 32;
        }
        let at = table.checked_mul(self.block_size)? + u64::from(index) * self.inode_size;
        (at + self.inode_size <= self.blocks * self.block_size).then_some(at)
    }

    /// The block map of `inode`, from its extent tree.
    fn map(&self, reader: &mut dyn Ext4Read, inode: &Inode) -> Option<BlockMap> {
        let flags = u32_at(&inode.0, I_FLAGS);
        if flags & EXTENTS_FL == 0 || flags & INLINE_DATA_FL != 0 {
            return None;
        }
        let mut walk = Walk { extents: Vec::new(), nodes_left: MAX_NODES };
        self.node(reader, &inode.0[I_BLOCK..I_BLOCK + I_BLOCK_LENGTH], None, &mut walk)?;
        let mut extents = walk.extents;
        extents.sort_unstable_by_key(|extent: &Extent| extent.file_block);
        let overlap = extents.windows(2).any(|pair| pair[0].file_block + pair[0].blocks > pair[1].file_block);
        let length = inode.size();
        (!overlap).then_some(BlockMap { extents, block_size: self.block_size, length })
    }

    /// Adds the extents below tree node `node` (an inode's `i_block`, or an
    /// index's block), which must be at `depth` if a parent says so.
    fn node(&self, reader: &mut dyn Ext4Read, node: &[u8], depth: Option<u16>, walk: &mut Walk) -> Option<()> {
        let (entries, node_depth) = (u16_at(node, 2) as usize, u16_at(node, 6));
        walk.nodes_left = walk.nodes_left.checked_sub(1)?;
        if u16_at(node, 0) != EXTENT_MAGIC
            || EXTENT_ENTRY * (1 + entries) > node.len()
            || node_depth > MAX_TREE_DEPTH
            || depth.is_some_and(|depth| depth != node_depth)
        {
            return None;
        }
        for entry in node[EXTENT_ENTRY..].chunks_exact(EXTENT_ENTRY).take(entries) {
            if node_depth == 0 {
                let length = u16_at(entry, 4);
                let disk_block = u64::from(u16_at(entry, 6)) << 32 | u64::from(u32_at(entry, 8));
                let blocks =
                    u64::from(if length > MAX_INITIALIZED_LENGTH { length - MAX_INITIALIZED_LENGTH } else { length });
                if blocks == 0 || disk_block.checked_add(blocks)? > self.blocks || walk.extents.len() == MAX_EXTENTS {
                    return None;
                }
                // An uninitialized extent reads as zeros: a hole here.
                if length <= MAX_INITIALIZED_LENGTH {
                    walk.extents.push(Extent { file_block: u64::from(u32_at(entry, 0)), disk_block, blocks });
                }
            } else {
                let child = u64::from(u16_at(entry, 8)) << 32 | u64::from(u32_at(entry, 4));
                if child >= self.blocks {
                    return None;
                }
                let mut block = vec![0u8; self.block_size as usize];
                reader.read(child * self.block_size, &mut block).ok()?;
                self.node(reader, &block, Some(node_depth - 1), walk)?;
            }
        }
        Some(())
    }

    /// The inode number of entry `name` in the folder whose blocks `folder`
    /// maps. Every block is scanned as a list of entries (ext4's hashed
    /// folders keep their index inside entries that name no inode, so a
    /// scan passes over it).
    fn find_entry(&self, reader: &mut dyn Ext4Read, folder: &BlockMap, name: &str) -> Option<u32> {
        let mut block = vec![0u8; self.block_size as usize];
        for offset in (0..folder.length).step_by(self.block_size as usize) {
            let block = &mut block[..(folder.length - offset).min(self.block_size) as usize];
            folder.read(reader, offset, block).ok()?;
            let mut at = 0;
            while at + 8 <= block.len() {
                let (inode, record) = (u32_at(block, at), u16_at(block, at + 4) as usize);
                let name_length = block[at + 6] as usize;
                if record < 8 || at + record > block.len() || 8 + name_length > record {
                    return None;
                }
                if inode != 0 && block[at + 8..at + 8 + name_length] == *name.as_bytes() {
                    return Some(inode);
                }
                at += record;
            }
        }
        None
    }
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::toolstack::images::tests::{make_image, scratch};
    use std::process::Command;

    /// A pattern that differs in every block.
    fn pattern(length: usize, seed: u32) -> Vec<u8> {
        (0..length as u32).map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 24) as u8).collect()
    }

    /// The layout, and the inode number of `name` in the root folder.
    fn in_root(reader: &mut Vec<u8>, name: &str) -> (Layout, u32) {
        let layout = Layout::read(reader).unwrap();
        let root = layout.inode(reader, ROOT_INODE).unwrap();
        let entries = layout.map(reader, &root).unwrap();
        let number = layout.find_entry(reader, &entries, name).unwrap();
        (layout, number)
    }

    /// The file's bytes read by its block map, or `None` if unmapped.
    fn read_mapped(image: &[u8], path: &str, length: u64) -> Option<Vec<u8>> {
        let mut reader = image.to_vec();
        let map = map_file(&mut reader, path, length)?;
        let mut bytes = vec![0u8; length as usize];
        map.read(&mut reader, 0, &mut bytes).unwrap();
        Some(bytes)
    }

    #[test]
    fn maps_the_files_of_an_image_made_by_mkfs_ext4() {
        let folder = scratch("map");
        let files = folder.join("files");
        std::fs::create_dir_all(files.join("a/b/c")).unwrap();
        std::fs::create_dir_all(files.join("many")).unwrap();
        let big = pattern(3_000_001, 1);
        std::fs::write(files.join("vmlinux"), &big).unwrap();
        std::fs::write(files.join("a/b/c/deep.cfg"), b"deep").unwrap();
        std::fs::write(files.join("empty"), b"").unwrap();
        // A sparse file: a hole, data, a hole to the end.
        let sparse = std::fs::File::create(files.join("sparse")).unwrap();
        std::os::unix::fs::FileExt::write_at(&sparse, &pattern(10_000, 2), 1 << 20).unwrap();
        sparse.set_len(3 << 20).unwrap();
        drop(sparse);
        // Enough entries for a hashed (htree) folder.
        for index in 0..400 {
            std::fs::write(files.join(format!("many/file-with-a-long-name-{index:04}")), format!("{index}")).unwrap();
        }
        let Some(image) = make_image(&files, &folder.join("images.img"), 32) else { return };
        assert_eq!(read_mapped(&image, "vmlinux", big.len() as u64).unwrap(), big);
        assert_eq!(read_mapped(&image, "a/b/c/deep.cfg", 4).unwrap(), b"deep");
        assert_eq!(read_mapped(&image, "empty", 0).unwrap(), b"");
        let mut expected = vec![0u8; 3 << 20];
        expected[1 << 20..(1 << 20) + 10_000].copy_from_slice(&pattern(10_000, 2));
        assert!(read_mapped(&image, "sparse", 3 << 20).unwrap() == expected);
        for index in [0, 123, 399] {
            let name = format!("many/file-with-a-long-name-{index:04}");
            let text = format!("{index}");
            assert_eq!(read_mapped(&image, &name, text.len() as u64).unwrap(), text.as_bytes(), "{name}");
        }
        // Ranges: unaligned, across blocks, from the middle of a hole.
        let mut reader = image.clone();
        let map = map_file(&mut reader, "vmlinux", big.len() as u64).unwrap();
        for (offset, length) in [(1, 4095), (4095, 2), (65_536, 65_536), (2_999_000, 1001)] {
            let mut bytes = vec![0u8; length];
            map.read(&mut reader, offset as u64, &mut bytes).unwrap();
            assert!(bytes == big[offset..offset + length], "{offset}+{length}");
        }
        assert!(map.read(&mut reader, 3_000_000, &mut [0u8; 2]).is_err(), "past the end");
        // What it does not map: missing names, folders, the wrong length.
        let mut reader = image.clone();
        assert!(map_file(&mut reader, "nothing", 0).is_none());
        assert!(map_file(&mut reader, "a/b", 4096).is_none());
        assert!(map_file(&mut reader, "a/b/c/deep.cfg/x", 4).is_none());
        assert!(map_file(&mut reader, "vmlinux", 3_000_000).is_none());
        let _ = std::fs::remove_dir_all(&folder);
    }

    /// A file in so many pieces that its extents need a tree below the
    /// inode: made by freeing every other small file with debugfs and
    /// writing a large one into the gaps.
    #[test]
    fn maps_a_file_whose_extents_need_a_tree() {
        let folder = scratch("tree");
        let files = folder.join("files");
        std::fs::create_dir_all(&files).unwrap();
        for index in 0..64 {
            std::fs::write(files.join(format!("small-{index:02}")), pattern(8192, index)).unwrap();
        }
        if make_image(&files, &folder.join("images.img"), 4).is_none() {
            return;
        }
        let path = folder.join("images.img");
        let big = pattern(200_000, 7);
        std::fs::write(folder.join("big"), &big).unwrap();
        let mut script = String::new();
        for index in (0..64).step_by(2) {
            script.push_str(&format!("rm small-{index:02}\n"));
        }
        // ext4 puts a new file's blocks into the first gaps it finds.
        script.push_str(&format!("write {} big\n", folder.join("big").display()));
        std::fs::write(folder.join("script"), script).unwrap();
        let status = Command::new("debugfs")
            .args(["-w", "-f"])
            .arg(folder.join("script"))
            .arg(&path)
            .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin")
            .output()
            .expect("debugfs comes with mkfs.ext4 (e2fsprogs)");
        assert!(status.status.success(), "{status:?}");
        let image = std::fs::read(&path).unwrap();
        let mut reader = image.clone();
        let (layout, number) = in_root(&mut reader, "big");
        let inode = layout.inode(&mut reader, number).unwrap();
        let depth = u16_at(&inode.0, I_BLOCK + 6);
        let map = layout.map(&mut reader, &inode).unwrap();
        assert!(map.extents.len() > 4 && depth > 0, "{} extents, depth {depth}: not fragmented", map.extents.len());
        assert!(read_mapped(&image, "big", big.len() as u64).unwrap() == big);
        let _ = std::fs::remove_dir_all(&folder);
    }

    #[test]
    fn refuses_damaged_or_foreign_metadata() {
        let folder = scratch("damaged");
        let files = folder.join("files");
        std::fs::create_dir_all(&files).unwrap();
        let data = pattern(100_000, 3);
        std::fs::write(files.join("kernel"), &data).unwrap();
        let Some(image) = make_image(&files, &folder.join("images.img"), 8) else { return };
        let mut reader = image.clone();
        let (layout, number) = in_root(&mut reader, "kernel");
        let root = layout.inode(&mut reader, ROOT_INODE).unwrap();
        let inode = layout.inode_offset(&mut reader, number).unwrap() as usize;
        let extent = inode + I_BLOCK + EXTENT_ENTRY; // the first leaf entry
        let damaged = |change: &dyn Fn(&mut Vec<u8>)| {
            let mut image = image.clone();
            change(&mut image);
            read_mapped(&image, "kernel", data.len() as u64)
        };
        assert_eq!(damaged(&|_| {}).unwrap(), data);
        // The extent header's magic; a tree deeper than ext4 makes.
        assert!(damaged(&|image| image[inode + I_BLOCK] ^= 1).is_none());
        assert!(damaged(&|image| image[inode + I_BLOCK + 6] = 9).is_none());
        // More entries than the inode holds.
        assert!(damaged(&|image| image[inode + I_BLOCK + 2] = 5).is_none());
        // An extent past the disk's end; one of no blocks.
        assert!(damaged(&|image| image[extent + 6] = 1).is_none());
        assert!(damaged(&|image| image[extent + 4..extent + 6].fill(0)).is_none());
        // Not extents (an ext2/3 block map); inline data.
        assert!(damaged(&|image| image[inode + I_FLAGS + 2] &= !0x08).is_none());
        assert!(damaged(&|image| image[inode + I_FLAGS + 3] |= 0x10).is_none());
        // A journal to replay first; an entry that overruns its block.
        let incompat = SUPERBLOCK_OFFSET as usize + SB_FEATURE_INCOMPAT;
        assert!(damaged(&|image| image[incompat] |= INCOMPAT_RECOVER as u8).is_none());
        let first_entries = layout.map(&mut reader, &root).unwrap().extents[0].disk_block as usize;
        let record = first_entries * layout.block_size as usize + 4;
        assert!(damaged(&|image| image[record..record + 2].copy_from_slice(&0xfff0u16.to_le_bytes())).is_none());
        let _ = std::fs::remove_dir_all(&folder);
    }
}
