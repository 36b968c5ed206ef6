//! The Intel 8254x (e1000) as dom0's driver sees it, without the hardware:
//! register offsets and bits, legacy descriptor encoding, ring index
//! arithmetic, the MAC address registers and the frames `arp_probe` sends and
//! parses. Section numbers refer to the "PCI/PCI-X Family of Gigabit Ethernet
//! Controllers Software Developer's Manual" (8254x SDM, rev. 4.0).

/// Register offsets in BAR0 (8254x SDM 13.1, table 13-2).
pub mod register {
    /// Device Control.
    pub const CTRL: u32 = 0x0000;
    /// Device Status.
    pub const STATUS: u32 = 0x0008;
    /// EEPROM Read (not on every 8254x; the 82540EM has it).
    pub const EERD: u32 = 0x0014;
    /// Interrupt Cause Read (read to clear).
    pub const ICR: u32 = 0x00c0;
    /// Interrupt Mask Set/Read.
    pub const IMS: u32 = 0x00d0;
    /// Interrupt Mask Clear.
    pub const IMC: u32 = 0x00d8;
    /// Receive Control.
    pub const RCTL: u32 = 0x0100;
    /// Transmit Control.
    pub const TCTL: u32 = 0x0400;
    /// Transmit Inter Packet Gap.
    pub const TIPG: u32 = 0x0410;
    /// Receive Descriptor Base Address Low / High, Length, Head, Tail.
    pub const RDBAL: u32 = 0x2800;
    pub const RDBAH: u32 = 0x2804;
    pub const RDLEN: u32 = 0x2808;
    pub const RDH: u32 = 0x2810;
    pub const RDT: u32 = 0x2818;
    /// Transmit Descriptor Base Address Low / High, Length, Head, Tail.
    pub const TDBAL: u32 = 0x3800;
    pub const TDBAH: u32 = 0x3804;
    pub const TDLEN: u32 = 0x3808;
    pub const TDH: u32 = 0x3810;
    pub const TDT: u32 = 0x3818;
    /// Missed Packets Count (clear on read).
    pub const MPC: u32 = 0x4010;
    /// Multicast Table Array: 128 dwords.
    pub const MTA: u32 = 0x5200;
    /// Entries of the Multicast Table Array.
    pub const MTA_ENTRIES: u32 = 128;
    /// Receive Address 0, low and high dwords.
    pub const RAL0: u32 = 0x5400;
    pub const RAH0: u32 = 0x5404;
    /// Bytes of register space the driver touches (all registers above lie below).
    pub const USED_BYTES: u64 = 0x6000;
}

/// CTRL bits (8254x SDM 13.4.1).
pub mod ctrl {
    /// FD: full duplex.
    pub const FULL_DUPLEX: u32 = 1 << 0;
    /// LRST: link reset (must be 0 for the link to come up).
    pub const LINK_RESET: u32 = 1 << 3;
    /// ASDE: auto-speed detection.
    pub const AUTO_SPEED_DETECTION: u32 = 1 << 5;
    /// SLU: set link up.
    pub const SET_LINK_UP: u32 = 1 << 6;
    /// ILOS: invert loss-of-signal.
    pub const INVERT_LOSS_OF_SIGNAL: u32 = 1 << 7;
    /// RST: device reset; self-clearing.
    pub const RESET: u32 = 1 << 26;
    /// VME: VLAN mode enable.
    pub const VLAN_MODE: u32 = 1 << 30;
    /// PHY_RST: PHY reset.
    pub const PHY_RESET: u32 = 1 << 31;
}

/// STATUS bits (8254x SDM 13.4.2).
pub mod status {
    /// LU: link up.
    pub const LINK_UP: u32 = 1 << 1;
}

/// Interrupt cause bits, the same in ICR, IMS and IMC (8254x SDM 13.4.17).
pub mod interrupt {
    /// TXDW: a transmit descriptor was written back.
    pub const TX_DESCRIPTOR_WRITTEN: u32 = 1 << 0;
    /// LSC: link status change.
    pub const LINK_STATUS_CHANGE: u32 = 1 << 2;
    /// RXDMT0: receive descriptors below the minimum threshold.
    pub const RX_DESCRIPTOR_MINIMUM: u32 = 1 << 4;
    /// RXO: receiver overrun.
    pub const RX_OVERRUN: u32 = 1 << 6;
    /// RXT0: receiver timer (a frame arrived).
    pub const RX_TIMER: u32 = 1 << 7;
    /// The causes dom0 enables.
    pub const ENABLED: u32 = TX_DESCRIPTOR_WRITTEN | LINK_STATUS_CHANGE | RX_DESCRIPTOR_MINIMUM | RX_OVERRUN | RX_TIMER;
}

/// RCTL bits (8254x SDM 13.4.22).
pub mod rctl {
    /// EN: receiver enable.
    pub const ENABLE: u32 = 1 << 1;
    /// UPE: unicast promiscuous: accept frames for every MAC address (the
    /// NIC is a port of dom0's switch, behind which the guests' MACs live).
    pub const UNICAST_PROMISCUOUS: u32 = 1 << 3;
    /// MPE: multicast promiscuous.
    pub const MULTICAST_PROMISCUOUS: u32 = 1 << 4;
    /// RDMTS = 00b: RXDMT0 when half the descriptors are left.
    pub const MINIMUM_THRESHOLD_HALF: u32 = 0 << 8;
    /// BAM: accept broadcast frames.
    pub const BROADCAST_ACCEPT: u32 = 1 << 15;
    /// BSIZE = 00b with BSEX = 0: 2048-byte receive buffers.
    pub const BUFFER_SIZE_2048: u32 = 0 << 16;
    /// SECRC: strip the Ethernet CRC from received frames.
    pub const STRIP_CRC: u32 = 1 << 26;
}

/// TCTL bits and fields (8254x SDM 13.4.33).
pub mod tctl {
    /// EN: transmitter enable.
    pub const ENABLE: u32 = 1 << 1;
    /// PSP: pad short packets to 64 bytes.
    pub const PAD_SHORT_PACKETS: u32 = 1 << 3;
    /// CT: collision threshold, 0x0F as recommended (half duplex only).
    pub const COLLISION_THRESHOLD: u32 = 0x0f << 4;
    /// COLD: collision distance, 0x40 for full duplex (64-byte time).
    pub const COLLISION_DISTANCE: u32 = 0x40 << 12;
}

/// TIPG for the 82540EM's copper interface: IPGT 10, IPGR1 8, IPGR2 6
/// (8254x SDM 13.4.34).
pub const TIPG_COPPER: u32 = 10 | 8 << 10 | 6 << 20;

/// EERD fields (8254x SDM 13.4.4).
pub mod eerd {
    /// START: begin a read.
    pub const START: u32 = 1 << 0;
    /// DONE: the read finished.
    pub const DONE: u32 = 1 << 4;
    /// ADDR starts at this bit.
    pub const ADDRESS_SHIFT: u32 = 8;
    /// DATA starts at this bit.
    pub const DATA_SHIFT: u32 = 16;
}

/// RAH bit 31: AV, the address is valid (8254x SDM 13.4.62).
pub const RAH_ADDRESS_VALID: u32 = 1 << 31;

/// Size of every receive and transmit buffer.
pub const BUFFER_SIZE: usize = 2048;
/// Bytes of one legacy descriptor.
pub const DESCRIPTOR_SIZE: usize = 16;
/// Shortest frame accepted for transmission: an Ethernet header.
pub const FRAME_MIN: usize = 14;
/// Longest frame: 1500 bytes of payload after the header, no FCS.
pub const FRAME_MAX: usize = 1514;

/// Legacy transmit descriptor command bits (8254x SDM 3.3.3.1).
pub mod tx_command {
    /// EOP: last descriptor of the packet.
    pub const END_OF_PACKET: u8 = 1 << 0;
    /// IFCS: insert the FCS.
    pub const INSERT_FCS: u8 = 1 << 1;
    /// RS: report status (write DD back).
    pub const REPORT_STATUS: u8 = 1 << 3;
}

/// Descriptor status bit 0, DD: the device is done with it (receive and
/// transmit, 8254x SDM 3.2.3.1 and 3.3.3.2).
pub const DESCRIPTOR_DONE: u8 = 1 << 0;
/// Receive status bit 1, EOP: last descriptor of the frame.
pub const RX_END_OF_PACKET: u8 = 1 << 1;
/// Receive error bits: CE, SE, SEQ, CXE, RXE (8254x SDM 3.2.3.2); the
/// checksum errors (TCPE, IPE) are not frame errors.
pub const RX_FRAME_ERRORS: u8 = 1 << 0 | 1 << 1 | 1 << 2 | 1 << 4 | 1 << 7;

/// A legacy transmit descriptor for one whole frame, as the two
/// little-endian quadwords the device reads.
pub fn tx_descriptor(buffer: u64, length: u16) -> [u64; 2] {
    let command = tx_command::END_OF_PACKET | tx_command::INSERT_FCS | tx_command::REPORT_STATUS;
    [buffer, length as u64 | (command as u64) << 24]
}

/// The status byte of a transmit descriptor's second quadword.
pub fn tx_status(high: u64) -> u8 {
    (high >> 32) as u8
}

/// A receive descriptor handed to the device: the buffer, status cleared.
pub fn rx_descriptor(buffer: u64) -> [u64; 2] {
    [buffer, 0]
}

/// The fields of a receive descriptor the device wrote back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxWriteBack {
    pub length: u16,
    pub status: u8,
    pub errors: u8,
}

impl RxWriteBack {
    /// Decodes the second quadword (length, checksum, status, errors, special).
    pub fn decode(high: u64) -> RxWriteBack {
        RxWriteBack { length: high as u16, status: (high >> 32) as u8, errors: (high >> 40) as u8 }
    }

    /// Whether the device is done with the descriptor.
    pub fn done(&self) -> bool {
        self.status & DESCRIPTOR_DONE != 0
    }

    /// The length of a good, whole frame in a `BUFFER_SIZE` buffer, or
    /// `None` for an error, a frame spread over several buffers, a runt, or
    /// a length beyond the buffer (the device is not trusted either).
    pub fn frame_length(&self) -> Option<usize> {
        let length = self.length as usize;
        let whole = self.status & RX_END_OF_PACKET != 0;
        (whole && self.errors & RX_FRAME_ERRORS == 0 && (FRAME_MIN..=BUFFER_SIZE).contains(&length)).then_some(length)
    }
}

/// The transmit ring's indices: the driver fills slots at `next_to_use`
/// (the value it writes to TDT) and reclaims finished ones from
/// `next_to_clean`. One slot stays empty so that a full ring never looks
/// empty to the device (head == tail means empty).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TxRing<const N: usize> {
    next_to_use: usize,
    next_to_clean: usize,
}

impl<const N: usize> TxRing<N> {
    pub const fn new() -> TxRing<N> {
        TxRing { next_to_use: 0, next_to_clean: 0 }
    }

    /// Frames handed to the device and not reclaimed yet.
    pub fn in_flight(&self) -> usize {
        (self.next_to_use + N - self.next_to_clean) % N
    }

    /// The slot to fill next, if the ring has room; [`TxRing::commit`] it
    /// once filled.
    pub fn free_slot(&self) -> Option<usize> {
        (self.in_flight() < N - 1).then_some(self.next_to_use)
    }

    /// Hands the slot from [`TxRing::free_slot`] to the device; returns the new tail.
    pub fn commit(&mut self) -> usize {
        self.next_to_use = (self.next_to_use + 1) % N;
        self.next_to_use
    }

    /// Reclaims finished slots in order while `done(slot)` says the device
    /// wrote them back; returns how many.
    pub fn reclaim(&mut self, mut done: impl FnMut(usize) -> bool) -> usize {
        let mut reclaimed = 0;
        while self.next_to_clean != self.next_to_use && done(self.next_to_clean) {
            self.next_to_clean = (self.next_to_clean + 1) % N;
            reclaimed += 1;
        }
        reclaimed
    }
}

/// The receive ring's index: the next slot the device fills. The driver
/// gives every slot but one to the device: after taking slot `i` it writes
/// `i` to RDT, which gives back the slot before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RxRing<const N: usize> {
    next: usize,
}

impl<const N: usize> RxRing<N> {
    pub const fn new() -> RxRing<N> {
        RxRing { next: 0 }
    }

    /// RDT after setup: slots 0..N-1 belong to the device.
    pub const fn initial_tail() -> usize {
        N - 1
    }

    /// The slot to look at for the next frame.
    pub fn next(&self) -> usize {
        self.next
    }

    /// Done with the current slot (it was reset for the device): returns the
    /// new RDT and moves on.
    pub fn advance(&mut self) -> usize {
        let tail = self.next;
        self.next = (self.next + 1) % N;
        tail
    }
}

/// The MAC address in RAL0/RAH0, if marked valid.
pub fn mac_from_receive_address(low: u32, high: u32) -> Option<[u8; 6]> {
    if high & RAH_ADDRESS_VALID == 0 {
        return None;
    }
    let [a, b, c, d] = low.to_le_bytes();
    let [e, f, _, _] = high.to_le_bytes();
    Some([a, b, c, d, e, f])
}

/// RAL0/RAH0 values for `mac`, marked valid.
pub fn receive_address_for(mac: [u8; 6]) -> (u32, u32) {
    let low = u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]);
    let high = u16::from_le_bytes([mac[4], mac[5]]) as u32 | RAH_ADDRESS_VALID;
    (low, high)
}

/// The MAC address from the first three EEPROM words (8254x SDM 5.6.1).
pub fn mac_from_eeprom(words: [u16; 3]) -> [u8; 6] {
    let [a, b] = words[0].to_le_bytes();
    let [c, d] = words[1].to_le_bytes();
    let [e, f] = words[2].to_le_bytes();
    [a, b, c, d, e, f]
}

/// Whether `mac` can be a station address (not multicast, not all zero).
pub fn is_unicast(mac: [u8; 6]) -> bool {
    mac[0] & 1 == 0 && mac != [0; 6]
}

/// Bytes of an ARP request frame (before padding).
pub const ARP_FRAME_LENGTH: usize = 42;

/// A broadcast ARP request from `mac` (sender IP `sender_ip`) for `target_ip` (RFC 826).
pub fn arp_request(mac: [u8; 6], sender_ip: [u8; 4], target_ip: [u8; 4]) -> [u8; ARP_FRAME_LENGTH] {
    let mut frame = [0u8; ARP_FRAME_LENGTH];
    frame[0..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&mac);
    frame[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    // Ethernet (1), IPv4 (0x0800), address lengths 6 and 4, request (1).
    frame[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    frame[22..28].copy_from_slice(&mac);
    frame[28..32].copy_from_slice(&sender_ip);
    // Target hardware address unknown: zero.
    frame[38..42].copy_from_slice(&target_ip);
    frame
}

/// The sender's hardware address if `frame` is an ARP reply from `ip` to `mac`.
pub fn arp_reply_from(frame: &[u8], mac: [u8; 6], ip: [u8; 4]) -> Option<[u8; 6]> {
    let frame = frame.get(..ARP_FRAME_LENGTH)?;
    let is_reply = frame[12..14] == [0x08, 0x06] && frame[14..22] == [0, 1, 8, 0, 6, 4, 0, 2];
    if !is_reply || frame[28..32] != ip || frame[32..38] != mac {
        return None;
    }
    let mut sender = [0u8; 6];
    sender.copy_from_slice(&frame[22..28]);
    is_unicast(sender).then_some(sender)
}

/// What the driver counts, for the `devices` listing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NicStats {
    /// Frames queued for transmission.
    pub tx_frames: u64,
    /// Bytes in those frames.
    pub tx_bytes: u64,
    /// Frames refused because the transmit ring was full.
    pub tx_dropped: u64,
    /// Good frames received.
    pub rx_frames: u64,
    /// Bytes in those frames.
    pub rx_bytes: u64,
    /// Received descriptors dropped: errors, frames over several buffers,
    /// runts, impossible lengths.
    pub rx_errors: u64,
    /// Frames the device missed for lack of descriptors (its MPC register).
    pub rx_missed: u64,
    /// Interrupt cause reads that found a cause (0 when polling).
    pub interrupts: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_encode_and_decode() {
        let [address, high] = tx_descriptor(0x1234_5000, 60);
        assert_eq!(address, 0x1234_5000);
        assert_eq!(high, 60 | 0x0b << 24);
        assert_eq!(tx_status(high), 0);
        assert_eq!(tx_status(high | 1 << 32), DESCRIPTOR_DONE);
        assert_eq!(rx_descriptor(0x8000), [0x8000, 0]);
        // length 64, checksum 0xabcd, status DD|EOP, errors 0, special 0.
        let written = RxWriteBack::decode(64 | 0xabcd << 16 | 0x03 << 32);
        assert_eq!(written, RxWriteBack { length: 64, status: 3, errors: 0 });
        assert!(written.done());
        assert_eq!(written.frame_length(), Some(64));
    }

    #[test]
    fn bad_receive_descriptors_are_refused() {
        let good = RxWriteBack { length: 60, status: DESCRIPTOR_DONE | RX_END_OF_PACKET, errors: 0 };
        assert_eq!(good.frame_length(), Some(60));
        assert_eq!(RxWriteBack { errors: 1, ..good }.frame_length(), None);
        assert_eq!(RxWriteBack { errors: 0x80, ..good }.frame_length(), None);
        // A checksum error alone is not a frame error.
        assert_eq!(RxWriteBack { errors: 0x20, ..good }.frame_length(), Some(60));
        assert_eq!(RxWriteBack { status: DESCRIPTOR_DONE, ..good }.frame_length(), None);
        assert_eq!(RxWriteBack { length: 13, ..good }.frame_length(), None);
        assert_eq!(RxWriteBack { length: 2048, ..good }.frame_length(), Some(2048));
        assert_eq!(RxWriteBack { length: 2049, ..good }.frame_length(), None);
        assert_eq!(RxWriteBack { length: u16::MAX, ..good }.frame_length(), None);
        assert!(!RxWriteBack { status: 0, ..good }.done());
    }

    #[test]
    fn transmit_ring_keeps_one_slot_free_and_reclaims_in_order() {
        let mut ring = TxRing::<4>::new();
        let mut tails = Vec::new();
        while let Some(slot) = ring.free_slot() {
            assert_eq!(slot, tails.len());
            tails.push(ring.commit());
        }
        assert_eq!(tails, [1, 2, 3]);
        assert_eq!(ring.in_flight(), 3);
        // The device finished slots 0 and 1, not 2.
        assert_eq!(ring.reclaim(|slot| slot < 2), 2);
        assert_eq!(ring.in_flight(), 1);
        assert_eq!(ring.free_slot(), Some(3));
        assert_eq!(ring.commit(), 0);
        assert_eq!(ring.free_slot(), Some(0));
        assert_eq!(ring.commit(), 1);
        assert_eq!(ring.free_slot(), None);
        // Nothing past next_to_use is ever reclaimed, whatever the device says.
        assert_eq!(ring.reclaim(|_| true), 3);
        assert_eq!(ring.reclaim(|_| true), 0);
        assert_eq!(ring.in_flight(), 0);
    }

    #[test]
    fn transmit_ring_against_a_random_device() {
        let mut random = crate::test_random::XorShift(7);
        let mut ring = TxRing::<8>::new();
        let (mut head, mut tail) = (0usize, 0usize); // the device's view
        let mut sent = 0;
        for _ in 0..10_000 {
            if random.next().is_multiple_of(2) {
                if let Some(slot) = ring.free_slot() {
                    assert_eq!(slot, tail);
                    tail = ring.commit();
                    sent += 1;
                }
            } else if head != tail {
                head = (head + 1) % 8; // the device finishes one
            }
            // The device wrote back exactly the slots from next_to_clean up to its head.
            let clean = ring.next_to_clean;
            ring.reclaim(|slot| (slot + 8 - clean) % 8 < (head + 8 - clean) % 8);
            assert_eq!(ring.next_to_clean, head);
            assert!(ring.in_flight() < 8);
        }
        assert!(sent > 1000);
    }

    #[test]
    fn receive_ring_gives_back_the_slot_it_took() {
        let mut ring = RxRing::<4>::new();
        assert_eq!(RxRing::<4>::initial_tail(), 3);
        let taken: Vec<(usize, usize)> = (0..6)
            .map(|_| {
                let slot = ring.next();
                (slot, ring.advance())
            })
            .collect();
        assert_eq!(taken, [(0, 0), (1, 1), (2, 2), (3, 3), (0, 0), (1, 1)]);
    }

    #[test]
    fn mac_addresses() {
        let mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        let (low, high) = receive_address_for(mac);
        assert_eq!((low, high), (0x1200_5452, 0x8000_5634));
        assert_eq!(mac_from_receive_address(low, high), Some(mac));
        assert_eq!(mac_from_receive_address(low, high & !RAH_ADDRESS_VALID), None);
        assert_eq!(mac_from_eeprom([0x5452, 0x1200, 0x5634]), mac);
        assert!(is_unicast(mac));
        assert!(!is_unicast([0; 6]));
        assert!(!is_unicast([0xff; 6]));
        assert!(!is_unicast([0x01, 0, 0x5e, 0, 0, 1]));
    }

    #[test]
    fn arp_request_and_reply() {
        let mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        let host = [0xb0, 0xc4, 0x20, 0, 0, 1];
        let request = arp_request(mac, [192, 168, 10, 2], [192, 168, 10, 1]);
        assert_eq!(&request[..6], &[0xff; 6]);
        assert_eq!(&request[12..22], &[8, 6, 0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&request[38..42], &[192, 168, 10, 1]);
        // The reply: to us, from the host, opcode 2, addresses swapped.
        let mut reply = [0u8; 60];
        reply[..6].copy_from_slice(&mac);
        reply[6..12].copy_from_slice(&host);
        reply[12..14].copy_from_slice(&[8, 6]);
        reply[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
        reply[22..28].copy_from_slice(&host);
        reply[28..32].copy_from_slice(&[192, 168, 10, 1]);
        reply[32..38].copy_from_slice(&mac);
        reply[38..42].copy_from_slice(&[192, 168, 10, 2]);
        assert_eq!(arp_reply_from(&reply, mac, [192, 168, 10, 1]), Some(host));
        assert_eq!(arp_reply_from(&reply, mac, [192, 168, 10, 9]), None);
        assert_eq!(arp_reply_from(&reply, host, [192, 168, 10, 1]), None);
        assert_eq!(arp_reply_from(&reply[..41], mac, [192, 168, 10, 1]), None);
        assert_eq!(arp_reply_from(&request, mac, [192, 168, 10, 1]), None);
    }
}
