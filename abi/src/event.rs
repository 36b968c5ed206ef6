//! Event channels ([`crate::Hypercall::Event`]): one-bit notifications between
//! domains, and from the hypervisor (virtual IRQs).
//!
//! A domain registers an [`EventPage`] in its own memory with
//! [`EventOp::RegisterPage`] and names the interrupt vector hv injects (the
//! *upcall*) when a port becomes pending. Delivery: hv sets the port's bit
//! in `pending`; if the port's `mask` bit is clear and `upcall_pending` was
//! 0, hv sets `upcall_pending` to 1, injects the vector once the vCPU has
//! interrupts enabled, and wakes it if it is blocked. The guest's handler
//! clears `upcall_pending`, then scans and clears `pending` bits
//! (atomically: hv sets bits concurrently from other CPUs). The clear must
//! be ordered before the scan's loads (a locked instruction such as XCHG,
//! or a fence after a plain store): a load moved ahead of the clear can
//! miss a bit hv set just before it set `upcall_pending` again, and the
//! port then waits for the next upcall. A guest that takes pending bits
//! outside its handler (in its main loop, before `Block`) loses nothing:
//! `Block` returns at once while a port that notifies the vCPU is pending.
//!
//! A domain with several vCPUs (since 0.9): each port notifies one vCPU,
//! vCPU 0 unless [`EventOp::BindVcpu`] names another. That vCPU gets the
//! upcall (its own `upcall_pending` word: [`EventPage::upcall_pending`]
//! for vCPU 0, [`EventPage::upcall_pending_vcpu`] for the others; each
//! vCPU's handler clears its own) and is woken from `Block`.
//! [`EventOp::BindIpi`] gives a port whose `Send` notifies a vCPU of the
//! same domain: an interprocessor interrupt between the domain's vCPUs.
//!
//! A port is `Free`, `Unbound` (allocated for one remote domain to bind to),
//! `Interdomain` (connected to a remote port) or `Virq`. Closing one end of
//! an interdomain channel leaves the other end `Unbound` (for the same
//! remote), so the peer can see the disconnection with `Status`.
//!
//! When a domain ends (crashes, shuts down or is destroyed), every port of
//! another domain that was `Unbound` for it or `Interdomain` with it becomes
//! `Closed` (since ABI 0.6); a connected one is also made pending, so its
//! owner notices. On a `Closed` port `Send` fails with
//! [`crate::Error::Closed`], nobody can bind to it (`Busy`), and `Status`
//! names the domain that ended; only `Close` frees it. A later domain that
//! is given the same id therefore inherits no connection.

use core::mem::{offset_of, size_of};

/// Ports per domain in this ABI version (port 0 is never allocated).
pub const PORT_COUNT: usize = 256;

/// Words of 64 bits in each bitmap of the [`EventPage`].
pub const BITMAP_WORDS: usize = PORT_COUNT / 64;

/// Event channel operations (`a0` of the hypercall).
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventOp {
    /// Registers the caller's event page at guest-physical `a1` (page
    /// aligned, in the caller's RAM) and the upcall vector `a2` (32..=255;
    /// 0 = no upcall, the domain polls or blocks). Returns 0.
    RegisterPage = 0,
    /// Allocates a port that domain `a1` may bind to. Returns the port.
    /// `NotFound` if `a1` does not exist or has ended (since ABI 0.6).
    AllocUnbound = 1,
    /// Connects a new local port to port `a2` of domain `a1`, which must be
    /// `Unbound` for the caller. Returns the local port.
    BindInterdomain = 2,
    /// Binds a new port to virtual IRQ `a1` (a [`Virq`]) of vCPU `a2`
    /// (since 0.9; before, `a2` was ignored and 0 is vCPU 0 as before): the
    /// port notifies that vCPU, and each vCPU binds each virtual IRQ to at
    /// most one port (`Busy` for a second). A vCPU's timer raises its own
    /// `Timer` port. `InvalidArgument` for an unknown virtual IRQ or a vCPU
    /// the domain does not have. Returns the port.
    BindVirq = 3,
    /// Makes the remote end of port `a1` pending (for interdomain ports).
    /// Fails with [`crate::Error::Closed`] once the remote domain has ended
    /// (the port is [`PortState::Closed`]; since ABI 0.6), `Busy` while the
    /// port is `Unbound`.
    Send = 4,
    /// Closes port `a1`.
    Close = 5,
    /// Sets the mask bit of port `a1` (same as writing the page).
    Mask = 6,
    /// Clears the mask bit of port `a1` and delivers the upcall if the port
    /// is pending. On a port bound to a level-triggered physical line
    /// ([`EventOp::BindPirq`]) it also lets the line interrupt again (since
    /// ABI 0.5).
    Unmask = 7,
    /// Returns the state of port `a1` as [`PortStatus`] packed in a word:
    /// bits 0..8 the state, bits 16..48 the remote domain, bits 48..64 the
    /// remote port, virtual IRQ or physical line.
    Status = 8,
    /// dom0 only: binds a new port to ISA interrupt line `a1` (1, 3..=7,
    /// 9..=15: the lines hv does not keep), routed as the firmware's MADT
    /// says (input, polarity, trigger). Each interrupt on the line makes the
    /// port pending. An edge-triggered line stays unmasked; a level-triggered
    /// one (a PCI interrupt, since ABI 0.5) is masked each time it fires,
    /// until dom0 has serviced the device and sends [`EventOp::Unmask`] for
    /// the port. Returns the port. Since ABI 0.4.
    BindPirq = 9,
    /// Since 0.9: port `a1` (allocated; not a virtual IRQ's, which
    /// `BindVirq` binds per vCPU) notifies vCPU `a2` of the domain from now
    /// on (default: vCPU 0). `InvalidArgument` for a port beyond the table,
    /// a virtual IRQ port or a vCPU the domain does not have, `NotFound` for
    /// a free port. A port bound to a vCPU that is down notifies vCPU 0.
    BindVcpu = 10,
    /// Since 0.9: allocates a port of type [`PortState::Ipi`] that notifies
    /// vCPU `a1` of the caller's own domain; `Send` on it (from any of the
    /// domain's vCPUs) makes it pending there. Returns the port.
    /// `InvalidArgument` for a vCPU the domain does not have, `Busy` when no
    /// port is free.
    BindIpi = 11,
}

impl EventOp {
    /// Decodes the operation argument.
    pub const fn from_number(number: u64) -> Option<EventOp> {
        Some(match number {
            0 => EventOp::RegisterPage,
            1 => EventOp::AllocUnbound,
            2 => EventOp::BindInterdomain,
            3 => EventOp::BindVirq,
            4 => EventOp::Send,
            5 => EventOp::Close,
            6 => EventOp::Mask,
            7 => EventOp::Unmask,
            8 => EventOp::Status,
            9 => EventOp::BindPirq,
            10 => EventOp::BindVcpu,
            11 => EventOp::BindIpi,
            _ => return None,
        })
    }
}

/// Virtual IRQs: events the hypervisor raises.
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Virq {
    /// The vCPU's one-shot timer fired.
    Timer = 0,
    /// Console input is available (raised for dom0 by hv; for guests the
    /// console back end uses an interdomain port instead).
    Console = 1,
}

/// Number of virtual IRQs.
pub const VIRQ_COUNT: usize = 2;

impl Virq {
    /// Decodes a virtual IRQ number.
    pub const fn from_number(number: u64) -> Option<Virq> {
        match number {
            0 => Some(Virq::Timer),
            1 => Some(Virq::Console),
            _ => None,
        }
    }
}

/// The state part of a `Status` answer.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortState {
    /// Not allocated.
    Free = 0,
    /// Allocated for a remote domain to bind to.
    Unbound = 1,
    /// Connected to a remote port.
    Interdomain = 2,
    /// Bound to a virtual IRQ.
    Virq = 3,
    /// Bound to a physical interrupt line (dom0; since ABI 0.4).
    Pirq = 4,
    /// Was `Unbound` for or `Interdomain` with the remote domain, which has
    /// ended since; only `Close` frees it (since ABI 0.6).
    Closed = 5,
    /// An interprocessor interrupt of the domain (since 0.9): `remote` is
    /// the vCPU it notifies.
    Ipi = 6,
}

/// A decoded `Status` answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortStatus {
    pub state: PortState,
    /// Remote domain (Unbound, Interdomain, Closed: the domain that ended).
    pub remote_domain: u32,
    /// Remote port (Interdomain) or virtual IRQ number (Virq).
    pub remote: u16,
}

impl PortStatus {
    /// Packs the status into the hypercall's return word.
    pub const fn encode(self) -> u64 {
        self.state as u64 | (self.remote_domain as u64) << 16 | (self.remote as u64) << 48
    }

    /// Unpacks a `Status` return word.
    pub const fn decode(word: u64) -> Option<PortStatus> {
        let state = match word & 0xff {
            0 => PortState::Free,
            1 => PortState::Unbound,
            2 => PortState::Interdomain,
            3 => PortState::Virq,
            4 => PortState::Pirq,
            6 => PortState::Ipi,
            5 => PortState::Closed,
            _ => return None,
        };
        Some(PortStatus { state, remote_domain: (word >> 16) as u32, remote: (word >> 48) as u16 })
    }
}

/// The event page a domain registers. Shared between the domain and hv:
/// both sides access it only with atomic operations on whole words.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventPage {
    /// Bit `p` set: port `p` is pending. hv sets, the guest clears.
    pub pending: [u64; BITMAP_WORDS],
    /// Bit `p` set: port `p` does not raise the upcall. Written by the guest.
    pub mask: [u64; BITMAP_WORDS],
    /// 1 when hv has raised vCPU 0's upcall and the guest has not yet
    /// cleared it. hv sets, the guest clears (before scanning `pending`).
    pub upcall_pending: u64,
    /// Since 0.9: the same for vCPUs 1 to 7 (entry i is vCPU i + 1's);
    /// zero before (reserved).
    pub upcall_pending_vcpu: [u64; 7],
}

const _: () = assert!(size_of::<EventPage>() == 8 * (2 * BITMAP_WORDS + 8));
const _: () = assert!(size_of::<EventPage>() <= crate::PAGE_SIZE as usize);
const _: () = assert!(offset_of!(EventPage, pending) == 0);
const _: () = assert!(offset_of!(EventPage, mask) == 8 * BITMAP_WORDS);
const _: () = assert!(offset_of!(EventPage, upcall_pending) == 16 * BITMAP_WORDS);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips() {
        for state in [
            PortState::Free,
            PortState::Unbound,
            PortState::Interdomain,
            PortState::Virq,
            PortState::Pirq,
            PortState::Closed,
            PortState::Ipi,
        ] {
            let status = PortStatus { state, remote_domain: 0xdead_beef, remote: 0xabcd };
            assert_eq!(PortStatus::decode(status.encode()), Some(status));
        }
        assert_eq!(PortStatus::decode(9), None);
    }

    #[test]
    fn operations_round_trip() {
        for n in 0..12 {
            assert_eq!(EventOp::from_number(n).unwrap() as u64, n);
        }
        assert_eq!(EventOp::from_number(12), None);
        assert_eq!(Virq::from_number(2), None);
    }
}
