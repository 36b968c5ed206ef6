//! The arena: one byte array holding every node's name and value and
//! every watch's path and token as extents, compacted when its free
//! tail runs out.

use abi::store::{PATH_MAX, VALUE_MAX};
use abi::xen::errno::Errno;

use crate::store::Store;

/// Bytes of an arena extent's header: owning slot (u16), length (u16).
pub(super) const EXTENT_HEADER: usize = 4;
/// Slot number of a freed extent.
pub(super) const FREE_SLOT: u16 = u16::MAX;

const _: () = assert!(PATH_MAX + VALUE_MAX <= u16::MAX as usize);

impl<const NODES: usize, const ARENA: usize, const WATCHES: usize, const DOMAINS: usize>
    Store<NODES, ARENA, WATCHES, DOMAINS>
{
    /// Makes room for `bytes` at the arena's end, compacting if needed.
    pub(super) fn reserve(&mut self, bytes: usize) -> Result<(), Errno> {
        if self.arena_live + bytes > ARENA {
            return Err(Errno::Enospc);
        }
        if self.arena_end + bytes > ARENA {
            self.compact();
        }
        Ok(())
    }

    /// Writes an extent for `slot` holding `first` then `second` at the end
    /// of the arena (room reserved); returns its offset.
    pub(super) fn place(&mut self, slot: u16, first: &[u8], second: &[u8]) -> u32 {
        let offset = self.arena_end;
        let length = first.len() + second.len();
        self.arena[offset..offset + 2].copy_from_slice(&slot.to_le_bytes());
        self.arena[offset + 2..offset + 4].copy_from_slice(&(length as u16).to_le_bytes());
        let data = offset + EXTENT_HEADER;
        self.arena[data..data + first.len()].copy_from_slice(first);
        self.arena[data + first.len()..data + length].copy_from_slice(second);
        self.arena_end += EXTENT_HEADER + length;
        self.arena_live += EXTENT_HEADER + length;
        offset as u32
    }

    fn extent_length(&self, offset: usize) -> usize {
        u16::from_le_bytes([self.arena[offset + 2], self.arena[offset + 3]]) as usize
    }

    pub(super) fn release(&mut self, offset: u32) {
        let offset = offset as usize;
        let size = EXTENT_HEADER + self.extent_length(offset);
        self.arena[offset..offset + 2].copy_from_slice(&FREE_SLOT.to_le_bytes());
        self.arena_live -= size;
        if offset + size == self.arena_end {
            self.arena_end = offset;
        }
    }

    /// Slides every live extent down over the freed ones, in order.
    fn compact(&mut self) {
        let (mut read, mut write) = (0, 0);
        while read < self.arena_end {
            let slot = u16::from_le_bytes([self.arena[read], self.arena[read + 1]]);
            let size = EXTENT_HEADER + self.extent_length(read);
            if slot != FREE_SLOT {
                self.arena.copy_within(read..read + size, write);
                let slot = slot as usize;
                if slot < NODES {
                    self.nodes[slot].extent = write as u32;
                } else {
                    self.watches[slot - NODES].extent = write as u32;
                }
                write += size;
            }
            read += size;
        }
        self.arena_end = write;
    }

    pub(super) fn name(&self, node: u16) -> &[u8] {
        let node = &self.nodes[node as usize];
        if !node.has_extent() {
            return &[];
        }
        let start = node.extent as usize + EXTENT_HEADER;
        &self.arena[start..start + node.name_len as usize]
    }

    pub(super) fn value(&self, node: u16) -> &[u8] {
        let node = &self.nodes[node as usize];
        if !node.has_extent() {
            return &[];
        }
        let start = node.extent as usize + EXTENT_HEADER + node.name_len as usize;
        &self.arena[start..start + node.value_len as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::*;
    use abi::DOM0;

    #[test]
    fn a_full_store_refuses_with_enospc_and_recovers() {
        let mut store = small();
        let mut written = 0;
        let error = loop {
            match store.write(DOM0, &format!("/k{written}"), "0123456789") {
                Ok(()) => written += 1,
                Err(error) => break error,
            }
        };
        assert_eq!(error, Errno::Enospc);
        assert_eq!(written, 127, "the node table is the limit here");
        check_consistent(&*store);
        store.remove(DOM0, "/k5").unwrap();
        store.write(DOM0, "/k5", "again").unwrap();
        // Now the arena: fewer, bigger values.
        let mut store = small();
        let value = "v".repeat(2000);
        let mut written = 0;
        while store.write(DOM0, &format!("/big{written}"), &value).is_ok() {
            written += 1;
        }
        assert_eq!(written, 8192 / 2010);
        assert_eq!(store.write(DOM0, "/one-more", &value), Err(Errno::Enospc));
        store.remove(DOM0, "/big0").unwrap();
        store.write(DOM0, "/one-more", &value).unwrap();
        check_consistent(&*store);
    }
}
