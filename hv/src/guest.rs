//! Rules for what a domain hands hv: guest-physical buffers passed to
//! hypercalls and versioned-by-size structures.
//!
//! All of it is pure arithmetic so that hostile values can be tested on the host.

use abi::Error;

/// One piece of a guest buffer that lies within a single 4 KiB page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Guest-physical address of the piece.
    pub guest_physical: u64,
    /// Offset of the piece within the whole buffer.
    pub offset: usize,
    /// Length of the piece (never crosses a page boundary).
    pub length: usize,
}

/// Splits a guest buffer into page-bounded chunks.
#[derive(Clone, Debug)]
pub struct PageChunks {
    next: u64,
    offset: usize,
    remaining: u64,
}

/// Validates a guest buffer `[guest_physical, guest_physical + length)`:
/// the length must be at most `max_length` and the range must not wrap.
/// Whether the pages are the caller's is checked when each chunk is
/// translated. A zero length gives no chunks.
pub fn page_chunks(guest_physical: u64, length: u64, max_length: u64) -> Result<PageChunks, Error> {
    if length > max_length {
        return Err(Error::InvalidArgument);
    }
    if guest_physical.checked_add(length).is_none() {
        return Err(Error::BadAddress);
    }
    Ok(PageChunks { next: guest_physical, offset: 0, remaining: length })
}

impl Iterator for PageChunks {
    type Item = Chunk;

    fn next(&mut self) -> Option<Chunk> {
        if self.remaining == 0 {
            return None;
        }
        let page_left = abi::PAGE_SIZE - (self.next % abi::PAGE_SIZE);
        let length = page_left.min(self.remaining);
        let chunk = Chunk { guest_physical: self.next, offset: self.offset, length: length as usize };
        self.next += length;
        self.offset += length as usize;
        self.remaining -= length;
        Some(chunk)
    }
}

/// How many bytes of a size-versioned structure to write back: the caller
/// allocated `requested` bytes, the oldest layout is `minimum` bytes, and
/// the current one `full` bytes.
pub fn versioned_size(requested: u64, minimum: u64, full: usize) -> Result<usize, Error> {
    if requested < minimum {
        return Err(Error::BufferTooSmall);
    }
    Ok(requested.min(full as u64) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_split_at_page_boundaries() {
        let chunks: Vec<_> = page_chunks(0x1ff0, 0x1020, 0x10000).unwrap().collect();
        assert_eq!(
            chunks,
            vec![
                Chunk { guest_physical: 0x1ff0, offset: 0, length: 0x10 },
                Chunk { guest_physical: 0x2000, offset: 0x10, length: 0x1000 },
                Chunk { guest_physical: 0x3000, offset: 0x1010, length: 0x10 },
            ]
        );
        assert_eq!(chunks.iter().map(|c| c.length).sum::<usize>(), 0x1020);
    }

    #[test]
    fn hostile_buffers_are_refused() {
        assert_eq!(page_chunks(u64::MAX - 4, 8, 100).err(), Some(Error::BadAddress));
        assert_eq!(page_chunks(0, 4097, 4096).err(), Some(Error::InvalidArgument));
        assert_eq!(page_chunks(0, u64::MAX, u64::MAX).err(), None);
        assert_eq!(page_chunks(1, u64::MAX, u64::MAX).err(), Some(Error::BadAddress));
        assert_eq!(page_chunks(0x5000, 0, 10).unwrap().count(), 0);
    }

    #[test]
    fn chunks_of_random_buffers_cover_them_exactly() {
        let mut random = crate::test_random::XorShift(0x1234_5678_9abc_def0);
        for _ in 0..10_000 {
            let seed = random.next();
            let address = seed % (1 << 40);
            let length = (seed >> 40) % 20_000;
            let mut expected = address;
            let mut total = 0;
            for chunk in page_chunks(address, length, 1 << 20).unwrap() {
                assert_eq!(chunk.guest_physical, expected);
                assert_eq!(chunk.offset as u64, total);
                assert!(chunk.length > 0);
                assert_eq!(chunk.guest_physical / 4096, (chunk.guest_physical + chunk.length as u64 - 1) / 4096);
                expected += chunk.length as u64;
                total += chunk.length as u64;
            }
            assert_eq!(total, length);
        }
    }

    #[test]
    fn versioned_sizes() {
        assert_eq!(versioned_size(10, 80, 80), Err(Error::BufferTooSmall));
        assert_eq!(versioned_size(80, 80, 80), Ok(80));
        assert_eq!(versioned_size(4096, 80, 96), Ok(96));
        assert_eq!(versioned_size(88, 80, 96), Ok(88));
    }
}
