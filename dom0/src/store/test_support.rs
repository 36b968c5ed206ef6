//! What the store's tests share: a small store, a consistency check of
//! its tables, and requests over the wire.

use abi::DomainId;
use abi::xen::errno::Errno;
use abi::xen::io::store::XsdSockmsgType as T;
use abi::xen::io::store::{XSD_SOCKMSG_SIZE, XsdSockmsg, xsd_error_from_payload};
use std::string::String;
use std::vec::Vec;

use crate::store::tree::ROOT;
use crate::store::wire::PAYLOAD_MAX;
use crate::store::{EVENT_QUEUE_BYTES, MESSAGE_MAX, Store};

/// A small store for most tests: 128 nodes, 8 KiB of arena, 32 watches,
/// 8 domains.
pub(super) type Small = Store<128, 8192, 32, 8>;

pub(super) fn small() -> Box<Small> {
    Box::new(Small::new())
}

/// The tables agree with themselves: usage matches a recount, live
/// arena bytes match the extents, every node is reachable by its links.
pub(super) fn check_consistent<const N: usize, const A: usize, const W: usize, const D: usize>(
    store: &Store<N, A, W, D>,
) {
    for slot in store.domains.iter().filter(|slot| slot.used) {
        assert_eq!(slot.usage, store.recount(slot.id), "usage of domain {}", slot.id);
        assert!(slot.queue.used() <= EVENT_QUEUE_BYTES);
    }
    let node_bytes: usize =
        store.nodes.iter().map(|node| if node.used { node.size() } else { 0 }).sum::<usize>() + store.nodes[0].size();
    let watch_bytes: usize = store.watches.iter().filter(|watch| watch.used).map(|watch| watch.size()).sum();
    assert_eq!(store.arena_live, node_bytes + watch_bytes);
    assert!(store.arena_end <= A);
    // Walk the tree from the root; every used node is found once.
    let mut seen = 0;
    let mut stack = vec![ROOT];
    while let Some(node) = stack.pop() {
        seen += 1;
        let mut child = store.nodes[node as usize].first_child;
        while child != 0 {
            assert!(store.nodes[child as usize].used);
            assert_eq!(store.nodes[child as usize].parent, node);
            stack.push(child);
            child = store.nodes[child as usize].next_sibling;
        }
    }
    assert_eq!(seen, store.node_count());
}

pub(super) fn names<const N: usize, const A: usize, const W: usize, const D: usize>(
    store: &Store<N, A, W, D>,
    caller: DomainId,
    path: &str,
) -> Vec<String> {
    store.directory(caller, path).unwrap().map(str::to_string).collect()
}

pub(super) fn events<const N: usize, const A: usize, const W: usize, const D: usize>(
    store: &mut Store<N, A, W, D>,
    domain: DomainId,
) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut message = [0u8; MESSAGE_MAX];
    while let Some(size) = store.next_event_size(domain) {
        assert_eq!(store.pop_event(domain, &mut message), size);
        let (header, payload) = parse_reply(&message[..size]);
        assert_eq!((header.r#type, header.req_id, header.tx_id), (T::WatchEvent.number(), 0, 0));
        let fields = strings_of(payload);
        assert_eq!(fields.len(), 2);
        found.push((fields[0].clone(), fields[1].clone()));
    }
    found
}

/// A message of any type with every field NUL-terminated.
pub(super) fn message(kind: u32, request_id: u32, fields: &[&[u8]]) -> Vec<u8> {
    let mut payload = Vec::new();
    for field in fields {
        payload.extend_from_slice(field);
        payload.push(0);
    }
    framed(kind, request_id, 0, &payload)
}

pub(super) fn framed(kind: u32, req_id: u32, tx_id: u32, payload: &[u8]) -> Vec<u8> {
    let header = XsdSockmsg { r#type: kind, req_id, tx_id, len: payload.len() as u32 };
    let mut bytes = header.to_bytes().to_vec();
    bytes.extend(payload);
    bytes
}

/// A request as xs_wire frames it: strings NUL-terminated, except a
/// `WRITE`'s value.
pub(super) fn request(kind: T, req_id: u32, tx_id: u32, fields: &[&[u8]]) -> Vec<u8> {
    let mut payload = Vec::new();
    for (index, field) in fields.iter().enumerate() {
        payload.extend_from_slice(field);
        if !(kind == T::Write && index == 1) {
            payload.push(0);
        }
    }
    framed(kind.number(), req_id, tx_id, &payload)
}

/// Splits a reply into its header and payload, checking the framing.
pub(super) fn parse_reply(reply: &[u8]) -> (XsdSockmsg, &[u8]) {
    let header = XsdSockmsg::from_bytes(reply.first_chunk().expect("a header"));
    let payload = &reply[XSD_SOCKMSG_SIZE..];
    assert_eq!(header.len as usize, payload.len());
    assert!(payload.len() <= PAYLOAD_MAX);
    (header, payload)
}

/// The NUL-terminated strings of a payload.
pub(super) fn strings_of(payload: &[u8]) -> Vec<String> {
    let mut fields = Vec::new();
    if let Some((&last, body)) = payload.split_last() {
        assert_eq!(last, 0, "payload ends with NUL");
        for field in body.split(|&byte| byte == 0) {
            fields.push(String::from_utf8(field.to_vec()).expect("UTF-8"));
        }
    }
    fields
}

/// Sends one request over the wire, outside any transaction; the
/// reply's strings (a `READ`'s value; nothing for `OK`), or its error.
pub(super) fn call<const N: usize, const A: usize, const W: usize, const D: usize>(
    store: &mut Store<N, A, W, D>,
    caller: DomainId,
    kind: T,
    fields: &[&str],
) -> Result<Vec<String>, Errno> {
    call_in(store, caller, 0, kind, fields)
}

/// [`call`] with a transaction id.
pub(super) fn call_in<const N: usize, const A: usize, const W: usize, const D: usize>(
    store: &mut Store<N, A, W, D>,
    caller: DomainId,
    tx_id: u32,
    kind: T,
    fields: &[&str],
) -> Result<Vec<String>, Errno> {
    let fields: Vec<&[u8]> = fields.iter().map(|field| field.as_bytes()).collect();
    let mut response = [0u8; MESSAGE_MAX];
    let size = store.handle(caller, &request(kind, 77, tx_id, &fields), &mut response);
    let (header, payload) = parse_reply(&response[..size]);
    assert_eq!((header.req_id, header.tx_id), (77, tx_id));
    if header.r#type == T::Error.number() {
        assert_eq!(payload.last(), Some(&0));
        return Err(xsd_error_from_payload(payload).expect("a known error name"));
    }
    assert_eq!(header.r#type, kind.number());
    match kind {
        T::Read => Ok(vec![String::from_utf8(payload.to_vec()).expect("UTF-8")]),
        T::Directory | T::GetPerms | T::TransactionStart | T::GetDomainPath => Ok(strings_of(payload)),
        _ => {
            assert_eq!(payload, b"OK\0");
            Ok(vec![])
        }
    }
}

/// Starts a transaction over the wire; its id.
pub(super) fn start<const N: usize, const A: usize, const W: usize, const D: usize>(
    store: &mut Store<N, A, W, D>,
    caller: DomainId,
) -> Result<u32, Errno> {
    let id = call(store, caller, T::TransactionStart, &[""])?;
    Ok(id[0].parse().expect("a decimal id"))
}

/// Ends a transaction over the wire.
pub(super) fn end<const N: usize, const A: usize, const W: usize, const D: usize>(
    store: &mut Store<N, A, W, D>,
    caller: DomainId,
    id: u32,
    commit: bool,
) -> Result<(), Errno> {
    call_in(store, caller, id, T::TransactionEnd, &[if commit { "T" } else { "F" }]).map(|_| ())
}
