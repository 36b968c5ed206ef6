//! `sched_op` ([`super::Hypercall::SchedOp`]): yielding, blocking, polling
//! and shutting down.
//!
//! `rdi` is a [`SchedOp`], `rsi` the address of its argument (or 0).

use core::mem::{offset_of, size_of};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{DomId, numbered_enum};

numbered_enum! {
    /// Scheduling operations (`SCHEDOP_*`), in `rdi`. Mica offers those
    /// whose documentation does not say otherwise; the rest return
    /// `-ENOSYS`.
    pub enum SchedOp: u32 {
        /// Gives up the CPU; the vCPU stays runnable. No argument.
        /// Returns 0.
        Yield = 0,
        /// Blocks the calling vCPU until an event is pending for it
        /// (`evtchn_upcall_pending` set). No argument. Returns 0 at once
        /// if one already is. (Linux PVH idles with `hlt` instead.)
        Block = 1,
        /// Shuts the calling domain down ([`SchedShutdown`]); does not
        /// return, except for [`ShutdownReason::Suspend`] (returns 0 after
        /// a resume; not offered by Mica: `-EINVAL`). Errors: `-EINVAL`
        /// an unknown reason.
        Shutdown = 2,
        /// Blocks until one of the given ports is pending, masked or not,
        /// or the timeout (system time, ns; 0 none) passes
        /// ([`SchedPoll`]): at once if one already is. Returns 0 either
        /// way; another event for the vCPU may also end it (the caller
        /// looks again). Errors: `-EINVAL` more than 128 ports, or a port
        /// beyond the table (256 in Mica); `-EFAULT` an unreadable array.
        Poll = 3,
        /// Shuts another domain down ([`SchedRemoteShutdown`]; control
        /// domain). Not offered.
        RemoteShutdown = 4,
        /// Records the reason for a later shutdown ([`SchedShutdown`]);
        /// the crash path uses it. Returns 0.
        ShutdownCode = 5,
        /// A domain watchdog ([`SchedWatchdog`]). Not offered.
        Watchdog = 6,
        /// Temporarily pins the vCPU to a physical CPU (control domain).
        /// Not offered.
        PinOverride = 7,
    }
}

numbered_enum! {
    /// Why a domain shut down (`SHUTDOWN_*`), in [`SchedShutdown::reason`].
    pub enum ShutdownReason: u32 {
        /// Stopped normally; its resources are released.
        Poweroff = 0,
        /// Restart it.
        Reboot = 1,
        /// Save its state for a later resume.
        Suspend = 2,
        /// It crashed.
        Crash = 3,
        /// Restart it: its watchdog expired.
        Watchdog = 4,
        /// Reset its state without a full restart (kexec).
        SoftReset = 5,
    }
}

/// Argument of [`SchedOp::Shutdown`] and [`SchedOp::ShutdownCode`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SchedShutdown {
    /// A [`ShutdownReason`] number.
    pub reason: u32,
}

const _: () = assert!(size_of::<SchedShutdown>() == 4);

/// Argument of [`SchedOp::Poll`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SchedPoll {
    /// Guest-virtual address of an array of `nr_ports` 32-bit ports.
    pub ports: u64,
    /// How many ports (at most [`SCHED_POLL_MAX_PORTS`]).
    pub nr_ports: u32,
    /// Padding (implicit in C), zero.
    pub _pad0: u32,
    /// Absolute system time (ns) to give up at; 0 for no timeout.
    pub timeout: u64,
}

const _: () = assert!(size_of::<SchedPoll>() == 24);
const _: () = assert!(offset_of!(SchedPoll, ports) == 0);
const _: () = assert!(offset_of!(SchedPoll, nr_ports) == 8);
const _: () = assert!(offset_of!(SchedPoll, timeout) == 16);

/// Most ports one [`SchedOp::Poll`] accepts.
pub const SCHED_POLL_MAX_PORTS: u32 = 128;

/// Argument of [`SchedOp::RemoteShutdown`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SchedRemoteShutdown {
    /// The domain to shut down.
    pub domain_id: DomId,
    /// Padding (implicit in C), zero.
    pub _pad0: u16,
    /// A [`ShutdownReason`] number.
    pub reason: u32,
}

const _: () = assert!(size_of::<SchedRemoteShutdown>() == 8);
const _: () = assert!(offset_of!(SchedRemoteShutdown, domain_id) == 0);
const _: () = assert!(offset_of!(SchedRemoteShutdown, reason) == 4);

/// Argument of [`SchedOp::Watchdog`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SchedWatchdog {
    /// The watchdog's id (0 to create one).
    pub id: u32,
    /// Seconds until it fires (0 to destroy it).
    pub timeout: u32,
}

const _: () = assert!(size_of::<SchedWatchdog>() == 8);
const _: () = assert!(offset_of!(SchedWatchdog, timeout) == 4);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::test_support::check_numbered;

    #[test]
    fn numbers_match_xen() {
        check_numbered!(SchedOp, u32);
        check_numbered!(ShutdownReason, u32);
        assert_eq!(SchedOp::Poll.number(), 3);
        assert_eq!(SchedOp::PinOverride.number(), 7);
        assert_eq!(ShutdownReason::Crash.number(), 3);
        assert_eq!(ShutdownReason::from_number(6), None);
    }
}
