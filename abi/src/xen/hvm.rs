//! `hvm_op` ([`super::Hypercall::HvmOp`]): HVM parameters (how events
//! reach the guest, where its console and store rings are) and hints.
//!
//! `rdi` is an [`HvmOp`], `rsi` the address of its argument.

use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{DomId, numbered_enum};

numbered_enum! {
    /// HVM operations (`HVMOP_*`), in `rdi`. Mica offers those whose
    /// documentation does not say otherwise; the rest return `-ENOSYS`.
    pub enum HvmOp: u32 {
        /// Sets a parameter ([`XenHvmParam`]). A guest may set only its
        /// own [`HVM_PARAM_CALLBACK_IRQ`]. dom0 (the toolstack) sets
        /// another domain's [`HVM_PARAM_STORE_PFN`],
        /// [`HVM_PARAM_STORE_EVTCHN`], [`HVM_PARAM_CONSOLE_PFN`] and
        /// [`HVM_PARAM_CONSOLE_EVTCHN`] (a frame of that domain's RAM, a
        /// port below 256) before it first runs. Errors: `-EINVAL` an
        /// index from [`HVM_NR_PARAMS`] up, a value Mica does not accept,
        /// or (dom0 on another domain) another parameter; `-EPERM` a
        /// parameter the guest may not set, or another domain; `-ESRCH`
        /// no such domain.
        SetParam = 0,
        /// Reads a parameter into [`XenHvmParam::value`]. A guest may read
        /// [`HVM_PARAM_CALLBACK_IRQ`], [`HVM_PARAM_STORE_PFN`],
        /// [`HVM_PARAM_STORE_EVTCHN`], [`HVM_PARAM_CONSOLE_PFN`] and
        /// [`HVM_PARAM_CONSOLE_EVTCHN`]; a parameter that was never set
        /// reads 0. dom0 reads those four of any domain. Errors as for
        /// [`HvmOp::SetParam`].
        GetParam = 1,
        /// Retired: drive a PCI INTx line (device models). Not offered.
        SetPciIntxLevel = 2,
        /// Retired: drive an ISA IRQ line (device models). Not offered.
        SetIsaIrqLevel = 3,
        /// Retired: route a PCI link (device models). Not offered.
        SetPciLinkRoute = 4,
        /// Flushes every vCPU's TLB. Not offered.
        FlushTlbs = 5,
        /// Hint that a page table is being torn down
        /// ([`XenHvmPagetableDying`]). Mica returns `-ENOSYS`; Linux
        /// accepts that and stops sending the hint.
        PagetableDying = 9,
        /// The current system time ([`XenHvmGetTime`]). Not offered: a PVH
        /// guest reads the pvclock.
        GetTime = 10,
        /// Writes a trace record. Not offered.
        Xentrace = 11,
        /// Retired memory access control (toolstack). Not offered.
        SetMemAccess = 12,
        /// Retired memory access control (toolstack). Not offered.
        GetMemAccess = 13,
        /// The type of a guest frame. Not offered.
        GetMemType = 15,
        /// A per-vCPU upcall vector ([`XenHvmEvtchnUpcallVector`]). Not
        /// offered: Mica does not set
        /// [`super::cpuid::XEN_HVM_CPUID_UPCALL_VECTOR`], so Linux uses the
        /// domain-wide [`HVM_PARAM_CALLBACK_IRQ`] vector instead.
        SetEvtchnUpcallVector = 23,
        /// Raises a VM event for a monitor (introspection). Not offered.
        GuestRequestVmEvent = 24,
        /// Alternate second-stage page tables. Not offered.
        Altp2m = 25,
    }
}

/// Argument of [`HvmOp::SetParam`] and [`HvmOp::GetParam`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenHvmParam {
    /// IN: the domain, [`super::DOMID_SELF`] or the caller.
    pub domid: DomId,
    /// Padding, zero.
    pub pad: u16,
    /// IN: an `HVM_PARAM_*` number.
    pub index: u32,
    /// IN (set) or OUT (get): the value.
    pub value: u64,
}

const _: () = assert!(size_of::<XenHvmParam>() == 16);
const _: () = assert!(offset_of!(XenHvmParam, domid) == 0);
const _: () = assert!(offset_of!(XenHvmParam, pad) == 2);
const _: () = assert!(offset_of!(XenHvmParam, index) == 4);
const _: () = assert!(offset_of!(XenHvmParam, value) == 8);

/// How events reach vCPUs: a [`CallbackVia`] encoded as a word
/// ([`CallbackVia::encode`]). 0 (the initial value) means no upcall: the
/// guest must poll. Set by the guest.
pub const HVM_PARAM_CALLBACK_IRQ: u32 = 0;
/// Guest frame of the store ring page
/// ([`super::io::store::XenstoreDomainInterface`]); 0 when the domain has
/// no store. Set by the toolstack.
pub const HVM_PARAM_STORE_PFN: u32 = 1;
/// The guest's event channel port to the store, already allocated
/// (unbound for the store's domain). Set by the toolstack.
pub const HVM_PARAM_STORE_EVTCHN: u32 = 2;
/// Device models: the I/O request page. Not readable by guests.
pub const HVM_PARAM_IOREQ_PFN: u32 = 5;
/// Device models: the buffered I/O request page. Not readable by guests.
pub const HVM_PARAM_BUFIOREQ_PFN: u32 = 6;
/// Viridian (Hyper-V) enlightenments. Not offered.
pub const HVM_PARAM_VIRIDIAN: u32 = 9;
/// Timer mode of emulated timers. Not offered.
pub const HVM_PARAM_TIMER_MODE: u32 = 10;
/// Whether a virtual HPET exists. Not offered.
pub const HVM_PARAM_HPET_ENABLED: u32 = 11;
/// Identity page table for real mode under EPT. Not offered.
pub const HVM_PARAM_IDENT_PT: u32 = 12;
/// The ACPI sleep state. Not offered.
pub const HVM_PARAM_ACPI_S_STATE: u32 = 14;
/// A TSS for real mode. Not offered.
pub const HVM_PARAM_VM86_TSS: u32 = 15;
/// Align periodic timers. Not offered.
pub const HVM_PARAM_VPT_ALIGN: u32 = 16;
/// Guest frame of the console ring page
/// ([`super::io::console::XenconsInterface`]); 0 when there is none. Set
/// by the toolstack.
pub const HVM_PARAM_CONSOLE_PFN: u32 = 17;
/// The guest's event channel port to the console back end, already
/// allocated. Set by the toolstack.
pub const HVM_PARAM_CONSOLE_EVTCHN: u32 = 18;
/// Location of the ACPI I/O ports. Not offered.
pub const HVM_PARAM_ACPI_IOPORTS_LOCATION: u32 = 19;
/// What a triple fault does (a `SHUTDOWN_*` reason). Not offered.
pub const HVM_PARAM_TRIPLE_FAULT_REASON: u32 = 31;
/// Address of the VM generation id. Not offered.
pub const HVM_PARAM_VM_GENERATION_ID_ADDR: u32 = 34;
/// Alternate page tables mode. Not offered.
pub const HVM_PARAM_ALTP2M: u32 = 35;
/// Width of the x87 FIP/FDP registers. Not offered.
pub const HVM_PARAM_X87_FIP_WIDTH: u32 = 36;
/// A TSS for real mode, with its size. Not offered.
pub const HVM_PARAM_VM86_TSS_SIZED: u32 = 37;
/// Machine check capabilities. Not offered.
pub const HVM_PARAM_MCA_CAP: u32 = 38;
/// Parameter indices are below this.
pub const HVM_NR_PARAMS: u32 = 39;

/// Bits 56..64 of the [`HVM_PARAM_CALLBACK_IRQ`] word: the delivery type.
pub const HVM_PARAM_CALLBACK_IRQ_TYPE_MASK: u64 = 0xff00_0000_0000_0000;
/// Delivery type: a GSI in bits 0..56.
pub const HVM_PARAM_CALLBACK_TYPE_GSI: u64 = 0;
/// Delivery type: a PCI INTx line.
pub const HVM_PARAM_CALLBACK_TYPE_PCI_INTX: u64 = 1;
/// Delivery type: an interrupt vector in bits 0..8 (x86).
pub const HVM_PARAM_CALLBACK_TYPE_VECTOR: u64 = 2;

/// The upcall delivery method in [`HVM_PARAM_CALLBACK_IRQ`], decoded.
///
/// Mica accepts only [`CallbackVia::None`] and [`CallbackVia::Vector`]
/// (with a vector from 0x20 up); it answers the others with `-EINVAL`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallbackVia {
    /// Value 0: no upcall.
    None,
    /// Type 0: raise global system interrupt `gsi` (not 0, which would be
    /// the value 0).
    Gsi(u64),
    /// Type 1: assert a PCI INTx line.
    PciIntx {
        /// PCI segment (bits 32..48).
        segment: u16,
        /// Bus (bits 16..32; Xen's header gives it 16 bits).
        bus: u16,
        /// Device and function (bits 8..16).
        devfn: u8,
        /// INTA..INTD as 0..=3 (bits 0..2).
        intx: u8,
    },
    /// Type 2: inject this vector on the vCPU whose
    /// `evtchn_upcall_pending` was set. It is injected directly, not
    /// through the local APIC: the guest sends no EOI for it. Requires
    /// [`super::version::feature::HVM_CALLBACK_VECTOR`].
    Vector(u8),
    /// A type this crate does not know, with the whole word.
    Unknown(u64),
}

impl CallbackVia {
    /// Decodes a [`HVM_PARAM_CALLBACK_IRQ`] word.
    pub const fn decode(value: u64) -> CallbackVia {
        if value == 0 {
            return CallbackVia::None;
        }
        match (value & HVM_PARAM_CALLBACK_IRQ_TYPE_MASK) >> 56 {
            HVM_PARAM_CALLBACK_TYPE_GSI => CallbackVia::Gsi(value & !HVM_PARAM_CALLBACK_IRQ_TYPE_MASK),
            HVM_PARAM_CALLBACK_TYPE_PCI_INTX => CallbackVia::PciIntx {
                segment: (value >> 32) as u16,
                bus: (value >> 16) as u16,
                devfn: (value >> 8) as u8,
                intx: (value & 3) as u8,
            },
            HVM_PARAM_CALLBACK_TYPE_VECTOR => CallbackVia::Vector(value as u8),
            _ => CallbackVia::Unknown(value),
        }
    }

    /// The [`HVM_PARAM_CALLBACK_IRQ`] word for this method.
    pub const fn encode(self) -> u64 {
        match self {
            CallbackVia::None => 0,
            CallbackVia::Gsi(gsi) => gsi & !HVM_PARAM_CALLBACK_IRQ_TYPE_MASK,
            CallbackVia::PciIntx { segment, bus, devfn, intx } => {
                HVM_PARAM_CALLBACK_TYPE_PCI_INTX << 56
                    | (segment as u64) << 32
                    | (bus as u64) << 16
                    | (devfn as u64) << 8
                    | (intx & 3) as u64
            }
            CallbackVia::Vector(vector) => HVM_PARAM_CALLBACK_TYPE_VECTOR << 56 | vector as u64,
            CallbackVia::Unknown(value) => value,
        }
    }
}

/// Argument of [`HvmOp::PagetableDying`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenHvmPagetableDying {
    /// The domain, [`super::DOMID_SELF`].
    pub domid: DomId,
    /// Padding, zero.
    pub pad: [u16; 3],
    /// Guest-physical address of the top-level page table.
    pub gpa: u64,
}

const _: () = assert!(size_of::<XenHvmPagetableDying>() == 16);
const _: () = assert!(offset_of!(XenHvmPagetableDying, domid) == 0);
const _: () = assert!(offset_of!(XenHvmPagetableDying, gpa) == 8);

/// Argument of [`HvmOp::GetTime`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenHvmGetTime {
    /// OUT: system time in nanoseconds.
    pub now: u64,
}

const _: () = assert!(size_of::<XenHvmGetTime>() == 8);

/// Argument of [`HvmOp::SetEvtchnUpcallVector`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenHvmEvtchnUpcallVector {
    /// The vCPU.
    pub vcpu: u32,
    /// Its upcall vector.
    pub vector: u8,
    /// Padding (implicit in C), zero.
    pub _pad0: [u8; 3],
}

const _: () = assert!(size_of::<XenHvmEvtchnUpcallVector>() == 8);
const _: () = assert!(offset_of!(XenHvmEvtchnUpcallVector, vcpu) == 0);
const _: () = assert!(offset_of!(XenHvmEvtchnUpcallVector, vector) == 4);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::test_support::check_numbered;

    #[test]
    fn numbers_match_xen() {
        check_numbered!(HvmOp, u32);
        assert_eq!(HvmOp::PagetableDying.number(), 9);
        assert_eq!((HVM_PARAM_STORE_PFN, HVM_PARAM_STORE_EVTCHN), (1, 2));
        assert_eq!((HVM_PARAM_CONSOLE_PFN, HVM_PARAM_CONSOLE_EVTCHN), (17, 18));
    }

    #[test]
    fn callback_via_linux_value() {
        // What Linux writes for vector 0xf3.
        assert_eq!(CallbackVia::Vector(0xf3).encode(), 0x0200_0000_0000_00f3);
        assert_eq!(CallbackVia::decode(0x0200_0000_0000_00f3), CallbackVia::Vector(0xf3));
        assert_eq!(CallbackVia::decode(0), CallbackVia::None);
        assert_eq!(CallbackVia::decode(5), CallbackVia::Gsi(5));
        assert_eq!(CallbackVia::decode(0x0700_0000_0000_0001), CallbackVia::Unknown(0x0700_0000_0000_0001));
    }

    #[test]
    fn callback_via_round_trips() {
        let methods = [
            CallbackVia::None,
            CallbackVia::Gsi(9),
            CallbackVia::PciIntx { segment: 1, bus: 2, devfn: 0x18, intx: 3 },
            CallbackVia::Vector(0x20),
            CallbackVia::Vector(0xff),
            CallbackVia::Unknown(0x0300_0000_0000_0000),
        ];
        for method in methods {
            assert_eq!(CallbackVia::decode(method.encode()), method);
        }
    }
}
