//! Hypercall numbers (`rax`), the hypercall page, and the range reserved
//! for Mica's own calls.
//!
//! Xen numbers its calls densely: 0..=42 are common to all architectures
//! (some retired), 48..=55 are reserved for architecture-specific calls,
//! and Xen refuses every number from 64 up (`NR_hypercalls`) with
//! `-ENOSYS`. A guest may call through a hypercall page (see
//! [`hypercall_page_stub`]), which holds 128 stubs of 32 bytes, so numbers
//! 0..=127 are the ones a Xen guest can reach that way.
//!
//! The calls a PVH guest makes and Mica implements are marked "PVH" below;
//! the others are listed so that a refusal can name what was refused. Mica
//! answers every call not marked PVH with `-ENOSYS`.

use super::numbered_enum;

numbered_enum! {
    /// Xen hypercall numbers (`__HYPERVISOR_*`), passed in `rax`.
    pub enum Hypercall: u64 {
        /// PV only: install a virtual IDT.
        SetTrapTable = 0,
        /// PV only: page-table updates.
        MmuUpdate = 1,
        /// PV only: install a GDT.
        SetGdt = 2,
        /// PV only: switch the kernel stack.
        StackSwitch = 3,
        /// PV only: register event and failsafe callbacks.
        SetCallbacks = 4,
        /// PV only: set or clear CR0.TS.
        FpuTaskswitch = 5,
        /// Retired form of [`Hypercall::SchedOp`] (since Xen 3.0.2).
        SchedOpCompat = 6,
        /// Platform control, for the control domain only.
        PlatformOp = 7,
        /// PV only: set a debug register.
        SetDebugreg = 8,
        /// PV only: read a debug register.
        GetDebugreg = 9,
        /// PV only: update a segment descriptor.
        UpdateDescriptor = 10,
        /// PVH: memory reservation and the physical map
        /// ([`super::memory::MemoryOp`] in `rdi`, argument in `rsi`).
        MemoryOp = 12,
        /// Several calls in one; PV only in Mica.
        Multicall = 13,
        /// PV only: update one page-table entry.
        UpdateVaMapping = 14,
        /// PVH: the calling vCPU's single-shot timer, the absolute system
        /// time in ns in `rdi` (0 stops it): as
        /// [`super::vcpu::VcpuOp::SetSingleshotTimer`], without a
        /// structure in guest memory.
        SetTimerOp = 15,
        /// Retired form of [`Hypercall::EventChannelOp`].
        EventChannelOpCompat = 16,
        /// PVH: version and features ([`super::version::XenVersionOp`] in
        /// `rdi`, argument in `rsi`).
        XenVersion = 17,
        /// PVH: the emergency console ([`super::console_io::ConsoleIoOp`] in
        /// `rdi`, length in `rsi`, buffer in `rdx`).
        ConsoleIo = 18,
        /// Retired form of [`Hypercall::PhysdevOp`].
        PhysdevOpCompat = 19,
        /// PVH: grant tables ([`super::grant_table::GnttabOp`] in `rdi`,
        /// array of argument structures in `rsi`, their count in `rdx`).
        GrantTableOp = 20,
        /// Enable or disable a virtual-machine assist (PV only in Mica).
        VmAssist = 21,
        /// PV only: update another domain's page-table entry.
        UpdateVaMappingOtherdomain = 22,
        /// PV only: return from an exception.
        Iret = 23,
        /// PVH: per-vCPU operations ([`super::vcpu::VcpuOp`] in `rdi`, vCPU
        /// id in `rsi`, argument in `rdx`).
        VcpuOp = 24,
        /// PV only: load a segment base.
        SetSegmentBase = 25,
        /// PV only: extended MMU operations.
        MmuextOp = 26,
        /// Security module (XSM/FLASK) operations.
        XsmOp = 27,
        /// NMI callback registration.
        NmiOp = 28,
        /// PVH: scheduling ([`super::sched::SchedOp`] in `rdi`, argument in
        /// `rsi`).
        SchedOp = 29,
        /// Callback registration (PV only in Mica).
        CallbackOp = 30,
        /// Profiling (dropped from Xen).
        XenoprofOp = 31,
        /// PVH: event channels ([`super::event_channel::EvtchnOp`] in `rdi`,
        /// argument in `rsi`).
        EventChannelOp = 32,
        /// Physical device operations (interrupt routing); a PVH domU makes
        /// none that Mica needs.
        PhysdevOp = 33,
        /// PVH: HVM parameters and hints ([`super::hvm::HvmOp`] in `rdi`,
        /// argument in `rsi`).
        HvmOp = 34,
        /// System control, for the control domain.
        Sysctl = 35,
        /// Domain control, for the control domain.
        Domctl = 36,
        /// Kexec.
        KexecOp = 37,
        /// Transcendent memory (retired).
        TmemOp = 38,
        /// Argo inter-domain messaging.
        ArgoOp = 39,
        /// Performance monitoring.
        XenpmuOp = 40,
        /// Device-model operations.
        DmOp = 41,
        /// The hypervisor file system.
        HypfsOp = 42,
        /// First architecture-specific number (x86: machine check).
        Arch0 = 48,
        /// Architecture-specific.
        Arch1 = 49,
        /// Architecture-specific.
        Arch2 = 50,
        /// Architecture-specific.
        Arch3 = 51,
        /// Architecture-specific.
        Arch4 = 52,
        /// Architecture-specific.
        Arch5 = 53,
        /// Architecture-specific.
        Arch6 = 54,
        /// Last architecture-specific number.
        Arch7 = 55,
    }
}

impl Hypercall {
    /// Whether Mica implements this call for PVH guests (the calls marked
    /// "PVH" above).
    pub const fn is_pvh(self) -> bool {
        matches!(
            self,
            Hypercall::MemoryOp
                | Hypercall::XenVersion
                | Hypercall::ConsoleIo
                | Hypercall::GrantTableOp
                | Hypercall::VcpuOp
                | Hypercall::SchedOp
                | Hypercall::EventChannelOp
                | Hypercall::HvmOp
        )
    }
}

/// Xen refuses every hypercall number from this one up.
pub const XEN_HYPERCALL_LIMIT: u64 = 64;

/// First number of the range reserved for Mica's own hypercalls (domain
/// control, the hypervisor log, platform control, benchmarks).
///
/// The range is [`MICA_HYPERCALL_BASE`]..=[`MICA_HYPERCALL_LAST`]: far
/// above Xen's architecture range (48..=55), above
/// [`XEN_HYPERCALL_LIMIT`], and above the 128 numbers a hypercall page can
/// hold, so no present or future Xen call a guest can make through a page
/// collides with it. Mica answers a number in this range that it does not
/// define with its own `abi::Error::NoSuchHypercall`, and every number
/// outside the range that Xen does not define (below 64 or not) with
/// Xen's `-ENOSYS`.
pub const MICA_HYPERCALL_BASE: u64 = 0x1000;
/// Last number of the range reserved for Mica's own hypercalls.
pub const MICA_HYPERCALL_LAST: u64 = 0x10ff;

const _: () = assert!(MICA_HYPERCALL_BASE > HYPERCALL_PAGE_STUBS as u64);
const _: () = assert!(MICA_HYPERCALL_BASE > XEN_HYPERCALL_LIMIT);
const _: () = assert!(HYPERCALL_PAGE_STUBS == 128);

/// Whether `number` is in the range reserved for Mica's own calls.
pub const fn is_mica_number(number: u64) -> bool {
    number >= MICA_HYPERCALL_BASE && number <= MICA_HYPERCALL_LAST
}

/// Bytes of each stub in a hypercall page.
pub const HYPERCALL_STUB_SIZE: usize = 32;

/// Stubs in one hypercall page.
pub const HYPERCALL_PAGE_STUBS: usize = super::XEN_PAGE_SIZE / HYPERCALL_STUB_SIZE;

/// MSR whose write asks the hypervisor to fill a hypercall page (its value
/// is the page's guest-physical address; the low 12 bits select the page
/// and are 0 for the one page Xen offers). CPUID leaf
/// [`super::cpuid::LEAF_HYPERCALL`] reports it in EBX.
pub const HYPERCALL_PAGE_MSR: u32 = 0x4000_0000;

/// The bytes of stub `number` of an Intel hypercall page, before the zero
/// padding that fills the rest of its 32 bytes.
///
/// A guest that asks for a hypercall page (by writing the page's address
/// to [`HYPERCALL_PAGE_MSR`]) calls `page + 32 * number`
/// instead of writing `vmcall` itself. Each stub is `mov eax, number;
/// vmcall; ret`; the stub of [`Hypercall::Iret`] is `ud2` (PV only).
/// Linux 6.1 as a PVH guest asks for a page (`xen_pvh_init` writes the MSR
/// that leaf 2's EBX names) and makes its calls through it; a guest that
/// issues `vmcall` itself needs none.
pub const fn hypercall_page_stub(number: u32) -> [u8; 9] {
    if number as u64 == Hypercall::Iret as u64 {
        return [0x0f, 0x0b, 0, 0, 0, 0, 0, 0, 0];
    }
    let n = number.to_le_bytes();
    [0xb8, n[0], n[1], n[2], n[3], 0x0f, 0x01, 0xc1, 0xc3]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::test_support::check_numbered;

    #[test]
    fn numbers_decode() {
        check_numbered!(Hypercall, u64);
        assert_eq!(Hypercall::from_number(11), None, "11 is unused in Xen");
        assert_eq!(Hypercall::MemoryOp.number(), 12);
        assert_eq!(Hypercall::XenVersion.number(), 17);
        assert_eq!(Hypercall::ConsoleIo.number(), 18);
        assert_eq!(Hypercall::GrantTableOp.number(), 20);
        assert_eq!(Hypercall::VcpuOp.number(), 24);
        assert_eq!(Hypercall::SchedOp.number(), 29);
        assert_eq!(Hypercall::EventChannelOp.number(), 32);
        assert_eq!(Hypercall::PhysdevOp.number(), 33);
        assert_eq!(Hypercall::HvmOp.number(), 34);
    }

    #[test]
    fn pvh_set_is_the_eight_calls() {
        let pvh: usize = Hypercall::ALL.iter().filter(|call| call.is_pvh()).count();
        assert_eq!(pvh, 8);
        assert!(!Hypercall::MmuUpdate.is_pvh());
    }

    #[test]
    fn mica_range_is_clear_of_xen() {
        assert!(Hypercall::ALL.iter().all(|call| !is_mica_number(call.number())));
        assert!(is_mica_number(MICA_HYPERCALL_BASE) && is_mica_number(MICA_HYPERCALL_LAST));
        assert!(!is_mica_number(MICA_HYPERCALL_BASE - 1) && !is_mica_number(MICA_HYPERCALL_LAST + 1));
    }

    #[test]
    fn page_stubs() {
        assert_eq!(hypercall_page_stub(17), [0xb8, 17, 0, 0, 0, 0x0f, 0x01, 0xc1, 0xc3]);
        assert_eq!(hypercall_page_stub(0x1234), [0xb8, 0x34, 0x12, 0, 0, 0x0f, 0x01, 0xc1, 0xc3]);
        assert_eq!(hypercall_page_stub(23)[..2], [0x0f, 0x0b], "iret is ud2");
    }
}
