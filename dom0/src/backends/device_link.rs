//! dom0's one attach/detach state machine for split devices, disks (`vbd`)
//! and vifs alike, laid out in the store as Xen's toolstack lays them out
//! (`abi::store`'s "Devices and the handshake"): where each device's
//! directories are, the keys the toolstack publishes for each class, what
//! the back end does next given where it is and the front end's `state`
//! ([`next_step`]), and the store writes of each step. The toolstack
//! supplies the class-specific connect and release hooks (mapping rings,
//! binding ports) and the clock.

use core::fmt::Write;

use abi::DomainId;
use abi::store::{Access, parse_decimal};
use abi::xen::io::block::{
    KEY_DEVICE_TYPE, KEY_EVENT_CHANNEL, KEY_FEATURE_FLUSH_CACHE, KEY_FEATURE_MAX_INDIRECT_SEGMENTS,
    KEY_FEATURE_PERSISTENT, KEY_INFO, KEY_MODE, KEY_PHYSICAL_SECTOR_SIZE, KEY_RING_REF, KEY_SECTOR_SIZE, KEY_SECTORS,
    KEY_VIRTUAL_DEVICE, VDISK_READONLY, xvd_virtual_device,
};
use abi::xen::io::net::{
    KEY_FEATURE_GSO_TCPV4, KEY_FEATURE_NO_CSUM_OFFLOAD, KEY_FEATURE_RX_COPY, KEY_FEATURE_SG, KEY_HANDLE, KEY_MAC,
    KEY_MTU, KEY_RX_RING_REF, KEY_TX_RING_REF,
};
use abi::xen::io::xenbus::{
    KEY_BACKEND, KEY_BACKEND_ID, KEY_FRONTEND, KEY_FRONTEND_ID, KEY_ONLINE, KEY_STATE, XenbusState,
};
use arrayvec::{ArrayString, ArrayVec};

use crate::store::{Permissions, Store};

/// A device class dom0 serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// A virtual disk (Xen's blkif).
    Vbd = 0,
    /// A virtual network interface (Xen's netif).
    Vif = 1,
}

impl Class {
    /// Every class, in the order the toolstack steps them.
    pub const ALL: [Class; 2] = [Class::Vbd, Class::Vif];

    /// The class's name in store paths.
    pub const fn name(self) -> &'static str {
        match self {
            Class::Vbd => "vbd",
            Class::Vif => "vif",
        }
    }

    /// What the shell calls a device of this class.
    pub const fn noun(self) -> &'static str {
        match self {
            Class::Vbd => "disk",
            Class::Vif => "vif",
        }
    }

    /// The number of the guest's (only) device of this class, its
    /// directories' name: Xen's virtual-device number of `xvda` (51712)
    /// for a disk, handle 0 for a vif.
    pub const fn device_number(self) -> u32 {
        match self {
            Class::Vbd => match xvd_virtual_device(0, 0) {
                Some(number) => number,
                None => 0,
            },
            Class::Vif => 0,
        }
    }

    /// The grant-reference keys the front end publishes, in the order
    /// [`Published::grants`] holds them.
    pub const fn ring_keys(self) -> &'static [&'static str] {
        match self {
            Class::Vbd => &[KEY_RING_REF],
            Class::Vif => &[KEY_TX_RING_REF, KEY_RX_RING_REF],
        }
    }
}

/// A store path this module builds.
pub type Path = ArrayString<96>;

fn path(arguments: core::fmt::Arguments<'_>) -> Path {
    let mut path = Path::new();
    let _ = path.write_fmt(arguments);
    path
}

/// `/local/domain/<guest>/device/<class>/<n>`.
pub fn front_directory(class: Class, guest: DomainId) -> Path {
    path(format_args!("/local/domain/{guest}/device/{}/{}", class.name(), class.device_number()))
}

/// `/local/domain/0/backend/<class>/<guest>/<n>`.
pub fn back_directory(class: Class, guest: DomainId) -> Path {
    path(format_args!("/local/domain/0/backend/{}/{guest}/{}", class.name(), class.device_number()))
}

/// `/local/domain/0/backend/<class>/<guest>`: every back-end directory of
/// the guest's devices of `class` (removed with its last device).
pub fn back_class_directory(class: Class, guest: DomainId) -> Path {
    path(format_args!("/local/domain/0/backend/{}/{guest}", class.name()))
}

/// What the toolstack offers a guest: the device's class and the
/// parameters its keys publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    /// A disk of `sectors` 512-byte sectors.
    Disk {
        /// Size in 512-byte sectors.
        sectors: u64,
        /// Writes are refused.
        readonly: bool,
    },
    /// A vif with this MAC address.
    Vif {
        /// Its MAC, the only source address the switch takes from it.
        mac: [u8; 6],
    },
}

impl Offer {
    /// The offer's device class.
    pub const fn class(&self) -> Class {
        match self {
            Offer::Disk { .. } => Class::Vbd,
            Offer::Vif { .. } => Class::Vif,
        }
    }
}

/// The store operations the machine needs, done as dom0.
pub trait DeviceStore {
    /// A node's value; None when it is absent.
    fn read_value(&self, path: &str) -> Option<&str>;
    /// Writes a node (creating it); failures are ignored: the peer reads
    /// the absence as a broken device.
    fn write_value(&mut self, path: &str, value: &str);
    /// Creates `path` and gives it to `owner`, readable by `reader`.
    fn make_directory(&mut self, path: &str, owner: DomainId, reader: DomainId);
    /// Removes `path` with its subtree.
    fn remove_tree(&mut self, path: &str);
}

impl<const NODES: usize, const ARENA: usize, const WATCHES: usize, const DOMAINS: usize> DeviceStore
    for Store<NODES, ARENA, WATCHES, DOMAINS>
{
    fn read_value(&self, path: &str) -> Option<&str> {
        self.read(abi::DOM0, path).ok()
    }

    fn write_value(&mut self, path: &str, value: &str) {
        let _ = self.write(abi::DOM0, path, value);
    }

    fn make_directory(&mut self, path: &str, owner: DomainId, reader: DomainId) {
        let mut permissions = Permissions::owned_by(owner);
        let _ = permissions.grant(reader, Access::Read);
        let _ = self.mkdir(abi::DOM0, path);
        let _ = self.set_permissions(abi::DOM0, path, &permissions);
    }

    fn remove_tree(&mut self, path: &str) {
        let _ = self.remove(abi::DOM0, path);
    }
}

fn write_key(store: &mut impl DeviceStore, directory: &str, key: &str, value: &str) {
    store.write_value(&path(format_args!("{directory}/{key}")), value);
}

fn decimal(value: u64) -> ArrayString<20> {
    let mut text = ArrayString::new();
    let _ = write!(text, "{value}");
    text
}

/// Publishes `offer` to `guest` as Xen's toolstack does, the back end's
/// keys included: the back-end directory (owned by dom0, readable by the
/// guest) with `frontend`, `frontend-id`, `online`, the class's keys and
/// features, `state` = InitWait; the front-end directory (owned by the
/// guest, readable by dom0) with `backend`, `backend-id`, the class's
/// toolstack keys, `state` = Initialising.
pub fn publish(store: &mut impl DeviceStore, guest: DomainId, offer: Offer) {
    let class = offer.class();
    let back = back_directory(class, guest);
    let front = front_directory(class, guest);
    // Permissions first: nodes created below inherit them.
    store.make_directory(&back, abi::DOM0, guest);
    store.make_directory(&front, guest, abi::DOM0);
    write_key(store, &back, KEY_FRONTEND, &front);
    write_key(store, &back, KEY_FRONTEND_ID, &decimal(guest.into()));
    write_key(store, &back, KEY_ONLINE, "1");
    write_key(store, &front, KEY_BACKEND, &back);
    write_key(store, &front, KEY_BACKEND_ID, &decimal(abi::DOM0.into()));
    match offer {
        Offer::Disk { sectors, readonly } => {
            write_key(store, &front, KEY_VIRTUAL_DEVICE, &decimal(class.device_number().into()));
            write_key(store, &front, KEY_DEVICE_TYPE, "disk");
            write_key(store, &back, KEY_SECTORS, &decimal(sectors));
            write_key(store, &back, KEY_SECTOR_SIZE, "512");
            write_key(store, &back, KEY_PHYSICAL_SECTOR_SIZE, "512");
            write_key(store, &back, KEY_INFO, &decimal(if readonly { VDISK_READONLY.into() } else { 0 }));
            write_key(store, &back, KEY_MODE, if readonly { "r" } else { "w" });
            write_key(store, &back, KEY_FEATURE_FLUSH_CACHE, "1");
            write_key(store, &back, KEY_FEATURE_PERSISTENT, "1");
            let indirect = crate::backends::block::MAX_INDIRECT_SEGMENTS as u64;
            write_key(store, &back, KEY_FEATURE_MAX_INDIRECT_SEGMENTS, &decimal(indirect));
        }
        Offer::Vif { mac } => {
            let mut text = [0u8; 17];
            let mac = abi::net::format_mac(mac, &mut text);
            let handle = decimal(class.device_number().into());
            for directory in [&front, &back] {
                write_key(store, directory, KEY_HANDLE, &handle);
                write_key(store, directory, KEY_MAC, mac);
            }
            write_key(store, &front, KEY_MTU, &decimal(abi::net::MTU as u64));
            write_key(store, &back, KEY_FEATURE_RX_COPY, "1");
            write_key(store, &back, KEY_FEATURE_SG, "1");
            write_key(store, &back, KEY_FEATURE_GSO_TCPV4, "0");
            write_key(store, &back, KEY_FEATURE_NO_CSUM_OFFLOAD, "1");
        }
    }
    write_key(store, &back, KEY_STATE, XenbusState::InitWait.format());
    write_key(store, &front, KEY_STATE, XenbusState::Initialising.format());
}

/// Removes both directories of `guest`'s device of `class` (the back end's
/// per-guest directory too: it is the class's only device).
pub fn unpublish(store: &mut impl DeviceStore, class: Class, guest: DomainId) {
    store.remove_tree(&back_class_directory(class, guest));
    store.remove_tree(&front_directory(class, guest));
}

/// Sets the back end's `state`.
pub fn write_back_state(store: &mut impl DeviceStore, class: Class, guest: DomainId, state: XenbusState) {
    write_key(store, &back_directory(class, guest), KEY_STATE, state.format());
}

/// Starts taking a connected device away, as Xen's toolstack does:
/// `online` = 0 and the back end's `state` = Closing.
pub fn begin_detach(store: &mut impl DeviceStore, class: Class, guest: DomainId) {
    write_key(store, &back_directory(class, guest), KEY_ONLINE, "0");
    write_back_state(store, class, guest, XenbusState::Closing);
}

/// The front end's `state` as the back end reads it
/// ([`XenbusState::from_key`]: absent is Unknown, unparseable Closed).
pub fn front_state(store: &impl DeviceStore, class: Class, guest: DomainId) -> XenbusState {
    let key = path(format_args!("{}/{KEY_STATE}", front_directory(class, guest)));
    XenbusState::from_key(store.read_value(&key).map(str::as_bytes))
}

/// What a front end published for the back end to connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// Grant references of its ring pages, in [`Class::ring_keys`] order.
    pub grants: ArrayVec<u32, 2>,
    /// Its port for the back end's domain (`event-channel`).
    pub port: u32,
    /// It keeps grants of data pages for reuse (`feature-persistent` =
    /// 1): the back end may keep them mapped.
    pub persistent: bool,
}

/// The keys `guest`'s front end of `class` published; None when a
/// required one is absent or not a decimal number.
pub fn published(store: &impl DeviceStore, class: Class, guest: DomainId) -> Option<Published> {
    let front = front_directory(class, guest);
    let number = |key: &str| {
        store.read_value(&path(format_args!("{front}/{key}"))).and_then(|value| parse_decimal(value.as_bytes()))
    };
    let mut grants = ArrayVec::new();
    for key in class.ring_keys() {
        grants.push(number(key)?);
    }
    Some(Published {
        grants,
        port: number(KEY_EVENT_CHANNEL)?,
        persistent: class == Class::Vbd && number(KEY_FEATURE_PERSISTENT) == Some(1),
    })
}

/// Where dom0's back end of one device is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Offered (back end InitWait), waiting for the front end.
    Offered,
    /// Ring(s) mapped and port bound (back end Connected).
    Connected,
    /// Was connected, but the front end broke the ring: dom0 stopped
    /// serving it; the ring pages stay mapped until the front end closes.
    Broken,
    /// The operator is taking the device away (`block-detach`,
    /// `network-detach`; back end Closing, `online` 0).
    Detaching,
    /// Closed after the front end closed it, or after a connection dom0
    /// refused (back end Closed): nothing mapped, waiting for the front
    /// end to write Initialising.
    Closed,
}

/// What the back end does now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing.
    Stay,
    /// Map the ring(s) the front end published ([`published`]), bind its
    /// port, answer Connected (Closed if unusable).
    Connect,
    /// Finish in-flight work, unmap the ring(s) and persistent grants,
    /// close the port (unless already closed), answer Closed; the
    /// directories stay.
    Close,
    /// Answer Closed (nothing is mapped).
    Refuse,
    /// Offer the device again: answer InitWait.
    Reoffer,
    /// The detach is done: release as [`Step::Close`] does, answer Closed
    /// and remove both directories.
    Remove,
}

/// The next step for a back end at `link` whose front end's `state` reads
/// `front` ([`front_state`]); `timed_out` when a detach has waited longer
/// than the toolstack allows.
///
/// A front end that leaves Initialised/Connected for any other state
/// (Closing, Closed, Initialising, InitWait, Reconfiguring, Reconfigured,
/// unparseable, or absent) is closing. An offered back end connects on
/// Initialised (Linux's blkfront) or Connected (Linux's netfront, which
/// does not stop at Initialised). Only an explicit Initialising takes a
/// Closed back end back to InitWait: an absent `state` is never a request
/// to reconnect. A detach ends when the front end says Closed, its `state`
/// is gone, or time is up.
pub fn next_step(link: Link, front: XenbusState, timed_out: bool) -> Step {
    use XenbusState as S;
    let front_live = matches!(front, S::Initialised | S::Connected);
    match link {
        Link::Detaching if timed_out || matches!(front, S::Closed | S::Unknown) => Step::Remove,
        Link::Detaching => Step::Stay,
        Link::Connected | Link::Broken if front_live => Step::Stay,
        Link::Connected | Link::Broken => Step::Close,
        Link::Offered => match front {
            S::Initialised | S::Connected => Step::Connect,
            // Not started yet.
            S::Unknown | S::Initialising | S::InitWait => Step::Stay,
            S::Closing | S::Closed | S::Reconfiguring | S::Reconfigured => Step::Refuse,
        },
        Link::Closed if front == S::Initialising => Step::Reoffer,
        Link::Closed => Step::Stay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use abi::xen::io::xenbus::XenbusState as S;

    type Small = Store<256, 16384, 16, 8>;
    const GUEST: DomainId = 5;

    fn store() -> Box<Small> {
        let mut store = Box::new(Small::new());
        store.introduce_domain(GUEST, crate::store::Quota::GUEST).unwrap();
        store.write(abi::DOM0, "/local/domain/5/name", "guest").unwrap();
        store.set_permissions(abi::DOM0, "/local/domain/5", &Permissions::owned_by(GUEST)).unwrap();
        store
    }

    fn read<'a>(store: &'a Small, caller: DomainId, path: &str) -> Option<&'a str> {
        store.read(caller, path).ok()
    }

    #[test]
    fn directories_are_xens() {
        assert_eq!(front_directory(Class::Vbd, 7).as_str(), "/local/domain/7/device/vbd/51712");
        assert_eq!(back_directory(Class::Vbd, 7).as_str(), "/local/domain/0/backend/vbd/7/51712");
        assert_eq!(front_directory(Class::Vif, 7).as_str(), "/local/domain/7/device/vif/0");
        assert_eq!(back_directory(Class::Vif, 7).as_str(), "/local/domain/0/backend/vif/7/0");
    }

    #[test]
    fn a_disk_is_published_with_xens_keys_and_permissions() {
        let mut store = store();
        publish(&mut *store, GUEST, Offer::Disk { sectors: 2048, readonly: true });
        let front = "/local/domain/5/device/vbd/51712";
        let back = "/local/domain/0/backend/vbd/5/51712";
        for (key, value) in [
            ("backend", back),
            ("backend-id", "0"),
            ("state", "1"),
            ("virtual-device", "51712"),
            ("device-type", "disk"),
        ] {
            assert_eq!(read(&store, GUEST, &format!("{front}/{key}")), Some(value), "{key}");
        }
        for (key, value) in [
            ("frontend", front),
            ("frontend-id", "5"),
            ("online", "1"),
            ("state", "2"),
            ("sectors", "2048"),
            ("sector-size", "512"),
            ("physical-sector-size", "512"),
            ("info", "4"),
            ("mode", "r"),
            ("feature-flush-cache", "1"),
            ("feature-persistent", "1"),
            ("feature-max-indirect-segments", "32"),
        ] {
            assert_eq!(read(&store, GUEST, &format!("{back}/{key}")), Some(value), "{key}");
        }
        for absent in ["feature-barrier", "max-ring-page-order", "feature-discard"] {
            assert_eq!(read(&store, abi::DOM0, &format!("{back}/{absent}")), None, "{absent}");
        }
        // The front end's directory is the guest's, readable by dom0; the
        // back end's dom0's, readable by the guest, not writable.
        let front_permissions = store.get_permissions(GUEST, front).unwrap();
        assert_eq!(front_permissions.owner, GUEST);
        assert!(front_permissions.grants().iter().any(|g| g.domain == abi::DOM0 && g.access.can_read()));
        let back_permissions = store.get_permissions(GUEST, back).unwrap();
        assert_eq!(back_permissions.owner, abi::DOM0);
        assert!(back_permissions.grants().iter().any(|g| g.domain == GUEST && g.access == Access::Read));
        assert!(store.write(GUEST, &format!("{back}/state"), "4").is_err());
        assert!(store.write(GUEST, &format!("{front}/ring-ref"), "8").is_ok());
        // Another guest sees neither.
        assert_eq!(read(&store, 6, &format!("{back}/sectors")), None);
        assert_eq!(read(&store, 6, &format!("{front}/state")), None);
    }

    #[test]
    fn a_vif_is_published_with_xens_keys() {
        let mut store = store();
        publish(&mut *store, GUEST, Offer::Vif { mac: [0x02, 0, 0, 0, 0, 5] });
        let front = "/local/domain/5/device/vif/0";
        let back = "/local/domain/0/backend/vif/5/0";
        for (key, value) in [("backend", back), ("state", "1"), ("mac", "02:00:00:00:00:05"), ("handle", "0")] {
            assert_eq!(read(&store, GUEST, &format!("{front}/{key}")), Some(value), "{key}");
        }
        assert_eq!(read(&store, GUEST, &format!("{front}/mtu")), Some("1500"));
        for (key, value) in [
            ("frontend", front),
            ("online", "1"),
            ("state", "2"),
            ("mac", "02:00:00:00:00:05"),
            ("feature-rx-copy", "1"),
            ("feature-sg", "1"),
            ("feature-gso-tcpv4", "0"),
            ("feature-no-csum-offload", "1"),
        ] {
            assert_eq!(read(&store, GUEST, &format!("{back}/{key}")), Some(value), "{key}");
        }
    }

    #[test]
    fn what_the_front_end_published_is_read_or_refused() {
        let mut store = store();
        publish(&mut *store, GUEST, Offer::Disk { sectors: 8, readonly: false });
        publish(&mut *store, GUEST, Offer::Vif { mac: [2, 0, 0, 0, 0, 1] });
        let front = "/local/domain/5/device/vbd/51712";
        assert_eq!(published(&*store, Class::Vbd, GUEST), None);
        store.write(GUEST, &format!("{front}/ring-ref"), "8").unwrap();
        assert_eq!(published(&*store, Class::Vbd, GUEST), None, "no event-channel yet");
        store.write(GUEST, &format!("{front}/event-channel"), "3").unwrap();
        let found = published(&*store, Class::Vbd, GUEST).unwrap();
        assert_eq!((found.grants.as_slice(), found.port, found.persistent), (&[8][..], 3, false));
        store.write(GUEST, &format!("{front}/feature-persistent"), "1").unwrap();
        assert!(published(&*store, Class::Vbd, GUEST).unwrap().persistent);
        for bad in ["-1", "0x8", "", "99999999999"] {
            store.write(GUEST, &format!("{front}/ring-ref"), bad).unwrap();
            assert_eq!(published(&*store, Class::Vbd, GUEST), None, "{bad:?}");
        }
        let vif = "/local/domain/5/device/vif/0";
        for (key, value) in [("tx-ring-ref", "9"), ("rx-ring-ref", "10"), ("event-channel", "4")] {
            store.write(GUEST, &format!("{vif}/{key}"), value).unwrap();
        }
        let found = published(&*store, Class::Vif, GUEST).unwrap();
        assert_eq!((found.grants.as_slice(), found.port), (&[9, 10][..], 4));
    }

    #[test]
    fn front_states_are_read_the_safe_way() {
        let mut store = store();
        assert_eq!(front_state(&*store, Class::Vbd, GUEST), S::Unknown);
        publish(&mut *store, GUEST, Offer::Disk { sectors: 8, readonly: false });
        assert_eq!(front_state(&*store, Class::Vbd, GUEST), S::Initialising);
        let state = "/local/domain/5/device/vbd/51712/state";
        store.write(GUEST, state, "3").unwrap();
        assert_eq!(front_state(&*store, Class::Vbd, GUEST), S::Initialised);
        store.write(GUEST, state, "nine").unwrap();
        assert_eq!(front_state(&*store, Class::Vbd, GUEST), S::Closed);
        store.remove(GUEST, state).unwrap();
        assert_eq!(front_state(&*store, Class::Vbd, GUEST), S::Unknown);
    }

    #[test]
    fn detach_and_unpublish() {
        let mut store = store();
        publish(&mut *store, GUEST, Offer::Disk { sectors: 8, readonly: false });
        begin_detach(&mut *store, Class::Vbd, GUEST);
        let back = "/local/domain/0/backend/vbd/5/51712";
        assert_eq!(read(&store, GUEST, &format!("{back}/state")), Some("5"));
        assert_eq!(read(&store, GUEST, &format!("{back}/online")), Some("0"));
        unpublish(&mut *store, Class::Vbd, GUEST);
        assert_eq!(read(&store, abi::DOM0, "/local/domain/0/backend/vbd/5"), None);
        assert_eq!(read(&store, abi::DOM0, "/local/domain/5/device/vbd/51712"), None);
        assert_eq!(read(&store, abi::DOM0, "/local/domain/5/name"), Some("guest"));
    }

    #[test]
    fn a_connected_back_end_closes_when_the_front_end_leaves() {
        for link in [Link::Connected, Link::Broken] {
            for front in S::ALL.iter().copied() {
                let expected = if matches!(front, S::Initialised | S::Connected) { Step::Stay } else { Step::Close };
                assert_eq!(next_step(link, front, false), expected, "{link:?} {front:?}");
            }
        }
    }

    #[test]
    fn a_closed_back_end_reoffers_only_on_an_explicit_initialising() {
        for front in S::ALL.iter().copied() {
            let expected = if front == S::Initialising { Step::Reoffer } else { Step::Stay };
            assert_eq!(next_step(Link::Closed, front, false), expected, "{front:?}");
        }
    }

    #[test]
    fn an_offered_back_end_connects_on_initialised_or_connected_and_refuses_a_close() {
        assert_eq!(next_step(Link::Offered, S::Initialised, false), Step::Connect, "blkfront");
        assert_eq!(next_step(Link::Offered, S::Connected, false), Step::Connect, "netfront");
        for refused in [S::Closing, S::Closed, S::Reconfiguring, S::Reconfigured] {
            assert_eq!(next_step(Link::Offered, refused, false), Step::Refuse, "{refused:?}");
        }
        for waiting in [S::Unknown, S::Initialising, S::InitWait] {
            assert_eq!(next_step(Link::Offered, waiting, false), Step::Stay, "{waiting:?}");
        }
    }

    #[test]
    fn a_detach_ends_on_closed_absent_or_time() {
        for front in S::ALL.iter().copied() {
            let expected = if matches!(front, S::Closed | S::Unknown) { Step::Remove } else { Step::Stay };
            assert_eq!(next_step(Link::Detaching, front, false), expected, "{front:?}");
            assert_eq!(next_step(Link::Detaching, front, true), Step::Remove, "{front:?}");
        }
    }

    /// A front end flapping Closing / Initialising / Initialised (or
    /// Connected): the back end alternates Close, Reoffer, Connect, and
    /// never maps twice without a Close between (the toolstack's window
    /// pages come back each round).
    #[test]
    fn a_flapping_front_end_alternates_close_and_connect() {
        for ready in [S::Initialised, S::Connected] {
            let mut link = Link::Connected;
            let mut mapped = 1;
            for round in 0..50 {
                for front in [S::Closing, S::Closed, S::Initialising, ready] {
                    // Each front-end write may be seen twice (a pass per store change).
                    for _ in 0..2 {
                        match next_step(link, front, false) {
                            Step::Stay => {}
                            Step::Close => {
                                mapped -= 1;
                                link = Link::Closed;
                            }
                            Step::Reoffer => link = Link::Offered,
                            Step::Connect => {
                                mapped += 1;
                                link = Link::Connected;
                            }
                            Step::Refuse => link = Link::Closed,
                            Step::Remove => panic!("no detach was asked"),
                        }
                        assert!((0..=1).contains(&mapped), "round {round}");
                    }
                }
                assert_eq!(link, Link::Connected);
                assert_eq!(mapped, 1);
            }
        }
    }
}
