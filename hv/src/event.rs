//! Event channel port tables: each domain's ports and their bindings, as [`abi::event`] specifies them.
//!
//! Every domain has a [`PortTable`] of [`PORT_COUNT`] ports; port 0 is never
//! allocated. A port is [`Binding::Free`], [`Binding::Unbound`] (allocated
//! for one remote domain to bind to), [`Binding::Interdomain`] (connected to
//! a port of a remote domain, possibly the same domain: a loopback),
//! [`Binding::Closed`] (its remote domain ended) or [`Binding::Virq`]. The
//! two ends of an interdomain channel always name each other; every
//! function here keeps that invariant.
//!
//! When a domain ends (crashes, shuts down, is destroyed), every port of
//! the others that names it, Unbound or Interdomain, becomes Closed
//! ([`PortTable::remote_ended`]): its owner sees why with Status, Send says
//! [`Error::Closed`], and nobody can bind to it, so a later domain that
//! gets the same id inherits nothing. Only Close frees it.
//!
//! ```text
//!            allocate_unbound(remote)         bind_interdomain by `remote`
//!   Free ----------------------------> Unbound ----------------------------> Interdomain
//!    ^  ^                              |  ^                                   |
//!    |  +--------- close --------------+  +--- peer closes its end -----------+
//!    |                                                                        |
//!    +--------------------------------- close --------------------------------+
//!   Free --- bind_virq ---> Virq --- close ---> Free
//!   Unbound or Interdomain --- remote domain ends ---> Closed --- close ---> Free
//! ```
//!
//! Operations that need two domains' tables (bind, close) go through
//! [`TableAccess`] and hold one table at a time, so the same table may be
//! both ends.
//!
//! Errors, the same everywhere:
//! - [`Error::InvalidArgument`]: a port number beyond the table, or an
//!   operation that can never apply to the port's kind (sending on a
//!   virtual IRQ port).
//! - [`Error::NotFound`]: the port is Free, or the domain has no table.
//! - [`Error::Permission`]: binding to a port that is Unbound for another
//!   domain.
//! - [`Error::Busy`]: the port is in a state that forbids the operation now
//!   (binding to a port already connected or bound to a virtual IRQ,
//!   sending on an Unbound port, binding to a Closed port), the virtual IRQ
//!   is already bound, or the table has no free port.
//! - [`Error::Closed`]: sending on a port whose remote domain ended.

use abi::Error;
use abi::event::{BITMAP_WORDS, PORT_COUNT, PortState, PortStatus, VIRQ_COUNT, Virq};

/// An event channel port number, `1..PORT_COUNT` when allocated.
pub type Port = u32;

/// Most vCPUs a domain has (each may bind its own virtual IRQs).
const MAX_VCPUS: usize = abi::hypercall::MAX_VCPUS as usize;

/// Identifier of a domain (as in the ABI).
pub type DomainId = abi::DomainId;

/// What a port is bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    /// Not allocated.
    Free,
    /// Allocated for domain `remote` to bind to with [`bind_interdomain`].
    /// Also what an Interdomain port becomes when its peer closes.
    Unbound { remote: DomainId },
    /// Connected to port `remote_port` of domain `remote`, whose binding
    /// names this port in return.
    Interdomain { remote: DomainId, remote_port: Port },
    /// Was Unbound for, or connected to, domain `remote`, which has ended
    /// since (crashed, shut down or destroyed). Only Close frees it.
    Closed { remote: DomainId },
    /// Bound to a virtual IRQ that hv raises.
    Virq(Virq),
    /// Bound to one of Xen's virtual IRQs that hv never raises (by Xen's
    /// number: `VIRQ_DEBUG` and the like), so that a guest that binds
    /// them, as Linux does on every CPU, finds them bound; never pending.
    SilentVirq(u8),
    /// Bound to a physical interrupt line (dom0's devices), which hv raises.
    Pirq(u8),
    /// An interprocessor interrupt of the domain itself: `Send` makes this
    /// port pending in the same domain (for the vCPU it notifies).
    Ipi,
}

/// Marks an entry of `PortTable::virq_ports` with no port bound (port 0
/// is never allocated).
const NO_PORT: Port = 0;

/// One domain's event channel ports.
#[derive(Clone, Debug)]
pub struct PortTable {
    /// Binding of each port; index 0 stays Free.
    bindings: [Binding; PORT_COUNT],
    /// The port bound to each virtual IRQ (by its number), or `NO_PORT`.
    /// (each vCPU binds its own: by vCPU, then virtual IRQ number)
    virq_ports: [[Port; VIRQ_COUNT]; MAX_VCPUS],
    /// The silent virtual IRQs bound on each vCPU (bit n: Xen's number n).
    silent_virqs: [u32; MAX_VCPUS],
    /// The vCPU each port notifies (0 unless bound to another).
    vcpus: [u8; PORT_COUNT],
    /// Ports not Free.
    allocated: usize,
}

/// Finds domains' port tables for the operations that touch two of them.
pub trait TableAccess {
    /// The table of domain `id`, if it exists.
    fn table(&mut self, id: DomainId) -> Option<&mut PortTable>;
}

/// Index of `port` in a table, or `InvalidArgument` beyond it.
fn port_index(port: Port) -> Result<usize, Error> {
    usize::try_from(port).ok().filter(|&index| index < PORT_COUNT).ok_or(Error::InvalidArgument)
}

/// A port index as a [`Port`]; every index is below `PORT_COUNT`, which fits.
fn port_number(index: usize) -> Port {
    index as Port
}

impl PortTable {
    /// A table with every port Free, usable in a `static`.
    pub const fn new() -> Self {
        Self {
            bindings: [Binding::Free; PORT_COUNT],
            virq_ports: [[NO_PORT; VIRQ_COUNT]; MAX_VCPUS],
            silent_virqs: [0; MAX_VCPUS],
            vcpus: [0; PORT_COUNT],
            allocated: 0,
        }
    }

    /// The binding of `port` (Free included). `InvalidArgument` beyond the
    /// table.
    pub fn binding(&self, port: Port) -> Result<Binding, Error> {
        Ok(self.bindings[port_index(port)?])
    }

    /// The answer to [`abi::event::EventOp::Status`] for `port`: a Free port
    /// gives state Free; fields that do not apply are 0. `InvalidArgument`
    /// beyond the table.
    pub fn status(&self, port: Port) -> Result<PortStatus, Error> {
        let (state, remote_domain, remote) = match self.binding(port)? {
            Binding::Free => (PortState::Free, 0, 0),
            Binding::Unbound { remote } => (PortState::Unbound, remote, 0),
            // Ports are below PORT_COUNT (256), so they fit the 16-bit field.
            Binding::Interdomain { remote, remote_port } => (PortState::Interdomain, remote, remote_port as u16),
            Binding::Closed { remote } => (PortState::Closed, remote, 0),
            Binding::Virq(virq) => (PortState::Virq, 0, virq as u16),
            Binding::SilentVirq(virq) => (PortState::Virq, 0, u16::from(virq)),
            Binding::Pirq(line) => (PortState::Pirq, 0, line as u16),
            Binding::Ipi => (PortState::Ipi, 0, u16::from(self.vcpus[port_index(port)?])),
        };
        Ok(PortStatus { state, remote_domain, remote })
    }

    /// Allocates the lowest free port (at least 1) as Unbound for domain
    /// `remote` (whose existence is the caller's to check). `Busy` when no
    /// port is free.
    pub fn allocate_unbound(&mut self, remote: DomainId) -> Result<Port, Error> {
        self.claim(Binding::Unbound { remote })
    }

    /// Binds the lowest free port to `virq`. `Busy` if `virq` is bound
    /// already or no port is free.
    pub fn bind_virq(&mut self, virq: Virq, vcpu: u8) -> Result<Port, Error> {
        let slot = self.virq_ports.get(usize::from(vcpu)).ok_or(Error::InvalidArgument)?;
        if slot[virq as usize] != NO_PORT {
            return Err(Error::Busy);
        }
        let port = self.claim(Binding::Virq(virq))?;
        self.vcpus[port as usize] = vcpu;
        self.virq_ports[usize::from(vcpu)][virq as usize] = port;
        Ok(port)
    }

    /// The port vCPU `vcpu` bound to `virq`, if any: where hv delivers it.
    /// Binds the lowest free port to silent virtual IRQ `virq` (Xen's
    /// number, below 32) on `vcpu`. `InvalidArgument` for a vCPU or number
    /// beyond the table, `Busy` if it is bound there already or no port is
    /// free.
    pub fn bind_silent_virq(&mut self, virq: u8, vcpu: u8) -> Result<Port, Error> {
        let bit = 1u32.checked_shl(u32::from(virq)).ok_or(Error::InvalidArgument)?;
        let bound = self.silent_virqs.get(usize::from(vcpu)).ok_or(Error::InvalidArgument)?;
        if bound & bit != 0 {
            return Err(Error::Busy);
        }
        let port = self.claim(Binding::SilentVirq(virq))?;
        self.vcpus[port as usize] = vcpu;
        self.silent_virqs[usize::from(vcpu)] |= bit;
        Ok(port)
    }

    /// Whether silent virtual IRQ `virq` is bound on `vcpu`.
    pub fn silent_virq_bound(&self, virq: u8, vcpu: u8) -> bool {
        let bit = 1u32.checked_shl(u32::from(virq)).unwrap_or(0);
        self.silent_virqs.get(usize::from(vcpu)).is_some_and(|bound| bound & bit != 0)
    }

    /// The port a virtual IRQ of hv is bound to on `vcpu`, if any.
    pub fn virq_port(&self, virq: Virq, vcpu: usize) -> Option<Port> {
        Some(self.virq_ports.get(vcpu)?[virq as usize]).filter(|&port| port != NO_PORT)
    }

    /// The (domain, port) that [`abi::event::EventOp::Send`] on `port` makes
    /// pending: the Interdomain peer. `InvalidArgument` beyond the table or
    /// for a virtual IRQ port (hv alone raises those), `NotFound` for a Free
    /// port, `Busy` for an Unbound one (nobody to notify until a peer binds),
    /// `Closed` for a Closed one (its remote domain ended).
    pub fn send_target(&self, port: Port) -> Result<(DomainId, Port), Error> {
        match self.binding(port)? {
            Binding::Interdomain { remote, remote_port } => Ok((remote, remote_port)),
            Binding::Free => Err(Error::NotFound),
            Binding::Closed { .. } => Err(Error::Closed),
            Binding::Unbound { .. } => Err(Error::Busy),
            Binding::Virq(_) | Binding::SilentVirq(_) | Binding::Pirq(_) | Binding::Ipi => Err(Error::InvalidArgument),
        }
    }

    /// The vCPU `port` notifies (0 for ports beyond the table).
    pub fn notify_vcpu(&self, port: Port) -> usize {
        port_index(port).map_or(0, |index| usize::from(self.vcpus[index]))
    }

    /// Makes allocated port `port` notify vCPU `vcpu` (the caller checks
    /// the domain has it). `InvalidArgument` beyond the table or for a
    /// virtual IRQ port (bound per vCPU), `NotFound` for a Free port.
    pub fn bind_vcpu(&mut self, port: Port, vcpu: u8) -> Result<(), Error> {
        let index = port_index(port)?;
        match self.bindings[index] {
            Binding::Free => return Err(Error::NotFound),
            // A virtual IRQ is bound per vCPU (`bind_virq`), not moved.
            Binding::Virq(_) | Binding::SilentVirq(_) => return Err(Error::InvalidArgument),
            _ => {}
        }
        self.vcpus[index] = vcpu;
        Ok(())
    }

    /// Allocates the lowest free port as an interprocessor interrupt that
    /// notifies vCPU `vcpu` (the caller checks the domain has it). `Busy`
    /// if no port is free.
    pub fn bind_ipi(&mut self, vcpu: u8) -> Result<Port, Error> {
        let port = self.claim(Binding::Ipi)?;
        self.vcpus[port as usize] = vcpu;
        Ok(port)
    }

    /// Binds a new port to physical interrupt line `line`. The caller (hv)
    /// checks the line is one this domain may have and is bound nowhere else.
    pub fn bind_pirq(&mut self, line: u8) -> Result<Port, Error> {
        if self.pirq_port(line).is_some() {
            return Err(Error::Busy);
        }
        self.claim(Binding::Pirq(line))
    }

    /// The port bound to physical line `line`, if any.
    pub fn pirq_port(&self, line: u8) -> Option<Port> {
        self.bindings.iter().position(|b| *b == Binding::Pirq(line)).map(port_number)
    }

    /// Domain `remote` has ended: every port Unbound for it or connected to
    /// it becomes Closed for it. Returns the ports that were connected (a
    /// bitmap in the event page's layout), so hv can make them pending and
    /// their owner notices. Ports already Closed stay as they are.
    pub fn remote_ended(&mut self, remote: DomainId) -> [u64; BITMAP_WORDS] {
        let mut connected = [0u64; BITMAP_WORDS];
        for (index, binding) in self.bindings.iter_mut().enumerate() {
            match *binding {
                Binding::Interdomain { remote: domain, .. } if domain == remote => {
                    connected[index / 64] |= 1 << (index % 64);
                }
                Binding::Unbound { remote: domain } if domain == remote => {}
                _ => continue,
            }
            *binding = Binding::Closed { remote };
        }
        connected
    }

    /// Frees every port (the domain itself has ended: nothing of it may be
    /// reached any more).
    pub fn clear(&mut self) {
        *self = Self::new();
    }

    /// Gives the lowest free port (at least 1) `binding`. `Busy` if none.
    fn claim(&mut self, binding: Binding) -> Result<Port, Error> {
        let index = (1..PORT_COUNT).find(|&index| self.bindings[index] == Binding::Free).ok_or(Error::Busy)?;
        self.bindings[index] = binding;
        self.allocated += 1;
        Ok(port_number(index))
    }

    /// Frees the port at `index`, releasing its virtual IRQ if it has one.
    fn release(&mut self, index: usize) {
        match self.bindings[index] {
            Binding::Free => return,
            Binding::Virq(virq) => {
                if let Some(slot) = self.virq_ports.get_mut(usize::from(self.vcpus[index])) {
                    slot[virq as usize] = NO_PORT;
                }
            }
            Binding::SilentVirq(virq) => {
                if let Some(bound) = self.silent_virqs.get_mut(usize::from(self.vcpus[index])) {
                    *bound &= !1u32.checked_shl(u32::from(virq)).unwrap_or(0);
                }
            }
            Binding::Unbound { .. }
            | Binding::Interdomain { .. }
            | Binding::Closed { .. }
            | Binding::Pirq(_)
            | Binding::Ipi => {}
        }
        self.bindings[index] = Binding::Free;
        self.vcpus[index] = 0;
        self.allocated -= 1;
    }
}

impl Default for PortTable {
    fn default() -> Self {
        Self::new()
    }
}

/// Connects a new port of domain `local_id` to port `remote_port` of
/// domain `remote_id`, which must be Unbound for `local_id`; both ends
/// become Interdomain. `local_id == remote_id` makes a loopback channel.
/// Returns the new local port (the lowest free one).
///
/// Errors, checked in this order, with nothing changed on error:
/// `InvalidArgument` if `remote_port` is beyond the table; `NotFound` if
/// `remote_id` has no table or the port is Free; `Permission` if it is
/// Unbound for another domain; `Busy` if it is Interdomain, Closed or Virq;
/// `NotFound` if `local_id` has no table; `Busy` if it has no free port.
pub fn bind_interdomain(
    tables: &mut impl TableAccess,
    local_id: DomainId,
    remote_id: DomainId,
    remote_port: Port,
) -> Result<Port, Error> {
    let remote_index = port_index(remote_port)?;
    match tables.table(remote_id).ok_or(Error::NotFound)?.bindings[remote_index] {
        Binding::Unbound { remote } if remote == local_id => {}
        Binding::Unbound { .. } => return Err(Error::Permission),
        Binding::Free => return Err(Error::NotFound),
        Binding::Interdomain { .. }
        | Binding::Closed { .. }
        | Binding::Virq(_)
        | Binding::SilentVirq(_)
        | Binding::Pirq(_)
        | Binding::Ipi => {
            return Err(Error::Busy);
        }
    }
    // The remote port is not Free, so in a loopback the new port differs from it.
    let local_port = tables
        .table(local_id)
        .ok_or(Error::NotFound)?
        .claim(Binding::Interdomain { remote: remote_id, remote_port })?;
    if let Some(remote_table) = tables.table(remote_id) {
        remote_table.bindings[remote_index] = Binding::Interdomain { remote: local_id, remote_port: local_port };
    }
    Ok(local_port)
}

/// Closes `port` of domain `id`. An Interdomain peer becomes Unbound for
/// `id` (so it sees the disconnection with Status, and `id` could bind to
/// it again); a virtual IRQ is released. Returns the peer's (domain, port)
/// if there was one.
///
/// Errors, with nothing changed: `InvalidArgument` if `port` is beyond the
/// table; `NotFound` if `id` has no table or the port is Free.
pub fn close(tables: &mut impl TableAccess, id: DomainId, port: Port) -> Result<Option<(DomainId, Port)>, Error> {
    let index = port_index(port)?;
    let table = tables.table(id).ok_or(Error::NotFound)?;
    let binding = table.bindings[index];
    if binding == Binding::Free {
        return Err(Error::NotFound);
    }
    table.release(index);
    let Binding::Interdomain { remote, remote_port } = binding else {
        return Ok(None);
    };
    // The peer names this port in return (the invariant); check anyway,
    // so that a broken invariant never frees someone else's port.
    let Some(peer) = tables.table(remote).and_then(|peer| peer.bindings.get_mut(remote_port as usize)) else {
        return Ok(None);
    };
    if *peer != (Binding::Interdomain { remote: id, remote_port: port }) {
        return Ok(None);
    }
    *peer = Binding::Unbound { remote: id };
    Ok(Some((remote, remote_port)))
}

/// Domain `id` has ended (crashed, shut down or is being destroyed): its
/// own ports are all freed and every port of the others that names it
/// becomes Closed ([`PortTable::remote_ended`]). `others` yields every
/// other domain's table; `notify(owner, port)` is called for each port that
/// was connected to `id`, which hv makes pending so its owner notices.
pub fn end_domain<'a>(
    own: &mut PortTable,
    id: DomainId,
    others: impl IntoIterator<Item = (DomainId, &'a mut PortTable)>,
    mut notify: impl FnMut(DomainId, Port),
) {
    own.clear();
    for (owner, table) in others {
        let connected = table.remote_ended(id);
        for (word, bits) in connected.iter().enumerate() {
            let mut bits = *bits;
            while bits != 0 {
                let bit = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                notify(owner, port_number(word * 64 + bit));
            }
        }
    }
}

/// How a [`set_pending`] went, for deciding on the upcall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The port was pending already.
    pub was_pending: bool,
    /// The port is masked.
    pub masked: bool,
}

impl Delivery {}

/// The word index and bit of `port` in an event page bitmap, or `None`
/// beyond it. The hypervisor uses it to apply [`set_pending`]'s rule with
/// an atomic OR on the guest's page.
pub fn bitmap_position(port: Port) -> Option<(usize, u64)> {
    let index = port_index(port).ok()?;
    Some((index / 64, 1 << (index % 64)))
}

/// Sets `port`'s bit in `pending` and reports whether it was set already
/// and whether `mask` masks the port. A port beyond the bitmap (a caller
/// bug: tables only hold ports in range) changes nothing and is reported
/// masked, so it raises no upcall.
pub fn set_pending(pending: &mut [u64; BITMAP_WORDS], mask: &[u64; BITMAP_WORDS], port: Port) -> Delivery {
    let Some((word, bit)) = bitmap_position(port) else {
        return Delivery { was_pending: false, masked: true };
    };
    let was_pending = pending[word] & bit != 0;
    pending[word] |= bit;
    Delivery { was_pending, masked: mask[word] & bit != 0 }
}

#[cfg(test)]
mod pirq_tests {
    use super::*;

    #[test]
    fn a_line_binds_once_and_cannot_be_sent_on() {
        let mut table = PortTable::new();
        let port = table.bind_pirq(4).unwrap();
        assert_eq!(table.pirq_port(4), Some(port));
        assert_eq!(table.bind_pirq(4), Err(Error::Busy));
        assert_eq!(table.send_target(port), Err(Error::InvalidArgument));
        assert_eq!(table.status(port).unwrap().state, PortState::Pirq);
        assert_eq!(table.status(port).unwrap().remote, 4);
    }
}

/// Test-only views.
#[cfg(test)]
impl PortTable {
    /// Ports bound to domain `remote` (Unbound for it, connected to it, or
    /// Closed since it ended), in increasing order.
    pub fn ports_connected_to(&self, remote: DomainId) -> impl Iterator<Item = Port> + '_ {
        self.bindings.iter().enumerate().filter_map(move |(index, binding)| match *binding {
            Binding::Unbound { remote: domain }
            | Binding::Interdomain { remote: domain, .. }
            | Binding::Closed { remote: domain }
                if domain == remote =>
            {
                Some(port_number(index))
            }
            _ => None,
        })
    }

    /// Number of ports that are not Free.
    pub fn allocated_count(&self) -> usize {
        self.allocated
    }
}

/// Test-only views.
#[cfg(test)]
impl Delivery {
    /// Whether to raise the upcall (set `upcall_pending`; inject the vector
    /// if it was 0): the port has just become pending and is not masked. A
    /// port that was pending already needs none: either it was masked when
    /// it became pending (unmasking with [`abi::event::EventOp::Unmask`]
    /// delivers it), or the upcall was raised then, and the guest clears
    /// `upcall_pending` before it scans `pending`, so it will see the port.
    pub const fn raises_upcall(self) -> bool {
        !self.was_pending && !self.masked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Port tables of the test's domains, by id.
    #[derive(Default)]
    struct Tables(HashMap<DomainId, PortTable>);

    impl TableAccess for Tables {
        fn table(&mut self, id: DomainId) -> Option<&mut PortTable> {
            self.0.get_mut(&id)
        }
    }

    impl Tables {
        fn with_domains(ids: &[DomainId]) -> Self {
            Tables(ids.iter().map(|&id| (id, PortTable::new())).collect())
        }

        fn binding(&self, id: DomainId, port: Port) -> Binding {
            self.0[&id].binding(port).unwrap()
        }

        /// Domain `id` ends ([`end_domain`]); returns the ports notified.
        fn end(&mut self, id: DomainId) -> Vec<(DomainId, Port)> {
            let mut own = self.0.remove(&id).unwrap_or_default();
            let mut notified = Vec::new();
            end_domain(&mut own, id, self.0.iter_mut().map(|(&owner, table)| (owner, table)), |owner, port| {
                notified.push((owner, port))
            });
            self.0.insert(id, own);
            notified.sort();
            notified
        }

        /// Every Interdomain binding's peer names it in return; the virtual
        /// IRQ map and the allocated count match the bindings; port 0 is Free.
        fn check_invariants(&self) {
            for (&id, table) in &self.0 {
                assert_eq!(table.binding(0), Ok(Binding::Free));
                let mut allocated = 0;
                for port in 0..PORT_COUNT as Port {
                    let binding = table.binding(port).unwrap();
                    if binding != Binding::Free {
                        allocated += 1;
                    }
                    match binding {
                        Binding::Interdomain { remote, remote_port } => {
                            let peer = self.0.get(&remote).expect("peer domain exists");
                            assert_eq!(
                                peer.binding(remote_port),
                                Ok(Binding::Interdomain { remote: id, remote_port: port }),
                                "domain {id} port {port}"
                            );
                        }
                        Binding::Virq(virq) => {
                            assert_eq!(table.virq_port(virq, table.notify_vcpu(port)), Some(port))
                        }
                        Binding::Pirq(line) => assert_eq!(table.pirq_port(line), Some(port)),
                        Binding::SilentVirq(virq) => {
                            assert!(table.silent_virq_bound(virq, table.notify_vcpu(port) as u8))
                        }
                        Binding::Free | Binding::Unbound { .. } | Binding::Closed { .. } | Binding::Ipi => {}
                    }
                    if binding == Binding::Free {
                        assert_eq!(table.notify_vcpu(port), 0, "a free port notifies vCPU 0");
                    }
                }
                assert_eq!(table.allocated_count(), allocated);
                for virq in [Virq::Timer, Virq::Console] {
                    if let Some(port) = table.virq_port(virq, 0) {
                        assert_eq!(table.binding(port), Ok(Binding::Virq(virq)));
                    }
                }
            }
        }
    }

    #[test]
    fn allocate_bind_send_close() {
        let mut tables = Tables::with_domains(&[0, 5]);
        // Domain 0 offers a port to domain 5; 5 binds to it.
        let offered = tables.table(0).unwrap().allocate_unbound(5).unwrap();
        assert_eq!(offered, 1, "port 0 is never allocated");
        let status = tables.0[&0].status(offered).unwrap();
        assert_eq!(status, PortStatus { state: PortState::Unbound, remote_domain: 5, remote: 0 });
        assert_eq!(tables.0[&0].send_target(offered), Err(Error::Busy));
        let bound = bind_interdomain(&mut tables, 5, 0, offered).unwrap();
        assert_eq!(bound, 1);
        assert_eq!(tables.binding(0, offered), Binding::Interdomain { remote: 5, remote_port: bound });
        assert_eq!(tables.binding(5, bound), Binding::Interdomain { remote: 0, remote_port: offered });
        let status = tables.0[&5].status(bound).unwrap();
        assert_eq!(status, PortStatus { state: PortState::Interdomain, remote_domain: 0, remote: 1 });
        // Sends reach the other end, both ways.
        assert_eq!(tables.0[&0].send_target(offered), Ok((5, bound)));
        assert_eq!(tables.0[&5].send_target(bound), Ok((0, offered)));
        assert_eq!(tables.0[&5].send_target(PORT_COUNT as Port), Err(Error::InvalidArgument));
        tables.check_invariants();
        // Domain 5 closes: domain 0's end is Unbound for 5 again.
        assert_eq!(close(&mut tables, 5, bound), Ok(Some((0, offered))));
        assert_eq!(tables.binding(5, bound), Binding::Free);
        assert_eq!(tables.binding(0, offered), Binding::Unbound { remote: 5 });
        assert_eq!(tables.0[&0].send_target(offered), Err(Error::Busy));
        assert_eq!(tables.0[&5].send_target(bound), Err(Error::NotFound));
        assert_eq!(close(&mut tables, 5, bound), Err(Error::NotFound), "closing twice");
        // Domain 5 can bind to it again.
        assert_eq!(bind_interdomain(&mut tables, 5, 0, offered), Ok(1));
        tables.check_invariants();
        assert_eq!(close(&mut tables, 0, offered), Ok(Some((5, 1))));
        assert_eq!(close(&mut tables, 5, 1), Ok(None), "an Unbound port has no peer");
        assert_eq!(tables.0[&0].allocated_count() + tables.0[&5].allocated_count(), 0);
    }

    #[test]
    fn binding_rules() {
        let mut tables = Tables::with_domains(&[0, 1, 2]);
        let for_one = tables.table(0).unwrap().allocate_unbound(1).unwrap();
        let timer = tables.table(0).unwrap().bind_virq(Virq::Timer, 0).unwrap();
        // Not Unbound for the caller.
        assert_eq!(bind_interdomain(&mut tables, 2, 0, for_one), Err(Error::Permission));
        // Free, out of range, port 0, a missing domain, a virtual IRQ port.
        assert_eq!(bind_interdomain(&mut tables, 1, 0, 9), Err(Error::NotFound));
        assert_eq!(bind_interdomain(&mut tables, 1, 0, 0), Err(Error::NotFound));
        assert_eq!(bind_interdomain(&mut tables, 1, 0, PORT_COUNT as Port), Err(Error::InvalidArgument));
        assert_eq!(bind_interdomain(&mut tables, 1, 0, u32::MAX), Err(Error::InvalidArgument));
        assert_eq!(bind_interdomain(&mut tables, 1, 7, for_one), Err(Error::NotFound));
        assert_eq!(bind_interdomain(&mut tables, 1, 0, timer), Err(Error::Busy));
        // A local domain without a table changes nothing.
        assert_eq!(bind_interdomain(&mut tables, 7, 0, for_one), Err(Error::Permission));
        let for_seven = tables.table(0).unwrap().allocate_unbound(7).unwrap();
        assert_eq!(bind_interdomain(&mut tables, 7, 0, for_seven), Err(Error::NotFound));
        assert_eq!(tables.binding(0, for_seven), Binding::Unbound { remote: 7 });
        // Binding twice.
        let port = bind_interdomain(&mut tables, 1, 0, for_one).unwrap();
        assert_eq!(bind_interdomain(&mut tables, 1, 0, for_one), Err(Error::Busy));
        assert_eq!(tables.0[&1].allocated_count(), 1);
        // Out-of-range ports everywhere.
        let table = &tables.0[&1];
        assert_eq!(table.binding(PORT_COUNT as Port), Err(Error::InvalidArgument));
        assert_eq!(table.status(PORT_COUNT as Port), Err(Error::InvalidArgument));
        assert_eq!(table.send_target(PORT_COUNT as Port), Err(Error::InvalidArgument));
        assert_eq!(close(&mut tables, 1, PORT_COUNT as Port), Err(Error::InvalidArgument));
        assert_eq!(close(&mut tables, 1, 0), Err(Error::NotFound));
        assert_eq!(close(&mut tables, 9, 1), Err(Error::NotFound));
        // A Free port has status Free; a virtual IRQ port cannot be sent on.
        let free = tables.0[&1].status(200).unwrap();
        assert_eq!(free, PortStatus { state: PortState::Free, remote_domain: 0, remote: 0 });
        assert_eq!(tables.0[&0].send_target(timer), Err(Error::InvalidArgument));
        assert_eq!(tables.0[&1].send_target(port), Ok((0, for_one)));
        tables.check_invariants();
    }

    #[test]
    fn loopback_channel_in_one_domain() {
        let mut tables = Tables::with_domains(&[3]);
        let first = tables.table(3).unwrap().allocate_unbound(3).unwrap();
        let second = bind_interdomain(&mut tables, 3, 3, first).unwrap();
        assert_ne!(first, second);
        assert_eq!(tables.0[&3].send_target(first), Ok((3, second)));
        assert_eq!(tables.0[&3].send_target(second), Ok((3, first)));
        tables.check_invariants();
        assert_eq!(close(&mut tables, 3, second), Ok(Some((3, first))));
        assert_eq!(tables.binding(3, first), Binding::Unbound { remote: 3 });
        let third = bind_interdomain(&mut tables, 3, 3, first).unwrap();
        assert_eq!(third, second, "lowest free port");
        tables.end(3);
        assert_eq!(tables.0[&3].allocated_count(), 0);
        tables.check_invariants();
    }

    #[test]
    fn virq_binds_once() {
        let mut table = PortTable::new();
        assert_eq!(table.virq_port(Virq::Console, 0), None);
        let console = table.bind_virq(Virq::Console, 0).unwrap();
        assert_eq!(table.bind_virq(Virq::Console, 0), Err(Error::Busy));
        assert_eq!(table.virq_port(Virq::Console, 0), Some(console));
        assert_eq!(table.status(console).unwrap(), PortStatus { state: PortState::Virq, remote_domain: 0, remote: 1 });
        let timer = table.bind_virq(Virq::Timer, 0).unwrap();
        assert_ne!(timer, console);
        let mut tables = Tables(HashMap::from([(0, table)]));
        assert_eq!(close(&mut tables, 0, console), Ok(None));
        assert_eq!(tables.0[&0].virq_port(Virq::Console, 0), None);
        assert_eq!(tables.0[&0].virq_port(Virq::Timer, 0), Some(timer));
        assert_eq!(tables.table(0).unwrap().bind_virq(Virq::Console, 0), Ok(console), "bindable again");
        tables.check_invariants();
    }

    #[test]
    fn an_ended_domain_leaves_its_peers_closed_and_its_id_inherits_nothing() {
        let mut tables = Tables::with_domains(&[0, 1, 2]);
        // Domain 1 is connected to 0 twice and to 2 once, has a loopback,
        // a virtual IRQ, and ports Unbound for 0; 0 has a port Unbound for 1.
        let mut peers = Vec::new();
        for owner in [0, 0, 2] {
            let offered = tables.table(owner).unwrap().allocate_unbound(1).unwrap();
            bind_interdomain(&mut tables, 1, owner, offered).unwrap();
            peers.push((owner, offered));
        }
        let loop_end = tables.table(1).unwrap().allocate_unbound(1).unwrap();
        bind_interdomain(&mut tables, 1, 1, loop_end).unwrap();
        tables.table(1).unwrap().bind_virq(Virq::Timer, 0).unwrap();
        tables.table(1).unwrap().allocate_unbound(0).unwrap();
        let waiting = tables.table(0).unwrap().allocate_unbound(1).unwrap();
        let unrelated = tables.table(0).unwrap().allocate_unbound(2).unwrap();
        tables.check_invariants();
        assert_eq!(tables.0[&0].ports_connected_to(1).count(), 3);

        let notified = tables.end(1);
        // The connected peers are told; the port merely offered to 1 is not.
        let mut expected = peers.clone();
        expected.sort();
        assert_eq!(notified, expected);
        assert_eq!(tables.0[&1].allocated_count(), 0);
        for &(owner, port) in peers.iter().chain([(0, waiting)].iter()) {
            assert_eq!(tables.binding(owner, port), Binding::Closed { remote: 1 });
            let status = tables.0[&owner].status(port).unwrap();
            assert_eq!(status, PortStatus { state: PortState::Closed, remote_domain: 1, remote: 0 });
            assert_eq!(tables.0[&owner].send_target(port), Err(Error::Closed));
        }
        assert_eq!(tables.binding(0, unrelated), Binding::Unbound { remote: 2 });
        tables.check_invariants();

        // A new domain that gets id 1 can bind none of them, and ending it
        // again changes nothing.
        for &(owner, port) in peers.iter().chain([(0, waiting)].iter()) {
            assert_eq!(bind_interdomain(&mut tables, 1, owner, port), Err(Error::Busy));
        }
        assert_eq!(tables.end(1), []);
        // Close frees a Closed port, with no peer to tell.
        let (owner, port) = peers[0];
        assert_eq!(close(&mut tables, owner, port), Ok(None));
        assert_eq!(tables.binding(owner, port), Binding::Free);
        tables.check_invariants();
        // Ending a domain without ports is harmless.
        assert_eq!(tables.end(42), []);
    }

    #[test]
    fn exhaustion_of_all_ports() {
        let mut tables = Tables::with_domains(&[0, 1]);
        let table = tables.table(0).unwrap();
        for expected in 1..PORT_COUNT as Port {
            assert_eq!(table.allocate_unbound(1), Ok(expected));
        }
        assert_eq!(table.allocated_count(), PORT_COUNT - 1);
        assert_eq!(table.allocate_unbound(1), Err(Error::Busy));
        assert_eq!(table.bind_virq(Virq::Timer, 0), Err(Error::Busy));
        assert_eq!(table.virq_port(Virq::Timer, 0), None);
        // Domain 1 binds to one of them; then 0 cannot bind back to a port
        // of 1's: no free port, and nothing changes.
        let port_of_one = bind_interdomain(&mut tables, 1, 0, 77).unwrap();
        let offered = tables.table(1).unwrap().allocate_unbound(0).unwrap();
        assert_eq!(bind_interdomain(&mut tables, 0, 1, offered), Err(Error::Busy));
        assert_eq!(tables.binding(1, offered), Binding::Unbound { remote: 0 });
        // A close frees exactly that port for the next allocation.
        assert_eq!(close(&mut tables, 0, 77), Ok(Some((1, port_of_one))));
        assert_eq!(bind_interdomain(&mut tables, 0, 1, offered), Ok(77));
        tables.check_invariants();
    }

    #[test]
    fn set_pending_reports_what_to_raise() {
        let mut pending = [0u64; BITMAP_WORDS];
        let mut mask = [0u64; BITMAP_WORDS];
        mask[1] = 1 << 2; // port 66
        let first = set_pending(&mut pending, &mask, 65);
        assert_eq!(first, Delivery { was_pending: false, masked: false });
        assert!(first.raises_upcall());
        assert_eq!(pending[1], 1 << 1);
        let again = set_pending(&mut pending, &mask, 65);
        assert_eq!(again, Delivery { was_pending: true, masked: false });
        assert!(!again.raises_upcall());
        let masked = set_pending(&mut pending, &mask, 66);
        assert_eq!(masked, Delivery { was_pending: false, masked: true });
        assert!(!masked.raises_upcall());
        assert_eq!(pending[1], 0b110);
        let last = PORT_COUNT as Port - 1;
        assert!(set_pending(&mut pending, &mask, last).raises_upcall());
        assert_eq!(pending[BITMAP_WORDS - 1], 1 << 63);
        // Out of range: nothing changes, nothing is raised.
        let before = pending;
        assert!(!set_pending(&mut pending, &mask, PORT_COUNT as Port).raises_upcall());
        assert_eq!(pending, before);
        assert_eq!(bitmap_position(0), Some((0, 1)));
        assert_eq!(bitmap_position(PORT_COUNT as Port), None);
    }

    #[test]
    fn random_operations_keep_channels_paired() {
        // Thousands of random operations over a few domains (one of which
        // comes and goes), checking every result against the state before
        // it and the pairing invariant after it.
        const DOMAINS: DomainId = 4;
        let mut tables = Tables::with_domains(&[0, 1, 2, 3]);
        let mut random = crate::test_random::XorShift(0x2545_f491_4f6c_dd1d);
        let mut next = move || random.next();
        // Ports are drawn mostly from the low ones, so that collisions are
        // common, with an occasional out-of-range one.
        let random_port = |value: u64| match value % 20 {
            0 => PORT_COUNT as Port + (value >> 8) as Port % 4,
            1..=4 => (value >> 8) as Port % PORT_COUNT as Port,
            _ => (value >> 8) as Port % 24,
        };
        let mut successes = [0usize; 7];
        for _ in 0..20_000 {
            let id = (next() % (DOMAINS as u64 + 1)) as DomainId; // DOMAINS: no table, usually
            let other = (next() % (DOMAINS as u64 + 1)) as DomainId;
            let mut port = random_port(next());
            match next() % 16 {
                0..=2 => {
                    if let Some(table) = tables.table(id) {
                        let full = table.allocated_count() == PORT_COUNT - 1;
                        match table.allocate_unbound(other) {
                            Ok(port) => {
                                assert!(!full);
                                assert_eq!(table.binding(port), Ok(Binding::Unbound { remote: other }));
                                successes[0] += 1;
                            }
                            Err(error) => assert!(full && error == Error::Busy),
                        }
                    }
                }
                3..=7 => {
                    // Mostly aim at a port that is Unbound for the binder.
                    if next() % 4 != 0 {
                        let offered = tables.table(other).and_then(|table| {
                            let ports: Vec<_> = table
                                .ports_connected_to(id)
                                .filter(|&port| table.binding(port) == Ok(Binding::Unbound { remote: id }))
                                .collect();
                            (!ports.is_empty()).then(|| ports[next() as usize % ports.len()])
                        });
                        port = offered.unwrap_or(port);
                    }
                    let before = tables.table(other).map(|table| table.binding(port));
                    let local_full = tables.table(id).map(|table| table.allocated_count() == PORT_COUNT - 1);
                    let result = bind_interdomain(&mut tables, id, other, port);
                    let expected_error = match (before, local_full) {
                        (_, _) if port as usize >= PORT_COUNT => Some(Error::InvalidArgument),
                        (None, _) => Some(Error::NotFound),
                        (Some(Ok(Binding::Free)), _) => Some(Error::NotFound),
                        (Some(Ok(Binding::Unbound { remote })), _) if remote != id => Some(Error::Permission),
                        (
                            Some(Ok(
                                Binding::Interdomain { .. }
                                | Binding::Closed { .. }
                                | Binding::Virq(_)
                                | Binding::Pirq(_),
                            )),
                            _,
                        ) => Some(Error::Busy),
                        (_, None) => Some(Error::NotFound),
                        (_, Some(true)) => Some(Error::Busy),
                        _ => None,
                    };
                    match result {
                        Ok(local) => {
                            assert_eq!(expected_error, None);
                            assert_eq!(
                                tables.binding(id, local),
                                Binding::Interdomain { remote: other, remote_port: port }
                            );
                            successes[1] += 1;
                        }
                        Err(error) => {
                            assert_eq!(Some(error), expected_error);
                            if let Some(Ok(binding)) = before {
                                assert_eq!(tables.binding(other, port), binding, "unchanged on error");
                            }
                        }
                    }
                }
                8 => {
                    let virq = if next() % 2 == 0 { Virq::Timer } else { Virq::Console };
                    if let Some(table) = tables.table(id) {
                        let bound = table.virq_port(virq, 0).is_some();
                        match table.bind_virq(virq, 0) {
                            Ok(port) => {
                                assert!(!bound);
                                assert_eq!(table.virq_port(virq, 0), Some(port));
                                successes[2] += 1;
                            }
                            Err(error) => assert_eq!(error, Error::Busy),
                        }
                    }
                }
                9..=11 => {
                    // Mostly close an allocated port.
                    if next() % 4 != 0 {
                        let allocated = tables.table(id).and_then(|table| {
                            let ports: Vec<_> = (1..PORT_COUNT as Port)
                                .filter(|&port| table.binding(port) != Ok(Binding::Free))
                                .collect();
                            (!ports.is_empty()).then(|| ports[next() as usize % ports.len()])
                        });
                        port = allocated.unwrap_or(port);
                    }
                    let before = tables.table(id).map(|table| table.binding(port));
                    let result = close(&mut tables, id, port);
                    match before {
                        _ if port as usize >= PORT_COUNT => {
                            assert_eq!(result, Err(Error::InvalidArgument))
                        }
                        None => assert_eq!(result, Err(Error::NotFound)),
                        Some(Err(error)) => panic!("binding of an in-range port failed: {error:?}"),
                        Some(Ok(Binding::Free)) => assert_eq!(result, Err(Error::NotFound)),
                        Some(Ok(Binding::Interdomain { remote, remote_port })) => {
                            assert_eq!(result, Ok(Some((remote, remote_port))));
                            assert_eq!(tables.binding(remote, remote_port), Binding::Unbound { remote: id });
                            successes[3] += 1;
                        }
                        Some(Ok(_)) => {
                            assert_eq!(result, Ok(None));
                            successes[4] += 1;
                        }
                    }
                    if let Some(table) = tables.table(id) {
                        assert_eq!(table.binding(port).unwrap_or(Binding::Free), Binding::Free);
                    }
                }
                12..=14 => {
                    if let Some(table) = tables.table(id) {
                        match (table.binding(port), table.send_target(port)) {
                            (Ok(Binding::Interdomain { remote, remote_port }), Ok(target)) => {
                                assert_eq!(target, (remote, remote_port));
                                successes[5] += 1;
                            }
                            (Ok(Binding::Interdomain { .. }), Err(error)) => {
                                panic!("send failed: {error:?}")
                            }
                            (_, result) => assert!(result.is_err()),
                        }
                    }
                }
                _ if next() % 4 == 0 => {
                    // Domain `id` ends and is destroyed; sometimes a new
                    // domain gets its id. Nothing of the old one's channels
                    // may reach the new one: every port naming it is Closed.
                    if tables.0.contains_key(&id) {
                        let connected: Vec<(DomainId, Port)> = tables
                            .0
                            .iter()
                            .filter(|&(&owner, _)| owner != id)
                            .flat_map(|(&owner, table)| {
                                (1..PORT_COUNT as Port)
                                    .filter(move |&port| {
                                        matches!(table.binding(port), Ok(Binding::Interdomain { remote, .. }) if remote == id)
                                    })
                                    .map(move |port| (owner, port))
                            })
                            .collect();
                        let mut connected = connected;
                        connected.sort();
                        assert_eq!(tables.end(id), connected);
                        let table = tables.0.remove(&id).unwrap_or_default();
                        assert_eq!(table.allocated_count(), 0);
                        for table in tables.0.values() {
                            assert!(
                                table
                                    .ports_connected_to(id)
                                    .all(|port| table.binding(port) == Ok(Binding::Closed { remote: id }))
                            );
                        }
                        successes[6] += 1;
                    }
                    if next() % 2 == 0 && id < DOMAINS {
                        tables.0.insert(id, PortTable::new());
                    }
                }
                _ => {}
            }
            tables.check_invariants();
        }
        assert!(successes.iter().all(|&count| count > 20), "too few of some operation: {successes:?}");
    }

    #[test]
    fn ipi_ports_and_vcpu_bindings() {
        let mut table = PortTable::new();
        let ipi = table.bind_ipi(3).unwrap();
        assert_eq!(table.binding(ipi), Ok(Binding::Ipi));
        assert_eq!(table.notify_vcpu(ipi), 3);
        let status = table.status(ipi).unwrap();
        assert_eq!((status.state, status.remote), (PortState::Ipi, 3));
        // Send on an IPI port is hv's to route (to the domain itself).
        assert_eq!(table.send_target(ipi), Err(Error::InvalidArgument));
        let unbound = table.allocate_unbound(7).unwrap();
        assert_eq!(table.notify_vcpu(unbound), 0);
        assert_eq!(table.bind_vcpu(unbound, 2), Ok(()));
        assert_eq!(table.notify_vcpu(unbound), 2);
        assert_eq!(table.bind_vcpu(200, 1), Err(Error::NotFound), "a free port");
        assert_eq!(table.bind_vcpu(PORT_COUNT as Port, 1), Err(Error::InvalidArgument));
        let mut tables = Tables(HashMap::from([(0, table)]));
        assert_eq!(close(&mut tables, 0, ipi), Ok(None));
        let table = tables.0.get(&0).unwrap();
        assert_eq!(table.binding(ipi), Ok(Binding::Free));
        assert_eq!(table.notify_vcpu(ipi), 0, "closing forgets the vCPU");
        assert_eq!(table.allocated_count(), 1);
    }

    #[test]
    fn each_vcpu_binds_its_own_virtual_irqs() {
        let mut table = PortTable::new();
        let zero = table.bind_virq(Virq::Timer, 0).unwrap();
        let two = table.bind_virq(Virq::Timer, 2).unwrap();
        assert_ne!(zero, two);
        assert_eq!(table.bind_virq(Virq::Timer, 2), Err(Error::Busy));
        assert_eq!((table.virq_port(Virq::Timer, 0), table.virq_port(Virq::Timer, 2)), (Some(zero), Some(two)));
        assert_eq!(table.virq_port(Virq::Timer, 1), None);
        assert_eq!(table.notify_vcpu(two), 2);
        assert_eq!(table.bind_virq(Virq::Timer, MAX_VCPUS as u8), Err(Error::InvalidArgument));
        assert_eq!(table.bind_vcpu(two, 1), Err(Error::InvalidArgument), "a virtual IRQ is not moved");
        let mut tables = Tables(HashMap::from([(0, table)]));
        assert_eq!(close(&mut tables, 0, two), Ok(None));
        let table = tables.0.get_mut(&0).unwrap();
        assert_eq!(table.virq_port(Virq::Timer, 2), None);
        assert_eq!(table.virq_port(Virq::Timer, 0), Some(zero), "vCPU 0's binding stays");
        assert_eq!(table.bind_virq(Virq::Timer, 2), Ok(two), "bindable again");
    }
}
