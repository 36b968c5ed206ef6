//! The net back end's checking and configuration, independent of the
//! hardware: guests' vif entries (`vif = [...]`), their MAC addresses, and
//! the validation of every request a front end puts on its rings (copied
//! out by the ring code, then checked here field by field before any copy).
//! The software switch between the vifs and the NIC is [`switch`].
//!
//! The net back end's I/O, `netback.rs` in this folder, is the binary's
//! (declared in `main.rs`).

pub mod switch;

use core::fmt;

use abi::net::{FRAME_MAX, FRAME_MIN, TX_EXTRA_SLOTS, TX_FRAME_SLOTS};
use abi::xen::io::net::{
    NETTXF_CSUM_BLANK, NETTXF_DATA_VALIDATED, NETTXF_EXTRA_INFO, NETTXF_MORE_DATA, NetifExtraInfo, NetifRxRequest,
    NetifTxRequest, XEN_NETIF_EXTRA_FLAG_MORE,
};
use zerocopy::{FromBytes, IntoBytes};

/// One checked data slot of a transmitted frame: where its bytes lie in
/// the granted page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxPlan {
    pub grant: u32,
    pub offset: u16,
    pub size: u16,
}

/// Why a frame is refused (every slot answered `NETIF_RSP_ERROR`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A transmit flag this back end does not know.
    UnknownFlag,
    /// Extra-info slots (GSO and the like), which this back end does not
    /// offer.
    ExtraInfo,
    /// The grant reference is outside any grant table.
    BadGrant,
    /// The frame is shorter than a header or longer than `FRAME_MAX`, or
    /// its later slots hold more bytes than the first slot's total.
    BadSize,
    /// A slot runs past the end of its page.
    PastPage,
    /// `NETTXF_CSUM_BLANK` on a frame that is not an unfragmented IPv4 TCP
    /// or UDP packet inside the frame.
    NoChecksum,
}

/// Checks a data slot's grant and range (`size` is the slot's own bytes).
fn check_slot(grant: u32, offset: u16, size: u16) -> Result<TxPlan, Refusal> {
    if grant == 0 || grant as usize >= abi::xen::grant_table::GRANT_TABLE_ENTRIES {
        return Err(Refusal::BadGrant);
    }
    if offset as usize + size as usize > abi::PAGE_SIZE as usize {
        return Err(Refusal::PastPage);
    }
    Ok(TxPlan { grant, offset, size })
}

/// What a frame under assembly needs next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Its next slot: pass it to [`TxFrame::add`].
    Slot,
    /// Nothing: the frame is whole (see [`TxFrame::outcome`]).
    Done,
    /// The front end broke the protocol: disconnect it.
    Fatal(&'static str),
}

/// A transmitted frame assembled slot by slot as it is taken off the ring
/// (`abi::net`, Transmit ring): the first slot, its extra-info slots,
/// then its data slots. Every slot taken is answered once the frame is
/// whole: [`TxFrame::responses`] lists them in ring order.
#[derive(Clone, Debug)]
pub struct TxFrame {
    first: NetifTxRequest,
    /// Data slots (the first included): plans and ids.
    plans: [TxPlan; TX_FRAME_SLOTS],
    ids: [u16; TX_FRAME_SLOTS],
    slots: usize,
    /// Extra-info slots taken.
    extras: usize,
    /// Extra-info slots still to come.
    expect_extra: bool,
    /// Data slots still to come.
    expect_data: bool,
    /// Bytes of the later data slots.
    later_bytes: usize,
    refusal: Option<Refusal>,
}

/// The transmit flags this back end knows (`abi::net`).
const KNOWN_TX_FLAGS: u16 = NETTXF_CSUM_BLANK | NETTXF_DATA_VALIDATED | NETTXF_MORE_DATA | NETTXF_EXTRA_INFO;

impl TxFrame {
    /// Starts a frame at its first slot.
    pub fn start(first: &NetifTxRequest) -> TxFrame {
        let mut frame = TxFrame {
            first: *first,
            plans: [TxPlan::default(); TX_FRAME_SLOTS],
            ids: [0; TX_FRAME_SLOTS],
            slots: 1,
            extras: 0,
            expect_extra: first.flags & NETTXF_EXTRA_INFO != 0,
            expect_data: first.flags & NETTXF_MORE_DATA != 0,
            later_bytes: 0,
            refusal: None,
        };
        frame.ids[0] = first.id;
        if first.flags & !KNOWN_TX_FLAGS != 0 {
            frame.refuse(Refusal::UnknownFlag);
        } else if frame.expect_extra {
            frame.refuse(Refusal::ExtraInfo);
        } else if !(FRAME_MIN..=FRAME_MAX).contains(&(first.size as usize)) {
            frame.refuse(Refusal::BadSize);
        }
        frame
    }

    fn refuse(&mut self, refusal: Refusal) {
        self.refusal.get_or_insert(refusal);
    }

    /// What the frame needs next.
    pub fn next(&self) -> Next {
        if self.expect_extra || self.expect_data { Next::Slot } else { Next::Done }
    }

    /// Adds the next slot the front end published for this frame.
    pub fn add(&mut self, slot: &NetifTxRequest) -> Next {
        if self.expect_extra {
            // The slot's bytes are an extra-info header, not a request.
            let extra = NetifExtraInfo::read_from_bytes(slot.as_bytes()).unwrap_or_default();
            self.extras += 1;
            if self.extras > TX_EXTRA_SLOTS {
                return Next::Fatal("more than 4 extra-info slots in a transmitted frame");
            }
            self.expect_extra = extra.flags & XEN_NETIF_EXTRA_FLAG_MORE != 0;
        } else if self.expect_data {
            if self.slots == TX_FRAME_SLOTS {
                return Next::Fatal("more than 18 slots in a transmitted frame");
            }
            if slot.flags & !KNOWN_TX_FLAGS != 0 {
                self.refuse(Refusal::UnknownFlag);
            }
            self.ids[self.slots] = slot.id;
            match check_slot(slot.gref, slot.offset, slot.size) {
                Ok(plan) => self.plans[self.slots] = plan,
                Err(refusal) => self.refuse(refusal),
            }
            self.slots += 1;
            self.later_bytes += slot.size as usize;
            self.expect_data = slot.flags & NETTXF_MORE_DATA != 0;
        }
        self.next()
    }

    /// The checked data slots of a whole frame, in frame order, or why it
    /// is refused.
    pub fn outcome(&mut self) -> Result<&[TxPlan], Refusal> {
        if self.refusal.is_none() {
            match (self.first.size as usize).checked_sub(self.later_bytes) {
                Some(own) => match check_slot(self.first.gref, self.first.offset, own as u16) {
                    Ok(plan) => self.plans[0] = plan,
                    Err(refusal) => self.refuse(refusal),
                },
                None => self.refuse(Refusal::BadSize),
            }
        }
        match self.refusal {
            Some(refusal) => Err(refusal),
            None => Ok(&self.plans[..self.slots]),
        }
    }

    /// The frame's length (the first slot's `size`).
    pub fn length(&self) -> usize {
        self.first.size as usize
    }

    /// Whether the front end left the checksum for the back end to fill.
    pub fn checksum_blank(&self) -> bool {
        self.first.flags & NETTXF_CSUM_BLANK != 0
    }

    /// The slots to answer, in ring order: `(id, true)` for a data slot,
    /// `(0, false)` for an extra-info slot (answered `NETIF_RSP_NULL`).
    pub fn responses(&self) -> impl Iterator<Item = (u16, bool)> + '_ {
        let first = core::iter::once((self.ids[0], true));
        let extras = core::iter::repeat_n((0, false), self.extras);
        first.chain(extras).chain(self.ids[1..self.slots].iter().map(|&id| (id, true)))
    }
}

/// Checks a posted receive buffer; returns its grant reference. Its `pad`
/// is ignored (Linux's netfront leaves it unwritten).
pub fn check_rx(request: &NetifRxRequest) -> Result<u32, Refusal> {
    if request.gref == 0 || request.gref as usize >= abi::xen::grant_table::GRANT_TABLE_ENTRIES {
        return Err(Refusal::BadGrant);
    }
    Ok(request.gref)
}

/// EtherType of IPv4.
const ETHERTYPE_IPV4: u16 = 0x0800;
/// IPv4 protocol numbers, and where each one's checksum lies in its header.
const PROTOCOL_TCP: u8 = 6;
const PROTOCOL_UDP: u8 = 17;
const TCP_CHECKSUM: usize = 16;
const UDP_CHECKSUM: usize = 6;

/// Fills the TCP or UDP checksum of the IPv4 packet in Ethernet `frame`
/// (`NETTXF_CSUM_BLANK`): the checksum field is recomputed over the
/// pseudo-header and the whole segment (RFC 793, RFC 768), whatever it
/// held. Refused unless the frame holds an unfragmented IPv4 TCP or UDP
/// packet whose header and segment lie inside the frame.
pub fn fill_checksum(frame: &mut [u8]) -> Result<(), Refusal> {
    let be16 = |bytes: &[u8], at: usize| u16::from_be_bytes([bytes[at], bytes[at + 1]]);
    let header = abi::net::HEADER;
    if frame.len() < header + 20 || be16(frame, 12) != ETHERTYPE_IPV4 {
        return Err(Refusal::NoChecksum);
    }
    let ip = &frame[header..];
    let ip_header = (ip[0] & 15) as usize * 4;
    let total = be16(ip, 2) as usize;
    let fragment = be16(ip, 6);
    // Version 4, a legal header length, a packet inside the frame, and no
    // fragment (more-fragments bit or an offset): only whole segments can
    // be summed.
    if ip[0] >> 4 != 4 || ip_header < 20 || total < ip_header || total > ip.len() || fragment & 0x3fff != 0 {
        return Err(Refusal::NoChecksum);
    }
    let protocol = ip[9];
    let (checksum_at, minimum) = match protocol {
        PROTOCOL_TCP => (TCP_CHECKSUM, 20),
        PROTOCOL_UDP => (UDP_CHECKSUM, 8),
        _ => return Err(Refusal::NoChecksum),
    };
    let segment_length = total - ip_header;
    if segment_length < minimum {
        return Err(Refusal::NoChecksum);
    }
    let mut pseudo = [0u8; 12];
    pseudo[..8].copy_from_slice(&ip[12..20]);
    pseudo[9] = protocol;
    pseudo[10..].copy_from_slice(&(segment_length as u16).to_be_bytes());
    let segment = &mut frame[header + ip_header..header + total];
    segment[checksum_at..checksum_at + 2].fill(0);
    let mut checksum = !fold(sum_words(&pseudo) + sum_words(segment));
    if protocol == PROTOCOL_UDP && checksum == 0 {
        // UDP's 0 means "no checksum"; its sum is sent as all ones.
        checksum = 0xffff;
    }
    segment[checksum_at..checksum_at + 2].copy_from_slice(&checksum.to_be_bytes());
    Ok(())
}

/// The one's complement sum of `bytes` as big-endian 16-bit words (an odd
/// last byte padded with zero), not yet folded.
fn sum_words(bytes: &[u8]) -> u64 {
    let mut words = bytes.chunks_exact(2);
    let sum: u64 = words.by_ref().map(|pair| u64::from(u16::from_be_bytes([pair[0], pair[1]]))).sum();
    sum + words.remainder().first().map_or(0, |&last| u64::from(last) << 8)
}

/// Folds a one's complement sum to 16 bits.
fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// A parsed `vif` entry: comma-separated `key=value` settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VifSpec {
    /// `mac=xx:xx:xx:xx:xx:xx`; None: dom0 chooses one.
    pub mac: Option<[u8; 6]>,
}

/// Why a vif entry was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VifSpecError {
    /// A setting that is not `key=value`.
    Syntax,
    /// A key other than `mac`.
    UnknownKey,
    /// Not six pairs of hex digits.
    BadMac,
    /// A multicast or all-zero address cannot be a station's.
    NotUnicast,
}

impl fmt::Display for VifSpecError {
    fn fmt(&self, out: &mut fmt::Formatter) -> fmt::Result {
        out.write_str(match self {
            VifSpecError::Syntax => "expected comma-separated key=value settings, e.g. \"mac=02:00:00:00:00:01\"",
            VifSpecError::UnknownKey => "the only setting is \"mac\"",
            VifSpecError::BadMac => "a MAC address is six pairs of hex digits separated by ':'",
            VifSpecError::NotUnicast => "the MAC address must be unicast and not all zero",
        })
    }
}

/// Parses one entry of a config's `vif = [...]` list ("" is all defaults).
pub fn parse_vif(entry: &str) -> Result<VifSpec, VifSpecError> {
    let mut spec = VifSpec { mac: None };
    for setting in entry.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (key, value) = setting.split_once('=').ok_or(VifSpecError::Syntax)?;
        match key.trim() {
            "mac" => {
                let mac = abi::net::parse_mac(value.trim()).ok_or(VifSpecError::BadMac)?;
                if mac[0] & 1 != 0 || mac == [0; 6] {
                    return Err(VifSpecError::NotUnicast);
                }
                spec.mac = Some(mac);
            }
            _ => return Err(VifSpecError::UnknownKey),
        }
    }
    Ok(spec)
}

/// The MAC address dom0 gives vif `index` of domain `domain` when its
/// config names none: locally administered (02:), "Mi", then the vif and
/// the domain id, so it is unique on the switch.
pub fn default_mac(domain: u32, index: u8) -> [u8; 6] {
    [0x02, b'M', b'i', index, (domain >> 8) as u8, domain as u8]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_random::XorShift;

    use abi::xen::io::net::{NETTXF_CSUM_BLANK, NETTXF_DATA_VALIDATED};

    fn tx(gref: u32, offset: u16, size: u16) -> NetifTxRequest {
        NetifTxRequest { gref, offset, flags: 0, id: 1, size }
    }

    fn more(request: NetifTxRequest) -> NetifTxRequest {
        NetifTxRequest { flags: request.flags | NETTXF_MORE_DATA, ..request }
    }

    /// Assembles a frame from its slots as the back end takes them.
    fn assemble(slots: &[NetifTxRequest]) -> (Next, TxFrame) {
        let mut frame = TxFrame::start(&slots[0]);
        let mut next = frame.next();
        for slot in &slots[1..] {
            assert_eq!(next, Next::Slot, "a slot past the frame's end");
            next = frame.add(slot);
        }
        (next, frame)
    }

    fn plan(slots: &[NetifTxRequest]) -> Result<Vec<TxPlan>, Refusal> {
        let (next, mut frame) = assemble(slots);
        assert_eq!(next, Next::Done);
        frame.outcome().map(<[TxPlan]>::to_vec)
    }

    #[test]
    fn one_slot_frames_stay_inside_their_page() {
        assert_eq!(plan(&[tx(5, 0, 60)]), Ok(vec![TxPlan { grant: 5, offset: 0, size: 60 }]));
        assert_eq!(plan(&[tx(5, 4096 - 1514, 1514)]).map(|p| p[0].size), Ok(1514));
        assert_eq!(plan(&[tx(5, 4096 - 1513, 1514)]), Err(Refusal::PastPage));
        assert_eq!(plan(&[tx(5, u16::MAX, 1514)]), Err(Refusal::PastPage));
        assert_eq!(plan(&[tx(5, 0, 13)]), Err(Refusal::BadSize));
        assert_eq!(plan(&[tx(5, 0, 1515)]), Err(Refusal::BadSize));
        assert_eq!(plan(&[tx(0, 0, 60)]), Err(Refusal::BadGrant));
        assert_eq!(plan(&[tx(2047, 0, 60)]).map(|p| p[0].grant), Ok(2047), "the last of four frames");
        assert_eq!(plan(&[tx(2048, 0, 60)]), Err(Refusal::BadGrant));
        assert_eq!(plan(&[NetifTxRequest { flags: 1 << 4, ..tx(5, 0, 60) }]), Err(Refusal::UnknownFlag));
        let rx = |gref, pad| NetifRxRequest { id: 0, pad, gref };
        assert_eq!(check_rx(&rx(3, 0)), Ok(3));
        assert_eq!(check_rx(&rx(3, 0xffff)), Ok(3), "pad is Linux's leftover, ignored");
        assert_eq!(check_rx(&rx(u32::MAX, 0)), Err(Refusal::BadGrant));
        assert_eq!(check_rx(&rx(0, 0)), Err(Refusal::BadGrant));
    }

    #[test]
    fn linux_checksum_flags_are_accepted() {
        for flags in [NETTXF_CSUM_BLANK | NETTXF_DATA_VALIDATED, NETTXF_DATA_VALIDATED, NETTXF_CSUM_BLANK] {
            let (_, frame) = assemble(&[NetifTxRequest { flags, ..tx(5, 0, 60) }]);
            assert_eq!(frame.clone().outcome().map(<[TxPlan]>::len), Ok(1), "{flags:#x}");
            assert_eq!(frame.checksum_blank(), flags & NETTXF_CSUM_BLANK != 0);
        }
    }

    #[test]
    fn a_frame_in_several_slots_as_netfront_builds_it() {
        // 1514 bytes: 100 at the end of one page, then 1414 in the next,
        // the first slot's size the whole frame's.
        let slots = [more(NetifTxRequest { id: 7, ..tx(5, 3996, 1514) }), NetifTxRequest { id: 8, ..tx(6, 0, 1414) }];
        assert_eq!(
            plan(&slots),
            Ok(vec![TxPlan { grant: 5, offset: 3996, size: 100 }, TxPlan { grant: 6, offset: 0, size: 1414 }])
        );
        let (_, frame) = assemble(&slots);
        assert_eq!(frame.responses().collect::<Vec<_>>(), [(7, true), (8, true)]);
        assert_eq!(frame.length(), 1514);
        // Later slots holding more than the total, or a later slot past its
        // page: the whole frame is refused, every slot still answered.
        let (_, mut frame) = assemble(&[more(tx(5, 0, 60)), more(tx(6, 0, 40)), tx(7, 0, 30)]);
        assert_eq!(frame.outcome(), Err(Refusal::BadSize));
        assert_eq!(frame.responses().count(), 3);
        assert_eq!(plan(&[more(tx(5, 0, 1000)), tx(6, 4000, 200)]), Err(Refusal::PastPage));
        assert_eq!(plan(&[more(tx(5, 0, 1000)), tx(0, 0, 200)]), Err(Refusal::BadGrant));
        // The most slots Linux uses is accepted; one more is fatal.
        let mut slots = vec![more(tx(5, 0, 18 * 60))];
        slots.extend((1..18).map(|index| more(tx(5 + index, 0, 60))));
        slots[17].flags = 0;
        assert_eq!(plan(&slots).map(|plans| plans.len()), Ok(18));
        slots[17].flags = NETTXF_MORE_DATA;
        slots.push(tx(40, 0, 60));
        assert_eq!(assemble(&slots).0, Next::Fatal("more than 18 slots in a transmitted frame"));
    }

    #[test]
    fn extra_info_is_refused_with_the_ring_in_step() {
        use abi::xen::io::net::{NETTXF_EXTRA_INFO, XEN_NETIF_EXTRA_TYPE_GSO};
        // A GSO frame as Linux's netfront sends one: first slot, its extra
        // slot, then a data slot.
        let first = NetifTxRequest { id: 3, flags: NETTXF_EXTRA_INFO | NETTXF_MORE_DATA, ..tx(5, 0, 3000) };
        let extra = |flags| {
            let info = NetifExtraInfo { kind: XEN_NETIF_EXTRA_TYPE_GSO, flags, body: [0xaa; 10] };
            NetifTxRequest::read_from_bytes(info.as_bytes()).unwrap()
        };
        let data = NetifTxRequest { id: 4, ..tx(6, 0, 1500) };
        let (next, mut frame) = assemble(&[first, extra(0), data]);
        assert_eq!(next, Next::Done);
        assert_eq!(frame.outcome(), Err(Refusal::ExtraInfo));
        assert_eq!(frame.responses().collect::<Vec<_>>(), [(3, true), (0, false), (4, true)]);
        // Chained extras (FLAG_MORE) are taken too, up to four.
        let (next, frame) = assemble(&[first, extra(XEN_NETIF_EXTRA_FLAG_MORE), extra(0), data]);
        assert_eq!((next, frame.responses().count()), (Next::Done, 4));
        let chain = [first, extra(1), extra(1), extra(1), extra(1), extra(0)];
        assert_eq!(assemble(&chain).0, Next::Fatal("more than 4 extra-info slots in a transmitted frame"));
    }

    /// An Ethernet frame holding an IPv4 packet from 10.0.0.1 to 10.0.0.2
    /// of `protocol` with `segment` (checksum field as given).
    fn ipv4_frame(protocol: u8, segment: &[u8]) -> Vec<u8> {
        let mut frame = vec![0xff; 12];
        frame.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let total = (20 + segment.len()) as u16;
        frame.extend_from_slice(&[0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, protocol, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
        frame[16..18].copy_from_slice(&total.to_be_bytes());
        frame.extend_from_slice(segment);
        frame
    }

    #[test]
    fn blank_checksums_are_filled() {
        // UDP 1234 -> 5678 carrying "hello": checksum 0x8cff (computed
        // apart from this code), whatever the front end left in the field
        // (Linux leaves the pseudo-header's sum there).
        let mut udp = vec![0x04, 0xd2, 0x16, 0x2e, 0, 13, 0x12, 0x34];
        udp.extend_from_slice(b"hello");
        let mut frame = ipv4_frame(PROTOCOL_UDP, &udp);
        frame.extend_from_slice(&[0; 4]); // padding past the IP packet is not summed
        assert_eq!(fill_checksum(&mut frame), Ok(()));
        assert_eq!(&frame[34 + 6..34 + 8], &[0x8c, 0xff]);
        // A TCP SYN 40000 -> 80, seq 1, window 65535: 0xff4e.
        let mut tcp = vec![0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0xab, 0xcd, 0, 0];
        let mut frame = ipv4_frame(PROTOCOL_TCP, &tcp);
        assert_eq!(fill_checksum(&mut frame), Ok(()));
        assert_eq!(&frame[34 + 16..34 + 18], &[0xff, 0x4e]);
        // A filled segment sums to all ones with its pseudo-header.
        tcp[16..18].copy_from_slice(&[0xff, 0x4e]);
        let pseudo = [10, 0, 0, 1, 10, 0, 0, 2, 0, 6, 0, 20];
        assert_eq!(fold(sum_words(&pseudo) + sum_words(&tcp)), 0xffff);
        // Refused: not IPv4, ICMP, a fragment, a packet longer than the
        // frame, a segment shorter than its header.
        let mut arp = ipv4_frame(PROTOCOL_UDP, &udp);
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        let mut fragment = ipv4_frame(PROTOCOL_UDP, &udp);
        fragment[20] = 0x20; // more fragments
        let mut long = ipv4_frame(PROTOCOL_UDP, &udp);
        long[17] += 1;
        for mut bad in [arp, ipv4_frame(1, &udp), fragment, long, ipv4_frame(PROTOCOL_TCP, &udp[..8]), vec![0; 20]] {
            assert_eq!(fill_checksum(&mut bad), Err(Refusal::NoChecksum));
        }
    }

    #[test]
    fn a_udp_sum_of_zero_is_sent_as_all_ones() {
        // Find a payload whose checksum comes out 0, then check it is sent
        // as 0xffff.
        let found = (0..=u16::MAX).find_map(|word| {
            let mut udp = vec![0, 1, 0, 2, 0, 10, 0, 0];
            udp.extend_from_slice(&word.to_be_bytes());
            let mut frame = ipv4_frame(PROTOCOL_UDP, &udp);
            fill_checksum(&mut frame).unwrap();
            let pseudo = [10, 0, 0, 1, 10, 0, 0, 2, 0, 17, 0, 10];
            udp[6..8].fill(0);
            (fold(sum_words(&pseudo) + sum_words(&udp)) == 0xffff).then_some(frame)
        });
        let frame = found.expect("some payload sums to zero");
        assert_eq!(&frame[34 + 6..34 + 8], &[0xff, 0xff]);
    }

    #[test]
    fn fuzzed_frames_are_refused_or_safe() {
        let mut random = XorShift(0x005e_ed0f_f00d);
        let mut accepted = 0;
        for _ in 0..100_000 {
            let mut slots = Vec::new();
            for index in 0..1 + random.below(4) {
                let bits = random.next();
                slots.push(NetifTxRequest {
                    id: index as u16,
                    flags: if random.below(4) == 0 { bits as u16 >> 3 & 0x1f } else { NETTXF_MORE_DATA },
                    gref: if random.below(4) != 0 { (bits >> 16) as u32 % 600 } else { (bits >> 16) as u32 },
                    offset: if random.below(4) != 0 { (bits >> 48) as u16 % 2048 } else { (bits >> 48) as u16 },
                    size: (random.next() as u16) % if index == 0 { 2048 } else { 400 },
                });
            }
            let mut frame = TxFrame::start(&slots[0]);
            let mut next = frame.next();
            for slot in &slots[1..] {
                if next != Next::Slot {
                    break;
                }
                next = frame.add(slot);
            }
            if next != Next::Done {
                continue;
            }
            let length = frame.length();
            if let Ok(plans) = frame.outcome() {
                accepted += 1;
                assert!((FRAME_MIN..=FRAME_MAX).contains(&length));
                assert_eq!(plans.iter().map(|plan| plan.size as usize).sum::<usize>(), length);
                for plan in plans {
                    assert!(plan.grant > 0 && (plan.grant as usize) < abi::xen::grant_table::GRANT_TABLE_ENTRIES);
                    assert!(plan.offset as usize + plan.size as usize <= 4096);
                }
            }
        }
        assert!(accepted > 1000, "the fuzzer must reach the accepting path ({accepted})");
    }

    #[test]
    fn vif_entries() {
        assert_eq!(parse_vif(""), Ok(VifSpec { mac: None }));
        assert_eq!(parse_vif("mac=02:00:00:00:00:01"), Ok(VifSpec { mac: Some([2, 0, 0, 0, 0, 1]) }));
        assert_eq!(parse_vif(" mac = 02:00:00:00:00:01 , "), Ok(VifSpec { mac: Some([2, 0, 0, 0, 0, 1]) }));
        assert_eq!(parse_vif("mac=01:00:5e:00:00:01"), Err(VifSpecError::NotUnicast));
        assert_eq!(parse_vif("mac=00:00:00:00:00:00"), Err(VifSpecError::NotUnicast));
        assert_eq!(parse_vif("mac=02:00:00:00:00"), Err(VifSpecError::BadMac));
        assert_eq!(parse_vif("bridge=xenbr0"), Err(VifSpecError::UnknownKey));
        assert_eq!(parse_vif("mac"), Err(VifSpecError::Syntax));
        assert_ne!(default_mac(1, 0), default_mac(2, 0));
        assert_ne!(default_mac(1, 0), default_mac(1, 1));
        assert_ne!(default_mac(1, 0), default_mac(257, 0));
        assert_eq!(default_mac(7, 0)[0] & 3, 2, "locally administered unicast");
    }
}
