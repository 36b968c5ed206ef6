//! The block back end's request checking: everything a guest's front end
//! writes is hostile, so a request is copied out of the ring (by the ring
//! code) and then checked here, field by field, before any I/O happens.
//! The result is a plan of disk transfers that cannot leave the guest's
//! region of the physical disk.

use abi::block::{MAX_SEGMENTS, OP_FLUSH, OP_READ, OP_WRITE, Request, SECTOR_SIZE, SECTORS_PER_PAGE};
use arrayvec::ArrayVec;

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

/// Why a request is refused (answered with `STATUS_ERROR` or `STATUS_UNSUPPORTED`).
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

/// Checks a request against the region and plans its transfers.
pub fn plan(request: &Request, region: &Region) -> Result<Plan, Refusal> {
    match request.operation {
        OP_FLUSH => return Ok(Plan::Flush),
        OP_READ | OP_WRITE => {}
        _ => return Err(Refusal::UnknownOperation),
    }
    if request.operation == OP_WRITE && region.readonly {
        return Err(Refusal::ReadOnly);
    }
    let count = request.segment_count as usize;
    if count == 0 || count > MAX_SEGMENTS {
        return Err(Refusal::BadSegmentCount);
    }
    let mut transfers = ArrayVec::new();
    let mut sector = request.sector;
    for segment in &request.segments[..count] {
        if segment.first_sector > segment.last_sector || segment.last_sector >= SECTORS_PER_PAGE {
            return Err(Refusal::BadSegment);
        }
        let sectors = (segment.last_sector - segment.first_sector + 1) as u64;
        let end = sector.checked_add(sectors).ok_or(Refusal::OutOfRange)?;
        if end > region.sectors {
            return Err(Refusal::OutOfRange);
        }
        transfers.push(Transfer {
            grant: segment.grant,
            offset: segment.first_sector as u16 * SECTOR_SIZE as u16,
            bytes: (sectors * SECTOR_SIZE) as u16,
            disk_sector: region.start + sector,
        });
        sector = end;
    }
    Ok(if request.operation == OP_READ { Plan::Read(transfers) } else { Plan::Write(transfers) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::block::Segment;

    const REGION: Region = Region { start: 1000, sectors: 64, readonly: false };

    fn request(operation: u8, sector: u64, segments: &[(u8, u8)]) -> Request {
        let mut request =
            Request { id: 7, operation, segment_count: segments.len() as u8, sector, ..Request::default() };
        for (slot, &(first, last)) in request.segments.iter_mut().zip(segments) {
            *slot = Segment { grant: 5, first_sector: first, last_sector: last, _reserved: 0 };
        }
        request
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
        let mut too_many = request(OP_READ, 0, &[(0, 0)]);
        too_many.segment_count = 9;
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
            let mut request = Request {
                id: next(),
                operation: (next() % 4) as u8,
                segment_count: if near_valid { 1 + next() % 3 } else { next() % 11 } as u8,
                sector: if near_valid || next() % 2 == 0 { next() % 80 } else { next() },
                ..Request::default()
            };
            for segment in &mut request.segments {
                segment.grant = next() as u32;
                segment.first_sector = (next() % 10) as u8;
                segment.last_sector = (next() % 10) as u8;
                if near_valid {
                    segment.first_sector %= 8;
                    segment.last_sector = (segment.first_sector + (next() % 3) as u8).min(8);
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
