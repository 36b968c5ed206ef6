//! The vif front end (netif, `abi::net`): connects `net`'s ring logic
//! through the store, owns its event port, and notifies dom0 when the rings
//! ask for it. Its pages are two rings then the transmit and receive
//! buffers, granted to dom0 once per connection.
#![forbid(unsafe_code)]

use abi::xen::io::net::NetifTxRequest;

use crate::net::{Buffer, NetError, NetFront, NetStats, RX_BUFFERS, TX_BUFFERS};
use crate::platform::Platform;
use crate::store_client::StoreClient;
use crate::xenbus::{DEVICE_GRANTS_MAX, DeviceGrants, Frontend, backend_directory, device_key, grant, key_in};

/// Pages of a vif: the transmit and receive rings, then the transmit and
/// receive buffers.
pub const VIF_PAGES: usize = 2 + TX_BUFFERS + RX_BUFFERS;

const _: () = assert!(VIF_PAGES <= DEVICE_GRANTS_MAX, "a vif's grants fit the list");

/// Where a vif's pages are: the first of [`VIF_PAGES`] contiguous pages of
/// the platform's device memory (the transmit ring's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VifPages {
    /// The first page's guest-physical address.
    pub first: u64,
}

impl VifPages {
    /// The address of page `index` (0: transmit ring, 1: receive ring,
    /// then the transmit buffers, then the receive buffers).
    pub fn page(&self, index: usize) -> u64 {
        self.first + index as u64 * abi::PAGE_SIZE
    }
}

/// The front end of a connected vif.
#[derive(Debug)]
pub struct Vif {
    front: NetFront,
    port: u32,
}

impl Frontend for Vif {
    const CLASS: &'static str = "vif";
    type Pages = VifPages;

    /// Connects the first vif's front end through the store (`abi::net`):
    /// grants dom0 both ring pages and the buffer pages, allocates the event
    /// port, publishes `tx-ring-ref`, `rx-ring-ref`, `event-channel`,
    /// `request-rx-copy`, `feature-rx-notify` and `state` = Connected (as
    /// Linux's netfront), waits for the back end's Connected, then posts the
    /// receive buffers. None when the guest has no vif or the back end
    /// refused.
    fn connect(
        platform: &mut impl Platform,
        store: &mut StoreClient,
        pages: &VifPages,
        grants: &mut DeviceGrants,
        allocated_port: &mut Option<u32>,
    ) -> Option<Vif> {
        use abi::xen::io::net::{
            KEY_EVENT_CHANNEL, KEY_FEATURE_RX_NOTIFY, KEY_REQUEST_RX_COPY, KEY_RX_RING_REF, KEY_TX_RING_REF,
        };
        use abi::xen::io::xenbus::{KEY_STATE, XenbusState};
        use core::fmt::Write as _;
        let backend_path = backend_directory(platform, store, Self::CLASS)?;
        let backend_state = key_in(&backend_path, KEY_STATE);
        let mut state = [0u8; 8];
        let length = store.read(platform, &backend_state, &mut state).ok()?;
        if XenbusState::from_key(Some(&state[..length])) != XenbusState::InitWait {
            return None;
        }
        let tx_ring = grant(platform, grants, pages.page(0), false)?;
        let rx_ring = grant(platform, grants, pages.page(1), false)?;
        let mut tx_buffers = [Buffer::default(); TX_BUFFERS];
        for (index, buffer) in tx_buffers.iter_mut().enumerate() {
            let address = pages.page(2 + index);
            *buffer = Buffer { address, grant: grant(platform, grants, address, true)? };
        }
        let mut rx_buffers = [Buffer::default(); RX_BUFFERS];
        for (index, buffer) in rx_buffers.iter_mut().enumerate() {
            let address = pages.page(2 + TX_BUFFERS + index);
            *buffer = Buffer { address, grant: grant(platform, grants, address, false)? };
        }
        // Fresh rings on pages nothing else uses (an earlier connection's
        // grants were all revoked); dom0 looks at them only once told below.
        let tx = platform.front_ring(pages.page(0)).ok()?;
        let rx = platform.front_ring(pages.page(1)).ok()?;
        let mut front = NetFront::new(tx, rx, tx_buffers, rx_buffers);
        let port = platform.alloc_port(abi::DOM0)?;
        *allocated_port = Some(port);
        let mut number = arrayvec::ArrayString::<16>::new();
        // Receive by copy (the only mode), and a notification whenever it
        // posts receive buffers (`Vif::receive`).
        for (key, value) in [
            (KEY_TX_RING_REF, tx_ring),
            (KEY_RX_RING_REF, rx_ring),
            (KEY_EVENT_CHANNEL, port),
            (KEY_REQUEST_RX_COPY, 1),
            (KEY_FEATURE_RX_NOTIFY, 1),
        ] {
            number.clear();
            write!(number, "{value}").ok()?;
            store.write(platform, &device_key(Self::CLASS, key), &number).ok()?;
        }
        // Straight to Connected, as Linux's netfront goes.
        store.write(platform, &device_key(Self::CLASS, KEY_STATE), XenbusState::Connected.format()).ok()?;
        if !crate::xenbus::wait_for_backend(platform, store, &backend_state, port) {
            return None;
        }
        // Hear of the back end's state changes (network-detach).
        let _ = store.watch(platform, &backend_path, "vif-backend");
        front.post_receive_buffers().ok()?;
        // The back end has not asked for events yet: tell it once.
        platform.notify(port);
        Some(Vif { front, port })
    }

    fn port(&self) -> u32 {
        self.port
    }
}

impl Vif {
    /// Sends one Ethernet frame (without waiting for dom0).
    pub fn send(&mut self, platform: &mut impl Platform, frame: &[u8]) -> Result<(), NetError> {
        if self.front.send(platform, frame)? {
            platform.notify(self.port);
        }
        Ok(())
    }

    /// Copies the next received frame into `out` (at least 1514 bytes);
    /// returns its length, or None when nothing is waiting.
    pub fn receive(&mut self, platform: &mut impl Platform, out: &mut [u8]) -> Result<Option<usize>, NetError> {
        match self.front.receive(platform, out)? {
            Some((length, notify)) => {
                if notify {
                    platform.notify(self.port);
                }
                Ok(Some(length))
            }
            None => Ok(None),
        }
    }

    /// Waits for the vif (a frame or a transmit answer) or the tick
    /// `deadline`, whichever comes first (or any other event of the
    /// platform's).
    pub fn wait(&mut self, platform: &mut impl Platform, deadline: u64) {
        if self.front.arm_events() || platform.now() >= deadline {
            return;
        }
        platform.set_timer(deadline);
        platform.wait_for_event();
    }

    /// Sends one Ethernet frame in two slots, the first `first` bytes at
    /// the end of a page ([`NetFront::send_split`]).
    pub fn send_split(&mut self, platform: &mut impl Platform, frame: &[u8], first: usize) -> Result<(), NetError> {
        if self.front.send_split(platform, frame, first)? {
            platform.notify(self.port);
        }
        Ok(())
    }

    /// Sends raw transmit slots (tests of hostile front ends: nothing is
    /// checked; see [`NetFront::send_raw`]) and notifies dom0.
    pub fn send_raw(&mut self, platform: &mut impl Platform, slots: &[NetifTxRequest]) -> Result<(), NetError> {
        self.front.send_raw(slots)?;
        platform.notify(self.port);
        Ok(())
    }

    /// Takes dom0's transmit answers (frees buffers, counts errors).
    pub fn reclaim(&mut self) -> Result<(), NetError> {
        self.front.reclaim()
    }

    /// Notifies dom0's net back end.
    pub fn notify(&self, platform: &mut impl Platform) {
        platform.notify(self.port);
    }

    /// The vif's counters.
    pub fn stats(&self) -> NetStats {
        self.front.stats
    }

    /// Transmit buffers in flight.
    pub fn tx_in_flight(&self) -> usize {
        self.front.tx_in_flight()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HostileNet, MAC, Model};
    use crate::xenbus::{Device, DeviceChange};
    use abi::net::FRAME_MAX;

    /// A guest with a vif, connected.
    fn connected() -> (Model, StoreClient, Device<Vif>) {
        let mut model = Model::new();
        model.offer_vif();
        let mut store = model.store_client();
        let mut vif = Device::new(model.vif_pages());
        assert_eq!(vif.hotplug(&mut model, &mut store), Some(DeviceChange::Connected));
        (model, store, vif)
    }

    fn frame(length: usize, seed: u8) -> Vec<u8> {
        (0..length).map(|index| (index as u8).wrapping_mul(13).wrapping_add(seed)).collect()
    }

    /// Waits for the next frame (a second of model time at most).
    fn next_frame(model: &mut Model, vif: &mut Vif) -> Option<Vec<u8>> {
        let mut out = [0u8; FRAME_MAX];
        let give_up = model.now() + model.ticks_per_second();
        while model.now() < give_up {
            if let Some(length) = vif.receive(model, &mut out).unwrap() {
                return Some(out[..length].to_vec());
            }
            let deadline = model.now() + model.ticks_per_second() / 100;
            vif.wait(model, deadline);
        }
        None
    }

    #[test]
    fn the_handshake_publishes_xens_keys_and_posts_every_buffer() {
        let (mut model, _, vif) = connected();
        let store = model.store();
        let key = |key: &str| store.read(&format!("device/vif/0/{key}")).map(str::to_string);
        assert_eq!(key("state").as_deref(), Some("4"), "Connected");
        assert_eq!((key("request-rx-copy").as_deref(), key("feature-rx-notify").as_deref()), (Some("1"), Some("1")));
        assert_eq!(key("event-channel"), vif.front().map(|vif| vif.port().to_string()));
        assert_eq!(key("mac").as_deref(), Some(MAC));
        assert_eq!((vif.grants().len(), model.dom0.grants.live()), (VIF_PAGES, VIF_PAGES));
    }

    #[test]
    fn frames_sent_come_back_whole() {
        let (mut model, _, mut vif) = connected();
        let front = vif.front_mut().unwrap();
        // More frames than buffers either way, so every buffer is reused.
        for round in 0..3 * RX_BUFFERS {
            let sent = frame(60 + round * 23 % (FRAME_MAX - 60), round as u8);
            front.send(&mut model, &sent).unwrap();
            assert_eq!(next_frame(&mut model, front), Some(sent), "round {round}");
        }
        // A frame in two slots, crossing a page, arrives as one.
        let sent = frame(300, 9);
        front.send_split(&mut model, &sent, 20).unwrap();
        assert_eq!(next_frame(&mut model, front).as_ref(), Some(&sent));
        assert_eq!(model.netback().sent.last(), Some(&sent));
        front.reclaim().unwrap();
        assert_eq!(front.tx_in_flight(), 0);
        let stats = front.stats();
        assert_eq!((stats.rx_frames, stats.rx_errors, stats.tx_errors), (3 * RX_BUFFERS as u64 + 1, 0, 0));
    }

    #[test]
    fn a_hostile_back_end_breaks_the_vif_without_a_panic() {
        for (hostile, broken) in
            [(HostileNet::UnpostedBuffer, true), (HostileNet::WrongTxId, true), (HostileNet::PastThePage, false)]
        {
            let (mut model, _, mut vif) = connected();
            let front = vif.front_mut().unwrap();
            model.netback().hostile = Some(hostile);
            front.send(&mut model, &frame(60, 1)).unwrap();
            let mut out = [0u8; FRAME_MAX];
            let mut outcome = Ok(None);
            for _ in 0..10 {
                let deadline = model.now() + 1000;
                front.wait(&mut model, deadline);
                let _ = front.reclaim();
                outcome = front.receive(&mut model, &mut out);
                if outcome.is_err() {
                    break;
                }
            }
            if broken {
                assert_eq!(outcome, Err(NetError::Broken), "{hostile:?}");
                assert_eq!(front.send(&mut model, &frame(60, 2)), Err(NetError::Broken), "{hostile:?}");
            } else {
                // A frame that does not fit its page is dropped and counted.
                assert_eq!((outcome, front.stats().rx_errors), (Ok(None), 1), "{hostile:?}");
            }
        }
    }

    #[test]
    fn a_closed_vif_lets_go_of_everything_and_reconnects() {
        let (mut model, mut store, mut vif) = connected();
        assert_eq!(vif.close(&mut model, &mut store), Ok(()));
        assert_eq!((model.dom0.grants.live(), model.open_ports.len()), (0, 0));
        assert!(vif.reconnect(&mut model, &mut store));
        let front = vif.front_mut().unwrap();
        let sent = frame(100, 4);
        front.send(&mut model, &sent).unwrap();
        assert_eq!(next_frame(&mut model, front), Some(sent));
    }
}
