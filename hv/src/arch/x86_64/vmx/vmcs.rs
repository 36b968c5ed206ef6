//! VMCS field encodings (SDM Vol. 3D Appendix B) and the VMREAD/VMWRITE wrappers.

use core::arch::asm;

/// A VMCS field, named as in SDM Vol. 3D Appendix B, grouped by width.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(dead_code, reason = "the full set of fields hv programs or may read")]
pub enum Field {
    // B.1.1 16-bit control fields
    VirtualProcessorId = 0x0000,
    // B.1.2 16-bit guest-state fields
    GuestEsSelector = 0x0800,
    GuestCsSelector = 0x0802,
    GuestSsSelector = 0x0804,
    GuestDsSelector = 0x0806,
    GuestFsSelector = 0x0808,
    GuestGsSelector = 0x080a,
    GuestLdtrSelector = 0x080c,
    GuestTrSelector = 0x080e,
    // B.1.3 16-bit host-state fields
    HostEsSelector = 0x0c00,
    HostCsSelector = 0x0c02,
    HostSsSelector = 0x0c04,
    HostDsSelector = 0x0c06,
    HostFsSelector = 0x0c08,
    HostGsSelector = 0x0c0a,
    HostTrSelector = 0x0c0c,
    // B.2.1 64-bit control fields
    IoBitmapA = 0x2000,
    IoBitmapB = 0x2002,
    MsrBitmap = 0x2004,
    EptPointer = 0x201a,
    // B.2.2 64-bit read-only data field
    GuestPhysicalAddress = 0x2400,
    // B.2.3 64-bit guest-state fields
    VmcsLinkPointer = 0x2800,
    GuestDebugControl = 0x2802,
    GuestPat = 0x2804,
    GuestEfer = 0x2806,
    // B.2.4 64-bit host-state fields
    HostPat = 0x2c00,
    HostEfer = 0x2c02,
    // B.3.1 32-bit control fields
    PinBasedControls = 0x4000,
    PrimaryProcessorControls = 0x4002,
    ExceptionBitmap = 0x4004,
    PageFaultErrorCodeMask = 0x4006,
    PageFaultErrorCodeMatch = 0x4008,
    Cr3TargetCount = 0x400a,
    ExitControls = 0x400c,
    ExitMsrStoreCount = 0x400e,
    ExitMsrLoadCount = 0x4010,
    EntryControls = 0x4012,
    EntryMsrLoadCount = 0x4014,
    EntryInterruptionInfo = 0x4016,
    EntryExceptionErrorCode = 0x4018,
    EntryInstructionLength = 0x401a,
    SecondaryProcessorControls = 0x401e,
    // B.3.2 32-bit read-only data fields
    InstructionError = 0x4400,
    ExitReason = 0x4402,
    ExitInterruptionInfo = 0x4404,
    ExitInterruptionErrorCode = 0x4406,
    IdtVectoringInfo = 0x4408,
    IdtVectoringErrorCode = 0x440a,
    ExitInstructionLength = 0x440c,
    ExitInstructionInfo = 0x440e,
    // B.3.3 32-bit guest-state fields
    GuestEsLimit = 0x4800,
    GuestCsLimit = 0x4802,
    GuestSsLimit = 0x4804,
    GuestDsLimit = 0x4806,
    GuestFsLimit = 0x4808,
    GuestGsLimit = 0x480a,
    GuestLdtrLimit = 0x480c,
    GuestTrLimit = 0x480e,
    GuestGdtrLimit = 0x4810,
    GuestIdtrLimit = 0x4812,
    GuestEsAccessRights = 0x4814,
    GuestCsAccessRights = 0x4816,
    GuestSsAccessRights = 0x4818,
    GuestDsAccessRights = 0x481a,
    GuestFsAccessRights = 0x481c,
    GuestGsAccessRights = 0x481e,
    GuestLdtrAccessRights = 0x4820,
    GuestTrAccessRights = 0x4822,
    GuestInterruptibility = 0x4824,
    GuestActivityState = 0x4826,
    GuestSysenterCs = 0x482a,
    PreemptionTimerValue = 0x482e,
    // B.3.4 32-bit host-state field
    HostSysenterCs = 0x4c00,
    // B.4.1 natural-width control fields
    Cr0GuestHostMask = 0x6000,
    Cr4GuestHostMask = 0x6002,
    Cr0ReadShadow = 0x6004,
    Cr4ReadShadow = 0x6006,
    // B.4.2 natural-width read-only data fields
    ExitQualification = 0x6400,
    GuestLinearAddress = 0x640a,
    // B.4.3 natural-width guest-state fields
    GuestCr0 = 0x6800,
    GuestCr3 = 0x6802,
    GuestCr4 = 0x6804,
    GuestEsBase = 0x6806,
    GuestCsBase = 0x6808,
    GuestSsBase = 0x680a,
    GuestDsBase = 0x680c,
    GuestFsBase = 0x680e,
    GuestGsBase = 0x6810,
    GuestLdtrBase = 0x6812,
    GuestTrBase = 0x6814,
    GuestGdtrBase = 0x6816,
    GuestIdtrBase = 0x6818,
    GuestDr7 = 0x681a,
    GuestRsp = 0x681c,
    GuestRip = 0x681e,
    GuestRflags = 0x6820,
    GuestPendingDebugExceptions = 0x6822,
    GuestSysenterEsp = 0x6824,
    GuestSysenterEip = 0x6826,
    // B.4.4 natural-width host-state fields
    HostCr0 = 0x6c00,
    HostCr3 = 0x6c02,
    HostCr4 = 0x6c04,
    HostFsBase = 0x6c06,
    HostGsBase = 0x6c08,
    HostTrBase = 0x6c0a,
    HostGdtrBase = 0x6c0c,
    HostIdtrBase = 0x6c0e,
    HostSysenterEsp = 0x6c10,
    HostSysenterEip = 0x6c12,
    HostRsp = 0x6c14,
    HostRip = 0x6c16,
}

/// Reads a field of the current VMCS.
///
/// Only called while a VMCS is current on this CPU (after `vmptrld`), which
/// the `Vcpu` type guarantees; with no current VMCS VMREAD fails and this
/// returns 0 rather than faulting.
#[inline(always)]
pub fn read(field: Field) -> u64 {
    let value: u64;
    // SAFETY: VMREAD only reads the current VMCS into a register; hv runs in
    // VMX root mode once VMX is on, which is when this module is used.
    unsafe {
        asm!("vmread {value}, {field}", field = in(reg) field as u64, value = out(reg) value, options(nostack, nomem));
    }
    value
}

/// Writes a field of the current VMCS. Failures (an unsupported field) are
/// reported by VM entry checks, so the flags are not inspected here.
#[inline(always)]
pub fn write(field: Field, value: u64) {
    // SAFETY: VMWRITE changes only the current VMCS, which belongs to the
    // vCPU being set up or run on this CPU.
    unsafe {
        asm!("vmwrite {field}, {value}", field = in(reg) field as u64, value = in(reg) value, options(nostack, nomem));
    }
}
