//! Images dom0 and hv load: the boot ramdisk's tar archive, and ELF kernels
//! (checked by hv's rules, then built into a guest by dom0's builder).

use abi::domctl::VcpuContext;
use abi::{DomainId, Error};
use dom0core::toolstack::builder::{BuildRequest, DomainControl, KERNEL_BASE, build};
use dom0core::toolstack::tar::{Archive, BLOCK_SIZE, EntryKind, PATH_MAX};
use hvcore::elf::{ElfImage, PF_X};

/// Reads the input as a tar archive, and again with every 512-byte block's
/// checksum field made right (so that the fuzzer gets past the checksum to
/// the fields behind it). An entry's name is never empty or too long, its
/// data lies inside the archive, only files have data, `find` returns the
/// first file of a name, and the walk ends.
pub fn tar(data: &[u8]) {
    read_archive(data);
    let mut fixed = data.to_vec();
    for block in fixed.chunks_exact_mut(BLOCK_SIZE) {
        if block.iter().any(|&byte| byte != 0) {
            block[148..156].fill(b' ');
            let sum: u32 = block.iter().map(|&byte| u32::from(byte)).sum();
            let field = format!("{sum:06o}\0 ");
            block[148..156].copy_from_slice(field.as_bytes());
        }
    }
    read_archive(&fixed);
}

fn read_archive(bytes: &[u8]) {
    let archive = Archive::new(bytes);
    let range = bytes.as_ptr_range();
    let mut count = 0;
    for entry in archive.entries() {
        count += 1;
        assert!(count <= bytes.len() / BLOCK_SIZE + 1, "more entries than blocks");
        let Ok(entry) = entry else { continue };
        assert!(!entry.name.is_empty() && entry.name.len() <= PATH_MAX);
        let data = entry.data.as_ptr_range();
        if !entry.data.is_empty() {
            assert!(range.start <= data.start && data.end <= range.end, "{} lies outside the archive", entry.name);
            assert_eq!(entry.kind, EntryKind::File, "{} has data", entry.name);
        }
        if entry.kind == EntryKind::File && count <= 4 {
            let found = archive.find(&entry.name).expect("the entries before it were read").expect("found");
            assert_eq!(found.name, entry.name);
            if found.data.as_ptr() != entry.data.as_ptr() {
                // A file of the same name came first.
                let first = (archive.entries().map_while(Result::ok))
                    .find(|other| other.kind == EntryKind::File && other.name == entry.name);
                assert_eq!(first.map(|other| other.data.as_ptr()), Some(found.data.as_ptr()));
            }
        }
    }
}

/// Memory the builder gives a fuzzed kernel.
const GUEST_MEMORY: u64 = 16 << 20;

/// Parses the input as an ELF kernel. An accepted image has in-file,
/// non-wrapping, non-overlapping segments with an executable entry point;
/// building a guest from it copies only into the guest's RAM, puts the
/// kernel's bytes at and above `KERNEL_BASE` (never over the boot
/// structures), and starts the vCPU at the entry point.
pub fn elf(data: &[u8]) {
    let Ok(image) = ElfImage::parse(data) else { return };
    let segments = image.segments();
    assert!(!segments.is_empty());
    for (index, segment) in segments.iter().enumerate() {
        // A segment with no file bytes has no meaningful offset (hv's rule).
        if segment.file_size != 0 {
            let file_end = segment.file_offset.checked_add(segment.file_size).expect("file range wraps");
            assert!(file_end <= data.len() as u64, "segment {segment:?} outside the file");
        }
        assert!(segment.file_size <= segment.mem_size && segment.mem_size > 0);
        assert!(segment.phys_addr.checked_add(segment.mem_size).is_some());
        assert!(segment.virt_addr.checked_add(segment.mem_size).is_some());
        assert_eq!(image.segment_data(segment).len() as u64, segment.file_size);
        for other in &segments[..index] {
            let apart = |a: u64, b: u64| a + segment.mem_size <= b || b + other.mem_size <= a;
            assert!(apart(segment.phys_addr, other.phys_addr) && apart(segment.virt_addr, other.virt_addr));
        }
    }
    let entry = image.entry();
    assert!(segments.iter().any(|s| s.flags & PF_X != 0 && s.virt_addr <= entry && entry - s.virt_addr < s.mem_size));
    let (lowest, highest) = image.physical_extent();
    assert!(lowest < highest);

    let mut control = Recorder::default();
    let request = BuildRequest {
        kernel: &data,
        memory_bytes: GUEST_MEMORY,
        cmdline: "fuzz",
        tsc_khz: 1_000_000,
        weight: 256,
        cap: 0,
        block_sectors: Some(8),
        // The kernel image is what is fuzzed here; a ramdisk only follows it.
        ramdisk: None,
        require_pvh: false,
    };
    let fits = image.check_fits(KERNEL_BASE, GUEST_MEMORY).is_ok();
    match build(&mut control, &request) {
        Ok(_) => {
            assert!(fits);
            let kernel = &control.copies[..segments.len()];
            for (&(address, length), segment) in kernel.iter().zip(segments) {
                assert_eq!((address, length), (segment.phys_addr, segment.file_size));
            }
            for &(address, length) in kernel {
                assert!(address >= KERNEL_BASE && address + length <= GUEST_MEMORY);
            }
            for &(address, length) in &control.copies[segments.len()..] {
                assert!(address + length <= KERNEL_BASE, "boot structure copied over the kernel");
            }
            assert_eq!(control.context.map(|context| context.rip), Some(entry));
        }
        Err(_) => assert!(!fits, "a kernel that fits was refused"),
    }
    assert!(!control.live || control.context.is_some(), "a failed build left its domain behind");
}

/// A pretend hypervisor that records what the builder asks of it and
/// checks every copy lands in the RAM it populated.
#[derive(Default)]
struct Recorder {
    live: bool,
    populated: Option<(u64, u64)>,
    copies: Vec<(u64, u64)>,
    context: Option<VcpuContext>,
}

impl DomainControl for Recorder {
    fn create(&mut self, max_pages: u64) -> Result<DomainId, Error> {
        assert!(!self.live && max_pages == GUEST_MEMORY / 4096);
        self.live = true;
        Ok(5)
    }
    fn populate(&mut self, domain: DomainId, guest_physical: u64, pages: u64) -> Result<(), Error> {
        assert_eq!(domain, 5);
        self.populated = Some((guest_physical, guest_physical + pages * 4096));
        Ok(())
    }
    fn copy(&mut self, domain: DomainId, guest_physical: u64, bytes: &[u8]) -> Result<(), Error> {
        assert_eq!(domain, 5);
        let (start, end) = self.populated.expect("copy before populate");
        let length = bytes.len() as u64;
        assert!(guest_physical >= start && guest_physical.checked_add(length).is_some_and(|last| last <= end));
        self.copies.push((guest_physical, length));
        Ok(())
    }
    fn set_context(&mut self, _domain: DomainId, context: &VcpuContext) -> Result<(), Error> {
        self.context = Some(*context);
        Ok(())
    }
    fn set_scheduling(&mut self, _domain: DomainId, _weight: u32, _cap: u32) -> Result<(), Error> {
        Ok(())
    }
    fn connect_console(&mut self, _domain: DomainId, _page: u64) -> Result<u32, Error> {
        Ok(1)
    }
    fn connect_store(&mut self, _domain: DomainId, _page: u64) -> Result<u32, Error> {
        Ok(2)
    }
    fn set_hvm_param(&mut self, _domain: DomainId, _index: u32, _value: u64) -> Result<(), Error> {
        Ok(())
    }
    fn vcpus(&self) -> u32 {
        1
    }
    fn set_memory_map(&mut self, _domain: DomainId, _map: &[abi::xen::memory::E820Entry]) -> Result<(), Error> {
        Ok(())
    }
    fn destroy(&mut self, domain: DomainId) {
        assert!(self.live && domain == 5);
        self.live = false;
    }
}
