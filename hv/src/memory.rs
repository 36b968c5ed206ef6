//! hv's physical memory: the global frame allocator and the table memory that
//! page-table and EPT builders use.

use hvcore::frame::{FrameAllocator, PhysRange};
use hvcore::multiboot2::BootInfo;
use hvcore::paging::TableMemory;
use spin::Mutex;

use crate::arch::memory as physical;

static FRAMES: Mutex<Option<FrameAllocator<'static>>> = Mutex::new(None);

/// Memory figures for `HvInfo`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Totals {
    pub total_pages: u64,
    pub free_pages: u64,
    /// Pages holding the allocator's own bitmap.
    pub bitmap_pages: u64,
}

/// Builds the frame allocator from the multiboot2 memory map, leaving out
/// the first MiB, hv's image, the boot information and every module.
pub fn init(boot: &BootInfo, reserved: &[PhysRange]) -> Result<Totals, &'static str> {
    let mut usable: arrayvec::ArrayVec<PhysRange, 128> = arrayvec::ArrayVec::new();
    let ram_top =
        boot.memory_map.iter().filter(|entry| entry.is_available()).map(|entry| entry.end()).max().unwrap_or(0);
    let limit = physical::extend_identity_map(ram_top);
    let guard = physical::guard_boot_stack();
    crate::debug!("boot stack guard page at {guard:#x} (unmapped)");
    let mut top = 0;
    for entry in boot.memory_map.iter().filter(|entry| entry.is_available()) {
        let end = entry.end().min(limit);
        if entry.base >= end {
            continue;
        }
        let _ = usable.try_push(PhysRange { start: entry.base, end });
        top = top.max(end);
    }
    if usable.is_empty() {
        return Err("the memory map has no usable RAM");
    }
    let bitmap_bytes = FrameAllocator::bitmap_bytes_for(top) as u64;
    let bitmap_size = bitmap_bytes.next_multiple_of(hvcore::frame::FRAME_SIZE);
    let bitmap_address = hvcore::frame::find_free_area(&usable, reserved, bitmap_size, hvcore::frame::FRAME_SIZE)
        .ok_or("no room for the frame bitmap")?;
    // SAFETY: find_free_area returned usable RAM that overlaps no reserved
    // range; it is reserved in the allocator below, so nothing else uses it.
    let bitmap = unsafe { physical::boot_words_mut(bitmap_address, bitmap_bytes as usize / 8) };
    let mut frames = FrameAllocator::new(bitmap);
    for range in &usable {
        frames.add_free_range(range.start, range.end);
    }
    frames.reserve_range(0, 1 << 20);
    for range in reserved {
        frames.reserve_range(range.start, range.end);
    }
    frames.reserve_range(bitmap_address, bitmap_address + bitmap_size);
    let totals = Totals {
        total_pages: frames.total_count(),
        free_pages: frames.free_count(),
        bitmap_pages: bitmap_size / hvcore::frame::FRAME_SIZE,
    };
    *FRAMES.lock() = Some(frames);
    Ok(totals)
}

/// Current totals.
pub fn totals() -> Totals {
    FRAMES
        .lock()
        .as_ref()
        .map(|frames| Totals { total_pages: frames.total_count(), free_pages: frames.free_count(), bitmap_pages: 0 })
        .unwrap_or_default()
}

/// Allocates one zeroed 4 KiB frame.
pub fn allocate_frame() -> Option<u64> {
    let frame = FRAMES.lock().as_mut()?.allocate()?;
    physical::zero(frame, hvcore::frame::FRAME_SIZE);
    Some(frame)
}

/// Allocates `count` zeroed contiguous frames aligned to `align` bytes.
pub fn allocate_contiguous(count: u64, align: u64) -> Option<u64> {
    let base = FRAMES.lock().as_mut()?.allocate_contiguous(count, align)?;
    physical::zero(base, count * hvcore::frame::FRAME_SIZE);
    Some(base)
}

/// Returns a frame. A bad address is a hv bug; it is logged, not fatal.
pub fn free_frame(frame: u64) {
    let result = FRAMES.lock().as_mut().map(|frames| frames.free(frame));
    if let Some(Err(error)) = result {
        crate::error!("freeing frame {frame:#x} failed: {error:?}");
    }
}

/// Page-table memory backed by hv's frame allocator and identity map.
pub struct HvTables;

impl TableMemory for HvTables {
    fn allocate_table(&mut self) -> Option<u64> {
        allocate_frame()
    }

    fn read_entry(&self, table: u64, index: usize) -> u64 {
        physical::read_u64(table + index as u64 * 8)
    }

    fn write_entry(&mut self, table: u64, index: usize, value: u64) {
        physical::write_u64(table + index as u64 * 8, value);
    }

    fn free_table(&mut self, table: u64) {
        free_frame(table);
    }
}
