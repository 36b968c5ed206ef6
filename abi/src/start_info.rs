//! The start-info page: what a domain is told when it starts, and the state
//! it starts in.
//!
//! The hypervisor (for dom0) or dom0's domain builder (for guests) writes one
//! page of this layout into the domain's memory before its first instruction
//! and passes its guest-physical address in `rdi`.
//!
//! # The kernel image
//! An x86-64 ELF64 executable (`ET_EXEC`). The builder copies each `PT_LOAD`
//! segment's file bytes to its physical address `p_paddr`; the segment
//! (`p_memsz` bytes) must lie between 1 MiB and the end of RAM. Every page
//! of a new domain's RAM is zero and the builder writes nothing past
//! `p_filesz`, so `.bss` reads zero. `e_entry` must lie in a segment with
//! `PF_X` (by `p_vaddr`); since the initial page tables map virtual =
//! physical, link with `p_vaddr == p_paddr`.
//!
//! # Entry state
//! vCPU 0 starts at `e_entry` in this state (a vCPU started later with
//! [`crate::hypercall::VcpuOp::Up`] in the same one, with the RIP, RSP, CR3,
//! RDI and GDT base of its [`crate::domctl::VcpuContext`]):
//! - 64-bit mode at CPL 0. CR0 = PE | MP | ET | NE | WP | PG (0x8005_0033:
//!   x87 usable). CR4 = PAE only: OSFXSR is clear, so SSE instructions raise
//!   #UD until the domain sets CR4.OSFXSR. EFER = LME | LMA | NXE, fixed (a
//!   guest's WRMSR gets #GP, so no SYSCALL). PAT at its power-on value.
//! - RFLAGS = 0x2: interrupts off, DF clear. No IDT (IDTR base 0, limit 0):
//!   an exception before the domain loads its own IDT triple-faults, and hv
//!   crashes the domain. Event upcalls need an IDT, a registered event page
//!   ([`crate::event::EventOp::RegisterPage`]) and IF set.
//! - Segments from the initial GDT ([`crate::domctl::INITIAL_GDT`], 5
//!   descriptors, GDTR limit 39): CS = 0x08 (64-bit code), SS = DS = ES = FS
//!   = GS = 0x10 (flat data); FS, GS and kernel GS bases 0; LDTR unusable;
//!   TR = 0x18, a busy TSS at base 0 (limit 0x67), which lies in the
//!   unmapped page 0: load a TSS of your own before anything reads it (an
//!   interrupt taken at CPL 3, an IST stack).
//! - General registers zero, except RDI = this page's guest-physical
//!   address and RSP = 8 below the top of the [`MemoryKind::Stack`] region
//!   (RSP + 8 is 16-byte aligned, as on entry to a System V function, so
//!   the entry may be an `extern "C" fn(start_info: u64) -> !`). x87/SSE
//!   state as after FNINIT (FCW 0x37f, MXCSR 0x1f80), XCR0 = 1 (x87), CR2 =
//!   CR8 = 0; debug registers as the [crate] docs say.
//! - Paging: 4-level, CR3 = the initial PML4 (in the [`MemoryKind::Boot`]
//!   region). The tables identity-map (virtual = guest-physical) the first
//!   [`StartInfo::identity_mapped_bytes`] except page 0: below 2 MiB in
//!   4 KiB pages, above in 2 MiB pages; every page present, writable,
//!   executable, supervisor-only (user mode reaches nothing) and write-back.
//!
//! # Memory
//! A guest's RAM is guest-physical 0 up to its memory size (2 MiB to 1 GiB,
//! the end of the last region of the memory map); page 0 is RAM too, but
//! unmapped and in no region. The identity map always spans 1 GiB
//! (`identity_mapped_bytes`); touching a mapped address with no RAM behind
//! it is an EPT violation, and hv crashes the domain. The builder lays a
//! guest out as follows today; a guest takes the addresses from this page
//! and its registers, not from this table:
//!
//! | guest-physical       | contents                         | region |
//! |----------------------|----------------------------------|--------|
//! | 0x0000               | null guard (unmapped)            | none   |
//! | 0x1000               | this page                        | Boot   |
//! | 0x2000               | initial GDT                      | Boot   |
//! | 0x3000 - 0xefff      | initial page tables (CR3 0x3000) | Boot   |
//! | 0xf000               | console ring (`console_page`)    | Boot   |
//! | 0x10000              | `block_ring`'s page              | Boot   |
//! | 0x11000              | store ring (`store_page`)        | Boot   |
//! | 0x12000 - 0x3ffff    | free                             | Free   |
//! | 0x40000 - 0x7ffff    | initial stack (RSP 0x7fff8)      | Stack  |
//! | 0x80000 - kernel     | free                             | Free   |
//! | kernel (from 1 MiB)  | the ELF segments, page-rounded   | Kernel |
//! | kernel end - RAM end | free                             | Free   |
//!
//! [`MemoryKind::Boot`] says which of its pages a domain may reuse.
//!
//! dom0, which hv builds, differs: its Boot region is 0x1000 - 0xffff (no
//! ring pages: it has no console, store or block ring); its RAM is rounded
//! up to 2 MiB and followed by the ramdisk ([`MemoryKind::Ramdisk`], mapped
//! read-only and not executable), which `identity_mapped_bytes` covers;
//! and its tables also map the device window ([`crate::physdev`]) and the
//! foreign window ([`crate::domctl::FOREIGN_WINDOW_BASE`]).

use core::mem::{offset_of, size_of};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Value of [`StartInfo::magic`]: "MICASTRT" in little-endian bytes.
pub const START_INFO_MAGIC: u64 = u64::from_le_bytes(*b"MICASTRT");

/// Most memory regions a start-info page describes.
pub const MAX_MEMORY_REGIONS: usize = 32;

/// Longest command line, including its terminating NUL.
pub const CMDLINE_SIZE: usize = 1024;

/// What a guest-physical memory region holds.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    /// Free RAM the domain may use as it likes.
    Free = 1,
    /// The domain's loaded kernel image.
    Kernel = 2,
    /// Boot structures, page by page (see the module docs for a guest's
    /// layout):
    /// - this start-info page: free once the domain has copied out what it
    ///   needs (nothing reads it after the domain starts);
    /// - the initial GDT (GDTR) and page tables (CR3): free once the domain
    ///   has loaded its own GDT (and TSS) and its own CR3;
    /// - the console ring ([`StartInfo::console_page`]) and the store ring
    ///   ([`StartInfo::store_page`]): **never free**. dom0 maps both before
    ///   the domain first runs and polls them until the domain is
    ///   destroyed, whether the domain uses them or not;
    /// - the page [`StartInfo::block_ring`] names: free unless the domain
    ///   makes it its block ring (dom0 touches it only once a front end
    ///   grants it as its `ring-ref`, and until the back end is Closed).
    Boot = 3,
    /// The initial stack: free once the domain runs on a stack of its own.
    Stack = 4,
    /// The initial ramdisk (read-only).
    Ramdisk = 5,
    /// Device memory or ports passed through to the domain (dom0 only).
    Device = 6,
}

impl MemoryKind {
    /// Decodes [`MemoryRegion::kind`].
    pub const fn from_number(number: u32) -> Option<MemoryKind> {
        Some(match number {
            1 => MemoryKind::Free,
            2 => MemoryKind::Kernel,
            3 => MemoryKind::Boot,
            4 => MemoryKind::Stack,
            5 => MemoryKind::Ramdisk,
            6 => MemoryKind::Device,
            _ => return None,
        })
    }
}

/// One region of the domain's guest-physical address space.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct MemoryRegion {
    /// Guest-physical start, page-aligned.
    pub base: u64,
    /// Length in bytes, a multiple of the page size.
    pub size: u64,
    /// A [`MemoryKind`] value.
    pub kind: u32,
    /// Reserved, zero.
    pub _reserved0: u32,
}

const _: () = assert!(size_of::<MemoryRegion>() == 24);
const _: () = assert!(offset_of!(MemoryRegion, base) == 0);
const _: () = assert!(offset_of!(MemoryRegion, size) == 8);
const _: () = assert!(offset_of!(MemoryRegion, kind) == 16);

/// The start-info page. Written by the domain builder, read by the domain.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct StartInfo {
    /// [`START_INFO_MAGIC`].
    pub magic: u64,
    /// [`crate::ABI_VERSION`] of the builder that wrote this page.
    pub abi_version: u32,
    /// This domain's id.
    pub domain_id: u32,
    /// Flags, see [`flags`].
    pub flags: u64,
    /// Bytes of guest-physical space identity-mapped by the initial page tables.
    pub identity_mapped_bytes: u64,
    /// Guest-physical address of the initial ramdisk (a tar archive), 0 if none.
    pub ramdisk_base: u64,
    /// Length of the ramdisk in bytes.
    pub ramdisk_size: u64,
    /// TSC frequency in kHz, 0 if unknown.
    pub tsc_khz: u64,
    /// Number of valid entries in [`StartInfo::memory_regions`].
    pub memory_region_count: u32,
    /// Reserved, zero.
    pub _reserved0: u32,
    /// The domain's memory map, sorted by base, non-overlapping.
    pub memory_regions: [MemoryRegion; MAX_MEMORY_REGIONS],
    /// The command line, UTF-8, NUL-terminated.
    pub cmdline: [u8; CMDLINE_SIZE],
    /// Guest-physical address of the console ring page
    /// ([`crate::console::ConsoleRing`]), 0 if none (since ABI 0.2).
    pub console_page: u64,
    /// The domain's own event channel port of the console, connected to
    /// dom0's before it first runs (since ABI 1.0; from 0.2, dom0's port
    /// for the domain to bind): it sends and receives the console's events
    /// on it ([`crate::console`]).
    pub console_port: u32,
    /// Reserved, zero.
    pub _reserved1: u32,
    /// Guest-physical address of a page the builder reserved for the block
    /// ring (`abi::block`) when the config gives the domain a disk; 0
    /// otherwise (a disk attached later uses a page of the guest's choice).
    /// Since ABI 0.3.
    pub block_ring: u64,
    /// ABI 0.3 only: dom0's event port of the disk. Since ABI 0.4 it is 0:
    /// the front end connects through the store (`device/vbd/51712`, see
    /// `abi::store`), granting this ring page and allocating its own port.
    pub block_port: u32,
    /// Reserved, zero.
    pub _reserved2: u32,
    /// Size of the disk in 512-byte sectors (since ABI 0.3).
    pub block_sectors: u64,
    /// Guest-physical address of the store ring page
    /// ([`crate::xen::io::store::XenstoreDomainInterface`] since ABI 1.0),
    /// 0 if none (since ABI 0.4).
    pub store_page: u64,
    /// The domain's own event port of the store, connected to dom0's
    /// before it first runs (since ABI 1.0; from 0.4, dom0's port for the
    /// domain to bind).
    pub store_port: u32,
    /// Reserved, zero.
    pub _reserved3: u32,
}

/// Bits of [`StartInfo::flags`].
pub mod flags {
    /// This is the privileged driver domain.
    pub const PRIVILEGED: u64 = 1 << 0;
}

const _: () = assert!(size_of::<StartInfo>() == 64 + 24 * MAX_MEMORY_REGIONS + CMDLINE_SIZE + 56);
const _: () = assert!(offset_of!(StartInfo, store_page) == 104 + 24 * MAX_MEMORY_REGIONS + CMDLINE_SIZE);
const _: () = assert!(offset_of!(StartInfo, store_port) == 112 + 24 * MAX_MEMORY_REGIONS + CMDLINE_SIZE);
const _: () = assert!(offset_of!(StartInfo, block_ring) == 80 + 24 * MAX_MEMORY_REGIONS + CMDLINE_SIZE);
const _: () = assert!(offset_of!(StartInfo, block_port) == 88 + 24 * MAX_MEMORY_REGIONS + CMDLINE_SIZE);
const _: () = assert!(offset_of!(StartInfo, block_sectors) == 96 + 24 * MAX_MEMORY_REGIONS + CMDLINE_SIZE);
const _: () = assert!(offset_of!(StartInfo, console_page) == 64 + 24 * MAX_MEMORY_REGIONS + CMDLINE_SIZE);
const _: () = assert!(offset_of!(StartInfo, console_port) == 72 + 24 * MAX_MEMORY_REGIONS + CMDLINE_SIZE);
const _: () = assert!(size_of::<StartInfo>() <= crate::PAGE_SIZE as usize);
const _: () = assert!(offset_of!(StartInfo, magic) == 0);
const _: () = assert!(offset_of!(StartInfo, abi_version) == 8);
const _: () = assert!(offset_of!(StartInfo, domain_id) == 12);
const _: () = assert!(offset_of!(StartInfo, flags) == 16);
const _: () = assert!(offset_of!(StartInfo, identity_mapped_bytes) == 24);
const _: () = assert!(offset_of!(StartInfo, ramdisk_base) == 32);
const _: () = assert!(offset_of!(StartInfo, ramdisk_size) == 40);
const _: () = assert!(offset_of!(StartInfo, tsc_khz) == 48);
const _: () = assert!(offset_of!(StartInfo, memory_region_count) == 56);
const _: () = assert!(offset_of!(StartInfo, memory_regions) == 64);
const _: () = assert!(offset_of!(StartInfo, cmdline) == 64 + 24 * MAX_MEMORY_REGIONS);

impl StartInfo {
    /// An empty start-info page with the magic and version set.
    pub const fn new(domain_id: u32) -> StartInfo {
        StartInfo {
            magic: START_INFO_MAGIC,
            abi_version: crate::ABI_VERSION,
            domain_id,
            flags: 0,
            identity_mapped_bytes: 0,
            ramdisk_base: 0,
            ramdisk_size: 0,
            tsc_khz: 0,
            memory_region_count: 0,
            _reserved0: 0,
            memory_regions: [MemoryRegion { base: 0, size: 0, kind: 0, _reserved0: 0 }; MAX_MEMORY_REGIONS],
            cmdline: [0; CMDLINE_SIZE],
            console_page: 0,
            console_port: 0,
            _reserved1: 0,
            block_ring: 0,
            block_port: 0,
            _reserved2: 0,
            block_sectors: 0,
            store_page: 0,
            store_port: 0,
            _reserved3: 0,
        }
    }

    /// Appends a memory region; `false` if the table is full.
    pub fn push_region(&mut self, base: u64, size: u64, kind: MemoryKind) -> bool {
        let index = self.memory_region_count as usize;
        if index >= MAX_MEMORY_REGIONS {
            return false;
        }
        self.memory_regions[index] = MemoryRegion { base, size, kind: kind as u32, _reserved0: 0 };
        self.memory_region_count += 1;
        true
    }

    /// The valid memory regions (an out-of-range count is clamped).
    pub fn regions(&self) -> &[MemoryRegion] {
        let count = (self.memory_region_count as usize).min(MAX_MEMORY_REGIONS);
        &self.memory_regions[..count]
    }

    /// Sets the command line, truncating at a character boundary so that a
    /// terminating NUL always fits.
    pub fn set_cmdline(&mut self, text: &str) {
        let mut end = text.len().min(CMDLINE_SIZE - 1);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        self.cmdline = [0; CMDLINE_SIZE];
        self.cmdline[..end].copy_from_slice(&text.as_bytes()[..end]);
    }

    /// The structure's bytes in ABI layout (little-endian), for copying into
    /// a domain's memory.
    pub fn to_bytes(&self) -> [u8; size_of::<StartInfo>()] {
        let mut bytes = [0u8; size_of::<StartInfo>()];
        let mut put = |offset: usize, value: &[u8]| bytes[offset..offset + value.len()].copy_from_slice(value);
        put(offset_of!(StartInfo, magic), &self.magic.to_le_bytes());
        put(offset_of!(StartInfo, abi_version), &self.abi_version.to_le_bytes());
        put(offset_of!(StartInfo, domain_id), &self.domain_id.to_le_bytes());
        put(offset_of!(StartInfo, flags), &self.flags.to_le_bytes());
        put(offset_of!(StartInfo, identity_mapped_bytes), &self.identity_mapped_bytes.to_le_bytes());
        put(offset_of!(StartInfo, ramdisk_base), &self.ramdisk_base.to_le_bytes());
        put(offset_of!(StartInfo, ramdisk_size), &self.ramdisk_size.to_le_bytes());
        put(offset_of!(StartInfo, tsc_khz), &self.tsc_khz.to_le_bytes());
        put(offset_of!(StartInfo, memory_region_count), &self.memory_region_count.to_le_bytes());
        for (index, region) in self.memory_regions.iter().enumerate() {
            let at = offset_of!(StartInfo, memory_regions) + index * size_of::<MemoryRegion>();
            put(at, &region.base.to_le_bytes());
            put(at + 8, &region.size.to_le_bytes());
            put(at + 16, &region.kind.to_le_bytes());
        }
        put(offset_of!(StartInfo, cmdline), &self.cmdline);
        put(offset_of!(StartInfo, console_page), &self.console_page.to_le_bytes());
        put(offset_of!(StartInfo, console_port), &self.console_port.to_le_bytes());
        put(offset_of!(StartInfo, block_ring), &self.block_ring.to_le_bytes());
        put(offset_of!(StartInfo, block_port), &self.block_port.to_le_bytes());
        put(offset_of!(StartInfo, block_sectors), &self.block_sectors.to_le_bytes());
        put(offset_of!(StartInfo, store_page), &self.store_page.to_le_bytes());
        put(offset_of!(StartInfo, store_port), &self.store_port.to_le_bytes());
        bytes
    }

    /// The command line up to its NUL; empty if it is not valid UTF-8.
    pub fn cmdline(&self) -> &str {
        let len = self.cmdline.iter().position(|&b| b == 0).unwrap_or(CMDLINE_SIZE);
        core::str::from_utf8(&self.cmdline[..len]).unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_truncates_on_char_boundary() {
        let mut info = StartInfo::new(0);
        let long = "é".repeat(CMDLINE_SIZE);
        info.set_cmdline(&long);
        assert!(info.cmdline().len() < CMDLINE_SIZE);
        assert!(info.cmdline().chars().all(|c| c == 'é'));
        info.set_cmdline("console=com1");
        assert_eq!(info.cmdline(), "console=com1");
    }

    #[test]
    fn bytes_follow_the_documented_layout() {
        let mut info = StartInfo::new(7);
        info.tsc_khz = 0x1122_3344;
        info.console_port = 9;
        info.push_region(0x1000, 0x2000, MemoryKind::Stack);
        info.set_cmdline("x");
        let bytes = info.to_bytes();
        assert_eq!(&bytes[0..8], b"MICASTRT");
        assert_eq!(u32::from_le_bytes(bytes[12..16].try_into().unwrap()), 7);
        assert_eq!(u64::from_le_bytes(bytes[48..56].try_into().unwrap()), 0x1122_3344);
        assert_eq!(u32::from_le_bytes(bytes[56..60].try_into().unwrap()), 1);
        assert_eq!(u64::from_le_bytes(bytes[64..72].try_into().unwrap()), 0x1000);
        assert_eq!(u32::from_le_bytes(bytes[80..84].try_into().unwrap()), MemoryKind::Stack as u32);
        assert_eq!(bytes[offset_of!(StartInfo, cmdline)], b'x');
        assert_eq!(u32::from_le_bytes(bytes[offset_of!(StartInfo, console_port)..][..4].try_into().unwrap()), 9);
    }

    #[test]
    fn regions_are_bounded() {
        let mut info = StartInfo::new(3);
        for i in 0..MAX_MEMORY_REGIONS as u64 {
            assert!(info.push_region(i * 4096, 4096, MemoryKind::Free));
        }
        assert!(!info.push_region(0, 4096, MemoryKind::Free));
        info.memory_region_count = u32::MAX;
        assert_eq!(info.regions().len(), MAX_MEMORY_REGIONS);
    }
}
