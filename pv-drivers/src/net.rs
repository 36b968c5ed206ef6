//! The network front end's ring logic (`abi::net`, on Xen's netif
//! entries): the transmit and
//! receive rings, and the bookkeeping of the buffer pages granted to dom0.
//! It moves frames in and out of those pages (through [`GuestMemory`]) and
//! tells the caller when to notify dom0; `netfront` connects it through the
//! store and owns the event channel. Responses are checked like requests in
//! a back end: a response for a buffer that is not in flight marks the vif
//! broken.
#![forbid(unsafe_code)]

use abi::net::{FRAME_MAX, FRAME_MIN};
use abi::xen::io::net::{
    NETIF_RSP_NULL, NETIF_RSP_OKAY, NETIF_RX_ENTRY_SIZE, NETIF_RX_RING_SIZE, NETIF_TX_ENTRY_SIZE, NETIF_TX_RING_SIZE,
    NETRXF_MORE_DATA, NETTXF_MORE_DATA, NetifRxRequest, NetifRxResponse, NetifTxRequest, NetifTxResponse,
};

use crate::platform::GuestMemory;
use crate::ring::{BackRing, FrontRing, RingError};

/// Entries in the transmit ring (256).
const TX_SLOTS: usize = NETIF_TX_RING_SIZE as usize;
/// Entries in the receive ring (256).
const RX_SLOTS: usize = NETIF_RX_RING_SIZE as usize;

/// The transmit ring's front end.
pub type TxFront = FrontRing<NetifTxRequest, NetifTxResponse, TX_SLOTS, NETIF_TX_ENTRY_SIZE>;
/// The transmit ring's back end.
pub type TxBack = BackRing<NetifTxRequest, NetifTxResponse, TX_SLOTS, NETIF_TX_ENTRY_SIZE>;
/// The receive ring's front end.
pub type RxFront = FrontRing<NetifRxRequest, NetifRxResponse, RX_SLOTS, NETIF_RX_ENTRY_SIZE>;
/// The receive ring's back end.
pub type RxBack = BackRing<NetifRxRequest, NetifRxResponse, RX_SLOTS, NETIF_RX_ENTRY_SIZE>;

/// Transmit buffers (one page each, one frame a page).
pub const TX_BUFFERS: usize = 16;
/// Receive buffers posted to dom0 (one page each).
pub const RX_BUFFERS: usize = 32;

/// Why the front end could not do what was asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetError {
    /// Every transmit buffer is in flight: try again after dom0 answers.
    Full,
    /// The frame is shorter than a header or longer than [`FRAME_MAX`].
    BadFrame,
    /// dom0 broke the protocol (a runaway index, an answer for a buffer not
    /// in flight); the vif is no longer used.
    Broken,
}

/// A buffer page: its address in this domain and its grant to dom0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Buffer {
    pub address: u64,
    pub grant: u32,
}

/// Counters of one vif.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    pub tx_frames: u64,
    pub tx_errors: u64,
    pub rx_frames: u64,
    pub rx_errors: u64,
}

/// The front end of one vif.
#[derive(Debug)]
pub struct NetFront {
    tx: TxFront,
    rx: RxFront,
    tx_buffers: [Buffer; TX_BUFFERS],
    rx_buffers: [Buffer; RX_BUFFERS],
    /// Bit `i`: transmit buffer `i` is in flight.
    tx_in_flight: u32,
    /// Bit `i`: receive buffer `i` is posted to dom0.
    rx_posted: u32,
    broken: bool,
    pub stats: NetStats,
}

const _: () = assert!(TX_BUFFERS <= 32 && RX_BUFFERS <= 32);

impl NetFront {
    /// A front end on both rings (made fresh: see
    /// [`GuestMemory::front_ring`]) and the buffer pages. Every buffer's
    /// address must be a page of the memory passed to the methods below,
    /// granted to dom0 as `grant` (read-write for receive buffers) and used
    /// by nothing else. Nothing is posted yet: call
    /// [`NetFront::post_receive_buffers`].
    pub fn new(
        tx: TxFront,
        rx: RxFront,
        tx_buffers: [Buffer; TX_BUFFERS],
        rx_buffers: [Buffer; RX_BUFFERS],
    ) -> NetFront {
        NetFront {
            tx,
            rx,
            tx_buffers,
            rx_buffers,
            tx_in_flight: 0,
            rx_posted: 0,
            broken: false,
            stats: NetStats::default(),
        }
    }

    /// Whether dom0 broke the protocol.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    fn fail<T>(&mut self) -> Result<T, NetError> {
        self.broken = true;
        Err(NetError::Broken)
    }

    /// Posts every receive buffer that is not posted. Returns whether to
    /// notify dom0.
    pub fn post_receive_buffers(&mut self) -> Result<bool, NetError> {
        if self.broken {
            return Err(NetError::Broken);
        }
        let mut posted = false;
        for index in 0..RX_BUFFERS {
            if self.rx_posted & (1 << index) != 0 {
                continue;
            }
            let request = NetifRxRequest { id: index as u16, pad: 0, gref: self.rx_buffers[index].grant };
            if self.rx.push_request(&request).is_err() {
                break;
            }
            self.rx_posted |= 1 << index;
            posted = true;
        }
        Ok(posted && self.rx.publish_requests())
    }

    /// Takes the transmit answers dom0 published, freeing their buffers.
    pub fn reclaim(&mut self) -> Result<(), NetError> {
        loop {
            match self.tx.pop_response() {
                // An extra-info slot's answer names no buffer (this front
                // end sends none, but a back end may answer so anyway).
                Ok(Some(response)) if response.status == NETIF_RSP_NULL => {}
                Ok(Some(response)) => {
                    let index = response.id as usize;
                    if index >= TX_BUFFERS || self.tx_in_flight & (1 << index) == 0 {
                        return self.fail();
                    }
                    self.tx_in_flight &= !(1 << index);
                    if response.status == NETIF_RSP_OKAY {
                        self.stats.tx_frames += 1;
                    } else {
                        self.stats.tx_errors += 1;
                    }
                }
                Ok(None) => return Ok(()),
                Err(_) => return self.fail(),
            }
        }
    }

    /// Copies `frame` into a free transmit buffer (in `memory`) and queues
    /// it. Returns whether to notify dom0.
    pub fn send(&mut self, memory: &mut impl GuestMemory, frame: &[u8]) -> Result<bool, NetError> {
        if self.broken {
            return Err(NetError::Broken);
        }
        if !(FRAME_MIN..=FRAME_MAX).contains(&frame.len()) {
            return Err(NetError::BadFrame);
        }
        self.reclaim()?;
        let index = (!self.tx_in_flight).trailing_zeros() as usize;
        if index >= TX_BUFFERS {
            return Err(NetError::Full);
        }
        let buffer = self.tx_buffers[index];
        // The buffer is not in flight, so dom0 does not read it now; the
        // frame fits its page (checked above).
        if memory.write(buffer.address, frame).is_err() {
            return self.fail();
        }
        // One slot, checksums already in the frame: no flags.
        let request =
            NetifTxRequest { gref: buffer.grant, offset: 0, flags: 0, id: index as u16, size: frame.len() as u16 };
        if self.tx.push_request(&request).is_err() {
            return Err(NetError::Full);
        }
        self.tx_in_flight |= 1 << index;
        Ok(self.tx.publish_requests())
    }

    /// Copies the next received frame (from its buffer in `memory`) into
    /// `out` (at least [`FRAME_MAX`] bytes) and posts its buffer again.
    /// `Ok(None)` when none is waiting; `Ok(Some((length, notify)))`
    /// otherwise.
    pub fn receive(&mut self, memory: &impl GuestMemory, out: &mut [u8]) -> Result<Option<(usize, bool)>, NetError> {
        if self.broken {
            return Err(NetError::Broken);
        }
        loop {
            let response = match self.rx.pop_response() {
                Ok(Some(response)) => response,
                Ok(None) => return Ok(None),
                Err(_) => return self.fail(),
            };
            let index = response.id as usize;
            if index >= RX_BUFFERS || self.rx_posted & (1 << index) == 0 {
                return self.fail();
            }
            self.rx_posted &= !(1 << index);
            let length = response.status as usize;
            let offset = response.offset as usize;
            // This front end offers no feature-sg, so a frame is one buffer.
            let good = response.status > 0
                && response.flags & NETRXF_MORE_DATA == 0
                && offset + length <= abi::PAGE_SIZE as usize
                && length <= out.len();
            if good {
                // dom0 finished with the buffer (it answered); the range lies
                // inside its page and fits `out` (checked above).
                let source = self.rx_buffers[index].address + offset as u64;
                if memory.read(source, &mut out[..length]).is_err() {
                    return self.fail();
                }
                self.stats.rx_frames += 1;
            } else {
                self.stats.rx_errors += 1;
            }
            let notify = self.post_receive_buffers()?;
            if good {
                return Ok(Some((length, notify)));
            }
        }
    }

    /// Prepares to wait: takes the transmit answers that arrived (they
    /// need no attention, so they must not stop the wait), then asks dom0
    /// to notify on its next received frame, and on its next transmit
    /// answer only when every transmit buffer is in flight (otherwise
    /// answers are taken lazily, saving a wake-up per frame sent). Returns
    /// true when something arrived that the caller must look at (a frame,
    /// a freed buffer it was waiting for, or a broken ring): do not wait.
    pub fn arm_events(&mut self) -> bool {
        if self.reclaim().is_err() {
            return true;
        }
        let tx = self.tx_in_flight() == TX_BUFFERS && self.tx.arm_response_event();
        let rx = self.rx.arm_response_event();
        tx || rx
    }

    /// Sends `frame` in two slots, as Linux's netfront sends a frame that
    /// crosses a page: its first `first` bytes at the end of one transmit
    /// buffer's page (`NETTXF_MORE_DATA`, the whole frame's `size`), the
    /// rest at the start of another's. Returns whether to notify dom0.
    pub fn send_split(&mut self, memory: &mut impl GuestMemory, frame: &[u8], first: usize) -> Result<bool, NetError> {
        if self.broken {
            return Err(NetError::Broken);
        }
        if !(FRAME_MIN..=FRAME_MAX).contains(&frame.len()) || !(1..frame.len()).contains(&first) {
            return Err(NetError::BadFrame);
        }
        self.reclaim()?;
        let head = (!self.tx_in_flight).trailing_zeros() as usize;
        let tail = (!(self.tx_in_flight | 1 << head.min(31))).trailing_zeros() as usize;
        if head >= TX_BUFFERS || tail >= TX_BUFFERS || self.tx.free_slots() < 2 {
            return Err(NetError::Full);
        }
        let page = abi::PAGE_SIZE as usize;
        let (head_buffer, tail_buffer) = (self.tx_buffers[head], self.tx_buffers[tail]);
        // Neither buffer is in flight, so dom0 does not read them now; each
        // part fits its page (a frame is at most FRAME_MAX bytes, checked
        // above).
        let (head_part, tail_part) = frame.split_at(first);
        let head_at = head_buffer.address + (page - first) as u64;
        if memory.write(head_at, head_part).is_err() || memory.write(tail_buffer.address, tail_part).is_err() {
            return self.fail();
        }
        let slots = [
            NetifTxRequest {
                gref: head_buffer.grant,
                offset: (page - first) as u16,
                flags: NETTXF_MORE_DATA,
                id: head as u16,
                size: frame.len() as u16,
            },
            NetifTxRequest {
                gref: tail_buffer.grant,
                offset: 0,
                flags: 0,
                id: tail as u16,
                size: (frame.len() - first) as u16,
            },
        ];
        for slot in &slots {
            self.tx.push_request(slot).map_err(|_| NetError::Full)?;
        }
        self.tx_in_flight |= 1 << head | 1 << tail;
        Ok(self.tx.publish_requests())
    }

    /// Queues `slots` as they are, without checks, and publishes them
    /// together (for tests of hostile front ends). A slot whose `id` names
    /// a transmit buffer takes that buffer, which must be free; other ids
    /// (an extra-info slot's bytes) take none. Returns whether to notify
    /// dom0.
    pub fn send_raw(&mut self, slots: &[NetifTxRequest]) -> Result<bool, NetError> {
        let mut taken = 0u32;
        for slot in slots {
            let index = slot.id as usize;
            if index < TX_BUFFERS {
                if (self.tx_in_flight | taken) & (1 << index) != 0 {
                    return Err(NetError::Full);
                }
                taken |= 1 << index;
            }
        }
        if self.tx.free_slots() < slots.len() {
            return Err(NetError::Full);
        }
        for slot in slots {
            self.tx.push_request(slot).map_err(|_| NetError::Full)?;
        }
        self.tx_in_flight |= taken;
        Ok(self.tx.publish_requests())
    }

    /// Transmit buffers in flight.
    pub fn tx_in_flight(&self) -> usize {
        self.tx_in_flight.count_ones() as usize
    }
}

/// The error a ring reported, as a vif error.
impl From<RingError> for NetError {
    fn from(_: RingError) -> NetError {
        NetError::Broken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Memory;

    /// Pages of a vif: both rings, then the transmit and receive buffers.
    const PAGES: usize = 2 + TX_BUFFERS + RX_BUFFERS;

    /// A front end and a model back end over host pages; grant `g` names
    /// buffer page `g - 1` (tx first, then rx).
    fn pair(memory: &mut Memory) -> (NetFront, TxBack, RxBack) {
        let buffer = |index: usize| Buffer { address: memory.page(2 + index), grant: index as u32 + 1 };
        let tx_buffers = core::array::from_fn(buffer);
        let rx_buffers = core::array::from_fn(|index| buffer(TX_BUFFERS + index));
        let (tx_page, rx_page) = (memory.page(0), memory.page(1));
        let front = NetFront::new(
            memory.front_ring(tx_page).unwrap(),
            memory.front_ring(rx_page).unwrap(),
            tx_buffers,
            rx_buffers,
        );
        (front, memory.back_ring(tx_page), memory.back_ring(rx_page))
    }

    /// `length` bytes at `offset` in the page granted as `grant`.
    fn granted(memory: &Memory, grant: u32, offset: u16, length: usize) -> Vec<u8> {
        let mut bytes = vec![0; length];
        memory.read(memory.page(2 + grant as usize - 1) + u64::from(offset), &mut bytes).unwrap();
        bytes
    }

    fn frame(length: usize, seed: u8) -> Vec<u8> {
        (0..length).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)).collect()
    }

    #[test]
    fn entries_are_xens_bytes() {
        use zerocopy::{FromBytes, IntoBytes};
        // netif_tx_request: gref 0, offset 4, flags 6, id 8, size 10.
        let request = NetifTxRequest { gref: 0xdead_beef, offset: 0x100, flags: 0x0003, id: 0x1234, size: 1514 };
        assert_eq!(request.as_bytes(), [0xef, 0xbe, 0xad, 0xde, 0, 1, 3, 0, 0x34, 0x12, 0xea, 0x05]);
        assert_eq!(NetifTxRequest::read_from_bytes(request.as_bytes()), Ok(request));
        // netif_tx_response: id 0, status 2 (int16).
        assert_eq!(NetifTxResponse { id: 9, status: -1 }.as_bytes(), [9, 0, 0xff, 0xff]);
        // netif_rx_request: id 0, pad 2, gref 4.
        assert_eq!(NetifRxRequest { id: 3, pad: 0, gref: 77 }.as_bytes(), [3, 0, 0, 0, 77, 0, 0, 0]);
        // netif_rx_response: id 0, offset 2, flags 4, status 6 (int16).
        let response = NetifRxResponse { id: 7, offset: 0x10, flags: 1, status: -1 };
        assert_eq!(response.as_bytes(), [7, 0, 0x10, 0, 1, 0, 0xff, 0xff]);
        // Both rings hold 256 entries in a page.
        assert_eq!((TX_SLOTS, RX_SLOTS), (256, 256));
    }

    #[test]
    fn a_sent_frame_is_one_slot_without_flags_and_null_answers_are_skipped() {
        let mut memory = Memory::new(PAGES);
        let (mut front, mut tx_back, _) = pair(&mut memory);
        front.send(&mut memory, &frame(60, 1)).unwrap();
        front.send(&mut memory, &frame(60, 2)).unwrap();
        let request = tx_back.pop_request().unwrap().unwrap();
        assert_eq!((request.flags, request.offset, request.size), (0, 0, 60));
        let _ = tx_back.pop_request().unwrap().unwrap();
        tx_back.push_response(&NetifTxResponse { id: 0x7777, status: NETIF_RSP_NULL }).unwrap();
        tx_back.push_response(&NetifTxResponse { id: request.id, status: NETIF_RSP_OKAY }).unwrap();
        tx_back.publish_responses();
        assert_eq!(front.reclaim(), Ok(()), "a NULL answer names no buffer");
        assert_eq!((front.tx_in_flight(), front.stats.tx_frames), (1, 1));
    }

    #[test]
    fn frames_travel_both_ways_and_buffers_are_recycled() {
        let mut memory = Memory::new(PAGES);
        let (mut front, mut tx_back, mut rx_back) = pair(&mut memory);
        front.post_receive_buffers().unwrap();
        // Many more frames than buffers, so every buffer is reused.
        for round in 0..200usize {
            let sent = frame(FRAME_MIN + round * 7 % (FRAME_MAX - FRAME_MIN), round as u8);
            front.send(&mut memory, &sent).unwrap();
            let request = tx_back.pop_request().unwrap().expect("a request");
            assert_eq!(request.size as usize, sent.len());
            assert_eq!(granted(&memory, request.gref, request.offset, sent.len()), sent);
            tx_back.push_response(&NetifTxResponse { id: request.id, status: 0 }).unwrap();
            tx_back.publish_responses();

            // The back end delivers it into a posted buffer.
            let buffer = rx_back.pop_request().unwrap().expect("a posted buffer");
            memory.write(memory.page(2 + buffer.gref as usize - 1), &sent).unwrap();
            rx_back
                .push_response(&NetifRxResponse { id: buffer.id, offset: 0, flags: 0, status: sent.len() as i16 })
                .unwrap();
            rx_back.publish_responses();
            let mut out = [0u8; FRAME_MAX];
            let (length, _) = front.receive(&memory, &mut out).unwrap().expect("a frame");
            assert_eq!(&out[..length], &sent[..]);
        }
        front.reclaim().unwrap();
        assert_eq!(front.tx_in_flight(), 0);
        assert_eq!(front.stats.tx_frames, 200);
        assert_eq!(front.stats.rx_frames, 200);
    }

    #[test]
    fn a_split_frame_crosses_a_page_as_netfronts_do() {
        let mut memory = Memory::new(PAGES);
        let (mut front, mut tx_back, _) = pair(&mut memory);
        let sent = frame(98, 5);
        front.send_split(&mut memory, &sent, 20).unwrap();
        let head = tx_back.pop_request().unwrap().unwrap();
        let tail = tx_back.pop_request().unwrap().unwrap();
        assert_eq!((head.offset, head.flags, head.size), (4096 - 20, NETTXF_MORE_DATA, 98));
        assert_eq!((tail.offset, tail.flags, tail.size), (0, 0, 78));
        let mut seen = Vec::new();
        for (slot, length) in [(head, 20), (tail, 78)] {
            seen.extend_from_slice(&granted(&memory, slot.gref, slot.offset, length));
        }
        assert_eq!(seen, sent);
        assert_eq!(front.tx_in_flight(), 2);
        for slot in [head, tail] {
            tx_back.push_response(&NetifTxResponse { id: slot.id, status: NETIF_RSP_OKAY }).unwrap();
        }
        tx_back.publish_responses();
        front.reclaim().unwrap();
        assert_eq!(front.tx_in_flight(), 0);
        assert_eq!(front.send_split(&mut memory, &sent, 0), Err(NetError::BadFrame));
        assert_eq!(front.send_split(&mut memory, &sent, 98), Err(NetError::BadFrame));
        // Raw slots: an id naming no buffer (an extra-info slot's bytes)
        // takes none; a busy buffer refuses the whole frame.
        let raw = |id| NetifTxRequest { gref: 1, offset: 0, flags: 0, id, size: 60 };
        front.send_raw(&[raw(0), raw(0xffff), raw(1)]).unwrap();
        assert_eq!(front.tx_in_flight(), 2);
        assert_eq!(front.send_raw(&[raw(2), raw(1)]), Err(NetError::Full));
        assert_eq!(front.send_raw(&[raw(2), raw(2)]), Err(NetError::Full));
        assert_eq!(front.tx_in_flight(), 2);
    }

    #[test]
    fn transmit_answers_alone_do_not_cut_a_wait_short() {
        let mut memory = Memory::new(PAGES);
        let (mut front, mut tx_back, mut rx_back) = pair(&mut memory);
        front.post_receive_buffers().unwrap();
        front.send(&mut memory, &frame(60, 1)).unwrap();
        let request = tx_back.pop_request().unwrap().unwrap();
        tx_back.push_response(&NetifTxResponse { id: request.id, status: 0 }).unwrap();
        tx_back.publish_responses();
        // Only a transmit answer waits: it is taken, and the caller may sleep.
        assert!(!front.arm_events(), "a transmit answer must not keep the front end awake");
        assert_eq!(front.tx_in_flight(), 0);
        // Transmit answers are not asked for while buffers are free...
        front.send(&mut memory, &frame(60, 2)).unwrap();
        let request = tx_back.pop_request().unwrap().unwrap();
        tx_back.push_response(&NetifTxResponse { id: request.id, status: 0 }).unwrap();
        assert!(!tx_back.publish_responses(), "no wake-up for a transmit answer with buffers free");
        // ...but are when every buffer is in flight.
        for _ in 0..TX_BUFFERS {
            front.send(&mut memory, &frame(60, 3)).unwrap();
        }
        assert!(!front.arm_events());
        let request = tx_back.pop_request().unwrap().unwrap();
        tx_back.push_response(&NetifTxResponse { id: request.id, status: 0 }).unwrap();
        assert!(tx_back.publish_responses(), "a full front end is woken by the answer that frees a buffer");
        let buffer = rx_back.pop_request().unwrap().unwrap();
        rx_back.push_response(&NetifRxResponse { id: buffer.id, offset: 0, flags: 0, status: 60 }).unwrap();
        assert!(rx_back.publish_responses(), "the receive answer must be notified");
        assert!(front.arm_events(), "a received frame ends the wait");
    }

    #[test]
    fn transmit_buffers_run_out_then_come_back() {
        let mut memory = Memory::new(PAGES);
        let (mut front, mut tx_back, _) = pair(&mut memory);
        for _ in 0..TX_BUFFERS {
            front.send(&mut memory, &frame(60, 1)).unwrap();
        }
        assert_eq!(front.send(&mut memory, &frame(60, 1)), Err(NetError::Full));
        let request = tx_back.pop_request().unwrap().unwrap();
        tx_back.push_response(&NetifTxResponse { id: request.id, status: -1 }).unwrap();
        tx_back.publish_responses();
        front.send(&mut memory, &frame(60, 2)).unwrap();
        assert_eq!(front.stats.tx_errors, 1);
        assert_eq!(front.send(&mut memory, &[0; 13]), Err(NetError::BadFrame));
        assert_eq!(front.send(&mut memory, &[0; FRAME_MAX + 1]), Err(NetError::BadFrame));
    }

    #[test]
    fn random_back_end_writes_never_get_past_the_checks() {
        use zerocopy::IntoBytes;
        let mut memory = Memory::new(PAGES);
        let mut random = crate::test_random::XorShift(0x6e65_7466_757a_7a31);
        let mut out = [0u8; FRAME_MAX];
        let (mut delivered, mut broken) = (0, 0);
        for _ in 0..300 {
            let (mut front, _, _) = pair(&mut memory);
            front.post_receive_buffers().unwrap();
            for round in 0..40 {
                // A back end that scribbles over the rings' response side:
                // producer indices and slot bytes, anything at all.
                for ring in [0, 1] {
                    let page = memory.page(ring);
                    for _ in 0..4 {
                        let offset = 4 * random.below(1024);
                        memory.write(page + offset as u64, &(random.next() as u32).to_le_bytes()).unwrap();
                    }
                    // Often a plausible producer index, so random slots are
                    // taken as answers and their fields checked.
                    if random.below(2) == 0 {
                        // rsp_prod.
                        memory.write(page + 8, &(random.below(48) as u32).to_le_bytes()).unwrap();
                    }
                }
                // Often a plausible receive answer (any flags, a status
                // around a frame's length) in one of the first slots.
                if random.below(2) == 0 {
                    let response = NetifRxResponse {
                        id: random.below(40) as u16,
                        offset: random.below(64) as u16,
                        flags: random.below(16) as u16,
                        status: random.below(1600) as i16 - 2,
                    };
                    let slot = 64 + 8 * random.below(48);
                    memory.write(memory.page(1) + slot as u64, response.as_bytes()).unwrap();
                }
                let sent = front.send(&mut memory, &frame(60 + round, round as u8));
                let received = front.receive(&memory, &mut out);
                let _ = front.reclaim();
                if let Ok(Some((length, _))) = received {
                    assert!((1..=FRAME_MAX).contains(&length), "a delivered frame fits its buffer");
                    delivered += 1;
                }
                if front.is_broken() {
                    assert_eq!(front.send(&mut memory, &frame(60, 0)), Err(NetError::Broken));
                    broken += 1;
                    break;
                }
                assert!(matches!(sent, Ok(_) | Err(NetError::Full)), "{sent:?}");
                assert!(front.tx_in_flight() <= TX_BUFFERS);
            }
        }
        // The fuzzer reached both outcomes: answers taken, and vifs broken.
        assert!(delivered > 0 && broken > 0, "delivered {delivered}, broken {broken}");
    }

    #[test]
    fn a_hostile_back_end_breaks_the_vif() {
        let mut memory = Memory::new(PAGES);
        // An answer for a transmit buffer that is not in flight.
        let (mut front, mut tx_back, _) = pair(&mut memory);
        front.send(&mut memory, &frame(60, 1)).unwrap();
        let _ = tx_back.pop_request().unwrap().unwrap();
        tx_back.push_response(&NetifTxResponse { id: 5, status: 0 }).unwrap();
        tx_back.publish_responses();
        assert_eq!(front.reclaim(), Err(NetError::Broken));
        assert_eq!(front.send(&mut memory, &frame(60, 1)), Err(NetError::Broken));

        // A received frame longer than the page, then a buffer id never posted.
        let (mut front, _, mut rx_back) = pair(&mut memory);
        front.post_receive_buffers().unwrap();
        let buffer = rx_back.pop_request().unwrap().unwrap();
        rx_back.push_response(&NetifRxResponse { id: buffer.id, offset: 4000, flags: 0, status: 200 }).unwrap();
        rx_back.publish_responses();
        let mut out = [0u8; FRAME_MAX];
        assert_eq!(front.receive(&memory, &mut out), Ok(None), "a bad frame is dropped, not delivered");
        assert_eq!(front.stats.rx_errors, 1);
        // A frame said to continue in another buffer (no feature-sg here).
        let buffer = rx_back.pop_request().unwrap().unwrap();
        let response = NetifRxResponse { id: buffer.id, offset: 0, flags: NETRXF_MORE_DATA, status: 60 };
        rx_back.push_response(&response).unwrap();
        rx_back.publish_responses();
        assert_eq!(front.receive(&memory, &mut out), Ok(None), "a frame in several buffers is dropped");
        assert_eq!(front.stats.rx_errors, 2);
        let _ = rx_back.pop_request().unwrap().unwrap();
        let _ = rx_back.pop_request().unwrap().unwrap();
        rx_back.push_response(&NetifRxResponse { id: 31, offset: 0, flags: 0, status: 60 }).unwrap();
        rx_back.push_response(&NetifRxResponse { id: RX_BUFFERS as u16, offset: 0, flags: 0, status: 60 }).unwrap();
        rx_back.publish_responses();
        // Buffer 31 is posted: its answer is fine; there is no buffer 32.
        assert!(front.receive(&memory, &mut out).unwrap().is_some());
        assert_eq!(front.receive(&memory, &mut out), Err(NetError::Broken));
        assert_eq!(front.receive(&memory, &mut out), Err(NetError::Broken), "stays broken");
    }
}
