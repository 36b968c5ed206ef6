//! Domain control ([`crate::Hypercall::DomCtl`]): how dom0's toolstack builds,
//! runs and tears down guests. Every operation is refused with
//! [`crate::Error::Permission`] unless the caller is dom0.
//!
//! Building a guest, in order:
//! 1. `Create` (the domain exists, paused, with no memory);
//! 2. `PopulateMemory` for its RAM;
//! 3. `CopyToGuest` for the kernel's segments, page tables, GDT and
//!    start-info page;
//! 4. `SetVcpuContext` for the entry state;
//! 5. optionally `MapForeign` for the rings dom0 serves (console);
//! 6. `Unpause`.
//!
//! `Destroy` undoes all of it and returns every frame to the hypervisor.

use core::mem::{offset_of, size_of};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Domain control operations (`a0` of the hypercall).
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomCtlOp {
    /// Creates a paused domain. `a1`: most pages it may own (its memory
    /// limit); `a2` (since 0.9): its number of vCPUs, 1 to
    /// [`crate::hypercall::MAX_VCPUS`] (0 means 1; more: `InvalidArgument`).
    /// `SetVcpuContext` sets vCPU 0's state; the guest starts the others
    /// (`VcpuOp::Up`). Returns the new domain id.
    Create = 0,
    /// Destroys domain `a1`: its vCPU stops, its event channels close (their
    /// peers see them unbound), dom0's foreign mappings of it are removed,
    /// and every frame it owned is freed. Returns 0.
    Destroy = 1,
    /// Pauses domain `a1` (it keeps its state). Returns 0.
    Pause = 2,
    /// Unpauses domain `a1`. Refused with `Busy` until `SetVcpuContext`.
    Unpause = 3,
    /// Gives domain `a1` `a3` zeroed pages of RAM at guest-physical `a2`
    /// (page-aligned). All or nothing: fails with `OutOfMemory` beyond its
    /// limit or when hv has no free frames, `Busy` if any page is mapped
    /// already. Returns the number of pages added.
    PopulateMemory = 4,
    /// Copies `a4` bytes from dom0's guest-physical `a3` to domain `a1`'s
    /// guest-physical `a2` (at most [`COPY_MAX`] bytes per call). Returns the
    /// number of bytes copied.
    CopyToGuest = 5,
    /// Sets domain `a1`'s initial vCPU state from a [`VcpuContext`] at dom0
    /// guest-physical `a2`. Only before the domain first runs (else `Busy`).
    SetVcpuContext = 6,
    /// Sets domain `a1`'s scheduling weight `a2` (1..=65535, default 256)
    /// and cap `a3` (percent of one CPU, 0 = no cap, at most 100 per vCPU
    /// since 0.9: 150 = one and a half CPUs across its vCPUs). The weight is
    /// the domain's, shared among its vCPUs that want a CPU; the cap limits
    /// their sum.
    SetScheduling = 7,
    /// Lists domain ids: writes up to `a3` `u32` ids, each at least `a1`, in
    /// increasing order, to dom0 guest-physical `a2`. Returns the count.
    ListDomains = 8,
    /// Maps domain `a1`'s page at guest-physical `a2` read-write into dom0 at
    /// guest-physical `a3`, which must lie in the foreign window
    /// ([`FOREIGN_WINDOW_BASE`], [`FOREIGN_WINDOW_SIZE`]) and be unused
    /// (else `Busy`). Counts towards domain `a1`'s share of the window:
    /// `Busy` when [`FOREIGN_SHARE_PAGES`] of its pages are mapped already.
    MapForeign = 9,
    /// Removes dom0's foreign mapping at guest-physical `a2` (`a1` ignored).
    UnmapForeign = 10,
    /// Sets domain `a1`'s memory limit to `a2` pages (not below what it owns).
    SetMaxMemory = 11,
    /// Writes a [`VcpuInfo`] for vCPU `a2` of domain `a1` (dom0 included) to
    /// dom0 guest-physical `a3`. Returns 0. Errors: `NotFound` when there is
    /// no domain `a1` or `a2` is not below its `DomainInfo::vcpu_count`
    /// (vCPU ids are `0..vcpu_count`); `BadAddress` when the 32 bytes at
    /// `a3` are not all writable dom0 RAM. Since ABI 0.8.
    GetVcpuInfo = 12,
    /// Sets which CPUs vCPU `a2` of domain `a1` (dom0 included) may run on:
    /// `a3` is a CPU mask, bit i = CPU index i (see [`VcpuInfo::cpu`]).
    /// Bits of CPUs that do not run hv are dropped: hv stores
    /// `a3 & online` (online = the CPUs `HvInfo::cpus` lists), which
    /// [`VcpuInfo::affinity`] then reports; `u64::MAX` means every CPU.
    /// Takes effect the next time the domain is scheduled (a vCPU running
    /// now finishes its slice where it is). Returns 0. Errors: `NotFound`
    /// as for `GetVcpuInfo`; `InvalidArgument` when `a3` holds no CPU that
    /// runs hv. A new domain's affinity is every CPU. Since ABI 0.8.
    SetAffinity = 13,
}

impl DomCtlOp {
    /// Decodes the operation argument.
    pub const fn from_number(number: u64) -> Option<DomCtlOp> {
        Some(match number {
            0 => DomCtlOp::Create,
            1 => DomCtlOp::Destroy,
            2 => DomCtlOp::Pause,
            3 => DomCtlOp::Unpause,
            4 => DomCtlOp::PopulateMemory,
            5 => DomCtlOp::CopyToGuest,
            6 => DomCtlOp::SetVcpuContext,
            7 => DomCtlOp::SetScheduling,
            8 => DomCtlOp::ListDomains,
            9 => DomCtlOp::MapForeign,
            10 => DomCtlOp::UnmapForeign,
            11 => DomCtlOp::SetMaxMemory,
            12 => DomCtlOp::GetVcpuInfo,
            13 => DomCtlOp::SetAffinity,
            _ => return None,
        })
    }
}

/// Most bytes one `CopyToGuest` call copies.
pub const COPY_MAX: u64 = 1 << 20;

/// Default scheduling weight.
pub const DEFAULT_WEIGHT: u32 = 256;
/// Largest scheduling weight.
pub const MAX_WEIGHT: u32 = 65535;

/// dom0's guest-physical window for foreign mappings: [`FOREIGN_WINDOW_PAGES`]
/// pages from 4 GiB up. dom0's initial page tables identity-map it; EPT
/// backs only what `MapForeign` and `GrantOp::Map` map there.
///
/// Every page dom0 maps of another domain lies here: the console and store
/// rings the toolstack maps when it builds a guest, and the block and vif
/// rings and persistent grants the back ends map. hv counts the pages
/// mapped of each domain (the domain whose page it is: the granter, or the
/// guest being built) and refuses a mapping beyond [`FOREIGN_SHARE_PAGES`]
/// of one domain with `Busy`, so one guest's grants can never take the
/// window from the others.
///
/// Cost: in dom0's page tables, 2 MiB pages (40 entries of one page
/// directory); in EPT, 4 KiB pages, with one EPT page table per 2 MiB of
/// the window in use (allocated on map and freed when emptied); in hv,
/// one 12-byte record per window page (240 KiB in all).
pub const FOREIGN_WINDOW_BASE: u64 = 4 << 30;
/// Pages in the foreign window: a full share ([`FOREIGN_SHARE_PAGES`]) for
/// each of the 63 guests hv runs at most (64 domains less dom0), 20,160
/// pages, rounded up to 20,480 (80 MiB).
pub const FOREIGN_WINDOW_PAGES: u64 = 20_480;
/// Length of the foreign window in bytes.
pub const FOREIGN_WINDOW_SIZE: u64 = FOREIGN_WINDOW_PAGES * crate::PAGE_SIZE;
/// Most pages of one domain dom0 may have mapped in its foreign window at
/// once, through `MapForeign` and `GrantOp::Map` together; a further
/// mapping fails with `Busy` until dom0 unmaps one. A guest needs 5 for its
/// rings (console, store, block, vif transmit and receive); dom0 spends the
/// rest on the disk's persistent grants (see dom0's block back end): 315,
/// enough for Linux's blkfront reading 1 MiB at once (8 requests of 32
/// pages and their 8 indirect pages: 264 grants).
pub const FOREIGN_SHARE_PAGES: u64 = 320;

const _: () = assert!(63 * FOREIGN_SHARE_PAGES <= FOREIGN_WINDOW_PAGES);
const _: () = assert!(FOREIGN_WINDOW_SIZE.is_multiple_of(2 << 20));

/// A guest's initial vCPU state, for [`DomCtlOp::SetVcpuContext`]. In
/// [`VCPU_MODE_LONG`] the vCPU starts in 64-bit mode with paging on,
/// interrupts off, and flat segments from a GDT laid out as `hv`
/// documents: null, code (0x08), data (0x10), TSS (0x18, 16 bytes, base
/// 0, limit 0x67). In [`VCPU_MODE_PVH`] (since ABI 1.0) it starts as Xen
/// starts a PVH kernel (`crate::xen::start_info`): 32-bit protected mode,
/// paging off, flat 32-bit segments, EBX = `rdi`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VcpuContext {
    /// Entry point (guest-virtual = guest-physical under the initial tables).
    pub rip: u64,
    /// Initial stack pointer.
    pub rsp: u64,
    /// Guest-physical address of the initial PML4.
    pub cr3: u64,
    /// Value of RDI at entry (the start-info page's address).
    pub rdi: u64,
    /// Guest-physical address of the GDT.
    pub gdt_base: u64,
    /// GDT limit (size in bytes minus one).
    pub gdt_limit: u16,
    /// [`VCPU_MODE_LONG`] or [`VCPU_MODE_PVH`] (since ABI 1.0; before, a
    /// reserved zero byte). Anything else: `InvalidArgument`.
    pub mode: u8,
    /// Reserved, zero.
    pub _reserved0: [u8; 5],
}

/// [`VcpuContext::mode`]: Mica's entry, 64-bit mode with paging on
/// through the tables at `cr3`, RDI = `rdi`.
pub const VCPU_MODE_LONG: u8 = 0;
/// [`VcpuContext::mode`]: Xen's PVH entry. `rip` (the kernel's
/// `PHYS32_ENTRY`) and `rdi` (the `hvm_start_info` address, loaded into
/// EBX) are below 4 GiB; `rsp`, `cr3`, `gdt_base` and `gdt_limit` are 0
/// (the kernel sets up its own). Else `InvalidArgument`.
pub const VCPU_MODE_PVH: u8 = 1;

const _: () = assert!(size_of::<VcpuContext>() == 48);
const _: () = assert!(offset_of!(VcpuContext, rip) == 0);
const _: () = assert!(offset_of!(VcpuContext, rsp) == 8);
const _: () = assert!(offset_of!(VcpuContext, cr3) == 16);
const _: () = assert!(offset_of!(VcpuContext, rdi) == 24);
const _: () = assert!(offset_of!(VcpuContext, gdt_base) == 32);
const _: () = assert!(offset_of!(VcpuContext, gdt_limit) == 40);
const _: () = assert!(offset_of!(VcpuContext, mode) == 42);

/// What a vCPU is doing, in [`VcpuInfo::state`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuState {
    /// On a CPU now ([`VcpuInfo::cpu`] names it).
    Running = 0,
    /// Ready to run, waiting for a CPU.
    Runnable = 1,
    /// Waiting for an event or its timer (`SchedOp::Block`).
    Blocked = 2,
    /// Its domain is paused by dom0.
    Paused = 3,
    /// It cannot run: its domain has ended (crashed or shut down), or its
    /// initial state was never set (`SetVcpuContext`).
    Offline = 4,
}

impl VcpuState {
    /// Decodes [`VcpuInfo::state`].
    pub const fn from_number(number: u32) -> Option<VcpuState> {
        Some(match number {
            0 => VcpuState::Running,
            1 => VcpuState::Runnable,
            2 => VcpuState::Blocked,
            3 => VcpuState::Paused,
            4 => VcpuState::Offline,
            _ => return None,
        })
    }
}

/// One vCPU, as [`DomCtlOp::GetVcpuInfo`] reports it (32 bytes). Written
/// by hv; a snapshot, since the vCPU keeps running while dom0 reads it.
///
/// A CPU index numbers the CPUs running hv from 0 in the order hv started
/// them, the boot CPU 0: the order of `info::HvInfo::cpus`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VcpuInfo {
    /// The vCPU's id within its domain (`0..DomainInfo::vcpu_count`).
    pub vcpu_id: u32,
    /// A [`VcpuState`] value.
    pub state: u32,
    /// Index of the CPU it runs on now (state `Running`) or last ran on;
    /// [`VCPU_NEVER_RAN`] if it has never run.
    pub cpu: u32,
    /// How many times it ran on another CPU than the time before (it
    /// moved between CPUs' run queues); saturates at `u32::MAX`. Since
    /// ABI 0.11 (zero before).
    pub moves: u32,
    /// TSC ticks this vCPU has been scheduled, including hv's work on its
    /// exits and hypercalls (with one vCPU per domain, the domain's
    /// `DomainInfo::cpu_time_tsc`).
    pub cpu_time_tsc: u64,
    /// CPUs it may run on, bit i = CPU index i: every CPU running hv for a
    /// new domain (`u64::MAX` until the first `SetAffinity`), else what
    /// `SetAffinity` stored.
    pub affinity: u64,
}

/// [`VcpuInfo::cpu`] of a vCPU that has never run.
pub const VCPU_NEVER_RAN: u32 = u32::MAX;

const _: () = assert!(size_of::<VcpuInfo>() == 32);
const _: () = assert!(offset_of!(VcpuInfo, vcpu_id) == 0);
const _: () = assert!(offset_of!(VcpuInfo, state) == 4);
const _: () = assert!(offset_of!(VcpuInfo, cpu) == 8);
const _: () = assert!(offset_of!(VcpuInfo, moves) == 12);
const _: () = assert!(offset_of!(VcpuInfo, cpu_time_tsc) == 16);
const _: () = assert!(offset_of!(VcpuInfo, affinity) == 24);

/// The GDT every domain starts with: null, 64-bit code, data, and a 16-byte
/// 64-bit TSS descriptor (base 0, limit 0x67, busy).
pub const INITIAL_GDT: [u64; 5] = [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff, 0x0000_8b00_0000_0067, 0];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_round_trip() {
        for n in 0..14 {
            assert_eq!(DomCtlOp::from_number(n).unwrap() as u64, n);
        }
        assert_eq!(DomCtlOp::from_number(14), None);
    }

    #[test]
    fn vcpu_states_round_trip() {
        for n in 0..5 {
            assert_eq!(VcpuState::from_number(n).unwrap() as u32, n);
        }
        assert_eq!(VcpuState::from_number(5), None);
    }
}
