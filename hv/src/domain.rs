//! Domains: a guest-physical address space (EPT), memory accounting, one
//! vCPU, scheduling parameters, event channels and statistics.

use abi::hypercall::ShutdownReason;
use abi::info::{CRASH_TEXT_BYTES, CrashReason, CrashRecord, DomainInfo, DomainState, EXIT_REASON_SLOTS};
use abi::{DomainId, Error};
use arrayvec::ArrayVec;
use hvcore::paging::{Access, Ept, PageTable};

use crate::arch::memory as physical;
use crate::arch::memory::FrameBox;
use crate::arch::vmx::{Capabilities, Vcpu};
use crate::memory::{self, HvTables};

/// Most refused-port reports logged per domain (the rest are only counted).
const REFUSAL_REPORTS: u32 = 8;

/// Most separate `PopulateMemory` ranges a domain may have.
pub const MAX_POPULATED_RANGES: usize = 32;

/// Why a domain stopped for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// hv stopped it because it misbehaved.
    Crashed,
    /// It shut itself down.
    Shutdown(ShutdownReason),
}

/// A domain.
pub struct Domain {
    pub id: DomainId,
    /// dom0: may use dom0-only hypercalls and owns the devices.
    pub privileged: bool,
    /// Guest-physical to host-physical translation.
    pub ept: PageTable<Ept>,
    /// Pages of RAM the domain owns now and at most.
    pub current_pages: u64,
    pub max_pages: u64,
    /// The vCPU, once its initial state is set. While a CPU runs it, that
    /// CPU holds it (taken out of here whenever it releases hv's lock), so
    /// no other CPU can reach it: see `running`.
    pub vcpu: Option<FrameBox<Vcpu>>,
    /// Paused by dom0.
    pub paused: bool,
    /// Waiting for an event or its timer.
    pub blocked: bool,
    /// Set when the domain has stopped for good.
    pub ended: Option<Ended>,
    pub weight: u32,
    pub cap: u32,
    /// RAM ranges given by PopulateMemory: (guest-physical base, pages).
    pub populated: ArrayVec<(u64, u64), MAX_POPULATED_RANGES>,
    /// Absolute TSC deadline of the one-shot timer, 0 = not armed.
    pub timer_deadline: u64,
    /// Event channel ports.
    pub events: hvcore::event::PortTable,
    /// Its channels were ended (`events::end_channels`): set once it has
    /// crashed, shut down or is being destroyed.
    pub channels_ended: bool,
    /// Host-physical address of the registered event page, 0 = none.
    pub event_page: u64,
    /// Host-physical address of the registered grant table page, 0 = none.
    pub grant_table: u64,
    /// dom0 only: its own I/O bitmaps A and B (host-physical; 0 = the
    /// guests' shared deny-all page, which must never be changed).
    pub io_bitmaps: [u64; 2],
    /// Vector injected as the event upcall, 0 = none.
    pub upcall_vector: u8,
    /// The upcall is raised and waits for the vCPU to take interrupts.
    pub upcall_due: bool,
    /// Its vCPU must leave the CPU at the next opportunity: it yielded,
    /// blocked, shut down or crashed. Set by whatever changes its state, so
    /// the run loop checks one flag per exit.
    pub reschedule: bool,
    /// TSC ticks spent scheduled.
    pub cpu_time_tsc: u64,
    /// VM exits by basic reason (the last slot counts every larger reason);
    /// their sum is the total, so the hot path bumps one counter.
    pub exit_counts: [u64; EXIT_REASON_SLOTS],
    /// How many refused I/O or MSR accesses were logged so far.
    pub refusals_logged: u32,
    /// Its share of hv's log for `ConsoleWrite` text (see `log::domain_text`).
    pub log_budget: hvcore::log_ring::LineBudget,
    /// Why hv stopped it (`abi::info::CrashRecord`): written once, by hv
    /// alone, when it crashes; reported to dom0 in `DomainInfo::crash`.
    pub crash_record: CrashRecord,
    /// CPU index the vCPU runs on now or last ran on, u32::MAX = never ran.
    pub last_cpu: u32,
    /// A CPU has the vCPU checked out and is running it (its `vcpu` is
    /// then None whenever that CPU does not hold hv's lock).
    pub running: bool,
    /// CPUs the vCPU may run on, bit i = CPU index i.
    pub affinity: u64,
    /// Its current hypercall must run again (with `reschedule` set): it
    /// needs another domain stopped first, which another CPU is doing.
    pub restart_call: bool,
}

/// What hv knows about the exit that ends a crashing domain, for its
/// `CrashRecord` (fields that do not apply are 0).
#[derive(Clone, Copy, Debug, Default)]
pub struct CrashDetails {
    /// VMX basic exit reason, `u32::MAX` if none.
    pub exit_reason: u32,
    pub guest_physical: u64,
    pub rip: u64,
    pub qualification: u64,
}

impl Domain {
    /// A domain with an address space and no memory or vCPU yet.
    pub fn new(id: DomainId, privileged: bool, max_pages: u64) -> Result<Domain, Error> {
        let ept = PageTable::<Ept>::new(&mut HvTables).map_err(|_| Error::OutOfMemory)?;
        Ok(Domain {
            id,
            privileged,
            ept,
            current_pages: 0,
            max_pages,
            vcpu: None,
            paused: true,
            blocked: false,
            ended: None,
            weight: abi::domctl::DEFAULT_WEIGHT,
            cap: 0,
            populated: ArrayVec::new(),
            timer_deadline: 0,
            events: hvcore::event::PortTable::new(),
            channels_ended: false,
            event_page: 0,
            grant_table: 0,
            io_bitmaps: [0; 2],
            upcall_vector: 0,
            upcall_due: false,
            reschedule: false,
            cpu_time_tsc: 0,
            exit_counts: [0; EXIT_REASON_SLOTS],
            refusals_logged: 0,
            log_budget: hvcore::log_ring::LineBudget::new(),
            crash_record: CrashRecord::NONE,
            last_cpu: u32::MAX,
            running: false,
            affinity: u64::MAX,
            restart_call: false,
        })
    }

    /// The state reported to dom0.
    pub fn state(&self) -> DomainState {
        match self.ended {
            Some(Ended::Crashed) => DomainState::Crashed,
            Some(Ended::Shutdown(_)) => DomainState::Shutdown,
            None if self.paused => DomainState::Paused,
            None if self.blocked => DomainState::Blocked,
            None => DomainState::Running,
        }
    }

    /// Whether the scheduler may run it.
    pub fn runnable(&self) -> bool {
        self.has_vcpu() && !self.paused && !self.blocked && self.ended.is_none()
    }

    /// Whether its vCPU exists (set up by `SetVcpuContext`), wherever it is.
    pub fn has_vcpu(&self) -> bool {
        self.vcpu.is_some() || self.running
    }

    /// Makes sure a change to this domain's state (an event, a wake-up, a
    /// pause) is seen: a CPU running it elsewhere is kicked out of the guest
    /// to look at its flags; a domain now runnable wakes an idle CPU.
    pub fn notify(&self) {
        if self.running {
            if self.last_cpu as usize != crate::arch::smp::this_cpu() {
                crate::arch::smp::kick(self.last_cpu as usize);
            }
        } else if self.runnable() {
            crate::arch::smp::wake_idle_cpu();
        }
    }

    /// Counts one VM exit by its basic reason.
    #[inline(always)]
    pub fn count_exit(&mut self, reason: u32) {
        let slot = (reason as usize).min(EXIT_REASON_SLOTS - 1);
        self.exit_counts[slot] += 1;
    }

    /// Whether one more refusal should be logged (rate limit).
    pub fn should_report_refusal(&mut self) -> bool {
        self.refusals_logged += 1;
        self.refusals_logged <= REFUSAL_REPORTS
    }

    /// Stops the domain for good because it misbehaved, with one log line
    /// and a crash record of reason `Other` whose text is `why`.
    pub fn crash(&mut self, why: core::fmt::Arguments) {
        let rip = self.vcpu.as_ref().map_or(0, |vcpu| vcpu.rip());
        let details = CrashDetails { exit_reason: u32::MAX, rip, ..CrashDetails::default() };
        self.crash_with(CrashReason::Other, details, why);
    }

    /// Stops the domain for good because it misbehaved: one log line, and
    /// the crash record dom0 reads (`reason`, `details`, `why` as its text).
    /// The first crash is the one recorded.
    pub fn crash_with(&mut self, reason: CrashReason, details: CrashDetails, why: core::fmt::Arguments) {
        crate::error!("d{} crashed: {}", self.id, why);
        if self.ended.is_none() {
            self.crash_record = CrashRecord {
                reason: reason as u32,
                exit_reason: details.exit_reason,
                guest_physical: details.guest_physical,
                rip: details.rip,
                qualification: details.qualification,
                text: crash_text(why),
            };
        }
        self.ended = Some(Ended::Crashed);
        self.reschedule = true;
    }

    /// Fills the ABI information structure.
    pub fn info(&self) -> DomainInfo {
        DomainInfo {
            domain_id: self.id,
            state: self.state() as u32,
            current_pages: self.current_pages,
            max_pages: self.max_pages,
            vcpu_count: 1,
            _reserved0: 0,
            cpu_time_tsc: self.cpu_time_tsc,
            exit_total: self.exit_counts.iter().sum(),
            exit_counts: self.exit_counts,
            weight: self.weight,
            cap: self.cap,
            shutdown_reason: match self.ended {
                Some(Ended::Shutdown(reason)) => reason as u32,
                _ => 0,
            },
            _reserved1: 0,
            crash: self.crash_record,
        }
    }

    /// Gives the domain `pages` zeroed frames at `guest_physical`. All or nothing.
    pub fn populate(&mut self, guest_physical: u64, pages: u64) -> Result<u64, Error> {
        if !guest_physical.is_multiple_of(abi::PAGE_SIZE) || pages == 0 {
            return Err(Error::InvalidArgument);
        }
        let length = pages.checked_mul(abi::PAGE_SIZE).ok_or(Error::InvalidArgument)?;
        guest_physical
            .checked_add(length)
            .filter(|end| *end <= abi::domctl::FOREIGN_WINDOW_BASE)
            .ok_or(Error::InvalidArgument)?;
        if self.current_pages.checked_add(pages).is_none_or(|total| total > self.max_pages) {
            return Err(Error::OutOfMemory);
        }
        if self.populated.is_full() {
            return Err(Error::Busy);
        }
        let rwx = Access::READ | Access::WRITE | Access::EXECUTE;
        for index in 0..pages {
            let address = guest_physical + index * abi::PAGE_SIZE;
            let mapped = memory::allocate_frame().ok_or(Error::OutOfMemory).and_then(|frame| {
                self.ept
                    .map(
                        &mut HvTables,
                        address,
                        frame,
                        hvcore::paging::PageSize::Size4K,
                        rwx,
                        hvcore::paging::MemoryType::WriteBack,
                    )
                    .map_err(|error| {
                        memory::free_frame(frame);
                        match error {
                            hvcore::paging::MapError::AlreadyMapped => Error::Busy,
                            hvcore::paging::MapError::OutOfTables => Error::OutOfMemory,
                            _ => Error::InvalidArgument,
                        }
                    })
            });
            if let Err(error) = mapped {
                // Undo this call's pages so nothing is left half-populated.
                self.release_range(guest_physical, index);
                return Err(error);
            }
        }
        self.current_pages += pages;
        self.populated.push((guest_physical, pages));
        Ok(pages)
    }

    /// Unmaps and frees `pages` pages from `guest_physical`.
    fn release_range(&mut self, guest_physical: u64, pages: u64) {
        for index in 0..pages {
            if let Ok((frame, _)) = self.ept.unmap(&mut HvTables, guest_physical + index * abi::PAGE_SIZE) {
                memory::free_frame(frame);
            }
        }
    }

    /// Frees everything the domain owns: its vCPU, its RAM, its EPT.
    /// Foreign mappings of its pages must already be gone.
    pub fn tear_down(mut self, capabilities: &Capabilities) {
        if let Some(vcpu) = self.vcpu.take() {
            let (vcpu, frame) = vcpu.into_inner();
            memory::free_frame(vcpu.release(capabilities));
            memory::free_frame(frame);
        }
        for (guest_physical, pages) in core::mem::take(&mut self.populated) {
            self.release_range(guest_physical, pages);
        }
        self.ept.destroy(&mut HvTables);
    }

    /// Copies a guest buffer into `out`.
    pub fn read_guest(&self, guest_physical: u64, out: &mut [u8]) -> Result<(), Error> {
        for chunk in hvcore::guest::page_chunks(guest_physical, out.len() as u64, u64::MAX)? {
            let host = translate(&self.ept, chunk.guest_physical, Access::READ)?;
            if !physical::copy_from(host, &mut out[chunk.offset..chunk.offset + chunk.length]) {
                return Err(Error::BadAddress);
            }
        }
        Ok(())
    }

    /// Copies `bytes` into the guest. On error some leading chunks may
    /// already have been written (the guest's own memory; no hv state changes).
    pub fn write_guest(&self, guest_physical: u64, bytes: &[u8]) -> Result<(), Error> {
        write_through(&self.ept, guest_physical, bytes)
    }

    /// The host frame behind a writable guest page.
    pub fn host_frame(&self, guest_physical: u64, access: Access) -> Result<u64, Error> {
        translate(&self.ept, guest_physical & !(abi::PAGE_SIZE - 1), access)
    }

    /// What `DomCtlOp::GetVcpuInfo` reports of vCPU `vcpu`; `None` if the
    /// domain has no such vCPU (it has one, id 0).
    pub fn vcpu_info(&self, vcpu: u32) -> Option<abi::domctl::VcpuInfo> {
        use abi::domctl::VcpuState;
        if vcpu != 0 {
            return None;
        }
        let state = if self.ended.is_some() || !self.has_vcpu() {
            VcpuState::Offline
        } else if self.running {
            VcpuState::Running
        } else if self.paused {
            VcpuState::Paused
        } else if self.blocked {
            VcpuState::Blocked
        } else {
            VcpuState::Runnable
        };
        Some(abi::domctl::VcpuInfo {
            vcpu_id: vcpu,
            state: state as u32,
            cpu: self.last_cpu,
            _reserved0: 0,
            cpu_time_tsc: self.cpu_time_tsc,
            affinity: self.affinity,
        })
    }
}

/// `why` formatted into a crash record's text: cut at `CRASH_TEXT_BYTES`,
/// anything but printable ASCII as '?', NUL-padded.
fn crash_text(why: core::fmt::Arguments) -> [u8; CRASH_TEXT_BYTES] {
    struct Text {
        bytes: [u8; CRASH_TEXT_BYTES],
        length: usize,
    }
    impl core::fmt::Write for Text {
        fn write_str(&mut self, text: &str) -> core::fmt::Result {
            for &byte in text.as_bytes() {
                if self.length == CRASH_TEXT_BYTES {
                    break;
                }
                self.bytes[self.length] = if (0x20..0x7f).contains(&byte) { byte } else { b'?' };
                self.length += 1;
            }
            Ok(())
        }
    }
    let mut text = Text { bytes: [0; CRASH_TEXT_BYTES], length: 0 };
    let _ = core::fmt::write(&mut text, why);
    text.bytes
}

/// Translates a guest-physical address the domain may access with `access`.
fn translate(ept: &PageTable<Ept>, guest_physical: u64, access: Access) -> Result<u64, Error> {
    match ept.translate(&HvTables, guest_physical) {
        Some((host, allowed, _)) if allowed.contains(access) => Ok(host),
        _ => Err(Error::BadAddress),
    }
}

/// Copies `bytes` to guest-physical memory mapped writable by `ept`.
pub fn write_through(ept: &PageTable<Ept>, guest_physical: u64, bytes: &[u8]) -> Result<(), Error> {
    for chunk in hvcore::guest::page_chunks(guest_physical, bytes.len() as u64, u64::MAX)? {
        let host = translate(ept, chunk.guest_physical, Access::WRITE)?;
        if !physical::copy_to(host, &bytes[chunk.offset..chunk.offset + chunk.length]) {
            return Err(Error::BadAddress);
        }
    }
    Ok(())
}

/// The byte image of a `#[repr(C)]` ABI structure, for copying to a guest.
pub fn bytes_of<T: AbiStruct>(value: &T) -> &[u8] {
    // SAFETY: AbiStruct is only implemented for padding-free #[repr(C)]
    // structures of integers (their layouts are asserted in `abi`), so every
    // byte is initialised; the slice borrows `value`.
    unsafe { core::slice::from_raw_parts(value as *const T as *const u8, core::mem::size_of::<T>()) }
}

/// Reads an ABI structure out of guest memory (a copy; the guest may change
/// its memory at any time, so the copy is what gets validated and used).
pub fn read_struct<T: AbiStruct + Default>(domain: &Domain, guest_physical: u64) -> Result<T, Error> {
    let mut value = T::default();
    // SAFETY: AbiStruct types are plain integers without padding, so any
    // byte pattern is a valid value; the slice covers exactly `value`.
    let bytes = unsafe { core::slice::from_raw_parts_mut(&mut value as *mut T as *mut u8, core::mem::size_of::<T>()) };
    domain.read_guest(guest_physical, bytes)?;
    Ok(value)
}

/// Marker for ABI structures that are plain bytes (no padding, no pointers).
///
/// # Safety
/// Implement only for `#[repr(C)]` types whose fields are integers or arrays
/// of integers with no implicit padding.
pub unsafe trait AbiStruct {}

// SAFETY: layouts asserted padding-free in abi::info and abi::start_info.
unsafe impl AbiStruct for abi::info::HvInfo {}
// SAFETY: as above.
unsafe impl AbiStruct for abi::info::DomainInfo {}
// SAFETY: as above.
unsafe impl AbiStruct for abi::start_info::StartInfo {}
// SAFETY: layout asserted padding-free in abi::domctl (explicit _reserved0).
unsafe impl AbiStruct for abi::domctl::VcpuContext {}
// SAFETY: layout asserted padding-free in abi::domctl (explicit _reserved0).
unsafe impl AbiStruct for abi::domctl::VcpuInfo {}
