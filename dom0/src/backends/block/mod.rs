//! The block back end's request checking: everything a guest's front end
//! writes is hostile, so a blkif request (`abi::xen::io::block`) is copied
//! out of the ring (by the ring code) and then checked here, field by
//! field, before any I/O happens. The result is a plan of disk transfers
//! that cannot leave the guest's region of the physical disk.
//!
//! The block back end's I/O, `blkback.rs` in this folder, is the binary's
//! (declared in `main.rs`).

use abi::xen::io::block::{
    BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_SECTOR_SIZE, BlkifOp, BlkifRequest, BlkifRequestIndirect,
    BlkifRequestSegment, SECTORS_PER_PAGE,
};
use arrayvec::ArrayVec;
use zerocopy::{FromBytes, IntoBytes};

/// Most segments dom0 takes in an indirect request, as it advertises them
/// (`feature-max-indirect-segments`): 32 pages are 256 sectors, the most
/// one ATA command moves, and what Linux's blkfront uses by default. Their
/// descriptors fit one indirect page (512 a page).
pub const MAX_INDIRECT_SEGMENTS: usize = 32;
/// Most transfers (segments) in one request, direct or indirect.
pub const MAX_SEGMENTS: usize = MAX_INDIRECT_SEGMENTS;
const _: () = assert!(MAX_SEGMENTS >= BLKIF_MAX_SEGMENTS_PER_REQUEST);
const _: () = assert!(MAX_INDIRECT_SEGMENTS * SECTORS_PER_PAGE as usize <= 256);
/// Bytes per sector as requests count them.
const SECTOR_SIZE: u64 = BLKIF_SECTOR_SIZE as u64;

/// One page's transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// The guest's grant reference for the page.
    pub grant: u32,
    /// Byte offset within the page.
    pub offset: u16,
    /// Bytes to move (a multiple of 512).
    pub bytes: u16,
    /// Sector on the physical disk.
    pub disk_sector: u64,
}

/// What a checked request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    Read(ArrayVec<Transfer, MAX_SEGMENTS>),
    Write(ArrayVec<Transfer, MAX_SEGMENTS>),
    Flush,
    /// An indirect request whose header passed its checks: its segments
    /// are in a page of the guest's, to be copied out and checked by
    /// [`plan_indirect`].
    Indirect(Indirect),
}

/// An indirect request's header, checked (`BLKIF_OP_INDIRECT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Indirect {
    /// A write (else a read).
    pub write: bool,
    /// First guest sector.
    pub sector: u64,
    /// Segments, `1..=MAX_INDIRECT_SEGMENTS`.
    pub segments: usize,
    /// The grant of the page holding the segments (the first
    /// `segments` of its 512 descriptors).
    pub page: u32,
}

/// The operation a response to `request` names: the request's own, or
/// for an indirect request the operation inside it (Linux's blkfront
/// checks this).
pub fn response_operation(request: &BlkifRequest) -> u8 {
    if request.operation == BlkifOp::Indirect.number() { request.nr_segments } else { request.operation }
}

/// Why a request is refused (answered `BLKIF_RSP_EOPNOTSUPP` for an
/// unknown operation, else `BLKIF_RSP_ERROR`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    UnknownOperation,
    BadSegmentCount,
    BadSegment,
    OutOfRange,
    ReadOnly,
}

/// The guest's virtual disk: a region of a physical disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First physical sector.
    pub start: u64,
    /// Sectors the guest sees.
    pub sectors: u64,
    pub readonly: bool,
}

/// Checks a request against the region and plans its transfers: reads,
/// writes and cache flushes (whose segments, if any, are ignored); any
/// other operation is unknown.
pub fn plan(request: &BlkifRequest, region: &Region) -> Result<Plan, Refusal> {
    let write = match BlkifOp::from_number(request.operation) {
        Some(BlkifOp::FlushDiskcache) => return Ok(Plan::Flush),
        Some(BlkifOp::Read) => false,
        Some(BlkifOp::Write) => true,
        Some(BlkifOp::Indirect) => return check_indirect(request, region),
        _ => return Err(Refusal::UnknownOperation),
    };
    let count = request.nr_segments as usize;
    if count > BLKIF_MAX_SEGMENTS_PER_REQUEST {
        return Err(Refusal::BadSegmentCount);
    }
    plan_segments(write, request.sector_number, &request.seg[..count], region)
}

/// Checks an indirect request's header (its segments come later, from
/// the guest's page, through [`plan_indirect`]).
fn check_indirect(request: &BlkifRequest, region: &Region) -> Result<Plan, Refusal> {
    // The same 112 bytes, laid out as `blkif_request_indirect`.
    let Ok((indirect, _)) = BlkifRequestIndirect::read_from_prefix(request.as_bytes()) else {
        return Err(Refusal::UnknownOperation);
    };
    let write = match BlkifOp::from_number(indirect.indirect_op) {
        Some(BlkifOp::Read) => false,
        Some(BlkifOp::Write) => true,
        _ => return Err(Refusal::UnknownOperation),
    };
    if write && region.readonly {
        return Err(Refusal::ReadOnly);
    }
    let segments = usize::from(indirect.nr_segments);
    if segments == 0 || segments > MAX_INDIRECT_SEGMENTS {
        return Err(Refusal::BadSegmentCount);
    }
    let page = indirect.indirect_grefs[0];
    Ok(Plan::Indirect(Indirect { write, sector: indirect.sector_number, segments, page }))
}

/// Plans an indirect request from its segments, copied out of the guest's
/// page: exactly `indirect.segments` of them, checked as a direct
/// request's.
pub fn plan_indirect(indirect: &Indirect, segments: &[BlkifRequestSegment], region: &Region) -> Result<Plan, Refusal> {
    if segments.len() != indirect.segments {
        return Err(Refusal::BadSegmentCount);
    }
    plan_segments(indirect.write, indirect.sector, segments, region)
}

/// Plans the transfers of `segments` (1..=MAX_SEGMENTS), consecutive from
/// guest sector `sector`.
fn plan_segments(write: bool, sector: u64, segments: &[BlkifRequestSegment], region: &Region) -> Result<Plan, Refusal> {
    if write && region.readonly {
        return Err(Refusal::ReadOnly);
    }
    if segments.is_empty() || segments.len() > MAX_SEGMENTS {
        return Err(Refusal::BadSegmentCount);
    }
    let mut transfers = ArrayVec::new();
    let mut sector = sector;
    for segment in segments {
        // `first_sect..=last_sect` inside the page's eight sectors.
        let sectors = u64::from(segment.sectors().ok_or(Refusal::BadSegment)?);
        let end = sector.checked_add(sectors).ok_or(Refusal::OutOfRange)?;
        if end > region.sectors {
            return Err(Refusal::OutOfRange);
        }
        transfers.push(Transfer {
            grant: segment.gref,
            offset: segment.first_sect as u16 * SECTOR_SIZE as u16,
            bytes: (sectors * SECTOR_SIZE) as u16,
            disk_sector: region.start + sector,
        });
        sector = end;
    }
    Ok(if write { Plan::Write(transfers) } else { Plan::Read(transfers) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::xen::io::block::BlkifRequestSegment;
    use zerocopy::FromBytes;

    const REGION: Region = Region { start: 1000, sectors: 64, readonly: false };
    const OP_READ: u8 = BlkifOp::Read.number();
    const OP_WRITE: u8 = BlkifOp::Write.number();
    const OP_FLUSH: u8 = BlkifOp::FlushDiskcache.number();

    fn request(operation: u8, sector: u64, segments: &[(u8, u8)]) -> BlkifRequest {
        let mut request = BlkifRequest {
            id: 7,
            operation,
            nr_segments: segments.len() as u8,
            sector_number: sector,
            ..BlkifRequest::default()
        };
        for (slot, &(first_sect, last_sect)) in request.seg.iter_mut().zip(segments) {
            *slot = BlkifRequestSegment { gref: 5, first_sect, last_sect, _pad0: 0 };
        }
        request
    }

    #[test]
    fn a_request_in_xen_bytes_plans_as_linux_meant_it() {
        // A read as Linux's blkfront lays it out (x86_64 `blkif_request`):
        // operation at 0, nr_segments at 1, handle at 2, id at 8,
        // sector_number at 16, segments of 8 bytes from 24 (gref, then
        // first_sect and last_sect).
        let mut bytes = [0u8; 112];
        bytes[0] = 0; // BLKIF_OP_READ
        bytes[1] = 2;
        bytes[2..4].copy_from_slice(&0xCA00u16.to_le_bytes());
        bytes[8..16].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
        bytes[16..24].copy_from_slice(&3u64.to_le_bytes());
        bytes[24..28].copy_from_slice(&41u32.to_le_bytes());
        bytes[28..30].copy_from_slice(&[0, 7]);
        bytes[32..36].copy_from_slice(&42u32.to_le_bytes());
        bytes[36..38].copy_from_slice(&[2, 5]);
        bytes[104..112].copy_from_slice(&[0xEE; 8]); // the last (11th) segment, unused
        let request = BlkifRequest::read_from_bytes(&bytes).unwrap();
        assert_eq!(request.id, 0x1122_3344_5566_7788);
        let Ok(Plan::Read(transfers)) = plan(&request, &REGION) else { panic!("{request:?}") };
        assert_eq!(
            transfers.as_slice(),
            [
                Transfer { grant: 41, offset: 0, bytes: 4096, disk_sector: 1003 },
                Transfer { grant: 42, offset: 1024, bytes: 2048, disk_sector: 1011 },
            ]
        );
        bytes[0] = 1; // BLKIF_OP_WRITE
        let request = BlkifRequest::read_from_bytes(&bytes).unwrap();
        assert!(matches!(plan(&request, &REGION), Ok(Plan::Write(_))));
        bytes[0] = 3; // BLKIF_OP_FLUSH_DISKCACHE
        let request = BlkifRequest::read_from_bytes(&bytes).unwrap();
        assert_eq!(plan(&request, &REGION), Ok(Plan::Flush));
        // Barriers and discard: not offered, so unknown.
        for operation in [2, 4, 5, 7, 255] {
            bytes[0] = operation;
            let request = BlkifRequest::read_from_bytes(&bytes).unwrap();
            assert_eq!(plan(&request, &REGION), Err(Refusal::UnknownOperation), "operation {operation}");
        }
    }

    #[test]
    fn an_indirect_request_in_xen_bytes_plans_as_linux_meant_it() {
        // `blkif_request_indirect` as Linux's blkfront lays it out on
        // x86_64: operation 6 at 0, indirect_op at 1, nr_segments (16 bits)
        // at 2, id at 8, sector_number at 16, handle at 24, the indirect
        // pages' grants from 28.
        let mut bytes = [0u8; 112];
        bytes[0] = 6; // BLKIF_OP_INDIRECT
        bytes[1] = 0; // BLKIF_OP_READ
        bytes[2..4].copy_from_slice(&20u16.to_le_bytes());
        bytes[8..16].copy_from_slice(&0x55u64.to_le_bytes());
        bytes[16..24].copy_from_slice(&8u64.to_le_bytes());
        bytes[28..32].copy_from_slice(&77u32.to_le_bytes());
        let request = BlkifRequest::read_from_bytes(&bytes).unwrap();
        let indirect = Indirect { write: false, sector: 8, segments: 20, page: 77 };
        assert_eq!(plan(&request, &REGION), Ok(Plan::Indirect(indirect)));
        assert_eq!(response_operation(&request), 0, "a response names the operation inside");
        assert_eq!(request.id, 0x55, "the id sits where a direct request's does");
        // Its segments, copied out of page 77: whole pages but the last.
        let mut segments = [BlkifRequestSegment { gref: 9, first_sect: 0, last_sect: 7, _pad0: 0 }; 20];
        segments[19].last_sect = 3;
        let Ok(Plan::Read(transfers)) = plan_indirect(&indirect, &segments, &Region { sectors: 1000, ..REGION }) else {
            panic!("{segments:?}")
        };
        assert_eq!(transfers.len(), 20);
        assert_eq!(transfers[0], Transfer { grant: 9, offset: 0, bytes: 4096, disk_sector: 1008 });
        assert_eq!(transfers[19], Transfer { grant: 9, offset: 0, bytes: 2048, disk_sector: 1008 + 19 * 8 });
        bytes[1] = 1; // BLKIF_OP_WRITE
        let request = BlkifRequest::read_from_bytes(&bytes).unwrap();
        assert_eq!(plan(&request, &REGION), Ok(Plan::Indirect(Indirect { write: true, ..indirect })));
        assert_eq!(response_operation(&request), 1);
        let direct = BlkifRequest { operation: 0, nr_segments: 3, ..BlkifRequest::default() };
        assert_eq!(response_operation(&direct), 0);
    }

    #[test]
    fn hostile_indirect_requests_are_refused() {
        let indirect = |indirect_op: u8, segments: u16| {
            let header = BlkifRequestIndirect {
                operation: 6,
                indirect_op,
                nr_segments: segments,
                indirect_grefs: [5; 8],
                ..BlkifRequestIndirect::default()
            };
            let mut bytes = [0u8; 112];
            bytes[..64].copy_from_slice(header.as_bytes());
            BlkifRequest::read_from_bytes(&bytes).unwrap()
        };
        assert!(matches!(plan(&indirect(0, 32), &REGION), Ok(Plan::Indirect(_))));
        assert_eq!(plan(&indirect(0, 0), &REGION), Err(Refusal::BadSegmentCount));
        assert_eq!(plan(&indirect(0, 33), &REGION), Err(Refusal::BadSegmentCount));
        assert_eq!(plan(&indirect(0, u16::MAX), &REGION), Err(Refusal::BadSegmentCount));
        // Only reads and writes go indirect (not flushes, nor indirect ones).
        for operation in [3, 6, 2, 5, 200] {
            assert_eq!(plan(&indirect(operation, 4), &REGION), Err(Refusal::UnknownOperation), "{operation}");
        }
        let readonly = Region { readonly: true, ..REGION };
        assert_eq!(plan(&indirect(1, 4), &readonly), Err(Refusal::ReadOnly));
        // The page's segments are checked as a direct request's: their
        // count must be the header's, each in its page, all in the region.
        let header = Indirect { write: false, sector: 60, segments: 2, page: 5 };
        let whole = BlkifRequestSegment { gref: 1, first_sect: 0, last_sect: 7, _pad0: 0 };
        assert_eq!(plan_indirect(&header, &[whole], &REGION), Err(Refusal::BadSegmentCount));
        assert_eq!(plan_indirect(&header, &[whole, whole], &REGION), Err(Refusal::OutOfRange));
        let bad = BlkifRequestSegment { first_sect: 4, last_sect: 2, ..whole };
        let header = Indirect { sector: 0, ..header };
        assert_eq!(plan_indirect(&header, &[whole, bad], &REGION), Err(Refusal::BadSegment));
        assert!(matches!(plan_indirect(&header, &[whole, whole], &REGION), Ok(Plan::Read(t)) if t.len() == 2));
        let write = Indirect { write: true, ..header };
        assert_eq!(plan_indirect(&write, &[whole, whole], &readonly), Err(Refusal::ReadOnly));
    }

    #[test]
    fn plans_map_guest_sectors_into_the_region() {
        let plan = plan(&request(OP_READ, 10, &[(0, 7), (2, 3)]), &REGION).unwrap();
        let Plan::Read(transfers) = plan else { panic!("{plan:?}") };
        assert_eq!(transfers[0], Transfer { grant: 5, offset: 0, bytes: 4096, disk_sector: 1010 });
        assert_eq!(transfers[1], Transfer { grant: 5, offset: 1024, bytes: 1024, disk_sector: 1018 });
        assert_eq!(super::plan(&request(OP_FLUSH, 0, &[]), &REGION), Ok(Plan::Flush));
    }

    #[test]
    fn hostile_requests_are_refused() {
        assert_eq!(plan(&request(9, 0, &[(0, 0)]), &REGION), Err(Refusal::UnknownOperation));
        assert_eq!(plan(&request(OP_READ, 0, &[]), &REGION), Err(Refusal::BadSegmentCount));
        let eleven = request(OP_READ, 0, &[(0, 0); 11]);
        assert!(matches!(plan(&eleven, &REGION), Ok(Plan::Read(transfers)) if transfers.len() == 11));
        let mut too_many = eleven;
        too_many.nr_segments = 12;
        assert_eq!(plan(&too_many, &REGION), Err(Refusal::BadSegmentCount));
        assert_eq!(plan(&request(OP_READ, 0, &[(3, 2)]), &REGION), Err(Refusal::BadSegment));
        assert_eq!(plan(&request(OP_READ, 0, &[(0, 8)]), &REGION), Err(Refusal::BadSegment));
        assert_eq!(plan(&request(OP_READ, 60, &[(0, 7)]), &REGION), Err(Refusal::OutOfRange));
        assert_eq!(plan(&request(OP_READ, u64::MAX - 2, &[(0, 7)]), &REGION), Err(Refusal::OutOfRange));
        let readonly = Region { readonly: true, ..REGION };
        assert_eq!(plan(&request(OP_WRITE, 0, &[(0, 0)]), &readonly), Err(Refusal::ReadOnly));
        assert!(matches!(plan(&request(OP_READ, 0, &[(0, 0)]), &readonly), Ok(Plan::Read(_))));
    }

    #[test]
    fn random_requests_never_escape_the_region() {
        let mut random = crate::test_random::XorShift(0x9e37_79b9_7f4a_7c15);
        let mut next = || random.next();
        // Requests planned as reads and as writes: the checks must be
        // passed often, or the loop proves nothing about accepted requests.
        let (mut reads, mut writes) = (0, 0);
        for _ in 0..100_000 {
            // Half the requests are near-valid (short, in-page segments
            // near the region), so that the edges are hit from both sides.
            let near_valid = next() % 2 == 0;
            let mut request = BlkifRequest {
                id: next(),
                operation: (next() % 5) as u8,
                nr_segments: if near_valid { 1 + next() % 3 } else { next() % 14 } as u8,
                sector_number: if near_valid || next() % 2 == 0 { next() % 80 } else { next() },
                ..BlkifRequest::default()
            };
            for segment in &mut request.seg {
                segment.gref = next() as u32;
                segment.first_sect = (next() % 10) as u8;
                segment.last_sect = (next() % 10) as u8;
                if near_valid {
                    segment.first_sect %= 8;
                    segment.last_sect = (segment.first_sect + (next() % 3) as u8).min(8);
                }
            }
            let planned = plan(&request, &REGION);
            match planned {
                Ok(Plan::Read(_)) => reads += 1,
                Ok(Plan::Write(_)) => writes += 1,
                _ => {}
            }
            if let Ok(Plan::Read(transfers) | Plan::Write(transfers)) = planned {
                for transfer in transfers {
                    assert!(transfer.disk_sector >= REGION.start);
                    let end = transfer.disk_sector + transfer.bytes as u64 / SECTOR_SIZE;
                    assert!(end <= REGION.start + REGION.sectors, "{request:?}");
                    assert!(transfer.offset as u64 + transfer.bytes as u64 <= 4096);
                }
            }
        }
        assert!(
            reads > 1000 && writes > 1000,
            "the fuzzer must reach the accepting path ({reads} reads, {writes} writes)"
        );
    }
}
