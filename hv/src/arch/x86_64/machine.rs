//! The machine hvcore runs on ([`hvcore::platform::Platform`]): x86-64 with
//! VT-x, physical memory through hv's identity map.

use core::fmt;

use abi::Error;
use abi::hypercall::PlatformOp;
use abi::info::HvInfo;
use hvcore::acpi::AcpiInfo;
use hvcore::log_ring::Level;
use hvcore::mmio::DevicePolicy;
use hvcore::platform::{Platform, SCHEDULER_ENTRIES, VcpuOps, VcpuSetup};
use hvcore::scheduler::Scheduler;
use spin::mutex::TicketMutex;

use super::memory::{self as physical, FrameBox};
use super::vmx::{self, Vcpu};
use super::{cpu, ioapic, lapic, smp};

/// x86-64 with VT-x.
pub struct Machine;

/// The all-ones page every guest has as its I/O bitmaps and its MSR bitmap:
/// all ports and MSRs exit (the CPU only reads it). Set once at boot.
pub static GUEST_BITMAPS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

impl Platform for Machine {
    type Vcpu = FrameBox<Vcpu>;
    type Tables = crate::memory::HvTables;

    fn tables() -> Self::Tables {
        crate::memory::HvTables
    }
    fn allocate_frame() -> Option<u64> {
        crate::memory::allocate_frame()
    }
    fn free_frame(frame: u64) {
        crate::memory::free_frame(frame)
    }
    fn copy_to(address: u64, bytes: &[u8]) -> bool {
        physical::copy_to(address, bytes)
    }
    fn copy_from(address: u64, out: &mut [u8]) -> bool {
        physical::copy_from(address, out)
    }
    fn test_and_set_bit(address: u64, bit: u32) -> bool {
        physical::atomic_test_and_set_bit(address, bit)
    }
    fn test_and_clear_bit(address: u64, bit: u32) -> bool {
        physical::atomic_test_and_clear_bit(address, bit)
    }
    fn compare_exchange(address: u64, current: u64, new: u64) -> Result<u64, u64> {
        physical::atomic_compare_exchange(address, current, new)
    }
    fn load(address: u64) -> u64 {
        physical::atomic_load(address)
    }
    fn swap(address: u64, value: u64) -> u64 {
        physical::atomic_swap(address, value)
    }
    fn this_cpu() -> usize {
        smp::this_cpu()
    }
    fn current_vcpu() -> usize {
        smp::current_vcpu()
    }
    fn kick(cpu: usize) {
        smp::kick(cpu)
    }
    fn wake_idle_cpu(home: usize) {
        smp::wake_idle_cpu(home);
    }
    fn flush_ept(root: u64, elsewhere: u64) {
        let capabilities = smp::capabilities();
        vmx::invalidate_ept(capabilities, vmx::ept_pointer(capabilities, root));
        if elsewhere != 0 {
            smp::flush_ept_elsewhere(elsewhere);
        }
    }
    fn create_vcpu(setup: &VcpuSetup) -> Result<Self::Vcpu, Error> {
        let vmcs_region = crate::memory::allocate_frame().ok_or(Error::OutOfMemory)?;
        // dom0's vCPUs share its own bitmaps (its ports, its MSRs); a
        // guest's are the shared deny-all page.
        let guest_bitmaps = GUEST_BITMAPS.load(core::sync::atomic::Ordering::Relaxed);
        let own_or_shared = |own: u64| if own != 0 { own } else { guest_bitmaps };
        let bitmaps = [own_or_shared(setup.io_bitmaps[0]), own_or_shared(setup.io_bitmaps[1])];
        let setup = VcpuSetup { io_bitmaps: bitmaps, msr_bitmap: own_or_shared(setup.msr_bitmap), ..*setup };
        let mut created = Vcpu::new(smp::capabilities(), vmcs_region, &setup).map_err(|reason| {
            crate::memory::free_frame(vmcs_region);
            crate::error!("creating a vCPU failed: {reason}");
            Error::InvalidArgument
        })?;
        let start = setup.registers;
        let registers = &mut created.registers;
        (registers.rax, registers.rcx, registers.rdx, registers.rbx) = (start.rax, start.rcx, start.rdx, start.rbx);
        (registers.rbp, registers.rsi, registers.rdi) = (start.rbp, start.rsi, start.rdi);
        FrameBox::new(created, crate::memory::allocate_frame).map_err(|created| {
            crate::memory::free_frame(created.release(smp::capabilities()));
            Error::OutOfMemory
        })
    }
    fn release_vcpu(vcpu: Self::Vcpu) {
        let (vcpu, frame) = vcpu.into_inner();
        crate::memory::free_frame(vcpu.release(smp::capabilities()));
        crate::memory::free_frame(frame);
    }
    fn online_cpus() -> u64 {
        smp::online_mask()
    }
    fn total_pages() -> u64 {
        crate::memory::totals().total_pages
    }
    fn tsc_khz() -> u64 {
        crate::log::tsc_khz()
    }
    fn tsc() -> u64 {
        cpu::rdtsc()
    }
    fn scheduler() -> &'static TicketMutex<Scheduler<SCHEDULER_ENTRIES>> {
        &crate::hypervisor::SCHEDULER
    }
    const KICK_VECTOR: u8 = smp::KICK_VECTOR;
    fn end_of_interrupt() {
        lapic::end_of_interrupt();
    }
    fn record_device_vector(vector: u8) {
        ioapic::record(vector);
    }
    fn read_pci_config_address() -> u32 {
        // SAFETY: the address latch of configuration mechanism #1,
        // doubleword access only, which never reaches 0xcf9's reset bits.
        unsafe { cpu::inl(hvcore::exits::PCI_CONFIG_ADDRESS) }
    }
    fn write_pci_config_address(value: u32) {
        // SAFETY: as in `read_pci_config_address`: any value only selects
        // a configuration register (the data port passes through).
        unsafe { cpu::outl(hvcore::exits::PCI_CONFIG_ADDRESS, value) }
    }
    fn count_nmi() -> u64 {
        vmx::count_nmi()
    }
    fn nmis_in_root() -> u64 {
        super::idt::NMIS_IN_ROOT.load(core::sync::atomic::Ordering::Relaxed)
    }
    fn xcr0_supported() -> u64 {
        smp::capabilities().xcr0_supported
    }
    fn mask_line(line: u8) {
        ioapic::mask(line)
    }
    fn unmask_line(line: u8) -> bool {
        ioapic::unmask(line)
    }
    fn domain_text(id: abi::DomainId, text: &[u8], budget: &mut hvcore::log_ring::LineBudget) {
        crate::log::domain_text(id, text, budget, super::cpu::rdtsc())
    }
    fn log(level: Level, line: fmt::Arguments) {
        crate::log::write(level, line)
    }
    fn copy_log(out: &mut [u8]) -> usize {
        crate::log::copy_latest(out)
    }
    fn machine_info() -> HvInfo {
        let totals = crate::memory::totals();
        let mut cpus = [abi::info::CpuInfo::default(); abi::info::HV_INFO_CPUS];
        smp::describe(&mut cpus);
        HvInfo {
            features: smp::capabilities().features,
            total_pages: totals.total_pages,
            free_pages: totals.free_pages,
            tsc_khz: crate::log::tsc_khz(),
            cpu_count: smp::running(),
            cpus,
            ..HvInfo::default()
        }
    }
    fn devices() -> Option<(&'static (DevicePolicy, u64), Option<&'static AcpiInfo>)> {
        Some((crate::hypercall::DEVICES.get()?, super::platform::acpi()))
    }
    fn power(operation: PlatformOp) -> ! {
        match operation {
            PlatformOp::PowerOff => super::platform::power_off(),
            PlatformOp::Reboot => super::platform::reboot(),
        }
    }
}

// hv's log fits the buffer `DmesgRead` copies it through.
const _: () = assert!(crate::log::RING_BYTES <= hvcore::mica_calls::LOG_BYTES);

/// The exit handler's view of a vCPU (`hvcore::exits`): each call is the
/// `Vcpu` method of the same name (named by path, since a method call on
/// the box would find this trait's first).
impl VcpuOps for FrameBox<Vcpu> {
    fn rip(&self) -> u64 {
        Vcpu::rip(self)
    }
    fn rax(&self) -> u64 {
        self.registers.rax
    }
    fn rcx(&self) -> u64 {
        self.registers.rcx
    }
    fn rdx(&self) -> u64 {
        self.registers.rdx
    }
    fn set_rax(&mut self, value: u64) {
        self.registers.rax = value;
    }
    fn set_rdx(&mut self, value: u64) {
        self.registers.rdx = value;
    }
    fn efer(&self) -> u64 {
        Vcpu::efer(self)
    }
    fn set_efer(&mut self, value: u64) {
        Vcpu::set_efer(self, value)
    }
    fn cr0(&self) -> u64 {
        Vcpu::cr0(self)
    }
    fn read_msr(&self, msr: hvcore::exits::GuestMsr) -> Option<u64> {
        Vcpu::read_msr(self, msr)
    }
    fn write_msr(&mut self, msr: hvcore::exits::GuestMsr, value: u64) -> bool {
        Vcpu::write_msr(self, msr, value)
    }
    fn skip_instruction(&mut self) {
        Vcpu::skip_instruction(self)
    }
    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) {
        Vcpu::inject_exception(self, vector, error_code)
    }
    fn set_interrupt_window_exiting(&mut self, enabled: bool) {
        Vcpu::set_interrupt_window_exiting(self, enabled)
    }
    fn requeue_interrupted_event(&mut self) {
        Vcpu::requeue_interrupted_event(self)
    }
    fn emulate_control_register(&mut self, qualification: u64) -> bool {
        Vcpu::emulate_control_register(self, qualification)
    }
    fn emulate_xsetbv(&mut self, supported: u64) {
        Vcpu::emulate_xsetbv(self, supported)
    }
    fn emulate_cpuid(&mut self) {
        crate::hypervisor::emulate_cpuid(self)
    }
}
