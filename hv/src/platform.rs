//! What hvcore needs of the machine it runs on: physical memory, the CPUs
//! (which one is asking, kicks, TLB shootdowns), a started vCPU's hardware
//! state ([`VcpuOps`]), interrupts, dom0's PCI configuration address port
//! and devices, the log, the machine's facts for `HvInfo`, and powering
//! off. The `hv` binary implements it for
//! x86-64 with VT-x (`arch::Machine`); host tests implement it over plain
//! memory (`fake_platform`), so the domain and hypercall code above it runs
//! on the host.
//!
//! Every function is associated (no `self`): there is one machine, and the
//! code that calls them holds no handle to it. Addresses are host-physical.

use core::fmt;

use abi::Error;
use abi::domctl::VcpuContext;
use abi::hypercall::PlatformOp;
use abi::info::HvInfo;
use spin::mutex::TicketMutex;

use crate::acpi::AcpiInfo;
use crate::log_ring::Level;
use crate::mmio::DevicePolicy;
use crate::paging::TableMemory;
use crate::scheduler::Scheduler;

/// Most entries the scheduler holds: every vCPU of a full domain table.
pub const SCHEDULER_ENTRIES: usize = crate::domain::MAX_DOMAINS * crate::domain::MAX_VCPUS;

/// What the machine needs to build a vCPU ([`Platform::create_vcpu`]): the
/// domain's address space, the vCPU's tag in the TLB, its domain's I/O and
/// MSR bitmaps (0: the machine's deny-all ones) and its first registers.
pub struct VcpuSetup<'a> {
    /// Its domain's id and its own (CPUID shows them to the guest).
    pub domain_id: u32,
    pub vcpu_id: u32,
    pub ept_root: u64,
    pub vpid: u16,
    pub io_bitmaps: [u64; 2],
    pub msr_bitmap: u64,
    /// Its mode, instruction and stack pointers, page tables and GDT.
    pub context: &'a VcpuContext,
    /// Its general registers (the context's `rdi` is already among them).
    pub registers: StartRegisters,
}

/// [`abi::domctl::VcpuContext::mode`] of a vCPU a Start-up IPI starts
/// (`vlapic`), never accepted from dom0: real mode, CS = `rip` >> 4 with
/// base `rip`, IP 0, the other segments 0 with 64 KiB limits, paging and
/// protection off (SDM Vol. 3A 10.1.1, 10.4).
pub const VCPU_MODE_REAL: u8 = 2;

/// The general registers a vCPU starts with; RSP is the context's, R8 to
/// R15 are zero. Mica's entries set one, from `VcpuContext::rdi`: RDI
/// (`VCPU_MODE_LONG`) or RBX (`VCPU_MODE_PVH`); Xen's `VCPUOP_initialise`
/// sets all seven.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StartRegisters {
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rbx: u64,
    pub rbp: u64,
    pub rsi: u64,
    pub rdi: u64,
}

/// Memory shared with a domain at host address `.0` (an event page, a
/// grant entry): reached only through the machine's atomic accesses,
/// since the domain changes it concurrently (see `event_ops`, `grant_ops`).
pub struct Shared<P>(pub u64, core::marker::PhantomData<P>);

impl<P> Shared<P> {
    /// The shared memory at host address `address`.
    pub fn at(address: u64) -> Self {
        Shared(address, core::marker::PhantomData)
    }
}

/// What the exit handler ([`crate::exits`]) does to the vCPU that exited,
/// on the CPU that runs it (VT-x: through its VMCS).
pub trait VcpuOps {
    /// The guest's instruction pointer.
    fn rip(&self) -> u64;
    /// RAX as the guest left it (an I/O value, an MSR value's low half).
    fn rax(&self) -> u64;
    /// RCX (an MSR's number).
    fn rcx(&self) -> u64;
    /// RDX (an MSR value's high half).
    fn rdx(&self) -> u64;
    /// Sets RAX (a result, an I/O read's value).
    fn set_rax(&mut self, value: u64);
    /// Sets RDX (an MSR value's high half).
    fn set_rdx(&mut self, value: u64);
    /// The guest's IA32_EFER, as it runs with it.
    fn efer(&self) -> u64;
    /// Sets the guest's IA32_EFER (checked by the caller).
    fn set_efer(&mut self, value: u64);
    /// The guest's CR0.
    fn cr0(&self) -> u64;
    /// The vCPU's value of `msr` (it runs on this CPU: its values are
    /// loaded); `None` when the CPU lacks the MSR (TSC_AUX without RDTSCP).
    fn read_msr(&self, msr: crate::exits::GuestMsr) -> Option<u64>;
    /// Sets the vCPU's `msr` to `value`, which `GuestMsr::accepts`; false
    /// when the CPU lacks the MSR.
    fn write_msr(&mut self, msr: crate::exits::GuestMsr, value: u64) -> bool;
    /// Moves the guest past the instruction that caused the exit.
    fn skip_instruction(&mut self);
    /// Queues hardware exception `vector` (with `error_code`, if it has
    /// one) for delivery at the next entry.
    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>);
    /// Turns on or off an exit as soon as the guest can take an interrupt.
    fn set_interrupt_window_exiting(&mut self, enabled: bool);
    /// Queues again an event whose delivery the exit cut short (see
    /// [`crate::exits::Exit::may_interrupt_delivery`]).
    fn requeue_interrupted_event(&mut self);
    /// Emulates a control-register access (`qualification` as the exit
    /// reports it); false for one hv never intercepts.
    fn emulate_control_register(&mut self, qualification: u64) -> bool;
    /// Emulates XSETBV, letting the guest set only bits of `supported`.
    fn emulate_xsetbv(&mut self, supported: u64);
    /// Emulates CPUID as hv's policy shows it, and moves past it.
    fn emulate_cpuid(&mut self);
}

/// The machine below hvcore.
pub trait Platform: 'static {
    /// A started vCPU's hardware state (VT-x: its VMCS and registers).
    type Vcpu: VcpuOps;
    /// Memory for the domains' EPT tables.
    type Tables: TableMemory;

    /// The table memory (a handle; all tables live in one allocator).
    fn tables() -> Self::Tables;
    /// A zeroed 4 KiB frame.
    fn allocate_frame() -> Option<u64>;
    /// Gives back a frame from `allocate_frame`.
    fn free_frame(frame: u64);
    /// Copies `bytes` to host-physical `address`; false if it is not RAM.
    fn copy_to(address: u64, bytes: &[u8]) -> bool;
    /// Copies from host-physical `address` into `out`; false if it is not RAM.
    fn copy_from(address: u64, out: &mut [u8]) -> bool;

    // Words of pages shared with domains, each access one atomic
    // instruction (the domain changes them concurrently).
    /// Sets bit `bit` (0..64) of the word at `address`; whether it was set.
    fn test_and_set_bit(address: u64, bit: u32) -> bool;
    /// Clears bit `bit` (0..64) of the word at `address`; whether it was set.
    fn test_and_clear_bit(address: u64, bit: u32) -> bool;
    /// Replaces the word at `address` with `new` if it holds `current`;
    /// the word found, `Ok` when it was `current`.
    fn compare_exchange(address: u64, current: u64, new: u64) -> Result<u64, u64>;
    /// The word at `address`.
    fn load(address: u64) -> u64;
    /// Stores `value` in the word at `address`; the old value.
    fn swap(address: u64, value: u64) -> u64;

    /// The index of the CPU asking.
    fn this_cpu() -> usize;
    /// The vCPU whose exit this CPU is handling (its index in its domain).
    fn current_vcpu() -> usize;
    /// Makes CPU `cpu`, running a guest, leave it and look at its vCPU's flags.
    fn kick(cpu: usize);
    /// Wakes one idle CPU to pick a vCPU that became runnable: `home`
    /// (the CPU whose run queue holds it) if that one is idle.
    fn wake_idle_cpu(home: usize);
    /// Drops this CPU's cached translations of the EPT at `root` and, by a
    /// shootdown that waits for them, those of the CPUs in `elsewhere`
    /// (bit i = CPU index i; this CPU's bit may be set).
    fn flush_ept(root: u64, elsewhere: u64);
    /// Builds a vCPU from `setup` (checked by the caller), not yet run on
    /// any CPU. `OutOfMemory`, or `InvalidArgument` (logged) when the CPU
    /// refuses the state.
    fn create_vcpu(setup: &VcpuSetup) -> Result<Self::Vcpu, Error>;
    /// Retires a vCPU no CPU runs and frees what it holds.
    fn release_vcpu(vcpu: Self::Vcpu);
    /// The CPUs that run domains, bit i = CPU index i.
    fn online_cpus() -> u64;
    /// Frames of RAM the machine has in all.
    fn total_pages() -> u64;
    /// The TSC's rate in kHz (0 if unknown): the same on every CPU.
    fn tsc_khz() -> u64;
    /// The TSC now (the clock of vCPU timers; guests read the same TSC).
    fn tsc() -> u64;
    /// The scheduler, under a lock of its own that comes after any
    /// domain's (a CPU holding it takes no other).
    fn scheduler() -> &'static TicketMutex<Scheduler<SCHEDULER_ENTRIES>>;

    /// The vector of the kick ([`Platform::kick`]).
    const KICK_VECTOR: u8;
    /// Ends the interrupt this CPU took at a VM exit (local APIC EOI).
    fn end_of_interrupt();
    /// Records that the device interrupt `vector` arrived, for the run
    /// loop to deliver; a vector that is no device line is only a wake-up.
    fn record_device_vector(vector: u8);
    /// Reads PCI configuration mechanism #1's address port (0xcf8) as a
    /// doubleword, for the privileged domain.
    fn read_pci_config_address() -> u32;
    /// Writes the address port (0xcf8) as a doubleword, for the privileged
    /// domain (which never reaches 0xcf9's reset bits).
    fn write_pci_config_address(value: u32);
    /// Counts an NMI that arrived while a guest ran; the count since boot.
    fn count_nmi() -> u64;
    /// The NMIs that arrived while hv itself ran, since boot.
    fn nmis_in_root() -> u64;
    /// The XCR0 bits the CPU supports (0 without XSAVE).
    fn xcr0_supported() -> u64;

    /// Masks the device interrupt line `line`.
    fn mask_line(line: u8);
    /// Unmasks `line`; false if the machine has no such line.
    fn unmask_line(line: u8) -> bool;

    /// Logs one line at `level`.
    fn log(level: Level, line: fmt::Arguments);
    /// Logs text a domain wrote to hv's console, as `(d<id>) <line>`,
    /// within the domain's line `budget`.
    fn domain_text(id: abi::DomainId, text: &[u8], budget: &mut crate::log_ring::LineBudget);
    /// Copies the most recent bytes of hv's log (its lines and the
    /// domains') into `out`; how many. The log holds at most
    /// [`crate::mica_calls::LOG_BYTES`].
    fn copy_log(out: &mut [u8]) -> usize;

    /// The machine's part of `HvInfo`: its memory (`total_pages`,
    /// `free_pages`), `features`, `tsc_khz`, `cpu_count` and `cpus`; the
    /// other fields zero (hvcore fills them).
    fn machine_info() -> HvInfo;
    /// What dom0 may map as device memory and the bytes of RAM it has
    /// from guest-physical 0, and the ACPI facts found at boot (the ports
    /// hv keeps); `None` until boot has fixed them.
    fn devices() -> Option<(&'static (DevicePolicy, u64), Option<&'static AcpiInfo>)>;
    /// Powers the machine off or resets it, as `operation` says.
    fn power(operation: PlatformOp) -> !;
}
