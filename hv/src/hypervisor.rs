//! The hypervisor's state and its run loop: enter a domain, handle the VM
//! exit, repeat. Nothing a domain does can stop this loop; a domain that
//! misbehaves is marked crashed and no longer entered.

use abi::info::{DomainState, HvInfo};
use arrayvec::ArrayVec;

use crate::arch::vmx::{Capabilities, Exit};
use crate::arch::{cpu, lapic};
use crate::domain::Domain;

/// Most domains hv tracks at once.
pub const MAX_DOMAINS: usize = 64;

/// Length of a time slice in TSC ticks (about 2 million instructions under
/// Bochs, where the TSC counts instructions; about 1 ms on a 2 GHz CPU).
const TIME_SLICE_TSC: u64 = 2 << 20;

/// Everything hv knows, owned by the run loop of the boot CPU.
pub struct Hypervisor {
    pub capabilities: Capabilities,
    pub domains: ArrayVec<Domain, MAX_DOMAINS>,
    pub boot_tsc: u64,
    /// Pages reserved for hv at boot (its image and the frame bitmap);
    /// frames it allocates later (tables, VMCSs) are counted on top.
    pub reserved_pages: u64,
}

const HV_VERSION: &str = env!("CARGO_PKG_VERSION");

impl Hypervisor {
    /// The `HvInfo` answer.
    pub fn info(&self) -> HvInfo {
        let totals = crate::memory::totals();
        let mut hv_version = [0u8; 16];
        let length = HV_VERSION.len().min(hv_version.len());
        hv_version[..length].copy_from_slice(&HV_VERSION.as_bytes()[..length]);
        HvInfo {
            abi_version: abi::ABI_VERSION,
            domain_count: self.domains.len() as u32,
            features: self.capabilities.features,
            total_pages: totals.total_pages,
            free_pages: totals.free_pages,
            hv_pages: self.reserved_pages + self.hv_allocated_pages(totals),
            tsc_khz: 0,
            boot_tsc: self.boot_tsc,
            cpu_count: 1,
            _reserved0: 0,
            hv_version,
        }
    }

    /// Allocated frames that no domain owns: hv's own tables and VMX structures.
    fn hv_allocated_pages(&self, totals: crate::memory::Totals) -> u64 {
        let allocated = totals.total_pages - totals.free_pages;
        let owned: u64 = self.domains.iter().map(|d| d.current_pages).sum();
        allocated.saturating_sub(owned)
    }

    /// Runs domains forever.
    pub fn run(&mut self) -> ! {
        // The timer counts down once every 2^rate TSC ticks (SDM 26.5.1).
        let slice = (TIME_SLICE_TSC >> self.capabilities.preemption_timer_rate).clamp(1, u32::MAX as u64) as u32;
        for domain in self.domains.iter_mut() {
            domain.vcpu.set_preemption_timer(slice);
        }
        loop {
            let Some(current) = self.domains.iter().position(|d| d.state == DomainState::Running) else {
                crate::warning!("no domain is runnable; hv is idle");
                cpu::halt_forever();
            };
            self.run_slice(current);
        }
    }

    /// Runs domain `index` until something needs the scheduler. The whole
    /// slice, including hv's work on the domain's behalf, is charged to it.
    fn run_slice(&mut self, index: usize) {
        let start = cpu::rdtsc();
        loop {
            let domain = &mut self.domains[index];
            let (exit, reason) = domain.vcpu.run();
            domain.count_exit(reason);
            if !self.handle_exit(index, exit) || self.domains[index].state != DomainState::Running {
                break;
            }
        }
        self.domains[index].cpu_time_tsc += cpu::rdtsc().wrapping_sub(start);
    }

    /// Handles one VM exit. Returns false when the scheduler should pick again.
    #[inline]
    fn handle_exit(&mut self, index: usize, exit: Exit) -> bool {
        match exit {
            Exit::Hypercall => {
                let registers = &self.domains[index].vcpu.registers;
                let number = registers.rax;
                let arguments = [registers.rdi, registers.rsi, registers.rdx, registers.r10, registers.r8];
                let result = crate::hypercall::dispatch(self, index, number, arguments);
                let domain = &mut self.domains[index];
                domain.vcpu.registers.rax = result as u64;
                domain.vcpu.skip_instruction();
                true
            }
            Exit::Cpuid => {
                let domain = &mut self.domains[index];
                let registers = &mut domain.vcpu.registers;
                let leaf = registers.rax as u32;
                let raw = cpu::cpuid(leaf, registers.rcx as u32);
                let [eax, ebx, ecx, edx] = hvcore::guest::filter_cpuid(leaf, [raw.eax, raw.ebx, raw.ecx, raw.edx]);
                registers.rax = eax as u64;
                registers.rbx = ebx as u64;
                registers.rcx = ecx as u64;
                registers.rdx = edx as u64;
                domain.vcpu.skip_instruction();
                true
            }
            Exit::PreemptionTimer => false,
            Exit::ExternalInterrupt { vector } => {
                crate::debug!("external interrupt, vector {vector}");
                lapic::end_of_interrupt();
                false
            }
            Exit::Halt => {
                // Nothing wakes a halted vCPU yet (no virtual interrupts), so
                // HLT is a yield: the domain continues after it.
                self.domains[index].vcpu.skip_instruction();
                false
            }
            Exit::Io { port, size, input, string } => {
                let domain = &mut self.domains[index];
                if domain.should_report_refusal() {
                    crate::warning!(
                        "d{}: refused I/O {} port {port:#x} ({size} bytes) at rip {:#x}",
                        domain.id,
                        if input { "read from" } else { "write to" },
                        domain.vcpu.rip()
                    );
                }
                if input && !string {
                    // Reads of absent devices float high.
                    let mask = match size {
                        1 => 0xff,
                        2 => 0xffff,
                        _ => 0xffff_ffff,
                    };
                    domain.vcpu.registers.rax |= mask;
                }
                domain.vcpu.skip_instruction();
                true
            }
            Exit::MsrRead | Exit::MsrWrite => {
                let domain = &mut self.domains[index];
                let msr = domain.vcpu.registers.rcx as u32;
                if domain.should_report_refusal() {
                    crate::warning!(
                        "d{}: refused {} of MSR {msr:#x} at rip {:#x}; injecting #GP",
                        domain.id,
                        if matches!(exit, Exit::MsrRead) { "read" } else { "write" },
                        domain.vcpu.rip()
                    );
                }
                domain.vcpu.inject_exception(13, Some(0));
                true
            }
            Exit::EptViolation { guest_physical, qualification } => {
                let domain = &mut self.domains[index];
                let rip = domain.vcpu.rip();
                domain.crash(format_args!(
                    "EPT violation at guest-physical {guest_physical:#x} (qualification {qualification:#x}) at rip {rip:#x}"
                ));
                false
            }
            Exit::EptMisconfiguration { guest_physical } => {
                let domain = &mut self.domains[index];
                domain.crash(format_args!("EPT misconfiguration at {guest_physical:#x} (hv bug)"));
                false
            }
            Exit::TripleFault => {
                let domain = &mut self.domains[index];
                let rip = domain.vcpu.rip();
                domain.crash(format_args!("triple fault at rip {rip:#x}"));
                false
            }
            Exit::ExceptionOrNmi { information } => {
                let domain = &mut self.domains[index];
                domain.crash(format_args!("unexpected exception or NMI exit (information {information:#x})"));
                false
            }
            Exit::ControlRegister { qualification } => {
                let domain = &mut self.domains[index];
                let rip = domain.vcpu.rip();
                domain.crash(format_args!("refused control-register access (qualification {qualification:#x}) at rip {rip:#x}"));
                false
            }
            Exit::EntryFailure { reason, qualification } => {
                self.domains[index]
                    .crash(format_args!("VM entry failed (reason {reason}, qualification {qualification:#x})"));
                false
            }
            Exit::LaunchFailed { error } => {
                self.domains[index].crash(format_args!("VMLAUNCH/VMRESUME failed (VM-instruction error {error})"));
                false
            }
            Exit::Other { reason, qualification } => {
                let domain = &mut self.domains[index];
                let rip = domain.vcpu.rip();
                domain.crash(format_args!(
                    "unhandled VM exit reason {reason} (qualification {qualification:#x}) at rip {rip:#x}"
                ));
                false
            }
        }
    }
}
