//! The machine hvcore runs on ([`hvcore::platform::Platform`]): x86-64 with
//! VT-x, physical memory through hv's identity map.

use core::fmt;

use abi::Error;
use hvcore::log_ring::Level;
use hvcore::platform::{Platform, SCHEDULER_ENTRIES, VcpuSetup};
use hvcore::scheduler::Scheduler;
use spin::mutex::TicketMutex;

use super::memory::{self as physical, FrameBox};
use super::vmx::{self, Vcpu};
use super::{ioapic, smp};

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
        let created = Vcpu::new(smp::capabilities(), vmcs_region, &setup).map_err(|reason| {
            crate::memory::free_frame(vmcs_region);
            crate::error!("creating a vCPU failed: {reason}");
            Error::InvalidArgument
        })?;
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
    fn scheduler() -> &'static TicketMutex<Scheduler<SCHEDULER_ENTRIES>> {
        &crate::hypervisor::SCHEDULER
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
}
