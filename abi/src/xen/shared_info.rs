//! The shared-info page, the per-vCPU `vcpu_info`, and the pvclock.
//!
//! # Where the structures live
//! A PVH guest has no shared-info page until it asks for one: it picks a
//! guest frame and calls `XENMEM_add_to_physmap` with
//! [`crate::xen::memory::XENMAPSPACE_SHARED_INFO`]; from then on that frame
//! is the hypervisor's [`SharedInfo`] (the RAM page that was there is
//! gone until the mapping is removed). [`SharedInfo`] is 3136 bytes at the
//! start of the page; the rest of the page is unused.
//!
//! vCPUs 0..=31 find their [`VcpuInfo`] in [`SharedInfo::vcpu_info`].
//! A vCPU may instead (and from 32 on, must) place it anywhere in its own
//! memory with `VCPUOP_register_vcpu_info`
//! ([`crate::xen::vcpu::VcpuRegisterVcpuInfo`]); Linux does this for every
//! vCPU and panics if it fails. After that the legacy slot is no longer
//! updated.
//!
//! # Who writes what
//! - [`VcpuInfo::evtchn_upcall_pending`] and
//!   [`VcpuInfo::evtchn_pending_sel`]: set by the hypervisor, cleared by
//!   the guest (see [`crate::xen::event_channel`] for the protocol).
//! - [`VcpuInfo::time`] and the wall clock (`wc_*`): the hypervisor only,
//!   under the version protocol below.
//! - [`SharedInfo::evtchn_pending`]: bits set by the hypervisor (atomically)
//!   and cleared by the guest (atomically).
//! - [`SharedInfo::evtchn_mask`]: the guest only; the hypervisor reads it.
//! - [`ArchSharedInfo`] and [`ArchVcpuInfo`]: PV only; the hypervisor
//!   neither reads nor writes them for a PVH guest.
//!
//! # Time (pvclock)
//! Xen's *system time* is nanoseconds since the hypervisor started,
//! the same clock on every vCPU. Each vCPU's [`VcpuTimeInfo`] gives a
//! sample of it, `system_time`, taken at TSC value `tsc_timestamp`, and the
//! scale from TSC ticks to nanoseconds; a reader computes the present time
//! as `system_time + scale(rdtsc() - tsc_timestamp)` ([`pvclock_scale_delta`],
//! [`VcpuTimeInfo::system_time_at`]). Timers
//! (`VCPUOP_set_singleshot_timer`) are given in the same system time.
//!
//! Updates follow a sequence count: the hypervisor increments `version`
//! (making it odd), writes the other fields, then increments it again
//! (even). A reader reads `version`, the fields, then `version` again, and
//! retries unless both reads are equal and even ([`read_is_consistent`]).
//! The wall clock (`wc_sec_hi:wc_sec`, `wc_nsec`: the Unix time at system
//! time 0) follows the same rule with `wc_version`.

use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// vCPUs that have a slot in [`SharedInfo::vcpu_info`].
pub const XEN_LEGACY_MAX_VCPUS: usize = 32;

/// Words of 64 bits in each event bitmap of [`SharedInfo`].
pub const EVTCHN_WORDS: usize = 64;

/// One vCPU's time parameters (`vcpu_time_info`). Written by the
/// hypervisor, read by the guest.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VcpuTimeInfo {
    /// Update counter: odd while an update is in progress.
    pub version: u32,
    /// Padding, zero.
    pub pad0: u32,
    /// The TSC value at which `system_time` was sampled.
    pub tsc_timestamp: u64,
    /// System time in nanoseconds at `tsc_timestamp`.
    pub system_time: u64,
    /// Multiplier from (shifted) TSC ticks to nanoseconds, a 32.32 fixed
    /// point fraction: see [`pvclock_scale_delta`].
    pub tsc_to_system_mul: u32,
    /// Binary shift applied to a TSC delta before the multiplication:
    /// left if positive, right if negative.
    pub tsc_shift: i8,
    /// [`PVCLOCK_TSC_STABLE_BIT`], [`PVCLOCK_GUEST_STOPPED`].
    pub flags: u8,
    /// Padding, zero.
    pub pad1: [u8; 2],
}

const _: () = assert!(size_of::<VcpuTimeInfo>() == 32);
const _: () = assert!(offset_of!(VcpuTimeInfo, version) == 0);
const _: () = assert!(offset_of!(VcpuTimeInfo, pad0) == 4);
const _: () = assert!(offset_of!(VcpuTimeInfo, tsc_timestamp) == 8);
const _: () = assert!(offset_of!(VcpuTimeInfo, system_time) == 16);
const _: () = assert!(offset_of!(VcpuTimeInfo, tsc_to_system_mul) == 24);
const _: () = assert!(offset_of!(VcpuTimeInfo, tsc_shift) == 28);
const _: () = assert!(offset_of!(VcpuTimeInfo, flags) == 29);
const _: () = assert!(offset_of!(VcpuTimeInfo, pad1) == 30);

/// [`VcpuTimeInfo::flags`]: the TSC is synchronised across all physical
/// CPUs, so readings taken on different vCPUs are comparable without a
/// global maximum. Mica sets it only when its TSC is invariant and
/// synchronised.
pub const PVCLOCK_TSC_STABLE_BIT: u8 = 1 << 0;
/// [`VcpuTimeInfo::flags`]: the guest was stopped (paused) since the last
/// update; a watchdog should not count the gap. Mica does not set it.
pub const PVCLOCK_GUEST_STOPPED: u8 = 1 << 1;

/// Nanoseconds for `tsc_delta` TSC ticks at the scale (`mul`, `shift`):
/// `((tsc_delta << shift) * mul) >> 32`, with a right shift for a negative
/// `shift`, the product taken in 96 bits so it never overflows and the
/// result cut to 64 bits.
pub const fn pvclock_scale_delta(tsc_delta: u64, mul: u32, shift: i8) -> u64 {
    let shifted =
        if shift >= 0 { tsc_delta << (shift as u32 & 63) } else { tsc_delta >> ((shift as i32).unsigned_abs() & 63) };
    ((shifted as u128 * mul as u128) >> 32) as u64
}

/// The scale (`tsc_to_system_mul`, `tsc_shift`) for a TSC of `tsc_hz`
/// ticks per second, chosen so the multiplier is as precise as 32 bits
/// allow (it lands in `2^31..2^32`). `None` for 0 Hz or a rate so far
/// from 1 GHz that no shift in `-31..=31` fits.
///
/// Xen documents the inverse: frequency = `((10^9 << 32) / mul) >> shift`.
pub const fn pvclock_scale_for_frequency(tsc_hz: u64) -> Option<(u32, i8)> {
    if tsc_hz == 0 {
        return None;
    }
    let mut shift: i32 = -31;
    while shift <= 31 {
        // mul = 10^9 * 2^(32 - shift) / tsc_hz; 32 - shift is 1..=63.
        let mul = (1_000_000_000u128 << (32 - shift) as u32) / tsc_hz as u128;
        if mul < 1 << 32 {
            if mul == 0 {
                return None;
            }
            return Some((mul as u32, shift as i8));
        }
        shift += 1;
    }
    None
}

/// Whether a read bracketed by the version values `before` and `after` saw
/// a consistent snapshot: both equal and even.
pub const fn read_is_consistent(before: u32, after: u32) -> bool {
    before == after && before & 1 == 0
}

impl VcpuTimeInfo {
    /// System time in nanoseconds at TSC value `tsc`, from a consistent
    /// snapshot of this structure. A `tsc` before `tsc_timestamp` (a
    /// guest that read its TSC first) wraps, as in every pvclock reader;
    /// callers read the TSC after the snapshot's first version read.
    pub const fn system_time_at(&self, tsc: u64) -> u64 {
        let delta = tsc.wrapping_sub(self.tsc_timestamp);
        self.system_time.wrapping_add(pvclock_scale_delta(delta, self.tsc_to_system_mul, self.tsc_shift))
    }
}

/// x86_64 part of [`VcpuInfo`] (`arch_vcpu_info`). PV only: a PV guest's
/// CR2 on a page fault. Zero and unused for PVH.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ArchVcpuInfo {
    /// PV only: the faulting address of the last page fault.
    pub cr2: u64,
    /// Padding, zero.
    pub pad: u64,
}

const _: () = assert!(size_of::<ArchVcpuInfo>() == 16);
const _: () = assert!(offset_of!(ArchVcpuInfo, cr2) == 0);
const _: () = assert!(offset_of!(ArchVcpuInfo, pad) == 8);

/// One vCPU's event and time state (`vcpu_info`), 64 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VcpuInfo {
    /// Non-zero when events are pending for this vCPU. Set to 1 by the
    /// hypervisor before it raises the upcall; cleared by the guest
    /// *before* it scans `evtchn_pending_sel` (see
    /// [`crate::xen::event_channel`]).
    pub evtchn_upcall_pending: u8,
    /// PV only: non-zero blocks upcalls. A PVH guest masks upcalls with
    /// RFLAGS.IF instead; Mica neither reads nor writes this byte for it.
    pub evtchn_upcall_mask: u8,
    /// Padding (implicit in C), zero.
    pub _pad0: [u8; 6],
    /// Selector: bit `w` set means word `w` of
    /// [`SharedInfo::evtchn_pending`] may have a newly pending, unmasked
    /// port for this vCPU. Bits set by the hypervisor with an atomic OR,
    /// taken by the guest with an atomic exchange.
    pub evtchn_pending_sel: u64,
    /// PV only.
    pub arch: ArchVcpuInfo,
    /// This vCPU's pvclock.
    pub time: VcpuTimeInfo,
}

const _: () = assert!(size_of::<VcpuInfo>() == 64);
const _: () = assert!(offset_of!(VcpuInfo, evtchn_upcall_pending) == 0);
const _: () = assert!(offset_of!(VcpuInfo, evtchn_upcall_mask) == 1);
const _: () = assert!(offset_of!(VcpuInfo, _pad0) == 2);
const _: () = assert!(offset_of!(VcpuInfo, evtchn_pending_sel) == 8);
const _: () = assert!(offset_of!(VcpuInfo, arch) == 16);
const _: () = assert!(offset_of!(VcpuInfo, time) == 32);

/// x86_64 part of [`SharedInfo`] (`arch_shared_info`). PV only (the PV
/// physical-to-machine table and NMI reason); zero and unused for PVH.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ArchSharedInfo {
    /// PV only: entries in the guest's physical-to-machine table.
    pub max_pfn: u64,
    /// PV only: frame of the table's top-level frame list.
    pub pfn_to_mfn_frame_list_list: u64,
    /// PV only: reason bits of the last NMI.
    pub nmi_reason: u64,
    /// PV only: CR3 of the address space that maps the linear table.
    pub p2m_cr3: u64,
    /// PV only: virtual address of the linear table.
    pub p2m_vaddr: u64,
    /// PV only: update counter of the linear table.
    pub p2m_generation: u64,
}

const _: () = assert!(size_of::<ArchSharedInfo>() == 48);
const _: () = assert!(offset_of!(ArchSharedInfo, max_pfn) == 0);
const _: () = assert!(offset_of!(ArchSharedInfo, pfn_to_mfn_frame_list_list) == 8);
const _: () = assert!(offset_of!(ArchSharedInfo, nmi_reason) == 16);
const _: () = assert!(offset_of!(ArchSharedInfo, p2m_cr3) == 24);
const _: () = assert!(offset_of!(ArchSharedInfo, p2m_vaddr) == 32);
const _: () = assert!(offset_of!(ArchSharedInfo, p2m_generation) == 40);

/// The shared-info page (`shared_info`), x86_64 layout. See the module
/// documentation for who writes which field.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SharedInfo {
    /// The legacy `vcpu_info` slots of vCPUs 0..=31.
    pub vcpu_info: [VcpuInfo; XEN_LEGACY_MAX_VCPUS],
    /// Pending bits of the 2-level event channels: port `p` is bit
    /// `p % 64` of word `p / 64`.
    pub evtchn_pending: [u64; EVTCHN_WORDS],
    /// Mask bits, same layout: a set bit keeps its port from raising an
    /// upcall (it still becomes pending).
    pub evtchn_mask: [u64; EVTCHN_WORDS],
    /// Update counter of the wall clock (as [`VcpuTimeInfo::version`]).
    pub wc_version: u32,
    /// Unix time at system time 0: seconds, low 32 bits.
    pub wc_sec: u32,
    /// Unix time at system time 0: nanoseconds (below 10^9).
    pub wc_nsec: u32,
    /// Unix time at system time 0: seconds, high 32 bits.
    pub wc_sec_hi: u32,
    /// PV only.
    pub arch: ArchSharedInfo,
}

/// Bytes of [`SharedInfo`] used at the start of its page.
pub const SHARED_INFO_SIZE: usize = 3136;

const _: () = assert!(size_of::<SharedInfo>() == SHARED_INFO_SIZE);
const _: () = assert!(SHARED_INFO_SIZE <= super::XEN_PAGE_SIZE);
const _: () = assert!(offset_of!(SharedInfo, vcpu_info) == 0);
const _: () = assert!(offset_of!(SharedInfo, evtchn_pending) == 2048);
const _: () = assert!(offset_of!(SharedInfo, evtchn_mask) == 2560);
const _: () = assert!(offset_of!(SharedInfo, wc_version) == 3072);
const _: () = assert!(offset_of!(SharedInfo, wc_sec) == 3076);
const _: () = assert!(offset_of!(SharedInfo, wc_nsec) == 3080);
const _: () = assert!(offset_of!(SharedInfo, wc_sec_hi) == 3084);
const _: () = assert!(offset_of!(SharedInfo, arch) == 3088);

impl SharedInfo {
    /// A page with every field zero: what the hypervisor starts from
    /// (every port unmasked and not pending, wall clock unset).
    pub const fn zeroed() -> SharedInfo {
        const EMPTY_TIME: VcpuTimeInfo = VcpuTimeInfo {
            version: 0,
            pad0: 0,
            tsc_timestamp: 0,
            system_time: 0,
            tsc_to_system_mul: 0,
            tsc_shift: 0,
            flags: 0,
            pad1: [0; 2],
        };
        const EMPTY_VCPU: VcpuInfo = VcpuInfo {
            evtchn_upcall_pending: 0,
            evtchn_upcall_mask: 0,
            _pad0: [0; 6],
            evtchn_pending_sel: 0,
            arch: ArchVcpuInfo { cr2: 0, pad: 0 },
            time: EMPTY_TIME,
        };
        SharedInfo {
            vcpu_info: [EMPTY_VCPU; XEN_LEGACY_MAX_VCPUS],
            evtchn_pending: [0; EVTCHN_WORDS],
            evtchn_mask: [0; EVTCHN_WORDS],
            wc_version: 0,
            wc_sec: 0,
            wc_nsec: 0,
            wc_sec_hi: 0,
            arch: ArchSharedInfo {
                max_pfn: 0,
                pfn_to_mfn_frame_list_list: 0,
                nmi_reason: 0,
                p2m_cr3: 0,
                p2m_vaddr: 0,
                p2m_generation: 0,
            },
        }
    }

    /// The wall clock's seconds, both halves joined.
    pub const fn wallclock_seconds(&self) -> u64 {
        (self.wc_sec_hi as u64) << 32 | self.wc_sec as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_delta_hand_computed() {
        // mul = 0.5, no shift: half.
        assert_eq!(pvclock_scale_delta(1000, 0x8000_0000, 0), 500);
        // mul = 0.5, shift left 1: identity (a 1 GHz TSC).
        assert_eq!(pvclock_scale_delta(1000, 0x8000_0000, 1), 1000);
        // mul = 0.75, shift right 2: 4000 / 4 * 0.75.
        assert_eq!(pvclock_scale_delta(4000, 0xc000_0000, -2), 750);
        // The product needs more than 64 bits: 2^48 * (2^32 - 1) >> 32.
        assert_eq!(pvclock_scale_delta(1 << 40, u32::MAX, 8), (1 << 48) - (1 << 16));
        // Truncation: 1 tick at 0.5 is 0 ns.
        assert_eq!(pvclock_scale_delta(1, 0x8000_0000, 0), 0);
        assert_eq!(pvclock_scale_delta(0, u32::MAX, 31), 0);
    }

    #[test]
    fn scale_for_frequency() {
        assert_eq!(pvclock_scale_for_frequency(1_000_000_000), Some((0x8000_0000, 1)));
        assert_eq!(pvclock_scale_for_frequency(2_000_000_000), Some((0x8000_0000, 0)));
        // 3 GHz: 2^33 / 3, shifted right once.
        assert_eq!(pvclock_scale_for_frequency(3_000_000_000), Some((2_863_311_530, -1)));
        assert_eq!(pvclock_scale_for_frequency(0), None);
        // One second of ticks is one second, to within a nanosecond.
        for hz in [1_000_000u64, 33_333_333, 1_000_000_000, 2_400_000_000, 3_000_000_000, 5_000_000_000] {
            let (mul, shift) = pvclock_scale_for_frequency(hz).unwrap();
            assert!(mul >= 1 << 31, "{hz}: most precise multiplier");
            let ns = pvclock_scale_delta(hz, mul, shift);
            assert!((999_999_998..=1_000_000_000).contains(&ns), "{hz} Hz gave {ns} ns");
            // Xen's inverse formula gives the frequency back.
            let back = if shift >= 0 {
                ((1_000_000_000u128 << 32) / mul as u128) >> shift
            } else {
                ((1_000_000_000u128 << 32) / mul as u128) << -shift
            };
            assert!((back as i128 - hz as i128).abs() <= hz as i128 / 1_000_000 + 2, "{hz} vs {back}");
        }
    }

    #[test]
    fn system_time_from_a_sample() {
        let (mul, shift) = pvclock_scale_for_frequency(2_000_000_000).unwrap();
        let time = VcpuTimeInfo {
            version: 2,
            tsc_timestamp: 10_000,
            system_time: 5_000,
            tsc_to_system_mul: mul,
            tsc_shift: shift,
            ..VcpuTimeInfo::default()
        };
        assert_eq!(time.system_time_at(10_000), 5_000);
        assert_eq!(time.system_time_at(12_000), 6_000);
        // TSC wrapping past 2^64 still counts forward.
        let wrapped = VcpuTimeInfo { tsc_timestamp: u64::MAX - 999, ..time };
        assert_eq!(wrapped.system_time_at(1_000), 6_000);
    }

    #[test]
    fn version_protocol() {
        assert!(read_is_consistent(4, 4));
        assert!(!read_is_consistent(5, 5), "update in progress");
        assert!(!read_is_consistent(4, 6), "updated during the read");
        assert!(read_is_consistent(u32::MAX - 1, u32::MAX - 1));
    }

    #[test]
    fn zeroed_page() {
        let mut page = SharedInfo::zeroed();
        assert!(page.evtchn_mask.iter().all(|&w| w == 0));
        page.wc_sec = 7;
        page.wc_sec_hi = 1;
        assert_eq!(page.wallclock_seconds(), (1 << 32) + 7);
    }
}
