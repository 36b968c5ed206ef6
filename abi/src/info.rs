//! Information structures filled by [`crate::Hypercall::HvInfo`] and
//! [`crate::Hypercall::DomainInfo`].
//!
//! Both are versioned by size: the caller passes the size it allocated and
//! the hypervisor fills that many bytes. New fields are only ever added at
//! the end, so an older caller reads a valid prefix.

use core::mem::{offset_of, size_of};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Feature bits in [`HvInfo::features`]: the hardware virtualization features
/// the hypervisor found and uses.
pub mod feature {
    /// Extended page tables (SDM 29.3): the domains' memory is partitioned by EPT.
    pub const EPT: u64 = 1 << 0;
    /// Virtual-processor identifiers (SDM 29.1): TLB entries tagged per vCPU.
    pub const VPID: u64 = 1 << 1;
    /// Unrestricted guest (SDM 26.6): guests may run unpaged or in real mode.
    pub const UNRESTRICTED_GUEST: u64 = 1 << 2;
    /// VMX-preemption timer (SDM 26.5.1): bounds how long a guest runs.
    pub const PREEMPTION_TIMER: u64 = 1 << 3;
    /// I/O bitmaps (SDM 25.6.4): per-port pass-through for dom0's devices.
    pub const IO_BITMAPS: u64 = 1 << 4;
    /// MSR bitmaps (SDM 25.6.9): per-MSR pass-through.
    pub const MSR_BITMAPS: u64 = 1 << 5;
    /// EPT accessed and dirty flags (SDM 29.3.5).
    pub const EPT_ACCESSED_DIRTY: u64 = 1 << 6;
    /// 2 MiB EPT pages.
    pub const EPT_2M_PAGES: u64 = 1 << 7;

    /// Names of the bits, lowest first, for display.
    pub const NAMES: [(u64, &str); 8] = [
        (EPT, "ept"),
        (VPID, "vpid"),
        (UNRESTRICTED_GUEST, "unrestricted-guest"),
        (PREEMPTION_TIMER, "preemption-timer"),
        (IO_BITMAPS, "io-bitmaps"),
        (MSR_BITMAPS, "msr-bitmaps"),
        (EPT_ACCESSED_DIRTY, "ept-ad"),
        (EPT_2M_PAGES, "ept-2m"),
    ];
}

/// Whole-hypervisor information. Written by hv, read by any domain.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct HvInfo {
    /// [`crate::ABI_VERSION`] of the running hypervisor.
    pub abi_version: u32,
    /// Number of domains that exist (any state).
    pub domain_count: u32,
    /// [`feature`] bits in use.
    pub features: u64,
    /// Physical memory managed by the hypervisor's frame allocator, in pages.
    pub total_pages: u64,
    /// Pages free in the frame allocator right now.
    pub free_pages: u64,
    /// Pages used by the hypervisor itself (its image, tables, per-CPU data).
    pub hv_pages: u64,
    /// Time-stamp counter frequency in kHz, 0 if unknown.
    pub tsc_khz: u64,
    /// TSC value when the hypervisor started.
    pub boot_tsc: u64,
    /// Number of physical CPUs running the hypervisor, written by hv: the
    /// boot CPU and every application processor hv started that reached
    /// VMX root operation (1 to 64). The CPUs are those the ACPI MADT lists
    /// as enabled or online-capable, at most `maxcpus=N` of them (hv's
    /// command line). Since 0.7 this counts every such CPU, even those
    /// that run no domain yet (which idle in VMX root); before it was
    /// always 1. Constant after boot.
    pub cpu_count: u32,
    /// Reserved, zero.
    pub _reserved0: u32,
    /// Hypervisor version string, NUL-padded UTF-8 (for example `0.1.0`).
    pub hv_version: [u8; 16],
    /// Since 0.7: the CPUs `cpu_count` counts (at most [`HV_INFO_CPUS`]),
    /// written by hv. Since 0.8 each sits at its CPU index (entry 0 is the
    /// boot CPU; the index is the one affinity masks and
    /// `domctl::VcpuInfo::cpu` use), so a CPU that failed to start leaves
    /// a zero (`cpu_state::NONE`) entry; other entries are zero too. A
    /// caller passing the 0.6 size (80 bytes) does not get them.
    pub cpus: [CpuInfo; HV_INFO_CPUS],
}

/// How many CPUs [`HvInfo::cpus`] describes one by one.
pub const HV_INFO_CPUS: usize = 16;

/// One physical CPU in [`HvInfo::cpus`] (8 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CpuInfo {
    /// The CPU's local APIC id (from the ACPI MADT; 0 in an unused entry).
    pub apic_id: u32,
    /// One of [`cpu_state`]; [`cpu_state::NONE`] in an unused entry.
    pub state: u32,
}

/// Values of [`CpuInfo::state`].
pub mod cpu_state {
    /// No CPU in this entry.
    pub const NONE: u32 = 0;
    /// Runs domains from its run queue (every CPU once hv
    /// has started dom0).
    pub const RUNNING_DOMAINS: u32 = 1;
    /// Started, in VMX root operation, waiting for hv to start running
    /// domains (only during boot).
    pub const VMX_ROOT_IDLE: u32 = 2;

    /// A short name for `state`, as dom0's `info` prints it.
    pub fn name(state: u32) -> &'static str {
        match state {
            RUNNING_DOMAINS => "running domains",
            VMX_ROOT_IDLE => "vmx-root idle",
            NONE => "none",
            _ => "unknown",
        }
    }
}

const _: () = assert!(size_of::<CpuInfo>() == 8);
const _: () = assert!(offset_of!(CpuInfo, apic_id) == 0);
const _: () = assert!(offset_of!(CpuInfo, state) == 4);

/// The smallest size a caller may pass for [`HvInfo`] (ABI 0.1 layout,
/// up to `hv_version`).
pub const HV_INFO_MIN_SIZE: u64 = 80;

const _: () = assert!(size_of::<HvInfo>() == 208);
const _: () = assert!(offset_of!(HvInfo, cpus) == 80);
const _: () = assert!(offset_of!(HvInfo, abi_version) == 0);
const _: () = assert!(offset_of!(HvInfo, domain_count) == 4);
const _: () = assert!(offset_of!(HvInfo, features) == 8);
const _: () = assert!(offset_of!(HvInfo, total_pages) == 16);
const _: () = assert!(offset_of!(HvInfo, free_pages) == 24);
const _: () = assert!(offset_of!(HvInfo, hv_pages) == 32);
const _: () = assert!(offset_of!(HvInfo, tsc_khz) == 40);
const _: () = assert!(offset_of!(HvInfo, boot_tsc) == 48);
const _: () = assert!(offset_of!(HvInfo, cpu_count) == 56);
const _: () = assert!(offset_of!(HvInfo, hv_version) == 64);

/// Number of exit-reason counters in [`DomainInfo::exit_counts`]: VMX basic
/// exit reasons 0..=78 (SDM Appendix C); index 79 counts any higher reason.
pub const EXIT_REASON_SLOTS: usize = 80;

/// State of a domain, in [`DomainInfo::state`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomainState {
    /// Runnable or running.
    Running = 0,
    /// Waiting for an event (halted or blocked).
    Blocked = 1,
    /// Paused by dom0.
    Paused = 2,
    /// Stopped by the hypervisor because it misbehaved; why is in
    /// [`DomainInfo::crash`] (since ABI 0.6; before, only in the hv log).
    Crashed = 3,
    /// Shut itself down.
    Shutdown = 4,
}

impl DomainState {
    /// Decodes the state field.
    pub const fn from_number(number: u32) -> Option<DomainState> {
        Some(match number {
            0 => DomainState::Running,
            1 => DomainState::Blocked,
            2 => DomainState::Paused,
            3 => DomainState::Crashed,
            4 => DomainState::Shutdown,
            _ => return None,
        })
    }

    /// Short name, as `xl list` would show it.
    pub const fn name(self) -> &'static str {
        match self {
            DomainState::Running => "running",
            DomainState::Blocked => "blocked",
            DomainState::Paused => "paused",
            DomainState::Crashed => "crashed",
            DomainState::Shutdown => "shutdown",
        }
    }
}

/// Why hv stopped a domain, in [`CrashRecord::reason`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashReason {
    /// The domain has not crashed.
    None = 0,
    /// It accessed guest-physical memory it does not have, or not in the
    /// way it may (EPT violation, SDM 28.3.3.2): `guest_physical`, `rip`
    /// and `qualification` (the exit qualification, SDM Table 28-7) are set.
    EptViolation = 1,
    /// Its EPT entry was malformed (an hv bug): `guest_physical` is set.
    EptMisconfiguration = 2,
    /// Its vCPU triple-faulted: `rip` is set.
    TripleFault = 3,
    /// Anything else hv could not let it go on after (an unexpected exit or
    /// exception, a refused control-register access, a failed VM entry):
    /// `text` says which, with its numbers.
    Other = 4,
}

impl CrashReason {
    /// Decodes the reason field; unknown values (from a newer hv) give `None`.
    pub const fn from_number(number: u32) -> Option<CrashReason> {
        Some(match number {
            0 => CrashReason::None,
            1 => CrashReason::EptViolation,
            2 => CrashReason::EptMisconfiguration,
            3 => CrashReason::TripleFault,
            4 => CrashReason::Other,
            _ => return None,
        })
    }
}

/// Bytes of [`CrashRecord::text`].
pub const CRASH_TEXT_BYTES: usize = 96;

/// Why hv stopped a domain: written by hv alone, when it marks the domain
/// crashed, and never changed after; all zero while the domain has not
/// crashed (and when it shut itself down). Nothing a guest writes (its
/// console, `ConsoleWrite` text) ever reaches it, so dom0 reports a crash
/// from this record, never from log text. Since ABI 0.6.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CrashRecord {
    /// A [`CrashReason`] value.
    pub reason: u32,
    /// VMX basic exit reason of the exit that ended the domain (SDM
    /// Appendix C), or `u32::MAX` when none applies.
    pub exit_reason: u32,
    /// Guest-physical address involved (EPT violation or
    /// misconfiguration), else 0.
    pub guest_physical: u64,
    /// Guest RIP at the exit, else 0.
    pub rip: u64,
    /// Exit qualification of the exit, else 0.
    pub qualification: u64,
    /// hv's one-line description, printable ASCII (0x20..=0x7e), NUL-padded
    /// and cut at [`CRASH_TEXT_BYTES`], for example `EPT violation at
    /// guest-physical 0x30000000 (qualification 0x182) at rip 0x200123`.
    pub text: [u8; CRASH_TEXT_BYTES],
}

impl CrashRecord {
    /// The record of a domain that has not crashed.
    pub const NONE: CrashRecord = CrashRecord {
        reason: CrashReason::None as u32,
        exit_reason: 0,
        guest_physical: 0,
        rip: 0,
        qualification: 0,
        text: [0; CRASH_TEXT_BYTES],
    };

    /// The text, up to its first NUL.
    pub fn text_bytes(&self) -> &[u8] {
        let length = self.text.iter().position(|&byte| byte == 0).unwrap_or(CRASH_TEXT_BYTES);
        &self.text[..length]
    }
}

impl Default for CrashRecord {
    fn default() -> Self {
        Self::NONE
    }
}

const _: () = assert!(size_of::<CrashRecord>() == 32 + CRASH_TEXT_BYTES);
const _: () = assert!(offset_of!(CrashRecord, reason) == 0);
const _: () = assert!(offset_of!(CrashRecord, exit_reason) == 4);
const _: () = assert!(offset_of!(CrashRecord, guest_physical) == 8);
const _: () = assert!(offset_of!(CrashRecord, rip) == 16);
const _: () = assert!(offset_of!(CrashRecord, qualification) == 24);
const _: () = assert!(offset_of!(CrashRecord, text) == 32);

/// Per-domain information. Written by hv.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct DomainInfo {
    /// The domain's id.
    pub domain_id: u32,
    /// A [`DomainState`] value.
    pub state: u32,
    /// Pages the domain owns now.
    pub current_pages: u64,
    /// Most pages the domain may own.
    pub max_pages: u64,
    /// Number of vCPUs.
    pub vcpu_count: u32,
    /// Reserved, zero.
    pub _reserved0: u32,
    /// TSC ticks the domain's vCPUs have been scheduled, including the time
    /// hv spent handling their exits.
    pub cpu_time_tsc: u64,
    /// Total VM exits of this domain.
    pub exit_total: u64,
    /// VM exits by VMX basic exit reason, see [`EXIT_REASON_SLOTS`].
    pub exit_counts: [u64; EXIT_REASON_SLOTS],
    /// Scheduling weight (since ABI 0.2).
    pub weight: u32,
    /// Scheduling cap in percent of a CPU, 0 = none (since ABI 0.2).
    pub cap: u32,
    /// A [`crate::hypercall::ShutdownReason`] when `state` is Shutdown
    /// (since ABI 0.2).
    pub shutdown_reason: u32,
    /// Reserved, zero.
    pub _reserved1: u32,
    /// Why hv stopped the domain when `state` is Crashed; all zero
    /// otherwise (since ABI 0.6; a caller passing the 0.5 size does not get
    /// it).
    pub crash: CrashRecord,
}

impl Default for DomainInfo {
    fn default() -> Self {
        DomainInfo {
            domain_id: 0,
            state: 0,
            current_pages: 0,
            max_pages: 0,
            vcpu_count: 0,
            _reserved0: 0,
            cpu_time_tsc: 0,
            exit_total: 0,
            exit_counts: [0; EXIT_REASON_SLOTS],
            weight: 0,
            cap: 0,
            shutdown_reason: 0,
            _reserved1: 0,
            crash: CrashRecord::NONE,
        }
    }
}

/// The smallest size a caller may pass for [`DomainInfo`] (the ABI 0.1
/// layout, which ends after `exit_counts`).
pub const DOMAIN_INFO_MIN_SIZE: u64 = offset_of!(DomainInfo, weight) as u64;

const _: () = assert!(size_of::<DomainInfo>() == 48 + 8 * EXIT_REASON_SLOTS + 16 + size_of::<CrashRecord>());
const _: () = assert!(offset_of!(DomainInfo, crash) == 64 + 8 * EXIT_REASON_SLOTS);
const _: () = assert!(offset_of!(DomainInfo, weight) == 48 + 8 * EXIT_REASON_SLOTS);
const _: () = assert!(offset_of!(DomainInfo, cap) == 52 + 8 * EXIT_REASON_SLOTS);
const _: () = assert!(offset_of!(DomainInfo, shutdown_reason) == 56 + 8 * EXIT_REASON_SLOTS);
const _: () = assert!(offset_of!(DomainInfo, domain_id) == 0);
const _: () = assert!(offset_of!(DomainInfo, state) == 4);
const _: () = assert!(offset_of!(DomainInfo, current_pages) == 8);
const _: () = assert!(offset_of!(DomainInfo, max_pages) == 16);
const _: () = assert!(offset_of!(DomainInfo, vcpu_count) == 24);
const _: () = assert!(offset_of!(DomainInfo, cpu_time_tsc) == 32);
const _: () = assert!(offset_of!(DomainInfo, exit_total) == 40);
const _: () = assert!(offset_of!(DomainInfo, exit_counts) == 48);

/// Name of a VMX basic exit reason (SDM Appendix C), or `None` if unnamed.
pub const fn exit_reason_name(reason: usize) -> Option<&'static str> {
    Some(match reason {
        0 => "exception-or-nmi",
        1 => "external-interrupt",
        2 => "triple-fault",
        3 => "init",
        4 => "sipi",
        7 => "interrupt-window",
        8 => "nmi-window",
        9 => "task-switch",
        10 => "cpuid",
        11 => "getsec",
        12 => "hlt",
        13 => "invd",
        14 => "invlpg",
        15 => "rdpmc",
        16 => "rdtsc",
        17 => "rsm",
        18 => "vmcall",
        19..=27 => "vmx-instruction",
        28 => "cr-access",
        29 => "dr-access",
        30 => "io-instruction",
        31 => "rdmsr",
        32 => "wrmsr",
        33 => "entry-fail-guest-state",
        34 => "entry-fail-msr-load",
        36 => "mwait",
        37 => "monitor-trap-flag",
        39 => "monitor",
        40 => "pause",
        41 => "entry-fail-machine-check",
        43 => "tpr-below-threshold",
        44 => "apic-access",
        45 => "virtualized-eoi",
        46 => "gdtr-idtr-access",
        47 => "ldtr-tr-access",
        48 => "ept-violation",
        49 => "ept-misconfig",
        50 => "invept",
        51 => "rdtscp",
        52 => "preemption-timer",
        53 => "invvpid",
        54 => "wbinvd",
        55 => "xsetbv",
        56 => "apic-write",
        57 => "rdrand",
        58 => "invpcid",
        59 => "vmfunc",
        61 => "rdseed",
        63 => "xsaves",
        64 => "xrstors",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip() {
        for n in 0..5 {
            assert_eq!(DomainState::from_number(n).unwrap() as u32, n);
        }
        assert_eq!(DomainState::from_number(5), None);
    }

    #[test]
    fn crash_reasons_round_trip_and_text_stops_at_nul() {
        for n in 0..5 {
            assert_eq!(CrashReason::from_number(n).unwrap() as u32, n);
        }
        assert_eq!(CrashReason::from_number(5), None);
        let mut record = CrashRecord::NONE;
        assert_eq!(record.text_bytes(), b"");
        record.text[..4].copy_from_slice(b"oops");
        assert_eq!(record.text_bytes(), b"oops");
        record.text = [b'x'; CRASH_TEXT_BYTES];
        assert_eq!(record.text_bytes().len(), CRASH_TEXT_BYTES);
    }

    #[test]
    fn common_exit_reasons_are_named() {
        assert_eq!(exit_reason_name(18), Some("vmcall"));
        assert_eq!(exit_reason_name(10), Some("cpuid"));
        assert_eq!(exit_reason_name(48), Some("ept-violation"));
        assert_eq!(exit_reason_name(EXIT_REASON_SLOTS), None);
    }
}
