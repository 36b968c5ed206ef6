//! What hv does for each VM exit but the hypercall (which the run loop
//! handles inline): emulate, refuse as a CPU without the feature would, or
//! crash the domain alone. The architecture code decodes the hardware's
//! exit reason into an [`Exit`] (VT-x: `arch::vmx::Vcpu::decode`); what
//! the handler needs of the vCPU and the machine is [`VcpuOps`] and
//! [`Platform`].

use abi::info::CrashReason;

use abi::xen::start_info::{ACPI_S5_SLEEP_TYPE, ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_STATUS_PORT};

use crate::domain::{CrashDetails, Domain, Ended};
use crate::log_ring::Level;
use crate::platform::{Platform, VcpuOps};

/// PCI configuration mechanism #1's address port, which dom0 reaches as a
/// doubleword (see [`handle_exit`]).
pub const PCI_CONFIG_ADDRESS: u16 = 0xcf8;

/// IA32_EFER: the one MSR a guest reads and writes through hv (a PVH
/// kernel enters 64-bit mode itself); its bits (SDM Vol. 3A 2.2.1).
pub const IA32_EFER: u32 = 0xc000_0080;
const EFER_SCE: u64 = 1;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;
const CR0_PG: u64 = 1 << 31;

/// IA32_MISC_ENABLE: read as fast strings on, BTS and PEBS unavailable
/// (bits 0, 11, 12; the rest, thermal and power features, off); writes
/// are refused (#GP), which Linux's safe accessors expect.
pub const IA32_MISC_ENABLE: u32 = 0x1a0;
pub const MISC_ENABLE_VALUE: u64 = 1 | 1 << 11 | 1 << 12;

/// IA32_BIOS_SIGN_ID: the loaded microcode's revision, in the high half.
/// Linux clears it and runs CPUID before reading it, as the SDM's update
/// procedure says, without a safe accessor (a refusal prints a call trace
/// in its log): writes are taken and dropped, reads say no update was
/// loaded (0), which also keeps the host's revision to itself.
pub const IA32_BIOS_SIGN_ID: u32 = 0x8b;

/// The MSRs besides EFER a guest kernel reads and writes through hv (issue
/// 11's Linux needs them): each is the vCPU's own, held by its VMCS (FS
/// and GS base, PAT) or switched with its other state when another vCPU
/// takes the CPU (the rest), and written only with values a CPU takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestMsr {
    FsBase,
    GsBase,
    KernelGsBase,
    Star,
    Lstar,
    Cstar,
    Sfmask,
    TscAux,
    Pat,
}

impl GuestMsr {
    /// The MSR numbered `msr`, if it is one of these.
    pub const fn from_number(msr: u32) -> Option<GuestMsr> {
        Some(match msr {
            0xc000_0100 => GuestMsr::FsBase,
            0xc000_0101 => GuestMsr::GsBase,
            0xc000_0102 => GuestMsr::KernelGsBase,
            0xc000_0081 => GuestMsr::Star,
            0xc000_0082 => GuestMsr::Lstar,
            0xc000_0083 => GuestMsr::Cstar,
            0xc000_0084 => GuestMsr::Sfmask,
            0xc000_0103 => GuestMsr::TscAux,
            0x277 => GuestMsr::Pat,
            _ => return None,
        })
    }

    /// Whether a CPU takes `value` (else WRMSR raises #GP): addresses
    /// canonical, SFMASK and TSC_AUX 32-bit, PAT entries valid memory
    /// types (0, 1, 4, 5, 6, 7).
    pub fn accepts(self, value: u64) -> bool {
        let canonical = ((value as i64) << 16 >> 16) as u64 == value;
        match self {
            GuestMsr::FsBase | GuestMsr::GsBase | GuestMsr::KernelGsBase | GuestMsr::Lstar | GuestMsr::Cstar => {
                canonical
            }
            GuestMsr::Star => true,
            GuestMsr::Sfmask | GuestMsr::TscAux => value >> 32 == 0,
            GuestMsr::Pat => value.to_le_bytes().iter().all(|kind| matches!(kind, 0 | 1 | 4..=7)),
        }
    }
}

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

/// SLP_EN: bit 5 of a write to the ACPI sleep control register.
const SLP_EN: u8 = 1 << 5;

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
        // A guest's ACPI sleep control register (`abi::xen::start_info`):
        // S5 with SLP_EN powers it off; any other write does nothing.
        Exit::Io { port: ACPI_SLEEP_CONTROL_PORT, size: 1, input: false, string: false } if !domain.privileged => {
            vcpu.skip_instruction();
            let value = vcpu.rax() as u8;
            if value & SLP_EN == 0 || (value >> 2) & 7 != ACPI_S5_SLEEP_TYPE {
                return true;
            }
            P::log(Level::Info, format_args!("d{} shut down (PowerOff): ACPI S5", domain.id));
            domain.ended = Some(Ended::Shutdown(abi::hypercall::ShutdownReason::PowerOff));
            domain.stop_all();
            false
        }
        // Its status register: a write (clearing WAK_STS) does nothing, a
        // read says no wake.
        Exit::Io { port: ACPI_SLEEP_STATUS_PORT, size: 1, input, string: false } if !domain.privileged => {
            if input {
                vcpu.set_rax(vcpu.rax() & !0xff);
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
        Exit::MsrRead if vcpu.rcx() as u32 == IA32_EFER => {
            let value = vcpu.efer();
            complete_read(vcpu, value);
            true
        }
        Exit::MsrWrite if vcpu.rcx() as u32 == IA32_EFER => {
            let value = vcpu.rdx() << 32 | (vcpu.rax() & 0xffff_ffff);
            let current = vcpu.efer();
            // As a CPU: reserved bits, or LME changed with paging on, #GP.
            let paging = vcpu.cr0() & CR0_PG != 0;
            if value & !(EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE) != 0 || paging && (value ^ current) & EFER_LME != 0
            {
                return refuse_with_gp(domain, vcpu, format_args!("write of {value:#x} to EFER"));
            }
            // LMA is the CPU's: it follows LME once paging is on.
            vcpu.set_efer(value & (EFER_SCE | EFER_LME | EFER_NXE) | current & EFER_LMA);
            vcpu.skip_instruction();
            true
        }
        Exit::MsrRead if let Some(msr) = GuestMsr::from_number(vcpu.rcx() as u32) => match vcpu.read_msr(msr) {
            Some(value) => {
                complete_read(vcpu, value);
                true
            }
            None => refuse_with_gp(domain, vcpu, format_args!("read of {msr:?}, which this CPU lacks")),
        },
        Exit::MsrWrite if let Some(msr) = GuestMsr::from_number(vcpu.rcx() as u32) => {
            let value = vcpu.rdx() << 32 | (vcpu.rax() & 0xffff_ffff);
            if !msr.accepts(value) || !vcpu.write_msr(msr, value) {
                return refuse_with_gp(domain, vcpu, format_args!("write of {value:#x} to {msr:?}"));
            }
            vcpu.skip_instruction();
            true
        }
        Exit::MsrRead if vcpu.rcx() as u32 == IA32_MISC_ENABLE => {
            complete_read(vcpu, MISC_ENABLE_VALUE);
            true
        }
        Exit::MsrRead | Exit::MsrWrite => other_msr(domain, vcpu, vcpu_index, matches!(exit, Exit::MsrWrite)),
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

/// RDMSR or WRMSR (`write`) of an MSR none of [`handle_exit`]'s arms
/// takes: [`IA32_BIOS_SIGN_ID`], a guest's local APIC (`vlapic`; dom0 has
/// none), else #GP. Out
/// of line: the run loop, into which `handle_exit` is inlined, stays as
/// it was.
#[inline(never)]
fn other_msr<P: Platform>(domain: &mut Domain<P>, vcpu: &mut P::Vcpu, vcpu_index: usize, write: bool) -> bool {
    let msr = vcpu.rcx() as u32;
    if msr == IA32_BIOS_SIGN_ID {
        if write {
            vcpu.skip_instruction();
        } else {
            complete_read(vcpu, 0);
        }
        return true;
    }
    if domain.privileged || !crate::vlapic::handles(msr) {
        let access = if write { "write" } else { "read" };
        return refuse_with_gp(domain, vcpu, format_args!("{access} of MSR {msr:#x}"));
    }
    if !write {
        return match crate::vlapic::read_msr(domain, vcpu_index, msr) {
            Some(value) => {
                complete_read(vcpu, value);
                true
            }
            None => refuse_with_gp(domain, vcpu, format_args!("read of APIC MSR {msr:#x}")),
        };
    }
    let value = vcpu.rdx() << 32 | (vcpu.rax() & 0xffff_ffff);
    if !crate::vlapic::write_msr(domain, vcpu_index, msr, value) {
        return refuse_with_gp(domain, vcpu, format_args!("write of {value:#x} to APIC MSR {msr:#x}"));
    }
    vcpu.skip_instruction();
    true
}

/// Ends an emulated RDMSR: `value` in EDX:EAX, the guest past the
/// instruction.
fn complete_read(vcpu: &mut impl VcpuOps, value: u64) {
    vcpu.set_rax(value & 0xffff_ffff);
    vcpu.set_rdx(value >> 32);
    vcpu.skip_instruction();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_platform::{self as machine, Fake, FakeVcpu};
    use abi::xen::hypercall::{HYPERCALL_PAGE_MSR, hypercall_page_stub};

    const RIP: u64 = 0x20_1234;
    /// #GP(0), as `refuse_with_gp` injects it.
    const GP: (u8, Option<u32>) = (13, Some(0));

    /// Dom0 (privileged) or d1, with 4 pages of RAM from 0 and one vCPU up.
    fn domain(privileged: bool) -> Domain<Fake> {
        let mut domain = Domain::<Fake>::new(u32::from(!privileged), privileged, 16).unwrap();
        domain.populate(0, 4).unwrap();
        domain.vcpus[0].up = true;
        domain
    }

    fn vcpu() -> FakeVcpu {
        FakeVcpu { rip: RIP, ..FakeVcpu::default() }
    }

    /// The log lines that report a refusal.
    fn refusals() -> Vec<String> {
        machine::with(|m| m.log.iter().filter(|line| line.contains("refused")).cloned().collect())
    }

    fn crash_text(domain: &Domain<Fake>) -> String {
        let text = &domain.crash_record.text;
        String::from_utf8_lossy(&text[..text.iter().position(|&b| b == 0).unwrap_or(text.len())]).into_owned()
    }

    #[test]
    fn a_hypercall_from_user_mode_gets_permission_and_runs_nothing() {
        let (mut domain, mut vcpu) = (domain(false), vcpu());
        vcpu.rax = 3;
        assert!(handle_exit(&mut domain, &mut vcpu, 0, Exit::HypercallFromUserMode));
        assert_eq!(vcpu.rax, abi::Error::Permission.code() as u64);
        assert_eq!((vcpu.skipped, vcpu.requeued), (1, 0));
        assert_eq!(domain.ended, None);
    }

    #[test]
    fn an_ept_violation_crashes_the_domain_alone_with_its_crash_record() {
        let (mut domain, mut vcpu) = (domain(false), vcpu());
        let exit = Exit::EptViolation { guest_physical: 0x3000_0000, qualification: 0x182 };
        assert!(!handle_exit(&mut domain, &mut vcpu, 0, exit));
        assert_eq!(domain.ended, Some(Ended::Crashed));
        assert!(domain.vcpus[0].reschedule, "its vCPUs stop");
        let record = &domain.crash_record;
        assert_eq!(
            (record.reason, record.exit_reason, record.guest_physical, record.rip, record.qualification),
            (CrashReason::EptViolation as u32, 48, 0x3000_0000, RIP, 0x182)
        );
        assert_eq!(
            crash_text(&domain),
            "EPT violation at guest-physical 0x30000000 (qualification 0x182) at rip 0x201234"
        );
        // An event it interrupted is queued again; nothing else is done to the vCPU.
        assert_eq!((vcpu.requeued, vcpu.skipped, vcpu.exceptions.len()), (1, 0, 0));
    }

    #[test]
    fn every_exit_hv_cannot_handle_crashes_the_domain_with_its_reason() {
        let other = CrashReason::Other as u32;
        let cases = [
            (
                Exit::EptMisconfiguration { guest_physical: 0x5000 },
                CrashReason::EptMisconfiguration as u32,
                49,
                0x5000,
                0,
            ),
            (Exit::TripleFault, CrashReason::TripleFault as u32, 2, 0, RIP),
            (Exit::Other { reason: 37, qualification: 4 }, other, u32::MAX, 0, RIP),
            (Exit::Exception { information: 0x80000b0e }, other, u32::MAX, 0, RIP),
            (Exit::EntryFailure { reason: 33, qualification: 0 }, other, u32::MAX, 0, RIP),
            (Exit::LaunchFailed { error: 7 }, other, u32::MAX, 0, RIP),
            (Exit::ControlRegister { qualification: 0x1f }, other, u32::MAX, 0, RIP),
        ];
        for (exit, reason, exit_reason, guest_physical, rip) in cases {
            let (mut domain, mut vcpu) = (domain(false), vcpu());
            assert!(!handle_exit(&mut domain, &mut vcpu, 0, exit), "{exit:?}");
            assert_eq!(domain.ended, Some(Ended::Crashed), "{exit:?}");
            let record = &domain.crash_record;
            assert_eq!(
                (record.reason, record.exit_reason, record.guest_physical, record.rip),
                (reason, exit_reason, guest_physical, rip),
                "{exit:?}"
            );
        }
        let (mut domain, mut vcpu) = (domain(false), vcpu());
        handle_exit(&mut domain, &mut vcpu, 0, Exit::Other { reason: 37, qualification: 4 });
        assert_eq!(crash_text(&domain), "unhandled VM exit reason 37 (qualification 0x4) at rip 0x201234");
    }

    #[test]
    fn a_control_register_access_the_vcpu_emulates_runs_on() {
        let (mut domain, mut vcpu) = (domain(false), vcpu());
        vcpu.emulates_control_registers = true;
        assert!(handle_exit(&mut domain, &mut vcpu, 0, Exit::ControlRegister { qualification: 0x18 }));
        assert_eq!(vcpu.control_registers, [0x18]);
        assert_eq!(domain.ended, None);
    }

    #[test]
    fn a_refused_port_read_floats_high_and_every_refusal_is_counted_but_few_logged() {
        for (size, mask) in [(1, 0xff), (2, 0xffff), (4, 0xffff_ffff)] {
            let (mut domain, mut vcpu) = (domain(false), vcpu());
            vcpu.rax = 0xaaaa_0000_0000_0000;
            let exit = Exit::Io { port: 0x60, size, input: true, string: false };
            assert!(handle_exit(&mut domain, &mut vcpu, 0, exit));
            assert_eq!(vcpu.rax, 0xaaaa_0000_0000_0000 | mask, "{size} bytes");
            assert_eq!(vcpu.skipped, 1);
        }
        assert_eq!(refusals()[0], "Warning: d1: refused I/O read from port 0x60 (1 bytes) at rip 0x201234");
        // A write and a string read leave RAX as it was.
        let (mut domain, mut vcpu) = (domain(false), vcpu());
        vcpu.rax = 0x12;
        for (input, string) in [(false, false), (true, true)] {
            assert!(handle_exit(&mut domain, &mut vcpu, 0, Exit::Io { port: 0x61, size: 1, input, string }));
        }
        assert_eq!((vcpu.rax, vcpu.skipped), (0x12, 2));
        for _ in 0..10 {
            handle_exit(&mut domain, &mut vcpu, 0, Exit::Io { port: 0x61, size: 1, input: false, string: false });
        }
        assert_eq!(domain.refusals_logged, 12);
        assert_eq!(refusals().len(), 3 + 8, "a domain's refusals are logged 8 times at most");
    }

    /// Linux's ACPI power-off: WAK_STS to the status port (ignored, as
    /// any write but S5 with SLP_EN to the control port), then 0x34 to the
    /// control port: the domain is shut down, powered off.
    #[test]
    fn a_write_of_s5_to_the_sleep_control_port_powers_a_guest_off() {
        let (mut domain, mut vcpu) = (domain(false), vcpu());
        let write = |port| Exit::Io { port, size: 1, input: false, string: false };
        for (port, value) in
            [(ACPI_SLEEP_STATUS_PORT, 0x80), (ACPI_SLEEP_CONTROL_PORT, 0x14), (ACPI_SLEEP_CONTROL_PORT, 0x30)]
        {
            vcpu.rax = value;
            assert!(handle_exit(&mut domain, &mut vcpu, 0, write(port)), "{port:#x} <- {value:#x}");
            assert_eq!(domain.ended, None);
        }
        vcpu.rax = 0xffff_ff34;
        assert!(!handle_exit(&mut domain, &mut vcpu, 0, write(ACPI_SLEEP_CONTROL_PORT)));
        assert_eq!(domain.ended, Some(Ended::Shutdown(abi::hypercall::ShutdownReason::PowerOff)));
        assert_eq!(vcpu.skipped, 4);
        // dom0's ports are its own: no power-off here.
        let mut dom0 = super::tests::domain(true);
        vcpu.rax = 0x34;
        handle_exit(&mut dom0, &mut vcpu, 0, write(ACPI_SLEEP_CONTROL_PORT));
        assert_eq!(dom0.ended, None);
    }

    #[test]
    fn the_pci_config_address_port_passes_through_for_the_privileged_domain_alone() {
        let access = |size, input| Exit::Io { port: PCI_CONFIG_ADDRESS, size, input, string: false };
        let (mut dom0, mut vcpu) = (domain(true), vcpu());
        vcpu.rax = 0xffff_ffff_8000_0810;
        assert!(handle_exit(&mut dom0, &mut vcpu, 0, access(4, false)));
        assert_eq!(machine::with(|m| m.pci_config_address), 0x8000_0810);
        vcpu.rax = 0;
        assert!(handle_exit(&mut dom0, &mut vcpu, 0, access(4, true)));
        assert_eq!((vcpu.rax, vcpu.skipped), (0x8000_0810, 2));
        assert!(refusals().is_empty());
        // Only as a doubleword: a byte access is refused like any port's.
        vcpu.rax = 0x42;
        handle_exit(&mut dom0, &mut vcpu, 0, access(1, false));
        // So is every access of another domain.
        let (mut guest, mut guest_vcpu) = (domain(false), vcpu);
        guest_vcpu.rax = 0x8000_1000;
        handle_exit(&mut guest, &mut guest_vcpu, 0, access(4, false));
        handle_exit(&mut guest, &mut guest_vcpu, 0, access(4, true));
        assert_eq!(machine::with(|m| m.pci_config_address), 0x8000_0810);
        assert_eq!(guest_vcpu.rax, 0xffff_ffff);
        assert_eq!(refusals().len(), 3);
    }

    #[test]
    fn writing_xens_hypercall_page_msr_fills_the_page_and_a_bad_address_gets_gp() {
        let (mut domain, mut vcpu) = (domain(false), vcpu());
        // EDX:EAX is the value; RAX's upper half is not part of it.
        (vcpu.rcx, vcpu.rdx, vcpu.rax) = (HYPERCALL_PAGE_MSR as u64, 0, 0xdead_0000_0000_2000);
        assert!(handle_exit(&mut domain, &mut vcpu, 0, Exit::MsrWrite));
        assert_eq!((vcpu.skipped, vcpu.exceptions.len()), (1, 0));
        let mut page = [0; 64];
        domain.read_guest(0x2000, &mut page).unwrap();
        let (stub0, stub1) = (hypercall_page_stub(0), hypercall_page_stub(1));
        assert_eq!((&page[..stub0.len()], &page[32..32 + stub1.len()]), (&stub0[..], &stub1[..]));
        for (rdx, rax) in [(0, 0x2001), (1, 0x2000)] {
            (vcpu.rdx, vcpu.rax) = (rdx, rax);
            assert!(handle_exit(&mut domain, &mut vcpu, 0, Exit::MsrWrite));
        }
        assert_eq!((vcpu.skipped, &vcpu.exceptions[..]), (1, &[GP, GP][..]));
        assert!(refusals()[1].contains("hypercall page at 0x100002000"), "{:?}", refusals());
    }

    #[test]
    fn efer_is_read_and_written_as_a_cpu_would_and_lme_enters_long_mode_with_paging() {
        let (mut domain, mut vcpu) = (domain(false), vcpu());
        let write = |domain: &mut Domain<Fake>, vcpu: &mut FakeVcpu, value: u64| {
            (vcpu.rcx, vcpu.rdx, vcpu.rax) = (u64::from(IA32_EFER), value >> 32, value & 0xffff_ffff);
            assert!(handle_exit(domain, vcpu, 0, Exit::MsrWrite));
        };
        // A PVH kernel at its entry: paging off, EFER 0. It sets LME.
        write(&mut domain, &mut vcpu, EFER_LME | EFER_NXE);
        assert_eq!((vcpu.efer, vcpu.skipped, vcpu.exceptions.len()), (EFER_LME | EFER_NXE, 1, 0));
        (vcpu.rcx, vcpu.rax, vcpu.rdx) = (u64::from(IA32_EFER), 0, 0xffff);
        assert!(handle_exit(&mut domain, &mut vcpu, 0, Exit::MsrRead));
        assert_eq!((vcpu.rax, vcpu.rdx, vcpu.skipped), (EFER_LME | EFER_NXE, 0, 2));
        // Paging on: the CPU set LMA. A write keeps it, and may not drop
        // LME; reserved bits are refused.
        (vcpu.cr0, vcpu.efer) = (CR0_PG | 1, EFER_LME | EFER_LMA | EFER_NXE);
        write(&mut domain, &mut vcpu, EFER_SCE | EFER_LME | EFER_NXE);
        assert_eq!(vcpu.efer, EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE);
        write(&mut domain, &mut vcpu, EFER_NXE);
        write(&mut domain, &mut vcpu, EFER_LME | 1 << 12);
        assert_eq!(vcpu.exceptions, [GP, GP]);
        assert_eq!(vcpu.efer, EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE, "unchanged by the refused writes");
        assert_eq!((vcpu.skipped, domain.ended), (3, None));
    }

    #[test]
    fn a_kernels_msrs_are_taken_as_a_cpu_takes_them_and_misc_enable_reads_fixed() {
        let (mut domain, mut vcpu) = (domain(false), vcpu());
        let access = |domain: &mut Domain<Fake>, vcpu: &mut FakeVcpu, exit, msr: u32, value: u64| {
            (vcpu.rcx, vcpu.rdx, vcpu.rax) = (u64::from(msr), value >> 32, value & 0xffff_ffff);
            let faults = vcpu.exceptions.len();
            assert!(handle_exit(domain, vcpu, 0, exit));
            (vcpu.exceptions.len() == faults).then_some(vcpu.rdx << 32 | vcpu.rax)
        };
        let good = [
            (0xc000_0081, 0x0023_0010_0000_0000u64),
            (0xc000_0082, 0xffff_ffff_8100_0000),
            (0xc000_0083, 0xffff_ffff_8100_1000),
            (0xc000_0084, 0x4_7700),
            (0xc000_0100, 0x7f00_0000_1000),
            (0xc000_0101, 0xffff_8880_0000_0000),
            (0xc000_0102, 0xffff_8880_0001_0000),
            (0xc000_0103, 3),
            (0x277, 0x0007_0406_0007_0106),
        ];
        for (msr, value) in good {
            assert!(access(&mut domain, &mut vcpu, Exit::MsrWrite, msr, value).is_some(), "{msr:#x}");
            assert_eq!(access(&mut domain, &mut vcpu, Exit::MsrRead, msr, 0), Some(value), "{msr:#x} reads back");
        }
        let bad = [
            (0xc000_0082, 0x0000_8000_0000_0000u64),
            (0xc000_0100, 0x8000_0000_0000_0000),
            (0xc000_0084, 1 << 32),
            (0xc000_0103, 1 << 40),
            (0x277, 0x0007_0406_0007_0206),
            (0x277, 0x0807_0406_0007_0406),
        ];
        for (msr, value) in bad {
            assert_eq!(access(&mut domain, &mut vcpu, Exit::MsrWrite, msr, value), None, "{msr:#x} {value:#x}");
        }
        assert_eq!(vcpu.msrs["Lstar"], 0xffff_ffff_8100_0000, "a refused write changes nothing");
        // A CPU without TSC_AUX: both accesses refused.
        vcpu.missing_msr = "TscAux".into();
        assert_eq!(access(&mut domain, &mut vcpu, Exit::MsrRead, 0xc000_0103, 0), None);
        assert_eq!(access(&mut domain, &mut vcpu, Exit::MsrWrite, 0xc000_0103, 1), None);
        assert_eq!(access(&mut domain, &mut vcpu, Exit::MsrRead, IA32_MISC_ENABLE, 0), Some(MISC_ENABLE_VALUE));
        assert_eq!(access(&mut domain, &mut vcpu, Exit::MsrWrite, IA32_MISC_ENABLE, MISC_ENABLE_VALUE), None);
        // The microcode revision, as Linux reads it: cleared, then 0.
        assert_eq!(access(&mut domain, &mut vcpu, Exit::MsrWrite, IA32_BIOS_SIGN_ID, 0), Some(0));
        assert_eq!(access(&mut domain, &mut vcpu, Exit::MsrRead, IA32_BIOS_SIGN_ID, 0xdead_beef_0000_1234), Some(0));
        assert_eq!(vcpu.skipped as usize, 2 * good.len() + 3, "each emulated access moves on, refusals do not");
        assert_eq!(vcpu.exceptions.len(), bad.len() + 3);
        assert!(vcpu.exceptions.iter().all(|&exception| exception == GP));
        assert_eq!(domain.ended, None);
    }

    #[test]
    fn other_msrs_and_rdpmc_get_gp_and_vmx_instructions_ud() {
        let (mut domain, mut vcpu) = (domain(false), vcpu());
        for (exit, rcx) in [(Exit::MsrRead, HYPERCALL_PAGE_MSR as u64), (Exit::MsrWrite, 0x10)] {
            vcpu.rcx = rcx;
            assert!(handle_exit(&mut domain, &mut vcpu, 0, exit));
        }
        assert!(handle_exit(&mut domain, &mut vcpu, 0, Exit::Rdpmc));
        assert!(handle_exit(&mut domain, &mut vcpu, 0, Exit::DebugRegister));
        assert_eq!(vcpu.exceptions, [GP; 4]);
        assert_eq!(refusals()[1], "Warning: d1: refused write of MSR 0x10 at rip 0x201234; injecting #GP");
        assert!(handle_exit(&mut domain, &mut vcpu, 0, Exit::VmxInstruction));
        assert_eq!(vcpu.exceptions[4], (6, None));
        assert_eq!((vcpu.skipped, domain.ended), (0, None));
    }

    #[test]
    fn a_guests_apic_msrs_reach_its_apic_and_dom0_keeps_refusing_them() {
        let access = |domain: &mut Domain<Fake>, vcpu: &mut FakeVcpu, index, exit, msr: u32, value: u64| {
            (vcpu.rcx, vcpu.rdx, vcpu.rax) = (u64::from(msr), value >> 32, value & 0xffff_ffff);
            let faults = vcpu.exceptions.len();
            assert!(handle_exit(domain, vcpu, index, exit));
            (vcpu.exceptions.len() == faults).then_some(vcpu.rdx << 32 | vcpu.rax)
        };
        let (mut guest, mut vcpu) = (domain(false), vcpu());
        guest.vcpu_count = 2;
        assert_eq!(access(&mut guest, &mut vcpu, 1, Exit::MsrRead, 0x802, 0), Some(1), "x2APIC id = vCPU");
        assert_eq!(access(&mut guest, &mut vcpu, 0, Exit::MsrRead, 0x1b, 0), Some(0xfee0_0d00), "BSP, x2APIC");
        // EDX:EAX is the value: a TPR with a high half is reserved.
        assert_eq!(access(&mut guest, &mut vcpu, 0, Exit::MsrWrite, 0x808, 0x20), Some(0x20));
        assert_eq!(access(&mut guest, &mut vcpu, 0, Exit::MsrRead, 0x808, 0), Some(0x20));
        assert_eq!(access(&mut guest, &mut vcpu, 0, Exit::MsrWrite, 0x808, 1 << 32 | 0x20), None);
        assert_eq!(access(&mut guest, &mut vcpu, 0, Exit::MsrWrite, 0x802, 5), None, "the id is read-only");
        assert_eq!(refusals()[1], "Warning: d1: refused write of 0x5 to APIC MSR 0x802 at rip 0x201234; injecting #GP");
        assert_eq!(vcpu.skipped, 4, "emulated accesses move on, refused ones do not");
        let mut dom0 = domain(true);
        assert_eq!(access(&mut dom0, &mut vcpu, 0, Exit::MsrRead, 0x802, 0), None);
        assert_eq!(access(&mut dom0, &mut vcpu, 0, Exit::MsrWrite, 0x1b, 0xfee0_0d00), None);
        assert_eq!(refusals()[3], "Warning: d0: refused write of MSR 0x1b at rip 0x201234; injecting #GP");
    }

    #[test]
    fn a_vcpu_with_an_apic_interrupt_ready_does_not_halt() {
        let (mut domain, mut vcpu) = (domain(false), vcpu());
        let write = |domain: &mut Domain<Fake>, vcpu: &mut FakeVcpu, msr: u64, value| {
            (vcpu.rcx, vcpu.rdx, vcpu.rax) = (msr, 0, value);
            assert!(handle_exit(domain, vcpu, 0, Exit::MsrWrite));
        };
        write(&mut domain, &mut vcpu, 0x80f, 0x1ff);
        write(&mut domain, &mut vcpu, 0x83f, 0x40);
        assert!(domain.vcpus[0].upcall_due, "the self IPI waits for injection");
        assert!(!handle_exit(&mut domain, &mut vcpu, 0, Exit::Halt));
        assert!(!domain.vcpus[0].blocked, "HLT ends at once: the interrupt is injected next");
    }

    #[test]
    fn hlt_blocks_the_vcpu_unless_an_event_waits() {
        let (mut domain, mut vcpu) = (domain(false), vcpu());
        assert!(!handle_exit(&mut domain, &mut vcpu, 0, Exit::Halt));
        assert!(domain.vcpus[0].blocked && domain.vcpus[0].reschedule);
        assert_eq!(vcpu.skipped, 1);
        // With port 1 pending on its event page it runs on at once.
        domain.vcpus[0].blocked = false;
        domain.event_page = domain.host_frame(0x2000, crate::paging::Access::READ).unwrap();
        domain.write_guest(0x2000, &2u64.to_le_bytes()).unwrap();
        handle_exit(&mut domain, &mut vcpu, 0, Exit::Halt);
        assert!(!domain.vcpus[0].blocked);
        assert_eq!(vcpu.skipped, 2);
    }

    #[test]
    fn a_kick_runs_on_and_a_device_interrupt_is_recorded_for_the_run_loop() {
        let (mut domain, mut vcpu) = (domain(false), vcpu());
        assert!(handle_exit(&mut domain, &mut vcpu, 0, Exit::ExternalInterrupt { vector: machine::KICK_VECTOR }));
        assert!(!handle_exit(&mut domain, &mut vcpu, 0, Exit::ExternalInterrupt { vector: 0x24 }));
        assert_eq!(machine::with(|m| (m.end_of_interrupts, m.device_vectors.clone())), (2, vec![0x24]));
        assert_eq!(vcpu.requeued, 2, "an interrupt may cut short an event's delivery");
    }

    #[test]
    fn the_vcpu_emulates_cpuid_xsetbv_and_cache_flushes_and_stops_interrupt_window_exits() {
        let (mut domain, mut vcpu) = (domain(false), vcpu());
        vcpu.interrupt_window_exiting = true;
        for exit in [Exit::Cpuid, Exit::Xsetbv, Exit::CacheFlush, Exit::InterruptWindow] {
            assert!(handle_exit(&mut domain, &mut vcpu, 0, exit), "{exit:?}");
        }
        assert_eq!((vcpu.cpuids, &vcpu.xsetbv[..]), (1, &[machine::XCR0_SUPPORTED][..]));
        assert_eq!((vcpu.skipped, vcpu.interrupt_window_exiting), (1, false));
        assert_eq!(vcpu.requeued, 1, "only the interrupt window is no instruction's exit");
        assert!(!handle_exit(&mut domain, &mut vcpu, 0, Exit::PreemptionTimer));
        assert_eq!(domain.ended, None);
    }

    #[test]
    fn an_nmi_is_no_fault_of_the_guest_and_is_logged_eight_times() {
        let (mut domain, mut vcpu) = (domain(false), vcpu());
        machine::with(|m| m.nmis_in_root = 3);
        for _ in 0..10 {
            assert!(handle_exit(&mut domain, &mut vcpu, 0, Exit::Nmi));
        }
        let log = machine::with(|m| m.log.clone());
        assert_eq!(log.len(), 8);
        assert_eq!(log[0], "Warning: NMI #1 while d1 ran (hv's; the domain runs on; 3 more while hv ran)");
        assert_eq!(domain.ended, None);
    }
}
