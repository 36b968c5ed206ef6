//! Example guest for grant mappings between guests and the TLB shootdown
//! behind an unmap, through Xen's `grant_table_op` (`GNTTABOP_map_grant_ref`
//! and `GNTTABOP_unmap_grant_ref`, one entry each; the table itself is
//! placed with `memory_op` add_to_physmap). Two modes (`mode=` on the
//! command line), used as a pair: the granter first, the mapper right
//! after it (the mapper is the granter's id + 1; see the `grantgive` and
//! `grantread` configs of the tests).
//!
//! `mode=granter` fills a page with the old pattern ([`OLD`]), grants it
//! to the next domain (reference 1, its table's first grant) and prints
//! `grantmap: granted page to d<N> as reference 1`. Once the mapper has
//! mapped it (hv sets `GTF_reading` in the entry) it tries to revoke the grant
//! in a tight loop, which hv refuses while the page is mapped; the moment
//! it succeeds it writes the new pattern ([`NEW`]) into
//! the page, as the page's next owner would, and prints
//! `grantmap: revoked; the page holds new data`.
//!
//! `mode=holder` maps that grant, prints `grantmap: holding d<N> reference
//! 1 at 0x30000000` and reads the page for good (yielding between reads):
//! for the tests of a granter or grantee destroyed while it is mapped.
//!
//! `mode=keeper` grants the page and never revokes; `mode=storm` (2 vCPUs,
//! after a keeper) maps and unmaps it in a loop while its vCPU 1 spins, so
//! that every unmap shoots down another CPU, and prints `grantmap: storm
//! <n> rounds` every 1,000 rounds: the hostile test of shootdowns.
//!
//! `mode=mapper` (2 vCPUs) maps that grant at [`MAP_ADDRESS`], checks it
//! reads the old pattern, waits half a second (so that the machine is
//! quiet and the granter spins) and starts vCPU 1, which reads the page in
//! a tight loop and counts its reads. Once vCPU 1 has read it a thousand
//! times, vCPU 0 unmaps it (vCPU 1 runs on another CPU when the machine
//! has enough) and prints `grantmap: unmapped after <n> reads by vcpu 1`.
//! hv clears `GTF_reading` only after every CPU has dropped its translation,
//! so from then on vCPU 1 must fault at its next read (an EPT violation:
//! hv crashes the domain). Were its CPU to keep a stale translation, vCPU
//! 1 would read the granter's new data (the granter writes it a few
//! instructions after `GTF_reading` clears), or read anything after vCPU 0 saw
//! the unmap return; it then stops the domain (a crash report, not a
//! fault) with `grantmap: vcpu 1 read <hex> before|after the unmap
//! returned` in hv's log.
#![no_std]
#![no_main]

use core::fmt::Write;
use core::sync::atomic::{AtomicU64, Ordering};

use abi::xen::Errno;
use abi::xen::grant_table::{
    GNTMAP_HOST_MAP, GNTMAP_READONLY, GTF_READING, GTF_WRITING, GnttabMapGrantRef, GnttabOp, GnttabUnmapGrantRef,
    GrantStatus,
};
use pv_drivers::grant::GrantTable;
use pv_drivers::guest::{self, Guest};
use pv_drivers::xen::yield_now;

/// What the granted page holds while it is granted.
const OLD: u64 = 0x6f6c_645f_6461_7461; // "old_data"
/// What the granter writes once the grant is revoked.
const NEW: u64 = 0x6e65_775f_6461_7461; // "new_data"
/// Where the mapper maps the grant: above its RAM, inside the first GiB
/// its initial page tables identity-map.
const MAP_ADDRESS: u64 = 0x3000_0000;
/// The reference of the granter's first grant.
const REFERENCE: u32 = 1;
/// Reads by vCPU 1 before vCPU 0 unmaps.
const READS_BEFORE_UNMAP: u64 = 1000;

#[repr(C, align(4096))]
struct Page([u8; 4096]);

/// The granter's grant table and the page it grants (touched through raw
/// pointers only: hv and the mapper share them).
static mut TABLE: Page = Page([0; 4096]);
static mut SHARED: Page = Page([0; 4096]);

/// vCPU 1's reads of the mapped page, and whether the unmap has returned.
static READS: AtomicU64 = AtomicU64::new(0);
static UNMAPPED: AtomicU64 = AtomicU64::new(0);

#[repr(C, align(16))]
struct Stack([u8; 16 * 1024]);
static mut READER_STACK: Stack = Stack([0; 16 * 1024]);

/// Why a grant map or unmap failed: the call itself (its errno) or the
/// entry (its `GNTST_*` status).
#[derive(Debug)]
enum Refused {
    Call(Errno),
    Status(i16),
}

impl core::fmt::Display for Refused {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match *self {
            Refused::Call(errno) => write!(f, "{}", errno.name()),
            Refused::Status(status) => match GrantStatus::from_number(status) {
                Some(status) => write!(f, "{}", status.describe()),
                None => write!(f, "status {status}"),
            },
        }
    }
}

/// Makes `grant_table_op` `operation` on the one entry `entry`; its
/// status (written back by hv) if the call went through.
fn grant_table_op<T: zerocopy::IntoBytes + zerocopy::FromBytes>(
    operation: GnttabOp,
    entry: &mut T,
    status: impl Fn(&T) -> i16,
) -> Result<(), Refused> {
    let arguments = [u64::from(operation.number()), entry as *mut T as u64, 1, 0, 0];
    // SAFETY: hv reads and writes `entry`, which is ours for the call; a
    // map only maps the granted page at an address that is not our RAM.
    let result = unsafe { pv_drivers::hypercall::raw(abi::xen::Hypercall::GrantTableOp.number(), arguments) };
    Errno::decode(result).map_err(Refused::Call)?;
    match status(entry) {
        0 => Ok(()),
        failed => Err(Refused::Status(failed)),
    }
}

/// Maps grant `REFERENCE` of `granter` read-only at [`MAP_ADDRESS`];
/// returns the mapping's handle.
fn grant_map(granter: u32) -> Result<u32, Refused> {
    let mut entry = GnttabMapGrantRef {
        host_addr: MAP_ADDRESS,
        flags: GNTMAP_HOST_MAP | GNTMAP_READONLY,
        r#ref: REFERENCE,
        dom: granter as u16,
        ..Default::default()
    };
    grant_table_op(GnttabOp::MapGrantRef, &mut entry, |entry| entry.status).map(|()| entry.handle)
}

/// Unmaps the mapping `handle` at [`MAP_ADDRESS`]: on return no CPU
/// reaches the page through it.
fn grant_unmap(handle: u32) -> Result<(), Refused> {
    let mut entry = GnttabUnmapGrantRef { host_addr: MAP_ADDRESS, handle, ..Default::default() };
    grant_table_op(GnttabOp::UnmapGrantRef, &mut entry, |entry| entry.status)
}

#[unsafe(no_mangle)]
extern "C" fn _start(start_info: u64) -> ! {
    let mut guest = Guest::init(start_info);
    let mode = guest.cmdline().split_whitespace().find_map(|word| word.strip_prefix("mode=")).unwrap_or("");
    match mode {
        "granter" => granter(&mut guest),
        "mapper" => mapper(&mut guest),
        "holder" => holder(&mut guest),
        "keeper" => keeper(&mut guest),
        "storm" => storm(&mut guest),
        _ => {
            let _ = writeln!(guest, "grantmap: mode=granter, keeper, mapper, holder or storm, please");
            idle(&mut guest)
        }
    }
}

/// Grants the shared page (old pattern) to the next domain as reference
/// 1; returns the table.
fn grant_page(guest: &mut Guest) -> GrantTable {
    let mapper = guest.domain_id() + 1;
    let shared = &raw mut SHARED as u64;
    // SAFETY: the page is ours and nobody maps it yet.
    unsafe { core::ptr::write_volatile(shared as *mut u64, OLD) };
    // SAFETY: TABLE is dedicated to the grant table for good.
    let table = unsafe { GrantTable::new(&raw mut TABLE as u64) };
    let mut table = match table {
        Ok(table) => table,
        Err(error) => guest::crash(format_args!("grantmap: grant table: {}\n", error.describe())),
    };
    match table.grant(mapper, shared, true) {
        Ok(REFERENCE) => {
            let _ = writeln!(guest, "grantmap: granted page to d{mapper} as reference {REFERENCE}");
        }
        other => guest::crash(format_args!("grantmap: grant gave {other:?}\n")),
    }
    table
}

fn granter(guest: &mut Guest) -> ! {
    let mut table = grant_page(guest);
    let shared = &raw mut SHARED as u64;
    // Once the mapper has mapped the page (hv sets GTF_reading in the
    // entry), revoke as soon as hv lets us (it refuses while the page is
    // mapped), then reuse the page at once.
    let entry = &raw mut TABLE as u64 + u64::from(REFERENCE) * 8;
    // SAFETY: an aligned entry of our table page, read with one load.
    while unsafe { core::ptr::read_volatile(entry as *const u16) } & (GTF_READING | GTF_WRITING) == 0 {
        yield_now();
    }
    // No yield here: on a CPU of its own, the granter reuses the page
    // within a few instructions of hv clearing GTF_reading.
    while table.end_access(REFERENCE).is_err() {
        core::hint::spin_loop();
    }
    // SAFETY: the grant is revoked: the page is ours alone again.
    unsafe { core::ptr::write_volatile(shared as *mut u64, NEW) };
    let _ = writeln!(guest, "grantmap: revoked; the page holds new data");
    idle(guest)
}

/// `mode=keeper`: grants the page and keeps the grant for good.
fn keeper(guest: &mut Guest) -> ! {
    let _table = grant_page(guest);
    idle(guest)
}

/// `mode=storm` (2 vCPUs): vCPU 1 spins, so every unmap needs a shootdown;
/// vCPU 0 maps and unmaps the keeper's grant as fast as it can, and prints
/// `grantmap: storm <n> rounds` after every 1,000 rounds.
fn storm(guest: &mut Guest) -> ! {
    let (granter, mut handle) = map_granted(guest);
    let stack_top = &raw mut READER_STACK as u64 + core::mem::size_of::<Stack>() as u64;
    if guest.vcpu_count() > 1 {
        // SAFETY: the stack is vCPU 1's alone; `spinner` touches nothing.
        let started = unsafe { guest.start_vcpu(1, spinner, stack_top, 0) };
        if let Err(error) = started {
            guest::crash(format_args!("grantmap: vcpu 1: {}\n", error.describe()));
        }
    }
    let mut rounds = 0u64;
    loop {
        if let Err(refused) = grant_unmap(handle) {
            guest::crash(format_args!("grantmap: storm unmap: {refused}\n"));
        }
        handle = match grant_map(granter) {
            Ok(handle) => handle,
            Err(refused) => guest::crash(format_args!("grantmap: storm map: {refused}\n")),
        };
        rounds += 1;
        if rounds.is_multiple_of(1000) {
            let _ = writeln!(guest, "grantmap: storm {rounds} rounds");
        }
    }
}

/// vCPU 1 of the storm: spins (it runs on a CPU, so the domain's EPT is
/// cached there).
extern "C" fn spinner(_: u64) -> ! {
    loop {
        core::hint::spin_loop();
    }
}

/// Maps the granter's (the previous domain's) page at [`MAP_ADDRESS`];
/// returns its id and the mapping's handle.
fn map_granted(guest: &mut Guest) -> (u32, u32) {
    let granter = guest.domain_id() - 1;
    // The granter was created first, but may not have granted yet: try
    // for a second.
    let give_up = guest::now() + guest.ticks_per_second();
    loop {
        match grant_map(granter) {
            Ok(handle) => return (granter, handle),
            Err(refused) if guest::now() > give_up => {
                guest::crash(format_args!("grantmap: map of d{granter} reference {REFERENCE}: {refused}\n"))
            }
            Err(_) => yield_now(),
        }
    }
}

/// `mode=holder`: maps the page and reads it for good, on one vCPU, until
/// the mapping goes (its granter destroyed: the next read faults) or the
/// domain is destroyed (hv releases the grant, and the granter revokes).
fn holder(guest: &mut Guest) -> ! {
    let (granter, _) = map_granted(guest);
    let _ = writeln!(guest, "grantmap: holding d{granter} reference {REFERENCE} at {MAP_ADDRESS:#x}");
    loop {
        // SAFETY: the granted page while it is mapped; once its granter is
        // destroyed the read faults, which is what the holder is for.
        let value = unsafe { core::ptr::read_volatile(MAP_ADDRESS as *const u64) };
        if value != OLD {
            guest::crash(format_args!("grantmap: holder read {value:#x}\n"));
        }
        yield_now();
    }
}

fn mapper(guest: &mut Guest) -> ! {
    let (granter, handle) = map_granted(guest);
    // SAFETY: hv mapped the granted page here, read-only; read it by address.
    let first = unsafe { core::ptr::read_volatile(MAP_ADDRESS as *const u64) };
    let _ = writeln!(guest, "grantmap: mapped d{granter} reference {REFERENCE} at {MAP_ADDRESS:#x}; reads {first:#x}");
    if first != OLD {
        guest::crash(format_args!("grantmap: the mapped page reads {first:#x}\n"));
    }
    // Let the machine settle first (dom0 done with the create, the granter
    // spinning on its revocation), so the three run side by side.
    let settle = guest::now() + guest.ticks_per_second() / 2;
    guest.sleep_until(settle);
    let stack_top = &raw mut READER_STACK as u64 + core::mem::size_of::<Stack>() as u64;
    // SAFETY: the stack is vCPU 1's alone; `reader` touches only atomics
    // and the mapped page.
    if let Err(error) = unsafe { guest.start_vcpu(1, reader, stack_top, 0) } {
        guest::crash(format_args!("grantmap: vcpu 1: {}\n", error.describe()));
    }
    while READS.load(Ordering::Relaxed) < READS_BEFORE_UNMAP {
        core::hint::spin_loop();
    }
    if let Err(refused) = grant_unmap(handle) {
        guest::crash(format_args!("grantmap: unmap: {refused}\n"));
    }
    UNMAPPED.store(1, Ordering::SeqCst);
    let reads = READS.load(Ordering::Relaxed);
    let _ = writeln!(guest, "grantmap: unmapped after {reads} reads by vcpu 1");
    idle(guest)
}

/// vCPU 1: reads the mapped page until it faults. A read that completes
/// once vCPU 0 has seen its unmap return (it looks at the flag first, and
/// x86 keeps loads in order) went through a stale translation, whatever
/// it read; so does one that reads anything but the old pattern.
extern "C" fn reader(_: u64) -> ! {
    loop {
        let after = UNMAPPED.load(Ordering::SeqCst) != 0;
        // SAFETY: the granted page while it is mapped; after the unmap the
        // read must fault (that is what this guest checks).
        let value = unsafe { core::ptr::read_volatile(MAP_ADDRESS as *const u64) };
        READS.fetch_add(1, Ordering::Relaxed);
        if after || value != OLD {
            let when = if after { "after" } else { "before" };
            guest::crash(format_args!("grantmap: vcpu 1 read {value:#x} {when} the unmap returned\n"));
        }
    }
}

/// Sleeps for good, a second at a time, taking the events that come (a
/// bare `Block` loop would spin: a console port stays pending).
fn idle(guest: &mut Guest) -> ! {
    loop {
        let next = guest::now() + guest.ticks_per_second();
        guest.sleep_until(next);
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    guest::crash(format_args!("grantmap: panic: {info}\n"))
}
