//! The store's wire protocol (Xen's xs_wire) as guests speak it: byte
//! streams from two guests, cut at arbitrary points, assembled into
//! messages and handled by a small store, with domains coming and going.

use abi::DomainId;
use abi::xen::io::store::{XSD_SOCKMSG_SIZE, XsdSockmsg, XsdSockmsgType, xsd_error_from_payload};
use dom0core::store::{MESSAGE_MAX, MessageAssembler, Quota, Store};

use crate::bytes::Bytes;

/// A store small enough to build for every input: 128 nodes, 8 KiB of
/// arena, 32 watches, 8 domains.
type Small = Store<128, 8192, 32, 8>;

/// The guests whose streams the input carries.
const GUESTS: [DomainId; 2] = [1, 3];
/// A value only domain 2 can read; no reply or event to another guest may
/// carry it (unless the input itself contains it).
const SECRET: &str = "s3cr3t-of-d2";

/// The input is a sequence of steps `[control][bytes]`: bit 0 of `control`
/// picks the guest, the other bits the number of bytes (0..=127) fed to its
/// assembler; a step of 0 bytes destroys the guest's domain and introduces
/// a new one with the same id (and a fresh stream). Every reply and queued
/// event must be a well-formed message, quotas must hold, and no guest may
/// read what only domain 2 can.
pub fn store(data: &[u8]) {
    let leaks_checked = !data.windows(SECRET.len()).any(|window| window == SECRET.as_bytes());
    let mut store = Box::new(Small::new());
    for domain in [1, 2, 3] {
        store.introduce_domain(domain, Quota::GUEST).expect("introduce");
    }
    store.write(2, "secret", SECRET).expect("domain 2 writes its secret");
    // A device as dom0 sets one up: its directory, the guest's state node.
    store.write(abi::DOM0, "/local/domain/1/device/vbd/0/state", "1").expect("dom0 writes");
    let mut assemblers = [MessageAssembler::new(), MessageAssembler::new()];
    let mut reply = [0u8; MESSAGE_MAX];
    let mut input = Bytes::new(data);
    while !input.is_empty() {
        let control = input.byte();
        let which = usize::from(control & 1);
        let caller = GUESTS[which];
        let mut chunk = input.take(usize::from(control >> 1));
        if chunk.is_empty() {
            store.remove_domain(caller).expect("remove a guest");
            store.introduce_domain(caller, Quota::GUEST).expect("introduce it again");
            assemblers[which].clear();
            continue;
        }
        while !chunk.is_empty() {
            let taken = assemblers[which].feed(chunk);
            chunk = &chunk[taken..];
            if let Some(message) = assemblers[which].message() {
                let size = store.handle(caller, message, &mut reply);
                check_reply(message, &reply[..size], leaks_checked);
                assemblers[which].clear();
                while let Some(size) = store.next_event_size(caller) {
                    assert_eq!(store.pop_event(caller, &mut reply), size);
                    check_event(&reply[..size], leaks_checked);
                }
            } else {
                assert_eq!(chunk.len(), 0, "the assembler stopped short of a message");
            }
        }
        for domain in [1, 2, 3] {
            let report = store.domain(domain).expect("a guest's record");
            assert!(report.usage.nodes <= report.quota.nodes, "{domain}: {report:?}");
            assert!(report.usage.bytes <= report.quota.bytes, "{domain}: {report:?}");
            assert!(report.usage.watches <= report.quota.watches, "{domain}: {report:?}");
        }
        assert!(store.node_count() <= 128 && store.arena_bytes() <= 8192);
    }
}

/// The header and payload of a message, checking the framing.
fn parse(message: &[u8]) -> (XsdSockmsg, &[u8]) {
    assert!(message.len() >= XSD_SOCKMSG_SIZE && message.len() <= MESSAGE_MAX);
    let header = XsdSockmsg::from_bytes(message.first_chunk().expect("a header"));
    let payload = &message[XSD_SOCKMSG_SIZE..];
    assert_eq!(header.len as usize, payload.len(), "header length disagrees with the message");
    (header, payload)
}

/// The NUL-terminated strings of a payload.
fn strings(payload: &[u8]) -> Vec<&[u8]> {
    match payload.split_last() {
        None => Vec::new(),
        Some((&last, body)) => {
            assert_eq!(last, 0, "payload not NUL-terminated");
            body.split(|&byte| byte == 0).collect()
        }
    }
}

fn check_reply(request: &[u8], reply: &[u8], leaks_checked: bool) {
    let (header, payload) = parse(reply);
    let sent = request.first_chunk::<XSD_SOCKMSG_SIZE>().map(XsdSockmsg::from_bytes).unwrap_or_default();
    assert_eq!(header.req_id, sent.req_id);
    assert_eq!(header.tx_id, sent.tx_id);
    if header.r#type == XsdSockmsgType::Error.number() {
        assert_eq!(strings(payload).len(), 1);
        assert!(xsd_error_from_payload(payload).is_some(), "unknown error name");
    } else {
        assert_eq!(header.r#type, sent.r#type);
        let kind = XsdSockmsgType::from_number(sent.r#type).expect("success for an unknown type");
        assert!(!matches!(kind, XsdSockmsgType::WatchEvent | XsdSockmsgType::Error), "a guest's {kind:?} succeeded");
        if kind != XsdSockmsgType::Read {
            strings(payload);
        }
    }
    if leaks_checked {
        assert!(!contains_secret(reply), "a guest read domain 2's secret");
    }
}

fn check_event(event: &[u8], leaks_checked: bool) {
    let (header, payload) = parse(event);
    assert_eq!(header.r#type, XsdSockmsgType::WatchEvent.number());
    assert_eq!((header.req_id, header.tx_id), (0, 0));
    assert_eq!(strings(payload).len(), 2, "an event is a path and a token");
    if leaks_checked {
        assert!(!contains_secret(event), "a watch event carried domain 2's secret");
    }
}

fn contains_secret(message: &[u8]) -> bool {
    message.windows(SECRET.len()).any(|window| window == SECRET.as_bytes())
}
