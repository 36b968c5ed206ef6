//! The guest builder: turns a kernel ELF and a memory size into a ready,
//! paused domain through the hypervisor's domain-control operations.
//!
//! Everything is checked before anything is allocated (the ELF headers,
//! the memory size); if a hypervisor operation or a read of the kernel or
//! ramdisk fails midway, the half-built domain is destroyed, so a failed
//! `create` leaves nothing behind.
//!
//! The kernel and the ramdisk are [`ImageFile`]s (the boot ramdisk's or
//! the images disk's): their headers are read first, then each segment
//! and the ramdisk are streamed into the guest a [`CHUNK`](image_file::CHUNK) at a time, so a
//! guest of hundreds of MiB never sits whole in dom0.
//!
//! A guest's guest-physical layout (identity-mapped by its page tables up
//! to [`IDENTITY_MAP`]; only RAM is backed, the rest faults in EPT):
//!
//! | range               | contents                              |
//! |---------------------|---------------------------------------|
//! | 0x0000              | unmapped (null guard)                 |
//! | 0x1000              | start-info page                       |
//! | 0x2000              | GDT                                   |
//! | 0x3000 - 0xefff     | initial page tables                   |
//! | 0xf000              | console ring page                     |
//! | 0x10000             | block ring page (when it has a disk)  |
//! | 0x11000             | store ring page                       |
//! | 0x40000 - 0x7ffff   | initial stack                         |
//! | 0x100000 -          | kernel, then free RAM                  |
//!
//! A kernel with Xen's PVH entry note (`ElfImage::pvh_entry`) is started
//! as Xen starts a PVH kernel instead (`abi::xen::start_info`): 32-bit
//! protected mode at that entry, EBX pointing at an `hvm_start_info`, its
//! store and console found through HVM parameters, no page tables or GDT
//! of the builder's:
//!
//! | range               | contents                                   |
//! |---------------------|--------------------------------------------|
//! | 0x0000              | reserved (null guard)                      |
//! | 0x1000              | `hvm_start_info`, the memory map, at 0x1800 the module list |
//! | 0x2000              | command line (NUL-terminated)              |
//! | 0x3000              | console ring page (reserved in the map)    |
//! | 0x4000              | store ring page (reserved in the map)      |
//! | 0x5000              | ACPI tables (RSDP, XSDT, FADT, MADT, DSDT: `acpi_tables`; ACPI in the map) |
//! | 0x6000 -            | RAM; the kernel where its segments say     |
//! | after the kernel    | the ramdisk, if any (page-aligned)         |
//!
//! The ramdisk (a Linux initramfs) is the start info's one module. It
//! stays RAM in the memory map, as Xen's builder leaves it: the kernel
//! reserves it itself before allocating anything and frees it once
//! unpacked (Linux: `early_reserve_initrd`, `free_initrd_mem`); a reserved
//! range would be outside Linux's direct map and be copied first.

use alloc::vec::Vec;

use abi::domctl::{INITIAL_GDT, VCPU_MODE_PVH, VcpuContext};
use abi::start_info::{MemoryKind, StartInfo};
use abi::xen::start_info::{HvmMemmapTableEntry, HvmMemmapType, HvmModlistEntry, HvmStartInfo};
use abi::{DomainId, Error};
use hvcore::elf::{ElfError, ElfImage};

use crate::toolstack::image_file::{self, ElfHeaders, HeaderError, ImageFile, ReadError, StreamError};
use hvcore::paging::{Access, MemoryType, PageSize, PageTable, TableMemory, X86Paging};
use zerocopy::IntoBytes;

pub const START_INFO: u64 = 0x1000;
pub const GDT: u64 = 0x2000;
pub const TABLES_START: u64 = 0x3000;
pub const TABLES_END: u64 = 0xf000;
pub const CONSOLE_PAGE: u64 = 0xf000;
pub const BLOCK_RING: u64 = 0x10000;
pub const STORE_PAGE: u64 = 0x11000;
pub const STACK_BOTTOM: u64 = 0x40000;
pub const STACK_TOP: u64 = 0x80000;
pub const KERNEL_BASE: u64 = 0x100000;
/// Guest-physical space the initial page tables identity-map.
pub const IDENTITY_MAP: u64 = 1 << 30;

/// A PVH boot's `hvm_start_info` (the memory map follows it).
pub const PVH_START_INFO: u64 = 0x1000;
/// The memory map, after the start info in its page.
pub const PVH_MEMMAP: u64 = PVH_START_INFO + 0x100;
/// A PVH boot's module list (one `hvm_modlist_entry`: the ramdisk).
pub const PVH_MODLIST: u64 = PVH_START_INFO + 0x800;
// The module list lies between the memory map (3 entries) and the command line.
const _: () = assert!(PVH_MEMMAP + 3 * 24 <= PVH_MODLIST && PVH_MODLIST + 32 <= PVH_CMDLINE);
/// A PVH boot's command line.
pub const PVH_CMDLINE: u64 = 0x2000;
/// A PVH boot's console ring page.
pub const PVH_CONSOLE_PAGE: u64 = 0x3000;
/// A PVH boot's store ring page.
pub const PVH_STORE_PAGE: u64 = 0x4000;
/// A PVH boot's ACPI tables (`acpi_tables`: the RSDP first).
pub const PVH_ACPI: u64 = 0x5000;
/// Where a PVH boot's RAM starts (below: the builder's pages).
pub const PVH_RAM: u64 = 0x6000;
/// Smallest guest: 2 MiB.
pub const MIN_MEMORY: u64 = 2 << 20;

const TABLE_PAGES: usize = ((TABLES_END - TABLES_START) / 4096) as usize;

/// The hypervisor operations the builder needs (dom0's hypercalls; a mock in tests).
pub trait DomainControl {
    fn create(&mut self, max_pages: u64) -> Result<DomainId, Error>;
    fn populate(&mut self, domain: DomainId, guest_physical: u64, pages: u64) -> Result<(), Error>;
    fn copy(&mut self, domain: DomainId, guest_physical: u64, bytes: &[u8]) -> Result<(), Error>;
    fn set_context(&mut self, domain: DomainId, context: &VcpuContext) -> Result<(), Error>;
    fn set_scheduling(&mut self, domain: DomainId, weight: u32, cap: u32) -> Result<(), Error>;
    /// Sets up the console back end for `domain`, whose ring page is at
    /// `page`; returns the domain's port, already connected to dom0's.
    fn connect_console(&mut self, domain: DomainId, page: u64) -> Result<u32, Error>;
    /// Sets up the store for `domain`, whose ring page is at `page`; returns
    /// the domain's port, already connected to dom0's.
    fn connect_store(&mut self, domain: DomainId, page: u64) -> Result<u32, Error>;
    /// Sets HVM parameter `index` (`abi::xen::hvm`) of `domain` to `value`
    /// (Xen's toolstack call; the PVH boot's store and console).
    fn set_hvm_param(&mut self, domain: DomainId, index: u32, value: u64) -> Result<(), Error>;
    /// How many vCPUs `create` gives a domain (the PVH boot's MADT names
    /// each).
    fn vcpus(&self) -> u32;
    /// Sets `domain`'s memory map (Xen's `memory_op` set_memory_map), which
    /// a PVH guest may also ask for.
    fn set_memory_map(&mut self, domain: DomainId, map: &[abi::xen::memory::E820Entry]) -> Result<(), Error>;
    fn destroy(&mut self, domain: DomainId);
}

/// What to build.
#[derive(Clone, Copy)]
pub struct BuildRequest<'a> {
    /// The kernel's ELF file, read a range at a time.
    pub kernel: &'a dyn ImageFile,
    pub memory_bytes: u64,
    pub cmdline: &'a str,
    pub tsc_khz: u64,
    pub weight: u32,
    pub cap: u32,
    /// The guest's disk size in sectors, if it has a disk.
    pub block_sectors: Option<u64>,
    /// The file a PVH kernel gets as its module (its initramfs), if any.
    pub ramdisk: Option<&'a dyn ImageFile>,
    /// The config said `type = "pvh"`: a kernel without Xen's PVH entry
    /// note is refused instead of booted as a Mica guest.
    pub require_pvh: bool,
}

/// Why a build failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildError {
    /// The kernel is not a loadable ELF.
    Kernel(ElfError),
    /// The memory size is outside what a guest may have.
    Memory,
    /// A hypervisor operation failed (the step, the error); the domain was destroyed.
    Hypervisor(&'static str, Error),
    /// The ramdisk does not fit the guest's memory above the kernel.
    RamdiskTooBig,
    /// A ramdisk was given for a kernel without Xen's PVH entry note (only a
    /// PVH boot has a module list).
    RamdiskNeedsPvh,
    /// `type = "pvh"`, and the kernel has no PVH entry note.
    NotPvh,
    /// The kernel's or the ramdisk's file could not be read (which, the
    /// reason); the domain, if made, was destroyed.
    Read(&'static str, ReadError),
}

impl core::fmt::Display for BuildError {
    fn fmt(&self, out: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self {
            BuildError::Kernel(error) => write!(out, "bad kernel: {}", error.describe()),
            BuildError::Memory => write!(out, "memory must be between 2 MiB and 1024 MiB"),
            BuildError::Hypervisor(step, error) => write!(out, "{step} failed: {}", error.describe()),
            BuildError::RamdiskTooBig => write!(out, "the ramdisk does not fit the memory above the kernel"),
            BuildError::RamdiskNeedsPvh => write!(out, "a ramdisk needs a PVH kernel (Xen's PHYS32_ENTRY note)"),
            BuildError::NotPvh => write!(
                out,
                "type = \"pvh\", but the kernel has no PVH entry (Xen's PHYS32_ENTRY note): a bzImage must be unpacked \
                 to its ELF vmlinux first (tests/linux.sh shows how)"
            ),
            BuildError::Read(file, error) => write!(out, "reading the {file}: {error}"),
        }
    }
}

/// Page-table pages built in dom0's memory, addressed by their future
/// guest-physical addresses.
struct LocalTables {
    pages: [[u64; 512]; TABLE_PAGES],
    used: usize,
}

impl LocalTables {
    fn slot(&self, table: u64) -> Option<usize> {
        let index = table.checked_sub(TABLES_START)? / 4096;
        (index < self.used as u64).then_some(index as usize)
    }
}

impl TableMemory for LocalTables {
    fn allocate_table(&mut self) -> Option<u64> {
        if self.used == TABLE_PAGES {
            return None;
        }
        self.pages[self.used] = [0; 512];
        self.used += 1;
        Some(TABLES_START + (self.used as u64 - 1) * 4096)
    }

    fn read_entry(&self, table: u64, index: usize) -> u64 {
        self.slot(table).map_or(0, |slot| self.pages[slot][index % 512])
    }

    fn write_entry(&mut self, table: u64, index: usize, value: u64) {
        if let Some(slot) = self.slot(table) {
            self.pages[slot][index % 512] = value;
        }
    }

    fn free_table(&mut self, _table: u64) {}
}

fn page_bytes(words: &[u64; 512]) -> [u8; 4096] {
    let mut bytes = [0u8; 4096];
    for (slot, word) in bytes.chunks_exact_mut(8).zip(words) {
        slot.copy_from_slice(&word.to_le_bytes());
    }
    bytes
}

/// Builds a paused guest; returns its id.
pub fn build(control: &mut impl DomainControl, request: &BuildRequest) -> Result<DomainId, BuildError> {
    let headers = ElfHeaders::read(request.kernel).map_err(|error| match error {
        HeaderError::Elf(error) => BuildError::Kernel(error),
        HeaderError::Read(error) => BuildError::Read("kernel", error),
    })?;
    let image = headers.image();
    let memory = request.memory_bytes;
    if !(MIN_MEMORY..=IDENTITY_MAP).contains(&memory) || !memory.is_multiple_of(4096) {
        return Err(BuildError::Memory);
    }
    let pvh = image.pvh_entry().is_some();
    if request.require_pvh && !pvh {
        return Err(BuildError::NotPvh);
    }
    image.check_fits(if pvh { PVH_RAM } else { KERNEL_BASE }, memory).map_err(BuildError::Kernel)?;
    let ramdisk = match request.ramdisk {
        Some(_) if !pvh => return Err(BuildError::RamdiskNeedsPvh),
        Some(file) => Some(ramdisk_address(&image, file.length(), memory)?),
        None => None,
    };
    let pages = memory / 4096;
    let id = control.create(pages).map_err(|error| BuildError::Hypervisor("create", error))?;
    let built = if pvh {
        populate_and_load_pvh(control, id, &headers, request, ramdisk)
    } else {
        populate_and_load(control, id, &headers, request)
    };
    match built {
        Ok(()) => Ok(id),
        Err(error) => {
            control.destroy(id);
            Err(error)
        }
    }
}

/// Where a ramdisk of `length` bytes goes: the first page after the
/// kernel's last segment (its memory size, bss included), ending within
/// `memory`.
fn ramdisk_address(image: &ElfImage, length: u64, memory: u64) -> Result<u64, BuildError> {
    let (_, kernel_end) = image.physical_extent();
    let start = kernel_end.next_multiple_of(4096);
    match start.checked_add(length) {
        Some(end) if end <= memory => Ok(start),
        _ => Err(BuildError::RamdiskTooBig),
    }
}

/// Gives domain `id` `memory` bytes of RAM from 0 and streams the
/// kernel's segments from its file to their physical addresses (the rest
/// of each segment, its bss, is the fresh memory's zeros).
fn populate_and_copy_segments(
    control: &mut impl DomainControl,
    id: DomainId,
    headers: &ElfHeaders,
    request: &BuildRequest,
) -> Result<(), BuildError> {
    let step = |name: &'static str| move |error| BuildError::Hypervisor(name, error);
    control.populate(id, 0, request.memory_bytes / 4096).map_err(step("populate memory"))?;
    let mut buffer = Vec::new();
    for (index, segment) in headers.image().segments().iter().enumerate() {
        let (offset, length) = headers.file_range(index);
        load_file(control, id, request.kernel, offset, length, segment.phys_addr, &mut buffer, "kernel")?;
    }
    Ok(())
}

/// Streams `length` bytes of `file` from `offset` on into domain `id` at
/// `destination`.
#[allow(clippy::too_many_arguments)] // one step of the build, named by its caller
fn load_file(
    control: &mut impl DomainControl,
    id: DomainId,
    file: &dyn ImageFile,
    offset: u64,
    length: u64,
    destination: u64,
    buffer: &mut Vec<u8>,
    what: &'static str,
) -> Result<(), BuildError> {
    image_file::stream(file, offset, length, buffer, |done, piece| control.copy(id, destination + done, piece)).map_err(
        |error| match error {
            StreamError::Read(error) => BuildError::Read(what, error),
            StreamError::Write(error) => {
                BuildError::Hypervisor(if what == "kernel" { "load kernel" } else { "load ramdisk" }, error)
            }
        },
    )
}

fn populate_and_load(
    control: &mut impl DomainControl,
    id: DomainId,
    headers: &ElfHeaders,
    request: &BuildRequest,
) -> Result<(), BuildError> {
    let step = |name: &'static str| move |error| BuildError::Hypervisor(name, error);
    let memory = request.memory_bytes;
    populate_and_copy_segments(control, id, headers, request)?;
    let image = headers.image();

    // Page tables: 4 KiB pages below 2 MiB (page 0 left out), 2 MiB pages above.
    let mut tables = LocalTables { pages: [[0; 512]; TABLE_PAGES], used: 0 };
    let rwx = Access::READ | Access::WRITE | Access::EXECUTE;
    let two_mib = PageSize::Size2M.bytes();
    let mut paging = PageTable::<X86Paging>::new(&mut tables).map_err(|_| BuildError::Memory)?;
    paging
        .map_range(&mut tables, 4096, 4096, two_mib - 4096, rwx, MemoryType::WriteBack, PageSize::Size4K)
        .and_then(|()| {
            paging.map_range(
                &mut tables,
                two_mib,
                two_mib,
                IDENTITY_MAP - two_mib,
                rwx,
                MemoryType::WriteBack,
                PageSize::Size2M,
            )
        })
        .map_err(|_| BuildError::Memory)?;
    for (index, page) in tables.pages[..tables.used].iter().enumerate() {
        control.copy(id, TABLES_START + index as u64 * 4096, &page_bytes(page)).map_err(step("write page tables"))?;
    }
    let mut gdt = [0u8; 40];
    for (slot, descriptor) in gdt.chunks_exact_mut(8).zip(INITIAL_GDT) {
        slot.copy_from_slice(&descriptor.to_le_bytes());
    }
    control.copy(id, GDT, &gdt).map_err(step("write GDT"))?;

    let console_port = control.connect_console(id, CONSOLE_PAGE).map_err(step("connect console"))?;
    let (kernel_start, kernel_end) = image.physical_extent();
    let kernel_start = kernel_start & !0xfff;
    let kernel_end = kernel_end.next_multiple_of(4096);
    let mut start_info = StartInfo::new(id);
    start_info.identity_mapped_bytes = IDENTITY_MAP;
    start_info.tsc_khz = request.tsc_khz;
    start_info.console_page = CONSOLE_PAGE;
    start_info.console_port = console_port;
    start_info.set_cmdline(request.cmdline);
    start_info.store_port = control.connect_store(id, STORE_PAGE).map_err(step("connect store"))?;
    start_info.store_page = STORE_PAGE;
    if let Some(sectors) = request.block_sectors {
        // The front end connects through the store (device/vbd/51712); the page
        // is reserved for its ring, the size is only informational.
        start_info.block_ring = BLOCK_RING;
        start_info.block_sectors = sectors;
    }
    for (start, end, kind) in [
        (START_INFO, STORE_PAGE + 4096, MemoryKind::Boot),
        (STORE_PAGE + 4096, STACK_BOTTOM, MemoryKind::Free),
        (STACK_BOTTOM, STACK_TOP, MemoryKind::Stack),
        (STACK_TOP, kernel_start, MemoryKind::Free),
        (kernel_start, kernel_end, MemoryKind::Kernel),
        (kernel_end, memory, MemoryKind::Free),
    ] {
        if end > start {
            start_info.push_region(start, end - start, kind);
        }
    }
    control.copy(id, START_INFO, &start_info.to_bytes()).map_err(step("write start info"))?;

    let context = VcpuContext {
        rip: image.entry(),
        rsp: STACK_TOP - 8,
        cr3: paging.root(),
        rdi: START_INFO,
        gdt_base: GDT,
        gdt_limit: (INITIAL_GDT.len() * 8 - 1) as u16,
        mode: abi::domctl::VCPU_MODE_LONG,
        _reserved0: [0; 5],
    };
    control.set_context(id, &context).map_err(step("set vCPU context"))?;
    control.set_scheduling(id, request.weight, request.cap).map_err(step("set scheduling"))?;
    Ok(())
}

/// The PVH boot of a kernel with Xen's entry note (see the module docs):
/// its segments, an `hvm_start_info` with the command line and memory map,
/// the store and console as HVM parameters, vCPU 0 at the 32-bit entry.
fn populate_and_load_pvh(
    control: &mut impl DomainControl,
    id: DomainId,
    headers: &ElfHeaders,
    request: &BuildRequest,
    ramdisk_address: Option<u64>,
) -> Result<(), BuildError> {
    use abi::xen::hvm::{HVM_PARAM_CONSOLE_EVTCHN, HVM_PARAM_CONSOLE_PFN, HVM_PARAM_STORE_EVTCHN, HVM_PARAM_STORE_PFN};
    let step = |name: &'static str| move |error| BuildError::Hypervisor(name, error);
    let memory = request.memory_bytes;
    populate_and_copy_segments(control, id, headers, request)?;
    let image = headers.image();
    let mut cmdline = [0u8; 4096];
    let length = request.cmdline.len().min(cmdline.len() - 1);
    cmdline[..length].copy_from_slice(&request.cmdline.as_bytes()[..length]);
    control.copy(id, PVH_CMDLINE, &cmdline[..=length]).map_err(step("write command line"))?;

    let console_port = control.connect_console(id, PVH_CONSOLE_PAGE).map_err(step("connect console"))?;
    let store_port = control.connect_store(id, PVH_STORE_PAGE).map_err(step("connect store"))?;
    for (index, value) in [
        (HVM_PARAM_CONSOLE_PFN, PVH_CONSOLE_PAGE / 4096),
        (HVM_PARAM_CONSOLE_EVTCHN, u64::from(console_port)),
        (HVM_PARAM_STORE_PFN, PVH_STORE_PAGE / 4096),
        (HVM_PARAM_STORE_EVTCHN, u64::from(store_port)),
    ] {
        control.set_hvm_param(id, index, value).map_err(step("set HVM parameters"))?;
    }

    let tables = crate::toolstack::acpi_tables::build(PVH_ACPI, control.vcpus());
    control.copy(id, PVH_ACPI, &tables).map_err(step("write ACPI tables"))?;
    let memmap = [
        (0, PVH_ACPI, HvmMemmapType::Reserved),
        (PVH_ACPI, PVH_RAM - PVH_ACPI, HvmMemmapType::Acpi),
        (PVH_RAM, memory - PVH_RAM, HvmMemmapType::Ram),
    ]
    .map(|(addr, size, kind)| HvmMemmapTableEntry { addr, size, r#type: kind.number(), reserved: 0 });
    let mut info = HvmStartInfo {
        cmdline_paddr: PVH_CMDLINE,
        rsdp_paddr: PVH_ACPI,
        memmap_paddr: PVH_MEMMAP,
        memmap_entries: memmap.len() as u32,
        ..HvmStartInfo::new()
    };
    if let (Some(file), Some(paddr)) = (request.ramdisk, ramdisk_address) {
        let mut buffer = Vec::new();
        load_file(control, id, file, 0, file.length(), paddr, &mut buffer, "ramdisk")?;
        let module = HvmModlistEntry { paddr, size: file.length(), cmdline_paddr: 0, reserved: 0 };
        control.copy(id, PVH_MODLIST, module.as_bytes()).map_err(step("write module list"))?;
        info.modlist_paddr = PVH_MODLIST;
        info.nr_modules = 1;
    }
    control.copy(id, PVH_START_INFO, info.as_bytes()).map_err(step("write start info"))?;
    control.copy(id, PVH_MEMMAP, memmap.as_bytes()).map_err(step("write memory map"))?;
    let e820 =
        memmap.map(|entry| abi::xen::memory::E820Entry { addr: entry.addr, size: entry.size, r#type: entry.r#type });
    control.set_memory_map(id, &e820).map_err(step("set memory map"))?;

    let context = VcpuContext {
        rip: image.pvh_entry().map_or(0, u64::from),
        rdi: PVH_START_INFO,
        mode: VCPU_MODE_PVH,
        ..VcpuContext::default()
    };
    control.set_context(id, &context).map_err(step("set vCPU context"))?;
    control.set_scheduling(id, request.weight, request.cap).map_err(step("set scheduling"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::toolstack::image_file::CHUNK;
    use std::collections::{HashMap, HashSet};

    /// A pretend hypervisor: memory per domain as a byte map.
    #[derive(Default)]
    struct Mock {
        next: DomainId,
        live: HashSet<DomainId>,
        memory: HashMap<DomainId, HashMap<u64, u8>>,
        populated: HashMap<DomainId, (u64, u64)>,
        context: Option<VcpuContext>,
        fail_at: Option<&'static str>,
        destroyed: Vec<DomainId>,
        params: HashMap<(DomainId, u32), u64>,
        memory_maps: HashMap<DomainId, Vec<abi::xen::memory::E820Entry>>,
    }

    impl Mock {
        fn fail(&self, step: &'static str) -> Result<(), Error> {
            if self.fail_at == Some(step) { Err(Error::OutOfMemory) } else { Ok(()) }
        }
        fn read_u64(&self, domain: DomainId, address: u64) -> u64 {
            let memory = &self.memory[&domain];
            u64::from_le_bytes(core::array::from_fn(|i| *memory.get(&(address + i as u64)).unwrap_or(&0)))
        }
    }

    impl DomainControl for Mock {
        fn create(&mut self, _max_pages: u64) -> Result<DomainId, Error> {
            self.fail("create")?;
            self.next += 1;
            self.live.insert(self.next);
            self.memory.insert(self.next, HashMap::new());
            Ok(self.next)
        }
        fn populate(&mut self, domain: DomainId, guest_physical: u64, pages: u64) -> Result<(), Error> {
            self.fail("populate")?;
            self.populated.insert(domain, (guest_physical, pages));
            Ok(())
        }
        fn copy(&mut self, domain: DomainId, guest_physical: u64, bytes: &[u8]) -> Result<(), Error> {
            self.fail("copy")?;
            let (base, pages) = self.populated[&domain];
            assert!(
                guest_physical >= base && guest_physical + bytes.len() as u64 <= base + pages * 4096,
                "copy outside RAM"
            );
            let memory = self.memory.get_mut(&domain).unwrap();
            for (offset, byte) in bytes.iter().enumerate() {
                memory.insert(guest_physical + offset as u64, *byte);
            }
            Ok(())
        }
        fn set_context(&mut self, _domain: DomainId, context: &VcpuContext) -> Result<(), Error> {
            self.fail("context")?;
            self.context = Some(*context);
            Ok(())
        }
        fn set_scheduling(&mut self, _domain: DomainId, _weight: u32, _cap: u32) -> Result<(), Error> {
            Ok(())
        }
        fn connect_console(&mut self, _domain: DomainId, page: u64) -> Result<u32, Error> {
            assert!([CONSOLE_PAGE, PVH_CONSOLE_PAGE].contains(&page));
            self.fail("console")?;
            Ok(5)
        }
        fn connect_store(&mut self, _domain: DomainId, page: u64) -> Result<u32, Error> {
            assert!([STORE_PAGE, PVH_STORE_PAGE].contains(&page));
            self.fail("store")?;
            Ok(7)
        }
        fn vcpus(&self) -> u32 {
            2
        }
        fn set_memory_map(&mut self, domain: DomainId, map: &[abi::xen::memory::E820Entry]) -> Result<(), Error> {
            self.fail("memory map")?;
            self.memory_maps.insert(domain, map.to_vec());
            Ok(())
        }
        fn set_hvm_param(&mut self, domain: DomainId, index: u32, value: u64) -> Result<(), Error> {
            self.fail("param")?;
            self.params.insert((domain, index), value);
            Ok(())
        }
        fn destroy(&mut self, domain: DomainId) {
            assert!(self.live.remove(&domain));
            self.destroyed.push(domain);
        }
    }

    /// A minimal x86-64 ELF executable: one RX segment at 1 MiB, 64 bytes of code
    /// and 4 KiB of bss, entry at its start.
    fn kernel() -> Vec<u8> {
        let mut elf = vec![0u8; 64 + 56 + 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[6] = 1;
        elf[16..18].copy_from_slice(&2u16.to_le_bytes());
        elf[18..20].copy_from_slice(&62u16.to_le_bytes());
        elf[20..24].copy_from_slice(&1u32.to_le_bytes());
        elf[24..32].copy_from_slice(&0x100000u64.to_le_bytes());
        elf[32..40].copy_from_slice(&64u64.to_le_bytes());
        elf[52..54].copy_from_slice(&64u16.to_le_bytes());
        elf[54..56].copy_from_slice(&56u16.to_le_bytes());
        elf[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = &mut elf[64..120];
        ph[0..4].copy_from_slice(&1u32.to_le_bytes());
        ph[4..8].copy_from_slice(&5u32.to_le_bytes());
        ph[8..16].copy_from_slice(&120u64.to_le_bytes());
        ph[16..24].copy_from_slice(&0x100000u64.to_le_bytes());
        ph[24..32].copy_from_slice(&0x100000u64.to_le_bytes());
        ph[32..40].copy_from_slice(&64u64.to_le_bytes());
        ph[40..48].copy_from_slice(&(64u64 + 4096).to_le_bytes());
        ph[48..56].copy_from_slice(&4096u64.to_le_bytes());
        for (i, byte) in elf[120..].iter_mut().enumerate() {
            *byte = 0x90 ^ i as u8;
        }
        elf
    }

    /// [`kernel`] with a second program header: a note segment holding
    /// Xen's PVH entry note (entry 1 MiB + 16, 8 bytes as Linux writes it).
    fn pvh_kernel() -> Vec<u8> {
        let mut elf = kernel();
        let mut note = Vec::new();
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&8u32.to_le_bytes());
        note.extend_from_slice(&18u32.to_le_bytes());
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&0x100010u64.to_le_bytes());
        let note_offset = elf.len() as u64;
        elf.extend_from_slice(&note);
        // The header table grows by one entry: move it to the end.
        let table = elf.len() as u64;
        let mut headers = elf[64..120].to_vec();
        let mut header = [0u8; 56];
        header[0..4].copy_from_slice(&4u32.to_le_bytes());
        header[4..8].copy_from_slice(&4u32.to_le_bytes());
        header[8..16].copy_from_slice(&note_offset.to_le_bytes());
        header[32..40].copy_from_slice(&(note.len() as u64).to_le_bytes());
        header[40..48].copy_from_slice(&(note.len() as u64).to_le_bytes());
        header[48..56].copy_from_slice(&4u64.to_le_bytes());
        headers.extend_from_slice(&header);
        elf.extend_from_slice(&headers);
        elf[32..40].copy_from_slice(&table.to_le_bytes());
        elf[56..58].copy_from_slice(&2u16.to_le_bytes());
        elf
    }

    #[test]
    fn a_pvh_kernel_starts_in_32_bit_mode_with_an_hvm_start_info() {
        use abi::xen::hvm::{
            HVM_PARAM_CONSOLE_EVTCHN, HVM_PARAM_CONSOLE_PFN, HVM_PARAM_STORE_EVTCHN, HVM_PARAM_STORE_PFN,
        };
        use zerocopy::FromBytes;
        let kernel = pvh_kernel();
        let mut mock = Mock::default();
        let id = build(&mut mock, &request(&kernel)).unwrap();
        assert_eq!(mock.memory[&id][&0x100000], 0x90, "segments at their physical addresses");
        let context = mock.context.unwrap();
        assert_eq!(
            context,
            VcpuContext { rip: 0x100010, rdi: PVH_START_INFO, mode: VCPU_MODE_PVH, ..VcpuContext::default() }
        );
        let bytes = |address: u64, length: usize| -> Vec<u8> {
            (0..length as u64).map(|i| *mock.memory[&id].get(&(address + i)).unwrap_or(&0)).collect()
        };
        let info = HvmStartInfo::read_from_bytes(&bytes(PVH_START_INFO, 56)).unwrap();
        assert!(info.has_memmap());
        assert_eq!((info.cmdline_paddr, info.memmap_paddr, info.memmap_entries), (PVH_CMDLINE, PVH_MEMMAP, 3));
        assert_eq!(bytes(PVH_CMDLINE, 10), b"mode=test\0");
        let map = <[HvmMemmapTableEntry; 3]>::read_from_bytes(&bytes(PVH_MEMMAP, 72)).unwrap();
        assert_eq!((map[0].addr, map[0].size, map[0].r#type), (0, PVH_ACPI, 2), "the builder's pages reserved");
        assert_eq!((map[1].addr, map[1].size, map[1].r#type), (PVH_ACPI, 4096, 3), "the ACPI tables");
        assert_eq!((map[2].addr, map[2].size, map[2].r#type), (PVH_RAM, (16 << 20) - PVH_RAM, 1));
        // The same map for `memory_op` memory_map.
        let e820: Vec<(u64, u64, u32)> = mock.memory_maps[&id].iter().map(|e| (e.addr, e.size, e.r#type)).collect();
        assert_eq!(e820, map.iter().map(|e| (e.addr, e.size, e.r#type)).collect::<Vec<_>>());
        // The ACPI tables, as a kernel finds them: one local APIC per vCPU.
        assert_eq!(info.rsdp_paddr, PVH_ACPI);
        assert_eq!(&bytes(PVH_ACPI, 8)[..], b"RSD PTR ");
        let tables = bytes(PVH_ACPI, crate::toolstack::acpi_tables::TABLES_SIZE);
        assert_eq!(tables, crate::toolstack::acpi_tables::build(PVH_ACPI, 2));
        // The store and console, as Xen's guests look for them.
        assert_eq!(mock.params[&(id, HVM_PARAM_CONSOLE_PFN)], PVH_CONSOLE_PAGE / 4096);
        assert_eq!(mock.params[&(id, HVM_PARAM_CONSOLE_EVTCHN)], 5);
        assert_eq!(mock.params[&(id, HVM_PARAM_STORE_PFN)], PVH_STORE_PAGE / 4096);
        assert_eq!(mock.params[&(id, HVM_PARAM_STORE_EVTCHN)], 7);
        // A failing parameter destroys the half-built domain.
        let mut failing = Mock { fail_at: Some("param"), ..Mock::default() };
        assert!(matches!(build(&mut failing, &request(&kernel)), Err(BuildError::Hypervisor("set HVM parameters", _))));
        assert_eq!(failing.destroyed, [1]);
    }

    #[test]
    fn a_ramdisk_is_the_pvh_boots_module_after_the_kernel() {
        use zerocopy::FromBytes;
        let kernel = pvh_kernel();
        let ramdisk: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8 + 1).collect();
        let mut mock = Mock::default();
        let id = build(&mut mock, &BuildRequest { ramdisk: Some(&ramdisk), ..request(&kernel) }).unwrap();
        let bytes = |address: u64, length: usize| -> Vec<u8> {
            (0..length as u64).map(|i| *mock.memory[&id].get(&(address + i)).unwrap_or(&0)).collect()
        };
        let info = HvmStartInfo::read_from_bytes(&bytes(PVH_START_INFO, 56)).unwrap();
        assert_eq!((info.nr_modules, info.modlist_paddr), (1, PVH_MODLIST));
        let module = HvmModlistEntry::read_from_bytes(&bytes(PVH_MODLIST, 32)).unwrap();
        // The kernel's segment ends at 1 MiB + 64 + 4 KiB of bss: the next page.
        assert_eq!(module, HvmModlistEntry { paddr: 0x102000, size: 5000, cmdline_paddr: 0, reserved: 0 });
        assert_eq!(bytes(0x102000, 5000), ramdisk);
        // The map still says RAM.
        let map = <[HvmMemmapTableEntry; 3]>::read_from_bytes(&bytes(PVH_MEMMAP, 72)).unwrap();
        assert_eq!((map[2].addr, map[2].size, map[2].r#type), (PVH_RAM, (16 << 20) - PVH_RAM, 1));

        // Without a ramdisk: no module.
        let id = build(&mut mock, &request(&kernel)).unwrap();
        let info = HvmStartInfo::read_from_bytes(
            &(0..56).map(|i| *mock.memory[&id].get(&(PVH_START_INFO + i)).unwrap_or(&0)).collect::<Vec<_>>(),
        )
        .unwrap();
        assert_eq!((info.nr_modules, info.modlist_paddr), (0, 0));
    }

    #[test]
    fn a_ramdisk_that_does_not_fit_or_has_no_module_list_allocates_nothing() {
        let kernel = pvh_kernel();
        let mut mock = Mock::default();
        // 16 MiB of memory, the kernel up to 0x102000: exactly the rest fits.
        let fits = vec![1u8; (16 << 20) - 0x102000];
        assert!(build(&mut mock, &BuildRequest { ramdisk: Some(&fits), ..request(&kernel) }).is_ok());
        let too_big = vec![1u8; (16 << 20) - 0x102000 + 1];
        let result = build(&mut mock, &BuildRequest { ramdisk: Some(&too_big), ..request(&kernel) });
        assert_eq!(result, Err(BuildError::RamdiskTooBig));
        let native = self::kernel();
        let result = build(&mut mock, &BuildRequest { ramdisk: Some(&vec![1u8, 2, 3]), ..request(&native) });
        assert_eq!(result, Err(BuildError::RamdiskNeedsPvh));
        // `type = "pvh"`: a PVH kernel builds, a Mica kernel is refused.
        let result = build(&mut mock, &BuildRequest { require_pvh: true, ..request(&native) });
        assert_eq!(result, Err(BuildError::NotPvh));
        assert_eq!(mock.next, 1, "only the first build created a domain");
        assert!(build(&mut mock, &BuildRequest { require_pvh: true, ..request(&kernel) }).is_ok());
    }

    fn request(kernel: &dyn ImageFile) -> BuildRequest<'_> {
        BuildRequest {
            kernel,
            memory_bytes: 16 << 20,
            cmdline: "mode=test",
            tsc_khz: 50_000,
            weight: 256,
            cap: 0,
            block_sectors: Some(100),
            ramdisk: None,
            require_pvh: false,
        }
    }

    /// Guest memory seen as page-table memory, for walking the built tables.
    struct GuestView<'a>(&'a Mock, DomainId);
    impl TableMemory for GuestView<'_> {
        fn allocate_table(&mut self) -> Option<u64> {
            None
        }
        fn read_entry(&self, table: u64, index: usize) -> u64 {
            self.0.read_u64(self.1, table + index as u64 * 8)
        }
        fn write_entry(&mut self, _: u64, _: usize, _: u64) {}
        fn free_table(&mut self, _: u64) {}
    }

    #[test]
    fn builds_a_guest_with_identity_tables_start_info_and_context() {
        let kernel = kernel();
        let mut mock = Mock::default();
        let id = build(&mut mock, &request(&kernel)).unwrap();
        assert_eq!(mock.populated[&id], (0, 4096));
        // The code landed at 1 MiB.
        assert_eq!(mock.memory[&id][&0x100000], 0x90);
        let context = mock.context.unwrap();
        assert_eq!(context.rip, 0x100000);
        assert_eq!(context.rdi, START_INFO);
        assert_eq!(context.cr3, TABLES_START);
        // Walk the page tables the guest will use.
        let paging = PageTable::<X86Paging>::from_root(context.cr3);
        let view = GuestView(&mock, id);
        assert_eq!(paging.translate(&view, 0), None, "page 0 is a null guard");
        assert_eq!(paging.translate(&view, 0x1234).map(|t| t.0), Some(0x1234));
        assert_eq!(paging.translate(&view, 0x100010).map(|t| t.0), Some(0x100010));
        assert_eq!(paging.translate(&view, 0x3fff_f000).map(|t| t.0), Some(0x3fff_f000));
        assert_eq!(paging.translate(&view, IDENTITY_MAP), None);
        // The start-info page.
        assert_eq!(mock.read_u64(id, START_INFO), abi::start_info::START_INFO_MAGIC);
        assert_eq!(mock.read_u64(id, START_INFO + 48), 50_000, "tsc_khz");
        let block_ring = core::mem::offset_of!(StartInfo, block_ring) as u64;
        assert_eq!(mock.read_u64(id, START_INFO + block_ring), BLOCK_RING);
        let block_sectors = core::mem::offset_of!(StartInfo, block_sectors) as u64;
        assert_eq!(mock.read_u64(id, START_INFO + block_sectors), 100);
    }

    #[test]
    fn a_bad_kernel_allocates_nothing() {
        let mut broken = kernel();
        broken[18] = 3; // EM_386
        let mut mock = Mock::default();
        assert!(matches!(build(&mut mock, &request(&broken)), Err(BuildError::Kernel(_))));
        assert_eq!(mock.next, 0, "no domain was created");
        for length in [0, 10, 63, 100, 150] {
            assert!(matches!(build(&mut mock, &request(&kernel()[..length].to_vec())), Err(BuildError::Kernel(_))));
        }
        assert_eq!(mock.next, 0);
        let kernel = kernel();
        let mut small = request(&kernel);
        small.memory_bytes = 1 << 20;
        assert_eq!(build(&mut mock, &small), Err(BuildError::Memory));
        small.memory_bytes = 2 << 30;
        assert_eq!(build(&mut mock, &small), Err(BuildError::Memory));
        assert_eq!(mock.next, 0);
    }

    /// A file whose reads of bytes in `bad` fail (a disk that fails mid-way).
    struct Failing {
        bytes: Vec<u8>,
        bad: core::ops::Range<u64>,
    }

    impl ImageFile for Failing {
        fn length(&self) -> u64 {
            self.bytes.len() as u64
        }
        fn read_at(&self, offset: u64, buffer: &mut [u8]) -> Result<(), ReadError> {
            if offset < self.bad.end && self.bad.start < offset + buffer.len() as u64 {
                return Err(ReadError("the disk failed"));
            }
            self.bytes.read_at(offset, buffer)
        }
    }

    #[test]
    fn a_file_that_fails_while_streaming_destroys_the_half_built_domain() {
        let kernel = pvh_kernel();
        // The headers and the note read, the segment's bytes (120-183) do not.
        let failing = Failing { bytes: kernel.clone(), bad: 120..184 };
        let mut mock = Mock::default();
        assert_eq!(build(&mut mock, &request(&failing)), Err(BuildError::Read("kernel", ReadError("the disk failed"))));
        assert_eq!(mock.destroyed, [1]);
        // The initramfs fails past its first chunk: nothing is left either.
        let ramdisk = Failing { bytes: vec![7u8; 3 * CHUNK], bad: CHUNK as u64..3 * CHUNK as u64 };
        let result = build(&mut mock, &BuildRequest { ramdisk: Some(&ramdisk), ..request(&kernel) });
        assert_eq!(result, Err(BuildError::Read("ramdisk", ReadError("the disk failed"))));
        assert_eq!(mock.destroyed, [1, 2]);
        assert!(mock.live.is_empty());
        // Read whole, the same initramfs lands intact, a chunk at a time.
        let whole = vec![7u8; 3 * CHUNK];
        let id = build(&mut mock, &BuildRequest { ramdisk: Some(&whole), ..request(&kernel) }).unwrap();
        assert!((0..3 * CHUNK as u64).all(|offset| mock.memory[&id][&(0x102000 + offset)] == 7));
    }

    #[test]
    fn a_failing_step_destroys_the_half_built_domain() {
        let kernel = kernel();
        for step in ["populate", "copy", "console", "store", "context"] {
            let mut mock = Mock { fail_at: Some(step), ..Mock::default() };
            let result = build(&mut mock, &request(&kernel));
            assert!(matches!(result, Err(BuildError::Hypervisor(_, Error::OutOfMemory))), "{step}: {result:?}");
            assert!(mock.live.is_empty(), "{step}: domain left behind");
            assert_eq!(mock.destroyed, vec![1]);
        }
        let mut mock = Mock { fail_at: Some("create"), ..Mock::default() };
        assert!(build(&mut mock, &request(&kernel)).is_err());
        assert!(mock.destroyed.is_empty());
    }
}
