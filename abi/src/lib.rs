//! The Mica ABI: hypercall numbers and calling convention, error codes, the
//! CPUID interface and every structure shared between hv, dom0 and guests.
//!
//! This crate is the specification that guest PV drivers are written against.
//! [`xen`] restates the subset of Xen's guest ABI (PVH) that Mica is moving
//! to; hv does not implement it yet.
//! Every shared structure is `#[repr(C)]` with fixed-width fields and explicit
//! reserved padding, and its size and field offsets are asserted at compile
//! time, so a layout can never change by accident.
//!
//! # Versioning
//! [`ABI_VERSION`] is `major << 16 | minor`. A minor bump only adds: new
//! hypercalls, new fields at the end of a structure that is passed with its
//! size, new flag bits. A guest built against an older minor version of the
//! same major keeps working. A major bump breaks compatibility. The hypervisor
//! reports its version through [`hypercall::Hypercall::Version`] and CPUID leaf
//! [`cpuid::LEAF_VERSION`]. `CHANGELOG.md` in this crate lists every change.
//!
//! # Calling convention
//! A hypercall is the `vmcall` instruction with the hypercall number in `rax`
//! (Mica's own calls: [`hypercall::MICA_HYPERCALL_BASE`] and up; the
//! numbers below are Xen's, [`xen`]) and up to five arguments in `rdi`, `rsi`, `rdx`, `r10`, `r8`. The result is
//! returned in `rax`: a non-negative value is success (its meaning depends on
//! the call), a negative value is an [`Error`]. All other registers are
//! preserved. Pointer arguments are guest-physical addresses of the calling
//! domain; a buffer may cross page boundaries.
//!
//! Only a domain's kernel makes hypercalls: a `vmcall` from guest CPL > 0
//! (its user programs) does nothing and returns [`Error::Permission`] in
//! `rax`, whatever the number (since ABI 0.6). hv reads the CPL from the DPL
//! of SS. (Xen injects #UD instead; an error in `rax` lets the kernel's
//! user programs tell a refusal from a missing hypervisor without a fault.)
//!
//! # Processor state
//! The state a vCPU starts in (mode, registers, GDT, stack, paging, which
//! memory is RAM) is in [`start_info`]. Every vCPU has its own copy of the state a guest can change without an
//! exit: general registers, x87/SSE, CR2, IA32_KERNEL_GS_BASE (SWAPGS),
//! XCR0, the task priority CR8 and the debug registers. From ABI 0.6:
//! - CR8 is a per-vCPU value 0..=15 (a larger one gets #GP) that a vCPU
//!   reads back; it masks nothing. The event upcall ignores it (a guest
//!   masks upcalls with RFLAGS.IF or the event page's masks), and it never
//!   reaches the local APIC.
//! - XCR0: XSETBV accepts x87 (bit 0, required) and SSE (bit 1) only; CPUID
//!   leaf 0xD offers no more. Anything else, or XCR1, gets #GP.
//! - Debug registers: MOV to and from DR0-DR7 behave as on hardware,
//!   without exits (DR4/DR5 alias DR6/DR7 while CR4.DE is clear and give
//!   #UD while it is set). A vCPU starts with DR0-3 = 0, DR6 = 0xffff0ff0
//!   and DR7 = 0x400; its values, and breakpoints it arms, are its own:
//!   they are never seen by, and never fire in, another domain or hv.
//!   IA32_DEBUGCTL is not offered (an MSR, see below).
//! - RDMSR/WRMSR of every MSR hv does not switch gets #GP (guests: all of
//!   them; dom0 may use FS and GS base). RDPMC and setting CR4.PKE
//!   (protection keys) get #GP. WBINVD and INVD are no-ops (memory is
//!   write-back and DMA is coherent). VMX instructions get #UD (CPUID
//!   offers no VMX).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod block;
pub mod console;
pub mod cpuid;
pub mod domctl;
pub mod event;
pub mod grant;
pub mod hypercall;
pub mod info;
pub mod net;
pub mod physdev;
pub mod start_info;
pub mod store;
pub mod xen;

pub use hypercall::Hypercall;

/// Major version of the ABI. Changes only when compatibility breaks.
pub const ABI_VERSION_MAJOR: u16 = 1;
/// Minor version of the ABI. Changes when something is added.
pub const ABI_VERSION_MINOR: u16 = 0;
/// The ABI version as one word: `major << 16 | minor`.
pub const ABI_VERSION: u32 = (ABI_VERSION_MAJOR as u32) << 16 | ABI_VERSION_MINOR as u32;

/// Splits an ABI version word into `(major, minor)`.
pub const fn version_parts(version: u32) -> (u16, u16) {
    ((version >> 16) as u16, version as u16)
}

/// Identifier of a domain. Domain 0 is the privileged driver domain.
pub type DomainId = u32;

/// The id of the privileged driver domain.
pub const DOM0: DomainId = 0;

/// Errors returned by hypercalls, as negative values in `rax`.
///
/// `0` and positive values mean success. The numbering is stable across minor
/// versions; new codes are only added, so a guest may meet a negative code
/// its version of this crate does not define: [`Error::decode`] turns it
/// into [`Error::Unknown`].
#[repr(i64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The caller is not allowed to do this (for example a dom0-only call
    /// made by a guest).
    Permission = -1,
    /// An argument has a value outside its documented range.
    InvalidArgument = -2,
    /// A guest-physical buffer is not entirely inside the caller's memory.
    BadAddress = -3,
    /// The hypercall number is in Mica's range
    /// (`abi::xen::hypercall::MICA_HYPERCALL_BASE`..) but names no call.
    /// A number outside that range that Xen does not define gets Xen's
    /// `-ENOSYS` (-38) instead.
    NoSuchHypercall = -4,
    /// The hypervisor has no free memory for the request.
    OutOfMemory = -5,
    /// A buffer is too small for the smallest valid answer.
    BufferTooSmall = -6,
    /// The named object (domain, port, grant) does not exist.
    NotFound = -7,
    /// The object is in use or in a state that forbids the operation; retry
    /// later or change its state first.
    Busy = -8,
    /// The event channel's remote domain has ended (crashed, shut down or
    /// was destroyed): the port is `PortState::Closed` and only `Close` is
    /// left to do with it. Since ABI 0.6.
    Closed = -9,
    /// A negative code this version of the ABI does not define (a later
    /// hypervisor's): only [`Error::decode`] makes it, hv never returns it,
    /// and its [`Error::code`] is `i64::MIN`, which no hypercall returns.
    /// Treat it as a failure of unknown cause. Since ABI 1.0 (before, such
    /// a code decoded as `InvalidArgument`).
    Unknown = i64::MIN,
}

impl Error {
    /// Every code hv returns, for decoding and for tests ([`Error::Unknown`]
    /// is not one).
    pub const ALL: [Error; 9] = [
        Error::Permission,
        Error::InvalidArgument,
        Error::BadAddress,
        Error::NoSuchHypercall,
        Error::OutOfMemory,
        Error::BufferTooSmall,
        Error::NotFound,
        Error::Busy,
        Error::Closed,
    ];

    /// The value placed in `rax`.
    pub const fn code(self) -> i64 {
        self as i64
    }

    /// Decodes a hypercall result: `Ok(value)` when non-negative, else the
    /// error with that code, or [`Error::Unknown`] for a code not in
    /// [`Error::ALL`].
    #[inline]
    pub fn decode(raw: i64) -> Result<u64, Error> {
        if raw >= 0 {
            return Ok(raw as u64);
        }
        Err(Error::from_code(raw))
    }

    /// The error with (negative) code `code`, or [`Error::Unknown`].
    #[inline(never)]
    fn from_code(code: i64) -> Error {
        Error::ALL.iter().copied().find(|e| e.code() == code).unwrap_or(Error::Unknown)
    }

    /// A short lower-case description, for shells and logs.
    pub const fn describe(self) -> &'static str {
        match self {
            Error::Permission => "permission denied",
            Error::InvalidArgument => "invalid argument",
            Error::BadAddress => "bad guest address",
            Error::NoSuchHypercall => "no such hypercall",
            Error::OutOfMemory => "out of memory",
            Error::BufferTooSmall => "buffer too small",
            Error::NotFound => "not found",
            Error::Busy => "busy",
            Error::Closed => "channel closed: the peer domain is gone",
            Error::Unknown => "unknown error",
        }
    }
}

/// Size of a page, in bytes. All frame numbers in the ABI count these.
pub const PAGE_SIZE: u64 = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_round_trips() {
        assert_eq!(version_parts(ABI_VERSION), (ABI_VERSION_MAJOR, ABI_VERSION_MINOR));
    }

    #[test]
    fn errors_decode_to_themselves() {
        for e in Error::ALL {
            assert!(e.code() < 0);
            assert_eq!(Error::decode(e.code()), Err(e));
        }
        assert_eq!(Error::decode(0), Ok(0));
        assert_eq!(Error::decode(42), Ok(42));
        assert_eq!(Error::decode(i64::MAX), Ok(i64::MAX as u64));
    }

    #[test]
    fn unknown_codes_are_told_apart_from_known_ones() {
        // A later hypervisor's code, the first unused one, the far end.
        for raw in [-10, -1000, i64::MIN] {
            assert_eq!(Error::decode(raw), Err(Error::Unknown), "{raw}");
        }
        assert!(!Error::ALL.contains(&Error::Unknown));
        assert!(Error::ALL.iter().all(|e| e.code() != Error::Unknown.code() && e.describe() != "unknown error"));
        // It decodes to itself, like every other error.
        assert_eq!(Error::decode(Error::Unknown.code()), Err(Error::Unknown));
    }
}
