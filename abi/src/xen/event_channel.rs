//! Event channels, 2-level ABI (`event_channel_op`,
//! [`super::Hypercall::EventChannelOp`]): one-bit notifications between
//! domains, between a domain's vCPUs, and from the hypervisor (virtual
//! IRQs).
//!
//! `rdi` is an [`EvtchnOp`], `rsi` the address of that operation's
//! argument structure, which is read and (for the OUT fields) written
//! back. Each operation below lists the errors it returns besides
//! `-EFAULT` (argument not readable or writable) and `-ENOSYS`.
//!
//! # Ports and the 2-level bitmaps
//! A domain has ports 1..[`EVTCHN_2L_NR_CHANNELS`] (4096 on x86_64); port 0
//! is never allocated. Each port has a *pending* and a *mask* bit in the
//! shared-info page ([`super::shared_info::SharedInfo::evtchn_pending`],
//! `evtchn_mask`): port `p` is bit `p % 64` of word `p / 64`
//! ([`port_position`]). Each word `w` of the pending bitmap also has a
//! bit `w` in every vCPU's selector
//! ([`super::shared_info::VcpuInfo::evtchn_pending_sel`]), so a vCPU finds
//! its pending ports without scanning all 64 words. Every port notifies one
//! vCPU of its domain: vCPU 0 unless bound elsewhere (a virtual IRQ's or an
//! IPI's vCPU, or [`EvtchnOp::BindVcpu`]).
//!
//! FIFO event channels ([`EvtchnOp::InitControl`] and the operations after
//! it) are not offered: Mica fails `InitControl` with `-ENOSYS`, and Linux
//! then uses the 2-level ABI.
//!
//! # Delivering an event (hypervisor)
//! To make port `p` pending for vCPU `v`, the hypervisor:
//! 1. atomically sets the pending bit of `p`; if it was already set,
//!    nothing more happens (events do not count);
//! 2. if the mask bit of `p` is set, stops: the port stays pending and
//!    raises nothing until it is unmasked;
//! 3. atomically sets bit `p / 64` of `v`'s `evtchn_pending_sel`; if it was
//!    already set, stops (an upcall for that word is already due);
//! 4. sets `v`'s `evtchn_upcall_pending` to 1; if it was 0, raises the
//!    upcall: the vector the guest chose with `HVM_PARAM_CALLBACK_IRQ`
//!    ([`super::hvm::CallbackVia::Vector`]), injected when `v` has
//!    RFLAGS.IF set, and wakes `v` if it is blocked.
//!
//! # Taking events (guest upcall handler)
//! 1. Clear `evtchn_upcall_pending` (before reading the selector: an event
//!    that arrives after the clear raises a new upcall).
//! 2. Take the selector with an atomic exchange against 0.
//! 3. For each set bit `w`, take the ports that are pending and not masked
//!    in word `w`, clear each one's pending bit atomically, and handle it.
//!
//! Bits in the pending bitmap are set by the hypervisor on other CPUs at any
//! time, so every change the guest makes to it is an atomic bit operation.
//!
//! # Masking and unmasking
//! The guest sets and clears mask bits itself (atomically). Clearing the
//! mask of a port that is already pending raises no upcall by itself;
//! [`EvtchnOp::Unmask`] clears the mask and then repeats steps 3 and 4 above
//! if the port is pending. A guest therefore unmasks with the hypercall, or
//! clears the bit itself only after checking that the port is not pending
//! (as Linux does).
//!
//! # Blocking
//! `SCHEDOP_block` returns at once while the vCPU has
//! `evtchn_upcall_pending` set; `SCHEDOP_poll` waits for given ports.

use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{DomId, EvtchnPort, numbered_enum};

/// Ports of the 2-level ABI on x86_64: 64 words of 64 bits.
pub const EVTCHN_2L_NR_CHANNELS: u32 = 4096;

/// Where port `port` lives in the 2-level bitmaps: `(word, bit)`, the word
/// also being the bit of `evtchn_pending_sel`. `None` beyond the last port.
pub const fn port_position(port: EvtchnPort) -> Option<(usize, u32)> {
    if port >= EVTCHN_2L_NR_CHANNELS {
        return None;
    }
    Some(((port / 64) as usize, port % 64))
}

/// The port at bit `bit` (0..64) of word `word` (0..64) of the bitmaps.
pub const fn port_at(word: usize, bit: u32) -> EvtchnPort {
    word as u32 * 64 + bit
}

numbered_enum! {
    /// Event channel operations (`EVTCHNOP_*`), in `rdi`.
    pub enum EvtchnOp: u32 {
        /// Connects a new local port to a remote domain's port that is
        /// unbound for the caller ([`EvtchnBindInterdomain`]). Errors:
        /// `-ESRCH` no such remote domain; `-EINVAL` the remote port does
        /// not exist, or is not unbound for the caller; `-ENOSPC` no free
        /// local port. The remote port becomes connected too.
        BindInterdomain = 0,
        /// Binds a new port to a virtual IRQ of a vCPU
        /// ([`EvtchnBindVirq`]). Errors: `-EINVAL` unknown IRQ, or a
        /// non-zero vCPU for a domain-wide IRQ; `-ENOENT` no such vCPU;
        /// `-EEXIST` that IRQ of that vCPU is already bound; `-ENOSPC` no
        /// free port.
        BindVirq = 1,
        /// Binds a physical IRQ. Not offered to PVH guests (`-EPERM`).
        BindPirq = 2,
        /// Closes a port ([`EvtchnClose`]). A connected remote port becomes
        /// unbound for this domain again. Errors: `-EINVAL` the port is not
        /// allocated.
        Close = 3,
        /// Notifies through a port ([`EvtchnSend`]): the remote port of an
        /// interdomain channel, or the port itself for an IPI. On an
        /// unbound port it does nothing and succeeds. Errors: `-EINVAL` the
        /// port is not allocated, or is a virtual IRQ's.
        Send = 4,
        /// Reports a port's state ([`EvtchnStatus`]). Errors: `-ESRCH` no
        /// such domain; `-EPERM` another domain than the caller's (only a
        /// privileged domain may ask about others); `-EINVAL` a port
        /// number beyond the table.
        Status = 5,
        /// Allocates a port that one remote domain may connect to
        /// ([`EvtchnAllocUnbound`]) in domain `dom`'s table: the caller's
        /// own, or (dom0, the toolstack) a domain it builds, whose store
        /// and console ports dom0 allocates this way and then binds.
        /// Errors: `-EPERM` `dom` is not the caller (unprivileged);
        /// `-ESRCH` no such domain; `-ENOSPC` no free port.
        AllocUnbound = 6,
        /// Allocates a port whose sends notify a vCPU of the caller's own
        /// domain ([`EvtchnBindIpi`]). Errors: `-ENOENT` no such vCPU;
        /// `-ENOSPC` no free port.
        BindIpi = 7,
        /// Makes a port notify another vCPU ([`EvtchnBindVcpu`]). Errors:
        /// `-ENOENT` no such vCPU; `-EINVAL` the port is not allocated, or
        /// is an IPI or a per-vCPU virtual IRQ.
        BindVcpu = 8,
        /// Clears a port's mask bit and delivers it if pending
        /// ([`EvtchnUnmask`]). Errors: `-EINVAL` a port number beyond the
        /// table.
        Unmask = 9,
        /// Closes all of a domain's ports (kexec). Not offered by Mica
        /// (`-ENOSYS`).
        Reset = 10,
        /// FIFO ABI: registers a control block. Mica fails it with
        /// `-ENOSYS`, which makes Linux use the 2-level ABI.
        InitControl = 11,
        /// FIFO ABI: adds an event array page. Not offered (`-ENOSYS`).
        ExpandArray = 12,
        /// FIFO ABI: sets a port's priority. Not offered (`-ENOSYS`).
        SetPriority = 13,
    }
}

numbered_enum! {
    /// Virtual IRQs (`VIRQ_*`). "Per vCPU" ones are bound separately on
    /// each vCPU; the others belong to the domain and are bound on vCPU 0.
    pub enum Virq: u32 {
        /// Per vCPU: the vCPU's single-shot or periodic timer fired. The
        /// only virtual IRQ Linux cannot run without.
        Timer = 0,
        /// Per vCPU: the guest is asked to dump debug information.
        Debug = 1,
        /// Domain: bytes arrived on the emergency console (control domain).
        Console = 2,
        /// Domain: a domain crashed or shut down (control domain).
        DomExc = 3,
        /// Domain: trace buffer records are available.
        Tbuf = 4,
        /// Domain: a domain paused for a debugger.
        Debugger = 6,
        /// Per vCPU: a profiling sample is available.
        Xenoprof = 7,
        /// Domain: bytes arrived on the console ring.
        ConRing = 8,
        /// Domain: a physical CPU changed state.
        PcpuState = 9,
        /// Domain: a memory event occurred.
        MemEvent = 10,
        /// Domain: an Argo message arrived.
        Argo = 11,
        /// Domain: the hypervisor is low on memory.
        Enomem = 12,
        /// Per vCPU: a performance counter interrupt.
        Xenpmu = 13,
    }
}

/// Number of virtual IRQ numbers (including the architecture range
/// 16..=23, unused on x86); a larger one is `-EINVAL`.
pub const NR_VIRQS: u32 = 24;

impl Virq {
    /// Whether the IRQ is bound per vCPU (any vCPU id may be given to
    /// [`EvtchnOp::BindVirq`]) rather than once per domain (vCPU 0).
    pub const fn is_per_vcpu(self) -> bool {
        matches!(self, Virq::Timer | Virq::Debug | Virq::Xenoprof | Virq::Xenpmu)
    }
}

/// Argument of [`EvtchnOp::AllocUnbound`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EvtchnAllocUnbound {
    /// IN: the domain that gets the port: [`super::DOMID_SELF`] or the
    /// caller's id (a privileged domain may name another).
    pub dom: DomId,
    /// IN: the only domain allowed to connect to it.
    pub remote_dom: DomId,
    /// OUT: the new port.
    pub port: EvtchnPort,
}

const _: () = assert!(size_of::<EvtchnAllocUnbound>() == 8);
const _: () = assert!(offset_of!(EvtchnAllocUnbound, dom) == 0);
const _: () = assert!(offset_of!(EvtchnAllocUnbound, remote_dom) == 2);
const _: () = assert!(offset_of!(EvtchnAllocUnbound, port) == 4);

/// Argument of [`EvtchnOp::BindInterdomain`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EvtchnBindInterdomain {
    /// IN: the domain that allocated the unbound port.
    pub remote_dom: DomId,
    /// Padding (implicit in C), zero.
    pub _pad0: u16,
    /// IN: its port, unbound for the caller.
    pub remote_port: EvtchnPort,
    /// OUT: the caller's new, connected port.
    pub local_port: EvtchnPort,
}

const _: () = assert!(size_of::<EvtchnBindInterdomain>() == 12);
const _: () = assert!(offset_of!(EvtchnBindInterdomain, remote_dom) == 0);
const _: () = assert!(offset_of!(EvtchnBindInterdomain, _pad0) == 2);
const _: () = assert!(offset_of!(EvtchnBindInterdomain, remote_port) == 4);
const _: () = assert!(offset_of!(EvtchnBindInterdomain, local_port) == 8);

/// Argument of [`EvtchnOp::BindVirq`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EvtchnBindVirq {
    /// IN: a [`Virq`] number.
    pub virq: u32,
    /// IN: the vCPU whose IRQ it is (0 for a domain-wide IRQ); the port
    /// notifies this vCPU.
    pub vcpu: u32,
    /// OUT: the new port.
    pub port: EvtchnPort,
}

const _: () = assert!(size_of::<EvtchnBindVirq>() == 12);
const _: () = assert!(offset_of!(EvtchnBindVirq, virq) == 0);
const _: () = assert!(offset_of!(EvtchnBindVirq, vcpu) == 4);
const _: () = assert!(offset_of!(EvtchnBindVirq, port) == 8);

/// Argument of [`EvtchnOp::BindIpi`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EvtchnBindIpi {
    /// IN: the vCPU that sends on the port notify.
    pub vcpu: u32,
    /// OUT: the new port.
    pub port: EvtchnPort,
}

const _: () = assert!(size_of::<EvtchnBindIpi>() == 8);
const _: () = assert!(offset_of!(EvtchnBindIpi, vcpu) == 0);
const _: () = assert!(offset_of!(EvtchnBindIpi, port) == 4);

/// Argument of [`EvtchnOp::BindVcpu`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EvtchnBindVcpu {
    /// IN: the port (interdomain, unbound or domain-wide virtual IRQ).
    pub port: EvtchnPort,
    /// IN: the vCPU it notifies from now on.
    pub vcpu: u32,
}

const _: () = assert!(size_of::<EvtchnBindVcpu>() == 8);
const _: () = assert!(offset_of!(EvtchnBindVcpu, port) == 0);
const _: () = assert!(offset_of!(EvtchnBindVcpu, vcpu) == 4);

/// Argument of [`EvtchnOp::Close`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EvtchnClose {
    /// IN: the port to close.
    pub port: EvtchnPort,
}

const _: () = assert!(size_of::<EvtchnClose>() == 4);
const _: () = assert!(offset_of!(EvtchnClose, port) == 0);

/// Argument of [`EvtchnOp::Send`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EvtchnSend {
    /// IN: the local port to notify through.
    pub port: EvtchnPort,
}

const _: () = assert!(size_of::<EvtchnSend>() == 4);
const _: () = assert!(offset_of!(EvtchnSend, port) == 0);

/// Argument of [`EvtchnOp::Unmask`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EvtchnUnmask {
    /// IN: the port to unmask.
    pub port: EvtchnPort,
}

const _: () = assert!(size_of::<EvtchnUnmask>() == 4);
const _: () = assert!(offset_of!(EvtchnUnmask, port) == 0);

numbered_enum! {
    /// [`EvtchnStatus::status`] values (`EVTCHNSTAT_*`).
    pub enum EvtchnStat: u32 {
        /// Not allocated.
        Closed = 0,
        /// Allocated for a remote domain to connect to.
        Unbound = 1,
        /// Connected to a remote port.
        Interdomain = 2,
        /// Bound to a physical IRQ.
        Pirq = 3,
        /// Bound to a virtual IRQ.
        Virq = 4,
        /// An IPI port.
        Ipi = 5,
    }
}

/// Argument of [`EvtchnOp::Status`].
///
/// Xen's `u` is a union whose case `status` selects; here it is two words
/// with accessors ([`EvtchnStatus::state`], [`EvtchnStatus::set_state`]):
/// `u[0]` holds the domain (low 16 bits) of an unbound or interdomain port,
/// or the IRQ number of a PIRQ or VIRQ port; `u[1]` the remote port of an
/// interdomain port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EvtchnStatus {
    /// IN: the domain: [`super::DOMID_SELF`] or the caller's id (a
    /// privileged domain may name another).
    pub dom: DomId,
    /// Padding (implicit in C), zero.
    pub _pad0: u16,
    /// IN: the port.
    pub port: EvtchnPort,
    /// OUT: an [`EvtchnStat`] number.
    pub status: u32,
    /// OUT: the vCPU the port notifies.
    pub vcpu: u32,
    /// OUT: the union; see the structure's documentation.
    pub u: [u32; 2],
}

const _: () = assert!(size_of::<EvtchnStatus>() == 24);
const _: () = assert!(offset_of!(EvtchnStatus, dom) == 0);
const _: () = assert!(offset_of!(EvtchnStatus, _pad0) == 2);
const _: () = assert!(offset_of!(EvtchnStatus, port) == 4);
const _: () = assert!(offset_of!(EvtchnStatus, status) == 8);
const _: () = assert!(offset_of!(EvtchnStatus, vcpu) == 12);
const _: () = assert!(offset_of!(EvtchnStatus, u) == 16);

/// A port's state as [`EvtchnOp::Status`] reports it, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortState {
    /// Not allocated.
    Closed,
    /// Waiting for domain `remote_dom` to connect.
    Unbound {
        /// The domain allowed to connect.
        remote_dom: DomId,
    },
    /// Connected to `remote_port` of `remote_dom`.
    Interdomain {
        /// The remote domain.
        remote_dom: DomId,
        /// Its port.
        remote_port: EvtchnPort,
    },
    /// Bound to physical IRQ `pirq`.
    Pirq(u32),
    /// Bound to virtual IRQ `virq` (a [`Virq`] number).
    Virq(u32),
    /// An IPI port.
    Ipi,
}

impl EvtchnStatus {
    /// The state in `status` and `u`; `None` for an unknown `status`.
    pub const fn state(&self) -> Option<PortState> {
        let Some(stat) = EvtchnStat::from_number(self.status) else {
            return None;
        };
        Some(match stat {
            EvtchnStat::Closed => PortState::Closed,
            EvtchnStat::Unbound => PortState::Unbound { remote_dom: self.u[0] as DomId },
            EvtchnStat::Interdomain => {
                PortState::Interdomain { remote_dom: self.u[0] as DomId, remote_port: self.u[1] }
            }
            EvtchnStat::Pirq => PortState::Pirq(self.u[0]),
            EvtchnStat::Virq => PortState::Virq(self.u[0]),
            EvtchnStat::Ipi => PortState::Ipi,
        })
    }

    /// Writes `status` and `u` for `state` (the hypervisor's side); unused
    /// bytes of `u` become zero.
    pub const fn set_state(&mut self, state: PortState) {
        let (stat, u) = match state {
            PortState::Closed => (EvtchnStat::Closed, [0, 0]),
            PortState::Unbound { remote_dom } => (EvtchnStat::Unbound, [remote_dom as u32, 0]),
            PortState::Interdomain { remote_dom, remote_port } => {
                (EvtchnStat::Interdomain, [remote_dom as u32, remote_port])
            }
            PortState::Pirq(pirq) => (EvtchnStat::Pirq, [pirq, 0]),
            PortState::Virq(virq) => (EvtchnStat::Virq, [virq, 0]),
            PortState::Ipi => (EvtchnStat::Ipi, [0, 0]),
        };
        self.status = stat.number();
        self.u = u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::shared_info::EVTCHN_WORDS;
    use crate::xen::test_support::check_numbered;

    #[test]
    fn numbers_match_xen() {
        check_numbered!(EvtchnOp, u32);
        check_numbered!(Virq, u32);
        check_numbered!(EvtchnStat, u32);
        assert_eq!(EvtchnOp::AllocUnbound.number(), 6);
        assert_eq!(EvtchnOp::InitControl.number(), 11);
        assert_eq!(Virq::from_number(5), None, "5 is unused");
        assert!(Virq::ALL.iter().all(|virq| virq.number() < NR_VIRQS));
        assert!(Virq::Timer.is_per_vcpu() && !Virq::Console.is_per_vcpu());
    }

    #[test]
    fn port_positions() {
        assert_eq!(port_position(0), Some((0, 0)));
        assert_eq!(port_position(63), Some((0, 63)));
        assert_eq!(port_position(64), Some((1, 0)));
        assert_eq!(port_position(4095), Some((63, 63)));
        assert_eq!(port_position(4096), None);
        assert_eq!(port_position(u32::MAX), None);
        for port in 0..EVTCHN_2L_NR_CHANNELS {
            let (word, bit) = port_position(port).unwrap();
            assert!(word < EVTCHN_WORDS);
            assert_eq!(port_at(word, bit), port);
        }
        assert_eq!(EVTCHN_2L_NR_CHANNELS as usize, EVTCHN_WORDS * 64);
    }

    #[test]
    fn status_union_round_trips() {
        let states = [
            PortState::Closed,
            PortState::Unbound { remote_dom: 7 },
            PortState::Interdomain { remote_dom: 0x7ff0, remote_port: 4095 },
            PortState::Pirq(9),
            PortState::Virq(Virq::Timer.number()),
            PortState::Ipi,
        ];
        for state in states {
            let mut status = EvtchnStatus { u: [u32::MAX; 2], ..EvtchnStatus::default() };
            status.set_state(state);
            assert_eq!(status.state(), Some(state));
        }
        let mut status = EvtchnStatus::default();
        status.set_state(PortState::Interdomain { remote_dom: 3, remote_port: 12 });
        assert_eq!((status.status, status.u), (2, [3, 12]));
        status.status = 6;
        assert_eq!(status.state(), None);
    }
}
