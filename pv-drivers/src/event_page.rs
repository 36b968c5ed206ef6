//! Atomic access to a domain's event page (`abi::event::EventPage`), shared
//! with the hypervisor: locked instructions on raw addresses, never Rust
//! references into the page.

use abi::event::BITMAP_WORDS;

/// Tests and clears the pending bit of `port` (LOCK BTR).
///
/// # Safety
/// `page` must be the address of this domain's registered event page.
pub unsafe fn take_pending(page: u64, port: u32) -> bool {
    if port as usize >= BITMAP_WORDS * 64 {
        return false;
    }
    let word = page + (port / 64) as u64 * 8;
    let was_set: u8;
    // SAFETY: the word lies inside the event page the caller vouches for;
    // LOCK BTR is atomic against the hypervisor setting bits.
    unsafe {
        core::arch::asm!("lock btr qword ptr [{word}], {bit}", "setc {was_set}", word = in(reg) word,
            bit = in(reg) (port % 64) as u64, was_set = out(reg_byte) was_set, options(nostack));
    }
    was_set != 0
}

/// Takes every pending bit at once (XCHG with zero, word by word).
///
/// # Safety
/// As for [`take_pending`].
pub unsafe fn take_all_pending(page: u64) -> [u64; BITMAP_WORDS] {
    let mut taken = [0u64; BITMAP_WORDS];
    for (index, bits) in taken.iter_mut().enumerate() {
        let mut value = 0u64;
        // SAFETY: the word lies inside the event page; XCHG is implicitly locked.
        unsafe {
            core::arch::asm!("xchg qword ptr [{word}], {value}", word = in(reg) page + index as u64 * 8,
                value = inout(reg) value, options(nostack));
        }
        *bits = value;
    }
    taken
}
