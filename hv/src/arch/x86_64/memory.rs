//! Access to physical memory. hv identity-maps the first 4 GiB (see `boot`),
//! and all RAM above with 1 GiB pages where the CPU has them
//! ([`extend_identity_map`]), so a physical address below
//! [`identity_limit`] is also its virtual address.
//! These wrappers are the only place hv turns a physical address into a
//! pointer; everything above them works with addresses.

use core::sync::atomic::{AtomicU64, Ordering};

/// Physical memory below this address is identity-mapped in hv.
static IDENTITY_LIMIT: AtomicU64 = AtomicU64::new(4 << 30);

/// The end of hv's identity map.
pub fn identity_limit() -> u64 {
    IDENTITY_LIMIT.load(Ordering::Relaxed)
}

unsafe extern "C" {
    /// The boot page tables' PDPT (its entries 0-3 map the first 4 GiB).
    static mut boot_pdpt: [u64; 512];
}

unsafe extern "C" {
    /// The boot page directories (4 x 512 entries of 2 MiB pages).
    static mut boot_pd: [u64; 2048];
    /// A spare page table in hv's image for `guard_boot_stack`.
    static mut boot_guard_pt: [u64; 512];
    /// The page just below the boot stack.
    static boot_stack_guard: u8;
}

/// Unmaps the page below hv's boot stack, so an overflow faults (and the
/// double fault, on its own stack, reports it) instead of overwriting the
/// boot page tables. The 2 MiB page holding it is split into 4 KiB pages
/// in a page table of hv's image. Boot CPU, once. Returns the guard's address.
pub fn guard_boot_stack() -> u64 {
    let guard = &raw const boot_stack_guard as u64;
    let region = guard & !((2 << 20) - 1);
    // SAFETY: boot is single-threaded; the page table lives in hv's image
    // (identity-mapped), gets the same mappings the 2 MiB page had (present,
    // writable, write-back: the boot code sets no PCD/PWT below 3 GiB) but
    // for the guard page, and only then replaces the directory entry.
    unsafe {
        let table = &raw mut boot_guard_pt;
        for index in 0..512 {
            (*table)[index] = (region + index as u64 * 4096) | 0x3;
        }
        (*table)[((guard - region) / 4096) as usize] = 0;
        let directory = &raw mut boot_pd;
        (*directory)[(guard >> 21) as usize] = table as u64 | 0x3;
        core::arch::asm!("mov {t}, cr3", "mov cr3, {t}", t = out(reg) _, options(nostack));
    }
    guard
}

/// Unmaps the 4 KiB page at `page` (below 4 GiB, in a 2 MiB page of the
/// boot page directories) from hv's identity map, so that touching it
/// faults: the guard page under an application processor's stack. The
/// 2 MiB page holding it is split into a page table (a frame from
/// `allocate_table`, which hv gives up for good) unless it already was.
/// Boot CPU, before the APs it guards start. Returns false (and maps
/// nothing differently) if the page is above 4 GiB or no table frame came.
pub fn unmap_guard_page(page: u64, allocate_table: impl FnOnce() -> Option<u64>) -> bool {
    if page >= 4 << 30 || !page.is_multiple_of(4096) {
        return false;
    }
    let index = (page >> 21) as usize;
    // SAFETY: boot CPU, no AP running yet; the directory entry is replaced
    // by a table with the same mappings (same cache bits: PCD/PWT are bits
    // 3-4 in both) but for the guard page, and the TLB is flushed.
    unsafe {
        let directory = &raw mut boot_pd;
        let entry = (*directory)[index];
        let table_address = if entry & 0x80 != 0 {
            let Some(table) = allocate_table() else { return false };
            let region = entry & !((2 << 20) - 1) & 0x000f_ffff_ffff_ffff;
            for slot in 0..512u64 {
                write_u64(table + slot * 8, (region + slot * 4096) | (entry & 0x1f));
            }
            (*directory)[index] = table | 0x3;
            table
        } else {
            entry & 0x000f_ffff_ffff_f000
        };
        write_u64(table_address + ((page >> 12) & 511) * 8, 0);
        core::arch::asm!("mov {t}, cr3", "mov cr3, {t}", t = out(reg) _, options(nostack));
    }
    true
}

/// Identity-maps physical memory up to `top` (at most 512 GiB, one PDPT)
/// with 1 GiB pages, write-back, when the CPU supports them (CPUID
/// 8000_0001h:EDX bit 26, SDM Vol. 3A 5.5.4); otherwise hv keeps to the
/// first 4 GiB. Boot CPU, once, before the frame allocator. Returns the new
/// limit.
pub fn extend_identity_map(top: u64) -> u64 {
    let has_1g_pages = super::cpu::features().pages_1g;
    let gigabytes = top.div_ceil(1 << 30).min(512);
    if !has_1g_pages || gigabytes <= 4 {
        return identity_limit();
    }
    // SAFETY: boot is single-threaded; entries 4.. of the boot PDPT are
    // unused (the boot code fills 0-3), and each becomes a present,
    // writable 1 GiB page mapping the same physical range (P|RW|PS).
    unsafe {
        let pdpt = &raw mut boot_pdpt;
        for index in 4..gigabytes as usize {
            (*pdpt)[index] = (index as u64) << 30 | 0x83;
        }
        // Reloading CR3 flushes the TLB (the new entries were not present
        // before, so this is belt and braces).
        core::arch::asm!("mov {t}, cr3", "mov cr3, {t}", t = out(reg) _, options(nostack));
    }
    IDENTITY_LIMIT.store(gigabytes << 30, Ordering::Relaxed);
    identity_limit()
}

#[inline]
fn mapped(address: u64, length: u64) -> bool {
    address.checked_add(length).is_some_and(|end| end <= identity_limit())
}

/// Reads a 64-bit word of physical memory (8-byte aligned).
#[inline]
pub fn read_u64(address: u64) -> u64 {
    if !word_ok(address) {
        return 0;
    }
    // SAFETY: the address is identity-mapped and aligned; volatile because
    // the memory may be a page table the CPU also reads.
    unsafe { core::ptr::read_volatile(address as *const u64) }
}

/// Writes a 64-bit word of physical memory (8-byte aligned). The caller
/// owns the frame (a page table or other hv-owned frame).
pub fn write_u64(address: u64, value: u64) {
    if !word_ok(address) {
        return;
    }
    // SAFETY: as for `read_u64`; hv only writes frames it allocated.
    unsafe { core::ptr::write_volatile(address as *mut u64, value) }
}

/// Fills `length` bytes of physical memory at `address` with zeros.
pub fn zero(address: u64, length: u64) {
    if !mapped(address, length) {
        return;
    }
    // SAFETY: identity-mapped range owned by the caller (a freshly
    // allocated frame), not aliased by any Rust reference.
    unsafe { core::ptr::write_bytes(address as *mut u8, 0, length as usize) }
}

/// Copies bytes into physical memory. Returns false if the range is not mapped.
pub fn copy_to(address: u64, bytes: &[u8]) -> bool {
    if !mapped(address, bytes.len() as u64) {
        return false;
    }
    // SAFETY: identity-mapped destination owned by a domain or hv; the source
    // is a Rust slice that cannot overlap a frame hv hands to guests.
    unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), address as *mut u8, bytes.len()) };
    true
}

/// Copies bytes out of physical memory. Returns false if the range is not mapped.
pub fn copy_from(address: u64, out: &mut [u8]) -> bool {
    if !mapped(address, out.len() as u64) {
        return false;
    }
    // SAFETY: identity-mapped source; a guest may change it concurrently,
    // which only changes the bytes copied (they are treated as untrusted).
    unsafe { core::ptr::copy_nonoverlapping(address as *const u8, out.as_mut_ptr(), out.len()) };
    true
}

/// Whether `address` is an aligned 64-bit word inside the identity map:
/// two tests on the hot paths (event words, page-table entries). The map
/// reaches at least 4 GiB, so `limit - 8` does not wrap, and an aligned
/// address at most that ends inside it.
#[inline(always)]
fn word_ok(address: u64) -> bool {
    address.is_multiple_of(8) && address <= identity_limit() - 8
}

// The words below live in pages shared with guests. hv never makes a Rust
// reference to them: it uses single locked instructions on the raw address,
// which are atomic against the guest's own accesses (SDM Vol. 3A 10.1.2).

/// Atomically sets bit `bit` (0..64) of the 64-bit word at `address`;
/// returns whether it was already set (LOCK BTS).
#[inline]
pub fn atomic_test_and_set_bit(address: u64, bit: u32) -> bool {
    if !word_ok(address) {
        return true;
    }
    let was_set: u8;
    // SAFETY: the word is identity-mapped and aligned; a locked BTS changes
    // only that bit and touches no Rust-visible memory.
    unsafe {
        core::arch::asm!("lock bts qword ptr [{address}], {bit}", "setc {was_set}",
            address = in(reg) address, bit = in(reg) (bit & 63) as u64, was_set = out(reg_byte) was_set, options(nostack));
    }
    was_set != 0
}

/// Atomically clears bit `bit` of the 64-bit word at `address`; returns
/// whether it was set (LOCK BTR).
#[inline]
pub fn atomic_test_and_clear_bit(address: u64, bit: u32) -> bool {
    if !word_ok(address) {
        return false;
    }
    let was_set: u8;
    // SAFETY: as for `atomic_test_and_set_bit`.
    unsafe {
        core::arch::asm!("lock btr qword ptr [{address}], {bit}", "setc {was_set}",
            address = in(reg) address, bit = in(reg) (bit & 63) as u64, was_set = out(reg_byte) was_set, options(nostack));
    }
    was_set != 0
}

/// Replaces the 64-bit word at `address` with `new` if it holds `current`
/// (LOCK CMPXCHG); returns the word found, `Ok` when it was `current`.
#[inline]
pub fn atomic_compare_exchange(address: u64, current: u64, new: u64) -> Result<u64, u64> {
    if !word_ok(address) {
        return Err(!current);
    }
    let found: u64;
    // SAFETY: the word is identity-mapped and aligned; a locked CMPXCHG
    // changes only that word and touches no Rust-visible memory.
    unsafe {
        core::arch::asm!("lock cmpxchg qword ptr [{address}], {new}", address = in(reg) address, new = in(reg) new,
            inout("rax") current => found, options(nostack));
    }
    if found == current { Ok(found) } else { Err(found) }
}

/// Reads a 64-bit word (aligned 8-byte loads are atomic on x86-64).
#[inline]
pub fn atomic_load(address: u64) -> u64 {
    read_u64(address)
}

/// Atomically exchanges the 64-bit word at `address`; returns the old value (XCHG).
#[inline]
pub fn atomic_swap(address: u64, value: u64) -> u64 {
    if !word_ok(address) {
        return value;
    }
    let mut old = value;
    // SAFETY: the word is identity-mapped and aligned; XCHG with memory is
    // implicitly locked and touches no Rust-visible memory.
    unsafe {
        core::arch::asm!("xchg qword ptr [{address}], {value}", address = in(reg) address, value = inout(reg) old, options(nostack));
    }
    old
}

/// Firmware tables (ACPI) read through the identity map.
pub struct PhysicalMemory;

impl hvcore::acpi::PhysicalReader for PhysicalMemory {
    fn read(&self, address: u64, out: &mut [u8]) -> bool {
        copy_from(address, out)
    }
}

/// A read-only view of boot-time memory hv trusts and never frees (the
/// multiboot2 information and modules).
///
/// # Safety
/// The range must be identity-mapped RAM that nothing writes for the rest
/// of hv's life.
pub unsafe fn boot_slice(address: u64, length: u64) -> &'static [u8] {
    if !mapped(address, length) {
        return &[];
    }
    // SAFETY: the caller guarantees the range is immutable boot data.
    unsafe { core::slice::from_raw_parts(address as *const u8, length as usize) }
}

/// A mutable view of frames hv set aside for its own bookkeeping at boot
/// (the frame allocator's bitmap).
///
/// # Safety
/// The range must be identity-mapped RAM reserved for this use only, and
/// this must be called once for it.
pub unsafe fn boot_words_mut(address: u64, words: usize) -> &'static mut [u64] {
    if !mapped(address, words as u64 * 8) || !address.is_multiple_of(8) {
        return &mut [];
    }
    // SAFETY: the caller guarantees exclusive, permanent ownership.
    unsafe { core::slice::from_raw_parts_mut(address as *mut u64, words) }
}

/// A value of type `T` in a frame of its own: an owning pointer whose
/// target never moves, so one CPU can keep using it (a vCPU's register
/// block, which the VM-exit code writes) while the structure that owns the
/// box is changed by others. Moving the box moves only the pointer.
/// There is no `Drop`: a box is retired with [`FrameBox::into_inner`]
/// (a vCPU must be cleared from the CPU first), and one merely dropped
/// leaks its frame.
pub struct FrameBox<T> {
    pointer: core::ptr::NonNull<T>,
}

// SAFETY: a FrameBox owns its value exactly like a Box does; sending it to
// another CPU sends the value.
unsafe impl<T: Send> Send for FrameBox<T> {}

impl<T> FrameBox<T> {
    const FITS: () = assert!(size_of::<T>() <= 4096 && align_of::<T>() <= 4096);

    /// Moves `value` into a frame from `allocate` (a zeroed, identity-mapped
    /// 4 KiB frame that the box then owns); gives `value` back when no
    /// frame is left.
    pub fn new(value: T, allocate: impl FnOnce() -> Option<u64>) -> Result<FrameBox<T>, T> {
        let () = Self::FITS;
        // A frame address is never 0 (the allocator never hands out page 0).
        let Some(pointer) = allocate().and_then(|frame| core::ptr::NonNull::new(frame as *mut T)) else {
            return Err(value);
        };
        // SAFETY: the frame is 4 KiB, page-aligned (enough for T, checked
        // above), identity-mapped and nobody else's; writing initialises it.
        unsafe { pointer.as_ptr().write(value) };
        Ok(FrameBox { pointer })
    }

    /// Takes the value out and returns the frame (for `free`).
    pub fn into_inner(self) -> (T, u64) {
        let pointer = self.pointer.as_ptr();
        // SAFETY: the box owned an initialised value, read exactly once
        // here; the box is consumed (and has no Drop), so nothing reads or
        // frees it again.
        (unsafe { pointer.read() }, pointer as u64)
    }
}

impl<T> core::ops::Deref for FrameBox<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the box owns an initialised value; borrows follow `self`.
        unsafe { self.pointer.as_ref() }
    }
}

impl<T> core::ops::DerefMut for FrameBox<T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes the borrow unique.
        unsafe { self.pointer.as_mut() }
    }
}
