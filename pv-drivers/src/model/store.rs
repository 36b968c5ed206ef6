//! A model store: an in-memory xs_wire server on the store ring, as dom0
//! runs one for each guest. It serves `READ`, `WRITE`, `WATCH` and
//! transactions (a commit is refused with `EAGAIN` when anything was
//! written since the transaction started, as Xen's C store does), fires
//! watches on writes, and refuses anything else with `EINVAL`. Back ends
//! and tests read and write nodes directly, as dom0's own services do.

use std::collections::{BTreeMap, VecDeque};

use abi::xen::errno::Errno;
use abi::xen::io::store::{XSD_SOCKMSG_SIZE, XsdSockmsg, XsdSockmsgType, xsd_error_name};

use crate::console::StoreRingAccess;

/// How a hostile store misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostileStore {
    /// Replies carry another request's id.
    WrongId,
    /// Replies announce a payload longer than any message.
    Oversized,
}

/// An open transaction: the store's generation when it started and its
/// own writes.
#[derive(Debug, Default)]
struct Transaction {
    generation: u64,
    writes: BTreeMap<String, String>,
}

/// The model store of one guest (see the module docs).
#[derive(Debug)]
pub struct Store {
    ring: StoreRingAccess,
    /// The guest's home, `/local/domain/<id>`.
    home: String,
    nodes: BTreeMap<String, String>,
    /// Writes so far (a transaction conflicts when it moved).
    generation: u64,
    transactions: BTreeMap<u32, Transaction>,
    next_transaction: u32,
    /// Watches: the absolute path, the path as the guest gave it, the token.
    watches: Vec<(String, String, String)>,
    incoming: Vec<u8>,
    outgoing: VecDeque<u8>,
    /// The requests served: type and first field.
    pub log: Vec<(XsdSockmsgType, String)>,
    /// Set to make the store misbehave from now on.
    pub hostile: Option<HostileStore>,
}

impl Store {
    /// A store for domain `domain` serving the ring `ring`.
    pub fn new(ring: StoreRingAccess, domain: u32) -> Store {
        Store {
            ring,
            home: format!("{}{domain}", abi::store::HOME_PREFIX),
            nodes: BTreeMap::new(),
            generation: 0,
            transactions: BTreeMap::new(),
            next_transaction: 1,
            watches: Vec::new(),
            incoming: Vec::new(),
            outgoing: VecDeque::new(),
            log: Vec::new(),
            hostile: None,
        }
    }

    /// `path` made absolute (relative paths are in the guest's home).
    pub fn absolute(&self, path: &str) -> String {
        if path.starts_with('/') { path.to_string() } else { format!("{}/{path}", self.home) }
    }

    /// The value at `path`, as dom0 reads it.
    pub fn read(&self, path: &str) -> Option<&str> {
        self.nodes.get(&self.absolute(path)).map(String::as_str)
    }

    /// Writes `value` at `path` as dom0 does (fires watches).
    pub fn write(&mut self, path: &str, value: &str) {
        let path = self.absolute(path);
        self.commit_write(path, value.to_string());
    }

    fn commit_write(&mut self, path: String, value: String) {
        self.generation += 1;
        self.fire_watches(&path);
        self.nodes.insert(path, value);
    }

    /// Queues an event for every watch at or above `path`.
    fn fire_watches(&mut self, path: &str) {
        let fired: Vec<(String, String)> = self
            .watches
            .iter()
            .filter(|(watched, _, _)| path == watched || path.starts_with(&format!("{watched}/")))
            .map(|(_, given, token)| (given.clone(), token.clone()))
            .collect();
        for (given, token) in fired {
            self.queue_event(&given, &token);
        }
    }

    fn queue_event(&mut self, path: &str, token: &str) {
        let payload = [path.as_bytes(), &[0], token.as_bytes(), &[0]].concat();
        self.queue(XsdSockmsgType::WatchEvent, 0, 0, &payload);
    }

    fn queue(&mut self, kind: XsdSockmsgType, req_id: u32, tx_id: u32, payload: &[u8]) {
        let (req_id, len) = match self.hostile {
            Some(HostileStore::WrongId) if kind != XsdSockmsgType::WatchEvent => {
                (req_id.wrapping_add(7), payload.len())
            }
            Some(HostileStore::Oversized) => (req_id, 1 << 20),
            _ => (req_id, payload.len()),
        };
        let header = XsdSockmsg { r#type: kind.number(), req_id, tx_id, len: len as u32 };
        self.outgoing.extend(header.to_bytes());
        self.outgoing.extend(payload);
    }

    fn queue_error(&mut self, header: &XsdSockmsg, error: Errno) {
        let payload = [xsd_error_name(error).as_bytes(), &[0]].concat();
        self.queue(XsdSockmsgType::Error, header.req_id, header.tx_id, &payload);
    }

    /// Runs the server once: when the guest `notified` the store's port,
    /// takes and answers every whole request on the ring; then sends as
    /// much of the queued replies and events as the ring takes.
    pub fn serve(&mut self, notified: bool) {
        if notified {
            let mut buffer = [0u8; 1024];
            loop {
                let count = self.ring.server_receive(&mut buffer).expect("the guest keeps the request ring sane");
                if count == 0 {
                    break;
                }
                self.incoming.extend_from_slice(&buffer[..count]);
            }
            while let Some(header) = self.incoming.first_chunk().map(XsdSockmsg::from_bytes) {
                let total = XSD_SOCKMSG_SIZE + header.len as usize;
                if self.incoming.len() < total {
                    break;
                }
                let payload: Vec<u8> = self.incoming.drain(..total).skip(XSD_SOCKMSG_SIZE).collect();
                self.answer(&header, &payload);
            }
        }
        while !self.outgoing.is_empty() {
            let (front, _) = self.outgoing.as_slices();
            let count = self.ring.server_send(front).expect("the guest keeps the reply ring sane");
            if count == 0 {
                break;
            }
            self.outgoing.drain(..count);
        }
    }

    fn answer(&mut self, header: &XsdSockmsg, payload: &[u8]) {
        let fields: Vec<String> =
            payload.split(|&byte| byte == 0).map(|field| String::from_utf8_lossy(field).into_owned()).collect();
        let first = fields.first().cloned().unwrap_or_default();
        let Some(kind) = header.validate() else {
            return self.queue_error(header, Errno::Einval);
        };
        self.log.push((kind, first.clone()));
        let ok = b"OK\0";
        match kind {
            XsdSockmsgType::Read => {
                let path = self.absolute(&first);
                let value = match self.transactions.get(&header.tx_id) {
                    Some(transaction) => transaction.writes.get(&path).or(self.nodes.get(&path)),
                    None if header.tx_id == 0 => self.nodes.get(&path),
                    None => return self.queue_error(header, Errno::Enoent),
                };
                match value.cloned() {
                    Some(value) => self.queue(kind, header.req_id, header.tx_id, value.as_bytes()),
                    None => self.queue_error(header, Errno::Enoent),
                }
            }
            XsdSockmsgType::Write => {
                // The path, its NUL, then the value (no NUL of its own).
                let Some(split) = payload.iter().position(|&byte| byte == 0) else {
                    return self.queue_error(header, Errno::Einval);
                };
                let path = self.absolute(&first);
                let value = String::from_utf8_lossy(&payload[split + 1..]).into_owned();
                match self.transactions.get_mut(&header.tx_id) {
                    Some(transaction) => {
                        transaction.writes.insert(path, value);
                    }
                    None if header.tx_id == 0 => self.commit_write(path, value),
                    None => return self.queue_error(header, Errno::Enoent),
                }
                self.queue(kind, header.req_id, header.tx_id, ok);
            }
            XsdSockmsgType::TransactionStart => {
                let id = self.next_transaction;
                self.next_transaction += 1;
                self.transactions.insert(id, Transaction { generation: self.generation, ..Default::default() });
                let reply = format!("{id}\0");
                self.queue(kind, header.req_id, 0, reply.as_bytes());
            }
            XsdSockmsgType::TransactionEnd => {
                let Some(transaction) = self.transactions.remove(&header.tx_id) else {
                    return self.queue_error(header, Errno::Enoent);
                };
                if first == "T" {
                    if transaction.generation != self.generation {
                        return self.queue_error(header, Errno::Eagain);
                    }
                    for (path, value) in transaction.writes {
                        self.commit_write(path, value);
                    }
                }
                self.queue(kind, header.req_id, header.tx_id, ok);
            }
            XsdSockmsgType::Watch => {
                let token = fields.get(1).cloned().unwrap_or_default();
                let path = self.absolute(&first);
                self.watches.push((path, first.clone(), token.clone()));
                self.queue(kind, header.req_id, 0, ok);
                // Xen's store fires a new watch once at once.
                self.queue_event(&first, &token);
            }
            _ => self.queue_error(header, Errno::Einval),
        }
    }
}
