//! Atomic access to a domain's event words in Xen's 2-level layout (ABI
//! 1.0): the shared-info page the domain placed (`abi::xen::shared_info`),
//! shared with the hypervisor: locked instructions on raw addresses, never
//! Rust references into the page. `page` below is the shared-info page's
//! address; Mica's 256 ports are bits of its first four pending words.
//!
//! hv raises a port by setting its pending bit, then (unless the port is
//! masked) the bit of its word in the notified vCPU's `evtchn_pending_sel`,
//! then that vCPU's `evtchn_upcall_pending`; it does nothing more for a
//! port whose selector bit is still set. So whoever takes events (the
//! upcall handler, or a vCPU that polls) clears the flag and the selector
//! first ([`clear_upcall`]), then takes the pending bits: an event raised
//! in between finds the selector clear and wakes it again.

use core::mem::offset_of;
use core::sync::atomic::{AtomicU64, Ordering};

use abi::event::BITMAP_WORDS;
use abi::xen::shared_info::{SharedInfo, VcpuInfo, XEN_LEGACY_MAX_VCPUS};

/// Byte offset of the pending bitmap in the shared-info page.
const PENDING: u64 = offset_of!(SharedInfo, evtchn_pending) as u64;

/// The pending word of `index` (in the page the caller vouches for).
///
/// # Safety
/// `page` must be this domain's shared-info page; `index < BITMAP_WORDS`.
unsafe fn pending_word<'a>(page: u64, index: usize) -> &'a AtomicU64 {
    // SAFETY: the word lies inside the shared-info page the caller vouches
    // for, 8-byte aligned; hv changes it only with locked instructions.
    unsafe { AtomicU64::from_ptr((page + PENDING + index as u64 * 8) as *mut u64) }
}

/// Tests and clears the pending bit of `port` (LOCK BTR).
///
/// # Safety
/// `page` must be the address of this domain's shared-info page.
pub unsafe fn take_pending(page: u64, port: u32) -> bool {
    if port as usize >= BITMAP_WORDS * 64 {
        return false;
    }
    let word = page + PENDING + (port / 64) as u64 * 8;
    let was_set: u8;
    // SAFETY: the word lies inside the page the caller vouches for;
    // LOCK BTR is atomic against the hypervisor setting bits.
    unsafe {
        core::arch::asm!("lock btr qword ptr [{word}], {bit}", "setc {was_set}", word = in(reg) word,
            bit = in(reg) (port % 64) as u64, was_set = out(reg_byte) was_set, options(nostack));
    }
    was_set != 0
}

/// Byte offset of the mask bitmap in the shared-info page.
const MASK: u64 = offset_of!(SharedInfo, evtchn_mask) as u64;

/// Masks `port` (LOCK BTS on its bit of `evtchn_mask`), as a Xen guest
/// masks a port: in the page, with no hypercall. hv then marks it pending
/// without an upcall; `EVTCHNOP_unmask` (or clearing the bit) undoes it.
///
/// # Safety
/// `page` must be the address of this domain's shared-info page.
pub unsafe fn mask(page: u64, port: u32) {
    if port as usize >= BITMAP_WORDS * 64 {
        return;
    }
    let word = page + MASK + (port / 64) as u64 * 8;
    // SAFETY: the word lies inside the page the caller vouches for; LOCK
    // BTS is atomic against the hypervisor reading it.
    unsafe {
        core::arch::asm!("lock bts qword ptr [{word}], {bit}", word = in(reg) word, bit = in(reg) (port % 64) as u64,
            options(nostack));
    }
}

/// Takes every pending bit at once (an atomic swap with zero, word by word).
///
/// # Safety
/// As for [`take_pending`].
pub unsafe fn take_all_pending(page: u64) -> [u64; BITMAP_WORDS] {
    // SAFETY: passed on; each index is below BITMAP_WORDS.
    core::array::from_fn(|index| unsafe { pending_word(page, index) }.swap(0, Ordering::SeqCst))
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
        if wanted != 0 {
            // SAFETY: passed on; index < BITMAP_WORDS.
            *bits = unsafe { pending_word(page, index) }.fetch_and(!wanted, Ordering::SeqCst) & wanted;
        }
    }
    taken
}

/// Clears vCPU `vcpu`'s `evtchn_upcall_pending` and `evtchn_pending_sel`
/// in its `vcpu_info` slot of the shared-info page, each atomically, so
/// that hv raises it again for the next event (see the module docs). Call
/// it before taking pending bits. Does nothing for a vCPU beyond the
/// page's slots.
///
/// # Safety
/// As for [`take_pending`].
pub unsafe fn clear_upcall(page: u64, vcpu: u32) {
    if vcpu as usize >= XEN_LEGACY_MAX_VCPUS {
        return;
    }
    let info = page + (offset_of!(SharedInfo, vcpu_info) + vcpu as usize * size_of::<VcpuInfo>()) as u64;
    // `evtchn_upcall_pending` is byte 0 of the first word (byte 1 is the
    // guest's own upcall mask, kept); the selector is the second word.
    let flag = info + offset_of!(VcpuInfo, evtchn_upcall_pending) as u64;
    let selector = info + offset_of!(VcpuInfo, evtchn_pending_sel) as u64;
    // SAFETY: both words lie inside the page the caller vouches for,
    // 8-byte aligned; hv sets their bits with locked instructions.
    unsafe {
        AtomicU64::from_ptr(flag as *mut u64).fetch_and(!0xff, Ordering::SeqCst);
        AtomicU64::from_ptr(selector as *mut u64).swap(0, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shared-info page in host memory, aligned as a real one.
    #[repr(C, align(4096))]
    struct Page([u64; 512]);

    const PENDING_WORD: usize = 2048 / 8;

    #[test]
    fn take_pending_of_takes_only_the_named_ports() {
        let mut page = Box::new(Page([0; 512]));
        page.0[PENDING_WORD..PENDING_WORD + 4].copy_from_slice(&[0b1011, 1 << 63, 0, 5]);
        let address = &raw mut page.0 as u64;
        let mut ports = [0u64; BITMAP_WORDS];
        ports[0] = 0b0011 | 1 << 7;
        ports[1] = 1 << 63;
        // SAFETY: `address` is the page above, alive for the call.
        let taken = unsafe { take_pending_of(address, &ports) };
        assert_eq!(taken, [0b0011, 1 << 63, 0, 0], "the named ports that were pending");
        assert_eq!(page.0[PENDING_WORD..PENDING_WORD + 4], [0b1000, 0, 0, 5], "the others stay pending");
        // SAFETY: as above.
        assert_eq!(unsafe { take_pending_of(address, &ports) }, [0; BITMAP_WORDS], "taken once");
        // SAFETY: as above.
        assert!(unsafe { take_pending(address, 3) });
        // SAFETY: as above.
        assert_eq!(unsafe { take_all_pending(address) }, [0, 0, 0, 5]);
        assert_eq!(page.0[PENDING_WORD..PENDING_WORD + 4], [0; 4]);
    }

    #[test]
    fn clear_upcall_clears_one_vcpus_flag_and_selector_in_xens_layout() {
        let mut page = Box::new(Page([0; 512]));
        // vCPU v's vcpu_info at 64 v: the flag in byte 0, the guest's mask
        // in byte 1, the selector at +8.
        for vcpu in 0..4 {
            page.0[vcpu * 8] = 0x0101;
            page.0[vcpu * 8 + 1] = 0b11;
        }
        let address = &raw mut page.0 as u64;
        // SAFETY: `address` is the page above, alive for the calls.
        unsafe {
            clear_upcall(address, 2);
            clear_upcall(address, XEN_LEGACY_MAX_VCPUS as u32);
        }
        assert_eq!((page.0[16], page.0[17]), (0x0100, 0), "flag and selector cleared, the mask kept");
        assert_eq!((page.0[0], page.0[1], page.0[24], page.0[25]), (0x0101, 0b11, 0x0101, 0b11), "others untouched");
    }
}
