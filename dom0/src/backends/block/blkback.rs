//! The block back end's I/O: takes checked blkif requests off a guest's ring,
//! moves the data between the physical disk and the guest's granted pages,
//! and answers.
//!
//! Grants are kept mapped once used when the front end said it reuses the
//! same pages (`feature-persistent`: persistent grants), so the disk's PIO transfers land in the guest's
//! page with no copy. At most [`PERSISTENT_GRANTS`] per guest, within its
//! share of dom0's foreign window (`dom0core::backends::window`): when that budget is
//! spent, or a grant cannot be mapped as needed, the request still takes one
//! disk command, into or out of a bounce buffer, and its unmapped pages are
//! moved by hypervisor grant copies.
//!
//! Indirect requests (`feature-max-indirect-segments`, up to
//! [`MAX_INDIRECT_SEGMENTS`] pages: one disk command) name a page of
//! segment descriptors; dom0 copies the descriptors out of it once (the
//! page kept mapped like a data page) and checks the copy.

use abi::DomainId;
use abi::domctl::FOREIGN_WINDOW_BASE;
use abi::xen::io::block::{BlkifRequestSegment, BlkifResponse, BlkifRsp};
use arrayvec::ArrayVec;
use dom0core::backends::block::{
    Indirect, MAX_INDIRECT_SEGMENTS, MAX_SEGMENTS, Plan, Refusal, Transfer, plan, plan_indirect, response_operation,
};
use pv_drivers::hypercall;
use zerocopy::FromBytes;

use crate::backends::data_path::BlockBackend;
use crate::drivers::ata::AtaDisk;
use crate::toolstack::domains::WINDOW;
pub use dom0core::backends::window::PERSISTENT_GRANTS;
use dom0core::backends::window::Use;

// `mapped_by_grant` holds indexes into `mapped` as u16.
const _: () = assert!(PERSISTENT_GRANTS < u16::MAX as usize);

/// Most requests served per call, so one busy guest cannot keep dom0 from
/// its other work.
const BATCH: usize = 32;

impl BlockBackend {
    /// Serves up to a batch of requests. Returns whether any was served.
    pub fn service(&mut self, disks: &mut [AtaDisk], guest: DomainId) -> bool {
        let mut served = 0;
        while served < BATCH {
            let request = match self.ring.pop_request() {
                Ok(Some(request)) => request,
                Ok(None) => {
                    // Ask to be told of the next request, then look once more.
                    if self.ring.arm_request_event() {
                        continue;
                    }
                    break;
                }
                Err(_) => {
                    self.broken = Some("request index out of range");
                    return true;
                }
            };
            served += 1;
            self.requests += 1;
            let planned = match plan(&request, &self.region) {
                Ok(Plan::Indirect(indirect)) => self.plan_indirect(&indirect, guest),
                planned => planned,
            };
            let status = match planned {
                Ok(plan) => self.execute(&plan, disks.get_mut(self.disk), guest),
                Err(Refusal::UnknownOperation) => BlkifRsp::Eopnotsupp,
                Err(_) => BlkifRsp::Error,
            };
            let response = BlkifResponse {
                id: request.id,
                operation: response_operation(&request),
                status: status.number(),
                ..BlkifResponse::default()
            };
            if self.ring.push_response(&response).is_err() {
                self.broken = Some("more responses than requests");
                return true;
            }
        }
        if served > 0 && self.ring.publish_responses() {
            let _ = hypercall::notify(self.port);
        }
        served > 0
    }
}

impl BlockBackend {
    /// The dom0 address of grant `grant`, mapping it (writable if asked)
    /// on first use into a page of dom0's window (`WINDOW`, held only to
    /// take or give back the page); None when it cannot be mapped (then
    /// copy instead).
    fn mapped_page(&mut self, guest: DomainId, grant: u32, writable: bool) -> Option<u64> {
        let address = |slot: usize| FOREIGN_WINDOW_BASE + slot as u64 * abi::PAGE_SIZE;
        let known = self.mapped_by_grant.get(grant as usize).copied().unwrap_or(0);
        if known != 0 {
            let (_, mapped_writable, slot) = self.mapped[known as usize - 1];
            // A read-only mapping does not serve a transfer into the guest.
            return (mapped_writable || !writable).then(|| address(slot));
        }
        // Only a front end that keeps its grants for reuse (it wrote
        // `feature-persistent`) has its pages kept mapped.
        if !self.persistent || self.mapped.is_full() || grant as usize >= abi::xen::grant_table::GRANT_TABLE_ENTRIES {
            return None;
        }
        // Refused once the guest's budget of persistent grants is spent.
        let slot = WINDOW.lock().take(guest, Use::PersistentGrant)?;
        // Writable whenever the guest granted it so (as Xen's blkback maps
        // persistent grants): Linux's pool serves reads, writes and
        // indirect pages alike, and a page first mapped for a write would
        // otherwise never serve a read in place.
        let mapped_writable = if hypercall::grant_map(guest, grant, address(slot), true).is_ok() {
            true
        } else if !writable && hypercall::grant_map(guest, grant, address(slot), false).is_ok() {
            false
        } else {
            WINDOW.lock().release(slot);
            return None;
        };
        self.mapped.push((grant, mapped_writable, slot));
        self.mapped_by_grant[grant as usize] = self.mapped.len() as u16;
        Some(address(slot))
    }

    /// The plan of an indirect request: its segments copied once out of
    /// the guest's indirect page (kept mapped like a data page, else
    /// through a grant copy), then checked.
    fn plan_indirect(&mut self, indirect: &Indirect, guest: DomainId) -> Result<Plan, Refusal> {
        const SEGMENT_BYTES: usize = size_of::<BlkifRequestSegment>();
        let mut bytes = [0u8; MAX_INDIRECT_SEGMENTS * SEGMENT_BYTES];
        let bytes = &mut bytes[..indirect.segments * SEGMENT_BYTES];
        match self.mapped_page(guest, indirect.page, false) {
            Some(page) => {
                for (index, chunk) in bytes.chunks_exact_mut(SEGMENT_BYTES).enumerate() {
                    // SAFETY: hv mapped the guest's page at `page` in dom0's
                    // window (readable); `index` < 32, so the 8 bytes lie
                    // inside it. The guest may change them at any time:
                    // they are read once, here, and checked from the copy.
                    let word = unsafe { ((page + (index * SEGMENT_BYTES) as u64) as *const u64).read_volatile() };
                    chunk.copy_from_slice(&word.to_le_bytes());
                }
            }
            None => {
                hypercall::grant_copy(guest, indirect.page, 0, bytes, false).map_err(|_| Refusal::BadSegment)?;
            }
        }
        let mut segments: ArrayVec<BlkifRequestSegment, MAX_INDIRECT_SEGMENTS> = ArrayVec::new();
        for chunk in bytes.chunks_exact(SEGMENT_BYTES) {
            segments.push(BlkifRequestSegment::read_from_bytes(chunk).map_err(|_| Refusal::BadSegment)?);
        }
        plan_indirect(indirect, &segments, &self.region)
    }

    fn execute(&mut self, plan: &Plan, disk: Option<&mut AtaDisk>, guest: DomainId) -> BlkifRsp {
        let Some(disk) = disk else { return BlkifRsp::Error };
        let (transfers, to_guest) = match plan {
            Plan::Flush => return if disk.flush().is_ok() { BlkifRsp::Okay } else { BlkifRsp::Error },
            Plan::Read(transfers) => (transfers, true),
            Plan::Write(transfers) => (transfers, false),
            // Resolved into a read or a write before (`plan_indirect`).
            Plan::Indirect(_) => return BlkifRsp::Error,
        };
        // The transfers are consecutive on the disk (see `plan`): when every
        // page is mapped, one disk command moves them all in place.
        let places: ArrayVec<Option<u64>, MAX_SEGMENTS> = transfers
            .iter()
            .map(|transfer| self.mapped_page(guest, transfer.grant, to_guest).map(|page| page + transfer.offset as u64))
            .collect();
        let pieces: ArrayVec<(u64, usize), MAX_SEGMENTS> = transfers
            .iter()
            .zip(&places)
            .map_while(|(transfer, place)| Some(((*place)?, transfer.bytes as usize)))
            .collect();
        if pieces.len() == transfers.len() {
            let first = transfers[0].disk_sector;
            // SAFETY: each piece lies in a guest page hv mapped into dom0's
            // foreign window (writable when `to_guest`), inside the page
            // (checked by `plan`), reached only through these raw addresses.
            let result = unsafe {
                if to_guest {
                    let pieces: ArrayVec<(*mut u8, usize), MAX_SEGMENTS> =
                        pieces.iter().map(|&(address, length)| (address as *mut u8, length)).collect();
                    disk.read_scattered(first, &pieces)
                } else {
                    let pieces: ArrayVec<(*const u8, usize), MAX_SEGMENTS> =
                        pieces.iter().map(|&(address, length)| (address as *const u8, length)).collect();
                    disk.write_gathered(first, &pieces)
                }
            };
            return if result.is_ok() { BlkifRsp::Okay } else { BlkifRsp::Error };
        }
        if bounced(disk, transfers, &places, guest, to_guest).is_ok() { BlkifRsp::Okay } else { BlkifRsp::Error }
    }
}

/// A request's worth of bytes (at most [`MAX_INDIRECT_SEGMENTS`] pages:
/// one disk command), for a request whose pages are not all mapped.
#[repr(C, align(4096))]
struct Bounce([u8; MAX_INDIRECT_SEGMENTS * 4096]);

/// The one bounce buffer: the block back ends run one at a time, on the
/// data path (under its lock), so it is never contended.
static BOUNCE: spin::Mutex<Bounce> = spin::Mutex::new(Bounce([0; MAX_INDIRECT_SEGMENTS * 4096]));

/// Moves a request whose pages are not all mapped (the guest's budget of
/// persistent grants is spent, or it did not offer them) through the
/// bounce buffer: still one disk command for the whole request (as the
/// disk sees it, the same transfer as in place), and each page copied
/// between the buffer and the guest: with a plain copy where dom0 has the
/// page mapped (`places`), else by hv's grant copy.
fn bounced(
    disk: &mut AtaDisk,
    transfers: &[Transfer],
    places: &[Option<u64>],
    guest: DomainId,
    to_guest: bool,
) -> Result<(), ()> {
    let mut bounce = BOUNCE.lock();
    let total: usize = transfers.iter().map(|transfer| usize::from(transfer.bytes)).sum();
    let bytes = bounce.0.get_mut(..total).ok_or(())?;
    let first = transfers.first().ok_or(())?.disk_sector;
    if to_guest {
        disk.read(first, bytes).map_err(|_| ())?;
    }
    let mut at = 0;
    for (transfer, place) in transfers.iter().zip(places) {
        let piece = &mut bytes[at..at + usize::from(transfer.bytes)];
        at += piece.len();
        match (*place, to_guest) {
            // SAFETY: `address` lies in a guest page hv mapped into dom0's
            // foreign window (writable when `to_guest`: `mapped_page`), with
            // `piece.len()` bytes left in the page (checked by `plan`); it is
            // reached only through raw pointers, never a reference.
            (Some(address), true) => unsafe {
                core::ptr::copy_nonoverlapping(piece.as_ptr(), address as *mut u8, piece.len());
            },
            // SAFETY: as above, read from the guest's page.
            (Some(address), false) => unsafe {
                core::ptr::copy_nonoverlapping(address as *const u8, piece.as_mut_ptr(), piece.len());
            },
            (None, _) => {
                hypercall::grant_copy(guest, transfer.grant, transfer.offset, piece, to_guest).map_err(|_| ())?;
            }
        }
    }
    if !to_guest {
        disk.write(first, bytes).map_err(|_| ())?;
    }
    Ok(())
}
