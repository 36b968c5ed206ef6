//! Atomic access to a domain's event page (`abi::event::EventPage`), shared
//! with the hypervisor: locked instructions on raw addresses, never Rust
//! references into the page.

use core::sync::atomic::{AtomicU64, Ordering};

use abi::event::{BITMAP_WORDS, EventPage};

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

/// Takes the pending bits of the ports in `ports` (bit `p % 64` of word
/// `p / 64`) and leaves every other port pending: how a domain whose
/// vCPUs poll takes one vCPU's events and not another's. One locked
/// AND-NOT per word that names a port.
///
/// # Safety
/// As for [`take_pending`].
pub unsafe fn take_pending_of(page: u64, ports: &[u64; BITMAP_WORDS]) -> [u64; BITMAP_WORDS] {
    let mut taken = [0u64; BITMAP_WORDS];
    for (index, (bits, &wanted)) in taken.iter_mut().zip(ports).enumerate() {
        if wanted == 0 {
            continue;
        }
        // SAFETY: the word lies inside the event page the caller vouches
        // for, 8-byte aligned; hv changes it only with locked instructions.
        let word = unsafe { AtomicU64::from_ptr((page + index as u64 * 8) as *mut u64) };
        *bits = word.fetch_and(!wanted, Ordering::SeqCst) & wanted;
    }
    taken
}

/// Clears vCPU `vcpu`'s upcall flag (`EventPage::upcall_pending` for vCPU
/// 0, `upcall_pending_vcpu[vcpu - 1]` for the others) with a locked
/// exchange, so a scan of the pending bits after it cannot pass it
/// (`hvcore::event_page`). A vCPU other than 0 that polls (the domain
/// registered no upcall vector) clears its flag each time it wakes, or hv
/// never lets it block again. Does nothing for a vCPU beyond the page's.
///
/// # Safety
/// As for [`take_pending`].
pub unsafe fn clear_upcall(page: u64, vcpu: u32) {
    if vcpu >= abi::hypercall::MAX_VCPUS {
        return;
    }
    let offset = core::mem::offset_of!(EventPage, upcall_pending) as u64 + 8 * u64::from(vcpu);
    // SAFETY: the flag lies inside the event page the caller vouches for,
    // 8-byte aligned; the swap is a locked XCHG.
    unsafe { AtomicU64::from_ptr((page + offset) as *mut u64) }.swap(0, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event page in host memory, aligned as a real one.
    #[repr(C, align(4096))]
    struct Page(EventPage);

    fn page() -> Box<Page> {
        Box::new(Page(EventPage {
            pending: [0; BITMAP_WORDS],
            mask: [0; BITMAP_WORDS],
            upcall_pending: 0,
            upcall_pending_vcpu: [0; 7],
        }))
    }

    #[test]
    fn take_pending_of_takes_only_the_named_ports() {
        let mut page = page();
        page.0.pending = [0b1011, 1 << 63, 0, 5];
        let address = &raw mut page.0 as u64;
        let mut ports = [0u64; BITMAP_WORDS];
        ports[0] = 0b0011 | 1 << 7;
        ports[1] = 1 << 63;
        // SAFETY: `address` is the page above, alive for the call.
        let taken = unsafe { take_pending_of(address, &ports) };
        assert_eq!(taken, [0b0011, 1 << 63, 0, 0], "the named ports that were pending");
        assert_eq!(page.0.pending, [0b1000, 0, 0, 5], "the others stay pending");
        // SAFETY: as above.
        assert_eq!(unsafe { take_pending_of(address, &ports) }, [0; BITMAP_WORDS], "taken once");
    }

    #[test]
    fn clear_upcall_clears_one_vcpus_flag() {
        let mut page = page();
        page.0.upcall_pending = 1;
        page.0.upcall_pending_vcpu = [1; 7];
        let address = &raw mut page.0 as u64;
        // SAFETY: `address` is the page above, alive for the calls.
        unsafe {
            clear_upcall(address, 2);
            clear_upcall(address, abi::hypercall::MAX_VCPUS);
        }
        assert_eq!((page.0.upcall_pending, page.0.upcall_pending_vcpu), (1, [1, 0, 1, 1, 1, 1, 1]));
        // SAFETY: as above.
        unsafe { clear_upcall(address, 0) };
        assert_eq!(page.0.upcall_pending, 0);
    }
}
