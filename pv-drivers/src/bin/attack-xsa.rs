//! Hostile-guest suite: the classes of Xen's security advisories, one mode
//! each, run next to victims by tests/tests/hostile_xsa.rs.
//!
//! cmdline `mode=<m>[,<m>...]` (default all of them, in this order):
//! - `grants`: grant refcount and revocation races. Grants pages of its own
//!   to dom0 and sends disk requests naming them, revoking each grant right
//!   after the notification (while the request is in flight): a revocation
//!   that succeeds must end dom0's access (a page changed after it never
//!   reaches the disk, dom0 never writes the page after it); one refused
//!   must be refused only because dom0 maps the page. A reference revoked
//!   and granted again for another page must reach the new page (no stale
//!   mapping). Revoking a transfer page dom0 keeps mapped is refused.
//! - `doublefetch`: writes a block request slot, notifies, and keeps
//!   rewriting the slot's fields (segment count, sector, operation,
//!   segments) while dom0 works: dom0 must copy the request once and answer
//!   it once with a documented status; the disk must work on afterwards.
//! - `aliasing`: a read into a read-only grant (refused, page untouched);
//!   the ring page's own grant used as a data page (dom0 maps it twice;
//!   revoking it is refused), then read over itself: dom0 overwrites its
//!   own ring and must cut the disk off, not crash.
//! - `events`: event storms (sends on every port dom0 serves, a loopback
//!   channel to itself) and bind/close churn up to the port table's limit,
//!   through Xen's `event_channel_op` (a full table is `-ENOSPC`), then
//!   through Mica's own `EventOp` (a full table is `Busy`); every port
//!   comes back free.
//! - `watches`: registers watches up to its quota (the next is refused with
//!   ENOSPC), then floods writes under them without reading its store ring:
//!   dom0 must stop reading its requests and bound its event queue; after
//!   reading again the guest gets at most a queue's worth of events.
//! - `storeflood`: store requests back to back, good and malformed, with
//!   replies read: dom0 answers every one (or refuses it with an error).
//!
//! - `storm` (last; never ends): notifies every port dom0 serves (Xen's
//!   and Mica's sends in turn) and sends store requests as fast as it can,
//!   while the test checks that the shell and the victims are not starved.
//!
//! - `spy` (last; never ends): watches `/`, `/local/domain` and dom0's
//!   back-end directory and reads every event while victims come and go:
//!   no event may name another domain's node it cannot read.
//!
//! Every mode prints `attack-xsa: <mode>: ...` lines, `FAILED` for what
//! must not happen, and the guest ends with `attack-xsa: done, <n> FAILED`.
#![no_std]
#![no_main]

use core::fmt::Write;

use abi::Error;
use abi::event::{EventOp as E, PORT_COUNT, PortState, PortStatus};
use abi::xen::errno::Errno;
use abi::xen::event_channel::{PortState as XenPortState, Virq};
use abi::xen::io::block::{
    BLKIF_ENTRY_SIZE, BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_RING_SIZE, BlkifOp, BlkifRequest, BlkifRequestSegment,
    BlkifRsp,
};
use abi::xen::io::store::{XSD_SOCKMSG_SIZE, XsdSockmsg, XsdSockmsgType};
use pv_drivers::guest::{self, Guest, StoreFailure};
use pv_drivers::hypercall;
use pv_drivers::xen::{self, evtchn};

const PAGE: usize = 4096;
const OP_READ: u8 = BlkifOp::Read.number();
const OP_WRITE: u8 = BlkifOp::Write.number();
const OP_FLUSH: u8 = BlkifOp::FlushDiskcache.number();
const STATUS_OK: i16 = BlkifRsp::Okay.number();
const STATUS_ERROR: i16 = BlkifRsp::Error.number();
const STATUS_UNSUPPORTED: i16 = BlkifRsp::Eopnotsupp.number();
const SECTOR: usize = 512;
/// Pages of its own this guest grants to dom0 one request at a time.
const OWN_PAGES: usize = 4;
/// Rounds of revoking a used reference and granting it again.
const REUSE_ROUNDS: u64 = 80;

#[repr(C, align(4096))]
struct Pages([[u8; PAGE]; OWN_PAGES]);
static mut PAGES: Pages = Pages([[0; PAGE]; OWN_PAGES]);

fn page_address(index: usize) -> u64 {
    &raw mut PAGES as u64 + (index * PAGE) as u64
}

/// Fills own page `index` with `byte` (volatile: dom0 may read it meanwhile).
fn fill(index: usize, byte: u8) {
    let page = page_address(index) as *mut u8;
    for offset in 0..PAGE {
        // SAFETY: inside PAGES; no reference is made (dom0 may map it).
        unsafe { core::ptr::write_volatile(page.add(offset), byte) };
    }
}

/// Whether own page `index` holds only `byte`.
fn holds(index: usize, byte: u8) -> bool {
    let page = page_address(index) as *const u8;
    // SAFETY: inside PAGES; read without a reference.
    (0..PAGE).all(|offset| unsafe { core::ptr::read_volatile(page.add(offset)) } == byte)
}

/// A one-page request naming grant `reference`.
fn one_page(id: u64, operation: u8, sector: u64, reference: u32) -> BlkifRequest {
    let mut request = BlkifRequest { id, operation, nr_segments: 1, sector_number: sector, ..Default::default() };
    request.seg[0] = BlkifRequestSegment { gref: reference, first_sect: 0, last_sect: 7, _pad0: 0 };
    request
}

/// Free bytes in the request ring of the store page at `page` (whose
/// indices the client and dom0 write; read without references).
fn request_room(page: u64) -> usize {
    use abi::xen::io::store::{XENSTORE_RING_SIZE, XenstoreDomainInterface};
    use core::mem::offset_of;
    // SAFETY: both indices lie in our own store ring page.
    let (producer, consumer) = unsafe {
        (
            core::ptr::read_volatile((page as usize + offset_of!(XenstoreDomainInterface, req_prod)) as *const u32),
            core::ptr::read_volatile((page as usize + offset_of!(XenstoreDomainInterface, req_cons)) as *const u32),
        )
    };
    XENSTORE_RING_SIZE.saturating_sub(producer.wrapping_sub(consumer) as usize)
}

struct Attack {
    guest: Guest,
    failed: u32,
    next_id: u64,
}

impl Attack {
    fn say(&mut self, arguments: core::fmt::Arguments) {
        let _ = self.guest.write_fmt(arguments);
        self.guest.write(b"\n");
    }

    fn fail(&mut self, mode: &str, arguments: core::fmt::Arguments) {
        self.failed += 1;
        let _ = write!(self.guest, "attack-xsa: {mode}: FAILED: ");
        self.say(arguments);
    }

    fn id(&mut self) -> u64 {
        // Far from the runtime's own ids.
        self.next_id += 1;
        (1 << 40) + self.next_id
    }

    /// `rsp_prod` on the disk ring.
    fn responses_produced(&self) -> u32 {
        let ring = self.guest.disk_ring_page().unwrap_or(0);
        // SAFETY: the ring page is ours (dom0 writes rsp_prod; read without a reference).
        unsafe { core::ptr::read_volatile((ring + 8) as *const u32) }
    }

    /// Whether guest sector `sector` holds only `byte` (read through the runtime's pages).
    fn sector_holds(&mut self, sector: u64, byte: u8) -> Result<bool, guest::DiskError> {
        let mut data = [0u8; PAGE];
        self.guest.disk_read(sector, &mut data)?;
        Ok(data.iter().all(|&b| b == byte))
    }

    fn grants(&mut self) {
        const MODE: &str = "grants";
        let sectors = self.guest.disk_sectors();
        if sectors < 64 {
            return self.fail(MODE, format_args!("no disk"));
        }
        // 0. A transfer page dom0 keeps mapped cannot be revoked (first, while
        //    dom0 has room to keep grants mapped).
        let mut data = [0u8; SECTOR * 8];
        if self.guest.disk_read(0, &mut data).is_ok() {
            match self.guest.revoke_transfer_page(0) {
                Err(Error::Busy) => {
                    self.say(format_args!("attack-xsa: grants: revoking a mapped transfer page was refused (busy)"))
                }
                Ok(()) => {
                    self.say(format_args!("attack-xsa: grants: dom0 did not keep the transfer page mapped (revoked)"))
                }
                Err(error) => self.fail(MODE, format_args!("revoking a transfer page gave {error:?}")),
            }
        }
        // 1. Revocation while a request is in flight, writes and reads.
        let (mut revoked, mut refused, mut late_ok) = (0, 0, 0);
        for round in 0..48u64 {
            let page = (round % OWN_PAGES as u64) as usize;
            let byte = 0x40 + round as u8;
            fill(page, byte);
            let Ok(reference) = self.guest.grant_to_dom0(page_address(page), false) else {
                return self.fail(MODE, format_args!("round {round}: granting failed"));
            };
            let write = round % 2 == 0;
            let sector = 8 * (round % 8);
            let id = self.id();
            let request = one_page(id, if write { OP_WRITE } else { OP_READ }, sector, reference);
            let answered_before = self.responses_produced();
            if self.guest.disk_submit(&request).is_err() {
                return self.fail(MODE, format_args!("round {round}: the ring is broken"));
            }
            // Revoke at once, or after letting dom0 run a little: both
            // orders of the race happen.
            for _ in 0..round % 4 {
                xen::yield_now();
            }
            let revocation = self.guest.end_grant(reference);
            // After a revocation that worked, dom0 must not see or write the page.
            if revocation.is_ok() {
                fill(page, 0xee);
            }
            let in_flight = self.responses_produced() == answered_before;
            let status = match self.guest.disk_wait_response(id) {
                Ok(status) => status,
                Err(error) => return self.fail(MODE, format_args!("round {round}: no answer: {error:?}")),
            };
            if ![STATUS_OK, STATUS_ERROR].contains(&status) {
                self.fail(MODE, format_args!("round {round}: undocumented status {status}"));
            }
            match revocation {
                Ok(()) => {
                    revoked += 1;
                    late_ok += (in_flight && status == STATUS_OK) as u32;
                    if !holds(page, 0xee) {
                        self.fail(MODE, format_args!("round {round}: dom0 wrote a page after its grant was revoked"));
                    }
                    if write && status == STATUS_OK && self.sector_holds(sector, 0xee).unwrap_or(false) {
                        self.fail(
                            MODE,
                            format_args!("round {round}: a page changed after revocation reached the disk"),
                        );
                    }
                }
                Err(Error::Busy) => {
                    refused += 1;
                    // Refused: dom0 maps it (persistent grant). It may let go later.
                }
                Err(error) => self.fail(MODE, format_args!("round {round}: revocation gave {error:?}")),
            }
        }
        self.say(format_args!(
            "attack-xsa: grants: 48 requests revoked in flight: {revoked} revocations took effect ({late_ok} of them answered OK: dom0 had copied first), {refused} refused while dom0 maps the page"
        ));

        // 2. A reference revoked and granted again for another page.
        let (mut regranted, mut same, mut kept) = (0, 0, 0);
        // More rounds than dom0 keeps grants mapped (64 per disk): the
        // later ones go through copies and can be revoked and reused.
        for round in 0..REUSE_ROUNDS {
            let (first, second) = (0, 1);
            fill(first, 0xa1);
            fill(second, 0xb2);
            let Ok(reference) = self.guest.grant_to_dom0(page_address(first), false) else { break };
            let id = self.id();
            let _ = self.guest.disk_request(&one_page(id, OP_WRITE, 64 + 8 * (round % 8), reference));
            if self.guest.end_grant(reference).is_err() {
                kept += 1; // dom0 keeps it mapped: it cannot be reused.
                continue;
            }
            let Ok(again) = self.guest.grant_to_dom0(page_address(second), false) else { break };
            regranted += 1;
            same += (again == reference) as u32;
            let id = self.id();
            let status = self.guest.disk_request(&one_page(id, OP_WRITE, 64 + 8 * (round % 8), again));
            if status != Ok(STATUS_OK) {
                self.fail(MODE, format_args!("write through a re-granted reference: {status:?}"));
            } else if !self.sector_holds(64 + 8 * (round % 8), 0xb2).unwrap_or(false) {
                self.fail(MODE, format_args!("a re-granted reference reached the page it named before"));
            }
            let _ = self.guest.end_grant(again);
        }
        self.say(format_args!(
            "attack-xsa: grants: {REUSE_ROUNDS} references used: {regranted} revoked and granted again ({same} under the same number) reached only their new page, {kept} stayed mapped by dom0 (not revocable)"
        ));

        self.say(format_args!("attack-xsa: grants: done"));
    }

    fn doublefetch(&mut self) {
        const MODE: &str = "doublefetch";
        let Some(ring) = self.guest.disk_ring_page() else {
            return self.fail(MODE, format_args!("no disk"));
        };
        let sectors = self.guest.disk_sectors();
        fill(2, 0x5d);
        let Ok(reference) = self.guest.grant_to_dom0(page_address(2), false) else {
            return self.fail(MODE, format_args!("granting failed"));
        };
        let mut random = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            random
        };
        let (mut good, mut refused, mut rewrites) = (0u32, 0u32, 0u64);
        let slice = self.guest.ticks_per_second() / 200;
        for round in 0..64u64 {
            let id = self.id();
            // SAFETY: the ring page is ours; req_prod is only written by us.
            let index = unsafe { core::ptr::read_volatile(ring as *const u32) };
            let sector = 128 + 8 * (round % 16);
            if self.guest.disk_submit(&one_page(id, OP_WRITE, sector, reference)).is_err() {
                return self.fail(MODE, format_args!("the ring is broken"));
            }
            let slot = ring + 64 + (index as u64 % BLKIF_RING_SIZE as u64) * BLKIF_ENTRY_SIZE as u64;
            let until = guest::now() + slice;
            // Rewrite everything but the id until dom0 answers (or a while).
            while self.responses_produced() == index && guest::now() < until {
                let value = next();
                let operation = [OP_WRITE, OP_READ, 7, OP_FLUSH][value as usize % 4];
                let count = [1u8, 12, 255, 0, 11][(value >> 8) as usize % 5];
                let bad_sector = [sector, u64::MAX - 3, sectors - 1, 1 << 40, sectors][(value >> 16) as usize % 5];
                let last = [7u8, 200, 0, 8][(value >> 24) as usize % 4];
                // SAFETY: the slot lies in our ring page; dom0 may read it
                // meanwhile, which is the point; no reference is made.
                unsafe {
                    // blkif: operation at 0, nr_segments at 1, id at 8.
                    core::ptr::write_volatile(slot as *mut u8, operation);
                    core::ptr::write_volatile((slot + 1) as *mut u8, count);
                    core::ptr::write_volatile((slot + 16) as *mut u64, bad_sector);
                    for segment in 0..BLKIF_MAX_SEGMENTS_PER_REQUEST as u64 {
                        let at = slot + 24 + 8 * segment;
                        core::ptr::write_volatile(at as *mut u32, (value >> 32) as u32 ^ segment as u32);
                        core::ptr::write_volatile((at + 5) as *mut u8, last);
                    }
                }
                rewrites += 1;
            }
            // A blkif response overwrites the first 16 bytes of its request's
            // slot, its id where the request has operation and nr_segments:
            // a rewrite that lands after dom0 wrote the answer changes the
            // answer's id. Once dom0 has published (it writes the slot no
            // more) put the id's bytes back; before, this is one more rewrite.
            let id_bytes = id.to_le_bytes();
            // SAFETY: as above.
            unsafe {
                core::ptr::write_volatile(slot as *mut u8, id_bytes[0]);
                core::ptr::write_volatile((slot + 1) as *mut u8, id_bytes[1]);
            }
            match self.guest.disk_wait_response(id) {
                Ok(STATUS_OK) => good += 1,
                Ok(STATUS_ERROR | STATUS_UNSUPPORTED) => refused += 1,
                Ok(status) => self.fail(MODE, format_args!("round {round}: undocumented status {status}")),
                Err(error) => {
                    return self.fail(
                        MODE,
                        format_args!("round {round}: answer: {error:?} (one answer per request, with its id)"),
                    );
                }
            }
        }
        self.say(format_args!(
            "attack-xsa: doublefetch: 64 requests rewritten {rewrites} times while in flight: {good} done, {refused} refused, each answered once"
        ));
        let _ = self.guest.end_grant(reference);
        // The disk works on: write and read back a pattern.
        let pattern = [0x3cu8; PAGE];
        let written = self.guest.disk_write(256, &pattern);
        match (written, self.sector_holds(256, 0x3c)) {
            (Ok(()), Ok(true)) => {
                self.say(format_args!("attack-xsa: doublefetch: the disk still reads back what was written"))
            }
            other => self.fail(MODE, format_args!("the disk after the attack: {other:?}")),
        }
    }

    /// Pages that alias something else: a read-only grant asked to take
    /// data, and the ring page's own grant used as a data page (dom0 maps
    /// that grant twice, then overwrites its own ring with the disk's data).
    fn aliasing(&mut self) {
        const MODE: &str = "aliasing";
        // 1. A read into a read-only grant: refused, the page untouched.
        fill(3, 0x77);
        let Ok(readonly) = self.guest.grant_to_dom0(page_address(3), true) else {
            return self.fail(MODE, format_args!("granting failed"));
        };
        let id = self.id();
        match self.guest.disk_request(&one_page(id, OP_READ, 256, readonly)) {
            Ok(STATUS_OK) => self.fail(MODE, format_args!("dom0 wrote into a read-only grant")),
            Ok(_) if !holds(3, 0x77) => self.fail(MODE, format_args!("a refused read changed a read-only page")),
            Ok(status) => self
                .say(format_args!("attack-xsa: aliasing: a read into a read-only grant was refused (status {status})")),
            Err(error) => return self.fail(MODE, format_args!("read-only grant: {error:?}")),
        }
        // 2. The ring's grant as a data page: dom0 maps it a second time.
        let mut text = [0u8; 16];
        let reference = match self.guest.store_read(&pv_drivers::guest::device_key("vbd", "ring-ref"), &mut text) {
            Ok(length) => abi::store::parse_decimal(&text[..length]).unwrap_or(0),
            Err(error) => return self.fail(MODE, format_args!("reading ring-ref: {error:?}")),
        };
        let id = self.id();
        let copied = self.guest.disk_request(&one_page(id, OP_WRITE, 264, reference));
        self.say(format_args!("attack-xsa: aliasing: the ring page written to disk through its own grant: {copied:?}"));
        // Mapped twice (ring and data) or once: revoking must be refused.
        match self.guest.end_grant(reference) {
            Err(Error::Busy) => {
                self.say(format_args!("attack-xsa: aliasing: revoking the ring's grant was refused (busy)"))
            }
            other => self.fail(MODE, format_args!("revoking the ring's grant while dom0 maps it gave {other:?}")),
        }
        // 3. Read that image back over the ring: dom0 overwrites its own
        //    ring with stale indices. It must cut the disk off, not crash.
        //    No answer is owed: the read rewinds the ring's indices to the
        //    image's, so whether a response ever shows up depends on where
        //    dom0 was when the image landed. Waiting for one could block
        //    for good; give dom0 a guest second instead (the test checks
        //    dom0's own line that it cut the disk off).
        let id = self.id();
        let submitted = self.guest.disk_submit(&one_page(id, OP_READ, 264, reference));
        self.say(format_args!("attack-xsa: aliasing: the ring page read over itself: submitted {submitted:?}"));
        let second = self.guest.ticks_per_second();
        self.guest.sleep_until(guest::now() + second);
        self.guest.disk_notify();
        self.say(format_args!("attack-xsa: aliasing: done"));
    }

    /// Never returns: watches the whole tree (`/`, `/local/domain`, dom0's
    /// back-end directory) and reads every event, while the test creates
    /// and destroys victims: no event may name a node of another domain
    /// that this guest may not read. Prints a tally when it changed (at most
    /// once a second of guest time) and a `FAILED` line per leaked path.
    fn spy(&mut self) -> ! {
        const MODE: &str = "spy";
        let me = self.guest.domain_id();
        for (path, token) in [("/", "root"), ("/local/domain", "homes"), ("/local/domain/0/backend", "backends")] {
            if let Err(error) = self.guest.store_watch(path, token) {
                self.say(format_args!("attack-xsa: spy: watching {path} was refused ({error:?})"));
            }
        }
        self.say(format_args!("attack-xsa: spy: watching the tree"));
        let mut own = arrayvec::ArrayString::<64>::new();
        let _ = write!(own, "/local/domain/{me}");
        let mut backend_vbd = arrayvec::ArrayString::<64>::new();
        let _ = write!(backend_vbd, "/local/domain/0/backend/vbd/{me}");
        let mut backend_vif = arrayvec::ArrayString::<64>::new();
        let _ = write!(backend_vif, "/local/domain/0/backend/vif/{me}");
        let at_or_below = |path: &str, top: &str| {
            path == top || (path.starts_with(top) && path.as_bytes().get(top.len()) == Some(&b'/'))
        };
        // The watched paths themselves come once at registration.
        let allowed = |path: &str| {
            ["/", "/local/domain", "/local/domain/0/backend"].contains(&path)
                || at_or_below(path, &own)
                || at_or_below(path, &backend_vbd)
                || at_or_below(path, &backend_vif)
        };
        let page = self.guest.start_info.store_page;
        // SAFETY: our own store ring page; from here on only this accessor reads it.
        let ring = unsafe { pv_drivers::console::StoreRingAccess::new(page as *mut u8) };
        let mut message = [0u8; XSD_SOCKMSG_SIZE + abi::xen::io::store::XENSTORE_PAYLOAD_MAX as usize];
        let mut length = 0;
        let (mut events, mut leaked) = (0u64, 0u64);
        let (mut report, mut reported, mut control) = (0, 0, 0);
        loop {
            let wanted = if length < XSD_SOCKMSG_SIZE {
                XSD_SOCKMSG_SIZE
            } else {
                let header = XsdSockmsg::from_bytes(message[..XSD_SOCKMSG_SIZE].try_into().unwrap_or(&[0; 16]));
                (XSD_SOCKMSG_SIZE + header.len as usize).min(message.len())
            };
            if length >= XSD_SOCKMSG_SIZE && length == wanted {
                let header = XsdSockmsg::from_bytes(message[..XSD_SOCKMSG_SIZE].try_into().unwrap_or(&[0; 16]));
                if header.r#type == XsdSockmsgType::WatchEvent.number() {
                    events += 1;
                    let payload = &message[XSD_SOCKMSG_SIZE..length];
                    let path = payload.split(|&b| b == 0).next().unwrap_or(&[]);
                    let path = core::str::from_utf8(path).unwrap_or("?");
                    if !allowed(path) {
                        leaked += 1;
                        if leaked <= 20 {
                            self.fail(MODE, format_args!("an event named {path:?}, a node of another domain"));
                        }
                    }
                }
                length = 0;
                continue;
            }
            match ring.client_receive(&mut message[length..wanted]) {
                Ok(0) => {
                    let _ = self.guest_notify_store();
                    if guest::now() > control + self.guest.ticks_per_second() && request_room(page) >= 64 {
                        control = guest::now();
                        // The control: a change of its own node, which the
                        // watch on `/` must report (the reply is skipped above).
                        let mut request = [0u8; XSD_SOCKMSG_SIZE + 32];
                        let mut payload = arrayvec::ArrayString::<32>::new();
                        let _ = write!(payload, "data/spy\0{events}");
                        let header = XsdSockmsg {
                            r#type: XsdSockmsgType::Write.number(),
                            req_id: 1,
                            tx_id: 0,
                            len: payload.len() as u32,
                        };
                        request[..XSD_SOCKMSG_SIZE].copy_from_slice(&header.to_bytes());
                        let end = XSD_SOCKMSG_SIZE + payload.len();
                        request[XSD_SOCKMSG_SIZE..end].copy_from_slice(payload.as_bytes());
                        let mut sent = 0;
                        while sent < end {
                            sent += ring.client_send(&request[sent..end]).unwrap_or(0);
                        }
                        let _ = self.guest_notify_store();
                    }
                    if events != reported && guest::now() > report + self.guest.ticks_per_second() {
                        (report, reported) = (guest::now(), events);
                        self.say(format_args!("attack-xsa: spy: {events} events, {leaked} about nodes of others"));
                    }
                    let wake = guest::now() + self.guest.ticks_per_second() / 100;
                    let _ = xen::set_timer_op(xen::tsc_to_ns(wake, self.guest.start_info.tsc_khz).max(1));
                    self.guest.wait_for_event();
                }
                Ok(count) => {
                    length += count;
                    let _ = self.guest_notify_store();
                }
                Err(_) => {
                    self.fail(MODE, format_args!("dom0 corrupted the store ring"));
                    loop {
                        self.guest.wait_for_event();
                    }
                }
            }
        }
    }

    /// Never returns: notifies every port dom0 serves and keeps the store's
    /// request ring full, as fast as it can, until the guest is destroyed (the
    /// test checks the shell and the victims meanwhile).
    fn storm(&mut self) -> ! {
        let served = served_by_dom0();
        self.say(format_args!("attack-xsa: storm: notifying {} ports and the store until destroyed", served.len()));
        // Store requests pipelined: as many as the request ring takes, the
        // replies read and thrown away (the runtime's client is not used
        // again, so the stream needs no parsing).
        let page = self.guest.start_info.store_page;
        // SAFETY: our own store ring page; from here on only this accessor uses it.
        let ring = unsafe { pv_drivers::console::StoreRingAccess::new(page as *mut u8) };
        let payload = b"data/storm\0";
        let mut message = [0u8; XSD_SOCKMSG_SIZE + 11];
        let header = XsdSockmsg { r#type: XsdSockmsgType::Read.number(), req_id: 1, tx_id: 0, len: 11 };
        message[..XSD_SOCKMSG_SIZE].copy_from_slice(&header.to_bytes());
        message[XSD_SOCKMSG_SIZE..].copy_from_slice(payload);
        let mut sent = 0;
        let mut replies = [0u8; 2048];
        loop {
            for &port in &served {
                let _ = evtchn::notify(port);
                let _ = hypercall::notify(port);
            }
            loop {
                match ring.client_send(&message[sent..]) {
                    Ok(0) | Err(_) => break,
                    Ok(count) => sent = (sent + count) % message.len(),
                }
            }
            while let Ok(count) = ring.client_receive(&mut replies) {
                if count == 0 {
                    break;
                }
            }
        }
    }

    fn events(&mut self) {
        const MODE: &str = "events";
        let free = |port: u32| matches!(xen_state(port), Some(XenPortState::Closed));
        let mut before = [false; PORT_COUNT];
        for (port, busy) in before.iter_mut().enumerate() {
            *busy = !free(port as u32);
        }
        // 1. Storm every port dom0 serves (console, store, disk).
        let served = served_by_dom0();
        let (mut sent, mut sent_mica) = (0u64, 0u64);
        let until = guest::now() + self.guest.ticks_per_second() / 2;
        while guest::now() < until {
            for &port in &served {
                sent += u64::from(evtchn::notify(port).is_ok());
                sent_mica += u64::from(hypercall::notify(port).is_ok());
            }
        }
        self.say(format_args!(
            "attack-xsa: events: {sent} sends through Xen's call and {sent_mica} through Mica's on the {} ports dom0 serves",
            served.len()
        ));
        // 2. A loopback channel to itself, sent as fast as possible.
        let me = self.guest.domain_id() as u16;
        let upcalls = self.guest.upcalls();
        match evtchn::alloc_unbound(me).and_then(|unbound| Ok((unbound, evtchn::bind_interdomain(me, unbound)?))) {
            Ok((unbound, bound)) => {
                let mut loops = 0;
                for _ in 0..50_000 {
                    loops += evtchn::notify(bound).is_ok() as u32;
                }
                let _ = evtchn::close(bound);
                let _ = evtchn::close(unbound);
                // A bit left pending on a closed port would keep the vCPU
                // from ever blocking again: take it.
                let (event_page, _) = self.guest.registered_pages();
                for port in [bound, unbound] {
                    // SAFETY: the runtime's registered event page.
                    unsafe { pv_drivers::event_page::take_pending(event_page, port) };
                }
                self.say(format_args!(
                    "attack-xsa: events: {loops} sends to itself, {} upcalls taken",
                    self.guest.upcalls() - upcalls
                ));
            }
            Err(errno) => self.say(format_args!("attack-xsa: events: a loopback channel was refused ({errno:?})")),
        }
        // 3. Bind/close churn, then the whole table, through Xen's calls.
        let mut churned = 0;
        for round in 0..3000u32 {
            let bound = match round % 3 {
                0 => evtchn::alloc_unbound(0),
                1 => evtchn::alloc_unbound(me),
                _ => evtchn::bind_virq(Virq::Console, 0),
            };
            if let Ok(port) = bound {
                churned += evtchn::close(port).is_ok() as u32;
            }
        }
        let mut held = arrayvec::ArrayVec::<u32, PORT_COUNT>::new();
        let exhausted = loop {
            match evtchn::alloc_unbound(0) {
                Ok(port) if held.try_push(port).is_ok() => {}
                Ok(port) => break Err(port),
                Err(errno) => break Ok(errno),
            }
        };
        match exhausted {
            Ok(Errno::Enospc) => self.say(format_args!(
                "attack-xsa: events: xen: {churned} bind/close rounds; the table filled after {} more ports (ENOSPC)",
                held.len()
            )),
            other => self.fail(MODE, format_args!("xen: filling the port table: {other:?}, not ENOSPC")),
        }
        for port in held.drain(..) {
            if evtchn::close(port).is_err() {
                self.fail(MODE, format_args!("xen: closing port {port}"));
            }
        }
        // 4. The same through Mica's own calls.
        let me = u64::from(me);
        let mut churned = 0;
        for round in 0..3000u64 {
            let bound = match round % 3 {
                0 => hypercall::event(E::AllocUnbound, 0, 0),
                1 => hypercall::event(E::AllocUnbound, me, 0),
                _ => hypercall::event(E::BindVirq, abi::event::Virq::Console as u64, 0),
            };
            if let Ok(port) = bound {
                churned += hypercall::event(E::Close, port, 0).is_ok() as u32;
            }
        }
        let exhausted = loop {
            match hypercall::event(E::AllocUnbound, 0, 0) {
                Ok(port) if held.try_push(port as u32).is_ok() => {}
                Ok(port) => break Err(port),
                Err(error) => break Ok(error),
            }
        };
        match exhausted {
            Ok(Error::Busy) => self.say(format_args!(
                "attack-xsa: events: mica: {churned} bind/close rounds; the table filled after {} more ports (busy)",
                held.len()
            )),
            other => self.fail(MODE, format_args!("mica: filling the port table: {other:?}, not Busy")),
        }
        for port in held {
            if hypercall::event(E::Close, u64::from(port), 0).is_err() {
                self.fail(MODE, format_args!("mica: closing port {port}"));
            }
        }
        let leaked = (0..PORT_COUNT).filter(|&port| !before[port] && !free(port as u32)).count();
        if leaked > 0 {
            self.fail(MODE, format_args!("{leaked} ports are not free again"));
        }
        let mica_free = |port: usize| {
            hypercall::event(E::Status, port as u64, 0)
                .ok()
                .and_then(PortStatus::decode)
                .is_some_and(|status| status.state == PortState::Free)
        };
        if (0..PORT_COUNT).any(|port| !before[port] && !mica_free(port)) {
            self.fail(MODE, format_args!("Mica's Status and Xen's disagree about a port"));
        }
        if !self.guest.console_connected() {
            self.fail(MODE, format_args!("the console port is no longer connected"));
        }
        self.say(format_args!("attack-xsa: events: done"));
    }

    fn watches(&mut self) {
        const MODE: &str = "watches";
        // Nested paths (data/n, data/n/n, ...): one write below the last
        // fires every one of them.
        let mut path = arrayvec::ArrayString::<96>::new();
        let _ = path.try_push_str("data");
        let mut registered = 0;
        let refusal = loop {
            let _ = path.try_push_str("/n");
            match self.guest.store_watch(&path, "t") {
                Ok(()) => registered += 1,
                Err(error) => break error,
            }
            if registered > 4096 {
                break StoreFailure::BadMessage;
            }
        };
        if refusal != StoreFailure::Refused(Errno::Enospc) {
            return self.fail(MODE, format_args!("watch {registered} was answered {refusal:?}, not ENOSPC"));
        }
        let _ = self.guest.take_watch_events();
        self.say(format_args!("attack-xsa: watches: {registered} more watches registered, the next refused (ENOSPC)"));
        // Flood writes under every watch, never reading the ring.
        let page = self.guest.start_info.store_page;
        // SAFETY: our own store ring page; the runtime's client is not used
        // while this one writes (and only reads it afterwards).
        let ring = unsafe { pv_drivers::console::StoreRingAccess::new(page as *mut u8) };
        let mut message = [0u8; 160];
        let (mut queued, mut stalled, mut stalled_events) = (0u32, false, 0u64);
        let give_up = guest::now() + self.guest.ticks_per_second();
        'flood: for round in 0..4000u32 {
            let mut payload = arrayvec::ArrayString::<128>::new();
            let _ = write!(payload, "{path}\0{round}");
            let header = XsdSockmsg {
                r#type: XsdSockmsgType::Write.number(),
                req_id: 0x7000_0000 + round,
                tx_id: 0,
                len: payload.len() as u32,
            };
            message[..XSD_SOCKMSG_SIZE].copy_from_slice(&header.to_bytes());
            message[XSD_SOCKMSG_SIZE..XSD_SOCKMSG_SIZE + payload.len()].copy_from_slice(payload.as_bytes());
            let mut sent = 0;
            let total = XSD_SOCKMSG_SIZE + payload.len();
            while sent < total {
                match ring.client_send(&message[sent..total]) {
                    Ok(0) => {
                        // The ring is full: dom0 stopped reading (our replies do not fit).
                        let _ = self.guest_notify_store();
                        if guest::now() > give_up {
                            stalled = true;
                            // Finish the message (messages never interleave):
                            // read replies so that dom0 takes requests again.
                            while sent < total {
                                stalled_events += self.guest.take_watch_events() as u64;
                                let _ = self.guest_notify_store();
                                xen::yield_now();
                                sent += ring.client_send(&message[sent..total]).unwrap_or(0);
                            }
                            queued += 1;
                            break 'flood;
                        }
                        xen::yield_now();
                    }
                    Ok(count) => sent += count,
                    Err(_) => return self.fail(MODE, format_args!("dom0 corrupted the store ring")),
                }
            }
            queued += 1;
            let _ = self.guest_notify_store();
        }
        self.say(format_args!(
            "attack-xsa: watches: {queued} writes sent without reading a reply{}",
            if stalled { "; dom0 stopped taking requests (its replies to me did not fit)" } else { "" }
        ));
        // Let dom0 work, then read everything: events must be bounded.
        let mut events = stalled_events;
        let mut quiet = 0;
        while quiet < 20 {
            let taken = self.guest.take_watch_events() as u64;
            events += taken;
            quiet = if taken == 0 { quiet + 1 } else { 0 };
            let _ = self.guest_notify_store();
            self.guest.sleep_until(guest::now() + self.guest.ticks_per_second() / 100);
        }
        // Each write fires every watch (the first one also creates the node).
        let produced = queued as u64 * registered as u64;
        self.say(format_args!(
            "attack-xsa: watches: {events} events read back for {produced} changes ({} dropped by dom0's bounded queue)",
            produced.saturating_sub(events)
        ));
        let mut value = [0u8; 16];
        // A late reply to the flood may still come first: ask twice.
        let read = self.guest.store_read(&path, &mut value);
        let read = if read.is_err() { self.guest.store_read(&path, &mut value) } else { read };
        match read {
            Ok(_) => self.say(format_args!("attack-xsa: watches: the store still answers")),
            Err(error) => self.fail(MODE, format_args!("the store after the flood: {error:?}")),
        }
    }

    fn guest_notify_store(&self) -> Result<(), Errno> {
        // The store's port is ours, connected to dom0's (ABI 1.0).
        evtchn::notify(self.guest.start_info.store_port)
    }

    fn storeflood(&mut self) {
        const MODE: &str = "storeflood";
        let (mut answered, mut refused) = (0u32, 0u32);
        let mut buffer = [0u8; 2100];
        let long = [b'x'; 200];
        let long = core::str::from_utf8(&long).unwrap_or("x");
        for round in 0..1500u32 {
            let result = match round % 6 {
                0 => self.guest.store_write("data/flood", "v").map(|_| 0),
                1 => self.guest.store_read("data/flood", &mut buffer),
                2 => self.guest.store_read("/local/domain/0", &mut buffer),
                3 => self.guest.store_read("bad//path", &mut buffer),
                4 => self.guest.store_write("/local/domain/0/intruder", "x").map(|_| 0),
                _ => self.guest.store_read(long, &mut buffer),
            };
            match result {
                Ok(_) => answered += 1,
                Err(StoreFailure::Refused(_)) => refused += 1,
                Err(error) => return self.fail(MODE, format_args!("request {round}: {error:?}")),
            }
        }
        if answered < 500 {
            self.fail(MODE, format_args!("only {answered} good requests answered"));
        }
        self.say(format_args!(
            "attack-xsa: storeflood: 1500 requests: {answered} answered, {refused} refused with an error"
        ));
    }
}

/// Port `port`'s state as Xen's `status` reports it.
fn xen_state(port: u32) -> Option<XenPortState> {
    evtchn::status(port).ok().and_then(|status| status.state())
}

/// This domain's ports connected to dom0 (console, store, disk, vif).
fn served_by_dom0() -> arrayvec::ArrayVec<u32, 8> {
    (1..PORT_COUNT as u32)
        .filter(|&port| matches!(xen_state(port), Some(XenPortState::Interdomain { remote_dom: 0, .. })))
        .take(8)
        .collect()
}

#[unsafe(no_mangle)]
extern "C" fn _start(start_info: u64) -> ! {
    let guest = Guest::init(start_info);
    let mut cmdline = arrayvec::ArrayString::<256>::new();
    let _ = cmdline.try_push_str(guest.cmdline());
    let modes = cmdline
        .split_whitespace()
        .find_map(|word| word.strip_prefix("mode="))
        .unwrap_or("grants,doublefetch,aliasing,events,watches,storeflood");
    let mut attack = Attack { guest, failed: 0, next_id: 0 };
    let sectors = attack.guest.disk_sectors();
    attack
        .say(format_args!("attack-xsa: domain {}, disk of {sectors} sectors, modes {modes}", attack.guest.domain_id()));
    for mode in modes.split(',') {
        match mode {
            "grants" => attack.grants(),
            "doublefetch" => attack.doublefetch(),
            "aliasing" => attack.aliasing(),
            "storm" => attack.storm(),
            "spy" => attack.spy(),
            "events" => attack.events(),
            "watches" => attack.watches(),
            "storeflood" => attack.storeflood(),
            other => attack.fail(other, format_args!("unknown mode")),
        }
    }
    let failed = attack.failed;
    attack.say(format_args!("attack-xsa: done, {failed} FAILED"));
    loop {
        attack.guest.wait_for_event();
        // Let go of the disk if dom0 takes it away.
        if attack.guest.take_watch_events() > 0 {
            let _ = attack.guest.disk_hotplug();
        }
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    guest::crash(format_args!("attack-xsa: panic: {info}\n"))
}
