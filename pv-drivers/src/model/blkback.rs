//! A model blkback: dom0's block back end for the guest's first disk,
//! serving the blkif ring from a `Vec<u8>`. It follows the handshake as
//! dom0 does (offers the disk in InitWait, maps the ring and binds the port
//! once the front end says Initialised, says Connected and notifies; maps
//! transfer pages on first use and keeps them, as persistent grants; lets
//! go and says Closed when the front end closes), serves requests only
//! after the front end notified, and can be made hostile.

use std::collections::BTreeMap;

use abi::xen::io::block::{
    BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_SECTOR_SIZE, BlkifOp, BlkifRequest, BlkifResponse, BlkifRsp,
    KEY_EVENT_CHANNEL, KEY_FEATURE_PERSISTENT, KEY_PROTOCOL, KEY_RING_REF, KEY_SECTORS, XEN_IO_PROTO_ABI_X86_64,
};
use abi::xen::io::xenbus::{KEY_BACKEND, KEY_STATE, XenbusState};

use super::{Dom0, GUEST};
use crate::platform::GuestMemory;
use crate::ring::BlockBack;
use crate::xenbus::device_directory;

/// How a hostile blkback misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostileDisk {
    /// Answers with an id no request carried.
    WrongId,
    /// Answers with this status instead of the true one.
    Status(i16),
    /// Publishes far more responses than there were requests.
    RunawayProducer,
}

/// The model block back end (see the module docs).
#[derive(Debug)]
pub struct Blkback {
    /// The disk's bytes.
    pub disk: Vec<u8>,
    /// The back end's directory in the store.
    backend: String,
    /// While connected: the ring, its grant and page, the port.
    ring: Option<(BlockBack, u32, u64)>,
    port: u32,
    /// Transfer pages mapped so far (persistent): grant to address.
    mapped: BTreeMap<u32, u64>,
    /// Requests served.
    pub requests: u64,
    /// Set to make the back end misbehave from now on.
    pub hostile: Option<HostileDisk>,
    /// Set to keep the ring mapped after closing (a back end that does
    /// not let go).
    pub keep_mapped: bool,
}

impl Blkback {
    /// Offers a disk of `sectors` sectors to the guest: the front end's
    /// `backend` key and the back end's directory, in InitWait.
    pub fn offer(dom0: &mut Dom0, sectors: u64) -> Blkback {
        let frontend = device_directory("vbd");
        let number = frontend.rsplit('/').next().unwrap_or("0");
        let backend = format!("/local/domain/0/backend/vbd/{GUEST}/{number}");
        let store = &mut dom0.store;
        store.write(&format!("{backend}/{KEY_SECTORS}"), &sectors.to_string());
        store.write(&format!("{backend}/{KEY_FEATURE_PERSISTENT}"), "1");
        store.write(&format!("{backend}/{KEY_STATE}"), XenbusState::InitWait.format());
        store.write(&format!("{frontend}/{KEY_BACKEND}"), &backend);
        Blkback {
            disk: vec![0; sectors as usize * BLKIF_SECTOR_SIZE as usize],
            backend,
            ring: None,
            port: 0,
            mapped: BTreeMap::new(),
            requests: 0,
            hostile: None,
            keep_mapped: false,
        }
    }

    /// The back end's state node.
    pub fn state_key(&self) -> String {
        format!("{}/{KEY_STATE}", self.backend)
    }

    fn front_key(key: &str) -> String {
        format!("{}/{key}", device_directory("vbd"))
    }

    fn set_state(&self, dom0: &mut Dom0, state: XenbusState) {
        dom0.store.write(&self.state_key(), state.format());
    }

    /// Runs the back end once: follows the front end's state, then serves
    /// the ring if the front end notified it.
    pub fn run(&mut self, dom0: &mut Dom0) {
        let state = |key: &str| XenbusState::from_key(dom0.store.read(key).map(str::as_bytes));
        let front = state(&Blkback::front_key(KEY_STATE));
        let back = state(&self.state_key());
        match (self.ring.is_some(), front, back) {
            (false, XenbusState::Initialised, XenbusState::InitWait) => self.connect(dom0),
            (true, XenbusState::Closing | XenbusState::Closed, _) => {
                self.disconnect(dom0);
                self.set_state(dom0, XenbusState::Closed);
            }
            (false, XenbusState::Initialising, XenbusState::Closed) => self.set_state(dom0, XenbusState::InitWait),
            _ => {}
        }
        if self.ring.is_some() && dom0.take_notified(self.port) {
            self.serve(dom0);
        }
    }

    fn connect(&mut self, dom0: &mut Dom0) {
        let number = |key: &str| dom0.store.read(&Blkback::front_key(key)).and_then(|text| text.parse::<u32>().ok());
        let (Some(ring_ref), Some(port)) = (number(KEY_RING_REF), number(KEY_EVENT_CHANNEL)) else {
            return self.set_state(dom0, XenbusState::Closed);
        };
        if dom0.store.read(&Blkback::front_key(KEY_PROTOCOL)) != Some(XEN_IO_PROTO_ABI_X86_64) {
            return self.set_state(dom0, XenbusState::Closed);
        }
        let Some(page) = dom0.grants.map(ring_ref, true) else {
            return self.set_state(dom0, XenbusState::Closed);
        };
        self.ring = Some((dom0.memory.back_ring(page), ring_ref, page));
        self.port = port;
        self.set_state(dom0, XenbusState::Connected);
        dom0.notify_guest(port);
    }

    fn disconnect(&mut self, dom0: &mut Dom0) {
        if let Some((_, ring_ref, _)) = self.ring.take()
            && !self.keep_mapped
        {
            dom0.grants.unmap(ring_ref);
        }
        for (reference, _) in std::mem::take(&mut self.mapped) {
            dom0.grants.unmap(reference);
        }
    }

    fn serve(&mut self, dom0: &mut Dom0) {
        loop {
            let Some((ring, _, page)) = self.ring.as_mut() else { return };
            let page = *page;
            let request = match ring.pop_request() {
                Ok(Some(request)) => request,
                Ok(None) => {
                    if ring.publish_responses() {
                        dom0.notify_guest(self.port);
                    }
                    if let Some(HostileDisk::RunawayProducer) = self.hostile {
                        // rsp_prod, the header's third word.
                        dom0.memory.write(page + 8, &1000u32.to_le_bytes()).unwrap();
                        dom0.notify_guest(self.port);
                    }
                    if !ring.arm_request_event() {
                        return;
                    }
                    continue;
                }
                Err(_) => return self.disconnect(dom0),
            };
            self.requests += 1;
            let mut status = self.execute(dom0, &request).number();
            let mut id = request.id;
            match self.hostile {
                Some(HostileDisk::WrongId) => id = id.wrapping_add(1000),
                Some(HostileDisk::Status(hostile)) => status = hostile,
                _ => {}
            }
            let response = BlkifResponse { id, operation: request.operation, status, ..Default::default() };
            let Some((ring, _, _)) = self.ring.as_mut() else { return };
            ring.push_response(&response).expect("one response per request");
        }
    }

    /// Does what `request` asks; its status.
    fn execute(&mut self, dom0: &mut Dom0, request: &BlkifRequest) -> BlkifRsp {
        let sector_size = BLKIF_SECTOR_SIZE as usize;
        let operation = BlkifOp::from_number(request.operation);
        if operation == Some(BlkifOp::FlushDiskcache) {
            return BlkifRsp::Okay;
        }
        let reading = match operation {
            Some(BlkifOp::Read) => true,
            Some(BlkifOp::Write) => false,
            _ => return BlkifRsp::Eopnotsupp,
        };
        let segments = request.nr_segments as usize;
        if !(1..=BLKIF_MAX_SEGMENTS_PER_REQUEST).contains(&segments) {
            return BlkifRsp::Error;
        }
        let mut at = request.sector_number as usize * sector_size;
        for segment in &request.seg[..segments] {
            let Some(sectors) = segment.sectors() else { return BlkifRsp::Error };
            let length = sectors as usize * sector_size;
            if at + length > self.disk.len() {
                return BlkifRsp::Error;
            }
            let page = match self.mapped.get(&segment.gref) {
                Some(&page) => page,
                None => {
                    let Some(page) = dom0.grants.map(segment.gref, true) else { return BlkifRsp::Error };
                    self.mapped.insert(segment.gref, page);
                    page
                }
            };
            let address = page + u64::from(segment.first_sect) * sector_size as u64;
            let bytes = &mut self.disk[at..at + length];
            let copied = if reading { dom0.memory.write(address, bytes) } else { dom0.memory.read(address, bytes) };
            if copied.is_err() {
                return BlkifRsp::Error;
            }
            at += length;
        }
        BlkifRsp::Okay
    }
}
