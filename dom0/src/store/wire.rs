//! The xenstore wire protocol (`xs_wire`): a request message checked and
//! answered by the store's operations, and the assembler that cuts a
//! domain's byte stream into messages.

use core::fmt::Write as _;

use abi::DomainId;
use abi::store::Access;
use abi::xen::errno::Errno;
use abi::xen::io::store::{XENSTORE_PAYLOAD_MAX, XSD_SOCKMSG_SIZE, XsdSockmsg, XsdSockmsgType, xsd_error_name};
use arrayvec::ArrayString;

use crate::store::domains::find_slot;
use crate::store::paths::home;
use crate::store::transactions::Transaction;
use crate::store::{Permissions, Store};

/// Bytes of the largest message, header and payload: the buffer each side
/// of a connection needs.
pub const MESSAGE_MAX: usize = XSD_SOCKMSG_SIZE + PAYLOAD_MAX;
/// Bytes of the largest payload.
pub(super) const PAYLOAD_MAX: usize = XENSTORE_PAYLOAD_MAX as usize;

impl<const NODES: usize, const ARENA: usize, const WATCHES: usize, const DOMAINS: usize>
    Store<NODES, ARENA, WATCHES, DOMAINS>
{
    /// Answers one request message from `caller` (header and payload, as
    /// a [`MessageAssembler`] collects them) with a reply message written
    /// to `response`; returns the reply's size. Every byte of the request
    /// is checked; anything wrong is answered with an `ERROR` message.
    pub fn handle(&mut self, caller: DomainId, request: &[u8], response: &mut [u8; MESSAGE_MAX]) -> usize {
        let (head, reply) = response.split_at_mut(XSD_SOCKMSG_SIZE);
        let header = request.first_chunk::<XSD_SOCKMSG_SIZE>().map(XsdSockmsg::from_bytes);
        let mut out = Reply { bytes: reply, length: 0 };
        let result = match &header {
            // Too short to carry even a request id: answered with id 0.
            None => Err(Errno::Einval),
            Some(header) => self.dispatch(caller, header, &request[XSD_SOCKMSG_SIZE..], &mut out),
        };
        let header = header.unwrap_or_default();
        let kind = match result {
            Ok(()) => header.r#type,
            Err(error) => {
                out.length = 0;
                // Cannot fail: a name is a few bytes.
                let _ = out.field(xsd_error_name(error).as_bytes());
                XsdSockmsgType::Error.number()
            }
        };
        let length = out.length;
        let reply_header = XsdSockmsg { r#type: kind, req_id: header.req_id, tx_id: header.tx_id, len: length as u32 };
        head.copy_from_slice(&reply_header.to_bytes());
        XSD_SOCKMSG_SIZE + length
    }

    fn dispatch(
        &mut self,
        caller: DomainId,
        header: &XsdSockmsg,
        payload: &[u8],
        out: &mut Reply,
    ) -> Result<(), Errno> {
        if header.len as usize > PAYLOAD_MAX {
            return Err(Errno::E2big);
        }
        if payload.len() != header.len as usize {
            return Err(Errno::Einval);
        }
        let kind = XsdSockmsgType::from_number(header.r#type).ok_or(Errno::Enosys)?;
        use XsdSockmsgType as T;
        // Types that ignore `tx_id`, as in Xen.
        match kind {
            T::Watch | T::Unwatch => {
                let [path, token] = strings(payload)?;
                if kind == T::Watch {
                    self.watch(caller, path, token)?
                } else {
                    self.unwatch(caller, path, token)?
                }
                return out.ok();
            }
            T::GetDomainPath => {
                let [domain] = strings(payload)?;
                let domain = abi::store::parse_decimal(domain.as_bytes()).ok_or(Errno::Einval)?;
                return out.field(home(domain).as_bytes());
            }
            T::ResetWatches => {
                self.reset_watches(caller);
                return out.ok();
            }
            T::Read | T::Write | T::Mkdir | T::Rm | T::Directory | T::GetPerms | T::SetPerms => {}
            T::TransactionStart | T::TransactionEnd => {}
            _ => return Err(Errno::Enosys),
        }
        let open = |store: &Self| {
            find_slot(&store.domains, caller)
                .and_then(|slot| Some((slot, store.domains[slot].transaction(header.tx_id)?)))
        };
        let transaction = match (header.tx_id, open(self)) {
            (0, _) => None,
            (_, None) => return Err(Errno::Enoent),
            (_, Some(found)) => Some(found),
        };
        match (kind, transaction) {
            (T::TransactionStart, Some(_)) => Err(Errno::Ebusy),
            (T::TransactionStart, None) => {
                let id = self.transaction_start(caller)?;
                let mut text = ArrayString::<10>::new();
                // Cannot fail: ten digits.
                let _ = write!(text, "{id}");
                out.field(text.as_bytes())
            }
            (T::TransactionEnd, _) => {
                let commit = match strings(payload)? {
                    ["T"] => true,
                    ["F"] => false,
                    _ => return Err(Errno::Einval),
                };
                self.transaction_end(caller, header.tx_id, commit)?;
                out.ok()
            }
            (_, Some((slot, index))) => {
                let mut open = core::mem::replace(&mut self.domains[slot].transactions[index], Transaction::EMPTY);
                let result = self.transaction_request(caller, &mut open, kind, payload, out);
                self.domains[slot].transactions[index] = open;
                result
            }
            (_, None) => self.live_request(caller, kind, payload, out),
        }
    }

    /// A request outside any transaction.
    fn live_request(
        &mut self,
        caller: DomainId,
        kind: XsdSockmsgType,
        payload: &[u8],
        out: &mut Reply,
    ) -> Result<(), Errno> {
        use XsdSockmsgType as T;
        match kind {
            T::Read => {
                let [path] = strings(payload)?;
                let value = self.read(caller, path)?;
                out.raw(value.as_bytes())
            }
            T::Write => {
                let (path, value) = path_and_value(payload)?;
                self.write(caller, path, value)?;
                out.ok()
            }
            T::Mkdir => {
                let [path] = strings(payload)?;
                self.mkdir(caller, path)?;
                out.ok()
            }
            T::Rm => {
                let [path] = strings(payload)?;
                self.remove(caller, path)?;
                out.ok()
            }
            T::Directory => {
                let [path] = strings(payload)?;
                for name in self.directory(caller, path)? {
                    out.field(name.as_bytes())?;
                }
                Ok(())
            }
            T::GetPerms => {
                let [path] = strings(payload)?;
                let permissions = self.get_permissions(caller, path)?;
                out.permissions(&permissions)
            }
            T::SetPerms => {
                let (path, permissions) = parse_set_permissions(payload)?;
                self.set_permissions(caller, path, &permissions)?;
                out.ok()
            }
            _ => Err(Errno::Enosys),
        }
    }
}

/// A payload of exactly `N` NUL-terminated UTF-8 strings.
pub(super) fn strings<const N: usize>(payload: &[u8]) -> Result<[&str; N], Errno> {
    let (&last, body) = payload.split_last().ok_or(Errno::Einval)?;
    if last != 0 {
        return Err(Errno::Einval);
    }
    let mut fields = body.split(|&byte| byte == 0);
    let mut found = [""; N];
    for slot in &mut found {
        *slot = core::str::from_utf8(fields.next().ok_or(Errno::Einval)?).map_err(|_| Errno::Einval)?;
    }
    if fields.next().is_some() {
        return Err(Errno::Einval);
    }
    Ok(found)
}

/// A `WRITE` payload: the path and its NUL, then the value (no NUL).
pub(super) fn path_and_value(payload: &[u8]) -> Result<(&str, &str), Errno> {
    let at = payload.iter().position(|&byte| byte == 0).ok_or(Errno::Einval)?;
    let path = core::str::from_utf8(&payload[..at]).map_err(|_| Errno::Einval)?;
    let value = core::str::from_utf8(&payload[at + 1..]).map_err(|_| Errno::Einval)?;
    Ok((path, value))
}

/// A `SET_PERMS` payload: the path, the owner entry, then up to
/// [`GRANTS_MAX`](abi::store::GRANTS_MAX) grants, each NUL-terminated.
/// More grants than a node holds is `E2BIG`.
pub(super) fn parse_set_permissions(payload: &[u8]) -> Result<(&str, Permissions), Errno> {
    let (&last, body) = payload.split_last().ok_or(Errno::Einval)?;
    if last != 0 {
        return Err(Errno::Einval);
    }
    let mut fields = body.split(|&byte| byte == 0);
    let path = core::str::from_utf8(fields.next().ok_or(Errno::Einval)?).map_err(|_| Errno::Einval)?;
    let (access, owner) = parse_permission(fields.next().ok_or(Errno::Einval)?)?;
    let mut permissions = Permissions::owned_by(owner);
    permissions.others = access;
    for grant in fields {
        let (access, domain) = parse_permission(grant)?;
        permissions.grant(domain, access)?;
    }
    Ok((path, permissions))
}

/// Decodes a permission entry: an access letter and a decimal domain id.
fn parse_permission(entry: &[u8]) -> Result<(Access, DomainId), Errno> {
    let (&letter, digits) = entry.split_first().ok_or(Errno::Einval)?;
    let access = Access::from_letter(letter).ok_or(Errno::Einval)?;
    let domain = abi::store::parse_decimal(digits).ok_or(Errno::Einval)?;
    Ok((access, domain))
}

/// A reply payload being written.
pub(super) struct Reply<'a> {
    bytes: &'a mut [u8],
    length: usize,
}

impl Reply<'_> {
    /// Appends bytes as they are; `E2BIG` if they do not fit.
    pub(super) fn raw(&mut self, bytes: &[u8]) -> Result<(), Errno> {
        let end = self.length + bytes.len();
        if end > self.bytes.len() {
            return Err(Errno::E2big);
        }
        self.bytes[self.length..end].copy_from_slice(bytes);
        self.length = end;
        Ok(())
    }

    /// Appends a string and its NUL; `E2BIG` if it does not fit.
    pub(super) fn field(&mut self, field: &[u8]) -> Result<(), Errno> {
        self.raw(field)?;
        self.raw(&[0])
    }

    /// The reply of requests that answer nothing else: `OK|`.
    pub(super) fn ok(&mut self) -> Result<(), Errno> {
        self.field(b"OK")
    }

    /// Whether the strings written so far include `field`.
    pub(super) fn has_field(&self, field: &[u8]) -> bool {
        self.bytes[..self.length].split(|&byte| byte == 0).any(|written| written == field)
    }

    /// A node's permissions: the owner entry, then each grant.
    pub(super) fn permissions(&mut self, permissions: &Permissions) -> Result<(), Errno> {
        self.permission(permissions.others, permissions.owner)?;
        for grant in permissions.grants() {
            self.permission(grant.access, grant.domain)?;
        }
        Ok(())
    }

    fn permission(&mut self, access: Access, domain: DomainId) -> Result<(), Errno> {
        let mut entry = ArrayString::<11>::new();
        // Cannot fail: a letter and at most ten digits.
        let _ = write!(entry, "{}{domain}", access.letter() as char);
        self.field(entry.as_bytes())
    }
}

/// Collects one message at a time from a domain's request byte stream.
/// Feed it whatever the ring holds; when [`MessageAssembler::message`]
/// returns a message, hand it to [`Store::handle`], then
/// [`MessageAssembler::clear`]. A message whose header announces more than
/// `XENSTORE_PAYLOAD_MAX` (4096) bytes has its payload skipped, and is
/// given as its header alone (which `handle` answers with `E2BIG`), so the
/// stream stays in step. (Xen's xenstored drops such a connection; see
/// [`abi::store`], Transport.)
pub struct MessageAssembler {
    buffer: [u8; MESSAGE_MAX],
    filled: usize,
    /// Payload bytes of an oversized message still to skip.
    skip: u64,
    oversized: bool,
}

impl MessageAssembler {
    /// An assembler waiting for a message's first byte.
    pub const fn new() -> MessageAssembler {
        MessageAssembler { buffer: [0; MESSAGE_MAX], filled: 0, skip: 0, oversized: false }
    }

    /// The payload length announced by the header, once it is in.
    fn announced(&self) -> Option<usize> {
        let header = self.buffer.first_chunk::<XSD_SOCKMSG_SIZE>()?;
        (self.filled >= XSD_SOCKMSG_SIZE).then(|| XsdSockmsg::from_bytes(header).len as usize)
    }

    /// Takes bytes up to the end of the current message; returns how many
    /// it took (0 while a complete message waits to be cleared).
    pub fn feed(&mut self, bytes: &[u8]) -> usize {
        if self.message().is_some() {
            return 0;
        }
        let mut taken = 0;
        if self.filled < XSD_SOCKMSG_SIZE {
            let count = (XSD_SOCKMSG_SIZE - self.filled).min(bytes.len());
            self.buffer[self.filled..self.filled + count].copy_from_slice(&bytes[..count]);
            self.filled += count;
            taken = count;
            if let Some(length) = self.announced()
                && length > PAYLOAD_MAX
            {
                self.oversized = true;
                self.skip = length as u64;
            }
        }
        let rest = &bytes[taken..];
        if self.oversized {
            let count = (self.skip.min(rest.len() as u64)) as usize;
            self.skip -= count as u64;
            return taken + count;
        }
        if let Some(length) = self.announced() {
            let count = (XSD_SOCKMSG_SIZE + length - self.filled).min(rest.len());
            self.buffer[self.filled..self.filled + count].copy_from_slice(&rest[..count]);
            self.filled += count;
            taken += count;
        }
        taken
    }

    /// The complete message, if one is in.
    pub fn message(&self) -> Option<&[u8]> {
        let length = self.announced()?;
        if self.oversized {
            return (self.skip == 0).then_some(&self.buffer[..XSD_SOCKMSG_SIZE]);
        }
        (self.filled == XSD_SOCKMSG_SIZE + length).then_some(&self.buffer[..self.filled])
    }

    /// Forgets the complete message (or a partial one, when a connection
    /// is reset).
    pub fn clear(&mut self) {
        self.filled = 0;
        self.skip = 0;
        self.oversized = false;
    }
}

impl Default for MessageAssembler {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Quota;
    use crate::store::test_support::*;
    use crate::test_random::XorShift;
    use abi::DOM0;
    use abi::store::PATH_MAX;
    use abi::xen::io::store::XsdSockmsgType as T;
    use abi::xen::io::store::xsd_error_from_payload;
    use std::string::{String, ToString};
    use std::vec::Vec;

    /// Usable as a static, as dom0 keeps it.
    static SHARED: spin::Mutex<Small> = spin::Mutex::new(Small::new());

    #[test]
    fn every_operation_over_the_wire() {
        let mut store = small();
        store.introduce_domain(2, Quota::GUEST).unwrap();
        use T::*;
        assert_eq!(call(&mut *store, 2, Write, &["dev/a", "hello"]), Ok(vec![]));
        assert_eq!(call(&mut *store, 2, Read, &["dev/a"]), Ok(vec!["hello".to_string()]));
        assert_eq!(call(&mut *store, 2, Mkdir, &["dev/b"]), Ok(vec![]));
        assert_eq!(call(&mut *store, 2, Write, &["dev/c", ""]), Ok(vec![]));
        assert_eq!(call(&mut *store, 2, Read, &["dev/c"]), Ok(vec![String::new()]));
        assert_eq!(call(&mut *store, 2, Directory, &["dev"]), Ok(vec!["a".into(), "b".into(), "c".into()]));
        assert_eq!(call(&mut *store, 2, Directory, &["dev/a"]), Ok(vec![]));
        assert_eq!(call(&mut *store, 2, GetPerms, &["dev/a"]), Ok(vec!["n2".to_string()]));
        assert_eq!(call(&mut *store, 2, SetPerms, &["dev/a", "r2", "b0", "w7"]), Ok(vec![]));
        assert_eq!(call(&mut *store, 2, GetPerms, &["dev/a"]), Ok(vec!["r2".into(), "b0".into(), "w7".into()]));
        assert_eq!(call(&mut *store, 2, SetPerms, &["dev/a", "n3"]), Err(Errno::Eacces));
        assert_eq!(call(&mut *store, 2, SetPerms, &["dev/a", "n2", "r1", "r1"]), Err(Errno::Einval));
        assert_eq!(call(&mut *store, 2, SetPerms, &["dev/a", "n2", "r1", "r3", "r4", "r5", "r6"]), Err(Errno::E2big));
        assert_eq!(call(&mut *store, 2, SetPerms, &["dev/a", "x2"]), Err(Errno::Einval));
        assert_eq!(call(&mut *store, 2, SetPerms, &["dev/a", "r"]), Err(Errno::Einval));
        assert_eq!(call(&mut *store, 2, SetPerms, &["dev/a"]), Err(Errno::Einval));
        assert_eq!(call(&mut *store, 2, Watch, &["dev", "tok"]), Ok(vec![]));
        assert_eq!(call(&mut *store, 2, Watch, &["dev", "tok"]), Err(Errno::Eexist));
        assert_eq!(events(&mut *store, 2), [("/local/domain/2/dev".to_string(), "tok".to_string())]);
        assert_eq!(call(&mut *store, 2, Rm, &["dev/b"]), Ok(vec![]));
        assert_eq!(events(&mut *store, 2), [("/local/domain/2/dev/b".to_string(), "tok".to_string())]);
        assert_eq!(call(&mut *store, 2, Unwatch, &["dev", "tok"]), Ok(vec![]));
        assert_eq!(call(&mut *store, 2, Unwatch, &["dev", "tok"]), Err(Errno::Enoent));
        assert_eq!(call(&mut *store, 2, Read, &["dev/b"]), Err(Errno::Enoent));
        assert_eq!(call(&mut *store, 2, GetDomainPath, &["7"]), Ok(vec!["/local/domain/7".to_string()]));
        assert_eq!(call(&mut *store, 2, GetDomainPath, &["x"]), Err(Errno::Einval));
        // Missing, but where guest 2 may not look: refused, not reported missing.
        assert_eq!(call(&mut *store, 2, Read, &["/local/domain/0"]), Err(Errno::Eacces));
        assert_eq!(call(&mut *store, 2, Read, &["/"]), Err(Errno::Eacces));
        // A listing too long for one message.
        for index in 0..20 {
            let name = format!("{index:0>250}");
            store.mkdir(DOM0, &format!("/wide/{name}")).unwrap();
        }
        assert_eq!(call(&mut *store, DOM0, Directory, &["/wide"]), Err(Errno::E2big));
        // Through the static, as dom0 would hold it.
        let mut shared = SHARED.lock();
        assert_eq!(call(&mut *shared, DOM0, Write, &["/x", "1"]), Ok(vec![]));
    }

    /// Sends `request` (type, req_id 0x01020304, tx_id `tx_id`, payload)
    /// and returns the whole reply's bytes.
    fn exchange(store: &mut Small, caller: DomainId, kind: u32, tx_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut response = [0u8; MESSAGE_MAX];
        let size = store.handle(caller, &framed(kind, 0x0102_0304, tx_id, payload), &mut response);
        response[..size].to_vec()
    }

    /// The bytes a reply should be: the header, then `payload`.
    fn expected(kind: u32, tx_id: u32, payload: &[u8]) -> Vec<u8> {
        framed(kind, 0x0102_0304, tx_id, payload)
    }

    /// Every reply, byte for byte, as Xen's xs_wire has it.
    #[test]
    fn replies_are_xs_wire_byte_for_byte() {
        let mut store = small();
        store.introduce_domain(2, Quota::GUEST).unwrap();
        let store = &mut *store;
        let check = |store: &mut Small, kind: T, tx_id: u32, payload: &[u8], reply_kind: T, reply: &[u8]| {
            let got = exchange(store, 2, kind.number(), tx_id, payload);
            assert_eq!(got, expected(reply_kind.number(), tx_id, reply), "{kind:?} {payload:?}");
        };
        // The header: type 11 (WRITE), the request's id and tx_id, the length.
        check(store, T::Write, 0, b"k\0value", T::Write, b"OK\0");
        assert_eq!(&expected(T::Write.number(), 0, b"OK\0")[..16], [11, 0, 0, 0, 4, 3, 2, 1, 0, 0, 0, 0, 3, 0, 0, 0]);
        check(store, T::Read, 0, b"k\0", T::Read, b"value");
        check(store, T::Write, 0, b"k\0", T::Write, b"OK\0");
        check(store, T::Read, 0, b"k\0", T::Read, b"");
        check(store, T::Mkdir, 0, b"d/e\0", T::Mkdir, b"OK\0");
        check(store, T::Write, 0, b"d/f\0x", T::Write, b"OK\0");
        check(store, T::Directory, 0, b"d\0", T::Directory, b"e\0f\0");
        check(store, T::Directory, 0, b"d/e\0", T::Directory, b"");
        check(store, T::GetPerms, 0, b"d\0", T::GetPerms, b"n2\0");
        check(store, T::SetPerms, 0, b"d\0r2\0b0\0w7\0", T::SetPerms, b"OK\0");
        check(store, T::GetPerms, 0, b"d\0", T::GetPerms, b"r2\0b0\0w7\0");
        check(store, T::Rm, 0, b"d/e\0", T::Rm, b"OK\0");
        check(store, T::Watch, 0, b"d\0tok\0", T::Watch, b"OK\0");
        check(store, T::Unwatch, 0, b"d\0tok\0", T::Unwatch, b"OK\0");
        check(store, T::GetDomainPath, 0, b"12\0", T::GetDomainPath, b"/local/domain/12\0");
        check(store, T::ResetWatches, 0, b"\0", T::ResetWatches, b"OK\0");
        // Errors: type 16, the name and a NUL, req_id and tx_id echoed.
        check(store, T::Read, 0, b"missing\0", T::Error, b"ENOENT\0");
        check(store, T::Read, 9, b"k\0", T::Error, b"ENOENT\0");
        check(store, T::Read, 0, b"/local/domain/0\0", T::Error, b"EACCES\0");
        check(store, T::Read, 0, b"k", T::Error, b"EINVAL\0");
        check(store, T::Watch, 0, b"d\0tok\0", T::Watch, b"OK\0");
        check(store, T::Watch, 0, b"d\0tok\0", T::Error, b"EEXIST\0");
        check(store, T::Introduce, 0, b"3\0", T::Error, b"ENOSYS\0");
        check(store, T::Control, 0, b"\0", T::Error, b"ENOSYS\0");
        let got = exchange(store, 2, 99, 0, b"\0");
        assert_eq!(got, expected(T::Error.number(), 0, b"ENOSYS\0"));
        // A watch event: type 15, path and token, req_id and tx_id 0.
        let mut event = [0u8; MESSAGE_MAX];
        while store.next_event_size(2).is_some() {
            store.pop_event(2, &mut event);
        }
        store.write(2, "d", "changed").unwrap();
        let size = store.pop_event(2, &mut event);
        assert_eq!(event[..size], *framed(T::WatchEvent.number(), 0, 0, b"/local/domain/2/d\0tok\0"));
        // Transactions: the id in decimal and a NUL; the end's OK.
        check(store, T::TransactionStart, 0, b"\0", T::TransactionStart, b"1\0");
        check(store, T::TransactionStart, 0, b"\0", T::TransactionStart, b"2\0");
        check(store, T::Write, 1, b"k\0in", T::Write, b"OK\0");
        check(store, T::Read, 1, b"k\0", T::Read, b"in");
        check(store, T::TransactionEnd, 1, b"T\0", T::TransactionEnd, b"OK\0");
        check(store, T::TransactionEnd, 2, b"F\0", T::TransactionEnd, b"OK\0");
        check(store, T::TransactionEnd, 2, b"F\0", T::Error, b"ENOENT\0");
        check(store, T::Read, 0, b"k\0", T::Read, b"in");
    }

    #[test]
    fn malformed_messages_get_errors() {
        let mut store = small();
        store.introduce_domain(2, Quota::GUEST).unwrap();
        let mut response = [0u8; MESSAGE_MAX];
        let check = |store: &mut Small, request: &[u8], expected: Errno| {
            let mut response = [0u8; MESSAGE_MAX];
            let size = store.handle(2, request, &mut response);
            let (header, payload) = parse_reply(&response[..size]);
            assert_eq!(header.r#type, T::Error.number(), "{request:?}");
            assert_eq!(strings_of(payload), [expected.name()], "{request:?}");
        };
        let read = T::Read.number();
        check(&mut store, &[], Errno::Einval);
        check(&mut store, &[1, 0, 0], Errno::Einval);
        let mut good = message(read, 9, &[b"a"]);
        // Length longer or shorter than the bytes given.
        good[12] = 9;
        check(&mut store, &good, Errno::Einval);
        good[12] = 1;
        check(&mut store, &good, Errno::Einval);
        // Oversized length: the payload limit does not count the header.
        let mut big = XsdSockmsg { r#type: read, req_id: 1, tx_id: 0, len: PAYLOAD_MAX as u32 + 1 }.to_bytes().to_vec();
        check(&mut store, &big, Errno::E2big);
        big.resize(MESSAGE_MAX + 1, b'a');
        check(&mut store, &big, Errno::E2big);
        // A full 4096-byte payload is fine (a write of a long value).
        let mut path = b"v\0".to_vec();
        path.resize(PAYLOAD_MAX, b'x');
        let size = store.handle(DOM0, &framed(T::Write.number(), 1, 0, &path), &mut response);
        assert_eq!(parse_reply(&response[..size]).1, b"E2BIG\0", "over VALUE_MAX, but framed and parsed");
        // Missing final NUL, bad UTF-8, wrong field counts.
        let mut unterminated = message(read, 1, &[b"a"]);
        unterminated.pop();
        unterminated[12] -= 1;
        check(&mut store, &unterminated, Errno::Einval);
        check(&mut store, &framed(T::Write.number(), 1, 0, b"a\0\xff\xfe"), Errno::Einval);
        check(&mut store, &framed(T::Write.number(), 1, 0, b"a"), Errno::Einval);
        check(&mut store, &framed(T::Write.number(), 1, 0, b"a\0b\0"), Errno::Einval);
        check(&mut store, &message(read, 1, &[]), Errno::Einval);
        check(&mut store, &message(read, 1, &[b"a", b"b"]), Errno::Einval);
        check(&mut store, &message(T::Watch.number(), 1, &[b"a"]), Errno::Einval);
        check(&mut store, &message(T::Watch.number(), 1, &[b"a", b"b", b"c"]), Errno::Einval);
        check(&mut store, &message(T::TransactionEnd.number(), 1, &[b"X"]), Errno::Einval);
        // Bad paths.
        check(&mut store, &message(read, 1, &[b""]), Errno::Einval);
        check(&mut store, &message(read, 1, &[b"a//b"]), Errno::Einval);
        check(&mut store, &message(read, 1, &[&[b'a'; PATH_MAX + 1]]), Errno::E2big);
        // Types a client may not send, or that do not exist: as Xen's
        // xenstored, ENOSYS.
        check(&mut store, &message(T::WatchEvent.number(), 1, &[b"a", b"b"]), Errno::Enosys);
        check(&mut store, &message(T::Error.number(), 1, &[b"EINVAL"]), Errno::Enosys);
        check(&mut store, &message(20, 1, &[b"a"]), Errno::Enosys);
        check(&mut store, &message(99, 1, &[b"a"]), Errno::Enosys);
        // A transaction that is not open; a start inside one.
        let mut transaction = message(read, 1, &[b"a"]);
        transaction[8] = 1;
        check(&mut store, &transaction, Errno::Enoent);
        let id = start(&mut *store, 2).unwrap();
        let mut nested = message(T::TransactionStart.number(), 1, &[b""]);
        nested[8..12].copy_from_slice(&id.to_le_bytes());
        check(&mut store, &nested, Errno::Ebusy);
        // Another domain's transaction id is not the caller's.
        let mut foreign = message(read, 1, &[b"a"]);
        foreign[8..12].copy_from_slice(&id.to_le_bytes());
        let size = store.handle(DOM0, &foreign, &mut response);
        assert_eq!(parse_reply(&response[..size]).1, b"ENOENT\0");
    }

    /// Checks a reply to `request` is well formed: an ERROR with a name
    /// from Xen's table, or the request's own type (one a client may send),
    /// `req_id` and `tx_id` echoed.
    fn check_reply(request: &[u8], reply: &[u8]) {
        let (header, payload) = parse_reply(reply);
        let sent = request.first_chunk::<XSD_SOCKMSG_SIZE>().map(XsdSockmsg::from_bytes).unwrap_or_default();
        assert_eq!((header.req_id, header.tx_id), (sent.req_id, sent.tx_id));
        if header.r#type == T::Error.number() {
            assert_eq!(payload.last(), Some(&0));
            assert!(xsd_error_from_payload(payload).is_some(), "{payload:?}");
        } else {
            assert_eq!(header.r#type, sent.r#type);
            let kind = T::from_number(sent.r#type).unwrap();
            assert!(!matches!(kind, T::WatchEvent | T::Error));
            if kind != T::Read {
                assert_eq!(payload.last().map_or(0, |&byte| byte), 0, "strings end with NUL");
            }
        }
    }

    /// The types a hostile client sends most: every one the store serves.
    const KINDS: [T; 13] = [
        T::Read,
        T::Write,
        T::Mkdir,
        T::Rm,
        T::Directory,
        T::GetPerms,
        T::SetPerms,
        T::Watch,
        T::Unwatch,
        T::GetDomainPath,
        T::TransactionStart,
        T::TransactionEnd,
        T::ResetWatches,
    ];

    fn random_request(random: &mut XorShift) -> Vec<u8> {
        const PIECES: [&[u8]; 17] = [
            b"device/vbd/0/state",
            b"/local/domain/1/x",
            b"/local/domain/2/secret",
            b"/local/domain/0/backend",
            b"/",
            b"a",
            b"a/b",
            b"4",
            b"b1",
            b"r0",
            b"n2",
            b"T",
            b"F",
            b"",
            b"..",
            b"\xff",
            b"a//b",
        ];
        if random.below(8) == 0 {
            let length = random.below(48);
            return (0..length).map(|_| random.next() as u8).collect();
        }
        let kind =
            if random.below(10) == 0 { random.below(30) as u32 } else { KINDS[random.below(KINDS.len())].number() };
        // Mostly the field count the kind wants, so that requests get past
        // the framing checks into the store.
        let count = match (random.below(4), T::from_number(kind)) {
            (0, _) | (_, None) => random.below(5),
            (_, Some(T::Write | T::Watch | T::Unwatch)) => 2,
            (_, Some(T::SetPerms)) => 2 + random.below(3),
            _ => 1,
        };
        let fields: Vec<&[u8]> = (0..count).map(|_| PIECES[random.below(PIECES.len())]).collect();
        // Transactions 1 to 5 are open often (ids start at 1), 0 mostly.
        let tx_id = if random.below(3) == 0 { random.below(6) as u32 } else { 0 };
        let mut bytes = match T::from_number(kind) {
            Some(kind) => request(kind, random.next() as u32, tx_id, &fields),
            None => message(kind, random.next() as u32, &fields),
        };
        for _ in 0..random.below(4).saturating_sub(1) {
            match random.below(4) {
                0 if !bytes.is_empty() => {
                    let at = random.below(bytes.len());
                    bytes[at] = random.next() as u8;
                }
                1 => bytes.truncate(random.below(bytes.len() + 1)),
                2 => bytes.push(random.next() as u8),
                _ if bytes.len() > 12 => bytes[12] = random.below(40) as u8,
                _ => {}
            }
        }
        bytes
    }

    #[test]
    fn random_messages_never_panic_and_always_get_a_valid_reply() {
        let mut store = small();
        store.introduce_domain(1, Quota::GUEST).unwrap();
        store.introduce_domain(2, Quota::GUEST).unwrap();
        store.write(2, "secret", "s").unwrap();
        let mut random = XorShift(0x1234_5678_9abc_def1);
        let mut response = [0u8; MESSAGE_MAX];
        let mut event = [0u8; MESSAGE_MAX];
        for round in 0..40_000 {
            let request = random_request(&mut random);
            // Hostile guests first, then everyone.
            let caller = if round < 20_000 { [1, 3][random.below(2)] } else { [1, 2, 3, DOM0][random.below(4)] };
            let size = store.handle(caller, &request, &mut response);
            check_reply(&request, &response[..size]);
            if random.below(4) == 0 {
                let size = store.pop_event(caller, &mut event);
                if size != 0 {
                    let (header, payload) = parse_reply(&event[..size]);
                    assert_eq!(header.r#type, T::WatchEvent.number());
                    assert_eq!(strings_of(payload).len(), 2);
                }
            }
            if round == 20_000 - 1 {
                assert_eq!(store.read(2, "secret"), Ok("s"), "guest 2's secret stayed its own");
            }
        }
        check_consistent(&*store);
    }

    /// Feeds `stream` to an assembler in random pieces and answers every
    /// message; returns the replies' request ids.
    fn serve_stream(store: &mut Small, caller: DomainId, stream: &[u8], random: &mut XorShift) -> Vec<u32> {
        let mut assembler = MessageAssembler::new();
        let mut response = [0u8; MESSAGE_MAX];
        let mut ids = Vec::new();
        let mut at = 0;
        while at < stream.len() {
            let piece = (1 + random.below(300)).min(stream.len() - at);
            let mut offered = &stream[at..at + piece];
            at += piece;
            while !offered.is_empty() {
                let taken = assembler.feed(offered);
                offered = &offered[taken..];
                match assembler.message() {
                    Some(request) => {
                        let size = store.handle(caller, request, &mut response);
                        check_reply(request, &response[..size]);
                        ids.push(XsdSockmsg::from_bytes(response.first_chunk().unwrap()).req_id);
                        assembler.clear();
                    }
                    None => assert!(offered.is_empty(), "an incomplete message takes all it is offered"),
                }
            }
        }
        ids
    }

    #[test]
    fn a_byte_stream_stays_in_step() {
        let mut store = small();
        store.introduce_domain(1, Quota::GUEST).unwrap();
        let mut random = XorShift(0xfeed_beef_dead_f00d);
        // Framed messages with hostile contents, some with runaway lengths
        // whose bytes do follow: every one gets its reply, in order.
        let mut stream = Vec::new();
        let mut sent = Vec::new();
        for id in 0..3000u32 {
            let mut request = random_request(&mut random);
            request.resize(request.len().max(XSD_SOCKMSG_SIZE), 0);
            let length = if random.below(50) == 0 {
                PAYLOAD_MAX + 1 + random.below(5000)
            } else {
                request.len() - XSD_SOCKMSG_SIZE
            };
            request.resize(XSD_SOCKMSG_SIZE + length, b'x');
            request[4..8].copy_from_slice(&id.to_le_bytes());
            request[12..16].copy_from_slice(&(length as u32).to_le_bytes());
            stream.extend(&request);
            sent.push(id);
        }
        assert_eq!(serve_stream(&mut store, 1, &stream, &mut random), sent);
        // Unframed garbage: whatever it parses as, nothing panics.
        let garbage: Vec<u8> = (0..200_000).map(|_| random.next() as u8).collect();
        serve_stream(&mut store, 1, &garbage, &mut random);
        check_consistent(&*store);
    }

    #[test]
    fn the_assembler_reassembles_and_skips_oversized_payloads() {
        let mut assembler = MessageAssembler::new();
        let first = request(T::Read, 1, 0, &[b"some/path"]);
        let second = request(T::Write, 2, 0, &[b"k", b"v"]);
        let mut stream = first.clone();
        stream.extend(&second);
        // One byte at a time.
        let mut taken = 0;
        while assembler.message().is_none() {
            taken += assembler.feed(&stream[taken..taken + 1]);
        }
        assert_eq!(assembler.message(), Some(&first[..]));
        assert_eq!(assembler.feed(&stream[taken..]), 0, "nothing taken until cleared");
        assembler.clear();
        // Then all at once: only up to the message's end.
        assert_eq!(assembler.feed(&stream[taken..]), second.len());
        assert_eq!(assembler.message(), Some(&second[..]));
        assembler.clear();
        // A runaway length is skipped exactly, then the next message parses.
        let huge = XsdSockmsg { r#type: T::Write.number(), req_id: 3, tx_id: 5, len: 10_000 };
        let mut stream = huge.to_bytes().to_vec();
        stream.extend(std::iter::repeat_n(b'x', 10_000));
        stream.extend(&first);
        let mut at = 0;
        while assembler.message().is_none() {
            at += assembler.feed(&stream[at..(at + 700).min(stream.len())]);
        }
        assert_eq!(at, 16 + 10_000);
        let mut store = small();
        let mut response = [0u8; MESSAGE_MAX];
        let size = store.handle(DOM0, assembler.message().unwrap(), &mut response);
        let (header, payload) = parse_reply(&response[..size]);
        assert_eq!((header.r#type, header.req_id, header.tx_id, payload), (T::Error.number(), 3, 5, &b"E2BIG\0"[..]));
        assembler.clear();
        assert_eq!(assembler.feed(&stream[at..]), first.len());
        assert_eq!(assembler.message(), Some(&first[..]));
    }
}
