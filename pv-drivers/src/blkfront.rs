//! The block front end (blkif, `abi::xen::io::block`; Mica's rules in
//! `abi::block`): one ring, its event port, and [`TRANSFER_PAGES`] transfer
//! pages granted to dom0 once per connection and used by every request
//! (persistent grants: dom0 keeps them mapped, so every transfer is
//! copy-free on its side). Requests are sent one at a time and answered
//! before the next, except [`Disk::read_ahead`]'s batch; a response with an
//! id not in flight, or a ring dom0 corrupted, marks the disk broken.
#![forbid(unsafe_code)]

use abi::xen::io::block::{
    BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_SECTOR_SIZE, BlkifOp, BlkifRequest, BlkifRequestSegment, BlkifRsp,
    SECTORS_PER_PAGE,
};

use crate::platform::Platform;
use crate::store_client::StoreClient;
use crate::xenbus::{DEVICE_GRANTS_MAX, DeviceGrants, Frontend, backend_directory, device_key, grant, key_in};

/// Pages for disk transfers: as many as dom0 keeps mapped for a guest
/// (persistent grants, `abi::block`).
pub const TRANSFER_PAGES: usize = 64;

const _: () = assert!(TRANSFER_PAGES < DEVICE_GRANTS_MAX, "the ring's and the transfer pages' grants fit the list");

/// Where the disk's ring and transfer pages are (guest-physical addresses
/// of the platform's device memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskPages {
    /// The ring's page.
    pub ring: u64,
    /// The first of [`TRANSFER_PAGES`] contiguous transfer pages.
    pub transfer: u64,
}

/// Why a disk transfer failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskError {
    /// The guest has no disk.
    NoDisk,
    /// Not a whole number of sectors, more than the buffer, or past the end.
    BadRequest,
    /// dom0 answered with an error status (`abi::xen::io::block::BlkifRsp`).
    Status(i16),
    /// dom0 broke the ring protocol; the disk is no longer used.
    Broken,
}

/// The block front end of a connected disk.
#[derive(Debug)]
pub struct Disk {
    ring: crate::ring::BlockFront,
    pages: DiskPages,
    port: u32,
    sectors: u64,
    /// The transfer pages' grants, page by page.
    grants: [u32; TRANSFER_PAGES],
    next_id: u64,
    broken: bool,
}

impl Frontend for Disk {
    const CLASS: &'static str = "vbd";
    type Pages = DiskPages;

    /// Connects the block front end through the store (`abi::store`):
    /// reads the back end's directory and the disk size, grants dom0 the
    /// ring page and the transfer pages, allocates an event port for dom0,
    /// publishes `ring-ref`, `event-channel`, `protocol`,
    /// `feature-persistent` and `state` = Initialised, and waits (bounded)
    /// for the back end to answer Connected.
    fn connect(
        platform: &mut impl Platform,
        store: &mut StoreClient,
        pages: &DiskPages,
        grants: &mut DeviceGrants,
        allocated_port: &mut Option<u32>,
    ) -> Option<Disk> {
        use abi::store::parse_decimal;
        use abi::xen::io::block::{
            KEY_EVENT_CHANNEL, KEY_FEATURE_PERSISTENT, KEY_PROTOCOL, KEY_RING_REF, KEY_SECTORS, XEN_IO_PROTO_ABI_X86_64,
        };
        use abi::xen::io::xenbus::{KEY_STATE, XenbusState};
        use core::fmt::Write as _;
        let backend_path = backend_directory(platform, store, Self::CLASS)?;
        let mut value = [0u8; 32];
        let length = store.read(platform, &key_in(&backend_path, KEY_STATE), &mut value).ok()?;
        if XenbusState::from_key(Some(&value[..length])) != XenbusState::InitWait {
            return None;
        }
        let length = store.read(platform, &key_in(&backend_path, KEY_SECTORS), &mut value).ok()?;
        let sectors = parse_decimal(&value[..length])? as u64;

        // The ring is initialised before dom0 can see it (the page is
        // granted below; an earlier connection's grants were all revoked).
        let ring = platform.front_ring(pages.ring).ok()?;
        let ring_ref = grant(platform, grants, pages.ring, false)?;
        let mut transfer_grants = [0u32; TRANSFER_PAGES];
        for (index, reference) in transfer_grants.iter_mut().enumerate() {
            *reference = grant(platform, grants, pages.transfer + index as u64 * abi::PAGE_SIZE, false)?;
        }
        let port = platform.alloc_port(abi::DOM0)?;
        *allocated_port = Some(port);
        let vbd = |key| device_key(Self::CLASS, key);
        let mut number = arrayvec::ArrayString::<16>::new();
        let _ = write!(number, "{ring_ref}");
        store.write(platform, &vbd(KEY_RING_REF), &number).ok()?;
        number.clear();
        let _ = write!(number, "{port}");
        store.write(platform, &vbd(KEY_EVENT_CHANNEL), &number).ok()?;
        store.write(platform, &vbd(KEY_PROTOCOL), XEN_IO_PROTO_ABI_X86_64).ok()?;
        // The same transfer pages (and grants) serve every request.
        store.write(platform, &vbd(KEY_FEATURE_PERSISTENT), "1").ok()?;
        let state = vbd(KEY_STATE);
        store.write(platform, &state, XenbusState::Initialised.format()).ok()?;
        if !crate::xenbus::wait_for_backend(platform, store, &key_in(&backend_path, KEY_STATE), port) {
            return None;
        }
        let _ = store.write(platform, &state, XenbusState::Connected.format());
        // Hear of the back end's state changes (block-detach).
        let _ = store.watch(platform, &backend_path, "vbd-backend");
        Some(Disk { ring, pages: *pages, port, sectors, grants: transfer_grants, next_id: 1, broken: false })
    }

    fn port(&self) -> u32 {
        self.port
    }
}

impl Disk {
    /// Most bytes one transfer moves.
    pub const TRANSFER_MAX: usize = BLKIF_MAX_SEGMENTS_PER_REQUEST * abi::PAGE_SIZE as usize;

    /// The disk's size in sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// The ring page's address.
    pub fn ring_page(&self) -> u64 {
        self.pages.ring
    }

    /// The grant of transfer page `page`.
    pub fn transfer_grant(&self, page: usize) -> Option<u32> {
        self.grants.get(page).copied()
    }

    /// Reads whole sectors from `sector` into `out` (at most
    /// [`Disk::TRANSFER_MAX`] bytes), waiting for dom0's answer.
    pub fn read(&mut self, platform: &mut impl Platform, sector: u64, out: &mut [u8]) -> Result<(), DiskError> {
        self.transfer(platform, BlkifOp::Read, sector, out.len())?;
        // dom0 just wrote these bytes through the grants.
        platform.read(self.pages.transfer, out).map_err(|_| DiskError::BadRequest)
    }

    /// Reads `bytes` (whole sectors, at most [`Disk::TRANSFER_MAX`]) from
    /// `sector` into the transfer pages and leaves them there: no copy, for
    /// callers that can use the data in place (and for measurements).
    pub fn read_in_place(&mut self, platform: &mut impl Platform, sector: u64, bytes: usize) -> Result<(), DiskError> {
        self.transfer(platform, BlkifOp::Read, sector, bytes)
    }

    /// Writes whole sectors from `data` at `sector`, waiting for dom0's answer.
    pub fn write(&mut self, platform: &mut impl Platform, sector: u64, data: &[u8]) -> Result<(), DiskError> {
        if data.len() > Self::TRANSFER_MAX {
            return Err(DiskError::BadRequest);
        }
        platform.write(self.pages.transfer, data).map_err(|_| DiskError::BadRequest)?;
        self.transfer(platform, BlkifOp::Write, sector, data.len())
    }

    /// Asks dom0 to make earlier writes durable.
    pub fn flush(&mut self, platform: &mut impl Platform) -> Result<(), DiskError> {
        self.transfer(platform, BlkifOp::FlushDiskcache, 0, 0)
    }

    /// Reads `requests` requests of `pages_each` pages (8 sectors a page)
    /// from `sector` on into the granted transfer pages, all in flight at
    /// once, and leaves the data there (no copy): the front end at full
    /// speed, for throughput measurements. Returns how many succeeded.
    pub fn read_ahead(
        &mut self,
        platform: &mut impl Platform,
        sector: u64,
        requests: usize,
        pages_each: usize,
    ) -> Result<usize, DiskError> {
        let pages_each = pages_each.clamp(1, BLKIF_MAX_SEGMENTS_PER_REQUEST);
        let pages = (requests * pages_each).min(TRANSFER_PAGES) / pages_each * pages_each;
        if sector.checked_add(pages as u64 * 8).is_none_or(|end| end > self.sectors) {
            return Err(DiskError::BadRequest);
        }
        let first_id = self.next_id;
        for first_page in (0..pages).step_by(pages_each) {
            let mut request = BlkifRequest {
                id: self.next_id,
                operation: BlkifOp::Read.number(),
                nr_segments: pages_each as u8,
                sector_number: sector + first_page as u64 * 8,
                ..Default::default()
            };
            for (slot, page) in request.seg.iter_mut().zip(first_page..first_page + pages_each) {
                *slot = BlkifRequestSegment { gref: self.grants[page], first_sect: 0, last_sect: 7, _pad0: 0 };
            }
            self.next_id += 1;
            self.ring.push_request(&request).map_err(|_| DiskError::Broken)?;
        }
        let pages = pages / pages_each;
        if self.ring.publish_requests() {
            platform.notify(self.port);
        }
        let mut good = 0;
        let mut answered = 0;
        while answered < pages {
            match self.ring.pop_response() {
                Ok(Some(response)) if (first_id..first_id + pages as u64).contains(&response.id) => {
                    answered += 1;
                    good += (response.status == BlkifRsp::Okay.number()) as usize;
                }
                Ok(Some(_)) | Err(_) => {
                    self.broken = true;
                    return Err(DiskError::Broken);
                }
                Ok(None) => {
                    if !self.ring.arm_response_event() {
                        platform.wait_for_event();
                    }
                }
            }
        }
        Ok(good)
    }

    /// Sends `request` as it is (no checks) and waits for its response's status.
    pub fn request(&mut self, platform: &mut impl Platform, request: &BlkifRequest) -> Result<i16, DiskError> {
        self.submit(platform, request)?;
        self.wait_response(platform, request.id)
    }

    /// Sends `request` as it is (no checks) and notifies dom0 without
    /// waiting (tests of hostile front ends race dom0 with it); take the
    /// answer with [`Disk::wait_response`].
    pub fn submit(&mut self, platform: &mut impl Platform, request: &BlkifRequest) -> Result<(), DiskError> {
        if self.ring.push_request(request).is_err() {
            return Err(DiskError::Broken);
        }
        // Always notify: a hostile front end wants dom0 running now.
        self.ring.publish_requests();
        platform.notify(self.port);
        Ok(())
    }

    /// Waits for the response to the request `id` (the next one on the
    /// ring); its status. Any other response breaks the disk.
    pub fn wait_response(&mut self, platform: &mut impl Platform, id: u64) -> Result<i16, DiskError> {
        loop {
            match self.ring.pop_response() {
                Ok(Some(response)) if response.id == id => return Ok(response.status),
                Ok(Some(_)) | Err(_) => {
                    self.broken = true;
                    return Err(DiskError::Broken);
                }
                Ok(None) => {
                    if !self.ring.arm_response_event() {
                        platform.wait_for_event();
                    }
                }
            }
        }
    }

    /// Notifies dom0's disk back end.
    pub fn notify(&self, platform: &mut impl Platform) {
        platform.notify(self.port);
    }

    fn transfer(
        &mut self,
        platform: &mut impl Platform,
        operation: BlkifOp,
        sector: u64,
        bytes: usize,
    ) -> Result<(), DiskError> {
        if self.broken {
            return Err(DiskError::Broken);
        }
        let sector_size = BLKIF_SECTOR_SIZE as usize;
        let count = bytes / sector_size;
        if !bytes.is_multiple_of(sector_size)
            || bytes > Self::TRANSFER_MAX
            || (operation != BlkifOp::FlushDiskcache && count == 0)
        {
            return Err(DiskError::BadRequest);
        }
        if sector.checked_add(count as u64).is_none_or(|end| end > self.sectors) {
            return Err(DiskError::BadRequest);
        }
        let mut request = BlkifRequest {
            id: self.next_id,
            operation: operation.number(),
            sector_number: sector,
            ..Default::default()
        };
        self.next_id += 1;
        let pages = count.div_ceil(SECTORS_PER_PAGE as usize);
        for page in 0..pages {
            let first = page * 8;
            let last = (count - 1).min(first + 7);
            request.seg[page] = BlkifRequestSegment {
                gref: self.grants[page],
                first_sect: 0,
                last_sect: (last - first) as u8,
                _pad0: 0,
            };
        }
        request.nr_segments = pages as u8;
        match self.request(platform, &request)? {
            status if status == BlkifRsp::Okay.number() => Ok(()),
            status => Err(DiskError::Status(status)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HostileDisk, Model};
    use crate::platform::GuestMemory;
    use crate::xenbus::{CloseError, Device, DeviceChange};

    const SECTORS: u64 = 1024;
    const SECTOR: usize = BLKIF_SECTOR_SIZE as usize;

    /// A guest with a disk of SECTORS sectors, connected.
    fn connected() -> (Model, StoreClient, Device<Disk>) {
        let mut model = Model::new();
        model.offer_disk(SECTORS);
        let mut store = model.store_client();
        let mut disk = Device::new(model.disk_pages());
        assert_eq!(disk.hotplug(&mut model, &mut store), Some(DeviceChange::Connected));
        (model, store, disk)
    }

    fn pattern(length: usize, seed: usize) -> Vec<u8> {
        (0..length).map(|index| (index * 7 + index / SECTOR + seed) as u8).collect()
    }

    #[test]
    fn the_handshake_publishes_xens_keys() {
        let (mut model, _, disk) = connected();
        let store = model.store();
        let key = |key: &str| store.read(&format!("device/vbd/51712/{key}")).map(str::to_string);
        assert_eq!(key("state").as_deref(), Some("4"), "Connected");
        assert_eq!(key("protocol").as_deref(), Some("x86_64-abi"));
        assert_eq!(key("feature-persistent").as_deref(), Some("1"));
        assert_eq!(key("event-channel"), disk.front().map(|disk| disk.port().to_string()));
        assert_eq!(disk.front().map(Disk::sectors), Some(SECTORS));
        // The ring and every transfer page, granted to dom0.
        assert_eq!((disk.grants().len(), model.dom0.grants.live()), (1 + TRANSFER_PAGES, 1 + TRANSFER_PAGES));
    }

    #[test]
    fn a_pattern_written_reads_back_from_the_disk() {
        let (mut model, _, mut disk) = connected();
        let front = disk.front_mut().unwrap();
        let written = pattern(Disk::TRANSFER_MAX, 1);
        front.write(&mut model, 100, &written).unwrap();
        let at = 100 * SECTOR;
        assert_eq!(&model.blkback().disk[at..at + written.len()], &written[..], "on the back end's disk");
        let mut read = vec![0; written.len()];
        front.read(&mut model, 100, &mut read).unwrap();
        assert_eq!(read, written);
        // Three sectors from the middle of the first page.
        let mut three = vec![0; 3 * SECTOR];
        front.read(&mut model, 102, &mut three).unwrap();
        assert_eq!(three, written[2 * SECTOR..5 * SECTOR]);
        front.flush(&mut model).unwrap();
        // Every page of the transfer area, several requests in flight.
        let whole = pattern(TRANSFER_PAGES * abi::PAGE_SIZE as usize, 3);
        model.blkback().disk[..whole.len()].copy_from_slice(&whole);
        assert_eq!(front.read_ahead(&mut model, 0, 16, 4), Ok(16));
        let mut transferred = vec![0; whole.len()];
        model.read(disk.pages().transfer, &mut transferred).unwrap();
        assert_eq!(transferred, whole);
    }

    #[test]
    fn bad_requests_are_refused_before_they_reach_the_ring() {
        let (mut model, _, mut disk) = connected();
        let front = disk.front_mut().unwrap();
        let mut out = vec![0; 2 * SECTOR];
        assert_eq!(front.read(&mut model, SECTORS - 1, &mut out), Err(DiskError::BadRequest), "past the end");
        assert_eq!(front.read(&mut model, 0, &mut out[..100]), Err(DiskError::BadRequest), "part of a sector");
        assert_eq!(front.read(&mut model, 0, &mut []), Err(DiskError::BadRequest), "nothing");
        let too_long = vec![0; Disk::TRANSFER_MAX + SECTOR];
        assert_eq!(front.write(&mut model, 0, &too_long), Err(DiskError::BadRequest));
        assert_eq!(front.read_ahead(&mut model, SECTORS - 8, 2, 1), Err(DiskError::BadRequest));
        assert_eq!(model.blkback().requests, 0);
    }

    #[test]
    fn a_hostile_back_end_gets_errors_not_panics() {
        let (mut model, _, mut disk) = connected();
        let front = disk.front_mut().unwrap();
        let mut out = vec![0; SECTOR];
        model.blkback().hostile = Some(HostileDisk::Status(BlkifRsp::Error.number()));
        assert_eq!(front.read(&mut model, 0, &mut out), Err(DiskError::Status(-1)));
        model.blkback().hostile = Some(HostileDisk::Status(77));
        assert_eq!(front.write(&mut model, 0, &out), Err(DiskError::Status(77)));
        // An error status leaves the ring in step: the disk still works.
        model.blkback().hostile = None;
        assert_eq!(front.read(&mut model, 0, &mut out), Ok(()));

        model.blkback().hostile = Some(HostileDisk::WrongId);
        assert_eq!(front.read(&mut model, 0, &mut out), Err(DiskError::Broken));
        model.blkback().hostile = None;
        assert_eq!(front.read(&mut model, 0, &mut out), Err(DiskError::Broken), "a broken disk stays broken");

        let (mut model, _, mut disk) = connected();
        let front = disk.front_mut().unwrap();
        model.blkback().hostile = Some(HostileDisk::RunawayProducer);
        assert_eq!(front.read(&mut model, 0, &mut out), Err(DiskError::Broken));
        assert_eq!(front.read_ahead(&mut model, 0, 2, 1), Err(DiskError::Broken));
    }

    #[test]
    fn a_back_end_that_never_connects_leaves_nothing_allocated() {
        let mut model = Model::new();
        model.offer_disk(SECTORS);
        // dom0 offered the disk, then its back end went away.
        model.blkback = None;
        let mut store = model.store_client();
        let mut disk = Device::<Disk>::new(model.disk_pages());
        assert_eq!(disk.hotplug(&mut model, &mut store), None);
        assert!(model.waits >= 1000, "it waited its second");
        assert_eq!((disk.grants().len(), model.dom0.grants.live()), (0, 0), "every grant revoked");
        assert!(model.open_ports.is_empty(), "its port closed");
    }

    #[test]
    fn closing_lets_go_of_everything_and_reconnecting_starts_afresh() {
        let (mut model, mut store, mut disk) = connected();
        let written = pattern(8 * SECTOR, 5);
        disk.front_mut().unwrap().write(&mut model, 8, &written).unwrap();
        assert_eq!(disk.close(&mut model, &mut store), Ok(()));
        assert_eq!(model.store().read("device/vbd/51712/state"), Some("6"), "Closed");
        assert_eq!((model.dom0.grants.live(), model.open_ports.len()), (0, 0));
        assert_eq!(disk.close(&mut model, &mut store), Err(CloseError::NotConnected));

        assert!(disk.reconnect(&mut model, &mut store));
        let mut read = vec![0; written.len()];
        disk.front_mut().unwrap().read(&mut model, 8, &mut read).unwrap();
        assert_eq!(read, written, "a fresh ring on the same disk");
    }

    #[test]
    fn a_page_dom0_keeps_mapped_stays_granted_until_it_lets_go() {
        let (mut model, mut store, mut disk) = connected();
        model.blkback().keep_mapped = true;
        assert_eq!(disk.close(&mut model, &mut store), Err(CloseError::StillMapped));
        assert_eq!(disk.grants().len(), 1, "the ring's grant");
        let ring_ref = disk.grants()[0];
        assert!(!disk.reconnect(&mut model, &mut store), "no new connection while the old ring is mapped");
        model.dom0.grants.unmap(ring_ref);
        assert!(disk.reconnect(&mut model, &mut store));
        assert_eq!(disk.grants().len(), 1 + TRANSFER_PAGES);
    }

    #[test]
    fn dom0_detaching_the_disk_disconnects_the_front_end() {
        let (mut model, mut store, mut disk) = connected();
        assert_eq!(disk.hotplug(&mut model, &mut store), None, "nothing changed");
        let state = model.blkback().state_key();
        model.store().write(&state, "5");
        assert_eq!(disk.hotplug(&mut model, &mut store), Some(DeviceChange::Disconnected));
        assert!(disk.front().is_none());
        assert_eq!(model.store().read("device/vbd/51712/state"), Some("6"));
        assert_eq!((model.dom0.grants.live(), model.open_ports.len()), (0, 0));
    }
}
