//! The front end's side of the device handshake: Xen's xenbus states in
//! the store (`abi::xen::io::xenbus`, keys in `abi::store`), one machine for
//! every kind of device ([`Device`] over a [`Frontend`]: `blkfront`'s disk,
//! `netfront`'s vif).
//!
//! The front end's directory is `device/<class>/<number>` in its home
//! ([`device_directory`]); its `backend` key names the back end's directory,
//! whose `state` dom0 writes:
//!
//! ```text
//!  front end (state here)              back end (dom0)
//!  Initialising ──────────────────────  InitWait        offered
//!      │ grant pages, alloc a port,
//!      │ write the keys
//!  Initialised (a disk) ─────────────▶  Connected       maps, binds, notifies
//!  or Connected (a vif)
//!  Connected  ◀───────────────────────  Connected
//!      ⋮
//!  Closing (disk_close) ─────────────▶  Closed          unmaps
//!  Closed: port closed, grants revoked once dom0 unmapped them
//!      or, dom0 first (block-detach):   Closing/Closed  ─▶ front: Closed
//!  Initialising (reconnect) ─────────▶  InitWait        offered again
//! ```
//!
//! A failed connection leaves nothing allocated: its port is closed and its
//! grants revoked. A grant dom0 still maps cannot be revoked: it stays
//! listed with the device and is revoked before the next connection, which
//! is refused until then.
#![forbid(unsafe_code)]

use core::fmt::Write as _;

use abi::xen::io::xenbus::{KEY_BACKEND, KEY_STATE, XenbusState};

use crate::platform::Platform;
use crate::store_client::StoreClient;

/// Most grants one device holds (a disk's ring and 64 transfer pages).
pub const DEVICE_GRANTS_MAX: usize = 65;

/// The grants of one device's pages (a disk's ring and transfer pages, or
/// a vif's rings and buffers), kept until dom0 has let go of them.
pub type DeviceGrants = arrayvec::ArrayVec<u32, DEVICE_GRANTS_MAX>;

/// What [`Device::hotplug`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChange {
    /// A device dom0 offered is connected.
    Connected,
    /// dom0 took the device away; the front end let go of it.
    Disconnected,
}

/// Why [`Device::close`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseError {
    /// The device is not connected.
    NotConnected,
    /// The back end did not answer Closed within a second.
    NoAnswer,
    /// The back end said Closed but still maps a page (its grant could
    /// not be revoked).
    StillMapped,
}

/// The store directory of the guest's first device of class `kind`
/// (`vbd`, `vif`), relative to its home, as Xen's toolstack names it:
/// `device/vbd/51712` (Xen's virtual-device number of `xvda`),
/// `device/vif/0` (handle 0).
pub fn device_directory(kind: &str) -> arrayvec::ArrayString<32> {
    let number = match kind {
        "vbd" => abi::xen::io::block::xvd_virtual_device(0, 0).unwrap_or(0),
        _ => 0,
    };
    let mut path = arrayvec::ArrayString::new();
    let _ = write!(path, "device/{kind}/{number}");
    path
}

/// The path of `key` in [`device_directory`]`(kind)`.
pub fn device_key(kind: &str, key: &str) -> arrayvec::ArrayString<64> {
    let mut path = arrayvec::ArrayString::new();
    let _ = write!(path, "{}/{key}", device_directory(kind));
    path
}

/// A kind of front end: how it connects once dom0 offers it.
pub trait Frontend: Sized {
    /// The device's class in the store ([`device_directory`]).
    const CLASS: &'static str;

    /// The pages the front end's rings and buffers live in.
    type Pages;

    /// Connects through the store to a back end that says InitWait: grants
    /// pages (through [`grant`], into `grants`), allocates its port (left in
    /// `port`), publishes its keys and waits for the back end's Connected.
    /// On failure the caller closes `port` and revokes `grants`.
    fn connect(
        platform: &mut impl Platform,
        store: &mut StoreClient,
        pages: &Self::Pages,
        grants: &mut DeviceGrants,
        port: &mut Option<u32>,
    ) -> Option<Self>;

    /// The device's event port.
    fn port(&self) -> u32;
}

/// Grants dom0 the page at `address` and lists the grant in `grants`.
pub fn grant(platform: &mut impl Platform, grants: &mut DeviceGrants, address: u64, readonly: bool) -> Option<u32> {
    let reference = platform.grant(abi::DOM0, address, readonly).ok()?;
    grants.try_push(reference).ok()?;
    Some(reference)
}

/// One device of a guest: its front end while connected, its pages and
/// the grants it made of them.
#[derive(Debug)]
pub struct Device<F: Frontend> {
    front: Option<F>,
    pages: F::Pages,
    grants: DeviceGrants,
}

impl<F: Frontend> Device<F> {
    /// A device not connected yet, whose front end will use `pages`.
    pub fn new(pages: F::Pages) -> Device<F> {
        Device { front: None, pages, grants: DeviceGrants::new_const() }
    }

    /// The pages the front end uses.
    pub fn pages(&self) -> &F::Pages {
        &self.pages
    }

    /// The front end, while connected.
    pub fn front(&self) -> Option<&F> {
        self.front.as_ref()
    }

    /// The front end, while connected.
    pub fn front_mut(&mut self) -> Option<&mut F> {
        self.front.as_mut()
    }

    /// Grants of the device's pages not revoked yet.
    pub fn grants(&self) -> &[u32] {
        &self.grants
    }

    /// Connects the front end (see [`Frontend::connect`]), with the pages
    /// of an earlier connection revoked first (refused while dom0 still
    /// maps one); if the attempt fails, closes the port it allocated and
    /// revokes what it granted, so nothing stays granted or allocated.
    /// Whether it is connected.
    pub fn connect(&mut self, platform: &mut impl Platform, store: &mut StoreClient) -> bool {
        if !self.release_grants(platform) {
            return false;
        }
        let mut port = None;
        self.front = F::connect(platform, store, &self.pages, &mut self.grants, &mut port);
        if self.front.is_none() {
            if let Some(port) = port {
                platform.close_port(port);
            }
            self.release_grants(platform);
        }
        self.front.is_some()
    }

    /// Revokes the grants of the device's pages; true when none is left (a
    /// page dom0 still maps stays granted, and listed, until it lets go).
    pub fn release_grants(&mut self, platform: &mut impl Platform) -> bool {
        self.grants.retain(|reference| platform.end_grant(*reference).is_err());
        self.grants.is_empty()
    }

    /// Follows dom0's changes to the device (call after store watch
    /// events): connects a device dom0 offered (`block-attach`,
    /// `network-attach`), and lets go of one dom0 is closing
    /// (`block-detach`, `network-detach`): the front end stops, says
    /// Closed, and revokes its grants once dom0 has unmapped the pages.
    pub fn hotplug(&mut self, platform: &mut impl Platform, store: &mut StoreClient) -> Option<DeviceChange> {
        if self.front.is_none() {
            // Pages of a closed connection come back as dom0 unmaps them.
            self.release_grants(platform);
            if !device_offered(platform, store, F::CLASS) {
                return None;
            }
            return self.connect(platform, store).then_some(DeviceChange::Connected);
        }
        if !backend_closing(platform, store, F::CLASS) {
            return None;
        }
        if let Some(front) = self.front.take() {
            platform.close_port(front.port());
        }
        let _ = store.write(platform, &device_key(F::CLASS, KEY_STATE), XenbusState::Closed.format());
        self.release_grants(platform);
        Some(DeviceChange::Disconnected)
    }

    /// The front end closes its device (`abi::store`): writes Closing,
    /// waits (a second at most) for the back end's Closed, closes its port,
    /// revokes its grants and writes Closed. Ok once every grant was
    /// revoked (dom0 unmapped every page). A page dom0 still maps stays
    /// granted and listed; a later connection retries revoking it.
    pub fn close(&mut self, platform: &mut impl Platform, store: &mut StoreClient) -> Result<(), CloseError> {
        let port = self.front.take().ok_or(CloseError::NotConnected)?.port();
        let state = device_key(F::CLASS, KEY_STATE);
        let _ = store.write(platform, &state, XenbusState::Closing.format());
        let closed = wait_backend_state(platform, store, F::CLASS, XenbusState::Closed);
        platform.close_port(port);
        let released = self.release_grants(platform);
        let _ = store.write(platform, &state, XenbusState::Closed.format());
        match (closed, released) {
            (false, _) => Err(CloseError::NoAnswer),
            (true, false) => Err(CloseError::StillMapped),
            (true, true) => Ok(()),
        }
    }

    /// Reconnects a device closed with [`Device::close`]: writes
    /// Initialising, waits (a second at most) for the back end's InitWait,
    /// then connects with fresh rings and fresh grants. Whether it is
    /// connected.
    pub fn reconnect(&mut self, platform: &mut impl Platform, store: &mut StoreClient) -> bool {
        if self.front.is_none() {
            let _ = store.write(platform, &device_key(F::CLASS, KEY_STATE), XenbusState::Initialising.format());
            if wait_backend_state(platform, store, F::CLASS, XenbusState::InitWait) {
                self.connect(platform, store);
            }
        }
        self.front.is_some()
    }
}

/// The back end's directory of [`device_directory`]`(kind)`, as its
/// `backend` key names it.
pub fn backend_directory(
    platform: &mut impl Platform,
    store: &mut StoreClient,
    kind: &str,
) -> Option<arrayvec::ArrayString<96>> {
    let mut text = [0u8; 96];
    let length = store.read(platform, &device_key(kind, KEY_BACKEND), &mut text).ok()?;
    let mut directory = arrayvec::ArrayString::new();
    directory.try_push_str(core::str::from_utf8(&text[..length]).ok()?).ok()?;
    Some(directory)
}

/// The path of `key` in directory `directory`.
pub fn key_in(directory: &str, key: &str) -> arrayvec::ArrayString<128> {
    let mut path = arrayvec::ArrayString::new();
    let _ = write!(path, "{directory}/{key}");
    path
}

/// Whether dom0 offers [`device_directory`]`(kind)` (its front-end
/// directory names a back end).
fn device_offered(platform: &mut impl Platform, store: &mut StoreClient, kind: &str) -> bool {
    let mut text = [0u8; 96];
    store.read(platform, &device_key(kind, KEY_BACKEND), &mut text).is_ok()
}

/// Whether dom0 closed (or removed) the back end of [`device_directory`]`(kind)`.
fn backend_closing(platform: &mut impl Platform, store: &mut StoreClient, kind: &str) -> bool {
    let mut text = [0u8; 96];
    let Ok(length) = store.read(platform, &device_key(kind, KEY_BACKEND), &mut text) else { return true };
    let mut state = arrayvec::ArrayString::<128>::new();
    let _ = write!(state, "{}/{KEY_STATE}", core::str::from_utf8(&text[..length]).unwrap_or(""));
    let length = store.read(platform, &state, &mut text).unwrap_or(0);
    matches!(XenbusState::from_key(Some(&text[..length])), XenbusState::Closing | XenbusState::Closed)
}

/// Waits (a second of guest time at most, 1 ms per look) until the back
/// end of [`device_directory`]`(kind)` (`vbd`, `vif`) says `wanted`.
pub fn wait_backend_state(
    platform: &mut impl Platform,
    store: &mut StoreClient,
    kind: &str,
    wanted: XenbusState,
) -> bool {
    let mut text = [0u8; 96];
    let Ok(length) = store.read(platform, &device_key(kind, KEY_BACKEND), &mut text) else { return false };
    let mut state = arrayvec::ArrayString::<128>::new();
    let _ = write!(state, "{}/{KEY_STATE}", core::str::from_utf8(&text[..length]).unwrap_or(""));
    let give_up = platform.now() + platform.ticks_per_second();
    loop {
        let length = store.read(platform, &state, &mut text).unwrap_or(0);
        if XenbusState::from_key(Some(&text[..length])) == wanted {
            return true;
        }
        if platform.now() > give_up {
            return false;
        }
        platform.set_timer(platform.now() + platform.ticks_per_second() / 1000);
        platform.wait_for_event();
    }
}

/// Waits until the back end's `state` node (absolute path `state_key`)
/// says Connected: true, or Closing/Closed or a second of guest time
/// passed: false. The back end notifies `port` when it connects; a 1 ms
/// timer bounds each wait.
pub fn wait_for_backend(platform: &mut impl Platform, store: &mut StoreClient, state_key: &str, port: u32) -> bool {
    let mut value = [0u8; 32];
    let give_up = platform.now() + platform.ticks_per_second();
    let connected = loop {
        let length = store.read(platform, state_key, &mut value).unwrap_or(0);
        match XenbusState::from_key(Some(&value[..length])) {
            XenbusState::Connected => break true,
            XenbusState::Closing | XenbusState::Closed => break false,
            _ if platform.now() > give_up => break false,
            _ => {
                platform.set_timer(platform.now() + platform.ticks_per_second() / 1000);
                platform.wait_for_event();
            }
        }
    };
    // The back end notified `port` when it bound it; waits took the bit
    // (the port is the platform's since `alloc_port`), take any left.
    platform.take_port(port);
    connected
}
