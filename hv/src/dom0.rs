//! Builds dom0, the only domain hv builds itself: its memory and EPT, its
//! kernel image (an ELF from the boot modules), its initial page tables, GDT,
//! stack and start-info page, and a vCPU ready to enter its entry point.
//!
//! dom0's guest-physical layout (all identity-mapped by its page tables):
//!
//! | range                  | contents                                  |
//! |------------------------|-------------------------------------------|
//! | 0x0000 - 0x0fff        | unmapped in the page tables (null guard)   |
//! | 0x1000                 | start-info page                           |
//! | 0x2000                 | GDT                                       |
//! | 0x3000 - 0xffff        | initial page tables                       |
//! | 0x40000 - 0x7ffff      | initial stack                             |
//! | 0x100000 - ...         | the kernel image, then free RAM            |
//! | after RAM (2 MiB aligned) | the ramdisk, read-only                 |
//! | 0xc000_0000 - 4 GiB    | device window: uncached, not executable;  |
//! |                        | EPT backs only what `MapMmio` mapped       |
//! | 4 GiB - 4 GiB + 80 MiB | foreign window (EPT: what dom0 mapped)    |
//!
//! RAM and ramdisk must end below the device window.

use abi::domctl::{FOREIGN_WINDOW_BASE, FOREIGN_WINDOW_SIZE};
use abi::physdev::{DEVICE_WINDOW_BASE, DEVICE_WINDOW_END};
use abi::start_info::{MemoryKind, StartInfo, flags};
use hvcore::elf::{ElfImage, PF_X};
use hvcore::paging::{Access, Ept, MemoryType, PageSize, PageTable, TableMemory, X86Paging};

use crate::arch::machine::Machine;
use crate::arch::memory as physical;
use crate::arch::serial::COM1_PORTS;
use crate::arch::vmx;
use crate::hypervisor::Domain;
use crate::memory::{self, HvTables};
use abi::domctl::VcpuContext;
use zerocopy::IntoBytes;

const START_INFO: u64 = 0x1000;
const GDT: u64 = 0x2000;
const TABLES_START: u64 = 0x3000;
const TABLES_END: u64 = 0x10000;
const STACK_BOTTOM: u64 = 0x40000;
const STACK_TOP: u64 = 0x80000;
const KERNEL_BASE: u64 = 0x100000;
const TWO_MIB: u64 = 2 << 20;
/// I/O ports dom0's drivers own (all below 0x8000, so in I/O bitmap A).
const DOM0_PORTS: [core::ops::Range<u16>; 6] = [
    COM1_PORTS,
    // PCI configuration mechanism #1: the data port. The address port
    // 0xcf8 shares its doubleword with 0xcf9, the PIIX reset control
    // register (hv's), so it exits and hv performs dom0's doubleword
    // accesses to it (see `hvcore::exits::handle_exit`).
    0xcfc..0xd00,
    // ATA primary and secondary channels: command blocks and control ports.
    0x1f0..0x1f8,
    0x3f6..0x3f7,
    0x170..0x178,
    0x376..0x377,
];

/// Default dom0 memory when the command line has no `dom0_mem=`.
pub const DEFAULT_MEMORY: u64 = 64 << 20;
/// Smallest dom0 hv agrees to build.
const MINIMUM_MEMORY: u64 = 8 << 20;

/// The boot modules dom0 is built from.
pub struct Dom0Images<'a> {
    pub kernel: &'a [u8],
    pub command_line: &'a str,
    /// Physical range of the ramdisk module, if any.
    pub ramdisk: Option<(u64, u64)>,
}

/// Guest page-table memory: table pages come from dom0's boot area and are
/// reached through its EPT.
struct GuestTables<'a> {
    ept: &'a PageTable<Ept>,
    next: u64,
}

impl GuestTables<'_> {
    fn host(&self, guest_physical: u64) -> u64 {
        self.ept.translate(&HvTables, guest_physical).map(|(host, _, _)| host).unwrap_or(u64::MAX)
    }
}

impl TableMemory for GuestTables<'_> {
    fn allocate_table(&mut self) -> Option<u64> {
        if self.next >= TABLES_END {
            return None;
        }
        let table = self.next;
        self.next += abi::PAGE_SIZE;
        Some(table) // dom0's RAM is zeroed when allocated
    }

    fn read_entry(&self, table: u64, index: usize) -> u64 {
        physical::read_u64(self.host(table + index as u64 * 8))
    }

    fn write_entry(&mut self, table: u64, index: usize, value: u64) {
        physical::write_u64(self.host(table + index as u64 * 8), value);
    }

    fn free_table(&mut self, _table: u64) {}
}

/// A page filled with one byte value, allocated from hv's frames.
fn filled_frame(value: u8) -> Result<u64, &'static str> {
    let frame = memory::allocate_frame().ok_or("out of memory for VMX structures")?;
    let bytes = [value; abi::PAGE_SIZE as usize];
    physical::copy_to(frame, &bytes);
    Ok(frame)
}

/// Clears `bit` in a bitmap page (1 = exit, 0 = pass through).
pub fn clear_bit(page: u64, bit: u64) {
    let word = page + (bit / 64) * 8;
    physical::write_u64(word, physical::read_u64(word) & !(1 << (bit % 64)));
}

/// Parses `dom0_mem=<n>[K|M|G]` from hv's command line.
pub fn memory_from_command_line(command_line: &str) -> Option<u64> {
    let value = command_line.split_whitespace().find_map(|word| word.strip_prefix("dom0_mem="))?;
    let (digits, unit) = match value.as_bytes().last()? {
        b'K' | b'k' => (&value[..value.len() - 1], 1 << 10),
        b'M' | b'm' => (&value[..value.len() - 1], 1 << 20),
        b'G' | b'g' => (&value[..value.len() - 1], 1 << 30),
        _ => (value, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(unit)
}

/// Builds dom0 with `memory_bytes` of RAM and `vcpus` vCPUs: hv starts
/// vCPU 0; dom0 starts the others (`VcpuOp::Up`), which then get its I/O
/// and MSR bitmaps (`domctl::start_vcpu`). On error everything allocated
/// stays allocated: hv cannot run without dom0 and stops.
pub fn build(
    images: &Dom0Images,
    memory_bytes: u64,
    vcpus: usize,
    tsc_khz: u64,
) -> Result<(Domain, VcpuContext), &'static str> {
    let image = ElfImage::parse(images.kernel).map_err(|error| error.describe())?;
    let memory_bytes = memory_bytes.next_multiple_of(TWO_MIB).max(MINIMUM_MEMORY);
    image.check_fits(KERNEL_BASE, memory_bytes).map_err(|error| error.describe())?;

    // RAM: 2 MiB pages where the allocator has them, else 4 KiB pages.
    let mut domain = Domain::new(abi::DOM0, true, 0).map_err(|_| "out of memory for dom0's EPT")?;
    let ept = &mut domain.ept;
    let rwx = Access::READ | Access::WRITE | Access::EXECUTE;
    let mut pages = 0;
    let mut guest_physical = 0;
    while guest_physical < memory_bytes {
        if let Some(host) = memory::allocate_contiguous(TWO_MIB / abi::PAGE_SIZE, TWO_MIB) {
            ept.map(&mut HvTables, guest_physical, host, PageSize::Size2M, rwx, MemoryType::WriteBack)
                .map_err(|_| "mapping dom0's memory failed")?;
            pages += TWO_MIB / abi::PAGE_SIZE;
            guest_physical += TWO_MIB;
            continue;
        }
        for offset in (0..TWO_MIB).step_by(abi::PAGE_SIZE as usize) {
            let host = memory::allocate_frame().ok_or("out of memory for dom0")?;
            ept.map(&mut HvTables, guest_physical + offset, host, PageSize::Size4K, rwx, MemoryType::WriteBack)
                .map_err(|_| "mapping dom0's memory failed")?;
            pages += 1;
        }
        guest_physical += TWO_MIB;
    }

    // The ramdisk: the module's own frames, read-only, after RAM.
    let mut start_info = StartInfo::new(abi::DOM0);
    let mut mapped_top = memory_bytes;
    if let Some((start, end)) = images.ramdisk {
        let first = start & !(abi::PAGE_SIZE - 1);
        let length = end.next_multiple_of(abi::PAGE_SIZE) - first;
        ept.map_range(
            &mut HvTables,
            memory_bytes,
            first,
            length,
            Access::READ,
            MemoryType::WriteBack,
            PageSize::Size4K,
        )
        .map_err(|_| "mapping the ramdisk failed")?;
        start_info.ramdisk_base = memory_bytes + (start - first);
        start_info.ramdisk_size = end - start;
        mapped_top = (memory_bytes + length).next_multiple_of(TWO_MIB);
    }

    if mapped_top > DEVICE_WINDOW_BASE {
        return Err("dom0's memory and ramdisk must end below the device window (3 GiB)");
    }

    let ept = &domain.ept;
    let write = |guest_physical, bytes: &[u8]| {
        hvcore::domain::write_through::<Machine>(ept, guest_physical, bytes)
            .map_err(|_| "dom0's image does not fit its memory")
    };
    for segment in image.segments() {
        write(segment.phys_addr, image.segment_data(segment))?;
    }
    write(GDT, &gdt_bytes())?;

    // Initial page tables: identity, page 0 left out, ramdisk read-only.
    // At most 8 table pages of the 13 in the boot area: the PML4, one PDPT,
    // one page table for the first 2 MiB and a page directory for each GiB
    // of RAM (at most 3, below the device window), the device window and
    // the foreign window.
    let mut tables = GuestTables { ept, next: TABLES_START };
    let mut paging = PageTable::<X86Paging>::new(&mut tables).map_err(|_| "dom0 page tables")?;
    let rw = Access::READ | Access::WRITE;
    let identity = [
        (abi::PAGE_SIZE, TWO_MIB - abi::PAGE_SIZE, rwx, MemoryType::WriteBack, PageSize::Size4K),
        (TWO_MIB, memory_bytes - TWO_MIB, rwx, MemoryType::WriteBack, PageSize::Size2M),
        // The foreign and device windows: page tables only; EPT backs what
        // MapForeign and MapMmio map.
        (FOREIGN_WINDOW_BASE, FOREIGN_WINDOW_SIZE, rw, MemoryType::WriteBack, PageSize::Size2M),
        (DEVICE_WINDOW_BASE, DEVICE_WINDOW_END - DEVICE_WINDOW_BASE, rw, MemoryType::Uncacheable, PageSize::Size2M),
        (memory_bytes, mapped_top - memory_bytes, Access::READ, MemoryType::WriteBack, PageSize::Size2M),
    ];
    for (start, length, access, memory_type, size) in identity.into_iter().filter(|range| range.1 > 0) {
        paging
            .map_range(&mut tables, start, start, length, access, memory_type, size)
            .map_err(|_| "dom0's initial page tables do not fit its boot area")?;
    }

    // The start-info page and memory map.
    let (kernel_start, kernel_end) = image.physical_extent();
    let kernel_start = kernel_start & !(abi::PAGE_SIZE - 1);
    let kernel_end = kernel_end.next_multiple_of(abi::PAGE_SIZE);
    start_info.flags = flags::PRIVILEGED;
    start_info.tsc_khz = tsc_khz;
    start_info.identity_mapped_bytes = mapped_top;
    start_info.set_cmdline(images.command_line);
    let regions = [
        (START_INFO, TABLES_END, MemoryKind::Boot),
        (TABLES_END, STACK_BOTTOM, MemoryKind::Free),
        (STACK_BOTTOM, STACK_TOP, MemoryKind::Stack),
        (STACK_TOP, kernel_start, MemoryKind::Free),
        (kernel_start, kernel_end, MemoryKind::Kernel),
        (kernel_end, memory_bytes, MemoryKind::Free),
    ];
    for (start, end, kind) in regions {
        if end > start {
            start_info.push_region(start, end - start, kind);
        }
    }
    if start_info.ramdisk_size > 0 {
        start_info.push_region(memory_bytes, mapped_top - memory_bytes, MemoryKind::Ramdisk);
    }
    write(START_INFO, start_info.as_bytes())?;

    let entry = image.entry();
    let entry_executable = image
        .segments()
        .iter()
        .any(|s| s.flags & PF_X != 0 && (s.phys_addr..s.phys_addr + s.mem_size).contains(&entry));
    if !entry_executable {
        return Err("dom0's entry point is not in an executable segment");
    }

    // Device access: the ports of dom0's devices pass through; every other
    // port (the PIT, PICs, CMOS, ACPI, the keyboard controller: hv's) and
    // every MSR exits.
    let io_bitmap_a = filled_frame(0xff)?;
    let io_bitmap_b = filled_frame(0xff)?;
    for range in DOM0_PORTS {
        for port in range.clone() {
            clear_bit(io_bitmap_a, port as u64);
        }
    }
    let msr_bitmap = filled_frame(0xff)?;
    // FS and GS bases are switched by the VMCS: reads (byte 1024) and writes
    // (byte 3072) of 0xc000_0100 and 0xc000_0101 pass through (SDM 25.6.9).
    for base in [1024 * 8, 3072 * 8] {
        clear_bit(msr_bitmap, base + 0x100);
        clear_bit(msr_bitmap, base + 0x101);
    }
    let context = VcpuContext {
        cr3: paging.root(),
        rip: entry,
        rsp: STACK_TOP - 8, // as if a call had pushed a return address (SysV alignment)
        gdt_base: GDT,
        gdt_limit: (vmx::guest_gdt::DESCRIPTORS.len() * 8 - 1) as u16,
        rdi: START_INFO,
        ..VcpuContext::default()
    };
    crate::info!(
        "dom0: {} MiB at guest-physical 0, {vcpus} vCPUs, kernel {:#x}-{:#x}, entry {:#x}, ramdisk {} bytes",
        memory_bytes >> 20,
        kernel_start,
        kernel_end,
        entry,
        start_info.ramdisk_size
    );
    domain.io_bitmaps = [io_bitmap_a, io_bitmap_b];
    domain.msr_bitmap = msr_bitmap;
    domain.vcpu_count = vcpus;
    domain.current_pages = pages;
    domain.max_pages = pages;
    domain.paused = false;
    Ok((domain, context))
}

fn gdt_bytes() -> [u8; 40] {
    let mut bytes = [0u8; 40];
    for (slot, descriptor) in bytes.chunks_exact_mut(8).zip(vmx::guest_gdt::DESCRIPTORS) {
        slot.copy_from_slice(&descriptor.to_le_bytes());
    }
    bytes
}
