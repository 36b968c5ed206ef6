//! Targets for what a front end writes on its rings: block and net requests
//! as dom0's back ends decode and check them, and the ring indices a hostile
//! front end can set to anything.
#![allow(unsafe_code, reason = "the ring target hands a raw page to the ring code, as dom0 does")]

use core::fmt::Debug;
use core::mem::{offset_of, size_of};

use abi::net::{FRAME_MAX, FRAME_MIN};
use abi::xen::io::block::{
    BLKIF_ENTRY_SIZE, BLKIF_RING_SIZE, BLKIF_SECTOR_SIZE, BlkifOp, BlkifRequest, BlkifRequestSegment, BlkifResponse,
};
use abi::xen::io::net::{
    NETIF_RSP_OKAY, NETIF_RX_ENTRY_SIZE, NETIF_RX_RING_SIZE, NETIF_TX_ENTRY_SIZE, NETIF_TX_RING_SIZE, NetifRxRequest,
    NetifRxResponse, NetifTxRequest, NetifTxResponse,
};
use abi::xen::io::{SRING_HEADER_SIZE, SringHeader};
use dom0core::backends::block::{Plan, Region, plan, plan_indirect, response_operation};
use dom0core::backends::net::{Next, TxFrame, check_rx, fill_checksum};
use pv_drivers::ring::{BackRing, RingError, Slot};

use crate::bytes::Bytes;

/// One block request from the ring, checked against a region of the disk:
/// a request that is accepted moves whole sectors within one page per
/// segment and never leaves the region.
pub fn block_request(data: &[u8]) {
    let mut input = Bytes::new(data);
    let region = region(&mut input);
    let request = entry::<BlkifRequest>(&input.array::<{ size_of::<BlkifRequest>() }>());
    check_block_request(&request, &region);
}

/// A region as `disk_spec` accepts one: at least one sector, not wrapping.
fn region(input: &mut Bytes) -> Region {
    let start = input.u64().min(u64::MAX - 1);
    let sectors = input.u64().clamp(1, u64::MAX - start);
    Region { start, sectors, readonly: input.byte() & 1 != 0 }
}

fn check_block_request(request: &BlkifRequest, region: &Region) {
    const SECTOR_SIZE: u64 = BLKIF_SECTOR_SIZE as u64;
    let Ok(planned) = plan(request, region) else { return };
    // An indirect request's segments stand in a page of the guest's: here
    // the input's own segment bytes, repeated to the count it names.
    let (planned, segments, sector) = match planned {
        Plan::Indirect(indirect) => {
            assert_eq!(request.operation, BlkifOp::Indirect.number());
            let segments: Vec<BlkifRequestSegment> =
                request.seg.iter().cycle().take(indirect.segments).copied().collect();
            let Ok(planned) = plan_indirect(&indirect, &segments, region) else { return };
            (planned, segments, indirect.sector)
        }
        planned => (planned, request.seg.to_vec(), request.sector_number),
    };
    // What a response names: the operation inside an indirect request.
    let operation = response_operation(request);
    let transfers = match planned {
        Plan::Flush => {
            assert_eq!(request.operation, BlkifOp::FlushDiskcache.number());
            return;
        }
        Plan::Read(transfers) => {
            assert_eq!(operation, BlkifOp::Read.number());
            transfers
        }
        Plan::Write(transfers) => {
            assert_eq!(operation, BlkifOp::Write.number());
            assert!(!region.readonly, "a write planned on a read-only disk");
            transfers
        }
        Plan::Indirect(_) => panic!("an indirect request planned as indirect again"),
    };
    let expected =
        if request.operation == BlkifOp::Indirect.number() { segments.len() } else { request.nr_segments as usize };
    assert_eq!(transfers.len(), expected);
    let region_end = region.start + region.sectors;
    let mut next_sector = region.start.checked_add(sector).expect("accepted sector past the region");
    for (transfer, segment) in transfers.iter().zip(&segments) {
        assert_eq!(transfer.grant, segment.gref);
        let bytes = u64::from(transfer.bytes);
        assert!(bytes > 0 && bytes.is_multiple_of(SECTOR_SIZE), "{transfer:?}");
        assert!(u64::from(transfer.offset).is_multiple_of(SECTOR_SIZE));
        assert!(u64::from(transfer.offset) + bytes <= abi::PAGE_SIZE, "transfer past its page: {transfer:?}");
        assert_eq!(transfer.disk_sector, next_sector, "segments are contiguous on the disk");
        next_sector = transfer.disk_sector + bytes / SECTOR_SIZE;
        assert!(transfer.disk_sector >= region.start && next_sector <= region_end, "{request:?} left {region:?}");
    }
}

/// Net requests, 12 bytes at a time, as dom0's back end takes them: the
/// transmit slots are assembled into frames (a first slot, its extra-info
/// and data slots), and each slot's first 8 bytes are also decoded as a
/// posted receive buffer. A whole frame that is accepted has a legal
/// length, equal to its data slots' bytes, each inside its page and naming
/// a grant in the table; every slot taken is answered once; an accepted
/// receive buffer names a grant in the table. The input is also filled as
/// a frame with a blank checksum: filling twice changes nothing more.
pub fn net_request(data: &[u8]) {
    let mut slots = data.chunks(size_of::<NetifTxRequest>()).map(|chunk| {
        let mut bytes = [0u8; size_of::<NetifTxRequest>()];
        bytes[..chunk.len()].copy_from_slice(chunk);
        check_receive(&entry(&bytes));
        entry::<NetifTxRequest>(&bytes)
    });
    while let Some(first) = slots.next() {
        let mut frame = TxFrame::start(&first);
        let mut taken = 1;
        let mut next = frame.next();
        while next == Next::Slot {
            // Slots missing at the end of the input are the ring's
            // "runs past the published requests".
            let Some(slot) = slots.next() else { return };
            taken += 1;
            next = frame.add(&slot);
        }
        if let Next::Fatal(_) = next {
            return;
        }
        assert_eq!(frame.responses().count(), taken, "every slot is answered once");
        check_frame(&mut frame);
    }
    let mut frame = data[..data.len().min(FRAME_MAX)].to_vec();
    if fill_checksum(&mut frame).is_ok() {
        let filled = frame.clone();
        assert_eq!(fill_checksum(&mut frame), Ok(()));
        assert_eq!(frame, filled, "a filled checksum is filled again the same");
    }
}

fn check_frame(frame: &mut TxFrame) {
    let length = frame.length();
    let Ok(plans) = frame.outcome() else { return };
    assert!((FRAME_MIN..=FRAME_MAX).contains(&length), "{plans:?}");
    assert_eq!(plans.iter().map(|plan| plan.size as usize).sum::<usize>(), length);
    for plan in plans {
        assert!(plan.grant != 0 && (plan.grant as usize) < abi::grant::ENTRIES, "{plan:?}");
        assert!(plan.offset as usize + plan.size as usize <= abi::PAGE_SIZE as usize, "{plan:?}");
    }
}

/// A transmit slot taken off the ring alone, as the first of a frame.
fn check_transmit(request: &NetifTxRequest) {
    let mut frame = TxFrame::start(request);
    if frame.next() == Next::Done {
        check_frame(&mut frame);
    }
}

fn check_receive(request: &NetifRxRequest) {
    let Ok(grant) = check_rx(request) else { return };
    assert_eq!(grant, request.gref);
    assert!(grant != 0 && (grant as usize) < abi::grant::ENTRIES, "{request:?}");
}

/// The entry of type `T` at the start of `bytes` (as long as one), as the
/// ring copies it out of a slot: any bytes are a value.
fn entry<T: Slot>(bytes: &[u8]) -> T {
    T::read_from_prefix(bytes).expect("bytes for a whole entry").0
}

/// A back end's ring (block, net transmit or net receive, by the first
/// byte) driven by a hostile front end: the rest of the input is a script
/// of front-end writes (any header word, any slot byte) and back-end
/// operations. A model of the protocol predicts every outcome: the back
/// end takes a request only when the front end published it and a slot is
/// free of unanswered requests, reports corruption otherwise without
/// changing state, copies exactly the slot's bytes, and writes responses
/// only into the slots of requests it took.
pub fn ring(data: &[u8]) {
    let mut input = Bytes::new(data);
    match input.byte() % 3 {
        0 => drive::<BlkifRequest, BlkifResponse, { BLKIF_RING_SIZE as usize }, BLKIF_ENTRY_SIZE>(
            &mut input,
            |request| check_block_request(request, &Region { start: 2048, sectors: 8192, readonly: false }),
            |request| BlkifResponse { id: request.id, operation: request.operation, ..BlkifResponse::default() },
        ),
        1 => drive::<NetifTxRequest, NetifTxResponse, { NETIF_TX_RING_SIZE as usize }, NETIF_TX_ENTRY_SIZE>(
            &mut input,
            check_transmit,
            |request| NetifTxResponse { id: request.id, status: NETIF_RSP_OKAY },
        ),
        _ => drive::<NetifRxRequest, NetifRxResponse, { NETIF_RX_RING_SIZE as usize }, NETIF_RX_ENTRY_SIZE>(
            &mut input,
            check_receive,
            |request| NetifRxResponse { id: request.id, offset: 0, flags: 0, status: 60 },
        ),
    }
}

/// The shared ring page.
#[repr(C, align(4096))]
struct Page([u8; 4096]);

/// A page on the heap, touched only through raw pointers while a ring uses it.
struct SharedPage(*mut Page);

impl SharedPage {
    fn new() -> SharedPage {
        SharedPage(Box::into_raw(Box::new(Page([0; 4096]))))
    }

    fn base(&self) -> *mut u8 {
        self.0.cast()
    }

    fn write(&self, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= 4096);
        for (index, &byte) in bytes.iter().enumerate() {
            // SAFETY: inside the live page (checked above); no reference to
            // it exists, the ring reads it only through raw pointers too.
            unsafe { self.base().add(offset + index).write_volatile(byte) };
        }
    }

    fn read(&self, offset: usize, out: &mut [u8]) {
        assert!(offset + out.len() <= 4096);
        for (index, byte) in out.iter_mut().enumerate() {
            // SAFETY: as for `write`.
            *byte = unsafe { self.base().add(offset + index).read_volatile() };
        }
    }

    fn word(&self, offset: usize) -> u32 {
        let mut bytes = [0; 4];
        self.read(offset, &mut bytes);
        u32::from_ne_bytes(bytes)
    }

    fn set_word(&self, offset: usize, value: u32) {
        self.write(offset, &value.to_ne_bytes());
    }
}

impl Drop for SharedPage {
    fn drop(&mut self) {
        // SAFETY: made by `Box::into_raw` in `new`; the ring that used the
        // page was dropped before (it is declared after the page).
        drop(unsafe { Box::from_raw(self.0) });
    }
}

const REQ_PROD: usize = offset_of!(SringHeader, req_prod);
const REQ_EVENT: usize = offset_of!(SringHeader, req_event);
const RSP_PROD: usize = offset_of!(SringHeader, rsp_prod);

fn drive<Req, Rsp, const SLOTS: usize, const SLOT_SIZE: usize>(
    input: &mut Bytes,
    check: impl Fn(&Req),
    respond: impl Fn(&Req) -> Rsp,
) where
    Req: Slot + PartialEq + Debug,
    Rsp: Slot + PartialEq + Debug,
{
    let page = SharedPage::new();
    // SAFETY: the page is 4 KiB, page-aligned, writable, outlives the ring
    // (dropped after it), and is only accessed through raw pointers.
    let mut back = unsafe { BackRing::<Req, Rsp, SLOTS, SLOT_SIZE>::attach(page.base()) };
    let slot_offset = |index: u32| SRING_HEADER_SIZE + index as usize % SLOTS * SLOT_SIZE;
    let slot = |index: u32| {
        let mut bytes = [0u8; SLOT_SIZE];
        page.read(slot_offset(index), &mut bytes);
        bytes
    };
    // The model: requests taken, responses written, responses published,
    // and req_prod as the back end last accepted it (it takes requests up
    // to there without reading req_prod again).
    let (mut taken, mut answered, mut published, mut checked) = (0u32, 0u32, 0u32, 0u32);
    // Whether the back end would accept `req_prod` when it reads it now.
    let legal = |req_prod: u32, taken: u32, answered: u32| {
        let unanswered = req_prod.wrapping_sub(answered);
        unanswered <= SLOTS as u32 && req_prod.wrapping_sub(taken) <= unanswered
    };
    let mut steps = 0;
    while !input.is_empty() && steps < 4096 {
        steps += 1;
        match input.byte() % 7 {
            0 => {
                let word = input.byte() as usize % (SRING_HEADER_SIZE / 4) * 4;
                page.set_word(word, input.u32());
            }
            1 => {
                let index = u32::from(input.byte());
                let bytes = input.take(SLOT_SIZE);
                page.write(slot_offset(index), bytes);
            }
            2 => {
                // An honest-looking producer index near the window, so the
                // script reaches the accepting paths without guessing it.
                let ahead = u32::from(input.byte()) % (SLOTS as u32 + 2);
                page.set_word(REQ_PROD, answered.wrapping_add(ahead));
            }
            3 => {
                let req_prod = page.word(REQ_PROD);
                let expected: Req = entry(&slot(taken));
                let result = back.pop_request();
                if taken != checked {
                    // Inside the batch accepted before: req_prod is not read.
                    assert_eq!(result, Ok(Some(expected)), "not the bytes of slot {taken}");
                    taken = taken.wrapping_add(1);
                    check(&expected);
                    continue;
                }
                match result {
                    Err(RingError::Corrupt) => assert!(!legal(req_prod, taken, answered), "corrupt on a good index"),
                    Err(RingError::Full) => panic!("pop_request never reports Full"),
                    Ok(None) => assert_eq!(req_prod, taken),
                    Ok(Some(request)) => {
                        assert!(legal(req_prod, taken, answered) && req_prod != taken);
                        assert_eq!(request, expected, "not the bytes of slot {taken}");
                        checked = req_prod;
                        taken = taken.wrapping_add(1);
                        check(&request);
                    }
                }
            }
            4 => {
                let response = respond(&entry(&slot(answered)));
                match back.push_response(&response) {
                    Ok(()) => {
                        assert_ne!(answered, taken, "a response with no request taken");
                        let written: Rsp = entry(&slot(answered));
                        assert_eq!(written, response, "response not in its request's slot");
                        answered = answered.wrapping_add(1);
                    }
                    Err(error) => assert_eq!((error, answered), (RingError::Full, taken)),
                }
            }
            5 => {
                let _notify = back.publish_responses();
                if published != answered {
                    assert_eq!(page.word(RSP_PROD), answered);
                    published = answered;
                }
            }
            _ => {
                let req_prod = page.word(REQ_PROD);
                let armed = back.arm_request_event();
                if taken != checked {
                    assert!(armed, "requests of the accepted batch are pending");
                } else if !legal(req_prod, taken, answered) {
                    assert!(armed, "corruption is reported, not waited on");
                } else if req_prod != taken {
                    assert!(armed);
                    checked = req_prod;
                } else {
                    assert!(!armed);
                    assert_eq!(page.word(REQ_EVENT), taken.wrapping_add(1));
                }
            }
        }
        assert!(taken.wrapping_sub(answered) <= SLOTS as u32, "more requests taken than slots");
        assert!(checked.wrapping_sub(answered) <= SLOTS as u32, "a batch past the ring");
    }
    // `back` is dropped before `page` (declared after it).
}
