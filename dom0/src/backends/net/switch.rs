//! The software L2 switch that joins guests' virtual interfaces and the
//! physical NIC: it knows which port each MAC address lives behind,
//! forwards frames to that port, and floods frames to unknown or
//! broadcast/multicast destinations to every other port. Pure logic over
//! frame headers; the back ends move the bytes.
//!
//! Guests are not trusted with addresses (issue 8, MAC spoofing and table
//! flooding):
//! - A guest's vif is *locked* to the MAC dom0 configured for it: dom0
//!   installs it as a static entry when the vif connects
//!   ([`Switch::add_static`]) and removes it when the vif goes
//!   ([`Switch::remove_port`]). A frame from a locked port with any other
//!   source is refused ([`Forward::Refused`], counted), and a locked port
//!   learns nothing.
//! - A static MAC is never learned on another port: a frame from any port
//!   (the NIC included) with another port's static MAC as its source is
//!   refused.
//! - Ports without a static MAC (the NIC's uplink) learn source addresses,
//!   at most `learn_limit` each: a port at its bound replaces its own
//!   stalest entry, and no port ever evicts another port's entry, static
//!   or learned. Learned entries age out; static ones do not.

/// A MAC address.
pub type Mac = [u8; 6];

/// A switch port (a guest vif, or the uplink).
pub type PortId = u16;

/// Where a frame goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forward {
    /// To exactly this port.
    Port(PortId),
    /// To every port but the one it came from.
    Flood,
    /// Nowhere: malformed, or addressed back to its own port.
    Drop,
    /// Nowhere: its source address is not one its port may send from.
    Refused,
}

/// Why [`Switch::add_static`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StaticError {
    /// The address is another port's static address, or a multicast one.
    InUse,
    /// The port already has its static address.
    PortLocked,
    /// The table is full of other ports' entries.
    Full,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    mac: Mac,
    port: PortId,
    /// Configured by dom0: never ages, never replaced.
    fixed: bool,
    /// Tick of the last frame seen from `mac` (for ageing learned entries).
    seen: u64,
}

/// A switch with a bounded table of static and learned addresses.
#[derive(Debug)]
pub struct Switch<const ENTRIES: usize> {
    table: arrayvec::ArrayVec<Entry, ENTRIES>,
    /// Learned entries older than this many ticks are forgotten.
    max_age: u64,
    /// Most learned entries one port may hold.
    learn_limit: usize,
    /// Frames refused for their source address, since start.
    refused: u64,
}

/// Smallest Ethernet frame header: destination, source, type.
pub const HEADER: usize = 14;

fn is_multicast(mac: &Mac) -> bool {
    mac[0] & 1 != 0
}

impl<const ENTRIES: usize> Switch<ENTRIES> {
    /// An empty switch that forgets learned addresses not seen for
    /// `max_age` ticks and lets each port learn at most `learn_limit`.
    pub const fn new(max_age: u64, learn_limit: usize) -> Self {
        Switch { table: arrayvec::ArrayVec::new_const(), max_age, learn_limit, refused: 0 }
    }

    /// Locks `port` to `mac` (its vif connected): frames from `port` must
    /// come from `mac`, and frames to `mac` go to `port`. Takes the place
    /// of an entry that learned `mac` elsewhere.
    pub fn add_static(&mut self, port: PortId, mac: Mac) -> Result<(), StaticError> {
        if is_multicast(&mac) || self.table.iter().any(|entry| entry.fixed && entry.mac == mac) {
            return Err(StaticError::InUse);
        }
        if self.static_mac(port).is_some() {
            return Err(StaticError::PortLocked);
        }
        // A locked port learns nothing: what it learned before goes, and so
        // does `mac` learned behind another port.
        self.table.retain(|entry| entry.fixed || (entry.port != port && entry.mac != mac));
        let entry = Entry { mac, port, fixed: true, seen: 0 };
        self.table.try_push(entry).map_err(|_| StaticError::Full)
    }

    /// The address `port` is locked to, if any.
    pub fn static_mac(&self, port: PortId) -> Option<Mac> {
        self.table.iter().find(|entry| entry.fixed && entry.port == port).map(|entry| entry.mac)
    }

    /// Checks and learns from a frame that arrived on `port` at tick `now`
    /// and says where to send it.
    pub fn forward(&mut self, port: PortId, frame: &[u8], now: u64) -> Forward {
        let (Some(destination), Some(source)) = (frame.first_chunk::<6>(), frame.get(6..12)) else {
            return Forward::Drop;
        };
        if frame.len() < HEADER {
            return Forward::Drop;
        }
        let source: Mac = source.try_into().unwrap_or([0; 6]);
        let owner = self.table.iter().find(|entry| entry.fixed && entry.mac == source).map(|entry| entry.port);
        match (self.static_mac(port), owner) {
            // A locked port sends from its own address only.
            (Some(own), _) if own != source => return self.refuse(),
            (Some(_), _) => {}
            // Nobody else sends from a locked port's address.
            (None, Some(_)) => return self.refuse(),
            // A multicast source is invalid: never learned.
            (None, None) if is_multicast(&source) => {}
            (None, None) => self.learn(source, port, now),
        }
        if is_multicast(destination) {
            return Forward::Flood;
        }
        match self.lookup(destination, now) {
            Some(target) if target == port => Forward::Drop,
            Some(target) => Forward::Port(target),
            None => Forward::Flood,
        }
    }

    fn refuse(&mut self) -> Forward {
        self.refused += 1;
        Forward::Refused
    }

    /// Frames refused for their source address since start.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Forgets everything about `port`, its static address included (its
    /// vif went away).
    pub fn remove_port(&mut self, port: PortId) {
        self.table.retain(|entry| entry.port != port);
    }

    /// The port `mac` is behind: static, or learned and still fresh.
    pub fn lookup(&self, mac: &Mac, now: u64) -> Option<PortId> {
        self.table.iter().find(|entry| &entry.mac == mac && self.fresh(entry, now)).map(|entry| entry.port)
    }

    fn fresh(&self, entry: &Entry, now: u64) -> bool {
        entry.fixed || now.saturating_sub(entry.seen) <= self.max_age
    }

    /// The live entries at tick `now`: (MAC, port, ticks since last seen,
    /// `None` for a static entry), in table order.
    pub fn entries(&self, now: u64) -> impl Iterator<Item = (Mac, PortId, Option<u64>)> + '_ {
        self.table.iter().filter(move |entry| self.fresh(entry, now)).map(move |entry| {
            let age = (!entry.fixed).then(|| now.saturating_sub(entry.seen));
            (entry.mac, entry.port, age)
        })
    }

    /// Entries in the table (including stale ones not yet replaced).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    fn learn(&mut self, mac: Mac, port: PortId, now: u64) {
        // Only learned entries match here (static ones were refused).
        if let Some(index) = self.table.iter().position(|entry| entry.mac == mac) {
            if self.table[index].port == port {
                self.table[index].seen = now;
                return;
            }
            // A station that moved is learned afresh behind its new port,
            // within that port's bound.
            self.table.remove(index);
        }
        let entry = Entry { mac, port, fixed: false, seen: now };
        let own = self.table.iter().filter(|old| !old.fixed && old.port == port).count();
        // A port below its bound may take a stale entry of any port ...
        let max_age = self.max_age;
        if own < self.learn_limit
            && let Some(stale) = self.table.iter_mut().find(|old| !old.fixed && now.saturating_sub(old.seen) > max_age)
        {
            *stale = entry;
            return;
        }
        // ... and otherwise a port at its bound, or finding the table full,
        // replaces its own stalest entry, never another port's.
        if own >= self.learn_limit || self.table.is_full() {
            let stalest = self.table.iter_mut().filter(|old| !old.fixed && old.port == port).min_by_key(|old| old.seen);
            if let Some(stalest) = stalest {
                *stalest = entry;
            }
            return;
        }
        // Not full (checked above).
        let _ = self.table.try_push(entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(destination: Mac, source: Mac) -> Vec<u8> {
        let mut bytes = destination.to_vec();
        bytes.extend_from_slice(&source);
        bytes.extend_from_slice(&[0x08, 0x00]);
        bytes.extend_from_slice(&[0; 46]);
        bytes
    }

    const A: Mac = [0x52, 0x54, 0, 0, 0, 1];
    const B: Mac = [0x52, 0x54, 0, 0, 0, 2];
    const C: Mac = [0x52, 0x54, 0, 0, 0, 3];
    const BROADCAST: Mac = [0xff; 6];
    /// The uplink in these tests (any port without a static address learns).
    const NIC: PortId = 0;

    fn fake(n: u32) -> Mac {
        let mut mac = [0x02, 0xfa, 0, 0, 0, 0];
        mac[2..].copy_from_slice(&n.to_be_bytes());
        mac
    }

    #[test]
    fn learns_and_forwards() {
        let mut switch = Switch::<8>::new(100, 8);
        assert_eq!(switch.forward(1, &frame(B, A), 0), Forward::Flood, "B unknown yet");
        assert_eq!(switch.forward(2, &frame(A, B), 1), Forward::Port(1), "A learned on port 1");
        assert_eq!(switch.forward(1, &frame(B, A), 2), Forward::Port(2), "B learned on port 2");
        assert_eq!(switch.forward(1, &frame(BROADCAST, A), 3), Forward::Flood);
        assert_eq!(switch.forward(1, &frame(A, C), 4), Forward::Drop, "to its own port");
        assert_eq!(switch.lookup(&C, 4), Some(1));
    }

    #[test]
    fn the_table_can_be_listed() {
        let mut switch = Switch::<8>::new(10, 8);
        switch.add_static(3, C).unwrap();
        switch.forward(1, &frame(B, A), 0);
        switch.forward(2, &frame(A, B), 5);
        let listed: Vec<_> = switch.entries(8).collect();
        assert_eq!(listed, vec![(C, 3, None), (A, 1, Some(8)), (B, 2, Some(3))]);
        assert_eq!(switch.entries(12).collect::<Vec<_>>(), vec![(C, 3, None), (B, 2, Some(7))], "A aged out");
    }

    #[test]
    fn stations_move_and_age_out() {
        let mut switch = Switch::<8>::new(10, 8);
        switch.forward(1, &frame(B, A), 0);
        switch.forward(3, &frame(B, A), 1);
        assert_eq!(switch.lookup(&A, 1), Some(3), "A moved to port 3");
        assert_eq!(switch.lookup(&A, 20), None, "aged out");
        switch.forward(2, &frame(A, B), 2);
        switch.remove_port(2);
        assert_eq!(switch.lookup(&B, 2), None);
    }

    #[test]
    fn hostile_frames_cannot_grow_or_break_the_table() {
        let mut switch = Switch::<4>::new(1_000, 4);
        assert_eq!(switch.forward(1, &[1, 2, 3], 0), Forward::Drop, "runt frame");
        assert_eq!(switch.forward(1, &frame(A, BROADCAST), 0), Forward::Flood);
        assert!(switch.is_empty(), "a multicast source is never learned");
        for n in 0..1000u32 {
            switch.forward(5, &frame(B, fake(n)), n as u64);
        }
        assert_eq!(switch.len(), 4, "bounded");
        switch.forward(2, &frame(A, B), 2000);
        assert_eq!(switch.lookup(&B, 2000), Some(2), "a real station still gets in (the flood went stale)");
    }

    /// Issue 8 #6: a guest sending with another guest's address took over
    /// its traffic. A vif sends from its configured address only, and a
    /// guest's address is never learned elsewhere, the NIC included.
    #[test]
    fn a_vif_cannot_send_from_another_address() {
        let mut switch = Switch::<16>::new(1_000, 8);
        switch.add_static(1, A).unwrap();
        switch.add_static(2, B).unwrap();
        switch.add_static(3, C).unwrap();
        assert_eq!(switch.forward(1, &frame(B, A), 0), Forward::Port(2));
        // Guest C claims A's address: refused, A stays behind port 1.
        assert_eq!(switch.forward(3, &frame(B, A), 1), Forward::Refused);
        assert_eq!(switch.forward(3, &frame(BROADCAST, A), 1), Forward::Refused, "broadcasts too");
        assert_eq!(switch.forward(3, &frame(B, fake(7)), 1), Forward::Refused, "any address but its own");
        assert_eq!(switch.forward(3, &frame(B, BROADCAST), 1), Forward::Refused, "a multicast source");
        assert_eq!(switch.forward(NIC, &frame(B, A), 1), Forward::Refused, "from outside too");
        assert_eq!(switch.refused(), 5);
        assert_eq!(switch.lookup(&A, 2), Some(1));
        assert_eq!(switch.lookup(&fake(7), 2), None, "a locked port learns nothing");
        assert_eq!(switch.forward(2, &frame(A, B), 2), Forward::Port(1), "B's frames still reach A");
        // An address is locked to one port at a time.
        assert_eq!(switch.add_static(4, A), Err(StaticError::InUse));
        assert_eq!(switch.add_static(1, fake(1)), Err(StaticError::PortLocked));
        assert_eq!(switch.add_static(4, BROADCAST), Err(StaticError::InUse));
        // Gone with its vif; then the address is free again.
        switch.remove_port(1);
        assert_eq!(switch.lookup(&A, 3), None);
        assert_eq!(switch.add_static(4, A), Ok(()));
    }

    #[test]
    fn a_static_address_replaces_one_learned_elsewhere() {
        let mut switch = Switch::<16>::new(1_000, 8);
        switch.forward(NIC, &frame(B, A), 0);
        assert_eq!(switch.lookup(&A, 0), Some(NIC));
        switch.add_static(1, A).unwrap();
        assert_eq!(switch.lookup(&A, 0), Some(1));
        assert_eq!(switch.entries(0).count(), 1);
        assert_eq!(switch.lookup(&A, 1_000_000), Some(1), "static entries never age");
    }

    /// Issue 8 #7: a guest flooding fake sources filled the one shared
    /// table, and the switch flooded other guests' unicast frames to it.
    /// Learning is bounded per port and never evicts another port's entry.
    #[test]
    fn flooding_one_port_cannot_evict_another_ports_entries() {
        let mut switch = Switch::<16>::new(1_000_000, 4);
        switch.add_static(1, A).unwrap();
        switch.add_static(2, B).unwrap();
        // Port 5 is unlocked (like the NIC); port 6 another unlocked one.
        switch.forward(6, &frame(A, C), 0);
        for n in 0..10_000u32 {
            switch.forward(5, &frame(BROADCAST, fake(n)), 1 + n as u64);
            if n % 100 == 0 {
                // A locked guest flooding gets nowhere either.
                assert_eq!(switch.forward(1, &frame(B, fake(n)), 1 + n as u64), Forward::Refused);
            }
        }
        let now = 20_000;
        assert_eq!(switch.entries(now).filter(|&(_, port, _)| port == 5).count(), 4, "port 5 is bounded");
        assert_eq!(switch.lookup(&A, now), Some(1));
        assert_eq!(switch.lookup(&B, now), Some(2));
        assert_eq!(switch.lookup(&C, now), Some(6), "port 6's learned entry survived");
        assert_eq!(switch.forward(1, &frame(B, A), now), Forward::Port(2), "unicast is not flooded");
        assert_eq!(switch.forward(2, &frame(C, B), now), Forward::Port(6));
        // A full table: static entries are still installed in any free
        // slot, and a port finding the table full takes only its own.
        let mut full = Switch::<4>::new(1_000_000, 4);
        for n in 0..4 {
            full.forward(5, &frame(BROADCAST, fake(n)), n as u64);
        }
        assert_eq!(full.add_static(1, A), Err(StaticError::Full));
        full.remove_port(5);
        full.add_static(1, A).unwrap();
        full.forward(6, &frame(A, C), 10);
        for n in 0..100 {
            full.forward(5, &frame(BROADCAST, fake(n)), 11 + n as u64);
        }
        assert_eq!(full.lookup(&C, 200), Some(6));
        assert_eq!(full.lookup(&A, 200), Some(1));
    }

    /// Found by the `switch` fuzz target: a port at its bound still grew by
    /// taking another port's stale entry, or a station moving to it.
    #[test]
    fn a_port_at_its_bound_gains_no_entry_from_other_ports() {
        let own = |switch: &Switch<16>, port, now| switch.entries(now).filter(|&(_, at, _)| at == port).count();
        let mut switch = Switch::<16>::new(10, 2);
        switch.forward(6, &frame(BROADCAST, A), 0);
        switch.forward(5, &frame(BROADCAST, fake(1)), 5);
        switch.forward(5, &frame(BROADCAST, fake(2)), 5);
        switch.forward(5, &frame(BROADCAST, fake(3)), 11);
        assert_eq!(own(&switch, 5, 11), 2, "port 6's stale entry is not port 5's to take");
        switch.forward(6, &frame(BROADCAST, B), 12);
        switch.forward(5, &frame(BROADCAST, B), 12);
        assert_eq!(own(&switch, 5, 12), 2, "a station moving to port 5 counts against its bound");
        assert_eq!(switch.lookup(&B, 12), Some(5));
    }
}
