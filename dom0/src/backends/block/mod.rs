//! The block back end's request checking: everything a guest's front end
//! writes is hostile, so a blkif request (`abi::xen::io::block`) is copied
//! out of the ring (by the ring code) and then checked here, field by
//! field, before any I/O happens. The result is a plan of disk transfers
//! that cannot leave the guest's region of the physical disk.
//!
//! The block back end's I/O, `blkback.rs` in this folder, is the binary's
//! (declared in `main.rs`).

use abi::xen::io::block::{BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_SECTOR_SIZE, BlkifOp, BlkifRequest};
use arrayvec::ArrayVec;

/// Most transfers (segments) in one request.
pub const MAX_SEGMENTS: usize = BLKIF_MAX_SEGMENTS_PER_REQUEST;
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
        _ => return Err(Refusal::UnknownOperation),
    };
    if write && region.readonly {
        return Err(Refusal::ReadOnly);
    }
    let count = request.nr_segments as usize;
    if count == 0 || count > MAX_SEGMENTS {
        return Err(Refusal::BadSegmentCount);
    }
    let mut transfers = ArrayVec::new();
    let mut sector = request.sector_number;
    for segment in &request.seg[..count] {
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
        // Barriers, discard, indirect requests: not offered, so unknown.
        for operation in [2, 4, 5, 6, 7, 255] {
            bytes[0] = operation;
            let request = BlkifRequest::read_from_bytes(&bytes).unwrap();
            assert_eq!(plan(&request, &REGION), Err(Refusal::UnknownOperation), "operation {operation}");
        }
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
