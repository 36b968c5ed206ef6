//! Hostile-guest suite: attack-hv, a guest that attacks hv's shared services
//! (CPU time, the log, crash reports, event channels, its own vCPUs)
//! through Xen's calls, the interface guests use, and through Mica's own
//! where they still reach the same service. Its command line picks the
//! attack, `mode=<name>`:
//!
//! - `hypercall-storm`: 4 KiB console writes in a loop, Xen's `console_io`
//!   and Mica's `ConsoleWrite` in turn, never an idle moment: hv's time
//!   spent on them must count against its slice.
//! - `exit-storm`: CPUID in a loop: the cheapest exits, each of them
//!   mostly hv's time; that time too must count against its slice.
//! - `log-flood`: writes `FLOOD_LINES` lines to hv's log (`console_io`,
//!   every other one Mica's `ConsoleWrite`), then says so on its console:
//!   hv's own lines must survive.
//! - `forge-crash`: writes, over and over, text that looks like hv's crash
//!   line for the next few domain ids (`console_io` and `ConsoleWrite` in
//!   turn): dom0 must never report it.
//! - `event-server`: offers a port to the domain created just before it
//!   (its id minus one, Xen's `alloc_unbound`), waits until that domain
//!   binds it (Xen's `status`), then crashes.
//! - `event-peer`: binds to the port the domain created just after it
//!   offers (Xen's `bind_interdomain`), then every tenth of a second sends
//!   on it and asks its status, through Xen's calls and through Mica's,
//!   and reports on its console each time an outcome changes:
//!   `attack-hv: event-peer: xen: send <result>, status <state>; mica:
//!   send <result>, status <state> d<remote>`.
//! - `vcpus` (2 vCPUs): attacks the vCPU operations, Xen's `vcpu_op` and
//!   `event_channel_op` first, then Mica's `VcpuOp` and `EventOp` (see
//!   [`vcpus`]).
#![no_std]
#![no_main]

use core::fmt::Write;

use abi::Error;
use abi::event::{EventOp, PortStatus};
use abi::xen::Errno;
use abi::xen::event_channel::{PortState, Virq};
use arrayvec::ArrayString;
use pv_drivers::guest::{self, Guest};
use pv_drivers::hypercall;
use pv_drivers::xen::{self, evtchn};

/// Lines `log-flood` writes: about 20 times hv's whole log.
const FLOOD_LINES: usize = 4000;

/// 768 MiB: mapped by the initial page tables, backed by nothing.
const NOT_MINE: u64 = 0x3000_0000;

/// Ports `event-peer` tries on its server.
const SERVER_PORTS: u32 = 32;

#[unsafe(no_mangle)]
extern "C" fn _start(start_info: u64) -> ! {
    let mut guest = Guest::init(start_info);
    let mut mode = ArrayString::<64>::new();
    let _ = mode.try_push_str(guest.cmdline().split_whitespace().find_map(|w| w.strip_prefix("mode=")).unwrap_or(""));
    let _ = writeln!(guest, "attack-hv: domain {} mode={}", guest.domain_id(), mode);
    match mode.as_str() {
        "hypercall-storm" => hypercall_storm(&mut guest),
        "exit-storm" => exit_storm(&mut guest),
        "log-flood" => log_flood(&mut guest),
        "forge-crash" => forge_crash(&mut guest),
        "event-server" => event_server(&mut guest),
        "event-peer" => event_peer(&mut guest),
        "vcpus" => vcpus(&mut guest),
        _ => {
            let _ = writeln!(guest, "attack-hv: unknown mode");
        }
    }
    loop {
        guest.wait_for_event();
    }
}

fn hypercall_storm(guest: &mut Guest) -> ! {
    let mut text = [b'S'; abi::hypercall::CONSOLE_WRITE_MAX as usize];
    for line in text.chunks_mut(128) {
        if let Some(last) = line.last_mut() {
            *last = b'\n';
        }
    }
    let _ = writeln!(guest, "attack-hv: storming");
    loop {
        let _ = xen::console_write(&text);
        let _ = hypercall::console_write(&text);
    }
}

fn exit_storm(guest: &mut Guest) -> ! {
    let _ = writeln!(guest, "attack-hv: storming");
    loop {
        // CPUID exits to hv every time.
        let _ = core::arch::x86_64::__cpuid(0);
    }
}

fn log_flood(guest: &mut Guest) {
    let id = guest.domain_id();
    let mut refused = 0usize;
    for number in 0..FLOOD_LINES {
        let mut line = ArrayString::<128>::new();
        let through = if number % 2 == 0 { "xen" } else { "mica" };
        let _ = writeln!(line, "attack-hv d{id} flood line {number:05} ({through}) ..................................");
        let written = match number % 2 {
            0 => xen::console_write(line.as_bytes()).is_ok(),
            _ => hypercall::console_write(line.as_bytes()).is_ok(),
        };
        refused += usize::from(!written);
    }
    let _ = writeln!(guest, "attack-hv: log-flood done ({FLOOD_LINES} lines, {refused} refused)");
}

fn forge_crash(guest: &mut Guest) -> ! {
    let id = guest.domain_id();
    let forged = |through: &str| {
        // A line of its own first (a tag naming the interface, which hv's
        // rate limit lets through after it suppressed lines), so the
        // forged lines start lines of their own if hv does not prefix
        // every line.
        let mut text = ArrayString::<1024>::new();
        let _ = writeln!(text, "attack-hv: FORGED-BY-d{id}-{through} follows");
        for victim in id + 1..=id + 3 {
            let _ = writeln!(
                text,
                "hv: error: d{victim} crashed: FORGED-BY-d{id}-{through} EPT violation at guest-physical 0x0 (qualification 0x0) at rip 0x0"
            );
        }
        text
    };
    let (xen_text, mica_text) = (forged("xen"), forged("mica"));
    let _ = writeln!(guest, "attack-hv: forging crash lines for d{} to d{}", id + 1, id + 3);
    // Each interface goes first every other round: once hv's rate limit
    // bites, the first write after a refill is the one that gets a line
    // through, and a fixed order let only one interface's through (seen on
    // two CPUs).
    loop {
        for xen_first in [true, false] {
            for through_xen in [xen_first, !xen_first] {
                if through_xen {
                    let _ = xen::console_write(xen_text.as_bytes());
                } else {
                    let _ = hypercall::console_write(mica_text.as_bytes());
                }
                xen::yield_now();
            }
        }
    }
}

fn event_server(guest: &mut Guest) {
    let id = guest.domain_id();
    let client = id - 1;
    let port = match evtchn::alloc_unbound(client as u16) {
        Ok(port) => port,
        Err(errno) => {
            let _ = writeln!(guest, "attack-hv: event-server: alloc_unbound for d{client} failed: {}", errno.name());
            return;
        }
    };
    let _ = writeln!(guest, "attack-hv: event-server: port {port} offered to d{client}");
    let tick = guest.ticks_per_second() / 20;
    loop {
        let state = evtchn::status(port).ok().and_then(|status| status.state());
        if matches!(state, Some(PortState::Interdomain { .. })) {
            break;
        }
        guest.sleep_until(guest::now() + tick);
    }
    let _ = writeln!(guest, "attack-hv: event-server: d{client} bound port {port}; crashing now");
    guest.sleep_until(guest::now() + guest.ticks_per_second() / 2);
    // SAFETY: deliberately writes memory this domain does not own: hv stops it.
    unsafe { core::ptr::write_volatile(NOT_MINE as *mut u64, 0xdead) };
    let _ = writeln!(guest, "attack-hv: event-server: still alive, which is a hypervisor bug");
}

/// A send's outcome and the port's state as Xen's calls report them.
fn xen_outcome(port: u32) -> (Result<(), Errno>, Option<PortState>) {
    (evtchn::notify(port), evtchn::status(port).ok().and_then(|status| status.state()))
}

/// A send's outcome and the port's state as Mica's calls report them.
fn mica_outcome(port: u32) -> (Result<u64, Error>, Option<PortStatus>) {
    let port = u64::from(port);
    (
        hypercall::event(EventOp::Send, port, 0),
        hypercall::event(EventOp::Status, port, 0).ok().and_then(PortStatus::decode),
    )
}

fn event_peer(guest: &mut Guest) {
    let id = guest.domain_id();
    let server = id + 1;
    let tick = guest.ticks_per_second() / 10;
    let (local, remote) = loop {
        if let Some(bound) = (1..SERVER_PORTS)
            .find_map(|port| evtchn::bind_interdomain(server as u16, port).ok().map(|local| (local, port)))
        {
            break bound;
        }
        guest.sleep_until(guest::now() + tick);
    };
    let _ = writeln!(guest, "attack-hv: event-peer: bound port {local} to d{server} port {remote}");
    let mut last = None;
    loop {
        let now = (xen_outcome(local), mica_outcome(local));
        if last != Some(now) {
            let ((xen_sent, xen_state), (mica_sent, mica_status)) = now;
            let mut line = ArrayString::<200>::new();
            let _ = match xen_sent {
                Ok(()) => write!(line, "xen: send Ok"),
                Err(errno) => write!(line, "xen: send {}", errno.name()),
            };
            let _ = match xen_state {
                Some(PortState::Interdomain { remote_dom, .. }) => write!(line, ", status Interdomain d{remote_dom}"),
                Some(PortState::Unbound { remote_dom }) => write!(line, ", status Unbound d{remote_dom}"),
                Some(state) => write!(line, ", status {state:?}"),
                None => write!(line, ", status unknown"),
            };
            let _ = match mica_sent {
                Ok(_) => write!(line, "; mica: send Ok"),
                Err(error) => write!(line, "; mica: send Err({error:?})"),
            };
            let _ = match mica_status {
                Some(status) => write!(line, ", status {:?} d{}", status.state, status.remote_domain),
                None => write!(line, ", status unknown"),
            };
            let _ = writeln!(guest, "attack-hv: event-peer: {line}");
            last = Some(now);
        }
        guest.sleep_until(guest::now() + tick);
    }
}

/// The stack of vCPU 1 (the only other one `vcpus` starts).
#[repr(C, align(16))]
struct Stack([u8; 16 * 1024]);
static mut VCPU1_STACK: Stack = Stack([0; 16 * 1024]);

/// Where vCPU 1 starts: it spins with interrupts off, for ever (a CPU hog
/// the scheduler must share out, and that destroy must stop).
extern "C" fn parked(_: u64) -> ! {
    loop {
        core::hint::spin_loop();
    }
}

/// A tally of checks: each compares what a call got with what is
/// documented and prints the ones that differ.
struct Checks {
    part: &'static str,
    made: u32,
    documented: u32,
}

impl Checks {
    fn check<T: PartialEq + core::fmt::Debug>(&mut self, guest: &mut Guest, what: &str, got: T, wanted: T) {
        self.made += 1;
        if got == wanted {
            self.documented += 1;
        } else {
            let _ = writeln!(guest, "attack-hv: vcpus: {}: {what}: got {got:?}, documented {wanted:?}", self.part);
        }
    }

    fn report(&self, guest: &mut Guest) {
        let _ =
            writeln!(guest, "attack-hv: vcpus: {}: {} checks, {} as documented", self.part, self.made, self.documented);
    }
}

/// The calling vCPU's page tables (CR3 without flag bits) and GDT (base,
/// limit): what vCPU 1 runs on.
fn cr3_and_gdt() -> (u64, u64, u16) {
    let cr3: u64;
    let mut gdtr = [0u8; 10];
    // SAFETY: reading CR3 and SGDT change nothing; SGDT writes the 10
    // bytes of `gdtr`.
    unsafe {
        core::arch::asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack, preserves_flags));
        core::arch::asm!("sgdt [{}]", in(reg) gdtr.as_mut_ptr(), options(nostack, preserves_flags));
    }
    let [limit_low, limit_high, base @ ..] = gdtr;
    (cr3 & 0x000f_ffff_ffff_f000, u64::from_le_bytes(base), u16::from_le_bytes([limit_low, limit_high]))
}

/// `vcpu_op` operation number `operation` on vCPU `vcpu` with the
/// structure at `address`.
fn vcpu_op(operation: u32, vcpu: u64, address: u64) -> Result<u64, Errno> {
    let arguments = [u64::from(operation), vcpu, address, 0, 0];
    // SAFETY: a vcpu_op reads at most the 128-byte context at `address`,
    // ours or memory hv must refuse; it starts or stops only vCPU 1 of
    // this domain, which runs `parked` on its own stack.
    Errno::decode(unsafe { hypercall::raw(abi::xen::Hypercall::VcpuOp.number(), arguments) })
}

/// Attacks the vCPU operations of a domain with two vCPUs and prints
/// `attack-hv: vcpus: <part>: <n> checks, <n> as documented` for each part
/// (each check that is not, with what it got), the total
/// `attack-hv: vcpus: <n> checks, <n> as documented`, and `vcpus: done`.
///
/// - Part `xen` (`vcpu_op`, `event_channel_op`): `initialise` from an
///   unmapped context and with malformed ones (non-canonical RIP, CR3 in
///   the foreign window or unaligned, paging off, an unknown mode), for
///   vCPUs it lacks and for the running one, twice; `up` before
///   `initialise` and of vCPUs it lacks; `down` of one that is down or
///   absent; `is_up`; a hundred `up`s and `down`s of vCPU 1; events bound
///   to vCPUs it lacks, twice, or moved where they may not go.
/// - Part `mica` (`VcpuOp`, `EventOp`): the same through Mica's own calls
///   (contexts hv refuses, ids out of range, starting what is up, stopping
///   what is down and the last vCPU up, a hundred starts and stops), then
///   an IPI storm at vCPU 1 through both interfaces, which it never takes:
///   it is left spinning with interrupts off.
fn vcpus(guest: &mut Guest) {
    /// Xen's vCPU operation numbers.
    mod x {
        use abi::xen::vcpu::VcpuOp;
        pub const INITIALISE: u32 = VcpuOp::Initialise.number();
        pub const UP: u32 = VcpuOp::Up.number();
        pub const DOWN: u32 = VcpuOp::Down.number();
        pub const IS_UP: u32 = VcpuOp::IsUp.number();
    }
    let stack_top = &raw mut VCPU1_STACK as u64 + 16 * 1024;
    let (cr3, gdt_base, gdt_limit) = cr3_and_gdt();
    let entry = parked as *const () as u64;
    let mut part = Checks { part: "xen", made: 0, documented: 0 };
    // Xen's initialise: malformed contexts first (none of them counts as
    // the vCPU's one initialise), then a valid one.
    let rsp = (stack_top & !0xf) - 8;
    let valid = xen::long_mode_context(entry, rsp, cr3);
    let with = |change: &dyn Fn(&mut abi::xen::vcpu::VcpuHvmX86_64)| {
        let mut context = valid;
        change(&mut context.x86_64);
        context
    };
    let foreign = abi::domctl::FOREIGN_WINDOW_BASE;
    let malformed = [
        ("a non-canonical rip", with(&|r| r.rip = 1 << 63)),
        ("cr3 in the foreign window", with(&|r| r.cr3 = foreign)),
        ("an unaligned cr3", with(&|r| r.cr3 = cr3 + 8)),
        ("paging off in 64-bit mode", with(&|r| r.cr0 &= !(1 << 31))),
        ("a non-canonical stack", with(&|r| r.rsp = 1 << 63)),
        ("mode 7", abi::xen::vcpu::VcpuHvmContext64 { mode: 7, ..valid }),
    ];
    let initialise = |vcpu: u64, context: &abi::xen::vcpu::VcpuHvmContext64| {
        vcpu_op(x::INITIALISE, vcpu, context as *const _ as u64)
    };
    part.check(
        guest,
        "initialise from an unmapped context",
        vcpu_op(x::INITIALISE, 1, 0xdead_0000_0000),
        Err(Errno::Efault),
    );
    for (what, context) in &malformed {
        let mut name = ArrayString::<64>::new();
        let _ = write!(name, "initialise with {what}");
        part.check(guest, &name, initialise(1, context), Err(Errno::Einval));
    }
    part.check(guest, "initialise vcpu 2 of 2", initialise(2, &valid), Err(Errno::Enoent));
    part.check(guest, "initialise vcpu u64::MAX", initialise(u64::MAX, &valid), Err(Errno::Enoent));
    part.check(guest, "initialise vcpu 0 (running)", initialise(0, &valid), Err(Errno::Eexist));
    part.check(guest, "up of vcpu 1 (never initialised)", vcpu_op(x::UP, 1, 0), Err(Errno::Einval));
    part.check(guest, "up of vcpu 7 of 2", vcpu_op(x::UP, 7, 0), Err(Errno::Enoent));
    part.check(guest, "down of vcpu 1 (down)", vcpu_op(x::DOWN, 1, 0), Ok(0));
    part.check(guest, "down of vcpu 5 of 2", vcpu_op(x::DOWN, 5, 0), Err(Errno::Enoent));
    part.check(guest, "is vcpu 1 up", vcpu_op(x::IS_UP, 1, 0), Ok(0));
    part.check(guest, "is vcpu 0 up", vcpu_op(x::IS_UP, 0, 0), Ok(1));
    part.check(guest, "vcpu operation 99", vcpu_op(99, 0, 0), Err(Errno::Enosys));
    part.check(guest, "initialise vcpu 1", initialise(1, &valid), Ok(0));
    part.check(guest, "initialise vcpu 1 again", initialise(1, &valid), Err(Errno::Eexist));
    // A hundred ups and downs from that state (an up waits in hv for a
    // vCPU still leaving its CPU).
    let mut cycles = 0;
    for _ in 0..100 {
        let up = vcpu_op(x::UP, 1, 0) == Ok(0) && xen::vcpu_is_up(1) == Ok(true);
        let down = xen::vcpu_down(1).is_ok() && xen::vcpu_is_up(1) == Ok(false);
        cycles += u32::from(up && down);
    }
    part.check(guest, "a hundred ups and downs of vcpu 1", cycles, 100);
    // Events bound to vCPUs it lacks, twice, or moved.
    part.check(guest, "ipi for vcpu 2 of 2", evtchn::bind_ipi(2), Err(Errno::Enoent));
    part.check(guest, "timer of vcpu 2 of 2", evtchn::bind_virq(Virq::Timer, 2), Err(Errno::Enoent));
    let timer1 = evtchn::bind_virq(Virq::Timer, 1);
    part.check(guest, "timer of vcpu 1", timer1.map(|_| ()), Ok(()));
    part.check(guest, "timer of vcpu 1 again", evtchn::bind_virq(Virq::Timer, 1), Err(Errno::Eexist));
    if let Ok(port) = timer1 {
        part.check(guest, "moving a timer port", evtchn::bind_vcpu(port, 0), Err(Errno::Einval));
    }
    let console = guest.console_port();
    part.check(guest, "console port to vcpu 7 of 2", evtchn::bind_vcpu(console, 7), Err(Errno::Enoent));
    part.check(
        guest,
        "console port to vcpu 1 and back",
        evtchn::bind_vcpu(console, 1).and(evtchn::bind_vcpu(console, 0)),
        Ok(()),
    );
    part.report(guest);
    let xen_part = (part.made, part.documented);

    // Mica's own VcpuOp and EventOp.
    let mut part = Checks { part: "mica", made: 0, documented: 0 };
    let context = hypercall::vcpu_entry_context(entry, stack_top, 1, cr3, gdt_base, gdt_limit);
    let up = |context: &abi::domctl::VcpuContext, vcpu: u32| {
        // SAFETY: every context here but `context` is one hv must refuse
        // (were it accepted, the attack has found its bug: the guest may
        // then crash, a finding); `context` runs `parked` on vCPU 1's
        // own stack with this vCPU's page tables and GDT.
        unsafe { hypercall::vcpu_up(vcpu, context) }.map(|()| 0)
    };
    let mica_vcpu_op = |operation: abi::hypercall::VcpuOp, a1: u64, a2: u64| {
        // SAFETY: a VcpuOp with these arguments changes only vCPU state of
        // this domain, or is refused.
        Error::decode(unsafe { hypercall::raw(abi::Hypercall::Vcpu as u64, [operation as u64, a1, a2, 0, 0]) })
    };
    use abi::domctl::VcpuContext;
    use abi::hypercall::VcpuOp as M;
    // vCPU 1 went down last on another CPU (with two) may still be
    // leaving it: Up says Busy until it has; a context hv refuses then
    // says so.
    let settled = |context: &VcpuContext| {
        let mut answer = up(context, 1);
        for _ in 0..10_000 {
            if answer != Err(Error::Busy) {
                break;
            }
            xen::yield_now();
            answer = up(context, 1);
        }
        answer
    };
    part.check(guest, "up from an unmapped context", mica_vcpu_op(M::Up, 1, 0xdead_0000_0000), Err(Error::BadAddress));
    part.check(
        guest,
        "up with a non-canonical rip",
        settled(&VcpuContext { rip: 1 << 63, ..context }),
        Err(Error::InvalidArgument),
    );
    part.check(
        guest,
        "up with cr3 in the foreign window",
        settled(&VcpuContext { cr3: foreign, ..context }),
        Err(Error::InvalidArgument),
    );
    part.check(
        guest,
        "up with an unaligned cr3",
        settled(&VcpuContext { cr3: cr3 + 8, ..context }),
        Err(Error::InvalidArgument),
    );
    part.check(
        guest,
        "up with a GDT limit of 0",
        settled(&VcpuContext { gdt_limit: 0, ..context }),
        Err(Error::InvalidArgument),
    );
    part.check(guest, "up of vcpu 2 of 2", up(&context, 2), Err(Error::InvalidArgument));
    part.check(guest, "up of vcpu u64::MAX", mica_vcpu_op(M::Up, u64::MAX, 0), Err(Error::InvalidArgument));
    part.check(guest, "up of vcpu 0 (running)", up(&context, 0), Err(Error::Busy));
    part.check(guest, "down of vcpu 1 (down)", mica_vcpu_op(M::Down, 1, 0), Err(Error::NotFound));
    part.check(guest, "down of vcpu 5 of 2", mica_vcpu_op(M::Down, 5, 0), Err(Error::InvalidArgument));
    part.check(guest, "down of the only vcpu up", mica_vcpu_op(M::Down, 0, 0), Err(Error::Busy));
    part.check(guest, "vcpu id", mica_vcpu_op(M::Id, 0, 0), Ok(0));
    // A hundred starts and stops (a vCPU taken down while it runs on
    // another CPU is retired there: until then Up says Busy).
    let start = || {
        (0..10_000).any(|_| match up(&context, 1) {
            Ok(_) => true,
            Err(Error::Busy) => {
                xen::yield_now();
                false
            }
            Err(_) => false,
        })
    };
    let mut cycles = 0;
    for _ in 0..100 {
        cycles += u32::from(start() && hypercall::vcpu_down(1).is_ok());
    }
    part.check(guest, "a hundred ups and downs of vcpu 1", cycles, 100);
    part.check(guest, "vcpu 1 up again", start(), true);
    part.check(guest, "up of vcpu 1 (up)", up(&context, 1), Err(Error::Busy));
    part.check(guest, "ipi for vcpu 2 of 2", hypercall::event(EventOp::BindIpi, 2, 0), Err(Error::InvalidArgument));
    part.check(guest, "timer of vcpu 2 of 2", hypercall::event(EventOp::BindVirq, 0, 2), Err(Error::InvalidArgument));
    part.check(
        guest,
        "timer of vcpu 1 (bound through Xen's call)",
        hypercall::event(EventOp::BindVirq, 0, 1),
        Err(Error::Busy),
    );
    if let Ok(port) = timer1 {
        part.check(
            guest,
            "moving a timer port",
            hypercall::event(EventOp::BindVcpu, u64::from(port), 0),
            Err(Error::InvalidArgument),
        );
    }
    part.check(
        guest,
        "console port to vcpu 7 of 2",
        hypercall::event(EventOp::BindVcpu, u64::from(console), 7),
        Err(Error::InvalidArgument),
    );
    // An IPI storm at vCPU 1, which never takes it (interrupts off):
    // Xen's sends, then Mica's, on a port bound with Xen's call.
    match evtchn::bind_ipi(1) {
        Ok(port) => {
            let xen_sent = (0..5_000).all(|_| evtchn::notify(port).is_ok());
            let mica_sent = (0..5_000).all(|_| hypercall::notify(port).is_ok());
            part.check(guest, "5000 IPIs to vcpu 1 through each interface", (xen_sent, mica_sent), (true, true));
        }
        Err(errno) => part.check(guest, "ipi for vcpu 1", Err(errno), Ok(0)),
    }
    part.report(guest);
    let (made, documented) = (xen_part.0 + part.made, xen_part.1 + part.documented);
    let _ = writeln!(guest, "attack-hv: vcpus: {made} checks, {documented} as documented");
    let _ = writeln!(guest, "attack-hv: vcpus: done");
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    guest::crash(format_args!("attack-hv: panic: {info}\n"))
}
