//! What hv does for each VM exit but the hypercall (which the run loop
//! handles inline): emulate, refuse as a CPU without the feature would, or
//! crash the domain alone. The architecture code decodes the hardware's
//! exit reason into an [`Exit`] (VT-x: `arch::vmx::Vcpu::decode`); what
//! the handler needs of the vCPU and the machine is [`VcpuOps`] and
//! [`Platform`].

use abi::info::CrashReason;

use crate::domain::{CrashDetails, Domain};
use crate::log_ring::Level;
use crate::platform::{Platform, VcpuOps};

/// PCI configuration mechanism #1's address port, which dom0 reaches as a
/// doubleword (see [`handle_exit`]).
pub const PCI_CONFIG_ADDRESS: u16 = 0xcf8;

/// Why the guest stopped running (decoded from the exit reason, SDM Vol. 3D Appendix C).
#[derive(Clone, Copy, Debug)]
pub enum Exit {
    /// VMCALL: a hypercall.
    Hypercall,
    /// VMCALL from guest CPL > 0: refused with `Permission`.
    HypercallFromUserMode,
    /// CPUID.
    Cpuid,
    /// HLT.
    Halt,
    /// IN/OUT/INS/OUTS to a port the bitmap does not pass through.
    Io { port: u16, size: u8, input: bool, string: bool },
    /// RDMSR of an MSR the bitmap does not pass through (number in RCX).
    MsrRead,
    /// WRMSR of an MSR the bitmap does not pass through.
    MsrWrite,
    /// Guest-physical access EPT does not allow.
    EptViolation { guest_physical: u64, qualification: u64 },
    /// A malformed EPT entry (a hv bug, reported as such).
    EptMisconfiguration { guest_physical: u64 },
    /// The guest triple-faulted.
    TripleFault,
    /// An external interrupt arrived (already acknowledged, SDM 28.2.2).
    ExternalInterrupt { vector: u8 },
    /// An NMI arrived while the guest ran: hv's, never the guest's fault.
    Nmi,
    /// A guest exception hv intercepts (the exception bitmap is empty, so
    /// none today).
    Exception { information: u32 },
    /// XSETBV (always exits, SDM 26.1.2).
    Xsetbv,
    /// RDPMC (RDPMC exiting).
    Rdpmc,
    /// WBINVD (WBINVD exiting) or INVD (always exits).
    CacheFlush,
    /// A VMX instruction (VMCLEAR ... VMXON, INVEPT, INVVPID): always exits;
    /// hv offers no nested virtualization (CPUID hides VMX).
    VmxInstruction,
    /// MOV to or from a debug register (MOV-DR exiting).
    DebugRegister,
    /// The preemption timer reached zero.
    PreemptionTimer,
    /// MOV to or from a control register hv intercepts.
    ControlRegister { qualification: u64 },
    /// VM entry failed on guest state or MSR loading (SDM 27.8).
    EntryFailure { reason: u32, qualification: u64 },
    /// VMLAUNCH/VMRESUME itself failed; `error` is the VM-instruction error (SDM 31.4).
    LaunchFailed { error: u32 },
    /// The guest can now take an external interrupt (interrupt-window exiting).
    InterruptWindow,
    /// Any other exit reason; hv refuses what it does not understand.
    Other { reason: u32, qualification: u64 },
}

impl Exit {
    /// Whether this exit may have cut short the delivery of an event, so
    /// that the IDT-vectoring information field can be valid (SDM 28.2.4).
    /// Exits caused by executing an instruction cannot: the instruction
    /// runs only after any event was delivered. Entry failures leave
    /// nothing to re-inject.
    #[inline]
    pub fn may_interrupt_delivery(&self) -> bool {
        !matches!(
            self,
            Exit::Hypercall
                | Exit::HypercallFromUserMode
                | Exit::Cpuid
                | Exit::Halt
                | Exit::Io { .. }
                | Exit::MsrRead
                | Exit::MsrWrite
                | Exit::Xsetbv
                | Exit::Rdpmc
                | Exit::CacheFlush
                | Exit::VmxInstruction
                | Exit::DebugRegister
                | Exit::ControlRegister { .. }
                | Exit::EntryFailure { .. }
                | Exit::LaunchFailed { .. }
        )
    }
}

/// Handles one VM exit of vCPU `vcpu_index` of `domain` (`vcpu`, which
/// this CPU runs). Returns false when the scheduler should pick again.
#[inline]
pub fn handle_exit<P: Platform>(domain: &mut Domain<P>, vcpu: &mut P::Vcpu, vcpu_index: usize, exit: Exit) -> bool {
    if exit.may_interrupt_delivery() {
        vcpu.requeue_interrupted_event();
    }
    match exit {
        Exit::Hypercall => {
            // The run loop handles hypercall exits inline.
            P::log(Level::Error, format_args!("hypercall exit reached the generic handler (hv bug)"));
            true
        }
        Exit::HypercallFromUserMode => {
            // The kernel's user program gets the documented refusal
            // (abi: hypercalls are refused from CPL > 0); nothing runs.
            vcpu.set_rax(abi::Error::Permission.code() as u64);
            vcpu.skip_instruction();
            true
        }
        Exit::Cpuid => {
            vcpu.emulate_cpuid();
            true
        }
        Exit::PreemptionTimer => false,
        Exit::InterruptWindow => {
            vcpu.set_interrupt_window_exiting(false);
            true
        }
        Exit::ExternalInterrupt { vector } if vector == P::KICK_VECTOR => {
            // Another CPU changed this domain's flags (an event, a
            // pause): the run loop looks at them before the next entry.
            P::end_of_interrupt();
            true
        }
        Exit::ExternalInterrupt { vector } => {
            // A device line is recorded and delivered by the run loop;
            // anything else was only a wake-up.
            P::record_device_vector(vector);
            P::end_of_interrupt();
            false
        }
        Exit::Halt => {
            vcpu.skip_instruction();
            crate::event_ops::block(domain, vcpu_index);
            false
        }
        Exit::Io { port: PCI_CONFIG_ADDRESS, size: 4, input, string: false } if domain.privileged => {
            // dom0's PCI configuration address: any value only selects
            // a register (the data port passes through); 0xcf9 stays hv's.
            if input {
                vcpu.set_rax(P::read_pci_config_address() as u64);
            } else {
                P::write_pci_config_address(vcpu.rax() as u32);
            }
            vcpu.skip_instruction();
            true
        }
        Exit::Io { port, size, input, string } => {
            let rip = vcpu.rip();
            if input && !string {
                // Reads of absent devices float high.
                let mask = match size {
                    1 => 0xff,
                    2 => 0xffff,
                    _ => 0xffff_ffff,
                };
                vcpu.set_rax(vcpu.rax() | mask);
            }
            vcpu.skip_instruction();
            let direction = if input { "read from" } else { "write to" };
            domain.report_refusal(format_args!("I/O {direction} port {port:#x} ({size} bytes) at rip {rip:#x}"));
            true
        }
        Exit::MsrWrite if vcpu.rcx() as u32 == abi::xen::hypercall::HYPERCALL_PAGE_MSR => {
            let value = vcpu.rdx() << 32 | (vcpu.rax() & 0xffff_ffff);
            if crate::xen::fill_hypercall_page(domain, value).is_err() {
                return refuse_with_gp(domain, vcpu, format_args!("hypercall page at {value:#x}"));
            }
            vcpu.skip_instruction();
            true
        }
        Exit::MsrRead | Exit::MsrWrite => {
            let msr = vcpu.rcx() as u32;
            let access = if matches!(exit, Exit::MsrRead) { "read" } else { "write" };
            refuse_with_gp(domain, vcpu, format_args!("{access} of MSR {msr:#x}"))
        }
        Exit::EptViolation { guest_physical, qualification } => {
            let rip = vcpu.rip();
            let details = CrashDetails { exit_reason: 48, guest_physical, rip, qualification };
            domain.crash_with(CrashReason::EptViolation, details, format_args!(
                "EPT violation at guest-physical {guest_physical:#x} (qualification {qualification:#x}) at rip {rip:#x}"
            ));
            false
        }
        Exit::EptMisconfiguration { guest_physical } => {
            let details = CrashDetails { exit_reason: 49, guest_physical, ..CrashDetails::default() };
            domain.crash_with(
                CrashReason::EptMisconfiguration,
                details,
                format_args!("EPT misconfiguration at {guest_physical:#x} (hv bug)"),
            );
            false
        }
        Exit::TripleFault => {
            let rip = vcpu.rip();
            let details = CrashDetails { exit_reason: 2, rip, ..CrashDetails::default() };
            domain.crash_with(CrashReason::TripleFault, details, format_args!("triple fault at rip {rip:#x}"));
            false
        }
        Exit::Nmi => {
            // hv's NMI (hv has no NMI source of its own: a platform or
            // watchdog event). It is no fault of the guest, which runs on.
            let count = P::count_nmi();
            if count <= 8 {
                let in_root = P::nmis_in_root();
                P::log(
                    Level::Warning,
                    format_args!(
                        "NMI #{count} while d{} ran (hv's; the domain runs on; {in_root} more while hv ran)",
                        domain.id
                    ),
                );
            }
            true
        }
        Exit::Exception { information } => {
            domain.crash(vcpu.rip(), format_args!("unexpected exception exit (information {information:#x})"));
            false
        }
        Exit::ControlRegister { qualification } => {
            if vcpu.emulate_control_register(qualification) {
                return true;
            }
            let rip = vcpu.rip();
            domain.crash(
                rip,
                format_args!("refused control-register access (qualification {qualification:#x}) at rip {rip:#x}"),
            );
            false
        }
        Exit::Xsetbv => {
            vcpu.emulate_xsetbv(P::xcr0_supported());
            true
        }
        Exit::CacheFlush => {
            // WBINVD and INVD are no-ops: x86 DMA is cache-coherent and
            // hv maps all guest memory write-back, so no domain needs
            // caches written back (and INVD would drop other domains'
            // and hv's dirty lines).
            vcpu.skip_instruction();
            true
        }
        Exit::VmxInstruction => {
            // As on a CPU without VMX, which is what CPUID shows.
            vcpu.inject_exception(6, None);
            true
        }
        Exit::Rdpmc | Exit::DebugRegister => {
            // Performance counters are not switched between domains,
            // so none may use them. MOV DR does not exit (debug
            // registers are per vCPU); were a CPU to force the exit,
            // refusing it keeps domains apart all the same.
            let what = if matches!(exit, Exit::Rdpmc) { "RDPMC" } else { "a debug-register access" };
            refuse_with_gp(domain, vcpu, format_args!("{what}"))
        }
        Exit::EntryFailure { reason, qualification } => {
            domain
                .crash(vcpu.rip(), format_args!("VM entry failed (reason {reason}, qualification {qualification:#x})"));
            false
        }
        Exit::LaunchFailed { error } => {
            domain.crash(vcpu.rip(), format_args!("VMLAUNCH/VMRESUME failed (VM-instruction error {error})"));
            false
        }
        Exit::Other { reason, qualification } => {
            let rip = vcpu.rip();
            domain.crash(
                rip,
                format_args!("unhandled VM exit reason {reason} (qualification {qualification:#x}) at rip {rip:#x}"),
            );
            false
        }
    }
}

/// Refuses the instruction that exited as a CPU without it would, with
/// #GP(0), and logs `what` (rate-limited: `Domain::report_refusal`).
/// Returns true: the vCPU runs on.
fn refuse_with_gp<P: Platform>(domain: &mut Domain<P>, vcpu: &mut P::Vcpu, what: core::fmt::Arguments) -> bool {
    let rip = vcpu.rip();
    vcpu.inject_exception(13, Some(0));
    domain.report_refusal(format_args!("{what} at rip {rip:#x}; injecting #GP"));
    true
}
