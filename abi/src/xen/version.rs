//! `xen_version` ([`super::Hypercall::XenVersion`]): the hypervisor's
//! version and the feature bits a guest checks before relying on a
//! behaviour.
//!
//! `rdi` is a [`XenVersionOp`], `rsi` the address of its argument (or 0).
//! [`XenVersionOp::Version`] and [`XenVersionOp::Pagesize`] return their
//! answer in `rax`; the others write the argument and return 0.

use core::mem::{offset_of, size_of};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::numbered_enum;

numbered_enum! {
    /// Sub-operations of `xen_version` (`XENVER_*`).
    pub enum XenVersionOp: u32 {
        /// Returns `major << 16 | minor` in `rax`; no argument. Mica
        /// reports the Xen interface version it implements (see
        /// [`MICA_XEN_VERSION`]).
        Version = 0,
        /// Writes a [`XenExtraversion`] (the version suffix, such as
        /// `".0-mica"`). Never fails for a writable buffer (`-EFAULT`
        /// otherwise).
        Extraversion = 1,
        /// Compiler and build information (not offered by Mica: `-ENOSYS`).
        CompileInfo = 2,
        /// The capability string (not offered by Mica: `-ENOSYS`).
        Capabilities = 3,
        /// The source changeset (not offered by Mica: `-ENOSYS`).
        Changeset = 4,
        /// PV only: the hypervisor's virtual start address.
        PlatformParameters = 5,
        /// Reads one 32-bit word of the feature bitmap into a
        /// [`XenFeatureInfo`]: the guest sets `submap_idx`, the hypervisor
        /// writes `submap`. Index 0 is the only word ([`XENFEAT_NR_SUBMAPS`]);
        /// Xen answers a larger index with `-EINVAL`.
        GetFeatures = 6,
        /// Returns the page size (4096) in `rax`; no argument.
        Pagesize = 7,
        /// The domain's handle (a 16-byte UUID); control tools only.
        GuestHandle = 8,
        /// The hypervisor's command line; control domain only.
        Commandline = 9,
        /// The build id; control domain only.
        BuildId = 10,
        /// Variable-length form of [`XenVersionOp::Extraversion`].
        Extraversion2 = 11,
        /// Variable-length form of [`XenVersionOp::Capabilities`].
        Capabilities2 = 12,
        /// Variable-length form of [`XenVersionOp::Changeset`].
        Changeset2 = 13,
        /// Variable-length form of [`XenVersionOp::Commandline`].
        Commandline2 = 14,
    }
}

/// The Xen version Mica reports from [`XenVersionOp::Version`] and CPUID
/// leaf [`super::cpuid::LEAF_VERSION`]: 4.17. Linux uses it only to print
/// it and to tell pre-3.x hypervisors apart; 4.17 is a release that has
/// every interface this module describes.
pub const MICA_XEN_VERSION: u32 = 4 << 16 | 17;

/// Splits a version word into `(major, minor)`.
pub const fn version_parts(version: u32) -> (u16, u16) {
    ((version >> 16) as u16, version as u16)
}

/// Bytes of [`XenExtraversion`].
pub const XEN_EXTRAVERSION_LEN: usize = 16;

/// The version suffix ([`XenVersionOp::Extraversion`]): text, NUL-padded,
/// written by the hypervisor.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenExtraversion {
    /// ASCII text; the unused tail and at least the last byte are NUL.
    pub text: [u8; XEN_EXTRAVERSION_LEN],
}

const _: () = assert!(size_of::<XenExtraversion>() == XEN_EXTRAVERSION_LEN);

impl XenExtraversion {
    /// The suffix `text`, cut to 15 bytes so a NUL always ends it.
    pub const fn new(text: &str) -> XenExtraversion {
        let bytes = text.as_bytes();
        let mut out = [0u8; XEN_EXTRAVERSION_LEN];
        let mut index = 0;
        while index < bytes.len() && index < XEN_EXTRAVERSION_LEN - 1 {
            out[index] = bytes[index];
            index += 1;
        }
        XenExtraversion { text: out }
    }

    /// The text up to its first NUL (all 16 bytes if there is none), or
    /// `None` if it is not UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        let end = self.text.iter().position(|&b| b == 0).unwrap_or(XEN_EXTRAVERSION_LEN);
        core::str::from_utf8(&self.text[..end]).ok()
    }
}

/// Argument of [`XenVersionOp::GetFeatures`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenFeatureInfo {
    /// Which 32-bit word of the feature bitmap (guest; 0).
    pub submap_idx: u32,
    /// The word: bit `n` set means feature `32 * submap_idx + n` is
    /// present (hypervisor).
    pub submap: u32,
}

const _: () = assert!(size_of::<XenFeatureInfo>() == 8);
const _: () = assert!(offset_of!(XenFeatureInfo, submap_idx) == 0);
const _: () = assert!(offset_of!(XenFeatureInfo, submap) == 4);

/// Words in the feature bitmap.
pub const XENFEAT_NR_SUBMAPS: u32 = 1;

/// Feature numbers (`XENFEAT_*`): bit positions in the bitmap read with
/// [`XenVersionOp::GetFeatures`]. A feature absent from the bitmap must be
/// assumed absent.
pub mod feature {
    /// PV: page tables may be written directly.
    pub const WRITABLE_PAGE_TABLES: u32 = 0;
    /// PV: descriptor tables may be written directly.
    pub const WRITABLE_DESCRIPTOR_TABLES: u32 = 1;
    /// The hypervisor translates guest-physical to machine addresses: the
    /// guest works with guest frame numbers only. Set by Mica for every
    /// PVH guest; Linux requires it in PVH mode.
    pub const AUTO_TRANSLATED_PHYSMAP: u32 = 2;
    /// The kernel runs in ring 0 (PV with a ring-0 kernel).
    pub const SUPERVISOR_MODE_KERNEL: u32 = 3;
    /// PV: PAE page directories may live above 4 GiB.
    pub const PAE_PGDIR_ABOVE_4GB: u32 = 4;
    /// PV: `MMU_PT_UPDATE_PRESERVE_AD` is available.
    pub const MMU_PT_UPDATE_PRESERVE_AD: u32 = 5;
    /// PV: `MMUEXT_CLEAR_PAGE` and `MMUEXT_COPY_PAGE` are available.
    pub const HIGHMEM_ASSIST: u32 = 6;
    /// Grant maps honour the guest-available PTE bits.
    pub const GNTTAB_MAP_AVAIL_BITS: u32 = 7;
    /// Events may be delivered as a plain interrupt vector
    /// ([`crate::xen::hvm::CallbackVia::Vector`]). Set by Mica: it is the
    /// only upcall method Mica offers, and Linux PVH needs it.
    pub const HVM_CALLBACK_VECTOR: u32 = 8;
    /// The pvclock in [`crate::xen::shared_info::VcpuTimeInfo`] is safe to
    /// use in an HVM/PVH guest (its TSC is the one the clock is scaled
    /// against). Set by Mica; without it Linux does not use the Xen clock.
    pub const HVM_SAFE_PVCLOCK: u32 = 9;
    /// Physical interrupts may be routed to event channels in an HVM guest.
    /// Not set by Mica.
    pub const HVM_PIRQS: u32 = 10;
    /// The kernel may run as the control domain.
    pub const DOM0: u32 = 11;
    /// Deprecated: grants also mapped at frame = machine frame.
    pub const GRANT_MAP_IDENTITY: u32 = 12;
    /// Memory operations accept a virtual NUMA node.
    pub const MEMORY_OP_VNODE_SUPPORTED: u32 = 13;
    /// ARM: the SMC calling convention is supported.
    pub const ARM_SMCCC_SUPPORTED: u32 = 14;
    /// PVH: the ACPI RSDP may be anywhere, not only below 1 MiB.
    pub const LINUX_RSDP_UNRESTRICTED: u32 = 15;
    /// The domain's guest frames are not its machine frames.
    pub const NOT_DIRECT_MAPPED: u32 = 16;
    /// The domain's guest frames equal its machine frames.
    pub const DIRECT_MAPPED: u32 = 17;
    /// `VCPUOP_register_runstate_phys_area` is available.
    pub const RUNSTATE_PHYS_AREA: u32 = 18;
    /// `VCPUOP_register_vcpu_time_phys_area` is available.
    pub const VCPU_TIME_PHYS_AREA: u32 = 19;
    /// Device models see every MSI-X vector control write.
    pub const DM_MSIX_ALL_WRITES: u32 = 20;
}

/// The feature word 0 Mica will report to a PVH guest: what Xen reports
/// to a translated HVM guest without physical interrupts (writable page
/// tables, auto-translated physmap, callback vector, safe pvclock, not
/// direct mapped), less the optional hypercalls Mica does not offer.
pub const MICA_PVH_FEATURES: u32 = 1 << feature::WRITABLE_PAGE_TABLES
    | 1 << feature::AUTO_TRANSLATED_PHYSMAP
    | 1 << feature::HVM_CALLBACK_VECTOR
    | 1 << feature::HVM_SAFE_PVCLOCK
    | 1 << feature::NOT_DIRECT_MAPPED;

/// Whether feature `number` is set in the bitmap word `submap` whose index
/// is `submap_idx`.
pub const fn has_feature(submap_idx: u32, submap: u32, number: u32) -> bool {
    number / 32 == submap_idx && submap & (1 << (number % 32)) != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::test_support::check_numbered;

    #[test]
    fn ops_decode() {
        check_numbered!(XenVersionOp, u32);
        assert_eq!(XenVersionOp::GetFeatures.number(), 6);
        assert_eq!(XenVersionOp::Extraversion.number(), 1);
    }

    #[test]
    fn version_words() {
        assert_eq!(version_parts(MICA_XEN_VERSION), (4, 17));
        assert_eq!(MICA_XEN_VERSION, 0x0004_0011);
    }

    #[test]
    fn extraversion_is_nul_terminated() {
        let short = XenExtraversion::new(".0-mica");
        assert_eq!(short.as_str(), Some(".0-mica"));
        let long = XenExtraversion::new("0123456789abcdefghij");
        assert_eq!(long.as_str(), Some("0123456789abcde"));
        assert_eq!(long.text[15], 0);
        let full = XenExtraversion { text: *b"0123456789abcdef" };
        assert_eq!(full.as_str(), Some("0123456789abcdef"), "a peer may fill all 16 bytes");
    }

    #[test]
    fn features_linux_needs() {
        for needed in [feature::AUTO_TRANSLATED_PHYSMAP, feature::HVM_CALLBACK_VECTOR, feature::HVM_SAFE_PVCLOCK] {
            assert!(has_feature(0, MICA_PVH_FEATURES, needed));
        }
        assert!(!has_feature(0, MICA_PVH_FEATURES, feature::DOM0));
        assert!(!has_feature(1, MICA_PVH_FEATURES, feature::HVM_CALLBACK_VECTOR), "wrong word");
        assert_eq!(MICA_PVH_FEATURES, 0x0001_0305);
    }
}
