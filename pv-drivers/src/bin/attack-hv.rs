//! Hostile-guest suite: attack-hv, a guest that attacks hv's shared services
//! (CPU time, the log, crash reports, event channels). Its command line
//! picks the attack, `mode=<name>`:
//!
//! - `hypercall-storm`: 4 KiB `ConsoleWrite`s in a loop, never an idle
//!   moment: hv's time spent on them must count against its slice.
//! - `exit-storm`: CPUID in a loop: the cheapest exits, each of them
//!   mostly hv's time; that time too must count against its slice.
//! - `log-flood`: writes `FLOOD_LINES` lines to hv's log, then says so on its
//!   console: hv's own lines must survive.
//! - `forge-crash`: writes, over and over, text that looks like hv's crash
//!   line for the next few domain ids: dom0 must never report it.
//! - `event-server`: offers a port to the domain created just before it
//!   (its id minus one), waits until that domain binds it, then crashes.
//! - `event-peer`: binds to the port the domain created just after it
//!   offers, then sends on it every tenth of a second and reports on its
//!   console each time the outcome or the port's status changes.
#![no_std]
#![no_main]

use core::fmt::Write;

use abi::Error;
use abi::event::{EventOp, PortStatus};
use arrayvec::ArrayString;
use pv_drivers::guest::{self, Guest};
use pv_drivers::hypercall;

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
        let _ = writeln!(line, "attack-hv d{id} flood line {number:05} ........................................");
        if hypercall::console_write(line.as_bytes()).is_err() {
            refused += 1;
        }
    }
    let _ = writeln!(guest, "attack-hv: log-flood done ({FLOOD_LINES} lines, {refused} refused)");
}

fn forge_crash(guest: &mut Guest) -> ! {
    let id = guest.domain_id();
    let mut text = ArrayString::<1024>::new();
    for victim in id + 1..=id + 3 {
        // A newline first, so the forged text starts a line of its own if hv
        // does not prefix every line.
        let _ = write!(
            text,
            "\nhv: error: d{victim} crashed: FORGED-BY-d{id} EPT violation at guest-physical 0x0 (qualification 0x0) at rip 0x0\n"
        );
    }
    let _ = writeln!(guest, "attack-hv: forging crash lines for d{} to d{}", id + 1, id + 3);
    loop {
        let _ = hypercall::console_write(text.as_bytes());
        hypercall::yield_now();
    }
}

fn event_server(guest: &mut Guest) {
    let id = guest.domain_id();
    let client = id - 1;
    let port = match hypercall::event(EventOp::AllocUnbound, client as u64, 0) {
        Ok(port) => port,
        Err(error) => {
            let _ = writeln!(guest, "attack-hv: event-server: AllocUnbound for d{client} failed: {error:?}");
            return;
        }
    };
    let _ = writeln!(guest, "attack-hv: event-server: port {port} offered to d{client}");
    let tick = guest.ticks_per_second() / 20;
    loop {
        let status = hypercall::event(EventOp::Status, port, 0).ok().and_then(PortStatus::decode);
        if status.is_some_and(|status| status.state == abi::event::PortState::Interdomain) {
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

fn event_peer(guest: &mut Guest) {
    let id = guest.domain_id();
    let server = id + 1;
    let tick = guest.ticks_per_second() / 10;
    let (local, remote) = loop {
        if let Some(bound) = (1..SERVER_PORTS).find_map(|port| {
            hypercall::event(EventOp::BindInterdomain, server as u64, port as u64).ok().map(|local| (local, port))
        }) {
            break bound;
        }
        guest.sleep_until(guest::now() + tick);
    };
    let _ = writeln!(guest, "attack-hv: event-peer: bound port {local} to d{server} port {remote}");
    let mut last: Option<(Result<u64, Error>, Option<PortStatus>)> = None;
    loop {
        let sent = hypercall::event(EventOp::Send, local, 0);
        let status = hypercall::event(EventOp::Status, local, 0).ok().and_then(PortStatus::decode);
        if last != Some((sent, status)) {
            let mut line = ArrayString::<160>::new();
            match sent {
                Ok(_) => {
                    let _ = write!(line, "send Ok");
                }
                Err(error) => {
                    let _ = write!(line, "send Err({error:?})");
                }
            }
            match status {
                Some(status) => {
                    let _ = write!(line, ", status {:?} d{}", status.state, status.remote_domain);
                }
                None => {
                    let _ = write!(line, ", status unknown");
                }
            }
            let _ = writeln!(guest, "attack-hv: event-peer: {line}");
            last = Some((sent, status));
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

/// Attacks the vCPU operations of a domain with two vCPUs: malformed
/// contexts, ids out of range, starting what is up, stopping what is down,
/// taking the last vCPU down, starting and stopping vCPU 1 a hundred
/// times, binding events to vCPUs it lacks, an IPI storm; vCPU 1 is left
/// spinning with interrupts off. Prints `vcpus: <n> checks, <n> as
/// documented` (each one that is not, with what it got) and `vcpus: done`.
fn vcpus(guest: &mut Guest) {
    use abi::domctl::VcpuContext;
    use abi::hypercall::{Hypercall, VcpuOp};
    let (mut checks, mut documented) = (0, 0);
    let mut check = |guest: &mut Guest, what: &str, got: Result<u64, Error>, wanted: Result<u64, Error>| {
        checks += 1;
        if got == wanted {
            documented += 1;
        } else {
            let _ = writeln!(guest, "attack-hv: vcpus: {what}: got {got:?}, documented {wanted:?}");
        }
    };
    let up = |context: &VcpuContext, vcpu: u32| {
        // SAFETY: every context here but the valid one (started through
        // `start_vcpu`) is one hv must refuse; were it accepted, the
        // attack has found its bug (the guest may then crash: a finding).
        unsafe { hypercall::vcpu_up(vcpu, context) }.map(|()| 0)
    };
    let stack_top = &raw mut VCPU1_STACK as u64 + 16 * 1024;
    let valid = hypercall::vcpu_entry_context(parked as *const () as u64, stack_top, 1, 0x1000, 0x2000, 39);
    let vcpu_op = |operation: VcpuOp, a1: u64, a2: u64| {
        // SAFETY: a VcpuOp with these arguments changes only vCPU state of
        // this domain, or is refused.
        Error::decode(unsafe { hypercall::raw(Hypercall::Vcpu as u64, [operation as u64, a1, a2, 0, 0]) })
    };
    check(guest, "up from an unmapped context", vcpu_op(VcpuOp::Up, 1, 0xdead_0000_0000), Err(Error::BadAddress));
    check(
        guest,
        "up with a non-canonical rip",
        up(&VcpuContext { rip: 1 << 63, ..valid }, 1),
        Err(Error::InvalidArgument),
    );
    let foreign = abi::domctl::FOREIGN_WINDOW_BASE;
    check(
        guest,
        "up with cr3 in the foreign window",
        up(&VcpuContext { cr3: foreign, ..valid }, 1),
        Err(Error::InvalidArgument),
    );
    check(guest, "up with an unaligned cr3", up(&VcpuContext { cr3: 0x1001, ..valid }, 1), Err(Error::InvalidArgument));
    check(
        guest,
        "up with a GDT limit of 0",
        up(&VcpuContext { gdt_limit: 0, ..valid }, 1),
        Err(Error::InvalidArgument),
    );
    check(guest, "up of vcpu 2 of 2", up(&valid, 2), Err(Error::InvalidArgument));
    check(guest, "up of vcpu u64::MAX", vcpu_op(VcpuOp::Up, u64::MAX, 0), Err(Error::InvalidArgument));
    check(guest, "up of vcpu 0 (running)", up(&valid, 0), Err(Error::Busy));
    check(guest, "down of vcpu 1 (never up)", vcpu_op(VcpuOp::Down, 1, 0), Err(Error::NotFound));
    check(guest, "down of vcpu 5 of 2", vcpu_op(VcpuOp::Down, 5, 0), Err(Error::InvalidArgument));
    check(guest, "down of the only vcpu up", vcpu_op(VcpuOp::Down, 0, 0), Err(Error::Busy));
    check(guest, "vcpu id", vcpu_op(VcpuOp::Id, 0, 0), Ok(0));
    // A hundred starts and stops (a vCPU taken down while it runs on
    // another CPU is retired there: until then Up says Busy).
    let mut cycles_ok = true;
    for _ in 0..100 {
        // SAFETY: `parked` never returns and touches no memory; the stack
        // is vCPU 1's alone.
        let started = (0..10_000).any(|_| match unsafe { guest.start_vcpu(1, parked, stack_top, 1) } {
            Ok(()) => true,
            Err(Error::Busy) => {
                hypercall::yield_now();
                false
            }
            Err(_) => false,
        });
        cycles_ok &= started && hypercall::vcpu_down(1).is_ok();
    }
    check(guest, "a hundred ups and downs of vcpu 1", Ok(u64::from(cycles_ok)), Ok(1));
    let last = (0..10_000).any(|_| {
        // SAFETY: as above.
        unsafe { guest.start_vcpu(1, parked, stack_top, 1) }.is_ok() || {
            hypercall::yield_now();
            false
        }
    });
    check(guest, "vcpu 1 up again", Ok(u64::from(last)), Ok(1));
    // SAFETY: as above.
    check(
        guest,
        "up of vcpu 1 (up)",
        unsafe { guest.start_vcpu(1, parked, stack_top, 1) }.map(|()| 0),
        Err(Error::Busy),
    );
    // Events bound to vCPUs this domain lacks, or twice.
    check(guest, "ipi for vcpu 2 of 2", hypercall::event(EventOp::BindIpi, 2, 0), Err(Error::InvalidArgument));
    check(guest, "timer of vcpu 2 of 2", hypercall::event(EventOp::BindVirq, 0, 2), Err(Error::InvalidArgument));
    let timer1 = hypercall::event(EventOp::BindVirq, 0, 1);
    check(guest, "timer of vcpu 1", timer1.map(|_| 0), Ok(0));
    check(guest, "timer of vcpu 1 again", hypercall::event(EventOp::BindVirq, 0, 1), Err(Error::Busy));
    if let Ok(port) = timer1 {
        check(guest, "moving a timer port", hypercall::event(EventOp::BindVcpu, port, 0), Err(Error::InvalidArgument));
    }
    let console = u64::from(guest.console_port());
    check(
        guest,
        "console port to vcpu 7 of 2",
        hypercall::event(EventOp::BindVcpu, console, 7),
        Err(Error::InvalidArgument),
    );
    // An IPI storm at vCPU 1, which never takes it (interrupts off).
    match hypercall::event(EventOp::BindIpi, 1, 0) {
        Ok(port) => {
            let sent = (0..5_000).all(|_| hypercall::notify(port as u32).is_ok());
            check(guest, "5000 IPIs to vcpu 1", Ok(u64::from(sent)), Ok(1));
        }
        Err(error) => check(guest, "ipi for vcpu 1", Err(error), Ok(0)),
    }
    let _ = writeln!(guest, "attack-hv: vcpus: {checks} checks, {documented} as documented");
    let _ = writeln!(guest, "attack-hv: vcpus: done");
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    guest::crash(format_args!("attack-hv: panic: {info}\n"))
}
