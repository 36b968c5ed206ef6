//! `vcpu_op` ([`super::Hypercall::VcpuOp`]): per-vCPU services: where the
//! `vcpu_info` and runstate areas live, the single-shot timer, starting
//! and stopping vCPUs.
//!
//! `rdi` is a [`VcpuOp`], `rsi` the target vCPU's id (of the caller's
//! domain), `rdx` the address of the argument (or 0). Every operation
//! fails with `-ENOENT` when the domain has no such vCPU, besides the
//! errors listed for it (and `-EFAULT`, `-ENOSYS`).
//!
//! The timers run on Xen system time (the pvclock's nanoseconds, see
//! [`super::shared_info`]); when one fires, the vCPU's
//! [`super::event_channel::Virq::Timer`] port becomes pending.

use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::numbered_enum;

numbered_enum! {
    /// vCPU operations (`VCPUOP_*`), in `rdi`. Mica offers those whose
    /// documentation does not say otherwise; the rest return `-ENOSYS`.
    pub enum VcpuOp: u32 {
        /// Gives a vCPU that has never run its first register state
        /// ([`VcpuHvmContext32`] or [`VcpuHvmContext64`], chosen by their
        /// first word). Errors: `-EEXIST` the vCPU was already initialised;
        /// `-EINVAL` an unknown mode or an inconsistent register state.
        /// Linux PVH does not use it: it starts its vCPUs with INIT and
        /// SIPI through the local APIC.
        Initialise = 0,
        /// Starts an initialised vCPU that is down. Errors: `-EINVAL` the
        /// vCPU was never initialised. Starting one that runs does nothing.
        Up = 1,
        /// Stops a vCPU (it keeps its state). Stopping the domain's last
        /// running vCPU shuts the domain down (power-off).
        Down = 2,
        /// Returns 1 in `rax` if the vCPU is up, else 0.
        IsUp = 3,
        /// Writes the vCPU's [`VcpuRunstateInfo`].
        GetRunstateInfo = 4,
        /// Registers a [`VcpuRunstateInfo`] the hypervisor keeps up to date
        /// ([`VcpuRegisterRunstateMemoryArea`]); address 0 unregisters.
        /// Linux requires success.
        RegisterRunstateMemoryArea = 5,
        /// Starts a periodic timer ([`VcpuSetPeriodicTimer`]). Errors:
        /// `-EINVAL` a period below 1 ms. Not offered by Mica (`-ENOSYS`).
        SetPeriodicTimer = 6,
        /// Stops the periodic timer. Always succeeds (Linux requires it:
        /// it stops the timer Xen starts by default).
        StopPeriodicTimer = 7,
        /// Arms the calling vCPU's single-shot timer
        /// ([`VcpuSetSingleshotTimer`]), replacing an armed one; a time
        /// already past fires at once. Errors: `-EINVAL` a vCPU other
        /// than the caller.
        SetSingleshotTimer = 8,
        /// Disarms the calling vCPU's single-shot timer. Errors: `-EINVAL`
        /// a vCPU other than the caller.
        StopSingleshotTimer = 9,
        /// Moves the vCPU's [`super::shared_info::VcpuInfo`] into guest
        /// memory ([`VcpuRegisterVcpuInfo`]); its contents carry over.
        /// Errors: `-EINVAL` a frame number too large; `-EBUSY` already
        /// registered (once per vCPU); `-ENXIO` the 64 bytes cross a page
        /// or are not 8-byte aligned; `-EINVAL` or `-EACCES` the frame is
        /// not writable RAM of the domain. Linux panics if it fails.
        RegisterVcpuInfo = 10,
        /// Sends an NMI to the vCPU. Not offered.
        SendNmi = 11,
        /// The physical CPU's APIC and ACPI ids (control domain). Not
        /// offered.
        GetPhysid = 12,
        /// Registers a second copy of the vCPU's
        /// [`super::shared_info::VcpuTimeInfo`] the hypervisor keeps up to
        /// date ([`VcpuRegisterTimeMemoryArea`]), for user-space clock
        /// reads. Optional for Linux; Mica answers `-ENOSYS`.
        RegisterVcpuTimeMemoryArea = 13,
        /// [`VcpuOp::RegisterRunstateMemoryArea`] with a guest-physical
        /// address. Not offered.
        RegisterRunstatePhysArea = 14,
        /// [`VcpuOp::RegisterVcpuTimeMemoryArea`] with a guest-physical
        /// address. Not offered.
        RegisterVcpuTimePhysArea = 15,
    }
}

/// A vCPU's time accounting (`vcpu_runstate_info`). Written by the
/// hypervisor.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VcpuRunstateInfo {
    /// The current state, a `RUNSTATE_*` value.
    pub state: i32,
    /// Padding (implicit in C), zero.
    pub _pad0: u32,
    /// System time (ns) when the current state was entered; bit 63
    /// ([`XEN_RUNSTATE_UPDATE`]) may mark an update in progress.
    pub state_entry_time: u64,
    /// Nanoseconds spent in each state, indexed by `RUNSTATE_*`; their sum
    /// is the system time since the vCPU was created.
    pub time: [u64; 4],
}

const _: () = assert!(size_of::<VcpuRunstateInfo>() == 48);
const _: () = assert!(offset_of!(VcpuRunstateInfo, state) == 0);
const _: () = assert!(offset_of!(VcpuRunstateInfo, state_entry_time) == 8);
const _: () = assert!(offset_of!(VcpuRunstateInfo, time) == 16);

/// Runstate: running on a physical CPU.
pub const RUNSTATE_RUNNING: i32 = 0;
/// Runstate: ready to run but not running (waiting for a CPU).
pub const RUNSTATE_RUNNABLE: i32 = 1;
/// Runstate: blocked (idle, waiting for an event).
pub const RUNSTATE_BLOCKED: i32 = 2;
/// Runstate: down or paused, not waiting for an event.
pub const RUNSTATE_OFFLINE: i32 = 3;
/// Bit of `state_entry_time` set while the hypervisor updates the area,
/// when the guest enabled this with the `runstate_update_flag` VM assist
/// (not offered by Mica).
pub const XEN_RUNSTATE_UPDATE: u64 = 1 << 63;

/// Argument of [`VcpuOp::RegisterRunstateMemoryArea`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VcpuRegisterRunstateMemoryArea {
    /// Guest-virtual address of a [`VcpuRunstateInfo`] (Xen's union of a
    /// handle, a pointer and a 64-bit value: all three are this one word).
    /// Xen writes it through the page tables in use when it updates, so
    /// it must be mapped in every address space the vCPU runs in (Linux
    /// gives a kernel address). 0 unregisters.
    pub addr: u64,
}

const _: () = assert!(size_of::<VcpuRegisterRunstateMemoryArea>() == 8);

/// Argument of [`VcpuOp::SetPeriodicTimer`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VcpuSetPeriodicTimer {
    /// The period in nanoseconds, at least 1 ms.
    pub period_ns: u64,
}

const _: () = assert!(size_of::<VcpuSetPeriodicTimer>() == 8);

/// Argument of [`VcpuOp::SetSingleshotTimer`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VcpuSetSingleshotTimer {
    /// When to fire, in absolute system time (ns).
    pub timeout_abs_ns: u64,
    /// `VCPU_SSHOTTMR_*`.
    pub flags: u32,
    /// Padding (implicit in C), zero.
    pub _pad0: u32,
}

const _: () = assert!(size_of::<VcpuSetSingleshotTimer>() == 16);
const _: () = assert!(offset_of!(VcpuSetSingleshotTimer, timeout_abs_ns) == 0);
const _: () = assert!(offset_of!(VcpuSetSingleshotTimer, flags) == 8);

/// [`VcpuSetSingleshotTimer::flags`]: the guest asks for `-ETIME` if the
/// time is already past. The hypervisor may ignore it; present Xen does,
/// and so does Mica (a past time fires at once and the call succeeds).
pub const VCPU_SSHOTTMR_FUTURE: u32 = 1 << 0;

/// Argument of [`VcpuOp::RegisterVcpuInfo`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VcpuRegisterVcpuInfo {
    /// Guest frame number of the page (for a PVH guest a guest frame, not
    /// a machine frame, despite the name).
    pub mfn: u64,
    /// Byte offset of the [`super::shared_info::VcpuInfo`] in the page:
    /// 8-byte aligned, at most 4096 - 64.
    pub offset: u32,
    /// Reserved, zero.
    pub rsvd: u32,
}

const _: () = assert!(size_of::<VcpuRegisterVcpuInfo>() == 16);
const _: () = assert!(offset_of!(VcpuRegisterVcpuInfo, mfn) == 0);
const _: () = assert!(offset_of!(VcpuRegisterVcpuInfo, offset) == 8);
const _: () = assert!(offset_of!(VcpuRegisterVcpuInfo, rsvd) == 12);

impl VcpuRegisterVcpuInfo {
    /// Whether `offset` places a 64-byte, 8-byte aligned `vcpu_info`
    /// inside the page (else Xen answers `-ENXIO`).
    pub const fn offset_is_valid(&self) -> bool {
        self.offset.is_multiple_of(8)
            && self.offset as usize + size_of::<super::shared_info::VcpuInfo>() <= super::XEN_PAGE_SIZE
    }
}

/// Argument of [`VcpuOp::GetPhysid`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VcpuGetPhysid {
    /// OUT: the APIC id in bits 0..32, the ACPI id in bits 32..64.
    pub phys_id: u64,
}

const _: () = assert!(size_of::<VcpuGetPhysid>() == 8);

/// Argument of [`VcpuOp::RegisterVcpuTimeMemoryArea`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VcpuRegisterTimeMemoryArea {
    /// Guest-virtual address of a [`super::shared_info::VcpuTimeInfo`]
    /// (same rules as [`VcpuRegisterRunstateMemoryArea::addr`]).
    pub addr: u64,
}

const _: () = assert!(size_of::<VcpuRegisterTimeMemoryArea>() == 8);

/// [`VcpuHvmContext32::mode`]: the 32-bit register set.
pub const VCPU_HVM_MODE_32B: u32 = 0;
/// [`VcpuHvmContext64::mode`]: the 64-bit register set.
pub const VCPU_HVM_MODE_64B: u32 = 1;

/// 32-bit register state of [`VcpuOp::Initialise`] (`vcpu_hvm_x86_32`).
///
/// Segment bases, limits and access rights are given explicitly. An
/// access-rights field (`*_ar`) packs the descriptor's attribute bits
/// (SDM Vol. 3 3.4.5): bits 0..4 type, bit 4 S, bits 5..7 DPL, bit 7 P,
/// bit 8 AVL, bit 9 L, bit 10 D/B, bit 11 G; bits 12..16 are zero. That
/// is descriptor bits 40..48 in bits 0..8 and bits 52..56 in bits 8..12.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VcpuHvmX86_32 {
    /// EAX.
    pub eax: u32,
    /// ECX.
    pub ecx: u32,
    /// EDX.
    pub edx: u32,
    /// EBX.
    pub ebx: u32,
    /// ESP.
    pub esp: u32,
    /// EBP.
    pub ebp: u32,
    /// ESI.
    pub esi: u32,
    /// EDI.
    pub edi: u32,
    /// EIP.
    pub eip: u32,
    /// EFLAGS.
    pub eflags: u32,
    /// CR0.
    pub cr0: u32,
    /// CR3.
    pub cr3: u32,
    /// CR4.
    pub cr4: u32,
    /// Padding, zero.
    pub pad1: u32,
    /// EFER: only NXE (paging with NX) or LME/LMA (compatibility mode).
    pub efer: u64,
    /// CS base.
    pub cs_base: u32,
    /// DS base.
    pub ds_base: u32,
    /// SS base.
    pub ss_base: u32,
    /// ES base.
    pub es_base: u32,
    /// TR base.
    pub tr_base: u32,
    /// CS limit.
    pub cs_limit: u32,
    /// DS limit.
    pub ds_limit: u32,
    /// SS limit.
    pub ss_limit: u32,
    /// ES limit.
    pub es_limit: u32,
    /// TR limit.
    pub tr_limit: u32,
    /// CS access rights.
    pub cs_ar: u16,
    /// DS access rights.
    pub ds_ar: u16,
    /// SS access rights.
    pub ss_ar: u16,
    /// ES access rights.
    pub es_ar: u16,
    /// TR access rights.
    pub tr_ar: u16,
    /// Padding, zero.
    pub pad2: [u16; 3],
}

const _: () = assert!(size_of::<VcpuHvmX86_32>() == 120);
const _: () = assert!(offset_of!(VcpuHvmX86_32, eax) == 0);
const _: () = assert!(offset_of!(VcpuHvmX86_32, eip) == 32);
const _: () = assert!(offset_of!(VcpuHvmX86_32, eflags) == 36);
const _: () = assert!(offset_of!(VcpuHvmX86_32, cr0) == 40);
const _: () = assert!(offset_of!(VcpuHvmX86_32, cr3) == 44);
const _: () = assert!(offset_of!(VcpuHvmX86_32, cr4) == 48);
const _: () = assert!(offset_of!(VcpuHvmX86_32, pad1) == 52);
const _: () = assert!(offset_of!(VcpuHvmX86_32, efer) == 56);
const _: () = assert!(offset_of!(VcpuHvmX86_32, cs_base) == 64);
const _: () = assert!(offset_of!(VcpuHvmX86_32, tr_base) == 80);
const _: () = assert!(offset_of!(VcpuHvmX86_32, cs_limit) == 84);
const _: () = assert!(offset_of!(VcpuHvmX86_32, tr_limit) == 100);
const _: () = assert!(offset_of!(VcpuHvmX86_32, cs_ar) == 104);
const _: () = assert!(offset_of!(VcpuHvmX86_32, tr_ar) == 112);
const _: () = assert!(offset_of!(VcpuHvmX86_32, pad2) == 114);

/// 64-bit register state of [`VcpuOp::Initialise`] (`vcpu_hvm_x86_64`):
/// the vCPU starts in 64-bit mode with flat segments.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VcpuHvmX86_64 {
    /// RAX.
    pub rax: u64,
    /// RCX.
    pub rcx: u64,
    /// RDX.
    pub rdx: u64,
    /// RBX.
    pub rbx: u64,
    /// RSP.
    pub rsp: u64,
    /// RBP.
    pub rbp: u64,
    /// RSI.
    pub rsi: u64,
    /// RDI.
    pub rdi: u64,
    /// RIP.
    pub rip: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// CR0 (PE and PG set).
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4 (PAE set).
    pub cr4: u64,
    /// EFER (LME and LMA set).
    pub efer: u64,
}

const _: () = assert!(size_of::<VcpuHvmX86_64>() == 112);
const _: () = assert!(offset_of!(VcpuHvmX86_64, rax) == 0);
const _: () = assert!(offset_of!(VcpuHvmX86_64, rdi) == 56);
const _: () = assert!(offset_of!(VcpuHvmX86_64, rip) == 64);
const _: () = assert!(offset_of!(VcpuHvmX86_64, rflags) == 72);
const _: () = assert!(offset_of!(VcpuHvmX86_64, cr0) == 80);
const _: () = assert!(offset_of!(VcpuHvmX86_64, efer) == 104);

/// Argument of [`VcpuOp::Initialise`] with [`VCPU_HVM_MODE_32B`]
/// (`vcpu_hvm_context` with its 32-bit union member).
///
/// Xen's structure is `mode`, padding, then a union of the two register
/// sets (120 bytes, the size of the larger). This crate gives one
/// structure per mode, both 128 bytes: read `mode` (the first word) to
/// know which one the guest passed ([`hvm_context_mode`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VcpuHvmContext32 {
    /// [`VCPU_HVM_MODE_32B`].
    pub mode: u32,
    /// Padding, zero.
    pub pad: u32,
    /// The registers.
    pub x86_32: VcpuHvmX86_32,
}

/// Argument of [`VcpuOp::Initialise`] with [`VCPU_HVM_MODE_64B`]; see
/// [`VcpuHvmContext32`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VcpuHvmContext64 {
    /// [`VCPU_HVM_MODE_64B`].
    pub mode: u32,
    /// Padding, zero.
    pub pad: u32,
    /// The registers.
    pub x86_64: VcpuHvmX86_64,
    /// The rest of the union (it is as large as the 32-bit set); ignored.
    pub _union_tail: [u8; 8],
}

/// Bytes of Xen's `vcpu_hvm_context`, either mode.
pub const VCPU_HVM_CONTEXT_SIZE: usize = 128;

const _: () = assert!(size_of::<VcpuHvmContext32>() == VCPU_HVM_CONTEXT_SIZE);
const _: () = assert!(offset_of!(VcpuHvmContext32, mode) == 0);
const _: () = assert!(offset_of!(VcpuHvmContext32, pad) == 4);
const _: () = assert!(offset_of!(VcpuHvmContext32, x86_32) == 8);
const _: () = assert!(size_of::<VcpuHvmContext64>() == VCPU_HVM_CONTEXT_SIZE);
const _: () = assert!(offset_of!(VcpuHvmContext64, mode) == 0);
const _: () = assert!(offset_of!(VcpuHvmContext64, x86_64) == 8);
const _: () = assert!(offset_of!(VcpuHvmContext64, _union_tail) == 120);

/// Which register set a `vcpu_hvm_context` holds, from its first 4 bytes:
/// `Some(VCPU_HVM_MODE_32B | VCPU_HVM_MODE_64B)`, `None` for another value
/// (`-EINVAL`).
pub const fn hvm_context_mode(first_word: u32) -> Option<u32> {
    match first_word {
        VCPU_HVM_MODE_32B | VCPU_HVM_MODE_64B => Some(first_word),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::test_support::check_numbered;

    #[test]
    fn numbers_match_xen() {
        check_numbered!(VcpuOp, u32);
        assert_eq!(VcpuOp::IsUp.number(), 3);
        assert_eq!(VcpuOp::SetSingleshotTimer.number(), 8);
        assert_eq!(VcpuOp::RegisterVcpuInfo.number(), 10);
        assert_eq!(VcpuOp::RegisterVcpuTimeMemoryArea.number(), 13);
    }

    #[test]
    fn vcpu_info_offsets() {
        let at = |offset| VcpuRegisterVcpuInfo { mfn: 1, offset, rsvd: 0 }.offset_is_valid();
        assert!(at(0));
        assert!(at(4096 - 64));
        assert!(!at(4096 - 56), "crosses the page");
        assert!(!at(4), "misaligned");
        assert!(!at(u32::MAX));
    }

    #[test]
    fn context_modes() {
        assert_eq!(hvm_context_mode(0), Some(VCPU_HVM_MODE_32B));
        assert_eq!(hvm_context_mode(1), Some(VCPU_HVM_MODE_64B));
        assert_eq!(hvm_context_mode(2), None);
    }
}
