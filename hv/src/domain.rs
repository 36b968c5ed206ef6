//! Domains: a guest-physical address space (EPT), memory accounting,
//! vCPUs, scheduling parameters, event channels and statistics; and the
//! table that holds them under stable handles. Generic over the machine
//! ([`Platform`]), so it runs on the host in tests.

use abi::hypercall::ShutdownReason;
use abi::info::{CRASH_TEXT_BYTES, CrashReason, CrashRecord, DomainInfo, DomainState, EXIT_REASON_SLOTS};
use abi::xen::grant_table::GRANT_TABLE_FRAMES;
use abi::{DomainId, Error};
use arrayvec::ArrayVec;
use core::sync::atomic::{AtomicU32, Ordering};
use spin::mutex::{TicketMutex, TicketMutexGuard};

use crate::log_ring::Level;
use crate::paging::{Access, Ept, MemoryType, PageSize, PageTable};
use crate::platform::Platform;

/// Most domains hv tracks at once (dom0 included).
pub const MAX_DOMAINS: usize = 64;
/// Longest console line a domain's `console_io` writes are gathered into.
pub const CONSOLE_LINE_BYTES: usize = 256;

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
pub struct Domain<P: Platform> {
    pub id: DomainId,
    /// Its slot in the domain table (`DomainTable::insert` sets it): its
    /// vCPUs' VPIDs come from it.
    pub slot: usize,
    /// dom0: may use dom0-only hypercalls and owns the devices.
    pub privileged: bool,
    /// Guest-physical to host-physical translation.
    pub ept: PageTable<Ept>,
    /// Pages of RAM the domain owns now and at most.
    pub current_pages: u64,
    pub max_pages: u64,
    /// Its vCPUs: `vcpu_count` of them are usable, the rest stay down.
    pub vcpus: [VcpuSlot<P>; MAX_VCPUS],
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
    pub events: crate::event::PortTable,
    /// Its channels were ended (`events::end_channels`): set once it has
    /// crashed, shut down or is being destroyed.
    pub channels_ended: bool,
    /// Host-physical address of the registered event page, 0 = none.
    pub event_page: u64,
    /// Host address of its Xen shared-info page (`memory_op`
    /// add_to_physmap), 0 if none: then its events use Xen's 2-level
    /// layout there instead of `event_page`.
    pub xen_shared_info: u64,
    /// Host address of each vCPU's Xen `vcpu_info` (`vcpu_op`
    /// register_vcpu_info); 0: its slot in the shared-info page.
    pub xen_vcpu_info: [u64; MAX_VCPUS],
    /// Its memory map as the toolstack set it (`memory_op`
    /// set_memory_map), which `memory_op` memory_map answers.
    pub memory_map: ArrayVec<abi::xen::memory::E820Entry, { abi::xen::memory::MEMORY_MAP_MAX_ENTRIES }>,
    /// The HVM parameters the toolstack sets for Xen's guests
    /// (`xen::TOOLSTACK_PARAMS`, in that order: store frame and port,
    /// console frame and port), 0 = not set.
    pub hvm_params: [u64; 4],
    /// The grant table's frames (host-physical, 0 = not placed): frame `i`
    /// holds entries `512 i` to `512 i + 511` (`grant_ops::place_table_frame`).
    pub grant_frames: [u64; GRANT_TABLE_FRAMES],
    /// Where each frame hv supplied is mapped (guest-physical; `None`: the
    /// frame is the guest's own RAM page, or not placed). Freed with the
    /// domain.
    pub grant_supplied: [Option<u64>; GRANT_TABLE_FRAMES],
    /// Grants of others it has mapped (a guest; dom0's are in
    /// `Hypervisor::foreign`).
    pub mapped_grants: crate::foreign::GuestGrants,
    /// CPUs that have run one of its vCPUs (bit i = CPU index i): those
    /// that may hold translations of its EPT (see `flush_ept`).
    pub ept_cpus: u64,
    /// dom0 only: its own I/O bitmaps A and B (host-physical; 0 = the
    /// guests' shared deny-all page, which must never be changed).
    pub io_bitmaps: [u64; 2],
    /// dom0 only: its own MSR bitmap (host-physical; 0 = the guests'
    /// shared one). Every vCPU of the domain uses these bitmaps.
    pub msr_bitmap: u64,
    /// The vCPUs polling ports (bit v = vCPU v; see `VcpuSlot::poll_ports`):
    /// a raise looks for pollers only when one is set.
    pub polling: u8,
    /// Vector injected as the event upcall (into the vCPU a port notifies),
    /// 0 = none.
    pub upcall_vector: u8,
    /// VM exits by basic reason (the last slot counts every larger reason);
    /// their sum is the total, so the hot path bumps one counter.
    pub exit_counts: [u64; EXIT_REASON_SLOTS],
    /// How many refused I/O or MSR accesses were logged so far.
    pub refusals_logged: u32,
    /// Its share of hv's log for `ConsoleWrite` text (see `log::domain_text`).
    pub log_budget: crate::log_ring::LineBudget,
    /// The start of a line the domain wrote with Xen's `console_io` and
    /// has not ended yet (logged once its newline comes, or when full).
    pub console_line: ArrayVec<u8, CONSOLE_LINE_BYTES>,
    /// Why hv stopped it (`abi::info::CrashRecord`): written once, by hv
    /// alone, when it crashes; reported to dom0 in `DomainInfo::crash`.
    pub crash_record: CrashRecord,
}

/// Most vCPUs a domain may have.
pub const MAX_VCPUS: usize = abi::hypercall::MAX_VCPUS as usize;

/// One vCPU of a domain and its scheduling state.
pub struct VcpuSlot<P: Platform> {
    /// The vCPU once started (vCPU 0 by `SetVcpuContext`, the others by
    /// `VcpuOp::Up`). While a CPU runs it, that CPU holds it: it is out of
    /// here for the whole slice, so no other CPU can reach it (see
    /// `running`).
    pub vcpu: Option<P::Vcpu>,
    /// Started and not taken down (its `vcpu` exists, here or on a CPU).
    pub up: bool,
    /// The state it was last started from, or Xen's `VCPUOP_initialise`
    /// gave it (it is "initialised", in Xen's words): Xen's `VCPUOP_up`
    /// starts it from here again after a `VCPUOP_down`. Mica's
    /// `VcpuOp::Down` forgets it (the vCPU loses its state).
    pub start_state: Option<(abi::domctl::VcpuContext, crate::platform::StartRegisters)>,
    /// Waiting for an event or its timer.
    pub blocked: bool,
    /// Absolute TSC deadline of its one-shot timer, 0 = not armed.
    pub timer_deadline: u64,
    /// The ports it waits on in Xen's `sched_op` poll (bit p % 64 of word
    /// p / 64), zero when it is not polling: one of them becoming pending
    /// wakes it, masked or not (`event_ops::poll`).
    pub poll_ports: [u64; abi::event::BITMAP_WORDS],
    /// Absolute TSC deadline of its poll, 0 = none.
    pub poll_deadline: u64,
    /// An interrupt waits for the vCPU to take interrupts: its event
    /// upcall (`upcall_raised`) or a vector its APIC has ready (see
    /// `vlapic::take_interrupt`). The run loop looks at this flag alone.
    pub upcall_due: bool,
    /// The event upcall is raised and not yet injected (a port notifies
    /// the vCPU it is bound to, vCPU 0 by default).
    pub upcall_raised: bool,
    /// Its local APIC (guests only; dom0's stays unused).
    pub apic: crate::vlapic::VirtualApic,
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
    /// Times it ran on another CPU than the time before.
    pub moves: u32,
    /// CPUs it may run on, bit i = CPU index i.
    pub affinity: u64,
    /// TSC ticks spent scheduled.
    pub cpu_time_tsc: u64,
    /// Its last walk of its page tables for a hypercall's argument
    /// (`guest_virtual`).
    pub walk: core::cell::RefCell<crate::guest_virtual::Walk>,
}

impl<P: Platform> VcpuSlot<P> {
    /// A vCPU that is down and never ran.
    const fn down() -> Self {
        VcpuSlot {
            vcpu: None,
            up: false,
            start_state: None,
            blocked: false,
            timer_deadline: 0,
            poll_ports: [0; abi::event::BITMAP_WORDS],
            poll_deadline: 0,
            upcall_due: false,
            upcall_raised: false,
            apic: crate::vlapic::VirtualApic::RESET,
            reschedule: false,
            restart_call: false,
            running: false,
            last_cpu: u32::MAX,
            moves: 0,
            affinity: u64::MAX,
            cpu_time_tsc: 0,
            walk: core::cell::RefCell::new(crate::guest_virtual::Walk::EMPTY),
        }
    }

    /// Makes sure a change to this vCPU's state (an event, a wake-up, a
    /// pause) is seen: the CPU running it elsewhere is kicked out of the
    /// guest to look at its flags; if it is now `runnable`, an idle CPU is
    /// woken to run it.
    pub fn notify(&self, runnable: bool) {
        if self.running {
            if self.last_cpu as usize != P::this_cpu() {
                P::kick(self.last_cpu as usize);
            }
        } else if runnable {
            P::wake_idle_cpu(self.last_cpu as usize);
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

impl<P: Platform> Domain<P> {
    /// A domain with an address space and no memory or vCPU yet.
    pub fn new(id: DomainId, privileged: bool, max_pages: u64) -> Result<Self, Error> {
        let ept = PageTable::<Ept>::new(&mut P::tables()).map_err(|_| Error::OutOfMemory)?;
        Ok(Domain {
            id,
            slot: 0,
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
            events: crate::event::PortTable::new(),
            channels_ended: false,
            event_page: 0,
            xen_shared_info: 0,
            xen_vcpu_info: [0; MAX_VCPUS],
            hvm_params: [0; 4],
            memory_map: ArrayVec::new_const(),
            grant_frames: [0; GRANT_TABLE_FRAMES],
            grant_supplied: [None; GRANT_TABLE_FRAMES],
            mapped_grants: crate::foreign::GuestGrants::new(),
            ept_cpus: 0,
            io_bitmaps: [0; 2],
            msr_bitmap: 0,
            upcall_vector: 0,
            polling: 0,
            exit_counts: [0; EXIT_REASON_SLOTS],
            refusals_logged: 0,
            log_budget: crate::log_ring::LineBudget::new(),
            console_line: ArrayVec::new_const(),
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
        let vcpu = P::current_vcpu();
        let cpu = P::this_cpu() as u32;
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
    pub fn flush_ept(&self) {
        let elsewhere = if self.vcpu_count > 1 || self.current_vcpu().is_none() { self.ept_cpus } else { 0 };
        P::flush_ept(self.ept.root(), elsewhere);
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

    /// Logs a refused access (`what`, as a warning) unless the domain has
    /// had `REFUSAL_REPORTS` logged already: the rest are only counted.
    pub fn report_refusal(&mut self, what: core::fmt::Arguments) {
        self.refusals_logged += 1;
        if self.refusals_logged <= REFUSAL_REPORTS {
            P::log(Level::Warning, format_args!("d{}: refused {what}", self.id));
        }
    }

    /// Stops the domain for good because it misbehaved, with one log line
    /// and a crash record of reason `Other` whose text is `why` (`rip`: the
    /// instruction pointer of the vCPU whose exit showed it).
    pub fn crash(&mut self, rip: u64, why: core::fmt::Arguments) {
        let details = CrashDetails { exit_reason: u32::MAX, rip, ..CrashDetails::default() };
        self.crash_with(CrashReason::Other, details, why);
    }

    /// Stops the domain for good because it misbehaved: one log line, and
    /// the crash record dom0 reads (`reason`, `details`, `why` as its text).
    /// The first crash is the one recorded.
    pub fn crash_with(&mut self, reason: CrashReason, details: CrashDetails, why: core::fmt::Arguments) {
        P::log(Level::Error, format_args!("d{} crashed: {}", self.id, why));
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
            let mapped = P::allocate_frame().ok_or(Error::OutOfMemory).and_then(|frame| {
                let tables = &mut P::tables();
                self.ept.map(tables, address, frame, PageSize::Size4K, rwx, MemoryType::WriteBack).map_err(|error| {
                    P::free_frame(frame);
                    Error::from(error)
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
            if let Ok((frame, _)) = self.ept.unmap(&mut P::tables(), guest_physical + index * abi::PAGE_SIZE) {
                P::free_frame(frame);
            }
        }
    }

    /// Frees everything the domain owns: its vCPUs, its RAM, its EPT.
    /// Foreign mappings of its pages must already be gone.
    pub fn tear_down(mut self) {
        for slot in &mut self.vcpus {
            if let Some(vcpu) = slot.vcpu.take() {
                P::release_vcpu(vcpu);
            }
        }
        for (guest_physical, pages) in core::mem::take(&mut self.populated) {
            self.release_range(guest_physical, pages);
        }
        for guest_physical in core::mem::take(&mut self.grant_supplied).into_iter().flatten() {
            self.release_range(guest_physical, 1);
        }
        self.ept.destroy(&mut P::tables());
    }

    /// Copies a guest buffer into `out`.
    pub fn read_guest(&self, guest_physical: u64, out: &mut [u8]) -> Result<(), Error> {
        for chunk in crate::guest::page_chunks(guest_physical, out.len() as u64, u64::MAX)? {
            let host = translate::<P>(&self.ept, chunk.guest_physical, Access::READ)?;
            if !P::copy_from(host, &mut out[chunk.offset..chunk.offset + chunk.length]) {
                return Err(Error::BadAddress);
            }
        }
        Ok(())
    }

    /// Reads an ABI structure out of guest memory (a copy: the guest may
    /// change its memory at any time, so the copy is what gets checked and
    /// used).
    pub fn read_struct<T: zerocopy::FromBytes + zerocopy::IntoBytes>(&self, guest_physical: u64) -> Result<T, Error> {
        let mut value = T::new_zeroed();
        self.read_guest(guest_physical, value.as_mut_bytes())?;
        Ok(value)
    }

    /// Copies `bytes` into the guest. On error some leading chunks may
    /// already have been written (the guest's own memory; no hv state changes).
    pub fn write_guest(&self, guest_physical: u64, bytes: &[u8]) -> Result<(), Error> {
        write_through::<P>(&self.ept, guest_physical, bytes)
    }

    /// The host frame behind a writable guest page.
    pub fn host_frame(&self, guest_physical: u64, access: Access) -> Result<u64, Error> {
        translate::<P>(&self.ept, guest_physical & !(abi::PAGE_SIZE - 1), access)
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
            moves: slot.moves,
            cpu_time_tsc: slot.cpu_time_tsc,
            affinity: slot.affinity,
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
fn translate<P: Platform>(ept: &PageTable<Ept>, guest_physical: u64, access: Access) -> Result<u64, Error> {
    match ept.translate(&P::tables(), guest_physical) {
        Some((host, allowed, _)) if allowed.contains(access) => Ok(host),
        _ => Err(Error::BadAddress),
    }
}

/// Copies `bytes` to guest-physical memory mapped writable by `ept`.
pub fn write_through<P: Platform>(ept: &PageTable<Ept>, guest_physical: u64, bytes: &[u8]) -> Result<(), Error> {
    for chunk in crate::guest::page_chunks(guest_physical, bytes.len() as u64, u64::MAX)? {
        let host = translate::<P>(ept, chunk.guest_physical, Access::WRITE)?;
        if !P::copy_to(host, &bytes[chunk.offset..chunk.offset + chunk.length]) {
            return Err(Error::BadAddress);
        }
    }
    Ok(())
}

/// A domain slot's id when no domain is in it.
const VACANT: u32 = u32::MAX;

/// One slot of [`Domains`]: a domain under its own lock, and its id,
/// readable without the lock (written under it).
struct Slot<P: Platform> {
    id: AtomicU32,
    domain: TicketMutex<Option<Domain<P>>>,
}

/// The domains, each in a slot that stays its own from creation until it
/// is destroyed: a slot number is a stable handle (the `index` the rest of
/// hv passes around), unlike a position in a list that shifts. Each slot
/// has a lock of its own: work on one domain locks just its slot
/// ([`Domains::lock`]); work across domains holds hv's table lock and
/// locks every domain ([`Domains::lock_all`]), so domains come and go only
/// under that lock.
pub struct Domains<P: Platform> {
    slots: [Slot<P>; MAX_DOMAINS],
}

impl<P: Platform> Domains<P> {
    /// No domains (for a `static`: there is no other use, hence no `Default`).
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        Domains { slots: [const { Slot { id: AtomicU32::new(VACANT), domain: TicketMutex::new(None) } }; MAX_DOMAINS] }
    }

    /// The slot domain `id` is in now (a hint unless the caller holds the
    /// table lock: lock the slot and check the id).
    pub fn slot_of(&self, id: DomainId) -> Option<usize> {
        self.slots.iter().position(|slot| slot.id.load(Ordering::Acquire) == id)
    }

    /// Locks slot `slot`, which holds a domain one of whose vCPUs this CPU
    /// runs (so it cannot be destroyed meanwhile).
    pub fn lock_running(&self, slot: usize) -> DomainGuard<'_, P> {
        self.lock(slot).unwrap_or_else(|| empty_slot(slot))
    }

    /// Locks slot `slot` and returns its domain, if one is in it.
    pub fn lock(&self, slot: usize) -> Option<DomainGuard<'_, P>> {
        let guard = self.slots.get(slot)?.domain.lock();
        guard.is_some().then_some(DomainGuard(guard))
    }

    /// Locks slot `slot` if nobody holds it (`None` when somebody does: the
    /// caller may not wait for it), and returns its domain, if one is in it.
    pub fn try_lock(&self, slot: usize) -> Option<Option<DomainGuard<'_, P>>> {
        let guard = self.slots.get(slot)?.domain.try_lock()?;
        Some(guard.is_some().then_some(DomainGuard(guard)))
    }

    /// Runs `f` on every domain in turn, each under its own lock (taken one
    /// at a time, in slot order).
    pub fn for_each(&self, mut f: impl FnMut(&mut Domain<P>)) {
        for slot in &self.slots {
            if slot.id.load(Ordering::Acquire) != VACANT
                && let Some(domain) = slot.domain.lock().as_mut()
            {
                f(domain);
            }
        }
    }

    /// Locks every domain, in slot order, for work across domains. Only
    /// under hv's table lock, which every insertion and removal holds: the
    /// slots in use cannot change meanwhile.
    pub fn lock_all(&self) -> DomainTable<'_, P> {
        let guards = core::array::from_fn(|index| {
            let slot = &self.slots[index];
            (slot.id.load(Ordering::Acquire) != VACANT).then(|| slot.domain.lock())
        });
        DomainTable { slots: &self.slots, guards }
    }
}

/// One locked domain (see [`Domains::lock`]).
pub struct DomainGuard<'a, P: Platform>(TicketMutexGuard<'a, Option<Domain<P>>>);

impl<P: Platform> core::ops::Deref for DomainGuard<'_, P> {
    type Target = Domain<P>;
    fn deref(&self) -> &Domain<P> {
        self.0.as_ref().unwrap_or_else(|| empty_slot(usize::MAX))
    }
}

impl<P: Platform> core::ops::DerefMut for DomainGuard<'_, P> {
    fn deref_mut(&mut self) -> &mut Domain<P> {
        self.0.as_mut().unwrap_or_else(|| empty_slot(usize::MAX))
    }
}

/// Every domain, locked (see [`Domains::lock_all`]); domains are added and
/// removed through it.
pub struct DomainTable<'a, P: Platform> {
    slots: &'a [Slot<P>; MAX_DOMAINS],
    guards: [Option<TicketMutexGuard<'a, Option<Domain<P>>>>; MAX_DOMAINS],
}

impl<'a, P: Platform> DomainTable<'a, P> {
    /// How many domains there are.
    pub fn count(&self) -> usize {
        self.iter().count()
    }

    /// Puts `domain` in the first free slot and returns it (or gives the
    /// domain back when the table is full, for the caller to tear down).
    #[allow(clippy::result_large_err)]
    pub fn insert(&mut self, mut domain: Domain<P>) -> Result<usize, Domain<P>> {
        let Some(index) = self.guards.iter().position(Option::is_none) else { return Err(domain) };
        domain.slot = index;
        let slot = &self.slots[index];
        let mut guard = slot.domain.lock();
        slot.id.store(domain.id, Ordering::Release);
        *guard = Some(domain);
        self.guards[index] = Some(guard);
        Ok(index)
    }

    /// Takes the domain out of `slot`.
    pub fn remove(&mut self, slot: usize) -> Option<Domain<P>> {
        let domain = self.guards.get_mut(slot)?.as_mut()?.take()?;
        self.slots[slot].id.store(VACANT, Ordering::Release);
        self.guards[slot] = None;
        Some(domain)
    }

    /// The domain in `slot`, if any.
    pub fn get(&self, slot: usize) -> Option<&Domain<P>> {
        self.guards.get(slot)?.as_ref()?.as_ref()
    }

    /// The domain in `slot`, if any.
    pub fn get_mut(&mut self, slot: usize) -> Option<&mut Domain<P>> {
        self.guards.get_mut(slot)?.as_mut()?.as_mut()
    }

    /// Every domain, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = &Domain<P>> {
        self.guards.iter().flatten().filter_map(|guard| guard.as_ref())
    }

    /// Every domain, in slot order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Domain<P>> {
        self.guards.iter_mut().flatten().filter_map(|guard| guard.as_mut())
    }

    /// The slot of domain `id`.
    pub fn slot_of(&self, id: DomainId) -> Option<usize> {
        (0..MAX_DOMAINS).find(|&slot| self.get(slot).is_some_and(|d| d.id == id))
    }
}

impl<P: Platform> core::ops::Index<usize> for DomainTable<'_, P> {
    type Output = Domain<P>;
    /// The domain in `slot`; hv only indexes with slots it got from
    /// [`DomainTable::slot_of`], `insert` or its own run, which hold one.
    fn index(&self, slot: usize) -> &Domain<P> {
        match self.get(slot) {
            Some(domain) => domain,
            None => empty_slot(slot),
        }
    }
}

impl<P: Platform> core::ops::IndexMut<usize> for DomainTable<'_, P> {
    fn index_mut(&mut self, slot: usize) -> &mut Domain<P> {
        match self.get_mut(slot) {
            Some(domain) => domain,
            None => empty_slot(slot),
        }
    }
}

/// An index into an empty slot: an hv bug, never a domain's doing.
#[cold]
fn empty_slot(slot: usize) -> ! {
    panic!("hv bug: domain slot {slot} is empty")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::fake_platform::Fake;

    /// An empty table on the fake machine, locked (its slots live as long
    /// as the test).
    pub(crate) fn table() -> DomainTable<'static, Fake> {
        slots().lock_all()
    }

    /// Empty slots that live as long as the test. Built on a thread with
    /// a large stack: unoptimized, `Box::new` builds its argument (64
    /// domains, about 0.8 MiB) on the stack, more than once.
    fn slots() -> &'static Domains<Fake> {
        let build = || -> &'static Domains<Fake> { Box::leak(Box::new(Domains::new())) };
        std::thread::Builder::new().stack_size(16 << 20).spawn(build).unwrap().join().unwrap()
    }

    #[test]
    fn a_domain_keeps_its_slot_and_others_find_it_by_id_without_the_table() {
        let slots = slots();
        let mut table = slots.lock_all();
        let first = table.insert(Domain::new(7, false, 1).unwrap()).ok().unwrap();
        let second = table.insert(Domain::new(9, false, 1).unwrap()).ok().unwrap();
        assert_eq!((first, second), (0, 1));
        assert_eq!((table[first].slot, table[second].slot), (0, 1), "each knows its slot");
        assert!(table.remove(first).is_some());
        assert_eq!(table.count(), 1);
        drop(table);
        assert_eq!(slots.slot_of(9), Some(1));
        assert_eq!(slots.slot_of(7), None);
        assert!(slots.lock(first).is_none());
        assert_eq!(slots.lock(second).map(|domain| domain.id), Some(9));
        // The freed slot is the next domain's; the other keeps its own.
        let mut table = slots.lock_all();
        assert_eq!(table.insert(Domain::new(11, false, 1).unwrap()).ok(), Some(0));
        assert_eq!(table.slot_of(9), Some(1));
    }
}
