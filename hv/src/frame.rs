//! A bitmap allocator for 4 KiB physical frames, plus boot-time placement of the bitmap itself.
//!
//! Frame `n` is the physical page at `n * FRAME_SIZE`; bit `n % 64` of word
//! `n / 64` is set while the frame is unavailable (never RAM, reserved, or
//! handed out) and clear while it is free. Every frame starts unavailable, so
//! memory the boot loader did not report as RAM can never be handed out.
//!
//! The allocator keeps one bit per frame and nothing else, so it cannot tell
//! a frame it handed out from one that was never RAM: both are simply "used".
//! Consequences, kept on purpose to stay cheap:
//! - `free` reports `OutOfRange` only for frames beyond the bitmap; freeing a
//!   frame that was never managed is a caller bug it cannot always catch.
//! - At boot, add every RAM range first, then reserve, then allocate: adding
//!   RAM over a reserved or allocated frame would free it again.

/// Size of one physical frame, the 4 KiB page of SDM 4.5.
pub const FRAME_SIZE: u64 = 4096;

/// Frames tracked by one bitmap word.
const FRAMES_PER_WORD: u64 = u64::BITS as u64;

/// Addresses below this are never returned by [`find_free_area`]: the first
/// MiB holds the real-mode IVT, BIOS data, EBDA and legacy ROM/VGA windows.
const LOW_MEMORY_END: u64 = 0x10_0000;

/// Why [`FrameAllocator::free`] refused a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The address is not a multiple of [`FRAME_SIZE`].
    Misaligned,
    /// The frame lies beyond the end of the bitmap.
    OutOfRange,
    /// The frame is already free (a double free), or nothing is allocated at all.
    NotAllocated,
}

/// A physical frame allocator over a caller-provided bitmap, one bit per frame.
#[derive(Debug)]
pub struct FrameAllocator<'a> {
    /// One bit per frame from physical address 0; set = used.
    bitmap: &'a mut [u64],
    /// Frames whose bit is clear.
    free: u64,
    /// Frames added as RAM and not reserved since: the free ones plus the allocated ones.
    total: u64,
    /// Word index where the next single-frame search starts, so that repeated
    /// allocations do not rescan the used words at the bottom of memory.
    hint: usize,
}

impl<'a> FrameAllocator<'a> {
    /// Bytes of bitmap needed to track every frame below `end_address`
    /// (rounded up to whole `u64` words).
    pub const fn bitmap_bytes_for(end_address: u64) -> usize {
        let frames = end_address.div_ceil(FRAME_SIZE);
        let words = frames.div_ceil(FRAMES_PER_WORD);
        (words * 8) as usize
    }

    /// Takes over `bitmap` and marks every frame used; the allocator then
    /// tracks `bitmap.len() * 64` frames from physical address 0.
    pub fn new(bitmap: &'a mut [u64]) -> Self {
        bitmap.fill(u64::MAX);
        Self { bitmap, free: 0, total: 0, hint: 0 }
    }

    /// Frames the bitmap can describe.
    fn frame_limit(&self) -> u64 {
        self.bitmap.len() as u64 * FRAMES_PER_WORD
    }

    /// Marks usable RAM `[start, end)` free. `start` is rounded up and `end`
    /// rounded down to frames, so a partial frame at either edge stays used;
    /// parts beyond the bitmap are ignored. Frames already free stay free and
    /// are counted once.
    pub fn add_free_range(&mut self, start: u64, end: u64) {
        let first = start.div_ceil(FRAME_SIZE);
        let last = (end / FRAME_SIZE).min(self.frame_limit());
        if first >= last {
            return;
        }
        let mut newly_free = 0;
        for_each_word_mask(first, last, |word_index, mask| {
            if let Some(word) = self.bitmap.get_mut(word_index) {
                newly_free += u64::from((*word & mask).count_ones());
                *word &= !mask;
            }
        });
        self.free += newly_free;
        self.total += newly_free;
    }

    /// Marks `[start, end)` used, rounded outward to whole frames, for memory
    /// that must never be handed out: the hv image, boot modules, the boot
    /// information and the bitmap itself. Reserved frames leave the managed
    /// total. Reserving frames that are already used or beyond the bitmap is
    /// harmless (but an allocated frame stays counted in the total).
    pub fn reserve_range(&mut self, start: u64, end: u64) {
        let first = start / FRAME_SIZE;
        let last = end.div_ceil(FRAME_SIZE).min(self.frame_limit());
        if first >= last {
            return;
        }
        let mut newly_used = 0;
        for_each_word_mask(first, last, |word_index, mask| {
            if let Some(word) = self.bitmap.get_mut(word_index) {
                newly_used += u64::from((!*word & mask).count_ones());
                *word |= mask;
            }
        });
        self.free -= newly_used;
        self.total -= newly_used;
    }

    /// Hands out one free frame's physical address, or `None` when none is left.
    ///
    /// The search starts at the word of the previous allocation and wraps
    /// around, taking the lowest free frame it meets.
    pub fn allocate(&mut self) -> Option<u64> {
        if self.free == 0 {
            return None;
        }
        let words = self.bitmap.len();
        for step in 0..words {
            let word_index = (self.hint + step) % words;
            let Some(word) = self.bitmap.get_mut(word_index) else {
                continue;
            };
            if *word != u64::MAX {
                let bit = word.trailing_ones();
                *word |= 1 << bit;
                self.free -= 1;
                self.hint = word_index;
                return Some((word_index as u64 * FRAMES_PER_WORD + u64::from(bit)) * FRAME_SIZE);
            }
        }
        None
    }

    /// Hands out `count` physically contiguous free frames whose first address
    /// is a multiple of `align` bytes (a power of two, at least [`FRAME_SIZE`]).
    /// Returns `None` if `count` is 0, `align` is invalid, or no such run exists.
    pub fn allocate_contiguous(&mut self, count: u64, align: u64) -> Option<u64> {
        if count == 0 || !align.is_power_of_two() || align < FRAME_SIZE || count > self.free {
            return None;
        }
        let step = align / FRAME_SIZE;
        let limit = self.frame_limit();
        let mut candidate = 0u64;
        while candidate.checked_add(count)? <= limit {
            // First used frame inside the candidate run, if any.
            match (candidate..candidate + count).find(|&frame| self.frame_is_used(frame)) {
                None => {
                    for_each_word_mask(candidate, candidate + count, |word_index, mask| {
                        if let Some(word) = self.bitmap.get_mut(word_index) {
                            *word |= mask;
                        }
                    });
                    self.free -= count;
                    return Some(candidate * FRAME_SIZE);
                }
                // No run that starts at or before the used frame can work:
                // skip to the next aligned start after it.
                Some(used) => candidate = (used + 1).checked_next_multiple_of(step)?,
            }
        }
        None
    }

    /// Gives back a frame obtained from [`allocate`](Self::allocate) or
    /// [`allocate_contiguous`](Self::allocate_contiguous).
    ///
    /// Returns `Misaligned` if `address` is not frame aligned, `OutOfRange` if
    /// the frame is beyond the bitmap, and `NotAllocated` if the frame is free
    /// already or if no frame is allocated at all. A frame that was never RAM or
    /// was reserved looks the same as an allocated one (see the module doc), so
    /// freeing it is a caller bug this check cannot catch.
    pub fn free(&mut self, address: u64) -> Result<(), FrameError> {
        if !address.is_multiple_of(FRAME_SIZE) {
            return Err(FrameError::Misaligned);
        }
        let frame = address / FRAME_SIZE;
        if frame >= self.frame_limit() {
            return Err(FrameError::OutOfRange);
        }
        // With every managed frame free, nothing can legitimately come back.
        if !self.frame_is_used(frame) || self.free >= self.total {
            return Err(FrameError::NotAllocated);
        }
        let (word_index, bit) = split_frame(frame);
        if let Some(word) = self.bitmap.get_mut(word_index) {
            *word &= !(1 << bit);
        }
        self.free += 1;
        Ok(())
    }

    /// Frames currently free.
    pub fn free_count(&self) -> u64 {
        self.free
    }

    /// Frames managed: those made free by [`add_free_range`](Self::add_free_range)
    /// and not later reserved (free plus allocated).
    pub fn total_count(&self) -> u64 {
        self.total
    }

    /// Whether `frame`'s bit is set; frames beyond the bitmap count as used.
    fn frame_is_used(&self, frame: u64) -> bool {
        let (word_index, bit) = split_frame(frame);
        self.bitmap.get(word_index).is_none_or(|word| word & (1 << bit) != 0)
    }
}

/// A frame number's bitmap word index and bit within that word.
fn split_frame(frame: u64) -> (usize, u32) {
    ((frame / FRAMES_PER_WORD) as usize, (frame % FRAMES_PER_WORD) as u32)
}

/// Calls `action(word_index, mask)` for each bitmap word covering frames
/// `[first, last)`, with `mask` selecting just those frames' bits, so that
/// large ranges are handled a word at a time.
fn for_each_word_mask(first: u64, last: u64, mut action: impl FnMut(usize, u64)) {
    let mut frame = first;
    while frame < last {
        let (word_index, bit) = split_frame(frame);
        let frames_here = (FRAMES_PER_WORD - u64::from(bit)).min(last - frame);
        let mask = if frames_here == FRAMES_PER_WORD { u64::MAX } else { ((1u64 << frames_here) - 1) << bit };
        action(word_index, mask);
        frame += frames_here;
    }
}

/// A half-open physical address range `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhysRange {
    /// First byte of the range.
    pub start: u64,
    /// One past the last byte of the range.
    pub end: u64,
}

impl PhysRange {
    /// Whether the two ranges share at least one byte.
    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start < end && start < self.end
    }
}

/// Finds `size` bytes aligned to `align` (a power of two) inside one of
/// `usable` that overlap none of `reserved`, and returns the start; the lowest
/// such address wins. The area never starts in the first MiB, which firmware
/// and legacy devices own. Used at boot to place the frame bitmap itself,
/// before any allocator exists. Returns `None` for `size` 0.
pub fn find_free_area(usable: &[PhysRange], reserved: &[PhysRange], size: u64, align: u64) -> Option<u64> {
    if size == 0 || !align.is_power_of_two() {
        return None;
    }
    usable.iter().filter_map(|range| lowest_fit(range, reserved, size, align)).min()
}

/// The lowest aligned start of `size` bytes inside `range`, above the first
/// MiB and clear of every reserved range.
fn lowest_fit(range: &PhysRange, reserved: &[PhysRange], size: u64, align: u64) -> Option<u64> {
    let mut candidate = range.start.max(LOW_MEMORY_END).checked_next_multiple_of(align)?;
    loop {
        let end = candidate.checked_add(size)?;
        if end > range.end {
            return None;
        }
        match reserved.iter().find(|blocker| blocker.overlaps(candidate, end)) {
            None => return Some(candidate),
            // The candidate only ever grows, so the loop ends.
            Some(blocker) => candidate = blocker.end.checked_next_multiple_of(align)?,
        }
    }
}

/// Test-only views.
#[cfg(test)]
impl FrameAllocator<'_> {
    /// Whether the frame containing `address` is free. Frames beyond the
    /// bitmap are never free.
    pub fn is_free(&self, address: u64) -> bool {
        let frame = address / FRAME_SIZE;
        frame < self.frame_limit() && !self.frame_is_used(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 0x10_0000;

    /// A bitmap covering `megabytes` MiB of physical memory.
    fn bitmap_for(megabytes: u64) -> Vec<u64> {
        vec![0; FrameAllocator::bitmap_bytes_for(megabytes * MIB) / 8]
    }

    #[test]
    fn bitmap_size_rounds_up_to_words() {
        assert_eq!(FrameAllocator::bitmap_bytes_for(0), 0);
        assert_eq!(FrameAllocator::bitmap_bytes_for(1), 8);
        assert_eq!(FrameAllocator::bitmap_bytes_for(64 * FRAME_SIZE), 8);
        assert_eq!(FrameAllocator::bitmap_bytes_for(64 * FRAME_SIZE + 1), 16);
        // 4 GiB = 1 Mi frames = 128 KiB of bitmap.
        assert_eq!(FrameAllocator::bitmap_bytes_for(4 << 30), 128 << 10);
    }

    #[test]
    fn starts_all_used() {
        let mut bitmap = bitmap_for(1);
        let mut allocator = FrameAllocator::new(&mut bitmap);
        assert_eq!(allocator.free_count(), 0);
        assert_eq!(allocator.total_count(), 0);
        assert_eq!(allocator.allocate(), None);
        assert!(!allocator.is_free(0));
    }

    #[test]
    fn overlapping_free_ranges_count_once() {
        let mut bitmap = bitmap_for(4);
        let mut allocator = FrameAllocator::new(&mut bitmap);
        allocator.add_free_range(MIB, 2 * MIB);
        allocator.add_free_range(MIB + MIB / 2, 3 * MIB);
        allocator.add_free_range(MIB, 3 * MIB);
        assert_eq!(allocator.free_count(), 2 * MIB / FRAME_SIZE);
        assert_eq!(allocator.total_count(), 2 * MIB / FRAME_SIZE);
        assert!(allocator.is_free(MIB));
        assert!(allocator.is_free(3 * MIB - FRAME_SIZE));
        assert!(!allocator.is_free(3 * MIB));
        assert!(!allocator.is_free(MIB - 1));
    }

    #[test]
    fn unaligned_free_range_rounds_inward() {
        let mut bitmap = bitmap_for(1);
        let mut allocator = FrameAllocator::new(&mut bitmap);
        allocator.add_free_range(0x1001, 0x5fff);
        // Only frames 0x2000, 0x3000 and 0x4000 are wholly inside.
        assert_eq!(allocator.free_count(), 3);
        assert!(!allocator.is_free(0x1000));
        assert!(allocator.is_free(0x2000));
        assert!(allocator.is_free(0x4000));
        assert!(!allocator.is_free(0x5000));
        // A range within one frame frees nothing.
        allocator.add_free_range(0x7001, 0x7fff);
        allocator.add_free_range(0x9000, 0x9000);
        allocator.add_free_range(0xa000, 0x9000);
        assert_eq!(allocator.free_count(), 3);
    }

    #[test]
    fn free_range_beyond_bitmap_is_clipped() {
        let mut bitmap = vec![0u64; 1];
        let mut allocator = FrameAllocator::new(&mut bitmap);
        allocator.add_free_range(60 * FRAME_SIZE, u64::MAX);
        assert_eq!(allocator.free_count(), 4);
        assert_eq!(allocator.total_count(), 4);
        allocator.add_free_range(1 << 40, 1 << 41);
        assert_eq!(allocator.free_count(), 4);
    }

    #[test]
    fn unaligned_reserved_range_rounds_outward() {
        let mut bitmap = bitmap_for(1);
        let mut allocator = FrameAllocator::new(&mut bitmap);
        allocator.add_free_range(0, MIB);
        allocator.reserve_range(0x2fff, 0x4001);
        // Frames 0x2000, 0x3000 and 0x4000 are touched, so all three go.
        assert!(allocator.is_free(0x1000));
        assert!(!allocator.is_free(0x2000));
        assert!(!allocator.is_free(0x3000));
        assert!(!allocator.is_free(0x4000));
        assert!(allocator.is_free(0x5000));
        assert_eq!(allocator.total_count(), MIB / FRAME_SIZE - 3);
    }

    #[test]
    fn reserved_ranges_inside_and_straddling() {
        let mut bitmap = bitmap_for(8);
        let mut allocator = FrameAllocator::new(&mut bitmap);
        allocator.add_free_range(MIB, 4 * MIB);
        let frames = 3 * MIB / FRAME_SIZE;
        // Inside: 16 frames.
        allocator.reserve_range(2 * MIB, 2 * MIB + 16 * FRAME_SIZE);
        assert_eq!(allocator.total_count(), frames - 16);
        // Straddling the start: only the part inside the free range counts.
        allocator.reserve_range(MIB - 8 * FRAME_SIZE, MIB + 8 * FRAME_SIZE);
        assert_eq!(allocator.total_count(), frames - 24);
        // Straddling the end.
        allocator.reserve_range(4 * MIB - 4 * FRAME_SIZE, 5 * MIB);
        assert_eq!(allocator.total_count(), frames - 28);
        // Again, and fully outside: harmless.
        allocator.reserve_range(2 * MIB, 2 * MIB + 16 * FRAME_SIZE);
        allocator.reserve_range(6 * MIB, 7 * MIB);
        allocator.reserve_range(1 << 40, u64::MAX);
        assert_eq!(allocator.total_count(), frames - 28);
        assert_eq!(allocator.free_count(), frames - 28);
    }

    #[test]
    fn never_hands_out_a_reserved_frame() {
        let mut bitmap = bitmap_for(16);
        let mut allocator = FrameAllocator::new(&mut bitmap);
        let reserved = [
            PhysRange { start: 0x10_0000, end: 0x18_3456 },
            PhysRange { start: 0x40_0fff, end: 0x40_1001 },
            PhysRange { start: 0x7f_f000, end: 0x80_1000 },
            PhysRange { start: 0xa0_0000, end: 0xa4_0000 },
        ];
        allocator.add_free_range(0x1000, 0xa_0000);
        allocator.add_free_range(0x10_0000, 0xc0_0000);
        for range in reserved {
            allocator.reserve_range(range.start, range.end);
        }
        let total = allocator.total_count();
        let mut handed_out = Vec::new();
        while let Some(address) = allocator.allocate() {
            assert_eq!(address % FRAME_SIZE, 0);
            for range in reserved {
                let frame_end = address + FRAME_SIZE;
                assert!(!range.overlaps(address, frame_end), "{address:#x} is in {range:?}");
            }
            assert!((0x1000..0xc0_0000).contains(&address));
            assert!(!(0xa_0000..0x10_0000).contains(&address));
            handed_out.push(address);
        }
        assert_eq!(handed_out.len() as u64, total);
        handed_out.sort_unstable();
        handed_out.dedup();
        assert_eq!(handed_out.len() as u64, total, "a frame was handed out twice");
    }

    #[test]
    fn exhaustion_then_free_and_reallocate() {
        let mut bitmap = bitmap_for(1);
        let mut allocator = FrameAllocator::new(&mut bitmap);
        allocator.add_free_range(0x10_000, 0x20_000);
        let mut frames = Vec::new();
        while let Some(frame) = allocator.allocate() {
            frames.push(frame);
        }
        assert_eq!(frames.len(), 16);
        assert_eq!(allocator.free_count(), 0);
        assert_eq!(allocator.total_count(), 16);
        assert_eq!(allocator.allocate(), None);
        assert_eq!(allocator.allocate_contiguous(1, FRAME_SIZE), None);

        assert_eq!(allocator.free(frames[5]), Ok(()));
        assert_eq!(allocator.free_count(), 1);
        assert_eq!(allocator.allocate(), Some(frames[5]));
        assert_eq!(allocator.allocate(), None);

        for frame in &frames {
            assert_eq!(allocator.free(*frame), Ok(()));
        }
        assert_eq!(allocator.free_count(), 16);
        assert_eq!(allocator.total_count(), 16);
        for _ in 0..16 {
            assert!(allocator.allocate().is_some());
        }
        assert_eq!(allocator.allocate(), None);
    }

    #[test]
    fn allocation_search_wraps_around() {
        let mut bitmap = bitmap_for(1);
        let mut allocator = FrameAllocator::new(&mut bitmap);
        allocator.add_free_range(0, MIB);
        // Move the hint to the top of memory, then free a frame at the bottom.
        let mut last = 0;
        while let Some(frame) = allocator.allocate() {
            last = frame;
        }
        assert_eq!(last, MIB - FRAME_SIZE);
        allocator.free(0x3000).unwrap();
        assert_eq!(allocator.allocate(), Some(0x3000));
    }

    #[test]
    fn double_free_is_refused() {
        let mut bitmap = bitmap_for(1);
        let mut allocator = FrameAllocator::new(&mut bitmap);
        allocator.add_free_range(0, MIB);
        let first = allocator.allocate().unwrap();
        let second = allocator.allocate().unwrap();
        assert_eq!(allocator.free(first), Ok(()));
        assert_eq!(allocator.free(first), Err(FrameError::NotAllocated));
        assert_eq!(allocator.free(second), Ok(()));
        assert_eq!(allocator.free(second), Err(FrameError::NotAllocated));
        // A frame that was never allocated while others are free.
        assert_eq!(allocator.free(0x8_0000), Err(FrameError::NotAllocated));
        assert_eq!(allocator.free_count(), MIB / FRAME_SIZE);
    }

    #[test]
    fn free_with_nothing_allocated_is_refused() {
        let mut bitmap = bitmap_for(1);
        let mut allocator = FrameAllocator::new(&mut bitmap);
        allocator.add_free_range(0x10_000, 0x20_000);
        // Frame 0 is used (never RAM), but nothing has been allocated.
        assert_eq!(allocator.free(0), Err(FrameError::NotAllocated));
        assert_eq!(allocator.free_count(), 16);
    }

    #[test]
    fn misaligned_free_is_refused() {
        let mut bitmap = bitmap_for(1);
        let mut allocator = FrameAllocator::new(&mut bitmap);
        allocator.add_free_range(0, MIB);
        let frame = allocator.allocate().unwrap();
        assert_eq!(allocator.free(frame + 1), Err(FrameError::Misaligned));
        assert_eq!(allocator.free(frame + 0x800), Err(FrameError::Misaligned));
        assert_eq!(allocator.free(frame), Ok(()));
    }

    #[test]
    fn out_of_range_free_is_refused() {
        let mut bitmap = bitmap_for(1);
        let mut allocator = FrameAllocator::new(&mut bitmap);
        allocator.add_free_range(0, MIB);
        allocator.allocate().unwrap();
        assert_eq!(allocator.free(MIB), Err(FrameError::OutOfRange));
        assert_eq!(allocator.free(1 << 40), Err(FrameError::OutOfRange));
        assert_eq!(allocator.free(!(FRAME_SIZE - 1)), Err(FrameError::OutOfRange));
        assert!(!allocator.is_free(MIB));
        assert!(!allocator.is_free(u64::MAX));
    }

    #[test]
    fn contiguous_allocation_is_aligned() {
        let mut bitmap = bitmap_for(8);
        let mut allocator = FrameAllocator::new(&mut bitmap);
        allocator.add_free_range(0x1000, 8 * MIB);
        let two_mib = 2 * MIB;
        let block = allocator.allocate_contiguous(512, two_mib).unwrap();
        assert_eq!(block % two_mib, 0);
        assert_eq!(block, two_mib, "frame 0 is not RAM, so the first 2 MiB block is at 2 MiB");
        for frame in 0..512 {
            assert!(!allocator.is_free(block + frame * FRAME_SIZE));
        }
        assert_eq!(allocator.free_count(), 8 * MIB / FRAME_SIZE - 1 - 512);

        let small = allocator.allocate_contiguous(3, 0x4000).unwrap();
        assert_eq!(small % 0x4000, 0);
        assert_eq!(small, 0x4000);

        for frame in 0..512 {
            allocator.free(block + frame * FRAME_SIZE).unwrap();
        }
        assert_eq!(allocator.allocate_contiguous(512, two_mib), Some(two_mib));
    }

    #[test]
    fn contiguous_allocation_rejects_bad_arguments() {
        let mut bitmap = bitmap_for(1);
        let mut allocator = FrameAllocator::new(&mut bitmap);
        allocator.add_free_range(0, MIB);
        assert_eq!(allocator.allocate_contiguous(0, FRAME_SIZE), None);
        assert_eq!(allocator.allocate_contiguous(1, 0), None);
        assert_eq!(allocator.allocate_contiguous(1, 2048), None);
        assert_eq!(allocator.allocate_contiguous(1, 0x3000), None);
        assert_eq!(allocator.allocate_contiguous(u64::MAX, FRAME_SIZE), None);
        assert_eq!(allocator.allocate_contiguous(1, 1 << 63), Some(0));
        assert_eq!(allocator.allocate_contiguous(1, 1 << 63), None);
    }

    #[test]
    fn contiguous_allocation_fails_on_fragmentation() {
        let mut bitmap = bitmap_for(1);
        let mut allocator = FrameAllocator::new(&mut bitmap);
        allocator.add_free_range(0, MIB);
        let frames = MIB / FRAME_SIZE;
        let mut all = Vec::new();
        while let Some(frame) = allocator.allocate() {
            all.push(frame);
        }
        // Free every other frame: half the memory is free, but no two free
        // frames are adjacent.
        for frame in all.iter().step_by(2) {
            allocator.free(*frame).unwrap();
        }
        assert_eq!(allocator.free_count(), frames / 2);
        assert_eq!(allocator.allocate_contiguous(2, FRAME_SIZE), None);
        assert_eq!(allocator.allocate_contiguous(1, FRAME_SIZE), Some(0));
        // Free frames at 0x2000..0x4000 make a run of two, but not aligned to 16 KiB.
        allocator.free(0x3000).unwrap();
        assert_eq!(allocator.allocate_contiguous(2, 0x4000), None);
        assert_eq!(allocator.allocate_contiguous(2, 0x2000), Some(0x2000));
        assert_eq!(allocator.free_count(), frames / 2 - 2);
    }

    #[test]
    fn find_free_area_skips_low_memory_and_reserved() {
        let usable = [PhysRange { start: 0, end: 0xa_0000 }, PhysRange { start: 0x10_0000, end: 0x800_0000 }];
        // The low range is large enough but below 1 MiB.
        assert_eq!(find_free_area(&usable, &[], 0x1000, 0x1000), Some(0x10_0000));

        let reserved = [PhysRange { start: 0x10_0000, end: 0x20_0123 }, PhysRange { start: 0x20_2000, end: 0x20_3000 }];
        // The gap 0x201000..0x202000 fits one page but not two.
        assert_eq!(find_free_area(&usable, &reserved, 0x1000, 0x1000), Some(0x20_1000));
        assert_eq!(find_free_area(&usable, &reserved, 0x2000, 0x1000), Some(0x20_3000));
        // Alignment pushes past the reservations.
        assert_eq!(find_free_area(&usable, &reserved, 0x1000, 0x20_0000), Some(0x40_0000));
    }

    #[test]
    fn find_free_area_chooses_lowest_across_unsorted_ranges() {
        let usable = [
            PhysRange { start: 0x1000_0000, end: 0x2000_0000 },
            PhysRange { start: 0x20_0000, end: 0x30_0000 },
            PhysRange { start: 0x50_0000, end: 0x60_0000 },
        ];
        assert_eq!(find_free_area(&usable, &[], 0x1000, 0x1000), Some(0x20_0000));
        // Too big for the two small ranges.
        assert_eq!(find_free_area(&usable, &[], 0x20_0000, 0x1000), Some(0x1000_0000));
        let reserved = [PhysRange { start: 0, end: 0x40_0000 }];
        assert_eq!(find_free_area(&usable, &reserved, 0x1000, 0x1000), Some(0x50_0000));
    }

    #[test]
    fn find_free_area_fails_cleanly() {
        let usable = [PhysRange { start: 0x10_0000, end: 0x20_0000 }];
        let everything = [PhysRange { start: 0, end: u64::MAX }];
        assert_eq!(find_free_area(&usable, &everything, 0x1000, 0x1000), None);
        assert_eq!(find_free_area(&usable, &[], 0x10_0001, 0x1000), None);
        assert_eq!(find_free_area(&usable, &[], 0, 0x1000), None);
        assert_eq!(find_free_area(&usable, &[], 0x1000, 0x3000), None);
        assert_eq!(find_free_area(&[], &[], 0x1000, 0x1000), None);
        let high = [PhysRange { start: u64::MAX - 0x1000, end: u64::MAX }];
        assert_eq!(find_free_area(&high, &[], 0x2000, 0x1000), None);
        assert_eq!(find_free_area(&high, &[], 0x1000, 1 << 63), None);
        // Only the area below 1 MiB is big enough.
        let low = [PhysRange { start: 0, end: 0x10_0fff }];
        assert_eq!(find_free_area(&low, &[], 0x1000, 0x1000), None);
    }
}
