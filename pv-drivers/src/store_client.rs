//! The store client: requests to dom0's store in Xen's xs_wire messages
//! (`abi::xen::io::store`) on the domain's store ring page, one at a time,
//! with transactions and watches.
//!
//! A request is the 16-byte header (`XsdSockmsg`: type, request id,
//! transaction id, payload length) and its payload: each field followed by
//! a NUL, except a `WRITE`'s value. The reply carries the same request id
//! and type, or the type `ERROR` with an errno name (`EAGAIN`) as payload.
//! Watch events (`WATCH_EVENT`) may arrive between a request and its reply;
//! they are counted, not delivered ([`StoreClient::take_watch_events`]).
//!
//! Transactions: [`StoreClient::transaction_start`] opens one; requests
//! made with it see the store as it was plus their own changes; ending it
//! with a commit may be refused with `EAGAIN` when something changed
//! meanwhile ([`TransactionEnd::Retry`]): nothing of it was applied.
#![forbid(unsafe_code)]

use abi::xen::errno::Errno;
use abi::xen::io::store::{XENSTORE_PAYLOAD_MAX, XSD_SOCKMSG_SIZE, XsdSockmsg, XsdSockmsgType, xsd_error_from_payload};

use crate::console::StoreRingAccess;
use crate::platform::Platform;

/// Bytes of the largest store message (xs_wire): the header and a payload
/// of at most `XENSTORE_PAYLOAD_MAX` bytes.
pub const STORE_MESSAGE_MAX: usize = XSD_SOCKMSG_SIZE + XENSTORE_PAYLOAD_MAX as usize;

/// An open store transaction ([`StoreClient::transaction_start`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreTransaction(pub u32);

/// How [`StoreClient::transaction_end`] ended a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransactionEnd {
    /// Committed (or, when abandoning, abandoned).
    Done,
    /// Not committed: something it read changed meanwhile (`EAGAIN`).
    /// Nothing of it was applied; run it again from the start.
    Retry,
}

/// Why a store request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreFailure {
    /// The guest has no store connection.
    NoStore,
    /// dom0 answered with this error (a name from Xen's table).
    Refused(Errno),
    /// The request does not fit a message, or the reply was malformed or
    /// too long for the caller's buffer.
    BadMessage,
    /// dom0 broke the ring protocol.
    Broken,
}

/// The store client: the ring page, the event port, the next request id.
#[derive(Debug)]
pub struct StoreClient {
    ring: StoreRingAccess,
    port: u32,
    next_id: u32,
    /// The message being received (header, then exactly its payload).
    incoming: [u8; STORE_MESSAGE_MAX],
    incoming_length: usize,
    /// Watch events received and not yet taken by `take_watch_events`.
    watch_events: u32,
}

impl StoreClient {
    /// A client on the store ring `ring`, whose event channel is `port`
    /// (ours, connected to dom0's before the domain first ran).
    pub fn new(ring: StoreRingAccess, port: u32) -> StoreClient {
        StoreClient { ring, port, next_id: 1, incoming: [0; STORE_MESSAGE_MAX], incoming_length: 0, watch_events: 0 }
    }

    /// The store's event port.
    pub fn port(&self) -> u32 {
        self.port
    }

    /// Reads more of the incoming message; returns its total length once
    /// it is complete (it is then in `incoming[..total]`; the caller resets
    /// `incoming_length`).
    fn receive(&mut self, platform: &mut impl Platform) -> Result<Option<usize>, StoreFailure> {
        loop {
            let wanted = if self.incoming_length < XSD_SOCKMSG_SIZE {
                XSD_SOCKMSG_SIZE
            } else {
                let total = XSD_SOCKMSG_SIZE + self.header().len as usize;
                if total > STORE_MESSAGE_MAX {
                    return Err(StoreFailure::Broken);
                }
                total
            };
            // Complete: the header is in, and as much payload as it announces.
            if self.incoming_length >= XSD_SOCKMSG_SIZE && self.incoming_length == wanted {
                return Ok(Some(wanted));
            }
            let count = self
                .ring
                .client_receive(&mut self.incoming[self.incoming_length..wanted])
                .map_err(|_| StoreFailure::Broken)?;
            if count == 0 {
                return Ok(None);
            }
            platform.notify(self.port);
            self.incoming_length += count;
        }
    }

    /// The header of the incoming message (once 16 bytes are in).
    fn header(&self) -> XsdSockmsg {
        XsdSockmsg::from_bytes(self.incoming.first_chunk().unwrap_or(&[0; XSD_SOCKMSG_SIZE]))
    }

    /// Reads store node `path` (absolute, or relative to this domain's home)
    /// into `out`; returns the value's length.
    pub fn read(&mut self, platform: &mut impl Platform, path: &str, out: &mut [u8]) -> Result<usize, StoreFailure> {
        self.read_in(platform, None, path, out)
    }

    /// [`StoreClient::read`] inside `transaction` (or outside, `None`).
    pub fn read_in(
        &mut self,
        platform: &mut impl Platform,
        transaction: Option<StoreTransaction>,
        path: &str,
        out: &mut [u8],
    ) -> Result<usize, StoreFailure> {
        let mut reply = [0u8; STORE_MESSAGE_MAX];
        let length = self.request(platform, XsdSockmsgType::Read, transaction, &[path], &mut reply)?;
        // The reply payload is the value, without a NUL.
        let value = &reply[XSD_SOCKMSG_SIZE..XSD_SOCKMSG_SIZE + length];
        let destination = out.get_mut(..value.len()).ok_or(StoreFailure::BadMessage)?;
        destination.copy_from_slice(value);
        Ok(value.len())
    }

    /// Writes `value` at store node `path`, creating it.
    pub fn write(&mut self, platform: &mut impl Platform, path: &str, value: &str) -> Result<(), StoreFailure> {
        self.write_in(platform, None, path, value)
    }

    /// [`StoreClient::write`] inside `transaction` (or outside, `None`).
    pub fn write_in(
        &mut self,
        platform: &mut impl Platform,
        transaction: Option<StoreTransaction>,
        path: &str,
        value: &str,
    ) -> Result<(), StoreFailure> {
        let mut reply = [0u8; STORE_MESSAGE_MAX];
        self.request(platform, XsdSockmsgType::Write, transaction, &[path, value], &mut reply).map(|_| ())
    }

    /// Opens a store transaction: requests made with it see the store as
    /// it was plus their own changes, and nobody else sees those until
    /// [`StoreClient::transaction_end`] commits them.
    pub fn transaction_start(&mut self, platform: &mut impl Platform) -> Result<StoreTransaction, StoreFailure> {
        let mut reply = [0u8; STORE_MESSAGE_MAX];
        let length = self.request(platform, XsdSockmsgType::TransactionStart, None, &[""], &mut reply)?;
        // The reply payload is the id in decimal and a NUL.
        let text = &reply[XSD_SOCKMSG_SIZE..XSD_SOCKMSG_SIZE + length];
        let digits = text.strip_suffix(&[0]).ok_or(StoreFailure::BadMessage)?;
        match abi::store::parse_decimal(digits) {
            Some(id) if id != 0 => Ok(StoreTransaction(id)),
            _ => Err(StoreFailure::BadMessage),
        }
    }

    /// Ends `transaction`: commits its changes (`commit`) or abandons them.
    /// [`TransactionEnd::Retry`] when the store refused the commit for a
    /// conflict (`EAGAIN`): the caller starts again, reading anew.
    pub fn transaction_end(
        &mut self,
        platform: &mut impl Platform,
        transaction: StoreTransaction,
        commit: bool,
    ) -> Result<TransactionEnd, StoreFailure> {
        let mut reply = [0u8; STORE_MESSAGE_MAX];
        let argument = if commit { "T" } else { "F" };
        match self.request(platform, XsdSockmsgType::TransactionEnd, Some(transaction), &[argument], &mut reply) {
            Ok(_) => Ok(TransactionEnd::Done),
            Err(StoreFailure::Refused(Errno::Eagain)) => Ok(TransactionEnd::Retry),
            Err(failure) => Err(failure),
        }
    }

    /// Sends any one request (`fields` as the type takes them: strings,
    /// and for `WRITE` the path then the value) and waits for its reply;
    /// returns the reply's payload length. For guests that probe the store
    /// (the hostile-guest suite).
    pub fn op(
        &mut self,
        platform: &mut impl Platform,
        kind: XsdSockmsgType,
        fields: &[&str],
    ) -> Result<usize, StoreFailure> {
        let mut reply = [0u8; STORE_MESSAGE_MAX];
        self.request(platform, kind, None, fields, &mut reply)
    }

    /// Asks the store to report changes at or below `path` (relative to
    /// this domain's home, or absolute); events are counted, see
    /// [`StoreClient::take_watch_events`]. The store reports once at once.
    pub fn watch(&mut self, platform: &mut impl Platform, path: &str, token: &str) -> Result<(), StoreFailure> {
        let mut reply = [0u8; STORE_MESSAGE_MAX];
        self.request(platform, XsdSockmsgType::Watch, None, &[path, token], &mut reply).map(|_| ())
    }

    /// Watch events that arrived since the last call (reads any waiting on
    /// the store ring first, without blocking).
    pub fn take_watch_events(&mut self, platform: &mut impl Platform) -> u32 {
        while let Ok(Some(_)) = self.receive(platform) {
            self.incoming_length = 0;
            // Nothing else is outstanding here: anything but an event is dropped.
            if XsdSockmsgType::from_number(self.header().r#type) == Some(XsdSockmsgType::WatchEvent) {
                self.watch_events = self.watch_events.saturating_add(1);
            }
        }
        core::mem::take(&mut self.watch_events)
    }

    /// Sends one request and waits for its reply; watch events that arrive
    /// meanwhile are counted for [`StoreClient::take_watch_events`]. Each
    /// field goes with a NUL after it, except a `WRITE`'s value (its second
    /// field), as xs_wire has it. Returns the reply's payload length (the
    /// payload follows the header in `reply`).
    fn request(
        &mut self,
        platform: &mut impl Platform,
        kind: XsdSockmsgType,
        transaction: Option<StoreTransaction>,
        fields: &[&str],
        reply: &mut [u8; STORE_MESSAGE_MAX],
    ) -> Result<usize, StoreFailure> {
        let mut message = [0u8; STORE_MESSAGE_MAX];
        let mut length = XSD_SOCKMSG_SIZE;
        for (index, field) in fields.iter().enumerate() {
            let terminated = !(kind == XsdSockmsgType::Write && index == 1);
            let end = length + field.len() + terminated as usize;
            if end > STORE_MESSAGE_MAX || field.as_bytes().contains(&0) {
                return Err(StoreFailure::BadMessage);
            }
            message[length..length + field.len()].copy_from_slice(field.as_bytes());
            length = end;
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let tx_id = transaction.map_or(0, |transaction| transaction.0);
        let header = XsdSockmsg { r#type: kind.number(), req_id: id, tx_id, len: (length - XSD_SOCKMSG_SIZE) as u32 };
        message[..XSD_SOCKMSG_SIZE].copy_from_slice(&header.to_bytes());
        let mut sent = 0;
        loop {
            let mut progress = false;
            if sent < length {
                let count = self.ring.client_send(&message[sent..length]).map_err(|_| StoreFailure::Broken)?;
                if count > 0 {
                    sent += count;
                    progress = true;
                    platform.notify(self.port);
                }
            }
            if let Some(total) = self.receive(platform)? {
                progress = true;
                self.incoming_length = 0;
                let header = self.header();
                match XsdSockmsgType::from_number(header.r#type) {
                    Some(XsdSockmsgType::WatchEvent) => self.watch_events = self.watch_events.saturating_add(1),
                    Some(XsdSockmsgType::Error) if header.req_id == id => {
                        let name = &self.incoming[XSD_SOCKMSG_SIZE..total];
                        return Err(
                            xsd_error_from_payload(name).map_or(StoreFailure::BadMessage, StoreFailure::Refused)
                        );
                    }
                    Some(answered) if header.req_id == id && answered == kind => {
                        reply[..total].copy_from_slice(&self.incoming[..total]);
                        return Ok(header.len as usize);
                    }
                    _ => return Err(StoreFailure::BadMessage),
                }
            }
            if !progress {
                platform.wait_for_event();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HostileStore, Model};

    #[test]
    fn values_written_are_read_back_and_missing_ones_are_refused() {
        let mut model = Model::new();
        let mut store = model.store_client();
        store.write(&mut model, "data/greeting", "hello").unwrap();
        assert_eq!(model.store().read("/local/domain/5/data/greeting"), Some("hello"), "relative to the home");
        let mut out = [0u8; 16];
        assert_eq!(store.read(&mut model, "data/greeting", &mut out), Ok(5));
        assert_eq!(&out[..5], b"hello");
        model.store().write("data/empty", "");
        assert_eq!(store.read(&mut model, "data/empty", &mut out), Ok(0));
        assert_eq!(store.read(&mut model, "data/missing", &mut out), Err(StoreFailure::Refused(Errno::Enoent)));
        assert_eq!(store.read(&mut model, "data/greeting", &mut [0; 4]), Err(StoreFailure::BadMessage));
        // A NUL inside a field would end it early: refused before sending.
        assert_eq!(store.write(&mut model, "data/a\0b", "x"), Err(StoreFailure::BadMessage));
        // Requests the store does not serve come back refused.
        assert_eq!(store.op(&mut model, XsdSockmsgType::Rm, &["data"]), Err(StoreFailure::Refused(Errno::Einval)));
        let kinds: Vec<_> = model.store().log.iter().map(|(kind, _)| *kind).collect();
        use XsdSockmsgType::{Read, Rm, Write};
        assert_eq!(kinds, [Write, Read, Read, Read, Read, Rm], "one message per request, none for the bad one");
    }

    #[test]
    fn a_long_value_crosses_the_ring_in_pieces() {
        let mut model = Model::new();
        let mut store = model.store_client();
        // Three times the 1024-byte ring each way.
        let value: String = (0..3000).map(|index| char::from(b'a' + (index % 26) as u8)).collect();
        store.write(&mut model, "data/long", &value).unwrap();
        assert_eq!(model.store().read("data/long"), Some(value.as_str()));
        let mut out = vec![0u8; 4096];
        assert_eq!(store.read(&mut model, "data/long", &mut out), Ok(3000));
        assert_eq!(&out[..3000], value.as_bytes());
    }

    #[test]
    fn a_transaction_commits_whole_or_is_retried_after_a_conflict() {
        let mut model = Model::new();
        let mut store = model.store_client();
        let mut out = [0u8; 16];
        let transaction = store.transaction_start(&mut model).unwrap();
        store.write_in(&mut model, Some(transaction), "data/a", "1").unwrap();
        store.write_in(&mut model, Some(transaction), "data/b", "2").unwrap();
        assert_eq!(store.read_in(&mut model, Some(transaction), "data/a", &mut out), Ok(1), "its own writes");
        assert_eq!(model.store().read("data/a"), None, "nobody else sees them before the commit");
        assert_eq!(store.transaction_end(&mut model, transaction, true), Ok(TransactionEnd::Done));
        let dom0 = model.store();
        assert_eq!((dom0.read("data/a"), dom0.read("data/b")), (Some("1"), Some("2")));

        // dom0 writes meanwhile: the commit is refused, nothing applied.
        let transaction = store.transaction_start(&mut model).unwrap();
        store.write_in(&mut model, Some(transaction), "data/a", "3").unwrap();
        model.store().write("data/other", "x");
        assert_eq!(store.transaction_end(&mut model, transaction, true), Ok(TransactionEnd::Retry));
        assert_eq!(model.store().read("data/a"), Some("1"));
        // Run again, it goes through; abandoned, it changes nothing.
        let transaction = store.transaction_start(&mut model).unwrap();
        store.write_in(&mut model, Some(transaction), "data/a", "3").unwrap();
        assert_eq!(store.transaction_end(&mut model, transaction, true), Ok(TransactionEnd::Done));
        let transaction = store.transaction_start(&mut model).unwrap();
        store.write_in(&mut model, Some(transaction), "data/a", "4").unwrap();
        assert_eq!(store.transaction_end(&mut model, transaction, false), Ok(TransactionEnd::Done));
        assert_eq!(model.store().read("data/a"), Some("3"));
        // A transaction that is no longer open.
        let ended = StoreTransaction(transaction.0);
        assert_eq!(store.transaction_end(&mut model, ended, true), Err(StoreFailure::Refused(Errno::Enoent)));
    }

    #[test]
    fn watch_events_are_counted_around_replies() {
        let mut model = Model::new();
        let mut store = model.store_client();
        store.watch(&mut model, "device", "devices").unwrap();
        assert_eq!(store.take_watch_events(&mut model), 1, "a new watch fires once");
        assert_eq!(store.take_watch_events(&mut model), 0);
        model.store().write("device/vbd/51712/backend", "/somewhere");
        model.store().write("data/unwatched", "x");
        model.store().write("device/vif/0/backend", "/elsewhere");
        // The events arrive while the next request waits for its reply.
        store.write(&mut model, "data/y", "1").unwrap();
        assert_eq!(store.take_watch_events(&mut model), 2);
    }

    #[test]
    fn a_hostile_store_gets_errors_not_panics() {
        let mut model = Model::new();
        let mut store = model.store_client();
        model.store().hostile = Some(HostileStore::WrongId);
        assert_eq!(store.write(&mut model, "data/a", "1"), Err(StoreFailure::BadMessage));
        assert_eq!(store.transaction_start(&mut model), Err(StoreFailure::BadMessage));

        let mut model = Model::new();
        let mut store = model.store_client();
        model.store().hostile = Some(HostileStore::Oversized);
        assert_eq!(store.read(&mut model, "data/a", &mut [0; 8]), Err(StoreFailure::Broken));
    }
}
