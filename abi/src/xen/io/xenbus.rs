//! The xenbus state machine (`io/xenbus.h`): how a front end and a back
//! end bring a device up and down through the store.
//!
//! Each end writes its own state, as a decimal number ([`XenbusState::format`],
//! [`XenbusState::parse`]), to a `state` key in its own directory, and
//! watches the other end's. Device directories: the front end's is
//! `device/<class>/<id>` in the guest's home (`/local/domain/<guest>/`),
//! the back end's `backend/<class>/<guest>/<id>` in the back end domain's
//! home. Each directory names the other: keys [`KEY_BACKEND`] and
//! [`KEY_BACKEND_ID`] in the front end's, [`KEY_FRONTEND`] and
//! [`KEY_FRONTEND_ID`] in the back end's (written by the toolstack).
//!
//! The usual bring-up (each protocol module lists its keys):
//! ```text
//!  front end                              back end
//!  Initialising                           Initialising
//!                                         publishes features -> InitWait
//!  reads features, grants its ring,
//!  allocates a port, writes ring-ref,
//!  event-channel, protocol -> Initialised
//!                                         maps the ring, binds the port,
//!                                         publishes device size -> Connected
//!  reads the device size -> Connected
//! ```
//! Tear-down: either end moves to `Closing`, the other follows to
//! `Closing`, then both to `Closed`; the front end may then start again
//! from `Initialising`. Writes of the keys and the state change that
//! publishes them are done in one store transaction, or the keys first.

use crate::xen::numbered_enum;

numbered_enum! {
    /// A device end's state (`enum xenbus_state`).
    pub enum XenbusState: u32 {
        /// No state yet (the key is missing or unreadable).
        Unknown = 0,
        /// The end is setting itself up.
        Initialising = 1,
        /// Back end: set up and waiting for the front end's transport
        /// details (ring, port).
        InitWait = 2,
        /// Front end: transport details published, waiting for the back
        /// end to connect.
        Initialised = 3,
        /// The device works.
        Connected = 4,
        /// The device is being shut down (an error or an unplug).
        Closing = 5,
        /// Shut down.
        Closed = 6,
        /// Being reconfigured (used by a few device classes).
        Reconfiguring = 7,
        /// Reconfigured.
        Reconfigured = 8,
    }
}

/// Bytes of the longest state as text.
pub const XENBUS_STATE_TEXT_MAX: usize = 1;

impl XenbusState {
    /// The state as the store holds it: its number in decimal, no
    /// terminator (`"4"`).
    pub const fn format(self) -> &'static str {
        match self {
            XenbusState::Unknown => "0",
            XenbusState::Initialising => "1",
            XenbusState::InitWait => "2",
            XenbusState::Initialised => "3",
            XenbusState::Connected => "4",
            XenbusState::Closing => "5",
            XenbusState::Closed => "6",
            XenbusState::Reconfiguring => "7",
            XenbusState::Reconfigured => "8",
        }
    }

    /// Parses a `state` value: decimal digits of a known state, with no
    /// sign or spaces. A trailing NUL is tolerated (some writers include
    /// one). `None` for anything else.
    pub fn parse(text: &[u8]) -> Option<XenbusState> {
        let text = match text.split_last() {
            Some((0, rest)) => rest,
            _ => text,
        };
        if text.is_empty() || text.len() > 10 || !text.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let mut value: u64 = 0;
        for digit in text {
            value = value * 10 + u64::from(digit - b'0');
        }
        u32::try_from(value).ok().and_then(XenbusState::from_number)
    }

    /// The reading of a peer's `state` key, `None` when the key (or its
    /// directory) is absent: absent is [`XenbusState::Unknown`], as Linux's
    /// `xenbus_read_driver_state` reads it; a value that does not parse is
    /// [`XenbusState::Closed`], the safe reading.
    pub fn from_key(value: Option<&[u8]>) -> XenbusState {
        match value {
            None => XenbusState::Unknown,
            Some(value) => XenbusState::parse(value).unwrap_or(XenbusState::Closed),
        }
    }
}

/// Front end key: path of the back end's directory.
pub const KEY_BACKEND: &str = "backend";
/// Front end key: the back end's domain id.
pub const KEY_BACKEND_ID: &str = "backend-id";
/// Back end key: path of the front end's directory.
pub const KEY_FRONTEND: &str = "frontend";
/// Back end key: the front end's domain id.
pub const KEY_FRONTEND_ID: &str = "frontend-id";
/// Both ends: the end's [`XenbusState`].
pub const KEY_STATE: &str = "state";
/// Back end key: the device is online (`"1"`); the toolstack clears it to
/// unplug.
pub const KEY_ONLINE: &str = "online";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::test_support::check_numbered;

    #[test]
    fn numbers_match_xen() {
        check_numbered!(XenbusState, u32);
        assert_eq!(XenbusState::Connected.number(), 4);
        assert_eq!(XenbusState::Reconfigured.number(), 8);
    }

    #[test]
    fn text_round_trips() {
        for state in XenbusState::ALL {
            assert_eq!(XenbusState::parse(state.format().as_bytes()), Some(*state));
            assert_eq!(state.format().len(), XENBUS_STATE_TEXT_MAX);
            assert_eq!(state.format(), state.number().to_string());
        }
    }

    #[test]
    fn parse_rejects_what_is_not_a_state() {
        assert_eq!(XenbusState::parse(b"4\0"), Some(XenbusState::Connected), "trailing NUL");
        assert_eq!(XenbusState::parse(b"04"), Some(XenbusState::Connected), "leading zero is still 4");
        assert_eq!(XenbusState::parse(b""), None);
        assert_eq!(XenbusState::parse(b"\0"), None);
        assert_eq!(XenbusState::parse(b"9"), None);
        assert_eq!(XenbusState::parse(b"-1"), None);
        assert_eq!(XenbusState::parse(b" 4"), None);
        assert_eq!(XenbusState::parse(b"4 "), None);
        assert_eq!(XenbusState::parse(b"4\0\0"), None);
        assert_eq!(XenbusState::parse(b"4294967300"), None, "beyond u32");
        assert_eq!(XenbusState::parse(b"99999999999999999999"), None);
        assert_eq!(XenbusState::parse(b"Connected"), None);
    }

    #[test]
    fn key_readings() {
        assert_eq!(XenbusState::from_key(None), XenbusState::Unknown);
        assert_eq!(XenbusState::from_key(Some(b"4")), XenbusState::Connected);
        assert_eq!(XenbusState::from_key(Some(b"8")), XenbusState::Reconfigured);
        assert_eq!(XenbusState::from_key(Some(b"9")), XenbusState::Closed);
        assert_eq!(XenbusState::from_key(Some(b"four")), XenbusState::Closed);
        assert_eq!(XenbusState::from_key(Some(b"")), XenbusState::Closed);
    }
}
