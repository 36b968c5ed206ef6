//! Hostile-guest suite: hypercall fuzzing. `hostile` checks a fixed list
//! and dom0's `selftest` checks dom0's view; this guest issues hypercalls
//! at scale as an unprivileged domain, in both of the number spaces a
//! guest can reach: Xen's (below 64, the interface guests use) and Mica's
//! own (from 0x1000), half of the calls each. For every number in either
//! table and numbers past it, every sub-operation and some past the last,
//! it passes arguments mixing random words, boundary values, and pointers
//! into its own scratch memory, just outside it, into memory it does not
//! have and into its start-info page; Xen's calls get junk structures in
//! the scratch area (see `xen_call` for the calls left out).
//!
//! cmdline: `count=N` (random calls, default 100000), `seed=S`,
//! `mode=structured|random|both` (default both: structured first).
//!
//! Structured mode checks the documented answer of known-bad (and a few
//! good) inputs, Xen's calls first (each its errno, `xen_structured`),
//! then Mica's (`mica_structured`). Random mode checks what must hold
//! whatever the arguments: a Xen call answers a value or one of Xen's
//! errnos, a number or sub-operation hv does not offer `-ENOSYS`, a guest
//! naming another domain's parameters or ports `-EPERM`, the console read
//! and the memory map setter `-EPERM`, and no grant map or copy succeeds
//! (nobody grants this guest anything), and a number outside both ranges
//! `-ENOSYS`; a Mica call answers an unknown number of its range with
//! `NoSuchHypercall`, a dom0-only call with `Permission`, every
//! error is one the ABI defines, a buffer over its limit is refused; in
//! both, memory around the scratch area is never written and no event
//! port leaks. A wrong result is printed as `FAILED`. Calls that would end
//! this guest on purpose (a shutdown with a valid reason) are skipped and
//! counted; calls that would take its event page, grant table or bound
//! ports away are put right at once (re-registered) or skipped.
//!
//! Output: `hcfuzz: structured: xen: <n> checks, <k> as documented` and
//! `hcfuzz: structured: mica: ...` (one `FAILED` line per wrong one), then
//! `hcfuzz: structured: <n> checks, <k> as documented`; progress every
//! tenth of the calls, then `hcfuzz: <N> calls, <k> ok, <m> errors
//! (...), <s> skipped, ...`, `hcfuzz: xen: <N> calls, <k> ok, <m> errors;
//! mica: <N> calls, <k> ok, <m> errors`, and `hcfuzz: <f> FAILED, done`.
#![no_std]
#![no_main]

use core::fmt::Write;

use abi::Error;
use abi::Hypercall as H;
use abi::event::{EventOp as E, PORT_COUNT, PortState, PortStatus};
use abi::grant::GrantOp as G;
use abi::hypercall::{CONSOLE_WRITE_MAX, HYPERCALL_COUNT, MICA_HYPERCALL_BASE, SchedOp, VcpuOp};
use abi::info::{DOMAIN_INFO_MIN_SIZE, HV_INFO_MIN_SIZE, HvInfo};
use abi::xen::Errno;
use core::mem::size_of;
use pv_drivers::guest::{self, Guest, UPCALL_VECTOR};
use pv_drivers::hypercall;

const PAGE: u64 = abi::PAGE_SIZE;
/// Guest-physical memory no guest is given (mapped by the initial page
/// tables, backed by nothing in EPT).
const NOT_MINE: u64 = 0x3000_0000;
/// Pages of the scratch area: a guard page, `SCRATCH_PAGES - 2` pages hv may
/// write, a guard page.
const SCRATCH_PAGES: usize = 10;
const GUARD_BYTE: u8 = 0xa5;
/// Pointers handed to calls that write go this far into the writable part
/// at most, so the longest write (a page) stays inside it.
const WRITE_WINDOW: u64 = 4 * PAGE;

#[repr(C, align(4096))]
struct Scratch([[u8; 4096]; SCRATCH_PAGES]);
static mut SCRATCH: Scratch = Scratch([[0; 4096]; SCRATCH_PAGES]);

/// Harmless text for the console writes that succeed.
static TEXT: [u8; 16] = *b"hcfuzz.hcfuzz.hc";

/// xorshift64 (the workspace's generator, see hv/src/test_random.rs).
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, limit: u64) -> u64 {
        self.next() % limit
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

/// Values at the edges of every argument's range.
const BOUNDARY: [u64; 20] = [
    0,
    1,
    2,
    PAGE - 1,
    PAGE,
    PAGE + 1,
    255,
    256,
    65535,
    1 << 15,
    u32::MAX as u64,
    1 << 32,
    (1 << 47) - 1,
    1 << 47,
    1 << 63,
    (1 << 63) + PAGE,
    u64::MAX - PAGE,
    u64::MAX - 1,
    u64::MAX,
    (1 << 44) | 7,
];

/// Fixed facts about this guest the generator and the checks use.
struct Layout {
    me: u64,
    start_info: u64,
    /// First address past this guest's RAM.
    ram_end: u64,
    scratch: u64,
    event_page: u64,
    grant_table: u64,
    /// Ports bound before fuzzing (console, timer, store): never closed or masked.
    protected: [bool; PORT_COUNT],
}

impl Layout {
    fn writable(&self) -> u64 {
        self.scratch + PAGE
    }
}

/// Results by outcome.
struct Tally {
    calls: u64,
    ok: u64,
    /// Mica's calls' errors, by `Error::ALL`.
    errors: [u64; Error::ALL.len()],
    /// Xen's calls made, and their errors by `Errno::ALL`.
    xen_calls: u64,
    xen_ok: u64,
    xen_errors: [u64; Errno::ALL.len()],
    skipped: u64,
    failed: u64,
    /// Event pages or grant tables registered elsewhere and put back.
    restored: u64,
}

impl Default for Tally {
    fn default() -> Tally {
        Tally {
            calls: 0,
            ok: 0,
            errors: [0; Error::ALL.len()],
            xen_calls: 0,
            xen_ok: 0,
            xen_errors: [0; Errno::ALL.len()],
            skipped: 0,
            failed: 0,
            restored: 0,
        }
    }
}

impl Tally {
    fn count(&mut self, number: u64, result: i64) {
        self.calls += 1;
        if is_xen(number) {
            self.xen_calls += 1;
            match Errno::decode(result) {
                Ok(_) => {
                    self.ok += 1;
                    self.xen_ok += 1;
                }
                Err(errno) => {
                    if let Some(index) = Errno::ALL.iter().position(|known| *known == errno) {
                        self.xen_errors[index] += 1;
                    }
                }
            }
            return;
        }
        match Error::ALL.iter().position(|error| error.code() == result) {
            Some(index) => self.errors[index] += 1,
            None => self.ok += 1,
        }
    }
}

/// Whether `number` is one of Xen's (answered in Xen's terms).
fn is_xen(number: u64) -> bool {
    !abi::xen::hypercall::is_mica_number(number)
}

/// Which kind of address a pointer argument gets. Calls that write get
/// only the scratch area, the start-info page or memory this guest does not
/// have (a boundary value inside its RAM becomes `NOT_MINE`).
fn pointer(random: &mut Random, layout: &Layout, writes: bool) -> u64 {
    let address = any_pointer(random, layout, writes);
    let ours = address < layout.ram_end;
    let allowed = (layout.writable()..layout.writable() + WRITE_WINDOW).contains(&address)
        || address & !(PAGE - 1) == layout.start_info;
    if writes && ours && !allowed { NOT_MINE } else { address }
}

fn any_pointer(random: &mut Random, layout: &Layout, writes: bool) -> u64 {
    match random.below(10) {
        // Inside the scratch area (any alignment).
        0..=3 => layout.writable() + random.below(WRITE_WINDOW),
        4 => layout.writable() + random.below(4) * PAGE,
        // The start-info page (writes land in the page: the runtime keeps a copy).
        5 => layout.start_info,
        // Memory this guest does not have: just past its RAM, far away.
        6 => layout.ram_end + random.below(3) * PAGE + random.below(8),
        7 => NOT_MINE + random.below(1 << 20),
        // Reads may also start inside and run off the end of RAM.
        8 if !writes => layout.ram_end - random.below(2 * PAGE),
        _ => BOUNDARY[random.below(BOUNDARY.len() as u64) as usize],
    }
}

/// A length argument: mostly around the limits.
fn length(random: &mut Random) -> u64 {
    match random.below(6) {
        0 => random.below(CONSOLE_WRITE_MAX + 2),
        1 => CONSOLE_WRITE_MAX + random.below(3) - 1,
        2 => random.below(128),
        3 => random.next(),
        _ => BOUNDARY[random.below(BOUNDARY.len() as u64) as usize],
    }
}

/// A plain word: random, boundary, or small.
fn word(random: &mut Random) -> u64 {
    match random.below(4) {
        0 => random.next(),
        1 => random.below(300),
        _ => BOUNDARY[random.below(BOUNDARY.len() as u64) as usize],
    }
}

/// An operation argument: valid ones most of the time, then just past the
/// last and random words.
fn operation(random: &mut Random, count: u64) -> u64 {
    match random.below(8) {
        0 => count + random.below(3),
        1 => word(random),
        _ => random.below(count),
    }
}

/// A port: ours (bound or free), just past the table, or anything.
fn port(random: &mut Random) -> u64 {
    match random.below(6) {
        0 => PORT_COUNT as u64 + random.below(2),
        1 => word(random),
        _ => random.below(PORT_COUNT as u64),
    }
}

/// A domain id: ours, dom0, the ones after ours (victims), absent, huge.
fn domain(random: &mut Random, layout: &Layout) -> u64 {
    match random.below(6) {
        0 => layout.me,
        1 => 0,
        2 => layout.me.saturating_sub(3) + random.below(6),
        3 => 32767 + random.below(2),
        _ => word(random),
    }
}

/// One random call: its number and arguments, with the calls that would
/// end this guest taken out (`None`).
fn generate(random: &mut Random, layout: &Layout) -> Option<(u64, [u64; 5])> {
    let number = if random.chance(12) {
        match random.below(4) {
            0 => MICA_HYPERCALL_BASE + HYPERCALL_COUNT as u64 + random.below(4),
            1 => word(random),
            _ => random.next() | (1 << 63),
        }
    } else {
        MICA_HYPERCALL_BASE + random.below(HYPERCALL_COUNT as u64)
    };
    // Xen's numbers (below 64): a call of their own kind, half the time.
    // Numbers outside both ranges keep their junk arguments (Xen's -ENOSYS).
    if number < abi::xen::hypercall::XEN_HYPERCALL_LIMIT || random.chance(2) {
        return xen_call(random, layout);
    }
    let mut arguments = [word(random), word(random), word(random), word(random), word(random)];
    match H::from_number(number) {
        Some(H::ConsoleWrite) => {
            // Succeeding writes print only TEXT, and only a few of them.
            if random.chance(40) {
                arguments[0] = TEXT.as_ptr() as u64;
                arguments[1] = random.below(TEXT.len() as u64 + 1);
            } else {
                arguments[0] = pointer(random, layout, false);
                arguments[1] = length(random);
                // Nothing of our memory is printed: a write that would
                // succeed is cut to nothing (one running off the end stays).
                let inside = arguments[0].checked_add(arguments[1]).is_some_and(|end| end <= layout.ram_end);
                if inside && arguments[1] <= CONSOLE_WRITE_MAX {
                    arguments[1] = 0;
                }
            }
        }
        Some(H::HvInfo) => {
            arguments[0] = pointer(random, layout, true);
            arguments[1] = length(random);
        }
        Some(H::DomainInfo) => {
            arguments[0] = domain(random, layout);
            arguments[1] = pointer(random, layout, true);
            arguments[2] = if random.chance(2) { DOMAIN_INFO_MIN_SIZE + random.below(3) - 1 } else { length(random) };
        }
        Some(H::Sched) => {
            arguments[0] = operation(random, 3);
            if arguments[0] == SchedOp::Shutdown as u64 && arguments[1] <= 2 {
                return None;
            }
            if arguments[0] == SchedOp::Block as u64 {
                // Never block for long: a timer wakes us.
                let _ = hypercall::set_timer(guest::now() + 10_000);
            }
        }
        Some(H::Vcpu) => {
            // SetTimer, Up, Down, Id: this guest has one vCPU, so Up and
            // Down only ever get their documented refusals.
            arguments[0] = operation(random, 4);
            if arguments[0] != VcpuOp::SetTimer as u64 {
                arguments[1] = random.below(10);
                arguments[2] = pointer(random, layout, true);
            }
            if random.chance(2) {
                arguments[1] = guest::now().wrapping_add(random.below(1 << 24));
            }
        }
        Some(H::Event) => {
            arguments[0] = operation(random, 12);
            match E::from_number(arguments[0]) {
                Some(E::RegisterPage) => {
                    arguments[1] =
                        (pointer(random, layout, true) & !(PAGE - 1)) | (random.below(2) * random.below(PAGE));
                    arguments[2] = if random.chance(2) { random.below(40) } else { word(random) };
                }
                Some(E::AllocUnbound) => arguments[1] = domain(random, layout),
                Some(E::BindInterdomain) => {
                    arguments[1] = domain(random, layout);
                    arguments[2] = port(random);
                }
                Some(E::BindVirq) => arguments[1] = random.below(4),
                Some(E::Close | E::Mask) => {
                    arguments[1] = port(random);
                    if layout.protected.get(arguments[1] as usize).copied().unwrap_or(false) {
                        return None;
                    }
                }
                Some(E::Send | E::Unmask | E::Status | E::BindPirq) => arguments[1] = port(random),
                Some(E::BindVcpu) => {
                    arguments[1] = port(random);
                    arguments[2] = random.below(10);
                }
                Some(E::BindIpi) => arguments[1] = random.below(10),
                None => {}
            }
        }
        Some(H::Grant) => {
            arguments[0] = operation(random, 4);
            match G::from_number(arguments[0]) {
                Some(G::SetupTable) => arguments[1] = pointer(random, layout, true) & !(PAGE - 1),
                Some(G::Copy) => {
                    arguments[1] = domain(random, layout);
                    arguments[2] = random.below(600) | if random.chance(2) { random.below(PAGE + 2) << 32 } else { 0 };
                    if random.chance(8) {
                        arguments[2] = word(random);
                    }
                    let to_grant = random.chance(2);
                    arguments[3] = pointer(random, layout, !to_grant);
                    arguments[4] = random.below(PAGE + 2) | if to_grant { abi::grant::COPY_TO_GRANT } else { 0 };
                }
                Some(G::Map) => arguments[1] = domain(random, layout),
                Some(G::Unmap) | None => {}
            }
        }
        // dom0-only calls (refused whatever the arguments) and the rest.
        Some(H::DomCtl) => arguments[0] = operation(random, 12),
        Some(H::Platform) => arguments[0] = operation(random, 2),
        Some(H::Physdev) => arguments[0] = operation(random, 3),
        Some(H::DmesgRead) => arguments[0] = pointer(random, layout, true),
        Some(H::Version | H::Null) | None => {}
    }
    Some((number, arguments))
}

/// A sub-operation `abi::xen` defines for Xen call `number` (hv offers
/// some of them), or a small number for a call without a table.
fn xen_operation(random: &mut Random, number: u64) -> u64 {
    use abi::xen::Hypercall as X;
    fn pick<T: Copy>(random: &mut Random, all: &[T], number: impl Fn(T) -> u32) -> u64 {
        u64::from(number(all[random.below(all.len() as u64) as usize]))
    }
    match X::from_number(number) {
        Some(X::XenVersion) => pick(random, abi::xen::version::XenVersionOp::ALL, |op| op.number()),
        Some(X::ConsoleIo) => pick(random, abi::xen::console_io::ConsoleIoOp::ALL, |op| op.number()),
        Some(X::SchedOp) => pick(random, abi::xen::sched::SchedOp::ALL, |op| op.number()),
        Some(X::MemoryOp) => pick(random, abi::xen::memory::MemoryOp::ALL, |op| op.number()),
        Some(X::HvmOp) => pick(random, abi::xen::hvm::HvmOp::ALL, |op| op.number()),
        Some(X::VcpuOp) => pick(random, abi::xen::vcpu::VcpuOp::ALL, |op| op.number()),
        Some(X::EventChannelOp) => pick(random, abi::xen::event_channel::EvtchnOp::ALL, |op| op.number()),
        Some(X::GrantTableOp) => pick(random, abi::xen::grant_table::GnttabOp::ALL, |op| op.number()),
        _ => random.below(16),
    }
}

/// One of Xen's calls (issue 10): the number of a call hv offers most of
/// the time (any below 64 otherwise), a sub-operation (one `abi::xen`
/// defines for that call most of the time), pointers as for Mica's calls
/// (writes only into the scratch area or memory this guest lacks), a vCPU
/// id of 0 to 2 half the time for `vcpu_op`, and junk structures at the
/// scratch area, small numbers first (ports, vCPUs, indices) half the
/// time. Taken out: what would end or stall this guest (shutdown, block,
/// poll, its only vCPU going down), move its events or inject into it
/// (shared info, the callback vector, vcpu_info), change its timer, or
/// close a port (ports the fuzz binds are closed as Mica's are).
fn xen_call(random: &mut Random, layout: &Layout) -> Option<(u64, [u64; 5])> {
    use abi::xen::Hypercall as X;
    const OFFERED: [X; 8] =
        [X::XenVersion, X::ConsoleIo, X::SchedOp, X::MemoryOp, X::HvmOp, X::VcpuOp, X::EventChannelOp, X::GrantTableOp];
    let number = if random.chance(8) {
        random.below(abi::xen::hypercall::XEN_HYPERCALL_LIMIT)
    } else {
        OFFERED[random.below(OFFERED.len() as u64) as usize].number()
    };
    let operation = match random.below(8) {
        0 => word(random),
        1 => random.below(16),
        _ => xen_operation(random, number),
    };
    // hv reads the low 32 bits (`cmd` is an int), memory_op only the low 6.
    let cmd = operation as u32;
    let vcpu = random.below(3);
    let small_vcpu = number == X::VcpuOp.number() && random.chance(2);
    let excluded = match X::from_number(number) {
        Some(X::SchedOp) => (1..=3).contains(&cmd),
        Some(X::MemoryOp) => cmd & abi::xen::memory::MEMOP_CMD_MASK == 7,
        Some(X::HvmOp) => cmd == 0,
        // Timers, and placing vcpu_info: hv would write it over a page of
        // this guest's own the junk names (its code, its page tables).
        Some(X::VcpuOp) => (6..=10).contains(&cmd) || (small_vcpu && vcpu == 0 && cmd == 2),
        Some(X::EventChannelOp) => cmd == 3,
        // Its own timer, in a register.
        Some(X::SetTimerOp) => true,
        _ => false,
    };
    if excluded {
        return None;
    }
    let scratch = layout.writable();
    for word_index in 0..8u64 {
        let value = if word_index == 0 && random.chance(2) { random.below(8) } else { random.next() };
        // SAFETY: the scratch area is this guest's, for hv to read and write.
        unsafe { core::ptr::write_volatile((scratch + 8 * word_index) as *mut u64, value) };
    }
    let pointer_or_scratch = |random: &mut Random| {
        if random.chance(2) { scratch } else { pointer(random, layout, true) }
    };
    let (a2, a3) = (pointer_or_scratch(random), pointer_or_scratch(random));
    // vcpu_op's vCPU id comes second.
    let a2 = if small_vcpu { vcpu } else { a2 };
    // console_io's count and grant_table_op's count come second and third.
    let a2 = if number == X::ConsoleIo.number() { length(random) } else { a2 };
    let a3 = if number == X::GrantTableOp.number() && random.chance(2) { 1 } else { a3 };
    Some((number, [operation, a2, a3, word(random), word(random)]))
}

/// The port a Xen `event_channel_op` that succeeded bound, if it bound one
/// in the scratch area's structure.
fn xen_bound_port(number: u64, arguments: &[u64; 5], layout: &Layout) -> Option<u64> {
    use abi::xen::event_channel::EvtchnOp;
    if number != abi::xen::Hypercall::EventChannelOp.number() || arguments[1] != layout.writable() {
        return None;
    }
    let offset = match EvtchnOp::from_number(arguments[0] as u32)? {
        EvtchnOp::AllocUnbound | EvtchnOp::BindIpi => 4,
        EvtchnOp::BindInterdomain | EvtchnOp::BindVirq => 8,
        _ => return None,
    };
    // SAFETY: inside the scratch area, which hv just wrote.
    Some(u64::from(unsafe { core::ptr::read_volatile((layout.writable() + offset) as *const u32) }))
}

/// What must hold for this call whatever the arguments; `Err` names the breach.
fn check(number: u64, arguments: &[u64; 5], result: i64, layout: &Layout) -> Result<(), &'static str> {
    if is_xen(number) {
        return check_xen(number, arguments, result, layout);
    }
    if result < 0 && !Error::ALL.iter().any(|error| error.code() == result) {
        return Err("an error code the ABI does not define");
    }
    let is = |error: Error| result == error.code();
    let unmapped = |address: u64| (NOT_MINE..NOT_MINE + (1 << 21)).contains(&address);
    match H::from_number(number) {
        None if !is(Error::NoSuchHypercall) => Err("an unknown number must be NoSuchHypercall"),
        Some(H::DmesgRead | H::Platform | H::DomCtl | H::Physdev) if !is(Error::Permission) => {
            Err("a dom0-only call must be refused with Permission")
        }
        Some(H::Version) if result != abi::ABI_VERSION as i64 => Err("Version must return the ABI version"),
        Some(H::Null) if result != 0 => Err("Null must return 0"),
        Some(H::ConsoleWrite) if arguments[1] > CONSOLE_WRITE_MAX && !is(Error::InvalidArgument) => {
            Err("a console write over the limit must be InvalidArgument")
        }
        Some(H::ConsoleWrite) if result >= 0 && result as u64 != arguments[1] => {
            Err("a console write must return its length")
        }
        Some(H::HvInfo) if arguments[1] < HV_INFO_MIN_SIZE && !is(Error::BufferTooSmall) => {
            Err("a short HvInfo buffer must be BufferTooSmall")
        }
        Some(H::HvInfo) if arguments[1] >= HV_INFO_MIN_SIZE && unmapped(arguments[0]) && !is(Error::BadAddress) => {
            Err("HvInfo into memory not mine must be BadAddress")
        }
        Some(H::HvInfo) if result >= 0 && result as u64 != arguments[1].min(size_of::<HvInfo>() as u64) => {
            Err("HvInfo must return the bytes written")
        }
        Some(H::DomainInfo) if arguments[2] < DOMAIN_INFO_MIN_SIZE && !is(Error::BufferTooSmall) => {
            Err("a short DomainInfo buffer must be BufferTooSmall")
        }
        Some(H::DomainInfo)
            if arguments[2] >= DOMAIN_INFO_MIN_SIZE
                && arguments[0] <= u32::MAX as u64
                && arguments[0] != layout.me
                && !is(Error::Permission) =>
        {
            Err("another domain's DomainInfo must be Permission")
        }
        Some(H::Sched | H::Vcpu | H::Event | H::Grant) if sub_operation_unknown(number, arguments[0]) => {
            if is(Error::InvalidArgument) { Ok(()) } else { Err("an unknown sub-operation must be InvalidArgument") }
        }
        Some(H::Event) if arguments[0] == E::BindPirq as u64 && !is(Error::Permission) => {
            Err("BindPirq from a guest must be Permission")
        }
        // Nobody grants this guest anything, so no map can succeed.
        Some(H::Grant) if arguments[0] == G::Map as u64 && result >= 0 => {
            Err("a grant map succeeded though no domain granted me a page")
        }
        // Nobody grants this guest anything, so no copy can succeed.
        Some(H::Grant) if arguments[0] == G::Copy as u64 && result >= 0 => {
            Err("a grant copy succeeded though no domain granted me a page")
        }
        // Every port another domain left unbound for me is bound already
        // (console, store), so only my own unbound ports can be bound.
        Some(H::Event) if arguments[0] == E::BindInterdomain as u64 && arguments[1] != layout.me && result >= 0 => {
            Err("bound to another domain's port that was not offered to me")
        }
        _ => Ok(()),
    }
}

/// [`check`] for one of Xen's calls.
fn check_xen(number: u64, arguments: &[u64; 5], result: i64, layout: &Layout) -> Result<(), &'static str> {
    use abi::xen::Hypercall as X;
    use abi::xen::event_channel::EvtchnOp;
    use abi::xen::grant_table::GnttabOp;
    use abi::xen::hvm::HvmOp;
    use abi::xen::memory::{MEMOP_CMD_MASK, MemoryOp};
    let answer = Errno::decode(result);
    if matches!(answer, Err(Errno::Unknown(_))) {
        return Err("an errno Xen does not define");
    }
    let cmd = arguments[0] as u32;
    let scratch = arguments[1] == layout.writable();
    // The 16-bit domain id at the start of the scratch structure.
    let named = || {
        // SAFETY: inside the scratch area.
        let domid = unsafe { core::ptr::read_volatile(layout.writable() as *const u16) };
        u64::from(domid)
    };
    let other_domain = |domid: u64| domid != u64::from(abi::xen::DOMID_SELF) && domid != layout.me;
    let offered = |call: X| match call {
        X::XenVersion => abi::xen::version::XenVersionOp::from_number(cmd).is_some(),
        X::ConsoleIo => abi::xen::console_io::ConsoleIoOp::from_number(cmd).is_some(),
        X::SchedOp => abi::xen::sched::SchedOp::from_number(cmd).is_some(),
        X::MemoryOp => MemoryOp::from_number(cmd & MEMOP_CMD_MASK).is_some(),
        X::HvmOp => HvmOp::from_number(cmd).is_some(),
        X::EventChannelOp => EvtchnOp::from_number(cmd).is_some(),
        X::GrantTableOp => GnttabOp::from_number(cmd).is_some(),
        // Its vCPU id comes first (-ENOENT for one it lacks).
        X::VcpuOp => true,
        X::SetTimerOp => true,
        _ => false,
    };
    match X::from_number(number) {
        None if answer != Err(Errno::Enosys) => Err("a number Xen does not define must be ENOSYS"),
        Some(call) if !call.is_pvh() && call != X::SetTimerOp && answer != Err(Errno::Enosys) => {
            Err("a call hv does not offer must be ENOSYS")
        }
        Some(call) if !offered(call) && answer != Err(Errno::Enosys) => {
            Err("a sub-operation Xen does not define must be ENOSYS")
        }
        Some(X::ConsoleIo) if cmd == 1 && answer != Err(Errno::Eperm) => Err("console read must be EPERM"),
        Some(X::MemoryOp) if cmd & MEMOP_CMD_MASK == MemoryOp::SetMemoryMap.number() && answer != Err(Errno::Eperm) => {
            Err("a guest setting a memory map must be EPERM")
        }
        Some(X::HvmOp)
            if scratch && cmd == HvmOp::GetParam.number() && other_domain(named()) && answer != Err(Errno::Eperm) =>
        {
            Err("another domain's HVM parameter must be EPERM")
        }
        Some(X::EventChannelOp)
            if scratch
                && cmd == EvtchnOp::AllocUnbound.number()
                && other_domain(named())
                && answer != Err(Errno::Eperm) =>
        {
            Err("a port in another domain's table must be EPERM")
        }
        Some(X::GrantTableOp)
            if scratch
                && answer == Ok(0)
                && (cmd == GnttabOp::MapGrantRef.number() || cmd == GnttabOp::Copy.number()) =>
        {
            // Nobody grants this guest anything: every entry must fail.
            let (size, status) = if cmd == GnttabOp::Copy.number() { (40, 36) } else { (32, 18) };
            let entries = arguments[2].min(64);
            let succeeded = (0..entries).any(|index| {
                let at = layout.writable() + index * size + status;
                // SAFETY: inside the scratch area's writable part (64
                // entries of 40 bytes), which hv just wrote.
                let status = unsafe { core::ptr::read_volatile(at as *const i16) };
                status == 0
            });
            if succeeded { Err("a grant map or copy succeeded though no domain granted me a page") } else { Ok(()) }
        }
        _ => Ok(()),
    }
}

fn sub_operation_unknown(number: u64, operation: u64) -> bool {
    match H::from_number(number) {
        Some(H::Sched) => SchedOp::from_number(operation).is_none(),
        Some(H::Vcpu) => VcpuOp::from_number(operation).is_none(),
        Some(H::Event) => E::from_number(operation).is_none(),
        Some(H::Grant) => G::from_number(operation).is_none(),
        _ => false,
    }
}

/// Issues one call.
fn call(number: u64, arguments: [u64; 5]) -> i64 {
    // SAFETY: every pointer passed names either the scratch area (written
    // at most WRITE_WINDOW + a page in), the start-info page (copied at
    // start-up; only this page is written), read-only text, or memory this
    // guest does not have; pages registered with hv are put back at once
    // (see `put_back`).
    unsafe { hypercall::raw(number, arguments) }
}

/// Re-registers the runtime's event page or grant table if the call just
/// moved it somewhere else; true if it did.
fn put_back(number: u64, arguments: &[u64; 5], result: i64, layout: &Layout) -> bool {
    if result != 0 {
        return false;
    }
    if number == H::Event as u64 && arguments[0] == E::RegisterPage as u64 {
        // SAFETY: the runtime's own event page, registered again as at start-up.
        let _ = unsafe { hypercall::register_event_page(layout.event_page, UPCALL_VECTOR) };
        return true;
    }
    if number == H::Grant as u64 && arguments[0] == G::SetupTable as u64 {
        let _ = hypercall::grant_setup_table(layout.grant_table);
        return true;
    }
    false
}

fn guards_intact(layout: &Layout) -> bool {
    let base = layout.scratch as *const u8;
    (0..PAGE as usize).chain((SCRATCH_PAGES - 1) * PAGE as usize..SCRATCH_PAGES * PAGE as usize).all(|offset| {
        // SAFETY: inside SCRATCH; read without a reference (hv writes it).
        unsafe { core::ptr::read_volatile(base.add(offset)) == GUARD_BYTE }
    })
}

fn port_status(port: u64) -> Option<PortStatus> {
    hypercall::event(E::Status, port, 0).ok().and_then(PortStatus::decode)
}

/// One structured check of a Mica call: its name, the call, the
/// documented answer.
type Check = (&'static str, u64, [u64; 5], Result<u64, Error>);

/// One structured check of a Xen call: its name, the call, its arguments
/// (RDI, RSI, RDX), the documented answer.
type XenCheck = (&'static str, abi::xen::Hypercall, [u64; 3], Result<u64, Errno>);

/// Xen's calls hv offers, which `xen_structured` leaves out of "not offered".
const XEN_OFFERED: [abi::xen::Hypercall; 9] = {
    use abi::xen::Hypercall as X;
    [
        X::XenVersion,
        X::ConsoleIo,
        X::SchedOp,
        X::MemoryOp,
        X::HvmOp,
        X::VcpuOp,
        X::EventChannelOp,
        X::GrantTableOp,
        X::SetTimerOp,
    ]
};

/// Copies `value` to `at` in the scratch area; returns `at`.
fn place<T: zerocopy::IntoBytes + zerocopy::Immutable>(at: u64, value: T) -> u64 {
    let bytes = value.as_bytes();
    // SAFETY: the callers name places in the scratch area's writable part.
    unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), at as *mut u8, bytes.len()) };
    at
}

/// The documented answers of Xen's calls (each Xen's errno, as
/// `abi::xen` documents it) to boundary and known-bad inputs, and to a
/// few good ones; `(checks, passed)`.
fn xen_structured(guest: &mut Guest, layout: &Layout) -> (u64, u64) {
    use abi::xen::Hypercall as X;
    use abi::xen::event_channel::{
        EvtchnBindInterdomain, EvtchnBindIpi, EvtchnBindVcpu, EvtchnBindVirq, EvtchnClose, EvtchnOp, EvtchnSend,
        EvtchnStatus, EvtchnUnmask,
    };
    use abi::xen::grant_table::{GnttabGetVersion, GnttabOp, GnttabQuerySize, GnttabSetVersion};
    use abi::xen::hvm::{HVM_PARAM_CALLBACK_IRQ, HvmOp, XenHvmParam};
    use abi::xen::memory::{MemoryOp, XENMAPSPACE_SHARED_INFO, XenAddToPhysmap};
    use abi::xen::sched::SchedOp;
    use abi::xen::vcpu::VcpuOp;
    use abi::xen::version::{XenFeatureInfo, XenVersionOp};
    let writable = layout.writable();
    // The last byte hv may write, and structures placed a page apart.
    let end = layout.scratch + (SCRATCH_PAGES as u64 - 1) * PAGE;
    let slot = |index: u64| writable + index * 64;
    let free_port = (1..PORT_COUNT as u32).rev().find(|&p| !layout.protected[p as usize]).unwrap_or(255);
    let (any, me) = (abi::xen::DOMID_ANY, layout.me);
    let evtchn = |operation: EvtchnOp| u64::from(operation.number());
    let grant = |operation: GnttabOp| u64::from(operation.number());
    let version = |operation: XenVersionOp| u64::from(operation.number());
    let physmap =
        XenAddToPhysmap { domid: any, space: XENMAPSPACE_SHARED_INFO, gpfn: writable / PAGE, ..Default::default() };
    let checks: [XenCheck; 32] = [
        (
            "version with junk above the operation",
            X::XenVersion,
            [0xdead << 32, u64::MAX, u64::MAX],
            Ok(u64::from(abi::xen::version::MICA_XEN_VERSION)),
        ),
        ("page size", X::XenVersion, [version(XenVersionOp::Pagesize), 0, 0], Ok(PAGE)),
        (
            "feature word 0",
            X::XenVersion,
            [version(XenVersionOp::GetFeatures), place(slot(0), XenFeatureInfo::default()), 0],
            Ok(0),
        ),
        (
            "extraversion into my writable part's last 16 bytes",
            X::XenVersion,
            [version(XenVersionOp::Extraversion), end - 16, 0],
            Ok(0),
        ),
        (
            // Read before it is written: nothing of my RAM is touched.
            "feature word read from a structure running off my RAM",
            X::XenVersion,
            [version(XenVersionOp::GetFeatures), layout.ram_end - 4, 0],
            Err(Errno::Efault),
        ),
        (
            "extraversion at u64::MAX - 7",
            X::XenVersion,
            [version(XenVersionOp::Extraversion), u64::MAX - 7, 0],
            Err(Errno::Efault),
        ),
        ("console write of 0 bytes from memory not mine", X::ConsoleIo, [0, 0, NOT_MINE], Ok(0)),
        ("console write of 2^32 bytes from memory not mine", X::ConsoleIo, [0, 1 << 32, NOT_MINE], Err(Errno::Efault)),
        ("console write running off my RAM", X::ConsoleIo, [0, 64, layout.ram_end - 32], Err(Errno::Efault)),
        ("grant map of 0 entries", X::GrantTableOp, [grant(GnttabOp::MapGrantRef), NOT_MINE, 0], Ok(0)),
        (
            "grant map from an array running off my RAM",
            X::GrantTableOp,
            [grant(GnttabOp::MapGrantRef), layout.ram_end - 16, 1],
            Err(Errno::Efault),
        ),
        (
            "grant copy of u64::MAX entries",
            X::GrantTableOp,
            [grant(GnttabOp::Copy), writable, u64::MAX],
            Err(Errno::Einval),
        ),
        (
            "grant table size, 2 entries",
            X::GrantTableOp,
            [grant(GnttabOp::QuerySize), place(slot(1), GnttabQuerySize::default()), 2],
            Err(Errno::Einval),
        ),
        (
            "grant table version of dom0",
            X::GrantTableOp,
            [grant(GnttabOp::GetVersion), place(slot(2), GnttabGetVersion::default()), 1],
            Err(Errno::Eperm),
        ),
        (
            "grant table version 0",
            X::GrantTableOp,
            [grant(GnttabOp::SetVersion), place(slot(3), GnttabSetVersion { version: 0 }), 1],
            Err(Errno::Einval),
        ),
        (
            "grant table version 1",
            X::GrantTableOp,
            [grant(GnttabOp::SetVersion), place(slot(4), GnttabSetVersion { version: 1 }), 1],
            Ok(0),
        ),
        ("grant setup_table (PV)", X::GrantTableOp, [grant(GnttabOp::SetupTable), slot(5), 1], Err(Errno::Enosys)),
        (
            "status of port 2^32 - 1",
            X::EventChannelOp,
            [
                evtchn(EvtchnOp::Status),
                place(slot(6), EvtchnStatus { dom: abi::xen::DOMID_SELF, port: u32::MAX, ..Default::default() }),
                0,
            ],
            Err(Errno::Einval),
        ),
        (
            "status of a free port",
            X::EventChannelOp,
            [
                evtchn(EvtchnOp::Status),
                place(slot(7), EvtchnStatus { dom: abi::xen::DOMID_SELF, port: free_port, ..Default::default() }),
                0,
            ],
            Ok(0),
        ),
        (
            "status from u64::MAX - 3",
            X::EventChannelOp,
            [evtchn(EvtchnOp::Status), u64::MAX - 3, 0],
            Err(Errno::Efault),
        ),
        (
            "send on port 256",
            X::EventChannelOp,
            [evtchn(EvtchnOp::Send), place(slot(8), EvtchnSend { port: 256 }), 0],
            Err(Errno::Einval),
        ),
        (
            "close port 256",
            X::EventChannelOp,
            [evtchn(EvtchnOp::Close), place(slot(9), EvtchnClose { port: 256 }), 0],
            Err(Errno::Einval),
        ),
        (
            "unmask port 256",
            X::EventChannelOp,
            [evtchn(EvtchnOp::Unmask), place(slot(10), EvtchnUnmask { port: 256 }), 0],
            Err(Errno::Einval),
        ),
        (
            "virtual IRQ 2^32 - 1",
            X::EventChannelOp,
            [evtchn(EvtchnOp::BindVirq), place(slot(11), EvtchnBindVirq { virq: u32::MAX, vcpu: 0, port: 0 }), 0],
            Err(Errno::Einval),
        ),
        (
            "ipi for vCPU 2^31",
            X::EventChannelOp,
            [evtchn(EvtchnOp::BindIpi), place(slot(12), EvtchnBindIpi { vcpu: 1 << 31, port: 0 }), 0],
            Err(Errno::Enoent),
        ),
        (
            "a free port to vCPU 1 of 1",
            X::EventChannelOp,
            [evtchn(EvtchnOp::BindVcpu), place(slot(13), EvtchnBindVcpu { port: free_port, vcpu: 1 }), 0],
            Err(Errno::Enoent),
        ),
        (
            "bind to my own port 0",
            X::EventChannelOp,
            [
                evtchn(EvtchnOp::BindInterdomain),
                place(slot(14), EvtchnBindInterdomain { remote_dom: me as u16, remote_port: 0, ..Default::default() }),
                0,
            ],
            Err(Errno::Einval),
        ),
        ("is vCPU 2^32 up", X::VcpuOp, [u64::from(VcpuOp::IsUp.number()), 1 << 32, 0], Err(Errno::Enoent)),
        ("is vCPU 0 up", X::VcpuOp, [u64::from(VcpuOp::IsUp.number()), 0, 0], Ok(1)),
        (
            "the callback parameter of DOMID_ANY",
            X::HvmOp,
            [
                u64::from(HvmOp::GetParam.number()),
                place(slot(15), XenHvmParam { domid: any, index: HVM_PARAM_CALLBACK_IRQ, ..Default::default() }),
                0,
            ],
            Err(Errno::Eperm),
        ),
        (
            "shared info of DOMID_ANY",
            X::MemoryOp,
            [u64::from(MemoryOp::AddToPhysmap.number()), place(slot(16), physmap), 0],
            Err(Errno::Eperm),
        ),
        (
            "shutdown from a structure running off my RAM",
            X::SchedOp,
            [u64::from(SchedOp::Shutdown.number()), layout.ram_end - 2, 0],
            Err(Errno::Efault),
        ),
    ];
    let mut passed = 0;
    let mut total = checks.len() as u64;
    for (name, call, [a1, a2, a3], expected) in checks {
        let raw = self::call(call.number(), [a1, a2, a3, 0, 0]);
        if Errno::decode(raw) == expected {
            passed += 1;
        } else {
            let _ = writeln!(guest, "hcfuzz: FAILED: structured: xen: {name}: rax {raw}, documented {expected:?}");
        }
    }
    // Every number below 64 that hv does not offer, and every call it
    // offers with a sub-operation past every table: -ENOSYS.
    let unoffered = (0..abi::xen::hypercall::XEN_HYPERCALL_LIMIT)
        .filter(|&number| !XEN_OFFERED.iter().any(|call| call.number() == number))
        .find(|&number| Errno::decode(call(number, [0, writable, 0, 0, 0])) != Err(Errno::Enosys));
    let past = XEN_OFFERED[..8]
        .iter()
        .find(|call| Errno::decode(self::call(call.number(), [1 << 31, 0, 0, 0, 0])) != Err(Errno::Enosys));
    for (name, breach) in [
        ("every number below 64 hv does not offer is ENOSYS", unoffered.map(|number| number as i64)),
        ("every offered call's sub-operation 2^31 is ENOSYS", past.map(|call| call.number() as i64)),
    ] {
        total += 1;
        match breach {
            None => passed += 1,
            Some(number) => {
                let _ = writeln!(guest, "hcfuzz: FAILED: structured: xen: {name}: not so for call {number}");
            }
        }
    }
    total += 1;
    if guards_intact(layout) {
        passed += 1;
    } else {
        let _ = writeln!(guest, "hcfuzz: FAILED: structured: xen: hv wrote outside the buffers it was given");
    }
    (total, passed)
}

/// The documented answers of Mica's calls to known-bad (and a few good)
/// inputs; `(checks, passed)`.
fn mica_structured(guest: &mut Guest, layout: &Layout) -> (u64, u64) {
    use abi::domctl::DomCtlOp as D;
    let me = layout.me;
    let buffer = layout.writable();
    let ok = |value: i64| Ok(value as u64);
    let hv_info_size = HV_INFO_MIN_SIZE as i64;
    let free_port = (1..PORT_COUNT as u64).rev().find(|&p| !layout.protected[p as usize]).unwrap_or(255);
    let checks: [Check; 60] = [
        ("one past Mica's calls", MICA_HYPERCALL_BASE + HYPERCALL_COUNT as u64, [0; 5], Err(Error::NoSuchHypercall)),
        ("version", H::Version as u64, [u64::MAX; 5], ok(abi::ABI_VERSION as i64)),
        ("null with junk arguments", H::Null as u64, [u64::MAX; 5], ok(0)),
        ("console write of 4097 bytes", H::ConsoleWrite as u64, [buffer, 4097, 0, 0, 0], Err(Error::InvalidArgument)),
        (
            "console write of u64::MAX bytes",
            H::ConsoleWrite as u64,
            [buffer, u64::MAX, 0, 0, 0],
            Err(Error::InvalidArgument),
        ),
        ("console write of 0 bytes", H::ConsoleWrite as u64, [buffer, 0, 0, 0, 0], ok(0)),
        (
            "console write wrapping the address space",
            H::ConsoleWrite as u64,
            [u64::MAX - 7, 16, 0, 0, 0],
            Err(Error::BadAddress),
        ),
        ("console write at 2^47", H::ConsoleWrite as u64, [1 << 47, 16, 0, 0, 0], Err(Error::BadAddress)),
        (
            "console write running off the end of RAM",
            H::ConsoleWrite as u64,
            [layout.ram_end - 8, 16, 0, 0, 0],
            Err(Error::BadAddress),
        ),
        ("hv info, 0 bytes", H::HvInfo as u64, [buffer, 0, 0, 0, 0], Err(Error::BufferTooSmall)),
        (
            "hv info, one byte short",
            H::HvInfo as u64,
            [buffer, HV_INFO_MIN_SIZE - 1, 0, 0, 0],
            Err(Error::BufferTooSmall),
        ),
        ("hv info, u64::MAX bytes", H::HvInfo as u64, [buffer, u64::MAX, 0, 0, 0], ok(size_of::<HvInfo>() as i64)),
        (
            "hv info into the start-info page",
            H::HvInfo as u64,
            [layout.start_info, HV_INFO_MIN_SIZE, 0, 0, 0],
            ok(hv_info_size),
        ),
        (
            "hv info just past my RAM",
            H::HvInfo as u64,
            [layout.ram_end, HV_INFO_MIN_SIZE, 0, 0, 0],
            Err(Error::BadAddress),
        ),
        (
            "hv info at u64::MAX - 8",
            H::HvInfo as u64,
            [u64::MAX - 8, HV_INFO_MIN_SIZE, 0, 0, 0],
            Err(Error::BadAddress),
        ),
        (
            "my domain info, one byte short",
            H::DomainInfo as u64,
            [me, buffer, DOMAIN_INFO_MIN_SIZE - 1, 0, 0],
            Err(Error::BufferTooSmall),
        ),
        ("domain info of id 2^32", H::DomainInfo as u64, [1 << 32, buffer, 4096, 0, 0], Err(Error::InvalidArgument)),
        ("domain info of an absent domain", H::DomainInfo as u64, [32767, buffer, 4096, 0, 0], Err(Error::Permission)),
        (
            "my domain info into memory not mine",
            H::DomainInfo as u64,
            [me, NOT_MINE, 4096, 0, 0],
            Err(Error::BadAddress),
        ),
        ("dmesg", H::DmesgRead as u64, [buffer, 16, 0, 0, 0], Err(Error::Permission)),
        ("platform reboot", H::Platform as u64, [1, 0, 0, 0, 0], Err(Error::Permission)),
        ("platform, unknown operation", H::Platform as u64, [7, 0, 0, 0, 0], Err(Error::Permission)),
        (
            "domctl populate my memory",
            H::DomCtl as u64,
            [D::PopulateMemory as u64, me, 0, 1, 0],
            Err(Error::Permission),
        ),
        (
            "domctl map a foreign page",
            H::DomCtl as u64,
            [D::MapForeign as u64, 0, 0, buffer, 0],
            Err(Error::Permission),
        ),
        (
            "domctl raise my memory limit",
            H::DomCtl as u64,
            [D::SetMaxMemory as u64, me, 1 << 20, 0, 0],
            Err(Error::Permission),
        ),
        ("domctl, unknown operation", H::DomCtl as u64, [12, 0, 0, 0, 0], Err(Error::Permission)),
        ("physdev translate", H::Physdev as u64, [1, buffer, 0, 0, 0], Err(Error::Permission)),
        ("physdev allow all ports", H::Physdev as u64, [2, 0, 256, 0, 0], Err(Error::Permission)),
        ("physdev map the local APIC", H::Physdev as u64, [0, 0xfee0_0000, 1, 0, 0], Err(Error::Permission)),
        ("sched, operation 3", H::Sched as u64, [3, 0, 0, 0, 0], Err(Error::InvalidArgument)),
        ("sched, operation u64::MAX", H::Sched as u64, [u64::MAX, 0, 0, 0, 0], Err(Error::InvalidArgument)),
        (
            "shutdown with reason u64::MAX",
            H::Sched as u64,
            [SchedOp::Shutdown as u64, u64::MAX, 0, 0, 0],
            Err(Error::InvalidArgument),
        ),
        ("yield", H::Sched as u64, [SchedOp::Yield as u64, u64::MAX, 0, 0, 0], ok(0)),
        ("vcpu, operation u64::MAX", H::Vcpu as u64, [u64::MAX, 0, 0, 0, 0], Err(Error::InvalidArgument)),
        ("timer cancelled", H::Vcpu as u64, [VcpuOp::SetTimer as u64, 0, 0, 0, 0], ok(0)),
        ("event, operation 12", H::Event as u64, [12, 0, 0, 0, 0], Err(Error::InvalidArgument)),
        ("bind a free port to vCPU 0", H::Event as u64, [E::BindVcpu as u64, 200, 0, 0, 0], Err(Error::NotFound)),
        (
            "bind a port to vCPU 1 of one",
            H::Event as u64,
            [E::BindVcpu as u64, 1, 1, 0, 0],
            Err(Error::InvalidArgument),
        ),
        ("ipi for vCPU 1 of one", H::Event as u64, [E::BindIpi as u64, 1, 0, 0, 0], Err(Error::InvalidArgument)),
        ("ipi for vCPU 2^32", H::Event as u64, [E::BindIpi as u64, 1 << 32, 0, 0, 0], Err(Error::InvalidArgument)),
        (
            "event page with vector 256",
            H::Event as u64,
            [E::RegisterPage as u64, buffer, 256, 0, 0],
            Err(Error::InvalidArgument),
        ),
        (
            "event page with vector 31",
            H::Event as u64,
            [E::RegisterPage as u64, buffer, 31, 0, 0],
            Err(Error::InvalidArgument),
        ),
        (
            "event page at u64::MAX - 4095",
            H::Event as u64,
            [E::RegisterPage as u64, u64::MAX - 4095, 0xf3, 0, 0],
            Err(Error::BadAddress),
        ),
        (
            "unbound port for domain 2^32",
            H::Event as u64,
            [E::AllocUnbound as u64, 1 << 32, 0, 0, 0],
            Err(Error::InvalidArgument),
        ),
        (
            "unbound port for an absent domain",
            H::Event as u64,
            [E::AllocUnbound as u64, 32767, 0, 0, 0],
            Err(Error::NotFound),
        ),
        (
            "bind to port 256 of dom0",
            H::Event as u64,
            [E::BindInterdomain as u64, 0, 256, 0, 0],
            Err(Error::InvalidArgument),
        ),
        ("bind virtual IRQ 2", H::Event as u64, [E::BindVirq as u64, 2, 0, 0, 0], Err(Error::InvalidArgument)),
        ("send on port 256", H::Event as u64, [E::Send as u64, 256, 0, 0, 0], Err(Error::InvalidArgument)),
        ("send on a free port", H::Event as u64, [E::Send as u64, free_port, 0, 0, 0], Err(Error::NotFound)),
        ("mask port 2^32", H::Event as u64, [E::Mask as u64, 1 << 32, 0, 0, 0], Err(Error::InvalidArgument)),
        ("status of a free port", H::Event as u64, [E::Status as u64, free_port, 0, 0, 0], ok(0)),
        ("bind physical line 4", H::Event as u64, [E::BindPirq as u64, 4, 0, 0, 0], Err(Error::Permission)),
        ("grant, operation 4", H::Grant as u64, [4, 0, 0, 0, 0], Err(Error::InvalidArgument)),
        (
            "grant table unaligned",
            H::Grant as u64,
            [G::SetupTable as u64, buffer + 8, 0, 0, 0],
            Err(Error::InvalidArgument),
        ),
        ("grant map unaligned", H::Grant as u64, [G::Map as u64, 0, 1, (1 << 30) + 8, 1], Err(Error::InvalidArgument)),
        (
            "grant map beyond the limit",
            H::Grant as u64,
            [G::Map as u64, 0, 1, abi::grant::GUEST_MAP_LIMIT, 1],
            Err(Error::InvalidArgument),
        ),
        ("grant map from myself", H::Grant as u64, [G::Map as u64, me, 1, 1 << 30, 1], Err(Error::InvalidArgument)),
        ("grant unmap of nothing", H::Grant as u64, [G::Unmap as u64, 1 << 30, 0, 0, 0], Err(Error::NotFound)),
        ("grant copy from myself", H::Grant as u64, [G::Copy as u64, me, 1, buffer, 8], Err(Error::InvalidArgument)),
        (
            "grant copy past the granted page",
            H::Grant as u64,
            [G::Copy as u64, 0, 1 | 4000 << 32, buffer, 200],
            Err(Error::InvalidArgument),
        ),
    ];
    let mut passed = 0;
    for (name, number, arguments, expected) in checks {
        let raw = call(number, arguments);
        put_back(number, &arguments, raw, layout);
        if Error::decode(raw) == expected {
            passed += 1;
        } else {
            let _ = writeln!(guest, "hcfuzz: FAILED: structured: mica: {name}: rax {raw}, documented {expected:?}");
        }
    }
    // Numbers in neither range: Xen's answer.
    for (name, number) in [("number 2^32", 1 << 32), ("number 2^63", 1 << 63), ("number u64::MAX", u64::MAX)] {
        let raw = call(number, [0; 5]);
        if raw == Errno::Enosys.code() {
            passed += 1;
        } else {
            let _ = writeln!(guest, "hcfuzz: FAILED: structured: mica: {name}: rax {raw}, documented -ENOSYS");
        }
    }
    if guards_intact(layout) {
        passed += 1;
    } else {
        let _ = writeln!(guest, "hcfuzz: FAILED: structured: mica: hv wrote outside the buffers it was given");
    }
    (checks.len() as u64 + 3 + 1, passed)
}

fn parse(cmdline: &str, key: &str) -> Option<u64> {
    cmdline.split_whitespace().find_map(|word| word.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

#[unsafe(no_mangle)]
extern "C" fn _start(start_info: u64) -> ! {
    let mut guest = Guest::init(start_info);
    let mut cmdline = arrayvec::ArrayString::<256>::new();
    let _ = cmdline.try_push_str(guest.cmdline());
    let count = parse(&cmdline, "count").unwrap_or(100_000);
    let seed = parse(&cmdline, "seed").unwrap_or(1).max(1);
    let mode = cmdline.split_whitespace().find_map(|word| word.strip_prefix("mode=")).unwrap_or("both");

    let scratch = &raw mut SCRATCH as u64;
    // SAFETY: SCRATCH is ours; filled before hv is told about it.
    unsafe { core::ptr::write_bytes(scratch as *mut u8, GUARD_BYTE, SCRATCH_PAGES * PAGE as usize) };
    let ram_end = guest.start_info.regions().iter().map(|region| region.base + region.size).max().unwrap_or(0);
    let (event_page, grant_table) = guest.registered_pages();
    let mut layout = Layout {
        me: guest.domain_id() as u64,
        start_info,
        ram_end,
        scratch,
        event_page,
        grant_table,
        protected: [false; PORT_COUNT],
    };
    for port in 0..PORT_COUNT {
        layout.protected[port] = port_status(port as u64).is_none_or(|status| status.state != PortState::Free);
    }
    let _ = writeln!(guest, "hcfuzz: domain {} seed {seed} count {count} mode {mode}", layout.me);

    let mut failures = 0;
    if mode != "random" {
        let (xen_checks, xen_passed) = xen_structured(&mut guest, &layout);
        let _ = writeln!(guest, "hcfuzz: structured: xen: {xen_checks} checks, {xen_passed} as documented");
        let (mica_checks, mica_passed) = mica_structured(&mut guest, &layout);
        let _ = writeln!(guest, "hcfuzz: structured: mica: {mica_checks} checks, {mica_passed} as documented");
        let (checks, passed) = (xen_checks + mica_checks, xen_passed + mica_passed);
        failures += checks - passed;
        let _ = writeln!(guest, "hcfuzz: structured: {checks} checks, {passed} as documented");
    }

    let mut tally = Tally::default();
    let mut random = Random(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut ours = arrayvec::ArrayVec::<u64, 64>::new();
    let started = guest::now();
    let step = (count / 10).max(1);
    let mut next_progress = step;
    if mode != "structured" {
        while tally.calls + tally.skipped < count {
            let Some((number, arguments)) = generate(&mut random, &layout) else {
                tally.skipped += 1;
                continue;
            };
            let result = call(number, arguments);
            tally.count(number, result);
            if put_back(number, &arguments, result, &layout) {
                tally.restored += 1;
            }
            if let Err(breach) = check(number, &arguments, result, &layout) {
                tally.failed += 1;
                if tally.failed <= 20 {
                    let _ =
                        writeln!(guest, "hcfuzz: FAILED: call {number} {arguments:x?} returned {result}: {breach}",);
                }
            }
            // Ports the fuzz bound are ours to close; close them in batches
            // (each close must work) so the table never fills for good.
            let binds = [E::AllocUnbound as u64, E::BindInterdomain as u64, E::BindVirq as u64];
            let bound = match number == H::Event as u64 && binds.contains(&arguments[0]) && result > 0 {
                true => Some(result as u64),
                false if result == 0 => xen_bound_port(number, &arguments, &layout),
                false => None,
            };
            if let Some(port) = bound
                && (ours.try_push(port).is_err() || ours.is_full())
            {
                for port in ours.drain(..) {
                    if hypercall::event(E::Close, port, 0).is_err()
                        && port_status(port).is_some_and(|s| s.state != PortState::Free)
                    {
                        tally.failed += 1;
                        let _ = writeln!(guest, "hcfuzz: FAILED: closing port {port} the fuzz bound");
                    }
                }
            }
            let done = tally.calls + tally.skipped;
            if done >= next_progress {
                next_progress += step;
                if !guards_intact(&layout) {
                    tally.failed += 1;
                    let _ = writeln!(guest, "hcfuzz: FAILED: hv wrote outside the buffers it was given");
                    // SAFETY: as above; restore the guards to catch the next one.
                    unsafe { core::ptr::write_bytes(scratch as *mut u8, GUARD_BYTE, PAGE as usize) };
                }
                let _ = writeln!(guest, "hcfuzz: progress {done} of {count}: {} ok, {} FAILED", tally.ok, tally.failed);
            }
        }
    }
    // Leave no port behind: every port that was free at the start is free again.
    for port in ours.drain(..) {
        let _ = hypercall::event(E::Close, port, 0);
    }
    for port in 1..PORT_COUNT as u64 {
        if !layout.protected[port as usize] && port_status(port).is_some_and(|status| status.state != PortState::Free) {
            let closed = hypercall::event(E::Close, port, 0).is_ok();
            if !closed || port_status(port).is_some_and(|status| status.state != PortState::Free) {
                tally.failed += 1;
                let _ = writeln!(guest, "hcfuzz: FAILED: port {port} cannot be freed");
            }
        }
    }
    if !guards_intact(&layout) {
        tally.failed += 1;
        let _ = writeln!(guest, "hcfuzz: FAILED: hv wrote outside the buffers it was given");
    }
    let ticks = guest::now() - started;
    let milliseconds = ticks / (guest.ticks_per_second() / 1000).max(1);
    let mut by_code = arrayvec::ArrayString::<512>::new();
    let _ = write!(by_code, "mica:");
    for (error, count) in Error::ALL.iter().zip(tally.errors) {
        if count > 0 {
            let _ = write!(by_code, " {} {count},", error.describe());
        }
    }
    let _ = write!(by_code, " xen:");
    for (errno, count) in Errno::ALL.iter().zip(tally.xen_errors) {
        if count > 0 {
            let _ = write!(by_code, " {} {count},", errno.name());
        }
    }
    let by_code = by_code.trim_end_matches(',');
    let _ = writeln!(
        guest,
        "hcfuzz: {} calls, {} ok, {} errors ({by_code}), {} skipped, {} pages put back, {} ms guest time",
        tally.calls,
        tally.ok,
        tally.calls - tally.ok,
        tally.skipped,
        tally.restored,
        milliseconds,
    );
    let mica_calls = tally.calls - tally.xen_calls;
    let _ = writeln!(
        guest,
        "hcfuzz: xen: {} calls, {} ok, {} errors; mica: {mica_calls} calls, {} ok, {} errors",
        tally.xen_calls,
        tally.xen_ok,
        tally.xen_calls - tally.xen_ok,
        tally.ok - tally.xen_ok,
        mica_calls - (tally.ok - tally.xen_ok),
    );
    failures += tally.failed;
    let _ = writeln!(guest, "hcfuzz: {} FAILED, done", failures);
    loop {
        guest.wait_for_event();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    guest::crash(format_args!("hcfuzz: panic: {info}\n"))
}
