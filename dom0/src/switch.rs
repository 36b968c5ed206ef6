//! The software L2 switch that joins guests' virtual interfaces (and later
//! the physical NIC): it learns which port each source MAC address lives
//! behind, forwards frames to the learned port, and floods frames to
//! unknown or broadcast/multicast destinations to every other port. Pure
//! logic over frame headers; the back ends move the bytes.

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
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    mac: Mac,
    port: PortId,
    /// Tick of the last frame seen from `mac` (for ageing).
    seen: u64,
}

/// A MAC-learning switch with a bounded table.
#[derive(Debug)]
pub struct Switch<const ENTRIES: usize> {
    table: arrayvec::ArrayVec<Entry, ENTRIES>,
    /// Entries older than this many ticks are forgotten.
    max_age: u64,
}

/// Smallest Ethernet frame header: destination, source, type.
pub const HEADER: usize = 14;

fn is_multicast(mac: &Mac) -> bool {
    mac[0] & 1 != 0
}

impl<const ENTRIES: usize> Switch<ENTRIES> {
    /// An empty switch that forgets addresses not seen for `max_age` ticks.
    pub const fn new(max_age: u64) -> Self {
        Switch { table: arrayvec::ArrayVec::new_const(), max_age }
    }

    /// Learns from a frame that arrived on `port` at tick `now` and says
    /// where to send it.
    pub fn forward(&mut self, port: PortId, frame: &[u8], now: u64) -> Forward {
        let (Some(destination), Some(source)) = (frame.get(0..6), frame.get(6..12)) else { return Forward::Drop };
        if frame.len() < HEADER {
            return Forward::Drop;
        }
        let destination: Mac = destination.try_into().unwrap_or([0; 6]);
        let source: Mac = source.try_into().unwrap_or([0; 6]);
        // A multicast source is invalid: never learn it.
        if !is_multicast(&source) {
            self.learn(source, port, now);
        }
        if is_multicast(&destination) {
            return Forward::Flood;
        }
        match self.lookup(&destination, now) {
            Some(target) if target == port => Forward::Drop,
            Some(target) => Forward::Port(target),
            None => Forward::Flood,
        }
    }

    /// Forgets everything learned on `port` (its guest went away).
    pub fn remove_port(&mut self, port: PortId) {
        self.table.retain(|entry| entry.port != port);
    }

    /// The port `mac` was last seen on, if it is still fresh.
    pub fn lookup(&self, mac: &Mac, now: u64) -> Option<PortId> {
        self.table
            .iter()
            .find(|entry| &entry.mac == mac && now.saturating_sub(entry.seen) <= self.max_age)
            .map(|entry| entry.port)
    }

    /// The fresh entries at tick `now`: (MAC, port, ticks since last seen),
    /// in table order.
    pub fn entries(&self, now: u64) -> impl Iterator<Item = (Mac, PortId, u64)> + '_ {
        self.table.iter().filter_map(move |entry| {
            let age = now.saturating_sub(entry.seen);
            (age <= self.max_age).then_some((entry.mac, entry.port, age))
        })
    }

    /// Entries in the table (including stale ones not yet replaced).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether nothing is learned.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    fn learn(&mut self, mac: Mac, port: PortId, now: u64) {
        if let Some(entry) = self.table.iter_mut().find(|entry| entry.mac == mac) {
            // A station that moved is now behind the new port.
            entry.port = port;
            entry.seen = now;
            return;
        }
        let entry = Entry { mac, port, seen: now };
        if self.table.try_push(entry).is_err() {
            // Full: replace the stalest entry, so a flood of fake source
            // addresses can only age out real ones, never grow the table.
            if let Some(oldest) = self.table.iter_mut().min_by_key(|entry| entry.seen) {
                *oldest = entry;
            }
        }
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

    #[test]
    fn learns_and_forwards() {
        let mut switch = Switch::<8>::new(100);
        assert_eq!(switch.forward(1, &frame(B, A), 0), Forward::Flood, "B unknown yet");
        assert_eq!(switch.forward(2, &frame(A, B), 1), Forward::Port(1), "A learned on port 1");
        assert_eq!(switch.forward(1, &frame(B, A), 2), Forward::Port(2), "B learned on port 2");
        assert_eq!(switch.forward(1, &frame(BROADCAST, A), 3), Forward::Flood);
        assert_eq!(switch.forward(1, &frame(A, C), 4), Forward::Drop, "to its own port");
        assert_eq!(switch.lookup(&C, 4), Some(1));
    }

    #[test]
    fn the_table_can_be_listed() {
        let mut switch = Switch::<8>::new(10);
        switch.forward(1, &frame(B, A), 0);
        switch.forward(2, &frame(A, B), 5);
        let listed: Vec<_> = switch.entries(8).collect();
        assert_eq!(listed, vec![(A, 1, 8), (B, 2, 3)]);
        assert_eq!(switch.entries(12).collect::<Vec<_>>(), vec![(B, 2, 7)], "A aged out");
    }

    #[test]
    fn stations_move_and_age_out() {
        let mut switch = Switch::<8>::new(10);
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
        let mut switch = Switch::<4>::new(1_000);
        assert_eq!(switch.forward(1, &[1, 2, 3], 0), Forward::Drop, "runt frame");
        assert_eq!(switch.forward(1, &frame(A, BROADCAST), 0), Forward::Flood);
        assert!(switch.is_empty(), "a multicast source is never learned");
        for n in 0..1000u32 {
            let mut source = [0x02, 0, 0, 0, 0, 0];
            source[2..].copy_from_slice(&n.to_be_bytes());
            switch.forward(5, &frame(B, source), n as u64);
        }
        assert_eq!(switch.len(), 4, "bounded");
        switch.forward(2, &frame(A, B), 2000);
        assert_eq!(switch.lookup(&B, 2000), Some(2), "a real station still gets in");
    }
}
