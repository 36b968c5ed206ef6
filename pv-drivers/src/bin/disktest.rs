//! Example guest: writes a known pattern across its whole disk, reads it
//! back and checks every byte (`mode=write`, the default), or only reads
//! and checks what an earlier run wrote (`mode=verify`). `mode=hostile`
//! attacks dom0's back end instead: a request naming a page it does not
//! own, then a ring whose producer index runs away. `mode=flood` grants
//! dom0 [`FLOOD_PAGES`] distinct pages (more than a guest's share of dom0's
//! foreign window) and names each in its own request, so dom0 would map
//! them all if it let a guest keep as many pages mapped as it asked.
//! `mode=reconnect` closes its own disk and connects it again (a fresh
//! ring and fresh grants), checking data across the gap; `mode=flap` does
//! that [`FLAP_ROUNDS`] times with I/O in each round. Both check that dom0
//! let go of every page when it said Closed (every grant revokes), and end
//! with the disk closed.
//!
//! Sector `s` holds: bytes 0..8 `s` (little-endian), bytes 8..16 `MICADISK`,
//! then byte `i` = `(s * 7 + i) % 251`. The system tests read the disk image
//! on the host and check the same pattern at the region's offset.
#![no_std]
#![no_main]

use core::fmt::Write;

use abi::start_info::MemoryKind;
use abi::xen::io::block::{BlkifOp, BlkifRequest, BlkifRequestSegment, BlkifRsp};
use pv_drivers::guest::{self, Guest};

const SECTOR: usize = 512;
/// Bytes per request: 32 KiB, 8 of the 11 pages a blkif request may carry,
/// the size the benchmarks and the system tests count requests in.
const CHUNK: usize = 8 * 4096;
const _: () = assert!(CHUNK <= Guest::DISK_TRANSFER_MAX);

fn fill(sector: u64, out: &mut [u8]) {
    out[..8].copy_from_slice(&sector.to_le_bytes());
    out[8..16].copy_from_slice(b"MICADISK");
    for (i, byte) in out.iter_mut().enumerate().skip(16) {
        *byte = ((sector as usize * 7 + i) % 251) as u8;
    }
}

#[unsafe(no_mangle)]
extern "C" fn _start(start_info: u64) -> ! {
    let mut guest = Guest::init(start_info);
    let start = guest.start_info;
    let verify_only = start.cmdline().split_whitespace().any(|word| word == "mode=verify");
    if start.cmdline().split_whitespace().any(|word| word == "mode=hostile") {
        hostile(&mut guest);
    }
    if start.cmdline().split_whitespace().any(|word| word == "mode=bench") {
        bench(&mut guest);
    }
    if start.cmdline().split_whitespace().any(|word| word == "mode=flood") {
        flood(&mut guest);
    }
    if start.cmdline().split_whitespace().any(|word| word == "mode=reconnect") {
        reconnect(&mut guest, 1);
    }
    if start.cmdline().split_whitespace().any(|word| word == "mode=flap") {
        reconnect(&mut guest, FLAP_ROUNDS);
    }
    // `wait`: a guest created without a disk waits for `block-attach`.
    if guest.disk_sectors() == 0 && start.cmdline().split_whitespace().any(|word| word == "wait") {
        let _ = writeln!(guest, "disktest: waiting for a disk (block-attach)");
        while guest.disk_sectors() == 0 {
            guest.wait_for_event();
            if guest.take_watch_events() > 0 {
                let _ = guest.disk_hotplug();
            }
        }
    }
    let sectors = guest.disk_sectors();
    let _ =
        writeln!(guest, "disktest: disk of {sectors} sectors, mode={}", if verify_only { "verify" } else { "write" });
    if sectors == 0 {
        let _ = writeln!(guest, "disktest: FAILED: no disk");
        idle(&mut guest);
    }
    let mut buffer = [0u8; CHUNK];
    let per_chunk = (CHUNK / SECTOR) as u64;
    let started = guest::now();
    if !verify_only {
        let mut sector = 0;
        while sector < sectors {
            let count = per_chunk.min(sectors - sector);
            let bytes = count as usize * SECTOR;
            for (index, chunk) in buffer[..bytes].chunks_exact_mut(SECTOR).enumerate() {
                fill(sector + index as u64, chunk);
            }
            if let Err(error) = guest.disk_write(sector, &buffer[..bytes]) {
                let _ = writeln!(guest, "disktest: FAILED: write at sector {sector}: {error:?}");
                idle(&mut guest);
            }
            sector += count;
        }
        if let Err(error) = guest.disk_flush() {
            let _ = writeln!(guest, "disktest: FAILED: flush: {error:?}");
            idle(&mut guest);
        }
    }
    let written = guest::now();
    let mut expected = [0u8; SECTOR];
    let mut sector = 0;
    while sector < sectors {
        let count = per_chunk.min(sectors - sector);
        let bytes = count as usize * SECTOR;
        if let Err(error) = guest.disk_read(sector, &mut buffer[..bytes]) {
            let _ = writeln!(guest, "disktest: FAILED: read at sector {sector}: {error:?}");
            idle(&mut guest);
        }
        for (index, chunk) in buffer[..bytes].chunks_exact(SECTOR).enumerate() {
            fill(sector + index as u64, &mut expected);
            if chunk != expected {
                let _ = writeln!(guest, "disktest: FAILED: sector {} differs", sector + index as u64);
                idle(&mut guest);
            }
        }
        sector += count;
    }
    let read = guest::now();
    let _ = writeln!(
        guest,
        "disktest: {} {sectors} sectors: all match (write {} tsc, read {} tsc)",
        if verify_only { "verified" } else { "wrote and verified" },
        written - started,
        read - written
    );
    idle(&mut guest)
}

/// Reads the whole disk twice and reports the TSC ticks of each pass (no
/// checking: the I/O path alone): once a 32 KiB request at a time, copied
/// out (queue depth 1), once eight one-page requests in flight, read in place.
fn bench(guest: &mut Guest) -> ! {
    let sectors = guest.disk_sectors();
    let mut buffer = [0u8; CHUNK];
    let per_chunk = (CHUNK / SECTOR) as u64;
    let started = guest::now();
    let mut sector = 0;
    while sector < sectors {
        let count = per_chunk.min(sectors - sector);
        if let Err(error) = guest.disk_read(sector, &mut buffer[..count as usize * SECTOR]) {
            let _ = writeln!(guest, "disktest: FAILED: read at sector {sector}: {error:?}");
            idle(guest);
        }
        sector += count;
    }
    let ticks = guest::now() - started;
    let _ = writeln!(guest, "disktest: read {sectors} sectors in {ticks} tsc (depth 1, copied)");
    let started = guest::now();
    let mut sector = 0;
    while sector < sectors {
        let count = per_chunk.min(sectors - sector);
        if let Err(error) = guest.disk_read_in_place(sector, count as usize * SECTOR) {
            let _ = writeln!(guest, "disktest: FAILED: read at sector {sector}: {error:?}");
            idle(guest);
        }
        sector += count;
    }
    let ticks = guest::now() - started;
    let _ = writeln!(guest, "disktest: read {sectors} sectors in {ticks} tsc (depth 1, in place)");
    // A warm-up pass first: dom0 maps each transfer page the first time it
    // sees it (persistent grants); the passes after it are the steady state.
    for (requests, pages_each, label) in
        [(8, 8, "warm-up"), (8, 1, "depth 8 x 4 KiB"), (4, 8, "depth 4 x 32 KiB"), (8, 8, "depth 8 x 32 KiB")]
    {
        let step = (requests * pages_each * 8) as u64;
        let started = guest::now();
        let mut sector = 0;
        while sector + step <= sectors {
            match guest.disk_read_ahead(sector, requests, pages_each) {
                Ok(good) if good == requests => {}
                other => {
                    let _ = writeln!(guest, "disktest: FAILED: read-ahead at sector {sector}: {other:?}");
                    idle(guest);
                }
            }
            sector += step;
        }
        let ticks = guest::now() - started;
        let _ = writeln!(guest, "disktest: read {sector} sectors in {ticks} tsc ({label}, in place)");
    }
    idle(guest)
}

/// Guest-physical memory this guest does not own.
const NOT_MINE: u64 = 0x3000_0000;

fn hostile(guest: &mut Guest) -> ! {
    // 0. A good read makes dom0 map our first transfer page (it keeps it
    //    mapped); revoking that grant now must be refused.
    let mut sector = [0u8; SECTOR];
    match guest.disk_read(0, &mut sector) {
        Ok(()) => match guest.revoke_transfer_page(0) {
            Err(abi::Error::Busy) => {
                let _ = writeln!(guest, "disktest: revoking a grant dom0 has mapped was refused (busy)");
            }
            other => {
                let _ = writeln!(guest, "disktest: FAILED: revoking a mapped grant gave {other:?}");
            }
        },
        Err(error) => {
            let _ = writeln!(guest, "disktest: FAILED: first read: {error:?}");
        }
    }
    // 1. Grant dom0 a frame that is not ours and ask it to read into it.
    let bad_grant = match guest.grant_to_dom0(NOT_MINE, false) {
        Ok(reference) => reference,
        Err(error) => {
            let _ = writeln!(guest, "disktest: FAILED: granting: {error:?}");
            idle(guest)
        }
    };
    let mut request = BlkifRequest { id: 99, operation: BlkifOp::Read.number(), nr_segments: 1, ..Default::default() };
    request.seg[0] = BlkifRequestSegment { gref: bad_grant, first_sect: 0, last_sect: 7, _pad0: 0 };
    match guest.disk_request(&request) {
        Ok(status) => {
            let _ = writeln!(guest, "disktest: a grant of a page I do not own was answered with status {status}");
        }
        Err(error) => {
            let _ = writeln!(guest, "disktest: FAILED: bad-grant request: {error:?}");
        }
    }
    // 2. Run the request producer index far past the ring and notify.
    if let Some(page) = guest.disk_ring_page() {
        // SAFETY: the ring page is our own memory; corrupting it is the point.
        unsafe {
            let producer = core::ptr::read_volatile(page as *const u32);
            core::ptr::write_volatile(page as *mut u32, producer.wrapping_add(1000));
        }
        guest.disk_notify();
        let _ = writeln!(guest, "disktest: corrupted my ring's producer index");
    }
    idle(guest)
}

/// Pages `mode=flood` grants dom0, one request each: its whole share of
/// dom0's foreign window and 96 more (the runtime's grant table holds
/// about 440), so the last 96 lie past any budget dom0 may keep mapped.
const FLOOD_PAGES: usize = abi::domctl::FOREIGN_SHARE_PAGES as usize + 96;

/// `mode=flood`: grants dom0 `FLOOD_PAGES` pages of its free RAM (the
/// start-info page's largest free region), writes the pattern over the
/// first `FLOOD_PAGES` pages of the disk with one single-page request per
/// grant, clears the pages, reads them back the same way and checks them.
/// Every request must succeed (dom0 maps what its budget allows and copies
/// the rest).
fn flood(guest: &mut Guest) -> ! {
    let sectors_per_page = (4096 / SECTOR) as u64;
    let free = guest.start_info.regions().iter().filter(|region| region.kind == MemoryKind::Free as u32).copied();
    let Some(region) = free.max_by_key(|region| region.size) else {
        let _ = writeln!(guest, "disktest: FAILED: flood: no free RAM");
        idle(guest)
    };
    let pages = FLOOD_PAGES.min((guest.disk_sectors() / sectors_per_page) as usize).min((region.size / 4096) as usize);
    let page_address = |page: usize| region.base + page as u64 * 4096;
    let mut grants = [0u32; FLOOD_PAGES];
    for (page, grant) in grants.iter_mut().enumerate().take(pages) {
        *grant = match guest.grant_to_dom0(page_address(page), false) {
            Ok(reference) => reference,
            Err(error) => {
                let _ = writeln!(guest, "disktest: FAILED: flood: granting page {page}: {error:?}");
                idle(guest)
            }
        };
    }
    let _ = writeln!(guest, "disktest: flood: {pages} pages granted to dom0");
    let mut id = 1 << 32;
    for (operation, label) in [(BlkifOp::Write, "write"), (BlkifOp::Read, "read")] {
        for (page, &grant) in grants.iter().enumerate().take(pages) {
            let first = page as u64 * sectors_per_page;
            prepare_page(page_address(page), first, 0, operation);
            id += 1;
            let mut request = BlkifRequest {
                id,
                operation: operation.number(),
                nr_segments: 1,
                sector_number: first,
                ..Default::default()
            };
            request.seg[0] = BlkifRequestSegment { gref: grant, first_sect: 0, last_sect: 7, _pad0: 0 };
            match guest.disk_request(&request) {
                Ok(status) if status == BlkifRsp::Okay.number() => {}
                other => {
                    let _ = writeln!(guest, "disktest: FAILED: flood: {label} of page {page}: {other:?}");
                    idle(guest)
                }
            }
        }
    }
    for page in 0..pages {
        if let Some(sector) = page_differs(page_address(page), page as u64 * sectors_per_page, 0) {
            let _ = writeln!(guest, "disktest: FAILED: flood: sector {sector} differs");
            idle(guest)
        }
    }
    let _ = writeln!(
        guest,
        "disktest: flood: {pages} distinct grants, wrote and verified {} sectors: all match",
        pages as u64 * sectors_per_page
    );
    mixed(guest, &grants[..pages], page_address);
    idle(guest)
}

/// Before a request on the page at `address` that holds sectors from
/// `first`: for a write, the pattern of those sectors (offset by `salt`);
/// for a read, zeros.
fn prepare_page(address: u64, first: u64, salt: u64, operation: BlkifOp) {
    let mut sector_bytes = [0u8; SECTOR];
    for index in 0..(4096 / SECTOR) as u64 {
        if operation == BlkifOp::Write {
            fill(first + index + salt, &mut sector_bytes);
        }
        // SAFETY: the page is free RAM of ours, reached only through raw
        // pointers; dom0 touches it only while serving a request we wait for.
        unsafe {
            core::ptr::copy_nonoverlapping(sector_bytes.as_ptr(), (address + index * SECTOR as u64) as *mut u8, SECTOR)
        };
    }
}

/// After the reads: the first sector of the page at `address` (sectors
/// from `first`) that does not hold its pattern (offset by `salt`).
fn page_differs(address: u64, first: u64, salt: u64) -> Option<u64> {
    let (mut expected, mut found) = ([0u8; SECTOR], [0u8; SECTOR]);
    (0..(4096 / SECTOR) as u64).map(|index| first + index).find(|&sector| {
        fill(sector + salt, &mut expected);
        // SAFETY: as in `prepare_page`; dom0 has answered every request.
        unsafe {
            core::ptr::copy_nonoverlapping(
                (address + (sector - first) * SECTOR as u64) as *const u8,
                found.as_mut_ptr(),
                SECTOR,
            )
        };
        found != expected
    })
}

/// Requests `mixed` makes, of [`MIXED_SEGMENTS`] pages each.
const MIXED_REQUESTS: usize = 16;
const MIXED_SEGMENTS: usize = 8;

/// After `flood`: requests of several pages, half of them pages dom0 keeps
/// mapped and half pages past its budget, which dom0 serves with one disk
/// command through its bounce buffer. Writes a pattern unlike the flood's
/// over the same sectors, clears the pages, reads it back and checks it.
fn mixed(guest: &mut Guest, grants: &[u32], page_address: impl Fn(usize) -> u64) {
    let sectors_per_page = (4096 / SECTOR) as u64;
    if grants.len() < FLOOD_PAGES {
        let _ = writeln!(guest, "disktest: FAILED: flood: {} pages granted, too few for mixed requests", grants.len());
        idle(guest)
    }
    // Segment `j` of request `r`: in turn one of the first pages (dom0's
    // budget of mapped grants, which the flood's first requests filled,
    // holds at least 64) and one of the last (the flood granted more than
    // a guest's share of dom0's window, so these lie past any budget).
    let page = |r: usize, j: usize| {
        let pair = (r * MIXED_SEGMENTS + j) / 2;
        if j.is_multiple_of(2) { pair } else { grants.len() - 1 - pair }
    };
    let salt = 1 << 40; // a pattern unlike the flood's on the same sectors
    let mut id = 2 << 32;
    for (operation, label) in [(BlkifOp::Write, "write"), (BlkifOp::Read, "read")] {
        for r in 0..MIXED_REQUESTS {
            let first = (r * MIXED_SEGMENTS) as u64 * sectors_per_page;
            let mut request = BlkifRequest {
                id,
                operation: operation.number(),
                nr_segments: MIXED_SEGMENTS as u8,
                sector_number: first,
                ..Default::default()
            };
            id += 1;
            for j in 0..MIXED_SEGMENTS {
                prepare_page(page_address(page(r, j)), first + j as u64 * sectors_per_page, salt, operation);
                request.seg[j] =
                    BlkifRequestSegment { gref: grants[page(r, j)], first_sect: 0, last_sect: 7, _pad0: 0 };
            }
            match guest.disk_request(&request) {
                Ok(status) if status == BlkifRsp::Okay.number() => {}
                other => {
                    let _ = writeln!(guest, "disktest: FAILED: flood: mixed {label} {r}: {other:?}");
                    idle(guest)
                }
            }
        }
    }
    for r in 0..MIXED_REQUESTS {
        for j in 0..MIXED_SEGMENTS {
            let first = (r * MIXED_SEGMENTS + j) as u64 * sectors_per_page;
            if let Some(sector) = page_differs(page_address(page(r, j)), first, salt) {
                let _ = writeln!(guest, "disktest: FAILED: flood: mixed requests: sector {sector} differs");
                idle(guest)
            }
        }
    }
    let _ = writeln!(
        guest,
        "disktest: flood: {MIXED_REQUESTS} requests of mapped and copied pages, wrote and verified {} sectors: all match",
        (MIXED_REQUESTS * MIXED_SEGMENTS) as u64 * sectors_per_page
    );
}

/// Close/reconnect rounds of `mode=flap`.
const FLAP_ROUNDS: u64 = 50;

/// Writes the pattern over `count` sectors from `first` and reads them back.
fn write_and_check(guest: &mut Guest, first: u64, count: u64, buffer: &mut [u8; CHUNK]) -> Result<(), &'static str> {
    let bytes = count as usize * SECTOR;
    for (index, chunk) in buffer[..bytes].chunks_exact_mut(SECTOR).enumerate() {
        fill(first + index as u64, chunk);
    }
    guest.disk_write(first, &buffer[..bytes]).map_err(|_| "write failed")?;
    guest.disk_flush().map_err(|_| "flush failed")?;
    check(guest, first, count, buffer)
}

/// Reads `count` sectors from `first` and checks the pattern.
fn check(guest: &mut Guest, first: u64, count: u64, buffer: &mut [u8; CHUNK]) -> Result<(), &'static str> {
    let bytes = count as usize * SECTOR;
    buffer[..bytes].fill(0);
    guest.disk_read(first, &mut buffer[..bytes]).map_err(|_| "read failed")?;
    let mut expected = [0u8; SECTOR];
    for (index, chunk) in buffer[..bytes].chunks_exact(SECTOR).enumerate() {
        fill(first + index as u64, &mut expected);
        if chunk != expected {
            return Err("a sector differs");
        }
    }
    Ok(())
}

/// `mode=reconnect` (`rounds` = 1) and `mode=flap`: in each round writes
/// and checks a chunk of its own, closes the disk from the front end
/// (dom0 must answer Closed with every page unmapped: each grant revokes)
/// and connects again with a fresh ring and grants. Then reads back every
/// round's chunk over the last connection, and closes the disk for good.
fn reconnect(guest: &mut Guest, rounds: u64) -> ! {
    let per_chunk = (CHUNK / SECTOR) as u64;
    let chunks = guest.disk_sectors() / per_chunk;
    if chunks == 0 {
        let _ = writeln!(guest, "disktest: FAILED: reconnect: no disk");
        idle(guest)
    }
    let mut buffer = [0u8; CHUNK];
    let sector_of = |round: u64| (round % chunks) * per_chunk;
    for round in 0..rounds {
        if let Err(what) = write_and_check(guest, sector_of(round), per_chunk, &mut buffer) {
            let _ = writeln!(guest, "disktest: FAILED: reconnect: round {round}: {what}");
            idle(guest)
        }
        if let Err(error) = guest.disk_close() {
            let _ = writeln!(guest, "disktest: FAILED: reconnect: round {round}: close: {error:?}");
            idle(guest)
        }
        if rounds == 1 {
            let _ = writeln!(guest, "disktest: reconnect: closed, dom0 let go of every page");
            // An offer dom0 cannot use (a grant reference past the table):
            // refused with Closed, after which a good one must still work.
            if let Err(what) = bad_offer(guest) {
                let _ = writeln!(guest, "disktest: FAILED: reconnect: bad offer: {what}");
                idle(guest)
            }
            let _ = writeln!(guest, "disktest: reconnect: a bad offer was refused (Closed)");
        }
        if !guest.disk_reconnect() {
            let _ = writeln!(guest, "disktest: FAILED: reconnect: round {round}: the back end did not reconnect");
            idle(guest)
        }
    }
    for round in 0..rounds.min(chunks) {
        if let Err(what) = check(guest, sector_of(round), per_chunk, &mut buffer) {
            let _ = writeln!(guest, "disktest: FAILED: reconnect: reading round {round} back: {what}");
            idle(guest)
        }
    }
    if let Err(error) = guest.disk_close() {
        let _ = writeln!(guest, "disktest: FAILED: reconnect: last close: {error:?}");
        idle(guest)
    }
    let _ = writeln!(guest, "disktest: reconnect: {rounds} rounds of close and reconnect: all match, disk closed");
    idle(guest)
}

/// Offers dom0 a ring it cannot map (after Initialising and InitWait) and
/// expects Closed; then says Closed itself.
fn bad_offer(guest: &mut Guest) -> Result<(), &'static str> {
    use abi::xen::io::xenbus::XenbusState;
    use pv_drivers::guest::device_key;
    let state = device_key("vbd", "state");
    guest.store_write(&state, XenbusState::Initialising.format()).map_err(|_| "store write")?;
    if !guest.wait_backend_state("vbd", XenbusState::InitWait) {
        return Err("the back end did not go back to InitWait");
    }
    let past_the_table = abi::grant::ENTRIES as u64 + 7;
    let mut number = arrayvec::ArrayString::<16>::new();
    let _ = write!(number, "{past_the_table}");
    guest.store_write(&device_key("vbd", "ring-ref"), &number).map_err(|_| "store write")?;
    guest.store_write(&device_key("vbd", "event-channel"), "1").map_err(|_| "store write")?;
    guest.store_write(&state, XenbusState::Initialised.format()).map_err(|_| "store write")?;
    if !guest.wait_backend_state("vbd", XenbusState::Closed) {
        return Err("the back end did not refuse it");
    }
    guest.store_write(&state, XenbusState::Closed.format()).map_err(|_| "store write")?;
    Ok(())
}

/// Waits for good, letting go of the disk when dom0 takes it away.
fn idle(guest: &mut Guest) -> ! {
    loop {
        guest.wait_for_event();
        if guest.take_watch_events() > 0 && guest.disk_hotplug() == Some(guest::DeviceChange::Disconnected) {
            let _ = writeln!(guest, "disktest: disk 0 disconnected by dom0");
        }
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    guest::crash(format_args!("disktest: panic: {info}\n"))
}
