//! A [`Platform`] over plain memory for host tests: frames in a map, one
//! thread's machine per test thread (tests run in parallel, each with its
//! own), and a record of what hvcore asked of the machine (kicks, wake-ups,
//! flushes, released vCPUs, interrupt lines, log lines, power) and of a
//! vCPU.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;

use abi::Error;
use abi::hypercall::PlatformOp;
use abi::info::HvInfo;
use spin::mutex::TicketMutex;

use crate::acpi::AcpiInfo;
use crate::log_ring::Level;
use crate::mmio::DevicePolicy;
use crate::paging::TableMemory;
use crate::platform::{Platform, SCHEDULER_ENTRIES, VcpuOps, VcpuSetup};
use crate::scheduler::Scheduler;

/// The fake machine's RAM, in frames (`total_pages`).
pub const TOTAL_PAGES: u64 = 1 << 20;
/// The fake machine's TSC: 2 GHz.
pub const TSC_KHZ: u64 = 2_000_000;

/// The fake machine.
pub struct Fake;

/// The fake machine's XCR0 bits (`xcr0_supported`): x87, SSE, AVX.
pub const XCR0_SUPPORTED: u64 = 0b111;
/// The fake machine's kick vector.
pub const KICK_VECTOR: u8 = 0xf1;

/// A fake vCPU: its instruction pointer, a frame standing for its VMCS
/// (so a vCPU never released shows as a frame never freed), the registers
/// exits read and what was asked of it.
#[derive(Debug, Default)]
pub struct FakeVcpu {
    pub rip: u64,
    pub frame: u64,
    /// What it was built from.
    pub context: abi::domctl::VcpuContext,
    pub start_registers: crate::platform::StartRegisters,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    /// Instructions skipped.
    pub skipped: u32,
    /// Exceptions injected: (vector, error code).
    pub exceptions: Vec<(u8, Option<u32>)>,
    pub interrupt_window_exiting: bool,
    /// How many times an interrupted event was queued again.
    pub requeued: u32,
    /// Whether `emulate_control_register` accepts an access.
    pub emulates_control_registers: bool,
    /// The qualifications of the control-register accesses asked.
    pub control_registers: Vec<u64>,
    /// The supported bits passed with each XSETBV.
    pub xsetbv: Vec<u64>,
    /// How many CPUIDs were emulated.
    pub cpuids: u32,
    pub efer: u64,
    pub cr0: u64,
    /// The guest MSRs written, by `GuestMsr` name.
    pub msrs: HashMap<String, u64>,
    /// A `GuestMsr` name the fake CPU lacks ("" for none).
    pub missing_msr: String,
}

impl VcpuOps for FakeVcpu {
    fn rip(&self) -> u64 {
        self.rip
    }
    fn rax(&self) -> u64 {
        self.rax
    }
    fn rcx(&self) -> u64 {
        self.rcx
    }
    fn rdx(&self) -> u64 {
        self.rdx
    }
    fn set_rax(&mut self, value: u64) {
        self.rax = value;
    }
    fn set_rdx(&mut self, value: u64) {
        self.rdx = value;
    }
    fn efer(&self) -> u64 {
        self.efer
    }
    fn set_efer(&mut self, value: u64) {
        self.efer = value;
    }
    fn cr0(&self) -> u64 {
        self.cr0
    }
    fn read_msr(&self, msr: crate::exits::GuestMsr) -> Option<u64> {
        let name = format!("{msr:?}");
        (name != self.missing_msr).then(|| self.msrs.get(&name).copied().unwrap_or(0))
    }
    fn write_msr(&mut self, msr: crate::exits::GuestMsr, value: u64) -> bool {
        let name = format!("{msr:?}");
        (name != self.missing_msr).then(|| self.msrs.insert(name, value)).is_some()
    }
    fn skip_instruction(&mut self) {
        self.skipped += 1;
    }
    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) {
        self.exceptions.push((vector, error_code));
    }
    fn set_interrupt_window_exiting(&mut self, enabled: bool) {
        self.interrupt_window_exiting = enabled;
    }
    fn requeue_interrupted_event(&mut self) {
        self.requeued += 1;
    }
    fn emulate_control_register(&mut self, qualification: u64) -> bool {
        self.control_registers.push(qualification);
        self.emulates_control_registers
    }
    fn emulate_xsetbv(&mut self, supported: u64) {
        self.xsetbv.push(supported);
    }
    fn emulate_cpuid(&mut self) {
        self.cpuids += 1;
    }
}

/// What the machine holds and what was asked of it.
#[derive(Default)]
pub struct State {
    pub frames: HashMap<u64, Box<[u64; 512]>>,
    pub next_frame: u64,
    /// Frames to hand out before allocation fails (`None`: no limit).
    pub frames_left: Option<u64>,
    pub this_cpu: usize,
    pub current_vcpu: usize,
    /// The TSC (`tsc`), which tests move.
    pub tsc: u64,
    pub kicks: Vec<usize>,
    /// The home CPU named by each idle wake-up.
    pub idle_wakes: Vec<usize>,
    pub flushes: Vec<(u64, u64)>,
    pub released_vcpus: Vec<u64>,
    pub masked_lines: Vec<u8>,
    pub unmasked_lines: Vec<u8>,
    /// Lines `unmask_line` refuses.
    pub missing_lines: Vec<u8>,
    pub log: Vec<String>,
    /// The CPUs running domains (`online_cpus`).
    pub online_cpus: u64,
    /// `create_vcpu` refuses the state (as a CPU whose VM entry checks fail).
    pub refuse_vcpus: bool,
    pub end_of_interrupts: u32,
    /// The vectors `record_device_vector` was given.
    pub device_vectors: Vec<u8>,
    /// The PCI configuration address port's latch.
    pub pci_config_address: u32,
    /// NMIs counted while a guest ran, and while hv ran.
    pub nmis: u64,
    pub nmis_in_root: u64,
    /// hv's log as `copy_log` copies it (its latest bytes).
    pub dmesg: Vec<u8>,
    /// What `machine_info` answers.
    pub machine_info: HvInfo,
    /// What `devices` answers (leaked: it is `'static` on the machine).
    pub devices: Option<(&'static (DevicePolicy, u64), Option<&'static AcpiInfo>)>,
    /// The `power` operation asked for (the fake then panics: the machine
    /// would not return).
    pub power: Option<PlatformOp>,
}

thread_local! {
    static STATE: RefCell<State> =
        RefCell::new(State { next_frame: 0x10_0000, online_cpus: 0b11, ..State::default() });
    static SCHEDULER: &'static TicketMutex<Scheduler<SCHEDULER_ENTRIES>> =
        Box::leak(Box::new(TicketMutex::new(Scheduler::new(30_000, 1_000))));
}

/// Runs `f` on this thread's machine.
pub fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
    STATE.with(|state| f(&mut state.borrow_mut()))
}

impl State {
    fn word(&mut self, address: u64) -> &mut u64 {
        let frame = self.frames.get_mut(&(address & !0xfff)).expect("fake machine: address is not RAM");
        &mut frame[(address as usize & 0xfff) / 8]
    }
}

/// Table memory in the fake machine's frames.
pub struct FakeTables;

impl TableMemory for FakeTables {
    fn allocate_table(&mut self) -> Option<u64> {
        Fake::allocate_frame()
    }
    fn read_entry(&self, table: u64, index: usize) -> u64 {
        Fake::load(table + index as u64 * 8)
    }
    fn write_entry(&mut self, table: u64, index: usize, value: u64) {
        Fake::swap(table + index as u64 * 8, value);
    }
    fn free_table(&mut self, table: u64) {
        Fake::free_frame(table)
    }
}

impl Platform for Fake {
    type Vcpu = FakeVcpu;
    type Tables = FakeTables;

    fn tables() -> FakeTables {
        FakeTables
    }
    fn allocate_frame() -> Option<u64> {
        with(|state| {
            if let Some(left) = state.frames_left.as_mut() {
                *left = left.checked_sub(1)?;
            }
            let frame = state.next_frame;
            state.next_frame += 0x1000;
            state.frames.insert(frame, Box::new([0; 512]));
            Some(frame)
        })
    }
    fn free_frame(frame: u64) {
        with(|state| assert!(state.frames.remove(&frame).is_some(), "fake machine: freed {frame:#x} twice"));
    }
    fn copy_to(address: u64, bytes: &[u8]) -> bool {
        with(|state| {
            for (offset, byte) in bytes.iter().enumerate() {
                let at = address + offset as u64;
                let Some(frame) = state.frames.get_mut(&(at & !0xfff)) else { return false };
                let word = &mut frame[(at as usize & 0xfff) / 8];
                let shift = (at % 8) * 8;
                *word = (*word & !(0xff << shift)) | (*byte as u64) << shift;
            }
            true
        })
    }
    fn copy_from(address: u64, out: &mut [u8]) -> bool {
        with(|state| {
            for (offset, byte) in out.iter_mut().enumerate() {
                let at = address + offset as u64;
                let Some(frame) = state.frames.get(&(at & !0xfff)) else { return false };
                *byte = (frame[(at as usize & 0xfff) / 8] >> ((at % 8) * 8)) as u8;
            }
            true
        })
    }
    fn test_and_set_bit(address: u64, bit: u32) -> bool {
        with(|state| {
            let word = state.word(address);
            let was = *word & (1 << bit) != 0;
            *word |= 1 << bit;
            was
        })
    }
    fn test_and_clear_bit(address: u64, bit: u32) -> bool {
        with(|state| {
            let word = state.word(address);
            let was = *word & (1 << bit) != 0;
            *word &= !(1 << bit);
            was
        })
    }
    fn compare_exchange(address: u64, current: u64, new: u64) -> Result<u64, u64> {
        with(|state| {
            let word = state.word(address);
            if *word != current {
                return Err(*word);
            }
            *word = new;
            Ok(current)
        })
    }
    fn load(address: u64) -> u64 {
        with(|state| *state.word(address))
    }
    fn swap(address: u64, value: u64) -> u64 {
        with(|state| core::mem::replace(state.word(address), value))
    }
    fn this_cpu() -> usize {
        with(|state| state.this_cpu)
    }
    fn current_vcpu() -> usize {
        with(|state| state.current_vcpu)
    }
    fn kick(cpu: usize) {
        with(|state| state.kicks.push(cpu));
    }
    fn wake_idle_cpu(home: usize) {
        with(|state| state.idle_wakes.push(home));
    }
    fn flush_ept(root: u64, elsewhere: u64) {
        with(|state| state.flushes.push((root, elsewhere)));
    }
    fn create_vcpu(setup: &VcpuSetup) -> Result<FakeVcpu, Error> {
        if with(|state| state.refuse_vcpus) {
            return Err(Error::InvalidArgument);
        }
        let frame = Self::allocate_frame().ok_or(Error::OutOfMemory)?;
        Ok(FakeVcpu {
            rip: setup.context.rip,
            frame,
            context: *setup.context,
            start_registers: setup.registers,
            ..FakeVcpu::default()
        })
    }
    fn release_vcpu(vcpu: FakeVcpu) {
        Self::free_frame(vcpu.frame);
        with(|state| state.released_vcpus.push(vcpu.rip));
    }
    fn online_cpus() -> u64 {
        with(|state| state.online_cpus)
    }
    fn total_pages() -> u64 {
        TOTAL_PAGES
    }
    fn tsc_khz() -> u64 {
        TSC_KHZ
    }
    fn tsc() -> u64 {
        with(|state| state.tsc)
    }
    fn scheduler() -> &'static TicketMutex<Scheduler<SCHEDULER_ENTRIES>> {
        SCHEDULER.with(|scheduler| *scheduler)
    }
    const KICK_VECTOR: u8 = KICK_VECTOR;
    fn end_of_interrupt() {
        with(|state| state.end_of_interrupts += 1);
    }
    fn record_device_vector(vector: u8) {
        with(|state| state.device_vectors.push(vector));
    }
    fn read_pci_config_address() -> u32 {
        with(|state| state.pci_config_address)
    }
    fn write_pci_config_address(value: u32) {
        with(|state| state.pci_config_address = value);
    }
    fn count_nmi() -> u64 {
        with(|state| {
            state.nmis += 1;
            state.nmis
        })
    }
    fn nmis_in_root() -> u64 {
        with(|state| state.nmis_in_root)
    }
    fn xcr0_supported() -> u64 {
        XCR0_SUPPORTED
    }
    fn mask_line(line: u8) {
        with(|state| state.masked_lines.push(line));
    }
    fn unmask_line(line: u8) -> bool {
        with(|state| {
            state.unmasked_lines.push(line);
            !state.missing_lines.contains(&line)
        })
    }
    fn domain_text(id: abi::DomainId, text: &[u8], _: &mut crate::log_ring::LineBudget) {
        with(|state| state.log.push(format!("(d{id}) {}", String::from_utf8_lossy(text))));
    }
    fn log(level: Level, line: fmt::Arguments) {
        with(|state| state.log.push(format!("{level:?}: {line}")));
    }
    fn copy_log(out: &mut [u8]) -> usize {
        with(|state| {
            let copied = out.len().min(state.dmesg.len());
            out[..copied].copy_from_slice(&state.dmesg[state.dmesg.len() - copied..]);
            copied
        })
    }
    fn machine_info() -> HvInfo {
        with(|state| state.machine_info)
    }
    fn devices() -> Option<(&'static (DevicePolicy, u64), Option<&'static AcpiInfo>)> {
        with(|state| state.devices)
    }
    fn power(operation: PlatformOp) -> ! {
        with(|state| state.power = Some(operation));
        panic!("fake machine: {operation:?}")
    }
}
