//! A model netback: dom0's net back end for the guest's first vif, which
//! echoes every frame the guest sends back to it. It follows the handshake
//! as dom0 does (offers the vif in InitWait with a MAC, maps both rings
//! once the front end says Connected, says Connected and notifies; lets go
//! and says Closed when the front end closes), takes frames of one or more
//! slots (`NETTXF_MORE_DATA`) only after the front end notified, delivers
//! them into posted receive buffers, and can be made hostile.

use std::collections::VecDeque;

use abi::xen::io::net::{
    KEY_EVENT_CHANNEL, KEY_MAC, KEY_REQUEST_RX_COPY, KEY_RX_RING_REF, KEY_TX_RING_REF, NETIF_RSP_OKAY,
    NETTXF_MORE_DATA, NetifRxResponse, NetifTxRequest, NetifTxResponse,
};
use abi::xen::io::xenbus::{KEY_BACKEND, KEY_STATE, XenbusState};

use super::{Dom0, GUEST};
use crate::net::{RxBack, TxBack};
use crate::platform::GuestMemory;
use crate::xenbus::device_directory;

/// The MAC address the model gives the vif.
pub const MAC: &str = "00:16:3e:00:00:05";

/// How a hostile netback misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostileNet {
    /// Delivers frames into a receive buffer the guest never posted.
    UnpostedBuffer,
    /// Answers transmitted frames with an id no slot carried.
    WrongTxId,
    /// Delivers frames said to run past the end of their page.
    PastThePage,
}

/// The rings of a connected vif and their grants.
#[derive(Debug)]
struct Rings {
    tx: TxBack,
    rx: RxBack,
    references: [u32; 2],
}

/// The model net back end (see the module docs).
#[derive(Debug)]
pub struct Netback {
    backend: String,
    rings: Option<Rings>,
    port: u32,
    /// Slots of a frame not yet whole.
    partial: Vec<NetifTxRequest>,
    /// Frames waiting for a receive buffer.
    waiting: VecDeque<Vec<u8>>,
    /// Frames the guest sent, in order.
    pub sent: Vec<Vec<u8>>,
    /// Set to make the back end misbehave from now on.
    pub hostile: Option<HostileNet>,
}

impl Netback {
    /// Offers a vif to the guest: the front end's `backend` and `mac`
    /// keys and the back end's directory, in InitWait.
    pub fn offer(dom0: &mut Dom0) -> Netback {
        let frontend = device_directory("vif");
        let backend = format!("/local/domain/0/backend/vif/{GUEST}/0");
        let store = &mut dom0.store;
        store.write(&format!("{frontend}/{KEY_MAC}"), MAC);
        store.write(&format!("{backend}/{KEY_STATE}"), XenbusState::InitWait.format());
        store.write(&format!("{frontend}/{KEY_BACKEND}"), &backend);
        Netback {
            backend,
            rings: None,
            port: 0,
            partial: Vec::new(),
            waiting: VecDeque::new(),
            sent: Vec::new(),
            hostile: None,
        }
    }

    fn front_key(key: &str) -> String {
        format!("{}/{key}", device_directory("vif"))
    }

    fn set_state(&self, dom0: &mut Dom0, state: XenbusState) {
        dom0.store.write(&format!("{}/{KEY_STATE}", self.backend), state.format());
    }

    /// Runs the back end once: follows the front end's state, then serves
    /// the rings if the front end notified.
    pub fn run(&mut self, dom0: &mut Dom0) {
        let state = |key: &str| XenbusState::from_key(dom0.store.read(key).map(str::as_bytes));
        let front = state(&Netback::front_key(KEY_STATE));
        let back = state(&format!("{}/{KEY_STATE}", self.backend));
        match (self.rings.is_some(), front, back) {
            (false, XenbusState::Connected, XenbusState::InitWait) => self.connect(dom0),
            (true, XenbusState::Closing | XenbusState::Closed, _) => {
                self.disconnect(dom0);
                self.set_state(dom0, XenbusState::Closed);
            }
            (false, XenbusState::Initialising, XenbusState::Closed) => self.set_state(dom0, XenbusState::InitWait),
            _ => {}
        }
        if self.rings.is_some() && dom0.take_notified(self.port) {
            self.transmit(dom0);
            self.deliver(dom0);
        }
    }

    fn connect(&mut self, dom0: &mut Dom0) {
        let number = |key: &str| dom0.store.read(&Netback::front_key(key)).and_then(|text| text.parse::<u32>().ok());
        let keys = (number(KEY_TX_RING_REF), number(KEY_RX_RING_REF), number(KEY_EVENT_CHANNEL));
        let (Some(tx), Some(rx), Some(port)) = keys else {
            return self.set_state(dom0, XenbusState::Closed);
        };
        if number(KEY_REQUEST_RX_COPY) != Some(1) {
            return self.set_state(dom0, XenbusState::Closed);
        }
        let (Some(tx_page), Some(rx_page)) = (dom0.grants.map(tx, true), dom0.grants.map(rx, true)) else {
            return self.set_state(dom0, XenbusState::Closed);
        };
        let memory = &dom0.memory;
        self.rings = Some(Rings { tx: memory.back_ring(tx_page), rx: memory.back_ring(rx_page), references: [tx, rx] });
        self.port = port;
        self.set_state(dom0, XenbusState::Connected);
        dom0.notify_guest(port);
    }

    fn disconnect(&mut self, dom0: &mut Dom0) {
        if let Some(rings) = self.rings.take() {
            rings.references.into_iter().for_each(|reference| dom0.grants.unmap(reference));
        }
        self.partial.clear();
        self.waiting.clear();
    }

    /// Takes the frames the guest sent, answers every slot, and queues the
    /// frames to go back.
    fn transmit(&mut self, dom0: &mut Dom0) {
        let Some(rings) = self.rings.as_mut() else { return };
        loop {
            let slot = match rings.tx.pop_request() {
                Ok(Some(slot)) => slot,
                Ok(None) if rings.tx.arm_request_event() => continue,
                Ok(None) => break,
                Err(_) => return self.disconnect(dom0),
            };
            self.partial.push(slot);
            if slot.flags & NETTXF_MORE_DATA != 0 {
                continue;
            }
            // The first slot's size is the whole frame's; the others', their own.
            let slots = std::mem::take(&mut self.partial);
            let rest: usize = slots[1..].iter().map(|slot| slot.size as usize).sum();
            let mut frame = Vec::new();
            for (index, slot) in slots.iter().enumerate() {
                let length = if index == 0 { (slot.size as usize).saturating_sub(rest) } else { slot.size as usize };
                let mut part = vec![0; length];
                let readable = dom0.grants.map(slot.gref, false).map(|page| {
                    let copied = dom0.memory.read(page + u64::from(slot.offset), &mut part);
                    dom0.grants.unmap(slot.gref);
                    copied
                });
                if readable != Some(Ok(())) {
                    return self.disconnect(dom0);
                }
                frame.extend_from_slice(&part);
            }
            for slot in &slots {
                let id = if self.hostile == Some(HostileNet::WrongTxId) { slot.id.wrapping_add(100) } else { slot.id };
                rings.tx.push_response(&NetifTxResponse { id, status: NETIF_RSP_OKAY }).expect("a slot taken");
            }
            self.sent.push(frame.clone());
            self.waiting.push_back(frame);
        }
        if rings.tx.publish_responses() {
            dom0.notify_guest(self.port);
        }
    }

    /// Copies waiting frames into posted receive buffers.
    fn deliver(&mut self, dom0: &mut Dom0) {
        let Some(rings) = self.rings.as_mut() else { return };
        while let Some(frame) = self.waiting.front() {
            let buffer = match rings.rx.pop_request() {
                Ok(Some(buffer)) => buffer,
                // No buffer posted: wait for the guest to post one.
                Ok(None) if rings.rx.arm_request_event() => continue,
                Ok(None) => break,
                Err(_) => return self.disconnect(dom0),
            };
            let Some(page) = dom0.grants.map(buffer.gref, true) else { return self.disconnect(dom0) };
            dom0.memory.write(page, frame).expect("a buffer page of the guest");
            dom0.grants.unmap(buffer.gref);
            let mut response = NetifRxResponse { id: buffer.id, offset: 0, flags: 0, status: frame.len() as i16 };
            match self.hostile {
                Some(HostileNet::UnpostedBuffer) => response.id = 200,
                Some(HostileNet::PastThePage) => response.offset = abi::PAGE_SIZE as u16 - 10,
                _ => {}
            }
            rings.rx.push_response(&response).expect("a buffer taken");
            self.waiting.pop_front();
        }
        if rings.rx.publish_responses() {
            dom0.notify_guest(self.port);
        }
    }
}
