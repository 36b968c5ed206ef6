//! Hypercall numbers and the meaning of each call's arguments.
//!
//! See the crate documentation for the register convention. Arguments are
//! named `a0`..`a4` below for `rdi`, `rsi`, `rdx`, `r10`, `r8`.

/// The first of Mica's own hypercall numbers: they lie in the range
/// `xen::hypercall::MICA_HYPERCALL_BASE..=MICA_HYPERCALL_LAST`, clear of
/// every number Xen uses (since ABI 1.0; before, 0..=12).
pub const MICA_HYPERCALL_BASE: u64 = crate::xen::hypercall::MICA_HYPERCALL_BASE;

/// Mica's own hypercall numbers, passed in `rax`: `MICA_HYPERCALL_BASE`
/// plus the call's index (see [`Hypercall::index`]).
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hypercall {
    /// Returns [`crate::ABI_VERSION`]. No arguments. Any domain.
    Version = 0x1000,
    /// Writes bytes to the hypervisor's debug log (and its serial console).
    /// `a0`: guest-physical address of the bytes, `a1`: length in bytes, at
    /// most [`CONSOLE_WRITE_MAX`]. Returns the number of bytes accepted
    /// (all of them, including lines dropped by the rate limit). Any
    /// domain. Each line is logged as `(d<id>) <text>`, non-printable bytes
    /// as `?`, in a part of the log of its own, so guest text never evicts
    /// hv's lines and never passes for them (hv's lines start with `hv: `).
    /// Each domain may log 32 lines at once and 20 lines per second after
    /// that; the rest are dropped and counted, and the count is logged as
    /// `hv: d<id>: <count> lines suppressed (rate limit)` before its next
    /// line (since ABI 0.6).
    ConsoleWrite = 0x1001,
    /// Copies the most recent bytes of the hypervisor log into a buffer.
    /// `a0`: guest-physical address of the buffer, `a1`: its length. Returns
    /// the number of bytes copied (at most the log's capacity, 16 KiB).
    /// hv's own lines come first, then the guests' `ConsoleWrite` lines,
    /// each part starting at a whole line (since ABI 0.6; before, one
    /// stream). dom0 only.
    DmesgRead = 0x1002,
    /// Fills a [`crate::info::HvInfo`]. `a0`: guest-physical address of the
    /// structure, `a1`: the size the caller allocated. The hypervisor writes
    /// `min(a1, size_of::<HvInfo>())` bytes and returns the number written, so
    /// callers built against an older, shorter structure keep working.
    /// `a1` must be at least [`crate::info::HV_INFO_MIN_SIZE`]. Any domain.
    HvInfo = 0x1003,
    /// Fills a [`crate::info::DomainInfo`] for domain `a0`. `a1`: guest-physical
    /// address, `a2`: size allocated; sizes as for [`Hypercall::HvInfo`]. A
    /// domain may ask about itself; only dom0 may ask about others.
    DomainInfo = 0x1004,
    /// Does nothing and returns 0: the cheapest round trip, for benchmarks.
    Null = 0x1005,
    /// Platform control, dom0 only. `a0`: a [`PlatformOp`]. Does not return on
    /// success.
    Platform = 0x1006,
    /// Domain control, dom0 only. `a0`: a [`crate::domctl::DomCtlOp`], `a1`:
    /// the target domain (except for `Create`), `a2`..`a4`: as the operation
    /// says. Since ABI 0.2.
    DomCtl = 0x1007,
    /// Scheduling of the calling vCPU. `a0`: a [`SchedOp`], `a1`: its
    /// argument. Any domain. Since ABI 0.2.
    Sched = 0x1008,
    /// Event channels. `a0`: a [`crate::event::EventOp`], `a1`..`a3`: as the
    /// operation says. Any domain. Since ABI 0.2.
    Event = 0x1009,
    /// vCPU services. `a0`: a [`VcpuOp`], `a1`: its argument. Any domain.
    /// Since ABI 0.2.
    Vcpu = 0x100a,
    /// Grant tables. `a0`: a [`crate::grant::GrantOp`], `a1`..`a4`: as the
    /// operation says. Since ABI 0.3.
    Grant = 0x100b,
    /// Physical device access, dom0 only. `a0`: a
    /// [`crate::physdev::PhysdevOp`], `a1`, `a2`: as the operation says.
    /// Since ABI 0.5.
    Physdev = 0x100c,
}

/// Number of hypercall numbers defined by this ABI version (they are dense).
pub const HYPERCALL_COUNT: usize = 13;

/// Longest write accepted by [`Hypercall::ConsoleWrite`] in one call.
pub const CONSOLE_WRITE_MAX: u64 = 4096;

impl Hypercall {
    /// The call's place among Mica's own calls, `0..HYPERCALL_COUNT`.
    pub const fn index(self) -> usize {
        (self as u64 - MICA_HYPERCALL_BASE) as usize
    }

    /// Decodes a hypercall number from `rax`.
    pub const fn from_number(number: u64) -> Option<Hypercall> {
        if number < MICA_HYPERCALL_BASE {
            return None;
        }
        Some(match number - MICA_HYPERCALL_BASE {
            0 => Hypercall::Version,
            1 => Hypercall::ConsoleWrite,
            2 => Hypercall::DmesgRead,
            3 => Hypercall::HvInfo,
            4 => Hypercall::DomainInfo,
            5 => Hypercall::Null,
            6 => Hypercall::Platform,
            7 => Hypercall::DomCtl,
            8 => Hypercall::Sched,
            9 => Hypercall::Event,
            10 => Hypercall::Vcpu,
            11 => Hypercall::Grant,
            12 => Hypercall::Physdev,
            _ => return None,
        })
    }
}

/// Operations of [`Hypercall::Platform`].
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlatformOp {
    /// Turns the machine off (ACPI S5 where the firmware describes it).
    PowerOff = 0,
    /// Resets the machine.
    Reboot = 1,
}

impl PlatformOp {
    /// Decodes the operation argument.
    pub const fn from_number(number: u64) -> Option<PlatformOp> {
        match number {
            0 => Some(PlatformOp::PowerOff),
            1 => Some(PlatformOp::Reboot),
            _ => None,
        }
    }
}

/// Operations of [`Hypercall::Sched`].
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedOp {
    /// Gives up the rest of the calling vCPU's time slice. Returns 0.
    Yield = 0,
    /// Sleeps until an event channel of this domain is pending and unmasked
    /// or the vCPU timer fires; returns 0 at once if one already is. Events
    /// are delivered as usual (the upcall, if interrupts are enabled).
    /// Blocks the calling vCPU only, until a port that notifies it (see
    /// `event`) becomes pending and unmasked or its timer fires; returns at
    /// once if such a port is pending already (since 0.10 for vCPUs other
    /// than 0, which before looked only at their `upcall_pending_vcpu`
    /// word, and still return at once when it is set).
    Block = 1,
    /// Stops the domain (every vCPU) for good. `a1`: a [`ShutdownReason`].
    /// Does not return.
    Shutdown = 2,
}

impl SchedOp {
    /// Decodes the operation argument.
    pub const fn from_number(number: u64) -> Option<SchedOp> {
        match number {
            0 => Some(SchedOp::Yield),
            1 => Some(SchedOp::Block),
            2 => Some(SchedOp::Shutdown),
            _ => None,
        }
    }
}

/// Why a domain shut down (the argument of [`SchedOp::Shutdown`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownReason {
    /// The domain finished and wants to be turned off.
    PowerOff = 0,
    /// The domain wants to be restarted.
    Reboot = 1,
    /// The domain detected a fatal error in itself.
    Crash = 2,
}

impl ShutdownReason {
    /// Decodes the reason argument.
    pub const fn from_number(number: u64) -> Option<ShutdownReason> {
        match number {
            0 => Some(ShutdownReason::PowerOff),
            1 => Some(ShutdownReason::Reboot),
            2 => Some(ShutdownReason::Crash),
            _ => None,
        }
    }
}

/// Operations of [`Hypercall::Vcpu`].
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuOp {
    /// Arms the one-shot timer. `a1`: absolute TSC deadline; 0 cancels. When
    /// the TSC passes the deadline the timer virtual IRQ
    /// ([`crate::event::Virq::Timer`]) fires once and a blocked vCPU wakes.
    /// A deadline in the past fires at once. Each vCPU has its own timer:
    /// this arms the calling vCPU's, and its expiry wakes that vCPU.
    SetTimer = 0,
    /// Since 0.9: starts vCPU `a1` (1 to the domain's vCPU count minus one;
    /// vCPU 0 starts with the domain) from the [`crate::domctl::VcpuContext`]
    /// at guest-physical `a2` in the caller's memory: 64-bit mode, paging
    /// on with that CR3, the GDT given (with the layout of
    /// [`crate::domctl::INITIAL_GDT`]), interrupts off, every other
    /// register zero but RDI. Errors: `InvalidArgument` (no such vCPU, or
    /// a context that is not canonical or names a CR3 outside the domain's
    /// RAM), `Busy` (it is up), `BadAddress` (the context is not readable
    /// RAM), `OutOfMemory`.
    Up = 1,
    /// Since 0.9: takes vCPU `a1` down: it stops at once and loses its
    /// state (`Up` starts it again with a new context). A vCPU may take
    /// itself down (the call does not return). Errors: `InvalidArgument`
    /// (no such vCPU), `NotFound` (it is not up), `Busy` (it is the only
    /// vCPU up: the domain would stop; shut it down instead).
    Down = 2,
    /// Since 0.9: returns the calling vCPU's id (0 to the domain's vCPU
    /// count minus one).
    Id = 3,
}

/// Most vCPUs a domain may have (since 0.9).
pub const MAX_VCPUS: u32 = 8;

impl VcpuOp {
    /// Decodes the operation argument.
    pub const fn from_number(number: u64) -> Option<VcpuOp> {
        match number {
            0 => Some(VcpuOp::SetTimer),
            1 => Some(VcpuOp::Up),
            2 => Some(VcpuOp::Down),
            3 => Some(VcpuOp::Id),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_dense_above_the_base_and_round_trip() {
        for index in 0..HYPERCALL_COUNT {
            let call = Hypercall::from_number(MICA_HYPERCALL_BASE + index as u64).expect("dense numbering");
            assert_eq!((call as u64, call.index()), (MICA_HYPERCALL_BASE + index as u64, index));
            assert!(crate::xen::hypercall::is_mica_number(call as u64));
        }
        for outside in [0, 12, 17, MICA_HYPERCALL_BASE - 1, MICA_HYPERCALL_BASE + HYPERCALL_COUNT as u64, u64::MAX] {
            assert_eq!(Hypercall::from_number(outside), None, "{outside:#x}");
        }
    }
}
