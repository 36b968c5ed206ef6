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
    /// Its vCPUs: `vcpu_count` of them are usable, the rest stay down.
    pub vcpus: [VcpuSlot; MAX_VCPUS],
    /// How many vCPUs it has (1 to `MAX_VCPUS`).
    pub vcpu_count: usize,
    /// Paused by dom0.
    pub paused: bool,
    /// Set when the domain has stopped for good.
    pub ended: Option<Ended>,
    pub weight: u32,
    pub cap: u32,
    /// RAM ranges given by PopulateMemory: (guest-physical base, pages).
    pub populated: ArrayVec<(u64, u64), MAX_POPULATED_RANGES>,
    /// Event channel ports.
    pub events: hvcore::event::PortTable,
    /// Its channels were ended (`events::end_channels`): set once it has
    /// crashed, shut down or is being destroyed.
    pub channels_ended: bool,
    /// Host-physical address of the registered event page, 0 = none.
    pub event_page: u64,
    /// Host-physical address of the registered grant table page, 0 = none.
    pub grant_table: u64,
    /// Grants of others it has mapped (a guest; dom0's are in
    /// `Hypervisor::foreign`).
    pub mapped_grants: hvcore::foreign::GuestGrants,
    /// CPUs that have run one of its vCPUs (bit i = CPU index i): those
    /// that may hold translations of its EPT (see `flush_ept`).
    pub ept_cpus: u64,
    /// dom0 only: its own I/O bitmaps A and B (host-physical; 0 = the
    /// guests' shared deny-all page, which must never be changed).
    pub io_bitmaps: [u64; 2],
    /// dom0 only: its own MSR bitmap (host-physical; 0 = the guests'
    /// shared one). Every vCPU of the domain uses these bitmaps.
    pub msr_bitmap: u64,
    /// Vector injected as the event upcall (into vCPU 0), 0 = none.
    pub upcall_vector: u8,
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
}

/// Most vCPUs a domain may have.
pub const MAX_VCPUS: usize = abi::hypercall::MAX_VCPUS as usize;

/// One vCPU of a domain and its scheduling state.
pub struct VcpuSlot {
    /// The vCPU once started (vCPU 0 by `SetVcpuContext`, the others by
    /// `VcpuOp::Up`). While a CPU runs it, that CPU holds it: it is taken
    /// out of here whenever that CPU lets go of hv's lock, so no other CPU
    /// can reach it (see `running`).
    pub vcpu: Option<FrameBox<Vcpu>>,
    /// Started and not taken down (its `vcpu` exists, here or on a CPU).
    pub up: bool,
    /// Waiting for an event (vCPU 0) or its timer.
    pub blocked: bool,
    /// Absolute TSC deadline of its one-shot timer, 0 = not armed.
    pub timer_deadline: u64,
    /// The upcall is raised and waits for the vCPU to take interrupts
    /// (vCPU 0 only: events notify vCPU 0).
    pub upcall_due: bool,
    /// It must leave the CPU at the next opportunity: it yielded, blocked,
    /// went down, or its domain was paused, shut down or crashed. Set by
    /// whatever changes its state, so the run loop checks one flag per exit.
    pub reschedule: bool,
    /// Its current hypercall must run again (with `reschedule` set): it
    /// needs another vCPU stopped first, which another CPU is doing.
    pub restart_call: bool,
    /// A CPU has it checked out and is running it.
    pub running: bool,
    /// CPU index it runs on now or last ran on, u32::MAX = never ran.
    pub last_cpu: u32,
    /// CPUs it may run on, bit i = CPU index i.
    pub affinity: u64,
    /// TSC ticks spent scheduled.
    pub cpu_time_tsc: u64,
}

impl VcpuSlot {
    /// A vCPU that is down and never ran.
    const fn down() -> VcpuSlot {
        VcpuSlot {
            vcpu: None,
            up: false,
            blocked: false,
            timer_deadline: 0,
            upcall_due: false,
            reschedule: false,
            restart_call: false,
            running: false,
            last_cpu: u32::MAX,
            affinity: u64::MAX,
            cpu_time_tsc: 0,
        }
    }

    /// Makes sure a change to this vCPU's state (an event, a wake-up, a
    /// pause) is seen: the CPU running it elsewhere is kicked out of the
    /// guest to look at its flags; if it is now `runnable`, an idle CPU is
    /// woken to run it.
    pub fn notify(&self, runnable: bool) {
        if self.running {
            if self.last_cpu as usize != crate::arch::smp::this_cpu() {
                crate::arch::smp::kick(self.last_cpu as usize);
            }
        } else if runnable {
            crate::arch::smp::wake_idle_cpu();
        }
    }
}

/// The scheduler's key for vCPU `vcpu` of domain `id`: each vCPU is
/// scheduled on its own.
pub fn sched_key(id: DomainId, vcpu: usize) -> u32 {
    id << 3 | vcpu as u32
}
const _: () = assert!(MAX_VCPUS <= 8);

/// The domain and vCPU of a scheduler key.
pub fn from_sched_key(key: u32) -> (DomainId, usize) {
    (key >> 3, (key & 7) as usize)
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
            vcpus: [const { VcpuSlot::down() }; MAX_VCPUS],
            vcpu_count: 1,
            paused: true,
            ended: None,
            weight: abi::domctl::DEFAULT_WEIGHT,
            cap: 0,
            populated: ArrayVec::new(),
            events: hvcore::event::PortTable::new(),
            channels_ended: false,
            event_page: 0,
            grant_table: 0,
            mapped_grants: hvcore::foreign::GuestGrants::new(),
            ept_cpus: 0,
            io_bitmaps: [0; 2],
            msr_bitmap: 0,
            upcall_vector: 0,
            exit_counts: [0; EXIT_REASON_SLOTS],
            refusals_logged: 0,
            log_budget: hvcore::log_ring::LineBudget::new(),
            crash_record: CrashRecord::NONE,
        })
    }

    /// The state reported to dom0.
    pub fn state(&self) -> DomainState {
        let up = || self.vcpus.iter().filter(|slot| slot.up);
        match self.ended {
            Some(Ended::Crashed) => DomainState::Crashed,
            Some(Ended::Shutdown(_)) => DomainState::Shutdown,
            None if self.paused => DomainState::Paused,
            None if up().next().is_some() && up().all(|slot| slot.blocked) => DomainState::Blocked,
            None => DomainState::Running,
        }
    }

    /// Whether the scheduler may run vCPU `vcpu`.
    pub fn runnable(&self, vcpu: usize) -> bool {
        let slot = &self.vcpus[vcpu];
        slot.up && !slot.blocked && !self.paused && self.ended.is_none()
    }

    /// Whether vCPU 0 exists (set up by `SetVcpuContext`), wherever it is.
    pub fn has_vcpu(&self) -> bool {
        self.vcpus[0].up
    }

    /// Whether any of its vCPUs is on a CPU now.
    pub fn running(&self) -> bool {
        self.vcpus.iter().any(|slot| slot.running)
    }

    /// Makes sure a change to vCPU `vcpu`'s state is seen (see
    /// [`VcpuSlot::notify`]).
    pub fn notify(&self, vcpu: usize) {
        self.vcpus[vcpu].notify(self.runnable(vcpu));
    }

    /// Makes every vCPU leave its CPU at its next exit (the domain was
    /// paused, shut down or crashed, or is being destroyed); CPUs running
    /// one elsewhere are kicked.
    pub fn stop_all(&mut self) {
        for index in 0..self.vcpu_count {
            let slot = &mut self.vcpus[index];
            if slot.up {
                slot.reschedule = true;
                slot.notify(false);
            }
        }
    }

    /// Makes every vCPU that can run now known to the CPUs (after an
    /// unpause).
    pub fn notify_all(&self) {
        for index in 0..self.vcpu_count {
            self.notify(index);
        }
    }

    /// The vCPU this CPU is running now (its exit is being handled), if it
    /// is one of this domain's.
    pub fn current_vcpu(&self) -> Option<usize> {
        let vcpu = crate::arch::smp::current_vcpu();
        let cpu = crate::arch::smp::this_cpu() as u32;
        self.vcpus.get(vcpu).filter(|slot| slot.running && slot.last_cpu == cpu).map(|_| vcpu)
    }

    /// Invalidates the cached translations of the domain's EPT on every CPU
    /// that may hold them (after access was removed), and returns once they
    /// are gone: here at once, elsewhere by a TLB shootdown that waits for
    /// each CPU running a guest (`smp::flush_ept_elsewhere`).
    ///
    /// A domain with one vCPU that is the caller (running here) needs no
    /// shootdown: its vCPU flushes whenever it arrives on another CPU
    /// (`Vcpu::check_out`), so no other CPU uses what it cached.
    pub fn flush_ept(&self, capabilities: &Capabilities) {
        crate::arch::vmx::invalidate_ept(capabilities, crate::arch::vmx::ept_pointer(capabilities, self.ept.root()));
        if self.vcpu_count > 1 || self.current_vcpu().is_none() {
            crate::arch::smp::flush_ept_elsewhere(self.ept_cpus);
        }
    }

    /// Counts one VM exit by its basic reason.
    #[inline(always)]
    pub fn count_exit(&mut self, reason: u32) {
        let slot = (reason as usize).min(EXIT_REASON_SLOTS - 1);
        self.exit_counts[slot] += 1;
    }

    /// Counts `count` VM exits of one basic reason.
    pub fn count_exits(&mut self, reason: u32, count: u64) {
        let slot = (reason as usize).min(EXIT_REASON_SLOTS - 1);
        self.exit_counts[slot] += count;
    }

    /// Whether one more refusal should be logged (rate limit).
    pub fn should_report_refusal(&mut self) -> bool {
        self.refusals_logged += 1;
        self.refusals_logged <= REFUSAL_REPORTS
    }

    /// Stops the domain for good because it misbehaved, with one log line
    /// and a crash record of reason `Other` whose text is `why`.
    pub fn crash(&mut self, why: core::fmt::Arguments) {
        // Only the vCPU whose exit is being handled here is loaded on this
        // CPU; the others are not asked.
        let rip = self.current_vcpu().and_then(|v| self.vcpus[v].vcpu.as_ref()).map_or(0, |vcpu| vcpu.rip());
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
        self.stop_all();
    }

    /// Fills the ABI information structure.
    pub fn info(&self) -> DomainInfo {
        DomainInfo {
            domain_id: self.id,
            state: self.state() as u32,
            current_pages: self.current_pages,
            max_pages: self.max_pages,
            vcpu_count: self.vcpu_count as u32,
            _reserved0: 0,
            cpu_time_tsc: self.vcpus.iter().map(|slot| slot.cpu_time_tsc).sum(),
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

    /// Frees everything the domain owns: its vCPUs, its RAM, its EPT.
    /// Foreign mappings of its pages must already be gone.
    pub fn tear_down(mut self, capabilities: &Capabilities) {
        for slot in &mut self.vcpus {
            if let Some(vcpu) = slot.vcpu.take() {
                release_vcpu(vcpu, capabilities);
            }
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
        let slot = self.vcpus.get(vcpu as usize).filter(|_| (vcpu as usize) < self.vcpu_count)?;
        let state = if self.ended.is_some() || !slot.up {
            VcpuState::Offline
        } else if slot.running {
            VcpuState::Running
        } else if self.paused {
            VcpuState::Paused
        } else if slot.blocked {
            VcpuState::Blocked
        } else {
            VcpuState::Runnable
        };
        Some(abi::domctl::VcpuInfo {
            vcpu_id: vcpu,
            state: state as u32,
            cpu: slot.last_cpu,
            _reserved0: 0,
            cpu_time_tsc: slot.cpu_time_tsc,
            affinity: slot.affinity,
        })
    }
}

/// Retires a vCPU no CPU runs: clears it from this CPU and frees its VMCS
/// and its frame.
pub fn release_vcpu(vcpu: FrameBox<Vcpu>, capabilities: &Capabilities) {
    let (vcpu, frame) = vcpu.into_inner();
    memory::free_frame(vcpu.release(capabilities));
    memory::free_frame(frame);
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
