//! The PVH start of day: the machine state at a PVH kernel's entry and the
//! `hvm_start_info` structure it is handed.
//!
//! # Entry
//! The domain builder loads the kernel's ELF segments at their physical
//! addresses and starts vCPU 0 at the 32-bit entry point the kernel names
//! in its `XEN_ELFNOTE_PHYS32_ENTRY` note ([`XEN_ELFNOTE_PHYS32_ENTRY`]),
//! in this state:
//! - `ebx`: guest-physical address of the [`HvmStartInfo`];
//! - CR0: PE set, every other writable bit clear (paging off); CR4: 0;
//! - CS: 32-bit execute/read code segment, base 0, limit 0xffff_ffff;
//!   DS, ES, SS: 32-bit read/write data segments, base 0, limit
//!   0xffff_ffff (selector values unspecified);
//! - TR: a 32-bit busy TSS, base 0, limit 0x67;
//! - EFLAGS: VM, IF and TF clear;
//! - everything else unspecified: the kernel sets up its own stack, GDT and
//!   IDT.
//!
//! The console and store pages and ports are not in the start info: the
//! kernel reads them with `HVMOP_get_param` ([`super::hvm`]). ACPI tables
//! (found through [`HvmStartInfo::rsdp_paddr`]) describe the vCPUs and the
//! one sleep state, S5 (soft off): the DSDT's `\_S5` says sleep type
//! [`ACPI_S5_SLEEP_TYPE`], and the hardware-reduced FADT's sleep control
//! and status registers are the byte-wide I/O ports
//! [`ACPI_SLEEP_CONTROL_PORT`] and [`ACPI_SLEEP_STATUS_PORT`]. Writing
//! `SLP_EN | ACPI_S5_SLEEP_TYPE << 2` (0x34) to the control port powers the
//! domain off, as `sched_op` shutdown with `SHUTDOWN_poweroff` does (Linux's
//! ACPI power-off takes that path); other writes, and the status port, are
//! ignored (reads float high, as of an absent device).
//!
//! # Where things are
//! The builder places the structure, the module list, the command line,
//! the memory map and the modules in guest RAM that the memory map marks
//! as RAM (or reserved), outside the kernel's segments. Nothing is placed
//! at address 0, so an address field of 0 means "absent".

use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The FADT's sleep control register (ACPI 6.4, 4.8.3.7): an I/O port.
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0xb100;
/// The FADT's sleep status register (ACPI 6.4, 4.8.3.8): an I/O port.
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0xb101;
/// The sleep type the DSDT's `\_S5` names (SLP_TYP, bits 2-4 of a write
/// to the control port; SLP_EN is bit 5).
pub const ACPI_S5_SLEEP_TYPE: u8 = 5;

use super::numbered_enum;

/// ELF note type (in a note named `"Xen"`) whose 32-bit value is the
/// kernel's PVH entry point. A kernel without it cannot boot as PVH.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// [`HvmStartInfo::magic`]: `"xEn3"` with the top bit of the `E` set.
pub const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;

/// The structure version Mica writes: 1 (with the memory map).
pub const HVM_START_INFO_VERSION: u32 = 1;

/// [`HvmStartInfo::flags`]: the domain is privileged (`SIF_PRIVILEGED`).
pub const SIF_PRIVILEGED: u32 = 1 << 0;
/// [`HvmStartInfo::flags`]: the domain is the initial control domain
/// (`SIF_INITDOMAIN`).
pub const SIF_INITDOMAIN: u32 = 1 << 1;

/// The start-of-day structure (`hvm_start_info`), 56 bytes. Written by the
/// domain builder, read by the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct HvmStartInfo {
    /// [`XEN_HVM_START_MAGIC_VALUE`].
    pub magic: u32,
    /// Structure version: 0 has the fields up to `rsdp_paddr`; 1 adds the
    /// memory map. Later versions only add.
    pub version: u32,
    /// `SIF_*` flags.
    pub flags: u32,
    /// Entries in the module list.
    pub nr_modules: u32,
    /// Guest-physical address of an array of `nr_modules`
    /// [`HvmModlistEntry`]; 0 if none. Linux takes the first module as its
    /// initramfs.
    pub modlist_paddr: u64,
    /// Guest-physical address of the kernel command line, NUL-terminated
    /// ASCII; 0 if none.
    pub cmdline_paddr: u64,
    /// Guest-physical address of the ACPI RSDP; 0 if none.
    pub rsdp_paddr: u64,
    /// Version 1: guest-physical address of an array of `memmap_entries`
    /// [`HvmMemmapTableEntry`], sorted by address, not overlapping.
    pub memmap_paddr: u64,
    /// Version 1: entries in the memory map; 0 if there is none (the kernel
    /// then asks with `XENMEM_memory_map`).
    pub memmap_entries: u32,
    /// Version 1: reserved, zero.
    pub reserved: u32,
}

const _: () = assert!(size_of::<HvmStartInfo>() == 56);
const _: () = assert!(offset_of!(HvmStartInfo, magic) == 0);
const _: () = assert!(offset_of!(HvmStartInfo, version) == 4);
const _: () = assert!(offset_of!(HvmStartInfo, flags) == 8);
const _: () = assert!(offset_of!(HvmStartInfo, nr_modules) == 12);
const _: () = assert!(offset_of!(HvmStartInfo, modlist_paddr) == 16);
const _: () = assert!(offset_of!(HvmStartInfo, cmdline_paddr) == 24);
const _: () = assert!(offset_of!(HvmStartInfo, rsdp_paddr) == 32);
const _: () = assert!(offset_of!(HvmStartInfo, memmap_paddr) == 40);
const _: () = assert!(offset_of!(HvmStartInfo, memmap_entries) == 48);
const _: () = assert!(offset_of!(HvmStartInfo, reserved) == 52);

/// Bytes of [`HvmStartInfo`] in version 0 (it ends after `rsdp_paddr`).
pub const HVM_START_INFO_V0_SIZE: usize = 40;

/// One module (`hvm_modlist_entry`), 32 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct HvmModlistEntry {
    /// Guest-physical address of the module.
    pub paddr: u64,
    /// Its size in bytes.
    pub size: u64,
    /// Guest-physical address of its NUL-terminated command line; 0 if
    /// none.
    pub cmdline_paddr: u64,
    /// Reserved, zero.
    pub reserved: u64,
}

const _: () = assert!(size_of::<HvmModlistEntry>() == 32);
const _: () = assert!(offset_of!(HvmModlistEntry, paddr) == 0);
const _: () = assert!(offset_of!(HvmModlistEntry, size) == 8);
const _: () = assert!(offset_of!(HvmModlistEntry, cmdline_paddr) == 16);
const _: () = assert!(offset_of!(HvmModlistEntry, reserved) == 24);

/// One memory map entry (`hvm_memmap_table_entry`), 24 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct HvmMemmapTableEntry {
    /// Guest-physical start of the range.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// What the range is: a [`HvmMemmapType`] number.
    pub r#type: u32,
    /// Reserved, zero.
    pub reserved: u32,
}

const _: () = assert!(size_of::<HvmMemmapTableEntry>() == 24);
const _: () = assert!(offset_of!(HvmMemmapTableEntry, addr) == 0);
const _: () = assert!(offset_of!(HvmMemmapTableEntry, size) == 8);
const _: () = assert!(offset_of!(HvmMemmapTableEntry, r#type) == 16);
const _: () = assert!(offset_of!(HvmMemmapTableEntry, reserved) == 20);

numbered_enum! {
    /// Memory map range types (`XEN_HVM_MEMMAP_TYPE_*`), the E820 numbers.
    pub enum HvmMemmapType: u32 {
        /// Usable RAM.
        Ram = 1,
        /// Not usable: the store and console ring pages, firmware areas.
        Reserved = 2,
        /// ACPI tables; the kernel may reuse it once it has read them.
        Acpi = 3,
        /// ACPI non-volatile storage.
        Nvs = 4,
        /// Memory with errors.
        Unusable = 5,
        /// Disabled memory.
        Disabled = 6,
        /// Persistent memory.
        Pmem = 7,
    }
}

impl HvmStartInfo {
    /// A version-1 structure with the magic set and every address absent.
    pub const fn new() -> HvmStartInfo {
        HvmStartInfo {
            magic: XEN_HVM_START_MAGIC_VALUE,
            version: HVM_START_INFO_VERSION,
            flags: 0,
            nr_modules: 0,
            modlist_paddr: 0,
            cmdline_paddr: 0,
            rsdp_paddr: 0,
            memmap_paddr: 0,
            memmap_entries: 0,
            reserved: 0,
        }
    }

    /// Whether a kernel may trust the memory map fields: magic right and
    /// version 1 or later.
    pub const fn has_memmap(&self) -> bool {
        self.magic == XEN_HVM_START_MAGIC_VALUE && self.version >= 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::test_support::check_numbered;

    #[test]
    fn magic_spells_xen3() {
        let bytes = XEN_HVM_START_MAGIC_VALUE.to_le_bytes();
        assert_eq!(bytes, [b'x', b'E' | 0x80, b'n', b'3']);
    }

    #[test]
    fn versions() {
        let mut info = HvmStartInfo::new();
        assert!(info.has_memmap());
        info.version = 0;
        assert!(!info.has_memmap());
        info = HvmStartInfo { magic: 0, ..HvmStartInfo::new() };
        assert!(!info.has_memmap());
        assert_eq!(offset_of!(HvmStartInfo, memmap_paddr), HVM_START_INFO_V0_SIZE);
    }

    #[test]
    fn memmap_types() {
        check_numbered!(HvmMemmapType, u32);
        assert_eq!(HvmMemmapType::Ram.number(), 1);
        assert_eq!(HvmMemmapType::Pmem.number(), 7);
        assert_eq!(HvmMemmapType::from_number(0), None);
    }
}
