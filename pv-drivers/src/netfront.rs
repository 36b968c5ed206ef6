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
